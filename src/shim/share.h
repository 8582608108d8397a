/* The share side of a managed lock, as the wrappers see it: after the kernel
 * lock is taken, make sure this host holds the sidecar; after a kernel lock
 * may have gone, let the keeper release what nobody holds any more. */
#ifndef UUIDLOCK_SHARE_H
#define UUIDLOCK_SHARE_H

#include "shim.h"

#include <stdbool.h>
#include <stdint.h>

/* One managed lock call, as the family (flock, fcntl, lockf) makes it:
 * take is the kernel call as the program made it (-1 with the kernel's
 * errno on failure), undo gives back what take took. */
struct lock_call {
	int fd;
	bool nonblocking;
	int busy_errno; /* what a busy non-blocking call fails with */
	int (*take)(const struct lock_call *call);
	void (*undo)(const struct lock_call *call);
	void *args; /* the family's own arguments */
};

/* Takes the kernel lock, then makes sure this host holds mf's sidecar; gives
 * the kernel lock back and waits when another host's turn comes first
 * (fairness, see src/core/sidecar.c), across turns until UUIDLOCK_TIMEOUT.
 * Returns 0, or -1 with errno: the kernel's, busy_errno, EINTR or ENOLCK
 * (reported).  A call that succeeds leaves errno as it was. */
int share_lock(const struct lock_call *call, const struct managed_file *mf);

/* An unlock (call->take is the kernel's unlock): unlock, and return
 * once the keeper has released what nobody holds now -- at once if the
 * descriptor still holds a lock of this process's.  No need to know which
 * file it is.  what names it in the log ("descriptor"). */
int share_unlock(const struct lock_call *call, const char *what);

/* True if another client holds mf's sidecar (F_GETLK's question). */
bool share_held_elsewhere(const struct managed_file *mf);

/* A managed lock on a file of device dev (0: on any) may have ended:
 * returns once the keeper has released every sidecar there that no local
 * lock needs.  Preserves errno. */
void share_check(uint64_t dev);

/* The device of fd's file, as the client knows it (no round trip to the
 * share), for share_check; 0 if fd is not open. */
uint64_t share_fd_device(int fd);

#endif
