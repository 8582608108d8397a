#include "proclocks.h"

#include "sys.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysmacros.h>
#include <unistd.h>

char *proclocks_read(void)
{
	int fd = open("/proc/locks", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	size_t cap = 16384, len = 0;
	char *buf = malloc(cap);
	while (buf != NULL) {
		if (len + 1 == cap) {
			char *bigger = realloc(buf, cap * 2);
			if (bigger == NULL) {
				free(buf);
				buf = NULL;
				break;
			}
			buf = bigger;
			cap *= 2;
		}
		ssize_t n = read(fd, buf + len, cap - 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			if (n < 0) {
				free(buf);
				buf = NULL;
			}
			break;
		}
		len += (size_t)n;
	}
	int saved = errno;
	sys_close(fd);
	errno = saved;
	if (buf != NULL)
		buf[len] = '\0';
	return buf;
}

/* A line looks like "12: FLOCK  ADVISORY  WRITE 1867 00:27:10952775 0 EOF",
 * a blocked waiter like "12: -> FLOCK  ADVISORY  WRITE ...". */
static bool line_holds(const char *listing_line, unsigned major_, unsigned minor_, uint64_t ino, long *holder)
{
	/* sscanf on a copy: on the listing itself glibc's sscanf would strlen the
	 * whole rest of it for every line (quadratic with many locks). */
	char line[256];
	size_t n = strcspn(listing_line, "\n");
	if (n >= sizeof line)
		return false;
	memcpy(line, listing_line, n);
	line[n] = '\0';
	char type[16], rw[16];
	unsigned ma, mi;
	unsigned long long in;
	long pid;
	if (sscanf(line, "%*d: %15s %*s %15s %ld %x:%x:%llu", type, rw, &pid, &ma, &mi, &in) != 6)
		return false;
	if (strcmp(type, "FLOCK") != 0 && strcmp(type, "POSIX") != 0 && strcmp(type, "OFDLCK") != 0)
		return false;
	*holder = pid;
	return ma == major_ && mi == minor_ && in == ino;
}

size_t proclocks_pids(const char *listing, uint64_t dev, uint64_t ino, long *pids, size_t max)
{
	unsigned ma = major(dev), mi = minor(dev);
	size_t n = 0;
	for (const char *line = listing; *line != '\0';) {
		long pid;
		if (line_holds(line, ma, mi, ino, &pid) && n < max)
			pids[n++] = pid;
		const char *nl = strchr(line, '\n');
		if (nl == NULL)
			break;
		line = nl + 1;
	}
	return n;
}

bool proclocks_has(const char *listing, uint64_t dev, uint64_t ino)
{
	long pid;
	return proclocks_pids(listing, dev, ino, &pid, 1) > 0;
}
