/* uuidlock-keeper: holds this host's sidecars on the share.
 *
 * The kernel lock orders the processes of one host; the sidecar orders the
 * hosts.  The keeper's jobs:
 *   - hold: a shim that took a kernel lock asks for F (KEEPER_ACQUIRE); the
 *     keeper answers at once if the host holds F, else it runs the sidecar
 *     protocol and answers when held (entry.c, requests.c);
 *   - heartbeat: every lease/3 for each held sidecar (entry.c);
 *   - watch: when no lock on F is left in /proc/locks (sweep.c) -- checked
 *     every retry interval and at once when a shim reports an unlock or
 *     close (KEEPER_CHECK) -- it releases F's sidecar, or keeps it idle for
 *     a while (idle.c).  So a lock that outlives the process that took it
 *     (`( flock 9; ... ) 9>f`, exec, fork) keeps its sidecar, and one whose
 *     holders all died loses it, without any code running in them;
 *   - break: a sidecar whose holder is provably gone (stale.c);
 *   - turns: hosts take turns when more than one wants F (turns.c);
 *   - vouch: a read-only table tells the processes it granted F whether
 *     their next lock calls on F may skip asking (grants.c, core/grants.h).
 * One keeper per runtime directory (per user) and pid namespace, started on
 * demand by the shim, exits after a while with nothing to hold.
 * One thread per share, and a main thread that touches no share (loop.c,
 * shares.c): the main thread accepts connections, reads their requests and
 * hands each to the thread of its share (the locked file's device); a share
 * thread runs the protocol for that share's sidecars.  The steps that block
 * are share operations (a create, a read, an unlink: one to four round
 * trips each) and reads of /proc, so a share that stops answering stalls
 * only the locks on it.  Each thread is poll()-driven: waiting is done with
 * timers, never with sleep.  This file: start-up, the runtime directory's
 * files, and shutdown. */
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

struct sidecar_holder me; /* host identity and keeper pid, for every sidecar */
/* False when /proc belongs to another pid namespace than ours: its pids
 * can't be compared with our clients', so any lock on a file counts. */
bool pids_comparable;
/* Idle holds are kept only where the keeper can outlive its clients: one
 * in a pid namespace other than the initial one (a container) is killed,
 * without a chance to release, the moment the namespace's init exits, and
 * an idle hold there would cost every other host a lease. */
bool may_linger;
/* False when /proc is not the initial pid namespace's: its /proc/locks then
 * leaves out locks whose owner pid it can't name (a flock whose taker
 * exited), and a held file with no line must be looked for in fdinfo. */
bool proc_lists_every_lock;

/* How often we look whether our socket is still where clients look for it. */
#define LISTEN_CHECK_NS (2 * NS_PER_SEC)
#define MAX_CONNS 16384 /* the poll set lives on the stack */
/* Descriptors kept free of connections: the share, /proc and the log need
 * some while connections take the rest. */
#define RESERVED_FDS 32
#define READY_FD 3

/* How long the keeper waits at exit for its share threads to release. */
#define SHUTDOWN_PATIENCE_NS (5 * NS_PER_SEC)

/* On SIGTERM or idle exit, in each share thread for its own entries:
 * release what no local process holds; a sidecar still backing a live
 * local lock stays (the lock is real), for a later keeper to manage. */
void shut_down_share(void)
{
	for (struct conn *c = conns, *next; c != NULL; c = next) {
		next = c->next;
		drop_conn(c);
	}
	for (struct entry *e = entries, *next; e != NULL; e = next) {
		next = e->next;
		if (e->state == VERIFYING || e->state == YIELDING)
			e->state = HELD; /* possibly ours: let the check decide */
		else if (e->state == IDLE)
			release(e);
		else if (!holds_sidecar(e))
			free_entry(e);
		else
			e->linger_ns = 0; /* the check releases what no local lock needs */
	}
	check_held(mono_ns());
}

/* ---- start-up --------------------------------------------------------- */

static bool in_initial_pid_namespace(const char *ns_link)
{
	struct stat ns;
	return stat(ns_link, &ns) == 0 && ns.st_ino == PROC_PID_INIT_INO;
}

/* Is /proc the initial pid namespace's?  Then it names every pid.  A
 * process /proc shows is a member of its namespace or of one below it, so
 * one in the initial namespace proves it: we, if /proc names us as we are;
 * else its pid 1 (a member of its own namespace, often not ours to look
 * at), or pid 2 (the kernel's kthreadd, in the initial one). */
static bool proc_is_initial_pid_namespace(void)
{
	if (pids_comparable)
		return in_initial_pid_namespace("/proc/self/ns/pid");
	return in_initial_pid_namespace("/proc/1/ns/pid") || in_initial_pid_namespace("/proc/2/ns/pid");
}

/* Our files in the runtime directory (see keeper_file: named for our pid
 * namespace), and the identity of those we made.  The directory can be
 * removed under us (a /tmp cleaner, a logout) and get a new keeper, whose
 * files have the same names: we never unlink one that isn't ours.  Each
 * identity is compared only while something of ours keeps that inode alive
 * (an open descriptor, the bound socket): a freed inode's number is reused. */
static const char *runtime_dir;
static char lock_path[PATH_MAX], socket_path[PATH_MAX], pid_path[PATH_MAX], log_path[PATH_MAX];
static int lock_fd = -1; /* open and flock'ed while we are the keeper */
static int pid_fd = -1;  /* the pid file we wrote, kept open */
struct file_id {
	dev_t dev;
	ino_t ino;
};
static struct file_id socket_id; /* while listen_fd is open */

static struct file_id file_id_of(const char *path)
{
	struct stat st;
	if (lstat(path, &st) != 0)
		return (struct file_id){ 0, 0 };
	return (struct file_id){ st.st_dev, st.st_ino };
}

static bool file_is(const char *path, struct file_id id)
{
	struct file_id now = file_id_of(path);
	return id.ino != 0 && now.dev == id.dev && now.ino == id.ino;
}

static bool file_is_open_as(const char *path, int fd)
{
	struct stat st;
	return fd >= 0 && fstat(fd, &st) == 0 && file_is(path, (struct file_id){ st.st_dev, st.st_ino });
}

/* Between the look and the unlink another keeper could bind the name; it
 * can only once our lock file is gone, and then it rebinds within a look. */
static void unlink_if_ours(const char *path, struct file_id id)
{
	if (file_is(path, id))
		unlink(path);
}

static void unlink_pid_file_if_ours(void)
{
	if (file_is_open_as(pid_path, pid_fd))
		unlink(pid_path);
}

/* Do we hold the lock file that is at lock_path now?  Takes it if free. */
static bool hold_lock_file(void)
{
	if (lock_fd >= 0) {
		if (file_is_open_as(lock_path, lock_fd))
			return true;
		sys_close(lock_fd); /* removed or replaced: it decides nothing any more */
		lock_fd = -1;
	}
	mkdir(runtime_dir, 0700); /* removed with everything in it */
	struct stat dir;
	if (lstat(runtime_dir, &dir) != 0 || !S_ISDIR(dir.st_mode) || dir.st_uid != getuid() ||
	    (dir.st_mode & 077) != 0)
		return false; /* no client would trust it: see ensure_runtime_dir */
	int fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0 || sys_flock(fd, LOCK_EX | LOCK_NB) != 0) {
		if (fd >= 0)
			sys_close(fd);
		return false;
	}
	lock_fd = fd;
	return true;
}

static void write_pid_file(void)
{
	if (pid_fd >= 0)
		sys_close(pid_fd);
	pid_fd = open(pid_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (pid_fd >= 0)
		dprintf(pid_fd, "%ld\n", (long)getpid());
}

/* Only one keeper per runtime directory (and pid namespace): the one that
 * holds the lock file.  Returns false if another keeper is already serving
 * (or we cannot listen). */
static bool become_the_keeper(void)
{
	if (!hold_lock_file())
		return false;
	/* The pid file first: whoever reaches the socket can read who we are. */
	write_pid_file();
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	snprintf(addr.sun_path, sizeof addr.sun_path, "%s", socket_path);
	unlink(addr.sun_path); /* a dead keeper's socket: the lock file says none lives */
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(fd, 64) != 0) {
		log_error("keeper: cannot listen on %s: %s", addr.sun_path, strerror(errno));
		if (fd >= 0)
			sys_close(fd);
		unlink_pid_file_if_ours();
		return false;
	}
	listen_fd = fd;
	socket_id = file_id_of(socket_path);
	return true;
}

static void stop_listening(void)
{
	if (listen_fd < 0)
		return;
	unlink_if_ours(socket_path, socket_id); /* before the close: see socket_id */
	sys_close(listen_fd);
	listen_fd = -1;
	unlink_pid_file_if_ours();
}

static int log_fd = -1; /* keeper.log, unless --foreground: stderr */

/* A reopened log takes the old one's descriptor number (dup3 replaces it
 * atomically): a share thread logging meanwhile never writes to a closed
 * descriptor, or to one reused for a sidecar. */
static void open_log_file(void)
{
	int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (fd < 0)
		return;
	if (log_fd >= 0) {
		dup3(fd, log_fd, O_CLOEXEC);
		sys_close(fd);
		return;
	}
	log_set_fd(fd);
	log_fd = fd;
}

/* Clients find us by our socket's name.  If it is gone or another's, we
 * can't be found: what we hold stays held until released (we still are its
 * holder), and we serve again when we can -- at once if nobody else does
 * (our directory was removed), or once another keeper has exited. */
void keep_listening(int64_t now)
{
	if (now < next_listen_check)
		return;
	next_listen_check = now + LISTEN_CHECK_NS;
	if (listen_fd >= 0 && file_is(socket_path, socket_id))
		return;
	bool was_listening = listen_fd >= 0;
	if (was_listening) {
		sys_close(listen_fd);
		listen_fd = -1;
	}
	if (become_the_keeper()) {
		if (log_fd >= 0)
			open_log_file(); /* the old one went with the directory */
		log_warn("keeper: %s was removed or replaced: listening there again", socket_path);
	}
	else if (was_listening)
		log_warn("keeper: %s was removed or replaced, and another keeper serves now: "
			 "keeping what we hold until it is released", socket_path);
}

/* We may serve many clients, whatever limit the program that started us
 * had; some descriptors stay free for the share's files and /proc. */
static void raise_fd_limit(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		return;
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
			getrlimit(RLIMIT_NOFILE, &rl);
	}
	max_conns = rl.rlim_cur > RESERVED_FDS + 1 ? MIN(rl.rlim_cur - RESERVED_FDS, MAX_CONNS) : 1;
}

static bool name_our_files(const char *dir)
{
	runtime_dir = dir;
	return keeper_file(lock_path, sizeof lock_path, dir, KEEPER_LOCK_NAME) == 0 &&
	       keeper_file(socket_path, sizeof socket_path, dir, KEEPER_SOCKET_NAME) == 0 &&
	       strlen(socket_path) < sizeof ((struct sockaddr_un *)0)->sun_path &&
	       keeper_file(pid_path, sizeof pid_path, dir, KEEPER_PID_NAME) == 0 &&
	       keeper_file(log_path, sizeof log_path, dir, "keeper.log") == 0;
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
	if (dir == NULL || dir[0] != '/' || optind != argc)
		usage(stderr, 2);
	log_set_level((enum log_level)level);
	/* Not the starting program's working directory: it may be on a share
	 * that someone wants to unmount. */
	if (chdir("/") != 0)
		return 1;
	if (!name_our_files(dir)) {
		log_error("keeper: cannot name its files in %s: %s", dir, strerror(errno ? errno : ENAMETOOLONG));
		return 1;
	}
	raise_fd_limit();

	/* Detach: the process the shim started exits at once, so the keeper is
	 * nobody's child and no program waits for it. */
	if (!foreground) {
		pid_t pid = fork();
		if (pid < 0)
			return 1;
		if (pid > 0)
			_exit(0);
		open_log_file();
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
	keeper_id_new(me.keeper_id);
	snprintf(me.keeper_dir, sizeof me.keeper_dir, "%s", dir);
	char self[32];
	ssize_t n = readlink("/proc/self", self, sizeof self - 1);
	pids_comparable = n > 0 && (self[n] = '\0', atol(self) == (long)getpid());
	may_linger = in_initial_pid_namespace("/proc/self/ns/pid");
	proc_lists_every_lock = proc_is_initial_pid_namespace();

	bool serving = become_the_keeper();
	/* Before any sidecar names us: the record is what proves our death. */
	int err = serving ? keeper_register(dir, me.keeper_id) : 0;
	if (err != 0)
		log_error("keeper: cannot record this keeper in %s/%s: %s (its sidecars will only "
			  "be broken by the lease if it dies)", dir, KEEPER_REGISTRY_NAME, strerror(err));
	if (!foreground) {
		/* Tell the shim that started us that it may connect now. */
		ssize_t w = write(READY_FD, "1", 1);
		(void)w; /* a shim that went away doesn't need to know */
		sys_close(READY_FD);
	}
	if (!serving)
		return 0;
	if ((err = shares_init()) != 0) {
		log_error("keeper: cannot make an eventfd: %s", strerror(err));
		stop_listening();
		return 1;
	}
	if ((err = grants_init()) != 0) /* not fatal: every lock call asks us */
		log_warn("keeper: no grant table (%s): each lock call will ask the keeper", strerror(err));
	next_listen_check = mono_ns() + LISTEN_CHECK_NS;
	serve();
	stop_listening();
	for (struct conn *c = conns, *next; c != NULL; c = next) {
		next = c->next;
		drop_conn(c);
	}
	if (!stop_shares(SHUTDOWN_PATIENCE_NS))
		_exit(0); /* not exit(): nothing may wait for a thread stuck on a share */
	return 0;
}
