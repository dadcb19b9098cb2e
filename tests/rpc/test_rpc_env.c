/*
 * test_rpc_env.c: a client channel's ping interval and TLS refresh, from
 * its params and from the environment.
 *
 * The params (rpc_channel_create): 0 is the default, a value in range is
 * taken, one out of range is refused with a message naming the field.
 *
 * The environment (rpc_env_keepalive_ms, rpc_env_tls_refresh_s), which
 * programs and libferry put in the params: a whole number in range is
 * taken; anything else (text, trailing garbage, a sign, a space, another
 * base, out of range, overflow) is 0, the default, with a warning that
 * names the variable and the value; unset or empty is 0 without one.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
    return rpc_env_keepalive_ms();
}

static long refresh(void)
{
    return rpc_env_tls_refresh_s();
}

static const setting_t settings[] = {
    {"FERRY_RPC_KEEPALIVE_MS", keepalive, 0, RPC_KEEPALIVE_MIN_MS, 2000000},
    {"FERRY_TLS_REFRESH_S", refresh, 0, 1, RPC_TLS_REFRESH_MAX_S},
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

static char last_error[512];

static void error_sink(ferry_log_level_t level, const char *msg, void *arg)
{
    (void)arg;
    if (level == FERRY_LOG_ERROR) {
        snprintf(last_error, sizeof(last_error), "%s", msg);
    }
}

/* rpc_channel_create with keepalive_ms and tls_refresh_s set so (TLS: a
 * CA file, read at create); on FERRY_OK the channel is destroyed. */
static ferry_status_t create_with(int keepalive_ms, int tls_refresh_s, const char *ca)
{
    rpc_tls_params_t tls = {.ca_file = ca};
    rpc_channel_params_t p = {.target = "127.0.0.1:1",
                              .tls = ca != NULL ? &tls : NULL,
                              .keepalive_ms = keepalive_ms,
                              .tls_refresh_s = tls_refresh_s};
    rpc_channel_t *channel = NULL;
    ferry_status_t status;

    last_error[0] = '\0';
    status = rpc_channel_create(&p, &channel);
    rpc_channel_destroy(channel);
    return status;
}

static void test_params_in_range_taken_else_refused(void **state)
{
    char ca[] = "/tmp/ferry-env-ca-XXXXXX";
    int fd = mkstemp(ca);
    (void)state;

    /* Any PEM text: the client's watcher reads the file, a handshake (none
     * here) would use it. */
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "-----BEGIN CERTIFICATE-----\n", 28), 28);
    close(fd);
    ferry_log_set_sink(error_sink, NULL);
    assert_int_equal(create_with(0, 0, NULL), FERRY_OK);
    assert_int_equal(create_with(RPC_KEEPALIVE_MIN_MS, 0, NULL), FERRY_OK);
    assert_int_equal(create_with(RPC_KEEPALIVE_MAX_MS, 0, NULL), FERRY_OK);
    assert_int_equal(create_with(0, 1, ca), FERRY_OK);
    assert_int_equal(create_with(0, RPC_TLS_REFRESH_MAX_S, ca), FERRY_OK);
    const int bad_keepalive[] = {RPC_KEEPALIVE_MIN_MS - 1, RPC_KEEPALIVE_MAX_MS + 1, -1};
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(create_with(bad_keepalive[i], 0, NULL), FERRY_ERR_INVALID_ARGUMENT);
        assert_non_null(strstr(last_error, "keepalive_ms"));
    }
    const int bad_refresh[] = {RPC_TLS_REFRESH_MAX_S + 1, -1};
    for (size_t i = 0; i < 2; i++) {
        assert_int_equal(create_with(0, bad_refresh[i], ca), FERRY_ERR_INVALID_ARGUMENT);
        assert_non_null(strstr(last_error, "tls_refresh_s"));
    }
    ferry_log_set_sink(sink, NULL);
    unlink(ca);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_taken_in_range),
        cmocka_unit_test(test_garbage_falls_back_with_a_warning),
        cmocka_unit_test(test_params_in_range_taken_else_refused),
    };

    ferry_log_set_level(FERRY_LOG_WARN);
    ferry_log_set_sink(sink, NULL);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
