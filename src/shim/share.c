#include "share.h"

#include "fdtrack.h"
#include "grantcache.h"

#include "../core/client.h"
#include "../core/log.h"
#include "../core/sys.h"
#include "../core/timeutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
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

/* Every request goes to the keeper through here.  The grant that comes
 * with a HELD reply goes to *grant, the grant table's descriptor if the
 * keeper sent it to *table_fd (both may be NULL: not wanted). */
static int send_request(struct keeper_request *req, struct keeper_reply *rep, struct keeper_grant *grant,
			int *table_fd)
{
	req->grant_table = grantcache_table(); /* the keeper sends its table to a process without it */
	*rep = (struct keeper_reply){ 0 };
	return keeper_call(&shim_config, shim_keeper_program(), req, rep, grant, table_fd);
}

/* One request to the keeper about mf's sidecar. */
static int ask_keeper(enum keeper_op op, const struct managed_file *mf, int64_t timeout_ns, bool nonblocking,
		      struct keeper_reply *rep, struct keeper_grant *grant, int *table_fd)
{
	struct keeper_request req = new_request(op);
	req.timeout_ns = timeout_ns;
	req.nonblocking = nonblocking;
	req.dev = mf->dev;
	req.ino = mf->ino;
	memcpy(req.prefix, shim_config.prefix, sizeof req.prefix);
	memcpy(req.sidecar, mf->sidecar, sizeof req.sidecar);
	req.suffix_len = strlen(shim_config.suffix);
	return send_request(&req, rep, grant, table_fd);
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
/* ... when the sidecar is held but the name is not the file's any more
 * (reported): give the kernel lock back and let the keeper release it. */
#define SHARE_NAME_GONE (-2)

/* A fresh hold (the keeper has just acquired the sidecar: another host may
 * have changed the file since this host last held it) is checked: is the
 * name still the file's?  Then the client is made to ask the server for the
 * file's size and mtime (FUSE and NFS cache them: a stale size cuts reads
 * short and puts appends over another client's data).
 * A continuous hold needs neither, so a lock call on a file this host holds
 * makes no round trip to the share: the keeper dropped the host's cached
 * pages and refreshed the inode's attributes when it acquired the sidecar,
 * before any reply (src/core/coherence.h), and the attribute cache is the
 * inode's, the host's: one refresh after the acquisition serves every local
 * process; no other host writes while we hold it.  For the name see
 * managed_name_is_current. */
static bool fresh_hold_ok(int fd, const struct managed_file *mf)
{
	if (!managed_name_is_current(mf))
		return false;
	revalidate_attributes(fd);
	return true;
}

/* Returns 0 when this host holds mf's sidecar (fd is then marked), after
 * fresh_hold_ok if the keeper says fresh -- or said so to the share_wait_turn
 * before (*fresh: the first grant after an acquisition may be a continuous
 * one) -- SHARE_YIELD, SHARE_NAME_GONE, else the errno the lock call must
 * fail with: EWOULDBLOCK (busy, non-blocking), EINTR, or ENOLCK (reported). */
static int share_acquire(int fd, const struct managed_file *mf, bool nonblocking, int64_t deadline, bool *fresh)
{
	int saved_errno = errno; /* a lock call that succeeds leaves errno as it was */
	struct keeper_reply rep;
	struct keeper_grant grant;
	int table_fd;
	int err = ask_keeper(KEEPER_ACQUIRE, mf, time_left(deadline), nonblocking, &rep, &grant, &table_fd);
	grantcache_take_table(table_fd);
	if (err == EINTR)
		return EINTR;
	if (err != 0) {
		log_error("cannot lock %s: %s", mf->sidecar, rep.message);
		return ENOLCK;
	}
	switch (rep.status) {
	case KEEPER_HELD:
		*fresh = *fresh || (rep.error & KEEPER_HELD_FRESH) != 0;
		if (*fresh && !fresh_hold_ok(fd, mf))
			return SHARE_NAME_GONE;
		grantcache_remember(mf, &grant); /* once checked: see granted_already */
		log_info("locked %s (pid %ld)", mf->sidecar, (long)getpid());
		fdtrack_set(fd);
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
 * this host may take it again (*fresh set if it has just acquired the
 * sidecar), else EINTR or ENOLCK (reported). */
static int share_wait_turn(const struct managed_file *mf, int64_t deadline, bool *fresh)
{
	int saved_errno = errno; /* the lock call may still succeed */
	struct keeper_reply rep;
	int err = ask_keeper(KEEPER_WAIT_TURN, mf, time_left(deadline), false, &rep, NULL, NULL);
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
		*fresh = *fresh || (rep.status == KEEPER_HELD && (rep.error & KEEPER_HELD_FRESH) != 0);
		errno = saved_errno;
		return 0;
	}
	log_error("%s", rep.message);
	return ENOLCK;
}

/* After the kernel granted a lock on mf: if the keeper's last grant to this
 * process still covers it (src/core/grants.h), the call is done without a
 * keeper call.  Only grants from an acquisition are cached, after a fresh
 * hold was checked (fresh_hold_ok), so nothing a fresh hold needs is
 * skipped.  SQLite makes nine lock calls on the database per write
 * transaction, all but the first on a file it holds. */
static bool granted_already(int fd, const struct managed_file *mf)
{
	if (!grantcache_covers(mf))
		return false;
	log_info("locked %s (pid %ld, granted already)", mf->sidecar, (long)getpid());
	fdtrack_set(fd);
	return true;
}

int share_lock(const struct lock_call *call, const struct managed_file *mf)
{
	int64_t deadline = share_deadline();
	bool fresh = false;
	for (;;) {
		if (call->take(call) != 0)
			return -1; /* exactly the kernel's errno */
		if (!fresh && granted_already(call->fd, mf))
			return 0;
		int err = share_acquire(call->fd, mf, call->nonblocking, deadline, &fresh);
		if (err == 0)
			return 0;
		/* Not held across clients: give the kernel lock back so no local
		 * process waits behind a lock we don't have.  The keeper answers HELD
		 * to a process it answered before, so we held nothing on this file
		 * before this call: the undo is exact. */
		call->undo(call);
		if (err == SHARE_NAME_GONE) {
			share_check(mf->dev);
			err = ENOLCK;
		}
		if (err == SHARE_YIELD)
			err = share_wait_turn(mf, deadline, &fresh);
		if (err != 0) {
			errno = err == EWOULDBLOCK ? call->busy_errno : err;
			return -1;
		}
	}
}

/* Does this process still hold a lock taken through fd's open file
 * description (SQLite unlocks one byte range of several)?  Then the keeper
 * would find the file locked by a process it granted and change nothing: no
 * need to ask it.  /proc/self/fdinfo lists exactly those locks (POSIX ones of
 * this process, flock and OFD ones of the description); a lock through
 * another descriptor of the file isn't listed, and the keeper is asked.
 * Local, no share I/O.  Can't look: false (ask). */
static bool still_locked_through(int fd)
{
	int saved = errno;
	char path[64], buf[4096];
	snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
	int info = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n = info < 0 ? -1 : read(info, buf, sizeof buf - 1);
	if (info >= 0)
		sys_close(info);
	errno = saved;
	if (n <= 0)
		return false;
	buf[n] = '\0';
	return strstr(buf, "\nlock:") != NULL;
}

/* Let the kernel unlock, let the keeper release what nobody holds now.  No
 * fsync (a round trip to the share): the keeper flushes the file by path
 * before the sidecar can go to another host (src/core/coherence.h), as it
 * must anyway for locks that end by exit; fsync on any descriptor of the
 * inode writes back the inode's dirty pages, whoever dirtied them (NFS, CIFS,
 * FUSE with writeback_cache), and FUSE without it writes through at each
 * write(). */
int share_unlock(const struct lock_call *call, const char *what)
{
	if (call->take(call) != 0)
		return -1;
	log_info("unlocked %s %d (pid %ld)", what, call->fd, (long)getpid());
	if (!still_locked_through(call->fd))
		share_check(share_fd_device(call->fd));
	return 0;
}

bool share_held_elsewhere(const struct managed_file *mf)
{
	int saved_errno = errno;
	struct keeper_reply rep;
	int err = ask_keeper(KEEPER_PROBE, mf, shim_config.timeout_ns, false, &rep, NULL, NULL);
	/* No keeper: this host holds nothing, so any sidecar is someone else's. */
	bool held = err == 0 ? rep.status == KEEPER_BUSY : access(mf->sidecar, F_OK) == 0;
	errno = saved_errno;
	return held;
}

uint64_t share_fd_device(int fd)
{
	int saved = errno;
	struct statx sx;
	bool open = statx(fd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, STATX_INO, &sx) == 0;
	errno = saved;
	return open ? makedev(sx.stx_dev_major, sx.stx_dev_minor) : 0;
}

/* The keeper checks only the share named (a thread of its own per share):
 * an unlock on one share doesn't wait for another, which may hang. */
void share_check(uint64_t dev)
{
	int saved = errno;
	struct keeper_reply rep;
	struct keeper_request req = new_request(KEEPER_CHECK);
	req.dev = dev;
	int err = send_request(&req, &rep, NULL, NULL);
	if (err != 0 && err != EINTR && err != ENOENT)
		log_warn("could not tell the keeper about a released lock: %s", rep.message);
	errno = saved;
}
