/*
 * test_worker_device.c: device strings, descriptor lists and byte sizes
 * (worker/device.c). Pure functions: no UCX.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "ferry/ferry.h"

static void test_device_parse_good(void **state)
{
    ferry_device_t d;
    (void)state;

    assert_int_equal(ferry_device_parse("cpu", &d), FERRY_OK);
    assert_int_equal(d.kind, FERRY_DEVICE_HOST);
    assert_int_equal(d.id, 0);
    assert_int_equal(ferry_device_parse("host", &d), FERRY_OK);
    assert_int_equal(d.kind, FERRY_DEVICE_HOST);
    assert_int_equal(ferry_device_parse("cuda", &d), FERRY_OK);
    assert_int_equal(d.kind, FERRY_DEVICE_CUDA);
    assert_int_equal(d.id, 0);
    assert_int_equal(ferry_device_parse("cuda:0", &d), FERRY_OK);
    assert_int_equal(d.id, 0);
    assert_int_equal(ferry_device_parse("cuda:7", &d), FERRY_OK);
    assert_int_equal(d.kind, FERRY_DEVICE_CUDA);
    assert_int_equal(d.id, 7);
    assert_int_equal(ferry_device_parse("cuda:4294967295", &d), FERRY_OK);
    assert_int_equal(d.id, 4294967295u);
}

static void test_device_parse_bad(void **state)
{
    static const char *const bad[] = {"cuda:",   "cuda:-1", "gpu",     "",
                                      "CPU",     "cuda:x",  "cuda:1x", "cuda: 1",
                                      "cuda:+1", "cuda0",   "cpu:0",   "cuda:4294967296"};
    ferry_device_t d = {FERRY_DEVICE_HOST, 42};
    (void)state;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(ferry_device_parse(bad[i], &d), FERRY_ERR_INVALID_ARGUMENT);
        assert_int_equal(d.id, 42); /* untouched on failure */
        assert_non_null(strstr(ferry_last_error_message(), "device"));
    }
    assert_int_equal(ferry_device_parse(NULL, &d), FERRY_ERR_INVALID_ARGUMENT);
}

static void test_device_to_string(void **state)
{
    char buf[16];
    ferry_device_t d;
    (void)state;

    assert_int_equal(
        ferry_device_to_string((ferry_device_t){FERRY_DEVICE_HOST, 0}, buf, sizeof(buf)), FERRY_OK);
    assert_string_equal(buf, "cpu");
    assert_int_equal(
        ferry_device_to_string((ferry_device_t){FERRY_DEVICE_CUDA, 3}, buf, sizeof(buf)), FERRY_OK);
    assert_string_equal(buf, "cuda:3");
    assert_int_equal(ferry_device_parse(buf, &d), FERRY_OK);
    assert_int_equal(d.id, 3);
    assert_int_equal(ferry_device_to_string((ferry_device_t){FERRY_DEVICE_CUDA, 3}, buf, 4),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_int_equal(ferry_device_to_string((ferry_device_t){0, 0}, buf, sizeof(buf)),
                     FERRY_ERR_INVALID_ARGUMENT);
}

static void test_descriptors(void **state)
{
    char a[8], b[8];
    ferry_descriptor_t ok[2] = {{a, sizeof(a), FERRY_DEVICE_HOST_INIT},
                                {b, sizeof(b), FERRY_DEVICE_HOST_INIT}};
    ferry_descriptor_t d[2];
    (void)state;

    assert_int_equal(ferry_descriptors_validate(ok, 2), FERRY_OK);
    assert_int_equal(ferry_descriptors_validate(ok, 0), FERRY_ERR_INVALID_ARGUMENT);
    assert_int_equal(ferry_descriptors_validate(NULL, 1), FERRY_ERR_INVALID_ARGUMENT);

    memcpy(d, ok, sizeof(d));
    d[1].ptr = NULL;
    assert_int_equal(ferry_descriptors_validate(d, 2), FERRY_ERR_INVALID_ARGUMENT);
    assert_string_equal(ferry_last_error_message(), "descriptor 1: null pointer");

    memcpy(d, ok, sizeof(d));
    d[0].size = 0;
    assert_int_equal(ferry_descriptors_validate(d, 2), FERRY_ERR_INVALID_ARGUMENT);
    assert_string_equal(ferry_last_error_message(), "descriptor 0: zero size");

    memcpy(d, ok, sizeof(d));
    d[1].device = (ferry_device_t){FERRY_DEVICE_CUDA, 0};
    assert_int_equal(ferry_descriptors_validate(d, 2), FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(ferry_last_error_message(), "all host or all cuda"));

    /* An end past the top of the address space (ptr + size wraps to 0 or
     * beyond) is refused; one that stops short of it is not. */
    memcpy(d, ok, sizeof(d));
    d[1].ptr = (void *)(UINTPTR_MAX - 4095);
    d[1].size = 4096;
    assert_int_equal(ferry_descriptors_validate(d, 2), FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(ferry_last_error_message(), "descriptor 1: "));
    assert_non_null(strstr(ferry_last_error_message(), "wraps around the address space"));
    d[1].size = SIZE_MAX;
    assert_int_equal(ferry_descriptors_validate(d, 2), FERRY_ERR_INVALID_ARGUMENT);
    d[1].size = 4095;
    assert_int_equal(ferry_descriptors_validate(d, 2), FERRY_OK);

    memcpy(d, ok, sizeof(d));
    d[0].device = (ferry_device_t){FERRY_DEVICE_CUDA, 1};
    d[1].device = (ferry_device_t){FERRY_DEVICE_CUDA, 0};
    assert_int_equal(ferry_descriptors_validate(d, 2), FERRY_OK); /* one kind, two ids */

    memcpy(d, ok, sizeof(d));
    d[0].device = (ferry_device_t){0, 0};
    assert_int_equal(ferry_descriptors_validate(d, 2), FERRY_ERR_INVALID_ARGUMENT);
}

static void test_parse_size(void **state)
{
    static const struct {
        const char *text;
        uint64_t value;
    } good[] = {{"0", 0},
                {"4096", 4096},
                {"1B", 1},
                {"4KiB", 4096},
                {"1K", 1024},
                {"64MiB", 64ull << 20},
                {"1GiB", 1ull << 30},
                {"1G", 1ull << 30},
                {"2TiB", 2ull << 40},
                {"1kB", 1000},
                {"3MB", 3000000},
                {"1GB", 1000000000}};
    static const char *const bad[] = {"",
                                      "MiB",
                                      "-1",
                                      "1.5MiB",
                                      "1 MiB",
                                      "1XB",
                                      "1mib",
                                      "99999999999999999999",
                                      "17179869184GiB"};
    uint64_t v = 77;
    (void)state;

    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        assert_int_equal(ferry_parse_size(good[i].text, &v), FERRY_OK);
        assert_int_equal(v, good[i].value);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        v = 77;
        assert_int_equal(ferry_parse_size(bad[i], &v), FERRY_ERR_INVALID_ARGUMENT);
        assert_int_equal(v, 77);
    }
    assert_int_equal(ferry_parse_size(NULL, &v), FERRY_ERR_INVALID_ARGUMENT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_device_parse_good), cmocka_unit_test(test_device_parse_bad),
        cmocka_unit_test(test_device_to_string),  cmocka_unit_test(test_descriptors),
        cmocka_unit_test(test_parse_size),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
