/*
 * test_etcd_lease.c: leases against a real etcd: grant, keep-alive, keys
 * that go with a revoked or expired lease (seen by a read and by a watch),
 * and FERRY_ERR_NOT_FOUND for a lease that is gone.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "etcd_fixture.h"

enum { WAIT_MS = 10000 };

typedef struct {
    etcd_client_t *client;
    const char *key;
} key_probe_t;

static bool key_is_gone(void *arg)
{
    key_probe_t *probe = arg;
    etcd_range_t range;
    if (etcd_get(probe->client, probe->key, strlen(probe->key), NULL, 0, 0, 0, &range) !=
        FERRY_OK) {
        return false;
    }
    bool gone = range.n_kvs == 0;
    etcd_range_free(&range);
    return gone;
}

/* A lease of an ID the caller picks: granted with it (above 2^53, kept
 * exact); while it exists, a grant of it is refused FAILED_PRECONDITION
 * when the lease has less than the TTL asked, and taken as the caller's
 * earlier try when it has as much; free again once revoked; a negative ID
 * is the caller's mistake. */
static void test_grant_with_an_id(void **state)
{
    fixture_t *fx = *state;
    const int64_t id = INT64_C(0x7123456789abcdef);
    int64_t lease = 0, ttl = 0;

    assert_int_equal(etcd_lease_grant(fx->client, 30, id, &lease, &ttl), FERRY_OK);
    assert_true(lease == id && ttl == 30);
    /* Found existing with less than the TTL asked: not this caller's. */
    lease = 0;
    assert_int_equal(etcd_lease_grant(fx->client, 60, id, &lease, NULL),
                     FERRY_ERR_FAILED_PRECONDITION);
    assert_true(lease == 0);
    /* With at least the TTL: an earlier try's (the caller's random ID). */
    assert_int_equal(etcd_lease_grant(fx->client, 30, id, &lease, &ttl), FERRY_OK);
    assert_true(lease == id && ttl > 0 && ttl <= 30);
    assert_int_equal(etcd_lease_revoke(fx->client, id), FERRY_OK);
    assert_int_equal(etcd_lease_grant(fx->client, 30, id, &lease, NULL), FERRY_OK);
    assert_int_equal(etcd_lease_revoke(fx->client, id), FERRY_OK);
    assert_int_equal(etcd_lease_grant(fx->client, 30, -1, &lease, NULL), FERRY_ERR_MISUSE);
}

/* A grant with its ID chosen goes on past a member that does not answer
 * (frozen) to the next; when the next finds the ID taken, the lease is the
 * unanswered try's (made here beforehand on the real member, as a frozen
 * member that had passed it on would have): granted, with the TTL it has
 * left, when it has at least the TTL asked; one of less is someone else's,
 * and refused. */
static void test_grant_goes_on_past_a_frozen_member(void **state)
{
    fixture_t *fx = *state;
    const int64_t id = INT64_C(0x7123456789abcd01), fresh = INT64_C(0x7123456789abcd02),
                  short_id = INT64_C(0x7123456789abcd03);
    char endpoints[256];
    frozen_etcd_t f;
    int64_t lease = 0, ttl = 0;
    etcd_client_t *client;

    frozen_etcd_start(&f, NULL);
    snprintf(endpoints, sizeof(endpoints), "%s,%s", f.url, fx->etcd.endpoint);
    client = fixture_client(endpoints, 5000);
    assert_int_equal(etcd_lease_grant(client, 30, fresh, &lease, &ttl), FERRY_OK);
    assert_true(lease == fresh && ttl == 30);
    etcd_client_destroy(client);

    assert_int_equal(etcd_lease_grant(fx->client, 30, id, &lease, NULL), FERRY_OK);
    lease = ttl = 0;
    client = fixture_client(endpoints, 5000); /* the frozen member first again */
    assert_int_equal(etcd_lease_grant(client, 30, id, &lease, &ttl), FERRY_OK);
    assert_true(lease == id && ttl > 0 && ttl <= 30);
    etcd_client_destroy(client);

    assert_int_equal(etcd_lease_grant(fx->client, 10, short_id, &lease, NULL), FERRY_OK);
    lease = 0;
    client = fixture_client(endpoints, 5000);
    assert_int_equal(etcd_lease_grant(client, 30, short_id, &lease, NULL),
                     FERRY_ERR_FAILED_PRECONDITION);
    assert_true(lease == 0);
    etcd_client_destroy(client);
    frozen_etcd_stop(&f);
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(etcd_lease_revoke(fx->client, (int64_t[]){id, fresh, short_id}[i]),
                         FERRY_OK);
    }
}

/* A grant's reply is etcd's, or whatever answers at its address (here a
 * member that answers once, then dies): one that names another lease than
 * the ID asked for, none, 0 or not a number is refused as malformed, and
 * the caller is given no lease. */
static void test_grant_reply_without_the_id_asked_for(void **state)
{
    static const char *const replies[] = {
        "{\"ID\":\"5\",\"TTL\":\"30\"}",  /* another lease */
        "{\"TTL\":\"30\"}",               /* none */
        "{\"ID\":\"0\",\"TTL\":\"30\"}",  /* no lease */
        "{\"ID\":\"x7\",\"TTL\":\"30\"}", /* not a number */
    };
    (void)state;

    for (size_t i = 0; i < sizeof(replies) / sizeof(replies[0]); i++) {
        frozen_etcd_t f;
        int64_t lease = -1;

        dying_etcd_start(&f, replies[i], false);
        etcd_client_t *client = fixture_client(f.url, 2000);
        assert_int_equal(etcd_lease_grant(client, 30, 7, &lease, NULL), FERRY_ERR_PROTOCOL);
        assert_true(lease == -1);
        etcd_client_destroy(client);
        frozen_etcd_stop(&f);
    }
}

/* A grant of its ID that finds the ID taken takes the lease as its earlier
 * try's only on a time-to-live that says the lease lives, granted at least
 * the TTL asked. Here a member that answers so (scripted): a time-to-live
 * without a TTL, with one that is not a number, negative (etcd's for a
 * lease gone) or 0, granted less than asked or without saying, one that is
 * not JSON or not an object, is no such proof: the grant is refused
 * FAILED_PRECONDITION, as for another's lease, and the caller is given no
 * lease. The one that says so is granted, with the TTL left. */
static void test_grant_of_a_taken_id_needs_a_time_to_live_that_says_so(void **state)
{
    static const char taken[] = "{\"error\":\"etcdserver: lease already exists\",\"code\":9,"
                                "\"message\":\"etcdserver: lease already exists\"}";
    static const char *const replies[] = {
        "{\"ID\":\"7\",\"grantedTTL\":\"30\"}",                  /* no TTL */
        "{\"ID\":\"7\",\"TTL\":\"soon\",\"grantedTTL\":\"30\"}", /* not a number */
        "{\"ID\":\"7\",\"TTL\":true,\"grantedTTL\":\"30\"}",     /* not a number */
        "{\"ID\":\"7\",\"TTL\":\"-1\",\"grantedTTL\":\"30\"}",   /* gone */
        "{\"ID\":\"7\",\"TTL\":-5,\"grantedTTL\":30}",           /* negative */
        "{\"ID\":\"7\",\"TTL\":\"0\",\"grantedTTL\":\"30\"}",    /* expiring */
        "{\"ID\":\"7\",\"TTL\":\"20\",\"grantedTTL\":\"29\"}",   /* less than asked */
        "{\"ID\":\"7\",\"TTL\":\"20\"}",                         /* granted unsaid */
        "{\"ID\":\"7\",\"TTL\":\"20\",\"grantedTTL\":\"lots\"}", /* not a number */
        "{\"ID\":\"7\",\"TTL\":\"20\",\"grantedTTL\":\"30\"",    /* not JSON */
        "[\"20\",\"30\"]",                                       /* not an object */
        "",                                                      /* nothing */
    };
    (void)state;

    for (size_t i = 0; i <= sizeof(replies) / sizeof(replies[0]); i++) {
        bool last = i == sizeof(replies) / sizeof(replies[0]);
        scripted_etcd_t s;
        int64_t lease = -1, ttl = -1;
        ferry_status_t status;
        int asked;

        scripted_etcd_start(&s);
        scripted_etcd_answer(&s, "/v3/lease/grant", 400, taken);
        scripted_etcd_answer(&s, "/v3/lease/timetolive", 200,
                             last ? "{\"ID\":\"7\",\"TTL\":\"20\",\"grantedTTL\":\"30\"}"
                                  : replies[i]);
        etcd_client_t *client = fixture_client(s.url, 2000);
        status = etcd_lease_grant(client, 30, 7, &lease, &ttl);
        asked = scripted_etcd_hits(&s, "/v3/lease/timetolive");
        etcd_client_destroy(client);
        scripted_etcd_stop(&s);
        if (status != (last ? FERRY_OK : FERRY_ERR_FAILED_PRECONDITION)) {
            print_error("time-to-live %s: %s\n", last ? "(well-formed)" : replies[i],
                        ferry_status_name(status));
        }
        assert_int_equal(asked, 1);
        if (last) {
            assert_int_equal(status, FERRY_OK);
            assert_true(lease == 7 && ttl == 20);
        } else {
            assert_int_equal(status, FERRY_ERR_FAILED_PRECONDITION);
            assert_true(lease == -1 && ttl == -1);
        }
    }
}

static void test_grant_keepalive_revoke(void **state)
{
    fixture_t *fx = *state;
    int64_t lease = 0;
    int64_t ttl = 0;
    assert_int_equal(etcd_lease_grant(fx->client, 30, 0, &lease, &ttl), FERRY_OK);
    assert_true(lease != 0);
    assert_true(ttl == 30);
    int64_t left = 0;
    assert_int_equal(etcd_lease_keepalive(fx->client, lease, &left), FERRY_OK);
    assert_true(left > 0 && left <= 30);

    fixture_put(fx->client, "lease/a", "held", lease);
    etcd_range_t range;
    assert_int_equal(etcd_get(fx->client, "lease/a", 7, NULL, 0, 0, 0, &range), FERRY_OK);
    assert_int_equal(range.n_kvs, 1);
    assert_true(range.kvs[0].lease == lease); /* exact, though above 2^53 */
    etcd_range_free(&range);

    assert_int_equal(etcd_lease_revoke(fx->client, lease), FERRY_OK);
    key_probe_t probe = {fx->client, "lease/a"};
    assert_true(key_is_gone(&probe));
    assert_int_equal(etcd_lease_keepalive(fx->client, lease, &left), FERRY_ERR_NOT_FOUND);
    assert_true(strlen(etcd_client_last_error()) > 0);
    assert_int_equal(etcd_lease_revoke(fx->client, lease), FERRY_ERR_NOT_FOUND);
}

static void test_put_with_unknown_lease(void **state)
{
    fixture_t *fx = *state;
    assert_int_equal(etcd_put(fx->client, "lease/b", 7, "v", 1, 12345, NULL), FERRY_ERR_NOT_FOUND);
    assert_int_equal(etcd_lease_keepalive(fx->client, INT64_C(7587869323525491715), NULL),
                     FERRY_ERR_NOT_FOUND);
}

static void test_expiry_by_ttl(void **state)
{
    fixture_t *fx = *state;
    int64_t lease = 0;
    assert_int_equal(etcd_lease_grant(fx->client, 2, 0, &lease, NULL), FERRY_OK);
    int64_t rev = fixture_put(fx->client, "lease/ttl", "short", lease);

    recorder_t rec;
    recorder_init(&rec);
    etcd_watch_params_t params = {
        .key = "lease/ttl", .key_len = 9, .start_revision = rev + 1, .prev_kv = true};
    recorder_params(&rec, &params);
    etcd_watch_t *watch = NULL;
    assert_int_equal(etcd_watch_create(fx->client, &params, &watch), FERRY_OK);

    /* No keep-alive: etcd deletes the key when the TTL runs out. */
    key_probe_t probe = {fx->client, "lease/ttl"};
    assert_true(test_wait_for(key_is_gone, &probe, WAIT_MS));
    assert_true(recorder_wait_events(&rec, 1, WAIT_MS));
    etcd_watch_destroy(watch);
    assert_int_equal(rec.events[0].type, ETCD_EVENT_DELETE);
    assert_string_equal(rec.events[0].key, "lease/ttl");
    assert_string_equal(rec.events[0].prev_value, "short");
    assert_int_equal(etcd_lease_keepalive(fx->client, lease, NULL), FERRY_ERR_NOT_FOUND);
    recorder_fini(&rec);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grant_keepalive_revoke),
        cmocka_unit_test(test_grant_with_an_id),
        cmocka_unit_test(test_grant_goes_on_past_a_frozen_member),
        cmocka_unit_test(test_grant_reply_without_the_id_asked_for),
        cmocka_unit_test(test_grant_of_a_taken_id_needs_a_time_to_live_that_says_so),
        cmocka_unit_test(test_put_with_unknown_lease),
        cmocka_unit_test(test_expiry_by_ttl),
    };
    return cmocka_run_group_tests(tests, fixture_setup, fixture_teardown);
}
