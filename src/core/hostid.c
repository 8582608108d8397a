#include "hostid.h"

#include "sidecar.h" /* sidecar_read_head */

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
