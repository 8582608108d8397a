/* The UUID sidecar protocol: the share-side half of every lock.
 * See sidecar.c for the whole protocol in one place. */
#ifndef UUIDLOCK_SIDECAR_H
#define UUIDLOCK_SIDECAR_H

#include "config.h"

#include <limits.h>
#include <stddef.h>

#define SIDECAR_TOKEN_MAX (CONFIG_PREFIX_MAX + 40)
#define SIDECAR_HEAD_MAX 4096 /* we never read more of a sidecar than this */

/* One attempt to hold one sidecar: its path and the first line we wrote. */
struct sidecar_hold {
	char path[PATH_MAX];
	char token[SIDECAR_TOKEN_MAX]; /* prefix + fresh UUID */
};

/* Who holds a sidecar, written after the token as key=value lines. */
struct sidecar_holder {
	long pid;        /* the process that asked first */
	long keeper_pid; /* the process that keeps the sidecar */
};

/* Gives the hold a fresh token: prefix + a random UUID from libuuid. */
void sidecar_new_token(struct sidecar_hold *h, const char *prefix);

/* Step 1: create the sidecar exclusively and write token and holder.
 * Returns 0 when we created it, EEXIST when it exists (held by someone),
 * any other errno when the share refuses. */
int sidecar_create(const struct sidecar_hold *h, const struct sidecar_holder *who);

/* Step 2, after the verification delay: 0 when the sidecar still starts with
 * our token; EEXIST when someone else's content is there; ENOENT when it
 * is gone; another errno when it can't be read. */
int sidecar_verify(const struct sidecar_hold *h);

/* Release: unlink only if the sidecar still holds our token.  Returns 0 when
 * released, EEXIST when it is someone else's now (our hold was lost),
 * ENOENT when it was already gone, another errno on failure. */
int sidecar_release(const struct sidecar_hold *h);

/* Reads at most cap-1 bytes of a sidecar into buf, NUL-terminated.
 * Returns the length, or -errno. */
ssize_t sidecar_read_head(const char *path, char *buf, size_t cap);

/* A one-line summary of who holds a sidecar, for diagnostics. */
void sidecar_describe(const char *path, char *out, size_t cap);

#endif
