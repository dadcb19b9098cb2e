/*
 * fork.c: see fork.h. One pthread_atfork child handler, installed once,
 * carries "started" into a "forked after start" flag of the child; both
 * are atomics, since a fork may come from any thread.
 */
#include "worker/fork.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "worker/errors.h"

static atomic_bool started;      /* this process started UCX or gRPC through libferry */
static atomic_bool forked_after; /* ... or was forked from one that had */
static pthread_once_t handler_once = PTHREAD_ONCE_INIT;
static bool handler_installed;

static void on_fork_child(void)
{
    if (atomic_load(&started)) {
        atomic_store(&forked_after, true);
    }
}

static void install_handler(void)
{
    handler_installed = pthread_atfork(NULL, NULL, on_fork_child) == 0;
}

ferry_status_t ferry__fork_start(const char *what)
{
    pthread_once(&handler_once, install_handler);
    if (!handler_installed) {
        return ferry__fail(FERRY_ERR_NO_MEMORY, "%s: pthread_atfork failed", what);
    }
    if (atomic_load(&forked_after)) {
        /* Within ferry_last_error_message's 256 bytes, what to do included. */
        return ferry__fail(FERRY_ERR_MISUSE,
                           "%s: this process was forked from one where libferry had started, "
                           "and UCX and gRPC cannot start again after a fork: start it after "
                           "an exec, or fork first ('spawn' or 'forkserver' start method)",
                           what);
    }
    atomic_store(&started, true);
    return FERRY_OK;
}
