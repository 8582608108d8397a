/* The UUID sidecar protocol (as in the Python package uuid-filelock).
 *
 * A lock on file F across the clients of a share is the existence of the
 * sidecar F + UUIDLOCK_SUFFIX holding the holder's token:
 *
 *   acquire  1. open(sidecar, O_CREAT|O_EXCL|O_DSYNC): only one client can
 *               create it (the first guard);
 *            2. write "<prefix><uuid>\n" and key=value lines naming the holder
 *               (O_DSYNC: the write returns once the share has it, the
 *               protocol's fsync without a system call of its own), close;
 *            3. wait UUIDLOCK_VERIFY_DELAY, re-read the first line: the lock is
 *               ours only if it is still our token (the second guard, for
 *               shares whose exclusive create is not atomic);
 *            otherwise the sidecar is someone else's: retry every
 *            UUIDLOCK_RETRY_INTERVAL, never touch their file.
 *   release  re-read; unlink only if the first line is still our token.
 *
 * Any content that is not our token means "held by someone else": another
 * client's sidecar, one written by uuid-filelock (token without newline),
 * garbage, a huge file.  We read at most SIDECAR_HEAD_MAX bytes of it.
 *
 * Crashes.  A sidecar outlives its holder, so it says who holds it (host
 * identity, keeper pid and start time, keeper id and runtime directory) and
 * carries a heartbeat that the holder's keeper rewrites every lease/3.  A
 * waiter breaks a sidecar
 *   - at once when it has proof that nobody holds it (below), or when its
 *     holder is in a pid namespace of this machine with no process left (the
 *     keeper decides that, where it sees every process);
 *   - when it has itself watched the content stay unchanged for a lease, on
 *     its own monotonic clock (never comparing clocks across hosts) -- this
 *     includes a half-written sidecar of ours (empty, or cut off before its
 *     heartbeat line: a keeper killed between the create and the write),
 *     which no heartbeat will ever move;
 *   - if foreign (no heartbeat), only after UUIDLOCK_FOREIGN_STALE, if set.
 * Breaking only takes away; holding still takes the create and the verify.
 * The heartbeat reads the name (our token must still be there) and writes
 * through the create's descriptor where it was kept, which a share may let
 * write when it refuses a reopen.  A holder that finds someone else's token
 * (or none) at its heartbeat lost the lock and says so, as one whose
 * heartbeat keeps failing (the keeper decides when); it never deletes what
 * isn't its own.
 *
 * Who may break at once.  Only a verdict that can't be wrong, never a pid
 * lookup: machines cloned from one snapshot share the boot id and the
 * initial pid namespace (so the host_id), and a pid dead here may be a live
 * keeper there.  Each keeper start draws a random keeper_id and, holding
 * its runtime directory's keeper.lock, appends it to that directory's
 * record "keepers.list" before any sidecar names it.  A sidecar of this host_id
 * is then broken at once
 *   - when its keeper_dir's record proves its keeper dead: a later keeper is
 *     recorded (it could only take keeper.lock after ours exited), or it is
 *     the last one and keeper.lock is free.  A clone's keeper is not in our
 *     record (its id was drawn there): no proof, so its heartbeat decides;
 *   - when it names this very keeper, whose entries hold no sidecar with its
 *     token: a copy (cp app.db* backup/, rsync), which nothing would ever
 *     release.  The same sidecar seen through another mount of the share
 *     has the token of an entry we hold, and is respected; so is a copy of a
 *     sidecar we still hold, until we release the original.
 * A keeper that was itself cloned while running (a memory snapshot restored
 * twice) is one id in two places: nothing on either machine tells them
 * apart, and that stays a limit.
 *
 * Fairness.  A host holds the sidecar while any of its processes holds a
 * lock, and its processes hand the kernel lock to each other directly: under
 * steady local demand no other host would ever get a turn.  So a host that
 * finds the sidecar held creates F + SUFFIX + ".want" (empty, advisory:
 * deleting it can cost a turn, never exclusion) -- a host that asks only
 * with non-blocking calls from its second miss on.  The holder's keeper,
 * once it has held the sidecar for a turn, looks for that file when a
 * process of its own asks for the lock; if it is there, it lets the
 * processes it has already answered finish, releases the sidecar, and stays
 * out while the request stands and the sidecar is free, however long the
 * other host's round trips take.  Only a host that got the sidecar removes
 * the request (or one that stopped waiting); a request nobody answers for a
 * second or ten retry intervals is stale and removed by the host deferring
 * to it.
 *
 * Cached holds.  When the last local lock on F ends, the keeper keeps the
 * sidecar for UUIDLOCK_LINGER (still heartbeating, looking for ".want"
 * every retry interval at first, at least every 0.25 s later), so that the
 * next local lock costs no verification delay.  A hold kept in memory may
 * have been lost meanwhile: another host breaks a sidecar only after it has
 * watched its content stand still for a lease, and that watch starts no
 * earlier than our last write to it (the create, or a heartbeat that found
 * our token).  So if our last write is less than half a lease old, no host
 * can have broken it yet, and the keeper grants from memory; else it first
 * rewrites the heartbeat through a descriptor on which it checked the token
 * (and if the token is gone, acquires from scratch).  The age is taken on
 * CLOCK_BOOTTIME, which counts a suspended machine's sleep (CLOCK_MONOTONIC
 * stops; another host's clocks don't).  A keeper in a container's pid
 * namespace keeps no idle holds: the kernel kills it with the container,
 * and a sidecar it never released would cost every other host a lease.
 * The same half lease bounds the grants a process may trust without asking
 * the keeper (src/core/grants.h): a keeper that died or was stopped stops
 * vouching for its sidecars before any host can break them.
 *
 * This file does the steps; the keeper (src/keeper) sequences them in time,
 * because a host's sidecar must outlive the processes that asked for it. */
#include "sidecar.h"

#include "sys.h"
#include "timeutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uuid/uuid.h>

void sidecar_new_token(struct sidecar_hold *h, const char *prefix)
{
	uuid_t uu;
	char text[UUID_STR_LEN];
	uuid_generate_random(uu);
	uuid_unparse_lower(uu, text);
	snprintf(h->token, sizeof h->token, "%s%s", prefix, text);
}

static int write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? errno : EIO;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

#define CREATE_FLAGS (O_WRONLY | O_CREAT | O_EXCL | O_DSYNC | O_NOFOLLOW | O_CLOEXEC)

/* The create's descriptor is kept for the heartbeat: on a multi-user share
 * the sidecar may appear owned by the server's account, and a reopen for
 * writing fails (EACCES) where the create's descriptor still writes.  One
 * descriptor per held sidecar, as long as the process has plenty to spare:
 * beyond that the heartbeat reopens by name, as it must without one. */
static bool may_keep_descriptor(int fd)
{
	struct rlimit lim;
	if (getrlimit(RLIMIT_NOFILE, &lim) != 0)
		return false;
	if (lim.rlim_cur == RLIM_INFINITY)
		return true;
	rlim_t spare = lim.rlim_cur / 8 > 32 ? lim.rlim_cur / 8 : 32;
	return (rlim_t)fd + spare < lim.rlim_cur;
}

void sidecar_forget(struct sidecar_hold *h)
{
	if (h->fd >= 0)
		sys_close(h->fd);
	h->fd = -1;
}

int sidecar_create(struct sidecar_hold *h, const struct sidecar_holder *who)
{
	h->fd = -1;
	int fd = open(h->path, CREATE_FLAGS, 0644);
	if (fd < 0) {
		int err = errno;
		/* sshfs reports an exclusive create that lost a race as EPERM (SFTP v3
		 * has no "file exists" status): if the name exists now, it is held;
		 * if it is already gone again, the race is over: try once more. */
		struct stat st;
		if (err != EEXIST && lstat(h->path, &st) == 0)
			return EEXIST;
		if (err == EPERM)
			fd = open(h->path, CREATE_FLAGS, 0644);
		if (fd < 0)
			return err == EPERM && errno == EEXIST ? EEXIST : err;
	}

	char host[256] = "unknown";
	gethostname(host, sizeof host - 1);
	char content[SIDECAR_TOKEN_MAX + 640];
	/* The heartbeat comes last, fixed width, so that it can be rewritten in
	 * place without changing the file's size. */
	int len = snprintf(content, sizeof content,
			   "%s\nuuidlock=1\nhost=%s\nhost_id=%s\nkeeper_pid=%ld\nkeeper_start=%llu\n"
			   "pid=%ld\nacquired=%lld\nlease=%lld.%03lld\nkeeper_id=%s\nkeeper_dir=%s\n"
			   "heartbeat=%0*d\n",
			   h->token, host, who->host_id, who->keeper_pid, who->keeper_start, who->pid,
			   (long long)time(NULL), (long long)(who->lease_ns / NS_PER_SEC),
			   (long long)(who->lease_ns % NS_PER_SEC / NS_PER_MS), who->keeper_id, who->keeper_dir,
			   HEARTBEAT_DIGITS, 0);

	int err = write_all(fd, content, (size_t)len); /* synchronous: O_DSYNC */
	if (err == 0 && may_keep_descriptor(fd)) {
		h->fd = fd;
		return 0;
	}
	if (sys_close(fd) != 0 && err == 0)
		err = errno;
	if (err != 0) {
		/* We created it exclusively, so the half-written file is ours to remove:
		 * leaving it would wedge every client. */
		unlink(h->path);
		return err == EEXIST ? EIO : err;
	}
	return 0;
}

ssize_t sidecar_read_head(const char *path, char *buf, size_t cap)
{
	int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return -errno;
	size_t len = 0;
	while (len < cap - 1) {
		ssize_t n = read(fd, buf + len, cap - 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int err = errno;
			sys_close(fd);
			return -err;
		}
		if (n == 0)
			break;
		len += (size_t)n;
		/* A short read that ends a line is the end of a small file: spare the
		 * share the round trip that would only say so. */
		if (len < cap - 1 && buf[len - 1] == '\n')
			break;
	}
	sys_close(fd);
	buf[len] = '\0';
	return (ssize_t)len;
}

static bool token_matches(const char *head, size_t len, const char *token);

int sidecar_verify(const struct sidecar_hold *h)
{
	char head[SIDECAR_HEAD_MAX];
	ssize_t n = sidecar_read_head(h->path, head, sizeof head);
	if (n < 0)
		return (int)-n;
	return token_matches(head, (size_t)n, h->token) ? 0 : EEXIST;
}

int sidecar_release(struct sidecar_hold *h)
{
	int err = sidecar_verify(h);
	/* Between our re-read and the unlink another client could only have
	 * replaced the file by deleting ours first, which the protocol forbids
	 * while our token is in it. */
	if (err == 0 && unlink(h->path) != 0)
		err = errno;
	if (err == 0 || err == EEXIST || err == ENOENT)
		sidecar_forget(h);
	return err;
}

static void want_path(const char *sidecar, char *out, size_t cap)
{
	snprintf(out, cap, "%s.want", sidecar);
}

int sidecar_want(const char *sidecar)
{
	char path[PATH_MAX + 8];
	want_path(sidecar, path, sizeof path);
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (fd < 0)
		return errno;
	sys_close(fd);
	return 0;
}

bool sidecar_wanted(const char *sidecar)
{
	char path[PATH_MAX + 8];
	want_path(sidecar, path, sizeof path);
	return access(path, F_OK) == 0;
}

void sidecar_unwant(const char *sidecar)
{
	char path[PATH_MAX + 8];
	want_path(sidecar, path, sizeof path);
	unlink(path);
}

static bool token_matches(const char *head, size_t len, const char *token)
{
	size_t first_line = strcspn(head, "\n");
	size_t token_len = strlen(token);
	return first_line == token_len && len >= token_len && memcmp(head, token, token_len) == 0;
}

/* Writes beat into the heartbeat field of head (what the sidecar holds, read
 * just now) through fd, if head is ours.  0, EEXIST, or the write's errno. */
static int write_beat(int fd, const char *head, size_t n, const char *token, unsigned long long beat)
{
	const char *field = strstr(head, "\nheartbeat=");
	if (!token_matches(head, n, token) || field == NULL)
		return EEXIST;
	char digits[HEARTBEAT_DIGITS + 1];
	snprintf(digits, sizeof digits, "%0*llu", HEARTBEAT_DIGITS, beat % 100000000000000000ULL);
	off_t at = (off_t)(field - head) + (off_t)strlen("\nheartbeat=");
	errno = 0;
	if (pwrite(fd, digits, HEARTBEAT_DIGITS, at) != HEARTBEAT_DIGITS)
		return errno ? errno : EIO;
	return 0;
}

/* Without the create's descriptor: the check and the write go through one
 * descriptor opened by name, so whatever was created at this path since,
 * we can only ever write into our own. */
static int heartbeat_by_name(const struct sidecar_hold *h, unsigned long long beat)
{
	int fd = open(h->path, O_RDWR | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return errno;
	char head[SIDECAR_HEAD_MAX];
	ssize_t n = pread(fd, head, sizeof head - 1, 0);
	int err = n < 0 ? errno : 0;
	if (err == 0) {
		head[n] = '\0';
		err = write_beat(fd, head, (size_t)n, h->token, beat);
	}
	if (sys_close(fd) != 0 && err == 0)
		err = errno;
	return err;
}

int sidecar_heartbeat(const struct sidecar_hold *h, unsigned long long beat)
{
	if (h->fd < 0)
		return heartbeat_by_name(h, beat);
	/* The name must still hold our token (a deleted or replaced sidecar is a
	 * lost lock, and the create's descriptor would still read our file); the
	 * write goes through the create's descriptor, so whatever the name leads
	 * to by the time it lands, it lands in our own file. */
	char head[SIDECAR_HEAD_MAX];
	ssize_t n = sidecar_read_head(h->path, head, sizeof head);
	if (n < 0)
		return (int)-n;
	return write_beat(h->fd, head, (size_t)n, h->token, beat);
}

bool sidecar_field(const char *head, size_t len, const char *key, char *out, size_t cap)
{
	size_t klen = strlen(key);
	for (size_t i = 0; i < len;) {
		const char *line = head + i;
		const char *nl = memchr(line, '\n', len - i);
		size_t line_len = nl ? (size_t)(nl - line) : len - i;
		if (line_len > klen && memcmp(line, key, klen) == 0 && line[klen] == '=') {
			size_t vlen = line_len - klen - 1;
			if (vlen >= cap)
				return false;
			memcpy(out, line + klen + 1, vlen);
			out[vlen] = '\0';
			return strlen(out) == vlen; /* no NUL bytes inside */
		}
		i += line_len + 1;
	}
	return false;
}

static bool field_number(const char *head, size_t len, const char *key, unsigned long long *out)
{
	char text[32], *end;
	if (!sidecar_field(head, len, key, text, sizeof text) || text[0] < '0' || text[0] > '9')
		return false;
	errno = 0;
	*out = strtoull(text, &end, 10);
	return *end == '\0' && errno == 0;
}

/* One line ending in a newline and nothing after it: our first write step
 * cut off right after the token (uuid-filelock's token has no newline). */
static bool only_first_line(const char *head, size_t len)
{
	return len > 0 && memchr(head, '\n', len) == head + len - 1;
}

void sidecar_parse(const char *head, size_t len, struct sidecar_info *info)
{
	*info = (struct sidecar_info){ 0 };
	char text[32];
	unsigned long long v;
	info->ours_format = sidecar_field(head, len, "uuidlock", text, sizeof text) && strcmp(text, "1") == 0;
	info->half_written = len == 0 || only_first_line(head, len);
	if (!info->ours_format)
		return;
	sidecar_field(head, len, "host_id", info->host_id, sizeof info->host_id);
	if (field_number(head, len, "keeper_pid", &v) && v <= INT32_MAX)
		info->keeper_pid = (long)v;
	if (field_number(head, len, "keeper_start", &v))
		info->keeper_start = v;
	if (!sidecar_field(head, len, "keeper_id", info->keeper_id, sizeof info->keeper_id))
		info->keeper_id[0] = '\0';
	if (!sidecar_field(head, len, "keeper_dir", info->keeper_dir, sizeof info->keeper_dir))
		info->keeper_dir[0] = '\0';
	if (field_number(head, len, "pid", &v) && v <= INT32_MAX)
		info->pid = (long)v;
	/* No keeper sets a longer lease, and whoever waits adds it to a clock. */
	int64_t lease, longest = CONFIG_LEASE_SECONDS_MAX * NS_PER_SEC;
	if (sidecar_field(head, len, "lease", text, sizeof text) && parse_seconds(text, &lease) && lease > 0)
		info->lease_ns = lease < longest ? lease : longest;
	info->has_heartbeat = field_number(head, len, "heartbeat", &info->heartbeat);
	info->half_written = !info->has_heartbeat; /* the heartbeat line comes last */
}

/* Why breaking can't admit two holders.  Holding takes an exclusive create
 * plus a verification after a delay; breaking only takes away.  So the one
 * danger is taking away a sidecar that is not the stale one:
 *   - another breaker: breakers take the guard F.break first (exclusive
 *     create), and re-read F under it; the second finds either the guard or
 *     a content that is no longer the stale one, and stops;
 *   - the holder coming back: it rewrote the heartbeat, so the re-read under
 *     the guard differs, and we stop;
 *   - a fresh sidecar created in the instant between our re-read and our
 *     move: we give up if that instant grew to half our own verification
 *     delay, and if the move still took it, step 3 below puts it back
 *     (its creator then verifies it, or found it gone and retries: the
 *     sidecar put back is nobody's, and is broken as a copy or by lease).
 *
 * A breaker stalled at any point.  The last argument bounds when our move
 * is *issued*, not when it *lands*: retransmissions, a suspended laptop or
 * an NFS hard mount can deliver it seconds later, after our guard was
 * judged stale and removed, another host broke the sidecar and a new holder
 * verified its own.  A late unlink by name would delete that new holder's
 * sidecar, and a third host would get in beside it.  So we never unlink F:
 *   1. rename F to F.stale.<our uuid>, a name nobody else ever uses (rename
 *      within one directory works on every share; its target doesn't exist);
 *   2. re-read the moved file.  If it is exactly the content judged stale,
 *      the file our rename moved -- whenever it landed -- was the stale one
 *      (a token is unique, and any beat of its holder changes the content):
 *      delete it by its unique name, which no late delete can get wrong;
 *   3. otherwise we moved someone's live sidecar: put it back with link(),
 *      which never replaces a file (rename back would destroy a sidecar
 *      created meanwhile; only where link() is not supported do we rename
 *      back, and only if F is still free).  The holder's next heartbeat
 *      reopens F by name and finds its own token: it never knew.
 * What remains: if another host creates F in the round trips between our
 * late move and our link, the moved holder has lost its lock (as with a
 * hand deleting it); it says so at its next heartbeat, and we log it.  A
 * late link (step 3) can only recreate a sidecar nobody holds any more:
 * respected like any other, broken as a copy or after a lease.  Breaker
 * guards are removed by plain unlink: a late one lets two breakers work at
 * once, which steps 1-3 make harmless too. */

/* Step 3: put back a live sidecar we moved aside by mistake.  A share
 * without hard links gets it renamed back if the name is still free: a
 * sidecar created in the instant between our look and our rename is still
 * in its verification delay, which then fails. */
static int put_back(const char *path, const char *aside)
{
	struct stat st;
	if (link(aside, path) == 0)
		unlink(aside);
	else if (errno == EEXIST || lstat(path, &st) == 0 || errno != ENOENT || rename(aside, path) != 0)
		return ENOTRECOVERABLE; /* left at aside, for a human to see */
	return ECANCELED;
}

/* Steps 1-3: moves F aside and deletes it only if it was the stale one. */
static int move_aside_and_check(const char *path, const char *judged, size_t judged_len, const char *token)
{
	char aside[PATH_MAX + 64], head[SIDECAR_HEAD_MAX];
	size_t tlen = strlen(token);
	snprintf(aside, sizeof aside, "%s.stale.%s", path, tlen > 36 ? token + tlen - 36 : token);
	if (rename(path, aside) != 0)
		return errno == ENOENT ? 0 : errno; /* already gone: nothing to break */
	ssize_t n = sidecar_read_head(aside, head, sizeof head);
	if (n == -ENOENT)
		return 0; /* someone deleted what we moved: it is gone either way */
	if (n >= 0 && (size_t)n == judged_len && memcmp(head, judged, judged_len) == 0) {
		unlink(aside);
		return 0;
	}
	return put_back(path, aside);
}

int sidecar_break(const char *path, const char *judged, size_t judged_len, struct sidecar_hold *guard,
		  const struct sidecar_holder *who, int64_t verify_delay_ns)
{
	snprintf(guard->path, sizeof guard->path, "%s.break", path);
	int err = sidecar_create(guard, who);
	if (err == EEXIST)
		return EBUSY;
	if (err != 0)
		return err;
	char head[SIDECAR_HEAD_MAX];
	int64_t read_at = mono_ns();
	ssize_t n = sidecar_read_head(path, head, sizeof head);
	if (n < 0)
		err = (int)-n == ENOENT ? 0 : (int)-n; /* already gone: nothing to break */
	else if ((size_t)n != judged_len || memcmp(head, judged, judged_len) != 0)
		err = EAGAIN;
	else if (mono_ns() - read_at > verify_delay_ns / 2)
		err = ETIMEDOUT;
	else
		err = move_aside_and_check(path, judged, judged_len, guard->token);
	sidecar_release(guard);
	sidecar_forget(guard); /* even if the guard couldn't be released */
	return err;
}

void sidecar_describe(const char *path, char *out, size_t cap)
{
	char head[SIDECAR_HEAD_MAX];
	ssize_t n = sidecar_read_head(path, head, sizeof head);
	if (n < 0) {
		snprintf(out, cap, "%s", strerror((int)-n));
		return;
	}
	/* Fold our key=value lines onto one line; show foreign content as is. */
	size_t o = 0;
	for (ssize_t i = 0; i < n && o + 2 < cap && i < 200; i++)
		out[o++] = (head[i] == '\n') ? ' ' : (head[i] >= ' ' && head[i] < 127 ? head[i] : '?');
	while (o > 0 && out[o - 1] == ' ')
		o--;
	out[o] = '\0';
}
