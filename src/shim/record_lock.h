/* Record locks (fcntl F_SETLK/F_SETLKW/F_GETLK and the F_OFD_ variants) on
 * possibly managed files: shared by fcntl.c and lockf.c. */
#ifndef UUIDLOCK_RECORD_LOCK_H
#define UUIDLOCK_RECORD_LOCK_H

#include <fcntl.h>

/* Like fcntl(fd, cmd, fl) for a lock command, with the sidecar protocol on
 * managed files. */
int record_lock(int fd, int cmd, struct flock *fl);

#endif
