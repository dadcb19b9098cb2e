/*
 * rpc_health.c: grpc.health.v1.Health, served by every rpc server.
 *
 * A table of service name -> serving; "" (the server as a whole) and each
 * added service start SERVING. Check answers from the table (NOT_FOUND for
 * a name it lacks). Watch sends the current status (SERVICE_UNKNOWN for a
 * name it lacks), then one message per change, until the client goes away
 * or the server shuts down; each Watch call is held with a reference on the
 * watcher list, which is bounded (max_watchers: one more Watch ends
 * RESOURCE_EXHAUSTED), and so is each one's queue of unsent changes
 * (HEALTH_WATCH_QUEUE_MAX: a client that does not read them is ended
 * RESOURCE_EXHAUSTED).
 *
 * Threads: handlers run on server threads, rpc__health_set on any thread.
 * health->lock guards the table and the watcher list; rpc_call_send is
 * called under it (health->lock before call->lock), rpc_call_fail is not.
 */
#include "rpc/rpc_int.h"

#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "grpc/health/v1/health.pb-c.h"

#define SERVING_STATUS(x) GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__##x

struct rpc_health_watcher {
    rpc_call_t *call; /* a reference held by this list */
    char *service;
    rpc_health_watcher_t *next;
};

/* Caller holds the lock. NULL when the table lacks `service`. */
static rpc_health_entry_t *health_find(rpc_health_t *health, const char *service)
{
    for (size_t i = 0; i < health->n_entries; i++) {
        if (strcmp(health->entries[i].service, service) == 0) {
            return &health->entries[i];
        }
    }
    return NULL;
}

/* Caller holds the lock. */
static rpc_health_entry_t *health_append(rpc_health_t *health, const char *service, bool serving)
{
    rpc_health_entry_t *entries;
    char *name = strdup(service);

    entries = realloc(health->entries, (health->n_entries + 1) * sizeof(*entries));
    if (name == NULL || entries == NULL) {
        free(name);
        if (entries != NULL) {
            health->entries = entries;
        }
        return NULL;
    }
    health->entries = entries;
    entries[health->n_entries].service = name;
    entries[health->n_entries].serving = serving;
    return &entries[health->n_entries++];
}

static int health_status_of(const rpc_health_entry_t *entry)
{
    if (entry == NULL) {
        return SERVING_STATUS(SERVICE_UNKNOWN);
    }
    return entry->serving ? SERVING_STATUS(SERVING) : SERVING_STATUS(NOT_SERVING);
}

/* Unsent bytes one Watch stream may hold: 128 changes its client has not
 * read (a status is 2 bytes packed, and each queued message costs
 * RPC_OUTMSG_OVERHEAD besides). Health flapping beside a client that never
 * reads grew the stream's queue without end; past this the stream ends
 * RESOURCE_EXHAUSTED, and a client that watches again hears the current
 * status first. */
#define HEALTH_WATCH_QUEUE_MAX (128 * (2 + RPC_OUTMSG_OVERHEAD))

/* Sends `status` to every watcher of `service`. A watcher whose queue is
 * full is taken off the list onto *ended_p, for the caller to end once it
 * has dropped the lock (health_end). Caller holds the lock. */
static void health_notify(rpc_health_t *health, const char *service, int status,
                          rpc_health_watcher_t **ended_p)
{
    Grpc__Health__V1__HealthCheckResponse msg = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    rpc_health_watcher_t **pp = &health->watchers, *w;

    msg.status = status;
    while ((w = *pp) != NULL) {
        /* A watcher whose client is gone gets CANCELLED; its cancel
         * callback takes it off the list. */
        if (strcmp(w->service, service) == 0 &&
            rpc_call_send(w->call, &msg.base) == FERRY_ERR_RESOURCE_EXHAUSTED) {
            *pp = w->next;
            health->n_watchers--;
            w->next = *ended_p;
            *ended_p = w;
            continue;
        }
        pp = &w->next;
    }
}

/* Ends the watchers on list, which are off the watcher list, with status
 * and message, and frees them. Lock not held (rpc_call_fail). */
static void health_end(rpc_health_watcher_t *list, ferry_status_t status, const char *message)
{
    while (list != NULL) {
        rpc_health_watcher_t *w = list;
        list = w->next;
        rpc_call_fail(w->call, status, "%s", message);
        rpc_call_unref(w->call);
        free(w->service);
        free(w);
    }
}

/* What ends a watcher whose queue is full. */
#define HEALTH_UNREAD_MSG                                                                 \
    "Health.Watch: the client did not read its status changes; watch again (the current " \
    "status comes first)"

ferry_status_t rpc__health_init(rpc_health_t *health)
{
    memset(health, 0, sizeof(*health));
    if (pthread_mutex_init(&health->lock, NULL) != 0) {
        ferry_error("rpc: health: pthread_mutex_init failed");
        return FERRY_ERR_NO_MEMORY;
    }
    if (health_append(health, "", true) == NULL) {
        pthread_mutex_destroy(&health->lock);
        return FERRY_ERR_NO_MEMORY;
    }
    return FERRY_OK;
}

void rpc__health_destroy(rpc_health_t *health)
{
    while (health->watchers != NULL) {
        rpc_health_watcher_t *w = health->watchers;
        health->watchers = w->next;
        rpc_call_unref(w->call);
        free(w->service);
        free(w);
    }
    for (size_t i = 0; i < health->n_entries; i++) {
        free(health->entries[i].service);
    }
    free(health->entries);
    pthread_mutex_destroy(&health->lock);
}

ferry_status_t rpc__health_add(rpc_health_t *health, const char *service)
{
    ferry_status_t status = FERRY_OK;

    pthread_mutex_lock(&health->lock);
    if (health_find(health, service) == NULL && health_append(health, service, true) == NULL) {
        status = FERRY_ERR_NO_MEMORY;
    }
    pthread_mutex_unlock(&health->lock);
    return status;
}

void rpc__health_set(rpc_health_t *health, const char *service, bool serving)
{
    rpc_health_watcher_t *ended = NULL;
    rpc_health_entry_t *entry;

    pthread_mutex_lock(&health->lock);
    if (health->closed) {
        pthread_mutex_unlock(&health->lock);
        return;
    }
    entry = health_find(health, service);
    if (entry == NULL) {
        entry = health_append(health, service, !serving);
    }
    if (entry != NULL && entry->serving != serving) {
        entry->serving = serving;
        ferry_info("rpc: health of \"%s\" is now %s", service, serving ? "serving" : "not serving");
        health_notify(health, service, health_status_of(entry), &ended);
    }
    pthread_mutex_unlock(&health->lock);
    health_end(ended, FERRY_ERR_RESOURCE_EXHAUSTED, HEALTH_UNREAD_MSG);
}

void rpc__health_close(rpc_health_t *health)
{
    rpc_health_watcher_t *list, *ended = NULL;

    pthread_mutex_lock(&health->lock);
    health->closed = true;
    for (size_t i = 0; i < health->n_entries; i++) {
        if (health->entries[i].serving) {
            health->entries[i].serving = false;
            health_notify(health, health->entries[i].service, SERVING_STATUS(NOT_SERVING), &ended);
        }
    }
    list = health->watchers;
    health->watchers = NULL;
    health->n_watchers = 0;
    pthread_mutex_unlock(&health->lock);
    health_end(ended, FERRY_ERR_RESOURCE_EXHAUSTED, HEALTH_UNREAD_MSG);
    health_end(list, FERRY_ERR_UNAVAILABLE, "server shutting down");
}

/* --- handlers ---------------------------------------------------------------- */

static void health_check(rpc_call_t *call, const ProtobufCMessage *request, void *arg)
{
    const Grpc__Health__V1__HealthCheckRequest *req = (const void *)request;
    Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    rpc_health_t *health = arg;
    rpc_health_entry_t *entry;

    pthread_mutex_lock(&health->lock);
    entry = health_find(health, req->service);
    resp.status = health_status_of(entry);
    pthread_mutex_unlock(&health->lock);
    if (entry == NULL) {
        rpc_call_fail(call, FERRY_ERR_NOT_FOUND, "unknown service \"%s\"", req->service);
        return;
    }
    rpc_call_reply(call, &resp.base);
}

static void health_watch_cancelled(rpc_call_t *call, void *arg)
{
    rpc_health_t *health = arg;
    rpc_health_watcher_t **pp, *found = NULL;

    pthread_mutex_lock(&health->lock);
    for (pp = &health->watchers; *pp != NULL; pp = &(*pp)->next) {
        if ((*pp)->call == call) {
            found = *pp;
            *pp = found->next;
            break;
        }
    }
    if (found != NULL) {
        health->n_watchers--;
    }
    pthread_mutex_unlock(&health->lock);
    if (found != NULL) {
        found->next = NULL;
        health_end(found, FERRY_ERR_CANCELLED, "watch cancelled");
    }
}

static void health_watch(rpc_call_t *call, const ProtobufCMessage *request, void *arg)
{
    const Grpc__Health__V1__HealthCheckRequest *req = (const void *)request;
    Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    rpc_health_t *health = arg;
    rpc_health_watcher_t *w = calloc(1, sizeof(*w));

    if (w == NULL || (w->service = strdup(req->service)) == NULL) {
        free(w);
        rpc_call_fail(call, FERRY_ERR_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    pthread_mutex_lock(&health->lock);
    if (health->closed) {
        pthread_mutex_unlock(&health->lock);
        free(w->service);
        free(w);
        rpc_call_fail(call, FERRY_ERR_UNAVAILABLE, "server shutting down");
        return;
    }
    if (health->n_watchers >= health->max_watchers) {
        size_t bound = health->max_watchers;
        pthread_mutex_unlock(&health->lock);
        free(w->service);
        free(w);
        rpc_call_fail(call, FERRY_ERR_RESOURCE_EXHAUSTED,
                      "Health.Watch: %zu streams are open, this server's bound; close one, or "
                      "poll Health.Check",
                      bound);
        return;
    }
    health->n_watchers++;
    rpc_call_ref(call);
    rpc_call_set_send_limit(call, HEALTH_WATCH_QUEUE_MAX);
    w->call = call;
    w->next = health->watchers;
    health->watchers = w;
    resp.status = health_status_of(health_find(health, req->service));
    rpc_call_send(call, &resp.base);
    pthread_mutex_unlock(&health->lock);
    rpc_call_on_cancel(call, health_watch_cancelled, health);
}

ferry_status_t rpc__health_add_service(rpc_server_t *server)
{
    /* A request names one service: a Watch holds it as long as it is
     * open, so nothing near the server's bound is taken. */
    static const rpc_method_t methods[] = {
        {"Check", RPC_UNARY, health_check, RPC_HEALTH_REQUEST_MAX},
        {"Watch", RPC_SERVER_STREAMING, health_watch, RPC_HEALTH_REQUEST_MAX},
    };

    return rpc__method_table_add(&server->methods, &grpc__health__v1__health__descriptor, methods,
                                 2, &server->health);
}
