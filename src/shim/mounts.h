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

/* At the first lock on an sshfs mount that keeps sshfs's own attribute
 * cache (which no call on this client can revalidate): one warning. */
void mounts_warn_if_caching(int mnt_id, uint64_t dev);

/* Reads the mount table now (the first lock call's resolution). */
void mounts_refresh(const struct config *c);

#endif
