/*
 * cuda.h: libferry's one door to the CUDA driver (cuda.c).
 *
 * The driver is loaded at run time (dlopen("libcuda.so.1"), every function
 * resolved by name), once per process, on the first connector's creation:
 * a binary built with CUDA support starts, and serves host memory, where
 * there is no driver or no GPU. Nothing else in libferry includes cuda.h.
 * Built with -DFERRY_CUDA=OFF (or without the toolkit's header) the same
 * functions exist and report that the build has no CUDA support.
 *
 * Threads: ferry__cuda_load may be called from any thread (pthread_once);
 * the other functions after it succeeded, from any thread (the driver is
 * thread-safe; each call makes the device's primary context current on the
 * calling thread first).
 */
#ifndef FERRY_WORKER_CUDA_H
#define FERRY_WORKER_CUDA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/ferry.h"
#include "worker/copy_engine.h"

/* Loads the driver and initializes it (cuInit, at least one device) once.
 * FERRY_OK, or FERRY_ERR_UNIMPLEMENTED with the reason in
 * ferry_last_error_message() and ferry__cuda_why(). */
ferry_status_t ferry__cuda_load(void);

/* Why CUDA is unavailable ("" once loaded); static. */
const char *ferry__cuda_why(void);

/* Checks that every descriptor is what it claims: device memory of device N
 * for cuda:N, the whole region inside one allocation. The message names the
 * descriptor ("descriptor 3: cuda:1 claimed, but ..."). FERRY_ERR_UNIMPLEMENTED
 * without a driver; FERRY_ERR_INVALID_ARGUMENT on a mismatch. Host
 * descriptors are not looked at. */
ferry_status_t ferry__cuda_check_descriptors(const ferry_descriptor_t *descs, size_t n);

/* Makes device N's primary context current on the calling thread (UCX's
 * CUDA transports expect one where CUDA memory is registered or moved). */
ferry_status_t ferry__cuda_bind_thread(uint32_t device);

/* The CUDA copy engine (copy_engine.h) on device N: one stream, one event
 * per copy. */
ferry_status_t ferry__cuda_engine_create(uint32_t device, ferry__copy_engine_t **engine_p);

/* For tests and tools (synchronous; after ferry__cuda_load): device count,
 * device memory, and a copy in either direction (unified addressing). */
int ferry__cuda_device_count(void);
ferry_status_t ferry__cuda_mem_alloc(uint32_t device, size_t size, void **ptr_p);
/* Zeroes size bytes of device memory and waits until they are. */
ferry_status_t ferry__cuda_mem_zero(uint32_t device, void *ptr, size_t size);
void ferry__cuda_mem_free(void *ptr);
ferry_status_t ferry__cuda_memcpy(uint32_t device, void *dst, const void *src, size_t size);

/* Tests only: when set before the first load, this file is dlopen'd instead
 * of libcuda.so.1 (tests/worker/fake_cuda.c, a driver over host memory). */
extern const char *ferry__cuda_test_driver;

#endif /* FERRY_WORKER_CUDA_H */
