/* The calls that end flock and OFD locks implicitly by closing a descriptor:
 * close, fclose, dup2/dup3 onto a descriptor, close_range, closefrom; and the
 * dup family, whose copies share a description's lock.
 *
 * Only descriptors marked in fdtrack (a managed lock was taken through them
 * or a copy of them) need anything: after the close, let the keeper release
 * the sidecar if no local lock is left (it flushes the file's data first:
 * see share_unlock). */
#include "fdtrack.h"
#include "real.h"
#include "share.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

EXPORT int close(int fd)
{
	if (!fdtrack_test(fd))
		return REAL(close)(fd);
	fdtrack_clear(fd);
	uint64_t dev = share_fd_device(fd);
	int r = REAL(close)(fd);
	share_check(dev);
	return r;
}

EXPORT int fclose(FILE *stream)
{
	int fd = fileno(stream);
	if (!fdtrack_test(fd))
		return REAL(fclose)(stream);
	fdtrack_clear(fd);
	uint64_t dev = share_fd_device(fd);
	int r = REAL(fclose)(stream);
	share_check(dev);
	return r;
}

EXPORT int dup(int fd)
{
	if (!fdtrack_in_use())
		return REAL(dup)(fd);
	int r = REAL(dup)(fd);
	if (r >= 0)
		fdtrack_copy(fd, r);
	return r;
}

/* dup2 and dup3 close newfd first if it is open: that may end its lock. */
static int dup_onto(int oldfd, int newfd, int flags, bool use_dup3)
{
	if (!fdtrack_in_use())
		return use_dup3 ? REAL(dup3)(oldfd, newfd, flags) : REAL(dup2)(oldfd, newfd);
	bool closes_marked = oldfd != newfd && fdtrack_test(newfd);
	uint64_t dev = closes_marked ? share_fd_device(newfd) : 0;
	int r = use_dup3 ? REAL(dup3)(oldfd, newfd, flags) : REAL(dup2)(oldfd, newfd);
	if (r >= 0)
		fdtrack_copy(oldfd, newfd);
	if (closes_marked)
		share_check(dev);
	return r;
}

EXPORT int dup2(int oldfd, int newfd)
{
	return dup_onto(oldfd, newfd, 0, false);
}

EXPORT int dup3(int oldfd, int newfd, int flags)
{
	return dup_onto(oldfd, newfd, flags, true);
}

/* Unmarks every marked descriptor in [first, last]; true if there was one. */
static bool unmark_range(unsigned first, unsigned last)
{
	bool any = last >= FDTRACK_LIMIT && fdtrack_high_marked();
	for (int fd = fdtrack_next(first, last); fd >= 0; fd = fdtrack_next((unsigned)fd + 1, last)) {
		fdtrack_clear(fd);
		any = true;
	}
	return any;
}

EXPORT int close_range(unsigned first, unsigned last, int flags)
{
	if ((flags & CLOSE_RANGE_CLOEXEC) || first > last)
		return REAL(close_range)(first, last, flags);
	bool any = unmark_range(first, last);
	int r = REAL(close_range)(first, last, flags);
	if (any)
		share_check(0); /* whichever shares they were on */
	return r;
}

/* glibc's closefrom calls close_range internally, never our wrapper. */
EXPORT void closefrom(int lowfd)
{
	bool any = lowfd >= 0 && unmark_range((unsigned)lowfd, ~0U);
	REAL(closefrom)(lowfd);
	if (any)
		share_check(0);
}
