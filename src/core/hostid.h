/* Who and where a process is, in the terms a sidecar records: a host
 * identity that tells machines and containers apart, and a process start
 * time that tells a pid from its reuse. */
#ifndef UUIDLOCK_HOSTID_H
#define UUIDLOCK_HOSTID_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#define HOST_ID_MAX 96
#define KEEPER_ID_MAX 33 /* 32 hex digits */
#define KEEPER_REGISTRY_NAME "keepers.list" /* in the runtime directory; see keeper_file */
#define KEEPER_REGISTRY_KEEP 32 /* ids remembered; older ones just lose the fast break */
#define PROC_PID_INIT_INO 0xEFFFFFFCU /* the initial pid namespace's inode (linux/proc_ns.h) */

/* "<boot id>/<pid namespace inode>": hostnames are shared by containers and
 * often "localhost"; a boot id is unique per machine and boot, and the pid
 * namespace tells containers of one machine apart (their pids are not
 * comparable, so neither are their liveness checks). */
void host_identity(char *out, size_t cap);

/* The pid namespace of another host identity on this machine: its inode,
 * if `theirs` differs from `ours` only in the namespace field (the second,
 * after the first '/'); else 0. */
unsigned long long host_id_other_pid_namespace(const char *theirs, const char *ours);

/* True if no process in /proc is a member of pid namespace ino: every one
 * of them could be checked, and none is.  Then a keeper that lived there is
 * dead (a namespace whose init ended, a container, lost all its processes).
 * Only proof where /proc is the initial namespace's (it shows every process
 * of the machine).  An inode reused by a new namespace reads as alive. */
bool pid_namespace_empty(unsigned long long ino);

/* The start time of pid (clock ticks since boot, field 22 of
 * /proc/PID/stat; pid 0 = this process), or 0 if there is no such process
 * (or only its zombie). */
unsigned long long process_start_time(pid_t pid);

/* True if pid is alive and still the process that started at start. */
bool process_is(pid_t pid, unsigned long long start);

/* A keeper's identity: 128 random bits, new at every keeper start.  A boot
 * id and a pid namespace inode are shared by machines cloned from one
 * snapshot, and pids repeat there; a fresh random id is not. */
void keeper_id_new(char out[KEEPER_ID_MAX]);

/* The keeper that holds dir's keeper.lock appends its id to dir/keepers.list
 * (keeping the last KEEPER_REGISTRY_KEEP): the record of which keepers ran
 * in this runtime directory, in order.  Returns 0 or an errno. */
int keeper_register(const char *dir, const char *id);

/* What dir's record proves about keeper id:
 *   KEEPER_DEAD    a later keeper is recorded (it could only take
 *                  keeper.lock once id's keeper had exited), or id is the
 *                  last one and keeper.lock is free;
 *   KEEPER_ALIVE   id is the last one and keeper.lock is held;
 *   KEEPER_UNKNOWN anything else: id never ran here (another machine,
 *                  a clone, a directory we can't read) -- no proof. */
enum keeper_fate { KEEPER_UNKNOWN, KEEPER_ALIVE, KEEPER_DEAD };
enum keeper_fate keeper_fate(const char *dir, const char *id);

#endif
