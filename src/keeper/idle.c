/* Idle holds (cached holds; src/core/sidecar.c): a sidecar no local lock
 * needs any more is kept for UUIDLOCK_LINGER, looking for another host's
 * request on a backing-off schedule, and resumed from memory only while
 * our last write to it is recent enough that nobody can have broken it.
 * Blocks on the share: the look for a request, a release, a re-check. */
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

#define IDLE_POLL_MAX_NS (250 * NS_PER_MS) /* an idle hold looks for a recall at least this often */
#define IDLE_HOLDS_MAX 64 /* idle holds kept at most; the least recently used go first */

/* ---- idle holds (cached holds; see sidecar.c) ---------------------------- */

/* How often an idle hold looks for another host's request: every retry
 * interval at first, less often the longer it has been idle, at least
 * every IDLE_POLL_MAX_NS.  One share operation per look. */
static int64_t recall_poll_ns(const struct entry *e, int64_t now)
{
	return MAX(e->retry_ns, MIN((now - e->idle_since) / 4, IDLE_POLL_MAX_NS));
}

void step_idle(struct entry *e, int64_t now)
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
void linger_or_release(struct entry *e, int64_t now)
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
	return boot_ns() < surely_ours_until(e);
}

/* A local process asks for an idle hold: answer from memory only if the
 * hold is still ours (a keeper stopped or suspended for a lease may have
 * been broken meanwhile): after a long gap, check on the share first, and
 * if another host took it, start over. */
void resume_idle_hold(struct entry *e, int64_t now)
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
		wrote_sidecar(e, at);
		e->next_beat = now + e->holder.lease_ns / 3;
	}
	e->state = HELD;
	e->handoff_since = 0;
	schedule_check(now, e->retry_ns);
}
