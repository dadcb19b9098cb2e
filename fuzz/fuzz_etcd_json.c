/*
 * fuzz_etcd_json.c: what the coordinator parses out of etcd's JSON gateway
 * (coordinator/etcd/etcd_json.c), on hostile bytes.
 *
 * Input: the text of one reply. It goes through every unary reply parser
 * (range, txn, lease grant, keep-alive, delete, the error body) and, split
 * on newlines as the watch stream is, each line through
 * etcd__parse_watch_msg (result, created, canceled, events, error lines). The same text is
 * also decoded as base64 and used as a prefix for etcd_prefix_end.
 *
 * Invariants beyond "no crash, no leak": every buffer decoded from base64
 * ends with the NUL byte etcd_int.h promises; decoded bytes encode and
 * decode back to themselves; a parsed range never holds more kvs than the
 * reply listed; every revision parsed is in [0, INT64_MAX), so the callers'
 * "revision + 1" cannot overflow.
 */
#include <string.h>

#include "coordinator/etcd/etcd_int.h"
#include "fuzz.h"

static void check_revision(int64_t revision)
{
    fuzz_assert(revision >= 0 && revision < INT64_MAX);
}

static void check_kv(const etcd_kv_t *kv)
{
    check_revision(kv->create_revision);
    check_revision(kv->mod_revision);
    fuzz_assert(kv->key != NULL && kv->key[kv->key_len] == '\0');
    fuzz_assert(kv->value != NULL && kv->value[kv->value_len] == '\0');
}

static void check_range(const cJSON *reply)
{
    etcd_range_t range;

    if (etcd__parse_range(reply, &range) != FERRY_OK) {
        return;
    }
    fuzz_assert((int)range.n_kvs <=
                cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(reply, "kvs")));
    check_revision(range.revision);
    for (size_t i = 0; i < range.n_kvs; i++) {
        check_kv(&range.kvs[i]);
    }
    etcd_range_free(&range);
}

static void check_txn(const cJSON *reply)
{
    etcd_txn_result_t txn;

    if (etcd__parse_txn(reply, &txn) != FERRY_OK) {
        return;
    }
    check_revision(txn.revision);
    for (size_t i = 0; i < txn.n_results; i++) {
        check_revision(txn.results[i].revision);
        for (size_t j = 0; j < txn.results[i].n_kvs; j++) {
            check_kv(&txn.results[i].kvs[j]);
        }
    }
    etcd_txn_result_free(&txn);
}

/* etcd_lease.c, etcd_kv.c (delete) and etcd_client.c (the error body). */
static void check_scalars(const cJSON *reply)
{
    const cJSON *error = cJSON_GetObjectItemCaseSensitive(reply, "error");
    const cJSON *source = cJSON_IsObject(error) ? error : reply;
    const cJSON *message = cJSON_GetObjectItemCaseSensitive(source, "message");
    int64_t value;

    (void)etcd__json_int64(reply, "ID", &value);
    (void)etcd__json_int64(reply, "TTL", &value);
    (void)etcd__json_int64(reply, "deleted", &value);
    if (etcd__json_revision(reply, &value) == FERRY_OK) {
        check_revision(value);
    }
    if (etcd__parse_keepalive(reply, &value) == FERRY_OK) {
        fuzz_assert(value > 0);
    }
    if (etcd__json_int64(source, cJSON_IsObject(error) ? "grpc_code" : "code", &value) ==
        FERRY_OK) {
        (void)etcd__error_status(400, (int)value,
                                 cJSON_IsString(message) ? message->valuestring : NULL);
    }
}

/* One line of a watch stream (etcd__parse_watch_msg, which etcd_watch.c
 * acts on). */
static void check_watch_line(const char *line, size_t len)
{
    cJSON *json = cJSON_ParseWithLength(line, len);
    etcd_watch_msg_t msg;
    const char *error;

    if (json == NULL) {
        return;
    }
    if (etcd__parse_watch_msg(json, &msg, &error) == FERRY_OK) {
        fuzz_assert(error == NULL);
        fuzz_assert(!msg.canceled || msg.cancel_reason != NULL);
        check_revision(msg.revision);
        for (size_t i = 0; i < msg.n_events; i++) {
            check_kv(&msg.events[i].kv);
            if (msg.events[i].prev_kv.key != NULL) {
                check_kv(&msg.events[i].prev_kv);
            }
        }
        etcd__watch_msg_clear(&msg);
    } else {
        fuzz_assert(msg.events == NULL && msg.n_events == 0);
    }
    cJSON_Delete(json);
}

static void check_base64(const char *text, size_t len)
{
    uint8_t *bytes = NULL, *again = NULL, *end = NULL;
    size_t n, n_again, end_len;
    char *encoded;

    if (etcd_prefix_end(text, len, &end, &end_len) == FERRY_OK) {
        fuzz_assert(end_len >= 1 && end_len <= (len > 0 ? len : 1));
        free(end);
    }
    if (strlen(text) != len || etcd__b64_decode(text, &bytes, &n) != FERRY_OK) {
        return;
    }
    fuzz_assert(bytes[n] == '\0');
    encoded = etcd__b64_encode(bytes, n);
    fuzz_assert(encoded != NULL);
    fuzz_assert(etcd__b64_decode(encoded, &again, &n_again) == FERRY_OK);
    fuzz_assert(n_again == n && memcmp(again, bytes, n) == 0);
    free(again);
    free(encoded);
    free(bytes);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* etcd's bodies reach the parsers as counted bytes; base64 takes a C
     * string, so keep a NUL-terminated copy. */
    char *text = malloc(size + 1);
    cJSON *reply;

    fuzz_assert(text != NULL);
    memcpy(text, data, size);
    text[size] = '\0';

    reply = cJSON_ParseWithLength(text, size);
    if (reply != NULL) {
        check_range(reply);
        check_txn(reply);
        check_scalars(reply);
        cJSON_Delete(reply);
    }
    for (size_t start = 0; start < size;) {
        const char *newline = memchr(text + start, '\n', size - start);
        size_t len = newline != NULL ? (size_t)(newline - (text + start)) : size - start;
        check_watch_line(text + start, len);
        start += len + 1;
    }
    check_base64(text, size);
    free(text);
    return 0;
}
