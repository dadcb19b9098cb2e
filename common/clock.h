/*
 * clock.h: milliseconds and deadlines, written once. Every timed wait in
 * Ferry computes "now + ms" for pthread_cond_timedwait (on the clock its
 * condition variable was made with) and reads "now" in milliseconds; the
 * durations that metrics and logs measure read it in nanoseconds.
 */
#ifndef FERRY_COMMON_CLOCK_H
#define FERRY_COMMON_CLOCK_H

#include <pthread.h>
#include <stdint.h>
#include <time.h>

/* Now on `clock`, in milliseconds. */
int64_t ferry__clock_ms(clockid_t clock);

/* Now on `clock`, in nanoseconds. */
int64_t ferry__clock_ns(clockid_t clock);

/* The absolute time ms milliseconds from now on `clock` (ms >= 0). */
struct timespec ferry__clock_in_ms(clockid_t clock, int64_t ms);

/* Initialises a condition variable whose timed waits run on `clock`.
 * 0, or the errno of the step that failed (nothing left to destroy). */
int ferry__cond_init_clock(pthread_cond_t *cond, clockid_t clock);

#endif /* FERRY_COMMON_CLOCK_H */
