/* /proc/locks: the kernel's list of every lock on this host.
 * The keeper reads it to learn whether any local process still holds a lock
 * on a file, however that lock was taken and whoever holds it now. */
#ifndef UUIDLOCK_PROCLOCKS_H
#define UUIDLOCK_PROCLOCKS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Reads /proc/locks into a malloc'd, NUL-terminated buffer (caller frees).
 * Returns NULL with errno set on failure. */
char *proclocks_read(void);

/* True if the listing shows a granted flock, POSIX or OFD lock on dev:ino.
 * Waiters ("->" lines) and leases are not holders.  A FLOCK line may name a
 * pid that has exited (the description lives on in another process), so
 * only the presence of dev:ino counts. */
bool proclocks_has(const char *listing, uint64_t dev, uint64_t ino);

/* Collects up to max pids of processes listed as holding a lock on dev:ino
 * (pids of exited flock takers included: check before using). */
size_t proclocks_pids(const char *listing, uint64_t dev, uint64_t ino, long *pids, size_t max);

#endif
