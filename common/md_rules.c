/*
 * md_rules.c: the checks of md_rules.h.
 */
#include "common/md_rules.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/pb_wire.h"

__attribute__((format(printf, 3, 4))) static ferry_status_t invalid(char *msg, size_t cap,
                                                                    const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, cap, fmt, ap);
    va_end(ap);
    return FERRY_ERR_INVALID_ARGUMENT;
}

static ferry_status_t check_descriptor(const char *field, size_t i, const Ferry__V1__Descriptor *d,
                                       Ferry__V1__DeviceKind first_kind, bool staged, char *msg,
                                       size_t cap)
{
    if (d->address == 0) {
        return invalid(msg, cap, "%s.descriptors[%zu].address is 0 (null pointer)", field, i);
    }
    if (d->size == 0) {
        return invalid(msg, cap, "%s.descriptors[%zu].size is 0", field, i);
    }
    if (d->size - 1 > UINT64_MAX - d->address) {
        /* Past the top of the address space: no memory is there, and every
         * end computed from it (UCX's, the writer's range checks) wraps.
         * libferry refuses such a buffer before it registers it; a record
         * made by another client must be refused here, at Register, and
         * not after a writer's claim was granted on it. */
        return invalid(msg, cap,
                       "%s.descriptors[%zu].size %" PRIu64 " at address 0x%" PRIx64
                       " wraps around the address space",
                       field, i, d->size, d->address);
    }
    if (d->device == NULL) {
        return invalid(msg, cap, "%s.descriptors[%zu].device is required", field, i);
    }
    if (d->device->kind != FERRY__V1__DEVICE_KIND__DEVICE_KIND_HOST &&
        d->device->kind != FERRY__V1__DEVICE_KIND__DEVICE_KIND_CUDA) {
        return invalid(msg, cap, "%s.descriptors[%zu].device.kind %d is not HOST or CUDA", field, i,
                       (int)d->device->kind);
    }
    if (d->device->kind != first_kind) {
        return invalid(msg, cap, "%s.descriptors[%zu].device differs in kind from descriptor 0",
                       field, i);
    }
    if (staged && d->rkey.len != 0) {
        return invalid(msg, cap, "%s.descriptors[%zu].rkey must be empty with staging", field, i);
    }
    if (!staged && (d->rkey.len == 0 || d->rkey.len > FERRY_MD_RKEY_MAX)) {
        return invalid(msg, cap, "%s.descriptors[%zu].rkey is %zu bytes; 1 to %d allowed", field, i,
                       d->rkey.len, FERRY_MD_RKEY_MAX);
    }
    return FERRY_OK;
}

static ferry_status_t check_staging(const char *field, const Ferry__V1__RdmaMetadata *md, char *msg,
                                    size_t cap)
{
    const Ferry__V1__Staging *s = md->staging;

    if (s->address == 0) {
        return invalid(msg, cap, "%s.staging.address is 0 (null pointer)", field);
    }
    if (s->slot_size == 0 || s->slot_size > FERRY_MD_SLOT_SIZE_MAX) {
        return invalid(msg, cap, "%s.staging.slot_size is %" PRIu64 "; 1 to %llu allowed", field,
                       s->slot_size, (unsigned long long)FERRY_MD_SLOT_SIZE_MAX);
    }
    if (s->slots == 0 || s->slots > FERRY_MD_SLOTS_MAX) {
        return invalid(msg, cap, "%s.staging.slots is %" PRIu32 "; 1 to %d allowed", field,
                       s->slots, FERRY_MD_SLOTS_MAX);
    }
    /* slots * slot_size is at most 2^36 (the bounds above), so the
     * product cannot overflow; only the end of the block can wrap. */
    if ((uint64_t)s->slots * s->slot_size - 1 > UINT64_MAX - s->address) {
        return invalid(msg, cap,
                       "%s.staging.slots %" PRIu32 " of slot_size %" PRIu64 " at address 0x%" PRIx64
                       " wrap around the address space",
                       field, s->slots, s->slot_size, s->address);
    }
    if (s->rkey.len == 0 || s->rkey.len > FERRY_MD_RKEY_MAX) {
        return invalid(msg, cap, "%s.staging.rkey is %zu bytes; 1 to %d allowed", field,
                       s->rkey.len, FERRY_MD_RKEY_MAX);
    }
    return FERRY_OK;
}

ferry_status_t ferry_md_check(const char *field, const Ferry__V1__RdmaMetadata *md, char *msg,
                              size_t cap)
{
    Ferry__V1__DeviceKind first_kind;
    size_t packed;

    if (md == NULL) {
        return invalid(msg, cap, "%s is required", field);
    }
    if (md->version > FERRY_MD_VERSION) {
        return invalid(msg, cap, "%s.version %" PRIu32 " is newer than this build (%d)", field,
                       md->version, FERRY_MD_VERSION);
    }
    if (md->kind != FERRY__V1__OPERATION_KIND__OPERATION_KIND_READ &&
        md->kind != FERRY__V1__OPERATION_KIND__OPERATION_KIND_WRITE) {
        return invalid(msg, cap, "%s.kind %d is not READ or WRITE", field, (int)md->kind);
    }
    if (md->worker_address.len == 0 || md->worker_address.len > FERRY_MD_WORKER_ADDRESS_MAX) {
        return invalid(msg, cap, "%s.worker_address is %zu bytes; 1 to %d allowed", field,
                       md->worker_address.len, FERRY_MD_WORKER_ADDRESS_MAX);
    }
    if (md->notification_key.len != FERRY_MD_KEY_LEN) {
        return invalid(msg, cap, "%s.notification_key is %zu bytes; it must be %d", field,
                       md->notification_key.len, FERRY_MD_KEY_LEN);
    }
    if (md->n_descriptors == 0 || md->n_descriptors > FERRY_MD_DESCRIPTORS_MAX) {
        return invalid(msg, cap, "%s.descriptors has %zu entries; 1 to %d allowed", field,
                       md->n_descriptors, FERRY_MD_DESCRIPTORS_MAX);
    }
    first_kind = md->descriptors[0]->device != NULL ? md->descriptors[0]->device->kind
                                                    : FERRY__V1__DEVICE_KIND__DEVICE_KIND_HOST;
    for (size_t i = 0; i < md->n_descriptors; i++) {
        ferry_status_t status = check_descriptor(field, i, md->descriptors[i], first_kind,
                                                 md->staging != NULL, msg, cap);
        if (status != FERRY_OK) {
            return status;
        }
    }
    if (md->staging != NULL) {
        ferry_status_t status = check_staging(field, md, msg, cap);
        if (status != FERRY_OK) {
            return status;
        }
    }
    packed = ferry__v1__rdma_metadata__get_packed_size(md);
    if (packed > FERRY_MD_PACKED_MAX) {
        return invalid(msg, cap, "%s is %zu bytes packed; at most %d allowed", field, packed,
                       FERRY_MD_PACKED_MAX);
    }
    if (md->worker_name != NULL && strlen(md->worker_name) > FERRY_MD_NAME_MAX) {
        return invalid(msg, cap, "%s.worker_name is %zu bytes; at most %d allowed", field,
                       strlen(md->worker_name), FERRY_MD_NAME_MAX);
    }
    if (md->hostname != NULL && strlen(md->hostname) > FERRY_MD_NAME_MAX) {
        return invalid(msg, cap, "%s.hostname is %zu bytes; at most %d allowed", field,
                       strlen(md->hostname), FERRY_MD_NAME_MAX);
    }
    return ferry_peer_error_handling_check(field, (int)md->peer_error_handling, msg, cap);
}

ferry_status_t ferry_peer_error_handling_check(const char *parent, int value, char *msg, size_t cap)
{
    if (value < FERRY__V1__PEER_ERROR_HANDLING__PEER_ERROR_HANDLING_UNSPECIFIED ||
        value > FERRY__V1__PEER_ERROR_HANDLING__PEER_ERROR_HANDLING_ON) {
        return invalid(msg, cap, "%s%speer_error_handling: unknown value %d",
                       parent != NULL ? parent : "", parent != NULL ? "." : "", value);
    }
    return FERRY_OK;
}

/* Where a walk of packed metadata is: the fields seen so far, at every
 * depth, and the descriptors at the top level. */
typedef struct {
    const uint8_t *start;
    uint32_t descriptors_field; /* RdmaMetadata.descriptors' number */
    size_t fields, descriptors;
} md_walk_t;

/* Walks the fields of one message of type desc, bytes p..end, and of the
 * messages inside it the schema names (it nests three deep, never into
 * itself), counting them into w. FERRY_OK; or the first rule broken, into
 * msg: an encoding that does not read, more than FERRY_MD_FIELDS_MAX
 * fields, more than FERRY_MD_DESCRIPTORS_MAX descriptors. */
static ferry_status_t md_walk(md_walk_t *w, const char *field,
                              const ProtobufCMessageDescriptor *desc, const uint8_t *p,
                              const uint8_t *end, char *msg, size_t cap)
{
    while (p < end) {
        const ProtobufCFieldDescriptor *f = NULL;
        ferry_pb_field_t pf;
        ferry_status_t status;

        if (!ferry_pb_next_field(&p, end, &pf)) {
            return invalid(msg, cap, "%s is not a valid RdmaMetadata encoding (at byte %zu)", field,
                           (size_t)(p - w->start));
        }
        if (++w->fields > FERRY_MD_FIELDS_MAX) {
            return invalid(msg, cap,
                           "%s holds more than %d fields; an RdmaMetadata of %d "
                           "descriptors holds far fewer",
                           field, FERRY_MD_FIELDS_MAX, FERRY_MD_DESCRIPTORS_MAX);
        }
        if (desc == &ferry__v1__rdma_metadata__descriptor && pf.number == w->descriptors_field &&
            ++w->descriptors > FERRY_MD_DESCRIPTORS_MAX) {
            return invalid(msg, cap, "%s.descriptors has more than %d entries; 1 to %d allowed",
                           field, FERRY_MD_DESCRIPTORS_MAX, FERRY_MD_DESCRIPTORS_MAX);
        }
        if (pf.number <= UINT32_MAX) {
            f = protobuf_c_message_descriptor_get_field(desc, (unsigned)pf.number);
        }
        if (f == NULL || f->type != PROTOBUF_C_TYPE_MESSAGE || pf.type != FERRY_PB_LEN) {
            continue; /* a scalar, a string or bytes, or a field not known */
        }
        status = md_walk(w, field, f->descriptor, pf.value, pf.value + pf.len, msg, cap);
        if (status != FERRY_OK) {
            return status;
        }
    }
    return FERRY_OK;
}

ferry_status_t ferry_md_check_packed(const char *field, const uint8_t *bytes, size_t len, char *msg,
                                     size_t cap)
{
    md_walk_t w = {.start = bytes};

    w.descriptors_field = protobuf_c_message_descriptor_get_field_by_name(
                              &ferry__v1__rdma_metadata__descriptor, "descriptors")
                              ->id;

    if (len > FERRY_MD_PACKED_MAX) {
        return invalid(msg, cap, "%s is %zu bytes packed; at most %d allowed", field, len,
                       FERRY_MD_PACKED_MAX);
    }
    return md_walk(&w, field, &ferry__v1__rdma_metadata__descriptor, bytes, bytes + len, msg, cap);
}

ferry_status_t ferry_md_sizes_pair(const Ferry__V1__RdmaMetadata *md, const uint64_t *sizes,
                                   size_t n, char *msg, size_t cap)
{
    if (n != md->n_descriptors) {
        snprintf(msg, cap, "descriptor count mismatch: %zu local, %zu remote", n,
                 md->n_descriptors);
        return FERRY_ERR_SIZE_MISMATCH;
    }
    for (size_t i = 0; i < n; i++) {
        if (sizes[i] != md->descriptors[i]->size) {
            snprintf(msg, cap, "descriptor %zu: local size %" PRIu64 " != remote size %" PRIu64, i,
                     sizes[i], md->descriptors[i]->size);
            return FERRY_ERR_SIZE_MISMATCH;
        }
    }
    return FERRY_OK;
}

static int id_char_ok(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == ':' || c == '-';
}

ferry_status_t ferry_request_id_check(const char *field, const char *id, char *msg, size_t cap)
{
    size_t len = id == NULL ? 0 : strlen(id);

    if (len == 0) {
        return invalid(msg, cap, "%s is required", field);
    }
    if (len > FERRY_REQUEST_ID_MAX) {
        return invalid(msg, cap, "%s is %zu bytes; at most %d allowed", field, len,
                       FERRY_REQUEST_ID_MAX);
    }
    for (size_t i = 0; i < len; i++) {
        if (!id_char_ok(id[i])) {
            return invalid(msg, cap, "%s has a character outside [A-Za-z0-9._:-] at byte %zu",
                           field, i);
        }
    }
    return FERRY_OK;
}

ferry_status_t ferry_token_check(const char *field, const char *token, int required, char *msg,
                                 size_t cap)
{
    size_t len = token == NULL ? 0 : strlen(token);

    if (len == 0) {
        return required ? invalid(msg, cap, "%s is required", field) : FERRY_OK;
    }
    if (len < FERRY_TOKEN_MIN || len > FERRY_TOKEN_MAX) {
        return invalid(msg, cap, "%s is %zu bytes; it must be %d to %d", field, len,
                       FERRY_TOKEN_MIN, FERRY_TOKEN_MAX);
    }
    for (size_t i = 0; i < len; i++) {
        if (token[i] < 0x21 || token[i] > 0x7e) {
            return invalid(msg, cap, "%s has a non-printable byte at %zu", field, i);
        }
    }
    return FERRY_OK;
}
