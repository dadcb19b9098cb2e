/*
 * test_rpc_loopback.c: the rpc server and client against each other on
 * loopback: unary and streaming calls, errors answered by the layer
 * (malformed, unknown method, oversized for the server or for the method,
 * past what the calls in progress may hold together),
 * deadlines, cancellation (from another thread too) and shutdown with calls
 * in flight. Each test starts its own server.
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
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "ferry/v1/coordinator.pb-c.h"
#include "rpc_fixture.h"

#define GET_PATH   "/ferry.v1.Coordinator/Get"
#define WATCH_PATH "/ferry.v1.Coordinator/Watch"
#define WAIT_MS    10000

static ferry_status_t get(fixture_t *f, const char *id, int64_t timeout_ms,
                          Ferry__V1__GetResponse **resp_p, rpc_error_t *err)
{
    Ferry__V1__GetRequest req = FERRY__V1__GET_REQUEST__INIT;
    req.request_id = (char *)id;
    return rpc_unary(f->channel, GET_PATH, &req.base, &ferry__v1__get_response__descriptor,
                     timeout_ms, (ProtobufCMessage **)resp_p, err);
}

static rpc_stream_t *watch(fixture_t *f, const char *id, const char *prefix)
{
    Ferry__V1__WatchRequest req = FERRY__V1__WATCH_REQUEST__INIT;
    rpc_stream_t *stream = NULL;

    req.request_id = (char *)id;
    req.request_id_prefix = (char *)prefix;
    assert_int_equal(rpc_stream_open(f->channel, WATCH_PATH, &req.base,
                                     &ferry__v1__watch_response__descriptor, 20000, &stream),
                     FERRY_OK);
    return stream;
}

static bool one_cancel(const fixture_t *f)
{
    return f->cancels >= 1;
}

static bool stream_held(const fixture_t *f)
{
    return f->held_stream != NULL;
}

static bool both_held(const fixture_t *f)
{
    return f->held_stream != NULL && f->held_unary != NULL;
}

static void test_unary_echo(void **state)
{
    Ferry__V1__GetResponse *resp = NULL;
    rpc_error_t err;

    assert_int_equal(get(*state, "op-1", 5000, &resp, &err), FERRY_OK);
    assert_int_equal(err.grpc_code, 0);
    assert_string_equal(err.message, "");
    assert_non_null(resp->operation);
    assert_string_equal(resp->operation->request_id, "op-1");
    assert_string_equal(resp->operation->owner, "echo");
    assert_int_equal(resp->header->revision, 7);
    protobuf_c_message_free_unpacked(&resp->base, NULL);
}

/* Call metadata (an etcd token, say) goes with the call; more pairs than
 * RPC_MAX_MD are refused before anything is sent. */
static void test_unary_metadata(void **state)
{
    fixture_t *f = *state;
    Ferry__V1__GetRequest req = FERRY__V1__GET_REQUEST__INIT;
    Ferry__V1__GetResponse *resp = NULL;
    rpc_md_t md[RPC_MAX_MD + 1];
    rpc_error_t err;

    for (size_t i = 0; i <= RPC_MAX_MD; i++) {
        md[i] = (rpc_md_t){.key = "token", .value = "t0k3n"};
    }
    req.request_id = "op-md";
    assert_int_equal(rpc_unary_md(f->channel, GET_PATH, &req.base, md, RPC_MAX_MD,
                                  &ferry__v1__get_response__descriptor, 5000,
                                  (ProtobufCMessage **)&resp, &err),
                     FERRY_OK);
    assert_string_equal(resp->operation->request_id, "op-md");
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    resp = NULL;
    assert_int_equal(rpc_unary_md(f->channel, GET_PATH, &req.base, md, RPC_MAX_MD + 1,
                                  &ferry__v1__get_response__descriptor, 5000,
                                  (ProtobufCMessage **)&resp, &err),
                     FERRY_ERR_MISUSE);
    assert_string_equal(err.message, "too much metadata");
    assert_null(resp);
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A channel to the live server connects; one to a port nobody listens on
 * fails UNAVAILABLE, at once and again on the next try (a fresh attempt,
 * not gRPC's backoff), well within the timeout given. */
static void test_channel_connect(void **state)
{
    fixture_t *f = *state;
    rpc_channel_t *dead = NULL;
    rpc_channel_params_t params = {.target = "127.0.0.1:1"};
    rpc_error_t err;

    assert_int_equal(rpc_channel_connect(f->channel, 5000, &err), FERRY_OK);
    assert_int_equal(rpc_channel_create(&params, &dead), FERRY_OK);
    for (int i = 0; i < 2; i++) {
        long long start = now_ms();
        assert_int_equal(rpc_channel_connect(dead, 5000, &err), FERRY_ERR_UNAVAILABLE);
        assert_true(now_ms() - start < 4000);
        assert_string_equal(err.message, "failed to connect");
    }
    rpc_channel_destroy(dead);
}

/* A port nobody listens on (bound to learn it, then closed). */
static int free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int port = -1;

    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0) {
        port = ntohs(a.sin_port);
    }
    if (fd >= 0) {
        close(fd);
    }
    return port;
}

/* A server that comes back after its channel's calls failed for a while
 * is reached by the next call. gRPC's reconnect backoff had grown with the
 * outage (1 s, 2.6 s, 5.2 s ... from the first failure), and until it ran
 * out every call failed UNAVAILABLE at once, without trying: a coordinator
 * restarted in 2 s cost workers their session leases. */
static void test_a_server_back_from_an_outage_is_reached_at_once(void **state)
{
    fixture_t back = {0};
    int port = free_port();
    char target[64], listen_addr[64];
    rpc_channel_params_t cp = {.target = target};
    rpc_server_params_t sp = {.listen_addr = listen_addr,
                              .max_message_bytes = FIXTURE_MAX_MESSAGE,
                              .max_held_request_bytes = FIXTURE_MAX_HELD};
    Ferry__V1__GetRequest req = FERRY__V1__GET_REQUEST__INIT;
    Ferry__V1__GetResponse *resp = NULL;
    rpc_error_t err;
    (void)state;

    assert_true(port > 0);
    snprintf(target, sizeof(target), "127.0.0.1:%d", port);
    snprintf(listen_addr, sizeof(listen_addr), "127.0.0.1:%d", port);
    req.request_id = "missing";
    assert_int_equal(rpc_channel_create(&cp, &back.channel), FERRY_OK);
    /* 3.5 s of calls that fail: gRPC's next attempt is then 4.1-6.2 s
     * after the first (its backoff, jitter included). Not a wait for a
     * condition: the outage itself. */
    for (long long end = now_ms() + 3500; now_ms() < end;) {
        const struct timespec pause = {.tv_nsec = 50 * 1000000L};
        assert_int_equal(rpc_unary(back.channel, GET_PATH, &req.base,
                                   &ferry__v1__get_response__descriptor, 1000,
                                   (ProtobufCMessage **)&resp, &err),
                         FERRY_ERR_UNAVAILABLE);
        nanosleep(&pause, NULL);
    }
    assert_int_equal(pthread_mutex_init(&back.lock, NULL), 0);
    assert_int_equal(pthread_cond_init(&back.cond, NULL), 0);
    assert_int_equal(rpc_server_create(&sp, &back.server), FERRY_OK);
    assert_int_equal(rpc_server_add_service(back.server, &ferry__v1__coordinator__descriptor,
                                            fixture_methods, fixture_n_methods, &back),
                     FERRY_OK);
    assert_int_equal(rpc_server_start(back.server, &back.port), FERRY_OK);
    /* The first call after the server is back reaches it. */
    assert_int_equal(rpc_unary(back.channel, GET_PATH, &req.base,
                               &ferry__v1__get_response__descriptor, 5000,
                               (ProtobufCMessage **)&resp, &err),
                     FERRY_ERR_NOT_FOUND);
    assert_string_equal(err.message, "operation missing not found");
    fixture_stop(&back);
}

/* A second server on a port one already serves fails to start: gRPC set
 * SO_REUSEPORT, and a second coordinator on the same port (another prefix,
 * a stale process) bound it too, the kernel splitting new connections
 * between the two. The first server goes on answering. */
static void test_a_second_server_cannot_share_the_port(void **state)
{
    fixture_t *f = *state;
    char listen_addr[64];
    rpc_server_params_t sp = {.listen_addr = listen_addr,
                              .max_message_bytes = FIXTURE_MAX_MESSAGE,
                              .max_held_request_bytes = FIXTURE_MAX_HELD};
    rpc_server_t *second = NULL;
    Ferry__V1__GetResponse *resp = NULL;
    rpc_error_t err;
    int port = 0;

    snprintf(listen_addr, sizeof(listen_addr), "127.0.0.1:%d", f->port);
    assert_int_equal(rpc_server_create(&sp, &second), FERRY_OK);
    assert_int_equal(rpc_server_add_service(second, &ferry__v1__coordinator__descriptor,
                                            fixture_methods, fixture_n_methods, f),
                     FERRY_OK);
    assert_int_not_equal(rpc_server_start(second, &port), FERRY_OK);
    rpc_server_destroy(second);
    assert_int_equal(get(f, "op-1", 5000, &resp, &err), FERRY_OK);
    protobuf_c_message_free_unpacked(&resp->base, NULL);
}

static void test_unary_not_found(void **state)
{
    Ferry__V1__GetResponse *resp = NULL;
    rpc_error_t err;

    assert_int_equal(get(*state, "missing", 5000, &resp, &err), FERRY_ERR_NOT_FOUND);
    assert_int_equal(err.grpc_code, 5);
    assert_string_equal(err.message, "operation missing not found");
    assert_null(resp);
}

/* Codes that share a gRPC code arrive as themselves (the server's
 * ferry-status trailing metadata), whatever the message says: the message
 * is for people, the code is the contract. */
static void test_unary_status_by_code(void **state)
{
    Ferry__V1__GetResponse *resp = NULL;
    rpc_error_t err;

    assert_int_equal(get(*state, "lease-gone", 5000, &resp, &err), FERRY_ERR_LEASE_NOT_FOUND);
    assert_int_equal(err.grpc_code, 5);
    assert_int_equal(err.status, FERRY_ERR_LEASE_NOT_FOUND);
    assert_null(strstr(err.message, "lease_id"));
    assert_int_equal(get(*state, "expired", 5000, &resp, &err), FERRY_ERR_EXPIRED);
    assert_int_equal(err.grpc_code, 5);
    /* The same wording with the other code: the code decides. */
    assert_int_equal(get(*state, "missing", 5000, &resp, &err), FERRY_ERR_NOT_FOUND);
    assert_int_equal(err.status, FERRY_ERR_NOT_FOUND);
    assert_null(resp);
}

static void test_unary_reply_from_other_thread(void **state)
{
    Ferry__V1__GetResponse *resp = NULL;

    assert_int_equal(get(*state, "later", 5000, &resp, NULL), FERRY_OK);
    assert_string_equal(resp->operation->request_id, "later");
    protobuf_c_message_free_unpacked(&resp->base, NULL);
}

/* Many calls from several threads at once, with few calls armed. */
static void *hammer_main(void *arg)
{
    fixture_t *f = arg;
    for (int i = 0; i < 40; i++) {
        Ferry__V1__GetResponse *resp = NULL;
        char id[32];
        snprintf(id, sizeof(id), "op-%d", i);
        if (get(f, id, 10000, &resp, NULL) != FERRY_OK ||
            strcmp(resp->operation->request_id, id) != 0) {
            return (void *)1;
        }
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    }
    return NULL;
}

static void test_unary_concurrent(void **state)
{
    pthread_t threads[4];
    void *result;

    for (int i = 0; i < 4; i++) {
        assert_int_equal(pthread_create(&threads[i], NULL, hammer_main, *state), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(threads[i], &result);
        assert_null(result);
    }
}

static void test_stream_in_order(void **state)
{
    rpc_stream_t *stream = watch(*state, "", "count:5");
    ProtobufCMessage *msg;
    rpc_error_t err;

    for (int i = 1; i <= 5; i++) {
        Ferry__V1__WatchResponse *resp;
        assert_int_equal(rpc_stream_read(stream, 5000, &msg, &err), FERRY_OK);
        assert_non_null(msg);
        resp = (Ferry__V1__WatchResponse *)msg;
        assert_int_equal(resp->header->revision, i);
        assert_int_equal(resp->created, i == 1);
        protobuf_c_message_free_unpacked(msg, NULL);
    }
    assert_int_equal(rpc_stream_read(stream, 5000, &msg, &err), FERRY_OK);
    assert_null(msg);
    assert_int_equal(err.grpc_code, 0);
    /* The end is sticky. */
    assert_int_equal(rpc_stream_read(stream, 5000, &msg, &err), FERRY_OK);
    assert_null(msg);
    rpc_stream_destroy(stream);
}

static void test_stream_many(void **state)
{
    rpc_stream_t *stream = watch(*state, "", "count:500");
    ProtobufCMessage *msg;
    int n = 0;

    while (rpc_stream_read(stream, 5000, &msg, NULL) == FERRY_OK && msg != NULL) {
        assert_int_equal(((Ferry__V1__WatchResponse *)msg)->header->revision, ++n);
        protobuf_c_message_free_unpacked(msg, NULL);
    }
    assert_null(msg);
    assert_int_equal(n, 500);
    rpc_stream_destroy(stream);
}

/* A read that times out leaves the stream going; the message that comes
 * later is the next one read. Then the client cancels the stream. */
static void test_stream_timeout_then_cancel(void **state)
{
    fixture_t *f = *state;
    Ferry__V1__WatchResponse later = FERRY__V1__WATCH_RESPONSE__INIT;
    rpc_stream_t *stream = watch(f, "hold", "");
    ProtobufCMessage *msg;
    rpc_call_t *held;
    rpc_error_t err;

    assert_true(fixture_wait(f, stream_held, WAIT_MS));
    assert_int_equal(rpc_stream_read(stream, 100, &msg, &err), FERRY_ERR_TIMED_OUT);
    assert_int_equal(err.grpc_code, 0);
    assert_null(msg);

    pthread_mutex_lock(&f->lock);
    held = f->held_stream;
    rpc_call_ref(held);
    pthread_mutex_unlock(&f->lock);
    later.created = true;
    assert_int_equal(rpc_call_send(held, &later.base), FERRY_OK);
    assert_int_equal(rpc_stream_read(stream, WAIT_MS, &msg, &err), FERRY_OK);
    assert_non_null(msg);
    assert_true(((Ferry__V1__WatchResponse *)msg)->created);
    protobuf_c_message_free_unpacked(msg, NULL);

    rpc_stream_destroy(stream);
    assert_true(fixture_wait(f, one_cancel, WAIT_MS));
    assert_int_equal(f->send_after_cancel, FERRY_ERR_CANCELLED);
    assert_true(rpc_call_is_cancelled(held));
    assert_int_equal(rpc_call_send(held, &later.base), FERRY_ERR_CANCELLED);
    rpc_call_unref(held);
}

/* A stream opened with metadata (up to RPC_MAX_MD pairs) runs as any
 * other; more pairs are refused before anything is sent. */
static void test_stream_metadata(void **state)
{
    fixture_t *f = *state;
    Ferry__V1__WatchRequest req = FERRY__V1__WATCH_REQUEST__INIT;
    rpc_md_t md[RPC_MAX_MD + 1];
    rpc_stream_t *stream = NULL;
    ProtobufCMessage *msg;
    int n = 0;

    for (size_t i = 0; i <= RPC_MAX_MD; i++) {
        md[i] = (rpc_md_t){.key = "token", .value = "t0k3n"};
    }
    req.request_id_prefix = "count:3";
    assert_int_equal(rpc_stream_open_md(f->channel, WATCH_PATH, &req.base, md, RPC_MAX_MD,
                                        &ferry__v1__watch_response__descriptor, 20000, &stream),
                     FERRY_OK);
    while (rpc_stream_read(stream, 5000, &msg, NULL) == FERRY_OK && msg != NULL) {
        assert_int_equal(((Ferry__V1__WatchResponse *)msg)->header->revision, ++n);
        protobuf_c_message_free_unpacked(msg, NULL);
    }
    assert_int_equal(n, 3);
    rpc_stream_destroy(stream);
    stream = NULL;
    assert_int_equal(rpc_stream_open_md(f->channel, WATCH_PATH, &req.base, md, RPC_MAX_MD + 1,
                                        &ferry__v1__watch_response__descriptor, 20000, &stream),
                     FERRY_ERR_MISUSE);
    assert_null(stream);
}

typedef struct {
    rpc_stream_t *stream;
    ferry_status_t status;
    rpc_error_t err;
} blocked_read_t;

static void *read_blocked(void *arg)
{
    blocked_read_t *r = arg;
    ProtobufCMessage *msg = NULL;

    r->status = rpc_stream_read(r->stream, 20000, &msg, &r->err);
    if (msg != NULL) {
        protobuf_c_message_free_unpacked(msg, NULL);
    }
    return NULL;
}

/* rpc_stream_cancel from another thread ends a read that waits for a
 * message that will not come: it returns CANCELLED (not TIMED_OUT, what
 * its 20 s would give), and the server sees the client go away. */
static void test_stream_cancel_from_another_thread(void **state)
{
    fixture_t *f = *state;
    rpc_stream_t *stream = watch(f, "hold", "");
    blocked_read_t r = {.stream = stream};
    pthread_t reader;

    assert_true(fixture_wait(f, stream_held, WAIT_MS));
    assert_int_equal(pthread_create(&reader, NULL, read_blocked, &r), 0);
    rpc_stream_cancel(stream);
    pthread_join(reader, NULL);
    assert_int_equal(r.status, FERRY_ERR_CANCELLED);
    assert_int_equal(r.err.grpc_code, 1);
    assert_true(fixture_wait(f, one_cancel, WAIT_MS));
    rpc_stream_destroy(stream);
}

static void test_deadline_exceeded(void **state)
{
    fixture_t *f = *state;
    Ferry__V1__GetResponse *resp = NULL;
    rpc_error_t err;

    assert_int_equal(get(f, "hold", 200, &resp, &err), FERRY_ERR_TIMED_OUT);
    assert_int_equal(err.grpc_code, 4);
    assert_null(resp);
    assert_true(fixture_wait(f, one_cancel, WAIT_MS));
}

static void test_malformed_request(void **state)
{
    static const unsigned char garbage[] = {0xff, 0xff, 0xff, 0xff, 0x0f, 0x12};
    fixture_t *f = *state;
    void *resp = NULL;
    size_t len = 0;
    rpc_error_t err;

    assert_int_equal(
        rpc_unary_raw(f->channel, GET_PATH, garbage, sizeof(garbage), 5000, &resp, &len, &err),
        FERRY_ERR_INVALID_ARGUMENT);
    assert_int_equal(err.grpc_code, 3);
    assert_string_equal(err.message, "malformed request for " GET_PATH);
    assert_null(resp);
}

static void test_raw_roundtrip(void **state)
{
    Ferry__V1__GetRequest req = FERRY__V1__GET_REQUEST__INIT;
    Ferry__V1__GetResponse *resp;
    fixture_t *f = *state;
    uint8_t buf[64];
    void *data = NULL;
    size_t len = 0;

    req.request_id = "raw";
    len = protobuf_c_message_pack(&req.base, buf);
    assert_int_equal(rpc_unary_raw(f->channel, GET_PATH, buf, len, 5000, &data, &len, NULL),
                     FERRY_OK);
    resp = ferry__v1__get_response__unpack(NULL, len, data);
    assert_non_null(resp);
    assert_string_equal(resp->operation->request_id, "raw");
    ferry__v1__get_response__free_unpacked(resp, NULL);
    free(data);
}

static void test_unknown_method(void **state)
{
    fixture_t *f = *state;
    void *resp = NULL;
    size_t len = 0;
    rpc_error_t err;

    assert_int_equal(
        rpc_unary_raw(f->channel, "/ferry.v1.Coordinator/Nope", "", 0, 5000, &resp, &len, &err),
        FERRY_ERR_UNIMPLEMENTED);
    assert_int_equal(err.grpc_code, 12);
    /* A method of the service that the table did not list. */
    assert_int_equal(
        rpc_unary_raw(f->channel, "/ferry.v1.Coordinator/Register", "", 0, 5000, &resp, &len, &err),
        FERRY_ERR_UNIMPLEMENTED);
    assert_int_equal(err.grpc_code, 12);
}

static void test_oversized_request(void **state)
{
    Ferry__V1__GetResponse *resp = NULL;
    size_t n = 2 * FIXTURE_MAX_MESSAGE;
    char *id = malloc(n + 1);
    rpc_error_t err;

    memset(id, 'x', n);
    id[n] = '\0';
    assert_int_equal(get(*state, id, 5000, &resp, &err), FERRY_ERR_RESOURCE_EXHAUSTED);
    assert_int_equal(err.grpc_code, 8);
    assert_null(resp);
    free(id);
    /* The server is fine afterwards. */
    assert_int_equal(get(*state, "after", 5000, &resp, NULL), FERRY_OK);
    protobuf_c_message_free_unpacked(&resp->base, NULL);
}

/* A Watch whose request is `len` bytes packed: "count:1" padded with 'x'
 * (the handler reads the count and ignores the rest). */
static rpc_stream_t *watch_of_size(fixture_t *f, size_t len)
{
    /* Tag and a two-byte length before the prefix's bytes. */
    size_t n = len - 3;
    char *prefix = malloc(n + 1);
    Ferry__V1__WatchRequest req = FERRY__V1__WATCH_REQUEST__INIT;
    rpc_stream_t *stream;

    assert_non_null(prefix);
    memset(prefix, 'x', n);
    memcpy(prefix, "count:1", 7);
    prefix[n] = '\0';
    req.request_id_prefix = prefix;
    assert_int_equal(protobuf_c_message_get_packed_size(&req.base), len);
    stream = watch(f, "", prefix);
    free(prefix);
    return stream;
}

/* A method's own bound (max_request_bytes), under the server's: a Watch of
 * one byte more than its row accepts ends RESOURCE_EXHAUSTED, as gRPC
 * answers one over the server's bound, naming the method and the bound,
 * and its handler never runs; one at the bound is served. Get, whose row
 * gives none, takes requests up to the server's bound. Before, every
 * method took the server's bound, and a call held for minutes (a parked
 * Lookup, a Watch) held all of it. */
static void test_request_over_its_method_bound(void **state)
{
    fixture_t *f = *state;
    rpc_stream_t *stream = watch_of_size(f, FIXTURE_WATCH_MAX_REQUEST + 1);
    Ferry__V1__GetResponse *resp = NULL;
    ProtobufCMessage *msg = NULL;
    char bound[32], *id;
    rpc_error_t err;

    assert_int_equal(rpc_stream_read(stream, 5000, &msg, &err), FERRY_ERR_RESOURCE_EXHAUSTED);
    assert_null(msg);
    assert_int_equal(err.grpc_code, 8);
    assert_non_null(strstr(err.message, WATCH_PATH));
    snprintf(bound, sizeof(bound), "(%d bytes)", FIXTURE_WATCH_MAX_REQUEST);
    assert_non_null(strstr(err.message, bound));
    rpc_stream_destroy(stream);

    stream = watch_of_size(f, FIXTURE_WATCH_MAX_REQUEST);
    assert_int_equal(rpc_stream_read(stream, 5000, &msg, &err), FERRY_OK);
    assert_non_null(msg);
    assert_int_equal(((Ferry__V1__WatchResponse *)msg)->header->revision, 1);
    protobuf_c_message_free_unpacked(msg, NULL);
    assert_int_equal(rpc_stream_read(stream, 5000, &msg, &err), FERRY_OK);
    assert_null(msg);
    rpc_stream_destroy(stream);

    id = malloc(FIXTURE_MAX_MESSAGE / 2 + 1);
    assert_non_null(id);
    memset(id, 'g', FIXTURE_MAX_MESSAGE / 2);
    id[FIXTURE_MAX_MESSAGE / 2] = '\0';
    assert_int_equal(get(f, id, 5000, &resp, &err), FERRY_OK);
    assert_int_equal(strlen(resp->operation->request_id), FIXTURE_MAX_MESSAGE / 2);
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    free(id);
}

typedef struct {
    fixture_t *f;
    ferry_status_t status;
    rpc_error_t err;
} client_result_t;

/* An ID of n bytes starting with `head`; freed by the caller. */
static char *id_of_size(const char *head, size_t n)
{
    char *id = malloc(n + 1);

    assert_non_null(id);
    memset(id, 'h', n);
    memcpy(id, head, strlen(head));
    id[n] = '\0';
    return id;
}

static bool unary_held(const fixture_t *f)
{
    return f->held_unary != NULL;
}

/* Holds a Get of HELD_BYTES ("hold...") until its 2 s deadline. Sent
 * again while the bound refuses it: the test's first Get, answered, still
 * counts until the server has seen its status go out, which a loaded
 * machine (the fresh-clone CI's second pass) delayed past this one's
 * arrival, and the bound then refused it (40 + 60 KiB of 96). */
#define HELD_BYTES (60 * 1024)
static void *held_big_get_main(void *arg)
{
    client_result_t *r = arg;
    Ferry__V1__GetResponse *resp = NULL;
    char *id = id_of_size("hold", HELD_BYTES);
    long long deadline = fixture_now_ms() + 10000;

    do {
        r->status = get(r->f, id, 2000, &resp, &r->err);
    } while (r->status == FERRY_ERR_RESOURCE_EXHAUSTED && fixture_now_ms() < deadline);
    if (resp != NULL) {
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    }
    free(id);
    return NULL;
}

/* What calls in progress hold together is bounded (max_held_request_bytes):
 * a Get of 40 KiB is served alone, refused RESOURCE_EXHAUSTED (saying why)
 * while a held call holds 60 KiB of the fixture's 96, and served again once
 * that call is done. Before, only each request was bounded, and the calls
 * a server held for minutes could together hold any amount. */
static void test_requests_held_together_bounded(void **state)
{
    fixture_t *f = *state;
    client_result_t held = {.f = f};
    Ferry__V1__GetResponse *resp = NULL;
    char *id = id_of_size("get", 40 * 1024);
    long long deadline;
    ferry_status_t st;
    pthread_t t;
    rpc_error_t err;

    assert_int_equal(get(f, id, 5000, &resp, &err), FERRY_OK);
    protobuf_c_message_free_unpacked(&resp->base, NULL);

    assert_int_equal(pthread_create(&t, NULL, held_big_get_main, &held), 0);
    assert_true(fixture_wait(f, unary_held, 10000));
    resp = NULL;
    assert_int_equal(get(f, id, 5000, &resp, &err), FERRY_ERR_RESOURCE_EXHAUSTED);
    assert_null(resp);
    assert_int_equal(err.grpc_code, 8);
    assert_non_null(strstr(err.message, "bytes of requests in progress"));
    assert_non_null(strstr(err.message, "bound of 98304"));

    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(held.status, FERRY_ERR_TIMED_OUT);
    /* Served again once the held call is done (its bytes go then). */
    deadline = fixture_now_ms() + 10000;
    do {
        resp = NULL;
        st = get(f, id, 5000, &resp, &err);
    } while (st == FERRY_ERR_RESOURCE_EXHAUSTED && fixture_now_ms() < deadline);
    assert_int_equal(st, FERRY_OK);
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    free(id);
}

static void *held_get_main(void *arg)
{
    client_result_t *r = arg;
    Ferry__V1__GetResponse *resp = NULL;

    r->status = get(r->f, "hold", 30000, &resp, &r->err);
    if (resp != NULL) {
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    }
    return NULL;
}

static void *held_watch_main(void *arg)
{
    client_result_t *r = arg;
    rpc_stream_t *stream = watch(r->f, "hold", "");
    ProtobufCMessage *msg;

    do {
        r->status = rpc_stream_read(stream, 0, &msg, &r->err);
        if (msg != NULL) {
            protobuf_c_message_free_unpacked(msg, NULL);
        }
    } while (r->status == FERRY_OK && msg != NULL);
    rpc_stream_destroy(stream);
    return NULL;
}

static void test_shutdown_with_calls_in_flight(void **state)
{
    fixture_t *f = *state;
    client_result_t unary = {f, FERRY_OK, {0}}, stream = {f, FERRY_OK, {0}};
    pthread_t t_unary, t_stream;
    long long start, elapsed;

    assert_int_equal(pthread_create(&t_unary, NULL, held_get_main, &unary), 0);
    assert_int_equal(pthread_create(&t_stream, NULL, held_watch_main, &stream), 0);
    assert_true(fixture_wait(f, both_held, WAIT_MS));

    start = fixture_now_ms();
    rpc_server_shutdown(f->server, 300);
    elapsed = fixture_now_ms() - start;
    assert_true(elapsed < 300 + WAIT_MS);
    assert_int_equal(f->cancels, 2);

    pthread_join(t_unary, NULL);
    pthread_join(t_stream, NULL);
    assert_int_not_equal(unary.status, FERRY_OK);
    assert_int_not_equal(unary.err.grpc_code, 0);
    assert_int_not_equal(stream.status, FERRY_OK);
    assert_int_not_equal(stream.err.grpc_code, 0);
    /* Idempotent. */
    rpc_server_shutdown(f->server, 300);
}

static void test_call_after_shutdown(void **state)
{
    fixture_t *f = *state;
    Ferry__V1__GetResponse *resp = NULL;
    rpc_error_t err;

    rpc_server_shutdown(f->server, 1000);
    assert_int_equal(get(f, "op", 2000, &resp, &err), FERRY_ERR_UNAVAILABLE);
    assert_int_equal(err.grpc_code, 14);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_unary_echo, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_unary_status_by_code, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_unary_metadata, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_channel_connect, fixture_setup, fixture_teardown),
        cmocka_unit_test(test_a_server_back_from_an_outage_is_reached_at_once),
        cmocka_unit_test_setup_teardown(test_a_second_server_cannot_share_the_port, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_unary_not_found, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_unary_reply_from_other_thread, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_unary_concurrent, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_stream_in_order, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_stream_many, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_stream_timeout_then_cancel, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_stream_metadata, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_stream_cancel_from_another_thread, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_deadline_exceeded, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_malformed_request, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_raw_roundtrip, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_unknown_method, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_oversized_request, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_requests_held_together_bounded, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_request_over_its_method_bound, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_shutdown_with_calls_in_flight, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_call_after_shutdown, fixture_setup, fixture_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
