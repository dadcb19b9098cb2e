/*
 * testproc.h: helpers for tests that run real processes (library
 * ferry_testsupport).
 *
 *   - test_free_port: a free loopback TCP port;
 *   - test_wait_for: wait for a condition with a deadline (the only way
 *     tests synchronize: no fixed sleeps);
 *   - test_tmpdir_*: a private temporary directory, removed afterwards;
 *   - test_proc_*: a child process with its output in a log file, stopped
 *     with SIGTERM then SIGKILL, or killed, paused and resumed;
 *   - test_etcd_*: a real etcd on free loopback ports with its own data
 *     directory, which can go down and come back on the same ports and data.
 *
 * Typical use:
 *
 *   test_etcd_t etcd;
 *   assert_int_equal(test_etcd_start(&etcd, NULL), 0);
 *   ... etcd.endpoint is "http://127.0.0.1:<port>" ...
 *   test_etcd_down(&etcd);          // SIGTERM, data kept
 *   assert_int_equal(test_etcd_up(&etcd), 0);   // same port, same data
 *   test_etcd_stop(&etcd);          // stopped and its directory removed
 *
 * Children get PR_SET_PDEATHSIG(SIGKILL): if the test process dies (crash,
 * timeout), its children die with it. The signal is tied to the thread that
 * started the child, so start children from the test's main thread.
 *
 * Functions that can fail return 0 on success and -1 on failure, after
 * printing the cause to stderr. Nothing here is thread-safe: one test
 * thread drives these objects.
 */
#ifndef FERRY_TESTS_TESTPROC_H
#define FERRY_TESTS_TESTPROC_H

#include <stdbool.h>
#include <sys/types.h>

/* A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0 and
 * closed). Another process may still take it: starting a server on it can
 * fail, which test_etcd_start handles by trying other ports. -1 on error. */
int test_free_port(void);

/* Calls cond(arg) every few milliseconds until it returns true (-> true)
 * or timeout_ms has passed (-> false, after one last check). */
bool test_wait_for(bool (*cond)(void *arg), void *arg, int timeout_ms);

/* Monotonic milliseconds, for deadlines in tests. */
long long test_now_ms(void);

/* Makes a directory $TMPDIR/ferry-<tag>-XXXXXX (or under /tmp). Returns
 * the malloc'ed path, NULL on failure. */
char *test_tmpdir_create(const char *tag);
/* Removes path and everything under it; NULL is a no-op. */
void test_tmpdir_remove(const char *path);

/* --- child processes ----------------------------------------------------- */

typedef struct {
    pid_t pid;      /* 0 when not started or already reaped */
    int status;     /* wait status once reaped (WIFEXITED etc.) */
    bool reaped;    /* the child has exited and was waited for */
    char *log_path; /* malloc'ed copy; stdout and stderr go there */
} test_proc_t;

/* Starts argv[0] (looked up in PATH when it has no '/') with argv, stdin
 * from /dev/null and stdout + stderr appended to log_path. */
int test_proc_start(test_proc_t *proc, char *const argv[], const char *log_path);

/* True while the child has not exited (reaps it when it has). */
bool test_proc_running(test_proc_t *proc);

/* Waits up to timeout_ms for the child to exit; true when it did. */
bool test_proc_wait(test_proc_t *proc, int timeout_ms);

/* SIGTERM, wait up to timeout_ms, then SIGKILL and wait. Returns the wait
 * status (see waitpid); -1 when there was no child. */
int test_proc_stop(test_proc_t *proc, int timeout_ms);

/* SIGKILL and wait. */
void test_proc_kill(test_proc_t *proc);

/* SIGSTOP / SIGCONT: the process keeps its sockets but stops answering. */
int test_proc_pause(test_proc_t *proc);
int test_proc_resume(test_proc_t *proc);

/* Copies the last max_bytes of the child's log to stderr (for failures). */
void test_proc_dump_log(const test_proc_t *proc, long max_bytes);

/* Kills the child if it still runs and frees log_path. A child that had
 * died of a signal other than SIGKILL or SIGTERM (a crash) gets the end of
 * its log copied to stderr first. */
void test_proc_cleanup(test_proc_t *proc);

/* --- a real etcd --------------------------------------------------------- */

typedef struct {
    test_proc_t proc;
    char *dir; /* temp dir: data/ and etcd.log inside */
    int client_port;
    int peer_port;
    char endpoint[64]; /* "http://127.0.0.1:<client_port>" */
    char **extra_args; /* NULL-terminated copy, or NULL */
} test_etcd_t;

/* Starts /usr/bin/etcd (or $FERRY_ETCD_BIN, the variable the coordinator
 * reads for its private etcd; FERRY_ETCD is the coordinator's endpoint list)
 * on free ports with a new data directory and waits (up to 15 s) until it
 * answers GET /health. extra_args (NULL-terminated, may be NULL) are appended to the command
 * line, e.g. {"--auth-token-ttl", "2", NULL}; they are kept for test_etcd_up.
 * On failure it prints the etcd log and leaves nothing behind. */
int test_etcd_start(test_etcd_t *etcd, const char *const *extra_args);

/* Takes etcd down (SIGTERM, then SIGKILL after 5 s), keeping its data and
 * ports, so that test_etcd_up can bring the same member back. */
void test_etcd_down(test_etcd_t *etcd);

/* kill -9, keeping the data and ports. */
void test_etcd_kill(test_etcd_t *etcd);

/* Starts etcd again on the same ports and data after down/kill, and waits
 * until it answers. */
int test_etcd_up(test_etcd_t *etcd);

/* True when GET <endpoint>/health answers 200 within 500 ms. */
bool test_etcd_healthy(const test_etcd_t *etcd);

/* Stops etcd and removes its directory; safe on a stopped or zeroed one. */
void test_etcd_stop(test_etcd_t *etcd);

#endif /* FERRY_TESTS_TESTPROC_H */
