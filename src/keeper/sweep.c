/* The sweep of /proc/locks: which local processes hold a lock on a held
 * sidecar's file (one iterator for every question asked of it), the check
 * that releases (or idles) sidecars no local lock needs any more, and
 * telling holders when their lock was lost.  Blocks only on /proc (and, in
 * a container, on the fdinfo of our processes). */
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

_Thread_local int64_t next_check = -1; /* when check_held runs next; -1: not scheduled */

#define MAX_CHECK_NS (NS_PER_SEC)
#define MIN_CHECK_NS (5 * NS_PER_MS)

void schedule_check(int64_t now, int64_t interval)
{
	int64_t at = now + MAX(MIN_CHECK_NS, MIN(MAX_CHECK_NS, interval));
	if (next_check < 0 || at < next_check)
		next_check = at;
}

/* ---- the sweep of /proc/locks ---------------------------------------- */

/* The host's locks now: /proc/locks, and where it can leave locks out (see
 * proclocks_add_unlisted) the held files' locks it left out, from fdinfo.
 * Only a held file with no line at all costs that scan of our processes. */
int load_locks(struct proclocks *locks)
{
	grants_before_looking_at_locks(); /* what we decide from here on, no client may skip */
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
void tell_holders(const struct entry *e, const char *msg)
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

/* Forgets the requesters of e that hold no lock on its file any more (a
 * new lock call asks again), and returns whether a process we serve still
 * holds one.  A FLOCK line names the process that took the lock, which may
 * have exited while its open file description lives on elsewhere
 * (`( flock 9; ... ) 9>f`): it asked us, so it counts.  OFD lines name no
 * process (-1): they always count.  One pass does both: the sweep of
 * /proc/locks is the costly part. */
static bool forget_requesters_without_locks(struct entry *e, const struct proclocks *locks)
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


enum holders classify_holders(const struct entry *e, const struct proclocks *locks)
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

static bool any_lock_on(const struct entry *e, const struct proclocks *locks)
{
	struct sweep s = sweep(e, locks);
	return sweep_next(&s) != NULL;
}

/* Releases every held sidecar whose file no local process has locked. */
void check_held(int64_t now)
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
		bool still_locked = forget_requesters_without_locks(e, &locks);
		if (still_locked) {
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
