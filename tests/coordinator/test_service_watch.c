/*
 * test_service_watch.c: the Watch streams' bookkeeping (service_watch.c),
 * with the calls replaced through --wrap by a record of what happened to
 * each: a cancelled stream is found through its own call, looking at no
 * other, and gets nothing more; a second cancel does nothing; --max-watches
 * counts a stream from its subscription until its call is done, cancelled
 * or not, and a new stream then fits again; stopping ends the rest.
 * audit-s33 L1: each cancel walked every stream, under the lock that
 * publishing needs, and each new Watch counted every stream open.
 * tests/python/test_watch_contract.py and test_watch_memory.py drive the
 * same code through a real coordinator.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "service_int.h"

#define N_CALLS 1000

typedef struct {
    int refs;              /* rpc_call_ref minus rpc_call_unref */
    int sends;             /* units rpc_call_send_msgs queued */
    int past_sends;        /* of them, past the budget (RPC_SEND_PAST_BUDGET) */
    int refusals;          /* sends the budget refuses before it takes one (not past it) */
    size_t behind;         /* what rpc_call_behind_bytes answers */
    size_t sole;           /* rpc_call_sole_bytes */
    int64_t lag_ms;        /* rpc_call_lag_ms */
    int fails_now;         /* rpc_call_fail_now (ended for room) */
    int fails;             /* rpc_call_fail and rpc_call_fail_now */
    ferry_status_t status; /* the last fail's */
    bool done;             /* what rpc_call_is_done answers */
    void (*cancel)(rpc_call_t *, void *);
    void *cancel_arg;
    void *parked;       /* rpc_call_set_parked's, under the service's subs_lock */
    int parked_lookups; /* rpc_call_parked calls on it, likewise */
} call_rec_t;

/* Every call's record; the wrapped functions run under subs_lock or on
 * the test's thread, one at a time. */
static call_rec_t rec[N_CALLS];

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
    return &rec[i];
}

void __wrap_rpc_call_ref(rpc_call_t *call);
void __wrap_rpc_call_unref(rpc_call_t *call);
void __wrap_rpc_call_fail(rpc_call_t *call, ferry_status_t status, const char *fmt, ...);
void __wrap_rpc_call_fail_now(rpc_call_t *call, ferry_status_t status, const char *fmt, ...);
void __wrap_rpc_call_on_cancel(rpc_call_t *call, void (*cb)(rpc_call_t *call, void *arg),
                               void *arg);
bool __wrap_rpc_call_is_done(const rpc_call_t *call);
const char *__wrap_rpc_call_peer(const rpc_call_t *call);
const char *__wrap_rpc_call_peer_host(const rpc_call_t *call);
void __wrap_rpc_call_set_parked(rpc_call_t *call, void *entry);
void *__wrap_rpc_call_parked(const rpc_call_t *call);
ferry_status_t __wrap_rpc_call_send_msgs(rpc_call_t *call, rpc_msg_t *const *msgs, size_t n,
                                         unsigned flags, bool *over_budget_p);
void __wrap_rpc_call_set_send_limit(rpc_call_t *call, size_t max_queued_bytes);
void __wrap_rpc_call_set_send_budget(rpc_call_t *call, rpc_send_budget_t *budget);
size_t __wrap_rpc_call_behind_bytes(rpc_call_t *call);
size_t __wrap_rpc_call_sole_bytes(rpc_call_t *call);
int64_t __wrap_rpc_call_lag_ms(rpc_call_t *call);

void __wrap_rpc_call_ref(rpc_call_t *call)
{
    rec_of(call)->refs++;
}

void __wrap_rpc_call_unref(rpc_call_t *call)
{
    rec_of(call)->refs--;
}

void __wrap_rpc_call_fail(rpc_call_t *call, ferry_status_t status, const char *fmt, ...)
{
    (void)fmt;
    rec_of(call)->fails++;
    rec_of(call)->status = status;
}

void __wrap_rpc_call_fail_now(rpc_call_t *call, ferry_status_t status, const char *fmt, ...)
{
    (void)fmt;
    rec_of(call)->fails++;
    rec_of(call)->fails_now++;
    rec_of(call)->status = status;
}

void __wrap_rpc_call_on_cancel(rpc_call_t *call, void (*cb)(rpc_call_t *call, void *arg), void *arg)
{
    rec_of(call)->cancel = cb;
    rec_of(call)->cancel_arg = arg;
}

bool __wrap_rpc_call_is_done(const rpc_call_t *call)
{
    return rec_of(call)->done;
}

const char *__wrap_rpc_call_peer(const rpc_call_t *call)
{
    (void)call;
    return "test";
}

const char *__wrap_rpc_call_peer_host(const rpc_call_t *call)
{
    (void)call;
    return "10.0.0.1";
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

ferry_status_t __wrap_rpc_call_send_msgs(rpc_call_t *call, rpc_msg_t *const *msgs, size_t n,
                                         unsigned flags, bool *over_budget_p)
{
    call_rec_t *c = rec_of(call);

    (void)msgs;
    (void)n;
    if (c->refusals > 0 && (flags & RPC_SEND_PAST_BUDGET) == 0) {
        c->refusals--;
        *over_budget_p = true;
        return FERRY_ERR_RESOURCE_EXHAUSTED;
    }
    *over_budget_p = false;
    c->sends++;
    c->past_sends += (flags & RPC_SEND_PAST_BUDGET) != 0;
    return FERRY_OK;
}

void __wrap_rpc_call_set_send_limit(rpc_call_t *call, size_t max_queued_bytes)
{
    (void)call;
    (void)max_queued_bytes;
}

void __wrap_rpc_call_set_send_budget(rpc_call_t *call, rpc_send_budget_t *budget)
{
    (void)call;
    (void)budget;
}

size_t __wrap_rpc_call_behind_bytes(rpc_call_t *call)
{
    return rec_of(call)->fails_now > 0 ? 0 : rec_of(call)->behind;
}

size_t __wrap_rpc_call_sole_bytes(rpc_call_t *call)
{
    return rec_of(call)->sole;
}

int64_t __wrap_rpc_call_lag_ms(rpc_call_t *call)
{
    return rec_of(call)->lag_ms;
}

static int setup(void **state)
{
    coord_service_t *svc = calloc(1, sizeof(*svc));

    assert_non_null(svc);
    assert_int_equal(pthread_mutex_init(&svc->subs_lock, NULL), 0);
    assert_int_equal(coord_peers_create(&svc->watch_peers), FERRY_OK);
    assert_int_equal(rpc_send_budget_create(1 << 20, &svc->watch_budget), FERRY_OK);
    svc->name = (char *)"test";
    svc->max_watches = N_CALLS;
    svc->max_watches_per_peer = N_CALLS;
    svc->watch_queue_bytes = 1 << 20;
    svc->watch_msg_bytes = 1 << 20;
    svc->evict.floor = SIZE_MAX;
    memset(rec, 0, sizeof(rec));
    *state = svc;
    return 0;
}

static int teardown(void **state)
{
    coord_service_t *svc = *state;

    service_watch_stop(svc);
    for (int i = 0; i < N_CALLS; i++) {
        rec[i].done = true; /* the rpc layer's end of every call */
    }
    service_watch_destroy(svc);
    for (int i = 0; i < N_CALLS; i++) {
        assert_int_equal(rec[i].refs, 0);
    }
    rpc_send_budget_release(svc->watch_budget);
    coord_peers_destroy(svc->watch_peers);
    pthread_mutex_destroy(&svc->subs_lock);
    free(svc);
    return 0;
}

/* Opens a Watch of every change on call i; its status (FERRY_OK: it
 * subscribed, its `created` queued). */
static ferry_status_t watch(coord_service_t *svc, int i)
{
    Ferry__V1__WatchRequest req = FERRY__V1__WATCH_REQUEST__INIT;
    int fails = rec[i].fails;

    req.request_id_prefix = "*";
    service_watch(call_of(i), &req.base, svc);
    if (rec[i].fails > fails) {
        return rec[i].status;
    }
    assert_int_equal(rec[i].sends, 1);
    assert_non_null(rec[i].cancel);
    return FERRY_OK;
}

static void cancel(int i)
{
    rec[i].cancel(call_of(i), rec[i].cancel_arg);
}

/* One change at `revision`, published whole. */
static void publish(coord_service_t *svc, const char *id, int64_t revision)
{
    Ferry__V1__Operation op = FERRY__V1__OPERATION__INIT;

    op.request_id = (char *)id;
    service_watch_publish(svc, COORD_EVENT_PUT, &op, revision);
    service_watch_flush(svc);
}

static int total_lookups(void)
{
    int n = 0;

    for (int i = 0; i < N_CALLS; i++) {
        n += rec[i].parked_lookups;
    }
    return n;
}

/* A cancel looks at its own call only, ends it CANCELLED, and the stream
 * gets no revision after; the others get it. A second cancel, or one
 * after the stream ended for another reason, does nothing. */
static void test_a_cancel_looks_at_its_own_call_only(void **state)
{
    coord_service_t *svc = *state;

    for (int i = 0; i < N_CALLS; i++) {
        assert_int_equal(watch(svc, i), FERRY_OK);
    }
    assert_int_equal(total_lookups(), 0);
    cancel(500);
    assert_int_equal(rec[500].fails, 1);
    assert_int_equal(rec[500].status, FERRY_ERR_CANCELLED);
    assert_int_equal(rec[500].parked_lookups, 1);
    assert_int_equal(total_lookups(), 1);
    assert_null(rec[500].parked);

    publish(svc, "a", 10);
    for (int i = 0; i < N_CALLS; i++) {
        assert_int_equal(rec[i].sends, i == 500 ? 1 : 2);
    }
    cancel(500);
    assert_int_equal(rec[500].fails, 1);
    assert_int_equal(rec[500].refs, 1); /* until its call is done */
    rec[500].done = true;
    assert_int_equal(coord_service_watch_peers(svc), 1); /* the done one freed */
    assert_int_equal(rec[500].refs, 0);
    cancel(500); /* the rpc layer's, late: s is gone */
    assert_int_equal(rec[500].fails, 1);
    publish(svc, "b", 11);
    assert_int_equal(rec[499].sends, 3);
    assert_int_equal(rec[500].sends, 1);
}

/* --max-watches counts a stream from its subscription until its call is
 * done: one cancelled still counts while its last messages may go out,
 * then a new one fits. */
static void test_max_watches_counts_until_done(void **state)
{
    coord_service_t *svc = *state;

    svc->max_watches = 5;
    for (int i = 0; i < 5; i++) {
        assert_int_equal(watch(svc, i), FERRY_OK);
    }
    assert_int_equal(watch(svc, 5), FERRY_ERR_RESOURCE_EXHAUSTED);
    cancel(2);
    assert_int_equal(watch(svc, 6), FERRY_ERR_RESOURCE_EXHAUSTED);
    publish(svc, "a", 10);
    assert_int_equal(rec[2].sends, 1);
    assert_int_equal(watch(svc, 7), FERRY_ERR_RESOURCE_EXHAUSTED);
    rec[2].done = true;
    assert_int_equal(watch(svc, 8), FERRY_OK);
    assert_int_equal(rec[2].refs, 0);
    assert_int_equal(watch(svc, 9), FERRY_ERR_RESOURCE_EXHAUSTED);
    cancel(3);
    rec[3].done = true; /* with no revision since */
    assert_int_equal(watch(svc, 10), FERRY_OK);
    assert_int_equal(rec[3].refs, 0);
    for (int i = 0; i < 11; i++) {
        assert_int_equal(rec[i].fails, i == 2 || i == 3 || i == 5 || i == 6 || i == 7 || i == 9);
    }
}

/* Stopping ends every stream UNAVAILABLE, a cancelled one once only; a
 * cancel after finds nothing. */
static void test_stop_ends_the_rest(void **state)
{
    coord_service_t *svc = *state;

    for (int i = 0; i < 10; i++) {
        assert_int_equal(watch(svc, i), FERRY_OK);
    }
    cancel(4);
    service_watch_stop(svc);
    for (int i = 0; i < 10; i++) {
        assert_int_equal(rec[i].fails, 1);
        assert_int_equal(rec[i].status, i == 4 ? FERRY_ERR_CANCELLED : FERRY_ERR_UNAVAILABLE);
        assert_null(rec[i].parked);
    }
    cancel(7);
    assert_int_equal(rec[7].fails, 1);
    assert_int_equal(watch(svc, 20), FERRY_ERR_UNAVAILABLE);
}

/* Streams 0..n-1 open, each behind by three queue entries of a revision
 * they share (what ending one frees: those entries only). */
static void open_behind(coord_service_t *svc, int n)
{
    for (int i = 0; i < n; i++) {
        assert_int_equal(watch(svc, i), FERRY_OK);
        rec[i].behind = 3 * 400;
    }
}

/* A new stream whose first message the budget refuses: streams further
 * behind whose clients keep up, whose end frees only their entries, are
 * not ended for it, one by one, for nothing; it is refused (review-s32c
 * M1, review-s37 M2). */
static void test_streams_keeping_up_are_not_ended(void **state)
{
    coord_service_t *svc = *state;

    open_behind(svc, 20);
    rec[20].refusals = 1000;
    assert_int_equal(watch(svc, 20), FERRY_ERR_RESOURCE_EXHAUSTED);
    for (int i = 0; i < 20; i++) {
        assert_int_equal(rec[i].fails, 0);
    }
}

/* A stream whose client does not keep up is ended for room: a second or
 * more behind live with some bytes its alone (the last holder of a
 * revision the others read: review-s37 H1), or ten seconds behind (it
 * takes a message now and then, in step with another holding the same
 * revisions: review-s37c H1); ranked by behind and those bytes, as many
 * as the new stream needs. One that keeps up, though further behind and
 * holding bytes of its own (a prefix reader a moment behind), comes after
 * them (review-s37d M1); one a few seconds behind holding none alone (a
 * slower reader of a large revision) is not ended (review-s37d M2). */
static void test_streams_not_keeping_up_are_ended_for_room(void **state)
{
    coord_service_t *svc = *state;

    open_behind(svc, 20);
    rec[7].sole = 1 << 20;
    rec[7].lag_ms = RPC_STUCK_MS;
    rec[7].behind = 4 * 400 + 1; /* worth the most, for its bytes alone */
    rec[3].lag_ms = 60000;
    rec[3].behind = 5 * 400;
    rec[11].lag_ms = RPC_DRAIN_MS;
    rec[11].behind = 4 * 400;
    rec[12].lag_ms = RPC_DRAIN_MS - 1; /* behind, nothing its alone: not yet */
    rec[12].behind = 7 * 400;
    rec[13].sole = 8 << 10; /* keeps up */
    rec[13].lag_ms = RPC_STUCK_MS - 1;
    rec[13].behind = 8 * 400 + (8 << 10);
    rec[20].refusals = 1;
    assert_int_equal(watch(svc, 20), FERRY_OK);
    assert_int_equal(rec[7].fails_now, 1);
    assert_int_equal(rec[7].status, FERRY_ERR_RESOURCE_EXHAUSTED);
    rec[21].refusals = 2;
    assert_int_equal(watch(svc, 21), FERRY_OK);
    for (int i = 0; i < 20; i++) {
        assert_int_equal(rec[i].fails, i == 3 || i == 7 || i == 11);
        assert_int_equal(rec[i].fails_now, rec[i].fails);
    }
    publish(svc, "a", 10); /* the ended ones get nothing more */
    assert_int_equal(rec[3].sends, 1);
    assert_int_equal(rec[4].sends, 2);
}

/* Within one pass, a stream no less behind than one whose walk found none
 * to end is answered from that walk: alike the others, past the bound,
 * while one is further behind; the one further behind than every other
 * ends (not tied with itself). Streams are walked newest first. */
static void test_a_pass_answers_from_its_last_walk(void **state)
{
    coord_service_t *svc = *state;

    open_behind(svc, 20);
    rec[15].behind = 400; /* walked first: finds none to end */
    rec[15].refusals = 1;
    rec[10].behind = 5 * 400; /* no less behind: answered from that walk */
    rec[10].refusals = 1;
    rec[3].behind = 10 * 400; /* further behind than every other */
    rec[3].refusals = 1;
    publish(svc, "a", 10);
    assert_int_equal(rec[15].past_sends, 1);
    assert_int_equal(rec[10].past_sends, 1);
    assert_int_equal(rec[3].fails, 1);
    assert_int_equal(rec[3].status, FERRY_ERR_RESOURCE_EXHAUSTED);
    for (int i = 0; i < 20; i++) {
        assert_int_equal(rec[i].fails, i == 3);
        assert_int_equal(rec[i].fails_now, 0);
    }
}

/* A shared revision the budget refuses, for a stream that others are
 * further behind than, none of them to be ended: it goes in past the
 * bound, ending no one; for the stream further behind than every other,
 * it does not, and that one ends, as for its own bound. */
static void test_a_shared_revision_goes_past_or_ends_the_furthest(void **state)
{
    coord_service_t *svc = *state;

    open_behind(svc, 20);
    rec[5].behind = 400;
    rec[5].refusals = 1;
    rec[9].behind = 10 * 400;
    rec[9].refusals = 1;
    publish(svc, "a", 10);
    assert_int_equal(rec[5].sends, 2);
    assert_int_equal(rec[5].past_sends, 1);
    assert_int_equal(rec[9].fails, 1);
    assert_int_equal(rec[9].fails_now, 0);
    assert_int_equal(rec[9].status, FERRY_ERR_RESOURCE_EXHAUSTED);
    for (int i = 0; i < 20; i++) {
        assert_int_equal(rec[i].fails, i == 9);
        assert_int_equal(rec[i].sends, i == 9 ? 1 : 2);
    }
}

/* A stream further behind that does not keep up but may not be ended yet
 * (a second behind, nothing its alone) holds back the ending of a reader
 * a moment behind with bytes of its own: the new stream is refused; ten
 * seconds behind, that one is ended instead (review-s37e M1). */
static void test_a_laggard_holds_back_ending_a_reader(void **state)
{
    coord_service_t *svc = *state;

    open_behind(svc, 20);
    rec[4].lag_ms = 2 * RPC_STUCK_MS;
    rec[4].behind = 10 * 400;
    rec[6].sole = 8 << 10;
    rec[6].lag_ms = 50;
    rec[6].behind = 6 * 400 + (8 << 10);
    rec[20].refusals = 1000;
    assert_int_equal(watch(svc, 20), FERRY_ERR_RESOURCE_EXHAUSTED);
    rec[4].lag_ms = RPC_DRAIN_MS;
    rec[21].refusals = 1;
    assert_int_equal(watch(svc, 21), FERRY_OK);
    for (int i = 0; i < 20; i++) {
        assert_int_equal(rec[i].fails, i == 4);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_a_cancel_looks_at_its_own_call_only, setup, teardown),
        cmocka_unit_test_setup_teardown(test_max_watches_counts_until_done, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_ends_the_rest, setup, teardown),
        cmocka_unit_test_setup_teardown(test_streams_keeping_up_are_not_ended, setup, teardown),
        cmocka_unit_test_setup_teardown(test_streams_not_keeping_up_are_ended_for_room, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_a_shared_revision_goes_past_or_ends_the_furthest,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_pass_answers_from_its_last_walk, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_laggard_holds_back_ending_a_reader, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
