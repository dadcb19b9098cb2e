/*
 * test_etcd_watch.c: watches against a real etcd: events from a revision in
 * order with prev_kv, one call per transaction, compaction, reconnection
 * after etcd restarts on the same port, a member that freezes under the
 * watch, and a destroy that wakes the thread. Every wait is on the
 * recorder's condition variable with a deadline. Built twice: the watch
 * over etcd's gRPC API (test_etcd_watch) and over the JSON gateway
 * (test_etcd_watch_gateway).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "etcd_fixture.h"

enum { WAIT_MS = 10000 };

static etcd_watch_t *watch_prefix(etcd_client_t *client, const char *prefix, int64_t start,
                                  recorder_t *rec, uint8_t **end_p)
{
    size_t end_len;
    assert_int_equal(etcd_prefix_end(prefix, strlen(prefix), end_p, &end_len), FERRY_OK);
    etcd_watch_params_t params = {.key = prefix,
                                  .key_len = strlen(prefix),
                                  .range_end = *end_p,
                                  .range_end_len = end_len,
                                  .start_revision = start,
                                  .prev_kv = true};
    recorder_params(rec, &params);
    etcd_watch_t *watch = NULL;
    assert_int_equal(etcd_watch_create(client, &params, &watch), FERRY_OK);
    assert_non_null(watch);
    return watch;
}

static void test_events_from_revision_in_order(void **state)
{
    fixture_t *fx = *state;
    int64_t r1 = fixture_put(fx->client, "w1/a", "one", 0);
    int64_t r2 = fixture_put(fx->client, "w1/a", "two", 0);
    int64_t r3 = 0;
    assert_int_equal(etcd_delete(fx->client, "w1/a", 4, NULL, 0, NULL, &r3), FERRY_OK);

    recorder_t rec;
    recorder_init(&rec);
    uint8_t *end;
    etcd_watch_t *watch = watch_prefix(fx->client, "w1/", r1, &rec, &end);
    int64_t r4 = fixture_put(fx->client, "w1/b", "three", 0);
    assert_true(recorder_wait_events(&rec, 4, WAIT_MS));
    etcd_watch_destroy(watch);

    assert_int_equal(rec.n_events, 4);
    assert_int_equal(rec.events[0].type, ETCD_EVENT_PUT);
    assert_true(rec.events[0].mod_revision == r1);
    assert_string_equal(rec.events[0].value, "one");
    assert_false(rec.events[0].has_prev);
    assert_int_equal(rec.events[1].type, ETCD_EVENT_PUT);
    assert_true(rec.events[1].mod_revision == r2);
    assert_string_equal(rec.events[1].prev_value, "one");
    assert_int_equal(rec.events[2].type, ETCD_EVENT_DELETE);
    assert_true(rec.events[2].mod_revision == r3);
    assert_string_equal(rec.events[2].key, "w1/a");
    assert_true(rec.events[2].has_prev);
    assert_string_equal(rec.events[2].prev_value, "two");
    assert_true(rec.events[3].mod_revision == r4);
    assert_string_equal(rec.events[3].key, "w1/b");
    assert_int_equal(rec.n_up, 0); /* the first stream is not a state change */
    assert_int_equal(rec.n_down, 0);
    recorder_fini(&rec);
    free(end);
}

static void test_txn_is_one_call(void **state)
{
    fixture_t *fx = *state;
    recorder_t rec;
    recorder_init(&rec);
    uint8_t *end;
    etcd_watch_t *watch = watch_prefix(fx->client, "w2/", 0, &rec, &end);
    etcd_op_t ops[2] = {
        {.type = ETCD_OP_PUT, .key = "w2/x", .key_len = 4, .value = "1", .value_len = 1},
        {.type = ETCD_OP_PUT, .key = "w2/y", .key_len = 4, .value = "2", .value_len = 1},
    };
    etcd_txn_result_t result;
    assert_int_equal(etcd_txn(fx->client, NULL, 0, ops, 2, NULL, 0, &result), FERRY_OK);
    assert_true(result.succeeded);
    etcd_txn_result_free(&result);
    assert_true(recorder_wait_events(&rec, 2, WAIT_MS));
    etcd_watch_destroy(watch);
    assert_int_equal(rec.n_calls, 1);
    assert_int_equal(rec.call_sizes[0], 2);
    assert_string_equal(rec.events[0].key, "w2/x");
    assert_string_equal(rec.events[1].key, "w2/y");
    assert_true(rec.events[0].mod_revision == rec.events[1].mod_revision);
    recorder_fini(&rec);
    free(end);
}

static void compact(const char *endpoint, int64_t revision)
{
    char url[128];
    char body[64];
    snprintf(url, sizeof(url), "%s/v3/kv/compaction", endpoint);
    snprintf(body, sizeof(body), "{\"revision\":\"%lld\",\"physical\":true}", (long long)revision);
    CURL *curl = curl_easy_init();
    FILE *sink = fopen("/dev/null", "w");
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, sink);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 5000L);
    long http = 0;
    assert_int_equal(curl_easy_perform(curl), CURLE_OK);
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &http);
    assert_int_equal(http, 200);
    curl_easy_cleanup(curl);
    fclose(sink);
}

static void test_compacted_start_is_expired(void **state)
{
    fixture_t *fx = *state;
    int64_t r1 = fixture_put(fx->client, "w3/a", "1", 0);
    int64_t r2 = fixture_put(fx->client, "w3/a", "2", 0);
    compact(fx->etcd.endpoint, r2);
    recorder_t rec;
    recorder_init(&rec);
    etcd_watch_params_t params = {.key = "w3/a", .key_len = 4, .start_revision = r1};
    recorder_params(&rec, &params);
    etcd_watch_t *watch = NULL;
    assert_int_equal(etcd_watch_create(fx->client, &params, &watch), FERRY_ERR_OUT_OF_RANGE);
    assert_null(watch);
    assert_non_null(strstr(etcd_client_last_error(), "compacted"));
    /* A range at that revision says the same. */
    etcd_range_t range;
    assert_int_equal(etcd_get(fx->client, "w3/a", 4, NULL, 0, 0, r1, &range),
                     FERRY_ERR_OUT_OF_RANGE);
    assert_int_equal(rec.n_calls, 0);
    recorder_fini(&rec);
}

static int request_errors; /* requests the observer saw fail */

static void count_errors(void *arg, const char *path, ferry_status_t status, int64_t duration_ns)
{
    (void)arg;
    (void)path;
    (void)duration_ns;
    request_errors += status != FERRY_OK;
}

/* A watch from the revision after the last write (the view's start, when
 * nothing was written since its load) starts without a failed request: its
 * start check used to read at that future revision, which etcd refuses,
 * and the metrics counted an `invalid_argument` at every watch start. A
 * compaction at exactly the start revision leaves the watch good; one past
 * it does not. */
static void test_start_checks_fail_no_request(void **state)
{
    fixture_t *fx = *state;
    etcd_observer_t observer = {.request_done = count_errors};
    etcd_params_t params = {.endpoints = fx->etcd.endpoint,
                            .timeout_ms = 10000,
                            .kv_gateway = fixture_kv_gateway,
                            .observer = &observer};
    etcd_client_t *client = NULL;
    assert_int_equal(etcd_client_create(&params, &client), FERRY_OK);
    int64_t r1 = fixture_put(client, "w5/a", "1", 0);

    recorder_t rec;
    recorder_init(&rec);
    uint8_t *end;
    request_errors = 0;
    etcd_watch_t *watch = watch_prefix(client, "w5/", r1 + 1, &rec, &end);
    assert_int_equal(request_errors, 0);
    int64_t r2 = fixture_put(client, "w5/a", "2", 0);
    assert_true(recorder_wait_events(&rec, 1, WAIT_MS));
    assert_int_equal(rec.events[0].mod_revision, r2);
    etcd_watch_destroy(watch);
    recorder_fini(&rec);
    free(end);

    /* Compacted at the start itself: the watch starts and sees r3. */
    int64_t r3 = fixture_put(client, "w5/a", "3", 0);
    compact(fx->etcd.endpoint, r3);
    recorder_init(&rec);
    watch = watch_prefix(client, "w5/", r3, &rec, &end);
    assert_true(recorder_wait_events(&rec, 1, WAIT_MS));
    assert_int_equal(rec.events[0].mod_revision, r3);
    etcd_watch_destroy(watch);
    recorder_fini(&rec);
    free(end);
    /* Compacted past it: expired. */
    etcd_watch_params_t past = {.key = "w5/a", .key_len = 4, .start_revision = r2};
    recorder_init(&rec);
    recorder_params(&rec, &past);
    watch = NULL;
    assert_int_equal(etcd_watch_create(client, &past, &watch), FERRY_ERR_OUT_OF_RANGE);
    assert_null(watch);
    recorder_fini(&rec);
    etcd_client_destroy(client);
}

enum { FRAG_KEYS = 12, FRAG_VALUE = 200 << 10 };

/* A lease that ends deletes every key on it at one revision, and with
 * prev_kv each delete carries its value: 12 keys of 200 KiB make one
 * 2.4 MB revision, over etcd's --max-request-bytes (1.5 MiB). The watch
 * asks etcd to fragment, so the revision comes in several messages (a
 * worker's 300 records of 1 MiB made one ~300 MB message that no reply
 * bound takes, and the watch failed on it and resumed at the same revision
 * for good); every delete arrives once, with its previous value. */
static void test_a_revision_larger_than_a_message_comes_in_fragments(void **state)
{
    fixture_t *fx = *state;
    char *value = malloc(FRAG_VALUE);
    int64_t lease = 0;

    memset(value, 'v', FRAG_VALUE);
    assert_int_equal(etcd_lease_grant(fx->client, 60, 0, &lease, NULL), FERRY_OK);
    for (int i = 0; i < FRAG_KEYS; i++) {
        char key[32];
        snprintf(key, sizeof(key), "w6/%02d", i);
        assert_int_equal(etcd_put(fx->client, key, strlen(key), value, FRAG_VALUE, lease, NULL),
                         FERRY_OK);
    }
    recorder_t rec;
    recorder_init(&rec);
    uint8_t *end;
    etcd_watch_t *watch = watch_prefix(fx->client, "w6/", 0, &rec, &end);
    assert_int_equal(etcd_lease_revoke(fx->client, lease), FERRY_OK);
    assert_true(recorder_wait_events(&rec, FRAG_KEYS, WAIT_MS));
    int64_t marker = fixture_put(fx->client, "w6/zz", "after", 0);
    assert_true(recorder_wait_events(&rec, FRAG_KEYS + 1, WAIT_MS));
    etcd_watch_destroy(watch);

    assert_int_equal(rec.n_events, FRAG_KEYS + 1);
    assert_true(rec.n_calls > 2);  /* the revision in two or more, then the marker */
    assert_true(rec.call_more[0]); /* more of the revision follows */
    assert_false(rec.call_more[rec.n_calls - 2]);
    assert_false(rec.call_more[rec.n_calls - 1]);
    for (int i = 0; i < FRAG_KEYS; i++) {
        char key[32];
        snprintf(key, sizeof(key), "w6/%02d", i);
        assert_int_equal(rec.events[i].type, ETCD_EVENT_DELETE);
        assert_string_equal(rec.events[i].key, key); /* each once, in order */
        assert_true(rec.events[i].has_prev);
        assert_int_equal(rec.events[i].mod_revision, rec.events[0].mod_revision);
    }
    assert_int_equal(rec.events[FRAG_KEYS].mod_revision, marker);
    recorder_fini(&rec);
    free(end);
    free(value);
}

static void test_unreachable_watch_fails(void **state)
{
    (void)state;
    char endpoint[64];
    snprintf(endpoint, sizeof(endpoint), "http://127.0.0.1:%d", test_free_port());
    etcd_client_t *client = fixture_client(endpoint, 1000);
    recorder_t rec;
    recorder_init(&rec);
    etcd_watch_params_t params = {.key = "k", .key_len = 1};
    recorder_params(&rec, &params);
    etcd_watch_t *watch = NULL;
    assert_int_equal(etcd_watch_create(client, &params, &watch), FERRY_ERR_UNAVAILABLE);
    assert_null(watch);
    assert_non_null(strstr(etcd_client_last_error(), "127.0.0.1"));
    etcd_client_destroy(client);
    recorder_fini(&rec);
}

static void test_reconnects_after_restart(void **state)
{
    fixture_t *fx = *state;
    recorder_t rec;
    recorder_init(&rec);
    uint8_t *end;
    etcd_watch_t *watch = watch_prefix(fx->client, "w4/", 0, &rec, &end);
    fixture_put(fx->client, "w4/before", "1", 0);
    assert_true(recorder_wait_events(&rec, 1, WAIT_MS));

    test_etcd_down(&fx->etcd);
    assert_true(recorder_wait_down(&rec, 1, WAIT_MS));
    assert_int_equal(rec.last_status, FERRY_ERR_UNAVAILABLE);
    assert_int_equal(test_etcd_up(&fx->etcd), 0);
    /* Put at once, before the watch is back: resuming from the last
     * revision + 1 must still deliver it. */
    fixture_put(fx->client, "w4/after", "2", 0);
    assert_true(recorder_wait_up(&rec, 1, WAIT_MS));
    assert_int_equal(rec.last_status, FERRY_OK);
    assert_true(recorder_wait_events(&rec, 2, WAIT_MS));
    fixture_put(fx->client, "w4/later", "3", 0);
    assert_true(recorder_wait_events(&rec, 3, WAIT_MS));
    etcd_watch_destroy(watch);

    assert_int_equal(rec.n_events, 3);
    assert_string_equal(rec.events[0].key, "w4/before");
    assert_string_equal(rec.events[1].key, "w4/after");
    assert_string_equal(rec.events[2].key, "w4/later");
    assert_int_equal(rec.n_down, 1);
    assert_int_equal(rec.n_up, 1);
    recorder_fini(&rec);
    free(end);
}

/* The first endpoint is a real etcd that freezes (SIGSTOP) under an open
 * watch: the connection stays up and says nothing, like an idle store. The
 * watch finds it silent, probes it, and moves to the live endpoint, where
 * it gets the events from where it was. The frozen etcd is a store of its
 * own, so the watch starts at a revision the live store has not reached
 * (a watch may wait for a future revision), which both stores serve. */
static void test_silent_member_is_left(void **state)
{
    fixture_t *fx = *state;
    test_etcd_t frozen;
    char endpoints[160];
    int64_t now = fixture_put(fx->client, "silent-now", "x", 0);
    assert_int_equal(test_etcd_start(&frozen, NULL), 0);
    snprintf(endpoints, sizeof(endpoints), "%s,%s", frozen.endpoint, fx->etcd.endpoint);
    etcd_client_t *client = fixture_client(endpoints, 2000);

    recorder_t rec;
    recorder_init(&rec);
    uint8_t *end;
    etcd_watch_t *watch = watch_prefix(client, "silent/", now + 1, &rec, &end);
    assert_int_equal(test_proc_pause(&frozen.proc), 0);
    fixture_put(fx->client, "silent/a", "one", 0);
    bool got = recorder_wait_events(&rec, 1, 20000);
    assert_int_equal(test_proc_resume(&frozen.proc), 0);
    assert_true(got);
    assert_string_equal(rec.events[0].key, "silent/a");
    assert_true(rec.n_down >= 1 && rec.n_up >= 1);
    etcd_watch_destroy(watch);
    recorder_fini(&rec);
    free(end);
    etcd_client_destroy(client);
    test_etcd_stop(&frozen);
}

/* A watch whose reconnect finds its next revision compacted says so
 * (FERRY_ERR_OUT_OF_RANGE) without saying it is back first. etcd 3.4
 * answers a watch from a compacted revision with "created" and, up to
 * ~100 ms later, "canceled"; taken at its "created", the reconnect told its
 * owner the watch was live, and the registry served its view, which had
 * missed the gap's changes, until the cancel came (audit-s29-etcd2 F5: a
 * deleted record found again for 40-110 ms). The watch starts on a member
 * of its own store, which then dies; the other endpoint is the fixture's
 * etcd, compacted past the watch's next revision before the watch gets
 * there, as a cluster that compacted while the watch was away (two stores,
 * as in test_silent_member_is_left). */
static void test_a_reconnect_into_compaction_never_says_connected(void **state)
{
    fixture_t *fx = *state;
    test_etcd_t first;
    char endpoints[160];
    assert_int_equal(test_etcd_start(&first, NULL), 0);
    snprintf(endpoints, sizeof(endpoints), "%s,%s", first.endpoint, fx->etcd.endpoint);
    etcd_client_t *client = fixture_client(endpoints, 2000);
    etcd_client_t *direct = fixture_client(first.endpoint, 2000);
    int64_t at = fixture_put(direct, "gap/a", "1", 0);

    recorder_t rec;
    recorder_init(&rec);
    uint8_t *end;
    etcd_watch_t *watch = watch_prefix(client, "gap/", at, &rec, &end);
    assert_true(recorder_wait_events(&rec, 1, WAIT_MS));
    /* The gap: writes past the watch's next revision, then a compaction
     * of them, on the store it will reconnect to. */
    for (int i = 0; i < 4; i++) {
        fixture_put(fx->client, "gap/b", "2", 0);
    }
    int64_t last = fixture_put(fx->client, "gap/b", "3", 0);
    assert_true(last > at + 2);
    compact(fx->etcd.endpoint, last);
    test_etcd_kill(&first);
    bool down = recorder_wait_down(&rec, 2, WAIT_MS);
    etcd_watch_destroy(watch);

    assert_true(down);
    pthread_mutex_lock(&rec.lock);
    assert_int_equal(rec.last_status, FERRY_ERR_OUT_OF_RANGE);
    assert_int_equal(rec.n_up, 0);
    assert_int_equal(rec.n_down, 2); /* the member's loss, then the compaction */
    assert_int_equal(rec.n_events, 1);
    pthread_mutex_unlock(&rec.lock);
    recorder_fini(&rec);
    free(end);
    etcd_client_destroy(direct);
    etcd_client_destroy(client);
    test_etcd_stop(&first);
}

/* The watch thread's waits (etcd_watch.c's test seam): set far beyond the
 * test's own life, so that a destroy that returns at all woke the thread
 * and did not wait one out. */
extern atomic_int ferry__etcd_watch_test_wait_ms;
enum { SEAM_WAIT_MS = 600000, DESTROY_DEADLINE_MS = 20000 };

typedef struct {
    etcd_watch_t *watch;
    atomic_bool done;
} destroyer_t;

static void *destroyer_main(void *arg)
{
    destroyer_t *d = arg;
    etcd_watch_destroy(d->watch);
    atomic_store(&d->done, true);
    return NULL;
}

static bool destroyer_done(void *arg)
{
    return atomic_load(&((destroyer_t *)arg)->done);
}

/* Destroys the watch on another thread; true once destroy has returned,
 * false when it still waits after DESTROY_DEADLINE_MS (the thread left
 * behind then holds `d`, hence static). */
static bool destroy_wakes_the_thread(etcd_watch_t *watch)
{
    static destroyer_t d;
    pthread_t thread;
    d.watch = watch;
    atomic_store(&d.done, false);
    assert_int_equal(pthread_create(&thread, NULL, destroyer_main, &d), 0);
    if (!test_wait_for(destroyer_done, &d, DESTROY_DEADLINE_MS)) {
        print_error("etcd_watch_destroy still waits after %d ms: the watch thread was not woken "
                    "from its %d ms wait\n",
                    DESTROY_DEADLINE_MS, SEAM_WAIT_MS);
        pthread_detach(thread);
        return false;
    }
    pthread_join(thread, NULL);
    return true;
}

static int reset_wait_seam(void **state)
{
    (void)state;
    atomic_store(&ferry__etcd_watch_test_wait_ms, 0);
    return 0;
}

/* Destroy wakes the watch thread wherever it waits: in the idle stream's
 * read (the gRPC stream is cancelled; the gateway's curl_multi_poll is
 * woken) and in the backoff between reconnects (the condition variable).
 * With every wait lasting SEAM_WAIT_MS, a destroy that did not wake the
 * thread would block past the deadline (and the test's timeout). Over the
 * gateway, curl's own timers can still end the first poll after a connect
 * (one about 200 ms in, seen with curl 7.88), so there the idle case shows
 * the wakeup only when destroy comes after it; the backoff case does not
 * depend on curl. */
static void test_destroy_wakes_the_thread(void **state)
{
    fixture_t *fx = *state;
    recorder_t rec;
    recorder_init(&rec);
    uint8_t *end;
    atomic_store(&ferry__etcd_watch_test_wait_ms, SEAM_WAIT_MS);
    etcd_watch_t *watch = watch_prefix(fx->client, "w5/", 0, &rec, &end);
    assert_true(destroy_wakes_the_thread(watch)); /* idle stream: the thread waits in its read */
    free(end);

    /* While waiting out its backoff after etcd went away: the thread says
     * "down" just before it starts that wait. */
    watch = watch_prefix(fx->client, "w5/", 0, &rec, &end);
    test_etcd_kill(&fx->etcd);
    assert_true(recorder_wait_down(&rec, 1, WAIT_MS));
    assert_true(destroy_wakes_the_thread(watch));
    atomic_store(&ferry__etcd_watch_test_wait_ms, 0);
    assert_int_equal(test_etcd_up(&fx->etcd), 0);
    recorder_fini(&rec);
    free(end);
}

#ifdef FIXTURE_KV_GATEWAY
/* A gateway client of f and a watch of `prefix` from now through it, then
 * waits (with a deadline) until f has served `streams` streams. */
static etcd_watch_t *watch_ending(frozen_etcd_t *f, const char *prefix, int streams,
                                  etcd_client_t **client_p, recorder_t *rec, uint8_t **end_p)
{
    etcd_params_t params = {.endpoints = f->url, .timeout_ms = 2000, .kv_gateway = true};

    assert_int_equal(etcd_client_create(&params, client_p), FERRY_OK);
    recorder_init(rec);
    etcd_watch_t *watch = watch_prefix(*client_p, prefix, 0, rec, end_p);
    long long deadline = test_now_ms() + 30000;
    while (atomic_load(&f->resent) < streams && test_now_ms() < deadline) {
        poll(NULL, 0, 10); /* waiting for the condition, with a deadline */
    }
    assert_true(atomic_load(&f->resent) >= streams);
    return watch;
}

/* A member (or a proxy) that ends every watch stream right after its
 * "created" line, with a line that does not parse: the watch reconnects
 * with a growing backoff (100, 200, 400, 800 ms, then each second), where
 * it used to reconnect every 100 ms for ever, as any created stream
 * started the backoff over. Only a lower bound on the time between
 * connections is checked: a slow machine can only make them later. Over
 * the gateway, whose stream a test can write by hand; the backoff is the
 * same code for both APIs. */
static void test_stream_that_ends_at_once_backs_off(void **state)
{
    (void)state;
    frozen_etcd_t f;
    ending_etcd_start(&f, "{\"result\":{\"header\":{\"revision\":\"5\"},\"created\":true}}\n"
                          "not json\n");
    etcd_client_t *client = NULL;
    recorder_t rec;
    uint8_t *end;
    etcd_watch_t *watch = watch_ending(&f, "ending/", 6, &client, &rec, &end);
    /* The create's stream, then reconnects after 100, 200, 400, 800 and
     * 1,000 ms: from the first reconnect to the fifth at least 2,400 ms
     * (500 when every one waited 100 ms). */
    long long spent = f.times_ms[5] - f.times_ms[1];
    if (spent < 2000) {
        print_error("5 reconnects in %lld ms\n", spent);
    }
    assert_true(spent >= 2000);
    etcd_watch_destroy(watch);
    recorder_fini(&rec);
    free(end);
    etcd_client_destroy(client);
    frozen_etcd_stop(&f);
}

/* A stream that ends between the fragments of one revision: the watch
 * starts again at that revision (not after it, which lost the rest of its
 * events), asking for fragments, and of the events etcd sends again from
 * the revision's first, those delivered already are skipped. Here every
 * stream ends after the same first fragment, so after many streams its
 * two events have been delivered once. */
static void test_a_stream_ended_inside_a_revision_resumes_at_it(void **state)
{
    (void)state;
    frozen_etcd_t f;
    ending_etcd_start(&f, "{\"result\":{\"header\":{\"revision\":\"4\"},\"created\":true}}\n"
                          "{\"result\":{\"header\":{\"revision\":\"5\"},\"fragment\":true,"
                          "\"events\":[{\"type\":\"DELETE\",\"kv\":{\"key\":\"Zi9h\","
                          "\"mod_revision\":\"5\"}},{\"type\":\"DELETE\",\"kv\":{\"key\":"
                          "\"Zi9i\",\"mod_revision\":\"5\"}}]}}\n");
    etcd_client_t *client = NULL;
    recorder_t rec;
    uint8_t *end;
    etcd_watch_t *watch = watch_ending(&f, "f/", 4, &client, &rec, &end);
    pthread_mutex_lock(&f.request_lock);
    bool at_the_revision = strstr(f.last_request, "\"start_revision\":\"5\"") != NULL;
    bool fragments = strstr(f.last_request, "\"fragment\":true") != NULL;
    pthread_mutex_unlock(&f.request_lock);
    etcd_watch_destroy(watch);
    frozen_etcd_stop(&f);

    assert_true(at_the_revision);
    assert_true(fragments);
    pthread_mutex_lock(&rec.lock);
    assert_int_equal(rec.n_events, 2);
    assert_string_equal(rec.events[0].key, "f/a");
    assert_string_equal(rec.events[1].key, "f/b");
    pthread_mutex_unlock(&rec.lock);
    recorder_fini(&rec);
    free(end);
    etcd_client_destroy(client);
}
#endif

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_events_from_revision_in_order),
        cmocka_unit_test(test_txn_is_one_call),
        cmocka_unit_test(test_compacted_start_is_expired),
        cmocka_unit_test(test_start_checks_fail_no_request),
        cmocka_unit_test(test_a_revision_larger_than_a_message_comes_in_fragments),
        cmocka_unit_test(test_unreachable_watch_fails),
        cmocka_unit_test(test_reconnects_after_restart),
#ifdef FIXTURE_KV_GATEWAY
        cmocka_unit_test(test_stream_that_ends_at_once_backs_off),
        cmocka_unit_test(test_a_stream_ended_inside_a_revision_resumes_at_it),
#endif
        cmocka_unit_test(test_silent_member_is_left),
        cmocka_unit_test(test_a_reconnect_into_compaction_never_says_connected),
        cmocka_unit_test_teardown(test_destroy_wakes_the_thread, reset_wait_seam),
    };
    return cmocka_run_group_tests(tests, fixture_setup, fixture_teardown);
}
