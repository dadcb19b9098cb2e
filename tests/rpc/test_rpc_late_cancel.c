/*
 * test_rpc_late_cancel.c: a cancel callback registered after the call was
 * cancelled still runs. A handler hands its call to another thread (as the
 * coordinator hands a Lookup to a read worker); the client's deadline passes
 * and this layer ends the call before that thread registers its callback.
 * The registration must run the callback at once: it is the registrant's
 * only chance to undo what it did with the call (a parked wait, say).
 *
 * A real server and a real channel on loopback; the handler keeps the call
 * (with a reference) for the test thread, which plays the other thread.
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
#include <time.h>

#include "ferry/v1/coordinator.pb-c.h"
#include "rpc/rpc.h"

#define GET_PATH "/ferry.v1.Coordinator/Get"
#define WAIT_MS  10000

typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    rpc_server_t *server;
    rpc_channel_t *channel;
    rpc_call_t *kept;      /* a reference, taken by the handler */
    bool early_cb;         /* the handler registers early_cancelled */
    int calls_ended;       /* the observer's count */
    int early_runs;        /* early_cancelled ran */
    int late_runs;         /* late_cancelled ran */
    rpc_call_t *late_call; /* the call late_cancelled was given */
} late_t;

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits until *counter >= want, under l->lock, or WAIT_MS passes. */
static bool wait_count(late_t *l, const int *counter, int want)
{
    long long deadline = now_ms() + WAIT_MS;
    bool ok;

    pthread_mutex_lock(&l->lock);
    while (!(ok = *counter >= want) && now_ms() < deadline) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 50 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&l->cond, &l->lock, &ts);
    }
    pthread_mutex_unlock(&l->lock);
    return ok;
}

/* Finds nothing to undo, as a parked wait's callback does when the wait
 * thread has just taken the wait off its list to run it again. */
static void early_cancelled(rpc_call_t *call, void *arg)
{
    late_t *l = arg;
    (void)call;

    pthread_mutex_lock(&l->lock);
    l->early_runs++;
    pthread_cond_broadcast(&l->cond);
    pthread_mutex_unlock(&l->lock);
}

static void late_cancelled(rpc_call_t *call, void *arg)
{
    late_t *l = arg;

    rpc_call_fail(call, FERRY_ERR_CANCELLED, "late callback"); /* ended already: a no-op */
    pthread_mutex_lock(&l->lock);
    l->late_runs++;
    l->late_call = call;
    pthread_cond_broadcast(&l->cond);
    pthread_mutex_unlock(&l->lock);
}

/* Keeps the call for the test thread and returns without ending it. */
static void handle_get(rpc_call_t *call, const ProtobufCMessage *request, void *arg)
{
    late_t *l = arg;
    (void)request;

    rpc_call_ref(call);
    if (l->early_cb) {
        rpc_call_on_cancel(call, early_cancelled, l);
    }
    pthread_mutex_lock(&l->lock);
    l->kept = call;
    pthread_cond_broadcast(&l->cond);
    pthread_mutex_unlock(&l->lock);
}

static const rpc_method_t methods[] = {{"Get", RPC_UNARY, handle_get}};

static void on_call_ended(void *arg, const char *method, int grpc_code, int64_t duration_ns)
{
    late_t *l = arg;
    (void)method;
    (void)grpc_code;
    (void)duration_ns;

    pthread_mutex_lock(&l->lock);
    l->calls_ended++;
    pthread_cond_broadcast(&l->cond);
    pthread_mutex_unlock(&l->lock);
}

static int setup(void **state)
{
    late_t *l = calloc(1, sizeof(*l));
    rpc_observer_t observer = {.call_ended = on_call_ended};
    rpc_server_params_t sp = {.listen_addr = "127.0.0.1:0", .observer = &observer};
    rpc_channel_params_t cp = {0};
    char target[64];
    int port;

    if (l == NULL || pthread_mutex_init(&l->lock, NULL) != 0 ||
        pthread_cond_init(&l->cond, NULL) != 0) {
        return -1;
    }
    observer.arg = l;
    if (rpc_server_create(&sp, &l->server) != FERRY_OK ||
        rpc_server_add_service(l->server, &ferry__v1__coordinator__descriptor, methods, 1, l) !=
            FERRY_OK ||
        rpc_server_start(l->server, &port) != FERRY_OK) {
        return -1;
    }
    snprintf(target, sizeof(target), "127.0.0.1:%d", port);
    cp.target = target;
    if (rpc_channel_create(&cp, &l->channel) != FERRY_OK) {
        return -1;
    }
    *state = l;
    return 0;
}

static int teardown(void **state)
{
    late_t *l = *state;

    rpc_channel_destroy(l->channel);
    rpc_server_destroy(l->server);
    pthread_cond_destroy(&l->cond);
    pthread_mutex_destroy(&l->lock);
    free(l);
    return 0;
}

/* The client's call times out (gRPC cancels it on the server) while the
 * call is kept; returns once this layer has ended the call. */
static rpc_call_t *call_and_let_it_be_cancelled(late_t *l)
{
    Ferry__V1__GetRequest req = FERRY__V1__GET_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    rpc_error_t err;
    rpc_call_t *call;

    req.request_id = "kept";
    assert_int_equal(rpc_unary(l->channel, GET_PATH, &req.base,
                               &ferry__v1__get_response__descriptor, 300, &resp, &err),
                     FERRY_ERR_TIMED_OUT);
    assert_null(resp);
    /* The server ends the call (CANCELLED) once the handler has returned:
     * the observer sees it. */
    assert_true(wait_count(l, &l->calls_ended, 1));
    pthread_mutex_lock(&l->lock);
    call = l->kept;
    pthread_mutex_unlock(&l->lock);
    assert_non_null(call);
    assert_true(rpc_call_is_cancelled(call));
    return call;
}

/* No callback was registered when the cancellation came. */
static void test_register_after_cancel_runs_it(void **state)
{
    late_t *l = *state;
    rpc_call_t *call = call_and_let_it_be_cancelled(l);

    rpc_call_on_cancel(call, late_cancelled, l);
    assert_true(wait_count(l, &l->late_runs, 1));
    assert_ptr_equal(l->late_call, call);
    rpc_call_unref(call);
}

/* A callback ran and found nothing to undo; a later registration (the
 * call parked again) runs too. */
static void test_register_after_a_callback_ran_runs_it(void **state)
{
    late_t *l = *state;
    rpc_call_t *call;

    l->early_cb = true;
    call = call_and_let_it_be_cancelled(l);
    assert_true(wait_count(l, &l->early_runs, 1));
    rpc_call_on_cancel(call, late_cancelled, l);
    assert_true(wait_count(l, &l->late_runs, 1));
    assert_int_equal(l->early_runs, 1);
    rpc_call_unref(call);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_register_after_cancel_runs_it, setup, teardown),
        cmocka_unit_test_setup_teardown(test_register_after_a_callback_ran_runs_it, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
