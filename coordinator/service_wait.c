/*
 * service_wait.c: calls parked until their operation appears (Lookup and
 * Claim with wait_ms). The watch thread marks a wait ready; the wait thread
 * takes ready and expired waits off and re-runs or fails them (a Lookup
 * here, from the view; a Claim on an etcd worker, service_submit). A wait
 * is parked or owned by exactly one thread, never both, so each call is
 * answered once. Parked waits are kept by when they are due and by request
 * ID (service_int.h), so neither a wake nor the wait thread walks them all:
 * with 10,000 parked, the walk on every change cost ~300-500 us of CPU per
 * Register (bench/NOTES.md).
 *
 * A record can also come with no event: one written while the view was not
 * live (etcd down at start, a reload after compaction) is in the view once
 * it loads, and no watch event ever tells of it. So when the view comes back
 * (service_waits_recheck) every wait whose record it now holds looks again,
 * and a wait whose time is up looks once more if the view holds its record
 * (run_wait) before it fails.
 */
#include "service_int.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/keyed_hash.h"
#include "common/log.h"

#define WAIT_IDLE_MS 1000

int64_t service_now_ms(void)
{
    return ferry__clock_ms(CLOCK_MONOTONIC);
}

/* Wakes are remembered by hash (a collision only costs a look), and waits
 * are found by it. The request IDs are the clients', so the hash is keyed
 * (common/keyed_hash.h): with one known in advance, waits on IDs made to
 * collide would share one bucket, walked under waits_lock by every wake
 * (audit-s33 H2). */
static uint64_t id_hash(const char *id)
{
    return ferry__keyed_hash_str(id);
}

/* The waits: a heap by when each is due and a hash by request ID
 * (service_int.h). Every function here is called with waits_lock held. */

#define WAIT_MIN_SLOTS 64

/* Whether a is due before b: a ready wait (its operation changed) before any
 * other, then the earlier deadline. */
static bool due_before(const wait_entry_t *a, const wait_entry_t *b)
{
    if (a->ready != b->ready) {
        return a->ready;
    }
    return a->deadline_ms < b->deadline_ms;
}

static void heap_put(coord_service_t *svc, size_t at, wait_entry_t *w)
{
    svc->waits_heap[at] = w;
    w->heap_at = at;
}

/* Moves the wait at `at` up or down to its place. */
static void heap_fix(coord_service_t *svc, size_t at)
{
    wait_entry_t **h = svc->waits_heap;
    wait_entry_t *w = h[at];

    while (at > 0 && due_before(w, h[(at - 1) / 2])) {
        heap_put(svc, at, h[(at - 1) / 2]);
        at = (at - 1) / 2;
    }
    for (;;) {
        size_t child = 2 * at + 1;
        if (child >= svc->n_waits) {
            break;
        }
        if (child + 1 < svc->n_waits && due_before(h[child + 1], h[child])) {
            child++;
        }
        if (!due_before(h[child], w)) {
            break;
        }
        heap_put(svc, at, h[child]);
        at = child;
    }
    heap_put(svc, at, w);
}

static wait_entry_t **bucket_of(coord_service_t *svc, const char *request_id)
{
    return &svc->waits_by_id[id_hash(request_id) & (svc->n_id_buckets - 1)];
}

static void bucket_add(coord_service_t *svc, wait_entry_t *w)
{
    wait_entry_t **b = bucket_of(svc, w->request_id);

    w->hprev = NULL;
    w->hnext = *b;
    if (*b != NULL) {
        (*b)->hprev = w;
    }
    *b = w;
}

/* Room for one wait more: the heap's slots, and buckets doubled (all
 * rehashed) to stay at least one a wait. False: no memory. */
static bool wait_room(coord_service_t *svc)
{
    if (svc->n_waits == svc->heap_cap) {
        size_t cap = svc->heap_cap < WAIT_MIN_SLOTS ? WAIT_MIN_SLOTS : svc->heap_cap * 2;
        wait_entry_t **heap = realloc(svc->waits_heap, cap * sizeof(*heap));
        if (heap == NULL) {
            return false;
        }
        svc->waits_heap = heap;
        svc->heap_cap = cap;
    }
    if (svc->n_waits + 1 > svc->n_id_buckets) {
        size_t n = svc->n_id_buckets * 2;
        wait_entry_t **buckets = calloc(n, sizeof(*buckets));
        if (buckets == NULL) {
            return true; /* keep the longer chains: still right */
        }
        free(svc->waits_by_id);
        svc->waits_by_id = buckets;
        svc->n_id_buckets = n;
        for (size_t i = 0; i < svc->n_waits; i++) {
            bucket_add(svc, svc->waits_heap[i]);
        }
    }
    return true;
}

/* Parks w (wait_room said there is room). */
static void wait_link(coord_service_t *svc, wait_entry_t *w)
{
    bucket_add(svc, w);
    rpc_call_set_parked(w->call, w);
    heap_put(svc, svc->n_waits++, w);
    heap_fix(svc, w->heap_at);
}

/* Takes w off the heap and its bucket, and gives back its host's share
 * (coord_peers_take'n when it parked): every way a wait leaves, whether it
 * is due, answered or cancelled, comes through here (or through
 * service_waits_stop). */
static void wait_unlink(coord_service_t *svc, wait_entry_t *w)
{
    size_t at = w->heap_at;

    coord_peers_give(svc->wait_peers, w->peer_host);
    rpc_call_set_parked(w->call, NULL);
    if (w->hprev != NULL) {
        w->hprev->hnext = w->hnext;
    } else {
        *bucket_of(svc, w->request_id) = w->hnext;
    }
    if (w->hnext != NULL) {
        w->hnext->hprev = w->hprev;
    }
    w->hprev = w->hnext = NULL;
    svc->n_waits--;
    if (at < svc->n_waits) {
        heap_put(svc, at, svc->waits_heap[svc->n_waits]);
        heap_fix(svc, at);
    }
}

/* The parked wait of call, taken off; NULL when it is not parked (the wait
 * thread took it, or it never was). Found through the call (wait_link set
 * it, wait_unlink clears it, both under waits_lock), not by a walk of every
 * parked wait: a client that parks and resets calls in a loop must not cost
 * a walk of --max-waits each under the lock the wakes need (audit-s33 L1). */
static wait_entry_t *unlink_call(coord_service_t *svc, rpc_call_t *call)
{
    wait_entry_t *w = rpc_call_parked(call);

    if (w != NULL) {
        wait_unlink(svc, w);
    }
    return w;
}

/* Whether `request_id` was woken after wake number seen_seq (or the wakes
 * since are too many to tell). Called with waits_lock held. */
static bool woken_since(const coord_service_t *svc, const char *request_id, uint64_t seen_seq)
{
    uint64_t h;

    if (svc->wake_seq - seen_seq > SERVICE_WAKE_HISTORY || svc->synced_seq > seen_seq) {
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

/* Ends the call of a wait that may not park (its host's share,
 * --max-waits-per-peer, is taken, or no memory to count it), holding
 * nothing, and frees w. */
static void refuse_over_share(coord_service_t *svc, wait_entry_t *w, ferry_status_t status)
{
    static ferry_log_limit_t limit;
    unsigned quiet;

    if (status != FERRY_ERR_RESOURCE_EXHAUSTED) {
        rpc_call_fail(w->call, status, "no memory to wait for '%s'", w->request_id);
        free(w);
        return;
    }
    atomic_fetch_add(&svc->wait_peer_refusals, 1); /* for metrics */
    if (ferry_log_due(&limit, &quiet)) {           /* a host past its share may ask at any rate */
        ferry_info("op %s: %s from %s refused: its host has %zu calls waiting "
                   "(--max-waits-per-peer); %u more refused since the last line",
                   w->request_id, w->kind == WAIT_LOOKUP ? "lookup" : "claim",
                   rpc_call_peer(w->call), svc->max_waits_per_peer, quiet);
    }
    rpc_call_fail(w->call, status,
                  "too many calls from %s waiting for operations to appear on this replica (%zu; "
                  "--max-waits-per-peer); retry later or on another replica",
                  w->peer_host, svc->max_waits_per_peer);
    free(w);
}

void service_wait_add(coord_service_t *svc, rpc_call_t *call, wait_kind_t kind,
                      const ProtobufCMessage *request, const char *request_id, int64_t deadline_ms,
                      uint64_t seen_seq)
{
    wait_entry_t *w = calloc(1, sizeof(*w));
    ferry_status_t status;
    size_t n_waits;

    if (w == NULL) {
        rpc_call_fail(call, FERRY_ERR_NO_MEMORY, "no memory to wait for '%s'", request_id);
        return;
    }
    w->call = call;
    w->kind = kind;
    w->request = request;
    w->request_id = request_id;
    w->peer_host = rpc_call_peer_host(call);
    w->deadline_ms = deadline_ms;

    pthread_mutex_lock(&svc->waits_lock);
    if (svc->stopping) {
        pthread_mutex_unlock(&svc->waits_lock);
        rpc_call_fail(call, FERRY_ERR_UNAVAILABLE, "coordinator is shutting down");
        free(w);
        return;
    }
    n_waits = svc->n_waits;
    if (n_waits < svc->max_waits && !wait_room(svc)) {
        pthread_mutex_unlock(&svc->waits_lock);
        rpc_call_fail(call, FERRY_ERR_NO_MEMORY, "no memory to wait for '%s'", request_id);
        free(w);
        return;
    }
    if (n_waits >= svc->max_waits) {
        static ferry_log_limit_t limit;
        unsigned quiet;
        pthread_mutex_unlock(&svc->waits_lock);
        atomic_fetch_add(&svc->max_waits_refusals, 1); /* for metrics */
        if (ferry_log_due(&limit, &quiet)) {           /* a client retry loop would flood it */
            ferry_info("op %s: %s from %s refused: %zu calls already wait (raise --max-waits); "
                       "%u more refused since the last line",
                       request_id, kind == WAIT_LOOKUP ? "lookup" : "claim", rpc_call_peer(call),
                       n_waits, quiet);
        }
        rpc_call_fail(call, FERRY_ERR_RESOURCE_EXHAUSTED,
                      "too many calls waiting for operations to appear (%zu; --max-waits); "
                      "retry later or on another replica",
                      n_waits);
        free(w);
        return;
    }
    status = coord_peers_take(svc->wait_peers, w->peer_host, svc->max_waits_per_peer);
    if (status != FERRY_OK) {
        pthread_mutex_unlock(&svc->waits_lock);
        refuse_over_share(svc, w, status);
        return;
    }
    rpc_call_ref(call);
    /* A wake for this request ID since the caller's look (seen_seq) may have
     * been the one it waits for: look once more rather than miss it. */
    w->ready = woken_since(svc, request_id, seen_seq);
    wait_link(svc, w);
    if (w->ready || w->heap_at == 0) {
        /* Ready, or due before anything the wait thread sleeps for: a wait
         * of 50 ms used to end when the thread next woke on its own, up to
         * WAIT_IDLE_MS later (732 ms in a soak). */
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
    for (wait_entry_t *w = svc->stopping ? NULL : *bucket_of(svc, request_id); w != NULL;
         w = w->hnext) {
        if (!w->ready && strcmp(w->request_id, request_id) == 0) {
            w->ready = true;
            heap_fix(svc, w->heap_at);
            any = true;
        }
    }
    if (any) {
        pthread_cond_signal(&svc->waits_cond);
    }
    pthread_mutex_unlock(&svc->waits_lock);
}

void service_waits_recheck(coord_service_t *svc)
{
    size_t n = 0;

    pthread_mutex_lock(&svc->waits_lock);
    svc->synced_seq = ++svc->wake_seq;
    svc->wake_hash[svc->wake_seq % SERVICE_WAKE_HISTORY] = 0; /* no request ID's */
    /* Marking a wait ready only moves it up the heap, past waits already
     * walked: in index order the walk sees each wait once. No wait parks
     * before the server starts, so none before coord_service_attach. */
    for (size_t i = 0; i < svc->n_waits && !svc->stopping; i++) {
        wait_entry_t *w = svc->waits_heap[i];
        if (!w->ready && coord_registry_view_holds(svc->registry, w->request_id)) {
            w->ready = true;
            heap_fix(svc, i);
            n++;
        }
    }
    if (n > 0) {
        pthread_cond_signal(&svc->waits_cond);
    }
    pthread_mutex_unlock(&svc->waits_lock);
    ferry_info("service: view live: %zu parked waits whose record it holds look again", n);
}

uint64_t service_waits_seq(coord_service_t *svc)
{
    uint64_t seq;
    pthread_mutex_lock(&svc->waits_lock);
    seq = svc->wake_seq;
    pthread_mutex_unlock(&svc->waits_lock);
    return seq;
}

uint64_t coord_service_wait_peer_refusals(coord_service_t *svc)
{
    return atomic_load(&svc->wait_peer_refusals);
}

size_t coord_service_wait_peers(coord_service_t *svc)
{
    size_t n;
    pthread_mutex_lock(&svc->waits_lock);
    n = coord_peers_count(svc->wait_peers);
    pthread_mutex_unlock(&svc->waits_lock);
    return n;
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
    /* Once more at the end if the view holds the record: a Register this
     * replica acknowledged is in the view at once, but wakes the waits only
     * when the watch delivers it, which may be later under load. The view
     * only, never etcd: thousands of waits may end at once. */
    if (service_now_ms() >= w->deadline_ms &&
        !coord_registry_view_holds(svc->registry, w->request_id)) {
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

/* Takes the ready and expired waits off the heap, into a list; returns
 * when the next of those left is due (at most svc->wait_idle_ms from now). */
static wait_entry_t *take_due(coord_service_t *svc, int64_t now, int64_t *next_deadline_p)
{
    wait_entry_t *due = NULL;
    int64_t next = now + svc->wait_idle_ms;

    while (svc->n_waits > 0) {
        wait_entry_t *w = svc->waits_heap[0];
        if (!w->ready && w->deadline_ms > now) {
            if (w->deadline_ms < next) {
                next = w->deadline_ms;
            }
            break;
        }
        wait_unlink(svc, w);
        w->next = due;
        due = w;
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
    int rc;

    if (svc->wait_idle_ms <= 0) {
        svc->wait_idle_ms = WAIT_IDLE_MS;
    }
    svc->n_id_buckets = WAIT_MIN_SLOTS;
    svc->waits_by_id = calloc(svc->n_id_buckets, sizeof(*svc->waits_by_id));
    if (svc->waits_by_id == NULL) {
        ferry_error("service: no memory for the waits");
        return FERRY_ERR_NO_MEMORY;
    }
    rc = ferry__cond_init_clock(&svc->waits_cond, CLOCK_MONOTONIC);
    if (rc != 0) {
        ferry_error("service: cannot create the waits' condition variable: %s", strerror(rc));
        goto err_buckets;
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
err_buckets:
    free(svc->waits_by_id);
    svc->waits_by_id = NULL;
    return FERRY_ERR_IO;
}

/* Fails every parked wait with UNAVAILABLE and joins the wait thread. */
void service_waits_stop(coord_service_t *svc)
{
    wait_entry_t **all;
    size_t n;

    pthread_mutex_lock(&svc->waits_lock);
    if (svc->stopping) {
        pthread_mutex_unlock(&svc->waits_lock);
        return;
    }
    svc->stopping = true; /* no wait parks, and no wake looks, from now on */
    all = svc->waits_heap;
    n = svc->n_waits;
    for (size_t i = 0; i < n; i++) {
        coord_peers_give(svc->wait_peers, all[i]->peer_host);
        rpc_call_set_parked(all[i]->call, NULL); /* a late cancel finds none */
    }
    svc->waits_heap = NULL;
    svc->heap_cap = svc->n_waits = 0;
    free(svc->waits_by_id);
    svc->waits_by_id = NULL;
    pthread_cond_signal(&svc->waits_cond);
    pthread_mutex_unlock(&svc->waits_lock);
    pthread_join(svc->wait_thread, NULL);

    /* The lock and condition live until coord_service_destroy: a cancel
     * callback may still look for its call (and finds none parked). */
    for (size_t i = 0; i < n; i++) {
        rpc_call_fail(all[i]->call, FERRY_ERR_UNAVAILABLE,
                      "coordinator is shutting down; retry on another replica");
        rpc_call_unref(all[i]->call);
        free(all[i]);
    }
    free(all);
}
