/* Test-only, preloaded into a keeper that a test starts itself: the first
 * unlink() or rename() of a path ending in LATE_OP_SUFFIX (a sidecar, which
 * is what a breaker removes) waits until the file LATE_OP_UNTIL exists, as
 * an operation delayed by retransmissions or a suspended machine would, then
 * happens and creates LATE_OP_MARK.  LATE_OP_MARK.stalled appears when it
 * starts waiting.  Never part of a normal build of the keeper. */
#include <dlfcn.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static bool done;

static bool is_target(const char *path)
{
	const char *suffix = getenv("LATE_OP_SUFFIX");
	size_t n = strlen(path), s = suffix ? strlen(suffix) : 0;
	return !done && s > 0 && n >= s && strcmp(path + n - s, suffix) == 0;
}

static void touch(const char *path, const char *tail)
{
	char name[4096];
	snprintf(name, sizeof name, "%s%s", path, tail);
	int fd = open(name, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	if (fd >= 0)
		close(fd);
}

static void stall(void)
{
	done = true;
	touch(getenv("LATE_OP_MARK"), ".stalled");
	const char *until = getenv("LATE_OP_UNTIL");
	struct timespec tick = { 0, 10 * 1000 * 1000 };
	while (until != NULL && access(until, F_OK) != 0)
		nanosleep(&tick, NULL);
}

int unlink(const char *path)
{
	static int (*real)(const char *);
	if (real == NULL)
		real = (int (*)(const char *))dlsym(RTLD_NEXT, "unlink");
	bool late = is_target(path);
	if (late)
		stall();
	int r = real(path);
	if (late)
		touch(getenv("LATE_OP_MARK"), "");
	return r;
}

int rename(const char *from, const char *to)
{
	static int (*real)(const char *, const char *);
	if (real == NULL)
		real = (int (*)(const char *, const char *))dlsym(RTLD_NEXT, "rename");
	bool late = is_target(from);
	if (late)
		stall();
	int r = real(from, to);
	if (late)
		touch(getenv("LATE_OP_MARK"), "");
	return r;
}
