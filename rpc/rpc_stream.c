/*
 * rpc_stream.c: the client side of a server-streaming call.
 *
 * Each stream has its own pluck completion queue and three kinds of batch,
 * each with its own tag: start (send the request, half-close, receive the
 * initial metadata), status (RECV_STATUS_ON_CLIENT, started at once so the
 * final status is never missed) and one RECV_MESSAGE at a time. A read that
 * times out leaves its RECV_MESSAGE pending and the next read waits for the
 * same one, so no message is lost to a timeout.
 *
 * Invariants: every started batch is plucked exactly once (at the latest in
 * rpc_stream_destroy) before the queue is destroyed.
 *
 * Threads: a stream is used by one thread at a time, except
 * rpc_stream_cancel, which any thread may call while the stream exists.
 */
#include "rpc/rpc_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"

struct rpc_stream {
    grpc_completion_queue *cq;
    grpc_call *call;
    const ProtobufCMessageDescriptor *desc;
    char path[160];
    grpc_byte_buffer *request;    /* owned until the start batch completes */
    grpc_metadata md[RPC_MAX_MD]; /* sent with the start batch; values owned */
    size_t n_md;
    grpc_metadata_array initial_md, trailing_md;
    grpc_status_code code;
    grpc_slice details;
    grpc_byte_buffer *recv_buf;
    char tag_start, tag_status, tag_recv; /* their addresses are the tags */
    bool start_pending, status_pending, recv_pending;
    bool ended;
    ferry_status_t end_status;
    rpc_error_t end_err;
};

static void stream_pluck(rpc_stream_t *s, void *tag, bool *pending)
{
    if (*pending) {
        grpc_completion_queue_pluck(s->cq, tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        *pending = false;
    }
}

static grpc_call_error stream_start(rpc_stream_t *s)
{
    grpc_op ops[4];
    grpc_call_error rc;

    memset(ops, 0, sizeof(ops));
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].data.send_initial_metadata.count = s->n_md;
    ops[0].data.send_initial_metadata.metadata = s->md;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = s->request;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &s->initial_md;
    rc = grpc_call_start_batch(s->call, ops, 4, &s->tag_start, NULL);
    if (rc != GRPC_CALL_OK) {
        return rc;
    }
    s->start_pending = true;
    memset(ops, 0, sizeof(ops));
    ops[0].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[0].data.recv_status_on_client.trailing_metadata = &s->trailing_md;
    ops[0].data.recv_status_on_client.status = &s->code;
    ops[0].data.recv_status_on_client.status_details = &s->details;
    rc = grpc_call_start_batch(s->call, ops, 1, &s->tag_status, NULL);
    if (rc == GRPC_CALL_OK) {
        s->status_pending = true;
    }
    return rc;
}

ferry_status_t rpc_stream_open(rpc_channel_t *channel, const char *path,
                               const ProtobufCMessage *request,
                               const ProtobufCMessageDescriptor *response_desc, int64_t timeout_ms,
                               rpc_stream_t **stream_p)
{
    return rpc_stream_open_md(channel, path, request, NULL, 0, response_desc, timeout_ms, stream_p);
}

ferry_status_t rpc_stream_open_md(rpc_channel_t *channel, const char *path,
                                  const ProtobufCMessage *request, const rpc_md_t *md, size_t n_md,
                                  const ProtobufCMessageDescriptor *response_desc,
                                  int64_t timeout_ms, rpc_stream_t **stream_p)
{
    rpc_stream_t *s;
    grpc_call_error rc;

    if (n_md > RPC_MAX_MD) {
        ferry_error("rpc: %s: %zu metadata pairs, at most %d", path, n_md, RPC_MAX_MD);
        return FERRY_ERR_MISUSE;
    }
    s = calloc(1, sizeof(*s));
    if (s == NULL || (s->request = rpc__pack(request)) == NULL) {
        free(s);
        return FERRY_ERR_NO_MEMORY;
    }
    for (; s->n_md < n_md; s->n_md++) {
        s->md[s->n_md].key = grpc_slice_from_static_string(md[s->n_md].key);
        s->md[s->n_md].value = grpc_slice_from_copied_string(md[s->n_md].value);
    }
    snprintf(s->path, sizeof(s->path), "%s", path);
    s->desc = response_desc;
    s->details = grpc_empty_slice();
    grpc_metadata_array_init(&s->initial_md);
    grpc_metadata_array_init(&s->trailing_md);
    s->cq = grpc_completion_queue_create_for_pluck(NULL);
    s->call = rpc__channel_call(channel, path, s->cq, timeout_ms);
    rc = stream_start(s);
    if (rc != GRPC_CALL_OK) {
        ferry_error("rpc: %s: cannot start the stream: grpc_call_error %d", path, (int)rc);
        rpc_stream_destroy(s);
        return FERRY_ERR_INTERNAL;
    }
    *stream_p = s;
    return FERRY_OK;
}

/* The stream is over: collect the final status (kept for later reads). */
static ferry_status_t stream_end(rpc_stream_t *s, rpc_error_t *err)
{
    stream_pluck(s, &s->tag_status, &s->status_pending);
    stream_pluck(s, &s->tag_start, &s->start_pending);
    s->ended = true;
    s->end_status = rpc__client_status(s->code, s->details, &s->trailing_md, s->path, &s->end_err);
    if (err != NULL) {
        *err = s->end_err;
    }
    return s->end_status;
}

/* A message that does not decode ends the stream with FERRY_ERR_PROTOCOL. */
static ferry_status_t stream_malformed(rpc_stream_t *s, rpc_error_t *err)
{
    ferry_warn("rpc: %s: malformed message; cancelling the stream", s->path);
    grpc_call_cancel(s->call, NULL);
    stream_end(s, NULL);
    s->end_status = FERRY_ERR_PROTOCOL;
    rpc__error_set(&s->end_err, rpc_status_to_grpc(FERRY_ERR_PROTOCOL), "malformed message");
    if (err != NULL) {
        *err = s->end_err;
    }
    return s->end_status;
}

static ferry_status_t stream_start_recv(rpc_stream_t *s, rpc_error_t *err)
{
    grpc_op op;
    grpc_call_error rc;

    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &s->recv_buf;
    rc = grpc_call_start_batch(s->call, &op, 1, &s->tag_recv, NULL);
    if (rc != GRPC_CALL_OK) {
        ferry_error("rpc: %s: cannot read: grpc_call_error %d", s->path, (int)rc);
        rpc__error_set(err, GRPC_STATUS_INTERNAL, "cannot read");
        return FERRY_ERR_INTERNAL;
    }
    s->recv_pending = true;
    return FERRY_OK;
}

ferry_status_t rpc_stream_read(rpc_stream_t *s, int64_t timeout_ms, ProtobufCMessage **msg_p,
                               rpc_error_t *err)
{
    grpc_event ev;
    ferry_status_t status;

    *msg_p = NULL;
    if (s->ended) {
        if (err != NULL) {
            *err = s->end_err;
        }
        return s->end_status;
    }
    if (!s->recv_pending && (status = stream_start_recv(s, err)) != FERRY_OK) {
        return status;
    }
    ev = grpc_completion_queue_pluck(s->cq, &s->tag_recv, rpc__deadline_after_ms(timeout_ms), NULL);
    if (ev.type == GRPC_QUEUE_TIMEOUT) {
        rpc__error_set(err, GRPC_STATUS_OK, "no message yet");
        return FERRY_ERR_TIMED_OUT;
    }
    s->recv_pending = false;
    if (s->recv_buf == NULL) {
        return stream_end(s, err);
    }
    *msg_p = rpc__unpack(s->desc, s->recv_buf);
    grpc_byte_buffer_destroy(s->recv_buf);
    s->recv_buf = NULL;
    if (*msg_p == NULL) {
        return stream_malformed(s, err);
    }
    rpc__error_set(err, GRPC_STATUS_OK, "");
    return FERRY_OK;
}

void rpc_stream_cancel(rpc_stream_t *s)
{
    grpc_call_cancel(s->call, NULL);
}

void rpc_stream_destroy(rpc_stream_t *s)
{
    if (s == NULL) {
        return;
    }
    if (!s->ended) {
        grpc_call_cancel(s->call, NULL);
    }
    stream_pluck(s, &s->tag_recv, &s->recv_pending);
    stream_pluck(s, &s->tag_status, &s->status_pending);
    stream_pluck(s, &s->tag_start, &s->start_pending);
    if (s->recv_buf != NULL) {
        grpc_byte_buffer_destroy(s->recv_buf);
    }
    grpc_call_unref(s->call);
    grpc_completion_queue_shutdown(s->cq);
    grpc_completion_queue_destroy(s->cq);
    grpc_byte_buffer_destroy(s->request);
    for (size_t i = 0; i < s->n_md; i++) {
        grpc_slice_unref(s->md[i].value);
    }
    grpc_slice_unref(s->details);
    grpc_metadata_array_destroy(&s->initial_md);
    grpc_metadata_array_destroy(&s->trailing_md);
    free(s);
}
