/*
 * test_log.c: a text log line is one line whatever its message holds: the
 * control bytes a client's name or reason may carry (a newline that would
 * forge a line of its own, a terminal escape) are written as \xNN; the
 * rest of the message is as it was.
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

/* Logs msg at info with stderr on a pipe; the bytes written, into out. */
static void logged(const char *msg, char *out, size_t cap)
{
    int fds[2], saved;
    ssize_t n;

    assert_int_equal(pipe(fds), 0);
    saved = dup(STDERR_FILENO);
    assert_true(saved >= 0);
    assert_true(dup2(fds[1], STDERR_FILENO) >= 0);
    ferry_log_set_level(FERRY_LOG_INFO);
    ferry_info("registry: owner '%s' is here", msg);
    assert_true(dup2(saved, STDERR_FILENO) >= 0);
    close(saved);
    close(fds[1]);
    n = read(fds[0], out, cap - 1);
    close(fds[0]);
    assert_true(n > 0);
    out[n] = '\0';
}

static void test_control_bytes_are_escaped(void **state)
{
    char out[512];
    (void)state;

    logged("x\n2026-01-01T00:00:00.000Z error forged\x1b[31m\x7f", out, sizeof(out));
    /* One line: its only newline ends it. */
    assert_ptr_equal(strchr(out, '\n'), out + strlen(out) - 1);
    assert_non_null(
        strstr(out, "owner 'x\\x0a2026-01-01T00:00:00.000Z error forged\\x1b[31m\\x7f' is here"));
    /* C1 (U+009B, CSI to xterm) and a right-to-left override, both valid
     * UTF-8, act on a terminal too. */
    logged("y\xC2\x9B"
           "31m\xE2\x80\xAE"
           "gpj.exe",
           out, sizeof(out));
    assert_non_null(strstr(out, "owner 'y\\xc2\\x9b31m\\xe2\\x80\\xaegpj.exe' is here"));
    /* A backslash is escaped too, so that a name typed as "\x1b" does not
     * read as an escaped ESC; and an invisible direction mark (U+200F). */
    logged("z\\x1b\xE2\x80\x8F", out, sizeof(out));
    assert_non_null(strstr(out, "owner 'z\\x5cx1b\\xe2\\x80\\x8f' is here"));
}

static void test_printable_text_is_unchanged(void **state)
{
    char out[512];
    (void)state;

    logged("w\xc3\xa9rker \"7\" tab-free", out, sizeof(out));
    assert_non_null(strstr(out, "info  registry: owner 'w\xc3\xa9rker \"7\" tab-free' is here\n"));
}

/* With FERRY_LOG_FORMAT=json the line is one JSON object that a strict
 * parser takes: control characters, C1, bidirectional overrides and marks
 * as \\uXXXX, bytes that are not UTF-8 as U+FFFD, quotes and backslashes
 * escaped (JSON's own way). */
static void test_json_lines_are_json(void **state)
{
    char out[512];
    (void)state;

    setenv("FERRY_LOG_FORMAT", "json", 1);
    assert_int_equal(ferry_log_init_from_env("test_log", FERRY_LOG_INFO), 0);
    logged("a\"b\n\x1b[2J\xC2\x9B"
           "31m\xE2\x80\xAE"
           "x\xFF\xC3\xA9\\\xE2\x80\x8F",
           out, sizeof(out));
    unsetenv("FERRY_LOG_FORMAT");
    assert_int_equal(ferry_log_init_from_env("test_log", FERRY_LOG_INFO), 0);
    assert_ptr_equal(strchr(out, '\n'), out + strlen(out) - 1);
    assert_non_null(strstr(out, "\"msg\":\"registry: owner 'a\\\"b\\u000a\\u001b[2J\\u009b31m"
                                "\\u202ex\\ufffd\xC3\xA9\\\\\\u200f' is here\"}"));
}

/* The level names both programs take (their flags, FERRY_LOG_LEVEL), "off"
 * among them (the coordinator refused it), and nothing else. */
static void test_level_names(void **state)
{
    static const char *const names[] = {"off", "error", "warn", "info", "debug", "trace"};
    static const char *const bad[] = {"", "OFF", "Info", "none", "warning", "info "};
    ferry_log_level_t level;
    (void)state;

    for (int i = 0; i < 6; i++) {
        level = (ferry_log_level_t)99;
        assert_int_equal(ferry_log_level_parse(names[i], &level), 0);
        assert_int_equal(level, FERRY_LOG_OFF + i);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(ferry_log_level_parse(bad[i], &level), -1);
    }
}

/* A repeated line: the first is due, the next ones within the period are
 * not (counted), and the first after it is, with their count. */
static void test_repeated_lines_are_limited(void **state)
{
    static ferry_log_limit_t limit;
    unsigned quiet = 99;

    (void)state;
    assert_true(ferry_log_due(&limit, &quiet));
    assert_int_equal(quiet, 0);
    assert_false(ferry_log_due(&limit, &quiet));
    assert_false(ferry_log_due(&limit, &quiet));
    atomic_fetch_sub(&limit.last_ms, FERRY_LOG_REPEAT_MS + 1); /* the period is over */
    assert_true(ferry_log_due(&limit, &quiet));
    assert_int_equal(quiet, 2);
    assert_false(ferry_log_due(&limit, &quiet));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_level_names),
        cmocka_unit_test(test_control_bytes_are_escaped),
        cmocka_unit_test(test_printable_text_is_unchanged),
        cmocka_unit_test(test_json_lines_are_json),
        cmocka_unit_test(test_repeated_lines_are_limited),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
