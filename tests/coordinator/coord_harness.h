/*
 * coord_harness.h: a real ferry-coordinator process for tests, plus small
 * client helpers over the RPC layer. Uses testproc.h for processes.
 */
#ifndef FERRY_TESTS_COORD_HARNESS_H
#define FERRY_TESTS_COORD_HARNESS_H

#include <limits.h>
#include <stdbool.h>

#include "ferry/v1/coordinator.pb-c.h"
#include "rpc/rpc.h"
#include "testproc.h"

typedef struct {
    test_proc_t proc;
    char *dir;
    char port_file[PATH_MAX];
    char log_path[PATH_MAX];
    char target[64];
    int port;
    int listen_port; /* 0: a free port; else 127.0.0.1:listen_port (set it to
                        port before test_coord_restart to keep the address) */
    char name[32];
    char etcd[256]; /* endpoints; "" starts a private etcd under dir */
    int ttl;
} test_coord_t;

/* Starts $FERRY_BUILD_DIR/coordinator/ferry-coordinator on 127.0.0.1:0 at
 * debug log level and waits (15 s) until it writes its port. */
int test_coord_start(test_coord_t *c, const char *etcd_endpoint, const char *name, int ttl);

/* Starts it again with the same settings (after test_coord_stop); on a new
 * free port unless listen_port is set. */
int test_coord_restart(test_coord_t *c);

/* SIGTERM and wait; returns the wait status. */
int test_coord_stop(test_coord_t *c);
/* test_coord_stop, saying on stderr how it ended (with the end of its log)
 * when not with exit status 0 (a crash, a hang it was killed for, or under
 * ASan a leak at exit); true when it exited 0. */
bool test_coord_stop_clean(test_coord_t *c);

/* Stops it if running and removes its directory. */
void test_coord_cleanup(test_coord_t *c);

/* True once the coordinator's log contains `needle`. */
bool test_coord_log_contains(const test_coord_t *c, const char *needle);

/* "/ferry.v1.Coordinator/<method>" on `channel`, 10 s timeout. */
ferry_status_t test_coord_call(rpc_channel_t *channel, const char *method,
                               const ProtobufCMessage *request,
                               const ProtobufCMessageDescriptor *response_desc,
                               ProtobufCMessage **response_p, rpc_error_t *err);

rpc_channel_t *test_coord_channel(const test_coord_t *c);

/* A plausible metadata for registration (the coordinator does not interpret
 * addresses or keys). Static storage: valid until the next call. */
Ferry__V1__RdmaMetadata *test_coord_metadata(Ferry__V1__OperationKind kind);

/* grpc.health.v1.Health/Check for `service`: the ServingStatus value, or -1
 * with err set when the call fails. */
int test_coord_health(rpc_channel_t *channel, const char *service, rpc_error_t *err);

#endif /* FERRY_TESTS_COORD_HARNESS_H */
