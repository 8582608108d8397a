#include "dirs.h"

#include "mounts.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_LINKS 40 /* as the kernel allows in one path */

/* A directory's state, read consistently: its version is odd while a
 * publisher changes it (see publish). */
struct view {
	int state;
	uint64_t share_dev;
	unsigned mounts_gen, version;
};

/* Publishing is a few stores, under publish_lock; nobody waits for a walk. */
static pthread_mutex_t publish_lock = PTHREAD_MUTEX_INITIALIZER;
static pid_t publisher; /* the thread publishing, 0 if none */
static struct config *published; /* whose directories (for a child of a fork) */

bool dirs_resolved(const struct managed_dir *d)
{
	return __atomic_load_n(&d->state, __ATOMIC_ACQUIRE) == DIR_RESOLVED;
}

static bool read_view(const struct managed_dir *d, struct view *v)
{
	for (;;) {
		unsigned version = __atomic_load_n(&d->version, __ATOMIC_ACQUIRE);
		if (version % 2 != 0) {
			if (__atomic_load_n(&publisher, __ATOMIC_ACQUIRE) == gettid())
				return false; /* a signal handler's call interrupted our own publishing */
			continue; /* another thread's: a few stores */
		}
		v->state = __atomic_load_n(&d->state, __ATOMIC_RELAXED);
		v->share_dev = __atomic_load_n(&d->share_dev, __ATOMIC_RELAXED);
		v->mounts_gen = __atomic_load_n(&d->mounts_gen, __ATOMIC_RELAXED);
		v->version = version;
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		if (__atomic_load_n(&d->version, __ATOMIC_RELAXED) == version)
			return true;
	}
}

/* Could a lock call on this file concern the directory, as far as we know?
 * One on another share can't (unless the file's mount lies on that share);
 * what was found with an older mount table may have changed. */
static bool needs_walk(const struct view *v, uint64_t dev, int mnt_id)
{
	if (v->state == DIR_UNRESOLVED)
		return true;
	return v->state == DIR_ON_SHARE && (v->share_dev == dev || v->mounts_gen != mounts_generation() ||
					   mounts_leads_through(mnt_id, dev, v->share_dev));
}

/* Resolving a directory as realpath does, component by component, but
 * looking at a component only if mounts_reach lets us. */
struct walk {
	uint64_t dev; /* the locked file's */
	int mnt_id;
	unsigned mounts_gen; /* the mount table's when we began */
	char path[PATH_MAX]; /* resolved so far ("" is "/") */
	size_t len;
	char rest[PATH_MAX]; /* still to resolve, from offset at */
	size_t at;
	unsigned links;      /* followed so far */
	struct stat st;      /* of the component looked at last */
	uint64_t share_dev;  /* WALKED_ON_SHARE */
	const char *why;     /* WALKED_BAD */
};

enum walked { WALKED_ON, WALKED_RESOLVED, WALKED_ON_SHARE, WALKED_BAD, WALKED_BUSY };

static enum walked bad(struct walk *w, const char *why)
{
	w->why = why;
	return WALKED_BAD;
}

static enum walked look(struct walk *w, const char *path)
{
	uint64_t share_dev;
	switch (mounts_reach(path, w->dev, w->mnt_id, &share_dev)) {
	case REACH_OTHER_SHARE:
		w->share_dev = share_dev;
		return WALKED_ON_SHARE;
	case REACH_BUSY:
		return WALKED_BUSY;
	case REACH_SHARE_ROOT:
		/* A share's root is a directory, and the mount table has its
		 * device: no lstat, so that a lock call on a hung share (most
		 * managed directories are mount points) reaches the keeper, where
		 * it can be interrupted and times out, instead of waiting for the
		 * server in the kernel, where only SIGKILL ends it. */
		w->st = (struct stat){ .st_mode = S_IFDIR | 0755, .st_dev = share_dev };
		return WALKED_ON;
	case REACH_FREE:
		break;
	}
	return lstat(path, &w->st) == 0 ? WALKED_ON : bad(w, strerror(errno));
}

/* w->path names a symlink (on a filesystem we may look at): what is left
 * to resolve becomes its target followed by the rest. */
static enum walked follow(struct walk *w)
{
	if (++w->links > MAX_LINKS)
		return bad(w, strerror(ELOOP));
	size_t candidate = strlen(w->path), cap = sizeof w->path - candidate - 1;
	char *target = w->path + candidate + 1; /* the room behind the name */
	ssize_t n = cap < 2 ? (ssize_t)cap : readlink(w->path, target, cap);
	if (n < 0)
		return bad(w, strerror(errno));
	size_t rest = strlen(w->rest + w->at);
	if ((size_t)n >= cap || (size_t)n + 1 + rest >= sizeof w->rest)
		return bad(w, strerror(ENAMETOOLONG));
	memmove(w->rest + n + 1, w->rest + w->at, rest + 1);
	memcpy(w->rest, target, (size_t)n);
	w->rest[n] = '/';
	w->at = 0;
	if (target[0] == '/')
		w->len = 0;
	w->path[w->len] = '\0';
	return WALKED_ON;
}

/* The next component of rest, resolved into path. */
static enum walked step(struct walk *w, const char *name, size_t n)
{
	if (n == 1 && name[0] == '.')
		return WALKED_ON;
	if (n == 2 && name[0] == '.' && name[1] == '.') {
		while (w->len > 0 && w->path[--w->len] != '/')
			;
		w->path[w->len] = '\0';
		return WALKED_ON;
	}
	if (w->len + 1 + n >= sizeof w->path)
		return bad(w, strerror(ENAMETOOLONG));
	w->path[w->len] = '/';
	memcpy(w->path + w->len + 1, name, n);
	w->path[w->len + 1 + n] = '\0';
	enum walked r = look(w, w->path);
	if (r != WALKED_ON)
		return r;
	if (S_ISLNK(w->st.st_mode))
		return follow(w);
	if (!S_ISDIR(w->st.st_mode))
		return bad(w, "not a directory");
	w->len += 1 + n;
	return WALKED_ON;
}

static enum walked walk(struct walk *w, const char *given)
{
	snprintf(w->rest, sizeof w->rest, "%s", given);
	w->path[0] = '\0';
	w->len = w->at = w->links = 0;
	enum walked r = WALKED_ON;
	while (r == WALKED_ON) {
		w->at += strspn(w->rest + w->at, "/");
		size_t n = strcspn(w->rest + w->at, "/");
		if (n == 0)
			break;
		const char *name = w->rest + w->at;
		w->at += n;
		r = step(w, name, n);
	}
	if (r != WALKED_ON)
		return r;
	/* Its device: after "..", st is another directory's. */
	if ((r = look(w, w->len > 0 ? w->path : "/")) != WALKED_ON)
		return r;
	return S_ISDIR(w->st.st_mode) ? WALKED_RESOLVED : bad(w, "not a directory");
}

static void forget_publishing_in_child(void)
{
	pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
	publish_lock = fresh; /* a thread of the parent may have held it: it doesn't exist here */
	publisher = 0;
	for (unsigned i = 0; i < published->ndirs; i++) { /* one it was writing: look again */
		struct managed_dir *d = &published->dirs[i];
		if (d->version % 2 != 0) {
			d->state = DIR_UNRESOLVED;
			d->version++;
		}
	}
}

static void set_result(struct managed_dir *d, const struct walk *w, enum walked r)
{
	if (r == WALKED_RESOLVED) {
		snprintf(d->path, sizeof d->path, "%s", w->len > 0 ? w->path : "/");
		d->len = w->len; /* "/": 0, every path is below it */
		d->dev = w->st.st_dev;
	}
	__atomic_store_n(&d->share_dev, w->share_dev, __ATOMIC_RELAXED);
	__atomic_store_n(&d->mounts_gen, w->mounts_gen, __ATOMIC_RELAXED);
	int state = r == WALKED_RESOLVED ? DIR_RESOLVED : r == WALKED_ON_SHARE ? DIR_ON_SHARE : DIR_BAD;
	__atomic_store_n(&d->state, state, __ATOMIC_RELEASE);
}

/* Records what a walk found, unless the directory changed since we read its
 * version (another thread published first: look again).  A resolved or bad
 * directory stays so. */
static bool publish(struct config *c, struct managed_dir *d, unsigned seen, const struct walk *w, enum walked r)
{
	pid_t me = gettid();
	if (__atomic_load_n(&publisher, __ATOMIC_ACQUIRE) == me)
		return false;
	pthread_mutex_lock(&publish_lock);
	static bool atfork_registered; /* here, not at start-up: most programs never get here */
	published = c;
	if (!atfork_registered)
		atfork_registered = pthread_atfork(NULL, NULL, forget_publishing_in_child) == 0;
	__atomic_store_n(&publisher, me, __ATOMIC_RELEASE);
	bool current = __atomic_load_n(&d->version, __ATOMIC_RELAXED) == seen;
	if (current) {
		__atomic_store_n(&d->version, seen + 1, __ATOMIC_RELAXED); /* odd: being written */
		__atomic_thread_fence(__ATOMIC_RELEASE);
		set_result(d, w, r);
		__atomic_store_n(&d->version, seen + 2, __ATOMIC_RELEASE);
	}
	__atomic_store_n(&publisher, 0, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&publish_lock);
	return current;
}

enum settled { SETTLED, SETTLED_RESOLVED, SETTLED_BAD, SETTLED_BUSY };

static enum settled settle_dir(struct config *c, struct managed_dir *d, struct walk *w)
{
	struct view v;
	for (;;) {
		if (!read_view(d, &v))
			return SETTLED_BUSY;
		if (v.state == DIR_BAD)
			return SETTLED_BAD;
		if (!needs_walk(&v, w->dev, w->mnt_id))
			return SETTLED;
		w->mounts_gen = mounts_generation();
		enum walked r = walk(w, d->given);
		if (r == WALKED_BUSY)
			return SETTLED_BUSY;
		if (!publish(c, d, v.version, w, r))
			continue;
		if (r == WALKED_BAD) { /* reported by the one thread that found it */
			config_report_bad_dir(d->given, w->why);
			__atomic_store_n(&c->paths_invalid, true, __ATOMIC_RELEASE);
			return SETTLED_BAD;
		}
		return r == WALKED_RESOLVED ? SETTLED_RESOLVED : SETTLED;
	}
}

static bool all_resolved(const struct config *c)
{
	for (unsigned i = 0; i < c->ndirs; i++)
		if (!dirs_resolved(&c->dirs[i]))
			return false;
	return true;
}

bool dirs_settle(struct config *c, uint64_t dev, int mnt_id)
{
	if (all_resolved(c))
		return true;
	/* Whether the file's mount lies on a share is the mount table's to say:
	 * it must know that mount. */
	if (mnt_id != MOUNT_ID_UNKNOWN)
		mounts_managed(c, mnt_id, dev);
	struct walk w = { .dev = dev, .mnt_id = mnt_id };
	bool ok = true, resolved = false;
	for (unsigned i = 0; i < c->ndirs; i++) {
		enum settled s = settle_dir(c, &c->dirs[i], &w);
		ok &= s != SETTLED_BAD && s != SETTLED_BUSY;
		resolved |= s == SETTLED_RESOLVED;
	}
	if (resolved) /* the mounts at and below it are managed now */
		mounts_refresh(c);
	return ok;
}
