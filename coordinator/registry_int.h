/*
 * registry_int.h: the registry's insides, shared by registry.c (view, watch,
 * maintenance) and registry_ops.c (the RPC-facing operations).
 */
#ifndef FERRY_COORD_REGISTRY_INT_H
#define FERRY_COORD_REGISTRY_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include "registry.h"
#include "view.h"

struct coord_registry {
    etcd_client_t *etcd;
    char *prefix;        /* "/ferry/" */
    char *ops_prefix;    /* "/ferry/ops/" */
    char *claims_prefix; /* "/ferry/claims/" */
    int64_t default_ttl_s;
    coord_registry_params_t params;

    pthread_mutex_t lock; /* guards view, revision, synced */
    view_t view;
    /* The last revision the view applied (the load's, then each watch
     * event's): every change up to it is in the view. Write-throughs at or
     * below it are dropped (registry_view_put). */
    int64_t revision;
    bool synced; /* the view is loaded and its watch is connected */
    bool reload; /* the watch cannot resume: reload the view */

    etcd_watch_t *watch; /* touched by the maintenance thread only */
    atomic_bool healthy;

    pthread_t maint_thread;
    pthread_cond_t maint_cond; /* with lock; wakes the maintenance thread */
    bool stopping;             /* guarded by lock */

    const char *test_gate; /* FERRY_TEST_WRITE_THROUGH_GATE; see registry_view_put */
};

/* Builds "<prefix>ops/<id>" into buf; returns its length. */
size_t registry_key(const coord_registry_t *r, const char *sub_prefix, const char *id, char *buf,
                    size_t cap);

/* Applies a record the coordinator itself just wrote (write-through). */
void registry_view_put(coord_registry_t *r, const char *id, const uint8_t *bytes, size_t len,
                       int64_t mod_revision);

/* Removes a record the coordinator itself just deleted (write-through). */
void registry_view_remove(coord_registry_t *r, const char *id, int64_t mod_revision);

/* Turns an operation ERRORED when its claim (lease `claim_lease`) expired. */
void registry_expire_claim(coord_registry_t *r, const char *id, int64_t claim_lease);

int64_t registry_now_ms(void);

/* Writes the message into msg (cap bytes) and returns status, so a failure
 * reads as one step: return registry_fail(FERRY_ERR_X, msg, cap, "..."). */
ferry_status_t registry_fail(ferry_status_t status, char *msg, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The same for a failed etcd call: names etcd and the client's last error. */
ferry_status_t registry_etcd_fail(ferry_status_t status, char *msg, size_t cap, const char *what);

#endif /* FERRY_COORD_REGISTRY_INT_H */
