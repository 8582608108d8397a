/* uuidlock: run a program under the shim, see who holds a lock, clear a
 * provably stale one.  The protocol itself is in src/core/sidecar.c. */
#include "../core/config.h"
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
		"      --suffix TEXT        sidecar name = file name + TEXT (default .lock)\n"
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
};

static void look_at(const char *file, const char *suffix, struct look *l)
{
	snprintf(l->sidecar, sizeof l->sidecar, "%s%s", file, suffix);
	l->len = sidecar_read_head(l->sidecar, l->head, sizeof l->head);
	memset(&l->info, 0, sizeof l->info);
	l->liveness = "unknown";
	if (l->len < 0)
		return;
	sidecar_parse(l->head, (size_t)l->len, &l->info);
	char here[HOST_ID_MAX];
	host_identity(here, sizeof here);
	if (l->info.ours_format && strcmp(l->info.host_id, here) == 0)
		l->liveness = process_is((pid_t)l->info.keeper_pid, l->info.keeper_start) ? "alive" : "dead";
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
			printf(",\"format\":\"%s\",\"uuid\":", l->info.ours_format ? "uuidlock" : "foreign");
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
		}
		putchar('}');
		return;
	}
	if (l->len == -ENOENT) {
		printf("%s: free\n", file);
	} else if (l->len < 0) {
		printf("%s: cannot read %s: %s\n", file, l->sidecar, strerror((int)-l->len));
	} else if (!l->info.ours_format) {
		printf("%s: held, foreign format (not uuidlock), content %s; holder unknown\n", file, token);
	} else {
		printf("%s: held by host %s (%s) pid %ld, keeper pid %ld, for %ss, heartbeat %llu, uuid %s; holder %s\n",
		       file, host, l->info.host_id, l->info.pid, l->info.keeper_pid, age[0] ? age : "?",
		       l->info.heartbeat, token, l->liveness);
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
	const char *suffix = getenv("UUIDLOCK_SUFFIX") ? getenv("UUIDLOCK_SUFFIX") : ".lock";
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

/* Watches a sidecar for a lease: true if its content never changed. */
static bool stands_still(const struct look *l, int64_t lease_ns)
{
	fprintf(stderr, "uuidlock: watching %s for %.1f s (its heartbeat must stand still)\n", l->sidecar,
		(double)lease_ns / NS_PER_SEC);
	int64_t until = mono_ns() + lease_ns;
	while (mono_ns() < until) {
		struct timespec tick = { 0, 200 * NS_PER_MS };
		nanosleep(&tick, NULL);
		char now[SIDECAR_HEAD_MAX];
		ssize_t n = sidecar_read_head(l->sidecar, now, sizeof now);
		if (n != l->len || memcmp(now, l->head, (size_t)n) != 0)
			return false;
	}
	return true;
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
	const char *why = NULL;
	if (strcmp(l.liveness, "dead") == 0)
		why = "its keeper on this host is gone";
	else if (strcmp(l.liveness, "unknown") == 0 && l.info.ours_format && l.info.has_heartbeat &&
		 stands_still(&l, MAX(lease_ns, l.info.lease_ns)))
		why = "its heartbeat stood still for a lease";
	if (why == NULL && !force) {
		fprintf(stderr, "uuidlock: refusing to break %s: the holder %s (use --force if you are sure)\n",
			l.sidecar,
			strcmp(l.liveness, "alive") == 0 ? "is alive on this host"
			: l.info.ours_format ? "is alive (its heartbeat moved)"
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
	if (err != 0) {
		fprintf(stderr, "uuidlock: did not break %s: %s\n", l.sidecar,
			err == EAGAIN      ? "it changed meanwhile"
			: err == EBUSY     ? "someone else is breaking it"
			: err == ETIMEDOUT ? "the share answered too slowly for a safe break"
					   : strerror(err));
		return 1;
	}
	printf("%s: broke %s (%s)\n", file, l.sidecar, why);
	return 0;
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
	const char *suffix = getenv("UUIDLOCK_SUFFIX") ? getenv("UUIDLOCK_SUFFIX") : ".lock";
	int64_t lease_ns = 30 * NS_PER_SEC;
	if (getenv("UUIDLOCK_LEASE") != NULL && !parse_seconds(getenv("UUIDLOCK_LEASE"), &lease_ns))
		die("UUIDLOCK_LEASE is not a number of seconds: %s", getenv("UUIDLOCK_LEASE"));
	bool force = false;
	int opt;
	while ((opt = getopt_long(argc, argv, "fh", options, NULL)) != -1) {
		switch (opt) {
		case 'f': force = true; break;
		case 'l':
			if (!parse_seconds(optarg, &lease_ns) || lease_ns <= 0)
				die("not a number of seconds: %s", optarg);
			break;
		case 'S': suffix = optarg; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind >= argc)
		die("break needs at least one FILE%s", "");
	int status = 0;
	for (int i = optind; i < argc; i++)
		status = MAX(status, break_one(argv[i], suffix, force, lease_ns));
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
