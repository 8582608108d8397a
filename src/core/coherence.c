#include "coherence.h"

#include "sys.h"

#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

bool coherence_is_wal_index(const char *file)
{
	size_t n = strlen(file);
	return n > 4 && strcmp(file + n - 4, "-shm") == 0;
}

/* Calls fn on a descriptor of each guarded file that exists. */
static void for_each_guarded_file(const char *file, void (*fn)(int fd))
{
	char path[PATH_MAX];
	size_t n = strlen(file);
	bool wal = coherence_is_wal_index(file);
	static const char *const siblings[] = { "", "-wal" }; /* DB, DB-wal */
	for (unsigned i = 0; i < (wal ? 3u : 1u); i++) {
		if (i == 0)
			snprintf(path, sizeof path, "%s", file);
		else if ((size_t)snprintf(path, sizeof path, "%.*s%s", (int)(n - 4), file, siblings[i - 1]) >= sizeof path)
			continue;
		/* O_RDONLY is enough for both: fsync flushes the inode's dirty pages
		 * whoever dirtied them, DONTNEED drops its clean ones. */
		int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
		if (fd < 0)
			continue;
		fn(fd);
		sys_close(fd);
	}
}

static void flush_fd(int fd)
{
	fsync(fd);
}

static void drop_fd(int fd)
{
	posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
}

void coherence_flush(const char *file)
{
	for_each_guarded_file(file, flush_fd);
}

void coherence_drop(const char *file)
{
	for_each_guarded_file(file, drop_fd);
}
