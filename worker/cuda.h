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
 * thread-safe; each call pushes the device's primary context on the calling
 * thread and pops it after, leaving the thread's own current context as it
 * was; only ferry__cuda_bind_thread leaves one current).
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
 * for cuda:N, every one on descs[0]'s device, the whole region inside one
 * allocation; for cpu, not device memory (managed memory passes). The
 * message names the descriptor ("descriptor 3: cuda:1 claimed, but ...").
 * FERRY_ERR_UNIMPLEMENTED without a driver; FERRY_ERR_INVALID_ARGUMENT on a
 * mismatch. */
ferry_status_t ferry__cuda_check_descriptors(const ferry_descriptor_t *descs, size_t n);

/* Makes device N's primary context current on the calling thread and
 * leaves it so: for the progress thread, Ferry's own (UCX's CUDA
 * transports expect one where CUDA memory is moved). */
ferry_status_t ferry__cuda_bind_thread(uint32_t device);

/* Makes device N's primary context current on the calling thread until
 * ferry__cuda_pop, which puts back what the thread had: around UCX calls
 * on CUDA memory (ucp_mem_map, ucp_rkey_pack, puts) made on a caller's
 * thread. Every successful push is popped once. */
ferry_status_t ferry__cuda_push(uint32_t device);
void ferry__cuda_pop(void);

/* The CUDA copy engine (copy_engine.h) on device N: one stream, one event
 * per copy. */
ferry_status_t ferry__cuda_engine_create(uint32_t device, ferry__copy_engine_t **engine_p);

/* For tests and tools (synchronous; after ferry__cuda_load): device count,
 * device memory, and a copy in either direction (unified addressing). */
int ferry__cuda_device_count(void);
ferry_status_t ferry__cuda_mem_alloc(uint32_t device, size_t size, void **ptr_p);
/* Zeroes size bytes of device memory and waits until they are. */
ferry_status_t ferry__cuda_mem_zero(uint32_t device, void *ptr, size_t size);
void ferry__cuda_mem_free(uint32_t device, void *ptr);
ferry_status_t ferry__cuda_memcpy(uint32_t device, void *dst, const void *src, size_t size);

/* Tests only: when set before the first load, this file is dlopen'd instead
 * of libcuda.so.1 (tests/worker/fake_cuda.c, a driver over host memory). */
extern const char *ferry__cuda_test_driver;

#endif /* FERRY_WORKER_CUDA_H */
