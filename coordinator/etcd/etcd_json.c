/*
 * etcd_json.c: the JSON side of etcd 3.4's gateway. Pure functions, no I/O,
 * no locks: any thread may call them.
 *
 * Gateway conventions this file relies on:
 *   - keys and values are standard base64 with padding;
 *   - int64 fields (revisions, lease IDs, counts, TTLs) are JSON strings and
 *     are parsed with strtoll, never through a double;
 *   - fields at their default value are left out: a missing number is 0, a
 *     missing bool false, a missing list empty, a missing value "".
 *
 * Revisions (header.revision, create_revision, mod_revision) are refused
 * unless etcd__revision_ok, as over gRPC.
 */
#include "coordinator/etcd/etcd_int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

char *etcd__b64_encode(const void *data, size_t len)
{
    char *text = malloc(4 * ((len + 2) / 3) + 1);
    if (text == NULL) {
        return NULL;
    }
    /* EVP_EncodeBlock takes an int length; keys and values stay far below. */
    EVP_EncodeBlock((unsigned char *)text, data, (int)len);
    return text;
}

ferry_status_t etcd__b64_decode(const char *text, uint8_t **out_p, size_t *len_p)
{
    size_t text_len = strlen(text);
    if (text_len % 4 != 0) {
        return FERRY_ERR_PROTOCOL;
    }
    uint8_t *out = malloc(text_len / 4 * 3 + 1);
    if (out == NULL) {
        return FERRY_ERR_NO_MEMORY;
    }
    int n = EVP_DecodeBlock(out, (const unsigned char *)text, (int)text_len);
    if (n < 0) {
        free(out);
        return FERRY_ERR_PROTOCOL;
    }
    /* EVP_DecodeBlock counts the padding as output bytes. */
    for (size_t i = text_len; i > 0 && text[i - 1] == '=' && n > 0; i--) {
        n--;
    }
    out[n] = '\0';
    *out_p = out;
    *len_p = (size_t)n;
    return FERRY_OK;
}

ferry_status_t etcd__json_add_bytes(cJSON *obj, const char *name, const void *data, size_t len)
{
    char *text = etcd__b64_encode(data, len);
    if (text == NULL) {
        return FERRY_ERR_NO_MEMORY;
    }
    cJSON *item = cJSON_AddStringToObject(obj, name, text);
    free(text);
    return item != NULL ? FERRY_OK : FERRY_ERR_NO_MEMORY;
}

ferry_status_t etcd__json_add_int64(cJSON *obj, const char *name, int64_t value)
{
    char text[24];
    snprintf(text, sizeof(text), "%" PRId64, value);
    return cJSON_AddStringToObject(obj, name, text) != NULL ? FERRY_OK : FERRY_ERR_NO_MEMORY;
}

static ferry_status_t etcd_parse_int64_text(const char *text, int64_t *value_p)
{
    char *end;
    errno = 0;
    long long value = strtoll(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0') {
        return FERRY_ERR_PROTOCOL;
    }
    *value_p = value;
    return FERRY_OK;
}

ferry_status_t etcd__json_int64(const cJSON *obj, const char *name, int64_t *value_p)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (item == NULL || cJSON_IsNull(item)) {
        *value_p = 0;
        return FERRY_OK;
    }
    if (cJSON_IsString(item)) {
        return etcd_parse_int64_text(item->valuestring, value_p);
    }
    /* Small numbers (error codes) come as JSON numbers; exact below 2^53. */
    if (cJSON_IsNumber(item) && item->valuedouble >= -9007199254740992.0 &&
        item->valuedouble <= 9007199254740992.0) {
        *value_p = (int64_t)item->valuedouble;
        return FERRY_OK;
    }
    return FERRY_ERR_PROTOCOL;
}

ferry_status_t etcd__json_bytes(const cJSON *obj, const char *name, uint8_t **data_p, size_t *len_p)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (item == NULL || cJSON_IsNull(item)) {
        return etcd__b64_decode("", data_p, len_p);
    }
    if (!cJSON_IsString(item)) {
        return FERRY_ERR_PROTOCOL;
    }
    return etcd__b64_decode(item->valuestring, data_p, len_p);
}

/* etcd's revisions start at 1 and only grow; see the header comment. */
static ferry_status_t etcd_json_revision_field(const cJSON *obj, const char *name,
                                               int64_t *revision_p)
{
    int64_t revision;
    ferry_status_t status = etcd__json_int64(obj, name, &revision);
    if (status != FERRY_OK) {
        return status;
    }
    if (!etcd__revision_ok(revision)) {
        return FERRY_ERR_PROTOCOL;
    }
    *revision_p = revision;
    return FERRY_OK;
}

ferry_status_t etcd__json_revision(const cJSON *reply, int64_t *revision_p)
{
    const cJSON *header = cJSON_GetObjectItemCaseSensitive(reply, "header");
    if (header == NULL) {
        *revision_p = 0;
        return FERRY_OK;
    }
    return etcd_json_revision_field(header, "revision", revision_p);
}

void etcd__kv_clear(etcd_kv_t *kv)
{
    free(kv->key);
    free(kv->value);
    memset(kv, 0, sizeof(*kv));
}

ferry_status_t etcd__parse_kv(const cJSON *json, etcd_kv_t *kv)
{
    memset(kv, 0, sizeof(*kv));
    if (!cJSON_IsObject(json)) {
        return FERRY_ERR_PROTOCOL;
    }
    ferry_status_t status = etcd__json_bytes(json, "key", &kv->key, &kv->key_len);
    if (status == FERRY_OK) {
        status = etcd__json_bytes(json, "value", &kv->value, &kv->value_len);
    }
    if (status == FERRY_OK) {
        status = etcd_json_revision_field(json, "create_revision", &kv->create_revision);
    }
    if (status == FERRY_OK) {
        status = etcd_json_revision_field(json, "mod_revision", &kv->mod_revision);
    }
    if (status == FERRY_OK) {
        status = etcd__json_int64(json, "version", &kv->version);
    }
    if (status == FERRY_OK) {
        status = etcd__json_int64(json, "lease", &kv->lease);
    }
    if (status != FERRY_OK) {
        etcd__kv_clear(kv);
    }
    return status;
}

void etcd_range_free(etcd_range_t *range)
{
    if (range == NULL) {
        return;
    }
    for (size_t i = 0; i < range->n_kvs; i++) {
        etcd__kv_clear(&range->kvs[i]);
    }
    free(range->kvs);
    memset(range, 0, sizeof(*range));
}

static ferry_status_t etcd_parse_kvs(const cJSON *array, etcd_range_t *range)
{
    int n = cJSON_GetArraySize(array);
    if (n == 0) {
        return FERRY_OK;
    }
    range->kvs = calloc((size_t)n, sizeof(*range->kvs));
    if (range->kvs == NULL) {
        return FERRY_ERR_NO_MEMORY;
    }
    const cJSON *item;
    cJSON_ArrayForEach(item, array)
    {
        ferry_status_t status = etcd__parse_kv(item, &range->kvs[range->n_kvs]);
        if (status != FERRY_OK) {
            return status;
        }
        range->n_kvs++;
    }
    return FERRY_OK;
}

ferry_status_t etcd__parse_range(const cJSON *json, etcd_range_t *range)
{
    memset(range, 0, sizeof(*range));
    ferry_status_t status = etcd__json_revision(json, &range->revision);
    if (status == FERRY_OK) {
        status = etcd__json_int64(json, "count", &range->count);
    }
    const cJSON *kvs = cJSON_GetObjectItemCaseSensitive(json, "kvs");
    if (status == FERRY_OK && kvs != NULL) {
        status = cJSON_IsArray(kvs) ? etcd_parse_kvs(kvs, range) : FERRY_ERR_PROTOCOL;
    }
    range->more = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(json, "more"));
    if (status != FERRY_OK) {
        etcd_range_free(range);
    }
    return status;
}

void etcd_txn_result_free(etcd_txn_result_t *result)
{
    if (result == NULL) {
        return;
    }
    for (size_t i = 0; i < result->n_results; i++) {
        etcd_range_free(&result->results[i]);
    }
    free(result->results);
    memset(result, 0, sizeof(*result));
}

/* One element of "responses": {"response_range": {...}} or a put/delete. */
static ferry_status_t etcd_parse_txn_op(const cJSON *json, etcd_range_t *range)
{
    const cJSON *got = cJSON_GetObjectItemCaseSensitive(json, "response_range");
    if (got != NULL) {
        return etcd__parse_range(got, range);
    }
    memset(range, 0, sizeof(*range));
    const cJSON *other = json->child; /* response_put, response_delete_range, ... */
    return other != NULL ? etcd__json_revision(other, &range->revision) : FERRY_OK;
}

ferry_status_t etcd__parse_txn(const cJSON *json, etcd_txn_result_t *result)
{
    memset(result, 0, sizeof(*result));
    result->succeeded = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(json, "succeeded"));
    ferry_status_t status = etcd__json_revision(json, &result->revision);
    const cJSON *responses = cJSON_GetObjectItemCaseSensitive(json, "responses");
    int n = cJSON_GetArraySize(responses);
    if (status != FERRY_OK || n == 0) {
        return status;
    }
    result->results = calloc((size_t)n, sizeof(*result->results));
    if (result->results == NULL) {
        return FERRY_ERR_NO_MEMORY;
    }
    const cJSON *item;
    cJSON_ArrayForEach(item, responses)
    {
        status = etcd_parse_txn_op(item, &result->results[result->n_results]);
        if (status != FERRY_OK) {
            etcd_txn_result_free(result);
            return status;
        }
        result->n_results++;
    }
    return FERRY_OK;
}

ferry_status_t etcd__parse_keepalive(const cJSON *json, int64_t *ttl_p)
{
    const cJSON *result = cJSON_GetObjectItemCaseSensitive(json, "result");
    if (!cJSON_IsObject(result)) {
        return FERRY_ERR_PROTOCOL;
    }
    /* etcd answers for a lease it no longer has without TTL (TTL 0 is
     * left out as a default), so "missing" and "0" both mean gone. */
    int64_t ttl;
    ferry_status_t status = etcd__json_int64(result, "TTL", &ttl);
    if (status != FERRY_OK) {
        return status;
    }
    if (ttl <= 0) {
        return FERRY_ERR_NOT_FOUND;
    }
    *ttl_p = ttl;
    return FERRY_OK;
}

void etcd__event_clear(etcd_event_t *event)
{
    etcd__kv_clear(&event->kv);
    etcd__kv_clear(&event->prev_kv);
}

ferry_status_t etcd__parse_event(const cJSON *json, etcd_event_t *event)
{
    memset(event, 0, sizeof(*event));
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(json, "type");
    /* PUT is the default (0) and therefore left out. */
    event->type = ETCD_EVENT_PUT;
    if (cJSON_IsString(type) && strcmp(type->valuestring, "DELETE") == 0) {
        event->type = ETCD_EVENT_DELETE;
    } else if (type != NULL && !(cJSON_IsString(type) && strcmp(type->valuestring, "PUT") == 0)) {
        return FERRY_ERR_PROTOCOL;
    }
    ferry_status_t status =
        etcd__parse_kv(cJSON_GetObjectItemCaseSensitive(json, "kv"), &event->kv);
    const cJSON *prev = cJSON_GetObjectItemCaseSensitive(json, "prev_kv");
    if (status == FERRY_OK && prev != NULL) {
        status = etcd__parse_kv(prev, &event->prev_kv);
    }
    if (status != FERRY_OK) {
        etcd__event_clear(event);
    }
    return status;
}

void etcd__watch_msg_clear(etcd_watch_msg_t *msg)
{
    for (size_t i = 0; i < msg->n_events; i++) {
        etcd__event_clear(&msg->events[i]);
    }
    free(msg->events);
    memset(msg, 0, sizeof(*msg));
}

static ferry_status_t etcd_parse_watch_events(const cJSON *array, etcd_watch_msg_t *msg)
{
    size_t n = (size_t)cJSON_GetArraySize(array);
    if (n == 0) {
        return FERRY_OK;
    }
    msg->events = calloc(n, sizeof(*msg->events));
    if (msg->events == NULL) {
        return FERRY_ERR_NO_MEMORY;
    }
    const cJSON *item;
    cJSON_ArrayForEach(item, array)
    {
        ferry_status_t status = etcd__parse_event(item, &msg->events[msg->n_events]);
        if (status != FERRY_OK) {
            return status;
        }
        msg->n_events++;
    }
    return FERRY_OK;
}

ferry_status_t etcd__parse_watch_msg(const cJSON *json, etcd_watch_msg_t *msg, const char **error_p)
{
    memset(msg, 0, sizeof(*msg));
    *error_p = NULL;
    const cJSON *result = cJSON_GetObjectItemCaseSensitive(json, "result");
    if (!cJSON_IsObject(result)) {
        const cJSON *error = cJSON_GetObjectItemCaseSensitive(json, "error");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(error, "message");
        int64_t code = 0;
        etcd__json_int64(error, "grpc_code", &code);
        const char *message = cJSON_IsString(text) ? text->valuestring : NULL;
        *error_p = message != NULL ? message : "an error without a message";
        return etcd__error_status(0, (int)code, message);
    }
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(result, "canceled"))) {
        const cJSON *reason = cJSON_GetObjectItemCaseSensitive(result, "cancel_reason");
        msg->canceled = true;
        msg->cancel_reason = cJSON_IsString(reason) ? reason->valuestring : "";
        etcd__json_int64(result, "compact_revision", &msg->compact_revision);
        return FERRY_OK;
    }
    ferry_status_t status = etcd__json_revision(result, &msg->revision);
    msg->created = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(result, "created"));
    msg->fragment = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(result, "fragment"));
    const cJSON *events = cJSON_GetObjectItemCaseSensitive(result, "events");
    if (status == FERRY_OK && events != NULL) {
        status = cJSON_IsArray(events) ? etcd_parse_watch_events(events, msg) : FERRY_ERR_PROTOCOL;
    }
    if (status != FERRY_OK) {
        etcd__watch_msg_clear(msg);
    }
    return status;
}

/* Defined here, beside the one function that sets it, so that this file
 * links without etcd_client.c (the fuzz targets compile it alone). */
_Thread_local bool etcd__no_space;

ferry_status_t etcd__error_status(long http_status, int grpc_code, const char *message)
{
    switch (grpc_code) {
    case ETCD_GRPC_INVALID_ARGUMENT:
        /* With auth on, a request without a token is "user name is empty";
         * one whose token predates a change to etcd's users or roles is
         * "revision of auth store is old" (refused, not applied): a new
         * token is the cure for both, as for an expired one. */
        if (message != NULL && (strstr(message, "user name is empty") != NULL ||
                                strstr(message, "revision of auth store is old") != NULL)) {
            return FERRY_ERR_UNAUTHENTICATED;
        }
        return FERRY_ERR_INVALID_ARGUMENT;
    case ETCD_GRPC_NOT_FOUND:
        return FERRY_ERR_NOT_FOUND;
    case ETCD_GRPC_PERMISSION_DENIED:
        return FERRY_ERR_PERMISSION_DENIED;
    case ETCD_GRPC_RESOURCE_EXHAUSTED:
        /* A request over its gRPC server's limit, too many requests, or
         * no space left ("etcdserver: mvcc: database space exceeded", the
         * NOSPACE alarm: every write refused, whoever sends it): refused,
         * nothing applied. */
        etcd__no_space = message != NULL && strstr(message, "database space exceeded") != NULL;
        return FERRY_ERR_RESOURCE_EXHAUSTED;
    case ETCD_GRPC_FAILED_PRECONDITION:
        return FERRY_ERR_FAILED_PRECONDITION;
    case ETCD_GRPC_OUT_OF_RANGE:
        /* A revision compacted away ("mvcc: required revision has been
         * compacted"), which a reader cures by reading again; or one etcd
         * has not reached ("... is a future revision"): the request's own
         * mistake. */
        return message != NULL && strstr(message, "compacted") != NULL ? FERRY_ERR_OUT_OF_RANGE
                                                                       : FERRY_ERR_INVALID_ARGUMENT;
    case ETCD_GRPC_ABORTED:
        return FERRY_ERR_ABORTED;
    case ETCD_GRPC_UNIMPLEMENTED:
        return FERRY_ERR_UNIMPLEMENTED; /* a method this etcd lacks */
    case ETCD_GRPC_CANCELLED:
    case ETCD_GRPC_DEADLINE_EXCEEDED:
        return FERRY_ERR_UNAVAILABLE; /* the member did not finish in time */
    case ETCD_GRPC_UNKNOWN:
        /* etcd 3.4 answers some requests that outlive their context (a
         * linearizable read or a write with no quorum to finish it) with
         * Go's own error and no code: a member that did not finish in
         * time, as a timeout is; another member may do better. */
        if (message != NULL && (strcmp(message, "context deadline exceeded") == 0 ||
                                strcmp(message, "context canceled") == 0)) {
            return FERRY_ERR_UNAVAILABLE;
        }
        return FERRY_ERR_INTERNAL;
    case ETCD_GRPC_INTERNAL:
    case ETCD_GRPC_DATA_LOSS:
        return FERRY_ERR_INTERNAL; /* etcd's own failure, not a malformed reply */
    case ETCD_GRPC_UNAVAILABLE:
        return FERRY_ERR_UNAVAILABLE;
    case ETCD_GRPC_UNAUTHENTICATED:
        return FERRY_ERR_UNAUTHENTICATED;
    default:
        break;
    }
    if (http_status == 401) {
        return FERRY_ERR_UNAUTHENTICATED;
    }
    if (http_status == 400) {
        return FERRY_ERR_INVALID_ARGUMENT;
    }
    if (http_status == 404) {
        return FERRY_ERR_NOT_FOUND;
    }
    if (http_status == 503) {
        return FERRY_ERR_UNAVAILABLE;
    }
    return FERRY_ERR_PROTOCOL;
}

bool etcd__grpc_too_large(int grpc_code, const char *message)
{
    /* gRPC's own words for a message over max_message_bytes ("Received
     * message larger than max (N vs. M)"): no code of its own tells it
     * from etcd's other RESOURCE_EXHAUSTED answers. */
    return grpc_code == ETCD_GRPC_RESOURCE_EXHAUSTED && message != NULL &&
           strstr(message, "larger than max") != NULL;
}

/* gRPC's code names as etcd's Go server spells them in a status's text,
 * indexed by code. */
static const char *const grpc_code_names[] = {
    "OK",       "Canceled",        "Unknown",          "InvalidArgument",   "DeadlineExceeded",
    "NotFound", "AlreadyExists",   "PermissionDenied", "ResourceExhausted", "FailedPrecondition",
    "Aborted",  "OutOfRange",      "Unimplemented",    "Internal",          "Unavailable",
    "DataLoss", "Unauthenticated",
};
_Static_assert(sizeof(grpc_code_names) / sizeof(grpc_code_names[0]) ==
                   ETCD_GRPC_UNAUTHENTICATED + 1,
               "one name per gRPC code");

ferry_status_t etcd__cancel_reason_status(const char *reason)
{
    static const char code_is[] = "rpc error: code = ", desc_is[] = " desc = ";
    const char *p = reason != NULL ? strstr(reason, code_is) : NULL;

    if (p == NULL) {
        return FERRY_ERR_UNAVAILABLE;
    }
    p += sizeof(code_is) - 1;
    for (int code = 1; code <= ETCD_GRPC_UNAUTHENTICATED; code++) {
        size_t len = strlen(grpc_code_names[code]);
        if (strncmp(p, grpc_code_names[code], len) == 0 &&
            strncmp(p + len, desc_is, sizeof(desc_is) - 1) == 0) {
            return etcd__error_status(0, code, p + len + sizeof(desc_is) - 1);
        }
    }
    return FERRY_ERR_UNAVAILABLE;
}

ferry_status_t etcd_prefix_end(const void *prefix, size_t prefix_len, uint8_t **end_p,
                               size_t *end_len_p)
{
    if (prefix == NULL && prefix_len > 0) {
        return FERRY_ERR_MISUSE;
    }
    const uint8_t *bytes = prefix;
    size_t n = prefix_len;
    /* Trailing 0xff bytes cannot be incremented: drop them and carry. */
    while (n > 0 && bytes[n - 1] == 0xff) {
        n--;
    }
    uint8_t *end = malloc(n > 0 ? n : 1);
    if (end == NULL) {
        return FERRY_ERR_NO_MEMORY;
    }
    if (n == 0) {
        /* Empty prefix or all 0xff: "\0" as range_end means "to the end". */
        end[0] = 0;
        *end_p = end;
        *end_len_p = 1;
        return FERRY_OK;
    }
    memcpy(end, bytes, n);
    end[n - 1]++;
    *end_p = end;
    *end_len_p = n;
    return FERRY_OK;
}
