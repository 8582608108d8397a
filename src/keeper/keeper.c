/* uuidlock-keeper: holds this host's sidecars on the share.
 *
 * The kernel lock orders the processes of one host; the sidecar orders the
 * hosts.  While any local process holds a kernel lock on file F, this host
 * holds F's sidecar, and the keeper is the process that holds it:
 *   - a shim that took a kernel lock asks for F (KEEPER_ACQUIRE); the keeper
 *     answers at once if the host already holds F, else it runs the sidecar
 *     protocol (create, verify delay, re-read, retry) and answers when held;
 *   - when no lock on F is left in /proc/locks -- checked every retry interval
 *     and at once when a shim reports an unlock or close (KEEPER_CHECK) -- it
 *     releases the sidecar.  So a lock that outlives the process that took it
 *     (`( flock 9; ... ) 9>f`, exec, fork) keeps its sidecar, and one whose
 *     holders all died loses it, without any code running in them.
 * One keeper per runtime directory (per user), started on demand by the shim,
 * exits after a while with nothing to hold.  Single-threaded, poll()-driven:
 * every step is short, waiting is done with timers, never with sleep. */
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

enum entry_state { WAITING, VERIFYING, HELD };

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
	int64_t next_step; /* WAITING: next attempt; VERIFYING: time to re-read */
	/* Turns between hosts (see sidecar.c).  HELD: when this host's turn
	 * began (the first of a run of back-to-back holds, see recent_release;
	 * 0 until held), when to look for another host's ".want" again, until
	 * when to keep the sidecar for processes told to come back, since when
	 * only a process that hasn't asked yet holds a lock (0: none), and
	 * whether we are handing the sidecar over (newcomers wait).  WAITING:
	 * since when, when to say ".want" again, and whether we said it. */
	int64_t turn_since, next_want_look, turn_grace_until, handoff_since;
	bool yielding;
	int64_t waiting_since, next_want_say;
	bool said_want;
	int64_t retry_ns, verify_ns, foreign_stale_ns;
	struct sidecar_holder holder;
	/* HELD: the heartbeat */
	int64_t next_beat;
	unsigned long long beats;
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
	struct conn *next;
};

static struct entry *entries;
static struct sidecar_holder me; /* host identity and keeper pid, for every sidecar */
/* False when /proc belongs to another pid namespace than ours: its pids
 * can't be compared with our clients', so any lock on a file counts. */
static bool pids_comparable;
static struct conn *conns;
static int listen_fd = -1;
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

static void free_entry(struct entry *e)
{
	for (struct entry **p = &entries; *p != NULL; p = &(*p)->next)
		if (*p == e) {
			*p = e->next;
			break;
		}
	if (e->said_want)
		sidecar_unwant(e->hold.path);
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

/* Why a sidecar (or guard) that has stayed as it is for `quiet` ns may be
 * broken, or NULL while it must be respected. */
static const char *stale_reason(const struct entry *e, const char *head, size_t len, int64_t quiet,
				char *why, size_t cap)
{
	struct sidecar_info info;
	sidecar_parse(head, len, &info);
	if (info.ours_format && strcmp(info.host_id, me.host_id) == 0 &&
	    !process_is((pid_t)info.keeper_pid, info.keeper_start)) {
		snprintf(why, cap, "its keeper (pid %ld) on this host is gone", info.keeper_pid);
		return why;
	}
	/* Both leases count: a holder with a longer lease beats less often. */
	int64_t lease = MAX(e->holder.lease_ns, info.lease_ns);
	if (info.ours_format && info.has_heartbeat && quiet >= lease) {
		snprintf(why, cap, "no heartbeat for %.1f s", (double)quiet / NS_PER_SEC);
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

/* Waiting for more than a retry interval: ask the holder for a turn (see
 * sidecar.c), again every 4 attempts or so while we wait. */
static void say_want(struct entry *e, int64_t now)
{
	if (now - e->waiting_since < e->retry_ns || now < e->next_want_say)
		return;
	e->next_want_say = now + 4 * e->retry_ns;
	int err = sidecar_want(e->hold.path);
	if (err == 0 || err == EEXIST)
		e->said_want = true;
	else
		log_debug("cannot ask for a turn on %s: %s", e->hold.path, strerror(err));
}

/* Someone else holds the sidecar: non-blocking askers get "busy", the rest
 * wait for the next attempt; an entry nobody waits for is forgotten. */
static void back_off(struct entry *e, int64_t now)
{
	bool nonblocking_waiter = false;
	for (struct conn *c = conns; c != NULL; c = c->next)
		nonblocking_waiter |= c->entry == e && c->nonblocking;
	if (nonblocking_waiter) { /* reading the holder costs the share a round trip */
		char msg[512];
		busy_message(e, msg, sizeof msg);
		reply_waiters(e, true, KEEPER_BUSY, EWOULDBLOCK, msg);
	}
	e->state = WAITING;
	e->next_step = next_attempt(e, now);
	if (count_waiters(e) == 0)
		return free_entry(e);
	say_want(e, now);
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

/* Advances e through the protocol of sidecar.c: create, then verify. */
static void step(struct entry *e, int64_t now)
{
	if (e->state == WAITING && count_waiters(e) == 0)
		return free_entry(e); /* yielded for a process that never asked */
	if (e->state == WAITING && !sidecar_dir_on_share(e))
		return give_up_unmounted(e);
	if (e->state == WAITING) {
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
		e->state = VERIFYING;
		e->next_step = now + e->verify_ns;
		if (e->verify_ns > 0)
			return;
	}
	if (e->state == VERIFYING) {
		int err = sidecar_verify(&e->hold);
		if (err == EEXIST || err == ENOENT) {
			log_warn("sidecar %s was taken over during verification", e->hold.path);
			return back_off(e, now);
		}
		if (err != 0)
			return give_up(e, err, "verify");
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
		reply_waiters(e, false, KEEPER_HELD, 0, "");
		schedule_check(now, e->retry_ns);
	}
}

/* Tells every local process that holds a lock on e's file, on its stderr:
 * the keeper has no terminal of its own, and they are the ones at risk. */
static void tell_holders(const struct entry *e, const char *msg)
{
	struct proclocks now;
	if (proclocks_load(&now) != 0)
		return;
	for (unsigned i = 0; i < e->ninodes; i++) {
		size_t n;
		const struct proclock *lock = proclocks_on(&now, e->inode[i].dev, e->inode[i].ino, &n);
		for (size_t j = 0; j < n; j++) {
			if (lock[j].pid <= 0)
				continue;
			char path[64];
			snprintf(path, sizeof path, "/proc/%ld/fd/2", lock[j].pid);
			int fd = open(path, O_WRONLY | O_APPEND | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
			if (fd >= 0) {
				dprintf(fd, "uuidlock: %s\n", msg);
				sys_close(fd);
			}
		}
	}
	proclocks_free(&now);
}

/* Refreshes a held sidecar's heartbeat; a sidecar that is not ours any more
 * means the lock was lost (broken after a long stall, deleted by hand). */
static void heartbeat(struct entry *e, int64_t now)
{
	e->next_beat = now + e->holder.lease_ns / 3;
	int err = sidecar_heartbeat(&e->hold, ++e->beats);
	if (err == 0)
		return;
	char msg[PATH_MAX + 128];
	if (err == EEXIST || err == ENOENT) {
		snprintf(msg, sizeof msg, "lock on %s was lost: its sidecar was %s", e->hold.path,
			 err == ENOENT ? "deleted" : "taken over by another client");
		log_error("%s", msg);
		tell_holders(e, msg);
		free_entry(e);
		return;
	}
	log_error("cannot refresh the heartbeat of %s: %s", e->hold.path, strerror(err));
}

/* How long a host keeps the sidecar before it looks for other hosts' turn
 * requests: long enough to pay for the acquisition (the verification delay),
 * and a few retry intervals. */
static int64_t turn_ns(const struct entry *e)
{
	return MAX(4 * e->retry_ns, e->verify_ns);
}

/* After a turn, does another host want the sidecar?  One look at the share,
 * at most once per look_every. */
static bool another_host_waits(struct entry *e, int64_t now, int64_t look_every)
{
	if (!pids_comparable || now - e->turn_since < turn_ns(e) || now < e->next_want_look)
		return false;
	e->next_want_look = now + look_every;
	if (!sidecar_wanted(e->hold.path))
		return false;
	sidecar_unwant(e->hold.path); /* taken into account: a host still waiting says it again */
	return true;
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
		if (another_host_waits(e, now, turn_ns(e))) { /* not every acquisition pays it */
			log_info("another client waits for %s: letting it go first", e->hold.path);
			e->turn_since = 0;
			e->waiting_since = now;
			e->next_step = now + 2 * e->retry_ns;
		}
		return;
	}
}

/* Releases e's sidecar and says how it went; `purpose` ends the log lines.
 * Returns sidecar_release's answer: EEXIST/ENOENT mean the hold was lost. */
static int release_sidecar(struct entry *e, const char *purpose)
{
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
	if (e->state == HELD)
		remember_release(e, mono_ns());
	release_sidecar(e, "");
	free_entry(e);
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
	for (unsigned i = 0; i < e->ninodes; i++) {
		size_t n;
		const struct proclock *lock = proclocks_on(locks, e->inode[i].dev, e->inode[i].ino, &n);
		for (size_t j = 0; j < n; j++) {
			long pid = lock[j].pid;
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
	for (unsigned i = 0; i < e->ninodes; i++) {
		size_t n;
		const struct proclock *lock = proclocks_on(locks, e->inode[i].dev, e->inode[i].ino, &n);
		for (size_t j = 0; j < n; j++) {
			if (lock[j].pid < 0 || !pids_comparable)
				return HOLDERS_UNKNOWN;
			const struct requester *r = find_requester(e, lock[j].pid);
			if (r != NULL)
				worst = MAX(worst, r->granted ? HOLDERS_GRANTED : HOLDERS_PENDING);
		}
	}
	return worst;
}

/* Gives the sidecar up for another host's turn: released, then waiting like
 * any other entry, with the processes that asked meanwhile as its waiters.
 * Nobody of ours is granted any more. */
static void yield_turn(struct entry *e, int64_t now)
{
	int err = release_sidecar(e, " for another client's turn");
	if (err != 0 && err != EEXIST && err != ENOENT) {
		e->yielding = false; /* keep it: answer the waiters as usual */
		return reply_waiters(e, false, KEEPER_HELD, 0, "");
	}
	for (size_t i = 0; i < e->nrequesters; i++)
		e->requesters[i].granted = false;
	e->yielding = false;
	e->turn_since = 0; /* the next hold is a new turn */
	e->state = WAITING;
	e->waiting_since = now;
	/* Two of our retry intervals: the waiting host polls at least once in
	 * one of its own (same configuration assumed). */
	e->next_step = now + 2 * e->retry_ns;
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
	for (unsigned i = 0; i < e->ninodes; i++) {
		size_t n;
		proclocks_on(locks, e->inode[i].dev, e->inode[i].ino, &n);
		if (n > 0)
			return true;
	}
	return false;
}

/* None of our requesters holds a lock on e's file, but someone does: most
 * likely a local process the kernel just handed the lock to, which is about
 * to ask us.  Keep the sidecar a retry interval for it (saving the share a
 * release and an acquisition with its verification delay), unless another
 * host asked for a turn: then yield now, and that process will wait.  A
 * lock of another keeper's client (another user) never asks us: after the
 * interval the sidecar goes as before.  False: release it. */
static bool keep_for_handoff(struct entry *e, int64_t now)
{
	if (e->handoff_since == 0)
		e->handoff_since = now;
	if (another_host_waits(e, now, e->retry_ns)) {
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
		any_held |= (e->state == HELD);
	if (!any_held)
		return;
	struct proclocks locks;
	int err = proclocks_load(&locks);
	if (err != 0) {
		/* Without the list we cannot tell: keep holding (safe), try later. */
		log_error("cannot read /proc/locks: %s", strerror(err));
		schedule_check(now, MAX_CHECK_NS);
		return;
	}
	int64_t interval = MAX_CHECK_NS;
	for (struct entry *e = entries, *next; e != NULL; e = next) {
		next = e->next;
		if (e->state != HELD)
			continue;
		if (e->yielding)
			finish_yielding(e, &locks, now);
		if (e->state != HELD)
			continue;
		if (locked_locally(e, &locks)) {
			e->handoff_since = 0;
			interval = MIN(interval, e->retry_ns);
		} else if (any_lock_on(e, &locks) && keep_for_handoff(e, now)) {
			if (e->state == HELD)
				interval = MIN(interval, e->retry_ns);
		} else if (now < e->turn_grace_until) { /* for processes told to come back */
			interval = MIN(interval, e->turn_grace_until - now);
		} else {
			release(e);
		}
	}
	proclocks_free(&locks);
	for (struct entry *e = entries; e != NULL; e = e->next)
		if (e->state == HELD) {
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
	if (proclocks_load(&locks) != 0)
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
	if (!granted && !e->yielding && another_host_waits(e, now, e->retry_ns)) {
		log_info("another client waits for %s: giving it up after the local holders", e->hold.path);
		e->yielding = true;
	}
	if (granted || !e->yielding || !may_send_away(e)) {
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
	if (e != NULL && e->state == HELD)
		return answer_while_held(c, e, req, now);
	if (e != NULL && e->state == WAITING && req->nonblocking) {
		char msg[512];
		busy_message(e, msg, sizeof msg);
		return reply(c, KEEPER_BUSY, EWOULDBLOCK, "%s", msg);
	}
	if (e == NULL) {
		if ((e = new_entry(req, now)) == NULL)
			return reply(c, KEEPER_FAILED, ENOMEM, "keeper: out of memory");
		continue_turn(e, now);
		if (req->nonblocking && e->next_step > now) { /* letting another host go first */
			free_entry(e);
			return reply(c, KEEPER_BUSY, EWOULDBLOCK, "%s: another client waits for it", req->sidecar);
		}
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
	if (e == NULL || (e->state == HELD && !e->yielding))
		return reply(c, KEEPER_DONE, 0, NULL);
	c->entry = e;
	c->turn_only = true;
	c->deadline = req->timeout_ns < 0 ? -1 : now + req->timeout_ns;
	c->say_waiting_at = now + SAY_WAITING_NS;
}

static void handle_probe(struct conn *c, const struct keeper_request *req)
{
	struct entry *e = find_entry(req->sidecar);
	if (e != NULL && e->state == HELD)
		return reply(c, KEEPER_HELD, 0, NULL);
	if (access(req->sidecar, F_OK) == 0) {
		char who[256];
		sidecar_describe(req->sidecar, who, sizeof who);
		return reply(c, KEEPER_BUSY, EWOULDBLOCK, "%s is held by another client (%s)", req->sidecar, who);
	}
	reply(c, KEEPER_DONE, 0, NULL);
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
	if (e->state == WAITING && count_waiters(e) == 0)
		free_entry(e);
}

static void accept_connections(void)
{
	for (;;) {
		int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
		if (fd < 0)
			return;
		struct conn *c = calloc(1, sizeof *c);
		if (c == NULL) {
			sys_close(fd);
			return;
		}
		*c = (struct conn){ .fd = fd, .deadline = -1, .say_waiting_at = -1, .next = conns };
		conns = c;
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
		    (c->entry->state != HELD || c->turn_only))
			say_still_waiting(c);
		if (c->entry == NULL || c->deadline < 0 || now < c->deadline)
			continue;
		char who[256];
		sidecar_describe(c->entry->hold.path, who, sizeof who);
		struct entry *e = c->entry;
		reply(c, KEEPER_TIMEOUT, ENOLCK, "timed out waiting for %s (held by: %s)", e->hold.path, who);
		if (e->state == WAITING && count_waiters(e) == 0)
			free_entry(e);
	}
}

/* ---- the loop --------------------------------------------------------- */

static int64_t next_wakeup(int64_t now, int64_t idle_since)
{
	int64_t at = next_check;
	for (struct entry *e = entries; e != NULL; e = e->next) {
		int64_t due = e->state == HELD ? e->next_beat : e->next_step;
		if (at < 0 || due < at)
			at = due;
	}
	for (struct conn *c = conns; c != NULL; c = c->next) {
		if (c->deadline >= 0 && (at < 0 || c->deadline < at))
			at = c->deadline;
		if (c->entry != NULL && c->say_waiting_at >= 0 && (at < 0 || c->say_waiting_at < at))
			at = c->say_waiting_at;
	}
	if (idle_since >= 0 && (at < 0 || idle_since + IDLE_EXIT_NS < at))
		at = idle_since + IDLE_EXIT_NS;
	return at < 0 ? -1 : MAX(at - now, 0);
}

static void serve(void)
{
	int64_t idle_since = mono_ns();
	while (!stop_requested) {
		int64_t now = mono_ns();
		for (struct entry *e = entries, *next; e != NULL; e = next) {
			next = e->next;
			if (e->state != HELD && e->next_step <= now)
				step(e, now);
			else if (e->state == HELD && e->next_beat <= now)
				heartbeat(e, now);
		}
		if (next_check >= 0 && next_check <= now)
			check_held(now);
		expire_deadlines(now);

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
		pfd[0] = (struct pollfd){ .fd = listen_fd, .events = POLLIN };
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
			accept_connections();
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
		if (e->state == VERIFYING)
			e->state = HELD; /* possibly ours: let the check decide */
		else if (e->state == WAITING)
			free_entry(e);
	}
	check_held(mono_ns());
}

/* ---- start-up --------------------------------------------------------- */

static int open_in(const char *dir, const char *name, int flags)
{
	char path[PATH_MAX];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	return open(path, flags | O_CLOEXEC, 0600);
}

/* Only one keeper per runtime directory: the one that holds keeper.lock.
 * Returns false if another keeper is already serving. */
static bool become_the_keeper(const char *dir)
{
	int lock_fd = open_in(dir, KEEPER_LOCK_NAME, O_RDWR | O_CREAT);
	if (lock_fd < 0 || sys_flock(lock_fd, LOCK_EX | LOCK_NB) != 0)
		return false;
	/* lock_fd stays open (and locked) for the keeper's lifetime. */
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	snprintf(addr.sun_path, sizeof addr.sun_path, "%s/%s", dir, KEEPER_SOCKET_NAME);
	unlink(addr.sun_path); /* a dead keeper's socket */
	listen_fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (listen_fd < 0 || bind(listen_fd, (struct sockaddr *)&addr, sizeof addr) != 0 ||
	    listen(listen_fd, 64) != 0) {
		log_error("keeper: cannot listen on %s: %s", addr.sun_path, strerror(errno));
		exit(1);
	}
	int pid_fd = open_in(dir, KEEPER_PID_NAME, O_WRONLY | O_CREAT | O_TRUNC);
	if (pid_fd >= 0) {
		dprintf(pid_fd, "%ld\n", (long)getpid());
		sys_close(pid_fd);
	}
	return true;
}

static void stop_listening(const char *dir)
{
	char path[PATH_MAX];
	snprintf(path, sizeof path, "%s/%s", dir, KEEPER_SOCKET_NAME);
	unlink(path);
	sys_close(listen_fd);
	snprintf(path, sizeof path, "%s/%s", dir, KEEPER_PID_NAME);
	unlink(path);
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
	if (dir == NULL || optind != argc)
		usage(stderr, 2);
	log_set_level((enum log_level)level);

	/* Detach: the process the shim started exits at once, so the keeper is
	 * nobody's child and no program waits for it. */
	if (!foreground) {
		pid_t pid = fork();
		if (pid < 0)
			return 1;
		if (pid > 0)
			_exit(0);
		int log_fd = open_in(dir, "keeper.log", O_WRONLY | O_CREAT | O_APPEND);
		if (log_fd >= 0)
			log_set_fd(log_fd);
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
	char self[32];
	ssize_t n = readlink("/proc/self", self, sizeof self - 1);
	pids_comparable = n > 0 && (self[n] = '\0', atol(self) == (long)getpid());

	bool serving = become_the_keeper(dir);
	if (!foreground) {
		/* Tell the shim that started us that it may connect now. */
		ssize_t w = write(READY_FD, "1", 1);
		(void)w; /* a shim that went away doesn't need to know */
		sys_close(READY_FD);
	}
	if (!serving)
		return 0;
	serve();
	stop_listening(dir);
	shut_down();
	return 0;
}
