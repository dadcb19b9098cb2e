/*
 * rpc_budget.c: a bound on the bytes many streaming calls queue together
 * (rpc_send_budget_t, rpc.h).
 *
 * A call given a budget counts in it exactly what it counts in its own
 * queued_bytes (rpc_call.c): a message as it is queued, and gives it back
 * as the transport takes it or as the queue is dropped. So the budget's
 * count is the sum of its calls' queued bytes at every moment, and 0 once
 * none of them holds a message.
 *
 * Threads: any; the count is one atomic, taken with a compare-and-swap so
 * that a refused take never shows a passing sum to another thread.
 */
#include "rpc/rpc_int.h"

#include <stdlib.h>

ferry_status_t rpc_send_budget_create(size_t max_bytes, rpc_send_budget_t **budget_p)
{
    rpc_send_budget_t *b = calloc(1, sizeof(*b));

    if (b == NULL) {
        return FERRY_ERR_NO_MEMORY;
    }
    atomic_init(&b->refs, 1);
    atomic_init(&b->used, 0);
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
        free(b);
    }
}

size_t rpc_send_budget_used(const rpc_send_budget_t *b)
{
    return atomic_load(&((rpc_send_budget_t *)b)->used);
}

size_t rpc_send_budget_max(const rpc_send_budget_t *b)
{
    return b->max;
}

bool rpc__budget_take(rpc_send_budget_t *b, size_t n)
{
    size_t used = atomic_load(&b->used);

    do {
        if (b->max != 0 && (n > b->max || used > b->max - n)) {
            return false;
        }
    } while (!atomic_compare_exchange_weak(&b->used, &used, used + n));
    return true;
}

void rpc__budget_give(rpc_send_budget_t *b, size_t n)
{
    atomic_fetch_sub(&b->used, n);
}
