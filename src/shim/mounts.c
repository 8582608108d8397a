#include "mounts.h"

#include "../core/log.h"
#include "../core/sys.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#define MAX_MOUNTS 2048

struct mount_entry {
	int id;
	bool managed;
	uint64_t dev; /* 0: the files report devices of their own (see any_device) */
};

/* Two tables: a refresh fills the one nobody is sent to, then switches.  A
 * reader checks that its table's generation didn't change while it looked
 * (odd = being written), so it never waits for a writer -- not even for
 * itself, when a signal handler's lock call interrupts a refresh. */
struct mount_table {
	unsigned gen;
	bool loaded;
	bool unreadable; /* no mountinfo: only the managed directories' own devices count */
	unsigned n;
	struct mount_entry e[MAX_MOUNTS];
};
static struct mount_table tables[2];
static unsigned current;

static pthread_mutex_t refresh_lock = PTHREAD_MUTEX_INITIALIZER;
static pid_t refresher; /* the thread refreshing, 0 if none */

/* Kernel filesystems where no sidecar can live, even below a managed
 * directory (UUIDLOCK_PATHS=/ must not make every lock on /proc fail). */
static bool kernel_fs(const char *type)
{
	static const char *const types[] = {
		"proc",	      "sysfs",	  "devtmpfs", "devpts",	 "cgroup",    "cgroup2", "securityfs",
		"debugfs",    "tracefs",  "pstore",	  "bpf",	 "configfs",  "fusectl", "mqueue",
		"hugetlbfs",  "autofs",	  "binfmt_misc", "efivarfs", "rpc_pipefs", "nsfs", "selinuxfs",
	};
	for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
		if (strcmp(type, types[i]) == 0)
			return true;
	return false;
}

/* Filesystems whose files report other device numbers than their mount
 * (btrfs subvolumes, overlayfs's lower layers): known by mount id alone. */
static bool any_device(const char *type)
{
	return strcmp(type, "btrfs") == 0 || strcmp(type, "overlay") == 0 || strcmp(type, "bcachefs") == 0;
}

/* mountinfo writes ' ', '\t', '\n' and '\\' in paths as \ooo. */
static void unescape(char *s)
{
	char *out = s;
	for (; *s != '\0'; s++) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0' && s[2] <= '7' && s[3] >= '0' &&
		    s[3] <= '7') {
			*out++ = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0'));
			s += 3;
		} else {
			*out++ = *s;
		}
	}
	*out = '\0';
}

/* Is path at or below dir (a resolved managed directory)? */
static bool at_or_below(const char *path, const struct managed_dir *d)
{
	return strncmp(path, d->path, d->len) == 0 && (path[d->len] == '\0' || path[d->len] == '/');
}

/* Does the managed directory d live below mount point mp? */
static bool contains_dir(const char *mp, const struct managed_dir *d)
{
	size_t n = strlen(mp);
	if (n == 1)
		return true; /* "/" */
	return strncmp(d->path, mp, n) == 0 && (d->path[n] == '\0' || d->path[n] == '/');
}

struct parse {
	const struct config *c;
	struct mount_table *t;
	size_t best_len[CONFIG_MAX_DIRS]; /* the mount each directory lives on: the longest */
	int best[CONFIG_MAX_DIRS];        /* mount point above it, the last of equals */
};

/* One line: "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - TYPE SOURCE SUPEROPTS". */
static void parse_line(struct parse *p, char *line)
{
	char *field[6], *save = NULL;
	int n = 0;
	for (char *f = line; n < 6 && (field[n] = strtok_r(f, " ", &save)) != NULL; f = NULL)
		n++;
	if (n < 6 || p->t->n == MAX_MOUNTS)
		return;
	char *type = NULL, *f;
	while ((f = strtok_r(NULL, " ", &save)) != NULL)
		if (strcmp(f, "-") == 0) {
			type = strtok_r(NULL, " ", &save);
			break;
		}
	unsigned major, minor;
	if (type == NULL || sscanf(field[2], "%u:%u", &major, &minor) != 2)
		return;
	char *mp = field[4];
	unescape(mp);
	struct mount_entry *e = &p->t->e[p->t->n];
	e->id = atoi(field[0]);
	e->dev = any_device(type) ? 0 : (uint64_t)makedev(major, minor);
	e->managed = false;
	for (unsigned i = 0; i < p->c->ndirs && !kernel_fs(type); i++) {
		const struct managed_dir *d = &p->c->dirs[i];
		if (at_or_below(mp, d))
			e->managed = true;
		if (contains_dir(mp, d) && strlen(mp) >= p->best_len[i]) {
			p->best_len[i] = strlen(mp);
			p->best[i] = (int)p->t->n;
		}
	}
	p->t->n++;
}

/* Feeds mountinfo to parse_line, line by line, through a fixed buffer. */
static bool read_mountinfo(struct parse *p)
{
	static char buf[16384]; /* only the refresher, under refresh_lock */
	int fd = open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	size_t have = 0;
	bool ok = true, skipping = false;
	for (;;) {
		ssize_t got = read(fd, buf + have, sizeof buf - 1 - have);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0) {
			ok = false;
			break;
		}
		if (got == 0)
			break;
		have += (size_t)got;
		buf[have] = '\0';
		char *line = buf, *nl;
		while ((nl = strchr(line, '\n')) != NULL) {
			*nl = '\0';
			if (!skipping)
				parse_line(p, line);
			skipping = false;
			line = nl + 1;
		}
		have = strlen(line);
		memmove(buf, line, have);
		if (have == sizeof buf - 1) { /* a line longer than the buffer: no path of ours */
			skipping = true;
			have = 0;
		}
	}
	sys_close(fd);
	return ok;
}

static void fill_table(const struct config *c, struct mount_table *t)
{
	struct parse p = { .c = c, .t = t };
	for (unsigned i = 0; i < CONFIG_MAX_DIRS; i++)
		p.best[i] = -1;
	static bool said;
	t->n = 0;
	t->unreadable = !read_mountinfo(&p);
	if (t->unreadable && !said)
		log_warn("cannot read /proc/self/mountinfo (%s): filesystems mounted below managed "
			 "directories are not managed", strerror(errno));
	for (unsigned i = 0; i < c->ndirs; i++)
		if (p.best[i] >= 0)
			t->e[p.best[i]].managed = true;
	if (t->n == MAX_MOUNTS && !said)
		log_warn("more than %d mounts: those after them are not managed", MAX_MOUNTS);
	said |= t->unreadable || t->n == MAX_MOUNTS;
	t->loaded = true;
}

static void forget_refresh_in_child(void)
{
	pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
	refresh_lock = fresh; /* a thread of the parent may have held it: it doesn't exist here */
	refresher = 0;
	for (int i = 0; i < 2; i++) /* a table it was writing: never current, but keep gen even */
		if (tables[i].gen % 2 != 0)
			tables[i].gen++;
}

void mounts_refresh(const struct config *c)
{
	pid_t me = gettid();
	if (__atomic_load_n(&refresher, __ATOMIC_ACQUIRE) == me)
		return; /* a signal handler's lock call during our own refresh */
	int saved = errno;
	pthread_mutex_lock(&refresh_lock);
	static bool atfork_registered; /* here, not at start-up: most programs never get here */
	if (!atfork_registered)
		atfork_registered = pthread_atfork(NULL, NULL, forget_refresh_in_child) == 0;
	__atomic_store_n(&refresher, me, __ATOMIC_RELEASE);
	unsigned spare = !__atomic_load_n(&current, __ATOMIC_ACQUIRE);
	struct mount_table *t = &tables[spare];
	__atomic_add_fetch(&t->gen, 1, __ATOMIC_ACQ_REL); /* odd: being written */
	fill_table(c, t);
	__atomic_add_fetch(&t->gen, 1, __ATOMIC_RELEASE);
	__atomic_store_n(&current, spare, __ATOMIC_RELEASE);
	__atomic_store_n(&refresher, 0, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&refresh_lock);
	errno = saved;
}

enum lookup { UNKNOWN, UNMANAGED, MANAGED };

static enum lookup find(const struct mount_table *t, int mnt_id, uint64_t dev)
{
	if (!t->loaded)
		return UNKNOWN;
	for (unsigned i = 0; i < t->n; i++)
		if (t->e[i].id == mnt_id)
			return t->e[i].dev != 0 && t->e[i].dev != dev ? UNKNOWN : t->e[i].managed ? MANAGED : UNMANAGED;
	/* Unreadable or full: re-reading at every lock call would change nothing. */
	return t->unreadable || t->n == MAX_MOUNTS ? UNMANAGED : UNKNOWN;
}

static enum lookup lookup(int mnt_id, uint64_t dev)
{
	for (;;) {
		const struct mount_table *t = &tables[__atomic_load_n(&current, __ATOMIC_ACQUIRE)];
		unsigned gen = __atomic_load_n(&t->gen, __ATOMIC_ACQUIRE);
		if (gen % 2 != 0)
			continue; /* switched and rewritten since we loaded current: look again */
		enum lookup found = find(t, mnt_id, dev);
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		if (__atomic_load_n(&t->gen, __ATOMIC_RELAXED) == gen)
			return found;
	}
}

bool mounts_managed(const struct config *c, int mnt_id, uint64_t dev)
{
	if (mnt_id == MOUNT_ID_UNKNOWN)
		return false;
	enum lookup found = lookup(mnt_id, dev);
	if (found == UNKNOWN) { /* mounted (or remounted) since we last read the table */
		mounts_refresh(c);
		found = lookup(mnt_id, dev);
	}
	return found == MANAGED;
}

