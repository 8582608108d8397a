#include "proclocks.h"

#include <stdbool.h>

#include "sys.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <dirent.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

static char *read_listing(void)
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
static bool parse_line(const char *listing_line, struct proclock *lock)
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
	*lock = (struct proclock){ .dev = makedev(ma, mi), .ino = in, .pid = pid };
	return true;
}

static int by_file(const void *a, const void *b)
{
	const struct proclock *x = a, *y = b;
	if (x->dev != y->dev)
		return x->dev < y->dev ? -1 : 1;
	return x->ino < y->ino ? -1 : x->ino > y->ino;
}

int proclocks_parse(const char *listing, struct proclocks *out)
{
	size_t lines = 1;
	for (const char *p = listing; (p = strchr(p, '\n')) != NULL; p++)
		lines++;
	out->locks = malloc(lines * sizeof *out->locks);
	out->n = 0;
	if (out->locks == NULL)
		return ENOMEM;
	for (const char *line = listing; *line != '\0';) {
		if (parse_line(line, &out->locks[out->n]))
			out->n++;
		const char *nl = strchr(line, '\n');
		if (nl == NULL)
			break;
		line = nl + 1;
	}
	qsort(out->locks, out->n, sizeof *out->locks, by_file);
	return 0;
}

int proclocks_load(struct proclocks *out)
{
	char *listing = read_listing();
	if (listing == NULL)
		return errno;
	int err = proclocks_parse(listing, out);
	free(listing);
	return err;
}

void proclocks_free(struct proclocks *p)
{
	free(p->locks);
	p->locks = NULL;
	p->n = 0;
}

const struct proclock *proclocks_on(const struct proclocks *p, uint64_t dev, uint64_t ino, size_t *count)
{
	struct proclock key = { .dev = dev, .ino = ino };
	size_t lo = 0, hi = p->n;
	while (lo < hi) { /* the first lock not before dev:ino */
		size_t mid = lo + (hi - lo) / 2;
		if (by_file(&p->locks[mid], &key) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	size_t end = lo;
	while (end < p->n && by_file(&p->locks[end], &key) == 0)
		end++;
	*count = end - lo;
	return p->locks + lo;
}

/* Which of want[0..nwant) have no line in p: their indexes go to missing. */
static size_t unlisted(const struct proclocks *p, const struct proclock *want, size_t nwant, size_t *missing)
{
	size_t n = 0;
	for (size_t i = 0; i < nwant; i++) {
		size_t count;
		proclocks_on(p, want[i].dev, want[i].ino, &count);
		if (count == 0)
			missing[n++] = i;
	}
	return n;
}

static const char *next_line(const char *line)
{
	const char *nl = strchr(line, '\n');
	return nl == NULL || nl[1] == '\0' ? NULL : nl + 1;
}

/* Sets found[k] to pid for the files of want[missing[k]] that fdinfo text
 * names in one of its "lock:\t1: FLOCK  ADVISORY  WRITE 0 fe:00:123 0 EOF" lines. */
static void match_fdinfo(const char *text, long pid, const struct proclock *want, const size_t *missing,
			 size_t nmissing, long *found)
{
	for (const char *line = text; line != NULL; line = next_line(line)) {
		struct proclock lock;
		if (strncmp(line, "lock:", 5) != 0 || !parse_line(line + 5, &lock))
			continue;
		for (size_t k = 0; k < nmissing; k++)
			if (want[missing[k]].dev == lock.dev && want[missing[k]].ino == lock.ino)
				found[k] = pid;
	}
}

static bool is_number(const char *name)
{
	return name[0] >= '0' && name[0] <= '9' && name[strspn(name, "0123456789")] == '\0';
}

/* A process or descriptor that is gone, or not ours to look at, holds
 * nothing we must know of; any other failure (out of descriptors) leaves
 * the answer unknown. */
static int unless_gone(int err)
{
	return err == ENOENT || err == ESRCH || err == EACCES || err == EPERM ? 0 : err;
}

/* Reads every fdinfo file of process pid into match_fdinfo.  Its first 4 kB
 * are enough: all of its lock lines are on the descriptor's one file. */
static int scan_process(const char *pid, const struct proclock *want, const size_t *missing, size_t nmissing,
			long *found)
{
	char path[64];
	snprintf(path, sizeof path, "/proc/%s/fdinfo", pid);
	DIR *dir = opendir(path);
	if (dir == NULL)
		return unless_gone(errno);
	int err = 0;
	for (struct dirent *d; err == 0 && (d = readdir(dir)) != NULL;) {
		if (!is_number(d->d_name))
			continue;
		char text[4096];
		int fd = openat(dirfd(dir), d->d_name, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			err = unless_gone(errno);
			continue;
		}
		ssize_t n = read(fd, text, sizeof text - 1);
		err = n < 0 ? unless_gone(errno) : 0;
		sys_close(fd);
		if (n <= 0)
			continue;
		text[n] = '\0';
		match_fdinfo(text, atol(pid), want, missing, nmissing, found);
	}
	closedir(dir);
	return err;
}

static bool all_found(const long *found, size_t n)
{
	for (size_t k = 0; k < n; k++)
		if (!found[k])
			return false;
	return true;
}

/* Appends a line with no nameable owner for each file found, keeping p sorted. */
static int add_found(struct proclocks *p, const struct proclock *want, const size_t *missing, size_t nmissing,
		     const long *found)
{
	struct proclock *bigger = realloc(p->locks, (p->n + nmissing + 1) * sizeof *bigger);
	if (bigger == NULL)
		return ENOMEM;
	p->locks = bigger;
	for (size_t k = 0; k < nmissing; k++)
		if (found[k])
			p->locks[p->n++] = (struct proclock){
				.dev = want[missing[k]].dev, .ino = want[missing[k]].ino, .pid = -1, .seen_in = found[k]
			};
	qsort(p->locks, p->n, sizeof *p->locks, by_file);
	return 0;
}

int proclocks_add_unlisted(struct proclocks *p, const struct proclock *want, size_t nwant, uid_t uid)
{
	size_t missing[nwant + 1];
	size_t nmissing = unlisted(p, want, nwant, missing);
	if (nmissing == 0)
		return 0;
	DIR *procs = opendir("/proc");
	if (procs == NULL)
		return errno;
	long found[nmissing]; /* a process holding it, 0: none found */
	memset(found, 0, sizeof found);
	int err = 0;
	for (struct dirent *d; err == 0 && !all_found(found, nmissing) && (d = readdir(procs)) != NULL;) {
		struct stat st;
		if (is_number(d->d_name) && fstatat(dirfd(procs), d->d_name, &st, 0) == 0 && st.st_uid == uid)
			err = scan_process(d->d_name, want, missing, nmissing, found);
	}
	closedir(procs);
	return err != 0 ? err : add_found(p, want, missing, nmissing, found);
}
