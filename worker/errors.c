/*
 * errors.c: the per-thread detailed error message behind
 * ferry_last_error_message().
 *
 * Threads: each thread has its own buffer (thread-local storage); nothing is
 * shared.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/text.h"
#include "worker/ferry_int.h"

static _Thread_local char last_error[FERRY__MSG_LEN];

ferry_status_t ferry__fail(ferry_status_t status, const char *fmt, ...)
{
    char message[sizeof(last_error)];
    va_list ap;

    va_start(ap, fmt);
    /* Cut whole: a message may quote a peer's text (a name, a reason).
     * Formatted apart first: a caller may wrap the message it replaces
     * (ferry__fail(s, "...: %s", ferry_last_error_message())), and
     * vsnprintf must not read the buffer it writes. */
    ferry_utf8_vformat(message, sizeof(message), fmt, ap);
    va_end(ap);
    memcpy(last_error, message, sizeof(last_error));
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
