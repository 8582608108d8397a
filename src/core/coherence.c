#include "coherence.h"

#include "sys.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
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
		 * whoever dirtied them, DONTNEED drops its clean ones.  A file we
		 * may not read, only write, can have been written too. */
		int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
		if (fd < 0 && errno == EACCES)
			fd = open(path, O_WRONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
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

/* The pages, and the attributes: the client asks the server for the size
 * and mtime (FUSE and NFS cache them: a stale size cuts reads short).  Both
 * are the inode's, so this serves every local process, before any is told
 * it holds the lock. */
static void drop_fd(int fd)
{
	posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
	struct statx sx;
	statx(fd, "", AT_EMPTY_PATH | AT_STATX_FORCE_SYNC, STATX_SIZE | STATX_MTIME, &sx);
}

void coherence_flush(const char *file)
{
	for_each_guarded_file(file, flush_fd);
}

void coherence_drop(const char *file)
{
	for_each_guarded_file(file, drop_fd);
}
