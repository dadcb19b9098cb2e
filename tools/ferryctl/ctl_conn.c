/*
 * ctl_conn.c: the coordinators ferryctl may talk to, tried in order.
 *
 * Every replica serves every request (coordinator.proto), so a command may
 * go to any of them. The list is tried from the current one on: a
 * coordinator that does not answer (UNAVAILABLE, DEADLINE_EXCEEDED) is
 * skipped, and the first that answers, with any status, becomes current and
 * is asked first next time. Only one channel is open at a time.
 *
 * Threads: one (ferryctl's main thread).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"

#define COORD_PATH_PREFIX      "/ferry.v1.Coordinator/"
#define GRPC_DEADLINE_EXCEEDED 4
#define GRPC_UNAVAILABLE       14

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

bool ctl_code_is_unreachable(int grpc_code)
{
    return grpc_code == GRPC_UNAVAILABLE || grpc_code == GRPC_DEADLINE_EXCEEDED;
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

ferry_status_t ctl_conn_unary(ctl_conn_t *conn, const char *method, const ProtobufCMessage *req,
                              const ProtobufCMessageDescriptor *desc, ProtobufCMessage **resp_p,
                              rpc_error_t *err)
{
    ferry_status_t status = FERRY_ERR_UNAVAILABLE;
    size_t first = conn->current;
    char path[128];

    path_of(method, path, sizeof(path));
    for (size_t k = 0; k < conn->n_targets; k++) {
        size_t i = (first + k) % conn->n_targets;

        status = ctl_conn_unary_at(conn, i, path, req, desc, resp_p, err);
        if (status == FERRY_OK || !ctl_code_is_unreachable(err->grpc_code)) {
            return status;
        }
        if (conn->n_targets > 1) {
            fprintf(stderr, "ferryctl: %s: %s: %s; trying the next coordinator\n", conn->targets[i],
                    rpc_grpc_code_name(err->grpc_code), err->message);
        }
    }
    return status;
}

void ctl_conn_next(ctl_conn_t *conn)
{
    rpc_channel_destroy(conn->channel);
    conn->channel = NULL;
    conn->current = (conn->current + 1) % conn->n_targets;
}

/* One Watch on the current coordinator: open it and read the created
 * message. */
static ferry_status_t watch_once(ctl_conn_t *conn, const Ferry__V1__WatchRequest *req,
                                 rpc_stream_t **stream_p, Ferry__V1__WatchResponse **first_p,
                                 rpc_error_t *err)
{
    ProtobufCMessage *msg = NULL;
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
    status = rpc_stream_read(stream, conn->timeout_ms, &msg, err);
    if (status == FERRY_OK && msg == NULL) {
        status = FERRY_ERR_UNAVAILABLE;
        err->grpc_code = GRPC_UNAVAILABLE;
        snprintf(err->message, sizeof(err->message), "the Watch stream ended at once");
    } else if (status == FERRY_ERR_TIMED_OUT && err->grpc_code == 0) {
        err->grpc_code = GRPC_DEADLINE_EXCEEDED;
        snprintf(err->message, sizeof(err->message), "no first Watch message within %lld ms",
                 (long long)conn->timeout_ms);
    }
    if (status != FERRY_OK) {
        rpc_stream_destroy(stream);
        return status;
    }
    *stream_p = stream;
    *first_p = (Ferry__V1__WatchResponse *)msg;
    return FERRY_OK;
}

ferry_status_t ctl_conn_watch(ctl_conn_t *conn, const Ferry__V1__WatchRequest *req,
                              rpc_stream_t **stream_p, Ferry__V1__WatchResponse **first_p,
                              rpc_error_t *err)
{
    ferry_status_t status = FERRY_ERR_UNAVAILABLE;

    for (size_t k = 0; k < conn->n_targets; k++) {
        status = watch_once(conn, req, stream_p, first_p, err);
        if (status == FERRY_OK || !ctl_code_is_unreachable(err->grpc_code)) {
            return status;
        }
        fprintf(stderr, "ferryctl: %s: %s: %s\n", ctl_conn_target(conn),
                rpc_grpc_code_name(err->grpc_code), err->message);
        ctl_conn_next(conn);
    }
    return status;
}

int ctl_exit_code(ferry_status_t status, const rpc_error_t *err)
{
    if (status == FERRY_OK) {
        return CTL_EXIT_OK;
    }
    switch (err->grpc_code) {
    case 3: /* INVALID_ARGUMENT */
        return CTL_EXIT_USAGE;
    case 5: /* NOT_FOUND */
        return CTL_EXIT_NOT_FOUND;
    case 7:  /* PERMISSION_DENIED */
    case 16: /* UNAUTHENTICATED */
        return CTL_EXIT_DENIED;
    case 6: /* ALREADY_EXISTS */
    case 9: /* FAILED_PRECONDITION */
        return CTL_EXIT_PRECONDITION;
    case GRPC_DEADLINE_EXCEEDED:
    case GRPC_UNAVAILABLE:
        return CTL_EXIT_UNAVAILABLE;
    default:
        return CTL_EXIT_FAILED;
    }
}
