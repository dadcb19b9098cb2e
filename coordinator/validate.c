/*
 * validate.c: the checks of validate.h.
 */
#include "validate.h"

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

static int id_char_ok(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == ':' || c == '-';
}

ferry_status_t coord_validate_request_id(const char *field, const char *id, char *msg, size_t cap)
{
    size_t len = id == NULL ? 0 : strlen(id);

    if (len == 0) {
        return invalid(msg, cap, "%s is required", field);
    }
    if (len > COORD_REQUEST_ID_MAX) {
        return invalid(msg, cap, "%s is %zu bytes; at most %d allowed", field, len,
                       COORD_REQUEST_ID_MAX);
    }
    for (size_t i = 0; i < len; i++) {
        if (!id_char_ok(id[i])) {
            return invalid(msg, cap, "%s has a character outside [A-Za-z0-9._:-] at byte %zu",
                           field, i);
        }
    }
    return FERRY_OK;
}

ferry_status_t coord_validate_token(const char *field, const char *token, int required, char *msg,
                                    size_t cap)
{
    size_t len = token == NULL ? 0 : strlen(token);

    if (len == 0) {
        return required ? invalid(msg, cap, "%s is required", field) : FERRY_OK;
    }
    if (len < COORD_TOKEN_MIN || len > COORD_TOKEN_MAX) {
        return invalid(msg, cap, "%s is %zu bytes; it must be %d to %d", field, len,
                       COORD_TOKEN_MIN, COORD_TOKEN_MAX);
    }
    for (size_t i = 0; i < len; i++) {
        if (token[i] < 0x21 || token[i] > 0x7e) {
            return invalid(msg, cap, "%s has a non-printable byte at %zu", field, i);
        }
    }
    return FERRY_OK;
}

static ferry_status_t validate_descriptor(const char *field, size_t i,
                                          const Ferry__V1__Descriptor *d,
                                          Ferry__V1__DeviceKind first_kind, char *msg, size_t cap)
{
    if (d->address == 0) {
        return invalid(msg, cap, "%s.descriptors[%zu].address is 0 (null pointer)", field, i);
    }
    if (d->size == 0) {
        return invalid(msg, cap, "%s.descriptors[%zu].size is 0", field, i);
    }
    if (d->device == NULL || d->device->kind == FERRY__V1__DEVICE_KIND__DEVICE_KIND_UNSPECIFIED) {
        return invalid(msg, cap, "%s.descriptors[%zu].device is required", field, i);
    }
    if (d->device->kind != first_kind) {
        return invalid(msg, cap, "%s.descriptors[%zu].device differs in kind from descriptor 0",
                       field, i);
    }
    if (d->rkey.len == 0 || d->rkey.len > COORD_RKEY_MAX) {
        return invalid(msg, cap, "%s.descriptors[%zu].rkey is %zu bytes; 1 to %d allowed", field, i,
                       d->rkey.len, COORD_RKEY_MAX);
    }
    return FERRY_OK;
}

/* protobuf-c keeps the unknown fields of what it unpacks and packs them
 * again, but it reads some it cannot write back (an over-long tag of field
 * number 0 unpacks, and packs as a plain 0 tag that it then refuses). The
 * registry stores the metadata packed, so metadata must survive a round
 * trip or it becomes a record nobody can read. len: the packed size. */
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
    ferry_status_t status;
    size_t packed;

    if (md == NULL) {
        return invalid(msg, cap, "%s is required", field);
    }
    /* A version no worker of this release can read would be stored and
     * handed to writers that then refuse it: refuse it here. */
    if (md->version > COORD_METADATA_VERSION) {
        return invalid(msg, cap, "%s.version is %u; at most %d is known", field, md->version,
                       COORD_METADATA_VERSION);
    }
    if (md->kind != FERRY__V1__OPERATION_KIND__OPERATION_KIND_READ &&
        md->kind != FERRY__V1__OPERATION_KIND__OPERATION_KIND_WRITE) {
        return invalid(msg, cap, "%s.kind must be READ or WRITE", field);
    }
    if (md->worker_address.len == 0 || md->worker_address.len > COORD_WORKER_ADDRESS_MAX) {
        return invalid(msg, cap, "%s.worker_address is %zu bytes; 1 to %d allowed", field,
                       md->worker_address.len, COORD_WORKER_ADDRESS_MAX);
    }
    if (md->notification_key.len != COORD_NOTIFY_KEY_LEN) {
        return invalid(msg, cap, "%s.notification_key is %zu bytes; it must be %d", field,
                       md->notification_key.len, COORD_NOTIFY_KEY_LEN);
    }
    if (md->n_descriptors == 0 || md->n_descriptors > COORD_DESCRIPTORS_MAX) {
        return invalid(msg, cap, "%s.descriptors has %zu entries; 1 to %d allowed", field,
                       md->n_descriptors, COORD_DESCRIPTORS_MAX);
    }
    for (size_t i = 0; i < md->n_descriptors; i++) {
        const Ferry__V1__Descriptor *d = md->descriptors[i];
        Ferry__V1__DeviceKind first = md->descriptors[0]->device != NULL
                                          ? md->descriptors[0]->device->kind
                                          : FERRY__V1__DEVICE_KIND__DEVICE_KIND_UNSPECIFIED;
        status = validate_descriptor(field, i, d, first, msg, cap);
        if (status != FERRY_OK) {
            return status;
        }
    }
    packed = ferry__v1__rdma_metadata__get_packed_size(md);
    if (packed > COORD_METADATA_MAX) {
        return invalid(msg, cap, "%s is %zu bytes packed; at most %d allowed", field, packed,
                       COORD_METADATA_MAX);
    }
    status = coord_validate_name("metadata.worker_name", md->worker_name, msg, cap);
    return status != FERRY_OK ? status : validate_round_trip(field, md, packed, msg, cap);
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
