/*
 * test_worker_cuda.c: libferry on CUDA memory, between two processes.
 *
 *   test_worker_cuda               on the machine's driver (libcuda.so.1);
 *                                  exits 77 (CTest: skipped) with the reason
 *                                  where there is no driver or no GPU
 *   FERRY_TEST_FAKE_CUDA=LIB ...   on tests/worker/fake_cuda.c instead (a
 *                                  driver over host memory; LIB relative to
 *                                  FERRY_BUILD_DIR), so CI runs the same
 *                                  cases without a GPU
 *   test_worker_cuda --no-driver   with a driver path that does not exist:
 *                                  CUDA unavailable, the reason logged,
 *                                  CUDA descriptors refused with it
 *
 * The cases: the descriptor checks (host memory claimed as cuda:0, memory of
 * one device claimed as another, a region past its allocation; each refused
 * naming the descriptor), ferry_mem_alloc of device memory, and writes host->GPU, GPU->host and
 * GPU->GPU with 1 and 16 descriptors, on the path the connector picks (direct where UCX has CUDA
 * transports and FERRY_CUDA_DIRECT=1, as test_worker_cuda_direct runs it, else staged) and forced
 * onto the staged path; every byte is checked after copying it
 * back from the GPU; reads host->GPU, GPU->host and GPU->GPU the same way (a readable on GPU memory
 * is staged where UCX has no CUDA transports). With the fake driver also a CUDA copy that fails
 * midway, in a write and in a read.
 *
 * Partners: this executable re-executed: --passive CMD_FD RES_FD creates the
 * writable or readable (host or GPU memory), waits, and checks the bytes
 * (a readable's: unchanged); --writer
 * writes GPU memory with its notice held back, then waits to be killed (a
 * writer killed midway, on the default and the staged path).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dlfcn.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pair.h"
#include "worker/cuda.h"
#include "worker/ferry_int.h"

#define WAIT_TIMEOUT_MS 30000
#define SKIP_EXIT       77

typedef struct {
    char kind;     /* 'W' writable, 'R' readable, 'Q' quit */
    int32_t cuda;  /* the passive memory is on cuda:0 (else host) */
    int32_t force; /* staged path forced */
    uint32_t n;
    uint64_t size;
    uint32_t seed;
} cmd_t;

typedef struct {
    int32_t status;
    int32_t op_status;
    int32_t bytes_ok;
} report_t;

/* n regions of size bytes on cuda:0 or the host, filled with the pattern
 * (or zeros when seed is 0). */
typedef struct {
    bool cuda;
    uint32_t n;
    uint64_t size;
    void **ptrs;
    ferry_descriptor_t *descs;
} regions_t;

static int regions_alloc(regions_t *r, bool cuda, uint32_t n, uint64_t size, uint32_t seed)
{
    uint8_t *host = malloc(size);

    r->cuda = cuda;
    r->n = n;
    r->size = size;
    r->ptrs = calloc(n, sizeof(*r->ptrs));
    r->descs = calloc(n, sizeof(*r->descs));
    for (uint32_t i = 0; i < n; i++) {
        if (seed != 0) {
            pair_fill(host, size, seed, i);
        } else {
            memset(host, 0, size);
        }
        if (cuda) {
            if (ferry__cuda_mem_alloc(0, size, &r->ptrs[i]) != FERRY_OK ||
                ferry__cuda_memcpy(0, r->ptrs[i], host, size) != FERRY_OK) {
                fprintf(stderr, "cuda alloc/copy: %s\n", ferry_last_error_message());
                free(host);
                return -1;
            }
            r->descs[i] = (ferry_descriptor_t){r->ptrs[i], size, {FERRY_DEVICE_CUDA, 0}};
        } else {
            r->ptrs[i] = malloc(size);
            memcpy(r->ptrs[i], host, size);
            r->descs[i] = (ferry_descriptor_t){r->ptrs[i], size, FERRY_DEVICE_HOST_INIT};
        }
    }
    free(host);
    return 0;
}

/* Every byte of every region against the pattern (copied back from the GPU). */
static bool regions_check(const regions_t *r, uint32_t seed)
{
    uint8_t *host = malloc(r->size);
    bool ok = true;

    for (uint32_t i = 0; ok && i < r->n; i++) {
        size_t bad;
        if (r->cuda) {
            ok = ferry__cuda_memcpy(0, host, r->ptrs[i], r->size) == FERRY_OK;
        } else {
            memcpy(host, r->ptrs[i], r->size);
        }
        bad = pair_check(host, r->size, seed, i);
        if (ok && bad != r->size) {
            fprintf(stderr, "region %u byte %zu differs\n", i, bad);
            ok = false;
        }
    }
    free(host);
    return ok;
}

static void regions_free(regions_t *r)
{
    for (uint32_t i = 0; i < r->n; i++) {
        if (r->cuda) {
            ferry__cuda_mem_free(0, r->ptrs[i]);
        } else {
            free(r->ptrs[i]);
        }
    }
    free(r->ptrs);
    free(r->descs);
}

static const char *fake_driver; /* NULL: the machine's driver */

/* A connector; on the fake driver, one that never takes the direct path:
 * its "device memory" is host memory, which a UCX with CUDA transports (on
 * a GPU machine) must not be handed as CUDA memory. */
static ferry_status_t connector_create(ferry_connector_t **c_p)
{
    ferry_status_t st = ferry_connector_create(NULL, c_p);

    if (st == FERRY_OK && fake_driver != NULL) {
        (*c_p)->ucx_cuda = false;
    }
    return st;
}

/* ---- the partner ---------------------------------------------------------- */

static void passive_one(ferry_connector_t *c, const cmd_t *cmd, int res_fd)
{
    report_t rep = {0};
    regions_t r;
    ferry_op_t *op = NULL;
    const uint8_t *md;
    size_t md_len;

    atomic_store(&ferry__test_staging.force, cmd->force != 0);
    if (regions_alloc(&r, cmd->cuda != 0, cmd->n, cmd->size, cmd->kind == 'R' ? cmd->seed : 0) !=
        0) {
        rep.status = FERRY_ERR_INTERNAL;
    } else if (cmd->kind == 'R') {
        rep.status = ferry_readable_create(c, r.descs, cmd->n, &op);
    } else {
        rep.status = ferry_writable_create(c, r.descs, cmd->n, &op);
    }
    if (rep.status != FERRY_OK) {
        fprintf(stderr, "passive: create: %s\n", ferry_last_error_message());
        pair_send_blob(res_fd, NULL, 0);
        pair_write(res_fd, &rep, sizeof(rep));
        regions_free(&r);
        return;
    }
    ferry_op_metadata(op, &md, &md_len);
    pair_send_blob(res_fd, md, (uint32_t)md_len);
    rep.status = ferry_op_wait(op, WAIT_TIMEOUT_MS);
    rep.op_status = (int32_t)ferry_op_status(op);
    rep.bytes_ok = rep.status == FERRY_OK && regions_check(&r, cmd->seed); /* read: unchanged */
    pair_write(res_fd, &rep, sizeof(rep));
    ferry_op_destroy(op);
    regions_free(&r);
}

/* --writer: writes GPU memory into the metadata's writable with the notice
 * held back (the fault hook), says "R" once the data moved, then waits to
 * be killed. */
static int writer_main(int cmd_fd, int res_fd)
{
    ferry_connector_t *c;
    regions_t src;
    ferry_op_t *op;
    uint64_t size;
    uint32_t md_len;
    uint8_t *md;
    int32_t force;
    int64_t deadline;

    if (pair_read(cmd_fd, &size, sizeof(size), PAIR_IO_TIMEOUT_MS) != 0 ||
        pair_read(cmd_fd, &force, sizeof(force), PAIR_IO_TIMEOUT_MS) != 0 ||
        pair_recv_blob(cmd_fd, &md, &md_len) != 0 || connector_create(&c) != FERRY_OK ||
        regions_alloc(&src, true, 1, size, 9) != 0) {
        return 2;
    }
    atomic_store(&ferry__test_staging.force, force != 0);
    atomic_store(&ferry__test_hold_notice, true);
    if (ferry_write_begin(c, src.descs, 1, md, md_len, &op) != FERRY_OK) {
        return 3;
    }
    deadline = pair_now_ms() + PAIR_IO_TIMEOUT_MS;
    while (!atomic_load(&ferry__test_notice_held) && pair_now_ms() < deadline) {
        ferry_op_wait(op, 10);
    }
    pair_write(res_fd, "R", 1);
    for (;;) {
        pause(); /* until SIGKILL */
    }
}

static int passive_main(int cmd_fd, int res_fd)
{
    ferry_connector_t *c;
    cmd_t cmd;

    if (connector_create(&c) != FERRY_OK) {
        return 2;
    }
    while (read(cmd_fd, &cmd, sizeof(cmd)) == (ssize_t)sizeof(cmd) && cmd.kind != 'Q') {
        passive_one(c, &cmd, res_fd);
    }
    return ferry_connector_destroy(c) == FERRY_OK ? 0 : 3;
}

/* ---- the parent ------------------------------------------------------------ */

static const char *self_exe;

static struct {
    pair_partner_t passive;
    ferry_connector_t *c;
} world;

static int group_setup(void **state)
{
    const char *direct = getenv("FERRY_CUDA_DIRECT");
    (void)state;

    if (connector_create(&world.c) != FERRY_OK || !ferry_connector_is_cuda_available(world.c)) {
        return -1;
    }
    if (direct != NULL && strcmp(direct, "1") == 0 && fake_driver == NULL && !world.c->ucx_cuda) {
        /* Its cases would pass on the staged path and prove nothing. */
        printf("SKIP: FERRY_CUDA_DIRECT=1, but this UCX reports no CUDA memory type (%s): "
               "no direct path to test\n",
               world.c->ucx_reports_cuda ? "reported, not taken" : "ucx_info -d lists no cuda");
        ferry_connector_destroy(world.c);
        exit(SKIP_EXIT);
    }
    world.passive = pair_spawn(self_exe, "--passive");
    return world.passive.pid > 0 ? 0 : -1;
}

/* How the passive partner ended, when not with exit status 0 (3: its
 * connector still held operations, slots or regions; a crash; a hang it was
 * killed for; under ASan a leak at exit). cmocka 1.1.5 prints a failed
 * group teardown but does not count it, so main() adds this to the result. */
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

typedef enum { PATH_DEFAULT, PATH_STAGED } path_t;

#define BIG   ((8u << 20) + 5)   /* three 4 MiB chunks, the last short */
#define SMALL ((256u << 10) + 3) /* per region of 16 */

/* One write ('W': the parent writes its src memory into a writable on dst
 * memory) or read ('R': the parent reads a readable on src memory into its
 * dst memory). Where UCX has no CUDA transports (or forced) the passive
 * side's GPU memory is staged: a readable's side copies each chunk GPU ->
 * slot, the reader gets the slot; a writer or reader on the GPU goes
 * through its own pinned slots. Checks the path the metadata declares and
 * every byte: a write's on the passive side, a read's in dst (and the
 * readable's unchanged). */
static void transfer(char kind, bool src_cuda, bool dst_cuda, uint32_t n, uint64_t size,
                     path_t path)
{
    static uint32_t write_seed = 11, read_seed = 70;
    bool passive_cuda = kind == 'W' ? dst_cuda : src_cuda;
    bool own_cuda = kind == 'W' ? src_cuda : dst_cuda;
    cmd_t cmd = {.kind = kind,
                 .cuda = passive_cuda,
                 .force = path == PATH_STAGED,
                 .n = n,
                 .size = size,
                 .seed = kind == 'W' ? ++write_seed : ++read_seed};
    Ferry__V1__RdmaMetadata *m;
    regions_t mine;
    ferry_op_t *op;
    uint8_t *md;
    uint32_t md_len;
    ferry_status_t st;
    report_t rep;

    atomic_store(&ferry__test_staging.force, path == PATH_STAGED);
    /* A write's source holds the pattern; a read's destination starts zeroed. */
    assert_int_equal(regions_alloc(&mine, own_cuda, n, size, kind == 'W' ? cmd.seed : 0), 0);
    assert_int_equal(pair_write(world.passive.cmd_fd, &cmd, sizeof(cmd)), 0);
    assert_int_equal(pair_recv_blob(world.passive.res_fd, &md, &md_len), 0);
    assert_true(md_len > 0);
    assert_int_equal(ferry__metadata_decode(md, md_len, &m), FERRY_OK);
    assert_int_equal(m->staging != NULL,
                     path == PATH_STAGED || (passive_cuda && !world.c->ucx_cuda));
    ferry__metadata_free(m);

    st = kind == 'W' ? ferry_write_begin(world.c, mine.descs, n, md, md_len, &op)
                     : ferry_read_begin(world.c, mine.descs, n, md, md_len, &op);
    if (st != FERRY_OK) {
        fail_msg("begin: %s: %s", ferry_status_name(st), ferry_last_error_message());
    }
    st = ferry_op_wait(op, WAIT_TIMEOUT_MS);
    if (st != FERRY_OK) {
        fail_msg("wait: %s: %s", ferry_status_name(st), ferry_last_error_message());
    }
    if (kind == 'R') {
        assert_true(regions_check(&mine, cmd.seed));
        assert_int_equal(ferry_op_status(op), FERRY_OP_STATUS_COMPLETE);
    }
    assert_int_equal(pair_read(world.passive.res_fd, &rep, sizeof(rep), PAIR_IO_TIMEOUT_MS), 0);
    assert_int_equal(rep.status, FERRY_OK);
    assert_int_equal(rep.op_status, FERRY_OP_STATUS_COMPLETE);
    assert_int_equal(rep.bytes_ok, 1);
    ferry_op_destroy(op);
    free(md);
    regions_free(&mine);
    atomic_store(&ferry__test_staging.force, false);
}

/* clang-format off */
static void test_read_h2d_1(void **s) { (void)s; transfer('R', false, true, 1, BIG, PATH_DEFAULT); }
static void test_read_h2d_16(void **s) { (void)s; transfer('R', false, true, 16, SMALL, PATH_DEFAULT); }
static void test_read_d2h_1(void **s) { (void)s; transfer('R', true, false, 1, BIG, PATH_DEFAULT); }
static void test_read_d2d_1(void **s) { (void)s; transfer('R', true, true, 1, BIG, PATH_DEFAULT); }
static void test_read_d2h_16(void **s) { (void)s; transfer('R', true, false, 16, SMALL, PATH_DEFAULT); }
static void test_read_d2d_16(void **s) { (void)s; transfer('R', true, true, 16, SMALL, PATH_DEFAULT); }
static void test_read_h2d_1_staged(void **s) { (void)s; transfer('R', false, true, 1, BIG, PATH_STAGED); }
static void test_read_d2h_1_staged(void **s) { (void)s; transfer('R', true, false, 1, BIG, PATH_STAGED); }
static void test_read_d2d_1_staged(void **s) { (void)s; transfer('R', true, true, 1, BIG, PATH_STAGED); }
static void test_read_d2d_16_staged(void **s) { (void)s; transfer('R', true, true, 16, SMALL, PATH_STAGED); }
static void test_h2d_1(void **s) { (void)s; transfer('W', false, true, 1, BIG, PATH_DEFAULT); }
static void test_d2h_1(void **s) { (void)s; transfer('W', true, false, 1, BIG, PATH_DEFAULT); }
static void test_d2d_1(void **s) { (void)s; transfer('W', true, true, 1, BIG, PATH_DEFAULT); }
static void test_h2d_16(void **s) { (void)s; transfer('W', false, true, 16, SMALL, PATH_DEFAULT); }
static void test_d2h_16(void **s) { (void)s; transfer('W', true, false, 16, SMALL, PATH_DEFAULT); }
static void test_d2d_16(void **s) { (void)s; transfer('W', true, true, 16, SMALL, PATH_DEFAULT); }
static void test_h2d_1_staged(void **s) { (void)s; transfer('W', false, true, 1, BIG, PATH_STAGED); }
static void test_d2h_1_staged(void **s) { (void)s; transfer('W', true, false, 1, BIG, PATH_STAGED); }
static void test_d2d_1_staged(void **s) { (void)s; transfer('W', true, true, 1, BIG, PATH_STAGED); }
static void test_h2d_16_staged(void **s) { (void)s; transfer('W', false, true, 16, SMALL, PATH_STAGED); }
static void test_d2h_16_staged(void **s) { (void)s; transfer('W', true, false, 16, SMALL, PATH_STAGED); }
static void test_d2d_16_staged(void **s) { (void)s; transfer('W', true, true, 16, SMALL, PATH_STAGED); }
/* clang-format on */

static void write_into_here(ferry_connector_t *c, uint32_t seed);

/* A function of the fake driver; NULL on the machine's. */
static void *fake_fn(const char *name)
{
    return fake_driver != NULL ? dlsym(dlopen(fake_driver, RTLD_NOW | RTLD_NOLOAD), name) : NULL;
}

/* First of the group: a connector that has moved only host memory has
 * retained no device's context (each costs that GPU memory; a host-only
 * worker on a GPU node took one on GPU 0); device memory of cuda:1 then
 * retains cuda:1's alone. */
static void test_no_context_until_cuda_memory(void **state)
{
    unsigned (*retains)(int);
    void *p;
    ferry_descriptor_t d;
    ferry_op_t *op;
    (void)state;

    if ((*(void **)&retains = fake_fn("fake_cuda_retains")) == NULL ||
        ferry__cuda_device_count() < 2) {
        skip(); /* counted by the fake driver (two devices) */
    }
    transfer('W', false, false, 1, SMALL, PATH_DEFAULT); /* both progress threads ran */
    assert_int_equal(retains(0), 0);
    assert_int_equal(retains(1), 0);
    assert_int_equal(ferry__cuda_mem_alloc(1, 4096, &p), FERRY_OK);
    d = (ferry_descriptor_t){p, 4096, {FERRY_DEVICE_CUDA, 1}};
    assert_int_equal(ferry_writable_create(world.c, &d, 1, &op), FERRY_OK);
    ferry_op_destroy(op);
    ferry__cuda_mem_free(1, p);
    assert_int_equal(retains(0), 0);
    assert_int_equal(retains(1), 1);
}

/* Freed pinned buffers kept for the next operation of their size hold at
 * most 64 MiB in all (a peer's metadata may ask for buffers of up to 256
 * MiB, and four used to be kept, whatever their size). Early in the group,
 * while the cache is empty; what it kept is taken back at the end. */
static void test_pinned_cache_bounded(void **state)
{
    size_t (*host_bytes)(void);
    const size_t size = (size_t)48 << 20;
    ferry__copy_engine_t *e;
    void *a, *b;
    size_t before;
    (void)state;

    if ((*(void **)&host_bytes = fake_fn("fake_cuda_host_alloc_bytes")) == NULL) {
        skip(); /* counted by the fake driver */
    }
    assert_int_equal(ferry__cuda_engine_create(0, &e), FERRY_OK);
    before = host_bytes();
    assert_int_equal(e->ops->alloc_pinned(e, size, &a), FERRY_OK);
    assert_int_equal(e->ops->alloc_pinned(e, size, &b), FERRY_OK);
    assert_int_equal(host_bytes() - before, 2 * size);
    e->ops->free_pinned(e, a, size, true);
    e->ops->free_pinned(e, b, size, true);
    assert_int_equal(host_bytes() - before, size); /* one kept: two are past 64 MiB */
    assert_int_equal(e->ops->alloc_pinned(e, size, &a), FERRY_OK); /* the kept one */
    assert_int_equal(host_bytes() - before, size);
    e->ops->free_pinned(e, a, size, false);
    assert_int_equal(host_bytes(), before);
    ferry__copy_engine_destroy(e);
}

/* libferry leaves the calling thread's current context as it found it
 * (none, or another device's: a PyTorch thread on cuda:1 handing over
 * cuda:0 memory must stay on cuda:1), through create, begin, wait, the
 * staged copies and destroy; and its staging stream is ordered after the
 * legacy default stream (not CU_STREAM_NON_BLOCKING), where work that
 * produces a tensor runs unless told otherwise. */
static void test_caller_context_kept(void **state)
{
    int (*current)(void);
    void (*set_current)(int);
    unsigned (*stream_flags)(void);
    (void)state;

    if ((*(void **)&current = fake_fn("fake_cuda_current")) == NULL) {
        skip(); /* the fake driver tells */
    }
    *(void **)&set_current = fake_fn("fake_cuda_set_current");
    *(void **)&stream_flags = fake_fn("fake_cuda_stream_flags");
    assert_true(set_current != NULL && stream_flags != NULL);
    set_current(-1);
    write_into_here(world.c, 41);
    assert_int_equal(current(), -1);
    set_current(1);
    write_into_here(world.c, 42);
    assert_int_equal(current(), 1);
    transfer('W', true, true, 1, BIG, PATH_STAGED);
    assert_int_equal(current(), 1);
    transfer('R', true, true, 1, BIG, PATH_STAGED);
    assert_int_equal(current(), 1);
    assert_int_equal(stream_flags() & 0x1 /* CU_STREAM_NON_BLOCKING */, 0);
    set_current(-1);
}

/* Host memory claimed as device memory: refused, naming the descriptor. */
static void test_host_claimed_as_cuda(void **state)
{
    uint8_t buf[4096];
    ferry_descriptor_t d = {buf, sizeof(buf), {FERRY_DEVICE_CUDA, 0}};
    ferry_op_t *op = NULL;
    (void)state;

    assert_int_equal(ferry_writable_create(world.c, &d, 1, &op), FERRY_ERR_INVALID_ARGUMENT);
    assert_null(op);
    assert_non_null(strstr(ferry_last_error_message(), "descriptor 0: cuda:0 claimed"));
    assert_non_null(strstr(ferry_last_error_message(), "not device memory"));
}

/* Device memory of cuda:0 claimed as cuda:1, as the second descriptor. */
static void test_wrong_device(void **state)
{
    void *p;
    ferry_descriptor_t d[2];
    ferry_op_t *op = NULL;
    (void)state;

    assert_int_equal(ferry__cuda_mem_alloc(0, 8192, &p), FERRY_OK);
    d[0] = (ferry_descriptor_t){p, 4096, {FERRY_DEVICE_CUDA, 1}};
    d[1] = (ferry_descriptor_t){(uint8_t *)p + 4096, 4096, {FERRY_DEVICE_CUDA, 1}};
    assert_int_equal(ferry_writable_create(world.c, d, 2, &op), FERRY_ERR_INVALID_ARGUMENT);
    assert_null(op);
    assert_non_null(strstr(ferry_last_error_message(), "descriptor 0: cuda:1 claimed"));
    assert_non_null(strstr(ferry_last_error_message(), "memory of cuda:0"));
    ferry__cuda_mem_free(0, p);
}

/* One list, two devices: refused (the copy engine, the slots and the
 * progress thread's context are one device's), naming the descriptor. */
static void test_mixed_devices(void **state)
{
    void *p0, *p1;
    ferry_descriptor_t d[2];
    ferry_op_t *op = NULL;
    (void)state;

    if (ferry__cuda_device_count() < 2) {
        skip(); /* one device: nothing to mix */
    }
    assert_int_equal(ferry__cuda_mem_alloc(0, 4096, &p0), FERRY_OK);
    assert_int_equal(ferry__cuda_mem_alloc(1, 4096, &p1), FERRY_OK);
    d[0] = (ferry_descriptor_t){p0, 4096, {FERRY_DEVICE_CUDA, 0}};
    d[1] = (ferry_descriptor_t){p1, 4096, {FERRY_DEVICE_CUDA, 1}};
    assert_int_equal(ferry_writable_create(world.c, d, 2, &op), FERRY_ERR_INVALID_ARGUMENT);
    assert_null(op);
    assert_non_null(strstr(ferry_last_error_message(), "descriptor 1: cuda:1 in a list of cuda:0"));
    ferry__cuda_mem_free(0, p0);
    ferry__cuda_mem_free(1, p1);
}

/* Device memory described as cpu: refused, naming the descriptor and the
 * device, where UCX's host transports would have touched it with the CPU
 * (SIGSEGV on a GPU); for an operation and for a region alike. */
static void test_device_memory_claimed_as_cpu(void **state)
{
    void *p;
    ferry_descriptor_t d;
    ferry_op_t *op = NULL;
    ferry_region_t *region = NULL;
    (void)state;

    assert_int_equal(ferry__cuda_mem_alloc(0, 8192, &p), FERRY_OK);
    d = (ferry_descriptor_t){p, 8192, FERRY_DEVICE_HOST_INIT};
    assert_int_equal(ferry_writable_create(world.c, &d, 1, &op), FERRY_ERR_INVALID_ARGUMENT);
    assert_null(op);
    assert_non_null(strstr(ferry_last_error_message(), "descriptor 0: cpu claimed"));
    assert_non_null(strstr(ferry_last_error_message(), "device memory of cuda:0"));
    assert_int_equal(ferry_mem_register(world.c, p, 8192, d.device, &region),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_null(region);
    assert_non_null(strstr(ferry_last_error_message(), "cpu claimed"));
    ferry__cuda_mem_free(0, p);
}

/* A region that runs past its allocation, on the active side too. */
static void test_past_allocation(void **state)
{
    void *p;
    static uint8_t buf[8192];
    ferry_descriptor_t d, h = {buf, sizeof(buf), FERRY_DEVICE_HOST_INIT};
    ferry_op_t *op = NULL, *passive;
    const uint8_t *md;
    size_t md_len;
    (void)state;

    assert_int_equal(ferry__cuda_mem_alloc(0, 8192, &p), FERRY_OK);
    d = (ferry_descriptor_t){(uint8_t *)p + 4096, 8192, {FERRY_DEVICE_CUDA, 0}};
    assert_int_equal(ferry_writable_create(world.c, &d, 1, &op), FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(ferry_last_error_message(), "run past the end of its allocation"));
    assert_int_equal(ferry_writable_create(world.c, &h, 1, &passive), FERRY_OK);
    assert_int_equal(ferry_op_metadata(passive, &md, &md_len), FERRY_OK);
    assert_int_equal(ferry_write_begin(world.c, &d, 1, md, md_len, &op),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(ferry_last_error_message(), "descriptor 0"));
    assert_null(op);
    ferry_op_destroy(passive);
    ferry__cuda_mem_free(0, p);
}

/* A descriptor that stays inside its allocation's range but reaches past
 * what is mapped into it (a virtual-memory reservation: PyTorch's
 * expandable segments): refused, for a passive operation and the active
 * side alike, where a copy into the unmapped part would fault on the
 * device (a CUDA region takes the same check, on the direct path only);
 * the mapped part is accepted. Fake driver only (it models the
 * reservation: fake_cuda_map_only). */
static void test_past_mapping(void **state)
{
    int (*map_only)(void *, size_t) = NULL;
    static uint8_t buf[8192];
    ferry_descriptor_t d, h = {buf, sizeof(buf), FERRY_DEVICE_HOST_INIT};
    ferry_op_t *op = NULL, *passive;
    const uint8_t *md;
    size_t md_len;
    void *p;
    (void)state;

    *(void **)&map_only = fake_fn("fake_cuda_map_only");
    if (map_only == NULL) {
        skip(); /* needs a reservation larger than its mapping */
    }
    assert_int_equal(ferry__cuda_mem_alloc(0, 8192, &p), FERRY_OK);
    assert_int_equal(map_only(p, 4096), 0);
    d = (ferry_descriptor_t){p, 8192, {FERRY_DEVICE_CUDA, 0}};
    assert_int_equal(ferry_writable_create(world.c, &d, 1, &op), FERRY_ERR_INVALID_ARGUMENT);
    assert_null(op);
    assert_non_null(strstr(ferry_last_error_message(), "descriptor 0: 8192 bytes"));
    assert_non_null(strstr(ferry_last_error_message(), "reserved but not mapped"));
    assert_int_equal(ferry_writable_create(world.c, &h, 1, &passive), FERRY_OK);
    assert_int_equal(ferry_op_metadata(passive, &md, &md_len), FERRY_OK);
    assert_int_equal(ferry_write_begin(world.c, &d, 1, md, md_len, &op),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(ferry_last_error_message(), "not mapped"));
    assert_null(op);
    ferry_op_destroy(passive);
    /* What is mapped is accepted. */
    d.size = 4096;
    assert_int_equal(ferry_writable_create(world.c, &d, 1, &op), FERRY_OK);
    ferry_op_destroy(op);
    assert_int_equal(map_only(p, 8192), 0);
    ferry__cuda_mem_free(0, p);
}

/* ferry_mem_alloc on cuda:0. Where UCX has CUDA transports: zeroed device
 * memory as one region, which a write from host memory fills (every byte
 * checked after copying it back) with no mapping on the region's side,
 * BUSY to deregister while an operation uses it, then deregistered (and
 * freed). Without them (the staged path registers no CUDA memory, as with
 * the fake driver): refused, UNIMPLEMENTED, saying why. */
static void test_mem_alloc(void **state)
{
    enum { SIZE = (1u << 20) + 7 };
    static uint8_t src[SIZE], back[SIZE];
    ferry_device_t cuda0 = {FERRY_DEVICE_CUDA, 0};
    ferry_region_t *region = NULL;
    ferry_op_t *passive = NULL, *active = NULL;
    ferry_connector_stats_t before, after;
    ferry_descriptor_t dst, from = {src, SIZE, FERRY_DEVICE_HOST_INIT};
    const uint8_t *md;
    size_t md_len, bad = SIZE;
    void *p = NULL;
    (void)state;

    if (!world.c->ucx_cuda) {
        assert_int_equal(ferry_mem_alloc(world.c, SIZE, cuda0, &region, &p),
                         FERRY_ERR_UNIMPLEMENTED);
        assert_non_null(strstr(ferry_last_error_message(), "CUDA regions need the direct path"));
        assert_null(region);
        return;
    }
    assert_int_equal(ferry_mem_alloc(world.c, SIZE, cuda0, &region, &p), FERRY_OK);
    memset(back, 0xa5, SIZE);
    assert_int_equal(ferry__cuda_memcpy(0, back, p, SIZE), FERRY_OK);
    for (size_t i = 0; i < SIZE && bad == SIZE; i++) {
        bad = back[i] != 0 ? i : bad;
    }
    assert_int_equal(bad, SIZE); /* zeroed */
    for (size_t i = 0; i < SIZE; i++) {
        src[i] = (uint8_t)(i * 7 + 3);
    }
    dst = (ferry_descriptor_t){p, SIZE, cuda0};
    ferry_connector_get_stats(world.c, &before);
    assert_int_equal(ferry_writable_create(world.c, &dst, 1, &passive), FERRY_OK);
    /* Held while the passive operation is not final (then let go). */
    assert_int_equal(ferry_mem_deregister(region), FERRY_ERR_BUSY);
    assert_int_equal(ferry_op_metadata(passive, &md, &md_len), FERRY_OK);
    assert_int_equal(ferry_write_begin(world.c, &from, 1, md, md_len, &active), FERRY_OK);
    assert_int_equal(ferry_op_wait(active, 30000), FERRY_OK);
    assert_int_equal(ferry_op_wait(passive, 30000), FERRY_OK);
    ferry_connector_get_stats(world.c, &after);
    /* Inside the region: nothing mapped (a writer's source never is). */
    assert_int_equal(after.mem_maps - before.mem_maps, 0);
    assert_int_equal(ferry__cuda_memcpy(0, back, p, SIZE), FERRY_OK);
    assert_memory_equal(back, src, SIZE);
    ferry_op_destroy(active);
    ferry_op_destroy(passive);
    assert_int_equal(ferry_mem_deregister(region), FERRY_OK);
}

/* A staged write of BIG host bytes (seed) from world.c into a writable on
 * GPU memory that connector c (this process) creates; every byte checked. */
static void write_into_here(ferry_connector_t *c, uint32_t seed)
{
    ferry_op_t *passive, *active;
    const uint8_t *md;
    size_t md_len;
    regions_t src, dst;

    assert_int_equal(regions_alloc(&src, false, 1, BIG, seed), 0);
    assert_int_equal(regions_alloc(&dst, true, 1, BIG, 0), 0);
    assert_int_equal(ferry_writable_create(c, dst.descs, 1, &passive), FERRY_OK);
    assert_int_equal(ferry_op_metadata(passive, &md, &md_len), FERRY_OK);
    assert_int_equal(ferry_write_begin(world.c, src.descs, 1, md, md_len, &active), FERRY_OK);
    assert_int_equal(ferry_op_wait(active, WAIT_TIMEOUT_MS), FERRY_OK);
    assert_int_equal(ferry_op_wait(passive, WAIT_TIMEOUT_MS), FERRY_OK);
    assert_true(regions_check(&dst, seed));
    ferry_op_destroy(active);
    ferry_op_destroy(passive);
    regions_free(&src);
    regions_free(&dst);
}

/* A staged write of BIG GPU bytes (seed) from connector c (this process)
 * into a writable on the partner's GPU; the partner checks every byte.
 * Returns whether c copied into the partner's slots mapped here. */
static bool write_into_partner(ferry_connector_t *c, uint32_t seed)
{
    cmd_t cmd = {.kind = 'W', .cuda = 1, .force = 1, .n = 1, .size = BIG, .seed = seed};
    regions_t src;
    ferry_op_t *op;
    uint8_t *md;
    uint32_t md_len;
    report_t rep;
    bool mapped;

    assert_int_equal(regions_alloc(&src, true, 1, BIG, seed), 0);
    assert_int_equal(pair_write(world.passive.cmd_fd, &cmd, sizeof(cmd)), 0);
    assert_int_equal(pair_recv_blob(world.passive.res_fd, &md, &md_len), 0);
    assert_int_equal(ferry_write_begin(c, src.descs, 1, md, md_len, &op), FERRY_OK);
    ferry__lock(c);
    mapped = ferry__staged_mapped(op);
    ferry__unlock(c);
    assert_int_equal(ferry_op_wait(op, WAIT_TIMEOUT_MS), FERRY_OK);
    assert_int_equal(pair_read(world.passive.res_fd, &rep, sizeof(rep), PAIR_IO_TIMEOUT_MS), 0);
    assert_int_equal(rep.status, FERRY_OK);
    assert_int_equal(rep.bytes_ok, 1);
    ferry_op_destroy(op);
    free(md);
    regions_free(&src);
    return mapped;
}

/* A staged writable's slots are pinned once: three writes into GPU
 * memory on one connector of this process make one ucp_mem_map and (on
 * the fake driver, which counts them) one cuMemHostRegister, which stays
 * while the slots wait in the connector's pool and is undone when the
 * connector is destroyed. Every byte arrives each time. */
static void test_staged_slots_pinned_once(void **state)
{
    unsigned (*registered)(void) = NULL;
    ferry_connector_stats_t before, after;
    ferry_connector_t *c;
    unsigned pins = 0;
    (void)state;

    if (fake_driver != NULL) {
        *(void **)&registered =
            dlsym(dlopen(fake_driver, RTLD_NOW | RTLD_NOLOAD), "fake_cuda_registered");
        assert_non_null(registered);
        pins = registered();
    }
    atomic_store(&ferry__test_staging.force, true);
    assert_int_equal(connector_create(&c), FERRY_OK);
    ferry_connector_get_stats(c, &before);
    for (uint32_t seed = 81; seed < 84; seed++) {
        write_into_here(c, seed);
        if (registered != NULL) {
            assert_int_equal(registered(), pins + 1);
        }
    }
    ferry_connector_get_stats(c, &after);
    assert_int_equal(after.mem_maps - before.mem_maps, 1);
    assert_int_equal(ferry_connector_destroy(c), FERRY_OK);
    if (registered != NULL) {
        assert_int_equal(registered(), pins);
    }
    atomic_store(&ferry__test_staging.force, false);
}

/* A GPU writer in another process than the staged writable copies into
 * its slots, mapped into it over shared memory, and pins them there once
 * (on the fake driver, which counts pins): two writes on a connector of
 * its own leave one pin more, undone when that connector goes. Every byte
 * arrives. */
static void test_staged_mapped_slots_pinned_by_writer(void **state)
{
    unsigned (*registered)(void) = NULL;
    ferry_connector_t *c;
    unsigned pins = 0;
    (void)state;

    if (fake_driver == NULL) {
        skip(); /* only the fake driver counts pins */
    }
    *(void **)&registered =
        dlsym(dlopen(fake_driver, RTLD_NOW | RTLD_NOLOAD), "fake_cuda_registered");
    assert_non_null(registered);
    pins = registered();
    atomic_store(&ferry__test_staging.force, true);
    assert_int_equal(connector_create(&c), FERRY_OK);
    for (uint32_t seed = 91; seed < 93; seed++) {
        assert_true(write_into_partner(c, seed));
        assert_int_equal(registered(), pins + 1);
    }
    assert_int_equal(ferry_connector_destroy(c), FERRY_OK);
    assert_int_equal(registered(), pins);
    atomic_store(&ferry__test_staging.force, false);
}

/* Where the driver will not pin UCX's memory, both sides fall back and
 * every byte still arrives: a passive side here takes the engine's pinned
 * memory for its slots (pooled: nothing mapped after the first write), and a GPU
 * writer here copies through its own slots and puts, having tried to pin
 * the mapped slots once, not per operation. On the fake driver, told to
 * refuse pins. */
static void test_staged_pin_refused_falls_back(void **state)
{
    void (*refuse)(int);
    unsigned (*calls)(void), (*registered)(void);
    ferry_connector_stats_t before, after;
    ferry_connector_t *c;
    unsigned pins, tried;
    void *h;
    (void)state;

    if (fake_driver == NULL) {
        skip(); /* a real driver pins on request */
    }
    h = dlopen(fake_driver, RTLD_NOW | RTLD_NOLOAD);
    *(void **)&refuse = dlsym(h, "fake_cuda_refuse_pins");
    *(void **)&calls = dlsym(h, "fake_cuda_pin_calls");
    *(void **)&registered = dlsym(h, "fake_cuda_registered");
    assert_true(refuse != NULL && calls != NULL && registered != NULL);
    pins = registered();
    refuse(1);
    atomic_store(&ferry__test_staging.force, true);
    /* The passive side here. */
    assert_int_equal(connector_create(&c), FERRY_OK);
    ferry_connector_get_stats(c, &before);
    for (uint32_t seed = 101; seed < 104; seed++) {
        write_into_here(c, seed);
    }
    ferry_connector_get_stats(c, &after);
    /* UCX's memory, given back when the pin failed, then the engine's,
     * pooled: nothing more for the next two writes. */
    assert_int_equal(after.mem_maps - before.mem_maps, 2);
    assert_int_equal(registered(), pins);
    assert_int_equal(ferry_connector_destroy(c), FERRY_OK);
    /* The writer here, the passive side in the partner process. */
    assert_int_equal(connector_create(&c), FERRY_OK);
    tried = calls();
    for (uint32_t seed = 111; seed < 113; seed++) {
        assert_false(write_into_partner(c, seed));
    }
    assert_int_equal(calls() - tried, 1);
    assert_int_equal(ferry_connector_destroy(c), FERRY_OK);
    refuse(0);
    atomic_store(&ferry__test_staging.force, false);
}

/* The fake driver fails the active side's second CUDA copy, a write
 * ('W') from its GPU memory or a read ('R') of a staged readable on the GPU
 * into its GPU memory: the active side ends ERRORED with the driver's
 * error, and so does the passive side. */
static void cuda_copy_fails_midway(char kind, const char *fail_fn, const char *error)
{
    void (*fail_copy)(unsigned);
    cmd_t cmd = {.kind = kind,
                 .cuda = kind == 'R',
                 .force = 1,
                 .n = 1,
                 .size = BIG,
                 .seed = kind == 'R' ? 4 : 3};
    regions_t mine;
    ferry_op_t *op;
    const char *msg;
    uint8_t *md;
    uint32_t md_len;
    report_t rep;

    if (fake_driver == NULL) {
        skip(); /* a real driver's copies do not fail on request */
    }
    *(void **)&fail_copy = dlsym(dlopen(fake_driver, RTLD_NOW | RTLD_NOLOAD), fail_fn);
    assert_non_null(fail_copy);
    atomic_store(&ferry__test_staging.force, true);
    assert_int_equal(regions_alloc(&mine, true, 1, BIG, kind == 'W' ? cmd.seed : 0), 0);
    assert_int_equal(pair_write(world.passive.cmd_fd, &cmd, sizeof(cmd)), 0);
    assert_int_equal(pair_recv_blob(world.passive.res_fd, &md, &md_len), 0);
    fail_copy(2);
    assert_int_equal(kind == 'W' ? ferry_write_begin(world.c, mine.descs, 1, md, md_len, &op)
                                 : ferry_read_begin(world.c, mine.descs, 1, md, md_len, &op),
                     FERRY_OK);
    assert_int_equal(ferry_op_wait(op, WAIT_TIMEOUT_MS), FERRY_ERR_IO);
    ferry_op_error(op, &msg);
    assert_non_null(strstr(msg, error));
    assert_int_equal(pair_read(world.passive.res_fd, &rep, sizeof(rep), PAIR_IO_TIMEOUT_MS), 0);
    assert_int_equal(rep.status, FERRY_ERR_IO);
    assert_int_equal(rep.op_status, FERRY_OP_STATUS_ERRORED);
    fail_copy(0);
    ferry_op_destroy(op);
    free(md);
    regions_free(&mine);
    atomic_store(&ferry__test_staging.force, false);
}

/* The writer's copy GPU -> slot fails. */
static void test_cuda_copy_fails_midway(void **state)
{
    (void)state;
    cuda_copy_fails_midway('W', "fake_cuda_fail_copy", "CUDA_ERROR_LAUNCH_FAILED");
}

/* The reader's copy slot -> its GPU memory fails. */
static void test_cuda_copy_fails_midway_read(void **state)
{
    (void)state;
    cuda_copy_fails_midway('R', "fake_cuda_fail_copy", "CUDA_ERROR_LAUNCH_FAILED");
}

/* A copy queued without error fails on the device later, as its event
 * says (an illegal address in a kernel before it poisons the context):
 * the operation ends ERRORED on both sides, naming the error. */
static void test_cuda_copy_fails_on_the_device(void **state)
{
    (void)state;
    cuda_copy_fails_midway('W', "fake_cuda_fail_event", "CUDA_ERROR_ILLEGAL_ADDRESS");
}

static void test_cuda_copy_fails_on_the_device_read(void **state)
{
    (void)state;
    cuda_copy_fails_midway('R', "fake_cuda_fail_event", "CUDA_ERROR_ILLEGAL_ADDRESS");
}

/* A GPU writer killed after its data moved and before its notice: the
 * passive side's GPU memory holds every byte, and its wait times out with
 * the operation still claimed, or it has already ended PEER_FAILED where
 * peer error handling (the default) saw the death, and destroy frees it
 * either way. */
static void writer_killed(int32_t force)
{
    uint64_t size = BIG;
    regions_t dst;
    pair_partner_t writer;
    ferry_op_t *op;
    const uint8_t *md;
    size_t md_len;
    char ready;
    ferry_status_t st;

    atomic_store(&ferry__test_staging.force, force != 0);
    assert_int_equal(regions_alloc(&dst, true, 1, size, 0), 0);
    assert_int_equal(ferry_writable_create(world.c, dst.descs, 1, &op), FERRY_OK);
    assert_int_equal(ferry_op_metadata(op, &md, &md_len), FERRY_OK);
    writer = pair_spawn(self_exe, "--writer");
    assert_int_equal(pair_write(writer.cmd_fd, &size, sizeof(size)), 0);
    assert_int_equal(pair_write(writer.cmd_fd, &force, sizeof(force)), 0);
    assert_int_equal(pair_send_blob(writer.cmd_fd, md, (uint32_t)md_len), 0);
    assert_int_equal(pair_read(writer.res_fd, &ready, 1, PAIR_IO_TIMEOUT_MS), 0);
    assert_true(regions_check(&dst, 9));
    kill(writer.pid, SIGKILL);
    assert_true(WIFSIGNALED(pair_reap(writer.pid)));
    pair_close(&writer);
    st = ferry_op_wait(op, 300);
    assert_true(st == FERRY_ERR_TIMED_OUT || st == FERRY_ERR_PEER_FAILED);
    assert_int_equal(ferry_op_status(op), st == FERRY_ERR_TIMED_OUT ? FERRY_OP_STATUS_IN_PROGRESS
                                                                    : FERRY_OP_STATUS_ERRORED);
    ferry_op_destroy(op);
    regions_free(&dst);
    atomic_store(&ferry__test_staging.force, false);
}

static void test_writer_killed_midway(void **state)
{
    (void)state;
    writer_killed(0);
}

static void test_writer_killed_midway_staged(void **state)
{
    (void)state;
    writer_killed(1);
}

/* ---- no driver ------------------------------------------------------------- */

static char logged[4096];

static void log_cb(ferry_loglevel_t level, const char *message, void *arg)
{
    (void)level;
    (void)arg;
    strncat(logged, message, sizeof(logged) - strlen(logged) - 2);
    strcat(logged, "\n");
}

static void test_no_driver(void **state)
{
    ferry_connector_params_t params = {.field_mask = FERRY_CONNECTOR_PARAM_FIELD_LOG_LEVEL |
                                                     FERRY_CONNECTOR_PARAM_FIELD_LOG_CB,
                                       .log_level = FERRY_LOGLEVEL_INFO,
                                       .log_cb = log_cb};
    ferry_connector_t *c;
    uint8_t buf[64], hbuf[64];
    ferry_descriptor_t d = {buf, sizeof(buf), {FERRY_DEVICE_CUDA, 0}};
    ferry_descriptor_t h = {hbuf, sizeof(hbuf), FERRY_DEVICE_HOST_INIT};
    ferry_op_t *op = NULL, *passive;
    const uint8_t *md;
    const char *why;
    size_t md_len;
    (void)state;

    assert_int_equal(ferry_connector_create(&params, &c), FERRY_OK);
    assert_false(ferry_connector_is_cuda_available(c));
    /* "no CUDA driver: dlopen /nonexistent/libcuda.so.1: ...", or in a
     * build without CUDA support, that. */
    why = ferry__cuda_why();
    assert_true(strstr(why, "dlopen /nonexistent/") != NULL ||
                strstr(why, "without CUDA support") != NULL);
    assert_non_null(strstr(logged, "CUDA unavailable: "));
    assert_non_null(strstr(logged, why));
    assert_int_equal(ferry_writable_create(c, &d, 1, &op), FERRY_ERR_UNIMPLEMENTED);
    assert_non_null(strstr(ferry_last_error_message(), "CUDA descriptors refused: "));
    assert_non_null(strstr(ferry_last_error_message(), why));
    assert_int_equal(ferry_writable_create(c, &h, 1, &passive), FERRY_OK);
    assert_int_equal(ferry_op_metadata(passive, &md, &md_len), FERRY_OK);
    assert_int_equal(ferry_write_begin(c, &d, 1, md, md_len, &op), FERRY_ERR_UNIMPLEMENTED);
    assert_null(op);
    ferry_op_destroy(passive);
    assert_int_equal(ferry_connector_destroy(c), FERRY_OK);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_context_until_cuda_memory),
        cmocka_unit_test(test_pinned_cache_bounded),
        cmocka_unit_test(test_host_claimed_as_cuda),
        cmocka_unit_test(test_wrong_device),
        cmocka_unit_test(test_mixed_devices),
        cmocka_unit_test(test_device_memory_claimed_as_cpu),
        cmocka_unit_test(test_caller_context_kept),
        cmocka_unit_test(test_past_allocation),
        cmocka_unit_test(test_past_mapping),
        cmocka_unit_test(test_mem_alloc),
        cmocka_unit_test(test_h2d_1),
        cmocka_unit_test(test_d2h_1),
        cmocka_unit_test(test_d2d_1),
        cmocka_unit_test(test_h2d_16),
        cmocka_unit_test(test_d2h_16),
        cmocka_unit_test(test_d2d_16),
        cmocka_unit_test(test_h2d_1_staged),
        cmocka_unit_test(test_d2h_1_staged),
        cmocka_unit_test(test_d2d_1_staged),
        cmocka_unit_test(test_h2d_16_staged),
        cmocka_unit_test(test_d2h_16_staged),
        cmocka_unit_test(test_d2d_16_staged),
        cmocka_unit_test(test_read_h2d_1),
        cmocka_unit_test(test_read_h2d_16),
        cmocka_unit_test(test_read_d2h_1),
        cmocka_unit_test(test_read_d2d_1),
        cmocka_unit_test(test_read_d2h_16),
        cmocka_unit_test(test_read_d2d_16),
        cmocka_unit_test(test_read_h2d_1_staged),
        cmocka_unit_test(test_read_d2h_1_staged),
        cmocka_unit_test(test_read_d2d_1_staged),
        cmocka_unit_test(test_read_d2d_16_staged),
        cmocka_unit_test(test_staged_slots_pinned_once),
        cmocka_unit_test(test_staged_mapped_slots_pinned_by_writer),
        cmocka_unit_test(test_staged_pin_refused_falls_back),
        cmocka_unit_test(test_cuda_copy_fails_midway_read),
        cmocka_unit_test(test_cuda_copy_fails_midway),
        cmocka_unit_test(test_cuda_copy_fails_on_the_device),
        cmocka_unit_test(test_cuda_copy_fails_on_the_device_read),
        cmocka_unit_test(test_writer_killed_midway),
        cmocka_unit_test(test_writer_killed_midway_staged),
    };
    const struct CMUnitTest no_driver[] = {
        cmocka_unit_test(test_no_driver),
    };
    const char *fake = getenv("FERRY_TEST_FAKE_CUDA");
    static char path[4096];

    signal(SIGPIPE, SIG_IGN);
    if (argc == 2 && strcmp(argv[1], "--no-driver") == 0) {
        ferry__cuda_test_driver = "/nonexistent/libcuda.so.1";
        return cmocka_run_group_tests(no_driver, NULL, NULL);
    }
    if (fake != NULL && fake[0] != '\0') {
        const char *build = getenv("FERRY_BUILD_DIR");
        snprintf(path, sizeof(path), "%s%s%s", fake[0] == '/' || build == NULL ? "" : build,
                 fake[0] == '/' || build == NULL ? "" : "/", fake);
        ferry__cuda_test_driver = fake_driver = path;
    }
    if (argc == 4 && strcmp(argv[1], "--passive") == 0) {
        return passive_main(atoi(argv[2]), atoi(argv[3]));
    }
    if (argc == 4 && strcmp(argv[1], "--writer") == 0) {
        if (ferry__cuda_load() != FERRY_OK) {
            return 2;
        }
        return writer_main(atoi(argv[2]), atoi(argv[3]));
    }
    if (ferry__cuda_load() != FERRY_OK) {
        printf("SKIP: no usable CUDA GPU here (%s); test_worker_cuda needs one\n",
               ferry__cuda_why());
        return SKIP_EXIT;
    }
    printf("test_worker_cuda: %d device(s) through %s\n", ferry__cuda_device_count(),
           fake_driver != NULL ? fake_driver : "libcuda.so.1");
    self_exe = argv[0];
    /* Part of the group by name ('*' and '?' match), for the GPU check
     * (run-gpu-checks.sh runs the staged cases apart from the direct ones,
     * so that a crash of one path cannot hide the other's results). */
    if (getenv("FERRY_TEST_ONLY") != NULL) {
        cmocka_set_test_filter(getenv("FERRY_TEST_ONLY"));
    }
    if (getenv("FERRY_TEST_SKIP") != NULL) {
        cmocka_set_skip_filter(getenv("FERRY_TEST_SKIP"));
    }
    return cmocka_run_group_tests(tests, group_setup, group_teardown) + passive_failures;
}
