#include "share.h"

#include "fdtrack.h"

#include "../core/client.h"
#include "../core/log.h"
#include "../core/timeutil.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <minmax.h>

/* The moment a lock call gives up waiting (UUIDLOCK_TIMEOUT), on the
 * monotonic clock; -1: never.  One per call, across turns. */
static int64_t share_deadline(void)
{
	return shim_config.timeout_ns < 0 ? -1 : mono_ns() + shim_config.timeout_ns;
}

static int64_t time_left(int64_t deadline)
{
	return deadline < 0 ? -1 : MAX(deadline - mono_ns(), 0);
}

static struct keeper_request new_request(enum keeper_op op)
{
	return (struct keeper_request){
		.version = KEEPER_PROTO_VERSION,
		.op = op,
		.pid = getpid(),
		.verify_delay_ns = shim_config.verify_delay_ns,
		.retry_interval_ns = shim_config.retry_interval_ns,
		.timeout_ns = shim_config.timeout_ns,
		.lease_ns = shim_config.lease_ns,
		.foreign_stale_ns = shim_config.foreign_stale_ns,
		.linger_ns = shim_config.linger_ns,
	};
}

/* One request to the keeper, about mf's sidecar (NULL: about none). */
static int ask_keeper(enum keeper_op op, const struct managed_file *mf, int64_t timeout_ns, bool nonblocking,
		      struct keeper_reply *rep)
{
	struct keeper_request req = new_request(op);
	req.timeout_ns = timeout_ns;
	req.nonblocking = nonblocking;
	if (mf != NULL) {
		req.dev = mf->dev;
		req.ino = mf->ino;
		memcpy(req.prefix, shim_config.prefix, sizeof req.prefix);
		memcpy(req.sidecar, mf->sidecar, sizeof req.sidecar);
		req.suffix_len = strlen(shim_config.suffix);
	}
	*rep = (struct keeper_reply){ 0 };
	return keeper_call(&shim_config, shim_keeper_program(), &req, rep);
}

static void revalidate_attributes(int fd)
{
	struct statx sx;
	statx(fd, "", AT_EMPTY_PATH | AT_STATX_FORCE_SYNC, STATX_SIZE | STATX_MTIME, &sx);
}

/* share_acquire's answer when another host has asked for a turn (fairness,
 * see src/core/sidecar.c): give the kernel lock back, share_wait_turn, and
 * try the whole lock call again. */
#define SHARE_YIELD (-1)

/* Returns 0 when this host holds mf's sidecar (fd is then marked and its
 * attributes revalidated), SHARE_YIELD, else the errno the lock call must
 * fail with: EWOULDBLOCK (busy, non-blocking), EINTR, or ENOLCK (reported). */
static int share_acquire(int fd, const struct managed_file *mf, bool nonblocking, int64_t deadline)
{
	int saved_errno = errno; /* a lock call that succeeds leaves errno as it was */
	struct keeper_reply rep;
	int err = ask_keeper(KEEPER_ACQUIRE, mf, time_left(deadline), nonblocking, &rep);
	if (err == EINTR)
		return EINTR;
	if (err != 0) {
		log_error("cannot lock %s: %s", mf->sidecar, rep.message);
		return ENOLCK;
	}
	switch (rep.status) {
	case KEEPER_HELD:
		log_info("locked %s (pid %ld)", mf->sidecar, (long)getpid());
		fdtrack_set(fd);
		/* Another client may have changed the file while we didn't hold it:
		 * make the client ask the server for its size and mtime (FUSE and NFS
		 * cache them: a stale size cuts reads short and puts appends over
		 * another client's data).  The keeper dropped the host's cached pages
		 * of the file when it acquired the sidecar (src/core/coherence.h). */
		revalidate_attributes(fd);
		errno = saved_errno;
		return 0;
	case KEEPER_BUSY:
		log_debug("%s", rep.message);
		return EWOULDBLOCK;
	case KEEPER_YIELD:
		log_debug("another client's turn on %s", mf->sidecar);
		errno = saved_errno; /* not a failure: the call goes on */
		return SHARE_YIELD;
	default:
		log_error("%s", rep.message);
		return ENOLCK;
	}
}

/* After SHARE_YIELD, holding no kernel lock on the file: returns 0 when
 * this host may take it again, else EINTR or ENOLCK (reported). */
static int share_wait_turn(const struct managed_file *mf, int64_t deadline)
{
	int saved_errno = errno; /* the lock call may still succeed */
	struct keeper_reply rep;
	int err = ask_keeper(KEEPER_WAIT_TURN, mf, time_left(deadline), false, &rep);
	if (err == EINTR)
		return EINTR;
	if (err == ENOENT) {
		errno = saved_errno;
		return 0; /* no keeper any more: nothing held, nothing to wait for */
	}
	if (err != 0) {
		log_error("cannot lock %s: %s", mf->sidecar, rep.message);
		return ENOLCK;
	}
	if (rep.status == KEEPER_HELD || rep.status == KEEPER_DONE) {
		errno = saved_errno;
		return 0;
	}
	log_error("%s", rep.message);
	return ENOLCK;
}

int share_lock(const struct lock_call *call, const struct managed_file *mf)
{
	int64_t deadline = share_deadline();
	for (;;) {
		if (call->take(call) != 0)
			return -1; /* exactly the kernel's errno */
		int err = share_acquire(call->fd, mf, call->nonblocking, deadline);
		if (err == 0)
			return 0;
		/* Not held across clients: give the kernel lock back so no local
		 * process waits behind a lock we don't have.  The keeper answers HELD
		 * to a process it answered before, so we held nothing on this file
		 * before this call: the undo is exact. */
		call->undo(call);
		if (err == SHARE_YIELD)
			err = share_wait_turn(mf, deadline);
		if (err != 0) {
			errno = err == EWOULDBLOCK ? call->busy_errno : err;
			return -1;
		}
	}
}

/* Flush, let the kernel unlock, let the keeper release what nobody holds
 * now. */
int share_unlock(const struct lock_call *call, const char *what)
{
	share_flush(call->fd);
	if (call->take(call) != 0)
		return -1;
	log_info("unlocked %s %d (pid %ld)", what, call->fd, (long)getpid());
	share_check();
	return 0;
}

bool share_held_elsewhere(const struct managed_file *mf)
{
	int saved_errno = errno;
	struct keeper_reply rep;
	int err = ask_keeper(KEEPER_PROBE, mf, shim_config.timeout_ns, false, &rep);
	/* No keeper: this host holds nothing, so any sidecar is someone else's. */
	bool held = err == 0 ? rep.status == KEEPER_BUSY : access(mf->sidecar, F_OK) == 0;
	errno = saved_errno;
	return held;
}

void share_flush(int fd)
{
	int saved = errno;
	fsync(fd);
	errno = saved;
}

void share_check(void)
{
	int saved = errno;
	struct keeper_reply rep;
	int err = ask_keeper(KEEPER_CHECK, NULL, shim_config.timeout_ns, false, &rep);
	if (err != 0 && err != EINTR && err != ENOENT)
		log_warn("could not tell the keeper about a released lock: %s", rep.message);
	errno = saved;
}
