/*
 * test_etcd_faults.c: libcurl failures the etcd client must report, not
 * hide, forced through -Wl,--wrap seams against a real etcd:
 *   - curl_multi_add_handle failing: a watch says so at once
 *     (FERRY_ERR_INTERNAL naming it) instead of waiting out a stream that
 *     was never driven, and the next watch works;
 *   - curl_slist_append failing: a request's headers cannot be built and
 *     etcd_post returns early; its error text is curl's "Out of memory",
 *     never the uninitialised error buffer it used to read.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "etcd_fixture.h"

static atomic_int fail_multi_add; /* curl_multi_add_handle calls still to fail */
static atomic_int fail_slist;     /* curl_slist_append calls still to fail */

CURLMcode __real_curl_multi_add_handle(CURLM *multi, CURL *easy);
CURLMcode __wrap_curl_multi_add_handle(CURLM *multi, CURL *easy);
struct curl_slist *__real_curl_slist_append(struct curl_slist *list, const char *s);
struct curl_slist *__wrap_curl_slist_append(struct curl_slist *list, const char *s);

CURLMcode __wrap_curl_multi_add_handle(CURLM *multi, CURL *easy)
{
    if (atomic_load(&fail_multi_add) > 0) {
        atomic_fetch_sub(&fail_multi_add, 1);
        return CURLM_OUT_OF_MEMORY;
    }
    return __real_curl_multi_add_handle(multi, easy);
}

struct curl_slist *__wrap_curl_slist_append(struct curl_slist *list, const char *s)
{
    if (atomic_load(&fail_slist) > 0) {
        atomic_fetch_sub(&fail_slist, 1);
        return NULL;
    }
    return __real_curl_slist_append(list, s);
}

static void test_watch_add_handle_failure_is_reported(void **state)
{
    fixture_t *fx = *state;
    etcd_watch_params_t params = {.key = "f/a", .key_len = 3};
    recorder_t rec;
    etcd_watch_t *watch = NULL;

    recorder_init(&rec);
    recorder_params(&rec, &params);
    atomic_store(&fail_multi_add, 1);
    assert_int_equal(etcd_watch_create(fx->client, &params, &watch), FERRY_ERR_INTERNAL);
    assert_null(watch);
    assert_int_equal(atomic_load(&fail_multi_add), 0);
    assert_non_null(strstr(etcd_client_last_error(), "curl_multi_add_handle"));

    assert_int_equal(etcd_watch_create(fx->client, &params, &watch), FERRY_OK);
    etcd_watch_destroy(watch);
    recorder_fini(&rec);
}

/* Leaves bytes that are not NUL where the next calls' frames will be, so
 * that reading an unset buffer there shows. */
static void __attribute__((noinline)) dirty_stack(void)
{
    volatile char junk[32768];
    for (size_t i = 0; i < sizeof(junk); i++) {
        junk[i] = 'X';
    }
}

static void test_post_without_headers_says_out_of_memory(void **state)
{
    fixture_t *fx = *state;
    etcd_range_t range = {0};
    const char *err;

    atomic_store(&fail_slist, 1);
    dirty_stack();
    assert_int_equal(etcd_get(fx->client, "f/b", 3, NULL, 0, 0, 0, &range), FERRY_ERR_UNAVAILABLE);
    err = etcd_client_last_error();
    assert_non_null(strstr(err, curl_easy_strerror(CURLE_OUT_OF_MEMORY)));
    assert_null(strstr(err, "XXXX"));
    assert_int_equal(atomic_load(&fail_slist), 0);

    assert_int_equal(etcd_get(fx->client, "f/b", 3, NULL, 0, 0, 0, &range), FERRY_OK);
    etcd_range_free(&range);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_watch_add_handle_failure_is_reported),
        cmocka_unit_test(test_post_without_headers_says_out_of_memory),
    };
    return cmocka_run_group_tests(tests, fixture_setup, fixture_teardown);
}
