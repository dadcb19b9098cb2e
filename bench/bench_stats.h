/*
 * bench_stats.h: latency samples and the JSON line every Ferry benchmark
 * program prints (one object per measurement, read by bench/run.sh and
 * bench/report.py).
 *
 * Samples are nanoseconds kept in a growable array; percentiles are taken
 * after sorting (nearest rank). Not thread-safe: one owner per array; the
 * load threads each fill their own and the main thread merges them.
 */
#ifndef FERRY_BENCH_STATS_H
#define FERRY_BENCH_STATS_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t *ns;
    size_t n;
    size_t cap;
} bench_samples_t;

/* Monotonic nanoseconds. */
uint64_t bench_now_ns(void);

/* Appends one sample; returns -1 when out of memory. */
int bench_samples_add(bench_samples_t *s, uint64_t ns);

/* Appends all of src to dst. */
int bench_samples_merge(bench_samples_t *dst, const bench_samples_t *src);

/* Sorts in place; call before bench_samples_pct. */
void bench_samples_sort(bench_samples_t *s);

/* The p-th percentile (0..100) in microseconds, nearest rank; 0 if empty. */
double bench_samples_pct_us(const bench_samples_t *s, double p);

/* The mean in microseconds; 0 if empty. */
double bench_samples_mean_us(const bench_samples_t *s);

void bench_samples_free(bench_samples_t *s);

/* CPU time (user + system, every thread) process pid has used so far, in
 * microseconds, from /proc/PID/stat (clock-tick resolution); -1 when it
 * cannot be read. */
double bench_proc_cpu_us(int pid);

#endif /* FERRY_BENCH_STATS_H */
