/*
 * region.c: memory registered once for many operations (ferry_mem_register,
 * ferry_mem_alloc, ferry_mem_deregister; see ferry/ferry.h for the API and
 * what a region's remote key covers).
 *
 * A region is one ucp_mem_map and one packed remote key, made when it is
 * registered. Operations whose descriptors lie inside it take its memory
 * handle and its packed key instead of mapping their own (op_passive.c,
 * op_active.c); each such operation holds one reference on the region per
 * descriptor (region->ops), and deregistration refuses with FERRY_ERR_BUSY
 * while any is held, so the mapping an operation uses never goes away
 * under it.
 *
 * Invariants: a connector's regions never overlap, so a descriptor lies in
 * at most one; a descriptor is either wholly inside one region or wholly
 * outside all of them (a straddling one is refused, never silently mapped
 * in part). Lookup walks the connector's list: callers register a few large
 * pools, as with NIXL, not one region per buffer.
 *
 * When an operation lets go: a passive one when its memory is released
 * (final or destroyed, ferry__passive_release), or, when it ended after
 * admitting a claimant that has not settled, once that claimant settles
 * (its notice, or its endpoint's failure: op_passive.c); an active one once
 * it is final and no put or get of it is still in flight (its flush
 * completed; on the staged path, every lane's), and in every case when it
 * is freed.
 *
 * Locking: connector->lock guards the list, every region's ops count, and
 * every ucp_* call here (the worker is serialized by that lock). A region's
 * other fields are set before it is published and never change.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "worker/cuda.h"
#include "worker/ferry_int.h"

ucs_status_t ferry__mem_map(ferry_connector_t *c, const ucp_mem_map_params_t *params,
                            ucp_mem_h *memh_p)
{
    ucp_mem_attr_t attr = {.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS};
    ucs_status_t status;

    c->mem_maps++;
    status = ucp_mem_map(c->context, params, memh_p);
    if (status == UCS_OK && (params->field_mask & UCP_MEM_MAP_PARAM_FIELD_FLAGS) &&
        (params->flags & UCP_MEM_MAP_ALLOCATE) && ucp_mem_query(*memh_p, &attr) == UCS_OK) {
        ferry__segment_add_own(c, attr.address);
    }
    return status;
}

void ferry__mem_unmap(ferry_connector_t *c, ucp_mem_h memh)
{
    ucp_mem_attr_t attr = {.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS};

    if (ucp_mem_query(memh, &attr) == UCS_OK) {
        ferry__segment_drop_own(attr.address);
    }
    ucp_mem_unmap(c->context, memh);
}

/* Whether [p, p + n) and [b, b + s) share a byte (no overflow). */
static bool overlaps(uintptr_t p, size_t n, uintptr_t b, size_t s)
{
    return p >= b ? p - b < s : b - p < n;
}

/* Whether [p, p + n) lies inside [b, b + s) (no overflow). */
static bool inside(uintptr_t p, size_t n, uintptr_t b, size_t s)
{
    return p >= b && p - b <= s && n <= s - (p - b);
}

static ferry_region_t *find_overlap(ferry_connector_t *c, const void *ptr, size_t size)
{
    for (ferry_region_t *r = c->regions; r != NULL; r = r->next) {
        if (overlaps((uintptr_t)ptr, size, (uintptr_t)r->base, r->size)) {
            return r;
        }
    }
    return NULL;
}

ferry_status_t ferry__op_regions_attach(ferry_op_t *op)
{
    ferry_connector_t *c = op->connector;
    ferry_region_t *r;

    if (c->regions == NULL) {
        return FERRY_OK; /* op->regions stays NULL: nothing registered */
    }
    op->regions = calloc(op->n, sizeof(*op->regions));
    if (op->regions == NULL) {
        return ferry__fail(FERRY_ERR_NO_MEMORY, "%s: out of memory", op->label);
    }
    for (size_t i = 0; i < op->n; i++) {
        const ferry_descriptor_t *d = &op->descs[i];
        r = find_overlap(c, d->ptr, d->size);
        if (r == NULL) {
            continue;
        }
        if (!inside((uintptr_t)d->ptr, d->size, (uintptr_t)r->base, r->size)) {
            memset(op->regions, 0, op->n * sizeof(*op->regions));
            return ferry__fail(FERRY_ERR_INVALID_ARGUMENT,
                               "descriptor %zu [%p, +%zu) straddles the edge of registered "
                               "region %" PRIu64 " [%p, +%zu): a descriptor must lie wholly "
                               "inside one region or outside every region",
                               i, d->ptr, d->size, r->id, (void *)r->base, r->size);
        }
        if (d->device.kind != r->device.kind || d->device.id != r->device.id) {
            memset(op->regions, 0, op->n * sizeof(*op->regions));
            return ferry__fail(FERRY_ERR_INVALID_ARGUMENT,
                               "descriptor %zu: its device differs from that of registered "
                               "region %" PRIu64 ", which holds its memory",
                               i, r->id);
        }
        op->regions[i] = r;
    }
    for (size_t i = 0; i < op->n; i++) {
        if (op->regions[i] != NULL) {
            op->regions[i]->ops++;
        }
    }
    op->regions_held = true;
    return FERRY_OK;
}

void ferry__op_regions_detach(ferry_op_t *op)
{
    if (!op->regions_held) {
        return;
    }
    for (size_t i = 0; i < op->n; i++) {
        if (op->regions[i] != NULL) {
            op->regions[i]->ops--;
        }
    }
    op->regions_held = false;
}

bool ferry_op_in_region(const ferry_op_t *op, size_t index)
{
    /* op->regions is written while the operation is made, before any
     * caller sees it, and never changes: read without the lock. */
    return op != NULL && op->regions != NULL && index < op->n && op->regions[index] != NULL;
}

/* Maps (or allocates and maps) and packs the key; lock held. */
static ferry_status_t region_map(ferry_connector_t *c, ferry_region_t *r, bool allocate)
{
    ucp_mem_map_params_t params = {0};
    ucp_mem_attr_t attr = {0};
    ucs_status_t status;
    const char *what;

    params.field_mask = UCP_MEM_MAP_PARAM_FIELD_LENGTH | UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE;
    params.length = r->size;
    params.memory_type =
        r->device.kind == FERRY_DEVICE_CUDA ? UCS_MEMORY_TYPE_CUDA : UCS_MEMORY_TYPE_HOST;
    if (allocate) {
        params.field_mask |= UCP_MEM_MAP_PARAM_FIELD_FLAGS;
        params.flags = UCP_MEM_MAP_ALLOCATE;
    } else {
        params.field_mask |= UCP_MEM_MAP_PARAM_FIELD_ADDRESS;
        params.address = r->base;
    }
    if (r->device.kind == FERRY_DEVICE_CUDA && ferry__cuda_push(r->device.id) != FERRY_OK) {
        return ferry__fail(FERRY_ERR_INTERNAL, "connector %s: region: %s", c->name,
                           ferry_last_error_message());
    }
    status = ferry__mem_map(c, &params, &r->memh);
    if (status != UCS_OK) {
        what = "ucp_mem_map";
        goto err;
    }
    if (allocate) {
        attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS | UCP_MEM_ATTR_FIELD_LENGTH;
        status = ucp_mem_query(r->memh, &attr);
        if (status != UCS_OK) {
            what = "ucp_mem_query";
            goto err_unmap;
        }
        r->base = attr.address;
    }
    status = ucp_rkey_pack(c->context, r->memh, &r->rkey, &r->rkey_len);
    if (status != UCS_OK) {
        what = "ucp_rkey_pack";
        goto err_unmap;
    }
    if (r->device.kind == FERRY_DEVICE_CUDA) {
        ferry__cuda_pop();
    }
    return FERRY_OK;

err_unmap:
    ferry__mem_unmap(c, r->memh);
err:
    if (r->device.kind == FERRY_DEVICE_CUDA) {
        ferry__cuda_pop();
    }
    ferry_error("connector %s: region of %zu bytes: %s: %s", c->name, r->size, what,
                ucs_status_string(status));
    return ferry__fail(
        allocate && status == UCS_ERR_NO_MEMORY ? FERRY_ERR_NO_MEMORY : FERRY_ERR_TRANSPORT,
        "connector %s: cannot %s %zu bytes (%s): %s", c->name, allocate ? "allocate" : "register",
        r->size, what, ucs_status_string(status));
}

static ferry_status_t region_create(ferry_connector_t *c, void *ptr, size_t size,
                                    ferry_device_t device, bool allocate, ferry_region_t **region_p)
{
    ferry_region_t *r, *other;
    ferry_status_t status;

    r = calloc(1, sizeof(*r));
    if (r == NULL) {
        return ferry__fail(FERRY_ERR_NO_MEMORY, "connector %s: region: out of memory", c->name);
    }
    r->connector = c;
    r->base = ptr;
    r->size = size;
    r->device = device;
    r->allocated = allocate;
    ferry__lock(c);
    other = allocate ? NULL : find_overlap(c, ptr, size);
    if (other != NULL) {
        status = ferry__fail(FERRY_ERR_ALREADY_EXISTS,
                             "region [%p, +%zu) overlaps registered region %" PRIu64
                             " [%p, +%zu): regions of one connector must not overlap",
                             ptr, size, other->id, (void *)other->base, other->size);
        goto err_unlock;
    }
    status = region_map(c, r, allocate);
    if (status != FERRY_OK) {
        goto err_unlock;
    }
    r->id = ++c->next_region_id;
    r->next = c->regions;
    c->regions = r;
    ferry__unlock(c);
    ferry_debug("connector %s: region %" PRIu64 " %s: %zu bytes at %p, %zu-byte key", c->name,
                r->id, allocate ? "allocated" : "registered", r->size, (void *)r->base,
                r->rkey_len);
    *region_p = r;
    return FERRY_OK;

err_unlock:
    ferry__unlock(c);
    free(r);
    return status;
}

/* The checks both constructors share: one descriptor's rules (one
 * validator), and CUDA only where UCX can register it. */
static ferry_status_t check_memory(ferry_connector_t *c, void *ptr, size_t size,
                                   ferry_device_t device)
{
    ferry_descriptor_t d = {ptr, size, device};
    ferry_status_t status = ferry_descriptors_validate(&d, 1);

    if (status != FERRY_OK) {
        return ferry__fail(status, "region: %s", ferry_last_error_message());
    }
    if (device.kind == FERRY_DEVICE_CUDA && !c->cuda_available) {
        return ferry__fail(FERRY_ERR_UNIMPLEMENTED, "connector %s: CUDA regions are refused: %s",
                           c->name, ferry__cuda_why());
    }
    if (device.kind == FERRY_DEVICE_CUDA && !c->ucx_cuda) {
        return ferry__fail(FERRY_ERR_UNIMPLEMENTED,
                           "connector %s: CUDA regions need the direct path, and %s; CUDA "
                           "regions are refused",
                           c->name,
                           c->ucx_reports_cuda
                               ? "the direct path is off (the cuda_direct param, or "
                                 "FERRY_CUDA_DIRECT=1 where it is unset)"
                               : "this UCX build cannot register CUDA memory (no CUDA transports)");
    }
    return FERRY_OK;
}

ferry_status_t ferry_mem_register(ferry_connector_t *c, void *ptr, size_t size,
                                  ferry_device_t device, ferry_region_t **region_p)
{
    ferry_status_t status;

    ferry__clear_error();
    if (c == NULL || region_p == NULL) {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT,
                           "mem_register: connector and region_p are required");
    }
    status = check_memory(c, ptr, size, device);
    if (status == FERRY_OK && c->cuda_available) {
        /* As an operation's descriptors (ferry__cuda_admit): cuda:N is
         * device memory of N, cpu is not device memory. */
        ferry_descriptor_t d = {ptr, size, device};
        status = ferry__cuda_check_descriptors(&d, 1);
        if (status != FERRY_OK) {
            status = ferry__fail(status, "region: %s", ferry_last_error_message());
        }
    }
    if (status != FERRY_OK) {
        return status;
    }
    return region_create(c, ptr, size, device, false, region_p);
}

/* The number in `dir`/`name` (a cgroup's limit file), or 0 when it cannot
 * be read or says "max" (no limit). */
static uint64_t cgroup_number(const char *root, const char *path, const char *name)
{
    char file[4096], text[64];
    FILE *f;
    uint64_t v = 0;

    if ((size_t)snprintf(file, sizeof(file), "%s%s/%s", root, strcmp(path, "/") == 0 ? "" : path,
                         name) >= sizeof(file) ||
        (f = fopen(file, "re")) == NULL) {
        return 0;
    }
    if (fgets(text, sizeof(text), f) != NULL && text[0] >= '0' && text[0] <= '9') {
        v = strtoull(text, NULL, 10);
    }
    fclose(f);
    return v;
}

/* The smallest limit in `name` of the cgroup at `path` (cut in place) and
 * of its ancestors, up to the hierarchy's root: a parent's limit bounds its
 * children too. 0: none. */
static uint64_t cgroup_limit_up(const char *root, char *path, const char *name)
{
    uint64_t limit = 0;

    for (;;) {
        uint64_t v = cgroup_number(root, path, name);
        char *slash = strrchr(path, '/');

        if (v > 0 && v < ((uint64_t)1 << 62) && (limit == 0 || v < limit)) {
            limit = v; /* v1 says "no limit" with a number near 2^63 */
        }
        if (slash == NULL || (slash == path && path[1] == '\0')) {
            return limit;
        }
        slash[slash == path ? 1 : 0] = '\0';
    }
}

uint64_t ferry__cgroup_memory_limit(const char *proc_cgroup, const char *root)
{
    char line[4096], v1_root[4096];
    uint64_t limit = 0;
    FILE *f = fopen(proc_cgroup, "re");

    if (f == NULL) {
        return 0;
    }
    snprintf(v1_root, sizeof(v1_root), "%s/memory", root);
    while (fgets(line, sizeof(line), f) != NULL) {
        /* "0::<path>" (v2), or "<n>:<controllers>:<path>" with memory among
         * the controllers (v1). Inside a container's cgroup namespace the
         * path is "/" and its own cgroup is at the root. */
        char *ctrl = strchr(line, ':'), *path = ctrl != NULL ? strchr(ctrl + 1, ':') : NULL;
        uint64_t v = 0;

        if (path == NULL) {
            continue;
        }
        *path++ = '\0';
        path[strcspn(path, "\n")] = '\0';
        ctrl++;
        if (path[0] != '/') {
            continue;
        }
        if (ctrl[0] == '\0') {
            v = cgroup_limit_up(root, path, "memory.max");
        } else if (strcmp(ctrl, "memory") == 0 || strstr(ctrl, "memory,") == ctrl ||
                   strstr(ctrl, ",memory") != NULL) {
            v = cgroup_limit_up(v1_root, path, "memory.limit_in_bytes");
        }
        if (v > 0 && (limit == 0 || v < limit)) {
            limit = v;
        }
    }
    fclose(f);
    return limit;
}

/* More than the machine's memory, or the process's cgroup's limit (a
 * container's), can never be had, and asking UCX for it is harmful: UCX
 * 1.13 takes such memory from a shared-memory file (/dev/shm) that it
 * fills page by page, so the request exhausts memory and the OOM killer
 * ends the process (or another one) before UCX fails and removes the
 * file, which then stays behind holding the memory. */
static ferry_status_t check_alloc_size(size_t size)
{
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    uint64_t limit = ferry__cgroup_memory_limit("/proc/self/cgroup", "/sys/fs/cgroup");

    if (pages > 0 && page > 0 && size / (size_t)page >= (size_t)pages) {
        return ferry__fail(FERRY_ERR_NO_MEMORY,
                           "mem_alloc: %zu bytes is not less than the machine's memory (%zu "
                           "bytes)",
                           size, (size_t)pages * (size_t)page);
    }
    if (limit > 0 && size >= limit) {
        return ferry__fail(FERRY_ERR_NO_MEMORY,
                           "mem_alloc: %zu bytes is not less than this process's memory limit "
                           "(its cgroup's: %" PRIu64 " bytes)",
                           size, limit);
    }
    return FERRY_OK;
}

/* Device memory (cuMemAlloc on the device's primary context), zeroed, as
 * one region that frees it on deregister. UCX's CUDA transports read and
 * write it directly (cuda_ipc between processes of one host, cuda_copy
 * otherwise), as they do memory the caller registers. */
static ferry_status_t alloc_cuda(ferry_connector_t *c, size_t size, ferry_device_t device,
                                 ferry_region_t **region_p, void **ptr_p)
{
    ferry_region_t *r = NULL;
    void *ptr = NULL;
    ferry_status_t status = ferry__cuda_mem_alloc(device.id, size, &ptr);

    if (status == FERRY_OK) {
        status = ferry__cuda_mem_zero(device.id, ptr, size);
    }
    if (status == FERRY_OK) {
        status = region_create(c, ptr, size, device, false, &r);
    }
    if (status != FERRY_OK) {
        ferry__cuda_mem_free(device.id, ptr); /* NULL: nothing */
        return status;
    }
    r->cuda_owned = true;
    *region_p = r;
    *ptr_p = ptr;
    return FERRY_OK;
}

ferry_status_t ferry_mem_alloc(ferry_connector_t *c, size_t size, ferry_device_t device,
                               ferry_region_t **region_p, void **ptr_p)
{
    ferry_region_t *r;
    ferry_status_t status;

    ferry__clear_error();
    if (c == NULL || region_p == NULL || ptr_p == NULL) {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT,
                           "mem_alloc: connector, region_p and ptr_p are required");
    }
    /* Any non-NULL pointer passes the descriptor check; the memory is ours. */
    status = check_memory(c, (void *)1, size, device);
    if (status != FERRY_OK) {
        return status;
    }
    if (device.kind == FERRY_DEVICE_CUDA) {
        return alloc_cuda(c, size, device, region_p, ptr_p);
    }
    status = check_alloc_size(size);
    if (status != FERRY_OK) {
        return status;
    }
    status = region_create(c, NULL, size, device, true, &r);
    if (status != FERRY_OK) {
        return status;
    }
    /* Zeroed, and touched now rather than inside a timed transfer. */
    memset(r->base, 0, r->size);
    *region_p = r;
    *ptr_p = r->base;
    return FERRY_OK;
}

ferry_status_t ferry_mem_deregister(ferry_region_t *r)
{
    ferry_connector_t *c;
    ferry_region_t **pp;
    unsigned ops;

    ferry__clear_error();
    if (r == NULL) {
        return FERRY_OK;
    }
    c = r->connector;
    ferry__lock(c);
    ops = r->ops;
    if (ops > 0) {
        ferry__unlock(c);
        return ferry__fail(FERRY_ERR_BUSY,
                           "region %" PRIu64 ": %u operation descriptors still use it; destroy "
                           "or finish those operations first",
                           r->id, ops);
    }
    for (pp = &c->regions; *pp != r; pp = &(*pp)->next) {
    }
    *pp = r->next;
    ucp_rkey_buffer_release(r->rkey);
    if (r->device.kind != FERRY_DEVICE_CUDA) {
        ferry__mem_unmap(c, r->memh);
    } else if (ferry__cuda_push(r->device.id) == FERRY_OK) {
        ferry__mem_unmap(c, r->memh);
        ferry__cuda_pop();
    }
    ferry__unlock(c);
    if (r->cuda_owned) {
        ferry__cuda_mem_free(r->device.id, r->base);
    }
    ferry_debug("connector %s: region %" PRIu64 " deregistered", c->name, r->id);
    free(r);
    return FERRY_OK;
}
