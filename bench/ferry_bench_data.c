/*
 * ferry_bench_data.c: the data-path and small-operation benchmarks (issue
 * #5), one JSON object per measurement on stdout.
 *
 *   --op write|read --size S [--descs D] [--iters N] [--pairs P]
 *       Ferry bandwidth between two processes (P pairs at once). The passive
 *       process registers its buffer (split into D equal descriptors) and
 *       sends the metadata over a pipe; the active process times from
 *       ferry_write_begin (or read) to ferry_op_wait returning COMPLETE,
 *       one operation at a time. Registration is outside the timed part, as
 *       in ucx_perftest (its memory is mapped once, before the run).
 *       --mem picks the memory on both sides: user (the default: mmap'ed,
 *       every operation registers its descriptors itself), region (the same
 *       memory registered once with ferry_mem_register: operations map
 *       nothing) or alloc (ferry_mem_alloc: UCX-allocated, as ucx_perftest's
 *       buffers, which UCX's shared-memory transports write directly).
 *       --trace: the active side also prints where each operation's time
 *       goes, p50 per phase (see trace_cb): begin (decode, checks, cached
 *       endpoint and key, claim posted), the claim's round trip (CLAIMING ->
 *       TRANSFERRING: the passive side admits), data and flush
 *       (TRANSFERRING -> NOTIFYING: what the raw UCX reference times), the
 *       notice (NOTIFYING -> COMPLETE) and the waiter's wake-up.
 *       --window W: up to W operations in flight per pair (1: one at a
 *       time, as above). The passive side keeps W operations published,
 *       each on its own size-byte slot of a buffer W times the size; the
 *       active side begins them in order as their metadata arrives and
 *       waits for them in order, and the figure is the wall clock from the
 *       first timed begin to the last end: a stream of operations, as
 *       ucx_perftest streams puts. Not with --trace.
 *       --peer-errors on|off: both connectors' peer_error_handling
 *       (unset: the library's default).
 *   --create --size S [--iters N]
 *       operation creation on registered memory: ferry_mem_register of an
 *       S-byte buffer once (the first registration, timed), then N
 *       ferry_writable_create + ferry_op_destroy on the whole region (p50,
 *       p99), and the same create on unregistered memory of that size (each
 *       maps it) for reference. One process; no transfer.
 *   --memcpy --size S [--iters N]
 *       memcpy bandwidth of one core (the ceiling for shared memory).
 *   --latency --coord HOST:PORT [--iters N]
 *       a 4 KiB write through the coordinator by the product path, phase
 *       by phase: prep (ferry_writable_create), register (ferry_op_publish:
 *       one Register RPC, one etcd write on the session lease), hand-off of
 *       the request ID (a pipe), claim (ferry_write_begin_by_id: one Claim
 *       RPC, an etcd write, which checks the pairing and answers the
 *       metadata; the Complete goes out from libferry's session thread when
 *       the transfer ends), transfer (its
 *       return .. ferry_op_wait on the sender), completion seen by the
 *       receiver (from the sender's ferry_write_begin_by_id call to the
 *       receiver's ferry_op_wait return: the transfer starts inside that
 *       call and can end before it returns), the whole cycle, and teardown
 *       (ferry_op_destroy on each side; Complete and Release are sent by the
 *       coordinator clients' session threads, or by destroy).
 *       --trace: also the sender's operation step by step ("traced: ..."
 *       phases, from its state changes as above: the Claim, the receiver's
 *       admit, data and flush, the notice, each side's wake-up); every
 *       line of a traced run carries "traced": true.
 *       Then the CPU time each process used per timed cycle ("latency-cpu"
 *       lines): the receiver, the sender, and each --cpu-pid NAME=PID
 *       (latency.sh names etcd and the coordinator), with the wall time per
 *       cycle: on a small machine the cycle's processes compete for cores.
 *   --spin-us N (any mode) sets the connector's spin_us; unset: FERRY_SPIN_US
 *       or the default (50). The value that ran is in the output.
 *
 * Processes: the program forks the passive side(s) before any UCX state
 * exists (UCX does not survive fork), so every process builds its own
 * connector. Timestamps are CLOCK_MONOTONIC, comparable across processes on
 * one machine; the latency run keeps them in a shared anonymous mapping.
 */
#include <getopt.h>
#include <limits.h>
#include <stddef.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ferry/coordinator.h>

#include "bench_stats.h"

#define BENCH_TOKEN        "bench-access-token-0123456789abcdef"
#define BENCH_WAIT_MS      60000
#define BENCH_CPU_PIDS_MAX 4

typedef struct {
    const char *op;  /* "write" or "read"; NULL with --memcpy/--latency */
    const char *mem; /* "user", "region" or "alloc" */
    bool memcpy_mode;
    bool create_mode;
    bool trace;
    bool latency_mode;
    uint64_t size;
    int descs;
    long iters;
    long warmup;
    int pairs;
    long window; /* operations in flight per pair (--window; 1) */
    bool caller_progress;
    unsigned spin_us; /* resolved: --spin-us, else FERRY_SPIN_US, else the default */
    int peer_errors;  /* --peer-errors on (1) / off (0); -1: the library's default */
    const char *coord;
    /* --cpu-pid NAME=PID (latency): processes whose CPU per cycle is
     * reported beside the receiver's and the sender's (etcd, a coordinator) */
    const char *cpu_names[BENCH_CPU_PIDS_MAX];
    int cpu_pids[BENCH_CPU_PIDS_MAX];
    int n_cpu_pids;
} bench_args_t;

/* --- pipes ---------------------------------------------------------------- */

static int write_all(int fd, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n <= 0) {
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int read_all(int fd, void *buf, size_t len)
{
    uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = read(fd, p, len);
        if (n <= 0) {
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* A length-prefixed message. */
static int send_msg(int fd, const void *buf, uint32_t len)
{
    return write_all(fd, &len, sizeof(len)) != 0 ? -1 : write_all(fd, buf, len);
}

static int recv_msg(int fd, uint8_t **buf_p, uint32_t *len_p)
{
    uint32_t len;
    uint8_t *buf;

    if (read_all(fd, &len, sizeof(len)) != 0 || (buf = malloc(len + 1u)) == NULL) {
        return -1;
    }
    if (read_all(fd, buf, len) != 0) {
        free(buf);
        return -1;
    }
    buf[len] = 0;
    *buf_p = buf;
    *len_p = len;
    return 0;
}

/* --- memory and connectors ------------------------------------------------ */

/* Page-aligned, touched (no page faults inside the timed part). */
static uint8_t *bench_alloc(uint64_t size, int fill)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        return NULL;
    }
    memset(p, fill, size);
    return p;
}

static void bench_split(uint8_t *buf, uint64_t size, int n, ferry_descriptor_t *descs)
{
    uint64_t part = size / (uint64_t)n;
    for (int i = 0; i < n; i++) {
        descs[i].ptr = buf + part * (uint64_t)i;
        descs[i].size = i == n - 1 ? size - part * (uint64_t)i : part;
        descs[i].device = (ferry_device_t)FERRY_DEVICE_HOST_INIT;
    }
}

/* --trace: the time each active operation reached each step, taken from
 * libferry's own debug line for every state change ("write 7 key ...: A ->
 * B"), on whichever thread made it. One operation runs at a time. */
enum { TRACE_READY, TRACE_CLAIMING, TRACE_TRANSFERRING, TRACE_NOTIFYING, TRACE_COMPLETE, TRACE_N };
static const char *const trace_steps[TRACE_N] = {"-> READY", "-> CLAIMING", "-> TRANSFERRING",
                                                 "-> NOTIFYING", "-> COMPLETE"};
static _Atomic uint64_t trace_at[TRACE_N];

static void trace_cb(ferry_loglevel_t level, const char *message, void *arg)
{
    (void)level;
    (void)arg;
    if (strncmp(message, "write ", 6) != 0 && strncmp(message, "read ", 5) != 0) {
        return;
    }
    for (int i = 0; i < TRACE_N; i++) {
        if (strstr(message, trace_steps[i]) != NULL) {
            trace_at[i] = bench_now_ns();
        }
    }
}

static ferry_connector_t *bench_connector(const bench_args_t *a, const char *name)
{
    ferry_connector_params_t params = {0};
    ferry_connector_t *c = NULL;

    params.field_mask = FERRY_CONNECTOR_PARAM_FIELD_NAME |
                        FERRY_CONNECTOR_PARAM_FIELD_PROGRESS_MODE |
                        FERRY_CONNECTOR_PARAM_FIELD_SPIN_US;
    params.name = name;
    params.spin_us = a->spin_us;
    params.progress_mode = a->caller_progress ? FERRY_PROGRESS_CALLER : FERRY_PROGRESS_THREAD;
    if (a->peer_errors >= 0) {
        params.field_mask |= FERRY_CONNECTOR_PARAM_FIELD_PEER_ERROR_HANDLING;
        params.peer_error_handling = a->peer_errors == 1;
    }
    if (a->trace && strcmp(name, "bench-active") == 0) {
        params.field_mask |=
            FERRY_CONNECTOR_PARAM_FIELD_LOG_LEVEL | FERRY_CONNECTOR_PARAM_FIELD_LOG_CB;
        params.log_level = FERRY_LOGLEVEL_DEBUG;
        params.log_cb = trace_cb;
    }
    if (ferry_connector_create(&params, &c) != FERRY_OK) {
        fprintf(stderr, "%s: connector: %s\n", name, ferry_last_error_message());
        return NULL;
    }
    return c;
}

static int bench_fail(const char *what, ferry_status_t status)
{
    fprintf(stderr, "%s: %s (%s)\n", what, ferry_status_name(status), ferry_last_error_message());
    return -1;
}

/* --- bandwidth: passive and active ---------------------------------------- */

/* The bytes one side's buffer holds: a slot per operation in flight. */
static uint64_t bench_span(const bench_args_t *a)
{
    return a->size * (uint64_t)a->window;
}

/* The buffer of one side, as --mem says; *region_p is NULL for "user". */
static uint8_t *bench_memory(const bench_args_t *a, ferry_connector_t *c, int fill,
                             ferry_region_t **region_p)
{
    ferry_device_t host = FERRY_DEVICE_HOST_INIT;
    ferry_status_t s;
    void *p;

    *region_p = NULL;
    if (strcmp(a->mem, "alloc") == 0) {
        if ((s = ferry_mem_alloc(c, bench_span(a), host, region_p, &p)) != FERRY_OK) {
            bench_fail("mem_alloc", s);
            return NULL;
        }
        memset(p, fill, bench_span(a));
        return p;
    }
    p = bench_alloc(bench_span(a), fill);
    if (p != NULL && strcmp(a->mem, "region") == 0 &&
        (s = ferry_mem_register(c, p, bench_span(a), host, region_p)) != FERRY_OK) {
        bench_fail("mem_register", s);
        return NULL;
    }
    return p;
}

static void bench_memory_free(const bench_args_t *a, uint8_t *buf, ferry_region_t *region)
{
    ferry_mem_deregister(region);
    if (strcmp(a->mem, "alloc") != 0) {
        munmap(buf, bench_span(a));
    }
}

/* Operation i uses slot i % window: its own size-byte part of the buffer,
 * so operations in flight never share memory. */
static void bench_slot(const bench_args_t *a, uint8_t *buf, long i, ferry_descriptor_t *descs)
{
    bench_split(buf + a->size * (uint64_t)(i % a->window), a->size, a->descs, descs);
}

/* Keeps `window` writables (or readables) published: creates operation i,
 * sends its metadata, and creates i + window once i is over. */
static int passive_loop(const bench_args_t *a, int md_fd)
{
    bool write = strcmp(a->op, "write") == 0;
    long total = a->iters + a->warmup;
    ferry_descriptor_t *descs = calloc((size_t)a->descs, sizeof(*descs));
    ferry_op_t **ops = calloc((size_t)a->window, sizeof(*ops));
    ferry_connector_t *c = bench_connector(a, "bench-passive");
    ferry_region_t *region = NULL;
    uint8_t *buf = c != NULL ? bench_memory(a, c, 0x22, &region) : NULL;
    int rc = 0;

    if (descs == NULL || ops == NULL || buf == NULL || c == NULL) {
        return -1;
    }
    for (long i = 0; i < total + a->window && rc == 0; i++) {
        ferry_op_t **slot = &ops[i % a->window];
        const uint8_t *md;
        size_t md_len;
        ferry_status_t s;

        if (i >= a->window) { /* operation i - window, in this slot */
            if ((s = ferry_op_wait(*slot, BENCH_WAIT_MS)) != FERRY_OK) {
                rc = bench_fail("passive wait", s);
            }
            ferry_op_destroy(*slot);
            *slot = NULL;
        }
        if (rc != 0 || i >= total) {
            continue;
        }
        bench_slot(a, buf, i, descs);
        s = write ? ferry_writable_create(c, descs, (size_t)a->descs, slot)
                  : ferry_readable_create(c, descs, (size_t)a->descs, slot);
        if (s != FERRY_OK || (s = ferry_op_metadata(*slot, &md, &md_len)) != FERRY_OK) {
            rc = bench_fail("passive create", s);
        } else if (send_msg(md_fd, md, (uint32_t)md_len) != 0) {
            rc = -1;
        }
    }
    for (long k = 0; k < a->window; k++) {
        ferry_op_destroy(ops[k]);
    }
    bench_memory_free(a, buf, region);
    ferry_connector_destroy(c);
    free(ops);
    free(descs);
    return rc;
}

/* One operation's phases from trace_at: begin call .. READY, each step to
 * the next, COMPLETE .. the wait's return (t1). */
static void trace_add(bench_samples_t *phases, uint64_t t0, uint64_t t1)
{
    uint64_t prev = t0;

    for (int i = 0; i < TRACE_N; i++) {
        uint64_t at = trace_at[i];
        bench_samples_add(&phases[i], at > prev ? at - prev : 0);
        prev = at > prev ? at : prev;
    }
    bench_samples_add(&phases[TRACE_N], t1 > prev ? t1 - prev : 0);
}

static void trace_print(bench_samples_t *phases, const bench_args_t *a)
{
    static const char *const names[TRACE_N + 1] = {"begin (decode, checks, endpoint, key)",
                                                   "claim posted",
                                                   "claim round trip (passive admits)",
                                                   "data + flush",
                                                   "notice sent",
                                                   "waiter wakes (COMPLETE .. wait returns)"};

    for (int i = 0; i <= TRACE_N; i++) {
        bench_samples_sort(&phases[i]);
        printf("{\"bench\":\"phases\",\"mem\":\"%s\",\"op\":\"%s\",\"size\":%llu,"
               "\"phase\":\"%s\",\"n\":%zu,\"p50_us\":%.2f,\"mean_us\":%.2f}\n",
               a->mem, a->op, (unsigned long long)a->size, names[i], phases[i].n,
               bench_samples_pct_us(&phases[i], 50), bench_samples_mean_us(&phases[i]));
        bench_samples_free(&phases[i]);
    }
}

/* Returns the seconds the timed iterations took, or a negative number. With
 * a window of 1, the sum of each operation's begin .. wait (the hand-off of
 * the next metadata is not timed, as before windows existed). With more,
 * up to `window` operations are in flight, begun in order as their metadata
 * arrives and waited for in order; the time is the wall clock from the
 * first timed operation's begin to the last one's end, and the warmup
 * operations are all over before the first timed one begins. */
static double active_loop(const bench_args_t *a, int md_fd)
{
    bool write = strcmp(a->op, "write") == 0;
    long total = a->iters + a->warmup;
    ferry_descriptor_t *descs = calloc((size_t)a->descs, sizeof(*descs));
    ferry_op_t **ops = calloc((size_t)a->window, sizeof(*ops));
    uint64_t *begun = calloc((size_t)a->window, sizeof(*begun));
    ferry_connector_t *c = bench_connector(a, "bench-active");
    ferry_region_t *region = NULL;
    uint8_t *buf = c != NULL ? bench_memory(a, c, 0x11, &region) : NULL;
    uint64_t timed_ns = 0, start = 0;
    bench_samples_t phases[TRACE_N + 1] = {{0}};
    long next = 0, done = 0;
    int rc = 0;

    if (descs == NULL || ops == NULL || begun == NULL || buf == NULL || c == NULL) {
        return -1.0;
    }
    while (done < total && rc == 0) {
        /* Begin what the window allows; the first timed operation waits
         * until the warmup is over. */
        while (next < total && next - done < a->window && (next != a->warmup || done == next)) {
            uint8_t *md;
            uint32_t md_len;
            ferry_status_t s;

            if (recv_msg(md_fd, &md, &md_len) != 0) {
                rc = -1;
                break;
            }
            bench_slot(a, buf, next, descs);
            begun[next % a->window] = bench_now_ns();
            if (next == a->warmup) {
                start = begun[next % a->window];
            }
            s = write ? ferry_write_begin(c, descs, (size_t)a->descs, md, md_len,
                                          &ops[next % a->window])
                      : ferry_read_begin(c, descs, (size_t)a->descs, md, md_len,
                                         &ops[next % a->window]);
            free(md);
            if (s != FERRY_OK) {
                rc = bench_fail("active begin", s);
                break;
            }
            next++;
        }
        if (rc == 0 && done < next) {
            ferry_op_t **slot = &ops[done % a->window];
            ferry_status_t s = ferry_op_wait(*slot, BENCH_WAIT_MS);
            uint64_t t1 = bench_now_ns();

            if (s != FERRY_OK) {
                rc = bench_fail("active transfer", s);
            } else if (done >= a->warmup && a->window == 1) {
                timed_ns += t1 - begun[0];
                if (a->trace) {
                    trace_add(phases, begun[0], t1);
                }
            } else if (done == total - 1) {
                timed_ns = t1 - start;
            }
            ferry_op_destroy(*slot);
            *slot = NULL;
            done++;
        }
    }
    for (long k = 0; k < a->window; k++) {
        ferry_op_destroy(ops[k]);
    }
    bench_memory_free(a, buf, region);
    ferry_connector_destroy(c);
    free(begun);
    free(ops);
    free(descs);
    if (rc == 0 && a->trace) {
        trace_print(phases, a);
    }
    return rc == 0 ? (double)timed_ns / 1e9 : -1.0;
}

/* One pair: forks the passive side; runs the active side here. Writes the
 * timed seconds to result_fd. */
static int run_pair(const bench_args_t *a, int result_fd)
{
    int md_pipe[2];
    pid_t pid;
    double secs;
    int status;

    if (pipe(md_pipe) != 0) {
        return -1;
    }
    pid = fork();
    if (pid == 0) {
        close(md_pipe[0]);
        _exit(passive_loop(a, md_pipe[1]) == 0 ? 0 : 1);
    }
    close(md_pipe[1]);
    secs = pid > 0 ? active_loop(a, md_pipe[0]) : -1.0;
    close(md_pipe[0]);
    if (pid > 0 &&
        (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)) {
        secs = -1.0;
    }
    return write_all(result_fd, &secs, sizeof(secs));
}

static int run_bandwidth(const bench_args_t *a)
{
    int res_pipe[2];
    double gbps = 0.0, worst = 0.0;
    pid_t *pids = calloc((size_t)a->pairs, sizeof(*pids));
    int rc = 0;

    if (pids == NULL || pipe(res_pipe) != 0) {
        return 1;
    }
    for (int p = 0; p < a->pairs; p++) {
        pids[p] = fork();
        if (pids[p] == 0) {
            close(res_pipe[0]);
            _exit(run_pair(a, res_pipe[1]) == 0 ? 0 : 1);
        }
    }
    close(res_pipe[1]);
    /* The aggregate is the sum of each pair's own bandwidth, as when adding
     * up concurrent ucx_perftest runs. */
    for (int p = 0; p < a->pairs; p++) {
        double secs;
        if (read_all(res_pipe[0], &secs, sizeof(secs)) != 0 || secs <= 0) {
            rc = 1;
            continue;
        }
        gbps += (double)a->size * (double)a->iters / secs / 1e9;
        worst = secs > worst ? secs : worst;
    }
    for (int p = 0; p < a->pairs; p++) {
        waitpid(pids[p], NULL, 0);
    }
    close(res_pipe[0]);
    free(pids);
    if (rc == 0) {
        /* A traced run pays for its debug lines: kept out of the tables. */
        printf("{\"bench\":\"%s\",\"impl\":\"%s\",\"op\":\"%s\",\"size\":%llu,\"descs\":%d,"
               "\"pairs\":%d,\"window\":%ld,\"iters\":%ld,\"progress\":\"%s\",\"spin_us\":%u,"
               "\"peer_errors\":\"%s\",\"gbps\":%.3f,\"us_per_op\":%.1f}\n",
               a->trace ? "data-traced" : "data",
               strcmp(a->mem, "user") == 0     ? "ferry"
               : strcmp(a->mem, "region") == 0 ? "ferry-region"
                                               : "ferry-alloc",
               a->op, (unsigned long long)a->size, a->descs, a->pairs, a->window, a->iters,
               a->caller_progress ? "caller" : "thread", a->spin_us,
               a->peer_errors < 0 ? "default"
               : a->peer_errors   ? "on"
                                  : "off",
               gbps, worst * 1e6 / (double)a->iters);
    }
    return rc;
}

/* --- memcpy --------------------------------------------------------------- */

static int run_memcpy(const bench_args_t *a)
{
    uint8_t *src = bench_alloc(a->size, 0x33);
    uint8_t *dst = bench_alloc(a->size, 0x44);
    uint64_t t0, ns;

    if (src == NULL || dst == NULL) {
        return 1;
    }
    memcpy(dst, src, a->size); /* warm */
    t0 = bench_now_ns();
    for (long i = 0; i < a->iters; i++) {
        src[i % a->size] = (uint8_t)i; /* keep the copies from being merged */
        memcpy(dst, src, a->size);
    }
    ns = bench_now_ns() - t0;
    printf("{\"bench\":\"memcpy\",\"size\":%llu,\"iters\":%ld,\"gbps\":%.3f,\"check\":%d}\n",
           (unsigned long long)a->size, a->iters, (double)a->size * (double)a->iters / (double)ns,
           dst[a->size / 2]);
    munmap(src, a->size);
    munmap(dst, a->size);
    return 0;
}

/* --- operation creation on registered memory ------------------------------ */

static void create_print(const char *phase, bench_samples_t *s, const bench_args_t *a)
{
    bench_samples_sort(s);
    printf("{\"bench\":\"create\",\"phase\":\"%s\",\"size\":%llu,\"n\":%zu,"
           "\"mean_us\":%.2f,\"p50_us\":%.2f,\"p99_us\":%.2f}\n",
           phase, (unsigned long long)a->size, s->n, bench_samples_mean_us(s),
           bench_samples_pct_us(s, 50), bench_samples_pct_us(s, 99));
    bench_samples_free(s);
}

/* n creates (and destroys) of a writable on d; the create is timed. */
static int create_loop(ferry_connector_t *c, const ferry_descriptor_t *d, long n,
                       bench_samples_t *s)
{
    for (long i = 0; i < n; i++) {
        ferry_op_t *op = NULL;
        uint64_t t0 = bench_now_ns();
        ferry_status_t st = ferry_writable_create(c, d, 1, &op);
        uint64_t t1 = bench_now_ns();
        if (st != FERRY_OK) {
            return bench_fail("writable_create", st);
        }
        bench_samples_add(s, t1 - t0);
        ferry_op_destroy(op);
    }
    return 0;
}

static int run_create(const bench_args_t *a)
{
    ferry_connector_t *c = bench_connector(a, "bench-create");
    uint8_t *buf = bench_alloc(a->size, 0x5a);
    ferry_descriptor_t d = {buf, a->size, FERRY_DEVICE_HOST_INIT};
    ferry_region_t *region = NULL;
    bench_samples_t first = {0}, reg = {0}, unreg = {0};
    ferry_status_t st;
    uint64_t t0;
    int rc;

    if (c == NULL || buf == NULL) {
        return 1;
    }
    /* Unregistered first (each create maps the whole buffer), so the
     * region's numbers are not helped by anything it warmed. */
    rc = create_loop(c, &d, a->iters < 50 ? a->iters : 50, &unreg);
    t0 = bench_now_ns();
    st = ferry_mem_register(c, buf, a->size, d.device, &region);
    bench_samples_add(&first, bench_now_ns() - t0);
    if (st != FERRY_OK) {
        return bench_fail("mem_register", st) != 0;
    }
    rc = rc != 0 ? rc : create_loop(c, &d, a->iters, &reg);
    if (rc == 0) {
        create_print("first registration (ferry_mem_register)", &first, a);
        create_print("create on the region (writable_create)", &reg, a);
        create_print("create on unregistered memory (maps it)", &unreg, a);
    }
    ferry_mem_deregister(region);
    ferry_connector_destroy(c);
    munmap(buf, a->size);
    return rc != 0;
}

/* --- small-operation latency ---------------------------------------------- */

/* Per iteration, CLOCK_MONOTONIC ns, in memory shared by both processes. */
typedef struct {
    uint64_t start;         /* receiver: before ferry_writable_create */
    uint64_t prepared;      /* receiver: created, metadata in hand */
    uint64_t registered;    /* receiver: ferry_op_publish returned */
    uint64_t got_id;        /* sender: the request ID arrived */
    uint64_t begun;         /* sender: ferry_write_begin_by_id returned */
    uint64_t written;       /* sender: ferry_op_wait returned COMPLETE */
    uint64_t seen;          /* receiver: ferry_op_wait returned COMPLETE */
    uint64_t rx_destroyed;  /* receiver: ferry_op_destroy returned */
    uint64_t tx_destroyed;  /* sender: ferry_op_destroy returned */
    uint64_t step[TRACE_N]; /* sender, --trace: its operation's state changes */
} bench_times_t;

static ferry_coordinator_t *bench_coordinator(const bench_args_t *a)
{
    ferry_coordinator_params_t params = {.target = a->coord};
    ferry_coordinator_t *coord = NULL;

    if (ferry_coordinator_connect(&params, &coord) != FERRY_OK) {
        fprintf(stderr, "coordinator %s: %s\n", a->coord, ferry_last_error_message());
        return NULL;
    }
    return coord;
}

/* The receiver: create, publish (Register), hand the ID and token to the
 * sender, wait for the data, destroy (its record is Released in the
 * background by the coordinator client's session thread). */
static int latency_passive(const bench_args_t *a, bench_times_t *t, int id_fd, int run)
{
    ferry_connector_t *c = bench_connector(a, "bench-passive");
    ferry_coordinator_t *coord = bench_coordinator(a);
    uint8_t *buf = bench_alloc(a->size, 0);
    ferry_descriptor_t d;
    int rc = 0;

    if (c == NULL || coord == NULL || buf == NULL) {
        return -1;
    }
    bench_split(buf, a->size, 1, &d);
    for (long i = 0; i < a->iters + a->warmup && rc == 0; i++) {
        bench_times_t *ti = &t[i];
        ferry_publish_params_t pub = {.access_token = BENCH_TOKEN};
        ferry_op_t *op = NULL;
        char id[64], msg[64 + sizeof(BENCH_TOKEN) + 1];
        ferry_status_t s;

        snprintf(id, sizeof(id), "lat-%d-%ld", run, i);
        pub.request_id = id;
        ti->start = bench_now_ns();
        s = ferry_writable_create(c, &d, 1, &op);
        if (s != FERRY_OK) {
            rc = bench_fail("writable", s);
            break;
        }
        ti->prepared = bench_now_ns();
        s = ferry_op_publish(op, coord, &pub);
        ti->registered = bench_now_ns();
        if (s != FERRY_OK) {
            rc = bench_fail("publish", s);
        } else {
            /* The request ID and token go to the sender by the
             * application's own channel (here a pipe). */
            int len = snprintf(msg, sizeof(msg), "%s %s", id, ferry_op_access_token(op));
            if (send_msg(id_fd, msg, (uint32_t)len) != 0) {
                rc = -1;
            } else if ((s = ferry_op_wait(op, BENCH_WAIT_MS)) != FERRY_OK) {
                rc = bench_fail("receiver wait", s);
            }
        }
        ti->seen = bench_now_ns();
        ferry_op_destroy(op);
        ti->rx_destroyed = bench_now_ns();
    }
    ferry_coordinator_disconnect(coord);
    ferry_connector_destroy(c);
    return rc;
}

/* CPU per cycle (latency): the CPU time each process used over the timed
 * cycles (from the first timed request ID's arrival to the sender's last
 * destroy), from /proc: the --cpu-pid processes, the receiver (the forked
 * child) and the sender (this process). On two cores the cycle's
 * processes compete for the CPU; this says how much each one asked for. */
typedef struct {
    int n;
    const char *names[BENCH_CPU_PIDS_MAX + 2];
    int pids[BENCH_CPU_PIDS_MAX + 2];
    double us[2][BENCH_CPU_PIDS_MAX + 2]; /* [before, after][process] */
    uint64_t ns[2];
} latency_cpu_t;

static void latency_cpu_init(latency_cpu_t *cpu, const bench_args_t *a, int receiver_pid)
{
    memset(cpu, 0, sizeof(*cpu));
    for (int i = 0; i < a->n_cpu_pids; i++) {
        cpu->names[cpu->n] = a->cpu_names[i];
        cpu->pids[cpu->n++] = a->cpu_pids[i];
    }
    cpu->names[cpu->n] = "receiver";
    cpu->pids[cpu->n++] = receiver_pid;
    cpu->names[cpu->n] = "sender";
    cpu->pids[cpu->n++] = (int)getpid();
}

static void latency_cpu_mark(latency_cpu_t *cpu, int when)
{
    for (int i = 0; i < cpu->n; i++) {
        cpu->us[when][i] = bench_proc_cpu_us(cpu->pids[i]);
    }
    cpu->ns[when] = bench_now_ns();
}

static void latency_cpu_print(const latency_cpu_t *cpu, const bench_args_t *a)
{
    double wall_us = (double)(cpu->ns[1] - cpu->ns[0]) / 1e3;

    for (int i = 0; i < cpu->n; i++) {
        if (cpu->us[0][i] < 0 || cpu->us[1][i] < 0) {
            continue; /* unreadable: left out */
        }
        printf("{\"bench\":\"latency-cpu\",\"process\":\"%s\",\"progress\":\"%s\","
               "\"spin_us\":%u,%s\"cycles\":%ld,\"wall_us_per_cycle\":%.1f,"
               "\"cpu_us_per_cycle\":%.1f}\n",
               cpu->names[i], a->caller_progress ? "caller" : "thread", a->spin_us,
               a->trace ? "\"traced\":true," : "", a->iters, wall_us / (double)a->iters,
               (cpu->us[1][i] - cpu->us[0][i]) / (double)a->iters);
    }
}

/* The sender: by request ID (Lookup, local checks, Claim, then the
 * transfer), wait, destroy (Complete is reported by the session thread, or
 * here if it has not been yet). */
static int latency_active(const bench_args_t *a, bench_times_t *t, int id_fd, latency_cpu_t *cpu)
{
    ferry_connector_t *c = bench_connector(a, "bench-active");
    ferry_coordinator_t *coord = bench_coordinator(a);
    uint8_t *buf = bench_alloc(a->size, 0x55);
    ferry_descriptor_t d;
    int rc = 0;

    if (c == NULL || coord == NULL || buf == NULL) {
        return -1;
    }
    bench_split(buf, a->size, 1, &d);
    for (long i = 0; i < a->iters + a->warmup && rc == 0; i++) {
        bench_times_t *ti = &t[i];
        ferry_claim_params_t claim = {0};
        ferry_op_t *op = NULL;
        uint8_t *msg;
        uint32_t msg_len;
        char *space;
        ferry_status_t s;

        if (recv_msg(id_fd, &msg, &msg_len) != 0) {
            rc = -1;
            break;
        }
        if (i == a->warmup) {
            latency_cpu_mark(cpu, 0);
        }
        ti->got_id = bench_now_ns();
        space = strchr((char *)msg, ' ');
        if (space == NULL) {
            free(msg);
            rc = -1;
            break;
        }
        *space = '\0';
        claim.request_id = (const char *)msg;
        claim.access_token = space + 1;
        for (int k = 0; k < TRACE_N; k++) {
            trace_at[k] = 0;
        }
        s = ferry_write_begin_by_id(c, coord, &claim, &d, 1, &op);
        ti->begun = bench_now_ns();
        if (s != FERRY_OK) {
            rc = bench_fail("write_begin_by_id", s);
        } else if ((s = ferry_op_wait(op, BENCH_WAIT_MS)) != FERRY_OK) {
            rc = bench_fail("sender wait", s);
        }
        ti->written = bench_now_ns();
        for (int k = 0; k < TRACE_N; k++) {
            ti->step[k] = trace_at[k];
        }
        ferry_op_destroy(op);
        ti->tx_destroyed = bench_now_ns();
        free(msg);
    }
    latency_cpu_mark(cpu, 1);
    ferry_coordinator_disconnect(coord);
    ferry_connector_destroy(c);
    return rc;
}

static void latency_print(const char *phase, bench_samples_t *s, const bench_args_t *a)
{
    bench_samples_sort(s);
    printf("{\"bench\":\"latency\",\"phase\":\"%s\",\"size\":%llu,\"n\":%zu,\"progress\":\"%s\","
           "\"spin_us\":%u,%s\"mean_us\":%.1f,\"p50_us\":%.1f,\"p99_us\":%.1f}\n",
           phase, (unsigned long long)a->size, s->n, a->caller_progress ? "caller" : "thread",
           a->spin_us, a->trace ? "\"traced\":true," : "", bench_samples_mean_us(s),
           bench_samples_pct_us(s, 50), bench_samples_pct_us(s, 99));
    bench_samples_free(s);
}

static void latency_phase(const char *phase, const bench_times_t *t, const bench_args_t *a,
                          size_t from_off, size_t to_off)
{
    bench_samples_t s = {0};

    for (long i = a->warmup; i < a->iters + a->warmup; i++) {
        const uint8_t *ti = (const uint8_t *)&t[i];
        uint64_t from = *(const uint64_t *)(ti + from_off), to = *(const uint64_t *)(ti + to_off);
        bench_samples_add(&s, to > from ? to - from : 0); /* 0: a step skipped */
    }
    latency_print(phase, &s, a);
}

/* The cycle without the Register (ferry_op_publish): everything but the
 * registration's etcd write (the Claim's etcd write is still in it). */
static void latency_rest(const bench_times_t *t, const bench_args_t *a)
{
    bench_samples_t s = {0};

    for (long i = a->warmup; i < a->iters + a->warmup; i++) {
        bench_samples_add(&s, (t[i].seen - t[i].start) - (t[i].registered - t[i].prepared));
    }
    latency_print("cycle minus register", &s, a);
}

/* The cycle without either coordinator call (ferry_op_publish and
 * ferry_write_begin_by_id): prep, hand-off, and the transfer's tail after
 * ferry_write_begin_by_id returned (0 when it had already ended). */
static void latency_local(const bench_times_t *t, const bench_args_t *a)
{
    bench_samples_t s = {0};

    for (long i = a->warmup; i < a->iters + a->warmup; i++) {
        uint64_t tail = t[i].seen > t[i].begun ? t[i].seen - t[i].begun : 0;
        bench_samples_add(&s,
                          (t[i].prepared - t[i].start) + (t[i].got_id - t[i].registered) + tail);
    }
    latency_print("cycle minus register and claim", &s, a);
}

#define T_OFF(f) offsetof(bench_times_t, f)

/* --trace: the sender's operation step by step (its debug line for each
 * state change, see trace_cb), from the request ID's arrival to both waits'
 * returns. The debug lines cost time of their own: compare with an
 * untraced run, not across. */
static void latency_trace(const bench_times_t *t, const bench_args_t *a)
{
    latency_phase("traced: Claim RPC (ID arrived .. READY)", t, a, T_OFF(got_id),
                  T_OFF(step[TRACE_READY]));
    latency_phase("traced: claim posted (READY .. CLAIMING)", t, a, T_OFF(step[TRACE_READY]),
                  T_OFF(step[TRACE_CLAIMING]));
    latency_phase("traced: receiver admits (CLAIMING .. TRANSFERRING)", t, a,
                  T_OFF(step[TRACE_CLAIMING]), T_OFF(step[TRACE_TRANSFERRING]));
    latency_phase("traced: data + flush (TRANSFERRING .. NOTIFYING)", t, a,
                  T_OFF(step[TRACE_TRANSFERRING]), T_OFF(step[TRACE_NOTIFYING]));
    latency_phase("traced: notice sent (NOTIFYING .. COMPLETE)", t, a, T_OFF(step[TRACE_NOTIFYING]),
                  T_OFF(step[TRACE_COMPLETE]));
    latency_phase("traced: sender wakes (COMPLETE .. its wait returns)", t, a,
                  T_OFF(step[TRACE_COMPLETE]), T_OFF(written));
    latency_phase("traced: receiver wakes (NOTIFYING .. its wait returns)", t, a,
                  T_OFF(step[TRACE_NOTIFYING]), T_OFF(seen));
}

static int run_latency(const bench_args_t *a)
{
    size_t bytes = (size_t)(a->iters + a->warmup) * sizeof(bench_times_t);
    bench_times_t *t = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    int id_pipe[2], status, rc;
    latency_cpu_t cpu;
    pid_t pid;

    if (t == MAP_FAILED || pipe(id_pipe) != 0) {
        return 1;
    }
    pid = fork();
    if (pid == 0) {
        close(id_pipe[0]);
        _exit(latency_passive(a, t, id_pipe[1], (int)getppid()) == 0 ? 0 : 1);
    }
    close(id_pipe[1]);
    latency_cpu_init(&cpu, a, (int)pid);
    rc = pid > 0 ? latency_active(a, t, id_pipe[0], &cpu) : -1;
    close(id_pipe[0]);
    if (pid <= 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
        WEXITSTATUS(status) != 0 || rc != 0) {
        return 1;
    }
    latency_phase("prep (writable_create)", t, a, T_OFF(start), T_OFF(prepared));
    latency_phase("register (op_publish)", t, a, T_OFF(prepared), T_OFF(registered));
    latency_phase("hand-off (pipe)", t, a, T_OFF(registered), T_OFF(got_id));
    latency_phase("claim (write_begin_by_id)", t, a, T_OFF(got_id), T_OFF(begun));
    latency_phase("transfer (begin_by_id return..wait)", t, a, T_OFF(begun), T_OFF(written));
    /* The transfer starts inside ferry_write_begin_by_id (after the Claim)
     * and may end before it returns, so the receiver's end is measured
     * from the sender's call, not from its return. */
    latency_phase("completion seen by receiver (from begin_by_id call)", t, a, T_OFF(got_id),
                  T_OFF(seen));
    latency_phase("cycle (create..receiver wait)", t, a, T_OFF(start), T_OFF(seen));
    latency_rest(t, a);
    latency_local(t, a);
    latency_phase("teardown: receiver destroy", t, a, T_OFF(seen), T_OFF(rx_destroyed));
    latency_phase("teardown: sender destroy", t, a, T_OFF(written), T_OFF(tx_destroyed));
    if (a->trace) {
        latency_trace(t, a);
    }
    latency_cpu_print(&cpu, a);
    munmap(t, bytes);
    return 0;
}

/* --- main ----------------------------------------------------------------- */

static void usage(void)
{
    fprintf(stderr, "usage: ferry_bench_data --op write|read --size S [--descs D] [--iters N]\n"
                    "                        [--warmup N] [--pairs P] [--progress thread|caller]\n"
                    "                        [--spin-us N] [--mem user|region|alloc] [--trace]\n"
                    "                        [--window W] [--peer-errors on|off]\n"
                    "       ferry_bench_data --create --size S [--iters N]\n"
                    "       ferry_bench_data --memcpy --size S [--iters N]\n"
                    "       ferry_bench_data --latency --coord HOST:PORT [--iters N] [--warmup N]\n"
                    "                        [--progress thread|caller] [--spin-us N] [--trace]\n"
                    "                        [--cpu-pid NAME=PID]...\n");
}

static int parse_args(int argc, char **argv, bench_args_t *a)
{
    static const struct option opts[] = {
        {"op", required_argument, NULL, 'o'},
        {"memcpy", no_argument, NULL, 'm'},
        {"latency", no_argument, NULL, 'l'},
        {"size", required_argument, NULL, 's'},
        {"descs", required_argument, NULL, 'd'},
        {"iters", required_argument, NULL, 'n'},
        {"warmup", required_argument, NULL, 'w'},
        {"pairs", required_argument, NULL, 'p'},
        {"progress", required_argument, NULL, 'g'},
        {"coord", required_argument, NULL, 'c'},
        {"spin-us", required_argument, NULL, 'u'},
        {"mem", required_argument, NULL, 'M'},
        {"create", no_argument, NULL, 'C'},
        {"trace", no_argument, NULL, 'T'},
        {"window", required_argument, NULL, 'W'},
        {"cpu-pid", required_argument, NULL, 'P'},
        {"peer-errors", required_argument, NULL, 'E'},
        {NULL, 0, NULL, 0},
    };
    const char *spin_env = getenv("FERRY_SPIN_US");
    long spin = spin_env != NULL ? atol(spin_env) : (long)FERRY_CONNECTOR_DEFAULT_SPIN_US;
    int c;

    *a = (bench_args_t){.size = 4096,
                        .descs = 1,
                        .iters = 100,
                        .warmup = 3,
                        .pairs = 1,
                        .window = 1,
                        .peer_errors = -1,
                        .mem = "user"};
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'o':
            a->op = optarg;
            break;
        case 'm':
            a->memcpy_mode = true;
            break;
        case 'l':
            a->latency_mode = true;
            break;
        case 's':
            if (ferry_parse_size(optarg, &a->size) != FERRY_OK) {
                return -1;
            }
            break;
        case 'd':
            a->descs = atoi(optarg);
            break;
        case 'n':
            a->iters = atol(optarg);
            break;
        case 'w':
            a->warmup = atol(optarg);
            break;
        case 'p':
            a->pairs = atoi(optarg);
            break;
        case 'g':
            a->caller_progress = strcmp(optarg, "caller") == 0;
            break;
        case 'c':
            a->coord = optarg;
            break;
        case 'u':
            spin = atol(optarg);
            break;
        case 'M':
            if (strcmp(optarg, "user") != 0 && strcmp(optarg, "region") != 0 &&
                strcmp(optarg, "alloc") != 0) {
                return -1;
            }
            a->mem = optarg;
            break;
        case 'E':
            if (strcmp(optarg, "on") != 0 && strcmp(optarg, "off") != 0) {
                return -1;
            }
            a->peer_errors = strcmp(optarg, "on") == 0;
            break;
        case 'C':
            a->create_mode = true;
            break;
        case 'T':
            a->trace = true;
            break;
        case 'W':
            a->window = atol(optarg);
            break;
        case 'P': { /* NAME=PID: a name, and a whole positive number */
            char *eq = strchr(optarg, '='), *end = NULL;
            long pid = eq != NULL ? strtol(eq + 1, &end, 10) : 0;
            if (eq == NULL || eq == optarg || end == eq + 1 || *end != '\0' || pid <= 0 ||
                pid > INT_MAX || a->n_cpu_pids == BENCH_CPU_PIDS_MAX) {
                return -1;
            }
            *eq = '\0';
            a->cpu_names[a->n_cpu_pids] = optarg;
            a->cpu_pids[a->n_cpu_pids++] = (int)pid;
            break;
        }
        default:
            return -1;
        }
    }
    if (spin < 0 || spin > (long)FERRY_CONNECTOR_MAX_SPIN_US) {
        return -1;
    }
    a->spin_us = (unsigned)spin;
    /* The trace follows one operation at a time. */
    if (a->iters < 1 || a->warmup < 0 || a->descs < 1 || a->pairs < 1 || a->size == 0 ||
        (uint64_t)a->descs > a->size || a->window < 1 || a->window > 64 ||
        (a->trace && a->window > 1) || a->size > UINT64_MAX / (uint64_t)a->window) {
        return -1;
    }
    if (a->op != NULL && strcmp(a->op, "write") != 0 && strcmp(a->op, "read") != 0) {
        return -1;
    }
    return (a->op != NULL) + a->memcpy_mode + a->latency_mode + a->create_mode == 1 &&
                   (!a->latency_mode || a->coord != NULL)
               ? 0
               : -1;
}

int main(int argc, char **argv)
{
    bench_args_t a;

    if (parse_args(argc, argv, &a) != 0) {
        usage();
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (a.memcpy_mode) {
        return run_memcpy(&a);
    }
    if (a.latency_mode) {
        return run_latency(&a);
    }
    if (a.create_mode) {
        return run_create(&a);
    }
    return run_bandwidth(&a);
}
