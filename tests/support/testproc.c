/*
 * testproc.c: free ports, deadlines, temp directories, child processes and
 * a real etcd for tests (see testproc.h).
 *
 * Children are started with fork + execv. Between the two only
 * async-signal-safe calls run (the test may have threads: a watch, curl),
 * so the program path is resolved and the files opened before fork.
 */
#include "testproc.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
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

#include <arpa/inet.h>
#include <curl/curl.h>
#include <dirent.h>

enum {
    TEST_POLL_MS = 5,
    TEST_ETCD_START_MS = 15000,
    TEST_ETCD_STOP_MS = 5000,
    TEST_ETCD_TRIES = 3,
};

long long test_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void test_sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

bool test_wait_for(bool (*cond)(void *arg), void *arg, int timeout_ms)
{
    long long deadline = test_now_ms() + timeout_ms;
    while (test_now_ms() < deadline) {
        if (cond(arg)) {
            return true;
        }
        test_sleep_ms(TEST_POLL_MS);
    }
    return cond(arg);
}

int test_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        perror("test_free_port: socket");
        return -1;
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = 0};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    int port = -1;
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0 &&
        getsockname(fd, (struct sockaddr *)&addr, &len) == 0) {
        port = ntohs(addr.sin_port);
    } else {
        perror("test_free_port: bind");
    }
    close(fd);
    return port;
}

/* --- temp directories --------------------------------------------------- */

char *test_tmpdir_create(const char *tag)
{
    const char *base = getenv("TMPDIR");
    char path[4096];
    snprintf(path, sizeof(path), "%s/ferry-%s-XXXXXX", base != NULL && base[0] ? base : "/tmp",
             tag);
    if (mkdtemp(path) == NULL) {
        fprintf(stderr, "test_tmpdir_create: mkdtemp %s: %s\n", path, strerror(errno));
        return NULL;
    }
    return strdup(path);
}

static int test_remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

void test_tmpdir_remove(const char *path)
{
    if (path != NULL) {
        nftw(path, test_remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    }
}

/* --- child processes -------------------------------------------------------- */

/* The program to exec: argv0 itself with a '/', else found in PATH. */
static char *test_resolve(const char *argv0)
{
    if (strchr(argv0, '/') != NULL) {
        return strdup(argv0);
    }
    const char *path = getenv("PATH");
    char *dirs = strdup(path != NULL ? path : "/usr/bin:/bin");
    char *save = NULL;
    char candidate[4096];
    for (char *dir = strtok_r(dirs, ":", &save); dir != NULL; dir = strtok_r(NULL, ":", &save)) {
        snprintf(candidate, sizeof(candidate), "%s/%s", dir, argv0);
        if (access(candidate, X_OK) == 0) {
            free(dirs);
            return strdup(candidate);
        }
    }
    free(dirs);
    return NULL;
}

/* In the child: only async-signal-safe calls. */
static void test_child_exec(const char *prog, char *const argv[], int in_fd, int log_fd,
                            pid_t parent)
{
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) {
        _exit(127); /* the parent died before prctl */
    }
    dup2(in_fd, STDIN_FILENO);
    dup2(log_fd, STDOUT_FILENO);
    dup2(log_fd, STDERR_FILENO);
    execv(prog, argv);
    _exit(127);
}

int test_proc_start(test_proc_t *proc, char *const argv[], const char *log_path)
{
    memset(proc, 0, sizeof(*proc));
    char *prog = test_resolve(argv[0]);
    if (prog == NULL) {
        fprintf(stderr, "test_proc_start: %s not found in PATH\n", argv[0]);
        return -1;
    }
    int log_fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    int in_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    pid_t parent = getpid();
    pid_t pid = log_fd >= 0 && in_fd >= 0 ? fork() : -1;
    if (pid == 0) {
        test_child_exec(prog, argv, in_fd, log_fd, parent);
    }
    int saved = errno;
    free(prog);
    if (log_fd >= 0) {
        close(log_fd);
    }
    if (in_fd >= 0) {
        close(in_fd);
    }
    if (pid < 0) {
        fprintf(stderr, "test_proc_start: %s (log %s): %s\n", argv[0], log_path, strerror(saved));
        return -1;
    }
    proc->pid = pid;
    proc->log_path = strdup(log_path);
    return 0;
}

bool test_proc_running(test_proc_t *proc)
{
    if (proc->pid <= 0 || proc->reaped) {
        return false;
    }
    int status;
    pid_t got = waitpid(proc->pid, &status, WNOHANG);
    if (got == proc->pid || (got < 0 && errno == ECHILD)) {
        proc->status = got == proc->pid ? status : 0;
        proc->reaped = true;
        return false;
    }
    return true;
}

static bool test_proc_exited(void *arg)
{
    return !test_proc_running(arg);
}

bool test_proc_wait(test_proc_t *proc, int timeout_ms)
{
    return test_wait_for(test_proc_exited, proc, timeout_ms);
}

static void test_proc_reap_blocking(test_proc_t *proc)
{
    int status = 0;
    while (waitpid(proc->pid, &status, 0) < 0 && errno == EINTR) {
    }
    proc->status = status;
    proc->reaped = true;
}

int test_proc_stop(test_proc_t *proc, int timeout_ms)
{
    if (proc->pid <= 0) {
        return -1;
    }
    if (test_proc_running(proc)) {
        kill(proc->pid, SIGCONT); /* a paused child cannot act on SIGTERM */
        kill(proc->pid, SIGTERM);
        if (!test_proc_wait(proc, timeout_ms)) {
            fprintf(stderr, "test_proc_stop: pid %d ignored SIGTERM, killing\n", (int)proc->pid);
            kill(proc->pid, SIGKILL);
            test_proc_reap_blocking(proc);
        }
    }
    return proc->status;
}

void test_proc_kill(test_proc_t *proc)
{
    if (test_proc_running(proc)) {
        kill(proc->pid, SIGKILL);
        test_proc_reap_blocking(proc);
    }
}

/* Every thread of the process is in the stopped state ('T' in
 * /proc/<pid>/task/<tid>/stat). kill(SIGSTOP) only queues the signal: a
 * thread running on another core can still answer a request meanwhile. */
static bool test_proc_stopped(void *arg)
{
    const test_proc_t *proc = arg;
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/task", (int)proc->pid);
    DIR *dir = opendir(path);
    if (dir == NULL) {
        return false;
    }
    bool all = true;
    bool any = false;
    struct dirent *entry;
    while (all && (entry = readdir(dir)) != NULL) {
        if (entry->d_name[0] == '.') {
            continue;
        }
        char stat_path[sizeof(path) + sizeof(entry->d_name) + 8];
        char line[512];
        snprintf(stat_path, sizeof(stat_path), "%s/%s/stat", path, entry->d_name);
        FILE *f = fopen(stat_path, "r");
        if (f == NULL) {
            continue; /* the thread exited */
        }
        size_t n = fread(line, 1, sizeof(line) - 1, f);
        fclose(f);
        line[n] = '\0';
        const char *close = strrchr(line, ')'); /* comm may hold spaces */
        any = true;
        all = close != NULL && close[1] == ' ' && (close[2] == 'T' || close[2] == 't');
    }
    closedir(dir);
    return all && any;
}

int test_proc_pause(test_proc_t *proc)
{
    if (!test_proc_running(proc) || kill(proc->pid, SIGSTOP) != 0) {
        return -1;
    }
    return test_wait_for(test_proc_stopped, proc, TEST_ETCD_STOP_MS) ? 0 : -1;
}

int test_proc_resume(test_proc_t *proc)
{
    return test_proc_running(proc) ? kill(proc->pid, SIGCONT) : -1;
}

void test_proc_dump_log(const test_proc_t *proc, long max_bytes)
{
    FILE *f = proc->log_path != NULL ? fopen(proc->log_path, "r") : NULL;
    if (f == NULL) {
        return;
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, size > max_bytes ? size - max_bytes : 0, SEEK_SET);
    fprintf(stderr, "---- %s (last %ld bytes) ----\n", proc->log_path, max_bytes);
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0) {
        fwrite(buf, 1, n, stderr);
    }
    fprintf(stderr, "---- end of %s ----\n", proc->log_path);
    fclose(f);
}

void test_proc_cleanup(test_proc_t *proc)
{
    /* A child that died of a signal no test sends (a crash: SIGSEGV,
     * SIGABRT) shows the end of its log, which says why the tests that
     * needed it failed. */
    if (proc->pid > 0 && !test_proc_running(proc) && WIFSIGNALED(proc->status) &&
        WTERMSIG(proc->status) != SIGKILL && WTERMSIG(proc->status) != SIGTERM) {
        fprintf(stderr, "pid %d died of signal %d (%s)\n", (int)proc->pid, WTERMSIG(proc->status),
                strsignal(WTERMSIG(proc->status)));
        if (proc->log_path != NULL) {
            test_proc_dump_log(proc, 4000);
        }
    }
    test_proc_kill(proc);
    free(proc->log_path);
    memset(proc, 0, sizeof(*proc));
}

/* --- etcd -------------------------------------------------------------------- */

static size_t test_discard(char *data, size_t size, size_t nmemb, void *arg)
{
    (void)data;
    (void)arg;
    return size * nmemb;
}

bool test_etcd_healthy(const test_etcd_t *etcd)
{
    char url[128];
    snprintf(url, sizeof(url), "%s/health", etcd->endpoint);
    CURL *curl = curl_easy_init();
    if (curl == NULL) {
        return false;
    }
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 500L);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, test_discard);
    long http = 0;
    CURLcode code = curl_easy_perform(curl);
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &http);
    curl_easy_cleanup(curl);
    return code == CURLE_OK && http == 200;
}

/* Stops waiting when etcd answers or its process has exited. */
static bool test_etcd_settled(void *arg)
{
    test_etcd_t *etcd = arg;
    return !test_proc_running(&etcd->proc) || test_etcd_healthy(etcd);
}

static int test_etcd_launch(test_etcd_t *etcd)
{
    char data[4200], log[4200], client[64], peer[64], cluster[80];
    snprintf(data, sizeof(data), "%s/data", etcd->dir);
    snprintf(log, sizeof(log), "%s/etcd.log", etcd->dir);
    snprintf(client, sizeof(client), "http://127.0.0.1:%d", etcd->client_port);
    snprintf(peer, sizeof(peer), "http://127.0.0.1:%d", etcd->peer_port);
    snprintf(cluster, sizeof(cluster), "t=%s", peer);
    snprintf(etcd->endpoint, sizeof(etcd->endpoint), "%s", client);
    const char *prog =
        getenv("FERRY_ETCD_BIN") != NULL ? getenv("FERRY_ETCD_BIN") : "/usr/bin/etcd";
    char *argv[32] = {(char *)prog, "--name",
                      "t",          "--data-dir",
                      data,         "--listen-client-urls",
                      client,       "--advertise-client-urls",
                      client,       "--listen-peer-urls",
                      peer,         "--initial-advertise-peer-urls",
                      peer,         "--initial-cluster",
                      cluster};
    size_t n = 15;
    for (size_t i = 0; etcd->extra_args != NULL && etcd->extra_args[i] != NULL && n < 31; i++) {
        argv[n++] = etcd->extra_args[i];
    }
    argv[n] = NULL;
    if (test_proc_start(&etcd->proc, argv, log) != 0) {
        return -1;
    }
    test_wait_for(test_etcd_settled, etcd, TEST_ETCD_START_MS);
    if (!test_etcd_healthy(etcd)) {
        fprintf(stderr, "test_etcd: etcd on %s did not become healthy\n", client);
        test_proc_dump_log(&etcd->proc, 4000);
        test_proc_cleanup(&etcd->proc);
        return -1;
    }
    return 0;
}

static char **test_copy_args(const char *const *args)
{
    size_t n = 0;
    while (args != NULL && args[n] != NULL) {
        n++;
    }
    char **copy = n > 0 ? calloc(n + 1, sizeof(char *)) : NULL;
    for (size_t i = 0; copy != NULL && i < n; i++) {
        copy[i] = strdup(args[i]);
    }
    return copy;
}

int test_etcd_start(test_etcd_t *etcd, const char *const *extra_args)
{
    memset(etcd, 0, sizeof(*etcd));
    curl_global_init(CURL_GLOBAL_DEFAULT);
    etcd->extra_args = test_copy_args(extra_args);
    for (int i = 0; i < TEST_ETCD_TRIES; i++) {
        etcd->dir = test_tmpdir_create("etcd");
        etcd->client_port = test_free_port();
        etcd->peer_port = test_free_port();
        if (etcd->dir != NULL && etcd->client_port > 0 && etcd->peer_port > 0 &&
            etcd->client_port != etcd->peer_port && test_etcd_launch(etcd) == 0) {
            return 0;
        }
        /* Most likely a port was taken between test_free_port and bind. */
        test_tmpdir_remove(etcd->dir);
        free(etcd->dir);
        etcd->dir = NULL;
    }
    test_etcd_stop(etcd);
    return -1;
}

void test_etcd_down(test_etcd_t *etcd)
{
    test_proc_stop(&etcd->proc, TEST_ETCD_STOP_MS);
}

void test_etcd_kill(test_etcd_t *etcd)
{
    test_proc_kill(&etcd->proc);
}

int test_etcd_up(test_etcd_t *etcd)
{
    test_proc_cleanup(&etcd->proc);
    return test_etcd_launch(etcd);
}

void test_etcd_stop(test_etcd_t *etcd)
{
    if (etcd->proc.pid > 0) {
        test_proc_stop(&etcd->proc, TEST_ETCD_STOP_MS);
    }
    test_proc_cleanup(&etcd->proc);
    test_tmpdir_remove(etcd->dir);
    free(etcd->dir);
    for (size_t i = 0; etcd->extra_args != NULL && etcd->extra_args[i] != NULL; i++) {
        free(etcd->extra_args[i]);
    }
    free(etcd->extra_args);
    memset(etcd, 0, sizeof(*etcd));
}
