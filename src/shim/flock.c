/* flock(2) on managed files.
 *
 * The kernel lock is still taken, on the same descriptor: among the processes
 * of this host it gives the exact flock semantics (per open file description,
 * dup, fork, close, conversions, two open()s conflicting).  Only the first
 * local holder makes the host take the sidecar, through the keeper. */
#include "fdtrack.h"
#include "real.h"
#include "share.h"

#include "../core/log.h"

#include <errno.h>
#include <sys/file.h>
#include <unistd.h>

static int take_flock(const struct lock_call *call)
{
	return REAL(flock)(call->fd, *(const int *)call->args);
}

static void undo_flock(const struct lock_call *call)
{
	REAL(flock)(call->fd, LOCK_UN);
}

static struct lock_call flock_call(int fd, const int *op)
{
	return (struct lock_call){ .fd = fd, .nonblocking = *op & LOCK_NB, .busy_errno = EWOULDBLOCK,
				   .take = take_flock, .undo = undo_flock, .args = (void *)op };
}

static int flock_managed(int fd, int op, const struct managed_file *mf)
{
	struct lock_call call = flock_call(fd, &op);
	if ((op & ~LOCK_NB) == LOCK_UN)
		return share_unlock(&call, "descriptor");
	return share_lock(&call, mf);
}

EXPORT int flock(int fd, int op)
{
	if (shim_manages_nothing())
		return REAL(flock)(fd, op);
	/* A descriptor we locked through (or a copy) unlocks without the lookup's
	 * round trips to the share; any other goes through the lookup. */
	if ((op & ~LOCK_NB) == LOCK_UN && fdtrack_test(fd)) {
		struct lock_call call = flock_call(fd, &op);
		return share_unlock(&call, "descriptor");
	}
	struct managed_file mf;
	switch (managed_lookup(fd, &mf)) {
	case MANAGED:
		return flock_managed(fd, op, &mf);
	case REFUSED:
		errno = ENOLCK;
		return -1;
	default:
		return REAL(flock)(fd, op);
	}
}
