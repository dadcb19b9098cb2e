/*
 * test_service_wait.c: when a Lookup's or Claim's wait ends
 * (service_wait_deadline): never past the caller's deadline, never wrapped
 * by a huge wait_ms (2^63-1 once overflowed into "no wait"), 0 for no wait.
 * And the parked waits themselves (service_wait.c: a heap by due time, a
 * hash by request ID), with the calls and what a wait does when it runs
 * (service_lookup_once, rpc_call_*) replaced through --wrap by a record of
 * what happened to each call: a wake runs exactly its ID's waits, a wait
 * expires at its deadline and not before, a cancelled wait leaves, the
 * bound holds, and stopping fails the rest. The view is replaced too
 * (coord_registry_view_holds: it holds the IDs that start with "held"):
 * when it comes back, the waits whose record it holds run, and so does one
 * that parks after a look from before; a wait whose time is up runs once
 * more if the view holds its record. Waits on request IDs made to share
 * one bucket under an unkeyed hash still spread over the buckets.
 * tests/python/test_parked_waits.py
 * drives the same code through a real coordinator.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fnv_collide.h"
#include "service_int.h"

#define NOW 5000000 /* a monotonic clock some time after boot */

static void test_no_wait(void **state)
{
    (void)state;
    assert_int_equal(service_wait_deadline(NOW, 0, INT64_MAX), 0);
    assert_int_equal(service_wait_deadline(NOW, -5, INT64_MAX), 0);
}

static void test_extremes_saturate(void **state)
{
    (void)state;
    /* No caller deadline: the wait alone bounds it, saturated. */
    assert_true(service_wait_deadline(NOW, INT64_MAX, INT64_MAX) == INT64_MAX);
    assert_true(service_wait_deadline(NOW, INT64_MAX - 1000, INT64_MAX) == INT64_MAX);
    assert_true(service_wait_deadline(INT64_MAX - 1, 2, INT64_MAX) == INT64_MAX);
    assert_true(service_wait_deadline(NOW, INT64_MAX / 2, INT64_MAX) == NOW + INT64_MAX / 2);
    assert_true(service_wait_deadline(NOW, 1, INT64_MAX) == NOW + 1);
}

static void test_caller_deadline_bounds_it(void **state)
{
    (void)state;
    assert_true(service_wait_deadline(NOW, INT64_MAX, 10000) == NOW + 10000);
    assert_true(service_wait_deadline(NOW, 300, 10000) == NOW + 300);
    /* The caller's deadline already passed: the wait is over at once, but
     * it was asked for (not 0, which means "no wait"). */
    assert_true(service_wait_deadline(NOW, 300, -20) == NOW);
}

/* The etcd deadline of a call's work (service_etcd_deadline): none without
 * a caller deadline; otherwise before it by a tenth of the time left, at
 * most SERVICE_ANSWER_MARGIN_MS, for the answer to reach the caller; never
 * 0 ("none") for a caller that has one, even one already past. */
static void test_etcd_deadline_keeps_time_for_the_answer(void **state)
{
    (void)state;
    assert_true(service_etcd_deadline(NOW, INT64_MAX) == 0);
    assert_true(service_etcd_deadline(NOW, INT64_MAX - NOW / 2) == 0); /* no wrap */
    assert_true(service_etcd_deadline(NOW, 10000) == NOW + 10000 - SERVICE_ANSWER_MARGIN_MS);
    assert_true(service_etcd_deadline(NOW, 500) == NOW + 450);
    assert_true(service_etcd_deadline(NOW, 5) == NOW + 5);
    assert_true(service_etcd_deadline(NOW, 0) == NOW);
    assert_true(service_etcd_deadline(NOW, -20) == NOW);
    assert_true(service_etcd_deadline(0, 0) == 1);
}

/* What happened to each fake call, under rec.lock. */
#define N_CALLS 2048

typedef struct {
    int runs;              /* service_lookup_once */
    int fails;             /* rpc_call_fail */
    ferry_status_t status; /* the last fail's */
    int64_t failed_ms;     /* when */
    int refs;              /* rpc_call_ref minus rpc_call_unref */
    void (*cancel)(rpc_call_t *, void *);
    void *cancel_arg;
    void *parked;       /* rpc_call_set_parked's, under the service's waits_lock */
    int parked_lookups; /* rpc_call_parked calls on it, likewise */
} call_rec_t;

static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    call_rec_t calls[N_CALLS];
    char ids[N_CALLS][32];
    char hosts[N_CALLS][16]; /* rpc_call_peer_host; "" is HOST_A */
} rec = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

/* Fake calls are addresses inside this array, never dereferenced. */
static char call_base[N_CALLS];

static rpc_call_t *call_of(int i)
{
    return (rpc_call_t *)(void *)&call_base[i];
}

static call_rec_t *rec_of(const rpc_call_t *call)
{
    ptrdiff_t i = (const char *)(const void *)call - call_base;
    assert_true(i >= 0 && i < N_CALLS);
    return &rec.calls[i];
}

void __wrap_rpc_call_ref(rpc_call_t *call);
void __wrap_rpc_call_unref(rpc_call_t *call);
void __wrap_rpc_call_fail(rpc_call_t *call, ferry_status_t status, const char *fmt, ...);
void __wrap_rpc_call_on_cancel(rpc_call_t *call, void (*cb)(rpc_call_t *call, void *arg),
                               void *arg);
const char *__wrap_rpc_call_peer(const rpc_call_t *call);
void __wrap_rpc_call_set_parked(rpc_call_t *call, void *entry);
void *__wrap_rpc_call_parked(const rpc_call_t *call);
const char *__wrap_rpc_call_peer_host(const rpc_call_t *call);
void __wrap_service_lookup_once(coord_service_t *svc, rpc_call_t *call,
                                const Ferry__V1__LookupRequest *req, int64_t deadline_ms);
bool __wrap_coord_registry_view_holds(coord_registry_t *registry, const char *request_id);

bool __wrap_coord_registry_view_holds(coord_registry_t *registry, const char *request_id)
{
    (void)registry;
    return strncmp(request_id, "held", 4) == 0;
}

void __wrap_rpc_call_ref(rpc_call_t *call)
{
    pthread_mutex_lock(&rec.lock);
    rec_of(call)->refs++;
    pthread_mutex_unlock(&rec.lock);
}

void __wrap_rpc_call_unref(rpc_call_t *call)
{
    pthread_mutex_lock(&rec.lock);
    rec_of(call)->refs--;
    pthread_cond_broadcast(&rec.cond);
    pthread_mutex_unlock(&rec.lock);
}

void __wrap_rpc_call_fail(rpc_call_t *call, ferry_status_t status, const char *fmt, ...)
{
    (void)fmt;
    pthread_mutex_lock(&rec.lock);
    rec_of(call)->fails++;
    rec_of(call)->status = status;
    rec_of(call)->failed_ms = service_now_ms();
    pthread_cond_broadcast(&rec.cond);
    pthread_mutex_unlock(&rec.lock);
}

void __wrap_rpc_call_on_cancel(rpc_call_t *call, void (*cb)(rpc_call_t *call, void *arg), void *arg)
{
    pthread_mutex_lock(&rec.lock);
    rec_of(call)->cancel = cb;
    rec_of(call)->cancel_arg = arg;
    pthread_mutex_unlock(&rec.lock);
}

void __wrap_rpc_call_set_parked(rpc_call_t *call, void *entry)
{
    rec_of(call)->parked = entry;
}

void *__wrap_rpc_call_parked(const rpc_call_t *call)
{
    rec_of(call)->parked_lookups++;
    return rec_of(call)->parked;
}

const char *__wrap_rpc_call_peer(const rpc_call_t *call)
{
    (void)call;
    return "test";
}

#define HOST_A "10.0.0.1"

const char *__wrap_rpc_call_peer_host(const rpc_call_t *call)
{
    const char *host = rec.hosts[rec_of(call) - rec.calls];

    return host[0] != '\0' ? host : HOST_A;
}

/* The wait ran again (its operation changed): it looks, and here it is
 * answered (as a found operation would be). */
void __wrap_service_lookup_once(coord_service_t *svc, rpc_call_t *call,
                                const Ferry__V1__LookupRequest *req, int64_t deadline_ms)
{
    (void)svc;
    (void)req;
    (void)deadline_ms;
    pthread_mutex_lock(&rec.lock);
    rec_of(call)->runs++;
    pthread_cond_broadcast(&rec.cond);
    pthread_mutex_unlock(&rec.lock);
}

static int setup(void **state)
{
    coord_service_t *svc = calloc(1, sizeof(*svc));

    assert_non_null(svc);
    svc->max_waits = SERVICE_MAX_WAITS;
    assert_int_equal(coord_peers_create(&svc->wait_peers), FERRY_OK);
    assert_int_equal(service_waits_start(svc), FERRY_OK);
    pthread_mutex_lock(&rec.lock);
    memset(rec.calls, 0, sizeof(rec.calls));
    memset(rec.hosts, 0, sizeof(rec.hosts));
    pthread_mutex_unlock(&rec.lock);
    *state = svc;
    return 0;
}

/* As setup, with a wait thread that sleeps an hour when nothing is due:
 * only a signal ends its sleep early. */
static int setup_long_idle(void **state)
{
    coord_service_t *svc = calloc(1, sizeof(*svc));

    assert_non_null(svc);
    svc->max_waits = SERVICE_MAX_WAITS;
    svc->wait_idle_ms = 3600000;
    assert_int_equal(coord_peers_create(&svc->wait_peers), FERRY_OK);
    assert_int_equal(service_waits_start(svc), FERRY_OK);
    pthread_mutex_lock(&rec.lock);
    memset(rec.calls, 0, sizeof(rec.calls));
    memset(rec.hosts, 0, sizeof(rec.hosts));
    pthread_mutex_unlock(&rec.lock);
    *state = svc;
    return 0;
}

static int teardown(void **state)
{
    coord_service_t *svc = *state;

    service_waits_stop(svc);
    pthread_cond_destroy(&svc->waits_cond);
    pthread_mutex_destroy(&svc->waits_lock);
    coord_peers_destroy(svc->wait_peers);
    free(svc);
    return 0;
}

/* Parks call i as a Lookup for id, due in wait_ms, after a look at seq. */
static void park_seen(coord_service_t *svc, int i, const char *id, int64_t wait_ms, uint64_t seq)
{
    snprintf(rec.ids[i], sizeof(rec.ids[i]), "%s", id);
    service_wait_add(svc, call_of(i), WAIT_LOOKUP, NULL, rec.ids[i], service_now_ms() + wait_ms,
                     seq);
}

static void park(coord_service_t *svc, int i, const char *id, int64_t wait_ms)
{
    park_seen(svc, i, id, wait_ms, service_waits_seq(svc));
}

/* Waits (deadline 10 s) until `count` calls in [0, n) ran or failed and
 * were let go (a wait that ran drops its reference after the run). */
static void await_ended(int n, int count)
{
    int64_t until = service_now_ms() + 10000;
    int ended = 0;

    pthread_mutex_lock(&rec.lock);
    for (;;) {
        ended = 0;
        for (int i = 0; i < n; i++) {
            ended += rec.calls[i].refs == 0 ? rec.calls[i].runs + rec.calls[i].fails : 0;
        }
        if (ended >= count || service_now_ms() >= until) {
            break;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 10000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&rec.cond, &rec.lock, &ts);
    }
    pthread_mutex_unlock(&rec.lock);
    assert_int_equal(ended, count);
}

/* 2,000 waits on 1,000 IDs (two each): a wake runs exactly its ID's two,
 * and the others stay parked; then every ID woken, in another order, runs
 * every wait once. */
static void test_wake_runs_only_its_own_waits(void **state)
{
    coord_service_t *svc = *state;
    char id[32];
    int n = 2000;

    for (int i = 0; i < n; i++) {
        snprintf(id, sizeof(id), "id-%d", i % 1000);
        park(svc, i, id, 600000);
    }
    assert_int_equal(coord_service_parked_waits(svc), (size_t)n);
    service_waits_wake(svc, "id-7");
    await_ended(n, 2);
    assert_int_equal(rec.calls[7].runs, 1);
    assert_int_equal(rec.calls[1007].runs, 1);
    assert_int_equal(coord_service_parked_waits(svc), (size_t)n - 2);
    service_waits_wake(svc, "id-unknown");
    for (int k = 999; k >= 0; k--) {
        snprintf(id, sizeof(id), "id-%d", (k * 7) % 1000);
        service_waits_wake(svc, id);
    }
    await_ended(n, n);
    for (int i = 0; i < n; i++) {
        assert_int_equal(rec.calls[i].runs, 1);
        assert_int_equal(rec.calls[i].fails, 0);
        assert_int_equal(rec.calls[i].refs, 0);
    }
    assert_int_equal(coord_service_parked_waits(svc), 0);
}

/* Waits with deadlines in no order expire each at its deadline, not
 * before, with TIMED_OUT; one far off stays parked, and stopping fails it
 * UNAVAILABLE. */
static void test_waits_expire_at_their_deadlines(void **state)
{
    coord_service_t *svc = *state;
    int64_t due[300];
    int n = 300;

    for (int i = 0; i < n; i++) {
        int64_t wait_ms = 20 + (i * 37) % 400;
        due[i] = service_now_ms() + wait_ms;
        park(svc, i, "never", wait_ms);
    }
    park(svc, n, "never", 600000);
    await_ended(n + 1, n);
    for (int i = 0; i < n; i++) {
        assert_int_equal(rec.calls[i].fails, 1);
        assert_int_equal(rec.calls[i].status, FERRY_ERR_TIMED_OUT);
        assert_true(rec.calls[i].failed_ms >= due[i]);
    }
    assert_int_equal(coord_service_parked_waits(svc), 1);
    service_waits_stop(svc);
    assert_int_equal(rec.calls[n].fails, 1);
    assert_int_equal(rec.calls[n].status, FERRY_ERR_UNAVAILABLE);
    assert_int_equal(rec.calls[n].refs, 0);
}

/* A wait due before everything parked wakes the wait thread, which would
 * otherwise sleep until what it last saw was due (here ten minutes off, with
 * an idle sleep of an hour): a wait of 50 ms ended up to the idle second
 * late in a soak of a real coordinator. */
static void test_sooner_wait_wakes_the_thread(void **state)
{
    coord_service_t *svc = *state;

    park(svc, 0, "never", 600000);
    /* A wait woken and run, so that the thread has looked at the heap since
     * the far one parked, and sleeps for it. */
    park(svc, 2, "woken", 600000);
    service_waits_wake(svc, "woken");
    await_ended(3, 1);
    assert_int_equal(rec.calls[2].runs, 1);
    park(svc, 1, "never", 20);
    await_ended(3, 2); /* its 10 s bound: the thread slept through it before */
    assert_int_equal(rec.calls[1].fails, 1);
    assert_int_equal(rec.calls[1].status, FERRY_ERR_TIMED_OUT);
    assert_int_equal(rec.calls[0].fails, 0);
    assert_int_equal(coord_service_parked_waits(svc), 1);
}

/* Calls in [0, n) that are parked (their slot set) and how many lookups
 * of the slot there were, read under waits_lock. */
static int parked_calls(coord_service_t *svc, int n, int *lookups_p)
{
    int parked = 0, lookups = 0;

    pthread_mutex_lock(&svc->waits_lock);
    for (int i = 0; i < n; i++) {
        parked += rec.calls[i].parked != NULL;
        lookups += rec.calls[i].parked_lookups;
    }
    pthread_mutex_unlock(&svc->waits_lock);
    *lookups_p = lookups;
    return parked;
}

/* A cancelled wait leaves at once (CANCELLED), from among many, and a wake
 * of its ID later runs only the other wait on that ID; a cancel that comes
 * after its wait ran does nothing. A cancel finds its wait through its own
 * call, looking at no other (audit-s33 L1: it walked every parked wait,
 * under the lock the wakes need). */
static void test_cancelled_wait_leaves(void **state)
{
    coord_service_t *svc = *state;
    char id[32];
    int n = 500, lookups;

    for (int i = 0; i < n; i++) {
        snprintf(id, sizeof(id), "id-%d", i % 250);
        park(svc, i, id, 600000);
    }
    assert_int_equal(parked_calls(svc, n, &lookups), n);
    assert_int_equal(lookups, 0);
    rec.calls[100].cancel(call_of(100), rec.calls[100].cancel_arg);
    assert_int_equal(rec.calls[100].fails, 1);
    assert_int_equal(rec.calls[100].status, FERRY_ERR_CANCELLED);
    assert_int_equal(rec.calls[100].refs, 0);
    assert_int_equal(coord_service_parked_waits(svc), (size_t)n - 1);
    assert_int_equal(parked_calls(svc, n, &lookups), n - 1);
    assert_int_equal(lookups, 1);
    assert_int_equal(rec.calls[100].parked_lookups, 1);
    assert_null(rec.calls[100].parked);
    service_waits_wake(svc, "id-100");
    await_ended(n, 2);
    assert_int_equal(rec.calls[350].runs, 1);
    assert_int_equal(rec.calls[100].runs, 0);
    assert_int_equal(parked_calls(svc, n, &lookups), n - 2);
    rec.calls[350].cancel(call_of(350), rec.calls[350].cancel_arg); /* ran already */
    assert_int_equal(rec.calls[350].fails, 0);
    assert_int_equal(coord_service_parked_waits(svc), (size_t)n - 2);
}

/* Stopping fails every parked wait UNAVAILABLE and clears their slots: a
 * cancel that comes after (the rpc layer's, as the server shuts down)
 * finds nothing parked, not the freed wait. */
static void test_cancel_after_stop_finds_nothing(void **state)
{
    coord_service_t *svc = *state;
    int n = 100, lookups;

    for (int i = 0; i < n; i++) {
        park(svc, i, "never", 600000);
    }
    service_waits_stop(svc);
    assert_int_equal(parked_calls(svc, n, &lookups), 0);
    for (int i = 0; i < n; i++) {
        rec.calls[i].cancel(call_of(i), rec.calls[i].cancel_arg);
        assert_int_equal(rec.calls[i].fails, 1);
        assert_int_equal(rec.calls[i].status, FERRY_ERR_UNAVAILABLE);
        assert_int_equal(rec.calls[i].refs, 0);
    }
}

/* A wake for the ID between the caller's look and its parking makes it
 * look again at once; a wake for another ID does not. */
static void test_wake_before_parking_is_not_missed(void **state)
{
    coord_service_t *svc = *state;
    uint64_t seq = service_waits_seq(svc);

    service_waits_wake(svc, "early");
    park_seen(svc, 0, "early", 600000, seq);
    park_seen(svc, 1, "other", 600000, seq);
    await_ended(2, 1);
    assert_int_equal(rec.calls[0].runs, 1);
    assert_int_equal(coord_service_parked_waits(svc), 1);
}

/* Past max_waits a wait is refused RESOURCE_EXHAUSTED, holding nothing. */
static void test_bound_refuses_past_it(void **state)
{
    coord_service_t *svc = *state;

    svc->max_waits = 100;
    for (int i = 0; i <= 100; i++) {
        park(svc, i, "bounded", 600000);
    }
    assert_int_equal(coord_service_parked_waits(svc), 100);
    assert_int_equal(rec.calls[100].fails, 1);
    assert_int_equal(rec.calls[100].status, FERRY_ERR_RESOURCE_EXHAUSTED);
    assert_int_equal(rec.calls[100].refs, 0);
    assert_int_equal(rec.calls[99].fails, 0);
}

/* Past max_waits_per_peer from one host, its next wait is refused
 * RESOURCE_EXHAUSTED, holding nothing, while another host's parks; the
 * host's share comes back on every way a wait leaves (cancelled, run after
 * a wake, run at its deadline, the service stopping), and a host whose
 * waits are all gone leaves the table. */
static void test_per_peer_share_refuses_one_host_and_comes_back(void **state)
{
    coord_service_t *svc = *state;
    char id[32];

    svc->max_waits = 100;
    svc->max_waits_per_peer = 12;
    for (int i = 0; i < 20; i++) { /* A: 4 to cancel, 4 to wake, 4 to expire, 8 refused */
        snprintf(id, sizeof(id), "%s-%d", i < 4 ? "cancel" : i < 8 ? "wake" : "late", i);
        park(svc, i, id, i < 8 || i >= 12 ? 600000 : 300);
    }
    snprintf(rec.hosts[20], sizeof(rec.hosts[20]), "10.0.0.2");
    park(svc, 20, "other-host", 600000);
    assert_int_equal(coord_service_parked_waits(svc), 13);
    for (int i = 12; i < 20; i++) {
        assert_int_equal(rec.calls[i].fails, 1);
        assert_int_equal(rec.calls[i].status, FERRY_ERR_RESOURCE_EXHAUSTED);
        assert_int_equal(rec.calls[i].refs, 0);
    }
    assert_int_equal(rec.calls[20].fails, 0);
    assert_int_equal(coord_service_wait_peers(svc), 2);
    assert_int_equal(coord_peers_held(svc->wait_peers, HOST_A), 12);

    for (int i = 0; i < 4; i++) {
        rec.calls[i].cancel(call_of(i), rec.calls[i].cancel_arg);
    }
    for (int i = 4; i < 8; i++) {
        snprintf(id, sizeof(id), "wake-%d", i);
        service_waits_wake(svc, id);
    }
    await_ended(20, 20); /* 4 cancelled, 4 run, 4 timed out, 8 refused */
    assert_int_equal(coord_peers_held(svc->wait_peers, HOST_A), 0);
    assert_int_equal(coord_service_wait_peers(svc), 1);
    park(svc, 21, "again", 600000); /* A's share is back */
    assert_int_equal(rec.calls[21].fails, 0);
    service_waits_stop(svc);
    assert_int_equal(coord_service_wait_peers(svc), 0);
    assert_int_equal(coord_service_parked_waits(svc), 0);
}

/* The view comes back holding records that came with no event: the waits
 * for those run, once; the others stay parked, and run when their own wake
 * comes. */
static void test_view_back_runs_the_waits_whose_record_it_holds(void **state)
{
    coord_service_t *svc = *state;
    char id[32];
    int n = 400;

    for (int i = 0; i < n; i++) {
        snprintf(id, sizeof(id), "%s-%d", i % 2 == 0 ? "held" : "absent", i);
        park(svc, i, id, 600000);
    }
    service_waits_recheck(svc);
    await_ended(n, n / 2);
    for (int i = 0; i < n; i++) {
        assert_int_equal(rec.calls[i].runs, i % 2 == 0);
        assert_int_equal(rec.calls[i].fails, 0);
    }
    assert_int_equal(coord_service_parked_waits(svc), (size_t)n / 2);
    service_waits_wake(svc, "absent-1");
    await_ended(n, n / 2 + 1);
    assert_int_equal(rec.calls[1].runs, 1);
}

/* A look before the view came back may have missed a record that came
 * with no event: the wait it parks runs at once, whatever its ID; one
 * after does not. */
static void test_look_from_before_the_view_came_back_looks_again(void **state)
{
    coord_service_t *svc = *state;
    uint64_t seq = service_waits_seq(svc);

    service_waits_recheck(svc);
    park_seen(svc, 0, "absent-early", 600000, seq);
    park(svc, 1, "absent-late", 600000);
    await_ended(2, 1);
    assert_int_equal(rec.calls[0].runs, 1);
    assert_int_equal(coord_service_parked_waits(svc), 1);
}

/* A wait whose time is up runs once more when the view holds its record
 * (no wake came: the watch may lag behind a write-through), and fails
 * TIMED_OUT when it does not. */
static void test_ended_wait_looks_once_more_if_the_view_holds_it(void **state)
{
    coord_service_t *svc = *state;

    park(svc, 0, "held-late", 50);
    park(svc, 1, "absent-late", 50);
    await_ended(2, 2);
    assert_int_equal(rec.calls[0].runs, 1);
    assert_int_equal(rec.calls[0].fails, 0);
    assert_int_equal(rec.calls[1].runs, 0);
    assert_int_equal(rec.calls[1].fails, 1);
    assert_int_equal(rec.calls[1].status, FERRY_ERR_TIMED_OUT);
}

/* 2,000 waits on IDs whose FNV-1a ends in the same 20 bits, as a client
 * may choose them (audit-s33 H2): with the hash keyed, no bucket of
 * waits_by_id holds more than a few, so a wake, or a wait leaving, walks no
 * long chain under waits_lock. Unkeyed, all 2,000 share one. */
static void test_colliding_ids_spread(void **state)
{
    enum { N = 2000 };
    coord_service_t *svc = *state;
    char **ids = fnv_colliding_ids(FNV_OFFSET_STANDARD, N);
    size_t most = 0;

    assert_non_null(ids);
    for (int i = 0; i < N; i++) {
        park(svc, i, ids[i], 600000);
    }
    assert_int_equal(coord_service_parked_waits(svc), N);
    pthread_mutex_lock(&svc->waits_lock);
    for (size_t b = 0; b < svc->n_id_buckets; b++) {
        size_t n = 0;
        for (const wait_entry_t *w = svc->waits_by_id[b]; w != NULL; w = w->hnext) {
            n++;
        }
        most = n > most ? n : most;
    }
    pthread_mutex_unlock(&svc->waits_lock);
    assert_true(most <= 16);
    service_waits_wake(svc, ids[7]);
    await_ended(N, 1);
    assert_int_equal(rec.calls[7].runs, 1);
    fnv_ids_free(ids, N);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_wait),
        cmocka_unit_test(test_extremes_saturate),
        cmocka_unit_test(test_caller_deadline_bounds_it),
        cmocka_unit_test(test_etcd_deadline_keeps_time_for_the_answer),
        cmocka_unit_test_setup_teardown(test_wake_runs_only_its_own_waits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_waits_expire_at_their_deadlines, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sooner_wait_wakes_the_thread, setup_long_idle,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cancelled_wait_leaves, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_after_stop_finds_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wake_before_parking_is_not_missed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bound_refuses_past_it, setup, teardown),
        cmocka_unit_test_setup_teardown(test_per_peer_share_refuses_one_host_and_comes_back, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_view_back_runs_the_waits_whose_record_it_holds, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_look_from_before_the_view_came_back_looks_again, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_ended_wait_looks_once_more_if_the_view_holds_it, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_colliding_ids_spread, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
