/*
 * ferry_worker.c: ferry-worker, the command-line worker built on libferry.
 *
 *   recv   allocate --size bytes, register a writable under --request-id,
 *          wait for a sender, check every byte against the pattern
 *   send   look --request-id up, write the pattern into it
 *   serve  allocate, fill with the pattern, register a readable, wait
 *   read   look --request-id up, read it, check every byte
 *
 * It moves host memory only (--device cpu): GPU memory moves through
 * libferry or the Python package with cuda:N descriptors (README, "GPU").
 *
 * Exit codes, for scripts: 0 done and verified; 1 the transfer failed;
 * 2 bad usage, or the coordinator refused the pairing (sizes, count or kind
 * differ); 3 the bytes did not match; 4 timed out (a request ID never
 * registered included: a sender waits for it); 5 the coordinator refused
 * (taken, ended, wrong token, or the two sides differ in
 * --peer-error-handling) (exit_code_for). Stopped by signal N (SIGTERM,
 * SIGINT, SIGHUP), it cancels its operation, releases its records, then
 * dies of N (stop_exit: 128 + N where the signal is not delivered).
 *
 * Every number a flag takes is range-checked before anything is allocated
 * (FLAG_* below; README's table): a value out of range is refused with exit
 * 2 and a message naming the flag and the range.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ferry/coordinator.h>

#include "common/log.h"
#include "common/md_rules.h"
#include "common/text.h"
#include "pattern.h"
#include "common/tls_flags.h"
#include "stats_json.h"

enum {
    EXIT_OK = 0,
    EXIT_FAILED = 1,
    EXIT_USAGE = 2,
    EXIT_MISMATCH = 3,
    EXIT_TIMEOUT = 4,
    EXIT_REFUSED = 5
};

/* The ranges of the numeric flags. Sizes stop at 1 TiB so that rounding the
 * buffer up to a page can never wrap; descriptors and TTL are the
 * coordinator's own limits, taken from their owner (common/md_rules.h). */
#define FLAG_SIZE_MAX        (UINT64_C(1) << 40)
#define FLAG_DESCRIPTORS_MAX FERRY_MD_DESCRIPTORS_MAX
#define FLAG_TIMEOUT_MIN_S   0.001
#define FLAG_TIMEOUT_MAX_S   86400.0
#define FLAG_TTL_MAX         FERRY_TTL_MAX

typedef struct {
    const char *command;
    const char *coordinator;
    const char *request_id;
    const char *token;
    const char *token_file; /* recv/serve: where the coordinator's token goes */
    uint64_t size;
    size_t descriptors;
    ferry_device_t device;
    int timeout_ms;
    int ttl_s;
    bool quiet;
    const char *tls_ca;
    const char *tls_cert;
    const char *tls_key;
    const char *tls_server_name;
    const char *stats_json; /* NULL: none; "-": stdout */
    int peer_errors;        /* --peer-error-handling: 1 on, 0 off, -1 libferry's default */
} options_t;

static const char usage[] =
    "usage: ferry-worker recv|send|serve|read [options]\n"
    "\n"
    "  --coordinator ADDR   ferry-coordinator address (FERRY_COORDINATOR; 127.0.0.1:7400)\n"
    "  --request-id ID      the operation's request ID (required)\n"
    "  --token T            access token shared by both sides (FERRY_TOKEN); recv/serve\n"
    "                       without one print the token libferry drew\n"
    "  --token-file PATH    recv/serve without a token: write the drawn one to\n"
    "                       PATH (a new file, mode 0600, removed at the end) instead\n"
    "                       of stdout, which a service's log keeps for anyone\n"
    "  --size N             bytes to move, 1 B..1 TiB: 4096, 64MiB, 1GiB (default 1MiB)\n"
    "  --descriptors N      split the buffer into N regions, 1..1024 (default 1)\n"
    "  --device D           cpu, the default and the only one: ferry-worker moves host\n"
    "                       memory (GPU memory: libferry or Python, cuda:N descriptors)\n"
    "  --timeout SECONDS    how long to wait for the peer and the transfer,\n"
    "                       0.001..86400 (default 60); each call to the coordinator\n"
    "                       (connect, register, release) has its own 10 s\n"
    "  --ttl SECONDS        lease TTL at the coordinator, 1..3600 (default: the\n"
    "                       coordinator's)\n"
    "  --quiet              no progress line\n"
    "  --tls-ca PEM         reach the coordinator over TLS, trusting this CA (FERRY_TLS_CA)\n"
    "  --tls-cert PEM       client certificate for it (FERRY_TLS_CERT)\n"
    "  --tls-key PEM        and its key (FERRY_TLS_KEY)\n"
    "  --tls-server-name N  name to verify instead of the address's host\n"
    "                       (the last three need --tls-ca; cert and key go together)\n"
    "  --stats-json FILE    on exit, write libferry's counters (operations and bytes by\n"
    "                       direction and outcome, endpoints, keys) as one JSON object\n"
    "                       to FILE ('-': stdout, after the other output)\n"
    "  --peer-error-handling on|off\n"
    "                       the connector's peer_error_handling (FERRY_PEER_ERROR_HANDLING;\n"
    "                       default on); every worker that transfers with this one must\n"
    "                       say the same (README, \"Peer failure\")\n";

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* An integer flag in [lo, hi]; false, said, when text is not one. */
static bool parse_int_flag(const char *flag, const char *text, long lo, long hi, long *value_p)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(text, &end, 10);
    if (text[0] == '\0' || *end != '\0' || errno != 0 || v < lo || v > hi) {
        fprintf(stderr, "ferry-worker: %s must be an integer from %ld to %ld, not '%s'\n", flag, lo,
                hi, text);
        return false;
    }
    *value_p = v;
    return true;
}

static bool parse_size_flag(const char *text, uint64_t *size_p)
{
    if (ferry_parse_size(text, size_p) != FERRY_OK) {
        fprintf(stderr, "ferry-worker: --size: %s\n", ferry_last_error_message());
        return false;
    }
    if (*size_p == 0 || *size_p > FLAG_SIZE_MAX) {
        fprintf(stderr,
                "ferry-worker: --size must be from 1 byte to 1TiB (%" PRIu64 " bytes), not '%s'\n",
                FLAG_SIZE_MAX, text);
        return false;
    }
    return true;
}

/* Seconds, fractions allowed, in [FLAG_TIMEOUT_MIN_S, FLAG_TIMEOUT_MAX_S]:
 * checked as a double before it becomes milliseconds in an int. */
static bool parse_timeout_flag(const char *text, int *ms_p)
{
    char *end;
    double s = strtod(text, &end);

    if (text[0] == '\0' || *end != '\0' || !(s >= FLAG_TIMEOUT_MIN_S && s <= FLAG_TIMEOUT_MAX_S)) {
        fprintf(stderr, "ferry-worker: --timeout must be from %g to %g seconds, not '%s'\n",
                FLAG_TIMEOUT_MIN_S, FLAG_TIMEOUT_MAX_S, text);
        return false;
    }
    *ms_p = (int)(s * 1000.0 + 0.5);
    return true;
}

/* "on" (1) or "off" (0); false, said, for anything else (an empty
 * variable too: set but empty is refused, not taken as unset). */
static bool parse_on_off(const char *what, const char *text, int *value_p)
{
    if (strcmp(text, "on") == 0 || strcmp(text, "off") == 0) {
        *value_p = strcmp(text, "on") == 0;
        return true;
    }
    fprintf(stderr, "ferry-worker: %s must be on or off, not '%s'\n", what, text);
    return false;
}

/* The TLS flags' rules (common/tls_flags.h); false, said, when broken. */
static bool check_tls_flags(const options_t *o)
{
    ferry_tls_flags_t f = {o->tls_ca, o->tls_cert, o->tls_key, o->tls_server_name};

    return ferry_tls_flags_check("ferry-worker", &f);
}

static int parse_options(int argc, char **argv, options_t *o)
{
    static const struct option longopts[] = {
        {"coordinator", required_argument, NULL, 'c'},
        {"request-id", required_argument, NULL, 'r'},
        {"token", required_argument, NULL, 't'},
        {"token-file", required_argument, NULL, 'F'},
        {"size", required_argument, NULL, 's'},
        {"descriptors", required_argument, NULL, 'n'},
        {"device", required_argument, NULL, 'd'},
        {"timeout", required_argument, NULL, 'T'},
        {"ttl", required_argument, NULL, 'L'},
        {"quiet", no_argument, NULL, 'q'},
        {"tls-ca", required_argument, NULL, 'A'},
        {"tls-cert", required_argument, NULL, 'C'},
        {"tls-key", required_argument, NULL, 'K'},
        {"tls-server-name", required_argument, NULL, 'N'},
        {"stats-json", required_argument, NULL, 'J'},
        {"peer-error-handling", required_argument, NULL, 'P'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int opt;
    long n;

    memset(o, 0, sizeof(*o));
    /* An empty FERRY_COORDINATOR is unset (FERRY_COORDINATOR= in a script),
     * as an empty FERRY_TOKEN is no token: it was taken as the target. */
    o->coordinator = getenv("FERRY_COORDINATOR");
    if (o->coordinator == NULL || o->coordinator[0] == '\0') {
        o->coordinator = "127.0.0.1:7400";
    }
    o->token = getenv("FERRY_TOKEN");
    o->tls_ca = getenv("FERRY_TLS_CA");
    o->tls_cert = getenv("FERRY_TLS_CERT");
    o->tls_key = getenv("FERRY_TLS_KEY");
    o->size = 1 << 20;
    o->descriptors = 1;
    o->device = (ferry_device_t)FERRY_DEVICE_HOST_INIT;
    o->timeout_ms = 60000;
    o->peer_errors = -1;
    if (argc < 2 || argv[1][0] == '-') {
        fputs(usage, argc >= 2 && strcmp(argv[1], "--help") == 0 ? stdout : stderr);
        return argc >= 2 && strcmp(argv[1], "--help") == 0 ? 1 : -1;
    }
    o->command = argv[1];
    if (getenv("FERRY_PEER_ERROR_HANDLING") != NULL &&
        !parse_on_off("FERRY_PEER_ERROR_HANDLING", getenv("FERRY_PEER_ERROR_HANDLING"),
                      &o->peer_errors)) {
        return -1;
    }
    optind = 2;
    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            o->coordinator = optarg;
            break;
        case 'r':
            o->request_id = optarg;
            break;
        case 't':
            o->token = optarg;
            break;
        case 'F':
            o->token_file = optarg;
            break;
        case 's':
            if (!parse_size_flag(optarg, &o->size)) {
                return -1;
            }
            break;
        case 'n':
            if (!parse_int_flag("--descriptors", optarg, 1, FLAG_DESCRIPTORS_MAX, &n)) {
                return -1;
            }
            o->descriptors = (size_t)n;
            break;
        case 'd':
            if (ferry_device_parse(optarg, &o->device) != FERRY_OK) {
                fprintf(stderr, "ferry-worker: --device: %s\n", ferry_last_error_message());
                return -1;
            }
            if (o->device.kind != FERRY_DEVICE_HOST) {
                fprintf(stderr,
                        "ferry-worker: --device %s: ferry-worker moves host memory only "
                        "(--device cpu); for GPU memory use libferry or the Python package "
                        "with cuda:N descriptors\n",
                        optarg);
                return -1;
            }
            break;
        case 'T':
            if (!parse_timeout_flag(optarg, &o->timeout_ms)) {
                return -1;
            }
            break;
        case 'L':
            if (!parse_int_flag("--ttl", optarg, 1, FLAG_TTL_MAX, &n)) {
                return -1;
            }
            o->ttl_s = (int)n;
            break;
        case 'q':
            o->quiet = true;
            break;
        case 'A':
            o->tls_ca = optarg;
            break;
        case 'C':
            o->tls_cert = optarg;
            break;
        case 'K':
            o->tls_key = optarg;
            break;
        case 'N':
            o->tls_server_name = optarg;
            break;
        case 'J':
            o->stats_json = optarg;
            break;
        case 'P':
            if (!parse_on_off("--peer-error-handling", optarg, &o->peer_errors)) {
                return -1;
            }
            break;
        case 'h':
            fputs(usage, stdout);
            return 1;
        default:
            fputs(usage, stderr);
            return -1;
        }
    }
    if (o->token != NULL && o->token[0] == '\0') {
        /* An empty token is none (FERRY_TOKEN= in a script): recv and serve
         * then print the one libferry draws, as without the flag. */
        o->token = NULL;
    }
    if (o->token_file != NULL && o->token_file[0] == '\0') {
        fprintf(stderr, "ferry-worker: --token-file needs a path\n");
        return -1;
    }
    if (o->token_file != NULL && (o->token != NULL || (strcmp(o->command, "recv") != 0 &&
                                                       strcmp(o->command, "serve") != 0))) {
        fprintf(stderr, "ferry-worker: --token-file is for recv and serve without a token (it "
                        "receives the one libferry draws)\n");
        return -1;
    }
    if (optind < argc) {
        /* getopt_long moved the operands here; none is taken. */
        fprintf(stderr, "ferry-worker: %s: unexpected argument '%s'\n", o->command, argv[optind]);
        return -1;
    }
    if (o->request_id == NULL) {
        fprintf(stderr, "ferry-worker: --request-id is required\n");
        return -1;
    }
    if (!check_tls_flags(o)) {
        return -1;
    }
    if (o->descriptors > o->size) {
        fprintf(stderr, "ferry-worker: --descriptors %zu is more than --size %" PRIu64 " bytes\n",
                o->descriptors, o->size);
        return -1;
    }
    return 0;
}

/* Splits buf into n regions as even as possible. */
static ferry_descriptor_t *split(uint8_t *buf, uint64_t size, size_t n, ferry_device_t device)
{
    ferry_descriptor_t *d = calloc(n, sizeof(*d));
    uint64_t off = 0;
    for (size_t i = 0; d != NULL && i < n; i++) {
        uint64_t len = size / n + (i < size % n ? 1 : 0);
        d[i] = (ferry_descriptor_t){.ptr = buf + off, .size = len, .device = device};
        off += len;
    }
    return d;
}

static int exit_code_for(ferry_status_t status)
{
    switch (status) {
    case FERRY_OK:
        return EXIT_OK;
    case FERRY_ERR_TIMED_OUT:
        return EXIT_TIMEOUT;
    case FERRY_ERR_NOT_FOUND:
    case FERRY_ERR_ALREADY_EXISTS:
    case FERRY_ERR_PERMISSION_DENIED:
    case FERRY_ERR_FAILED_PRECONDITION:
        return EXIT_REFUSED;
    case FERRY_ERR_INVALID_ARGUMENT:
    case FERRY_ERR_SIZE_MISMATCH:
    case FERRY_ERR_KIND_MISMATCH:
        return EXIT_USAGE;
    default:
        return EXIT_FAILED;
    }
}

/* The signal that asked this program to stop (SIGTERM, SIGINT, SIGHUP);
 * 0 until one came. Handled, so that the operation is cancelled and the
 * coordinator's records released before the exit (killed, a receiver's
 * record held its request ID until its lease ran out), and so that SIGTERM
 * stops it at all as PID 1 in a container, where a signal left at its
 * default is ignored. Waits on an operation run in slices of WAIT_SLICE_MS
 * and look; waits on the coordinator look through libferry's interrupt
 * check (stop_reached): the registration and the claim end at the first
 * stop signal, the last duties of disconnect (the releases that free the
 * request ID) at the second. Atomic, not volatile sig_atomic_t: the
 * handler runs on whichever thread the kernel picks (gRPC's and libferry's
 * threads do not block these signals), and the main thread reads the flag;
 * a lock-free atomic is both signal-safe and defined across threads
 * (ThreadSanitizer saw the volatile one race). */
static atomic_int stop_signal;
static atomic_int stop_count; /* stop signals received */

/* Cleared while libferry may still move data through the buffer (its own
 * puts or gets, or an admitted peer's), set again when it lets go of it
 * (ferry_op_destroy_nowait's released). */
static atomic_bool buffer_released = true;

/* The buffer and its descriptors when they must outlive main: left to the
 * exit, still reachable (a leak checker does not count them). */
static void *kept_at_exit[2];

static void on_released(void *arg)
{
    (void)arg;
    atomic_store(&buffer_released, true);
}

/* Destroys op without waiting on its peer. ferry_op_destroy waited for our
 * puts or gets in flight, and a receiver stopped over TCP (no peer error
 * handling) never lets them finish: a stop signal or --timeout then left
 * the process blocked there for good, killable only with SIGKILL. */
static void let_go(ferry_op_t *op)
{
    atomic_store(&buffer_released, false);
    ferry_op_destroy_nowait(op, on_released, NULL);
}

#define WAIT_SLICE_MS 250

static void on_stop_signal(int sig)
{
    atomic_store(&stop_signal, sig);
    atomic_fetch_add(&stop_count, 1);
}

/* libferry's interrupt check: true once *arg stop signals came. */
static bool stop_reached(void *arg)
{
    return atomic_load(&stop_count) >= *(const int *)arg;
}

static const int first_stop = 1, second_stop = 2;

static void handle_stop_signals(void)
{
    /* SA_RESTART: a write of the report is not cut short; the waits look
     * at stop_signal between their slices. */
    struct sigaction sa = {.sa_handler = on_stop_signal, .sa_flags = SA_RESTART};

    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    /* Output whose reader left (`recv | head -1`, for the token) is lost,
     * not a reason to die: killed at the report line, a receiver never
     * released its record, which then held its request ID until its lease
     * ran out. The exit code says how the operation went. */
    signal(SIGPIPE, SIG_IGN);
}

/* After the clean-up a stop signal asked for, dies of that signal, so that
 * a shell running the worker sees a Ctrl-C as one (bash ends its script
 * when a child died of SIGINT, and goes on when it exited 130). As PID 1
 * the signal is not delivered, and rc (128 + N) is the exit code. */
static int stop_exit(int rc)
{
    int sig = atomic_load(&stop_signal);

    if (sig != 0 && rc == 128 + sig) {
        fflush(NULL);
        signal(sig, SIG_DFL);
        raise(sig);
    }
    return rc;
}

/* Waits for the operation, drawing a progress line on a terminal once the
 * wait passes a second; cancels it when a stop signal came. */
static ferry_status_t wait_op(ferry_op_t *op, const options_t *o, double start)
{
    bool tty = !o->quiet && isatty(STDERR_FILENO);
    bool drew = false;
    double deadline = start + o->timeout_ms / 1000.0;
    ferry_status_t status;

    for (;;) {
        double left = deadline - now_s();
        int slice = left < WAIT_SLICE_MS / 1000.0 ? (int)(left * 1000) : WAIT_SLICE_MS;
        status = ferry_op_wait(op, slice > 0 ? slice : 0);
        if (ferry_op_status_is_final(ferry_op_status(op))) {
            /* Asked again: it may have ended after this slice ran out. */
            status = ferry_op_wait(op, 0);
            break;
        }
        if (status == FERRY_ERR_TIMED_OUT && atomic_load(&stop_signal) != 0) {
            ferry_op_cancel(op);
            status = ferry_op_wait(op, 0);
            break;
        }
        if (status != FERRY_ERR_TIMED_OUT || now_s() >= deadline) {
            break;
        }
        if (tty && now_s() - start > 1.0) {
            fprintf(stderr, "\r%s %s: %s, %.1f s", o->command, o->request_id,
                    ferry_op_status_name(ferry_op_status(op)), now_s() - start);
            drew = true;
        }
    }
    if (drew) {
        fputc('\n', stderr);
    }
    return status;
}

static void report(const options_t *o, const char *verb, double seconds)
{
    printf("%s %s: %" PRIu64 " bytes in %zu descriptor(s), %.3f s, %.2f GB/s\n", o->command,
           o->request_id, o->size, o->descriptors, seconds,
           seconds > 0 ? (double)o->size / seconds / 1e9 : 0.0);
    (void)verb;
    fflush(stdout);
}

/* A message from libferry or the coordinator, shown safely: it may quote
 * another client's text (a claimant's name, a reason), and a terminal
 * control in it must not reach the operator's terminal (common/text.h). */
static const char *shown(const char *text, char *buf, size_t cap)
{
    ferry_text_escape(buf, cap, text != NULL ? text : "");
    return buf;
}

static int fail(const char *what, ferry_status_t status)
{
    const char *name = ferry_status_name(status);
    char buf[1024];

    shown(ferry_last_error_message(), buf, sizeof(buf));
    fprintf(stderr, "ferry-worker: %s: %s (%s)\n", what, buf, name);
    return exit_code_for(status);
}

static int op_failed(const options_t *o, ferry_op_t *op, ferry_status_t status)
{
    const char *msg = "";
    char buf[1024];
    int sig = atomic_load(&stop_signal);
    ferry_op_status_t now = ferry_op_status(op);

    if (sig != 0) {
        fprintf(stderr, "ferry-worker: stopped by signal %d; the operation was cancelled\n", sig);
        return 128 + sig;
    }
    if (!ferry_op_status_is_final(now)) {
        /* The wait ran out, not the operation: it said "operation ended
         * INITIALIZED: no detail". */
        fprintf(stderr,
                "ferry-worker: %s %s: --timeout (%g s) ran out with the operation still %s%s "
                "(%s)\n",
                o->command, o->request_id, o->timeout_ms / 1000.0, ferry_op_status_name(now),
                now == FERRY_OP_STATUS_INITIALIZED ? ": no peer came" : "",
                ferry_status_name(status));
        return exit_code_for(status);
    }
    ferry_op_error(op, &msg);
    fprintf(stderr, "ferry-worker: operation ended %s: %s (%s)\n",
            ferry_op_status_name(ferry_op_status(op)),
            msg && msg[0] ? shown(msg, buf, sizeof(buf)) : "no detail", ferry_status_name(status));
    return exit_code_for(status);
}

/* --token-file: the token libferry drew, in a file of its own
 * that exists only as long as the operation. It appears whole (written to
 * a temporary file beside it, then linked into place, which fails rather
 * than replace a file there), so a reader that waits for it never reads it
 * empty or cut; it is removed when the run ends, so a service restarted on
 * the same path starts again (the token of an ended operation opens
 * nothing). */
typedef struct {
    const char *path;
    char tmp[PATH_MAX]; /* path.XXXXXX, made 0600 by mkstemp */
    int fd;             /* tmp's, until written; -1 */
    struct stat made;   /* tmp's, to remove path only while it is still ours */
    bool linked;        /* path names it */
} token_file_t;

/* Before anything is registered: a path already there (a file, a link)
 * stops the run before a record exists whose token nobody would get.
 * EXIT_OK, or EXIT_USAGE said. */
static int token_file_open(token_file_t *tf, const char *path)
{
    struct stat st;

    tf->path = path;
    tf->fd = -1;
    tf->linked = false;
    if (lstat(path, &st) == 0) {
        errno = EEXIST;
        goto err;
    }
    if (snprintf(tf->tmp, sizeof(tf->tmp), "%s.XXXXXX", path) >= (int)sizeof(tf->tmp)) {
        errno = ENAMETOOLONG;
        goto err;
    }
    tf->fd = mkstemp(tf->tmp);
    if (tf->fd < 0 || fstat(tf->fd, &tf->made) != 0) {
        goto err;
    }
    return EXIT_OK;

err:
    fprintf(stderr, "ferry-worker: --token-file %s: %s\n", path, strerror(errno));
    if (tf->fd >= 0) {
        close(tf->fd);
        unlink(tf->tmp);
        tf->fd = -1;
    }
    return EXIT_USAGE;
}

/* Writes the token and a newline, then puts the file at its path.
 * EXIT_OK, or EXIT_FAILED said. */
static int token_file_write(token_file_t *tf, const char *token)
{
    size_t len = strlen(token);
    bool ok = write(tf->fd, token, len) == (ssize_t)len && write(tf->fd, "\n", 1) == 1;
    int err = ok ? 0 : errno != 0 ? errno : EIO; /* a short write sets none */

    if (close(tf->fd) != 0 && ok) {
        ok = false;
        err = errno;
    }
    tf->fd = -1;
    if (ok && link(tf->tmp, tf->path) != 0) {
        ok = false;
        err = errno;
    }
    unlink(tf->tmp);
    tf->linked = ok;
    if (!ok) {
        fprintf(stderr, "ferry-worker: --token-file %s: %s\n", tf->path, strerror(err));
        return EXIT_FAILED;
    }
    return EXIT_OK;
}

/* Removes what token_file_open and token_file_write made: the path only
 * while it is still the file made here (not one put there since). */
static void token_file_remove(token_file_t *tf)
{
    struct stat st;

    if (tf->path == NULL) {
        return;
    }
    if (tf->fd >= 0) {
        close(tf->fd);
        unlink(tf->tmp);
        tf->fd = -1;
    }
    if (tf->linked && lstat(tf->path, &st) == 0 && st.st_dev == tf->made.st_dev &&
        st.st_ino == tf->made.st_ino) {
        unlink(tf->path);
    }
    tf->linked = false;
}

/* recv and serve: the passive side. */
static int run_passive(ferry_connector_t *conn, ferry_coordinator_t *coord, const options_t *o,
                       uint8_t *buf, ferry_descriptor_t *descs)
{
    bool writable = strcmp(o->command, "recv") == 0;
    ferry_publish_params_t pub = {.field_mask = FERRY_PUBLISH_PARAM_FIELD_TTL,
                                  .request_id = o->request_id,
                                  .access_token = o->token,
                                  .ttl_s = o->ttl_s};
    ferry_op_t *op = NULL;
    ferry_status_t status;
    double start;
    token_file_t tf = {0};
    int rc = EXIT_OK;

    if (o->token_file != NULL && token_file_open(&tf, o->token_file) != EXIT_OK) {
        return EXIT_USAGE;
    }
    if (writable) {
        memset(buf, 0, o->size);
        status = ferry_writable_create(conn, descs, o->descriptors, &op);
    } else {
        ferry_pattern_fill(buf, o->size);
        status = ferry_readable_create(conn, descs, o->descriptors, &op);
    }
    if (status != FERRY_OK) {
        rc = fail("create", status);
        goto out;
    }
    status = ferry_op_publish(op, coord, &pub);
    if (status != FERRY_OK) {
        let_go(op);
        if (atomic_load(&stop_signal) != 0) {
            fprintf(stderr, "ferry-worker: stopped by signal %d while registering %s\n",
                    atomic_load(&stop_signal), o->request_id);
            rc = 128 + atomic_load(&stop_signal);
        } else {
            rc = fail("publish", status);
        }
        goto out;
    }
    if (o->token_file != NULL) {
        rc = token_file_write(&tf, ferry_op_access_token(op));
        if (rc != EXIT_OK) {
            let_go(op);
            goto out;
        }
    } else if (o->token == NULL) {
        printf("token %s\n", ferry_op_access_token(op));
    }
    printf("%s %s: registered %" PRIu64 " bytes; waiting\n", o->command, o->request_id, o->size);
    fflush(stdout);
    start = now_s();
    status = wait_op(op, o, start);
    if (status != FERRY_OK) {
        rc = op_failed(o, op, status);
    } else if (writable && !ferry_pattern_check(buf, o->size)) {
        fprintf(stderr,
                "ferry-worker: received bytes do not match the pattern at offset %" PRIu64 "\n",
                ferry_pattern_first_mismatch(buf, o->size));
        rc = EXIT_MISMATCH;
    } else {
        report(o, writable ? "received" : "served", now_s() - start);
    }
    let_go(op);
out:
    token_file_remove(&tf);
    return rc;
}

/* send and read: the active side. */
static int run_active(ferry_connector_t *conn, ferry_coordinator_t *coord, const options_t *o,
                      uint8_t *buf, ferry_descriptor_t *descs)
{
    bool write = strcmp(o->command, "send") == 0;
    ferry_claim_params_t claim = {.field_mask =
                                      FERRY_CLAIM_PARAM_FIELD_WAIT | FERRY_CLAIM_PARAM_FIELD_TTL,
                                  .request_id = o->request_id,
                                  .access_token = o->token,
                                  .wait_ms = o->timeout_ms,
                                  .ttl_s = o->ttl_s};
    ferry_op_t *op = NULL;
    ferry_status_t status;
    double start;
    int rc = EXIT_OK;
    int sig;

    if (o->token == NULL) {
        fprintf(stderr, "ferry-worker: %s needs --token (or FERRY_TOKEN)\n", o->command);
        return EXIT_USAGE;
    }
    if (write) {
        ferry_pattern_fill(buf, o->size);
    } else {
        memset(buf, 0, o->size);
    }
    start = now_s();
    /* The wait for the request ID and the claim: a stop signal ends them
     * (stop_reached). */
    status = write ? ferry_write_begin_by_id(conn, coord, &claim, descs, o->descriptors, &op)
                   : ferry_read_begin_by_id(conn, coord, &claim, descs, o->descriptors, &op);
    sig = atomic_load(&stop_signal);
    if (status != FERRY_OK && sig != 0) {
        fprintf(stderr, "ferry-worker: stopped by signal %d while waiting for %s\n", sig,
                o->request_id);
        return 128 + sig;
    }
    if (status == FERRY_ERR_TIMED_OUT) {
        /* libferry names the wait_ms; the user gave --timeout. */
        char last[1024];
        shown(ferry_last_error_message(), last, sizeof(last));
        fprintf(stderr, "ferry-worker: %s %s: --timeout (%g s) ran out; last: %s (%s)\n",
                o->command, o->request_id, o->timeout_ms / 1000.0, last, ferry_status_name(status));
        return exit_code_for(status);
    }
    if (status != FERRY_OK) {
        return fail(write ? "write" : "read", status);
    }
    status = wait_op(op, o, start);
    if (status != FERRY_OK) {
        rc = op_failed(o, op, status);
    } else if (!write && !ferry_pattern_check(buf, o->size)) {
        fprintf(stderr, "ferry-worker: read bytes do not match the pattern at offset %" PRIu64 "\n",
                ferry_pattern_first_mismatch(buf, o->size));
        rc = EXIT_MISMATCH;
    } else {
        report(o, write ? "sent" : "read", now_s() - start);
    }
    let_go(op);
    return rc;
}

/* FERRY_LOG_LEVEL (off, error, warn, info, debug, trace); info when unset,
 * and when unknown (warned of). libferry's levels are the log's
 * (connector.c asserts it). */
static ferry_loglevel_t log_level_from_env(void)
{
    const char *env = getenv("FERRY_LOG_LEVEL");
    ferry_log_level_t level = FERRY_LOG_INFO;

    if (env != NULL && ferry_log_level_parse(env, &level) != 0) {
        fprintf(stderr,
                "ferry-worker: FERRY_LOG_LEVEL '%s' is not off, error, warn, info, debug or "
                "trace; logging at info\n",
                env);
        level = FERRY_LOG_INFO;
    }
    return (ferry_loglevel_t)level;
}

/* --stats-json, once every operation is destroyed (its counts final); a
 * file that cannot be written turns a success into EXIT_FAILED. */
static void finish_stats(const options_t *o, ferry_connector_t *conn, int *rc)
{
    if (o->stats_json != NULL &&
        ferry_worker_write_stats_json(o->stats_json, conn, o->command, o->request_id, *rc) != 0 &&
        *rc == EXIT_OK) {
        *rc = EXIT_FAILED;
    }
}

int main(int argc, char **argv)
{
    options_t o;
    ferry_connector_t *conn = NULL;
    ferry_coordinator_t *coord = NULL;
    ferry_coordinator_params_t cp = {.target = NULL};
    ferry_connector_params_t conn_params = {.field_mask = FERRY_CONNECTOR_PARAM_FIELD_LOG_LEVEL};
    uint8_t *buf = NULL;
    ferry_descriptor_t *descs = NULL;
    ferry_status_t status;
    int rc = parse_options(argc, argv, &o);

    if (rc != 0) {
        return rc > 0 ? EXIT_OK : EXIT_USAGE;
    }
    if (strcmp(o.command, "recv") != 0 && strcmp(o.command, "send") != 0 &&
        strcmp(o.command, "serve") != 0 && strcmp(o.command, "read") != 0) {
        fprintf(stderr, "ferry-worker: unknown command '%s'\n%s", o.command, usage);
        return EXIT_USAGE;
    }
    handle_stop_signals();
    ferry_interrupt_check_set(stop_reached, (void *)&first_stop);
    /* libferry logs only when asked: the program asks, from the
     * environment, at info by default (as it always logged). */
    conn_params.log_level = log_level_from_env();
    if (o.peer_errors >= 0) {
        conn_params.field_mask |= FERRY_CONNECTOR_PARAM_FIELD_PEER_ERROR_HANDLING;
        conn_params.peer_error_handling = o.peer_errors == 1;
    }
    status = ferry_connector_create(&conn_params, &conn);
    if (status != FERRY_OK) {
        return fail("connector", status);
    }
    cp.target = o.coordinator;
    if (o.tls_ca != NULL) {
        cp.field_mask |= FERRY_COORDINATOR_PARAM_FIELD_TLS;
        cp.tls_ca_file = o.tls_ca;
        cp.tls_cert_file = o.tls_cert;
        cp.tls_key_file = o.tls_key;
        cp.tls_server_name = o.tls_server_name;
    }
    status = ferry_coordinator_connect(&cp, &coord);
    if (status != FERRY_OK) {
        rc = fail("coordinator", status);
        finish_stats(&o, conn, &rc);
        ferry_connector_destroy(conn);
        return rc;
    }
    buf = aligned_alloc(4096, (o.size + 4095) / 4096 * 4096);
    descs = buf != NULL ? split(buf, o.size, o.descriptors, o.device) : NULL;
    if (descs == NULL) {
        fprintf(stderr, "ferry-worker: cannot allocate %" PRIu64 " bytes\n", o.size);
        rc = EXIT_FAILED;
    } else if (strcmp(o.command, "recv") == 0 || strcmp(o.command, "serve") == 0) {
        rc = run_passive(conn, coord, &o, buf, descs);
    } else {
        rc = run_active(conn, coord, &o, buf, descs);
    }
    /* A stop signal asks for the clean-up, which disconnect finishes
     * (within the client's timeout); a second one ends it. */
    ferry_interrupt_check_set(stop_reached, (void *)&second_stop);
    ferry_coordinator_disconnect(coord);
    finish_stats(&o, conn, &rc);
    /* The operation was destroyed without waiting for data in flight (an
     * admitted peer's puts, our own puts or gets to a peer that stopped):
     * the buffer goes only once the connector, and UCX with it, is gone and
     * libferry has let go of it, and is left to the exit otherwise. */
    if (ferry_connector_destroy(conn) == FERRY_OK && atomic_load(&buffer_released)) {
        free(descs);
        free(buf);
    } else {
        kept_at_exit[0] = buf;
        kept_at_exit[1] = descs;
    }
    return stop_exit(rc);
}
