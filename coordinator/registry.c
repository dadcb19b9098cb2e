/*
 * registry.c: the registry's view of etcd: loading it, the one watch that
 * keeps it current, the events it reports, and the maintenance thread that
 * tracks etcd's health and reloads the view when the watch cannot resume.
 * See registry.h for the layout and the threads.
 */
#include "registry_int.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/op_state.h"

#define MAINT_INTERVAL_MS 500
/* While etcd refuses the start's write probe, it is sent again this often
 * (each is a raft round). */
#define WRITE_PROBE_MS 5000
/* A failed load is tried again after RELOAD_RETRY_MIN_MS, doubling up to
 * RELOAD_RETRY_MAX_MS: never back to back, whatever made it fail. */
#define RELOAD_RETRY_MIN_MS 100
#define RELOAD_RETRY_MAX_MS 5000

ferry_status_t registry_fail(ferry_status_t status, char *msg, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, cap, fmt, ap);
    va_end(ap);
    return status;
}

bool registry_etcd_refused(ferry_status_t status)
{
    return status == FERRY_ERR_PERMISSION_DENIED || status == FERRY_ERR_UNAUTHENTICATED;
}

/* What a failed etcd_ping says of etcd. */
static registry_unhealthy_t cause_of(ferry_status_t ping)
{
    switch (ping) {
    case FERRY_ERR_PERMISSION_DENIED:
        return REGISTRY_ETCD_CANNOT_READ;
    case FERRY_ERR_UNAUTHENTICATED:
        return REGISTRY_ETCD_REFUSES_USER;
    default:
        return REGISTRY_ETCD_CANNOT_COMMIT;
    }
}

static const char *cause_text(registry_unhealthy_t cause)
{
    switch (cause) {
    case REGISTRY_ETCD_CANNOT_READ:
        return "etcd does not let this coordinator's user read its prefix";
    case REGISTRY_ETCD_CANNOT_WRITE:
        return "etcd does not let this coordinator's user write its prefix";
    case REGISTRY_ETCD_REFUSES_USER:
        return "etcd refuses this coordinator's credentials";
    case REGISTRY_ETCD_CANNOT_COMMIT:
    default:
        return "etcd cannot commit (unreachable, its TLS refused, or without a leader or a "
               "quorum)";
    }
}

/* The view can be loaded: etcd answers this coordinator's reads (it may
 * refuse its writes: the view then follows what other replicas write). */
static bool reads_work(coord_registry_t *r)
{
    return atomic_load(&r->healthy) ||
           atomic_load(&r->unhealthy_cause) == (int)REGISTRY_ETCD_CANNOT_WRITE;
}

/* coord_registry_destroy has begun: the maintenance thread's steps (a
 * page of the view's load, the write probe, the retries) look between
 * them, so that the exit waits out one etcd request, not a whole reload. */
static bool registry_stopping(coord_registry_t *r)
{
    bool stopping;

    pthread_mutex_lock(&r->lock);
    stopping = r->stopping;
    pthread_mutex_unlock(&r->lock);
    return stopping;
}

bool registry_etcd_stuck(coord_registry_t *r)
{
    /* The other causes refuse this coordinator alone (its credentials, its
     * prefix), where others may write on. */
    return !atomic_load(&r->healthy) &&
           atomic_load(&r->unhealthy_cause) == (int)REGISTRY_ETCD_CANNOT_COMMIT;
}

/* UNAVAILABLE for a call etcd failed while the last check found it
 * unable to take this coordinator's writes: why, and since when. */
static ferry_status_t fail_unhealthy(coord_registry_t *r, char *msg, size_t cap, const char *what)
{
    time_t since = (time_t)(atomic_load(&r->unhealthy_since_ms) / 1000);
    struct tm tm;
    char at[32] = "?";

    if (gmtime_r(&since, &tm) != NULL) {
        strftime(at, sizeof(at), "%Y-%m-%d %H:%M:%S", &tm);
    }
    return registry_fail(FERRY_ERR_UNAVAILABLE, msg, cap,
                         "etcd %s failed: %s, since %s UTC (see the coordinator's log); retry",
                         what, cause_text(atomic_load(&r->unhealthy_cause)), at);
}

/* The message for a failed etcd call: says that etcd was the cause and what
 * failed, never how etcd is reached. Any client reads the message, so the
 * detail (etcd_client_last_error: endpoint URLs, etcd's own text) goes to
 * the server's log only. The etcd client already logs an unreachable etcd at
 * warn; everything else is first seen here. An UNAVAILABLE while the
 * maintenance thread's last check found etcd unable to take writes also
 * says why (its check knows: no quorum, the coordinator's user refused),
 * and since when: "service unavailable" alone, 5 s into a quorum loss, told
 * the caller nothing (audit-s28-etcd F4). The write is still sent: the
 * check can be seconds stale, or stricter than the write (a slow read), and
 * refusing unsent on it would fail writes, lease keep-alives among them,
 * that etcd would take (review-s29 H1). */
ferry_status_t registry_etcd_fail(coord_registry_t *r, ferry_status_t status, char *msg, size_t cap,
                                  const char *what)
{
    return registry_etcd_fail_as(r, status, etcd_no_space(), msg, cap, what);
}

ferry_status_t registry_etcd_fail_as(coord_registry_t *r, ferry_status_t status, bool no_space,
                                     char *msg, size_t cap, const char *what)
{
    if (registry_etcd_refused(status)) {
        /* etcd refused the coordinator's own user, role or certificate: not
         * the client's token, so not the client's status (it would give up
         * on a record it may use). UNAVAILABLE, as for any etcd the
         * coordinator cannot use; the operator fixes it from the log (and
         * ferry_etcd_requests_total's refusals; health says so only until
         * a write has passed since start: probe_health). */
        static ferry_log_limit_t limit; /* every call fails so */
        unsigned quiet;

        if (ferry_log_due(&limit, &quiet)) {
            ferry_error("registry: etcd %s refused the coordinator's credentials: %s (%s; %u "
                        "more such refusals since the last such line, logged at debug)",
                        what, ferry_status_string(status), etcd_client_last_error(), quiet);
        } else {
            ferry_debug("registry: etcd %s refused the coordinator's credentials: %s (%s)", what,
                        ferry_status_string(status), etcd_client_last_error());
        }
        if (!atomic_load(&r->healthy) &&
            atomic_load(&r->unhealthy_cause) != (int)REGISTRY_ETCD_CANNOT_COMMIT) {
            return fail_unhealthy(r, msg, cap, what); /* the check knows which refusal */
        }
        return registry_fail(FERRY_ERR_UNAVAILABLE, msg, cap,
                             "etcd %s failed: etcd refused this coordinator's credentials (see "
                             "its log); retry",
                             what);
    }
    if (status == FERRY_ERR_RESOURCE_EXHAUSTED && no_space) {
        /* Not this call's doing, nor the coordinator's own back-pressure
         * (which shares the code): said so, for the caller to tell an
         * operator rather than retry for ever. */
        ferry_warn("registry: etcd %s failed: etcd is out of space (NOSPACE alarm): %s", what,
                   etcd_client_last_error());
        return registry_fail(status, msg, cap,
                             "etcd %s failed: etcd is out of space (its NOSPACE alarm is raised: "
                             "an operator must free space and disarm it); retry later",
                             what);
    }
    if (status == FERRY_ERR_UNAVAILABLE && !atomic_load(&r->healthy)) {
        return fail_unhealthy(r, msg, cap, what);
    }
    if (status != FERRY_ERR_UNAVAILABLE) {
        ferry_warn("registry: etcd %s failed: %s (%s)", what, ferry_status_string(status),
                   etcd_client_last_error());
    }
    return registry_fail(status, msg, cap, "etcd %s failed: %s%s", what,
                         ferry_status_string(status),
                         status == FERRY_ERR_UNAVAILABLE ? "; retry" : "");
}

int64_t registry_now_ms(void)
{
    return ferry__clock_ms(CLOCK_REALTIME);
}

ferry_status_t registry_key(const char *sub_prefix, const char *id, registry_key_t *key, char *msg,
                            size_t cap)
{
    size_t plen = strlen(sub_prefix), ilen = strlen(id);

    if (plen + ilen > REGISTRY_KEY_MAX) {
        return registry_fail(FERRY_ERR_INVALID_ARGUMENT, msg, cap,
                             "request_id of %zu bytes does not fit a key under '%s' (at most "
                             "%zu bytes in all)",
                             ilen, sub_prefix, (size_t)REGISTRY_KEY_MAX);
    }
    memcpy(key->bytes, sub_prefix, plen);
    memcpy(key->bytes + plen, id, ilen + 1);
    key->len = plen + ilen;
    return FERRY_OK;
}

/* Test seam: params.test_write_through_gate. */
static void test_gate_wait(const coord_registry_t *r)
{
    const char *gate = r->params.test_write_through_gate;
    int64_t until = ferry__clock_ms(CLOCK_MONOTONIC) + 30000;

    while (gate != NULL && access(gate, F_OK) != 0 && ferry__clock_ms(CLOCK_MONOTONIC) < until) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

/* A write-through at or below the revision the watch has applied is
 * dropped: the view already holds that change or a later one (the watch may
 * have applied a later DELETE of the key, which must not be undone). */
void registry_view_put(coord_registry_t *r, const char *id, const uint8_t *bytes, size_t len,
                       int64_t mod_revision, ferry_op_state_t state, const char *host, bool created)
{
    test_gate_wait(r);
    pthread_mutex_lock(&r->lock);
    if (r->synced && mod_revision > r->revision) {
        view_upsert(&r->view, id, bytes, len, mod_revision, state, host);
    } else if (created && mod_revision > r->revision && host != NULL && host[0] != '\0' &&
               coord_peers_add(r->unseen, host, len + strlen(id) + VIEW_RECORD_OVERHEAD, 0) ==
                   FERRY_OK) {
        /* Counted for its host's share until the view has it (and, a
         * moment, twice then). */
        if (mod_revision > r->unseen_revision) {
            r->unseen_revision = mod_revision;
        }
    }
    pthread_mutex_unlock(&r->lock);
}

/* The view holds every revision up to unseen_revision whole: the records
 * written while it was not live are in it (or gone since). At the first
 * event of a revision it is not whole yet (a shared Register transaction
 * makes many records at one revision). Caller holds the lock. */
static void unseen_settle_locked(coord_registry_t *r)
{
    if (r->unseen_revision != 0 && registry_whole_revision_locked(r) >= r->unseen_revision) {
        coord_peers_clear(r->unseen);
        r->unseen_revision = 0;
    }
}

/* Leaves a tombstone until the watch applies the delete, so that the watch's
 * older PUTs of the key, still on their way, cannot bring it back. */
void registry_view_remove(coord_registry_t *r, const char *id, int64_t mod_revision)
{
    pthread_mutex_lock(&r->lock);
    if (mod_revision > r->revision) {
        view_bury(&r->view, id, mod_revision);
    }
    pthread_mutex_unlock(&r->lock);
}

/* The request ID of a key under sub_prefix, or NULL if the key is not
 * there. Copies into buf. */
static const char *id_of_key(const char *sub_prefix, const etcd_kv_t *kv, char *buf, size_t cap)
{
    size_t plen = strlen(sub_prefix);
    if (kv->key_len <= plen || kv->key_len - plen >= cap ||
        memcmp(kv->key, sub_prefix, plen) != 0) {
        return NULL;
    }
    memcpy(buf, kv->key + plen, kv->key_len - plen);
    buf[kv->key_len - plen] = '\0';
    return buf;
}

static void report(coord_registry_t *r, coord_event_type_t type, Ferry__V1__Operation *op,
                   int64_t revision)
{
    if (r->params.on_event != NULL) {
        coord_strip(op, false);
        r->params.on_event(r->params.arg, type, op, revision);
    }
}

int64_t registry_whole_revision_locked(const coord_registry_t *r)
{
    return r->partial ? r->whole : r->revision;
}

/* Marks `revision` applied. Caller holds the lock; the watch applies events
 * in revision order, so everything up to it is in the view, and a change of
 * a later revision than the last means that one is whole. */
static void applied_locked(coord_registry_t *r, int64_t revision)
{
    if (revision > r->revision) {
        r->whole = r->revision;
        r->revision = revision;
        unseen_settle_locked(r);
    }
}

static void apply_op_put(coord_registry_t *r, const char *id, const etcd_kv_t *kv)
{
    Ferry__V1__Operation *op = ferry__v1__operation__unpack(NULL, kv->value_len, kv->value);

    pthread_mutex_lock(&r->lock);
    if (op != NULL) {
        view_upsert(&r->view, id, kv->value, kv->value_len, kv->mod_revision, op->state,
                    op->owner_host);
    }
    applied_locked(r, kv->mod_revision);
    pthread_mutex_unlock(&r->lock);
    if (op == NULL) {
        ferry_warn("op %s: stored record is malformed; ignored", id);
        return;
    }
    report(r, COORD_EVENT_PUT, op, kv->mod_revision);
    ferry__v1__operation__free_unpacked(op, NULL);
}

/* The view's copy of id's record (malloc'd into *bytes_p), to report its
 * delete when etcd did not send the previous record. Caller holds the lock. */
static void held_copy_locked(coord_registry_t *r, const char *id, uint8_t **bytes_p, size_t *len_p)
{
    const view_entry_t *e = view_find(&r->view, id);

    *bytes_p = e != NULL && e->len > 0 ? malloc(e->len) : NULL;
    *len_p = *bytes_p != NULL ? e->len : 0;
    if (*bytes_p != NULL) {
        memcpy(*bytes_p, e->bytes, e->len);
    }
}

/* Reports a delete of which nothing is known but the request ID: a record
 * that ended, as a delete of a record not yet final reads (EXPIRED), so a
 * Watch client following the ID learns that it ended. */
static void report_bare_delete(coord_registry_t *r, const char *id, int64_t revision)
{
    Ferry__V1__Operation op = FERRY__V1__OPERATION__INIT;

    op.request_id = (char *)id;
    op.state = FERRY_OP_EXPIRED;
    op.updated_unix_ms = registry_now_ms();
    report(r, COORD_EVENT_DELETE, &op, revision);
}

/* A record left etcd. Its event carries the record as it was (prev_kv),
 * except when etcd had compacted that revision away (a lagging watch): the
 * view's copy stands in then, or, when the view has none, the bare ID.
 * Every delete is reported, so a Watch client never misses an ID's end. */
static void apply_op_delete(coord_registry_t *r, const char *id, const etcd_event_t *ev)
{
    Ferry__V1__Operation *op = NULL;
    int64_t revision = ev->kv.mod_revision; /* a DELETE's kv carries its revision */
    bool has_prev = ev->prev_kv.key_len > 0;
    uint8_t *held = NULL;
    size_t held_len = 0;

    pthread_mutex_lock(&r->lock);
    if (!has_prev) {
        held_copy_locked(r, id, &held, &held_len);
    }
    view_remove(&r->view, id, revision);
    applied_locked(r, revision);
    pthread_mutex_unlock(&r->lock);

    if (has_prev) {
        op = ferry__v1__operation__unpack(NULL, ev->prev_kv.value_len, ev->prev_kv.value);
    } else if (held != NULL) {
        op = ferry__v1__operation__unpack(NULL, held_len, held);
    }
    free(held);
    if (op == NULL && !has_prev) {
        ferry_info("op %s: deleted at revision %lld without its previous record (compacted) "
                   "nor a copy in the view; reported as EXPIRED",
                   id, (long long)revision);
        report_bare_delete(r, id, revision);
        return;
    }
    if (op == NULL) {
        ferry_warn("op %s: deleted without a readable previous record", id);
        return;
    }
    if (!has_prev) {
        ferry_debug("op %s: deleted at revision %lld without its previous record (compacted); "
                    "reported from the view's copy",
                    id, (long long)revision);
    }
    if (has_prev && op->state == FERRY_OP_CLAIMED) {
        /* CLAIMED moves only to final states: its last write was the
         * Claim's, which made the claim key too. */
        registry_delete_claim_key_later(r, id, ev->prev_kv.mod_revision);
    }
    if (!ferry__op_state_is_final(op->state)) {
        ferry_info("op %s: %s -> EXPIRED (owner lease %lld ended)", id,
                   ferry__op_state_name(op->state), (long long)op->lease_id);
        op->state = FERRY_OP_EXPIRED;
        op->updated_unix_ms = registry_now_ms();
    }
    report(r, COORD_EVENT_DELETE, op, revision);
    ferry__v1__operation__free_unpacked(op, NULL);
}

static void apply_claim_delete(coord_registry_t *r, const char *id, const etcd_event_t *ev)
{
    char lease_buf[32];
    size_t n;

    if (ev->prev_kv.key_len == 0) {
        return;
    }
    n = ev->prev_kv.value_len < sizeof(lease_buf) - 1 ? ev->prev_kv.value_len
                                                      : sizeof(lease_buf) - 1;
    memcpy(lease_buf, ev->prev_kv.value, n);
    lease_buf[n] = '\0';
    registry_expire_claim_later(r, id, strtoll(lease_buf, NULL, 10), ev->kv.mod_revision);
}

/* The view's revision advances with the events it applies, never with a
 * message's header revision: etcd may send a header revision ahead of the
 * events still to come (a catching-up watch gets them in batches). */
void registry_on_watch_events(void *arg, const etcd_event_t *events, size_t n_events,
                              int64_t revision, bool more)
{
    coord_registry_t *r = arg;
    char id[256];

    (void)revision;
    pthread_mutex_lock(&r->lock);
    if (!r->partial) {
        r->whole = r->revision;
        r->partial = true;
    }
    pthread_mutex_unlock(&r->lock);
    for (size_t i = 0; i < n_events; i++) {
        const etcd_event_t *ev = &events[i];
        if (id_of_key(r->ops_prefix, &ev->kv, id, sizeof(id)) != NULL) {
            if (ev->type == ETCD_EVENT_PUT) {
                apply_op_put(r, id, &ev->kv);
            } else {
                apply_op_delete(r, id, ev);
            }
            continue;
        }
        pthread_mutex_lock(&r->lock);
        applied_locked(r, ev->kv.mod_revision);
        pthread_mutex_unlock(&r->lock);
    }
    /* Claim keys that went, once the batch is in the view: a Complete or
     * Cancel on another replica deletes the claim key and writes the record
     * in one revision, whose events come together, so the view then shows
     * the record past CLAIMED and the expiry check needs no etcd read
     * (registry_expire_claim). */
    for (size_t i = 0; i < n_events; i++) {
        const etcd_event_t *ev = &events[i];
        if (ev->type == ETCD_EVENT_DELETE &&
            id_of_key(r->claims_prefix, &ev->kv, id, sizeof(id)) != NULL) {
            apply_claim_delete(r, id, ev);
        }
    }
    pthread_mutex_lock(&r->lock);
    r->partial = more;
    if (!more) {
        r->whole = r->revision;
        view_prune(&r->view, r->revision);
        unseen_settle_locked(r);
    }
    pthread_mutex_unlock(&r->lock);
    if (more) {
        /* etcd split the message: the rest of its last revision follows,
         * and a revision is published whole (service_watch.c). */
        return;
    }
    if (r->params.on_events_done != NULL) {
        r->params.on_events_done(r->params.arg);
    }
}

static void on_watch_state(void *arg, bool connected, ferry_status_t status)
{
    coord_registry_t *r = arg;

    pthread_mutex_lock(&r->lock);
    r->synced = connected;
    r->watch_state_seen = true;
    if (status == FERRY_ERR_OUT_OF_RANGE) {
        ferry_warn("registry: watch revision compacted; reloading the view");
        r->reload = true;
        pthread_cond_signal(&r->maint_cond);
    }
    pthread_mutex_unlock(&r->lock);
    /* A read finds the view again while etcd cannot commit (read_view). */
    ferry_info("registry: watch %s", connected ? "resumed"
                                               : "lost; reads go to etcd (to the view, as last "
                                                 "seen, while etcd cannot commit)");
}

/* A record CLAIMED by a claim whose key is gone. */
typedef struct orphan {
    char *id;
    int64_t claim_lease;
    struct orphan *next;
} orphan_t;

/* Fills the view from one read of the whole prefix and lists the CLAIMED
 * records whose <prefix>claims/<id> key is absent in that same read: their
 * claim's lease ended while no replica watched (the claims key and the
 * record's CLAIMED state are written in one transaction). Caller holds the
 * lock. */
static ferry_status_t fill_view_locked(coord_registry_t *r, const etcd_range_t *range,
                                       orphan_t **orphans_p)
{
    view_t claims;
    char id[256];
    ferry_status_t status = view_init(&claims);

    if (status != FERRY_OK) {
        return status;
    }
    view_clear(&r->view);
    for (size_t i = 0; i < range->n_kvs; i++) {
        if (id_of_key(r->claims_prefix, &range->kvs[i], id, sizeof(id)) != NULL) {
            view_upsert(&claims, id, (const uint8_t *)"", 0, 1, 0, NULL);
        }
    }
    for (size_t i = 0; i < range->n_kvs && status == FERRY_OK; i++) {
        const etcd_kv_t *kv = &range->kvs[i];
        if (id_of_key(r->ops_prefix, kv, id, sizeof(id)) == NULL) {
            continue;
        }
        Ferry__V1__Operation *op = ferry__v1__operation__unpack(NULL, kv->value_len, kv->value);
        status = view_upsert(&r->view, id, kv->value, kv->value_len, kv->mod_revision,
                             op != NULL ? op->state : 0, op != NULL ? op->owner_host : NULL);
        if (op != NULL && op->state == FERRY_OP_CLAIMED && view_find(&claims, id) == NULL) {
            orphan_t *o = calloc(1, sizeof(*o));
            if (o == NULL || (o->id = strdup(id)) == NULL) {
                free(o);
                status = FERRY_ERR_NO_MEMORY;
            } else {
                o->claim_lease = op->claim_lease_id;
                o->next = *orphans_p;
                *orphans_p = o;
            }
        }
        if (op != NULL) {
            ferry__v1__operation__free_unpacked(op, NULL);
        }
    }
    view_cleanup(&claims);
    return status;
}

static void orphans_free(orphan_t *orphans)
{
    while (orphans != NULL) {
        orphan_t *next = orphans->next;
        free(orphans->id);
        free(orphans);
        orphans = next;
    }
}

/* Turns the orphaned claims ERRORED, through the one transition (a
 * transaction on mod_revision: whichever replica comes first does it, the
 * others find it ERRORED and leave it), on params.exec as the watch's
 * expiries, so that many orphans after a long outage never hold the
 * maintenance thread (its health checks, its reloads) for their
 * transactions. `loaded`: the revision of the snapshot that found their
 * claim keys gone, so a record claimed again since (on the same lease,
 * even) is left alone. */
static void expire_orphans(coord_registry_t *r, const orphan_t *orphans, int64_t loaded)
{
    for (const orphan_t *o = orphans; o != NULL; o = o->next) {
        ferry_info("op %s: CLAIMED, but claim lease %lld ended while no replica watched", o->id,
                   (long long)o->claim_lease);
        registry_expire_claim_later(r, o->id, o->claim_lease, loaded);
    }
}

/* Appends every key under `prefix` to *all, read in pages of
 * r->params.load_page keys at all->revision (0: the first page's answer's
 * revision, then kept), so that several prefixes read this way form one
 * snapshot, as one read would, but no read is large: a store of any size
 * loads in reads that are quick for etcd and never outlast the client's
 * timeout (a single read of a large store did, and was retried whole,
 * again and again, while etcd still worked on the reads given up).
 * *pages_p counts the reads. A revision compacted meanwhile fails the
 * read, and the load is retried. */
static ferry_status_t read_pages(coord_registry_t *r, const char *prefix, etcd_range_t *all,
                                 size_t *pages_p)
{
    int64_t limit = r->params.load_page > 0 ? r->params.load_page : COORD_LOAD_PAGE;
    size_t from_len = strlen(prefix);
    uint8_t *from = (uint8_t *)strdup(prefix);
    uint8_t *end = NULL;
    size_t end_len = 0;
    ferry_status_t status =
        from != NULL ? etcd_prefix_end(prefix, from_len, &end, &end_len) : FERRY_ERR_NO_MEMORY;

    while (status == FERRY_OK) {
        etcd_range_t page = {0};
        size_t got;
        bool more;

        if (registry_stopping(r)) {
            status = FERRY_ERR_CANCELLED; /* the load is dropped: the registry ends */
            break;
        }
        status = etcd_get(r->etcd, from, from_len, end, end_len, limit, all->revision, &page);
        if (status == FERRY_ERR_RESOURCE_EXHAUSTED && etcd_reply_too_large() && limit > 1) {
            /* Records too large for a page of this many: fewer, from the
             * same key, for the rest of this load. */
            limit /= 2;
            ferry_warn("registry: a page of the view's load passed the largest reply etcd may "
                       "send; reading %lld keys at a time",
                       (long long)limit);
            status = FERRY_OK;
            continue;
        }
        if (status != FERRY_OK) {
            break;
        }
        (*pages_p)++;
        all->revision = all->revision != 0 ? all->revision : page.revision;
        more = page.more;
        got = page.n_kvs;
        if (got > 0) {
            etcd_kv_t *kvs = realloc(all->kvs, (all->n_kvs + page.n_kvs) * sizeof(*kvs));
            if (kvs == NULL) {
                etcd_range_free(&page);
                status = FERRY_ERR_NO_MEMORY;
                break;
            }
            /* The page's keys and values now belong to *all. */
            all->kvs = kvs;
            memcpy(all->kvs + all->n_kvs, page.kvs, page.n_kvs * sizeof(*kvs));
            all->n_kvs += page.n_kvs;
            page.n_kvs = 0;
        }
        etcd_range_free(&page);
        if (!more) {
            break;
        }
        if (got == 0) {
            status = FERRY_ERR_PROTOCOL; /* "more" and nothing in this page: no way on */
            break;
        }
        /* The next page starts just after this page's last key. */
        const etcd_kv_t *last = &all->kvs[all->n_kvs - 1];
        uint8_t *next = malloc(last->key_len + 1);
        if (next == NULL) {
            status = FERRY_ERR_NO_MEMORY;
        } else {
            memcpy(next, last->key, last->key_len);
            next[last->key_len] = 0;
            free(from);
            from = next;
            from_len = last->key_len + 1;
        }
    }
    free(from);
    free(end);
    return status;
}

/* Reads ops/ and claims/ (one revision, in pages) and starts the watch of
 * the whole prefix after that revision. */
static ferry_status_t load_view(coord_registry_t *r)
{
    etcd_range_t range = {0};
    uint8_t *end = NULL;
    size_t end_len = 0;
    orphan_t *orphans = NULL;
    size_t n_ops, pages = 0;
    int64_t loaded;
    ferry_status_t status;

    status = etcd_prefix_end(r->prefix, strlen(r->prefix), &end, &end_len);
    if (status != FERRY_OK) {
        return status;
    }
    if (r->test_load_fails > 0) { /* test seam: params.test_load_fails */
        r->test_load_fails--;
        free(end);
        ferry_warn("registry: load failed on purpose (FERRY_TEST_LOAD_FAILS)");
        return FERRY_ERR_UNAVAILABLE;
    }
    /* claims/ and ops/ only, not all of the prefix: other keys there (the
     * lease key, a tool's) cost nothing to load. */
    int64_t started_ms = ferry__clock_ms(CLOCK_MONOTONIC);
    status = read_pages(r, r->claims_prefix, &range, &pages);
    if (status == FERRY_OK) {
        status = read_pages(r, r->ops_prefix, &range, &pages);
    }
    if (status != FERRY_OK) {
        etcd_range_free(&range);
        free(end);
        return status;
    }
    range.count = (int64_t)range.n_kvs;
    loaded = range.revision;
    pthread_mutex_lock(&r->lock);
    status = fill_view_locked(r, &range, &orphans);
    r->revision = range.revision;
    r->whole = range.revision;
    r->partial = false;
    if (status == FERRY_OK) {
        unseen_settle_locked(r); /* a half-filled view does not hold them */
    }
    n_ops = r->view.n_entries;
    pthread_mutex_unlock(&r->lock);
    if (status != FERRY_OK) {
        goto err_range;
    }
    ferry_info("registry: loaded %zu operations at revision %lld (%zu reads, %lld ms)", n_ops,
               (long long)range.revision, pages,
               (long long)(ferry__clock_ms(CLOCK_MONOTONIC) - started_ms));
    /* Before the watch starts: nothing after this revision is reported
     * yet, and what came before it may never have been. */
    if (r->params.on_reload != NULL) {
        r->params.on_reload(r->params.arg, range.revision);
    }

    etcd_watch_params_t wp = {
        .key = r->prefix,
        .key_len = strlen(r->prefix),
        .range_end = end,
        .range_end_len = end_len,
        .start_revision = range.revision + 1,
        .prev_kv = true,
        .on_events = registry_on_watch_events,
        .on_state = on_watch_state,
        .arg = r,
    };
    /* Cleared before the watch starts: a compaction it reports from its
     * first moment (etcd's "created" then "canceled") asks again. */
    pthread_mutex_lock(&r->lock);
    r->reload = false;
    r->watch_state_seen = false;
    pthread_mutex_unlock(&r->lock);
    status = etcd_watch_create(r->etcd, &wp, &r->watch);
    if (status != FERRY_OK) {
        pthread_mutex_lock(&r->lock);
        r->reload = true;
        pthread_mutex_unlock(&r->lock);
        goto err_range;
    }
    free(end);
    etcd_range_free(&range);
    pthread_mutex_lock(&r->lock);
    if (!r->watch_state_seen) {
        r->synced = true; /* else the watch already said it is lost (or back) */
    }
    pthread_mutex_unlock(&r->lock);
    /* Only now: a look before it would have gone to etcd, not the view. */
    if (r->params.on_synced != NULL) {
        r->params.on_synced(r->params.arg);
    }
    expire_orphans(r, orphans, loaded);
    orphans_free(orphans);
    return FERRY_OK;

err_range:
    orphans_free(orphans);
    free(end);
    etcd_range_free(&range);
    return status;
}

/* Records a failed check's cause, before calls can see the flag that the
 * check sets. True when the cause is news: etcd was healthy, or failed for
 * another cause (a quorum loss, then a password changed), whose time the
 * messages then give. */
static bool note_unhealthy(coord_registry_t *r, registry_unhealthy_t cause)
{
    bool news = atomic_load(&r->healthy) || atomic_load(&r->unhealthy_cause) != (int)cause;

    atomic_store(&r->unhealthy_cause, (int)cause);
    if (news) {
        atomic_store(&r->unhealthy_since_ms, registry_now_ms());
    }
    return news;
}

/* Whether etcd lets this coordinator's user write its records, without
 * writing: a transaction whose compare never holds (no key's
 * create_revision is below 0) and whose success branch puts the key the
 * records' keys start with (ops_prefix: a Register's first write goes
 * under it, so a role that lets Ferry write passes, whether it grants the
 * whole prefix or its sub-prefixes; the prefix's own key was stricter
 * than any write Ferry makes: review-s30 L5). etcd checks the permission
 * of both branches before it applies either, so a user that may not write
 * is refused PERMISSION_DENIED, and one that may changes nothing (not even
 * the revision). A raft round, so sent only until one passes, every
 * WRITE_PROBE_MS. */
static ferry_status_t probe_write(coord_registry_t *r)
{
    size_t len = strlen(r->ops_prefix);
    etcd_compare_t never = {
        .target = ETCD_CMP_CREATE, .result = ETCD_CMP_LESS, .key = r->ops_prefix, .key_len = len};
    etcd_op_t put = {.type = ETCD_OP_PUT, .key = r->ops_prefix, .key_len = len, .value = ""};
    etcd_txn_result_t result = {0};
    ferry_status_t status = etcd_txn(r->etcd, &never, 1, &put, 1, NULL, 0, &result);

    if (status == FERRY_OK && result.succeeded) {
        ferry_error("registry: etcd applied the write probe's put of '%s' (its compare should "
                    "never hold)",
                    r->ops_prefix);
    }
    etcd_txn_result_free(&result);
    return status;
}

/* Healthy means etcd can take the coordinator's writes: etcd_ping fails
 * when no endpoint answers in time, when the members that answer know no
 * leader, when a linearizable read does not go through (quorum lost), and
 * when etcd refuses the coordinator's user or does not let it read its
 * prefix (the read's key). Until a write probe has passed since start,
 * one that etcd refuses PERMISSION_DENIED fails it too: a replica started
 * with a read-only role, or a rollout's new pods given one, stay out of
 * the Service. Not after: a write grant taken back from a role every
 * replica shares would take them all out, and with them the keep-alives
 * that etcd still takes (review-s30 M2); the refusals are logged at error
 * and counted in ferry_etcd_requests_total. A probe that fails otherwise
 * (slow, a member lost) proves nothing either way: the ping stands, and a
 * later check probes again (stricter than a write, it could make a
 * replica NOT_SERVING that etcd would serve: review-s29 H1). */
static ferry_status_t probe_health(coord_registry_t *r, registry_unhealthy_t *cause_p)
{
    ferry_status_t status = etcd_ping(r->etcd, NULL);
    int64_t now = ferry__clock_ms(CLOCK_MONOTONIC);

    *cause_p = cause_of(status);
    if (status == FERRY_OK && r->write_unproven && now >= r->write_probe_at_ms &&
        !registry_stopping(r)) {
        ferry_status_t wrote = probe_write(r);
        r->write_unproven = wrote != FERRY_OK;
        r->write_refused = wrote == FERRY_ERR_PERMISSION_DENIED;
        r->write_probe_at_ms = now + WRITE_PROBE_MS;
    }
    if (status == FERRY_OK && r->write_unproven && r->write_refused) {
        *cause_p = REGISTRY_ETCD_CANNOT_WRITE;
        status = FERRY_ERR_PERMISSION_DENIED;
    }
    return status;
}

static void check_health(coord_registry_t *r)
{
    registry_unhealthy_t cause;
    ferry_status_t status = probe_health(r, &cause);
    bool ok = status == FERRY_OK;
    bool news = !ok && note_unhealthy(r, cause);
    bool was_ok = atomic_exchange(&r->healthy, ok);

    if (ok && !was_ok) {
        /* At warn, as the outage was: a log kept at warn shows its end. */
        ferry_warn("registry: etcd takes this coordinator's writes again");
    } else if (news) {
        ferry_warn("registry: %s (prefix %s): %s", cause_text(cause), r->prefix,
                   etcd_client_last_error());
        etcd_client_check_cert(r->etcd); /* etcd says only "bad certificate" */
    }
    if (ok != was_ok && r->params.on_health != NULL) {
        r->params.on_health(r->params.arg, ok);
    }
}

/* Waits ms, or less when the registry stops or (unless `even_if_reload`)
 * when a reload is asked for. */
static void maint_wait(coord_registry_t *r, int ms, bool even_if_reload)
{
    struct timespec until = ferry__clock_in_ms(CLOCK_REALTIME, ms);

    pthread_mutex_lock(&r->lock);
    while (!r->stopping && (even_if_reload || !r->reload)) {
        if (pthread_cond_timedwait(&r->maint_cond, &r->lock, &until) != 0) {
            break; /* timed out */
        }
    }
    pthread_mutex_unlock(&r->lock);
}

static void *maint_main(void *arg)
{
    coord_registry_t *r = arg;
    int retry_ms = 0; /* after the last failed load; 0: it did not fail */

    for (;;) {
        bool stopping, reload;
        pthread_mutex_lock(&r->lock);
        stopping = r->stopping;
        reload = r->reload;
        pthread_mutex_unlock(&r->lock);
        if (stopping) {
            break;
        }
        check_health(r);
        if (registry_stopping(r)) {
            break;
        }
        if (atomic_load(&r->healthy)) {
            registry_unwrites_retry(r); /* failed Registers' records */
            registry_claim_ends_retry(r);
        }
        if (reload && reads_work(r)) {
            etcd_watch_destroy(r->watch);
            r->watch = NULL;
            if (load_view(r) != FERRY_OK) {
                if (registry_stopping(r)) {
                    break; /* cut short by destroy, not failed */
                }
                retry_ms = retry_ms == 0 ? RELOAD_RETRY_MIN_MS : retry_ms * 2;
                retry_ms = retry_ms < RELOAD_RETRY_MAX_MS ? retry_ms : RELOAD_RETRY_MAX_MS;
                ferry_warn("registry: reload failed: %s; trying again in %d ms",
                           etcd_client_last_error(), retry_ms);
                maint_wait(r, retry_ms, true);
                continue;
            }
            retry_ms = 0;
        }
        /* A reload that cannot run (etcd unhealthy) must not cut the wait
         * short: maint_wait would return at once while it is pending, and
         * the loop would ping etcd back to back, a full core and a flood
         * of requests on an etcd that is just coming up. */
        maint_wait(r, MAINT_INTERVAL_MS, reload && !reads_work(r));
    }
    return NULL;
}

static char *concat(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    char *s = malloc(la + lb + 1);
    if (s != NULL) {
        memcpy(s, a, la);
        memcpy(s + la, b, lb + 1);
    }
    return s;
}

ferry_status_t coord_registry_create(const coord_registry_params_t *params,
                                     coord_registry_t **registry_p)
{
    size_t plen = strlen(params->prefix);
    coord_registry_t *r;
    ferry_status_t status = FERRY_ERR_NO_MEMORY;
    int rc;

    /* Bounded so that every key fits registry_key_t (config.c says so to
     * the user first). */
    if (plen == 0 || plen > COORD_PREFIX_MAX || params->prefix[plen - 1] != '/') {
        ferry_error("registry: prefix of %zu bytes must end with '/' and be at most %d bytes", plen,
                    COORD_PREFIX_MAX);
        return FERRY_ERR_INVALID_ARGUMENT;
    }
    r = calloc(1, sizeof(*r));
    if (r == NULL) {
        return FERRY_ERR_NO_MEMORY;
    }
    r->params = *params;
    r->etcd = params->etcd;
    r->default_ttl_s = params->default_ttl_s;
    r->prefix = strdup(params->prefix);
    r->ops_prefix = concat(params->prefix, "ops/");
    r->claims_prefix = concat(params->prefix, "claims/");
    if (r->prefix == NULL || r->ops_prefix == NULL || r->claims_prefix == NULL) {
        goto err_free;
    }
    status = view_init(&r->view);
    if (status != FERRY_OK) {
        goto err_free;
    }
    status = coord_peers_create(&r->registering);
    if (status == FERRY_OK) {
        status = coord_peers_create(&r->unseen);
    }
    if (status != FERRY_OK) {
        goto err_view;
    }
    if (pthread_mutex_init(&r->lock, NULL) != 0) {
        ferry_error("registry: pthread_mutex_init failed");
        status = FERRY_ERR_NO_MEMORY;
        goto err_view;
    }
    if (pthread_cond_init(&r->maint_cond, NULL) != 0) {
        ferry_error("registry: pthread_cond_init failed");
        status = FERRY_ERR_NO_MEMORY;
        goto err_lock;
    }
    if (pthread_mutex_init(&r->lease_key_lock, NULL) != 0) {
        ferry_error("registry: pthread_mutex_init failed");
        status = FERRY_ERR_NO_MEMORY;
        goto err_cond;
    }
    if (ferry__cond_init_clock(&r->lease_key_cond, CLOCK_MONOTONIC) != 0) {
        ferry_error("registry: pthread_cond_init failed");
        pthread_mutex_destroy(&r->lease_key_lock);
        status = FERRY_ERR_NO_MEMORY;
        goto err_cond;
    }
    if (pthread_mutex_init(&r->batch_lock, NULL) != 0) {
        ferry_error("registry: pthread_mutex_init failed");
        status = FERRY_ERR_NO_MEMORY;
        goto err_lease_cond;
    }
    if (ferry__cond_init_clock(&r->batch_cond, CLOCK_MONOTONIC) != 0) {
        ferry_error("registry: pthread_cond_init failed");
        pthread_mutex_destroy(&r->batch_lock);
        status = FERRY_ERR_NO_MEMORY;
        goto err_lease_cond;
    }
    r->batch_tail = &r->batch_head;
    r->batch_stall_ms = REGISTRY_BATCH_STALL_MS;
    r->token_md = EVP_MD_fetch(NULL, "SHA256", NULL);
    r->test_load_fails = params->test_load_fails;

    registry_unhealthy_t cause;
    r->write_unproven = true;
    status = probe_health(r, &cause);
    atomic_store(&r->unhealthy_cause, (int)cause);
    atomic_store(&r->unhealthy_since_ms, registry_now_ms());
    atomic_store(&r->healthy, status == FERRY_OK);
    if (status != FERRY_OK) {
        ferry_warn("registry: etcd not ready: %s (prefix %s): %s; serving from etcd reads until it "
                   "is",
                   cause_text(cause), r->prefix, etcd_client_last_error());
    }
    if (!reads_work(r) || load_view(r) != FERRY_OK) {
        if (reads_work(r)) {
            ferry_warn("registry: etcd not ready (%s); serving from etcd reads until it is",
                       etcd_client_last_error());
        }
        etcd_client_check_cert(r->etcd);
        r->reload = true;
    }
    /* Best effort: while it is missing, a call that needs the lease key
     * loads it (registry_lease.c). */
    if (atomic_load(&r->healthy) && registry_lease_key_load(r) != FERRY_OK) {
        ferry_warn("registry: lease key not loaded yet (%s)", etcd_client_last_error());
    }
    rc = pthread_create(&r->maint_thread, NULL, maint_main, r);
    if (rc != 0) {
        ferry_error("registry: cannot start the maintenance thread: %s", strerror(rc));
        status = FERRY_ERR_IO;
        goto err_watch;
    }
    *registry_p = r;
    return FERRY_OK;

err_watch:
    etcd_watch_destroy(r->watch);
    registry_lease_cleanup(r);
    pthread_cond_destroy(&r->batch_cond);
    pthread_mutex_destroy(&r->batch_lock);
err_lease_cond:
    pthread_cond_destroy(&r->lease_key_cond);
    pthread_mutex_destroy(&r->lease_key_lock);
err_cond:
    pthread_cond_destroy(&r->maint_cond);
err_lock:
    pthread_mutex_destroy(&r->lock);
err_view:
    coord_peers_destroy(r->unseen);
    coord_peers_destroy(r->registering);
    view_cleanup(&r->view);
err_free:
    EVP_MD_free(r->token_md);
    free(r->claims_prefix);
    free(r->ops_prefix);
    free(r->prefix);
    free(r);
    return status;
}

void coord_registry_destroy(coord_registry_t *r)
{
    if (r == NULL) {
        return;
    }
    pthread_mutex_lock(&r->lock);
    r->stopping = true;
    pthread_cond_signal(&r->maint_cond);
    pthread_mutex_unlock(&r->lock);
    pthread_join(r->maint_thread, NULL);
    etcd_watch_destroy(r->watch);
    registry_unwrites_free(r); /* params.exec stopped first: none is queued */
    registry_claim_ends_free(r);
    registry_lease_cleanup(r);
    pthread_cond_destroy(&r->batch_cond);
    pthread_mutex_destroy(&r->batch_lock);
    pthread_cond_destroy(&r->lease_key_cond);
    pthread_mutex_destroy(&r->lease_key_lock);
    pthread_cond_destroy(&r->maint_cond);
    pthread_mutex_destroy(&r->lock);
    coord_peers_destroy(r->unseen);
    coord_peers_destroy(r->registering);
    view_cleanup(&r->view);
    EVP_MD_free(r->token_md);
    free(r->claims_prefix);
    free(r->ops_prefix);
    free(r->prefix);
    free(r);
}

bool coord_registry_healthy(coord_registry_t *r)
{
    return atomic_load(&r->healthy);
}

void coord_registry_view_stats(coord_registry_t *r, size_t *n_records_p, bool *live_p,
                               size_t n_by_state[FERRY_OP_STATE_COUNT])
{
    pthread_mutex_lock(&r->lock);
    *n_records_p = r->view.n_entries;
    memcpy(n_by_state, r->view.n_by_state, sizeof(r->view.n_by_state));
    *live_p = r->synced;
    pthread_mutex_unlock(&r->lock);
}

void coord_registry_claim_ends(coord_registry_t *r, uint64_t *on_view_p, uint64_t *checked_p,
                               size_t *waiting_p, size_t *pending_p)
{
    *on_view_p = atomic_load(&r->claim_ends[0]);
    *checked_p = atomic_load(&r->claim_ends[1]);
    *waiting_p = registry_claim_ends_waiting(r);
    *pending_p = registry_claim_ends_pending(r);
}

bool coord_registry_view_holds(coord_registry_t *r, const char *request_id)
{
    bool holds;

    pthread_mutex_lock(&r->lock);
    holds = view_find(&r->view, request_id) != NULL;
    pthread_mutex_unlock(&r->lock);
    return holds;
}

int64_t coord_registry_revision(coord_registry_t *r)
{
    int64_t rev;
    pthread_mutex_lock(&r->lock);
    rev = registry_whole_revision_locked(r);
    pthread_mutex_unlock(&r->lock);
    return rev;
}
