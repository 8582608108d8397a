#include "mountinfo.h"

#include "sys.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysmacros.h>
#include <unistd.h>

/* mountinfo writes ' ', '\t', '\n' and '\\' in paths as \ooo. */
static void unescape(char *s)
{
	char *out = s;
	for (; *s != '\0'; s++) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0' && s[2] <= '7' && s[3] >= '0' &&
		    s[3] <= '7') {
			*out++ = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0'));
			s += 3;
		} else {
			*out++ = *s;
		}
	}
	*out = '\0';
}

/* "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - TYPE SOURCE SUPEROPTS" */
static bool parse_line(char *line, struct mountinfo_line *m)
{
	char *field[6], *save = NULL, *f;
	int n = 0;
	for (char *s = line; n < 6 && (field[n] = strtok_r(s, " ", &save)) != NULL; s = NULL)
		n++;
	if (n < 6)
		return false;
	while ((f = strtok_r(NULL, " ", &save)) != NULL && strcmp(f, "-") != 0)
		;
	char *type = f == NULL ? NULL : strtok_r(NULL, " ", &save);
	unsigned major, minor;
	if (type == NULL || sscanf(field[2], "%u:%u", &major, &minor) != 2)
		return false;
	unescape(field[4]);
	*m = (struct mountinfo_line){
		.id = atoi(field[0]), .parent = atoi(field[1]), .dev = makedev(major, minor), .mount_point = field[4], .type = type
	};
	return true;
}

bool mountinfo_each(void (*fn)(const struct mountinfo_line *m, void *arg), void *arg)
{
	static char buf[16384];
	int fd = open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	size_t have = 0;
	bool ok = true, skipping = false;
	for (;;) {
		ssize_t got = read(fd, buf + have, sizeof buf - 1 - have);
		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0) {
			ok = got == 0;
			break;
		}
		have += (size_t)got;
		buf[have] = '\0';
		char *line = buf, *nl;
		struct mountinfo_line m;
		while ((nl = strchr(line, '\n')) != NULL) {
			*nl = '\0';
			if (!skipping && parse_line(line, &m))
				fn(&m, arg);
			skipping = false;
			line = nl + 1;
		}
		have = strlen(line);
		memmove(buf, line, have);
		if (have == sizeof buf - 1) { /* a line longer than the buffer: skip it */
			skipping = true;
			have = 0;
		}
	}
	int err = errno;
	sys_close(fd);
	errno = err;
	return ok;
}

/* Reads /proc/PID/cmdline into buf as NUL-separated arguments; their count. */
static int read_cmdline(const char *pid, char *buf, size_t cap, size_t *len)
{
	char path[64];
	snprintf(path, sizeof path, "/proc/%s/cmdline", pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	ssize_t n = read(fd, buf, cap - 1);
	sys_close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	*len = (size_t)n;
	int args = 0;
	for (ssize_t i = 0; i < n; i++)
		args += buf[i] == '\0';
	return args + (buf[n - 1] != '\0');
}

static bool is_sshfs(const char *argv0)
{
	const char *base = strrchr(argv0, '/');
	return strcmp(base ? base + 1 : argv0, "sshfs") == 0;
}

/* Does an -o value of sshfs turn its cache off?  3.x: dir_cache=no; 2.x: cache=no. */
static bool cache_off_in(const char *opts)
{
	char copy[4096], *save = NULL;
	snprintf(copy, sizeof copy, "%s", opts);
	bool off = false;
	for (char *o = strtok_r(copy, ",", &save); o != NULL; o = strtok_r(NULL, ",", &save))
		if (strcmp(o, "dir_cache=no") == 0 || strcmp(o, "cache=no") == 0)
			off = true;
		else if (strcmp(o, "dir_cache=yes") == 0 || strcmp(o, "cache=yes") == 0)
			off = false;
	return off;
}

/* sshfs's arguments: is mount_point among them, and is the cache off? */
static int judge_sshfs(const char *args, size_t len, const char *mount_point)
{
	bool serves = false, off = false;
	for (const char *a = args; a < args + len; a += strlen(a) + 1) {
		if (strcmp(a, mount_point) == 0)
			serves = true;
		if (strcmp(a, "-o") == 0 && a + strlen(a) + 1 < args + len)
			off |= cache_off_in(a + strlen(a) + 1);
		else if (strncmp(a, "-o", 2) == 0)
			off |= cache_off_in(a + 2);
	}
	return !serves ? -1 : off ? 0 : 1;
}

int sshfs_caches(const char *mount_point)
{
	DIR *proc = opendir("/proc");
	if (proc == NULL)
		return -1;
	int verdict = -1;
	static char args[8192];
	struct dirent *d;
	while (verdict < 0 && (d = readdir(proc)) != NULL) {
		size_t len;
		if (d->d_name[0] < '0' || d->d_name[0] > '9' || read_cmdline(d->d_name, args, sizeof args, &len) == 0)
			continue;
		if (is_sshfs(args))
			verdict = judge_sshfs(args, len, mount_point);
	}
	closedir(proc);
	return verdict;
}
