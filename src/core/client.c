#include "client.h"

#include "log.h"
#include "sys.h"
#include "timeutil.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#define CONNECT_PATIENCE_NS (5 * NS_PER_SEC)
#define SPAWN_AGAIN_NS (250 * NS_PER_MS)

static int fail(struct keeper_reply *rep, int err, const char *fmt, const char *arg)
{
	snprintf(rep->message, sizeof rep->message, fmt, arg, strerror(err));
	return err;
}

/* The runtime directory holds the keeper's socket: it must be ours alone. */
static int ensure_runtime_dir(const char *dir, struct keeper_reply *rep)
{
	if (mkdir(dir, 0700) != 0 && errno != EEXIST)
		return fail(rep, errno, "cannot create runtime directory %s: %s", dir);
	struct stat st;
	if (lstat(dir, &st) != 0)
		return fail(rep, errno, "cannot use runtime directory %s: %s", dir);
	if (!S_ISDIR(st.st_mode) || st.st_uid != getuid() || (st.st_mode & 077) != 0)
		return fail(rep, EPERM, "runtime directory %s must be a directory of ours with mode 0700: %s", dir);
	return 0;
}

/* The inode of the initial pid namespace, the same on every Linux system
 * (PROC_PID_INIT_INO): its keeper keeps the plain file names. */
#define INITIAL_PID_NS_INO 0xEFFFFFFCULL

int keeper_file(char *out, size_t cap, const char *dir, const char *name)
{
	/* stat, not readlink: right where /proc is another namespace's mount */
	struct stat ns;
	if (stat("/proc/self/ns/pid", &ns) != 0)
		return errno;
	const char *ext = strrchr(name, '.');
	int n;
	if (ns.st_ino == INITIAL_PID_NS_INO || ext == NULL)
		n = snprintf(out, cap, "%s/%s", dir, name);
	else
		n = snprintf(out, cap, "%s/%.*s.%llu%s", dir, (int)(ext - name), name,
			     (unsigned long long)ns.st_ino, ext);
	return n < 0 || (size_t)n >= cap ? ENAMETOOLONG : 0;
}

static int try_connect(const struct sockaddr_un *addr)
{
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (const struct sockaddr *)addr, sizeof *addr) == 0)
		return fd;
	int err = errno;
	sys_close(fd);
	return -err;
}

/* Starts a keeper detached from the caller: new session, no inherited
 * descriptors but a pipe on which it says "ready".  posix_spawn, unlike
 * fork, runs none of the program's atfork handlers. */
static void spawn_keeper(const struct config *c, const char *dir, const char *program)
{
	int ready[2];
	if (pipe2(ready, O_CLOEXEC) != 0)
		return;
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDWR, 0);
	posix_spawn_file_actions_adddup2(&fa, 0, 1);
	posix_spawn_file_actions_adddup2(&fa, 0, 2);
	posix_spawn_file_actions_adddup2(&fa, ready[1], 3);
	posix_spawn_file_actions_addclosefrom_np(&fa, 4);
	posix_spawnattr_init(&attr);
	sigset_t none, all;
	sigemptyset(&none);
	sigfillset(&all);
	posix_spawnattr_setsigmask(&attr, &none);
	posix_spawnattr_setsigdefault(&attr, &all);
	posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);

	char log_level[8];
	snprintf(log_level, sizeof log_level, "%d", c->log_level);
	char *argv[] = { (char *)program, "--runtime-dir", (char *)dir, "--log-level", log_level, NULL };
	/* Only what a sanitizer build needs: the keeper must not inherit LD_PRELOAD. */
	char *envp[4] = { "PATH=/usr/bin:/bin", NULL, NULL, NULL };
	const char *keep[] = { "ASAN_OPTIONS", "UBSAN_OPTIONS" };
	char envbuf[2][512];
	for (unsigned i = 0, n = 1; i < 2; i++)
		if (getenv(keep[i]) != NULL) {
			snprintf(envbuf[i], sizeof envbuf[i], "%s=%s", keep[i], getenv(keep[i]));
			envp[n++] = envbuf[i];
		}

	pid_t pid;
	int err = posix_spawn(&pid, program, &fa, &attr, argv, envp);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&attr);
	sys_close(ready[1]);
	if (err == 0) {
		/* The keeper forks once and its first process exits at once, so that
		 * the running keeper is nobody's child; reap that first process. */
		while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
			;
		char byte;
		while (read(ready[0], &byte, 1) < 0 && errno == EINTR)
			;
	}
	sys_close(ready[0]);
}

/* Connects to the keeper, starting one if none answers.  Another process may
 * be starting one at the same moment: the keeper's own lock file lets only
 * one of them run, so we keep trying to connect for a while. */
static int connect_keeper(const struct config *c, const char *dir, const char *program, bool may_start,
			  struct keeper_reply *rep)
{
	int err = ensure_runtime_dir(dir, rep);
	if (err != 0)
		return -err;
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	err = keeper_file(addr.sun_path, sizeof addr.sun_path, dir, KEEPER_SOCKET_NAME);
	if (err != 0)
		return -fail(rep, err, "cannot name the keeper's socket in %s: %s", dir);

	int64_t give_up = mono_ns() + CONNECT_PATIENCE_NS, next_spawn = 0;
	for (;;) {
		int fd = try_connect(&addr);
		if (fd >= 0)
			return fd;
		if (fd != -ENOENT && fd != -ECONNREFUSED)
			return -fail(rep, -fd, "cannot reach the keeper at %s: %s", addr.sun_path);
		if (!may_start)
			return -ENOENT;
		/* A keeper that is shutting down still holds its lock file, so a new
		 * one may refuse to start: try again now and then. */
		if (mono_ns() >= next_spawn) {
			if (access(program, X_OK) != 0)
				return -fail(rep, errno, "cannot start the keeper %s: %s", program);
			spawn_keeper(c, dir, program);
			next_spawn = mono_ns() + SPAWN_AGAIN_NS;
			continue;
		}
		if (mono_ns() > give_up)
			return -fail(rep, -fd, "the keeper did not start (%s): %s", addr.sun_path);
		struct timespec pause = { 0, 10 * NS_PER_MS };
		nanosleep(&pause, NULL);
	}
}

/* How long past its timeout a request waits for the keeper's answer, and how
 * long a non-blocking one with no timeout waits at all: the keeper answers
 * at the timeout itself (KEEPER_TIMEOUT), or at once, unless the thread of
 * the request's share is stuck on it (a hung share, see shares.c). */
#define ANSWER_GRACE_NS (2 * NS_PER_SEC)
#define NONBLOCKING_PATIENCE_NS (10 * NS_PER_SEC)

static int64_t answer_patience_ns(const struct keeper_request *req)
{
	if (req->timeout_ns >= 0)
		return req->timeout_ns + ANSWER_GRACE_NS;
	return req->nonblocking ? NONBLOCKING_PATIENCE_NS : -1;
}

/* After a signal handler interrupted a bounded wait: would the kernel have
 * restarted the lock call?  Not if some caught signal has a handler without
 * SA_RESTART (we can't tell which one came). */
static bool handler_without_restart(void)
{
	for (int sig = 1; sig < NSIG; sig++) {
		struct sigaction sa;
		if (sigaction(sig, NULL, &sa) != 0)
			continue;
		bool caught = (sa.sa_flags & SA_SIGINFO) || (sa.sa_handler != SIG_DFL && sa.sa_handler != SIG_IGN);
		if (caught && !(sa.sa_flags & SA_RESTART))
			return true;
	}
	return false;
}

/* Waits until the keeper's next packet is there: 0, ETIMEDOUT at `deadline`
 * (-1: none), or EINTR as flock() would fail.
 *
 * Unbounded, this is the recv() itself, blocking: the kernel restarts it
 * after a handler installed with SA_RESTART and fails it with EINTR after one
 * without, exactly as flock().  A bounded wait can't have both: recv() with
 * SO_RCVTIMEO is never restarted, and fails with EINTR even after a stop and
 * SIGCONT with no handler at all (signal(7), "Interruption of system
 * calls"); poll() is never restarted after a handler either, but resumes
 * after a stop.  So poll(), and after its EINTR we restart unless some
 * caught signal's handler lacks SA_RESTART: exact for a program whose
 * handlers agree, and otherwise an EINTR it must expect from its lock calls
 * anyway. */
static int wait_for_answer(int fd, int64_t deadline)
{
	if (deadline < 0)
		return 0;
	for (;;) {
		int64_t left = deadline - mono_ns();
		if (left <= 0)
			return ETIMEDOUT;
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int n = poll(&p, 1, (int)((left + NS_PER_MS - 1) / NS_PER_MS));
		if (n > 0)
			return 0;
		if (n < 0 && errno == EINTR && handler_without_restart())
			return EINTR;
	}
}

/* One packet from the keeper: a reply, and after a HELD one its grant and
 * maybe a descriptor (SCM_RIGHTS).  Returns the reply's length (0 for
 * none), or -1 with errno. */
static ssize_t receive_answer(int fd, struct keeper_reply *rep, struct keeper_grant *grant, int *table_fd)
{
	struct keeper_held_packet packet;
	struct iovec iov = { .iov_base = &packet, .iov_len = sizeof packet };
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int))];
	} control;
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
			      .msg_controllen = sizeof control.buf };
	ssize_t n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
	for (struct cmsghdr *cm = n < 0 ? NULL : CMSG_FIRSTHDR(&msg); cm != NULL; cm = CMSG_NXTHDR(&msg, cm))
		if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS &&
		    cm->cmsg_len == CMSG_LEN(sizeof(int))) {
			int got;
			memcpy(&got, CMSG_DATA(cm), sizeof got);
			if (table_fd != NULL && *table_fd < 0)
				*table_fd = got;
			else
				sys_close(got);
		}
	if (n < (ssize_t)sizeof packet.reply)
		return n < 0 ? -1 : 0;
	*rep = packet.reply;
	if (grant != NULL)
		*grant = n == (ssize_t)sizeof packet ? packet.grant : (struct keeper_grant){ 0 };
	return (ssize_t)sizeof *rep;
}

int keeper_call(const struct config *c, const char *keeper_program, const struct keeper_request *req,
		struct keeper_reply *rep, struct keeper_grant *grant, int *table_fd)
{
	char dir[RUNTIME_DIR_MAX];
	config_runtime_dir(c, dir);
	if (table_fd != NULL)
		*table_fd = -1;
	/* A keeper that exits (idle) or dies between our connect and its reply
	 * leaves us an empty read: its state is gone, so asking again is safe. */
	for (int attempt = 0; attempt < 3; attempt++) {
		/* No keeper means nothing held: no need to start one to look. */
		int fd = connect_keeper(c, dir, keeper_program, req->op == KEEPER_ACQUIRE, rep);
		if (fd < 0)
			return -fd;
		if (send(fd, req, sizeof *req, MSG_NOSIGNAL) != (ssize_t)sizeof *req) {
			sys_close(fd);
			continue;
		}
		int64_t patience = answer_patience_ns(req);
		int64_t deadline = patience < 0 ? -1 : mono_ns() + patience;
		ssize_t n = -1;
		int err;
		while ((err = wait_for_answer(fd, deadline)) == 0) {
			n = receive_answer(fd, rep, grant, table_fd);
			if (n != (ssize_t)sizeof *rep || rep->status != KEEPER_WAITING) {
				err = n < 0 ? errno : 0;
				break;
			}
			rep->message[sizeof rep->message - 1] = '\0';
			log_warn("%s", rep->message);
		}
		sys_close(fd); /* before an answer: withdraws the request */
		if (err == ETIMEDOUT) {
			snprintf(rep->message, sizeof rep->message,
				 "the keeper did not answer in %.0f s (the file's share may be hung)",
				 (double)patience / NS_PER_SEC);
			return ENOLCK;
		}
		if (err == EINTR)
			return EINTR;
		if (n == (ssize_t)sizeof *rep) {
			rep->message[sizeof rep->message - 1] = '\0';
			return 0;
		}
	}
	snprintf(rep->message, sizeof rep->message, "the keeper in %s stopped answering", dir);
	return EPIPE;
}
