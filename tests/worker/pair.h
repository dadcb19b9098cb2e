/*
 * pair.h: the partner-process plumbing of the worker tests that run the
 * other side of a transfer in a second process (test_worker_transfer.c,
 * test_worker_staged.c, test_worker_cuda.c, and test_worker_hostile.c's
 * victim): a byte pattern, host buffers and their descriptors, pipes with
 * deadlines, and the test executable re-executed in another role (fork +
 * exec, so neither process inherits the other's UCX or CUDA state). Every
 * read has a deadline; nothing sleeps to synchronize.
 */
#ifndef FERRY_TESTS_WORKER_PAIR_H
#define FERRY_TESTS_WORKER_PAIR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "ferry/ferry.h"

#define PAIR_IO_TIMEOUT_MS 20000

typedef struct {
    pid_t pid;
    int cmd_fd; /* parent writes */
    int res_fd; /* parent reads */
} pair_partner_t;

uint8_t pair_pattern(uint32_t seed, size_t desc, size_t offset);
void pair_fill(uint8_t *buf, size_t size, uint32_t seed, size_t desc);
/* The first offset that differs from the pattern, or size when none does. */
size_t pair_check(const uint8_t *buf, size_t size, uint32_t seed, size_t desc);

/* n zeroed host buffers of size bytes (aborts when out of memory), and host
 * descriptors over them (free() them); pair_free_bufs frees the buffers. */
uint8_t **pair_alloc_bufs(uint32_t n, uint64_t size);
void pair_free_bufs(uint8_t **bufs, uint32_t n);
ferry_descriptor_t *pair_make_descs(uint8_t **bufs, uint32_t n, uint64_t size);

int64_t pair_now_ms(void);
/* Exactly len bytes within timeout_ms; -1 on EOF, error or timeout. */
int pair_read(int fd, void *buf, size_t len, int timeout_ms);
int pair_write(int fd, const void *buf, size_t len);
/* A length-prefixed blob (metadata); recv mallocs *bytes_p. */
int pair_send_blob(int fd, const uint8_t *bytes, uint32_t len);
int pair_recv_blob(int fd, uint8_t **bytes_p, uint32_t *len_p);

/* Runs `exe role CMD_FD RES_FD` with pipes to and from it; -1 pid on failure. */
pair_partner_t pair_spawn(const char *exe, const char *role);
/* Waits (with a deadline, then SIGKILL) for the child; its wait status, -1
 * when it had to be killed. */
int pair_reap(pid_t pid);
/* pair_reap, saying on stderr how the partner `who` ended when not with
 * exit status 0 (an exit code, a signal, or a hang it was killed for);
 * true when it exited 0. */
bool pair_reap_clean(pid_t pid, const char *who);
/* Closes both pipes. */
void pair_close(pair_partner_t *p);

/* Operations the connector still holds, freed or not by their owner
 * (its live_ops, read under its lock). */
unsigned pair_live_ops(ferry_connector_t *c);

#endif /* FERRY_TESTS_WORKER_PAIR_H */
