/*
 * test_worker_region.c: memory registered once (ferry_mem_register,
 * ferry_mem_alloc, ferry_mem_deregister) with real UCX transfers.
 *
 * Two connectors in this one process, each with its own UCX context and
 * worker (UCX moves the bytes between them as between two processes, over
 * shared memory or, with UCX_TLS=tcp, TCP): "rx" owns the passive side,
 * "tx" the active side. What a region promises is checked from libferry's
 * internals (worker/ferry_int.h): connector->mem_maps counts every
 * ucp_mem_map, and a region's ops counts the descriptors holding it.
 *
 * Straddling descriptors are refused (FERRY_ERR_INVALID_ARGUMENT), not
 * mapped in part: a descriptor lies wholly inside one region or outside all.
 *
 * No sleep synchronizes anything: every wait is ferry_op_wait with a timeout
 * or a loop on the awaited condition with a deadline.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>

#include "common/clock.h"
#include "pair.h"
#include "worker/ferry_int.h"

#define WAIT_MS     20000
#define REGION_SIZE (4u << 20)

typedef struct {
    ferry_connector_t *rx; /* passive side, progress thread */
    ferry_connector_t *tx; /* active side, progress thread */
} world_t;

static ferry_connector_t *connector(const char *name, ferry_progress_mode_t mode)
{
    ferry_connector_params_t params = {0};
    ferry_connector_t *c = NULL;

    params.field_mask =
        FERRY_CONNECTOR_PARAM_FIELD_NAME | FERRY_CONNECTOR_PARAM_FIELD_PROGRESS_MODE;
    params.name = name;
    params.progress_mode = mode;
    assert_int_equal(ferry_connector_create(&params, &c), FERRY_OK);
    return c;
}

static int setup(void **state)
{
    world_t *w = calloc(1, sizeof(*w));

    w->rx = connector("rx", FERRY_PROGRESS_THREAD);
    w->tx = connector("tx", FERRY_PROGRESS_THREAD);
    *state = w;
    return 0;
}

static int teardown(void **state)
{
    world_t *w = *state;

    assert_int_equal(ferry_connector_destroy(w->tx), FERRY_OK);
    assert_int_equal(ferry_connector_destroy(w->rx), FERRY_OK);
    free(w);
    return 0;
}

/* The public counter (ferry_connector_stats_t.mem_maps), checked against
 * the internal one it reports. */
static uint64_t mem_maps(ferry_connector_t *c)
{
    ferry_connector_stats_t s;
    uint64_t n;

    ferry_connector_get_stats(c, &s);
    ferry__lock(c);
    n = c->mem_maps;
    ferry__unlock(c);
    assert_int_equal(s.mem_maps, n);
    return n;
}

static unsigned region_ops(ferry_region_t *r)
{
    unsigned n;

    ferry__lock(r->connector);
    n = r->ops;
    ferry__unlock(r->connector);
    return n;
}

static uint8_t pattern(uint32_t seed, size_t offset)
{
    return (uint8_t)(seed * 131u + offset * 13u + (offset >> 8) + (offset >> 16));
}

static void fill(uint8_t *buf, size_t size, uint32_t seed)
{
    for (size_t i = 0; i < size; i++) {
        buf[i] = pattern(seed, i);
    }
}

static void assert_pattern(const uint8_t *buf, size_t size, uint32_t seed)
{
    for (size_t i = 0; i < size; i++) {
        if (buf[i] != pattern(seed, i)) {
            fail_msg("byte %zu: %u, expected %u", i, buf[i], pattern(seed, i));
        }
    }
}

static void assert_filled(const uint8_t *buf, size_t size, uint8_t value)
{
    for (size_t i = 0; i < size; i++) {
        if (buf[i] != value) {
            fail_msg("byte %zu: %u, expected untouched %u", i, buf[i], value);
        }
    }
}

static ferry_descriptor_t desc(void *ptr, size_t size)
{
    return (ferry_descriptor_t){ptr, size, FERRY_DEVICE_HOST_INIT};
}

/* One transfer from tx's src into rx's dst (write) or from rx's dst into
 * tx's src (read); both operations end COMPLETE. */
static void transfer(world_t *w, bool write, ferry_descriptor_t rx_d, ferry_descriptor_t tx_d)
{
    ferry_op_t *passive = NULL, *active = NULL;
    const uint8_t *md;
    size_t md_len;

    assert_int_equal(write ? ferry_writable_create(w->rx, &rx_d, 1, &passive)
                           : ferry_readable_create(w->rx, &rx_d, 1, &passive),
                     FERRY_OK);
    assert_int_equal(ferry_op_metadata(passive, &md, &md_len), FERRY_OK);
    assert_int_equal(write ? ferry_write_begin(w->tx, &tx_d, 1, md, md_len, &active)
                           : ferry_read_begin(w->tx, &tx_d, 1, md, md_len, &active),
                     FERRY_OK);
    assert_int_equal(ferry_op_wait(active, WAIT_MS), FERRY_OK);
    assert_int_equal(ferry_op_wait(passive, WAIT_MS), FERRY_OK);
    ferry_op_destroy(active);
    ferry_op_destroy(passive);
}

/* A write and a read on descriptors inside registered regions map nothing
 * on either side, and move the right bytes to the right place. */
static void test_ops_on_region_map_nothing(void **state)
{
    world_t *w = *state;
    uint8_t *dst = calloc(1, REGION_SIZE), *src = malloc(REGION_SIZE);
    ferry_region_t *rx_r, *tx_r;
    uint64_t rx_maps, tx_maps;
    size_t off = 12345, len = 1u << 20;

    assert_int_equal(
        ferry_mem_register(w->rx, dst, REGION_SIZE, (ferry_device_t)FERRY_DEVICE_HOST_INIT, &rx_r),
        FERRY_OK);
    assert_int_equal(
        ferry_mem_register(w->tx, src, REGION_SIZE, (ferry_device_t)FERRY_DEVICE_HOST_INIT, &tx_r),
        FERRY_OK);
    rx_maps = mem_maps(w->rx);
    tx_maps = mem_maps(w->tx);
    fill(src + 777, len, 5);

    transfer(w, true, desc(dst + off, len), desc(src + 777, len));
    assert_pattern(dst + off, len, 5);
    assert_filled(dst, off, 0);
    assert_filled(dst + off + len, REGION_SIZE - off - len, 0);

    /* And back: read rx's bytes into another place of tx's region. */
    memset(src, 0, REGION_SIZE);
    transfer(w, false, desc(dst + off, len), desc(src + 2 * len, len));
    assert_pattern(src + 2 * len, len, 5);
    assert_filled(src, 2 * len, 0);

    assert_int_equal(mem_maps(w->rx), rx_maps);
    assert_int_equal(mem_maps(w->tx), tx_maps);
    assert_int_equal(region_ops(rx_r), 0);
    assert_int_equal(region_ops(tx_r), 0);
    assert_int_equal(ferry_mem_deregister(rx_r), FERRY_OK);
    assert_int_equal(ferry_mem_deregister(tx_r), FERRY_OK);
    free(dst);
    free(src);
}

/* Memory in no region is still registered per operation (the counter
 * counts: the test above would see a map). */
static void test_unregistered_memory_maps_per_op(void **state)
{
    world_t *w = *state;
    uint8_t *dst = calloc(1, 8192), *src = malloc(8192);
    uint64_t rx_maps = mem_maps(w->rx);

    fill(src, 8192, 9);
    transfer(w, true, desc(dst, 8192), desc(src, 8192));
    assert_pattern(dst, 8192, 9);
    assert_int_equal(mem_maps(w->rx), rx_maps + 1);
    free(dst);
    free(src);
}

/* A descriptor that straddles a region's edge is refused on either side,
 * naming the descriptor; nothing is mapped or held. */
static void test_straddling_descriptor_refused(void **state)
{
    world_t *w = *state;
    uint8_t *mem = calloc(1, 2 * 65536);
    ferry_descriptor_t ds[2] = {desc(mem + 65536, 4096), desc(mem + 65536 - 100, 4096)};
    ferry_region_t *r;
    ferry_op_t *op = NULL, *ok = NULL;
    uint64_t maps;
    const uint8_t *md;
    size_t md_len;

    /* The region is the second half; ds[1] starts 100 bytes before it. */
    assert_int_equal(
        ferry_mem_register(w->rx, mem + 65536, 65536, (ferry_device_t)FERRY_DEVICE_HOST_INIT, &r),
        FERRY_OK);
    maps = mem_maps(w->rx);
    assert_int_equal(ferry_writable_create(w->rx, ds, 2, &op), FERRY_ERR_INVALID_ARGUMENT);
    assert_null(op);
    assert_non_null(strstr(ferry_last_error_message(), "descriptor 1"));
    assert_non_null(strstr(ferry_last_error_message(), "straddles"));
    /* Past the far edge too. */
    ds[1] = desc(mem + 2 * 65536 - 10, 20);
    assert_int_equal(ferry_readable_create(w->rx, &ds[1], 1, &op), FERRY_ERR_INVALID_ARGUMENT);
    assert_int_equal(mem_maps(w->rx), maps);
    assert_int_equal(region_ops(r), 0);

    /* The active side refuses a straddling local descriptor the same way. */
    assert_int_equal(ferry_writable_create(w->tx, &ds[0], 1, &ok), FERRY_OK); /* tx: no region */
    assert_int_equal(ferry_op_metadata(ok, &md, &md_len), FERRY_OK);
    ds[1] = desc(mem + 65536 - 2048, 4096);
    assert_int_equal(ferry_write_begin(w->rx, &ds[1], 1, md, md_len, &op),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(ferry_last_error_message(), "straddles"));
    assert_int_equal(region_ops(r), 0);
    ferry_op_destroy(ok);
    assert_int_equal(ferry_mem_deregister(r), FERRY_OK);
    free(mem);
}

/* ferry_op_in_region says, per descriptor and on either side, whether the
 * operation reaches its memory through a region (held by libferry while
 * data may move): true inside one registered before the operation, however
 * the caller came by the address; false outside every region, for a region
 * registered after the operation was made, for an index out of range and
 * for NULL. */
static void test_op_in_region(void **state)
{
    world_t *w = *state;
    uint8_t *dst = calloc(1, 3 * 65536), *src = calloc(1, 2 * 65536);
    ferry_descriptor_t d[2] = {desc(dst + 65536 + 100, 4096), desc(dst, 4096)};
    ferry_descriptor_t s[2] = {desc(src + 8, 4096), desc(src + 65536, 4096)};
    ferry_region_t *rx_r, *rx_late, *tx_r;
    ferry_op_t *passive, *active;
    const uint8_t *md;
    size_t md_len;

    assert_int_equal(ferry_mem_register(w->rx, dst + 65536, 65536,
                                        (ferry_device_t)FERRY_DEVICE_HOST_INIT, &rx_r),
                     FERRY_OK);
    assert_int_equal(
        ferry_mem_register(w->tx, src, 65536, (ferry_device_t)FERRY_DEVICE_HOST_INIT, &tx_r),
        FERRY_OK);
    fill(src + 8, 4096, 17);
    assert_int_equal(ferry_writable_create(w->rx, d, 2, &passive), FERRY_OK);
    /* Registered after the operation was made: not the operation's. */
    assert_int_equal(
        ferry_mem_register(w->rx, dst, 65536, (ferry_device_t)FERRY_DEVICE_HOST_INIT, &rx_late),
        FERRY_OK);
    assert_true(ferry_op_in_region(passive, 0));
    assert_false(ferry_op_in_region(passive, 1));
    assert_false(ferry_op_in_region(passive, 2));
    assert_false(ferry_op_in_region(NULL, 0));

    assert_int_equal(ferry_op_metadata(passive, &md, &md_len), FERRY_OK);
    assert_int_equal(ferry_write_begin(w->tx, s, 2, md, md_len, &active), FERRY_OK);
    assert_true(ferry_op_in_region(active, 0));
    assert_false(ferry_op_in_region(active, 1));
    assert_int_equal(ferry_op_wait(active, WAIT_MS), FERRY_OK);
    assert_int_equal(ferry_op_wait(passive, WAIT_MS), FERRY_OK);
    /* Fixed when made: the same once final. */
    assert_true(ferry_op_in_region(active, 0) && ferry_op_in_region(passive, 0));
    assert_pattern(dst + 65536 + 100, 4096, 17);
    ferry_op_destroy(active);
    ferry_op_destroy(passive);
    assert_int_equal(ferry_mem_deregister(rx_late), FERRY_OK);
    assert_int_equal(ferry_mem_deregister(rx_r), FERRY_OK);
    assert_int_equal(ferry_mem_deregister(tx_r), FERRY_OK);
    free(dst);
    free(src);
}

typedef struct {
    ferry_connector_t *c;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool held;     /* the thread holds c's lock */
    bool let_go;   /* told to let it go */
    bool released; /* it did */
} lock_holder_t;

/* Holds the connector's lock, as a deregistration does across a large
 * region's ucp_mem_unmap, until told to let go or 10 s passed. */
static void *hold_connector_lock(void *arg)
{
    lock_holder_t *h = arg;
    struct timespec until = ferry__clock_in_ms(CLOCK_MONOTONIC, 10000);

    ferry__lock(h->c);
    pthread_mutex_lock(&h->lock);
    h->held = true;
    pthread_cond_broadcast(&h->cond);
    while (!h->let_go && pthread_cond_timedwait(&h->cond, &h->lock, &until) == 0) {
    }
    pthread_mutex_unlock(&h->lock);
    ferry__unlock(h->c);
    pthread_mutex_lock(&h->lock);
    h->released = true;
    pthread_mutex_unlock(&h->lock);
    return NULL;
}

/* An operation's status and error are read without the connector's lock,
 * which a deregistration holds across ucp_mem_unmap (half a second for
 * 2 GiB): Python reads the status with the GIL held, so a poll during a
 * large region's close stopped every Python thread that long. The reads
 * answer while another thread holds the lock, and say what the lock's
 * holders last wrote. */
static void test_status_read_while_the_lock_is_held(void **state)
{
    world_t *w = *state;
    uint8_t *dst = calloc(1, 4096);
    ferry_descriptor_t d = desc(dst, 4096);
    lock_holder_t h = {.c = w->rx};
    ferry_op_t *op;
    pthread_t thread;
    const char *msg = NULL;

    assert_int_equal(ferry_writable_create(w->rx, &d, 1, &op), FERRY_OK);
    assert_int_equal(ferry_op_status(op), FERRY_OP_STATUS_INITIALIZED);
    assert_int_equal(ferry_op_cancel(op), FERRY_OK);
    pthread_mutex_init(&h.lock, NULL);
    ferry__cond_init_clock(&h.cond, CLOCK_MONOTONIC);
    assert_int_equal(pthread_create(&thread, NULL, hold_connector_lock, &h), 0);
    struct timespec until = ferry__clock_in_ms(CLOCK_MONOTONIC, WAIT_MS);
    pthread_mutex_lock(&h.lock);
    while (!h.held && pthread_cond_timedwait(&h.cond, &h.lock, &until) == 0) {
    }
    assert_true(h.held);
    pthread_mutex_unlock(&h.lock);

    ferry_op_status_t status = ferry_op_status(op);
    ferry_status_t code = ferry_op_error(op, &msg);
    pthread_mutex_lock(&h.lock);
    bool released = h.released;
    h.let_go = true;
    pthread_cond_broadcast(&h.cond);
    pthread_mutex_unlock(&h.lock);
    pthread_join(thread, NULL);

    assert_false(released); /* answered with the lock held elsewhere */
    assert_int_equal(status, FERRY_OP_STATUS_CANCELLED);
    assert_int_equal(code, FERRY_ERR_CANCELLED);
    assert_non_null(msg);
    assert_true(msg[0] != '\0');
    ferry_op_destroy(op);
    pthread_cond_destroy(&h.cond);
    pthread_mutex_destroy(&h.lock);
    free(dst);
}

/* Regions never overlap; a connector with a region left refuses to go. */
static void test_overlap_and_connector_busy(void **state)
{
    world_t *w = *state;
    uint8_t *mem = malloc(65536);
    ferry_region_t *r, *r2 = NULL;

    assert_int_equal(
        ferry_mem_register(w->rx, mem, 32768, (ferry_device_t)FERRY_DEVICE_HOST_INIT, &r),
        FERRY_OK);
    assert_int_equal(
        ferry_mem_register(w->rx, mem + 32767, 100, (ferry_device_t)FERRY_DEVICE_HOST_INIT, &r2),
        FERRY_ERR_ALREADY_EXISTS);
    assert_null(r2);
    assert_int_equal(ferry_mem_register(w->rx, mem, 0, (ferry_device_t)FERRY_DEVICE_HOST_INIT, &r2),
                     FERRY_ERR_INVALID_ARGUMENT);
    /* Adjacent is fine. */
    assert_int_equal(
        ferry_mem_register(w->rx, mem + 32768, 32768, (ferry_device_t)FERRY_DEVICE_HOST_INIT, &r2),
        FERRY_OK);
    assert_int_equal(ferry_connector_destroy(w->rx), FERRY_ERR_BUSY);
    assert_int_equal(ferry_mem_deregister(r2), FERRY_OK);
    assert_int_equal(ferry_mem_deregister(r), FERRY_OK);
    assert_int_equal(ferry_mem_deregister(NULL), FERRY_OK);
    free(mem);
}

/* Deregistering a region that operations use is FERRY_ERR_BUSY and changes
 * nothing: the passive side until its operation is final or destroyed, the
 * active side until its transfer is over. */
static void test_deregister_busy_while_used(void **state)
{
    world_t *w = *state;
    ferry_connector_t *tx = connector("tx-caller", FERRY_PROGRESS_CALLER);
    uint8_t *dst = calloc(1, 65536), *src = malloc(65536);
    ferry_region_t *rx_r, *tx_r;
    ferry_op_t *passive, *passive2, *active;
    ferry_descriptor_t d = desc(dst, 4096), s = desc(src, 4096);
    const uint8_t *md;
    size_t md_len;

    assert_int_equal(
        ferry_mem_register(w->rx, dst, 65536, (ferry_device_t)FERRY_DEVICE_HOST_INIT, &rx_r),
        FERRY_OK);
    assert_int_equal(
        ferry_mem_register(tx, src, 65536, (ferry_device_t)FERRY_DEVICE_HOST_INIT, &tx_r),
        FERRY_OK);
    fill(src, 65536, 3);

    /* A passive operation that nobody touches holds its region. */
    assert_int_equal(ferry_writable_create(w->rx, &d, 1, &passive2), FERRY_OK);
    assert_int_equal(ferry_mem_deregister(rx_r), FERRY_ERR_BUSY);
    assert_non_null(strstr(ferry_last_error_message(), "still use it"));
    ferry_op_destroy(passive2);

    /* The active side (caller progress: nothing moves until it waits) holds
     * its region from begin until the transfer is over. */
    assert_int_equal(ferry_writable_create(w->rx, &d, 1, &passive), FERRY_OK);
    assert_int_equal(ferry_op_metadata(passive, &md, &md_len), FERRY_OK);
    assert_int_equal(ferry_write_begin(tx, &s, 1, md, md_len, &active), FERRY_OK);
    assert_int_equal(ferry_mem_deregister(tx_r), FERRY_ERR_BUSY);
    assert_int_equal(ferry_mem_deregister(rx_r), FERRY_ERR_BUSY);
    assert_int_equal(ferry_op_wait(active, WAIT_MS), FERRY_OK);
    assert_int_equal(ferry_op_wait(passive, WAIT_MS), FERRY_OK);
    assert_pattern(dst, 4096, 3);

    /* Final operations, not yet destroyed, no longer hold anything. */
    assert_int_equal(ferry_mem_deregister(tx_r), FERRY_OK);
    assert_int_equal(ferry_mem_deregister(rx_r), FERRY_OK);
    ferry_op_destroy(active);
    ferry_op_destroy(passive);
    assert_int_equal(ferry_connector_destroy(tx), FERRY_OK);
    free(dst);
    free(src);
}

/* An active operation holds its local region until it is final and its
 * data has stopped moving: cancelled before its claim was answered (no data
 * posted) it lets go at once; held after its flush (the fault hook keeps it
 * TRANSFERRING, data done) it holds until it ends. */
static void test_active_holds_region_until_final(void **state)
{
    world_t *w = *state;
    ferry_connector_t *tx = connector("tx-caller", FERRY_PROGRESS_CALLER);
    uint8_t *dst = calloc(1, 4096), *src = malloc(4096);
    ferry_descriptor_t d = desc(dst, 4096), s = desc(src, 4096);
    ferry_region_t *r;
    ferry_op_t *passive, *active;
    const uint8_t *md;
    size_t md_len;

    fill(src, 4096, 21);
    assert_int_equal(ferry_mem_register(tx, src, 4096, d.device, &r), FERRY_OK);
    assert_int_equal(ferry_writable_create(w->rx, &d, 1, &passive), FERRY_OK);
    assert_int_equal(ferry_op_metadata(passive, &md, &md_len), FERRY_OK);
    assert_int_equal(ferry_write_begin(tx, &s, 1, md, md_len, &active), FERRY_OK);
    assert_int_equal(ferry_mem_deregister(r), FERRY_ERR_BUSY);
    assert_int_equal(ferry_op_cancel(active), FERRY_OK);
    assert_int_equal(ferry_mem_deregister(r), FERRY_OK);
    ferry_op_destroy(active);
    ferry_op_destroy(passive);

    assert_int_equal(ferry_mem_register(tx, src, 4096, d.device, &r), FERRY_OK);
    assert_int_equal(ferry_writable_create(w->rx, &d, 1, &passive), FERRY_OK);
    assert_int_equal(ferry_op_metadata(passive, &md, &md_len), FERRY_OK);
    atomic_store(&ferry__test_notice_held, false);
    atomic_store(&ferry__test_hold_notice, true);
    assert_int_equal(ferry_write_begin(tx, &s, 1, md, md_len, &active), FERRY_OK);
    for (int i = 0; i < WAIT_MS / 10 && !atomic_load(&ferry__test_notice_held); i++) {
        assert_int_equal(ferry_op_wait(active, 10), FERRY_ERR_TIMED_OUT);
    }
    assert_true(atomic_load(&ferry__test_notice_held));
    assert_pattern(dst, 4096, 21); /* the data moved; the operation is not final */
    assert_int_equal(ferry_mem_deregister(r), FERRY_ERR_BUSY);
    assert_int_equal(ferry_op_cancel(active), FERRY_OK);
    assert_int_equal(ferry_mem_deregister(r), FERRY_OK);
    atomic_store(&ferry__test_hold_notice, false);
    ferry_op_destroy(active);
    ferry_op_destroy(passive);
    assert_int_equal(ferry_connector_destroy(tx), FERRY_OK);
    free(dst);
    free(src);
}

/* A caller-mode connector on TCP alone, whatever UCX_TLS the test runs
 * with: UCX then emulates get in software, so a get needs its target's
 * progress, and a test that stops driving the target holds the get in
 * flight. Caller mode: nothing moves unless the test drives it, and no
 * thread of ours runs while the environment changes. */
static ferry_connector_t *tcp_connector(const char *name)
{
    const char *old = getenv("UCX_TLS");
    char *saved = old != NULL ? strdup(old) : NULL;
    ferry_connector_t *c;

    assert_int_equal(setenv("UCX_TLS", "tcp", 1), 0);
    c = connector(name, FERRY_PROGRESS_CALLER);
    if (saved != NULL) {
        setenv("UCX_TLS", saved, 1);
        free(saved);
    } else {
        unsetenv("UCX_TLS");
    }
    return c;
}

static unsigned lanes_in_xfer(ferry_op_t *op)
{
    unsigned n;

    ferry__lock(op->connector);
    n = ferry__staged_in_xfer(op);
    ferry__unlock(op->connector);
    return n;
}

/* The staged path with a direct reader: the passive side stages (one slot,
 * so the reader gets chunk by chunk) and the reader gets each chunk straight
 * into its own region. Cancelled while a lane's get is in flight, the read
 * holds the region (FERRY_ERR_BUSY) until that get has settled: UCX still
 * writes into the memory until then, and deregistering frees it. */
static void test_staged_get_in_flight_holds_region(void **state)
{
    enum { SIZE = 65536, CHUNK = 16384 };
    ferry_connector_t *rx = tcp_connector("rx-tcp"), *tx = tcp_connector("tx-tcp");
    uint8_t *src = malloc(SIZE);
    ferry_descriptor_t rd = desc(src, SIZE), ld;
    ferry_op_t *passive, *active;
    ferry_region_t *r;
    ferry_status_t st;
    const uint8_t *md;
    size_t md_len;
    int64_t deadline = pair_now_ms() + WAIT_MS;
    unsigned busy_seen = 0;
    void *p;
    (void)state;

    fill(src, SIZE, 31);
    assert_int_equal(ferry_mem_alloc(tx, SIZE, rd.device, &r, &p), FERRY_OK);
    ld = desc(p, SIZE);
    atomic_store(&ferry__test_staging.chunk, CHUNK);
    atomic_store(&ferry__test_staging.slots, 1);
    atomic_store(&ferry__test_staging.force, true);
    st = ferry_readable_create(rx, &rd, 1, &passive);
    atomic_store(&ferry__test_staging.force, false); /* the reader goes direct */
    atomic_store(&ferry__test_staging.chunk, 0);
    atomic_store(&ferry__test_staging.slots, 0);
    assert_int_equal(st, FERRY_OK);
    assert_int_equal(ferry_op_metadata(passive, &md, &md_len), FERRY_OK);
    assert_int_equal(ferry_read_begin(tx, &ld, 1, md, md_len, &active), FERRY_OK);

    /* Drive both until the reader's first get is posted; rx, its target,
     * is not driven again before the cancel, so the get stays in flight. */
    while (lanes_in_xfer(active) == 0 && pair_now_ms() < deadline) {
        assert_int_equal(ferry_connector_progress(rx), FERRY_OK);
        assert_int_equal(ferry_connector_progress(tx), FERRY_OK);
    }
    assert_int_equal(lanes_in_xfer(active), 1);
    assert_int_equal(ferry_op_cancel(active), FERRY_OK);
    assert_int_equal(ferry_op_status(active), FERRY_OP_STATUS_CANCELLED);

    /* BUSY while the get is in flight, OK once it settled. */
    for (;;) {
        unsigned in_xfer = lanes_in_xfer(active);
        st = ferry_mem_deregister(r);
        if (st == FERRY_OK) {
            assert_int_equal(in_xfer, 0);
            break;
        }
        assert_int_equal(st, FERRY_ERR_BUSY);
        busy_seen++;
        assert_true(pair_now_ms() < deadline);
        assert_int_equal(ferry_connector_progress(rx), FERRY_OK);
        assert_int_equal(ferry_connector_progress(tx), FERRY_OK);
    }
    assert_true(busy_seen > 0);
    ferry_op_destroy(active);
    ferry_op_destroy(passive);
    assert_int_equal(ferry_connector_destroy(rx), FERRY_OK);
    assert_int_equal(ferry_connector_destroy(tx), FERRY_OK);
    free(src);
}

/* Begins a write from tx into passive whose notice the fault hook holds
 * back (as far as the passive side knows, its puts may still be in flight
 * once it is admitted); returns a copy of passive's metadata (*md_len_p
 * bytes, the caller's to free), for a later claim. */
static uint8_t *begin_held_write(ferry_connector_t *tx, ferry_op_t *passive,
                                 const ferry_descriptor_t *s, size_t *md_len_p,
                                 ferry_op_t **active_p)
{
    const uint8_t *md;
    uint8_t *copy;

    assert_int_equal(ferry_op_metadata(passive, &md, md_len_p), FERRY_OK);
    copy = malloc(*md_len_p);
    memcpy(copy, md, *md_len_p);
    atomic_store(&ferry__test_notice_held, false);
    atomic_store(&ferry__test_hold_notice, true);
    assert_int_equal(ferry_write_begin(tx, s, 1, md, *md_len_p, active_p), FERRY_OK);
    return copy;
}

/* A writable in a region whose writer was admitted and has not settled
 * (its notice held by the fault hook: as far as the owner knows, its puts
 * may still be in flight, which over TCP this process's worker copies into
 * the memory) keeps the region when its owner cancels it, and when it
 * destroys it, until the writer's notice comes; a destroyed one still
 * refuses new claims NOT_FOUND meanwhile. */
static void test_passive_holds_region_until_writer_settles(void **state)
{
    world_t *w = *state;
    uint8_t *src = malloc(8192), *md_copy;
    ferry_region_t *r;
    ferry_op_t *passive, *active, *late;
    ferry_descriptor_t d, s = desc(src, 8192);
    ferry_status_t st;
    size_t md_len;
    int64_t deadline;
    void *p;

    fill(src, 8192, 41);
    assert_int_equal(ferry_mem_alloc(w->rx, 8192, s.device, &r, &p), FERRY_OK);
    d = desc(p, 8192);
    assert_int_equal(ferry_writable_create(w->rx, &d, 1, &passive), FERRY_OK);
    md_copy = begin_held_write(w->tx, passive, &s, &md_len, &active);
    for (int i = 0; i < WAIT_MS / 10 && !atomic_load(&ferry__test_notice_held); i++) {
        assert_int_equal(ferry_op_wait(active, 10), FERRY_ERR_TIMED_OUT);
    }
    assert_true(atomic_load(&ferry__test_notice_held));

    assert_int_equal(ferry_op_cancel(passive), FERRY_OK);
    assert_int_equal(ferry_op_wait(passive, 0), FERRY_ERR_CANCELLED);
    assert_int_equal(ferry_mem_deregister(r), FERRY_ERR_BUSY);
    ferry_op_destroy(passive);
    assert_int_equal(ferry_mem_deregister(r), FERRY_ERR_BUSY);
    assert_int_equal(ferry_write_begin(w->tx, &s, 1, md_copy, md_len, &late), FERRY_OK);
    assert_int_equal(ferry_op_wait(late, WAIT_MS), FERRY_ERR_NOT_FOUND);
    ferry_op_destroy(late);
    assert_int_equal(ferry_mem_deregister(r), FERRY_ERR_BUSY);

    /* The writer, cancelled, sends the notice it owes: the region goes. */
    atomic_store(&ferry__test_hold_notice, false);
    assert_int_equal(ferry_op_cancel(active), FERRY_OK);
    deadline = pair_now_ms() + WAIT_MS;
    while ((st = ferry_mem_deregister(r)) == FERRY_ERR_BUSY && pair_now_ms() < deadline) {
        poll(NULL, 0, 1); /* a deadline, not a guess: the loop ends on the condition */
    }
    assert_int_equal(st, FERRY_OK);
    ferry_op_destroy(active);
    free(md_copy);
    free(src);
}

/* ferry_op_destroy_nowait's released callback: counts its calls. */
static void note_released(void *arg)
{
    atomic_fetch_add((atomic_uint *)arg, 1);
}

/* The same hold on memory in no region, for a caller that destroys with
 * ferry_op_destroy_nowait: released comes only once the admitted writer has
 * settled (its notice came), never while its puts may still land; with no
 * writer admitted it comes from inside the destroy. The passive side runs in
 * caller progress mode here, so each step happens when the test drives it:
 * after destroy, driving its loop frees whatever nothing holds. Before,
 * such an op was freed then (only an op in a region was held), and its
 * caller could only keep the memory until the connector went. */
static void test_passive_nowait_released_when_writer_settles(void **state)
{
    world_t *w = *state;
    ferry_connector_t *rx = connector("rx-caller", FERRY_PROGRESS_CALLER);
    uint8_t *src = malloc(8192), *dst = calloc(1, 8192), *md_copy;
    ferry_op_t *passive, *active, *late, *idle;
    ferry_descriptor_t d = desc(dst, 8192), s = desc(src, 8192);
    atomic_uint released = 0, idle_released = 0;
    size_t md_len;
    ferry_status_t st;
    int64_t deadline = pair_now_ms() + WAIT_MS;

    fill(src, 8192, 43);
    assert_int_equal(ferry_writable_create(rx, &d, 1, &idle), FERRY_OK);
    ferry_op_destroy_nowait(idle, note_released, &idle_released);
    assert_int_equal(atomic_load(&idle_released), 1); /* nothing admitted: at once */

    assert_int_equal(ferry_writable_create(rx, &d, 1, &passive), FERRY_OK);
    assert_false(ferry_op_in_region(passive, 0));
    md_copy = begin_held_write(w->tx, passive, &s, &md_len, &active);
    while (!atomic_load(&ferry__test_notice_held) && pair_now_ms() < deadline) {
        assert_int_equal(ferry_connector_progress(rx), FERRY_OK); /* admits the claim */
        (void)ferry_op_wait(active, 1);
    }
    assert_true(atomic_load(&ferry__test_notice_held));

    assert_int_equal(ferry_op_cancel(passive), FERRY_OK);
    ferry_op_destroy_nowait(passive, note_released, &released);
    assert_int_equal(ferry_connector_progress(rx), FERRY_OK);
    assert_int_equal(pair_live_ops(rx), 1); /* held for the writer */
    assert_int_equal(atomic_load(&released), 0);
    assert_int_equal(ferry_write_begin(w->tx, &s, 1, md_copy, md_len, &late), FERRY_OK);
    while ((st = ferry_op_wait(late, 1)) == FERRY_ERR_TIMED_OUT && pair_now_ms() < deadline) {
        assert_int_equal(ferry_connector_progress(rx), FERRY_OK);
    }
    assert_int_equal(st, FERRY_ERR_NOT_FOUND); /* destroyed: no new writer */
    ferry_op_destroy(late);
    assert_int_equal(atomic_load(&released), 0);

    /* The writer, cancelled, sends the notice it owes: released. */
    atomic_store(&ferry__test_hold_notice, false);
    assert_int_equal(ferry_op_cancel(active), FERRY_OK);
    while (atomic_load(&released) == 0 && pair_now_ms() < deadline) {
        assert_int_equal(ferry_connector_progress(rx), FERRY_OK);
        poll(NULL, 0, 1); /* a deadline, not a guess: the loop ends on the condition */
    }
    assert_int_equal(atomic_load(&released), 1);
    assert_int_equal(pair_live_ops(rx), 0);
    assert_pattern(dst, 8192, 43); /* its puts landed in the memory kept for them */
    ferry_op_destroy(active);
    assert_int_equal(ferry_connector_destroy(rx), FERRY_OK);
    free(md_copy);
    free(src);
    free(dst);
}

/* A blocking ferry_op_destroy of a writable on memory in no region returns
 * only once its admitted writer has settled: the caller may free the
 * memory then (ferry.h), so nothing may land in it afterwards. The passive
 * side runs in caller progress mode, so over TCP, where this process's
 * worker copies the emulated puts, no byte lands unless a thread drives
 * its loop: the destroy is called right after the admission, with the
 * bytes still to come. Before, it returned at once and the writer's puts
 * landed in memory its caller had been told was free (an audit's probe:
 * 520 of 537 MB after destroy returned), and the writer still ended
 * COMPLETE. On shared memory the bytes may land without this side's loop;
 * the check (nothing changes after destroy) holds there too. */
static void destroy_waits_case(world_t *w, bool mixed)
{
    ferry_connector_t *rx = connector("rx-caller", FERRY_PROGRESS_CALLER);
    size_t size = 1u << 20; /* many TCP segments, settled well within the bound */
    uint8_t *src = malloc(2 * size), *dst = calloc(2, size), *seen = malloc(size);
    /* Mixed: the first descriptor in a region, the second in none. */
    ferry_descriptor_t d[2] = {desc(dst, size), desc(dst + size, size)};
    ferry_descriptor_t s[2] = {desc(src, size), desc(src + size, size)};
    size_t n = mixed ? 2 : 1;
    uint8_t *plain = dst + (n - 1) * size; /* the memory in no region */
    ferry_region_t *r = NULL;
    ferry_op_t *passive, *active;
    const uint8_t *md;
    size_t md_len;
    ferry_status_t st;
    int64_t deadline = pair_now_ms() + WAIT_MS;

    fill(src, 2 * size, 47);
    if (mixed) {
        assert_int_equal(ferry_mem_register(rx, dst, size, d[0].device, &r), FERRY_OK);
    }
    assert_int_equal(ferry_writable_create(rx, d, n, &passive), FERRY_OK);
    assert_int_equal(ferry_op_in_region(passive, 0), mixed);
    assert_int_equal(ferry_op_metadata(passive, &md, &md_len), FERRY_OK);
    assert_int_equal(ferry_write_begin(w->tx, s, n, md, md_len, &active), FERRY_OK);
    while (ferry_op_status(passive) != FERRY_OP_STATUS_IN_PROGRESS &&
           !ferry_op_status_is_final(ferry_op_status(passive)) && pair_now_ms() < deadline) {
        assert_int_equal(ferry_connector_progress(rx), FERRY_OK); /* admits the claim */
    }
    /* Admitted, the bytes still to come; or, where the writer's puts land
     * without this side's loop (shared memory) and its notice came within
     * the same progress call, already COMPLETE: destroy has nothing to wait
     * for then, and nothing may change after it either. */
    assert_true(ferry_op_status(passive) == FERRY_OP_STATUS_IN_PROGRESS ||
                ferry_op_status(passive) == FERRY_OP_STATUS_COMPLETE);

    ferry_op_destroy(passive);
    memcpy(seen, plain, size);
    while ((st = ferry_op_wait(active, 1)) == FERRY_ERR_TIMED_OUT && pair_now_ms() < deadline) {
        assert_int_equal(ferry_connector_progress(rx), FERRY_OK);
    }
    assert_int_not_equal(st, FERRY_ERR_TIMED_OUT); /* the writer has ended */
    assert_int_equal(ferry_connector_progress(rx), FERRY_OK);
    assert_int_equal(pair_live_ops(rx), 0);
    assert_memory_equal(plain, seen, size); /* nothing landed after destroy returned */
    ferry_op_destroy(active);
    assert_int_equal(ferry_mem_deregister(r), FERRY_OK);
    assert_int_equal(ferry_connector_destroy(rx), FERRY_OK);
    free(seen);
    free(dst);
    free(src);
}

static void test_passive_destroy_waits_for_its_writer(void **state)
{
    destroy_waits_case(*state, false);
}

/* The same for an operation with a descriptor in a region and one in none:
 * the one in none is waited for (the first version of the wait skipped any
 * operation holding a region). */
static void test_passive_destroy_waits_for_its_writer_mixed(void **state)
{
    destroy_waits_case(*state, true);
}

typedef struct {
    atomic_uint warns;
    atomic_uint unsettled; /* warnings that a claimant had not settled */
} warn_count_t;

static void count_warns(ferry_loglevel_t level, const char *message, void *arg)
{
    warn_count_t *n = arg;

    if (level == FERRY_LOGLEVEL_WARN) {
        atomic_fetch_add(&n->warns, 1);
        atomic_fetch_add(&n->unsettled, strstr(message, "has not settled") != NULL);
    }
}

/* A writer that never settles (its notice held back by the fault hook; a
 * peer that died unseen, without peer error handling, is the same to this
 * side) holds a blocking destroy for FERRY_OP_DESTROY_FLUSH_MS, no more:
 * destroy then lets go of the operation and says so, as a warning. */
static void test_passive_destroy_bounded_by_an_unsettled_writer(void **state)
{
    world_t *w = *state;
    static warn_count_t logged; /* static: the callback outlives a failed check */
    ferry_connector_params_t params = {
        .field_mask = FERRY_CONNECTOR_PARAM_FIELD_NAME | FERRY_CONNECTOR_PARAM_FIELD_LOG_LEVEL |
                      FERRY_CONNECTOR_PARAM_FIELD_LOG_CB,
        .name = "rx-logged",
        .log_level = FERRY_LOGLEVEL_WARN,
        .log_cb = count_warns,
        .log_arg = &logged,
    };
    ferry_connector_t *rx;
    uint8_t *src = malloc(8192), *dst = calloc(1, 8192), *md_copy;
    ferry_descriptor_t d = desc(dst, 8192), s = desc(src, 8192);
    ferry_op_t *passive, *active;
    size_t md_len;
    int64_t deadline = pair_now_ms() + WAIT_MS;

    fill(src, 8192, 49);
    assert_int_equal(ferry_connector_create(&params, &rx), FERRY_OK);
    assert_int_equal(ferry_writable_create(rx, &d, 1, &passive), FERRY_OK);
    md_copy = begin_held_write(w->tx, passive, &s, &md_len, &active);
    while (!atomic_load(&ferry__test_notice_held) && pair_now_ms() < deadline) {
        (void)ferry_op_wait(active, 1);
    }
    assert_true(atomic_load(&ferry__test_notice_held));

    ferry_op_destroy(passive); /* returns: bounded */
    assert_int_equal(atomic_load(&logged.unsettled), 1);
    assert_int_equal(pair_live_ops(rx), 0);
    atomic_store(&ferry__test_hold_notice, false);
    assert_int_equal(ferry_op_cancel(active), FERRY_OK);
    (void)ferry_op_wait(active, WAIT_MS);
    ferry_op_destroy(active);
    assert_int_equal(ferry_connector_destroy(rx), FERRY_OK);
    free(md_copy);
    free(dst);
    free(src);
}

/* Writes text to root/rel, making its directories. */
static void put_file(const char *root, const char *rel, const char *text)
{
    char path[512];
    FILE *f;

    for (const char *p = strchr(rel, '/'); p != NULL; p = strchr(p + 1, '/')) {
        snprintf(path, sizeof(path), "%s/%.*s", root, (int)(p - rel), rel);
        (void)mkdir(path, 0700);
    }
    snprintf(path, sizeof(path), "%s/%s", root, rel);
    f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* ferry_mem_alloc's size check knows a container's memory limit, not only
 * the machine's memory: the process's cgroups as /proc/self/cgroup names
 * them (v2 "0::<path>", v1 "<n>:...memory...:<path>"), each one's limit
 * file under the hierarchy (or at its root, inside a cgroup namespace),
 * "max" and v1's near-2^63 meaning none, the smallest taken. Before, an
 * allocation between the limit and the machine's memory was asked of UCX,
 * and the OOM killer ended the process while it zeroed the memory. */
static void test_cgroup_memory_limit(void **state)
{
    char root[] = "/tmp/ferry-cgroup-XXXXXX", proc[600], cmd[700];
    (void)state;

    assert_non_null(mkdtemp(root));
    snprintf(proc, sizeof(proc), "%s/proc-cgroup", root);
    assert_int_equal(ferry__cgroup_memory_limit("/nonexistent", root), 0);

    put_file(root, "proc-cgroup", "0::/kube/pod1\n");
    assert_int_equal(ferry__cgroup_memory_limit(proc, root), 0); /* no file: none known */
    put_file(root, "kube/pod1/memory.max", "max\n");
    assert_int_equal(ferry__cgroup_memory_limit(proc, root), 0);
    put_file(root, "kube/pod1/memory.max", "1073741824\n");
    assert_int_equal(ferry__cgroup_memory_limit(proc, root), 1073741824);
    put_file(root, "kube/memory.max", "536870912\n"); /* a parent's bounds it too */
    assert_int_equal(ferry__cgroup_memory_limit(proc, root), 536870912);
    put_file(root, "kube/memory.max", "max\n");

    put_file(root, "proc-cgroup", "garbage\n1:name=systemd:/\n0::/\n");
    put_file(root, "memory.max", "805306368\n"); /* inside a cgroup namespace */
    assert_int_equal(ferry__cgroup_memory_limit(proc, root), 805306368);

    put_file(root, "proc-cgroup", "5:cpu,cpuacct:/x\n4:memory:/docker/abc\n");
    put_file(root, "memory/docker/abc/memory.limit_in_bytes", "9223372036854771712\n");
    assert_int_equal(ferry__cgroup_memory_limit(proc, root), 0); /* v1's "no limit" */
    put_file(root, "memory/docker/abc/memory.limit_in_bytes", "536870912\n");
    assert_int_equal(ferry__cgroup_memory_limit(proc, root), 536870912);

    put_file(root, "proc-cgroup", "4:memory:/docker/abc\n0::/\n"); /* both: the smaller */
    assert_int_equal(ferry__cgroup_memory_limit(proc, root), 536870912);
    put_file(root, "memory.max", "268435456\n");
    assert_int_equal(ferry__cgroup_memory_limit(proc, root), 268435456);

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
    assert_int_equal(system(cmd), 0);
}

/* Memory from ferry_mem_alloc: zeroed, usable on both sides, in both
 * directions, with no ucp_mem_map per operation. */
static void test_alloc_transfer(void **state)
{
    world_t *w = *state;
    ferry_region_t *rx_r, *tx_r, *bad = NULL;
    uint8_t *dst, *src;
    void *p = NULL;
    size_t size = 3u << 20; /* not a power of two on purpose */
    uint64_t rx_maps, tx_maps;

    assert_int_equal(
        ferry_mem_alloc(w->rx, size, (ferry_device_t)FERRY_DEVICE_HOST_INIT, &rx_r, &p), FERRY_OK);
    dst = p;
    assert_int_equal(
        ferry_mem_alloc(w->tx, size, (ferry_device_t)FERRY_DEVICE_HOST_INIT, &tx_r, &p), FERRY_OK);
    src = p;
    assert_int_equal(ferry_mem_alloc(w->tx, 0, (ferry_device_t)FERRY_DEVICE_HOST_INIT, &bad, &p),
                     FERRY_ERR_INVALID_ARGUMENT);
    /* More than the machine has is refused before UCX is asked (UCX would
     * fill /dev/shm with it until the OOM killer struck). 2^63 bytes: no
     * file can be that long, so even without the check UCX fails at once. */
    assert_int_equal(
        ferry_mem_alloc(w->tx, (size_t)1 << 63, (ferry_device_t)FERRY_DEVICE_HOST_INIT, &bad, &p),
        FERRY_ERR_NO_MEMORY);
    assert_non_null(strstr(ferry_last_error_message(), "machine's memory"));
    if (!ferry_connector_is_cuda_available(w->tx)) {
        /* No CUDA here; test_worker_cuda allocates device memory on a GPU. */
        assert_int_equal(
            ferry_mem_alloc(w->tx, 4096, (ferry_device_t){FERRY_DEVICE_CUDA, 0}, &bad, &p),
            FERRY_ERR_UNIMPLEMENTED);
        assert_non_null(strstr(ferry_last_error_message(), "CUDA regions are refused"));
        assert_null(bad);
    }
    assert_filled(dst, size, 0);
    rx_maps = mem_maps(w->rx);
    tx_maps = mem_maps(w->tx);

    fill(src, size, 11);
    transfer(w, true, desc(dst, size), desc(src, size));
    assert_pattern(dst, size, 11);

    fill(dst + 4096, 1u << 20, 12);
    transfer(w, false, desc(dst + 4096, 1u << 20), desc(src + 8192, 1u << 20));
    assert_pattern(src + 8192, 1u << 20, 12);

    assert_int_equal(mem_maps(w->rx), rx_maps);
    assert_int_equal(mem_maps(w->tx), tx_maps);
    assert_int_equal(ferry_mem_deregister(rx_r), FERRY_OK);
    assert_int_equal(ferry_mem_deregister(tx_r), FERRY_OK);
}

/* Many operations on one region: each on its own slice, some in flight at
 * once; no map, one remote key unpacked by the peer (the same packed key
 * every time, so its cache finds it), every slice right. */
static void test_many_ops_on_one_region(void **state)
{
    world_t *w = *state;
    enum { SLICES = 64, SLICE = 16384, ROUNDS = 4, AT_ONCE = 8 };
    ferry_region_t *rx_r;
    uint8_t *dst, *src = malloc((size_t)SLICES * SLICE);
    void *p;
    ferry_connector_stats_t before, after;
    uint64_t rx_maps;

    assert_int_equal(ferry_mem_alloc(w->rx, (size_t)SLICES * SLICE,
                                     (ferry_device_t)FERRY_DEVICE_HOST_INIT, &rx_r, &p),
                     FERRY_OK);
    dst = p;
    rx_maps = mem_maps(w->rx);
    ferry_connector_get_stats(w->tx, &before);
    for (int round = 0; round < ROUNDS; round++) {
        for (int first = 0; first < SLICES; first += AT_ONCE) {
            ferry_op_t *passive[AT_ONCE], *active[AT_ONCE];
            for (int k = 0; k < AT_ONCE; k++) {
                size_t i = (size_t)(first + k);
                ferry_descriptor_t d = desc(dst + i * SLICE, SLICE);
                ferry_descriptor_t s = desc(src + i * SLICE, SLICE);
                const uint8_t *md;
                size_t md_len;
                fill(src + i * SLICE, SLICE, (uint32_t)(round * SLICES + (int)i));
                assert_int_equal(ferry_writable_create(w->rx, &d, 1, &passive[k]), FERRY_OK);
                assert_true(region_ops(rx_r) >= 1); /* READY: nothing can end it yet */
                assert_int_equal(ferry_op_metadata(passive[k], &md, &md_len), FERRY_OK);
                assert_int_equal(ferry_write_begin(w->tx, &s, 1, md, md_len, &active[k]), FERRY_OK);
            }
            for (int k = 0; k < AT_ONCE; k++) {
                assert_int_equal(ferry_op_wait(active[k], WAIT_MS), FERRY_OK);
                assert_int_equal(ferry_op_wait(passive[k], WAIT_MS), FERRY_OK);
                ferry_op_destroy(active[k]);
                ferry_op_destroy(passive[k]);
            }
        }
        for (size_t i = 0; i < SLICES; i++) {
            assert_pattern(dst + i * SLICE, SLICE, (uint32_t)(round * SLICES + (int)i));
        }
    }
    ferry_connector_get_stats(w->tx, &after);
    assert_int_equal(mem_maps(w->rx), rx_maps);
    assert_int_equal(after.rkeys_unpacked - before.rkeys_unpacked, 1);
    assert_int_equal(after.rkey_cache_hits - before.rkey_cache_hits, SLICES * ROUNDS - 1);
    assert_int_equal(region_ops(rx_r), 0);
    assert_int_equal(ferry_mem_deregister(rx_r), FERRY_OK);
    free(src);
}

/* ---- a hostile passive side's remote key ------------------------------- */

/* Metadata that a hostile passive side could publish: rx's real metadata
 * for a writable on md_src, its first descriptor's address replaced by
 * address and, when rkey is not NULL, its key by rkey. Packed bytes,
 * free()d by the caller. */
static uint8_t *forge(const uint8_t *md_src, size_t md_len, uint64_t address, const void *rkey,
                      size_t rkey_len, size_t *len_p)
{
    Ferry__V1__RdmaMetadata *m = ferry__v1__rdma_metadata__unpack(NULL, md_len, md_src);
    ProtobufCBinaryData own;
    uint8_t *out;

    assert_non_null(m);
    own = m->descriptors[0]->rkey; /* put back before the free */
    m->descriptors[0]->address = address;
    if (rkey != NULL) {
        m->descriptors[0]->rkey.data = (uint8_t *)rkey;
        m->descriptors[0]->rkey.len = rkey_len;
    }
    *len_p = ferry__v1__rdma_metadata__get_packed_size(m);
    out = malloc(*len_p);
    assert_non_null(out);
    ferry__v1__rdma_metadata__pack(m, out);
    m->descriptors[0]->rkey = own;
    ferry__v1__rdma_metadata__free_unpacked(m, NULL);
    return out;
}

/* Where tx's copy of rx's key maps remote address addr in this process, or
 * NULL where the key is not mapped here (TCP: the target's UCX resolves the
 * address, in its own process). Through tx's own peer and key caches, so
 * the write below finds the same key. */
static uint8_t *mapped_here(world_t *w, const uint8_t *md_bytes, size_t md_len, uint64_t addr)
{
    Ferry__V1__RdmaMetadata *m = ferry__v1__rdma_metadata__unpack(NULL, md_len, md_bytes);
    ferry__peer_t *peer = NULL;
    ferry__rkey_t *rk = NULL;
    void *local = NULL;

    assert_non_null(m);
    ferry__lock(w->tx);
    assert_int_equal(ferry__peer_get(w->tx, m->worker_address.data, m->worker_address.len, &peer),
                     FERRY_OK);
    assert_int_equal(ferry__peer_rkey_get(peer, m->descriptors[0]->rkey.data,
                                          m->descriptors[0]->rkey.len, addr, &rk),
                     FERRY_OK);
    if (ucp_rkey_ptr(rk->rkey, addr, &local) != UCS_OK) {
        local = NULL;
    }
    ferry__peer_rkey_put(peer, rk);
    ferry__peer_put(peer);
    ferry__unlock(w->tx);
    ferry__v1__rdma_metadata__free_unpacked(m, NULL);
    return local;
}

/* Begins a write of src's 4 KiB with the forged metadata and expects it
 * refused, naming the descriptor; if it was not, lets it run first, so
 * that the assertion on the writer's memory that follows sees its bytes. */
static void assert_forged_write_refused(world_t *w, uint8_t *src, const uint8_t *forged,
                                        size_t forged_len)
{
    ferry_descriptor_t s = desc(src, 4096);
    ferry_op_t *active = NULL;
    ferry_status_t status = ferry_write_begin(w->tx, &s, 1, forged, forged_len, &active);

    if (status == FERRY_OK) {
        ferry_op_wait(active, WAIT_MS);
        ferry_op_destroy(active);
    }
    assert_int_equal(status, FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(ferry_last_error_message(), "descriptors[0]"));
}

/* rx's metadata md with its worker address replaced by len bytes of
 * address; packed, free()d by the caller. */
static uint8_t *forge_address(const uint8_t *md, size_t md_len, const uint8_t *address, size_t len,
                              size_t *len_p)
{
    Ferry__V1__RdmaMetadata *m = ferry__v1__rdma_metadata__unpack(NULL, md_len, md);
    ProtobufCBinaryData own;
    uint8_t *out;

    assert_non_null(m);
    own = m->worker_address;
    m->worker_address.data = (uint8_t *)address;
    m->worker_address.len = len;
    *len_p = ferry__v1__rdma_metadata__get_packed_size(m);
    out = malloc(*len_p);
    assert_non_null(out);
    ferry__v1__rdma_metadata__pack(m, out);
    m->worker_address = own;
    ferry__v1__rdma_metadata__free_unpacked(m, NULL);
    return out;
}

/* A write with forged metadata is refused INVALID_ARGUMENT, at begin or
 * at the latest by its wait, with a message that names field. */
static void assert_forged_refused_naming(world_t *w, uint8_t *src, const uint8_t *forged,
                                         size_t forged_len, const char *field)
{
    ferry_descriptor_t s = desc(src, 4096);
    ferry_op_t *active = NULL;
    ferry_status_t status = ferry_write_begin(w->tx, &s, 1, forged, forged_len, &active);

    if (status == FERRY_OK) {
        status = ferry_op_wait(active, WAIT_MS);
        ferry_op_destroy(active);
    }
    assert_int_equal(status, FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(ferry_last_error_message(), field));
}

/* Metadata whose remote key or worker address is not framed as UCX 1.13
 * writes them (garbage, truncated) is refused INVALID_ARGUMENT, naming the
 * field, before UCX parses the bytes; an honest write then completes.
 * Before, UCX crashed on a key of 16 bytes of 0xff (SIGSEGV in
 * ucp_ep_rkey_unpack), read past the end of a 1-byte key, and aborted on
 * an address of 8 bytes of 0xff (an assertion in its address parser). */
static void test_malformed_key_or_address_refused(void **state)
{
    world_t *w = *state;
    uint8_t *dst = calloc(1, 4096), *src = malloc(4096), garbage[16], *forged;
    ferry_descriptor_t d = desc(dst, 4096);
    ferry_op_t *passive;
    const uint8_t *md;
    size_t md_len, forged_len;
    Ferry__V1__RdmaMetadata *m;
    uint8_t first;

    memset(garbage, 0xff, sizeof(garbage));
    fill(src, 4096, 41);
    assert_int_equal(ferry_writable_create(w->rx, &d, 1, &passive), FERRY_OK);
    assert_int_equal(ferry_op_metadata(passive, &md, &md_len), FERRY_OK);
    m = ferry__v1__rdma_metadata__unpack(NULL, md_len, md);
    assert_non_null(m);
    first = m->descriptors[0]->rkey.data[0];
    ferry__v1__rdma_metadata__free_unpacked(m, NULL);

    const struct {
        const uint8_t *key;
        size_t len;
    } keys[] = {{garbage, 16}, {garbage, 4}, {&first, 1}};

    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        forged = forge(md, md_len, (uint64_t)(uintptr_t)dst, keys[i].key, keys[i].len, &forged_len);
        assert_forged_refused_naming(w, src, forged, forged_len, "descriptors[0].rkey");
        free(forged);
    }
    forged = forge_address(md, md_len, garbage, 8, &forged_len);
    assert_forged_refused_naming(w, src, forged, forged_len, "worker_address");
    free(forged);
    assert_filled(dst, 4096, 0);

    ferry_descriptor_t s = desc(src, 4096);
    ferry_op_t *active;
    assert_int_equal(ferry_write_begin(w->tx, &s, 1, md, md_len, &active), FERRY_OK);
    assert_int_equal(ferry_op_wait(active, WAIT_MS), FERRY_OK);
    assert_int_equal(ferry_op_wait(passive, WAIT_MS), FERRY_OK);
    assert_pattern(dst, 4096, 41);
    ferry_op_destroy(active);
    ferry_op_destroy(passive);
    free(src);
    free(dst);
}

/* Begins a write into (or a read from) the forged metadata's operation
 * with c's local 4 KiB; it must fail INVALID_ARGUMENT, at begin
 * (segments.c) or at the claim (the passive side's admission). */
static void assert_edited_refused(ferry_connector_t *c, bool write, uint8_t *local,
                                  const uint8_t *forged, size_t forged_len)
{
    ferry_descriptor_t l = desc(local, 4096);
    ferry_op_t *active = NULL;
    ferry_status_t status = write ? ferry_write_begin(c, &l, 1, forged, forged_len, &active)
                                  : ferry_read_begin(c, &l, 1, forged, forged_len, &active);

    if (status == FERRY_OK) {
        status = ferry_op_wait(active, WAIT_MS);
        ferry_op_destroy(active);
    }
    assert_int_equal(status, FERRY_ERR_INVALID_ARGUMENT);
}

/* Metadata edited to name other memory of the target's process than its
 * operation's: here a heap buffer of this very process, the target being
 * another connector of it (tx to rx) or the writer's own connector (rx to
 * rx). Over transports that resolve a remote address in the target's
 * process (TCP, CMA, UCX's self transport) only the passive side's
 * admission can stop that put, and it refuses a claim whose ranges are not
 * its operation's. The buffer and the operation's memory keep their bytes,
 * and an honest transfer on the same operation then completes. Before, the
 * buffer was overwritten (or read) and both sides ended COMPLETE. */
static void test_edited_metadata_cannot_steer_a_transfer(void **state)
{
    world_t *w = *state;
    ferry_connector_t *actives[2] = {w->tx, w->rx};
    uint8_t *dst = malloc(4096), *canary = malloc(4096), *local = malloc(4096), *forged;
    ferry_descriptor_t d = desc(dst, 4096), l = desc(local, 4096);
    ferry_op_t *passive, *active;
    const uint8_t *md;
    size_t md_len, forged_len;

    for (int k = 0; k < 2; k++) {
        for (int write = 0; write < 2; write++) {
            memset(canary, 0x5a, 4096);
            memset(dst, 0, 4096);
            memset(local, 0, 4096);
            fill(write ? local : dst, 4096, (uint32_t)(31 + k));
            assert_int_equal(write ? ferry_writable_create(w->rx, &d, 1, &passive)
                                   : ferry_readable_create(w->rx, &d, 1, &passive),
                             FERRY_OK);
            assert_int_equal(ferry_op_metadata(passive, &md, &md_len), FERRY_OK);
            forged = forge(md, md_len, (uint64_t)(uintptr_t)canary, NULL, 0, &forged_len);
            assert_edited_refused(actives[k], write, local, forged, forged_len);
            free(forged);
            assert_filled(canary, 4096, 0x5a);
            if (write) {
                assert_filled(dst, 4096, 0);
            } else {
                assert_filled(local, 4096, 0);
            }

            assert_int_equal(write ? ferry_write_begin(actives[k], &l, 1, md, md_len, &active)
                                   : ferry_read_begin(actives[k], &l, 1, md, md_len, &active),
                             FERRY_OK);
            assert_int_equal(ferry_op_wait(active, WAIT_MS), FERRY_OK);
            assert_int_equal(ferry_op_wait(passive, WAIT_MS), FERRY_OK);
            assert_pattern(write ? dst : local, 4096, (uint32_t)(31 + k));
            ferry_op_destroy(active);
            ferry_op_destroy(passive);
        }
    }
    free(local);
    free(canary);
    free(dst);
}

/* md with the segment id of its first descriptor's sysv key part (12
 * bytes in UCX 1.13) replaced by shmid; packed, free()d by the caller.
 * NULL when the key has no such part. */
static uint8_t *forge_shmid(const uint8_t *md, size_t md_len, int32_t shmid, size_t *len_p)
{
    Ferry__V1__RdmaMetadata *m = ferry__v1__rdma_metadata__unpack(NULL, md_len, md);
    uint8_t *key, *out = NULL;
    uint64_t md_map;
    size_t off = sizeof(md_map) + 1, key_len;

    assert_non_null(m);
    key = m->descriptors[0]->rkey.data;
    key_len = m->descriptors[0]->rkey.len;
    memcpy(&md_map, key, sizeof(md_map));
    for (; md_map != 0 && off < key_len; md_map &= md_map - 1) {
        if (key[off] == 12) {
            memcpy(key + off + 1, &shmid, sizeof(shmid));
            *len_p = ferry__v1__rdma_metadata__get_packed_size(m);
            out = malloc(*len_p);
            assert_non_null(out);
            ferry__v1__rdma_metadata__pack(m, out);
            break;
        }
        off += 1u + key[off];
    }
    ferry__v1__rdma_metadata__free_unpacked(m, NULL);
    return out;
}

/* Metadata of an operation in a Ferry-allocated region that its owner has
 * since deregistered (it gave up, freed its pool, and the metadata reached
 * the writer late): the key names a System V segment that is gone. UCX
 * 1.13 attaches it as it unpacks the key where it reaches the peer's sysv
 * transport, and its error path then released key parts it never
 * unpacked: the writer's process died (SIGSEGV, audit-s35-python H1). Now
 * the write is refused NOT_FOUND before the claim, naming the key; where
 * UCX does not reach the peer's shared memory (TCP alone here; another
 * host), it leaves that part alone, so libferry does too: the passive side
 * refuses the claim of its gone operation NOT_FOUND, and a live
 * operation's key with a dead segment id in that part still carries a
 * write (a check of every such part refused honest writers on other hosts:
 * review-s35c). A write to a live allocation still goes. */
static void test_stale_metadata_of_a_freed_allocation_refused(void **state)
{
    world_t *w = *state;
    const char *tls = getenv("UCX_TLS");
    bool shm = tls == NULL || strcmp(tls, "tcp") != 0;
    ferry_region_t *r;
    ferry_op_t *passive, *active = NULL;
    uint8_t *src = malloc(4096), *stale, *forged;
    const uint8_t *md;
    size_t md_len, forged_len;
    ferry_descriptor_t d, s = desc(src, 4096);
    ferry_status_t status;
    void *p;

    fill(src, 4096, 41);
    assert_int_equal(
        ferry_mem_alloc(w->rx, 1u << 16, (ferry_device_t)FERRY_DEVICE_HOST_INIT, &r, &p), FERRY_OK);
    d = desc(p, 4096);
    assert_int_equal(ferry_writable_create(w->rx, &d, 1, &passive), FERRY_OK);
    assert_int_equal(ferry_op_metadata(passive, &md, &md_len), FERRY_OK);
    stale = malloc(md_len);
    memcpy(stale, md, md_len);
    ferry_op_destroy(passive);
    assert_int_equal(ferry_mem_deregister(r), FERRY_OK);

    status = ferry_write_begin(w->tx, &s, 1, stale, md_len, &active);
    if (shm) {
        assert_int_equal(status, FERRY_ERR_NOT_FOUND);
        assert_non_null(strstr(ferry_last_error_message(), "descriptors[0].rkey"));
        assert_non_null(strstr(ferry_last_error_message(), "System V"));
    } else {
        assert_int_equal(status, FERRY_OK);
        assert_int_equal(ferry_op_wait(active, WAIT_MS), FERRY_ERR_NOT_FOUND);
        ferry_op_destroy(active);
    }

    assert_int_equal(
        ferry_mem_alloc(w->rx, 1u << 16, (ferry_device_t)FERRY_DEVICE_HOST_INIT, &r, &p), FERRY_OK);
    d = desc(p, 4096);
    transfer(w, true, d, s);
    assert_pattern(p, 4096, 41);

    /* A live operation whose key's sysv part names a dead segment. */
    memset(p, 0, 4096);
    assert_int_equal(ferry_writable_create(w->rx, &d, 1, &passive), FERRY_OK);
    assert_int_equal(ferry_op_metadata(passive, &md, &md_len), FERRY_OK);
    forged = forge_shmid(md, md_len, INT32_MAX - 7, &forged_len);
    if (forged == NULL) {
        print_message("the region's key has no System V part here: nothing to edit\n");
    } else {
        status = ferry_write_begin(w->tx, &s, 1, forged, forged_len, &active);
        if (shm) {
            assert_int_equal(status, FERRY_ERR_NOT_FOUND);
        } else {
            assert_int_equal(status, FERRY_OK);
            assert_int_equal(ferry_op_wait(active, WAIT_MS), FERRY_OK);
            assert_int_equal(ferry_op_wait(passive, WAIT_MS), FERRY_OK);
            assert_pattern(p, 4096, 41);
            ferry_op_destroy(active);
        }
        free(forged);
    }
    ferry_op_destroy(passive);
    assert_int_equal(ferry_mem_deregister(r), FERRY_OK);
    free(stale);
    free(src);
}

/* A passive side on this host whose memory UCX maps here (Ferry-allocated,
 * a shared-memory segment) and whose metadata names addresses outside that
 * segment, or the writer's own segment: UCX's shared-memory transports
 * translate a remote address by an offset, unchecked, so a put there would
 * land in the writer's own memory. Each such write is refused before the
 * claim, and the writer's memory keeps its bytes. An honest write on the
 * same key then still goes through. */
static void test_hostile_key_cannot_reach_the_writer(void **state)
{
    world_t *w = *state;
    enum { SEG = 65536 };
    ferry_region_t *rx_r, *tx_r;
    ferry_op_t *passive = NULL, *active = NULL;
    uint8_t *dst, *own, *canary = malloc(SEG), *src = malloc(4096), *forged, *local;
    const uint8_t *md;
    size_t md_len, forged_len;
    void *p;
    ferry_descriptor_t d, s;

    assert_int_equal(ferry_mem_alloc(w->rx, SEG, (ferry_device_t)FERRY_DEVICE_HOST_INIT, &rx_r, &p),
                     FERRY_OK);
    dst = p;
    assert_int_equal(ferry_mem_alloc(w->tx, SEG, (ferry_device_t)FERRY_DEVICE_HOST_INIT, &tx_r, &p),
                     FERRY_OK);
    own = p;
    memset(canary, 0x5a, SEG);
    memset(own, 0x5a, SEG);
    fill(src, 4096, 21);
    d = desc(dst, 4096);
    assert_int_equal(ferry_writable_create(w->rx, &d, 1, &passive), FERRY_OK);
    assert_int_equal(ferry_op_metadata(passive, &md, &md_len), FERRY_OK);

    local = mapped_here(w, md, md_len, (uint64_t)(uintptr_t)dst);
    if (local == NULL) {
        print_message("rx's key is not mapped into this process (no shared-memory transport "
                      "here): nothing a put could reach locally; the attacks are skipped\n");
    } else {
        intptr_t delta = (intptr_t)((uintptr_t)local - (uintptr_t)dst);

        /* A heap buffer of the writer's, through the key's offset. */
        forged = forge(md, md_len, (uint64_t)((uintptr_t)canary - (uintptr_t)delta), NULL, 0,
                       &forged_len);
        assert_forged_write_refused(w, src, forged, forged_len);
        assert_filled(canary, SEG, 0x5a);
        free(forged);

        /* The segment's last byte and one past it. */
        forged = forge(md, md_len, (uint64_t)(uintptr_t)dst + SEG - 4095, NULL, 0, &forged_len);
        assert_forged_write_refused(w, src, forged, forged_len);
        free(forged);

        /* The writer's own Ferry-allocated segment, named by its own key:
         * UCX maps it here a second time, and a put would write through
         * that alias. */
        forged =
            forge(md, md_len, (uint64_t)(uintptr_t)own, tx_r->rkey, tx_r->rkey_len, &forged_len);
        assert_forged_write_refused(w, src, forged, forged_len);
        assert_filled(own, SEG, 0x5a);
        free(forged);
    }

    /* The honest metadata still works on the same (cached) key. */
    s = desc(src, 4096);
    assert_int_equal(ferry_write_begin(w->tx, &s, 1, md, md_len, &active), FERRY_OK);
    assert_int_equal(ferry_op_wait(active, WAIT_MS), FERRY_OK);
    assert_int_equal(ferry_op_wait(passive, WAIT_MS), FERRY_OK);
    assert_pattern(dst, 4096, 21);
    ferry_op_destroy(active);
    ferry_op_destroy(passive);
    assert_int_equal(ferry_mem_deregister(tx_r), FERRY_OK);
    assert_int_equal(ferry_mem_deregister(rx_r), FERRY_OK);
    free(src);
    free(canary);
}

/* A claim answered after the writer's claim timeout (the passive
 * connector's loop did not run): the writer, failed UNAVAILABLE and
 * destroyed by then, answers the late admission with an error notice, so
 * the passive side, which admitted it, ends ERRORED with nothing written,
 * instead of waiting for a notice that never comes. A claim never answered
 * stops waiting for a late answer after FERRY__LATE_ADMIT_FACTOR timeouts,
 * and its operation is freed. */
static void test_late_admission_gets_a_notice(void **state)
{
    enum { SIZE = 4096, TIMEOUT_MS = 200 };
    ferry_connector_t *pc = connector("pc", FERRY_PROGRESS_CALLER);
    ferry_connector_t *tx = connector("tx", FERRY_PROGRESS_THREAD);
    uint8_t *dst = calloc(1, SIZE), *src = malloc(SIZE);
    ferry_descriptor_t d = desc(dst, SIZE), s = desc(src, SIZE);
    ferry_op_t *passive, *active, *never;
    ferry_op_status_t status;
    const uint8_t *md;
    const char *msg = NULL;
    size_t md_len;
    int64_t deadline;
    (void)state;

    ferry__lock(tx);
    tx->claim_timeout_ms = TIMEOUT_MS;
    ferry__unlock(tx);
    fill(src, SIZE, 31);
    assert_int_equal(ferry_writable_create(pc, &d, 1, &passive), FERRY_OK);
    assert_int_equal(ferry_op_metadata(passive, &md, &md_len), FERRY_OK);
    assert_int_equal(ferry_write_begin(tx, &s, 1, md, md_len, &active), FERRY_OK);
    assert_int_equal(ferry_op_wait(active, WAIT_MS), FERRY_ERR_UNAVAILABLE);
    ferry_op_destroy(active);

    deadline = pair_now_ms() + WAIT_MS;
    do { /* pc admits the claim now; tx answers with its notice */
        assert_int_equal(ferry_connector_progress(pc), FERRY_OK);
        status = ferry_op_status(passive);
    } while ((status == FERRY_OP_STATUS_INITIALIZED || status == FERRY_OP_STATUS_IN_PROGRESS) &&
             pair_now_ms() < deadline);
    assert_int_equal(status, FERRY_OP_STATUS_ERRORED);
    assert_int_equal(ferry_op_error(passive, &msg), FERRY_ERR_UNAVAILABLE);
    assert_non_null(strstr(msg, "the active side gave up"));
    assert_filled(dst, SIZE, 0);
    ferry_op_destroy(passive);

    /* Never answered: pc's loop no longer runs. */
    assert_int_equal(ferry_writable_create(pc, &d, 1, &passive), FERRY_OK);
    assert_int_equal(ferry_op_metadata(passive, &md, &md_len), FERRY_OK);
    assert_int_equal(ferry_write_begin(tx, &s, 1, md, md_len, &never), FERRY_OK);
    assert_int_equal(ferry_op_wait(never, WAIT_MS), FERRY_ERR_UNAVAILABLE);
    ferry_op_destroy(never);
    deadline = pair_now_ms() + WAIT_MS;
    while (pair_live_ops(tx) > 0 && pair_now_ms() < deadline) {
        poll(NULL, 0, 10); /* the sweep runs on tx's own thread */
    }
    assert_int_equal(pair_live_ops(tx), 0);
    ferry_op_destroy(passive);
    assert_int_equal(ferry_connector_destroy(tx), FERRY_OK);
    assert_int_equal(ferry_connector_destroy(pc), FERRY_OK);
    free(dst);
    free(src);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest all[] = {
        cmocka_unit_test_setup_teardown(test_ops_on_region_map_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unregistered_memory_maps_per_op, setup, teardown),
        cmocka_unit_test_setup_teardown(test_straddling_descriptor_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_op_in_region, setup, teardown),
        cmocka_unit_test_setup_teardown(test_status_read_while_the_lock_is_held, setup, teardown),
        cmocka_unit_test_setup_teardown(test_overlap_and_connector_busy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deregister_busy_while_used, setup, teardown),
        cmocka_unit_test_setup_teardown(test_active_holds_region_until_final, setup, teardown),
        cmocka_unit_test(test_staged_get_in_flight_holds_region),
        cmocka_unit_test_setup_teardown(test_passive_holds_region_until_writer_settles, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_passive_nowait_released_when_writer_settles, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_passive_destroy_waits_for_its_writer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_passive_destroy_waits_for_its_writer_mixed, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_passive_destroy_bounded_by_an_unsettled_writer, setup,
                                        teardown),
        cmocka_unit_test(test_cgroup_memory_limit),
        cmocka_unit_test_setup_teardown(test_alloc_transfer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_ops_on_one_region, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stale_metadata_of_a_freed_allocation_refused, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_hostile_key_cannot_reach_the_writer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_edited_metadata_cannot_steer_a_transfer, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_malformed_key_or_address_refused, setup, teardown),
        cmocka_unit_test(test_late_admission_gets_a_notice),
    };
    (void)argc;
    (void)argv;
    /* FERRY_TEST_FILTER="test_passive_*" runs only the matching tests
     * (cmocka's pattern), to repeat one case. */
    if (getenv("FERRY_TEST_FILTER") != NULL) {
        cmocka_set_test_filter(getenv("FERRY_TEST_FILTER"));
    }
    return cmocka_run_group_tests(all, NULL, NULL);
}
