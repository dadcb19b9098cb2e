/*
 * etcd_kv.c: put, range, delete-range and txn. Each of etcd.h's functions
 * checks its arguments (FERRY_ERR_MISUSE) and hands the request to the
 * client's transport (client->kv, etcd_int.h): gRPC (etcd_grpc.c) or, with
 * params.kv_gateway, the gateway's, which lives here. That one builds the
 * request as cJSON (keys and values base64, int64 as strings), POSTs it to
 * /v3/kv/... with etcd__call_flags, and parses the reply with the functions
 * of etcd_json.c. Output arguments are written only on FERRY_OK, over
 * either transport.
 *
 * Threads: any; no state of its own.
 */
#include "coordinator/etcd/etcd_int.h"

#include <stdlib.h>
#include <string.h>

/* --- argument checks -------------------------------------------------- */

static bool etcd_bytes_ok(const void *data, size_t len)
{
    return data != NULL || len == 0;
}

static bool etcd_compare_ok(const etcd_compare_t *cmp)
{
    return (unsigned)cmp->target <= ETCD_CMP_LEASE && (unsigned)cmp->result <= ETCD_CMP_NOT_EQUAL &&
           cmp->key != NULL && cmp->key_len > 0 && etcd_bytes_ok(cmp->value, cmp->value_len);
}

static bool etcd_op_ok(const etcd_op_t *op)
{
    return (unsigned)op->type <= ETCD_OP_DELETE && op->key != NULL && op->key_len > 0 &&
           etcd_bytes_ok(op->value, op->value_len) &&
           etcd_bytes_ok(op->range_end, op->range_end_len);
}

/* Every compare and op well formed. */
static bool etcd_txn_ok(const etcd_compare_t *compares, size_t n_compares, const etcd_op_t *success,
                        size_t n_success, const etcd_op_t *failure, size_t n_failure)
{
    if ((n_compares > 0 && compares == NULL) || (n_success > 0 && success == NULL) ||
        (n_failure > 0 && failure == NULL)) {
        return false;
    }
    for (size_t i = 0; i < n_compares; i++) {
        if (!etcd_compare_ok(&compares[i])) {
            return false;
        }
    }
    for (size_t i = 0; i < n_success + n_failure; i++) {
        if (!etcd_op_ok(i < n_success ? &success[i] : &failure[i - n_success])) {
            return false;
        }
    }
    return true;
}

/* --- etcd.h's functions: checked, then the client's transport --------- */

ferry_status_t etcd_put(etcd_client_t *client, const void *key, size_t key_len, const void *value,
                        size_t value_len, int64_t lease, int64_t *revision_p)
{
    if (client == NULL || key_len == 0 || key == NULL || !etcd_bytes_ok(value, value_len)) {
        return FERRY_ERR_MISUSE;
    }
    return client->kv->put(client, key, key_len, value, value_len, lease, revision_p);
}

ferry_status_t etcd_get(etcd_client_t *client, const void *key, size_t key_len,
                        const void *range_end, size_t range_end_len, int64_t limit,
                        int64_t revision, etcd_range_t *range_p)
{
    if (client == NULL || key == NULL || key_len == 0 || range_p == NULL ||
        !etcd_bytes_ok(range_end, range_end_len)) {
        return FERRY_ERR_MISUSE;
    }
    return client->kv->get(client, key, key_len, range_end, range_end_len, limit, revision,
                           range_p);
}

ferry_status_t etcd_delete(etcd_client_t *client, const void *key, size_t key_len,
                           const void *range_end, size_t range_end_len, int64_t *deleted_p,
                           int64_t *revision_p)
{
    if (client == NULL || key == NULL || key_len == 0 || !etcd_bytes_ok(range_end, range_end_len)) {
        return FERRY_ERR_MISUSE;
    }
    return client->kv->del(client, key, key_len, range_end, range_end_len, deleted_p, revision_p);
}

ferry_status_t etcd_txn(etcd_client_t *client, const etcd_compare_t *compares, size_t n_compares,
                        const etcd_op_t *success, size_t n_success, const etcd_op_t *failure,
                        size_t n_failure, etcd_txn_result_t *result_p)
{
    if (client == NULL || result_p == NULL ||
        !etcd_txn_ok(compares, n_compares, success, n_success, failure, n_failure)) {
        return FERRY_ERR_MISUSE;
    }
    return client->kv->txn(client, compares, n_compares, success, n_success, failure, n_failure,
                           result_p);
}

/* --- the gateway's transport ------------------------------------------ */

/* Sends body (always deleted) and returns the reply. Only a range may be
 * sent twice (ETCD_CALL_RETRY); writes go out once. */
static ferry_status_t etcd_send(etcd_client_t *client, const char *path, cJSON *body,
                                ferry_status_t built, unsigned flags, cJSON **reply_p)
{
    ferry_status_t status = built;
    if (body == NULL) {
        status = FERRY_ERR_NO_MEMORY;
    }
    if (status == FERRY_OK) {
        status = etcd__call_flags(client, path, body, flags, reply_p);
    }
    cJSON_Delete(body);
    return status;
}

/* Adds key and, when given, range_end. */
static ferry_status_t etcd_add_range(cJSON *obj, const void *key, size_t key_len,
                                     const void *range_end, size_t range_end_len)
{
    ferry_status_t status = etcd__json_add_bytes(obj, "key", key, key_len);
    if (status == FERRY_OK && range_end != NULL) {
        status = etcd__json_add_bytes(obj, "range_end", range_end, range_end_len);
    }
    return status;
}

static ferry_status_t etcd_build_put(cJSON *obj, const void *key, size_t key_len, const void *value,
                                     size_t value_len, int64_t lease)
{
    ferry_status_t status = etcd__json_add_bytes(obj, "key", key, key_len);
    if (status == FERRY_OK) {
        status = etcd__json_add_bytes(obj, "value", value, value_len);
    }
    if (status == FERRY_OK && lease != 0) {
        status = etcd__json_add_int64(obj, "lease", lease);
    }
    return status;
}

static ferry_status_t etcd_gateway_put(etcd_client_t *client, const void *key, size_t key_len,
                                       const void *value, size_t value_len, int64_t lease,
                                       int64_t *revision_p)
{
    cJSON *body = cJSON_CreateObject();
    cJSON *reply = NULL;
    ferry_status_t status =
        body != NULL ? etcd_build_put(body, key, key_len, value, value_len, lease) : FERRY_OK;
    status = etcd_send(client, "/v3/kv/put", body, status, 0, &reply);
    int64_t revision = 0;
    if (status == FERRY_OK) {
        status = etcd__json_revision(reply, &revision);
    }
    if (status == FERRY_OK && revision_p != NULL) {
        *revision_p = revision;
    }
    cJSON_Delete(reply);
    return status;
}

static ferry_status_t etcd_build_get(cJSON *obj, const void *key, size_t key_len,
                                     const void *range_end, size_t range_end_len, int64_t limit,
                                     int64_t revision)
{
    ferry_status_t status = etcd_add_range(obj, key, key_len, range_end, range_end_len);
    if (status == FERRY_OK && limit > 0) {
        status = etcd__json_add_int64(obj, "limit", limit);
    }
    if (status == FERRY_OK && revision > 0) {
        status = etcd__json_add_int64(obj, "revision", revision);
    }
    return status;
}

static ferry_status_t etcd_gateway_get(etcd_client_t *client, const void *key, size_t key_len,
                                       const void *range_end, size_t range_end_len, int64_t limit,
                                       int64_t revision, etcd_range_t *range_p)
{
    cJSON *body = cJSON_CreateObject();
    cJSON *reply = NULL;
    ferry_status_t status =
        body != NULL ? etcd_build_get(body, key, key_len, range_end, range_end_len, limit, revision)
                     : FERRY_OK;
    status = etcd_send(client, "/v3/kv/range", body, status, ETCD_CALL_RETRY, &reply);
    if (status == FERRY_OK) {
        status = etcd__parse_range(reply, range_p);
    }
    cJSON_Delete(reply);
    return status;
}

static ferry_status_t etcd_gateway_delete(etcd_client_t *client, const void *key, size_t key_len,
                                          const void *range_end, size_t range_end_len,
                                          int64_t *deleted_p, int64_t *revision_p)
{
    cJSON *body = cJSON_CreateObject();
    cJSON *reply = NULL;
    ferry_status_t status =
        body != NULL ? etcd_add_range(body, key, key_len, range_end, range_end_len) : FERRY_OK;
    status = etcd_send(client, "/v3/kv/deleterange", body, status, 0, &reply);
    int64_t deleted = 0;
    int64_t revision = 0;
    if (status == FERRY_OK) {
        status = etcd__json_int64(reply, "deleted", &deleted);
    }
    if (status == FERRY_OK) {
        status = etcd__json_revision(reply, &revision);
    }
    if (status == FERRY_OK && deleted_p != NULL) {
        *deleted_p = deleted;
    }
    if (status == FERRY_OK && revision_p != NULL) {
        *revision_p = revision;
    }
    cJSON_Delete(reply);
    return status;
}

/* --- transactions over the gateway ------------------------------------ */

static const char *const etcd_cmp_target_names[] = {
    [ETCD_CMP_VERSION] = "VERSION", [ETCD_CMP_CREATE] = "CREATE", [ETCD_CMP_MOD] = "MOD",
    [ETCD_CMP_VALUE] = "VALUE",     [ETCD_CMP_LEASE] = "LEASE",
};
/* The field of Compare that holds the operand, per target. */
static const char *const etcd_cmp_field_names[] = {
    [ETCD_CMP_VERSION] = "version",  [ETCD_CMP_CREATE] = "create_revision",
    [ETCD_CMP_MOD] = "mod_revision", [ETCD_CMP_VALUE] = "value",
    [ETCD_CMP_LEASE] = "lease",
};
static const char *const etcd_cmp_result_names[] = {
    [ETCD_CMP_EQUAL] = "EQUAL",
    [ETCD_CMP_GREATER] = "GREATER",
    [ETCD_CMP_LESS] = "LESS",
    [ETCD_CMP_NOT_EQUAL] = "NOT_EQUAL",
};

static ferry_status_t etcd_build_compare(cJSON *array, const etcd_compare_t *cmp)
{
    cJSON *obj = cJSON_CreateObject();
    if (obj == NULL || !cJSON_AddItemToArray(array, obj) ||
        cJSON_AddStringToObject(obj, "target", etcd_cmp_target_names[cmp->target]) == NULL ||
        cJSON_AddStringToObject(obj, "result", etcd_cmp_result_names[cmp->result]) == NULL) {
        return FERRY_ERR_NO_MEMORY;
    }
    ferry_status_t status = etcd__json_add_bytes(obj, "key", cmp->key, cmp->key_len);
    const char *field = etcd_cmp_field_names[cmp->target];
    if (status == FERRY_OK && cmp->target == ETCD_CMP_VALUE) {
        status = etcd__json_add_bytes(obj, field, cmp->value, cmp->value_len);
    } else if (status == FERRY_OK) {
        status = etcd__json_add_int64(obj, field, cmp->number);
    }
    return status;
}

/* {"request_put": {...}} and so on, for one op. */
static ferry_status_t etcd_build_op(cJSON *array, const etcd_op_t *op)
{
    static const char *const names[] = {
        [ETCD_OP_PUT] = "request_put",
        [ETCD_OP_GET] = "request_range",
        [ETCD_OP_DELETE] = "request_delete_range",
    };
    cJSON *wrap = cJSON_CreateObject();
    cJSON *obj = cJSON_CreateObject();
    if (wrap == NULL || obj == NULL || !cJSON_AddItemToArray(array, wrap) ||
        !cJSON_AddItemToObject(wrap, names[op->type], obj)) {
        cJSON_Delete(obj);
        return FERRY_ERR_NO_MEMORY;
    }
    if (op->type == ETCD_OP_PUT) {
        return etcd_build_put(obj, op->key, op->key_len, op->value, op->value_len, op->lease);
    }
    return etcd_add_range(obj, op->key, op->key_len, op->range_end, op->range_end_len);
}

static ferry_status_t etcd_build_ops(cJSON *body, const char *name, const etcd_op_t *ops,
                                     size_t n_ops)
{
    cJSON *array = cJSON_AddArrayToObject(body, name);
    ferry_status_t status = array != NULL ? FERRY_OK : FERRY_ERR_NO_MEMORY;
    for (size_t i = 0; i < n_ops && status == FERRY_OK; i++) {
        status = etcd_build_op(array, &ops[i]);
    }
    return status;
}

static ferry_status_t etcd_build_txn(cJSON *body, const etcd_compare_t *compares, size_t n_compares,
                                     const etcd_op_t *success, size_t n_success,
                                     const etcd_op_t *failure, size_t n_failure)
{
    cJSON *array = cJSON_AddArrayToObject(body, "compare");
    ferry_status_t status = array != NULL ? FERRY_OK : FERRY_ERR_NO_MEMORY;
    for (size_t i = 0; i < n_compares && status == FERRY_OK; i++) {
        status = etcd_build_compare(array, &compares[i]);
    }
    if (status == FERRY_OK) {
        status = etcd_build_ops(body, "success", success, n_success);
    }
    if (status == FERRY_OK) {
        status = etcd_build_ops(body, "failure", failure, n_failure);
    }
    return status;
}

static ferry_status_t etcd_gateway_txn(etcd_client_t *client, const etcd_compare_t *compares,
                                       size_t n_compares, const etcd_op_t *success,
                                       size_t n_success, const etcd_op_t *failure, size_t n_failure,
                                       etcd_txn_result_t *result_p)
{
    cJSON *body = cJSON_CreateObject();
    cJSON *reply = NULL;
    ferry_status_t status = body != NULL ? etcd_build_txn(body, compares, n_compares, success,
                                                          n_success, failure, n_failure)
                                         : FERRY_OK;
    status = etcd_send(client, "/v3/kv/txn", body, status, 0, &reply);
    if (status == FERRY_OK) {
        status = etcd__parse_txn(reply, result_p);
    }
    cJSON_Delete(reply);
    return status;
}

/* --- the gateway's table ---------------------------------------------- */

/* The gateway needs nothing of its own: requests and watches take pooled
 * CURL handles (etcd_client.c) or the watch's own. */
static ferry_status_t etcd_gateway_open(etcd_client_t *client)
{
    (void)client;
    return FERRY_OK;
}

static void etcd_gateway_close(etcd_client_t *client)
{
    (void)client;
}

const etcd_kv_ops_t etcd__kv_gateway_ops = {
    .name = "the JSON gateway",
    .open = etcd_gateway_open,
    .close = etcd_gateway_close,
    .put = etcd_gateway_put,
    .get = etcd_gateway_get,
    .del = etcd_gateway_delete,
    .txn = etcd_gateway_txn,
    .watch_stream = etcd__watch_stream_gateway,
};
