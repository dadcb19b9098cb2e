/*
 * registry_record.c: the encoding of an operation record in etcd.
 *
 * A record is ferry.v1.Operation as protobuf-c packs it without its
 * metadata, followed by the metadata field (4) holding the bytes the
 * passive worker registered, exactly as its Register request carried them
 * (rpc_pack_with_field). Every write of a record (Register, and each
 * transition) packs it this way from the bytes it read, so the metadata is
 * never decoded and packed again between the passive worker and the
 * writer: what the writer's data plane decodes is what the passive worker
 * packed, byte for byte. Any protobuf decoder reads the record as an
 * ordinary Operation.
 *
 * Threads: pure functions.
 */
#include "registry_int.h"

#include <stdlib.h>
#include <string.h>

#include "rpc/rpc.h"

static uint32_t metadata_field(void)
{
    return rpc_field_number(&ferry__v1__operation__descriptor, "metadata");
}

ferry_status_t registry_record_pack(const Ferry__V1__Operation *op, const uint8_t *md,
                                    size_t md_len, uint8_t **bytes_p, size_t *len_p)
{
    return rpc_pack_with_field(&op->base, metadata_field(), md, md_len, bytes_p, len_p);
}

ferry_status_t registry_record_decode(const uint8_t *bytes, size_t len, coord_record_t *rec)
{
    const uint8_t *md = NULL;
    size_t md_len = 0;
    ferry_status_t status = rpc_field_find(bytes, len, metadata_field(), &md, &md_len);
    Ferry__V1__Operation *op;

    if (status != FERRY_OK && status != FERRY_ERR_NOT_FOUND) {
        return FERRY_ERR_INVALID_ARGUMENT;
    }
    op = ferry__v1__operation__unpack(NULL, len, bytes);
    if (op == NULL) {
        return FERRY_ERR_INVALID_ARGUMENT;
    }
    /* Decoded along with the rest; the bytes are what the record keeps. */
    if (op->metadata != NULL) {
        ferry__v1__rdma_metadata__free_unpacked(op->metadata, NULL);
        op->metadata = NULL;
    }
    rec->md = NULL;
    rec->md_len = md_len;
    if (md != NULL) {
        rec->md = malloc(md_len > 0 ? md_len : 1);
        if (rec->md == NULL) {
            ferry__v1__operation__free_unpacked(op, NULL);
            return FERRY_ERR_NO_MEMORY;
        }
        memcpy(rec->md, md, md_len);
    }
    rec->op = op;
    return FERRY_OK;
}

void coord_record_free(coord_record_t *rec)
{
    if (rec->op != NULL) {
        ferry__v1__operation__free_unpacked(rec->op, NULL);
    }
    free(rec->md);
    rec->op = NULL;
    rec->md = NULL;
    rec->md_len = 0;
}
