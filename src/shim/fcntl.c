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

/* A record lock call's arguments, for share_lock and share_unlock. */
struct record_args {
	int cmd;
	struct flock asked; /* as the program passed it */
};

/* The kernel only reads a set-lock request, so programs may pass one in
 * read-only memory (a static const struct flock): never write to theirs. */
static int take_record_lock(const struct lock_call *call)
{
	const struct record_args *a = call->args;
	struct flock fl = a->asked;
	return REAL(fcntl)(call->fd, a->cmd, &fl);
}

/* Drops the range asked for, without waiting. */
static void undo_record_lock(const struct lock_call *call)
{
	const struct record_args *a = call->args;
	struct flock undo = a->asked;
	undo.l_type = F_UNLCK;
	int cmd = a->cmd == F_SETLKW ? F_SETLK : a->cmd == F_OFD_SETLKW ? F_OFD_SETLK : a->cmd;
	REAL(fcntl)(call->fd, cmd, &undo);
}

static struct lock_call record_call(int fd, struct record_args *a)
{
	return (struct lock_call){ .fd = fd, .nonblocking = a->cmd == F_SETLK || a->cmd == F_OFD_SETLK,
				   .busy_errno = EAGAIN, .take = take_record_lock, .undo = undo_record_lock,
				   .args = a };
}

/* Takes or drops a record lock (classic or OFD) on a managed file (mf NULL:
 * a drop through a descriptor we locked through): the kernel first, for
 * exact local semantics (ranges, upgrades, splitting, the close rule,
 * EDEADLK), then the sidecar, which covers the whole file. */
static int set_lock(int fd, int cmd, struct flock *fl, const struct managed_file *mf)
{
	struct record_args a = { .cmd = cmd, .asked = *fl };
	struct lock_call call = record_call(fd, &a);
	if (fl->l_type == F_UNLCK)
		return share_unlock(&call, "a range through descriptor");
	return share_lock(&call, mf);
}

int record_lock(int fd, int cmd, struct flock *fl)
{
	/* As for flock: a descriptor we locked through unlocks without a lookup. */
	bool sets = cmd != F_GETLK && cmd != F_OFD_GETLK;
	if (sets && fl->l_type == F_UNLCK && fdtrack_test(fd))
		return set_lock(fd, cmd, fl, NULL);
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
