/* flock(2) on managed files.
 *
 * The kernel lock is still taken, on the same descriptor: among the processes
 * of this host it gives the exact flock semantics (per open file description,
 * dup, fork, close, conversions, two open()s conflicting).  Only the first
 * local holder makes the host take the sidecar, through the keeper. */
#include "real.h"
#include "share.h"

#include "../core/log.h"

#include <errno.h>
#include <sys/file.h>
#include <unistd.h>

static int flock_managed(int fd, int op, const struct managed_file *mf)
{
	bool unlock = (op & ~LOCK_NB) == LOCK_UN;
	if (unlock)
		share_flush(fd);
	if (REAL(flock)(fd, op) != 0)
		return -1; /* EINVAL, EBADF, EWOULDBLOCK or EINTR: exactly the kernel's */
	if (unlock) {
		log_info("unlocked %s (pid %ld)", mf->sidecar, (long)getpid());
		share_check();
		return 0;
	}
	int err = share_acquire(fd, mf, op & LOCK_NB);
	if (err == 0)
		return 0;
	/* Not held across clients: give the kernel lock back so no local
	 * process waits behind a lock we don't have. */
	REAL(flock)(fd, LOCK_UN);
	errno = err;
	return -1;
}

EXPORT int flock(int fd, int op)
{
	if (shim_manages_nothing())
		return REAL(flock)(fd, op);
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
