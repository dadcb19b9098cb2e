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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_host_is_bounded_and_its_share_comes_back),
        cmocka_unit_test(test_the_table_holds_only_hosts_that_hold_any),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
