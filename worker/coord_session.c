/*
 * coord_session.c: the coordinator client's background work.
 *
 * The session lease: each client holds one etcd lease, made by its first
 * Register or Claim and kept alive by the renewal thread; every later record
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
 * Locking: see coord_client_int.h.
 */
#include "worker/coord_client_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "worker/errors.h"
#include "worker/op_cancel.h"

/* ---- the session lease ------------------------------------------------------ */

/* The lease for a new record or claim: the session's, with its token copied
 * into token (LEASE_TOKEN_CAP bytes), or 0 when this caller is to make it
 * (its RPC asks for a new lease; ferry__coord_session_made adopts it). Only one caller
 * makes it at a time; the others wait for it (an interrupted one stops
 * waiting, is told 0 and not to make it, and its call ends CANCELLED). */
int64_t ferry__coord_session_take(ferry_coordinator_t *coord, bool *making_p, char *token)
{
    int64_t lease;

    pthread_mutex_lock(&coord->lock);
    while (coord->session_lease == 0 && coord->session_making) {
        /* Interrupted, the caller makes nothing: its call ends at once
         * (rpc.h). */
        if (interruptible_wait(&coord->cond, &coord->lock, -1)) {
            pthread_mutex_unlock(&coord->lock);
            *making_p = false;
            token[0] = '\0';
            return 0;
        }
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

/* After the RPC of ferry__coord_session_take: adopt the lease it made and its token (0:
 * it failed). */
void ferry__coord_session_made(ferry_coordinator_t *coord, bool making, int64_t lease,
                               int64_t ttl_s, const char *token)
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

void ferry__coord_session_end(ferry_coordinator_t *coord)
{
    Ferry__V1__RevokeRequest req = FERRY__V1__REVOKE_REQUEST__INIT;
    Ferry__V1__RevokeResponse *resp = NULL;
    char token[LEASE_TOKEN_CAP];
    rpc_error_t err;
    ferry_status_t status;

    pthread_mutex_lock(&coord->lock);
    req.lease_id = coord->session_lease;
    memcpy(token, coord->session_token, sizeof(token));
    coord->session_lease = 0;
    pthread_mutex_unlock(&coord->lock);
    if (req.lease_id == 0 || now_ms() >= atomic_load(&coord->final_deadline_ms)) {
        return;
    }
    req.lease_token = token;
    status = call(coord, COORD_PATH("Revoke"), &req.base, &ferry__v1__revoke_response__descriptor,
                  0, &resp, &err);
    if (status == FERRY_OK) {
        ferry__v1__revoke_response__free_unpacked(resp, NULL);
        ferry_debug("coordinator session: lease %lld revoked", (long long)req.lease_id);
    } else {
        ferry_info("coordinator session: lease %lld left to expire within its TTL (revoke: %s)",
                   (long long)req.lease_id, err.message);
    }
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
    int64_t final = atomic_load(&coord->final_deadline_ms);
    rpc_error_t err;
    ferry_status_t status;

    /* After disconnect, within what is left of its deadline, as every call. */
    if (final != 0 && final - now_ms() < timeout_ms) {
        timeout_ms = final - now_ms() > 1 ? final - now_ms() : 1;
    }
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
bool ferry__coord_session_was_lost(ferry_coordinator_t *coord, int64_t lease, ferry_status_t status)
{
    if (lease == 0 || status != FERRY_ERR_LEASE_NOT_FOUND) {
        return false;
    }
    session_lost(coord, lease);
    return true;
}

/* ---- links: looking at the record, reporting the end ------------------------ */

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
            /* An operator's `ferryctl cancel --reason`, or the coordinator's
             * own; the worker's log must not blame its owner. */
            snprintf(msg, sizeof(msg), "cancelled at the coordinator: %s",
                     message[0] != '\0' ? message : "no reason given");
            ferry__op_cancel_why(link->op, msg);
        } else {
            snprintf(msg, sizeof(msg), "cancelled by the passive side: %s", message);
            ferry_op_fail(link->op, FERRY_ERR_CANCELLED, msg);
        }
        break;
    default:
        break;
    }
}

/* What a look learned of the record, to apply to the operation. */
typedef struct {
    bool gone;
    ferry_op_state_t state;
    char message[256];
} look_seen_t;

/* The record read with a Get (once bound, and after a new stream; what
 * the watch told comes without one), into *seen; the operation is not
 * touched (the session loop applies *seen with `looking` set), so a
 * destroy waits for no Get. False when the Get failed for a reason other
 * than NOT_FOUND, or answered no record: the look is to be made again
 * (look_done), and there is nothing to apply. */
static bool look(coord_link_t *link, look_seen_t *seen)
{
    Ferry__V1__GetRequest get = FERRY__V1__GET_REQUEST__INIT;
    Ferry__V1__GetResponse *record = NULL;
    rpc_error_t err;
    ferry_status_t status;

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
            seen->gone = true;
            return true;
        }
        ferry_debug("op %s: get failed (%s); trying again", link->request_id, err.message);
        return false;
    }
    if (record->operation == NULL) {
        /* An answer without its record (a peer that is not a conforming
         * coordinator): nothing learned; looked at again after a pause. */
        ferry_warn("op %s: the coordinator's Get answer has no operation; trying again",
                   link->request_id);
        ferry__v1__get_response__free_unpacked(record, NULL);
        return false;
    }
    seen->gone = false;
    seen->state = record->operation->state;
    snprintf(seen->message, sizeof(seen->message), "%s", record->operation->error_message);
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
    } else if (!(link->abandoned && status == FERRY_ERR_PERMISSION_DENIED)) {
        ferry_warn("op %s: cancel at the coordinator failed: %s", link->request_id, err.message);
    }
    return status;
}

/* The calls below that the coordinator did not take
 * (ferry__coord_not_taken) are sent again: they are the session thread's, which has no interrupt
 * check, or disconnect's last tries, where an interrupt ends the loop before any retry. */

/* A call not taken (ferry__coord_not_taken) that will be sent again: a
 * refusal for a bound (RESOURCE_EXHAUSTED: a full queue or share, or etcd
 * out of space, which only an operator ends) warns the first time, so an
 * operator hears of it; the rest, and calls that got no answer, are
 * debug lines. */
static void log_not_taken(const coord_link_t *link, const char *what, int tries,
                          ferry_status_t status, const rpc_error_t *err)
{
    if (status == FERRY_ERR_RESOURCE_EXHAUSTED && tries == 0) {
        ferry_warn("op %s: %s refused (%s); trying again", link->request_id, what, err->message);
    } else {
        ferry_debug("op %s: %s not taken (%s); trying again", link->request_id, what, err->message);
    }
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
bool ferry__coord_release_passive(coord_link_t *link)
{
    Ferry__V1__ReleaseRequest req = FERRY__V1__RELEASE_REQUEST__INIT;
    Ferry__V1__ReleaseResponse *resp = NULL;
    ferry_coordinator_t *coord = link->coord;
    rpc_error_t err;
    ferry_status_t status;

    if (link->cancel_due) {
        status = cancel_passive(link, link->cancel_reason);
        if (ferry__coord_not_taken(status)) {
            link->release_tries++;
            return false;
        }
        if (link->abandoned && status == FERRY_ERR_PERMISSION_DENIED) {
            return true; /* a failed publish's take-back: the ID is someone else's record */
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
    if (status == FERRY_ERR_FAILED_PRECONDITION || ferry__coord_not_taken(status)) {
        log_not_taken(link, "release", link->release_tries++, status, &err);
        return false;
    }
    if (status != FERRY_ERR_NOT_FOUND) {
        ferry_warn("op %s: release at the coordinator failed: %s", link->request_id, err.message);
    }
    return true;
}

/* Complete at the coordinator, for an active operation (its claim was
 * granted before it began). Returns false when the coordinator could not be
 * reached and the report should be tried again: the claim is on this
 * client's session lease, which keeps the record CLAIMED for as long as the
 * client lives, so it is tried again (backing off to a period) for as long
 * as the client lives; disconnect gives it one last try. */
bool ferry__coord_report_active(coord_link_t *link)
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
    if (atomic_fetch_sub(&ferry__coord_test_refuse_reports, 1) > 0) {
        status = FERRY_ERR_RESOURCE_EXHAUSTED;
        snprintf(err.message, sizeof(err.message),
                 "complete refused by ferry__coord_test_refuse_reports");
    } else {
        atomic_fetch_add(&ferry__coord_test_refuse_reports, 1);
        status = call(link->coord, COORD_PATH("Complete"), &req.base,
                      &ferry__v1__complete_response__descriptor, 0, &resp, &err);
    }
    if (status == FERRY_OK) {
        ferry__v1__complete_response__free_unpacked(resp, NULL);
        return true;
    }
    if (ferry__coord_not_taken(status)) {
        log_not_taken(link, "report", link->report_tries++, status, &err);
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
        return ferry__coord_report_active(link);
    }
    if (status == FERRY_OP_STATUS_CANCELLED &&
        ferry__coord_not_taken(cancel_passive(link, "the receiver cancelled the operation"))) {
        link->report_tries++;
        return false;
    }
    return true;
}

/* Takes a link off the list; lock held. */
void ferry__coord_link_remove(ferry_coordinator_t *coord, coord_link_t *link)
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
atomic_int ferry__coord_test_refuse_reports;

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

void *ferry__coord_session_main(void *arg)
{
    ferry_coordinator_t *coord = arg;

    rpc_interrupt_set(ferry__coord_aborting, coord);
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
        bool looking = !releasing && !reporting;
        bool done = false, reported = true, looked = true;
        ferry_op_status_t outcome = link->final_status;
        link->report_due = false;
        look_seen_t seen = {0};
        bool have_ev = false;
        link->looking_up = looking;
        if (looking) {
            link->look_due = false; /* an event from now on asks again */
            have_ev = link->ev_valid;
            if (have_ev) {
                seen.gone = link->ev_gone;
                seen.state = link->ev_state;
                memcpy(seen.message, link->ev_message, sizeof(seen.message));
                link->ev_valid = false;
            } else {
                coord->gets++;
            }
        }
        pthread_mutex_unlock(&coord->lock);
        test_hold_links();
        if (releasing) {
            done = ferry__coord_release_passive(link);
        } else if (reporting) {
            reported = report(link, outcome);
        } else {
            looked = have_ev || look(link, &seen);
        }
        pthread_mutex_lock(&coord->lock);
        if (looking && looked && link->op != NULL) {
            /* The operation is used only here, with `looking` set, which a
             * destroy waits for (on_destroy): never across the Get. One
             * destroyed meanwhile has nothing left to learn. */
            link->looking = true;
            pthread_mutex_unlock(&coord->lock);
            apply_record(link, seen.gone, seen.state, seen.message);
            pthread_mutex_lock(&coord->lock);
            link->looking = false;
        }
        if (looking) {
            look_done(coord, link, looked);
        }
        link->looking_up = false;
        if (reporting && reported) {
            link->reported = true;
        } else if (reporting) {
            link->report_due = true; /* again, after a pause */
        }
        /* A destroyed active operation's report was its last duty (made by
         * this call, or before a destroy that came during a look). */
        done = done || (!link->passive && link->op == NULL && link->reported);
        /* A destroy during this call made the link a releasing one, due
         * when on_destroy said: its schedule stands. */
        if (releasing || !link->releasing) {
            link->due_ms = now_ms() + (releasing   ? retry_ms(coord, link->release_tries)
                                       : !reported ? retry_ms(coord, link->report_tries)
                                                   : period_ms(coord));
        }
        link->busy = false;
        if (done) {
            ferry__coord_link_remove(coord, link);
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
void *ferry__coord_renew_main(void *arg)
{
    ferry_coordinator_t *coord = arg;

    rpc_interrupt_set(ferry__coord_aborting, coord);
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
