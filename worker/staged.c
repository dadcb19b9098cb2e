/*
 * staged.c: the staged path. Memory UCX cannot register (CUDA memory where
 * this UCX has no CUDA transports) moves through pinned host buffers, in
 * chunks, with the copies to and from the device overlapped with the
 * network transfers. The copies go through a copy engine (copy_engine.h):
 * the CUDA one on a GPU, the host one in CI, so every line here runs in CI.
 * The passive side's slots are memory UCX allocated, kept in a pool per
 * connector between operations (slot memory, below).
 *
 * Chunks: the descriptors are cut, in order, into chunks of at most
 * slot_size bytes (the last chunk of each descriptor is shorter when
 * slot_size does not divide it). A chunk never spans two descriptors. The
 * passive side accepts exactly these chunks, each once (lanes finish out of
 * order, so in any order): a writer that repeats one, or sends another
 * length or offset, is refused (PROTOCOL), so that a writable completes only
 * when every byte of it was written, not merely as many bytes.
 *
 * Lanes: the pipeline has `lanes` lanes (the passive side's slot count when
 * it stages, else the local default); lane i owns local slot i and remote
 * slot i. Each lane carries one chunk at a time through these steps
 * (at least two lanes: while one lane's chunk crosses the network another's
 * is being copied, which is the overlap):
 *
 *   active write:  IDLE -> [COPY_IN: engine, my memory -> my slot i]
 *                       -> XFER: put (from my slot or my memory) to the
 *                          passive slot i or straight to its memory, flush
 *                       -> [CREDIT: CHUNK sent, until the passive side
 *                          gives slot i back] -> IDLE
 *   active read:   IDLE -> [CREDIT: CHUNK sent, until the passive side
 *                          says slot i holds it]
 *                       -> XFER: get (into my slot or my memory) from the
 *                          passive slot i or straight from its memory, flush
 *                       -> [COPY_OUT: engine, my slot -> my memory] -> IDLE
 *   Where the passive side's slots are mapped into this process (one node,
 *   shared memory: map_remote), "my slot i" is its slot i: the engine
 *   copies into it and the CHUNK goes at once (a write), or copies out of
 *   it once the CREDIT says it holds the chunk (a read); no XFER.
 *   passive write: on CHUNK for slot i: COPY_OUT: engine, slot i -> my
 *                  memory; then CREDIT back (the slot is free) -> IDLE
 *   passive read:  on CHUNK for slot i: COPY_IN: engine, my memory -> slot
 *                  i; then CREDIT back (the slot holds it) -> IDLE. The
 *                  reader asks for slot i again only after its get from it
 *                  was flushed, so a slot is never refilled while read.
 *
 * Back-pressure is the lanes: a chunk waits for a free lane, so at most
 * `lanes` chunks are in flight and no slot is reused before its bytes left
 * it. When every chunk is done the active side flushes and sends the usual
 * NOTICE (op_active.c); the passive operation completes only when the
 * notice has come and every byte has landed in its memory (a readable:
 * when the notice has come, which the reader sends only once it has every
 * byte). An active read completes only when every byte is in its memory.
 *
 * Midway ends: an active operation that becomes final (cancel, an engine
 * error, a refused chunk) starts no new step; once no put/get is in flight
 * (settle) it owes the passive side a NOTICE with its status, as on the
 * direct path; where it copies into or out of the passive side's mapped
 * slots, its engine is synced first, since those copies reach them as a
 * put or get would. Until then it also keeps its regions (data_in_flight is set
 * while in_xfer > 0): a lane's put or get may read or write the caller's
 * memory directly until its flush completes. A passive operation that
 * becomes final while a claimant is admitted sends it a CREDIT with the
 * error, which stops the writer or reader.
 * Engine copies in flight are waited for (sync) before any buffer they
 * touch is freed. A stopped claimant still settles (its NOTICE once nothing
 * of it is on the wire): a passive operation that ends before that keeps
 * its slots mapped on connector->stale until that notice comes (or the
 * connector is destroyed), since a put or get still in flight to them
 * would otherwise fault this process where UCX emulates RMA (tcp). A
 * claimant killed midway never sends that notice: with peer error handling
 * its endpoint's failure frees them instead (nothing more of it can reach
 * them); without it they stay until destroy.
 *
 * The passive side answers with CREDITs on an endpoint to the admitted
 * claimant, opened by the loop after admission (op_passive.c) from the
 * claim's address: the claimant holds the metadata (the capability), the
 * same trust as peer error handling's endpoint.
 *
 * Threads: everything under connector->lock, in the progress loop or in a
 * caller's begin/create. The loop polls engines (ferry__staged_progress) and
 * does not sleep while any copy is in flight (engines have no fd).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "worker/copy_engine.h"
#include "worker/cuda.h"
#include "worker/ferry_int.h"

#define DEFAULT_CHUNK (4u << 20)
#define DEFAULT_LANES 4u
#define LOCAL_MAX     (256ull << 20) /* pinned bytes a writer lends one operation */

ferry__test_staging_t ferry__test_staging;

typedef enum {
    LANE_IDLE = 0,
    LANE_COPY_IN,  /* engine: memory -> slot (active write, passive read) */
    LANE_XFER,     /* put/get and its flush in flight */
    LANE_CREDIT,   /* CHUNK sent; waiting for the slot back (write) or full (read) */
    LANE_COPY_OUT, /* engine: slot -> memory (active read, passive) */
} lane_state_t;

typedef struct {
    lane_state_t state;
    uint64_t ticket; /* COPY_IN, COPY_OUT */
    uint32_t desc;
    uint64_t offset;
    uint64_t len;
} lane_t;

struct ferry__stage {
    ferry__copy_engine_t *engine; /* NULL: the local side is direct */
    uint8_t *slots;               /* lanes * slot_size pinned bytes (with engine) */
    size_t slot_size;
    unsigned lanes;
    /* Passive. */
    struct ferry__slot_mem *mem; /* the slots' memory (slots is its base) */
    size_t dirty;                /* bytes of it a peer or we may have written */
    uint64_t total;              /* bytes of all descriptors */
    uint64_t landed;             /* bytes copied into them (a readable: out of them) */
    /* The chunks as the active side cuts them (the file comment): those of
     * descriptor i are first_chunk[i] to first_chunk[i + 1] - 1 (n + 1
     * entries); taken has a bit per chunk, set when a CHUNK for it is
     * accepted, so that each is accepted once and landed == total means
     * every byte landed, not as many bytes. */
    uint64_t *first_chunk;
    uint8_t *taken;
    bool notice_ok;
    bool claimant_settled;       /* its notice came: nothing of it reaches the slots */
    uint8_t key[FERRY__KEY_LEN]; /* stale: whose slots these were */
    uint8_t nonce[FERRY__NONCE_LEN];
    ferry__peer_t *claimant;         /* stale: its endpoint (a reference), or NULL */
    struct ferry__stage *stale_next; /* connector->stale */
    bool notice_queued;              /* stale: a notice that settles it is in the inbox */
    /* Active. */
    bool remote;          /* the passive side stages: lanes map to its slots */
    bool mapped;          /* slots are the passive side's, mapped here */
    uint64_t remote_addr; /* its slot 0 */
    ferry__rkey_t *rkey;  /* its slot region */
    uint32_t next_desc;   /* the next chunk to start */
    uint64_t next_offset;
    unsigned in_xfer; /* lanes in XFER */
    bool started;     /* admitted: lanes may be on the wire */
    bool flushed;     /* every chunk done; the final flush posted */
    bool settled;     /* the owed notice (after an early end) is out */
    lane_t lane[];
};

static size_t test_chunk(void)
{
    size_t chunk = atomic_load(&ferry__test_staging.chunk);
    return chunk != 0 ? chunk : DEFAULT_CHUNK;
}

static unsigned test_lanes(void)
{
    unsigned lanes = atomic_load(&ferry__test_staging.slots);
    return lanes != 0 ? lanes : DEFAULT_LANES;
}

bool ferry__staged_wanted(const ferry_connector_t *c, const ferry_descriptor_t *descs)
{
    if (atomic_load(&ferry__test_staging.force)) {
        return true;
    }
    return descs[0].device.kind == FERRY_DEVICE_CUDA && !c->ucx_cuda;
}

ferry_status_t ferry__cuda_admit(ferry_connector_t *c, const ferry_descriptor_t *descs, size_t n)
{
    ferry_status_t status;

    if (descs[0].device.kind != FERRY_DEVICE_CUDA) {
        return c->cuda_available ? ferry__cuda_check_descriptors(descs, n) : FERRY_OK;
    }
    if (!c->cuda_available) {
        return ferry__fail(FERRY_ERR_UNIMPLEMENTED, "connector %s: CUDA descriptors refused: %s",
                           c->name, ferry__cuda_why());
    }
    status = ferry__cuda_check_descriptors(descs, n);
    if (status == FERRY_OK && c->ucx_cuda) {
        int32_t none = -1;
        atomic_compare_exchange_strong(&c->cuda_progress_device, &none,
                                       (int32_t)descs[0].device.id);
    }
    return status;
}

ferry_status_t ferry__staged_check_remote(const ferry_connector_t *c,
                                          const Ferry__V1__RdmaMetadata *md)
{
    const Ferry__V1__Device *dev = md->descriptors[0]->device;

    if (md->staging == NULL && dev->kind == FERRY__V1__DEVICE_KIND__DEVICE_KIND_CUDA &&
        !c->ucx_cuda) {
        return ferry__fail(FERRY_ERR_UNIMPLEMENTED,
                           "metadata: the passive side registered CUDA memory for UCX's CUDA "
                           "transports (the direct path), which this connector does not take "
                           "(%s)",
                           c->ucx_reports_cuda ? "the direct path is off (the cuda_direct param, "
                                                 "or FERRY_CUDA_DIRECT=1 where it is unset)"
                                               : "its UCX has no CUDA transports");
    }
    return FERRY_OK;
}

/* A chunk size: at most the default, at most the largest descriptor. */
static size_t chunk_for(const ferry_descriptor_t *descs, size_t n)
{
    size_t largest = 0;

    for (size_t i = 0; i < n; i++) {
        largest = descs[i].size > largest ? descs[i].size : largest;
    }
    return test_chunk() < largest ? test_chunk() : largest;
}

/* ---- slot memory ---------------------------------------------------------- */

/* A passive side's slots: memory UCX allocates (UCP_MEM_MAP_ALLOCATE), so
 * that UCX 1.13's shared-memory transports put into it and get from it
 * directly (a segment the peer maps), where memory the caller allocated is
 * written through active messages, two copies (issue #14: 46-48 against
 * 8-9 GB/s at 1 MiB on the 2-core VM); pinned by the engine (a CUDA
 * engine: cuMemHostRegister) so that the copies to and from the device run
 * at full speed. Where UCX cannot allocate it or the engine cannot pin it,
 * the engine's pinned memory registered with UCX instead (as before
 * 2026-12-04).
 *
 * Allocating, pinning, registering and faulting in 16 MiB cost
 * milliseconds per operation, so a freed set goes back to
 * connector->slot_pool for the next passive op of the same size and engine
 * (at most FERRY__SLOT_POOL_BYTES in all, the rest is freed). It goes
 * back only when its op's slots would be freed anyway: its claimant settled
 * or its endpoint failed (the stale list below). What a peer or this side
 * may have written into it (dirty: the slots an honest peer's lanes take,
 * and any higher one a CHUNK named) is zeroed first, so that the next
 * operation's peer, who may read any slot with the key, finds nothing of
 * this one's data. A peer once admitted may still write into a set after
 * it returned to the pool, as into a region (ferry.h: on shared memory and
 * TCP the claim step, not the key, keeps Ferry's writers out); the packed key is
 * the same for every operation on the set, so the writer's key cache
 * unpacks it once (and, where the set is mapped into the writer, the
 * writer pins it once: map_remote). */
struct ferry__slot_mem {
    struct ferry__slot_mem *next; /* connector->slot_pool */
    uint8_t *base;
    size_t size;
    ucp_mem_h memh;
    void *rkey; /* packed once */
    size_t rkey_len;
    bool allocated;                         /* by UCX; else by the engine's alloc_pinned */
    const ferry__copy_engine_ops_t *engine; /* whose copies it serves */
    uint32_t device;                        /* for whose copies */
    ferry__pin_t pin;                       /* UCX's memory, pinned by the engine */
};

/* UCX allocates m->size bytes, the engine pins them; lock held. */
static ferry_status_t slot_mem_allocate(ferry_connector_t *c, ferry__copy_engine_t *e,
                                        struct ferry__slot_mem *m)
{
    ucp_mem_map_params_t params = {0};
    ucp_mem_attr_t attr = {0};
    ucs_status_t us;
    ferry_status_t status;

    params.field_mask = UCP_MEM_MAP_PARAM_FIELD_LENGTH | UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE |
                        UCP_MEM_MAP_PARAM_FIELD_FLAGS;
    params.length = m->size;
    params.memory_type = UCS_MEMORY_TYPE_HOST;
    params.flags = UCP_MEM_MAP_ALLOCATE;
    us = ferry__mem_map(c, &params, &m->memh);
    if (us != UCS_OK) {
        return ferry__fail(FERRY_ERR_TRANSPORT, "ucp_mem_map (allocate): %s",
                           ucs_status_string(us));
    }
    attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS;
    us = ucp_mem_query(m->memh, &attr);
    if (us != UCS_OK) {
        ferry__mem_unmap(c, m->memh);
        return ferry__fail(FERRY_ERR_TRANSPORT, "ucp_mem_query: %s", ucs_status_string(us));
    }
    m->base = attr.address;
    status = ferry__pin(e, m->device, m->base, m->size, &m->pin);
    if (status != FERRY_OK) {
        ferry__mem_unmap(c, m->memh);
        return status;
    }
    m->allocated = true;
    return FERRY_OK;
}

/* The engine's pinned memory, registered with UCX; lock held. */
static ferry_status_t slot_mem_engine(ferry_connector_t *c, ferry__copy_engine_t *e,
                                      struct ferry__slot_mem *m)
{
    ucp_mem_map_params_t params = {0};
    void *p = NULL;
    ucs_status_t us;
    ferry_status_t status = e->ops->alloc_pinned(e, m->size, &p);

    if (status != FERRY_OK) {
        return status;
    }
    params.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                        UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE;
    params.address = p;
    params.length = m->size;
    params.memory_type = UCS_MEMORY_TYPE_HOST;
    us = ferry__mem_map(c, &params, &m->memh);
    if (us != UCS_OK) {
        e->ops->free_pinned(e, p, m->size, false);
        return ferry__fail(FERRY_ERR_TRANSPORT, "ucp_mem_map: %s", ucs_status_string(us));
    }
    m->base = p;
    return FERRY_OK;
}

/* Frees m (its engine may be gone: copy_engine.h). */
static void slot_mem_free(ferry_connector_t *c, struct ferry__slot_mem *m)
{
    if (m->rkey != NULL) {
        ucp_rkey_buffer_release(m->rkey);
    }
    ferry__unpin(&m->pin);
    ferry__mem_unmap(c, m->memh);
    if (!m->allocated) {
        m->engine->free_pinned(NULL, m->base, m->size, false);
    }
    free(m);
}

/* Slot memory of size bytes for op's stage (its engine made), from the
 * pool or new; lock held. */
static ferry_status_t slot_mem_take(ferry_op_t *op, size_t size, struct ferry__slot_mem **mem_p)
{
    ferry_connector_t *c = op->connector;
    ferry__copy_engine_t *e = op->stage->engine;
    struct ferry__slot_mem *m;
    ucs_status_t us;
    ferry_status_t status;

    for (struct ferry__slot_mem **pp = &c->slot_pool; *pp != NULL; pp = &(*pp)->next) {
        if ((*pp)->size == size && (*pp)->engine == e->ops) {
            m = *pp;
            *pp = m->next;
            m->next = NULL;
            c->slot_pool_bytes -= size;
            *mem_p = m;
            return FERRY_OK;
        }
    }
    m = calloc(1, sizeof(*m));
    if (m == NULL) {
        return ferry__fail(FERRY_ERR_NO_MEMORY, "%s: out of memory for staging", op->label);
    }
    m->size = size;
    m->engine = e->ops;
    m->device = op->descs[0].device.id;
    status = slot_mem_allocate(c, e, m);
    if (status != FERRY_OK) {
        ferry_info("%s: staging slots UCX allocates: %s; taking the %s engine's pinned memory",
                   op->label, ferry_last_error_message(), e->ops->name);
        status = slot_mem_engine(c, e, m);
    }
    if (status != FERRY_OK) {
        free(m);
        return ferry__fail(status, "%s: cannot allocate the staging slots: %s", op->label,
                           ferry_last_error_message());
    }
    us = ucp_rkey_pack(c->context, m->memh, &m->rkey, &m->rkey_len);
    if (us != UCS_OK) {
        m->rkey = NULL;
        slot_mem_free(c, m);
        ferry_error("%s: packing the staging slots' key: %s", op->label, ucs_status_string(us));
        return ferry__fail(FERRY_ERR_TRANSPORT, "%s: cannot pack the staging slots' key: %s",
                           op->label, ucs_status_string(us));
    }
    *mem_p = m;
    return FERRY_OK;
}

/* Gives m back to the pool (dirty bytes zeroed) or frees it; the engine
 * that copied to and from it synced. */
static void slot_mem_give(ferry_connector_t *c, struct ferry__slot_mem *m, size_t dirty)
{
    if (c->slot_pool_bytes + m->size <= FERRY__SLOT_POOL_BYTES) {
        memset(m->base, 0, dirty < m->size ? dirty : m->size);
        m->next = c->slot_pool;
        c->slot_pool = m;
        c->slot_pool_bytes += m->size;
        return;
    }
    slot_mem_free(c, m);
}

/* ---- stages ---------------------------------------------------------------- */

/* A stage of lanes slots of slot_size bytes; engine: the local side copies
 * (an engine), slots: and needs local slots (the active side's). */
static ferry_status_t stage_alloc(ferry_op_t *op, unsigned lanes, size_t slot_size, bool engine,
                                  bool slots)
{
    struct ferry__stage *s = calloc(1, sizeof(*s) + lanes * sizeof(lane_t));
    ferry_status_t status;

    if (s == NULL) {
        return ferry__fail(FERRY_ERR_NO_MEMORY, "%s: out of memory for staging", op->label);
    }
    s->lanes = lanes;
    s->slot_size = slot_size;
    op->stage = s;
    if (!engine) {
        return FERRY_OK;
    }
    status = ferry__copy_engine_create(op->descs[0].device, &s->engine);
    if (status == FERRY_OK && slots) {
        status =
            s->engine->ops->alloc_pinned(s->engine, (size_t)lanes * slot_size, (void **)&s->slots);
        if (status != FERRY_OK) {
            ferry__copy_engine_destroy(s->engine);
            s->engine = NULL;
        }
    }
    if (status != FERRY_OK) {
        free(s);
        op->stage = NULL;
        return ferry__fail(status, "%s: staging: %s", op->label, ferry_last_error_message());
    }
    ferry_debug("%s: staged through %u slots of %zu bytes (%s engine)", op->label, lanes, slot_size,
                s->engine->ops->name);
    return FERRY_OK;
}

/* Lock held. The op leaves connector->staged when the next progress pass
 * finds nothing of it in flight. */
static void watch(ferry_op_t *op)
{
    ferry_connector_t *c = op->connector;

    if (!op->in_staged) {
        op->in_staged = true;
        op->stage_next = c->staged;
        c->staged = op;
        ferry__op_ref(op);
    }
}

static uint8_t *slot_of(const struct ferry__stage *s, unsigned lane)
{
    return s->slots + (size_t)lane * s->slot_size;
}

/* Frees the slots (engine synced) and the stage; keep: see free_pinned.
 * A passive stage's slot memory goes back to the pool. */
static void stage_free(ferry_connector_t *c, struct ferry__stage *s, bool keep)
{
    if (s->mem != NULL) {
        slot_mem_give(c, s->mem, s->dirty);
    } else if (s->engine != NULL && !s->mapped) {
        s->engine->ops->free_pinned(s->engine, s->slots, (size_t)s->lanes * s->slot_size, keep);
    }
    ferry__copy_engine_destroy(s->engine);
    free(s->first_chunk);
    free(s->taken);
    free(s);
}

/* ---- passive ------------------------------------------------------------ */

/* The passive stage's chunk map (first_chunk, taken). */
static ferry_status_t chunks_alloc(ferry_op_t *op)
{
    struct ferry__stage *s = op->stage;
    uint64_t n_chunks = 0;

    s->first_chunk = calloc(op->n + 1, sizeof(*s->first_chunk));
    for (size_t i = 0; s->first_chunk != NULL && i <= op->n; i++) {
        s->first_chunk[i] = n_chunks;
        if (i < op->n) {
            n_chunks += (op->descs[i].size + s->slot_size - 1) / s->slot_size;
        }
    }
    /* Lanes are taken lowest first (pump), so an honest peer writes the
     * first min(chunks, lanes) slots, a CHUNK for each or not (its op may
     * end first); ferry__staged_on_chunk adds any higher slot one names. */
    s->dirty = (size_t)(n_chunks < s->lanes ? n_chunks : s->lanes) * s->slot_size;
    s->taken = calloc((size_t)(n_chunks + 7) / 8, 1);
    if (s->first_chunk == NULL || s->taken == NULL) {
        return ferry__fail(FERRY_ERR_NO_MEMORY, "%s: out of memory for the chunk map", op->label);
    }
    return FERRY_OK;
}

/* The chunk a CHUNK names, by its place in the chunk map. */
static uint64_t chunk_index(const struct ferry__stage *s, const ferry__msg_t *msg)
{
    return s->first_chunk[msg->desc] + msg->offset / s->slot_size;
}

static bool chunk_taken(const struct ferry__stage *s, uint64_t chunk)
{
    return (s->taken[chunk / 8] >> (chunk % 8)) & 1u;
}

ferry_status_t ferry__staged_passive_create(ferry_op_t *op, Ferry__V1__Staging *staging,
                                            const void **rkey_p, size_t *rkey_len_p)
{
    struct ferry__stage *s;
    size_t slot_size = chunk_for(op->descs, op->n);
    ferry_status_t status;

    status = stage_alloc(op, test_lanes(), slot_size, true, false);
    if (status != FERRY_OK) {
        return status;
    }
    s = op->stage;
    for (size_t i = 0; i < op->n; i++) {
        s->total += op->descs[i].size;
    }
    status = chunks_alloc(op);
    if (status == FERRY_OK) {
        status = slot_mem_take(op, (size_t)s->lanes * s->slot_size, &s->mem);
    }
    if (status != FERRY_OK) {
        ferry__staged_release(op);
        return status;
    }
    s->slots = s->mem->base;
    *rkey_p = s->mem->rkey;
    *rkey_len_p = s->mem->rkey_len;
    staging->address = (uint64_t)(uintptr_t)s->slots;
    staging->slot_size = s->slot_size;
    staging->slots = s->lanes;
    return FERRY_OK;
}

ferry__range_t ferry__staged_passive_block(const ferry_op_t *op)
{
    const struct ferry__stage *s = op->stage;

    return (ferry__range_t){(uint64_t)(uintptr_t)s->slots, (uint64_t)s->lanes * s->slot_size};
}

static void send_credit(ferry_op_t *op, uint32_t slot, ferry_status_t status)
{
    ferry__msg_t msg = {0};

    if (op->claimant == NULL) {
        return; /* no way back to the writer: it ends on its own timeout */
    }
    msg.type = FERRY__MSG_CREDIT;
    memcpy(msg.key, op->key, FERRY__KEY_LEN);
    memcpy(msg.claim_nonce, op->claim_nonce, FERRY__NONCE_LEN); /* the claimant's own */
    msg.op_id = op->claim_op_id;
    msg.status = status;
    msg.slot = slot;
    ferry__send_msg(op->claimant, &msg, FERRY__REQ_CREDIT, NULL);
}

/* Why this CHUNK is refused; NULL when it is good. */
static const char *chunk_problem(const ferry_op_t *op, const ferry__msg_t *msg)
{
    const struct ferry__stage *s = op->stage;
    uint64_t size;

    if (msg->slot >= s->lanes) {
        return "slot out of range";
    }
    if (s->lane[msg->slot].state != LANE_IDLE) {
        return "slot still busy";
    }
    if (msg->desc >= op->n) {
        return "descriptor index out of range";
    }
    size = op->descs[msg->desc].size;
    if (msg->offset >= size || msg->offset % s->slot_size != 0) {
        return "chunk not where the descriptor's chunks start";
    }
    if (msg->len != (size - msg->offset < s->slot_size ? size - msg->offset : s->slot_size)) {
        return "chunk of the wrong length";
    }
    if (chunk_taken(s, chunk_index(s, msg))) {
        return "chunk sent twice";
    }
    return NULL;
}

static void passive_fail(ferry_op_t *op, ferry_status_t code, const char *what)
{
    ferry__op_move(op, FERRY__OP_ERRORED, code, "%s", what); /* release sends the CREDIT */
}

void ferry__staged_on_chunk(ferry_connector_t *c, const ferry__msg_t *msg)
{
    ferry_op_t *op = ferry__op_find_passive(c, msg->key);
    struct ferry__stage *s;
    const char *problem;
    ferry_status_t status;
    uint8_t *mem;
    lane_t *lane;

    if (op == NULL || op->stage == NULL || op->state != FERRY__OP_CLAIMED || !op->admitted ||
        !ferry__nonce_equal(msg->nonce, op->nonce)) {
        c->stats.notices_ignored++;
        ferry_debug("connector %s: chunk for no staged operation of its sender", c->name);
        return;
    }
    s = op->stage;
    problem = chunk_problem(op, msg);
    if (problem != NULL) {
        char why[160];
        snprintf(why, sizeof(why),
                 "bad chunk from the %s (slot %" PRIu32 ", descriptor %" PRIu32 ", offset %" PRIu64
                 ", %" PRIu64 " bytes): %s",
                 op->kind == FERRY__KIND_READABLE ? "reader" : "writer", msg->slot, msg->desc,
                 msg->offset, msg->len, problem);
        passive_fail(op, FERRY_ERR_PROTOCOL, why);
        return;
    }
    lane = &s->lane[msg->slot];
    s->taken[chunk_index(s, msg) / 8] |= (uint8_t)(1u << (chunk_index(s, msg) % 8));
    /* A peer may name any slot (chunk_problem), not the lowest ones pump
     * takes: the slot it names is zeroed too before the set serves the
     * next operation, whose peer may read any slot (audit-s32 N1). */
    if (((size_t)msg->slot + 1) * s->slot_size > s->dirty) {
        s->dirty = ((size_t)msg->slot + 1) * s->slot_size;
    }
    mem = (uint8_t *)op->descs[msg->desc].ptr + msg->offset;
    if (op->kind == FERRY__KIND_READABLE) {
        status = s->engine->ops->copy_async(s->engine, slot_of(s, msg->slot), mem, msg->len,
                                            &lane->ticket);
    } else {
        status = s->engine->ops->copy_async(s->engine, mem, slot_of(s, msg->slot), msg->len,
                                            &lane->ticket);
    }
    if (status != FERRY_OK) {
        passive_fail(op, status, ferry_last_error_message());
        return;
    }
    lane->state = op->kind == FERRY__KIND_READABLE ? LANE_COPY_IN : LANE_COPY_OUT;
    lane->desc = msg->desc;
    lane->offset = msg->offset;
    lane->len = msg->len;
    watch(op);
}

bool ferry__staged_notice_ok(ferry_op_t *op)
{
    op->stage->notice_ok = true;
    if (op->kind == FERRY__KIND_READABLE) {
        return true; /* the reader has every byte; release syncs any copy left */
    }
    if (op->stage->landed != op->stage->total) {
        ferry_debug("%s: notice came; %" PRIu64 " of %" PRIu64 " bytes landed so far", op->label,
                    op->stage->landed, op->stage->total);
        return false;
    }
    return true;
}

static void passive_landed(ferry_op_t *op, unsigned i)
{
    struct ferry__stage *s = op->stage;

    s->landed += s->lane[i].len;
    s->lane[i].state = LANE_IDLE;
    send_credit(op, i, FERRY_OK);
    if (s->notice_ok && s->landed == s->total) {
        ferry__op_move(op, FERRY__OP_COMPLETE, FERRY_OK, NULL);
    }
}

/* ---- active ------------------------------------------------------------- */

/* Active, with an engine, the passive side staging: its slots as mapped
 * into this process. UCX's shared-memory transports map a peer's segment
 * when its key is unpacked (ucp_rkey_ptr), and the passive side's slots
 * are such a segment (slot memory, above), so the engine copies straight
 * into them (a write) or out of them (a read): no put or get, which is a
 * CPU copy on the loop's thread, and no slots of our own. Pinned by the
 * engine once per key, kept while the key is cached (at most
 * FERRY__RKEY_PIN_MAX per connector). false where they are not mapped
 * (TCP, another host) or cannot be pinned: our own slots and puts or gets. */
static bool map_remote(ferry_op_t *op)
{
    ferry_connector_t *c = op->connector;
    struct ferry__stage *s = op->stage;
    ferry__rkey_t *rk = s->rkey;
    size_t len = (size_t)s->lanes * s->slot_size;
    void *first = NULL, *last = NULL;
    ferry_status_t status;

    if (atomic_load(&ferry__test_staging.no_map) || rk->pin_refused ||
        ucp_rkey_ptr(rk->rkey, s->remote_addr, &first) != UCS_OK ||
        ucp_rkey_ptr(rk->rkey, s->remote_addr + len - 1, &last) != UCS_OK ||
        (uint8_t *)last != (uint8_t *)first + len - 1) {
        return false;
    }
    if (rk->pin.ops == NULL) {
        if (c->rkeys_pinned_bytes + len > FERRY__RKEY_PIN_MAX) {
            return false;
        }
        status = ferry__pin(s->engine, op->descs[0].device.id, first, len, &rk->pin);
        if (status != FERRY_OK) {
            ferry_info("%s: the passive side's slots are mapped here but cannot be pinned (%s): "
                       "copying through our own slots",
                       op->label, ferry_last_error_message());
            rk->pin_refused = true;
            return false;
        }
        c->rkeys_pinned_bytes += len;
    } else if (rk->pin.ops != s->engine->ops || (uint8_t *)first < (uint8_t *)rk->pin.ptr ||
               (uint8_t *)first + len > (uint8_t *)rk->pin.ptr + rk->pin.len) {
        return false;
    }
    s->slots = first;
    s->mapped = true;
    ferry_debug("%s: copying straight into the passive side's slots", op->label);
    return true;
}

ferry_status_t ferry__staged_active_prepare(ferry_op_t *op, bool local_staged)
{
    const Ferry__V1__Staging *st = op->md->staging;
    struct ferry__stage *s;
    ferry_status_t status;

    if (!local_staged && st == NULL) {
        return FERRY_OK;
    }
    if (st != NULL) {
        /* The passive side chose the slots; lanes use its first ones, as
         * many as fit in LOCAL_MAX of our own pinned memory (its metadata
         * must not make us pin gigabytes). */
        unsigned lanes = st->slots;
        if (local_staged && st->slot_size > LOCAL_MAX) {
            /* Not even one lane fits: chunks are the passive side's slots,
             * whole, so a smaller slot of ours would not do. */
            return ferry__fail(FERRY_ERR_INVALID_ARGUMENT,
                               "metadata: staging.slot_size is %llu bytes, more than this side "
                               "pins for one operation (%llu)",
                               (unsigned long long)st->slot_size, (unsigned long long)LOCAL_MAX);
        }
        while (local_staged && lanes > 1 && (uint64_t)lanes * st->slot_size > LOCAL_MAX) {
            lanes--;
        }
        status = stage_alloc(op, lanes, st->slot_size, local_staged, false);
    } else {
        status = stage_alloc(op, test_lanes(), chunk_for(op->descs, op->n), true, true);
    }
    if (status != FERRY_OK || st == NULL) {
        return status;
    }
    s = op->stage;
    s->remote = true;
    s->remote_addr = st->address;
    status = ferry__peer_rkey_get(op->peer, st->rkey.data, st->rkey.len, st->address, &s->rkey);
    if (status != FERRY_OK) {
        return ferry__fail(status, "metadata: staging.rkey: %s", ferry_last_error_message());
    }
    /* The lanes put to (or get from) the first s->lanes slots only. */
    status = ferry__rkey_range_check(s->rkey, st->address, (uint64_t)s->lanes * s->slot_size);
    if (status != FERRY_OK) {
        return ferry__fail(status, "metadata: staging: %s", ferry_last_error_message());
    }
    if (s->engine != NULL && !map_remote(op)) {
        status = s->engine->ops->alloc_pinned(s->engine, (size_t)s->lanes * s->slot_size,
                                              (void **)&s->slots);
        if (status != FERRY_OK) {
            return ferry__fail(status, "%s: staging: %s", op->label, ferry_last_error_message());
        }
    }
    return FERRY_OK;
}

static void active_fail(ferry_op_t *op, ferry_status_t code, const char *fmt, const char *what)
{
    ferry__op_move(op, FERRY__OP_ERRORED, code, fmt, what);
    ferry__staged_settle(op);
}

/* Posts lane i's put (or get) and the flush that reports it. */
static void lane_xfer(ferry_op_t *op, unsigned i)
{
    struct ferry__stage *s = op->stage;
    lane_t *lane = &s->lane[i];
    const ferry_descriptor_t *d = &op->descs[lane->desc];
    ucp_request_param_t param = {0};
    void *local = s->engine != NULL ? slot_of(s, i) : (uint8_t *)d->ptr + lane->offset;
    uint64_t remote = op->md->descriptors[lane->desc]->address + lane->offset;
    ucp_rkey_h rkey;
    ucs_status_ptr_t sp;
    ferry__req_t *req;

    if (s->remote) {
        remote = s->remote_addr + (uint64_t)i * s->slot_size;
        rkey = s->rkey->rkey;
    } else {
        rkey = op->rkeys[lane->desc]->rkey;
    }
    param.op_attr_mask = UCP_OP_ATTR_FIELD_MEMORY_TYPE;
    param.memory_type = s->engine == NULL && d->device.kind == FERRY_DEVICE_CUDA
                            ? UCS_MEMORY_TYPE_CUDA
                            : UCS_MEMORY_TYPE_HOST;
    if (op->peer->ep == NULL) {
        active_fail(op, FERRY_ERR_TRANSPORT, "%s", "the endpoint was closed by force");
        return;
    }
    /* The flush's request first: once the put or get is posted, only its
     * flush tells when the local memory is no longer touched. */
    req = calloc(1, sizeof(*req));
    if (req == NULL) {
        active_fail(op, FERRY_ERR_NO_MEMORY, "%s", "out of memory for a flush");
        return;
    }
    if (op->kind == FERRY__KIND_WRITE) {
        sp = ucp_put_nbx(op->peer->ep, local, lane->len, remote, rkey, &param);
    } else {
        sp = ucp_get_nbx(op->peer->ep, local, lane->len, remote, rkey, &param);
    }
    if (UCS_PTR_IS_ERR(sp)) {
        free(req);
        active_fail(op, FERRY_ERR_TRANSPORT, "chunk transfer failed: %s",
                    ucs_status_string(UCS_PTR_STATUS(sp)));
        return;
    }
    if (sp != NULL) {
        ucp_request_free(sp); /* the flush reports it */
    }
    req->type = FERRY__REQ_LANE;
    req->connector = op->connector;
    req->op = op;
    req->lane = i;
    ferry__op_ref(op);
    lane->state = LANE_XFER;
    s->in_xfer++;
    op->data_in_flight = true; /* the op holds its regions until in_xfer is 0 */
    ferry__req_param(req, &param);
    ferry__req_posted(req, ucp_ep_flush_nbx(op->peer->ep, &param));
}

/* The final flush: op_active.c's FLUSH completion sends the notice. */
static void post_final_flush(ferry_op_t *op)
{
    ucp_request_param_t param;
    ferry__req_t *req = calloc(1, sizeof(*req));

    op->stage->flushed = true;
    if (req == NULL) {
        active_fail(op, FERRY_ERR_NO_MEMORY, "%s", "out of memory for a flush");
        return;
    }
    if (op->peer->ep == NULL) {
        free(req);
        active_fail(op, FERRY_ERR_TRANSPORT, "%s", "the endpoint was closed by force");
        return;
    }
    req->type = FERRY__REQ_FLUSH;
    req->connector = op->connector;
    req->op = op;
    ferry__op_ref(op);
    ferry__req_param(req, &param);
    ferry__req_posted(req, ucp_ep_flush_nbx(op->peer->ep, &param));
}

static void send_chunk(ferry_op_t *op, unsigned i);

/* Gives idle lanes the next chunks; when none are left and every lane is
 * idle, posts the final flush. */
static void pump(ferry_op_t *op)
{
    struct ferry__stage *s = op->stage;
    bool busy = false;

    for (unsigned k = 0; k < s->lanes && !ferry__op_is_final(op); k++) {
        unsigned i = atomic_load(&ferry__test_staging.top_lanes) ? s->lanes - 1 - k : k;
        lane_t *lane = &s->lane[i];
        if (lane->state == LANE_IDLE && s->next_desc < op->n) {
            size_t size = op->descs[s->next_desc].size;
            lane->desc = s->next_desc;
            lane->offset = s->next_offset;
            lane->len = size - s->next_offset < s->slot_size ? size - s->next_offset : s->slot_size;
            s->next_offset += lane->len;
            if (s->next_offset == size) {
                s->next_desc++;
                s->next_offset = 0;
            }
            if (op->kind == FERRY__KIND_WRITE && s->engine != NULL) {
                const uint8_t *src = (const uint8_t *)op->descs[lane->desc].ptr + lane->offset;
                ferry_status_t st = s->engine->ops->copy_async(s->engine, slot_of(s, i), src,
                                                               lane->len, &lane->ticket);
                if (st != FERRY_OK) {
                    active_fail(op, st, "%s", ferry_last_error_message());
                    return;
                }
                lane->state = LANE_COPY_IN;
                watch(op);
            } else if (op->kind == FERRY__KIND_READ && s->remote) {
                lane->state = LANE_CREDIT; /* until the passive side filled its slot */
                send_chunk(op, i);
            } else {
                lane_xfer(op, i);
            }
        }
        busy = busy || lane->state != LANE_IDLE;
    }
    if (!busy && s->next_desc == op->n && !s->flushed && !ferry__op_is_final(op)) {
        post_final_flush(op);
    }
}

void ferry__staged_start(ferry_op_t *op)
{
    op->stage->started = true;
    ferry__op_move(op, FERRY__OP_TRANSFERRING, FERRY_OK, NULL);
    pump(op);
}

void ferry__staged_settle(ferry_op_t *op)
{
    struct ferry__stage *s = op->stage;
    ferry__msg_t msg = {0};

    if (s == NULL || !s->started || s->settled || !ferry__op_is_final(op) || s->in_xfer > 0 ||
        s->flushed || op->peer == NULL) {
        return;
    }
    if (s->mapped) {
        /* Nor may a copy of ours still write or read its slots. */
        s->engine->ops->sync(s->engine);
    }
    /* Nothing of ours is on the wire: release the passive side. */
    s->settled = true;
    msg.type = FERRY__MSG_NOTICE;
    memcpy(msg.key, op->md->notification_key.data, FERRY__KEY_LEN);
    msg.status = op->state == FERRY__OP_CANCELLED ? FERRY_ERR_CANCELLED : op->error_code;
    memcpy(msg.nonce, op->nonce, FERRY__NONCE_LEN);
    ferry__send_msg(op->peer, &msg, FERRY__REQ_NOTICE, op);
}

static void send_chunk(ferry_op_t *op, unsigned i)
{
    const lane_t *lane = &op->stage->lane[i];
    ferry__msg_t msg = {0};

    msg.type = FERRY__MSG_CHUNK;
    memcpy(msg.key, op->md->notification_key.data, FERRY__KEY_LEN);
    memcpy(msg.nonce, op->nonce, FERRY__NONCE_LEN);
    msg.slot = i;
    msg.desc = lane->desc;
    msg.offset = lane->offset;
    msg.len = lane->len;
    ferry__send_msg(op->peer, &msg, FERRY__REQ_CHUNK, op);
}

/* Active read: the engine copies the chunk in slot i (ours, or the
 * passive side's mapped here) into the caller's memory. */
static void read_out(ferry_op_t *op, unsigned i)
{
    struct ferry__stage *s = op->stage;
    lane_t *lane = &s->lane[i];
    const ferry_descriptor_t *d = &op->descs[lane->desc];
    ferry_status_t st = s->engine->ops->copy_async(s->engine, (uint8_t *)d->ptr + lane->offset,
                                                   slot_of(s, i), lane->len, &lane->ticket);

    if (st != FERRY_OK) {
        lane->state = LANE_IDLE;
        active_fail(op, st, "%s", ferry_last_error_message());
        return;
    }
    lane->state = LANE_COPY_OUT;
    watch(op);
}

void ferry__staged_on_req(ferry__req_t *req)
{
    ferry_op_t *op = req->op;
    struct ferry__stage *s = op->stage;
    lane_t *lane;

    if (req->type == FERRY__REQ_CHUNK) {
        if (req->status != UCS_OK) {
            active_fail(op, FERRY_ERR_TRANSPORT, "chunk notice not sent: %s",
                        ucs_status_string(req->status));
        }
        return;
    }
    lane = &s->lane[req->lane];
    s->in_xfer--;
    lane->state = LANE_IDLE;
    if (s->in_xfer == 0) {
        /* No put or get of ours touches the local memory any more: an op
         * that ended while they ran lets go of its regions now (op.c). */
        op->data_in_flight = false;
        if (ferry__op_is_final(op)) {
            ferry__op_regions_detach(op);
        }
    }
    if (req->status != UCS_OK) {
        active_fail(op, FERRY_ERR_TRANSPORT, "chunk transfer failed: %s",
                    ucs_status_string(req->status));
        return;
    }
    if (ferry__op_is_final(op)) {
        ferry__staged_settle(op);
        return;
    }
    if (op->kind == FERRY__KIND_WRITE && s->remote) {
        lane->state = LANE_CREDIT;
        send_chunk(op, req->lane);
        return;
    }
    if (op->kind == FERRY__KIND_READ && s->engine != NULL) {
        read_out(op, req->lane);
        return;
    }
    pump(op);
}

void ferry__staged_on_credit(ferry_connector_t *c, const ferry__msg_t *msg)
{
    ferry_op_t *op = ferry__op_find_active(c, msg->op_id);
    struct ferry__stage *s;

    if (op == NULL || op->stage == NULL || !op->stage->remote ||
        memcmp(msg->key, op->md->notification_key.data, FERRY__KEY_LEN) != 0) {
        ferry_debug("connector %s: credit for no staged transfer", c->name);
        return;
    }
    if (!ferry__nonce_equal(msg->claim_nonce, op->claim_nonce)) {
        ferry_debug("%s: credit without our claim nonce: not from the passive side, ignored",
                    op->label);
        return;
    }
    s = op->stage;
    if (msg->status != FERRY_OK) {
        ferry_status_t code = msg->status; /* one a peer may report (the decoder) */
        if (!ferry__op_is_final(op)) {
            ferry__op_move(op, FERRY__OP_ERRORED, code, "the passive side stopped the %s: %s",
                           op->kind == FERRY__KIND_WRITE ? "write" : "read",
                           ferry_status_string(code));
        }
        /* It stopped; once nothing of ours is on the wire, the notice lets
         * it free its slots. */
        ferry__staged_settle(op);
        return;
    }
    if (msg->slot >= s->lanes || s->lane[msg->slot].state != LANE_CREDIT) {
        ferry_debug("%s: credit for slot %" PRIu32 " that was not lent", op->label, msg->slot);
        return;
    }
    s->lane[msg->slot].state = LANE_IDLE;
    if (ferry__op_is_final(op)) {
        ferry__staged_settle(op);
    } else if (op->kind == FERRY__KIND_READ && s->mapped) {
        read_out(op, msg->slot); /* its slot holds the chunk: copy it out */
    } else if (op->kind == FERRY__KIND_READ) {
        lane_xfer(op, msg->slot); /* its slot holds the chunk: get it */
    } else {
        pump(op);
    }
}

/* ---- the loop ------------------------------------------------------------- */

/* A lane's copy finished. A switch with no default: a kind added to
 * ferry__op_kind_t is a warning here (-Wswitch), not a read's step. */
static void copy_done(ferry_op_t *op, unsigned i)
{
    switch (op->kind) {
    case FERRY__KIND_WRITABLE:
    case FERRY__KIND_READABLE:
        passive_landed(op, i);
        break;
    case FERRY__KIND_WRITE:
        if (op->stage->mapped) {
            op->stage->lane[i].state = LANE_CREDIT; /* the chunk is in its slot */
            send_chunk(op, i);
        } else {
            lane_xfer(op, i);
        }
        break;
    case FERRY__KIND_READ:
        op->stage->lane[i].state = LANE_IDLE;
        pump(op);
        break;
    }
}

/* Polls one op's copies; true while any is still in flight. */
static bool poll_op(ferry_op_t *op, unsigned *work)
{
    struct ferry__stage *s = op->stage;
    bool in_flight = false;

    /* Any step below may end the op, and a passive op's end releases the
     * stage: s is read again after each. */
    for (unsigned i = 0; (s = op->stage) != NULL && i < s->lanes; i++) {
        lane_t *lane = &s->lane[i];
        bool done = false;
        ferry_status_t st;
        if (lane->state != LANE_COPY_IN && lane->state != LANE_COPY_OUT) {
            continue;
        }
        if (ferry__op_is_final(op)) {
            lane->state = LANE_IDLE; /* release syncs the engine before freeing */
            continue;
        }
        st = s->engine->ops->poll(s->engine, lane->ticket, &done);
        if (st != FERRY_OK) {
            lane->state = LANE_IDLE;
            if (ferry__op_is_passive(op)) {
                passive_fail(op, st, ferry_last_error_message());
            } else {
                active_fail(op, st, "%s", ferry_last_error_message());
            }
            (*work)++;
        } else if (done) {
            (*work)++;
            copy_done(op, i);
        }
    }
    /* Steps may have queued copies on lanes already passed: look again. */
    for (unsigned i = 0; (s = op->stage) != NULL && !ferry__op_is_final(op) && i < s->lanes; i++) {
        in_flight =
            in_flight || s->lane[i].state == LANE_COPY_IN || s->lane[i].state == LANE_COPY_OUT;
    }
    if (!in_flight && !ferry__op_is_passive(op)) {
        ferry__staged_settle(op);
    }
    return in_flight;
}

unsigned ferry__staged_progress(ferry_connector_t *c)
{
    unsigned work = 0;
    ferry_op_t **pp = &c->staged;

    while (*pp != NULL) {
        ferry_op_t *op = *pp;
        if (poll_op(op, &work)) {
            pp = &op->stage_next;
            continue;
        }
        *pp = op->stage_next; /* nothing in flight: unwatch */
        op->in_staged = false;
        ferry__op_unref(op);
    }
    return work;
}

unsigned ferry__staged_in_xfer(const ferry_op_t *op)
{
    return op->stage != NULL ? op->stage->in_xfer : 0;
}

bool ferry__staged_busy(const ferry_connector_t *c)
{
    return c->staged != NULL;
}

void ferry__staged_stop(ferry_op_t *op)
{
    struct ferry__stage *s = op->stage;

    if (s == NULL || s->engine == NULL) {
        return;
    }
    s->engine->ops->sync(s->engine);
    for (unsigned i = 0; i < s->lanes; i++) {
        if (s->lane[i].state == LANE_COPY_IN || s->lane[i].state == LANE_COPY_OUT) {
            s->lane[i].state = LANE_IDLE;
        }
    }
}

/* What a passive op that ended tells its claimant in the stopping CREDIT. */
static ferry_status_t stop_status(const ferry_op_t *op)
{
    if (op->state == FERRY__OP_CANCELLED || op->error_code == FERRY_OK) {
        return FERRY_ERR_CANCELLED;
    }
    return op->error_code;
}

void ferry__staged_release(ferry_op_t *op)
{
    ferry_connector_t *c = op->connector;
    struct ferry__stage *s = op->stage;

    if (s == NULL) {
        return;
    }
    if (ferry__op_is_passive(op) && op->admitted && op->state != FERRY__OP_COMPLETE) {
        send_credit(op, 0, stop_status(op));
    }
    if (s->engine != NULL) {
        s->engine->ops->sync(s->engine);
    }
    if (s->rkey != NULL) {
        ferry__peer_rkey_put(op->peer, s->rkey);
    }
    op->stage = NULL;
    if (ferry__op_is_passive(op) && op->admitted && op->state != FERRY__OP_COMPLETE &&
        !s->claimant_settled) {
        /* Its claimant may still have puts or gets in flight to the slots. */
        memcpy(s->key, op->key, FERRY__KEY_LEN);
        memcpy(s->nonce, op->nonce, FERRY__NONCE_LEN);
        s->claimant = op->claimant;
        if (s->claimant != NULL) {
            ferry__peer_ref(s->claimant);
        }
        s->stale_next = c->stale;
        c->stale = s;
        ferry_debug("%s: staging slots kept until the claimant settles", op->label);
        return;
    }
    stage_free(c, s, !ferry__op_is_passive(op));
    ferry_debug("%s: staging released", op->label);
}

void ferry__staged_claimant_settled(ferry_op_t *op)
{
    op->stage->claimant_settled = true;
}

/* The stale slots op left for a claimant it had no endpoint to. */
static struct ferry__stage *stale_unwatched(const ferry_op_t *op)
{
    for (struct ferry__stage *s = op->connector->stale; s != NULL; s = s->stale_next) {
        if (s->claimant == NULL && memcmp(s->key, op->key, FERRY__KEY_LEN) == 0 &&
            memcmp(s->nonce, op->nonce, FERRY__NONCE_LEN) == 0) {
            return s;
        }
    }
    return NULL;
}

bool ferry__staged_stale_unwatched(const ferry_op_t *op)
{
    return stale_unwatched(op) != NULL;
}

void ferry__staged_claimant_late(ferry_op_t *op)
{
    struct ferry__stage *s = stale_unwatched(op);

    if (s == NULL || op->claimant == NULL) {
        return;
    }
    s->claimant = op->claimant;
    ferry__peer_ref(s->claimant);
    send_credit(op, 0, stop_status(op)); /* what release could not send */
    ferry_debug("%s: the stopped claimant told to stop; its slots wait for it", op->label);
}

/* Unlinks *pp from connector->stale and frees it with its claimant's
 * reference. */
static void stale_drop(ferry_connector_t *c, struct ferry__stage **pp)
{
    struct ferry__stage *s = *pp;

    *pp = s->stale_next;
    if (s->claimant != NULL) {
        ferry__peer_put(s->claimant);
    }
    stage_free(c, s, false);
}

/* Whether msg is the notice of stale stage s's claimant. */
static bool stale_notice_of(const struct ferry__stage *s, const ferry__msg_t *msg)
{
    return memcmp(s->key, msg->key, FERRY__KEY_LEN) == 0 &&
           ferry__nonce_equal(s->nonce, msg->nonce);
}

bool ferry__staged_stale_notice(ferry_connector_t *c, const ferry__msg_t *msg)
{
    for (struct ferry__stage *s = c->stale; s != NULL; s = s->stale_next) {
        if (stale_notice_of(s, msg)) {
            if (s->notice_queued) {
                return false;
            }
            s->notice_queued = true;
            return true;
        }
    }
    return false;
}

bool ferry__staged_stale_settled(ferry_connector_t *c, const ferry__msg_t *msg)
{
    for (struct ferry__stage **pp = &c->stale; *pp != NULL; pp = &(*pp)->stale_next) {
        if (stale_notice_of(*pp, msg)) {
            stale_drop(c, pp);
            ferry_debug("connector %s: stale staging slots released", c->name);
            return true;
        }
    }
    return false;
}

void ferry__staged_stale_peer_failed(ferry_connector_t *c, const ferry__peer_t *peer)
{
    struct ferry__stage **pp = &c->stale;

    if (peer->forced) {
        return; /* our endpoint closed, not the claimant's: it may still write */
    }
    while (*pp != NULL) {
        if ((*pp)->claimant == peer) {
            stale_drop(c, pp);
            ferry_debug("connector %s: stale staging slots of failed peer %llu released", c->name,
                        (unsigned long long)peer->id);
        } else {
            pp = &(*pp)->stale_next;
        }
    }
}

void ferry__staged_stale_free(ferry_connector_t *c)
{
    while (c->stale != NULL) {
        stale_drop(c, &c->stale);
    }
    while (c->slot_pool != NULL) {
        struct ferry__slot_mem *m = c->slot_pool;
        c->slot_pool = m->next;
        c->slot_pool_bytes -= m->size;
        slot_mem_free(c, m);
    }
}

const void *ferry__staged_slots(const ferry_op_t *op)
{
    return op->stage != NULL && op->stage->mem != NULL ? op->stage->slots : NULL;
}

unsigned ferry__staged_pooled(const ferry_connector_t *c)
{
    unsigned n = 0;

    for (const struct ferry__slot_mem *m = c->slot_pool; m != NULL; m = m->next) {
        n++;
    }
    return n;
}

bool ferry__staged_mapped(const ferry_op_t *op)
{
    return op->stage != NULL && op->stage->mapped;
}
