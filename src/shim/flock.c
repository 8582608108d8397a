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

/* Unlock: flush, let the kernel unlock, let the keeper release what nobody
 * holds now.  No need to know which file it is. */
static int flock_unlock_managed(int fd, int op)
{
	share_flush(fd);
	if (REAL(flock)(fd, op) != 0)
		return -1;
	log_info("unlocked descriptor %d (pid %ld)", fd, (long)getpid());
	share_check();
	return 0;
}

static int flock_managed(int fd, int op, const struct managed_file *mf)
{
	if ((op & ~LOCK_NB) == LOCK_UN)
		return flock_unlock_managed(fd, op);
	int64_t deadline = share_deadline();
	for (;;) {
		if (REAL(flock)(fd, op) != 0)
			return -1; /* EINVAL, EBADF, EWOULDBLOCK or EINTR: exactly the kernel's */
		int err = share_acquire(fd, mf, op & LOCK_NB, deadline);
		if (err == 0)
			return 0;
		/* Not held across clients: give the kernel lock back so no local
		 * process waits behind a lock we don't have. */
		REAL(flock)(fd, LOCK_UN);
		if (err == SHARE_YIELD)
			err = share_wait_turn(mf, deadline);
		if (err != 0) {
			errno = err;
			return -1;
		}
	}
}

EXPORT int flock(int fd, int op)
{
	if (shim_manages_nothing())
		return REAL(flock)(fd, op);
	/* A descriptor we locked through (or a copy) unlocks without the lookup's
	 * round trips to the share; any other goes through the lookup. */
	if ((op & ~LOCK_NB) == LOCK_UN && fdtrack_test(fd))
		return flock_unlock_managed(fd, op);
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
