/* /proc/locks: the kernel's list of every lock on this host.
 * The keeper reads it to learn whether any local process still holds a lock
 * on a file, however that lock was taken and whoever holds it now. */
#ifndef UUIDLOCK_PROCLOCKS_H
#define UUIDLOCK_PROCLOCKS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* A granted flock, POSIX or OFD lock.  Waiters ("->" lines) and leases are
 * not holders.  pid: the process that took it (-1 for OFD locks); for a
 * FLOCK lock it may have exited while its open file description lives on. */
struct proclock {
	uint64_t dev, ino;
	long pid;
	long seen_in; /* a line proclocks_add_unlisted added: a process holding it */
};

/* The granted locks, sorted by file, so that a check of many held files
 * costs one read and one parse of the listing. */
struct proclocks {
	struct proclock *locks;
	size_t n;
};

/* Reads and parses /proc/locks.  Returns 0, or an errno. */
int proclocks_load(struct proclocks *out);

/* Parses a listing in /proc/locks format (what proclocks_load reads). */
int proclocks_parse(const char *listing, struct proclocks *out);

void proclocks_free(struct proclocks *p);

/* A lock /proc/locks can leave out: in a pid namespace with its own /proc
 * the kernel lists only locks whose owner pid can be named there, so a
 * flock or OFD lock whose taker exited vanishes while a survivor still
 * holds it.  /proc/PID/fdinfo/FD lists the locks held through each
 * descriptor of the processes we can see, whoever took them.  For each of
 * the files want[0..nwant) (dev, ino; pid ignored) that has no line in p,
 * adds one line with pid -1 (no owner we can name) if a descriptor of a
 * process of uid holds a lock on it; seen_in names that process.  Returns 0, or an errno (p unchanged
 * then: the caller must not take "unlisted" for "free"). */
int proclocks_add_unlisted(struct proclocks *p, const struct proclock *want, size_t nwant, uid_t uid);

/* The locks on dev:ino: *count of them from the returned pointer on. */
const struct proclock *proclocks_on(const struct proclocks *p, uint64_t dev, uint64_t ino, size_t *count);

#endif
