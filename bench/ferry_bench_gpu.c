/*
 * ferry_bench_gpu.c: Ferry's GPU data path beside the copies it is measured
 * against, in one run on one GPU (issue #12).
 *
 *   ferry_bench_gpu [--device N] [--min-mib M] [--max-mib M] [--iters K]
 *                   [--staged-only] [--staged-puts] [--reads]
 *
 * For each size (powers of 4 from --min-mib, default 1, to --max-mib,
 * default 1024):
 *   - default: a Ferry write GPU -> GPU between two processes on device N,
 *     on the path the connector picks (direct where UCX has CUDA
 *     transports and FERRY_CUDA_DIRECT=1, cuda_ipc on one node; else
 *     staged), beside a
 *     device-to-device copy of the same size (cuMemcpyAsync on one stream);
 *     the ratio is Ferry / d2d (target: >= 0.9 from 64 MiB);
 *   - staged: the same write forced onto the staged path (GPU -> pinned
 *     host slots -> UCX -> pinned slots -> GPU, chunks overlapped), beside
 *     the slower of host->device and device->host copies of the same size
 *     (pinned host memory); the ratio is Ferry / that (target: >= 0.8).
 *     The writer copies straight into the passive side's slots where they
 *     are mapped into it (one node, shared memory); --staged-puts makes it
 *     use its own slots and UCX puts instead, as between nodes.
 *   - with --reads, also the staged read: a reader on the GPU reads a
 *     readable on the other process's GPU memory (row "stg-read"), beside
 *     the same copies.
 *
 * A write is timed from ferry_write_begin to ferry_op_wait returning
 * COMPLETE on the writer (registration of the passive side's memory is
 * outside, as in ucx_perftest); a copy from queueing K copies to the
 * stream's end. GB/s = 10^9 bytes/s, each byte counted once. Output: plain
 * text, one line per (path, size), for the GPU check's report.
 *
 * Every size's last transfer is checked byte by byte, outside the timed
 * window: the passive side zeroes its memory before each writable and,
 * after the last, finds the writer's pattern in all of it; a reader zeroes
 * its memory before its last read and finds the readable's pattern. A
 * transfer that reports success early or moves the wrong bytes fails the
 * run.
 *
 * Processes: the passive side is forked before any CUDA or UCX state
 * exists (neither survives fork) and serves one writable per iteration.
 * Exit status 2 where there is no usable GPU (the reason is printed), 1 on
 * a failed transfer or a byte that differs. FERRY_TEST_FAKE_CUDA=/path/libferry_fakecuda.so runs
 * it on the tests' fake driver (to check the program, not to measure).
 */
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "worker/copy_engine.h"
#include "worker/cuda.h"
#include "worker/ferry_int.h"

#define WAIT_MS 60000
#define PATTERN 7 /* every source's bytes */

typedef struct {
    uint64_t size; /* 0: quit */
    int32_t force; /* staged path forced */
    int32_t iters; /* warm-up included */
    int32_t read;  /* a readable (else a writable) */
} cmd_t;

static uint32_t device;
static bool staged_only; /* --staged-only: the default path is not measured */
static bool staged_puts; /* --staged-puts: never into the passive side's slots */
static bool reads;       /* --reads: staged reads measured too */
static bool mapped;      /* the last staged transfer went into mapped slots */

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int full_io(int fd, void *buf, size_t len, bool out)
{
    for (size_t done = 0; done < len;) {
        ssize_t n = out ? write(fd, (char *)buf + done, len - done)
                        : read(fd, (char *)buf + done, len - done);
        if (n <= 0) {
            return -1;
        }
        done += (size_t)n;
    }
    return 0;
}

/* Whether all size bytes of device memory mem hold PATTERN (host: a
 * buffer of at least size bytes); says which differs when not. */
static bool bytes_right(const char *who, const void *mem, uint64_t size, uint8_t *host)
{
    if (ferry__cuda_memcpy(device, host, mem, size) != FERRY_OK) {
        fprintf(stderr, "%s: copying back: %s\n", who, ferry_last_error_message());
        return false;
    }
    for (uint64_t i = 0; i < size; i++) {
        if (host[i] != PATTERN) {
            fprintf(stderr, "%s: %" PRIu64 " bytes moved, byte %" PRIu64 " is %u, not %u\n", who,
                    size, i, host[i], PATTERN);
            return false;
        }
    }
    return true;
}

/* ---- the passive process ------------------------------------------------ */

static int passive_main(int cmd_fd, int res_fd, uint64_t max)
{
    ferry_connector_t *c;
    uint8_t *host = malloc(max);
    void *buf;
    cmd_t cmd;

    if (host == NULL || ferry__cuda_load() != FERRY_OK ||
        ferry_connector_create(NULL, &c) != FERRY_OK ||
        ferry__cuda_mem_alloc(device, max, &buf) != FERRY_OK) {
        fprintf(stderr, "passive: %s\n", host == NULL ? "no memory" : ferry_last_error_message());
        return 2;
    }
    while (full_io(cmd_fd, &cmd, sizeof(cmd), false) == 0 && cmd.size != 0) {
        ferry_descriptor_t d = {buf, cmd.size, {FERRY_DEVICE_CUDA, device}};
        atomic_store(&ferry__test_staging.force, cmd.force != 0);
        if (cmd.read) { /* what the reader must find */
            memset(host, PATTERN, cmd.size);
            ferry__cuda_memcpy(device, buf, host, cmd.size);
        }
        for (int32_t i = 0; i < cmd.iters; i++) {
            ferry_op_t *op;
            const uint8_t *md;
            size_t md_len;
            uint32_t len;
            int32_t status = FERRY_OK;
            if (!cmd.read) { /* so that bytes not written show */
                status = ferry__cuda_mem_zero(device, buf, cmd.size);
            }
            if (status == FERRY_OK) {
                status = cmd.read ? ferry_readable_create(c, &d, 1, &op)
                                  : ferry_writable_create(c, &d, 1, &op);
            }
            if (status != FERRY_OK) {
                fprintf(stderr, "passive: %s\n", ferry_last_error_message());
                return 1;
            }
            ferry_op_metadata(op, &md, &md_len);
            len = (uint32_t)md_len;
            full_io(res_fd, &len, sizeof(len), true);
            full_io(res_fd, (void *)md, len, true);
            status = ferry_op_wait(op, WAIT_MS);
            if (status == FERRY_OK && !cmd.read && i == cmd.iters - 1 &&
                !bytes_right("passive", buf, cmd.size, host)) {
                status = FERRY_ERR_INTERNAL; /* the writer stops the run */
            }
            full_io(res_fd, &status, sizeof(status), true);
            ferry_op_destroy(op);
        }
    }
    free(host);
    ferry__cuda_mem_free(device, buf);
    return ferry_connector_destroy(c) == FERRY_OK ? 0 : 1;
}

/* ---- references ------------------------------------------------------------- */

/* GB/s of iters copies of size bytes on one stream. */
static double copy_gbps(ferry__copy_engine_t *e, void *dst, const void *src, uint64_t size,
                        int iters)
{
    uint64_t ticket = 0;
    double t0;

    e->ops->copy_async(e, dst, src, size, &ticket); /* warm-up */
    e->ops->sync(e);
    t0 = now_s();
    for (int i = 0; i < iters; i++) {
        if (e->ops->copy_async(e, dst, src, size, &ticket) != FERRY_OK) {
            return 0;
        }
    }
    e->ops->sync(e);
    return (double)size * iters / (now_s() - t0) / 1e9;
}

/* ---- the writer -------------------------------------------------------------- */

/* GB/s of Ferry writes of size bytes from mem (reads into it) (iters timed
 * after one warm-up); 0 on failure, the bytes of the last transfer checked
 * (module comment). *staged_p: whether the passive side staged. */
static double ferry_gbps(ferry_connector_t *c, int cmd_fd, int res_fd, void *mem, uint64_t size,
                         bool force, bool read, int iters, bool *staged_p, uint8_t *host)
{
    ferry_descriptor_t d = {mem, size, {FERRY_DEVICE_CUDA, device}};
    cmd_t cmd = {.size = size, .force = force, .iters = iters + 1, .read = read};
    double total = 0;

    atomic_store(&ferry__test_staging.force, force);
    full_io(cmd_fd, &cmd, sizeof(cmd), true);
    for (int i = 0; i < cmd.iters; i++) {
        Ferry__V1__RdmaMetadata *m;
        uint8_t md[65536];
        uint32_t len;
        int32_t peer;
        ferry_op_t *op = NULL;
        ferry_status_t st;
        double t0;
        if (full_io(res_fd, &len, sizeof(len), false) != 0 || len > sizeof(md) ||
            full_io(res_fd, md, len, false) != 0) {
            fprintf(stderr, "writer: the passive process is gone\n");
            return 0;
        }
        if (ferry__metadata_decode(md, len, &m) == FERRY_OK) {
            *staged_p = m->staging != NULL;
            ferry__metadata_free(m);
        }
        if (read && i == cmd.iters - 1 && ferry__cuda_mem_zero(device, mem, size) != FERRY_OK) {
            fprintf(stderr, "reader: %s\n", ferry_last_error_message()); /* bytes not read show */
            return 0;
        }
        t0 = now_s();
        st = read ? ferry_read_begin(c, &d, 1, md, len, &op)
                  : ferry_write_begin(c, &d, 1, md, len, &op);
        if (st == FERRY_OK) {
            ferry__lock(c);
            mapped = ferry__staged_mapped(op);
            ferry__unlock(c);
            st = ferry_op_wait(op, WAIT_MS);
        }
        if (i > 0) {
            total += now_s() - t0;
        }
        if (st != FERRY_OK) {
            fprintf(stderr, "writer: %zu bytes: %s: %s\n", (size_t)size, ferry_status_name(st),
                    ferry_last_error_message());
        }
        ferry_op_destroy(op);
        if (full_io(res_fd, &peer, sizeof(peer), false) != 0 || peer != FERRY_OK ||
            st != FERRY_OK) {
            return 0;
        }
        if (read && i == cmd.iters - 1 && !bytes_right("reader", mem, size, host)) {
            return 0;
        }
    }
    return (double)size * iters / total / 1e9;
}

static int writer_main(int cmd_fd, int res_fd, uint64_t min, uint64_t max, int iters_small)
{
    ferry__copy_engine_t *e;
    ferry_connector_t *c;
    void *src, *dst, *pinned;
    int rc = 0;

    if (ferry_connector_create(NULL, &c) != FERRY_OK ||
        ferry__cuda_mem_alloc(device, max, &src) != FERRY_OK ||
        ferry__cuda_mem_alloc(device, max, &dst) != FERRY_OK ||
        ferry__cuda_engine_create(device, &e) != FERRY_OK ||
        e->ops->alloc_pinned(e, max, &pinned) != FERRY_OK) {
        fprintf(stderr, "writer: %s\n", ferry_last_error_message());
        return 2;
    }
    memset(pinned, PATTERN, max);
    ferry__cuda_memcpy(device, src, pinned, max);
    printf("ferry_bench_gpu: cuda:%" PRIu32
           ", UCX %s CUDA memory (default path: %s); staged transfers %s\n",
           device, c->ucx_reports_cuda ? "registers" : "cannot register",
           c->ucx_cuda ? "direct" : "staged",
           staged_puts
               ? "go through the active side's own slots and UCX puts or gets (--staged-puts)"
               : "copy into or out of the passive side's slots where mapped");
    printf("%-8s %12s %10s %-10s %10s %7s\n", "path", "bytes", "ferry_GBps", "reference",
           "ref_GBps", "ratio");
    for (uint64_t size = min; size <= max; size *= 4) {
        int iters = size >= (256u << 20) ? 5 : iters_small;
        double d2d = copy_gbps(e, dst, src, size, iters);
        double h2d = copy_gbps(e, dst, pinned, size, iters);
        double d2h = copy_gbps(e, pinned, src, size, iters);
        double slower = h2d < d2h ? h2d : d2h;
        bool staged = false;
        double def = 0, forced;

        if (!staged_only) {
            def = ferry_gbps(c, cmd_fd, res_fd, src, size, false, false, iters, &staged, pinned);
            printf("%-8s %12" PRIu64 " %10.2f %-10s %10.2f %7.3f\n", staged ? "staged*" : "direct",
                   size, def, "d2d", d2d, d2d > 0 ? def / d2d : 0);
        }
        forced = ferry_gbps(c, cmd_fd, res_fd, src, size, true, false, iters, &staged, pinned);
        printf("%-8s %12" PRIu64 " %10.2f %-10s %10.2f %7.3f\n", mapped ? "staged" : "staged-p",
               size, forced, h2d < d2h ? "h2d" : "d2h", slower, slower > 0 ? forced / slower : 0);
        fflush(stdout);
        if ((!staged_only && def == 0) || forced == 0) {
            rc = 1;
        }
        if (reads) {
            double r = ferry_gbps(c, cmd_fd, res_fd, dst, size, true, true, iters, &staged, pinned);
            printf("%-8s %12" PRIu64 " %10.2f %-10s %10.2f %7.3f\n",
                   mapped ? "stg-read" : "stg-rd-p", size, r, h2d < d2h ? "h2d" : "d2h", slower,
                   slower > 0 ? r / slower : 0);
            fflush(stdout);
            rc = r == 0 ? 1 : rc;
        }
    }
    printf("(-p: the active side went through its own slots and UCX puts or gets, not into "
           "the passive side's slots mapped into it)\n");
    printf("(staged*: the default path was staged: FERRY_CUDA_DIRECT is not 1, or this UCX has "
           "no CUDA transports)\n");
    e->ops->free_pinned(e, pinned, max, false);
    ferry__copy_engine_destroy(e);
    ferry__cuda_mem_free(device, src);
    ferry__cuda_mem_free(device, dst);
    ferry_connector_destroy(c);
    return rc;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"device", required_argument, NULL, 'd'},  {"min-mib", required_argument, NULL, 'm'},
        {"max-mib", required_argument, NULL, 'M'}, {"iters", required_argument, NULL, 'i'},
        {"staged-only", no_argument, NULL, 's'},   {"staged-puts", no_argument, NULL, 'p'},
        {"reads", no_argument, NULL, 'r'},         {NULL, 0, NULL, 0}};
    uint64_t min = 1u << 20, max = 1u << 30;
    int iters = 20, o, to_child[2], from_child[2], wstatus = 0, rc;
    cmd_t quit = {0};
    const char *fake;
    static char fake_path[4096];
    pid_t pid;

    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'd':
            device = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case 'm':
            min = strtoull(optarg, NULL, 10) << 20;
            break;
        case 'M':
            max = strtoull(optarg, NULL, 10) << 20;
            break;
        case 'i':
            iters = atoi(optarg);
            break;
        case 's':
            staged_only = true;
            break;
        case 'p':
            staged_puts = true;
            break;
        case 'r':
            reads = true;
            break;
        default:
            fprintf(stderr, "usage: ferry_bench_gpu [--device N] [--min-mib M] [--max-mib M] "
                            "[--iters K] [--staged-only] [--staged-puts] [--reads]\n");
            return 2;
        }
    }
    if (min == 0 || max < min || iters <= 0) {
        fprintf(stderr, "ferry_bench_gpu: bad sizes or iterations\n");
        return 2;
    }
    /* For checking this program where there is no GPU: the fake driver of
     * the tests (tests/worker/fake_cuda.c); a relative path is under
     * FERRY_BUILD_DIR, as test_worker_cuda takes it (the GPU bundle moves
     * the build tree). */
    fake = getenv("FERRY_TEST_FAKE_CUDA");
    if (fake != NULL && fake[0] != '\0' && fake[0] != '/' && getenv("FERRY_BUILD_DIR") != NULL) {
        snprintf(fake_path, sizeof(fake_path), "%s/%s", getenv("FERRY_BUILD_DIR"), fake);
        fake = fake_path;
    }
    ferry__cuda_test_driver = fake;
    atomic_store(&ferry__test_staging.no_map, staged_puts);
    signal(SIGPIPE, SIG_IGN);
    if (pipe(to_child) != 0 || pipe(from_child) != 0) {
        perror("pipe");
        return 2;
    }
    pid = fork(); /* before any CUDA or UCX state */
    if (pid == 0) {
        close(to_child[1]);
        close(from_child[0]);
        _exit(passive_main(to_child[0], from_child[1], max));
    }
    close(to_child[0]);
    close(from_child[1]);
    if (ferry__cuda_load() != FERRY_OK) {
        printf("ferry_bench_gpu: no usable GPU: %s\n", ferry__cuda_why());
        rc = 2;
    } else {
        rc = writer_main(to_child[1], from_child[0], min, max, iters);
    }
    full_io(to_child[1], &quit, sizeof(quit), true);
    close(to_child[1]);
    close(from_child[0]);
    waitpid(pid, &wstatus, 0);
    return rc;
}
