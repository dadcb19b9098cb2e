/*
 * copy_engine.h: the seam between the staged pipeline (staged.c) and whatever
 * copies bytes between device memory and pinned host buffers.
 *
 * An engine copies asynchronously and in order: copy_async queues one copy
 * and returns a ticket (1, 2, 3, ... per engine); poll says whether the copy
 * with a given ticket has finished, and since copies finish in the order
 * they were queued, a finished ticket means every earlier one finished too.
 * An engine that fails a copy stays failed: every later poll reports the
 * error (the pipeline then ends the operation ERRORED and frees nothing an
 * unfinished copy still touches before sync returns).
 *
 * Two engines exist: the CUDA one (cuda.c: one stream per engine, one event
 * per copy, cuMemcpyAsync with unified addressing) on a GPU, and the host
 * one (copy_host.c: memcpy, with delays and failures a test can inject),
 * which lets CI run every line of the pipeline without a GPU.
 *
 * Threads: an engine is used under connector->lock only (the pipeline's
 * callers hold it); engines need no locking of their own. Fault hooks
 * (ferry__host_engine_faults) are atomics a test sets from any thread.
 */
#ifndef FERRY_WORKER_COPY_ENGINE_H
#define FERRY_WORKER_COPY_ENGINE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/ferry.h"

typedef struct ferry__copy_engine ferry__copy_engine_t;

typedef struct ferry__copy_engine_ops {
    const char *name; /* "cuda", "host": for logs */
    /* Queues a copy of n bytes; *ticket_p names it for poll. Errors are
     * final for the engine. */
    ferry_status_t (*copy_async)(ferry__copy_engine_t *e, void *dst, const void *src, size_t n,
                                 uint64_t *ticket_p);
    /* *done_p: the copy with this ticket (and every earlier one) finished.
     * FERRY_OK, or the engine's error (with ferry_last_error_message). */
    ferry_status_t (*poll)(ferry__copy_engine_t *e, uint64_t ticket, bool *done_p);
    /* Waits until every queued copy has finished or failed (before the
     * buffers they touch are freed). */
    void (*sync)(ferry__copy_engine_t *e);
    /* Page-locked host memory the engine copies to and from at full speed
     * (and that UCX registers as host memory); freed with the same size.
     * keep: the engine may keep it for a later alloc_pinned of this
     * process; never for memory a peer could still write (a passive
     * side's slots), which is unmapped, never handed to malloc, so that a
     * late remote write faults instead of landing in another object.
     * free_pinned without keep needs no engine (e may be NULL): the
     * connector's slot pool frees memory after its engine is gone. */
    ferry_status_t (*alloc_pinned)(ferry__copy_engine_t *e, size_t size, void **ptr_p);
    void (*free_pinned)(ferry__copy_engine_t *e, void *ptr, size_t size, bool keep);
    /* Pins host memory allocated elsewhere (a passive side's slots, which
     * UCX allocates: staged.c) so that the engine copies to and from it at
     * full speed, as alloc_pinned's. *undo_p: unpin must undo it (false
     * where the engine needs nothing, or the memory was pinned already). */
    ferry_status_t (*pin)(ferry__copy_engine_t *e, void *ptr, size_t size, bool *undo_p);
    /* Undoes pin. Needs no engine, only the device the memory was pinned
     * for: pinned slots outlive the engine that pinned them (the
     * connector's slot pool). */
    void (*unpin)(uint32_t device, void *ptr);
    /* After sync. NULL-safe through ferry__copy_engine_destroy. */
    void (*destroy)(ferry__copy_engine_t *e);
} ferry__copy_engine_ops_t;

struct ferry__copy_engine {
    const ferry__copy_engine_ops_t *ops;
};

/* Memory an engine pinned (ops->pin) and what undoes it: held by the
 * passive side's slot memory (staged.c) and by a remote key whose slots
 * are mapped here (peer.c). Zeroed: nothing pinned. */
typedef struct {
    const ferry__copy_engine_ops_t *ops; /* NULL: nothing pinned */
    void *ptr;
    size_t len;
    uint32_t device; /* what it was pinned for (unpin's argument) */
    bool undo;       /* ops->unpin must undo it */
} ferry__pin_t;

/* Pins len bytes at ptr for e's copies on device into *pin (left empty on
 * failure, with the engine's error). */
ferry_status_t ferry__pin(ferry__copy_engine_t *e, uint32_t device, void *ptr, size_t len,
                          ferry__pin_t *pin);

/* Undoes *pin, if anything is pinned, and empties it; needs no engine. */
void ferry__unpin(ferry__pin_t *pin);

/* The engine for memory on this device: CUDA for cuda:N (FERRY_ERR_UNIMPLEMENTED
 * without a driver), host for host memory (only the tests stage that). */
ferry_status_t ferry__copy_engine_create(ferry_device_t device, ferry__copy_engine_t **engine_p);

/* sync, then destroy; NULL is a no-op. */
void ferry__copy_engine_destroy(ferry__copy_engine_t *e);

/* The host engine. */
ferry_status_t ferry__host_engine_create(ferry__copy_engine_t **engine_p);

/* Test faults for every host engine of the process (0: off). A copy is
 * numbered per process from 1 in the order queued. */
typedef struct {
    /* Copies numbered >= hold_from stay unfinished while hold is set; the
     * first one polled so sets held (a test waits on it). */
    atomic_uint hold_from;
    atomic_bool hold;
    atomic_bool held;
    /* The copy with this number fails (FERRY_ERR_IO), and so does the
     * engine from then on. */
    atomic_uint fail_at;
    /* Each copy finishes only after this many polls (a slow engine, so the
     * pipeline's back-pressure is exercised). */
    atomic_uint delay_polls;
    /* Copies queued so far (numbering). */
    atomic_uint copies;
} ferry__host_engine_faults_t;

extern ferry__host_engine_faults_t ferry__host_engine_faults;

#endif /* FERRY_WORKER_COPY_ENGINE_H */
