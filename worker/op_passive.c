/*
 * op_passive.c: writable and readable operations, the side that owns the
 * memory. Create registers each descriptor with UCX (ucp_mem_map of exactly
 * that memory) and packs its remote key, or, for a descriptor inside a
 * registered region (region.c), takes the region's memory handle and key;
 * then it builds the RdmaMetadata, and the operation waits in READY for one
 * active side.
 *
 * Admission: an active side first sends a CLAIM carrying the notification
 * key. Exactly one claim is admitted, and only while the operation is READY;
 * a cancelled, finished, destroyed or already claimed operation answers with
 * a refusal, so no byte is written into memory its owner gave up. This
 * matters because on host memory UCX 1.13's shared-memory (cma) and TCP
 * transports do not enforce remote keys: after ucp_mem_unmap a peer holding
 * an old key could still write. (That is a peer running libferry; one that
 * posts UCX puts of its own is not held by admission at all on those
 * transports, whose emulated puts UCX applies in this process without
 * asking us: ferry.h, "Trust".) The one gap left: an owner that cancels
 * after admitting a writer cannot stop bytes already in flight; they land in
 * the (still allocated, user-owned) buffer, and the op is CANCELLED anyway.
 * So an op that ends before its admitted claimant settled is held
 * (claimant_hold: it keeps its region references, its claimant, its table
 * entry and one reference of its own) until that claimant settles, by its
 * notice or its endpoint's failure: deregistration cannot free a region
 * under the claimant's puts or gets, and an op destroyed with
 * ferry_op_destroy_nowait is freed, which is when its caller is told that
 * its memory may go, only then (staged.c keeps its slots for the same
 * reason; a staged op's claimant reaches only those).
 *
 * The decision is made before anything is built from the claim: the answer
 * goes back on the endpoint UCX names for the reply (the claimant's own
 * connection), inside the AM callback, and a claim for an unknown key
 * creates nothing and caches nothing, however many arrive. Only for an
 * admitted claim, and only with peer error handling on (or on the staged
 * path, whose CREDITs go back on it), does the loop open an endpoint to the
 * claimant's address: that endpoint is how the owner learns that its
 * writer died. The admission hands that step to the loop on a list of its
 * own (connector->watch), never through the bounded inbox: an admission
 * that a flood could cut from its follow-up would leave the op CLAIMED
 * with nobody watching its claimant. (The residual trust: UCX 1.13 cannot parse an
 * address safely, so a claimant that holds the key and sends a malformed
 * address can still abort this process when peer error handling is on.)
 *
 * Completion: the ADMIT carries a random admission nonce; a NOTICE moves the
 * operation only while it is CLAIMED and only when it carries that nonce
 * (compared in constant time). Anything else, a forged OK or a stranger's
 * error, is counted (stats.notices_ignored), logged at debug and dropped, so
 * neither can complete a buffer nobody wrote nor cancel the admitted
 * writer's transfer.
 *
 * Release: the memory is unmapped (a region's references dropped, unless
 * held as above) when the operation becomes final and at destroy,
 * whichever comes first (ferry__passive_release is idempotent).
 *
 * Threads: create runs on the caller's thread; a claim is decided inside the
 * AM callback (see connector.c), its claimant watched and notices handled in
 * the progress loop. All with connector->lock held around UCX calls.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "common/md_rules.h"
#include "common/log.h"
#include "worker/cuda.h"
#include "worker/ferry_int.h"

static ferry_status_t map_one_current(ferry_op_t *op, size_t i, void **rkey_p, size_t *rkey_len_p)
{
    ferry_connector_t *c = op->connector;
    ucp_mem_map_params_t params = {0};
    ucs_status_t status;

    params.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                        UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE;
    params.address = op->descs[i].ptr;
    params.length = op->descs[i].size;
    params.memory_type =
        op->descs[i].device.kind == FERRY_DEVICE_CUDA ? UCS_MEMORY_TYPE_CUDA : UCS_MEMORY_TYPE_HOST;
    status = ferry__mem_map(c, &params, &op->memh[i]);
    if (status != UCS_OK) {
        ferry_error("%s: ucp_mem_map of descriptor %zu (%zu bytes): %s", op->label, i,
                    op->descs[i].size, ucs_status_string(status));
        return ferry__fail(FERRY_ERR_TRANSPORT, "%s: cannot register descriptor %zu: %s", op->label,
                           i, ucs_status_string(status));
    }
    status = ucp_rkey_pack(c->context, op->memh[i], rkey_p, rkey_len_p);
    if (status != UCS_OK) {
        ferry_error("%s: ucp_rkey_pack of descriptor %zu: %s", op->label, i,
                    ucs_status_string(status));
        ucp_mem_unmap(c->context, op->memh[i]); /* the caller's memory: nothing recorded */
        return ferry__fail(FERRY_ERR_TRANSPORT, "%s: cannot pack the key of descriptor %zu: %s",
                           op->label, i, ucs_status_string(status));
    }
    return FERRY_OK;
}

/* Maps descriptor i and packs its key: with its device's context current
 * for CUDA memory (UCX's CUDA modules ask the driver about it), and the
 * caller's own put back after (cuda.h). */
static ferry_status_t map_one(ferry_op_t *op, size_t i, void **rkey_p, size_t *rkey_len_p)
{
    bool cuda = op->descs[i].device.kind == FERRY_DEVICE_CUDA;
    ferry_status_t status = cuda ? ferry__cuda_push(op->descs[i].device.id) : FERRY_OK;

    if (status != FERRY_OK) {
        return status;
    }
    status = map_one_current(op, i, rkey_p, rkey_len_p);
    if (cuda) {
        ferry__cuda_pop();
    }
    return status;
}

/* The staged path: pinned slots registered instead of the regions (which
 * this UCX cannot reach), and metadata with a staging block; lock held. */
static ferry_status_t register_staged(ferry_op_t *op)
{
    ferry_connector_t *c = op->connector;
    ferry__metadata_build_t build = {0};
    Ferry__V1__Staging staging = FERRY__V1__STAGING__INIT;
    const void *rkey = NULL;
    size_t rkey_len = 0;
    ferry_status_t status;

    status = ferry__staged_passive_create(op, &staging, &rkey, &rkey_len);
    if (status != FERRY_OK) {
        return status;
    }
    staging.rkey.data = (uint8_t *)rkey; /* protobuf-c's field is not const; only read */
    staging.rkey.len = rkey_len;
    build.kind = op->kind;
    build.worker_address = (const uint8_t *)c->address;
    build.worker_address_len = c->address_len;
    build.descs = op->descs;
    build.n = op->n;
    build.staging = &staging;
    build.key = op->key;
    build.worker_name = c->name;
    build.hostname = c->hostname;
    build.peer_error_handling = c->peer_error_handling;
    status = ferry__metadata_encode(&build, &op->metadata, &op->metadata_len);
    if (status != FERRY_OK) {
        ferry__staged_release(op);
    }
    return status;
}

/* Whether descriptor i maps its own memory (no region holds it). */
static bool own_map(const ferry_op_t *op, size_t i)
{
    return op->regions == NULL || op->regions[i] == NULL;
}

/* Unmaps the first n descriptors' own mappings; lock held. */
static void unmap_own(ferry_op_t *op, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        bool cuda = op->descs[i].device.kind == FERRY_DEVICE_CUDA;
        if (!own_map(op, i) || (cuda && ferry__cuda_push(op->descs[i].device.id) != FERRY_OK)) {
            continue;
        }
        ucp_mem_unmap(op->connector->context, op->memh[i]);
        if (cuda) {
            ferry__cuda_pop();
        }
    }
}

/* Registers every descriptor (or takes its region's handle and key) and
 * builds the metadata; lock held. */
static ferry_status_t register_all(ferry_op_t *op)
{
    ferry_connector_t *c = op->connector;
    ferry__metadata_build_t build = {0};
    void **rkeys;
    size_t *rkey_lens;
    ferry_status_t status = FERRY_OK;
    size_t mapped = 0;

    rkeys = calloc(op->n, sizeof(*rkeys));
    rkey_lens = calloc(op->n, sizeof(*rkey_lens));
    op->memh = calloc(op->n, sizeof(*op->memh));
    if (rkeys == NULL || rkey_lens == NULL || op->memh == NULL) {
        status = ferry__fail(FERRY_ERR_NO_MEMORY, "%s: out of memory", op->label);
        goto out_free_keys;
    }
    status = ferry__op_regions_attach(op);
    if (status != FERRY_OK) {
        goto out_free_keys;
    }
    for (; mapped < op->n; mapped++) {
        if (!own_map(op, mapped)) {
            op->memh[mapped] = op->regions[mapped]->memh;
            rkey_lens[mapped] = op->regions[mapped]->rkey_len;
            continue;
        }
        status = map_one(op, mapped, &rkeys[mapped], &rkey_lens[mapped]);
        if (status != FERRY_OK) {
            goto err_unmap;
        }
    }
    build.kind = op->kind;
    build.worker_address = (const uint8_t *)c->address;
    build.worker_address_len = c->address_len;
    build.descs = op->descs;
    build.n = op->n;
    for (size_t i = 0; i < op->n; i++) {
        if (!own_map(op, i)) {
            rkeys[i] = op->regions[i]->rkey; /* borrowed: not released below */
        }
    }
    build.rkeys = (const void *const *)rkeys;
    build.rkey_lens = rkey_lens;
    build.key = op->key;
    build.worker_name = c->name;
    build.hostname = c->hostname;
    build.peer_error_handling = c->peer_error_handling;
    status = ferry__metadata_encode(&build, &op->metadata, &op->metadata_len);
    if (status != FERRY_OK) {
        goto err_unmap;
    }
    op->mapped = true;
    goto out_free_keys;

err_unmap:
    unmap_own(op, mapped);
    ferry__op_regions_detach(op);
out_free_keys:
    for (size_t i = 0; rkeys != NULL && i < op->n; i++) {
        if (rkeys[i] != NULL && own_map(op, i)) {
            ucp_rkey_buffer_release(rkeys[i]);
        }
    }
    free(rkey_lens);
    free(rkeys);
    return status;
}

static ferry_status_t passive_create(ferry_connector_t *c, ferry__op_kind_t kind,
                                     const ferry_descriptor_t *descs, size_t n, ferry_op_t **op_p)
{
    ferry_op_t *op;
    ferry_status_t status;
    bool staged;

    ferry__clear_error();
    status = ferry_descriptors_validate(descs, n);
    if (status != FERRY_OK) {
        return status;
    }
    if (n > FERRY_MD_DESCRIPTORS_MAX) {
        /* Refused here, before anything is mapped: past it every writer and
         * the coordinator refuse the metadata, far from the cause. */
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT,
                           "descriptors: %zu given; an operation has at most %d (its metadata's "
                           "bound)",
                           n, FERRY_MD_DESCRIPTORS_MAX);
    }
    status = ferry__cuda_admit(c, descs, n);
    if (status != FERRY_OK) {
        return status;
    }
    staged = ferry__staged_wanted(c, descs);
    status = ferry__op_alloc(c, kind, descs, n, &op);
    if (status != FERRY_OK) {
        return status;
    }
    if (getrandom(op->key, sizeof(op->key), 0) != (ssize_t)sizeof(op->key)) {
        ferry__op_free(op);
        return ferry__fail(FERRY_ERR_IO, "connector %s: getrandom failed", c->name);
    }
    snprintf(op->label, sizeof(op->label), "%s %llu key %02x%02x%02x%02x",
             kind == FERRY__KIND_WRITABLE ? "writable" : "readable", (unsigned long long)op->id,
             op->key[0], op->key[1], op->key[2], op->key[3]);
    ferry__lock(c);
    status = staged ? register_staged(op) : register_all(op);
    if (status == FERRY_OK) {
        ferry__op_move(op, FERRY__OP_READY, FERRY_OK, NULL);
        ferry__op_table_add(op);
    }
    ferry__unlock(c);
    if (status != FERRY_OK) {
        ferry__op_free(op);
        return status;
    }
    ferry_debug("%s: %zu regions registered, %zu-byte metadata", op->label, n, op->metadata_len);
    *op_p = op;
    return FERRY_OK;
}

ferry_status_t ferry_writable_create(ferry_connector_t *c, const ferry_descriptor_t *descs,
                                     size_t n, ferry_op_t **op_p)
{
    return passive_create(c, FERRY__KIND_WRITABLE, descs, n, op_p);
}

ferry_status_t ferry_readable_create(ferry_connector_t *c, const ferry_descriptor_t *descs,
                                     size_t n, ferry_op_t **op_p)
{
    return passive_create(c, FERRY__KIND_READABLE, descs, n, op_p);
}

ferry_status_t ferry_op_metadata(const ferry_op_t *op, const uint8_t **bytes_p, size_t *len_p)
{
    ferry__clear_error();
    if (!ferry__op_is_passive(op)) {
        return ferry__fail(FERRY_ERR_MISUSE, "%s: only passive operations have metadata",
                           op->label);
    }
    *bytes_p = op->metadata;
    *len_p = op->metadata_len;
    return FERRY_OK;
}

ferry_status_t ferry_op_notification_key(const ferry_op_t *op, const uint8_t **key_p)
{
    ferry__clear_error();
    if (!ferry__op_is_passive(op)) {
        return ferry__fail(FERRY_ERR_MISUSE, "%s: only passive operations have a key", op->label);
    }
    *key_p = op->key;
    return FERRY_OK;
}

bool ferry__passive_all_in_regions(const ferry_op_t *op)
{
    if (!op->regions_held) {
        return false;
    }
    for (size_t i = 0; i < op->n; i++) {
        if (op->regions[i] == NULL) {
            return false;
        }
    }
    return true;
}

/* Whether op holds a region for one of its descriptors. */
static bool holds_regions(const ferry_op_t *op)
{
    if (!op->regions_held) {
        return false;
    }
    for (size_t i = 0; i < op->n; i++) {
        if (op->regions[i] != NULL) {
            return true;
        }
    }
    return false;
}

/* Whether an op that ends now must be held for its claimant: an admitted
 * claimant that has not settled may still have puts or gets in flight into
 * its memory (UCX emulates them over TCP, copying in this process's worker;
 * over cma the claimant's process copies), and memory that went away under
 * them (ferry_mem_deregister frees what ferry_mem_alloc made; a caller of
 * ferry_op_destroy_nowait frees its own once told) would be written or read
 * after it was freed. A staged op's claimant reaches its slots (staged.c),
 * and its memory only through regions it holds. */
static bool claimant_may_touch_memory(const ferry_op_t *op, bool staged)
{
    if (!op->admitted || op->claimant_settled || op->state == FERRY__OP_COMPLETE) {
        return false;
    }
    return !staged || holds_regions(op);
}

void ferry__passive_release(ferry_op_t *op)
{
    bool staged = op->stage != NULL;

    ferry__staged_release(op); /* first: it may tell the claimant to stop */
    if (op->mapped) {
        unmap_own(op, op->n);
        op->mapped = false;
        if (claimant_may_touch_memory(op, staged)) {
            op->claimant_hold = true;
            ferry__op_ref(op); /* dropped by claimant_hold_end */
            ferry_debug("%s: held until the admitted claimant settles", op->label);
        } else {
            ferry__op_regions_detach(op);
        }
        ferry_debug("%s: memory unregistered", op->label);
    }
    if (op->claimant != NULL && !op->claimant_hold) {
        ferry__peer_put(op->claimant);
        op->claimant = NULL;
    }
}

void ferry__passive_hold_drop(ferry_op_t *op)
{
    if (!op->claimant_hold || holds_regions(op)) {
        return;
    }
    /* As before the hold covered memory in no region: the op leaves the
     * table at destroy, and a late notice finds nothing (it used to hold
     * every such op, dead claimant or not, until the connector went). */
    op->claimant_hold = false;
    if (op->claimant != NULL) {
        ferry__peer_put(op->claimant);
        op->claimant = NULL;
    }
    ferry_debug("%s: destroyed; its memory is the caller's (not held for the claimant)", op->label);
    ferry__op_unref(op);
}

/* The claimant of an op that ended before it settled has now settled (its
 * notice came, or its endpoint failed): the regions go, and a destroyed op
 * leaves the table and is freed (and its ferry_op_destroy_nowait caller
 * told). Lock held; may free op. */
static void claimant_hold_end(ferry_op_t *op, const char *why)
{
    op->claimant_settled = true;
    op->claimant_hold = false;
    ferry__op_regions_detach(op);
    if (op->claimant != NULL) {
        ferry__peer_put(op->claimant);
        op->claimant = NULL;
    }
    ferry_debug("%s: claimant %s; regions released", op->label, why);
    if (op->user_released && op->in_table) {
        ferry__op_table_remove(op);
    }
    ferry__op_unref(op);
}

/* Whether a claim names exactly the memory op's metadata names: its
 * descriptors, then its staging block (wire.c says why). */
static bool claim_names_own_memory(const ferry_op_t *op, const ferry__msg_t *msg)
{
    ferry__range_t r;

    if (msg->n_ranges != op->n + (op->stage != NULL ? 1 : 0)) {
        return false;
    }
    for (uint32_t i = 0; i < op->n; i++) {
        r = ferry__msg_range(msg, i);
        if (r.address != (uint64_t)(uintptr_t)op->descs[i].ptr || r.length != op->descs[i].size) {
            return false;
        }
    }
    if (op->stage != NULL) {
        ferry__range_t block = ferry__staged_passive_block(op);
        r = ferry__msg_range(msg, (uint32_t)op->n);
        return r.address == block.address && r.length == block.length;
    }
    return true;
}

/* A claimant that differs in peer error handling is a deployment's
 * misconfiguration (or a worker not upgraded): said at warn at most every
 * FERRY_LOG_REPEAT_MS (a flood of such claims must not flood the log), the
 * next line counting those not said; the claimant is told
 * FAILED_PRECONDITION. */
static void warn_peer_errors_differ(const ferry_op_t *op, const ferry__msg_t *msg)
{
    static ferry_log_limit_t limit;
    unsigned quiet;

    if (ferry_log_due(&limit, &quiet)) {
        ferry_warn("%s: claim refused: the claimant's peer_error_handling is %s, connector %s's "
                   "is %s; UCX 1.13 cannot connect the two (set it alike on every worker; %u "
                   "more such claims since the last line)",
                   op->label,
                   !msg->peer_errors_said ? "not said (an older libferry)"
                   : msg->peer_errors     ? "on"
                                          : "off",
                   op->connector->name, op->connector->peer_error_handling ? "on" : "off", quiet);
    } else {
        ferry_debug("%s: claim refused: peer_error_handling differs", op->label);
    }
}

/* Why a claim is refused, or FERRY_OK to admit it. */
static ferry_status_t admission(const ferry_op_t *op, const ferry__msg_t *msg)
{
    bool wants_write = msg->op_kind == FERRY__KIND_WRITE;

    /* Being destroyed counts as destroyed: ferry_op_destroy drops the lock
     * to tell its listeners, and its caller frees the memory once it
     * returns, so nobody may be admitted to it meanwhile. */
    if (op == NULL || op->user_released || op->destroying) {
        return FERRY_ERR_NOT_FOUND; /* destroyed (kept only for its claimant) */
    }
    if (msg->op_kind != FERRY__KIND_WRITE && msg->op_kind != FERRY__KIND_READ) {
        return FERRY_ERR_INVALID_ARGUMENT; /* a claim is a write or a read */
    }
    if (wants_write != (op->kind == FERRY__KIND_WRITABLE)) {
        return FERRY_ERR_INVALID_ARGUMENT;
    }
    if (!msg->peer_errors_said || msg->peer_errors != op->connector->peer_error_handling) {
        /* Opening an endpoint back to a claimant whose own endpoint
         * differs here makes UCX 1.13 destroy that endpoint under the
         * claimant's puts (op_active.c, peer_errors_match); an older
         * claimant does not say. */
        warn_peer_errors_differ(op, msg);
        return FERRY_ERR_FAILED_PRECONDITION;
    }
    if (!claim_names_own_memory(op, msg)) {
        return FERRY_ERR_INVALID_ARGUMENT; /* metadata that is not op's */
    }
    switch (op->state) {
    case FERRY__OP_READY:
        return FERRY_OK;
    case FERRY__OP_CANCELLED:
        return FERRY_ERR_CANCELLED;
    default:
        return FERRY_ERR_FAILED_PRECONDITION;
    }
}

/* What an admission needs before the ADMIT goes out: the nonce, and, when
 * the loop must reach the claimant (peer error handling, or the staged
 * path's CREDITs), a copy of its address (msg's bytes are UCX's). Lock
 * held. */
static ferry_status_t admission_prepare(ferry_op_t *op, const ferry__msg_t *msg)
{
    ferry_connector_t *c = op->connector;

    if (getrandom(op->nonce, sizeof(op->nonce), 0) != (ssize_t)sizeof(op->nonce)) {
        ferry_error("%s: getrandom failed; claim refused", op->label);
        return FERRY_ERR_IO;
    }
    if (!c->peer_error_handling && op->stage == NULL) {
        return FERRY_OK;
    }
    op->claimant_address = malloc(msg->address_len);
    if (op->claimant_address == NULL) {
        ferry_error("%s: out of memory for the claimant's address; claim refused", op->label);
        return FERRY_ERR_NO_MEMORY;
    }
    memcpy(op->claimant_address, msg->address, msg->address_len);
    op->claimant_address_len = msg->address_len;
    return FERRY_OK;
}

void ferry__passive_on_claim(ferry_connector_t *c, const ferry__msg_t *msg, ucp_ep_h reply_ep)
{
    ferry_op_t *op = ferry__op_find_passive(c, msg->key);
    ferry__msg_t answer = {0};

    answer.type = FERRY__MSG_ADMIT;
    memcpy(answer.key, msg->key, FERRY__KEY_LEN);
    memcpy(answer.claim_nonce, msg->claim_nonce, FERRY__NONCE_LEN); /* the claimant's proof */
    answer.op_id = msg->op_id;
    answer.status = admission(op, msg);
    if (answer.status == FERRY_OK && reply_ep == NULL) {
        answer.status = FERRY_ERR_PROTOCOL; /* nowhere to answer: not our sender */
    }
    if (answer.status == FERRY_OK) {
        answer.status = admission_prepare(op, msg);
    }
    if (answer.status != FERRY_OK) {
        c->stats.claims_refused++;
        ferry_debug("connector %s: claim refused: %s%s", c->name, ferry_status_name(answer.status),
                    reply_ep == NULL ? " (no reply endpoint; dropped)" : "");
        if (reply_ep != NULL) {
            ferry__send_reply(c, reply_ep, &answer);
        }
        return;
    }
    op->admitted = true;
    op->claim_op_id = msg->op_id;
    memcpy(op->claim_nonce, msg->claim_nonce, FERRY__NONCE_LEN);
    memcpy(answer.nonce, op->nonce, FERRY__NONCE_LEN);
    ferry__op_move(op, FERRY__OP_CLAIMED, FERRY_OK, NULL);
    ferry__send_reply(c, reply_ep, &answer);
    if (op->claimant_address != NULL) {
        /* Not through the inbox, which a flood can fill: then the
         * admission would stand and its endpoint never open. */
        ferry__op_ref(op); /* dropped once the loop has watched */
        op->watch_next = c->watch;
        c->watch = op;
    }
}

/* Whether the loop still needs an endpoint to op's admitted claimant. An op
 * that ended meanwhile may still: the claimant has not settled, and its
 * failure is what lets go of the regions (claimant_hold) or staging slots
 * (stale) kept for it; a staged one must also be told to stop. */
static bool claimant_needs_watch(const ferry_op_t *op)
{
    if (op->claimant_settled || op->claimant != NULL) {
        return false;
    }
    return !ferry__op_is_final(op) || op->claimant_hold || ferry__staged_stale_unwatched(op);
}

/* Opens op's endpoint to its admitted claimant; lock held. */
static void watch_claimant(ferry_op_t *op)
{
    ferry_connector_t *c = op->connector;

    if (ferry__peer_get(c, op->claimant_address, op->claimant_address_len, &op->claimant) !=
        FERRY_OK) {
        op->claimant = NULL;
        if (op->stage != NULL) {
            ferry__op_move(op, FERRY__OP_ERRORED, FERRY_ERR_UNAVAILABLE,
                           "no endpoint to the admitted writer for the staged path: %s",
                           ferry_last_error_message());
            return;
        }
        ferry_warn("%s: no endpoint to the admitted peer (its failure goes unseen): %s", op->label,
                   ferry_last_error_message());
        return;
    }
    if (ferry__op_is_final(op) && !op->claimant_hold) {
        /* It ended on the staged path: the slots kept for the claimant
         * take the endpoint; the op has no more use for it. */
        ferry__staged_claimant_late(op);
        ferry__peer_put(op->claimant);
        op->claimant = NULL;
    }
}

void ferry__passive_watch_claimant(ferry_op_t *op)
{
    if (claimant_needs_watch(op)) {
        watch_claimant(op);
    }
    free(op->claimant_address);
    op->claimant_address = NULL;
    op->claimant_address_len = 0;
}

void ferry__passive_on_notice(ferry_connector_t *c, const ferry__msg_t *msg)
{
    ferry_op_t *op = ferry__op_find_passive(c, msg->key);

    if ((op == NULL || ferry__op_is_final(op)) && ferry__staged_stale_settled(c, msg)) {
        return; /* the stopped claimant of a staged op settled: its slots go */
    }
    if (op == NULL || ferry__op_is_final(op)) {
        c->stats.notices_ignored++;
        ferry_debug("connector %s: notice for no live operation", c->name);
        if (op != NULL && op->claimant_hold && ferry__nonce_equal(msg->nonce, op->nonce)) {
            claimant_hold_end(op, "settled (its notice came)");
        }
        return;
    }
    if (op->state != FERRY__OP_CLAIMED || !op->admitted ||
        !ferry__nonce_equal(msg->nonce, op->nonce)) {
        c->stats.notices_ignored++;
        ferry_debug("%s: notice ignored: not from the admitted peer", op->label);
        return;
    }
    c->stats.notices_received++;
    op->claimant_settled = true;
    if (op->stage != NULL) {
        ferry__staged_claimant_settled(op);
    }
    if (msg->status == FERRY_OK) {
        if (op->stage != NULL && !ferry__staged_notice_ok(op)) {
            return; /* completes when the last chunk lands (staged.c) */
        }
        ferry__op_move(op, FERRY__OP_COMPLETE, FERRY_OK, NULL);
    } else {
        /* A code a peer may report: the decoder mapped the number. */
        ferry__op_move(op, FERRY__OP_ERRORED, msg->status, "the active side gave up: %s",
                       ferry_status_string(msg->status));
    }
}

void ferry__op_peer_failed(ferry_op_t *op, ferry__peer_t *peer)
{
    if (ferry__op_is_passive(op) && peer->forced) {
        /* This side closed its endpoint to the claimant (peer.c): nothing
         * goes back to it any more, but its own endpoint to us may still
         * carry its writes, so it has not settled (its notice still may). */
        ferry__op_move(op, FERRY__OP_ERRORED, FERRY_ERR_PEER_FAILED,
                       "the endpoint to the admitted peer was closed by force (it stopped "
                       "answering)");
        return;
    }
    if (ferry__op_is_passive(op)) {
        /* Nothing more of a failed claimant reaches the memory. */
        op->claimant_settled = true;
        if (op->claimant_hold) {
            claimant_hold_end(op, "failed");
            return;
        }
        ferry__op_move(op, FERRY__OP_ERRORED, FERRY_ERR_PEER_FAILED,
                       "the admitted peer's endpoint failed: %s", ucs_status_string(peer->failure));
        return;
    }
    if (peer->forced) {
        ferry__op_move(op, FERRY__OP_ERRORED, FERRY_ERR_TRANSPORT,
                       "the endpoint to the passive peer was closed by force (it stopped "
                       "answering)");
    } else {
        ferry__op_move(op, FERRY__OP_ERRORED, FERRY_ERR_TRANSPORT,
                       "the passive peer's endpoint failed: %s", ucs_status_string(peer->failure));
    }
    if (op->awaiting_admit) {
        op->awaiting_admit = false;
        ferry__op_unref(op);
    }
}
