/* The next definition of each interposed function (normally libc's),
 * resolved with dlsym(RTLD_NEXT) on first use: another library's
 * constructor may lock before ours has run. */
#ifndef UUIDLOCK_REAL_H
#define UUIDLOCK_REAL_H

#include <stdio.h>
#include <sys/types.h>

struct real_functions {
	int (*flock)(int, int);
	int (*fcntl)(int, int, ...);
	int (*lockf)(int, int, off_t);
	int (*lockf64)(int, int, off64_t);
	int (*close)(int);
	int (*fclose)(FILE *);
	int (*dup)(int);
	int (*dup2)(int, int);
	int (*dup3)(int, int, int);
	int (*close_range)(unsigned, unsigned, int);
	void (*closefrom)(int);
};

extern struct real_functions real_fn;
void real_resolve(void);

/* REAL(close)(fd): libc's close, resolved if need be. */
#define REAL(name) \
	(__atomic_load_n(&real_fn.name, __ATOMIC_ACQUIRE) ? real_fn.name : (real_resolve(), real_fn.name))

#endif
