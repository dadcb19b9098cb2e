/*
 * test_registry_batch.c: how Registers that share an etcd transaction
 * (coordinator/registry_batch.c) are answered when that transaction fails,
 * with etcd_txn replaced by a small in-memory store through --wrap: the
 * failures here (a commit whose answer could not be read, a lease gone
 * among many, a request etcd refuses as too large) cannot be produced on
 * demand from a real etcd. tests/python/test_register_batch.py drives the
 * same code against a real etcd and coordinator.
 *
 * Each case queues Registers behind one held in etcd_txn (a gate), so that
 * they are all taken together as one transaction when the gate opens.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "registry_int.h"

#define N_QUEUED   8
#define DEAD_LEASE 666
#define MAX_KEYS   256
#define KEY_CAP    64

typedef enum {
    FAKE_NORMAL,          /* create-if-absent, as etcd */
    FAKE_APPLY_THEN_FAIL, /* a shared transaction is applied, then its answer is lost */
    FAKE_REFUSE_SHARED,   /* a shared transaction is refused as too large */
} fake_mode_t;

/* The store and what the test saw, under fake.lock. */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    fake_mode_t mode;
    char keys[MAX_KEYS][KEY_CAP];
    size_t n_keys;
    int64_t revision;
    bool gate;     /* the first call waits here until the gate opens */
    bool holding;  /* the first call is at the gate */
    bool hold_all; /* every call waits at the gate, not only the first */
    int held;      /* calls that have come to the gate */
    int foreign;   /* calls whose caller's own write was not among their puts */
    int calls, shared_calls, not_found_calls, largest;
    int in_txn, most_in_txn;     /* calls in etcd_txn now, and the most at once */
    size_t largest_cmps;         /* compares of the call with the most */
    int64_t deadlines[MAX_KEYS]; /* the thread's etcd deadline at each call */
    size_t largest_bytes;        /* values and keys of the largest shared call */
} fake = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

static atomic_bool shared_seen; /* a shared transaction has been sent */
static atomic_bool suspect;     /* what etcd_suspects_a_member answers */
/* The key of the write the calling member thread registers (member_main). */
static _Thread_local const char *own_key;

bool __wrap_etcd_suspects_a_member(etcd_client_t *client);

bool __wrap_etcd_suspects_a_member(etcd_client_t *client)
{
    (void)client;
    return atomic_load(&suspect);
}

static bool stored(const void *key, size_t len)
{
    for (size_t i = 0; i < fake.n_keys; i++) {
        if (strlen(fake.keys[i]) == len && memcmp(fake.keys[i], key, len) == 0) {
            return true;
        }
    }
    return false;
}

static void store(const void *key, size_t len)
{
    assert_true(fake.n_keys < MAX_KEYS && len < KEY_CAP);
    memcpy(fake.keys[fake.n_keys], key, len);
    fake.keys[fake.n_keys++][len] = '\0';
}

ferry_status_t __wrap_etcd_txn(etcd_client_t *client, const etcd_compare_t *cmps, size_t n_cmps,
                               const etcd_op_t *puts, size_t n_puts, const etcd_op_t *gets,
                               size_t n_gets, etcd_txn_result_t *res);

ferry_status_t __wrap_etcd_txn(etcd_client_t *client, const etcd_compare_t *cmps, size_t n_cmps,
                               const etcd_op_t *puts, size_t n_puts, const etcd_op_t *gets,
                               size_t n_gets, etcd_txn_result_t *res)
{
    ferry_status_t status = FERRY_OK;
    bool taken = false;
    size_t bytes = 0;

    (void)client;
    *res = (etcd_txn_result_t){0};
    pthread_mutex_lock(&fake.lock);
    fake.in_txn++;
    fake.most_in_txn = fake.in_txn > fake.most_in_txn ? fake.in_txn : fake.most_in_txn;
    if (own_key != NULL) {
        bool own = false;
        for (size_t i = 0; i < n_puts; i++) {
            own = own || (puts[i].key_len == strlen(own_key) &&
                          memcmp(puts[i].key, own_key, puts[i].key_len) == 0);
        }
        fake.foreign += own ? 0 : 1;
    }
    if (fake.gate && (fake.hold_all || !fake.holding)) {
        fake.holding = true;
        fake.held++;
        pthread_cond_broadcast(&fake.cond);
        while (fake.gate) {
            pthread_cond_wait(&fake.cond, &fake.lock);
        }
    }
    fake.deadlines[fake.calls++ % MAX_KEYS] = etcd_get_deadline();
    for (size_t i = 0; i < n_puts; i++) {
        bytes += puts[i].key_len + puts[i].value_len;
        if (puts[i].lease == DEAD_LEASE) {
            status = FERRY_ERR_NOT_FOUND;
        }
        taken = taken || stored(puts[i].key, puts[i].key_len);
    }
    (void)cmps; /* a put's compare is of its own key (and of its fence: never stored) */
    fake.largest_cmps = n_cmps > fake.largest_cmps ? n_cmps : fake.largest_cmps;
    if (n_puts > 1) {
        fake.shared_calls++;
        atomic_store(&shared_seen, true);
        if ((int)n_puts > fake.largest) {
            fake.largest = (int)n_puts;
            fake.largest_bytes = bytes;
        }
    }
    if (status == FERRY_ERR_NOT_FOUND) {
        fake.not_found_calls++;
    } else if (n_puts > 1 && fake.mode == FAKE_REFUSE_SHARED) {
        status = FERRY_ERR_INVALID_ARGUMENT;
    } else if (taken) {
        res->succeeded = false;
        res->revision = fake.revision;
        res->results = calloc(n_gets, sizeof(*res->results));
        assert_true(n_gets == 0 || res->results != NULL);
        res->n_results = n_gets;
        for (size_t i = 0; i < n_gets; i++) {
            res->results[i].count = stored(gets[i].key, gets[i].key_len) ? 1 : 0;
        }
    } else {
        for (size_t i = 0; i < n_puts; i++) {
            store(puts[i].key, puts[i].key_len);
        }
        res->succeeded = true;
        res->revision = ++fake.revision;
        if (n_puts > 1 && fake.mode == FAKE_APPLY_THEN_FAIL) {
            *res = (etcd_txn_result_t){0};
            status = FERRY_ERR_PROTOCOL; /* applied, but the answer was lost */
        }
    }
    fake.in_txn--;
    pthread_mutex_unlock(&fake.lock);
    return status;
}

typedef struct {
    coord_registry_t *r;
    registry_write_t w;
    char key[KEY_CAP];
    bool gone_once_shared; /* its caller leaves once a shared transaction was sent */
    atomic_bool leaves;    /* its caller leaves now (the test says when) */
    atomic_bool returned;  /* registry_write returned */
    int64_t own_deadline;  /* its thread's etcd deadline, before and (out) after */
} member_t;

static bool member_gone(void *arg)
{
    member_t *m = arg;
    return atomic_load(&m->leaves) || (m->gone_once_shared && atomic_load(&shared_seen));
}

static void *member_main(void *arg)
{
    member_t *m = arg;
    own_key = m->key;
    etcd_set_deadline(m->own_deadline);
    registry_write(m->r, &m->w);
    m->own_deadline = etcd_get_deadline();
    atomic_store(&m->returned, true);
    return NULL;
}

static void member_init(member_t *m, coord_registry_t *r, int i, int64_t lease, size_t value_len)
{
    static const uint8_t small[16];

    m->r = r;
    m->own_deadline = 0;
    m->gone_once_shared = false;
    atomic_store(&m->leaves, false);
    atomic_store(&m->returned, false);
    snprintf(m->key, sizeof(m->key), "/ferry/ops/id-%d", i);
    m->w = (registry_write_t){.key = m->key,
                              .key_len = strlen(m->key),
                              .lease = lease,
                              .value = small,
                              .value_len = sizeof(small),
                              .gone = member_gone,
                              .gone_arg = m};
    if (value_len > 0) {
        uint8_t *value = calloc(1, value_len);
        assert_non_null(value);
        m->w.value = value;
        m->w.value_len = value_len;
    }
}

static size_t queued(coord_registry_t *r)
{
    size_t n = 0;
    pthread_mutex_lock(&r->batch_lock);
    for (registry_write_t *w = r->batch_head; w != NULL; w = w->next) {
        n++;
    }
    pthread_mutex_unlock(&r->batch_lock);
    return n;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Runs members[0] to the gate and queues members[1..n) behind it. */
static void queue_at_gate(coord_registry_t *r, member_t *members, size_t n, pthread_t *threads)
{
    int64_t deadline = now_ms() + 10000;

    pthread_mutex_lock(&fake.lock);
    fake.gate = true;
    pthread_mutex_unlock(&fake.lock);
    assert_int_equal(pthread_create(&threads[0], NULL, member_main, &members[0]), 0);
    pthread_mutex_lock(&fake.lock);
    while (!fake.holding) {
        pthread_cond_wait(&fake.cond, &fake.lock);
    }
    pthread_mutex_unlock(&fake.lock);
    for (size_t i = 1; i < n; i++) {
        assert_int_equal(pthread_create(&threads[i], NULL, member_main, &members[i]), 0);
    }
    while (queued(r) < n - 1 && now_ms() < deadline) {
        struct timespec pause = {0, 1000000};
        nanosleep(&pause, NULL); /* polling the condition, with a deadline */
    }
    assert_int_equal(queued(r), n - 1);
}

/* Opens the gate and waits for threads[0..n). */
static void open_gate(pthread_t *threads, size_t n)
{
    pthread_mutex_lock(&fake.lock);
    fake.gate = false;
    pthread_cond_broadcast(&fake.cond);
    pthread_mutex_unlock(&fake.lock);
    for (size_t i = 0; i < n; i++) {
        pthread_join(threads[i], NULL);
    }
}

/* Runs members[0] to the gate, queues members[1..n) behind it, opens the
 * gate and waits for all. */
static void run_together(coord_registry_t *r, member_t *members, size_t n)
{
    pthread_t threads[1 + N_QUEUED * 2];

    assert_true(n <= sizeof(threads) / sizeof(threads[0]));
    queue_at_gate(r, members, n, threads);
    open_gate(threads, n);
}

/* An empty store, nothing seen. */
static void fake_reset(void)
{
    pthread_mutex_lock(&fake.lock);
    fake.mode = FAKE_NORMAL;
    fake.n_keys = 0;
    fake.gate = fake.holding = fake.hold_all = false;
    fake.held = fake.foreign = 0;
    fake.in_txn = fake.most_in_txn = 0;
    fake.calls = fake.shared_calls = fake.not_found_calls = fake.largest = 0;
    fake.largest_bytes = 0;
    fake.largest_cmps = 0;
    pthread_mutex_unlock(&fake.lock);
    atomic_store(&shared_seen, false);
    atomic_store(&suspect, false);
}

static int setup(void **state)
{
    coord_registry_t *r = calloc(1, sizeof(*r));

    assert_non_null(r);
    r->params.register_batch = COORD_REGISTER_BATCH;
    pthread_mutex_init(&r->batch_lock, NULL);
    assert_int_equal(ferry__cond_init_clock(&r->batch_cond, CLOCK_MONOTONIC), 0);
    r->batch_tail = &r->batch_head;
    /* A transaction held at the gate counts as held by etcd only in the
     * cases that say so: others hold it as long as they need. */
    r->batch_stall_ms = 600000;
    fake_reset();
    *state = r;
    return 0;
}

static int teardown(void **state)
{
    coord_registry_t *r = *state;
    pthread_mutex_destroy(&r->batch_lock);
    pthread_cond_destroy(&r->batch_cond);
    free(r);
    return 0;
}

/* Registers each on its own lease, one of them gone: one shared
 * transaction fails, each member goes alone once, and only the gone
 * lease's fails. (Found lease by lease, it took a failed shared
 * transaction per lease.) */
static void test_gone_lease_among_many_is_found_in_one_round(void **state)
{
    coord_registry_t *r = *state;
    member_t m[1 + N_QUEUED * 2];
    size_t n = 1 + N_QUEUED * 2, dead = n / 2;

    for (size_t i = 0; i < n; i++) {
        member_init(&m[i], r, (int)i, i == dead ? DEAD_LEASE : 100 + (int64_t)i, 0);
    }
    run_together(r, m, n);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(m[i].w.status, i == dead ? FERRY_ERR_NOT_FOUND : FERRY_OK);
        assert_true(i == dead || m[i].w.created);
    }
    assert_int_equal(fake.shared_calls, 1);
    assert_int_equal(fake.not_found_calls, 2); /* the shared one, then its own */
    assert_int_equal(fake.calls, (int)n + 1);  /* the held one, the shared one, each alone */
}

/* Registers on a live lease, on a gone one, and one alone on a third, in
 * one shared transaction (a worker's session lease beside a dead worker's):
 * it fails, and they go again by lease: the live lease's members still
 * share one transaction (they all went alone before), the gone lease's
 * are answered by one more, and the one alone on its lease runs alone. */
static void test_gone_lease_among_several_keeps_the_live_ones_sharing(void **state)
{
    coord_registry_t *r = *state;
    member_t m[1 + N_QUEUED * 2];
    size_t n = 1 + N_QUEUED * 2, lone = n - 1;
    int64_t live_revision = 0;

    for (size_t i = 0; i < n; i++) {
        int64_t lease = i == lone ? 300 : i % 3 == 1 ? DEAD_LEASE : 200;
        member_init(&m[i], r, (int)i, lease, 0);
    }
    run_together(r, m, n);
    for (size_t i = 1; i < n; i++) {
        bool dead = m[i].w.lease == DEAD_LEASE;
        assert_int_equal(m[i].w.status, dead ? FERRY_ERR_NOT_FOUND : FERRY_OK);
        assert_true(dead || m[i].w.created);
        if (!dead && i != lone) {
            /* the live lease's members answer with one revision: shared */
            live_revision = live_revision == 0 ? m[i].w.revision : live_revision;
            assert_int_equal(m[i].w.revision, live_revision);
        }
    }
    /* the mixed one, the live lease's, the gone lease's: shared; the
     * lone one alone; and the held one */
    assert_int_equal(fake.shared_calls, 3);
    assert_int_equal(fake.not_found_calls, 2);
    assert_int_equal(fake.calls, 5);
    assert_int_equal(queued(r), 0);
}

/* Every member on the one lease that is gone: all are answered so by the
 * one shared transaction, none goes again. */
static void test_one_gone_lease_answers_every_member(void **state)
{
    coord_registry_t *r = *state;
    member_t m[1 + N_QUEUED];

    member_init(&m[0], r, 0, 100, 0);
    for (size_t i = 1; i <= N_QUEUED; i++) {
        member_init(&m[i], r, (int)i, DEAD_LEASE, 0);
    }
    run_together(r, m, 1 + N_QUEUED);
    for (size_t i = 1; i <= N_QUEUED; i++) {
        assert_int_equal(m[i].w.status, FERRY_ERR_NOT_FOUND);
    }
    assert_int_equal(fake.calls, 2);
}

/* A shared transaction that etcd applied but whose answer was lost: every
 * member gets the failure, as it would have alone. Sent again alone, each
 * would find its own record and be told the ID is taken. */
static void test_failure_after_apply_is_every_members_answer(void **state)
{
    coord_registry_t *r = *state;
    member_t m[1 + N_QUEUED];

    fake.mode = FAKE_APPLY_THEN_FAIL;
    for (size_t i = 0; i <= N_QUEUED; i++) {
        member_init(&m[i], r, (int)i, 100, 0);
    }
    run_together(r, m, 1 + N_QUEUED);
    assert_int_equal(m[0].w.status, FERRY_OK);
    for (size_t i = 1; i <= N_QUEUED; i++) {
        assert_int_equal(m[i].w.status, FERRY_ERR_PROTOCOL);
        assert_false(m[i].w.created);
    }
    assert_int_equal(fake.calls, 2); /* none sent again */
}

/* A shared transaction refused before anything was applied (too large):
 * each member runs alone and gets its own answer; one whose caller has
 * stopped waiting by then is not sent. */
static void test_refused_transaction_runs_each_alone(void **state)
{
    coord_registry_t *r = *state;
    member_t m[1 + N_QUEUED];

    fake.mode = FAKE_REFUSE_SHARED;
    for (size_t i = 0; i <= N_QUEUED; i++) {
        member_init(&m[i], r, (int)i, 100, 0);
        m[i].gone_once_shared = i == 1;
    }
    run_together(r, m, 1 + N_QUEUED);
    assert_true(m[1].w.late);
    assert_int_equal(m[1].w.status, FERRY_ERR_TIMED_OUT);
    for (size_t i = 0; i <= N_QUEUED; i++) {
        assert_int_equal(m[i].w.status, i == 1 ? FERRY_ERR_TIMED_OUT : FERRY_OK);
        assert_true(i == 1 || m[i].w.created);
    }
    pthread_mutex_lock(&fake.lock);
    assert_false(stored(m[1].key, strlen(m[1].key)));
    pthread_mutex_unlock(&fake.lock);
    assert_int_equal(fake.calls, 2 + N_QUEUED - 1);
}

/* Large Registers: no shared transaction carries more than
 * REGISTRY_BATCH_BYTES (etcd would refuse it), and they still share. */
static void test_shared_transaction_bytes_are_bounded(void **state)
{
    coord_registry_t *r = *state;
    member_t m[1 + N_QUEUED];
    size_t big = 400 * 1024;

    for (size_t i = 0; i <= N_QUEUED; i++) {
        member_init(&m[i], r, (int)i, 100, big);
    }
    run_together(r, m, 1 + N_QUEUED);
    for (size_t i = 0; i <= N_QUEUED; i++) {
        assert_int_equal(m[i].w.status, FERRY_OK);
        assert_true(m[i].w.created);
        free((void *)m[i].w.value);
    }
    assert_int_equal(fake.largest, 2);
    assert_true(fake.largest_bytes <= REGISTRY_BATCH_BYTES);
    assert_int_equal(fake.calls, 1 + N_QUEUED / 2);
}

/* A fenced Register (registry_unwrite.c) brings two compares, and etcd
 * refuses a transaction of more than --max-txn-ops (128) of them: with
 * --register-batch 128, 100 fenced Registers queued together go in
 * transactions of 64, each within 128 compares. (They went as one of 200
 * compares, which etcd refused whole, and then each alone.) */
static void test_fenced_writes_keep_a_transaction_within_etcds_ops(void **state)
{
    enum { N = 100 };
    coord_registry_t *r = *state;
    static member_t m[1 + N];
    static pthread_t threads[1 + N];
    static char fences[1 + N][KEY_CAP];

    r->params.register_batch = COORD_REGISTER_BATCH_MAX;
    for (size_t i = 0; i <= N; i++) {
        member_init(&m[i], r, (int)i, 100, 0);
        snprintf(fences[i], KEY_CAP, "/ferry/fences/f-%zu", i);
        m[i].w.fence = fences[i];
        m[i].w.fence_len = strlen(fences[i]);
    }
    queue_at_gate(r, m, 1 + N, threads);
    open_gate(threads, 1 + N);
    for (size_t i = 0; i <= N; i++) {
        assert_int_equal(m[i].w.status, FERRY_OK);
        assert_true(m[i].w.created);
    }
    assert_true(fake.largest_cmps <= COORD_REGISTER_BATCH_MAX);
    assert_int_equal(fake.largest, COORD_REGISTER_BATCH_MAX / 2);
    assert_int_equal(fake.calls, 1 + 2); /* the one at the gate, then 64 + 36 */
}

/* A queued Register whose caller goes while a transaction is in flight
 * leaves the queue at once, unsent (TIMED_OUT, late), without waiting for
 * that transaction to end; the others queued beside it are unaffected.
 * (It used to keep its etcd worker until the transaction ended.) */
static void test_queued_write_leaves_when_its_caller_goes(void **state)
{
    coord_registry_t *r = *state;
    member_t m[1 + N_QUEUED];
    pthread_t threads[1 + N_QUEUED];
    size_t n = 1 + N_QUEUED, gone = N_QUEUED / 2;
    int64_t deadline;
    bool left_at_gate;
    size_t still;

    for (size_t i = 0; i < n; i++) {
        member_init(&m[i], r, (int)i, 100, 0);
    }
    queue_at_gate(r, m, n, threads);
    atomic_store(&m[gone].leaves, true);
    deadline = now_ms() + 2000;
    while (!atomic_load(&m[gone].returned) && now_ms() < deadline) {
        struct timespec pause = {0, 1000000};
        nanosleep(&pause, NULL); /* polling the condition, with a deadline */
    }
    /* Read before the gate opens; asserted after, so a failure leaves no
     * thread behind a closed gate. */
    left_at_gate = atomic_load(&m[gone].returned);
    still = queued(r);
    open_gate(threads, n);
    assert_true(left_at_gate);
    assert_int_equal(still, n - 2);
    assert_true(m[gone].w.late);
    assert_int_equal(m[gone].w.status, FERRY_ERR_TIMED_OUT);
    pthread_mutex_lock(&fake.lock);
    assert_false(stored(m[gone].key, strlen(m[gone].key)));
    pthread_mutex_unlock(&fake.lock);
    for (size_t i = 0; i < n; i++) {
        if (i != gone) {
            assert_int_equal(m[i].w.status, FERRY_OK);
            assert_true(m[i].w.created);
        }
    }
    assert_int_equal(fake.calls, 2); /* the held one, then the rest together */
}

/* The last queued write leaves: the queue's tail moves back, and a write
 * queued after it still goes. */
static void test_last_queued_write_leaves_and_the_tail_follows(void **state)
{
    coord_registry_t *r = *state;
    member_t m[3];
    pthread_t threads[3];
    int64_t deadline;
    bool left_at_gate, tail_ok;

    for (size_t i = 0; i < 3; i++) {
        member_init(&m[i], r, (int)i, 100, 0);
    }
    queue_at_gate(r, m, 2, threads);
    atomic_store(&m[1].leaves, true);
    deadline = now_ms() + 2000;
    while (!atomic_load(&m[1].returned) && now_ms() < deadline) {
        struct timespec pause = {0, 1000000};
        nanosleep(&pause, NULL); /* polling the condition, with a deadline */
    }
    left_at_gate = atomic_load(&m[1].returned);
    assert_int_equal(pthread_create(&threads[2], NULL, member_main, &m[2]), 0);
    deadline = now_ms() + 2000;
    while (queued(r) < (left_at_gate ? 1u : 2u) && now_ms() < deadline) {
        struct timespec pause = {0, 1000000};
        nanosleep(&pause, NULL); /* polling the condition, with a deadline */
    }
    pthread_mutex_lock(&r->batch_lock);
    tail_ok = r->batch_head == &m[2].w && m[2].w.next == NULL;
    pthread_mutex_unlock(&r->batch_lock);
    open_gate(threads, 3);
    assert_true(left_at_gate);
    assert_true(tail_ok);
    assert_int_equal(m[1].w.status, FERRY_ERR_TIMED_OUT);
    assert_int_equal(m[0].w.status, FERRY_OK);
    assert_int_equal(m[2].w.status, FERRY_OK);
    assert_true(m[2].w.created);
    pthread_mutex_lock(&fake.lock);
    assert_false(stored(m[1].key, strlen(m[1].key)));
    assert_true(stored(m[2].key, strlen(m[2].key)));
    pthread_mutex_unlock(&fake.lock);
}

/* A transaction ends by its members' deadlines (each write's deadline_ms,
 * its caller's etcd deadline): alone, by its own; shared, by the latest of
 * them, so that no member hears a failure before its own deadline because
 * another's was sooner; with no deadline at all when a member has none.
 * Each member's thread has its own deadline back afterwards. */
static void test_a_transaction_ends_by_its_members_deadlines(void **state)
{
    coord_registry_t *r = *state;
    static const int64_t deadlines[][4] = {
        {1000, 5000, 7000, 3000}, /* the shared one: 7000 */
        {1000, 5000, 0, 3000},    /* one without: none */
    };
    /* Deadlines to come (a queued write whose deadline passed leaves). */
    int64_t base = now_ms() + 60000;

    for (size_t round = 0; round < 2; round++) {
        member_t m[4];

        for (size_t i = 0; i < 4; i++) {
            member_init(&m[i], r, (int)(10 * round + i), 100, 0);
            m[i].w.deadline_ms = deadlines[round][i] != 0 ? base + deadlines[round][i] : 0;
            m[i].own_deadline = 42 + (int64_t)i;
        }
        fake_reset();
        run_together(r, m, 4);
        for (size_t i = 0; i < 4; i++) {
            assert_int_equal(m[i].w.status, FERRY_OK);
            assert_int_equal(m[i].own_deadline, 42 + (int64_t)i);
        }
        assert_int_equal(fake.calls, 2);
        assert_int_equal(fake.shared_calls, 1);
        assert_int_equal(fake.deadlines[0], base + 1000); /* the held one, alone */
        assert_int_equal(fake.deadlines[1], round == 0 ? base + 7000 : 0);
    }
}

/* Waits (polling, with a deadline) until every one of m[from..n) has
 * returned; true if they all did. */
static bool all_returned(member_t *m, size_t from, size_t n, int64_t within_ms)
{
    int64_t deadline = now_ms() + within_ms;

    for (;;) {
        size_t done = 0;
        for (size_t i = from; i < n; i++) {
            done += atomic_load(&m[i].returned) ? 1 : 0;
        }
        if (done == n - from) {
            return true;
        }
        if (now_ms() >= deadline) {
            return false;
        }
        struct timespec pause = {0, 1000000};
        nanosleep(&pause, NULL); /* polling the condition, with a deadline */
    }
}

/* Sets the stall after which a held transaction lets the queue lead
 * another, and wakes the queue to look again (tests queue with it huge). */
static void set_stall(coord_registry_t *r, int64_t ms)
{
    pthread_mutex_lock(&r->batch_lock);
    r->batch_stall_ms = ms;
    pthread_cond_broadcast(&r->batch_cond);
    pthread_mutex_unlock(&r->batch_lock);
}

/* Waits (with a deadline) until n calls have come to the gate. */
static bool held_calls(int n)
{
    int64_t deadline = now_ms() + 20000;
    bool ok;

    pthread_mutex_lock(&fake.lock);
    while (fake.held < n && now_ms() < deadline) {
        struct timespec until = ferry__clock_in_ms(CLOCK_REALTIME, 10);
        pthread_cond_timedwait(&fake.cond, &fake.lock, &until);
    }
    ok = fake.held >= n;
    pthread_mutex_unlock(&fake.lock);
    return ok;
}

/* A transaction that etcd holds (a frozen member: here the gate, which
 * stays shut while the test looks) does not hold the Registers queued
 * behind it once it has been out batch_stall_ms and the etcd client
 * suspects a member: they go in a transaction of their own and are
 * answered, created, while it is still in flight. (They waited for it to
 * end: etcd's whole timeout.) With no member suspect (etcd slow
 * everywhere), they wait for it, as one transaction at a time does. */
static void test_a_held_transaction_does_not_hold_the_queue(void **state)
{
    coord_registry_t *r = *state;
    member_t m[1 + N_QUEUED];
    pthread_t threads[1 + N_QUEUED];
    size_t n = 1 + N_QUEUED;
    bool waited, answered, held;
    int calls;

    for (size_t i = 0; i < n; i++) {
        member_init(&m[i], r, (int)i, 100, 0);
    }
    queue_at_gate(r, m, n, threads);
    set_stall(r, 10);
    /* None suspect: none is answered (a negative, so its window only
     * bounds how long the test looks). */
    waited = !all_returned(m, 1, n, 300) && queued(r) == n - 1;
    atomic_store(&suspect, true);
    answered = all_returned(m, 1, n, 20000);
    held = !atomic_load(&m[0].returned);
    pthread_mutex_lock(&fake.lock);
    calls = fake.calls;
    pthread_mutex_unlock(&fake.lock);
    open_gate(threads, n);
    assert_true(waited);
    assert_true(answered);
    assert_true(held);
    assert_int_equal(calls, 1); /* the held one is counted when the gate opens */
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(m[i].w.status, FERRY_OK);
        assert_true(m[i].w.created);
    }
    assert_int_equal(fake.calls, 2);
    assert_int_equal(fake.shared_calls, 1); /* the queued ones, together */
}

/* Only a thread whose write is still queued leads a transaction: one
 * whose write is in a transaction in flight (a member of a batch another
 * thread leads) waits for that one's answer, and never leads the next,
 * which would keep its caller's answer until that next one ended (etcd's
 * timeout, if etcd holds it too). Every transaction's leader is here
 * among its writes. Two rounds in which the members of a held batch and
 * a newly queued write are woken together to lead. */
static void test_a_write_in_flight_never_leads_another(void **state)
{
    coord_registry_t *r = *state;
    enum { N = 9 };
    member_t m[N];
    pthread_t threads[N];
    bool started[3];

    for (size_t i = 0; i < N; i++) {
        member_init(&m[i], r, (int)i, 100, 0);
    }
    pthread_mutex_lock(&fake.lock);
    fake.hold_all = true;
    pthread_mutex_unlock(&fake.lock);
    atomic_store(&suspect, true);
    queue_at_gate(r, m, 1 + 6, threads); /* T1: m0, held; m1..m6 queued */
    set_stall(r, 0);
    started[0] = held_calls(2); /* T2: m1..m6, held */
    for (size_t k = 0; k < 2; k++) {
        size_t i = 7 + k;
        set_stall(r, 600000);
        assert_int_equal(pthread_create(&threads[i], NULL, member_main, &m[i]), 0);
        for (int64_t deadline = now_ms() + 10000; queued(r) < 1 && now_ms() < deadline;) {
            struct timespec pause = {0, 1000000};
            nanosleep(&pause, NULL); /* polling the condition, with a deadline */
        }
        set_stall(r, 0); /* m2..m6 and m[i] woken together */
        started[1 + k] = held_calls(3 + (int)k);
    }
    open_gate(threads, N);
    assert_true(started[0] && started[1] && started[2]);
    assert_int_equal(fake.foreign, 0);
    for (size_t i = 0; i < N; i++) {
        assert_int_equal(m[i].w.status, FERRY_OK);
        assert_true(m[i].w.created);
    }
}

/* Transactions held while a member is suspect lead others only up to
 * REGISTRY_BATCH_INFLIGHT_MAX in flight: with four held (each led by the
 * write that queued alone after the one before was held), the writes
 * queued after them wait, none leads a fifth, and they are written once
 * the held ones end. (Without the bound a fifth would start, and its slot
 * would lie past batch_led.) */
static void test_held_transactions_stop_at_the_in_flight_bound(void **state)
{
    coord_registry_t *r = *state;
    enum { N = REGISTRY_BATCH_INFLIGHT_MAX + 4 };
    member_t m[N];
    pthread_t threads[N];
    bool started = true, waited, capped;
    int most;

    for (size_t i = 0; i < N; i++) {
        member_init(&m[i], r, (int)i, 100, 0);
    }
    pthread_mutex_lock(&fake.lock);
    fake.hold_all = true;
    pthread_mutex_unlock(&fake.lock);
    atomic_store(&suspect, true);
    queue_at_gate(r, m, 1, threads); /* m0, held */
    set_stall(r, 0);
    for (size_t i = 1; i < REGISTRY_BATCH_INFLIGHT_MAX; i++) {
        assert_int_equal(pthread_create(&threads[i], NULL, member_main, &m[i]), 0);
        started = started && held_calls(1 + (int)i); /* m[i] leads its own, held */
    }
    for (size_t i = REGISTRY_BATCH_INFLIGHT_MAX; i < N; i++) {
        assert_int_equal(pthread_create(&threads[i], NULL, member_main, &m[i]), 0);
    }
    /* Each queued write looks again every REGISTRY_BATCH_POLL_MS (its
     * caller may go): none leads (a negative, so the window only bounds
     * how long the test looks). */
    for (int64_t deadline = now_ms() + 10000;
         queued(r) < N - REGISTRY_BATCH_INFLIGHT_MAX && now_ms() < deadline;) {
        struct timespec pause = {0, 1000000};
        nanosleep(&pause, NULL); /* polling the condition, with a deadline */
    }
    waited = !all_returned(m, REGISTRY_BATCH_INFLIGHT_MAX, N, 300) &&
             queued(r) == N - REGISTRY_BATCH_INFLIGHT_MAX;
    pthread_mutex_lock(&fake.lock);
    capped = fake.held == REGISTRY_BATCH_INFLIGHT_MAX;
    most = fake.most_in_txn;
    pthread_mutex_unlock(&fake.lock);
    open_gate(threads, N);
    assert_true(started);
    assert_int_equal(most, REGISTRY_BATCH_INFLIGHT_MAX);
    assert_true(capped);
    assert_true(waited);
    assert_true(fake.most_in_txn <= REGISTRY_BATCH_INFLIGHT_MAX);
    assert_int_equal(fake.foreign, 0);
    assert_int_equal(queued(r), 0);
    for (size_t i = 0; i < N; i++) {
        assert_int_equal(m[i].w.status, FERRY_OK);
        assert_true(m[i].w.created);
    }
}

/* A queued Register whose own deadline (deadline_ms: its caller's, less the
 * answer's margin) comes while the transaction ahead of it is held leaves
 * unsent at that deadline, UNAVAILABLE (expired), and not TIMED_OUT: its
 * caller, still waiting, hears that nothing was written and asks again. */
static void test_a_queued_write_expires_unsent_at_its_deadline(void **state)
{
    coord_registry_t *r = *state;
    member_t m[2];
    pthread_t threads[2];
    bool left_at_gate;

    for (size_t i = 0; i < 2; i++) {
        member_init(&m[i], r, (int)i, 100, 0);
    }
    m[1].w.deadline_ms = now_ms() + 600000;
    queue_at_gate(r, m, 2, threads);
    pthread_mutex_lock(&r->batch_lock);
    m[1].w.deadline_ms = now_ms() + 50;
    pthread_mutex_unlock(&r->batch_lock);
    left_at_gate = all_returned(m, 1, 2, 20000);
    open_gate(threads, 2);
    assert_true(left_at_gate);
    assert_true(m[1].w.expired);
    assert_false(m[1].w.late);
    assert_int_equal(m[1].w.status, FERRY_ERR_UNAVAILABLE);
    assert_int_equal(m[0].w.status, FERRY_OK);
    pthread_mutex_lock(&fake.lock);
    assert_false(stored(m[1].key, strlen(m[1].key)));
    pthread_mutex_unlock(&fake.lock);
    assert_int_equal(fake.calls, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_gone_lease_among_many_is_found_in_one_round, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_gone_lease_among_several_keeps_the_live_ones_sharing,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_one_gone_lease_answers_every_member, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failure_after_apply_is_every_members_answer, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_refused_transaction_runs_each_alone, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fenced_writes_keep_a_transaction_within_etcds_ops,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_shared_transaction_bytes_are_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queued_write_leaves_when_its_caller_goes, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_last_queued_write_leaves_and_the_tail_follows, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_a_transaction_ends_by_its_members_deadlines, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_a_held_transaction_does_not_hold_the_queue, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_a_write_in_flight_never_leads_another, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_a_queued_write_expires_unsent_at_its_deadline, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_held_transactions_stop_at_the_in_flight_bound, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
