/*
 * exec.h: the coordinator's etcd work queue. Everything that waits on an
 * etcd write (the write RPCs, Claims re-run from a wait, claim-expiry
 * transactions, lease revokes after a failed call) runs here, on a fixed
 * set of workers, never on a completion-queue thread, the wait thread or
 * the watch thread. So:
 *   - at most n_workers jobs talk to etcd at once (--etcd-inflight), however
 *     many calls arrive;
 *   - at most max_queued more wait for a worker (--etcd-queue); a job beyond
 *     that is refused (FERRY_ERR_RESOURCE_EXHAUSTED), unless it is internal
 *     work that must not be lost (COORD_EXEC_MUST), which is bounded by
 *     what causes it (claim ends: at most REGISTRY_CLAIM_ENDS_QUEUED_MAX
 *     at once, the rest waiting their turn in the registry; one per failed
 *     call);
 *   - urgent work (COORD_EXEC_URGENT: lease renewals, which keep every
 *     record of a worker alive) goes ahead of the jobs that are not urgent
 *     and has a bound of its own (max_queued urgent jobs waiting, at least
 *     n_workers), so a queue full of Registers or Claims neither refuses
 *     nor delays it behind them until leases expire; but while others
 *     wait, urgent and other jobs take turns (n_workers urgent ones to one
 *     other while the urgent lane is over half full), so that a stream of
 *     renewals never starves nor throttles the rest (audit-s33 M1,
 *     review-s33b M2, review-s33c M1);
 *   - a frozen etcd holds the workers, not the threads that answer Health,
 *     Lookup, Get and List.
 *
 * Jobs run in the order they were submitted, urgent ones first (in turn
 * with the others while both wait: exec_take). A job is a
 * function and its argument, called exactly once: with run = true on a worker, or with
 * run = false when the queue stops before a worker took it (the job then
 * only releases what it holds, failing its call if it has one).
 *
 * Threads: submit from any thread, jobs included. `lock` guards the queue
 * and `stopping`.
 */
#ifndef FERRY_COORD_EXEC_H
#define FERRY_COORD_EXEC_H

#include <stdbool.h>

#include <ferry/status.h>

typedef struct coord_exec coord_exec_t;

typedef void (*coord_job_fn)(void *arg, bool run);

typedef struct {
    int n_workers;  /* jobs running at once, >= 1 */
    int max_queued; /* jobs waiting for a worker, >= 0 */
} coord_exec_params_t;

/* Flags of coord_exec_submit. */
enum {
    /* Internal work that must not be lost: queued beyond max_queued. */
    COORD_EXEC_MUST = 1u << 0,
    /* Ahead of the jobs that are not urgent, in turn with them while both
     * wait (n_workers to one while its lane is over half full); max_queued
     * of its own, at least n_workers. */
    COORD_EXEC_URGENT = 1u << 1,
};

ferry_status_t coord_exec_create(const coord_exec_params_t *params, coord_exec_t **exec_p);

/* Queues fn(arg, true). FERRY_ERR_RESOURCE_EXHAUSTED when max_queued jobs
 * of its kind (urgent or not) already wait (not with COORD_EXEC_MUST), FERRY_ERR_UNAVAILABLE once
 * the queue is stopping, FERRY_ERR_NO_MEMORY: fn is not called then, and the caller still owns arg.
 */
ferry_status_t coord_exec_submit(coord_exec_t *exec, coord_job_fn fn, void *arg, unsigned flags);

/* Jobs running and waiting now (for logs and messages). */
void coord_exec_load(coord_exec_t *exec, int *running_p, int *queued_p);
/* The jobs of a lane it holds at most: n_workers + its queue's room
 * (flags: COORD_EXEC_URGENT for the urgent lane, whose room is max_queued
 * but at least n_workers; else the others', max_queued, but
 * COORD_EXEC_MUST ones). Constant. */
int coord_exec_capacity(const coord_exec_t *exec, unsigned flags);

/* Stops taking jobs, calls the waiting ones with run = false, lets the
 * running ones finish and joins the workers. Idempotent. Not from a job. */
void coord_exec_stop(coord_exec_t *exec);

/* Stops (if needed) and frees. NULL is a no-op. */
void coord_exec_destroy(coord_exec_t *exec);

#endif /* FERRY_COORD_EXEC_H */
