/*
 * etcd_grpc.c: the gRPC transport, etcd__kv_grpc_ops (the client's default,
 * etcd_int.h): put, range, delete-range and txn over etcd's native gRPC API
 * (etcdserverpb.KV), the coordinator's hot path; and the translation of
 * etcd's WatchResponse for etcd_watch.c, whose etcd__watch_stream_grpc
 * streams the watch over the same channels.
 *
 * Why not the gateway for these: through it every request is HTTP/1.1 with
 * a JSON body of base64 strings on both sides, and etcd turns it into a
 * gRPC call to itself; a native call skips all of that (bench/NOTES.md has
 * the figures).
 *
 * One channel per endpoint, made with the client (the table's open); gRPC
 * connects on first use and keeps one HTTP/2 connection that the calls of
 * every thread share.
 *
 * Failover follows etcd_client.c's rules for the gateway: the same endpoint
 * order (the one that answered last first, suspect ones last), budgets and
 * suspicion. What proves that a request never reached a member is the
 * channel: a call starts only once rpc_channel_connect has seen a connection
 * (gRPC 1.51 counts one only after the server's HTTP/2 settings, so a
 * frozen member that accepts TCP and says nothing never gets one). Until
 * then nothing was sent, and any request moves on to the next endpoint, a
 * write included. Once a call has started, a write that fails is never sent
 * again (it may have been applied) and fails FERRY_ERR_UNAVAILABLE; a read
 * (ETCD_CALL_RETRY) gets ETCD_ATTEMPT_MS per endpoint and moves on.
 *
 * Auth: the token etcd_auth.c gets (over the gateway) travels as the
 * "token" metadata, as etcd's own clients send it; UNAUTHENTICATED drops it
 * and the request is tried once more with a new one.
 *
 * Threads: any; channels are read-only after create (gRPC channels are
 * thread-safe).
 */
#include "coordinator/etcd/etcd_int.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"

/* --- channels ----------------------------------------------------------- */

/* One channel per endpoint (lazy: gRPC connects on first use). */
static ferry_status_t etcd_grpc_open(etcd_client_t *client)
{
    client->channels = calloc(client->n_endpoints, sizeof(*client->channels));
    if (client->channels == NULL) {
        return FERRY_ERR_NO_MEMORY;
    }
    /* So that a channel notices a member that went away while the client
     * was idle, and the next request connects anew instead of writing into
     * the dead connection (which a write could not be sent again after). */
    ferry_status_t polled = rpc_poller_start(&client->poller);
    if (polled != FERRY_OK) {
        return polled;
    }
    for (size_t i = 0; i < client->n_endpoints; i++) {
        const char *url = client->endpoints[i];
        bool tls = strncmp(url, "https://", 8) == 0;
        rpc_tls_params_t tls_params = {
            .ca_file = client->ca_file,
            .cert_file = client->cert_file,
            .key_file = client->key_file,
        };
        /* "host:port"; a unix endpoint is gRPC's target as it is. */
        const char *target = etcd__unix_path(url) != NULL ? url : url + (tls ? 8 : 7);
        if (etcd__unix_path(url) == NULL &&
            (strchr(target, '/') != NULL || strrchr(target, ':') == NULL)) {
            /* gRPC takes no path, and picks another default port than HTTP. */
            ferry_error("etcd: endpoint %s: etcd's gRPC API needs scheme://host:port (no path, "
                        "a port); or send key-values over the JSON gateway (--etcd-kv-api "
                        "gateway)",
                        url);
            return FERRY_ERR_INVALID_ARGUMENT;
        }
        rpc_channel_params_t params = {
            .target = target,
            .tls = tls ? &tls_params : NULL,
            .max_message_bytes = (int)ETCD_REPLY_MAX, /* as the gateway's bodies */
            .keepalive_ms = client->keepalive_ms,
            .tls_refresh_s = client->tls_refresh_s,
        };
        ferry_status_t status = rpc_channel_create(&params, &client->channels[i]);
        if (status != FERRY_OK) {
            ferry_error("etcd: cannot make a gRPC channel to %s: %s", url,
                        ferry_status_name(status));
            return status;
        }
    }
    return FERRY_OK;
}

/* Also after a partial open: channels and poller may be missing. */
static void etcd_grpc_close(etcd_client_t *client)
{
    for (size_t i = 0; client->channels != NULL && i < client->n_endpoints; i++) {
        rpc_channel_destroy(client->channels[i]);
    }
    free(client->channels);
    client->channels = NULL;
    rpc_poller_stop(client->poller);
    client->poller = NULL;
}

/* --- one call with failover ----------------------------------------------- */

bool etcd__grpc_transport_code(int code)
{
    return code == ETCD_GRPC_CANCELLED || code == ETCD_GRPC_DEADLINE_EXCEEDED ||
           code == ETCD_GRPC_UNAVAILABLE;
}

/* One call to the endpoint at `index` within attempt_ms; `connect_ms` of it
 * may go to getting a connection. *next_p says whether the request may go
 * on to the next endpoint. */
static ferry_status_t etcd_grpc_attempt(etcd_client_t *client, size_t index, const char *path,
                                        const char *method, const ProtobufCMessage *request,
                                        const ProtobufCMessageDescriptor *reply_desc,
                                        const rpc_md_t *md, size_t n_md, unsigned flags,
                                        int64_t connect_ms, int64_t attempt_ms, bool *next_p,
                                        ProtobufCMessage **reply_p)
{
    const char *url = client->endpoints[index];
    rpc_channel_t *channel = client->channels[index];
    rpc_error_t err = {0};
    int64_t start = etcd__now_ns();
    bool cut = (flags & ETCD_CALL_CUT) != 0;

    *next_p = false;
    etcd__ran_out = false;
    ferry_status_t status = rpc_channel_connect(channel, connect_ms, &err);
    if (status != FERRY_OK) {
        etcd__set_error("connect %s (gRPC): %s", url, err.message);
        ferry_debug("etcd: %s", etcd_client_last_error());
        etcd__ran_out =
            cut && connect_ms < ETCD_ATTEMPT_MS && err.grpc_code == ETCD_GRPC_DEADLINE_EXCEEDED;
        if (!etcd__ran_out) {
            etcd__endpoint_suspect(client, index);
        }
        *next_p = true; /* nothing was sent */
        return FERRY_ERR_UNAVAILABLE;
    }
    int64_t left = attempt_ms - (etcd__now_ns() - start) / 1000000;
    status = rpc_unary_md(channel, method, request, md, n_md, reply_desc, left > 0 ? left : 1,
                          reply_p, &err);
    if (status == FERRY_OK) {
        etcd__endpoint_answered(client, index);
        return FERRY_OK;
    }
    if (etcd__grpc_transport_code(err.grpc_code)) {
        /* No answer in time, or the connection broke: the request may have
         * reached etcd. */
        if (err.grpc_code == ETCD_GRPC_DEADLINE_EXCEEDED) {
            etcd__set_error("%s%s: timed out after %lld ms", url, path, (long long)attempt_ms);
        } else {
            etcd__set_error("%s%s: %s: %s", url, path, rpc_grpc_code_name(err.grpc_code),
                            err.message);
        }
        ferry_debug("etcd: %s", etcd_client_last_error());
        etcd__ran_out =
            cut && attempt_ms < ETCD_ATTEMPT_MS && err.grpc_code == ETCD_GRPC_DEADLINE_EXCEEDED;
        if (!etcd__ran_out) {
            etcd__endpoint_suspect(client, index);
        }
        *next_p = (flags & ETCD_CALL_RETRY) != 0;
        return FERRY_ERR_UNAVAILABLE;
    }
    if (status != FERRY_ERR_NO_MEMORY && status != FERRY_ERR_PROTOCOL) {
        status = etcd__error_status(0, err.grpc_code, err.message);
    }
    etcd__set_error("%s%s: code %d: %s", url, path, err.grpc_code, err.message);
    if (etcd__grpc_too_large(err.grpc_code, err.message)) {
        etcd__set_too_large(url);
        ferry_warn("etcd: %s", etcd_client_last_error());
    }
    ferry_debug("etcd: %s", etcd_client_last_error());
    if (status == FERRY_ERR_UNAVAILABLE) {
        /* etcd's own "did not finish in time" (etcd__error_status): as a
         * timeout, the request may have been applied, and another member
         * may do better; unless the time was the caller's, cut short. */
        etcd__ran_out = cut && attempt_ms < ETCD_ATTEMPT_MS;
        if (!etcd__ran_out) {
            etcd__endpoint_suspect(client, index);
        }
        *next_p = (flags & ETCD_CALL_RETRY) != 0;
        return status;
    }
    etcd__endpoint_answered(client, index);
    return status;
}

/* Every endpoint in turn within the client's timeout (or the thread's
 * deadline, when sooner: etcd__budget_ms), with the token (NULL: none). */
static ferry_status_t etcd_grpc_call_token(etcd_client_t *client, const char *path,
                                           const char *method, const ProtobufCMessage *request,
                                           const ProtobufCMessageDescriptor *reply_desc,
                                           const char *token, unsigned flags,
                                           ProtobufCMessage **reply_p)
{
    rpc_md_t md = {.key = "token", .value = token};
    size_t n_md = token != NULL && token[0] != '\0' ? 1 : 0;
    size_t *order = malloc(client->n_endpoints * sizeof(*order));
    if (order == NULL) {
        return FERRY_ERR_NO_MEMORY;
    }
    etcd__endpoint_order(client, order);
    bool cut;
    int64_t budget = etcd__budget_ms(client->timeout_ms, &cut);
    flags |= cut ? ETCD_CALL_CUT : 0;
    int64_t deadline = etcd__now_ns() / 1000000 + budget;
    ferry_status_t status = FERRY_ERR_UNAVAILABLE;
    bool next = true;
    bool etcds = false; /* an attempt that had the time to be answered failed */
    etcd__ran_out = false;
    for (size_t i = 0; i < client->n_endpoints && next; i++) {
        int64_t left = deadline - etcd__now_ns() / 1000000;
        if (left <= 0) {
            etcd__set_error("no etcd endpoint answered %s within %lld ms", path,
                            (long long)(budget > 0 ? budget : 0));
            etcd__ran_out = cut;
            break;
        }
        /* The last endpoint gets all the time that is left; the others give
         * a read ETCD_ATTEMPT_MS, and any request that long to connect. */
        bool last = i + 1 == client->n_endpoints;
        int64_t short_ms = !last && left > ETCD_ATTEMPT_MS ? ETCD_ATTEMPT_MS : left;
        int64_t attempt_ms = (flags & ETCD_CALL_RETRY) != 0 ? short_ms : left;
        status = etcd_grpc_attempt(client, order[i], path, method, request, reply_desc, &md, n_md,
                                   flags, short_ms, attempt_ms, &next, reply_p);
        etcds = etcds || (status != FERRY_OK && !etcd__ran_out);
    }
    if (etcd__tries_end(status, cut, etcds)) {
        etcd__warn_unavailable();
    }
    free(order);
    return status;
}

/* One try with the current token; *sent_p false when getting the token
 * failed (a retry would only repeat that). */
static ferry_status_t etcd_grpc_call_once(etcd_client_t *client, const char *path,
                                          const char *method, const ProtobufCMessage *request,
                                          const ProtobufCMessageDescriptor *reply_desc,
                                          unsigned flags, unsigned long *gen_p, bool *sent_p,
                                          ProtobufCMessage **reply_p)
{
    char *token = NULL;
    *sent_p = false;
    ferry_status_t status = etcd__auth_token(client, NULL, &token, gen_p);
    if (status != FERRY_OK) {
        return status;
    }
    *sent_p = true;
    status = etcd_grpc_call_token(client, path, method, request, reply_desc, token, flags, reply_p);
    free(token);
    return status;
}

ferry_status_t etcd__grpc_call(etcd_client_t *client, const char *path, const char *method,
                               const ProtobufCMessage *request,
                               const ProtobufCMessageDescriptor *reply_desc, unsigned flags,
                               ProtobufCMessage **reply_p)
{
    int64_t start = etcd__now_ns();
    unsigned long gen = 0;
    bool sent = false;

    etcd__clear_error();
    *reply_p = NULL;
    ferry_status_t status =
        etcd_grpc_call_once(client, path, method, request, reply_desc, flags, &gen, &sent, reply_p);
    if (status == FERRY_ERR_UNAUTHENTICATED && client->username != NULL && sent) {
        /* The token expired or etcd restarted and forgot it. */
        ferry_debug("etcd: token rejected on %s, authenticating again", path);
        etcd__auth_invalidate(client, gen);
        status = etcd_grpc_call_once(client, path, method, request, reply_desc, flags, &gen, &sent,
                                     reply_p);
    }
    etcd__observe(client, path, etcd__ran_out ? FERRY_ERR_TIMED_OUT : status, start);
    return status;
}

/* --- etcd's messages to etcd.h's types ------------------------------------- */

static ProtobufCBinaryData etcd_grpc_bin(const void *data, size_t len)
{
    return (ProtobufCBinaryData){.len = len, .data = (uint8_t *)data};
}

/* A malloc'ed copy with one NUL byte after the data (etcd_int.h). */
static ferry_status_t etcd_grpc_copy(ProtobufCBinaryData in, uint8_t **out_p, size_t *len_p)
{
    uint8_t *out = malloc(in.len + 1);
    if (out == NULL) {
        return FERRY_ERR_NO_MEMORY;
    }
    if (in.len > 0) {
        memcpy(out, in.data, in.len);
    }
    out[in.len] = '\0';
    *out_p = out;
    *len_p = in.len;
    return FERRY_OK;
}

/* header.revision, 0 without a header; FERRY_ERR_PROTOCOL where
 * etcd__revision_ok says etcd could not have sent it. */
static ferry_status_t etcd_grpc_revision(const Etcdserverpb__ResponseHeader *header,
                                         int64_t *revision_p)
{
    *revision_p = header != NULL ? header->revision : 0;
    return etcd__revision_ok(*revision_p) ? FERRY_OK : FERRY_ERR_PROTOCOL;
}

static ferry_status_t etcd_grpc_kv(const Etcdserverpb__KeyValue *in, etcd_kv_t *kv)
{
    memset(kv, 0, sizeof(*kv));
    if (in == NULL || !etcd__revision_ok(in->create_revision) ||
        !etcd__revision_ok(in->mod_revision)) {
        return FERRY_ERR_PROTOCOL;
    }
    ferry_status_t status = etcd_grpc_copy(in->key, &kv->key, &kv->key_len);
    if (status == FERRY_OK) {
        status = etcd_grpc_copy(in->value, &kv->value, &kv->value_len);
    }
    kv->create_revision = in->create_revision;
    kv->mod_revision = in->mod_revision;
    kv->version = in->version;
    kv->lease = in->lease;
    if (status != FERRY_OK) {
        etcd__kv_clear(kv);
    }
    return status;
}

static ferry_status_t etcd_grpc_range(const Etcdserverpb__RangeResponse *in, etcd_range_t *range)
{
    memset(range, 0, sizeof(*range));
    ferry_status_t status = etcd_grpc_revision(in->header, &range->revision);
    range->count = in->count;
    range->more = in->more;
    if (status == FERRY_OK && in->n_kvs > 0) {
        range->kvs = calloc(in->n_kvs, sizeof(*range->kvs));
        status = range->kvs != NULL ? FERRY_OK : FERRY_ERR_NO_MEMORY;
    }
    for (size_t i = 0; status == FERRY_OK && i < in->n_kvs; i++) {
        status = etcd_grpc_kv(in->kvs[i], &range->kvs[i]);
        range->n_kvs += status == FERRY_OK;
    }
    if (status != FERRY_OK) {
        etcd_range_free(range);
    }
    return status;
}

static ferry_status_t etcd_grpc_event(const Etcdserverpb__Event *in, etcd_event_t *event)
{
    memset(event, 0, sizeof(*event));
    switch (in->type) {
    case ETCDSERVERPB__EVENT__EVENT_TYPE__PUT:
        event->type = ETCD_EVENT_PUT;
        break;
    case ETCDSERVERPB__EVENT__EVENT_TYPE__DELETE:
        event->type = ETCD_EVENT_DELETE;
        break;
    default:
        return FERRY_ERR_PROTOCOL;
    }
    ferry_status_t status = etcd_grpc_kv(in->kv, &event->kv);
    if (status == FERRY_OK && in->prev_kv != NULL) {
        status = etcd_grpc_kv(in->prev_kv, &event->prev_kv);
    }
    if (status != FERRY_OK) {
        etcd__event_clear(event);
    }
    return status;
}

ferry_status_t etcd__grpc_watch_msg(const Etcdserverpb__WatchResponse *in, etcd_watch_msg_t *msg)
{
    memset(msg, 0, sizeof(*msg));
    msg->created = in->created;
    msg->canceled = in->canceled;
    msg->fragment = in->fragment;
    msg->compact_revision = in->compact_revision;
    msg->cancel_reason = in->cancel_reason != NULL ? in->cancel_reason : "";
    ferry_status_t status = etcd_grpc_revision(in->header, &msg->revision);
    if (status == FERRY_OK && in->n_events > 0) {
        msg->events = calloc(in->n_events, sizeof(*msg->events));
        status = msg->events != NULL ? FERRY_OK : FERRY_ERR_NO_MEMORY;
    }
    for (size_t i = 0; status == FERRY_OK && i < in->n_events; i++) {
        status = etcd_grpc_event(in->events[i], &msg->events[i]);
        msg->n_events += status == FERRY_OK;
    }
    if (status != FERRY_OK) {
        etcd__watch_msg_clear(msg);
    }
    return status;
}

/* --- the four operations ------------------------------------------------------ */

static ferry_status_t etcd_grpc_put(etcd_client_t *client, const void *key, size_t key_len,
                                    const void *value, size_t value_len, int64_t lease,
                                    int64_t *revision_p)
{
    Etcdserverpb__PutRequest req = ETCDSERVERPB__PUT_REQUEST__INIT;
    req.key = etcd_grpc_bin(key, key_len);
    req.value = etcd_grpc_bin(value, value_len);
    req.lease = lease;
    ProtobufCMessage *reply = NULL;
    ferry_status_t status = etcd__grpc_call(client, "/v3/kv/put", "/etcdserverpb.KV/Put", &req.base,
                                            &etcdserverpb__put_response__descriptor, 0, &reply);
    int64_t revision = 0;
    if (status == FERRY_OK) {
        status = etcd_grpc_revision(((Etcdserverpb__PutResponse *)reply)->header, &revision);
    }
    if (status == FERRY_OK && revision_p != NULL) {
        *revision_p = revision;
    }
    if (reply != NULL) {
        protobuf_c_message_free_unpacked(reply, NULL);
    }
    return status;
}

static ferry_status_t etcd_grpc_get(etcd_client_t *client, const void *key, size_t key_len,
                                    const void *range_end, size_t range_end_len, int64_t limit,
                                    int64_t revision, etcd_range_t *range_p)
{
    Etcdserverpb__RangeRequest req = ETCDSERVERPB__RANGE_REQUEST__INIT;
    req.key = etcd_grpc_bin(key, key_len);
    req.range_end = etcd_grpc_bin(range_end, range_end != NULL ? range_end_len : 0);
    req.limit = limit > 0 ? limit : 0;
    req.revision = revision > 0 ? revision : 0;
    ProtobufCMessage *reply = NULL;
    ferry_status_t status =
        etcd__grpc_call(client, "/v3/kv/range", "/etcdserverpb.KV/Range", &req.base,
                        &etcdserverpb__range_response__descriptor, ETCD_CALL_RETRY, &reply);
    if (status == FERRY_OK) {
        status = etcd_grpc_range((Etcdserverpb__RangeResponse *)reply, range_p);
    }
    if (reply != NULL) {
        protobuf_c_message_free_unpacked(reply, NULL);
    }
    return status;
}

static ferry_status_t etcd_grpc_delete(etcd_client_t *client, const void *key, size_t key_len,
                                       const void *range_end, size_t range_end_len,
                                       int64_t *deleted_p, int64_t *revision_p)
{
    Etcdserverpb__DeleteRangeRequest req = ETCDSERVERPB__DELETE_RANGE_REQUEST__INIT;
    req.key = etcd_grpc_bin(key, key_len);
    req.range_end = etcd_grpc_bin(range_end, range_end != NULL ? range_end_len : 0);
    ProtobufCMessage *reply = NULL;
    ferry_status_t status =
        etcd__grpc_call(client, "/v3/kv/deleterange", "/etcdserverpb.KV/DeleteRange", &req.base,
                        &etcdserverpb__delete_range_response__descriptor, 0, &reply);
    int64_t revision = 0;
    const Etcdserverpb__DeleteRangeResponse *resp = (Etcdserverpb__DeleteRangeResponse *)reply;
    if (status == FERRY_OK) {
        status = etcd_grpc_revision(resp->header, &revision);
    }
    if (status == FERRY_OK && deleted_p != NULL) {
        *deleted_p = resp->deleted;
    }
    if (status == FERRY_OK && revision_p != NULL) {
        *revision_p = revision;
    }
    if (reply != NULL) {
        protobuf_c_message_free_unpacked(reply, NULL);
    }
    return status;
}

/* One op of a txn's branch, with the request it points at. */
typedef struct {
    Etcdserverpb__RequestOp op;
    Etcdserverpb__PutRequest put;
    Etcdserverpb__RangeRequest range;
    Etcdserverpb__DeleteRangeRequest del;
} etcd_grpc_op_t;

static void etcd_grpc_build_op(const etcd_op_t *in, etcd_grpc_op_t *out,
                               Etcdserverpb__RequestOp **slot)
{
    *out = (etcd_grpc_op_t){
        .op = ETCDSERVERPB__REQUEST_OP__INIT,
        .put = ETCDSERVERPB__PUT_REQUEST__INIT,
        .range = ETCDSERVERPB__RANGE_REQUEST__INIT,
        .del = ETCDSERVERPB__DELETE_RANGE_REQUEST__INIT,
    };
    ProtobufCBinaryData key = etcd_grpc_bin(in->key, in->key_len);
    ProtobufCBinaryData end =
        etcd_grpc_bin(in->range_end, in->range_end != NULL ? in->range_end_len : 0);
    switch (in->type) {
    case ETCD_OP_PUT:
        out->put.key = key;
        out->put.value = etcd_grpc_bin(in->value, in->value_len);
        out->put.lease = in->lease;
        out->op.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT;
        out->op.request_put = &out->put;
        break;
    case ETCD_OP_GET:
        out->range.key = key;
        out->range.range_end = end;
        out->op.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE;
        out->op.request_range = &out->range;
        break;
    case ETCD_OP_DELETE:
        out->del.key = key;
        out->del.range_end = end;
        out->op.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_DELETE_RANGE;
        out->op.request_delete_range = &out->del;
        break;
    }
    *slot = &out->op;
}

static void etcd_grpc_build_compare(const etcd_compare_t *in, Etcdserverpb__Compare *out,
                                    Etcdserverpb__Compare **slot)
{
    *out = (Etcdserverpb__Compare)ETCDSERVERPB__COMPARE__INIT;
    /* etcd.h's enums follow etcd's numbering. */
    out->result = (Etcdserverpb__Compare__CompareResult)in->result;
    out->target = (Etcdserverpb__Compare__CompareTarget)in->target;
    out->key = etcd_grpc_bin(in->key, in->key_len);
    switch (in->target) {
    case ETCD_CMP_VERSION:
        out->target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_VERSION;
        out->version = in->number;
        break;
    case ETCD_CMP_CREATE:
        out->target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_CREATE_REVISION;
        out->create_revision = in->number;
        break;
    case ETCD_CMP_MOD:
        out->target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_MOD_REVISION;
        out->mod_revision = in->number;
        break;
    case ETCD_CMP_VALUE:
        out->target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_VALUE;
        out->value = etcd_grpc_bin(in->value, in->value_len);
        break;
    case ETCD_CMP_LEASE:
        out->target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_LEASE;
        out->lease = in->number;
        break;
    }
    *slot = out;
}

static ferry_status_t etcd_grpc_txn_result(const Etcdserverpb__TxnResponse *in,
                                           etcd_txn_result_t *result)
{
    memset(result, 0, sizeof(*result));
    result->succeeded = in->succeeded;
    ferry_status_t status = etcd_grpc_revision(in->header, &result->revision);
    if (status == FERRY_OK && in->n_responses > 0) {
        result->results = calloc(in->n_responses, sizeof(*result->results));
        status = result->results != NULL ? FERRY_OK : FERRY_ERR_NO_MEMORY;
    }
    for (size_t i = 0; status == FERRY_OK && i < in->n_responses; i++) {
        const Etcdserverpb__ResponseOp *op = in->responses[i];
        etcd_range_t *range = &result->results[i];
        switch (op->response_case) {
        case ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_RANGE:
            status = etcd_grpc_range(op->response_range, range);
            break;
        case ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_PUT:
            status = etcd_grpc_revision(op->response_put->header, &range->revision);
            break;
        case ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_DELETE_RANGE:
            status = etcd_grpc_revision(op->response_delete_range->header, &range->revision);
            break;
        default:
            status = FERRY_ERR_PROTOCOL;
            break;
        }
        result->n_results += status == FERRY_OK;
    }
    if (status != FERRY_OK) {
        etcd_txn_result_free(result);
    }
    return status;
}

static ferry_status_t etcd_grpc_txn(etcd_client_t *client, const etcd_compare_t *compares,
                                    size_t n_compares, const etcd_op_t *success, size_t n_success,
                                    const etcd_op_t *failure, size_t n_failure,
                                    etcd_txn_result_t *result_p)
{
    size_t n_ops = n_success + n_failure;
    Etcdserverpb__TxnRequest req = ETCDSERVERPB__TXN_REQUEST__INIT;
    Etcdserverpb__Compare *cmps = calloc(n_compares + 1, sizeof(*cmps));
    Etcdserverpb__Compare **cmp_slots = calloc(n_compares + 1, sizeof(*cmp_slots));
    etcd_grpc_op_t *ops = calloc(n_ops + 1, sizeof(*ops));
    Etcdserverpb__RequestOp **op_slots = calloc(n_ops + 1, sizeof(*op_slots));
    ProtobufCMessage *reply = NULL;
    ferry_status_t status = FERRY_ERR_NO_MEMORY;

    if (cmps == NULL || cmp_slots == NULL || ops == NULL || op_slots == NULL) {
        goto out;
    }
    for (size_t i = 0; i < n_compares; i++) {
        etcd_grpc_build_compare(&compares[i], &cmps[i], &cmp_slots[i]);
    }
    for (size_t i = 0; i < n_ops; i++) {
        const etcd_op_t *op = i < n_success ? &success[i] : &failure[i - n_success];
        etcd_grpc_build_op(op, &ops[i], &op_slots[i]);
    }
    req.n_compare = n_compares;
    req.compare = cmp_slots;
    req.n_success = n_success;
    req.success = op_slots;
    req.n_failure = n_failure;
    req.failure = op_slots + n_success;
    status = etcd__grpc_call(client, "/v3/kv/txn", "/etcdserverpb.KV/Txn", &req.base,
                             &etcdserverpb__txn_response__descriptor, 0, &reply);
    if (status == FERRY_OK) {
        status = etcd_grpc_txn_result((Etcdserverpb__TxnResponse *)reply, result_p);
    }
out:
    if (reply != NULL) {
        protobuf_c_message_free_unpacked(reply, NULL);
    }
    free(op_slots);
    free(ops);
    free(cmp_slots);
    free(cmps);
    return status;
}

/* --- the transport ---------------------------------------------------- */

const etcd_kv_ops_t etcd__kv_grpc_ops = {
    .name = "gRPC",
    .open = etcd_grpc_open,
    .close = etcd_grpc_close,
    .put = etcd_grpc_put,
    .get = etcd_grpc_get,
    .del = etcd_grpc_delete,
    .txn = etcd_grpc_txn,
    .watch_stream = etcd__watch_stream_grpc,
};
