/*
 * test_worker_staged.c: the staged path (worker/staged.c) with the host copy
 * engine, between two real processes over UCX, so CI runs every step of the
 * pipeline a GPU machine runs with the CUDA engine.
 *
 * Every process of this executable sets ferry__test_staging.force: all
 * descriptors (host memory here) move through pinned slots, copied by the
 * host engine, whose faults (copy_engine.h) the tests set: slow copies,
 * a copy held midway, a copy that fails.
 *
 * The parent is the active side (writer or reader) unless said otherwise.
 * Its partner is this executable re-executed:
 *
 *   --passive CMD_FD RES_FD   for each command: a staged writable ('W') or
 *                             readable ('R', its bytes filled from the
 *                             seed) with the command's chunk size, slots
 *                             and faults; sends the metadata back, waits
 *                             (or cancels midway), checks every byte of a
 *                             writable, reports.
 *   --writer CMD_FD RES_FD    reads metadata, writes one region with its own
 *                             engine held at its third copy, says "R" once
 *                             held, then waits to be killed.
 *                             --writer-peer-errors: with peer error handling.
 *                             --reader, --reader-peer-errors: reads instead.
 *
 * Over shared memory the active side's engine copies straight into (or out
 * of) the passive side's slots, mapped into it; FERRY_TEST_STAGED_PUTS=1
 * (test_worker_staged_puts) keeps it to its own slots and puts or gets, as
 * over TCP (test_worker_staged_tcp).
 *
 * Plus pure checks of the host engine, the CHUNK/CREDIT wire format and the
 * staging rules of the metadata.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/md_rules.h"
#include "pair.h"
#include "worker/copy_engine.h"
#include "worker/ferry_int.h"

#define WAIT_TIMEOUT_MS 20000

enum { MODE_WAIT = 0, MODE_CANCEL_MIDWAY = 1 };

typedef struct {
    char kind; /* 'W' writable, 'R' readable, 'Q' quit */
    int32_t mode;
    uint32_t n;
    uint64_t size;
    uint32_t seed;
    uint64_t chunk;
    uint32_t slots;
    uint32_t fail_at;     /* the passive's Nth copy from now fails; 0: none */
    uint32_t hold_at;     /* CANCEL_MIDWAY: its Nth copy from now is held */
    uint32_t delay_polls; /* every copy needs this many polls */
} cmd_t;

typedef struct {
    int32_t status;    /* ferry_op_wait's result (or the create error) */
    int32_t op_status; /* ferry_op_status after */
    int32_t bytes_ok;  /* every byte matched */
} report_t;

static ferry__host_engine_faults_t *const faults = &ferry__host_engine_faults;

/* Every case runs as a write (the parent writes a writable) and then as a
 * read (the parent reads a readable): read_dir says which. */
static bool read_dir;

/* Whether the active side copies straight into (or out of) the passive
 * side's slots, mapped into it: over shared memory, unless
 * FERRY_TEST_STAGED_PUTS is set (test_worker_staged_puts), which keeps it
 * to its own slots and puts or gets, as over TCP (test_worker_staged_tcp),
 * where nothing is mapped. */
static bool expect_mapped;

static void faults_reset(void)
{
    atomic_store(&faults->hold, false);
    atomic_store(&faults->hold_from, 0);
    atomic_store(&faults->held, false);
    atomic_store(&faults->fail_at, 0);
    atomic_store(&faults->delay_polls, 0);
}

/* The Nth copy this process queues from now. */
static unsigned copy_from_now(unsigned nth)
{
    return atomic_load(&faults->copies) + nth;
}

/* Polls op until the engine holds a copy (or the op ends, or time runs out). */
static bool wait_held(ferry_op_t *op)
{
    int64_t deadline = pair_now_ms() + WAIT_TIMEOUT_MS;

    while (!atomic_load(&faults->held) && pair_now_ms() < deadline) {
        if (ferry_op_wait(op, 5) != FERRY_ERR_TIMED_OUT) {
            break;
        }
    }
    return atomic_load(&faults->held);
}

/* ---- partner roles ---------------------------------------------------- */

static void passive_one(ferry_connector_t *c, const cmd_t *cmd, int res_fd)
{
    uint8_t **bufs = pair_alloc_bufs(cmd->n, cmd->size);
    ferry_descriptor_t *descs = pair_make_descs(bufs, cmd->n, cmd->size);
    report_t rep = {0};
    ferry_op_t *op = NULL;
    const uint8_t *md;
    size_t md_len;

    atomic_store(&ferry__test_staging.chunk, cmd->chunk);
    atomic_store(&ferry__test_staging.slots, cmd->slots);
    faults_reset();
    atomic_store(&faults->delay_polls, cmd->delay_polls);
    if (cmd->fail_at != 0) {
        atomic_store(&faults->fail_at, copy_from_now(cmd->fail_at));
    }
    if (cmd->hold_at != 0) {
        atomic_store(&faults->hold_from, copy_from_now(cmd->hold_at));
        atomic_store(&faults->hold, true);
    }
    if (cmd->kind == 'R') {
        for (uint32_t i = 0; i < cmd->n; i++) {
            pair_fill(bufs[i], cmd->size, cmd->seed, i);
        }
        rep.status = ferry_readable_create(c, descs, cmd->n, &op);
    } else {
        rep.status = ferry_writable_create(c, descs, cmd->n, &op);
    }
    if (rep.status != FERRY_OK) {
        fprintf(stderr, "passive: create: %s\n", ferry_last_error_message());
        pair_send_blob(res_fd, NULL, 0);
        pair_write(res_fd, &rep, sizeof(rep));
        goto out;
    }
    ferry_op_metadata(op, &md, &md_len);
    pair_send_blob(res_fd, md, (uint32_t)md_len);
    if (cmd->mode == MODE_CANCEL_MIDWAY) {
        rep.bytes_ok = wait_held(op);
        ferry_op_cancel(op);
        atomic_store(&faults->hold, false);
        rep.status = ferry_op_wait(op, 0);
    } else {
        rep.status = ferry_op_wait(op, WAIT_TIMEOUT_MS);
        rep.bytes_ok = 1;
        /* A readable's bytes are checked by the reader; its own must be
         * untouched. */
        for (uint32_t i = 0; rep.status == FERRY_OK && i < cmd->n; i++) {
            size_t bad = pair_check(bufs[i], cmd->size, cmd->seed, i);
            if (bad != cmd->size) {
                fprintf(stderr, "passive: descriptor %u byte %zu differs\n", i, bad);
                rep.bytes_ok = 0;
                break;
            }
        }
    }
    rep.op_status = (int32_t)ferry_op_status(op);
    pair_write(res_fd, &rep, sizeof(rep));
out:
    ferry_op_destroy(op);
    faults_reset();
    free(descs);
    pair_free_bufs(bufs, cmd->n);
}

static int passive_main(int cmd_fd, int res_fd)
{
    ferry_connector_params_t params = {.field_mask = FERRY_CONNECTOR_PARAM_FIELD_NAME,
                                       .name = "passive"};
    ferry_connector_t *c;
    cmd_t cmd;

    if (ferry_connector_create(&params, &c) != FERRY_OK) {
        return 2;
    }
    while (read(cmd_fd, &cmd, sizeof(cmd)) == (ssize_t)sizeof(cmd) && cmd.kind != 'Q') {
        passive_one(c, &cmd, res_fd);
    }
    return ferry_connector_destroy(c) == FERRY_OK ? 0 : 3;
}

static int writer_main(int cmd_fd, int res_fd, bool peer_errors, bool read)
{
    ferry_connector_params_t params = {.field_mask =
                                           FERRY_CONNECTOR_PARAM_FIELD_PEER_ERROR_HANDLING,
                                       .peer_error_handling = peer_errors};
    ferry_connector_t *c;
    ferry_descriptor_t desc;
    ferry_op_t *op;
    uint64_t size;
    uint8_t *md, *buf;
    uint32_t md_len;
    ferry_status_t st;

    if (pair_read(cmd_fd, &size, sizeof(size), PAIR_IO_TIMEOUT_MS) != 0 ||
        pair_recv_blob(cmd_fd, &md, &md_len) != 0 ||
        ferry_connector_create(&params, &c) != FERRY_OK) {
        return 2;
    }
    buf = malloc(size);
    pair_fill(buf, size, 9, 0);
    desc = (ferry_descriptor_t){buf, size, FERRY_DEVICE_HOST_INIT};
    atomic_store(&faults->hold_from, copy_from_now(3));
    atomic_store(&faults->hold, true);
    if (read) {
        memset(buf, 0, size);
        st = ferry_read_begin(c, &desc, 1, md, md_len, &op);
    } else {
        st = ferry_write_begin(c, &desc, 1, md, md_len, &op);
    }
    if (st != FERRY_OK || !wait_held(op)) {
        return 3;
    }
    pair_write(res_fd, "R", 1);
    for (;;) {
        pause(); /* until SIGKILL */
    }
}

/* ---- the parent: the writer -------------------------------------------- */

static const char *self_exe;

static struct {
    pair_partner_t passive;
    ferry_connector_t *c;
} world;

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

/* How many passive partners ended other than with exit status 0: 3 when its
 * ferry_connector_destroy still found operations, slots or regions, or a
 * crash, a hang it was killed for, or under ASan a leak at exit. cmocka
 * 1.1.5 prints a failed group teardown but does not count it, so main()
 * adds this to the result. */
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

typedef struct {
    cmd_t cmd;
    /* The writer's own faults (relative copy numbers, 0: none). */
    uint32_t fail_at;
    uint32_t cancel_at; /* cancel once this copy of ours is held */
    uint32_t delay_polls;
    /* What must come out. */
    ferry_status_t want;         /* the writer's wait */
    ferry_status_t passive_want; /* the passive's wait */
    ferry_op_status_t passive_status;
} staged_case_t;

/* The passive side chose the staged path, with the slots asked for. */
static void assert_staged(const uint8_t *md, uint32_t md_len, const cmd_t *cmd)
{
    Ferry__V1__RdmaMetadata *m;

    assert_int_equal(ferry__metadata_decode(md, md_len, &m), FERRY_OK);
    assert_non_null(m->staging);
    assert_int_equal(m->staging->slots, cmd->slots);
    assert_int_equal(m->staging->slot_size, cmd->chunk < cmd->size ? cmd->chunk : cmd->size);
    assert_int_equal(m->descriptors[0]->rkey.len, 0);
    ferry__metadata_free(m);
}

static void run_case(const staged_case_t *k)
{
    const cmd_t *cmd = &k->cmd;
    uint8_t **bufs = pair_alloc_bufs(cmd->n, cmd->size);
    ferry_descriptor_t *descs = pair_make_descs(bufs, cmd->n, cmd->size);
    ferry_op_t *op;
    uint8_t *md;
    uint32_t md_len;
    ferry_status_t st;
    ferry_connector_stats_t before, after;
    report_t rep;

    ferry_connector_get_stats(world.c, &before);
    for (uint32_t i = 0; cmd->kind == 'W' && i < cmd->n; i++) {
        pair_fill(bufs[i], cmd->size, cmd->seed, i);
    }
    assert_int_equal(pair_write(world.passive.cmd_fd, cmd, sizeof(*cmd)), 0);
    assert_int_equal(pair_recv_blob(world.passive.res_fd, &md, &md_len), 0);
    assert_true(md_len > 0);
    assert_staged(md, md_len, cmd);

    faults_reset();
    atomic_store(&faults->delay_polls, k->delay_polls);
    if (k->fail_at != 0) {
        atomic_store(&faults->fail_at, copy_from_now(k->fail_at));
    }
    if (k->cancel_at != 0) {
        atomic_store(&faults->hold_from, copy_from_now(k->cancel_at));
        atomic_store(&faults->hold, true);
    }
    if (cmd->kind == 'R') {
        st = ferry_read_begin(world.c, descs, cmd->n, md, md_len, &op);
    } else {
        st = ferry_write_begin(world.c, descs, cmd->n, md, md_len, &op);
    }
    if (st != FERRY_OK) {
        fail_msg("begin: %s: %s", ferry_status_name(st), ferry_last_error_message());
    }
    ferry__lock(world.c);
    assert_int_equal(ferry__staged_mapped(op), expect_mapped);
    ferry__unlock(world.c);
    if (k->cancel_at != 0) {
        assert_true(wait_held(op));
        assert_int_equal(ferry_op_cancel(op), FERRY_OK);
        atomic_store(&faults->hold, false);
    }
    st = ferry_op_wait(op, WAIT_TIMEOUT_MS);
    if (st != k->want) {
        const char *msg;
        ferry_op_error(op, &msg);
        fail_msg("wait: %s, want %s: %s", ferry_status_name(st), ferry_status_name(k->want), msg);
    }
    assert_int_equal(pair_read(world.passive.res_fd, &rep, sizeof(rep), PAIR_IO_TIMEOUT_MS), 0);
    ferry_connector_get_stats(world.c, &after);
    assert_int_equal(after.messages_dropped, before.messages_dropped); /* every CREDIT kept */
    assert_int_equal(rep.status, k->passive_want);
    assert_int_equal(rep.op_status, k->passive_status);
    if (k->passive_want == FERRY_OK) {
        assert_int_equal(ferry_op_status(op), FERRY_OP_STATUS_COMPLETE);
        assert_int_equal(rep.bytes_ok, 1);
    }
    for (uint32_t i = 0; cmd->kind == 'R' && k->want == FERRY_OK && i < cmd->n; i++) {
        size_t bad = pair_check(bufs[i], cmd->size, cmd->seed, i);
        if (bad != cmd->size) {
            fail_msg("reader: descriptor %u byte %zu differs", i, bad);
        }
    }
    ferry_op_destroy(op);
    faults_reset();
    free(md);
    free(descs);
    pair_free_bufs(bufs, cmd->n);
}

static staged_case_t ok_case(uint32_t n, uint64_t size, uint64_t chunk, uint32_t slots)
{
    staged_case_t k = {0};

    k.cmd = (cmd_t){.kind = read_dir ? 'R' : 'W',
                    .n = n,
                    .size = size,
                    .seed = 5,
                    .chunk = chunk,
                    .slots = slots};
    k.want = FERRY_OK;
    k.passive_want = FERRY_OK;
    k.passive_status = FERRY_OP_STATUS_COMPLETE;
    return k;
}

/* A megabyte in 64 KiB chunks that a fault stops midway: both sides' waits
 * end with want, the passive operation in passive_status. */
static staged_case_t stopped_case(uint32_t n, uint32_t slots, ferry_status_t want,
                                  ferry_op_status_t passive_status)
{
    staged_case_t k = ok_case(n, 1u << 20, 65536, slots);

    k.want = want;
    k.passive_want = want;
    k.passive_status = passive_status;
    return k;
}

/* One region, chunks that do not divide it (the last one is short). */
static void test_one_descriptor(void **state)
{
    staged_case_t k = ok_case(1, (1u << 20) + 123, 65536 + 7, 2);
    (void)state;
    run_case(&k);
}

/* 16 regions, each cut into chunks that do not divide it; chunks never span
 * two regions. */
static void test_sixteen_descriptors(void **state)
{
    staged_case_t k = ok_case(16, 100003, 32768, 4);
    (void)state;
    run_case(&k);
}

/* As many slots as the metadata allows, each a lane: up to that many
 * CHUNKs (or CREDITs) wait for the other side's loop at once, and none is
 * dropped at the inbox's bound for one operation (FERRY__INBOX_PER_OP). */
static void test_most_slots(void **state)
{
    staged_case_t k = ok_case(1, (uint64_t)FERRY_MD_SLOTS_MAX * 8192 * 3, 8192, FERRY_MD_SLOTS_MAX);
    (void)state;
    run_case(&k);
}

/* Chunks much smaller than the regions and one slot more than two. */
static void test_small_chunks(void **state)
{
    staged_case_t k = ok_case(3, 4096, 1000, 3);
    (void)state;
    run_case(&k);
}

/* A chunk size above the region size: one chunk, one slot used. */
static void test_chunk_above_size(void **state)
{
    staged_case_t k = ok_case(2, 777, 1u << 20, 4);
    (void)state;
    run_case(&k);
}

/* Slow engines on both sides: copies finish only after several polls, so
 * every lane waits (back-pressure) and the bytes still all arrive. */
static void test_slow_engines(void **state)
{
    staged_case_t k = ok_case(2, 3u << 20, 256u << 10, 2);
    (void)state;
    k.cmd.delay_polls = 20;
    k.delay_polls = 20;
    run_case(&k);
}

/* A single slot: no overlap, but still correct. */
static void test_one_slot(void **state)
{
    staged_case_t k = ok_case(2, 200000, 65536, 1);
    (void)state;
    run_case(&k);
}

/* The writer cancels while its third copy is held: the writer ends
 * CANCELLED, the passive side ERRORED with the writer's status. */
static void test_writer_cancels_midway(void **state)
{
    staged_case_t k = stopped_case(1, 2, FERRY_ERR_CANCELLED, FERRY_OP_STATUS_ERRORED);
    (void)state;
    k.cancel_at = 3;
    run_case(&k);
}

/* The passive side cancels while its third copy is held: the writer is
 * stopped by the CREDIT that says so. */
static void test_passive_cancels_midway(void **state)
{
    staged_case_t k = stopped_case(1, 2, FERRY_ERR_CANCELLED, FERRY_OP_STATUS_CANCELLED);
    (void)state;
    k.cmd.mode = MODE_CANCEL_MIDWAY;
    k.cmd.hold_at = 3;
    run_case(&k);
}

/* The writer's engine fails its fourth copy. */
static void test_writer_engine_error(void **state)
{
    staged_case_t k = stopped_case(2, 3, FERRY_ERR_IO, FERRY_OP_STATUS_ERRORED);
    (void)state;
    k.fail_at = 4;
    run_case(&k);
}

/* The passive engine fails its fourth copy: the passive side ends ERRORED
 * and stops the writer. */
static void test_passive_engine_error(void **state)
{
    staged_case_t k = stopped_case(2, 3, FERRY_ERR_IO, FERRY_OP_STATUS_ERRORED);
    (void)state;
    k.cmd.fail_at = 4;
    run_case(&k);
}

/* Several transfers back to back on one connector pair after faults: the
 * pipeline leaves nothing behind. */
static void test_after_faults(void **state)
{
    (void)state;
    for (uint32_t i = 0; i < 3; i++) {
        staged_case_t k = ok_case(4, 50000 + i, 8192 + i, 2 + i);
        k.cmd.seed = 40 + i;
        run_case(&k);
    }
}

/* The writer process dies with chunks in flight (its engine held midway).
 * peer_errors: the passive side learns it from its endpoint (ERRORED);
 * otherwise its wait times out and the op stays claimed. */
static void writer_killed(bool peer_errors, bool read)
{
    ferry_connector_params_t params = {.field_mask =
                                           FERRY_CONNECTOR_PARAM_FIELD_PEER_ERROR_HANDLING,
                                       .peer_error_handling = peer_errors};
    ferry_connector_t *c;
    uint64_t size = 1u << 20;
    uint8_t *buf = calloc(1, size);
    ferry_descriptor_t d = {buf, size, FERRY_DEVICE_HOST_INIT};
    pair_partner_t writer;
    ferry_op_t *op;
    const uint8_t *md;
    size_t md_len;
    char ready;

    atomic_store(&ferry__test_staging.chunk, 65536);
    atomic_store(&ferry__test_staging.slots, 2);
    assert_int_equal(ferry_connector_create(&params, &c), FERRY_OK);
    if (read) {
        pair_fill(buf, size, 9, 0);
        assert_int_equal(ferry_readable_create(c, &d, 1, &op), FERRY_OK);
    } else {
        assert_int_equal(ferry_writable_create(c, &d, 1, &op), FERRY_OK);
    }
    assert_int_equal(ferry_op_metadata(op, &md, &md_len), FERRY_OK);
    writer = pair_spawn(self_exe, read ? (peer_errors ? "--reader-peer-errors" : "--reader")
                                       : (peer_errors ? "--writer-peer-errors" : "--writer"));
    assert_int_equal(pair_write(writer.cmd_fd, &size, sizeof(size)), 0);
    assert_int_equal(pair_send_blob(writer.cmd_fd, md, (uint32_t)md_len), 0);
    assert_int_equal(pair_read(writer.res_fd, &ready, 1, PAIR_IO_TIMEOUT_MS), 0);
    kill(writer.pid, SIGKILL);
    assert_true(WIFSIGNALED(pair_reap(writer.pid)));
    pair_close(&writer);
    if (peer_errors) {
        assert_int_equal(ferry_op_wait(op, WAIT_TIMEOUT_MS), FERRY_ERR_PEER_FAILED);
        assert_int_equal(ferry_op_status(op), FERRY_OP_STATUS_ERRORED);
    } else {
        assert_int_equal(ferry_op_wait(op, 300), FERRY_ERR_TIMED_OUT);
        assert_int_equal(ferry_op_status(op), FERRY_OP_STATUS_IN_PROGRESS);
    }
    ferry_op_destroy(op);
    assert_int_equal(ferry_connector_destroy(c), FERRY_OK);
    atomic_store(&ferry__test_staging.chunk, 0);
    atomic_store(&ferry__test_staging.slots, 0);
    free(buf);
}

static void test_writer_killed_midway(void **state)
{
    (void)state;
    writer_killed(false, read_dir);
}

static void test_writer_killed_midway_peer_detection(void **state)
{
    (void)state;
    writer_killed(true, read_dir);
}

/* Caller progress mode, both sides on one connector: ferry_op_wait drives
 * the loop, and with slow engine copies in flight it must keep polling them
 * (an engine has no fd to sleep on) until both operations complete. */
static void test_caller_progress_loopback(void **state)
{
    ferry_connector_params_t params = {.field_mask = FERRY_CONNECTOR_PARAM_FIELD_PROGRESS_MODE,
                                       .progress_mode = FERRY_PROGRESS_CALLER};
    uint64_t size = 300000;
    uint8_t *src = malloc(size), *dst = calloc(1, size);
    ferry_descriptor_t ds = {src, size, FERRY_DEVICE_HOST_INIT};
    ferry_descriptor_t dd = {dst, size, FERRY_DEVICE_HOST_INIT};
    ferry_connector_t *c;
    ferry_op_t *passive, *active;
    const uint8_t *md;
    size_t md_len;
    (void)state;

    pair_fill(src, size, 21, 0);
    if (read_dir) {
        /* The readable serves src; the reader fills dst. */
        ds = (ferry_descriptor_t){dst, size, FERRY_DEVICE_HOST_INIT};
        dd = (ferry_descriptor_t){src, size, FERRY_DEVICE_HOST_INIT};
    }
    atomic_store(&ferry__test_staging.chunk, 32768);
    atomic_store(&ferry__test_staging.slots, 2);
    faults_reset();
    atomic_store(&faults->delay_polls, 50);
    assert_int_equal(ferry_connector_create(&params, &c), FERRY_OK);
    if (read_dir) {
        assert_int_equal(ferry_readable_create(c, &dd, 1, &passive), FERRY_OK);
        assert_int_equal(ferry_op_metadata(passive, &md, &md_len), FERRY_OK);
        assert_int_equal(ferry_read_begin(c, &ds, 1, md, md_len, &active), FERRY_OK);
    } else {
        assert_int_equal(ferry_writable_create(c, &dd, 1, &passive), FERRY_OK);
        assert_int_equal(ferry_op_metadata(passive, &md, &md_len), FERRY_OK);
        assert_int_equal(ferry_write_begin(c, &ds, 1, md, md_len, &active), FERRY_OK);
    }
    assert_int_equal(ferry_op_wait(active, WAIT_TIMEOUT_MS), FERRY_OK);
    assert_int_equal(ferry_op_wait(passive, WAIT_TIMEOUT_MS), FERRY_OK);
    assert_int_equal(pair_check(dst, size, 21, 0), size);
    ferry_op_destroy(active);
    ferry_op_destroy(passive);
    assert_int_equal(ferry_connector_destroy(c), FERRY_OK);
    faults_reset();
    atomic_store(&ferry__test_staging.chunk, 0);
    atomic_store(&ferry__test_staging.slots, 0);
    free(src);
    free(dst);
}

/* Fills c's inbox to its bound with NOTICEs for keys nobody holds (what
 * anyone who reaches the worker can send); lock held. */
static void fill_inbox(ferry_connector_t *c)
{
    ferry__msg_t notice = {.type = FERRY__MSG_NOTICE, .status = FERRY_OK};
    uint8_t *buf;
    size_t len;

    notice.key[0] = 0xee; /* no operation has it: the victim's is random */
    assert_int_equal(ferry__msg_encode(&notice, &buf, &len), FERRY_OK);
    while (ferry__inbox_push(c, NULL, buf, len)) {
    }
    assert_int_equal(c->inbox_len, FERRY__INBOX_MAX);
    free(buf);
}

/* Frees what fill_inbox queued, as the loop would have handled it (each is
 * ignored); lock held. */
static void empty_inbox(ferry_connector_t *c)
{
    while (c->inbox != NULL) {
        ferry__inmsg_t *in = c->inbox;
        c->inbox = in->next;
        free(in);
    }
    c->inbox_tail = &c->inbox;
    c->inbox_len = 0;
    c->inbox_bytes = 0;
}

/* Two connectors in this process, a staged transfer between them whose
 * claim the passive connector (caller progress mode) has admitted. */
typedef struct {
    uint64_t size;
    uint8_t *src, *dst;
    ferry_connector_t *pc, *ac; /* passive (caller mode), active (thread) */
    ferry_op_t *passive, *active;
} admitted_t;

/* Sets up t and begins the transfer; returns with pc's lock held, once the
 * claim is admitted. The claim is taken in by this thread's own
 * ucp_worker_progress, lock held, exactly as pc's loop would, and nothing
 * of pc's queues is handled meanwhile. With flood, pc's inbox is full
 * while that happens. */
static void admitted_begin(admitted_t *t, bool flood)
{
    ferry_connector_params_t caller = {.field_mask = FERRY_CONNECTOR_PARAM_FIELD_PROGRESS_MODE,
                                       .progress_mode = FERRY_PROGRESS_CALLER};
    ferry_descriptor_t ds, dd;
    const uint8_t *md;
    size_t md_len;
    int64_t deadline;

    t->size = 256 * 1024;
    t->src = malloc(t->size);
    t->dst = calloc(1, t->size);
    pair_fill(t->src, t->size, 23, 0);
    /* Writing: src -> dst. Reading: the readable serves src, the reader
     * fills dst. */
    ds = (ferry_descriptor_t){read_dir ? t->dst : t->src, t->size, FERRY_DEVICE_HOST_INIT};
    dd = (ferry_descriptor_t){read_dir ? t->src : t->dst, t->size, FERRY_DEVICE_HOST_INIT};
    atomic_store(&ferry__test_staging.chunk, 16384);
    atomic_store(&ferry__test_staging.slots, 2); /* 16 chunks: CREDITs needed */
    faults_reset();
    assert_int_equal(ferry_connector_create(&caller, &t->pc), FERRY_OK);
    assert_int_equal(ferry_connector_create(NULL, &t->ac), FERRY_OK);
    if (read_dir) {
        assert_int_equal(ferry_readable_create(t->pc, &dd, 1, &t->passive), FERRY_OK);
    } else {
        assert_int_equal(ferry_writable_create(t->pc, &dd, 1, &t->passive), FERRY_OK);
    }
    assert_int_equal(ferry_op_metadata(t->passive, &md, &md_len), FERRY_OK);
    ferry__lock(t->pc);
    if (flood) {
        fill_inbox(t->pc);
    }
    if (read_dir) {
        assert_int_equal(ferry_read_begin(t->ac, &ds, 1, md, md_len, &t->active), FERRY_OK);
    } else {
        assert_int_equal(ferry_write_begin(t->ac, &ds, 1, md, md_len, &t->active), FERRY_OK);
    }
    deadline = pair_now_ms() + WAIT_TIMEOUT_MS;
    while (t->passive->state != FERRY__OP_CLAIMED && pair_now_ms() < deadline) {
        ucp_worker_progress(t->pc->worker);
    }
    assert_int_equal(t->passive->state, FERRY__OP_CLAIMED);
}

/* Drives pc (this thread) until the active op is final or time runs out;
 * returns how the active op ended. */
static ferry_status_t admitted_drive(admitted_t *t)
{
    int64_t deadline = pair_now_ms() + WAIT_TIMEOUT_MS;
    ferry_status_t st;

    while ((st = ferry_op_wait(t->active, 0)) == FERRY_ERR_TIMED_OUT && pair_now_ms() < deadline) {
        assert_int_equal(ferry_connector_progress(t->pc), FERRY_OK);
    }
    return st;
}

static void admitted_end(admitted_t *t)
{
    ferry_op_destroy(t->active);
    ferry_op_destroy(t->passive);
    assert_int_equal(ferry_connector_destroy(t->ac), FERRY_OK);
    assert_int_equal(ferry_connector_destroy(t->pc), FERRY_OK);
    atomic_store(&ferry__test_staging.chunk, 0);
    atomic_store(&ferry__test_staging.slots, 0);
    free(t->src);
    free(t->dst);
}

/* An admitted claim does not depend on a slot in the inbox: a claim that
 * arrives while a flood of NOTICEs holds every slot is admitted, and the
 * staged transfer, whose CREDITs go back on the endpoint the loop opens to
 * the claimant after admission, still completes. Before, the admission's
 * follow-up was a message in the inbox, dropped at the bound: the passive
 * side never opened that endpoint, sent no CREDIT, and the writer (or
 * reader) waited for its slots for ever. */
static void test_claim_admitted_while_inbox_full(void **state)
{
    admitted_t t;
    (void)state;

    admitted_begin(&t, true);
    assert_int_equal(t.pc->inbox_len, FERRY__INBOX_MAX);
    empty_inbox(t.pc); /* as if the loop had handled the flood */
    ferry__unlock(t.pc);
    assert_int_equal(admitted_drive(&t), FERRY_OK);
    assert_int_equal(ferry_op_wait(t.passive, WAIT_TIMEOUT_MS), FERRY_OK);
    assert_int_equal(pair_check(t.dst, t.size, 23, 0), t.size);
    admitted_end(&t);
}

static bool stale_empty(ferry_connector_t *c)
{
    bool empty;

    ferry__lock(c);
    empty = c->stale == NULL;
    ferry__unlock(c);
    return empty;
}

/* A passive op cancelled after it admitted a claim and before the loop
 * opened the endpoint to the claimant still tells the claimant to stop (the
 * CREDIT its release could not send), and the slots it kept for the
 * claimant are freed when the claimant settles. Before, the loop opened no
 * endpoint for an op that was no longer CLAIMED: the writer (or reader)
 * waited for its slots for ever and the slots stayed until destroy. */
static void test_claimant_stopped_when_cancelled_before_watched(void **state)
{
    int64_t deadline;
    admitted_t t;
    (void)state;

    admitted_begin(&t, false);
    /* ferry_op_cancel, with the lock already held. */
    assert_true(ferry__op_move(t.passive, FERRY__OP_CANCELLED, FERRY_ERR_CANCELLED, "%s",
                               "cancelled by its owner"));
    ferry__unlock(t.pc);
    assert_int_equal(admitted_drive(&t), FERRY_ERR_CANCELLED);
    assert_int_equal(ferry_op_wait(t.passive, 0), FERRY_ERR_CANCELLED);
    deadline = pair_now_ms() + WAIT_TIMEOUT_MS;
    while (!stale_empty(t.pc) && pair_now_ms() < deadline) {
        assert_int_equal(ferry_connector_progress(t.pc), FERRY_OK); /* its settling NOTICE */
    }
    assert_true(stale_empty(t.pc));
    admitted_end(&t);
}

/* A CREDIT that does not carry the writer's claim nonce back is not the
 * passive side's: a forged stop (someone who knows the key and guessed the
 * op id) is ignored mid-transfer, and the write completes with the right
 * bytes. (Before the claim nonce it ended the write.) Injected through the
 * loop's handler, as the wire would hand it over. */
static void test_forged_credit_ignored(void **state)
{
    uint64_t size = 1u << 20;
    uint8_t *a = malloc(size), *b = calloc(1, size);
    ferry_descriptor_t da = {a, size, FERRY_DEVICE_HOST_INIT};
    ferry_descriptor_t db = {b, size, FERRY_DEVICE_HOST_INIT};
    ferry__msg_t forged = {.type = FERRY__MSG_CREDIT, .status = FERRY_ERR_CANCELLED};
    ferry_op_t *passive, *active;
    ferry_connector_t *c;
    const uint8_t *md;
    size_t md_len;
    bool held;
    (void)state;

    pair_fill(a, size, 41, 0);
    atomic_store(&ferry__test_staging.chunk, 65536);
    atomic_store(&ferry__test_staging.slots, 2);
    assert_int_equal(ferry_connector_create(NULL, &c), FERRY_OK);
    faults_reset();
    atomic_store(&faults->hold_from, copy_from_now(3));
    atomic_store(&faults->hold, true);
    assert_int_equal(ferry_writable_create(c, &db, 1, &passive), FERRY_OK);
    assert_int_equal(ferry_op_metadata(passive, &md, &md_len), FERRY_OK);
    assert_int_equal(ferry_write_begin(c, &da, 1, md, md_len, &active), FERRY_OK);
    held = wait_held(active);
    ferry__lock(c);
    memcpy(forged.key, passive->key, FERRY__KEY_LEN);
    forged.op_id = active->id;
    ferry__staged_on_credit(c, &forged); /* claim nonce: zero, not the writer's */
    ferry__unlock(c);
    atomic_store(&faults->hold, false);
    assert_true(held);
    assert_int_equal(ferry_op_wait(active, WAIT_TIMEOUT_MS), FERRY_OK);
    assert_int_equal(ferry_op_wait(passive, WAIT_TIMEOUT_MS), FERRY_OK);
    assert_int_equal(pair_check(b, size, 41, 0), size);
    ferry_op_destroy(active);
    ferry_op_destroy(passive);
    assert_int_equal(ferry_connector_destroy(c), FERRY_OK);
    faults_reset();
    atomic_store(&ferry__test_staging.chunk, 0);
    atomic_store(&ferry__test_staging.slots, 0);
    free(a);
    free(b);
}

static bool stale_gone(ferry_connector_t *c)
{
    int64_t deadline = pair_now_ms() + WAIT_TIMEOUT_MS;
    bool gone = false;

    while (!gone && pair_now_ms() < deadline) {
        ferry__lock(c);
        gone = c->stale == NULL;
        ferry__unlock(c);
        if (!gone) {
            usleep(1000); /* polling the condition, with a deadline */
        }
    }
    return gone;
}

/* How many slot sets c's pool holds, and their bytes. */
static unsigned pooled(ferry_connector_t *c, size_t *bytes_p)
{
    unsigned n;

    ferry__lock(c);
    n = ferry__staged_pooled(c);
    if (bytes_p != NULL) {
        *bytes_p = c->slot_pool_bytes;
    }
    ferry__unlock(c);
    return n;
}

/* The passive side cancels midway, both sides on one connector: its slots
 * stay mapped (a put or get of the claimant may still be in flight to
 * them) until the stopped claimant settles with its notice, and then go
 * back to the pool, before either operation is destroyed. Writes, then
 * reads. */
static void test_stale_slots_released(void **state)
{
    uint64_t size = 1u << 20;
    uint8_t *a = malloc(size), *b = calloc(1, size);
    ferry_descriptor_t da = {a, size, FERRY_DEVICE_HOST_INIT};
    ferry_descriptor_t db = {b, size, FERRY_DEVICE_HOST_INIT};
    ferry_connector_t *c;
    (void)state;

    pair_fill(a, size, 31, 0);
    atomic_store(&ferry__test_staging.chunk, 65536);
    atomic_store(&ferry__test_staging.slots, 2);
    assert_int_equal(ferry_connector_create(NULL, &c), FERRY_OK);
    for (int read = 0; read < 2; read++) {
        ferry_op_t *passive, *active;
        const uint8_t *md;
        size_t md_len;
        bool held;

        faults_reset();
        atomic_store(&faults->hold_from, copy_from_now(3));
        atomic_store(&faults->hold, true);
        if (read) {
            assert_int_equal(ferry_readable_create(c, &da, 1, &passive), FERRY_OK);
            assert_int_equal(ferry_op_metadata(passive, &md, &md_len), FERRY_OK);
            assert_int_equal(ferry_read_begin(c, &db, 1, md, md_len, &active), FERRY_OK);
        } else {
            assert_int_equal(ferry_writable_create(c, &db, 1, &passive), FERRY_OK);
            assert_int_equal(ferry_op_metadata(passive, &md, &md_len), FERRY_OK);
            assert_int_equal(ferry_write_begin(c, &da, 1, md, md_len, &active), FERRY_OK);
        }
        held = wait_held(active);
        assert_int_equal(ferry_op_cancel(passive), FERRY_OK);
        atomic_store(&faults->hold, false);
        assert_true(held);
        assert_int_equal(ferry_op_wait(passive, 0), FERRY_ERR_CANCELLED);
        assert_int_equal(ferry_op_wait(active, WAIT_TIMEOUT_MS), FERRY_ERR_CANCELLED);
        assert_true(stale_gone(c));
        assert_int_equal(pooled(c, NULL), 1); /* and back in the pool */
        ferry_op_destroy(active);
        ferry_op_destroy(passive);
    }
    assert_int_equal(ferry_connector_destroy(c), FERRY_OK);
    faults_reset();
    atomic_store(&ferry__test_staging.chunk, 0);
    atomic_store(&ferry__test_staging.slots, 0);
    free(a);
    free(b);
}

/* The claimant dies between the passive side's cancel and its own notice:
 * stopped (SIGSTOP) while held midway, so it cannot settle, then the
 * passive op is cancelled (its slots go stale: a put or get of the
 * claimant may still be in flight to them), then the claimant is killed.
 * With peer error handling its endpoint's failure frees the stale slots
 * at once; before, they stayed until the connector was destroyed. */
static void test_stale_slots_released_when_claimant_dies(void **state)
{
    ferry_connector_params_t params = {
        .field_mask = FERRY_CONNECTOR_PARAM_FIELD_PEER_ERROR_HANDLING, .peer_error_handling = true};
    uint64_t size = 1u << 20;
    uint8_t *buf = calloc(1, size);
    ferry_descriptor_t d = {buf, size, FERRY_DEVICE_HOST_INIT};
    pair_partner_t writer;
    ferry_connector_t *c;
    ferry_op_t *op;
    const uint8_t *md;
    size_t md_len;
    bool stale;
    char ready;
    int wstatus;
    (void)state;

    atomic_store(&ferry__test_staging.chunk, 65536);
    atomic_store(&ferry__test_staging.slots, 2);
    assert_int_equal(ferry_connector_create(&params, &c), FERRY_OK);
    if (read_dir) {
        pair_fill(buf, size, 9, 0);
        assert_int_equal(ferry_readable_create(c, &d, 1, &op), FERRY_OK);
    } else {
        assert_int_equal(ferry_writable_create(c, &d, 1, &op), FERRY_OK);
    }
    assert_int_equal(ferry_op_metadata(op, &md, &md_len), FERRY_OK);
    writer = pair_spawn(self_exe, read_dir ? "--reader-peer-errors" : "--writer-peer-errors");
    assert_int_equal(pair_write(writer.cmd_fd, &size, sizeof(size)), 0);
    assert_int_equal(pair_send_blob(writer.cmd_fd, md, (uint32_t)md_len), 0);
    assert_int_equal(pair_read(writer.res_fd, &ready, 1, PAIR_IO_TIMEOUT_MS), 0);
    kill(writer.pid, SIGSTOP);
    assert_int_equal(waitpid(writer.pid, &wstatus, WUNTRACED), writer.pid);
    assert_true(WIFSTOPPED(wstatus));
    assert_int_equal(ferry_op_cancel(op), FERRY_OK);
    assert_int_equal(ferry_op_wait(op, 0), FERRY_ERR_CANCELLED);
    ferry__lock(c);
    stale = c->stale != NULL;
    ferry__unlock(c);
    assert_true(stale); /* the stopped claimant has not settled */
    kill(writer.pid, SIGKILL);
    assert_true(WIFSIGNALED(pair_reap(writer.pid)));
    pair_close(&writer);
    assert_true(stale_gone(c));
    ferry_op_destroy(op);
    assert_int_equal(ferry_connector_destroy(c), FERRY_OK);
    atomic_store(&ferry__test_staging.chunk, 0);
    atomic_store(&ferry__test_staging.slots, 0);
    free(buf);
}

/* The claimant of stale slots holds the operation's key and admission
 * nonce, so its NOTICE passes the callback's check although it names no
 * live operation, and each copy took a slot of the inbox (counted against
 * the whole only): a claimant that sent thousands could fill it, crowding
 * out every other party's messages until the loop drained it
 * (audit-s27-dataplane F6). Now the first copy is queued and the rest are
 * dropped in the callback, and that one still settles the slots. Injected
 * as the callback does it: ferry__msg_from_a_party, then the inbox, with
 * the loop held off by the lock. */
static void test_stale_notice_copies_take_one_slot(void **state)
{
    ferry_connector_params_t params = {
        .field_mask = FERRY_CONNECTOR_PARAM_FIELD_PEER_ERROR_HANDLING, .peer_error_handling = true};
    uint64_t size = 1u << 20;
    uint8_t *buf = calloc(1, size);
    ferry_descriptor_t d = {buf, size, FERRY_DEVICE_HOST_INIT};
    ferry__msg_t notice = {.type = FERRY__MSG_NOTICE, .status = FERRY_OK};
    pair_partner_t writer;
    ferry_connector_t *c;
    ferry_op_t *op, *party;
    const uint8_t *md;
    uint8_t *wire;
    size_t md_len, wire_len, inbox_before;
    unsigned taken = 0;
    int wstatus;
    char ready;
    (void)state;

    atomic_store(&ferry__test_staging.chunk, 65536);
    atomic_store(&ferry__test_staging.slots, 2);
    assert_int_equal(ferry_connector_create(&params, &c), FERRY_OK);
    assert_int_equal(ferry_writable_create(c, &d, 1, &op), FERRY_OK);
    assert_int_equal(ferry_op_metadata(op, &md, &md_len), FERRY_OK);
    writer = pair_spawn(self_exe, "--writer-peer-errors");
    assert_int_equal(pair_write(writer.cmd_fd, &size, sizeof(size)), 0);
    assert_int_equal(pair_send_blob(writer.cmd_fd, md, (uint32_t)md_len), 0);
    assert_int_equal(pair_read(writer.res_fd, &ready, 1, PAIR_IO_TIMEOUT_MS), 0);
    kill(writer.pid, SIGSTOP); /* admitted, midway: it cannot settle */
    assert_int_equal(waitpid(writer.pid, &wstatus, WUNTRACED), writer.pid);
    assert_int_equal(ferry_op_cancel(op), FERRY_OK);
    memcpy(notice.key, op->key, FERRY__KEY_LEN);
    memcpy(notice.nonce, op->nonce, FERRY__NONCE_LEN);
    ferry_op_destroy(op); /* gone from the table; its slots wait for the claimant */
    ferry__lock(c);
    assert_non_null(c->stale);
    assert_null(ferry__op_find_passive(c, notice.key));
    assert_int_equal(ferry__msg_encode(&notice, &wire, &wire_len), FERRY_OK);
    inbox_before = c->inbox_len;
    for (int i = 0; i < 1000; i++) {
        if (ferry__msg_from_a_party(c, &notice, &party)) {
            assert_null(party); /* no live operation: the stale slots' */
            taken += ferry__inbox_push(c, party, wire, wire_len);
        }
    }
    assert_int_equal(taken, 1);
    assert_int_equal(c->inbox_len, inbox_before + 1);
    ferry__unlock(c);
    free(wire);
    assert_true(stale_gone(c)); /* the one queued settled them */
    kill(writer.pid, SIGKILL);
    assert_true(WIFSIGNALED(pair_reap(writer.pid)));
    pair_close(&writer);
    assert_int_equal(ferry_connector_destroy(c), FERRY_OK);
    atomic_store(&ferry__test_staging.chunk, 0);
    atomic_store(&ferry__test_staging.slots, 0);
    free(buf);
}

/* The first byte of slots[from, to) that is not zero (to when none). */
static size_t first_nonzero(const uint8_t *slots, size_t from, size_t to)
{
    while (from < to && slots[from] == 0) {
        from++;
    }
    return from;
}

/* One transfer of a[size) into b through a staged passive operation,
 * both sides on c: a writable of b, or (read_dir) a readable of a, served
 * with seed's bytes. Its slot set (set bytes) comes every byte zero, new
 * or pooled, at *first_p (the first set, kept there when NULL), and goes
 * back to c's pool once both operations are destroyed. */
static void pooled_pair(ferry_connector_t *c, uint8_t *a, uint8_t *b, uint64_t size, size_t set,
                        uint32_t seed, uint8_t **first_p)
{
    ferry_descriptor_t da = {a, size, FERRY_DEVICE_HOST_INIT};
    ferry_descriptor_t db = {b, size, FERRY_DEVICE_HOST_INIT};
    ferry_op_t *passive, *active;
    const uint8_t *md;
    size_t md_len, nonzero;
    uint8_t *slots;

    pair_fill(a, size, seed, 0);
    memset(b, 0, size);
    /* Writing: a -> b. Reading: the readable serves a, the reader fills b. */
    assert_int_equal(read_dir ? ferry_readable_create(c, &da, 1, &passive)
                              : ferry_writable_create(c, &db, 1, &passive),
                     FERRY_OK);
    ferry__lock(c);
    slots = (uint8_t *)ferry__staged_slots(passive);
    nonzero = slots != NULL ? first_nonzero(slots, 0, set) : 0;
    ferry__unlock(c);
    assert_non_null(slots);
    assert_int_equal(nonzero, set); /* every byte zero */
    *first_p = *first_p == NULL ? slots : *first_p;
    assert_ptr_equal(slots, *first_p);
    assert_int_equal(ferry_op_metadata(passive, &md, &md_len), FERRY_OK);
    assert_int_equal(read_dir ? ferry_read_begin(c, &db, 1, md, md_len, &active)
                              : ferry_write_begin(c, &da, 1, md, md_len, &active),
                     FERRY_OK);
    assert_int_equal(ferry_op_wait(active, WAIT_TIMEOUT_MS), FERRY_OK);
    assert_int_equal(ferry_op_wait(passive, WAIT_TIMEOUT_MS), FERRY_OK);
    assert_int_equal(pair_check(b, size, seed, 0), size);
    ferry_op_destroy(active);
    ferry_op_destroy(passive);
    assert_int_equal(pooled(c, NULL), 1);
}

/* A passive op's slots go back to its connector's pool when it ends and
 * serve the next staged op of that size: ten operations, both sides on
 * one connector, make one ucp_mem_map, every op's slots are at the same
 * address with the same packed key (the writer unpacks it once), every
 * byte arrives, and each op finds its slots zeroed, not the bytes the
 * previous op moved through them (its peer may read any slot). Before,
 * every op allocated, registered and faulted in new slots and the writer
 * unpacked a new key. Writes, then reads. */
static void test_slots_pooled(void **state)
{
    const uint64_t size = 1u << 20;
    const size_t set = 2 * (256u << 10);
    uint8_t *a = malloc(size), *b = malloc(size), *first = NULL;
    ferry_connector_stats_t before, after;
    ferry_connector_t *c;
    (void)state;

    atomic_store(&ferry__test_staging.chunk, 256u << 10);
    atomic_store(&ferry__test_staging.slots, 2); /* four chunks through two slots */
    faults_reset();
    assert_int_equal(ferry_connector_create(NULL, &c), FERRY_OK);
    ferry_connector_get_stats(c, &before);
    for (uint32_t i = 0; i < 10; i++) {
        pooled_pair(c, a, b, size, set, 40 + i, &first);
    }
    ferry_connector_get_stats(c, &after);
    assert_int_equal(after.mem_maps - before.mem_maps, 1);
    assert_int_equal(after.rkeys_unpacked - before.rkeys_unpacked, 1);
    assert_int_equal(ferry_connector_destroy(c), FERRY_OK);
    atomic_store(&ferry__test_staging.chunk, 0);
    atomic_store(&ferry__test_staging.slots, 0);
    free(a);
    free(b);
}

/* A peer may send a chunk through any slot, not only the lowest ones
 * libferry's own lanes take: here the active side takes its lanes from the
 * top, and one chunk goes through the last of four slots. The set goes back
 * to the pool with that slot zeroed too, so the next op's peer, who may
 * read any slot with the shared key, finds none of this op's bytes
 * (audit-s32 N1). Before, only the first min(chunks, slots) slots were
 * zeroed. Writes, then reads. */
static void test_high_slot_zeroed(void **state)
{
    const uint64_t size = 256u << 10; /* one chunk */
    const size_t set = 4 * (256u << 10);
    uint8_t *a = malloc(size), *b = malloc(size), *first = NULL;
    ferry_connector_t *c;
    (void)state;

    atomic_store(&ferry__test_staging.chunk, 256u << 10);
    atomic_store(&ferry__test_staging.slots, 4);
    atomic_store(&ferry__test_staging.top_lanes, true);
    faults_reset();
    assert_int_equal(ferry_connector_create(NULL, &c), FERRY_OK);
    for (uint32_t i = 0; i < 2; i++) {
        pooled_pair(c, a, b, size, set, 60 + i, &first);
    }
    assert_int_equal(ferry_connector_destroy(c), FERRY_OK);
    atomic_store(&ferry__test_staging.top_lanes, false);
    atomic_store(&ferry__test_staging.chunk, 0);
    atomic_store(&ferry__test_staging.slots, 0);
    free(a);
    free(b);
}

/* The passive side's slots pinned in a writer's process are bounded
 * (FERRY__RKEY_PIN_MAX per connector): a writer with no room left for a
 * new set's pin copies through its own slots and puts instead, and every
 * byte still arrives. Two connectors in this process, over shared memory;
 * the writer's pinned bytes are set near the bound by hand. */
static void test_mapped_pins_bounded(void **state)
{
    const uint64_t size = 1u << 20;
    const size_t set = 2 * (256u << 10);
    uint8_t *a, *b, *b2;
    ferry_descriptor_t da, db, db2;
    ferry_connector_t *pc, *ac;
    ferry_op_t *x, *y, *wx, *wy;
    const uint8_t *md;
    size_t md_len, pinned, fake;
    bool mapped_x, mapped_y;
    (void)state;

    if (!expect_mapped) {
        skip(); /* nothing is mapped, so nothing is pinned */
    }
    a = malloc(size);
    b = calloc(1, size);
    b2 = calloc(1, size);
    da = (ferry_descriptor_t){a, size, FERRY_DEVICE_HOST_INIT};
    db = (ferry_descriptor_t){b, size, FERRY_DEVICE_HOST_INIT};
    db2 = (ferry_descriptor_t){b2, size, FERRY_DEVICE_HOST_INIT};
    pair_fill(a, size, 61, 0);
    atomic_store(&ferry__test_staging.chunk, 256u << 10);
    atomic_store(&ferry__test_staging.slots, 2);
    faults_reset();
    assert_int_equal(ferry_connector_create(NULL, &pc), FERRY_OK);
    assert_int_equal(ferry_connector_create(NULL, &ac), FERRY_OK);
    /* x's slots are mapped and pinned; y, alive beside x, has a set of its
     * own, for which the writer has no room. */
    assert_int_equal(ferry_writable_create(pc, &db, 1, &x), FERRY_OK);
    assert_int_equal(ferry_writable_create(pc, &db2, 1, &y), FERRY_OK);
    assert_int_equal(ferry_op_metadata(x, &md, &md_len), FERRY_OK);
    assert_int_equal(ferry_write_begin(ac, &da, 1, md, md_len, &wx), FERRY_OK);
    ferry__lock(ac);
    mapped_x = ferry__staged_mapped(wx);
    pinned = ac->rkeys_pinned_bytes;
    fake = FERRY__RKEY_PIN_MAX - pinned - set + 1;
    ac->rkeys_pinned_bytes += fake;
    ferry__unlock(ac);
    assert_true(mapped_x);
    assert_int_equal(pinned, set);
    assert_int_equal(ferry_op_metadata(y, &md, &md_len), FERRY_OK);
    assert_int_equal(ferry_write_begin(ac, &da, 1, md, md_len, &wy), FERRY_OK);
    ferry__lock(ac);
    mapped_y = ferry__staged_mapped(wy);
    ferry__unlock(ac);
    assert_false(mapped_y);
    assert_int_equal(ferry_op_wait(wx, WAIT_TIMEOUT_MS), FERRY_OK);
    assert_int_equal(ferry_op_wait(wy, WAIT_TIMEOUT_MS), FERRY_OK);
    assert_int_equal(ferry_op_wait(x, WAIT_TIMEOUT_MS), FERRY_OK);
    assert_int_equal(ferry_op_wait(y, WAIT_TIMEOUT_MS), FERRY_OK);
    assert_int_equal(pair_check(b, size, 61, 0), size);
    assert_int_equal(pair_check(b2, size, 61, 0), size);
    ferry__lock(ac);
    assert_int_equal(ac->rkeys_pinned_bytes, pinned + fake);
    ac->rkeys_pinned_bytes -= fake;
    ferry__unlock(ac);
    ferry_op_destroy(wx);
    ferry_op_destroy(wy);
    ferry_op_destroy(x);
    ferry_op_destroy(y);
    assert_int_equal(ferry_connector_destroy(ac), FERRY_OK);
    assert_int_equal(ferry_connector_destroy(pc), FERRY_OK);
    atomic_store(&ferry__test_staging.chunk, 0);
    atomic_store(&ferry__test_staging.slots, 0);
    free(a);
    free(b);
    free(b2);
}

/* A passive side's staging block is the peer's word: slots it names that
 * reach past the segment its key maps (half a set further on, or far
 * away) are refused before the claim, naming the staging block. Taking the
 * writer's own slots instead would not help: their puts would go through
 * the same key's translation, which UCX does not bound (segments.c). The
 * honest block is mapped, and copied into directly; that writer cancels
 * before the passive connector (caller progress) runs its loop, so no byte
 * moves. */
static void test_mapped_slots_out_of_range_refused(void **state)
{
    ferry_connector_params_t caller = {.field_mask = FERRY_CONNECTOR_PARAM_FIELD_PROGRESS_MODE,
                                       .progress_mode = FERRY_PROGRESS_CALLER};
    const uint64_t size = 1u << 20;
    const uint64_t shifts[] = {0, 256u << 10, 1ull << 40};
    uint8_t *a, *b;
    ferry_descriptor_t da, db;
    ferry_connector_t *pc, *ac;
    ferry_op_t *passive;
    const uint8_t *md;
    size_t md_len;
    int64_t deadline;
    unsigned live;
    (void)state;

    if (!expect_mapped) {
        skip(); /* nothing is mapped here */
    }
    a = calloc(1, size);
    b = calloc(1, size);
    da = (ferry_descriptor_t){a, size, FERRY_DEVICE_HOST_INIT};
    db = (ferry_descriptor_t){b, size, FERRY_DEVICE_HOST_INIT};
    atomic_store(&ferry__test_staging.chunk, 256u << 10);
    atomic_store(&ferry__test_staging.slots, 2);
    faults_reset();
    assert_int_equal(ferry_connector_create(&caller, &pc), FERRY_OK);
    assert_int_equal(ferry_connector_create(NULL, &ac), FERRY_OK);
    assert_int_equal(ferry_writable_create(pc, &db, 1, &passive), FERRY_OK);
    assert_int_equal(ferry_op_metadata(passive, &md, &md_len), FERRY_OK);
    for (size_t i = 0; i < sizeof(shifts) / sizeof(shifts[0]); i++) {
        Ferry__V1__RdmaMetadata *m;
        uint8_t *forged;
        size_t forged_len;
        ferry_op_t *active = NULL;
        ferry_status_t status;
        bool mapped;

        assert_int_equal(ferry__metadata_decode(md, md_len, &m), FERRY_OK);
        assert_non_null(m->staging);
        m->staging->address += shifts[i];
        forged_len = ferry__v1__rdma_metadata__get_packed_size(m);
        forged = malloc(forged_len);
        ferry__v1__rdma_metadata__pack(m, forged);
        ferry__metadata_free(m);
        status = ferry_write_begin(ac, &da, 1, forged, forged_len, &active);
        free(forged);
        if (shifts[i] != 0) {
            assert_int_equal(status, FERRY_ERR_INVALID_ARGUMENT);
            assert_non_null(strstr(ferry_last_error_message(), "metadata: staging: "));
            assert_non_null(strstr(ferry_last_error_message(), "outside the shared-memory"));
            assert_null(active);
            continue;
        }
        assert_int_equal(status, FERRY_OK);
        ferry__lock(ac);
        mapped = ferry__staged_mapped(active);
        ferry__unlock(ac);
        assert_true(mapped); /* the honest block is mapped */
        assert_int_equal(ferry_op_cancel(active), FERRY_OK);
        assert_int_equal(ferry_op_wait(active, WAIT_TIMEOUT_MS), FERRY_ERR_CANCELLED);
        ferry_op_destroy(active);
        /* The claim waits on pc's loop (its endpoint's wireup too): run it
         * until the cancelled op is gone from ac. It may admit the claim,
         * whose writer has stopped; nothing moves. */
        deadline = pair_now_ms() + WAIT_TIMEOUT_MS;
        do {
            assert_int_equal(ferry_connector_progress(pc), FERRY_OK);
            live = pair_live_ops(ac);
        } while (live > 0 && pair_now_ms() < deadline);
        assert_int_equal(live, 0);
    }
    ferry_op_destroy(passive);
    assert_int_equal(ferry_connector_destroy(ac), FERRY_OK);
    assert_int_equal(ferry_connector_destroy(pc), FERRY_OK);
    atomic_store(&ferry__test_staging.chunk, 0);
    atomic_store(&ferry__test_staging.slots, 0);
    free(a);
    free(b);
}

/* A passive side's slot larger than a writer pins for one operation
 * (256 MiB) is refused before anything is pinned: its chunks are its slots,
 * whole, so the writer would need one local slot that size. Over TCP,
 * where nothing is mapped to check, too. */
static void test_huge_slot_refused(void **state)
{
    ferry_connector_params_t caller = {.field_mask = FERRY_CONNECTOR_PARAM_FIELD_PROGRESS_MODE,
                                       .progress_mode = FERRY_PROGRESS_CALLER};
    const uint64_t size = 1u << 20;
    uint8_t *a = calloc(1, size), *b = calloc(1, size), *forged;
    ferry_descriptor_t da = {a, size, FERRY_DEVICE_HOST_INIT};
    ferry_descriptor_t db = {b, size, FERRY_DEVICE_HOST_INIT};
    ferry_connector_t *pc, *ac;
    ferry_op_t *passive, *active = NULL;
    Ferry__V1__RdmaMetadata *m;
    const uint8_t *md;
    size_t md_len, forged_len;
    (void)state;

    faults_reset();
    assert_int_equal(ferry_connector_create(&caller, &pc), FERRY_OK);
    assert_int_equal(ferry_connector_create(NULL, &ac), FERRY_OK);
    assert_int_equal(ferry_writable_create(pc, &db, 1, &passive), FERRY_OK);
    assert_int_equal(ferry_op_metadata(passive, &md, &md_len), FERRY_OK);
    assert_int_equal(ferry__metadata_decode(md, md_len, &m), FERRY_OK);
    assert_non_null(m->staging);
    m->staging->slot_size = 512u << 20;
    m->staging->slots = 1;
    forged_len = ferry__v1__rdma_metadata__get_packed_size(m);
    forged = malloc(forged_len);
    ferry__v1__rdma_metadata__pack(m, forged);
    ferry__metadata_free(m);
    assert_int_equal(ferry_write_begin(ac, &da, 1, forged, forged_len, &active),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(ferry_last_error_message(), "staging.slot_size is 536870912 bytes"));
    assert_null(active);
    free(forged);
    ferry_op_destroy(passive);
    assert_int_equal(ferry_connector_destroy(ac), FERRY_OK);
    assert_int_equal(ferry_connector_destroy(pc), FERRY_OK);
    free(a);
    free(b);
}

/* The pool keeps at most FERRY__SLOT_POOL_BYTES: five writables of the
 * default four 4 MiB slots end, four sets stay (64 MiB) and the fifth is
 * freed; five more then take the four and allocate one. */
static void test_slot_pool_bounded(void **state)
{
    const uint64_t size = 16u << 20;
    uint8_t *buf = malloc(size);
    ferry_descriptor_t d = {buf, size, FERRY_DEVICE_HOST_INIT};
    ferry_connector_stats_t before, after;
    ferry_connector_t *c;
    ferry_op_t *ops[5];
    size_t bytes = 0;
    (void)state;

    faults_reset();
    assert_int_equal(ferry_connector_create(NULL, &c), FERRY_OK);
    for (int round = 0; round < 2; round++) {
        ferry_connector_get_stats(c, &before);
        for (int i = 0; i < 5; i++) {
            assert_int_equal(ferry_writable_create(c, &d, 1, &ops[i]), FERRY_OK);
        }
        ferry_connector_get_stats(c, &after);
        assert_int_equal(after.mem_maps - before.mem_maps, round == 0 ? 5 : 1);
        assert_int_equal(pooled(c, NULL), 0);
        for (int i = 0; i < 5; i++) {
            ferry_op_destroy(ops[i]);
        }
        assert_int_equal(pooled(c, &bytes), 4);
        assert_int_equal(bytes, FERRY__SLOT_POOL_BYTES);
    }
    assert_int_equal(ferry_connector_destroy(c), FERRY_OK);
    free(buf);
}

/* The cases above then run again in the read direction. */
static int read_setup(void **state)
{
    read_dir = true;
    return group_setup(state);
}

static int read_teardown(void **state)
{
    read_dir = false;
    return group_teardown(state);
}

/* A staged readable's metadata says so, with the slots asked for, and its
 * memory is not registered. */
static void test_readable_staged(void **state)
{
    uint8_t buf[5000];
    ferry_descriptor_t d = {buf, sizeof(buf), FERRY_DEVICE_HOST_INIT};
    cmd_t cmd = {.size = sizeof(buf), .chunk = 1024, .slots = 3};
    ferry_op_t *op = NULL;
    const uint8_t *md;
    size_t md_len;
    (void)state;

    atomic_store(&ferry__test_staging.chunk, cmd.chunk);
    atomic_store(&ferry__test_staging.slots, cmd.slots);
    assert_int_equal(ferry_readable_create(world.c, &d, 1, &op), FERRY_OK);
    assert_int_equal(ferry_op_metadata(op, &md, &md_len), FERRY_OK);
    assert_staged(md, (uint32_t)md_len, &cmd);
    ferry_op_destroy(op);
    atomic_store(&ferry__test_staging.chunk, 0);
    atomic_store(&ferry__test_staging.slots, 0);
}

/* ---- pure checks ----------------------------------------------------------- */

/* Copies finish in order; a later ticket done means the earlier ones are. */
static void test_host_engine_order(void **state)
{
    ferry__copy_engine_t *e;
    uint8_t src[3][8] = {{1}, {2}, {3}}, dst[3][8] = {{0}};
    uint64_t t[3];
    bool done = false;
    (void)state;

    faults_reset();
    assert_int_equal(ferry__host_engine_create(&e), FERRY_OK);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(e->ops->copy_async(e, dst[i], src[i], 8, &t[i]), FERRY_OK);
    }
    assert_true(t[0] < t[1] && t[1] < t[2]);
    assert_int_equal(e->ops->poll(e, t[1], &done), FERRY_OK);
    assert_true(done);
    assert_int_equal(dst[0][0], 1);
    assert_int_equal(dst[1][0], 2);
    assert_int_equal(dst[2][0], 0); /* not polled yet: bytes move when it finishes */
    assert_int_equal(e->ops->poll(e, t[0], &done), FERRY_OK);
    assert_true(done);
    ferry__copy_engine_destroy(e);
}

/* A failed copy fails the engine for good; a held copy never finishes
 * until released, and sync drops it. */
static void test_host_engine_faults(void **state)
{
    ferry__copy_engine_t *e;
    uint8_t a[4] = {7}, b[4] = {0};
    uint64_t t1, t2;
    bool done = true;
    (void)state;

    faults_reset();
    assert_int_equal(ferry__host_engine_create(&e), FERRY_OK);
    atomic_store(&faults->hold_from, copy_from_now(1));
    atomic_store(&faults->hold, true);
    assert_int_equal(e->ops->copy_async(e, b, a, 4, &t1), FERRY_OK);
    assert_int_equal(e->ops->poll(e, t1, &done), FERRY_OK);
    assert_false(done);
    assert_true(atomic_load(&faults->held));
    e->ops->sync(e); /* dropped */
    assert_int_equal(b[0], 0);
    faults_reset();
    atomic_store(&faults->fail_at, copy_from_now(1));
    assert_int_equal(e->ops->copy_async(e, b, a, 4, &t2), FERRY_OK);
    assert_int_equal(e->ops->poll(e, t2, &done), FERRY_ERR_IO);
    assert_int_equal(e->ops->copy_async(e, b, a, 4, &t2), FERRY_ERR_IO);
    assert_int_equal(b[0], 0);
    ferry__copy_engine_destroy(e);
    faults_reset();
}

static void test_wire_chunk_credit(void **state)
{
    ferry__msg_t in = {0}, out;
    uint8_t *buf;
    size_t len;
    (void)state;

    in.type = FERRY__MSG_CHUNK;
    in.key[0] = 9;
    in.nonce[3] = 4;
    in.slot = 3;
    in.desc = 15;
    in.offset = 0x100000001ull;
    in.len = 65543;
    assert_int_equal(ferry__msg_encode(&in, &buf, &len), FERRY_OK);
    assert_int_equal(ferry__msg_decode(buf, len, &out), FERRY_OK);
    assert_int_equal(out.type, FERRY__MSG_CHUNK);
    assert_int_equal(out.slot, 3);
    assert_int_equal(out.desc, 15);
    assert_true(out.offset == in.offset && out.len == in.len);
    assert_int_equal(out.nonce[3], 4);
    /* A chunk record of the wrong length is malformed. */
    assert_int_equal(ferry__msg_decode(buf, len - 1, &out), FERRY_ERR_PROTOCOL);
    buf[36] = 23;
    assert_int_equal(ferry__msg_decode(buf, len - 1, &out), FERRY_ERR_PROTOCOL);
    free(buf);
    in.type = FERRY__MSG_CREDIT;
    in.status = FERRY_ERR_CANCELLED;
    in.op_id = 77;
    assert_int_equal(ferry__msg_encode(&in, &buf, &len), FERRY_OK);
    assert_int_equal(ferry__msg_decode(buf, len, &out), FERRY_OK);
    assert_int_equal(out.type, FERRY__MSG_CREDIT);
    assert_int_equal(out.status, FERRY_ERR_CANCELLED);
    assert_int_equal(out.op_id, 77);
    free(buf);
}

/* The staging rules (common/md_rules.c): descriptors' rkeys empty, the
 * block complete; WRITE and READ metadata alike. */
static void test_staging_rules(void **state)
{
    uint8_t addr[4] = {1, 2, 3, 4}, key[FERRY_MD_KEY_LEN] = {0}, rk[8] = {1};
    Ferry__V1__Device dev = FERRY__V1__DEVICE__INIT;
    Ferry__V1__Descriptor d = FERRY__V1__DESCRIPTOR__INIT, *dp = &d;
    Ferry__V1__Staging st = FERRY__V1__STAGING__INIT;
    Ferry__V1__RdmaMetadata md = FERRY__V1__RDMA_METADATA__INIT;
    char msg[256];
    (void)state;

    dev.kind = FERRY__V1__DEVICE_KIND__DEVICE_KIND_CUDA;
    d.address = 0x1000;
    d.size = 4096;
    d.device = &dev;
    st.address = 0x2000;
    st.slot_size = 1024;
    st.slots = 2;
    st.rkey.data = rk;
    st.rkey.len = sizeof(rk);
    md.kind = FERRY__V1__OPERATION_KIND__OPERATION_KIND_WRITE;
    md.worker_address.data = addr;
    md.worker_address.len = sizeof(addr);
    md.notification_key.data = key;
    md.notification_key.len = sizeof(key);
    md.n_descriptors = 1;
    md.descriptors = &dp;
    /* Without staging an empty rkey is refused (what an old reader does). */
    assert_int_equal(ferry_md_check("md", &md, msg, sizeof(msg)), FERRY_ERR_INVALID_ARGUMENT);
    md.staging = &st;
    assert_int_equal(ferry_md_check("md", &md, msg, sizeof(msg)), FERRY_OK);
    d.rkey.data = rk;
    d.rkey.len = sizeof(rk);
    assert_int_equal(ferry_md_check("md", &md, msg, sizeof(msg)), FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(msg, "md.descriptors[0].rkey must be empty"));
    d.rkey.len = 0;
    st.slots = 0;
    assert_int_equal(ferry_md_check("md", &md, msg, sizeof(msg)), FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(msg, "md.staging.slots"));
    st.slots = 2;
    md.kind = FERRY__V1__OPERATION_KIND__OPERATION_KIND_READ;
    assert_int_equal(ferry_md_check("md", &md, msg, sizeof(msg)), FERRY_OK);
    st.rkey.len = 0;
    assert_int_equal(ferry_md_check("md", &md, msg, sizeof(msg)), FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(msg, "md.staging.rkey"));
}

int main(int argc, char **argv)
{
    const struct CMUnitTest transfers[] = {
        cmocka_unit_test(test_one_descriptor),
        cmocka_unit_test(test_sixteen_descriptors),
        cmocka_unit_test(test_small_chunks),
        cmocka_unit_test(test_most_slots),
        cmocka_unit_test(test_chunk_above_size),
        cmocka_unit_test(test_slow_engines),
        cmocka_unit_test(test_one_slot),
        cmocka_unit_test(test_writer_cancels_midway),
        cmocka_unit_test(test_passive_cancels_midway),
        cmocka_unit_test(test_writer_engine_error),
        cmocka_unit_test(test_passive_engine_error),
        cmocka_unit_test(test_after_faults),
        cmocka_unit_test(test_writer_killed_midway),
        cmocka_unit_test(test_writer_killed_midway_peer_detection),
        cmocka_unit_test(test_stale_slots_released_when_claimant_dies),
        cmocka_unit_test(test_slots_pooled),
        cmocka_unit_test(test_high_slot_zeroed),
        cmocka_unit_test(test_caller_progress_loopback),
        cmocka_unit_test(test_claim_admitted_while_inbox_full),
        cmocka_unit_test(test_claimant_stopped_when_cancelled_before_watched),
    };
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_host_engine_order),
        cmocka_unit_test(test_host_engine_faults),
        cmocka_unit_test(test_wire_chunk_credit),
        cmocka_unit_test(test_staging_rules),
        cmocka_unit_test(test_one_descriptor),
        cmocka_unit_test(test_sixteen_descriptors),
        cmocka_unit_test(test_small_chunks),
        cmocka_unit_test(test_most_slots),
        cmocka_unit_test(test_chunk_above_size),
        cmocka_unit_test(test_slow_engines),
        cmocka_unit_test(test_one_slot),
        cmocka_unit_test(test_writer_cancels_midway),
        cmocka_unit_test(test_passive_cancels_midway),
        cmocka_unit_test(test_writer_engine_error),
        cmocka_unit_test(test_passive_engine_error),
        cmocka_unit_test(test_after_faults),
        cmocka_unit_test(test_writer_killed_midway),
        cmocka_unit_test(test_writer_killed_midway_peer_detection),
        cmocka_unit_test(test_stale_slots_released_when_claimant_dies),
        cmocka_unit_test(test_slots_pooled),
        cmocka_unit_test(test_high_slot_zeroed),
        cmocka_unit_test(test_caller_progress_loopback),
        cmocka_unit_test(test_claim_admitted_while_inbox_full),
        cmocka_unit_test(test_claimant_stopped_when_cancelled_before_watched),
        cmocka_unit_test(test_readable_staged),
        cmocka_unit_test(test_stale_slots_released),
        cmocka_unit_test(test_stale_notice_copies_take_one_slot),
        cmocka_unit_test(test_forged_credit_ignored),
        cmocka_unit_test(test_slot_pool_bounded),
        cmocka_unit_test(test_mapped_pins_bounded),
        cmocka_unit_test(test_mapped_slots_out_of_range_refused),
        cmocka_unit_test(test_huge_slot_refused),
    };
    int failed;

    /* A dead peer over shared memory is seen at UCX's keepalive check,
     * 20 s apart by default, which is this test's whole wait: every second
     * unless said otherwise (CTest says the same), set before any thread or
     * connector, children included. */
    setenv("UCX_KEEPALIVE_INTERVAL", "1s", 0);
    signal(SIGPIPE, SIG_IGN);
    atomic_store(&ferry__test_staging.force, true);
    atomic_store(&ferry__test_staging.no_map, getenv("FERRY_TEST_STAGED_PUTS") != NULL);
    expect_mapped = getenv("FERRY_TEST_STAGED_PUTS") == NULL &&
                    (getenv("UCX_TLS") == NULL || strcmp(getenv("UCX_TLS"), "tcp") != 0);
    if (argc == 4 && strcmp(argv[1], "--passive") == 0) {
        return passive_main(atoi(argv[2]), atoi(argv[3]));
    }
    if (argc == 4 && strncmp(argv[1], "--writer", 8) == 0) {
        return writer_main(atoi(argv[2]), atoi(argv[3]),
                           strcmp(argv[1], "--writer-peer-errors") == 0, false);
    }
    if (argc == 4 && strncmp(argv[1], "--reader", 8) == 0) {
        return writer_main(atoi(argv[2]), atoi(argv[3]),
                           strcmp(argv[1], "--reader-peer-errors") == 0, true);
    }
    self_exe = argv[0];
    failed = cmocka_run_group_tests(tests, group_setup, group_teardown);
    /* The same transfers as a read of a staged readable. */
    failed += cmocka_run_group_tests_name("read", transfers, read_setup, read_teardown);
    return failed + passive_failures;
}
