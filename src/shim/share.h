/* The share side of a managed lock, as the wrappers see it: after the kernel
 * lock is taken, make sure this host holds the sidecar; after a kernel lock
 * may have gone, let the keeper release what nobody holds any more. */
#ifndef UUIDLOCK_SHARE_H
#define UUIDLOCK_SHARE_H

#include "shim.h"

#include <stdbool.h>
#include <stdint.h>

/* The moment a lock call gives up waiting (UUIDLOCK_TIMEOUT), on the
 * monotonic clock; -1: never.  One per call, across turns. */
int64_t share_deadline(void);

/* share_acquire's answer when another host has asked for a turn (fairness,
 * see src/core/sidecar.c): give the kernel lock back, share_wait_turn, and
 * try the whole lock call again. */
#define SHARE_YIELD (-1)

/* Returns 0 when this host holds mf's sidecar (fd is then marked and its
 * cached pages dropped), SHARE_YIELD, else the errno the lock call must
 * fail with: EWOULDBLOCK (busy, non-blocking), EINTR, or ENOLCK (reported). */
int share_acquire(int fd, const struct managed_file *mf, bool nonblocking, int64_t deadline);

/* After SHARE_YIELD, holding no kernel lock on the file: returns 0 when
 * this host may take it again, else EINTR or ENOLCK (reported). */
int share_wait_turn(const struct managed_file *mf, int64_t deadline);

/* True if another client holds mf's sidecar (F_GETLK's question). */
bool share_held_elsewhere(const struct managed_file *mf);

/* Flushes fd's data to the share before a lock on it may end. */
void share_flush(int fd);

/* A managed lock may have ended: returns once the keeper has released
 * every sidecar that no local lock needs.  Preserves errno. */
void share_check(void);

#endif
