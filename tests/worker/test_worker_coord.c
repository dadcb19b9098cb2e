/*
 * test_worker_coord.c: libferry bound to a real coordinator (real etcd, real
 * ferry-coordinator process), with the other side in a real child process:
 *   - a writer SIGKILLed mid-transfer: the receiver ends ERRORED, told by
 *     the coordinator once the writer's claim expires; it never hangs;
 *   - the receiver cancels while a writer is mid-transfer: the writer ends
 *     CANCELLED or ERRORED, not hung;
 *   - eight operations at once between the same two workers;
 *   - destroying a published operation unfinished cancels it at the
 *     coordinator;
 *   - the session lease is renewed (with its lease token) while the
 *     process lives;
 *   - a bound operation follows its record through the client's one Watch
 *     stream, with no Get polling; when the stream breaks the client
 *     resumes it from the last revision it saw, and a change made while it
 *     was down arrives as a replayed event, with no Get; when the replica
 *     no longer holds those changes (restarted: OUT_OF_RANGE) the client
 *     watches afresh and reads its records again;
 *   - one admission authority, one outcome (the coordinator's Claim, before
 *     any byte): two writers racing on one request ID (exactly one wins, the
 *     receiver holds exactly its bytes, the record names it); the
 *     coordinator unreachable before the claim (no byte moves, the record
 *     stays open) and after it (the transfer completes and the Complete,
 *     retried, makes the record COMPLETE). Interleavings are forced with the
 *     FERRY_TEST_PAUSE seam of coord_client.c and SIGSTOP/SIGCONT of the
 *     real coordinator.
 * Children are this executable again (--role ...), talking over pipes.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ferry/coordinator.h>

#include "coord_harness.h"
#include "worker/cli/pattern.h"
#include "worker/coord_client.h"
#include "worker/ferry_int.h"

#define TTL   2
#define TOKEN "coord-token-0123456789"
#define SIZE  (1 << 20)
#define N_OPS 8

static test_etcd_t etcd;
static test_coord_t coord;
static ferry_connector_t *conn;
static ferry_coordinator_t *client;
static rpc_channel_t *chan;
static const char *self_exe;

/* ---- children ------------------------------------------------------------ */

typedef struct {
    pid_t pid;
    int to;   /* parent writes commands */
    int from; /* parent reads lines */
} child_t;

static void say(int fd, const char *line)
{
    size_t n = strlen(line);
    if (write(fd, line, n) != (ssize_t)n) {
        _exit(90);
    }
}

/* Reads one line (up to '\n') within timeout_ms; false on timeout or EOF. */
static bool hear(int fd, char *buf, size_t cap, int timeout_ms)
{
    size_t n = 0;
    long long deadline = test_now_ms() + timeout_ms;

    while (n + 1 < cap) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        long long left = deadline - test_now_ms();
        if (left <= 0 || poll(&p, 1, (int)left) <= 0 || read(fd, buf + n, 1) != 1) {
            return false;
        }
        if (buf[n] == '\n') {
            break;
        }
        n++;
    }
    buf[n] = '\0';
    return true;
}

static child_t spawn(const char *role)
{
    int to[2], from[2];
    char a[16], b[16];
    child_t c;

    assert_int_equal(pipe(to), 0);
    assert_int_equal(pipe(from), 0);
    c.pid = fork();
    assert_true(c.pid >= 0);
    if (c.pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        close(to[1]);
        close(from[0]);
        snprintf(a, sizeof(a), "%d", to[0]);
        snprintf(b, sizeof(b), "%d", from[1]);
        execl(self_exe, self_exe, "--role", role, coord.target, a, b, (char *)NULL);
        _exit(127);
    }
    close(to[0]);
    close(from[1]);
    fcntl(to[1], F_SETFD, FD_CLOEXEC);
    fcntl(from[0], F_SETFD, FD_CLOEXEC);
    c.to = to[1];
    c.from = from[0];
    return c;
}

static int child_exit(child_t *c, int timeout_ms)
{
    long long deadline = test_now_ms() + timeout_ms;
    int status = 0;

    while (waitpid(c->pid, &status, WNOHANG) == 0) {
        if (test_now_ms() > deadline) {
            kill(c->pid, SIGKILL);
            waitpid(c->pid, &status, 0);
            return -1;
        }
        poll(NULL, 0, 20);
    }
    close(c->to);
    close(c->from);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void child_setup(const char *target, ferry_connector_t **conn_p,
                        ferry_coordinator_t **client_p)
{
    ferry_coordinator_params_t cp = {.target = target};
    if (ferry_connector_create(NULL, conn_p) != FERRY_OK ||
        ferry_coordinator_connect(&cp, client_p) != FERRY_OK) {
        _exit(91);
    }
}

/* A writer that stops after the data moved and before the notice, says
 * "held", and waits to be killed. */
static int role_stalled_writer(const char *target, int in, int out)
{
    ferry_connector_t *c;
    ferry_coordinator_t *cl;
    uint8_t *buf = malloc(SIZE);
    ferry_descriptor_t d = {.ptr = buf, .size = SIZE, .device = FERRY_DEVICE_HOST_INIT};
    ferry_claim_params_t p = {.field_mask = FERRY_CLAIM_PARAM_FIELD_WAIT,
                              .request_id = "kill-1",
                              .access_token = TOKEN,
                              .wait_ms = 10000};
    ferry_op_t *op;

    (void)in;
    child_setup(target, &c, &cl);
    ferry_pattern_fill(buf, SIZE);
    atomic_store(&ferry__test_hold_notice, true);
    if (ferry_write_begin_by_id(c, cl, &p, &d, 1, &op) != FERRY_OK) {
        return 92;
    }
    for (int i = 0; i < 1000 && !atomic_load(&ferry__test_notice_held); i++) {
        poll(NULL, 0, 10);
    }
    say(out, atomic_load(&ferry__test_notice_held) ? "held\n" : "not held\n");
    for (;;) {
        pause();
    }
}

/* A receiver that publishes, says "published", cancels on "cancel", and
 * exits 0 once its operation is CANCELLED. */
static int role_cancelling_receiver(const char *target, int in, int out)
{
    ferry_connector_t *c;
    ferry_coordinator_t *cl;
    uint8_t *buf = calloc(1, SIZE);
    ferry_descriptor_t d = {.ptr = buf, .size = SIZE, .device = FERRY_DEVICE_HOST_INIT};
    ferry_publish_params_t p = {.request_id = "cancel-1", .access_token = TOKEN};
    ferry_op_t *op;
    char line[32];

    child_setup(target, &c, &cl);
    if (ferry_writable_create(c, &d, 1, &op) != FERRY_OK || ferry_op_publish(op, cl, &p) != 0) {
        return 93;
    }
    say(out, "published\n");
    if (!hear(in, line, sizeof(line), 30000) || strcmp(line, "cancel") != 0) {
        return 94;
    }
    ferry_op_cancel(op);
    say(out, "cancelled\n");
    if (!hear(in, line, sizeof(line), 30000)) {
        return 95;
    }
    ferry_op_destroy(op);
    ferry_coordinator_disconnect(cl);
    ferry_connector_destroy(c);
    free(buf);
    return 0;
}

/* Publishes N_OPS writables, says "published", waits for all, checks every
 * byte: exit 0 only if all arrived intact. */
static int role_many_receiver(const char *target, int in, int out)
{
    ferry_connector_t *c;
    ferry_coordinator_t *cl;
    ferry_op_t *ops[N_OPS];
    uint8_t *bufs[N_OPS];
    char id[32];
    int rc = 0;

    (void)in;
    child_setup(target, &c, &cl);
    for (int i = 0; i < N_OPS; i++) {
        ferry_descriptor_t d;
        ferry_publish_params_t p = {.request_id = id, .access_token = TOKEN};
        bufs[i] = calloc(1, SIZE);
        d = (ferry_descriptor_t){.ptr = bufs[i], .size = SIZE, .device = FERRY_DEVICE_HOST_INIT};
        snprintf(id, sizeof(id), "many-%d", i);
        if (ferry_writable_create(c, &d, 1, &ops[i]) != FERRY_OK ||
            ferry_op_publish(ops[i], cl, &p) != FERRY_OK) {
            return 96;
        }
    }
    say(out, "published\n");
    for (int i = 0; i < N_OPS; i++) {
        if (ferry_op_wait(ops[i], 30000) != FERRY_OK || !ferry_pattern_check(bufs[i], SIZE)) {
            rc = 97;
        }
        ferry_op_destroy(ops[i]);
        free(bufs[i]);
    }
    ferry_coordinator_disconnect(cl);
    ferry_connector_destroy(c);
    return rc;
}

/* A writer for the admission tests: reads "seed N ID MS TTL" (the byte it
 * writes, the request ID, its coordinator call timeout, its session lease's
 * TTL in seconds, 0 for the coordinator's), then writes SIZE
 * bytes of it to ID (FERRY_TEST_PAUSE, set by the parent, stops it inside begin_by_id), and
 * says "ok <name>" or "refused <status name>"; then waits for "bye" (its
 * client keeps reporting meanwhile) and exits 0. */
static int role_racing_writer(const char *target, int in, int out)
{
    ferry_connector_t *c;
    ferry_coordinator_t *cl;
    ferry_coordinator_params_t cp = {.field_mask = FERRY_COORDINATOR_PARAM_FIELD_TIMEOUT,
                                     .target = target};
    uint8_t *buf = malloc(SIZE);
    ferry_descriptor_t d = {.ptr = buf, .size = SIZE, .device = FERRY_DEVICE_HOST_INIT};
    char line[64], id[32];
    unsigned seed;
    int ttl_s;
    ferry_status_t status;
    ferry_op_t *op;

    if (!hear(in, line, sizeof(line), 30000) ||
        sscanf(line, "seed %u %31s %d %d", &seed, id, &cp.timeout_ms, &ttl_s) != 4) {
        return 96;
    }
    if (ferry_connector_create(NULL, &c) != FERRY_OK ||
        ferry_coordinator_connect(&cp, &cl) != FERRY_OK) {
        return 91;
    }
    memset(buf, (int)seed, SIZE);
    /* The record is there before the writer starts: no wait_ms, whose time
     * the Claim's deadline would add to the call timeout these tests set. */
    ferry_claim_params_t p = {.request_id = id, .access_token = TOKEN};
    if (ttl_s > 0) {
        p.field_mask |= FERRY_CLAIM_PARAM_FIELD_TTL;
        p.ttl_s = ttl_s;
    }
    status = ferry_write_begin_by_id(c, cl, &p, &d, 1, &op);
    if (status == FERRY_OK) {
        status = ferry_op_wait(op, 20000);
        ferry_op_destroy(op);
    }
    if (status == FERRY_OK) {
        snprintf(line, sizeof(line), "ok %s\n", ferry_connector_name(c));
    } else {
        snprintf(line, sizeof(line), "refused %s\n", ferry_status_name(status));
    }
    say(out, line);
    if (!hear(in, line, sizeof(line), 60000)) {
        return 97;
    }
    ferry_coordinator_disconnect(cl);
    ferry_connector_destroy(c);
    free(buf);
    return 0;
}

/* ---- the parent's side ------------------------------------------------------ */

static int setup(void **state)
{
    ferry_coordinator_params_t cp = {.target = NULL};
    (void)state;

    if (test_etcd_start(&etcd, NULL) != 0 ||
        test_coord_start(&coord, etcd.endpoint, "w1", TTL) != 0) {
        return -1;
    }
    cp.target = coord.target;
    chan = test_coord_channel(&coord);
    if (ferry_connector_create(NULL, &conn) != FERRY_OK ||
        ferry_coordinator_connect(&cp, &client) != FERRY_OK) {
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    ferry_coordinator_disconnect(client);
    ferry_connector_destroy(conn);
    rpc_channel_destroy(chan);
    test_coord_stop(&coord);
    test_coord_cleanup(&coord);
    test_etcd_stop(&etcd);
    return 0;
}

/* Why the last coord_record answered -1 (for failure messages). */
static char last_get_error[sizeof(((rpc_error_t *)0)->message)];

static int coord_record(const char *id, char *claimant, size_t cap);
static bool record_reaches(const char *id, int state, int timeout_ms);

static int coord_state(const char *id)
{
    return coord_record(id, NULL, 0);
}

static rpc_stream_t *watch(const char *id, const char *prefix)
{
    Ferry__V1__WatchRequest req = FERRY__V1__WATCH_REQUEST__INIT;
    Ferry__V1__WatchResponse *msg = NULL;
    rpc_stream_t *stream = NULL;
    rpc_error_t err;

    req.request_id = (char *)(id != NULL ? id : "");
    req.request_id_prefix = (char *)(prefix != NULL ? prefix : "");
    assert_int_equal(rpc_stream_open(chan, "/ferry.v1.Coordinator/Watch", &req.base,
                                     &ferry__v1__watch_response__descriptor, 120000, &stream),
                     FERRY_OK);
    assert_int_equal(rpc_stream_read(stream, 10000, (ProtobufCMessage **)&msg, &err), FERRY_OK);
    assert_true(msg->created);
    ferry__v1__watch_response__free_unpacked(msg, NULL);
    return stream;
}

/* Events seen on a watch stream, kept so that several questions can be
 * asked of one stream without one read hiding events from the next. */
typedef struct {
    rpc_stream_t *stream;
    struct {
        char id[32];
        int state;
        int type;
    } ev[64];
    int n;
} events_t;

static int events_count(const events_t *e, int state, int type)
{
    int n = 0;
    for (int i = 0; i < e->n; i++) {
        bool dup = false;
        if (e->ev[i].state != state || e->ev[i].type != type) {
            continue;
        }
        for (int j = 0; j < i; j++) {
            dup = dup || (e->ev[j].state == state && e->ev[j].type == type &&
                          strcmp(e->ev[j].id, e->ev[i].id) == 0);
        }
        n += !dup;
    }
    return n;
}

/* Reads events until `count` distinct request IDs were seen in `state` with
 * event `type`, or timeout_ms passes; returns how many were seen. */
static int saw(events_t *e, int state, int type, int count, int timeout_ms)
{
    long long deadline = test_now_ms() + timeout_ms;

    while (events_count(e, state, type) < count && test_now_ms() < deadline) {
        Ferry__V1__WatchResponse *msg = NULL;
        rpc_error_t err;
        ferry_status_t status =
            rpc_stream_read(e->stream, deadline - test_now_ms(), (ProtobufCMessage **)&msg, &err);
        if (status != FERRY_OK || msg == NULL) {
            continue;
        }
        for (size_t i = 0; i < msg->n_events && e->n < 64; i++) {
            snprintf(e->ev[e->n].id, sizeof(e->ev[0].id), "%s",
                     msg->events[i]->operation->request_id);
            e->ev[e->n].state = (int)msg->events[i]->operation->state;
            e->ev[e->n].type = (int)msg->events[i]->type;
            e->n++;
        }
        ferry__v1__watch_response__free_unpacked(msg, NULL);
    }
    return events_count(e, state, type);
}

#define ST(x) FERRY__V1__OPERATION_STATE__OPERATION_STATE_##x
#define EV(x) FERRY__V1__WATCH_EVENT_TYPE__WATCH_EVENT_TYPE_##x

static void test_writer_killed_mid_transfer(void **state)
{
    uint8_t *buf = calloc(1, SIZE);
    ferry_descriptor_t d = {.ptr = buf, .size = SIZE, .device = FERRY_DEVICE_HOST_INIT};
    ferry_publish_params_t p = {.request_id = "kill-1", .access_token = TOKEN};
    ferry_op_t *op;
    child_t writer;
    char line[32];
    ferry_status_t status;
    const char *msg;
    (void)state;

    assert_int_equal(ferry_writable_create(conn, &d, 1, &op), FERRY_OK);
    assert_int_equal(ferry_op_publish(op, client, &p), FERRY_OK);
    writer = spawn("stalled-writer");
    assert_true(hear(writer.from, line, sizeof(line), 20000));
    assert_string_equal(line, "held");
    kill(writer.pid, SIGKILL);
    assert_int_equal(child_exit(&writer, 5000), 128 + SIGKILL);

    /* The writer's claim lease runs out within TTL; the coordinator marks
     * the operation ERRORED; the receiver learns it on its next renewal, or
     * first from UCX (peer error handling, the default: the dead writer's
     * endpoint fails at a keepalive check), whichever comes first. */
    status = ferry_op_wait(op, (TTL * 3 + 5) * 1000);
    assert_true(status == FERRY_ERR_PEER_FAILED || status == FERRY_ERR_EXPIRED);
    assert_int_equal(ferry_op_status(op), FERRY_OP_STATUS_ERRORED);
    ferry_op_error(op, &msg);
    assert_true(strstr(msg, "claim expired") != NULL ||
                strstr(msg, "the admitted peer's endpoint failed") != NULL);
    assert_true(record_reaches("kill-1", ST(ERRORED), (TTL * 3 + 5) * 1000));
    ferry_op_destroy(op);
    free(buf);
}

static void test_receiver_cancels_mid_transfer(void **state)
{
    uint8_t *buf = malloc(SIZE);
    ferry_descriptor_t d = {.ptr = buf, .size = SIZE, .device = FERRY_DEVICE_HOST_INIT};
    ferry_claim_params_t p = {.field_mask = FERRY_CLAIM_PARAM_FIELD_WAIT,
                              .request_id = "cancel-1",
                              .access_token = TOKEN,
                              .wait_ms = 10000};
    ferry_op_t *op;
    child_t receiver = spawn("cancelling-receiver");
    char line[32];
    ferry_status_t status;
    const char *msg;
    (void)state;

    assert_true(hear(receiver.from, line, sizeof(line), 20000));
    assert_string_equal(line, "published");
    ferry_pattern_fill(buf, SIZE);
    atomic_store(&ferry__test_notice_held, false);
    atomic_store(&ferry__test_hold_notice, true);
    assert_int_equal(ferry_write_begin_by_id(conn, client, &p, &d, 1, &op), FERRY_OK);
    for (long long until = test_now_ms() + 10000;
         !atomic_load(&ferry__test_notice_held) && test_now_ms() < until;) {
        poll(NULL, 0, 10);
    }
    assert_true(atomic_load(&ferry__test_notice_held));

    say(receiver.to, "cancel\n");
    assert_true(hear(receiver.from, line, sizeof(line), 20000));
    assert_string_equal(line, "cancelled");
    status = ferry_op_wait(op, (TTL * 3 + 5) * 1000);
    atomic_store(&ferry__test_hold_notice, false);
    assert_true(status == FERRY_ERR_CANCELLED || status == FERRY_ERR_EXPIRED);
    assert_true(ferry_op_status(op) == FERRY_OP_STATUS_CANCELLED ||
                ferry_op_status(op) == FERRY_OP_STATUS_ERRORED);
    ferry_op_error(op, &msg);
    assert_non_null(strstr(msg, "cancel"));
    ferry_op_destroy(op);
    assert_int_equal(coord_state("cancel-1"), ST(CANCELLED));
    say(receiver.to, "done\n");
    assert_int_equal(child_exit(&receiver, 10000), 0);
    /* The receiver destroyed its operation: the record was released. */
    assert_int_equal(coord_state("cancel-1"), -1);
    free(buf);
}

typedef struct {
    int index;
    ferry_status_t status;
} job_t;

static void *write_one(void *arg)
{
    job_t *job = arg;
    uint8_t *buf = malloc(SIZE);
    char id[32];
    ferry_descriptor_t d = {.ptr = buf, .size = SIZE, .device = FERRY_DEVICE_HOST_INIT};
    ferry_claim_params_t p = {.field_mask = FERRY_CLAIM_PARAM_FIELD_WAIT,
                              .request_id = id,
                              .access_token = TOKEN,
                              .wait_ms = 10000};
    ferry_op_t *op;

    snprintf(id, sizeof(id), "many-%d", job->index);
    ferry_pattern_fill(buf, SIZE);
    job->status = ferry_write_begin_by_id(conn, client, &p, &d, 1, &op);
    if (job->status == FERRY_OK) {
        job->status = ferry_op_wait(op, 30000);
        ferry_op_destroy(op);
    }
    free(buf);
    return NULL;
}

static int log_count(const char *needle);

/* The coordinator's line for a Complete that did not name its claim. */
#define NO_CLAIM_ID "Complete without claim_id"

static void test_many_operations_between_two_workers(void **state)
{
    events_t events = {.stream = watch(NULL, "many-")};
    child_t receiver = spawn("many-receiver");
    pthread_t threads[N_OPS];
    job_t jobs[N_OPS];
    char line[32];
    int stale_guardless = log_count(NO_CLAIM_ID);
    (void)state;

    assert_true(hear(receiver.from, line, sizeof(line), 20000));
    assert_string_equal(line, "published");
    for (int i = 0; i < N_OPS; i++) {
        jobs[i] = (job_t){.index = i};
        assert_int_equal(pthread_create(&threads[i], NULL, write_one, &jobs[i]), 0);
    }
    for (int i = 0; i < N_OPS; i++) {
        pthread_join(threads[i], NULL);
        assert_int_equal(jobs[i].status, FERRY_OK);
    }
    /* The receiver checked every byte of all eight. */
    assert_int_equal(child_exit(&receiver, 30000), 0);
    /* Each was COMPLETE at the coordinator, then left it in that state
     * (released by its owner, or at the latest with its owner's lease). */
    assert_int_equal(saw(&events, ST(COMPLETE), EV(PUT), N_OPS, 10000), N_OPS);
    /* Each writer's Complete named its claim (claim_id), so that a retry of
     * it could not end a later claim of the same ID on the session lease. */
    assert_int_equal(log_count(NO_CLAIM_ID), stale_guardless);
    assert_int_equal(saw(&events, ST(COMPLETE), EV(DELETE), N_OPS, (TTL + 5) * 1000), N_OPS);
    /* Get reads the replica's view, which may apply a delete a moment after
     * its watchers were told: wait for it, with a deadline. */
    for (int i = 0; i < N_OPS; i++) {
        char id[32];
        snprintf(id, sizeof(id), "many-%d", i);
        for (long long until = test_now_ms() + 10000;
             coord_state(id) != -1 && test_now_ms() < until;) {
            poll(NULL, 0, 20);
        }
        assert_int_equal(coord_state(id), -1);
    }
    rpc_stream_destroy(events.stream);
}

static void test_destroy_unfinished_cancels_at_coordinator(void **state)
{
    uint8_t buf[64];
    ferry_descriptor_t d = {.ptr = buf, .size = sizeof(buf), .device = FERRY_DEVICE_HOST_INIT};
    ferry_publish_params_t p = {.request_id = "gone-1", .access_token = NULL};
    ferry_op_t *op;
    events_t events = {.stream = watch("gone-1", NULL)};
    (void)state;

    assert_int_equal(ferry_writable_create(conn, &d, 1, &op), FERRY_OK);
    assert_int_equal(ferry_op_publish(op, client, &p), FERRY_OK);
    assert_true(strlen(ferry_op_access_token(op)) >= 16); /* libferry drew one */
    assert_int_equal(coord_state("gone-1"), ST(REGISTERED));
    ferry_op_destroy(op);
    /* Cancelled at the coordinator, then released: it left as CANCELLED, not
     * as an expiry. */
    assert_int_equal(saw(&events, ST(CANCELLED), EV(PUT), 1, 5000), 1);
    assert_int_equal(saw(&events, ST(CANCELLED), EV(DELETE), 1, 5000), 1);
    assert_int_equal(coord_state("gone-1"), -1);
    rpc_stream_destroy(events.stream);
}

/* The session lease is renewed with the lease token that came with it (the
 * coordinator refuses a KeepAlive without it): a published operation
 * outlives several TTLs while its process lives. */
static void test_session_lease_is_renewed(void **state)
{
    uint8_t buf[64];
    ferry_descriptor_t d = {.ptr = buf, .size = sizeof(buf), .device = FERRY_DEVICE_HOST_INIT};
    ferry_publish_params_t p = {.request_id = "renew-1", .access_token = TOKEN};
    ferry_op_t *op;
    events_t events = {.stream = watch("renew-1", NULL)};
    (void)state;

    assert_int_equal(ferry_writable_create(conn, &d, 1, &op), FERRY_OK);
    assert_int_equal(ferry_op_publish(op, client, &p), FERRY_OK);
    assert_int_equal(saw(&events, ST(EXPIRED), EV(DELETE), 1, TTL * 3 * 1000), 0);
    assert_int_equal(coord_state("renew-1"), ST(REGISTERED));
    assert_int_equal(ferry_op_status(op), FERRY_OP_STATUS_INITIALIZED);
    ferry_op_destroy(op);
    rpc_stream_destroy(events.stream);
}

/* Disconnecting a client with an operation still bound refuses
 * (FERRY_ERR_BUSY) and changes nothing (the record stays, the operation
 * stays bound); once the operation is destroyed the client closes, and its
 * record was released. */
static void test_disconnect_busy(void **state)
{
    uint8_t buf[64];
    ferry_descriptor_t d = {.ptr = buf, .size = sizeof(buf), .device = FERRY_DEVICE_HOST_INIT};
    ferry_publish_params_t p = {.request_id = "busy-1", .access_token = TOKEN};
    ferry_coordinator_params_t cp = {.target = coord.target};
    ferry_coordinator_t *other;
    ferry_op_t *op;
    (void)state;

    assert_int_equal(ferry_coordinator_connect(&cp, &other), FERRY_OK);
    assert_int_equal(ferry_writable_create(conn, &d, 1, &op), FERRY_OK);
    assert_int_equal(ferry_op_publish(op, other, &p), FERRY_OK);
    assert_int_equal(ferry_coordinator_disconnect(other), FERRY_ERR_BUSY);
    assert_non_null(strstr(ferry_last_error_message(), "1 operations still bound"));
    assert_int_equal(coord_state("busy-1"), ST(REGISTERED));
    assert_string_equal(ferry_op_access_token(op), TOKEN);
    ferry_op_destroy(op);
    assert_int_equal(ferry_coordinator_disconnect(other), FERRY_OK);
    assert_int_equal(coord_state("busy-1"), -1);
    assert_int_equal(ferry_coordinator_disconnect(NULL), FERRY_OK);
}

static void test_publish_duplicate_is_refused(void **state)
{
    uint8_t buf[64];
    ferry_descriptor_t d = {.ptr = buf, .size = sizeof(buf), .device = FERRY_DEVICE_HOST_INIT};
    ferry_publish_params_t p = {.request_id = "dup-1", .access_token = TOKEN};
    ferry_op_t *a, *b;
    (void)state;

    assert_int_equal(ferry_writable_create(conn, &d, 1, &a), FERRY_OK);
    assert_int_equal(ferry_writable_create(conn, &d, 1, &b), FERRY_OK);
    assert_int_equal(ferry_op_publish(a, client, &p), FERRY_OK);
    assert_int_equal(ferry_op_publish(b, client, &p), FERRY_ERR_ALREADY_EXISTS);
    assert_non_null(strstr(ferry_last_error_message(), "dup-1"));
    /* A field_mask bit this header does not name is refused, naming it. */
    ferry_publish_params_t future = {.field_mask = 1u << 9, .request_id = "dup-2"};
    assert_int_equal(ferry_op_publish(b, client, &future), FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(ferry_last_error_message(), "field_mask"));
    ferry_claim_params_t claim = {
        .field_mask = 1u << 9, .request_id = "dup-1", .access_token = TOKEN};
    ferry_op_t *w = NULL;
    assert_int_equal(ferry_write_begin_by_id(conn, client, &claim, &d, 1, &w),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_null(w);
    ferry_op_destroy(b);
    ferry_op_destroy(a);
}

/* A writer thread of test_claim_then_publish_in_one_client. */
typedef struct {
    ferry_coordinator_t *client;
    uint8_t *src;
    ferry_status_t status;
} self_writer_t;

static void *self_writer(void *arg)
{
    self_writer_t *w = arg;
    ferry_descriptor_t d = {.ptr = w->src, .size = SIZE, .device = FERRY_DEVICE_HOST_INIT};
    ferry_claim_params_t p = {.field_mask = FERRY_CLAIM_PARAM_FIELD_WAIT,
                              .request_id = "selfwait-1",
                              .access_token = TOKEN,
                              .wait_ms = 5000};
    ferry_op_t *op = NULL;

    w->status = ferry_write_begin_by_id(conn, w->client, &p, &d, 1, &op);
    if (w->status == FERRY_OK) {
        w->status = ferry_op_wait(op, 20000);
        ferry_op_destroy(op);
    }
    return NULL;
}

static bool selfwait_parked(void *arg)
{
    (void)arg;
    return test_coord_log_contains(&coord, "op selfwait-1: ");
}

/* One client, no session lease yet: a thread's writer waits (wait_ms) for
 * an ID that the same client then publishes. The waiting call made the
 * session lease, and every other Register and Claim of the client waited
 * for it: the publish waited out the writer's wait, and the writer failed
 * (TIMED_OUT). The wait is a Lookup's now; the publish goes at once, and the
 * writer's bytes arrive. Negative wait_ms or ttl_s are refused, naming the
 * field (the call would have had no deadline). */
static void test_claim_then_publish_in_one_client(void **state)
{
    ferry_coordinator_params_t cp = {.target = coord.target};
    ferry_publish_params_t pub = {.request_id = "selfwait-1", .access_token = TOKEN};
    uint8_t *dst = calloc(1, SIZE);
    ferry_descriptor_t d = {.ptr = dst, .size = SIZE, .device = FERRY_DEVICE_HOST_INIT};
    /* On the heap: a failed assertion leaves this function with the
     * writer thread still running, and it must not write into the stack
     * of the next test (ThreadSanitizer saw it). Leaked then, on purpose. */
    self_writer_t *w = calloc(1, sizeof(*w));
    ferry_op_t *passive, *none = NULL;
    pthread_t t;
    (void)state;

    assert_non_null(dst);
    assert_non_null(w);
    w->src = malloc(SIZE);
    assert_non_null(w->src);
    ferry_pattern_fill(w->src, SIZE);
    assert_int_equal(ferry_coordinator_connect(&cp, &w->client), FERRY_OK);
    ferry_claim_params_t bad = {.field_mask = FERRY_CLAIM_PARAM_FIELD_WAIT,
                                .request_id = "selfwait-1",
                                .access_token = TOKEN,
                                .wait_ms = -1};
    assert_int_equal(ferry_write_begin_by_id(conn, w->client, &bad, &d, 1, &none),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(ferry_last_error_message(), "wait_ms"));
    assert_null(none);

    assert_int_equal(pthread_create(&t, NULL, self_writer, w), 0);
    /* The writer's wait is parked at the coordinator (its debug line). */
    assert_true(test_wait_for(selfwait_parked, NULL, 10000));
    assert_int_equal(ferry_writable_create(conn, &d, 1, &passive), FERRY_OK);
    assert_int_equal(ferry_op_publish(passive, w->client, &pub), FERRY_OK);
    assert_int_equal(ferry_op_wait(passive, 20000), FERRY_OK);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(w->status, FERRY_OK);
    assert_true(ferry_pattern_check(dst, SIZE));
    ferry_op_destroy(passive);
    assert_int_equal(ferry_coordinator_disconnect(w->client), FERRY_OK);
    free(w->src);
    free(w);
    free(dst);
}

/* The record's state and claimant (claimant may be NULL); -1 when Get fails.
 * The read is linearizable: the tests ask the coordinator `coord` about
 * writes other replicas made, which its view may not have seen yet (a
 * Claim granted on another replica read as REGISTERED here, in CI). */
static int coord_record(const char *id, char *claimant, size_t cap)
{
    Ferry__V1__GetRequest req = FERRY__V1__GET_REQUEST__INIT;
    Ferry__V1__GetResponse *resp = NULL;
    rpc_error_t err;
    int state;

    req.request_id = (char *)id;
    req.linearizable = true;
    if (test_coord_call(chan, "Get", &req.base, &ferry__v1__get_response__descriptor,
                        (ProtobufCMessage **)&resp, &err) != FERRY_OK) {
        snprintf(last_get_error, sizeof(last_get_error), "%s", err.message);
        return -1;
    }
    state = (int)resp->operation->state;
    if (claimant != NULL) {
        snprintf(claimant, cap, "%s", resp->operation->claimant);
    }
    ferry__v1__get_response__free_unpacked(resp, NULL);
    return state;
}

/* Waits (deadline) for the record of id to reach state. */
static bool record_reaches(const char *id, int state, int timeout_ms)
{
    for (long long until = test_now_ms() + timeout_ms; test_now_ms() < until;) {
        if (coord_record(id, NULL, 0) == state) {
            return true;
        }
        poll(NULL, 0, 20);
    }
    return false;
}

/* Writers' coordinator call timeouts: where the coordinator is stopped, one
 * that the stop outlasts (the calls before the pause, made while the
 * coordinator runs, must still fit in it on a loaded machine: 300 ms did
 * not, in CI); in the race, one long enough that a slow machine never
 * turns a Claim into TIMED_OUT. DOWN_TTL_S: the session lease of a writer
 * whose claim must outlive the stop (the stop plus up to a third of the TTL
 * since the last keepalive). */
#define DOWN_CALL_MS 1000
#define DOWN_TTL_S   10
#define RACE_CALL_MS 10000

/* A receiver for the tests that stop the coordinator: a writable over d
 * published as id on a client of its own, whose session lease (made by this
 * publish, DOWN_TTL_S) outlives the stop; the shared client's lease (TTL)
 * might not. */
static void publish_outliving_stop(const ferry_descriptor_t *d, const char *id, ferry_op_t **op_p,
                                   ferry_coordinator_t **client_p)
{
    ferry_coordinator_params_t cp = {.target = coord.target};
    ferry_publish_params_t p = {.field_mask = FERRY_PUBLISH_PARAM_FIELD_TTL,
                                .request_id = id,
                                .access_token = TOKEN,
                                .ttl_s = DOWN_TTL_S};

    assert_int_equal(ferry_coordinator_connect(&cp, client_p), FERRY_OK);
    assert_int_equal(ferry_writable_create(conn, d, 1, op_p), FERRY_OK);
    assert_int_equal(ferry_op_publish(*op_p, *client_p, &p), FERRY_OK);
}

/* Spawns n racing writers stopped at `point` (FERRY_TEST_PAUSE), each told
 * its seed, the request ID and its call timeout, and waits until all have
 * reached it. *go is the file that lets them on. */
static void spawn_paused(child_t *w, int n, const char *point, const char *id, int call_ms,
                         int ttl_s, char *go, size_t go_cap)
{
    char dir[] = "/tmp/ferry-pause-XXXXXX", env[256], path[300], line[64];

    assert_non_null(mkdtemp(dir));
    snprintf(env, sizeof(env), "%s:%s/p", point, dir);
    assert_int_equal(setenv("FERRY_TEST_PAUSE", env, 1), 0);
    for (int i = 0; i < n; i++) {
        w[i] = spawn("racing-writer");
    }
    unsetenv("FERRY_TEST_PAUSE");
    for (int i = 0; i < n; i++) {
        snprintf(line, sizeof(line), "seed %d %s %d %d\n", 0x41 + i, id, call_ms, ttl_s);
        say(w[i].to, line);
    }
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof(path), "%s/p.%ld.reached", dir, (long)w[i].pid);
        long long until = test_now_ms() + 20000;
        while (access(path, F_OK) != 0 && test_now_ms() < until) {
            poll(NULL, 0, 10);
        }
        assert_int_equal(access(path, F_OK), 0);
    }
    snprintf(go, go_cap, "%s/p.go", dir);
}

static void let_go(const char *go)
{
    FILE *f = fopen(go, "w");
    assert_non_null(f);
    fclose(f);
}

/* Two writers on one request ID, both at their Claim before either
 * claims: exactly one is admitted (by the coordinator's Claim, before any
 * byte), the other is refused FAILED_PRECONDITION having written nothing;
 * the receiver holds exactly the winner's bytes, and the record is COMPLETE
 * and names the winner. */
static void test_two_writers_race(void **state)
{
    uint8_t *buf = calloc(1, SIZE);
    ferry_descriptor_t d = {.ptr = buf, .size = SIZE, .device = FERRY_DEVICE_HOST_INIT};
    ferry_publish_params_t p = {.request_id = "race-1", .access_token = TOKEN};
    ferry_op_t *op;
    child_t w[2];
    char go[300], line[2][128], claimant[128];
    int winner = -1;
    (void)state;

    assert_int_equal(ferry_writable_create(conn, &d, 1, &op), FERRY_OK);
    assert_int_equal(ferry_op_publish(op, client, &p), FERRY_OK);
    spawn_paused(w, 2, "before-claim", "race-1", RACE_CALL_MS, 0, go, sizeof(go));
    let_go(go);
    for (int i = 0; i < 2; i++) {
        assert_true(hear(w[i].from, line[i], sizeof(line[i]), 30000));
        if (strncmp(line[i], "ok ", 3) == 0) {
            assert_int_equal(winner, -1);
            winner = i;
        } else {
            assert_string_equal(line[i], "refused FERRY_ERR_FAILED_PRECONDITION");
        }
    }
    assert_true(winner >= 0);
    assert_int_equal(ferry_op_wait(op, 20000), FERRY_OK);
    for (size_t i = 0; i < SIZE; i++) {
        if (buf[i] != 0x41 + winner) {
            fail_msg("byte %zu is 0x%02x, the winner wrote 0x%02x", i, buf[i], 0x41 + winner);
        }
    }
    assert_true(record_reaches("race-1", ST(COMPLETE), 10000));
    assert_int_equal(coord_record("race-1", claimant, sizeof(claimant)), ST(COMPLETE));
    assert_string_equal(claimant, line[winner] + 3);
    for (int i = 0; i < 2; i++) {
        say(w[i].to, "bye\n");
        assert_int_equal(child_exit(&w[i], 10000), 0);
    }
    ferry_op_destroy(op);
    free(buf);
}

/* The coordinator unreachable (stopped) when the writer claims: the claim
 * fails and no byte moves; the record stays open with the receiver
 * untouched, or (the claim arrived after all) is ERRORED with the receiver
 * ERRORED too. */
static void test_coordinator_down_before_claim(void **state)
{
    uint8_t *buf = calloc(1, SIZE);
    ferry_descriptor_t d = {.ptr = buf, .size = SIZE, .device = FERRY_DEVICE_HOST_INIT};
    ferry_coordinator_t *rcl;
    ferry_op_t *op;
    child_t w;
    char go[300], line[128];
    (void)state;

    publish_outliving_stop(&d, "race-2", &op, &rcl);
    spawn_paused(&w, 1, "before-claim", "race-2", DOWN_CALL_MS, 0, go, sizeof(go));
    assert_int_equal(kill(coord.proc.pid, SIGSTOP), 0);
    let_go(go);
    assert_true(hear(w.from, line, sizeof(line), 30000));
    assert_int_equal(kill(coord.proc.pid, SIGCONT), 0);
    assert_true(strncmp(line, "refused ", 8) == 0);
    say(w.to, "bye\n");
    assert_int_equal(child_exit(&w, 10000), 0);
    for (size_t i = 0; i < SIZE; i++) {
        if (buf[i] != 0) {
            fail_msg("byte %zu was written (0x%02x) by a writer that was never admitted", i,
                     buf[i]);
        }
    }
    /* The stopped coordinator may still have taken the claim (its answer
     * came too late): the writer then abandoned it (Complete with its
     * error), so the record is ERRORED and the receiver learns it. Either
     * way nothing moved and all three agree. Right after SIGCONT the
     * coordinator may answer UNAVAILABLE while it catches up with etcd:
     * wait for an answer. */
    int rec = -1;
    for (long long until = test_now_ms() + 10000; test_now_ms() < until; poll(NULL, 0, 20)) {
        rec = coord_record("race-2", NULL, 0);
        if (rec == ST(REGISTERED) || rec == ST(ERRORED)) {
            break;
        }
    }
    if (rec != ST(REGISTERED) && rec != ST(ERRORED)) {
        test_proc_dump_log(&coord.proc, 8000);
        fail_msg("race-2: Get answered %d (%s), not REGISTERED or ERRORED", rec, last_get_error);
    }
    if (rec == ST(REGISTERED)) {
        assert_int_equal(ferry_op_status(op), FERRY_OP_STATUS_INITIALIZED);
    } else {
        assert_int_equal(rec, ST(ERRORED));
        assert_true(ferry_op_wait(op, 10000) != FERRY_OK);
        assert_int_equal(ferry_op_status(op), FERRY_OP_STATUS_ERRORED);
    }
    for (size_t i = 0; i < SIZE; i++) {
        if (buf[i] != 0) {
            fail_msg("byte %zu written by a writer that was refused", i);
        }
    }
    ferry_op_destroy(op);
    assert_int_equal(ferry_coordinator_disconnect(rcl), FERRY_OK);
    free(buf);
}

/* The coordinator unreachable (stopped) after the claim, while the bytes
 * move: the transfer completes on both sides, and the writer's Complete,
 * tried again until the coordinator is back, makes the record COMPLETE. */
static void test_coordinator_down_after_claim(void **state)
{
    uint8_t *buf = calloc(1, SIZE);
    ferry_descriptor_t d = {.ptr = buf, .size = SIZE, .device = FERRY_DEVICE_HOST_INIT};
    ferry_coordinator_t *rcl;
    ferry_op_t *op;
    child_t w;
    char go[300], line[128], claimant[128];
    (void)state;

    publish_outliving_stop(&d, "race-3", &op, &rcl);
    spawn_paused(&w, 1, "after-claim", "race-3", DOWN_CALL_MS, DOWN_TTL_S, go, sizeof(go));
    assert_int_equal(kill(coord.proc.pid, SIGSTOP), 0);
    let_go(go);
    /* The bytes move without the coordinator; the writer ends COMPLETE and
     * its Complete goes out to the stopped coordinator. */
    assert_int_equal(ferry_op_wait(op, 20000), FERRY_OK);
    assert_true(buf[0] == 0x41 && buf[SIZE - 1] == 0x41);
    assert_true(hear(w.from, line, sizeof(line), 30000));
    assert_true(strncmp(line, "ok ", 3) == 0);
    /* Not synchronization: the assertions below hold either way. Staying
     * stopped past the writer's call timeout makes its first Complete fail,
     * so that the retry is what completes the record. (Not past the claim's
     * lease, DOWN_TTL_S: an outage longer than the TTL expires it, as the
     * README says.) */
    poll(NULL, 0, DOWN_CALL_MS + 300);
    assert_int_equal(kill(coord.proc.pid, SIGCONT), 0);
    if (!record_reaches("race-3", ST(COMPLETE), 10000)) {
        int rec = coord_record("race-3", NULL, 0);
        fail_msg("race-3 is %d, not COMPLETE%s%s", rec, rec < 0 ? ": " : "",
                 rec < 0 ? last_get_error : "");
    }
    assert_int_equal(coord_record("race-3", claimant, sizeof(claimant)), ST(COMPLETE));
    assert_string_equal(claimant, line + 3);
    say(w.to, "bye\n");
    assert_int_equal(child_exit(&w, 10000), 0);
    ferry_op_destroy(op);
    assert_int_equal(ferry_coordinator_disconnect(rcl), FERRY_OK);
    free(buf);
}

/* A writer's Complete refused RESOURCE_EXHAUSTED (the fault seam: as a
 * coordinator refuses a call for a bound, a full etcd queue or the host's
 * share of the writes, before it writes anything) is sent again, and the
 * record reaches COMPLETE. It was given up on ("reporting the outcome
 * failed"), and the record stayed CLAIMED for as long as the writer's
 * session lived (review-s33b M1). */
static void test_refused_report_is_sent_again(void **state)
{
    ferry_publish_params_t pub = {.request_id = "refused-1", .access_token = TOKEN};
    ferry_claim_params_t p = {.field_mask = FERRY_CLAIM_PARAM_FIELD_WAIT,
                              .request_id = "refused-1",
                              .access_token = TOKEN,
                              .wait_ms = 10000};
    uint8_t *dst = calloc(1, SIZE), *src = malloc(SIZE);
    ferry_descriptor_t d = {.ptr = dst, .size = SIZE, .device = FERRY_DEVICE_HOST_INIT};
    ferry_descriptor_t s = {.ptr = src, .size = SIZE, .device = FERRY_DEVICE_HOST_INIT};
    ferry_op_t *passive, *active;
    (void)state;

    assert_non_null(dst);
    assert_non_null(src);
    ferry_pattern_fill(src, SIZE);
    assert_int_equal(ferry_writable_create(conn, &d, 1, &passive), FERRY_OK);
    assert_int_equal(ferry_op_publish(passive, client, &pub), FERRY_OK);
    atomic_store(&ferry__coord_test_refuse_reports, 2);
    assert_int_equal(ferry_write_begin_by_id(conn, client, &p, &s, 1, &active), FERRY_OK);
    assert_int_equal(ferry_op_wait(active, 20000), FERRY_OK);
    assert_int_equal(ferry_op_wait(passive, 20000), FERRY_OK);
    assert_true(ferry_pattern_check(dst, SIZE));
    if (!record_reaches("refused-1", ST(COMPLETE), 10000)) {
        int rec = coord_record("refused-1", NULL, 0);
        atomic_store(&ferry__coord_test_refuse_reports, 0);
        fail_msg("refused-1 is %d, not COMPLETE%s%s", rec, rec < 0 ? ": " : "",
                 rec < 0 ? last_get_error : "");
    }
    assert_int_equal(atomic_load(&ferry__coord_test_refuse_reports), 0); /* both were refused */
    ferry_op_destroy(active);
    ferry_op_destroy(passive);
    free(src);
    free(dst);
}

/* Lines of the coordinator's log that contain needle. */
static int log_count(const char *needle)
{
    FILE *f = fopen(coord.log_path, "r");
    char line[1024];
    int n = 0;

    assert_non_null(f);
    while (fgets(line, sizeof(line), f) != NULL) {
        n += strstr(line, needle) != NULL;
    }
    fclose(f);
    return n;
}

#define GETS       "Coordinator/Get: ends"
#define KEEPALIVES "Coordinator/KeepAlive: ends"

/* Waits until cl's watch holds a stream that has told it a revision and no
 * bound record waits to be looked at; returns the counts then. */
static ferry__coord_watch_stats_t watch_settled(ferry_coordinator_t *cl)
{
    ferry__coord_watch_stats_t s;
    long long until = test_now_ms() + 20000;

    for (;;) {
        ferry__coord_watch_stats(cl, &s);
        if ((s.streams > 0 && s.revision > 0 && s.settled) || test_now_ms() > until) {
            break;
        }
        poll(NULL, 0, 20);
    }
    assert_true(s.streams > 0 && s.revision > 0 && s.settled);
    return s;
}

/* A bound operation follows its record through the client's Watch stream,
 * not by polling: once bound (at most one Get), three session renewals pass
 * with no Get at all; a change of the record (a Cancel from elsewhere) still reaches
 * the operation. */
static void test_bound_operation_is_watched_not_polled(void **state)
{
    uint8_t buf[64];
    ferry_descriptor_t d = {.ptr = buf, .size = sizeof(buf), .device = FERRY_DEVICE_HOST_INIT};
    ferry_publish_params_t p = {.request_id = "idle-1", .access_token = TOKEN};
    Ferry__V1__CancelRequest cancel = FERRY__V1__CANCEL_REQUEST__INIT;
    Ferry__V1__CancelResponse *cancelled = NULL;
    rpc_error_t err;
    ferry_op_t *op;
    const char *message;
    int gets, keepalives;
    long long until;
    (void)state;

    keepalives = log_count(KEEPALIVES);
    assert_int_equal(ferry_writable_create(conn, &d, 1, &op), FERRY_OK);
    assert_int_equal(ferry_op_publish(op, client, &p), FERRY_OK);
    /* The look once bound (a Get, unless the watch's event came first) and
     * the Gets of a stream opened for it are behind us once the watch has
     * settled, and a renewal is logged after that. */
    (void)watch_settled(client);
    for (until = test_now_ms() + (TTL * 3 + 10) * 1000;
         log_count(KEEPALIVES) == keepalives && test_now_ms() < until;) {
        poll(NULL, 0, 20);
    }
    gets = log_count(GETS);
    keepalives = log_count(KEEPALIVES);
    for (until = test_now_ms() + (TTL * 3 + 10) * 1000;
         log_count(KEEPALIVES) < keepalives + 3 && test_now_ms() < until;) {
        poll(NULL, 0, 50);
    }
    assert_true(log_count(KEEPALIVES) >= keepalives + 3);
    assert_int_equal(log_count(GETS), gets);

    cancel.request_id = "idle-1";
    cancel.access_token = TOKEN;
    cancel.reason = "cancelled from elsewhere";
    assert_int_equal(test_coord_call(chan, "Cancel", &cancel.base,
                                     &ferry__v1__cancel_response__descriptor,
                                     (ProtobufCMessage **)&cancelled, &err),
                     FERRY_OK);
    ferry__v1__cancel_response__free_unpacked(cancelled, NULL);
    assert_int_equal(ferry_op_wait(op, 10000), FERRY_ERR_CANCELLED);
    /* The canceller's reason, not "cancelled by its owner". */
    assert_int_equal(ferry_op_error(op, &message), FERRY_ERR_CANCELLED);
    assert_string_equal(message, "cancelled at the coordinator: cancelled from elsewhere");
    ferry_op_destroy(op);
}

/* Cancels `id` at the coordinator behind `channel`, as another client
 * would. */
static void cancel_elsewhere(rpc_channel_t *channel, const char *id)
{
    Ferry__V1__CancelRequest cancel = FERRY__V1__CANCEL_REQUEST__INIT;
    Ferry__V1__CancelResponse *cancelled = NULL;
    rpc_error_t err;

    cancel.request_id = (char *)id;
    cancel.access_token = TOKEN;
    cancel.reason = "cancelled while the stream was down";
    assert_int_equal(test_coord_call(channel, "Cancel", &cancel.base,
                                     &ferry__v1__cancel_response__descriptor,
                                     (ProtobufCMessage **)&cancelled, &err),
                     FERRY_OK);
    ferry__v1__cancel_response__free_unpacked(cancelled, NULL);
}

/* A published operation on a client whose Watch stream runs on replica
 * `a`: a stops (the stream stalls), its record is cancelled through another
 * replica, a dies (the stream breaks). The writes before return in `before`. */
static void break_stream_around_a_cancel(test_coord_t *a, ferry_coordinator_t *cl, const char *id,
                                         ferry_op_t **op_p, uint8_t *buf, size_t size,
                                         ferry__coord_watch_stats_t *before)
{
    ferry_descriptor_t d = {.ptr = buf, .size = size, .device = FERRY_DEVICE_HOST_INIT};
    ferry_publish_params_t p = {.request_id = id, .access_token = TOKEN};

    assert_int_equal(ferry_writable_create(conn, &d, 1, op_p), FERRY_OK);
    assert_int_equal(ferry_op_publish(*op_p, cl, &p), FERRY_OK);
    *before = watch_settled(cl);
    assert_int_equal(test_proc_pause(&a->proc), 0);
    cancel_elsewhere(chan, id);
    test_proc_kill(&a->proc);
}

/* The session lease outlives a replica's restart however slow the machine
 * is: these tests are about the stream, not about expiry. */
#define RESUME_TTL 30

/* The stream breaks (its replica dies) while the record changes; the client
 * resumes on the other replica from the last revision it saw, which replays
 * the change: the operation ends CANCELLED with no Get and no fresh stream. */
static void test_watch_resumes_after_a_broken_stream(void **state)
{
    test_coord_t a;
    char target[128];
    uint8_t buf[64];
    ferry_coordinator_params_t cp = {.target = target};
    ferry_coordinator_t *cl;
    ferry__coord_watch_stats_t before, after;
    ferry_op_t *op;
    (void)state;

    assert_int_equal(test_coord_start(&a, etcd.endpoint, "resume-a", RESUME_TTL), 0);
    /* pick_first: replica a while it lives, then the suite's coordinator. */
    snprintf(target, sizeof(target), "ipv4:127.0.0.1:%d,127.0.0.1:%d", a.port, coord.port);
    assert_int_equal(ferry_coordinator_connect(&cp, &cl), FERRY_OK);
    break_stream_around_a_cancel(&a, cl, "resume-1", &op, buf, sizeof(buf), &before);

    assert_int_equal(ferry_op_wait(op, 30000), FERRY_ERR_CANCELLED);
    ferry__coord_watch_stats(cl, &after);
    assert_int_equal(after.resumes, before.resumes + 1);
    assert_int_equal(after.streams, before.streams);
    assert_int_equal(after.gets, before.gets);
    assert_int_equal(after.out_of_range, before.out_of_range);
    assert_true(after.revision > before.revision);
    ferry_op_destroy(op);
    assert_int_equal(ferry_coordinator_disconnect(cl), FERRY_OK);
    test_coord_cleanup(&a);
}

/* As above, but the replica comes back on the same address with none of
 * the changes it published before (a restart): the resume is refused with
 * OUT_OF_RANGE, and the client watches afresh and reads its record again. */
static void test_watch_falls_back_when_the_history_is_gone(void **state)
{
    test_coord_t a;
    uint8_t buf[64];
    ferry_coordinator_params_t cp = {.target = NULL};
    ferry_coordinator_t *cl;
    ferry__coord_watch_stats_t before, after;
    ferry_op_t *op;
    (void)state;

    assert_int_equal(test_coord_start(&a, etcd.endpoint, "resume-b", RESUME_TTL), 0);
    cp.target = a.target;
    assert_int_equal(ferry_coordinator_connect(&cp, &cl), FERRY_OK);
    break_stream_around_a_cancel(&a, cl, "resume-2", &op, buf, sizeof(buf), &before);
    a.listen_port = a.port;
    assert_int_equal(test_coord_restart(&a), 0);

    assert_int_equal(ferry_op_wait(op, 30000), FERRY_ERR_CANCELLED);
    ferry__coord_watch_stats(cl, &after);
    assert_true(after.out_of_range > before.out_of_range);
    assert_true(after.streams > before.streams);
    assert_true(after.gets > before.gets);
    ferry_op_destroy(op);
    assert_int_equal(ferry_coordinator_disconnect(cl), FERRY_OK);
    test_coord_stop(&a);
    test_coord_cleanup(&a);
}

/* A coordinator that is away across two renewals of a session lease: the
 * client tries again soon after each failed KeepAlive, so the first one
 * after the coordinator is back renews the lease before it expires, and the
 * record survives. (Renewing only once a period, as the client did, the
 * tries fall at P and 2P + T, where P = TTL / 3 and T is the call timeout,
 * and the next at 3P + 2T is after the expiry: an outage that ends between
 * 2P + 2T and 3P lost every record of the process.) Runs last: the stop
 * expires the shared client's short lease. */
#define OUTAGE_TTL_S   15
#define OUTAGE_CALL_MS 1000

static void test_session_lease_survives_an_outage(void **state)
{
    uint8_t buf[64];
    ferry_descriptor_t d = {.ptr = buf, .size = sizeof(buf), .device = FERRY_DEVICE_HOST_INIT};
    ferry_coordinator_params_t cp = {.field_mask = FERRY_COORDINATOR_PARAM_FIELD_TIMEOUT,
                                     .target = coord.target,
                                     .timeout_ms = OUTAGE_CALL_MS};
    ferry_publish_params_t p = {.field_mask = FERRY_PUBLISH_PARAM_FIELD_TTL,
                                .request_id = "outage-1",
                                .access_token = TOKEN,
                                .ttl_s = OUTAGE_TTL_S};
    int64_t period_ms = OUTAGE_TTL_S * 1000 / 3;
    ferry__coord_watch_stats_t s;
    ferry_coordinator_t *cl;
    ferry_op_t *op;
    events_t events = {.stream = watch("outage-1", NULL)};
    long long t0, until;
    (void)state;

    assert_int_equal(ferry_coordinator_connect(&cp, &cl), FERRY_OK);
    assert_int_equal(ferry_writable_create(conn, &d, 1, &op), FERRY_OK);
    assert_int_equal(ferry_op_publish(op, cl, &p), FERRY_OK);
    /* t0: the first renewal, from which the lease has OUTAGE_TTL_S left. */
    for (until = test_now_ms() + 2 * period_ms + 10000;; poll(NULL, 0, 5)) {
        ferry__coord_watch_stats(cl, &s);
        if (s.renewals > 0 || test_now_ms() > until) {
            break;
        }
    }
    t0 = test_now_ms();
    assert_int_equal(s.renewals, 1);
    assert_int_equal(kill(coord.proc.pid, SIGSTOP), 0);
    /* The outage (not synchronization): back between 2P + 2T and 3P. */
    poll(NULL, 0, (int)(2 * period_ms + 2 * OUTAGE_CALL_MS + (period_ms - 2 * OUTAGE_CALL_MS) / 2));
    assert_int_equal(kill(coord.proc.pid, SIGCONT), 0);
    /* No expiry until well past the one the lease had at t0. */
    assert_int_equal(saw(&events, ST(EXPIRED), EV(DELETE), 1,
                         (int)(t0 + OUTAGE_TTL_S * 1000 + 3000 - test_now_ms())),
                     0);
    ferry__coord_watch_stats(cl, &s);
    assert_true(s.renewals >= 2);
    assert_int_equal(coord_state("outage-1"), ST(REGISTERED));
    assert_int_equal(ferry_op_status(op), FERRY_OP_STATUS_INITIALIZED);
    ferry_op_destroy(op);
    assert_int_equal(ferry_coordinator_disconnect(cl), FERRY_OK);
    rpc_stream_destroy(events.stream);
}

/* ---- the session's duties against hung and failed calls ---------------------- */

#define HUNG_TTL_S   3
#define HUNG_CALL_MS 10000

/* A link call of the session thread that hangs (the hold seam: longer than
 * the TTL) does not hold the session lease's renewal back: with a call
 * timeout past the TTL, renewals go on and the record survives. (With the
 * renewal on the session thread between link calls, it waited behind the
 * hung call and the lease expired with every record of the process.) */
static void test_renewal_does_not_wait_behind_a_hung_call(void **state)
{
    uint8_t buf[64];
    ferry_descriptor_t d = {.ptr = buf, .size = sizeof(buf), .device = FERRY_DEVICE_HOST_INIT};
    ferry_coordinator_params_t cp = {.field_mask = FERRY_COORDINATOR_PARAM_FIELD_TIMEOUT,
                                     .target = coord.target,
                                     .timeout_ms = HUNG_CALL_MS};
    ferry_publish_params_t p = {.field_mask = FERRY_PUBLISH_PARAM_FIELD_TTL,
                                .request_id = "hung-1",
                                .access_token = TOKEN,
                                .ttl_s = HUNG_TTL_S};
    ferry__coord_watch_stats_t s;
    ferry_coordinator_t *cl;
    ferry_op_t *op;
    events_t events = {.stream = watch("hung-1", NULL)};
    uint64_t renewals0;
    bool held, renewed;
    int expired, rec;
    (void)state;

    assert_int_equal(ferry_coordinator_connect(&cp, &cl), FERRY_OK);
    assert_int_equal(ferry_writable_create(conn, &d, 1, &op), FERRY_OK);
    atomic_store(&ferry__coord_test_links_held, false);
    atomic_store(&ferry__coord_test_hold_links, true);
    /* The look once bound is the link call that hangs. */
    assert_int_equal(ferry_op_publish(op, cl, &p), FERRY_OK);
    for (long long until = test_now_ms() + 10000;
         !(held = atomic_load(&ferry__coord_test_links_held)) && test_now_ms() < until;) {
        poll(NULL, 0, 5);
    }
    ferry__coord_watch_stats(cl, &s);
    renewals0 = s.renewals;
    /* Four renewals span more than the TTL, all while the call hangs. */
    for (long long until = test_now_ms() + (HUNG_TTL_S + 6) * 1000;; poll(NULL, 0, 20)) {
        ferry__coord_watch_stats(cl, &s);
        renewed = s.renewals >= renewals0 + 4;
        if (renewed || test_now_ms() > until) {
            break;
        }
    }
    expired = saw(&events, ST(EXPIRED), EV(DELETE), 1, 200);
    rec = coord_state("hung-1");
    atomic_store(&ferry__coord_test_hold_links, false);
    assert_true(held);
    if (!renewed) {
        fail_msg("%llu renewals while the call hung (wanted 4 in %d s); hung-1 is %d",
                 (unsigned long long)(s.renewals - renewals0), HUNG_TTL_S + 6, rec);
    }
    assert_int_equal(expired, 0);
    assert_int_equal(rec, ST(REGISTERED));
    assert_int_equal(ferry_op_status(op), FERRY_OP_STATUS_INITIALIZED);
    ferry_op_destroy(op);
    assert_int_equal(ferry_coordinator_disconnect(cl), FERRY_OK);
    rpc_stream_destroy(events.stream);
}

/* Waits (deadline) until Get answers NOT_FOUND for id. */
static bool record_gone(const char *id, int timeout_ms)
{
    for (long long until = test_now_ms() + timeout_ms; test_now_ms() < until; poll(NULL, 0, 20)) {
        Ferry__V1__GetRequest req = FERRY__V1__GET_REQUEST__INIT;
        Ferry__V1__GetResponse *resp = NULL;
        rpc_error_t err;
        ferry_status_t status;

        req.request_id = (char *)id;
        req.linearizable = true; /* gone from etcd, not only from the view */
        status = test_coord_call(chan, "Get", &req.base, &ferry__v1__get_response__descriptor,
                                 (ProtobufCMessage **)&resp, &err);
        if (status == FERRY_OK) {
            ferry__v1__get_response__free_unpacked(resp, NULL);
        } else if (status == FERRY_ERR_NOT_FOUND) {
            return true;
        }
    }
    return false;
}

/* A writer that claims `id` (on a lease of its own that outlives the test)
 * and never completes. */
static void claim_silently(const char *id)
{
    Ferry__V1__ClaimRequest claim = FERRY__V1__CLAIM_REQUEST__INIT;
    Ferry__V1__ClaimResponse *claimed = NULL;
    rpc_error_t err;

    claim.request_id = (char *)id;
    claim.access_token = TOKEN;
    claim.claimant = "silent-writer";
    claim.kind = FERRY__V1__OPERATION_KIND__OPERATION_KIND_WRITE;
    claim.ttl_seconds = 120;
    assert_int_equal(test_coord_call(chan, "Claim", &claim.base,
                                     &ferry__v1__claim_response__descriptor,
                                     (ProtobufCMessage **)&claimed, &err),
                     FERRY_OK);
    ferry__v1__claim_response__free_unpacked(claimed, NULL);
}

/* A passive operation destroyed (failed here) while a claim that nobody
 * completes holds its record CLAIMED: the client keeps trying to release it
 * and, 2 x TTL after the destroy, cancels and releases it, so the record
 * and its request ID do not stay for the life of the process. (The client
 * gave up after 12 refusals, about a TTL, and the record stayed.) */
static void test_release_outlasts_an_unfinished_claim(void **state)
{
    uint8_t buf[64];
    ferry_descriptor_t d = {.ptr = buf, .size = sizeof(buf), .device = FERRY_DEVICE_HOST_INIT};
    ferry_publish_params_t p = {.request_id = "late-1", .access_token = TOKEN};
    events_t events = {.stream = watch("late-1", NULL)};
    ferry_op_t *op;
    (void)state;

    assert_int_equal(ferry_writable_create(conn, &d, 1, &op), FERRY_OK);
    assert_int_equal(ferry_op_publish(op, client, &p), FERRY_OK);
    claim_silently("late-1");
    assert_int_equal(ferry_op_fail(op, FERRY_ERR_IO, "failed here before its writer reported"),
                     FERRY_OK);
    ferry_op_destroy(op);
    /* 2 x TTL after the destroy, plus a renewal period of slack each way. */
    assert_int_equal(saw(&events, ST(CANCELLED), EV(DELETE), 1, (2 * TTL + 4) * 1000), 1);
    assert_true(record_gone("late-1", 2000));
    rpc_stream_destroy(events.stream);
}

/* Disconnect gives a destroyed operation's last duty its try and one final
 * try, not a call timeout of retries: a passive operation destroyed (failed
 * here) while a claim that nobody completes holds its record CLAIMED is
 * refused its Release by the session thread, once more by disconnect, and
 * disconnect returns; the record is left to the session lease. (Waiting for
 * every duty to be done retried it until the timeout: about eight refusals
 * in 10 s.) */
static void test_disconnect_tries_a_refused_release_twice(void **state)
{
    uint8_t buf[64];
    ferry_descriptor_t d = {.ptr = buf, .size = sizeof(buf), .device = FERRY_DEVICE_HOST_INIT};
    ferry_publish_params_t p = {.request_id = "drain-1", .access_token = TOKEN};
    ferry_coordinator_params_t cp = {.target = coord.target};
    const char *refused = "Release: ends with FAILED_PRECONDITION: request_id 'drain-1'";
    ferry_coordinator_t *other;
    ferry_op_t *op;
    (void)state;

    assert_int_equal(ferry_coordinator_connect(&cp, &other), FERRY_OK);
    assert_int_equal(ferry_writable_create(conn, &d, 1, &op), FERRY_OK);
    assert_int_equal(ferry_op_publish(op, other, &p), FERRY_OK);
    claim_silently("drain-1");
    assert_int_equal(ferry_op_fail(op, FERRY_ERR_IO, "failed here before its writer reported"),
                     FERRY_OK);
    ferry_op_destroy(op);
    assert_int_equal(ferry_coordinator_disconnect(other), FERRY_OK);
    /* The coordinator logs a call as it answers it: wait for both. */
    for (long long until = test_now_ms() + 10000; log_count(refused) < 2 && test_now_ms() < until;
         poll(NULL, 0, 20)) {
    }
    /* The session thread's try and the final one (a retry 50 ms after the
     * first may slip in before disconnect stops the thread). */
    assert_in_range(log_count(refused), 2, 3);
    assert_int_equal(coord_state("drain-1"), ST(CLAIMED));
}

/* A passive operation destroyed unfinished while its coordinator is down:
 * the Cancel fails (UNAVAILABLE), is tried again once the coordinator is
 * back, and the record is released. (The client only logged the failed
 * Cancel; the Releases after it were refused, the record not being final,
 * and it stayed REGISTERED for the life of the process.) */
static void test_cancel_on_destroy_is_tried_again(void **state)
{
    test_coord_t a;
    uint8_t buf[64];
    ferry_descriptor_t d = {.ptr = buf, .size = sizeof(buf), .device = FERRY_DEVICE_HOST_INIT};
    ferry_coordinator_params_t cp = {.target = NULL};
    ferry_publish_params_t p = {.field_mask = FERRY_PUBLISH_PARAM_FIELD_TTL,
                                .request_id = "cancel-again-1",
                                .access_token = TOKEN,
                                .ttl_s = RESUME_TTL};
    ferry_coordinator_t *cl;
    ferry_op_t *op;
    (void)state;

    assert_int_equal(test_coord_start(&a, etcd.endpoint, "cancel-a", RESUME_TTL), 0);
    cp.target = a.target;
    assert_int_equal(ferry_coordinator_connect(&cp, &cl), FERRY_OK);
    assert_int_equal(ferry_writable_create(conn, &d, 1, &op), FERRY_OK);
    assert_int_equal(ferry_op_publish(op, cl, &p), FERRY_OK);
    assert_int_equal(coord_state("cancel-again-1"), ST(REGISTERED));
    test_proc_kill(&a.proc);
    ferry_op_destroy(op); /* its Cancel finds nobody */
    assert_int_equal(coord_state("cancel-again-1"), ST(REGISTERED));
    a.listen_port = a.port;
    assert_int_equal(test_coord_restart(&a), 0);
    /* Within 2 x TTL of the destroy, so that only the Cancel's retry can
     * have ended it. */
    assert_true(record_gone("cancel-again-1", 20000));
    assert_int_equal(ferry_coordinator_disconnect(cl), FERRY_OK);
    test_coord_stop(&a);
    test_coord_cleanup(&a);
}

typedef struct {
    ferry_op_t *op;
    atomic_bool returned;
} destroyer_t;

static void *destroyer_main(void *arg)
{
    destroyer_t *t = arg;
    ferry_op_destroy(t->op);
    atomic_store(&t->returned, true);
    return NULL;
}

/* Destroying an unfinished passive operation owes the coordinator a
 * Cancel; the client's session thread sends it, so destroy returns while
 * the coordinator does not answer (stopped, with a call timeout longer than
 * this test waits), and once it answers the record is cancelled and
 * released. (destroy sent the first Cancel itself and waited out the
 * call's timeout.) */
static void test_destroy_does_not_wait_for_the_coordinator(void **state)
{
    test_coord_t a;
    uint8_t buf[64];
    ferry_descriptor_t d = {.ptr = buf, .size = sizeof(buf), .device = FERRY_DEVICE_HOST_INIT};
    ferry_coordinator_params_t cp = {.field_mask = FERRY_COORDINATOR_PARAM_FIELD_TIMEOUT,
                                     .timeout_ms = 120000};
    ferry_publish_params_t p = {.field_mask = FERRY_PUBLISH_PARAM_FIELD_TTL,
                                .request_id = "destroy-nowait-1",
                                .access_token = TOKEN,
                                .ttl_s = RESUME_TTL};
    events_t events = {.stream = watch("destroy-nowait-1", NULL)};
    ferry_coordinator_t *cl;
    destroyer_t t = {.returned = false};
    pthread_t thread;
    bool returned = false;
    (void)state;

    assert_int_equal(test_coord_start(&a, etcd.endpoint, "nowait-a", RESUME_TTL), 0);
    cp.target = a.target;
    assert_int_equal(ferry_coordinator_connect(&cp, &cl), FERRY_OK);
    assert_int_equal(ferry_writable_create(conn, &d, 1, &t.op), FERRY_OK);
    assert_int_equal(ferry_op_publish(t.op, cl, &p), FERRY_OK);
    assert_int_equal(coord_state("destroy-nowait-1"), ST(REGISTERED));
    (void)watch_settled(cl); /* no Get of the session thread in flight */
    assert_int_equal(kill(a.proc.pid, SIGSTOP), 0);
    assert_int_equal(pthread_create(&thread, NULL, destroyer_main, &t), 0);
    for (long long until = test_now_ms() + 30000; !returned && test_now_ms() < until;
         poll(NULL, 0, 10)) {
        returned = atomic_load(&t.returned);
    }
    assert_int_equal(coord_state("destroy-nowait-1"), ST(REGISTERED)); /* nothing reached it */
    assert_int_equal(kill(a.proc.pid, SIGCONT), 0);
    pthread_join(thread, NULL);
    if (!returned) {
        fail_msg("ferry_op_destroy waited for a coordinator that did not answer");
    }
    /* The Cancel went once the coordinator answered, then the Release. */
    assert_int_equal(saw(&events, ST(CANCELLED), EV(PUT), 1, 20000), 1);
    assert_true(record_gone("destroy-nowait-1", 20000));
    assert_int_equal(ferry_coordinator_disconnect(cl), FERRY_OK);
    rpc_stream_destroy(events.stream);
    test_coord_stop(&a);
    test_coord_cleanup(&a);
}

#define LAST_CALL_MS 1000
#define LAST_OPS     16
/* Expected: about 2 call timeouts (below); one (or two) per record would
 * be at least LAST_OPS = 16. The bound leaves a loaded machine 4 timeouts
 * of slack and the bug 10 past it. */
#define LAST_BOUND_MS (6 * LAST_CALL_MS)

/* Disconnecting with destroyed operations' releases still owed to a
 * coordinator that does not answer (stopped) takes one call timeout for the
 * last tries of all of them, not one (or two) per record: the rest is left
 * to the session lease's expiry. */
static void test_disconnect_last_tries_share_one_timeout(void **state)
{
    test_coord_t a;
    uint8_t buf[64];
    ferry_descriptor_t d = {.ptr = buf, .size = sizeof(buf), .device = FERRY_DEVICE_HOST_INIT};
    ferry_coordinator_params_t cp = {.field_mask = FERRY_COORDINATOR_PARAM_FIELD_TIMEOUT,
                                     .timeout_ms = LAST_CALL_MS};
    ferry_coordinator_t *cl;
    ferry_op_t *ops[LAST_OPS];
    char id[32];
    long long t0, took;
    (void)state;

    assert_int_equal(test_coord_start(&a, etcd.endpoint, "last-a", RESUME_TTL), 0);
    cp.target = a.target;
    assert_int_equal(ferry_coordinator_connect(&cp, &cl), FERRY_OK);
    for (int i = 0; i < LAST_OPS; i++) {
        ferry_publish_params_t p = {.request_id = id, .access_token = TOKEN};
        snprintf(id, sizeof(id), "last-%d", i);
        assert_int_equal(ferry_writable_create(conn, &d, 1, &ops[i]), FERRY_OK);
        assert_int_equal(ferry_op_publish(ops[i], cl, &p), FERRY_OK);
    }
    assert_int_equal(test_proc_pause(&a.proc), 0);
    for (int i = 0; i < LAST_OPS; i++) {
        ferry_op_destroy(ops[i]); /* each Cancel times out */
    }
    t0 = test_now_ms();
    assert_int_equal(ferry_coordinator_disconnect(cl), FERRY_OK);
    took = test_now_ms() - t0;
    test_proc_kill(&a.proc);
    test_coord_cleanup(&a);
    /* The threads' calls in flight (one timeout), then the last tries (one
     * more): about 2 timeouts, where one per record would be LAST_OPS. */
    if (took > LAST_BOUND_MS) {
        fail_msg("disconnect took %lld ms with %d releases owed (%d ms per call): the last tries "
                 "did not share one timeout",
                 took, LAST_OPS, LAST_CALL_MS);
    }
}

/* After a fresh stream (the resume refused with OUT_OF_RANGE) the re-Get
 * fails (the fault seam: the coordinator unreachable at that moment): it
 * is tried again, so the change made while no stream was up still reaches
 * the operation. (The failed Get was dropped and the operation waited for
 * ever.) */
static void test_failed_reget_is_tried_again(void **state)
{
    test_coord_t a;
    uint8_t buf[64];
    ferry_coordinator_params_t cp = {.target = NULL};
    ferry_coordinator_t *cl;
    ferry__coord_watch_stats_t before, after;
    ferry_op_t *op;
    ferry_status_t status;
    (void)state;

    assert_int_equal(test_coord_start(&a, etcd.endpoint, "reget-a", RESUME_TTL), 0);
    cp.target = a.target;
    assert_int_equal(ferry_coordinator_connect(&cp, &cl), FERRY_OK);
    break_stream_around_a_cancel(&a, cl, "reget-1", &op, buf, sizeof(buf), &before);
    atomic_store(&ferry__coord_test_fail_gets, 3);
    a.listen_port = a.port;
    assert_int_equal(test_coord_restart(&a), 0);

    status = ferry_op_wait(op, 20000);
    atomic_store(&ferry__coord_test_fail_gets, 0);
    assert_int_equal(status, FERRY_ERR_CANCELLED);
    ferry__coord_watch_stats(cl, &after);
    assert_true(after.out_of_range > before.out_of_range);
    assert_true(after.gets >= before.gets + 4);
    ferry_op_destroy(op);
    assert_int_equal(ferry_coordinator_disconnect(cl), FERRY_OK);
    test_coord_stop(&a);
    test_coord_cleanup(&a);
}

/* Destroying a published operation while the session thread's Get for its
 * record is in flight (held here by the hold seam, as a coordinator that
 * stopped answering holds it) returns without waiting for that call: it
 * waited out the call's timeout (10 s by default; on an event loop's thread
 * in Python, every coroutine stalled). The record is still cancelled and
 * released once the call ends. */
static void test_destroy_does_not_wait_for_a_look_in_flight(void **state)
{
    uint8_t buf[64];
    ferry_descriptor_t d = {.ptr = buf, .size = sizeof(buf), .device = FERRY_DEVICE_HOST_INIT};
    ferry_coordinator_params_t cp = {.target = coord.target};
    ferry_publish_params_t p = {.request_id = "look-destroy-1", .access_token = TOKEN};
    ferry_coordinator_t *cl;
    destroyer_t t = {.returned = false};
    pthread_t thread;
    bool held = false, returned = false;
    (void)state;

    assert_int_equal(ferry_coordinator_connect(&cp, &cl), FERRY_OK);
    assert_int_equal(ferry_writable_create(conn, &d, 1, &t.op), FERRY_OK);
    atomic_store(&ferry__coord_test_links_held, false);
    atomic_store(&ferry__coord_test_hold_links, true);
    /* The look once bound is the call the session thread is held in. */
    assert_int_equal(ferry_op_publish(t.op, cl, &p), FERRY_OK);
    for (long long until = test_now_ms() + 10000;
         !(held = atomic_load(&ferry__coord_test_links_held)) && test_now_ms() < until;) {
        poll(NULL, 0, 5);
    }
    assert_int_equal(pthread_create(&thread, NULL, destroyer_main, &t), 0);
    for (long long until = test_now_ms() + 20000;
         !(returned = atomic_load(&t.returned)) && test_now_ms() < until;) {
        poll(NULL, 0, 5);
    }
    atomic_store(&ferry__coord_test_hold_links, false);
    assert_int_equal(pthread_join(thread, NULL), 0);
    assert_true(held);
    assert_true(returned); /* while the session thread was still held */
    assert_true(record_gone("look-destroy-1", 20000));
    assert_int_equal(ferry_coordinator_disconnect(cl), FERRY_OK);
}

/* ---- fork ------------------------------------------------------------------ */

/* A child forked after libferry started (this process has a connector and
 * a coordinator client, with a session lease) cannot start it again:
 * ferry_connector_create and ferry_coordinator_connect return
 * FERRY_ERR_MISUSE at once, naming the fork. Starting UCX and gRPC there
 * hung (a UCX hook lock a parent thread held; gRPC's first call waiting on
 * the parent's epoll set, with no timer to end it) and broke the parent:
 * the child's poller took the parent's socket events, the parent's
 * KeepAlive missed its answer, and its session lease expired with every
 * record on it. The parent's client works on: a publish, and its record. */
static void test_forked_child_cannot_start_libferry(void **state)
{
    uint8_t buf[64];
    ferry_descriptor_t d = {.ptr = buf, .size = sizeof(buf), .device = FERRY_DEVICE_HOST_INIT};
    ferry_publish_params_t p = {.request_id = "fork-1", .access_token = TOKEN};
    ferry_op_t *op;
    int status = 0;
    pid_t pid;
    (void)state;

    assert_int_equal(ferry_writable_create(conn, &d, 1, &op), FERRY_OK);
    assert_int_equal(ferry_op_publish(op, client, &p), FERRY_OK); /* a session lease */
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        ferry_coordinator_params_t cp = {.target = coord.target};
        ferry_connector_t *c = NULL;
        ferry_coordinator_t *cl = NULL;
        int code = 0;
        if (ferry_connector_create(NULL, &c) != FERRY_ERR_MISUSE ||
            strstr(ferry_last_error_message(), "forked from one where libferry had started") ==
                NULL) {
            code |= 1;
        }
        if (ferry_coordinator_connect(&cp, &cl) != FERRY_ERR_MISUSE ||
            strstr(ferry_last_error_message(), "coordinator client: this process was forked") ==
                NULL) {
            code |= 2;
        }
        _exit(code);
    }
    for (long long until = test_now_ms() + 20000; waitpid(pid, &status, WNOHANG) == 0;
         poll(NULL, 0, 10)) {
        if (test_now_ms() > until) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            fail_msg("the forked child hung");
        }
    }
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);

    ferry_op_t *next;
    ferry_publish_params_t q = {.request_id = "fork-2", .access_token = TOKEN};
    assert_int_equal(ferry_writable_create(conn, &d, 1, &next), FERRY_OK);
    assert_int_equal(ferry_op_publish(next, client, &q), FERRY_OK);
    assert_int_equal(coord_state("fork-1"), ST(REGISTERED));
    assert_int_equal(coord_state("fork-2"), ST(REGISTERED));
    ferry_op_destroy(next);
    ferry_op_destroy(op);
}

/* ---- a publish whose answer never came ----------------------------------- */

typedef struct {
    ferry_op_t *op;
    ferry_coordinator_t *client;
    const char *request_id;
    const char *token; /* NULL: libferry draws one */
    ferry_status_t status;
} publisher_t;

static void *publisher_main(void *arg)
{
    publisher_t *p = arg;
    ferry_publish_params_t params = {.request_id = p->request_id, .access_token = p->token};

    p->status = ferry_op_publish(p->op, p->client, &params);
    return NULL;
}

/* A replica whose write-throughs wait for `gate` to exist (the
 * FERRY_TEST_WRITE_THROUGH_GATE seam): its Registers are applied in etcd,
 * and answered only once the gate opens. A client on it, with its session
 * lease made (the gate open meanwhile). */
static void start_gated(test_coord_t *a, const char *gate, const char *name, int timeout_ms,
                        ferry_coordinator_t **cl, ferry_op_t **session_op, void *buf)
{
    ferry_descriptor_t d = {.ptr = buf, .size = 64, .device = FERRY_DEVICE_HOST_INIT};
    ferry_coordinator_params_t cp = {.field_mask = FERRY_COORDINATOR_PARAM_FIELD_TIMEOUT,
                                     .timeout_ms = timeout_ms};
    char id[64];
    int rc;

    assert_int_equal(setenv("FERRY_TEST_WRITE_THROUGH_GATE", gate, 1), 0);
    rc = test_coord_start(a, etcd.endpoint, name, RESUME_TTL);
    unsetenv("FERRY_TEST_WRITE_THROUGH_GATE");
    assert_int_equal(rc, 0);
    cp.target = a->target;
    assert_int_equal(ferry_coordinator_connect(&cp, cl), FERRY_OK);
    snprintf(id, sizeof(id), "%s-session", name);
    ferry_publish_params_t p = {.request_id = id};
    FILE *f = fopen(gate, "w");
    assert_non_null(f);
    fclose(f);
    assert_int_equal(ferry_writable_create(conn, &d, 1, session_op), FERRY_OK);
    assert_int_equal(ferry_op_publish(*session_op, *cl, &p), FERRY_OK);
    assert_int_equal(unlink(gate), 0);
}

/* A publish on a gated replica (start_gated) whose replica is killed after
 * etcd applied its Register: the answer never comes. */
typedef struct {
    test_coord_t a;
    char *dir;
    char gate[PATH_MAX];
    uint8_t buf[64], session_buf[64];
    ferry_coordinator_t *cl;
    ferry_op_t *session_op;
    publisher_t pub;
    pthread_t thread;
} gated_t;

/* Publishes a new operation as request ID `id` in a thread on a gated
 * replica `name` (client timeout timeout_ms), waits until etcd holds its
 * record (the answer held at the gate), and kills the replica. */
static void publish_and_kill(gated_t *g, const char *name, int timeout_ms, const char *id)
{
    ferry_descriptor_t d = {
        .ptr = g->buf, .size = sizeof(g->buf), .device = FERRY_DEVICE_HOST_INIT};

    g->dir = test_tmpdir_create("gate");
    assert_non_null(g->dir);
    snprintf(g->gate, sizeof(g->gate), "%s/open", g->dir);
    start_gated(&g->a, g->gate, name, timeout_ms, &g->cl, &g->session_op, g->session_buf);
    g->pub = (publisher_t){.request_id = id, .client = g->cl};
    assert_int_equal(ferry_writable_create(conn, &d, 1, &g->pub.op), FERRY_OK);
    assert_int_equal(pthread_create(&g->thread, NULL, publisher_main, &g->pub), 0);
    for (long long until = test_now_ms() + 20000; coord_state(id) != ST(REGISTERED);
         poll(NULL, 0, 10)) {
        assert_true(test_now_ms() < until);
    }
    test_proc_kill(&g->a.proc);
}

static void gated_end(gated_t *g)
{
    ferry_op_destroy(g->pub.op);
    ferry_op_destroy(g->session_op);
    assert_int_equal(ferry_coordinator_disconnect(g->cl), FERRY_OK);
    test_coord_stop(&g->a);
    test_coord_cleanup(&g->a);
    test_tmpdir_remove(g->dir);
    free(g->dir);
}

/* The replica answering a publish is killed after etcd applied its
 * Register: the answer never comes. The publish goes again (UNAVAILABLE,
 * within its timeout) to the replica back on that address, with the token
 * libferry drew for it, and the coordinator answers that repeat as
 * registered: publish returns FERRY_OK, and the record its first try made
 * is the operation's (a Lookup with its token finds it). Before, the
 * coordinator picked the token, publish failed, and the record stayed,
 * under a token nobody knew, its request ID taken while the client lived. */
static void test_publish_goes_again_when_its_answer_never_came(void **state)
{
    gated_t g;
    Ferry__V1__LookupRequest req = FERRY__V1__LOOKUP_REQUEST__INIT;
    Ferry__V1__LookupResponse *resp = NULL;
    rpc_error_t err;
    (void)state;

    publish_and_kill(&g, "again-a", 20000, "again-1");
    g.a.listen_port = g.a.port;
    assert_int_equal(test_coord_restart(&g.a), 0);
    assert_int_equal(pthread_join(g.thread, NULL), 0);
    assert_int_equal(g.pub.status, FERRY_OK);

    req.request_id = "again-1";
    req.access_token = (char *)ferry_op_access_token(g.pub.op);
    assert_non_null(req.access_token);
    assert_int_equal(test_coord_call(chan, "Lookup", &req.base,
                                     &ferry__v1__lookup_response__descriptor,
                                     (ProtobufCMessage **)&resp, &err),
                     FERRY_OK);
    ferry__v1__lookup_response__free_unpacked(resp, NULL);
    assert_true(test_coord_log_contains(&g.a, "op again-1: Register repeated by its owner"));
    gated_end(&g);
}

/* The same, with the replica away for longer than the publish's timeout:
 * publish fails (UNAVAILABLE or TIMED_OUT), and the record its first try made, under the
 * token libferry drew and told nobody, is taken back by the session thread
 * once a replica answers (Cancel, Release), so the request ID is free
 * again: another operation publishes it. Before, it stayed taken for as
 * long as the client lived. */
static void test_failed_publish_takes_its_record_back(void **state)
{
    gated_t g;
    ferry_descriptor_t d = {.ptr = g.buf, .size = sizeof(g.buf), .device = FERRY_DEVICE_HOST_INIT};
    ferry_publish_params_t p = {.request_id = "back-1"};
    ferry_op_t *next;
    (void)state;

    publish_and_kill(&g, "back-a", 3000, "back-1");
    assert_int_equal(pthread_join(g.thread, NULL), 0);
    /* Its last try refused (UNAVAILABLE), or cut by the timeout (TIMED_OUT)
     * on a loaded machine: unsure either way. */
    assert_true(g.pub.status == FERRY_ERR_UNAVAILABLE || g.pub.status == FERRY_ERR_TIMED_OUT);
    assert_null(ferry_op_access_token(g.pub.op));
    assert_int_equal(coord_state("back-1"), ST(REGISTERED));

    g.a.listen_port = g.a.port;
    assert_int_equal(test_coord_restart(&g.a), 0);
    assert_true(record_gone("back-1", 20000));
    assert_int_equal(ferry_writable_create(conn, &d, 1, &next), FERRY_OK);
    assert_int_equal(ferry_op_publish(next, g.cl, &p), FERRY_OK);
    assert_int_equal(coord_state("back-1"), ST(REGISTERED));
    ferry_op_destroy(next);
    gated_end(&g);
}

/* The tests' interrupt check: true from its `after`-th call on, or once
 * `stop` is set. */
typedef struct {
    atomic_int calls;
    int after;
    atomic_bool stop;
} trip_t;

static bool trip_check(void *arg)
{
    trip_t *t = arg;
    return atomic_fetch_add(&t->calls, 1) + 1 >= t->after || atomic_load(&t->stop);
}

/* A publish in a thread of its own, with an interrupt check. */
typedef struct {
    publisher_t pub;
    trip_t *trip;
} tripped_publisher_t;

static void *tripped_publisher_main(void *arg)
{
    tripped_publisher_t *t = arg;

    ferry_interrupt_check_set(trip_check, t->trip);
    publisher_main(&t->pub);
    ferry_interrupt_check_set(NULL, NULL);
    return NULL;
}

/* Ten minutes, beyond the test's own timeout: a wait that the interrupt
 * check did not end fails the run instead of passing slowly. */
#define INTERRUPT_CALL_MS 600000

/* A caller's interrupt check (ferry_interrupt_check_set) ends its waits
 * on a coordinator that does not answer (SIGSTOPped): a publish and a
 * write by ID end FERRY_ERR_CANCELLED ("interrupted"), and disconnect
 * returns, leaving a destroyed operation's release to the session lease.
 * Each used to wait for its timeout (Ctrl-C in Python waited with it).
 * The interrupted publish leaves the operation unpublished, and the next
 * call of the thread is not interrupted by the last one's check. */
static void test_interrupt_check_ends_waits_on_a_frozen_coordinator(void **state)
{
    test_coord_t a;
    uint8_t buf[64], session_buf[64];
    ferry_descriptor_t d = {.ptr = buf, .size = sizeof(buf), .device = FERRY_DEVICE_HOST_INIT};
    ferry_descriptor_t sd = {
        .ptr = session_buf, .size = sizeof(session_buf), .device = FERRY_DEVICE_HOST_INIT};
    ferry_coordinator_params_t cp = {.field_mask = FERRY_COORDINATOR_PARAM_FIELD_TIMEOUT,
                                     .timeout_ms = INTERRUPT_CALL_MS};
    ferry_publish_params_t sp = {.request_id = "intr-session", .access_token = TOKEN};
    ferry_publish_params_t p = {.request_id = "intr-1"};
    ferry_claim_params_t claim = {.field_mask = FERRY_CLAIM_PARAM_FIELD_WAIT,
                                  .request_id = "intr-session",
                                  .access_token = TOKEN,
                                  .wait_ms = INTERRUPT_CALL_MS};
    ferry_coordinator_t *cl;
    ferry_op_t *session_op, *op, *writer = NULL;
    trip_t t = {.after = 3};
    trip_t other = {.after = INT_MAX};
    tripped_publisher_t tp = {.pub = {.request_id = "intr-2"}, .trip = &other};
    pthread_t thread;
    (void)state;

    assert_int_equal(test_coord_start(&a, etcd.endpoint, "intr-a", RESUME_TTL), 0);
    cp.target = a.target;
    assert_int_equal(ferry_coordinator_connect(&cp, &cl), FERRY_OK);
    assert_int_equal(ferry_writable_create(conn, &sd, 1, &session_op), FERRY_OK);
    assert_int_equal(ferry_op_publish(session_op, cl, &sp), FERRY_OK);
    assert_int_equal(ferry_writable_create(conn, &d, 1, &op), FERRY_OK);
    assert_int_equal(kill(a.proc.pid, SIGSTOP), 0);

    ferry_interrupt_check_set(trip_check, &t);
    assert_int_equal(ferry_op_publish(op, cl, &p), FERRY_ERR_CANCELLED);
    assert_non_null(strstr(ferry_last_error_message(), "interrupted"));
    assert_true(atomic_load(&t.calls) >= t.after);
    assert_null(ferry_op_access_token(op));

    atomic_store(&t.calls, 0);
    assert_int_equal(ferry_write_begin_by_id(conn, cl, &claim, &d, 1, &writer),
                     FERRY_ERR_CANCELLED);
    assert_non_null(strstr(ferry_last_error_message(), "interrupted"));
    assert_null(writer);
    assert_true(atomic_load(&t.calls) >= t.after);

    ferry_op_destroy(op);
    ferry_op_destroy(session_op); /* its release cannot go: disconnect waits for it */
    /* Another thread's publish in flight: disconnect refuses (it used to
     * free the client under it), until the publish returns. */
    tp.pub.client = cl;
    assert_int_equal(ferry_writable_create(conn, &d, 1, &tp.pub.op), FERRY_OK);
    assert_int_equal(pthread_create(&thread, NULL, tripped_publisher_main, &tp), 0);
    for (long long until = test_now_ms() + 20000;
         atomic_load(&other.calls) == 0 && test_now_ms() < until;) {
        poll(NULL, 0, 5);
    }
    assert_true(atomic_load(&other.calls) > 0);
    assert_int_equal(ferry_coordinator_disconnect(cl), FERRY_ERR_BUSY);
    assert_non_null(strstr(ferry_last_error_message(), "calls in flight"));
    atomic_store(&other.stop, true);
    assert_int_equal(pthread_join(thread, NULL), 0);
    assert_int_equal(tp.pub.status, FERRY_ERR_CANCELLED);
    ferry_op_destroy(tp.pub.op);

    atomic_store(&t.calls, 0);
    assert_int_equal(ferry_coordinator_disconnect(cl), FERRY_OK);
    assert_true(atomic_load(&t.calls) >= t.after);
    ferry_interrupt_check_set(NULL, NULL);

    assert_int_equal(kill(a.proc.pid, SIGCONT), 0);
    test_coord_stop(&a);
    test_coord_cleanup(&a);
}

/* A claim whose answer never came (the replica down: UNAVAILABLE) is
 * given up by the session thread (a Complete, as failed), held here until
 * the client's retry of the same ID was granted on the same session
 * lease. The Complete names the claim_id the client drew for the first
 * claim, so the coordinator refuses it as another claim's, and the retry's
 * claim stands. It used to carry claim_id 0, which the coordinator checks
 * only by lease: it ended the retry's claim (ERRORED, "the writer gave up
 * its claim"), and the receiver failed while the writer went on. The
 * receiver never progresses (so the writer's transfer never ends, and no
 * other Complete goes), and the writer waits for it for ten minutes. */
static void test_an_abandoned_claim_cannot_end_the_retry(void **state)
{
    test_coord_t a;
    uint8_t rbuf[64], wbuf[64], sbuf[64];
    ferry_descriptor_t rd = {.ptr = rbuf, .size = sizeof(rbuf), .device = FERRY_DEVICE_HOST_INIT};
    ferry_descriptor_t wd = {.ptr = wbuf, .size = sizeof(wbuf), .device = FERRY_DEVICE_HOST_INIT};
    ferry_descriptor_t sd = {.ptr = sbuf, .size = sizeof(sbuf), .device = FERRY_DEVICE_HOST_INIT};
    ferry_connector_params_t rp = {.field_mask = FERRY_CONNECTOR_PARAM_FIELD_PROGRESS_MODE,
                                   .progress_mode = FERRY_PROGRESS_CALLER};
    ferry_connector_params_t wp = {.field_mask = FERRY_CONNECTOR_PARAM_FIELD_CLAIM_TIMEOUT_MS,
                                   .claim_timeout_ms = 600000};
    ferry_coordinator_params_t cp = {.field_mask = FERRY_COORDINATOR_PARAM_FIELD_TIMEOUT,
                                     .timeout_ms = 5000};
    ferry_publish_params_t rpub = {.request_id = "abandon-1", .access_token = TOKEN};
    ferry_publish_params_t spub = {.request_id = "abandon-session", .access_token = TOKEN};
    ferry_claim_params_t claim = {.request_id = "abandon-1", .access_token = TOKEN};
    ferry_connector_t *rconn, *wconn;
    ferry_coordinator_t *cl;
    ferry_op_t *recv_op, *session_op, *writer = NULL;
    ferry_status_t first;
    bool refused = false;
    (void)state;

    assert_int_equal(ferry_connector_create(&rp, &rconn), FERRY_OK);
    assert_int_equal(ferry_connector_create(&wp, &wconn), FERRY_OK);
    assert_int_equal(ferry_writable_create(rconn, &rd, 1, &recv_op), FERRY_OK);
    assert_int_equal(ferry_op_publish(recv_op, client, &rpub), FERRY_OK);

    assert_int_equal(test_coord_start(&a, etcd.endpoint, "abandon-a", RESUME_TTL), 0);
    cp.target = a.target;
    assert_int_equal(ferry_coordinator_connect(&cp, &cl), FERRY_OK);
    assert_int_equal(ferry_writable_create(conn, &sd, 1, &session_op), FERRY_OK);
    assert_int_equal(ferry_op_publish(session_op, cl, &spub), FERRY_OK); /* the session lease */

    atomic_store(&ferry__coord_test_links_held, false);
    atomic_store(&ferry__coord_test_hold_links, true);
    assert_int_equal(test_coord_stop(&a), 0);
    first = ferry_write_begin_by_id(wconn, cl, &claim, &wd, 1, &writer);
    assert_true(first == FERRY_ERR_UNAVAILABLE || first == FERRY_ERR_TIMED_OUT);
    for (long long until = test_now_ms() + 20000;
         !atomic_load(&ferry__coord_test_links_held) && test_now_ms() < until;) {
        poll(NULL, 0, 5);
    }
    assert_true(atomic_load(&ferry__coord_test_links_held));

    a.listen_port = a.port;
    assert_int_equal(test_coord_restart(&a), 0);
    assert_int_equal(ferry_write_begin_by_id(wconn, cl, &claim, &wd, 1, &writer), FERRY_OK);
    assert_int_equal(coord_state("abandon-1"), ST(CLAIMED));
    atomic_store(&ferry__coord_test_hold_links, false);
    for (long long until = test_now_ms() + 20000; !refused && test_now_ms() < until;
         poll(NULL, 0, 20)) {
        refused = test_coord_log_contains(&a, "is not the current claim on request_id 'abandon-1'");
    }
    assert_true(refused);
    assert_int_equal(coord_state("abandon-1"), ST(CLAIMED));
    assert_false(ferry_op_status_is_final(ferry_op_status(recv_op)));

    /* Now the receiver answers: the retry's transfer ends as it should,
     * and nothing is left in flight inside UCX when the connectors close. */
    for (long long until = test_now_ms() + 20000;
         !(ferry_op_status_is_final(ferry_op_status(writer)) &&
           ferry_op_status_is_final(ferry_op_status(recv_op))) &&
         test_now_ms() < until;) {
        assert_int_equal(ferry_connector_progress(rconn), FERRY_OK);
        poll(NULL, 0, 1);
    }
    assert_int_equal(ferry_op_status(writer), FERRY_OP_STATUS_COMPLETE);
    assert_int_equal(ferry_op_status(recv_op), FERRY_OP_STATUS_COMPLETE);
    ferry_op_destroy(writer);
    ferry_op_destroy(session_op);
    assert_int_equal(ferry_coordinator_disconnect(cl), FERRY_OK);
    ferry_op_destroy(recv_op);
    assert_int_equal(ferry_connector_destroy(wconn), FERRY_OK);
    assert_int_equal(ferry_connector_destroy(rconn), FERRY_OK);
    test_coord_stop(&a);
    test_coord_cleanup(&a);
}

/* Publishes a new operation over d as tp says, in a thread, on g's gated
 * replica (its gate shut), until etcd holds the record; then the thread's
 * interrupt check ends the publish (CANCELLED: unsure) and the gate opens. */
static void publish_interrupted_at_the_gate(gated_t *g, tripped_publisher_t *tp,
                                            const ferry_descriptor_t *d)
{
    FILE *f;

    assert_int_equal(ferry_writable_create(conn, d, 1, &tp->pub.op), FERRY_OK);
    assert_int_equal(pthread_create(&g->thread, NULL, tripped_publisher_main, tp), 0);
    for (long long until = test_now_ms() + 20000; coord_state(tp->pub.request_id) != ST(REGISTERED);
         poll(NULL, 0, 10)) {
        assert_true(test_now_ms() < until);
    }
    atomic_store(&tp->trip->stop, true);
    assert_int_equal(pthread_join(g->thread, NULL), 0);
    assert_int_equal(tp->pub.status, FERRY_ERR_CANCELLED);
    f = fopen(g->gate, "w"); /* the replica answers again */
    assert_non_null(f);
    fclose(f);
}

/* A publish with the caller's token interrupted after etcd applied its
 * Register (the answer held at a gated replica) fails unsure: the record
 * is the caller's to take over by publishing the operation again. The
 * operation destroyed instead, the client takes the record back (Cancel,
 * Release) and the request ID is free: another operation publishes it with
 * the same token. It used to stay taken for as long as the client lived
 * (ALREADY_EXISTS; audit-s25-capi M2). */
static void test_failed_publish_with_its_own_token_is_taken_back_at_destroy(void **state)
{
    gated_t g;
    ferry_descriptor_t d = {.ptr = g.buf, .size = sizeof(g.buf), .device = FERRY_DEVICE_HOST_INIT};
    ferry_publish_params_t p = {.request_id = "own-1", .access_token = TOKEN};
    trip_t trip = {.after = INT_MAX};
    tripped_publisher_t tp = {.pub = {.request_id = "own-1", .token = TOKEN}, .trip = &trip};
    ferry_op_t *next;
    (void)state;

    g.dir = test_tmpdir_create("gate");
    assert_non_null(g.dir);
    snprintf(g.gate, sizeof(g.gate), "%s/open", g.dir);
    start_gated(&g.a, g.gate, "own-a", 600000, &g.cl, &g.session_op, g.session_buf);
    tp.pub.client = g.cl;
    publish_interrupted_at_the_gate(&g, &tp, &d);
    ferry_op_destroy(tp.pub.op);
    assert_true(record_gone("own-1", 20000));
    assert_int_equal(ferry_writable_create(conn, &d, 1, &next), FERRY_OK);
    assert_int_equal(ferry_op_publish(next, g.cl, &p), FERRY_OK);
    ferry_op_destroy(next);

    /* The same with the client disconnected before the operation is
     * destroyed: disconnect takes the record back, and the operation
     * outlives the client. */
    assert_int_equal(unlink(g.gate), 0);
    trip = (trip_t){.after = INT_MAX};
    tp.pub.request_id = "own-2";
    publish_interrupted_at_the_gate(&g, &tp, &d);
    g.pub.op = NULL;
    gated_end(&g);
    assert_true(record_gone("own-2", 20000));
    ferry_op_destroy(tp.pub.op);
}

/* Arguments refused before any work (audit-s25-capi M4, L1, L2): a wait
 * of -5 ms (a computed deadline gone negative) waited for ever; an empty
 * access token let the coordinator pick the token, which a lost answer
 * takes with it; a NULL op_p crashed after the claim was granted and the
 * transfer begun, and a NULL coordinator_p after the client's threads
 * started. */
static void test_bad_arguments_are_refused_before_any_work(void **state)
{
    uint8_t buf[64];
    ferry_descriptor_t d = {.ptr = buf, .size = sizeof(buf), .device = FERRY_DEVICE_HOST_INIT};
    ferry_publish_params_t empty = {.request_id = "bad-args-1", .access_token = ""};
    ferry_publish_params_t p = {.request_id = "bad-args-1", .access_token = TOKEN};
    ferry_claim_params_t claim = {.request_id = "bad-args-1", .access_token = TOKEN};
    ferry_coordinator_params_t cp = {.target = coord.target};
    ferry_op_t *op, *op2 = NULL;
    (void)state;

    assert_int_equal(ferry_writable_create(conn, &d, 1, &op), FERRY_OK);
    assert_int_equal(ferry_op_wait(op, -5), FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(ferry_last_error_message(), "timeout_ms"));
    assert_int_equal(ferry_op_wait(op, INT_MIN), FERRY_ERR_INVALID_ARGUMENT);
    assert_int_equal(ferry_op_wait(op, 0), FERRY_ERR_TIMED_OUT);

    assert_int_equal(ferry_op_publish(op, client, &empty), FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(ferry_last_error_message(), "params.access_token"));
    assert_int_equal(coord_state("bad-args-1"), -1); /* nothing registered */

    assert_int_equal(ferry_op_publish(op, client, &p), FERRY_OK);
    assert_int_equal(ferry_write_begin_by_id(conn, client, &claim, &d, 1, NULL),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(ferry_last_error_message(), "op_p"));
    assert_int_equal(coord_state("bad-args-1"), ST(REGISTERED)); /* not claimed */
    assert_int_equal(ferry_coordinator_connect(&cp, NULL), FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(ferry_last_error_message(), "coordinator_p"));
    ferry_op_destroy(op);

    /* A bad request ID or token is refused at once, by the coordinator's
     * rules (common/md_rules.h), not after a coordinator that cannot be
     * reached cost the call its timeout (ten minutes here, past the
     * test's own). */
    ferry_coordinator_t *away;
    ferry_publish_params_t bad_id = {.request_id = "bad id", .access_token = TOKEN};
    ferry_claim_params_t short_token = {.request_id = "bad-args-2", .access_token = "short"};
    cp = (ferry_coordinator_params_t){.field_mask = FERRY_COORDINATOR_PARAM_FIELD_TIMEOUT,
                                      .target = "127.0.0.1:1",
                                      .timeout_ms = INTERRUPT_CALL_MS};
    assert_int_equal(ferry_coordinator_connect(&cp, &away), FERRY_OK);
    /* A final operation is not published (audit-s25-capi I1). */
    assert_int_equal(ferry_writable_create(conn, &d, 1, &op), FERRY_OK);
    assert_int_equal(ferry_op_cancel(op), FERRY_OK);
    assert_int_equal(ferry_op_publish(op, away, &p), FERRY_ERR_FAILED_PRECONDITION);
    assert_non_null(strstr(ferry_last_error_message(), "CANCELLED"));
    ferry_op_destroy(op);
    assert_int_equal(ferry_writable_create(conn, &d, 1, &op), FERRY_OK);
    assert_int_equal(ferry_op_publish(op, away, &bad_id), FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(ferry_last_error_message(), "params.request_id has a character"));
    assert_int_equal(ferry_write_begin_by_id(conn, away, &short_token, &d, 1, &op2),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(ferry_last_error_message(), "params.access_token is 5 bytes"));
    ferry_op_destroy(op);
    assert_int_equal(ferry_coordinator_disconnect(away), FERRY_OK);
}

/* A writer whose peer_error_handling differs from the receiver's is refused
 * at the coordinator's Claim (FAILED_PRECONDITION naming the field), with
 * nothing written: the record stays REGISTERED, the receiver's operation is
 * unharmed, and a writer set alike then completes it. Before, the Claim was
 * granted, the data plane refused the metadata after it, and the claim was
 * given up: the receiver's operation ended ERRORED (review-s34 H1). */
static void test_claim_refused_when_peer_error_handling_differs(void **state)
{
    ferry_connector_params_t off = {.field_mask = FERRY_CONNECTOR_PARAM_FIELD_PEER_ERROR_HANDLING,
                                    .peer_error_handling = false};
    uint8_t rbuf[64] = {0}, wbuf[64];
    ferry_descriptor_t rd = {.ptr = rbuf, .size = sizeof(rbuf), .device = FERRY_DEVICE_HOST_INIT};
    ferry_descriptor_t wd = {.ptr = wbuf, .size = sizeof(wbuf), .device = FERRY_DEVICE_HOST_INIT};
    ferry_publish_params_t pub = {.request_id = "peer-errors-1", .access_token = TOKEN};
    ferry_claim_params_t claim = {.request_id = "peer-errors-1", .access_token = TOKEN};
    ferry_connector_t *writer_off;
    ferry_op_t *recv_op, *writer = NULL;
    (void)state;

    memset(wbuf, 0x5c, sizeof(wbuf));
    assert_int_equal(ferry_connector_create(&off, &writer_off), FERRY_OK);
    assert_int_equal(ferry_writable_create(conn, &rd, 1, &recv_op), FERRY_OK); /* on */
    assert_int_equal(ferry_op_publish(recv_op, client, &pub), FERRY_OK);
    assert_int_equal(ferry_write_begin_by_id(writer_off, client, &claim, &wd, 1, &writer),
                     FERRY_ERR_FAILED_PRECONDITION);
    assert_null(writer);
    assert_non_null(strstr(ferry_last_error_message(), "peer_error_handling"));
    assert_int_equal(coord_state("peer-errors-1"), ST(REGISTERED));
    assert_int_equal(ferry_op_status(recv_op), FERRY_OP_STATUS_INITIALIZED);

    /* A libferry from before the field sends its sizes and says nothing:
     * refused the same way (its CLAIM would be, after the grant). */
    {
        Ferry__V1__ClaimRequest old = FERRY__V1__CLAIM_REQUEST__INIT;
        Ferry__V1__ClaimResponse *granted = NULL;
        uint64_t sizes[1] = {sizeof(wbuf)};
        rpc_error_t err;

        old.request_id = "peer-errors-1";
        old.access_token = TOKEN;
        old.kind = FERRY__V1__OPERATION_KIND__OPERATION_KIND_WRITE;
        old.n_descriptor_sizes = 1;
        old.descriptor_sizes = sizes;
        assert_int_equal(test_coord_call(chan, "Claim", &old.base,
                                         &ferry__v1__claim_response__descriptor,
                                         (ProtobufCMessage **)&granted, &err),
                         FERRY_ERR_FAILED_PRECONDITION);
        assert_non_null(strstr(err.message, "the claimant's is not said"));
        assert_int_equal(coord_state("peer-errors-1"), ST(REGISTERED));
    }

    assert_int_equal(ferry_write_begin_by_id(conn, client, &claim, &wd, 1, &writer), FERRY_OK);
    assert_int_equal(ferry_op_wait(writer, 20000), FERRY_OK);
    assert_int_equal(ferry_op_wait(recv_op, 20000), FERRY_OK);
    assert_memory_equal(rbuf, wbuf, sizeof(rbuf));
    ferry_op_destroy(writer);
    ferry_op_destroy(recv_op);
    assert_int_equal(ferry_connector_destroy(writer_off), FERRY_OK);
}

/* Puts libferry's test seams back after each test, so that a test that
 * failed half-way (cmocka leaves it at the failed assertion) does not hold
 * the session thread's links or refuse the next tests' calls. */
static int reset_seams(void **state)
{
    (void)state;
    atomic_store(&ferry__coord_test_hold_links, false);
    atomic_store(&ferry__coord_test_fail_gets, 0);
    atomic_store(&ferry__coord_test_refuse_reports, 0);
    ferry_interrupt_check_set(NULL, NULL);
    return 0;
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_destroy_unfinished_cancels_at_coordinator, reset_seams),
        cmocka_unit_test_teardown(test_publish_duplicate_is_refused, reset_seams),
        cmocka_unit_test_teardown(test_claim_then_publish_in_one_client, reset_seams),
        cmocka_unit_test_teardown(test_disconnect_busy, reset_seams),
        cmocka_unit_test_teardown(test_session_lease_is_renewed, reset_seams),
        cmocka_unit_test_teardown(test_bound_operation_is_watched_not_polled, reset_seams),
        cmocka_unit_test_teardown(test_watch_resumes_after_a_broken_stream, reset_seams),
        cmocka_unit_test_teardown(test_watch_falls_back_when_the_history_is_gone, reset_seams),
        cmocka_unit_test_teardown(test_many_operations_between_two_workers, reset_seams),
        cmocka_unit_test_teardown(test_writer_killed_mid_transfer, reset_seams),
        cmocka_unit_test_teardown(test_receiver_cancels_mid_transfer, reset_seams),
        cmocka_unit_test_teardown(test_two_writers_race, reset_seams),
        cmocka_unit_test_teardown(test_coordinator_down_before_claim, reset_seams),
        cmocka_unit_test_teardown(test_coordinator_down_after_claim, reset_seams),
        cmocka_unit_test_teardown(test_renewal_does_not_wait_behind_a_hung_call, reset_seams),
        cmocka_unit_test_teardown(test_release_outlasts_an_unfinished_claim, reset_seams),
        cmocka_unit_test_teardown(test_disconnect_tries_a_refused_release_twice, reset_seams),
        cmocka_unit_test_teardown(test_cancel_on_destroy_is_tried_again, reset_seams),
        cmocka_unit_test_teardown(test_destroy_does_not_wait_for_the_coordinator, reset_seams),
        cmocka_unit_test_teardown(test_failed_reget_is_tried_again, reset_seams),
        cmocka_unit_test_teardown(test_refused_report_is_sent_again, reset_seams),
        cmocka_unit_test_teardown(test_disconnect_last_tries_share_one_timeout, reset_seams),
        cmocka_unit_test_teardown(test_session_lease_survives_an_outage, reset_seams),
        cmocka_unit_test_teardown(test_destroy_does_not_wait_for_a_look_in_flight, reset_seams),
        cmocka_unit_test_teardown(test_forked_child_cannot_start_libferry, reset_seams),
        cmocka_unit_test_teardown(test_publish_goes_again_when_its_answer_never_came, reset_seams),
        cmocka_unit_test_teardown(test_failed_publish_takes_its_record_back, reset_seams),
        cmocka_unit_test_teardown(test_interrupt_check_ends_waits_on_a_frozen_coordinator,
                                  reset_seams),
        cmocka_unit_test_teardown(test_an_abandoned_claim_cannot_end_the_retry, reset_seams),
        cmocka_unit_test_teardown(test_bad_arguments_are_refused_before_any_work, reset_seams),
        cmocka_unit_test_teardown(test_claim_refused_when_peer_error_handling_differs, reset_seams),
        cmocka_unit_test_teardown(test_failed_publish_with_its_own_token_is_taken_back_at_destroy,
                                  reset_seams),
    };

    self_exe = argv[0];
    if (argc == 6 && strcmp(argv[1], "--role") == 0) {
        int in = atoi(argv[4]), out = atoi(argv[5]);
        if (strcmp(argv[2], "stalled-writer") == 0) {
            return role_stalled_writer(argv[3], in, out);
        }
        if (strcmp(argv[2], "cancelling-receiver") == 0) {
            return role_cancelling_receiver(argv[3], in, out);
        }
        if (strcmp(argv[2], "racing-writer") == 0) {
            return role_racing_writer(argv[3], in, out);
        }
        if (strcmp(argv[2], "many-receiver") == 0) {
            return role_many_receiver(argv[3], in, out);
        }
        return 2;
    }
    /* FERRY_TEST_FILTER="test_coordinator_down*" runs only the matching
     * tests (cmocka's pattern), to repeat one case. */
    if (getenv("FERRY_TEST_FILTER") != NULL) {
        cmocka_set_test_filter(getenv("FERRY_TEST_FILTER"));
    }
    return cmocka_run_group_tests(tests, setup, teardown);
}
