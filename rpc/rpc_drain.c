/*
 * rpc_drain.c: the drain deadline of ended calls.
 *
 * A call sends its final status only after its client has taken the
 * messages before it (a unary call's reply, a stream's queue), and gRPC's
 * transport takes them only as the client's flow-control window allows: a
 * client that never reads (a window of 0, and no deadline) would keep the
 * call for ever, with every byte queued on it and its request's bytes
 * counted against max_held_request_bytes. So every call whose final send
 * has not completed when it ends is listed here (rpc__drain_add) and, if
 * it is still not DONE RPC_DRAIN_MS later, cancelled
 * (rpc__call_drain_expired): its queue is freed and the call is over.
 *
 * Every deadline lies the same time after its listing, so the list is a
 * FIFO in deadline order: one thread waits for the oldest one, and listing
 * and expiring are O(1). A call that reaches DONE in time takes itself off
 * (rpc__drain_remove, O(1): the list is linked both ways), so that most
 * unary calls, listed for the moment their reply takes to go out, do not
 * keep their rpc_call_t for RPC_DRAIN_MS. A listed call holds a reference
 * until it is taken off.
 *
 * The thread waits for the oldest deadline listed, or, the list empty, for
 * the last listing's (that call went off the list in time); only when that
 * too has passed does it wait without a deadline, and only then does a
 * listing wake it. No listing's deadline is earlier than the one the
 * thread waits for, so it finds each in time when its wait ends, and it
 * wakes about once per RPC_DRAIN_MS however many calls come. Woken at
 * every listing into an empty list instead, it cost most unary calls a
 * context switch and a turn on drain->lock against the completion-queue
 * threads (Lookup at 8 clients: 1.96 voluntary switches of the
 * coordinator's per call against 1.14, and 15-25% of its throughput;
 * bench/NOTES.md).
 *
 * Threads: rpc__drain_add on any thread that ends a call; the drain thread
 * expires calls. drain->lock guards the list, started and stopping; it is
 * taken after call->lock (rpc__drain_add runs under it), and the drain
 * thread never holds it while it takes a call's lock.
 */
#include "rpc/rpc_int.h"

#include <string.h>

#include "common/clock.h"
#include "common/log.h"

ferry_status_t rpc__drain_init(rpc_drain_t *drain)
{
    memset(drain, 0, sizeof(*drain));
    if (ferry__cond_init_clock(&drain->cond, CLOCK_MONOTONIC) != 0) {
        return FERRY_ERR_NO_MEMORY;
    }
    if (pthread_mutex_init(&drain->lock, NULL) != 0) {
        pthread_cond_destroy(&drain->cond);
        return FERRY_ERR_NO_MEMORY;
    }
    return FERRY_OK;
}

void rpc__drain_destroy(rpc_drain_t *drain)
{
    pthread_cond_destroy(&drain->cond);
    pthread_mutex_destroy(&drain->lock);
}

/* Takes the oldest call off the list once its deadline has passed; NULL
 * (having waited for that deadline, or the last listing's, or for a
 * listing, or for stop) when there is none yet. Caller holds drain->lock. */
static rpc_call_t *drain_take_expired_locked(rpc_drain_t *drain)
{
    rpc_call_t *call = drain->head;
    int64_t now_ms = ferry__clock_ms(CLOCK_MONOTONIC);
    int64_t at_ms = call != NULL ? call->drain_at_ms : drain->last_at_ms;
    struct timespec until;

    if (call == NULL && at_ms <= now_ms) {
        drain->idle = true;
        pthread_cond_wait(&drain->cond, &drain->lock);
        drain->idle = false;
        drain->wakes++;
        return NULL;
    }
    if (at_ms > now_ms) {
        until = ferry__clock_in_ms(CLOCK_MONOTONIC, at_ms - now_ms);
        pthread_cond_timedwait(&drain->cond, &drain->lock, &until);
        drain->wakes++;
        return NULL;
    }
    drain->head = call->drain_next;
    if (drain->head != NULL) {
        drain->head->drain_prev = NULL;
    } else {
        drain->tail = NULL;
    }
    call->drain_listed = false;
    return call;
}

static void *drain_main(void *arg)
{
    rpc_drain_t *drain = arg;

    pthread_mutex_lock(&drain->lock);
    while (!drain->stopping) {
        rpc_call_t *call = drain_take_expired_locked(drain);
        if (call == NULL) {
            continue;
        }
        pthread_mutex_unlock(&drain->lock);
        rpc__call_drain_expired(call);
        rpc_call_unref(call); /* the list's */
        pthread_mutex_lock(&drain->lock);
    }
    pthread_mutex_unlock(&drain->lock);
    return NULL;
}

ferry_status_t rpc__drain_start(rpc_drain_t *drain)
{
    int rc = pthread_create(&drain->thread, NULL, drain_main, drain);

    if (rc != 0) {
        ferry_error("rpc: cannot start the drain thread: %s", strerror(rc));
        return FERRY_ERR_IO;
    }
    pthread_mutex_lock(&drain->lock);
    drain->started = true;
    pthread_mutex_unlock(&drain->lock);
    return FERRY_OK;
}

void rpc__drain_add(rpc_drain_t *drain, rpc_call_t *call)
{
    pthread_mutex_lock(&drain->lock);
    if (drain->started && !drain->stopping) {
        rpc_call_ref(call);
        call->drain_at_ms = ferry__clock_ms(CLOCK_MONOTONIC) + RPC_DRAIN_MS;
        drain->last_at_ms = call->drain_at_ms;
        call->drain_next = NULL;
        call->drain_prev = drain->tail;
        call->drain_listed = true;
        if (drain->tail != NULL) {
            drain->tail->drain_next = call;
        } else {
            drain->head = call;
        }
        if (drain->idle) {
            drain->idle = false; /* one signal, however many listings */
            pthread_cond_signal(&drain->cond);
        }
        drain->tail = call;
    }
    pthread_mutex_unlock(&drain->lock);
}

bool rpc__drain_remove(rpc_drain_t *drain, rpc_call_t *call)
{
    bool listed;

    pthread_mutex_lock(&drain->lock);
    listed = call->drain_listed;
    if (listed) {
        /* The thread may be waiting for this call's deadline: it wakes then
         * and finds the next one, which is no earlier. */
        if (call->drain_prev != NULL) {
            call->drain_prev->drain_next = call->drain_next;
        } else {
            drain->head = call->drain_next;
        }
        if (call->drain_next != NULL) {
            call->drain_next->drain_prev = call->drain_prev;
        } else {
            drain->tail = call->drain_prev;
        }
        call->drain_prev = call->drain_next = NULL;
        call->drain_listed = false;
    }
    pthread_mutex_unlock(&drain->lock);
    return listed;
}

void rpc__drain_stop(rpc_drain_t *drain)
{
    rpc_call_t *left;

    pthread_mutex_lock(&drain->lock);
    if (!drain->started || drain->stopping) {
        pthread_mutex_unlock(&drain->lock);
        return;
    }
    drain->stopping = true;
    left = drain->head;
    for (rpc_call_t *c = left; c != NULL; c = c->drain_next) {
        c->drain_listed = false; /* its references are dropped below */
    }
    drain->head = drain->tail = NULL;
    pthread_cond_signal(&drain->cond);
    pthread_mutex_unlock(&drain->lock);
    pthread_join(drain->thread, NULL);
    /* The server cancelled what had not ended: only the list's references
     * are left to drop. */
    while (left != NULL) {
        rpc_call_t *next = left->drain_next;
        rpc_call_unref(left);
        left = next;
    }
}
