/*
 * test_etcd_kv.c: the client's key-value calls against a real etcd: binary
 * keys and values, prefix ranges with limit, transactions, and the
 * transport side (unreachable etcd, failover, connection reuse, etcd going
 * down and coming back on the same port). Built twice: test_etcd_kv sends
 * key-values over etcd's native gRPC API (the client's default),
 * test_etcd_kv_gateway over the JSON gateway (fixture_kv_gateway).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "coordinator/etcd/etcd_int.h"
#include "etcd_fixture.h"

static void test_binary_put_get_delete(void **state)
{
    fixture_t *fx = *state;
    const uint8_t key[] = {0x00, 'k', 0xff, 0x01, '='};
    uint8_t value[256];
    for (size_t i = 0; i < sizeof(value); i++) {
        value[i] = (uint8_t)i;
    }
    int64_t rev = 0;
    assert_int_equal(etcd_put(fx->client, key, sizeof(key), value, sizeof(value), 0, &rev),
                     FERRY_OK);
    assert_true(rev > 0);

    etcd_range_t range;
    assert_int_equal(etcd_get(fx->client, key, sizeof(key), NULL, 0, 0, 0, &range), FERRY_OK);
    assert_int_equal(range.n_kvs, 1);
    assert_true(range.count == 1);
    assert_int_equal(range.kvs[0].key_len, sizeof(key));
    assert_memory_equal(range.kvs[0].key, key, sizeof(key));
    assert_int_equal(range.kvs[0].value_len, sizeof(value));
    assert_memory_equal(range.kvs[0].value, value, sizeof(value));
    assert_true(range.kvs[0].create_revision == rev && range.kvs[0].mod_revision == rev);
    assert_true(range.kvs[0].version == 1 && range.kvs[0].lease == 0);
    assert_true(range.revision >= rev);
    etcd_range_free(&range);

    int64_t deleted = 0;
    int64_t del_rev = 0;
    assert_int_equal(etcd_delete(fx->client, key, sizeof(key), NULL, 0, &deleted, &del_rev),
                     FERRY_OK);
    assert_true(deleted == 1 && del_rev > rev);
    assert_int_equal(etcd_get(fx->client, key, sizeof(key), NULL, 0, 0, 0, &range), FERRY_OK);
    assert_int_equal(range.n_kvs, 0);
    assert_true(range.count == 0);
    etcd_range_free(&range);
    /* Deleting what is not there is not an error. */
    assert_int_equal(etcd_delete(fx->client, key, sizeof(key), NULL, 0, &deleted, NULL), FERRY_OK);
    assert_true(deleted == 0);
}

static void test_prefix_range_limit_more(void **state)
{
    fixture_t *fx = *state;
    char key[32];
    for (int i = 1; i <= 5; i++) {
        snprintf(key, sizeof(key), "range/k%d", i);
        fixture_put(fx->client, key, "v", 0);
    }
    fixture_put(fx->client, "rangf", "outside", 0);
    uint8_t *end;
    size_t end_len;
    assert_int_equal(etcd_prefix_end("range/", 6, &end, &end_len), FERRY_OK);

    etcd_range_t range;
    assert_int_equal(etcd_get(fx->client, "range/", 6, end, end_len, 2, 0, &range), FERRY_OK);
    assert_int_equal(range.n_kvs, 2);
    assert_true(range.more);
    assert_true(range.count == 5);
    assert_memory_equal(range.kvs[0].key, "range/k1", 8);
    assert_memory_equal(range.kvs[1].key, "range/k2", 8);
    etcd_range_free(&range);

    assert_int_equal(etcd_get(fx->client, "range/", 6, end, end_len, 0, 0, &range), FERRY_OK);
    assert_int_equal(range.n_kvs, 5);
    assert_false(range.more);
    etcd_range_free(&range);

    int64_t deleted = 0;
    assert_int_equal(etcd_delete(fx->client, "range/", 6, end, end_len, &deleted, NULL), FERRY_OK);
    assert_true(deleted == 5);
    free(end);
}

static void test_get_at_revision(void **state)
{
    fixture_t *fx = *state;
    int64_t rev1 = fixture_put(fx->client, "hist", "one", 0);
    fixture_put(fx->client, "hist", "two", 0);
    etcd_range_t range;
    assert_int_equal(etcd_get(fx->client, "hist", 4, NULL, 0, 0, rev1, &range), FERRY_OK);
    assert_int_equal(range.n_kvs, 1);
    assert_memory_equal(range.kvs[0].value, "one", 3);
    etcd_range_free(&range);
    /* A future revision is a bad argument, not a transport problem. */
    assert_int_equal(etcd_get(fx->client, "hist", 4, NULL, 0, 0, rev1 + 1000, &range),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_true(strlen(etcd_client_last_error()) > 0);
}

/* Register-style: create only if absent, else read the holder. */
static ferry_status_t create_if_absent(etcd_client_t *client, const char *key, const char *value,
                                       etcd_txn_result_t *result)
{
    etcd_compare_t cmp = {.target = ETCD_CMP_CREATE,
                          .result = ETCD_CMP_EQUAL,
                          .key = key,
                          .key_len = strlen(key),
                          .number = 0};
    etcd_op_t put = {.type = ETCD_OP_PUT,
                     .key = key,
                     .key_len = strlen(key),
                     .value = value,
                     .value_len = strlen(value)};
    etcd_op_t get = {.type = ETCD_OP_GET, .key = key, .key_len = strlen(key)};
    return etcd_txn(client, &cmp, 1, &put, 1, &get, 1, result);
}

static void test_txn_create_if_absent(void **state)
{
    fixture_t *fx = *state;
    etcd_txn_result_t result;
    assert_int_equal(create_if_absent(fx->client, "ops/req-1", "first", &result), FERRY_OK);
    assert_true(result.succeeded);
    assert_int_equal(result.n_results, 1);
    assert_int_equal(result.results[0].n_kvs, 0);
    int64_t created = result.revision;
    etcd_txn_result_free(&result);

    assert_int_equal(create_if_absent(fx->client, "ops/req-1", "second", &result), FERRY_OK);
    assert_false(result.succeeded);
    assert_int_equal(result.n_results, 1);
    assert_int_equal(result.results[0].n_kvs, 1);
    assert_int_equal(result.results[0].kvs[0].value_len, 5);
    assert_memory_equal(result.results[0].kvs[0].value, "first", 5);
    assert_true(result.results[0].kvs[0].create_revision == created);
    etcd_txn_result_free(&result);
}

static void test_txn_compare_mod_revision(void **state)
{
    fixture_t *fx = *state;
    int64_t rev = fixture_put(fx->client, "state", "REGISTERED", 0);
    etcd_compare_t cmp = {.target = ETCD_CMP_MOD,
                          .result = ETCD_CMP_EQUAL,
                          .key = "state",
                          .key_len = 5,
                          .number = rev};
    etcd_op_t ops[2] = {
        {.type = ETCD_OP_PUT, .key = "state", .key_len = 5, .value = "CLAIMED", .value_len = 7},
        {.type = ETCD_OP_PUT, .key = "state2", .key_len = 6, .value = "x", .value_len = 1},
    };
    etcd_txn_result_t result;
    assert_int_equal(etcd_txn(fx->client, &cmp, 1, ops, 2, NULL, 0, &result), FERRY_OK);
    assert_true(result.succeeded);
    assert_int_equal(result.n_results, 2);
    assert_true(result.revision > rev);
    etcd_txn_result_free(&result);

    /* The same compare again: mod_revision moved on, so it fails. */
    assert_int_equal(etcd_txn(fx->client, &cmp, 1, ops, 1, NULL, 0, &result), FERRY_OK);
    assert_false(result.succeeded);
    assert_int_equal(result.n_results, 0);
    etcd_txn_result_free(&result);

    etcd_compare_t by_value = {.target = ETCD_CMP_VALUE,
                               .result = ETCD_CMP_EQUAL,
                               .key = "state",
                               .key_len = 5,
                               .value = "CLAIMED",
                               .value_len = 7};
    etcd_op_t del = {.type = ETCD_OP_DELETE, .key = "state", .key_len = 5};
    assert_int_equal(etcd_txn(fx->client, &by_value, 1, &del, 1, NULL, 0, &result), FERRY_OK);
    assert_true(result.succeeded);
    etcd_txn_result_free(&result);

    /* A VALUE compare is exact over binary bytes (a Register's record, which
     * the coordinator deletes only while it holds the bytes it wrote): one
     * byte past a NUL differs, and an absent key never matches. */
    static const uint8_t record[] = {0x0a, 0x00, 0xff, 0x00, 0x01};
    static const uint8_t other[] = {0x0a, 0x00, 0xff, 0x00, 0x02};
    etcd_op_t put = {.type = ETCD_OP_PUT,
                     .key = "state",
                     .key_len = 5,
                     .value = record,
                     .value_len = sizeof(record)};
    assert_int_equal(etcd_txn(fx->client, NULL, 0, &put, 1, NULL, 0, &result), FERRY_OK);
    etcd_txn_result_free(&result);
    by_value.value = other;
    by_value.value_len = sizeof(other);
    assert_int_equal(etcd_txn(fx->client, &by_value, 1, &del, 1, NULL, 0, &result), FERRY_OK);
    assert_false(result.succeeded);
    etcd_txn_result_free(&result);
    by_value.value = record;
    assert_int_equal(etcd_txn(fx->client, &by_value, 1, &del, 1, NULL, 0, &result), FERRY_OK);
    assert_true(result.succeeded);
    etcd_txn_result_free(&result);
    assert_int_equal(etcd_txn(fx->client, &by_value, 1, &del, 1, NULL, 0, &result), FERRY_OK);
    assert_false(result.succeeded);
    etcd_txn_result_free(&result);
}

static void test_misuse(void **state)
{
    fixture_t *fx = *state;
    etcd_range_t range;
    assert_int_equal(etcd_put(fx->client, NULL, 0, "v", 1, 0, NULL), FERRY_ERR_MISUSE);
    assert_int_equal(etcd_get(fx->client, "k", 1, NULL, 3, 0, 0, &range), FERRY_ERR_MISUSE);
    etcd_params_t bad = {.endpoints = "127.0.0.1:2379"};
    etcd_client_t *client = NULL;
    assert_int_equal(etcd_client_create(&bad, &client), FERRY_ERR_INVALID_ARGUMENT);
    assert_null(client);
    /* A path or a missing port: fine for HTTP, not a gRPC target. */
    etcd_params_t path = {.endpoints = "http://127.0.0.1:2379/etcd", .kv_gateway = false};
    etcd_params_t no_port = {.endpoints = "http://etcd.example", .kv_gateway = false};
    assert_int_equal(etcd_client_create(&path, &client), FERRY_ERR_INVALID_ARGUMENT);
    assert_int_equal(etcd_client_create(&no_port, &client), FERRY_ERR_INVALID_ARGUMENT);
    assert_null(client);
    path.kv_gateway = true;
    assert_int_equal(etcd_client_create(&path, &client), FERRY_OK);
    etcd_client_destroy(client);
    etcd_client_destroy(NULL);
    client = NULL;
    /* A unix socket: an absolute path that fits a sockaddr_un (108 bytes
     * with its NUL), without '%', '?' or '#' (gRPC decodes or cuts the path
     * there, libcurl does not: the two APIs would reach different files). */
    char long_path[160] = "unix:///";
    memset(long_path + 8, 'a', 108);
    const char *refused[] = {"unix://etcd-client:1", "unix://",         long_path,
                             "unix:///run/a%3Ab",    "unix:///run/a?b", "unix:///run/a#b"};
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        etcd_params_t unix_bad = {.endpoints = refused[i]};
        assert_int_equal(etcd_client_create(&unix_bad, &client), FERRY_ERR_INVALID_ARGUMENT);
        assert_null(client);
    }
    long_path[8 + 99] = '\0'; /* "/" and 99 bytes */
    etcd_params_t unix_ok = {.endpoints = long_path};
    assert_int_equal(etcd_client_create(&unix_ok, &client), FERRY_OK);
    etcd_client_destroy(client);
}

static void test_unreachable_socket_is_unavailable(void **state)
{
    (void)state;
    char dir[] = "/tmp/ferry-etcd-sock-XXXXXX";
    char endpoint[96];
    assert_non_null(mkdtemp(dir));
    snprintf(endpoint, sizeof(endpoint), "unix://%s/none:1", dir);
    etcd_client_t *client = fixture_client(endpoint, 1000);
    assert_int_equal(etcd_put(client, "k", 1, "v", 1, 0, NULL), FERRY_ERR_UNAVAILABLE);
    assert_non_null(strstr(etcd_client_last_error(), dir));
    assert_int_equal(etcd_ping(client, NULL), FERRY_ERR_UNAVAILABLE);
    assert_non_null(strstr(etcd_client_last_error(), dir));
    /* Not libcurl's "localhost port 80", which reads as TCP. */
    assert_null(strstr(etcd_client_last_error(), "port 80"));
#ifdef FIXTURE_KV_GATEWAY
    assert_non_null(strstr(etcd_client_last_error(), "cannot connect to the socket"));
#endif
    etcd_client_destroy(client);
    rmdir(dir);
}

static void test_unreachable_is_unavailable(void **state)
{
    (void)state;
    char endpoint[64];
    snprintf(endpoint, sizeof(endpoint), "http://127.0.0.1:%d", test_free_port());
    etcd_client_t *client = fixture_client(endpoint, 1000);
    assert_int_equal(etcd_put(client, "k", 1, "v", 1, 0, NULL), FERRY_ERR_UNAVAILABLE);
    assert_non_null(strstr(etcd_client_last_error(), "127.0.0.1"));
    assert_int_equal(etcd_ping(client, NULL), FERRY_ERR_UNAVAILABLE);
    etcd_client_destroy(client);
}

static void test_failover_to_second_endpoint(void **state)
{
    fixture_t *fx = *state;
    char endpoints[160];
    snprintf(endpoints, sizeof(endpoints), "http://127.0.0.1:%d, %s/", test_free_port(),
             fx->etcd.endpoint);
    etcd_client_t *client = fixture_client(endpoints, 10000);
    for (int i = 0; i < 3; i++) {
        fixture_put(client, "failover", "v", 0);
    }
    etcd_range_t range;
    assert_int_equal(etcd_get(client, "failover", 8, NULL, 0, 0, 0, &range), FERRY_OK);
    assert_int_equal(range.n_kvs, 1);
    etcd_range_free(&range);
    int64_t revision = 0;
    assert_int_equal(etcd_ping(client, &revision), FERRY_OK);
    assert_true(revision > 0);
    etcd_client_destroy(client);
}

static void test_connections_are_reused(void **state)
{
    fixture_t *fx = *state;
    if (!fixture_kv_gateway) {
        print_message("gRPC carries every call on one HTTP/2 connection per endpoint; the "
                      "count here is libcurl's\n");
        skip();
    }
    etcd_client_t *client = fixture_client(fx->etcd.endpoint, 10000);
    for (int i = 0; i < 50; i++) {
        fixture_put(client, "reuse", "v", 0);
    }
    /* One thread, one pooled handle: one connection for all 50. */
    assert_true(etcd__client_connects(client) == 1);
    etcd_client_destroy(client);
}

enum { N_THREADS = 4, N_PUTS = 50 };

typedef struct {
    etcd_client_t *client;
    int index;
    int failures;
} putter_t;

static void *putter_main(void *arg)
{
    putter_t *putter = arg;
    char key[32];
    snprintf(key, sizeof(key), "threads/%d", putter->index);
    for (int i = 0; i < N_PUTS; i++) {
        if (etcd_put(putter->client, key, strlen(key), "v", 1, 0, NULL) != FERRY_OK) {
            putter->failures++;
        }
    }
    return NULL;
}

static void test_threads_share_a_client(void **state)
{
    fixture_t *fx = *state;
    etcd_client_t *client = fixture_client(fx->etcd.endpoint, 10000);
    pthread_t threads[N_THREADS];
    putter_t putters[N_THREADS];
    for (int i = 0; i < N_THREADS; i++) {
        putters[i] = (putter_t){.client = client, .index = i};
        assert_int_equal(pthread_create(&threads[i], NULL, putter_main, &putters[i]), 0);
    }
    for (int i = 0; i < N_THREADS; i++) {
        pthread_join(threads[i], NULL);
        assert_int_equal(putters[i].failures, 0);
    }
    /* At most one pooled connection per thread that ran at once. */
    assert_true(etcd__client_connects(client) <= N_THREADS);
    uint8_t *end;
    size_t end_len;
    assert_int_equal(etcd_prefix_end("threads/", 8, &end, &end_len), FERRY_OK);
    etcd_range_t range;
    assert_int_equal(etcd_get(client, "threads/", 8, end, end_len, 0, 0, &range), FERRY_OK);
    assert_int_equal(range.n_kvs, N_THREADS);
    assert_true(range.kvs[0].version == N_PUTS);
    etcd_range_free(&range);
    free(end);
    etcd_client_destroy(client);
}

static void test_hung_etcd_times_out(void **state)
{
    fixture_t *fx = *state;
    etcd_client_t *client = fixture_client(fx->etcd.endpoint, 300);
    fixture_put(client, "hung", "before", 0);
    assert_int_equal(test_proc_pause(&fx->etcd.proc), 0);
    long long start = test_now_ms();
    ferry_status_t st = etcd_put(client, "hung", 4, "during", 6, 0, NULL);
    long long took = test_now_ms() - start;
    /* Resumed before any assertion, so a failure here leaves etcd running
     * for the tests after this one. */
    assert_int_equal(test_proc_resume(&fx->etcd.proc), 0);
    assert_int_equal(st, FERRY_ERR_UNAVAILABLE);
    assert_true(took < 5000); /* bounded by the request timeout, not forever */
    assert_non_null(strstr(etcd_client_last_error(), "timed out"));
    assert_true(atomic_load(&client->suspect_until[0]) != 0);
    etcd_client_destroy(client);
    /* The write may or may not have landed; either way etcd serves again. */
    fixture_put(fx->client, "hung", "after", 0);
}

/* A thread's deadline (etcd_set_deadline: the coordinator's caller's)
 * ends its requests sooner than the client's timeout: one with no time
 * left is not sent at all (the key is not in etcd after), one to a hung
 * etcd fails UNAVAILABLE by the deadline, naming it, not the 30 s timeout;
 * a deadline later than the timeout changes nothing; and it is the
 * calling thread's alone, handed back by the next set. A request that ran
 * out of its caller's time leaves the endpoint unsuspected. */
static ferry_status_t observed; /* the last request's outcome, as the observer saw it */

static void observe_last(void *arg, const char *path, ferry_status_t status, int64_t duration_ns)
{
    (void)arg;
    (void)path;
    (void)duration_ns;
    observed = status;
}

static void test_thread_deadline_ends_requests(void **state)
{
    fixture_t *fx = *state;
    etcd_observer_t observer = {.request_done = observe_last};
    etcd_params_t params = {.endpoints = fx->etcd.endpoint,
                            .timeout_ms = 30000,
                            .kv_gateway = fixture_kv_gateway,
                            .observer = &observer};
    etcd_client_t *client = NULL;
    assert_int_equal(etcd_client_create(&params, &client), FERRY_OK);
    etcd_compare_t absent = {
        .target = ETCD_CMP_CREATE, .result = ETCD_CMP_EQUAL, .key = "dl/txn", .key_len = 6};
    etcd_op_t put = {
        .type = ETCD_OP_PUT, .key = "dl/txn", .key_len = 6, .value = "v", .value_len = 1};
    etcd_txn_result_t result = {0};
    etcd_range_t range;

    assert_int_equal(etcd_get_deadline(), 0);
    assert_int_equal(etcd_set_deadline(test_now_ms() - 1), 0);
    assert_int_equal(etcd_put(client, "dl/put", 6, "v", 1, 0, NULL), FERRY_ERR_UNAVAILABLE);
    assert_non_null(strstr(etcd_client_last_error(), "caller's deadline"));
    assert_int_equal(observed, FERRY_ERR_TIMED_OUT); /* the caller's time, not etcd's failure */
    assert_int_equal(etcd_txn(client, &absent, 1, &put, 1, NULL, 0, &result),
                     FERRY_ERR_UNAVAILABLE);
    etcd_txn_result_free(&result);
    assert_true(etcd_set_deadline(0) != 0);
    assert_int_equal(etcd_get(client, "dl/", 3, "dl0", 3, 0, 0, &range), FERRY_OK);
    assert_int_equal(range.n_kvs, 0); /* neither was sent */
    etcd_range_free(&range);

    etcd_set_deadline(test_now_ms() + 60000);
    assert_int_equal(etcd_put(client, "dl/put", 6, "v", 1, 0, NULL), FERRY_OK);
    assert_int_equal(observed, FERRY_OK);

    fixture_put(client, "dl/hung", "before", 0);
    assert_int_equal(test_proc_pause(&fx->etcd.proc), 0);
    long long start = test_now_ms();
    etcd_set_deadline(start + 300);
    ferry_status_t st = etcd_put(client, "dl/hung", 7, "during", 6, 0, NULL);
    long long took = test_now_ms() - start;
    etcd_set_deadline(0);
    assert_int_equal(test_proc_resume(&fx->etcd.proc), 0);
    assert_int_equal(st, FERRY_ERR_UNAVAILABLE);
    assert_true(took < 15000); /* by the deadline, not the client's 30 s */
    assert_non_null(strstr(etcd_client_last_error(), "caller's deadline"));
    /* The caller's time ran out, not the endpoint's: not suspect for it
     * (test_hung_etcd_times_out: with the client's own time, it is), and
     * not counted as etcd's failure. */
    assert_true(atomic_load(&client->suspect_until[0]) == 0);
    assert_int_equal(observed, FERRY_ERR_TIMED_OUT);

    /* A caller's deadline that still leaves an attempt ETCD_ATTEMPT_MS or
     * more: no answer in that time is etcd's. */
    assert_int_equal(test_proc_pause(&fx->etcd.proc), 0);
    etcd_set_deadline(test_now_ms() + ETCD_ATTEMPT_MS + 200);
    st = etcd_put(client, "dl/hung", 7, "during", 6, 0, NULL);
    etcd_set_deadline(0);
    assert_int_equal(test_proc_resume(&fx->etcd.proc), 0);
    assert_int_equal(st, FERRY_ERR_UNAVAILABLE);
    assert_true(atomic_load(&client->suspect_until[0]) != 0);
    assert_int_equal(observed, FERRY_ERR_UNAVAILABLE);
    etcd_client_destroy(client);
}

/* A read over two members that never answer, with 1.5 s left to its
 * caller: the first attempt has its full ETCD_ATTEMPT_MS and gets no
 * answer, which is etcd's failure (counted so, and the member suspect),
 * though the second attempt then runs out of the caller's time. */
static void test_a_full_attempt_that_failed_is_etcds(void **state)
{
    frozen_etcd_t a, b;
    char endpoints[160];
    etcd_observer_t observer = {.request_done = observe_last};
    etcd_range_t range;
    (void)state;

    frozen_etcd_start(&a, NULL);
    frozen_etcd_start(&b, NULL);
    snprintf(endpoints, sizeof(endpoints), "%s,%s", a.url, b.url);
    etcd_params_t params = {.endpoints = endpoints,
                            .timeout_ms = 30000,
                            .kv_gateway = fixture_kv_gateway,
                            .observer = &observer};
    etcd_client_t *client = NULL;
    assert_int_equal(etcd_client_create(&params, &client), FERRY_OK);
    etcd_set_deadline(test_now_ms() + ETCD_ATTEMPT_MS + 500);
    assert_int_equal(etcd_get(client, "k", 1, NULL, 0, 0, 0, &range), FERRY_ERR_UNAVAILABLE);
    etcd_set_deadline(0);
    assert_int_equal(observed, FERRY_ERR_UNAVAILABLE);
    assert_true(atomic_load(&client->suspect_until[0]) != 0);
    etcd_client_destroy(client);
    frozen_etcd_stop(&b);
    frozen_etcd_stop(&a);
}

/* The first endpoint accepts connections and never answers (a frozen
 * member). Reads and the ping move on to the next endpoint within the
 * timeout; a write that went to it fails (it is never sent twice), and the
 * next one goes to the live member, lease revoke included. */
static void test_frozen_first_endpoint(void **state)
{
    fixture_t *fx = *state;
    frozen_etcd_t frozen;
    char endpoints[160];
    frozen_etcd_start(&frozen, NULL);
    snprintf(endpoints, sizeof(endpoints), "%s,%s", frozen.url, fx->etcd.endpoint);
    fixture_put(fx->client, "frozen/k", "v", 0);

    etcd_client_t *reader = fixture_client(endpoints, 3000);
    etcd_range_t range;
    assert_int_equal(etcd_get(reader, "frozen/k", 8, NULL, 0, 0, 0, &range), FERRY_OK);
    assert_int_equal(range.n_kvs, 1);
    etcd_range_free(&range);
    assert_int_equal(etcd_ping(reader, NULL), FERRY_OK);
    etcd_client_destroy(reader);

    etcd_client_t *pinger = fixture_client(endpoints, 3000);
    assert_int_equal(etcd_ping(pinger, NULL), FERRY_OK);
    etcd_client_destroy(pinger);

    etcd_client_t *writer = fixture_client(endpoints, 3000);
    if (fixture_kv_gateway) {
        /* libcurl sends the request as soon as TCP connects: it may have
         * reached etcd, so it is not sent again. */
        assert_int_equal(etcd_put(writer, "frozen/w", 8, "1", 1, 0, NULL), FERRY_ERR_UNAVAILABLE);
    } else {
        /* gRPC sends nothing before the member's HTTP/2 settings, which a
         * frozen member never sends: the write goes to the live one. */
        assert_int_equal(etcd_put(writer, "frozen/w", 8, "1", 1, 0, NULL), FERRY_OK);
        assert_int_equal(etcd_get(fx->client, "frozen/w", 8, NULL, 0, 0, 0, &range), FERRY_OK);
        assert_int_equal(range.n_kvs, 1);
        assert_memory_equal(range.kvs[0].value, "1", 1);
        etcd_range_free(&range);
    }
    int64_t lease = 0;
    assert_int_equal(etcd_lease_grant(writer, 60, 0, &lease, NULL), FERRY_OK);
    assert_int_equal(etcd_put(writer, "frozen/w", 8, "2", 1, lease, NULL), FERRY_OK);
    assert_int_equal(etcd_lease_revoke(writer, lease), FERRY_OK);
    assert_int_equal(etcd_get(fx->client, "frozen/w", 8, NULL, 0, 0, 0, &range), FERRY_OK);
    assert_int_equal(range.n_kvs, 0); /* gone with its lease */
    etcd_range_free(&range);
    etcd_client_destroy(writer);
    frozen_etcd_stop(&frozen);
}

/* A member that dies with a write in flight on a reused connection: libcurl
 * itself retries such a request on a fresh connection, which is refused.
 * The write may have been applied (a follower forwards it before it dies),
 * so it must fail, not go to the next endpoint a second time. */
static void test_write_in_flight_is_not_replayed(void **state)
{
    fixture_t *fx = *state;
    if (!fixture_kv_gateway) {
        print_message("the dying member speaks HTTP/1.1 (libcurl's own retry); gRPC's case is "
                      "test_write_to_stopped_member_is_not_replayed\n");
        skip();
    }
    frozen_etcd_t dying;
    char endpoints[160];
    dying_etcd_start(&dying, "{\"header\":{\"revision\":\"1\"}}", false);
    snprintf(endpoints, sizeof(endpoints), "%s,%s", dying.url, fx->etcd.endpoint);
    etcd_client_t *client = fixture_client(endpoints, 3000);
    assert_int_equal(etcd_put(client, "replay/k", 8, "1", 1, 0, NULL), FERRY_OK);
    assert_int_equal(etcd_put(client, "replay/k", 8, "2", 1, 0, NULL), FERRY_ERR_UNAVAILABLE);
    etcd_range_t range;
    assert_int_equal(etcd_get(fx->client, "replay/k", 8, NULL, 0, 0, 0, &range), FERRY_OK);
    assert_int_equal(range.n_kvs, 0); /* never sent to the live member */
    etcd_range_free(&range);
    /* The next request goes to the live member. */
    assert_int_equal(etcd_put(client, "replay/k", 8, "3", 1, 0, NULL), FERRY_OK);
    etcd_client_destroy(client);
    frozen_etcd_stop(&dying);
}

/* As above, behind an address that leads to another member on the next
 * connection (a Service, a DNS name): libcurl used to send the write
 * again there by itself, so it was applied twice (a create-if-absent then
 * failed on its own record). It fails instead, sent once; a read is still
 * sent again. */
static void test_write_is_not_resent_behind_one_address(void **state)
{
    (void)state;
    if (!fixture_kv_gateway) {
        print_message("the dying member speaks HTTP/1.1 (libcurl's own retry)\n");
        skip();
    }
    const char *reply = "{\"header\":{\"revision\":\"1\"}}";
    frozen_etcd_t dying;
    dying_etcd_start(&dying, reply, true);
    etcd_client_t *client = fixture_client(dying.url, 3000);
    assert_int_equal(etcd_put(client, "resend/k", 8, "1", 1, 0, NULL), FERRY_OK);
    assert_int_equal(etcd_put(client, "resend/k", 8, "2", 1, 0, NULL), FERRY_ERR_UNAVAILABLE);
    int resent = atomic_load(&dying.resent);
    etcd_client_destroy(client);
    frozen_etcd_stop(&dying);
    assert_int_equal(resent, 0);

    /* A read on a connection that dies the same way: sent again. */
    dying_etcd_start(&dying, reply, true);
    client = fixture_client(dying.url, 3000);
    assert_int_equal(etcd_put(client, "resend/k", 8, "1", 1, 0, NULL), FERRY_OK);
    etcd_range_t range;
    assert_int_equal(etcd_get(client, "resend/k", 8, NULL, 0, 0, 0, &range), FERRY_OK);
    etcd_range_free(&range);
    resent = atomic_load(&dying.resent);
    etcd_client_destroy(client);
    frozen_etcd_stop(&dying);
    assert_int_equal(resent, 1);
}

/* A member that stops (SIGSTOP) after the client has a connection to it:
 * a write sent on that connection gets no answer, may have been applied,
 * and so fails instead of going to the next endpoint. Reads move on. */
static void test_write_to_stopped_member_is_not_replayed(void **state)
{
    fixture_t *fx = *state;
    test_etcd_t first;
    char endpoints[160];
    assert_int_equal(test_etcd_start(&first, NULL), 0);
    snprintf(endpoints, sizeof(endpoints), "%s,%s", first.endpoint, fx->etcd.endpoint);
    etcd_client_t *client = fixture_client(endpoints, 2000);
    fixture_put(client, "stopped/k", "1", 0); /* to the first member: connected */
    fixture_put(fx->client, "stopped/r", "live", 0);

    assert_int_equal(test_proc_pause(&first.proc), 0);
    ferry_status_t wrote = etcd_put(client, "stopped/k", 9, "2", 1, 0, NULL);
    char error[512];
    snprintf(error, sizeof(error), "%s", etcd_client_last_error());
    etcd_range_t range;
    ferry_status_t read = etcd_get(client, "stopped/r", 9, NULL, 0, 0, 0, &range);
    assert_int_equal(test_proc_resume(&first.proc), 0);

    assert_int_equal(wrote, FERRY_ERR_UNAVAILABLE);
    assert_non_null(strstr(error, "timed out"));
    assert_int_equal(read, FERRY_OK); /* from the live member */
    assert_int_equal(range.n_kvs, 1);
    etcd_range_free(&range);
    assert_int_equal(etcd_get(fx->client, "stopped/k", 9, NULL, 0, 0, 0, &range), FERRY_OK);
    assert_int_equal(range.n_kvs, 0); /* never sent to the live member */
    etcd_range_free(&range);
    etcd_client_destroy(client);
    test_etcd_stop(&first);
}

static void test_recovers_after_etcd_restart(void **state)
{
    fixture_t *fx = *state;
    fixture_put(fx->client, "restart", "before", 0);
    test_etcd_down(&fx->etcd);
    assert_int_equal(etcd_put(fx->client, "restart", 7, "down", 4, 0, NULL), FERRY_ERR_UNAVAILABLE);
    assert_true(strlen(etcd_client_last_error()) > 0);
    assert_int_equal(test_etcd_up(&fx->etcd), 0);
    /* The same client, with its pooled (now dead) connection, recovers: on
     * a loaded machine gRPC may still fail the first call from its failed
     * connection attempt ("failed to connect to all addresses"), which was
     * never sent; a write is not sent again, so the caller tries again. */
    long long deadline = test_now_ms() + 10000;
    ferry_status_t status;
    while ((status = etcd_put(fx->client, "restart", 7, "after", 5, 0, NULL)) ==
               FERRY_ERR_UNAVAILABLE &&
           test_now_ms() < deadline) {
        assert_non_null(strstr(etcd_client_last_error(), "connect"));
    }
    assert_int_equal(status, FERRY_OK);
    assert_string_equal(etcd_client_last_error(), "");
    etcd_range_t range;
    assert_int_equal(etcd_get(fx->client, "restart", 7, NULL, 0, 0, 0, &range), FERRY_OK);
    assert_int_equal(range.n_kvs, 1);
    assert_memory_equal(range.kvs[0].value, "after", 5);
    assert_true(range.kvs[0].version == 2); /* data survived the restart */
    etcd_range_free(&range);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_binary_put_get_delete),
        cmocka_unit_test(test_prefix_range_limit_more),
        cmocka_unit_test(test_get_at_revision),
        cmocka_unit_test(test_txn_create_if_absent),
        cmocka_unit_test(test_txn_compare_mod_revision),
        cmocka_unit_test(test_misuse),
        cmocka_unit_test(test_unreachable_is_unavailable),
        cmocka_unit_test(test_unreachable_socket_is_unavailable),
        cmocka_unit_test(test_failover_to_second_endpoint),
        cmocka_unit_test(test_connections_are_reused),
        cmocka_unit_test(test_threads_share_a_client),
        cmocka_unit_test(test_hung_etcd_times_out),
        cmocka_unit_test(test_thread_deadline_ends_requests),
        cmocka_unit_test(test_a_full_attempt_that_failed_is_etcds),
        cmocka_unit_test(test_frozen_first_endpoint),
        cmocka_unit_test(test_write_in_flight_is_not_replayed),
        cmocka_unit_test(test_write_is_not_resent_behind_one_address),
        cmocka_unit_test(test_write_to_stopped_member_is_not_replayed),
        cmocka_unit_test(test_recovers_after_etcd_restart),
    };
    return cmocka_run_group_tests(tests, fixture_setup, fixture_teardown);
}
