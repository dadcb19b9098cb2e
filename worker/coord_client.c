/*
 * coord_client.c: libferry's side of the coordinator. A passive operation is
 * published under a request ID (Register) and its lease kept alive; an
 * active operation is started from a request ID (Lookup, check, Claim) and
 * its outcome reported (Complete, or Cancel).
 *
 * One session thread per ferry_coordinator_t does everything periodic or
 * slow, so no UCX progress thread ever waits on gRPC:
 *   - every link (an operation bound to the coordinator) is renewed at a
 *     third of its TTL: KeepAlive on its lease; a passive operation also
 *     reads its record (Get), so it learns within the TTL that its writer
 *     failed (ERRORED), cancelled (CANCELLED) or that its own registration
 *     expired (the KeepAlive answers NOT_FOUND);
 *   - an active operation's outcome, queued by its done callback, is
 *     reported with Complete (or Cancel).
 *
 * Locking: coord->lock guards the link list and every link's fields. A link
 * the session thread works on outside the lock is marked busy; unlinking
 * (on ferry_op_destroy) waits until it is not. libferry calls into this file
 * without holding the connector lock.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "worker/coord_link.h"
#include "common/log.h"
#include "ferry/v1/coordinator.pb-c.h"
#include "rpc/rpc.h"

#define COORD_DEFAULT_TIMEOUT_MS 10000
#define COORD_PATH(m)            "/ferry.v1.Coordinator/" m

struct ferry__coord_link {
    struct ferry__coord_link *next;
    ferry_coordinator_t *coord;
    ferry_op_t *op;
    bool passive;
    char request_id[129];
    char token[257];
    int64_t lease_id; /* the owner's lease (passive) or the claim's (active) */
    int64_t ttl_s;
    int64_t due_ms; /* next renewal, monotonic */
    bool busy;      /* the session thread is using it outside the lock */
    bool report_due;
    bool reported;
    ferry_op_status_t final_status;
};

struct ferry_coordinator {
    rpc_channel_t *channel;
    int timeout_ms;
    pthread_mutex_t lock;
    pthread_cond_t cond; /* wakes the session thread; signals busy -> idle */
    ferry__coord_link_t *links;
    bool stopping;
    pthread_t thread;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static ferry_status_t call(ferry_coordinator_t *coord, const char *path,
                           const ProtobufCMessage *req, const ProtobufCMessageDescriptor *desc,
                           int64_t extra_ms, void *resp_p, rpc_error_t *err)
{
    return rpc_unary(coord->channel, path, req, desc, coord->timeout_ms + extra_ms,
                     (ProtobufCMessage **)resp_p, err);
}

/* ---- the session thread --------------------------------------------------- */

static void renew_passive(ferry__coord_link_t *link)
{
    Ferry__V1__GetRequest get = FERRY__V1__GET_REQUEST__INIT;
    Ferry__V1__GetResponse *record = NULL;
    rpc_error_t err;

    get.request_id = link->request_id;
    if (call(link->coord, COORD_PATH("Get"), &get.base, &ferry__v1__get_response__descriptor, 0,
             &record, &err) != FERRY_OK) {
        if (err.grpc_code == 5) { /* NOT_FOUND: the record left with its lease */
            ferry_op_fail(link->op, FERRY_ERR_EXPIRED,
                          "the registration expired at the coordinator");
        }
        return;
    }
    switch (record->operation->state) {
    case FERRY__V1__OPERATION_STATE__OPERATION_STATE_ERRORED:
        ferry_op_fail(link->op, FERRY_ERR_PEER_FAILED, record->operation->error_message);
        break;
    case FERRY__V1__OPERATION_STATE__OPERATION_STATE_CANCELLED:
        ferry_op_cancel(link->op);
        break;
    default:
        break;
    }
    ferry__v1__get_response__free_unpacked(record, NULL);
}

/* An active operation's claim lease is gone: the passive side cancelled
 * (the coordinator revoked the claim), or the claim expired. Say which. */
static void claim_lost(ferry__coord_link_t *link)
{
    Ferry__V1__GetRequest get = FERRY__V1__GET_REQUEST__INIT;
    Ferry__V1__GetResponse *record = NULL;
    rpc_error_t err;
    char msg[320];

    get.request_id = link->request_id;
    if (call(link->coord, COORD_PATH("Get"), &get.base, &ferry__v1__get_response__descriptor, 0,
             &record, &err) == FERRY_OK &&
        record->operation->state == FERRY__V1__OPERATION_STATE__OPERATION_STATE_CANCELLED) {
        snprintf(msg, sizeof(msg), "cancelled by the passive side: %s",
                 record->operation->error_message);
        ferry_op_fail(link->op, FERRY_ERR_CANCELLED, msg);
    } else {
        ferry_op_fail(link->op, FERRY_ERR_EXPIRED, "the claim's lease expired at the coordinator");
    }
    if (record != NULL) {
        ferry__v1__get_response__free_unpacked(record, NULL);
    }
}

static void renew(ferry__coord_link_t *link)
{
    Ferry__V1__KeepAliveRequest req = FERRY__V1__KEEP_ALIVE_REQUEST__INIT;
    Ferry__V1__KeepAliveResponse *resp = NULL;
    rpc_error_t err;
    ferry_status_t status;

    req.lease_id = link->lease_id;
    status = call(link->coord, COORD_PATH("KeepAlive"), &req.base,
                  &ferry__v1__keep_alive_response__descriptor, 0, &resp, &err);
    if (status == FERRY_OK) {
        ferry__v1__keep_alive_response__free_unpacked(resp, NULL);
    } else if (status == FERRY_ERR_NOT_FOUND && !link->passive) {
        claim_lost(link);
    } else if (status == FERRY_ERR_NOT_FOUND) {
        ferry_op_fail(link->op, FERRY_ERR_EXPIRED,
                      "the registration's lease expired at the coordinator");
    } else {
        ferry_warn("op %s: keep-alive failed: %s", link->request_id, err.message);
    }
    if (link->passive) {
        renew_passive(link);
    }
}

static void cancel_passive(ferry__coord_link_t *link, const char *reason);
static void report_active(ferry__coord_link_t *link, ferry_op_status_t status);

/* Tells the coordinator how the operation ended: an active one reports its
 * outcome (Complete); a passive one that was cancelled here cancels there. */
static void report(ferry__coord_link_t *link, ferry_op_status_t status)
{
    if (link->passive) {
        if (status == FERRY_OP_STATUS_CANCELLED) {
            cancel_passive(link, "the receiver cancelled the operation");
        }
        return;
    }
    report_active(link, status);
}

/* Complete at the coordinator, for an active operation. */
static void report_active(ferry__coord_link_t *link, ferry_op_status_t status)
{
    Ferry__V1__CompleteRequest req = FERRY__V1__COMPLETE_REQUEST__INIT;
    Ferry__V1__CompleteResponse *resp = NULL;
    const char *message = "";
    ferry_status_t code = ferry_op_error(link->op, &message);
    rpc_error_t err;

    if (status == FERRY_OP_STATUS_CANCELLED || status == FERRY_OP_STATUS_ERRORED ||
        status == FERRY_OP_STATUS_COMPLETE) {
        req.request_id = link->request_id;
        req.access_token = link->token;
        req.claim_lease_id = link->lease_id;
        req.error_code = status == FERRY_OP_STATUS_COMPLETE ? 0
                         : code != FERRY_OK                 ? code
                                                            : FERRY_ERR_CANCELLED;
        req.error_message = (char *)(message != NULL ? message : "");
        if (call(link->coord, COORD_PATH("Complete"), &req.base,
                 &ferry__v1__complete_response__descriptor, 0, &resp, &err) == FERRY_OK) {
            ferry__v1__complete_response__free_unpacked(resp, NULL);
        } else {
            ferry_warn("op %s: reporting the outcome failed: %s", link->request_id, err.message);
        }
    }
}

/* The due link, marked busy, or NULL; *wait_ms_p: until the next is due. */
static ferry__coord_link_t *next_due(ferry_coordinator_t *coord, int64_t *wait_ms_p)
{
    int64_t now = now_ms();
    int64_t wait = 1000;

    for (ferry__coord_link_t *l = coord->links; l != NULL; l = l->next) {
        if (l->busy) {
            continue;
        }
        if (l->report_due || (!l->reported && l->due_ms <= now)) {
            l->busy = true;
            return l;
        }
        if (!l->reported && l->due_ms - now < wait) {
            wait = l->due_ms - now;
        }
    }
    *wait_ms_p = wait;
    return NULL;
}

static void timed_wait(pthread_cond_t *cond, pthread_mutex_t *lock, int64_t ms)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(cond, lock, &until);
}

static void *session_main(void *arg)
{
    ferry_coordinator_t *coord = arg;

    pthread_mutex_lock(&coord->lock);
    while (!coord->stopping) {
        int64_t wait_ms = 0;
        ferry__coord_link_t *link = next_due(coord, &wait_ms);
        if (link == NULL) {
            timed_wait(&coord->cond, &coord->lock, wait_ms > 0 ? wait_ms : 1);
            continue;
        }
        bool reporting = link->report_due;
        ferry_op_status_t outcome = link->final_status;
        link->report_due = false;
        pthread_mutex_unlock(&coord->lock);
        if (reporting) {
            report(link, outcome);
        } else {
            renew(link);
        }
        pthread_mutex_lock(&coord->lock);
        if (reporting) {
            link->reported = true;
        }
        link->due_ms = now_ms() + (link->ttl_s * 1000) / 3;
        link->busy = false;
        pthread_cond_broadcast(&coord->cond);
    }
    pthread_mutex_unlock(&coord->lock);
    return NULL;
}

/* ---- links ---------------------------------------------------------------- */

static ferry_status_t link_add(ferry_coordinator_t *coord, ferry_op_t *op, bool passive,
                               const char *request_id, const char *token, int64_t lease_id,
                               int64_t ttl_s)
{
    ferry__coord_link_t *link = calloc(1, sizeof(*link));

    if (link == NULL) {
        return FERRY_ERR_NO_MEMORY;
    }
    link->coord = coord;
    link->op = op;
    link->passive = passive;
    link->lease_id = lease_id;
    link->ttl_s = ttl_s > 0 ? ttl_s : 10;
    snprintf(link->request_id, sizeof(link->request_id), "%s", request_id);
    snprintf(link->token, sizeof(link->token), "%s", token);
    pthread_mutex_lock(&coord->lock);
    link->due_ms = now_ms() + (link->ttl_s * 1000) / 3;
    link->next = coord->links;
    coord->links = link;
    pthread_cond_signal(&coord->cond);
    pthread_mutex_unlock(&coord->lock);
    ferry__op_set_coord_link(op, link);
    return FERRY_OK;
}

static void on_done(ferry_op_t *op, ferry_op_status_t status, void *arg)
{
    ferry__coord_link_t *link = arg;
    (void)op;

    pthread_mutex_lock(&link->coord->lock);
    if (!link->reported) {
        link->final_status = status;
        link->report_due = true;
        pthread_cond_broadcast(&link->coord->cond);
    }
    pthread_mutex_unlock(&link->coord->lock);
}

static void cancel_passive(ferry__coord_link_t *link, const char *reason)
{
    Ferry__V1__CancelRequest req = FERRY__V1__CANCEL_REQUEST__INIT;
    Ferry__V1__CancelResponse *resp = NULL;
    rpc_error_t err;

    req.request_id = link->request_id;
    req.access_token = link->token;
    req.reason = (char *)reason;
    if (call(link->coord, COORD_PATH("Cancel"), &req.base, &ferry__v1__cancel_response__descriptor,
             0, &resp, &err) == FERRY_OK) {
        ferry__v1__cancel_response__free_unpacked(resp, NULL);
    } else if (err.grpc_code != 9 && err.grpc_code != 5) {
        ferry_warn("op %s: cancel at the coordinator failed: %s", link->request_id, err.message);
    }
}

void ferry__coord_unlink(ferry__coord_link_t *link)
{
    ferry_coordinator_t *coord = link->coord;
    ferry_op_status_t status;
    bool report_now;

    pthread_mutex_lock(&coord->lock);
    while (link->busy) {
        pthread_cond_wait(&coord->cond, &coord->lock);
    }
    for (ferry__coord_link_t **p = &coord->links; *p != NULL; p = &(*p)->next) {
        if (*p == link) {
            *p = link->next;
            break;
        }
    }
    report_now = !link->reported;
    pthread_mutex_unlock(&coord->lock);

    /* The end is reported exactly once, even when the operation is destroyed
     * before its done callback ran; destroying it unfinished cancels it. */
    status = ferry_op_status(link->op);
    if (report_now && link->passive && status != FERRY_OP_STATUS_COMPLETE &&
        status != FERRY_OP_STATUS_ERRORED) {
        cancel_passive(link, status == FERRY_OP_STATUS_CANCELLED
                                 ? "the receiver cancelled the operation"
                                 : "the receiver destroyed the operation before it completed");
    } else if (report_now && !link->passive) {
        report_active(link, status == FERRY_OP_STATUS_COMPLETE || status == FERRY_OP_STATUS_ERRORED
                                ? status
                                : FERRY_OP_STATUS_CANCELLED);
    }
    free(link);
}

/* ---- public API ----------------------------------------------------------- */

ferry_status_t ferry_coordinator_connect(const ferry_coordinator_params_t *params,
                                         ferry_coordinator_t **coord_p)
{
    rpc_tls_params_t tls = {0};
    rpc_channel_params_t cparams = {0};
    ferry_coordinator_t *coord;
    pthread_condattr_t attr;
    ferry_status_t status;

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
    pthread_mutex_init(&coord->lock, NULL);
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&coord->cond, &attr);
    pthread_condattr_destroy(&attr);
    if (pthread_create(&coord->thread, NULL, session_main, coord) != 0) {
        pthread_cond_destroy(&coord->cond);
        pthread_mutex_destroy(&coord->lock);
        rpc_channel_destroy(coord->channel);
        free(coord);
        return ferry__fail(FERRY_ERR_IO, "cannot start the coordinator session thread");
    }
    *coord_p = coord;
    return FERRY_OK;
}

void ferry_coordinator_disconnect(ferry_coordinator_t *coord)
{
    if (coord == NULL) {
        return;
    }
    pthread_mutex_lock(&coord->lock);
    coord->stopping = true;
    pthread_cond_broadcast(&coord->cond);
    pthread_mutex_unlock(&coord->lock);
    pthread_join(coord->thread, NULL);
    if (coord->links != NULL) {
        ferry_warn("coordinator client closed with operations still bound to it");
    }
    pthread_cond_destroy(&coord->cond);
    pthread_mutex_destroy(&coord->lock);
    rpc_channel_destroy(coord->channel);
    free(coord);
}

/* The RPC's own message, with its code, for ferry_last_error_message(). */
static ferry_status_t rpc_fail(ferry_status_t status, const char *what, const rpc_error_t *err)
{
    return ferry__fail(status, "%s: %s (%s)", what, err->message,
                       rpc_grpc_code_name(err->grpc_code));
}

ferry_status_t ferry_op_publish(ferry_op_t *op, ferry_coordinator_t *coord,
                                const ferry_publish_params_t *params)
{
    Ferry__V1__RegisterRequest req = FERRY__V1__REGISTER_REQUEST__INIT;
    Ferry__V1__RegisterResponse *resp = NULL;
    const uint8_t *bytes;
    size_t len;
    rpc_error_t err;
    ferry_status_t status;

    ferry__clear_error();
    if (op == NULL || coord == NULL || params == NULL || params->request_id == NULL) {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT,
                           "op, coordinator and request_id are required");
    }
    status = ferry_op_metadata(op, &bytes, &len);
    if (status != FERRY_OK) {
        return status;
    }
    if (ferry__op_coord_link(op) != NULL) {
        return ferry__fail(FERRY_ERR_MISUSE, "operation is already published");
    }
    req.metadata = ferry__v1__rdma_metadata__unpack(NULL, len, bytes);
    if (req.metadata == NULL) {
        return ferry__fail(FERRY_ERR_INTERNAL, "operation's own metadata does not decode");
    }
    req.request_id = (char *)params->request_id;
    req.access_token = (char *)(params->access_token != NULL ? params->access_token : "");
    req.ttl_seconds = params->ttl_s;
    req.owner = (char *)ferry__op_connector_name(op);
    status = call(coord, COORD_PATH("Register"), &req.base,
                  &ferry__v1__register_response__descriptor, 0, &resp, &err);
    ferry__v1__rdma_metadata__free_unpacked(req.metadata, NULL);
    if (status != FERRY_OK) {
        return rpc_fail(status, "register", &err);
    }
    status = link_add(coord, op, true, params->request_id, resp->access_token, resp->lease_id,
                      resp->ttl_seconds);
    ferry__v1__register_response__free_unpacked(resp, NULL);
    if (status != FERRY_OK) {
        return ferry__fail(status, "no memory to track the lease");
    }
    return ferry_op_set_done_callback(op, on_done, ferry__op_coord_link(op));
}

const char *ferry_op_access_token(const ferry_op_t *op)
{
    const ferry__coord_link_t *link = ferry__op_coord_link(op);
    return link != NULL ? link->token : NULL;
}

/* Lookup (with wait), check the pairing locally, then Claim: a writer that
 * would be refused (wrong kind, sizes) is refused before it takes the
 * operation from a correct one. */
static ferry_status_t lookup_checked(ferry_coordinator_t *coord, const ferry_claim_params_t *p,
                                     ferry__op_kind_t kind, const ferry_descriptor_t *local,
                                     size_t n)
{
    Ferry__V1__LookupRequest req = FERRY__V1__LOOKUP_REQUEST__INIT;
    Ferry__V1__LookupResponse *resp = NULL;
    rpc_error_t err;
    ferry_status_t status;

    req.request_id = (char *)p->request_id;
    req.access_token = (char *)p->access_token;
    req.wait_ms = p->wait_ms;
    status = call(coord, COORD_PATH("Lookup"), &req.base, &ferry__v1__lookup_response__descriptor,
                  p->wait_ms, &resp, &err);
    if (status != FERRY_OK) {
        return rpc_fail(status, "lookup", &err);
    }
    status = ferry__metadata_validate(resp->operation->metadata);
    if (status == FERRY_OK) {
        status = ferry__metadata_match(resp->operation->metadata, kind, local, n);
    }
    ferry__v1__lookup_response__free_unpacked(resp, NULL);
    return status;
}

static ferry_status_t begin_by_id(ferry_connector_t *connector, ferry_coordinator_t *coord,
                                  const ferry_claim_params_t *p, ferry__op_kind_t kind,
                                  const ferry_descriptor_t *local, size_t n, ferry_op_t **op_p)
{
    Ferry__V1__ClaimRequest req = FERRY__V1__CLAIM_REQUEST__INIT;
    Ferry__V1__ClaimResponse *resp = NULL;
    ferry_op_t *op = NULL;
    rpc_error_t err;
    ferry_status_t status;

    ferry__clear_error();
    if (connector == NULL || coord == NULL || p == NULL || p->request_id == NULL ||
        p->access_token == NULL) {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT,
                           "connector, coordinator, request_id and access_token are required");
    }
    status = ferry_descriptors_validate(local, n);
    if (status == FERRY_OK) {
        status = lookup_checked(coord, p, kind, local, n);
    }
    if (status != FERRY_OK) {
        return status;
    }
    req.request_id = (char *)p->request_id;
    req.access_token = (char *)p->access_token;
    req.claimant = (char *)ferry_connector_name(connector);
    req.kind = kind == FERRY__KIND_WRITE ? FERRY__V1__OPERATION_KIND__OPERATION_KIND_WRITE
                                         : FERRY__V1__OPERATION_KIND__OPERATION_KIND_READ;
    req.ttl_seconds = p->ttl_s;
    status = call(coord, COORD_PATH("Claim"), &req.base, &ferry__v1__claim_response__descriptor, 0,
                  &resp, &err);
    if (status != FERRY_OK) {
        return rpc_fail(status, "claim", &err);
    }
    status = ferry__active_begin_md(connector, kind, local, n, resp->operation->metadata, &op);
    if (status == FERRY_OK) {
        status = link_add(coord, op, false, p->request_id, p->access_token, resp->claim_lease_id,
                          resp->ttl_seconds);
    }
    if (status == FERRY_OK) {
        status = ferry_op_set_done_callback(op, on_done, ferry__op_coord_link(op));
    }
    if (status != FERRY_OK) {
        /* Tell the coordinator, so the passive side learns it too. */
        Ferry__V1__CompleteRequest done = FERRY__V1__COMPLETE_REQUEST__INIT;
        Ferry__V1__CompleteResponse *dr = NULL;
        done.request_id = (char *)p->request_id;
        done.access_token = (char *)p->access_token;
        done.claim_lease_id = resp->claim_lease_id;
        done.error_code = status;
        done.error_message = (char *)ferry_last_error_message();
        if (op == NULL &&
            call(coord, COORD_PATH("Complete"), &done.base,
                 &ferry__v1__complete_response__descriptor, 0, &dr, &err) == FERRY_OK) {
            ferry__v1__complete_response__free_unpacked(dr, NULL);
        }
        ferry_op_destroy(op);
    }
    ferry__v1__claim_response__free_unpacked(resp, NULL);
    if (status == FERRY_OK) {
        *op_p = op;
    }
    return status;
}

ferry_status_t ferry_write_begin_by_id(ferry_connector_t *connector, ferry_coordinator_t *coord,
                                       const ferry_claim_params_t *params,
                                       const ferry_descriptor_t *local, size_t n, ferry_op_t **op_p)
{
    return begin_by_id(connector, coord, params, FERRY__KIND_WRITE, local, n, op_p);
}

ferry_status_t ferry_read_begin_by_id(ferry_connector_t *connector, ferry_coordinator_t *coord,
                                      const ferry_claim_params_t *params,
                                      const ferry_descriptor_t *local, size_t n, ferry_op_t **op_p)
{
    return begin_by_id(connector, coord, params, FERRY__KIND_READ, local, n, op_p);
}
