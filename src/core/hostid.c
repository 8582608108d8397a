#include "hostid.h"

#include "sidecar.h" /* sidecar_read_head */

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

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
