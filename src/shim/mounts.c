#include "mounts.h"

#include "../core/log.h"
#include "../core/mountinfo.h"
#include "../core/netfs.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#define MAX_MOUNTS 2048

struct mount_entry {
	int id, parent;
	bool managed;
	bool sshfs;
	bool share; /* a network or FUSE filesystem */
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
static unsigned refreshes; /* see mounts_generation */

static void forget_unlisted(void);

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

static bool resolved(const struct managed_dir *d)
{
	return __atomic_load_n(&d->state, __ATOMIC_ACQUIRE) == DIR_RESOLVED;
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

static void add_mount(const struct mountinfo_line *m, void *arg)
{
	struct parse *p = arg;
	if (p->t->n == MAX_MOUNTS)
		return;
	struct mount_entry *e = &p->t->e[p->t->n];
	e->id = m->id;
	e->parent = m->parent;
	e->dev = any_device(m->type) ? 0 : m->dev;
	e->managed = false;
	e->sshfs = strcmp(m->type, "fuse.sshfs") == 0;
	e->share = netfs_fstype(m->type);
	for (unsigned i = 0; i < p->c->ndirs && !kernel_fs(m->type); i++) {
		const struct managed_dir *d = &p->c->dirs[i];
		if (!resolved(d))
			continue; /* one a call on that share resolves (and then refreshes) */
		size_t len = strlen(m->mount_point);
		if (at_or_below(m->mount_point, d))
			e->managed = true;
		if (contains_dir(m->mount_point, d) && len >= p->best_len[i]) {
			p->best_len[i] = len;
			p->best[i] = (int)p->t->n;
		}
	}
	p->t->n++;
}

static void fill_table(const struct config *c, struct mount_table *t)
{
	struct parse p = { .c = c, .t = t };
	for (unsigned i = 0; i < CONFIG_MAX_DIRS; i++)
		p.best[i] = -1;
	static bool said;
	t->n = 0;
	t->unreadable = !mountinfo_each(add_mount, &p);
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
	__atomic_add_fetch(&refreshes, 1, __ATOMIC_RELEASE);
	forget_unlisted();
	__atomic_store_n(&refresher, 0, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&refresh_lock);
	errno = saved;
}

/* The entry of a mount, in a copy: the table may be rewritten meanwhile. */
static bool entry_of(int mnt_id, uint64_t dev, struct mount_entry *out)
{
	for (;;) {
		const struct mount_table *t = &tables[__atomic_load_n(&current, __ATOMIC_ACQUIRE)];
		unsigned gen = __atomic_load_n(&t->gen, __ATOMIC_ACQUIRE);
		if (gen % 2 != 0)
			continue;
		bool found = false;
		for (unsigned i = 0; i < t->n && !found; i++)
			if (t->e[i].id == mnt_id && (t->e[i].dev == 0 || t->e[i].dev == dev)) {
				*out = t->e[i];
				found = true;
			}
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		if (__atomic_load_n(&t->gen, __ATOMIC_RELAXED) == gen)
			return found;
	}
}

struct point_of {
	int id;
	char path[PATH_MAX];
};

static void find_point(const struct mountinfo_line *m, void *arg)
{
	struct point_of *p = arg;
	if (m->id == p->id)
		snprintf(p->path, sizeof p->path, "%s", m->mount_point);
}

/* Mounts already judged by mounts_warn_if_caching (more: judged again). */
static struct { int id; uint64_t dev; } judged[32];
static unsigned njudged;

static bool judged_before(int mnt_id, uint64_t dev)
{
	for (unsigned i = 0; i < njudged; i++)
		if (judged[i].id == mnt_id && judged[i].dev == dev)
			return true;
	if (njudged < sizeof judged / sizeof judged[0])
		judged[njudged++] = (typeof(judged[0])){ mnt_id, dev };
	return false;
}

void mounts_warn_if_caching(int mnt_id, uint64_t dev)
{
	struct mount_entry e;
	if (mnt_id == MOUNT_ID_UNKNOWN || !entry_of(mnt_id, dev, &e) || !e.sshfs)
		return;
	pid_t me = gettid();
	if (__atomic_load_n(&refresher, __ATOMIC_ACQUIRE) == me)
		return;
	int saved = errno;
	pthread_mutex_lock(&refresh_lock);
	__atomic_store_n(&refresher, me, __ATOMIC_RELEASE);
	static struct point_of point; /* under refresh_lock, like mountinfo's buffer */
	point.id = mnt_id;
	point.path[0] = '\0';
	if (!judged_before(mnt_id, dev) && mountinfo_each(find_point, &point) && point.path[0] != '\0' &&
	    sshfs_caches(point.path) == 1)
		log_warn("%s is an sshfs mount with sshfs's own cache on: another client's changes to a "
			 "locked file can stay invisible for up to 20 s (lost updates, corrupt databases); "
			 "mount it with -o %s", point.path, SSHFS_SAFE_OPTIONS);
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

/* Mounts that are still unknown, or still unmanaged though a file below a
 * managed directory is on them, right after a refresh: internal ones (a
 * memfd's), another namespace's, a detached one, kernel filesystems below a
 * managed "/".  Re-reading the table at every lock on them would find
 * nothing new; every refresh forgets them (the numbers may be reused). */
#define UNLISTED_SLOTS 8
static uint64_t unlisted[UNLISTED_SLOTS];
static unsigned next_unlisted;

static uint64_t mount_key(int mnt_id, uint64_t dev)
{
	return ((uint64_t)(unsigned)mnt_id * 0x9E3779B97F4A7C15ULL) ^ dev ^ 1; /* never 0 */
}

static bool unlisted_before(uint64_t key)
{
	for (unsigned i = 0; i < UNLISTED_SLOTS; i++)
		if (__atomic_load_n(&unlisted[i], __ATOMIC_RELAXED) == key)
			return true;
	return false;
}

static void remember_unlisted(uint64_t key)
{
	unsigned slot = __atomic_fetch_add(&next_unlisted, 1, __ATOMIC_RELAXED) % UNLISTED_SLOTS;
	__atomic_store_n(&unlisted[slot], key, __ATOMIC_RELAXED);
}

static void forget_unlisted(void)
{
	for (unsigned i = 0; i < UNLISTED_SLOTS; i++)
		__atomic_store_n(&unlisted[i], 0, __ATOMIC_RELAXED);
}

bool mounts_managed(const struct config *c, int mnt_id, uint64_t dev)
{
	if (mnt_id == MOUNT_ID_UNKNOWN)
		return false;
	enum lookup found = lookup(mnt_id, dev);
	uint64_t key = mount_key(mnt_id, dev);
	if (found == UNKNOWN && !unlisted_before(key)) { /* mounted (or remounted) since we read the table */
		mounts_refresh(c);
		if ((found = lookup(mnt_id, dev)) == UNKNOWN)
			remember_unlisted(key);
	}
	return found == MANAGED;
}

bool mounts_numbers_reusable(int mnt_id, uint64_t dev)
{
	return mnt_id != MOUNT_ID_UNKNOWN && major(dev) == 0;
}

bool mounts_recheck(const struct config *c, int mnt_id, uint64_t dev)
{
	uint64_t key = mount_key(mnt_id, dev);
	if (mnt_id == MOUNT_ID_UNKNOWN || unlisted_before(key))
		return false;
	mounts_refresh(c);
	bool managed = lookup(mnt_id, dev) == MANAGED;
	if (!managed)
		remember_unlisted(key);
	return managed;
}

unsigned mounts_generation(void)
{
	return __atomic_load_n(&refreshes, __ATOMIC_ACQUIRE);
}

static const struct mount_entry *entry_by_id(const struct mount_table *t, int mnt_id)
{
	for (unsigned i = 0; i < t->n; i++)
		if (t->e[i].id == mnt_id)
			return &t->e[i];
	return NULL;
}

/* Up the mount tree from the file's mount: is one of them the share? */
static bool leads_through(const struct mount_table *t, int mnt_id, uint64_t dev, uint64_t share_dev)
{
	const struct mount_entry *e = entry_by_id(t, mnt_id);
	if (e == NULL || (e->dev != 0 && e->dev != dev))
		return false; /* not this mount: one of the same numbers that is gone */
	for (unsigned hops = 0; e != NULL && hops < MAX_MOUNTS; hops++) {
		if (e->share && e->dev == share_dev)
			return true;
		e = e->parent == e->id ? NULL : entry_by_id(t, e->parent);
	}
	return false;
}

bool mounts_leads_through(int mnt_id, uint64_t dev, uint64_t share_dev)
{
	if (mnt_id == MOUNT_ID_UNKNOWN)
		return false;
	for (;;) {
		const struct mount_table *t = &tables[__atomic_load_n(&current, __ATOMIC_ACQUIRE)];
		unsigned gen = __atomic_load_n(&t->gen, __ATOMIC_ACQUIRE);
		if (gen % 2 != 0)
			continue;
		bool found = leads_through(t, mnt_id, dev, share_dev);
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		if (__atomic_load_n(&t->gen, __ATOMIC_RELAXED) == gen)
			return found;
	}
}

/* The mount a path is on: the last of those with the longest mount point at
 * or above it. */
struct serving {
	const char *path;
	size_t best;
	bool found, share;
	uint64_t dev;
};

static void find_serving(const struct mountinfo_line *m, void *arg)
{
	struct serving *s = arg;
	size_t n = strlen(m->mount_point);
	bool above = n == 1 || (strncmp(s->path, m->mount_point, n) == 0 && (s->path[n] == '\0' || s->path[n] == '/'));
	if (above && (!s->found || n >= s->best))
		*s = (struct serving){ s->path, n, true, netfs_fstype(m->type), m->dev };
}

enum reach mounts_reach(const char *path, uint64_t dev, int mnt_id, uint64_t *share_dev)
{
	pid_t me = gettid();
	if (__atomic_load_n(&refresher, __ATOMIC_ACQUIRE) == me)
		return REACH_BUSY; /* a signal handler's lock call during our own reading */
	int saved = errno;
	struct serving s = { .path = path };
	pthread_mutex_lock(&refresh_lock);
	__atomic_store_n(&refresher, me, __ATOMIC_RELEASE);
	bool read = mountinfo_each(find_serving, &s);
	__atomic_store_n(&refresher, 0, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&refresh_lock);
	errno = saved;
	if (!read || !s.found || !s.share)
		return REACH_FREE; /* without a mount table we can't tell: look, as always */
	*share_dev = s.dev;
	if (s.dev != dev && !mounts_leads_through(mnt_id, dev, s.dev))
		return REACH_OTHER_SHARE;
	return s.best == strlen(path) ? REACH_SHARE_ROOT : REACH_FREE;
}
