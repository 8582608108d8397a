/* The event loop, as prepare / wait / handle: advance the entries whose
 * time has come (steps, heartbeats, the check), expire what timed out,
 * then wait in ppoll for a connection, a request or the next deadline.
 * SIGTERM is seen only inside the wait. */
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

/* ---- the loop --------------------------------------------------------- */

int64_t next_listen_check;

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

void serve(void)
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
