/*
 * log.h: Ferry's one logging macro.
 *
 * ferry_log(LEVEL, "op %s: claim expired", id) checks the level before it
 * evaluates or formats anything, so a disabled debug line costs one compare.
 * Lines go to stderr, one per call, written with a single write(2) so lines
 * from several threads never interleave:
 *
 *   2026-11-25T17:50:41.123Z info  coord: listening on 127.0.0.1:7400
 *
 * With FERRY_LOG_FORMAT=json each line is one JSON object instead
 * ({"ts":...,"level":...,"msg":...}) for a log collector.
 *
 * Nothing is logged until a program asks: the level starts at
 * FERRY_LOG_OFF, and nothing reads the environment on its own (no
 * constructor). A program calls ferry_log_init_from_env() (FERRY_LOG_LEVEL:
 * off, error, warn, info, debug, trace; FERRY_LOG_FORMAT) or
 * ferry_log_set_level(); libferry's copy is set only through its
 * connector's params (level, and a sink that takes lines instead of
 * stderr).
 *
 * Thread safety: any thread may log; the level is an atomic int.
 */
#ifndef FERRY_COMMON_LOG_H
#define FERRY_COMMON_LOG_H

#include <stdatomic.h>
#include <stdbool.h>

typedef enum {
    FERRY_LOG_OFF = -1, /* nothing (the default) */
    FERRY_LOG_ERROR = 0,
    FERRY_LOG_WARN = 1,
    FERRY_LOG_INFO = 2,
    FERRY_LOG_DEBUG = 3,
    FERRY_LOG_TRACE = 4,
} ferry_log_level_t;

extern atomic_int ferry__log_level;

#define ferry_log(level, ...)                                                \
    do {                                                                     \
        if ((int)(FERRY_LOG_##level) <=                                      \
            atomic_load_explicit(&ferry__log_level, memory_order_relaxed)) { \
            ferry__log_write(FERRY_LOG_##level, __VA_ARGS__);                \
        }                                                                    \
    } while (0)

#define ferry_error(...) ferry_log(ERROR, __VA_ARGS__)
#define ferry_warn(...)  ferry_log(WARN, __VA_ARGS__)
#define ferry_info(...)  ferry_log(INFO, __VA_ARGS__)
#define ferry_debug(...) ferry_log(DEBUG, __VA_ARGS__)
#define ferry_trace(...) ferry_log(TRACE, __VA_ARGS__)

void ferry__log_write(ferry_log_level_t level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Sets the level; returns the previous one. */
ferry_log_level_t ferry_log_set_level(ferry_log_level_t level);

/* For programs: the level from FERRY_LOG_LEVEL (dflt when unset or
 * unknown) and the format from FERRY_LOG_FORMAT. A value it does not know
 * is warned of on stderr, as "program: FERRY_LOG_...", and returns -1 (the
 * default applied); 0 otherwise. */
int ferry_log_init_from_env(const char *program, ferry_log_level_t dflt);
/* The format alone, for a program that checks its level with its other
 * settings (the coordinator: a FERRY_LOG_LEVEL it does not know is
 * refused there, not taken as the default here): json for "json"; text for
 * "text", "" or unset; text and -1 for anything else (the caller says so). */
int ferry_log_format_from_env(void);

/* Lines go to sink (level, the message without time stamp) instead of
 * stderr; NULL: back to stderr. */
typedef void (*ferry_log_sink_t)(ferry_log_level_t level, const char *msg, void *arg);
void ferry_log_set_sink(ferry_log_sink_t sink, void *arg);

/* A line that a failure repeats while it lasts (etcd down, a password etcd
 * refuses: one per call flooded the log), at most once every
 * FERRY_LOG_REPEAT_MS in the process: the others go at debug, and the next
 * one counts them. Zeroed static storage; last_ms 0: never. */
#define FERRY_LOG_REPEAT_MS 5000
typedef struct {
    _Atomic long long last_ms;
    atomic_uint quiet;
} ferry_log_limit_t;

/* Whether the line is due now; when not, counts it. *quiet_p (when due):
 * how many were not since the last. */
bool ferry_log_due(ferry_log_limit_t *limit, unsigned *quiet_p);

/* Parses "off", "error".."trace"; returns 0 on success, -1 for an unknown
 * name. The one place the names are read (both programs, their flags and
 * FERRY_LOG_LEVEL). */
int ferry_log_level_parse(const char *name, ferry_log_level_t *level_p);

#endif /* FERRY_COMMON_LOG_H */
