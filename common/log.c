/*
 * log.c: formats and writes log lines (see log.h). The environment is read
 * only when a program calls ferry_log_init_from_env.
 */
#include "common/log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/text.h"

atomic_int ferry__log_level = FERRY_LOG_OFF;

static const char *const level_names[] = {"error", "warn", "info", "debug", "trace"};
static atomic_bool log_json;

/* The sink and its argument, swapped together under sink_lock. */
static pthread_mutex_t sink_lock = PTHREAD_MUTEX_INITIALIZER;
static ferry_log_sink_t sink;
static void *sink_arg;
static atomic_bool has_sink;

void ferry_log_set_sink(ferry_log_sink_t fn, void *arg)
{
    pthread_mutex_lock(&sink_lock);
    sink = fn;
    sink_arg = arg;
    atomic_store(&has_sink, fn != NULL);
    pthread_mutex_unlock(&sink_lock);
}

int ferry_log_init_from_env(const char *program, ferry_log_level_t dflt)
{
    ferry_log_level_t level = dflt;
    const char *env = getenv("FERRY_LOG_LEVEL");
    int rc = 0;

    if (env != NULL && ferry_log_level_parse(env, &level) != 0) {
        level = dflt;
        fprintf(stderr,
                "%s: FERRY_LOG_LEVEL '%s' is not off, error, warn, info, debug or trace; "
                "logging at %s\n",
                program, env, dflt == FERRY_LOG_OFF ? "off" : level_names[dflt]);
        rc = -1;
    }
    atomic_store(&ferry__log_level, level);
    if (ferry_log_format_from_env() != 0) {
        fprintf(stderr, "%s: FERRY_LOG_FORMAT '%s' is neither json nor text; writing text\n",
                program, getenv("FERRY_LOG_FORMAT"));
        rc = -1;
    }
    return rc;
}

int ferry_log_format_from_env(void)
{
    const char *env = getenv("FERRY_LOG_FORMAT");
    bool json = env != NULL && strcmp(env, "json") == 0;

    atomic_store(&log_json, json);
    return json || env == NULL || env[0] == '\0' || strcmp(env, "text") == 0 ? 0 : -1;
}

int ferry_log_level_parse(const char *name, ferry_log_level_t *level_p)
{
    if (strcmp(name, "off") == 0) {
        *level_p = FERRY_LOG_OFF;
        return 0;
    }
    for (int i = 0; i < (int)(sizeof(level_names) / sizeof(level_names[0])); i++) {
        if (strcmp(name, level_names[i]) == 0) {
            *level_p = (ferry_log_level_t)i;
            return 0;
        }
    }
    return -1;
}

ferry_log_level_t ferry_log_set_level(ferry_log_level_t level)
{
    return (ferry_log_level_t)atomic_exchange(&ferry__log_level, (int)level);
}

/* A JSON string's body: quotes and backslashes escaped; C0 controls, DEL
 * and the characters that act on a terminal (common/text.h: C1 controls,
 * bidirectional overrides) as \uXXXX, since a person may read the line
 * too; and bytes that are not UTF-8 as U+FFFD, since a line that is not
 * UTF-8 is not JSON and a collector drops it whole. */
static size_t json_escape(char *out, size_t cap, const char *in)
{
    const unsigned char *u = (const unsigned char *)in;
    size_t len = strlen(in), n = 0, i = 0;

    while (i < len && n + 7 < cap) {
        size_t bad = 1;
        size_t k = ferry_utf8_char(in + i, len - i, &bad);
        if (k == 0) {
            n += (size_t)snprintf(out + n, cap - n, "\\ufffd");
            i += bad;
        } else if (k == 1 && (u[i] == '"' || u[i] == '\\')) {
            out[n++] = '\\';
            out[n++] = (char)u[i++];
        } else if (ferry_text_shown(in + i, len - i) == 0) {
            /* One that acts: C0, DEL, C1 or a bidi override or isolate,
             * all below U+10000. */
            unsigned cp = (unsigned)ferry_utf8_code_point(in + i, k);
            n += (size_t)snprintf(out + n, cap - n, "\\u%04x", cp);
            i += k;
        } else {
            if (n + k + 1 > cap) {
                break;
            }
            memcpy(out + n, in + i, k);
            n += k;
            i += k;
        }
    }
    out[n] = '\0';
    return n;
}

void ferry__log_write(ferry_log_level_t level, const char *fmt, ...)
{
    char msg[1024];
    char line[2304];
    char ts[32];
    struct timespec now;
    struct tm tm;
    va_list ap;
    int n;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (atomic_load(&has_sink)) {
        pthread_mutex_lock(&sink_lock);
        if (sink != NULL) {
            sink(level, msg, sink_arg);
            pthread_mutex_unlock(&sink_lock);
            return;
        }
        pthread_mutex_unlock(&sink_lock);
    }

    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    n = (int)strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof(ts) - (size_t)n, ".%03ldZ", now.tv_nsec / 1000000);

    if (atomic_load(&log_json)) {
        char esc[2048];
        json_escape(esc, sizeof(esc), msg);
        n = snprintf(line, sizeof(line), "{\"ts\":\"%s\",\"level\":\"%s\",\"msg\":\"%s\"}\n", ts,
                     level_names[level], esc);
    } else {
        char esc[2048];
        /* A message may quote a client's name or reason: a newline or a
         * terminal control in one must not forge a line of its own or
         * reach an operator's terminal (common/text.h). */
        ferry_text_escape(esc, sizeof(esc), msg);
        n = snprintf(line, sizeof(line), "%s %-5s %s\n", ts, level_names[level], esc);
    }
    if (n > (int)sizeof(line) - 1) {
        n = (int)sizeof(line) - 1;
        line[n - 1] = '\n';
    }
    /* One write per line keeps lines from concurrent threads whole. */
    ssize_t rc = write(STDERR_FILENO, line, (size_t)n);
    (void)rc;
}

bool ferry_log_due(ferry_log_limit_t *limit, unsigned *quiet_p)
{
    long long now = (long long)ferry__clock_ms(CLOCK_MONOTONIC);
    long long last = atomic_load(&limit->last_ms);

    if ((last != 0 && now - last < FERRY_LOG_REPEAT_MS) ||
        !atomic_compare_exchange_strong(&limit->last_ms, &last, now)) {
        atomic_fetch_add(&limit->quiet, 1);
        return false;
    }
    *quiet_p = atomic_exchange(&limit->quiet, 0);
    return true;
}
