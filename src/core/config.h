/* Configuration from UUIDLOCK_* environment variables, read once.
 * Bad values are reported (one "uuidlock:" line naming the variable) and
 * remembered, so that lock calls fail instead of running unprotected. */
#ifndef UUIDLOCK_CONFIG_H
#define UUIDLOCK_CONFIG_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#define CONFIG_MAX_DIRS 16
#define CONFIG_PREFIX_MAX 128
#define CONFIG_SUFFIX_MAX 32
/* Not ".lock": that is the mbox dot-lock (Python's mailbox, mutt, procmail,
 * dovecot take lockf() and a dot-lock F.lock together, and unlink F.lock
 * unconditionally).  UUIDLOCK_SUFFIX=.lock interoperates with uuid-filelock. */
#define CONFIG_DEFAULT_SUFFIX ".uuidlock"
/* Upper bounds of the UUIDLOCK_* numbers of seconds: far beyond any real use,
 * and small enough that no deadline "now + value" in int64 nanoseconds can
 * overflow (a bigger value once wrapped to a negative deadline). */
#define CONFIG_SECONDS_MAX (24 * 3600)           /* a day: delay, interval, timeout */
#define CONFIG_LEASE_SECONDS_MAX (7 * 24 * 3600) /* a week: lease, foreign staleness */
#define RUNTIME_DIR_MAX 85 /* "/keeper.<pid ns>.sock" must still fit in sun_path[108] */

/* What is known of a managed directory.  The shim resolves each one only
 * when a lock call could concern it (src/shim/dirs.c); the command at once. */
enum dir_state {
	DIR_UNRESOLVED, /* nothing yet */
	DIR_RESOLVED,   /* path, len and dev are set, for good */
	DIR_ON_SHARE,   /* its path leads into the share with device share_dev: not looked at */
	DIR_BAD,        /* doesn't exist, isn't a directory ...: reported */
};

struct managed_dir {
	char path[PATH_MAX]; /* resolved: no symlinks, no "..", no trailing '/' */
	size_t len;
	dev_t dev;
	int state;          /* enum dir_state; in the shim read and written atomically */
	unsigned version;   /* the shim's: odd while its state changes */
	uint64_t share_dev; /* DIR_ON_SHARE: the share's device ... */
	unsigned mounts_gen; /* ... as of this mount table (see mounts_generation) */
	char given[PATH_MAX]; /* as UUIDLOCK_PATHS names it */
};

/* Fields a program's start-up sets come first, so that loading the shim
 * touches one page of this 70 KB structure, not three. */
struct config {
	int64_t verify_delay_ns;
	int64_t retry_interval_ns;
	int64_t timeout_ns; /* < 0: wait forever */
	int64_t lease_ns;   /* heartbeat every lease/3; silent for a lease = abandoned */
	int64_t foreign_stale_ns; /* < 0: never break a foreign sidecar */
	int64_t linger_ns;  /* keep an unused sidecar this long (0: release at once) */
	int log_level;
	unsigned ndirs;
	bool auto_netfs;    /* "auto" in UUIDLOCK_PATHS: every file on a network or FUSE filesystem */
	bool invalid;       /* a variable was bad: managed lock calls fail */
	bool paths_invalid; /* UUIDLOCK_PATHS itself was bad: every lock call fails */
	char suffix[CONFIG_SUFFIX_MAX];
	char runtime_dir[RUNTIME_DIR_MAX]; /* empty: the default, see config_runtime_dir */
	char prefix[CONFIG_PREFIX_MAX];
	char log_file[PATH_MAX]; /* empty: stderr */
	struct managed_dir dirs[CONFIG_MAX_DIRS];
};

/* Reads the environment into *c, which must be zero-initialised (a static
 * struct is), reporting every bad variable.  No file system access. */
void config_load(struct config *c);

/* Resolves UUIDLOCK_PATHS's directories (realpath, stat), reporting those
 * that don't exist.  Separate because on a share that costs round trips:
 * the shim does it at a process's first lock call, not at every start. */
void config_resolve_dirs(struct config *c);

/* The report of a managed directory that can't be resolved (the reason). */
void config_report_bad_dir(const char *dir, const char *why);

/* The keeper's directory: UUIDLOCK_RUNTIME_DIR, else $XDG_RUNTIME_DIR/uuidlock
 * if that is ours, else /tmp/uuidlock-$UID or, if another user took that
 * name, the first of /tmp/uuidlock-$UID-N that is ours (may mkdir it).  Not
 * worked out at start-up: only lock calls need it, and it looks at files. */
void config_runtime_dir(const struct config *c, char dir[RUNTIME_DIR_MAX]);

/* Parses a locale-independent decimal number of seconds ("1", "0.25", "-1")
 * into nanoseconds.  Returns false on junk or overflow. */
bool parse_seconds(const char *s, int64_t *ns);

#endif
