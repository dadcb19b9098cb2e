/*
 * test_rpc_faults.c: failures the rpc layer must not hide, forced through
 * -Wl,--wrap seams.
 *
 * A call the server fails to re-arm is owed, not lost: rpc__call_arm is
 * wrapped, and while fail_arms is set the next arms fail as gRPC or malloc
 * would. With one call armed per method, the re-arm after the first Get
 * fails; the second Get must still be served (before the fix the method's
 * pool stayed empty and it waited out its deadline).
 *
 * A lock or condition variable that cannot be made fails rpc_server_create
 * (before the fix the return was ignored and the server ran on an
 * uninitialised lock): pthread_mutex_init, pthread_cond_init and
 * pthread_rwlock_init are wrapped to fail the k-th call, for every k.
 *
 * A call stays alive while its request is decoded, whatever happens to it
 * on other threads meanwhile: rpc__unpack_request is wrapped to hold the
 * decoding of one call until the call has ended (its client cancelled it,
 * its status was sent). Before the fix nothing but the layer's reference kept the
 * call then, and the end let go of it: the decoding read freed memory and
 * freed the request buffer twice (the coordinator aborted, "malloc():
 * unsorted double linked list corrupted", after a Claim arrived already
 * cancelled).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/v1/coordinator.pb-c.h"
#include "rpc/rpc_int.h"
#include "rpc_fixture.h"

#define GET_PATH   "/ferry.v1.Coordinator/Get"
#define WATCH_PATH "/ferry.v1.Coordinator/Watch"

static atomic_int fail_arms;  /* arms still to fail */
static atomic_int arms_tried; /* every arm, failed or not */
static atomic_int fail_init;  /* the init call, counting down, to fail; 0 none */

/* True when this init call is the one to fail. */
static bool init_fails(void)
{
    return atomic_load(&fail_init) > 0 && atomic_fetch_sub(&fail_init, 1) == 1;
}

int __real_pthread_mutex_init(pthread_mutex_t *m, const pthread_mutexattr_t *a);
int __wrap_pthread_mutex_init(pthread_mutex_t *m, const pthread_mutexattr_t *a);
int __real_pthread_cond_init(pthread_cond_t *c, const pthread_condattr_t *a);
int __wrap_pthread_cond_init(pthread_cond_t *c, const pthread_condattr_t *a);
int __real_pthread_rwlock_init(pthread_rwlock_t *l, const pthread_rwlockattr_t *a);
int __wrap_pthread_rwlock_init(pthread_rwlock_t *l, const pthread_rwlockattr_t *a);

int __wrap_pthread_mutex_init(pthread_mutex_t *m, const pthread_mutexattr_t *a)
{
    return init_fails() ? ENOMEM : __real_pthread_mutex_init(m, a);
}

int __wrap_pthread_cond_init(pthread_cond_t *c, const pthread_condattr_t *a)
{
    return init_fails() ? ENOMEM : __real_pthread_cond_init(c, a);
}

int __wrap_pthread_rwlock_init(pthread_rwlock_t *l, const pthread_rwlockattr_t *a)
{
    return init_fails() ? ENOMEM : __real_pthread_rwlock_init(l, a);
}

ferry_status_t __real_rpc__call_arm(rpc_server_t *server, rpc_method_entry_t *method);
ferry_status_t __wrap_rpc__call_arm(rpc_server_t *server, rpc_method_entry_t *method);

ferry_status_t __wrap_rpc__call_arm(rpc_server_t *server, rpc_method_entry_t *method)
{
    atomic_fetch_add(&arms_tried, 1);
    if (atomic_load(&fail_arms) > 0) {
        atomic_fetch_sub(&fail_arms, 1);
        return FERRY_ERR_INTERNAL;
    }
    return __real_rpc__call_arm(server, method);
}

static fixture_t *stall_fixture; /* set: the next decoding waits for a call to end */
static atomic_int stall_until;   /* ...until this many calls have ended */
static atomic_int stalls;        /* decodings that began to wait */
static atomic_int stalls_over;   /* ...and that went on */
/* set: the next request's length is asked for only once a call has ended */
static fixture_t *length_stall_fixture;

static bool stall_began(const fixture_t *f)
{
    (void)f;
    return atomic_load(&stalls) > 0;
}

static bool stall_over(const fixture_t *f)
{
    (void)f;
    return atomic_load(&stalls_over) > 0;
}

static bool stalled_call_ended(const fixture_t *f)
{
    return f->calls_ended >= atomic_load(&stall_until);
}

/* Holds this server thread until stall_until calls have ended (f NULL:
 * goes on at once). */
static void stall_here(fixture_t *f)
{
    if (f == NULL) {
        return;
    }
    pthread_mutex_lock(&f->lock);
    atomic_fetch_add(&stalls, 1);
    pthread_cond_broadcast(&f->cond);
    pthread_mutex_unlock(&f->lock);
    if (!fixture_wait(f, stalled_call_ended, 10000)) {
        fprintf(stderr, "the stalled call did not end within 10 s\n");
    }
    pthread_mutex_lock(&f->lock);
    atomic_fetch_add(&stalls_over, 1);
    pthread_cond_broadcast(&f->cond);
    pthread_mutex_unlock(&f->lock);
}

ferry_status_t __real_rpc__unpack_request(const ProtobufCMessageDescriptor *desc,
                                          grpc_byte_buffer *buf, const char *path,
                                          ProtobufCMessage **msg_p, grpc_slice *bytes_p, char *why,
                                          size_t cap);
ferry_status_t __wrap_rpc__unpack_request(const ProtobufCMessageDescriptor *desc,
                                          grpc_byte_buffer *buf, const char *path,
                                          ProtobufCMessage **msg_p, grpc_slice *bytes_p, char *why,
                                          size_t cap);

ferry_status_t __wrap_rpc__unpack_request(const ProtobufCMessageDescriptor *desc,
                                          grpc_byte_buffer *buf, const char *path,
                                          ProtobufCMessage **msg_p, grpc_slice *bytes_p, char *why,
                                          size_t cap)
{
    stall_here(__atomic_exchange_n(&stall_fixture, NULL, __ATOMIC_ACQ_REL));
    return __real_rpc__unpack_request(desc, buf, path, msg_p, bytes_p, why, cap);
}

/* The first thing dispatch asks of a request is its length (the size
 * checks, before the byte budget counts it). */
size_t __real_grpc_byte_buffer_length(grpc_byte_buffer *buf);
size_t __wrap_grpc_byte_buffer_length(grpc_byte_buffer *buf);

size_t __wrap_grpc_byte_buffer_length(grpc_byte_buffer *buf)
{
    stall_here(__atomic_exchange_n(&length_stall_fixture, NULL, __ATOMIC_ACQ_REL));
    return __real_grpc_byte_buffer_length(buf);
}

static ferry_status_t get(fixture_t *f, const char *id, int64_t timeout_ms)
{
    Ferry__V1__GetRequest req = FERRY__V1__GET_REQUEST__INIT;
    Ferry__V1__GetResponse *resp = NULL;
    rpc_error_t err = {0};
    ferry_status_t status;

    req.request_id = (char *)id;
    status = rpc_unary(f->channel, GET_PATH, &req.base, &ferry__v1__get_response__descriptor,
                       timeout_ms, (ProtobufCMessage **)&resp, &err);
    if (status == FERRY_OK) {
        assert_string_equal(resp->operation->request_id, id);
        ferry__v1__get_response__free_unpacked(resp, NULL);
    }
    return status;
}

static void test_failed_rearm_is_retried(void **state)
{
    fixture_t f;
    (void)state;

    assert_int_equal(fixture_start(&f, 1), 0);
    atomic_store(&fail_arms, 1);
    assert_int_equal(get(&f, "first", 10000), FERRY_OK);
    /* The one Get armed was used; its re-arm failed. */
    assert_int_equal(atomic_load(&fail_arms), 0);
    assert_true(atomic_load(&f.server->arm_failures) >= 1);
    assert_int_equal(get(&f, "second", 10000), FERRY_OK);
    assert_int_equal(get(&f, "third", 10000), FERRY_OK);
    assert_int_equal(atomic_load(&f.server->arms_owed), 0);
    fixture_stop(&f);
}

static void test_repeated_failures_are_paid_later(void **state)
{
    fixture_t f;
    int tried;
    (void)state;

    assert_int_equal(fixture_start(&f, 1), 0);
    /* The re-arm and several retries fail; the call still comes through
     * once arming works again. */
    atomic_store(&fail_arms, 4);
    assert_int_equal(get(&f, "first", 10000), FERRY_OK);
    tried = atomic_load(&arms_tried);
    assert_int_equal(get(&f, "second", 20000), FERRY_OK);
    assert_true(atomic_load(&arms_tried) > tried);
    assert_int_equal(atomic_load(&fail_arms), 0);
    fixture_stop(&f);
}

/* One round of the stall tests: round's Watch is held where *where says
 * (stall_fixture: while decoding; length_stall_fixture: before its bytes
 * are counted) until the client's cancel has ended it. Returns with the
 * call ended and the held step about to go on. */
static void stall_round(fixture_t *f, fixture_t **where, int round)
{
    Ferry__V1__WatchRequest req = FERRY__V1__WATCH_REQUEST__INIT;
    rpc_stream_t *stream = NULL;

    req.request_id_prefix = "count:1";
    atomic_store(&stalls, 0);
    atomic_store(&stalls_over, 0);
    atomic_store(&stall_until, 2 * round + 1); /* this round's Watch; each round ends two */
    __atomic_store_n(where, f, __ATOMIC_RELEASE);
    assert_int_equal(rpc_stream_open(f->channel, WATCH_PATH, &req.base,
                                     &ferry__v1__watch_response__descriptor, 20000, &stream),
                     FERRY_OK);
    assert_true(fixture_wait(f, stall_began, 10000));
    rpc_stream_destroy(stream); /* cancels it */
    assert_true(fixture_wait(f, stalled_call_ended, 10000));
}

/* The client cancels a call while the server is still decoding its
 * request (held there until the call has ended): the other server thread
 * ends the call (cancelled) and sends its status; the decoding then goes on
 * with the call still whole, and the server serves the next call. Whether
 * freed memory is caught depends on timing (the end lets go of the call
 * just after the observer counts it), hence several rounds; under ASan
 * every round catches it. */
#define STALL_ROUNDS 20

static void test_call_ended_while_decoding(void **state)
{
    fixture_t f;
    (void)state;

    assert_int_equal(fixture_start(&f, 0), 0);
    for (int i = 0; i < STALL_ROUNDS; i++) {
        stall_round(&f, &stall_fixture, i);
        assert_int_equal(get(&f, "after", 10000), FERRY_OK);
        /* The held decoding has seen its call end and gone on, before the
         * next round moves stall_until (else it would wait on, for that,
         * and hold a server thread; with both held nothing ends). */
        assert_true(fixture_wait(&f, stall_over, 10000));
    }
    fixture_stop(&f);
}

static bool nothing_held(const fixture_t *f)
{
    return atomic_load(&f->server->held_request_bytes) == 0;
}

/* The client goes while its request waits to be counted against the
 * server's byte budget: another server thread ends the call and it is
 * done before the count. The count must not be made then (being done, the
 * call would never give it back): before the fix each such call kept its
 * request's bytes counted for good, and enough of them refused every
 * request (RESOURCE_EXHAUSTED) until the server restarted. */
static void test_call_ended_before_counted(void **state)
{
    fixture_t f;
    (void)state;

    assert_int_equal(fixture_start(&f, 0), 0);
    for (int i = 0; i < 3; i++) {
        stall_round(&f, &length_stall_fixture, i);
        assert_true(fixture_wait(&f, stall_over, 10000));
        /* The call went on past the budget and is done: nothing counted. */
        assert_true(fixture_wait(&f, nothing_held, 10000));
        assert_int_equal(get(&f, "after", 10000), FERRY_OK);
        assert_true(fixture_wait(&f, nothing_held, 10000));
    }
    fixture_stop(&f);
}

static void test_server_create_fails_without_locks(void **state)
{
    rpc_server_params_t params = {.listen_addr = "127.0.0.1:0"};
    int k;
    (void)state;

    for (k = 1; k < 100; k++) {
        rpc_server_t *server = NULL;
        ferry_status_t status;

        atomic_store(&fail_init, k);
        status = rpc_server_create(&params, &server);
        if (atomic_load(&fail_init) > 0) {
            /* Fewer than k init calls: every one has been failed once. */
            assert_int_equal(status, FERRY_OK);
            rpc_server_destroy(server);
            break;
        }
        assert_int_not_equal(status, FERRY_OK);
        assert_null(server);
    }
    atomic_store(&fail_init, 0);
    assert_true(k >= 5); /* health's lock, the server's cond, 2 mutexes, rwlock */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_server_create_fails_without_locks),
        cmocka_unit_test(test_failed_rearm_is_retried),
        cmocka_unit_test(test_repeated_failures_are_paid_later),
        cmocka_unit_test(test_call_ended_while_decoding),
        cmocka_unit_test(test_call_ended_before_counted),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
