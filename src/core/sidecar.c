/* The UUID sidecar protocol (as in the Python package uuid-filelock).
 *
 * A lock on file F across the clients of a share is the existence of the
 * sidecar F + UUIDLOCK_SUFFIX holding the holder's token:
 *
 *   acquire  1. open(sidecar, O_CREAT|O_EXCL): only one client can create it
 *               (the first guard);
 *            2. write "<prefix><uuid>\n" and key=value lines naming the holder,
 *               fsync, close;
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
 * This file does the steps; the keeper (src/keeper) sequences them in time,
 * because a host's sidecar must outlive the processes that asked for it. */
#include "sidecar.h"

#include "sys.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
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

static void read_boot_id(char *out, size_t cap)
{
	ssize_t n = sidecar_read_head("/proc/sys/kernel/random/boot_id", out, cap);
	if (n <= 0)
		snprintf(out, cap, "unknown");
	else
		out[strcspn(out, "\n")] = '\0';
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

int sidecar_create(const struct sidecar_hold *h, const struct sidecar_holder *who)
{
	int fd = open(h->path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (fd < 0)
		return errno;

	char host[256] = "unknown", boot_id[64];
	gethostname(host, sizeof host - 1);
	read_boot_id(boot_id, sizeof boot_id);
	char content[SIDECAR_TOKEN_MAX + 512];
	int len = snprintf(content, sizeof content,
			   "%s\nhost=%s\nboot_id=%s\npid=%ld\nkeeper_pid=%ld\nacquired=%lld\n",
			   h->token, host, boot_id, who->pid, who->keeper_pid, (long long)time(NULL));

	int err = write_all(fd, content, (size_t)len);
	if (err == 0 && fsync(fd) != 0)
		err = errno;
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
	}
	sys_close(fd);
	buf[len] = '\0';
	return (ssize_t)len;
}

int sidecar_verify(const struct sidecar_hold *h)
{
	char head[SIDECAR_HEAD_MAX];
	ssize_t n = sidecar_read_head(h->path, head, sizeof head);
	if (n < 0)
		return (int)-n;
	size_t first_line = strcspn(head, "\n");
	size_t token_len = strlen(h->token);
	if (first_line == token_len && memcmp(head, h->token, token_len) == 0)
		return 0;
	return EEXIST;
}

int sidecar_release(const struct sidecar_hold *h)
{
	int err = sidecar_verify(h);
	if (err != 0)
		return err;
	/* Between our re-read and the unlink another client could only have
	 * replaced the file by deleting ours first, which the protocol forbids
	 * while our token is in it. */
	if (unlink(h->path) != 0)
		return errno;
	return 0;
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
