/* Which descriptors a managed lock was taken through (and their copies).
 * close() and friends consult it with one atomic load, so closing any other
 * descriptor costs nothing; the sidecar side is told only about these. */
#ifndef UUIDLOCK_FDTRACK_H
#define UUIDLOCK_FDTRACK_H

#include <stdbool.h>

/* Descriptors below this are tracked one by one; above, by one flag. */
#define FDTRACK_LIMIT 65536

void fdtrack_set(int fd);
void fdtrack_clear(int fd);

/* Inline, because close() and dup() ask on every call. */
extern unsigned long fdtrack_marks[];
extern bool fdtrack_high;
extern bool fdtrack_used;

/* Has any descriptor ever been marked?  Until then the dup family has
 * nothing to copy or clear. */
static inline bool fdtrack_in_use(void)
{
	return __atomic_load_n(&fdtrack_used, __ATOMIC_RELAXED);
}

static inline bool fdtrack_test(int fd)
{
	if ((unsigned)fd >= FDTRACK_LIMIT)
		return fd >= 0 && __atomic_load_n(&fdtrack_high, __ATOMIC_RELAXED);
	unsigned long word = __atomic_load_n(&fdtrack_marks[(unsigned)fd / (8 * sizeof word)], __ATOMIC_RELAXED);
	return (word >> ((unsigned)fd % (8 * sizeof word))) & 1;
}
/* After dup-like calls: new inherits old's mark (or loses its own). */
void fdtrack_copy(int oldfd, int newfd);
/* The lowest marked descriptor in [from, last], or -1. */
int fdtrack_next(unsigned from, unsigned last);
/* Was a descriptor beyond the tracked range ever marked? */
bool fdtrack_high_marked(void);

#endif
