/*
 * metadata.c: RdmaMetadata (proto/ferry/v1/types.proto), the capability a
 * passive operation hands out: built and packed here, and on the active side
 * unpacked and checked field by field before anything touches UCX.
 *
 * Invariant after ferry__metadata_validate: the rules of common/md_rules.h,
 * the same the coordinator checks at Register (kind READ or WRITE, worker
 * address and rkeys non-empty and bounded, a FERRY__KEY_LEN notification
 * key, 1..1024 descriptors with non-zero address and size and one device
 * kind, a known version, bounded packed size). The size and the count of
 * descriptors are checked on the bytes, before they are unpacked.
 *
 * Errors: bytes that do not decode and decoded fields that break the rules
 * are both FERRY_ERR_INVALID_ARGUMENT (the caller passed them in), with a
 * message naming the field. Pure functions: any thread.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "common/md_rules.h"
#include "worker/ferry_int.h"

_Static_assert(FERRY__KEY_LEN == FERRY_MD_KEY_LEN, "notification key lengths differ");

static const char *kind_name(ferry__op_kind_t kind)
{
    switch (kind) {
    case FERRY__KIND_WRITABLE:
        return "writable";
    case FERRY__KIND_READABLE:
        return "readable";
    case FERRY__KIND_WRITE:
        return "write";
    case FERRY__KIND_READ:
        return "read";
    }
    return "unknown";
}

ferry_status_t ferry__metadata_validate(const Ferry__V1__RdmaMetadata *md)
{
    char msg[FERRY__MSG_LEN];

    /* The coordinator's rules too: one owner (common/md_rules.h). */
    if (ferry_md_check("metadata", md, msg, sizeof(msg)) != FERRY_OK) {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT, "%s", msg);
    }
    return FERRY_OK;
}

ferry_status_t ferry__metadata_decode(const uint8_t *bytes, size_t len,
                                      Ferry__V1__RdmaMetadata **md_p)
{
    Ferry__V1__RdmaMetadata *md;
    ferry_status_t status;
    char msg[FERRY__MSG_LEN];

    if (bytes == NULL || len == 0) {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT, "metadata: empty");
    }
    /* Bounded before protobuf-c allocates for what the bytes hold (audit-s32
     * L1): they come from a coordinator's answer or the caller's source. */
    if (ferry_md_check_packed("metadata", bytes, len, msg, sizeof(msg)) != FERRY_OK) {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT, "%s", msg);
    }
    md = ferry__v1__rdma_metadata__unpack(NULL, len, bytes);
    if (md == NULL) {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT,
                           "metadata: %zu bytes are not a valid RdmaMetadata message", len);
    }
    status = ferry__metadata_validate(md);
    if (status != FERRY_OK) {
        ferry__v1__rdma_metadata__free_unpacked(md, NULL);
        return status;
    }
    *md_p = md;
    return FERRY_OK;
}

void ferry__metadata_free(Ferry__V1__RdmaMetadata *md)
{
    if (md != NULL) {
        ferry__v1__rdma_metadata__free_unpacked(md, NULL);
    }
}

/* The sizes of local[0..n), as the pairing rule takes them; malloc'd, NULL
 * when out of memory (n may be 0). */
static uint64_t *descriptor_sizes(const ferry_descriptor_t *local, size_t n)
{
    uint64_t *sizes = malloc(n > 0 ? n * sizeof(*sizes) : 1);

    for (size_t i = 0; sizes != NULL && i < n; i++) {
        sizes[i] = local[i].size;
    }
    return sizes;
}

ferry_status_t ferry__metadata_match(const Ferry__V1__RdmaMetadata *md, ferry__op_kind_t kind,
                                     const ferry_descriptor_t *local, size_t n)
{
    bool is_write = kind == FERRY__KIND_WRITE;
    bool md_write = md->kind == FERRY__V1__OPERATION_KIND__OPERATION_KIND_WRITE;
    char msg[FERRY__MSG_LEN];
    ferry_status_t status;
    uint64_t *sizes;

    if (is_write != md_write) {
        return ferry__fail(FERRY_ERR_KIND_MISMATCH,
                           "metadata is for a %s operation; a %s pairs only with a %s",
                           md_write ? "writable" : "readable", kind_name(kind),
                           is_write ? "writable" : "readable");
    }
    sizes = descriptor_sizes(local, n);
    if (sizes == NULL) {
        return ferry__fail(FERRY_ERR_NO_MEMORY, "metadata: out of memory");
    }
    status = ferry_md_sizes_pair(md, sizes, n, msg, sizeof(msg));
    free(sizes);
    if (status != FERRY_OK) {
        return ferry__fail(status, "%s", msg);
    }
    /* The device kinds may differ (host to CUDA and back): UCX moves both,
     * or the staged path does (staged.c). */
    return FERRY_OK;
}

ferry_status_t ferry__metadata_encode(const ferry__metadata_build_t *b, uint8_t **bytes_p,
                                      size_t *len_p)
{
    Ferry__V1__RdmaMetadata md = FERRY__V1__RDMA_METADATA__INIT;
    Ferry__V1__Descriptor *descs;
    Ferry__V1__Descriptor **desc_ptrs;
    Ferry__V1__Device *devices;
    uint8_t *bytes;
    size_t len;

    descs = calloc(b->n, sizeof(*descs));
    desc_ptrs = calloc(b->n, sizeof(*desc_ptrs));
    devices = calloc(b->n, sizeof(*devices));
    if (descs == NULL || desc_ptrs == NULL || devices == NULL) {
        goto err_free_arrays;
    }
    for (size_t i = 0; i < b->n; i++) {
        Ferry__V1__Device dev = FERRY__V1__DEVICE__INIT;
        Ferry__V1__Descriptor d = FERRY__V1__DESCRIPTOR__INIT;
        dev.kind = b->descs[i].device.kind == FERRY_DEVICE_CUDA
                       ? FERRY__V1__DEVICE_KIND__DEVICE_KIND_CUDA
                       : FERRY__V1__DEVICE_KIND__DEVICE_KIND_HOST;
        dev.id = b->descs[i].device.id;
        devices[i] = dev;
        d.address = (uint64_t)(uintptr_t)b->descs[i].ptr;
        d.size = b->descs[i].size;
        d.device = &devices[i];
        if (b->staging == NULL) {
            d.rkey.data = (uint8_t *)b->rkeys[i];
            d.rkey.len = b->rkey_lens[i];
        }
        descs[i] = d;
        desc_ptrs[i] = &descs[i];
    }
    md.version = FERRY_MD_VERSION;
    md.kind = b->kind == FERRY__KIND_WRITABLE ? FERRY__V1__OPERATION_KIND__OPERATION_KIND_WRITE
                                              : FERRY__V1__OPERATION_KIND__OPERATION_KIND_READ;
    md.worker_address.data = (uint8_t *)b->worker_address;
    md.worker_address.len = b->worker_address_len;
    md.n_descriptors = b->n;
    md.descriptors = desc_ptrs;
    md.notification_key.data = (uint8_t *)b->key;
    md.notification_key.len = FERRY__KEY_LEN;
    md.worker_name = (char *)b->worker_name;
    md.hostname = (char *)b->hostname;
    md.peer_error_handling = b->peer_error_handling
                                 ? FERRY__V1__PEER_ERROR_HANDLING__PEER_ERROR_HANDLING_ON
                                 : FERRY__V1__PEER_ERROR_HANDLING__PEER_ERROR_HANDLING_OFF;
    md.staging = (Ferry__V1__Staging *)b->staging;

    len = ferry__v1__rdma_metadata__get_packed_size(&md);
    bytes = malloc(len);
    if (bytes == NULL) {
        goto err_free_arrays;
    }
    ferry__v1__rdma_metadata__pack(&md, bytes);
    free(devices);
    free(desc_ptrs);
    free(descs);
    *bytes_p = bytes;
    *len_p = len;
    return FERRY_OK;

err_free_arrays:
    free(devices);
    free(desc_ptrs);
    free(descs);
    return ferry__fail(FERRY_ERR_NO_MEMORY, "metadata: out of memory packing %zu descriptors",
                       b->n);
}
