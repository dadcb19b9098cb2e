/*
 * test_rpc_env.c: the rpc layer's settings from the environment
 * (rpc__env_long): a client's ping interval (FERRY_RPC_KEEPALIVE_MS,
 * rpc_client.c) and how often a TLS client reads its files again
 * (FERRY_TLS_REFRESH_S, rpc_tls.c). A whole number in range is taken;
 * anything else (text, trailing garbage, a sign, a space, another base, out
 * of range, overflow) falls back to the default with a warning that names
 * the variable and the value; unset or empty is the default without one.
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

typedef struct {
    const char *name;
    long (*get)(void);
    long dflt, min, max;
} setting_t;

static long keepalive(void)
{
    return rpc__keepalive_ms();
}

static long refresh(void)
{
    return (long)rpc__tls_refresh_s();
}

static const setting_t settings[] = {
    {"FERRY_RPC_KEEPALIVE_MS", keepalive, 20000, RPC_KEEPALIVE_MIN_MS, 2000000},
    {"FERRY_TLS_REFRESH_S", refresh, RPC_TLS_REFRESH_S, 1, RPC_TLS_REFRESH_MAX_S},
};

/* The setting's value with `value` set (NULL: unset), and whether it warned. */
static long with(const setting_t *s, const char *value, bool *warned)
{
    int before = warnings;
    long v;

    if (value == NULL) {
        unsetenv(s->name);
    } else {
        setenv(s->name, value, 1);
    }
    last_warning[0] = '\0';
    v = s->get();
    *warned = warnings != before;
    unsetenv(s->name);
    return v;
}

static void test_taken_in_range(void **state)
{
    (void)state;

    for (size_t i = 0; i < sizeof(settings) / sizeof(settings[0]); i++) {
        const setting_t *s = &settings[i];
        char text[32];
        bool warned;

        print_message("%s\n", s->name);
        assert_int_equal(with(s, NULL, &warned), s->dflt);
        assert_false(warned);
        assert_int_equal(with(s, "", &warned), s->dflt);
        assert_false(warned);
        snprintf(text, sizeof(text), "%ld", s->min);
        assert_int_equal(with(s, text, &warned), s->min);
        assert_false(warned);
        snprintf(text, sizeof(text), "%ld", s->max);
        assert_int_equal(with(s, text, &warned), s->max);
        assert_false(warned);
    }
}

static void test_garbage_falls_back_with_a_warning(void **state)
{
    static const char *bad[] = {"abc",   "12x",    "-5000",
                                "1e4",   " 5000",  "5000 ",
                                "+5000", "0x1000", "99999999999999999999999"};
    (void)state;

    for (size_t i = 0; i < sizeof(settings) / sizeof(settings[0]); i++) {
        const setting_t *s = &settings[i];
        char below[32], above[32];
        const char *edges[] = {below, above};
        bool warned;

        snprintf(below, sizeof(below), "%ld", s->min - 1);
        snprintf(above, sizeof(above), "%ld", s->max + 1);
        for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]) + 2; k++) {
            const char *value = k < 2 ? edges[k] : bad[k - 2];

            print_message("%s='%s'\n", s->name, value);
            assert_int_equal(with(s, value, &warned), s->dflt);
            assert_true(warned);
            assert_non_null(strstr(last_warning, s->name));
            assert_non_null(strstr(last_warning, value));
        }
    }
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
