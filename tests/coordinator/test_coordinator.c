/*
 * test_coordinator.c: every RPC of ferry.v1.Coordinator over the wire,
 * success and error paths, against a real etcd and a real ferry-coordinator
 * process on free loopback ports.
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
#include <sys/wait.h>
#include <unistd.h>

#include "coord_harness.h"

#define TOKEN "token-0123456789abcdef"
#define TTL   2

static test_etcd_t etcd;
static test_coord_t coord;
static rpc_channel_t *chan;

#define KIND_WRITE FERRY__V1__OPERATION_KIND__OPERATION_KIND_WRITE
#define KIND_READ  FERRY__V1__OPERATION_KIND__OPERATION_KIND_READ

static int setup(void **state)
{
    (void)state;
    if (test_etcd_start(&etcd, NULL) != 0 ||
        test_coord_start(&coord, etcd.endpoint, "c1", TTL) != 0) {
        return -1;
    }
    chan = test_coord_channel(&coord);
    return chan != NULL ? 0 : -1;
}

/* The coordinator that served the whole suite exits 0 after SIGTERM (not a
 * crash, a hang it was killed for, or under ASan a leak at exit). cmocka
 * 1.1.5 prints a failed group teardown but does not count it, so main()
 * adds this to the result; the cleanup runs either way. */
static bool coord_exit_bad;

static int teardown(void **state)
{
    (void)state;
    rpc_channel_destroy(chan);
    coord_exit_bad = !test_coord_stop_clean(&coord);
    test_coord_cleanup(&coord);
    test_etcd_stop(&etcd);
    return coord_exit_bad ? -1 : 0;
}

static Ferry__V1__RegisterResponse *do_register(const char *id, const char *token,
                                                Ferry__V1__OperationKind kind,
                                                ferry_status_t expect, rpc_error_t *err)
{
    Ferry__V1__RegisterRequest req = FERRY__V1__REGISTER_REQUEST__INIT;
    Ferry__V1__RegisterResponse *resp = NULL;
    rpc_error_t local;

    req.request_id = (char *)id;
    req.access_token = (char *)token;
    req.metadata = test_coord_metadata(kind);
    req.owner = "test";
    assert_int_equal(test_coord_call(chan, "Register", &req.base,
                                     &ferry__v1__register_response__descriptor,
                                     (ProtobufCMessage **)&resp, err ? err : &local),
                     expect);
    return resp;
}

static ferry_status_t do_lookup(const char *id, const char *token, int64_t wait_ms,
                                Ferry__V1__LookupResponse **resp_p, rpc_error_t *err)
{
    Ferry__V1__LookupRequest req = FERRY__V1__LOOKUP_REQUEST__INIT;
    req.request_id = (char *)id;
    req.access_token = (char *)token;
    req.wait_ms = wait_ms;
    return test_coord_call(chan, "Lookup", &req.base, &ferry__v1__lookup_response__descriptor,
                           (ProtobufCMessage **)resp_p, err);
}

static ferry_status_t do_claim(const char *id, const char *token, Ferry__V1__OperationKind kind,
                               Ferry__V1__ClaimResponse **resp_p, rpc_error_t *err)
{
    Ferry__V1__ClaimRequest req = FERRY__V1__CLAIM_REQUEST__INIT;
    req.request_id = (char *)id;
    req.access_token = (char *)token;
    req.claimant = "writer";
    req.kind = kind;
    return test_coord_call(chan, "Claim", &req.base, &ferry__v1__claim_response__descriptor,
                           (ProtobufCMessage **)resp_p, err);
}

/* Complete on the lease `claim` with its `lease_token`. */
static ferry_status_t do_complete(const char *id, const char *token, int64_t claim,
                                  const char *lease_token, int32_t code,
                                  Ferry__V1__CompleteResponse **resp_p, rpc_error_t *err)
{
    Ferry__V1__CompleteRequest req = FERRY__V1__COMPLETE_REQUEST__INIT;
    req.request_id = (char *)id;
    req.access_token = (char *)token;
    req.claim_lease_id = claim;
    req.lease_token = (char *)lease_token;
    req.error_code = code;
    req.error_message = code != 0 ? "disk on fire" : "";
    return test_coord_call(chan, "Complete", &req.base, &ferry__v1__complete_response__descriptor,
                           (ProtobufCMessage **)resp_p, err);
}

static ferry_status_t do_cancel(const char *id, const char *token, rpc_error_t *err)
{
    Ferry__V1__CancelRequest req = FERRY__V1__CANCEL_REQUEST__INIT;
    Ferry__V1__CancelResponse *resp = NULL;
    ferry_status_t status;

    req.request_id = (char *)id;
    req.access_token = (char *)token;
    req.reason = "receiver gave up";
    status = test_coord_call(chan, "Cancel", &req.base, &ferry__v1__cancel_response__descriptor,
                             (ProtobufCMessage **)&resp, err);
    if (resp != NULL) {
        assert_int_equal(resp->operation->state,
                         FERRY__V1__OPERATION_STATE__OPERATION_STATE_CANCELLED);
        ferry__v1__cancel_response__free_unpacked(resp, NULL);
    }
    return status;
}

static int get_state(const char *id, rpc_error_t *err)
{
    Ferry__V1__GetRequest req = FERRY__V1__GET_REQUEST__INIT;
    Ferry__V1__GetResponse *resp = NULL;
    int state;

    req.request_id = (char *)id;
    if (test_coord_call(chan, "Get", &req.base, &ferry__v1__get_response__descriptor,
                        (ProtobufCMessage **)&resp, err) != FERRY_OK) {
        return -1;
    }
    assert_null(resp->operation->metadata);
    assert_int_equal(resp->operation->token_sha256.len, 0);
    /* Get never shows what would let a reader hold someone's lease. */
    assert_int_equal(resp->operation->lease_id, 0);
    assert_int_equal(resp->operation->claim_lease_id, 0);
    assert_int_equal(resp->operation->claim_id, 0);
    state = (int)resp->operation->state;
    ferry__v1__get_response__free_unpacked(resp, NULL);
    return state;
}

/* --- the happy path ------------------------------------------------------ */

static void test_register_lookup_claim_complete(void **state)
{
    Ferry__V1__RegisterResponse *reg = do_register("flow-1", TOKEN, KIND_WRITE, FERRY_OK, NULL);
    Ferry__V1__LookupResponse *look = NULL;
    Ferry__V1__ClaimResponse *claim = NULL;
    Ferry__V1__CompleteResponse *done = NULL;
    rpc_error_t err;
    (void)state;

    assert_string_equal(reg->access_token, TOKEN);
    assert_true(reg->lease_id > 0);
    assert_int_equal(strlen(reg->lease_token), 64);
    assert_int_equal(reg->ttl_seconds, TTL);
    assert_true(reg->header->revision > 0);
    assert_string_equal(reg->header->coordinator, "c1");

    assert_int_equal(do_lookup("flow-1", TOKEN, 0, &look, &err), FERRY_OK);
    assert_int_equal(look->operation->state,
                     FERRY__V1__OPERATION_STATE__OPERATION_STATE_REGISTERED);
    assert_non_null(look->operation->metadata);
    assert_int_equal(look->operation->metadata->n_descriptors, 1);
    assert_int_equal(look->operation->metadata->descriptors[0]->size, 4096);
    assert_int_equal(look->operation->metadata->worker_address.len, 64);
    assert_int_equal(look->operation->token_sha256.len, 0);
    /* Lease IDs go to their grantees only. */
    assert_int_equal(look->operation->lease_id, 0);

    assert_int_equal(do_claim("flow-1", TOKEN, KIND_WRITE, &claim, &err), FERRY_OK);
    assert_int_equal(claim->operation->state, FERRY__V1__OPERATION_STATE__OPERATION_STATE_CLAIMED);
    assert_string_equal(claim->operation->claimant, "writer");
    assert_non_null(claim->operation->metadata);
    assert_true(claim->claim_lease_id > 0);
    assert_int_equal(strlen(claim->lease_token), 64);
    assert_int_equal(claim->operation->lease_id, 0);
    assert_int_equal(claim->operation->claim_lease_id, 0);

    assert_int_equal(
        do_complete("flow-1", TOKEN, claim->claim_lease_id, claim->lease_token, 0, &done, &err),
        FERRY_OK);
    assert_int_equal(done->operation->state, FERRY__V1__OPERATION_STATE__OPERATION_STATE_COMPLETE);
    ferry__v1__complete_response__free_unpacked(done, NULL);
    /* Complete again with the same outcome is idempotent. */
    assert_int_equal(
        do_complete("flow-1", TOKEN, claim->claim_lease_id, claim->lease_token, 0, &done, &err),
        FERRY_OK);
    ferry__v1__complete_response__free_unpacked(done, NULL);
    /* A different outcome after the fact is refused. */
    assert_int_equal(
        do_complete("flow-1", TOKEN, claim->claim_lease_id, claim->lease_token, 5, &done, &err),
        FERRY_ERR_FAILED_PRECONDITION);
    assert_int_equal(get_state("flow-1", &err),
                     FERRY__V1__OPERATION_STATE__OPERATION_STATE_COMPLETE);

    ferry__v1__claim_response__free_unpacked(claim, NULL);
    ferry__v1__lookup_response__free_unpacked(look, NULL);
    ferry__v1__register_response__free_unpacked(reg, NULL);
}

static bool log_has(void *arg);

/* A lookup of an operation the coordinator knows is served from its view:
 * no etcd read (the coordinator logs each read that misses the view). */
static void test_lookup_served_from_view(void **state)
{
    Ferry__V1__LookupResponse *look = NULL;
    rpc_error_t err;
    (void)state;

    ferry__v1__register_response__free_unpacked(
        do_register("view-1", TOKEN, KIND_WRITE, FERRY_OK, NULL), NULL);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(do_lookup("view-1", TOKEN, 0, &look, &err), FERRY_OK);
        ferry__v1__lookup_response__free_unpacked(look, NULL);
    }
    assert_false(test_coord_log_contains(&coord, "op view-1: not in the view"));
    /* An unknown ID does go to etcd before it says NOT_FOUND. */
    assert_int_equal(do_lookup("view-2", TOKEN, 0, &look, &err), FERRY_ERR_NOT_FOUND);
    assert_true(test_coord_log_contains(&coord, "op view-2: not in the view"));
}

static void test_complete_with_error(void **state)
{
    Ferry__V1__RegisterResponse *reg = do_register("err-1", TOKEN, KIND_READ, FERRY_OK, NULL);
    Ferry__V1__ClaimResponse *claim = NULL;
    Ferry__V1__CompleteResponse *done = NULL;
    rpc_error_t err;
    (void)state;

    assert_int_equal(do_claim("err-1", TOKEN, KIND_READ, &claim, &err), FERRY_OK);
    assert_int_equal(
        do_complete("err-1", TOKEN, claim->claim_lease_id, claim->lease_token, 42, &done, &err),
        FERRY_OK);
    assert_int_equal(done->operation->state, FERRY__V1__OPERATION_STATE__OPERATION_STATE_ERRORED);
    assert_int_equal(done->operation->error_code, 42);
    assert_string_equal(done->operation->error_message, "disk on fire");
    ferry__v1__complete_response__free_unpacked(done, NULL);
    ferry__v1__claim_response__free_unpacked(claim, NULL);
    ferry__v1__register_response__free_unpacked(reg, NULL);
}

/* Complete is for the claimant of a claimed operation only. */
static void test_complete_refusals(void **state)
{
    Ferry__V1__ClaimResponse *claim = NULL;
    Ferry__V1__CompleteResponse *done = NULL;
    rpc_error_t err;
    (void)state;

    Ferry__V1__RegisterResponse *reg = do_register("cmp-1", TOKEN, KIND_WRITE, FERRY_OK, NULL);

    /* Not claimed: REGISTERED -> COMPLETE is not a transition. */
    assert_int_equal(do_complete("cmp-1", TOKEN, reg->lease_id, reg->lease_token, 0, &done, &err),
                     FERRY_ERR_FAILED_PRECONDITION);
    assert_int_equal(err.grpc_code, 9);
    assert_non_null(strstr(err.message, "REGISTERED"));
    assert_int_equal(do_claim("cmp-1", TOKEN, KIND_WRITE, &claim, &err), FERRY_OK);
    /* A lease the caller holds, but not the claim's: not the claimant. */
    assert_int_equal(do_complete("cmp-1", TOKEN, reg->lease_id, reg->lease_token, 0, &done, &err),
                     FERRY_ERR_PERMISSION_DENIED);
    assert_non_null(strstr(err.message, "claim_lease_id"));
    /* The claim's lease without its token: not the claimant either. */
    assert_int_equal(do_complete("cmp-1", TOKEN, claim->claim_lease_id, "", 0, &done, &err),
                     FERRY_ERR_PERMISSION_DENIED);
    assert_non_null(strstr(err.message, "lease_token"));
    assert_int_equal(get_state("cmp-1", &err), FERRY__V1__OPERATION_STATE__OPERATION_STATE_CLAIMED);
    ferry__v1__claim_response__free_unpacked(claim, NULL);
    ferry__v1__register_response__free_unpacked(reg, NULL);
}

static void test_generated_token(void **state)
{
    Ferry__V1__RegisterResponse *reg = do_register("gen-token", "", KIND_WRITE, FERRY_OK, NULL);
    Ferry__V1__LookupResponse *look = NULL;
    rpc_error_t err;
    (void)state;

    assert_true(strlen(reg->access_token) >= 16);
    assert_int_equal(do_lookup("gen-token", reg->access_token, 0, &look, &err), FERRY_OK);
    ferry__v1__lookup_response__free_unpacked(look, NULL);
    ferry__v1__register_response__free_unpacked(reg, NULL);
}

/* --- errors --------------------------------------------------------------- */

static void test_duplicate_registration(void **state)
{
    rpc_error_t err;
    (void)state;

    ferry__v1__register_response__free_unpacked(
        do_register("dup-1", TOKEN, KIND_WRITE, FERRY_OK, NULL), NULL);
    assert_null(do_register("dup-1", TOKEN, KIND_WRITE, FERRY_ERR_ALREADY_EXISTS, &err));
    assert_int_equal(err.grpc_code, 6); /* ALREADY_EXISTS */
    assert_non_null(strstr(err.message, "dup-1"));
}

static void test_wrong_token(void **state)
{
    Ferry__V1__LookupResponse *look = NULL;
    Ferry__V1__ClaimResponse *claim = NULL;
    rpc_error_t err;
    (void)state;

    ferry__v1__register_response__free_unpacked(
        do_register("tok-1", TOKEN, KIND_WRITE, FERRY_OK, NULL), NULL);
    assert_int_equal(do_lookup("tok-1", "not-the-token-0123456", 0, &look, &err),
                     FERRY_ERR_PERMISSION_DENIED);
    assert_int_equal(err.grpc_code, 7);
    assert_null(strstr(err.message, TOKEN));
    assert_int_equal(do_claim("tok-1", "not-the-token-0123456", 0, &claim, &err),
                     FERRY_ERR_PERMISSION_DENIED);
    assert_int_equal(do_cancel("tok-1", "not-the-token-0123456", &err),
                     FERRY_ERR_PERMISSION_DENIED);
    /* Nothing changed. */
    assert_int_equal(get_state("tok-1", &err),
                     FERRY__V1__OPERATION_STATE__OPERATION_STATE_REGISTERED);
}

static void test_unknown_id(void **state)
{
    Ferry__V1__LookupResponse *look = NULL;
    rpc_error_t err;
    (void)state;

    assert_int_equal(do_lookup("nobody", TOKEN, 0, &look, &err), FERRY_ERR_NOT_FOUND);
    assert_int_equal(err.grpc_code, 5);
    assert_int_equal(get_state("nobody", &err), -1);
    assert_int_equal(err.grpc_code, 5);
    assert_int_equal(do_cancel("nobody", TOKEN, &err), FERRY_ERR_NOT_FOUND);
}

static void test_validation_names_the_field(void **state)
{
    Ferry__V1__RegisterRequest req = FERRY__V1__REGISTER_REQUEST__INIT;
    Ferry__V1__RegisterResponse *resp = NULL;
    Ferry__V1__LookupResponse *look = NULL;
    rpc_error_t err;
    (void)state;

    assert_null(do_register("has space", TOKEN, KIND_WRITE, FERRY_ERR_INVALID_ARGUMENT, &err));
    assert_int_equal(err.grpc_code, 3);
    assert_non_null(strstr(err.message, "request_id"));

    assert_null(do_register("short-token", "short", KIND_WRITE, FERRY_ERR_INVALID_ARGUMENT, &err));
    assert_non_null(strstr(err.message, "access_token"));

    req.request_id = "no-metadata";
    assert_int_equal(test_coord_call(chan, "Register", &req.base,
                                     &ferry__v1__register_response__descriptor,
                                     (ProtobufCMessage **)&resp, &err),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "metadata"));

    req.metadata = test_coord_metadata(KIND_WRITE);
    req.metadata->descriptors[0]->size = 0;
    assert_int_equal(test_coord_call(chan, "Register", &req.base,
                                     &ferry__v1__register_response__descriptor,
                                     (ProtobufCMessage **)&resp, &err),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "metadata.descriptors[0].size"));

    /* A range past the top of the address space: refused here, not once a
     * writer's claim on it was granted (it used to be stored). */
    req.request_id = "wraps";
    req.access_token = TOKEN;
    req.metadata = test_coord_metadata(KIND_WRITE);
    req.metadata->descriptors[0]->address = 0xFFFFFFFFFFFFF000ull;
    req.metadata->descriptors[0]->size = 0x2000;
    assert_int_equal(test_coord_call(chan, "Register", &req.base,
                                     &ferry__v1__register_response__descriptor,
                                     (ProtobufCMessage **)&resp, &err),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "metadata.descriptors[0].size 8192 at address "
                                        "0xfffffffffffff000 wraps around the address space"));
    assert_int_equal(get_state("wraps", &err), -1);
    req.request_id = "no-metadata";
    req.access_token = "";

    req.metadata = test_coord_metadata(KIND_WRITE);
    req.metadata->notification_key.len = 3;
    assert_int_equal(test_coord_call(chan, "Register", &req.base,
                                     &ferry__v1__register_response__descriptor,
                                     (ProtobufCMessage **)&resp, &err),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "notification_key"));

    assert_int_equal(do_lookup("x", "", 0, &look, &err), FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "access_token"));
    /* None of these registered anything. */
    assert_int_equal(get_state("no-metadata", &err), -1);
    assert_int_equal(err.grpc_code, 5);
}

static void test_claim_wrong_kind(void **state)
{
    Ferry__V1__ClaimResponse *claim = NULL;
    rpc_error_t err;
    (void)state;

    ferry__v1__register_response__free_unpacked(
        do_register("kind-1", TOKEN, KIND_READ, FERRY_OK, NULL), NULL);
    assert_int_equal(do_claim("kind-1", TOKEN, KIND_WRITE, &claim, &err), FERRY_ERR_KIND_MISMATCH);
    assert_int_equal(err.grpc_code, 3); /* INVALID_ARGUMENT, ferry-status KIND_MISMATCH */
    assert_non_null(strstr(err.message, "readable"));
}

/* Claim with the claimant's descriptor sizes: a writer whose buffers do not
 * pair (count or size) is refused SIZE_MISMATCH, naming the field and both
 * sizes, with nothing written (the record stays REGISTERED and the right
 * writer then gets it); too many sizes is INVALID_ARGUMENT. */
static void test_claim_checks_descriptor_sizes(void **state)
{
    Ferry__V1__ClaimRequest req = FERRY__V1__CLAIM_REQUEST__INIT;
    Ferry__V1__ClaimResponse *claim = NULL;
    uint64_t sizes[1025];
    rpc_error_t err;
    (void)state;

    ferry__v1__register_response__free_unpacked(
        do_register("sizes-1", TOKEN, KIND_WRITE, FERRY_OK, NULL), NULL);
    req.request_id = "sizes-1";
    req.access_token = TOKEN;
    req.kind = KIND_WRITE;
    req.descriptor_sizes = sizes;
    sizes[0] = 8192; /* the operation's one descriptor is 4096 bytes */
    req.n_descriptor_sizes = 1;
    assert_int_equal(test_coord_call(chan, "Claim", &req.base,
                                     &ferry__v1__claim_response__descriptor,
                                     (ProtobufCMessage **)&claim, &err),
                     FERRY_ERR_SIZE_MISMATCH);
    assert_int_equal(err.grpc_code, 3);
    assert_non_null(strstr(err.message, "descriptor_sizes"));
    assert_non_null(strstr(err.message, "8192"));
    assert_non_null(strstr(err.message, "4096"));
    sizes[0] = sizes[1] = 2048;
    req.n_descriptor_sizes = 2;
    assert_int_equal(test_coord_call(chan, "Claim", &req.base,
                                     &ferry__v1__claim_response__descriptor,
                                     (ProtobufCMessage **)&claim, &err),
                     FERRY_ERR_SIZE_MISMATCH);
    assert_non_null(strstr(err.message, "count"));
    for (size_t i = 0; i < 1025; i++) {
        sizes[i] = 4;
    }
    req.n_descriptor_sizes = 1025;
    assert_int_equal(test_coord_call(chan, "Claim", &req.base,
                                     &ferry__v1__claim_response__descriptor,
                                     (ProtobufCMessage **)&claim, &err),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "descriptor_sizes"));
    assert_int_equal(get_state("sizes-1", &err),
                     FERRY__V1__OPERATION_STATE__OPERATION_STATE_REGISTERED);
    sizes[0] = 4096;
    req.n_descriptor_sizes = 1;
    assert_int_equal(test_coord_call(chan, "Claim", &req.base,
                                     &ferry__v1__claim_response__descriptor,
                                     (ProtobufCMessage **)&claim, &err),
                     FERRY_OK);
    assert_int_equal(claim->operation->state, FERRY__V1__OPERATION_STATE__OPERATION_STATE_CLAIMED);
    assert_non_null(claim->operation->metadata);
    ferry__v1__claim_response__free_unpacked(claim, NULL);
}

/* --- waits ---------------------------------------------------------------- */

typedef struct {
    const char *id;
    int64_t wait_ms;
    ferry_status_t status;
    rpc_error_t err;
    Ferry__V1__LookupResponse *resp;
} lookup_job_t;

static void *lookup_thread(void *arg)
{
    lookup_job_t *job = arg;
    job->status = do_lookup(job->id, TOKEN, job->wait_ms, &job->resp, &job->err);
    return NULL;
}

typedef struct {
    const char *needle;
} log_wait_t;

static bool log_has(void *arg)
{
    return test_coord_log_contains(&coord, ((log_wait_t *)arg)->needle);
}

static void test_lookup_wait_satisfied(void **state)
{
    lookup_job_t job = {.id = "late-1", .wait_ms = 20000};
    log_wait_t parked = {.needle = "op late-1: lookup from"};
    pthread_t t;
    (void)state;

    assert_int_equal(pthread_create(&t, NULL, lookup_thread, &job), 0);
    /* Register only once the lookup is parked on the coordinator. */
    assert_true(test_wait_for(log_has, &parked, 10000));
    ferry__v1__register_response__free_unpacked(
        do_register("late-1", TOKEN, KIND_WRITE, FERRY_OK, NULL), NULL);
    pthread_join(t, NULL);
    assert_int_equal(job.status, FERRY_OK);
    assert_string_equal(job.resp->operation->request_id, "late-1");
    assert_non_null(job.resp->operation->metadata);
    ferry__v1__lookup_response__free_unpacked(job.resp, NULL);
}

static void test_lookup_wait_times_out(void **state)
{
    lookup_job_t job = {.id = "never-1", .wait_ms = 300};
    (void)state;

    lookup_thread(&job);
    assert_int_equal(job.status, FERRY_ERR_TIMED_OUT);
    assert_int_equal(job.err.grpc_code, 4); /* DEADLINE_EXCEEDED */
    assert_non_null(strstr(job.err.message, "never-1"));
}

/* --- races and lifetimes ---------------------------------------------------- */

typedef struct {
    const char *id;
    ferry_status_t status;
    Ferry__V1__ClaimResponse *resp;
    rpc_error_t err;
} claim_job_t;

static void *claim_thread(void *arg)
{
    claim_job_t *job = arg;
    job->status = do_claim(job->id, TOKEN, KIND_WRITE, &job->resp, &job->err);
    return NULL;
}

static void test_claim_race_one_winner(void **state)
{
    enum { N = 4 };
    claim_job_t jobs[N];
    pthread_t threads[N];
    int winners = 0, refused = 0;
    (void)state;

    ferry__v1__register_response__free_unpacked(
        do_register("race-1", TOKEN, KIND_WRITE, FERRY_OK, NULL), NULL);
    for (int i = 0; i < N; i++) {
        jobs[i] = (claim_job_t){.id = "race-1"};
        assert_int_equal(pthread_create(&threads[i], NULL, claim_thread, &jobs[i]), 0);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(threads[i], NULL);
        if (jobs[i].status == FERRY_OK) {
            winners++;
            ferry__v1__claim_response__free_unpacked(jobs[i].resp, NULL);
        } else {
            assert_int_equal(jobs[i].status, FERRY_ERR_FAILED_PRECONDITION);
            assert_int_equal(jobs[i].err.grpc_code, 9);
            refused++;
        }
    }
    assert_int_equal(winners, 1);
    assert_int_equal(refused, N - 1);
}

/* Reads watch messages until one carries an event in `state`: how many of
 * its events are, or 0 if none came within timeout_ms. */
static size_t watch_until(rpc_stream_t *stream, int state, int type, int timeout_ms)
{
    long long deadline = test_now_ms() + timeout_ms;

    while (test_now_ms() < deadline) {
        Ferry__V1__WatchResponse *msg = NULL;
        rpc_error_t err;
        ferry_status_t status =
            rpc_stream_read(stream, deadline - test_now_ms(), (ProtobufCMessage **)&msg, &err);
        size_t hits = 0;
        if (status == FERRY_ERR_TIMED_OUT && err.grpc_code == 0) {
            continue;
        }
        if (status != FERRY_OK || msg == NULL) {
            return 0;
        }
        for (size_t i = 0; i < msg->n_events; i++) {
            assert_null(msg->events[i]->operation->metadata);
            assert_int_equal(msg->events[i]->operation->lease_id, 0);
            assert_int_equal(msg->events[i]->operation->claim_lease_id, 0);
            if ((int)msg->events[i]->operation->state == state &&
                (int)msg->events[i]->type == type) {
                hits++;
            }
        }
        ferry__v1__watch_response__free_unpacked(msg, NULL);
        if (hits > 0) {
            return hits;
        }
    }
    return 0;
}

static rpc_stream_t *open_watch(const char *id, const char *prefix)
{
    Ferry__V1__WatchRequest req = FERRY__V1__WATCH_REQUEST__INIT;
    Ferry__V1__WatchResponse *msg = NULL;
    rpc_stream_t *stream = NULL;
    rpc_error_t err;

    req.request_id = (char *)(id ? id : "");
    req.request_id_prefix = (char *)(prefix ? prefix : "");
    assert_int_equal(rpc_stream_open(chan, "/ferry.v1.Coordinator/Watch", &req.base,
                                     &ferry__v1__watch_response__descriptor, 60000, &stream),
                     FERRY_OK);
    assert_int_equal(rpc_stream_read(stream, 10000, (ProtobufCMessage **)&msg, &err), FERRY_OK);
    assert_non_null(msg);
    assert_true(msg->created);
    ferry__v1__watch_response__free_unpacked(msg, NULL);
    return stream;
}

static void test_owner_lease_expiry_seen_as_expired(void **state)
{
    rpc_stream_t *stream = open_watch("lease-1", NULL);
    rpc_error_t err;
    (void)state;

    /* Nobody keeps the lease alive: within TTL (+ etcd's lease granularity)
     * the record leaves etcd and the watcher learns EXPIRED. */
    ferry__v1__register_response__free_unpacked(
        do_register("lease-1", TOKEN, KIND_WRITE, FERRY_OK, NULL), NULL);
    assert_true(watch_until(stream, FERRY__V1__OPERATION_STATE__OPERATION_STATE_EXPIRED,
                            FERRY__V1__WATCH_EVENT_TYPE__WATCH_EVENT_TYPE_DELETE,
                            (TTL + 5) * 1000));
    assert_int_equal(get_state("lease-1", &err), -1);
    assert_int_equal(err.grpc_code, 5);
    rpc_stream_destroy(stream);
}

static void test_keepalive_keeps_it(void **state)
{
    rpc_stream_t *stream = open_watch("alive-1", NULL);
    Ferry__V1__RegisterResponse *reg = do_register("alive-1", TOKEN, KIND_WRITE, FERRY_OK, NULL);
    Ferry__V1__KeepAliveRequest req = FERRY__V1__KEEP_ALIVE_REQUEST__INIT;
    Ferry__V1__KeepAliveResponse *resp = NULL;
    rpc_error_t err;
    long long until = test_now_ms() + (TTL + 2) * 1000;
    (void)state;

    /* Renew every half second for longer than the TTL; between renewals,
     * watch for an expiry that must not come. */
    req.lease_id = reg->lease_id;
    req.lease_token = reg->lease_token;
    while (test_now_ms() < until) {
        assert_int_equal(test_coord_call(chan, "KeepAlive", &req.base,
                                         &ferry__v1__keep_alive_response__descriptor,
                                         (ProtobufCMessage **)&resp, &err),
                         FERRY_OK);
        assert_true(resp->ttl_seconds > 0);
        ferry__v1__keep_alive_response__free_unpacked(resp, NULL);
        assert_false(watch_until(stream, FERRY__V1__OPERATION_STATE__OPERATION_STATE_EXPIRED,
                                 FERRY__V1__WATCH_EVENT_TYPE__WATCH_EVENT_TYPE_DELETE, 500));
    }
    assert_int_equal(get_state("alive-1", &err),
                     FERRY__V1__OPERATION_STATE__OPERATION_STATE_REGISTERED);
    /* A lease etcd does not know, with a token for some other lease: the
     * token is checked first. */
    req.lease_id = 12345;
    assert_int_equal(test_coord_call(chan, "KeepAlive", &req.base,
                                     &ferry__v1__keep_alive_response__descriptor,
                                     (ProtobufCMessage **)&resp, &err),
                     FERRY_ERR_PERMISSION_DENIED);
    assert_int_equal(err.grpc_code, 7);
    rpc_stream_destroy(stream);
    ferry__v1__register_response__free_unpacked(reg, NULL);
}

/* KeepAlive on a lease: its status. */
static ferry_status_t keep_alive(int64_t lease_id, const char *lease_token, rpc_error_t *err)
{
    Ferry__V1__KeepAliveRequest req = FERRY__V1__KEEP_ALIVE_REQUEST__INIT;
    Ferry__V1__KeepAliveResponse *resp = NULL;
    ferry_status_t status;

    req.lease_id = lease_id;
    req.lease_token = (char *)lease_token;
    status =
        test_coord_call(chan, "KeepAlive", &req.base, &ferry__v1__keep_alive_response__descriptor,
                        (ProtobufCMessage **)&resp, err);
    if (resp != NULL) {
        ferry__v1__keep_alive_response__free_unpacked(resp, NULL);
    }
    return status;
}

static ferry_status_t revoke_lease(int64_t lease_id, const char *lease_token, rpc_error_t *err)
{
    Ferry__V1__RevokeRequest req = FERRY__V1__REVOKE_REQUEST__INIT;
    Ferry__V1__RevokeResponse *resp = NULL;
    ferry_status_t status;

    req.lease_id = lease_id;
    req.lease_token = (char *)lease_token;
    status = test_coord_call(chan, "Revoke", &req.base, &ferry__v1__revoke_response__descriptor,
                             (ProtobufCMessage **)&resp, err);
    if (resp != NULL) {
        ferry__v1__revoke_response__free_unpacked(resp, NULL);
    }
    return status;
}

/* Revoke ends a lease at once, for its grantee only: the record on it goes
 * as at its expiry (watchers see EXPIRED), and the lease is gone from etcd
 * (a KeepAlive just before had renewed it for a TTL). */
static void test_revoke_ends_the_lease_for_its_grantee_only(void **state)
{
    rpc_stream_t *stream = open_watch("revoke-1", NULL);
    Ferry__V1__RegisterResponse *reg = do_register("revoke-1", TOKEN, KIND_WRITE, FERRY_OK, NULL);
    Ferry__V1__RegisterResponse *other = do_register("revoke-2", TOKEN, KIND_WRITE, FERRY_OK, NULL);
    rpc_error_t err;
    (void)state;

    /* Another lease's token, none, no lease: refused, nothing revoked. */
    assert_int_equal(revoke_lease(reg->lease_id, other->lease_token, &err),
                     FERRY_ERR_PERMISSION_DENIED);
    assert_int_equal(err.grpc_code, 7);
    assert_non_null(strstr(err.message, "lease_token"));
    assert_int_equal(revoke_lease(reg->lease_id, "", &err), FERRY_ERR_PERMISSION_DENIED);
    assert_int_equal(revoke_lease(0, reg->lease_token, &err), FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "lease_id"));
    assert_int_equal(keep_alive(reg->lease_id, reg->lease_token, &err), FERRY_OK);
    assert_int_equal(get_state("revoke-1", &err),
                     FERRY__V1__OPERATION_STATE__OPERATION_STATE_REGISTERED);

    assert_int_equal(revoke_lease(reg->lease_id, reg->lease_token, &err), FERRY_OK);
    assert_int_equal(keep_alive(reg->lease_id, reg->lease_token, &err), FERRY_ERR_LEASE_NOT_FOUND);
    assert_int_equal(err.grpc_code, 5);
    assert_true(watch_until(stream, FERRY__V1__OPERATION_STATE__OPERATION_STATE_EXPIRED,
                            FERRY__V1__WATCH_EVENT_TYPE__WATCH_EVENT_TYPE_DELETE, 10000));
    assert_int_equal(get_state("revoke-1", &err), -1);
    assert_int_equal(err.grpc_code, 5);
    /* Gone: a second Revoke is NOT_FOUND. The other lease lives on. */
    assert_int_equal(revoke_lease(reg->lease_id, reg->lease_token, &err),
                     FERRY_ERR_LEASE_NOT_FOUND);
    assert_int_equal(err.grpc_code, 5);
    assert_int_equal(keep_alive(other->lease_id, other->lease_token, &err), FERRY_OK);
    rpc_stream_destroy(stream);

    /* A claim's lease revoked by its claimant: the claimed operation turns
     * ERRORED, as when the claim expires; its owner's record stays. */
    Ferry__V1__ClaimResponse *claim = NULL;
    stream = open_watch("revoke-2", NULL);
    assert_int_equal(do_claim("revoke-2", TOKEN, KIND_WRITE, &claim, &err), FERRY_OK);
    assert_int_equal(keep_alive(claim->claim_lease_id, claim->lease_token, &err), FERRY_OK);
    assert_int_equal(revoke_lease(claim->claim_lease_id, claim->lease_token, &err), FERRY_OK);
    assert_int_equal(keep_alive(claim->claim_lease_id, claim->lease_token, &err),
                     FERRY_ERR_LEASE_NOT_FOUND);
    assert_true(watch_until(stream, FERRY__V1__OPERATION_STATE__OPERATION_STATE_ERRORED,
                            FERRY__V1__WATCH_EVENT_TYPE__WATCH_EVENT_TYPE_PUT, 10000));
    assert_int_equal(get_state("revoke-2", &err),
                     FERRY__V1__OPERATION_STATE__OPERATION_STATE_ERRORED);
    rpc_stream_destroy(stream);
    ferry__v1__claim_response__free_unpacked(claim, NULL);
    ferry__v1__register_response__free_unpacked(reg, NULL);
    ferry__v1__register_response__free_unpacked(other, NULL);
}

static void test_claim_expiry_errors_the_operation(void **state)
{
    Ferry__V1__RegisterResponse *reg = do_register("claimx-1", TOKEN, KIND_WRITE, FERRY_OK, NULL);
    rpc_stream_t *stream = open_watch("claimx-1", NULL);
    Ferry__V1__ClaimResponse *claim = NULL;
    Ferry__V1__KeepAliveRequest req = FERRY__V1__KEEP_ALIVE_REQUEST__INIT;
    Ferry__V1__KeepAliveResponse *ka = NULL;
    rpc_error_t err;
    (void)state;

    assert_int_equal(do_claim("claimx-1", TOKEN, KIND_WRITE, &claim, &err), FERRY_OK);
    /* The owner stays alive; the claimant goes silent. */
    req.lease_id = reg->lease_id;
    req.lease_token = reg->lease_token;
    long long until = test_now_ms() + (TTL + 6) * 1000;
    bool errored = false;
    while (!errored && test_now_ms() < until) {
        assert_int_equal(test_coord_call(chan, "KeepAlive", &req.base,
                                         &ferry__v1__keep_alive_response__descriptor,
                                         (ProtobufCMessage **)&ka, &err),
                         FERRY_OK);
        ferry__v1__keep_alive_response__free_unpacked(ka, NULL);
        errored = watch_until(stream, FERRY__V1__OPERATION_STATE__OPERATION_STATE_ERRORED,
                              FERRY__V1__WATCH_EVENT_TYPE__WATCH_EVENT_TYPE_PUT, 500);
    }
    assert_true(errored);
    assert_int_equal(get_state("claimx-1", &err),
                     FERRY__V1__OPERATION_STATE__OPERATION_STATE_ERRORED);
    /* The reason is for anyone who can Get; the claim's lease ID is its
     * grantee's alone (it was in the text). */
    Ferry__V1__GetRequest get = FERRY__V1__GET_REQUEST__INIT;
    Ferry__V1__GetResponse *got = NULL;
    char lease_text[32];
    get.request_id = "claimx-1";
    assert_int_equal(test_coord_call(chan, "Get", &get.base, &ferry__v1__get_response__descriptor,
                                     (ProtobufCMessage **)&got, &err),
                     FERRY_OK);
    snprintf(lease_text, sizeof(lease_text), "%lld", (long long)claim->claim_lease_id);
    assert_non_null(strstr(got->operation->error_message, "claim expired"));
    assert_null(strstr(got->operation->error_message, lease_text));
    ferry__v1__get_response__free_unpacked(got, NULL);
    rpc_stream_destroy(stream);
    ferry__v1__claim_response__free_unpacked(claim, NULL);
    ferry__v1__register_response__free_unpacked(reg, NULL);
}

static void test_cancel_seen_by_the_other_side(void **state)
{
    rpc_stream_t *stream;
    Ferry__V1__ClaimResponse *claim = NULL;
    rpc_error_t err;
    (void)state;

    ferry__v1__register_response__free_unpacked(
        do_register("cancel-1", TOKEN, KIND_WRITE, FERRY_OK, NULL), NULL);
    stream = open_watch(NULL, "cancel-");
    assert_int_equal(do_cancel("cancel-1", TOKEN, &err), FERRY_OK);
    assert_true(watch_until(stream, FERRY__V1__OPERATION_STATE__OPERATION_STATE_CANCELLED,
                            FERRY__V1__WATCH_EVENT_TYPE__WATCH_EVENT_TYPE_PUT, 5000));
    /* A writer arriving now is refused, and says why. */
    assert_int_equal(do_claim("cancel-1", TOKEN, KIND_WRITE, &claim, &err),
                     FERRY_ERR_FAILED_PRECONDITION);
    assert_non_null(strstr(err.message, "CANCELLED"));
    /* Cancel twice is fine. */
    assert_int_equal(do_cancel("cancel-1", TOKEN, &err), FERRY_OK);
    rpc_stream_destroy(stream);
}

static void test_list_filters_and_pages(void **state)
{
    Ferry__V1__ListRequest req = FERRY__V1__LIST_REQUEST__INIT;
    Ferry__V1__ListResponse *resp = NULL;
    Ferry__V1__ClaimResponse *claim = NULL;
    rpc_error_t err;
    char id[32];
    int seen = 0;
    (void)state;

    for (int i = 0; i < 5; i++) {
        snprintf(id, sizeof(id), "list-%d", i);
        ferry__v1__register_response__free_unpacked(
            do_register(id, TOKEN, KIND_WRITE, FERRY_OK, NULL), NULL);
    }
    assert_int_equal(do_claim("list-3", TOKEN, KIND_WRITE, &claim, &err), FERRY_OK);
    ferry__v1__claim_response__free_unpacked(claim, NULL);

    req.request_id_prefix = "list-";
    req.page_size = 2;
    do {
        assert_int_equal(test_coord_call(chan, "List", &req.base,
                                         &ferry__v1__list_response__descriptor,
                                         (ProtobufCMessage **)&resp, &err),
                         FERRY_OK);
        assert_true(resp->n_operations <= 2);
        for (size_t i = 0; i < resp->n_operations; i++) {
            snprintf(id, sizeof(id), "list-%d", seen++);
            assert_string_equal(resp->operations[i]->request_id, id);
            assert_null(resp->operations[i]->metadata);
            assert_int_equal(resp->operations[i]->lease_id, 0);
            assert_int_equal(resp->operations[i]->claim_lease_id, 0);
        }
        static char token[64];
        snprintf(token, sizeof(token), "%s", resp->next_page_token);
        req.page_token = token;
        ferry__v1__list_response__free_unpacked(resp, NULL);
    } while (req.page_token[0] != '\0');
    assert_int_equal(seen, 5);

    req.page_token = "";
    req.page_size = 0;
    req.state = FERRY__V1__OPERATION_STATE__OPERATION_STATE_CLAIMED;
    assert_int_equal(test_coord_call(chan, "List", &req.base, &ferry__v1__list_response__descriptor,
                                     (ProtobufCMessage **)&resp, &err),
                     FERRY_OK);
    assert_int_equal(resp->n_operations, 1);
    assert_string_equal(resp->operations[0]->request_id, "list-3");
    assert_string_equal(resp->next_page_token, "");
    ferry__v1__list_response__free_unpacked(resp, NULL);
}

static ferry_status_t do_release(const char *id, const char *token, rpc_error_t *err)
{
    Ferry__V1__ReleaseRequest req = FERRY__V1__RELEASE_REQUEST__INIT;
    Ferry__V1__ReleaseResponse *resp = NULL;
    ferry_status_t status;

    req.request_id = (char *)id;
    req.access_token = (char *)token;
    status = test_coord_call(chan, "Release", &req.base, &ferry__v1__release_response__descriptor,
                             (ProtobufCMessage **)&resp, err);
    if (resp != NULL) {
        ferry__v1__release_response__free_unpacked(resp, NULL);
    }
    return status;
}

/* Several records on one lease the caller holds (etcd's session idiom): no
 * lease of their own, and they all go when it does. */
static void test_shared_lease(void **state)
{
    Ferry__V1__RegisterResponse *first = do_register("share-1", TOKEN, KIND_WRITE, FERRY_OK, NULL);
    Ferry__V1__RegisterRequest req = FERRY__V1__REGISTER_REQUEST__INIT;
    Ferry__V1__RegisterResponse *second = NULL;
    Ferry__V1__ClaimRequest creq = FERRY__V1__CLAIM_REQUEST__INIT;
    Ferry__V1__ClaimResponse *claim = NULL;
    rpc_stream_t *stream = open_watch(NULL, "share-");
    rpc_error_t err;
    size_t expired;
    (void)state;

    req.request_id = "share-2";
    req.access_token = TOKEN;
    req.metadata = test_coord_metadata(KIND_WRITE);
    req.lease_id = first->lease_id;
    req.lease_token = first->lease_token;
    assert_int_equal(test_coord_call(chan, "Register", &req.base,
                                     &ferry__v1__register_response__descriptor,
                                     (ProtobufCMessage **)&second, &err),
                     FERRY_OK);
    assert_int_equal(second->lease_id, first->lease_id);
    assert_int_equal(second->ttl_seconds, 0);
    assert_string_equal(second->lease_token, first->lease_token);
    ferry__v1__register_response__free_unpacked(second, NULL);
    second = NULL;

    /* A claim may go on a lease the claimant holds, too. */
    creq.request_id = "share-2";
    creq.access_token = TOKEN;
    creq.lease_id = first->lease_id;
    creq.lease_token = first->lease_token;
    assert_int_equal(test_coord_call(chan, "Claim", &creq.base,
                                     &ferry__v1__claim_response__descriptor,
                                     (ProtobufCMessage **)&claim, &err),
                     FERRY_OK);
    assert_int_equal(claim->claim_lease_id, first->lease_id);
    assert_string_equal(claim->lease_token, first->lease_token);

    /* Nobody renews the lease: both records expire, each reported once,
     * in one message (etcd deletes a lease's keys at one revision). */
    expired = watch_until(stream, FERRY__V1__OPERATION_STATE__OPERATION_STATE_EXPIRED,
                          FERRY__V1__WATCH_EVENT_TYPE__WATCH_EVENT_TYPE_DELETE, (TTL + 5) * 1000);
    assert_int_equal(expired, 2);
    assert_int_equal(get_state("share-1", &err), -1);
    assert_int_equal(get_state("share-2", &err), -1);

    /* A lease that is gone is NOT_FOUND on the wire, LEASE_NOT_FOUND as a
     * code (the ferry-status trailing metadata), and names the lease. */
    req.request_id = "share-3";
    assert_int_equal(test_coord_call(chan, "Register", &req.base,
                                     &ferry__v1__register_response__descriptor,
                                     (ProtobufCMessage **)&second, &err),
                     FERRY_ERR_LEASE_NOT_FOUND);
    assert_int_equal(err.grpc_code, 5);
    assert_non_null(strstr(err.message, "lease_id"));
    assert_int_equal(get_state("share-3", &err), -1);

    rpc_stream_destroy(stream);
    ferry__v1__claim_response__free_unpacked(claim, NULL);
    ferry__v1__register_response__free_unpacked(first, NULL);
}

static void test_release(void **state)
{
    Ferry__V1__ClaimResponse *claim = NULL;
    Ferry__V1__CompleteResponse *done = NULL;
    rpc_stream_t *stream;
    rpc_error_t err;
    (void)state;

    ferry__v1__register_response__free_unpacked(
        do_register("rel-1", TOKEN, KIND_WRITE, FERRY_OK, NULL), NULL);
    stream = open_watch("rel-1", NULL);
    assert_int_equal(do_release("rel-1", TOKEN, &err), FERRY_ERR_FAILED_PRECONDITION);
    assert_non_null(strstr(err.message, "REGISTERED"));
    assert_int_equal(do_claim("rel-1", TOKEN, KIND_WRITE, &claim, &err), FERRY_OK);
    assert_int_equal(
        do_complete("rel-1", TOKEN, claim->claim_lease_id, claim->lease_token, 0, &done, &err),
        FERRY_OK);
    assert_int_equal(do_release("rel-1", "not-the-token-0123456", &err),
                     FERRY_ERR_PERMISSION_DENIED);
    assert_int_equal(do_release("rel-1", TOKEN, &err), FERRY_OK);
    assert_int_equal(get_state("rel-1", &err), -1);
    assert_int_equal(err.grpc_code, 5);
    /* Watchers see it leave in its final state, not as an expiry. */
    assert_true(watch_until(stream, FERRY__V1__OPERATION_STATE__OPERATION_STATE_COMPLETE,
                            FERRY__V1__WATCH_EVENT_TYPE__WATCH_EVENT_TYPE_DELETE, 5000));
    assert_int_equal(do_release("rel-1", TOKEN, &err), FERRY_ERR_NOT_FOUND);
    rpc_stream_destroy(stream);
    ferry__v1__complete_response__free_unpacked(done, NULL);
    ferry__v1__claim_response__free_unpacked(claim, NULL);
}

/* A Claim of `id` on the lease the caller holds (lease_id, lease_token). */
static ferry_status_t do_claim_on(const char *id, int64_t lease_id, const char *lease_token,
                                  Ferry__V1__ClaimResponse **resp_p, rpc_error_t *err)
{
    Ferry__V1__ClaimRequest req = FERRY__V1__CLAIM_REQUEST__INIT;
    req.request_id = (char *)id;
    req.access_token = TOKEN;
    req.claimant = "writer";
    req.kind = KIND_WRITE;
    req.lease_id = lease_id;
    req.lease_token = (char *)lease_token;
    return test_coord_call(chan, "Claim", &req.base, &ferry__v1__claim_response__descriptor,
                           (ProtobufCMessage **)resp_p, err);
}

/* Complete of the claim `claim_id` on `claim`'s lease (do_complete's, with
 * the claim's identity). */
static ferry_status_t do_complete_claim(const char *id, const Ferry__V1__ClaimResponse *claim,
                                        uint64_t claim_id, rpc_error_t *err)
{
    Ferry__V1__CompleteRequest req = FERRY__V1__COMPLETE_REQUEST__INIT;
    Ferry__V1__CompleteResponse *resp = NULL;
    ferry_status_t status;

    req.request_id = (char *)id;
    req.access_token = TOKEN;
    req.claim_lease_id = claim->claim_lease_id;
    req.lease_token = claim->lease_token;
    req.claim_id = claim_id;
    status = test_coord_call(chan, "Complete", &req.base, &ferry__v1__complete_response__descriptor,
                             (ProtobufCMessage **)&resp, err);
    if (resp != NULL) {
        assert_int_equal(resp->operation->claim_id, 0); /* only ClaimResponse shows it */
        ferry__v1__complete_response__free_unpacked(resp, NULL);
    }
    return status;
}

/* The caller may choose the claim's identity (ClaimRequest.claim_id), so
 * that it knows it when the answer is lost: the claim takes it, and a
 * Complete naming another identity is refused, the claim untouched. */
static void test_claim_id_chosen_by_the_caller(void **state)
{
    Ferry__V1__ClaimRequest req = FERRY__V1__CLAIM_REQUEST__INIT;
    Ferry__V1__ClaimResponse *claim = NULL;
    const uint64_t chosen = 0x8badf00d12345678ull;
    rpc_error_t err;
    (void)state;

    ferry__v1__register_response__free_unpacked(
        do_register("chosen-1", TOKEN, KIND_WRITE, FERRY_OK, NULL), NULL);
    req.request_id = "chosen-1";
    req.access_token = TOKEN;
    req.kind = KIND_WRITE;
    req.claim_id = chosen;
    assert_int_equal(test_coord_call(chan, "Claim", &req.base,
                                     &ferry__v1__claim_response__descriptor,
                                     (ProtobufCMessage **)&claim, &err),
                     FERRY_OK);
    assert_true(claim->claim_id == chosen);
    assert_int_equal(do_complete_claim("chosen-1", claim, chosen ^ 1, &err),
                     FERRY_ERR_FAILED_PRECONDITION);
    assert_int_equal(get_state("chosen-1", &err),
                     FERRY__V1__OPERATION_STATE__OPERATION_STATE_CLAIMED);
    assert_int_equal(do_complete_claim("chosen-1", claim, chosen, &err), FERRY_OK);
    assert_int_equal(get_state("chosen-1", &err),
                     FERRY__V1__OPERATION_STATE__OPERATION_STATE_COMPLETE);
    assert_int_equal(do_release("chosen-1", TOKEN, &err), FERRY_OK);
    ferry__v1__claim_response__free_unpacked(claim, NULL);
}

/* A Complete sent again (a retry after a lost answer) once its claim has
 * ended, the record been released and registered again, and the ID claimed
 * anew on the same lease (libferry puts every claim of a process on its one
 * session lease): the lease alone matched, and the stale Complete ended the
 * new claim COMPLETE before a byte moved. Now the claim's identity must
 * match: FAILED_PRECONDITION, the new claim stays CLAIMED and completes
 * with its own. Without claim_id (older clients) it is not checked. */
static void test_stale_complete_does_not_end_a_later_claim(void **state)
{
    Ferry__V1__ClaimResponse *first = NULL, *second = NULL;
    rpc_error_t err;
    (void)state;

    ferry__v1__register_response__free_unpacked(
        do_register("again-1", TOKEN, KIND_WRITE, FERRY_OK, NULL), NULL);
    assert_int_equal(do_claim("again-1", TOKEN, KIND_WRITE, &first, &err), FERRY_OK);
    assert_true(first->claim_id != 0);
    assert_int_equal(first->operation->claim_id, 0);
    assert_int_equal(do_complete_claim("again-1", first, first->claim_id, &err), FERRY_OK);
    assert_int_equal(do_release("again-1", TOKEN, &err), FERRY_OK);

    ferry__v1__register_response__free_unpacked(
        do_register("again-1", TOKEN, KIND_WRITE, FERRY_OK, NULL), NULL);
    assert_int_equal(
        do_claim_on("again-1", first->claim_lease_id, first->lease_token, &second, &err), FERRY_OK);
    assert_int_equal(second->claim_lease_id, first->claim_lease_id);
    assert_true(second->claim_id != 0 && second->claim_id != first->claim_id);

    /* The first claim's Complete, again: refused, the new claim untouched. */
    assert_int_equal(do_complete_claim("again-1", first, first->claim_id, &err),
                     FERRY_ERR_FAILED_PRECONDITION);
    assert_non_null(strstr(err.message, "claim_id"));
    assert_int_equal(get_state("again-1", &err),
                     FERRY__V1__OPERATION_STATE__OPERATION_STATE_CLAIMED);
    /* A wrong claim_id on the live claim: refused the same way, and the
     * message does not say the claim ended (it did not; it used to). */
    assert_int_equal(do_complete_claim("again-1", second, second->claim_id + 1, &err),
                     FERRY_ERR_FAILED_PRECONDITION);
    assert_non_null(strstr(err.message, "claim_id is wrong"));
    assert_null(strstr(err.message, "ended"));
    assert_int_equal(get_state("again-1", &err),
                     FERRY__V1__OPERATION_STATE__OPERATION_STATE_CLAIMED);
    assert_int_equal(do_complete_claim("again-1", second, second->claim_id, &err), FERRY_OK);
    assert_int_equal(get_state("again-1", &err),
                     FERRY__V1__OPERATION_STATE__OPERATION_STATE_COMPLETE);
    /* Its own, again: idempotent. */
    assert_int_equal(do_complete_claim("again-1", second, second->claim_id, &err), FERRY_OK);
    assert_int_equal(do_release("again-1", TOKEN, &err), FERRY_OK);

    /* claim_id 0: the lease alone is checked, as before. */
    ferry__v1__register_response__free_unpacked(
        do_register("again-1", TOKEN, KIND_WRITE, FERRY_OK, NULL), NULL);
    ferry__v1__claim_response__free_unpacked(second, NULL);
    assert_int_equal(
        do_claim_on("again-1", first->claim_lease_id, first->lease_token, &second, &err), FERRY_OK);
    assert_int_equal(do_complete_claim("again-1", second, 0, &err), FERRY_OK);
    ferry__v1__claim_response__free_unpacked(second, NULL);
    ferry__v1__claim_response__free_unpacked(first, NULL);
}

static void test_watch_needs_exactly_one_target(void **state)
{
    Ferry__V1__WatchRequest req = FERRY__V1__WATCH_REQUEST__INIT;
    Ferry__V1__WatchResponse *msg = NULL;
    rpc_stream_t *stream = NULL;
    rpc_error_t err;
    (void)state;

    assert_int_equal(rpc_stream_open(chan, "/ferry.v1.Coordinator/Watch", &req.base,
                                     &ferry__v1__watch_response__descriptor, 10000, &stream),
                     FERRY_OK);
    assert_int_equal(rpc_stream_read(stream, 10000, (ProtobufCMessage **)&msg, &err),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "request_id"));
    rpc_stream_destroy(stream);
}

/* --- what every field must be (issue 8, items 4 to 9) ---------------------- */

/* Packs `msg`, replaces the bytes of `marker` (which must occur) with the
 * same number of bytes from `bytes`, and calls `method` with the result:
 * protobuf-c cannot itself pack a string with a NUL or bad UTF-8 in it. */
static ferry_status_t call_patched(const char *method, const ProtobufCMessage *msg,
                                   const char *marker, const char *bytes, rpc_error_t *err)
{
    size_t len = protobuf_c_message_get_packed_size(msg);
    uint8_t *buf = malloc(len);
    void *resp = NULL;
    size_t resp_len = 0;
    char path[96];
    uint8_t *at;
    ferry_status_t status;

    assert_non_null(buf);
    protobuf_c_message_pack(msg, buf);
    at = memmem(buf, len, marker, strlen(marker));
    assert_non_null(at);
    memcpy(at, bytes, strlen(marker));
    snprintf(path, sizeof(path), "/ferry.v1.Coordinator/%s", method);
    status = rpc_unary_raw(chan, path, buf, len, 10000, &resp, &resp_len, err);
    free(resp);
    free(buf);
    return status;
}

static ferry_status_t register_patched(const char *id, const char *owner, const char *hostname,
                                       const char *marker, const char *bytes, rpc_error_t *err)
{
    Ferry__V1__RegisterRequest req = FERRY__V1__REGISTER_REQUEST__INIT;

    req.request_id = (char *)id;
    req.access_token = TOKEN;
    req.owner = (char *)owner;
    req.metadata = test_coord_metadata(KIND_WRITE);
    req.metadata->hostname = (char *)hostname;
    return call_patched("Register", &req.base, marker, bytes, err);
}

static ferry_status_t list_all(rpc_error_t *err)
{
    Ferry__V1__ListRequest req = FERRY__V1__LIST_REQUEST__INIT;
    Ferry__V1__ListResponse *resp = NULL;
    ferry_status_t status;

    req.page_size = 1000;
    status = test_coord_call(chan, "List", &req.base, &ferry__v1__list_response__descriptor,
                             (ProtobufCMessage **)&resp, err);
    if (resp != NULL) {
        ferry__v1__list_response__free_unpacked(resp, NULL);
    }
    return status;
}

/* A NUL cuts a C string short: "a\0/../claims/x" must not register "a". */
static void test_strings_with_nul_are_refused(void **state)
{
    Ferry__V1__RegisterRequest req = FERRY__V1__REGISTER_REQUEST__INIT;
    rpc_error_t err;
    (void)state;

    assert_int_equal(
        register_patched("a~/../claims/x", "o", "h", "a~/../claims/x", "a\0/../claims/x", &err),
        FERRY_ERR_INVALID_ARGUMENT);
    assert_int_equal(err.grpc_code, 3);
    assert_non_null(strstr(err.message, "request_id"));
    assert_non_null(strstr(err.message, "NUL"));
    assert_int_equal(get_state("a", &err), -1);
    assert_int_equal(err.grpc_code, 5);

    req.request_id = "nul-token";
    req.access_token = "token-~123456789abcdef";
    req.metadata = test_coord_metadata(KIND_WRITE);
    assert_int_equal(call_patched("Register", &req.base, "token-~123456789abcdef",
                                  "token-\0"
                                  "123456789abcdef",
                                  &err),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "access_token"));
    assert_int_equal(get_state("nul-token", &err), -1);
}

/* Invalid UTF-8 is refused in every string field, top level or nested, so no
 * record can break Get, List, Lookup or Watch for everyone else. */
static void test_strings_must_be_utf8(void **state)
{
    Ferry__V1__ClaimRequest claim = FERRY__V1__CLAIM_REQUEST__INIT;
    Ferry__V1__LookupResponse *look = NULL;
    Ferry__V1__GetRequest get = FERRY__V1__GET_REQUEST__INIT;
    Ferry__V1__GetResponse *got = NULL;
    rpc_error_t err;
    (void)state;

    assert_int_equal(register_patched("utf-1", "owner-~~", "h", "owner-~~", "owner-\xc3\x28", &err),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "owner is not valid UTF-8"));
    assert_int_equal(
        register_patched("utf-2", "o", "host-~~~", "host-~~~", "host-\xed\xa0\x80", &err),
        FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "metadata.hostname is not valid UTF-8"));
    assert_int_equal(get_state("utf-1", &err), -1);
    assert_int_equal(get_state("utf-2", &err), -1);

    /* The claimant, on an operation that exists: refused, nothing changes. */
    ferry__v1__register_response__free_unpacked(
        do_register("utf-3", TOKEN, KIND_WRITE, FERRY_OK, NULL), NULL);
    claim.request_id = "utf-3";
    claim.access_token = TOKEN;
    claim.claimant = "writer-~";
    assert_int_equal(call_patched("Claim", &claim.base, "writer-~", "writer-\xff", &err),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "claimant is not valid UTF-8"));
    assert_int_equal(get_state("utf-3", &err),
                     FERRY__V1__OPERATION_STATE__OPERATION_STATE_REGISTERED);

    /* Valid UTF-8 beyond ASCII is stored and read back as sent. */
    assert_int_equal(register_patched("utf-4", "Zo\xc3\xab \xe2\x9c\x93", "h", "h", "h", &err),
                     FERRY_OK);
    get.request_id = "utf-4";
    assert_int_equal(test_coord_call(chan, "Get", &get.base, &ferry__v1__get_response__descriptor,
                                     (ProtobufCMessage **)&got, &err),
                     FERRY_OK);
    assert_string_equal(got->operation->owner, "Zo\xc3\xab \xe2\x9c\x93");
    ferry__v1__get_response__free_unpacked(got, NULL);
    assert_int_equal(do_lookup("utf-4", TOKEN, 0, &look, &err), FERRY_OK);
    ferry__v1__lookup_response__free_unpacked(look, NULL);
    /* And List over everything still answers. */
    assert_int_equal(list_all(&err), FERRY_OK);
}

static void test_unknown_enum_values_are_refused(void **state)
{
    Ferry__V1__RegisterRequest req = FERRY__V1__REGISTER_REQUEST__INIT;
    Ferry__V1__RegisterResponse *resp = NULL;
    Ferry__V1__ListRequest list = FERRY__V1__LIST_REQUEST__INIT;
    Ferry__V1__ListResponse *page = NULL;
    Ferry__V1__ClaimResponse *claim = NULL;
    rpc_error_t err;
    (void)state;

    req.request_id = "enum-1";
    req.access_token = TOKEN;
    req.metadata = test_coord_metadata(KIND_WRITE);
    req.metadata->descriptors[0]->device->kind = (Ferry__V1__DeviceKind)9;
    assert_int_equal(test_coord_call(chan, "Register", &req.base,
                                     &ferry__v1__register_response__descriptor,
                                     (ProtobufCMessage **)&resp, &err),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "metadata.descriptors[0].device.kind"));
    assert_int_equal(get_state("enum-1", &err), -1);

    list.state = (Ferry__V1__OperationState)42;
    assert_int_equal(test_coord_call(chan, "List", &list.base,
                                     &ferry__v1__list_response__descriptor,
                                     (ProtobufCMessage **)&page, &err),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "state"));

    ferry__v1__register_response__free_unpacked(
        do_register("enum-2", TOKEN, KIND_WRITE, FERRY_OK, NULL), NULL);
    assert_int_equal(do_claim("enum-2", TOKEN, (Ferry__V1__OperationKind)7, &claim, &err),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "kind"));
    assert_int_equal(get_state("enum-2", &err),
                     FERRY__V1__OPERATION_STATE__OPERATION_STATE_REGISTERED);
}

/* A claim on a lease that is gone cannot succeed however long it waits:
 * NOT_FOUND at once, not DEADLINE_EXCEEDED after the wait. */
static void test_claim_with_unknown_lease_is_not_found_at_once(void **state)
{
    Ferry__V1__ClaimRequest req = FERRY__V1__CLAIM_REQUEST__INIT;
    Ferry__V1__ClaimResponse *resp = NULL;
    rpc_error_t err;
    (void)state;

    /* A lease that really existed, with its token, left to expire: nobody
     * keeps "nolease-owner" alive, so its record leaves with the lease. */
    Ferry__V1__RegisterResponse *gone =
        do_register("nolease-owner", TOKEN, KIND_WRITE, FERRY_OK, NULL);
    long long until = test_now_ms() + (TTL + 10) * 1000;
    while (get_state("nolease-owner", &err) != -1 && test_now_ms() < until) {
        usleep(100 * 1000); /* poll the condition, with the deadline above */
    }
    assert_int_equal(get_state("nolease-owner", &err), -1);
    assert_int_equal(err.grpc_code, 5); /* NOT_FOUND */

    ferry__v1__register_response__free_unpacked(
        do_register("nolease-1", TOKEN, KIND_WRITE, FERRY_OK, NULL), NULL);
    req.request_id = "nolease-1";
    req.access_token = TOKEN;
    req.lease_id = gone->lease_id;
    req.lease_token = gone->lease_token;
    req.wait_ms = 60000; /* beyond the call's 10 s deadline */
    assert_int_equal(test_coord_call(chan, "Claim", &req.base,
                                     &ferry__v1__claim_response__descriptor,
                                     (ProtobufCMessage **)&resp, &err),
                     FERRY_ERR_LEASE_NOT_FOUND);
    assert_int_equal(err.grpc_code, 5);
    assert_non_null(strstr(err.message, "lease_id"));
    assert_int_equal(get_state("nolease-1", &err),
                     FERRY__V1__OPERATION_STATE__OPERATION_STATE_REGISTERED);
    ferry__v1__register_response__free_unpacked(gone, NULL);
}

/* A Claim with a lease token that is not the lease's, for a request ID not
 * registered yet: refused at once, not parked for wait_ms (the token was
 * checked only after the record was found). */
static void test_claim_with_a_forged_lease_token_does_not_wait(void **state)
{
    Ferry__V1__ClaimRequest req = FERRY__V1__CLAIM_REQUEST__INIT;
    Ferry__V1__ClaimResponse *resp = NULL;
    char forged[65];
    rpc_error_t err;
    (void)state;

    memset(forged, '0', 64);
    forged[64] = '\0';
    req.request_id = "forged-lease-1";
    req.access_token = TOKEN;
    req.lease_id = 12345;
    req.lease_token = forged;
    req.wait_ms = 60000; /* beyond the call's 10 s deadline */
    /* Parked, it ended DEADLINE_EXCEEDED at the call's deadline. */
    assert_int_equal(test_coord_call(chan, "Claim", &req.base,
                                     &ferry__v1__claim_response__descriptor,
                                     (ProtobufCMessage **)&resp, &err),
                     FERRY_ERR_PERMISSION_DENIED);
    assert_int_equal(err.grpc_code, 7);
    assert_non_null(strstr(err.message, "lease_token does not grant lease_id 12345"));
}

typedef struct {
    const char *id;
    const char *method; /* "Lookup" or "Claim" */
    int64_t wait_ms;
    ferry_status_t status;
    rpc_error_t err;
} nodeadline_job_t;

/* Lookup or Claim with wait_ms and no gRPC deadline at all: the wait alone
 * bounds the call. */
static void *nodeadline_thread(void *arg)
{
    nodeadline_job_t *job = arg;
    Ferry__V1__LookupRequest look = FERRY__V1__LOOKUP_REQUEST__INIT;
    Ferry__V1__ClaimRequest claim = FERRY__V1__CLAIM_REQUEST__INIT;
    bool is_lookup = strcmp(job->method, "Lookup") == 0;
    ProtobufCMessage *resp = NULL;
    char path[64];

    look.request_id = claim.request_id = (char *)job->id;
    look.access_token = claim.access_token = TOKEN;
    look.wait_ms = claim.wait_ms = job->wait_ms;
    snprintf(path, sizeof(path), "/ferry.v1.Coordinator/%s", job->method);
    job->status = rpc_unary(chan, path, is_lookup ? &look.base : &claim.base,
                            is_lookup ? &ferry__v1__lookup_response__descriptor
                                      : &ferry__v1__claim_response__descriptor,
                            0, &resp, &job->err);
    if (resp != NULL) {
        protobuf_c_message_free_unpacked(resp, NULL);
    }
    return NULL;
}

/* wait_ms up to 2^63-1 waits (it used to overflow into "no wait" and answer
 * NOT_FOUND at once); 1 ms runs out and says so. */
static void test_wait_ms_extremes(void **state)
{
    nodeadline_job_t jobs[] = {
        {.id = "wmax-1", .method = "Lookup", .wait_ms = INT64_MAX},
        {.id = "wmax-2", .method = "Claim", .wait_ms = INT64_MAX - 1000},
    };
    Ferry__V1__LookupResponse *look = NULL;
    rpc_error_t err;
    (void)state;

    for (size_t i = 0; i < sizeof(jobs) / sizeof(jobs[0]); i++) {
        char needle[64];
        log_wait_t parked = {.needle = needle};
        pthread_t t;

        snprintf(needle, sizeof(needle), "op %s: %s from", jobs[i].id, i == 0 ? "lookup" : "claim");
        assert_int_equal(pthread_create(&t, NULL, nodeadline_thread, &jobs[i]), 0);
        bool waiting = test_wait_for(log_has, &parked, 10000);
        if (waiting) {
            ferry__v1__register_response__free_unpacked(
                do_register(jobs[i].id, TOKEN, KIND_WRITE, FERRY_OK, NULL), NULL);
        }
        pthread_join(t, NULL);
        print_message("%s wait_ms %lld: %s %s\n", jobs[i].method, (long long)jobs[i].wait_ms,
                      ferry_status_name(jobs[i].status), jobs[i].err.message);
        assert_true(waiting);
        assert_int_equal(jobs[i].status, FERRY_OK);
    }
    assert_int_equal(get_state("wmax-2", &err),
                     FERRY__V1__OPERATION_STATE__OPERATION_STATE_CLAIMED);

    assert_int_equal(do_lookup("wmin-1", TOKEN, 1, &look, &err), FERRY_ERR_TIMED_OUT);
    assert_int_equal(err.grpc_code, 4);
    assert_non_null(strstr(err.message, "wmin-1"));
}

/* Watch refuses what every other RPC refuses, at once, instead of holding a
 * stream for an ID that can never exist; one too large for any request but
 * a Register (1 MiB) is refused before it is decoded, naming the method. */
static void test_watch_validates_like_every_rpc(void **state)
{
    static const struct {
        const char *id, *prefix;
        size_t len; /* > 0: instead of id, an ID of this many bytes */
        ferry_status_t status;
        const char *says;
    } bad[] = {
        {"a/../b", "", 0, FERRY_ERR_INVALID_ARGUMENT, "request_id"},
        {"", "../", 0, FERRY_ERR_INVALID_ARGUMENT, "request_id_prefix"},
        {"has space", "", 0, FERRY_ERR_INVALID_ARGUMENT, "request_id"},
        {"x", "y", 0, FERRY_ERR_INVALID_ARGUMENT, "exactly one"},
        {NULL, "", 4096, FERRY_ERR_INVALID_ARGUMENT, "at most 128"},
        {NULL, "", 1024 * 1024, FERRY_ERR_RESOURCE_EXHAUSTED, "/ferry.v1.Coordinator/Watch"},
    };
    Ferry__V1__WatchRequest req = FERRY__V1__WATCH_REQUEST__INIT;
    char *huge = malloc(1024 * 1024 + 1);
    rpc_error_t err;
    (void)state;

    assert_non_null(huge);
    memset(huge, 'a', 1024 * 1024);
    huge[1024 * 1024] = '\0';
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        Ferry__V1__WatchResponse *msg = NULL;
        rpc_stream_t *stream = NULL;

        req.request_id = bad[i].len > 0 ? huge + 1024 * 1024 - bad[i].len : (char *)bad[i].id;
        req.request_id_prefix = (char *)bad[i].prefix;
        assert_int_equal(rpc_stream_open(chan, "/ferry.v1.Coordinator/Watch", &req.base,
                                         &ferry__v1__watch_response__descriptor, 10000, &stream),
                         FERRY_OK);
        assert_int_equal(rpc_stream_read(stream, 10000, (ProtobufCMessage **)&msg, &err),
                         bad[i].status);
        assert_non_null(strstr(err.message, bad[i].says));
        rpc_stream_destroy(stream);
    }
    free(huge);

    /* The wire checks hold for Watch too. */
    req.request_id = "w~";
    req.request_id_prefix = "";
    assert_int_equal(call_patched("Watch", &req.base, "w~", "w\0", &err),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "request_id has a NUL"));
}

/* Decided (issue 8, item 9): Cancel is idempotent on CANCELLED and refuses
 * COMPLETE and ERRORED; the reason is in error_message, error_code stays 0;
 * ttl_seconds is range-checked even with lease_id. */
static void test_cancel_and_ttl_as_documented(void **state)
{
    Ferry__V1__CancelRequest req = FERRY__V1__CANCEL_REQUEST__INIT;
    Ferry__V1__CancelResponse *resp = NULL;
    Ferry__V1__RegisterResponse *first;
    Ferry__V1__RegisterRequest reg = FERRY__V1__REGISTER_REQUEST__INIT;
    Ferry__V1__RegisterResponse *second = NULL;
    Ferry__V1__ClaimResponse *claim = NULL;
    Ferry__V1__CompleteResponse *done = NULL;
    rpc_error_t err;
    (void)state;

    first = do_register("doc-1", TOKEN, KIND_WRITE, FERRY_OK, NULL);
    req.request_id = "doc-1";
    req.access_token = TOKEN;
    req.reason = "first reason";
    for (int i = 0; i < 2; i++) {
        assert_int_equal(test_coord_call(chan, "Cancel", &req.base,
                                         &ferry__v1__cancel_response__descriptor,
                                         (ProtobufCMessage **)&resp, &err),
                         FERRY_OK);
        assert_int_equal(resp->operation->state,
                         FERRY__V1__OPERATION_STATE__OPERATION_STATE_CANCELLED);
        assert_string_equal(resp->operation->error_message, "first reason");
        assert_int_equal(resp->operation->error_code, 0);
        ferry__v1__cancel_response__free_unpacked(resp, NULL);
        req.reason = "second reason";
    }

    ferry__v1__register_response__free_unpacked(
        do_register("doc-2", TOKEN, KIND_WRITE, FERRY_OK, NULL), NULL);
    assert_int_equal(do_claim("doc-2", TOKEN, KIND_WRITE, &claim, &err), FERRY_OK);
    assert_int_equal(
        do_complete("doc-2", TOKEN, claim->claim_lease_id, claim->lease_token, 0, &done, &err),
        FERRY_OK);
    assert_int_equal(do_cancel("doc-2", TOKEN, &err), FERRY_ERR_FAILED_PRECONDITION);
    assert_non_null(strstr(err.message, "COMPLETE"));

    reg.request_id = "doc-3";
    reg.access_token = TOKEN;
    reg.metadata = test_coord_metadata(KIND_WRITE);
    reg.lease_id = first->lease_id;
    reg.lease_token = first->lease_token;
    reg.ttl_seconds = 3601;
    assert_int_equal(test_coord_call(chan, "Register", &reg.base,
                                     &ferry__v1__register_response__descriptor,
                                     (ProtobufCMessage **)&second, &err),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "ttl_seconds"));
    reg.ttl_seconds = 3600; /* in range: checked, then not used */
    assert_int_equal(test_coord_call(chan, "Register", &reg.base,
                                     &ferry__v1__register_response__descriptor,
                                     (ProtobufCMessage **)&second, &err),
                     FERRY_OK);
    assert_int_equal(second->lease_id, first->lease_id);
    assert_int_equal(second->ttl_seconds, 0);
    ferry__v1__register_response__free_unpacked(second, NULL);
    ferry__v1__complete_response__free_unpacked(done, NULL);
    ferry__v1__claim_response__free_unpacked(claim, NULL);
    ferry__v1__register_response__free_unpacked(first, NULL);
}

static void test_health_serving(void **state)
{
    rpc_error_t err;
    (void)state;
    assert_int_equal(test_coord_health(chan, "", &err), 1);
    assert_int_equal(test_coord_health(chan, "ferry.v1.Coordinator", &err), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_health_serving),
        cmocka_unit_test(test_register_lookup_claim_complete),
        cmocka_unit_test(test_stale_complete_does_not_end_a_later_claim),
        cmocka_unit_test(test_claim_id_chosen_by_the_caller),
        cmocka_unit_test(test_lookup_served_from_view),
        cmocka_unit_test(test_complete_with_error),
        cmocka_unit_test(test_complete_refusals),
        cmocka_unit_test(test_generated_token),
        cmocka_unit_test(test_duplicate_registration),
        cmocka_unit_test(test_wrong_token),
        cmocka_unit_test(test_unknown_id),
        cmocka_unit_test(test_validation_names_the_field),
        cmocka_unit_test(test_claim_wrong_kind),
        cmocka_unit_test(test_claim_checks_descriptor_sizes),
        cmocka_unit_test(test_lookup_wait_satisfied),
        cmocka_unit_test(test_lookup_wait_times_out),
        cmocka_unit_test(test_claim_race_one_winner),
        cmocka_unit_test(test_owner_lease_expiry_seen_as_expired),
        cmocka_unit_test(test_keepalive_keeps_it),
        cmocka_unit_test(test_revoke_ends_the_lease_for_its_grantee_only),
        cmocka_unit_test(test_claim_expiry_errors_the_operation),
        cmocka_unit_test(test_cancel_seen_by_the_other_side),
        cmocka_unit_test(test_list_filters_and_pages),
        cmocka_unit_test(test_shared_lease),
        cmocka_unit_test(test_release),
        cmocka_unit_test(test_watch_needs_exactly_one_target),
        cmocka_unit_test(test_strings_with_nul_are_refused),
        cmocka_unit_test(test_strings_must_be_utf8),
        cmocka_unit_test(test_unknown_enum_values_are_refused),
        cmocka_unit_test(test_claim_with_unknown_lease_is_not_found_at_once),
        cmocka_unit_test(test_claim_with_a_forged_lease_token_does_not_wait),
        cmocka_unit_test(test_wait_ms_extremes),
        cmocka_unit_test(test_watch_validates_like_every_rpc),
        cmocka_unit_test(test_cancel_and_ttl_as_documented),
    };
    return cmocka_run_group_tests(tests, setup, teardown) + (coord_exit_bad ? 1 : 0);
}
