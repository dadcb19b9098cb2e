/*
 * rpc_budget.c: a bound on the bytes many streaming calls queue together
 * (rpc_send_budget_t, rpc.h).
 *
 * A call given a budget counts in it what its queue holds, entry by entry,
 * as it is queued (call_enqueue), and gives each entry back as the
 * transport takes it or as the queue is dropped (call_queued_sub). Each
 * entry costs its overhead (RPC_OUTMSG_OVERHEAD); its bytes count once per
 * message, not per entry, when the message is shared (rpc_msg_t: a Watch
 * revision goes to every stream that matches all of it, one buffer between
 * them): while any entry under this budget holds it. So the count is what
 * the queues hold in memory, and 0 once none holds a message; per stream,
 * each entry counts whole (the call's own limit is about how far behind
 * one client is, not memory).
 *
 * Threads: any. One lock per budget, a leaf (taken under a call's lock),
 * guards the count and the holders of the messages it counts.
 */
#include "rpc/rpc_int.h"

#include <stdlib.h>

ferry_status_t rpc_send_budget_create(size_t max_bytes, rpc_send_budget_t **budget_p)
{
    rpc_send_budget_t *b = calloc(1, sizeof(*b));

    if (b == NULL) {
        return FERRY_ERR_NO_MEMORY;
    }
    if (pthread_mutex_init(&b->lock, NULL) != 0) {
        free(b);
        return FERRY_ERR_NO_MEMORY;
    }
    atomic_init(&b->refs, 1);
    b->max = max_bytes;
    *budget_p = b;
    return FERRY_OK;
}

rpc_send_budget_t *rpc__budget_ref(rpc_send_budget_t *b)
{
    atomic_fetch_add(&b->refs, 1);
    return b;
}

void rpc_send_budget_release(rpc_send_budget_t *b)
{
    if (b != NULL && atomic_fetch_sub(&b->refs, 1) == 1) {
        pthread_mutex_destroy(&b->lock);
        free(b);
    }
}

size_t rpc_send_budget_used(rpc_send_budget_t *b)
{
    size_t used;

    pthread_mutex_lock(&b->lock);
    used = b->used;
    pthread_mutex_unlock(&b->lock);
    return used;
}

size_t rpc_send_budget_max(const rpc_send_budget_t *b)
{
    return b->max;
}

/* What m adds to b's count, m becoming a holder of its shared message if
 * b counts that one; *shared_p grows by the shared bytes it counts first.
 * Caller holds b->lock. */
static size_t hold_locked(rpc_send_budget_t *b, rpc_outmsg_t *m, size_t *shared_p)
{
    rpc_send_budget_t *none = NULL;

    m->holds = m->shared != NULL &&
               (atomic_compare_exchange_strong(&m->shared->counted_in, &none, b) || none == b);
    if (!m->holds) {
        return RPC_OUTMSG_OVERHEAD + m->len;
    }
    if (m->shared->holders++ > 0) {
        return RPC_OUTMSG_OVERHEAD; /* its bytes are counted already */
    }
    *shared_p += m->len;
    return RPC_OUTMSG_OVERHEAD + m->len;
}

/* What m takes back from b's count; the bytes of a shared message it
 * gives back last leave b->shared (and b->oversize) too. Caller holds
 * b->lock. */
static size_t unhold_locked(rpc_send_budget_t *b, rpc_outmsg_t *m)
{
    if (m->holds) {
        m->holds = false;
        if (--m->shared->holders > 0) {
            return RPC_OUTMSG_OVERHEAD;
        }
        b->shared -= m->len;
        if (m->shared->oversize) {
            m->shared->oversize = false;
            b->oversize -= m->len;
        }
    }
    return RPC_OUTMSG_OVERHEAD + m->len;
}

bool rpc__budget_take(rpc_send_budget_t *b, rpc_outmsg_t *head)
{
    size_t need = 0, shared = 0;
    bool overhead_only = true, fits, ok;

    pthread_mutex_lock(&b->lock);
    for (rpc_outmsg_t *m = head; m != NULL; m = m->next) {
        size_t cost = hold_locked(b, m, &shared);
        overhead_only = overhead_only && cost == RPC_OUTMSG_OVERHEAD;
        need += cost;
    }
    fits = b->max == 0 || (need <= b->max && b->used <= b->max - need);
    /* Past max: a unit into an empty budget (its shared messages become
     * oversize), and entries that only share messages counted already,
     * within max plus the oversize bytes held (review-s31b M2: beside any
     * shared bytes, the count could reach twice max). */
    ok = fits || b->used == 0 ||
         (overhead_only && need <= b->max + b->oversize && b->used <= b->max + b->oversize - need);
    if (ok) {
        b->used += need;
        b->shared += shared;
        for (rpc_outmsg_t *m = head; !fits && b->used == need && m != NULL; m = m->next) {
            if (m->holds && !m->shared->oversize) { /* the budget was empty: all are first */
                m->shared->oversize = true;
                b->oversize += m->len;
            }
        }
    } else {
        b->shared += shared; /* unhold_locked takes back what hold_locked added */
        for (rpc_outmsg_t *m = head; m != NULL; m = m->next) {
            unhold_locked(b, m);
        }
    }
    pthread_mutex_unlock(&b->lock);
    return ok;
}

void rpc__budget_give(rpc_send_budget_t *b, rpc_outmsg_t *m)
{
    pthread_mutex_lock(&b->lock);
    b->used -= unhold_locked(b, m);
    pthread_mutex_unlock(&b->lock);
}
