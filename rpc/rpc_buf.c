/*
 * rpc_buf.c: small conversions between gRPC's types and Ferry's: protobuf
 * messages to and from byte buffers, timeouts to deadlines, slices to
 * strings, and numbers from the environment.
 *
 * Threads: pure functions.
 */
#include "rpc/rpc_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"

grpc_byte_buffer *rpc__pack(const ProtobufCMessage *msg)
{
    size_t len = protobuf_c_message_get_packed_size(msg);
    grpc_slice slice = grpc_slice_malloc(len);
    grpc_byte_buffer *buf;

    protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(slice));
    buf = grpc_raw_byte_buffer_create(&slice, 1);
    grpc_slice_unref(slice);
    return buf;
}

grpc_byte_buffer *rpc__pack_raw(const void *data, size_t len)
{
    grpc_slice slice = grpc_slice_from_copied_buffer(data, len);
    grpc_byte_buffer *buf = grpc_raw_byte_buffer_create(&slice, 1);
    grpc_slice_unref(slice);
    return buf;
}

/* Flattens the buffer into one slice (a new reference). */
static bool buf_flatten(grpc_byte_buffer *buf, grpc_slice *slice_p)
{
    grpc_byte_buffer_reader reader;

    if (buf == NULL || !grpc_byte_buffer_reader_init(&reader, buf)) {
        return false;
    }
    *slice_p = grpc_byte_buffer_reader_readall(&reader);
    grpc_byte_buffer_reader_destroy(&reader);
    return true;
}

ProtobufCMessage *rpc__unpack(const ProtobufCMessageDescriptor *desc, grpc_byte_buffer *buf)
{
    ProtobufCMessage *msg;
    grpc_slice slice;

    if (!buf_flatten(buf, &slice)) {
        return NULL;
    }
    msg = protobuf_c_message_unpack(desc, NULL, GRPC_SLICE_LENGTH(slice),
                                    GRPC_SLICE_START_PTR(slice));
    grpc_slice_unref(slice);
    return msg;
}

ferry_status_t rpc__unpack_request(const ProtobufCMessageDescriptor *desc, grpc_byte_buffer *buf,
                                   const char *path, ProtobufCMessage **msg_p, grpc_slice *bytes_p,
                                   char *why, size_t cap)
{
    ProtobufCMessage *msg = NULL;
    ferry_status_t status;
    grpc_slice slice;
    bool malformed = false;

    if (!buf_flatten(buf, &slice)) {
        snprintf(why, cap, "malformed request for %s", path);
        return FERRY_ERR_INVALID_ARGUMENT;
    }
    /* Checked before it is decoded: decoding is what a hostile request
     * would make costly (rpc_wire.c). */
    status = rpc__wire_check(desc, GRPC_SLICE_START_PTR(slice), GRPC_SLICE_LENGTH(slice), why, cap,
                             &malformed);
    if (status != FERRY_OK && malformed) {
        snprintf(why, cap, RPC_WIRE_MALFORMED " for %s", path); /* the method, not a field */
    }
    if (status == FERRY_OK) {
        msg = protobuf_c_message_unpack(desc, NULL, GRPC_SLICE_LENGTH(slice),
                                        GRPC_SLICE_START_PTR(slice));
        if (msg == NULL) {
            snprintf(why, cap, RPC_WIRE_MALFORMED " for %s", path);
            status = FERRY_ERR_INVALID_ARGUMENT;
        }
    }
    if (status != FERRY_OK) {
        grpc_slice_unref(slice);
        if (msg != NULL) {
            protobuf_c_message_free_unpacked(msg, NULL);
        }
        return status;
    }
    *msg_p = msg;
    *bytes_p = slice;
    return FERRY_OK;
}

ferry_status_t rpc__unpack_raw(grpc_byte_buffer *buf, void **data_p, size_t *len_p)
{
    grpc_slice slice;
    size_t len;
    void *data = NULL;

    if (!buf_flatten(buf, &slice)) {
        return FERRY_ERR_PROTOCOL;
    }
    len = GRPC_SLICE_LENGTH(slice);
    if (len > 0) {
        data = malloc(len);
        if (data == NULL) {
            grpc_slice_unref(slice);
            return FERRY_ERR_NO_MEMORY;
        }
        memcpy(data, GRPC_SLICE_START_PTR(slice), len);
    }
    grpc_slice_unref(slice);
    *data_p = data;
    *len_p = len;
    return FERRY_OK;
}

gpr_timespec rpc__deadline_after_ms(int64_t timeout_ms)
{
    if (timeout_ms <= 0) {
        return gpr_inf_future(GPR_CLOCK_MONOTONIC);
    }
    return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                        gpr_time_from_millis(timeout_ms, GPR_TIMESPAN));
}

int64_t rpc__ms_until(gpr_timespec deadline)
{
    gpr_timespec left;

    if (gpr_time_cmp(deadline, gpr_inf_future(deadline.clock_type)) == 0) {
        return INT64_MAX;
    }
    deadline = gpr_convert_clock_type(deadline, GPR_CLOCK_MONOTONIC);
    left = gpr_time_sub(deadline, gpr_now(GPR_CLOCK_MONOTONIC));
    if (left.tv_sec < 0) {
        return 0;
    }
    return (int64_t)left.tv_sec * 1000 + left.tv_nsec / 1000000;
}

void rpc__slice_to_str(grpc_slice slice, char *out, size_t cap)
{
    size_t len = GRPC_SLICE_LENGTH(slice);

    if (cap == 0) {
        return;
    }
    if (len >= cap) {
        len = cap - 1;
    }
    memcpy(out, GRPC_SLICE_START_PTR(slice), len);
    out[len] = '\0';
}

/* The environment variable `name` when it is a whole number in min..max
 * (digits only: no sign, space or base), else 0: unset or empty silently,
 * anything else with a warning naming it, its value and `unit`. */
static long env_long(const char *name, long min, long max, const char *unit)
{
    const char *env = getenv(name);
    char *end;
    long v;

    if (env == NULL || env[0] == '\0') {
        return 0;
    }
    errno = 0;
    v = strtol(env, &end, 10);
    if (env[0] < '0' || env[0] > '9' || *end != '\0' || errno != 0 || v < min || v > max) {
        ferry_warn("rpc: %s=%s is not %ld..%ld %s; using the default", name, env, min, max, unit);
        return 0;
    }
    return v;
}

int rpc_env_keepalive_ms(void)
{
    return (int)env_long("FERRY_RPC_KEEPALIVE_MS", RPC_KEEPALIVE_MIN_MS, RPC_KEEPALIVE_MAX_MS,
                         "ms");
}

int rpc_env_tls_refresh_s(void)
{
    return (int)env_long("FERRY_TLS_REFRESH_S", 1, RPC_TLS_REFRESH_MAX_S, "s");
}
