/*
 * test_etcd_faults.c: libcurl failures the etcd client must report, not
 * hide, forced through -Wl,--wrap seams against a real etcd:
 *   - curl_multi_add_handle failing: a watch says so at once
 *     (FERRY_ERR_INTERNAL naming it) instead of waiting out a stream that
 *     was never driven, and the next watch works;
 *   - curl_slist_append failing: a request's headers cannot be built and
 *     etcd_post returns early; its error text is curl's "Out of memory",
 *     never the uninitialised error buffer it used to read.
 * And member lists no etcd gives, from a scripted member: the member check
 * of the health ping (etcd_check_members) reads only members that have
 * client URLs and a vote, bounds its warning, and asks at most
 * ETCD_MEMBER_CHECKS (5) pings for a list that does not answer.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "etcd_fixture.h"

#include "common/log.h"

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

/* The warnings logged (the log's sink), under warned.lock. */
static struct {
    pthread_mutex_t lock;
    char text[4][1024];
    int n;
} warned = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void warn_sink(ferry_log_level_t level, const char *msg, void *arg)
{
    (void)arg;
    pthread_mutex_lock(&warned.lock);
    if (level <= FERRY_LOG_WARN && warned.n < (int)(sizeof(warned.text) / sizeof(warned.text[0]))) {
        snprintf(warned.text[warned.n], sizeof(warned.text[0]), "%s", msg);
    }
    warned.n += level <= FERRY_LOG_WARN ? 1 : 0;
    pthread_mutex_unlock(&warned.lock);
}

/* A scripted member whose status has a leader and whose linearizable read
 * answers, so that a ping gets to its member check; and a client on it
 * that checks (the coordinator's, on an etcd the operator runs). Warnings
 * go to warned. */
static etcd_client_t *member_check_start(scripted_etcd_t *s, const char *members)
{
    etcd_params_t params = {.timeout_ms = 2000, .kv_gateway = true, .check_version = true};
    etcd_client_t *client = NULL;

    scripted_etcd_start(s);
    scripted_etcd_answer(
        s, "/v3/maintenance/status", 200,
        "{\"header\":{\"revision\":\"7\"},\"version\":\"3.5.17\",\"leader\":\"1\"}");
    scripted_etcd_answer(s, "/v3/kv/range", 200, "{\"header\":{\"revision\":\"7\"}}");
    scripted_etcd_answer(s, "/v3/cluster/member/list", 200, members);
    params.endpoints = s->url;
    assert_int_equal(etcd_client_create(&params, &client), FERRY_OK);
    pthread_mutex_lock(&warned.lock);
    warned.n = 0;
    pthread_mutex_unlock(&warned.lock);
    ferry_log_set_level(FERRY_LOG_WARN);
    ferry_log_set_sink(warn_sink, NULL);
    return client;
}

/* Stops what member_check_start started. Returns the warnings logged,
 * and in *asked_p how often the member list was asked. */
static int member_check_stop(scripted_etcd_t *s, etcd_client_t *client, int *asked_p)
{
    int n;

    ferry_log_set_sink(NULL, NULL);
    ferry_log_set_level(FERRY_LOG_OFF);
    pthread_mutex_lock(&warned.lock);
    n = warned.n;
    pthread_mutex_unlock(&warned.lock);
    *asked_p = scripted_etcd_hits(s, "/v3/cluster/member/list");
    etcd_client_destroy(client);
    scripted_etcd_stop(s);
    return n;
}

/* A member list with entries no etcd gives (not an object, client URLs
 * that are not a list or hold no text, a member of text alone) beside a
 * learner, a member not started (no client URL) and three real members
 * (this client's, with a trailing slash; two others, one after a number
 * in its URLs): nothing crashes, and the check warns once, of three
 * members and of the two real ones it does not name only. Asked once: it
 * answered. */
static void test_member_check_names_only_real_members(void **state)
{
    scripted_etcd_t s;
    char members[2048];
    etcd_client_t *client;
    int n, asked;
    (void)state;

    client = member_check_start(&s, "{}");
    snprintf(members, sizeof(members),
             "{\"header\":{\"revision\":\"7\"},\"members\":["
             "42,\"http://10.9.9.1:2379\",null,"
             "{\"name\":\"text\",\"clientURLs\":\"http://10.9.9.2:2379\"},"
             "{\"name\":\"object\",\"clientURLs\":{\"u\":\"http://10.9.9.3:2379\"}},"
             "{\"name\":\"no-text\",\"clientURLs\":[7,null,true,"
             "{\"u\":\"http://10.9.9.4:2379\"},[\"http://10.9.9.5:2379\"]]},"
             "{\"name\":\"learner\",\"clientURLs\":[\"http://10.9.9.6:2379\"],"
             "\"isLearner\":true},"
             "{\"name\":\"unstarted\",\"peerURLs\":[\"http://10.9.9.7:2380\"]},"
             "{\"name\":\"empty\",\"clientURLs\":[]},"
             "{\"name\":\"self\",\"clientURLs\":[\"%s/\"]},"
             "{\"name\":\"other\",\"clientURLs\":[\"http://10.0.0.2:2379\"]},"
             "{\"name\":\"after-a-number\",\"clientURLs\":[7,\"http://10.0.0.4:2379\"]}]}",
             s.url);
    scripted_etcd_answer(&s, "/v3/cluster/member/list", 200, members);
    assert_int_equal(etcd_ping(client, NULL), FERRY_OK);
    assert_int_equal(etcd_ping(client, NULL), FERRY_OK);
    n = member_check_stop(&s, client, &asked);
    assert_int_equal(asked, 1);
    assert_int_equal(n, 1);
    assert_non_null(strstr(warned.text[0], "has 3 members"));
    assert_non_null(strstr(warned.text[0], "names 1 of them"));
    assert_non_null(strstr(warned.text[0], "(not http://10.0.0.2:2379, http://10.0.0.4:2379)"));
    assert_null(strstr(warned.text[0], "10.9.9."));
}

/* A member list whose members are not a list (an object of members, text,
 * a number) lists none: nothing is warned, and it answered (asked once). */
static void test_member_check_reads_members_from_a_list_only(void **state)
{
    static const char *const replies[] = {
        "{\"members\":{\"a\":{\"clientURLs\":[\"http://10.9.9.1:2379\"]},"
        "\"b\":{\"clientURLs\":[\"http://10.9.9.2:2379\"]}}}",
        "{\"members\":\"http://10.9.9.3:2379\"}",
        "{\"members\":2}",
    };
    (void)state;

    for (size_t i = 0; i < sizeof(replies) / sizeof(replies[0]); i++) {
        scripted_etcd_t s;
        etcd_client_t *client = member_check_start(&s, replies[i]);
        int n, asked;

        assert_int_equal(etcd_ping(client, NULL), FERRY_OK);
        assert_int_equal(etcd_ping(client, NULL), FERRY_OK);
        n = member_check_stop(&s, client, &asked);
        assert_int_equal(asked, 1);
        assert_int_equal(n, 0);
    }
}

/* Members whose client URLs are long (3,000 bytes each, 24 of them): the
 * warning names each by its first 100 bytes at most, and all of them in
 * 255 bytes at most (a reply's size does not make a log line's). */
static void test_member_check_warning_is_bounded(void **state)
{
    enum { N = 24, URL_LEN = 3000 };
    static char members[N * (URL_LEN + 64) + 64];
    static char urls[N][URL_LEN + 1];
    scripted_etcd_t s;
    etcd_client_t *client;
    size_t used = 0;
    const char *from, *to;
    int n, asked;
    (void)state;

    used += (size_t)snprintf(members, sizeof(members), "{\"members\":[");
    for (size_t i = 0; i < N; i++) {
        int k = snprintf(urls[i], sizeof(urls[i]), "http://10.0.%zu.1:2379/", i);
        memset(urls[i] + k, 'a' + (char)i, URL_LEN - (size_t)k);
        urls[i][URL_LEN] = '\0';
        used += (size_t)snprintf(members + used, sizeof(members) - used,
                                 "%s{\"clientURLs\":[\"%s\"]}", i > 0 ? "," : "", urls[i]);
    }
    snprintf(members + used, sizeof(members) - used, "]}");
    client = member_check_start(&s, members);
    assert_int_equal(etcd_ping(client, NULL), FERRY_OK);
    n = member_check_stop(&s, client, &asked);
    assert_int_equal(asked, 1);
    assert_int_equal(n, 1);
    assert_non_null(strstr(warned.text[0], "has 24 members"));
    from = strstr(warned.text[0], "(not ");
    to = strstr(warned.text[0], "): unless");
    assert_non_null(from);
    assert_non_null(to);
    from += strlen("(not ");
    assert_true(to > from && (size_t)(to - from) <= 255);
    urls[0][100] = '\0'; /* its first 100 bytes are named, no more */
    assert_true(strncmp(from, urls[0], 100) == 0);
    assert_true(from[100] == ',');
    urls[1][100] = '\0';
    assert_non_null(strstr(from, urls[1]));
}

/* A member list that does not answer (a reply that is not an object) is
 * asked again at each ping, five in all, and then no more; nothing is
 * warned. One that answers at its third ping warns then and is asked no
 * more. */
static void test_member_check_stops_after_five_pings(void **state)
{
    scripted_etcd_t s;
    char members[256];
    etcd_client_t *client;
    int n, asked, pinged;
    (void)state;

    client = member_check_start(&s, "[{\"clientURLs\":[\"http://10.0.0.2:2379\"]}]");
    for (int i = 0; i < 8; i++) {
        assert_int_equal(etcd_ping(client, NULL), FERRY_OK);
    }
    pinged = scripted_etcd_hits(&s, "/v3/maintenance/status");
    n = member_check_stop(&s, client, &asked);
    assert_int_equal(asked, 5);
    assert_int_equal(pinged, 8);
    assert_int_equal(n, 0);

    client = member_check_start(&s, "not json");
    snprintf(members, sizeof(members),
             "{\"members\":[{\"clientURLs\":[\"%s\"]},"
             "{\"clientURLs\":[\"http://10.0.0.2:2379\"]}]}",
             s.url);
    for (int i = 0; i < 6; i++) {
        if (i == 2) {
            scripted_etcd_answer(&s, "/v3/cluster/member/list", 200, members);
        }
        assert_int_equal(etcd_ping(client, NULL), FERRY_OK);
    }
    n = member_check_stop(&s, client, &asked);
    assert_int_equal(asked, 3);
    assert_int_equal(n, 1);
    assert_non_null(strstr(warned.text[0], "(not http://10.0.0.2:2379)"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_watch_add_handle_failure_is_reported),
        cmocka_unit_test(test_post_without_headers_says_out_of_memory),
        cmocka_unit_test(test_member_check_names_only_real_members),
        cmocka_unit_test(test_member_check_reads_members_from_a_list_only),
        cmocka_unit_test(test_member_check_warning_is_bounded),
        cmocka_unit_test(test_member_check_stops_after_five_pings),
    };
    return cmocka_run_group_tests(tests, fixture_setup, fixture_teardown);
}
