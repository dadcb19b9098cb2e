/*
 * coord_client.c: libferry's side of the coordinator. A passive operation is
 * published under a request ID (Register); an active operation is started
 * from a request ID (a Claim, which checks the pairing and answers the
 * metadata; a Lookup waits first: see claim()) and its outcome reported
 * (Complete). When the owner is done with a passive operation its record is
 * released (Release), after a Cancel if it never finished.
 *
 * Admission: a writer's Claim is made on the caller's path before the data
 * plane starts (begin_by_id), so the coordinator alone decides who writes;
 * see the Claim rpc in coordinator.proto.
 *
 * Metadata stays bytes: Register carries the operation's own metadata
 * (ferry_op_metadata) appended as they are, and the writer hands the data
 * plane the metadata of the Claim's answer as it came; the coordinator
 * stores and answers those same bytes (rpc_pack_with_field, rpc_field_find
 * in rpc.h). Nothing between the two workers decodes and packs them again.
 *
 * Layering: this file is a client of the public data-plane API only
 * (ferry/ferry.h), as any application could be: it follows an operation
 * through a listener (ferry_op_add_listener), told FINAL when the operation
 * ends and DESTROY when its owner destroys it, and finds its link again with
 * ferry_op_listener_arg. The data plane never names this file; the caller's
 * done callback stays the caller's.
 *
 * The client's threads and what they do are in coord_session.c (the session
 * lease, reports, releases, looks at records) and coord_watch.c (the Watch
 * stream); its state and locking in coord_client_int.h.
 */
#include "worker/coord_client_int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sys/random.h>

#include "common/log.h"
#include "common/pb_wire.h"
#include "common/text.h"
#include "worker/errors.h"
#include "worker/fork.h"

/* The optional fields of the claim params (see their field mask). */
static int claim_wait(const ferry_claim_params_t *p)
{
    return p->field_mask & FERRY_CLAIM_PARAM_FIELD_WAIT ? p->wait_ms : 0;
}

static int claim_ttl(const ferry_claim_params_t *p)
{
    return p->field_mask & FERRY_CLAIM_PARAM_FIELD_TTL ? p->ttl_s : 0;
}

/* The RPC's own message, for ferry_last_error_message(); the code is the
 * returned status (a caller that shows it names it: codes are the
 * contract, the text is for people). */
static ferry_status_t rpc_fail(ferry_status_t status, const char *what, const rpc_error_t *err)
{
    return ferry__fail(status, "%s: %s", what, err->message);
}

/* A wait that the thread's interrupt check ended between calls (a call it
 * ends says so itself: rpc.h). */
static ferry_status_t interrupted(rpc_error_t *err)
{
    err->grpc_code = rpc_status_to_grpc(FERRY_ERR_CANCELLED);
    err->status = FERRY_ERR_CANCELLED;
    snprintf(err->message, sizeof(err->message), "interrupted");
    return FERRY_ERR_CANCELLED;
}

void ferry_interrupt_check_set(ferry_interrupt_check_t check, void *arg)
{
    rpc_interrupt_set(check, arg);
}

/* A varint field's value (ferry_pb_next_field read it whole). */
static uint64_t field_varint(const ferry_pb_field_t *f)
{
    const uint8_t *at = f->value;
    uint64_t v = 0;

    (void)ferry_pb_read_varint(&at, f->value + f->len, &v);
    return v;
}

/* Takes f into out when it is one of the claim's own fields of its answer:
 * its lease, TTL, token or identity. The field's name when it is one of
 * them and does not read as its type (another wire type; a lease_token
 * that does not fit out->token whole, or holds a NUL: cut so, KeepAlive
 * and Complete only failed later, on a token that did not match); NULL
 * otherwise. */
static const char *claim_field_take(const ferry_pb_field_t *f, claim_out_t *out)
{
    const ProtobufCMessageDescriptor *desc = &ferry__v1__claim_response__descriptor;
    uint32_t lease_field = rpc_field_number(desc, "claim_lease_id");
    uint32_t ttl_field = rpc_field_number(desc, "ttl_seconds");
    uint32_t id_field = rpc_field_number(desc, "claim_id");
    const char *name = f->number == lease_field ? "claim_lease_id"
                       : f->number == ttl_field ? "ttl_seconds"
                       : f->number == id_field  ? "claim_id"
                                                : NULL;

    if (f->number == rpc_field_number(desc, "lease_token")) {
        if (f->type != FERRY_PB_LEN || f->len >= sizeof(out->token) ||
            memchr(f->value, '\0', f->len) != NULL) {
            return "lease_token";
        }
        memcpy(out->token, f->value, f->len);
        out->token[f->len] = '\0';
        return NULL;
    }
    if (name == NULL || f->type != FERRY_PB_VARINT) {
        return name;
    }
    if (f->number == lease_field) {
        out->lease = (int64_t)field_varint(f);
    } else if (f->number == ttl_field) {
        out->ttl_s = (int64_t)field_varint(f);
    } else {
        out->id = field_varint(f);
    }
    return NULL;
}

/* The granted Claim's answer (answer[len]): the lease, token and identity
 * for the Complete, and the span of the operation's metadata, the bytes the
 * passive worker packed (the coordinator stores and answers them as they
 * are), which the data plane takes as they are. */
ferry_status_t ferry__coord_claim_read(const ferry_claim_params_t *p, claim_out_t *out, size_t len)
{
    uint32_t op_field = rpc_field_number(&ferry__v1__claim_response__descriptor, "operation");
    const uint8_t *at = out->answer, *end = at != NULL ? at + len : at, *op = NULL;
    const char *bad = NULL; /* the first of the known fields that did not read */
    size_t op_len = 0;
    bool op_twice = false;
    char msg[FERRY__MSG_LEN];
    ferry_pb_field_t f;

    /* Read on its bytes, nothing unpacked: the whole answer's unpack built
     * every descriptor of the operation's metadata (a hostile replica's
     * 4 MiB of empty ones took ~176 MiB of heap; audit-s32 L1), and the
     * claim's lease, token and identity are read whatever is refused, for
     * abandon to give the claim up (review-s32c L1; review-s32e L1: a
     * coordinator writes them after the operation). */
    while (at < end) {
        if (!ferry_pb_next_field(&at, end, &f)) {
            return ferry__fail(FERRY_ERR_PROTOCOL,
                               "claim: the answer for request_id '%s' is malformed", p->request_id);
        }
        if (f.number == op_field && f.type != FERRY_PB_LEN) {
            bad = bad != NULL ? bad : "operation";
        } else if (f.number == op_field) {
            op_twice = op_twice || op != NULL;
            op = f.value;
            op_len = f.len;
        } else {
            const char *what = claim_field_take(&f, out);
            bad = bad != NULL ? bad : what;
        }
    }
    if (bad != NULL) {
        /* Refused, once the whole answer was read (its lease is known),
         * rather than skipped or cut (review-s32e): a claim whose lease
         * read as 0, or whose token was cut, failed only later, at its
         * KeepAlive or Complete. */
        return ferry__fail(FERRY_ERR_PROTOCOL,
                           "claim: the answer for request_id '%s' holds a malformed %s (not of "
                           "its wire type; or a lease_token of %d bytes or more, or with a NUL)",
                           p->request_id, bad, LEASE_TOKEN_CAP);
    }
    if (op_twice) {
        /* No one span is the operation (protobuf would merge occurrences). */
        return ferry__fail(FERRY_ERR_PROTOCOL,
                           "claim: the answer for request_id '%s' holds its operation twice",
                           p->request_id);
    }
    if (op == NULL ||
        rpc_field_find(op, op_len, rpc_field_number(&ferry__v1__operation__descriptor, "metadata"),
                       &out->md, &out->md_len) != FERRY_OK ||
        out->md == NULL) {
        return ferry__fail(FERRY_ERR_PROTOCOL,
                           "claim: the answer for request_id '%s' has no metadata", p->request_id);
    }
    if (ferry_md_check_packed("claim answer: operation.metadata", out->md, out->md_len, msg,
                              sizeof(msg)) != FERRY_OK) {
        return ferry__fail(FERRY_ERR_PROTOCOL, "claim: request_id '%s': %s", p->request_id, msg);
    }
    return FERRY_OK;
}

/* How long a wait for a record pauses after an UNAVAILABLE (or CANCELLED)
 * answer before it asks again: from the first pause to the last, doubling. Short, so that
 * a wait moves on soon after a coordinator rollout; bounded, so that a wait
 * on a coordinator that stays away does not call it in a busy loop. */
#define AWAIT_BACKOFF_MIN_MS 20
#define AWAIT_BACKOFF_MAX_MS 500

/* An answer after which a call that may be repeated is asked again: no
 * replica answered it (UNAVAILABLE), or the server cancelled it (a replica
 * shutting down cancels the calls that reach it late). Not the caller's own
 * interrupt, which also ends a call FERRY_ERR_CANCELLED: callers check
 * rpc_interrupt_tripped() first. */
static bool ask_again(ferry_status_t status)
{
    return status == FERRY_ERR_UNAVAILABLE || status == FERRY_ERR_CANCELLED;
}

/* A number to spread pauses with (not a secret): xorshift64, each thread
 * its own, seeded from the clock and the thread's stack. */
static uint64_t jitter_draw(void)
{
    static _Thread_local uint64_t x;

    if (x == 0) {
        x = (uint64_t)now_ms() * 0x9e3779b97f4a7c15ull ^ (uint64_t)(uintptr_t)&x;
        x = x != 0 ? x : 1;
    }
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return x;
}

/* One Lookup of the wait: only its status counts, so its answer is taken
 * as bytes and never unpacked (a hostile replica's record could hold
 * metadata that costs protobuf-c far more than its size: audit-s32 L1). */
static ferry_status_t lookup_status(ferry_coordinator_t *coord, const Ferry__V1__LookupRequest *req,
                                    rpc_error_t *err)
{
    size_t len = ferry__v1__lookup_request__get_packed_size(req), answer_len = 0;
    uint8_t *packed = malloc(len > 0 ? len : 1);
    void *answer = NULL;
    ferry_status_t status;

    if (packed == NULL) {
        snprintf(err->message, sizeof(err->message), "out of memory");
        return err->status = FERRY_ERR_NO_MEMORY;
    }
    ferry__v1__lookup_request__pack(req, packed);
    status = rpc_unary_raw(coord->channel, COORD_PATH("Lookup"), packed, len,
                           (int64_t)coord->timeout_ms + req->wait_ms, &answer, &answer_len, err);
    free(answer);
    free(packed);
    return status;
}

/* Waits up to wait_ms for p's record to be registered, with a Lookup
 * (which needs no lease). A Lookup only reads, so asking again is always
 * safe: on UNAVAILABLE (a replica that is shutting down ends its parked
 * waits so; the channel to it failed), and on CANCELLED (gRPC's server
 * cancels a call that reaches it after its shutdown began, as the wait's
 * next Lookup may; a Lookup is never answered so otherwise, and this
 * client never cancels one), it asks again, through the same channel,
 * which reconnects (to another replica behind a Service), for as long as
 * wait_ms lasts; and on RESOURCE_EXHAUSTED (the replica's bounds on what
 * waits on etcd, or parks, or what this host may hold of them, were
 * reached: "retry later"), after the same pauses. The wait lasts wait_ms,
 * the last pause cut to what is left of it (review-s32 L3). When wait_ms
 * runs out so, a refusal is the answer as it came; otherwise the wait ends
 * as one that saw no record does, FERRY_ERR_TIMED_OUT (a caller that waits
 * in slices asks again), naming the last answer. */
static ferry_status_t await_record(ferry_coordinator_t *coord, const ferry_claim_params_t *p,
                                   int wait_ms, rpc_error_t *err)
{
    Ferry__V1__LookupRequest req = FERRY__V1__LOOKUP_REQUEST__INIT;
    int64_t deadline = now_ms() + wait_ms;
    int64_t backoff = AWAIT_BACKOFF_MIN_MS;
    ferry_status_t status;

    req.request_id = (char *)p->request_id;
    req.access_token = (char *)p->access_token;
    for (;;) {
        int64_t left = deadline - now_ms(), pause;

        /* At least 1: a Lookup of wait_ms 0 does not wait, and answers
         * NOT_FOUND, not that the wait ran out (review-s32b M1). */
        req.wait_ms = left > 1 ? (int32_t)left : 1;
        status = lookup_status(coord, &req, err);
        if (!(ask_again(status) || status == FERRY_ERR_RESOURCE_EXHAUSTED) ||
            rpc_interrupt_tripped()) {
            break;
        }
        /* Between half the pause and all of it, so that the workers a
         * replica refused at once do not all ask again at once. A pause
         * that reaches the end of wait_ms is the rest of the wait, and no
         * look follows it (review-s32 L3: the wait gave up a pause early;
         * review-s32b M1: a look of what was left after it was answered
         * that the wait ran out, not what the replica said all along). */
        pause = backoff / 2 + (int64_t)(jitter_draw() % (uint64_t)(backoff / 2 + 1));
        left = deadline - now_ms();
        if (!rpc_interrupt_sleep(pause < left ? pause : left > 0 ? left : 0)) {
            status = interrupted(err);
            break;
        }
        if (pause < left) {
            backoff = backoff * 2 > AWAIT_BACKOFF_MAX_MS ? AWAIT_BACKOFF_MAX_MS : backoff * 2;
            /* The next Lookup connects afresh first where the last attempt
             * failed (as every rpc_ call), not at the end of gRPC's reconnect
             * backoff. */
            continue;
        }
        if (status != FERRY_ERR_RESOURCE_EXHAUSTED) {
            char last[sizeof(err->message)];
            snprintf(last, sizeof(last), "%s", err->message);
            snprintf(err->message, sizeof(err->message),
                     "request_id '%.64s': no coordinator answered within wait_ms %d (last: "
                     "%.300s)",
                     p->request_id, wait_ms, last);
            err->status = status = FERRY_ERR_TIMED_OUT;
        }
        break; /* a refusal ends as it was: answered, and refused (review-s31c L2) */
    }
    return status;
}

/* The coordinator's Claim: the one admission decision for a writer (or
 * reader) by request ID, and the writer's one round trip before any byte
 * moves (see begin_by_id and coordinator.proto). It waits for the record as
 * a Lookup would (wait_ms), carries the local descriptor sizes so that a
 * writer whose buffers do not pair is refused with nothing written, and
 * answers the metadata. The claim goes on the session lease, so that the
 * passive side learns if this process dies. */
static ferry_status_t claim(ferry_coordinator_t *coord, const ferry_claim_params_t *p,
                            const ferry_connector_t *connector, Ferry__V1__OperationKind kind,
                            const ferry_descriptor_t *local, size_t n, claim_out_t *out)
{
    Ferry__V1__ClaimRequest req = FERRY__V1__CLAIM_REQUEST__INIT;
    uint64_t *sizes = malloc(n * sizeof(*sizes));
    ferry_status_t status = FERRY_OK;
    bool answered = false; /* the Claim was answered OK: its answer is read */
    rpc_error_t err;
    size_t len = 0;

    if (sizes == NULL) {
        return ferry__fail(FERRY_ERR_NO_MEMORY, "claim: out of memory");
    }
    /* The claim's identity, drawn here: a claim whose answer never comes
     * is given up by it (abandon), which cannot then end this client's
     * next claim of the same ID on the same session lease. */
    out->id = 0;
    while (out->id == 0) {
        if (getrandom(&out->id, sizeof(out->id), 0) != (ssize_t)sizeof(out->id)) {
            free(sizes);
            out->lease = 0;
            return ferry__fail(FERRY_ERR_IO, "claim: getrandom failed drawing a claim_id");
        }
    }
    for (size_t i = 0; i < n; i++) {
        sizes[i] = local[i].size;
    }
    req.request_id = (char *)p->request_id;
    req.access_token = (char *)p->access_token;
    req.claimant = (char *)ferry_connector_name(connector);
    /* Granted only if the passive side's metadata says the same: refused
     * here, nothing written, rather than by the data plane after the
     * claim, which would end the receiver's operation (abandon). */
    req.peer_error_handling = ferry_connector_peer_error_handling(connector)
                                  ? FERRY__V1__PEER_ERROR_HANDLING__PEER_ERROR_HANDLING_ON
                                  : FERRY__V1__PEER_ERROR_HANDLING__PEER_ERROR_HANDLING_OFF;
    req.kind = kind;
    req.lease_token = out->token;
    req.ttl_seconds = claim_ttl(p);
    req.wait_ms = claim_wait(p);
    req.n_descriptor_sizes = n;
    req.descriptor_sizes = sizes;
    req.claim_id = out->id;
    /* The wait is a Lookup's, and the Claim after it waits for nothing.
     * The Claim that makes the session lease holds every other Register
     * and Claim of this client until it is answered (they go on that
     * lease), so it must not be one that waits: a claim-then-publish of the
     * same ID in one process waited out its own wait, and failed. And a
     * Claim that fails UNAVAILABLE may have been granted (see begin_by_id),
     * so it is never asked again, while a Lookup may be: a wait that a
     * coordinator rollout ends (the replica answers its parked waits
     * UNAVAILABLE) goes on at another replica (await_record). */
    if (req.wait_ms > 0) {
        status = await_record(coord, p, req.wait_ms, &err);
        if (status != FERRY_OK) {
            free(sizes);
            out->lease = 0;
            return rpc_fail(status, "claim", &err);
        }
        req.wait_ms = 0;
    }
    for (int attempt = 0; attempt < 2; attempt++) {
        bool making;
        uint8_t *packed;
        req.lease_id = ferry__coord_session_take(coord, &making, out->token);
        len = ferry__v1__claim_request__get_packed_size(&req);
        packed = malloc(len > 0 ? len : 1);
        if (packed == NULL) {
            ferry__coord_session_made(coord, making, 0, 0, "");
            free(sizes);
            return ferry__fail(FERRY_ERR_NO_MEMORY, "claim: out of memory");
        }
        ferry__v1__claim_request__pack(&req, packed);
        /* Sent and answered as bytes (rpc_unary_raw): the answer's metadata
         * is wanted as it came. */
        status = rpc_unary_raw(coord->channel, COORD_PATH("Claim"), packed, len,
                               (int64_t)coord->timeout_ms + req.wait_ms, &out->answer, &len, &err);
        free(packed);
        answered = status == FERRY_OK;
        if (answered) {
            status = ferry__coord_claim_read(p, out, len);
        }
        /* A granted claim made the session lease, even one whose answer
         * then did not read (it is abandoned on that lease). */
        bool granted = answered && out->lease != 0;
        ferry__coord_session_made(coord, making, granted ? out->lease : 0, granted ? out->ttl_s : 0,
                                  granted ? out->token : "");
        if (!answered && ferry__coord_session_was_lost(coord, req.lease_id, status)) {
            continue;
        }
        break;
    }
    free(sizes);
    if (status != FERRY_OK && (!answered || out->lease == 0)) {
        /* The lease the claim would be on, for abandon (0: it would have
         * made a new one, unknown here): not answered, or an answer whose
         * lease could not be read (review-s32e L1). */
        out->lease = req.lease_id;
    }
    return answered ? status : rpc_fail(status, "claim", &err);
}

/* Keeps the outcome of an active operation for its report. */
static void keep_outcome(coord_link_t *link, ferry_op_status_t status)
{
    const char *message = "";
    ferry_status_t code = ferry_op_error(link->op, &message);

    link->final_status = status;
    link->final_code = status == FERRY_OP_STATUS_COMPLETE ? FERRY_OK
                       : code != FERRY_OK                 ? code
                                                          : FERRY_ERR_CANCELLED;
    ferry_utf8_format(link->final_message, sizeof(link->final_message), "%s",
                      message != NULL ? message : "");
}

/* ---- binding operations ------------------------------------------------------ */

static void on_event(ferry_op_t *op, ferry_op_event_t event, ferry_op_status_t status, void *arg);

/* The link of an operation bound here, or NULL. */
static coord_link_t *op_link(const ferry_op_t *op)
{
    void *arg = NULL;
    return ferry_op_listener_arg(op, on_event, &arg) == FERRY_OK ? arg : NULL;
}

/* Binds op: a link on the list, and a listener on op. lease_id and
 * lease_token: the record's lease (passive) or the granted claim's (active);
 * claim_id: the claim's (active; 0 passive). */
static ferry_status_t link_add(ferry_coordinator_t *coord, ferry_op_t *op, bool passive,
                               const char *request_id, const char *token, int64_t lease_id,
                               const char *lease_token, uint64_t claim_id)
{
    coord_link_t *link = calloc(1, sizeof(*link));
    ferry_status_t status;

    if (link == NULL) {
        return FERRY_ERR_NO_MEMORY;
    }
    link->coord = coord;
    link->op = op;
    link->passive = passive;
    link->lease_id = lease_id;
    link->claim_id = claim_id;
    snprintf(link->lease_token, sizeof(link->lease_token), "%s", lease_token);
    snprintf(link->request_id, sizeof(link->request_id), "%s", request_id);
    snprintf(link->token, sizeof(link->token), "%s", token);
    pthread_mutex_lock(&coord->lock);
    link->due_ms = now_ms() + period_ms(coord);
    /* One Get once bound: what changed between the record's write and now
     * reached the watch before the link did. */
    link->look_due = true;
    link->busy = true; /* until the listener is on */
    link->next = coord->links;
    coord->links = link;
    pthread_mutex_unlock(&coord->lock);
    status = ferry_op_add_listener(op, on_event, link);
    pthread_mutex_lock(&coord->lock);
    if (status != FERRY_OK) {
        ferry__coord_link_remove(coord, link);
        pthread_mutex_unlock(&coord->lock);
        free(link);
        return status;
    }
    link->busy = false;
    pthread_cond_broadcast(&coord->cond);
    pthread_mutex_unlock(&coord->lock);
    return FERRY_OK;
}

/* FINAL: the report is due (the session thread sends it). */
static void on_final(coord_link_t *link, ferry_op_status_t status)
{
    pthread_mutex_lock(&link->coord->lock);
    if (!link->told) {
        link->told = true;
        link->final_status = status;
        if (!link->passive) {
            keep_outcome(link, status);
        }
        link->report_due = true;
        pthread_cond_broadcast(&link->coord->cond);
    }
    pthread_mutex_unlock(&link->coord->lock);
}

/* DESTROY: the operation goes; the link outlives it until its last duty
 * (a release, a report) is done. */
static void on_destroy(coord_link_t *link, ferry_op_status_t status)
{
    ferry_coordinator_t *coord = link->coord;
    bool report_now, gone = false;

    pthread_mutex_lock(&coord->lock);
    if (!link->passive) {
        /* Active: the session thread sends the report, so destroy waits for
         * no etcd write; it waits only while the session thread uses the
         * operation itself (look). */
        while (link->looking) {
            pthread_cond_wait(&coord->cond, &coord->lock);
        }
        if (!link->told) {
            link->told = true;
            keep_outcome(link,
                         status == FERRY_OP_STATUS_COMPLETE || status == FERRY_OP_STATUS_ERRORED
                             ? status
                             : FERRY_OP_STATUS_CANCELLED);
            link->report_due = true;
        }
        link->op = NULL;
        if (link->reported && !link->busy) {
            ferry__coord_link_remove(coord, link);
            gone = true;
        }
        pthread_cond_broadcast(&coord->cond);
        pthread_mutex_unlock(&coord->lock);
        if (gone) {
            free(link);
        }
        return;
    }
    /* Only while the session thread applies what it learned to the
     * operation (looking), never across its coordinator call (busy): a
     * destroy while a Get was in flight to a coordinator that stopped
     * answering waited out the call's timeout (10 s by default), on an
     * event loop's thread too. The call's end leaves what this sets alone
     * (ferry__coord_session_main). */
    while (link->looking) {
        pthread_cond_wait(&coord->cond, &coord->lock);
    }
    report_now = !link->reported;

    /* The end is reported exactly once, even when the operation is destroyed
     * before FINAL was told: an unfinished one owes a Cancel. The session
     * thread sends it, then releases the record (refused while it is not
     * final), keeping the link (without its operation) till then: destroy
     * waits for no coordinator call of its own. */
    if (report_now && status != FERRY_OP_STATUS_COMPLETE && status != FERRY_OP_STATUS_ERRORED) {
        link->cancel_reason = status == FERRY_OP_STATUS_CANCELLED
                                  ? "the receiver cancelled the operation"
                                  : "the receiver destroyed the operation before it completed";
        link->cancel_due = true;
    }
    link->op = NULL;
    link->destroyed_ms = now_ms();
    link->releasing = true;
    link->report_due = false;
    /* Received in full, its record is usually still CLAIMED: the writer's
     * Complete follows its notice and is an etcd write away. A Release now
     * would be refused (and cost the coordinator an etcd read to be sure),
     * so it waits for the watch to show the record final, which makes it
     * due at once (coord_watch.c), or a period at most (a watch that is
     * down), then goes the usual way: tried again while refused. (The
     * watch may tell the claim only after the notice, 3-8% of operations in
     * the small-operation benchmark, so a record not yet seen CLAIMED waits
     * too; one whose writer went around the coordinator's Claim never turns
     * final and waits the period.) */
    bool writer_reports =
        status == FERRY_OP_STATUS_COMPLETE && !link->cancel_due && !link->record_final;
    link->due_ms = now_ms() + (writer_reports ? period_ms(coord) : 0);
    pthread_cond_broadcast(&coord->cond);
    pthread_mutex_unlock(&coord->lock);
}

static void on_event(ferry_op_t *op, ferry_op_event_t event, ferry_op_status_t status, void *arg)
{
    (void)op;
    if (event == FERRY_OP_EVENT_FINAL) {
        on_final(arg, status);
    } else if (event == FERRY_OP_EVENT_DESTROY) {
        on_destroy(arg, status);
    }
}

void ferry__coord_watch_stats(ferry_coordinator_t *coord, ferry__coord_watch_stats_t *stats_p)
{
    pthread_mutex_lock(&coord->lock);
    stats_p->streams = coord->watches;
    stats_p->resumes = coord->resumes;
    stats_p->out_of_range = coord->out_of_range;
    stats_p->gets = coord->gets;
    stats_p->renewals = coord->renewals;
    stats_p->revision = coord->watch_rev;
    stats_p->settled = true;
    for (const coord_link_t *l = coord->links; l != NULL; l = l->next) {
        if (l->look_due || l->looking_up) {
            stats_p->settled = false;
        }
    }
    pthread_mutex_unlock(&coord->lock);
}

/* ---- public API ----------------------------------------------------------- */

/* Every field this libferry knows (as CONNECTOR_FIELDS in connector.c). */
#define COORDINATOR_FIELDS                                                                  \
    ((uint64_t)(FERRY_COORDINATOR_PARAM_FIELD_TIMEOUT | FERRY_COORDINATOR_PARAM_FIELD_TLS | \
                FERRY_COORDINATOR_PARAM_FIELD_KEEPALIVE_MS |                                \
                FERRY_COORDINATOR_PARAM_FIELD_TLS_REFRESH_S))

/* A TLS file the channel will read (NULL: not set), opened here first: a
 * missing or unreadable one is then reported naming its field and the
 * system's reason. The rpc layer only logs its cause, which a library
 * caller (whose log is off by default) never sees. */
static ferry_status_t tls_file_check(const char *field, const char *path)
{
    FILE *f;

    if (path == NULL) {
        return FERRY_OK;
    }
    f = fopen(path, "rb");
    if (f == NULL) {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT, "params.%s: cannot open %s: %s", field, path,
                           strerror(errno));
    }
    fclose(f);
    return FERRY_OK;
}

/* Checks the params' numbers and target and fills the channel's settings,
 * each unset one from the environment (rpc_env_*: 0, the default, where that
 * holds no valid value). */
static ferry_status_t read_params(const ferry_coordinator_params_t *params,
                                  rpc_channel_params_t *cparams)
{
    uint64_t mask = params->field_mask;

    if ((mask & FERRY_COORDINATOR_PARAM_FIELD_TIMEOUT) && params->timeout_ms < 1) {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT, "params.timeout_ms %d is not >= 1",
                           params->timeout_ms);
    }
    if (!(mask & FERRY_COORDINATOR_PARAM_FIELD_KEEPALIVE_MS)) {
        cparams->keepalive_ms = rpc_env_keepalive_ms();
    } else if (params->keepalive_ms < RPC_KEEPALIVE_MIN_MS ||
               params->keepalive_ms > RPC_KEEPALIVE_MAX_MS) {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT,
                           "params.keepalive_ms %d is not from %d to %d", params->keepalive_ms,
                           RPC_KEEPALIVE_MIN_MS, RPC_KEEPALIVE_MAX_MS);
    } else {
        cparams->keepalive_ms = params->keepalive_ms;
    }
    if (!(mask & FERRY_COORDINATOR_PARAM_FIELD_TLS_REFRESH_S)) {
        cparams->tls_refresh_s = rpc_env_tls_refresh_s();
    } else if (params->tls_refresh_s < 1 || params->tls_refresh_s > RPC_TLS_REFRESH_MAX_S) {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT,
                           "params.tls_refresh_s %d is not from 1 to %d", params->tls_refresh_s,
                           RPC_TLS_REFRESH_MAX_S);
    } else {
        cparams->tls_refresh_s = params->tls_refresh_s;
    }
    if (strchr(params->target, ',') != NULL && strncmp(params->target, "ipv4:", 5) != 0 &&
        strncmp(params->target, "ipv6:", 5) != 0) {
        /* ferryctl's replica list: gRPC's resolver took it as one DNS name,
         * and every call failed UNAVAILABLE after its timeout. */
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT,
                           "params.target '%s' lists several addresses; a client connects to "
                           "one target: a name that resolves to every replica "
                           "(dns:///ferry-coordinator:7400), or IP addresses as "
                           "ipv4:10.0.0.1:7400,10.0.0.2:7400 (tried in order)",
                           params->target);
    }
    cparams->target = params->target;
    return FERRY_OK;
}

ferry_status_t ferry_coordinator_connect(const ferry_coordinator_params_t *params,
                                         ferry_coordinator_t **coord_p)
{
    rpc_tls_params_t tls = {0};
    rpc_channel_params_t cparams = {0};
    ferry_coordinator_t *coord;
    ferry_status_t status;
    int rc;

    ferry__clear_error();
    if (params == NULL || params->target == NULL || params->target[0] == '\0') {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT, "params.target is required");
    }
    if (coord_p == NULL) {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT, "coordinator_p is required");
    }
    if (params->field_mask & ~COORDINATOR_FIELDS) {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT, "params.field_mask: unknown bits 0x%llx",
                           (unsigned long long)(params->field_mask & ~COORDINATOR_FIELDS));
    }
    status = read_params(params, &cparams);
    if (status != FERRY_OK) {
        return status;
    }
    status = ferry__fork_start("coordinator client");
    if (status != FERRY_OK) {
        return status;
    }
    coord = calloc(1, sizeof(*coord));
    if (coord == NULL) {
        return ferry__fail(FERRY_ERR_NO_MEMORY, "no memory for a coordinator client");
    }
    coord->timeout_ms = (params->field_mask & FERRY_COORDINATOR_PARAM_FIELD_TIMEOUT)
                            ? params->timeout_ms
                            : COORD_DEFAULT_TIMEOUT_MS;
    if (params->field_mask & FERRY_COORDINATOR_PARAM_FIELD_TLS) {
        tls.ca_file = params->tls_ca_file;
        tls.cert_file = params->tls_cert_file;
        tls.key_file = params->tls_key_file;
        tls.server_name = params->tls_server_name;
        cparams.tls = &tls;
        status = tls_file_check("tls_ca_file", tls.ca_file);
        if (status == FERRY_OK) {
            status = tls_file_check("tls_cert_file", tls.cert_file);
        }
        if (status == FERRY_OK) {
            status = tls_file_check("tls_key_file", tls.key_file);
        }
        if (status != FERRY_OK) {
            free(coord);
            return status;
        }
    }
    status = rpc_channel_create(&cparams, &coord->channel);
    if (status != FERRY_OK) {
        free(coord);
        /* The cause (a file that is not PEM, a certificate that does not
         * go with its key) is in the rpc layer's log line, at level error. */
        return ferry__fail(status,
                           "cannot open a channel to coordinator %s: its settings were refused "
                           "(the log, at level error, says why)",
                           params->target);
    }
    rc = pthread_mutex_init(&coord->lock, NULL);
    if (rc != 0) {
        status =
            ferry__fail(FERRY_ERR_IO, "coordinator client: pthread_mutex_init: %s", strerror(rc));
        goto err_channel;
    }
    rc = ferry__cond_init_clock(&coord->cond, CLOCK_MONOTONIC);
    if (rc != 0) {
        status =
            ferry__fail(FERRY_ERR_IO, "coordinator client: pthread_cond_init: %s", strerror(rc));
        goto err_lock;
    }
    rc = pthread_create(&coord->thread, NULL, ferry__coord_session_main, coord);
    if (rc != 0) {
        status = ferry__fail(FERRY_ERR_IO, "cannot start the coordinator session thread: %s",
                             strerror(rc));
        goto err_cond;
    }
    rc = pthread_create(&coord->renewer, NULL, ferry__coord_renew_main, coord);
    if (rc != 0) {
        status = ferry__fail(FERRY_ERR_IO, "cannot start the coordinator renewal thread: %s",
                             strerror(rc));
        goto err_session;
    }
    rc = pthread_create(&coord->watcher, NULL, ferry__coord_watch_main, coord);
    if (rc != 0) {
        status = ferry__fail(FERRY_ERR_IO, "cannot start the coordinator watch thread: %s",
                             strerror(rc));
        goto err_renewer;
    }
    *coord_p = coord;
    return FERRY_OK;

err_renewer:
    pthread_mutex_lock(&coord->lock);
    coord->stopping = true;
    pthread_cond_broadcast(&coord->cond);
    pthread_mutex_unlock(&coord->lock);
    pthread_join(coord->renewer, NULL);
err_session:
    pthread_mutex_lock(&coord->lock);
    coord->stopping = true;
    pthread_cond_broadcast(&coord->cond);
    pthread_mutex_unlock(&coord->lock);
    pthread_join(coord->thread, NULL);
err_cond:
    pthread_cond_destroy(&coord->cond);
err_lock:
    pthread_mutex_destroy(&coord->lock);
err_channel:
    rpc_channel_destroy(coord->channel);
    free(coord);
    return status;
}

/* Whether a destroyed operation's last duty has not been tried yet: its
 * first try is due, waits for the writer's Complete, or is running. One
 * refused or unanswered is left to disconnect's final try. Lock held. */
static bool links_untried(const ferry_coordinator_t *coord)
{
    for (const coord_link_t *l = coord->links; l != NULL; l = l->next) {
        if (l->busy || (l->releasing && l->release_tries == 0) ||
            (l->report_due && l->report_tries == 0)) {
            return true;
        }
    }
    return false;
}

static void unsure_take_all(ferry_coordinator_t *coord);

/* The caller's interrupt check, polled while disconnect waits: once it
 * trips, every wait of the client's threads ends (aborting) and nothing
 * more is tried (the final deadline is now). Lock NOT held. */
static bool disconnect_interrupted(ferry_coordinator_t *coord, int64_t *deadline_p)
{
    if (!rpc_interrupted()) {
        return false;
    }
    if (!atomic_load(&coord->aborting)) {
        *deadline_p = now_ms();
        atomic_store(&coord->final_deadline_ms, *deadline_p);
        atomic_store(&coord->aborting, true);
    }
    return true;
}

/* Joins one of the client's threads; a caller with an interrupt check
 * polls it meanwhile, and an interrupt ends the thread's call in flight. */
static void disconnect_join(ferry_coordinator_t *coord, pthread_t thread, int64_t *deadline_p)
{
    if (!rpc_interrupt_armed()) {
        pthread_join(thread, NULL);
        return;
    }
    for (;;) {
        struct timespec until = ferry__clock_in_ms(CLOCK_REALTIME, RPC_INTERRUPT_POLL_MS);
        if (pthread_timedjoin_np(thread, NULL, &until) == 0) {
            return;
        }
        (void)disconnect_interrupted(coord, deadline_p);
    }
}

ferry_status_t ferry_coordinator_disconnect(ferry_coordinator_t *coord)
{
    unsigned bound = 0;

    ferry__clear_error();
    rpc_interrupt_rearm();
    if (coord == NULL) {
        return FERRY_OK;
    }
    pthread_mutex_lock(&coord->lock);
    for (const coord_link_t *l = coord->links; l != NULL; l = l->next) {
        bound += l->op != NULL;
    }
    if (bound > 0) {
        pthread_mutex_unlock(&coord->lock);
        return ferry__fail(FERRY_ERR_BUSY,
                           "coordinator client: %u operations still bound; destroy them first",
                           bound);
    }
    if (coord->callers > 0) {
        unsigned callers = coord->callers;
        pthread_mutex_unlock(&coord->lock);
        return ferry__fail(FERRY_ERR_BUSY,
                           "coordinator client: %u calls in flight on other threads (a publish, "
                           "a by-ID begin); disconnect once they return (an interrupt check ends "
                           "them: ferry_interrupt_check_set)",
                           callers);
    }
    coord->closing = true;
    pthread_mutex_unlock(&coord->lock);
    unsure_take_all(coord); /* queued as last duties, tried below */
    pthread_mutex_lock(&coord->lock);
    /* Destroyed operations' last duties (a release, a claim's report) are
     * the session thread's while it runs, with its watch: a received
     * operation's Release waits for its writer's Complete, which the watch
     * shows. It makes each one's first try, all within one call timeout
     * (call() bounds each call by what is left); then the threads stop, and
     * what remains gets one last try within the same deadline, and after it
     * leaves with the session lease, which nobody renews from now on. */
    int64_t deadline = now_ms() + coord->timeout_ms;
    atomic_store(&coord->final_deadline_ms, deadline);
    while (links_untried(coord) && now_ms() < deadline) {
        int64_t left = deadline - now_ms();
        if (interruptible_wait(&coord->cond, &coord->lock, left > 0 ? left : 0)) {
            pthread_mutex_unlock(&coord->lock);
            (void)disconnect_interrupted(coord, &deadline);
            pthread_mutex_lock(&coord->lock);
            break;
        }
    }
    coord->stopping = true;
    pthread_cond_broadcast(&coord->cond);
    pthread_mutex_unlock(&coord->lock);
    disconnect_join(coord, coord->watcher, &deadline);
    disconnect_join(coord, coord->renewer, &deadline);
    disconnect_join(coord, coord->thread, &deadline);
    unsigned left = 0;
    bool done = true;
    while (coord->links != NULL) {
        coord_link_t *link = coord->links;
        coord->links = link->next;
        if (now_ms() >= deadline) {
            left++;
        } else if (link->releasing) {
            done = ferry__coord_release_passive(link) && done;
        } else {
            /* A destroyed active operation whose report is still to go. */
            done = ferry__coord_report_active(link) && done;
        }
        free(link);
    }
    if (left > 0) {
        ferry_warn("coordinator client: %u records or reports left to the session lease's expiry",
                   left);
    } else if (done) {
        ferry__coord_session_end(coord); /* nothing is on it any more */
    }
    pthread_cond_destroy(&coord->cond);
    pthread_mutex_destroy(&coord->lock);
    rpc_channel_destroy(coord->channel);
    free(coord);
    return FERRY_OK;
}

/* An access token nobody but this client knows, for a publish whose caller
 * left the choice to the client: drawn here rather than by the coordinator,
 * so that a Register sent again carries the token of the first, and the
 * coordinator answers its repeat (coordinator.proto, Register). */
static ferry_status_t draw_token(char *out, size_t cap)
{
    uint8_t raw[24];

    if (cap < 2 * sizeof(raw) + 1 || getrandom(raw, sizeof(raw), 0) != (ssize_t)sizeof(raw)) {
        return FERRY_ERR_IO;
    }
    ferry_hex(out, raw, sizeof(raw));
    return FERRY_OK;
}

/* Takes back the record a publish that failed unsure may have left, under
 * a token this client drew and told nobody: the session thread cancels and
 * releases it, as a destroyed unfinished operation's (tried again while
 * the coordinator cannot be reached; a record that is not there, or not
 * this token's, is quietly done), so the request ID does not stay taken
 * for as long as the client lives. */
static void take_back(ferry_coordinator_t *coord, const char *request_id, const char *token,
                      int64_t lease)
{
    coord_link_t *link = calloc(1, sizeof(*link));

    if (link == NULL) {
        ferry_warn("op %s: no memory to take back what its failed publish may have left; the "
                   "request ID may stay taken until this client disconnects",
                   request_id);
        return;
    }
    link->coord = coord;
    link->passive = true;
    link->lease_id = lease;
    link->told = true;
    link->reported = true;
    link->abandoned = true;
    link->releasing = true;
    link->cancel_due = true;
    link->cancel_reason =
        "its owner's publish failed before it learned that the record was written";
    snprintf(link->request_id, sizeof(link->request_id), "%s", request_id);
    snprintf(link->token, sizeof(link->token), "%s", token);
    pthread_mutex_lock(&coord->lock);
    link->destroyed_ms = now_ms();
    link->due_ms = link->destroyed_ms;
    link->next = coord->links;
    coord->links = link;
    pthread_cond_broadcast(&coord->cond);
    pthread_mutex_unlock(&coord->lock);
}

/* A record that a publish which failed unsure may have left under the
 * caller's token (a drawn token's is taken back at once). The caller may
 * publish the operation again with that token and take it over (the
 * coordinator answers the repeat); so it is taken back only when the
 * operation is destroyed without having done so, and at disconnect. One
 * per operation (its latest failed request ID; an earlier one is taken
 * back when a later one replaces it), found from the operation by its
 * listener. */
typedef struct coord_unsure {
    ferry_coordinator_t *coord; /* NULL once disconnect took it over */
    struct coord_unsure *next;  /* on coord->unsure */
    char request_id[FERRY_REQUEST_ID_MAX + 1];
    char token[FERRY_TOKEN_MAX + 1];
    int64_t lease;
    bool settled; /* published after all, or taken back already */
} coord_unsure_t;

/* Guards every coord_unsure_t and each client's list of them. Taken before
 * a client's lock (take_back), never after. */
static pthread_mutex_t unsure_lock = PTHREAD_MUTEX_INITIALIZER;

/* Takes u off its client's list. unsure_lock held. */
static void unsure_unlink(coord_unsure_t *u)
{
    for (coord_unsure_t **pp = &u->coord->unsure; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == u) {
            *pp = u->next;
            break;
        }
    }
    u->coord = NULL;
}

static void unsure_on_event(ferry_op_t *op, ferry_op_event_t event, ferry_op_status_t status,
                            void *arg)
{
    coord_unsure_t *u = arg;
    (void)op;
    (void)status;

    if (event != FERRY_OP_EVENT_DESTROY) {
        return;
    }
    pthread_mutex_lock(&unsure_lock);
    if (u->coord != NULL) {
        if (!u->settled) {
            take_back(u->coord, u->request_id, u->token, u->lease);
        }
        unsure_unlink(u);
    }
    pthread_mutex_unlock(&unsure_lock);
    free(u);
}

static coord_unsure_t *unsure_of(const ferry_op_t *op)
{
    void *arg = NULL;
    return ferry_op_listener_arg(op, unsure_on_event, &arg) == FERRY_OK ? arg : NULL;
}

/* After a publish of op that failed unsure under the caller's token. */
static void unsure_keep(ferry_coordinator_t *coord, ferry_op_t *op, const char *request_id,
                        const char *token, int64_t lease)
{
    coord_unsure_t *u = unsure_of(op);

    pthread_mutex_lock(&unsure_lock);
    if (u != NULL && u->coord != NULL && !u->settled &&
        (u->coord != coord || strcmp(u->request_id, request_id) != 0 ||
         strcmp(u->token, token) != 0)) {
        take_back(u->coord, u->request_id, u->token, u->lease); /* this one replaces it */
    }
    if (u != NULL && u->coord != coord) {
        if (u->coord != NULL) {
            unsure_unlink(u);
        }
        u->coord = coord;
        u->next = coord->unsure;
        coord->unsure = u;
    }
    if (u == NULL && (u = calloc(1, sizeof(*u))) != NULL) {
        if (ferry_op_add_listener(op, unsure_on_event, u) == FERRY_OK) {
            u->coord = coord;
            u->next = coord->unsure;
            coord->unsure = u;
        } else {
            free(u);
            u = NULL;
        }
    }
    if (u == NULL) {
        take_back(coord, request_id, token, lease); /* no memory, or being destroyed */
    } else {
        snprintf(u->request_id, sizeof(u->request_id), "%s", request_id);
        snprintf(u->token, sizeof(u->token), "%s", token);
        u->lease = lease;
        u->settled = false;
    }
    pthread_mutex_unlock(&unsure_lock);
}

/* After op published request_id: a record its failed try left there is
 * now the operation's (its repeat was answered as registered). */
static void unsure_settle(ferry_coordinator_t *coord, ferry_op_t *op, const char *request_id)
{
    coord_unsure_t *u = unsure_of(op);

    pthread_mutex_lock(&unsure_lock);
    if (u != NULL && u->coord == coord && strcmp(u->request_id, request_id) == 0) {
        u->settled = true;
    }
    pthread_mutex_unlock(&unsure_lock);
}

/* Disconnect: what failed publishes may have left is taken back now, by
 * the client's last duties; their operations may outlive the client. */
static void unsure_take_all(ferry_coordinator_t *coord)
{
    pthread_mutex_lock(&unsure_lock);
    while (coord->unsure != NULL) {
        coord_unsure_t *u = coord->unsure;
        coord->unsure = u->next;
        if (!u->settled) {
            take_back(coord, u->request_id, u->token, u->lease);
        }
        u->settled = true;
        u->coord = NULL;
    }
    pthread_mutex_unlock(&unsure_lock);
}

/* One Register of req (lease_id and lease_token filled here, from the
 * session: the one it makes, or one made meanwhile) with the operation's
 * metadata bytes as packed; *lease_p: the lease it named (0: it would make
 * the session's). */
static ferry_status_t register_once(ferry_coordinator_t *coord, Ferry__V1__RegisterRequest *req,
                                    const uint8_t *bytes, size_t len, int timeout_ms,
                                    Ferry__V1__RegisterResponse **resp_p, int64_t *lease_p,
                                    rpc_error_t *err)
{
    ferry_status_t status = FERRY_OK;

    for (int attempt = 0; attempt < 2; attempt++) {
        uint8_t *packed = NULL;
        size_t packed_len = 0;
        bool making;
        req->lease_id = ferry__coord_session_take(coord, &making, req->lease_token);
        *lease_p = req->lease_id;
        /* The metadata goes as the operation packed it: the coordinator
         * stores these bytes and the writer decodes them (rpc.h). */
        status = rpc_pack_with_field(
            &req->base, rpc_field_number(&ferry__v1__register_request__descriptor, "metadata"),
            bytes, len, &packed, &packed_len);
        if (status != FERRY_OK) {
            ferry__coord_session_made(coord, making, 0, 0, "");
            snprintf(err->message, sizeof(err->message), "cannot pack the request");
            return status;
        }
        status = rpc_unary_packed(coord->channel, COORD_PATH("Register"), packed, packed_len,
                                  &ferry__v1__register_response__descriptor, timeout_ms,
                                  (ProtobufCMessage **)resp_p, err);
        free(packed);
        ferry__coord_session_made(coord, making, status == FERRY_OK ? (*resp_p)->lease_id : 0,
                                  status == FERRY_OK ? (*resp_p)->ttl_seconds : 0,
                                  status == FERRY_OK ? (*resp_p)->lease_token : "");
        if (!ferry__coord_session_was_lost(coord, req->lease_id, status)) {
            break;
        }
    }
    return status;
}

/* Sends the Register, and again while the answer is UNAVAILABLE (a replica
 * that went mid-call, a coordinator rollout, etcd not answering the
 * coordinator) or the server's CANCELLED (a replica shutting down; not the
 * caller's interrupt, which ends it), pausing AWAIT_BACKOFF_MIN_MS doubling to
 * AWAIT_BACKOFF_MAX_MS, within the client's timeout. A try whose answer
 * never came may have been applied: the next one, with the same token,
 * lease and metadata, is its repeat, which the coordinator answers as
 * registered. *unsure_p: the publish failed, and some try may have been
 * applied. */
static ferry_status_t register_until(ferry_coordinator_t *coord, Ferry__V1__RegisterRequest *req,
                                     const uint8_t *bytes, size_t len,
                                     Ferry__V1__RegisterResponse **resp_p, int64_t *lease_p,
                                     bool *unsure_p, rpc_error_t *err)
{
    int64_t deadline = now_ms() + coord->timeout_ms;
    int64_t backoff = AWAIT_BACKOFF_MIN_MS;
    int64_t unsure_lease = -1; /* the lease of the last try that may have been applied */
    char unavailable[sizeof(err->message)] = ""; /* why the last UNAVAILABLE try failed */
    int tries = 0;
    ferry_status_t status;

    for (;;) {
        int64_t left = deadline - now_ms();
        status =
            register_once(coord, req, bytes, len, left > 1 ? (int)left : 1, resp_p, lease_p, err);
        tries++;
        /* A Register that got no answer may have been applied (a replica
         * gone mid-call, the call's time out, etcd slow behind the
         * coordinator, a replica shutting down), and so may one the
         * caller's check cut. */
        if (ferry__coord_unanswered(status) || (status != FERRY_OK && rpc_interrupt_tripped())) {
            unsure_lease = *lease_p;
        }
        if (ask_again(status)) {
            snprintf(unavailable, sizeof(unavailable), "%s", err->message);
        }
        if (!ask_again(status) || rpc_interrupt_tripped() || deadline - now_ms() <= backoff) {
            break;
        }
        if (!rpc_interrupt_sleep(backoff)) {
            status = interrupted(err);
            break;
        }
        backoff = backoff * 2 > AWAIT_BACKOFF_MAX_MS ? AWAIT_BACKOFF_MAX_MS : backoff * 2;
    }
    /* Tried again until the timeout: the cause is the UNAVAILABLE that
     * made it go again (a coordinator that cannot be reached, a TLS
     * handshake refused), not the last try's cut-short deadline. */
    if (status != FERRY_OK && rpc_interrupt_tripped()) {
        snprintf(err->message, sizeof(err->message), "interrupted (%d tries)", tries);
        status = FERRY_ERR_CANCELLED;
    } else if (status == FERRY_ERR_CANCELLED ||
               (tries > 1 && (status == FERRY_ERR_UNAVAILABLE || status == FERRY_ERR_TIMED_OUT))) {
        /* The server's CANCELLED is a replica that went, not the caller's
         * FERRY_ERR_CANCELLED ("interrupted", above). */
        snprintf(err->message, sizeof(err->message),
                 "no coordinator answered within %d ms (%d tries; last: %.400s)", coord->timeout_ms,
                 tries, unavailable);
        status = FERRY_ERR_UNAVAILABLE;
    }
    /* A try that made the session lease is not repeatable (a record on a
     * lease nobody was told of is no caller's): its record, if etcd took
     * it, is what refuses the next try. Its cause is the answer. */
    if (status == FERRY_ERR_ALREADY_EXISTS && unsure_lease >= 0 && unsure_lease != *lease_p) {
        snprintf(err->message, sizeof(err->message),
                 "request_id '%.128s' is taken, most likely by this publish's earlier try, whose "
                 "answer never came (on a session lease made by that try)",
                 req->request_id);
        status = FERRY_ERR_UNAVAILABLE;
    }
    *unsure_p = status != FERRY_OK && unsure_lease >= 0;
    return status;
}

/* A caller's call of the client's API begins (coord not NULL): counted,
 * so that disconnect refuses meanwhile; refused once disconnect began. */
static ferry_status_t caller_enter(ferry_coordinator_t *coord)
{
    ferry_status_t status = FERRY_OK;

    pthread_mutex_lock(&coord->lock);
    if (coord->closing) {
        status = FERRY_ERR_MISUSE;
    } else {
        coord->callers++;
    }
    pthread_mutex_unlock(&coord->lock);
    return status == FERRY_OK ? FERRY_OK
                              : ferry__fail(status, "coordinator client: being disconnected");
}

static void caller_leave(ferry_coordinator_t *coord)
{
    pthread_mutex_lock(&coord->lock);
    coord->callers--;
    pthread_mutex_unlock(&coord->lock);
}

static ferry_status_t op_publish(ferry_op_t *op, ferry_coordinator_t *coord,
                                 const ferry_publish_params_t *params);

ferry_status_t ferry_op_publish(ferry_op_t *op, ferry_coordinator_t *coord,
                                const ferry_publish_params_t *params)
{
    ferry_status_t status;

    ferry__clear_error();
    if (coord == NULL) {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT,
                           "op, coordinator and request_id are required");
    }
    status = caller_enter(coord);
    if (status == FERRY_OK) {
        status = op_publish(op, coord, params);
        caller_leave(coord);
    }
    return status;
}

static ferry_status_t op_publish(ferry_op_t *op, ferry_coordinator_t *coord,
                                 const ferry_publish_params_t *params)
{
    Ferry__V1__RegisterRequest req = FERRY__V1__REGISTER_REQUEST__INIT;
    Ferry__V1__RegisterResponse *resp = NULL;
    const uint8_t *bytes;
    size_t len;
    rpc_error_t err;
    ferry_status_t status;
    char lease_token[LEASE_TOKEN_CAP];
    char drawn[FERRY_TOKEN_MAX + 1];
    int64_t lease = 0;
    bool unsure = false;

    ferry__clear_error();
    rpc_interrupt_rearm();
    if (op == NULL || coord == NULL || params == NULL || params->request_id == NULL) {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT,
                           "op, coordinator and request_id are required");
    }
    if (params->field_mask & ~(uint64_t)FERRY_PUBLISH_PARAM_FIELD_TTL) {
        return ferry__fail(
            FERRY_ERR_INVALID_ARGUMENT, "params.field_mask: unknown bits 0x%llx",
            (unsigned long long)(params->field_mask & ~(uint64_t)FERRY_PUBLISH_PARAM_FIELD_TTL));
    }
    status = ferry_op_metadata(op, &bytes, &len);
    if (status != FERRY_OK) {
        return status;
    }
    if (op_link(op) != NULL) {
        return ferry__fail(FERRY_ERR_MISUSE, "operation is already published");
    }
    if (ferry_op_status_is_final(ferry_op_status(op))) {
        /* Its record would be REGISTERED with no operation behind it: a
         * writer's claim granted, then refused by the data plane. */
        return ferry__fail(FERRY_ERR_FAILED_PRECONDITION,
                           "operation is %s: a final operation cannot be published",
                           ferry_op_status_name(ferry_op_status(op)));
    }
    if (params->access_token != NULL && params->access_token[0] == '\0') {
        /* Sent so, the coordinator would pick the token, which a lost
         * answer takes with it (draw_token). */
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT,
                           "params.access_token: empty (NULL lets libferry draw one)");
    }
    /* The coordinator's rules, here too: a bad ID is refused at once, not
     * after an unreachable coordinator cost the call its timeout. */
    char why[256];
    if (ferry_request_id_check("params.request_id", params->request_id, why, sizeof(why)) !=
            FERRY_OK ||
        (params->access_token != NULL &&
         ferry_token_check("params.access_token", params->access_token, 1, why, sizeof(why)) !=
             FERRY_OK)) {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT, "%s", why);
    }
    if (params->access_token == NULL && draw_token(drawn, sizeof(drawn)) != FERRY_OK) {
        return ferry__fail(FERRY_ERR_IO, "register: getrandom failed drawing an access token");
    }
    req.request_id = (char *)params->request_id;
    req.access_token = (char *)(params->access_token != NULL ? params->access_token : drawn);
    req.ttl_seconds = params->field_mask & FERRY_PUBLISH_PARAM_FIELD_TTL ? params->ttl_s : 0;
    req.owner = (char *)ferry_connector_name(ferry_op_connector(op));
    req.lease_token = lease_token;
    status = register_until(coord, &req, bytes, len, &resp, &lease, &unsure, &err);
    if (status != FERRY_OK) {
        /* A token the caller chose is the caller's to use: publishing the
         * operation again with it takes the record over (a repeat). One
         * drawn here dies with this call, and so would the record. */
        if (unsure && params->access_token == NULL) {
            take_back(coord, params->request_id, drawn, lease);
        } else if (unsure) {
            unsure_keep(coord, op, params->request_id, params->access_token, lease);
        }
        return rpc_fail(status, "register", &err);
    }
    unsure_settle(coord, op, params->request_id);
    status = link_add(coord, op, true, params->request_id, resp->access_token, resp->lease_id,
                      resp->lease_token, 0);
    ferry__v1__register_response__free_unpacked(resp, NULL);
    if (status != FERRY_OK) {
        return ferry__fail(status, "cannot follow the published operation: %s",
                           ferry_status_string(status));
    }
    return FERRY_OK;
}

const char *ferry_op_access_token(const ferry_op_t *op)
{
    const coord_link_t *link = op_link(op);
    return link != NULL ? link->token : NULL;
}

/* A claim that was (or may have been) granted and that no operation will
 * follow: the session thread completes it as failed (tried again while the
 * coordinator cannot be reached), so that the record turns ERRORED at once
 * instead of when this client's lease expires, and the receiver learns it.
 * A claim that never arrived is refused that Complete, quietly, and so is
 * one that did not become the record's claim: the Complete names the
 * claim_id this client drew for it, so it cannot end a later claim of the
 * same ID on the same session lease (this client's retry). lease 0 (the
 * claim would have made its own lease): nothing to complete with; it
 * expires. */
static void abandon(ferry_coordinator_t *coord, const ferry_claim_params_t *p, int64_t lease,
                    const char *lease_token, uint64_t claim_id, ferry_status_t code,
                    const char *why)
{
    coord_link_t *link;

    if (lease == 0 || (link = calloc(1, sizeof(*link))) == NULL) {
        return;
    }
    link->coord = coord;
    link->lease_id = lease;
    link->claim_id = claim_id;
    link->told = true;
    link->report_due = true;
    link->abandoned = true;
    link->final_status = FERRY_OP_STATUS_ERRORED;
    link->final_code = code;
    snprintf(link->lease_token, sizeof(link->lease_token), "%s", lease_token);
    snprintf(link->request_id, sizeof(link->request_id), "%s", p->request_id);
    snprintf(link->token, sizeof(link->token), "%s", p->access_token);
    ferry_utf8_format(link->final_message, sizeof(link->final_message), "%s", why);
    pthread_mutex_lock(&coord->lock);
    link->next = coord->links;
    coord->links = link;
    pthread_cond_broadcast(&coord->cond);
    pthread_mutex_unlock(&coord->lock);
}

/* The test seam for interleavings (tests only; never set in production):
 * FERRY_TEST_PAUSE="POINT:PREFIX" makes begin_by_id stop at POINT
 * ("before-claim": before its Claim; "after-claim": between its Claim and
 * the data plane's begin): it creates PREFIX.<pid>.reached and
 * waits (up to a minute) for PREFIX.go to exist. Read at the call, not at
 * load. */
static void test_pause(const char *point)
{
    const char *env = getenv("FERRY_TEST_PAUSE");
    size_t n = strlen(point);
    char path[512];
    FILE *f;

    if (env == NULL || strncmp(env, point, n) != 0 || env[n] != ':') {
        return;
    }
    snprintf(path, sizeof(path), "%s.%ld.reached", env + n + 1, (long)getpid());
    f = fopen(path, "w");
    if (f != NULL) {
        fclose(f);
    }
    snprintf(path, sizeof(path), "%s.go", env + n + 1);
    for (int64_t until = now_ms() + 60000; access(path, F_OK) != 0 && now_ms() < until;) {
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
}

/* The Claim (one round trip, waiting for the record if asked), which
 * refuses a writer whose buffers do not pair (kind, count, sizes) before it
 * touches the record: the coordinator decides the one writer before any byte
 * moves, so a refused writer never touches the receiver's memory and the
 * record names the one whose bytes the receiver holds. Only then does the
 * transfer begin, from the metadata the Claim answered; the Complete goes out
 * from the session thread when it ends. */
static ferry_status_t begin_by_id(ferry_connector_t *connector, ferry_coordinator_t *coord,
                                  const ferry_claim_params_t *p, bool write,
                                  const ferry_descriptor_t *local, size_t n, ferry_op_t **op_p)
{
    ferry_op_t *op = NULL;
    ferry_status_t status;
    claim_out_t got = {0};

    ferry__clear_error();
    rpc_interrupt_rearm();
    if (connector == NULL || coord == NULL || p == NULL || p->request_id == NULL ||
        p->access_token == NULL || op_p == NULL) {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT,
                           "connector, coordinator, request_id, access_token and op_p are "
                           "required");
    }
    if (p->field_mask & ~(uint64_t)(FERRY_CLAIM_PARAM_FIELD_WAIT | FERRY_CLAIM_PARAM_FIELD_TTL)) {
        return ferry__fail(
            FERRY_ERR_INVALID_ARGUMENT, "params.field_mask: unknown bits 0x%llx",
            (unsigned long long)(p->field_mask & ~(uint64_t)(FERRY_CLAIM_PARAM_FIELD_WAIT |
                                                             FERRY_CLAIM_PARAM_FIELD_TTL)));
    }
    char why[256];
    if (ferry_request_id_check("params.request_id", p->request_id, why, sizeof(why)) != FERRY_OK ||
        ferry_token_check("params.access_token", p->access_token, 1, why, sizeof(why)) !=
            FERRY_OK) {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT, "%s", why);
    }
    if (claim_wait(p) < 0 || claim_ttl(p) < 0) {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT, "params.%s: %d is negative",
                           claim_wait(p) < 0 ? "wait_ms" : "ttl_s",
                           claim_wait(p) < 0 ? claim_wait(p) : claim_ttl(p));
    }
    status = ferry_descriptors_validate(local, n);
    if (status != FERRY_OK) {
        return status;
    }
    test_pause("before-claim");
    status = claim(coord, p, connector,
                   write ? FERRY__V1__OPERATION_KIND__OPERATION_KIND_WRITE
                         : FERRY__V1__OPERATION_KIND__OPERATION_KIND_READ,
                   local, n, &got);
    if (status != FERRY_OK) {
        if (got.answer != NULL) {
            /* Granted, but its answer did not read. */
            free(got.answer);
            abandon(coord, p, got.lease, got.token, got.id, status, ferry_last_error_message());
        } else if (status == FERRY_ERR_TIMED_OUT || status == FERRY_ERR_UNAVAILABLE ||
                   status == FERRY_ERR_CANCELLED || rpc_interrupt_tripped()) {
            /* No answer is not no: the claim may have been granted (the
             * server's CANCELLED too: a replica shutting down ends the
             * calls its grace did not see through). */
            abandon(coord, p, got.lease, got.token, got.id, status,
                    rpc_interrupt_tripped()
                        ? "the writer gave up its claim: its caller interrupted the wait"
                        : "the writer gave up its claim: the coordinator did not answer");
            if (status == FERRY_ERR_CANCELLED && !rpc_interrupt_tripped()) {
                /* Not the caller's cancel: say what it was. */
                status = ferry__fail(FERRY_ERR_UNAVAILABLE,
                                     "claim: the coordinator cancelled the call (a replica "
                                     "shutting down?); the claim, if it was granted, is given "
                                     "up: %s",
                                     ferry_last_error_message());
            }
        }
        return status;
    }
    test_pause("after-claim");
    /* Claimed: now, and only now, the data plane. */
    status = write ? ferry_write_begin(connector, local, n, got.md, got.md_len, &op)
                   : ferry_read_begin(connector, local, n, got.md, got.md_len, &op);
    free(got.answer);
    if (status == FERRY_OK) {
        status = link_add(coord, op, false, p->request_id, p->access_token, got.lease, got.token,
                          got.id);
        if (status == FERRY_OK) {
            *op_p = op;
            return FERRY_OK;
        }
        ferry_op_destroy(op);
        ferry__fail(status, "cannot bind the operation to the coordinator");
    }
    /* Claimed, but nothing follows it. */
    abandon(coord, p, got.lease, got.token, got.id, status, ferry_last_error_message());
    return status;
}

/* begin_by_id, counted as a caller's call (caller_enter). */
static ferry_status_t begin_by_id_counted(ferry_connector_t *connector, ferry_coordinator_t *coord,
                                          const ferry_claim_params_t *p, bool write,
                                          const ferry_descriptor_t *local, size_t n,
                                          ferry_op_t **op_p)
{
    ferry_status_t status;

    ferry__clear_error();
    if (coord == NULL) {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT,
                           "connector, coordinator, request_id and access_token are required");
    }
    status = caller_enter(coord);
    if (status == FERRY_OK) {
        status = begin_by_id(connector, coord, p, write, local, n, op_p);
        caller_leave(coord);
    }
    return status;
}

ferry_status_t ferry_write_begin_by_id(ferry_connector_t *connector, ferry_coordinator_t *coord,
                                       const ferry_claim_params_t *params,
                                       const ferry_descriptor_t *local, size_t n, ferry_op_t **op_p)
{
    return begin_by_id_counted(connector, coord, params, true, local, n, op_p);
}

ferry_status_t ferry_read_begin_by_id(ferry_connector_t *connector, ferry_coordinator_t *coord,
                                      const ferry_claim_params_t *params,
                                      const ferry_descriptor_t *local, size_t n, ferry_op_t **op_p)
{
    return begin_by_id_counted(connector, coord, params, false, local, n, op_p);
}
