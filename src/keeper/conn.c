/* Connections: one request and one reply each (src/core/keeper_proto.h);
 * accepting them and dropping the silent ones (the main thread), replying
 * and withdrawing those that hung up or ran out of time (a share thread,
 * once the main thread has handed the connection over with its request).
 * Nothing here touches the share but the one-line description of a holder
 * in a "still waiting" message. */
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

_Thread_local struct conn *conns;
_Atomic size_t open_conns;
int listen_fd = -1; /* -1: not listening (another keeper took our place) */
size_t max_conns = 1; /* see raise_fd_limit */
int64_t accept_paused_until;

/* Out of descriptors in accept: stop polling the socket this long, rather
 * than being woken for the same pending connection again and again. */
#define ACCEPT_PAUSE_NS (100 * NS_PER_MS)

/* ---- replies ---------------------------------------------------------- */

/* Takes c out of this thread's list (it may be in none: handed over). */
void unlink_conn(struct conn *c)
{
	for (struct conn **p = &conns; *p != NULL; p = &(*p)->next)
		if (*p == c) {
			*p = c->next;
			break;
		}
	c->next = NULL;
}

void drop_conn(struct conn *c)
{
	unlink_conn(c);
	sys_close(c->fd);
	free(c);
	open_conns--;
}

/* Sends r (and after it, for a HELD reply about e, its grant and if the
 * client needs it the grant table), then forgets c.  A peer that went away
 * just misses its answer. */
static void send_reply(struct conn *c, const struct keeper_reply *r, const struct entry *held)
{
	struct keeper_held_packet packet = { .reply = *r };
	struct iovec iov = { .iov_base = &packet, .iov_len = sizeof packet.reply };
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int))];
	} control;
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
	int table_fd = -1;
	if (held != NULL && (packet.grant = grant_of(held)).table != 0) {
		iov.iov_len = sizeof packet;
		table_fd = grant_table_fd_for(c->grant_table);
	}
	if (table_fd >= 0) {
		memset(&control, 0, sizeof control);
		msg.msg_control = control.buf;
		msg.msg_controllen = sizeof control.buf;
		struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(cm), &table_fd, sizeof table_fd);
	}
	sendmsg(c->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
	drop_conn(c);
}

__attribute__((format(printf, 4, 5)))
void reply(struct conn *c, enum keeper_status status, int error, const char *fmt, ...)
{
	struct keeper_reply r = { .status = status, .error = error };
	if (fmt != NULL) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(r.message, sizeof r.message, fmt, ap);
		va_end(ap);
	}
	send_reply(c, &r, NULL);
}

/* Grants e to c's process: HELD, with the grant that lets its next lock
 * calls on the file skip us while we don't look (src/core/grants.h). */
void reply_held(struct conn *c, struct entry *e, int error)
{
	grant(e, c->pid);
	send_reply(c, &(struct keeper_reply){ .status = KEEPER_HELD, .error = error }, e);
}

unsigned count_waiters(const struct entry *e)
{
	unsigned n = 0;
	for (struct conn *c = conns; c != NULL; c = c->next)
		n += (c->entry == e);
	return n;
}

/* Answers every waiter of e (or only the non-blocking ones). */
void reply_waiters(struct entry *e, bool only_nonblocking, enum keeper_status status, int error,
			  const char *message)
{
	for (struct conn *c = conns, *next; c != NULL; c = next) {
		next = c->next;
		if (c->entry != e || (!c->nonblocking && only_nonblocking))
			continue;
		if (status == KEEPER_HELD)
			reply_held(c, e, error);
		else
			reply(c, status, error, "%s", message);
	}
}

/* Nothing may point at a freed entry, so its last waiters are answered now:
 * one waiting for a turn may start its lock call over (a new entry), one
 * still waiting for the sidecar fails.  Callers answer the waiters they
 * have an answer for first; this catches the rest (a turn waiter when a
 * held sidecar is lost). */
void answer_remaining_waiters(struct entry *e)
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

/* The asking process as /proc names it: SO_PEERCRED, which the kernel
 * translates into our pid namespace. */
long peer_pid(int fd)
{
	struct ucred cred;
	socklen_t len = sizeof cred;
	return getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 ? (long)cred.pid : -1;
}

/* A waiter that hangs up (signal, timeout in the shim, death) withdraws. */
void handle_hangup(struct conn *c)
{
	struct entry *e = c->entry;
	drop_conn(c);
	forget_if_unwanted(e, mono_ns());
}

/* Accepts at most `room` connections.  Out of descriptors (or memory),
 * the pending ones wait in the socket's backlog until some close. */
void accept_connections(size_t room, int64_t now)
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
		open_conns++;
	}
}

bool sent_nothing_yet(const struct conn *c)
{
	return c->entry == NULL;
}

/* A request may be waiting unread behind a moment of ours: not idle. */
static bool request_pending(const struct conn *c)
{
	char byte;
	return recv(c->fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT) > 0;
}

void drop_idle_conns(int64_t now)
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

void expire_deadlines(int64_t now)
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
