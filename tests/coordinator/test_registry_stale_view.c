/*
 * test_registry_stale_view.c: a write decided against a replica's view that
 * lags etcd. Another replica's change (a Claim, a Complete, a Release and a
 * new registration) is in etcd, and this replica's view still holds the
 * record as it was: a Complete, Release, Claim or Cancel here must answer
 * what etcd holds, as every write reflects every change acknowledged before
 * it, not refuse (or do nothing) on the view's old copy.
 *
 * A registry on a real etcd, built as the coordinator builds it; the lag is
 * made by putting the record's older bytes back into its view once its
 * watch has applied the newer change (so no later event corrects it), which
 * is the state a replica whose watch is behind is in.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "etcd_fixture.h"
#include "registry_int.h"
#include "rpc/rpc_int.h"
#include "validate.h"
#include "common/text.h"

#define PREFIX    "/stale/"
#define TOKEN_ONE "token-one-0123456789"
#define TOKEN_TWO "token-two-0123456789"

typedef struct {
    fixture_t *etcd;
    coord_registry_t *r;
} stale_t;

/* A record's bytes and revision as the view held them, to put back. */
typedef struct {
    uint8_t *bytes;
    size_t len;
    int64_t mod_revision;
    ferry_op_state_t state;
} snapshot_t;

static int setup(void **state)
{
    stale_t *s = calloc(1, sizeof(*s));
    void *etcd_state = NULL;
    coord_registry_params_t params = {.prefix = PREFIX, .default_ttl_s = 30};

    assert_non_null(s);
    assert_int_equal(fixture_setup(&etcd_state), 0);
    s->etcd = etcd_state;
    params.etcd = s->etcd->client;
    assert_int_equal(coord_registry_create(&params, &s->r), FERRY_OK);
    *state = s;
    return 0;
}

static int teardown(void **state)
{
    stale_t *s = *state;
    void *etcd_state = s->etcd;

    coord_registry_destroy(s->r);
    free(s);
    return fixture_teardown(&etcd_state);
}

/* Waits (10 s at most) until the view's watch has applied revision. */
static void await_view(coord_registry_t *r, int64_t revision)
{
    int64_t until = ferry__clock_ms(CLOCK_MONOTONIC) + 10000;

    while (coord_registry_revision(r) < revision) {
        struct timespec ts = {0, 5 * 1000 * 1000};
        assert_true(ferry__clock_ms(CLOCK_MONOTONIC) < until);
        nanosleep(&ts, NULL);
    }
}

static void snapshot(coord_registry_t *r, const char *id, snapshot_t *snap)
{
    pthread_mutex_lock(&r->lock);
    const view_entry_t *e = view_find(&r->view, id);
    assert_non_null(e);
    snap->bytes = malloc(e->len);
    assert_non_null(snap->bytes);
    memcpy(snap->bytes, e->bytes, e->len);
    snap->len = e->len;
    snap->mod_revision = e->mod_revision;
    snap->state = e->state;
    pthread_mutex_unlock(&r->lock);
}

/* Puts the snapshot back, once the watch has applied everything up to
 * revision: the view now lags etcd, and no event will correct it. */
static void make_stale(coord_registry_t *r, const char *id, snapshot_t *snap, int64_t revision)
{
    await_view(r, revision);
    pthread_mutex_lock(&r->lock);
    view_remove(&r->view, id, INT64_MAX);
    assert_int_equal(
        view_upsert(&r->view, id, snap->bytes, snap->len, snap->mod_revision, snap->state, NULL),
        FERRY_OK);
    pthread_mutex_unlock(&r->lock);
    free(snap->bytes);
    snap->bytes = NULL;
}

/* A Register of id from client host `host` ("": none), its metadata
 * about `pad` bytes (a worker address of that length): its status, its
 * revision in *revision_p (when it is FERRY_OK), why in msg. */
static ferry_status_t register_padded(coord_registry_t *r, const char *id, const char *token,
                                      const char *host, size_t pad, int64_t *revision_p, char *msg,
                                      size_t cap)
{
    static uint8_t address[4096];
    Ferry__V1__RdmaMetadata md = FERRY__V1__RDMA_METADATA__INIT;
    Ferry__V1__RegisterRequest req = FERRY__V1__REGISTER_REQUEST__INIT;
    coord_register_out_t out;
    uint8_t bytes[64 + sizeof(address)];
    ferry_status_t status;

    assert_true(pad <= sizeof(address));
    md.worker_address.data = address;
    md.worker_address.len = pad;
    md.kind = FERRY__V1__OPERATION_KIND__OPERATION_KIND_WRITE;
    assert_true(ferry__v1__rdma_metadata__get_packed_size(&md) <= sizeof(bytes));
    req.request_id = (char *)id;
    req.access_token = (char *)token;
    req.metadata = &md;
    status = coord_register(r, &req, bytes, ferry__v1__rdma_metadata__pack(&md, bytes), host, NULL,
                            NULL, &out, msg, cap);
    if (status == FERRY_OK) {
        *revision_p = out.revision;
    }
    return status;
}

static ferry_status_t register_from(coord_registry_t *r, const char *id, const char *token,
                                    const char *host, int64_t *revision_p, char *msg, size_t cap)
{
    return register_padded(r, id, token, host, 0, revision_p, msg, cap);
}

static int64_t register_op(coord_registry_t *r, const char *id, const char *token)
{
    int64_t revision = 0;
    char msg[256];

    if (register_from(r, id, token, "", &revision, msg, sizeof(msg)) != FERRY_OK) {
        fail_msg("register %s: %s", id, msg);
    }
    return revision;
}

typedef struct {
    int64_t lease;
    char lease_token[COORD_LEASE_TOKEN_LEN + 1];
    uint64_t claim_id;
    int64_t revision;
} claim_t;

/* A Claim as `claimant`, on the lease of `reuse` when it is not NULL (as
 * libferry claims on its session lease), else on a lease of its own. */
static ferry_status_t claim_as(coord_registry_t *r, const char *id, const char *token,
                               const char *claimant, const claim_t *reuse, claim_t *claim,
                               char *msg, size_t cap)
{
    Ferry__V1__ClaimRequest req = FERRY__V1__CLAIM_REQUEST__INIT;
    coord_change_out_t out = {0};
    ferry_status_t status;

    req.request_id = (char *)id;
    req.access_token = (char *)token;
    req.claimant = (char *)claimant;
    if (reuse != NULL) {
        req.lease_id = reuse->lease;
        req.lease_token = (char *)reuse->lease_token;
    }
    status = coord_claim(r, &req, &out, msg, cap);
    if (status == FERRY_OK) {
        claim->lease = out.claim_lease_id;
        memcpy(claim->lease_token, out.lease_token, sizeof(claim->lease_token));
        claim->claim_id = out.rec.op->claim_id;
        claim->revision = out.revision;
        coord_record_free(&out.rec);
    }
    return status;
}

static ferry_status_t claim_op(coord_registry_t *r, const char *id, const char *token,
                               claim_t *claim, char *msg, size_t cap)
{
    return claim_as(r, id, token, "writer", NULL, claim, msg, cap);
}

static ferry_status_t complete_op(coord_registry_t *r, const char *id, const claim_t *claim,
                                  int64_t *revision_p, char *msg, size_t cap)
{
    Ferry__V1__CompleteRequest req = FERRY__V1__COMPLETE_REQUEST__INIT;
    coord_change_out_t out = {0};
    ferry_status_t status;

    req.request_id = (char *)id;
    req.access_token = TOKEN_ONE;
    req.claim_lease_id = claim->lease;
    req.lease_token = (char *)claim->lease_token;
    req.claim_id = claim->claim_id;
    status = coord_complete(r, &req, &out, msg, cap);
    if (status == FERRY_OK) {
        *revision_p = out.revision;
        coord_record_free(&out.rec);
    }
    return status;
}

static ferry_status_t cancel_op(coord_registry_t *r, const char *id, const char *token,
                                int64_t *revision_p, char *msg, size_t cap)
{
    Ferry__V1__CancelRequest req = FERRY__V1__CANCEL_REQUEST__INIT;
    coord_change_out_t out = {0};
    ferry_status_t status;

    req.request_id = (char *)id;
    req.access_token = (char *)token;
    req.reason = "test";
    status = coord_cancel(r, &req, &out, msg, cap);
    if (status == FERRY_OK) {
        *revision_p = out.revision;
        coord_record_free(&out.rec);
    }
    return status;
}

static ferry_status_t release_op(coord_registry_t *r, const char *id, const char *token,
                                 int64_t *revision_p, char *msg, size_t cap)
{
    Ferry__V1__ReleaseRequest req = FERRY__V1__RELEASE_REQUEST__INIT;

    req.request_id = (char *)id;
    req.access_token = (char *)token;
    return coord_release(r, &req, revision_p, msg, cap);
}

/* The record's state in etcd, and its error message into msg[cap] (""
 * when it has none); 0 when the key is absent. */
static int etcd_record(const stale_t *s, const char *id, char *msg, size_t cap)
{
    char key[128];
    etcd_range_t range = {0};
    coord_record_t rec = {0};
    int state = 0;

    snprintf(key, sizeof(key), PREFIX "ops/%s", id);
    assert_int_equal(etcd_get(s->etcd->client, key, strlen(key), NULL, 0, 0, 0, &range), FERRY_OK);
    if (cap > 0) {
        msg[0] = '\0';
    }
    if (range.n_kvs == 1) {
        assert_int_equal(registry_record_decode(range.kvs[0].value, range.kvs[0].value_len, &rec),
                         FERRY_OK);
        state = rec.op->state;
        if (cap > 0 && rec.op->error_message != NULL) {
            assert_true(strlen(rec.op->error_message) < cap);
            snprintf(msg, cap, "%s", rec.op->error_message);
        }
        coord_record_free(&rec);
    }
    etcd_range_free(&range);
    return state;
}

/* The record's state in etcd; 0 when the key is absent. */
static int etcd_state(const stale_t *s, const char *id)
{
    return etcd_record(s, id, NULL, 0);
}

/* Claimed elsewhere, the view still says REGISTERED: the claimant's
 * Complete goes through (it was FAILED_PRECONDITION "not CLAIMED", which
 * libferry takes as final, so the outcome was lost). */
static void test_complete_after_a_claim_the_view_missed(void **state)
{
    stale_t *s = *state;
    snapshot_t before;
    claim_t claim;
    int64_t revision;
    char msg[256];

    register_op(s->r, "c1", TOKEN_ONE);
    snapshot(s->r, "c1", &before);
    assert_int_equal(claim_op(s->r, "c1", TOKEN_ONE, &claim, msg, sizeof(msg)), FERRY_OK);
    make_stale(s->r, "c1", &before, claim.revision);

    ferry_status_t status = complete_op(s->r, "c1", &claim, &revision, msg, sizeof(msg));
    if (status != FERRY_OK) {
        fail_msg("complete on a stale view: %s (%s)", ferry_status_string(status), msg);
    }
    assert_int_equal(etcd_state(s, "c1"), FERRY_OP_COMPLETE);
}

/* Completed elsewhere, the view still says CLAIMED: Release removes it
 * (it was FAILED_PRECONDITION "cancel it before releasing it"). */
static void test_release_after_a_complete_the_view_missed(void **state)
{
    stale_t *s = *state;
    snapshot_t claimed;
    claim_t claim;
    int64_t revision;
    char msg[256];

    register_op(s->r, "c2", TOKEN_ONE);
    assert_int_equal(claim_op(s->r, "c2", TOKEN_ONE, &claim, msg, sizeof(msg)), FERRY_OK);
    await_view(s->r, claim.revision);
    snapshot(s->r, "c2", &claimed);
    assert_int_equal(claimed.state, FERRY_OP_CLAIMED);
    assert_int_equal(complete_op(s->r, "c2", &claim, &revision, msg, sizeof(msg)), FERRY_OK);
    make_stale(s->r, "c2", &claimed, revision);

    ferry_status_t status = release_op(s->r, "c2", TOKEN_ONE, &revision, msg, sizeof(msg));
    if (status != FERRY_OK) {
        fail_msg("release on a stale view: %s (%s)", ferry_status_string(status), msg);
    }
    assert_int_equal(etcd_state(s, "c2"), 0);
}

/* Released and registered again with another token elsewhere, the view
 * still holds the old record: a Claim with the new token is granted (it was
 * PERMISSION_DENIED against the old token's hash). */
static void test_claim_after_a_new_registration_the_view_missed(void **state)
{
    stale_t *s = *state;
    snapshot_t old;
    claim_t claim;
    int64_t revision;
    char msg[256];

    register_op(s->r, "c3", TOKEN_ONE);
    snapshot(s->r, "c3", &old);
    assert_int_equal(cancel_op(s->r, "c3", TOKEN_ONE, &revision, msg, sizeof(msg)), FERRY_OK);
    assert_int_equal(release_op(s->r, "c3", TOKEN_ONE, &revision, msg, sizeof(msg)), FERRY_OK);
    revision = register_op(s->r, "c3", TOKEN_TWO);
    make_stale(s->r, "c3", &old, revision);

    ferry_status_t status = claim_op(s->r, "c3", TOKEN_TWO, &claim, msg, sizeof(msg));
    if (status != FERRY_OK) {
        fail_msg("claim on a stale view: %s (%s)", ferry_status_string(status), msg);
    }
    assert_int_equal(etcd_state(s, "c3"), FERRY_OP_CLAIMED);
}

/* Released and registered again (same token) elsewhere, the view still
 * holds the old CANCELLED record: a Cancel cancels the new registration
 * (it answered OK from the view and wrote nothing). */
static void test_cancel_after_a_new_registration_the_view_missed(void **state)
{
    stale_t *s = *state;
    snapshot_t cancelled;
    int64_t revision;
    char msg[256];

    register_op(s->r, "c4", TOKEN_ONE);
    assert_int_equal(cancel_op(s->r, "c4", TOKEN_ONE, &revision, msg, sizeof(msg)), FERRY_OK);
    await_view(s->r, revision);
    snapshot(s->r, "c4", &cancelled);
    assert_int_equal(cancelled.state, FERRY_OP_CANCELLED);
    assert_int_equal(release_op(s->r, "c4", TOKEN_ONE, &revision, msg, sizeof(msg)), FERRY_OK);
    revision = register_op(s->r, "c4", TOKEN_ONE);
    make_stale(s->r, "c4", &cancelled, revision);

    assert_int_equal(cancel_op(s->r, "c4", TOKEN_ONE, &revision, msg, sizeof(msg)), FERRY_OK);
    assert_int_equal(etcd_state(s, "c4"), FERRY_OP_CANCELLED);
}

/* Released and registered again with another token elsewhere, the view
 * still holds the old record: a Lookup with the new token is answered (it
 * was PERMISSION_DENIED from the view, which a caller takes as final);
 * the view alone does not answer it, and a wrong token is still refused,
 * once etcd confirms. */
static void test_lookup_after_a_new_registration_the_view_missed(void **state)
{
    stale_t *s = *state;
    snapshot_t old;
    coord_record_t rec = {0};
    int64_t revision;
    bool answered = true;
    char msg[256];

    register_op(s->r, "l1", TOKEN_ONE);
    snapshot(s->r, "l1", &old);
    assert_int_equal(cancel_op(s->r, "l1", TOKEN_ONE, &revision, msg, sizeof(msg)), FERRY_OK);
    assert_int_equal(release_op(s->r, "l1", TOKEN_ONE, &revision, msg, sizeof(msg)), FERRY_OK);
    revision = register_op(s->r, "l1", TOKEN_TWO);
    make_stale(s->r, "l1", &old, revision);

    assert_int_equal(coord_lookup_view(s->r, "l1", TOKEN_TWO, false, &rec, &revision, &answered,
                                       msg, sizeof(msg)),
                     FERRY_OK);
    assert_false(answered);
    ferry_status_t status =
        coord_lookup(s->r, "l1", TOKEN_TWO, false, &rec, &revision, msg, sizeof(msg));
    if (status != FERRY_OK) {
        fail_msg("lookup on a stale view: %s (%s)", ferry_status_string(status), msg);
    }
    assert_int_equal(rec.op->state, FERRY_OP_REGISTERED);
    assert_non_null(rec.md);
    coord_record_free(&rec);
    assert_int_equal(coord_lookup(s->r, "l1", "token-wrong-0123456789", false, &rec, &revision, msg,
                                  sizeof(msg)),
                     FERRY_ERR_PERMISSION_DENIED);
}

/* The view's refusal that etcd confirms still stands, with its message. */
static void test_a_refusal_etcd_confirms_stands(void **state)
{
    stale_t *s = *state;
    claim_t claim;
    char msg[256];

    register_op(s->r, "c5", TOKEN_ONE);
    assert_int_equal(claim_op(s->r, "c5", "token-wrong-0123456789", &claim, msg, sizeof(msg)),
                     FERRY_ERR_PERMISSION_DENIED);
    assert_non_null(strstr(msg, "access_token does not grant access to request_id 'c5'"));
    assert_int_equal(claim_op(s->r, "c5", TOKEN_ONE, &claim, msg, sizeof(msg)), FERRY_OK);
    assert_int_equal(claim_op(s->r, "c5", TOKEN_ONE, &claim, msg, sizeof(msg)),
                     FERRY_ERR_FAILED_PRECONDITION);
    assert_non_null(strstr(msg, "already claimed by 'writer'"));
}

/* Waits (10 s at most) until the record in etcd is in `want`. */
static void await_state(const stale_t *s, const char *id, int want)
{
    int64_t until = ferry__clock_ms(CLOCK_MONOTONIC) + 10000;

    while (etcd_state(s, id) != want) {
        struct timespec ts = {0, 5 * 1000 * 1000};
        assert_true(ferry__clock_ms(CLOCK_MONOTONIC) < until);
        nanosleep(&ts, NULL);
    }
}

/* A claim key's deletion handled late (its expiry job queued behind other
 * work, or a watch behind): by then the request ID was released, registered
 * again and claimed again, on the same session lease as the claim that
 * ended. The late expiry must leave the new, live claim alone; it turned it
 * ERRORED ("claim expired") under a writer that was moving data, whose
 * Complete then failed. The same holds for an orphan found at a load (the
 * revision of the load's snapshot). */
static void test_late_claim_end_leaves_a_new_claim_alone(void **state)
{
    stale_t *s = *state;
    claim_t first, again;
    int64_t ended, revision;
    char msg[256];

    register_op(s->r, "e1", TOKEN_ONE);
    assert_int_equal(claim_op(s->r, "e1", TOKEN_ONE, &first, msg, sizeof(msg)), FERRY_OK);
    assert_int_equal(complete_op(s->r, "e1", &first, &ended, msg, sizeof(msg)), FERRY_OK);
    assert_int_equal(release_op(s->r, "e1", TOKEN_ONE, &revision, msg, sizeof(msg)), FERRY_OK);
    register_op(s->r, "e1", TOKEN_ONE);
    assert_int_equal(claim_as(s->r, "e1", TOKEN_ONE, "writer", &first, &again, msg, sizeof(msg)),
                     FERRY_OK);
    assert_int_equal(again.lease, first.lease);
    await_view(s->r, again.revision);

    /* the Complete's deletion, then a load at the claim */
    assert_int_equal(registry_expire_claim(s->r, "e1", first.lease, ended, msg, sizeof(msg)),
                     FERRY_OK);
    assert_int_equal(
        registry_expire_claim(s->r, "e1", first.lease, again.revision, msg, sizeof(msg)), FERRY_OK);
    assert_int_equal(etcd_state(s, "e1"), FERRY_OP_CLAIMED);
    assert_int_equal(complete_op(s->r, "e1", &again, &revision, msg, sizeof(msg)), FERRY_OK);
    assert_int_equal(etcd_state(s, "e1"), FERRY_OP_COMPLETE);
}

/* A claim whose lease ends is marked ERRORED with a text that quotes its
 * claimant. A claimant of COORD_NAME_MAX bytes whose characters are not
 * ASCII is quoted whole, as valid UTF-8: the text was cut at 134 bytes of
 * the name, inside a character, and the stored record then broke every
 * List page and Watch message carrying it for clients that check UTF-8. */
static void test_expired_claim_text_is_utf8(void **state)
{
    stale_t *s = *state;
    char claimant[COORD_NAME_MAX + 1];
    claim_t claim;
    char msg[COORD_NAME_MAX + 256];
    size_t n = 0;

    while (n < 134) {
        claimant[n++] = 'a';
    }
    while (n + 2 <= COORD_NAME_MAX) {
        claimant[n++] = (char)0xC3; /* U+00E9, two bytes */
        claimant[n++] = (char)0xA9;
    }
    claimant[n] = '\0';
    register_op(s->r, "e2", TOKEN_ONE);
    assert_int_equal(claim_as(s->r, "e2", TOKEN_ONE, claimant, NULL, &claim, msg, sizeof(msg)),
                     FERRY_OK);
    /* The claim's lease ends: etcd deletes its key, the watch expires it
     * (this registry has no work queue: at once). */
    assert_int_equal(etcd_lease_revoke(s->etcd->client, claim.lease), FERRY_OK);
    await_state(s, "e2", FERRY_OP_ERRORED);
    assert_int_equal(etcd_record(s, "e2", msg, sizeof(msg)), FERRY_OP_ERRORED);
    assert_int_equal(ferry_utf8_invalid_at(msg, strlen(msg)), strlen(msg));
    assert_non_null(strstr(msg, claimant));
}

/* Whether PREFIX "claims/<id>" is in etcd. */
static bool claim_key_exists(const stale_t *s, const char *id)
{
    char key[128];
    etcd_range_t range = {0};
    bool exists;

    snprintf(key, sizeof(key), PREFIX "claims/%s", id);
    assert_int_equal(etcd_get(s->etcd->client, key, strlen(key), NULL, 0, 0, 0, &range), FERRY_OK);
    exists = range.n_kvs > 0;
    etcd_range_free(&range);
    return exists;
}

/* The owner's lease ends while its operation is CLAIMED: the record goes,
 * and so does its claim key, which lives on the claimant's lease (libferry
 * keeps that one for as long as its process lives). The key stayed: every
 * owner that died mid-transfer left one, read at every load. */
static void test_claim_key_goes_with_an_expired_owner(void **state)
{
    stale_t *s = *state;
    Ferry__V1__RdmaMetadata md = FERRY__V1__RDMA_METADATA__INIT;
    Ferry__V1__RegisterRequest req = FERRY__V1__REGISTER_REQUEST__INIT;
    coord_register_out_t out;
    claim_t claim;
    uint8_t bytes[64];
    char msg[256];
    int64_t until;

    md.kind = FERRY__V1__OPERATION_KIND__OPERATION_KIND_WRITE;
    req.request_id = "k1";
    req.access_token = TOKEN_ONE;
    req.metadata = &md;
    assert_int_equal(coord_register(s->r, &req, bytes, ferry__v1__rdma_metadata__pack(&md, bytes),
                                    "", NULL, NULL, &out, msg, sizeof(msg)),
                     FERRY_OK);
    assert_int_equal(claim_op(s->r, "k1", TOKEN_ONE, &claim, msg, sizeof(msg)), FERRY_OK);
    assert_true(claim_key_exists(s, "k1"));
    assert_int_equal(etcd_lease_revoke(s->etcd->client, out.lease_id), FERRY_OK);
    await_state(s, "k1", 0);
    until = ferry__clock_ms(CLOCK_MONOTONIC) + 10000;
    while (claim_key_exists(s, "k1") && ferry__clock_ms(CLOCK_MONOTONIC) < until) {
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    assert_false(claim_key_exists(s, "k1"));
}

/* A late deletion of a claim key (scheduled when its record left etcd
 * CLAIMED, run behind other work or after a failed try) finds the request
 * ID claimed again since, on the same session lease: the later Claim's
 * put kept the key's create revision, but not its mod revision. The
 * deletion must leave the live claim's key alone; it deleted it, and the
 * live claim turned ERRORED ("claim expired") mid-transfer. */
static void test_late_claim_key_deletion_leaves_a_new_claim_alone(void **state)
{
    stale_t *s = *state;
    const char *key = PREFIX "ops/k3";
    etcd_range_t registered = {0};
    claim_t first, again;
    int64_t revision;
    char msg[256];

    register_op(s->r, "k3", TOKEN_ONE);
    assert_int_equal(etcd_get(s->etcd->client, key, strlen(key), NULL, 0, 0, 0, &registered),
                     FERRY_OK);
    assert_int_equal(registered.n_kvs, 1);
    assert_int_equal(claim_op(s->r, "k3", TOKEN_ONE, &first, msg, sizeof(msg)), FERRY_OK);
    /* The record gone and back REGISTERED, with no claim key job: the key
     * keeps the first claim's create revision. */
    assert_int_equal(etcd_put(s->etcd->client, key, strlen(key), registered.kvs[0].value,
                              registered.kvs[0].value_len, registered.kvs[0].lease, &revision),
                     FERRY_OK);
    etcd_range_free(&registered);
    await_view(s->r, revision);
    assert_int_equal(claim_as(s->r, "k3", TOKEN_ONE, "writer", &first, &again, msg, sizeof(msg)),
                     FERRY_OK);
    assert_int_equal(again.lease, first.lease);

    registry_delete_claim_key_later(s->r, "k3", first.revision); /* no queue: at once */
    assert_true(claim_key_exists(s, "k3"));
    revision = register_op(s->r, "k3-after", TOKEN_ONE); /* past any deletion's events */
    await_view(s->r, revision);
    assert_int_equal(etcd_state(s, "k3"), FERRY_OP_CLAIMED);
    assert_int_equal(complete_op(s->r, "k3", &again, &revision, msg, sizeof(msg)), FERRY_OK);
    assert_int_equal(etcd_state(s, "k3"), FERRY_OP_COMPLETE);
}

/* A job that holds the work queue's one worker until the gate opens. */
typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t opened;
    bool open;
} gate_t;

static void gate_job(void *arg, bool run)
{
    gate_t *g = arg;

    (void)run;
    pthread_mutex_lock(&g->lock);
    while (!g->open) {
        pthread_cond_wait(&g->opened, &g->lock);
    }
    pthread_mutex_unlock(&g->lock);
}

static void gate_open(gate_t *g)
{
    pthread_mutex_lock(&g->lock);
    g->open = true;
    pthread_cond_broadcast(&g->opened);
    pthread_mutex_unlock(&g->lock);
}

/* Waits (10 s at most) until `queued` jobs wait and `running` run. */
static void await_exec_load(coord_exec_t *exec, int running, int queued)
{
    int64_t until = ferry__clock_ms(CLOCK_MONOTONIC) + 10000;
    int r, q;

    for (coord_exec_load(exec, &r, &q); r != running || q != queued;
         coord_exec_load(exec, &r, &q)) {
        struct timespec ts = {0, 5 * 1000 * 1000};
        assert_true(ferry__clock_ms(CLOCK_MONOTONIC) < until);
        nanosleep(&ts, NULL);
    }
}

/* A claimant whose claim lease ended (stopped, partitioned) sends its
 * Complete before the claim's expiry is written (the expiry job waits
 * behind other work): the claim key is gone, so the claim is over, and the
 * Complete is refused as it would be once the job ran, FAILED_PRECONDITION
 * naming ERRORED (it was taken: COMPLETE). A registry of its own, under
 * another prefix, whose work queue's one worker is held. */
static void test_complete_after_the_claim_lease_ended(void **state)
{
    stale_t *s = *state;
    gate_t gate = {.lock = PTHREAD_MUTEX_INITIALIZER, .opened = PTHREAD_COND_INITIALIZER};
    coord_exec_params_t exec_params = {.n_workers = 1, .max_queued = 16};
    coord_exec_t *exec = NULL;
    coord_registry_params_t params = {
        .etcd = s->etcd->client, .prefix = "/stalled/", .default_ttl_s = 30};
    coord_registry_t *r = NULL;
    coord_record_t rec = {0};
    claim_t claim;
    int64_t revision;
    char msg[256];

    assert_int_equal(coord_exec_create(&exec_params, &exec), FERRY_OK);
    params.exec = exec;
    assert_int_equal(coord_registry_create(&params, &r), FERRY_OK);
    assert_int_equal(coord_exec_submit(exec, gate_job, &gate, 0), FERRY_OK);
    await_exec_load(exec, 1, 0);

    register_op(r, "x1", TOKEN_ONE);
    assert_int_equal(claim_op(r, "x1", TOKEN_ONE, &claim, msg, sizeof(msg)), FERRY_OK);
    assert_int_equal(etcd_lease_revoke(s->etcd->client, claim.lease), FERRY_OK);
    await_exec_load(exec, 1, 1); /* the expiry job, behind the gate */

    msg[0] = '\0';
    ferry_status_t status = complete_op(r, "x1", &claim, &revision, msg, sizeof(msg));
    if (status != FERRY_ERR_FAILED_PRECONDITION) {
        fail_msg("complete after the claim lease ended: %s (%s)", ferry_status_string(status), msg);
    }
    assert_non_null(strstr(msg, "ERRORED"));
    assert_int_equal(coord_lookup(r, "x1", TOKEN_ONE, true, &rec, &revision, msg, sizeof(msg)),
                     FERRY_OK);
    assert_int_equal(rec.op->state, FERRY_OP_ERRORED);
    assert_non_null(strstr(rec.op->error_message, "claim expired"));
    coord_record_free(&rec);

    /* The job, let run, finds it done. */
    gate_open(&gate);
    await_exec_load(exec, 0, 0);
    assert_int_equal(coord_lookup(r, "x1", TOKEN_ONE, true, &rec, &revision, msg, sizeof(msg)),
                     FERRY_OK);
    assert_int_equal(rec.op->state, FERRY_OP_ERRORED);
    coord_record_free(&rec);
    coord_registry_destroy(r);
    coord_exec_destroy(exec);
}

/* A marker job: how many claim ends had run when it ran. */
typedef struct {
    coord_registry_t *r;
    atomic_uint_fast64_t ends_before;
    atomic_bool ran;
} marker_t;

static void marker_job(void *arg, bool run)
{
    marker_t *m = arg;

    (void)run;
    atomic_store(&m->ends_before,
                 atomic_load(&m->r->claim_ends[0]) + atomic_load(&m->r->claim_ends[1]));
    atomic_store(&m->ran, true);
}

/* The claim ends waiting for room in the exec, as the metrics read them
 * (ferry_claim_ends_pending). */
static size_t claim_ends_pending(coord_registry_t *r)
{
    uint64_t on_view, checked;
    size_t waiting, pending;

    coord_registry_claim_ends(r, &on_view, &checked, &waiting, &pending);
    return pending;
}

/* Waits (10 s at most) until `n` claim ends wait for room in the queue. */
static void await_claim_ends_pending(coord_registry_t *r, size_t n)
{
    int64_t until = ferry__clock_ms(CLOCK_MONOTONIC) + 10000;

    while (claim_ends_pending(r) != n) {
        struct timespec ts = {0, 5 * 1000 * 1000};
        assert_true(ferry__clock_ms(CLOCK_MONOTONIC) < until);
        nanosleep(&ts, NULL);
    }
}

/* One Revoke ends every claim on a lease at one revision: the expiry jobs
 * go into the work queue at most REGISTRY_CLAIM_ENDS_QUEUED_MAX at a time,
 * the rest waiting in order, so a job submitted after them runs once that
 * many have, not after all of them (audit-s33 L2: one per claim went in at
 * once, ahead of every write after). Every claim still ends ERRORED. */
static void test_claim_ends_take_turns_in_the_queue(void **state)
{
    enum { N = REGISTRY_CLAIM_ENDS_QUEUED_MAX + 36 };
    stale_t *s = *state;
    gate_t gate = {.lock = PTHREAD_MUTEX_INITIALIZER, .opened = PTHREAD_COND_INITIALIZER};
    coord_exec_params_t exec_params = {.n_workers = 1, .max_queued = 16};
    coord_exec_t *exec = NULL;
    coord_registry_params_t params = {
        .etcd = s->etcd->client, .prefix = "/turns/", .default_ttl_s = 30};
    coord_registry_t *r = NULL;
    coord_record_t rec = {0};
    marker_t marker = {0};
    claim_t first, claim;
    int64_t revision;
    char id[32], msg[256];

    assert_int_equal(coord_exec_create(&exec_params, &exec), FERRY_OK);
    params.exec = exec;
    assert_int_equal(coord_registry_create(&params, &r), FERRY_OK);
    marker.r = r;
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof(id), "t%d", i);
        register_op(r, id, TOKEN_ONE);
        assert_int_equal(claim_as(r, id, TOKEN_ONE, "writer", i == 0 ? NULL : &first,
                                  i == 0 ? &first : &claim, msg, sizeof(msg)),
                         FERRY_OK);
    }
    assert_int_equal(coord_exec_submit(exec, gate_job, &gate, 0), FERRY_OK);
    await_exec_load(exec, 1, 0);
    assert_int_equal(etcd_lease_revoke(s->etcd->client, first.lease), FERRY_OK);
    await_claim_ends_pending(r, N - REGISTRY_CLAIM_ENDS_QUEUED_MAX);
    await_exec_load(exec, 1, REGISTRY_CLAIM_ENDS_QUEUED_MAX);
    assert_int_equal(coord_exec_submit(exec, marker_job, &marker, 0), FERRY_OK);

    gate_open(&gate);
    await_claim_ends_pending(r, 0);
    await_exec_load(exec, 0, 0);
    assert_true(atomic_load(&marker.ran));
    assert_int_equal(atomic_load(&marker.ends_before), REGISTRY_CLAIM_ENDS_QUEUED_MAX);
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof(id), "t%d", i);
        assert_int_equal(coord_lookup(r, id, TOKEN_ONE, true, &rec, &revision, msg, sizeof(msg)),
                         FERRY_OK);
        assert_int_equal(rec.op->state, FERRY_OP_ERRORED);
        coord_record_free(&rec);
    }
    coord_registry_destroy(r);
    coord_exec_destroy(exec);
}

/* The work queue refuses every COORD_EXEC_MUST job for want of memory
 * while this is set (coord_exec_submit through --wrap); counted. */
static atomic_bool submit_no_memory;
static atomic_int submit_no_memory_count;

ferry_status_t __real_coord_exec_submit(coord_exec_t *exec, coord_job_fn fn, void *arg,
                                        unsigned flags);
ferry_status_t __wrap_coord_exec_submit(coord_exec_t *exec, coord_job_fn fn, void *arg,
                                        unsigned flags);

ferry_status_t __wrap_coord_exec_submit(coord_exec_t *exec, coord_job_fn fn, void *arg,
                                        unsigned flags)
{
    if ((flags & COORD_EXEC_MUST) != 0 && atomic_load(&submit_no_memory)) {
        atomic_fetch_add(&submit_no_memory_count, 1);
        return FERRY_ERR_NO_MEMORY;
    }
    return __real_coord_exec_submit(exec, fn, arg, flags);
}

/* Registers n records "<base><i>" on r and claims them all on one lease
 * (the first claim's, in *first). */
static void claim_all(coord_registry_t *r, const char *base, int n, claim_t *first)
{
    claim_t claim;
    char id[32], msg[256];

    for (int i = 0; i < n; i++) {
        snprintf(id, sizeof(id), "%s%d", base, i);
        register_op(r, id, TOKEN_ONE);
        assert_int_equal(claim_as(r, id, TOKEN_ONE, "writer", i == 0 ? NULL : first,
                                  i == 0 ? first : &claim, msg, sizeof(msg)),
                         FERRY_OK);
    }
}

/* Waits (10 s at most) until the view holds "<base><i>" ERRORED, each. */
static void await_all_errored(coord_registry_t *r, const char *base, int n)
{
    int64_t until = ferry__clock_ms(CLOCK_MONOTONIC) + 10000, revision;
    coord_record_t rec = {0};
    char id[32], msg[256];

    for (int i = 0; i < n; i++) {
        ferry_op_state_t state;
        snprintf(id, sizeof(id), "%s%d", base, i);
        do {
            struct timespec ts = {0, 5 * 1000 * 1000};
            assert_int_equal(
                coord_lookup(r, id, TOKEN_ONE, false, &rec, &revision, msg, sizeof(msg)), FERRY_OK);
            state = rec.op->state;
            coord_record_free(&rec);
            if (state != FERRY_OP_ERRORED) {
                assert_true(ferry__clock_ms(CLOCK_MONOTONIC) < until);
                nanosleep(&ts, NULL);
            }
        } while (state != FERRY_OP_ERRORED);
    }
}

/* A claim end the work queue refuses for want of memory is kept, at the
 * head of those pending, not dropped: the maintenance thread's next pass
 * submits it, and every claim still ends ERRORED (had it been dropped,
 * the records would stay CLAIMED by a dead claimant until a restart). */
static void test_claim_ends_refused_for_memory_wait_for_the_next_pass(void **state)
{
    enum { N = 5 };
    stale_t *s = *state;
    coord_exec_params_t exec_params = {.n_workers = 1, .max_queued = 16};
    coord_exec_t *exec = NULL;
    coord_registry_params_t params = {
        .etcd = s->etcd->client, .prefix = "/nomem/", .default_ttl_s = 30};
    coord_registry_t *r = NULL;
    claim_t first;
    char id[32];

    assert_int_equal(coord_exec_create(&exec_params, &exec), FERRY_OK);
    params.exec = exec;
    assert_int_equal(coord_registry_create(&params, &r), FERRY_OK);
    claim_all(r, "m", N, &first);
    atomic_store(&submit_no_memory_count, 0);
    atomic_store(&submit_no_memory, true);
    assert_int_equal(etcd_lease_revoke(s->etcd->client, first.lease), FERRY_OK);
    await_claim_ends_pending(r, N);
    assert_true(atomic_load(&submit_no_memory_count) >= N);
    for (int i = 0; i < N; i++) {
        coord_record_t rec = {0};
        int64_t revision;
        char msg[256];
        snprintf(id, sizeof(id), "m%d", i);
        assert_int_equal(coord_lookup(r, id, TOKEN_ONE, false, &rec, &revision, msg, sizeof(msg)),
                         FERRY_OK);
        assert_int_equal(rec.op->state, FERRY_OP_CLAIMED);
        coord_record_free(&rec);
    }
    atomic_store(&submit_no_memory, false);
    await_claim_ends_pending(r, 0);
    await_all_errored(r, "m", N);
    coord_registry_destroy(r);
    coord_exec_destroy(exec);
}

typedef struct {
    coord_exec_t *exec;
    pthread_t thread;
} stopper_t;

static void *stop_exec(void *arg)
{
    coord_exec_stop(((stopper_t *)arg)->exec);
    return NULL;
}

static void noop_job(void *arg, bool run)
{
    (void)arg;
    (void)run;
}

/* The work queue stops with claim ends queued and more pending: each is
 * given up (the next load's orphan scan makes an expiry, a claim key lives
 * as long as its lease), none is left pending or run, and the stop does
 * not hang (ASan's leak check: none is lost either). */
static void test_claim_ends_pending_at_stop_are_given_up(void **state)
{
    enum { N = REGISTRY_CLAIM_ENDS_QUEUED_MAX + 10 };
    stale_t *s = *state;
    gate_t gate = {.lock = PTHREAD_MUTEX_INITIALIZER, .opened = PTHREAD_COND_INITIALIZER};
    coord_exec_params_t exec_params = {.n_workers = 1, .max_queued = 16};
    stopper_t stopper = {0};
    coord_registry_params_t params = {
        .etcd = s->etcd->client, .prefix = "/stop/", .default_ttl_s = 30};
    coord_registry_t *r = NULL;
    uint64_t on_view, checked;
    size_t waiting, pending;
    claim_t first;

    atomic_store(&submit_no_memory, false); /* whatever a failed test left */
    assert_int_equal(coord_exec_create(&exec_params, &stopper.exec), FERRY_OK);
    params.exec = stopper.exec;
    assert_int_equal(coord_registry_create(&params, &r), FERRY_OK);
    claim_all(r, "p", N, &first);
    assert_int_equal(coord_exec_submit(stopper.exec, gate_job, &gate, 0), FERRY_OK);
    await_exec_load(stopper.exec, 1, 0);
    assert_int_equal(etcd_lease_revoke(s->etcd->client, first.lease), FERRY_OK);
    await_claim_ends_pending(r, N - REGISTRY_CLAIM_ENDS_QUEUED_MAX);
    await_exec_load(stopper.exec, 1, REGISTRY_CLAIM_ENDS_QUEUED_MAX);

    assert_int_equal(pthread_create(&stopper.thread, NULL, stop_exec, &stopper), 0);
    /* The queue refuses once it is stopping; until then a job goes in and
     * is called with run = false with the rest. */
    while (coord_exec_submit(stopper.exec, noop_job, NULL, COORD_EXEC_MUST) !=
           FERRY_ERR_UNAVAILABLE) {
        struct timespec ts = {0, 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    gate_open(&gate);
    assert_int_equal(pthread_join(stopper.thread, NULL), 0);
    coord_registry_claim_ends(r, &on_view, &checked, &waiting, &pending);
    assert_int_equal(pending, 0);
    assert_int_equal(waiting, 0);
    assert_int_equal(on_view + checked, 0); /* none ran */
    coord_registry_destroy(r);
    coord_exec_destroy(stopper.exec);
}

/* Marks r's view live or not (as its watch would: a write-through is
 * skipped while it is not); the revision the next write will have,
 * whoever makes it. */
static int64_t view_live(coord_registry_t *r, bool live)
{
    int64_t next;

    pthread_mutex_lock(&r->lock);
    r->synced = live;
    next = r->revision + 1;
    pthread_mutex_unlock(&r->lock);
    return next;
}

/* A record this replica writes while its view is not live (a lost watch,
 * a reload: the write-through is skipped) counts for its host's share
 * until the view has applied its revision; it used to count nowhere in
 * that window, and a host sending its Registers there passed its share
 * (review-s36 M1). A record put in that way, which etcd never holds,
 * stands for one; the next write's revision settles it. */
static void test_a_record_the_view_missed_counts_for_its_host(void **state)
{
    stale_t *s = *state;
    coord_registry_t *r = s->r;
    static const uint8_t ghost[4000];
    const char *host = "10.0.0.7";
    int64_t revision = 0;
    char msg[512];

    r->params.max_stored_per_peer = 4096;
    assert_int_equal(register_from(r, "share-0", TOKEN_ONE, host, &revision, msg, sizeof(msg)),
                     FERRY_OK);
    await_view(r, revision);
    revision = view_live(r, false);
    registry_view_put(r, "ghost", ghost, sizeof(ghost), revision, FERRY_OP_REGISTERED, host, true);
    assert_int_equal(register_from(r, "share-1", TOKEN_ONE, host, &revision, msg, sizeof(msg)),
                     FERRY_ERR_RESOURCE_EXHAUSTED);
    assert_non_null(strstr(msg, "--stored-mib-per-peer"));
    assert_non_null(strstr(msg, host));

    /* Another host's write moves etcd to that revision; once the view has
     * applied it, the record that was never there counts no more. */
    assert_int_equal(
        register_from(r, "share-other", TOKEN_ONE, "10.0.0.8", &revision, msg, sizeof(msg)),
        FERRY_OK);
    await_view(r, revision);
    view_live(r, true);
    assert_int_equal(register_from(r, "share-1", TOKEN_ONE, host, &revision, msg, sizeof(msg)),
                     FERRY_OK);
    r->params.max_stored_per_peer = 0;
}

/* A Register of an ID the view holds from the same host is judged without
 * that record, not let through uncounted: where the view lags the
 * record's delete, the Register writes it again, and a large one made
 * from a small one the view still held passed the share (review-s36b M2). */
static void test_a_register_over_a_record_the_view_still_holds_counts(void **state)
{
    stale_t *s = *state;
    coord_registry_t *r = s->r;
    static const uint8_t small[8];
    const char *host = "10.0.0.9";
    int64_t revision = 0;
    char msg[512];

    r->params.max_stored_per_peer = 4096;
    /* A record etcd no longer holds (its delete not yet seen), small. */
    pthread_mutex_lock(&r->lock);
    assert_int_equal(view_upsert(&r->view, "gone", small, sizeof(small), r->revision + 1000,
                                 FERRY_OP_COMPLETE, host),
                     FERRY_OK);
    pthread_mutex_unlock(&r->lock);
    assert_int_equal(register_padded(r, "gone", TOKEN_ONE, host, 4000, &revision, msg, sizeof(msg)),
                     FERRY_ERR_RESOURCE_EXHAUSTED);
    assert_non_null(strstr(msg, "--stored-mib-per-peer"));
    /* The same Register of a small record is judged without the old one. */
    assert_int_equal(register_padded(r, "gone", TOKEN_ONE, host, 0, &revision, msg, sizeof(msg)),
                     FERRY_OK);
    pthread_mutex_lock(&r->lock);
    view_remove(&r->view, "gone", INT64_MAX);
    pthread_mutex_unlock(&r->lock);
    r->params.max_stored_per_peer = 0;
}

/* What a Register of an empty metadata from `host` is bounded by
 * (registry_ops.c stored_bound: the metadata, the ID twice, the host, the
 * record's other fields at their largest, VIEW_RECORD_OVERHEAD). */
static size_t empty_bound(const char *id, const char *host)
{
    Ferry__V1__RdmaMetadata md = FERRY__V1__RDMA_METADATA__INIT;

    md.kind = FERRY__V1__OPERATION_KIND__OPERATION_KIND_WRITE;
    return ferry__v1__rdma_metadata__get_packed_size(&md) + 2 * strlen(id) + strlen(host) + 96 +
           VIEW_RECORD_OVERHEAD;
}

/* A Register of an empty metadata from `host` on lease_id (0: a lease of
 * its own) under TOKEN_TWO. */
static ferry_status_t register_on_lease(coord_registry_t *r, const char *id, const char *host,
                                        int64_t lease_id, const char *lease_token,
                                        coord_register_out_t *out)
{
    Ferry__V1__RdmaMetadata md = FERRY__V1__RDMA_METADATA__INIT;
    Ferry__V1__RegisterRequest req = FERRY__V1__REGISTER_REQUEST__INIT;
    uint8_t bytes[64];
    char msg[512];
    ferry_status_t status;

    md.kind = FERRY__V1__OPERATION_KIND__OPERATION_KIND_WRITE;
    req.request_id = (char *)id;
    req.access_token = TOKEN_TWO;
    req.metadata = &md;
    req.lease_id = lease_id;
    req.lease_token = (char *)lease_token;
    status = coord_register(r, &req, bytes, ferry__v1__rdma_metadata__pack(&md, bytes), host, NULL,
                            NULL, out, msg, sizeof(msg));
    if (status != FERRY_OK) {
        print_message("register %s: %s\n", id, msg);
    }
    return status;
}

/* A Register its owner sends again after it was applied (its answer lost)
 * is answered as registered where the host's records fill its share: it
 * is judged without the record it repeats, which the view already counts
 * (review-s36 M2; review-s36c M1: without the record's cost taken off, it
 * is refused, and libferry then removes the record that did register). */
static void test_a_repeat_at_the_share_edge_is_answered(void **state)
{
    stale_t *s = *state;
    coord_registry_t *r = s->r;
    const char *host = "10.0.0.11";
    coord_register_out_t out, again;

    r->params.max_stored_per_peer = 0;
    assert_int_equal(register_on_lease(r, "repeat", host, 0, "", &out), FERRY_OK);
    await_view(r, out.revision);
    /* Room for its bound alone: the record it repeats must not count. */
    r->params.max_stored_per_peer = empty_bound("repeat", host);
    pthread_mutex_lock(&r->lock);
    assert_true(view_host_bytes(&r->view, host) > 0);
    pthread_mutex_unlock(&r->lock);
    assert_int_equal(register_on_lease(r, "repeat", host, out.lease_id, out.lease_token, &again),
                     FERRY_OK);
    assert_int_equal(again.revision, out.revision); /* the first one's: nothing written */
    r->params.max_stored_per_peer = 0;
}

/* A record written over one the view still holds from the same host (its
 * delete not yet seen) is judged with the host's other records: one that
 * fits the share alone but not beside them is refused. */
static void test_a_record_over_a_held_one_counts_with_the_rest(void **state)
{
    stale_t *s = *state;
    coord_registry_t *r = s->r;
    static const uint8_t small[8];
    const char *host = "10.0.0.12";
    int64_t revision = 0;
    size_t others;
    char msg[512], want[96];

    r->params.max_stored_per_peer = 0;
    assert_int_equal(
        register_padded(r, "others", TOKEN_ONE, host, 1000, &revision, msg, sizeof(msg)), FERRY_OK);
    await_view(r, revision);
    pthread_mutex_lock(&r->lock);
    others = view_host_bytes(&r->view, host);
    assert_int_equal(view_upsert(&r->view, "gone-2", small, sizeof(small), r->revision + 1000,
                                 FERRY_OP_COMPLETE, host),
                     FERRY_OK);
    pthread_mutex_unlock(&r->lock);
    /* Room for the other records and a small record: a 1,100-byte one
     * fits the share alone, not beside them. */
    r->params.max_stored_per_peer = others + empty_bound("gone-2", host);
    assert_int_equal(
        register_padded(r, "gone-2", TOKEN_ONE, host, 1100, &revision, msg, sizeof(msg)),
        FERRY_ERR_RESOURCE_EXHAUSTED);
    /* It says what it judged: the others, not the record it replaces. */
    snprintf(want, sizeof(want), "take %zu bytes in etcd besides the one of this ID", others);
    assert_non_null(strstr(msg, want));
    assert_int_equal(register_padded(r, "gone-2", TOKEN_ONE, host, 0, &revision, msg, sizeof(msg)),
                     FERRY_OK);
    pthread_mutex_lock(&r->lock);
    view_remove(&r->view, "gone-2", INT64_MAX);
    pthread_mutex_unlock(&r->lock);
    r->params.max_stored_per_peer = 0;
}

/* A record rewritten (a Claim, a Complete) while the view is not live is
 * counted already: it does not count again as unseen, which refused a
 * busy host on that replica for as long as the view was away
 * (review-s36b M1). */
static void test_a_rewrite_the_view_missed_counts_once(void **state)
{
    stale_t *s = *state;
    coord_registry_t *r = s->r;
    static const uint8_t rewritten[4000];
    const char *host = "10.0.0.13";
    int64_t revision = 0;
    char msg[512];

    r->params.max_stored_per_peer = 4096;
    assert_int_equal(register_from(r, "rw-0", TOKEN_ONE, host, &revision, msg, sizeof(msg)),
                     FERRY_OK);
    await_view(r, revision);
    revision = view_live(r, false);
    registry_view_put(r, "rw-0", rewritten, sizeof(rewritten), revision, FERRY_OP_CLAIMED, host,
                      false);
    assert_int_equal(register_from(r, "rw-1", TOKEN_ONE, host, &revision, msg, sizeof(msg)),
                     FERRY_OK);
    await_view(r, revision);
    view_live(r, true);
    r->params.max_stored_per_peer = 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_complete_after_a_claim_the_view_missed),
        cmocka_unit_test(test_release_after_a_complete_the_view_missed),
        cmocka_unit_test(test_claim_after_a_new_registration_the_view_missed),
        cmocka_unit_test(test_cancel_after_a_new_registration_the_view_missed),
        cmocka_unit_test(test_a_refusal_etcd_confirms_stands),
        cmocka_unit_test(test_lookup_after_a_new_registration_the_view_missed),
        cmocka_unit_test(test_claim_key_goes_with_an_expired_owner),
        cmocka_unit_test(test_late_claim_key_deletion_leaves_a_new_claim_alone),
        cmocka_unit_test(test_late_claim_end_leaves_a_new_claim_alone),
        cmocka_unit_test(test_expired_claim_text_is_utf8),
        cmocka_unit_test(test_complete_after_the_claim_lease_ended),
        cmocka_unit_test(test_claim_ends_take_turns_in_the_queue),
        cmocka_unit_test(test_claim_ends_refused_for_memory_wait_for_the_next_pass),
        cmocka_unit_test(test_claim_ends_pending_at_stop_are_given_up),
        cmocka_unit_test(test_a_record_the_view_missed_counts_for_its_host),
        cmocka_unit_test(test_a_register_over_a_record_the_view_still_holds_counts),
        cmocka_unit_test(test_a_repeat_at_the_share_edge_is_answered),
        cmocka_unit_test(test_a_record_over_a_held_one_counts_with_the_rest),
        cmocka_unit_test(test_a_rewrite_the_view_missed_counts_once),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
