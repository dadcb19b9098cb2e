/*
 * coord_harness.c: see coord_harness.h.
 */
#include "coord_harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "grpc/health/v1/health.pb-c.h"

static bool port_file_ready(void *arg)
{
    test_coord_t *c = arg;
    return access(c->port_file, R_OK) == 0 || !test_proc_running(&c->proc);
}

static int launch(test_coord_t *c)
{
    char bin[PATH_MAX], ttl[16], state_dir[PATH_MAX], listen[32];
    const char *build = getenv("FERRY_BUILD_DIR");
    char *argv[20];
    int n = 0;
    FILE *f;

    snprintf(bin, sizeof(bin), "%s/coordinator/ferry-coordinator", build ? build : "build");
    snprintf(ttl, sizeof(ttl), "%d", c->ttl);
    snprintf(state_dir, sizeof(state_dir), "%s/state", c->dir);
    snprintf(listen, sizeof(listen), "127.0.0.1:%d", c->listen_port);
    unlink(c->port_file);
    argv[n++] = bin;
    argv[n++] = "--listen";
    argv[n++] = listen;
    argv[n++] = "--port-file";
    argv[n++] = c->port_file;
    argv[n++] = "--name";
    argv[n++] = c->name;
    argv[n++] = "--ttl";
    argv[n++] = ttl;
    argv[n++] = "--log-level";
    argv[n++] = "debug";
    argv[n++] = "--grace-ms";
    argv[n++] = "2000";
    if (c->etcd[0] != '\0') {
        argv[n++] = "--etcd";
        argv[n++] = c->etcd;
    } else {
        argv[n++] = "--state-dir";
        argv[n++] = state_dir;
    }
    argv[n] = NULL;
    if (test_proc_start(&c->proc, argv, c->log_path) != 0) {
        return -1;
    }
    if (!test_wait_for(port_file_ready, c, 15000) || !test_proc_running(&c->proc)) {
        fprintf(stderr, "coordinator %s did not start\n", c->name);
        test_proc_dump_log(&c->proc, 4000);
        return -1;
    }
    f = fopen(c->port_file, "r");
    if (f == NULL || fscanf(f, "%d", &c->port) != 1) {
        if (f != NULL) {
            fclose(f);
        }
        return -1;
    }
    fclose(f);
    snprintf(c->target, sizeof(c->target), "127.0.0.1:%d", c->port);
    return 0;
}

int test_coord_start(test_coord_t *c, const char *etcd_endpoint, const char *name, int ttl)
{
    memset(c, 0, sizeof(*c));
    c->dir = test_tmpdir_create("coord");
    if (c->dir == NULL) {
        return -1;
    }
    snprintf(c->name, sizeof(c->name), "%s", name);
    snprintf(c->etcd, sizeof(c->etcd), "%s", etcd_endpoint != NULL ? etcd_endpoint : "");
    snprintf(c->port_file, sizeof(c->port_file), "%s/port", c->dir);
    snprintf(c->log_path, sizeof(c->log_path), "%s/coordinator.log", c->dir);
    c->ttl = ttl;
    return launch(c);
}

int test_coord_restart(test_coord_t *c)
{
    test_proc_cleanup(&c->proc);
    memset(&c->proc, 0, sizeof(c->proc));
    return launch(c);
}

int test_coord_stop(test_coord_t *c)
{
    return test_proc_stop(&c->proc, 15000);
}

bool test_coord_stop_clean(test_coord_t *c)
{
    int wstatus = test_coord_stop(c);

    if (wstatus == 0) {
        return true;
    }
    if (WIFEXITED(wstatus)) {
        fprintf(stderr, "the coordinator exited %d after SIGTERM\n", WEXITSTATUS(wstatus));
    } else {
        fprintf(stderr, "the coordinator did not exit 0 after SIGTERM (wait status %d)\n", wstatus);
    }
    test_proc_dump_log(&c->proc, 4000);
    return false;
}

void test_coord_cleanup(test_coord_t *c)
{
    test_proc_cleanup(&c->proc);
    test_tmpdir_remove(c->dir);
    free(c->dir);
    c->dir = NULL;
}

bool test_coord_log_contains(const test_coord_t *c, const char *needle)
{
    FILE *f = fopen(c->log_path, "r");
    char line[4096];
    bool found = false;

    if (f == NULL) {
        return false;
    }
    while (!found && fgets(line, sizeof(line), f) != NULL) {
        found = strstr(line, needle) != NULL;
    }
    fclose(f);
    return found;
}

rpc_channel_t *test_coord_channel(const test_coord_t *c)
{
    rpc_channel_params_t params = {.target = c->target};
    rpc_channel_t *channel = NULL;
    return rpc_channel_create(&params, &channel) == FERRY_OK ? channel : NULL;
}

ferry_status_t test_coord_call(rpc_channel_t *channel, const char *method,
                               const ProtobufCMessage *request,
                               const ProtobufCMessageDescriptor *response_desc,
                               ProtobufCMessage **response_p, rpc_error_t *err)
{
    char path[128];
    snprintf(path, sizeof(path), "/ferry.v1.Coordinator/%s", method);
    return rpc_unary(channel, path, request, response_desc, 10000, response_p, err);
}

Ferry__V1__RdmaMetadata *test_coord_metadata(Ferry__V1__OperationKind kind)
{
    static uint8_t address[64], rkey[32], key[16];
    static Ferry__V1__Device device;
    static Ferry__V1__Descriptor desc;
    static Ferry__V1__Descriptor *descs[1];
    static Ferry__V1__RdmaMetadata md;

    memset(address, 0xa5, sizeof(address));
    memset(rkey, 0x5a, sizeof(rkey));
    for (size_t i = 0; i < sizeof(key); i++) {
        key[i] = (uint8_t)(rand() & 0xff);
    }
    ferry__v1__device__init(&device);
    device.kind = FERRY__V1__DEVICE_KIND__DEVICE_KIND_HOST;
    ferry__v1__descriptor__init(&desc);
    desc.address = 0x100000;
    desc.size = 4096;
    desc.device = &device;
    desc.rkey.data = rkey;
    desc.rkey.len = sizeof(rkey);
    descs[0] = &desc;
    ferry__v1__rdma_metadata__init(&md);
    md.version = 1;
    md.kind = kind;
    md.worker_address.data = address;
    md.worker_address.len = sizeof(address);
    md.n_descriptors = 1;
    md.descriptors = descs;
    md.notification_key.data = key;
    md.notification_key.len = sizeof(key);
    md.worker_name = "test-worker";
    return &md;
}

int test_coord_health(rpc_channel_t *channel, const char *service, rpc_error_t *err)
{
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    Grpc__Health__V1__HealthCheckResponse *resp = NULL;
    int status;

    req.service = (char *)service;
    if (rpc_unary(channel, "/grpc.health.v1.Health/Check", &req.base,
                  &grpc__health__v1__health_check_response__descriptor, 5000,
                  (ProtobufCMessage **)&resp, err) != FERRY_OK) {
        return -1;
    }
    status = (int)resp->status;
    grpc__health__v1__health_check_response__free_unpacked(resp, NULL);
    return status;
}
