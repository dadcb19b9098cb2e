/*
 * device.c: devices ("cpu", "cuda:N"), descriptor lists, and byte sizes
 * ("64MiB"). Pure functions: no UCX, no shared state, any thread.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/ferry_int.h"

/* Parses a decimal ordinal: digits only, no sign, fits in uint32. */
static int parse_ordinal(const char *text, uint32_t *id_p)
{
    char *end;
    unsigned long value;

    if (!isdigit((unsigned char)text[0])) {
        return -1;
    }
    errno = 0;
    value = strtoul(text, &end, 10);
    if (errno != 0 || *end != '\0' || value > UINT32_MAX) {
        return -1;
    }
    *id_p = (uint32_t)value;
    return 0;
}

ferry_status_t ferry_device_parse(const char *text, ferry_device_t *device_p)
{
    ferry_device_t device = {FERRY_DEVICE_HOST, 0};

    ferry__clear_error();
    if (text == NULL) {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT, "device: NULL string");
    }
    if (strcmp(text, "cpu") == 0 || strcmp(text, "host") == 0) {
        *device_p = device;
        return FERRY_OK;
    }
    if (strncmp(text, "cuda", 4) == 0) {
        device.kind = FERRY_DEVICE_CUDA;
        if (text[4] == '\0') {
            *device_p = device;
            return FERRY_OK;
        }
        if (text[4] == ':' && parse_ordinal(text + 5, &device.id) == 0) {
            *device_p = device;
            return FERRY_OK;
        }
    }
    return ferry__fail(FERRY_ERR_INVALID_ARGUMENT,
                       "device \"%.32s\": expected \"cpu\", \"host\", \"cuda\" or \"cuda:N\"",
                       text);
}

ferry_status_t ferry_device_to_string(ferry_device_t device, char *buf, size_t len)
{
    int n;

    ferry__clear_error();
    if (device.kind == FERRY_DEVICE_HOST) {
        n = snprintf(buf, len, "cpu");
    } else if (device.kind == FERRY_DEVICE_CUDA) {
        n = snprintf(buf, len, "cuda:%" PRIu32, device.id);
    } else {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT, "device: unknown kind %d", (int)device.kind);
    }
    if (n < 0 || (size_t)n >= len) {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT, "device: buffer of %zu bytes too small",
                           len);
    }
    return FERRY_OK;
}

ferry_status_t ferry_descriptors_validate(const ferry_descriptor_t *descs, size_t n)
{
    ferry__clear_error();
    if (descs == NULL || n == 0) {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT, "descriptors: the list is empty");
    }
    for (size_t i = 0; i < n; i++) {
        const ferry_descriptor_t *d = &descs[i];
        if (d->ptr == NULL) {
            return ferry__fail(FERRY_ERR_INVALID_ARGUMENT, "descriptor %zu: null pointer", i);
        }
        if (d->size == 0) {
            return ferry__fail(FERRY_ERR_INVALID_ARGUMENT, "descriptor %zu: zero size", i);
        }
        if (d->size > UINTPTR_MAX - (uintptr_t)d->ptr) {
            /* Past the top of the address space: no memory is there, and
             * every end computed from it (UCX's, the region lookups') wraps. */
            return ferry__fail(FERRY_ERR_INVALID_ARGUMENT,
                               "descriptor %zu: %p + %zu bytes wraps around the address space", i,
                               d->ptr, d->size);
        }
        if (d->device.kind != FERRY_DEVICE_HOST && d->device.kind != FERRY_DEVICE_CUDA) {
            return ferry__fail(FERRY_ERR_INVALID_ARGUMENT, "descriptor %zu: unknown device kind %d",
                               i, (int)d->device.kind);
        }
        if (d->device.kind == FERRY_DEVICE_HOST && d->device.id != 0) {
            return ferry__fail(FERRY_ERR_INVALID_ARGUMENT,
                               "descriptor %zu: host device with id %" PRIu32, i, d->device.id);
        }
        if (d->device.kind != descs[0].device.kind) {
            return ferry__fail(FERRY_ERR_INVALID_ARGUMENT,
                               "descriptor %zu: device kind differs from descriptor 0 "
                               "(a list must be all host or all cuda)",
                               i);
        }
    }
    return FERRY_OK;
}

typedef struct {
    const char *suffix;
    uint64_t factor;
} size_unit_t;

/* Longest suffixes first is not needed: the whole rest must match. */
static const size_unit_t size_units[] = {
    {"", 1},
    {"B", 1},
    {"K", 1ull << 10},
    {"KiB", 1ull << 10},
    {"kB", 1000ull},
    {"KB", 1000ull},
    {"M", 1ull << 20},
    {"MiB", 1ull << 20},
    {"MB", 1000000ull},
    {"G", 1ull << 30},
    {"GiB", 1ull << 30},
    {"GB", 1000000000ull},
    {"T", 1ull << 40},
    {"TiB", 1ull << 40},
    {"TB", 1000000000000ull},
};

ferry_status_t ferry_parse_size(const char *text, uint64_t *size_p)
{
    char *end;
    unsigned long long value;

    ferry__clear_error();
    if (text == NULL || !isdigit((unsigned char)text[0])) {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT, "size \"%.32s\": expected a number",
                           text == NULL ? "(null)" : text);
    }
    errno = 0;
    value = strtoull(text, &end, 10);
    if (errno != 0) {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT, "size \"%.32s\": too large", text);
    }
    for (size_t i = 0; i < sizeof(size_units) / sizeof(size_units[0]); i++) {
        if (strcmp(end, size_units[i].suffix) != 0) {
            continue;
        }
        if (value > UINT64_MAX / size_units[i].factor) {
            return ferry__fail(FERRY_ERR_INVALID_ARGUMENT, "size \"%.32s\": too large", text);
        }
        *size_p = value * size_units[i].factor;
        return FERRY_OK;
    }
    return ferry__fail(FERRY_ERR_INVALID_ARGUMENT,
                       "size \"%.32s\": unknown unit \"%.8s\" (use B, KiB, MiB, GiB, TiB, kB, "
                       "MB, GB, TB)",
                       text, end);
}
