#include "fdtrack.h"

#include <limits.h>

/* 65536 descriptors in 8 KiB.  Beyond that, one flag stands for all: closing
 * any high descriptor then asks the keeper to check (correct, just slower). */
#define TRACKED_FDS FDTRACK_LIMIT
#define WORD_BITS (sizeof(unsigned long) * CHAR_BIT)

unsigned long fdtrack_marks[TRACKED_FDS / WORD_BITS];
bool fdtrack_high;
bool fdtrack_used;

void fdtrack_set(int fd)
{
	if (fd < 0)
		return;
	__atomic_store_n(&fdtrack_used, true, __ATOMIC_RELAXED);
	if (fd >= TRACKED_FDS)
		__atomic_store_n(&fdtrack_high, true, __ATOMIC_RELAXED);
	else
		__atomic_fetch_or(&fdtrack_marks[fd / WORD_BITS], 1UL << (fd % WORD_BITS), __ATOMIC_RELAXED);
}

void fdtrack_clear(int fd)
{
	if (fd >= 0 && fd < TRACKED_FDS)
		__atomic_fetch_and(&fdtrack_marks[fd / WORD_BITS], ~(1UL << (fd % WORD_BITS)), __ATOMIC_RELAXED);
}

void fdtrack_copy(int oldfd, int newfd)
{
	if (fdtrack_test(oldfd))
		fdtrack_set(newfd);
	else if (fdtrack_test(newfd)) /* spare every plain dup a locked write */
		fdtrack_clear(newfd);
}

int fdtrack_next(unsigned from, unsigned last)
{
	if (last >= TRACKED_FDS)
		last = TRACKED_FDS - 1;
	for (unsigned fd = from; fd <= last;) {
		unsigned long word = __atomic_load_n(&fdtrack_marks[fd / WORD_BITS], __ATOMIC_RELAXED) >> (fd % WORD_BITS);
		if (word == 0) {
			fd = (fd / WORD_BITS + 1) * WORD_BITS; /* skip the rest of an empty word */
			continue;
		}
		fd += (unsigned)__builtin_ctzl(word);
		return fd <= last ? (int)fd : -1;
	}
	return -1;
}

bool fdtrack_high_marked(void)
{
	return __atomic_load_n(&fdtrack_high, __ATOMIC_RELAXED);
}
