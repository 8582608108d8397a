/* microbench: one timed loop per run, for bench/run.sh.
 *
 *   microbench flock|setlk|getfl|openclose|dupclose PATH N
 *       N iterations (after N/10 untimed), prints ns per iteration:
 *       flock LOCK_EX+LOCK_UN, fcntl F_SETLK write+unlock, fcntl F_GETFL,
 *       open+close, dup+close.
 *   microbench spawn N PROGRAM PRELOAD
 *       posix_spawn PROGRAM N times and wait for each, LD_PRELOAD=PRELOAD in
 *       the child's environment only ("-": none); prints ns per start.
 *   microbench hold PATH MS
 *       flock LOCK_EX, hold MS milliseconds, unlock; prints the CLOCK_REALTIME
 *       seconds of the acquire and of the release ("A t", "R t").
 *   microbench handoff PATH ROUNDS HOLD_US GOFILE
 *       waits for GOFILE, then ROUNDS times: "W t" (wants), flock EX, "A t",
 *       hold HOLD_US, "R t", unlock, think HOLD_US; t = CLOCK_MONOTONIC ns.
 *   microbench mem DIR N
 *       opens and flocks DIR/m0..m<N-1>, prints "VmRSS_kB Pss_kB".
 */
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static long long now_ns(clockid_t clock)
{
	struct timespec ts;
	clock_gettime(clock, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void sleep_us(long us)
{
	struct timespec ts = { us / 1000000, us % 1000000 * 1000 };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static int call_loop(const char *loop, const char *path, long n)
{
	static const char *const loops[] = { "flock", "setlk", "getfl", "openclose", "dupclose" };
	int kind = 0;
	while (kind < 5 && strcmp(loop, loops[kind]) != 0)
		kind++;
	if (kind == 5) {
		fprintf(stderr, "microbench: unknown loop %s\n", loop);
		return 2;
	}
	int fd = open(path, O_RDWR | O_CREAT, 0644);
	if (fd < 0)
		die(path);
	static const struct flock wr = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
	static const struct flock un = { .l_type = F_UNLCK, .l_whence = SEEK_SET };
	long long start = 0;
	int bad = 0;
	for (long i = -n / 10; i < n; i++) {
		if (i == 0)
			start = now_ns(CLOCK_MONOTONIC);
		switch (kind) {
		case 0: bad |= flock(fd, LOCK_EX) | flock(fd, LOCK_UN); break;
		case 1: bad |= fcntl(fd, F_SETLK, &wr) | fcntl(fd, F_SETLK, &un); break;
		case 2: bad |= fcntl(fd, F_GETFL) < 0; break;
		case 3: { int c = open(path, O_RDONLY); bad |= c < 0 || close(c) != 0; break; }
		default: { int c = dup(fd); bad |= c < 0 || close(c) != 0; break; }
		}
	}
	long long took = now_ns(CLOCK_MONOTONIC) - start;
	if (bad)
		die(loop);
	printf("%.1f\n", (double)took / (double)n);
	return 0;
}

static int spawn_loop(long n, char *program, const char *preload)
{
	size_t count = 0;
	while (environ[count] != NULL)
		count++;
	char **env = calloc(count + 2, sizeof *env), setting[4096];
	size_t k = 0;
	for (size_t i = 0; i < count; i++)
		if (strncmp(environ[i], "LD_PRELOAD=", 11) != 0)
			env[k++] = environ[i];
	if (strcmp(preload, "-") != 0) {
		snprintf(setting, sizeof setting, "LD_PRELOAD=%s", preload);
		env[k++] = setting;
	}
	char *argv[] = { program, NULL };
	long long start = 0;
	for (long i = -n / 10; i < n; i++) {
		if (i == 0)
			start = now_ns(CLOCK_MONOTONIC);
		pid_t pid;
		int status;
		if ((errno = posix_spawn(&pid, program, NULL, NULL, argv, env)) != 0)
			die(program);
		if (waitpid(pid, &status, 0) < 0 || status != 0)
			die("child");
	}
	printf("%.1f\n", (double)(now_ns(CLOCK_MONOTONIC) - start) / (double)n);
	return 0;
}

static int open_locked(const char *path)
{
	int fd = open(path, O_RDWR | O_CREAT, 0644);
	if (fd < 0 || flock(fd, LOCK_EX) != 0)
		die(path);
	return fd;
}

static int hold(const char *path, long ms)
{
	int fd = open_locked(path);
	printf("A %.6f\n", now_ns(CLOCK_REALTIME) / 1e9);
	fflush(stdout);
	sleep_us(ms * 1000);
	printf("R %.6f\n", now_ns(CLOCK_REALTIME) / 1e9);
	fflush(stdout);
	return flock(fd, LOCK_UN) != 0;
}

static int handoff(const char *path, long rounds, long hold_us, const char *go)
{
	int fd = open(path, O_RDWR | O_CREAT, 0644);
	if (fd < 0)
		die(path);
	while (access(go, F_OK) != 0)
		sleep_us(1000);
	for (long i = 0; i < rounds; i++) {
		long long want = now_ns(CLOCK_MONOTONIC);
		if (flock(fd, LOCK_EX) != 0)
			die("flock");
		long long got = now_ns(CLOCK_MONOTONIC);
		sleep_us(hold_us);
		/* Written before the unlock: the next holder's "A" comes later. */
		printf("W %lld\nA %lld\nR %lld\n", want, got, now_ns(CLOCK_MONOTONIC));
		fflush(stdout);
		if (flock(fd, LOCK_UN) != 0)
			die("unlock");
		sleep_us(hold_us);
	}
	return 0;
}

static long status_kb(const char *file, const char *key)
{
	FILE *f = fopen(file, "r");
	char line[256];
	long kb = -1;
	while (f != NULL && fgets(line, sizeof line, f) != NULL)
		if (strncmp(line, key, strlen(key)) == 0)
			kb = atol(line + strlen(key));
	if (f != NULL)
		fclose(f);
	return kb;
}

static int mem(const char *dir, long n)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)n + 64) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	char path[4096];
	for (long i = 0; i < n; i++) {
		snprintf(path, sizeof path, "%s/m%ld", dir, i);
		open_locked(path);
	}
	printf("%ld %ld\n", status_kb("/proc/self/status", "VmRSS:"), status_kb("/proc/self/smaps_rollup", "Pss:"));
	return 0;
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "";
	if (argc == 4 && strcmp(mode, "spawn") != 0 && strcmp(mode, "hold") != 0 && strcmp(mode, "mem") != 0)
		return call_loop(mode, argv[2], atol(argv[3]));
	if (argc == 5 && strcmp(mode, "spawn") == 0)
		return spawn_loop(atol(argv[2]), argv[3], argv[4]);
	if (argc == 4 && strcmp(mode, "hold") == 0)
		return hold(argv[2], atol(argv[3]));
	if (argc == 6 && strcmp(mode, "handoff") == 0)
		return handoff(argv[2], atol(argv[3]), atol(argv[4]), argv[5]);
	if (argc == 4 && strcmp(mode, "mem") == 0)
		return mem(argv[2], atol(argv[3]));
	fprintf(stderr, "usage: see the comment at the top of bench/microbench.c\n");
	return 2;
}
