/*
 * service_watch.c: Watch streams. One etcd watch per coordinator process
 * (the registry's) feeds every subscriber: each registry event is matched
 * against the subscriber list and queued on the matching streams, in
 * revision order. A subscriber added under subs_lock sees every event
 * published after its `created` message, whose revision is the registry's.
 */
#include "service_int.h"

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

void service_watch(rpc_call_t *call, const ProtobufCMessage *request, void *arg)
{
    coord_service_t *svc = arg;
    const Ferry__V1__WatchRequest *req = (const Ferry__V1__WatchRequest *)request;
    Ferry__V1__WatchResponse resp = FERRY__V1__WATCH_RESPONSE__INIT;
    Ferry__V1__ResponseHeader header = FERRY__V1__RESPONSE_HEADER__INIT;
    bool by_id = req->request_id[0] != '\0';
    char msg[256];
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
    rpc_call_ref(call);

    pthread_mutex_lock(&svc->subs_lock);
    if (svc->subs_stopping) {
        pthread_mutex_unlock(&svc->subs_lock);
        rpc_call_fail(call, FERRY_ERR_UNAVAILABLE, "coordinator is shutting down");
        rpc_call_unref(call);
        free(s);
        return;
    }
    service_header(svc, &header, coord_registry_revision(svc->registry));
    resp.header = &header;
    resp.created = true;
    rpc_call_send(call, &resp.base);
    s->next = svc->subs;
    svc->subs = s;
    pthread_mutex_unlock(&svc->subs_lock);
    rpc_call_on_cancel(call, on_sub_cancel, svc);
}

void service_watch_publish(coord_service_t *svc, coord_event_type_t type,
                           const Ferry__V1__Operation *op, int64_t revision)
{
    Ferry__V1__WatchResponse resp = FERRY__V1__WATCH_RESPONSE__INIT;
    Ferry__V1__ResponseHeader header = FERRY__V1__RESPONSE_HEADER__INIT;
    Ferry__V1__WatchEvent event = FERRY__V1__WATCH_EVENT__INIT;
    Ferry__V1__WatchEvent *events[1] = {&event};

    event.type = type == COORD_EVENT_PUT ? FERRY__V1__WATCH_EVENT_TYPE__WATCH_EVENT_TYPE_PUT
                                         : FERRY__V1__WATCH_EVENT_TYPE__WATCH_EVENT_TYPE_DELETE;
    event.operation = (Ferry__V1__Operation *)op;
    service_header(svc, &header, revision);
    resp.header = &header;
    resp.n_events = 1;
    resp.events = events;

    pthread_mutex_lock(&svc->subs_lock);
    for (sub_entry_t *s = svc->subs; s != NULL; s = s->next) {
        if (sub_matches(s, op->request_id)) {
            /* A stream whose client left answers CANCELLED; its cancel
             * callback removes it. */
            rpc_call_send(s->call, &resp.base);
        }
    }
    pthread_mutex_unlock(&svc->subs_lock);
}

/* Ends every stream with UNAVAILABLE so clients reconnect elsewhere. */
void service_watch_stop(coord_service_t *svc)
{
    sub_entry_t *all;

    pthread_mutex_lock(&svc->subs_lock);
    svc->subs_stopping = true;
    all = svc->subs;
    svc->subs = NULL;
    pthread_mutex_unlock(&svc->subs_lock);
    while (all != NULL) {
        sub_entry_t *next = all->next;
        rpc_call_fail(all->call, FERRY_ERR_UNAVAILABLE,
                      "coordinator is shutting down; watch again on another replica");
        rpc_call_unref(all->call);
        free(all);
        all = next;
    }
}
