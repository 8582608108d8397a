#include "shim.h"

#include "dirs.h"
#include "mounts.h"

#include "../core/log.h"
#include "../core/keeper_proto.h"
#include "../core/netfs.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <same-inode.h>

struct config shim_config;

/* What start-up writes and every wrapper reads first lives in .data, in a
 * page the dynamic loader has written already (the GOT's): a program that
 * configures nothing starts without touching a page of ours, not even the
 * 70 KB shim_config. */
#define STARTUP_DATA __attribute__((section(".data")))
bool shim_initialized STARTUP_DATA;
bool shim_passthrough STARTUP_DATA = true; /* true also while we initialise */
static pthread_once_t init_once STARTUP_DATA = PTHREAD_ONCE_INIT;
/* The thread running init_once_body, while it runs.  Not a __thread flag:
 * a TLS segment would cost every program's start-up for a check made only
 * during it. */
static bool initializing STARTUP_DATA;
static pthread_t initializer STARTUP_DATA;

/* Is any UUIDLOCK_ variable set?  One pass over the environment, no getenv
 * per variable: most programs that load us configure nothing. */
static bool configured(void)
{
	static const char prefix[] = "UUIDLOCK_";
	for (char **e = environ; e != NULL && *e != NULL; e++) {
		size_t i = 0;
		while (prefix[i] != '\0' && (*e)[i] == prefix[i])
			i++;
		if (prefix[i] == '\0')
			return true;
	}
	return false;
}

static void init_once_body(void)
{
	initializer = pthread_self();
	__atomic_store_n(&initializing, true, __ATOMIC_RELEASE);
	if (configured()) {
		int saved = errno;
		config_load(&shim_config);
		errno = saved;
		shim_passthrough = shim_config.ndirs == 0 && !shim_config.auto_netfs && !shim_config.invalid;
	}
	__atomic_store_n(&shim_initialized, true, __ATOMIC_RELEASE);
	__atomic_store_n(&initializing, false, __ATOMIC_RELEASE);
}

void shim_init(void)
{
	/* A call made while we initialise (from inside libc, say) passes through:
	 * waiting for ourselves would deadlock. */
	if (__atomic_load_n(&initializing, __ATOMIC_ACQUIRE) && pthread_equal(initializer, pthread_self()))
		return;
	pthread_once(&init_once, init_once_body);
}

/* Report bad configuration as soon as the program starts, not at its
 * first lock (all but a managed directory that doesn't exist: see dirs.h). */
__attribute__((constructor)) static void shim_constructor(void)
{
	shim_init();
}

/* Only a keeper spawn needs it: not worth four readlinks (nor a 4 KB
 * buffer in every process) at every start. */
static const char *keeper_program = "(unknown: cannot locate libuuidlock_shim.so)";

static void find_keeper_program(void)
{
	Dl_info info;
	char self[PATH_MAX];
	if (!dladdr((void *)shim_init, &info) || info.dli_fname == NULL || realpath(info.dli_fname, self) == NULL)
		return;
	char *slash = strrchr(self, '/');
	slash[1] = '\0';
	char *path = malloc(strlen(self) + sizeof KEEPER_PROGRAM_NAME);
	if (path != NULL)
		keeper_program = strcat(strcpy(path, self), KEEPER_PROGRAM_NAME);
}

const char *shim_keeper_program(void)
{
	static pthread_once_t found = PTHREAD_ONCE_INIT;
	int saved = errno;
	pthread_once(&found, find_keeper_program);
	errno = saved;
	return keeper_program;
}

/* Below a managed directory by name (a mount below it is managed whole). */
static bool below_managed_dir(const char *path)
{
	for (unsigned i = 0; i < shim_config.ndirs; i++) {
		const struct managed_dir *d = &shim_config.dirs[i];
		if (dirs_resolved(d) && strncmp(path, d->path, d->len) == 0 && path[d->len] == '/')
			return true;
	}
	return false;
}

/* fstat, plus the descriptor's mount (MOUNT_ID_UNKNOWN before Linux 5.8):
 * one system call either way, and no round trip to the share: the lookup
 * needs only what the client's inode knows for sure (device, inode number,
 * mount and file type never change; a link made on this host is counted at
 * once, and managed_name_is_current asks the share for the count when the
 * sidecar is fresh).  On an uncached FUSE mount a plain fstat is a GETATTR
 * round trip (20 us on bindfs, a network round trip on sshfs), DONT_SYNC
 * about 1 us. */
static int stat_fd(int fd, struct stat *st, int *mnt_id)
{
	struct statx sx;
	if (statx(fd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, STATX_BASIC_STATS | STATX_MNT_ID, &sx) != 0)
		return -1;
	*st = (struct stat){
		.st_dev = makedev(sx.stx_dev_major, sx.stx_dev_minor),
		.st_ino = sx.stx_ino,
		.st_mode = sx.stx_mode,
		.st_nlink = sx.stx_nlink,
	};
	*mnt_id = sx.stx_mask & STATX_MNT_ID ? (int)sx.stx_mnt_id : MOUNT_ID_UNKNOWN;
	return 0;
}

static const struct managed_dir *dir_containing(const char *path, dev_t dev)
{
	for (unsigned i = 0; i < shim_config.ndirs; i++) {
		const struct managed_dir *d = &shim_config.dirs[i];
		if (dirs_resolved(d) && d->dev == dev && strncmp(path, d->path, d->len) == 0 && path[d->len] == '/')
			return d;
	}
	return NULL;
}

static bool on_network_fs(int fd)
{
	struct statfs fs;
	return fstatfs(fd, &fs) == 0 && netfs_type((long)fs.f_type);
}

static bool on_managed_device(dev_t dev)
{
	for (unsigned i = 0; i < shim_config.ndirs; i++)
		if (dirs_resolved(&shim_config.dirs[i]) && shim_config.dirs[i].dev == dev)
			return true;
	return false;
}

static bool names_file(const char *path, const struct stat *st)
{
	struct stat now;
	return stat(path, &now) == 0 && SAME_INODE(now, *st);
}

/* The sidecar is named after the file, so the name must be the file's now.
 * The kernel marks a name " (deleted)" when a file is unlinked -- and on FUSE
 * also when another client merely created the same name concurrently (seen
 * on bindfs): the file is still there, under the name without the mark. */
static bool resolve_current_name(char *path, const struct stat *st)
{
	static const char deleted[] = " (deleted)";
	if (names_file(path, st))
		return true;
	size_t n = strlen(path), d = sizeof deleted - 1;
	if (n <= d || strcmp(path + n - d, deleted) != 0)
		return false;
	path[n - d] = '\0';
	return names_file(path, st);
}

/* Has the kernel marked the name " (deleted)"?  It does so at once when the
 * file is unlinked or replaced on this host, and on FUSE when a lookup of the
 * name by any local process found another file (or none) there. */
static bool marked_deleted(const char *path)
{
	static const char deleted[] = " (deleted)";
	size_t n = strlen(path), d = sizeof deleted - 1;
	return n > d && strcmp(path + n - d, deleted) == 0;
}

/* The sidecar is named after the name we lock through: a file with another
 * name (a hard link) could be locked through that one by another host at
 * the same time.  Shares that make link counts up (sshfs: always 1) can't
 * tell; a directory's count is its subdirectories. */
static bool has_other_names(const struct stat *st)
{
	return !S_ISDIR(st->st_mode) && st->st_nlink > 1;
}

static void refuse_replaced(const char *path)
{
	log_error("refusing to lock %s: the file was deleted or replaced, other clients can't see it", path);
}

static void refuse_linked(const char *path, const struct stat *st)
{
	log_error("refusing to lock %s: it has %ju hard links, and each name would get a sidecar of its own",
		  path, (uintmax_t)st->st_nlink);
}

/* A bad managed directory makes every lock call fail: we can't tell what
 * is managed.  Reported when found. */
static bool paths_invalid(void)
{
	return __atomic_load_n(&shim_config.paths_invalid, __ATOMIC_ACQUIRE);
}

/* Resolving the managed directories costs round trips to their shares: it
 * is done at the lock calls that could concern them (see dirs.h), not at
 * every program's start. */
static bool dirs_settled_for(const struct stat *st, int mnt_id, bool pipe)
{
	int saved = errno;
	bool ok = dirs_settle(&shim_config, st->st_dev, pipe ? MOUNT_ID_UNKNOWN : mnt_id);
	errno = saved;
	return ok && !paths_invalid();
}

enum managed managed_lookup(int fd, struct managed_file *mf)
{
	if (paths_invalid())
		return REFUSED;
	struct stat st;
	int mnt_id;
	if (stat_fd(fd, &st, &mnt_id) != 0) {
		if (errno == EBADF)
			return NOT_MANAGED; /* libc will say EBADF */
		if (errno == ENOENT) /* FUSE: another client deleted the file */
			log_error("refusing to lock descriptor %d: its file was deleted by another client", fd);
		else
			log_error("cannot tell whether descriptor %d is managed: fstat: %s", fd, strerror(errno));
		return REFUSED;
	}
	/* Pipes and sockets live on kernel-internal mounts that mountinfo never
	 * lists: asking would re-read the table at every lock call on them. */
	bool pipe = S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode);
	if (!dirs_settled_for(&st, mnt_id, pipe))
		return REFUSED;
	bool auto_managed = shim_config.auto_netfs && on_network_fs(fd);
	bool managed_mount = !pipe && mounts_managed(&shim_config, mnt_id, st.st_dev);
	bool by_device = auto_managed || managed_mount || on_managed_device(st.st_dev);
	/* A share mounted where an unmanaged filesystem was may have its numbers:
	 * only a share needs its name checked (fstatfs is cheaper than readlink). */
	if (!by_device && (pipe || !mounts_numbers_reusable(mnt_id, st.st_dev) || !on_network_fs(fd)))
		return NOT_MANAGED;

	char link[32], path[PATH_MAX];
	snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
	ssize_t n = readlink(link, path, sizeof path - 1);
	if (n < 0 && !by_device)
		return NOT_MANAGED; /* not managed by its numbers, and no name to say otherwise */
	if (n < 0) {
		log_error("cannot tell whether descriptor %d is managed: %s: %s", fd, link, strerror(errno));
		return REFUSED;
	}
	path[n] = '\0';
	if (!by_device) { /* its numbers may be an unmanaged mount's that is gone: by its name? */
		if (!below_managed_dir(path) || !mounts_recheck(&shim_config, mnt_id, st.st_dev))
			return NOT_MANAGED;
		managed_mount = true;
	}
	if (!auto_managed && !(managed_mount && below_managed_dir(path)) && dir_containing(path, st.st_dev) == NULL)
		return NOT_MANAGED;
	if (shim_config.invalid)
		return REFUSED; /* reported at start-up */
	if (has_other_names(&st)) {
		refuse_linked(path, &st);
		return REFUSED;
	}
	/* The name is checked on the share (a round trip) only when the keeper
	 * says the sidecar is fresh (managed_name_is_current), unless the kernel
	 * already says it changed. */
	mf->name_checked = marked_deleted(path);
	if (mf->name_checked && !resolve_current_name(path, &st)) {
		refuse_replaced(path);
		return REFUSED;
	}
	if ((size_t)snprintf(mf->sidecar, sizeof mf->sidecar, "%s%s", path, shim_config.suffix) >= sizeof mf->sidecar) {
		log_error("cannot lock %s: its sidecar's path is too long", path);
		return REFUSED;
	}
	mounts_warn_if_caching(mnt_id, st.st_dev);
	mf->dev = st.st_dev;
	mf->ino = st.st_ino;
	return MANAGED;
}

/* Why a held sidecar that is not fresh needs no check of the name: the
 * keeper holds it continuously since a fresh grant, whose asker checked the
 * name here; since then, a file replaced or deleted on this host is marked
 * " (deleted)" at once (checked by managed_lookup at every call, locally);
 * another host could replace it only without the lock, which it can't take
 * while we hold the sidecar (and after it did under the lock, our next hold
 * is fresh again, and the fresh asker's lookup of the name makes FUSE mark
 * every stale local name deleted).  A rename while locked is a documented
 * limit anyway. */
bool managed_name_is_current(const struct managed_file *mf)
{
	if (mf->name_checked)
		return true;
	char path[PATH_MAX];
	snprintf(path, sizeof path, "%.*s", (int)(strlen(mf->sidecar) - strlen(shim_config.suffix)), mf->sidecar);
	struct stat now;
	if (stat(path, &now) != 0 || now.st_dev != mf->dev || now.st_ino != mf->ino) {
		refuse_replaced(path);
		return false;
	}
	if (has_other_names(&now)) {
		refuse_linked(path, &now);
		return false;
	}
	return true;
}
