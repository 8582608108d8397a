/* State shared by the wrappers: the configuration, read once, and the
 * decision whether a descriptor is managed. */
#ifndef UUIDLOCK_SHIM_H
#define UUIDLOCK_SHIM_H

#include "../core/config.h"

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>

#define EXPORT __attribute__((visibility("default")))

extern struct config shim_config;
extern bool shim_initialized;
extern bool shim_passthrough; /* nothing managed and no bad configuration */

void shim_init(void);

/* The pass-through test every wrapper makes first: with no UUIDLOCK_PATHS
 * (and no bad configuration) the shim costs two loads and two branches. */
static inline bool shim_manages_nothing(void)
{
	if (!__atomic_load_n(&shim_initialized, __ATOMIC_ACQUIRE))
		shim_init();
	return shim_passthrough;
}

/* A file a lock call concerns, as the sidecar protocol needs it. */
struct managed_file {
	uint64_t dev, ino;
	bool name_checked; /* on the share, that the locked name is the file's */
	char sidecar[PATH_MAX];
};

enum managed {
	NOT_MANAGED, /* pass the call to libc */
	MANAGED,     /* lock through the sidecar */
	REFUSED,     /* should be managed but can't be: fail with ENOLCK */
};

/* Decides for a lock call on fd.  Costs a statx of the client's inode, and a
 * readlink only for a descriptor on the same device as a managed directory:
 * no round trip to the share (but while a managed directory the call could
 * concern isn't resolved, looking at it: see dirs.h). */
enum managed managed_lookup(int fd, struct managed_file *mf);

/* After the keeper says mf's sidecar is fresh: is the locked name still the
 * file's, with no other name (a round trip to the share)?  Reported if not. */
bool managed_name_is_current(const struct managed_file *mf);

/* The absolute path of uuidlock-keeper, next to this library. */
const char *shim_keeper_program(void);

#endif
