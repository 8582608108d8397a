/* The request handlers: acquire (answered at once from a hold, after the
 * protocol otherwise), probe and the wait for a turn, each run by the
 * thread of the request's share; and the reading of a request, by the main
 * thread.  What blocks is the step an acquisition may start at once (see
 * entry.c), and a probe's look at the sidecar. */
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

/* A process asks for a sidecar this host holds.  Those we answered already
 * (who may ask for more: another range, a conversion) always get it, or they
 * could deadlock with us.  A newcomer gets it unless another host is waiting
 * for a turn: then it gives its kernel lock back and waits (holding none, so
 * that it can't block our granted processes while we wait for them). */
static void answer_while_held(struct conn *c, struct entry *e, const struct keeper_request *req, int64_t now)
{
	bool granted = find_requester(e, c->pid)->granted;
	if (!granted && e->state == HELD && look_for_turn_request(e, now, e->retry_ns)) {
		log_info("another client waits for %s: giving it up after the local holders", e->hold.path);
		e->state = YIELDING;
	}
	if (granted || e->state != YIELDING || !may_send_away(e))
		return reply_held(c, e, 0);
	if (req->nonblocking)
		return reply(c, KEEPER_BUSY, EWOULDBLOCK,
			     "%s is held by this host, which is giving it to another client", req->sidecar);
	reply(c, KEEPER_YIELD, 0, NULL);
	check_held(now); /* the last holder may be gone already */
}

static void handle_acquire(struct conn *c, const struct keeper_request *req, int64_t now)
{
	struct entry *e = find_entry(req->sidecar);
	if (e != NULL && !remember_requester(e, c->pid))
		return reply(c, KEEPER_FAILED, ENOMEM, "keeper: out of memory");
	if (e != NULL && !add_inode(e, req))
		return reply(c, KEEPER_FAILED, ENOLCK, "too many files replaced under %s while locked", req->sidecar);
	if (e != NULL && e->state == IDLE)
		resume_idle_hold(e, now);
	if (e != NULL && holds_sidecar(e))
		return answer_while_held(c, e, req, now);
	if (e == NULL) {
		if ((e = new_entry(req, now)) == NULL)
			return reply(c, KEEPER_FAILED, ENOMEM, "keeper: out of memory");
		continue_turn(e, now);
	}
	if (req->nonblocking && e->state == DEFERRING) {
		note_nonblocking_ask(e, now);
		return reply(c, KEEPER_BUSY, EWOULDBLOCK, "%s: another client waits for it", req->sidecar);
	}
	if (req->nonblocking && e->state == WAITING && count_waiters(e) > 0) { /* they attempt already */
		char msg[512];
		busy_message(e, msg, sizeof msg);
		note_nonblocking_ask(e, now);
		return reply(c, KEEPER_BUSY, EWOULDBLOCK, "%s", msg);
	}
	if (e->state == WATCHING) { /* asked again: attempt now */
		e->state = WAITING;
		e->next_step = now;
	}
	add_inode(e, req);
	name_locked_file(e, req);
	if (!remember_requester(e, c->pid))
		return reply(c, KEEPER_FAILED, ENOMEM, "keeper: out of memory");
	c->entry = e;
	c->nonblocking = req->nonblocking;
	c->deadline = req->timeout_ns < 0 ? -1 : now + req->timeout_ns;
	c->say_waiting_at = req->nonblocking ? -1 : now + SAY_WAITING_NS;
	if (e->state == WAITING && e->next_step <= now)
		step(e, now);
}

/* After KEEPER_YIELD: wait, holding no kernel lock, until this host may take
 * the lock again (answered HELD), or at once if there is nothing to wait for. */
static void handle_wait_turn(struct conn *c, const struct keeper_request *req, int64_t now)
{
	struct entry *e = find_entry(req->sidecar);
	if (e == NULL || e->state == HELD || e->state == WATCHING)
		return reply(c, KEEPER_DONE, 0, NULL);
	c->entry = e;
	c->turn_only = true;
	c->deadline = req->timeout_ns < 0 ? -1 : now + req->timeout_ns;
	c->say_waiting_at = now + SAY_WAITING_NS;
}

/* A program that asks who holds a file (F_GETLK) mostly wants it next:
 * SQLite probes a WAL index's lock before it takes it, and retries while
 * another host holds it, without a lock call that would ask.  So a probe
 * that finds another host's sidecar counts as a non-blocking miss: the
 * sidecar is watched (see WATCHING), and from the second probe on this
 * host asks for a turn. */
static void note_probe_miss(const struct keeper_request *req, int64_t now)
{
	struct entry *e = find_entry(req->sidecar);
	if (e == NULL && (e = new_entry(req, now)) == NULL)
		return;
	bool asked_before = now < e->watch_until;
	note_nonblocking_ask(e, now);
	if (asked_before && (e->state == WAITING || e->state == WATCHING))
		say_want(e, now);
	if (e->state == WATCHING)
		step_watching(e, now); /* when to withdraw the request, or forget */
	else
		forget_if_unwanted(e, now);
}

static void handle_probe(struct conn *c, const struct keeper_request *req)
{
	struct entry *e = find_entry(req->sidecar);
	if (e != NULL && e->state == IDLE)
		return reply(c, KEEPER_HELD, 0, "idle for %.1f s (cached hold)", (double)(mono_ns() - e->idle_since) / NS_PER_SEC);
	if (e != NULL && holds_sidecar(e))
		return reply(c, KEEPER_HELD, 0, "in use");
	if (access(req->sidecar, F_OK) == 0) {
		note_probe_miss(req, mono_ns());
		char who[256];
		sidecar_describe(req->sidecar, who, sizeof who);
		return reply(c, KEEPER_BUSY, EWOULDBLOCK, "%s is held by another client (%s)", req->sidecar, who);
	}
	reply(c, KEEPER_DONE, 0, NULL);
}

/* The library bounds what it reads from the environment; a request from any
 * other client is bounded here, so that no "now + value" can overflow. */
static void bound_timings(struct keeper_request *req)
{
	req->verify_delay_ns = MIN(req->verify_delay_ns, CONFIG_SECONDS_MAX * NS_PER_SEC);
	req->retry_interval_ns = MIN(req->retry_interval_ns, CONFIG_SECONDS_MAX * NS_PER_SEC);
	req->timeout_ns = MIN(req->timeout_ns, CONFIG_SECONDS_MAX * NS_PER_SEC);
	req->lease_ns = MIN(req->lease_ns, CONFIG_LEASE_SECONDS_MAX * NS_PER_SEC);
	req->foreign_stale_ns = MIN(req->foreign_stale_ns, CONFIG_LEASE_SECONDS_MAX * NS_PER_SEC);
	req->linger_ns = MIN(req->linger_ns, CONFIG_SECONDS_MAX * NS_PER_SEC);
}

/* The main thread reads each request as soon as it is there, and hands
 * it to its share's thread: true if c's request is in *req, false if it is
 * not there yet (c stays) or c was answered or dropped (c is gone). */
bool read_request(struct conn *c, struct keeper_request *req)
{
	/* MSG_TRUNC: the packet's real length, so a request from another
	 * version of the library can't be taken for ours. */
	ssize_t n = recv(c->fd, req, sizeof *req, MSG_DONTWAIT | MSG_TRUNC);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return false;
	if (n < (ssize_t)sizeof req->version) {
		drop_conn(c);
		return false;
	}
	if (n != (ssize_t)sizeof *req || req->version != KEEPER_PROTO_VERSION) {
		reply(c, KEEPER_FAILED, EPROTO,
		      "the running keeper (pid %ld) speaks protocol %d, this library %u: "
		      "it exits once it holds nothing, or stop it",
		      (long)getpid(), KEEPER_PROTO_VERSION, req->version);
		return false;
	}
	req->sidecar[sizeof req->sidecar - 1] = '\0';
	req->prefix[sizeof req->prefix - 1] = '\0';
	bound_timings(req);
	c->pid = peer_pid(c->fd);
	c->grant_table = req->grant_table;
	return true;
}

/* A local lock on this share went away: release what nobody holds now,
 * before the asker's unlock returns. */
static void handle_check(struct conn *c, int64_t now)
{
	check_held(now);
	reply(c, KEEPER_DONE, 0, NULL);
}

/* In c's share thread (a check naming no share runs in every one: see
 * check_every_share). */
void handle_request(struct conn *c, const struct keeper_request *req, int64_t now)
{
	if (req->op == KEEPER_CHECK)
		return handle_check(c, now);
	if (req->op == KEEPER_ACQUIRE)
		return handle_acquire(c, req, now);
	if (req->op == KEEPER_PROBE)
		return handle_probe(c, req);
	if (req->op == KEEPER_WAIT_TURN)
		return handle_wait_turn(c, req, now);
	drop_conn(c);
}
