/*
 * test_rpc_drain.c: the drain deadline (RPC_DRAIN_MS, rpc_drain.c). A
 * streaming call ended while messages are still queued sends its status
 * after them: a client that reads gets every message, then the status; a
 * client that never reads has the call cancelled once it has waited
 * RPC_DRAIN_MS, its queue freed, instead of holding it for ever. A unary
 * call whose client never takes the reply is cancelled the same way, and
 * the bytes its request held against max_held_request_bytes come back. A
 * Health.Watch whose client does not read its changes is ended once they
 * fill its bounded queue. Replies that go out do not wake the drain
 * thread, and a call listed while it waits for an earlier deadline is
 * still cancelled at its own.
 *
 * Every Watch's unsent bytes count in one shared budget too
 * (rpc_send_budget_t): a send past it is refused, and the budget comes
 * back to 0 once the streams are done, whichever way they ended.
 *
 * The fixture's Watch "fail:N" queues N messages of about 1 KiB and fails
 * RESOURCE_EXHAUSTED at once; "fill:N" queues them until one is refused. The client that never
 * reads is a raw HTTP/2 client on a socket: it announces HTTP/2's default 64 KiB stream window (or,
 * for the unary call, a window of 0) and never widens it, so the transport can never take the 200
 * KiB queued (or any reply at all).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "ferry/v1/coordinator.pb-c.h"
#include "grpc/health/v1/health.pb-c.h"
#include "rpc/rpc_int.h"
#include "rpc_fixture.h"

#define WATCH_PATH   "/ferry.v1.Coordinator/Watch"
#define GET_PATH     "/ferry.v1.Coordinator/Get"
#define HEALTH_PATH  "/grpc.health.v1.Health/Watch"
#define HEALTH_FLIPS 1000 /* an even number: the server ends serving */
#define FAT_N        200  /* messages of FIXTURE_FAT_BYTES: about 200 KiB */
#define WAIT_MS      10000
#define SMALL_GETS   200
/* A Get request_id over half of FIXTURE_MAX_HELD: one stuck call holds so
 * much that a second such request is refused. Its request fits the 64 KiB
 * HTTP/2 windows a client may fill before it hears the server's. */
#define BIG_ID_BYTES (FIXTURE_MAX_HELD / 2 + 4096)
#define H2_MAX_FRAME 16384 /* SETTINGS_MAX_FRAME_SIZE's default */

/* --- a raw HTTP/2 client that never reads ------------------------------- */

/* Appends a frame header (RFC 7540 4.1) to out at *n. */
static void h2_frame(uint8_t *out, size_t *n, uint8_t type, uint8_t flags, uint32_t stream,
                     size_t len)
{
    uint8_t *p = out + *n;

    p[0] = (uint8_t)(len >> 16);
    p[1] = (uint8_t)(len >> 8);
    p[2] = (uint8_t)len;
    p[3] = type;
    p[4] = flags;
    p[5] = (uint8_t)(stream >> 24);
    p[6] = (uint8_t)(stream >> 16);
    p[7] = (uint8_t)(stream >> 8);
    p[8] = (uint8_t)stream;
    *n += 9;
}

/* A header field without indexing or Huffman (RFC 7541 6.2.2). */
static void hpack_literal(uint8_t *out, size_t *n, const char *name, const char *value)
{
    size_t nl = strlen(name), vl = strlen(value);

    out[(*n)++] = 0;
    out[(*n)++] = (uint8_t)nl;
    memcpy(out + *n, name, nl);
    *n += nl;
    out[(*n)++] = (uint8_t)vl;
    memcpy(out + *n, value, vl);
    *n += vl;
}

/* Opens a call of `path` with request `req` on a socket whose owner never
 * reads it. The client's SETTINGS announce a stream window of `window`
 * bytes (-1: HTTP/2's default of 64 KiB), never widened. */
static int stuck_call_open(int port, const char *path, const ProtobufCMessage *req, long window)
{
    static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    size_t body = protobuf_c_message_get_packed_size(req);
    size_t cap = 1024 + 5 + body + (5 + body) / H2_MAX_FRAME * 9 + 9;
    uint8_t *out = malloc(cap), *msg = malloc(5 + body), headers[512];
    char authority[32];
    size_t n = 0, hn = 0, sent = 0;
    int rcvbuf = 4096;
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    assert_non_null(out);
    assert_non_null(msg);
    assert_true(fd >= 0);
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)), 0);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&addr, sizeof(addr)), 0);

    memcpy(out, preface, sizeof(preface) - 1);
    n = sizeof(preface) - 1;
    if (window < 0) {
        h2_frame(out, &n, 4, 0, 0, 0); /* SETTINGS: all defaults */
    } else {
        h2_frame(out, &n, 4, 0, 0, 6); /* SETTINGS_INITIAL_WINDOW_SIZE */
        out[n++] = 0;
        out[n++] = 4;
        out[n++] = (uint8_t)(window >> 24);
        out[n++] = (uint8_t)(window >> 16);
        out[n++] = (uint8_t)(window >> 8);
        out[n++] = (uint8_t)window;
    }
    h2_frame(out, &n, 4, 1, 0, 0); /* ack the server's, unread */
    snprintf(authority, sizeof(authority), "127.0.0.1:%d", port);
    hpack_literal(headers, &hn, ":method", "POST");
    hpack_literal(headers, &hn, ":scheme", "http");
    hpack_literal(headers, &hn, ":path", path);
    hpack_literal(headers, &hn, ":authority", authority);
    hpack_literal(headers, &hn, "content-type", "application/grpc");
    hpack_literal(headers, &hn, "te", "trailers");
    h2_frame(out, &n, 1, 4, 1, hn); /* HEADERS, END_HEADERS */
    memcpy(out + n, headers, hn);
    n += hn;
    msg[0] = 0; /* not compressed */
    msg[1] = (uint8_t)(body >> 24);
    msg[2] = (uint8_t)(body >> 16);
    msg[3] = (uint8_t)(body >> 8);
    msg[4] = (uint8_t)body;
    protobuf_c_message_pack(req, msg + 5);
    /* DATA frames of H2_MAX_FRAME at most, END_STREAM on the last. */
    while (sent < 5 + body) {
        size_t len = 5 + body - sent < H2_MAX_FRAME ? 5 + body - sent : H2_MAX_FRAME;
        h2_frame(out, &n, 0, sent + len == 5 + body ? 1 : 0, 1, len);
        memcpy(out + n, msg + sent, len);
        n += len;
        sent += len;
    }
    assert_true(n <= cap);
    assert_int_equal(send(fd, out, n, 0), (ssize_t)n);
    free(msg);
    free(out);
    return fd;
}

/* Opens Watch(request_id_prefix) on a socket whose owner never reads it. */
static int stuck_watch_open(int port, const char *prefix)
{
    Ferry__V1__WatchRequest req = FERRY__V1__WATCH_REQUEST__INIT;

    req.request_id_prefix = (char *)prefix;
    return stuck_call_open(port, WATCH_PATH, &req.base, -1);
}

/* Plays a client that is alive but never reads its stream: reads the
 * socket (which sends no WINDOW_UPDATE: the window stays shut) and answers
 * PINGs, until stream 1 ends: 'r' for RST_STREAM, 's' for trailers
 * (HEADERS with END_STREAM), 'c' when the connection closes; 0 when
 * timeout_ms passes. */
static char stuck_watch_wait_end_trailers(int fd, int timeout_ms, char *trailers, size_t cap);

static char stuck_watch_wait_end(int fd, int timeout_ms)
{
    return stuck_watch_wait_end_trailers(fd, timeout_ms, NULL, 0);
}

/* As stuck_watch_wait_end; on 's', the trailers' HPACK block goes into
 * trailers (cap bytes, NUL-terminated, cut): gRPC core writes literals
 * without Huffman coding, so grpc-status and grpc-message read as text. */
static char stuck_watch_wait_end_trailers(int fd, int timeout_ms, char *trailers, size_t cap)
{
    static uint8_t buf[1 << 18];
    long long deadline = fixture_now_ms() + timeout_ms;
    size_t have = 0;

    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        long long left;
        ssize_t got;

        while (have >= 9) {
            size_t len = (size_t)buf[0] << 16 | (size_t)buf[1] << 8 | buf[2];
            uint8_t type = buf[3], flags = buf[4];
            uint32_t stream =
                ((uint32_t)buf[5] << 24 | (uint32_t)buf[6] << 16 | (uint32_t)buf[7] << 8 | buf[8]) &
                0x7fffffffu;
            if (have < 9 + len) {
                break;
            }
            if (stream == 1 && type == 3) {
                return 'r';
            }
            if (type == 6 && (flags & 1) == 0 && len == 8) {
                uint8_t ack[17];
                size_t n = 0;
                h2_frame(ack, &n, 6, 1, 0, 8); /* PING, ACK */
                memcpy(ack + n, buf + 9, 8);
                assert_int_equal(send(fd, ack, sizeof(ack), 0), (ssize_t)sizeof(ack));
            }
            if (stream == 1 && type == 1 && (flags & 1) != 0) {
                if (trailers != NULL) {
                    size_t n = len < cap - 1 ? len : cap - 1;
                    for (size_t i = 0; i < n; i++) { /* NULs would cut the search */
                        trailers[i] = buf[9 + i] != 0 ? (char)buf[9 + i] : ' ';
                    }
                    trailers[n] = '\0';
                }
                return 's';
            }
            memmove(buf, buf + 9 + len, have - 9 - len);
            have -= 9 + len;
        }
        assert_true(have < sizeof(buf)); /* no frame is larger: 16 KiB at most */
        left = deadline - fixture_now_ms();
        if (left <= 0 || poll(&pfd, 1, (int)left) <= 0) {
            return 0;
        }
        got = recv(fd, buf + have, sizeof(buf) - have, 0);
        if (got <= 0) {
            return 'c';
        }
        have += (size_t)got;
    }
}

static bool one_ended(const fixture_t *f)
{
    return f->calls_ended >= 1;
}

static bool two_ended(const fixture_t *f)
{
    return f->calls_ended >= 2;
}

static bool fill_done(const fixture_t *f)
{
    return f->fill_done;
}

/* Bytes the Watch streams hold unsent together (the fixture's budget). */
static size_t budget_used(const fixture_t *f)
{
    return rpc_send_budget_used(f->budget);
}

/* A window-0 client's FAT_N messages: all but the one the transport has. */
static bool budget_holds_fat(const fixture_t *f)
{
    return budget_used(f) >= (FAT_N - 1) * FIXTURE_FAT_BYTES;
}

/* A default-window client's: all but the 64 KiB the transport took. */
static bool budget_holds_past_window(const fixture_t *f)
{
    return budget_used(f) >= FAT_N * FIXTURE_FAT_BYTES - 65535;
}

static bool some_held(const fixture_t *f)
{
    return atomic_load(&f->server->held_request_bytes) > 0;
}

static bool none_held(const fixture_t *f)
{
    return atomic_load(&f->server->held_request_bytes) == 0;
}

static size_t health_watchers(const fixture_t *f)
{
    rpc_health_t *health = &f->server->health;

    pthread_mutex_lock(&health->lock);
    size_t n = health->n_watchers;
    pthread_mutex_unlock(&health->lock);
    return n;
}

/* Waits until the server's health has n watchers, for up to timeout_ms.
 * Not through fixture_wait: its predicate runs under the fixture's lock,
 * which the call-ended observer takes under a call's lock, and the health
 * lock is taken before a call's (rpc_health.c); polled, with no lock held
 * but the health lock. */
static bool wait_health_watchers(const fixture_t *f, size_t n, int timeout_ms)
{
    long long deadline = fixture_now_ms() + timeout_ms;
    const struct timespec poll_interval = {.tv_nsec = 10 * 1000000L};

    while (health_watchers(f) != n) {
        if (fixture_now_ms() >= deadline) {
            return false;
        }
        nanosleep(&poll_interval, NULL);
    }
    return true;
}

/* Get(request_id: BIG_ID_BYTES of `fill`) through the fixture's channel. */
static ferry_status_t big_get(fixture_t *f, char fill, rpc_error_t *err)
{
    Ferry__V1__GetRequest req = FERRY__V1__GET_REQUEST__INIT;
    Ferry__V1__GetResponse *resp = NULL;
    char *id = malloc(BIG_ID_BYTES + 1);
    ferry_status_t status;

    assert_non_null(id);
    memset(id, fill, BIG_ID_BYTES);
    id[BIG_ID_BYTES] = '\0';
    req.request_id = id;
    status = rpc_unary(f->channel, GET_PATH, &req.base, &ferry__v1__get_response__descriptor,
                       WAIT_MS, (ProtobufCMessage **)&resp, err);
    if (resp != NULL) {
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    }
    free(id);
    return status;
}

static uint64_t drain_wakes(const fixture_t *f)
{
    rpc_drain_t *drain = &f->server->drain;

    pthread_mutex_lock(&drain->lock);
    uint64_t n = drain->wakes;
    pthread_mutex_unlock(&drain->lock);
    return n;
}

/* A Get(request_id) of a few bytes through the fixture's channel. */
static void small_get(fixture_t *f, int i)
{
    Ferry__V1__GetRequest req = FERRY__V1__GET_REQUEST__INIT;
    Ferry__V1__GetResponse *resp = NULL;
    rpc_error_t err;
    char id[32];

    snprintf(id, sizeof(id), "small-%d", i);
    req.request_id = id;
    assert_int_equal(rpc_unary(f->channel, GET_PATH, &req.base,
                               &ferry__v1__get_response__descriptor, WAIT_MS,
                               (ProtobufCMessage **)&resp, &err),
                     FERRY_OK);
    protobuf_c_message_free_unpacked(&resp->base, NULL);
}

/* --- tests ----------------------------------------------------------------- */

static void test_a_client_that_never_reads_is_cancelled_after_the_deadline(void **state)
{
    fixture_t *f = *state;
    char prefix[32], end;
    int fd;

    snprintf(prefix, sizeof(prefix), "fail:%d", FAT_N);
    fd = stuck_watch_open(f->port, prefix);
    /* What the transport has not taken (all but the 64 KiB window) counts
     * in the budget while the call waits. */
    assert_true(fixture_wait(f, budget_holds_past_window, WAIT_MS / 2));
    /* Ended at once by its handler, its queue never taken: only the drain
     * deadline ends the call. */
    end = stuck_watch_wait_end(fd, RPC_DRAIN_MS + 20000);
    assert_true(end == 'r' || end == 's');
    assert_true(fixture_wait(f, one_ended, WAIT_MS));
    pthread_mutex_lock(&f->lock);
    assert_int_equal(f->last_code, 1); /* CANCELLED, as the client saw it */
    pthread_mutex_unlock(&f->lock);
    assert_int_equal(budget_used(f), 0); /* the dropped queue is given back */
    close(fd);
}

/* A unary call answered at once whose client shut its window (0) and set
 * no deadline: the reply can never go out, so the call stays ENDING, and
 * its request's bytes stay counted, until the drain deadline cancels it. */
static void test_a_unary_reply_never_taken_is_cancelled_after_the_deadline(void **state)
{
    fixture_t *f = *state;
    Ferry__V1__GetRequest req = FERRY__V1__GET_REQUEST__INIT;
    rpc_error_t err;
    char *id = malloc(BIG_ID_BYTES + 1);
    char end;
    int fd;

    assert_non_null(id);
    memset(id, 's', BIG_ID_BYTES);
    id[BIG_ID_BYTES] = '\0';
    req.request_id = id;
    fd = stuck_call_open(f->port, GET_PATH, &req.base, 0);
    free(id);
    assert_true(fixture_wait(f, some_held, WAIT_MS));
    /* Held: a second request as large passes FIXTURE_MAX_HELD. */
    assert_int_equal(big_get(f, 'a', &err), FERRY_ERR_RESOURCE_EXHAUSTED);
    end = stuck_watch_wait_end(fd, RPC_DRAIN_MS + 20000);
    assert_true(end == 'r' || end == 's');
    assert_true(fixture_wait(f, none_held, WAIT_MS));
    assert_int_equal(big_get(f, 'b', &err), FERRY_OK);
    close(fd);
}

/* Each unary call is listed until its reply has gone out; the drain thread,
 * waiting for the first listing's deadline, is not woken for the others
 * (it was, once per call: a context switch and a turn on the drain lock
 * each). A call that never drains, listed while the thread waits for an
 * earlier deadline, is still cancelled at its own. */
static void test_replies_that_go_out_do_not_wake_the_drain_thread(void **state)
{
    fixture_t *f = *state;
    Ferry__V1__GetRequest req = FERRY__V1__GET_REQUEST__INIT;
    uint64_t before;
    char end;
    int fd;

    small_get(f, 0); /* the thread now waits for its deadline, or none */
    before = drain_wakes(f);
    for (int i = 1; i <= SMALL_GETS; i++) {
        small_get(f, i);
    }
    /* One wake-up at most: the thread may have been idle at the start. */
    assert_true(drain_wakes(f) - before <= 1);

    req.request_id = "never-taken";
    fd = stuck_call_open(f->port, GET_PATH, &req.base, 0);
    end = stuck_watch_wait_end(fd, 2 * RPC_DRAIN_MS + 20000);
    assert_true(end == 'r' || end == 's');
    assert_true(fixture_wait(f, none_held, WAIT_MS));
    close(fd);
}

/* A Health.Watch whose client never reads (a window of 0) while health
 * flaps: its queue of changes is bounded (HEALTH_WATCH_QUEUE_MAX); past it
 * the stream is ended and taken off the watcher list, and the call is over
 * by the drain deadline. Before, each change queued one more message for
 * as long as the connection lived. */
static void test_an_unread_health_watch_is_ended(void **state)
{
    fixture_t *f = *state;
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    char end;
    int fd;

    req.service = "";
    fd = stuck_call_open(f->port, HEALTH_PATH, &req.base, 0);
    assert_true(wait_health_watchers(f, 1, WAIT_MS));
    for (int i = 0; i < HEALTH_FLIPS; i++) {
        rpc_server_set_serving(f->server, "", i % 2 != 0);
    }
    assert_true(wait_health_watchers(f, 0, WAIT_MS));
    end = stuck_watch_wait_end(fd, RPC_DRAIN_MS + 20000);
    assert_true(end == 'r' || end == 's');
    close(fd);
}

static void test_a_reader_gets_every_message_then_the_status(void **state)
{
    fixture_t *f = *state;
    Ferry__V1__WatchRequest req = FERRY__V1__WATCH_REQUEST__INIT;
    rpc_stream_t *stream = NULL;
    rpc_error_t err;
    char prefix[32];
    int got = 0;

    snprintf(prefix, sizeof(prefix), "fail:%d", FAT_N);
    req.request_id_prefix = prefix;
    assert_int_equal(rpc_stream_open(f->channel, WATCH_PATH, &req.base,
                                     &ferry__v1__watch_response__descriptor, 60000, &stream),
                     FERRY_OK);
    for (;;) {
        Ferry__V1__WatchResponse *msg = NULL;
        ferry_status_t status = rpc_stream_read(stream, WAIT_MS, (ProtobufCMessage **)&msg, &err);
        if (status != FERRY_OK) {
            assert_int_equal(status, FERRY_ERR_RESOURCE_EXHAUSTED);
            assert_string_equal(err.message, "failed after 200 messages");
            break;
        }
        assert_non_null(msg);
        got++;
        assert_int_equal(msg->header->revision, got);
        assert_int_equal(strlen(msg->header->coordinator), FIXTURE_FAT_BYTES);
        protobuf_c_message_free_unpacked(&msg->base, NULL);
    }
    assert_int_equal(got, FAT_N);
    rpc_stream_destroy(stream);
    assert_true(fixture_wait(f, one_ended, WAIT_MS));
    pthread_mutex_lock(&f->lock);
    assert_int_equal(f->last_code, 8); /* RESOURCE_EXHAUSTED */
    pthread_mutex_unlock(&f->lock);
    assert_int_equal(budget_used(f), 0); /* all taken by the transport */
}

/* Two streams on clients whose windows are 0: the first holds FAT_N KiB,
 * the second queues until the budget they share refuses it (its own
 * limit is none), and says so (over_budget). Once the drain deadline has
 * cancelled both, the budget is back to 0: every byte counted was given
 * back where it left a queue. */
static void test_a_send_past_the_shared_budget_is_refused_and_given_back(void **state)
{
    fixture_t *f = *state;
    Ferry__V1__WatchRequest req = FERRY__V1__WATCH_REQUEST__INIT;
    char prefix[32];
    int fds[2];

    snprintf(prefix, sizeof(prefix), "fail:%d", FAT_N);
    req.request_id_prefix = prefix;
    fds[0] = stuck_call_open(f->port, WATCH_PATH, &req.base, 0);
    assert_true(fixture_wait(f, budget_holds_fat, WAIT_MS));
    req.request_id_prefix = "fill:1000";
    fds[1] = stuck_call_open(f->port, WATCH_PATH, &req.base, 0);
    assert_true(fixture_wait(f, fill_done, WAIT_MS));
    pthread_mutex_lock(&f->lock);
    assert_true(f->fill_over_budget);
    assert_true(f->fill_sent > 0);
    assert_true(f->fill_sent <
                (FIXTURE_WATCH_BUDGET - FAT_N * FIXTURE_FAT_BYTES) / FIXTURE_FAT_BYTES);
    pthread_mutex_unlock(&f->lock);
    assert_true(budget_used(f) <= FIXTURE_WATCH_BUDGET);
    assert_true(budget_used(f) > FIXTURE_WATCH_BUDGET - 2 * FIXTURE_FAT_BYTES);
    for (int i = 0; i < 2; i++) {
        char end = stuck_watch_wait_end(fds[i], RPC_DRAIN_MS + 20000);
        assert_true(end == 'r' || end == 's');
    }
    assert_true(fixture_wait(f, two_ended, WAIT_MS));
    assert_int_equal(budget_used(f), 0);
    close(fds[0]);
    close(fds[1]);
}

static bool kept_two(const fixture_t *f)
{
    return f->kept[0] != NULL && f->kept[1] != NULL;
}

static bool kept_one(const fixture_t *f)
{
    return f->kept[0] != NULL;
}

static size_t shared_cost(const fixture_t *f, int entries)
{
    return rpc_msg_size(f->shared) + (size_t)entries * RPC_OUTMSG_OVERHEAD;
}

static bool budget_holds_shared_6(const fixture_t *f)
{
    return budget_used(f) == shared_cost(f, 6);
}

static bool budget_holds_shared_3(const fixture_t *f)
{
    return budget_used(f) == shared_cost(f, 3);
}

static bool budget_empty(const fixture_t *f)
{
    return budget_used(f) == 0;
}

/* The kept call i (not under f->lock: the observer takes it under a
 * call's lock); the fixture's reference stays until its client goes. */
static rpc_call_t *kept_call(fixture_t *f, int i)
{
    rpc_call_t *call;

    pthread_mutex_lock(&f->lock);
    call = f->kept[i];
    pthread_mutex_unlock(&f->lock);
    return call;
}

/* Polls rpc_call_behind_bytes(call) until it reaches at least `want`, or
 * timeout_ms passes (it changes with time, not on an event). */
static bool wait_behind(rpc_call_t *call, size_t want, int timeout_ms)
{
    long long deadline = fixture_now_ms() + timeout_ms;

    while (rpc_call_behind_bytes(call) < want) {
        if (fixture_now_ms() >= deadline) {
            return false;
        }
        poll(NULL, 0, 10);
    }
    return true;
}

/* A message packed once and queued three times on each of two streams
 * that never read: the budget counts its bytes once, and each of the six
 * queue entries' overhead (review-s30b H2, M1: each stream counted its own
 * copy, so an honest fan-out passed the bound; the overhead went
 * uncounted). Given back whole once the clients are gone. */
static void test_a_message_shared_by_streams_counts_once(void **state)
{
    fixture_t *f = *state;
    Ferry__V1__WatchRequest req = FERRY__V1__WATCH_REQUEST__INIT;
    int fds[2];

    req.request_id = "share:3";
    fds[0] = stuck_call_open(f->port, WATCH_PATH, &req.base, 0);
    fds[1] = stuck_call_open(f->port, WATCH_PATH, &req.base, 0);
    assert_true(fixture_wait(f, kept_two, WAIT_MS));
    assert_true(fixture_wait(f, budget_holds_shared_6, WAIT_MS));
    assert_int_equal(budget_used(f), shared_cost(f, 6));
    close(fds[0]);
    close(fds[1]);
    assert_true(fixture_wait(f, budget_empty, WAIT_MS));
}

/* rpc_call_fail_now on a stream whose client never reads: what waits
 * behind the message in flight is dropped at once, the message in flight
 * as the call is cancelled with the status (not at the drain deadline),
 * and the client sees that status and its message in the trailers. */
static void test_fail_now_drops_what_the_client_has_not_taken(void **state)
{
    fixture_t *f = *state;
    Ferry__V1__WatchRequest req = FERRY__V1__WATCH_REQUEST__INIT;
    char trailers[1024];
    rpc_call_t *call;
    char end;
    int fd;

    req.request_id = "share:3";
    fd = stuck_call_open(f->port, WATCH_PATH, &req.base, 0);
    assert_true(fixture_wait(f, kept_one, WAIT_MS));
    assert_true(fixture_wait(f, budget_holds_shared_3, WAIT_MS));
    pthread_mutex_lock(&f->lock);
    call = f->kept[0];
    f->kept[0] = NULL; /* the test's reference now */
    pthread_mutex_unlock(&f->lock);
    assert_true(wait_behind(call, RPC_OUTMSG_OVERHEAD, WAIT_MS));
    /* The second entry waits (the third is the newest unit); each shares
     * the message, so ending the call frees its overhead only. */
    assert_true(rpc_call_behind_bytes(call) >= RPC_OUTMSG_OVERHEAD);
    rpc_call_fail_now(call, FERRY_ERR_RESOURCE_EXHAUSTED, "dropped by the test");
    assert_int_equal(rpc_call_behind_bytes(call), 0);
    assert_true(budget_used(f) <= shared_cost(f, 1)); /* the message in flight at most */
    rpc_call_unref(call);
    end = stuck_watch_wait_end_trailers(fd, RPC_DRAIN_MS / 2, trailers, sizeof(trailers));
    assert_int_equal(end, 's');
    assert_non_null(strstr(trailers, "dropped by the test"));
    assert_true(fixture_wait(f, one_ended, RPC_DRAIN_MS / 2));
    pthread_mutex_lock(&f->lock);
    assert_int_equal(f->last_code, 8); /* RESOURCE_EXHAUSTED */
    pthread_mutex_unlock(&f->lock);
    assert_true(fixture_wait(f, budget_empty, RPC_DRAIN_MS / 2));
    close(fd);
}

/* How far behind a stream is counts what ending it frees, and not what a
 * client that keeps up holds too: a stream whose queue holds shared
 * messages ranks by their entries only (the bytes stay while others hold
 * them), one with messages of its own by those; the newest unit does not
 * count while it waits whole (review-s31 H1: a reader that kept up,
 * holding a large shared revision just queued, outranked a client that
 * never read). */
static void test_behind_counts_what_ending_the_stream_frees(void **state)
{
    fixture_t *f = *state;
    Ferry__V1__WatchRequest req = FERRY__V1__WATCH_REQUEST__INIT;
    long long opened = fixture_now_ms();
    size_t shared_behind, own_behind, entries;
    int fds[2];

    req.request_id = "share:3";
    fds[0] = stuck_call_open(f->port, WATCH_PATH, &req.base, 0);
    assert_true(fixture_wait(f, kept_one, WAIT_MS));
    shared_behind = rpc_call_behind_bytes(kept_call(f, 0));
    /* One entry waits behind the message in flight (two before the first
     * goes), the third being the newest; once the one in flight has been
     * stuck, all three count (a loaded machine may take that long:
     * review-s32 L1). */
    entries = fixture_now_ms() - opened < RPC_STUCK_MS ? 2 : 3;
    req.request_id = "own:3";
    fds[1] = stuck_call_open(f->port, WATCH_PATH, &req.base, 0);
    assert_true(fixture_wait(f, kept_two, WAIT_MS));
    own_behind = rpc_call_behind_bytes(kept_call(f, 1));
    assert_true(shared_behind >= RPC_OUTMSG_OVERHEAD);
    assert_true(shared_behind <= entries * RPC_OUTMSG_OVERHEAD);
    assert_true(own_behind >= FIXTURE_FAT_BYTES + RPC_OUTMSG_OVERHEAD);
    assert_true(own_behind > shared_behind);
    close(fds[0]);
    close(fds[1]);
    assert_true(fixture_wait(f, budget_empty, WAIT_MS));
}

/* The bytes ending a stream frees (rpc_call_sole_bytes): a shared
 * message's only once no other stream holds it, counted once however many
 * of its own entries hold it; its entries' overhead never (review-s37 H1:
 * a client that stopped reading a revision every other stream had read held
 * all of it, while behind counted its entries only). */
static void test_sole_bytes_count_a_shared_message_with_its_last_holder(void **state)
{
    fixture_t *f = *state;
    Ferry__V1__WatchRequest req = FERRY__V1__WATCH_REQUEST__INIT;
    int fds[2];

    req.request_id = "share:3";
    fds[0] = stuck_call_open(f->port, WATCH_PATH, &req.base, 0);
    fds[1] = stuck_call_open(f->port, WATCH_PATH, &req.base, 0);
    assert_true(fixture_wait(f, kept_two, WAIT_MS));
    assert_true(fixture_wait(f, budget_holds_shared_6, WAIT_MS));
    assert_int_equal(rpc_call_sole_bytes(kept_call(f, 0)), 0);
    assert_int_equal(rpc_call_sole_bytes(kept_call(f, 1)), 0);
    close(fds[1]);
    assert_true(fixture_wait(f, budget_holds_shared_3, WAIT_MS));
    assert_int_equal(rpc_call_sole_bytes(kept_call(f, 0)), rpc_msg_size(f->shared));
    assert_int_equal(rpc_call_sole_bytes(kept_call(f, 0)), rpc_msg_size(f->shared)); /* reset */
    close(fds[0]);
    assert_true(fixture_wait(f, budget_empty, WAIT_MS));
}

/* How far behind live a stream's client reads (rpc_call_lag_ms): the age
 * of the oldest message it has not taken, growing while it takes none,
 * and never more than the time since it was queued. */
static void test_lag_is_the_age_of_the_oldest_message_not_taken(void **state)
{
    fixture_t *f = *state;
    Ferry__V1__WatchRequest req = FERRY__V1__WATCH_REQUEST__INIT;
    long long opened = fixture_now_ms(), deadline;
    int fd;

    req.request_id = "share:3";
    fd = stuck_call_open(f->port, WATCH_PATH, &req.base, 0);
    assert_true(fixture_wait(f, kept_one, WAIT_MS));
    deadline = fixture_now_ms() + WAIT_MS;
    while (rpc_call_lag_ms(kept_call(f, 0)) < 300) {
        assert_true(fixture_now_ms() < deadline);
        poll(NULL, 0, 10);
    }
    assert_true(rpc_call_lag_ms(kept_call(f, 0)) <= fixture_now_ms() - opened);
    close(fd);
    assert_true(fixture_wait(f, budget_empty, WAIT_MS));
}

/* A message whose changes happened earlier (rpc_msg_set_born: a replay of
 * old revisions) counts in the lag from then, not from its queueing: a
 * client that reopens its stream from an old revision is as far behind
 * live as before (review-s37e H1: each reopening started its lag at 0). */
static void test_lag_of_a_replay_counts_from_its_changes(void **state)
{
    fixture_t *f = *state;
    Ferry__V1__WatchRequest req = FERRY__V1__WATCH_REQUEST__INIT;
    int fd;

    rpc_msg_set_born(f->shared, fixture_now_ms() - 60000);
    req.request_id = "share:3";
    fd = stuck_call_open(f->port, WATCH_PATH, &req.base, 0);
    assert_true(fixture_wait(f, kept_one, WAIT_MS));
    assert_true(rpc_call_lag_ms(kept_call(f, 0)) >= 60000);
    close(fd);
    assert_true(fixture_wait(f, budget_empty, WAIT_MS));
}

/* A revision in several messages whose first is in flight is still the
 * newest: what waits of it does not count (review-s31b M1: a prefix reader
 * that kept up outranked clients that never read), until the first has
 * been in flight for RPC_STUCK_MS. The second message is the larger, so
 * counting it would show. */
static void test_the_rest_of_the_newest_unit_does_not_count(void **state)
{
    fixture_t *f = *state;
    Ferry__V1__WatchRequest req = FERRY__V1__WATCH_REQUEST__INIT;
    int fd;

    long long opened = fixture_now_ms();
    size_t behind;

    req.request_id = "pair";
    fd = stuck_call_open(f->port, WATCH_PATH, &req.base, 0);
    assert_true(fixture_wait(f, kept_one, WAIT_MS));
    behind = rpc_call_behind_bytes(kept_call(f, 0));
    if (fixture_now_ms() - opened < RPC_STUCK_MS) {
        /* The small one went in flight after `opened`: not stuck yet. */
        assert_true(behind < FIXTURE_FAT_BYTES);
    } else {
        print_message("the machine took %d ms or more to get here: not checked before the "
                      "message in flight is stuck\n",
                      RPC_STUCK_MS);
    }
    /* Stuck, all of it counts: the fat one too (review-s31c L1). */
    assert_true(wait_behind(kept_call(f, 0), FIXTURE_FAT_BYTES, RPC_STUCK_MS + WAIT_MS));
    close(fd);
    assert_true(fixture_wait(f, budget_empty, WAIT_MS));
}

/* A message that stays in flight (a window too small for it) counts once
 * it has been for RPC_STUCK_MS, though nothing waits behind it (review-s31
 * M1: a stream holding one large message of its own in flight was never
 * the one ended). */
static void test_a_message_stuck_in_flight_counts_behind(void **state)
{
    fixture_t *f = *state;
    Ferry__V1__WatchRequest req = FERRY__V1__WATCH_REQUEST__INIT;
    int fd;

    req.request_id = "own:1";
    fd = stuck_call_open(f->port, WATCH_PATH, &req.base, 0);
    assert_true(fixture_wait(f, kept_one, WAIT_MS));
    assert_true(wait_behind(kept_call(f, 0), FIXTURE_FAT_BYTES, RPC_STUCK_MS + WAIT_MS));
    close(fd);
    assert_true(fixture_wait(f, budget_empty, WAIT_MS));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            test_a_client_that_never_reads_is_cancelled_after_the_deadline, fixture_setup,
            fixture_teardown),
        cmocka_unit_test_setup_teardown(
            test_a_unary_reply_never_taken_is_cancelled_after_the_deadline, fixture_setup,
            fixture_teardown),
        cmocka_unit_test_setup_teardown(test_replies_that_go_out_do_not_wake_the_drain_thread,
                                        fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_an_unread_health_watch_is_ended, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_a_reader_gets_every_message_then_the_status,
                                        fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(
            test_a_send_past_the_shared_budget_is_refused_and_given_back, fixture_setup,
            fixture_teardown),
        cmocka_unit_test_setup_teardown(test_a_message_shared_by_streams_counts_once, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_behind_counts_what_ending_the_stream_frees,
                                        fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_sole_bytes_count_a_shared_message_with_its_last_holder,
                                        fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_lag_is_the_age_of_the_oldest_message_not_taken,
                                        fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_lag_of_a_replay_counts_from_its_changes, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_the_rest_of_the_newest_unit_does_not_count,
                                        fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_a_message_stuck_in_flight_counts_behind, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_fail_now_drops_what_the_client_has_not_taken,
                                        fixture_setup, fixture_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
