/*
 * rpc_fixture.c: the test server and channel of rpc_fixture.h.
 */
#include "rpc_fixture.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ferry/v1/coordinator.pb-c.h"

long long fixture_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void reply_echo(rpc_call_t *call, const char *request_id)
{
    Ferry__V1__GetResponse resp = FERRY__V1__GET_RESPONSE__INIT;
    Ferry__V1__ResponseHeader header = FERRY__V1__RESPONSE_HEADER__INIT;
    Ferry__V1__Operation op = FERRY__V1__OPERATION__INIT;

    header.revision = 7;
    header.coordinator = "test";
    op.request_id = (char *)request_id;
    op.owner = "echo";
    resp.header = &header;
    resp.operation = &op;
    rpc_call_reply(call, &resp.base);
}

static fixture_t *fixture_of(void *arg)
{
    return arg;
}

static void *later_main(void *arg)
{
    rpc_call_t *call = arg;
    reply_echo(call, "later");
    rpc_call_unref(call);
    return NULL;
}

static void held_unary_cancelled(rpc_call_t *call, void *arg)
{
    fixture_t *f = fixture_of(arg);

    rpc_call_fail(call, FERRY_ERR_UNAVAILABLE, "held call cancelled");
    /* Ended already: a second ending is a harmless no-op. */
    reply_echo(call, "too late");
    pthread_mutex_lock(&f->lock);
    f->cancels++;
    f->held_unary = NULL;
    pthread_cond_broadcast(&f->cond);
    pthread_mutex_unlock(&f->lock);
    rpc_call_unref(call);
}

static void handle_get(rpc_call_t *call, const ProtobufCMessage *request, void *arg)
{
    const Ferry__V1__GetRequest *req = (const void *)request;
    fixture_t *f = fixture_of(arg);

    if (strcmp(req->request_id, "missing") == 0) {
        rpc_call_fail(call, FERRY_ERR_NOT_FOUND, "operation %s not found", req->request_id);
    } else if (strcmp(req->request_id, "lease-gone") == 0) {
        rpc_call_fail(call, FERRY_ERR_LEASE_NOT_FOUND, "the lease is gone");
    } else if (strcmp(req->request_id, "expired") == 0) {
        rpc_call_fail(call, FERRY_ERR_EXPIRED, "operation %s not found", req->request_id);
    } else if (strcmp(req->request_id, "later") == 0) {
        rpc_call_ref(call);
        pthread_mutex_lock(&f->lock);
        f->later_started = pthread_create(&f->later_thread, NULL, later_main, call) == 0;
        pthread_mutex_unlock(&f->lock);
    } else if (strncmp(req->request_id, "hold", 4) == 0) {
        rpc_call_ref(call);
        pthread_mutex_lock(&f->lock);
        f->held_unary = call;
        pthread_cond_broadcast(&f->cond);
        pthread_mutex_unlock(&f->lock);
        rpc_call_on_cancel(call, held_unary_cancelled, f);
    } else {
        reply_echo(call, req->request_id);
    }
}

static void send_watch(rpc_call_t *call, int revision, ferry_status_t *status_p)
{
    Ferry__V1__WatchResponse resp = FERRY__V1__WATCH_RESPONSE__INIT;
    Ferry__V1__ResponseHeader header = FERRY__V1__RESPONSE_HEADER__INIT;

    header.revision = revision;
    resp.header = &header;
    resp.created = revision == 1;
    *status_p = rpc_call_send(call, &resp.base);
}

/* "fail:N": N messages of FIXTURE_FAT_BYTES queued at once, then the end. */
static void fail_after_fat_messages(rpc_call_t *call, int n)
{
    Ferry__V1__WatchResponse resp = FERRY__V1__WATCH_RESPONSE__INIT;
    Ferry__V1__ResponseHeader header = FERRY__V1__RESPONSE_HEADER__INIT;
    char fat[FIXTURE_FAT_BYTES + 1];
    ferry_status_t status = FERRY_OK;

    memset(fat, 'x', FIXTURE_FAT_BYTES);
    fat[FIXTURE_FAT_BYTES] = '\0';
    header.coordinator = fat;
    resp.header = &header;
    for (int i = 1; i <= n && status == FERRY_OK; i++) {
        header.revision = i;
        status = rpc_call_send(call, &resp.base);
    }
    rpc_call_fail(call, FERRY_ERR_RESOURCE_EXHAUSTED, "failed after %d messages", n);
}

/* "fill:N": fat messages, one unit each, until one is refused. */
static void fill_until_refused(fixture_t *f, rpc_call_t *call, int n)
{
    Ferry__V1__WatchResponse resp = FERRY__V1__WATCH_RESPONSE__INIT;
    Ferry__V1__ResponseHeader header = FERRY__V1__RESPONSE_HEADER__INIT;
    char fat[FIXTURE_FAT_BYTES + 1];
    ferry_status_t status = FERRY_OK;
    bool over_budget = false;
    int sent = 0;

    memset(fat, 'x', FIXTURE_FAT_BYTES);
    fat[FIXTURE_FAT_BYTES] = '\0';
    header.coordinator = fat;
    resp.header = &header;
    while (sent < n && status == FERRY_OK) {
        rpc_msg_t *m;
        header.revision = sent + 1;
        m = rpc_msg_pack(&resp.base);
        status = m != NULL ? rpc_call_send_msgs(call, &m, 1, 0, &over_budget) : FERRY_ERR_NO_MEMORY;
        rpc_msg_unref(m);
        sent += status == FERRY_OK;
    }
    pthread_mutex_lock(&f->lock);
    f->fill_sent = sent;
    f->fill_over_budget = over_budget;
    f->fill_done = true;
    pthread_cond_broadcast(&f->cond);
    pthread_mutex_unlock(&f->lock);
    if (status != FERRY_OK) {
        rpc_call_fail(call, status, "refused after %d messages", sent);
    } else {
        rpc_call_finish(call);
    }
}

static void held_stream_cancelled(rpc_call_t *call, void *arg)
{
    fixture_t *f = fixture_of(arg);
    ferry_status_t status;

    send_watch(call, 99, &status);
    rpc_call_finish(call);
    pthread_mutex_lock(&f->lock);
    f->send_after_cancel = status;
    f->cancels++;
    f->held_stream = NULL;
    pthread_cond_broadcast(&f->cond);
    pthread_mutex_unlock(&f->lock);
    rpc_call_unref(call);
}

static void kept_cancelled(rpc_call_t *call, void *arg)
{
    fixture_t *f = fixture_of(arg);
    bool mine = false;

    pthread_mutex_lock(&f->lock);
    for (int i = 0; i < FIXTURE_KEPT; i++) {
        if (f->kept[i] == call) {
            f->kept[i] = NULL;
            mine = true;
        }
    }
    f->cancels++;
    pthread_cond_broadcast(&f->cond);
    pthread_mutex_unlock(&f->lock);
    rpc_call_fail(call, FERRY_ERR_CANCELLED, "cancelled");
    if (mine) {
        rpc_call_unref(call);
    }
}

/* "share:N": f->shared N times, "own:N": N messages like it packed for
 * this call alone, "pair": a small message and a fat one as one unit,
 * packed for this call; then kept. */
static ferry_status_t send_pair(rpc_call_t *call, Ferry__V1__WatchResponse *resp)
{
    rpc_msg_t *two[2];
    ferry_status_t status;

    two[1] = rpc_msg_pack(&resp->base);
    resp->header->coordinator = "x";
    two[0] = rpc_msg_pack(&resp->base);
    status = two[0] != NULL && two[1] != NULL ? rpc_call_send_msgs(call, two, 2, 0, NULL)
                                              : FERRY_ERR_NO_MEMORY;
    rpc_msg_unref(two[0]);
    rpc_msg_unref(two[1]);
    return status;
}

static void send_and_keep(fixture_t *f, rpc_call_t *call, int n, char mode)
{
    Ferry__V1__WatchResponse resp = FERRY__V1__WATCH_RESPONSE__INIT;
    Ferry__V1__ResponseHeader header = FERRY__V1__RESPONSE_HEADER__INIT;
    char fat[FIXTURE_FAT_BYTES + 1];
    ferry_status_t status = FERRY_OK;
    int slot = -1;

    memset(fat, 'x', FIXTURE_FAT_BYTES);
    fat[FIXTURE_FAT_BYTES] = '\0';
    header.coordinator = fat;
    resp.header = &header;
    for (int i = 0; i < n && status == FERRY_OK; i++) {
        status = mode == 's'   ? rpc_call_send_msgs(call, &f->shared, 1, RPC_SEND_SHARED, NULL)
                 : mode == 'p' ? send_pair(call, &resp)
                               : rpc_call_send(call, &resp.base);
    }
    pthread_mutex_lock(&f->lock);
    for (int i = 0; i < FIXTURE_KEPT && slot < 0; i++) {
        slot = f->kept[i] == NULL ? i : -1;
    }
    if (status == FERRY_OK && slot >= 0) {
        f->kept[slot] = call;
        rpc_call_ref(call);
        pthread_cond_broadcast(&f->cond);
    }
    pthread_mutex_unlock(&f->lock);
    if (status != FERRY_OK || slot < 0) {
        rpc_call_fail(call, FERRY_ERR_RESOURCE_EXHAUSTED, "cannot share and keep");
        return;
    }
    rpc_call_on_cancel(call, kept_cancelled, f);
}

static void handle_watch(rpc_call_t *call, const ProtobufCMessage *request, void *arg)
{
    const Ferry__V1__WatchRequest *req = (const void *)request;
    fixture_t *f = fixture_of(arg);
    ferry_status_t status = FERRY_OK;
    int n;

    rpc_call_set_send_budget(call, f->budget);
    if (strcmp(req->request_id, "hold") == 0) {
        rpc_call_ref(call);
        pthread_mutex_lock(&f->lock);
        f->held_stream = call;
        pthread_cond_broadcast(&f->cond);
        pthread_mutex_unlock(&f->lock);
        rpc_call_on_cancel(call, held_stream_cancelled, f);
        return;
    }
    if (sscanf(req->request_id, "share:%d", &n) == 1 ||
        sscanf(req->request_id, "own:%d", &n) == 1) {
        send_and_keep(f, call, n, req->request_id[0]);
        return;
    }
    if (strcmp(req->request_id, "pair") == 0) {
        send_and_keep(f, call, 1, 'p');
        return;
    }
    if (sscanf(req->request_id_prefix, "fail:%d", &n) == 1) {
        fail_after_fat_messages(call, n);
        return;
    }
    if (sscanf(req->request_id_prefix, "fill:%d", &n) == 1) {
        fill_until_refused(f, call, n);
        return;
    }
    if (sscanf(req->request_id_prefix, "count:%d", &n) != 1) {
        rpc_call_fail(call, FERRY_ERR_INVALID_ARGUMENT, "request_id_prefix: want count:N");
        return;
    }
    for (int i = 1; i <= n && status == FERRY_OK; i++) {
        send_watch(call, i, &status);
    }
    rpc_call_finish(call);
}

const rpc_method_t fixture_methods[] = {
    {"Get", RPC_UNARY, handle_get},
    {"Watch", RPC_SERVER_STREAMING, handle_watch, FIXTURE_WATCH_MAX_REQUEST},
};
const size_t fixture_n_methods = sizeof(fixture_methods) / sizeof(fixture_methods[0]);

/* The observer's call_ended: runs with the call's lock held, touches only
 * the fixture. */
static void fixture_call_ended(void *arg, const char *method, int grpc_code, int64_t duration_ns)
{
    fixture_t *f = arg;
    (void)method;
    (void)duration_ns;

    pthread_mutex_lock(&f->lock);
    f->calls_ended++;
    f->last_code = grpc_code;
    pthread_cond_broadcast(&f->cond);
    pthread_mutex_unlock(&f->lock);
}

int fixture_start(fixture_t *f, int calls_armed)
{
    rpc_observer_t observer = {.call_ended = fixture_call_ended, .arg = f};
    rpc_server_params_t sp = {.listen_addr = "127.0.0.1:0",
                              .calls_armed = calls_armed,
                              .max_message_bytes = FIXTURE_MAX_MESSAGE,
                              .max_held_request_bytes = FIXTURE_MAX_HELD,
                              .max_health_watches = FIXTURE_HEALTH_WATCHES,
                              .observer = &observer};
    rpc_channel_params_t cp = {0};
    Ferry__V1__WatchResponse resp = FERRY__V1__WATCH_RESPONSE__INIT;
    Ferry__V1__ResponseHeader header = FERRY__V1__RESPONSE_HEADER__INIT;
    char fat[FIXTURE_FAT_BYTES + 1];
    char target[64];

    memset(f, 0, sizeof(*f));
    if (pthread_mutex_init(&f->lock, NULL) != 0 || pthread_cond_init(&f->cond, NULL) != 0 ||
        rpc_send_budget_create(FIXTURE_WATCH_BUDGET, &f->budget) != FERRY_OK) {
        return -1;
    }
    memset(fat, 'x', FIXTURE_FAT_BYTES);
    fat[FIXTURE_FAT_BYTES] = '\0';
    header.coordinator = fat;
    resp.header = &header;
    f->shared = rpc_msg_pack(&resp.base);
    if (f->shared == NULL) {
        return -1;
    }
    if (rpc_server_create(&sp, &f->server) != FERRY_OK ||
        rpc_server_add_service(f->server, &ferry__v1__coordinator__descriptor, fixture_methods,
                               fixture_n_methods, f) != FERRY_OK ||
        rpc_server_start(f->server, &f->port) != FERRY_OK) {
        return -1;
    }
    snprintf(target, sizeof(target), "127.0.0.1:%d", f->port);
    cp.target = target;
    return rpc_channel_create(&cp, &f->channel) == FERRY_OK ? 0 : -1;
}

void fixture_stop(fixture_t *f)
{
    bool later_started;

    pthread_mutex_lock(&f->lock); /* written under it, by a server thread */
    later_started = f->later_started;
    pthread_mutex_unlock(&f->lock);
    if (later_started) {
        pthread_join(f->later_thread, NULL);
    }
    rpc_channel_destroy(f->channel);
    rpc_server_destroy(f->server);
    rpc_send_budget_release(f->budget);
    rpc_msg_unref(f->shared);
    pthread_cond_destroy(&f->cond);
    pthread_mutex_destroy(&f->lock);
}

bool fixture_wait(fixture_t *f, bool (*pred)(const fixture_t *f), int timeout_ms)
{
    long long deadline = fixture_now_ms() + timeout_ms;
    bool ok;

    pthread_mutex_lock(&f->lock);
    while (!(ok = pred(f)) && fixture_now_ms() < deadline) {
        struct timespec ts;
        /* The condvar uses the realtime clock; wake at least every 50 ms to
         * re-check the monotonic deadline. */
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 50 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&f->cond, &f->lock, &ts);
    }
    pthread_mutex_unlock(&f->lock);
    return ok;
}

int fixture_setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));

    if (f == NULL || fixture_start(f, 0) != 0) {
        free(f);
        return -1;
    }
    *state = f;
    return 0;
}

int fixture_teardown(void **state)
{
    fixture_stop(*state);
    free(*state);
    return 0;
}
