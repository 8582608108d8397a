#include "config.h"

#include "log.h"
#include "timeutil.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <intprops.h>

bool parse_seconds(const char *s, int64_t *ns)
{
	bool negative = (*s == '-');
	if (negative)
		s++;
	int64_t whole = 0, frac = 0, scale = NS_PER_SEC;
	bool digits = false;
	for (; *s >= '0' && *s <= '9'; s++, digits = true)
		if (INT_MULTIPLY_WRAPV(whole, 10, &whole) || INT_ADD_WRAPV(whole, *s - '0', &whole))
			return false;
	if (*s == '.')
		for (s++; *s >= '0' && *s <= '9'; s++, digits = true)
			if (scale > 1) {
				scale /= 10;
				frac += (*s - '0') * scale;
			}
	if (!digits || *s != '\0')
		return false;
	int64_t total;
	if (INT_MULTIPLY_WRAPV(whole, NS_PER_SEC, &total) || INT_ADD_WRAPV(total, frac, &total))
		return false;
	*ns = negative ? -total : total;
	return true;
}

static void bad(struct config *c, const char *var, const char *value, const char *why)
{
	log_error("%s=\"%s\" is invalid: %s; locks on managed files will fail", var, value, why);
	c->invalid = true;
}

static void load_seconds(struct config *c, const char *var, int64_t *out, bool may_be_negative, int max_s)
{
	const char *v = getenv(var);
	if (v == NULL)
		return;
	int64_t ns;
	char why[64];
	if (!parse_seconds(v, &ns)) {
		bad(c, var, v, "expected a number of seconds such as 0.5");
	} else if (ns < 0 && !may_be_negative) {
		bad(c, var, v, "must not be negative");
	} else if (ns > max_s * NS_PER_SEC) {
		snprintf(why, sizeof why, "must be at most %d seconds", max_s);
		bad(c, var, v, why);
	} else {
		*out = ns < 0 ? -1 : ns;
	}
}

static void load_text(struct config *c, const char *var, char *out, size_t cap, bool may_be_empty,
		      const char *forbidden)
{
	const char *v = getenv(var);
	if (v == NULL)
		return;
	if (strlen(v) >= cap)
		bad(c, var, v, "too long");
	else if (!may_be_empty && *v == '\0')
		bad(c, var, v, "must not be empty");
	else if (strpbrk(v, forbidden) != NULL)
		bad(c, var, v, "contains a forbidden character (newline or '/')");
	else
		strcpy(out, v);
}

void config_report_bad_dir(const char *dir, const char *why)
{
	log_error("UUIDLOCK_PATHS: \"%s\" is invalid: %s; all lock calls will fail", dir, why);
}

static void bad_path(struct config *c, const char *dir, const char *why)
{
	config_report_bad_dir(dir, why);
	c->paths_invalid = c->invalid = true;
}

static void add_managed_dir(struct config *c, const char *dir)
{
	if (strcmp(dir, "auto") == 0) {
		c->auto_netfs = true;
		return;
	}
	if (dir[0] != '/')
		return bad_path(c, dir, "not an absolute path (nor auto)");
	if (c->ndirs == CONFIG_MAX_DIRS)
		return bad_path(c, dir, "too many directories");
	strcpy(c->dirs[c->ndirs++].given, dir); /* resolved later: see config_resolve_dirs */
}

/* Finds a directory's canonical name and its device. */
static void resolve_dir(struct config *c, struct managed_dir *d)
{
	char resolved[PATH_MAX];
	struct stat st;
	const char *why = NULL;
	if (realpath(d->given, resolved) == NULL || stat(resolved, &st) != 0)
		why = strerror(errno);
	else if (!S_ISDIR(st.st_mode))
		why = "not a directory";
	if (why != NULL) {
		config_report_bad_dir(d->given, why);
		c->paths_invalid = true;
		d->state = DIR_BAD;
		return;
	}
	strcpy(d->path, resolved);
	d->len = strlen(d->path);
	if (d->len == 1) /* "/": every path is below it */
		d->len = 0;
	d->dev = st.st_dev;
	d->state = DIR_RESOLVED;
}

void config_resolve_dirs(struct config *c)
{
	for (unsigned i = 0; i < c->ndirs; i++)
		resolve_dir(c, &c->dirs[i]);
}

/* One line for all of them, not one per directory beyond the limit. */
static void too_many_dirs(struct config *c, unsigned extra)
{
	log_error("UUIDLOCK_PATHS: %u directories, more than the %d supported; all lock calls will fail",
		  CONFIG_MAX_DIRS + extra, CONFIG_MAX_DIRS);
	c->paths_invalid = c->invalid = true;
}

static void load_paths(struct config *c)
{
	const char *v = getenv("UUIDLOCK_PATHS");
	if (v == NULL)
		return;
	char dir[PATH_MAX];
	unsigned extra = 0;
	for (const char *p = v; *p != '\0';) {
		size_t n = strcspn(p, ":");
		if (n >= sizeof dir) {
			bad_path(c, p, "too long");
		} else if (n > 0) {
			memcpy(dir, p, n);
			dir[n] = '\0';
			if (c->ndirs == CONFIG_MAX_DIRS && dir[0] == '/')
				extra++;
			else
				add_managed_dir(c, dir);
		}
		p += n + (p[n] == ':');
	}
	if (extra > 0)
		too_many_dirs(c, extra);
}

static void load_runtime_dir(struct config *c)
{
	const char *v = getenv("UUIDLOCK_RUNTIME_DIR");
	if (v == NULL)
		return; /* the default: see config_runtime_dir */
	if (v[0] != '/')
		bad(c, "UUIDLOCK_RUNTIME_DIR", v, "not an absolute path");
	else
		load_text(c, "UUIDLOCK_RUNTIME_DIR", c->runtime_dir, sizeof c->runtime_dir, false, "\n");
}

/* $XDG_RUNTIME_DIR/uuidlock if XDG_RUNTIME_DIR is a directory of ours that
 * nobody else may enter: no other user can take that name from us.  Not
 * when it is somebody else's (su and sudo -E keep the variable). */
static bool xdg_runtime_dir(char dir[RUNTIME_DIR_MAX])
{
	const char *xdg = getenv("XDG_RUNTIME_DIR");
	struct stat st;
	if (xdg == NULL || xdg[0] != '/' || lstat(xdg, &st) != 0)
		return false;
	if (!S_ISDIR(st.st_mode) || st.st_uid != getuid() || (st.st_mode & 077) != 0)
		return false;
	return snprintf(dir, RUNTIME_DIR_MAX, "%s/uuidlock", xdg) < RUNTIME_DIR_MAX;
}

/* Is dir a directory of ours (made now if nobody had it)?  Mode and the
 * rest are checked by whoever uses it: a wrong mode is our own doing. */
static bool ours_or_created(const char *dir, struct stat *st)
{
	if (lstat(dir, st) != 0 && (errno != ENOENT || (mkdir(dir, 0700) != 0 && errno != EEXIST) ||
				    lstat(dir, st) != 0))
		return false;
	return S_ISDIR(st->st_mode) && st->st_uid == getuid();
}

/* In /tmp anyone may take any name first (a directory or symlink of their
 * own), so /tmp/uuidlock-UID is only the first of a sequence:
 * /tmp/uuidlock-UID-1, -2 ... follow, and every process of ours settles on
 * the first one that is ours or that it can make (mkdir decides a race).  A
 * squatter is named once per process.  If all are taken, the first is
 * returned and refused by its user, with the reason. */
#define TMP_CANDIDATES 1000
static void tmp_runtime_dir(char dir[RUNTIME_DIR_MAX])
{
	static bool warned;
	long uid = (long)getuid();
	char first[RUNTIME_DIR_MAX];
	struct stat st, squatted = { .st_uid = (uid_t)-1 }; /* -1: lstat failed */
	snprintf(first, sizeof first, "/tmp/uuidlock-%ld", uid);
	if (ours_or_created(first, &squatted)) {
		strcpy(dir, first);
		return;
	}
	for (int n = 1; n < TMP_CANDIDATES; n++) {
		snprintf(dir, RUNTIME_DIR_MAX, "/tmp/uuidlock-%ld-%d", uid, n);
		if (ours_or_created(dir, &st)) {
			if (!__atomic_exchange_n(&warned, true, __ATOMIC_RELAXED))
				log_warn("%s %s uid %ld%s, not to us: using %s instead", first,
					 squatted.st_uid == (uid_t)-1 ? "cannot be used: it belongs to" : "belongs to",
					 (long)(int)squatted.st_uid,
					 S_ISDIR(squatted.st_mode) ? "" : " (and is no directory)", dir);
			return;
		}
	}
	strcpy(dir, first);
}

void config_runtime_dir(const struct config *c, char dir[RUNTIME_DIR_MAX])
{
	if (c->runtime_dir[0] != '\0')
		strcpy(dir, c->runtime_dir);
	else if (!xdg_runtime_dir(dir))
		tmp_runtime_dir(dir);
}

void config_load(struct config *c)
{
	/* *c is zero already (see config.h): set only what isn't, so that a
	 * program's start-up doesn't touch all 70 KB of it. */
	c->verify_delay_ns = NS_PER_SEC;
	c->retry_interval_ns = NS_PER_SEC / 10;
	c->timeout_ns = -1;
	c->lease_ns = 30 * NS_PER_SEC;
	c->foreign_stale_ns = -1;
	c->linger_ns = 5 * NS_PER_SEC;
	strcpy(c->suffix, CONFIG_DEFAULT_SUFFIX);
	c->log_level = LOG_WARN;
	const char *level = getenv("UUIDLOCK_LOG");
	if (level != NULL) {
		int l = log_level_parse(level);
		if (l < 0)
			bad(c, "UUIDLOCK_LOG", level, "expected off, error, warn, info or debug");
		else
			c->log_level = l;
	}
	log_set_level(c->log_level);
	const char *file = getenv("UUIDLOCK_LOG_FILE");
	if (file != NULL && file[0] != '/') {
		bad(c, "UUIDLOCK_LOG_FILE", file, "not an absolute path");
	} else if (file != NULL) {
		load_text(c, "UUIDLOCK_LOG_FILE", c->log_file, sizeof c->log_file, false, "\n");
		log_set_file(c->log_file);
	}
	load_seconds(c, "UUIDLOCK_VERIFY_DELAY", &c->verify_delay_ns, false, CONFIG_SECONDS_MAX);
	load_seconds(c, "UUIDLOCK_RETRY_INTERVAL", &c->retry_interval_ns, false, CONFIG_SECONDS_MAX);
	load_seconds(c, "UUIDLOCK_TIMEOUT", &c->timeout_ns, true, CONFIG_SECONDS_MAX);
	load_seconds(c, "UUIDLOCK_LEASE", &c->lease_ns, false, CONFIG_LEASE_SECONDS_MAX);
	load_seconds(c, "UUIDLOCK_FOREIGN_STALE", &c->foreign_stale_ns, false, CONFIG_LEASE_SECONDS_MAX);
	load_seconds(c, "UUIDLOCK_LINGER", &c->linger_ns, false, CONFIG_SECONDS_MAX);
	if (c->lease_ns < NS_PER_SEC / 10)
		bad(c, "UUIDLOCK_LEASE", getenv("UUIDLOCK_LEASE"), "must be at least 0.1 seconds");
	if (c->retry_interval_ns == 0)
		c->retry_interval_ns = NS_PER_MS; /* never spin on the share */
	load_text(c, "UUIDLOCK_PREFIX", c->prefix, sizeof c->prefix, true, "\n\r");
	load_text(c, "UUIDLOCK_SUFFIX", c->suffix, sizeof c->suffix, false, "/\n");
	load_runtime_dir(c);
	load_paths(c);
}
