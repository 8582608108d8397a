/* uuidlock: run a program under the shim, see who holds a lock, clear a
 * provably stale one.  The protocol itself is in src/core/sidecar.c. */
#include "../core/client.h"
#include "../core/config.h"
#include "../core/keeper_proto.h"
#include "../core/hostid.h"
#include "../core/log.h"
#include "../core/mountinfo.h"
#include "../core/sidecar.h"
#include "../core/timeutil.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <minmax.h>

#ifndef SHIM_PATH
#error "build with -DSHIM_PATH=\"/absolute/path/libuuidlock_shim.so\""
#endif
#ifndef VERSION
#define VERSION "0.1"
#endif

static void usage(FILE *to)
{
	fprintf(to,
		"usage: uuidlock run [OPTIONS] -- COMMAND [ARGS...]\n"
		"       uuidlock status [--json] [--suffix S] FILE...\n"
		"       uuidlock break [--force] [--lease SECONDS] [--suffix S] FILE...\n"
		"\n"
		"run      runs COMMAND with %s preloaded, so that its file locks\n"
		"         below the managed directories exclude other clients of the share\n"
		"  -p, --paths DIRS         managed directories, colon-separated, or auto\n"
		"      --verify-delay S     seconds between writing and verifying a sidecar\n"
		"      --retry-interval S   seconds between attempts while waiting\n"
		"      --timeout S          longest wait for another client (negative: forever)\n"
		"      --lease S            heartbeat lease\n"
		"      --prefix TEXT        text before the UUID in sidecars\n"
		"      --suffix TEXT        sidecar name = file name + TEXT (default " CONFIG_DEFAULT_SUFFIX ")\n"
		"  -v, --verbose            log acquisitions and releases (twice: debug)\n"
		"status   shows, for each FILE, whether its sidecar exists and who holds it;\n"
		"         exit status 0 if all are free, 1 if any is held\n"
		"break    removes a sidecar whose holder is provably gone: its keeper on this\n"
		"         host is dead, or its heartbeat stood still for a lease (watched now)\n"
		"  -f, --force              also remove a live-looking one (dangerous)\n"
		"\n"
		"Environment: the UUIDLOCK_* variables, see libuuidlock_shim(7).\n",
		SHIM_PATH);
}

static void die(const char *fmt, const char *arg)
{
	fprintf(stderr, "uuidlock: ");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, "\nTry 'uuidlock --help'.\n");
	exit(2);
}

/* ---- run ---------------------------------------------------------------- */

static void set_seconds(const char *var, const char *value)
{
	int64_t ns;
	if (!parse_seconds(value, &ns))
		die("not a number of seconds: %s", value);
	setenv(var, value, 1);
}

/* Do the path and a managed directory share a filesystem?  (One below the other.) */
static bool nested(const char *a, const char *b)
{
	size_t n = strlen(a) < strlen(b) ? strlen(a) : strlen(b);
	return strncmp(a, b, n) == 0 && (a[n] == '\0' || a[n] == '/' || b[n] == '\0' || b[n] == '/' || n == 1);
}

static void warn_if_sshfs_caches(const struct mountinfo_line *m, void *arg)
{
	const struct config *c = arg;
	if (strcmp(m->type, "fuse.sshfs") != 0)
		return;
	for (unsigned i = 0; i < c->ndirs; i++)
		if (nested(m->mount_point, c->dirs[i].path) && sshfs_caches(m->mount_point) == 1) {
			fprintf(stderr, "uuidlock: warning: %s is an sshfs mount with sshfs's own cache on: another "
				"client's changes to a locked file can stay invisible for up to 20 s; mount it with "
				"-o %s\n", m->mount_point, SSHFS_SAFE_OPTIONS);
			return;
		}
}

static int cmd_run(int argc, char **argv)
{
	static const struct option options[] = {
		{ "paths", required_argument, NULL, 'p' },
		{ "verify-delay", required_argument, NULL, 'd' },
		{ "retry-interval", required_argument, NULL, 'r' },
		{ "timeout", required_argument, NULL, 't' },
		{ "lease", required_argument, NULL, 'l' },
		{ "prefix", required_argument, NULL, 'P' },
		{ "suffix", required_argument, NULL, 'S' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int opt, verbose = 0;
	while ((opt = getopt_long(argc, argv, "+p:vh", options, NULL)) != -1) {
		switch (opt) {
		case 'p': setenv("UUIDLOCK_PATHS", optarg, 1); break;
		case 'd': set_seconds("UUIDLOCK_VERIFY_DELAY", optarg); break;
		case 'r': set_seconds("UUIDLOCK_RETRY_INTERVAL", optarg); break;
		case 't': set_seconds("UUIDLOCK_TIMEOUT", optarg); break;
		case 'l': set_seconds("UUIDLOCK_LEASE", optarg); break;
		case 'P': setenv("UUIDLOCK_PREFIX", optarg, 1); break;
		case 'S': setenv("UUIDLOCK_SUFFIX", optarg, 1); break;
		case 'v': verbose++; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind >= argc)
		die("run needs a command%s", "");
	if (verbose > 0)
		setenv("UUIDLOCK_LOG", verbose > 1 ? "debug" : "info", 1);
	if (getenv("UUIDLOCK_PATHS") == NULL)
		fprintf(stderr, "uuidlock: warning: no --paths and no UUIDLOCK_PATHS: nothing is managed\n");
	/* The shim finds a managed directory missing only at the program's first
	 * lock call (resolving it at every start would cost round trips): say so
	 * now, before the program runs. */
	static struct config config;
	config_load(&config);
	config_resolve_dirs(&config);
	if (config.invalid || config.paths_invalid)
		return 2;
	mountinfo_each(warn_if_sshfs_caches, &config);

	/* Ours first, then whatever the caller preloads already. */
	const char *old = getenv("LD_PRELOAD");
	size_t len = strlen(SHIM_PATH) + (old ? strlen(old) + 1 : 0) + 1;
	char *preload = malloc(len);
	if (preload == NULL)
		return 2;
	snprintf(preload, len, "%s%s%s", SHIM_PATH, old && *old ? " " : "", old ? old : "");
	setenv("LD_PRELOAD", preload, 1);
	execvp(argv[optind], argv + optind);
	fprintf(stderr, "uuidlock: cannot run %s: %s\n", argv[optind], strerror(errno));
	return errno == ENOENT ? 127 : 126;
}

/* ---- status and break: what a sidecar says --------------------------------- */

struct look {
	char sidecar[PATH_MAX];
	char head[SIDECAR_HEAD_MAX];
	ssize_t len; /* < 0: -errno */
	struct sidecar_info info;
	const char *liveness; /* "alive", "dead", "unknown" */
	char keeper_says[128]; /* this host's keeper on its hold: "idle for 2.1 s", or "" */
};

/* Asks this host's keeper about its hold on l's sidecar: only it knows
 * whether the hold is in use or idle (a cached hold, see sidecar.c). */
static void ask_keeper(const char *file, struct look *l)
{
	static struct config config;
	static bool loaded;
	if (!loaded) {
		config_load(&config);
		loaded = true;
	}
	struct keeper_request req = { .version = KEEPER_PROTO_VERSION, .op = KEEPER_PROBE, .pid = getpid() };
	char real[PATH_MAX];
	if (realpath(file, real) == NULL ||
	    (size_t)snprintf(req.sidecar, sizeof req.sidecar, "%s%s", real, l->sidecar + strlen(file)) >= sizeof req.sidecar)
		return;
	/* The keeper answers for each share in its own thread: the file's
	 * device says which (as the shim's requests say it). */
	struct stat st;
	if (stat(real, &st) == 0) {
		req.dev = st.st_dev;
		req.ino = st.st_ino;
	}
	struct keeper_reply rep = { 0 };
	if (keeper_call(&config, "", &req, &rep, NULL, NULL) == 0 && rep.status == KEEPER_HELD)
		snprintf(l->keeper_says, sizeof l->keeper_says, "%s", rep.message);
}

static void look_at(const char *file, const char *suffix, struct look *l)
{
	snprintf(l->sidecar, sizeof l->sidecar, "%s%s", file, suffix);
	l->len = sidecar_read_head(l->sidecar, l->head, sizeof l->head);
	memset(&l->info, 0, sizeof l->info);
	l->liveness = "unknown";
	l->keeper_says[0] = '\0';
	if (l->len < 0)
		return;
	sidecar_parse(l->head, (size_t)l->len, &l->info);
	char here[HOST_ID_MAX];
	host_identity(here, sizeof here);
	/* Only the keeper's runtime directory proves it dead (see sidecar.c):
	 * a pid lookup can't tell this host from a clone of it. */
	enum keeper_fate fate = KEEPER_UNKNOWN;
	if (l->info.ours_format && strcmp(l->info.host_id, here) == 0)
		fate = keeper_fate(l->info.keeper_dir, l->info.keeper_id);
	l->liveness = fate == KEEPER_ALIVE ? "alive" : fate == KEEPER_DEAD ? "dead" : "unknown";
	if (strcmp(l->liveness, "alive") == 0)
		ask_keeper(file, l);
}

/* A key=value line of a sidecar we could read, or "". */
static void field(const struct look *l, const char *key, char *out, size_t cap)
{
	if (l->len < 0 || !sidecar_field(l->head, (size_t)l->len, key, out, cap))
		out[0] = '\0';
}

static void json_string(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c < 0x20 || c >= 0x7f)
			printf("\\u%04x", c);
		else
			putchar(c);
	}
	putchar('"');
}

static void print_status(const char *file, const struct look *l, bool json, bool first)
{
	char token[SIDECAR_TOKEN_MAX + 1], host[256], acquired[32], age[32] = "";
	snprintf(token, sizeof token, "%.*s", l->len > 0 ? (int)strcspn(l->head, "\n") : 0, l->head);
	field(l, "host", host, sizeof host);
	field(l, "acquired", acquired, sizeof acquired);
	if (acquired[0] != '\0')
		snprintf(age, sizeof age, "%lld", (long long)time(NULL) - atoll(acquired));
	const char *state = l->len >= 0 ? "held" : l->len == -ENOENT ? "free" : "error";
	if (json) {
		printf("%s{\"file\":", first ? "" : ",");
		json_string(file);
		printf(",\"sidecar\":");
		json_string(l->sidecar);
		printf(",\"state\":\"%s\"", state);
		if (l->len >= 0) {
			printf(",\"format\":\"%s\",\"uuid\":", l->info.half_written ? "half-written"
							       : l->info.ours_format  ? "uuidlock"
										      : "foreign");
			json_string(token);
			if (l->info.ours_format) {
				printf(",\"host\":");
				json_string(host);
				printf(",\"host_id\":");
				json_string(l->info.host_id);
				printf(",\"pid\":%ld,\"keeper_pid\":%ld,\"age_seconds\":%s,\"heartbeat\":%llu",
				       l->info.pid, l->info.keeper_pid, age[0] ? age : "null", l->info.heartbeat);
			}
			printf(",\"holder\":\"%s\"", l->liveness);
			if (l->keeper_says[0] != '\0') {
				printf(",\"keeper\":");
				json_string(l->keeper_says);
			}
		}
		putchar('}');
		return;
	}
	if (l->len == -ENOENT) {
		printf("%s: free\n", file);
	} else if (l->len < 0) {
		printf("%s: cannot read %s: %s\n", file, l->sidecar, strerror((int)-l->len));
	} else if (l->info.half_written) {
		printf("%s: held, half-written (cut off between create and write), content %s; holder unknown\n",
		       file, token);
	} else if (!l->info.ours_format) {
		printf("%s: held, foreign format (not uuidlock), content %s; holder unknown\n", file, token);
	} else {
		printf("%s: held by host %s (%s) pid %ld, keeper pid %ld, for %ss, heartbeat %llu, uuid %s; holder %s%s%s\n",
		       file, host, l->info.host_id, l->info.pid, l->info.keeper_pid, age[0] ? age : "?",
		       l->info.heartbeat, token, l->liveness, l->keeper_says[0] ? ", " : "", l->keeper_says);
	}
}

static int cmd_status(int argc, char **argv)
{
	static const struct option options[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "suffix", required_argument, NULL, 'S' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *suffix = getenv("UUIDLOCK_SUFFIX") ? getenv("UUIDLOCK_SUFFIX") : CONFIG_DEFAULT_SUFFIX;
	bool json = false;
	int opt;
	while ((opt = getopt_long(argc, argv, "jh", options, NULL)) != -1) {
		switch (opt) {
		case 'j': json = true; break;
		case 'S': suffix = optarg; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind >= argc)
		die("status needs at least one FILE%s", "");
	int status = 0;
	if (json)
		putchar('[');
	for (int i = optind; i < argc; i++) {
		struct look l;
		look_at(argv[i], suffix, &l);
		print_status(argv[i], &l, json, i == optind);
		if (l.len >= 0)
			status = 1;
		else if (l.len != -ENOENT)
			status = 2;
	}
	if (json)
		puts("]");
	return status;
}

/* ---- break -------------------------------------------------------------- */

/* Watches a sidecar for a lease: true if its content never changed.  On a
 * change, l keeps what was read last: a forced break must compare with the
 * content it saw, not with what was there before the watch. */
static bool stands_still(struct look *l, int64_t lease_ns)
{
	fprintf(stderr, "uuidlock: watching %s for %.1f s (its heartbeat must stand still)\n", l->sidecar,
		(double)lease_ns / NS_PER_SEC);
	int64_t until = mono_ns() + lease_ns;
	while (mono_ns() < until) {
		struct timespec tick = { 0, 200 * NS_PER_MS };
		nanosleep(&tick, NULL);
		char now[SIDECAR_HEAD_MAX];
		ssize_t n = sidecar_read_head(l->sidecar, now, sizeof now);
		if (n != l->len || memcmp(now, l->head, (size_t)n) != 0) {
			if (n >= 0)
				memcpy(l->head, now, (size_t)n + 1);
			l->len = n;
			return false;
		}
	}
	return true;
}

/* Re-reads l's sidecar: true if it still has the first line judged (the
 * same holder), and then l has its current content. */
static bool same_holder_now(struct look *l)
{
	char now[SIDECAR_HEAD_MAX];
	ssize_t n = sidecar_read_head(l->sidecar, now, sizeof now);
	size_t first = strcspn(l->head, "\n");
	if (n < (ssize_t)first || strcspn(now, "\n") != first || memcmp(now, l->head, first) != 0)
		return false;
	memcpy(l->head, now, (size_t)n + 1);
	l->len = n;
	return true;
}

/* Why l's sidecar may be broken, or NULL.  A half-written one (ours, cut
 * off before its heartbeat) is watched like a holder whose heart stopped. */
static const char *provably_stale(struct look *l, int64_t lease_ns)
{
	if (strcmp(l->liveness, "dead") == 0)
		return "its keeper on this host is gone";
	if (strcmp(l->liveness, "unknown") != 0)
		return NULL;
	bool watchable = l->info.half_written || (l->info.ours_format && l->info.has_heartbeat);
	if (!watchable || !stands_still(l, MAX(lease_ns, l->info.lease_ns)))
		return NULL;
	return l->info.half_written ? "it is half-written and stood still for a lease"
				    : "its heartbeat stood still for a lease";
}

static int break_one(const char *file, const char *suffix, bool force, int64_t lease_ns)
{
	struct look l;
	look_at(file, suffix, &l);
	if (l.len == -ENOENT) {
		printf("%s: free, nothing to break\n", file);
		return 0;
	}
	if (l.len < 0) {
		fprintf(stderr, "uuidlock: cannot read %s: %s\n", l.sidecar, strerror((int)-l.len));
		return 2;
	}
	const char *why = provably_stale(&l, lease_ns);
	if (l.len == -ENOENT) { /* released while we watched */
		printf("%s: free now, nothing to break\n", file);
		return 0;
	}
	if (l.len < 0) {
		fprintf(stderr, "uuidlock: cannot read %s: %s\n", l.sidecar, strerror((int)-l.len));
		return 2;
	}
	if (why == NULL && !force) {
		fprintf(stderr, "uuidlock: refusing to break %s: the holder %s (use --force if you are sure)\n",
			l.sidecar,
			strcmp(l.liveness, "alive") == 0 ? "is alive on this host"
			: l.info.ours_format || l.info.half_written ? "is alive (its sidecar changed)"
								    : "is unknown (foreign format)");
		return 1;
	}
	if (why == NULL) {
		fprintf(stderr, "uuidlock: warning: breaking %s although its holder may be alive\n", l.sidecar);
		why = "forced";
	}
	struct sidecar_hold guard;
	sidecar_new_token(&guard, "break-");
	struct sidecar_holder me = { .keeper_pid = getpid(), .keeper_start = process_start_time(0),
				     .pid = getpid(), .lease_ns = lease_ns };
	host_identity(me.host_id, sizeof me.host_id);
	int err = sidecar_break(l.sidecar, l.head, (size_t)l.len, &guard, &me, 2 * NS_PER_SEC);
	/* Forced: a live holder's heartbeat may move between our read and the
	 * break's; break it still, but never a new holder (another token). */
	for (int again = 0; force && err == EAGAIN && again < 3 && same_holder_now(&l); again++)
		err = sidecar_break(l.sidecar, l.head, (size_t)l.len, &guard, &me, 2 * NS_PER_SEC);
	if (err != 0) {
		fprintf(stderr, "uuidlock: did not break %s: %s\n", l.sidecar,
			err == EAGAIN || err == ECANCELED ? "it changed meanwhile"
			: err == ENOTRECOVERABLE ? "it changed meanwhile, and could not be put back"
			: err == EBUSY     ? "someone else is breaking it"
			: err == ETIMEDOUT ? "the share answered too slowly for a safe break"
					   : strerror(err));
		return 1;
	}
	printf("%s: broke %s (%s)\n", file, l.sidecar, why);
	return 0;
}

/* As the shim allows it: "now + lease" must not overflow. */
static bool lease_in_range(const char *text, int64_t *ns)
{
	return parse_seconds(text, ns) && *ns > 0 && *ns <= CONFIG_LEASE_SECONDS_MAX * NS_PER_SEC;
}

static int cmd_break(int argc, char **argv)
{
	static const struct option options[] = {
		{ "force", no_argument, NULL, 'f' },
		{ "lease", required_argument, NULL, 'l' },
		{ "suffix", required_argument, NULL, 'S' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *suffix = getenv("UUIDLOCK_SUFFIX") ? getenv("UUIDLOCK_SUFFIX") : CONFIG_DEFAULT_SUFFIX;
	int64_t lease_ns = 30 * NS_PER_SEC;
	if (getenv("UUIDLOCK_LEASE") != NULL && !lease_in_range(getenv("UUIDLOCK_LEASE"), &lease_ns))
		die("UUIDLOCK_LEASE is not a lease in seconds (more than 0, at most a week): %s",
		    getenv("UUIDLOCK_LEASE"));
	bool force = false;
	int opt;
	while ((opt = getopt_long(argc, argv, "fh", options, NULL)) != -1) {
		switch (opt) {
		case 'f': force = true; break;
		case 'l':
			if (!lease_in_range(optarg, &lease_ns))
				die("not a lease in seconds (more than 0, at most a week): %s", optarg);
			break;
		case 'S': suffix = optarg; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind >= argc)
		die("break needs at least one FILE%s", "");
	int status = 0;
	for (int i = optind; i < argc; i++) {
		int one = break_one(argv[i], suffix, force, lease_ns); /* once: MAX is a macro */
		status = MAX(status, one);
	}
	return status;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	const char *cmd = argv[1];
	if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0) {
		usage(stdout);
		return 0;
	}
	if (strcmp(cmd, "--version") == 0) {
		printf("uuidlock %s\n", VERSION);
		return 0;
	}
	if (strcmp(cmd, "run") == 0)
		return cmd_run(argc - 1, argv + 1);
	if (strcmp(cmd, "status") == 0)
		return cmd_status(argc - 1, argv + 1);
	if (strcmp(cmd, "break") == 0)
		return cmd_break(argc - 1, argv + 1);
	die("unknown command '%s': use run, status or break", cmd);
}
