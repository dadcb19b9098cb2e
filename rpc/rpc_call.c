/*
 * rpc_call.c: one server-side call, as a state machine.
 *
 *   REQUESTED --delivered--> ACTIVE --ended--> ENDING --status sent and
 *                                                       close received--> DONE
 *   REQUESTED --server shut down before delivery--> freed
 *
 * Every change of state goes through call_set_state(). A call is ended once,
 * by its handler (rpc_call_reply, rpc_call_fail, rpc_call_finish) or by this
 * layer (unknown method, malformed request, or a cancellation the handler
 * did not answer); later attempts are harmless no-ops.
 *
 * gRPC operations: RECV_CLOSE_ON_SERVER is started as soon as the call
 * arrives, so a client that goes away (or a deadline, or the server's
 * cancel-all at shutdown) is seen at once and runs the cancel callback.
 * Sends go through a queue with at most one batch in flight: the first
 * batch carries SEND_INITIAL_METADATA, the last SEND_STATUS_FROM_SERVER
 * (with the last message when one is queued, so a unary reply is one
 * batch).
 *
 * Draining: a call ended before its final status has gone out (a unary
 * reply or a stream's queue still waiting for the client's window) is
 * listed on the server's drain list (rpc_drain.c) until DONE; if it is
 * not DONE RPC_DRAIN_MS later, its client is not reading, and the call is
 * cancelled: the pending batch fails, the queue is dropped, and the call
 * goes on to DONE as any cancelled call does.
 *
 * References: the layer holds one from arming until DONE; each batch in
 * flight, the dispatch (decoding and the handler), each running cancel
 * callback and the drain list hold one; handlers may take more
 * (rpc_call_ref). The memory goes with the last.
 * The grpc_call itself is released at DONE, so a handler that keeps a ref
 * never delays the server's shutdown.
 *
 * Threads: completion handlers run on server threads; the rpc_call_* API
 * may be called from any thread. call->lock guards the mutable fields and
 * every grpc_call_start_batch; it is never held while user code runs.
 */
#include "rpc/rpc_int.h"

#include <inttypes.h>
#include <stdarg.h>
#include <time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"

static const char *call_state_name(rpc_call_state_t state)
{
    switch (state) {
    case RPC_CALL_REQUESTED:
        return "requested";
    case RPC_CALL_ACTIVE:
        return "active";
    case RPC_CALL_ENDING:
        return "ending";
    case RPC_CALL_DONE:
        return "done";
    }
    return "?";
}

/* The one place a call changes state. Caller holds call->lock. */
static void call_set_state(rpc_call_t *call, rpc_call_state_t next)
{
    ferry_trace("call %" PRIu64 " %s: %s -> %s", call->id, call->path, call_state_name(call->state),
                call_state_name(next));
    call->state = next;
}

/* What a counted entry costs in its call's queued_bytes. */
static size_t outmsg_cost(const rpc_outmsg_t *m)
{
    return m->counted ? m->len + RPC_OUTMSG_OVERHEAD : 0;
}

/* What of that no other call under the same budget holds: the entry, and
 * its bytes unless a shared message's (which stay while others hold it). */
static size_t outmsg_own(const rpc_outmsg_t *m)
{
    return !m->counted ? 0 : m->holds ? RPC_OUTMSG_OVERHEAD : m->len + RPC_OUTMSG_OVERHEAD;
}

/* m, the queue's head, leaves the queue (for the transport, or dropped). */
static void call_unqueue_head(rpc_call_t *call, rpc_outmsg_t *m)
{
    call->queue_head = m->next;
    if (call->queue_head == NULL) {
        call->queue_tail = NULL;
    }
    call->waiting_own -= outmsg_own(m);
    if (m == call->newest) {
        /* What is left of the newest unit (it runs to the tail) waits on:
         * a revision in several messages is still the newest while its
         * first goes out (review-s31b M1). */
        call->newest = m->next;
        call->newest_own -= outmsg_own(m);
    }
    m->next = NULL;
}

static void outmsg_free(rpc_outmsg_t *m)
{
    grpc_byte_buffer_destroy(m->buf);
    rpc_msg_unref(m->shared);
    free(m);
}

/* m leaves the call's queue (the transport took it, or it was dropped):
 * out of its count and its budget's, together, as call_enqueue put it
 * into both, and freed. */
static void call_queued_sub(rpc_call_t *call, rpc_outmsg_t *m)
{
    if (m->counted) {
        call->queued_bytes -= outmsg_cost(m);
        if (call->budget != NULL) {
            rpc__budget_give(call->budget, m);
        }
    }
    outmsg_free(m);
}

static void call_drop_queue(rpc_call_t *call)
{
    while (call->queue_head != NULL) {
        rpc_outmsg_t *m = call->queue_head;
        call_unqueue_head(call, m);
        call_queued_sub(call, m);
    }
}

static void call_free(rpc_call_t *call)
{
    call_drop_queue(call);
    if (call->inflight != NULL) {
        call_queued_sub(call, call->inflight);
    }
    rpc_send_budget_release(call->budget);
    if (call->gcall != NULL) {
        grpc_call_unref(call->gcall);
    }
    if (call->request != NULL) {
        protobuf_c_message_free_unpacked(call->request, NULL);
    }
    if (call->payload != NULL) {
        grpc_byte_buffer_destroy(call->payload);
    }
    grpc_slice_unref(call->request_bytes);
    grpc_metadata_array_destroy(&call->request_md);
    grpc_call_details_destroy(&call->details);
    pthread_mutex_destroy(&call->lock);
    free(call);
}

void rpc_call_ref(rpc_call_t *call)
{
    atomic_fetch_add(&call->refs, 1);
}

void rpc_call_unref(rpc_call_t *call)
{
    if (call != NULL && atomic_fetch_sub(&call->refs, 1) == 1) {
        call_free(call);
    }
}

/* --- arming and arrival ------------------------------------------------- */

static rpc_call_t *call_new(rpc_server_t *server, rpc_method_entry_t *method)
{
    rpc_call_t *call = calloc(1, sizeof(*call));

    if (call == NULL) {
        return NULL;
    }
    if (pthread_mutex_init(&call->lock, NULL) != 0) {
        free(call);
        return NULL;
    }
    atomic_init(&call->refs, 1);
    call->state = RPC_CALL_REQUESTED;
    call->server = server;
    call->method = method;
    call->tag_request = (rpc_tag_t){RPC_TAG_REQUEST, call};
    call->tag_close = (rpc_tag_t){RPC_TAG_CLOSE, call};
    call->tag_send = (rpc_tag_t){RPC_TAG_SEND, call};
    call->deadline = gpr_inf_future(GPR_CLOCK_MONOTONIC);
    call->request_bytes = grpc_empty_slice();
    grpc_metadata_array_init(&call->request_md);
    grpc_call_details_init(&call->details);
    snprintf(call->path, sizeof(call->path), "%s", method != NULL ? method->path : "?");
    return call;
}

ferry_status_t rpc__call_arm(rpc_server_t *server, rpc_method_entry_t *method)
{
    rpc_call_t *call = call_new(server, method);
    grpc_call_error rc;

    if (call == NULL) {
        ferry_error("rpc: no memory (or mutex) for a call to arm");
        return FERRY_ERR_NO_MEMORY;
    }
    if (method != NULL) {
        rc = grpc_server_request_registered_call(server->server, method->registered, &call->gcall,
                                                 &call->deadline, &call->request_md, &call->payload,
                                                 server->cq, server->cq, &call->tag_request);
    } else {
        rc =
            grpc_server_request_call(server->server, &call->gcall, &call->details,
                                     &call->request_md, server->cq, server->cq, &call->tag_request);
    }
    if (rc != GRPC_CALL_OK) {
        ferry_error("rpc: cannot arm a call for %s: grpc_call_error %d", call->path, (int)rc);
        call_free(call);
        return FERRY_ERR_INTERNAL;
    }
    return FERRY_OK;
}

/* Records who and what the call is, and makes it ACTIVE. */
static void call_accept(rpc_call_t *call)
{
    rpc_server_t *server = call->server;
    char *peer = grpc_call_get_peer(call->gcall);

    snprintf(call->peer, sizeof(call->peer), "%s", peer != NULL ? peer : "unknown");
    gpr_free(peer);
    rpc__peer_host(call->peer, call->peer_host, sizeof(call->peer_host));
    if (call->method == NULL) {
        rpc__slice_to_str(call->details.method, call->path, sizeof(call->path));
        call->deadline = call->details.deadline;
    }
    call->id = atomic_fetch_add(&server->next_call_id, 1);
    atomic_fetch_add(&server->live_calls, 1);
    call->accepted_ns = ferry__clock_ns(CLOCK_MONOTONIC);
    if (server->observer.call_started != NULL) {
        server->observer.call_started(server->observer.arg, call->method ? call->path : NULL);
    }
    pthread_mutex_lock(&call->lock);
    call_set_state(call, RPC_CALL_ACTIVE);
    pthread_mutex_unlock(&call->lock);
    ferry_debug("call %" PRIu64 " %s: from %s", call->id, call->path, call->peer);
}

/* Starts RECV_CLOSE_ON_SERVER, the early warning of a client gone away. */
static void call_start_close(rpc_call_t *call)
{
    grpc_op op;
    grpc_call_error rc;

    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &call->close_cancelled;
    rpc_call_ref(call);
    pthread_mutex_lock(&call->lock);
    rc = rpc__server_start_batch(call->server, call->gcall, &op, 1, &call->tag_close);
    if (rc != GRPC_CALL_OK) {
        ferry_error("call %" PRIu64 " %s: cannot wait for close: grpc_call_error %d", call->id,
                    call->path, (int)rc);
        call->close_done = true;
        call->cancelled = true;
        atomic_fetch_sub(&call->refs, 1); /* the layer's ref remains */
    }
    pthread_mutex_unlock(&call->lock);
}

static void call_end(rpc_call_t *call, grpc_byte_buffer *buf, grpc_status_code code,
                     ferry_status_t status, const char *msg);
static void call_process_cancel(rpc_call_t *call);

/* Refuses a request larger than its method accepts (max_request_bytes),
 * before it is decoded, and frees it at once. RESOURCE_EXHAUSTED, the code
 * gRPC itself answers for a message over the server's max_message_bytes:
 * a client sees one code for "too large", whichever bound it ran into.
 * True if refused. */
static bool call_refuse_oversized(rpc_call_t *call)
{
    size_t max = call->method->max_request_bytes;
    size_t len = grpc_byte_buffer_length(call->payload);
    static ferry_log_limit_t limit;
    unsigned quiet;
    char msg[256];

    if (max == 0 || len <= max) {
        return false;
    }
    grpc_byte_buffer_destroy(call->payload);
    call->payload = NULL;
    atomic_fetch_add(&call->server->refused_oversized, 1); /* for metrics */
    if (ferry_log_due(&limit, &quiet)) { /* any client, unauthenticated, may send them */
        ferry_info("call %" PRIu64 " %s: request of %zu bytes from %s refused: the method "
                   "accepts at most %zu; %u more refused since the last line",
                   call->id, call->path, len, call->peer, max, quiet);
    }
    snprintf(msg, sizeof(msg), "request of %zu bytes is larger than %s accepts (%zu bytes)", len,
             call->path, max);
    call_end(call, NULL, GRPC_STATUS_RESOURCE_EXHAUSTED, FERRY_ERR_RESOURCE_EXHAUSTED, msg);
    return true;
}

/* Counts the request against the server's max_held_request_bytes until
 * the call is done (call_maybe_done_locked), or, when it would pass that
 * bound, refuses it before it is decoded and frees it at once:
 * RESOURCE_EXHAUSTED, as for a request too large on its own. A call may be
 * held for minutes (a parked wait, a queue, a stream), so what many hold
 * together is bounded, not only each. True if refused, or if the call has
 * already ended (its client went while the request waited here: another
 * server thread ended it, and being done it would never give back what
 * were counted now). The count and the state are read under the call's
 * lock, as call_maybe_done_locked reads them. */
static bool call_refuse_over_budget(rpc_call_t *call)
{
    rpc_server_t *server = call->server;
    size_t max = server->max_held_request_bytes;
    size_t len = grpc_byte_buffer_length(call->payload);
    size_t cost = call->method->keep_request_bytes ? 2 * len : len;
    size_t held;
    static ferry_log_limit_t limit;
    unsigned quiet;
    char msg[320];

    if (max == 0) {
        return false;
    }
    pthread_mutex_lock(&call->lock);
    if (call->state != RPC_CALL_ACTIVE) {
        pthread_mutex_unlock(&call->lock);
        ferry_debug("call %" PRIu64 " %s: ended before its request was counted; not run", call->id,
                    call->path);
        return true;
    }
    held = atomic_fetch_add(&server->held_request_bytes, cost);
    if (held + cost <= max) {
        call->held_bytes = cost;
        pthread_mutex_unlock(&call->lock);
        return false;
    }
    atomic_fetch_sub(&server->held_request_bytes, cost);
    pthread_mutex_unlock(&call->lock);
    grpc_byte_buffer_destroy(call->payload);
    call->payload = NULL;
    atomic_fetch_add(&server->refused_over_budget, 1); /* for metrics */
    if (ferry_log_due(&limit, &quiet)) { /* a client retrying at once would flood the log */
        ferry_info("call %" PRIu64 " %s: request of %zu bytes from %s refused: calls in "
                   "progress hold %zu bytes of requests (at most %zu; raise %s); %u more "
                   "refused since the last line",
                   call->id, call->path, len, call->peer, held, max, server->max_held_request_name,
                   quiet);
    }
    snprintf(msg, sizeof(msg),
             "the server holds %zu bytes of requests in progress, and this one's %zu would pass "
             "its bound of %zu (%s); retry later",
             held, len, max, server->max_held_request_name);
    call_end(call, NULL, GRPC_STATUS_RESOURCE_EXHAUSTED, FERRY_ERR_RESOURCE_EXHAUSTED, msg);
    return true;
}

/* Runs the handler, or answers for it when it cannot run. */
static void call_dispatch(rpc_call_t *call)
{
    rpc_method_entry_t *method = call->method;
    ferry_status_t status;
    char msg[512];

    if (method == NULL) {
        ferry_info("call %" PRIu64 " %s: unknown method", call->id, call->path);
        snprintf(msg, sizeof(msg), "unknown method %s", call->path);
        call_end(call, NULL, GRPC_STATUS_UNIMPLEMENTED, FERRY_ERR_UNIMPLEMENTED, msg);
        return;
    }
    if (call->payload == NULL) {
        /* The client closed or cancelled before sending its message: under
         * load mostly a caller's deadline, so not worth an info line. */
        ferry_debug("call %" PRIu64 " %s: no request message from %s", call->id, call->path,
                    call->peer);
        snprintf(msg, sizeof(msg), "no request message for %s", call->path);
        call_end(call, NULL, GRPC_STATUS_INVALID_ARGUMENT, FERRY_ERR_INVALID_ARGUMENT, msg);
        return;
    }
    if (call_refuse_oversized(call) || call_refuse_over_budget(call)) {
        return;
    }
    status = rpc__unpack_request(method->desc->input, call->payload, call->path, &call->request,
                                 &call->request_bytes, msg, sizeof(msg));
    if (call->payload != NULL) {
        grpc_byte_buffer_destroy(call->payload);
        call->payload = NULL;
    }
    if (status != FERRY_OK) {
        ferry_info("call %" PRIu64 " %s: request from %s refused: %s", call->id, call->path,
                   call->peer, msg);
        call_end(call, NULL, (grpc_status_code)rpc_status_to_grpc(status), status, msg);
        return;
    }
    if (!method->keep_request_bytes) {
        /* The decoded request holds a copy of every field (protobuf-c
         * copies, unknown fields too): the bytes would only double what a
         * call held for minutes keeps. */
        grpc_slice_unref(call->request_bytes);
        call->request_bytes = grpc_empty_slice();
    }
    pthread_mutex_lock(&call->lock);
    call->in_handler = true;
    pthread_mutex_unlock(&call->lock);
    method->handler(call, call->request, method->arg);
    pthread_mutex_lock(&call->lock);
    call->in_handler = false;
    pthread_mutex_unlock(&call->lock);
    call_process_cancel(call);
}

void rpc__call_on_request(rpc_call_t *call, bool ok)
{
    if (!ok) {
        /* The server is shutting down; this armed call was never used. */
        rpc_call_unref(call);
        return;
    }
    call_accept(call);
    /* Dispatch's own reference, taken before the close is armed: a client
     * that is already gone makes the close complete on another server
     * thread, which ends the call, and once its status is sent the layer
     * lets go, all while the request is still being decoded here. */
    rpc_call_ref(call);
    call_start_close(call);
    call_dispatch(call);
    rpc_call_unref(call);
}

/* --- sending -------------------------------------------------------------- */

static void call_sent_locked(rpc_call_t *call, bool ok);

/* Starts the next send batch if none is in flight. Caller holds the lock
 * and a reference (the layer's, while the call is not DONE). */
static void call_pump(rpc_call_t *call)
{
    grpc_op ops[3];
    grpc_metadata trailing;
    grpc_slice details;
    grpc_call_error rc;
    bool has_msg, has_status;
    size_t n = 0;

    if (call->send_in_flight || call->status_started || call->gcall == NULL) {
        return;
    }
    has_msg = call->queue_head != NULL;
    has_status = call->state == RPC_CALL_ENDING &&
                 (call->queue_head == NULL || call->queue_head->next == NULL);
    if (!has_msg && !has_status) {
        return;
    }
    memset(ops, 0, sizeof(ops));
    if (!call->md_sent) {
        ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
        call->md_sent = true;
    }
    if (has_msg) {
        rpc_outmsg_t *m = call->queue_head;
        call_unqueue_head(call, m);
        call->inflight = m;
        call->inflight_since_ms = ferry__clock_ns(CLOCK_MONOTONIC) / 1000000;
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n++].data.send_message.send_message = m->buf;
    }
    details = grpc_slice_from_copied_string(call->final_msg);
    if (has_status) {
        ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
        ops[n].data.send_status_from_server.status = call->final_code;
        ops[n].data.send_status_from_server.status_details = &details;
        if (call->final_ferry[0] != '\0') {
            /* The code behind the gRPC one (see rpc.h): the call holds both
             * strings until the batch is done. */
            memset(&trailing, 0, sizeof(trailing));
            trailing.key = grpc_slice_from_static_string(RPC_STATUS_MD);
            trailing.value = grpc_slice_from_static_string(call->final_ferry);
            ops[n].data.send_status_from_server.trailing_metadata_count = 1;
            ops[n].data.send_status_from_server.trailing_metadata = &trailing;
        }
        n++;
        call->status_started = true;
    }
    call->send_in_flight = true;
    rpc_call_ref(call);
    rc = rpc__server_start_batch(call->server, call->gcall, ops, n, &call->tag_send);
    grpc_slice_unref(details);
    if (rc != GRPC_CALL_OK) {
        ferry_error("call %" PRIu64 " %s: cannot send: grpc_call_error %d", call->id, call->path,
                    (int)rc);
        atomic_fetch_sub(&call->refs, 1);
        call_sent_locked(call, false);
    }
}

/* Bookkeeping for a finished (or failed to start) send batch. */
static void call_sent_locked(rpc_call_t *call, bool ok)
{
    call->send_in_flight = false;
    if (call->inflight != NULL) {
        call_queued_sub(call, call->inflight);
        call->inflight = NULL;
    }
    if (call->status_started) {
        call->status_done = true;
    }
    if (!ok) {
        /* The client is gone: nothing queued can reach it. */
        call_drop_queue(call);
        if (call->state == RPC_CALL_ACTIVE) {
            call->cancelled = true;
        }
    }
    call_pump(call);
}

static bool call_is_streaming(const rpc_call_t *call)
{
    return call->method != NULL && call->method->kind == RPC_SERVER_STREAMING;
}

/* The status the call ends with, and the ferry_status_t behind it (one
 * that gRPC's code agrees with). Caller holds the lock. */
static void call_set_final_locked(rpc_call_t *call, grpc_status_code code, ferry_status_t status,
                                  const char *msg)
{
    call->final_code = code;
    snprintf(call->final_msg, sizeof(call->final_msg), "%s", msg);
    call->final_ferry[0] = '\0';
    if (code != GRPC_STATUS_OK) {
        if (status == FERRY_OK || rpc_status_to_grpc(status) != (int)code) {
            status = rpc_status_from_grpc((int)code);
        }
        snprintf(call->final_ferry, sizeof(call->final_ferry), "%d", (int)status);
    }
}

/* ACTIVE -> ENDING with `buf` (may be NULL) as the last message. Caller
 * holds the lock; the call is ACTIVE. */
static void call_end_locked(rpc_call_t *call, grpc_byte_buffer *buf, grpc_status_code code,
                            ferry_status_t status, const char *msg)
{
    if (buf != NULL) {
        rpc_outmsg_t *m =
            calloc(1, sizeof(*m)); /* not counted: the last word is outside any limit */
        if (m == NULL) {
            grpc_byte_buffer_destroy(buf);
            code = GRPC_STATUS_RESOURCE_EXHAUSTED;
            msg = "out of memory";
        } else {
            m->buf = buf;
            m->len = grpc_byte_buffer_length(buf);
            if (call->queue_tail != NULL) {
                call->queue_tail->next = m;
            } else {
                call->queue_head = m;
            }
            call->queue_tail = m;
        }
    }
    call_set_final_locked(call, code, status, msg);
    ferry_debug("call %" PRIu64 " %s: ends with %s%s%s", call->id, call->path,
                rpc_grpc_code_name((int)code), msg[0] != '\0' ? ": " : "", msg);
    call_set_state(call, RPC_CALL_ENDING);
    call_pump(call);
    if (!call->status_done) {
        /* Its client must take what is queued (a unary call's reply, a
         * stream's messages) before the status goes out: not for ever
         * (RPC_DRAIN_MS). A unary call is no exception: a client with a
         * window of 0 and no deadline would keep it, and its request's
         * bytes, for as long as its connection lives. */
        rpc__drain_add(&call->server->drain, call);
    }
}

static void call_end(rpc_call_t *call, grpc_byte_buffer *buf, grpc_status_code code,
                     ferry_status_t status, const char *msg)
{
    pthread_mutex_lock(&call->lock);
    if (call->state != RPC_CALL_ACTIVE) {
        pthread_mutex_unlock(&call->lock);
        ferry_debug("call %" PRIu64 " %s: already ended; %s dropped", call->id, call->path,
                    rpc_grpc_code_name((int)code));
        if (buf != NULL) {
            grpc_byte_buffer_destroy(buf);
        }
        return;
    }
    call_end_locked(call, buf, code, status, msg);
    pthread_mutex_unlock(&call->lock);
}

/* --- completions ---------------------------------------------------------- */

/* ENDING -> DONE once both the status and the close are in. Caller holds
 * the lock and a reference besides the layer's. */
static void call_maybe_done_locked(rpc_call_t *call)
{
    if (call->state != RPC_CALL_ENDING || !call->status_done || !call->close_done) {
        return;
    }
    call_set_state(call, RPC_CALL_DONE);
    if (call->server->observer.call_ended != NULL) {
        call->server->observer.call_ended(call->server->observer.arg,
                                          call->method ? call->path : NULL, (int)call->final_code,
                                          ferry__clock_ns(CLOCK_MONOTONIC) - call->accepted_ns);
    }
    grpc_call_unref(call->gcall);
    call->gcall = NULL;
    if (rpc__drain_remove(&call->server->drain, call)) {
        atomic_fetch_sub(&call->refs, 1); /* the list's: the caller holds one */
    }
    if (call->held_bytes > 0) {
        atomic_fetch_sub(&call->server->held_request_bytes, call->held_bytes);
        call->held_bytes = 0;
    }
    if (call->held_reply_bytes > 0) {
        atomic_fetch_sub(&call->server->held_reply_bytes, call->held_reply_bytes);
        call->held_reply_bytes = 0;
    }
    atomic_fetch_sub(&call->server->live_calls, 1);
    atomic_fetch_sub(&call->refs, 1); /* the layer's */
}

/* Runs the cancel callback once, then ends the call if nobody did. */
static void call_process_cancel(rpc_call_t *call)
{
    void (*cb)(rpc_call_t *, void *) = NULL;
    void *arg = NULL;

    pthread_mutex_lock(&call->lock);
    if (call->cancelled && call->state == RPC_CALL_ACTIVE && call->cancel_cb != NULL &&
        !call->cancel_cb_ran) {
        cb = call->cancel_cb;
        arg = call->cancel_arg;
        call->cancel_cb_ran = true;
        rpc_call_ref(call);
    }
    pthread_mutex_unlock(&call->lock);
    if (cb != NULL) {
        ferry_debug("call %" PRIu64 " %s: cancelled; running its cancel callback", call->id,
                    call->path);
        cb(call, arg);
    }
    pthread_mutex_lock(&call->lock);
    if (call->cancelled && call->state == RPC_CALL_ACTIVE && !call->in_handler) {
        bool stopping = atomic_load(&call->server->stopping);
        call_end_locked(call, NULL, stopping ? GRPC_STATUS_UNAVAILABLE : GRPC_STATUS_CANCELLED,
                        FERRY_OK, stopping ? "server shutting down" : "call cancelled");
    }
    pthread_mutex_unlock(&call->lock);
    if (cb != NULL) {
        rpc_call_unref(call);
    }
}

void rpc__call_on_close(rpc_call_t *call, bool ok)
{
    pthread_mutex_lock(&call->lock);
    call->close_done = true;
    if (!ok || call->close_cancelled || call->state == RPC_CALL_ACTIVE) {
        if (call->state == RPC_CALL_ACTIVE) {
            ferry_debug("call %" PRIu64 " %s: cancelled (client gone, deadline or shutdown)",
                        call->id, call->path);
        }
        call->cancelled = true;
    }
    pthread_mutex_unlock(&call->lock);
    call_process_cancel(call);
    pthread_mutex_lock(&call->lock);
    call_maybe_done_locked(call);
    pthread_mutex_unlock(&call->lock);
    rpc_call_unref(call); /* the close batch's */
}

void rpc__call_drain_expired(rpc_call_t *call)
{
    pthread_mutex_lock(&call->lock);
    if (call->state == RPC_CALL_ENDING && !call->status_done && call->gcall != NULL) {
        ferry_info("call %" PRIu64 " %s: %s did not take its last messages (%zu bytes counted) "
                   "within %d ms of the end (%s); cancelled",
                   call->id, call->path, call->peer, call->queued_bytes, RPC_DRAIN_MS,
                   rpc_grpc_code_name((int)call->final_code));
        char msg[128];
        /* What the client sees now, for the observer too. */
        snprintf(msg, sizeof(msg),
                 "the client did not read this call's last messages within %d ms of its end",
                 RPC_DRAIN_MS);
        call_set_final_locked(call, GRPC_STATUS_CANCELLED, FERRY_OK, msg);
        grpc_call_cancel_with_status(call->gcall, GRPC_STATUS_CANCELLED, call->final_msg, NULL);
    }
    pthread_mutex_unlock(&call->lock);
}

void rpc__call_on_send(rpc_call_t *call, bool ok)
{
    pthread_mutex_lock(&call->lock);
    call_sent_locked(call, ok);
    pthread_mutex_unlock(&call->lock);
    if (!ok) {
        call_process_cancel(call);
    }
    pthread_mutex_lock(&call->lock);
    call_maybe_done_locked(call);
    pthread_mutex_unlock(&call->lock);
    rpc_call_unref(call); /* the send batch's */
}

/* --- the handler's API ------------------------------------------------------ */

/* Counts a read's reply (reply_refusable) of len bytes until its call is
 * done, in a bound of its own as large as max_held_request_bytes, or
 * refuses it: false, with the answer in msg. A reply waits for its
 * client's flow-control window, up to RPC_DRAIN_MS, and a Lookup's carries
 * up to a MiB of metadata, so clients that never read held 2 GiB of
 * Lookup replies from two connections, counted nowhere (review-s33b H1).
 * Apart from the requests' count: counted there, a client pinning it with
 * replies it never read refused every other call, KeepAlives and health
 * checks included (review-s33c H1); here it can refuse only reads, which
 * change nothing and are asked again. A write's reply is sent all the
 * same, uncounted: what it did is done. */
static bool call_hold_reply(rpc_call_t *call, size_t len, char *msg, size_t cap)
{
    rpc_server_t *server = call->server;
    size_t max = server->max_held_request_bytes, held;
    static ferry_log_limit_t limit;
    unsigned quiet;

    if (max == 0 || call->method == NULL || !call->method->reply_refusable) {
        return true;
    }
    pthread_mutex_lock(&call->lock);
    if (call->state != RPC_CALL_ACTIVE) {
        pthread_mutex_unlock(&call->lock);
        return true; /* ended already: call_end sends nothing */
    }
    held = atomic_fetch_add(&server->held_reply_bytes, len);
    if (held + len <= max) {
        call->held_reply_bytes += len;
        pthread_mutex_unlock(&call->lock);
        return true;
    }
    atomic_fetch_sub(&server->held_reply_bytes, len);
    pthread_mutex_unlock(&call->lock);
    atomic_fetch_add(&server->refused_over_budget, 1); /* for metrics */
    if (ferry_log_due(&limit, &quiet)) {
        ferry_info("call %" PRIu64 " %s: reply of %zu bytes to %s refused: the replies of reads "
                   "in progress hold %zu bytes (at most %zu; raise %s); %u more refused since "
                   "the last line",
                   call->id, call->path, len, call->peer, held, max, server->max_held_request_name,
                   quiet);
    }
    snprintf(msg, cap,
             "the server holds %zu bytes of replies its clients have not taken, and this "
             "reply's %zu would pass its bound of %zu (%s); nothing was done; retry later",
             held, len, max, server->max_held_request_name);
    return false;
}

void rpc_call_reply(rpc_call_t *call, const ProtobufCMessage *response)
{
    grpc_byte_buffer *buf = rpc__pack(response);
    char msg[320];

    if (buf == NULL) {
        call_end(call, NULL, GRPC_STATUS_RESOURCE_EXHAUSTED, FERRY_ERR_NO_MEMORY, "out of memory");
        return;
    }
    if (!call_hold_reply(call, grpc_byte_buffer_length(buf), msg, sizeof(msg))) {
        grpc_byte_buffer_destroy(buf);
        call_end(call, NULL, GRPC_STATUS_RESOURCE_EXHAUSTED, FERRY_ERR_RESOURCE_EXHAUSTED, msg);
        return;
    }
    call_end(call, buf, GRPC_STATUS_OK, FERRY_OK, "");
}

void rpc_call_reply_packed(rpc_call_t *call, const void *response, size_t len)
{
    grpc_byte_buffer *buf;
    char msg[320];

    if (!call_hold_reply(call, len, msg, sizeof(msg))) {
        call_end(call, NULL, GRPC_STATUS_RESOURCE_EXHAUSTED, FERRY_ERR_RESOURCE_EXHAUSTED, msg);
        return;
    }
    buf = rpc__pack_raw(response, len);
    if (buf == NULL) {
        call_end(call, NULL, GRPC_STATUS_RESOURCE_EXHAUSTED, FERRY_ERR_NO_MEMORY, "out of memory");
        return;
    }
    call_end(call, buf, GRPC_STATUS_OK, FERRY_OK, "");
}

void rpc_call_fail(rpc_call_t *call, ferry_status_t status, const char *fmt, ...)
{
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (status == FERRY_OK) {
        ferry_error("call %" PRIu64 " %s: rpc_call_fail with FERRY_OK", call->id, call->path);
        status = FERRY_ERR_INTERNAL;
    }
    call_end(call, NULL, (grpc_status_code)rpc_status_to_grpc(status), status, msg);
}

void rpc_call_fail_now(rpc_call_t *call, ferry_status_t status, const char *fmt, ...)
{
    grpc_status_code code = (grpc_status_code)rpc_status_to_grpc(status);
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&call->lock);
    if ((call->state == RPC_CALL_ACTIVE || call->state == RPC_CALL_ENDING) && !call->status_done) {
        ferry_debug("call %" PRIu64 " %s: %zu bytes not taken by %s dropped", call->id, call->path,
                    call->queued_bytes, call->peer);
        call_drop_queue(call); /* an ending call's last message too: this status replaces it */
        if (call->state == RPC_CALL_ACTIVE) {
            call_end_locked(call, NULL, code, status, msg);
        } else {
            call_set_final_locked(call, code, status, msg); /* for the observer, if started */
            call_pump(call);
        }
        if (call->send_in_flight && call->gcall != NULL) {
            /* The message in flight (and a status started with it: chttp2
             * has not written trailers it could not send) leaves when the
             * client reads it, or now. The client sees this status, without
             * RPC_STATUS_MD: it reads the ferry_status_t from the code. */
            grpc_call_cancel_with_status(call->gcall, code, call->final_msg, NULL);
        }
    }
    pthread_mutex_unlock(&call->lock);
}

size_t rpc_call_behind_bytes(rpc_call_t *call)
{
    int64_t now_ms = ferry__clock_ns(CLOCK_MONOTONIC) / 1000000;
    size_t n = 0;

    pthread_mutex_lock(&call->lock);
    if ((call->state == RPC_CALL_ACTIVE || call->state == RPC_CALL_ENDING) && !call->cancelled &&
        !call->status_done) {
        n = call->waiting_own - call->newest_own;
        if (call->inflight != NULL && now_ms - call->inflight_since_ms >= RPC_STUCK_MS) {
            /* Not keeping up: all of it counts (review-s31c L1). */
            n += outmsg_own(call->inflight) + call->newest_own;
        }
    }
    pthread_mutex_unlock(&call->lock);
    return n;
}

/* One step of rpc_call_sole_bytes over the entry m: 0, counts the call's
 * holders of m's shared message (rpc_msg_t.mine); 1, m's bytes if its end
 * with the call's other entries gives them back: its own, or a shared
 * message's that no other call holds (counted once, on the first of the
 * call's entries that hold it: mine goes to 0 as it is); 2, clears mine.
 * Caller holds the budget's lock. */
static size_t outmsg_sole_step_locked(const rpc_outmsg_t *m, int pass)
{
    rpc_msg_t *shared = m->counted && m->holds ? m->shared : NULL;

    if (pass == 0 || pass == 2) {
        if (shared != NULL) {
            shared->mine = pass == 0 ? shared->mine + 1 : 0;
        }
        return 0;
    }
    if (!m->counted || (shared != NULL && (shared->mine == 0 || shared->mine < shared->holders))) {
        return 0;
    }
    if (shared != NULL) {
        shared->mine = 0; /* its bytes, once */
    }
    return m->len;
}

size_t rpc_call_sole_bytes(rpc_call_t *call)
{
    size_t n = 0;

    pthread_mutex_lock(&call->lock);
    if ((call->state == RPC_CALL_ACTIVE || call->state == RPC_CALL_ENDING) && !call->cancelled &&
        !call->status_done && call->budget != NULL) {
        pthread_mutex_lock(&call->budget->lock); /* a leaf, under the call's */
        /* Three walks of the messages: count the call's holders of each
         * shared one, count what goes, and clear the counts. */
        for (int pass = 0; pass < 3; pass++) {
            if (call->inflight != NULL) {
                n += outmsg_sole_step_locked(call->inflight, pass);
            }
            for (const rpc_outmsg_t *m = call->queue_head; m != NULL; m = m->next) {
                n += outmsg_sole_step_locked(m, pass);
            }
        }
        pthread_mutex_unlock(&call->budget->lock);
    }
    pthread_mutex_unlock(&call->lock);
    return n;
}

int64_t rpc_call_lag_ms(rpc_call_t *call)
{
    int64_t now_ms = ferry__clock_ns(CLOCK_MONOTONIC) / 1000000, lag = 0;
    const rpc_outmsg_t *oldest;

    pthread_mutex_lock(&call->lock);
    oldest = call->inflight != NULL ? call->inflight : call->queue_head;
    if (oldest != NULL && oldest->counted) {
        lag = now_ms - oldest->queued_ms;
    }
    pthread_mutex_unlock(&call->lock);
    return lag > 0 ? lag : 0;
}

/* A counted queue entry for `buf` (taken over: destroyed when no entry
 * can be made), made from `shared` (NULL: its own bytes; else the entry
 * takes a reference); NULL when buf is NULL or out of memory. */
static rpc_outmsg_t *outmsg_new(grpc_byte_buffer *buf, rpc_msg_t *shared)
{
    rpc_outmsg_t *m = buf != NULL ? calloc(1, sizeof(*m)) : NULL;

    if (m == NULL) {
        if (buf != NULL) {
            grpc_byte_buffer_destroy(buf);
        }
        return NULL;
    }
    m->buf = buf;
    m->len = grpc_byte_buffer_length(buf);
    m->shared = shared != NULL ? rpc_msg_ref(shared) : NULL;
    m->counted = true;
    m->queued_ms = ferry__clock_ns(CLOCK_MONOTONIC) / 1000000;
    return m;
}

static void outmsg_free_list(rpc_outmsg_t *m)
{
    while (m != NULL) {
        rpc_outmsg_t *next = m->next;
        outmsg_free(m);
        m = next;
    }
}

/* call_enqueue's flag beside RPC_SEND_*: the list is one unit. */
#define SEND_UNIT (1u << 8)

/* Queues the list `head` (taken over, freed when refused) on a streaming
 * call, all of it or none, and starts sending. SEND_UNIT: the send limit
 * is checked once, before the first (all go in while the queue is under
 * the limit); else the list must fit in it whole. The budget, if any, must
 * hold the whole list (RPC_SEND_PAST_BUDGET: within twice its bound;
 * *over_budget_p, unless NULL, says it did not). */
static ferry_status_t call_enqueue(rpc_call_t *call, rpc_outmsg_t *head, unsigned flags,
                                   bool *over_budget_p)
{
    bool unit = (flags & SEND_UNIT) != 0;
    rpc_outmsg_t *tail = head;
    size_t bytes = 0;
    ferry_status_t status = FERRY_OK;

    if (over_budget_p != NULL) {
        *over_budget_p = false;
    }
    if (!call_is_streaming(call)) {
        ferry_error("call %" PRIu64 " %s: rpc_call_send on a unary method", call->id, call->path);
        outmsg_free_list(head);
        return FERRY_ERR_MISUSE;
    }
    for (rpc_outmsg_t *m = head; m != NULL; m = m->next) {
        bytes += outmsg_cost(m);
        tail = m;
    }
    pthread_mutex_lock(&call->lock);
    if (call->state != RPC_CALL_ACTIVE || call->cancelled) {
        status = FERRY_ERR_CANCELLED;
    } else if (call->max_queued != 0 && (unit ? call->queued_bytes >= call->max_queued
                                              : call->queued_bytes + bytes > call->max_queued)) {
        status = FERRY_ERR_RESOURCE_EXHAUSTED;
    } else if (call->budget != NULL && head != NULL &&
               !rpc__budget_take(call->budget, head, (flags & RPC_SEND_PAST_BUDGET) != 0)) {
        status = FERRY_ERR_RESOURCE_EXHAUSTED;
        if (over_budget_p != NULL) {
            *over_budget_p = true;
        }
    }
    if (status != FERRY_OK || head == NULL) {
        pthread_mutex_unlock(&call->lock);
        outmsg_free_list(head);
        return status;
    }
    call->queued_bytes += bytes; /* and in the budget, taken above */
    call->newest = head;
    call->newest_own = 0;
    for (rpc_outmsg_t *m = head; m != NULL; m = m->next) {
        call->newest_own += outmsg_own(m); /* after the take: it says which are shared */
    }
    call->waiting_own += call->newest_own;
    if (call->queue_tail != NULL) {
        call->queue_tail->next = head;
    } else {
        call->queue_head = head;
    }
    call->queue_tail = tail;
    call_pump(call);
    pthread_mutex_unlock(&call->lock);
    return FERRY_OK;
}

/* Queues one message (NULL: it could not be packed). */
static ferry_status_t call_enqueue_one(rpc_call_t *call, grpc_byte_buffer *buf, rpc_msg_t *shared)
{
    rpc_outmsg_t *m = outmsg_new(buf, shared);

    return m != NULL ? call_enqueue(call, m, 0, NULL) : FERRY_ERR_NO_MEMORY;
}

void rpc_call_set_send_limit(rpc_call_t *call, size_t max_queued_bytes)
{
    pthread_mutex_lock(&call->lock);
    call->max_queued = max_queued_bytes;
    pthread_mutex_unlock(&call->lock);
}

void rpc_call_set_send_budget(rpc_call_t *call, rpc_send_budget_t *budget)
{
    rpc_send_budget_t *old = NULL;
    bool busy;

    pthread_mutex_lock(&call->lock);
    busy = call->queued_bytes != 0; /* counted elsewhere: they would be given back here */
    if (!busy) {
        old = call->budget;
        call->budget = budget != NULL ? rpc__budget_ref(budget) : NULL;
    }
    pthread_mutex_unlock(&call->lock);
    if (busy) {
        ferry_error("call %" PRIu64 " %s: rpc_call_set_send_budget with messages queued; ignored",
                    call->id, call->path);
    }
    rpc_send_budget_release(old);
}

ferry_status_t rpc_call_send(rpc_call_t *call, const ProtobufCMessage *msg)
{
    return call_enqueue_one(call, rpc__pack(msg), NULL);
}

rpc_msg_t *rpc_msg_pack(const ProtobufCMessage *msg)
{
    rpc_msg_t *m = malloc(sizeof(*m));

    if (m == NULL) {
        return NULL;
    }
    atomic_init(&m->refs, 1);
    atomic_init(&m->counted_in, NULL);
    m->holders = 0;
    m->mine = 0;
    m->born_ms = 0;
    m->slice = grpc_slice_malloc(protobuf_c_message_get_packed_size(msg));
    protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(m->slice));
    return m;
}

rpc_msg_t *rpc_msg_pack_repeated(const ProtobufCMessage *msg, uint32_t number,
                                 const ProtobufCBinaryData *values, size_t n_values)
{
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field(msg->descriptor, number);
    uint8_t head[20];
    size_t total;
    uint8_t *p;
    rpc_msg_t *m;

    if (f == NULL || f->label != PROTOBUF_C_LABEL_REPEATED ||
        (f->type != PROTOBUF_C_TYPE_MESSAGE && f->type != PROTOBUF_C_TYPE_BYTES &&
         f->type != PROTOBUF_C_TYPE_STRING) ||
        *(const size_t *)((const char *)msg + f->quantifier_offset) != 0) {
        return NULL;
    }
    total = protobuf_c_message_get_packed_size(msg);
    for (size_t i = 0; i < n_values; i++) {
        total += ferry_pb_put_varint(head, (uint64_t)number << 3 | FERRY_PB_LEN) +
                 ferry_pb_put_varint(head, values[i].len) + values[i].len;
    }
    m = malloc(sizeof(*m));
    if (m == NULL) {
        return NULL;
    }
    atomic_init(&m->refs, 1);
    atomic_init(&m->counted_in, NULL);
    m->holders = 0;
    m->mine = 0;
    m->born_ms = 0;
    m->slice = grpc_slice_malloc(total);
    p = GRPC_SLICE_START_PTR(m->slice);
    p += protobuf_c_message_pack(msg, p);
    for (size_t i = 0; i < n_values; i++) {
        p += ferry_pb_put_varint(p, (uint64_t)number << 3 | FERRY_PB_LEN);
        p += ferry_pb_put_varint(p, values[i].len);
        if (values[i].len > 0) {
            memcpy(p, values[i].data, values[i].len);
            p += values[i].len;
        }
    }
    return m;
}

rpc_msg_t *rpc_msg_ref(rpc_msg_t *m)
{
    atomic_fetch_add(&m->refs, 1);
    return m;
}

void rpc_msg_unref(rpc_msg_t *m)
{
    if (m != NULL && atomic_fetch_sub(&m->refs, 1) == 1) {
        grpc_slice_unref(m->slice);
        free(m);
    }
}

const uint8_t *rpc__msg_bytes(const rpc_msg_t *m)
{
    return GRPC_SLICE_START_PTR(m->slice);
}

void rpc_msg_set_born(rpc_msg_t *m, int64_t born_ms)
{
    m->born_ms = born_ms;
}

size_t rpc_msg_size(const rpc_msg_t *m)
{
    return GRPC_SLICE_LENGTH(m->slice);
}

ferry_status_t rpc_call_send_msg(rpc_call_t *call, rpc_msg_t *m)
{
    /* The byte buffer takes its own reference to the slice: no copy. */
    return call_enqueue_one(call, grpc_raw_byte_buffer_create(&m->slice, 1), m);
}

ferry_status_t rpc_call_send_msgs(rpc_call_t *call, rpc_msg_t *const *msgs, size_t n,
                                  unsigned flags, bool *over_budget_p)
{
    rpc_outmsg_t *head = NULL, **tail = &head;

    if (over_budget_p != NULL) {
        *over_budget_p = false;
    }
    for (size_t i = 0; i < n; i++) {
        *tail = outmsg_new(grpc_raw_byte_buffer_create(&msgs[i]->slice, 1),
                           (flags & RPC_SEND_SHARED) != 0 ? msgs[i] : NULL);
        if (*tail == NULL) {
            outmsg_free_list(head);
            return FERRY_ERR_NO_MEMORY;
        }
        if (msgs[i]->born_ms != 0 && msgs[i]->born_ms < (*tail)->queued_ms) {
            (*tail)->queued_ms = msgs[i]->born_ms; /* a replay: how far behind live it is */
        }
        tail = &(*tail)->next;
    }
    return call_enqueue(call, head, flags | SEND_UNIT, over_budget_p);
}

void rpc_call_finish(rpc_call_t *call)
{
    if (!call_is_streaming(call)) {
        ferry_error("call %" PRIu64 " %s: rpc_call_finish on a unary method", call->id, call->path);
        call_end(call, NULL, GRPC_STATUS_INTERNAL, FERRY_ERR_INTERNAL,
                 "the server sent no response");
        return;
    }
    call_end(call, NULL, GRPC_STATUS_OK, FERRY_OK, "");
}

int64_t rpc_call_deadline_left_ms(const rpc_call_t *call)
{
    return rpc__ms_until(call->deadline);
}

bool rpc_call_is_cancelled(const rpc_call_t *call)
{
    rpc_call_t *c = (rpc_call_t *)call;
    bool cancelled;

    pthread_mutex_lock(&c->lock);
    cancelled = c->cancelled || c->state == RPC_CALL_DONE ||
                (c->state != RPC_CALL_REQUESTED && atomic_load(&c->server->stopping));
    pthread_mutex_unlock(&c->lock);
    return cancelled || rpc__ms_until(call->deadline) == 0;
}

bool rpc_call_is_done(const rpc_call_t *call)
{
    rpc_call_t *c = (rpc_call_t *)call;
    bool done;

    pthread_mutex_lock(&c->lock);
    done = c->state == RPC_CALL_DONE;
    pthread_mutex_unlock(&c->lock);
    return done;
}

bool rpc_call_is_stopping(const rpc_call_t *call)
{
    return atomic_load(&call->server->stopping);
}

void rpc_call_on_cancel(rpc_call_t *call, void (*cb)(rpc_call_t *call, void *arg), void *arg)
{
    bool now;

    /* A call cancelled (or ended) before this registration is never
     * cancelled again: its cancellation may have been processed with no
     * callback, or with an earlier one that found nothing to undo. Run this
     * one at once, or whatever it was to undo stays for ever. */
    pthread_mutex_lock(&call->lock);
    now = call->cancelled || call->state != RPC_CALL_ACTIVE;
    call->cancel_cb = cb;
    call->cancel_arg = arg;
    call->cancel_cb_ran = now;
    if (now) {
        rpc_call_ref(call);
    }
    pthread_mutex_unlock(&call->lock);
    if (now) {
        ferry_debug("call %" PRIu64 " %s: already cancelled or ended; running its cancel callback",
                    call->id, call->path);
        cb(call, arg);
    }
    call_process_cancel(call);
    if (now) {
        rpc_call_unref(call);
    }
}

void rpc_call_request_bytes(const rpc_call_t *call, const uint8_t **data_p, size_t *len_p)
{
    *data_p = GRPC_SLICE_START_PTR(call->request_bytes);
    *len_p = GRPC_SLICE_LENGTH(call->request_bytes);
}

const char *rpc_call_peer(const rpc_call_t *call)
{
    return call->peer;
}

const char *rpc_call_peer_host(const rpc_call_t *call)
{
    return call->peer_host;
}

void rpc_call_set_parked(rpc_call_t *call, void *entry)
{
    call->parked = entry;
}

void *rpc_call_parked(const rpc_call_t *call)
{
    return call->parked;
}

const char *rpc_call_path(const rpc_call_t *call)
{
    return call->path;
}
