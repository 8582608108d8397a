/* tests/latency-relay.c - a delay line between stdin/stdout and a child.
 *
 *   latency-relay RTT_MS CMD [ARG...]
 *
 * Runs CMD with its stdin and stdout on pipes and copies bytes both ways:
 * our stdin -> CMD's stdin, CMD's stdout -> our stdout.  Every chunk read is
 * written out RTT_MS/2 later (fractions allowed), in each direction, so one
 * request + reply costs RTT_MS more: a network round trip on one machine,
 * where the kernel has no `tc netem`.  It is a delay line, not stop-and-wait:
 * chunks in flight overlap, as packets on a wire do; bandwidth is not capped.
 *
 * The test rig uses it as ssh's ProxyCommand in front of `sshd -i`
 * (UUIDLOCK_TEST_LATENCY_MS).  EOF is passed on once the queued data has
 * been delivered; we exit when both directions are done, with CMD's status.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct chunk {
	struct chunk *next;
	long long due_ns;   /* CLOCK_MONOTONIC time it may be written */
	size_t len, off;    /* off: bytes already written */
	char data[];
};

struct dir {            /* one direction: in -> queue -> out */
	int in, out;        /* -1 once closed */
	struct chunk *head, *tail;
};

static long long delay_ns;

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what)
{
	fprintf(stderr, "latency-relay: %s: %s\n", what, strerror(errno));
	exit(1);
}

/* Read what is there into a new chunk, due delay_ns from now; EOF closes in. */
static void pull(struct dir *d)
{
	char buf[65536];
	ssize_t n = read(d->in, buf, sizeof buf);
	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return;
	if (n <= 0) {
		close(d->in);
		d->in = -1;
		return;
	}
	struct chunk *c = malloc(sizeof *c + (size_t)n);
	if (!c)
		die("malloc");
	c->next = NULL;
	c->due_ns = now_ns() + delay_ns;
	c->len = (size_t)n;
	c->off = 0;
	memcpy(c->data, buf, (size_t)n);
	if (d->tail)
		d->tail->next = c;
	else
		d->head = c;
	d->tail = c;
}

/* Write every chunk that is due, until the (non-blocking) pipe is full. */
static void push(struct dir *d)
{
	long long t = now_ns();
	while (d->head && d->out >= 0 && d->head->due_ns <= t) {
		struct chunk *c = d->head;
		ssize_t n = write(d->out, c->data + c->off, c->len - c->off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				return;
			/* Reader gone (EPIPE): nothing more can be delivered. */
			close(d->out);
			d->out = -1;
			break;
		}
		c->off += (size_t)n;
		if (c->off < c->len)
			continue;
		d->head = c->next;
		if (!d->head)
			d->tail = NULL;
		free(c);
	}
	if (d->out < 0) {       /* drop what can no longer be written */
		while (d->head) {
			struct chunk *c = d->head;
			d->head = c->next;
			free(c);
		}
		d->tail = NULL;
	}
	/* Input ended and all delivered: pass the EOF on. */
	if (d->in < 0 && !d->head && d->out >= 0) {
		close(d->out);
		d->out = -1;
	}
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: latency-relay RTT_MS CMD [ARG...]\n");
		return 2;
	}
	char *end;
	double ms = strtod(argv[1], &end);
	if (*end || !(ms >= 0 && ms < 100000)) {
		fprintf(stderr, "latency-relay: bad RTT_MS: %s\n", argv[1]);
		return 2;
	}
	delay_ns = (long long)(ms * 1e6 / 2);   /* half each way */
	signal(SIGPIPE, SIG_IGN);

	int to_child[2], from_child[2];
	if (pipe2(to_child, O_CLOEXEC) || pipe2(from_child, O_CLOEXEC))
		die("pipe");
	pid_t pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		signal(SIGPIPE, SIG_DFL);
		if (dup2(to_child[0], 0) < 0 || dup2(from_child[1], 1) < 0)
			die("dup2");
		execvp(argv[2], argv + 2);
		die(argv[2]);
	}
	close(to_child[0]);
	close(from_child[1]);

	struct dir d[2] = {
		{ .in = 0, .out = to_child[1] },       /* ssh -> CMD */
		{ .in = from_child[0], .out = 1 },     /* CMD -> ssh */
	};
	for (int i = 0; i < 2; i++)
		fcntl(d[i].out, F_SETFL, fcntl(d[i].out, F_GETFL) | O_NONBLOCK);

	while (d[0].out >= 0 || d[1].out >= 0) {
		struct pollfd p[4];
		int np = 0, ix_in[2] = { -1, -1 };
		long long wake = -1, t = now_ns();
		for (int i = 0; i < 2; i++) {
			/* Stop reading a direction whose output is gone. */
			if (d[i].in >= 0 && d[i].out < 0) {
				close(d[i].in);
				d[i].in = -1;
			}
			if (d[i].in >= 0) {
				ix_in[i] = np;
				p[np++] = (struct pollfd){ .fd = d[i].in, .events = POLLIN };
			}
			if (d[i].head && d[i].out >= 0) {
				if (d[i].head->due_ns <= t) {
					/* due but the pipe was full */
					p[np++] = (struct pollfd){ .fd = d[i].out, .events = POLLOUT };
				} else if (wake < 0 || d[i].head->due_ns < wake) {
					wake = d[i].head->due_ns;
				}
			}
		}
		struct timespec ts, *tsp = NULL;
		if (wake >= 0) {
			long long w = wake - t;
			ts.tv_sec = w / 1000000000LL;
			ts.tv_nsec = w % 1000000000LL;
			tsp = &ts;
		}
		if (np == 0 && !tsp)
			break;
		if (ppoll(p, (nfds_t)np, tsp, NULL) < 0 && errno != EINTR)
			die("ppoll");
		for (int i = 0; i < 2; i++)
			if (ix_in[i] >= 0 && p[ix_in[i]].revents)
				pull(&d[i]);
		for (int i = 0; i < 2; i++)
			push(&d[i]);
	}

	int st;
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			return 1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}
