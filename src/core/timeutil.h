/* Monotonic time in nanoseconds: all waiting and all timeouts use it, so a
 * clock step on this host never shortens or stretches a wait. */
#ifndef UUIDLOCK_TIMEUTIL_H
#define UUIDLOCK_TIMEUTIL_H

#include <stdint.h>
#include <time.h>

#define NS_PER_SEC INT64_C(1000000000)
#define NS_PER_MS INT64_C(1000000)

static inline int64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * NS_PER_SEC + ts.tv_nsec;
}

/* Time that also counts while the machine was suspended: what a lease on
 * another host keeps counting meanwhile (see sidecar.c, idle holds). */
static inline int64_t boot_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_BOOTTIME, &ts);
	return (int64_t)ts.tv_sec * NS_PER_SEC + ts.tv_nsec;
}

#endif
