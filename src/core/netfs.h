/* UUIDLOCK_PATHS=auto: which filesystems are shares whose locks may not
 * work across clients. */
#ifndef UUIDLOCK_NETFS_H
#define UUIDLOCK_NETFS_H

#include <stdbool.h>

/* True for network and FUSE filesystems, by statfs f_type: NFS, SMB/CIFS,
 * FUSE (sshfs, rclone, s3fs, GlusterFS ...), 9p, Ceph, AFS, Coda, Lustre,
 * GFS2, OCFS2, OrangeFS, NCP. */
bool netfs_type(long f_type);

/* The same by the type mountinfo names ("fuse.sshfs", "nfs4", "cifs" ...). */
bool netfs_fstype(const char *type);

/* The name of such a type, for diagnostics ("nfs", "fuse" ...), or NULL. */
const char *netfs_name(long f_type);

#endif
