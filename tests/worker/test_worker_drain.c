/*
 * test_worker_drain.c: one pass of the loop (ferry__connector_drain) is
 * bounded. A party to one of our operations that keeps a message arriving
 * for every item the loop handles keeps its queue from ever emptying;
 * before the bound the pass never returned, holding the connector's lock:
 * every API call, every callback, the claims sweep and a caller's
 * deadline waited for the flood to stop.
 *
 * ucp_worker_progress is wrapped: while `flooded` is set, every call
 * queues one more completed request (a sent CREDIT: handled by freeing it)
 * and reports work, so the queue never empties. The pass must return
 * within its bound, say so (drain_capped), and a pass after the flood must
 * find the loop idle again; ferry_connector_progress, which runs passes
 * until the fd is armed, must give the caller's thread back meanwhile.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "worker/ferry_int.h"

#define WAIT_MS 10000

static ferry_connector_t *_Atomic flooded;

unsigned __real_ucp_worker_progress(ucp_worker_h worker);
unsigned __wrap_ucp_worker_progress(ucp_worker_h worker);

unsigned __wrap_ucp_worker_progress(ucp_worker_h worker)
{
    ferry_connector_t *c = atomic_load(&flooded);
    unsigned n = __real_ucp_worker_progress(worker);

    if (c == NULL || c->worker != worker) {
        return n;
    }
    ferry__req_t *req = calloc(1, sizeof(*req));
    assert_non_null(req);
    req->type = FERRY__REQ_CREDIT;
    req->connector = c;
    req->status = UCS_OK;
    *c->reqs_tail = req; /* lock held: the caller drains */
    c->reqs_tail = &req->next;
    return n + 1;
}

typedef struct {
    ferry_connector_t *c;
    bool capped; /* the pass stopped at its bound */
    atomic_bool done;
} pass_t;

static void *one_pass(void *arg)
{
    pass_t *p = arg;

    ferry__lock(p->c);
    ferry__connector_drain(p->c);
    p->capped = p->c->drain_capped; /* under the lock, as drain left it */
    ferry__unlock(p->c);
    atomic_store(&p->done, true);
    return NULL;
}

static bool wait_done(pass_t *p)
{
    for (int i = 0; i < WAIT_MS && !atomic_load(&p->done); i++) {
        poll(NULL, 0, 1);
    }
    return atomic_load(&p->done);
}

static ferry_connector_t *caller_connector(void)
{
    ferry_connector_params_t params = {.field_mask = FERRY_CONNECTOR_PARAM_FIELD_PROGRESS_MODE,
                                       .progress_mode = FERRY_PROGRESS_CALLER};
    ferry_connector_t *c = NULL;

    assert_int_equal(ferry_connector_create(&params, &c), FERRY_OK);
    return c;
}

static void test_a_pass_is_bounded_under_a_flood(void **state)
{
    ferry_connector_t *c = caller_connector();
    pass_t p = {.c = c};
    pthread_t t;
    (void)state;

    atomic_store(&flooded, c);
    assert_int_equal(pthread_create(&t, NULL, one_pass, &p), 0);
    assert_true(wait_done(&p)); /* before the bound: never */
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_true(p.capped);

    atomic_store(&flooded, NULL);
    ferry__lock(c);
    /* The flood's leftovers, a bounded pass at a time, until one ends idle. */
    ferry__connector_drain(c);
    for (int i = 0; i < 1000 && c->drain_capped; i++) {
        ferry__connector_drain(c);
    }
    assert_false(c->drain_capped);
    assert_null(c->reqs);
    ferry__unlock(c);
    assert_int_equal(ferry_connector_destroy(c), FERRY_OK);
}

typedef struct {
    ferry_connector_t *c;
    ferry_status_t status;
    atomic_bool done;
} progress_t;

static void *one_progress(void *arg)
{
    progress_t *p = arg;

    p->status = ferry_connector_progress(p->c);
    atomic_store(&p->done, true);
    return NULL;
}

/* ferry_connector_progress under a flood gives the caller's thread back (its
 * loop never armed the fd while work kept coming: before, it never
 * returned) and leaves the fd readable, so that a caller that polls it comes
 * straight back; once the flood stops, progress arms the fd again. */
static void test_progress_returns_under_a_flood(void **state)
{
    ferry_connector_t *c = caller_connector();
    progress_t p = {.c = c};
    struct pollfd pfd = {.events = POLLIN};
    pthread_t t;
    (void)state;

    assert_int_equal(ferry_connector_get_fd(c, &pfd.fd), FERRY_OK);
    atomic_store(&flooded, c);
    assert_int_equal(pthread_create(&t, NULL, one_progress, &p), 0);
    for (int i = 0; i < WAIT_MS && !atomic_load(&p.done); i++) {
        poll(NULL, 0, 1);
    }
    assert_true(atomic_load(&p.done)); /* before the slice: never */
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(p.status, FERRY_OK);
    assert_int_equal(poll(&pfd, 1, 0), 1); /* readable: call again */

    atomic_store(&flooded, NULL);
    for (int i = 0; i < 1000 && poll(&pfd, 1, 0) == 1; i++) {
        assert_int_equal(ferry_connector_progress(c), FERRY_OK);
    }
    assert_int_equal(poll(&pfd, 1, 0), 0); /* armed, idle */
    assert_int_equal(ferry_connector_destroy(c), FERRY_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_pass_is_bounded_under_a_flood),
        cmocka_unit_test(test_progress_returns_under_a_flood),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
