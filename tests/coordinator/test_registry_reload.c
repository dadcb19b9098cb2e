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
 *
 * And a registry destroyed while its maintenance thread reloads the view
 * returns after the page in flight, not after the whole load: the pages
 * did not look at `stopping`, so a replica's exit waited out a reload of
 * any length (audit-s33-operator L4). etcd_get then serves slow_pages
 * pages of one key each, 10 ms apiece, for every load after the first.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "coordinator/registry.h"

static atomic_int watches_made;
static atomic_int loads;      /* etcd_get calls that began a load (revision 0) */
static atomic_int pages_slow; /* pages served by a slow load */
static atomic_int slow_pages; /* a load after the first serves this many; 0: none */

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
    (void)client, (void)key_len, (void)range_end, (void)range_end_len, (void)limit;
    memset(range_p, 0, sizeof(*range_p));
    range_p->revision = 10;
    if (revision == 0 && atomic_fetch_add(&loads, 1) == 0) {
        return FERRY_OK; /* the first load (at create) is quick */
    }
    if (atomic_load(&slow_pages) == 0 || strncmp((const char *)key, "/ferry/claims/", 14) != 0) {
        return FERRY_OK;
    }
    int n = atomic_fetch_add(&pages_slow, 1);
    char name[64];
    int len = snprintf(name, sizeof(name), "/ferry/claims/%08d", n);
    poll(NULL, 0, 10); /* etcd's time for a page */
    range_p->kvs = calloc(1, sizeof(*range_p->kvs));
    range_p->kvs[0].key = (uint8_t *)strdup(name);
    range_p->kvs[0].key_len = (size_t)len;
    range_p->kvs[0].value = (uint8_t *)strdup("");
    range_p->n_kvs = 1;
    range_p->more = n + 1 < atomic_load(&slow_pages);
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

/* The first watch is lost, so the maintenance thread reloads: 1000 pages,
 * 10 s. Destroyed a few pages in, the registry returns within a second. */
static void test_destroy_does_not_wait_out_a_reload(void **state)
{
    coord_registry_params_t params = {
        .etcd = (etcd_client_t *)&params, /* never used: every call is wrapped */
        .prefix = "/ferry/",
        .default_ttl_s = 30,
        .on_event = on_event,
    };
    coord_registry_t *r;
    int64_t started;
    (void)state;

    atomic_store(&watches_made, 0);
    atomic_store(&loads, 0);
    atomic_store(&pages_slow, 0);
    atomic_store(&slow_pages, 1000);
    assert_int_equal(coord_registry_create(&params, &r), FERRY_OK);
    for (int64_t until = ferry__clock_ms(CLOCK_MONOTONIC) + 20000;
         ferry__clock_ms(CLOCK_MONOTONIC) < until && atomic_load(&pages_slow) < 5;
         poll(NULL, 0, 5)) {
    }
    assert_true(atomic_load(&pages_slow) >= 5);
    started = ferry__clock_ms(CLOCK_MONOTONIC);
    coord_registry_destroy(r);
    assert_true(ferry__clock_ms(CLOCK_MONOTONIC) - started < 1000);
    assert_true(atomic_load(&pages_slow) < 100);
    atomic_store(&slow_pages, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_watch_lost_at_once_still_reloads),
        cmocka_unit_test(test_destroy_does_not_wait_out_a_reload),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
