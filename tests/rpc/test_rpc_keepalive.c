/*
 * test_rpc_keepalive.c: a client's ping interval from FERRY_RPC_KEEPALIVE_MS
 * (rpc/rpc_client.c): a whole number of milliseconds in range is taken;
 * anything else (text, trailing garbage, a sign, out of range, overflow)
 * falls back to the default with a warning that names the value, and unset
 * or empty is the default without one.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "rpc/rpc_int.h"

#define DEFAULT_MS 20000

static char last_warning[512];
static int warnings;

static void sink(ferry_log_level_t level, const char *msg, void *arg)
{
    (void)arg;
    if (level == FERRY_LOG_WARN) {
        snprintf(last_warning, sizeof(last_warning), "%s", msg);
        warnings++;
    }
}

/* The interval for `value` (NULL: unset), and whether it warned. */
static int interval(const char *value, bool *warned)
{
    int before = warnings;
    int ms;

    if (value == NULL) {
        unsetenv("FERRY_RPC_KEEPALIVE_MS");
    } else {
        setenv("FERRY_RPC_KEEPALIVE_MS", value, 1);
    }
    last_warning[0] = '\0';
    ms = rpc__keepalive_ms();
    *warned = warnings != before;
    return ms;
}

static void test_taken_in_range(void **state)
{
    bool warned;
    (void)state;

    assert_int_equal(interval(NULL, &warned), DEFAULT_MS);
    assert_false(warned);
    assert_int_equal(interval("", &warned), DEFAULT_MS);
    assert_false(warned);
    assert_int_equal(interval("1000", &warned), 1000);
    assert_false(warned);
    assert_int_equal(interval("45000", &warned), 45000);
    assert_false(warned);
    assert_int_equal(interval("2000000", &warned), 2000000); /* 100 x the default */
    assert_false(warned);
}

static void test_garbage_falls_back_with_a_warning(void **state)
{
    static const char *bad[] = {"abc",     "12x", "-5000", "999",   "0",
                                "2000001", "1e4", " 5000", "5000 ", "99999999999999999999999",
                                "0x1000"};
    (void)state;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        bool warned;

        print_message("FERRY_RPC_KEEPALIVE_MS='%s'\n", bad[i]);
        assert_int_equal(interval(bad[i], &warned), DEFAULT_MS);
        assert_true(warned);
        assert_non_null(strstr(last_warning, "FERRY_RPC_KEEPALIVE_MS"));
        assert_non_null(strstr(last_warning, bad[i]));
    }
    unsetenv("FERRY_RPC_KEEPALIVE_MS");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_taken_in_range),
        cmocka_unit_test(test_garbage_falls_back_with_a_warning),
    };

    ferry_log_set_level(FERRY_LOG_WARN);
    ferry_log_set_sink(sink, NULL);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
