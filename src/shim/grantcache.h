/* The grants this process was given (src/core/grants.h): a lock call on a
 * file the keeper granted us lately, and hasn't looked at since, needs no
 * keeper call. */
#ifndef UUIDLOCK_GRANTCACHE_H
#define UUIDLOCK_GRANTCACHE_H

#include "shim.h"

#include "../core/grants.h"

#include <stdbool.h>
#include <stdint.h>

/* The instance of the grant table this process has mapped (0: none), for
 * requests: the keeper sends its table to a process that lacks it. */
uint64_t grantcache_table(void);

/* The keeper sent its table (fd; -1: it didn't): map it, close fd. */
void grantcache_take_table(int fd);

/* The keeper answered HELD for mf with grant g. */
void grantcache_remember(const struct managed_file *mf, const struct keeper_grant *g);

/* Right after the kernel granted a new lock on mf: does the keeper's grant
 * to this process still cover it?  Changes nothing. */
bool grantcache_covers(const struct managed_file *mf);

#endif
