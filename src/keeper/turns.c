/* Turns between hosts (src/core/sidecar.c, "Fairness"): asking for one
 * (".want"), a holder looking for requests after its turn, yielding (the
 * processes already granted finish first), deferring to the asker until it
 * has the sidecar, and a run of back-to-back holds counting as one turn.
 * Blocks on the share: one look or create of ".want" at a time. */
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

/* Found the sidecar held: ask the holder for a turn (see sidecar.c) at once
 * -- an idle holder gives it up as soon as it sees the request -- and again
 * every 4 attempts or so while we wait (the holder doesn't remove it, but a
 * host that got its turn does, and others may still wait). */
void say_want(struct entry *e, int64_t now)
{
	if (now < e->next_want_say)
		return;
	e->next_want_say = now + 4 * e->retry_ns;
	int err = sidecar_want(e->hold.path);
	if (err == 0 || err == EEXIST)
		e->said_want = true;
	else
		log_debug("cannot ask for a turn on %s: %s", e->hold.path, strerror(err));
}

/* How long a turn request stands without a waiter behind it: a host that
 * asks only with non-blocking calls keeps it while it keeps asking, and a
 * host that defers to a request waits at most this long for it to be
 * answered (a waiter whose keeper died leaves its ".want" behind). */
static int64_t turn_request_ns(const struct entry *e)
{
	return MAX(NS_PER_SEC, 10 * e->retry_ns);
}

/* A non-blocking ask missed (or asked again while others wait): the asker
 * will ask again, so keep watching the holder for a lease after it. */
void note_nonblocking_ask(struct entry *e, int64_t now)
{
	e->watch_until = now + e->holder.lease_ns;
	e->want_until = now + turn_request_ns(e);
}

/* The end of a deferral: compete again, at once if the sidecar is free. */
static void stop_deferring(struct entry *e, bool taken, int64_t now)
{
	e->state = WAITING;
	e->waiting_since = now;
	e->next_step = taken ? next_attempt(e, now) : now;
	if (count_waiters(e) == 0)
		return stop_waiting(e, now);
	if (!taken)
		step_waiting(e, now);
}

/* Released for another host's turn (see sidecar.c): stay out while that
 * host's request stands and the sidecar is free, so that it gets in first
 * however long its round trips take; only its keeper removes the request,
 * once it holds the sidecar.  A request nobody answers for turn_request_ns
 * is stale (its keeper died): removed, and we compete again. */
void step_deferring(struct entry *e, int64_t now)
{
	bool taken = access(e->hold.path, F_OK) == 0;
	bool requested = !taken && sidecar_wanted(e->hold.path);
	if (requested && now < e->defer_until) {
		e->next_step = now + e->retry_ns / 2;
		return;
	}
	if (requested) {
		log_info("turn request on %s went unanswered: removing it", e->hold.path);
		sidecar_unwant(e->hold.path);
	}
	stop_deferring(e, taken, now);
}

void defer(struct entry *e, int64_t now)
{
	e->state = DEFERRING;
	e->turn_since = 0; /* the next hold is a new turn */
	e->defer_until = now + turn_request_ns(e);
	e->next_step = now + e->retry_ns / 2;
}

/* How long a host keeps the sidecar before it looks for other hosts' turn
 * requests: long enough to pay for the acquisition (the verification delay),
 * and a few retry intervals. */
static int64_t turn_ns(const struct entry *e)
{
	return MAX(4 * e->retry_ns, e->verify_ns);
}

/* After a turn, looks whether another host asked for one: true if so.  One
 * look at the share, at most once per look_every.  The request stays: its
 * keeper removes it once it holds the sidecar (see step_deferring).  Safe
 * whatever /proc shows: sending a newcomer away needs may_send_away too. */
bool look_for_turn_request(struct entry *e, int64_t now, int64_t look_every)
{
	if (now - e->turn_since < turn_ns(e) || now < e->next_want_look)
		return false;
	e->next_want_look = now + look_every;
	return sidecar_wanted(e->hold.path);
}

/* A host that releases and re-acquires a sidecar back to back (one process
 * locking in a loop, local processes with gaps between them) would win
 * every race against a host that polls: its request comes first.  So the
 * keeper remembers its last releases, and a run of holds, each taken within
 * two retry intervals of the last release, counts as one turn.  Per share
 * thread, like the entries it outlives: a sidecar is on one share. */
#define RECENT_RELEASES 16
static _Thread_local struct recent_release {
	uint64_t path_hash; /* 0: unused */
	int64_t released_at, turn_since, next_want_look;
} recent[RECENT_RELEASES];

static uint64_t path_hash(const char *path)
{
	uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a */
	for (; *path != '\0'; path++)
		h = (h ^ (unsigned char)*path) * 0x100000001b3ULL;
	return h | 1;
}

void remember_release(const struct entry *e, int64_t now)
{
	uint64_t h = path_hash(e->hold.path);
	struct recent_release *slot = &recent[0];
	for (unsigned i = 0; i < RECENT_RELEASES; i++) {
		if (recent[i].path_hash == h) {
			slot = &recent[i];
			break;
		}
		if (recent[i].released_at < slot->released_at)
			slot = &recent[i]; /* the oldest, if h isn't there */
	}
	*slot = (struct recent_release){ h, now, e->turn_since, e->next_want_look };
}

/* A new entry: if this host released the same sidecar just now, it is still
 * in the same turn; once that turn is over, look (at most once per turn)
 * whether another host asked for one, and if so wait two retry intervals
 * before competing, so that it can take the sidecar first. */
void continue_turn(struct entry *e, int64_t now)
{
	uint64_t h = path_hash(e->hold.path);
	for (unsigned i = 0; i < RECENT_RELEASES; i++) {
		const struct recent_release *r = &recent[i];
		if (r->path_hash != h || now - r->released_at > 2 * e->retry_ns || r->turn_since == 0)
			continue;
		e->turn_since = r->turn_since;
		e->next_want_look = r->next_want_look;
		if (look_for_turn_request(e, now, turn_ns(e))) { /* not every acquisition pays it */
			log_info("another client waits for %s: letting it go first", e->hold.path);
			defer(e, now);
		}
		return;
	}
}

/* Gives the sidecar up for another host's turn: released, then deferring,
 * with the processes that asked meanwhile as its waiters.  Nobody of ours
 * is granted any more. */
static void yield_turn(struct entry *e, int64_t now)
{
	int err = release_sidecar(e, " for another client's turn");
	if (err != 0 && err != EEXIST && err != ENOENT) {
		e->state = HELD; /* keep it: answer the waiters as usual */
		return reply_waiters(e, false, KEEPER_HELD, 0, "");
	}
	for (size_t i = 0; i < e->nrequesters; i++)
		e->requesters[i].granted = false;
	defer(e, now);
}

/* A yield ends once no process we answered holds a lock any more (the
 * newcomers gave theirs back).  A lock we can't attribute counts as one of
 * ours: waiting for it is safe, newcomers hold no kernel lock meanwhile. */
void finish_yielding(struct entry *e, const struct proclocks *locks, int64_t now)
{
	switch (classify_holders(e, locks)) {
	case HOLDERS_GRANTED:
	case HOLDERS_UNKNOWN: /* may be granted: wait for it too */
		return; /* they unlock later; their unlock or close calls a check */
	default:
		/* Even with no waiter: those sent away are on their way back, and
		 * must not take the sidecar before the other host had its chance. */
		return yield_turn(e, now);
	}
}

/* None of our requesters holds a lock on e's file, but someone does: most
 * likely a local process the kernel just handed the lock to, which is about
 * to ask us.  Keep the sidecar a retry interval for it (saving the share a
 * release and an acquisition with its verification delay), unless another
 * host asked for a turn: then yield now, and that process will wait.  A
 * lock of another keeper's client (another user) never asks us: after the
 * interval the sidecar goes as before.  False: release it. */
bool hand_off_or_yield(struct entry *e, int64_t now)
{
	if (e->handoff_since == 0)
		e->handoff_since = now;
	if (look_for_turn_request(e, now, e->retry_ns)) {
		yield_turn(e, now);
		return true;
	}
	return now - e->handoff_since < e->retry_ns;
}

/* Can a newcomer be sent away for another host's turn?  Only if no process
 * we answered holds a lock on the file now: then the newcomer's kernel lock
 * is its own, new, and giving it back undoes exactly this call.  Otherwise
 * it may share a granted holder's lock (a flock inherited across fork or
 * exec, an OFD lock): giving it back would drop theirs. */
bool may_send_away(const struct entry *e)
{
	struct proclocks locks;
	if (load_locks(&locks) != 0)
		return false;
	enum holders h = classify_holders(e, &locks);
	proclocks_free(&locks);
	return h == HOLDERS_NONE || h == HOLDERS_PENDING;
}
