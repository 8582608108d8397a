/* What the files of uuidlock-keeper share: an entry (one sidecar this host
 * holds or wants) and its states, a connection, the globals and who owns
 * them, and each file's functions that the others call.  See main.c for
 * the keeper's jobs. */
#ifndef UUIDLOCK_KEEPER_H
#define UUIDLOCK_KEEPER_H

#include "../core/grants.h"
#include "../core/keeper_proto.h"
#include "../core/proclocks.h"
#include "../core/sidecar.h"
#include "../core/timeutil.h"

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MAX_INODES 8
#define SAY_WAITING_NS (5 * NS_PER_SEC) /* a blocking wait this long is reported once */
/* A client sends its request as soon as it is connected: a connection
 * silent this long is dropped (a stopped or hostile process keeps no
 * descriptor of ours). */
#define IDLE_CONN_NS (3 * NS_PER_SEC)

/* The life of one entry, one sidecar this host holds or wants.  Only the
 * transition functions named below change e->state.
 *
 *   WAITING    someone asked; trying to create the sidecar every retry
 *              interval (step_waiting), asking for a turn after one (say_want)
 *     -> VERIFYING  created: wait the verification delay      (start_verifying)
 *     -> WATCHING   busy and nobody waits any more           (stop_waiting)
 *   VERIFYING  re-read after the delay                        (step_verifying)
 *     -> HELD       still ours                                (become_held)
 *     -> WAITING    taken over                                (back_off)
 *   HELD       this host holds the sidecar: heartbeat, grant local asks
 *     -> YIELDING   another host asked for a turn, a newcomer came (answer_while_held)
 *     -> DEFERRING  the same, during a hand-off               (yield_turn)
 *     -> IDLE       no local lock left                        (linger_or_release)
 *     -> (freed)    the same, with UUIDLOCK_LINGER=0 or at shutdown (release)
 *   IDLE       held, heartbeating, no local lock: a local ask is answered
 *              from memory (cached hold, like an SMB lease), once we know the
 *              hold is still ours (resume_idle_hold)
 *     -> HELD       a local process asked again
 *     -> DEFERRING  another host asked for it (recall), polled  (step_idle)
 *     -> (freed)    lingered UUIDLOCK_LINGER, or the least recently used of
 *                   too many idle holds                       (release)
 *   YIELDING   still held for the processes already granted; newcomers wait
 *     -> DEFERRING  the last of them unlocked: released       (yield_turn)
 *   DEFERRING  released for another host's turn: stays out while its
 *              request stands and the sidecar is free         (step_deferring)
 *     -> WAITING    the sidecar was taken, the request withdrawn, or it
 *                   went unanswered for turn_request_ns       (stop_deferring)
 *   WATCHING   nobody waits, but a non-blocking ask missed lately: keeps its
 *              observation of the holder, so that repeated asks (SQLite's
 *              busy handler, py-filelock's polling) break a dead holder after
 *              a lease as a blocking waiter does, and its turn request
 *     -> WAITING    asked again                               (handle_acquire)
 *     -> (freed)    no ask for a lease                        (step_watching)
 */
enum entry_state { WAITING, VERIFYING, HELD, YIELDING, IDLE, DEFERRING, WATCHING };

/* One sidecar this host holds or wants. */
struct entry {
	struct sidecar_hold hold;
	char prefix[CONFIG_PREFIX_MAX];
	/* The locked file(s) behind this sidecar, as /proc/locks names them:
	 * more than one if the file was replaced while locked. */
	struct { uint64_t dev, ino; } inode[MAX_INODES];
	unsigned ninodes;
	/* The processes that asked us for this sidecar and may still hold a
	 * lock on the file: another keeper's clients (another user, another
	 * runtime directory) lock the same file, and must not keep ours.
	 * Granted: we answered it HELD while we hold the sidecar, so it may be
	 * inside its critical section; the others only wait in a lock call. */
	struct requester {
		long pid;
		bool granted;
	} *requesters;
	size_t nrequesters, requesters_cap;
	enum entry_state state;
	/* WAITING: next attempt; VERIFYING: time to re-read; DEFERRING: next
	 * look; WATCHING: when to withdraw the turn request or forget */
	int64_t next_step;
	/* Turns between hosts (see sidecar.c).  HELD: when this host's turn
	 * began (the first of a run of back-to-back holds, see recent_release;
	 * 0 until held), when to look for another host's ".want" again, until
	 * when to keep the sidecar for processes told to come back, since when
	 * only a process that hasn't asked yet holds a lock (0: none).
	 * WAITING: since when, when to say ".want" again, and whether we said
	 * it.  DEFERRING: until when at most.  After a non-blocking miss: until
	 * when to keep the turn request, and the entry (WATCHING). */
	int64_t turn_since, next_want_look, turn_grace_until, handoff_since;
	int64_t waiting_since, next_want_say;
	bool said_want;
	int64_t defer_until, want_until, watch_until;
	/* Held: when we last wrote the sidecar (created it, or a heartbeat that
	 * found it ours), on CLOCK_BOOTTIME; IDLE: since when, and for how long
	 * at most (UUIDLOCK_LINGER). */
	int64_t written_at_boot, idle_since, linger_ns;
	size_t file_len; /* the locked file's path: hold.path's first file_len bytes */
	int64_t retry_ns, verify_ns, foreign_stale_ns;
	struct sidecar_holder holder;
	/* HELD: the heartbeat, and how many beats in a row failed */
	int64_t next_beat;
	unsigned long long beats;
	unsigned failed_beats;
	/* Its slot in the grant table (src/core/grants.h), GRANT_NO_SLOT if none. */
	uint32_t slot;
	/* WAITING: what the other holder's sidecar (and a breaker's guard) said,
	 * and since when, on our monotonic clock.  Allocated when first needed
	 * and freed once held: a host holding many sidecars doesn't carry them. */
	struct observation {
		size_t len;
		int64_t since;
		char content[SIDECAR_HEAD_MAX];
	} *seen, *guard_seen;
	struct entry *next;
};

/* One connection: a request not yet answered. */
struct conn {
	int fd;
	long pid; /* the asking process, as /proc names it */
	bool turn_only; /* KEEPER_WAIT_TURN: holds no kernel lock */
	struct entry *entry; /* what it waits for, once its request is read */
	bool nonblocking;
	uint64_t grant_table; /* the grant table the client has mapped (0: none) */
	int64_t deadline; /* < 0: none */
	int64_t say_waiting_at; /* < 0: said, or nothing to say */
	int64_t accepted_at;
	struct conn *next;
};

/* Who holds e's file now, for a yield: NONE, only PENDING processes (they
 * asked and wait for our answer, so none is in its critical section), or
 * some GRANTED one.  UNKNOWN when a lock can't be told apart: an OFD lock
 * (no pid) or a /proc of another pid namespace. */
enum holders { HOLDERS_NONE, HOLDERS_PENDING, HOLDERS_GRANTED, HOLDERS_UNKNOWN };

/* The globals, each written by the file named.
 *
 * Per share, thread-local: each share thread (shares.c) runs the loop of
 * loop.c over its own entries and connections, so that a share that stops
 * answering stalls only its own locks; nothing of one share's state is
 * seen by another thread, so none of it needs a lock.  In the main thread
 * `conns` holds the connections whose request is not read yet. */
extern _Thread_local struct entry *entries; /* entry.c: every entry of this share */
extern _Thread_local struct conn *conns;    /* conn.c: every open connection of this thread */
extern _Thread_local int64_t next_check;    /* sweep.c: when check_held runs next */
/* The main thread's (loop.c, main.c, conn.c's accept): */
extern int listen_fd;                    /* main.c opens it, conn.c accepts on it */
extern int64_t accept_paused_until;      /* conn.c: out of descriptors, accept later */
extern int64_t next_listen_check;        /* main.c: when keep_listening runs next */
extern volatile sig_atomic_t stop_requested; /* loop.c: SIGTERM or SIGINT came */
/* Shared: written once at start-up, before any share thread starts. */
extern size_t max_conns;                 /* main.c, from the descriptor limit */
extern struct sidecar_holder me;         /* main.c: who we are, in every sidecar */
extern bool pids_comparable;             /* main.c */
extern bool may_linger;                  /* main.c */
extern bool proc_lists_every_lock;       /* main.c */
/* Shared, atomic (and shares.c's list of our tokens, under a mutex): */
extern _Atomic size_t open_conns;        /* conn.c: connections of every thread, for max_conns */

/* entry.c: an entry's life */
void free_entry(struct entry *e);
struct requester *find_requester(const struct entry *e, long pid);
bool remember_requester(struct entry *e, long pid);
void grant(struct entry *e, long pid);
struct entry *find_entry(const char *sidecar);
int64_t next_attempt(const struct entry *e, int64_t now);
void stop_waiting(struct entry *e, int64_t now);
void forget_if_unwanted(struct entry *e, int64_t now);
void step_waiting(struct entry *e, int64_t now);
void step_watching(struct entry *e, int64_t now);
void step(struct entry *e, int64_t now);
bool holds_sidecar(const struct entry *e);
bool has_steps(const struct entry *e);
int64_t surely_ours_until(const struct entry *e);
void wrote_sidecar(struct entry *e, int64_t at);
void heartbeat(struct entry *e, int64_t now);
int release_sidecar(struct entry *e, const char *purpose);
void release(struct entry *e);
void name_locked_file(struct entry *e, const struct keeper_request *req);
struct entry *new_entry(const struct keeper_request *req, int64_t now);
bool add_inode(struct entry *e, const struct keeper_request *req);

/* conn.c: connections */
void unlink_conn(struct conn *c);
void drop_conn(struct conn *c);
__attribute__((format(printf, 4, 5)))
void reply(struct conn *c, enum keeper_status status, int error, const char *fmt, ...);
void reply_held(struct conn *c, struct entry *e, int error);
unsigned count_waiters(const struct entry *e);
void reply_waiters(struct entry *e, bool only_nonblocking, enum keeper_status status, int error,
		   const char *message);
void answer_remaining_waiters(struct entry *e);
long peer_pid(int fd);
void handle_hangup(struct conn *c);
void accept_connections(size_t room, int64_t now);
bool sent_nothing_yet(const struct conn *c);
void drop_idle_conns(int64_t now);
void expire_deadlines(int64_t now);

/* sweep.c: the sweep of /proc/locks */
void schedule_check(int64_t now, int64_t interval);
int load_locks(struct proclocks *locks);
void tell_holders(const struct entry *e, const char *msg);
void check_held(int64_t now);
enum holders classify_holders(const struct entry *e, const struct proclocks *locks);

/* stale.c: stale sidecars */
void busy_message(const struct entry *e, char *out, size_t cap);
bool break_if_stale(struct entry *e, int64_t now);

/* turns.c: turns between hosts */
void say_want(struct entry *e, int64_t now);
void note_nonblocking_ask(struct entry *e, int64_t now);
void step_deferring(struct entry *e, int64_t now);
void defer(struct entry *e, int64_t now);
bool look_for_turn_request(struct entry *e, int64_t now, int64_t look_every);
void remember_release(const struct entry *e, int64_t now);
void continue_turn(struct entry *e, int64_t now);
void finish_yielding(struct entry *e, const struct proclocks *locks, int64_t now);
bool hand_off_or_yield(struct entry *e, int64_t now);
bool may_send_away(const struct entry *e);

/* idle.c: idle holds */
void step_idle(struct entry *e, int64_t now);
void linger_or_release(struct entry *e, int64_t now);
void resume_idle_hold(struct entry *e, int64_t now);

/* requests.c: requests */
bool read_request(struct conn *c, struct keeper_request *req);
void handle_request(struct conn *c, const struct keeper_request *req, int64_t now);

/* loop.c: the loops */
void on_stop_signal(int sig);
void serve(void);
void serve_share(void);

/* shares.c: one thread per share */
int shares_init(void);
void hand_over(struct conn *c, const struct keeper_request *req);
bool share_started(uint64_t dev);
void check_every_share(struct conn *c);
int64_t answer_checks(int64_t now);
void drain_wakeups(int fd);
int main_wake_fd(void);
int64_t shares_quiet_since(void);
void take_handovers(int64_t now);
void run_asked_check(int64_t now);
int share_wake_fd(void);
void share_busy(int64_t now);
void share_waiting(int64_t now);
bool share_stopping(void);
bool stop_shares(int64_t patience_ns);
bool own_token(const char *token);
void disown_token(const char *token);
bool owns_token(const char *line, size_t len);

/* grants.c: the grant table (src/core/grants.h) */
int grants_init(void);
uint32_t grant_slot_open(void);
void grant_slot_close(uint32_t slot);
void grants_before_looking_at_locks(void);
void grant_slot_vouch(uint32_t slot, int64_t until);
struct keeper_grant grant_of(const struct entry *e);
int grant_table_fd_for(uint64_t has);

/* main.c: start-up and shutdown */
void keep_listening(int64_t now);
void shut_down_share(void);

#endif
