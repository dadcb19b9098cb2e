/*
 * registry_batch.c: Registers share etcd transactions (group commit).
 *
 * Each Register is a create-if-absent of one key: compare create_revision
 * == 0, put the record on its lease. What a transaction costs etcd and the
 * coordinator is mostly per request (a gRPC call each way, a raft proposal,
 * a watch message), not per key, so Registers that arrive together go in
 * one transaction: all the compares, all the puts. Normally one
 * transaction is in flight at a time; a Register that finds one in flight
 * queues, and the first of the queued to find none takes the queue (up to
 * register_batch writes) and runs it for them all. So a lone Register goes
 * at once, as before, and under load the waiting is what builds the batch.
 * Registers run on the etcd workers (--etcd-inflight, 64), so a batch
 * holds at most that many. A transaction that etcd holds (a frozen member,
 * a follower whose leader died: etcd's timeout, 5 s) would hold every
 * Register behind it: once the youngest in flight has been out
 * REGISTRY_BATCH_STALL_MS while the etcd client suspects a member (the
 * health probe finds a frozen one within about 1.5 s), the queue leads
 * another (up to REGISTRY_BATCH_INFLIGHT_MAX in flight), which the client
 * sends to the members it does not suspect first. Only a thread whose
 * write is still queued leads. Transactions in flight together may hold
 * the same ID (a caller that asked again): etcd orders them, as it orders
 * two replicas'; each has its own token and fence (registry_unwrite.c).
 *
 * A batch is all or nothing in etcd, and carries at most
 * REGISTRY_BATCH_BYTES of keys and values (etcd refuses a request over
 * --max-request-bytes). When some of its keys exist, nothing was written,
 * and the transaction's failure branch has read every key: the members
 * whose key exists are answered so (ALREADY_EXISTS), the others go again
 * together (each round answers one at least). When a lease named is gone
 * (etcd does not say which): on one lease every member is answered so
 * (LEASE_NOT_FOUND); on several, the members go again grouped by lease,
 * so one more round finds the gone lease's and the live leases' members
 * still share: a member alone on its lease runs alone (concurrently, on its
 * own worker), the others are queued again at the front, each to go in a
 * transaction of its lease only (take_batch), where a gone lease is every
 * member's answer. So a member goes again by lease once at most.
 * When etcd refused it for something else one member can cause, before
 * applying anything (a request too large, too many operations:
 * INVALID_ARGUMENT or RESOURCE_EXHAUSTED), every member runs its own
 * transaction instead, alone, so each gets its own answer exactly as
 * without batching; a member whose caller has stopped waiting by then is
 * not sent. etcd out of space (its NOSPACE alarm) refuses every write
 * alike, so then every member gets that refusal at once. Any other failure (etcd unreachable, no
 * answer in time, an answer that could not be read) may have come after etcd applied the
 * transaction, and every member gets it, as it would have alone: sent
 * again, a member would find its own record and be told the ID is taken.
 *
 * A Register still queued when its caller stops waiting (it went away, or
 * gRPC ended the call) is taken out unsent and fails TIMED_OUT, as a call
 * that waited past its deadline for an etcd worker does: nothing is written
 * that its caller will not hear of. One still queued when its own etcd
 * deadline comes (deadline_ms: its call's, less the margin the answer needs)
 * is taken out unsent too and fails UNAVAILABLE, which its caller, still
 * waiting, hears before its deadline: nothing was written, ask again. It
 * leaves the queue within REGISTRY_BATCH_POLL_MS of its caller going and at
 * its deadline (a queued write waits in slices and asks its gone() after
 * each), not when the transaction in flight ends, so it never holds its
 * etcd worker for the etcd timeout. A write already taken into a
 * transaction waits for that transaction.
 * A transaction ends by the latest of its members' deadlines (deadline_ms:
 * the thread's etcd deadline, which the service sets from each call's
 * deadline), and by etcd's timeout: so a Register queued behind a
 * transaction that etcd held for that whole timeout has only what is left
 * of its own time for its own, and its caller hears UNAVAILABLE (etcd did
 * not answer) before its deadline, not DEADLINE_EXCEEDED.
 *
 * The members of a batch share its revision (etcd gives one revision to
 * all the changes of a transaction); a Watch carries a revision's changes
 * in one message (service_watch.c), so nothing about a shared revision can
 * be missed by a client that resumes.
 *
 * Threads: any (the etcd workers); batch_lock guards the queue and count.
 * gone() is called under batch_lock, on the thread of the write's owner or
 * of the leader that takes it; batch_cond runs on CLOCK_MONOTONIC.
 */
#include "registry_int.h"

#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"

/* How often a queued write whose caller may go asks whether it has. */
#define REGISTRY_BATCH_POLL_MS 20

/* w's create-if-absent: the compares (key absent; and its fence, when it
 * has one: cmp has room for two), *n_cmp_p of them, and the put; and, for a
 * shared transaction's failure branch, the read of its key. */
static void write_ops(const registry_write_t *w, etcd_compare_t *cmp, size_t *n_cmp_p,
                      etcd_op_t *put, etcd_op_t *get)
{
    cmp[0] = (etcd_compare_t){
        .target = ETCD_CMP_CREATE, .result = ETCD_CMP_EQUAL, .key = w->key, .key_len = w->key_len};
    *n_cmp_p = 1;
    if (w->fence != NULL) {
        cmp[(*n_cmp_p)++] = (etcd_compare_t){.target = ETCD_CMP_CREATE,
                                             .result = ETCD_CMP_EQUAL,
                                             .key = w->fence,
                                             .key_len = w->fence_len};
    }
    *put = (etcd_op_t){.type = ETCD_OP_PUT,
                       .key = w->key,
                       .key_len = w->key_len,
                       .value = w->value,
                       .value_len = w->value_len,
                       .lease = w->lease};
    *get = (etcd_op_t){.type = ETCD_OP_GET, .key = w->key, .key_len = w->key_len};
}

/* The deadline of a transaction for ws[0..n): the latest of its members'
 * (etcd_set_deadline), none when one has none. A member whose caller goes
 * sooner hears its own deadline, as it would waiting behind it alone. */
static int64_t batch_deadline(registry_write_t *const *ws, size_t n)
{
    int64_t latest = ws[0]->deadline_ms;

    for (size_t i = 1; i < n && latest != 0; i++) {
        latest =
            ws[i]->deadline_ms == 0 || ws[i]->deadline_ms > latest ? ws[i]->deadline_ms : latest;
    }
    return latest;
}

/* Runs w alone: its own create-if-absent transaction. */
static void write_alone(coord_registry_t *r, registry_write_t *w)
{
    etcd_compare_t cmp[2];
    size_t n_cmp;
    etcd_op_t put, get;
    etcd_txn_result_t res = {0};
    int64_t prev = etcd_set_deadline(w->deadline_ms);

    write_ops(w, cmp, &n_cmp, &put, &get);
    w->status = etcd_txn(r->etcd, cmp, n_cmp, &put, 1, NULL, 0, &res);
    w->no_space = etcd_no_space();
    w->created = w->status == FERRY_OK && res.succeeded;
    w->revision = res.revision;
    etcd_txn_result_free(&res);
    etcd_set_deadline(prev);
}

static void write_batch(coord_registry_t *r, registry_write_t *const *ws, size_t n);

/* etcd refused the request before applying any of it, for something one
 * member of a shared transaction may have caused: too large, too many
 * operations (INVALID_ARGUMENT; RESOURCE_EXHAUSTED from its gRPC server for
 * a message over its limit), or a lease gone among several. */
bool registry_refused_before_apply(ferry_status_t status)
{
    return status == FERRY_ERR_INVALID_ARGUMENT || status == FERRY_ERR_RESOURCE_EXHAUSTED ||
           status == FERRY_ERR_NOT_FOUND;
}

/* Runs ws[0..n) again: alone, or together. */
static void write_again(coord_registry_t *r, registry_write_t *const *ws, size_t n)
{
    if (n == 1) {
        write_alone(r, ws[0]);
    } else if (n > 1) {
        write_batch(r, ws, n);
    }
}

/* Runs the batch ws[0..n) (n > 1) as one transaction. When some keys are
 * taken, the transaction's failure branch reads them all: their members
 * are answered (the key exists) and the rest go again, together. On a
 * refusal one member may have caused, marks every member not answered to
 * run alone; on any other failure, answers every member with it. ws itself
 * is left as it is (the caller marks each done). */
static void write_batch(coord_registry_t *r, registry_write_t *const *ws, size_t n)
{
    etcd_compare_t *cmps = calloc(2 * n, sizeof(*cmps));
    size_t n_cmps = 0;
    etcd_op_t *puts = calloc(n, sizeof(*puts));
    etcd_op_t *gets = calloc(n, sizeof(*gets));
    registry_write_t **rest = calloc(n, sizeof(*rest));
    etcd_txn_result_t res = {0};
    ferry_status_t status = FERRY_ERR_NO_MEMORY;
    size_t again = 0;

    if (cmps != NULL && puts != NULL && gets != NULL && rest != NULL) {
        for (size_t i = 0; i < n; i++) {
            size_t k;
            write_ops(ws[i], &cmps[n_cmps], &k, &puts[i], &gets[i]);
            n_cmps += k;
        }
        int64_t prev = etcd_set_deadline(batch_deadline(ws, n));
        status = etcd_txn(r->etcd, cmps, n_cmps, puts, n, gets, n, &res);
        etcd_set_deadline(prev);
    }
    if (status == FERRY_OK && !res.succeeded && res.n_results == n) {
        /* Answer the taken ones; the others go again, rest[0..again). */
        for (size_t i = 0; i < n; i++) {
            registry_write_t *w = ws[i];
            if (res.results[i].count > 0) {
                w->status = FERRY_OK;
                w->created = false;
                w->revision = res.revision;
                w->answered = true;
            } else {
                rest[again++] = w;
            }
        }
        ferry_debug("registry: %zu of a transaction of %zu Registers found their key taken; "
                    "the others go again",
                    n - again, n);
        if (again == n) {
            /* No key taken: a fence's compare failed, which only a write
             * applied late can meet (its caller has its answer). Each
             * goes alone rather than again together, for good. */
            again = 0;
        }
    } else if (status == FERRY_ERR_NOT_FOUND) {
        /* A lease named is gone (etcd does not say which). On one lease
         * (a worker's session lease: the usual batch) it is every
         * member's; on several, the members go again by lease: alone
         * (below) when alone on their lease, else regrouped. */
        bool one_lease = true;
        for (size_t i = 1; i < n && one_lease; i++) {
            one_lease = ws[i]->lease == ws[0]->lease;
        }
        for (size_t i = 0; i < n; i++) {
            if (one_lease) {
                ws[i]->status = FERRY_ERR_NOT_FOUND;
                ws[i]->answered = true;
                continue;
            }
            for (size_t j = 0; j < n && !ws[i]->regroup; j++) {
                ws[i]->regroup = j != i && ws[j]->lease == ws[i]->lease;
            }
        }
        ferry_debug("registry: a transaction of %zu Registers named a lease that is gone%s", n,
                    one_lease ? "" : "; they go again by lease");
    }
    for (size_t i = 0; again == 0 && i < n; i++) {
        if (status == FERRY_OK && res.succeeded) {
            ws[i]->status = FERRY_OK;
            ws[i]->created = true;
            ws[i]->revision = res.revision;
        } else if (ws[i]->answered || ws[i]->regroup) {
            continue;
        } else if (status == FERRY_OK ||
                   (registry_refused_before_apply(status) && !etcd_no_space())) {
            ws[i]->alone = true; /* FERRY_OK: not applied, but not the answer expected */
        } else {
            ws[i]->status = status;
            ws[i]->no_space = etcd_no_space();
        }
    }
    if (again == 0 && status != FERRY_OK && status != FERRY_ERR_NOT_FOUND) {
        ferry_debug("registry: a transaction of %zu Registers failed: %s%s", n,
                    ferry_status_string(status),
                    registry_refused_before_apply(status) ? "; each goes alone" : "");
    }
    etcd_txn_result_free(&res);
    free(cmps);
    free(puts);
    free(gets);
    write_again(r, rest, again);
    free(rest);
}

static bool same_key(const registry_write_t *a, const registry_write_t *b)
{
    return a->key_len == b->key_len && memcmp(a->key, b->key, a->key_len) == 0;
}

/* The compares w adds to a transaction: its key's, and its fence's. */
static size_t write_cmps(const registry_write_t *w)
{
    return w->fence != NULL ? 2 : 1;
}

/* What w adds to a shared transaction: its key three times (the compare,
 * the put, the failure branch's read), its fence's compare, its value, and
 * framing. */
static size_t write_bytes(const registry_write_t *w)
{
    return 3 * w->key_len + w->fence_len + w->value_len + 96;
}

/* Whether w may join ws[0..n) (n > 0): not when one taken already has its
 * key (two Registers of one ID): etcd refuses a transaction that puts a
 * key twice, so it goes in the next one (and finds the key taken, or free
 * if the first failed); and a transaction of one lease (ws[0] by_lease)
 * takes only that lease, while a by_lease write joins no other. */
static bool may_join(registry_write_t *const *ws, size_t n, const registry_write_t *w)
{
    if (ws[0]->by_lease ? w->lease != ws[0]->lease : w->by_lease) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        if (same_key(ws[i], w)) {
            return false;
        }
    }
    return true;
}

/* Whether w, queued, leaves unsent: its caller has stopped waiting (late:
 * TIMED_OUT, which nobody hears), or its deadline_ms has come (expired:
 * UNAVAILABLE, which its caller hears before its deadline rather than
 * gRPC's DEADLINE_EXCEEDED). Marks it so. Caller holds batch_lock. */
static bool must_leave(registry_write_t *w, int64_t now)
{
    if (w->gone != NULL && w->gone(w->gone_arg)) {
        w->status = FERRY_ERR_TIMED_OUT;
        w->late = true;
    } else if (w->deadline_ms > 0 && now >= w->deadline_ms) {
        w->status = FERRY_ERR_UNAVAILABLE;
        w->expired = true;
    } else {
        return false;
    }
    w->done = true;
    return true;
}

/* Takes up to max writes off the queue into ws[0..*n_p), in order, while
 * their bytes stay within REGISTRY_BATCH_BYTES (the first is taken
 * whatever its size) and their compares within COORD_REGISTER_BATCH_MAX
 * (etcd's --max-txn-ops: a fenced write has two, and 128 fenced writes were
 * refused whole, then each sent alone), leaving those that may not join
 * (may_join) for a later one. A write that must leave (must_leave: its
 * caller went, or its deadline came) leaves the queue unsent: nothing is
 * written that its caller will not hear of. Caller holds batch_lock. */
static void take_batch(coord_registry_t *r, registry_write_t **ws, size_t *n_p, size_t max,
                       int64_t now)
{
    registry_write_t **p = &r->batch_head;
    size_t n = 0, bytes = 0, cmps = 0;
    bool left = false;

    while (n < max && *p != NULL) {
        registry_write_t *w = *p;
        if (must_leave(w, now)) {
            *p = w->next;
            left = true;
            continue;
        }
        if (n > 0 && !may_join(ws, n, w)) {
            p = &w->next;
            continue;
        }
        if (n > 0 && (write_bytes(w) > REGISTRY_BATCH_BYTES - bytes ||
                      cmps + write_cmps(w) > COORD_REGISTER_BATCH_MAX)) {
            break; /* the next transaction takes it */
        }
        *p = w->next;
        ws[n++] = w;
        cmps += write_cmps(w);
        bytes += write_bytes(w) < REGISTRY_BATCH_BYTES ? write_bytes(w) : REGISTRY_BATCH_BYTES;
    }
    if (left) {
        pthread_cond_broadcast(&r->batch_cond);
    }
    r->batch_tail = &r->batch_head;
    while (*r->batch_tail != NULL) {
        r->batch_tail = &(*r->batch_tail)->next;
    }
    *n_p = n;
}

/* Puts the regrouped writes of ws[0..n) back at the front of the queue, in
 * order, to go again by lease; marks the others done. Caller holds
 * batch_lock. */
static void end_batch(coord_registry_t *r, registry_write_t *const *ws, size_t n)
{
    registry_write_t *head = NULL, **tail = &head;

    for (size_t i = 0; i < n; i++) {
        registry_write_t *w = ws[i];
        if (!w->regroup) {
            w->done = true;
            continue;
        }
        w->regroup = false;
        w->by_lease = true;
        *tail = w;
        tail = &w->next;
    }
    if (head == NULL) {
        return;
    }
    *tail = r->batch_head;
    if (r->batch_head == NULL) {
        r->batch_tail = tail;
    }
    r->batch_head = head;
}

/* The link that points at w in the queue, or NULL when w is not queued
 * (a leader took it). Caller holds batch_lock. */
static registry_write_t **queued_link(coord_registry_t *r, const registry_write_t *w)
{
    for (registry_write_t **p = &r->batch_head; *p != NULL; p = &(*p)->next) {
        if (*p == w) {
            return p;
        }
    }
    return NULL;
}

/* Takes w out of the queue, unsent, when it is still queued and must leave
 * (must_leave). True if it did; *queued_p: w is still queued. Caller holds
 * batch_lock. */
static bool leave_if_due(coord_registry_t *r, registry_write_t *w, int64_t now, bool *queued_p)
{
    registry_write_t **p = queued_link(r, w);

    *queued_p = p != NULL;
    if (p == NULL || !must_leave(w, now)) {
        return false;
    }
    *p = w->next;
    if (r->batch_tail == &w->next) {
        r->batch_tail = p;
    }
    w->next = NULL;
    *queued_p = false;
    return true;
}

/* How many transactions are in flight (their batch_led slots), and when
 * the youngest was led. Caller holds batch_lock. */
static size_t led_now(const coord_registry_t *r, int64_t *youngest_p)
{
    size_t n = 0;

    *youngest_p = 0;
    for (size_t i = 0; i < REGISTRY_BATCH_INFLIGHT_MAX; i++) {
        n += r->batch_led[i] != 0;
        *youngest_p = r->batch_led[i] > *youngest_p ? r->batch_led[i] : *youngest_p;
    }
    return n;
}

/* Whether a transaction may be led now: none is in flight; or fewer than
 * REGISTRY_BATCH_INFLIGHT_MAX are, the youngest has been out
 * batch_stall_ms, and the etcd client suspects a member (the one that
 * holds them, likely, so the new one goes elsewhere; with none suspect,
 * etcd is slow everywhere, and another transaction would only add to its
 * load). Caller holds batch_lock. */
static bool may_lead(coord_registry_t *r, int64_t now)
{
    int64_t youngest;
    size_t n = led_now(r, &youngest);

    return n == 0 || (n < REGISTRY_BATCH_INFLIGHT_MAX && now - youngest >= r->batch_stall_ms &&
                      etcd_suspects_a_member(r->etcd));
}

/* Waits for a transaction to end; while w is queued, at most until the
 * next moment something else may change its fate: REGISTRY_BATCH_POLL_MS
 * when its caller may go, its deadline, and when the transactions in
 * flight count as held (may_lead; then every REGISTRY_BATCH_POLL_MS until
 * a member is suspect). Caller holds batch_lock. */
static void wait_turn(coord_registry_t *r, const registry_write_t *w, int64_t now, bool queued)
{
    int64_t until = INT64_MAX;
    struct timespec ts;

    if (queued) {
        if (w->gone != NULL) {
            until = now + REGISTRY_BATCH_POLL_MS;
        }
        if (w->deadline_ms > 0 && w->deadline_ms < until) {
            until = w->deadline_ms;
        }
        int64_t youngest;
        size_t n = led_now(r, &youngest);
        if (n > 0 && n < REGISTRY_BATCH_INFLIGHT_MAX) {
            int64_t held = youngest + r->batch_stall_ms;
            held = held > now ? held : now + REGISTRY_BATCH_POLL_MS;
            until = held < until ? held : until;
        }
    }
    if (until == INT64_MAX) {
        pthread_cond_wait(&r->batch_cond, &r->batch_lock);
        return;
    }
    ts = ferry__clock_in_ms(CLOCK_MONOTONIC, until - now > 1 ? until - now : 1);
    pthread_cond_timedwait(&r->batch_cond, &r->batch_lock, &ts);
}

void registry_write(coord_registry_t *r, registry_write_t *w)
{
    registry_write_t *ws[COORD_REGISTER_BATCH_MAX];
    size_t max =
        r->params.register_batch == 0 ? COORD_REGISTER_BATCH : (size_t)r->params.register_batch;

    if (max <= 1 || max > COORD_REGISTER_BATCH_MAX) {
        write_alone(r, w);
        return;
    }
    w->next = NULL;
    pthread_mutex_lock(&r->batch_lock);
    *r->batch_tail = w;
    r->batch_tail = &w->next;
    while (!w->done) {
        int64_t now = ferry__clock_ms(CLOCK_MONOTONIC);
        size_t n = 0, slot = 0;
        bool queued;

        if (leave_if_due(r, w, now, &queued)) {
            continue; /* done: left unsent */
        }
        /* Only a thread whose write is still queued leads: one whose write
         * is in a transaction in flight waits for that transaction's
         * answer, not for another's. */
        if (!queued || !may_lead(r, now)) {
            wait_turn(r, w, now, queued);
            continue;
        }
        /* Lead: take up to max queued writes (ours among them, unless the
         * queue is longer; then we lead this one and wait on). */
        take_batch(r, ws, &n, max, now);
        if (n == 0) {
            continue; /* all left unsent (ours among them) */
        }
        while (r->batch_led[slot] != 0) {
            slot++; /* fewer than REGISTRY_BATCH_INFLIGHT_MAX are in flight */
        }
        r->batch_led[slot] = now;
        pthread_mutex_unlock(&r->batch_lock);

        if (n == 1) {
            write_alone(r, ws[0]);
        } else {
            write_batch(r, ws, n);
        }

        pthread_mutex_lock(&r->batch_lock);
        r->batch_led[slot] = 0;
        end_batch(r, ws, n);
        pthread_cond_broadcast(&r->batch_cond);
    }
    pthread_mutex_unlock(&r->batch_lock);
    if (w->alone && w->gone != NULL && w->gone(w->gone_arg)) {
        w->status = FERRY_ERR_TIMED_OUT; /* nothing of it was applied: not sent again */
        w->late = true;
    } else if (w->alone) {
        write_alone(r, w);
    }
}
