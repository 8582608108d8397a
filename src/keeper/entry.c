/* One sidecar's life in the keeper: the entry, its states and the
 * transitions that follow the protocol of src/core/sidecar.c (create,
 * verify, hold, heartbeat, release), and the requesters it serves.  The
 * state table is in keeper.h.  Steps that block: the share operations of
 * step_waiting, step_verifying, heartbeat and release (one to four round
 * trips each). */
#include "keeper.h"

#include "../core/coherence.h"
#include "../core/client.h"
#include "../core/hostid.h"
#include "../core/keeper_proto.h"
#include "../core/log.h"
#include "../core/proclocks.h"
#include "../core/sidecar.h"
#include "../core/sys.h"
#include "../core/timeutil.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <stdarg.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <unistd.h>

#include <minmax.h>



_Thread_local struct entry *entries;

/* ---- entries ---------------------------------------------------------- */

static void forget_observations(struct entry *e)
{
	free(e->seen);
	free(e->guard_seen);
	e->seen = e->guard_seen = NULL;
}

void free_entry(struct entry *e)
{
	answer_remaining_waiters(e);
	for (struct entry **p = &entries; *p != NULL; p = &(*p)->next)
		if (*p == e) {
			*p = e->next;
			break;
		}
	if (e->said_want)
		sidecar_unwant(e->hold.path);
	sidecar_forget(&e->hold);
	if (e->hold.token[0] != '\0')
		disown_token(e->hold.token);
	forget_observations(e);
	grant_slot_close(e->slot);
	free(e->requesters);
	free(e);
}

struct requester *find_requester(const struct entry *e, long pid)
{
	for (size_t i = 0; i < e->nrequesters; i++)
		if (e->requesters[i].pid == pid)
			return &e->requesters[i];
	return NULL;
}

bool remember_requester(struct entry *e, long pid)
{
	if (find_requester(e, pid) != NULL)
		return true;
	if (e->nrequesters == e->requesters_cap) {
		size_t cap = e->requesters_cap ? 2 * e->requesters_cap : 8;
		struct requester *bigger = realloc(e->requesters, cap * sizeof *bigger);
		if (bigger == NULL)
			return false;
		e->requesters = bigger;
		e->requesters_cap = cap;
	}
	e->requesters[e->nrequesters++] = (struct requester){ .pid = pid };
	return true;
}

void grant(struct entry *e, long pid)
{
	struct requester *r = find_requester(e, pid);
	if (r != NULL)
		r->granted = true;
}

struct entry *find_entry(const char *sidecar)
{
	for (struct entry *e = entries; e != NULL; e = e->next)
		if (strcmp(e->hold.path, sidecar) == 0)
			return e;
	return NULL;
}

/* The next attempt: between half and one retry interval from now, at random,
 * so that hosts that lost a race don't stay in step.  So a waiting host makes
 * at most 2/UUIDLOCK_RETRY_INTERVAL attempts a second per file (each an
 * exclusive create and a read), and a released lock is taken within one
 * retry interval plus the verification delay. */
int64_t next_attempt(const struct entry *e, int64_t now)
{
	static _Thread_local uint64_t seed; /* per share thread: no lock, no common sequence */
	if (seed == 0)
		seed = (uint64_t)now ^ ((uint64_t)gettid() << 32) ^ 0x9e3779b97f4a7c15ULL;
	seed ^= seed << 13;
	seed ^= seed >> 7;
	seed ^= seed << 17;
	return now + e->retry_ns / 2 + (int64_t)(seed % (uint64_t)(e->retry_ns / 2 + 1));
}

void stop_waiting(struct entry *e, int64_t now)
{
	e->state = WATCHING;
	step_watching(e, now);
}

/* A WAITING entry whose last waiter left (hung up, timed out, answered). */
void forget_if_unwanted(struct entry *e, int64_t now)
{
	if (e->state == WAITING && count_waiters(e) == 0)
		stop_waiting(e, now);
}

/* Someone else holds the sidecar: non-blocking askers get "busy", the rest
 * wait for the next attempt.  All of them ask for a turn (see say_want) --
 * non-blocking ones from their second miss on: a program that polls will
 * ask again (SQLite's busy handler, py-filelock), a one-off probe won't. */
static void back_off(struct entry *e, int64_t now)
{
	bool nonblocking_waiter = false, blocking_waiter = false;
	for (struct conn *c = conns; c != NULL; c = c->next)
		if (c->entry == e) {
			nonblocking_waiter |= c->nonblocking;
			blocking_waiter |= !c->nonblocking;
		}
	e->state = WAITING;
	e->next_step = next_attempt(e, now);
	if (blocking_waiter || now < e->watch_until)
		say_want(e, now);
	if (nonblocking_waiter) { /* reading the holder costs the share a round trip */
		char msg[512];
		busy_message(e, msg, sizeof msg);
		note_nonblocking_ask(e, now);
		reply_waiters(e, true, KEEPER_BUSY, EWOULDBLOCK, msg);
	}
	forget_if_unwanted(e, now);
}

static void give_up(struct entry *e, int err, const char *what)
{
	char msg[512];
	snprintf(msg, sizeof msg, "cannot %s sidecar %s: %s", what, e->hold.path, strerror(err));
	log_error("%s", msg);
	reply_waiters(e, false, KEEPER_FAILED, err, msg);
	free_entry(e);
}

/* Is the sidecar's directory still on the locked file's filesystem?  The
 * keeper works by path: after a lazy unmount (fusermount3 -u -z, an
 * automounter's expiry) a waiter's descriptor still reaches the share, but
 * the sidecar's path now names the empty local directory under the mount
 * point, where a sidecar would exclude no other host.  A file and its
 * directory share a device (btrfs: one subvolume), except on an overlayfs
 * whose layers span filesystems without xino: locks there fail, loudly. */
static bool sidecar_dir_on_share(const struct entry *e)
{
	char dir[PATH_MAX];
	snprintf(dir, sizeof dir, "%s", e->hold.path);
	char *slash = strrchr(dir, '/');
	if (slash == NULL)
		return false;
	slash[slash == dir] = '\0'; /* "/f.lock": the root directory */
	/* The device is the client's: DONT_SYNC spares the share a GETATTR. */
	struct statx sx;
	if (statx(AT_FDCWD, dir, AT_STATX_DONT_SYNC, STATX_TYPE, &sx) != 0)
		return false;
	uint64_t dev = makedev(sx.stx_dev_major, sx.stx_dev_minor);
	for (unsigned i = 0; i < e->ninodes; i++)
		if (e->inode[i].dev == dev)
			return true;
	return false;
}

static void give_up_unmounted(struct entry *e)
{
	char msg[512];
	snprintf(msg, sizeof msg, "cannot create sidecar %s: its directory is not on the locked file's "
		 "filesystem any more (unmounted?)", e->hold.path);
	log_error("%s", msg);
	reply_waiters(e, false, KEEPER_FAILED, ENOLCK, msg);
	free_entry(e);
}

/* The locked file's path, into out[PATH_MAX]. */
static const char *locked_file(const struct entry *e, char *out)
{
	snprintf(out, PATH_MAX, "%.*s", (int)e->file_len, e->hold.path);
	return out;
}

static void become_held(struct entry *e, int64_t now)
{
	char file[PATH_MAX];
	/* Another host may have written meanwhile: before anyone of ours reads
	 * under the lock (see coherence.h). */
	coherence_drop(locked_file(e, file));
	e->state = HELD;
	forget_observations(e);
	e->next_beat = now + e->holder.lease_ns / 3;
	if (e->turn_since == 0)
		e->turn_since = now;
	e->handoff_since = 0;
	if (e->said_want) { /* our turn came: the request is answered */
		sidecar_unwant(e->hold.path);
		e->said_want = false;
	}
	log_info("holding %s", e->hold.path);
	/* Processes waiting for their turn lock only after our answer: keep
	 * the sidecar a retry interval for them even if no lock shows yet. */
	for (struct conn *c = conns; c != NULL; c = c->next)
		if (c->entry == e && c->turn_only)
			e->turn_grace_until = now + e->retry_ns;
	reply_waiters(e, false, KEEPER_HELD, KEEPER_HELD_FRESH, "");
	schedule_check(now, e->retry_ns);
}

static void step_verifying(struct entry *e, int64_t now)
{
	int err = sidecar_verify(&e->hold);
	if (err == EEXIST || err == ENOENT) {
		log_warn("sidecar %s was taken over during verification", e->hold.path);
		sidecar_forget(&e->hold);
		return back_off(e, now);
	}
	if (err != 0)
		return give_up(e, err, "verify");
	become_held(e, now);
}

static void start_verifying(struct entry *e, int64_t now)
{
	e->state = VERIFYING;
	e->next_step = now + e->verify_ns;
	if (e->verify_ns == 0)
		step_verifying(e, now);
}

/* A fresh token for e's next create, listed as ours (see own_token). */
static bool new_token(struct entry *e)
{
	if (e->hold.token[0] != '\0')
		disown_token(e->hold.token);
	sidecar_new_token(&e->hold, e->prefix);
	if (own_token(e->hold.token))
		return true;
	e->hold.token[0] = '\0';
	return false;
}

/* One attempt of the protocol of sidecar.c: create, breaking a stale
 * sidecar first if there is one. */
void step_waiting(struct entry *e, int64_t now)
{
	if (count_waiters(e) == 0)
		return stop_waiting(e, now);
	if (!sidecar_dir_on_share(e))
		return give_up_unmounted(e);
	int err = new_token(e) ? sidecar_create(&e->hold, &e->holder) : ENOMEM;
	if (err == EEXIST && break_if_stale(e, now))
		err = new_token(e) ? sidecar_create(&e->hold, &e->holder) : ENOMEM;
	if (err == EEXIST)
		return back_off(e, now);
	if (err != 0)
		return give_up(e, err, "create");
	if (!sidecar_dir_on_share(e)) { /* unmounted during the create (sshfs: its EPERM retry) */
		sidecar_release(&e->hold); /* ours, wherever the name leads now */
		return give_up_unmounted(e);
	}
	wrote_sidecar(e, boot_ns());
	start_verifying(e, now);
}

/* Nobody waits; a non-blocking ask missed lately.  No share operation: the
 * next ask attempts.  Withdraws the turn request once the asks stopped. */
void step_watching(struct entry *e, int64_t now)
{
	if (e->said_want && now >= e->want_until) {
		sidecar_unwant(e->hold.path);
		e->said_want = false;
	}
	if (now >= e->watch_until)
		return free_entry(e);
	e->next_step = e->said_want ? MIN(e->want_until, e->watch_until) : e->watch_until;
}

/* Advances e at e->next_step. */
void step(struct entry *e, int64_t now)
{
	switch (e->state) {
	case WAITING: return step_waiting(e, now);
	case VERIFYING: return step_verifying(e, now);
	case DEFERRING: return step_deferring(e, now);
	case WATCHING: return step_watching(e, now);
	case IDLE: return step_idle(e, now);
	case HELD:
	case YIELDING: return; /* driven by heartbeats and checks */
	}
}

bool holds_sidecar(const struct entry *e)
{
	return e->state == HELD || e->state == YIELDING || e->state == IDLE;
}

/* Whether e is advanced by step() at e->next_step (else only by heartbeats,
 * checks and requests). */
bool has_steps(const struct entry *e)
{
	return !holds_sidecar(e) || e->state == IDLE;
}

/* Until when no other host can have broken the sidecar: half a lease after
 * our last write to it (see sidecar.c, "Cached holds").  Idle holds are
 * resumed from memory, and lock calls skip us (grants.h), only before it. */
int64_t surely_ours_until(const struct entry *e)
{
	return e->written_at_boot + e->holder.lease_ns / 2;
}

/* We wrote the sidecar (created it, or a heartbeat found it ours) at `at`,
 * on CLOCK_BOOTTIME. */
void wrote_sidecar(struct entry *e, int64_t at)
{
	e->written_at_boot = at;
	grant_slot_vouch(e->slot, surely_ours_until(e));
}

/* How many heartbeats in a row may fail before the lock counts as lost:
 * other hosts break it a lease (3 beats) after the last one that worked,
 * so the holders hear of it a beat before that can happen. */
#define MAX_FAILED_BEATS 2

/* The lock is lost: say so to the log and to the local holders, and forget
 * the entry (a new lock call competes for the sidecar from scratch). */
static void lose(struct entry *e, const char *msg)
{
	log_error("%s", msg);
	tell_holders(e, msg);
	free_entry(e);
}

/* Refreshes a held sidecar's heartbeat; a sidecar that is not ours any more
 * means the lock was lost (broken after a long stall, deleted by hand), and
 * so does a heartbeat that keeps failing: other hosts will break it. */
void heartbeat(struct entry *e, int64_t now)
{
	e->next_beat = now + e->holder.lease_ns / 3;
	int64_t at = boot_ns();
	int err = sidecar_heartbeat(&e->hold, ++e->beats);
	if (err == 0) {
		wrote_sidecar(e, at);
		e->failed_beats = 0;
		return;
	}
	char msg[PATH_MAX + 128];
	if (err == EEXIST || err == ENOENT) {
		snprintf(msg, sizeof msg, "lock on %s was lost: its sidecar was %s", e->hold.path,
			 err == ENOENT ? "deleted" : "taken over by another client");
		if (e->state == IDLE) { /* nobody holds a lock on it: nobody to tell */
			log_warn("%s (idle)", msg);
			return free_entry(e);
		}
		return lose(e, msg);
	}
	if (++e->failed_beats < MAX_FAILED_BEATS)
		return log_error("cannot refresh the heartbeat of %s: %s", e->hold.path, strerror(err));
	snprintf(msg, sizeof msg, "lock on %s was lost: its heartbeat failed %u times in a row (%s), "
		 "so other clients will break it", e->hold.path, e->failed_beats, strerror(err));
	lose(e, msg);
}

/* Releases e's sidecar and says how it went; `purpose` ends the log lines.
 * Returns sidecar_release's answer: EEXIST/ENOENT mean the hold was lost. */
int release_sidecar(struct entry *e, const char *purpose)
{
	char file[PATH_MAX];
	coherence_flush(locked_file(e, file)); /* before another host may read it */
	int err = sidecar_release(&e->hold);
	if (err == 0)
		log_info("released %s%s", e->hold.path, purpose);
	else if (err == EEXIST || err == ENOENT)
		log_error("lock on %s was lost: the sidecar was %s while held", e->hold.path,
			  err == ENOENT ? "deleted" : "replaced");
	else
		log_error("cannot release sidecar %s%s: %s", e->hold.path, purpose, strerror(err));
	return err;
}

void release(struct entry *e)
{
	bool held = holds_sidecar(e);
	release_sidecar(e, e->state == IDLE ? " (idle)" : "");
	/* Remembered as released once the release is done: on a slow share it
	 * takes several round trips, while the next local process, handed the
	 * kernel lock at the unlock, waits for our answer (see continue_turn). */
	if (held)
		remember_release(e, mono_ns());
	free_entry(e);
}

/* ---- requests --------------------------------------------------------- */

/* The locked file's path is the sidecar's less the suffix, which only a
 * lock request says (a probe's may not). */
void name_locked_file(struct entry *e, const struct keeper_request *req)
{
	size_t n = strlen(e->hold.path);
	e->file_len = req->suffix_len < n ? n - req->suffix_len : n;
}

struct entry *new_entry(const struct keeper_request *req, int64_t now)
{
	struct entry *e = calloc(1, sizeof *e);
	if (e == NULL)
		return NULL;
	snprintf(e->hold.path, sizeof e->hold.path, "%s", req->sidecar);
	e->hold.fd = -1;
	snprintf(e->prefix, sizeof e->prefix, "%s", req->prefix);
	e->state = WAITING;
	e->next_step = now;
	e->waiting_since = now;
	e->retry_ns = MAX(req->retry_interval_ns, NS_PER_MS);
	e->verify_ns = MAX(req->verify_delay_ns, 0);
	e->foreign_stale_ns = req->foreign_stale_ns;
	e->holder = me;
	e->holder.pid = req->pid;
	e->holder.lease_ns = MAX(req->lease_ns, NS_PER_SEC / 10);
	e->linger_ns = may_linger ? req->linger_ns : 0;
	name_locked_file(e, req);
	e->slot = grant_slot_open();
	e->next = entries;
	entries = e;
	return e;
}

/* Remembers which inode a request locked, so that the check watches it. */
bool add_inode(struct entry *e, const struct keeper_request *req)
{
	for (unsigned i = 0; i < e->ninodes; i++)
		if (e->inode[i].dev == req->dev && e->inode[i].ino == req->ino)
			return true;
	if (e->ninodes == MAX_INODES)
		return false;
	e->inode[e->ninodes].dev = req->dev;
	e->inode[e->ninodes].ino = req->ino;
	e->ninodes++;
	return true;
}
