/*
 * service.h: ferry.v1.Coordinator's handlers over the registry, plus the two
 * things that hold calls open: waits (Lookup/Claim with wait_ms) and Watch
 * streams fed by the registry's one etcd watch.
 *
 * Threads: handlers run on the RPC layer's completion-queue threads. The
 * write RPCs (Register, Claim, Complete, Cancel, Release, KeepAlive) only
 * validate there and hand their etcd work to the etcd work queue (exec.h),
 * which answers them; reads (Lookup, Get, List) and Health never queue
 * behind a write: a read the view cannot answer, and List, run on a pool
 * of read workers of their own. Events
 * arrive on the registry's watch thread, which only marks waits ready and
 * queues stream messages. A wait thread of the service's own re-runs ready
 * waits and fails expired ones, so no completion-queue thread ever blocks on
 * a wait. `waits_lock` guards the wait list; `subs_lock` the subscribers.
 */
#ifndef FERRY_COORD_SERVICE_H
#define FERRY_COORD_SERVICE_H

#include <stdbool.h>

#include <ferry/status.h>

#include "exec.h"
#include "registry.h"
#include "rpc/rpc.h"

typedef struct coord_service coord_service_t;

typedef struct {
    const char *name;        /* this replica's name, for response headers */
    coord_exec_t *exec;      /* runs the write RPCs (exec.h); outlives the service's calls */
    coord_exec_t *read_exec; /* runs the reads that need etcd; likewise */
    /* Bytes a Watch stream may have queued that its client has not taken;
     * past it the stream ends with RESOURCE_EXHAUSTED. 0: 4 MiB. */
    size_t watch_queue_bytes;
    /* What every Watch stream's messages that their clients have not
     * taken may hold in memory together; a revision (or a replay's) that
     * would pass it ends a stream further behind whose client does not
     * keep up, or that alone holds bytes, with RESOURCE_EXHAUSTED
     * (service_watch.c). 0: 256 MiB. */
    size_t watch_memory_bytes;
    /* Lookup and Claim calls that may wait parked (wait_ms) at once; past
     * it one that would park ends with RESOURCE_EXHAUSTED. 0: 10000. */
    size_t max_waits;
    /* Watch streams that may be open at once; past it a new one ends with
     * RESOURCE_EXHAUSTED. 0: 10000. */
    size_t max_watches;
    /* The most of those (and of max_waits) one client host may hold, its
     * address without the port counting every connection of it; past it
     * its next one ends with RESOURCE_EXHAUSTED. 0: no such share. */
    size_t max_watches_per_peer;
    size_t max_waits_per_peer;
    /* The most of the reads on read_exec (running and queued) one client
     * host may hold; past it its next ends with RESOURCE_EXHAUSTED. 0: no
     * such share. */
    size_t max_reads_per_peer;
    /* The most of the writes on exec (running and queued) one client host
     * may hold, and as many of its lease renewals (KeepAlive, exec's lane
     * of its own); past it its next ends with RESOURCE_EXHAUSTED. 0: no
     * such share. */
    size_t max_writes_per_peer;
} coord_service_params_t;

/* Adds ferry.v1.Coordinator to `server` (before rpc_server_start). The
 * registry is attached later, with coord_service_attach. */
/* Events queued on Watch streams since start (each stream's copy counts;
 * replays included), for metrics. Any thread. */
uint64_t coord_service_watch_events_sent(coord_service_t *svc);
/* Lookup and Claim calls parked now, for metrics. Any thread. */
size_t coord_service_parked_waits(coord_service_t *svc);
/* Client hosts holding a Watch stream (counted against --max-watches), and
 * holding a parked wait, for metrics. Any thread. */
size_t coord_service_watch_peers(coord_service_t *svc);
size_t coord_service_wait_peers(coord_service_t *svc);
/* Watch streams and parked waits refused since start because their host
 * held its share (--max-watches-per-peer, --max-waits-per-peer), for
 * metrics. Any thread. */
uint64_t coord_service_watch_peer_refusals(coord_service_t *svc);
uint64_t coord_service_wait_peer_refusals(coord_service_t *svc);
/* Client hosts holding a read on read_exec and the reads they hold
 * (running and queued), and the reads refused since start because their
 * host held its share (max_reads_per_peer), for metrics. Any thread. */
void coord_service_reads_held(coord_service_t *svc, size_t *hosts_p, size_t *reads_p);
uint64_t coord_service_read_peer_refusals(coord_service_t *svc);
/* Client hosts holding a write on exec (running and queued), and the
 * writes refused since start because their host held its share
 * (max_writes_per_peer); with `renewals`, the same of lease renewals
 * (KeepAlive), which have a share of their own. For metrics; any thread. */
size_t coord_service_write_peers(coord_service_t *svc, bool renewals);
uint64_t coord_service_write_peer_refusals(coord_service_t *svc, bool renewals);
/* What Watch streams' messages that their clients have not taken hold in
 * memory (a message shared by streams once, each queue entry's overhead),
 * for metrics. Any thread. */
size_t coord_service_watch_queued_bytes(coord_service_t *svc);
/* Watch streams whose clients read a second or more behind live (the
 * oldest message not taken was queued that long ago), and of them those
 * ten seconds or more behind: --watch-memory-mib may end them for room. */
void coord_service_watch_behind(coord_service_t *svc, size_t *second_p, size_t *ten_p);
/* Watch streams since start that --watch-memory-mib ended, what they held
 * dropped, to make room for another's revision (evict_tier);
 * ended because their own revision did not fit, none being further
 * behind; and refused because their first message did not. For metrics.
 * Any thread. */
void coord_service_watch_memory_ends(coord_service_t *svc, uint64_t *evicted_p, uint64_t *ended_p,
                                     uint64_t *refused_p);

/* Calls refused since start because a bound of the whole replica was
 * reached, for metrics: parked waits past max_waits (--max-waits), Watch
 * streams past max_watches (--max-watches), Watch streams ended for
 * watch_queue_bytes (--watch-queue-kib), and calls refused because their
 * pool's workers and queue were full (--etcd-inflight, --etcd-queue).
 * Any thread. */
typedef struct {
    uint64_t max_waits;
    uint64_t max_watches;
    uint64_t watch_queue;
    uint64_t etcd_queue;
} coord_service_refusals_t;
void coord_service_limit_refusals(coord_service_t *svc, coord_service_refusals_t *out);

/* The bounds the service was made with, its defaults taken, for metrics.
 * Any thread. */
typedef struct {
    size_t max_waits;
    size_t max_watches;
    size_t watch_queue_bytes;
    size_t watch_memory_bytes;
} coord_service_limits_t;
void coord_service_limits(coord_service_t *svc, coord_service_limits_t *out);

ferry_status_t coord_service_create(const coord_service_params_t *params, rpc_server_t *server,
                                    coord_service_t **service_p);

void coord_service_attach(coord_service_t *service, coord_registry_t *registry);

/* The registry's callbacks (coord_registry_params_t.on_event, ...), with
 * the service as arg. */
void coord_service_on_event(void *arg, coord_event_type_t type, const Ferry__V1__Operation *op,
                            int64_t revision);
void coord_service_on_events_done(void *arg);
void coord_service_on_reload(void *arg, int64_t revision);
/* Every parked wait whose record the view now holds looks again. */
void coord_service_on_synced(void *arg);
void coord_service_on_health(void *arg, bool healthy);

/* Ends every wait and stream with UNAVAILABLE ("shutting down") and stops
 * taking new ones. Call before rpc_server_shutdown. */
void coord_service_stop(coord_service_t *service);

void coord_service_destroy(coord_service_t *service);

#endif /* FERRY_COORD_SERVICE_H */
