/*
 * service_wait.c: calls parked until their operation appears (Lookup and
 * Claim with wait_ms). The watch thread marks a wait ready; the wait thread
 * takes ready and expired waits off the list and re-runs or fails them
 * (a Lookup here, from the view; a Claim on an etcd worker, service_submit). A
 * wait is on the list or owned by exactly one thread, never both, so each
 * call is answered once.
 */
#include "service_int.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/log.h"

#define WAIT_IDLE_MS 1000

int64_t service_now_ms(void)
{
    return ferry__clock_ms(CLOCK_MONOTONIC);
}

/* The list is doubly linked: a wait found (or taken by take_due) leaves it
 * in O(1). Called with waits_lock held. */
static void wait_unlink(coord_service_t *svc, wait_entry_t *w)
{
    if (w->prev != NULL) {
        w->prev->next = w->next;
    } else {
        svc->waits = w->next;
    }
    if (w->next != NULL) {
        w->next->prev = w->prev;
    }
    w->prev = NULL;
    w->next = NULL;
    svc->n_waits--;
}

static void wait_link(coord_service_t *svc, wait_entry_t *w)
{
    w->prev = NULL;
    w->next = svc->waits;
    if (svc->waits != NULL) {
        svc->waits->prev = w;
    }
    svc->waits = w;
    svc->n_waits++;
}

static wait_entry_t *unlink_call(coord_service_t *svc, rpc_call_t *call)
{
    for (wait_entry_t *w = svc->waits; w != NULL; w = w->next) {
        if (w->call == call) {
            wait_unlink(svc, w);
            return w;
        }
    }
    return NULL;
}

/* FNV-1a: wakes are remembered by hash; a collision only costs a look. */
static uint64_t id_hash(const char *id)
{
    uint64_t h = 14695981039346656037ull;

    for (const unsigned char *p = (const unsigned char *)id; *p != '\0'; p++) {
        h = (h ^ *p) * 1099511628211ull;
    }
    return h;
}

/* Whether `request_id` was woken after wake number seen_seq (or the wakes
 * since are too many to tell). Called with waits_lock held. */
static bool woken_since(const coord_service_t *svc, const char *request_id, uint64_t seen_seq)
{
    uint64_t h;

    if (svc->wake_seq - seen_seq > SERVICE_WAKE_HISTORY) {
        return true;
    }
    h = id_hash(request_id);
    for (uint64_t n = seen_seq + 1; n <= svc->wake_seq; n++) {
        if (svc->wake_hash[n % SERVICE_WAKE_HISTORY] == h) {
            return true;
        }
    }
    return false;
}

static void on_wait_cancel(rpc_call_t *call, void *arg)
{
    coord_service_t *svc = arg;
    wait_entry_t *w;

    pthread_mutex_lock(&svc->waits_lock);
    w = unlink_call(svc, call);
    pthread_mutex_unlock(&svc->waits_lock);
    if (w != NULL) {
        rpc_call_fail(call, FERRY_ERR_CANCELLED, "the call was cancelled while waiting for '%s'",
                      w->request_id);
        rpc_call_unref(call);
        free(w);
    }
}

void service_wait_add(coord_service_t *svc, rpc_call_t *call, wait_kind_t kind,
                      const ProtobufCMessage *request, const char *request_id, int64_t deadline_ms,
                      uint64_t seen_seq)
{
    wait_entry_t *w = calloc(1, sizeof(*w));
    size_t n_waits;

    if (w == NULL) {
        rpc_call_fail(call, FERRY_ERR_NO_MEMORY, "no memory to wait for '%s'", request_id);
        return;
    }
    w->call = call;
    w->kind = kind;
    w->request = request;
    w->request_id = request_id;
    w->deadline_ms = deadline_ms;

    pthread_mutex_lock(&svc->waits_lock);
    if (svc->stopping) {
        pthread_mutex_unlock(&svc->waits_lock);
        rpc_call_fail(call, FERRY_ERR_UNAVAILABLE, "coordinator is shutting down");
        free(w);
        return;
    }
    n_waits = svc->n_waits;
    if (n_waits >= svc->max_waits) {
        pthread_mutex_unlock(&svc->waits_lock);
        ferry_info("op %s: %s from %s refused: %zu calls already wait (--max-waits)", request_id,
                   kind == WAIT_LOOKUP ? "lookup" : "claim", rpc_call_peer(call), n_waits);
        rpc_call_fail(call, FERRY_ERR_RESOURCE_EXHAUSTED,
                      "too many calls waiting for operations to appear (%zu; --max-waits); "
                      "retry later or on another replica",
                      n_waits);
        free(w);
        return;
    }
    rpc_call_ref(call);
    /* A wake for this request ID since the caller's look (seen_seq) may have
     * been the one it waits for: look once more rather than miss it. */
    w->ready = woken_since(svc, request_id, seen_seq);
    wait_link(svc, w);
    if (w->ready) {
        pthread_cond_signal(&svc->waits_cond);
    }
    pthread_mutex_unlock(&svc->waits_lock);
    ferry_debug("op %s: %s from %s waits up to %lld ms", request_id,
                kind == WAIT_LOOKUP ? "lookup" : "claim", rpc_call_peer(call),
                (long long)(deadline_ms - service_now_ms()));
    /* A call cancelled before this (while its look read etcd, or while the
     * wait thread ran it again) gets on_wait_cancel at once, which takes
     * the wait off the list again: it never stays parked. */
    rpc_call_on_cancel(call, on_wait_cancel, svc);
}

void service_waits_wake(coord_service_t *svc, const char *request_id)
{
    bool any = false;

    pthread_mutex_lock(&svc->waits_lock);
    svc->wake_seq++;
    svc->wake_hash[svc->wake_seq % SERVICE_WAKE_HISTORY] = id_hash(request_id);
    for (wait_entry_t *w = svc->waits; w != NULL; w = w->next) {
        if (strcmp(w->request_id, request_id) == 0) {
            w->ready = true;
            any = true;
        }
    }
    if (any) {
        pthread_cond_signal(&svc->waits_cond);
    }
    pthread_mutex_unlock(&svc->waits_lock);
}

uint64_t service_waits_seq(coord_service_t *svc)
{
    uint64_t seq;
    pthread_mutex_lock(&svc->waits_lock);
    seq = svc->wake_seq;
    pthread_mutex_unlock(&svc->waits_lock);
    return seq;
}

size_t coord_service_parked_waits(coord_service_t *svc)
{
    size_t n;
    pthread_mutex_lock(&svc->waits_lock);
    n = svc->n_waits;
    pthread_mutex_unlock(&svc->waits_lock);
    return n;
}

static void run_wait(coord_service_t *svc, wait_entry_t *w)
{
    if (service_now_ms() >= w->deadline_ms) {
        rpc_call_fail(w->call, FERRY_ERR_TIMED_OUT, "request_id '%s' was not registered in time",
                      w->request_id);
    } else if (w->kind == WAIT_LOOKUP) {
        service_lookup_once(svc, w->call, (const Ferry__V1__LookupRequest *)w->request,
                            w->deadline_ms);
    } else {
        /* The claim writes to etcd: an etcd worker runs it, not this
         * thread, which serves every other wait. */
        service_submit(svc, w->call, w->request, service_claim_work, w->deadline_ms);
    }
    rpc_call_unref(w->call);
    free(w);
}

/* Takes the ready and expired waits off the list; returns the nearest
 * deadline of those left. Called with waits_lock held. */
/* Takes the ready and expired waits off the list; returns the nearest
 * deadline of those left. Called with waits_lock held. */
static wait_entry_t *take_due(coord_service_t *svc, int64_t now, int64_t *next_deadline_p)
{
    wait_entry_t *due = NULL;
    int64_t next = now + WAIT_IDLE_MS;

    for (wait_entry_t *w = svc->waits, *after; w != NULL; w = after) {
        after = w->next;
        if (w->ready || w->deadline_ms <= now) {
            wait_unlink(svc, w);
            w->next = due;
            due = w;
        } else if (w->deadline_ms < next) {
            next = w->deadline_ms;
        }
    }
    *next_deadline_p = next;
    return due;
}

static void *wait_main(void *arg)
{
    coord_service_t *svc = arg;

    pthread_mutex_lock(&svc->waits_lock);
    while (!svc->stopping) {
        int64_t next;
        wait_entry_t *due = take_due(svc, service_now_ms(), &next);
        if (due == NULL) {
            int64_t ms = next - service_now_ms();
            struct timespec until = ferry__clock_in_ms(CLOCK_MONOTONIC, ms < 1 ? 1 : ms);
            pthread_cond_timedwait(&svc->waits_cond, &svc->waits_lock, &until);
            continue;
        }
        pthread_mutex_unlock(&svc->waits_lock);
        while (due != NULL) {
            wait_entry_t *next_w = due->next;
            run_wait(svc, due);
            due = next_w;
        }
        pthread_mutex_lock(&svc->waits_lock);
    }
    pthread_mutex_unlock(&svc->waits_lock);
    return NULL;
}

ferry_status_t service_waits_start(coord_service_t *svc)
{
    int rc = ferry__cond_init_clock(&svc->waits_cond, CLOCK_MONOTONIC);

    if (rc != 0) {
        ferry_error("service: cannot create the waits' condition variable: %s", strerror(rc));
        return FERRY_ERR_IO;
    }
    rc = pthread_mutex_init(&svc->waits_lock, NULL);
    if (rc != 0) {
        ferry_error("service: cannot create the waits' lock: %s", strerror(rc));
        goto err_cond;
    }
    rc = pthread_create(&svc->wait_thread, NULL, wait_main, svc);
    if (rc != 0) {
        ferry_error("service: cannot start the wait thread: %s", strerror(rc));
        goto err_lock;
    }
    return FERRY_OK;

err_lock:
    pthread_mutex_destroy(&svc->waits_lock);
err_cond:
    pthread_cond_destroy(&svc->waits_cond);
    return FERRY_ERR_IO;
}

/* Fails every parked wait with UNAVAILABLE and joins the wait thread. */
void service_waits_stop(coord_service_t *svc)
{
    wait_entry_t *all;

    pthread_mutex_lock(&svc->waits_lock);
    if (svc->stopping) {
        pthread_mutex_unlock(&svc->waits_lock);
        return;
    }
    svc->stopping = true;
    all = svc->waits;
    svc->waits = NULL;
    svc->n_waits = 0;
    pthread_cond_signal(&svc->waits_cond);
    pthread_mutex_unlock(&svc->waits_lock);
    pthread_join(svc->wait_thread, NULL);

    /* The lock and condition live until coord_service_destroy: a cancel
     * callback may still look for its call. */
    while (all != NULL) {
        wait_entry_t *next = all->next;
        rpc_call_fail(all->call, FERRY_ERR_UNAVAILABLE,
                      "coordinator is shutting down; retry on another replica");
        rpc_call_unref(all->call);
        free(all);
        all = next;
    }
}
