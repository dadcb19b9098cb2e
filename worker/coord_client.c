/*
 * coord_client.c: libferry's side of the coordinator. A passive operation is
 * published under a request ID (Register); an active operation is started
 * from a request ID (Lookup, check, Claim) and its outcome reported
 * (Complete). When the owner is done with a passive operation its record is
 * released (Release), after a Cancel if it never finished.
 *
 * The session lease: each client holds one etcd lease, made by its first
 * Register or Claim and kept alive by the session thread; every later record
 * and claim of the client goes on it (lease_id in the request), as etcd's own
 * sessions do. A registration then costs one etcd write, and one KeepAlive
 * per TTL/3 renews all of the client's operations. The lease token that came
 * with the lease (only this client has it) goes with the lease ID on every
 * KeepAlive, Register and Claim, and with a claim's lease on Complete. If the process dies the
 * lease expires, and with it every record and claim of the process: the
 * coordinator reports them EXPIRED, or ERRORED for a claim.
 *
 * One renewal thread per ferry_coordinator_t renews the session lease at a
 * third of its TTL and does nothing else, so no other call (each may take
 * timeout_ms, which may exceed the TTL) ever holds a renewal back; if etcd
 * lost the lease, the next operation makes a new one.
 *
 * One session thread per ferry_coordinator_t does the rest that is periodic
 * or slow, so no UCX progress thread ever waits on gRPC:
 *   - a link (an operation bound to the coordinator) looks at its record
 *     when the watch tells it changed (the event carries the record), and
 *     reads it with a Get only once bound and after a new stream, so it
 *     learns that its peer failed (ERRORED), cancelled (CANCELLED) or that
 *     its record is gone (its owner's lease expired) as the coordinator
 *     does, with no polling; a Get that fails is made again after a pause;
 *   - an operation's end, queued by its listener, is reported: Complete for
 *     an active one (tried again while the coordinator cannot be reached),
 *     Cancel for a passive one cancelled here;
 *   - a destroyed passive operation's record is released (after the Cancel
 *     it still owes), tried again while refused or unanswered, cancelled
 *     first if it stays open 2 x TTL past the destroy.
 *
 * One watch thread per ferry_coordinator_t holds one Watch stream while
 * links exist, and hands a link the record of each event that names it.
 * The contract has no multi-ID watch, so the stream watches every ID ("*")
 * and events for other IDs are dropped here. The thread remembers the
 * revision of the last message it read (watch_rev: the `created` header of
 * a fresh stream, then each message's, which carries a revision whole;
 * not a `fragment`, the part of a revision that has more), and when a
 * stream breaks it resumes
 * with start_revision = watch_rev + 1: the replica replays what changed
 * while no stream was up, so no record is read again. A fresh stream (none
 * remembered: the first, one after the stream was closed for want of
 * links, or after OUT_OF_RANGE, when the replica no longer holds those
 * changes because it restarted or reloaded its view) marks every link
 * instead (re-Get after re-Watch: whatever changed before the stream is
 * read, whatever changes later is an event).
 *
 * Admission: a writer's Claim is made on the caller's path after its Lookup
 * and before the data plane starts (begin_by_id), so the coordinator alone
 * decides who writes; see the Claim rpc in coordinator.proto.
 *
 * Metadata stays bytes: Register carries the operation's own metadata
 * (ferry_op_metadata) appended as they are, and the writer hands the data
 * plane the metadata of the Lookup's answer as it came; the coordinator
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
 * Locking: coord->lock guards the link list, every link's fields and the
 * session lease. A link the session thread works on outside the lock is
 * marked busy; unlinking (on DESTROY) waits until it is not. The data plane
 * tells listeners without holding its connector lock.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "ferry/coordinator.h"
#include "ferry/v1/coordinator.pb-c.h"
#include "rpc/rpc.h"
#include "worker/coord_client.h"
#include "worker/errors.h"

/* After ferry/ferry.h: it gives ferry__op_state_status. */
#include "common/op_state.h"

#define COORD_DEFAULT_TIMEOUT_MS 10000
#define COORD_DEFAULT_TTL_S      10
#define COORD_PATH(m)            "/ferry.v1.Coordinator/" m
#define LEASE_TOKEN_CAP          129 /* the coordinator's are 64 hex characters */

typedef struct coord_link {
    struct coord_link *next;
    ferry_coordinator_t *coord;
    ferry_op_t *op;
    bool passive;
    char request_id[129];
    char token[257];
    int64_t lease_id;                  /* the lease the record (passive) or claim (active) is on */
    char lease_token[LEASE_TOKEN_CAP]; /* lease_id's (active: Complete shows it) */
    uint64_t claim_id;                 /* active: the claim's, for Complete */
    int64_t due_ms;                    /* next retry (release, report), monotonic */
    bool look_due;                     /* the record may have changed: look */
    int look_tries;                    /* Gets failed in a row (look_due_ms: the next) */
    int64_t look_due_ms;
    /* The watch's latest event for the record (ev_valid): looked at as it
     * is, without a Get. A new stream clears it (then the look is a Get). */
    bool ev_valid;
    bool ev_gone; /* deleted because its owner's lease expired */
    ferry_op_state_t ev_state;
    char ev_message[256];
    bool busy;    /* the session thread is using it outside the lock */
    bool looking; /* ... and its operation (look): destroy waits for that */
    bool told;    /* the end is known here (FINAL, or DESTROY first) */
    bool report_due;
    bool reported;
    ferry_op_status_t final_status;
    /* The owner destroyed the passive operation (op is NULL): the session
     * thread releases the record once it is final, then frees the link. */
    bool releasing;
    int release_tries;         /* Releases (or Cancels) refused in a row, for the back-off */
    int64_t destroyed_ms;      /* when the owner destroyed it (monotonic) */
    bool cancel_due;           /* a Cancel must go (and be taken) before the Release */
    bool cancel_forced;        /* ... because the record stayed open 2 x TTL past the destroy */
    const char *cancel_reason; /* a static string */
    /* Active: the claim was granted before the transfer began (an active
     * link exists only then). The outcome is kept here, so that the report
     * (Complete) can be sent after the operation is destroyed (op is NULL
     * then); a report the coordinator could not take is tried again
     * (report_tries: how often, for the back-off). */
    int report_tries;
    bool abandoned; /* a claim nobody follows (abandon): refusals are quiet */
    ferry_status_t final_code;
    char final_message[256];
} coord_link_t;

struct ferry_coordinator {
    rpc_channel_t *channel;
    int timeout_ms;
    pthread_mutex_t lock;
    pthread_cond_t cond; /* wakes the session thread; busy -> idle; session made */
    coord_link_t *links;
    bool stopping;
    pthread_t thread;
    pthread_t renewer; /* renews the session lease, and does nothing else */
    pthread_t watcher;
    /* Under lock. watch_rev: the header revision of the last message read
     * on a stream that ended its revision (0: none, the next stream is
     * fresh). The counts are for
     * tests (ferry__coord_watch_stats). */
    int64_t watch_rev;
    uint64_t watches;      /* fresh streams created (the resync count) */
    uint64_t resumes;      /* streams resumed at watch_rev + 1 */
    uint64_t out_of_range; /* streams refused or ended with OUT_OF_RANGE */
    uint64_t gets;         /* records read with a Get (a look without an event) */
    uint64_t renewals;     /* KeepAlives of the session lease that succeeded */

    /* The session lease, under lock. 0: none yet (or lost). */
    int64_t session_lease;
    char session_token[LEASE_TOKEN_CAP]; /* its lease token */
    int64_t session_ttl_s;
    int64_t session_due_ms;
    int session_renew_tries; /* keep-alives failed in a row */
    bool session_making;     /* an RPC that will make it is in flight */

    /* Set by disconnect, after the threads are joined: the last calls all
     * end by then (monotonic; 0: no such bound). */
    int64_t final_deadline_ms;
};

static int64_t now_ms(void)
{
    return ferry__clock_ms(CLOCK_MONOTONIC);
}

static int64_t period_ms(const ferry_coordinator_t *coord)
{
    int64_t ttl = coord->session_ttl_s > 0 ? coord->session_ttl_s : COORD_DEFAULT_TTL_S;
    return ttl * 1000 / 3;
}

/* The pause before try number `tries` + 1 of a report: 50 ms, doubling, at
 * most a period. */
static int64_t retry_ms(const ferry_coordinator_t *coord, int tries)
{
    int64_t ms = 50;
    for (int i = 1; i < tries && ms < period_ms(coord); i++) {
        ms *= 2;
    }
    return ms < period_ms(coord) ? ms : period_ms(coord);
}

static ferry_status_t call(ferry_coordinator_t *coord, const char *path,
                           const ProtobufCMessage *req, const ProtobufCMessageDescriptor *desc,
                           int64_t extra_ms, void *resp_p, rpc_error_t *err)
{
    int64_t timeout_ms = coord->timeout_ms + extra_ms;

    if (coord->final_deadline_ms != 0 && coord->final_deadline_ms - now_ms() < timeout_ms) {
        timeout_ms = coord->final_deadline_ms - now_ms();
        timeout_ms = timeout_ms > 1 ? timeout_ms : 1;
    }
    return rpc_unary(coord->channel, path, req, desc, (int)timeout_ms, (ProtobufCMessage **)resp_p,
                     err);
}

static ferry_status_t rpc_fail(ferry_status_t status, const char *what, const rpc_error_t *err);

/* ---- the session lease ------------------------------------------------------ */

/* The lease for a new record or claim: the session's, with its token copied
 * into token (LEASE_TOKEN_CAP bytes), or 0 when this caller is to make it
 * (its RPC asks for a new lease; session_made adopts it). Only one caller
 * makes it at a time; the others wait for it. */
static int64_t session_take(ferry_coordinator_t *coord, bool *making_p, char *token)
{
    int64_t lease;

    pthread_mutex_lock(&coord->lock);
    while (coord->session_lease == 0 && coord->session_making) {
        pthread_cond_wait(&coord->cond, &coord->lock);
    }
    lease = coord->session_lease;
    memcpy(token, coord->session_token, LEASE_TOKEN_CAP);
    *making_p = lease == 0;
    if (*making_p) {
        coord->session_making = true;
    }
    pthread_mutex_unlock(&coord->lock);
    return lease;
}

/* After the RPC of session_take: adopt the lease it made and its token (0:
 * it failed). */
static void session_made(ferry_coordinator_t *coord, bool making, int64_t lease, int64_t ttl_s,
                         const char *token)
{
    if (!making) {
        return;
    }
    pthread_mutex_lock(&coord->lock);
    coord->session_making = false;
    if (lease != 0) {
        coord->session_lease = lease;
        snprintf(coord->session_token, sizeof(coord->session_token), "%s", token);
        coord->session_ttl_s = ttl_s;
        coord->session_due_ms = now_ms() + period_ms(coord);
        coord->session_renew_tries = 0;
        ferry_debug("coordinator session: lease %lld, ttl %llds", (long long)lease,
                    (long long)ttl_s);
    }
    pthread_cond_broadcast(&coord->cond);
    pthread_mutex_unlock(&coord->lock);
}

/* etcd no longer knows the lease: the next operation makes a new one. */
static void session_lost(ferry_coordinator_t *coord, int64_t lease)
{
    pthread_mutex_lock(&coord->lock);
    if (coord->session_lease == lease) {
        coord->session_lease = 0;
        ferry_warn("coordinator session: lease %lld expired; its operations are gone",
                   (long long)lease);
    }
    pthread_mutex_unlock(&coord->lock);
}

/* One KeepAlive of the session lease. False when it failed for a reason
 * that may pass (the coordinator unreachable or slow): then the caller tries
 * again soon, not a period later. The call waits at most a period: a later
 * answer would come too late to matter. */
static bool session_renew(ferry_coordinator_t *coord, int64_t lease, char *token)
{
    Ferry__V1__KeepAliveRequest req = FERRY__V1__KEEP_ALIVE_REQUEST__INIT;
    Ferry__V1__KeepAliveResponse *resp = NULL;
    int64_t timeout_ms =
        coord->timeout_ms < period_ms(coord) ? coord->timeout_ms : period_ms(coord);
    rpc_error_t err;
    ferry_status_t status;

    req.lease_id = lease;
    req.lease_token = token;
    status = rpc_unary(coord->channel, COORD_PATH("KeepAlive"), &req.base,
                       &ferry__v1__keep_alive_response__descriptor, timeout_ms,
                       (ProtobufCMessage **)&resp, &err);
    if (status == FERRY_OK) {
        ferry__v1__keep_alive_response__free_unpacked(resp, NULL);
        return true;
    }
    if (status == FERRY_ERR_NOT_FOUND || status == FERRY_ERR_LEASE_NOT_FOUND ||
        status == FERRY_ERR_EXPIRED || status == FERRY_ERR_PERMISSION_DENIED) {
        /* Gone, or no longer ours to renew (the coordinators' lease key
         * changed): either way the next operation makes a new one. */
        session_lost(coord, lease);
        return true;
    }
    ferry_warn("coordinator session: keep-alive of lease %lld failed: %s", (long long)lease,
               err.message);
    return false;
}

/* True when a call that named the session lease failed because etcd no
 * longer knows it (FERRY_ERR_LEASE_NOT_FOUND, a code of its own on the wire:
 * see rpc.h; never the message): the lease is dropped and the caller tries
 * once more. */
static bool session_was_lost(ferry_coordinator_t *coord, int64_t lease, ferry_status_t status)
{
    if (lease == 0 || status != FERRY_ERR_LEASE_NOT_FOUND) {
        return false;
    }
    session_lost(coord, lease);
    return true;
}

/* ---- links: looking at the record, reporting the end ------------------------ */

/* What the record says about the other side, applied to the operation. */
/* What a record's state means for the operation, from the one table
 * (op_state.h): ERRORED (or EXPIRED) and CANCELLED concern the other side;
 * gone: the record left because its owner's lease expired. */
static void apply_record(coord_link_t *link, bool gone, ferry_op_state_t state, const char *message)
{
    char msg[320];

    if (gone) {
        ferry_op_fail(link->op, FERRY_ERR_EXPIRED,
                      link->passive ? "the registration expired at the coordinator"
                                    : "the operation left the coordinator: its owner's lease "
                                      "expired");
        return;
    }
    switch (ferry__op_state_status(state)) {
    case FERRY_OP_STATUS_ERRORED:
        if (link->passive) {
            ferry_op_fail(link->op, FERRY_ERR_PEER_FAILED, message);
        }
        break;
    case FERRY_OP_STATUS_CANCELLED:
        if (link->passive) {
            ferry_op_cancel(link->op);
        } else {
            snprintf(msg, sizeof(msg), "cancelled by the passive side: %s", message);
            ferry_op_fail(link->op, FERRY_ERR_CANCELLED, msg);
        }
        break;
    default:
        break;
    }
}

/* The record as the watch last told it (ev), or read with a Get (ev NULL:
 * once bound, and after a new stream). False when the Get failed for a
 * reason other than NOT_FOUND: the look is to be made again (look_done). */
static bool look(coord_link_t *link, const coord_link_t *ev)
{
    Ferry__V1__GetRequest get = FERRY__V1__GET_REQUEST__INIT;
    Ferry__V1__GetResponse *record = NULL;
    rpc_error_t err;
    ferry_status_t status;

    if (ev != NULL) {
        apply_record(link, ev->ev_gone, ev->ev_state, ev->ev_message);
        return true;
    }
    get.request_id = link->request_id;
    if (atomic_fetch_sub(&ferry__coord_test_fail_gets, 1) > 0) {
        status = FERRY_ERR_UNAVAILABLE;
        snprintf(err.message, sizeof(err.message), "get failed by ferry__coord_test_fail_gets");
    } else {
        atomic_fetch_add(&ferry__coord_test_fail_gets, 1);
        status = call(link->coord, COORD_PATH("Get"), &get.base,
                      &ferry__v1__get_response__descriptor, 0, &record, &err);
    }
    if (status != FERRY_OK) {
        if (status == FERRY_ERR_NOT_FOUND) {
            apply_record(link, true, 0, "");
            return true;
        }
        ferry_debug("op %s: get failed (%s); trying again", link->request_id, err.message);
        return false;
    }
    apply_record(link, false, record->operation->state, record->operation->error_message);
    ferry__v1__get_response__free_unpacked(record, NULL);
    return true;
}

/* Cancel at the coordinator; returns the call's status (FERRY_OK also when
 * the record was final already or gone: nothing is left to cancel). */
static ferry_status_t cancel_passive(coord_link_t *link, const char *reason)
{
    Ferry__V1__CancelRequest req = FERRY__V1__CANCEL_REQUEST__INIT;
    Ferry__V1__CancelResponse *resp = NULL;
    rpc_error_t err;
    ferry_status_t status;

    req.request_id = link->request_id;
    req.access_token = link->token;
    req.reason = (char *)reason;
    status = call(link->coord, COORD_PATH("Cancel"), &req.base,
                  &ferry__v1__cancel_response__descriptor, 0, &resp, &err);
    if (status == FERRY_OK) {
        ferry__v1__cancel_response__free_unpacked(resp, NULL);
    } else if (status == FERRY_ERR_FAILED_PRECONDITION || status == FERRY_ERR_NOT_FOUND) {
        status = FERRY_OK;
    } else {
        ferry_warn("op %s: cancel at the coordinator failed: %s", link->request_id, err.message);
    }
    return status;
}

/* An answer that may change if the call is made again later. */
static bool retryable(ferry_status_t status)
{
    return status == FERRY_ERR_UNAVAILABLE || status == FERRY_ERR_TIMED_OUT;
}

/* The owner is done with a passive operation: its record goes, after the
 * Cancel it still owes (cancel_due: destroyed unfinished).
 * The writer may not have reported its Complete yet (the record is then
 * still CLAIMED, and Release is refused FAILED_PRECONDITION): that, and a
 * coordinator that cannot be reached, is tried again with a back-off and no
 * limit while the session lives, as a report is; the session lease is
 * renewed for the life of the process, so a record given up on would stay
 * that long, its request ID taken. A record still open 2 x TTL after the
 * destroy (a writer alive but silent) is cancelled, then released. Returns
 * true when the link is done. */
static bool release_passive(coord_link_t *link)
{
    Ferry__V1__ReleaseRequest req = FERRY__V1__RELEASE_REQUEST__INIT;
    Ferry__V1__ReleaseResponse *resp = NULL;
    ferry_coordinator_t *coord = link->coord;
    rpc_error_t err;
    ferry_status_t status;

    if (link->cancel_due) {
        status = cancel_passive(link, link->cancel_reason);
        if (retryable(status)) {
            link->release_tries++;
            return false;
        }
        link->cancel_due = false;
    }
    req.request_id = link->request_id;
    req.access_token = link->token;
    status = call(coord, COORD_PATH("Release"), &req.base, &ferry__v1__release_response__descriptor,
                  0, &resp, &err);
    if (status == FERRY_OK) {
        ferry__v1__release_response__free_unpacked(resp, NULL);
        return true;
    }
    if (status == FERRY_ERR_FAILED_PRECONDITION && !link->cancel_forced &&
        now_ms() - link->destroyed_ms > 2 * 3 * period_ms(coord)) {
        ferry_info("op %s: still open 2 x TTL after it was destroyed; cancelling it",
                   link->request_id);
        link->cancel_forced = true;
        link->cancel_due = true;
        link->cancel_reason = "the receiver destroyed the operation and its writer never reported";
        link->release_tries = 0;
        return false;
    }
    if (status == FERRY_ERR_FAILED_PRECONDITION || retryable(status)) {
        link->release_tries++;
        ferry_debug("op %s: not released (%s); trying again", link->request_id, err.message);
        return false;
    }
    if (status != FERRY_ERR_NOT_FOUND) {
        ferry_warn("op %s: release at the coordinator failed: %s", link->request_id, err.message);
    }
    return true;
}

/* The optional fields of the claim params (see their field mask). */
static int claim_wait(const ferry_claim_params_t *p)
{
    return p->field_mask & FERRY_CLAIM_PARAM_FIELD_WAIT ? p->wait_ms : 0;
}

static int claim_ttl(const ferry_claim_params_t *p)
{
    return p->field_mask & FERRY_CLAIM_PARAM_FIELD_TTL ? p->ttl_s : 0;
}

/* The coordinator's Claim: the one admission decision for a writer (or
 * reader) by request ID, on the caller's path before any byte moves (see
 * begin_by_id and coordinator.proto). The claim goes on the session lease,
 * so that the passive side learns if this process dies; its lease, token and
 * identity are returned for the Complete. */
static ferry_status_t claim(ferry_coordinator_t *coord, const ferry_claim_params_t *p,
                            const char *claimant, Ferry__V1__OperationKind kind, int64_t *lease_p,
                            char *claim_token, uint64_t *claim_id_p, rpc_error_t *err)
{
    Ferry__V1__ClaimRequest req = FERRY__V1__CLAIM_REQUEST__INIT;
    Ferry__V1__ClaimResponse *resp = NULL;
    ferry_status_t status = FERRY_OK;
    char lease_token[LEASE_TOKEN_CAP];

    req.request_id = (char *)p->request_id;
    req.access_token = (char *)p->access_token;
    req.claimant = (char *)claimant;
    req.kind = kind;
    req.lease_token = lease_token;
    req.ttl_seconds = claim_ttl(p);
    for (int attempt = 0; attempt < 2; attempt++) {
        bool making;
        req.lease_id = session_take(coord, &making, lease_token);
        status = call(coord, COORD_PATH("Claim"), &req.base, &ferry__v1__claim_response__descriptor,
                      0, &resp, err);
        session_made(coord, making, status == FERRY_OK ? resp->claim_lease_id : 0,
                     status == FERRY_OK ? resp->ttl_seconds : 0,
                     status == FERRY_OK ? resp->lease_token : "");
        if (!session_was_lost(coord, req.lease_id, status)) {
            break;
        }
    }
    if (status != FERRY_OK) {
        /* The lease the claim would be on, for abandon (0: it would have
         * made a new one, unknown here). */
        *lease_p = req.lease_id;
        snprintf(claim_token, LEASE_TOKEN_CAP, "%s", lease_token);
        return status;
    }
    *lease_p = resp->claim_lease_id;
    snprintf(claim_token, LEASE_TOKEN_CAP, "%s", resp->lease_token);
    *claim_id_p = resp->claim_id;
    ferry__v1__claim_response__free_unpacked(resp, NULL);
    return FERRY_OK;
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
    snprintf(link->final_message, sizeof(link->final_message), "%s",
             message != NULL ? message : "");
}

/* Complete at the coordinator, for an active operation (its claim was
 * granted before it began). Returns false when the coordinator could not be
 * reached and the report should be tried again: the claim is on this
 * client's session lease, which keeps the record CLAIMED for as long as the
 * client lives, so it is tried again (backing off to a period) for as long
 * as the client lives; disconnect gives it one last try. */
static bool report_active(coord_link_t *link)
{
    Ferry__V1__CompleteRequest req = FERRY__V1__COMPLETE_REQUEST__INIT;
    Ferry__V1__CompleteResponse *resp = NULL;
    rpc_error_t err;
    ferry_status_t status;

    req.request_id = link->request_id;
    req.access_token = link->token;
    req.claim_lease_id = link->lease_id;
    req.lease_token = link->lease_token;
    req.claim_id = link->claim_id;
    req.error_code = link->final_code;
    req.error_message = link->final_message;
    status = call(link->coord, COORD_PATH("Complete"), &req.base,
                  &ferry__v1__complete_response__descriptor, 0, &resp, &err);
    if (status == FERRY_OK) {
        ferry__v1__complete_response__free_unpacked(resp, NULL);
        return true;
    }
    if (status == FERRY_ERR_UNAVAILABLE || status == FERRY_ERR_TIMED_OUT) {
        link->report_tries++;
        ferry_debug("op %s: report not taken (%s); trying again", link->request_id, err.message);
        return false;
    }
    if (status != FERRY_ERR_FAILED_PRECONDITION && status != FERRY_ERR_NOT_FOUND &&
        !link->abandoned) {
        ferry_warn("op %s: reporting the outcome failed: %s", link->request_id, err.message);
    }
    return true;
}

/* Tells the coordinator how the operation ended: an active one reports its
 * outcome; a passive one that was cancelled here cancels there. False: try
 * again later. */
static bool report(coord_link_t *link, ferry_op_status_t status)
{
    if (!link->passive) {
        return report_active(link);
    }
    if (status == FERRY_OP_STATUS_CANCELLED &&
        retryable(cancel_passive(link, "the receiver cancelled the operation"))) {
        link->report_tries++;
        return false;
    }
    return true;
}

/* Takes a link off the list; lock held. */
static void link_remove(ferry_coordinator_t *coord, coord_link_t *link)
{
    for (coord_link_t **p = &coord->links; *p != NULL; p = &(*p)->next) {
        if (*p == link) {
            *p = link->next;
            return;
        }
    }
}

/* ---- the session thread ------------------------------------------------------ */

/* After a look: a failed Get is made again after a pause (50 ms, doubling,
 * at most a period), for as long as the link lives; the change it was to
 * read (one before a fresh stream's first revision) comes in no event.
 * Lock held. */
static void look_done(ferry_coordinator_t *coord, coord_link_t *link, bool looked)
{
    if (looked) {
        link->look_tries = 0;
        return;
    }
    link->look_tries++;
    link->look_due = true;
    link->look_due_ms = now_ms() + retry_ms(coord, link->look_tries);
}

atomic_bool ferry__coord_test_hold_links;
atomic_bool ferry__coord_test_links_held;
atomic_int ferry__coord_test_fail_gets;

/* The hold seam of coord_client.h: a link call that hangs (up to a minute). */
static void test_hold_links(void)
{
    if (!atomic_load(&ferry__coord_test_hold_links)) {
        return;
    }
    atomic_store(&ferry__coord_test_links_held, true);
    for (int64_t until = now_ms() + 60000;
         atomic_load(&ferry__coord_test_hold_links) && now_ms() < until;) {
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
}

/* The due link, marked busy, or NULL; *wait_ms_p: until the next is due. */
static coord_link_t *next_due(ferry_coordinator_t *coord, int64_t *wait_ms_p)
{
    int64_t now = now_ms();
    int64_t wait = 1000;

    for (coord_link_t *l = coord->links; l != NULL; l = l->next) {
        if (l->busy) {
            continue;
        }
        bool retrying = l->releasing || (l->report_due && l->report_tries > 0);
        bool report_now = l->report_due && (l->report_tries == 0 || l->due_ms <= now);
        bool look = l->look_due && !l->reported && !l->releasing && l->op != NULL;
        /* A failed Get is tried again after a pause; an event since needs
         * no Get, so it is looked at at once. */
        bool look_later = look && l->look_tries > 0 && !l->ev_valid && l->look_due_ms > now;
        if (report_now || (look && !look_later) || (l->releasing && l->due_ms <= now)) {
            l->busy = true;
            return l;
        }
        if (retrying && l->due_ms - now < wait) {
            wait = l->due_ms - now;
        }
        if (look_later && l->look_due_ms - now < wait) {
            wait = l->look_due_ms - now;
        }
    }
    *wait_ms_p = wait;
    return NULL;
}

static void timed_wait(pthread_cond_t *cond, pthread_mutex_t *lock, int64_t ms)
{
    struct timespec until = ferry__clock_in_ms(CLOCK_MONOTONIC, ms);
    pthread_cond_timedwait(cond, lock, &until);
}

/* Renews the session lease if it is due, and after a failed renewal again
 * after 50 ms, doubling, at most a quarter period (so that a coordinator
 * back from an outage is reached within a twelfth of the TTL, not a third:
 * one or two lost KeepAlives must not cost the lease); called and returns
 * with the lock held. Only the renewal thread calls it. */
static void session_tick(ferry_coordinator_t *coord, int64_t *wait_ms_p)
{
    int64_t lease = coord->session_lease;
    int64_t left = coord->session_due_ms - now_ms();
    char token[LEASE_TOKEN_CAP];

    if (lease == 0) {
        return;
    }
    if (left > 0) {
        if (left < *wait_ms_p) {
            *wait_ms_p = left;
        }
        return;
    }
    coord->session_due_ms = now_ms() + period_ms(coord);
    memcpy(token, coord->session_token, sizeof(token));
    pthread_mutex_unlock(&coord->lock);
    bool renewed = session_renew(coord, lease, token);
    pthread_mutex_lock(&coord->lock);
    if (coord->session_lease != lease) {
        return; /* lost, or replaced meanwhile: its own schedule */
    }
    coord->session_renew_tries = renewed ? 0 : coord->session_renew_tries + 1;
    coord->renewals += renewed;
    if (!renewed) {
        int64_t retry = retry_ms(coord, coord->session_renew_tries);
        coord->session_due_ms =
            now_ms() + (retry < period_ms(coord) / 4 ? retry : period_ms(coord) / 4);
    }
    left = coord->session_due_ms - now_ms();
    if (left < *wait_ms_p) {
        *wait_ms_p = left;
    }
}

static void *session_main(void *arg)
{
    ferry_coordinator_t *coord = arg;

    pthread_mutex_lock(&coord->lock);
    while (!coord->stopping) {
        int64_t wait_ms = 0;
        coord_link_t *link = next_due(coord, &wait_ms);
        if (link == NULL) {
            timed_wait(&coord->cond, &coord->lock, wait_ms > 0 ? wait_ms : 1);
            continue;
        }
        bool reporting = link->report_due;
        bool releasing = link->releasing;
        bool done = false, reported = true, looked = true;
        ferry_op_status_t outcome = link->final_status;
        link->report_due = false;
        link->looking = !releasing && !reporting;
        coord_link_t ev;
        bool have_ev = false;
        if (link->looking) {
            link->look_due = false; /* an event from now on asks again */
            have_ev = link->ev_valid;
            if (have_ev) {
                ev.ev_gone = link->ev_gone;
                ev.ev_state = link->ev_state;
                memcpy(ev.ev_message, link->ev_message, sizeof(ev.ev_message));
                link->ev_valid = false;
            } else {
                coord->gets++;
            }
        }
        pthread_mutex_unlock(&coord->lock);
        test_hold_links();
        if (releasing) {
            done = release_passive(link);
        } else if (reporting) {
            reported = report(link, outcome);
        } else {
            looked = look(link, have_ev ? &ev : NULL);
        }
        pthread_mutex_lock(&coord->lock);
        if (link->looking) {
            look_done(coord, link, looked);
        }
        link->looking = false;
        if (reporting && reported) {
            link->reported = true;
            /* A destroyed active operation's last duty. */
            done = !link->passive && link->op == NULL;
        } else if (reporting) {
            link->report_due = true; /* again, after a pause */
        }
        link->due_ms = now_ms() + (releasing   ? retry_ms(coord, link->release_tries)
                                   : !reported ? retry_ms(coord, link->report_tries)
                                               : period_ms(coord));
        link->busy = false;
        if (done) {
            link_remove(coord, link);
            free(link);
        }
        pthread_cond_broadcast(&coord->cond);
    }
    pthread_mutex_unlock(&coord->lock);
    return NULL;
}

/* The renewal thread: the session lease's KeepAlives and nothing else, so
 * that no link call (each may take timeout_ms, which may exceed the TTL)
 * ever holds a renewal back. */
static void *renew_main(void *arg)
{
    ferry_coordinator_t *coord = arg;

    pthread_mutex_lock(&coord->lock);
    while (!coord->stopping) {
        int64_t wait_ms = period_ms(coord);
        session_tick(coord, &wait_ms);
        if (!coord->stopping) {
            timed_wait(&coord->cond, &coord->lock, wait_ms > 0 ? wait_ms : 1);
        }
    }
    pthread_mutex_unlock(&coord->lock);
    return NULL;
}

/* ---- the watch -------------------------------------------------------------- */

#define WATCH_READ_MS    200 /* how often the watch thread looks at stopping */
#define WATCH_BACKOFF_MS 100 /* first pause after a failed or ended stream */

/* A Watch stream over every record from start_revision (0: fresh),
 * created (its first message read); *created_rev_p: that message's header
 * revision. NULL on failure, *status_p saying why (FERRY_ERR_OUT_OF_RANGE:
 * the replica no longer holds the changes from start_revision). */
static rpc_stream_t *watch_open(ferry_coordinator_t *coord, int64_t start_revision,
                                int64_t *created_rev_p, ferry_status_t *status_p)
{
    Ferry__V1__WatchRequest req = FERRY__V1__WATCH_REQUEST__INIT;
    Ferry__V1__WatchResponse *first = NULL;
    rpc_stream_t *stream = NULL;
    rpc_error_t err = {0};
    ferry_status_t status;

    req.request_id_prefix = "*";
    req.start_revision = start_revision;
    status = rpc_stream_open(coord->channel, COORD_PATH("Watch"), &req.base,
                             &ferry__v1__watch_response__descriptor, 0, &stream);
    if (status == FERRY_OK) {
        status = rpc_stream_read(stream, coord->timeout_ms, (ProtobufCMessage **)&first, &err);
    }
    if (status != FERRY_OK || first == NULL || !first->created) {
        ferry_debug("coordinator watch: not created (from revision %" PRId64 "): %s",
                    start_revision, status != FERRY_OK ? err.message : "no created message");
        if (first != NULL) {
            ferry__v1__watch_response__free_unpacked(first, NULL);
        }
        rpc_stream_destroy(stream);
        *status_p = status != FERRY_OK ? status : FERRY_ERR_UNAVAILABLE;
        return NULL;
    }
    *created_rev_p = first->header != NULL ? first->header->revision : 0;
    ferry__v1__watch_response__free_unpacked(first, NULL);
    *status_p = FERRY_OK;
    return stream;
}

/* Marks links look_due: every one, to be read with a Get (ev NULL: a new
 * stream), or those of ev's record, with what it says. Lock held. */
static void mark_look(ferry_coordinator_t *coord, const Ferry__V1__WatchEvent *ev)
{
    for (coord_link_t *l = coord->links; l != NULL; l = l->next) {
        if (ev == NULL) {
            l->look_due = true;
            l->ev_valid = false;
        } else if (strcmp(l->request_id, ev->operation->request_id) == 0) {
            l->look_due = true;
            l->ev_valid = true;
            l->ev_state = ev->operation->state;
            l->ev_gone = ev->type == FERRY__V1__WATCH_EVENT_TYPE__WATCH_EVENT_TYPE_DELETE &&
                         ev->operation->state == FERRY_OP_EXPIRED;
            snprintf(l->ev_message, sizeof(l->ev_message), "%s",
                     ev->operation->error_message != NULL ? ev->operation->error_message : "");
        }
    }
    pthread_cond_broadcast(&coord->cond);
}

/* Reads events until the stream ends, stopping is set or no link has been
 * left for a period (a client that binds one operation after another keeps
 * its stream). Returns true when the next stream must be fresh: the stream
 * was closed for want of links (a resume would replay what nobody
 * follows), or ended with OUT_OF_RANGE. Lock NOT held. */
static bool watch_follow(ferry_coordinator_t *coord, rpc_stream_t *stream)
{
    int64_t empty_since = 0;

    for (;;) {
        Ferry__V1__WatchResponse *msg = NULL;
        rpc_error_t err;
        ferry_status_t status =
            rpc_stream_read(stream, WATCH_READ_MS, (ProtobufCMessage **)&msg, &err);
        bool over;

        pthread_mutex_lock(&coord->lock);
        if (coord->links != NULL) {
            empty_since = 0;
        } else if (empty_since == 0) {
            empty_since = now_ms();
        }
        over = coord->stopping || (empty_since != 0 && now_ms() - empty_since > period_ms(coord));
        if (status == FERRY_OK && msg != NULL) {
            for (size_t i = 0; i < msg->n_events; i++) {
                const Ferry__V1__WatchEvent *ev = msg->events[i];
                if (ev->operation != NULL) {
                    mark_look(coord, ev);
                }
            }
            if (msg->n_events > 0 && !msg->fragment && msg->header != NULL &&
                msg->header->revision > coord->watch_rev) {
                coord->watch_rev = msg->header->revision;
            }
        }
        coord->out_of_range += status == FERRY_ERR_OUT_OF_RANGE;
        pthread_mutex_unlock(&coord->lock);
        if (msg != NULL) {
            ferry__v1__watch_response__free_unpacked(msg, NULL);
        }
        if (over ||
            (status != FERRY_OK && !(status == FERRY_ERR_TIMED_OUT && err.grpc_code == 0)) ||
            (status == FERRY_OK && msg == NULL)) {
            if (!over) {
                ferry_debug("coordinator watch: stream ended: %s", err.message);
            }
            return over || status == FERRY_ERR_OUT_OF_RANGE;
        }
    }
}

static void *watch_main(void *arg)
{
    ferry_coordinator_t *coord = arg;
    int64_t backoff = WATCH_BACKOFF_MS;

    pthread_mutex_lock(&coord->lock);
    while (!coord->stopping) {
        if (coord->links == NULL) {
            pthread_cond_wait(&coord->cond, &coord->lock);
            continue;
        }
        int64_t from = coord->watch_rev > 0 ? coord->watch_rev + 1 : 0, created_rev = 0;
        ferry_status_t status;
        pthread_mutex_unlock(&coord->lock);
        rpc_stream_t *stream = watch_open(coord, from, &created_rev, &status);
        pthread_mutex_lock(&coord->lock);
        if (stream == NULL && status == FERRY_ERR_OUT_OF_RANGE && from != 0) {
            /* The replica no longer holds the changes since watch_rev: a
             * fresh stream, at once. */
            ferry_debug("coordinator watch: cannot resume at revision %" PRId64
                        "; watching afresh and reading every record",
                        from);
            coord->out_of_range++;
            coord->watch_rev = 0;
            continue;
        }
        if (stream == NULL) {
            timed_wait(&coord->cond, &coord->lock, backoff);
            backoff = backoff * 2 < period_ms(coord) ? backoff * 2 : period_ms(coord);
            continue;
        }
        backoff = WATCH_BACKOFF_MS;
        if (from == 0) {
            /* Re-Get after re-Watch: the record of every link is read again. */
            coord->watches++;
            coord->watch_rev = created_rev;
            mark_look(coord, NULL);
        } else {
            coord->resumes++; /* the stream replays what changed meanwhile */
        }
        pthread_mutex_unlock(&coord->lock);
        bool fresh = watch_follow(coord, stream);
        rpc_stream_destroy(stream);
        pthread_mutex_lock(&coord->lock);
        if (fresh) {
            coord->watch_rev = 0;
        }
    }
    pthread_mutex_unlock(&coord->lock);
    return NULL;
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
        link_remove(coord, link);
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
            link_remove(coord, link);
            gone = true;
        }
        pthread_cond_broadcast(&coord->cond);
        pthread_mutex_unlock(&coord->lock);
        if (gone) {
            free(link);
        }
        return;
    }
    while (link->busy) {
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
    link->due_ms = now_ms();
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
        if (l->look_due || l->looking) {
            stats_p->settled = false;
        }
    }
    pthread_mutex_unlock(&coord->lock);
}

/* ---- public API ----------------------------------------------------------- */

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
    coord = calloc(1, sizeof(*coord));
    if (coord == NULL) {
        return ferry__fail(FERRY_ERR_NO_MEMORY, "no memory for a coordinator client");
    }
    coord->timeout_ms =
        (params->field_mask & FERRY_COORDINATOR_PARAM_FIELD_TIMEOUT) && params->timeout_ms > 0
            ? params->timeout_ms
            : COORD_DEFAULT_TIMEOUT_MS;
    cparams.target = params->target;
    if (params->field_mask & FERRY_COORDINATOR_PARAM_FIELD_TLS) {
        tls.ca_file = params->tls_ca_file;
        tls.cert_file = params->tls_cert_file;
        tls.key_file = params->tls_key_file;
        tls.server_name = params->tls_server_name;
        cparams.tls = &tls;
    }
    status = rpc_channel_create(&cparams, &coord->channel);
    if (status != FERRY_OK) {
        free(coord);
        return ferry__fail(status, "cannot open a channel to coordinator %s", params->target);
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
    rc = pthread_create(&coord->thread, NULL, session_main, coord);
    if (rc != 0) {
        status = ferry__fail(FERRY_ERR_IO, "cannot start the coordinator session thread: %s",
                             strerror(rc));
        goto err_cond;
    }
    rc = pthread_create(&coord->renewer, NULL, renew_main, coord);
    if (rc != 0) {
        status = ferry__fail(FERRY_ERR_IO, "cannot start the coordinator renewal thread: %s",
                             strerror(rc));
        goto err_session;
    }
    rc = pthread_create(&coord->watcher, NULL, watch_main, coord);
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

ferry_status_t ferry_coordinator_disconnect(ferry_coordinator_t *coord)
{
    unsigned bound = 0;

    ferry__clear_error();
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
    coord->stopping = true;
    pthread_cond_broadcast(&coord->cond);
    pthread_mutex_unlock(&coord->lock);
    pthread_join(coord->watcher, NULL);
    pthread_join(coord->renewer, NULL);
    pthread_join(coord->thread, NULL);
    /* Destroyed operations' last duties (a release, a claim and report) get
     * one last try, all of them within one call timeout (call() bounds each
     * by what is left); what remains leaves with the session lease, which
     * nobody renews from now on. */
    coord->final_deadline_ms = now_ms() + coord->timeout_ms;
    unsigned left = 0;
    while (coord->links != NULL) {
        coord_link_t *link = coord->links;
        coord->links = link->next;
        if (now_ms() >= coord->final_deadline_ms) {
            left++;
        } else if (link->releasing) {
            release_passive(link);
        } else {
            /* A destroyed active operation whose report is still to go. */
            report_active(link);
        }
        free(link);
    }
    if (left > 0) {
        ferry_warn("coordinator client: %u records or reports left to the session lease's expiry",
                   left);
    }
    pthread_cond_destroy(&coord->cond);
    pthread_mutex_destroy(&coord->lock);
    rpc_channel_destroy(coord->channel);
    free(coord);
    return FERRY_OK;
}

/* The RPC's own message, with its code, for ferry_last_error_message(). */
static ferry_status_t rpc_fail(ferry_status_t status, const char *what, const rpc_error_t *err)
{
    return ferry__fail(status, "%s: %s (%s)", what, err->message, ferry_status_name(status));
}

ferry_status_t ferry_op_publish(ferry_op_t *op, ferry_coordinator_t *coord,
                                const ferry_publish_params_t *params)
{
    Ferry__V1__RegisterRequest req = FERRY__V1__REGISTER_REQUEST__INIT;
    Ferry__V1__RegisterResponse *resp = NULL;
    const uint8_t *bytes;
    size_t len;
    uint8_t *packed = NULL;
    size_t packed_len = 0;
    rpc_error_t err;
    ferry_status_t status;
    char lease_token[LEASE_TOKEN_CAP];

    ferry__clear_error();
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
    req.request_id = (char *)params->request_id;
    req.access_token = (char *)(params->access_token != NULL ? params->access_token : "");
    req.ttl_seconds = params->field_mask & FERRY_PUBLISH_PARAM_FIELD_TTL ? params->ttl_s : 0;
    req.owner = (char *)ferry_connector_name(ferry_op_connector(op));
    req.lease_token = lease_token;
    for (int attempt = 0; attempt < 2; attempt++) {
        bool making;
        req.lease_id = session_take(coord, &making, lease_token);
        /* The metadata goes as the operation packed it: the coordinator
         * stores these bytes and the writer decodes them (rpc.h). */
        status = rpc_pack_with_field(
            &req.base, rpc_field_number(&ferry__v1__register_request__descriptor, "metadata"),
            bytes, len, &packed, &packed_len);
        if (status != FERRY_OK) {
            session_made(coord, making, 0, 0, "");
            return ferry__fail(status, "register: cannot pack the request");
        }
        status = rpc_unary_packed(coord->channel, COORD_PATH("Register"), packed, packed_len,
                                  &ferry__v1__register_response__descriptor, coord->timeout_ms,
                                  (ProtobufCMessage **)&resp, &err);
        free(packed);
        session_made(coord, making, status == FERRY_OK ? resp->lease_id : 0,
                     status == FERRY_OK ? resp->ttl_seconds : 0,
                     status == FERRY_OK ? resp->lease_token : "");
        if (!session_was_lost(coord, req.lease_id, status)) {
            break;
        }
    }
    if (status != FERRY_OK) {
        return rpc_fail(status, "register", &err);
    }
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

/* The Lookup's answer as it came (answer[len]): its state decoded, and the
 * span of its operation's metadata, the bytes the passive worker packed
 * (the coordinator stores and answers them as they are), which the data
 * plane takes as they are. */
static ferry_status_t lookup_read(const ferry_claim_params_t *p, const uint8_t *answer, size_t len,
                                  const uint8_t **md_p, size_t *md_len_p)
{
    Ferry__V1__LookupResponse *resp = ferry__v1__lookup_response__unpack(NULL, len, answer);
    const uint8_t *op = NULL;
    size_t op_len = 0;
    ferry_status_t status = FERRY_OK;

    if (resp == NULL || resp->operation == NULL ||
        rpc_field_find(answer, len,
                       rpc_field_number(&ferry__v1__lookup_response__descriptor, "operation"), &op,
                       &op_len) != FERRY_OK ||
        rpc_field_find(op, op_len, rpc_field_number(&ferry__v1__operation__descriptor, "metadata"),
                       md_p, md_len_p) != FERRY_OK) {
        status =
            ferry__fail(FERRY_ERR_PROTOCOL,
                        "lookup: the answer for request_id '%s' is malformed or has no metadata",
                        p->request_id);
    } else if (resp->operation->state != FERRY__V1__OPERATION_STATE__OPERATION_STATE_REGISTERED) {
        status = ferry__fail(FERRY_ERR_FAILED_PRECONDITION, "request_id '%s' is %s", p->request_id,
                             resp->operation->state ==
                                     FERRY__V1__OPERATION_STATE__OPERATION_STATE_CLAIMED
                                 ? "already claimed by another worker"
                                 : "no longer open (complete, errored or cancelled)");
    }
    if (resp != NULL) {
        ferry__v1__lookup_response__free_unpacked(resp, NULL);
    }
    return status;
}

/* Lookup (with wait), then the state check the coordinator's Claim would
 * make, so that a writer that would be refused is refused before it touches
 * the operation. The metadata and the pairing (kind, count, sizes) are the
 * data plane's to check (ferry_write_begin). *answer_p is the answer as it
 * came (free it); *md_p points into it. */
static ferry_status_t lookup_checked(ferry_coordinator_t *coord, const ferry_claim_params_t *p,
                                     void **answer_p, const uint8_t **md_p, size_t *md_len_p)
{
    Ferry__V1__LookupRequest req = FERRY__V1__LOOKUP_REQUEST__INIT;
    uint8_t *packed;
    void *answer = NULL;
    size_t len = 0;
    rpc_error_t err;
    ferry_status_t status;

    req.request_id = (char *)p->request_id;
    req.access_token = (char *)p->access_token;
    req.wait_ms = claim_wait(p);
    /* Packed here, sent and answered as bytes (rpc_unary_raw): the answer's
     * metadata is wanted as it came. */
    len = ferry__v1__lookup_request__get_packed_size(&req);
    packed = malloc(len > 0 ? len : 1);
    if (packed == NULL) {
        return ferry__fail(FERRY_ERR_NO_MEMORY, "lookup: out of memory");
    }
    ferry__v1__lookup_request__pack(&req, packed);
    status = rpc_unary_raw(coord->channel, COORD_PATH("Lookup"), packed, len,
                           coord->timeout_ms + req.wait_ms, &answer, &len, &err);
    free(packed);
    if (status != FERRY_OK) {
        return rpc_fail(status, "lookup", &err);
    }
    status = lookup_read(p, answer, len, md_p, md_len_p);
    if (status != FERRY_OK) {
        free(answer);
        return status;
    }
    *answer_p = answer;
    return FERRY_OK;
}

/* A claim that was (or may have been) granted and that no operation will
 * follow: the session thread completes it as failed (tried again while the
 * coordinator cannot be reached), so that the record turns ERRORED at once
 * instead of when this client's lease expires, and the receiver learns it.
 * A claim that never arrived is refused that Complete, quietly. lease 0 (the
 * claim would have made its own lease): nothing to complete with; it
 * expires. */
static void abandon(ferry_coordinator_t *coord, const ferry_claim_params_t *p, int64_t lease,
                    const char *lease_token, ferry_status_t code, const char *why)
{
    coord_link_t *link;

    if (lease == 0 || (link = calloc(1, sizeof(*link))) == NULL) {
        return;
    }
    link->coord = coord;
    link->lease_id = lease;
    link->told = true;
    link->report_due = true;
    link->abandoned = true;
    link->final_status = FERRY_OP_STATUS_ERRORED;
    link->final_code = code;
    snprintf(link->lease_token, sizeof(link->lease_token), "%s", lease_token);
    snprintf(link->request_id, sizeof(link->request_id), "%s", p->request_id);
    snprintf(link->token, sizeof(link->token), "%s", p->access_token);
    snprintf(link->final_message, sizeof(link->final_message), "%s", why);
    pthread_mutex_lock(&coord->lock);
    link->next = coord->links;
    coord->links = link;
    pthread_cond_broadcast(&coord->cond);
    pthread_mutex_unlock(&coord->lock);
}

/* The test seam for interleavings (tests only; never set in production):
 * FERRY_TEST_PAUSE="POINT:PREFIX" makes begin_by_id stop at POINT
 * ("after-lookup": between its Lookup and its Claim; "after-claim": between
 * its Claim and the data plane's begin): it creates PREFIX.<pid>.reached and
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

/* Lookup (one round trip, waiting for the record if asked) and the checks
 * that must not spoil the record (state, and the data plane's pairing of
 * kind, count and sizes), then the Claim (the second round trip): the
 * coordinator decides the one writer before any byte moves, so a refused
 * writer never touches the receiver's memory and the record names the one
 * whose bytes the receiver holds. Only then does the transfer begin; the
 * Complete goes out from the session thread when it ends. */
static ferry_status_t begin_by_id(ferry_connector_t *connector, ferry_coordinator_t *coord,
                                  const ferry_claim_params_t *p, bool write,
                                  const ferry_descriptor_t *local, size_t n, ferry_op_t **op_p)
{
    void *found = NULL;
    ferry_op_t *op = NULL;
    ferry_status_t status;
    rpc_error_t err;
    const uint8_t *md = NULL;
    size_t md_len = 0;
    int64_t claim_lease = 0;
    char claim_token[LEASE_TOKEN_CAP];
    uint64_t claim_id = 0;

    ferry__clear_error();
    if (connector == NULL || coord == NULL || p == NULL || p->request_id == NULL ||
        p->access_token == NULL) {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT,
                           "connector, coordinator, request_id and access_token are required");
    }
    if (p->field_mask & ~(uint64_t)(FERRY_CLAIM_PARAM_FIELD_WAIT | FERRY_CLAIM_PARAM_FIELD_TTL)) {
        return ferry__fail(
            FERRY_ERR_INVALID_ARGUMENT, "params.field_mask: unknown bits 0x%llx",
            (unsigned long long)(p->field_mask & ~(uint64_t)(FERRY_CLAIM_PARAM_FIELD_WAIT |
                                                             FERRY_CLAIM_PARAM_FIELD_TTL)));
    }
    status = ferry_descriptors_validate(local, n);
    if (status == FERRY_OK) {
        status = lookup_checked(coord, p, &found, &md, &md_len);
    }
    if (status != FERRY_OK) {
        return status;
    }
    status = ferry_metadata_check(md, md_len, write, local, n);
    if (status != FERRY_OK) {
        free(found);
        return status;
    }
    test_pause("after-lookup");
    status = claim(coord, p, ferry_connector_name(connector),
                   write ? FERRY__V1__OPERATION_KIND__OPERATION_KIND_WRITE
                         : FERRY__V1__OPERATION_KIND__OPERATION_KIND_READ,
                   &claim_lease, claim_token, &claim_id, &err);
    if (status != FERRY_OK) {
        free(found);
        status = rpc_fail(status, "claim", &err);
        if (status == FERRY_ERR_TIMED_OUT || status == FERRY_ERR_UNAVAILABLE) {
            /* No answer is not no: the claim may have been granted. */
            abandon(coord, p, claim_lease, claim_token, status,
                    "the writer gave up its claim: the coordinator did not answer");
        }
        return status;
    }
    test_pause("after-claim");
    /* Claimed: now, and only now, the data plane. */
    status = write ? ferry_write_begin(connector, local, n, md, md_len, &op)
                   : ferry_read_begin(connector, local, n, md, md_len, &op);
    free(found);
    if (status == FERRY_OK) {
        status = link_add(coord, op, false, p->request_id, p->access_token, claim_lease,
                          claim_token, claim_id);
        if (status == FERRY_OK) {
            *op_p = op;
            return FERRY_OK;
        }
        ferry_op_destroy(op);
        ferry__fail(status, "cannot bind the operation to the coordinator");
    }
    /* Claimed, but nothing follows it. */
    abandon(coord, p, claim_lease, claim_token, status, ferry_last_error_message());
    return status;
}

ferry_status_t ferry_write_begin_by_id(ferry_connector_t *connector, ferry_coordinator_t *coord,
                                       const ferry_claim_params_t *params,
                                       const ferry_descriptor_t *local, size_t n, ferry_op_t **op_p)
{
    return begin_by_id(connector, coord, params, true, local, n, op_p);
}

ferry_status_t ferry_read_begin_by_id(ferry_connector_t *connector, ferry_coordinator_t *coord,
                                      const ferry_claim_params_t *params,
                                      const ferry_descriptor_t *local, size_t n, ferry_op_t **op_p)
{
    return begin_by_id(connector, coord, params, false, local, n, op_p);
}
