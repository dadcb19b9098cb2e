/*
 * bench_stats.c: see bench_stats.h.
 */
#include "bench_stats.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

uint64_t bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int bench_samples_add(bench_samples_t *s, uint64_t ns)
{
    if (s->n == s->cap) {
        size_t cap = s->cap != 0 ? s->cap * 2 : 4096;
        uint64_t *grown = realloc(s->ns, cap * sizeof(*grown));
        if (grown == NULL) {
            return -1;
        }
        s->ns = grown;
        s->cap = cap;
    }
    s->ns[s->n++] = ns;
    return 0;
}

int bench_samples_merge(bench_samples_t *dst, const bench_samples_t *src)
{
    for (size_t i = 0; i < src->n; i++) {
        if (bench_samples_add(dst, src->ns[i]) != 0) {
            return -1;
        }
    }
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

void bench_samples_sort(bench_samples_t *s)
{
    if (s->n > 1) {
        qsort(s->ns, s->n, sizeof(*s->ns), cmp_u64);
    }
}

double bench_samples_pct_us(const bench_samples_t *s, double p)
{
    size_t rank;

    if (s->n == 0) {
        return 0.0;
    }
    rank = (size_t)(p / 100.0 * (double)s->n + 0.999999);
    if (rank < 1) {
        rank = 1;
    }
    if (rank > s->n) {
        rank = s->n;
    }
    return (double)s->ns[rank - 1] / 1000.0;
}

double bench_samples_mean_us(const bench_samples_t *s)
{
    double sum = 0.0;

    if (s->n == 0) {
        return 0.0;
    }
    for (size_t i = 0; i < s->n; i++) {
        sum += (double)s->ns[i];
    }
    return sum / (double)s->n / 1000.0;
}

void bench_samples_free(bench_samples_t *s)
{
    free(s->ns);
    s->ns = NULL;
    s->n = s->cap = 0;
}

double bench_proc_cpu_us(int pid)
{
    char path[64], buf[1024];
    unsigned long utime, stime;
    const char *rest;
    FILE *f;
    size_t n;

    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    f = fopen(path, "r");
    if (f == NULL) {
        return -1;
    }
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* After the command's name, which may hold spaces: state is field 3,
     * utime and stime fields 14 and 15 (proc(5)). */
    rest = strrchr(buf, ')');
    if (rest == NULL || sscanf(rest + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu",
                               &utime, &stime) != 2) {
        return -1;
    }
    return (double)(utime + stime) * 1e6 / (double)sysconf(_SC_CLK_TCK);
}
