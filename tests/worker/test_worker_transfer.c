/*
 * test_worker_transfer.c: real UCX transfers between two processes.
 *
 * The parent is the active side. Its partner is this same executable
 * re-executed (fork + exec, so neither process inherits the other's UCX
 * state) in one of two roles:
 *
 *   --passive CMD_FD RES_FD   a passive server: for each command it creates a
 *                             writable or readable, sends the metadata back,
 *                             waits, checks every received byte against the
 *                             pattern, and reports.
 *   --writer CMD_FD RES_FD    reads metadata, writes with the notice held
 *                             back (fault hook), says "ready", then waits to
 *                             be killed, without peer error handling.
 *                             --writer-default: the same with the default
 *                             (peer error handling).
 *
 * Every read from the partner has a deadline; no sleep synchronizes anything.
 * With --tcp-subset only a few cases run (the test runs again under
 * UCX_TLS=tcp that way).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ferry/coordinator.h"
#include "pair.h"
#include "worker/ferry_int.h"

#define WAIT_TIMEOUT_MS 20000

enum { MODE_WAIT = 0, MODE_CANCEL = 1, MODE_DESTROY = 2 };

typedef struct {
    char kind; /* 'W' writable, 'R' readable, 'Q' quit */
    int32_t mode;
    uint32_t n;
    uint64_t size;
    uint32_t seed;
} cmd_t;

typedef struct {
    int32_t status;    /* ferry_op_wait's result (or the create error) */
    int32_t op_status; /* ferry_op_status after */
    int32_t bytes_ok;  /* every byte matched (writable) */
} report_t;

/* ---- partner roles ---------------------------------------------------- */

/* What a served command leaves alive until the next command arrives, so the
 * parent can still reach a cancelled operation. */
typedef struct {
    ferry_op_t *op;
    uint8_t **bufs;
    ferry_descriptor_t *descs;
    uint32_t n;
} served_t;

static void served_release(served_t *s)
{
    ferry_op_destroy(s->op);
    free(s->descs);
    if (s->bufs != NULL) {
        pair_free_bufs(s->bufs, s->n);
    }
    memset(s, 0, sizeof(*s));
}

static void passive_one(ferry_connector_t *c, const cmd_t *cmd, int res_fd, served_t *s)
{
    report_t rep = {0};
    const uint8_t *md;
    size_t md_len;

    s->n = cmd->n;
    s->bufs = pair_alloc_bufs(cmd->n, cmd->size);
    s->descs = pair_make_descs(s->bufs, cmd->n, cmd->size);
    if (cmd->kind == 'R') {
        for (uint32_t i = 0; i < cmd->n; i++) {
            pair_fill(s->bufs[i], cmd->size, cmd->seed, i);
        }
    }
    rep.status = cmd->kind == 'W' ? ferry_writable_create(c, s->descs, cmd->n, &s->op)
                                  : ferry_readable_create(c, s->descs, cmd->n, &s->op);
    if (rep.status != FERRY_OK) {
        pair_send_blob(res_fd, NULL, 0);
        pair_write(res_fd, &rep, sizeof(rep));
        return;
    }
    ferry_op_metadata(s->op, &md, &md_len);
    pair_send_blob(res_fd, md, (uint32_t)md_len);
    if (cmd->mode == MODE_CANCEL) {
        ferry_op_cancel(s->op);
        rep.status = ferry_op_wait(s->op, 0);
    } else if (cmd->mode == MODE_DESTROY) {
        ferry_op_destroy(s->op);
        s->op = NULL;
        rep.status = FERRY_OK;
    } else {
        rep.status = ferry_op_wait(s->op, WAIT_TIMEOUT_MS);
    }
    rep.op_status = s->op != NULL ? (int32_t)ferry_op_status(s->op) : -1;
    rep.bytes_ok = 1;
    if (cmd->kind == 'W' && cmd->mode == MODE_WAIT) {
        for (uint32_t i = 0; i < cmd->n; i++) {
            size_t bad = pair_check(s->bufs[i], cmd->size, cmd->seed, i);
            if (bad != cmd->size) {
                fprintf(stderr, "passive: descriptor %u byte %zu differs\n", i, bad);
                rep.bytes_ok = 0;
                break;
            }
        }
    }
    pair_write(res_fd, &rep, sizeof(rep));
}

static int passive_main(int cmd_fd, int res_fd)
{
    ferry_connector_params_t params = {.field_mask = FERRY_CONNECTOR_PARAM_FIELD_NAME,
                                       .name = "passive"};
    ferry_connector_t *c;
    served_t served = {0};
    cmd_t cmd;

    if (ferry_connector_create(&params, &c) != FERRY_OK) {
        return 2;
    }
    while (read(cmd_fd, &cmd, sizeof(cmd)) == (ssize_t)sizeof(cmd) && cmd.kind != 'Q') {
        served_release(&served);
        passive_one(c, &cmd, res_fd, &served);
    }
    served_release(&served);
    /* 3: the connector still held operations or regions (the parent's
     * group teardown reports it). */
    return ferry_connector_destroy(c) == FERRY_OK ? 0 : 3;
}

/* peer_errors: 0 or 1, the connector's peer_error_handling; -1: unset. */
static int writer_main(int cmd_fd, int res_fd, int peer_errors)
{
    ferry_connector_params_t params = {
        .field_mask = peer_errors >= 0 ? FERRY_CONNECTOR_PARAM_FIELD_PEER_ERROR_HANDLING : 0,
        .peer_error_handling = peer_errors == 1};
    ferry_connector_t *c;
    ferry_descriptor_t desc;
    ferry_op_t *op;
    uint8_t *md, *buf;
    uint32_t md_len;
    int64_t deadline;

    if (pair_recv_blob(cmd_fd, &md, &md_len) != 0 ||
        ferry_connector_create(&params, &c) != FERRY_OK) {
        return 2;
    }
    buf = malloc(4096);
    pair_fill(buf, 4096, 9, 0);
    desc = (ferry_descriptor_t){buf, 4096, FERRY_DEVICE_HOST_INIT};
    atomic_store(&ferry__test_hold_notice, true);
    if (ferry_write_begin(c, &desc, 1, md, md_len, &op) != FERRY_OK) {
        return 3;
    }
    /* Wait (with a deadline) until the data moved and the notice is held. */
    deadline = pair_now_ms() + PAIR_IO_TIMEOUT_MS;
    while (!atomic_load(&ferry__test_notice_held) && pair_now_ms() < deadline) {
        ferry_op_wait(op, 10);
    }
    pair_write(res_fd, "R", 1);
    for (;;) {
        pause(); /* until SIGKILL */
    }
}

/* ---- the parent side -------------------------------------------------- */

static const char *self_exe;

typedef struct {
    pair_partner_t passive;
    ferry_connector_t *c;
} world_t;

static world_t world;

static int group_setup(void **state)
{
    (void)state;
    /* Spawn first, then start UCX here: exec gives the partner a clean slate. */
    world.passive = pair_spawn(self_exe, "--passive");
    if (world.passive.pid <= 0 || ferry_connector_create(NULL, &world.c) != FERRY_OK) {
        return -1;
    }
    return 0;
}

/* How the passive partner ended, when not with exit status 0 (a failed
 * check of its own, a crash, a hang it was killed for, or under ASan a leak
 * at exit). cmocka 1.1.5 prints a failed group teardown but does not count
 * it, so main() adds this to the result. */
static int passive_failures;

static int group_teardown(void **state)
{
    cmd_t quit = {.kind = 'Q'};
    (void)state;

    pair_write(world.passive.cmd_fd, &quit, sizeof(quit));
    pair_close(&world.passive);
    ferry_connector_destroy(world.c);
    if (pair_reap_clean(world.passive.pid, "the passive partner")) {
        return 0;
    }
    passive_failures++;
    return -1;
}

/* Asks the passive partner for an operation; returns its metadata. */
static void request(char kind, int mode, uint32_t n, uint64_t size, uint32_t seed, uint8_t **md_p,
                    uint32_t *md_len_p)
{
    cmd_t cmd = {.kind = kind, .mode = mode, .n = n, .size = size, .seed = seed};

    assert_int_equal(pair_write(world.passive.cmd_fd, &cmd, sizeof(cmd)), 0);
    assert_int_equal(pair_recv_blob(world.passive.res_fd, md_p, md_len_p), 0);
    assert_true(*md_len_p > 0);
}

static report_t get_report(void)
{
    report_t rep;
    assert_int_equal(pair_read(world.passive.res_fd, &rep, sizeof(rep), PAIR_IO_TIMEOUT_MS), 0);
    return rep;
}

/* A write ('W') or read ('R') of n regions of size bytes, the pattern
 * seeded by seed, to or from the passive partner; every byte is checked on
 * the side it arrives at. */
static void transfer(char kind, uint32_t n, uint64_t size, uint32_t seed)
{
    uint8_t **bufs = pair_alloc_bufs(n, size);
    ferry_descriptor_t *descs = pair_make_descs(bufs, n, size);
    ferry_op_t *op;
    uint8_t *md;
    uint32_t md_len;
    ferry_status_t st;
    report_t rep;

    if (kind == 'W') {
        for (uint32_t i = 0; i < n; i++) {
            pair_fill(bufs[i], size, seed, i);
        }
    }
    request(kind, MODE_WAIT, n, size, seed, &md, &md_len);
    st = kind == 'W' ? ferry_write_begin(world.c, descs, n, md, md_len, &op)
                     : ferry_read_begin(world.c, descs, n, md, md_len, &op);
    if (st != FERRY_OK) {
        fail_msg("begin: %s: %s", ferry_status_name(st), ferry_last_error_message());
    }
    st = ferry_op_wait(op, WAIT_TIMEOUT_MS);
    if (st != FERRY_OK) {
        fail_msg("wait: %s: %s", ferry_status_name(st), ferry_last_error_message());
    }
    assert_int_equal(ferry_op_status(op), FERRY_OP_STATUS_COMPLETE);
    rep = get_report();
    assert_int_equal(rep.status, FERRY_OK);
    assert_int_equal(rep.op_status, FERRY_OP_STATUS_COMPLETE);
    assert_int_equal(rep.bytes_ok, 1);
    if (kind == 'R') {
        for (uint32_t i = 0; i < n; i++) {
            assert_int_equal(pair_check(bufs[i], size, seed, i), size);
        }
    }
    ferry_op_destroy(op);
    free(md);
    free(descs);
    pair_free_bufs(bufs, n);
}

/* clang-format off */
static void test_write_1b(void **s) { (void)s; transfer('W', 1, 1, 1); }
static void test_write_4k(void **s) { (void)s; transfer('W', 1, 4096, 2); }
static void test_write_1m(void **s) { (void)s; transfer('W', 1, 1u << 20, 3); }
static void test_write_64m(void **s) { (void)s; transfer('W', 1, 64u << 20, 4); }
static void test_write_8x4k(void **s) { (void)s; transfer('W', 8, 4096, 5); }
static void test_write_8x1m(void **s) { (void)s; transfer('W', 8, 1u << 20, 6); }
static void test_read_1b(void **s) { (void)s; transfer('R', 1, 1, 7); }
static void test_read_8x4k(void **s) { (void)s; transfer('R', 8, 4096, 8); }
static void test_read_1m(void **s) { (void)s; transfer('R', 1, 1u << 20, 9); }
static void test_read_64m(void **s) { (void)s; transfer('R', 1, 64u << 20, 10); }
/* clang-format on */

static void test_endpoint_reused(void **state)
{
    ferry_connector_stats_t before, after;
    (void)state;

    transfer('W', 1, 4096, 11); /* makes sure an endpoint to the partner exists */
    ferry_connector_get_stats(world.c, &before);
    transfer('W', 1, 4096, 12);
    transfer('R', 2, 4096, 13);
    ferry_connector_get_stats(world.c, &after);
    assert_int_equal(after.endpoints_created, before.endpoints_created);
    assert_int_equal(after.endpoint_cache_hits, before.endpoint_cache_hits + 2);
    assert_int_equal(after.endpoints_created, 1);
}

/* Begins an active op that must be refused before any UCX work. */
static void expect_begin_refused(char md_kind, char op_kind, uint64_t local_size,
                                 ferry_status_t code, const char *needle1, const char *needle2)
{
    uint8_t buf[64] = {0};
    ferry_descriptor_t d = {buf, local_size, FERRY_DEVICE_HOST_INIT};
    ferry_op_t *op = NULL;
    uint8_t *md;
    uint32_t md_len;
    ferry_status_t st;

    request(md_kind, MODE_CANCEL, 1, 32, 1, &md, &md_len);
    (void)get_report();
    st = op_kind == 'W' ? ferry_write_begin(world.c, &d, 1, md, md_len, &op)
                        : ferry_read_begin(world.c, &d, 1, md, md_len, &op);
    assert_int_equal(st, code);
    assert_null(op);
    if (strstr(ferry_last_error_message(), needle1) == NULL ||
        (needle2 != NULL && strstr(ferry_last_error_message(), needle2) == NULL)) {
        fail_msg("message \"%s\" lacks \"%s\"/\"%s\"", ferry_last_error_message(), needle1,
                 needle2 != NULL ? needle2 : "");
    }
    free(md);
}

static void test_write_into_readable_refused(void **state)
{
    (void)state;
    expect_begin_refused('R', 'W', 32, FERRY_ERR_KIND_MISMATCH,
                         "metadata is for a readable operation", NULL);
    expect_begin_refused('W', 'R', 32, FERRY_ERR_KIND_MISMATCH,
                         "metadata is for a writable operation", NULL);
}

static void test_size_mismatch_refused(void **state)
{
    (void)state;
    expect_begin_refused('W', 'W', 33, FERRY_ERR_SIZE_MISMATCH, "local size 33", "remote size 32");
}

/* The passive side gives up (mode) before the write starts. */
static void write_after_passive_gave_up(int mode, ferry_status_t expected_code)
{
    uint8_t buf[32];
    ferry_descriptor_t d = {buf, sizeof(buf), FERRY_DEVICE_HOST_INIT};
    ferry_op_t *op;
    uint8_t *md;
    uint32_t md_len;
    report_t rep;
    ferry_status_t st;
    const char *msg;

    pair_fill(buf, sizeof(buf), 1, 0);
    request('W', mode, 1, sizeof(buf), 1, &md, &md_len);
    rep = get_report(); /* the passive op is cancelled or destroyed now */
    if (mode == MODE_CANCEL) {
        assert_int_equal(rep.status, FERRY_ERR_CANCELLED);
        assert_int_equal(rep.op_status, FERRY_OP_STATUS_CANCELLED);
    }
    assert_int_equal(ferry_write_begin(world.c, &d, 1, md, md_len, &op), FERRY_OK);
    st = ferry_op_wait(op, WAIT_TIMEOUT_MS);
    assert_int_equal(st, expected_code);
    assert_int_equal(ferry_op_status(op), FERRY_OP_STATUS_ERRORED);
    assert_int_equal(ferry_op_error(op, &msg), expected_code);
    assert_non_null(strstr(msg, "refused"));
    ferry_op_destroy(op);
    free(md);
}

static void test_write_after_cancel(void **state)
{
    (void)state;
    write_after_passive_gave_up(MODE_CANCEL, FERRY_ERR_CANCELLED);
}

static void test_write_after_destroy(void **state)
{
    (void)state;
    write_after_passive_gave_up(MODE_DESTROY, FERRY_ERR_NOT_FOUND);
}

static void test_passive_wait_times_out(void **state)
{
    uint8_t buf[64];
    ferry_descriptor_t d = {buf, sizeof(buf), FERRY_DEVICE_HOST_INIT};
    ferry_op_t *op;
    int64_t t0;
    (void)state;

    assert_int_equal(ferry_writable_create(world.c, &d, 1, &op), FERRY_OK);
    assert_int_equal(ferry_op_status(op), FERRY_OP_STATUS_INITIALIZED);
    t0 = pair_now_ms();
    assert_int_equal(ferry_op_wait(op, 100), FERRY_ERR_TIMED_OUT);
    assert_true(pair_now_ms() - t0 >= 100);
    assert_int_equal(ferry_op_status(op), FERRY_OP_STATUS_INITIALIZED); /* still alive */
    assert_int_equal(ferry_op_cancel(op), FERRY_OK);
    assert_int_equal(ferry_op_wait(op, 0), FERRY_ERR_CANCELLED);
    assert_int_equal(ferry_op_status(op), FERRY_OP_STATUS_CANCELLED);
    ferry_op_destroy(op);
}

static void test_cuda_refused_without_support(void **state)
{
    uint8_t buf[64];
    ferry_descriptor_t d = {buf, sizeof(buf), {FERRY_DEVICE_CUDA, 0}};
    ferry_op_t *op = NULL;
    (void)state;

    if (ferry_connector_is_cuda_available(world.c)) {
        skip();
    }
    assert_int_equal(ferry_writable_create(world.c, &d, 1, &op), FERRY_ERR_UNIMPLEMENTED);
    assert_null(op);
    assert_non_null(strstr(ferry_last_error_message(), "CUDA"));
}

static void test_bad_descriptors_refused(void **state)
{
    uint8_t buf[64];
    ferry_descriptor_t d = {NULL, sizeof(buf), FERRY_DEVICE_HOST_INIT};
    ferry_op_t *op = NULL;
    (void)state;

    assert_int_equal(ferry_writable_create(world.c, &d, 1, &op), FERRY_ERR_INVALID_ARGUMENT);
    d.ptr = buf;
    d.size = 0;
    assert_int_equal(ferry_readable_create(world.c, &d, 1, &op), FERRY_ERR_INVALID_ARGUMENT);
    assert_null(op);
}

/* At most 1024 descriptors (the metadata's bound): one more is refused at
 * create, naming the bound, before anything is mapped. It used to be
 * mapped and its metadata made, which every writer and the coordinator
 * then refused, far from the cause. */
static void test_too_many_descriptors_refused(void **state)
{
    enum { MAX = 1024 };
    uint8_t *buf = calloc(MAX + 1, 64);
    ferry_descriptor_t *d = calloc(MAX + 1, sizeof(*d));
    ferry_connector_stats_t before, after;
    ferry_op_t *op = NULL;
    (void)state;

    for (size_t i = 0; i <= MAX; i++) {
        d[i] = (ferry_descriptor_t){buf + i * 64, 64, FERRY_DEVICE_HOST_INIT};
    }
    ferry_connector_get_stats(world.c, &before);
    assert_int_equal(ferry_writable_create(world.c, d, MAX + 1, &op), FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(ferry_last_error_message(), "at most 1024"));
    assert_int_equal(ferry_readable_create(world.c, d, MAX + 1, &op), FERRY_ERR_INVALID_ARGUMENT);
    assert_null(op);
    ferry_connector_get_stats(world.c, &after);
    assert_int_equal(after.mem_maps, before.mem_maps);
    assert_int_equal(ferry_writable_create(world.c, d, MAX, &op), FERRY_OK);
    ferry_op_destroy(op);
    free(d);
    free(buf);
}

/* Runs the writer partner (role) on op's metadata until its data moved
 * into buf (it flushed) with the notice held back, then kills it. */
static void writer_killed_after_data(const char *role, ferry_op_t *op, const uint8_t *buf,
                                     size_t size)
{
    pair_partner_t writer;
    const uint8_t *md;
    size_t md_len;
    char ready;

    assert_int_equal(ferry_op_metadata(op, &md, &md_len), FERRY_OK);
    writer = pair_spawn(self_exe, role);
    assert_true(writer.pid > 0);
    assert_int_equal(pair_send_blob(writer.cmd_fd, md, (uint32_t)md_len), 0);
    assert_int_equal(pair_read(writer.res_fd, &ready, 1, PAIR_IO_TIMEOUT_MS), 0);
    /* The data moved (the writer flushed) but the notice is held back. */
    assert_int_equal(pair_check(buf, size, 9, 0), size);
    kill(writer.pid, SIGKILL);
    assert_true(WIFSIGNALED(pair_reap(writer.pid)));
    pair_close(&writer);
}

/* Without peer error handling (both sides: UCX 1.13 needs them alike) a
 * dead writer goes unseen: the operation stays claimed until its wait's
 * timeout. */
static void test_writer_killed_before_notice(void **state)
{
    ferry_connector_params_t params = {.field_mask =
                                           FERRY_CONNECTOR_PARAM_FIELD_PEER_ERROR_HANDLING,
                                       .peer_error_handling = false};
    ferry_connector_t *c;
    uint8_t buf[4096] = {0};
    ferry_descriptor_t d = {buf, sizeof(buf), FERRY_DEVICE_HOST_INIT};
    ferry_op_t *op;
    ferry_status_t st;
    (void)state;

    assert_int_equal(ferry_connector_create(&params, &c), FERRY_OK);
    assert_int_equal(ferry_writable_create(c, &d, 1, &op), FERRY_OK);
    writer_killed_after_data("--writer", op, buf, sizeof(buf));
    st = ferry_op_wait(op, 300);
    assert_int_equal(st, FERRY_ERR_TIMED_OUT);
    assert_int_equal(ferry_op_status(op), FERRY_OP_STATUS_IN_PROGRESS); /* claimed */
    ferry_op_destroy(op);
    /* Freed: a blocking destroy does not hold an op on memory in no region
     * for its claimant (the caller keeps that memory as it sees fit), so a
     * dead writer's op does not stay in the table for good. */
    int64_t deadline = pair_now_ms() + WAIT_TIMEOUT_MS;
    while (pair_live_ops(c) > 0 && pair_now_ms() < deadline) {
        poll(NULL, 0, 1); /* the done queue's delivery: a condition, with a deadline */
    }
    assert_int_equal(pair_live_ops(c), 0);
    assert_int_equal(ferry_connector_destroy(c), FERRY_OK);
}

/* The same with peer error handling, the default (both sides as they come):
 * the dead writer's endpoint fails and the op ends ERRORED, not TIMED_OUT.
 * On one host over shared memory UCX sees the death at its next keepalive
 * check (the writer's pid start time), every UCX_KEEPALIVE_INTERVAL (20 s
 * by default; main and CTest set 1 s). */
static void test_writer_killed_peer_detection(void **state)
{
    ferry_connector_t *c;
    uint8_t buf[4096] = {0};
    ferry_descriptor_t d = {buf, sizeof(buf), FERRY_DEVICE_HOST_INIT};
    ferry_op_t *op;
    const char *msg;
    (void)state;

    assert_int_equal(ferry_connector_create(NULL, &c), FERRY_OK);
    assert_int_equal(ferry_writable_create(c, &d, 1, &op), FERRY_OK);
    writer_killed_after_data("--writer-default", op, buf, sizeof(buf));
    assert_int_equal(ferry_op_wait(op, WAIT_TIMEOUT_MS), FERRY_ERR_PEER_FAILED);
    assert_int_equal(ferry_op_error(op, &msg), FERRY_ERR_PEER_FAILED);
    assert_non_null(strstr(msg, "failed"));
    ferry_op_destroy(op);
    ferry_connector_destroy(c);
}

/* Two sides that differ in peer error handling: the writer refuses the
 * metadata before it connects, with an error naming the field, and the
 * passive operation is untouched: a writer set alike then completes it.
 * Before, the writer connected, the passive side (with peer error handling)
 * opened its endpoint back, UCX 1.13 destroyed the writer's endpoint under
 * its puts, and the passive process aborted (an assertion in
 * ucp_put_handler). */
static void test_peer_error_handling_must_agree(void **state)
{
    ferry_connector_params_t off = {.field_mask = FERRY_CONNECTOR_PARAM_FIELD_PEER_ERROR_HANDLING,
                                    .peer_error_handling = false};
    ferry_connector_t *writer_off;
    uint8_t dst[4096] = {0}, src[4096];
    ferry_descriptor_t dd = {dst, sizeof(dst), FERRY_DEVICE_HOST_INIT};
    ferry_descriptor_t sd = {src, sizeof(src), FERRY_DEVICE_HOST_INIT};
    const uint8_t *md;
    size_t md_len;
    ferry_op_t *passive, *active = NULL;
    (void)state;

    pair_fill(src, sizeof(src), 5, 0);
    assert_int_equal(ferry_connector_create(&off, &writer_off), FERRY_OK);
    assert_int_equal(ferry_writable_create(world.c, &dd, 1, &passive), FERRY_OK); /* on */
    assert_int_equal(ferry_op_metadata(passive, &md, &md_len), FERRY_OK);
    assert_int_equal(ferry_write_begin(writer_off, &sd, 1, md, md_len, &active),
                     FERRY_ERR_FAILED_PRECONDITION);
    assert_null(active);
    assert_non_null(strstr(ferry_last_error_message(), "metadata.peer_error_handling"));
    assert_int_equal(ferry_op_status(passive), FERRY_OP_STATUS_INITIALIZED); /* not claimed */
    for (size_t i = 0; i < sizeof(dst); i++) {
        assert_int_equal(dst[i], 0); /* nothing written */
    }
    /* Metadata of a libferry before the field says nothing: refused too. */
    {
        Ferry__V1__RdmaMetadata *old;
        uint8_t *old_bytes;
        size_t old_len;

        assert_int_equal(ferry__metadata_decode(md, md_len, &old), FERRY_OK);
        old->peer_error_handling = FERRY__V1__PEER_ERROR_HANDLING__PEER_ERROR_HANDLING_UNSPECIFIED;
        old_len = ferry__v1__rdma_metadata__get_packed_size(old);
        old_bytes = malloc(old_len);
        assert_non_null(old_bytes);
        ferry__v1__rdma_metadata__pack(old, old_bytes);
        ferry__metadata_free(old);
        assert_int_equal(ferry_write_begin(world.c, &sd, 1, old_bytes, old_len, &active),
                         FERRY_ERR_FAILED_PRECONDITION);
        assert_non_null(strstr(ferry_last_error_message(), "the passive side's is not said"));
        free(old_bytes);
    }

    assert_int_equal(ferry_write_begin(world.c, &sd, 1, md, md_len, &active), FERRY_OK);
    assert_int_equal(ferry_op_wait(active, WAIT_TIMEOUT_MS), FERRY_OK);
    assert_int_equal(ferry_op_wait(passive, WAIT_TIMEOUT_MS), FERRY_OK);
    assert_int_equal(pair_check(dst, sizeof(dst), 5, 0), sizeof(dst));
    ferry_op_destroy(active);
    ferry_op_destroy(passive);
    assert_int_equal(ferry_connector_destroy(writer_off), FERRY_OK);
}

#define THREADS    4
#define ITERATIONS 25

static void *loopback_worker(void *arg)
{
    uintptr_t t = (uintptr_t)arg;
    size_t size = 65536;
    uint8_t *src = malloc(size), *dst = malloc(size);
    ferry_descriptor_t ds = {src, size, FERRY_DEVICE_HOST_INIT};
    ferry_descriptor_t dd = {dst, size, FERRY_DEVICE_HOST_INIT};
    uintptr_t failures = 0;

    for (int i = 0; i < ITERATIONS; i++) {
        ferry_op_t *passive, *active;
        const uint8_t *md;
        size_t md_len;
        uint32_t seed = (uint32_t)(t * 1000 + (uintptr_t)i);

        pair_fill(src, size, seed, 0);
        memset(dst, 0, size);
        if (ferry_writable_create(world.c, &dd, 1, &passive) != FERRY_OK) {
            failures++;
            continue;
        }
        ferry_op_metadata(passive, &md, &md_len);
        if (ferry_write_begin(world.c, &ds, 1, md, md_len, &active) != FERRY_OK) {
            failures++;
            ferry_op_destroy(passive);
            continue;
        }
        if (ferry_op_wait(active, WAIT_TIMEOUT_MS) != FERRY_OK ||
            ferry_op_wait(passive, WAIT_TIMEOUT_MS) != FERRY_OK ||
            pair_check(dst, size, seed, 0) != size) {
            failures++;
        }
        ferry_op_destroy(active);
        ferry_op_destroy(passive);
    }
    free(src);
    free(dst);
    return (void *)failures;
}

/* Several threads share the thread-mode connector (each writes to itself). */
static void test_concurrent_threads(void **state)
{
    pthread_t threads[THREADS];
    void *failures;
    (void)state;

    for (uintptr_t t = 0; t < THREADS; t++) {
        assert_int_equal(pthread_create(&threads[t], NULL, loopback_worker, (void *)t), 0);
    }
    for (int t = 0; t < THREADS; t++) {
        assert_int_equal(pthread_join(threads[t], &failures), 0);
        assert_int_equal((uintptr_t)failures, 0);
    }
}

static void done_cb(ferry_op_t *op, ferry_op_status_t status, void *arg)
{
    (void)op;
    *(ferry_op_status_t *)arg = status;
}

/* Both ends in one connector driven by the caller (no progress thread). */
static void test_loopback_caller_progress(void **state)
{
    ferry_connector_params_t params = {.field_mask = FERRY_CONNECTOR_PARAM_FIELD_PROGRESS_MODE,
                                       .progress_mode = FERRY_PROGRESS_CALLER};
    ferry_connector_t *c;
    uint8_t src[8192], dst[8192] = {0};
    ferry_descriptor_t ds = {src, sizeof(src), FERRY_DEVICE_HOST_INIT};
    ferry_descriptor_t dd = {dst, sizeof(dst), FERRY_DEVICE_HOST_INIT};
    ferry_op_t *passive, *active;
    ferry_op_status_t seen = FERRY_OP_STATUS_UNINITIALIZED;
    const uint8_t *md;
    size_t md_len;
    int fd;
    (void)state;

    pair_fill(src, sizeof(src), 21, 0);
    assert_int_equal(ferry_connector_create(&params, &c), FERRY_OK);
    assert_int_equal(ferry_connector_get_fd(c, &fd), FERRY_OK);
    assert_true(fd >= 0);
    assert_int_equal(ferry_writable_create(c, &dd, 1, &passive), FERRY_OK);
    assert_int_equal(ferry_op_set_done_callback(passive, done_cb, &seen), FERRY_OK);
    assert_int_equal(ferry_op_metadata(passive, &md, &md_len), FERRY_OK);
    assert_int_equal(ferry_write_begin(c, &ds, 1, md, md_len, &active), FERRY_OK);
    assert_int_equal(ferry_op_wait(active, WAIT_TIMEOUT_MS), FERRY_OK);
    assert_int_equal(ferry_op_wait(passive, WAIT_TIMEOUT_MS), FERRY_OK);
    assert_int_equal(ferry_connector_progress(c), FERRY_OK);
    assert_int_equal(seen, FERRY_OP_STATUS_COMPLETE);
    assert_int_equal(pair_check(dst, sizeof(dst), 21, 0), sizeof(dst));
    ferry_op_destroy(active);
    ferry_op_destroy(passive);
    ferry_connector_destroy(c);
    /* Thread mode refuses the caller-mode calls. */
    assert_int_equal(ferry_connector_get_fd(world.c, &fd), FERRY_ERR_MISUSE);
}

/* What a listener saw, in order. */
typedef struct {
    int n;
    ferry_op_event_t events[8];
    ferry_op_status_t statuses[8];
    int *clock; /* shared order counter */
    int at[8];
} heard_t;

static void listen_cb(ferry_op_t *op, ferry_op_event_t event, ferry_op_status_t status, void *arg)
{
    heard_t *h = arg;
    (void)op;
    if (h->n < 8) {
        h->events[h->n] = event;
        h->statuses[h->n] = status;
        h->at[h->n] = (*h->clock)++;
        h->n++;
    }
}

static void listen_cb_other(ferry_op_t *op, ferry_op_event_t event, ferry_op_status_t status,
                            void *arg)
{
    listen_cb(op, event, status, arg);
}

static void listen_cb_never(ferry_op_t *op, ferry_op_event_t event, ferry_op_status_t status,
                            void *arg)
{
    (void)op, (void)event, (void)status, (void)arg;
}

/* Listeners: told FINAL (in the order added, beside the caller's done
 * callback, which stays the caller's), a late one too, then DESTROY with
 * the status as it was, last; found again by their callback. A passive
 * operation destroyed unfinished tells DESTROY with INITIALIZED and no
 * FINAL after it. */
static void test_listeners(void **state)
{
    ferry_connector_params_t params = {.field_mask = FERRY_CONNECTOR_PARAM_FIELD_PROGRESS_MODE,
                                       .progress_mode = FERRY_PROGRESS_CALLER};
    ferry_connector_t *c;
    uint8_t src[4096], dst[4096] = {0};
    ferry_descriptor_t ds = {src, sizeof(src), FERRY_DEVICE_HOST_INIT};
    ferry_descriptor_t dd = {dst, sizeof(dst), FERRY_DEVICE_HOST_INIT};
    ferry_op_t *passive, *active, *idle;
    ferry_op_status_t seen = FERRY_OP_STATUS_UNINITIALIZED;
    int clock = 0;
    heard_t a = {.clock = &clock}, b = {.clock = &clock}, late = {.clock = &clock},
            gone = {.clock = &clock};
    void *arg = NULL;
    const uint8_t *md;
    size_t md_len;
    (void)state;

    pair_fill(src, sizeof(src), 5, 0);
    assert_int_equal(ferry_connector_create(&params, &c), FERRY_OK);
    assert_int_equal(ferry_writable_create(c, &dd, 1, &passive), FERRY_OK);
    assert_ptr_equal(ferry_op_connector(passive), c);
    assert_int_equal(ferry_op_set_done_callback(passive, done_cb, &seen), FERRY_OK);
    assert_int_equal(ferry_op_add_listener(passive, listen_cb, &a), FERRY_OK);
    assert_int_equal(ferry_op_add_listener(passive, listen_cb_other, &b), FERRY_OK);
    assert_int_equal(ferry_op_add_listener(passive, NULL, &b), FERRY_ERR_INVALID_ARGUMENT);
    assert_int_equal(ferry_op_listener_arg(passive, listen_cb_other, &arg), FERRY_OK);
    assert_ptr_equal(arg, &b);
    assert_int_equal(ferry_op_listener_arg(passive, listen_cb_never, &arg), FERRY_ERR_NOT_FOUND);
    assert_int_equal(ferry_op_metadata(passive, &md, &md_len), FERRY_OK);
    assert_int_equal(ferry_write_begin(c, &ds, 1, md, md_len, &active), FERRY_OK);
    assert_int_equal(ferry_op_wait(active, WAIT_TIMEOUT_MS), FERRY_OK);
    assert_int_equal(ferry_op_wait(passive, WAIT_TIMEOUT_MS), FERRY_OK);
    assert_int_equal(ferry_connector_progress(c), FERRY_OK);
    assert_int_equal(seen, FERRY_OP_STATUS_COMPLETE);
    assert_int_equal(a.n, 1);
    assert_int_equal(a.events[0], FERRY_OP_EVENT_FINAL);
    assert_int_equal(a.statuses[0], FERRY_OP_STATUS_COMPLETE);
    assert_int_equal(b.n, 1);
    assert_true(a.at[0] < b.at[0]);
    /* Added after the end: still told FINAL, once; the others not again. */
    assert_int_equal(ferry_op_add_listener(passive, listen_cb, &late), FERRY_OK);
    assert_int_equal(ferry_connector_progress(c), FERRY_OK);
    assert_int_equal(late.n, 1);
    assert_int_equal(late.events[0], FERRY_OP_EVENT_FINAL);
    assert_int_equal(a.n, 1);
    ferry_op_destroy(active);
    ferry_op_destroy(passive);
    assert_int_equal(a.n, 2);
    assert_int_equal(a.events[1], FERRY_OP_EVENT_DESTROY);
    assert_int_equal(a.statuses[1], FERRY_OP_STATUS_COMPLETE);
    assert_int_equal(b.n, 2);
    assert_int_equal(late.n, 2);
    assert_true(a.at[1] < b.at[1] && b.at[1] < late.at[1]);
    assert_int_equal(pair_check(dst, sizeof(dst), 5, 0), sizeof(dst));

    /* Destroyed unfinished: DESTROY sees it as it was, and nothing after. */
    assert_int_equal(ferry_writable_create(c, &dd, 1, &idle), FERRY_OK);
    assert_int_equal(ferry_op_add_listener(idle, listen_cb, &gone), FERRY_OK);
    ferry_op_destroy(idle);
    assert_int_equal(ferry_connector_progress(c), FERRY_OK);
    assert_int_equal(gone.n, 1);
    assert_int_equal(gone.events[0], FERRY_OP_EVENT_DESTROY);
    assert_int_equal(gone.statuses[0], FERRY_OP_STATUS_INITIALIZED);
    ferry_connector_destroy(c);
}

/* An operation's error message is kept in a fixed buffer (255 bytes): a
 * longer one that is not ASCII is cut before the character that would not
 * fit whole, never inside it (a peer's message, say, from the
 * coordinator). Cut inside one, the message was not UTF-8, and Python
 * raised UnicodeDecodeError in place of the error. */
static void test_error_message_cut_whole(void **state)
{
    ferry_connector_params_t params = {.field_mask = FERRY_CONNECTOR_PARAM_FIELD_PROGRESS_MODE,
                                       .progress_mode = FERRY_PROGRESS_CALLER};
    char text[301], dst[64];
    ferry_descriptor_t dd = {dst, sizeof(dst), FERRY_DEVICE_HOST_INIT};
    ferry_connector_t *c;
    ferry_op_t *op;
    const char *msg = NULL;
    size_t len;
    (void)state;

    text[0] = 'x'; /* so that 255 bytes end inside a two-byte character */
    text[1] = 'y';
    for (size_t i = 2; i + 2 <= sizeof(text); i += 2) {
        text[i] = (char)0xC3; /* U+00E9 */
        text[i + 1] = (char)0xA9;
    }
    text[sizeof(text) - 1] = '\0';
    assert_int_equal(ferry_connector_create(&params, &c), FERRY_OK);
    assert_int_equal(ferry_writable_create(c, &dd, 1, &op), FERRY_OK);
    assert_int_equal(ferry_op_fail(op, FERRY_ERR_PEER_FAILED, text), FERRY_OK);
    assert_int_equal(ferry_op_error(op, &msg), FERRY_ERR_PEER_FAILED);
    len = strlen(msg);
    assert_int_equal(len, 254); /* "xy" and 126 whole characters */
    assert_memory_equal(msg, text, len);
    ferry_op_destroy(op);
    assert_int_equal(ferry_connector_destroy(c), FERRY_OK);
}

/* A listener that holds one event's delivery (the other passes at once)
 * until the test lets it go. */
typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    ferry_op_event_t event; /* the one held */
    bool inside;            /* the listener is in it */
    bool go;                /* ...and may return */
} held_t;

#define HELD_INIT(ev)                                                                      \
    {                                                                                      \
        .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER, .event = (ev) \
    }

static void hold_cb(ferry_op_t *op, ferry_op_event_t event, ferry_op_status_t status, void *arg)
{
    held_t *h = arg;
    int64_t deadline = pair_now_ms() + WAIT_TIMEOUT_MS;
    (void)op, (void)status;

    if (event != h->event) {
        return;
    }
    pthread_mutex_lock(&h->lock);
    h->inside = true;
    pthread_cond_broadcast(&h->cond);
    while (!h->go && pair_now_ms() < deadline) {
        struct timespec ts = {0, 0};
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 10 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&h->cond, &h->lock, &ts);
    }
    h->inside = false;
    pthread_mutex_unlock(&h->lock);
}

/* Waits, with a deadline, until the listener is in the held event. */
static void wait_inside(held_t *h)
{
    int64_t deadline = pair_now_ms() + WAIT_TIMEOUT_MS;

    pthread_mutex_lock(&h->lock);
    while (!h->inside && pair_now_ms() < deadline) {
        pthread_mutex_unlock(&h->lock);
        poll(NULL, 0, 1);
        pthread_mutex_lock(&h->lock);
    }
    assert_true(h->inside);
    pthread_mutex_unlock(&h->lock);
}

/* Lets the held listener return. */
static void let_go(held_t *h)
{
    pthread_mutex_lock(&h->lock);
    h->go = true;
    pthread_cond_broadcast(&h->cond);
    pthread_mutex_unlock(&h->lock);
}

static void *destroy_thread(void *arg)
{
    ferry_op_destroy(arg);
    return NULL;
}

/* A claim that arrives while ferry_op_destroy tells its listeners (the
 * lock is dropped for them; the coordinator client's listener makes an
 * RPC there) is refused NOT_FOUND, as after the destroy: the caller frees
 * the memory once destroy returns. It was admitted, and the writer's bytes
 * went into memory that was on its way out. */
static void test_claim_during_destroy_refused(void **state)
{
    uint8_t src[4096], dst[4096] = {0}, zero[4096] = {0};
    ferry_descriptor_t ds = {src, sizeof(src), FERRY_DEVICE_HOST_INIT};
    ferry_descriptor_t dd = {dst, sizeof(dst), FERRY_DEVICE_HOST_INIT};
    held_t held = HELD_INIT(FERRY_OP_EVENT_DESTROY);
    ferry_connector_t *c;
    ferry_op_t *passive, *active;
    const uint8_t *md;
    uint8_t *md_copy;
    size_t md_len;
    pthread_t t;
    const char *msg;
    (void)state;

    pair_fill(src, sizeof(src), 6, 0);
    assert_int_equal(ferry_connector_create(NULL, &c), FERRY_OK);
    assert_int_equal(ferry_writable_create(c, &dd, 1, &passive), FERRY_OK);
    assert_int_equal(ferry_op_add_listener(passive, hold_cb, &held), FERRY_OK);
    assert_int_equal(ferry_op_metadata(passive, &md, &md_len), FERRY_OK);
    md_copy = malloc(md_len);
    assert_non_null(md_copy);
    memcpy(md_copy, md, md_len);
    assert_int_equal(pthread_create(&t, NULL, destroy_thread, passive), 0);
    wait_inside(&held);

    assert_int_equal(ferry_write_begin(c, &ds, 1, md_copy, md_len, &active), FERRY_OK);
    assert_int_equal(ferry_op_wait(active, WAIT_TIMEOUT_MS), FERRY_ERR_NOT_FOUND);
    assert_int_equal(ferry_op_error(active, &msg), FERRY_ERR_NOT_FOUND);
    assert_non_null(strstr(msg, "refused"));
    assert_memory_equal(dst, zero, sizeof(dst));

    let_go(&held);
    assert_int_equal(pthread_join(t, NULL), 0);
    ferry_op_destroy(active);
    free(md_copy);
    assert_int_equal(ferry_connector_destroy(c), FERRY_OK);
}

static void count_final_cb(ferry_op_t *op, ferry_op_event_t event, ferry_op_status_t status,
                           void *arg)
{
    (void)op, (void)status;
    if (event == FERRY_OP_EVENT_FINAL) {
        atomic_fetch_add((atomic_int *)arg, 1);
    }
}

static void *progress_thread(void *arg)
{
    ferry_connector_progress(arg);
    return NULL;
}

typedef struct {
    ferry_op_t *op;
    atomic_bool returned;
} destroyer_t;

static void *destroyer(void *arg)
{
    destroyer_t *d = arg;

    ferry_op_destroy(d->op);
    atomic_store(&d->returned, true);
    return NULL;
}

/* Caller mode: two threads deliver callbacks of one operation at once
 * (one runs a listener, another the listener added meanwhile). Destroy
 * waits for both: once the second delivery had ended, it used to return
 * while the first listener still ran, and the caller freed what that
 * listener used. */
/* No memory for a write's flush: it fails before any put, and the passive
 * side is told at once (ERRORED, nothing written). The flush used to be
 * allocated after the puts: without it nothing ended the data in flight,
 * so destroying the operation waited for ever, and the passive side stayed
 * claimed. */
static void test_no_memory_for_the_flush(void **state)
{
    uint8_t src[4096], dst[4096] = {0};
    ferry_descriptor_t ds = {src, sizeof(src), FERRY_DEVICE_HOST_INIT};
    ferry_descriptor_t dd = {dst, sizeof(dst), FERRY_DEVICE_HOST_INIT};
    ferry_op_t *passive, *active;
    const uint8_t *md;
    const char *msg = NULL;
    size_t md_len;
    (void)state;

    pair_fill(src, sizeof(src), 31, 0);
    assert_int_equal(ferry_writable_create(world.c, &dd, 1, &passive), FERRY_OK);
    assert_int_equal(ferry_op_metadata(passive, &md, &md_len), FERRY_OK);
    atomic_store(&ferry__test_fail_flush_alloc, true);
    assert_int_equal(ferry_write_begin(world.c, &ds, 1, md, md_len, &active), FERRY_OK);
    assert_int_not_equal(ferry_op_wait(active, WAIT_TIMEOUT_MS), FERRY_OK);
    assert_int_equal(ferry_op_status(active), FERRY_OP_STATUS_ERRORED);
    assert_int_equal(ferry_op_error(active, &msg), FERRY_ERR_NO_MEMORY);
    assert_non_null(strstr(msg, "out of memory for a flush"));
    assert_false(atomic_load(&ferry__test_fail_flush_alloc)); /* taken by this write */
    assert_int_not_equal(ferry_op_wait(passive, WAIT_TIMEOUT_MS), FERRY_OK);
    assert_int_equal(ferry_op_status(passive), FERRY_OP_STATUS_ERRORED);
    assert_int_equal(ferry_op_error(passive, &msg), FERRY_ERR_NO_MEMORY);
    static const uint8_t zero[sizeof(dst)];
    assert_memory_equal(dst, zero, sizeof(dst)); /* nothing written */
    ferry_op_destroy(active);
    ferry_op_destroy(passive);
}

static void test_destroy_waits_for_every_delivery(void **state)
{
    ferry_connector_params_t params = {.field_mask = FERRY_CONNECTOR_PARAM_FIELD_PROGRESS_MODE,
                                       .progress_mode = FERRY_PROGRESS_CALLER};
    held_t held = HELD_INIT(FERRY_OP_EVENT_FINAL);
    uint8_t dst[64];
    ferry_descriptor_t dd = {dst, sizeof(dst), FERRY_DEVICE_HOST_INIT};
    destroyer_t d = {0};
    atomic_int second = 0;
    ferry_connector_t *c;
    pthread_t first_delivery, destroy;
    int64_t deadline;
    (void)state;

    assert_int_equal(ferry_connector_create(&params, &c), FERRY_OK);
    assert_int_equal(ferry_writable_create(c, &dd, 1, &d.op), FERRY_OK);
    assert_int_equal(ferry_op_add_listener(d.op, hold_cb, &held), FERRY_OK);
    assert_int_equal(ferry_op_fail(d.op, FERRY_ERR_PEER_FAILED, "gone"), FERRY_OK);
    assert_int_equal(pthread_create(&first_delivery, NULL, progress_thread, c), 0);
    wait_inside(&held);

    /* The second delivery, on this thread, starts and ends meanwhile. */
    assert_int_equal(ferry_op_add_listener(d.op, count_final_cb, &second), FERRY_OK);
    assert_int_equal(ferry_connector_progress(c), FERRY_OK);
    assert_int_equal(atomic_load(&second), 1);

    assert_int_equal(pthread_create(&destroy, NULL, destroyer, &d), 0);
    /* Destroy must not return while the first listener runs: give it
     * time to (wrongly) do so. */
    deadline = pair_now_ms() + 300;
    while (!atomic_load(&d.returned) && pair_now_ms() < deadline) {
        poll(NULL, 0, 5);
    }
    pthread_mutex_lock(&held.lock);
    assert_true(held.inside);
    pthread_mutex_unlock(&held.lock);
    assert_false(atomic_load(&d.returned));
    let_go(&held);
    assert_int_equal(pthread_join(first_delivery, NULL), 0);
    assert_int_equal(pthread_join(destroy, NULL), 0);
    assert_true(atomic_load(&d.returned));
    assert_int_equal(ferry_connector_destroy(c), FERRY_OK);
}

/* A peer whose endpoint failed, before the loop has handled the failure
 * (it is held off by the lock here), is not handed out again: the next
 * operation to that worker gets a fresh endpoint and goes through, where it
 * used to take the failed one and fail with it. */
static void test_failed_peer_not_handed_out(void **state)
{
    ferry_connector_params_t params = {
        .field_mask = FERRY_CONNECTOR_PARAM_FIELD_PEER_ERROR_HANDLING, .peer_error_handling = true};
    uint8_t src[4096], dst[4096] = {0};
    ferry_descriptor_t ds = {src, sizeof(src), FERRY_DEVICE_HOST_INIT};
    ferry_descriptor_t dd = {dst, sizeof(dst), FERRY_DEVICE_HOST_INIT};
    ferry_connector_t *rx, *tx;
    ferry__peer_t *failed, *fresh;
    ferry_op_t *passive, *active;
    const uint8_t *md;
    size_t md_len;
    (void)state;

    pair_fill(src, sizeof(src), 8, 0);
    assert_int_equal(ferry_connector_create(&params, &rx), FERRY_OK);
    assert_int_equal(ferry_connector_create(&params, &tx), FERRY_OK);
    ferry__lock(tx);
    assert_int_equal(ferry__peer_get(tx, (const uint8_t *)rx->address, rx->address_len, &failed),
                     FERRY_OK);
    /* What UCX's error callback records (peer.c, ep_err_cb). */
    failed->failure = UCS_ERR_ENDPOINT_TIMEOUT;
    ferry__peer_ref_for_failure(failed);
    failed->failed_next = tx->failed;
    tx->failed = failed;
    assert_int_equal(ferry__peer_get(tx, (const uint8_t *)rx->address, rx->address_len, &fresh),
                     FERRY_OK);
    assert_ptr_not_equal(fresh, failed);
    assert_int_equal(fresh->failure, UCS_OK);
    ferry__peer_put(fresh);
    ferry__peer_put(failed);
    ferry__wake(tx);
    ferry__unlock(tx);

    assert_int_equal(ferry_writable_create(rx, &dd, 1, &passive), FERRY_OK);
    assert_int_equal(ferry_op_metadata(passive, &md, &md_len), FERRY_OK);
    assert_int_equal(ferry_write_begin(tx, &ds, 1, md, md_len, &active), FERRY_OK);
    assert_int_equal(ferry_op_wait(active, WAIT_TIMEOUT_MS), FERRY_OK);
    assert_int_equal(ferry_op_wait(passive, WAIT_TIMEOUT_MS), FERRY_OK);
    assert_int_equal(pair_check(dst, sizeof(dst), 8, 0), sizeof(dst));
    ferry_op_destroy(active);
    ferry_op_destroy(passive);
    assert_int_equal(ferry_connector_destroy(tx), FERRY_OK);
    assert_int_equal(ferry_connector_destroy(rx), FERRY_OK);
}

/* A peer whose failure came after the destroy's last drain (closing one
 * endpoint progresses the worker, and the error of another, whose process
 * went first, can come then) holds the failed queue's reference: destroy
 * drops it, and the endpoint closes with the rest. Caller progress: nothing
 * drains between the failure and the destroy. Before, that peer leaked (make
 * asan found it in test_worker_region_tcp, with tx destroyed before rx). */
static void test_destroy_drops_peers_failed_after_the_last_drain(void **state)
{
    ferry_connector_params_t params = {.field_mask =
                                           FERRY_CONNECTOR_PARAM_FIELD_PROGRESS_MODE |
                                           FERRY_CONNECTOR_PARAM_FIELD_PEER_ERROR_HANDLING,
                                       .progress_mode = FERRY_PROGRESS_CALLER,
                                       .peer_error_handling = true};
    unsigned before = ferry__peers_open();
    ferry_connector_t *tx;
    ferry__peer_t *failed;
    (void)state;

    assert_int_equal(ferry_connector_create(&params, &tx), FERRY_OK);
    ferry__lock(tx);
    assert_int_equal(
        ferry__peer_get(tx, (const uint8_t *)world.c->address, world.c->address_len, &failed),
        FERRY_OK);
    assert_int_equal(ferry__peers_open(), before + 1);
    /* What UCX's error callback records (peer.c, ep_err_cb). */
    failed->failure = UCS_ERR_CONNECTION_RESET;
    ferry__peer_ref_for_failure(failed);
    failed->failed_next = tx->failed;
    tx->failed = failed;
    ferry__peer_put(failed); /* the caller's: the cache's and the queue's stay */
    ferry__unlock(tx);
    assert_int_equal(ferry_connector_destroy(tx), FERRY_OK);
    assert_int_equal(ferry__peers_open(), before);
}

typedef struct {
    atomic_int destroyed; /* callbacks that destroyed their operation */
    ferry_op_status_t statuses[2];
} self_destroy_t;

static void destroy_in_done_cb(ferry_op_t *op, ferry_op_status_t status, void *arg)
{
    self_destroy_t *s = arg;
    int i = atomic_load(&s->destroyed);

    s->statuses[i < 2 ? i : 1] = status;
    ferry_op_destroy(op); /* it goes once this returns */
    atomic_fetch_add(&s->destroyed, 1);
}

/* A done callback may destroy its own operation (release on completion):
 * the destroy finishes once the callback has returned, on the thread that
 * delivered it, in both progress modes; the bytes arrived, nothing stays
 * alive, and the connector goes. Before, destroy waited for the callback
 * that called it to end: the progress thread (or the caller's) hung. */
static void destroy_from_done_callback(ferry_progress_mode_t mode)
{
    enum { LEN = 65536 };
    ferry_connector_params_t params = {.field_mask = FERRY_CONNECTOR_PARAM_FIELD_PROGRESS_MODE,
                                       .progress_mode = mode};
    uint8_t *src = malloc(LEN), *dst = calloc(1, LEN);
    ferry_descriptor_t ds = {src, LEN, FERRY_DEVICE_HOST_INIT};
    ferry_descriptor_t dd = {dst, LEN, FERRY_DEVICE_HOST_INIT};
    self_destroy_t seen = {0};
    ferry_connector_t *c;
    ferry_op_t *passive, *active;
    const uint8_t *md;
    size_t md_len;
    int64_t deadline;

    assert_non_null(src);
    assert_non_null(dst);
    pair_fill(src, LEN, 41, 0);
    assert_int_equal(ferry_connector_create(&params, &c), FERRY_OK);
    assert_int_equal(ferry_writable_create(c, &dd, 1, &passive), FERRY_OK);
    assert_int_equal(ferry_op_set_done_callback(passive, destroy_in_done_cb, &seen), FERRY_OK);
    assert_int_equal(ferry_op_metadata(passive, &md, &md_len), FERRY_OK);
    assert_int_equal(ferry_write_begin(c, &ds, 1, md, md_len, &active), FERRY_OK);
    assert_int_equal(ferry_op_set_done_callback(active, destroy_in_done_cb, &seen), FERRY_OK);
    deadline = pair_now_ms() + WAIT_TIMEOUT_MS;
    while ((atomic_load(&seen.destroyed) < 2 || pair_live_ops(c) > 0) && pair_now_ms() < deadline) {
        if (mode == FERRY_PROGRESS_CALLER) {
            assert_int_equal(ferry_connector_progress(c), FERRY_OK);
        } else {
            poll(NULL, 0, 1); /* the progress thread delivers: polling, with a deadline */
        }
    }
    assert_int_equal(atomic_load(&seen.destroyed), 2);
    assert_int_equal(seen.statuses[0], FERRY_OP_STATUS_COMPLETE);
    assert_int_equal(seen.statuses[1], FERRY_OP_STATUS_COMPLETE);
    assert_int_equal(pair_live_ops(c), 0);
    assert_int_equal(pair_check(dst, LEN, 41, 0), LEN);
    assert_int_equal(ferry_connector_destroy(c), FERRY_OK); /* no operation left */
    free(src);
    free(dst);
}

static void test_destroy_from_done_callback(void **state)
{
    (void)state;
    destroy_from_done_callback(FERRY_PROGRESS_THREAD);
}

static void test_destroy_from_done_callback_caller(void **state)
{
    (void)state;
    destroy_from_done_callback(FERRY_PROGRESS_CALLER);
}

static void destroy_connector_in_done_cb(ferry_op_t *op, ferry_op_status_t status, void *arg)
{
    (void)status;
    *(atomic_int *)arg = ferry_connector_destroy(ferry_op_connector(op));
}

/* A connector is not destroyed from inside one of its callbacks, which the
 * delivery goes on from (and, in thread mode, run on the progress thread
 * that destroy joins): FERRY_ERR_MISUSE, which says so, nothing changed,
 * and it is destroyed afterwards. Before, the refusal was BUSY for the
 * callback's own operation, which cannot be destroyed there before the
 * callback returns, so destroying it first did not help. */
static void connector_destroy_in_callback(ferry_progress_mode_t mode)
{
    ferry_connector_params_t params = {.field_mask = FERRY_CONNECTOR_PARAM_FIELD_PROGRESS_MODE,
                                       .progress_mode = mode};
    static uint8_t mem[64];
    ferry_descriptor_t d = {mem, sizeof(mem), FERRY_DEVICE_HOST_INIT};
    atomic_int got = 1; /* not a status */
    ferry_connector_t *c;
    ferry_op_t *op;
    int64_t deadline;

    assert_int_equal(ferry_connector_create(&params, &c), FERRY_OK);
    assert_int_equal(ferry_writable_create(c, &d, 1, &op), FERRY_OK);
    assert_int_equal(ferry_op_set_done_callback(op, destroy_connector_in_done_cb, &got), FERRY_OK);
    assert_int_equal(ferry_op_cancel(op), FERRY_OK);
    deadline = pair_now_ms() + WAIT_TIMEOUT_MS;
    while (atomic_load(&got) == 1 && pair_now_ms() < deadline) {
        if (mode == FERRY_PROGRESS_CALLER) {
            assert_int_equal(ferry_connector_progress(c), FERRY_OK);
        } else {
            poll(NULL, 0, 1); /* the progress thread delivers: polling, with a deadline */
        }
    }
    assert_int_equal(atomic_load(&got), FERRY_ERR_MISUSE);
    assert_int_equal(ferry_op_status(op), FERRY_OP_STATUS_CANCELLED); /* still there */
    ferry_op_destroy(op);
    assert_int_equal(ferry_connector_destroy(c), FERRY_OK);
}

static void test_connector_destroy_in_callback_refused(void **state)
{
    (void)state;
    connector_destroy_in_callback(FERRY_PROGRESS_THREAD);
    connector_destroy_in_callback(FERRY_PROGRESS_CALLER);
}

/* Destroying a connector with an operation alive refuses (FERRY_ERR_BUSY)
 * and changes nothing: the operation still works; once it is destroyed the
 * connector goes. */
static void test_connector_destroy_busy(void **state)
{
    ferry_connector_t *c;
    uint8_t src[256], dst[256] = {0};
    ferry_descriptor_t ds = {src, sizeof(src), FERRY_DEVICE_HOST_INIT};
    ferry_descriptor_t dd = {dst, sizeof(dst), FERRY_DEVICE_HOST_INIT};
    ferry_op_t *passive, *active;
    const uint8_t *md;
    size_t md_len;
    (void)state;

    pair_fill(src, sizeof(src), 9, 0);
    assert_int_equal(ferry_connector_create(NULL, &c), FERRY_OK);
    assert_int_equal(ferry_writable_create(c, &dd, 1, &passive), FERRY_OK);
    assert_int_equal(ferry_connector_destroy(c), FERRY_ERR_BUSY);
    assert_non_null(strstr(ferry_last_error_message(), "1 operations not destroyed"));
    assert_int_equal(ferry_op_metadata(passive, &md, &md_len), FERRY_OK);
    assert_int_equal(ferry_write_begin(c, &ds, 1, md, md_len, &active), FERRY_OK);
    assert_int_equal(ferry_op_wait(active, WAIT_TIMEOUT_MS), FERRY_OK);
    assert_int_equal(ferry_op_wait(passive, WAIT_TIMEOUT_MS), FERRY_OK);
    assert_int_equal(pair_check(dst, sizeof(dst), 9, 0), sizeof(dst));
    ferry_op_destroy(passive);
    assert_int_equal(ferry_connector_destroy(c), FERRY_ERR_BUSY);
    ferry_op_destroy(active);
    assert_int_equal(ferry_connector_destroy(c), FERRY_OK);
    assert_int_equal(ferry_connector_destroy(NULL), FERRY_OK);
}

/* A connector's life with a failure in it: what logs (info, warn). */
static void log_worthy_life(const ferry_connector_params_t *params)
{
    ferry_connector_t *c;
    uint8_t dst[64];
    ferry_descriptor_t dd = {dst, sizeof(dst), FERRY_DEVICE_HOST_INIT};
    ferry_op_t *op;

    assert_int_equal(ferry_connector_create(params, &c), FERRY_OK);
    assert_int_equal(ferry_writable_create(c, &dd, 1, &op), FERRY_OK);
    assert_int_equal(ferry_op_fail(op, FERRY_ERR_PEER_FAILED, "made to fail"), FERRY_OK);
    ferry_op_destroy(op);
    assert_int_equal(ferry_connector_destroy(c), FERRY_OK);
}

/* libferry is quiet unless asked: a connector's whole life, a failed
 * operation included, writes nothing to stderr. */
static void test_log_quiet_by_default(void **state)
{
    char path[] = "/tmp/ferry-stderr-XXXXXX";
    int fd = mkstemp(path), saved = dup(STDERR_FILENO);
    struct stat st;
    (void)state;

    assert_true(fd >= 0 && saved >= 0);
    unlink(path);
    assert_true(dup2(fd, STDERR_FILENO) >= 0);
    log_worthy_life(NULL);
    assert_true(dup2(saved, STDERR_FILENO) >= 0);
    close(saved);
    assert_int_equal(fstat(fd, &st), 0);
    close(fd);
    assert_int_equal(st.st_size, 0);
}

typedef struct {
    int lines, warns;
    bool saw_failure;
} log_seen_t;

static void log_cb(ferry_loglevel_t level, const char *message, void *arg)
{
    log_seen_t *seen = arg;
    seen->lines++;
    seen->warns += level == FERRY_LOGLEVEL_WARN;
    seen->saw_failure |= strstr(message, "made to fail") != NULL;
}

/* Asked through the connector's params, the lines go to the caller's
 * callback, at the level it set; an unknown level is refused; a later
 * connector can turn it off again. */
static void test_log_callback(void **state)
{
    log_seen_t seen = {0};
    ferry_connector_params_t on = {.field_mask = FERRY_CONNECTOR_PARAM_FIELD_LOG_LEVEL |
                                                 FERRY_CONNECTOR_PARAM_FIELD_LOG_CB,
                                   .log_level = FERRY_LOGLEVEL_WARN,
                                   .log_cb = log_cb,
                                   .log_arg = &seen};
    ferry_connector_params_t off = {.field_mask = FERRY_CONNECTOR_PARAM_FIELD_LOG_LEVEL |
                                                  FERRY_CONNECTOR_PARAM_FIELD_LOG_CB,
                                    .log_level = FERRY_LOGLEVEL_OFF};
    ferry_connector_params_t bad = {.field_mask = FERRY_CONNECTOR_PARAM_FIELD_LOG_LEVEL,
                                    .log_level = (ferry_loglevel_t)9};
    ferry_connector_t *c = NULL;
    (void)state;

    log_worthy_life(&on);
    assert_true(seen.saw_failure);
    assert_int_equal(seen.lines, seen.warns); /* info lines not at WARN */
    assert_int_equal(ferry_connector_create(&bad, &c), FERRY_ERR_INVALID_ARGUMENT);
    assert_null(c);
    log_worthy_life(&off);
    int before = seen.lines;
    log_worthy_life(NULL);
    assert_int_equal(seen.lines, before);
}

/* One loopback write (both ends in connector c) of 64 KiB, checked. */
static void loopback_write(ferry_connector_t *c)
{
    enum { LEN = 65536 };
    uint8_t *src = malloc(LEN), *dst = calloc(1, LEN);
    ferry_descriptor_t ds = {src, LEN, FERRY_DEVICE_HOST_INIT};
    ferry_descriptor_t dd = {dst, LEN, FERRY_DEVICE_HOST_INIT};
    ferry_op_t *passive, *active;
    const uint8_t *md;
    size_t md_len;

    assert_non_null(src);
    assert_non_null(dst);
    pair_fill(src, LEN, 33, 0);
    assert_int_equal(ferry_writable_create(c, &dd, 1, &passive), FERRY_OK);
    assert_int_equal(ferry_op_metadata(passive, &md, &md_len), FERRY_OK);
    assert_int_equal(ferry_write_begin(c, &ds, 1, md, md_len, &active), FERRY_OK);
    assert_int_equal(ferry_op_wait(active, WAIT_TIMEOUT_MS), FERRY_OK);
    assert_int_equal(ferry_op_wait(passive, WAIT_TIMEOUT_MS), FERRY_OK);
    assert_int_equal(pair_check(dst, LEN, 33, 0), LEN);
    ferry_op_destroy(active);
    ferry_op_destroy(passive);
    free(src);
    free(dst);
}

/* A field_mask bit this libferry does not know (a caller built against a
 * newer ferry.h) is refused naming the bits, not ignored, for the
 * connector's and the coordinator client's params alike. */
static void test_unknown_param_fields(void **state)
{
    ferry_connector_params_t params = {.field_mask = FERRY_CONNECTOR_PARAM_FIELD_NAME | 1u << 20,
                                       .name = "unknown-fields"};
    ferry_coordinator_params_t cp = {.field_mask = FERRY_COORDINATOR_PARAM_FIELD_TIMEOUT | 1u << 9,
                                     .target = "127.0.0.1:1",
                                     .timeout_ms = 1000};
    ferry_connector_t *c = NULL;
    ferry_coordinator_t *coord = NULL;
    (void)state;

    assert_int_equal(ferry_connector_create(&params, &c), FERRY_ERR_INVALID_ARGUMENT);
    assert_null(c);
    assert_string_equal(ferry_last_error_message(), "params.field_mask: unknown bits 0x100000");
    assert_int_equal(ferry_coordinator_connect(&cp, &coord), FERRY_ERR_INVALID_ARGUMENT);
    assert_null(coord);
    assert_string_equal(ferry_last_error_message(), "params.field_mask: unknown bits 0x200");
}

typedef struct {
    bool keepalive_env, refresh_env; /* a warning named the variable */
} env_warned_t;

static void env_warned_cb(ferry_loglevel_t level, const char *message, void *arg)
{
    env_warned_t *w = arg;
    if (level == FERRY_LOGLEVEL_WARN) {
        w->keepalive_env |= strstr(message, "FERRY_RPC_KEEPALIVE_MS=5") != NULL;
        w->refresh_env |= strstr(message, "FERRY_TLS_REFRESH_S=soon") != NULL;
    }
}

/* The coordinator client's numbers: a set field out of range is refused
 * naming it and its value (a timeout of 0 or less was taken as unset);
 * in range, or unset with a malformed variable in the environment (the
 * fallback: read, warned about, the default), the client connects; a set
 * field does not read its variable. Nothing is dialled: gRPC connects
 * lazily. */
static void test_coordinator_param_ranges(void **state)
{
    static const struct {
        uint64_t field;
        int timeout_ms, keepalive_ms, tls_refresh_s;
        const char *message; /* NULL: taken */
    } cases[] = {
        {FERRY_COORDINATOR_PARAM_FIELD_TIMEOUT, 0, 0, 0, "params.timeout_ms 0 is not >= 1"},
        {FERRY_COORDINATOR_PARAM_FIELD_TIMEOUT, -5, 0, 0, "params.timeout_ms -5 is not >= 1"},
        {FERRY_COORDINATOR_PARAM_FIELD_KEEPALIVE_MS, 0, 999, 0,
         "params.keepalive_ms 999 is not from 1000 to 2000000"},
        {FERRY_COORDINATOR_PARAM_FIELD_KEEPALIVE_MS, 0, 2000001, 0,
         "params.keepalive_ms 2000001 is not from 1000 to 2000000"},
        {FERRY_COORDINATOR_PARAM_FIELD_TLS_REFRESH_S, 0, 0, 0,
         "params.tls_refresh_s 0 is not from 1 to 86400"},
        {FERRY_COORDINATOR_PARAM_FIELD_TLS_REFRESH_S, 0, 0, 86401,
         "params.tls_refresh_s 86401 is not from 1 to 86400"},
        {FERRY_COORDINATOR_PARAM_FIELD_KEEPALIVE_MS, 0, 1000, 0, NULL},
        {FERRY_COORDINATOR_PARAM_FIELD_TLS_REFRESH_S, 0, 0, 86400, NULL},
        {0, 0, 0, 0, NULL},
    };
    env_warned_t warned = {false, false};
    ferry_connector_params_t logging = {.field_mask = FERRY_CONNECTOR_PARAM_FIELD_LOG_LEVEL |
                                                      FERRY_CONNECTOR_PARAM_FIELD_LOG_CB,
                                        .log_level = FERRY_LOGLEVEL_WARN,
                                        .log_cb = env_warned_cb,
                                        .log_arg = &warned};
    ferry_connector_params_t quiet = {.field_mask = FERRY_CONNECTOR_PARAM_FIELD_LOG_LEVEL |
                                                    FERRY_CONNECTOR_PARAM_FIELD_LOG_CB,
                                      .log_level = FERRY_LOGLEVEL_OFF};
    ferry_connector_t *c;
    (void)state;

    /* libferry's log is the process's, set by a connector's params. */
    assert_int_equal(ferry_connector_create(&logging, &c), FERRY_OK);
    ferry_connector_destroy(c);
    assert_int_equal(setenv("FERRY_RPC_KEEPALIVE_MS", "5", 1), 0);
    assert_int_equal(setenv("FERRY_TLS_REFRESH_S", "soon", 1), 0);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ferry_coordinator_params_t cp = {.field_mask = cases[i].field,
                                         .target = "127.0.0.1:1",
                                         .timeout_ms = cases[i].timeout_ms,
                                         .keepalive_ms = cases[i].keepalive_ms,
                                         .tls_refresh_s = cases[i].tls_refresh_s};
        ferry_coordinator_t *coord = NULL;
        ferry_status_t status = ferry_coordinator_connect(&cp, &coord);

        print_message("case %zu\n", i);
        if (cases[i].message != NULL) {
            assert_int_equal(status, FERRY_ERR_INVALID_ARGUMENT);
            assert_null(coord);
            assert_string_equal(ferry_last_error_message(), cases[i].message);
        } else {
            assert_int_equal(status, FERRY_OK);
            assert_int_equal(ferry_coordinator_disconnect(coord), FERRY_OK);
            /* The variable is read where its field is unset, only. */
            bool keepalive_set = cases[i].field == FERRY_COORDINATOR_PARAM_FIELD_KEEPALIVE_MS;
            bool refresh_set = cases[i].field == FERRY_COORDINATOR_PARAM_FIELD_TLS_REFRESH_S;
            assert_int_equal(warned.keepalive_env, !keepalive_set);
            assert_int_equal(warned.refresh_env, !refresh_set);
        }
        warned = (env_warned_t){false, false};
    }
    unsetenv("FERRY_RPC_KEEPALIVE_MS");
    unsetenv("FERRY_TLS_REFRESH_S");
    assert_int_equal(ferry_connector_create(&quiet, &c), FERRY_OK);
    ferry_connector_destroy(c);
}

/* spin_us: 0 (sleep at once) and a long spin both move the bytes, in both
 * progress modes; out-of-range values and a malformed FERRY_SPIN_US are
 * refused; a set field wins over the environment. */
static void test_spin_param(void **state)
{
    static const uint32_t spins[] = {0, 2000};
    ferry_connector_params_t params = {.field_mask = FERRY_CONNECTOR_PARAM_FIELD_SPIN_US |
                                                     FERRY_CONNECTOR_PARAM_FIELD_PROGRESS_MODE};
    ferry_connector_t *c = NULL;
    (void)state;

    for (int mode = 0; mode < 2; mode++) {
        for (size_t i = 0; i < sizeof(spins) / sizeof(spins[0]); i++) {
            params.progress_mode = mode == 0 ? FERRY_PROGRESS_THREAD : FERRY_PROGRESS_CALLER;
            params.spin_us = spins[i];
            assert_int_equal(ferry_connector_create(&params, &c), FERRY_OK);
            loopback_write(c);
            ferry_connector_destroy(c);
        }
    }
    params.spin_us = FERRY_CONNECTOR_MAX_SPIN_US + 1;
    assert_int_equal(ferry_connector_create(&params, &c), FERRY_ERR_INVALID_ARGUMENT);
    setenv("FERRY_SPIN_US", "12x", 1);
    assert_int_equal(ferry_connector_create(NULL, &c), FERRY_ERR_INVALID_ARGUMENT);
    params.spin_us = 10;
    assert_int_equal(ferry_connector_create(&params, &c), FERRY_OK);
    ferry_connector_destroy(c);
    setenv("FERRY_SPIN_US", "0", 1);
    assert_int_equal(ferry_connector_create(NULL, &c), FERRY_OK);
    loopback_write(c);
    ferry_connector_destroy(c);
    unsetenv("FERRY_SPIN_US");
}

/* FERRY_CLAIM_TIMEOUT_MS: garbage, zero, negative and past INT32_MAX are
 * refused at create, naming the variable; its limits and "" (unset) are
 * taken. */
static void test_claim_timeout_env(void **state)
{
    static const char *bad[] = {"x", "12x", "0", "-5", "2147483648", "99999999999999999999"};
    static const char *good[] = {"", "1", "2147483647"};
    ferry_connector_t *c = NULL;
    (void)state;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        setenv("FERRY_CLAIM_TIMEOUT_MS", bad[i], 1);
        assert_int_equal(ferry_connector_create(NULL, &c), FERRY_ERR_INVALID_ARGUMENT);
        assert_non_null(strstr(ferry_last_error_message(), "FERRY_CLAIM_TIMEOUT_MS"));
    }
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        setenv("FERRY_CLAIM_TIMEOUT_MS", good[i], 1);
        assert_int_equal(ferry_connector_create(NULL, &c), FERRY_OK);
        ferry_connector_destroy(c);
    }
    unsetenv("FERRY_CLAIM_TIMEOUT_MS");
}

/* The params' claim_timeout_ms and cuda_direct: taken over the
 * environment (garbage there is not even read), 0 ms refused naming the
 * field; unset, the environment decides as before. */
static void test_claim_timeout_and_cuda_direct_params(void **state)
{
    ferry_connector_params_t params = {.field_mask = FERRY_CONNECTOR_PARAM_FIELD_CLAIM_TIMEOUT_MS |
                                                     FERRY_CONNECTOR_PARAM_FIELD_CUDA_DIRECT,
                                       .claim_timeout_ms = 0,
                                       .cuda_direct = true};
    ferry_connector_t *c = NULL;
    (void)state;

    assert_int_equal(ferry_connector_create(&params, &c), FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(ferry_last_error_message(), "claim_timeout_ms 0"));
    setenv("FERRY_CLAIM_TIMEOUT_MS", "x", 1);
    setenv("FERRY_CUDA_DIRECT", "1", 1);
    params.claim_timeout_ms = 300;
    params.cuda_direct = false;
    assert_int_equal(ferry_connector_create(&params, &c), FERRY_OK);
    assert_int_equal(c->claim_timeout_ms, 300);
    assert_false(c->cuda_direct);
    ferry_connector_destroy(c);
    params.field_mask = 0;
    setenv("FERRY_CLAIM_TIMEOUT_MS", "400", 1);
    assert_int_equal(ferry_connector_create(&params, &c), FERRY_OK);
    assert_int_equal(c->claim_timeout_ms, 400);
    assert_true(c->cuda_direct);
    ferry_connector_destroy(c);
    unsetenv("FERRY_CLAIM_TIMEOUT_MS");
    unsetenv("FERRY_CUDA_DIRECT");
    params.field_mask = FERRY_CONNECTOR_PARAM_FIELD_CUDA_DIRECT;
    params.cuda_direct = true;
    assert_int_equal(ferry_connector_create(&params, &c), FERRY_OK);
    assert_true(c->cuda_direct);
    assert_int_equal(c->claim_timeout_ms, 30000);
    ferry_connector_destroy(c);
}

static void test_fail_from_outside(void **state)
{
    uint8_t buf[64];
    ferry_descriptor_t d = {buf, sizeof(buf), FERRY_DEVICE_HOST_INIT};
    ferry_op_t *op;
    const char *msg;
    (void)state;

    assert_int_equal(ferry_writable_create(world.c, &d, 1, &op), FERRY_OK);
    assert_int_equal(ferry_op_fail(op, FERRY_ERR_EXPIRED, "lease expired"), FERRY_OK);
    assert_int_equal(ferry_op_wait(op, 1000), FERRY_ERR_EXPIRED);
    assert_int_equal(ferry_op_error(op, &msg), FERRY_ERR_EXPIRED);
    assert_string_equal(msg, "lease expired");
    assert_int_equal(ferry_op_fail(op, FERRY_ERR_EXPIRED, "again"), FERRY_ERR_FAILED_PRECONDITION);
    ferry_op_destroy(op);
}

/* One passive and one active operation between the two ends of connector
 * c (a write, or a read), both complete. */
static void loopback_pair(ferry_connector_t *c, bool write, const ferry_descriptor_t *passive_d,
                          const ferry_descriptor_t *active_d, size_t n)
{
    ferry_op_t *passive, *active;
    const uint8_t *md;
    size_t md_len;

    assert_int_equal(write ? ferry_writable_create(c, passive_d, n, &passive)
                           : ferry_readable_create(c, passive_d, n, &passive),
                     FERRY_OK);
    assert_int_equal(ferry_op_metadata(passive, &md, &md_len), FERRY_OK);
    assert_int_equal(write ? ferry_write_begin(c, active_d, n, md, md_len, &active)
                           : ferry_read_begin(c, active_d, n, md, md_len, &active),
                     FERRY_OK);
    assert_int_equal(ferry_op_wait(active, WAIT_TIMEOUT_MS), FERRY_OK);
    assert_int_equal(ferry_op_wait(passive, WAIT_TIMEOUT_MS), FERRY_OK);
    ferry_op_destroy(active);
    ferry_op_destroy(passive);
}

/* ferry_connector_get_stats' transfers: after known operations on a fresh
 * connector (both ends in it, so each transfer counts once per side), every
 * [direction][outcome] cell moved by exactly those operations and bytes. */
static void test_stats_count_transfers(void **state)
{
    static uint8_t w1[4096], w2[1000], r1[3000], d1[4096], d2[1000], d3[3000], small[100], tiny[10],
        gone[64];
    ferry_descriptor_t wsrc[2] = {{w1, sizeof(w1), FERRY_DEVICE_HOST_INIT},
                                  {w2, sizeof(w2), FERRY_DEVICE_HOST_INIT}};
    ferry_descriptor_t wdst[2] = {{d1, sizeof(d1), FERRY_DEVICE_HOST_INIT},
                                  {d2, sizeof(d2), FERRY_DEVICE_HOST_INIT}};
    ferry_descriptor_t rsrc = {r1, sizeof(r1), FERRY_DEVICE_HOST_INIT};
    ferry_descriptor_t rdst = {d3, sizeof(d3), FERRY_DEVICE_HOST_INIT};
    ferry_descriptor_t ds = {small, sizeof(small), FERRY_DEVICE_HOST_INIT};
    ferry_descriptor_t dt = {tiny, sizeof(tiny), FERRY_DEVICE_HOST_INIT};
    ferry_descriptor_t dg = {gone, sizeof(gone), FERRY_DEVICE_HOST_INIT};
    ferry_transfer_count_t want[FERRY_DIRECTION_COUNT][FERRY_OUTCOME_COUNT] = {{{0}}};
    ferry_connector_stats_t st;
    ferry_connector_t *c;
    ferry_op_t *passive, *active;
    const uint8_t *md;
    size_t md_len;
    (void)state;

    assert_int_equal(ferry_connector_create(NULL, &c), FERRY_OK);
    ferry_connector_get_stats(c, &st);
    assert_memory_equal(st.transfers, want, sizeof(want));

    /* A write of two descriptors and a read, both complete. */
    loopback_pair(c, true, wdst, wsrc, 2);
    want[FERRY_DIRECTION_WRITE][FERRY_OUTCOME_COMPLETE] = (ferry_transfer_count_t){1, 5096};
    want[FERRY_DIRECTION_RECEIVED][FERRY_OUTCOME_COMPLETE] = (ferry_transfer_count_t){1, 5096};
    loopback_pair(c, false, &rsrc, &rdst, 1);
    want[FERRY_DIRECTION_READ][FERRY_OUTCOME_COMPLETE] = (ferry_transfer_count_t){1, 3000};
    want[FERRY_DIRECTION_SERVED][FERRY_OUTCOME_COMPLETE] = (ferry_transfer_count_t){1, 3000};

    /* A writable its owner cancels, then a write to it (refused: ERRORED). */
    assert_int_equal(ferry_writable_create(c, &ds, 1, &passive), FERRY_OK);
    assert_int_equal(ferry_op_metadata(passive, &md, &md_len), FERRY_OK);
    assert_int_equal(ferry_op_cancel(passive), FERRY_OK);
    assert_int_equal(ferry_write_begin(c, &ds, 1, md, md_len, &active), FERRY_OK);
    assert_int_equal(ferry_op_wait(active, WAIT_TIMEOUT_MS), FERRY_ERR_CANCELLED);
    assert_int_equal(ferry_op_status(active), FERRY_OP_STATUS_ERRORED);
    ferry_op_destroy(active);
    ferry_op_destroy(passive);
    want[FERRY_DIRECTION_RECEIVED][FERRY_OUTCOME_CANCELLED] = (ferry_transfer_count_t){1, 100};
    want[FERRY_DIRECTION_WRITE][FERRY_OUTCOME_ERRORED] = (ferry_transfer_count_t){1, 100};

    /* A writable failed from outside; a readable destroyed unfinished. */
    assert_int_equal(ferry_writable_create(c, &dt, 1, &passive), FERRY_OK);
    assert_int_equal(ferry_op_fail(passive, FERRY_ERR_EXPIRED, "lease expired"), FERRY_OK);
    ferry_op_destroy(passive);
    want[FERRY_DIRECTION_RECEIVED][FERRY_OUTCOME_ERRORED] = (ferry_transfer_count_t){1, 10};
    assert_int_equal(ferry_readable_create(c, &dg, 1, &passive), FERRY_OK);
    ferry_op_destroy(passive);
    want[FERRY_DIRECTION_SERVED][FERRY_OUTCOME_CANCELLED] = (ferry_transfer_count_t){1, 64};

    ferry_connector_get_stats(c, &st);
    for (int d = 0; d < FERRY_DIRECTION_COUNT; d++) {
        for (int o = 0; o < FERRY_OUTCOME_COUNT; o++) {
            print_message("%s %s: %llu ops, %llu bytes\n", ferry_direction_name(d),
                          ferry_outcome_name(o), (unsigned long long)st.transfers[d][o].ops,
                          (unsigned long long)st.transfers[d][o].bytes);
        }
    }
    assert_memory_equal(st.transfers, want, sizeof(want));
    assert_string_equal(ferry_direction_name(FERRY_DIRECTION_SERVED), "served");
    assert_string_equal(ferry_outcome_name(FERRY_OUTCOME_ERRORED), "errored");
    assert_int_equal(ferry_connector_destroy(c), FERRY_OK);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest all[] = {
        cmocka_unit_test(test_write_1b),
        cmocka_unit_test(test_write_4k),
        cmocka_unit_test(test_write_1m),
        cmocka_unit_test(test_write_64m),
        cmocka_unit_test(test_write_8x4k),
        cmocka_unit_test(test_write_8x1m),
        cmocka_unit_test(test_read_1b),
        cmocka_unit_test(test_read_8x4k),
        cmocka_unit_test(test_read_1m),
        cmocka_unit_test(test_read_64m),
        cmocka_unit_test(test_endpoint_reused),
        cmocka_unit_test(test_write_into_readable_refused),
        cmocka_unit_test(test_size_mismatch_refused),
        cmocka_unit_test(test_write_after_cancel),
        cmocka_unit_test(test_write_after_destroy),
        cmocka_unit_test(test_passive_wait_times_out),
        cmocka_unit_test(test_cuda_refused_without_support),
        cmocka_unit_test(test_bad_descriptors_refused),
        cmocka_unit_test(test_too_many_descriptors_refused),
        cmocka_unit_test(test_writer_killed_before_notice),
        cmocka_unit_test(test_writer_killed_peer_detection),
        cmocka_unit_test(test_peer_error_handling_must_agree),
        cmocka_unit_test(test_loopback_caller_progress),
        cmocka_unit_test(test_listeners),
        cmocka_unit_test(test_claim_during_destroy_refused),
        cmocka_unit_test(test_no_memory_for_the_flush),
        cmocka_unit_test(test_destroy_waits_for_every_delivery),
        cmocka_unit_test(test_failed_peer_not_handed_out),
        cmocka_unit_test(test_destroy_drops_peers_failed_after_the_last_drain),
        cmocka_unit_test(test_error_message_cut_whole),
        cmocka_unit_test(test_destroy_from_done_callback),
        cmocka_unit_test(test_destroy_from_done_callback_caller),
        cmocka_unit_test(test_connector_destroy_in_callback_refused),
        cmocka_unit_test(test_connector_destroy_busy),
        cmocka_unit_test(test_log_quiet_by_default),
        cmocka_unit_test(test_log_callback),
        cmocka_unit_test(test_concurrent_threads),
        cmocka_unit_test(test_claim_timeout_env),
        cmocka_unit_test(test_fail_from_outside),
        cmocka_unit_test(test_spin_param),
        cmocka_unit_test(test_unknown_param_fields),
        cmocka_unit_test(test_coordinator_param_ranges),
        cmocka_unit_test(test_claim_timeout_and_cuda_direct_params),
        cmocka_unit_test(test_stats_count_transfers),
    };
    const struct CMUnitTest tcp_subset[] = {
        cmocka_unit_test(test_write_1m),
        cmocka_unit_test(test_read_8x4k),
        cmocka_unit_test(test_endpoint_reused),
        cmocka_unit_test(test_write_after_cancel),
    };
    int failed;

    /* A dead peer over shared memory is seen at UCX's keepalive check,
     * 20 s apart by default, which is this test's whole wait: every second
     * unless said otherwise (CTest says the same), set before any thread or
     * connector, children included. */
    setenv("UCX_KEEPALIVE_INTERVAL", "1s", 0);
    self_exe = "/proc/self/exe";
    if (argc == 4 && strcmp(argv[1], "--passive") == 0) {
        return passive_main(atoi(argv[2]), atoi(argv[3]));
    }
    if (argc == 4 && strcmp(argv[1], "--writer") == 0) {
        return writer_main(atoi(argv[2]), atoi(argv[3]), 0);
    }
    if (argc == 4 && strcmp(argv[1], "--writer-default") == 0) {
        return writer_main(atoi(argv[2]), atoi(argv[3]), -1);
    }
    signal(SIGPIPE, SIG_IGN);
    if (argc == 2 && strcmp(argv[1], "--tcp-subset") == 0) {
        failed = cmocka_run_group_tests(tcp_subset, group_setup, group_teardown);
    } else {
        failed = cmocka_run_group_tests(all, group_setup, group_teardown);
    }
    return failed + passive_failures;
}
