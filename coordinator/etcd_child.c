/*
 * etcd_child.c: starts and stops the private etcd of etcd_child.h.
 */
#include "etcd_child.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/text.h"
#include "etcd/etcd.h"

/* etcd keeps every revision until it is compacted, and refuses every write
 * once its database reaches its quota (2 GiB). Every Register, Claim and
 * Complete writes the whole record again, so the history, not the live
 * records, is what fills it: with periodic compaction etcd keeps between
 * one and two retentions of it, and an hour's let about 150 KB/s of
 * records fill a 1 GiB quota (a few hundred operations a second; a churn
 * of 10 KB puts filled a 64 MiB quota in 14 s with none compacted). The
 * private etcd keeps five minutes, as deploy/k8s's etcd does: what Ferry
 * reads from history (a watch that resumes, a List's snapshot) is minutes
 * old at most, and older is a reload or OUT_OF_RANGE. */
#define COMPACTION_RETENTION "5m"

/* Under the state directory, relative: etcd runs there. Its client and
 * peer URLs are unix sockets in it ("unix://HOST:PORT" is etcd's form; the
 * file is named HOST:PORT), which only this user reaches: a loopback port
 * is open to every local user, and one who bound it first (etcd's command
 * line, with its port, is public) would have had root's password from the
 * coordinator's first request. */
#define DATA_DIR       "etcd"
#define CLIENT_SOCKET  "etcd-client:1"
#define CLIENT_URL     "unix://" CLIENT_SOCKET
#define PEER_URL       "unix://etcd-peer:1"
#define PASSWORD_FILE  "etcd-password"
#define LOCK_FILE      "coordinator.lock"
#define PASSWORD_BYTES 32 /* random bytes, written as hex */
#define LOG_FILE       "etcd.log"
#define LOG_PREVIOUS   "etcd.log.1"

/* A log past this at a start is moved aside (one generation kept), so
 * that restarts over months do not fill the disk. Within one run etcd
 * writes four lines every five minutes (its compaction), about 150 KB a
 * day. */
#define LOG_MAX_BYTES (16L << 20)
#define PASSWORD_MIN  16 /* characters, in a file an operator wrote */

#define START_TIMEOUT_MS 30000
#define STOP_TIMEOUT_MS  5000
#define REAP_TIMEOUT_MS  5000 /* after SIGKILL */
#define ORPHAN_WAIT_MS   (STOP_TIMEOUT_MS + REAP_TIMEOUT_MS)
#define POLL_MS          50

static void sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int64_t now_ms(void)
{
    return ferry__clock_ms(CLOCK_MONOTONIC);
}

/* Waits up to ms for pid to exit; true once reaped. */
static bool reap_within(pid_t pid, int ms)
{
    int wstatus;
    int64_t deadline = now_ms() + ms;

    for (;;) {
        if (waitpid(pid, &wstatus, WNOHANG) == pid) {
            return true;
        }
        if (now_ms() >= deadline) {
            return false;
        }
        sleep_ms(POLL_MS);
    }
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

/* Opens dir (made or found by mkdir_p) if it is ours alone to write: a
 * directory, not a link to one, owned by this user, that no one else may
 * write; -1 otherwise (logged). Its etcd holds the key that mints lease
 * tokens: a directory another user made first (/tmp/ferry-<uid>, when
 * there is no HOME) would let them read or swap that etcd's data, or point
 * its log at a file of ours. Everything in it is then reached through the
 * descriptor, so the directory checked is the one used. */
static int open_private_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    struct stat st;

    if (fd < 0) {
        if (errno == ENOTDIR || errno == ELOOP) {
            ferry_error("private etcd: the state directory %s is not a directory (a link?); "
                        "refusing it (--state-dir)",
                        dir);
        } else {
            ferry_error("private etcd: %s: %s", dir, strerror(errno));
        }
        return -1;
    }
    if (fstat(fd, &st) != 0) {
        ferry_error("private etcd: %s: %s", dir, strerror(errno));
    } else if (st.st_uid != geteuid()) {
        ferry_error("private etcd: the state directory %s belongs to uid %d, not to this user "
                    "(%d); refusing it (--state-dir)",
                    dir, (int)st.st_uid, (int)geteuid());
    } else if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
        ferry_error("private etcd: others may write to the state directory %s (mode %03o); "
                    "refusing it (chmod go-w, or --state-dir)",
                    dir, (unsigned)(st.st_mode & 0777));
    } else {
        return fd;
    }
    close(fd);
    return -1;
}

/* The root password of the private etcd, in PASSWORD_FILE of the state
 * directory: read, or made (random) on the first start. etcd's client port
 * is on loopback, where every local user can connect: with auth on, only
 * a holder of this file (mode 0600, this user's) gets in. */
static ferry_status_t load_password(coord_etcd_child_t *child, int dir_fd)
{
    uint8_t raw[PASSWORD_BYTES];
    struct stat st;
    ssize_t n;
    int fd = openat(dir_fd, PASSWORD_FILE, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);

    if (fd < 0 && errno == ENOENT) {
        if (getrandom(raw, sizeof(raw), 0) != (ssize_t)sizeof(raw)) {
            ferry_error("private etcd: getrandom: %s", strerror(errno));
            return FERRY_ERR_IO;
        }
        ferry_hex(child->password, raw, sizeof(raw));
        /* Whole or not at all: written aside, then renamed into place;
         * into a file made now (one a killed start left may have another
         * mode). */
        (void)unlinkat(dir_fd, PASSWORD_FILE ".new", 0);
        fd = openat(dir_fd, PASSWORD_FILE ".new",
                    O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        /* The directory synced too: etcd's data, set up with this password
         * next, must not outlive the file's name after a crash. */
        if (fd < 0 || dprintf(fd, "%s\n", child->password) < 0 || fsync(fd) != 0 ||
            renameat(dir_fd, PASSWORD_FILE ".new", dir_fd, PASSWORD_FILE) != 0 ||
            fsync(dir_fd) != 0) {
            ferry_error("private etcd: cannot write %s/%s: %s", child->state_dir, PASSWORD_FILE,
                        strerror(errno));
            if (fd >= 0) {
                close(fd);
            }
            return FERRY_ERR_IO;
        }
        close(fd);
        return FERRY_OK;
    }
    if (fd < 0 || fstat(fd, &st) != 0) {
        ferry_error("private etcd: cannot read %s/%s: %s%s", child->state_dir, PASSWORD_FILE,
                    strerror(errno), errno == ELOOP ? " (a link: refused)" : "");
        if (fd >= 0) {
            close(fd);
        }
        return FERRY_ERR_IO;
    }
    if (!S_ISREG(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 077) != 0) {
        ferry_error("private etcd: %s/%s must be a file of this user's that no one else may "
                    "read (mode 0600); refusing it",
                    child->state_dir, PASSWORD_FILE);
        close(fd);
        return FERRY_ERR_PERMISSION_DENIED;
    }
    n = read(fd, child->password, sizeof(child->password) - 1);
    close(fd);
    child->password[n > 0 ? n : 0] = '\0';
    child->password[strcspn(child->password, "\r\n")] = '\0';
    if (strlen(child->password) < PASSWORD_MIN) {
        ferry_error("private etcd: %s/%s holds no password of at least %d characters",
                    child->state_dir, PASSWORD_FILE, PASSWORD_MIN);
        return FERRY_ERR_INVALID_ARGUMENT;
    }
    return FERRY_OK;
}

/* In the child, before exec: etcd reads ETCD_* variables as flags (and
 * refuses to start where one shadows a flag given), and the password of
 * another etcd (--etcd-user) is none of its business. Its flags say all;
 * ETCD_UNSUPPORTED_ARCH, which upstream etcd needs on arm64 and others,
 * stays. A filtered copy becomes the environment (unsetenv cannot remove
 * an entry without '='). */
static void clean_environment(void)
{
    extern char **environ;
    size_t n = 0, kept = 0;
    char **env;

    while (environ[n] != NULL) {
        n++;
    }
    env = calloc(n + 1, sizeof(*env));
    if (env == NULL) {
        _exit(127);
    }
    for (size_t i = 0; i < n; i++) {
        const char *v = environ[i];
        if ((strncmp(v, "ETCD_", 5) == 0 && strncmp(v, "ETCD_UNSUPPORTED_ARCH=", 22) != 0) ||
            strncmp(v, "FERRY_ETCD_PASSWORD=", 20) == 0) {
            continue;
        }
        env[kept++] = environ[i];
    }
    environ = env;
}

/* In the child: log_fd becomes its stdout and stderr; it runs in the state
 * directory (dir_fd), where its client and peer sockets are, so that only
 * this user reaches them (a single member needs no peer, but etcd listens
 * for them); it keeps lock_fd open, and so the state directory's lock,
 * for as long as it runs. parent: the coordinator's pid. */
static void exec_etcd(int dir_fd, int log_fd, int lock_fd, pid_t parent)
{
    const char *bin = getenv("FERRY_ETCD_BIN") != NULL ? getenv("FERRY_ETCD_BIN") : "etcd";
    sigset_t none;

    /* The coordinator blocks its signals for sigwait; etcd must not inherit
     * that, or SIGTERM would not stop it. */
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) {
        _exit(127); /* the coordinator died before the line above */
    }
    /* etcd makes its sockets with bind(), mode 0777 less the umask, and
     * changes none: with the umask a supervisor left (0002, 0000), a group
     * or everyone could connect, and etcd's peer port has no auth at all.
     * Its own files it makes with modes of its own. */
    umask(077);
    if (fcntl(lock_fd, F_SETFD, 0) != 0) { /* kept across exec */
        _exit(127);
    }
    clean_environment();
    dup2(log_fd, STDOUT_FILENO);
    dup2(log_fd, STDERR_FILENO);
    if (fchdir(dir_fd) != 0) {
        fprintf(stderr, "fchdir to the state directory: %s\n", strerror(errno));
        _exit(127);
    }
    execlp(bin, bin, "--name", "ferry", "--data-dir", DATA_DIR, "--listen-client-urls", CLIENT_URL,
           "--advertise-client-urls", CLIENT_URL, "--listen-peer-urls", PEER_URL,
           "--initial-advertise-peer-urls", PEER_URL, "--initial-cluster", "ferry=" PEER_URL,
           "--auto-compaction-mode", "periodic", "--auto-compaction-retention",
           COMPACTION_RETENTION, (char *)NULL);
    fprintf(stderr, "exec %s: %s\n", bin, strerror(errno));
    _exit(127);
}

/* Every start: etcd's auth is off until its first start turns it on, and
 * before its client port was a socket in the state directory it was on
 * loopback, where a local user who connected in that window could have
 * added a user of their own (and granted it root). Such a user stops the
 * start: it could read every operation. */
static ferry_status_t only_root(const coord_etcd_child_t *child, etcd_client_t *client)
{
    char others[256];
    ferry_status_t status = etcd_auth_only_root(client, others, sizeof(others));

    if (status == FERRY_ERR_PERMISSION_DENIED) {
        ferry_error("private etcd: it has users besides root (%s), which only someone who "
                    "reached its port while its auth was off (the first start, when an older "
                    "version listened on loopback) could have added, and who may read every "
                    "operation; not starting: move %s away to "
                    "start afresh",
                    others, child->data_dir);
    } else if (status != FERRY_OK) {
        ferry_error("private etcd: cannot list its users: %s; see %s", ferry_status_string(status),
                    child->log_path);
    }
    return status;
}

/* The last line of etcd's log, escaped, into out ("" if none): when etcd
 * dies starting, what it (or exec_etcd, for a binary that is not there)
 * said last, so that the cause is in the coordinator's own log. Read
 * through the state directory, as the log was made. */
static void log_last_line(const coord_etcd_child_t *child, char *out, size_t cap)
{
    char tail[512];
    ssize_t n = 0;
    int fd = openat(child->dir_fd, LOG_FILE, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    off_t size = fd >= 0 ? lseek(fd, 0, SEEK_END) : -1;

    out[0] = '\0';
    if (size > 0) {
        off_t from = size > (off_t)sizeof(tail) - 1 ? size - (off_t)sizeof(tail) + 1 : 0;
        n = pread(fd, tail, sizeof(tail) - 1, from);
    }
    if (fd >= 0) {
        close(fd);
    }
    if (n <= 0) {
        return;
    }
    while (n > 0 && (tail[n - 1] == '\n' || tail[n - 1] == '\r')) {
        n--;
    }
    tail[n] = '\0';
    char *line = strrchr(tail, '\n');
    ferry_text_escape(out, cap, line != NULL ? line + 1 : tail);
}

static ferry_status_t wait_ready(coord_etcd_child_t *child)
{
    etcd_params_t params = {.endpoints = child->endpoint,
                            .username = COORD_ETCD_CHILD_USER,
                            .password = child->password,
                            .timeout_ms = 1000};
    etcd_client_t *client;
    ferry_status_t status = etcd_client_create(&params, &client);

    if (status != FERRY_OK) {
        return status;
    }
    status = FERRY_ERR_TIMED_OUT;
    /* A deadline, not a count of sleeps: each ping may take the client's
     * timeout (an etcd that has bound its socket but does not answer yet),
     * and START_TIMEOUT_MS used to mean ten minutes then. */
    for (int64_t deadline = now_ms() + START_TIMEOUT_MS; now_ms() < deadline;) {
        int wstatus;
        if (waitpid(child->pid, &wstatus, WNOHANG) == child->pid) {
            char last[512];
            log_last_line(child, last, sizeof(last));
            ferry_error("private etcd exited during start-up (%s %d)%s%s; see %s",
                        WIFEXITED(wstatus) ? "exit" : "signal",
                        WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : WTERMSIG(wstatus),
                        last[0] != '\0' ? ": " : "", last, child->log_path);
            child->pid = 0;
            status = FERRY_ERR_UNAVAILABLE;
            break;
        }
        status = etcd_ping(client, NULL);
        if (status == FERRY_OK || status == FERRY_ERR_UNAUTHENTICATED) {
            break; /* up; refused, it will not let us in by waiting */
        }
        status = FERRY_ERR_TIMED_OUT;
        sleep_ms(POLL_MS);
    }
    if (status == FERRY_ERR_UNAUTHENTICATED) {
        ferry_error("private etcd: root's password in %s/%s was refused (its data in %s set up "
                    "with another one? move that directory away to start afresh)",
                    child->state_dir, PASSWORD_FILE, child->data_dir);
    } else if (status == FERRY_OK) {
        /* Every start: a state directory of an older version has none. */
        status = etcd_auth_enable_root(client);
        if (status != FERRY_OK) {
            ferry_error("private etcd: cannot turn its auth on: %s; see %s",
                        ferry_status_string(status), child->log_path);
        } else {
            status = only_root(child, client);
        }
    }
    etcd_client_destroy(client);
    return status;
}

/* The first line of the lock file: who holds the lock (note_holders). */
static void read_holders(int lock_fd, char *holders, size_t cap)
{
    ssize_t n = pread(lock_fd, holders, cap - 1, 0);

    holders[n > 0 ? n : 0] = '\0';
    holders[strcspn(holders, "\n")] = '\0';
}

/* Whether pid has exited (a zombie has: it only waits to be reaped). A
 * process of another user answers EPERM: there, alive. */
static bool process_gone(pid_t pid)
{
    char path[64], text[512];
    char *state;
    ssize_t n;
    int fd;

    if (kill(pid, 0) != 0) {
        return errno == ESRCH;
    }
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return errno == ENOENT;
    }
    n = read(fd, text, sizeof(text) - 1);
    close(fd);
    text[n > 0 ? n : 0] = '\0';
    state = strrchr(text, ')'); /* "pid (comm) S ...": comm may hold anything */
    return state != NULL && state[1] == ' ' && (state[2] == 'Z' || state[2] == 'X');
}

/* A coordinator killed (or crashed) leaves its etcd running for a moment:
 * that etcd got SIGTERM (PR_SET_PDEATHSIG) and holds the lock while it
 * shuts down. A supervisor that restarts the coordinator at once without
 * first ending its children (a shell loop, runit, systemd with
 * KillMode=process) used to have it refused, again and again, until it gave
 * up on it. When the lock file says the
 * coordinator that holds it is gone and names its etcd, the lock is waited
 * for as long as a coordinator's own stop gives its etcd (SIGTERM, then
 * SIGKILL): true once taken. A live coordinator is refused at once. */
static bool orphan_gone(int lock_fd, const char *state_dir)
{
    int64_t deadline = now_ms() + ORPHAN_WAIT_MS;
    char holders[96];
    int coordinator, etcd;

    read_holders(lock_fd, holders, sizeof(holders));
    if (sscanf(holders, "coordinator pid %d, its etcd pid %d", &coordinator, &etcd) != 2 ||
        coordinator <= 0 || etcd <= 0 ||
        (coordinator != (int)getpid() && !process_gone(coordinator))) {
        return false;
    }
    ferry_info("private etcd: the coordinator that used %s (pid %d) is gone and its etcd (pid %d) "
               "still holds the directory's lock; waiting up to %d ms for it to exit",
               state_dir, coordinator, etcd, ORPHAN_WAIT_MS);
    while (now_ms() < deadline) {
        sleep_ms(POLL_MS);
        if (flock(lock_fd, LOCK_EX | LOCK_NB) == 0) {
            return true;
        }
        if (errno != EWOULDBLOCK) {
            break; /* not a holder's: waiting would not change it */
        }
    }
    return false;
}

/* One coordinator per state directory: a second one's etcd would find the
 * first one's data locked, and its start would take the first one's client
 * socket away. The lock is on a file in the directory (a directory cannot
 * be opened for writing, which flock needs on NFS), held through the
 * returned descriptor by the coordinator until it stops and by its etcd,
 * which inherits it, until that exits: an etcd that outlived a killed
 * coordinator (stopped, or still shutting down) keeps the next one off
 * instead of having its socket taken; the next one waits a while for it
 * (orphan_gone). -1 when refused (logged); *status_p says why. */
static int lock_state_dir(const char *state_dir, int dir_fd, ferry_status_t *status_p)
{
    int fd = openat(dir_fd, LOCK_FILE, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    struct stat st;
    int err;

    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid()) {
        ferry_error("private etcd: cannot use %s/%s as its lock: %s", state_dir, LOCK_FILE,
                    fd < 0 ? strerror(errno) : "not a file of this user's");
        if (fd >= 0) {
            close(fd);
        }
        *status_p = FERRY_ERR_IO;
        return -1;
    }
    /* The directory itself, shared: systemd-tmpfiles leaves a locked
     * directory's files alone (the default /tmp/ferry-<uid> is under its
     * age-based cleaning), and a coordinator of a version that locked the
     * directory itself, exclusively, is kept off. Where the file system
     * cannot lock a directory (NFS), the file's lock below still holds. */
    if (flock(dir_fd, LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK) {
        ferry_error("private etcd: another coordinator uses the state directory %s; refusing to "
                    "start a second one on it (--state-dir)",
                    state_dir);
        close(fd);
        *status_p = FERRY_ERR_ALREADY_EXISTS;
        return -1;
    }
    err = flock(fd, LOCK_EX | LOCK_NB) == 0 ? 0 : errno;
    if (err == 0 || (err == EWOULDBLOCK && orphan_gone(fd, state_dir))) {
        /* The holders of before are gone: until note_holders names ours,
         * the file names no one, and a coordinator started meanwhile is
         * refused at once rather than wait for a stopped one's etcd. */
        if (ftruncate(fd, 0) != 0) {
            ferry_debug("private etcd: cannot clear the lock's holders: %s", strerror(errno));
        }
        return fd;
    }
    if (err == EWOULDBLOCK) {
        char holders[96];
        read_holders(fd, holders, sizeof(holders));
        ferry_error("private etcd: another coordinator, or the etcd of one that stopped, uses "
                    "the state directory %s (%s); refusing to start a second one on it "
                    "(--state-dir)",
                    state_dir, holders[0] != '\0' ? holders : "its lock file names no one");
        *status_p = FERRY_ERR_ALREADY_EXISTS;
    } else {
        ferry_error("private etcd: cannot lock %s/%s: %s", state_dir, LOCK_FILE, strerror(err));
        *status_p = FERRY_ERR_IO;
    }
    close(fd);
    return -1;
}

/* Who holds the lock, for the message of a start it refuses (lslocks
 * names the process that took it, not the etcd that inherited it). */
static void note_holders(int lock_fd, pid_t coordinator, pid_t etcd)
{
    char text[96];
    int n = snprintf(text, sizeof(text), "coordinator pid %d, its etcd pid %d\n", (int)coordinator,
                     (int)etcd);

    if (ftruncate(lock_fd, 0) != 0 || pwrite(lock_fd, text, (size_t)n, 0) != n) {
        ferry_debug("private etcd: cannot note the lock's holders: %s", strerror(errno));
    }
}

/* Moves a log grown past LOG_MAX_BYTES to LOG_PREVIOUS, replacing the
 * one there (a link is renamed, not followed); one that cannot be moved
 * is warned about and grows on. */
static void rotate_log(int dir_fd, const char *state_dir)
{
    struct stat st;

    if (fstatat(dir_fd, LOG_FILE, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode) ||
        st.st_size <= LOG_MAX_BYTES) {
        return;
    }
    if (renameat(dir_fd, LOG_FILE, dir_fd, LOG_PREVIOUS) != 0) {
        ferry_warn("private etcd: cannot move its %lld-byte log %s/%s aside: %s",
                   (long long)st.st_size, state_dir, LOG_FILE, strerror(errno));
        return;
    }
    ferry_info("private etcd: its log had %lld bytes; the next one starts afresh, the last "
               "kept as %s/%s",
               (long long)st.st_size, state_dir, LOG_PREVIOUS);
}

ferry_status_t coord_etcd_child_start(const char *state_dir, coord_etcd_child_t *child)
{
    ferry_status_t status = FERRY_OK;
    int dir_fd, log_fd, lock_fd;
    pid_t self = getpid();

    memset(child, 0, sizeof(*child));
    child->dir_fd = -1;
    child->lock_fd = -1;
    if (mkdir_p(state_dir) != 0) {
        ferry_error("private etcd: cannot make %s: %s", state_dir, strerror(errno));
        return FERRY_ERR_IO;
    }
    dir_fd = open_private_dir(state_dir);
    if (dir_fd < 0) {
        return FERRY_ERR_PERMISSION_DENIED;
    }
    lock_fd = lock_state_dir(state_dir, dir_fd, &status);
    if (lock_fd < 0) {
        close(dir_fd);
        return status;
    }
    snprintf(child->state_dir, sizeof(child->state_dir), "%s", state_dir);
    snprintf(child->data_dir, sizeof(child->data_dir), "%s/%s", state_dir, DATA_DIR);
    snprintf(child->log_path, sizeof(child->log_path), "%s/%s", state_dir, LOG_FILE);
    /* Through the directory held open, so the socket reached is the one in
     * the directory checked, and no path is too long for a sockaddr_un. */
    snprintf(child->endpoint, sizeof(child->endpoint), "unix:///proc/self/fd/%d/%s", dir_fd,
             CLIENT_SOCKET);
    status = load_password(child, dir_fd);
    if (status != FERRY_OK) {
        close(lock_fd);
        close(dir_fd);
        return status;
    }
    /* One that etcd left when it was killed: etcd would not listen on it. */
    if (unlinkat(dir_fd, CLIENT_SOCKET, 0) != 0 && errno != ENOENT) {
        ferry_error("private etcd: cannot remove the old socket %s/%s: %s", state_dir,
                    CLIENT_SOCKET, strerror(errno));
        close(lock_fd);
        close(dir_fd);
        return FERRY_ERR_IO;
    }
    rotate_log(dir_fd, state_dir);
    /* Not through a link: the log is ours, where we said. */
    log_fd = openat(dir_fd, LOG_FILE, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (log_fd < 0) {
        ferry_error("private etcd: cannot open its log %s: %s%s", child->log_path, strerror(errno),
                    errno == ELOOP ? " (a link: refused)" : "");
        close(lock_fd);
        close(dir_fd);
        return FERRY_ERR_IO;
    }

    child->pid = fork();
    if (child->pid < 0) {
        ferry_error("private etcd: fork: %s", strerror(errno));
        close(log_fd);
        close(lock_fd);
        close(dir_fd);
        return FERRY_ERR_IO;
    }
    if (child->pid == 0) {
        exec_etcd(dir_fd, log_fd, lock_fd, self);
    }
    close(log_fd);
    child->dir_fd = dir_fd;
    child->lock_fd = lock_fd;
    note_holders(lock_fd, self, child->pid);
    status = wait_ready(child);
    if (status != FERRY_OK) {
        coord_etcd_child_stop(child);
        return status;
    }
    ferry_info("started a private etcd at unix://%s/%s (pid %d, data in %s, log %s; auth on, "
               "root's password in %s/%s)",
               state_dir, CLIENT_SOCKET, (int)child->pid, child->data_dir, child->log_path,
               state_dir, PASSWORD_FILE);
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
    bool stopped = child->pid <= 0;

    if (!stopped) {
        kill(child->pid, SIGTERM);
        stopped = reap_within(child->pid, STOP_TIMEOUT_MS);
        if (stopped) {
            ferry_info("private etcd stopped");
        }
    }
    if (!stopped) {
        ferry_warn("private etcd did not stop in %d ms; killing it", STOP_TIMEOUT_MS);
        kill(child->pid, SIGKILL);
        if (!reap_within(child->pid, REAP_TIMEOUT_MS)) {
            /* Stuck in the kernel (disk I/O): its lock goes when it does. */
            ferry_error("private etcd (pid %d) is still there %d ms after SIGKILL; leaving it",
                        (int)child->pid, REAP_TIMEOUT_MS);
        }
    }
    child->pid = 0;
    /* Only now (and once etcd is gone, which holds it too) may another
     * coordinator start on the directory. */
    if (child->lock_fd > 0) {
        close(child->lock_fd);
        child->lock_fd = -1;
    }
    if (child->dir_fd > 0) {
        close(child->dir_fd);
        child->dir_fd = -1;
    }
}
