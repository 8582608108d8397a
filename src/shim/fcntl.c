/* fcntl, fcntl64 and __fcntl (one function at one address in glibc 2.36;
 * Debian's libsqlite3, Python and Perl call fcntl64): record locks, classic
 * and OFD, on managed files; descriptor copies (F_DUPFD) for fdtrack.
 *
 * The third argument is read once as a pointer, as glibc's own fcntl does:
 * on every ABI glibc supports an int or no argument travels in the same
 * register, so any command we don't handle is forwarded unchanged -- and the
 * cheapest fcntl calls (F_GETFL, F_GETFD) pay one branch, not a decoder. */
#include "fdtrack.h"
#include "real.h"
#include "share.h"

#include "record_lock.h"

#include "../core/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <string.h>
#include <unistd.h>

static bool is_lock_command(int cmd)
{
	switch (cmd) {
	case F_SETLK: case F_SETLKW: case F_GETLK:
	case F_OFD_SETLK: case F_OFD_SETLKW: case F_OFD_GETLK:
		return true;
	default:
		return false;
	}
}

/* F_GETLK found no local conflict: report a lock held by another client as
 * a write lock on the whole file with l_pid -1 (its pid is on another host). */
static int get_lock(int fd, int cmd, struct flock *fl, const struct managed_file *mf)
{
	struct flock asked = *fl;
	if (REAL(fcntl)(fd, cmd, fl) != 0)
		return -1;
	if (fl->l_type != F_UNLCK || asked.l_type == F_UNLCK || !share_held_elsewhere(mf))
		return 0; /* a local conflict (the kernel's answer), or none at all */
	*fl = (struct flock){ .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0, .l_pid = -1 };
	return 0;
}

/* Drops a range: flush, let the kernel unlock, let the keeper release what
 * nobody holds now.  No need to know which file it is. */
static int unlock_range(int fd, int cmd, struct flock *fl)
{
	share_flush(fd);
	if (REAL(fcntl)(fd, cmd, fl) != 0)
		return -1;
	log_info("unlocked a range through descriptor %d (pid %ld)", fd, (long)getpid());
	share_check();
	return 0;
}

/* Takes or drops a record lock (classic or OFD) on a managed file: the kernel
 * first, for exact local semantics (ranges, upgrades, splitting, the close
 * rule, EDEADLK), then the sidecar, which covers the whole file. */
static int set_lock(int fd, int cmd, struct flock *fl, const struct managed_file *mf)
{
	if (fl->l_type == F_UNLCK)
		return unlock_range(fd, cmd, fl);
	bool nonblocking = cmd == F_SETLK || cmd == F_OFD_SETLK;
	int64_t deadline = share_deadline();
	struct flock asked = *fl;
	for (;;) {
		*fl = asked;
		if (REAL(fcntl)(fd, cmd, fl) != 0)
			return -1; /* EAGAIN, EACCES, EINTR, EDEADLK, EINVAL: the kernel's */
		int err = share_acquire(fd, mf, nonblocking, deadline);
		if (err == 0)
			return 0;
		/* The keeper answers HELD to a process it answered before, so we held
		 * nothing on this file before this call: undoing our range is exact. */
		struct flock undo = asked;
		undo.l_type = F_UNLCK;
		REAL(fcntl)(fd, nonblocking ? cmd : (cmd == F_SETLKW ? F_SETLK : F_OFD_SETLK), &undo);
		if (err == SHARE_YIELD)
			err = share_wait_turn(mf, deadline);
		if (err != 0) {
			errno = err == EWOULDBLOCK ? EAGAIN : err;
			return -1;
		}
	}
}

int record_lock(int fd, int cmd, struct flock *fl)
{
	/* As for flock: a descriptor we locked through unlocks without a lookup. */
	bool sets = cmd != F_GETLK && cmd != F_OFD_GETLK;
	if (sets && fl->l_type == F_UNLCK && fdtrack_test(fd))
		return unlock_range(fd, cmd, fl);
	struct managed_file mf;
	switch (managed_lookup(fd, &mf)) {
	case NOT_MANAGED:
		return REAL(fcntl)(fd, cmd, fl);
	case REFUSED:
		errno = ENOLCK;
		return -1;
	default:
		break;
	}
	if (cmd == F_GETLK || cmd == F_OFD_GETLK)
		return get_lock(fd, cmd, fl, &mf);
	return set_lock(fd, cmd, fl, &mf);
}

/* F_DUPFD: the copy shares the description's lock. */
__attribute__((noinline)) static int dup_fd(int fd, int cmd, void *arg)
{
	int r = REAL(fcntl)(fd, cmd, arg);
	if (r >= 0)
		fdtrack_copy(fd, r);
	return r;
}

/* The wrapper proper.  It is exported as the variadic fcntl below: on the
 * x86-64 (and every Linux) calling convention, fcntl(fd, cmd, arg) passes the
 * optional argument in the same register as a third fixed parameter -- glibc
 * itself reads it as one void * -- and without va_start the compiler can
 * make the common case a plain tail call into libc. */
static int shim_fcntl(int fd, int cmd, void *arg)
{
	if (is_lock_command(cmd) && !shim_manages_nothing())
		return record_lock(fd, cmd, arg);
	if ((cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC) && fdtrack_in_use())
		return dup_fd(fd, cmd, arg);
	return REAL(fcntl)(fd, cmd, arg);
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wattribute-alias" /* the point: see shim_fcntl */
#endif
EXPORT int fcntl(int fd, int cmd, ...) __attribute__((alias("shim_fcntl")));
EXPORT int fcntl64(int fd, int cmd, ...) __attribute__((alias("shim_fcntl")));
EXPORT int __fcntl(int fd, int cmd, ...) __attribute__((alias("shim_fcntl")));
