/*
 * rpc_client.c: channels and unary calls.
 *
 * A channel wraps one grpc_channel, created once and shared by every call
 * (gRPC reconnects it as needed). A unary call is one batch of six
 * operations on a call bound to its own pluck completion queue, waited for
 * with no timeout of ours: the call's deadline bounds it (and the calling
 * thread's interrupt check, when it has one: rpc_interrupt_set).
 *
 * Keepalive: while a call is open the channel pings every keepalive_ms of
 * its params (RPC_KEEPALIVE_DEFAULT_MS, 20 s, by default) and
 * drops a connection whose pings go unanswered for as long again, at most
 * RPC_KEEPALIVE_TIMEOUT_MS: a peer that vanished without a reset (a host
 * gone, a partition, a frozen process) otherwise holds a long stream, such
 * as a Watch, open in silence until TCP gives up, some 15 minutes. No
 * pings without a call: etcd, whose channels these are too, refuses those
 * by default. rpc_server.c permits the rate.
 *
 * Threads: any number of threads may call through one channel at once;
 * rpc_channel_destroy only once none does.
 */
#include "rpc/rpc_int.h"

#include <grpc/compression.h>

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/log.h"

#define RPC_KEEPALIVE_TIMEOUT_MS 10000

/* rpc_channel_connect on a channel whose last attempt failed: how long the
 * fresh attempt may take (a refused loopback connect fails in
 * microseconds, one across a LAN in a round trip or two). */
#define RPC_RECONNECT_MS 250

struct rpc_channel {
    grpc_channel *channel;
    char *target;
};

ferry_status_t rpc_channel_create(const rpc_channel_params_t *params, rpc_channel_t **channel_p)
{
    grpc_channel_credentials *creds;
    grpc_arg args[6];
    grpc_channel_args channel_args = {5, args};
    rpc_channel_t *channel;
    int ping_ms;
    ferry_status_t status;

    if (params == NULL || params->target == NULL || params->max_message_bytes < 0) {
        ferry_error("rpc: channel params need a target");
        return FERRY_ERR_INVALID_ARGUMENT;
    }
    if (params->keepalive_ms != 0 && (params->keepalive_ms < RPC_KEEPALIVE_MIN_MS ||
                                      params->keepalive_ms > RPC_KEEPALIVE_MAX_MS)) {
        ferry_error("rpc: keepalive_ms %d is not from %d to %d", params->keepalive_ms,
                    RPC_KEEPALIVE_MIN_MS, RPC_KEEPALIVE_MAX_MS);
        return FERRY_ERR_INVALID_ARGUMENT;
    }
    if (params->tls_refresh_s < 0 || params->tls_refresh_s > RPC_TLS_REFRESH_MAX_S) {
        ferry_error("rpc: tls_refresh_s %d is not from 1 to %d", params->tls_refresh_s,
                    RPC_TLS_REFRESH_MAX_S);
        return FERRY_ERR_INVALID_ARGUMENT;
    }
    ping_ms = params->keepalive_ms != 0 ? params->keepalive_ms : RPC_KEEPALIVE_DEFAULT_MS;
    channel = calloc(1, sizeof(*channel));
    if (channel == NULL || (channel->target = strdup(params->target)) == NULL) {
        free(channel);
        return FERRY_ERR_NO_MEMORY;
    }
    grpc_init(); /* before the credentials: a TLS one starts gRPC's file watcher */
    status = rpc__channel_credentials(params->tls,
                                      params->tls_refresh_s != 0 ? (unsigned)params->tls_refresh_s
                                                                 : RPC_TLS_REFRESH_DEFAULT_S,
                                      &creds);
    if (status != FERRY_OK) {
        grpc_shutdown();
        goto err_free;
    }
    args[0].type = GRPC_ARG_INTEGER;
    args[0].key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[0].value.integer =
        params->max_message_bytes > 0 ? params->max_message_bytes : RPC_DEFAULT_MAX_MESSAGE;
    args[1].type = GRPC_ARG_INTEGER;
    args[1].key = GRPC_ARG_KEEPALIVE_TIME_MS;
    args[1].value.integer = ping_ms;
    args[2].type = GRPC_ARG_INTEGER;
    args[2].key = GRPC_ARG_KEEPALIVE_TIMEOUT_MS;
    args[2].value.integer = ping_ms < RPC_KEEPALIVE_TIMEOUT_MS ? ping_ms : RPC_KEEPALIVE_TIMEOUT_MS;
    args[3].type = GRPC_ARG_INTEGER;
    args[3].key = GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA; /* an idle Watch sends none */
    args[3].value.integer = 0;
    /* Uncompressed answers only, as the server takes (rpc_server.c): gRPC
     * core inflates a compressed message whole before it checks its size. */
    args[4].type = GRPC_ARG_INTEGER;
    args[4].key = GRPC_COMPRESSION_CHANNEL_ENABLED_ALGORITHMS_BITSET;
    args[4].value.integer = 1 << GRPC_COMPRESS_NONE;
    if (params->tls != NULL && params->tls->server_name != NULL) {
        args[5].type = GRPC_ARG_STRING;
        args[5].key = GRPC_SSL_TARGET_NAME_OVERRIDE_ARG;
        args[5].value.string = (char *)params->tls->server_name;
        channel_args.num_args = 6;
    }
    channel->channel = grpc_channel_create(params->target, creds, &channel_args);
    grpc_channel_credentials_release(creds);
    *channel_p = channel;
    return FERRY_OK;

err_free:
    free(channel->target);
    free(channel);
    return status;
}

void rpc_channel_destroy(rpc_channel_t *channel)
{
    if (channel == NULL) {
        return;
    }
    grpc_channel_destroy(channel->channel);
    free(channel->target);
    free(channel);
    grpc_shutdown();
}

/* --- connecting ----------------------------------------------------------------- */

ferry_status_t rpc_channel_connect(rpc_channel_t *channel, int64_t timeout_ms, rpc_error_t *err)
{
    grpc_connectivity_state state = grpc_channel_check_connectivity_state(channel->channel, 1);
    gpr_timespec deadline = rpc__deadline_after_ms(timeout_ms);
    grpc_completion_queue *cq;
    bool retrying = state == GRPC_CHANNEL_TRANSIENT_FAILURE;
    ferry_status_t status = FERRY_OK;
    int tag;

    if (state == GRPC_CHANNEL_READY) {
        return FERRY_OK;
    }
    if (state == GRPC_CHANNEL_TRANSIENT_FAILURE) {
        /* gRPC keeps reporting TRANSIENT_FAILURE while it tries again (the
         * state changes only when a connection is up), so the fresh attempt
         * can only be seen succeed: give it RPC_RECONNECT_MS. */
        grpc_channel_reset_connect_backoff(channel->channel);
        if (timeout_ms <= 0 || timeout_ms > RPC_RECONNECT_MS) {
            deadline = rpc__deadline_after_ms(RPC_RECONNECT_MS);
        }
    }
    cq = grpc_completion_queue_create_for_pluck(NULL);
    for (;;) {
        state = grpc_channel_check_connectivity_state(channel->channel, 1);
        if (state == GRPC_CHANNEL_READY) {
            break;
        }
        if (state == GRPC_CHANNEL_SHUTDOWN ||
            (state == GRPC_CHANNEL_TRANSIENT_FAILURE && !retrying)) {
            rpc__error_set(err, GRPC_STATUS_UNAVAILABLE, "failed to connect");
            status = FERRY_ERR_UNAVAILABLE;
            break;
        }
        grpc_channel_watch_connectivity_state(channel->channel, state, deadline, cq, &tag);
        grpc_event ev =
            grpc_completion_queue_pluck(cq, &tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (!ev.success) {
            rpc__error_set(err, retrying ? GRPC_STATUS_UNAVAILABLE : GRPC_STATUS_DEADLINE_EXCEEDED,
                           retrying ? "failed to connect" : "no connection: timed out");
            status = retrying ? FERRY_ERR_UNAVAILABLE : FERRY_ERR_TIMED_OUT;
            break;
        }
        retrying = false; /* the state moved: watch the attempt through */
    }
    grpc_completion_queue_shutdown(cq);
    grpc_completion_queue_destroy(cq);
    return status;
}

/* --- the idle poller ------------------------------------------------------------- */

struct rpc_poller {
    grpc_completion_queue *cq; /* nothing is ever queued on it: polled for I/O only */
    pthread_t thread;
};

static void *poller_main(void *arg)
{
    rpc_poller_t *poller = arg;

    for (;;) {
        grpc_event ev =
            grpc_completion_queue_next(poller->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN) {
            return NULL;
        }
    }
}

ferry_status_t rpc_poller_start(rpc_poller_t **poller_p)
{
    rpc_poller_t *poller = calloc(1, sizeof(*poller));

    if (poller == NULL) {
        return FERRY_ERR_NO_MEMORY;
    }
    grpc_init();
    poller->cq = grpc_completion_queue_create_for_next(NULL);
    if (pthread_create(&poller->thread, NULL, poller_main, poller) != 0) {
        grpc_completion_queue_shutdown(poller->cq);
        grpc_completion_queue_destroy(poller->cq);
        free(poller);
        grpc_shutdown();
        return FERRY_ERR_NO_MEMORY;
    }
    *poller_p = poller;
    return FERRY_OK;
}

void rpc_poller_stop(rpc_poller_t *poller)
{
    if (poller == NULL) {
        return;
    }
    grpc_completion_queue_shutdown(poller->cq);
    pthread_join(poller->thread, NULL);
    grpc_completion_queue_destroy(poller->cq);
    free(poller);
    grpc_shutdown();
}

/* --- shared with rpc_stream.c -------------------------------------------------- */

grpc_call *rpc__channel_call(rpc_channel_t *channel, const char *path, grpc_completion_queue *cq,
                             int64_t timeout_ms)
{
    gpr_timespec deadline = rpc__deadline_after_ms(timeout_ms);

    /* A channel whose last connection attempt failed fails every call at
     * once until gRPC's reconnect backoff (1 s, growing 1.6x up to 2 min)
     * runs out: after its server was down for a while, calls kept failing
     * for about as long again once it was back (a coordinator restarted in
     * 2 s cost workers their session leases, 10 s of KeepAlives failing
     * here). Such a call first makes one fresh attempt, with
     * RPC_RECONNECT_MS of its own time at most (rpc_channel_connect). */
    if (grpc_channel_check_connectivity_state(channel->channel, 0) ==
        GRPC_CHANNEL_TRANSIENT_FAILURE) {
        (void)rpc_channel_connect(channel, timeout_ms, NULL);
    }
    grpc_slice method = grpc_slice_from_copied_string(path);
    grpc_call *call = grpc_channel_create_call(channel->channel, NULL, GRPC_PROPAGATE_DEFAULTS, cq,
                                               method, NULL, deadline, NULL);
    grpc_slice_unref(method);
    return call;
}

void rpc__error_set(rpc_error_t *err, int code, const char *msg)
{
    if (err != NULL) {
        err->grpc_code = code;
        err->status = rpc_status_from_grpc(code);
        snprintf(err->message, sizeof(err->message), "%s", msg);
    }
}

/* Whether v is one of the status table's codes. */
static bool status_known(long v)
{
    switch (v) {
#define RPC_STATUS_CASE(name, value, msg) case value:
        FERRY_FOREACH_STATUS(RPC_STATUS_CASE)
#undef RPC_STATUS_CASE
        return true;
    default:
        return false;
    }
}

/* The ferry_status_t a Ferry server sent beside a failed code (trailing
 * metadata RPC_STATUS_MD), when it is one of the table's codes and agrees
 * with the gRPC code; else the gRPC code's mapping (a server that is not
 * Ferry's, or a status made by gRPC itself: deadline, unreachable). */
static ferry_status_t status_of(grpc_status_code code, const grpc_metadata_array *trailing)
{
    ferry_status_t mapped = rpc_status_from_grpc((int)code);

    for (size_t i = 0; trailing != NULL && code != GRPC_STATUS_OK && i < trailing->count; i++) {
        const grpc_metadata *md = &trailing->metadata[i];
        char text[16];
        char *end;
        long v;

        if (grpc_slice_str_cmp(md->key, RPC_STATUS_MD) != 0) {
            continue;
        }
        rpc__slice_to_str(md->value, text, sizeof(text));
        v = strtol(text, &end, 10);
        if (end == text || *end != '\0' || v > 0 || v < -1000 || !status_known(v) ||
            rpc_status_to_grpc((ferry_status_t)v) != (int)code) {
            ferry_debug("rpc: ignoring %s '%s' beside %s", RPC_STATUS_MD, text,
                        rpc_grpc_code_name((int)code));
            return mapped;
        }
        return (ferry_status_t)v;
    }
    return mapped;
}

/* Fills `err` from a call's final status; returns the status: the server's
 * own code when it sent one (see status_of), else the gRPC code's mapping. */
ferry_status_t rpc__client_status(grpc_status_code code, grpc_slice details,
                                  const grpc_metadata_array *trailing, const char *path,
                                  rpc_error_t *err)
{
    char msg[sizeof(err->message)];
    ferry_status_t status = status_of(code, trailing);

    rpc__slice_to_str(details, msg, sizeof(msg));
    rpc__error_set(err, (int)code, msg);
    if (err != NULL) {
        err->status = status;
    }
    if (code != GRPC_STATUS_OK) {
        ferry_debug("rpc: %s: %s (%s): %s", path, rpc_grpc_code_name((int)code),
                    ferry_status_name(status), msg);
    }
    return status;
}

/* --- interrupting a wait (rpc.h) --------------------------------------------------- */

static _Thread_local struct {
    rpc_interrupt_fn fn;
    void *arg;
    bool tripped; /* the check returned true */
} interrupt;

void rpc_interrupt_set(rpc_interrupt_fn fn, void *arg)
{
    interrupt.fn = fn;
    interrupt.arg = arg;
    interrupt.tripped = false;
}

void rpc_interrupt_rearm(void)
{
    interrupt.tripped = false;
}

bool rpc_interrupted(void)
{
    if (!interrupt.tripped && interrupt.fn != NULL && interrupt.fn(interrupt.arg)) {
        interrupt.tripped = true;
    }
    return interrupt.tripped;
}

bool rpc_interrupt_armed(void)
{
    return interrupt.fn != NULL;
}

bool rpc_interrupt_tripped(void)
{
    return interrupt.tripped;
}

bool rpc_interrupt_sleep(int64_t ms)
{
    int64_t until = ferry__clock_ms(CLOCK_MONOTONIC) + ms;

    for (int64_t left = ms; left > 0; left = until - ferry__clock_ms(CLOCK_MONOTONIC)) {
        if (rpc_interrupted()) {
            return false;
        }
        int64_t slice =
            interrupt.fn != NULL && left > RPC_INTERRUPT_POLL_MS ? RPC_INTERRUPT_POLL_MS : left;
        struct timespec pause = {slice / 1000, (long)(slice % 1000) * 1000000L};
        nanosleep(&pause, NULL);
    }
    return !rpc_interrupted();
}

/* Waits for the call's batch (tag) on cq: with no check, until it ends
 * (its deadline bounds it); with one, in slices, and once the thread is
 * interrupted cancels the call, whose batch then ends at once. */
static void unary_wait(grpc_call *call, grpc_completion_queue *cq, void *tag)
{
    if (interrupt.fn == NULL || interrupt.tripped) {
        grpc_completion_queue_pluck(cq, tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        return;
    }
    for (;;) {
        grpc_event ev = grpc_completion_queue_pluck(
            cq, tag, rpc__deadline_after_ms(RPC_INTERRUPT_POLL_MS), NULL);
        if (ev.type != GRPC_QUEUE_TIMEOUT) {
            return;
        }
        if (rpc_interrupted()) {
            grpc_call_cancel_with_status(call, GRPC_STATUS_CANCELLED, "interrupted", NULL);
            grpc_completion_queue_pluck(cq, tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
            return;
        }
    }
}

/* --- unary ---------------------------------------------------------------------- */

typedef struct {
    grpc_metadata_array initial_md;
    grpc_metadata_array trailing_md;
    grpc_status_code code;
    grpc_slice details;
} unary_recv_t;

static grpc_call_error unary_start(grpc_call *call, grpc_byte_buffer *request, grpc_metadata *md,
                                   size_t n_md, grpc_byte_buffer **response_p, unary_recv_t *recv,
                                   void *tag)
{
    grpc_op ops[6];

    memset(ops, 0, sizeof(ops));
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].data.send_initial_metadata.count = n_md;
    ops[0].data.send_initial_metadata.metadata = md;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = request;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &recv->initial_md;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = response_p;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &recv->trailing_md;
    ops[5].data.recv_status_on_client.status = &recv->code;
    ops[5].data.recv_status_on_client.status_details = &recv->details;
    return grpc_call_start_batch(call, ops, 6, tag, NULL);
}

/* Sends `request` (borrowed) with the metadata `md` (n_md pairs, may be
 * none) and waits; on OK *response_p is the reply (may be NULL if the
 * server sent none). */
static ferry_status_t unary_bytes(rpc_channel_t *channel, const char *path,
                                  grpc_byte_buffer *request, const rpc_md_t *md, size_t n_md,
                                  int64_t timeout_ms, grpc_byte_buffer **response_p,
                                  rpc_error_t *err)
{
    grpc_completion_queue *cq;
    grpc_call *call;
    unary_recv_t recv = {.details = grpc_empty_slice()};
    grpc_metadata sent[RPC_MAX_MD];
    ferry_status_t status = FERRY_ERR_INTERNAL;
    grpc_call_error rc;
    int tag;

    *response_p = NULL;
    if (interrupt.tripped) {
        rpc__error_set(err, GRPC_STATUS_CANCELLED, "interrupted");
        return FERRY_ERR_CANCELLED;
    }
    cq = grpc_completion_queue_create_for_pluck(NULL);
    call = rpc__channel_call(channel, path, cq, timeout_ms);
    n_md = n_md < RPC_MAX_MD ? n_md : RPC_MAX_MD;
    memset(sent, 0, sizeof(sent));
    for (size_t i = 0; i < n_md; i++) {
        sent[i].key = grpc_slice_from_static_string(md[i].key);
        sent[i].value = grpc_slice_from_copied_string(md[i].value);
    }
    grpc_metadata_array_init(&recv.initial_md);
    grpc_metadata_array_init(&recv.trailing_md);
    rc = unary_start(call, request, sent, n_md, response_p, &recv, &tag);
    if (rc != GRPC_CALL_OK) {
        ferry_error("rpc: %s: cannot start the call: grpc_call_error %d", path, (int)rc);
        rpc__error_set(err, GRPC_STATUS_INTERNAL, "cannot start the call");
    } else {
        unary_wait(call, cq, &tag);
        status = rpc__client_status(recv.code, recv.details, &recv.trailing_md, path, err);
    }
    if (status != FERRY_OK && *response_p != NULL) {
        grpc_byte_buffer_destroy(*response_p);
        *response_p = NULL;
    }
    grpc_call_unref(call);
    grpc_completion_queue_shutdown(cq);
    grpc_completion_queue_destroy(cq);
    grpc_slice_unref(recv.details);
    grpc_metadata_array_destroy(&recv.initial_md);
    grpc_metadata_array_destroy(&recv.trailing_md);
    for (size_t i = 0; i < n_md; i++) {
        grpc_slice_unref(sent[i].value);
    }
    return status;
}

/* Sends `req` (taken over; NULL: no memory to pack it) and decodes the
 * response as `response_desc`. */
static ferry_status_t unary_decoded(rpc_channel_t *channel, const char *path, grpc_byte_buffer *req,
                                    const rpc_md_t *md, size_t n_md,
                                    const ProtobufCMessageDescriptor *response_desc,
                                    int64_t timeout_ms, ProtobufCMessage **response_p,
                                    rpc_error_t *err)
{
    grpc_byte_buffer *resp = NULL;
    ferry_status_t status;

    if (req == NULL) {
        rpc__error_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return FERRY_ERR_NO_MEMORY;
    }
    status = unary_bytes(channel, path, req, md, n_md, timeout_ms, &resp, err);
    grpc_byte_buffer_destroy(req);
    if (status != FERRY_OK) {
        return status;
    }
    *response_p = rpc__unpack(response_desc, resp);
    if (resp != NULL) {
        grpc_byte_buffer_destroy(resp);
    }
    if (*response_p == NULL) {
        ferry_warn("rpc: %s: malformed or missing response", path);
        rpc__error_set(err, rpc_status_to_grpc(FERRY_ERR_PROTOCOL), "malformed response");
        return FERRY_ERR_PROTOCOL;
    }
    return FERRY_OK;
}

ferry_status_t rpc_unary(rpc_channel_t *channel, const char *path, const ProtobufCMessage *request,
                         const ProtobufCMessageDescriptor *response_desc, int64_t timeout_ms,
                         ProtobufCMessage **response_p, rpc_error_t *err)
{
    return unary_decoded(channel, path, rpc__pack(request), NULL, 0, response_desc, timeout_ms,
                         response_p, err);
}

ferry_status_t rpc_unary_md(rpc_channel_t *channel, const char *path,
                            const ProtobufCMessage *request, const rpc_md_t *md, size_t n_md,
                            const ProtobufCMessageDescriptor *response_desc, int64_t timeout_ms,
                            ProtobufCMessage **response_p, rpc_error_t *err)
{
    if (n_md > RPC_MAX_MD) {
        rpc__error_set(err, GRPC_STATUS_INTERNAL, "too much metadata");
        return FERRY_ERR_MISUSE;
    }
    return unary_decoded(channel, path, rpc__pack(request), md, n_md, response_desc, timeout_ms,
                         response_p, err);
}

ferry_status_t rpc_unary_packed(rpc_channel_t *channel, const char *path, const void *request,
                                size_t request_len, const ProtobufCMessageDescriptor *response_desc,
                                int64_t timeout_ms, ProtobufCMessage **response_p, rpc_error_t *err)
{
    return unary_decoded(channel, path, rpc__pack_raw(request, request_len), NULL, 0, response_desc,
                         timeout_ms, response_p, err);
}

ferry_status_t rpc_unary_raw(rpc_channel_t *channel, const char *path, const void *request,
                             size_t request_len, int64_t timeout_ms, void **response_p,
                             size_t *response_len_p, rpc_error_t *err)
{
    grpc_byte_buffer *req = rpc__pack_raw(request, request_len), *resp = NULL;
    ferry_status_t status;

    if (req == NULL) {
        rpc__error_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return FERRY_ERR_NO_MEMORY;
    }
    status = unary_bytes(channel, path, req, NULL, 0, timeout_ms, &resp, err);
    grpc_byte_buffer_destroy(req);
    if (status != FERRY_OK) {
        return status;
    }
    status = rpc__unpack_raw(resp, response_p, response_len_p);
    if (resp != NULL) {
        grpc_byte_buffer_destroy(resp);
    }
    if (status != FERRY_OK) {
        rpc__error_set(err, rpc_status_to_grpc(FERRY_ERR_PROTOCOL), "missing response");
    }
    return status;
}
