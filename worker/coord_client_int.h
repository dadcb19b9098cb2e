/*
 * coord_client_int.h: the coordinator client's state and what its three
 * files share: coord_client.c (binding operations, the public API),
 * coord_session.c (the session lease; the session and renewal threads, and
 * what they do for a link) and coord_watch.c (the watch thread).
 *
 * Locking: coord->lock guards the link list, every link's fields and the
 * session lease. A link the session thread works on outside the lock is
 * marked busy; unlinking (on DESTROY) waits until it is not. The data plane
 * tells listeners without holding its connector lock.
 */
#ifndef FERRY_WORKER_COORD_CLIENT_INT_H
#define FERRY_WORKER_COORD_CLIENT_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "common/clock.h"
#include "common/md_rules.h"
#include "ferry/coordinator.h"
#include "ferry/v1/coordinator.pb-c.h"
#include "rpc/rpc.h"
#include "worker/coord_client.h"

/* After ferry/ferry.h: it gives ferry__op_state_status. */
#include "common/op_state.h"

#define COORD_DEFAULT_TIMEOUT_MS 10000
#define COORD_DEFAULT_TTL_S      10
/* The longest lease TTL the renewals follow: the coordinator's answer names
 * the TTL, and a broken or hostile one's (up to 2^63 s) would overflow the
 * period in milliseconds into a renewal loop that never waits. A lease with
 * a longer TTL is renewed as often as one of this. */
#define COORD_MAX_TTL_S 86400
#define COORD_PATH(m)   "/ferry.v1.Coordinator/" m
#define LEASE_TOKEN_CAP 129 /* the coordinator's are 64 hex characters */

typedef struct coord_link {
    struct coord_link *next;
    ferry_coordinator_t *coord;
    ferry_op_t *op;
    bool passive;
    char request_id[FERRY_REQUEST_ID_MAX + 1]; /* the coordinator accepted none longer */
    char token[FERRY_TOKEN_MAX + 1];
    int64_t lease_id;                  /* the lease the record (passive) or claim (active) is on */
    char lease_token[LEASE_TOKEN_CAP]; /* lease_id's (active: Complete shows it) */
    uint64_t claim_id;                 /* active: the claim's, for Complete */
    int64_t due_ms;                    /* next retry (release, report), monotonic */
    bool look_due;                     /* the record may have changed: look */
    int look_tries;                    /* Gets failed in a row (look_due_ms: the next) */
    int64_t look_due_ms;
    /* The watch's latest event for the record (ev_valid): looked at as it
     * is, without a Get. A new stream clears it (then the look is a Get). */
    bool ev_valid;
    bool ev_gone; /* deleted because its owner's lease expired */
    ferry_op_state_t ev_state;
    char ev_message[256];
    /* The record is final (or gone), as the watch told it; kept across
     * streams. A releasing link waits for it (on_destroy). */
    bool record_final;
    bool busy;       /* the session thread is using it outside the lock */
    bool looking_up; /* ... for a look (its Get, or the event it applies) */
    bool looking;    /* ... and its operation (the look's apply): destroy waits for that */
    bool told;       /* the end is known here (FINAL, or DESTROY first) */
    bool report_due;
    bool reported;
    ferry_op_status_t final_status;
    /* The owner destroyed the passive operation (op is NULL): the session
     * thread releases the record once it is final, then frees the link. */
    bool releasing;
    int release_tries;         /* Releases (or Cancels) refused in a row, for the back-off */
    int64_t destroyed_ms;      /* when the owner destroyed it (monotonic) */
    bool cancel_due;           /* a Cancel must go (and be taken) before the Release */
    bool cancel_forced;        /* ... because the record stayed open 2 x TTL past the destroy */
    const char *cancel_reason; /* a static string */
    /* Active: the claim was granted before the transfer began (an active
     * link exists only then). The outcome is kept here, so that the report
     * (Complete) can be sent after the operation is destroyed (op is NULL
     * then); a report the coordinator could not take is tried again
     * (report_tries: how often, for the back-off). */
    int report_tries;
    /* A claim nobody follows (abandon), or a failed publish's record to take
     * back (take_back): refusals are quiet. */
    bool abandoned;
    ferry_status_t final_code;
    char final_message[256];
} coord_link_t;

struct ferry_coordinator {
    rpc_channel_t *channel;
    int timeout_ms;
    pthread_mutex_t lock;
    pthread_cond_t cond; /* wakes the session thread; busy -> idle; session made */
    coord_link_t *links;
    /* Records failed publishes may have left under their callers' tokens,
     * taken back when their operations are destroyed (coord_client.c,
     * unsure_keep); guarded by that file's unsure_lock, not by lock. */
    struct coord_unsure *unsure;
    bool stopping;
    /* Under lock: calls of the API in flight on callers' threads (publish,
     * a by-ID begin), which disconnect refuses to free the client under
     * (FERRY_ERR_BUSY); closing: disconnect has begun, and they are
     * refused. */
    unsigned callers;
    bool closing;
    pthread_t thread;
    pthread_t renewer; /* renews the session lease, and does nothing else */
    pthread_t watcher;
    /* Under lock. watch_rev: the header revision of the last message read
     * on a stream that ended its revision (0: none, the next stream is
     * fresh). The counts are for
     * tests (ferry__coord_watch_stats). */
    int64_t watch_rev;
    uint64_t watches;      /* fresh streams created (the resync count) */
    uint64_t resumes;      /* streams resumed at watch_rev + 1 */
    uint64_t out_of_range; /* streams refused or ended with OUT_OF_RANGE */
    uint64_t gets;         /* records read with a Get (a look without an event) */
    uint64_t renewals;     /* KeepAlives of the session lease that succeeded */

    /* The session lease, under lock. 0: none yet (or lost). */
    int64_t session_lease;
    char session_token[LEASE_TOKEN_CAP]; /* its lease token */
    /* Written under lock, but read without it too (period_ms: by the
     * renewer and the session thread between their calls). */
    _Atomic int64_t session_ttl_s;
    int64_t session_due_ms;
    int session_renew_tries; /* keep-alives failed in a row */
    bool session_making;     /* an RPC that will make it is in flight */

    /* Set by disconnect: every call from then on (the session thread's
     * last ones, then the final tries) ends by it (monotonic; 0: no such
     * bound). */
    _Atomic int64_t final_deadline_ms;
    /* Set by an interrupted disconnect: the client's own threads' calls
     * end (their interrupt check, ferry__coord_aborting). */
    _Atomic bool aborting;
};

/* The interrupt check (rpc_interrupt_set) of the client's own threads. */
static inline bool ferry__coord_aborting(void *arg)
{
    return atomic_load(&((ferry_coordinator_t *)arg)->aborting);
}

/* A call whose answer did not come: no answer within its deadline
 * (TIMED_OUT), no replica reached or the coordinator's own UNAVAILABLE (etcd
 * did not answer it in time), or the server's CANCELLED (a replica shutting
 * down cancels the calls that reach it late, and ends those its grace did
 * not see through). Such a call may have been applied, and may be sent
 * again: a Register that failed so is unsure (coord_client.c), and the
 * session thread's reports and releases try again (coord_session.c).
 * Not ask_again (coord_client.c), where a Lookup wait's TIMED_OUT means
 * "no record". */
static inline bool ferry__coord_unanswered(ferry_status_t status)
{
    return status == FERRY_ERR_UNAVAILABLE || status == FERRY_ERR_TIMED_OUT ||
           status == FERRY_ERR_CANCELLED;
}

/* A call the coordinator did not take: no answer (ferry__coord_unanswered),
 * or refused RESOURCE_EXHAUSTED by a bound it checks before anything is
 * written (a full etcd queue, a client host's share, the requests held):
 * the session thread's reports, cancels and releases are sent again, with
 * their back-off. Given up on, a refused Complete left the record CLAIMED
 * for as long as the writer's session lived (review-s33b M1). */
static inline bool ferry__coord_not_taken(ferry_status_t status)
{
    return ferry__coord_unanswered(status) || status == FERRY_ERR_RESOURCE_EXHAUSTED;
}

static inline int64_t now_ms(void)
{
    return ferry__clock_ms(CLOCK_MONOTONIC);
}

static inline int64_t period_ms(const ferry_coordinator_t *coord)
{
    int64_t ttl = atomic_load_explicit(&coord->session_ttl_s, memory_order_relaxed);

    ttl = ttl > 0 ? ttl : COORD_DEFAULT_TTL_S;
    return (ttl < COORD_MAX_TTL_S ? ttl : COORD_MAX_TTL_S) * 1000 / 3;
}

/* The pause before try number `tries` + 1 of a report: 50 ms, doubling, at
 * most a period. */
static inline int64_t retry_ms(const ferry_coordinator_t *coord, int tries)
{
    int64_t ms = 50;
    for (int i = 1; i < tries && ms < period_ms(coord); i++) {
        ms *= 2;
    }
    return ms < period_ms(coord) ? ms : period_ms(coord);
}

/* A unary call to the coordinator, bounded by the client's timeout (plus
 * extra_ms), and after disconnect by what is left of its final deadline. */
static inline ferry_status_t call(ferry_coordinator_t *coord, const char *path,
                                  const ProtobufCMessage *req,
                                  const ProtobufCMessageDescriptor *desc, int64_t extra_ms,
                                  void *resp_p, rpc_error_t *err)
{
    int64_t timeout_ms = coord->timeout_ms + extra_ms;
    int64_t deadline = atomic_load(&coord->final_deadline_ms);

    if (deadline != 0 && deadline - now_ms() < timeout_ms) {
        timeout_ms = deadline - now_ms();
        timeout_ms = timeout_ms > 1 ? timeout_ms : 1;
    }
    return rpc_unary(coord->channel, path, req, desc, (int)timeout_ms, (ProtobufCMessage **)resp_p,
                     err);
}

static inline void timed_wait(pthread_cond_t *cond, pthread_mutex_t *lock, int64_t ms)
{
    struct timespec until = ferry__clock_in_ms(CLOCK_MONOTONIC, ms);
    pthread_cond_timedwait(cond, lock, &until);
}

/* A caller's wait on the client's cond (lock held; ms < 0: no limit) that
 * its interrupt check can end: with a check, at most RPC_INTERRUPT_POLL_MS,
 * then the check is called without the lock (its caller may take locks of
 * its own: a binding's interpreter lock). True once it tripped (rpc.h: it
 * stays tripped); the caller looks at its condition again either way. */
static inline bool interruptible_wait(pthread_cond_t *cond, pthread_mutex_t *lock, int64_t ms)
{
    bool stop;

    if (!rpc_interrupt_armed()) {
        if (ms < 0) {
            pthread_cond_wait(cond, lock);
        } else {
            timed_wait(cond, lock, ms);
        }
        return false;
    }
    timed_wait(cond, lock, ms >= 0 && ms < RPC_INTERRUPT_POLL_MS ? ms : RPC_INTERRUPT_POLL_MS);
    pthread_mutex_unlock(lock);
    stop = rpc_interrupted();
    pthread_mutex_lock(lock);
    return stop;
}

/* ---- coord_session.c ---- */

/* The session lease (see coord_session.c): the lease for a new record or
 * claim, or 0 when this caller is to make it (*making_p); after the RPC,
 * ferry__coord_session_made adopts what it made; ferry__coord_session_was_lost
 * says whether the call failed because etcd lost the lease (try once more). */
int64_t ferry__coord_session_take(ferry_coordinator_t *coord, bool *making_p, char *token);
void ferry__coord_session_made(ferry_coordinator_t *coord, bool making, int64_t lease,
                               int64_t ttl_s, const char *token);
/* Disconnect, once the client's threads are gone and nothing is left on the
 * session lease: ends the lease at the coordinator (Revoke) within the
 * final deadline, rather than leave it to expire. A failure is logged. */
void ferry__coord_session_end(ferry_coordinator_t *coord);
bool ferry__coord_session_was_lost(ferry_coordinator_t *coord, int64_t lease,
                                   ferry_status_t status);

/* A destroyed passive operation's Release (after the Cancel it owes), and
 * an active one's Complete: true when done, false to try again later. */
bool ferry__coord_release_passive(coord_link_t *link);
bool ferry__coord_report_active(coord_link_t *link);

/* Takes a link off the list; lock held. */
void ferry__coord_link_remove(ferry_coordinator_t *coord, coord_link_t *link);

/* The threads' bodies (arg: the ferry_coordinator_t). */
/* A granted claim, or (status not OK) the lease it would be on. */
typedef struct {
    int64_t lease;               /* the claim's lease (failed: the session's, 0 if none yet) */
    char token[LEASE_TOKEN_CAP]; /* its token */
    uint64_t id;                 /* the claim's identity (granted) */
    int64_t ttl_s;               /* a new lease's TTL (granted; 0: the session's own) */
    void *answer;                /* granted: the answer as it came (free it) */
    const uint8_t *md;           /* granted: the operation's metadata, inside answer */
    size_t md_len;
} claim_out_t;

/* Reads a granted Claim's answer, out->answer[len] (coord_client.c), on
 * its bytes, nothing unpacked: the claim's lease, token and identity, and
 * the span of its metadata, bounded (audit-s32 L1). Here for tests. */
ferry_status_t ferry__coord_claim_read(const ferry_claim_params_t *p, claim_out_t *out, size_t len);

void *ferry__coord_session_main(void *arg);
void *ferry__coord_renew_main(void *arg);

/* ---- coord_watch.c ---- */

void *ferry__coord_watch_main(void *arg);

#endif /* FERRY_WORKER_COORD_CLIENT_INT_H */
