/* The event loops, each as prepare / wait / handle.
 *
 * The main thread's (serve): accept connections, read each one's request,
 * hand it to the thread of its share (shares.c), answer the checks that
 * name no share when every share thread has run them, drop silent
 * connections, keep our
 * socket, and exit when every thread has been idle a while or at SIGTERM,
 * which is seen only inside its ppoll.  It never touches a share.
 *
 * A share thread's (serve_share): advance the entries whose time has come
 * (steps, heartbeats, the check), expire what timed out, then wait in poll
 * for a hand-over, a hang-up or the next deadline.  The steps block on the
 * share: only this share's locks wait meanwhile. */
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

volatile sig_atomic_t stop_requested;

void on_stop_signal(int sig)
{
	(void)sig;
	stop_requested = 1;
}

#define IDLE_EXIT_NS (30 * NS_PER_SEC)

int64_t next_listen_check;

/* The earlier of two times, where -1 is "never". */
static int64_t earliest(int64_t at, int64_t t)
{
	return t < 0 ? at : at < 0 ? t : MIN(at, t);
}

/* poll's timeout until `at` (-1: none), rounded up, a minute at most. */
static int poll_timeout_ms(int64_t at, int64_t now)
{
	if (at < 0)
		return -1;
	int64_t wait_ns = MAX(at - now, 0);
	return (int)MIN((wait_ns + NS_PER_MS - 1) / NS_PER_MS, 60000);
}

/* ---- a share thread's loop ------------------------------------------- */

static int64_t next_share_wakeup(void)
{
	int64_t at = next_check;
	for (struct entry *e = entries; e != NULL; e = e->next) {
		if (holds_sidecar(e))
			at = earliest(at, e->next_beat);
		if (has_steps(e))
			at = earliest(at, e->next_step);
	}
	for (struct conn *c = conns; c != NULL; c = c->next) {
		at = earliest(at, c->deadline);
		if (c->entry != NULL)
			at = earliest(at, c->say_waiting_at);
	}
	return at;
}

static void advance_entries(int64_t now)
{
	for (struct entry *e = entries, *next; e != NULL; e = next) {
		next = e->next;
		if (holds_sidecar(e) && e->next_beat <= now)
			heartbeat(e, now); /* may free e */
		else if (has_steps(e) && e->next_step <= now)
			step(e, now);
	}
	if (next_check >= 0 && next_check <= now)
		check_held(now);
}

/* Every connection here has its request handled: it waits for an answer,
 * and a hang-up withdraws it.  Signals stay blocked: the main thread's. */
void serve_share(void)
{
	while (!share_stopping()) {
		int64_t now = mono_ns();
		share_busy(now);
		take_handovers(now);
		run_asked_check(now);
		advance_entries(now);
		expire_deadlines(now);

		size_t n = 1;
		for (struct conn *c = conns; c != NULL; c = c->next)
			n++;
		struct pollfd pfd[n];
		struct conn *by_index[n];
		pfd[0] = (struct pollfd){ .fd = share_wake_fd(), .events = POLLIN };
		size_t i = 1;
		for (struct conn *c = conns; c != NULL; c = c->next, i++) {
			pfd[i] = (struct pollfd){ .fd = c->fd, .events = POLLIN };
			by_index[i] = c;
		}
		int timeout_ms = poll_timeout_ms(next_share_wakeup(), now);
		share_waiting(now);
		if (poll(pfd, n, timeout_ms) <= 0)
			continue;
		if (pfd[0].revents & POLLIN)
			drain_wakeups(pfd[0].fd);
		for (i = 1; i < n; i++)
			if (pfd[i].revents != 0)
				handle_hangup(by_index[i]);
	}
	shut_down_share();
}

/* ---- the main thread's loop ------------------------------------------- */

/* Since when the keeper has had nothing to do (-1: it has). */
static int64_t quiet_since(int64_t main_idle_since)
{
	int64_t shares_since = shares_quiet_since();
	if (main_idle_since < 0 || shares_since < 0)
		return -1;
	return MAX(main_idle_since, shares_since);
}

static int64_t next_wakeup(int64_t now, int64_t checks_at, int64_t quiet)
{
	int64_t at = earliest(checks_at, next_listen_check);
	for (struct conn *c = conns; c != NULL; c = c->next)
		at = earliest(at, c->accepted_at + IDLE_CONN_NS);
	if (accept_paused_until > now)
		at = earliest(at, accept_paused_until);
	if (quiet >= 0)
		at = earliest(at, quiet + IDLE_EXIT_NS);
	return at;
}

/* c's request, once it is there, goes to its share's thread.  A check
 * that names its file's device (an unlock, a close) goes to that share's
 * thread alone -- none has nothing to check -- one that doesn't (closefrom)
 * to all of them. */
static void route_request(struct conn *c)
{
	struct keeper_request req;
	if (!read_request(c, &req))
		return;
	unlink_conn(c);
	if (req.op == KEEPER_CHECK && req.dev == 0)
		check_every_share(c);
	else if (req.op == KEEPER_CHECK && !share_started(req.dev))
		reply(c, KEEPER_DONE, 0, NULL);
	else
		hand_over(c, &req);
}

/* A client sends its request right after connecting: by the time we have
 * accepted, it is mostly there, and a wait in ppoll for it would cost a
 * wake-up per lock call. */
static void route_new_connections(size_t room, int64_t now)
{
	struct conn *before = conns;
	accept_connections(room, now);
	for (struct conn *c = conns, *next; c != before; c = next) {
		next = c->next;
		route_request(c);
	}
}

void serve(void)
{
	int64_t idle_since = mono_ns();
	while (!stop_requested) {
		int64_t now = mono_ns();
		int64_t checks_at = answer_checks(now);
		drop_idle_conns(now);
		keep_listening(now);

		if (conns != NULL)
			idle_since = -1;
		else if (idle_since < 0)
			idle_since = now;
		int64_t quiet = quiet_since(idle_since);
		if (listen_fd < 0 && quiet >= 0)
			return; /* another keeper serves now, and we hold nothing */
		if (quiet >= 0 && now - quiet >= IDLE_EXIT_NS)
			return;

		size_t n = 2;
		for (struct conn *c = conns; c != NULL; c = c->next)
			n++;
		struct pollfd pfd[n];
		struct conn *by_index[n];
		/* A negative fd is left out of the poll: not listening, out of
		 * descriptors, or as many connections as we may have. */
		size_t open = open_conns;
		bool may_accept = listen_fd >= 0 && now >= accept_paused_until && open < max_conns;
		pfd[0] = (struct pollfd){ .fd = may_accept ? listen_fd : -1, .events = POLLIN };
		pfd[1] = (struct pollfd){ .fd = main_wake_fd(), .events = POLLIN };
		size_t i = 2;
		for (struct conn *c = conns; c != NULL; c = c->next, i++) {
			pfd[i] = (struct pollfd){ .fd = c->fd, .events = POLLIN };
			by_index[i] = c;
		}
		int timeout_ms = poll_timeout_ms(next_wakeup(now, checks_at, quiet), now);
		struct timespec ts = { timeout_ms / 1000, (long)(timeout_ms % 1000) * NS_PER_MS };
		sigset_t unblocked;
		sigemptyset(&unblocked);
		/* SIGTERM is blocked except inside ppoll, so it can't slip in
		 * between the stop_requested test and the wait. */
		if (ppoll(pfd, n, timeout_ms < 0 ? NULL : &ts, &unblocked) <= 0)
			continue;
		now = mono_ns();
		if (pfd[1].revents & POLLIN)
			drain_wakeups(pfd[1].fd);
		for (i = 2; i < n; i++)
			if (pfd[i].revents != 0)
				route_request(by_index[i]);
		if (pfd[0].revents & POLLIN)
			route_new_connections(max_conns - MIN(open_conns, max_conns), now);
	}
}
