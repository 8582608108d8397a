#include "real.h"

#include "../core/log.h"

#include <dlfcn.h>
#include <stdbool.h>
#include <stdlib.h>

struct real_functions real_fn;

static bool in_this_library(void *addr)
{
	Dl_info mine, theirs;
	return dladdr((void *)real_resolve, &mine) && dladdr(addr, &theirs) &&
	       mine.dli_fbase == theirs.dli_fbase;
}

/* Every thread that gets here stores the same addresses, so a race between
 * two first calls is harmless. */
static void resolve(void **slot, const char *name)
{
	void *next = dlsym(RTLD_NEXT, name);
	if (next != NULL && in_this_library(next)) {
		/* dlsym found our own wrapper: calling it would recurse forever. */
		log_error("cannot find the real %s (circular reference); aborting", name);
		abort();
	}
	if (next == NULL) {
		log_error("cannot find the real %s: %s; aborting", name, dlerror());
		abort();
	}
	__atomic_store_n(slot, next, __ATOMIC_RELEASE);
}

#define RESOLVE(field, name) resolve((void **)&real_fn.field, name)

void real_resolve(void)
{
	RESOLVE(flock, "flock");
	RESOLVE(fcntl, "fcntl64");
	RESOLVE(lockf, "lockf");
	RESOLVE(lockf64, "lockf64");
	RESOLVE(close, "close");
	RESOLVE(fclose, "fclose");
	RESOLVE(dup, "dup");
	RESOLVE(dup2, "dup2");
	RESOLVE(dup3, "dup3");
	RESOLVE(close_range, "close_range");
	RESOLVE(closefrom, "closefrom");
}
