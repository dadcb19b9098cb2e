/*
 * rpc_server.c: the gRPC server's life: create, add services, start, run
 * completion-queue threads, shut down.
 *
 *   CREATED --start--> RUNNING --shutdown--> STOPPING --drained--> STOPPED
 *
 * RUNNING: each registered method keeps `calls_armed` calls requested from
 * gRPC (GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, so the request arrives
 * with the call), plus as many for unregistered methods, which are answered
 * UNIMPLEMENTED. Each delivered call re-arms one, under server->lock, so
 * nothing is re-armed once shutdown has begun. A re-arm that fails is owed
 * and retried (server_pay_arms): on the next delivery, and from the queue's
 * threads every RPC_REARM_RETRY_MS while any is owed, so a pool never
 * shrinks for good.
 *
 * Shutdown: grpc_server_shutdown_and_notify, wait up to the grace period
 * for the in-flight calls, then grpc_server_cancel_all_calls (held calls see
 * their cancel callbacks run and are ended), wait for the notification,
 * stop the drain thread (rpc_drain.c), shut the queue down, let the threads
 * drain it to GRPC_QUEUE_SHUTDOWN, join them, destroy server and queue.
 *
 * Threads: the public functions may be called from any thread but a server
 * thread (shutdown joins them); beside the queue's threads, one drain
 * thread runs from start to shutdown. server->lock guards state and
 * notified.
 */
#include "rpc/rpc_int.h"

#include <grpc/compression.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/log.h"

#define RPC_DEFAULT_THREADS             2
#define RPC_DEFAULT_ARMED               8
#define RPC_SERVER_KEEPALIVE_MS         60000
#define RPC_SERVER_KEEPALIVE_TIMEOUT_MS 20000
#define RPC_MAX_STREAMS_PER_CONNECTION  1024
#define RPC_REARM_RETRY_MS              100
/* What a server's gRPC resource quota allows beyond its held-request
 * bound: gRPC counts the requests the bound counts too (a delivered one
 * until it is read, and every one it is reading), so a quota of the bound
 * alone would have gRPC reset calls before the bound's own answer
 * (RESOURCE_EXHAUSTED, saying so) could refuse them: under ASan, with
 * parked Lookups filling a 4 MiB bound, it did. */
#define RPC_QUOTA_SLACK ((size_t)32 << 20)

/* --- completion-queue threads ---------------------------------------------- */

static int *server_owed(rpc_server_t *server, rpc_method_entry_t *method)
{
    return method != NULL ? &method->arms_owed : &server->unknown_arms_owed;
}

/* Arms every call owed, stopping at the first failure (tried again later).
 * Under server->lock, while RUNNING. */
static void server_pay_arms(rpc_server_t *server)
{
    for (size_t i = 0; i <= server->methods.n_rows; i++) {
        rpc_method_entry_t *method = i < server->methods.n_rows ? server->methods.rows[i] : NULL;
        int *owed = server_owed(server, method);
        while (*owed > 0) {
            if (rpc__call_arm(server, method) != FERRY_OK) {
                uint64_t failures = atomic_fetch_add(&server->arm_failures, 1) + 1;
                ferry_warn("rpc: %s is %d armed call(s) short (%llu failed arms); retrying in %d "
                           "ms",
                           method != NULL ? method->path : "unknown methods", *owed,
                           (unsigned long long)failures, RPC_REARM_RETRY_MS);
                return;
            }
            (*owed)--;
            atomic_fetch_sub(&server->arms_owed, 1);
        }
    }
}

/* One call of `method` (NULL: unregistered) was delivered: arm its
 * replacement, and any owed. */
static void server_rearm(rpc_server_t *server, rpc_method_entry_t *method)
{
    pthread_mutex_lock(&server->lock);
    if (server->state == RPC_SERVER_RUNNING) {
        (*server_owed(server, method))++;
        atomic_fetch_add(&server->arms_owed, 1);
        server_pay_arms(server);
    }
    pthread_mutex_unlock(&server->lock);
}

/* The queue was idle for RPC_REARM_RETRY_MS while arms were owed. */
static void server_retry_arms(rpc_server_t *server)
{
    pthread_mutex_lock(&server->lock);
    if (server->state == RPC_SERVER_RUNNING) {
        server_pay_arms(server);
    }
    pthread_mutex_unlock(&server->lock);
}

static void server_dispatch(rpc_server_t *server, rpc_tag_t *tag, bool ok)
{
    rpc_call_t *call = tag->owner;

    switch (tag->kind) {
    case RPC_TAG_SHUTDOWN:
        pthread_mutex_lock(&server->lock);
        server->notified = true;
        pthread_cond_broadcast(&server->cond);
        pthread_mutex_unlock(&server->lock);
        break;
    case RPC_TAG_REQUEST:
        if (ok) {
            server_rearm(server, call->method);
        }
        rpc__call_on_request(call, ok);
        break;
    case RPC_TAG_CLOSE:
        rpc__call_on_close(call, ok);
        break;
    case RPC_TAG_SEND:
        rpc__call_on_send(call, ok);
        break;
    }
}

static void *server_thread(void *arg)
{
    rpc_server_t *server = arg;

    for (;;) {
        /* Wake up now and then only while re-arms are owed. */
        gpr_timespec until = atomic_load(&server->arms_owed) > 0
                                 ? rpc__deadline_after_ms(RPC_REARM_RETRY_MS)
                                 : gpr_inf_future(GPR_CLOCK_REALTIME);
        grpc_event ev = grpc_completion_queue_next(server->cq, until, NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN) {
            break;
        }
        if (ev.type == GRPC_OP_COMPLETE) {
            server_dispatch(server, ev.tag, ev.success != 0);
        } else if (ev.type == GRPC_QUEUE_TIMEOUT) {
            server_retry_arms(server);
        }
    }
    return NULL;
}

/* --- create and destroy ------------------------------------------------------ */

static ferry_status_t server_init_sync(rpc_server_t *server)
{
    if (ferry__cond_init_clock(&server->cond, CLOCK_MONOTONIC) != 0) {
        goto err_say;
    }
    if (pthread_mutex_init(&server->lock, NULL) != 0) {
        goto err_cond;
    }
    if (pthread_mutex_init(&server->shutdown_lock, NULL) != 0) {
        goto err_lock;
    }
    if (pthread_rwlock_init(&server->cq_lock, NULL) != 0) {
        goto err_shutdown_lock;
    }
    if (rpc__drain_init(&server->drain) != FERRY_OK) {
        goto err_cq_lock;
    }
    server->cq_open = true;
    return FERRY_OK;

err_cq_lock:
    pthread_rwlock_destroy(&server->cq_lock);
err_shutdown_lock:
    pthread_mutex_destroy(&server->shutdown_lock);
err_lock:
    pthread_mutex_destroy(&server->lock);
err_cond:
    pthread_cond_destroy(&server->cond);
err_say:
    ferry_error("rpc: cannot create the server's locks");
    return FERRY_ERR_NO_MEMORY;
}

/* The grpc_server and its queue, with the message size limit. */
static void server_create_grpc(rpc_server_t *server)
{
    grpc_arg args[12];
    grpc_channel_args channel_args = {9, args};
    grpc_resource_quota *quota = NULL;

    args[0].type = GRPC_ARG_INTEGER;
    args[0].key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[0].value.integer = server->max_message_bytes;
    args[1].type = GRPC_ARG_INTEGER;
    args[1].key = GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
    args[1].value.integer = -1;
    /* Clients ping an idle stream (rpc_client.c): allow it down to
     * RPC_KEEPALIVE_MIN_MS, where gRPC's default (5 minutes) would end
     * their connection with too_many_pings. */
    args[2].type = GRPC_ARG_INTEGER;
    args[2].key = GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS;
    args[2].value.integer = RPC_KEEPALIVE_MIN_MS;
    /* And ping clients, so that a vanished one's streams and parked calls
     * end within a minute and a half rather than when TCP gives up. */
    args[3].type = GRPC_ARG_INTEGER;
    args[3].key = GRPC_ARG_KEEPALIVE_TIME_MS;
    args[3].value.integer = RPC_SERVER_KEEPALIVE_MS;
    args[4].type = GRPC_ARG_INTEGER;
    args[4].key = GRPC_ARG_KEEPALIVE_TIMEOUT_MS;
    args[4].value.integer = RPC_SERVER_KEEPALIVE_TIMEOUT_MS;
    /* Streams one connection may hold open at once (gRPC's default is
     * unbounded); past it a client's new call waits for one to end. */
    args[5].type = GRPC_ARG_INTEGER;
    args[5].key = GRPC_ARG_MAX_CONCURRENT_STREAMS;
    args[5].value.integer = RPC_MAX_STREAMS_PER_CONNECTION;
    /* Requests arrive uncompressed, or are refused UNIMPLEMENTED at their
     * headers: gRPC core inflates a compressed message whole before it
     * checks its size, so 1.5 MB of gzip made a replica allocate 1.5 GB
     * before any bound of ours ran. Ferry's clients never compress. */
    args[6].type = GRPC_ARG_INTEGER;
    args[6].key = GRPC_COMPRESSION_CHANNEL_ENABLED_ALGORITHMS_BITSET;
    args[6].value.integer = 1 << GRPC_COMPRESS_NONE;
    /* The port is this server's alone: gRPC sets SO_REUSEPORT by default,
     * and a second coordinator started on the same port (another prefix or
     * etcd, a stale process) then bound it too and the kernel split new
     * connections between the two, half the workers registering where the
     * other half never looked. Now the second one's bind fails. */
    args[7].type = GRPC_ARG_INTEGER;
    args[7].key = GRPC_ARG_ALLOW_REUSEPORT;
    args[7].value.integer = 0;
    /* A connection must finish its handshake (TLS, the HTTP/2 preface) in
     * this time, or it is closed (RPC_DEFAULT_HANDSHAKE_TIMEOUT_MS). Each
     * one holds a file descriptor, outside the resource quota, until then. */
    args[8].type = GRPC_ARG_INTEGER;
    args[8].key = GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS;
    args[8].value.integer = server->handshake_timeout_ms;
    if (server->max_connection_age_ms > 0) {
        args[channel_args.num_args].type = GRPC_ARG_INTEGER;
        args[channel_args.num_args].key = GRPC_ARG_MAX_CONNECTION_AGE_MS;
        args[channel_args.num_args].value.integer = server->max_connection_age_ms;
        channel_args.num_args++;
        args[channel_args.num_args].type = GRPC_ARG_INTEGER;
        args[channel_args.num_args].key = GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS;
        args[channel_args.num_args].value.integer = server->max_connection_age_grace_ms;
        channel_args.num_args++;
    }
    grpc_init();
    if (server->max_held_request_bytes > 0) {
        /* gRPC core's own buffers (a request's bytes before the whole
         * message has come, so before the call reaches us and our
         * held-request count) under the same bound, plus RPC_QUOTA_SLACK:
         * past it gRPC resets streams and closes idle connections (any
         * client's: gRPC 1.51 does not pick the one that holds the
         * memory). Without it a client that sends all of a 2 MB message
         * but its last byte, on a thousand streams per connection, held 2 GB
         * per connection, never counted. */
        quota = grpc_resource_quota_create("ferry-rpc-server");
        grpc_resource_quota_resize(quota, server->max_held_request_bytes + RPC_QUOTA_SLACK);
        grpc_arg *arg = &args[channel_args.num_args++];
        arg->type = GRPC_ARG_POINTER;
        arg->key = GRPC_ARG_RESOURCE_QUOTA;
        arg->value.pointer.p = quota;
        arg->value.pointer.vtable = grpc_resource_quota_arg_vtable();
    }
    server->server = grpc_server_create(&channel_args, NULL);
    if (quota != NULL) {
        grpc_resource_quota_unref(quota); /* the server holds its own */
    }
    server->cq = grpc_completion_queue_create_for_next(NULL);
    grpc_server_register_completion_queue(server->server, server->cq, NULL);
}

ferry_status_t rpc_server_create(const rpc_server_params_t *params, rpc_server_t **server_p)
{
    rpc_server_t *server;
    ferry_status_t status = FERRY_ERR_NO_MEMORY;

    if (params == NULL || params->listen_addr == NULL || params->n_threads < 0 ||
        params->calls_armed < 0 || params->max_message_bytes < 0 ||
        params->max_connection_age_ms < 0 || params->max_connection_age_grace_ms < 0 ||
        params->handshake_timeout_ms < 0) {
        ferry_error("rpc: server params need listen_addr and non-negative counts");
        return FERRY_ERR_INVALID_ARGUMENT;
    }
    server = calloc(1, sizeof(*server));
    if (server == NULL) {
        return FERRY_ERR_NO_MEMORY;
    }
    server->listen_addr = strdup(params->listen_addr);
    if (params->observer != NULL) {
        server->observer = *params->observer;
    }
    server->n_threads = params->n_threads > 0 ? params->n_threads : RPC_DEFAULT_THREADS;
    server->threads = calloc((size_t)server->n_threads, sizeof(*server->threads));
    if (server->listen_addr == NULL || server->threads == NULL) {
        goto err_free;
    }
    server->calls_armed = params->calls_armed > 0 ? params->calls_armed : RPC_DEFAULT_ARMED;
    server->max_message_bytes =
        params->max_message_bytes > 0 ? params->max_message_bytes : RPC_DEFAULT_MAX_MESSAGE;
    server->max_held_request_bytes = params->max_held_request_bytes;
    server->max_connection_age_ms = params->max_connection_age_ms;
    server->max_connection_age_grace_ms = params->max_connection_age_grace_ms;
    server->handshake_timeout_ms = params->handshake_timeout_ms > 0
                                       ? params->handshake_timeout_ms
                                       : RPC_DEFAULT_HANDSHAKE_TIMEOUT_MS;
    atomic_init(&server->held_request_bytes, 0);
    snprintf(server->max_held_request_name, sizeof(server->max_held_request_name), "%s",
             params->max_held_request_name != NULL ? params->max_held_request_name
                                                   : "max_held_request_bytes");
    atomic_init(&server->refused_oversized, 0);
    atomic_init(&server->refused_over_budget, 0);
    status = rpc__server_credentials(params->tls, &server->creds, &server->tls_reload);
    if (status != FERRY_OK) {
        goto err_free;
    }
    status = rpc__health_init(&server->health);
    if (status != FERRY_OK) {
        goto err_creds;
    }
    server->health.max_watchers = params->max_health_watches > 0
                                      ? (size_t)params->max_health_watches
                                      : RPC_DEFAULT_HEALTH_WATCHES;
    status = server_init_sync(server);
    if (status != FERRY_OK) {
        goto err_health;
    }
    server->state = RPC_SERVER_CREATED;
    server->shutdown_tag = (rpc_tag_t){RPC_TAG_SHUTDOWN, server};
    server_create_grpc(server);
    *server_p = server;
    return FERRY_OK;

err_health:
    rpc__health_destroy(&server->health);
err_creds:
    grpc_server_credentials_release(server->creds);
    rpc__tls_reload_free(server->tls_reload);
err_free:
    free(server->threads);
    free(server->listen_addr);
    free(server);
    return status;
}

grpc_call_error rpc__server_start_batch(rpc_server_t *server, grpc_call *call, const grpc_op *ops,
                                        size_t n, void *tag)
{
    grpc_call_error rc = GRPC_CALL_ERROR_COMPLETION_QUEUE_SHUTDOWN;

    pthread_rwlock_rdlock(&server->cq_lock);
    if (server->cq_open) {
        rc = grpc_call_start_batch(call, ops, n, tag, NULL);
    }
    pthread_rwlock_unlock(&server->cq_lock);
    return rc;
}

/* Shuts the queue down and joins the threads; they drain it first. The
 * drain thread goes first: every call has ended by now. */
static void server_stop_threads(rpc_server_t *server)
{
    rpc__drain_stop(&server->drain);
    pthread_rwlock_wrlock(&server->cq_lock);
    server->cq_open = false;
    pthread_rwlock_unlock(&server->cq_lock);
    grpc_completion_queue_shutdown(server->cq);
    for (int i = 0; i < server->n_threads_started; i++) {
        pthread_join(server->threads[i], NULL);
    }
    server->n_threads_started = 0;
}

/* For a server that never started (or failed to): nothing to shut down. */
static void server_destroy_unstarted(rpc_server_t *server)
{
    grpc_server_destroy(server->server);
    server_stop_threads(server);
    grpc_completion_queue_destroy(server->cq);
}

void rpc_server_stats(rpc_server_t *server, rpc_server_stats_t *out)
{
    out->refused_oversized = atomic_load(&server->refused_oversized);
    out->refused_over_budget = atomic_load(&server->refused_over_budget);
    out->held_request_bytes = atomic_load(&server->held_request_bytes);
    out->held_reply_bytes = atomic_load(&server->held_reply_bytes);
    out->max_held_request_bytes = server->max_held_request_bytes;
}

void rpc_server_destroy(rpc_server_t *server)
{
    if (server == NULL) {
        return;
    }
    rpc_server_shutdown(server, 0);
    if (server->state == RPC_SERVER_CREATED) {
        server_destroy_unstarted(server);
    }
    if (server->creds != NULL) {
        grpc_server_credentials_release(server->creds);
    }
    rpc__tls_reload_free(server->tls_reload); /* the gRPC server is gone: nothing fetches */
    rpc__health_destroy(&server->health);
    rpc__method_table_clear(&server->methods);
    pthread_cond_destroy(&server->cond);
    pthread_mutex_destroy(&server->lock);
    pthread_mutex_destroy(&server->shutdown_lock);
    pthread_rwlock_destroy(&server->cq_lock);
    rpc__drain_destroy(&server->drain);
    free(server->threads);
    free(server->listen_addr);
    free(server);
    grpc_shutdown();
}

/* --- services and start --------------------------------------------------------- */

ferry_status_t rpc_server_add_service(rpc_server_t *server,
                                      const ProtobufCServiceDescriptor *service,
                                      const rpc_method_t *methods, size_t n_methods, void *arg)
{
    ferry_status_t status;

    pthread_mutex_lock(&server->lock);
    if (server->state != RPC_SERVER_CREATED) {
        pthread_mutex_unlock(&server->lock);
        ferry_error("rpc: service %s added after start", service->name);
        return FERRY_ERR_MISUSE;
    }
    status = rpc__method_table_add(&server->methods, service, methods, n_methods, arg);
    pthread_mutex_unlock(&server->lock);
    if (status == FERRY_OK) {
        status = rpc__health_add(&server->health, service->name);
    }
    return status;
}

static ferry_status_t server_register_methods(rpc_server_t *server)
{
    for (size_t i = 0; i < server->methods.n_rows; i++) {
        rpc_method_entry_t *row = server->methods.rows[i];
        row->registered = grpc_server_register_method(server->server, row->path, NULL,
                                                      GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
        if (row->registered == NULL) {
            ferry_error("rpc: gRPC refused to register %s", row->path);
            return FERRY_ERR_INTERNAL;
        }
    }
    return FERRY_OK;
}

static ferry_status_t server_start_threads(rpc_server_t *server)
{
    for (int i = 0; i < server->n_threads; i++) {
        int rc = pthread_create(&server->threads[i], NULL, server_thread, server);
        if (rc != 0) {
            ferry_error("rpc: cannot start server thread %d: %s", i, strerror(rc));
            return FERRY_ERR_IO;
        }
        server->n_threads_started++;
    }
    return rpc__drain_start(&server->drain);
}

/* Arms calls_armed calls per method and as many for unknown methods. */
static ferry_status_t server_arm_all(rpc_server_t *server)
{
    ferry_status_t status = FERRY_OK;

    for (int k = 0; k < server->calls_armed && status == FERRY_OK; k++) {
        for (size_t i = 0; i < server->methods.n_rows && status == FERRY_OK; i++) {
            status = rpc__call_arm(server, server->methods.rows[i]);
        }
        if (status == FERRY_OK) {
            status = rpc__call_arm(server, NULL);
        }
    }
    return status;
}

/* Registers, starts the threads and binds (last, so that nothing can fail
 * once a listener exists); the server is not started yet. */
static ferry_status_t server_prepare(rpc_server_t *server, int *port_p)
{
    ferry_status_t status = rpc__health_add_service(server);

    if (status == FERRY_OK) {
        status = server_register_methods(server);
    }
    if (status == FERRY_OK) {
        status = server_start_threads(server);
    }
    if (status != FERRY_OK) {
        return status;
    }
    *port_p = grpc_server_add_http2_port(server->server, server->listen_addr, server->creds);
    grpc_server_credentials_release(server->creds);
    server->creds = NULL;
    if (*port_p == 0) {
        ferry_error("rpc: cannot listen on %s", server->listen_addr);
        return FERRY_ERR_IO;
    }
    return FERRY_OK;
}

ferry_status_t rpc_server_start(rpc_server_t *server, int *port_p)
{
    ferry_status_t status;
    int port = 0;

    pthread_mutex_lock(&server->lock);
    if (server->state != RPC_SERVER_CREATED) {
        pthread_mutex_unlock(&server->lock);
        ferry_error("rpc: server started twice");
        return FERRY_ERR_MISUSE;
    }
    status = server_prepare(server, &port);
    if (status != FERRY_OK) {
        pthread_mutex_unlock(&server->lock);
        return status;
    }
    grpc_server_start(server->server);
    server->state = RPC_SERVER_RUNNING;
    status = server_arm_all(server);
    pthread_mutex_unlock(&server->lock);
    if (status != FERRY_OK) {
        return status;
    }
    ferry_info("rpc: serving %zu methods on %s (port %d, %d threads)", server->methods.n_rows,
               server->listen_addr, port, server->n_threads);
    if (port_p != NULL) {
        *port_p = port;
    }
    return FERRY_OK;
}

void rpc_server_set_serving(rpc_server_t *server, const char *service, bool serving)
{
    rpc__health_set(&server->health, service != NULL ? service : "", serving);
}

/* --- shutdown ------------------------------------------------------------------------ */

/* Waits up to timeout_ms for the shutdown notification; true once it came. */
static bool server_wait_notified(rpc_server_t *server, int timeout_ms)
{
    struct timespec deadline = ferry__clock_in_ms(CLOCK_MONOTONIC, timeout_ms);
    bool notified;

    pthread_mutex_lock(&server->lock);
    while (!server->notified) {
        if (pthread_cond_timedwait(&server->cond, &server->lock, &deadline) == ETIMEDOUT) {
            break;
        }
    }
    notified = server->notified;
    pthread_mutex_unlock(&server->lock);
    return notified;
}

/* RUNNING -> STOPPING; false when the server is not running. */
static bool server_begin_stop(rpc_server_t *server)
{
    bool running;

    pthread_mutex_lock(&server->lock);
    running = server->state == RPC_SERVER_RUNNING;
    if (running) {
        server->state = RPC_SERVER_STOPPING;
        atomic_store(&server->stopping, true);
    }
    pthread_mutex_unlock(&server->lock);
    return running;
}

void rpc_server_shutdown(rpc_server_t *server, int grace_ms)
{
    pthread_mutex_lock(&server->shutdown_lock);
    if (!server_begin_stop(server)) {
        pthread_mutex_unlock(&server->shutdown_lock);
        return;
    }
    ferry_info("rpc: shutting down %s: %d calls in flight, grace %d ms", server->listen_addr,
               atomic_load(&server->live_calls), grace_ms);
    rpc__health_close(&server->health);
    grpc_server_shutdown_and_notify(server->server, server->cq, &server->shutdown_tag);
    if (!server_wait_notified(server, grace_ms > 0 ? grace_ms : 0)) {
        int live = atomic_load(&server->live_calls);
        if (live > 0) {
            ferry_info("rpc: grace period over; cancelling %d calls", live);
        }
        grpc_server_cancel_all_calls(server->server);
        while (!server_wait_notified(server, 5000)) {
            ferry_warn("rpc: still waiting for %d calls to end", atomic_load(&server->live_calls));
        }
    }
    server_stop_threads(server);
    grpc_server_destroy(server->server);
    server->server = NULL;
    grpc_completion_queue_destroy(server->cq);
    server->cq = NULL;
    pthread_mutex_lock(&server->lock);
    server->state = RPC_SERVER_STOPPED;
    pthread_mutex_unlock(&server->lock);
    pthread_mutex_unlock(&server->shutdown_lock);
    ferry_info("rpc: server %s stopped", server->listen_addr);
}
