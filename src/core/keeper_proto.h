/* The messages between the shim and the keeper: one request and one reply
 * per connection on a SOCK_SEQPACKET Unix socket in the runtime directory.
 * Closing the connection before the reply cancels the request (that is how
 * a signal or a dying process withdraws a blocking wait). */
#ifndef UUIDLOCK_KEEPER_PROTO_H
#define UUIDLOCK_KEEPER_PROTO_H

#include "config.h"

#include <limits.h>
#include <stdint.h>

#define KEEPER_PROTO_VERSION 6
#define KEEPER_SOCKET_NAME "keeper.sock"
#define KEEPER_LOCK_NAME "keeper.lock"
#define KEEPER_PID_NAME "keeper.pid"
#define KEEPER_PROGRAM_NAME "uuidlock-keeper"

enum keeper_op {
	KEEPER_ACQUIRE = 1, /* hold the sidecar for this host; reply when held */
	KEEPER_CHECK = 2,   /* a local lock went away: release what no one holds */
	KEEPER_PROBE = 3,   /* does another client hold this sidecar? (F_GETLK) */
	KEEPER_WAIT_TURN = 4, /* after KEEPER_YIELD, without the kernel lock: reply
			       * when this host may take the lock again */
};

enum keeper_status {
	KEEPER_HELD = 1, /* this host holds the sidecar; error: KEEPER_HELD_FRESH or 0 */
	KEEPER_BUSY,     /* another holder has it (non-blocking request) */
	KEEPER_TIMEOUT,  /* UUIDLOCK_TIMEOUT ran out */
	KEEPER_FAILED,   /* the share refused: error and message say why */
	KEEPER_DONE,     /* a check finished; a probe found the sidecar free */
	KEEPER_WAITING,  /* not an answer: still waiting, message says for whom */
	KEEPER_YIELD,    /* another host's turn (fairness, see sidecar.c): give the
			  * kernel lock back, KEEPER_WAIT_TURN, then try again */
};

struct keeper_request {
	uint32_t version;
	uint32_t op;
	uint32_t nonblocking;
	int32_t pid;
	/* The locked file, as /proc/locks names it.  The keeper serves each
	 * device (share) in a thread of its own: a request about a file must
	 * name its device, or it is served apart from the file's sidecar. */
	uint64_t dev, ino;
	int64_t verify_delay_ns;
	int64_t retry_interval_ns;
	int64_t timeout_ns;
	int64_t lease_ns;
	int64_t foreign_stale_ns;
	int64_t linger_ns;
	uint64_t suffix_len; /* the locked file's path is sidecar less this many bytes */
	uint64_t grant_table; /* the grant table the library has mapped (0: none; see grants.h) */
	char prefix[CONFIG_PREFIX_MAX];
	char sidecar[PATH_MAX];
};

/* KEEPER_HELD's error: the host has just acquired the sidecar (another host
 * may have written the file since this host last held it), so the asker
 * checks the file's name and revalidates its attributes.  0: the hold is
 * continuous since a reply that said so (see share_acquire). */
#define KEEPER_HELD_FRESH 1

/* Never changes, so that any keeper can tell any library what is wrong.
 * A HELD reply goes on with a struct keeper_grant (src/core/grants.h), and
 * carries the grant table's descriptor to a library that hasn't mapped it. */
struct keeper_reply {
	uint32_t status;
	int32_t error;
	char message[512];
};

#endif
