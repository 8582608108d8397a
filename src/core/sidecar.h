/* The UUID sidecar protocol: the share-side half of every lock.
 * See sidecar.c for the whole protocol in one place. */
#ifndef UUIDLOCK_SIDECAR_H
#define UUIDLOCK_SIDECAR_H

#include "config.h"
#include "hostid.h"

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define SIDECAR_TOKEN_MAX (CONFIG_PREFIX_MAX + 40)
#define SIDECAR_HEAD_MAX 4096 /* we never read more of a sidecar than this */
#define HEARTBEAT_DIGITS 17

/* One attempt to hold one sidecar: its path and the first line we wrote. */
struct sidecar_hold {
	char path[PATH_MAX];
	char token[SIDECAR_TOKEN_MAX]; /* prefix + fresh UUID */
	int fd; /* the create's descriptor, kept for the heartbeat; -1: none */
};

/* Who holds a sidecar, written after the token as key=value lines. */
struct sidecar_holder {
	char host_id[HOST_ID_MAX];       /* see hostid.h */
	long keeper_pid;                 /* the process that keeps the sidecar */
	unsigned long long keeper_start; /* its start time, against pid reuse */
	char keeper_id[KEEPER_ID_MAX];   /* random per keeper start: see hostid.h */
	char keeper_dir[RUNTIME_DIR_MAX]; /* its runtime directory, which proves its death */
	long pid;                        /* the process that asked first */
	int64_t lease_ns;                /* the keeper refreshes the heartbeat every lease/3 */
};

/* What a sidecar says, as far as it is in our format. */
struct sidecar_info {
	bool ours_format; /* has our key=value lines; else foreign (uuid-filelock ...) */
	char host_id[HOST_ID_MAX];
	long keeper_pid;
	unsigned long long keeper_start;
	char keeper_id[KEEPER_ID_MAX];    /* empty if absent (older versions) */
	char keeper_dir[RUNTIME_DIR_MAX]; /* empty if absent */
	long pid;
	int64_t lease_ns;
	bool has_heartbeat;
	unsigned long long heartbeat;
	/* Ours, cut off between the exclusive create and the write (a keeper
	 * killed, a client cut off): empty, only a first line ending in a
	 * newline, or our lines without the heartbeat.  uuid-filelock writes
	 * its token without a newline, so that is never taken for this. */
	bool half_written;
};

/* Gives the hold a fresh token: prefix + a random UUID from libuuid. */
void sidecar_new_token(struct sidecar_hold *h, const char *prefix);

/* Step 1: create the sidecar exclusively and write token and holder.
 * Returns 0 when we created it, EEXIST when it exists (held by someone),
 * any other errno when the share refuses.  Sets h->fd: the create's
 * descriptor while the process has descriptors to spare, else -1. */
int sidecar_create(struct sidecar_hold *h, const struct sidecar_holder *who);

/* Closes the create's descriptor, if kept: the hold is over or given up. */
void sidecar_forget(struct sidecar_hold *h);

/* Step 2, after the verification delay: 0 when the sidecar still starts with
 * our token; EEXIST when someone else's content is there; ENOENT when it
 * is gone; another errno when it can't be read. */
int sidecar_verify(const struct sidecar_hold *h);

/* Release: unlink only if the sidecar still holds our token.  Returns 0 when
 * released, EEXIST when it is someone else's now (our hold was lost),
 * ENOENT when it was already gone, another errno on failure (then the hold
 * and its descriptor are kept). */
int sidecar_release(struct sidecar_hold *h);

/* Heartbeat: rewrites the heartbeat field of our sidecar in place, once the
 * name is checked to still hold our token, through the create's descriptor
 * (or, without one, a descriptor opened by name and checked itself).
 * Returns 0, EEXIST when it is someone else's now, ENOENT when gone,
 * another errno when it can't be read or written. */
int sidecar_heartbeat(const struct sidecar_hold *h, unsigned long long beat);

/* Finds "key=" at the start of a line in head[0..len) (any bytes) and copies
 * its value, up to the newline, into out.  False if absent or too long. */
bool sidecar_field(const char *head, size_t len, const char *key, char *out, size_t cap);

/* Parses a sidecar's head (any bytes).  Never fails: what it can't read
 * stays zero, and a sidecar without our "uuidlock=" line is foreign. */
void sidecar_parse(const char *head, size_t len, struct sidecar_info *info);

/* Breaks a sidecar judged stale, if it still has exactly the content judged
 * (judged, judged_len): under the guard sidecar path + ".break", which guard
 * holds, by moving it aside to path + ".stale.<uuid>" and deleting it there
 * only if it was the judged one.  Returns 0 when broken, EBUSY when another
 * breaker holds the guard, EAGAIN when the sidecar changed (not stale after
 * all), ETIMEDOUT when the re-read took longer than half the verification
 * delay (unsafe), ECANCELED when the move (landing late) took a live
 * sidecar, which was put back, ENOTRECOVERABLE when it could not be put
 * back (its holder will report the lock lost), another errno on failure.
 * See sidecar.c for why this can never let two clients hold the lock. */
int sidecar_break(const char *path, const char *judged, size_t judged_len, struct sidecar_hold *guard,
		  const struct sidecar_holder *who, int64_t verify_delay_ns);

/* Fairness between hosts (see sidecar.c): the advisory file sidecar path +
 * ".want" says "another client waits for this lock".  sidecar_want creates
 * it (0, EEXIST when it exists already, or the share's errno); sidecar_wanted
 * tests it; sidecar_unwant removes it.  None of them touches the sidecar. */
int sidecar_want(const char *sidecar);
bool sidecar_wanted(const char *sidecar);
void sidecar_unwant(const char *sidecar);

/* Reads at most cap-1 bytes of a sidecar into buf, NUL-terminated.
 * Returns the length, or -errno. */
ssize_t sidecar_read_head(const char *path, char *buf, size_t cap);

/* A one-line summary of who holds a sidecar, for diagnostics. */
void sidecar_describe(const char *path, char *out, size_t cap);

#endif
