/* The grant table: what lets a lock call on a file its process holds
 * already skip the keeper (SQLite makes nine lock calls on the database per
 * write transaction, each a round trip to the keeper otherwise).
 *
 * The keeper shares this table with its clients, read-only (a sealed memfd
 * it passes with a HELD reply to a library that hasn't mapped it).  One slot
 * per sidecar the keeper holds or wants:
 *   seq              moves (a) before the keeper reads /proc/locks, in every
 *                    sweep: each decision to stop counting a process as
 *                    granted, to go idle, to yield or to release comes from
 *                    such a read; and (b) when the entry ends (released,
 *                    lost, shut down);
 *   valid_until_boot until when, on CLOCK_BOOTTIME, the sidecar is surely
 *                    still ours: half a lease after our last write to it, the
 *                    rule of idle holds (src/core/sidecar.c, "Cached holds"),
 *                    so a keeper that died or was stopped stops vouching.
 *
 * Why a lock call may skip the keeper (src/shim/share.c): the keeper answered
 * this process HELD for the file when its slot said S.  The process takes
 * the new kernel lock, and then reads the slot: if it still says S and the
 * time is before valid_until_boot, the keeper has not read /proc/locks since
 * it answered us -- so it still counts this process as granted, still holds
 * the sidecar (only a sweep releases a held one, and a lost one moves seq),
 * and its next read of /proc/locks comes after our new lock exists and sees
 * it.  The keeper would have answered HELD (it always grants a granted
 * process more, answer_while_held).  If seq moved, the call asks the keeper
 * as before, with its kernel lock taken.  The keeper writes seq before its
 * read of /proc/locks, the client reads it after its lock call: both are
 * system calls, and the accesses are sequentially consistent atomics. */
#ifndef UUIDLOCK_GRANTS_H
#define UUIDLOCK_GRANTS_H

#include "keeper_proto.h"
#include "timeutil.h"

#include <stdbool.h>
#include <stdint.h>

#define GRANT_SLOTS 4096
#define GRANT_NO_SLOT UINT32_MAX

struct grant_slot {
	uint64_t seq;
	int64_t valid_until_boot;
};

struct grant_table {
	uint64_t instance; /* random, never 0: which keeper's table */
	uint64_t reserved;
	struct grant_slot slot[GRANT_SLOTS];
};

/* What a HELD reply says about the hold, after its struct keeper_reply in
 * the same packet (table 0: nothing to trust, ask every time). */
struct keeper_grant {
	uint64_t table; /* the instance of the keeper's grant table */
	uint32_t slot;
	uint32_t reserved;
	uint64_t seq;
};

/* The packet of a HELD reply: the reply every keeper and library agree on,
 * then the grant.  Other replies are the struct keeper_reply alone. */
struct keeper_held_packet {
	struct keeper_reply reply;
	struct keeper_grant grant;
};

/* Is a grant the keeper made (slot, seq) still good, right after the
 * kernel granted a new lock?  See above. */
static inline bool grant_still_good(const struct grant_table *t, uint32_t slot, uint64_t seq)
{
	if (slot >= GRANT_SLOTS)
		return false;
	const struct grant_slot *s = &t->slot[slot];
	return __atomic_load_n(&s->seq, __ATOMIC_SEQ_CST) == seq &&
	       boot_ns() < __atomic_load_n(&s->valid_until_boot, __ATOMIC_SEQ_CST);
}

#endif
