/*
 * test_worker_session.c: the session lease's renewal period and retry
 * pauses (worker/coord_client_int.h) follow the TTL a coordinator answers,
 * within bounds: a broken or hostile coordinator's TTL of up to 2^63 s
 * used to overflow the period in milliseconds (ttl * 1000), which made the
 * renewal thread loop without waiting. Every period is positive and at most
 * a third of COORD_MAX_TTL_S.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <string.h>

#include "worker/coord_client_int.h"

static void test_period_follows_the_ttl(void **state)
{
    ferry_coordinator_t coord;

    (void)state;
    memset(&coord, 0, sizeof(coord));
    assert_int_equal(period_ms(&coord), COORD_DEFAULT_TTL_S * 1000 / 3); /* none yet */
    coord.session_ttl_s = 1;
    assert_int_equal(period_ms(&coord), 333);
    coord.session_ttl_s = 30;
    assert_int_equal(period_ms(&coord), 10000);
    coord.session_ttl_s = -5;
    assert_int_equal(period_ms(&coord), COORD_DEFAULT_TTL_S * 1000 / 3);
}

static void test_a_huge_ttl_is_bounded(void **state)
{
    static const int64_t ttls[] = {COORD_MAX_TTL_S + 1, INT64_MAX / 1000 + 1, (int64_t)1 << 62,
                                   INT64_MAX};
    ferry_coordinator_t coord;

    (void)state;
    memset(&coord, 0, sizeof(coord));
    for (size_t i = 0; i < sizeof(ttls) / sizeof(ttls[0]); i++) {
        coord.session_ttl_s = ttls[i];
        assert_int_equal(period_ms(&coord), (int64_t)COORD_MAX_TTL_S * 1000 / 3);
        for (int tries = 0; tries < 64; tries++) {
            int64_t pause = retry_ms(&coord, tries);
            assert_true(pause >= 50 && pause <= period_ms(&coord));
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_period_follows_the_ttl),
        cmocka_unit_test(test_a_huge_ttl_is_bounded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
