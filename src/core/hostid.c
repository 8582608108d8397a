#include "hostid.h"

#include "client.h" /* keeper_file */
#include "keeper_proto.h"
#include "sidecar.h" /* sidecar_read_head */
#include "sys.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

void host_identity(char *out, size_t cap)
{
	char boot_id[64];
	if (sidecar_read_head("/proc/sys/kernel/random/boot_id", boot_id, sizeof boot_id) <= 0)
		strcpy(boot_id, "unknown");
	boot_id[strcspn(boot_id, "\n")] = '\0';
	struct stat ns;
	if (stat("/proc/self/ns/pid", &ns) != 0)
		ns.st_ino = 0;
	snprintf(out, cap, "%s/%llu", boot_id, (unsigned long long)ns.st_ino);
}

unsigned long long host_id_other_pid_namespace(const char *theirs, const char *ours)
{
	const char *t = strchr(theirs, '/'), *o = strchr(ours, '/');
	if (t == NULL || o == NULL || t - theirs != o - ours || memcmp(theirs, ours, (size_t)(t - theirs)) != 0)
		return 0; /* another machine, or another boot */
	char *t_end, *o_end;
	unsigned long long t_ns = strtoull(t + 1, &t_end, 10), o_ns = strtoull(o + 1, &o_end, 10);
	if (t_end == t + 1 || t_ns == o_ns || strcmp(t_end, o_end) != 0)
		return 0;
	return t_ns;
}

bool pid_namespace_empty(unsigned long long ino)
{
	if (ino == PROC_PID_INIT_INO)
		return false; /* never: its init is the machine's */
	DIR *procs = opendir("/proc");
	if (procs == NULL)
		return false;
	bool empty = true;
	for (struct dirent *d; empty && (d = readdir(procs)) != NULL;) {
		/* Pid 1 of the initial namespace's /proc is the machine's init, a
		 * member of the initial namespace only (and often not ours to look at). */
		if (d->d_name[0] < '0' || d->d_name[0] > '9' || strcmp(d->d_name, "1") == 0)
			continue;
		char path[300];
		snprintf(path, sizeof path, "/proc/%s/ns/pid", d->d_name);
		struct stat ns;
		if (stat(path, &ns) == 0)
			empty = ns.st_ino != ino || process_start_time((pid_t)atol(d->d_name)) == 0; /* a zombie */
		else if (errno != ENOENT && errno != ESRCH)
			empty = false; /* a process we may not look at could live there */
	}
	closedir(procs);
	return empty;
}

unsigned long long process_start_time(pid_t pid)
{
	char path[32], stat_line[1024];
	if (pid == 0)
		strcpy(path, "/proc/self/stat"); /* right even where /proc is another pid namespace's */
	else
		snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
	if (sidecar_read_head(path, stat_line, sizeof stat_line) <= 0)
		return 0;
	/* The command name (field 2) may hold spaces and ')': skip past the last ')'. */
	char *p = strrchr(stat_line, ')');
	if (p == NULL)
		return 0;
	p += 2; /* field 3: the state; a zombie holds nothing and beats no heart */
	if (*p == 'Z' || *p == 'X')
		return 0;
	for (int field = 3; field < 22 && p != NULL; field++) {
		p = strchr(p, ' ');
		if (p != NULL)
			p++;
	}
	return p == NULL ? 0 : strtoull(p, NULL, 10);
}

bool process_is(pid_t pid, unsigned long long start)
{
	return pid > 0 && process_start_time(pid) == start && start != 0;
}

void keeper_id_new(char out[KEEPER_ID_MAX])
{
	unsigned char raw[16];
	size_t got = 0;
	while (got < sizeof raw) {
		ssize_t n = getrandom(raw + got, sizeof raw - got, 0);
		if (n > 0)
			got += (size_t)n;
		else if (errno != EINTR)
			break;
	}
	if (got < sizeof raw) { /* no getrandom: still different per start and host */
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		snprintf((char *)raw, sizeof raw, "%lx%lx", (long)ts.tv_nsec ^ (long)getpid(), (long)ts.tv_sec);
	}
	for (size_t i = 0; i < sizeof raw; i++)
		snprintf(out + 2 * i, 3, "%02x", raw[i]);
}

/* The record and the lock file are named for our pid namespace, as the
 * socket is (keeper_file): keepers of two namespaces may share a runtime
 * directory, and a same-host judgement is only ever made within one. */
static int registry_path(const char *dir, char *out, size_t cap)
{
	return keeper_file(out, cap, dir, KEEPER_REGISTRY_NAME);
}

/* Only the keeper holding keeper.lock writes the record, so there is one
 * writer; readers see the old record or the new one (rename). */
int keeper_register(const char *dir, const char *id)
{
	char path[PATH_MAX], tmp[PATH_MAX + 8], old[KEEPER_REGISTRY_KEEP * KEEPER_ID_MAX + 64];
	int err = registry_path(dir, path, sizeof path);
	if (err != 0)
		return err;
	snprintf(tmp, sizeof tmp, "%s.new", path);
	ssize_t n = sidecar_read_head(path, old, sizeof old);
	if (n < 0)
		n = 0;
	/* Keep the newest KEEPER_REGISTRY_KEEP - 1 lines, then ours. */
	const char *from = old;
	size_t lines = 0;
	for (ssize_t i = n - 1; i >= 0; i--)
		if (old[i] == '\n' && i != n - 1 && ++lines == KEEPER_REGISTRY_KEEP - 1) {
			from = old + i + 1;
			break;
		}
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return errno;
	err = dprintf(fd, "%.*s%s\n", (int)(old + n - from), from, id) < 0 ? EIO : 0;
	if (fsync(fd) != 0 && err == 0)
		err = errno;
	if (sys_close(fd) != 0 && err == 0)
		err = errno;
	if (err == 0 && rename(tmp, path) != 0)
		err = errno;
	if (err != 0)
		unlink(tmp);
	return err;
}

/* Is anyone holding dir's keeper.lock?  A shared probe: a keeper starting
 * at this instant may fail to start once and is started again. */
static bool keeper_lock_held(const char *dir)
{
	char path[PATH_MAX];
	if (keeper_file(path, sizeof path, dir, KEEPER_LOCK_NAME) != 0)
		return true; /* can't look: assume held (no proof) */
	int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return errno != ENOENT; /* can't look: assume held (no proof) */
	bool held = sys_flock(fd, LOCK_SH | LOCK_NB) != 0;
	sys_close(fd); /* drops the probe's lock */
	return held;
}

enum keeper_fate keeper_fate(const char *dir, const char *id)
{
	if (dir[0] != '/' || strlen(id) != KEEPER_ID_MAX - 1)
		return KEEPER_UNKNOWN;
	char path[PATH_MAX], record[KEEPER_REGISTRY_KEEP * KEEPER_ID_MAX + 64];
	if (registry_path(dir, path, sizeof path) != 0)
		return KEEPER_UNKNOWN;
	ssize_t n = sidecar_read_head(path, record, sizeof record);
	if (n <= 0)
		return KEEPER_UNKNOWN;
	bool found = false, last = false;
	for (char *line = record; *line != '\0';) {
		size_t len = strcspn(line, "\n");
		bool is_id = len == KEEPER_ID_MAX - 1 && memcmp(line, id, len) == 0;
		found |= is_id;
		last = is_id;
		line += len + (line[len] == '\n');
	}
	if (!found)
		return KEEPER_UNKNOWN;
	if (!last)
		return KEEPER_DEAD;
	return keeper_lock_held(dir) ? KEEPER_ALIVE : KEEPER_DEAD;
}
