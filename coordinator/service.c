/*
 * service.c: the unary handlers of ferry.v1.Coordinator. Each validates its
 * request (INVALID_ARGUMENT naming the field), calls the registry, and
 * answers; the status code comes from the registry's ferry_status_t through
 * the RPC layer's one mapping.
 *
 * The write RPCs validate on the completion-queue thread and do the rest
 * (`do_*`) on an etcd worker (service_submit, exec.h), which answers the
 * call. Lookup and Get answer from the view on the completion-queue thread
 * when it can; a read that needs etcd (a miss, linearizable, List) runs on
 * a read worker of its own pool. So a completion-queue thread never waits
 * on etcd, and a read never waits behind a write.
 *
 * Metadata stays bytes: Register hands the registry its metadata field as
 * the client sent it (after validating the decoded copy), and Lookup and
 * Claim answer with the stored bytes appended as they are
 * (reply_with_record), never decoded and packed again.
 */
#include "service_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "etcd/etcd.h"
#include "validate.h"

#define MSG_CAP 512

void service_header(coord_service_t *svc, Ferry__V1__ResponseHeader *header, int64_t revision)
{
    header->revision = revision;
    header->coordinator = svc->name;
}

/* Fails the call with `status` unless it is FERRY_OK; true if it failed. */
static bool failed(rpc_call_t *call, ferry_status_t status, const char *msg)
{
    if (status == FERRY_OK) {
        return false;
    }
    rpc_call_fail(call, status, "%s", msg);
    return true;
}

/* The request's one validator (validate_request.c); on refusal the call
 * fails with INVALID_ARGUMENT naming the field. True if it was refused. */
static bool refused(rpc_call_t *call, const ProtobufCMessage *request)
{
    char msg[MSG_CAP];

    return failed(call, coord_validate_request(request, msg, sizeof(msg)), msg);
}

/* Register's metadata as the client sent it (coord_validate_register_bytes):
 * the bytes the registry stores. True if the call was refused. */
static bool register_md_refused(rpc_call_t *call, const uint8_t **md_p, size_t *md_len_p)
{
    const uint8_t *request;
    size_t len;
    char msg[MSG_CAP];

    rpc_call_request_bytes(call, &request, &len);
    return failed(
        call, coord_validate_register_bytes(request, len, md_p, md_len_p, msg, sizeof(msg)), msg);
}

/* Answers `resp`, whose operation field is unset, with rec as that field:
 * the record packed without its metadata, then the metadata's bytes as
 * stored (those the passive worker registered) appended as its metadata
 * field. Lookup and Claim so hand out the passive worker's own bytes. */
static void reply_with_record(rpc_call_t *call, const ProtobufCMessage *resp,
                              const coord_record_t *rec)
{
    uint8_t *op = NULL, *bytes = NULL;
    size_t op_len = 0, len = 0;
    ferry_status_t status =
        rpc_pack_with_field(&rec->op->base, rpc_field_number(rec->op->base.descriptor, "metadata"),
                            rec->md, rec->md_len, &op, &op_len);

    if (status == FERRY_OK) {
        status = rpc_pack_with_field(resp, rpc_field_number(resp->descriptor, "operation"), op,
                                     op_len, &bytes, &len);
    }
    if (status != FERRY_OK) {
        ferry_error("%s: cannot pack the answer: %s", rpc_call_path(call),
                    ferry_status_name(status));
        rpc_call_fail(call, status, "cannot pack the answer: %s", ferry_status_string(status));
    } else {
        rpc_call_reply_packed(call, bytes, len);
    }
    free(bytes);
    free(op);
}

typedef struct {
    coord_service_t *svc;
    rpc_call_t *call; /* holds a reference */
    const ProtobufCMessage *request;
    service_work_fn fn;
    int64_t deadline_ms;
    service_share_t *share; /* counted in it until it has run */
} service_job_t;

static ferry_status_t share_init(service_share_t *share, const char *what, const char *flag,
                                 coord_exec_t *exec, unsigned flags, size_t max_per_peer)
{
    ferry_status_t status = coord_peers_create(&share->peers);

    share->what = what;
    share->flag = flag;
    share->exec = exec;
    share->flags = flags;
    share->max_per_peer = max_per_peer;
    if (status == FERRY_OK && pthread_mutex_init(&share->lock, NULL) != 0) {
        coord_peers_destroy(share->peers);
        share->peers = NULL;
        status = FERRY_ERR_NO_MEMORY;
    }
    return status;
}

/* NULL peers (never made, or failed): a no-op. */
static void share_destroy(service_share_t *share)
{
    if (share->peers != NULL) {
        pthread_mutex_destroy(&share->lock);
        coord_peers_destroy(share->peers);
        share->peers = NULL;
    }
}

/* Counts a call for its host in `share`; false (the call ended) when the
 * host holds its share, or no memory to count it. */
static bool share_take(service_share_t *share, rpc_call_t *call)
{
    const char *host = rpc_call_peer_host(call);
    ferry_status_t status;
    unsigned quiet;

    pthread_mutex_lock(&share->lock);
    /* The share binds only while the calls counted hold half the room or
     * more: a host's burst goes through while others have room, and a
     * host cannot take more than half of it from them. */
    if (share->max_per_peer != 0 && coord_peers_held(share->peers, host) >= share->max_per_peer &&
        share->held >= (size_t)coord_exec_capacity(share->exec, share->flags) / 2) {
        status = FERRY_ERR_RESOURCE_EXHAUSTED;
    } else {
        status = coord_peers_take(share->peers, host, 0);
        share->held += status == FERRY_OK;
    }
    pthread_mutex_unlock(&share->lock);
    if (status == FERRY_OK) {
        return true;
    }
    if (status != FERRY_ERR_RESOURCE_EXHAUSTED) {
        rpc_call_fail(call, status, "no memory to queue the call");
        return false;
    }
    atomic_fetch_add(&share->refusals, 1); /* for metrics */
    if (ferry_log_due(&share->log_limit, &quiet)) {
        ferry_info("%s from %s refused: its host holds its share, %zu, of the %s waiting on "
                   "etcd, and they fill half their room (%s); %u more refused since the last "
                   "line",
                   rpc_call_path(call), rpc_call_peer(call), share->max_per_peer, share->what,
                   share->flag, quiet);
    }
    rpc_call_fail(call, status,
                  "too many calls from %s waiting on etcd %s on this replica (%zu; %s); retry "
                  "later or on another replica",
                  host, share->what, share->max_per_peer, share->flag);
    return false;
}

static void share_give(service_share_t *share, rpc_call_t *call)
{
    pthread_mutex_lock(&share->lock);
    coord_peers_give(share->peers, rpc_call_peer_host(call));
    share->held--;
    pthread_mutex_unlock(&share->lock);
}

static void share_load(service_share_t *share, size_t *hosts_p, size_t *held_p)
{
    pthread_mutex_lock(&share->lock);
    *hosts_p = coord_peers_count(share->peers);
    *held_p = share->held;
    pthread_mutex_unlock(&share->lock);
}

/* Ends `call`, which this replica gives up on because it is shutting
 * down: UNAVAILABLE, so the client retries on another replica (a deadline
 * answer would tell it its own deadline was too short). */
static void fail_stopping(coord_service_t *svc, rpc_call_t *call)
{
    rpc_call_fail(call, FERRY_ERR_UNAVAILABLE,
                  "coordinator '%s' is shutting down; nothing was written; retry on another "
                  "replica",
                  svc->name);
}

static void service_job_run(void *arg, bool run)
{
    service_job_t *job = arg;
    int64_t prev;

    if (!run || rpc_call_is_stopping(job->call)) {
        fail_stopping(job->svc, job->call);
    } else if (rpc_call_is_cancelled(job->call)) {
        /* The client left, or its deadline passed while the call waited
         * for an etcd worker: write nothing it would not hear of. */
        rpc_call_fail(job->call, FERRY_ERR_TIMED_OUT,
                      "the deadline passed while waiting for etcd; nothing was written");
    } else {
        /* Every etcd request the work makes ends before the caller does. */
        prev = etcd_set_deadline(
            service_etcd_deadline(service_now_ms(), rpc_call_deadline_left_ms(job->call)));
        job->fn(job->svc, job->call, job->request, job->deadline_ms);
        etcd_set_deadline(prev);
    }
    share_give(job->share, job->call);
    rpc_call_unref(job->call);
    free(job);
}

/* Runs fn on share's pool (flags: exec.h), counted in the host's share
 * (share_take) until it has run. */
static void submit_to(coord_service_t *svc, service_share_t *share, rpc_call_t *call,
                      const ProtobufCMessage *request, service_work_fn fn, int64_t deadline_ms,
                      unsigned flags)
{
    static ferry_log_limit_t etcd_full_limit;
    service_job_t *job = malloc(sizeof(*job));
    ferry_status_t status;
    int running = 0, queued = 0;
    unsigned quiet;

    if (job == NULL) {
        rpc_call_fail(call, FERRY_ERR_NO_MEMORY, "no memory to queue the call");
        return;
    }
    if (!share_take(share, call)) {
        free(job);
        return;
    }
    *job = (service_job_t){.svc = svc,
                           .call = call,
                           .request = request,
                           .fn = fn,
                           .deadline_ms = deadline_ms,
                           .share = share};
    rpc_call_ref(call);
    status = coord_exec_submit(share->exec, service_job_run, job, flags);
    if (status == FERRY_OK) {
        return;
    }
    share_give(share, call);
    if (status == FERRY_ERR_RESOURCE_EXHAUSTED) {
        coord_exec_load(share->exec, &running, &queued);
        atomic_fetch_add(&svc->etcd_queue_refusals, 1); /* for metrics */
        if (ferry_log_due(&etcd_full_limit, &quiet)) {  /* clients retry at any rate */
            ferry_info("%s from %s refused: %d etcd calls running and %d queued (raise "
                       "--etcd-inflight or --etcd-queue); %u more refused since the last line",
                       rpc_call_path(call), rpc_call_peer(call), running, queued, quiet);
        }
        rpc_call_fail(call, status,
                      "too many calls waiting on etcd (%d running, %d queued; --etcd-inflight, "
                      "--etcd-queue); retry later",
                      running, queued);
    } else if (status == FERRY_ERR_UNAVAILABLE) {
        fail_stopping(svc, call);
    } else {
        rpc_call_fail(call, status, "cannot queue the call: %s", ferry_status_string(status));
    }
    rpc_call_unref(call);
    free(job);
}

void service_submit(coord_service_t *svc, rpc_call_t *call, const ProtobufCMessage *request,
                    service_work_fn fn, int64_t deadline_ms)
{
    submit_to(svc, &svc->writes, call, request, fn, deadline_ms, 0);
}

/* A read that only etcd can answer goes to the read workers: it never
 * waits behind a write, and never holds a completion-queue thread. */
static void submit_read(coord_service_t *svc, rpc_call_t *call, const ProtobufCMessage *request,
                        service_work_fn fn, int64_t deadline_ms)
{
    submit_to(svc, &svc->reads, call, request, fn, deadline_ms, 0);
}

/* The monotonic time a wait of wait_ms ends: no later than the caller's
 * deadline, INT64_MAX (never) when neither bounds it, and 0 for no wait.
 * Saturates: wait_ms may be anything up to INT64_MAX. */
int64_t service_wait_deadline(int64_t now_ms, int64_t wait_ms, int64_t left_ms)
{
    int64_t wait = wait_ms < left_ms ? wait_ms : left_ms;

    if (wait_ms <= 0) {
        return 0;
    }
    if (wait < 0) {
        wait = 0; /* the caller's deadline has passed */
    }
    return wait > INT64_MAX - now_ms ? INT64_MAX : now_ms + wait;
}

int64_t service_etcd_deadline(int64_t now_ms, int64_t left_ms)
{
    int64_t margin =
        left_ms / 10 < SERVICE_ANSWER_MARGIN_MS ? left_ms / 10 : SERVICE_ANSWER_MARGIN_MS;

    if (left_ms == INT64_MAX || left_ms > INT64_MAX - now_ms) {
        return 0;
    }
    if (left_ms < 0) {
        margin = left_ms = 0;
    }
    return now_ms + left_ms - margin > 0 ? now_ms + left_ms - margin : 1;
}

static int64_t wait_deadline(rpc_call_t *call, int64_t wait_ms)
{
    return service_wait_deadline(service_now_ms(), wait_ms, rpc_call_deadline_left_ms(call));
}

/* After a look that found no such request ID: answers NOT_FOUND when the
 * caller did not ask to wait, DEADLINE_EXCEEDED when its wait has run out,
 * and otherwise parks the call (true: the call is handled). */
static bool not_found_yet(coord_service_t *svc, rpc_call_t *call, wait_kind_t kind,
                          const ProtobufCMessage *req, const char *request_id, int64_t deadline_ms,
                          uint64_t seq)
{
    if (deadline_ms == 0) {
        return false;
    }
    if (deadline_ms <= service_now_ms()) {
        rpc_call_fail(call, FERRY_ERR_TIMED_OUT, "request_id '%s' was not registered in time",
                      request_id);
        return true;
    }
    service_wait_add(svc, call, kind, req, request_id, deadline_ms, seq);
    return true;
}

/* A Register's caller, as the registry asks after it (call_gone). The
 * registry asks on its own threads, under its batch lock, and is done
 * asking before coord_register returns, so the fields are read after. */
typedef struct {
    rpc_call_t *call;
    bool stopping; /* told gone because this replica is shutting down */
} register_caller_t;

/* Whether the client has stopped waiting for the call (left, its deadline
 * passed, or this replica is shutting down): the registry does not send a
 * Register still queued then, and fails it TIMED_OUT. */
static bool call_gone(void *arg)
{
    register_caller_t *caller = arg;

    if (!rpc_call_is_cancelled(caller->call)) {
        return false;
    }
    caller->stopping = rpc_call_is_stopping(caller->call);
    return true;
}

static void do_register(coord_service_t *svc, rpc_call_t *call, const ProtobufCMessage *request,
                        int64_t deadline_ms)
{
    const Ferry__V1__RegisterRequest *req = (const Ferry__V1__RegisterRequest *)request;
    Ferry__V1__RegisterResponse resp = FERRY__V1__REGISTER_RESPONSE__INIT;
    Ferry__V1__ResponseHeader header = FERRY__V1__RESPONSE_HEADER__INIT;
    register_caller_t caller = {.call = call};
    coord_register_out_t out;
    const uint8_t *md;
    size_t md_len;
    char msg[MSG_CAP];
    ferry_status_t status;

    (void)deadline_ms;
    if (register_md_refused(call, &md, &md_len)) {
        return; /* handle_register checked it: never */
    }
    status = coord_register(svc->registry, req, md, md_len, rpc_call_peer_host(call), call_gone,
                            &caller, &out, msg, sizeof(msg));
    if (status != FERRY_OK && caller.stopping) {
        fail_stopping(svc, call); /* it was never sent: not the caller's deadline */
        return;
    }
    if (failed(call, status, msg)) {
        return;
    }
    service_header(svc, &header, out.revision);
    resp.header = &header;
    resp.access_token = out.access_token;
    resp.lease_id = out.lease_id;
    resp.ttl_seconds = out.ttl_s;
    resp.lease_token = out.lease_token;
    rpc_call_reply(call, &resp.base);
}

static void handle_register(rpc_call_t *call, const ProtobufCMessage *request, void *arg)
{
    const uint8_t *md;
    size_t md_len;

    if (refused(call, request) || register_md_refused(call, &md, &md_len)) {
        return;
    }
    service_submit(arg, call, request, do_register, 0);
}

/* Answers a Lookup from what the registry said, or parks it (NOT_FOUND
 * with time left). seq: service_waits_seq() taken before the look. */
static void lookup_answer(coord_service_t *svc, rpc_call_t *call,
                          const Ferry__V1__LookupRequest *req, int64_t deadline_ms, uint64_t seq,
                          ferry_status_t status, coord_record_t *rec, int64_t revision,
                          const char *msg)
{
    Ferry__V1__LookupResponse resp = FERRY__V1__LOOKUP_RESPONSE__INIT;
    Ferry__V1__ResponseHeader header = FERRY__V1__RESPONSE_HEADER__INIT;

    if (status == FERRY_ERR_NOT_FOUND &&
        not_found_yet(svc, call, WAIT_LOOKUP, &req->base, req->request_id, deadline_ms, seq)) {
        return;
    }
    if (failed(call, status, msg)) {
        return;
    }
    service_header(svc, &header, revision);
    resp.header = &header;
    reply_with_record(call, &resp.base, rec);
    coord_record_free(rec);
}

/* A Lookup the view could not answer, on a read worker. */
static void lookup_etcd_work(coord_service_t *svc, rpc_call_t *call,
                             const ProtobufCMessage *request, int64_t deadline_ms)
{
    const Ferry__V1__LookupRequest *req = (const Ferry__V1__LookupRequest *)request;
    uint64_t seq = service_waits_seq(svc);
    coord_record_t rec = {0};
    int64_t revision = 0;
    char msg[MSG_CAP];
    ferry_status_t status = coord_lookup(svc->registry, req->request_id, req->access_token,
                                         req->linearizable, &rec, &revision, msg, sizeof(msg));

    lookup_answer(svc, call, req, deadline_ms, seq, status, &rec, revision, msg);
}

void service_lookup_once(coord_service_t *svc, rpc_call_t *call,
                         const Ferry__V1__LookupRequest *req, int64_t deadline_ms)
{
    uint64_t seq = service_waits_seq(svc);
    coord_record_t rec = {0};
    int64_t revision = 0;
    bool answered = false;
    char msg[MSG_CAP];
    ferry_status_t status =
        coord_lookup_view(svc->registry, req->request_id, req->access_token, req->linearizable,
                          &rec, &revision, &answered, msg, sizeof(msg));

    if (!answered) {
        submit_read(svc, call, &req->base, lookup_etcd_work, deadline_ms);
        return;
    }
    lookup_answer(svc, call, req, deadline_ms, seq, status, &rec, revision, msg);
}

static void handle_lookup(rpc_call_t *call, const ProtobufCMessage *request, void *arg)
{
    const Ferry__V1__LookupRequest *req = (const Ferry__V1__LookupRequest *)request;

    if (refused(call, request)) {
        return;
    }
    service_lookup_once(arg, call, req, wait_deadline(call, req->wait_ms));
}

void service_claim_once(coord_service_t *svc, rpc_call_t *call, const Ferry__V1__ClaimRequest *req,
                        int64_t deadline_ms)
{
    Ferry__V1__ClaimResponse resp = FERRY__V1__CLAIM_RESPONSE__INIT;
    Ferry__V1__ResponseHeader header = FERRY__V1__RESPONSE_HEADER__INIT;
    uint64_t seq = service_waits_seq(svc);
    coord_change_out_t out = {0};
    char msg[MSG_CAP];
    ferry_status_t status;

    status = coord_claim(svc->registry, req, &out, msg, sizeof(msg));
    /* Only an unregistered request ID is worth waiting for: a gone lease
     * (FERRY_ERR_LEASE_NOT_FOUND) is final and answered at once. */
    if (status == FERRY_ERR_NOT_FOUND &&
        not_found_yet(svc, call, WAIT_CLAIM, &req->base, req->request_id, deadline_ms, seq)) {
        return;
    }
    if (failed(call, status, msg)) {
        return;
    }
    resp.claim_id = out.rec.op->claim_id; /* before the strip, which hides it */
    coord_strip(out.rec.op, false);
    service_header(svc, &header, out.revision);
    resp.header = &header;
    resp.claim_lease_id = out.claim_lease_id;
    resp.ttl_seconds = out.ttl_s;
    resp.lease_token = out.lease_token;
    reply_with_record(call, &resp.base, &out.rec);
    coord_record_free(&out.rec);
}

void service_claim_work(coord_service_t *svc, rpc_call_t *call, const ProtobufCMessage *request,
                        int64_t deadline_ms)
{
    service_claim_once(svc, call, (const Ferry__V1__ClaimRequest *)request, deadline_ms);
}

static void handle_claim(rpc_call_t *call, const ProtobufCMessage *request, void *arg)
{
    const Ferry__V1__ClaimRequest *req = (const Ferry__V1__ClaimRequest *)request;

    if (refused(call, request)) {
        return;
    }
    service_submit(arg, call, request, service_claim_work, wait_deadline(call, req->wait_ms));
}

/* Complete and Cancel answer alike: the record after the change, without
 * metadata. `header` and `operation` are the response's own fields. */
static void reply_change(coord_service_t *svc, rpc_call_t *call, coord_change_out_t *out,
                         ProtobufCMessage *resp, Ferry__V1__ResponseHeader **header_field,
                         Ferry__V1__Operation **operation_field)
{
    Ferry__V1__ResponseHeader header = FERRY__V1__RESPONSE_HEADER__INIT;

    coord_strip(out->rec.op, false);
    service_header(svc, &header, out->revision);
    *header_field = &header;
    *operation_field = out->rec.op;
    rpc_call_reply(call, resp);
    coord_record_free(&out->rec);
}

static void do_complete(coord_service_t *svc, rpc_call_t *call, const ProtobufCMessage *request,
                        int64_t deadline_ms)
{
    const Ferry__V1__CompleteRequest *req = (const Ferry__V1__CompleteRequest *)request;
    coord_change_out_t out = {0};
    char msg[MSG_CAP];
    ferry_status_t status = coord_complete(svc->registry, req, &out, msg, sizeof(msg));

    (void)deadline_ms;
    if (failed(call, status, msg)) {
        return;
    }
    Ferry__V1__CompleteResponse resp = FERRY__V1__COMPLETE_RESPONSE__INIT;
    reply_change(svc, call, &out, &resp.base, &resp.header, &resp.operation);
}

static void handle_complete(rpc_call_t *call, const ProtobufCMessage *request, void *arg)
{

    if (refused(call, request)) {
        return;
    }
    service_submit(arg, call, request, do_complete, 0);
}

static void do_cancel(coord_service_t *svc, rpc_call_t *call, const ProtobufCMessage *request,
                      int64_t deadline_ms)
{
    const Ferry__V1__CancelRequest *req = (const Ferry__V1__CancelRequest *)request;
    coord_change_out_t out = {0};
    char msg[MSG_CAP];
    ferry_status_t status = coord_cancel(svc->registry, req, &out, msg, sizeof(msg));

    (void)deadline_ms;
    if (failed(call, status, msg)) {
        return;
    }
    Ferry__V1__CancelResponse resp = FERRY__V1__CANCEL_RESPONSE__INIT;
    reply_change(svc, call, &out, &resp.base, &resp.header, &resp.operation);
}

static void handle_cancel(rpc_call_t *call, const ProtobufCMessage *request, void *arg)
{

    if (refused(call, request)) {
        return;
    }
    service_submit(arg, call, request, do_cancel, 0);
}

static void do_release(coord_service_t *svc, rpc_call_t *call, const ProtobufCMessage *request,
                       int64_t deadline_ms)
{
    const Ferry__V1__ReleaseRequest *req = (const Ferry__V1__ReleaseRequest *)request;
    Ferry__V1__ReleaseResponse resp = FERRY__V1__RELEASE_RESPONSE__INIT;
    Ferry__V1__ResponseHeader header = FERRY__V1__RESPONSE_HEADER__INIT;
    int64_t revision = 0;
    char msg[MSG_CAP];
    ferry_status_t status = coord_release(svc->registry, req, &revision, msg, sizeof(msg));

    (void)deadline_ms;
    if (failed(call, status, msg)) {
        return;
    }
    service_header(svc, &header, revision);
    resp.header = &header;
    rpc_call_reply(call, &resp.base);
}

static void handle_release(rpc_call_t *call, const ProtobufCMessage *request, void *arg)
{

    if (refused(call, request)) {
        return;
    }
    service_submit(arg, call, request, do_release, 0);
}

/* A call on a lease (KeepAlive, Revoke): refused (answered, true) when the
 * request is invalid or does not hold the lease: its token is checked here,
 * before the call waits for an etcd worker (one HMAC, once the lease key is
 * loaded; before that the worker checks). */
static bool lease_refused(coord_service_t *svc, rpc_call_t *call, const ProtobufCMessage *request,
                          int64_t lease_id, const char *lease_token)
{
    char msg[MSG_CAP];

    return refused(call, request) ||
           failed(call,
                  coord_lease_precheck(svc->registry, lease_id, lease_token, msg, sizeof(msg)),
                  msg);
}

static void do_keepalive(coord_service_t *svc, rpc_call_t *call, const ProtobufCMessage *request,
                         int64_t deadline_ms)
{
    const Ferry__V1__KeepAliveRequest *req = (const Ferry__V1__KeepAliveRequest *)request;
    Ferry__V1__KeepAliveResponse resp = FERRY__V1__KEEP_ALIVE_RESPONSE__INIT;
    Ferry__V1__ResponseHeader header = FERRY__V1__RESPONSE_HEADER__INIT;
    char msg[MSG_CAP];
    ferry_status_t status = coord_keepalive(svc->registry, req->lease_id, req->lease_token,
                                            &resp.ttl_seconds, msg, sizeof(msg));

    (void)deadline_ms;
    if (failed(call, status, msg)) {
        return;
    }
    service_header(svc, &header, 0);
    resp.header = &header;
    rpc_call_reply(call, &resp.base);
}

/* A renewal keeps every record of a worker alive: it goes ahead of the
 * Registers and Claims waiting for an etcd worker (in turn with them while
 * both wait: exec.h), with a bound of its own
 * (COORD_EXEC_URGENT), so a burst of writes that fills the queue does not
 * let leases expire; and each host has a share of renewals of its own, so
 * that one renewing its own lease from many connections holds no more of
 * the urgent lane than that (audit-s33 M1). Renewals of one lease are not
 * coalesced: a client holds as many leases as it makes Registers, so that
 * would bound nothing the share does not. Only the lease's holder gets
 * there (lease_refused). */
static void handle_keepalive(rpc_call_t *call, const ProtobufCMessage *request, void *arg)
{
    coord_service_t *svc = arg;
    const Ferry__V1__KeepAliveRequest *req = (const Ferry__V1__KeepAliveRequest *)request;

    if (!lease_refused(svc, call, request, req->lease_id, req->lease_token)) {
        submit_to(svc, &svc->renewals, call, request, do_keepalive, 0, COORD_EXEC_URGENT);
    }
}

static void do_revoke(coord_service_t *svc, rpc_call_t *call, const ProtobufCMessage *request,
                      int64_t deadline_ms)
{
    const Ferry__V1__RevokeRequest *req = (const Ferry__V1__RevokeRequest *)request;
    Ferry__V1__RevokeResponse resp = FERRY__V1__REVOKE_RESPONSE__INIT;
    Ferry__V1__ResponseHeader header = FERRY__V1__RESPONSE_HEADER__INIT;
    char msg[MSG_CAP];
    ferry_status_t status =
        coord_revoke(svc->registry, req->lease_id, req->lease_token, msg, sizeof(msg));

    (void)deadline_ms;
    if (failed(call, status, msg)) {
        return;
    }
    service_header(svc, &header, 0);
    resp.header = &header;
    rpc_call_reply(call, &resp.base);
}

static void handle_revoke(rpc_call_t *call, const ProtobufCMessage *request, void *arg)
{
    const Ferry__V1__RevokeRequest *req = (const Ferry__V1__RevokeRequest *)request;

    if (!lease_refused(arg, call, request, req->lease_id, req->lease_token)) {
        service_submit(arg, call, request, do_revoke, 0);
    }
}

static void get_answer(coord_service_t *svc, rpc_call_t *call, ferry_status_t status,
                       coord_record_t *rec, int64_t revision, const char *msg)
{
    Ferry__V1__GetResponse resp = FERRY__V1__GET_RESPONSE__INIT;
    Ferry__V1__ResponseHeader header = FERRY__V1__RESPONSE_HEADER__INIT;

    if (failed(call, status, msg)) {
        return;
    }
    service_header(svc, &header, revision);
    resp.header = &header;
    resp.operation = rec->op; /* without metadata: read without a token */
    rpc_call_reply(call, &resp.base);
    coord_record_free(rec);
}

/* A Get the view could not answer, on a read worker. */
static void get_etcd_work(coord_service_t *svc, rpc_call_t *call, const ProtobufCMessage *request,
                          int64_t deadline_ms)
{
    const Ferry__V1__GetRequest *req = (const Ferry__V1__GetRequest *)request;
    coord_record_t rec = {0};
    int64_t revision = 0;
    char msg[MSG_CAP];
    ferry_status_t status = coord_lookup(svc->registry, req->request_id, NULL, req->linearizable,
                                         &rec, &revision, msg, sizeof(msg));

    (void)deadline_ms;
    get_answer(svc, call, status, &rec, revision, msg);
}

static void handle_get(rpc_call_t *call, const ProtobufCMessage *request, void *arg)
{
    coord_service_t *svc = arg;
    const Ferry__V1__GetRequest *req = (const Ferry__V1__GetRequest *)request;
    coord_record_t rec = {0};
    int64_t revision = 0;
    bool answered = false;
    char msg[MSG_CAP];
    ferry_status_t status;

    if (refused(call, request)) {
        return;
    }
    status = coord_lookup_view(svc->registry, req->request_id, NULL, req->linearizable, &rec,
                               &revision, &answered, msg, sizeof(msg));
    if (!answered) {
        submit_read(svc, call, request, get_etcd_work, 0);
        return;
    }
    get_answer(svc, call, status, &rec, revision, msg);
}

/* List always reads etcd: on a read worker. */
static void do_list(coord_service_t *svc, rpc_call_t *call, const ProtobufCMessage *request,
                    int64_t deadline_ms)
{
    const Ferry__V1__ListRequest *req = (const Ferry__V1__ListRequest *)request;
    Ferry__V1__ListResponse resp = FERRY__V1__LIST_RESPONSE__INIT;
    Ferry__V1__ResponseHeader header = FERRY__V1__RESPONSE_HEADER__INIT;
    char msg[MSG_CAP];
    ferry_status_t status;

    (void)deadline_ms;
    service_header(svc, &header, 0);
    resp.header = &header;
    status = coord_list(svc->registry, req, &resp, msg, sizeof(msg));
    if (!failed(call, status, msg)) {
        rpc_call_reply(call, &resp.base);
    }
    coord_list_free(&resp);
}

static void handle_list(rpc_call_t *call, const ProtobufCMessage *request, void *arg)
{

    if (refused(call, request)) {
        return;
    }
    submit_read(arg, call, request, do_list, 0);
}

/* What a call holds is bounded by its method's request size times the
 * calls that may be held (--max-waits, --max-watches, --etcd-queue), so each
 * method takes no more than its fields can hold. A Register carries up to
 * 1 MiB of metadata: it gets the server's bound (2 MiB, main.c), and keeps
 * its bytes (the metadata is stored as sent). Every other request holds a
 * few IDs, tokens and names, under 1 KiB at their limits (validate.h);
 * SERVICE_REQUEST_MAX leaves room for fields newer clients add. At 2 MiB,
 * Lookups parked with an unknown field of that size held 4.4 MiB each:
 * 44 GiB at the default --max-waits. */
#define SERVICE_REQUEST_MAX (16 * 1024)

static const rpc_method_t coordinator_methods[] = {
    {"Register", RPC_UNARY, handle_register, 0, true},
    {"Lookup", RPC_UNARY, handle_lookup, SERVICE_REQUEST_MAX, .reply_refusable = true},
    {"Claim", RPC_UNARY, handle_claim, SERVICE_REQUEST_MAX},
    {"Complete", RPC_UNARY, handle_complete, SERVICE_REQUEST_MAX},
    {"Cancel", RPC_UNARY, handle_cancel, SERVICE_REQUEST_MAX},
    {"Release", RPC_UNARY, handle_release, SERVICE_REQUEST_MAX},
    {"KeepAlive", RPC_UNARY, handle_keepalive, SERVICE_REQUEST_MAX},
    {"Revoke", RPC_UNARY, handle_revoke, SERVICE_REQUEST_MAX},
    {"Get", RPC_UNARY, handle_get, SERVICE_REQUEST_MAX, .reply_refusable = true},
    {"List", RPC_UNARY, handle_list, SERVICE_REQUEST_MAX, .reply_refusable = true},
    {"Watch", RPC_SERVER_STREAMING, service_watch, SERVICE_REQUEST_MAX},
};

void coord_service_limit_refusals(coord_service_t *svc, coord_service_refusals_t *out)
{
    out->max_waits = atomic_load(&svc->max_waits_refusals);
    out->max_watches = atomic_load(&svc->max_watches_refusals);
    out->watch_queue = atomic_load(&svc->watch_queue_ends);
    out->etcd_queue = atomic_load(&svc->etcd_queue_refusals);
}

void coord_service_limits(coord_service_t *svc, coord_service_limits_t *out)
{
    out->max_waits = svc->max_waits;
    out->max_watches = svc->max_watches;
    out->watch_queue_bytes = svc->watch_queue_bytes;
    out->watch_memory_bytes = rpc_send_budget_max(svc->watch_budget);
}

ferry_status_t coord_service_create(const coord_service_params_t *params, rpc_server_t *server,
                                    coord_service_t **service_p)
{
    coord_service_t *svc = calloc(1, sizeof(*svc));
    ferry_status_t status;

    if (svc == NULL || (svc->name = strdup(params->name)) == NULL) {
        free(svc);
        return FERRY_ERR_NO_MEMORY;
    }
    svc->server = server;
    svc->max_waits = params->max_waits != 0 ? params->max_waits : SERVICE_MAX_WAITS;
    svc->max_watches = params->max_watches != 0 ? params->max_watches : SERVICE_MAX_WATCHES;
    svc->max_watches_per_peer = params->max_watches_per_peer;
    svc->max_waits_per_peer = params->max_waits_per_peer;
    svc->evict.floor = SIZE_MAX;
    svc->watch_queue_bytes =
        params->watch_queue_bytes != 0 ? params->watch_queue_bytes : SERVICE_WATCH_QUEUE_BYTES;
    svc->watch_msg_bytes = svc->watch_queue_bytes / 4 < SERVICE_WATCH_MSG_BYTES
                               ? svc->watch_queue_bytes / 4
                               : SERVICE_WATCH_MSG_BYTES;
    svc->exec = params->exec;
    svc->read_exec = params->read_exec;
    status = rpc_send_budget_create(params->watch_memory_bytes != 0 ? params->watch_memory_bytes
                                                                    : SERVICE_WATCH_MEMORY_BYTES,
                                    &svc->watch_budget);
    if (status != FERRY_OK) {
        goto err_name;
    }
    if ((status = coord_peers_create(&svc->watch_peers)) != FERRY_OK ||
        (status = coord_peers_create(&svc->wait_peers)) != FERRY_OK ||
        (status = share_init(&svc->reads, "reads", "--etcd-reads-per-peer", svc->read_exec, 0,
                             params->max_reads_per_peer)) != FERRY_OK ||
        (status = share_init(&svc->writes, "writes", "--etcd-writes-per-peer", svc->exec, 0,
                             params->max_writes_per_peer)) != FERRY_OK ||
        (status = share_init(&svc->renewals, "lease renewals", "--etcd-writes-per-peer", svc->exec,
                             COORD_EXEC_URGENT, params->max_writes_per_peer)) != FERRY_OK) {
        goto err_peers;
    }
    if (pthread_mutex_init(&svc->subs_lock, NULL) != 0) {
        status = FERRY_ERR_NO_MEMORY;
        goto err_peers;
    }
    status = service_waits_start(svc);
    if (status != FERRY_OK) {
        goto err_free;
    }
    status =
        rpc_server_add_service(server, &ferry__v1__coordinator__descriptor, coordinator_methods,
                               sizeof(coordinator_methods) / sizeof(coordinator_methods[0]), svc);
    if (status != FERRY_OK) {
        goto err_waits;
    }
    *service_p = svc;
    return FERRY_OK;

err_waits:
    service_waits_stop(svc);
    pthread_cond_destroy(&svc->waits_cond);
    pthread_mutex_destroy(&svc->waits_lock);
err_free:
    pthread_mutex_destroy(&svc->subs_lock);
err_peers:
    share_destroy(&svc->renewals);
    share_destroy(&svc->writes);
    share_destroy(&svc->reads);
    coord_peers_destroy(svc->wait_peers);
    coord_peers_destroy(svc->watch_peers);
    rpc_send_budget_release(svc->watch_budget);
err_name:
    free(svc->name);
    free(svc);
    return status;
}

void coord_service_reads_held(coord_service_t *svc, size_t *hosts_p, size_t *reads_p)
{
    share_load(&svc->reads, hosts_p, reads_p);
}

uint64_t coord_service_read_peer_refusals(coord_service_t *svc)
{
    return atomic_load(&svc->reads.refusals);
}

size_t coord_service_write_peers(coord_service_t *svc, bool renewals)
{
    size_t hosts = 0, held = 0;

    share_load(renewals ? &svc->renewals : &svc->writes, &hosts, &held);
    return hosts;
}

uint64_t coord_service_write_peer_refusals(coord_service_t *svc, bool renewals)
{
    return atomic_load(renewals ? &svc->renewals.refusals : &svc->writes.refusals);
}

void coord_service_attach(coord_service_t *svc, coord_registry_t *registry)
{
    svc->registry = registry;
}

void coord_service_on_event(void *arg, coord_event_type_t type, const Ferry__V1__Operation *op,
                            int64_t revision)
{
    coord_service_t *svc = arg;

    if (type == COORD_EVENT_PUT) {
        service_waits_wake(svc, op->request_id);
    }
    service_watch_publish(svc, type, op, revision);
}

void coord_service_on_events_done(void *arg)
{
    service_watch_flush(arg);
}

void coord_service_on_reload(void *arg, int64_t revision)
{
    service_watch_reload(arg, revision);
}

void coord_service_on_synced(void *arg)
{
    service_waits_recheck(arg);
}

void coord_service_on_health(void *arg, bool healthy)
{
    coord_service_t *svc = arg;

    rpc_server_set_serving(svc->server, "", healthy);
    rpc_server_set_serving(svc->server, "ferry.v1.Coordinator", healthy);
}

void coord_service_stop(coord_service_t *svc)
{
    service_waits_stop(svc);
    service_watch_stop(svc);
}

void coord_service_destroy(coord_service_t *svc)
{
    if (svc == NULL) {
        return;
    }
    coord_service_stop(svc);
    service_watch_destroy(svc);
    pthread_cond_destroy(&svc->waits_cond);
    pthread_mutex_destroy(&svc->waits_lock);
    pthread_mutex_destroy(&svc->subs_lock);
    share_destroy(&svc->renewals);
    share_destroy(&svc->writes);
    share_destroy(&svc->reads);
    coord_peers_destroy(svc->wait_peers);
    coord_peers_destroy(svc->watch_peers);
    rpc_send_budget_release(svc->watch_budget); /* calls still held keep it */
    free(svc->name);
    free(svc);
}
