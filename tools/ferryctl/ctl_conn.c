/*
 * ctl_conn.c: the coordinators ferryctl may talk to, tried in order.
 *
 * Every replica serves every request (coordinator.proto), so a command may
 * go to any of them. The list is tried from the current one on: a
 * coordinator that does not answer (UNAVAILABLE, DEADLINE_EXCEEDED) is
 * skipped, and the first that answers, with any status, becomes current and
 * is asked first next time. Only one channel is open at a time. A write
 * goes to the next one only when it could not be sent (ctl_conn_write).
 * Messages from a coordinator are shown escaped (ctl_text_shown): they are
 * its text, or a client's it quotes.
 *
 * Threads: one (ferryctl's main thread).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "ctl.h"

#define COORD_PATH_PREFIX "/ferry.v1.Coordinator/"

/* How often a wait for a Watch's first message looks at ctl_stop. */
#define CONN_POLL_MS 200

ferry_status_t ctl_conn_init(ctl_conn_t *conn, const char *list)
{
    const char *p = list;
    size_t n = 1;

    for (const char *c = list; *c != '\0'; c++) {
        n += *c == ',';
    }
    conn->targets = calloc(n, sizeof(*conn->targets));
    if (conn->targets == NULL) {
        fprintf(stderr, "ferryctl: no memory for %zu coordinators\n", n);
        return FERRY_ERR_NO_MEMORY;
    }
    for (size_t i = 0; i < n; i++) {
        size_t len = strcspn(p, ",");

        if (len == 0) {
            fprintf(stderr, "ferryctl: --coordinator: entry %zu of '%s' is empty\n", i + 1, list);
            ctl_conn_cleanup(conn);
            return FERRY_ERR_INVALID_ARGUMENT;
        }
        conn->targets[i] = strndup(p, len);
        if (conn->targets[i] == NULL) {
            fprintf(stderr, "ferryctl: no memory for coordinator '%.*s'\n", (int)len, p);
            ctl_conn_cleanup(conn);
            return FERRY_ERR_NO_MEMORY;
        }
        conn->n_targets = i + 1;
        p += len + (p[len] == ',');
    }
    conn->keepalive_ms = rpc_env_keepalive_ms();
    conn->tls_refresh_s = rpc_env_tls_refresh_s();
    return FERRY_OK;
}

void ctl_conn_cleanup(ctl_conn_t *conn)
{
    rpc_channel_destroy(conn->channel);
    conn->channel = NULL;
    for (size_t i = 0; i < conn->n_targets; i++) {
        free(conn->targets[i]);
    }
    free(conn->targets);
    conn->targets = NULL;
    conn->n_targets = 0;
}

const char *ctl_conn_target(const ctl_conn_t *conn)
{
    return conn->targets[conn->current];
}

bool ctl_status_is_unreachable(ferry_status_t status)
{
    switch (status) {
    case FERRY_ERR_UNAVAILABLE:
    case FERRY_ERR_TRANSPORT:
    case FERRY_ERR_TIMED_OUT:
        return true;
    default:
        return false;
    }
}

bool ctl_status_tries_next_watch(ferry_status_t status)
{
    switch (status) {
    case FERRY_ERR_RESOURCE_EXHAUSTED:
    case FERRY_ERR_NO_MEMORY:
    case FERRY_ERR_PROTOCOL:
        return true;
    default:
        return ctl_status_is_unreachable(status);
    }
}

int64_t ctl_now_ms(void)
{
    return ferry__clock_ms(CLOCK_MONOTONIC);
}

/* Says on stderr that target i did not answer and the next is tried. */
static void say_next(const ctl_conn_t *conn, size_t i, const rpc_error_t *err)
{
    char shown[CTL_SHOWN_CAP(sizeof(err->message))];

    fprintf(stderr, "ferryctl: %s: %s: %s; trying the next coordinator\n", conn->targets[i],
            rpc_grpc_code_name(err->grpc_code), ctl_text_shown(shown, sizeof(shown), err->message));
}

/* Points the channel at targets[i], opening it if it points elsewhere. */
static ferry_status_t conn_use(ctl_conn_t *conn, size_t i, rpc_error_t *err)
{
    rpc_channel_params_t params = {0};
    ferry_status_t status;

    if (conn->channel != NULL && conn->current == i) {
        return FERRY_OK;
    }
    rpc_channel_destroy(conn->channel);
    conn->channel = NULL;
    conn->current = i;
    params.target = conn->targets[i];
    params.tls = conn->use_tls ? &conn->tls : NULL;
    params.keepalive_ms = conn->keepalive_ms;
    params.tls_refresh_s = conn->tls_refresh_s;
    status = rpc_channel_create(&params, &conn->channel);
    if (status != FERRY_OK) {
        err->grpc_code = rpc_status_to_grpc(status);
        snprintf(err->message, sizeof(err->message), "cannot open a channel to %s (%s)",
                 conn->targets[i], ferry_status_string(status));
    }
    return status;
}

static void path_of(const char *method, char *path, size_t size)
{
    snprintf(path, size, "%s%s", method[0] == '/' ? "" : COORD_PATH_PREFIX, method);
}

ferry_status_t ctl_conn_unary_at(ctl_conn_t *conn, size_t target, const char *path,
                                 const ProtobufCMessage *req,
                                 const ProtobufCMessageDescriptor *desc, ProtobufCMessage **resp_p,
                                 rpc_error_t *err)
{
    ferry_status_t status = conn_use(conn, target, err);

    if (status != FERRY_OK) {
        return status;
    }
    return rpc_unary(conn->channel, path, req, desc, conn->timeout_ms, resp_p, err);
}

/* A write on targets[i]: connected first, within the call's timeout, so
 * that *sent_p says whether the request went out (rpc_channel_connect: no
 * call has gone out before it returns). */
static ferry_status_t write_at(ctl_conn_t *conn, size_t i, const char *method, const char *path,
                               const ProtobufCMessage *req, const ProtobufCMessageDescriptor *desc,
                               ProtobufCMessage **resp_p, rpc_error_t *err, bool *sent_p)
{
    int64_t start = ctl_now_ms();
    ferry_status_t status = conn_use(conn, i, err);
    int64_t left;

    if (status == FERRY_OK) {
        status = rpc_channel_connect(conn->channel, conn->timeout_ms, err);
    }
    if (status != FERRY_OK) {
        return status;
    }
    *sent_p = true;
    left = conn->timeout_ms - (ctl_now_ms() - start);
    status = rpc_unary(conn->channel, path, req, desc, left > 0 ? left : 1, resp_p, err);
    if (ctl_status_is_unreachable(status)) {
        fprintf(stderr,
                "ferryctl: %s: %s did not answer after the request went out; it may have been "
                "applied, so it is not sent to another coordinator\n",
                method, conn->targets[i]);
    }
    return status;
}

/* The one walk over the targets of ctl_conn_unary and ctl_conn_write: on
 * to the next while the answer is ctl_status_is_unreachable, ctl_stop is not
 * set and, for a write, the request did not go out. */
static ferry_status_t conn_call(ctl_conn_t *conn, const char *method, const ProtobufCMessage *req,
                                const ProtobufCMessageDescriptor *desc, ProtobufCMessage **resp_p,
                                rpc_error_t *err, bool write)
{
    ferry_status_t status = FERRY_ERR_UNAVAILABLE;
    size_t first = conn->current;
    char path[128];

    path_of(method, path, sizeof(path));
    for (size_t k = 0; k < conn->n_targets; k++) {
        size_t i = (first + k) % conn->n_targets;
        bool sent = false;

        status = write ? write_at(conn, i, method, path, req, desc, resp_p, err, &sent)
                       : ctl_conn_unary_at(conn, i, path, req, desc, resp_p, err);
        if (status == FERRY_OK || sent || !ctl_status_is_unreachable(status)) {
            return status;
        }
        /* Interrupted (list): the pages read so far are printed, not one
         * more coordinator's timeout waited out. */
        if (ctl_stop) {
            break;
        }
        if (conn->n_targets > 1) {
            say_next(conn, i, err);
        }
    }
    return status;
}

ferry_status_t ctl_conn_unary(ctl_conn_t *conn, const char *method, const ProtobufCMessage *req,
                              const ProtobufCMessageDescriptor *desc, ProtobufCMessage **resp_p,
                              rpc_error_t *err)
{
    return conn_call(conn, method, req, desc, resp_p, err, false);
}

ferry_status_t ctl_conn_write(ctl_conn_t *conn, const char *method, const ProtobufCMessage *req,
                              const ProtobufCMessageDescriptor *desc, ProtobufCMessage **resp_p,
                              rpc_error_t *err)
{
    return conn_call(conn, method, req, desc, resp_p, err, true);
}

void ctl_conn_next(ctl_conn_t *conn)
{
    rpc_channel_destroy(conn->channel);
    conn->channel = NULL;
    conn->current = (conn->current + 1) % conn->n_targets;
}

/* Reads a Watch's first message, waiting at most timeout_ms in slices of
 * CONN_POLL_MS: a Ctrl-C while a replica is silent ends the wait in a
 * moment, not at --timeout. */
static ferry_status_t read_first(const ctl_conn_t *conn, rpc_stream_t *stream,
                                 ProtobufCMessage **msg_p, rpc_error_t *err)
{
    int64_t deadline = ctl_now_ms() + conn->timeout_ms;

    for (;;) {
        int64_t left = deadline - ctl_now_ms();
        ferry_status_t status;

        if (ctl_stop) {
            err->grpc_code = rpc_status_to_grpc(FERRY_ERR_CANCELLED);
            snprintf(err->message, sizeof(err->message), "interrupted");
            return FERRY_ERR_CANCELLED;
        }
        if (left <= 0) {
            err->grpc_code = rpc_status_to_grpc(FERRY_ERR_TIMED_OUT);
            snprintf(err->message, sizeof(err->message), "no first Watch message within %lld ms",
                     (long long)conn->timeout_ms);
            return FERRY_ERR_TIMED_OUT;
        }
        status = rpc_stream_read(stream, left < CONN_POLL_MS ? left : CONN_POLL_MS, msg_p, err);
        if (!rpc_stream_idle(status, err)) {
            return status;
        }
    }
}

/* One Watch on the current coordinator: open it and read the created
 * message, whose revision the resume after this stream adds one to: one
 * that is negative or INT64_MAX (a broken or hostile replica) is refused
 * before it can overflow. 0 is taken: a replica that has not loaded its view
 * yet (etcd down at its start) answers so, and ends the stream when it
 * loads. */
static ferry_status_t watch_once(ctl_conn_t *conn, const Ferry__V1__WatchRequest *req,
                                 rpc_stream_t **stream_p, Ferry__V1__WatchResponse **first_p,
                                 rpc_error_t *err)
{
    ProtobufCMessage *msg = NULL;
    Ferry__V1__WatchResponse *first;
    rpc_stream_t *stream;
    ferry_status_t status;

    status = conn_use(conn, conn->current, err);
    if (status != FERRY_OK) {
        return status;
    }
    status = rpc_stream_open(conn->channel, COORD_PATH_PREFIX "Watch", &req->base,
                             &ferry__v1__watch_response__descriptor, 0, &stream);
    if (status != FERRY_OK) {
        err->grpc_code = rpc_status_to_grpc(status);
        snprintf(err->message, sizeof(err->message), "cannot open a Watch stream");
        return status;
    }
    status = read_first(conn, stream, &msg, err);
    if (status == FERRY_OK && msg == NULL) {
        status = FERRY_ERR_UNAVAILABLE;
        err->grpc_code = rpc_status_to_grpc(FERRY_ERR_UNAVAILABLE);
        snprintf(err->message, sizeof(err->message), "the Watch stream ended at once");
    }
    if (status != FERRY_OK) {
        goto err_stream;
    }
    first = (Ferry__V1__WatchResponse *)msg;
    if (first->header != NULL &&
        (first->header->revision < 0 || first->header->revision == INT64_MAX)) {
        status = FERRY_ERR_PROTOCOL;
        err->grpc_code = rpc_status_to_grpc(FERRY_ERR_PROTOCOL);
        snprintf(err->message, sizeof(err->message),
                 "the Watch's first message has revision %lld: not a revision to watch after",
                 (long long)first->header->revision);
        protobuf_c_message_free_unpacked(msg, NULL);
        goto err_stream;
    }
    *stream_p = stream;
    *first_p = first;
    return FERRY_OK;

err_stream:
    rpc_stream_destroy(stream);
    return status;
}

ferry_status_t ctl_conn_watch(ctl_conn_t *conn, const Ferry__V1__WatchRequest *req,
                              rpc_stream_t **stream_p, Ferry__V1__WatchResponse **first_p,
                              rpc_error_t *err)
{
    ferry_status_t status = FERRY_ERR_UNAVAILABLE;

    for (size_t k = 0; k < conn->n_targets && !ctl_stop; k++) {
        char shown[CTL_SHOWN_CAP(sizeof(err->message))];

        status = watch_once(conn, req, stream_p, first_p, err);
        if (status == FERRY_OK || ctl_stop || !ctl_status_tries_next_watch(status)) {
            return status;
        }
        fprintf(stderr, "ferryctl: %s: %s: %s\n", ctl_conn_target(conn),
                rpc_grpc_code_name(err->grpc_code),
                ctl_text_shown(shown, sizeof(shown), err->message));
        ctl_conn_next(conn);
    }
    return status;
}

/* Each case lists every status that the rpc layer's one mapping
 * (rpc/rpc_status.c) ties to the gRPC code the exit code is documented by. */
int ctl_exit_code(ferry_status_t status)
{
    switch (status) {
    case FERRY_OK:
        return CTL_EXIT_OK;
    case FERRY_ERR_INVALID_ARGUMENT: /* INVALID_ARGUMENT */
    case FERRY_ERR_SIZE_MISMATCH:
    case FERRY_ERR_KIND_MISMATCH:
        return CTL_EXIT_USAGE;
    case FERRY_ERR_NOT_FOUND: /* NOT_FOUND */
    case FERRY_ERR_EXPIRED:
    case FERRY_ERR_LEASE_NOT_FOUND:
        return CTL_EXIT_NOT_FOUND;
    case FERRY_ERR_PERMISSION_DENIED: /* PERMISSION_DENIED, UNAUTHENTICATED */
    case FERRY_ERR_UNAUTHENTICATED:
        return CTL_EXIT_DENIED;
    case FERRY_ERR_ALREADY_EXISTS: /* ALREADY_EXISTS, FAILED_PRECONDITION */
    case FERRY_ERR_FAILED_PRECONDITION:
    case FERRY_ERR_BUSY:
        return CTL_EXIT_PRECONDITION;
    case FERRY_ERR_TIMED_OUT: /* DEADLINE_EXCEEDED, UNAVAILABLE */
    case FERRY_ERR_UNAVAILABLE:
    case FERRY_ERR_TRANSPORT:
        return CTL_EXIT_UNAVAILABLE;
    default:
        return CTL_EXIT_FAILED;
    }
}
