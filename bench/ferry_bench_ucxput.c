/*
 * ferry_bench_ucxput.c: the raw UCX reference for the data path (issue #5):
 * one put (or get) of the whole buffer and an endpoint flush, one operation
 * at a time, between two processes, with nothing of Ferry's around it (no
 * claim, no completion notice). One JSON object on stdout.
 *
 *   ferry_bench_ucxput --op write|read --size S [--iters N] [--warmup N]
 *                      [--mem user|ucx]
 *
 * --mem user (the default): both buffers are the program's own (mmap'ed and
 * touched), registered with ucp_mem_map of that address, as libferry
 * registers its callers' memory. On UCX 1.13 with shared-memory transports a
 * put into such memory has no direct path and is emulated over active
 * messages (copied twice); this is the like-for-like reference for Ferry.
 * --mem ucx: UCX allocates both buffers (UCP_MEM_MAP_ALLOCATE), as
 * ucx_perftest does, so shared-memory transports can put into them
 * directly. The difference between the two is UCX's, not Ferry's.
 *
 * The target process drives its worker (busy ucp_worker_progress) until the
 * initiator is done, as the emulated path needs. Both sides yield the CPU
 * every 16th idle poll, as libferry's spin does (ferry__spin_pause): on a
 * host with more runnable threads than cores a poll loop that never yields
 * loses whole time slices (the emulated put then took milliseconds), which
 * measured the scheduler, not UCX. The program forks the
 * target before any UCX state exists; addresses and the rkey go over a pipe.
 */
#include <getopt.h>
#include <sched.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ucp/api/ucp.h>

#include <ferry/ferry.h>

#include "bench_stats.h"

typedef struct {
    bool write;
    bool ucx_mem;
    uint64_t size;
    long iters;
    long warmup;
} args_t;

typedef struct {
    ucp_context_h context;
    ucp_worker_h worker;
    ucp_mem_h memh;
    void *buf;
} side_t;

static int io_all(int fd, void *buf, size_t len, bool out)
{
    uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = out ? write(fd, p, len) : read(fd, p, len);
        if (n <= 0) {
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int side_init(const args_t *a, side_t *s, int fill)
{
    ucp_params_t params = {0};
    ucp_worker_params_t wparams = {0};
    ucp_mem_map_params_t mparams = {0};
    ucp_config_t *config;
    ucs_status_t st;

    if (ucp_config_read(NULL, NULL, &config) != UCS_OK) {
        return -1;
    }
    params.field_mask = UCP_PARAM_FIELD_FEATURES;
    params.features = UCP_FEATURE_RMA;
    st = ucp_init(&params, config, &s->context);
    ucp_config_release(config);
    if (st != UCS_OK) {
        return -1;
    }
    wparams.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
    wparams.thread_mode = UCS_THREAD_MODE_SINGLE;
    if (ucp_worker_create(s->context, &wparams, &s->worker) != UCS_OK) {
        return -1;
    }
    mparams.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
    mparams.length = a->size;
    if (a->ucx_mem) {
        mparams.field_mask |= UCP_MEM_MAP_PARAM_FIELD_FLAGS;
        mparams.flags = UCP_MEM_MAP_ALLOCATE;
    } else {
        s->buf = mmap(NULL, a->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (s->buf == MAP_FAILED) {
            return -1;
        }
        mparams.address = s->buf;
    }
    if (ucp_mem_map(s->context, &mparams, &s->memh) != UCS_OK) {
        return -1;
    }
    if (a->ucx_mem) {
        ucp_mem_attr_t attr = {.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS};
        if (ucp_mem_query(s->memh, &attr) != UCS_OK) {
            return -1;
        }
        s->buf = attr.address;
    }
    memset(s->buf, fill, a->size); /* touched: no page faults while timed */
    return 0;
}

static void side_fini(const args_t *a, side_t *s)
{
    ucp_mem_unmap(s->context, s->memh);
    if (!a->ucx_mem) {
        munmap(s->buf, a->size);
    }
    ucp_worker_destroy(s->worker);
    ucp_cleanup(s->context);
}

/* The target: publishes its worker address, buffer address and rkey, then
 * drives its worker until *done. */
static int target(const args_t *a, int fd, volatile int *done)
{
    side_t s = {0};
    ucp_address_t *addr;
    size_t addr_len, rkey_len;
    void *rkey;
    uint64_t remote;

    if (side_init(a, &s, 0x22) != 0 ||
        ucp_worker_get_address(s.worker, &addr, &addr_len) != UCS_OK ||
        ucp_rkey_pack(s.context, s.memh, &rkey, &rkey_len) != UCS_OK) {
        return -1;
    }
    remote = (uint64_t)(uintptr_t)s.buf;
    if (io_all(fd, &addr_len, sizeof(addr_len), true) != 0 ||
        io_all(fd, addr, addr_len, true) != 0 ||
        io_all(fd, &rkey_len, sizeof(rkey_len), true) != 0 ||
        io_all(fd, rkey, rkey_len, true) != 0 || io_all(fd, &remote, sizeof(remote), true) != 0) {
        return -1;
    }
    for (unsigned i = 0; !__atomic_load_n(done, __ATOMIC_ACQUIRE);) {
        if (ucp_worker_progress(s.worker) == 0 && ++i % 16 == 0) {
            sched_yield();
        }
    }
    ucp_rkey_buffer_release(rkey);
    ucp_worker_release_address(s.worker, addr);
    side_fini(a, &s);
    return 0;
}

static ucs_status_t wait_req(ucp_worker_h worker, ucs_status_ptr_t req)
{
    ucs_status_t st;

    if (req == NULL) {
        return UCS_OK;
    }
    if (UCS_PTR_IS_ERR(req)) {
        return UCS_PTR_STATUS(req);
    }
    for (unsigned i = 0; (st = ucp_request_check_status(req)) == UCS_INPROGRESS;) {
        if (ucp_worker_progress(worker) == 0 && ++i % 16 == 0) {
            sched_yield();
        }
    }
    ucp_request_free(req);
    return st;
}

/* The initiator: returns the seconds the timed operations took, or < 0. */
static double initiator(const args_t *a, int fd)
{
    side_t s = {0};
    ucp_ep_params_t eparams = {0};
    ucp_request_param_t rparams = {0};
    ucp_ep_h ep;
    ucp_rkey_h rkey;
    size_t addr_len, rkey_len;
    uint8_t *addr, *rkey_buf;
    uint64_t remote, timed = 0;
    double secs = -1.0;

    if (side_init(a, &s, 0x11) != 0 || io_all(fd, &addr_len, sizeof(addr_len), false) != 0 ||
        (addr = malloc(addr_len)) == NULL || io_all(fd, addr, addr_len, false) != 0 ||
        io_all(fd, &rkey_len, sizeof(rkey_len), false) != 0 ||
        (rkey_buf = malloc(rkey_len)) == NULL || io_all(fd, rkey_buf, rkey_len, false) != 0 ||
        io_all(fd, &remote, sizeof(remote), false) != 0) {
        return -1.0;
    }
    eparams.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS;
    eparams.address = (const ucp_address_t *)addr;
    if (ucp_ep_create(s.worker, &eparams, &ep) != UCS_OK ||
        ucp_ep_rkey_unpack(ep, rkey_buf, &rkey) != UCS_OK) {
        return -1.0;
    }
    for (long i = 0; i < a->warmup + a->iters; i++) {
        uint64_t t0 = bench_now_ns();
        ucs_status_ptr_t req = a->write ? ucp_put_nbx(ep, s.buf, a->size, remote, rkey, &rparams)
                                        : ucp_get_nbx(ep, s.buf, a->size, remote, rkey, &rparams);
        if (wait_req(s.worker, req) != UCS_OK ||
            wait_req(s.worker, ucp_ep_flush_nbx(ep, &rparams)) != UCS_OK) {
            fprintf(stderr, "ucx put/get or flush failed\n");
            break;
        }
        if (i >= a->warmup) {
            timed += bench_now_ns() - t0;
        }
        if (i == a->warmup + a->iters - 1) {
            secs = (double)timed / 1e9;
        }
    }
    ucp_rkey_destroy(rkey);
    wait_req(s.worker, ucp_ep_close_nbx(ep, &rparams));
    side_fini(a, &s);
    free(addr);
    free(rkey_buf);
    return secs;
}

static int parse(int argc, char **argv, args_t *a)
{
    static const struct option opts[] = {
        {"op", required_argument, NULL, 'o'},    {"size", required_argument, NULL, 's'},
        {"iters", required_argument, NULL, 'n'}, {"warmup", required_argument, NULL, 'w'},
        {"mem", required_argument, NULL, 'm'},   {NULL, 0, NULL, 0}};
    int c;

    *a = (args_t){.write = true, .size = 1 << 20, .iters = 100, .warmup = 2};
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'o':
            if (strcmp(optarg, "write") != 0 && strcmp(optarg, "read") != 0) {
                return -1;
            }
            a->write = strcmp(optarg, "write") == 0;
            break;
        case 's':
            if (ferry_parse_size(optarg, &a->size) != FERRY_OK || a->size == 0) {
                return -1;
            }
            break;
        case 'n':
            a->iters = atol(optarg);
            break;
        case 'w':
            a->warmup = atol(optarg);
            break;
        case 'm':
            if (strcmp(optarg, "user") != 0 && strcmp(optarg, "ucx") != 0) {
                return -1;
            }
            a->ucx_mem = strcmp(optarg, "ucx") == 0;
            break;
        default:
            return -1;
        }
    }
    return a->iters >= 1 && a->warmup >= 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
    args_t a;
    int fds[2], status;
    volatile int *done;
    double secs;
    pid_t pid;

    if (parse(argc, argv, &a) != 0) {
        fprintf(stderr, "usage: ferry_bench_ucxput --op write|read --size S [--iters N] "
                        "[--warmup N] [--mem user|ucx]\n");
        return 2;
    }
    done = mmap(NULL, sizeof(*done), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (done == MAP_FAILED || pipe(fds) != 0) {
        return 1;
    }
    *done = 0;
    pid = fork();
    if (pid == 0) {
        close(fds[0]);
        _exit(target(&a, fds[1], done) == 0 ? 0 : 1);
    }
    close(fds[1]);
    secs = pid > 0 ? initiator(&a, fds[0]) : -1.0;
    __atomic_store_n(done, 1, __ATOMIC_RELEASE);
    if (pid <= 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
        WEXITSTATUS(status) != 0 || secs <= 0) {
        return 1;
    }
    printf("{\"bench\":\"data\",\"impl\":\"%s\",\"op\":\"%s\",\"size\":%llu,\"descs\":1,"
           "\"pairs\":1,\"iters\":%ld,\"gbps\":%.3f,\"us_per_op\":%.1f}\n",
           a.ucx_mem ? "ucx-raw-ucxmem" : "ucx-raw-user", a.write ? "write" : "read",
           (unsigned long long)a.size, a.iters, (double)a.size * (double)a.iters / secs / 1e9,
           secs * 1e6 / (double)a.iters);
    return 0;
}
