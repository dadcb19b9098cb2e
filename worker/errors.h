/*
 * errors.h: the per-thread detailed message behind ferry_last_error_message()
 * (errors.c). Shared by the data plane and the coordinator client: it names
 * neither, so both sit above it.
 */
#ifndef FERRY_WORKER_ERRORS_H
#define FERRY_WORKER_ERRORS_H

#include "ferry/status.h"

#define FERRY__MSG_LEN 256

/* Records the message for ferry_last_error_message() and returns status, so
 * that `return ferry__fail(FERRY_ERR_X, "...")` reads as one step. Does not
 * log: the caller decides whether this is where the error is first seen. */
ferry_status_t ferry__fail(ferry_status_t status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Clears this thread's message (public entry points call it first). */
void ferry__clear_error(void);

#endif /* FERRY_WORKER_ERRORS_H */
