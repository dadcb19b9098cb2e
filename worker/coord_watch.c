/*
 * coord_watch.c: the coordinator client's watch thread.
 *
 * One watch thread per ferry_coordinator_t holds one Watch stream while
 * links exist, and hands a link the record of each event that names it.
 * The contract has no multi-ID watch, so the stream watches every ID ("*")
 * and events for other IDs are dropped here. The thread remembers the
 * revision of the last message it read (watch_rev: the `created` header of
 * a fresh stream, then each message's, which carries a revision whole;
 * not a `fragment`, the part of a revision that has more), and when a
 * stream breaks it resumes
 * with start_revision = watch_rev + 1: the replica replays what changed
 * while no stream was up, so no record is read again. A fresh stream (none
 * remembered: the first, one after the stream was closed for want of
 * links, or after OUT_OF_RANGE, when the replica no longer holds those
 * changes because it restarted or reloaded its view) marks every link
 * instead (re-Get after re-Watch: whatever changed before the stream is
 * read, whatever changes later is an event).
 *
 * Locking: see coord_client_int.h.
 */
#include "worker/coord_client_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/text.h"
#include "worker/errors.h"

/* ---- the watch -------------------------------------------------------------- */

#define WATCH_READ_MS    200 /* how often the watch thread looks at stopping */
#define WATCH_BACKOFF_MS 100 /* first pause after a failed or ended stream */

/* Whether disconnect has begun (its threads are to stop). */
static bool watch_stopping(ferry_coordinator_t *coord)
{
    pthread_mutex_lock(&coord->lock);
    bool stopping = coord->stopping;
    pthread_mutex_unlock(&coord->lock);
    return stopping;
}

/* A Watch stream over every record from start_revision (0: fresh),
 * created (its first message read); *created_rev_p: that message's header
 * revision. NULL on failure, *status_p saying why (FERRY_ERR_OUT_OF_RANGE:
 * the replica no longer holds the changes from start_revision). */
static rpc_stream_t *watch_open(ferry_coordinator_t *coord, int64_t start_revision,
                                int64_t *created_rev_p, ferry_status_t *status_p)
{
    Ferry__V1__WatchRequest req = FERRY__V1__WATCH_REQUEST__INIT;
    Ferry__V1__WatchResponse *first = NULL;
    rpc_stream_t *stream = NULL;
    rpc_error_t err = {0};
    ferry_status_t status;

    req.request_id_prefix = "*";
    req.start_revision = start_revision;
    status = rpc_stream_open(coord->channel, COORD_PATH("Watch"), &req.base,
                             &ferry__v1__watch_response__descriptor, 0, &stream);
    /* Read in slices, so that disconnect (stopping; interrupted: aborting)
     * does not wait for a frozen replica's timeout. */
    for (int64_t until = now_ms() + coord->timeout_ms; status == FERRY_OK;) {
        int64_t left = until - now_ms();
        status =
            rpc_stream_read(stream, left < WATCH_READ_MS ? (left > 1 ? left : 1) : WATCH_READ_MS,
                            (ProtobufCMessage **)&first, &err);
        if (status != FERRY_ERR_TIMED_OUT || now_ms() >= until || atomic_load(&coord->aborting) ||
            watch_stopping(coord)) {
            break;
        }
        status = FERRY_OK;
    }
    if (status != FERRY_OK || first == NULL || !first->created) {
        ferry_debug("coordinator watch: not created (from revision %" PRId64 "): %s",
                    start_revision, status != FERRY_OK ? err.message : "no created message");
        if (first != NULL) {
            ferry__v1__watch_response__free_unpacked(first, NULL);
        }
        rpc_stream_destroy(stream);
        *status_p = status != FERRY_OK ? status : FERRY_ERR_UNAVAILABLE;
        return NULL;
    }
    *created_rev_p = first->header != NULL ? first->header->revision : 0;
    ferry__v1__watch_response__free_unpacked(first, NULL);
    *status_p = FERRY_OK;
    return stream;
}

/* Marks links look_due: every one, to be read with a Get (ev NULL: a new
 * stream), or those of ev's record, with what it says. Lock held. */
static void mark_look(ferry_coordinator_t *coord, const Ferry__V1__WatchEvent *ev)
{
    for (coord_link_t *l = coord->links; l != NULL; l = l->next) {
        if (ev == NULL) {
            l->look_due = true;
            l->ev_valid = false;
        } else if (strcmp(l->request_id, ev->operation->request_id) == 0) {
            l->look_due = true;
            l->ev_valid = true;
            l->ev_state = ev->operation->state;
            l->ev_gone = ev->type == FERRY__V1__WATCH_EVENT_TYPE__WATCH_EVENT_TYPE_DELETE &&
                         ev->operation->state == FERRY_OP_EXPIRED;
            ferry_utf8_format(l->ev_message, sizeof(l->ev_message), "%s",
                              ev->operation->error_message != NULL ? ev->operation->error_message
                                                                   : "");
            if (ferry__op_state_is_final(l->ev_state) ||
                ev->type == FERRY__V1__WATCH_EVENT_TYPE__WATCH_EVENT_TYPE_DELETE) {
                l->record_final = true;
                l->due_ms = l->releasing ? now_ms() : l->due_ms; /* release it now */
            }
        }
    }
    pthread_cond_broadcast(&coord->cond);
}

/* Reads events until the stream ends, stopping is set or no link has been
 * left for a period (a client that binds one operation after another keeps
 * its stream). Returns true when the next stream must be fresh: the stream
 * was closed for want of links (a resume would replay what nobody
 * follows), or ended with OUT_OF_RANGE. Lock NOT held. */
static bool watch_follow(ferry_coordinator_t *coord, rpc_stream_t *stream)
{
    int64_t empty_since = 0;

    for (;;) {
        Ferry__V1__WatchResponse *msg = NULL;
        rpc_error_t err;
        ferry_status_t status =
            rpc_stream_read(stream, WATCH_READ_MS, (ProtobufCMessage **)&msg, &err);
        bool over;

        pthread_mutex_lock(&coord->lock);
        if (coord->links != NULL) {
            empty_since = 0;
        } else if (empty_since == 0) {
            empty_since = now_ms();
        }
        over = coord->stopping || (empty_since != 0 && now_ms() - empty_since > period_ms(coord));
        if (status == FERRY_OK && msg != NULL) {
            for (size_t i = 0; i < msg->n_events; i++) {
                const Ferry__V1__WatchEvent *ev = msg->events[i];
                if (ev->operation != NULL) {
                    mark_look(coord, ev);
                }
            }
            if (msg->n_events > 0 && !msg->fragment && msg->header != NULL &&
                msg->header->revision > coord->watch_rev) {
                coord->watch_rev = msg->header->revision;
            }
        }
        coord->out_of_range += status == FERRY_ERR_OUT_OF_RANGE;
        pthread_mutex_unlock(&coord->lock);
        if (msg != NULL) {
            ferry__v1__watch_response__free_unpacked(msg, NULL);
        }
        if (over || (status != FERRY_OK && !rpc_stream_idle(status, &err)) ||
            (status == FERRY_OK && msg == NULL)) {
            if (!over) {
                ferry_debug("coordinator watch: stream ended: %s", err.message);
            }
            return over || status == FERRY_ERR_OUT_OF_RANGE;
        }
    }
}

void *ferry__coord_watch_main(void *arg)
{
    ferry_coordinator_t *coord = arg;
    int64_t backoff = WATCH_BACKOFF_MS;

    pthread_mutex_lock(&coord->lock);
    while (!coord->stopping) {
        if (coord->links == NULL) {
            pthread_cond_wait(&coord->cond, &coord->lock);
            continue;
        }
        int64_t from = coord->watch_rev > 0 ? coord->watch_rev + 1 : 0, created_rev = 0;
        ferry_status_t status;
        pthread_mutex_unlock(&coord->lock);
        rpc_stream_t *stream = watch_open(coord, from, &created_rev, &status);
        pthread_mutex_lock(&coord->lock);
        if (stream == NULL && status == FERRY_ERR_OUT_OF_RANGE && from != 0) {
            /* The replica no longer holds the changes since watch_rev: a
             * fresh stream, at once. */
            ferry_debug("coordinator watch: cannot resume at revision %" PRId64
                        "; watching afresh and reading every record",
                        from);
            coord->out_of_range++;
            coord->watch_rev = 0;
            continue;
        }
        if (stream == NULL) {
            /* Not once disconnect began: its wake-up may have come while
             * the lock was let go above, and the pause would outlast it. */
            if (!coord->stopping) {
                timed_wait(&coord->cond, &coord->lock, backoff);
            }
            backoff = backoff * 2 < period_ms(coord) ? backoff * 2 : period_ms(coord);
            continue;
        }
        backoff = WATCH_BACKOFF_MS;
        if (from == 0) {
            /* Re-Get after re-Watch: the record of every link is read again. */
            coord->watches++;
            coord->watch_rev = created_rev;
            mark_look(coord, NULL);
        } else {
            coord->resumes++; /* the stream replays what changed meanwhile */
        }
        pthread_mutex_unlock(&coord->lock);
        bool fresh = watch_follow(coord, stream);
        rpc_stream_destroy(stream);
        pthread_mutex_lock(&coord->lock);
        if (fresh) {
            coord->watch_rev = 0;
        }
    }
    pthread_mutex_unlock(&coord->lock);
    return NULL;
}
