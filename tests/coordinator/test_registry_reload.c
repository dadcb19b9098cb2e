/*
 * test_registry_reload.c: a view whose new watch ends at once still
 * reloads. etcd answers a watch from a revision it has just compacted with
 * "created", then "canceled": the watch's thread reports the loss
 * (on_state(false, OUT_OF_RANGE): reload) and ends, possibly before
 * load_view, back from etcd_watch_create, marks the view live. load_view
 * used to set synced and clear reload after that, erasing the report: the
 * view stayed live, with no watch, until the replica restarted
 * (audit-s26-tsan2 L1).
 *
 * etcd through --wrap: the ping answers, every range is empty at revision
 * 10, the lease key's transaction is refused (best effort), and the first
 * watch reports its loss before etcd_watch_create returns (the race's
 * losing order, made certain); later watches stay up.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "coordinator/registry.h"

static atomic_int watches_made;

ferry_status_t __wrap_etcd_ping(etcd_client_t *client, int64_t *revision_p);
ferry_status_t __wrap_etcd_ping(etcd_client_t *client, int64_t *revision_p)
{
    (void)client;
    if (revision_p != NULL) {
        *revision_p = 10;
    }
    return FERRY_OK;
}

ferry_status_t __wrap_etcd_get(etcd_client_t *client, const void *key, size_t key_len,
                               const void *range_end, size_t range_end_len, int64_t limit,
                               int64_t revision, etcd_range_t *range_p);
ferry_status_t __wrap_etcd_get(etcd_client_t *client, const void *key, size_t key_len,
                               const void *range_end, size_t range_end_len, int64_t limit,
                               int64_t revision, etcd_range_t *range_p)
{
    (void)client, (void)key, (void)key_len, (void)range_end, (void)range_end_len, (void)limit;
    (void)revision;
    memset(range_p, 0, sizeof(*range_p));
    range_p->revision = 10;
    return FERRY_OK;
}

ferry_status_t __wrap_etcd_txn(etcd_client_t *client, const etcd_compare_t *compares, size_t nc,
                               const etcd_op_t *success, size_t ns, const etcd_op_t *failure,
                               size_t nf, etcd_txn_result_t *result);
ferry_status_t __wrap_etcd_txn(etcd_client_t *client, const etcd_compare_t *compares, size_t nc,
                               const etcd_op_t *success, size_t ns, const etcd_op_t *failure,
                               size_t nf, etcd_txn_result_t *result)
{
    (void)client, (void)compares, (void)nc, (void)success, (void)ns, (void)failure, (void)nf;
    memset(result, 0, sizeof(*result));
    return FERRY_ERR_UNAVAILABLE;
}

ferry_status_t __wrap_etcd_watch_create(etcd_client_t *client, const etcd_watch_params_t *params,
                                        etcd_watch_t **watch_p);
ferry_status_t __wrap_etcd_watch_create(etcd_client_t *client, const etcd_watch_params_t *params,
                                        etcd_watch_t **watch_p)
{
    (void)client;
    if (atomic_fetch_add(&watches_made, 1) == 0) {
        /* Created, then canceled: compacted. */
        params->on_state(params->arg, false, FERRY_ERR_OUT_OF_RANGE);
    } else {
        params->on_state(params->arg, true, FERRY_OK);
    }
    *watch_p = (etcd_watch_t *)&watches_made; /* a handle destroy ignores */
    return FERRY_OK;
}

void __wrap_etcd_watch_destroy(etcd_watch_t *watch);
void __wrap_etcd_watch_destroy(etcd_watch_t *watch)
{
    (void)watch;
}

static void on_event(void *arg, coord_event_type_t type, const Ferry__V1__Operation *op,
                     int64_t revision)
{
    (void)arg, (void)type, (void)op, (void)revision;
}

static void test_a_watch_lost_at_once_still_reloads(void **state)
{
    coord_registry_params_t params = {
        .etcd = (etcd_client_t *)&params, /* never used: every call is wrapped */
        .prefix = "/ferry/",
        .default_ttl_s = 30,
        .on_event = on_event,
    };
    size_t n, by_state[FERRY_OP_STATE_COUNT];
    bool live = true;
    coord_registry_t *r;
    (void)state;

    assert_int_equal(coord_registry_create(&params, &r), FERRY_OK);
    /* The lost watch asks for a reload, whose watch makes the view live. */
    for (int64_t until = ferry__clock_ms(CLOCK_MONOTONIC) + 20000;
         ferry__clock_ms(CLOCK_MONOTONIC) < until; poll(NULL, 0, 10)) {
        coord_registry_view_stats(r, &n, &live, by_state);
        if (live && atomic_load(&watches_made) == 2) {
            break;
        }
    }
    assert_int_equal(atomic_load(&watches_made), 2);
    assert_true(live);
    coord_registry_destroy(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_watch_lost_at_once_still_reloads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
