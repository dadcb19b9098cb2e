/*
 * fuzz_metadata.c: libferry's RdmaMetadata decoder and matcher
 * (worker/metadata.c): what an active operation does with metadata it got
 * from the coordinator or a side channel before it touches UCX.
 *
 * Input: packed RdmaMetadata bytes.
 *
 * Invariants beyond "no crash": what decodes satisfies metadata.c's stated
 * invariant (kind READ or WRITE, a 16-byte notification key, at least one
 * descriptor, each with address, size, device, and an rkey exactly when
 * there is no staging block; staging, in WRITE or READ metadata, complete);
 * a local list of the same sizes matches exactly the operation kind that
 * pairs with it and no other (FERRY_ERR_KIND_MISMATCH); a list one shorter,
 * or with one size off, never matches (FERRY_ERR_SIZE_MISMATCH).
 */
#include <string.h>

#include "fuzz.h"
#include "worker/ferry_int.h"

static void check_match(const Ferry__V1__RdmaMetadata *md)
{
    bool writable = md->kind == FERRY__V1__OPERATION_KIND__OPERATION_KIND_WRITE;
    ferry__op_kind_t pair = writable ? FERRY__KIND_WRITE : FERRY__KIND_READ;
    ferry__op_kind_t other = writable ? FERRY__KIND_READ : FERRY__KIND_WRITE;
    size_t n = md->n_descriptors;
    ferry_descriptor_t *local = calloc(n, sizeof(*local));

    fuzz_assert(local != NULL);
    for (size_t i = 0; i < n; i++) {
        local[i].size = (size_t)md->descriptors[i]->size;
        local[i].device.kind = FERRY_DEVICE_HOST;
    }
    fuzz_assert(ferry__metadata_match(md, pair, local, n) == FERRY_OK);
    fuzz_assert(ferry__metadata_match(md, other, local, n) == FERRY_ERR_KIND_MISMATCH);
    fuzz_assert(ferry__metadata_match(md, pair, local, n - 1) == FERRY_ERR_SIZE_MISMATCH);
    local[n - 1].size++;
    fuzz_assert(ferry__metadata_match(md, pair, local, n) == FERRY_ERR_SIZE_MISMATCH);
    free(local);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Ferry__V1__RdmaMetadata *md = NULL;

    if (ferry__metadata_decode(data, size, &md) != FERRY_OK) {
        fuzz_assert(md == NULL);
        return 0;
    }
    fuzz_assert(md->kind == FERRY__V1__OPERATION_KIND__OPERATION_KIND_READ ||
                md->kind == FERRY__V1__OPERATION_KIND__OPERATION_KIND_WRITE);
    fuzz_assert(md->notification_key.len == FERRY__KEY_LEN && md->worker_address.len > 0);
    fuzz_assert(md->n_descriptors > 0);
    for (size_t i = 0; i < md->n_descriptors; i++) {
        const Ferry__V1__Descriptor *d = md->descriptors[i];
        fuzz_assert(d->address != 0 && d->size != 0 && d->device != NULL);
        fuzz_assert(md->staging != NULL ? d->rkey.len == 0 : d->rkey.len > 0);
        fuzz_assert(d->device->kind == md->descriptors[0]->device->kind);
    }
    if (md->staging != NULL) {
        fuzz_assert(md->staging->address != 0 && md->staging->slot_size > 0 &&
                    md->staging->slots > 0 && md->staging->rkey.len > 0);
    }
    check_match(md);
    ferry__metadata_free(md);
    return 0;
}
