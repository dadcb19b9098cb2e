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
 *   --memcpy --size S [--iters N]
 *       memcpy bandwidth of one core (the ceiling for shared memory).
 *   --latency --coord HOST:PORT [--iters N]
 *       a 4 KiB write through the coordinator, phase by phase: prep
 *       (ferry_writable_create), register (Register RPC), lookup (Lookup
 *       RPC), transfer (ferry_write_begin .. ferry_op_wait on the sender),
 *       completion seen by the receiver, and the whole cycle.
 *
 * Processes: the program forks the passive side(s) before any UCX state
 * exists (UCX does not survive fork), so every process builds its own
 * connector. Timestamps are CLOCK_MONOTONIC, comparable across processes on
 * one machine; the latency run keeps them in a shared anonymous mapping.
 */
#include <getopt.h>
#include <stddef.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ferry/ferry.h>

#include "bench_stats.h"
#include "ferry/v1/coordinator.pb-c.h"
#include "rpc/rpc.h"

#define BENCH_TOKEN   "bench-access-token-0123456789abcdef"
#define BENCH_WAIT_MS 60000

typedef struct {
    const char *op; /* "write" or "read"; NULL with --memcpy/--latency */
    bool memcpy_mode;
    bool latency_mode;
    uint64_t size;
    int descs;
    long iters;
    long warmup;
    int pairs;
    bool caller_progress;
    const char *coord;
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

static ferry_connector_t *bench_connector(const bench_args_t *a, const char *name)
{
    ferry_connector_params_t params = {0};
    ferry_connector_t *c = NULL;

    params.field_mask =
        FERRY_CONNECTOR_PARAM_FIELD_NAME | FERRY_CONNECTOR_PARAM_FIELD_PROGRESS_MODE;
    params.name = name;
    params.progress_mode = a->caller_progress ? FERRY_PROGRESS_CALLER : FERRY_PROGRESS_THREAD;
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

static int passive_loop(const bench_args_t *a, int md_fd)
{
    bool write = strcmp(a->op, "write") == 0;
    ferry_descriptor_t *descs = calloc((size_t)a->descs, sizeof(*descs));
    uint8_t *buf = bench_alloc(a->size, 0x22);
    ferry_connector_t *c = bench_connector(a, "bench-passive");
    int rc = 0;

    if (descs == NULL || buf == NULL || c == NULL) {
        return -1;
    }
    bench_split(buf, a->size, a->descs, descs);
    for (long i = 0; i < a->iters + a->warmup && rc == 0; i++) {
        ferry_op_t *op = NULL;
        const uint8_t *md;
        size_t md_len;
        ferry_status_t s = write ? ferry_writable_create(c, descs, (size_t)a->descs, &op)
                                 : ferry_readable_create(c, descs, (size_t)a->descs, &op);
        if (s != FERRY_OK || (s = ferry_op_metadata(op, &md, &md_len)) != FERRY_OK) {
            rc = bench_fail("passive create", s);
        } else if (send_msg(md_fd, md, (uint32_t)md_len) != 0) {
            rc = -1;
        } else if ((s = ferry_op_wait(op, BENCH_WAIT_MS)) != FERRY_OK) {
            rc = bench_fail("passive wait", s);
        }
        ferry_op_destroy(op);
    }
    ferry_connector_destroy(c);
    munmap(buf, a->size);
    free(descs);
    return rc;
}

/* Returns the seconds the timed iterations took, or a negative number. */
static double active_loop(const bench_args_t *a, int md_fd)
{
    bool write = strcmp(a->op, "write") == 0;
    ferry_descriptor_t *descs = calloc((size_t)a->descs, sizeof(*descs));
    uint8_t *buf = bench_alloc(a->size, 0x11);
    ferry_connector_t *c = bench_connector(a, "bench-active");
    uint64_t timed_ns = 0;
    int rc = 0;

    if (descs == NULL || buf == NULL || c == NULL) {
        return -1.0;
    }
    bench_split(buf, a->size, a->descs, descs);
    for (long i = 0; i < a->iters + a->warmup && rc == 0; i++) {
        ferry_op_t *op = NULL;
        uint8_t *md;
        uint32_t md_len;
        ferry_status_t s;
        uint64_t t0;

        if (recv_msg(md_fd, &md, &md_len) != 0) {
            rc = -1;
            break;
        }
        t0 = bench_now_ns();
        s = write ? ferry_write_begin(c, descs, (size_t)a->descs, md, md_len, &op)
                  : ferry_read_begin(c, descs, (size_t)a->descs, md, md_len, &op);
        if (s != FERRY_OK || (s = ferry_op_wait(op, BENCH_WAIT_MS)) != FERRY_OK) {
            rc = bench_fail("active transfer", s);
        } else if (i >= a->warmup) {
            timed_ns += bench_now_ns() - t0;
        }
        ferry_op_destroy(op);
        free(md);
    }
    ferry_connector_destroy(c);
    munmap(buf, a->size);
    free(descs);
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
        printf("{\"bench\":\"data\",\"impl\":\"ferry\",\"op\":\"%s\",\"size\":%llu,\"descs\":%d,"
               "\"pairs\":%d,\"iters\":%ld,\"progress\":\"%s\",\"gbps\":%.3f,"
               "\"us_per_op\":%.1f}\n",
               a->op, (unsigned long long)a->size, a->descs, a->pairs, a->iters,
               a->caller_progress ? "caller" : "thread", gbps, worst * 1e6 / (double)a->iters);
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

/* --- small-operation latency ---------------------------------------------- */

/* Per iteration, CLOCK_MONOTONIC ns, in memory shared by both processes. */
typedef struct {
    uint64_t start;      /* passive: before ferry_writable_create */
    uint64_t prepared;   /* passive: created, metadata in hand */
    uint64_t registered; /* passive: Register answered */
    uint64_t lookup0;    /* active: got the ID, Lookup sent */
    uint64_t looked_up;  /* active: Lookup answered */
    uint64_t written;    /* active: ferry_op_wait returned COMPLETE */
    uint64_t seen;       /* passive: ferry_op_wait returned COMPLETE */
} bench_times_t;

static int coord_register(rpc_channel_t *ch, const char *id, const uint8_t *md, size_t md_len)
{
    Ferry__V1__RegisterRequest req = FERRY__V1__REGISTER_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    rpc_error_t err;
    ferry_status_t s;

    req.metadata = ferry__v1__rdma_metadata__unpack(NULL, md_len, md);
    if (req.metadata == NULL) {
        return -1;
    }
    req.request_id = (char *)id;
    req.access_token = BENCH_TOKEN;
    req.ttl_seconds = 60;
    s = rpc_unary(ch, "/ferry.v1.Coordinator/Register", &req.base,
                  &ferry__v1__register_response__descriptor, 10000, &resp, &err);
    ferry__v1__rdma_metadata__free_unpacked(req.metadata, NULL);
    if (s != FERRY_OK) {
        fprintf(stderr, "Register %s: %s\n", id, err.message);
        return -1;
    }
    protobuf_c_message_free_unpacked(resp, NULL);
    return 0;
}

/* The metadata of `id`, packed again (as ferry_write_begin takes bytes). */
static int coord_lookup(rpc_channel_t *ch, const char *id, uint8_t **md_p, size_t *len_p)
{
    Ferry__V1__LookupRequest req = FERRY__V1__LOOKUP_REQUEST__INIT;
    Ferry__V1__LookupResponse *resp = NULL;
    rpc_error_t err;

    req.request_id = (char *)id;
    req.access_token = BENCH_TOKEN;
    if (rpc_unary(ch, "/ferry.v1.Coordinator/Lookup", &req.base,
                  &ferry__v1__lookup_response__descriptor, 10000, (ProtobufCMessage **)&resp,
                  &err) != FERRY_OK) {
        fprintf(stderr, "Lookup %s: %s\n", id, err.message);
        return -1;
    }
    *len_p = ferry__v1__rdma_metadata__get_packed_size(resp->operation->metadata);
    *md_p = malloc(*len_p);
    if (*md_p != NULL) {
        ferry__v1__rdma_metadata__pack(resp->operation->metadata, *md_p);
    }
    ferry__v1__lookup_response__free_unpacked(resp, NULL);
    return *md_p != NULL ? 0 : -1;
}

static rpc_channel_t *bench_channel(const char *target)
{
    rpc_channel_params_t params = {.target = target};
    rpc_channel_t *ch = NULL;
    return rpc_channel_create(&params, &ch) == FERRY_OK ? ch : NULL;
}

static int latency_passive(const bench_args_t *a, bench_times_t *t, int id_fd, int run)
{
    ferry_connector_t *c = bench_connector(a, "bench-passive");
    rpc_channel_t *ch = bench_channel(a->coord);
    uint8_t *buf = bench_alloc(a->size, 0);
    ferry_descriptor_t d;
    int rc = 0;

    if (c == NULL || ch == NULL || buf == NULL) {
        return -1;
    }
    bench_split(buf, a->size, 1, &d);
    for (long i = 0; i < a->iters + a->warmup && rc == 0; i++) {
        bench_times_t *ti = &t[i];
        ferry_op_t *op = NULL;
        const uint8_t *md;
        size_t md_len;
        char id[64];
        ferry_status_t s;

        snprintf(id, sizeof(id), "lat-%d-%ld", run, i);
        ti->start = bench_now_ns();
        s = ferry_writable_create(c, &d, 1, &op);
        if (s != FERRY_OK || (s = ferry_op_metadata(op, &md, &md_len)) != FERRY_OK) {
            rc = bench_fail("writable", s);
            break;
        }
        ti->prepared = bench_now_ns();
        rc = coord_register(ch, id, md, md_len);
        ti->registered = bench_now_ns();
        /* The request ID goes to the sender by the application's own
         * channel (here a pipe). */
        if (rc == 0 && send_msg(id_fd, id, (uint32_t)strlen(id)) != 0) {
            rc = -1;
        }
        if (rc == 0 && (s = ferry_op_wait(op, BENCH_WAIT_MS)) != FERRY_OK) {
            rc = bench_fail("passive wait", s);
        }
        ti->seen = bench_now_ns();
        ferry_op_destroy(op);
    }
    rpc_channel_destroy(ch);
    ferry_connector_destroy(c);
    return rc;
}

static int latency_active(const bench_args_t *a, bench_times_t *t, int id_fd)
{
    ferry_connector_t *c = bench_connector(a, "bench-active");
    rpc_channel_t *ch = bench_channel(a->coord);
    uint8_t *buf = bench_alloc(a->size, 0x55);
    ferry_descriptor_t d;
    int rc = 0;

    if (c == NULL || ch == NULL || buf == NULL) {
        return -1;
    }
    bench_split(buf, a->size, 1, &d);
    for (long i = 0; i < a->iters + a->warmup && rc == 0; i++) {
        bench_times_t *ti = &t[i];
        ferry_op_t *op = NULL;
        uint8_t *id, *md = NULL;
        uint32_t id_len;
        size_t md_len;
        ferry_status_t s;

        if (recv_msg(id_fd, &id, &id_len) != 0) {
            rc = -1;
            break;
        }
        ti->lookup0 = bench_now_ns();
        rc = coord_lookup(ch, (const char *)id, &md, &md_len);
        ti->looked_up = bench_now_ns();
        if (rc == 0) {
            s = ferry_write_begin(c, &d, 1, md, md_len, &op);
            if (s != FERRY_OK || (s = ferry_op_wait(op, BENCH_WAIT_MS)) != FERRY_OK) {
                rc = bench_fail("write", s);
            }
            ti->written = bench_now_ns();
        }
        ferry_op_destroy(op);
        free(md);
        free(id);
    }
    rpc_channel_destroy(ch);
    ferry_connector_destroy(c);
    return rc;
}

static void latency_phase(const char *phase, const bench_times_t *t, const bench_args_t *a,
                          size_t from_off, size_t to_off)
{
    bench_samples_t s = {0};

    for (long i = a->warmup; i < a->iters + a->warmup; i++) {
        const uint8_t *ti = (const uint8_t *)&t[i];
        uint64_t from = *(const uint64_t *)(ti + from_off), to = *(const uint64_t *)(ti + to_off);
        bench_samples_add(&s, to - from);
    }
    bench_samples_sort(&s);
    printf("{\"bench\":\"latency\",\"phase\":\"%s\",\"size\":%llu,\"n\":%zu,\"progress\":\"%s\","
           "\"mean_us\":%.1f,\"p50_us\":%.1f,\"p99_us\":%.1f}\n",
           phase, (unsigned long long)a->size, s.n, a->caller_progress ? "caller" : "thread",
           bench_samples_mean_us(&s), bench_samples_pct_us(&s, 50), bench_samples_pct_us(&s, 99));
    bench_samples_free(&s);
}

/* The cycle without the registration RPC: everything but the etcd write. */
static void latency_rest(const bench_times_t *t, const bench_args_t *a)
{
    bench_samples_t s = {0};

    for (long i = a->warmup; i < a->iters + a->warmup; i++) {
        bench_samples_add(&s, (t[i].seen - t[i].start) - (t[i].registered - t[i].prepared));
    }
    bench_samples_sort(&s);
    printf("{\"bench\":\"latency\",\"phase\":\"cycle minus register\",\"size\":%llu,\"n\":%zu,"
           "\"progress\":\"%s\",\"mean_us\":%.1f,\"p50_us\":%.1f,\"p99_us\":%.1f}\n",
           (unsigned long long)a->size, s.n, a->caller_progress ? "caller" : "thread",
           bench_samples_mean_us(&s), bench_samples_pct_us(&s, 50), bench_samples_pct_us(&s, 99));
    bench_samples_free(&s);
}

#define T_OFF(f) offsetof(bench_times_t, f)

static int run_latency(const bench_args_t *a)
{
    size_t bytes = (size_t)(a->iters + a->warmup) * sizeof(bench_times_t);
    bench_times_t *t = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    int id_pipe[2], status, rc;
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
    rc = pid > 0 ? latency_active(a, t, id_pipe[0]) : -1;
    close(id_pipe[0]);
    if (pid <= 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
        WEXITSTATUS(status) != 0 || rc != 0) {
        return 1;
    }
    latency_phase("prep (writable_create)", t, a, T_OFF(start), T_OFF(prepared));
    latency_phase("register (Register RPC)", t, a, T_OFF(prepared), T_OFF(registered));
    latency_phase("hand-off (pipe)", t, a, T_OFF(registered), T_OFF(lookup0));
    latency_phase("lookup (Lookup RPC)", t, a, T_OFF(lookup0), T_OFF(looked_up));
    latency_phase("transfer (write_begin..wait)", t, a, T_OFF(looked_up), T_OFF(written));
    latency_phase("completion seen by receiver", t, a, T_OFF(looked_up), T_OFF(seen));
    latency_phase("cycle", t, a, T_OFF(start), T_OFF(seen));
    latency_rest(t, a);
    munmap(t, bytes);
    return 0;
}

/* --- main ----------------------------------------------------------------- */

static void usage(void)
{
    fprintf(stderr, "usage: ferry_bench_data --op write|read --size S [--descs D] [--iters N]\n"
                    "                        [--warmup N] [--pairs P] [--progress thread|caller]\n"
                    "       ferry_bench_data --memcpy --size S [--iters N]\n"
                    "       ferry_bench_data --latency --coord HOST:PORT [--iters N]\n");
}

static int parse_args(int argc, char **argv, bench_args_t *a)
{
    static const struct option opts[] = {{"op", required_argument, NULL, 'o'},
                                         {"memcpy", no_argument, NULL, 'm'},
                                         {"latency", no_argument, NULL, 'l'},
                                         {"size", required_argument, NULL, 's'},
                                         {"descs", required_argument, NULL, 'd'},
                                         {"iters", required_argument, NULL, 'n'},
                                         {"warmup", required_argument, NULL, 'w'},
                                         {"pairs", required_argument, NULL, 'p'},
                                         {"progress", required_argument, NULL, 'g'},
                                         {"coord", required_argument, NULL, 'c'},
                                         {NULL, 0, NULL, 0}};
    int c;

    *a = (bench_args_t){.size = 4096, .descs = 1, .iters = 100, .warmup = 3, .pairs = 1};
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
        default:
            return -1;
        }
    }
    if (a->iters < 1 || a->warmup < 0 || a->descs < 1 || a->pairs < 1 || a->size == 0 ||
        (uint64_t)a->descs > a->size) {
        return -1;
    }
    if (a->op != NULL && strcmp(a->op, "write") != 0 && strcmp(a->op, "read") != 0) {
        return -1;
    }
    return (a->op != NULL) + a->memcpy_mode + a->latency_mode == 1 &&
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
    return run_bandwidth(&a);
}
