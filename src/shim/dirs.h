/* The managed directories of UUIDLOCK_PATHS, each resolved (symlinks, "..",
 * its device) only when a lock call could concern it.  Resolving looks at
 * every component of its path, and a component on a share is a round trip
 * that never ends while the share hangs (a stopped sshfs, a vanished NFS
 * server): a lock call must not wait for a share its file isn't on. */
#ifndef UUIDLOCK_DIRS_H
#define UUIDLOCK_DIRS_H

#include "../core/config.h"

#include <stdbool.h>
#include <stdint.h>

/* Before a lock call on a file with this device and mount id: resolves the
 * directories that could concern it, as far as no other share is in the
 * way (a directory whose path leads into another share counts as on that
 * share, and is resolved by a call on it).  False if the call must fail: a
 * managed directory is bad (reported once), or a signal handler's call
 * interrupted our own resolution.  Thread-safe, fork-safe; waits for no
 * other thread's look at a share. */
bool dirs_settle(struct config *c, uint64_t dev, int mnt_id);

/* Is d resolved (path, len and dev valid)? */
bool dirs_resolved(const struct managed_dir *d);

#endif
