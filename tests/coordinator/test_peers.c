/*
 * test_peers.c: counts per client host (coordinator/peers.h): a host's
 * share is refused past its bound and comes back, and the table holds an
 * entry only while its host holds any, however many hosts come and go.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>

#include "peers.h"

static void test_a_host_is_bounded_and_its_share_comes_back(void **state)
{
    coord_peers_t *peers;

    (void)state;
    assert_int_equal(coord_peers_create(&peers), FERRY_OK);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(coord_peers_take(peers, "10.0.0.1", 3), FERRY_OK);
    }
    assert_int_equal(coord_peers_take(peers, "10.0.0.1", 3), FERRY_ERR_RESOURCE_EXHAUSTED);
    assert_int_equal(coord_peers_take(peers, "10.0.0.2", 3), FERRY_OK);
    assert_int_equal(coord_peers_held(peers, "10.0.0.1"), 3);
    assert_int_equal(coord_peers_count(peers), 2);
    coord_peers_give(peers, "10.0.0.1");
    assert_int_equal(coord_peers_take(peers, "10.0.0.1", 3), FERRY_OK);
    for (int i = 0; i < 3; i++) {
        coord_peers_give(peers, "10.0.0.1");
    }
    assert_int_equal(coord_peers_held(peers, "10.0.0.1"), 0);
    assert_int_equal(coord_peers_count(peers), 1);
    coord_peers_give(peers, "10.0.0.9"); /* never counted: nothing happens */
    assert_int_equal(coord_peers_take(peers, "10.0.0.3", 0), FERRY_OK); /* 0: no bound */
    coord_peers_destroy(peers);
    coord_peers_destroy(NULL);
}

/* 20,000 hosts, each holding two, then each giving them back: the table
 * grows with them and is empty after. */
static void test_the_table_holds_only_hosts_that_hold_any(void **state)
{
    coord_peers_t *peers;
    char host[32];

    (void)state;
    assert_int_equal(coord_peers_create(&peers), FERRY_OK);
    for (int i = 0; i < 20000; i++) {
        snprintf(host, sizeof(host), "10.%d.%d.%d", i >> 16, (i >> 8) & 255, i & 255);
        assert_int_equal(coord_peers_take(peers, host, 2), FERRY_OK);
        assert_int_equal(coord_peers_take(peers, host, 2), FERRY_OK);
    }
    assert_int_equal(coord_peers_count(peers), 20000);
    for (int i = 0; i < 20000; i++) {
        snprintf(host, sizeof(host), "10.%d.%d.%d", i >> 16, (i >> 8) & 255, i & 255);
        assert_int_equal(coord_peers_held(peers, host), 2);
        coord_peers_give(peers, host);
        coord_peers_give(peers, host);
    }
    assert_int_equal(coord_peers_count(peers), 0);
    coord_peers_destroy(peers);
}

/* Amounts (the view's bytes per host): an add that would pass the bound
 * counts nothing, a sub never takes more than the host holds, and the
 * entry goes at 0. */
static void test_amounts_are_bounded_and_taken_back(void **state)
{
    coord_peers_t *peers;

    (void)state;
    assert_int_equal(coord_peers_create(&peers), FERRY_OK);
    assert_int_equal(coord_peers_add(peers, "10.0.0.1", 700, 1000), FERRY_OK);
    assert_int_equal(coord_peers_add(peers, "10.0.0.1", 301, 1000), FERRY_ERR_RESOURCE_EXHAUSTED);
    assert_int_equal(coord_peers_held(peers, "10.0.0.1"), 700);
    assert_int_equal(coord_peers_add(peers, "10.0.0.1", 300, 1000), FERRY_OK);
    assert_int_equal(coord_peers_add(peers, "10.0.0.2", 1001, 1000), FERRY_ERR_RESOURCE_EXHAUSTED);
    assert_int_equal(coord_peers_count(peers), 1); /* nothing counted, no entry */
    assert_int_equal(coord_peers_add(peers, "10.0.0.2", SIZE_MAX, 0), FERRY_OK); /* no bound */
    assert_int_equal(coord_peers_add(peers, "10.0.0.2", 1, 1000), FERRY_ERR_RESOURCE_EXHAUSTED);
    assert_int_equal(coord_peers_add(peers, "10.0.0.3", 0, 1000), FERRY_OK);
    assert_int_equal(coord_peers_count(peers), 2); /* 0 makes no entry */
    coord_peers_sub(peers, "10.0.0.1", 400);
    assert_int_equal(coord_peers_held(peers, "10.0.0.1"), 600);
    coord_peers_sub(peers, "10.0.0.1", 5000);
    assert_int_equal(coord_peers_held(peers, "10.0.0.1"), 0);
    coord_peers_sub(peers, "10.0.0.2", SIZE_MAX);
    assert_int_equal(coord_peers_count(peers), 0);
    coord_peers_destroy(peers);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_host_is_bounded_and_its_share_comes_back),
        cmocka_unit_test(test_the_table_holds_only_hosts_that_hold_any),
        cmocka_unit_test(test_amounts_are_bounded_and_taken_back),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
