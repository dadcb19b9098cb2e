/*
 * service_watch.c: Watch streams. One etcd watch per coordinator process
 * (the registry's) feeds every subscriber: each registry event is packed
 * once, gathered with the other events of its revision, then recorded in a
 * bounded history (a ring of SERVICE_WATCH_HISTORY events) and queued on
 * the matching streams, in revision order, one message per revision.
 *
 * Why a revision travels whole: etcd gives one revision to every change of
 * a transaction, and a lease's end deletes every key on it at one revision
 * (a worker's session lease holds all its records). A client resumes at
 * the revision after the last message it got; had a revision's changes
 * come one per message, a stream cut between them (a slow reader, a
 * shutdown, a dropped connection) would resume past the rest, never seen.
 * A revision whose events pass watch_msg_bytes goes in several messages,
 * all but the last marked `fragment`; a stream cut between them resumes at
 * that revision (its earlier events come again).
 *
 * Invariant: a stream carries every change after its `created` revision
 * (or from its start_revision on), each once, in order. `created` reports
 * watch_rev, the last revision published whole, read under the subs_lock
 * that publishing holds; a start_revision inside the history is replayed
 * from it under that same lock before the stream joins the subscribers. A start_revision older than
 * the history, or a view reload (the registry's watch could not resume, so changes may never have
 * been published), ends the stream with OUT_OF_RANGE: the client rereads (Get or List) and watches
 * again from the header revision + 1.
 *
 * Bounded: each stream may have watch_queue_bytes (--watch-queue-kib) of
 * messages its client has not taken (gRPC's transport takes them only as
 * the client's flow-control window allows; a client that stops reading
 * stops widening it). The bound is checked as each revision starts, live
 * or replayed: a revision that finds the stream's queue at the bound ends
 * the stream with RESOURCE_EXHAUSTED, naming the revision to resume from
 * (the events already queued still go out first); one that finds room goes
 * in whole, all its messages, past the bound if need be. So a stream holds
 * at most the bound plus one revision (which the history holds anyway), a
 * replay larger than the bound ends the stream where the client resumes,
 * and a revision larger than the bound still reaches a client that keeps
 * up. A revision that cannot be queued for another reason (no memory)
 * ends the stream too, with that status: never a silent gap.
 *
 * Bounded together: what every stream's unsent messages take in memory
 * counts in one budget (watch_budget, --watch-memory-mib), kept by the rpc
 * layer as messages are queued and leave (rpc_call_set_send_budget): a
 * message shared by many streams counts once, with the cost of each
 * queue's entry for it, so an honest fan-out (every libferry client
 * watches everything) costs one copy of the revision. When a revision
 * does not fit, the stream furthest behind makes room: the one that holds
 * the most queued behind the message its client is taking (its own
 * messages, each entry of a shared one), the newest revision left out
 * while it waits, the message in flight counted once it has been for a
 * second (rpc_call_behind_bytes), if further behind than the stream
 * sending, and if some bytes are its alone or its client reads ten
 * seconds behind live (evict_tier: those a second behind with such bytes
 * and those ten seconds behind first, then by behind and those bytes), is
 * ended at once, what it
 * held dropped (rpc_call_fail_now; RESOURCE_EXHAUSTED naming the flag;
 * its client resumes after the last message it got that was not a
 * fragment), and the send is tried again. A revision larger than the
 * bound goes into an empty budget, and to every stream that shares it
 * beside it (rpc_budget.c); a shared revision for which no stream can be
 * ended, to a stream that another is as far behind as or further, goes in
 * past the bound, within twice it (sub_send_locked). So a client that
 * stops reading loses its own streams first (those that keep up are ended
 * only for bytes of their own, and not while a stream further behind does
 * not keep up), and streams are not ended one by one for a revision they
 * all hold while their clients take it (review-s32c M1, but for clients
 * ten seconds behind live); a stream further
 * behind than every other that none can be ended for ends, as for its own
 * bound. A replay
 * counts as it is queued, like live revisions. Replays share messages as
 * live revisions do: a stream that matches all of a held revision is sent
 * the revision's messages, packed once, by the first replay that needs
 * them, and kept with the history (hist_event_t).
 *
 * Counted until done: --max-watches bounds the streams subscribed plus those
 * ended whose calls are not done yet, and --max-watches-per-peer what of
 * them one client host holds (watch_peers: taken as a stream subscribes,
 * given back where it is freed, with the global count). An ended stream's
 * last messages (up to the bound) and its status wait for the client to
 * read them, for at most RPC_DRAIN_MS (rpc.h); until then the stream holds
 * its memory, so it counts, and a client that opens streams, never reads
 * and gets them ended cannot pile them up.
 *
 * Threads: handlers on server threads; publish and reload on the registry's
 * watch and maintenance threads; all under subs_lock.
 */
#include "service_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/log.h"
#include "validate.h"

/* Links s on subs: its call now finds it (on_sub_cancel). Caller holds
 * subs_lock. */
static void link_sub_locked(coord_service_t *svc, sub_entry_t *s)
{
    s->next = svc->subs;
    s->pprev = &svc->subs;
    if (s->next != NULL) {
        s->next->pprev = &s->next;
    }
    svc->subs = s;
    svc->n_subs++;
    rpc_call_set_parked(s->call, s);
}

/* s, on subs, off it. Caller holds subs_lock. */
static void unlink_sub_locked(coord_service_t *svc, sub_entry_t *s)
{
    *s->pprev = s->next;
    if (s->next != NULL) {
        s->next->pprev = s->pprev;
    }
    s->pprev = NULL;
    svc->n_subs--;
    rpc_call_set_parked(s->call, NULL);
}

/* Puts s, unlinked from subs (or never linked), on the ended list: it
 * counts against max_watches until its call is done. The caller ends the
 * call, then lets s go with sub_ended. Caller holds subs_lock. */
static void retire_locked(coord_service_t *svc, sub_entry_t *s)
{
    s->ending = true;
    s->ended_next = svc->ended;
    svc->ended = s;
}

/* s's call has been ended: s goes once the call is done (subs_count_locked),
 * and the caller must not touch it any more. */
static void sub_ended(coord_service_t *svc, sub_entry_t *s)
{
    pthread_mutex_lock(&svc->subs_lock);
    s->ending = false;
    pthread_mutex_unlock(&svc->subs_lock);
}

/* The client went away: the stream, if still on subs (its call finds it:
 * no walk), leaves it and ends. */
static void on_sub_cancel(rpc_call_t *call, void *arg)
{
    coord_service_t *svc = arg;
    sub_entry_t *s;

    pthread_mutex_lock(&svc->subs_lock);
    s = rpc_call_parked(call);
    if (s != NULL) {
        unlink_sub_locked(svc, s);
        retire_locked(svc, s);
    }
    pthread_mutex_unlock(&svc->subs_lock);
    if (s != NULL) {
        ferry_debug("watch from %s: client went away", rpc_call_peer(call));
        rpc_call_fail(call, FERRY_ERR_CANCELLED, "watch cancelled");
        sub_ended(svc, s);
    }
}

/* The budget's bound as --watch-memory-mib gives it ("64 MiB"; in bytes
 * when it is not whole MiB, as a test may set it), into buf. */
static const char *budget_amount(const coord_service_t *svc, char *buf, size_t cap)
{
    size_t max = rpc_send_budget_max(svc->watch_budget);

    if (max % (1u << 20) == 0) {
        snprintf(buf, cap, "%zu MiB", max >> 20);
    } else {
        snprintf(buf, cap, "%zu bytes", max);
    }
    return buf;
}

/* What every stream's refusal for the budget says first (the one owner of
 * those words), into buf. */
static const char *budget_text(const coord_service_t *svc, char *buf, size_t cap)
{
    char amount[48];

    snprintf(buf, cap,
             "this replica's Watch streams together hold as many bytes their clients have "
             "not read as they may (%s; --watch-memory-mib)",
             budget_amount(svc, amount, sizeof(amount)));
    return buf;
}

/* Takes the streams made to end for the budget (evict_locked) off subs,
 * onto the ended list: their calls are ended already. Caller holds
 * subs_lock. */
static void sweep_evicted_locked(coord_service_t *svc)
{
    for (sub_entry_t *s = svc->subs, *next; s != NULL; s = next) {
        next = s->next;
        if (s->evicted) {
            unlink_sub_locked(svc, s);
            s->ended_next = svc->ended;
            svc->ended = s;
        }
    }
}

/* A pass (a flush, a subscribe) begins: evict_locked knows nothing yet. */
static void evict_pass_begin(coord_service_t *svc)
{
    svc->evict.floor = SIZE_MAX;
}

/* How far behind live a client may read and still be left alone for room
 * when no bytes are its alone: one that reads this far behind does not
 * keep up, however steadily it takes messages (two that take one now and
 * then, in step, holding the same revisions, are never alone with any:
 * review-s37c H1). As long as an ended call's last messages may wait for
 * its client. */
#define WATCH_LAG_MAX_MS RPC_DRAIN_MS

/* Whether x may be ended for room, and how much that is worth: 0, not
 * (its end would free only its queue entries, and its client keeps up, or
 * is a few seconds behind on revisions others hold too: ending such streams
 * one by one for a unit that finds the count full of that revision ended
 * every one of them, for nothing: review-s32c M1, review-s37, -s37b); 1,
 * some bytes are its alone (its own messages, or a shared one no other
 * stream holds any more: a client that stopped reading a revision every
 * other stream has read holds all of it, though behind counts its entries
 * only: review-s37 H1); 2, its client does not keep up: it reads
 * RPC_STUCK_MS or more behind live (its oldest message not taken was
 * queued, or what it carries happened, that long ago: rpc_call_lag_ms)
 * with such bytes, or WATCH_LAG_MAX_MS behind with or without. The higher
 * tier goes first (a client that stopped before a reader a moment behind
 * with bytes of its own: review-s37d M1), then *worth_p: behind and those
 * bytes. *laggard_p: tier 0 though a second behind (one that may not be
 * ended yet, but does not keep up). One that cannot reach `best`, the
 * highest tier found so far, is not looked at further (its queue is
 * walked for its own bytes: rpc_call_sole_bytes). */
static int evict_tier(const sub_entry_t *x, size_t behind, int best, size_t *worth_p,
                      bool *laggard_p)
{
    int64_t lag = rpc_call_lag_ms(x->call);
    size_t sole;

    if (best == 2 && lag < RPC_STUCK_MS) {
        return 0;
    }
    sole = rpc_call_sole_bytes(x->call);
    *worth_p = behind + sole;
    if (lag >= WATCH_LAG_MAX_MS || (sole > 0 && lag >= RPC_STUCK_MS)) {
        return 2;
    }
    *laggard_p = *laggard_p || (sole == 0 && lag >= RPC_STUCK_MS);
    return sole > 0 ? 1 : 0;
}

/* Makes room in the budget for s: of the streams (subscribed, or ended and
 * draining) further behind than s (rpc_call_behind_bytes) that may be
 * ended for room (evict_tier), the one in the highest tier worth the most
 * is ended now and
 * what it holds dropped. True if one was. A walk of every stream, each
 * call's lock taken: one that ends none leaves what it found (svc->evict),
 * so that the streams after s in the same pass no less behind are answered
 * without a walk each (a backlog that grows, or a stream that falls
 * behind, within the pass may make that answer stale, which only ties or
 * ends that stream, never another). When none is ended, *tied_p says
 * whether s is alike the others: another subscribed stream as far behind
 * or further (none of which may be ended), or nothing behind (it keeps up:
 * review-s32c L2); a stream further behind than every other is not, and
 * ends, as for its own bound. Caller holds subs_lock; an evicted
 * subscriber stays on subs until sweep_evicted_locked. */
static bool evict_locked(coord_service_t *svc, const sub_entry_t *s, bool *tied_p)
{
    static ferry_log_limit_t limit;
    size_t mine = rpc_call_behind_bytes(s->call), most = 0, top = 0, top_n = 0;
    sub_entry_t *victim = NULL;
    bool laggard = false;
    int best = 0;
    char text[192];
    unsigned quiet;

    if (mine >= svc->evict.floor) {
        *tied_p = mine == 0 || mine < svc->evict.top || svc->evict.top_n > 1;
        return false;
    }
    for (int list = 0; list < 2; list++) {
        for (sub_entry_t *x = list == 0 ? svc->subs : svc->ended; x != NULL;
             x = list == 0 ? x->next : x->ended_next) {
            size_t behind, worth;
            int tier;

            if (x == s || x->evicted) {
                continue;
            }
            behind = rpc_call_behind_bytes(x->call);
            if (list == 0 && behind >= top) {
                top_n = behind == top ? top_n + 1 : 1;
                top = behind;
            }
            tier = behind > mine ? evict_tier(x, behind, best, &worth, &laggard) : 0;
            if (tier > best || (tier == best && tier > 0 && worth > most)) {
                best = tier;
                most = worth;
                victim = x;
            }
        }
    }
    *tied_p = mine == 0 || (top_n > 0 && top >= mine);
    if (best == 1 && laggard) {
        /* One further behind does not keep up, and may not be ended yet
         * (it holds nothing alone, and is under WATCH_LAG_MAX_MS behind):
         * not a reader that keeps up in its place (review-s37e M1). The
         * pass keeps no answer from this walk: a stream behind that one
         * would find the reader (review-s37f L1). */
        return false;
    }
    if (victim == NULL) {
        bool alone = top_n == 0 || mine > top;
        svc->evict.floor = mine;
        svc->evict.top = alone ? mine : top;
        svc->evict.top_n = alone ? 1 : top_n + (mine == top);
        return false;
    }
    svc->evict.floor = SIZE_MAX;
    victim->evicted = true;
    atomic_fetch_add(&svc->watch_memory_evicted, 1); /* for metrics */
    if (ferry_log_due(&limit, &quiet)) {
        ferry_info(
            "watch from %s: ended, %zu bytes behind and its own, what its client had not read "
            "dropped, to keep every stream's unsent bytes within --watch-memory-mib (%s); "
            "%u more since the last line",
            rpc_call_peer(victim->call), most, budget_amount(svc, text, sizeof(text)), quiet);
    }
    rpc_call_fail_now(victim->call, FERRY_ERR_RESOURCE_EXHAUSTED,
                      "%s, and this stream was the furthest behind of those that may be ended "
                      "for room: what its client had not read was dropped; Watch again with "
                      "start_revision = the revision after the "
                      "last message received that was not a fragment",
                      budget_text(svc, text, sizeof(text)));
    return true;
}

/* Queues msgs[0..n) on s as one unit (rpc_call_send_msgs; shared: they go
 * to other streams too), making room in the budget by ending the streams
 * further behind than s that may be ended for room
 * (evict_locked). When none is, and s is alike the others (another as far
 * behind or further, or nothing behind), a shared revision (packed once
 * for every stream that matches all of it, live or replayed) goes in past
 * the bound, within twice it (RPC_SEND_PAST_BUDGET), as when every stream
 * holds a revision larger than the room left, which the next revision then
 * found the budget over its bound with, and all of them were ended
 * (review-s32 M1, review-s32b L1). A stream further behind than every
 * other ends, as for its own bound, and a unit of s's own (a prefix it
 * matches part of, its first message) is not passed: s ends (a new stream
 * is refused). s->over_budget says the budget refused it all the same.
 * Caller holds subs_lock. */
static ferry_status_t sub_send_locked(coord_service_t *svc, sub_entry_t *s, rpc_msg_t *const *msgs,
                                      size_t n, bool shared)
{
    unsigned flags = shared ? RPC_SEND_SHARED : 0;
    bool tied = false;
    ferry_status_t status;

    do {
        status = rpc_call_send_msgs(s->call, msgs, n, flags, &s->over_budget);
    } while (status != FERRY_OK && s->over_budget && evict_locked(svc, s, &tied));
    if (status != FERRY_OK && s->over_budget && shared && tied) {
        status =
            rpc_call_send_msgs(s->call, msgs, n, flags | RPC_SEND_PAST_BUDGET, &s->over_budget);
    }
    return status;
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

/* Packs the events values[0..n) of `revision` into messages of at most
 * watch_msg_bytes of events each (at least one event), all but the last
 * marked `fragment`; msgs[] gets them (as many as n at most) and *n_msgs
 * their count. False when out of memory (what was packed is unref'd). */
static bool pack_revision(const coord_service_t *svc, int64_t revision, int64_t published_ms,
                          const ProtobufCBinaryData *values, size_t n, rpc_msg_t **msgs,
                          size_t *n_msgs)
{
    uint32_t events_field = rpc_field_number(&ferry__v1__watch_response__descriptor, "events");
    Ferry__V1__WatchResponse resp = FERRY__V1__WATCH_RESPONSE__INIT;
    Ferry__V1__ResponseHeader header = FERRY__V1__RESPONSE_HEADER__INIT;

    service_header((coord_service_t *)svc, &header, revision);
    resp.header = &header;
    *n_msgs = 0;
    for (size_t i = 0, j; i < n; i = j) {
        size_t bytes = values[i].len;
        for (j = i + 1; j < n && bytes + values[j].len <= svc->watch_msg_bytes; j++) {
            bytes += values[j].len;
        }
        resp.fragment = j < n;
        msgs[*n_msgs] = rpc_msg_pack_repeated(&resp.base, events_field, values + i, j - i);
        if (msgs[*n_msgs] == NULL) {
            while (*n_msgs > 0) {
                rpc_msg_unref(msgs[--*n_msgs]);
            }
            return false;
        }
        rpc_msg_set_born(msgs[*n_msgs], published_ms); /* a replay lags from then */
        ++*n_msgs;
    }
    return true;
}

/* Queues on s one revision's messages, msgs[0..n_msgs) (shared: packed for
 * every stream that matches all of it), carrying n_events
 * events, as one unit (rpc_call_send_msgs: the bound is checked as the
 * revision starts). FERRY_ERR_CANCELLED when the client left (its cancel
 * callback removes s); any other failure must end s (RESOURCE_EXHAUSTED:
 * it fell behind). Caller holds subs_lock. */
static ferry_status_t sub_send_revision_locked(coord_service_t *svc, sub_entry_t *s,
                                               int64_t revision, rpc_msg_t *const *msgs,
                                               size_t n_msgs, bool shared, size_t n_events)
{
    ferry_status_t status = sub_send_locked(svc, s, msgs, n_msgs, shared);

    if (status == FERRY_OK) {
        s->last_sent = revision;
        atomic_fetch_add(&svc->watch_events_sent, n_events); /* for metrics */
    }
    return status;
}

/* The events of one revision, ev[0..n), that match s, into values[];
 * their count. */
static size_t sub_filter(const sub_entry_t *s, const hist_event_t *const *ev, size_t n,
                         ProtobufCBinaryData *values)
{
    size_t k = 0;

    for (size_t i = 0; i < n; i++) {
        if (sub_matches(s, ev[i]->request_id)) {
            values[k++] = ev[i]->event;
        }
    }
    return k;
}

/* Queues on s messages of its own carrying values[0..k) of one revision
 * (k > 0); msgs is scratch of k entries. As sub_send_revision_locked;
 * also FERRY_ERR_NO_MEMORY when its messages cannot be packed (it resumes
 * at this revision). */
static ferry_status_t sub_send_values_locked(coord_service_t *svc, sub_entry_t *s,
                                             const hist_event_t *first,
                                             const ProtobufCBinaryData *values, size_t k,
                                             rpc_msg_t **msgs)
{
    int64_t revision = first->revision;
    size_t n_msgs;
    ferry_status_t status;

    if (!pack_revision(svc, revision, first->published_ms, values, k, msgs, &n_msgs)) {
        return FERRY_ERR_NO_MEMORY;
    }
    status = sub_send_revision_locked(svc, s, revision, msgs, n_msgs, false, k);
    for (size_t m = 0; m < n_msgs; m++) {
        rpc_msg_unref(msgs[m]);
    }
    return status;
}

/* Queues on s what it matches of one revision, ev[0..n); values and msgs
 * are scratch of n entries. As sub_send_values_locked. */
static ferry_status_t sub_send_matching_locked(coord_service_t *svc, sub_entry_t *s,
                                               const hist_event_t *const *ev, size_t n,
                                               ProtobufCBinaryData *values, rpc_msg_t **msgs)
{
    size_t k = sub_filter(s, ev, n, values);

    return k > 0 ? sub_send_values_locked(svc, s, ev[0], values, k, msgs) : FERRY_OK;
}

/* Replays to s what it matches of one held revision, ev[0..n), all of it
 * (its first event is `first`, in the history); scratch as above. A
 * stream that matches all of it is sent the revision's shared messages
 * (hist_event_t.msgs), packed here by the first replay that needs them:
 * streams replaying the same revisions hold one copy between them, as
 * live ones do. */
static ferry_status_t replay_revision_locked(coord_service_t *svc, sub_entry_t *s,
                                             hist_event_t *first, const hist_event_t *const *ev,
                                             size_t n, ProtobufCBinaryData *values,
                                             rpc_msg_t **msgs)
{
    size_t k = sub_filter(s, ev, n, values);

    if (k < n) {
        return k > 0 ? sub_send_values_locked(svc, s, first, values, k, msgs) : FERRY_OK;
    }
    if (first->msgs == NULL) {
        rpc_msg_t **packed = malloc(n * sizeof(*packed));
        if (packed == NULL || !pack_revision(svc, first->revision, first->published_ms, values, n,
                                             packed, &first->n_msgs)) {
            free(packed);
            return FERRY_ERR_NO_MEMORY;
        }
        first->msgs = packed;
    }
    return sub_send_revision_locked(svc, s, first->revision, first->msgs, first->n_msgs, true, n);
}

/* Ends a stream that could not take a revision (s->end_status), telling
 * it where to resume; s was retired (retire_locked). */
static void end_sub(coord_service_t *svc, sub_entry_t *s)
{
    static ferry_log_limit_t limit, queue_limit;
    long long resume = (long long)(s->last_sent + 1);
    char text[192];
    unsigned quiet;
    bool evicted;

    pthread_mutex_lock(&svc->subs_lock);
    evicted = s->evicted; /* since it was retired: ended already, and counted */
    pthread_mutex_unlock(&svc->subs_lock);
    if (evicted) {
        sub_ended(svc, s);
        return;
    }
    if (s->end_status == FERRY_ERR_RESOURCE_EXHAUSTED && s->over_budget) {
        atomic_fetch_add(&svc->watch_memory_ended, 1); /* for metrics */
        if (ferry_log_due(&limit, &quiet)) {           /* any client can have its replay not fit */
            ferry_info("watch from %s: ended, no other's end making room when every stream's "
                       "unsent bytes together reached their bound (%s; --watch-memory-mib); %u "
                       "more since the last line",
                       rpc_call_peer(s->call), budget_amount(svc, text, sizeof(text)), quiet);
        }
        rpc_call_fail(
            s->call, FERRY_ERR_RESOURCE_EXHAUSTED,
            "%s, and no stream further behind could make room for this one; Watch again with "
            "start_revision = %lld (the revision after the last event received), "
            "later or on another replica",
            budget_text(svc, text, sizeof(text)), resume);
    } else if (s->end_status == FERRY_ERR_RESOURCE_EXHAUSTED) {
        atomic_fetch_add(&svc->watch_queue_ends, 1); /* for metrics */
        if (ferry_log_due(&queue_limit, &quiet)) {   /* any client may stop reading */
            ferry_info("watch from %s: fell behind (%zu bytes unsent; --watch-queue-kib); "
                       "ended; %u more since the last line",
                       rpc_call_peer(s->call), svc->watch_queue_bytes, quiet);
        }
        rpc_call_fail(s->call, FERRY_ERR_RESOURCE_EXHAUSTED,
                      "this stream fell behind: %zu bytes or more of changes were waiting for "
                      "the client to read them (--watch-queue-kib); Watch again with "
                      "start_revision = %lld (the revision after the last event received)",
                      svc->watch_queue_bytes, resume);
    } else {
        ferry_warn("watch from %s: cannot queue a change: %s; ended", rpc_call_peer(s->call),
                   ferry_status_name(s->end_status));
        rpc_call_fail(s->call, s->end_status,
                      "this replica could not queue a change on this stream (%s); Watch again "
                      "with start_revision = %lld",
                      ferry_status_string(s->end_status), resume);
    }
    sub_ended(svc, s);
}

/* Queues the held revisions at or after `from`, what of each matches s,
 * against the stream's bound like live ones: a replay past it stops there
 * and the stream ends (s->end_status) to resume where it stopped. Only
 * FERRY_OK lets s join. Caller holds subs_lock. */
static ferry_status_t replay_locked(coord_service_t *svc, sub_entry_t *s, int64_t from)
{
    size_t cap = svc->hist_len > 0 ? svc->hist_len : 1;
    const hist_event_t **ev = malloc(cap * sizeof(*ev));
    ProtobufCBinaryData *values = malloc(cap * sizeof(*values));
    rpc_msg_t **msgs = malloc(cap * sizeof(*msgs));
    hist_event_t *first = NULL; /* ev[0], writable: it keeps the revision's messages */
    size_t n = 0;
    ferry_status_t status =
        ev != NULL && values != NULL && msgs != NULL ? FERRY_OK : FERRY_ERR_NO_MEMORY;

    /* A held revision is whole: its first event leaves the history first,
     * and the floor then rises to it, so no replay (from > floor) sees
     * what is left of it. */
    for (size_t i = 0; status == FERRY_OK && i <= svc->hist_len; i++) {
        hist_event_t *h =
            i < svc->hist_len ? &svc->hist[(svc->hist_head + i) % SERVICE_WATCH_HISTORY] : NULL;
        if (h != NULL && h->revision < from) {
            continue;
        }
        if (n > 0 && (h == NULL || first->revision != h->revision)) {
            status = replay_revision_locked(svc, s, first, ev, n, values, msgs);
            if (status != FERRY_OK && status != FERRY_ERR_CANCELLED) {
                s->end_status = status;
            }
            n = 0;
        }
        if (h != NULL) {
            first = n == 0 ? h : first;
            ev[n++] = h;
        }
    }
    free(ev);
    free(values);
    free(msgs);
    return status;
}

/* s no longer counts: its host's share is given back. Caller holds
 * subs_lock. */
static void sub_uncount_locked(coord_service_t *svc, sub_entry_t *s)
{
    if (s->peer_counted) {
        coord_peers_give(svc->watch_peers, rpc_call_peer_host(s->call));
        s->peer_counted = false;
    }
}

/* Streams that count against max_watches: those on subs (n_subs), and
 * those ended whose calls are not done; the ended ones that are done are
 * freed here, and give their host's share back (however they ended: the
 * client cancelled or went away, its deadline, a bound, a reload,
 * shutdown). The ended ones are counted, not kept as a count, so that no
 * path that ends a stream has to remember it: a walk of the streams ended
 * within the last RPC_DRAIN_MS or so, not of every stream open (audit-s33
 * L1: each new Watch took every stream's call lock, under the lock
 * publishing needs). Caller holds subs_lock. */
static size_t subs_count_locked(coord_service_t *svc)
{
    size_t n = svc->n_subs;

    for (sub_entry_t **p = &svc->ended; *p != NULL;) {
        sub_entry_t *s = *p;
        if (!s->ending && rpc_call_is_done(s->call)) {
            *p = s->ended_next;
            sub_uncount_locked(svc, s);
            rpc_call_unref(s->call);
            free(s);
            continue;
        }
        n++;
        p = &s->ended_next;
    }
    return n;
}

/* Answers `created`, replays and subscribes. Caller holds subs_lock; on
 * error the caller ends the call: as end_sub does when s->end_status is
 * set (the replay stopped), else with the returned status and msg. */
static ferry_status_t subscribe_locked(coord_service_t *svc, sub_entry_t *s, char *msg, size_t cap)
{
    Ferry__V1__WatchResponse resp = FERRY__V1__WATCH_RESPONSE__INIT;
    Ferry__V1__ResponseHeader header = FERRY__V1__RESPONSE_HEADER__INIT;
    const char *host = rpc_call_peer_host(s->call);
    rpc_msg_t *created;
    ferry_status_t status;

    if (svc->subs_stopping) {
        snprintf(msg, cap, "coordinator is shutting down");
        return FERRY_ERR_UNAVAILABLE;
    }
    if (subs_count_locked(svc) >= svc->max_watches) {
        static ferry_log_limit_t limit;
        unsigned quiet;
        atomic_fetch_add(&svc->max_watches_refusals, 1); /* for metrics */
        if (ferry_log_due(&limit, &quiet)) {             /* clients retry at any rate */
            ferry_info("watch from %s refused: %zu streams open on this replica (raise "
                       "--max-watches); %u more refused since the last line",
                       rpc_call_peer(s->call), svc->max_watches, quiet);
        }
        snprintf(msg, cap,
                 "too many Watch streams open on this replica (%zu; --max-watches): retry "
                 "later or on another replica",
                 svc->max_watches);
        return FERRY_ERR_RESOURCE_EXHAUSTED;
    }
    status = coord_peers_take(svc->watch_peers, host, svc->max_watches_per_peer);
    if (status == FERRY_ERR_RESOURCE_EXHAUSTED) {
        static ferry_log_limit_t limit;
        unsigned quiet;
        atomic_fetch_add(&svc->watch_peer_refusals, 1); /* for metrics */
        if (ferry_log_due(&limit, &quiet)) { /* a host past its share may ask at any rate */
            ferry_info("watch from %s refused: its host holds %zu streams "
                       "(--max-watches-per-peer); %u more refused since the last line",
                       rpc_call_peer(s->call), svc->max_watches_per_peer, quiet);
        }
        snprintf(msg, cap,
                 "too many Watch streams from %s open on this replica (%zu; "
                 "--max-watches-per-peer): retry later or on another replica",
                 host, svc->max_watches_per_peer);
        return status;
    }
    if (status != FERRY_OK) {
        snprintf(msg, cap, "no memory to count this watch");
        return status;
    }
    s->peer_counted = true; /* given back when s is freed, or below */
    if (s->start_revision != 0 && s->start_revision <= svc->hist_floor) {
        snprintf(msg, cap,
                 "start_revision %lld is no longer available on this replica (it holds changes "
                 "after revision %lld): %s",
                 (long long)s->start_revision, (long long)svc->hist_floor, resync_hint);
        return FERRY_ERR_OUT_OF_RANGE;
    }
    /* The bounds hold from the first message on, the replay included: a
     * replay counts in the budget as it is queued, so one that does not
     * fit ends the streams further behind, or its own (sub_send_locked). */
    rpc_call_set_send_limit(s->call, svc->watch_queue_bytes);
    rpc_call_set_send_budget(s->call, svc->watch_budget);
    service_header(svc, &header, svc->watch_rev);
    resp.header = &header;
    resp.created = true;
    created = rpc_msg_pack(&resp.base);
    status = created != NULL ? sub_send_locked(svc, s, &created, 1, false) : FERRY_ERR_NO_MEMORY;
    rpc_msg_unref(created);
    if (status != FERRY_OK && s->over_budget) {
        static ferry_log_limit_t limit;
        char text[192];
        unsigned quiet;
        s->over_budget = false; /* refused, not ended: nothing of it is queued */
        atomic_fetch_add(&svc->watch_memory_refused, 1); /* for metrics */
        if (ferry_log_due(&limit, &quiet)) {
            ferry_info(
                "watch from %s refused: every stream's unsent bytes together at their "
                "bound (%s; --watch-memory-mib), no other's end making room; %u more since the "
                "last line",
                rpc_call_peer(s->call), budget_amount(svc, text, sizeof(text)), quiet);
        }
        snprintf(msg, cap, "%s: retry later or on another replica",
                 budget_text(svc, text, sizeof(text)));
        return status;
    }
    if (status != FERRY_OK) {
        snprintf(msg, cap, "cannot queue the first message: %s", ferry_status_string(status));
        return status;
    }
    s->last_sent = (s->start_revision != 0 ? s->start_revision : svc->watch_rev + 1) - 1;
    status = s->start_revision != 0 ? replay_locked(svc, s, s->start_revision) : FERRY_OK;
    if (status != FERRY_OK) {
        snprintf(msg, cap, "cannot replay the changes from start_revision %lld: %s",
                 (long long)s->start_revision, ferry_status_string(status));
        return status;
    }
    link_sub_locked(svc, s);
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
    evict_pass_begin(svc); /* a pass of its own (evict_locked) */
    status = subscribe_locked(svc, s, msg, sizeof(msg));
    sweep_evicted_locked(svc); /* its replay may have made room */
    if (status != FERRY_OK && s->end_status != FERRY_OK) {
        retire_locked(svc, s); /* what its replay queued counts */
    } else if (status != FERRY_OK) {
        sub_uncount_locked(svc, s); /* refused: it never counted */
    }
    pthread_mutex_unlock(&svc->subs_lock);
    if (status != FERRY_OK && s->end_status != FERRY_OK) {
        end_sub(svc, s); /* its replay stopped: it resumes there */
        return;
    }
    if (status != FERRY_OK) {
        rpc_call_fail(call, status, "%s", msg);
        rpc_call_unref(call);
        free(s);
        return;
    }
    rpc_call_on_cancel(call, on_sub_cancel, svc);
}

static void event_free(hist_event_t *h)
{
    free(h->request_id);
    free(h->event.data);
    for (size_t m = 0; m < h->n_msgs; m++) {
        rpc_msg_unref(h->msgs[m]); /* queues that hold them keep their own */
    }
    free(h->msgs);
}

static void hist_clear_locked(coord_service_t *svc)
{
    for (size_t i = 0; i < svc->hist_len; i++) {
        event_free(&svc->hist[(svc->hist_head + i) % SERVICE_WATCH_HISTORY]);
    }
    svc->hist_head = 0;
    svc->hist_len = 0;
}

static void pending_clear_locked(coord_service_t *svc)
{
    for (size_t i = 0; i < svc->n_pending; i++) {
        event_free(&svc->pending[i]);
    }
    svc->n_pending = 0;
}

/* Records an event, dropping the oldest when full (the floor rises to its
 * revision). Takes over what *e holds. Caller holds subs_lock. */
static void hist_push_locked(coord_service_t *svc, hist_event_t *e)
{
    if (svc->hist_len == SERVICE_WATCH_HISTORY) {
        hist_event_t *h = &svc->hist[svc->hist_head];
        svc->hist_floor = h->revision;
        event_free(h);
        svc->hist_head = (svc->hist_head + 1) % SERVICE_WATCH_HISTORY;
        svc->hist_len--;
    }
    svc->hist[(svc->hist_head + svc->hist_len) % SERVICE_WATCH_HISTORY] = *e;
    svc->hist_len++;
}

/* Takes the subscriber list out, each stream retired. Caller holds
 * subs_lock. */
static sub_entry_t *detach_all_locked(coord_service_t *svc)
{
    sub_entry_t *all = NULL;

    while (svc->subs != NULL) {
        sub_entry_t *s = svc->subs;
        unlink_sub_locked(svc, s);
        retire_locked(svc, s);
        s->next = all;
        all = s;
    }
    return all;
}

/* Ends every detached stream with `status`. */
static void end_all(coord_service_t *svc, sub_entry_t *all, ferry_status_t status, const char *msg)
{
    while (all != NULL) {
        sub_entry_t *next = all->next;
        rpc_call_fail(all->call, status, "%s", msg);
        sub_ended(svc, all);
        all = next;
    }
}

/* A revision could not be recorded (no memory): the history restarts after
 * it and every stream ends, as after a reload. Caller holds subs_lock. */
static sub_entry_t *hist_lost_locked(coord_service_t *svc, int64_t revision)
{
    pending_clear_locked(svc);
    hist_clear_locked(svc);
    svc->hist_floor = revision;
    if (revision > svc->watch_rev) {
        svc->watch_rev = revision;
    }
    return detach_all_locked(svc);
}

/* Room for more pending events; false when out of memory. Caller holds
 * subs_lock. */
static bool grow_pending_locked(coord_service_t *svc)
{
    size_t cap = svc->cap_pending > 0 ? svc->cap_pending * 2 : 16;
    hist_event_t *p = realloc(svc->pending, cap * sizeof(*p));

    if (p == NULL) {
        return false;
    }
    svc->pending = p;
    svc->cap_pending = cap;
    return true;
}

uint64_t coord_service_watch_events_sent(coord_service_t *svc)
{
    return atomic_load(&svc->watch_events_sent);
}

uint64_t coord_service_watch_peer_refusals(coord_service_t *svc)
{
    return atomic_load(&svc->watch_peer_refusals);
}

size_t coord_service_watch_peers(coord_service_t *svc)
{
    size_t n;

    pthread_mutex_lock(&svc->subs_lock);
    /* The streams done give their share back first: a walk of up to
     * --max-watches streams, each call's lock taken, while publishing
     * waits; once a scrape (review-s30b L4). */
    subs_count_locked(svc);
    n = coord_peers_count(svc->watch_peers);
    pthread_mutex_unlock(&svc->subs_lock);
    return n;
}

void coord_service_watch_memory_ends(coord_service_t *svc, uint64_t *evicted_p, uint64_t *ended_p,
                                     uint64_t *refused_p)
{
    *evicted_p = atomic_load(&svc->watch_memory_evicted);
    *ended_p = atomic_load(&svc->watch_memory_ended);
    *refused_p = atomic_load(&svc->watch_memory_refused);
}

size_t coord_service_watch_queued_bytes(coord_service_t *svc)
{
    return rpc_send_budget_used(svc->watch_budget);
}

void coord_service_watch_behind(coord_service_t *svc, size_t *second_p, size_t *ten_p)
{
    size_t second = 0, ten = 0;

    /* A walk of every subscribed stream (not those ended and draining),
     * each call's lock taken, while publishing waits (about a millisecond
     * for --max-watches' default 10,000); once a scrape. */
    pthread_mutex_lock(&svc->subs_lock);
    for (sub_entry_t *s = svc->subs; s != NULL; s = s->next) {
        int64_t lag = s->evicted ? 0 : rpc_call_lag_ms(s->call);
        second += lag >= RPC_STUCK_MS;
        ten += lag >= WATCH_LAG_MAX_MS;
    }
    pthread_mutex_unlock(&svc->subs_lock);
    *second_p = second;
    *ten_p = ten;
}

/* Sends the gathered revision to every stream that matches any of it and
 * records it. Caller holds subs_lock; the streams that could not take it
 * (their end_status set) go to *ended_p, and to *lost_p every stream when
 * the revision could not be recorded. */
static void flush_locked(coord_service_t *svc, sub_entry_t **ended_p, sub_entry_t **lost_p)
{
    size_t n = svc->n_pending;
    int64_t revision = n > 0 ? svc->pending[0].revision : 0;
    const hist_event_t **ev = NULL;
    ProtobufCBinaryData *values = NULL;
    rpc_msg_t **msgs = NULL, **all = NULL;
    size_t n_all = 0;
    bool ok;

    if (n == 0) {
        return;
    }
    if (revision > svc->watch_rev) {
        svc->watch_rev = revision;
    }
    if (svc->subs_stopping) {
        pending_clear_locked(svc);
        return;
    }
    if (svc->hist == NULL) {
        svc->hist = calloc(SERVICE_WATCH_HISTORY, sizeof(*svc->hist));
    }
    evict_pass_begin(svc); /* a pass of its own (evict_locked) */
    ev = malloc(n * sizeof(*ev));
    values = malloc(n * sizeof(*values));
    msgs = malloc(n * sizeof(*msgs));
    all = malloc(n * sizeof(*all));
    ok = svc->hist != NULL && ev != NULL && values != NULL && msgs != NULL && all != NULL;
    for (size_t i = 0; ok && i < n; i++) {
        ev[i] = &svc->pending[i];
        values[i] = svc->pending[i].event;
    }
    /* Packed once for the streams that match all of it (most do). */
    ok = ok && pack_revision(svc, revision, svc->pending[0].published_ms, values, n, all, &n_all);
    if (!ok) {
        *lost_p = hist_lost_locked(svc, revision);
    } else {
        sub_entry_t **p = &svc->subs;
        while (*p != NULL) {
            sub_entry_t *s = *p;
            ferry_status_t status = FERRY_OK;
            if (revision >= s->start_revision && !s->evicted) {
                size_t k = sub_filter(s, ev, n, values);
                status = k == n ? sub_send_revision_locked(svc, s, revision, all, n_all, true, n)
                                : sub_send_matching_locked(svc, s, ev, n, values, msgs);
            }
            if (status != FERRY_OK && status != FERRY_ERR_CANCELLED) {
                s->end_status = status;
                unlink_sub_locked(svc, s);
                retire_locked(svc, s);
                s->next = *ended_p;
                *ended_p = s;
                continue;
            }
            p = &s->next;
        }
        sweep_evicted_locked(svc);
        for (size_t i = 0; i < n; i++) {
            hist_push_locked(svc, &svc->pending[i]);
        }
        svc->n_pending = 0;
    }
    for (size_t m = 0; m < n_all; m++) {
        rpc_msg_unref(all[m]);
    }
    free(ev);
    free(values);
    free(msgs);
    free(all);
}

/* Ends what flush_locked left to end. */
static void flush_ended(coord_service_t *svc, sub_entry_t *ended, sub_entry_t *lost,
                        int64_t revision)
{
    while (ended != NULL) {
        sub_entry_t *next = ended->next;
        end_sub(svc, ended);
        ended = next;
    }
    if (lost != NULL) {
        ferry_error("watch: no memory to record revision %lld; ending every stream",
                    (long long)revision);
        end_all(svc, lost, FERRY_ERR_OUT_OF_RANGE,
                "this replica could not record a change (out of memory); read the current state "
                "(Get or List), then Watch with start_revision = its header revision + 1");
    }
}

void service_watch_publish(coord_service_t *svc, coord_event_type_t type,
                           const Ferry__V1__Operation *op, int64_t revision)
{
    Ferry__V1__WatchEvent event = FERRY__V1__WATCH_EVENT__INIT;
    hist_event_t e = {.revision = revision,
                      .published_ms = ferry__clock_ns(CLOCK_MONOTONIC) / 1000000};
    sub_entry_t *ended = NULL, *lost = NULL;
    int64_t flushed = 0;

    event.type = type == COORD_EVENT_PUT ? FERRY__V1__WATCH_EVENT_TYPE__WATCH_EVENT_TYPE_PUT
                                         : FERRY__V1__WATCH_EVENT_TYPE__WATCH_EVENT_TYPE_DELETE;
    event.operation = (Ferry__V1__Operation *)op;
    e.event.len = ferry__v1__watch_event__get_packed_size(&event);
    e.event.data = malloc(e.event.len > 0 ? e.event.len : 1);
    e.request_id = strdup(op->request_id);
    if (e.event.data != NULL) {
        ferry__v1__watch_event__pack(&event, e.event.data);
    }

    pthread_mutex_lock(&svc->subs_lock);
    if (svc->n_pending > 0 && svc->pending[0].revision != revision) {
        flushed = svc->pending[0].revision;
        flush_locked(svc, &ended, &lost);
    }
    if (svc->subs_stopping) {
        event_free(&e); /* nothing to record or send to */
    } else if (e.event.data == NULL || e.request_id == NULL ||
               (svc->n_pending == svc->cap_pending && !grow_pending_locked(svc))) {
        event_free(&e);
        flushed = revision;
        lost = hist_lost_locked(svc, revision);
    } else {
        svc->pending[svc->n_pending++] = e;
    }
    pthread_mutex_unlock(&svc->subs_lock);
    flush_ended(svc, ended, lost, flushed);
}

void service_watch_flush(coord_service_t *svc)
{
    sub_entry_t *ended = NULL, *lost = NULL;
    int64_t revision;

    pthread_mutex_lock(&svc->subs_lock);
    revision = svc->n_pending > 0 ? svc->pending[0].revision : 0;
    flush_locked(svc, &ended, &lost);
    pthread_mutex_unlock(&svc->subs_lock);
    flush_ended(svc, ended, lost, revision);
}

/* The registry reloaded its view at `revision`: the changes it had not seen
 * were never published, so the history restarts there and every open stream
 * ends with OUT_OF_RANGE rather than silently missing them. */
void service_watch_reload(coord_service_t *svc, int64_t revision)
{
    sub_entry_t *all;
    char msg[384];

    pthread_mutex_lock(&svc->subs_lock);
    pending_clear_locked(svc); /* before the reload: never published */
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
    end_all(svc, all, FERRY_ERR_OUT_OF_RANGE, msg);
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
    pending_clear_locked(svc);
    free(svc->pending);
    svc->pending = NULL;
    svc->cap_pending = 0;
    pthread_mutex_unlock(&svc->subs_lock);
    end_all(svc, all, FERRY_ERR_UNAVAILABLE,
            "coordinator is shutting down; watch again on another replica");
}

void service_watch_destroy(coord_service_t *svc)
{
    while (svc->ended != NULL) {
        sub_entry_t *s = svc->ended;
        svc->ended = s->ended_next;
        sub_uncount_locked(svc, s); /* the server is gone: no lock to take */
        rpc_call_unref(s->call);
        free(s);
    }
}
