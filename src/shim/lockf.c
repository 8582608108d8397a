/* lockf and lockf64.  glibc's lockf calls fcntl internally, so the fcntl
 * wrapper never sees it: rebuild it here on record_lock, as POSIX defines it
 * (a write lock from the current offset over len bytes; len 0 = to EOF,
 * negative = before the offset). */
#include "real.h"
#include "record_lock.h"
#include "shim.h"

#include <errno.h>
#include <unistd.h>

static int lockf_managed(int fd, int cmd, off_t len)
{
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_CUR, .l_start = 0, .l_len = len };
	switch (cmd) {
	case F_LOCK:
		return record_lock(fd, F_SETLKW, &fl);
	case F_TLOCK:
		return record_lock(fd, F_SETLK, &fl);
	case F_ULOCK:
		fl.l_type = F_UNLCK;
		return record_lock(fd, F_SETLK, &fl);
	case F_TEST:
		fl.l_type = F_RDLCK; /* as glibc: a lock held by anyone else conflicts */
		if (record_lock(fd, F_GETLK, &fl) != 0)
			return -1;
		if (fl.l_type == F_UNLCK || fl.l_pid == getpid())
			return 0;
		errno = EACCES;
		return -1;
	default:
		errno = EINVAL;
		return -1;
	}
}

EXPORT int lockf(int fd, int cmd, off_t len)
{
	if (shim_manages_nothing())
		return REAL(lockf)(fd, cmd, len);
	return lockf_managed(fd, cmd, len);
}

EXPORT int lockf64(int fd, int cmd, off64_t len) __attribute__((alias("lockf")));
