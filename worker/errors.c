/*
 * errors.c: the per-thread detailed error message behind
 * ferry_last_error_message().
 *
 * Threads: each thread has its own buffer (thread-local storage); nothing is
 * shared.
 */
#include <stdarg.h>
#include <stdio.h>

#include "common/text.h"
#include "worker/ferry_int.h"

static _Thread_local char last_error[FERRY__MSG_LEN];

ferry_status_t ferry__fail(ferry_status_t status, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    /* Cut whole: a message may quote a peer's text (a name, a reason). */
    ferry_utf8_vformat(last_error, sizeof(last_error), fmt, ap);
    va_end(ap);
    return status;
}

void ferry__clear_error(void)
{
    last_error[0] = '\0';
}

const char *ferry_last_error_message(void)
{
    return last_error;
}
