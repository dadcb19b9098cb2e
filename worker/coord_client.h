/*
 * coord_client.h: what the coordinator client (coord_*.c) shows beyond the
 * public API (ferry/coordinator.h): counts of its watch thread's work, for
 * tests that check how the client followed its records (resumed or read
 * again), and of its session lease's renewals; and its test seams.
 */
#ifndef FERRY_WORKER_COORD_CLIENT_H
#define FERRY_WORKER_COORD_CLIENT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <ferry/coordinator.h>

typedef struct {
    uint64_t streams;      /* fresh Watch streams created (each re-Gets every record) */
    uint64_t resumes;      /* streams resumed at the last revision seen + 1 */
    uint64_t out_of_range; /* streams refused or ended with OUT_OF_RANGE */
    uint64_t gets;         /* records read with a Get */
    uint64_t renewals;     /* KeepAlives of the session lease that succeeded */
    int64_t revision;      /* the last revision the watch has seen; 0: none */
    bool settled;          /* no bound record is waiting to be looked at */
} ferry__coord_watch_stats_t;

/* A consistent snapshot, taken under the client's lock. */
void ferry__coord_watch_stats(ferry_coordinator_t *coord, ferry__coord_watch_stats_t *stats_p);

/* Fault seams (tests only; never set in production), shared by every
 * client of the process. While ferry__coord_test_hold_links is set, a
 * session thread about to work on a link (a look, a report, a release)
 * stops before its call, as if that call hung, and sets
 * ferry__coord_test_links_held (it goes on when the hold is cleared, or
 * after a minute). ferry__coord_test_fail_gets: that many of the next
 * looks' Gets fail with FERRY_ERR_UNAVAILABLE without being sent.
 * ferry__coord_test_refuse_reports: that many of the next Completes are
 * refused FERRY_ERR_RESOURCE_EXHAUSTED without being sent, as a coordinator
 * refuses a call for a bound before it writes anything. */
extern atomic_bool ferry__coord_test_hold_links;
extern atomic_bool ferry__coord_test_links_held;
extern atomic_int ferry__coord_test_fail_gets;
extern atomic_int ferry__coord_test_refuse_reports;

#endif /* FERRY_WORKER_COORD_CLIENT_H */
