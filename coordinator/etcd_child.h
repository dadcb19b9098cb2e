/*
 * etcd_child.h: the private etcd a coordinator starts when it is given no
 * --etcd: one etcd process, its client and peer ports unix sockets in the
 * state directory (only this user reaches them), data under the state
 * directory (so a restarted coordinator finds its operations again), auth
 * on with a root password kept there (mode 0600), asked to die with its
 * parent (PR_SET_PDEATHSIG) and stopped on exit. The state directory must
 * be this user's and writable by no one else, and one coordinator's at a
 * time: its lock file is locked while the coordinator or its etcd runs
 * (etcd inherits the lock, so an etcd that outlived a killed coordinator
 * keeps the next one off until it is gone; the next one waits up to 10 s
 * for such an etcd to exit, and refuses a live coordinator at once).
 */
#ifndef FERRY_COORD_ETCD_CHILD_H
#define FERRY_COORD_ETCD_CHILD_H

#include <limits.h>
#include <stdbool.h>
#include <sys/types.h>

#include <ferry/status.h>

/* The user the coordinator is in the private etcd as. */
#define COORD_ETCD_CHILD_USER "root"

typedef struct {
    pid_t pid;
    int dir_fd;               /* the state directory; -1 (or 0, zeroed): none */
    int lock_fd;              /* its lock file, locked (etcd inherits it); -1 (or 0): none */
    char endpoint[64];        /* "unix:///proc/self/fd/<dir_fd>/etcd-client:1" */
    char state_dir[PATH_MAX]; /* as given */
    char data_dir[PATH_MAX];  /* <state_dir>/etcd */
    char log_path[PATH_MAX];  /* <state_dir>/etcd.log */
    char password[129];       /* root's, from <state_dir>/etcd-password */
} coord_etcd_child_t;

/* Starts etcd and waits (up to 30 s) until it answers. The etcd binary is
 * $FERRY_ETCD_BIN or `etcd` on PATH. */
ferry_status_t coord_etcd_child_start(const char *state_dir, coord_etcd_child_t *child);

/* Whether etcd has exited (reaped here, and logged); false while it runs
 * or when none was started. The coordinator asks on SIGCHLD: without its
 * etcd it can only answer UNAVAILABLE, so it exits for its supervisor to
 * start both again. */
bool coord_etcd_child_exited(coord_etcd_child_t *child);

/* SIGTERM, then SIGKILL after 5 s; waits for it (a few seconds more at
 * most); unlocks the state directory. Safe on one that exited or was never
 * started. */
void coord_etcd_child_stop(coord_etcd_child_t *child);

#endif /* FERRY_COORD_ETCD_CHILD_H */
