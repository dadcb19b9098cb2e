/*
 * metrics.h: the coordinator's Prometheus metrics, served over HTTP by
 * libmicrohttpd on --metrics-listen (GET /metrics, text exposition format
 * 0.0.4).
 *
 * What is counted comes in through hooks the lower layers offer, so neither
 * rpc/ nor etcd/ knows about metrics: coord_metrics_rpc_observer is the
 * rpc server's rpc_observer_t (calls by method and status code, latency,
 * calls in flight) and coord_metrics_etcd_observer the etcd client's
 * etcd_observer_t (requests by kind and result, latency). Gauges that
 * belong to other parts are read at scrape time through `sample`.
 */
#ifndef FERRY_COORD_METRICS_H
#define FERRY_COORD_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <ferry/status.h>

#include "common/op_state.h"
#include "etcd/etcd.h"
#include "rpc/rpc.h"

typedef struct coord_metrics coord_metrics_t;

/* Read at every scrape, on the HTTP thread. */
typedef struct {
    bool healthy;     /* Health answers SERVING (etcd reachable) */
    bool view_live;   /* the view is loaded and its etcd watch connected */
    size_t view_size; /* records in the view */
    size_t view_by_state[FERRY_OP_STATE_COUNT]; /* records in the view, by state */
    uint64_t watch_events_sent;                 /* events queued on Watch streams */
    size_t parked_waits;                        /* Lookup/Claim calls parked (wait_ms) */
    size_t watch_queued_bytes;                  /* unsent bytes on Watch streams, together */
    /* Watch streams whose clients read a second, ten seconds or more behind live */
    size_t watch_behind_1s, watch_behind_10s;
    /* Watch streams ended or refused to keep watch_queued_bytes bounded */
    uint64_t watch_memory_evicted, watch_memory_ended, watch_memory_refused;
    size_t watch_peers;             /* client hosts holding a Watch stream */
    size_t wait_peers;              /* client hosts holding a parked wait */
    uint64_t watch_peer_refusals;   /* Watch streams refused for their host's share */
    uint64_t wait_peer_refusals;    /* parked waits refused for their host's share */
    size_t read_peers;              /* client hosts holding a read waiting on etcd */
    size_t etcd_reads_held;         /* reads waiting on etcd, all hosts (running and queued) */
    uint64_t read_peer_refusals;    /* etcd reads refused for their host's share */
    size_t write_peers;             /* client hosts holding a write waiting on etcd */
    uint64_t write_peer_refusals;   /* etcd writes refused for their host's share */
    size_t renewal_peers;           /* client hosts holding a lease renewal waiting on etcd */
    uint64_t renewal_peer_refusals; /* lease renewals refused for their host's share */
    size_t stored_peers;            /* client hosts owning a record in the view */
    uint64_t stored_peer_refusals;  /* Registers refused for their host's stored share */
    uint64_t claim_ends_on_view; /* claims ended, settled on the view (coord_registry_claim_ends) */
    uint64_t claim_ends_checked; /* claims ended, checked by a transition */
    size_t claim_ends_waiting;   /* claim ends' writes waiting to be tried again */
    size_t claim_ends_pending;   /* claim ends waiting for room in the etcd work queue */
    /* Calls refused (Watch streams ended, for watch_queue) since start for a
     * bound of the whole replica, by the flag that sets it
     * (ferry_limit_refusals_total{limit}). */
    uint64_t refused_request_memory; /* --request-memory-mib */
    uint64_t refused_request_size;   /* a method's own bound on its request */
    uint64_t refused_max_waits;      /* --max-waits */
    uint64_t refused_max_watches;    /* --max-watches */
    uint64_t refused_watch_queue;    /* --watch-queue-kib */
    uint64_t refused_etcd_queue;     /* --etcd-inflight + --etcd-queue */
    size_t request_bytes_held;       /* requests' bytes held by calls in progress */
    size_t reply_bytes_held;         /* reads' replies not yet taken */
    /* The bounds configured (ferry_limit{name}); 0: none. */
    size_t limit_max_waits, limit_max_watches;
    size_t limit_request_memory_bytes, limit_watch_memory_bytes, limit_watch_queue_bytes;
} coord_metrics_sample_t;

typedef struct {
    const char *listen;  /* "127.0.0.1:9400", "0.0.0.0:9400"; port 0 picks one */
    const char *version; /* for ferry_build_info */
    const char *name;    /* this replica's name, for ferry_build_info (escaped there) */
    void (*sample)(void *arg, coord_metrics_sample_t *out); /* NULL: none */
    void *sample_arg;
} coord_metrics_params_t;

/* Allocates the counters; does not serve yet. */
ferry_status_t coord_metrics_create(const coord_metrics_params_t *params,
                                    coord_metrics_t **metrics_p);

/* Starts the HTTP server; *port_p (may be NULL) gets the bound port.
 * FERRY_ERR_INVALID_ARGUMENT for an address coord_config_metrics_addr
 * refuses (config.h: the configuration refused it already), FERRY_ERR_IO
 * when it cannot bind (both logged). It serves at most
 * METRICS_HTTP_MAX_CONNECTIONS connections, METRICS_HTTP_MAX_PER_ADDRESS
 * from one address, each closed after METRICS_HTTP_IDLE_TIMEOUT_S idle
 * (metrics.c says why). */
ferry_status_t coord_metrics_start(coord_metrics_t *metrics, int *port_p);

/* Sets what `sample` is called with (the registry exists only after the
 * server and the etcd client, which need the observers, are made). */
void coord_metrics_set_sample_arg(coord_metrics_t *metrics, void *arg);

/* Stops serving (the hooks still count). NULL is a no-op. */
void coord_metrics_stop(coord_metrics_t *metrics);

/* Stops serving and frees; after the server, the etcd client and the
 * registry are gone, since their hooks count into it. NULL is a no-op. */
void coord_metrics_destroy(coord_metrics_t *metrics);

/* The hooks, to put in rpc_server_params_t and etcd_params_t. */
rpc_observer_t coord_metrics_rpc_observer(coord_metrics_t *metrics);
etcd_observer_t coord_metrics_etcd_observer(coord_metrics_t *metrics);

/* Counts a change this replica's view applied (registry.h, "Events"): by
 * type and state, and as a lease expiry (a DELETE reported EXPIRED) or a
 * claim expiry (a PUT to ERRORED with FERRY_ERR_EXPIRED). */
void coord_metrics_count_event(coord_metrics_t *metrics, bool is_delete, int state,
                               int32_t error_code);

/* The exposition text (malloc'd; free it), as GET /metrics answers. For
 * tests and for the HTTP handler. */
char *coord_metrics_render(coord_metrics_t *metrics);

#endif /* FERRY_COORD_METRICS_H */
