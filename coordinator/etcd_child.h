/*
 * etcd_child.h: the private etcd a coordinator starts when it is given no
 * --etcd: one etcd process on loopback, free ports, data under the state
 * directory (so a restarted coordinator finds its operations again), asked to
 * die with its parent (PR_SET_PDEATHSIG) and stopped on exit.
 */
#ifndef FERRY_COORD_ETCD_CHILD_H
#define FERRY_COORD_ETCD_CHILD_H

#include <limits.h>
#include <stdbool.h>
#include <sys/types.h>

#include <ferry/status.h>

typedef struct {
    pid_t pid;
    char endpoint[64];       /* "http://127.0.0.1:PORT" */
    char data_dir[PATH_MAX]; /* <state_dir>/etcd */
    char log_path[PATH_MAX]; /* <state_dir>/etcd.log */
} coord_etcd_child_t;

/* Starts etcd and waits (up to 30 s) until it answers. The etcd binary is
 * $FERRY_ETCD_BIN or `etcd` on PATH. */
ferry_status_t coord_etcd_child_start(const char *state_dir, coord_etcd_child_t *child);

/* Whether etcd has exited (reaped here, and logged); false while it runs
 * or when none was started. The coordinator asks on SIGCHLD: without its
 * etcd it can only answer UNAVAILABLE, so it exits for its supervisor to
 * start both again. */
bool coord_etcd_child_exited(coord_etcd_child_t *child);

/* SIGTERM, then SIGKILL after 5 s; waits for it. */
void coord_etcd_child_stop(coord_etcd_child_t *child);

#endif /* FERRY_COORD_ETCD_CHILD_H */
