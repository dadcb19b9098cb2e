/*
 * etcd_child.c: starts and stops the private etcd of etcd_child.h.
 */
#include "etcd_child.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "etcd/etcd.h"

/* etcd keeps every revision until it is compacted, and refuses every write
 * once its database reaches its quota (2 GiB): the private etcd compacts
 * what is older than this, as deploy/k8s/etcd.yaml's does. */
#define COMPACTION_RETENTION "1h"

#define START_TIMEOUT_MS 30000
#define STOP_TIMEOUT_MS  5000
#define POLL_MS          50

static int free_port(void)
{
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int port = -1;

    if (fd < 0) {
        return -1;
    }
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0 &&
        getsockname(fd, (struct sockaddr *)&addr, &len) == 0) {
        port = ntohs(addr.sin_port);
    }
    close(fd);
    return port;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int mkdir_p(const char *path)
{
    char buf[PATH_MAX];
    snprintf(buf, sizeof(buf), "%s", path);
    for (char *p = buf + 1; *p != '\0'; p++) {
        if (*p == '/') {
            *p = '\0';
            if (mkdir(buf, 0700) != 0 && errno != EEXIST) {
                return -1;
            }
            *p = '/';
        }
    }
    return (mkdir(buf, 0700) != 0 && errno != EEXIST) ? -1 : 0;
}

/* Whether dir (made or found by mkdir_p) is ours alone to write: a
 * directory, not a link to one, owned by this user, that no one else may
 * write. Its etcd holds the key that mints lease tokens: a directory
 * another user made first (/tmp/ferry-<uid>, when there is no HOME) would
 * let them read or swap that etcd's data, or point its log at a file of
 * ours. */
static bool dir_is_private(const char *dir)
{
    struct stat st;

    if (lstat(dir, &st) != 0) {
        ferry_error("private etcd: %s: %s", dir, strerror(errno));
        return false;
    }
    if (!S_ISDIR(st.st_mode)) {
        ferry_error("private etcd: the state directory %s is not a directory (a link?); "
                    "refusing it (--state-dir)",
                    dir);
        return false;
    }
    if (st.st_uid != geteuid()) {
        ferry_error("private etcd: the state directory %s belongs to uid %d, not to this user "
                    "(%d); refusing it (--state-dir)",
                    dir, (int)st.st_uid, (int)geteuid());
        return false;
    }
    if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
        ferry_error("private etcd: others may write to the state directory %s (mode %03o); "
                    "refusing it (chmod go-w, or --state-dir)",
                    dir, (unsigned)(st.st_mode & 0777));
        return false;
    }
    return true;
}

/* In the child: log_fd becomes its stdout and stderr. */
static void exec_etcd(const coord_etcd_child_t *child, int client_port, int peer_port, int log_fd)
{
    char client_url[64], peer_url[64], cluster[96];
    const char *bin = getenv("FERRY_ETCD_BIN") != NULL ? getenv("FERRY_ETCD_BIN") : "etcd";
    sigset_t none;

    /* The coordinator blocks its signals for sigwait; etcd must not inherit
     * that, or SIGTERM would not stop it. */
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    dup2(log_fd, STDOUT_FILENO);
    dup2(log_fd, STDERR_FILENO);
    snprintf(client_url, sizeof(client_url), "http://127.0.0.1:%d", client_port);
    snprintf(peer_url, sizeof(peer_url), "http://127.0.0.1:%d", peer_port);
    snprintf(cluster, sizeof(cluster), "ferry=%s", peer_url);
    execlp(bin, bin, "--name", "ferry", "--data-dir", child->data_dir, "--listen-client-urls",
           client_url, "--advertise-client-urls", client_url, "--listen-peer-urls", peer_url,
           "--initial-advertise-peer-urls", peer_url, "--initial-cluster", cluster,
           "--auto-compaction-mode", "periodic", "--auto-compaction-retention",
           COMPACTION_RETENTION, (char *)NULL);
    fprintf(stderr, "exec %s: %s\n", bin, strerror(errno));
    _exit(127);
}

static ferry_status_t wait_ready(coord_etcd_child_t *child)
{
    etcd_params_t params = {.endpoints = child->endpoint, .timeout_ms = 1000};
    etcd_client_t *client;
    ferry_status_t status = etcd_client_create(&params, &client);

    if (status != FERRY_OK) {
        return status;
    }
    status = FERRY_ERR_TIMED_OUT;
    for (int waited = 0; waited < START_TIMEOUT_MS; waited += POLL_MS) {
        int wstatus;
        if (waitpid(child->pid, &wstatus, WNOHANG) == child->pid) {
            ferry_error("private etcd exited during start-up; see %s", child->log_path);
            child->pid = 0;
            status = FERRY_ERR_UNAVAILABLE;
            break;
        }
        if (etcd_ping(client, NULL) == FERRY_OK) {
            status = FERRY_OK;
            break;
        }
        sleep_ms(POLL_MS);
    }
    etcd_client_destroy(client);
    return status;
}

ferry_status_t coord_etcd_child_start(const char *state_dir, coord_etcd_child_t *child)
{
    int client_port = free_port();
    int peer_port = free_port();
    ferry_status_t status;
    int log_fd;

    memset(child, 0, sizeof(*child));
    if (client_port < 0 || peer_port < 0 || mkdir_p(state_dir) != 0) {
        ferry_error("private etcd: cannot prepare %s or find free ports: %s", state_dir,
                    strerror(errno));
        return FERRY_ERR_IO;
    }
    if (!dir_is_private(state_dir)) {
        return FERRY_ERR_PERMISSION_DENIED;
    }
    snprintf(child->data_dir, sizeof(child->data_dir), "%s/etcd", state_dir);
    snprintf(child->log_path, sizeof(child->log_path), "%s/etcd.log", state_dir);
    snprintf(child->endpoint, sizeof(child->endpoint), "http://127.0.0.1:%d", client_port);
    /* Not through a link: the log is ours, where we said. */
    log_fd = open(child->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (log_fd < 0) {
        ferry_error("private etcd: cannot open its log %s: %s%s", child->log_path, strerror(errno),
                    errno == ELOOP ? " (a link: refused)" : "");
        return FERRY_ERR_IO;
    }

    child->pid = fork();
    if (child->pid < 0) {
        ferry_error("private etcd: fork: %s", strerror(errno));
        close(log_fd);
        return FERRY_ERR_IO;
    }
    if (child->pid == 0) {
        exec_etcd(child, client_port, peer_port, log_fd);
    }
    close(log_fd);
    status = wait_ready(child);
    if (status != FERRY_OK) {
        coord_etcd_child_stop(child);
        return status;
    }
    ferry_info("started a private etcd at %s (pid %d, data in %s, log %s)", child->endpoint,
               (int)child->pid, child->data_dir, child->log_path);
    return FERRY_OK;
}

bool coord_etcd_child_exited(coord_etcd_child_t *child)
{
    int wstatus;

    if (child->pid <= 0 || waitpid(child->pid, &wstatus, WNOHANG) != child->pid) {
        return false;
    }
    if (WIFSIGNALED(wstatus)) {
        ferry_error("the private etcd (pid %d) was killed by signal %d; see %s", (int)child->pid,
                    WTERMSIG(wstatus), child->log_path);
    } else {
        ferry_error("the private etcd (pid %d) exited with status %d; see %s", (int)child->pid,
                    WEXITSTATUS(wstatus), child->log_path);
    }
    child->pid = 0;
    return true;
}

void coord_etcd_child_stop(coord_etcd_child_t *child)
{
    int wstatus;

    if (child->pid <= 0) {
        return;
    }
    kill(child->pid, SIGTERM);
    for (int waited = 0; waited < STOP_TIMEOUT_MS; waited += POLL_MS) {
        if (waitpid(child->pid, &wstatus, WNOHANG) == child->pid) {
            child->pid = 0;
            ferry_info("private etcd stopped");
            return;
        }
        sleep_ms(POLL_MS);
    }
    ferry_warn("private etcd did not stop in %d ms; killing it", STOP_TIMEOUT_MS);
    kill(child->pid, SIGKILL);
    waitpid(child->pid, &wstatus, 0);
    child->pid = 0;
}
