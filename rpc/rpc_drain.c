/*
 * rpc_drain.c: the drain deadline of ended streaming calls.
 *
 * A streaming call ended while messages are still queued sends its final
 * status only after its client has taken them, and gRPC's transport takes
 * them only as the client's flow-control window allows: a client that
 * never reads would keep the call, and every byte queued on it, for ever.
 * So such a call is listed here when it ends (rpc__drain_add) and, if it
 * is still not DONE RPC_DRAIN_MS later, cancelled (rpc__call_drain_expired):
 * its queue is freed and the call is over.
 *
 * Every deadline lies the same time after its listing, so the list is a
 * FIFO in deadline order: one thread waits for the oldest one, and listing
 * and expiring are O(1). A listed call holds a reference until its deadline
 * has passed, whether or not it drained in time (a call that did costs its
 * rpc_call_t until then, its grpc_call and queue being gone).
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
 * (having waited for the deadline, or for a listing, or for stop) when
 * there is none yet. Caller holds drain->lock. */
static rpc_call_t *drain_take_expired_locked(rpc_drain_t *drain)
{
    rpc_call_t *call = drain->head;
    int64_t now_ms = ferry__clock_ms(CLOCK_MONOTONIC);
    struct timespec until;

    if (call == NULL) {
        pthread_cond_wait(&drain->cond, &drain->lock);
        return NULL;
    }
    if (call->drain_at_ms > now_ms) {
        until = ferry__clock_in_ms(CLOCK_MONOTONIC, call->drain_at_ms - now_ms);
        pthread_cond_timedwait(&drain->cond, &drain->lock, &until);
        return NULL;
    }
    drain->head = call->drain_next;
    if (drain->head == NULL) {
        drain->tail = NULL;
    }
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
        call->drain_next = NULL;
        if (drain->tail != NULL) {
            drain->tail->drain_next = call;
        } else {
            drain->head = call;
            pthread_cond_signal(&drain->cond); /* the thread waits for a listing */
        }
        drain->tail = call;
    }
    pthread_mutex_unlock(&drain->lock);
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
