/*
 * copy_host.c: the host-memory copy engine (copy_engine.h), and the choice
 * of engine by device.
 *
 * The host engine does with memcpy what the CUDA engine does with a stream:
 * copies queue in order and finish in order, each when polled, so the
 * staged pipeline runs the same code paths as on a GPU. Tests make it slow
 * (delay_polls), hold it midway (hold_from/hold), or fail one copy
 * (fail_at) through ferry__host_engine_faults; by default each copy
 * finishes at its first poll. A copy's bytes move when it finishes, not
 * when it is queued, as on a GPU.
 *
 * Threads: an engine under its connector's lock; the faults are atomics.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "worker/copy_engine.h"
#include "worker/cuda.h"
#include "worker/errors.h"

ferry__host_engine_faults_t ferry__host_engine_faults;

typedef struct pending {
    struct pending *next;
    uint64_t ticket;
    unsigned number; /* per process, for the faults */
    unsigned polls;
    void *dst;
    const void *src;
    size_t n;
} pending_t;

typedef struct {
    ferry__copy_engine_t base;
    pending_t *head, **tail;
    uint64_t queued;
    uint64_t done;
    unsigned failed; /* the number of the copy that failed; 0 while healthy */
} host_engine_t;

static ferry_status_t host_failed(const host_engine_t *e)
{
    return ferry__fail(FERRY_ERR_IO, "host engine: staging copy %u failed (injected)", e->failed);
}

static ferry_status_t host_copy(ferry__copy_engine_t *base, void *dst, const void *src, size_t n,
                                uint64_t *ticket_p)
{
    host_engine_t *e = (host_engine_t *)base;
    pending_t *p;

    if (e->failed != 0) {
        return host_failed(e);
    }
    p = calloc(1, sizeof(*p));
    if (p == NULL) {
        return ferry__fail(FERRY_ERR_NO_MEMORY, "host engine: out of memory");
    }
    p->ticket = ++e->queued;
    p->number = atomic_fetch_add(&ferry__host_engine_faults.copies, 1) + 1;
    p->dst = dst;
    p->src = src;
    p->n = n;
    *e->tail = p;
    e->tail = &p->next;
    *ticket_p = p->ticket;
    return FERRY_OK;
}

static void pop(host_engine_t *e)
{
    pending_t *p = e->head;

    e->head = p->next;
    if (e->head == NULL) {
        e->tail = &e->head;
    }
    e->done = p->ticket;
    free(p);
}

/* Finishes the head copy if the faults let it; false when it must wait. */
static bool finish_head(host_engine_t *e, bool waiting)
{
    ferry__host_engine_faults_t *f = &ferry__host_engine_faults;
    pending_t *p = e->head;
    unsigned hold_from = atomic_load(&f->hold_from);

    if (hold_from != 0 && p->number >= hold_from && atomic_load(&f->hold)) {
        atomic_store(&f->held, true);
        return false;
    }
    if (!waiting && p->polls++ < atomic_load(&f->delay_polls)) {
        return false;
    }
    if (p->number == atomic_load(&f->fail_at)) {
        e->failed = p->number;
    } else {
        memcpy(p->dst, p->src, p->n);
    }
    pop(e);
    return true;
}

static ferry_status_t host_poll(ferry__copy_engine_t *base, uint64_t ticket, bool *done_p)
{
    host_engine_t *e = (host_engine_t *)base;

    while (e->failed == 0 && e->head != NULL && e->done < ticket && finish_head(e, false)) {
    }
    if (e->failed != 0) {
        return host_failed(e);
    }
    *done_p = ticket <= e->done;
    return FERRY_OK;
}

/* Finishes what may finish; a held copy is dropped (its bytes never move),
 * which is as safe to free after as a finished one. */
static void host_sync(ferry__copy_engine_t *base)
{
    host_engine_t *e = (host_engine_t *)base;

    while (e->head != NULL) {
        if (e->failed != 0 || !finish_head(e, true)) {
            pop(e);
        }
    }
}

static ferry_status_t host_alloc(ferry__copy_engine_t *base, size_t size, void **ptr_p)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

    (void)base;
    if (p == MAP_FAILED) {
        return ferry__fail(FERRY_ERR_NO_MEMORY, "host engine: out of memory for %zu bytes", size);
    }
    *ptr_p = p;
    return FERRY_OK;
}

static void host_free(ferry__copy_engine_t *base, void *ptr, size_t size, bool keep)
{
    (void)base;
    (void)keep;
    if (ptr != NULL) {
        munmap(ptr, size);
    }
}

static ferry_status_t host_pin(ferry__copy_engine_t *base, void *ptr, size_t size, bool *undo_p)
{
    (void)base;
    (void)ptr;
    (void)size;
    *undo_p = false; /* memcpy needs nothing */
    return FERRY_OK;
}

static void host_unpin(uint32_t device, void *ptr)
{
    (void)device;
    (void)ptr;
}

static void host_destroy(ferry__copy_engine_t *base)
{
    host_engine_t *e = (host_engine_t *)base;

    while (e->head != NULL) {
        pop(e);
    }
    free(e);
}

static const ferry__copy_engine_ops_t host_engine_ops = {
    .name = "host",
    .copy_async = host_copy,
    .poll = host_poll,
    .sync = host_sync,
    .alloc_pinned = host_alloc,
    .free_pinned = host_free,
    .pin = host_pin,
    .unpin = host_unpin,
    .destroy = host_destroy,
};

ferry_status_t ferry__host_engine_create(ferry__copy_engine_t **engine_p)
{
    host_engine_t *e = calloc(1, sizeof(*e));

    if (e == NULL) {
        return ferry__fail(FERRY_ERR_NO_MEMORY, "host engine: out of memory");
    }
    e->base.ops = &host_engine_ops;
    e->tail = &e->head;
    *engine_p = &e->base;
    return FERRY_OK;
}

ferry_status_t ferry__pin(ferry__copy_engine_t *e, uint32_t device, void *ptr, size_t len,
                          ferry__pin_t *pin)
{
    bool undo = false;
    ferry_status_t status = e->ops->pin(e, ptr, len, &undo);

    if (status != FERRY_OK) {
        *pin = (ferry__pin_t){0};
        return status;
    }
    *pin = (ferry__pin_t){.ops = e->ops, .ptr = ptr, .len = len, .device = device, .undo = undo};
    return FERRY_OK;
}

void ferry__unpin(ferry__pin_t *pin)
{
    if (pin->ops != NULL && pin->undo) {
        pin->ops->unpin(pin->device, pin->ptr);
    }
    *pin = (ferry__pin_t){0};
}

ferry_status_t ferry__copy_engine_create(ferry_device_t device, ferry__copy_engine_t **engine_p)
{
    if (device.kind == FERRY_DEVICE_CUDA) {
        return ferry__cuda_engine_create(device.id, engine_p);
    }
    return ferry__host_engine_create(engine_p);
}

void ferry__copy_engine_destroy(ferry__copy_engine_t *e)
{
    if (e != NULL) {
        e->ops->sync(e);
        e->ops->destroy(e);
    }
}
