/*
 * service_watch.c: Watch streams. One etcd watch per coordinator process
 * (the registry's) feeds every subscriber: each registry event is packed
 * once, recorded in a bounded history (a ring of SERVICE_WATCH_HISTORY
 * events) and queued on the matching streams, in revision order.
 *
 * Invariant: a stream carries every change after its `created` revision
 * (or from its start_revision on), each once, in order. `created` reports
 * watch_rev, the revision of the last event published, read under the
 * subs_lock that publishing holds; a start_revision inside the history is
 * replayed from it under that same lock before the stream joins the
 * subscribers. A start_revision older than the history, or a view reload
 * (the registry's watch could not resume, so changes may never have been
 * published), ends the stream with OUT_OF_RANGE: the client rereads (Get or
 * List) and watches again from the header revision + 1.
 *
 * Bounded: each stream may have watch_queue_bytes (--watch-queue-kib) of
 * messages its client has not taken (gRPC's transport takes them only as
 * the client's flow-control window allows; a client that stops reading
 * stops widening it). A live event past that ends the stream with
 * RESOURCE_EXHAUSTED, naming the revision to resume from; the events
 * already queued still go out first. A replay is not counted: it is
 * bounded by the history.
 *
 * Threads: handlers on server threads; publish and reload on the registry's
 * watch and maintenance threads; all under subs_lock.
 */
#include "service_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "validate.h"

static sub_entry_t *unlink_sub(coord_service_t *svc, rpc_call_t *call)
{
    for (sub_entry_t **p = &svc->subs; *p != NULL; p = &(*p)->next) {
        if ((*p)->call == call) {
            sub_entry_t *s = *p;
            *p = s->next;
            return s;
        }
    }
    return NULL;
}

static void on_sub_cancel(rpc_call_t *call, void *arg)
{
    coord_service_t *svc = arg;
    sub_entry_t *s;

    pthread_mutex_lock(&svc->subs_lock);
    s = unlink_sub(svc, call);
    pthread_mutex_unlock(&svc->subs_lock);
    if (s != NULL) {
        ferry_debug("watch from %s: client went away", rpc_call_peer(call));
        rpc_call_fail(call, FERRY_ERR_CANCELLED, "watch cancelled");
        rpc_call_unref(call);
        free(s);
    }
}

static bool sub_matches(const sub_entry_t *s, const char *id)
{
    if (s->request_id != NULL) {
        return strcmp(s->request_id, id) == 0;
    }
    return strncmp(s->prefix, id, strlen(s->prefix)) == 0;
}

static const char resync_hint[] =
    "read the current state (Get or List), then Watch with start_revision = its header "
    "revision + 1";

/* Queues one event on s; false when s is too far behind (its queue is
 * full), and the stream must end. A stream whose client left answers
 * CANCELLED; its cancel callback removes it. Caller holds subs_lock. */
static bool sub_send_locked(coord_service_t *svc, sub_entry_t *s, rpc_msg_t *msg, int64_t revision)
{
    ferry_status_t status = rpc_call_send_msg(s->call, msg);

    if (status == FERRY_OK) {
        s->last_sent = revision;
        atomic_fetch_add(&svc->watch_events_sent, 1); /* for metrics */
    }
    return status != FERRY_ERR_RESOURCE_EXHAUSTED;
}

/* Ends a stream that fell behind, telling it where to resume; frees s. */
static void end_behind(coord_service_t *svc, sub_entry_t *s)
{
    ferry_info("watch from %s: fell behind (%zu bytes unsent); ended", rpc_call_peer(s->call),
               svc->watch_queue_bytes);
    rpc_call_fail(s->call, FERRY_ERR_RESOURCE_EXHAUSTED,
                  "this stream fell behind: more than %zu bytes of changes were waiting for the "
                  "client to read them; Watch again with start_revision = %lld (the revision "
                  "after the last event received)",
                  svc->watch_queue_bytes, (long long)(s->last_sent + 1));
    rpc_call_unref(s->call);
    free(s);
}

/* Sends the held events at or after `from` that match s. The stream's
 * bound is not set yet: a replay is bounded by the history itself, and a
 * client resuming after it fell behind must be able to take it. Caller
 * holds subs_lock. */
static void replay_locked(coord_service_t *svc, sub_entry_t *s, int64_t from)
{
    for (size_t i = 0; i < svc->hist_len; i++) {
        const hist_event_t *h = &svc->hist[(svc->hist_head + i) % SERVICE_WATCH_HISTORY];
        if (h->revision >= from && sub_matches(s, h->request_id)) {
            sub_send_locked(svc, s, h->msg, h->revision);
        }
    }
}

/* Answers `created`, replays and subscribes. Caller holds subs_lock; on
 * error the caller ends the call with the returned status. */
static ferry_status_t subscribe_locked(coord_service_t *svc, sub_entry_t *s, char *msg, size_t cap)
{
    Ferry__V1__WatchResponse resp = FERRY__V1__WATCH_RESPONSE__INIT;
    Ferry__V1__ResponseHeader header = FERRY__V1__RESPONSE_HEADER__INIT;

    if (svc->subs_stopping) {
        snprintf(msg, cap, "coordinator is shutting down");
        return FERRY_ERR_UNAVAILABLE;
    }
    if (s->start_revision != 0 && s->start_revision <= svc->hist_floor) {
        snprintf(msg, cap,
                 "start_revision %lld is no longer available on this replica (it holds changes "
                 "after revision %lld): %s",
                 (long long)s->start_revision, (long long)svc->hist_floor, resync_hint);
        return FERRY_ERR_OUT_OF_RANGE;
    }
    service_header(svc, &header, svc->watch_rev);
    resp.header = &header;
    resp.created = true;
    rpc_call_send(s->call, &resp.base);
    s->last_sent = (s->start_revision != 0 ? s->start_revision : svc->watch_rev + 1) - 1;
    if (s->start_revision != 0) {
        replay_locked(svc, s, s->start_revision);
    }
    /* From here on, live events count against the bound (while a replay
     * larger than it drains, they are refused and the stream ends). */
    rpc_call_set_send_limit(s->call, svc->watch_queue_bytes);
    s->next = svc->subs;
    svc->subs = s;
    return FERRY_OK;
}

void service_watch(rpc_call_t *call, const ProtobufCMessage *request, void *arg)
{
    coord_service_t *svc = arg;
    const Ferry__V1__WatchRequest *req = (const Ferry__V1__WatchRequest *)request;
    bool by_id = req->request_id[0] != '\0';
    ferry_status_t status;
    char msg[384];
    sub_entry_t *s;

    if (coord_validate_request(request, msg, sizeof(msg)) != FERRY_OK) {
        rpc_call_fail(call, FERRY_ERR_INVALID_ARGUMENT, "%s", msg);
        return;
    }
    s = calloc(1, sizeof(*s));
    if (s == NULL) {
        rpc_call_fail(call, FERRY_ERR_NO_MEMORY, "no memory for a watch");
        return;
    }
    s->call = call;
    s->request_id = by_id ? req->request_id : NULL;
    s->prefix = strcmp(req->request_id_prefix, "*") == 0 ? "" : req->request_id_prefix;
    s->start_revision = req->start_revision;
    rpc_call_ref(call);

    pthread_mutex_lock(&svc->subs_lock);
    status = subscribe_locked(svc, s, msg, sizeof(msg));
    pthread_mutex_unlock(&svc->subs_lock);
    if (status != FERRY_OK) {
        rpc_call_fail(call, status, "%s", msg);
        rpc_call_unref(call);
        free(s);
        return;
    }
    rpc_call_on_cancel(call, on_sub_cancel, svc);
}

static void hist_clear_locked(coord_service_t *svc)
{
    for (size_t i = 0; i < svc->hist_len; i++) {
        hist_event_t *h = &svc->hist[(svc->hist_head + i) % SERVICE_WATCH_HISTORY];
        free(h->request_id);
        rpc_msg_unref(h->msg);
    }
    svc->hist_head = 0;
    svc->hist_len = 0;
}

/* Records an event, dropping the oldest when full (the floor rises to its
 * revision). Takes over request_id and the reference to msg. Caller holds
 * subs_lock. */
static void hist_push_locked(coord_service_t *svc, int64_t revision, char *request_id,
                             rpc_msg_t *msg)
{
    hist_event_t *h;

    if (svc->hist_len == SERVICE_WATCH_HISTORY) {
        h = &svc->hist[svc->hist_head];
        svc->hist_floor = h->revision;
        free(h->request_id);
        rpc_msg_unref(h->msg);
        svc->hist_head = (svc->hist_head + 1) % SERVICE_WATCH_HISTORY;
        svc->hist_len--;
    }
    h = &svc->hist[(svc->hist_head + svc->hist_len) % SERVICE_WATCH_HISTORY];
    h->revision = revision;
    h->request_id = request_id;
    h->msg = msg;
    svc->hist_len++;
}

/* Takes the subscriber list out. Caller holds subs_lock. */
static sub_entry_t *detach_all_locked(coord_service_t *svc)
{
    sub_entry_t *all = svc->subs;
    svc->subs = NULL;
    return all;
}

/* Ends every detached stream with `status` and frees the list. */
static void end_all(sub_entry_t *all, ferry_status_t status, const char *msg)
{
    while (all != NULL) {
        sub_entry_t *next = all->next;
        rpc_call_fail(all->call, status, "%s", msg);
        rpc_call_unref(all->call);
        free(all);
        all = next;
    }
}

/* The history could not record an event (no memory): it restarts after the
 * event and every stream ends, as after a reload. Caller holds subs_lock. */
static sub_entry_t *hist_lost_locked(coord_service_t *svc, int64_t revision)
{
    hist_clear_locked(svc);
    svc->hist_floor = revision;
    return detach_all_locked(svc);
}

uint64_t coord_service_watch_events_sent(coord_service_t *svc)
{
    return atomic_load(&svc->watch_events_sent);
}

void service_watch_publish(coord_service_t *svc, coord_event_type_t type,
                           const Ferry__V1__Operation *op, int64_t revision)
{
    Ferry__V1__WatchResponse resp = FERRY__V1__WATCH_RESPONSE__INIT;
    Ferry__V1__ResponseHeader header = FERRY__V1__RESPONSE_HEADER__INIT;
    Ferry__V1__WatchEvent event = FERRY__V1__WATCH_EVENT__INIT;
    Ferry__V1__WatchEvent *events[1] = {&event};
    sub_entry_t *lost = NULL, *behind = NULL;
    rpc_msg_t *msg;
    char *id;

    event.type = type == COORD_EVENT_PUT ? FERRY__V1__WATCH_EVENT_TYPE__WATCH_EVENT_TYPE_PUT
                                         : FERRY__V1__WATCH_EVENT_TYPE__WATCH_EVENT_TYPE_DELETE;
    event.operation = (Ferry__V1__Operation *)op;
    service_header(svc, &header, revision);
    resp.header = &header;
    resp.n_events = 1;
    resp.events = events;
    msg = rpc_msg_pack(&resp.base); /* once, for every subscriber */
    id = strdup(op->request_id);

    pthread_mutex_lock(&svc->subs_lock);
    if (revision > svc->watch_rev) {
        svc->watch_rev = revision;
    }
    if (svc->subs_stopping) {
        /* nothing to record or send to */
    } else if (svc->hist == NULL) {
        svc->hist = calloc(SERVICE_WATCH_HISTORY, sizeof(*svc->hist));
    }
    if (svc->subs_stopping) {
        /* dropped below */
    } else if (msg == NULL || id == NULL || svc->hist == NULL) {
        lost = hist_lost_locked(svc, revision);
    } else {
        sub_entry_t **p = &svc->subs;
        while (*p != NULL) {
            sub_entry_t *s = *p;
            if (revision >= s->start_revision && sub_matches(s, op->request_id) &&
                !sub_send_locked(svc, s, msg, revision)) {
                *p = s->next;
                s->next = behind;
                behind = s;
                continue;
            }
            p = &s->next;
        }
        hist_push_locked(svc, revision, id, msg);
        msg = NULL;
        id = NULL;
    }
    pthread_mutex_unlock(&svc->subs_lock);
    rpc_msg_unref(msg);
    free(id);
    while (behind != NULL) {
        sub_entry_t *next = behind->next;
        end_behind(svc, behind);
        behind = next;
    }
    if (lost != NULL) {
        ferry_error("watch: no memory to record revision %lld; ending every stream",
                    (long long)revision);
        end_all(lost, FERRY_ERR_OUT_OF_RANGE,
                "this replica could not record a change (out of memory); read the current state "
                "(Get or List), then Watch with start_revision = its header revision + 1");
    }
}

/* The registry reloaded its view at `revision`: the changes it had not seen
 * were never published, so the history restarts there and every open stream
 * ends with OUT_OF_RANGE rather than silently missing them. */
void service_watch_reload(coord_service_t *svc, int64_t revision)
{
    sub_entry_t *all;
    char msg[384];

    pthread_mutex_lock(&svc->subs_lock);
    hist_clear_locked(svc);
    svc->hist_floor = revision;
    svc->watch_rev = revision;
    all = detach_all_locked(svc);
    pthread_mutex_unlock(&svc->subs_lock);
    if (all != NULL) {
        ferry_warn("watch: view reloaded at revision %lld; ending every stream",
                   (long long)revision);
    }
    snprintf(msg, sizeof(msg),
             "this replica reloaded its view at revision %lld (etcd no longer had the changes "
             "it missed), so changes before it may be missing from this stream: %s",
             (long long)revision, resync_hint);
    end_all(all, FERRY_ERR_OUT_OF_RANGE, msg);
}

/* Ends every stream with UNAVAILABLE so clients reconnect elsewhere. */
void service_watch_stop(coord_service_t *svc)
{
    sub_entry_t *all;

    pthread_mutex_lock(&svc->subs_lock);
    svc->subs_stopping = true;
    all = detach_all_locked(svc);
    hist_clear_locked(svc);
    free(svc->hist);
    svc->hist = NULL;
    pthread_mutex_unlock(&svc->subs_lock);
    end_all(all, FERRY_ERR_UNAVAILABLE,
            "coordinator is shutting down; watch again on another replica");
}
