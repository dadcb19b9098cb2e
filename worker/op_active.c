/*
 * op_active.c: write and read operations, the side that moves the bytes.
 *
 * Begin decodes and checks the metadata against the local list (kind, count,
 * sizes) before anything touches UCX, then takes a cached endpoint to the
 * passive worker, unpacks (or finds cached) the remote keys, and sends a
 * CLAIM with a claim nonce drawn for it; an ADMIT or CREDIT that does not
 * carry the nonce back is not the passive side's and is ignored (wire.c).
 * The passive side's ADMIT starts the transfer: one ucp_put_nbx (or
 * ucp_get_nbx) per pair, one ucp_ep_flush_nbx, and only when the flush
 * completes the NOTICE, so the notice never overtakes the data.
 *
 *   READY -> CLAIMING -> TRANSFERRING -> NOTIFYING -> COMPLETE
 *
 * An operation cancelled or failed midway still owes the passive side a
 * notice once the wire is quiet (after the ADMIT, or after the flush), so the
 * owner of the memory learns that no writer holds it any more.
 *
 * The staged path (staged.c) replaces the puts/gets and their flush with its
 * pipeline when either side's memory is staged (CUDA memory its UCX cannot
 * reach); the claim, the final flush and the notice stay as here.
 *
 * Destroy (op.c) returns only once no put or get of the operation can
 * touch its local memory: it waits for their flush (data_in_flight), and
 * past FERRY_OP_DESTROY_FLUSH_MS closes the endpoint by force (peer.c),
 * which UCX answers by cancelling them.
 *
 * Registered memory (region.c): a local descriptor inside a region passes
 * the region's memory handle with its put or get (UCP_OP_ATTR_FIELD_MEMH),
 * so UCX looks nothing up for it; the operation holds the region until it
 * is final and its data has stopped moving (data_in_flight: the flush of
 * its puts or gets has completed; on the staged path, every lane's), since
 * a get cancelled midway still writes into local memory until then.
 *
 * Threads: begin runs on the caller's thread under connector->lock; the
 * other steps run in the progress loop.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "common/clock.h"
#include "common/log.h"
#include "worker/cuda.h"
#include "worker/ferry_int.h"

atomic_bool ferry__test_hold_notice;
atomic_bool ferry__test_notice_held;
atomic_bool ferry__test_fail_flush_alloc;

/* The status an op that is final without having completed owes the peer. */
static ferry_status_t owed_status(const ferry_op_t *op)
{
    return op->state == FERRY__OP_CANCELLED ? FERRY_ERR_CANCELLED : op->error_code;
}

static void send_notice(ferry_op_t *op, ferry_status_t status)
{
    ferry__msg_t msg = {0};

    msg.type = FERRY__MSG_NOTICE;
    memcpy(msg.key, op->md->notification_key.data, FERRY__KEY_LEN);
    msg.status = status;
    memcpy(msg.nonce, op->nonce, FERRY__NONCE_LEN); /* proves we are the admitted one */
    ferry__send_msg(op->peer, &msg, FERRY__REQ_NOTICE, op);
}

/* Posts every put (or get) and the flush that reports them; lock held. */
static void post_transfer(ferry_op_t *op)
{
    ucp_ep_h ep = op->peer->ep;
    ucp_request_param_t param = {0};
    ucs_status_ptr_t sp;
    ferry__req_t *req;

    if (ep == NULL) {
        ferry__op_move(op, FERRY__OP_ERRORED, FERRY_ERR_TRANSPORT,
                       "the endpoint to the passive side was closed by force");
        return;
    }
    /* Before any put: once one is posted only the flush's completion ends
     * data_in_flight, which destroy waits for (it used to come after the
     * puts, and without it destroy waited for ever). Nothing moved: the
     * passive side is told at once. */
    req = atomic_exchange(&ferry__test_fail_flush_alloc, false) ? NULL : calloc(1, sizeof(*req));
    if (req == NULL) {
        ferry__op_move(op, FERRY__OP_ERRORED, FERRY_ERR_NO_MEMORY, "out of memory for a flush");
        send_notice(op, owed_status(op));
        return;
    }
    /* Moved first: on shared memory a put may copy inside ucp_put_nbx. */
    ferry__op_move(op, FERRY__OP_TRANSFERRING, FERRY_OK, NULL);
    for (size_t i = 0; i < op->n; i++) {
        const ferry_descriptor_t *d = &op->descs[i];
        uint64_t remote = op->md->descriptors[i]->address;
        param.op_attr_mask = UCP_OP_ATTR_FIELD_MEMORY_TYPE;
        param.memory_type =
            d->device.kind == FERRY_DEVICE_CUDA ? UCS_MEMORY_TYPE_CUDA : UCS_MEMORY_TYPE_HOST;
        if (op->regions != NULL && op->regions[i] != NULL) {
            param.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMH;
            param.memh = op->regions[i]->memh;
        }
        op->data_in_flight = true;
        if (op->kind == FERRY__KIND_WRITE) {
            sp = ucp_put_nbx(ep, d->ptr, d->size, remote, op->rkeys[i]->rkey, &param);
        } else {
            sp = ucp_get_nbx(ep, d->ptr, d->size, remote, op->rkeys[i]->rkey, &param);
        }
        if (UCS_PTR_IS_ERR(sp)) {
            ferry__op_move(op, FERRY__OP_ERRORED, FERRY_ERR_TRANSPORT, "%s of pair %zu failed: %s",
                           op->kind == FERRY__KIND_WRITE ? "put" : "get", i,
                           ucs_status_string(UCS_PTR_STATUS(sp)));
            break;
        }
        if (sp != NULL) {
            ucp_request_free(sp); /* the flush below reports its completion */
        }
    }
    req->type = FERRY__REQ_FLUSH;
    req->connector = op->connector;
    req->op = op;
    ferry__op_ref(op);
    ferry__req_param(req, &param);
    ferry__req_posted(req, ucp_ep_flush_nbx(ep, &param));
}

/* post_transfer with the memory's device context current where it is CUDA
 * memory (the direct path: UCX's CUDA transports queue the copies on the
 * posting thread, which may be the caller's), the thread's own put back
 * after (cuda.h). */
static void start_transfer(ferry_op_t *op)
{
    bool cuda = op->n > 0 && op->descs[0].device.kind == FERRY_DEVICE_CUDA &&
                ferry__cuda_push(op->descs[0].device.id) == FERRY_OK;

    post_transfer(op);
    if (cuda) {
        ferry__cuda_pop();
    }
}

/* What a refused claim tells the caller (op_passive.c's admission). */
static const char *refusal_reason(ferry_status_t code)
{
    switch (code) {
    case FERRY_ERR_NOT_FOUND:
        return "no such operation (destroyed?)";
    case FERRY_ERR_INVALID_ARGUMENT:
        return "the metadata does not name its operation's memory (edited?), or names an "
               "operation of the other kind";
    case FERRY_ERR_FAILED_PRECONDITION:
        return "the operation is not open to a claim (claimed or ended), or the two sides differ "
               "in peer_error_handling";
    default:
        return ferry_status_string(code);
    }
}

void ferry__active_on_admit(ferry_connector_t *c, const ferry__msg_t *msg)
{
    ferry_op_t *op = ferry__op_find_active(c, msg->op_id);

    if (op == NULL || !op->awaiting_admit ||
        memcmp(msg->key, op->md->notification_key.data, FERRY__KEY_LEN) != 0) {
        ferry_debug("connector %s: admit for no waiting operation", c->name);
        return;
    }
    if (!ferry__nonce_equal(msg->claim_nonce, op->claim_nonce)) {
        /* Not the answer to our claim: whoever sent it knows the key and
         * guessed our id, and may not refuse (or admit) for the peer. */
        ferry_debug("%s: admit without our claim nonce: not from the passive side, ignored",
                    op->label);
        return;
    }
    op->awaiting_admit = false;
    if (msg->status == FERRY_OK) {
        memcpy(op->nonce, msg->nonce, FERRY__NONCE_LEN);
    }
    if (ferry__op_is_final(op)) {
        if (msg->status == FERRY_OK) {
            send_notice(op, owed_status(op)); /* release the passive side */
        }
    } else if (msg->status == FERRY_OK && op->stage != NULL) {
        ferry__staged_start(op);
    } else if (msg->status == FERRY_OK) {
        start_transfer(op);
    } else {
        /* A code a peer may report: the decoder mapped the number. */
        ferry_status_t code = msg->status;
        ferry__op_move(op, FERRY__OP_ERRORED, code, "the passive side refused the %s: %s",
                       op->kind == FERRY__KIND_WRITE ? "write" : "read", refusal_reason(code));
    }
    ferry__op_unref(op); /* the claim's reference */
}

void ferry__active_on_req(ferry__req_t *req)
{
    ferry_op_t *op = req->op;
    const char *why = ucs_status_string(req->status);

    switch (req->type) {
    case FERRY__REQ_CLAIM:
        if (req->status != UCS_OK && op->awaiting_admit) {
            op->awaiting_admit = false;
            ferry__op_move(op, FERRY__OP_ERRORED, FERRY_ERR_TRANSPORT, "claim not sent: %s", why);
            ferry__op_unref(op);
        }
        break;
    case FERRY__REQ_FLUSH:
        op->data_in_flight = false;
        if (ferry__op_is_final(op)) {
            ferry__op_regions_detach(op); /* it ended while data moved */
        }
        if (req->status != UCS_OK) {
            ferry__op_move(op, FERRY__OP_ERRORED, FERRY_ERR_TRANSPORT, "transfer failed: %s", why);
        } else if (op->state == FERRY__OP_TRANSFERRING && atomic_load(&ferry__test_hold_notice)) {
            op->notice_held = true; /* a cancel still sends what it owes */
            atomic_store(&ferry__test_notice_held, true);
        } else if (op->state == FERRY__OP_TRANSFERRING) {
            ferry__op_move(op, FERRY__OP_NOTIFYING, FERRY_OK, NULL);
            send_notice(op, FERRY_OK);
        } else {
            send_notice(op, owed_status(op));
        }
        break;
    case FERRY__REQ_NOTICE:
        if (op->state != FERRY__OP_NOTIFYING) {
            break;
        }
        if (req->status == UCS_OK) {
            ferry__op_move(op, FERRY__OP_COMPLETE, FERRY_OK, NULL);
        } else {
            ferry__op_move(op, FERRY__OP_ERRORED, FERRY_ERR_TRANSPORT, "notice not sent: %s", why);
        }
        break;
    case FERRY__REQ_LANE:
    case FERRY__REQ_CHUNK:
        ferry__staged_on_req(req);
        break;
    case FERRY__REQ_ADMIT:
    case FERRY__REQ_CREDIT:
        break;
    }
}

void ferry__active_claims_sweep(ferry_connector_t *c)
{
    int64_t now = ferry__clock_ms(CLOCK_MONOTONIC);

    if (now < c->next_claim_sweep_ms) {
        return;
    }
    c->next_claim_sweep_ms = now + FERRY__CLAIM_SWEEP_MS;
    for (size_t b = 0; b < FERRY__OP_BUCKETS; b++) {
        ferry_op_t *next;
        for (ferry_op_t *op = c->ops[b]; op != NULL; op = next) {
            next = op->table_next; /* the unref may free op */
            if (!op->awaiting_admit || now < op->claim_deadline_ms) {
                continue;
            }
            if (op->claim_expired) {
                op->awaiting_admit = false; /* no late answer came either */
                ferry__op_unref(op);        /* the claim's reference */
                continue;
            }
            /* A late admission still gets its notice (ferry__active_on_admit:
             * the op is final), so the passive side does not stay claimed. */
            op->claim_expired = true;
            op->claim_deadline_ms = now + (FERRY__LATE_ADMIT_FACTOR - 1) * c->claim_timeout_ms;
            ferry__op_move(op, FERRY__OP_ERRORED, FERRY_ERR_UNAVAILABLE,
                           "the passive side did not answer the claim within %lld ms (gone, or "
                           "unreachable)",
                           (long long)c->claim_timeout_ms);
        }
    }
}

void ferry__active_late_claims_drop(ferry_connector_t *c)
{
    for (size_t b = 0; b < FERRY__OP_BUCKETS; b++) {
        ferry_op_t *next;
        for (ferry_op_t *op = c->ops[b]; op != NULL; op = next) {
            next = op->table_next; /* the unref may free op */
            if (op->awaiting_admit && op->claim_expired) {
                op->awaiting_admit = false;
                ferry__op_unref(op); /* the claim's reference */
            }
        }
    }
}

void ferry__active_cancel(ferry_op_t *op, const char *why)
{
    ferry__op_move(op, FERRY__OP_CANCELLED, FERRY_ERR_CANCELLED, "%s", why);
    ferry__staged_settle(op);
    if (op->notice_held && ferry__op_is_final(op)) {
        /* Its flush completed and the test hook held the notice: the
         * passive side is still owed one. */
        op->notice_held = false;
        send_notice(op, owed_status(op));
    }
}

void ferry__active_release(ferry_op_t *op)
{
    ferry__staged_release(op); /* first: its remote key is the peer's */
    ferry__op_regions_detach(op);
    if (op->peer == NULL) {
        return;
    }
    for (size_t i = 0; op->rkeys != NULL && i < op->n; i++) {
        if (op->rkeys[i] != NULL) {
            ferry__peer_rkey_put(op->peer, op->rkeys[i]);
            op->rkeys[i] = NULL;
        }
    }
    ferry__peer_put(op->peer);
    op->peer = NULL;
}

/* Endpoint and remote keys; lock held. */
static ferry_status_t connect_op(ferry_op_t *op)
{
    ferry_connector_t *c = op->connector;
    ferry_status_t status;

    status = ferry__peer_get(c, op->md->worker_address.data, op->md->worker_address.len, &op->peer);
    if (status == FERRY_ERR_INVALID_ARGUMENT) {
        return ferry__fail(status, "metadata: worker_address: %s", ferry_last_error_message());
    }
    if (status != FERRY_OK) {
        return status;
    }
    op->rkeys = calloc(op->n, sizeof(*op->rkeys));
    if (op->rkeys == NULL) {
        return ferry__fail(FERRY_ERR_NO_MEMORY, "%s: out of memory", op->label);
    }
    for (size_t i = 0; op->md->staging == NULL && i < op->n; i++) {
        const Ferry__V1__Descriptor *d = op->md->descriptors[i];
        status =
            ferry__peer_rkey_get(op->peer, d->rkey.data, d->rkey.len, d->address, &op->rkeys[i]);
        if (status != FERRY_OK) {
            return ferry__fail(status, "metadata: descriptors[%zu].rkey: %s", i,
                               ferry_last_error_message());
        }
        /* Before any claim: UCX's shared-memory transports would put
         * wherever the offset lands (segments.c). */
        status = ferry__rkey_range_check(op->rkeys[i], d->address, d->size);
        if (status != FERRY_OK) {
            return ferry__fail(status, "metadata: descriptors[%zu]: %s", i,
                               ferry_last_error_message());
        }
    }
    return FERRY_OK;
}

/* The ranges a claim names (wire.c): the metadata's descriptors, then its
 * staging block; *ranges_p is malloc'd. md_rules bounds the product. */
static ferry_status_t claim_ranges(const ferry_op_t *op, ferry__range_t **ranges_p, uint32_t *n_p)
{
    const Ferry__V1__RdmaMetadata *md = op->md;
    uint32_t n = (uint32_t)md->n_descriptors + (md->staging != NULL ? 1 : 0);
    ferry__range_t *ranges = calloc(n, sizeof(*ranges));

    if (ranges == NULL) {
        return ferry__fail(FERRY_ERR_NO_MEMORY, "%s: out of memory for the claim", op->label);
    }
    for (size_t i = 0; i < md->n_descriptors; i++) {
        ranges[i] = (ferry__range_t){md->descriptors[i]->address, md->descriptors[i]->size};
    }
    if (md->staging != NULL) {
        ranges[n - 1] =
            (ferry__range_t){md->staging->address, md->staging->slot_size * md->staging->slots};
    }
    *ranges_p = ranges;
    *n_p = n;
    return FERRY_OK;
}

static void send_claim(ferry_op_t *op, const ferry__range_t *ranges, uint32_t n_ranges)
{
    ferry_connector_t *c = op->connector;
    ferry__msg_t msg = {0};

    msg.type = FERRY__MSG_CLAIM;
    memcpy(msg.key, op->md->notification_key.data, FERRY__KEY_LEN);
    msg.op_id = op->id;
    msg.op_kind = (uint8_t)op->kind;
    msg.peer_errors_said = true;
    msg.peer_errors = c->peer_error_handling;
    memcpy(msg.claim_nonce, op->claim_nonce, FERRY__NONCE_LEN); /* what the answer must carry */
    msg.address = (const uint8_t *)c->address;
    msg.address_len = c->address_len;
    msg.ranges = ranges;
    msg.n_ranges = n_ranges;
    op->awaiting_admit = true;
    op->claim_deadline_ms = ferry__clock_ms(CLOCK_MONOTONIC) + c->claim_timeout_ms;
    ferry__op_ref(op); /* dropped when the admit arrives, cannot, or is too late */
    ferry__op_move(op, FERRY__OP_CLAIMING, FERRY_OK, NULL);
    ferry__send_msg(op->peer, &msg, FERRY__REQ_CLAIM, op);
}

/* The device whose context the direct path's UCX work needs where this
 * operation moves CUDA memory, either side (cuda_ipc asks the driver for
 * the current device when it unpacks a key of CUDA memory, and its copies
 * run on the thread that posts or progresses them); -1 when it moves
 * none. The local memory's device, else the progress thread's, else 0; the
 * progress thread takes it when it has none yet (ferry__cuda_admit). */
static int32_t direct_device(ferry_connector_t *c, const ferry_descriptor_t *local,
                             const Ferry__V1__RdmaMetadata *md)
{
    bool remote_cuda = md->staging == NULL && md->n_descriptors > 0 &&
                       md->descriptors[0]->device != NULL &&
                       md->descriptors[0]->device->kind == FERRY__V1__DEVICE_KIND__DEVICE_KIND_CUDA;
    int32_t device, none = -1;

    if (!c->ucx_cuda || (local[0].device.kind != FERRY_DEVICE_CUDA && !remote_cuda)) {
        return -1;
    }
    device = local[0].device.kind == FERRY_DEVICE_CUDA ? (int32_t)local[0].device.id
                                                       : atomic_load(&c->cuda_progress_device);
    device = device < 0 ? 0 : device;
    atomic_compare_exchange_strong(&c->cuda_progress_device, &none, device);
    return device;
}

/* Whether the passive side's endpoints ask for peer failure detection as
 * this connector's do: UCX 1.13 cannot connect two workers that differ,
 * and a passive side that differs would, opening its endpoint back to this
 * one, destroy the endpoint our puts arrive on, under them (UCX asserts, or
 * uses freed memory). So this side refuses before it connects, and the
 * passive side refuses a claim that says otherwise (op_passive.c). */
static ferry_status_t peer_errors_match(const ferry_connector_t *c,
                                        const Ferry__V1__RdmaMetadata *md)
{
    bool on = md->peer_error_handling == FERRY__V1__PEER_ERROR_HANDLING__PEER_ERROR_HANDLING_ON;
    bool off = md->peer_error_handling == FERRY__V1__PEER_ERROR_HANDLING__PEER_ERROR_HANDLING_OFF;

    if ((on || off) && on == c->peer_error_handling) {
        return FERRY_OK;
    }
    return ferry__fail(FERRY_ERR_FAILED_PRECONDITION,
                       "metadata.peer_error_handling: the passive side's is %s, connector %s's is "
                       "%s; UCX 1.13 cannot connect the two (set peer_error_handling alike on "
                       "every worker, and upgrade together the workers that transfer to each "
                       "other)",
                       on    ? "on"
                       : off ? "off"
                             : "not said (a libferry before the field)",
                       c->name, c->peer_error_handling ? "on" : "off");
}

/* Takes ownership of md in every case. */
static ferry_status_t active_begin(ferry_connector_t *c, ferry__op_kind_t kind,
                                   const ferry_descriptor_t *local, size_t n,
                                   Ferry__V1__RdmaMetadata *md, ferry_op_t **op_p)
{
    ferry_op_t *op;
    ferry__range_t *ranges = NULL;
    uint32_t n_ranges = 0;
    ferry_status_t status;

    status = ferry_descriptors_validate(local, n);
    if (status == FERRY_OK) {
        status = ferry__cuda_admit(c, local, n);
    }
    if (status == FERRY_OK) {
        status = ferry__metadata_match(md, kind, local, n);
    }
    if (status == FERRY_OK) {
        status = ferry__staged_check_remote(c, md);
    }
    if (status == FERRY_OK) {
        status = peer_errors_match(c, md);
    }
    if (status == FERRY_OK) {
        status = ferry__op_alloc(c, kind, local, n, &op);
    }
    if (status != FERRY_OK) {
        ferry__metadata_free(md);
        return status;
    }
    op->md = md;
    memcpy(op->key, md->notification_key.data, FERRY__KEY_LEN);
    snprintf(op->label, sizeof(op->label), "%s %llu key %02x%02x%02x%02x",
             kind == FERRY__KIND_WRITE ? "write" : "read", (unsigned long long)op->id, op->key[0],
             op->key[1], op->key[2], op->key[3]);
    ferry__lock(c);
    status = ferry__op_regions_attach(op);
    if (status == FERRY_OK) {
        int32_t device = direct_device(c, local, md);
        bool pushed = device >= 0 && ferry__cuda_push((uint32_t)device) == FERRY_OK;
        status = connect_op(op); /* unpacks the passive side's keys */
        if (pushed) {
            ferry__cuda_pop();
        }
    }
    if (status == FERRY_OK) {
        status = ferry__staged_active_prepare(op, ferry__staged_wanted(c, local));
    }
    if (status == FERRY_OK && getrandom(op->claim_nonce, sizeof(op->claim_nonce), 0) !=
                                  (ssize_t)sizeof(op->claim_nonce)) {
        status = ferry__fail(FERRY_ERR_IO, "%s: no randomness for the claim nonce", op->label);
    }
    if (status == FERRY_OK) {
        status = claim_ranges(op, &ranges, &n_ranges);
    }
    if (status == FERRY_OK) {
        ferry__op_table_add(op);
        ferry__op_move(op, FERRY__OP_READY, FERRY_OK, NULL);
        send_claim(op, ranges, n_ranges);
        ferry__wake(c);
    }
    ferry__unlock(c);
    free(ranges);
    if (status != FERRY_OK) {
        ferry__op_free(op);
        return status;
    }
    *op_p = op;
    return FERRY_OK;
}

static ferry_status_t begin_bytes(ferry_connector_t *c, ferry__op_kind_t kind,
                                  const ferry_descriptor_t *local, size_t n,
                                  const uint8_t *metadata, size_t metadata_len, ferry_op_t **op_p)
{
    Ferry__V1__RdmaMetadata *md;
    ferry_status_t status;

    ferry__clear_error();
    status = ferry__metadata_decode(metadata, metadata_len, &md);
    if (status != FERRY_OK) {
        return status;
    }
    return active_begin(c, kind, local, n, md, op_p);
}

ferry_status_t ferry_metadata_check(const uint8_t *metadata, size_t metadata_len, bool write,
                                    const ferry_descriptor_t *local, size_t n)
{
    Ferry__V1__RdmaMetadata *md;
    ferry_status_t status;

    ferry__clear_error();
    status = ferry_descriptors_validate(local, n);
    if (status == FERRY_OK) {
        status = ferry__metadata_decode(metadata, metadata_len, &md);
    }
    if (status != FERRY_OK) {
        return status;
    }
    status = ferry__metadata_match(md, write ? FERRY__KIND_WRITE : FERRY__KIND_READ, local, n);
    ferry__metadata_free(md);
    return status;
}

ferry_status_t ferry_write_begin(ferry_connector_t *c, const ferry_descriptor_t *local, size_t n,
                                 const uint8_t *metadata, size_t metadata_len, ferry_op_t **op_p)
{
    return begin_bytes(c, FERRY__KIND_WRITE, local, n, metadata, metadata_len, op_p);
}

ferry_status_t ferry_read_begin(ferry_connector_t *c, const ferry_descriptor_t *local, size_t n,
                                const uint8_t *metadata, size_t metadata_len, ferry_op_t **op_p)
{
    return begin_bytes(c, FERRY__KIND_READ, local, n, metadata, metadata_len, op_p);
}
