/* Judging and breaking stale sidecars: what another holder's sidecar has
 * said and for how long (on our monotonic clock), why it may be broken
 * (src/core/sidecar.c has the argument), and breaking it under the guard.
 * Blocks on the share: a read of the sidecar, and the break itself. */
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

void busy_message(const struct entry *e, char *out, size_t cap)
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

/* Did a thread of ours write it (or may it have: see own_token)? */
static bool holds_token(const char *head, size_t len)
{
	size_t first_line = strcspn(head, "\n");
	return first_line < len && owns_token(head, first_line);
}

/* Has pid namespace ns no process left?  Each answer is a scan of every
 * process of the machine: one that found it alive holds for a second. */
static bool pid_namespace_gone(unsigned long long ns)
{
	static _Thread_local unsigned long long alive_ns; /* per share thread */
	static _Thread_local int64_t alive_at;
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
bool break_if_stale(struct entry *e, int64_t now)
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
	if (!own_token(guard.token))
		return false;
	int err = sidecar_break(e->hold.path, head, (size_t)n, &guard, &e->holder, e->verify_ns);
	disown_token(guard.token);
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
