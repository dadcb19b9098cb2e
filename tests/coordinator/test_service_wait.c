/*
 * test_service_wait.c: when a Lookup's or Claim's wait ends
 * (service_wait_deadline): never past the caller's deadline, never wrapped
 * by a huge wait_ms (2^63-1 once overflowed into "no wait"), 0 for no wait.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "service_int.h"

#define NOW 5000000 /* a monotonic clock some time after boot */

static void test_no_wait(void **state)
{
    (void)state;
    assert_int_equal(service_wait_deadline(NOW, 0, INT64_MAX), 0);
    assert_int_equal(service_wait_deadline(NOW, -5, INT64_MAX), 0);
}

static void test_extremes_saturate(void **state)
{
    (void)state;
    /* No caller deadline: the wait alone bounds it, saturated. */
    assert_true(service_wait_deadline(NOW, INT64_MAX, INT64_MAX) == INT64_MAX);
    assert_true(service_wait_deadline(NOW, INT64_MAX - 1000, INT64_MAX) == INT64_MAX);
    assert_true(service_wait_deadline(INT64_MAX - 1, 2, INT64_MAX) == INT64_MAX);
    assert_true(service_wait_deadline(NOW, INT64_MAX / 2, INT64_MAX) == NOW + INT64_MAX / 2);
    assert_true(service_wait_deadline(NOW, 1, INT64_MAX) == NOW + 1);
}

static void test_caller_deadline_bounds_it(void **state)
{
    (void)state;
    assert_true(service_wait_deadline(NOW, INT64_MAX, 10000) == NOW + 10000);
    assert_true(service_wait_deadline(NOW, 300, 10000) == NOW + 300);
    /* The caller's deadline already passed: the wait is over at once, but
     * it was asked for (not 0, which means "no wait"). */
    assert_true(service_wait_deadline(NOW, 300, -20) == NOW);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_wait),
        cmocka_unit_test(test_extremes_saturate),
        cmocka_unit_test(test_caller_deadline_bounds_it),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
