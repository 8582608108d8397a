/* Raw system calls for the calls the shim interposes.
 *
 * The core runs inside the preloaded library, where a plain call to close()
 * or flock() would land in our own wrapper.  Calling the kernel directly
 * keeps the core ignorant of interposition and makes recursion impossible;
 * the build checks that no core object references an interposed symbol. */
#ifndef UUIDLOCK_SYS_H
#define UUIDLOCK_SYS_H

#include <sys/syscall.h>
#include <unistd.h>

static inline int sys_close(int fd) { return (int)syscall(SYS_close, fd); }
static inline int sys_flock(int fd, int op) { return (int)syscall(SYS_flock, fd, op); }

#endif
