/* /proc/self/mountinfo, line by line, and what it can't say: whether an
 * sshfs mount keeps its own attribute cache (sshfs's options don't show in
 * mountinfo; its daemon's command line has them). */
#ifndef UUIDLOCK_MOUNTINFO_H
#define UUIDLOCK_MOUNTINFO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct mountinfo_line {
	int id;
	int parent; /* the mount this one is mounted on */
	uint64_t dev; /* as the line says: "MAJOR:MINOR" */
	const char *mount_point; /* unescaped */
	const char *type;        /* "fuse.sshfs", "nfs4", ... */
};

/* Calls fn for every mount of this process's namespace, in mountinfo's
 * order (later mounts on top).  Not reentrant: one static buffer, no
 * allocation.  Returns false (errno set) if mountinfo can't be read. */
bool mountinfo_each(void (*fn)(const struct mountinfo_line *m, void *arg), void *arg);

/* The sshfs daemon serving mount_point, found by its command line: does it
 * keep sshfs's own attribute and name cache (no -o dir_cache=no)?  That
 * cache makes other clients' changes invisible for up to 20 s, and no call
 * on the client can revalidate it.  1: yes, 0: no, -1: no daemon found. */
int sshfs_caches(const char *mount_point);

/* Options to mount an sshfs share with, for diagnostics. */
#define SSHFS_SAFE_OPTIONS "dir_cache=no,attr_timeout=0,entry_timeout=0,negative_timeout=0"

#endif
