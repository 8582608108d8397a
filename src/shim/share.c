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

int64_t share_deadline(void)
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

static void revalidate_attributes(int fd)
{
	struct statx sx;
	statx(fd, "", AT_EMPTY_PATH | AT_STATX_FORCE_SYNC, STATX_SIZE | STATX_MTIME, &sx);
}

int share_acquire(int fd, const struct managed_file *mf, bool nonblocking, int64_t deadline)
{
	int saved_errno = errno; /* a lock call that succeeds leaves errno as it was */
	struct keeper_request req = new_request(KEEPER_ACQUIRE);
	req.timeout_ns = time_left(deadline);
	req.nonblocking = nonblocking;
	req.dev = mf->dev;
	req.ino = mf->ino;
	memcpy(req.prefix, shim_config.prefix, sizeof req.prefix);
	memcpy(req.sidecar, mf->sidecar, sizeof req.sidecar);
	req.suffix_len = strlen(shim_config.suffix);

	struct keeper_reply rep = { 0 };
	int err = keeper_call(&shim_config, shim_keeper_program(), &req, &rep);
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

int share_wait_turn(const struct managed_file *mf, int64_t deadline)
{
	int saved_errno = errno; /* the lock call may still succeed */
	struct keeper_request req = new_request(KEEPER_WAIT_TURN);
	req.timeout_ns = time_left(deadline);
	memcpy(req.sidecar, mf->sidecar, sizeof req.sidecar);
	struct keeper_reply rep = { 0 };
	int err = keeper_call(&shim_config, shim_keeper_program(), &req, &rep);
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

bool share_held_elsewhere(const struct managed_file *mf)
{
	int saved_errno = errno;
	struct keeper_request req = new_request(KEEPER_PROBE);
	memcpy(req.sidecar, mf->sidecar, sizeof req.sidecar);
	struct keeper_reply rep = { 0 };
	int err = keeper_call(&shim_config, shim_keeper_program(), &req, &rep);
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
	struct keeper_request req = new_request(KEEPER_CHECK);
	struct keeper_reply rep;
	int err = keeper_call(&shim_config, shim_keeper_program(), &req, &rep);
	if (err != 0 && err != EINTR && err != ENOENT)
		log_warn("could not tell the keeper about a released lock: %s", rep.message);
	errno = saved;
}
