/*
 * pair.c: see pair.h.
 */
#include "pair.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "worker/ferry_int.h"

uint8_t pair_pattern(uint32_t seed, size_t desc, size_t offset)
{
    return (uint8_t)(seed * 131u + desc * 7u + offset * 13u + (offset >> 8) + (offset >> 16));
}

void pair_fill(uint8_t *buf, size_t size, uint32_t seed, size_t desc)
{
    for (size_t i = 0; i < size; i++) {
        buf[i] = pair_pattern(seed, desc, i);
    }
}

size_t pair_check(const uint8_t *buf, size_t size, uint32_t seed, size_t desc)
{
    for (size_t i = 0; i < size; i++) {
        if (buf[i] != pair_pattern(seed, desc, i)) {
            return i;
        }
    }
    return size;
}

uint8_t **pair_alloc_bufs(uint32_t n, uint64_t size)
{
    uint8_t **bufs = calloc(n, sizeof(*bufs));

    if (bufs == NULL) {
        abort();
    }
    for (uint32_t i = 0; i < n; i++) {
        bufs[i] = calloc(1, size);
        if (bufs[i] == NULL) {
            abort();
        }
    }
    return bufs;
}

void pair_free_bufs(uint8_t **bufs, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        free(bufs[i]);
    }
    free(bufs);
}

ferry_descriptor_t *pair_make_descs(uint8_t **bufs, uint32_t n, uint64_t size)
{
    ferry_descriptor_t *d = calloc(n, sizeof(*d));

    if (d == NULL) {
        abort();
    }
    for (uint32_t i = 0; i < n; i++) {
        d[i] = (ferry_descriptor_t){bufs[i], size, FERRY_DEVICE_HOST_INIT};
    }
    return d;
}

int64_t pair_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int pair_read(int fd, void *buf, size_t len, int timeout_ms)
{
    int64_t deadline = pair_now_ms() + timeout_ms;
    size_t got = 0;

    while (got < len) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int64_t left = deadline - pair_now_ms();
        ssize_t n;
        if (left <= 0 || poll(&pfd, 1, (int)left) <= 0) {
            return -1;
        }
        n = read(fd, (char *)buf + got, len - got);
        if (n <= 0) {
            if (n < 0 && errno == EINTR) {
                continue;
            }
            return -1;
        }
        got += (size_t)n;
    }
    return 0;
}

int pair_write(int fd, const void *buf, size_t len)
{
    size_t done = 0;

    while (done < len) {
        ssize_t n = write(fd, (const char *)buf + done, len - done);
        if (n <= 0) {
            if (n < 0 && errno == EINTR) {
                continue;
            }
            return -1;
        }
        done += (size_t)n;
    }
    return 0;
}

int pair_send_blob(int fd, const uint8_t *bytes, uint32_t len)
{
    return pair_write(fd, &len, sizeof(len)) || pair_write(fd, bytes, len) ? -1 : 0;
}

int pair_recv_blob(int fd, uint8_t **bytes_p, uint32_t *len_p)
{
    uint32_t len;
    uint8_t *bytes;

    if (pair_read(fd, &len, sizeof(len), PAIR_IO_TIMEOUT_MS) != 0 || len > (1u << 20)) {
        return -1;
    }
    bytes = malloc(len + 1);
    if (bytes == NULL || (len > 0 && pair_read(fd, bytes, len, PAIR_IO_TIMEOUT_MS) != 0)) {
        free(bytes);
        return -1;
    }
    *bytes_p = bytes;
    *len_p = len;
    return 0;
}

pair_partner_t pair_spawn(const char *exe, const char *role)
{
    pair_partner_t p = {.pid = -1, .cmd_fd = -1, .res_fd = -1};
    int to_child[2], from_child[2];
    char a[16], b[16];

    if (pipe(to_child) != 0 || pipe(from_child) != 0) {
        return p;
    }
    p.pid = fork();
    if (p.pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive a crashed test */
        close(to_child[1]);
        close(from_child[0]);
        snprintf(a, sizeof(a), "%d", to_child[0]);
        snprintf(b, sizeof(b), "%d", from_child[1]);
        execl(exe, exe, role, a, b, (char *)NULL);
        _exit(127);
    }
    close(to_child[0]);
    close(from_child[1]);
    fcntl(to_child[1], F_SETFD, FD_CLOEXEC);
    fcntl(from_child[0], F_SETFD, FD_CLOEXEC);
    p.cmd_fd = to_child[1];
    p.res_fd = from_child[0];
    return p;
}

int pair_reap(pid_t pid)
{
    int wstatus = 0;
    int64_t deadline = pair_now_ms() + PAIR_IO_TIMEOUT_MS;

    for (;;) {
        pid_t r = waitpid(pid, &wstatus, WNOHANG);
        if (r == pid) {
            return wstatus;
        }
        if (pair_now_ms() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &wstatus, 0);
            return -1;
        }
        poll(NULL, 0, 5); /* reaping a child has no fd to wait on */
    }
}

bool pair_reap_clean(pid_t pid, const char *who)
{
    int wstatus = pair_reap(pid);

    if (wstatus == -1) {
        fprintf(stderr, "%s did not exit: killed\n", who);
    } else if (WIFEXITED(wstatus) && WEXITSTATUS(wstatus) != 0) {
        fprintf(stderr, "%s exited %d\n", who, WEXITSTATUS(wstatus));
    } else if (WIFSIGNALED(wstatus)) {
        fprintf(stderr, "%s died of signal %d\n", who, WTERMSIG(wstatus));
    }
    return wstatus == 0;
}

void pair_close(pair_partner_t *p)
{
    close(p->cmd_fd);
    close(p->res_fd);
    p->cmd_fd = p->res_fd = -1;
}

unsigned pair_live_ops(ferry_connector_t *c)
{
    unsigned n;

    ferry__lock(c);
    n = c->live_ops;
    ferry__unlock(c);
    return n;
}
