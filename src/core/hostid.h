/* Who and where a process is, in the terms a sidecar records: a host
 * identity that tells machines and containers apart, and a process start
 * time that tells a pid from its reuse. */
#ifndef UUIDLOCK_HOSTID_H
#define UUIDLOCK_HOSTID_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#define HOST_ID_MAX 96

/* "<boot id>/<pid namespace inode>": hostnames are shared by containers and
 * often "localhost"; a boot id is unique per machine and boot, and the pid
 * namespace tells containers of one machine apart (their pids are not
 * comparable, so neither are their liveness checks). */
void host_identity(char *out, size_t cap);

/* The start time of pid (clock ticks since boot, field 22 of
 * /proc/PID/stat; pid 0 = this process), or 0 if there is no such process
 * (or only its zombie). */
unsigned long long process_start_time(pid_t pid);

/* True if pid is alive and still the process that started at start. */
bool process_is(pid_t pid, unsigned long long start);

#endif
