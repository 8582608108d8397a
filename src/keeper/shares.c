/* One thread per share, so that a share that stops answering (a hung sshfs,
 * an NFS server gone) stalls only the locks on it: its thread blocks in a
 * heartbeat or a create, the others go on.  A share is the locked file's
 * device, as /proc/locks names it (req->dev; 0 for a request about no file,
 * which gets a thread of its own like any share).
 *
 * The main thread (loop.c) accepts, reads each request and hands it over
 * here with its connection; the share's thread, started at its first
 * request, runs the loop of loop.c (serve_share) over its own entries and
 * connections, which are thread-local (keeper.h).  The hand-over is a queue
 * under a mutex and an eventfd in the share thread's poll set; the only
 * other things the threads share are the counters below, atomic.
 *
 * Also here: the check a shim asks for after a closefrom or close_range
 * (it names no share, so every share thread runs it; an unlock's or a
 * close's goes to its share's thread alone, see route_request), what the
 * main thread needs to
 * exit -- whether every thread has been idle -- and shutdown; and the
 * tokens of every thread's sidecars (see own_token). */
#include "keeper.h"

#include "../core/log.h"
#include "../core/sys.h"
#include "../core/timeutil.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include <minmax.h>

/* A share thread out of its wait this long is taken for stuck on its share:
 * the checks stop waiting for it (see answer_checks).  No step of a share
 * that answers takes near this long: each is one to four round trips. */
#define STUCK_NS (2 * NS_PER_SEC)

struct handover {
	struct conn *conn;
	struct keeper_request req;
	struct handover *next;
};

struct share {
	uint64_t dev;
	pthread_t thread;
	int wake_fd; /* eventfd: something was handed over, a check asked, or stop */
	pthread_mutex_t lock; /* guards queue and the writes of idle_since */
	struct handover *queue, **queue_end;
	_Atomic uint64_t checks_done;  /* the last check generation it ran */
	_Atomic int64_t busy_since;    /* when it left its wait; -1 while waiting */
	_Atomic int64_t idle_since;    /* -1 while it has entries, connections, a queue */
	struct share *next;
};

/* The main thread's: the list of shares and the checks not answered yet. */
static struct share *shares;
struct pending_check {
	struct conn *conn;
	uint64_t generation;
	struct pending_check *next;
};
static struct pending_check *pending_checks;

static _Atomic uint64_t check_generation; /* the main thread counts the checks asked */
static _Atomic bool stopping;
static int main_wake = -1; /* eventfd: a share thread ran a check or became idle */
static _Thread_local struct share *this_share; /* in a share thread: its own */

static void wake(int fd)
{
	uint64_t one = 1;
	ssize_t w = write(fd, &one, sizeof one);
	(void)w; /* a full counter is awake already */
}

void drain_wakeups(int fd)
{
	uint64_t count;
	ssize_t r = read(fd, &count, sizeof count);
	(void)r; /* nonblocking: nothing there is fine */
}

int shares_init(void)
{
	main_wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	return main_wake < 0 ? errno : 0;
}

int main_wake_fd(void) { return main_wake; }

/* ---- the main thread's side ------------------------------------------ */

static void *share_thread(void *arg)
{
	this_share = arg;
	serve_share();
	return NULL;
}

/* Signals stay blocked in the new thread, as in the main thread outside
 * its ppoll: SIGTERM is the main thread's (see serve). */
static struct share *start_share(uint64_t dev)
{
	struct share *sh = calloc(1, sizeof *sh);
	if (sh == NULL)
		return NULL;
	*sh = (struct share){ .dev = dev, .queue_end = &sh->queue, .busy_since = -1,
			      .idle_since = mono_ns(), .checks_done = check_generation };
	sh->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	int err = sh->wake_fd < 0 ? errno : pthread_mutex_init(&sh->lock, NULL);
	if (err == 0 && (err = pthread_create(&sh->thread, NULL, share_thread, sh)) != 0)
		pthread_mutex_destroy(&sh->lock);
	if (err != 0) {
		log_error("keeper: cannot start a thread for the share %u:%u: %s", major(dev), minor(dev),
			  strerror(err));
		if (sh->wake_fd >= 0)
			sys_close(sh->wake_fd);
		free(sh);
		return NULL;
	}
	sh->next = shares;
	shares = sh;
	return sh;
}

bool share_started(uint64_t dev)
{
	for (struct share *sh = shares; sh != NULL; sh = sh->next)
		if (sh->dev == dev)
			return true;
	return false;
}

static struct share *share_of(uint64_t dev)
{
	for (struct share *sh = shares; sh != NULL; sh = sh->next)
		if (sh->dev == dev)
			return sh;
	return start_share(dev);
}

/* c, out of the main thread's list, goes to the thread of its share. */
void hand_over(struct conn *c, const struct keeper_request *req)
{
	struct share *sh = share_of(req->dev);
	struct handover *h = sh == NULL ? NULL : malloc(sizeof *h);
	if (h == NULL)
		return reply(c, KEEPER_FAILED, ENOLCK, "keeper: out of memory or threads");
	h->conn = c;
	h->req = *req;
	h->next = NULL;
	pthread_mutex_lock(&sh->lock);
	*sh->queue_end = h;
	sh->queue_end = &h->next;
	sh->idle_since = -1; /* under the lock: the thread can't call itself idle now */
	pthread_mutex_unlock(&sh->lock);
	wake(sh->wake_fd);
}

/* A shim asks for a check after a lock may have ended, and waits for it so
 * that the lock is free on every host when its call returns; when the
 * request names no share (closefrom), every share thread checks its own
 * entries, and c is answered once they all have (answer_checks). */
void check_every_share(struct conn *c)
{
	struct pending_check *p = malloc(sizeof *p);
	if (p == NULL)
		return reply(c, KEEPER_FAILED, ENOMEM, "keeper: out of memory");
	*p = (struct pending_check){ .conn = c, .generation = ++check_generation, .next = pending_checks };
	pending_checks = p;
	for (struct share *sh = shares; sh != NULL; sh = sh->next)
		wake(sh->wake_fd);
}

static bool stuck(const struct share *sh, int64_t now)
{
	int64_t since = sh->busy_since;
	return since >= 0 && now - since >= STUCK_NS;
}

/* Has every share thread run check generation g, but those stuck on their
 * share?  The check of a stuck share must wait until the share answers
 * again, whoever waits for it: its thread runs it then.  Else *at: when
 * to look again at the latest, if no thread wakes us first. */
static bool checked_everywhere(uint64_t g, int64_t now, int64_t *at)
{
	bool all = true;
	for (struct share *sh = shares; sh != NULL; sh = sh->next) {
		if (sh->checks_done >= g || stuck(sh, now))
			continue;
		all = false;
		int64_t since = sh->busy_since;
		if (since >= 0)
			*at = *at < 0 ? since + STUCK_NS : MIN(*at, since + STUCK_NS);
	}
	return all;
}

/* Answers the checks that are done; returns when to look again (-1: no
 * check waits on a clock, only on a share thread's wake-up). */
int64_t answer_checks(int64_t now)
{
	int64_t at = -1;
	for (struct pending_check **p = &pending_checks, *c; (c = *p) != NULL;) {
		if (!checked_everywhere(c->generation, now, &at)) {
			p = &c->next;
			continue;
		}
		*p = c->next;
		reply(c->conn, KEEPER_DONE, 0, NULL);
		free(c);
	}
	return at;
}

/* Since when the main thread's shares have all had nothing (0: there is
 * none), or -1: some share thread has entries, connections or a queue. */
int64_t shares_quiet_since(void)
{
	int64_t since = pending_checks != NULL ? -1 : 0;
	for (struct share *sh = shares; sh != NULL && since >= 0; sh = sh->next) {
		int64_t idle = sh->idle_since;
		since = idle < 0 ? -1 : MAX(since, idle);
	}
	return since;
}

/* Every share thread shuts down (releases what no local process needs);
 * we wait at most patience_ns for them all.  False if one didn't finish:
 * stuck on its share, whose sidecars then go stale after their lease, as
 * after a crash. */
bool stop_shares(int64_t patience_ns)
{
	stopping = true;
	for (struct share *sh = shares; sh != NULL; sh = sh->next)
		wake(sh->wake_fd);
	for (struct pending_check *c = pending_checks, *next; c != NULL; c = next) {
		next = c->next;
		drop_conn(c->conn);
		free(c);
	}
	pending_checks = NULL;
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until); /* pthread_timedjoin_np's clock */
	int64_t ns = until.tv_nsec + patience_ns;
	until.tv_sec += ns / NS_PER_SEC;
	until.tv_nsec = ns % NS_PER_SEC;
	bool all = true;
	for (struct share *sh = shares; sh != NULL; sh = sh->next)
		if (pthread_timedjoin_np(sh->thread, NULL, &until) != 0) {
			log_warn("keeper: the share %u:%u does not answer: exiting without releasing its "
				 "sidecars (they go stale after their lease)", major(sh->dev), minor(sh->dev));
			all = false;
		}
	return all;
}

/* ---- a share thread's side -------------------------------------------- */

int share_wake_fd(void) { return this_share->wake_fd; }

bool share_stopping(void) { return stopping; }

/* The connections handed over since we last looked become ours. */
void take_handovers(int64_t now)
{
	pthread_mutex_lock(&this_share->lock);
	struct handover *h = this_share->queue;
	this_share->queue = NULL;
	this_share->queue_end = &this_share->queue;
	pthread_mutex_unlock(&this_share->lock);
	for (struct handover *next; h != NULL; h = next) {
		next = h->next;
		struct conn *c = h->conn;
		c->next = conns;
		conns = c;
		if (stopping)
			drop_conn(c);
		else
			handle_request(c, &h->req, now);
		free(h);
	}
}

/* The checks asked since our last one: one check_held serves them all. */
void run_asked_check(int64_t now)
{
	uint64_t g = check_generation;
	if (this_share->checks_done >= g)
		return;
	check_held(now);
	this_share->checks_done = g;
	wake(main_wake);
}

void share_busy(int64_t now)
{
	this_share->busy_since = now;
}

/* Before the wait: tell the main thread whether we have nothing left, so
 * that the keeper can exit when every thread has had nothing for a while. */
void share_waiting(int64_t now)
{
	bool became_idle = false;
	pthread_mutex_lock(&this_share->lock);
	if (entries != NULL || conns != NULL || this_share->queue != NULL)
		this_share->idle_since = -1;
	else if (this_share->idle_since < 0) {
		this_share->idle_since = now;
		became_idle = true;
	}
	pthread_mutex_unlock(&this_share->lock);
	this_share->busy_since = -1;
	if (became_idle)
		wake(main_wake);
}

/* ---- the tokens of this keeper's sidecars ------------------------------ */

/* Two mounts of one share are two devices, so two threads, and two views of
 * one sidecar: a sidecar that names this keeper is a copy (stale.c) only if
 * no thread of ours made it.  So every token an entry (or a breaker's
 * guard) of ours may have written is listed here, from before the create
 * until the entry takes another or is freed. */
static pthread_mutex_t tokens_lock = PTHREAD_MUTEX_INITIALIZER;
static char (*tokens)[SIDECAR_TOKEN_MAX];
static size_t ntokens, tokens_cap;

/* False when out of memory: then nothing of ours may be created with it. */
bool own_token(const char *token)
{
	pthread_mutex_lock(&tokens_lock);
	bool room = ntokens < tokens_cap;
	if (!room) {
		size_t cap = tokens_cap ? 2 * tokens_cap : 16;
		void *grown = realloc(tokens, cap * sizeof *tokens);
		if ((room = grown != NULL)) {
			tokens = grown;
			tokens_cap = cap;
		}
	}
	if (room)
		snprintf(tokens[ntokens++], sizeof *tokens, "%s", token);
	pthread_mutex_unlock(&tokens_lock);
	return room;
}

void disown_token(const char *token)
{
	pthread_mutex_lock(&tokens_lock);
	for (size_t i = 0; i < ntokens; i++)
		if (strcmp(tokens[i], token) == 0) {
			memcpy(tokens[i], tokens[--ntokens], sizeof *tokens);
			break;
		}
	pthread_mutex_unlock(&tokens_lock);
}

/* Is the first line of a sidecar (len bytes) one of our tokens? */
bool owns_token(const char *line, size_t len)
{
	bool found = false;
	pthread_mutex_lock(&tokens_lock);
	for (size_t i = 0; i < ntokens && !found; i++)
		found = strlen(tokens[i]) == len && memcmp(tokens[i], line, len) == 0;
	pthread_mutex_unlock(&tokens_lock);
	return found;
}
