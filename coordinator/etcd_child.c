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

static void exec_etcd(const coord_etcd_child_t *child, int client_port, int peer_port)
{
    char client_url[64], peer_url[64], cluster[96];
    const char *bin = getenv("FERRY_ETCD_BIN") != NULL ? getenv("FERRY_ETCD_BIN") : "etcd";
    int fd = open(child->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    sigset_t none;

    /* The coordinator blocks its signals for sigwait; etcd must not inherit
     * that, or SIGTERM would not stop it. */
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (fd >= 0) {
        dup2(fd, STDOUT_FILENO);
        dup2(fd, STDERR_FILENO);
    }
    snprintf(client_url, sizeof(client_url), "http://127.0.0.1:%d", client_port);
    snprintf(peer_url, sizeof(peer_url), "http://127.0.0.1:%d", peer_port);
    snprintf(cluster, sizeof(cluster), "ferry=%s", peer_url);
    execlp(bin, bin, "--name", "ferry", "--data-dir", child->data_dir, "--listen-client-urls",
           client_url, "--advertise-client-urls", client_url, "--listen-peer-urls", peer_url,
           "--initial-advertise-peer-urls", peer_url, "--initial-cluster", cluster, (char *)NULL);
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

    memset(child, 0, sizeof(*child));
    if (client_port < 0 || peer_port < 0 || mkdir_p(state_dir) != 0) {
        ferry_error("private etcd: cannot prepare %s or find free ports: %s", state_dir,
                    strerror(errno));
        return FERRY_ERR_IO;
    }
    snprintf(child->data_dir, sizeof(child->data_dir), "%s/etcd", state_dir);
    snprintf(child->log_path, sizeof(child->log_path), "%s/etcd.log", state_dir);
    snprintf(child->endpoint, sizeof(child->endpoint), "http://127.0.0.1:%d", client_port);

    child->pid = fork();
    if (child->pid < 0) {
        ferry_error("private etcd: fork: %s", strerror(errno));
        return FERRY_ERR_IO;
    }
    if (child->pid == 0) {
        exec_etcd(child, client_port, peer_port);
    }
    status = wait_ready(child);
    if (status != FERRY_OK) {
        coord_etcd_child_stop(child);
        return status;
    }
    ferry_info("started a private etcd at %s (pid %d, data in %s, log %s)", child->endpoint,
               (int)child->pid, child->data_dir, child->log_path);
    return FERRY_OK;
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
