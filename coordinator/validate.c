/*
 * validate.c: the checks of validate.h.
 */
#include "validate.h"

#include "common/md_rules.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

__attribute__((format(printf, 3, 4))) static ferry_status_t invalid(char *msg, size_t cap,
                                                                    const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, cap, fmt, ap);
    va_end(ap);
    return FERRY_ERR_INVALID_ARGUMENT;
}

ferry_status_t coord_validate_request_id(const char *field, const char *id, char *msg, size_t cap)
{
    return ferry_request_id_check(field, id, msg, cap);
}

ferry_status_t coord_validate_token(const char *field, const char *token, int required, char *msg,
                                    size_t cap)
{
    return ferry_token_check(field, token, required, msg, cap);
}

/* protobuf-c keeps the unknown fields of what it unpacks and packs them
 * again, but it reads some it cannot write back (an over-long tag of field
 * number 0 unpacks, and packs as a plain 0 tag that it then refuses). The
 * registry stores the metadata as sent, but a client that decodes a record
 * and packs it again (a proxy, a tool) must get bytes that decode, so
 * metadata must survive a round trip. len: the packed size. */
static ferry_status_t validate_round_trip(const char *field, const Ferry__V1__RdmaMetadata *md,
                                          size_t len, char *msg, size_t cap)
{
    uint8_t *buf = malloc(len > 0 ? len : 1);
    Ferry__V1__RdmaMetadata *again;

    if (buf == NULL) {
        snprintf(msg, cap, "no memory to check %s", field);
        return FERRY_ERR_NO_MEMORY;
    }
    ferry__v1__rdma_metadata__pack(md, buf);
    again = ferry__v1__rdma_metadata__unpack(NULL, len, buf);
    free(buf);
    if (again == NULL) {
        return invalid(msg, cap, "%s has an unknown field that cannot be stored (field number 0)",
                       field);
    }
    ferry__v1__rdma_metadata__free_unpacked(again, NULL);
    return FERRY_OK;
}

ferry_status_t coord_validate_metadata(const char *field, const Ferry__V1__RdmaMetadata *md,
                                       char *msg, size_t cap)
{
    /* The library's rules too: one owner (common/md_rules.h). Then what
     * only the coordinator needs: a name it can store and log, and metadata
     * that survives the registry's packing. */
    ferry_status_t status = ferry_md_check(field, md, msg, cap);

    if (status == FERRY_OK) {
        status = coord_validate_name("metadata.worker_name", md->worker_name, msg, cap);
    }
    if (status == FERRY_OK) {
        status =
            validate_round_trip(field, md, ferry__v1__rdma_metadata__get_packed_size(md), msg, cap);
    }
    return status;
}

ferry_status_t coord_validate_ttl(const char *field, int64_t ttl_s, char *msg, size_t cap)
{
    if (ttl_s < 0 || ttl_s > COORD_TTL_MAX) {
        return invalid(msg, cap, "%s is %lld; 0 (default) to %d allowed", field, (long long)ttl_s,
                       COORD_TTL_MAX);
    }
    return FERRY_OK;
}

ferry_status_t coord_validate_name(const char *field, const char *name, char *msg, size_t cap)
{
    size_t len = name == NULL ? 0 : strlen(name);

    if (len > COORD_NAME_MAX) {
        return invalid(msg, cap, "%s is %zu bytes; at most %d allowed", field, len, COORD_NAME_MAX);
    }
    return FERRY_OK;
}

ferry_status_t coord_validate_target(const char *request_id, const char *token, int token_required,
                                     char *msg, size_t cap)
{
    ferry_status_t status = coord_validate_request_id("request_id", request_id, msg, cap);
    return status != FERRY_OK
               ? status
               : coord_validate_token("access_token", token, token_required, msg, cap);
}

ferry_status_t coord_validate_prefix(const char *field, const char *prefix, char *msg, size_t cap)
{
    return prefix[0] == '\0' ? FERRY_OK : coord_validate_request_id(field, prefix, msg, cap);
}

/* The token's revision: digits only, no leading zero, at most INT64_MAX. */
static bool page_revision_parse(const char *text, size_t len, int64_t *revision_p)
{
    int64_t revision = 0;

    if (len == 0 || text[0] == '0') {
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        int digit = text[i] - '0';
        if (digit < 0 || digit > 9 || revision > (INT64_MAX - digit) / 10) {
            return false;
        }
        revision = revision * 10 + digit;
    }
    *revision_p = revision;
    return true;
}

ferry_status_t coord_validate_page_token(const char *field, const char *text,
                                         coord_page_token_t *token_p, char *msg, size_t cap)
{
    const char *sep = strchr(text, COORD_PAGE_TOKEN_SEP);
    int64_t revision;
    ferry_status_t status;

    if (sep == NULL || !page_revision_parse(text, (size_t)(sep - text), &revision)) {
        return invalid(msg, cap,
                       "%s is not one a List returned (want <revision>@<request_id>, revision a "
                       "positive decimal number); start the List again with an empty %s",
                       field, field);
    }
    status = coord_validate_request_id(field, sep + 1, msg, cap);
    if (status != FERRY_OK) {
        return status;
    }
    token_p->revision = revision;
    memcpy(token_p->after, sep + 1, strlen(sep + 1) + 1);
    return FERRY_OK;
}

ferry_status_t coord_validate_watch(const Ferry__V1__WatchRequest *req, char *msg, size_t cap)
{
    bool by_id = req->request_id[0] != '\0';
    bool by_prefix = req->request_id_prefix[0] != '\0';

    if (by_id == by_prefix) {
        return invalid(msg, cap, "exactly one of request_id and request_id_prefix must be set");
    }
    if (req->start_revision < 0) {
        return invalid(msg, cap, "start_revision is negative (0: from now)");
    }
    if (by_id) {
        return coord_validate_request_id("request_id", req->request_id, msg, cap);
    }
    return strcmp(req->request_id_prefix, "*") == 0
               ? FERRY_OK
               : coord_validate_prefix("request_id_prefix", req->request_id_prefix, msg, cap);
}

ferry_status_t coord_validate_not_negative(const char *field, int64_t value, char *msg, size_t cap)
{
    return value < 0 ? invalid(msg, cap, "%s is negative", field) : FERRY_OK;
}
