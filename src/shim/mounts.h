/* The mounts of this process's mount namespace, as far as they decide what
 * is managed: a filesystem mounted at or below a managed directory is
 * managed (UUIDLOCK_PATHS=/mnt with the share at /mnt/share), and so is the
 * one a managed directory lives on.  Read from /proc/self/mountinfo at the
 * first lock call, after a managed directory is resolved (see dirs.h), and
 * again whenever a lock call meets a mount the table doesn't know (a share remounted under a running program: a new mount id
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

/* Reads the mount table now (after a managed directory was resolved). */
void mounts_refresh(const struct config *c);

/* Counts the refreshes: what was found with one mount table may be wrong
 * with the next (a share unmounted, or mounted again elsewhere). */
unsigned mounts_generation(void);

/* Does the mount with this id and device lie on the share with device
 * share_dev: is it that share, or mounted inside it?  (By the table.) */
bool mounts_leads_through(int mnt_id, uint64_t dev, uint64_t share_dev);

/* Before looking at path for a lock call on a file with this device and
 * mount: may we?  Not if path is on a share the file isn't on and doesn't
 * lie on: that share may hang, and the call doesn't concern it.  Reads
 * /proc/self/mountinfo (local, no round trip). */
enum reach {
	REACH_FREE,        /* a local filesystem, the file's share, or one it lies on */
	REACH_SHARE_ROOT,  /* the same, where path is a share's mount point: *share_dev */
	REACH_OTHER_SHARE, /* another share: *share_dev */
	REACH_BUSY,        /* a signal handler interrupted our own reading: can't tell */
};
enum reach mounts_reach(const char *path, uint64_t dev, int mnt_id, uint64_t *share_dev);

#endif
