/* uuidlock-keeper: holds this host's sidecars on the share.
 *
 * The kernel lock orders the processes of one host; the sidecar orders the
 * hosts.  While any local process holds a kernel lock on file F, this host
 * holds F's sidecar, and the keeper is the process that holds it:
 *   - a shim that took a kernel lock asks for F (KEEPER_ACQUIRE); the keeper
 *     answers at once if the host already holds F, else it runs the sidecar
 *     protocol (create, verify delay, re-read, retry) and answers when held;
 *   - when no lock on F is left in /proc/locks (and, where /proc can't name
 *     every pid, in our processes' fdinfo: see load_locks) -- checked every
 *     retry interval and at once when a shim reports an unlock or close
 *     (KEEPER_CHECK) -- it releases the sidecar.  So a lock that outlives the process that took it
 *     (`( flock 9; ... ) 9>f`, exec, fork) keeps its sidecar, and one whose
 *     holders all died loses it, without any code running in them.
 * One keeper per runtime directory (per user) and pid namespace, started on
 * demand by the shim, exits after a while with nothing to hold.  Single-threaded, poll()-driven:
 * every step is short, waiting is done with timers, never with sleep. */
#include "../core/coherence.h"
#include "../core/client.h" /* keeper_file */
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

#define IDLE_EXIT_NS (30 * NS_PER_SEC)
#define MIN_CHECK_NS (5 * NS_PER_MS)
#define MAX_CHECK_NS (NS_PER_SEC)
#define READY_FD 3
#define MAX_INODES 8
#define SAY_WAITING_NS (5 * NS_PER_SEC) /* a blocking wait this long is reported once */
#define IDLE_HOLDS_MAX 64 /* idle holds kept at most; the least recently used go first */
#define IDLE_POLL_MAX_NS (250 * NS_PER_MS) /* an idle hold looks for a recall at least this often */
/* A client sends its request as soon as it is connected: a connection
 * silent this long is dropped (a stopped or hostile process keeps no
 * descriptor of ours). */
#define IDLE_CONN_NS (3 * NS_PER_SEC)
/* Out of descriptors in accept: stop polling the socket this long, rather
 * than being woken for the same pending connection again and again. */
#define ACCEPT_PAUSE_NS (100 * NS_PER_MS)
/* Descriptors kept free of connections: the share, /proc and the log need
 * some while connections take the rest. */
#define RESERVED_FDS 32
#define MAX_CONNS 16384 /* the poll set lives on the stack */
/* How often we look whether our socket is still where clients look for it. */
#define LISTEN_CHECK_NS (2 * NS_PER_SEC)

/* The life of one entry, one sidecar this host holds or wants.  Only the
 * transition functions named below change e->state.
 *
 *   WAITING    someone asked; trying to create the sidecar every retry
 *              interval (step_waiting), asking for a turn after one (say_want)
 *     -> VERIFYING  created: wait the verification delay      (start_verifying)
 *     -> WATCHING   busy and nobody waits any more           (stop_waiting)
 *   VERIFYING  re-read after the delay                        (step_verifying)
 *     -> HELD       still ours                                (become_held)
 *     -> WAITING    taken over                                (back_off)
 *   HELD       this host holds the sidecar: heartbeat, grant local asks
 *     -> YIELDING   another host asked for a turn, a newcomer came (answer_while_held)
 *     -> DEFERRING  the same, during a hand-off               (yield_turn)
 *     -> IDLE       no local lock left                        (linger_or_release)
 *     -> (freed)    the same, with UUIDLOCK_LINGER=0 or at shutdown (release)
 *   IDLE       held, heartbeating, no local lock: a local ask is answered
 *              from memory (cached hold, like an SMB lease), once we know the
 *              hold is still ours (resume_idle_hold)
 *     -> HELD       a local process asked again
 *     -> DEFERRING  another host asked for it (recall), polled  (step_idle)
 *     -> (freed)    lingered UUIDLOCK_LINGER, or the least recently used of
 *                   too many idle holds                       (release)
 *   YIELDING   still held for the processes already granted; newcomers wait
 *     -> DEFERRING  the last of them unlocked: released       (yield_turn)
 *   DEFERRING  released for another host's turn: stays out while its
 *              request stands and the sidecar is free         (step_deferring)
 *     -> WAITING    the sidecar was taken, the request withdrawn, or it
 *                   went unanswered for turn_request_ns       (stop_deferring)
 *   WATCHING   nobody waits, but a non-blocking ask missed lately: keeps its
 *              observation of the holder, so that repeated asks (SQLite's
 *              busy handler, py-filelock's polling) break a dead holder after
 *              a lease as a blocking waiter does, and its turn request
 *     -> WAITING    asked again                               (handle_acquire)
 *     -> (freed)    no ask for a lease                        (step_watching)
 */
enum entry_state { WAITING, VERIFYING, HELD, YIELDING, IDLE, DEFERRING, WATCHING };

/* One sidecar this host holds or wants. */
struct entry {
	struct sidecar_hold hold;
	char prefix[CONFIG_PREFIX_MAX];
	/* The locked file(s) behind this sidecar, as /proc/locks names them:
	 * more than one if the file was replaced while locked. */
	struct { uint64_t dev, ino; } inode[MAX_INODES];
	unsigned ninodes;
	/* The processes that asked us for this sidecar and may still hold a
	 * lock on the file: another keeper's clients (another user, another
	 * runtime directory) lock the same file, and must not keep ours.
	 * Granted: we answered it HELD while we hold the sidecar, so it may be
	 * inside its critical section; the others only wait in a lock call. */
	struct requester {
		long pid;
		bool granted;
	} *requesters;
	size_t nrequesters, requesters_cap;
	enum entry_state state;
	/* WAITING: next attempt; VERIFYING: time to re-read; DEFERRING: next
	 * look; WATCHING: when to withdraw the turn request or forget */
	int64_t next_step;
	/* Turns between hosts (see sidecar.c).  HELD: when this host's turn
	 * began (the first of a run of back-to-back holds, see recent_release;
	 * 0 until held), when to look for another host's ".want" again, until
	 * when to keep the sidecar for processes told to come back, since when
	 * only a process that hasn't asked yet holds a lock (0: none).
	 * WAITING: since when, when to say ".want" again, and whether we said
	 * it.  DEFERRING: until when at most.  After a non-blocking miss: until
	 * when to keep the turn request, and the entry (WATCHING). */
	int64_t turn_since, next_want_look, turn_grace_until, handoff_since;
	int64_t waiting_since, next_want_say;
	bool said_want;
	int64_t defer_until, want_until, watch_until;
	/* Held: when we last wrote the sidecar (created it, or a heartbeat that
	 * found it ours), on CLOCK_BOOTTIME; IDLE: since when, and for how long
	 * at most (UUIDLOCK_LINGER). */
	int64_t written_at_boot, idle_since, linger_ns;
	size_t file_len; /* the locked file's path: hold.path's first file_len bytes */
	int64_t retry_ns, verify_ns, foreign_stale_ns;
	struct sidecar_holder holder;
	/* HELD: the heartbeat, and how many beats in a row failed */
	int64_t next_beat;
	unsigned long long beats;
	unsigned failed_beats;
	/* WAITING: what the other holder's sidecar (and a breaker's guard) said,
	 * and since when, on our monotonic clock.  Allocated when first needed
	 * and freed once held: a host holding many sidecars doesn't carry them. */
	struct observation {
		size_t len;
		int64_t since;
		char content[SIDECAR_HEAD_MAX];
	} *seen, *guard_seen;
	struct entry *next;
};

/* One connection: a request not yet answered. */
struct conn {
	int fd;
	long pid; /* the asking process, as /proc names it */
	bool turn_only; /* KEEPER_WAIT_TURN: holds no kernel lock */
	struct entry *entry; /* what it waits for, once its request is read */
	bool nonblocking;
	int64_t deadline; /* < 0: none */
	int64_t say_waiting_at; /* < 0: said, or nothing to say */
	int64_t accepted_at;
	struct conn *next;
};

static struct entry *entries;
static struct sidecar_holder me; /* host identity and keeper pid, for every sidecar */
/* False when /proc belongs to another pid namespace than ours: its pids
 * can't be compared with our clients', so any lock on a file counts. */
static bool pids_comparable;
/* Idle holds are kept only where the keeper can outlive its clients: one
 * in a pid namespace other than the initial one (a container) is killed,
 * without a chance to release, the moment the namespace's init exits, and
 * an idle hold there would cost every other host a lease. */
static bool may_linger;
/* False when /proc is not the initial pid namespace's: its /proc/locks then
 * leaves out locks whose owner pid it can't name (a flock whose taker
 * exited), and a held file with no line must be looked for in fdinfo. */
static bool proc_lists_every_lock;
static struct conn *conns;
static int listen_fd = -1; /* -1: not listening (another keeper took our place) */
static size_t max_conns = 1; /* see raise_fd_limit */
static int64_t accept_paused_until;
static volatile sig_atomic_t stop_requested;
static int64_t next_check = -1;

static void on_stop_signal(int sig)
{
	(void)sig;
	stop_requested = 1;
}

/* ---- replies ---------------------------------------------------------- */

static void drop_conn(struct conn *c)
{
	for (struct conn **p = &conns; *p != NULL; p = &(*p)->next)
		if (*p == c) {
			*p = c->next;
			break;
		}
	sys_close(c->fd);
	free(c);
}

__attribute__((format(printf, 4, 5)))
static void reply(struct conn *c, enum keeper_status status, int error, const char *fmt, ...)
{
	struct keeper_reply r = { .status = status, .error = error };
	if (fmt != NULL) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(r.message, sizeof r.message, fmt, ap);
		va_end(ap);
	}
	/* A peer that went away just misses its answer. */
	send(c->fd, &r, sizeof r, MSG_NOSIGNAL | MSG_DONTWAIT);
	drop_conn(c);
}

static unsigned count_waiters(const struct entry *e)
{
	unsigned n = 0;
	for (struct conn *c = conns; c != NULL; c = c->next)
		n += (c->entry == e);
	return n;
}

static void grant(struct entry *e, long pid);

/* Answers every waiter of e (or only the non-blocking ones). */
static void reply_waiters(struct entry *e, bool only_nonblocking, enum keeper_status status, int error,
			  const char *message)
{
	for (struct conn *c = conns, *next; c != NULL; c = next) {
		next = c->next;
		if (c->entry != e || (!c->nonblocking && only_nonblocking))
			continue;
		if (status == KEEPER_HELD)
			grant(e, c->pid);
		reply(c, status, error, "%s", message);
	}
}

/* ---- entries ---------------------------------------------------------- */

static void forget_observations(struct entry *e)
{
	free(e->seen);
	free(e->guard_seen);
	e->seen = e->guard_seen = NULL;
}

/* Nothing may point at a freed entry, so its last waiters are answered now:
 * one waiting for a turn may start its lock call over (a new entry), one
 * still waiting for the sidecar fails.  Callers answer the waiters they
 * have an answer for first; this catches the rest (a turn waiter when a
 * held sidecar is lost). */
static void answer_remaining_waiters(struct entry *e)
{
	for (struct conn *c = conns, *next; c != NULL; c = next) {
		next = c->next;
		if (c->entry != e)
			continue;
		if (c->turn_only)
			reply(c, KEEPER_DONE, 0, NULL);
		else
			reply(c, KEEPER_FAILED, ENOLCK, "the keeper gave up %s", e->hold.path);
	}
}

static void free_entry(struct entry *e)
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
	forget_observations(e);
	free(e->requesters);
	free(e);
}

static struct requester *find_requester(const struct entry *e, long pid)
{
	for (size_t i = 0; i < e->nrequesters; i++)
		if (e->requesters[i].pid == pid)
			return &e->requesters[i];
	return NULL;
}

static bool remember_requester(struct entry *e, long pid)
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

static void grant(struct entry *e, long pid)
{
	struct requester *r = find_requester(e, pid);
	if (r != NULL)
		r->granted = true;
}

static struct entry *find_entry(const char *sidecar)
{
	for (struct entry *e = entries; e != NULL; e = e->next)
		if (strcmp(e->hold.path, sidecar) == 0)
			return e;
	return NULL;
}

static void schedule_check(int64_t now, int64_t interval)
{
	int64_t at = now + MAX(MIN_CHECK_NS, MIN(MAX_CHECK_NS, interval));
	if (next_check < 0 || at < next_check)
		next_check = at;
}

static void busy_message(const struct entry *e, char *out, size_t cap)
{
	char who[256];
	sidecar_describe(e->hold.path, who, sizeof who);
	snprintf(out, cap, "%s is held by another client (%s)", e->hold.path, who);
}

/* Records content read now; returns how long it has stayed unchanged (0,
 * "just changed", if there is no memory to remember it: never stale). */
static int64_t observe(struct observation **slot, const char *content, size_t len, int64_t now)
{
	if (*slot == NULL && (*slot = calloc(1, sizeof **slot)) == NULL)
		return 0;
	struct observation *o = *slot;
	if (o->since == 0 || len != o->len || memcmp(content, o->content, len) != 0) {
		memcpy(o->content, content, len);
		o->len = len;
		o->since = now;
	}
	return now - o->since;
}

/* Does this keeper hold (or verify) a sidecar whose first line is head's,
 * through any path?  The same sidecar seen through a second mount of the
 * share is held, not a copy. */
static bool holds_sidecar(const struct entry *e);

static bool holds_token(const char *head, size_t len)
{
	size_t first_line = strcspn(head, "\n");
	for (const struct entry *e = entries; e != NULL; e = e->next)
		if ((holds_sidecar(e) || e->state == VERIFYING) && first_line < len && strlen(e->hold.token) == first_line &&
		    memcmp(head, e->hold.token, first_line) == 0)
			return true;
	return false;
}

/* Has pid namespace ns no process left?  Each answer is a scan of every
 * process of the machine: one that found it alive holds for a second. */
static bool pid_namespace_gone(unsigned long long ns)
{
	static unsigned long long alive_ns;
	static int64_t alive_at;
	int64_t now = mono_ns();
	if (ns == alive_ns && now - alive_at < NS_PER_SEC)
		return false;
	if (pid_namespace_empty(ns))
		return true;
	alive_ns = ns;
	alive_at = now;
	return false;
}

/* Why a sidecar (or guard) that has stayed as it is for `quiet` ns may be
 * broken, or NULL while it must be respected.  The fast verdicts need
 * proof (see sidecar.c, "Who may break at once"), never a pid lookup. */
static const char *stale_reason(const struct entry *e, const char *head, size_t len, int64_t quiet,
				char *why, size_t cap)
{
	struct sidecar_info info;
	sidecar_parse(head, len, &info);
	bool this_host = info.ours_format && strcmp(info.host_id, me.host_id) == 0;
	if (this_host && strcmp(info.keeper_id, me.keeper_id) == 0 && !holds_token(head, len)) {
		snprintf(why, cap, "it names this keeper, which does not hold it: a copy");
		return why;
	}
	if (this_host && keeper_fate(info.keeper_dir, info.keeper_id) == KEEPER_DEAD) {
		snprintf(why, cap, "its keeper (pid %ld) on this host is gone", info.keeper_pid);
		return why;
	}
	/* A container's keeper dies with its pid namespace, before it can
	 * release: where we see every process of the machine, a namespace with
	 * none left holds nothing. */
	unsigned long long ns = info.ours_format && proc_lists_every_lock
					? host_id_other_pid_namespace(info.host_id, me.host_id)
					: 0;
	if (ns != 0 && pid_namespace_gone(ns)) {
		snprintf(why, cap, "its pid namespace (%llu) on this machine is gone", ns);
		return why;
	}
	/* Both leases count: a holder with a longer lease beats less often. */
	int64_t lease = MAX(e->holder.lease_ns, info.lease_ns);
	if (info.ours_format && info.has_heartbeat && quiet >= lease) {
		snprintf(why, cap, "no heartbeat for %.1f s", (double)quiet / NS_PER_SEC);
		return why;
	}
	/* Cut off before its heartbeat line: like a holder whose heart stopped. */
	if (info.half_written && quiet >= lease) {
		snprintf(why, cap, "half-written (empty or cut off), unchanged for %.1f s",
			 (double)quiet / NS_PER_SEC);
		return why;
	}
	if (!info.ours_format && e->foreign_stale_ns >= 0 && quiet >= e->foreign_stale_ns) {
		snprintf(why, cap, "foreign sidecar unchanged for %.1f s (UUIDLOCK_FOREIGN_STALE)",
			 (double)quiet / NS_PER_SEC);
		return why;
	}
	return NULL;
}

/* A breaker that died holding the guard would block every later break:
 * the same rules apply to the guard itself. */
static void clear_stale_guard(struct entry *e, int64_t now)
{
	char path[PATH_MAX + 8], head[SIDECAR_HEAD_MAX], why[128];
	snprintf(path, sizeof path, "%s.break", e->hold.path);
	ssize_t n = sidecar_read_head(path, head, sizeof head);
	if (n < 0)
		return;
	int64_t quiet = observe(&e->guard_seen, head, (size_t)n, now);
	if (stale_reason(e, head, (size_t)n, quiet, why, sizeof why) != NULL && unlink(path) == 0)
		log_warn("removed stale guard %s: %s", path, why);
}

/* The sidecar exists: break it if it is provably abandoned.  True if it is
 * gone now, so that creating it may be tried again at once. */
static bool break_if_stale(struct entry *e, int64_t now)
{
	char head[SIDECAR_HEAD_MAX], why[128];
	ssize_t n = sidecar_read_head(e->hold.path, head, sizeof head);
	if (n < 0)
		return n == -ENOENT;
	int64_t quiet = observe(&e->seen, head, (size_t)n, now);
	if (stale_reason(e, head, (size_t)n, quiet, why, sizeof why) == NULL)
		return false;
	struct sidecar_hold guard;
	sidecar_new_token(&guard, e->prefix);
	int err = sidecar_break(e->hold.path, head, (size_t)n, &guard, &e->holder, e->verify_ns);
	if (err == 0) {
		log_warn("broke stale sidecar %s: %s", e->hold.path, why);
		if (e->seen != NULL)
			e->seen->since = 0;
		return true;
	}
	if (err == EBUSY)
		clear_stale_guard(e, now);
	else if (err == ETIMEDOUT)
		log_warn("not breaking stale sidecar %s: re-reading it took longer than half of "
			 "UUIDLOCK_VERIFY_DELAY (%.3f s), which would not be safe; raise it",
			 e->hold.path, (double)e->verify_ns / NS_PER_SEC);
	else if (err == ECANCELED)
		log_warn("breaking %s moved a live sidecar aside (the move landed late): put it back",
			 e->hold.path);
	else if (err == ENOTRECOVERABLE)
		log_error("breaking %s moved a live sidecar aside (the move landed late) and could not "
			  "put it back: its holder will report the lock lost", e->hold.path);
	else if (err != EAGAIN)
		log_error("cannot break stale sidecar %s: %s", e->hold.path, strerror(err));
	return false;
}

/* The next attempt: between half and one retry interval from now, at random,
 * so that hosts that lost a race don't stay in step.  So a waiting host makes
 * at most 2/UUIDLOCK_RETRY_INTERVAL attempts a second per file (each an
 * exclusive create and a read), and a released lock is taken within one
 * retry interval plus the verification delay. */
static int64_t next_attempt(const struct entry *e, int64_t now)
{
	static uint64_t seed;
	if (seed == 0)
		seed = (uint64_t)now ^ ((uint64_t)getpid() << 32) ^ 0x9e3779b97f4a7c15ULL;
	seed ^= seed << 13;
	seed ^= seed >> 7;
	seed ^= seed << 17;
	return now + e->retry_ns / 2 + (int64_t)(seed % (uint64_t)(e->retry_ns / 2 + 1));
}

/* Found the sidecar held: ask the holder for a turn (see sidecar.c) at once
 * -- an idle holder gives it up as soon as it sees the request -- and again
 * every 4 attempts or so while we wait (the holder doesn't remove it, but a
 * host that got its turn does, and others may still wait). */
static void say_want(struct entry *e, int64_t now)
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
static void note_nonblocking_ask(struct entry *e, int64_t now)
{
	e->watch_until = now + e->holder.lease_ns;
	e->want_until = now + turn_request_ns(e);
}

/* Nobody waits for e any more: keep watching the holder if a non-blocking
 * ask missed lately, else forget it. */
static void step_watching(struct entry *e, int64_t now);

static void stop_waiting(struct entry *e, int64_t now)
{
	e->state = WATCHING;
	step_watching(e, now);
}

/* A WAITING entry whose last waiter left (hung up, timed out, answered). */
static void forget_if_unwanted(struct entry *e, int64_t now)
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

/* One attempt of the protocol of sidecar.c: create, breaking a stale
 * sidecar first if there is one. */
static void step_waiting(struct entry *e, int64_t now)
{
	if (count_waiters(e) == 0)
		return stop_waiting(e, now);
	if (!sidecar_dir_on_share(e))
		return give_up_unmounted(e);
	sidecar_new_token(&e->hold, e->prefix);
	int err = sidecar_create(&e->hold, &e->holder);
	if (err == EEXIST && break_if_stale(e, now)) {
		sidecar_new_token(&e->hold, e->prefix);
		err = sidecar_create(&e->hold, &e->holder);
	}
	if (err == EEXIST)
		return back_off(e, now);
	if (err != 0)
		return give_up(e, err, "create");
	if (!sidecar_dir_on_share(e)) { /* unmounted during the create (sshfs: its EPERM retry) */
		sidecar_release(&e->hold); /* ours, wherever the name leads now */
		return give_up_unmounted(e);
	}
	e->written_at_boot = boot_ns();
	start_verifying(e, now);
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
static void step_deferring(struct entry *e, int64_t now)
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

static void defer(struct entry *e, int64_t now)
{
	e->state = DEFERRING;
	e->turn_since = 0; /* the next hold is a new turn */
	e->defer_until = now + turn_request_ns(e);
	e->next_step = now + e->retry_ns / 2;
}

/* Nobody waits; a non-blocking ask missed lately.  No share operation: the
 * next ask attempts.  Withdraws the turn request once the asks stopped. */
static void step_watching(struct entry *e, int64_t now)
{
	if (e->said_want && now >= e->want_until) {
		sidecar_unwant(e->hold.path);
		e->said_want = false;
	}
	if (now >= e->watch_until)
		return free_entry(e);
	e->next_step = e->said_want ? MIN(e->want_until, e->watch_until) : e->watch_until;
}

static void step_idle(struct entry *e, int64_t now);

/* Advances e at e->next_step. */
static void step(struct entry *e, int64_t now)
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

static bool holds_sidecar(const struct entry *e)
{
	return e->state == HELD || e->state == YIELDING || e->state == IDLE;
}

/* Whether e is advanced by step() at e->next_step (else only by heartbeats,
 * checks and requests). */
static bool has_steps(const struct entry *e)
{
	return !holds_sidecar(e) || e->state == IDLE;
}

/* ---- the sweep of /proc/locks ---------------------------------------- */

/* The host's locks now: /proc/locks, and where it can leave locks out (see
 * proclocks_add_unlisted) the held files' locks it left out, from fdinfo.
 * Only a held file with no line at all costs that scan of our processes. */
static int load_locks(struct proclocks *locks)
{
	int err = proclocks_load(locks);
	if (err != 0 || proc_lists_every_lock)
		return err;
	size_t n = 0;
	for (const struct entry *e = entries; e != NULL; e = e->next)
		n += holds_sidecar(e) ? e->ninodes : 0;
	struct proclock *want = malloc((n + 1) * sizeof *want);
	if (want == NULL)
		err = ENOMEM;
	n = 0;
	for (const struct entry *e = entries; want != NULL && e != NULL; e = e->next)
		for (unsigned i = 0; holds_sidecar(e) && i < e->ninodes; i++)
			want[n++] = (struct proclock){ .dev = e->inode[i].dev, .ino = e->inode[i].ino };
	if (want != NULL)
		err = proclocks_add_unlisted(locks, want, n, geteuid());
	free(want);
	if (err != 0)
		proclocks_free(locks);
	return err;
}

/* Walks the locks on every inode of one entry:
 *   for (struct sweep s = sweep(e, locks); (lock = sweep_next(&s)) != NULL;) */
struct sweep {
	const struct entry *e;
	const struct proclocks *locks;
	unsigned inode; /* the next inode to look up */
	const struct proclock *at, *end;
};

static struct sweep sweep(const struct entry *e, const struct proclocks *locks)
{
	return (struct sweep){ .e = e, .locks = locks };
}

static const struct proclock *sweep_next(struct sweep *s)
{
	while (s->at == s->end) {
		if (s->inode == s->e->ninodes)
			return NULL;
		size_t n;
		s->at = proclocks_on(s->locks, s->e->inode[s->inode].dev, s->e->inode[s->inode].ino, &n);
		s->end = s->at + n;
		s->inode++;
	}
	return s->at++;
}

/* Tells every local process that holds a lock on e's file, on its stderr:
 * the keeper has no terminal of its own, and they are the ones at risk. */
static void tell_holders(const struct entry *e, const char *msg)
{
	struct proclocks now;
	if (load_locks(&now) != 0)
		return;
	const struct proclock *lock;
	for (struct sweep s = sweep(e, &now); (lock = sweep_next(&s)) != NULL;) {
		long pid = lock->pid > 0 ? lock->pid : lock->seen_in;
		if (pid <= 0)
			continue;
		char path[64];
		snprintf(path, sizeof path, "/proc/%ld/fd/2", pid);
		int fd = open(path, O_WRONLY | O_APPEND | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
		if (fd >= 0) {
			dprintf(fd, "uuidlock: %s\n", msg);
			sys_close(fd);
		}
	}
	proclocks_free(&now);
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
static void heartbeat(struct entry *e, int64_t now)
{
	e->next_beat = now + e->holder.lease_ns / 3;
	int64_t at = boot_ns();
	int err = sidecar_heartbeat(&e->hold, ++e->beats);
	if (err == 0) {
		e->written_at_boot = at;
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
static bool look_for_turn_request(struct entry *e, int64_t now, int64_t look_every)
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
 * two retry intervals of the last release, counts as one turn. */
#define RECENT_RELEASES 16
static struct recent_release {
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

static void remember_release(const struct entry *e, int64_t now)
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
static void continue_turn(struct entry *e, int64_t now)
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

/* Releases e's sidecar and says how it went; `purpose` ends the log lines.
 * Returns sidecar_release's answer: EEXIST/ENOENT mean the hold was lost. */
static int release_sidecar(struct entry *e, const char *purpose)
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

static void release(struct entry *e)
{
	if (holds_sidecar(e))
		remember_release(e, mono_ns());
	release_sidecar(e, e->state == IDLE ? " (idle)" : "");
	free_entry(e);
}

/* ---- idle holds (cached holds; see sidecar.c) ---------------------------- */

/* How often an idle hold looks for another host's request: every retry
 * interval at first, less often the longer it has been idle, at least
 * every IDLE_POLL_MAX_NS.  One share operation per look. */
static int64_t recall_poll_ns(const struct entry *e, int64_t now)
{
	return MAX(e->retry_ns, MIN((now - e->idle_since) / 4, IDLE_POLL_MAX_NS));
}

static void step_idle(struct entry *e, int64_t now)
{
	if (now - e->idle_since >= e->linger_ns)
		return release(e);
	if (sidecar_wanted(e->hold.path)) {
		int err = release_sidecar(e, " for another client (recalled while idle)");
		if (err == 0 || err == EEXIST || err == ENOENT)
			return defer(e, now);
	}
	e->next_step = now + recall_poll_ns(e, now);
}

static void release_least_recently_used_idle(void)
{
	struct entry *oldest = NULL;
	unsigned idle = 0;
	for (struct entry *e = entries; e != NULL; e = e->next)
		if (e->state == IDLE) {
			idle++;
			if (oldest == NULL || e->idle_since < oldest->idle_since)
				oldest = e;
		}
	if (idle > IDLE_HOLDS_MAX)
		release(oldest);
}

/* The last local lock on e's file ended: keep the sidecar for a while. */
static void linger_or_release(struct entry *e, int64_t now)
{
	if (e->linger_ns <= 0)
		return release(e);
	e->state = IDLE;
	e->idle_since = now;
	e->next_step = now + e->retry_ns;
	log_info("keeping %s (idle)", e->hold.path);
	release_least_recently_used_idle();
}

/* Is our last write to the sidecar recent enough that no other host can
 * have broken it since?  See sidecar.c, "Cached holds". */
static bool written_lately(const struct entry *e)
{
	return boot_ns() - e->written_at_boot < e->holder.lease_ns / 2;
}

/* A local process asks for an idle hold: answer from memory only if the
 * hold is still ours (a keeper stopped or suspended for a lease may have
 * been broken meanwhile): after a long gap, check on the share first, and
 * if another host took it, start over. */
static void resume_idle_hold(struct entry *e, int64_t now)
{
	if (!written_lately(e)) {
		int64_t at = boot_ns();
		int err = sidecar_heartbeat(&e->hold, ++e->beats);
		if (err != 0) {
			log_warn("idle hold on %s is no longer ours (%s): taking it again", e->hold.path,
				 err == EEXIST ? "another client has it" : strerror(err));
			sidecar_forget(&e->hold);
			e->state = WAITING;
			e->turn_since = 0;
			e->waiting_since = now;
			e->next_step = now;
			return;
		}
		e->written_at_boot = at;
		e->next_beat = now + e->holder.lease_ns / 3;
	}
	e->state = HELD;
	e->handoff_since = 0;
	schedule_check(now, e->retry_ns);
}

/* Does a process we serve still hold a lock on e's file?  A FLOCK line names
 * the process that took the lock, which may have exited while its open file
 * description lives on elsewhere (`( flock 9; ... ) 9>f`): it asked us, so it
 * counts.  OFD lines name no process (-1): they always count.  Requesters
 * that hold nothing any more are forgotten: a new lock call asks again. */
static bool locked_locally(struct entry *e, const struct proclocks *locks)
{
	size_t kept = 0;
	bool held = false;
	const struct proclock *lock;
	for (struct sweep s = sweep(e, locks); (lock = sweep_next(&s)) != NULL;) {
		long pid = lock->pid;
		if (pid < 0 || !pids_comparable) {
			held = true;
		} else if (find_requester(e, pid) != NULL) {
			held = true;
			for (size_t k = 0; k < kept; k++)
				if (e->requesters[k].pid == pid)
					goto next;
			/* keep it: swap into the kept prefix */
			for (size_t k = kept; k < e->nrequesters; k++)
				if (e->requesters[k].pid == pid) {
					struct requester r = e->requesters[k];
					e->requesters[k] = e->requesters[kept];
					e->requesters[kept++] = r;
					break;
				}
		}
	next:;
	}
	e->nrequesters = kept;
	return held;
}

/* Who holds e's file now, for a yield: NONE, only PENDING processes (they
 * asked and wait for our answer, so none is in its critical section), or
 * some GRANTED one.  UNKNOWN when a lock can't be told apart: an OFD lock
 * (no pid) or a /proc of another pid namespace. */
enum holders { HOLDERS_NONE, HOLDERS_PENDING, HOLDERS_GRANTED, HOLDERS_UNKNOWN };

static enum holders classify_holders(const struct entry *e, const struct proclocks *locks)
{
	enum holders worst = HOLDERS_NONE;
	const struct proclock *lock;
	for (struct sweep s = sweep(e, locks); (lock = sweep_next(&s)) != NULL;) {
		if (lock->pid < 0 || !pids_comparable)
			return HOLDERS_UNKNOWN;
		const struct requester *r = find_requester(e, lock->pid);
		if (r != NULL)
			worst = MAX(worst, r->granted ? HOLDERS_GRANTED : HOLDERS_PENDING);
	}
	return worst;
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
static void finish_yielding(struct entry *e, const struct proclocks *locks, int64_t now)
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

static bool any_lock_on(const struct entry *e, const struct proclocks *locks)
{
	struct sweep s = sweep(e, locks);
	return sweep_next(&s) != NULL;
}

/* None of our requesters holds a lock on e's file, but someone does: most
 * likely a local process the kernel just handed the lock to, which is about
 * to ask us.  Keep the sidecar a retry interval for it (saving the share a
 * release and an acquisition with its verification delay), unless another
 * host asked for a turn: then yield now, and that process will wait.  A
 * lock of another keeper's client (another user) never asks us: after the
 * interval the sidecar goes as before.  False: release it. */
static bool hand_off_or_yield(struct entry *e, int64_t now)
{
	if (e->handoff_since == 0)
		e->handoff_since = now;
	if (look_for_turn_request(e, now, e->retry_ns)) {
		yield_turn(e, now);
		return true;
	}
	return now - e->handoff_since < e->retry_ns;
}

/* Releases every held sidecar whose file no local process has locked. */
static void check_held(int64_t now)
{
	next_check = -1;
	bool any_held = false;
	for (struct entry *e = entries; e != NULL; e = e->next)
		any_held |= holds_sidecar(e);
	if (!any_held)
		return;
	struct proclocks locks;
	int err = load_locks(&locks);
	if (err != 0) {
		/* Without the list we cannot tell: keep holding (safe), try later. */
		log_error("cannot read /proc/locks: %s", strerror(err));
		schedule_check(now, MAX_CHECK_NS);
		return;
	}
	int64_t interval = MAX_CHECK_NS;
	for (struct entry *e = entries, *next; e != NULL; e = next) {
		next = e->next;
		if (e->state == YIELDING)
			finish_yielding(e, &locks, now);
		if (e->state != HELD)
			continue;
		if (locked_locally(e, &locks)) {
			e->handoff_since = 0;
			interval = MIN(interval, e->retry_ns);
		} else if (any_lock_on(e, &locks) && hand_off_or_yield(e, now)) {
			if (e->state == HELD)
				interval = MIN(interval, e->retry_ns);
		} else if (now < e->turn_grace_until) { /* for processes told to come back */
			interval = MIN(interval, e->turn_grace_until - now);
		} else {
			linger_or_release(e, now);
		}
	}
	proclocks_free(&locks);
	for (struct entry *e = entries; e != NULL; e = e->next)
		if (holds_sidecar(e)) {
			schedule_check(now, interval);
			break;
		}
}

/* ---- requests --------------------------------------------------------- */

static struct entry *new_entry(const struct keeper_request *req, int64_t now)
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
	size_t n = strlen(e->hold.path);
	e->file_len = req->suffix_len < n ? n - req->suffix_len : n;
	e->next = entries;
	entries = e;
	return e;
}

/* Remembers which inode a request locked, so that the check watches it. */
static bool add_inode(struct entry *e, const struct keeper_request *req)
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

/* The asking process as /proc names it: SO_PEERCRED, which the kernel
 * translates into our pid namespace. */
static long peer_pid(int fd)
{
	struct ucred cred;
	socklen_t len = sizeof cred;
	return getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 ? (long)cred.pid : -1;
}

/* Can a newcomer be sent away for another host's turn?  Only if no process
 * we answered holds a lock on the file now: then the newcomer's kernel lock
 * is its own, new, and giving it back undoes exactly this call.  Otherwise
 * it may share a granted holder's lock (a flock inherited across fork or
 * exec, an OFD lock): giving it back would drop theirs. */
static bool may_send_away(const struct entry *e)
{
	struct proclocks locks;
	if (load_locks(&locks) != 0)
		return false;
	enum holders h = classify_holders(e, &locks);
	proclocks_free(&locks);
	return h == HOLDERS_NONE || h == HOLDERS_PENDING;
}

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
	if (granted || e->state != YIELDING || !may_send_away(e)) {
		grant(e, c->pid);
		return reply(c, KEEPER_HELD, 0, NULL);
	}
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

static void handle_probe(struct conn *c, const struct keeper_request *req)
{
	struct entry *e = find_entry(req->sidecar);
	if (e != NULL && e->state == IDLE)
		return reply(c, KEEPER_HELD, 0, "idle for %.1f s (cached hold)", (double)(mono_ns() - e->idle_since) / NS_PER_SEC);
	if (e != NULL && holds_sidecar(e))
		return reply(c, KEEPER_HELD, 0, "in use");
	if (access(req->sidecar, F_OK) == 0) {
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

static void handle_request(struct conn *c, int64_t now)
{
	struct keeper_request req;
	/* MSG_TRUNC: the packet's real length, so a request from another
	 * version of the library can't be taken for ours. */
	ssize_t n = recv(c->fd, &req, sizeof req, MSG_DONTWAIT | MSG_TRUNC);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n < (ssize_t)sizeof req.version)
		return drop_conn(c);
	if (n != (ssize_t)sizeof req || req.version != KEEPER_PROTO_VERSION)
		return reply(c, KEEPER_FAILED, EPROTO,
			     "the running keeper (pid %ld) speaks protocol %d, this library %u: "
			     "it exits once it holds nothing, or stop it",
			     (long)getpid(), KEEPER_PROTO_VERSION, req.version);
	req.sidecar[sizeof req.sidecar - 1] = '\0';
	req.prefix[sizeof req.prefix - 1] = '\0';
	bound_timings(&req);
	c->pid = peer_pid(c->fd);
	if (req.op == KEEPER_ACQUIRE)
		return handle_acquire(c, &req, now);
	if (req.op == KEEPER_CHECK) {
		check_held(now);
		return reply(c, KEEPER_DONE, 0, NULL);
	}
	if (req.op == KEEPER_PROBE)
		return handle_probe(c, &req);
	if (req.op == KEEPER_WAIT_TURN)
		return handle_wait_turn(c, &req, now);
	drop_conn(c);
}

/* A waiter that hangs up (signal, timeout in the shim, death) withdraws. */
static void handle_hangup(struct conn *c)
{
	struct entry *e = c->entry;
	drop_conn(c);
	forget_if_unwanted(e, mono_ns());
}

/* Accepts at most `room` connections.  Out of descriptors (or memory),
 * the pending ones wait in the socket's backlog until some close. */
static void accept_connections(size_t room, int64_t now)
{
	for (; room > 0; room--) {
		int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
		if (fd < 0 && (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)) {
			log_debug("keeper: cannot accept a connection: %s", strerror(errno));
			accept_paused_until = now + ACCEPT_PAUSE_NS;
		}
		if (fd < 0)
			return;
		struct conn *c = calloc(1, sizeof *c);
		if (c == NULL) {
			sys_close(fd);
			accept_paused_until = now + ACCEPT_PAUSE_NS;
			return;
		}
		*c = (struct conn){ .fd = fd, .deadline = -1, .say_waiting_at = -1, .accepted_at = now,
				    .next = conns };
		conns = c;
	}
}

static bool sent_nothing_yet(const struct conn *c)
{
	return c->entry == NULL;
}

/* A request may be waiting unread behind a long step of ours: not idle. */
static bool request_pending(const struct conn *c)
{
	char byte;
	return recv(c->fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT) > 0;
}

static void drop_idle_conns(int64_t now)
{
	for (struct conn *c = conns, *next; c != NULL; c = next) {
		next = c->next;
		if (sent_nothing_yet(c) && now - c->accepted_at >= IDLE_CONN_NS && !request_pending(c))
			drop_conn(c);
	}
}

/* Like util-linux flock's verbose mode or the "locks" callback: a long
 * wait says once who it waits for. */
static void say_still_waiting(struct conn *c)
{
	c->say_waiting_at = -1;
	struct keeper_reply r = { .status = KEEPER_WAITING };
	char who[256];
	sidecar_describe(c->entry->hold.path, who, sizeof who);
	snprintf(r.message, sizeof r.message, "waiting %.0f s so far for %s, held by: %s",
		 (double)SAY_WAITING_NS / NS_PER_SEC, c->entry->hold.path, who);
	send(c->fd, &r, sizeof r, MSG_NOSIGNAL | MSG_DONTWAIT);
}

static void expire_deadlines(int64_t now)
{
	for (struct conn *c = conns, *next; c != NULL; c = next) {
		next = c->next;
		if (c->entry != NULL && c->say_waiting_at >= 0 && now >= c->say_waiting_at &&
		    (!holds_sidecar(c->entry) || c->turn_only))
			say_still_waiting(c);
		if (c->entry == NULL || c->deadline < 0 || now < c->deadline)
			continue;
		char who[256];
		sidecar_describe(c->entry->hold.path, who, sizeof who);
		struct entry *e = c->entry;
		reply(c, KEEPER_TIMEOUT, ENOLCK, "timed out waiting for %s (held by: %s)", e->hold.path, who);
		forget_if_unwanted(e, now);
	}
}

/* ---- the loop --------------------------------------------------------- */

static int64_t next_listen_check;

static int64_t next_wakeup(int64_t now, int64_t idle_since)
{
	int64_t at = next_check;
	for (struct entry *e = entries; e != NULL; e = e->next) {
		if (holds_sidecar(e) && (at < 0 || e->next_beat < at))
			at = e->next_beat;
		if (has_steps(e) && (at < 0 || e->next_step < at))
			at = e->next_step;
	}
	for (struct conn *c = conns; c != NULL; c = c->next) {
		if (c->deadline >= 0 && (at < 0 || c->deadline < at))
			at = c->deadline;
		if (c->entry != NULL && c->say_waiting_at >= 0 && (at < 0 || c->say_waiting_at < at))
			at = c->say_waiting_at;
	}
	for (struct conn *c = conns; c != NULL; c = c->next)
		if (sent_nothing_yet(c))
			at = at < 0 ? c->accepted_at + IDLE_CONN_NS : MIN(at, c->accepted_at + IDLE_CONN_NS);
	if (accept_paused_until > now)
		at = at < 0 ? accept_paused_until : MIN(at, accept_paused_until);
	at = at < 0 ? next_listen_check : MIN(at, next_listen_check);
	if (idle_since >= 0 && (at < 0 || idle_since + IDLE_EXIT_NS < at))
		at = idle_since + IDLE_EXIT_NS;
	return at < 0 ? -1 : MAX(at - now, 0);
}

static void keep_listening(int64_t now);

static void serve(void)
{
	int64_t idle_since = mono_ns();
	while (!stop_requested) {
		int64_t now = mono_ns();
		for (struct entry *e = entries, *next; e != NULL; e = next) {
			next = e->next;
			if (holds_sidecar(e) && e->next_beat <= now)
				heartbeat(e, now); /* may free e */
			else if (has_steps(e) && e->next_step <= now)
				step(e, now);
		}
		if (next_check >= 0 && next_check <= now)
			check_held(now);
		expire_deadlines(now);
		drop_idle_conns(now);
		keep_listening(now);

		if (listen_fd < 0 && entries == NULL && conns == NULL)
			return; /* another keeper serves now, and we hold nothing */
		if (entries != NULL || conns != NULL)
			idle_since = -1;
		else if (idle_since < 0)
			idle_since = now;
		else if (now - idle_since >= IDLE_EXIT_NS)
			return;

		size_t n = 1;
		for (struct conn *c = conns; c != NULL; c = c->next)
			n++;
		struct pollfd pfd[n];
		struct conn *by_index[n];
		/* A negative fd is left out of the poll: not listening, out of
		 * descriptors, or as many connections as we may have. */
		bool may_accept = listen_fd >= 0 && now >= accept_paused_until && n - 1 < max_conns;
		pfd[0] = (struct pollfd){ .fd = may_accept ? listen_fd : -1, .events = POLLIN };
		size_t i = 1;
		for (struct conn *c = conns; c != NULL; c = c->next, i++) {
			pfd[i] = (struct pollfd){ .fd = c->fd, .events = POLLIN };
			by_index[i] = c;
		}
		int64_t wait_ns = next_wakeup(now, idle_since);
		int timeout_ms = wait_ns < 0 ? -1 : (int)MIN((wait_ns + NS_PER_MS - 1) / NS_PER_MS, 60000);
		struct timespec ts = { timeout_ms / 1000, (long)(timeout_ms % 1000) * NS_PER_MS };
		sigset_t unblocked;
		sigemptyset(&unblocked);
		/* SIGTERM is blocked except inside ppoll, so it can't slip in
		 * between the stop_requested test and the wait. */
		if (ppoll(pfd, n, timeout_ms < 0 ? NULL : &ts, &unblocked) <= 0)
			continue;
		now = mono_ns();
		for (i = 1; i < n; i++) {
			if (pfd[i].revents == 0)
				continue;
			struct conn *c = by_index[i];
			if (c->entry == NULL)
				handle_request(c, now);
			else
				handle_hangup(c);
		}
		if (pfd[0].revents & POLLIN)
			accept_connections(max_conns - (n - 1), now);
	}
}

/* On SIGTERM: release what no local process holds; a sidecar still backing a
 * live local lock stays (the lock is real), for a later keeper to manage. */
static void shut_down(void)
{
	for (struct conn *c = conns, *next; c != NULL; c = next) {
		next = c->next;
		drop_conn(c);
	}
	for (struct entry *e = entries, *next; e != NULL; e = next) {
		next = e->next;
		if (e->state == VERIFYING || e->state == YIELDING)
			e->state = HELD; /* possibly ours: let the check decide */
		else if (e->state == IDLE)
			release(e);
		else if (!holds_sidecar(e))
			free_entry(e);
		else
			e->linger_ns = 0; /* the check releases what no local lock needs */
	}
	check_held(mono_ns());
}

/* ---- start-up --------------------------------------------------------- */

static bool in_initial_pid_namespace(const char *ns_link)
{
	struct stat ns;
	return stat(ns_link, &ns) == 0 && ns.st_ino == PROC_PID_INIT_INO;
}

/* Is /proc the initial pid namespace's?  Then it names every pid.  A
 * process /proc shows is a member of its namespace or of one below it, so
 * one in the initial namespace proves it: we, if /proc names us as we are;
 * else its pid 1 (a member of its own namespace, often not ours to look
 * at), or pid 2 (the kernel's kthreadd, in the initial one). */
static bool proc_is_initial_pid_namespace(void)
{
	if (pids_comparable)
		return in_initial_pid_namespace("/proc/self/ns/pid");
	return in_initial_pid_namespace("/proc/1/ns/pid") || in_initial_pid_namespace("/proc/2/ns/pid");
}

/* Our files in the runtime directory (see keeper_file: named for our pid
 * namespace), and the identity of those we made.  The directory can be
 * removed under us (a /tmp cleaner, a logout) and get a new keeper, whose
 * files have the same names: we never unlink one that isn't ours.  Each
 * identity is compared only while something of ours keeps that inode alive
 * (an open descriptor, the bound socket): a freed inode's number is reused. */
static const char *runtime_dir;
static char lock_path[PATH_MAX], socket_path[PATH_MAX], pid_path[PATH_MAX], log_path[PATH_MAX];
static int lock_fd = -1; /* open and flock'ed while we are the keeper */
static int pid_fd = -1;  /* the pid file we wrote, kept open */
struct file_id {
	dev_t dev;
	ino_t ino;
};
static struct file_id socket_id; /* while listen_fd is open */

static struct file_id file_id_of(const char *path)
{
	struct stat st;
	if (lstat(path, &st) != 0)
		return (struct file_id){ 0, 0 };
	return (struct file_id){ st.st_dev, st.st_ino };
}

static bool file_is(const char *path, struct file_id id)
{
	struct file_id now = file_id_of(path);
	return id.ino != 0 && now.dev == id.dev && now.ino == id.ino;
}

static bool file_is_open_as(const char *path, int fd)
{
	struct stat st;
	return fd >= 0 && fstat(fd, &st) == 0 && file_is(path, (struct file_id){ st.st_dev, st.st_ino });
}

/* Between the look and the unlink another keeper could bind the name; it
 * can only once our lock file is gone, and then it rebinds within a look. */
static void unlink_if_ours(const char *path, struct file_id id)
{
	if (file_is(path, id))
		unlink(path);
}

static void unlink_pid_file_if_ours(void)
{
	if (file_is_open_as(pid_path, pid_fd))
		unlink(pid_path);
}

/* Do we hold the lock file that is at lock_path now?  Takes it if free. */
static bool hold_lock_file(void)
{
	if (lock_fd >= 0) {
		if (file_is_open_as(lock_path, lock_fd))
			return true;
		sys_close(lock_fd); /* removed or replaced: it decides nothing any more */
		lock_fd = -1;
	}
	mkdir(runtime_dir, 0700); /* removed with everything in it */
	struct stat dir;
	if (lstat(runtime_dir, &dir) != 0 || !S_ISDIR(dir.st_mode) || dir.st_uid != getuid() ||
	    (dir.st_mode & 077) != 0)
		return false; /* no client would trust it: see ensure_runtime_dir */
	int fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0 || sys_flock(fd, LOCK_EX | LOCK_NB) != 0) {
		if (fd >= 0)
			sys_close(fd);
		return false;
	}
	lock_fd = fd;
	return true;
}

static void write_pid_file(void)
{
	if (pid_fd >= 0)
		sys_close(pid_fd);
	pid_fd = open(pid_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (pid_fd >= 0)
		dprintf(pid_fd, "%ld\n", (long)getpid());
}

/* Only one keeper per runtime directory (and pid namespace): the one that
 * holds the lock file.  Returns false if another keeper is already serving
 * (or we cannot listen). */
static bool become_the_keeper(void)
{
	if (!hold_lock_file())
		return false;
	/* The pid file first: whoever reaches the socket can read who we are. */
	write_pid_file();
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	snprintf(addr.sun_path, sizeof addr.sun_path, "%s", socket_path);
	unlink(addr.sun_path); /* a dead keeper's socket: the lock file says none lives */
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(fd, 64) != 0) {
		log_error("keeper: cannot listen on %s: %s", addr.sun_path, strerror(errno));
		if (fd >= 0)
			sys_close(fd);
		unlink_pid_file_if_ours();
		return false;
	}
	listen_fd = fd;
	socket_id = file_id_of(socket_path);
	return true;
}

static void stop_listening(void)
{
	if (listen_fd < 0)
		return;
	unlink_if_ours(socket_path, socket_id); /* before the close: see socket_id */
	sys_close(listen_fd);
	listen_fd = -1;
	unlink_pid_file_if_ours();
}

static int log_fd = -1; /* keeper.log, unless --foreground: stderr */

static void open_log_file(void)
{
	int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (fd < 0)
		return;
	log_set_fd(fd);
	if (log_fd >= 0)
		sys_close(log_fd);
	log_fd = fd;
}

/* Clients find us by our socket's name.  If it is gone or another's, we
 * can't be found: what we hold stays held until released (we still are its
 * holder), and we serve again when we can -- at once if nobody else does
 * (our directory was removed), or once another keeper has exited. */
static void keep_listening(int64_t now)
{
	if (now < next_listen_check)
		return;
	next_listen_check = now + LISTEN_CHECK_NS;
	if (listen_fd >= 0 && file_is(socket_path, socket_id))
		return;
	bool was_listening = listen_fd >= 0;
	if (was_listening) {
		sys_close(listen_fd);
		listen_fd = -1;
	}
	if (become_the_keeper()) {
		if (log_fd >= 0)
			open_log_file(); /* the old one went with the directory */
		log_warn("keeper: %s was removed or replaced: listening there again", socket_path);
	}
	else if (was_listening)
		log_warn("keeper: %s was removed or replaced, and another keeper serves now: "
			 "keeping what we hold until it is released", socket_path);
}

/* We may serve many clients, whatever limit the program that started us
 * had; some descriptors stay free for the share's files and /proc. */
static void raise_fd_limit(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		return;
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
			getrlimit(RLIMIT_NOFILE, &rl);
	}
	max_conns = rl.rlim_cur > RESERVED_FDS + 1 ? MIN(rl.rlim_cur - RESERVED_FDS, MAX_CONNS) : 1;
}

static bool name_our_files(const char *dir)
{
	runtime_dir = dir;
	return keeper_file(lock_path, sizeof lock_path, dir, KEEPER_LOCK_NAME) == 0 &&
	       keeper_file(socket_path, sizeof socket_path, dir, KEEPER_SOCKET_NAME) == 0 &&
	       strlen(socket_path) < sizeof ((struct sockaddr_un *)0)->sun_path &&
	       keeper_file(pid_path, sizeof pid_path, dir, KEEPER_PID_NAME) == 0 &&
	       keeper_file(log_path, sizeof log_path, dir, "keeper.log") == 0;
}

static void usage(FILE *to, int status)
{
	fprintf(to, "usage: uuidlock-keeper --runtime-dir DIR [--log-level N] [--foreground]\n"
		    "Started on demand by libuuidlock_shim.so; not meant to be run by hand.\n");
	exit(status);
}

int main(int argc, char **argv)
{
	static const struct option options[] = {
		{ "runtime-dir", required_argument, NULL, 'd' },
		{ "log-level", required_argument, NULL, 'l' },
		{ "foreground", no_argument, NULL, 'f' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *dir = NULL;
	bool foreground = false;
	int level = LOG_WARN, opt;
	while ((opt = getopt_long(argc, argv, "d:l:fh", options, NULL)) != -1) {
		switch (opt) {
		case 'd': dir = optarg; break;
		case 'l': level = atoi(optarg); break;
		case 'f': foreground = true; break;
		case 'h': usage(stdout, 0); break;
		default: usage(stderr, 2);
		}
	}
	if (dir == NULL || dir[0] != '/' || optind != argc)
		usage(stderr, 2);
	log_set_level((enum log_level)level);
	/* Not the starting program's working directory: it may be on a share
	 * that someone wants to unmount. */
	if (chdir("/") != 0)
		return 1;
	if (!name_our_files(dir)) {
		log_error("keeper: cannot name its files in %s: %s", dir, strerror(errno ? errno : ENAMETOOLONG));
		return 1;
	}
	raise_fd_limit();

	/* Detach: the process the shim started exits at once, so the keeper is
	 * nobody's child and no program waits for it. */
	if (!foreground) {
		pid_t pid = fork();
		if (pid < 0)
			return 1;
		if (pid > 0)
			_exit(0);
		open_log_file();
	}
	signal(SIGPIPE, SIG_IGN);
	struct sigaction sa = { .sa_handler = on_stop_signal };
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigset_t stops;
	sigemptyset(&stops);
	sigaddset(&stops, SIGTERM);
	sigaddset(&stops, SIGINT);
	sigprocmask(SIG_BLOCK, &stops, NULL);

	host_identity(me.host_id, sizeof me.host_id);
	me.keeper_pid = getpid();
	me.keeper_start = process_start_time(0);
	keeper_id_new(me.keeper_id);
	snprintf(me.keeper_dir, sizeof me.keeper_dir, "%s", dir);
	char self[32];
	ssize_t n = readlink("/proc/self", self, sizeof self - 1);
	pids_comparable = n > 0 && (self[n] = '\0', atol(self) == (long)getpid());
	may_linger = in_initial_pid_namespace("/proc/self/ns/pid");
	proc_lists_every_lock = proc_is_initial_pid_namespace();

	bool serving = become_the_keeper();
	/* Before any sidecar names us: the record is what proves our death. */
	int err = serving ? keeper_register(dir, me.keeper_id) : 0;
	if (err != 0)
		log_error("keeper: cannot record this keeper in %s/%s: %s (its sidecars will only "
			  "be broken by the lease if it dies)", dir, KEEPER_REGISTRY_NAME, strerror(err));
	if (!foreground) {
		/* Tell the shim that started us that it may connect now. */
		ssize_t w = write(READY_FD, "1", 1);
		(void)w; /* a shim that went away doesn't need to know */
		sys_close(READY_FD);
	}
	if (!serving)
		return 0;
	next_listen_check = mono_ns() + LISTEN_CHECK_NS;
	serve();
	stop_listening();
	shut_down();
	return 0;
}
