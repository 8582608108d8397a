/* The mounts of this process's mount namespace, as far as they decide what
 * is managed: a filesystem mounted at or below a managed directory is
 * managed (UUIDLOCK_PATHS=/mnt with the share at /mnt/share), and so is the
 * one a managed directory lives on.  Read from /proc/self/mountinfo at the
 * first lock call and again whenever a lock call meets a mount the table
 * doesn't know (a share remounted under a running program: a new mount id
 * or a new device number).  No descriptor is kept open between calls. */
#ifndef UUIDLOCK_MOUNTS_H
#define UUIDLOCK_MOUNTS_H

#include "../core/config.h"

#include <stdbool.h>
#include <stdint.h>

#define MOUNT_ID_UNKNOWN (-1) /* the kernel can't name a descriptor's mount (< 5.8) */

/* Is the mount with this id and device managed?  Re-reads the mount table
 * first if it doesn't know that mount.  Thread-safe, async-signal-safe in
 * practice (no allocation, no lock waited for by the thread that holds it). */
bool mounts_managed(const struct config *c, int mnt_id, uint64_t dev);

/* Could a mount the table knows as unmanaged be a new one with the same
 * numbers?  Linux hands out the lowest free mount id and anonymous device
 * number (FUSE, NFS, tmpfs ...): a share mounted where an unmanaged
 * filesystem was unmounted can get both.  Block devices' numbers are the
 * device's own. */
bool mounts_numbers_reusable(int mnt_id, uint64_t dev);

/* A file below a managed directory on a mount the table says is unmanaged:
 * re-reads the table (unless it did for this mount since the last refresh)
 * and says whether the mount is managed now. */
bool mounts_recheck(const struct config *c, int mnt_id, uint64_t dev);

/* At the first lock on an sshfs mount that keeps sshfs's own attribute
 * cache (which no call on this client can revalidate): one warning. */
void mounts_warn_if_caching(int mnt_id, uint64_t dev);

/* Reads the mount table now (the first lock call's resolution). */
void mounts_refresh(const struct config *c);

#endif
