/*
 * ferryctl.c: ferryctl, the operator's command line for ferry-coordinator.
 *
 *   list     records, filtered by --prefix, --state, --kind; every page, or
 *            --pages N of --page-size records from --page-token
 *   get      one record
 *   watch    state changes of one ID or a --prefix until interrupted (from
 *            --start-revision on);
 *            when the stream ends (the replica went away) it watches again,
 *            from just past the last change it printed,
 *            on the next coordinator in the list
 *   cancel   cancel an operation (--token, --reason)
 *   release  remove a final operation's record (--token)
 *   health   grpc.health.v1 Check on every listed coordinator
 *
 * It speaks only the public contract (proto/ferry/v1, grpc.health.v1) through
 * rpc/'s client, as any other client would. Output: a table, or with --json
 * one JSON object per line (ctl_print.c). Exit codes: ctl.h, README.
 *
 * Threads: one. list and watch catch SIGINT and SIGTERM (ctl_stop: list
 * prints what it read, watch ends); the other commands are one call or one
 * per coordinator, and end at once at either signal.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "common/md_rules.h"
#include "common/tls_flags.h"
#include "ctl.h"
#include "grpc/health/v1/health.pb-c.h"

#define FLAG_TIMEOUT_MIN_S   0.001
#define FLAG_TIMEOUT_MAX_S   86400.0
#define FLAG_PAGE_SIZE_MAX   FERRY_PAGE_SIZE_MAX /* ListRequest.page_size's own limit */
#define FLAG_PAGES_MAX       1000000
#define WATCH_POLL_MS        200 /* how often watch looks at ctl_stop */
#define WATCH_BACKOFF_MIN_MS 200
#define WATCH_BACKOFF_MAX_MS 5000
#define WATCH_STEADY_MS      1000 /* a stream that lasted this long resets the backoff */

/* What one list holds before it prints (every page is kept until then, for
 * the table's widths and the one JSON object): past any of these it stops
 * as an interrupted list does, printing what it read and the token to read
 * on from, a --pages N at a time. 1,000,000 records are some 250 MB of
 * unpacked records and about twice that again as one JSON object, more than
 * an operator's terminal wants; the bytes (as the coordinator sent them)
 * bound a coordinator whose pages are few but large (4 MiB each), the pages
 * one whose pages are many and empty. */
#define LIST_MAX_OPS   1000000
#define LIST_MAX_PAGES FLAG_PAGES_MAX
#define LIST_MAX_BYTES ((size_t)256 << 20)

atomic_bool ctl_stop;

typedef struct {
    const char *command;
    const char *id; /* the one positional argument of get, watch, cancel, release */
    const char *coordinators;
    const char *token;
    const char *reason;
    const char *prefix;
    const char *page_token;
    const char *service;
    Ferry__V1__OperationState state;
    Ferry__V1__OperationKind kind;
    long page_size;
    long pages;          /* 0: all */
    long start_revision; /* watch: 0: from now */
    int64_t timeout_ms;
    bool json;
    bool linearizable;
    bool given[128]; /* by getopt value: the flags on the command line */
    const char *tls_ca;
    const char *tls_cert;
    const char *tls_key;
    const char *tls_server_name;
} options_t;

static const char usage[] =
    "usage: ferryctl list|get|watch|cancel|release|health [ARG] [options]\n"
    "\n"
    "  list                 records: --prefix P, --state S, --kind K; --page-size N\n"
    "                       (1..1000, default 100), --pages N (default: all),\n"
    "                       --page-token T (from an earlier list)\n"
    "  get ID               one record (--linearizable: read etcd, not the view)\n"
    "  watch ID|--prefix P  state changes until interrupted (--prefix '*': all),\n"
    "                       from --start-revision N on (default: from now)\n"
    "  cancel ID            cancel it: --token T, --reason R\n"
    "  release ID           remove a final record: --token T\n"
    "  health               ask every coordinator (--service S, default\n"
    "                       ferry.v1.Coordinator; '' for the server)\n"
    "\n"
    "  --coordinator A,B    coordinators, tried in order (FERRY_COORDINATOR;\n"
    "                       127.0.0.1:7400)\n"
    "  --json               one JSON object per line instead of a table\n"
    "  --timeout SECONDS    each call's deadline, 0.001..86400 (default 10)\n"
    "  --token T            the operation's access token (FERRY_TOKEN)\n"
    "  --tls-ca PEM         reach the coordinators over TLS, trusting this CA (FERRY_TLS_CA)\n"
    "  --tls-cert PEM       client certificate (FERRY_TLS_CERT)\n"
    "  --tls-key PEM        and its key (FERRY_TLS_KEY)\n"
    "  --tls-server-name N  name to verify instead of the address's host\n"
    "                       (the last three need --tls-ca; cert and key go together)\n"
    "  A flag that is not the command's own (above) or one of these is refused.\n"
    "\n"
    "exit: 0 ok, 1 failed, 2 usage or INVALID_ARGUMENT, 3 NOT_FOUND,\n"
    "      4 PERMISSION_DENIED/UNAUTHENTICATED, 5 FAILED_PRECONDITION/ALREADY_EXISTS,\n"
    "      6 no coordinator answered, 7 health: not SERVING,\n"
    "      130 list interrupted before its last page, or at what one list holds\n";

static bool parse_long_flag(const char *flag, const char *text, long lo, long hi, long *value_p)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(text, &end, 10);
    if (text[0] == '\0' || *end != '\0' || errno != 0 || v < lo || v > hi) {
        fprintf(stderr, "ferryctl: %s must be an integer from %ld to %ld, not '%s'\n", flag, lo, hi,
                text);
        return false;
    }
    *value_p = v;
    return true;
}

static bool parse_timeout_flag(const char *text, int64_t *ms_p)
{
    char *end;
    double s = strtod(text, &end);

    if (text[0] == '\0' || *end != '\0' || !(s >= FLAG_TIMEOUT_MIN_S && s <= FLAG_TIMEOUT_MAX_S)) {
        fprintf(stderr, "ferryctl: --timeout must be from %g to %g seconds, not '%s'\n",
                FLAG_TIMEOUT_MIN_S, FLAG_TIMEOUT_MAX_S, text);
        return false;
    }
    *ms_p = (int64_t)(s * 1000.0 + 0.5);
    return true;
}

/* The flag switch; false (said) on a bad value. */
static bool parse_one(int opt, options_t *o)
{
    switch (opt) {
    case 'c':
        o->coordinators = optarg;
        return true;
    case 'j':
        o->json = true;
        return true;
    case 'T':
        return parse_timeout_flag(optarg, &o->timeout_ms);
    case 't':
        o->token = optarg;
        return true;
    case 'r':
        o->reason = optarg;
        return true;
    case 'p':
        o->prefix = optarg;
        return true;
    case 'P':
        o->page_token = optarg;
        return true;
    case 'S':
        o->service = optarg;
        return true;
    case 'l':
        o->linearizable = true;
        return true;
    case 'A':
        o->tls_ca = optarg;
        return true;
    case 'C':
        o->tls_cert = optarg;
        return true;
    case 'K':
        o->tls_key = optarg;
        return true;
    case 'N':
        o->tls_server_name = optarg;
        return true;
    case 'z':
        return parse_long_flag("--page-size", optarg, 1, FLAG_PAGE_SIZE_MAX, &o->page_size);
    case 'n':
        return parse_long_flag("--pages", optarg, 1, FLAG_PAGES_MAX, &o->pages);
    case 'R':
        return parse_long_flag("--start-revision", optarg, 0, LONG_MAX, &o->start_revision);
    case 's':
        if (!ctl_state_parse(optarg, &o->state)) {
            fprintf(stderr,
                    "ferryctl: --state: no state '%s' (registered, claimed, complete, "
                    "errored, cancelled, expired)\n",
                    optarg);
            return false;
        }
        return true;
    case 'k':
        if (!ctl_kind_parse(optarg, &o->kind)) {
            fprintf(stderr, "ferryctl: --kind: no kind '%s' (read, write)\n", optarg);
            return false;
        }
        return true;
    default:
        return false;
    }
}

/* The TLS flags' rules (common/tls_flags.h); false, said, when broken. */
static bool check_tls_flags(const options_t *o)
{
    ferry_tls_flags_t f = {o->tls_ca, o->tls_cert, o->tls_key, o->tls_server_name};

    return ferry_tls_flags_check("ferryctl", &f);
}

static const struct option longopts[] = {
    {"coordinator", required_argument, NULL, 'c'},
    {"json", no_argument, NULL, 'j'},
    {"timeout", required_argument, NULL, 'T'},
    {"token", required_argument, NULL, 't'},
    {"reason", required_argument, NULL, 'r'},
    {"prefix", required_argument, NULL, 'p'},
    {"state", required_argument, NULL, 's'},
    {"kind", required_argument, NULL, 'k'},
    {"page-size", required_argument, NULL, 'z'},
    {"pages", required_argument, NULL, 'n'},
    {"page-token", required_argument, NULL, 'P'},
    {"service", required_argument, NULL, 'S'},
    {"linearizable", no_argument, NULL, 'l'},
    {"start-revision", required_argument, NULL, 'R'},
    {"tls-ca", required_argument, NULL, 'A'},
    {"tls-cert", required_argument, NULL, 'C'},
    {"tls-key", required_argument, NULL, 'K'},
    {"tls-server-name", required_argument, NULL, 'N'},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

/* The getopt values of the flags every command takes; the others are each
 * command's own (commands[] in main). */
static const char common_flags[] = "cjTACKN";

/* 0: parsed; 1: --help printed; -1: bad usage (said). */
static int parse_options(int argc, char **argv, options_t *o)
{
    int opt;

    memset(o, 0, sizeof(*o));
    /* An empty FERRY_COORDINATOR is unset, as ferry-worker has it and as an
     * empty FERRY_TOKEN is no token (it was refused as an empty entry). */
    o->coordinators = getenv("FERRY_COORDINATOR");
    if (o->coordinators == NULL || o->coordinators[0] == '\0') {
        o->coordinators = "127.0.0.1:7400";
    }
    o->token = getenv("FERRY_TOKEN");
    o->tls_ca = getenv("FERRY_TLS_CA");
    o->tls_cert = getenv("FERRY_TLS_CERT");
    o->tls_key = getenv("FERRY_TLS_KEY");
    o->service = "ferry.v1.Coordinator";
    o->page_size = 100;
    o->timeout_ms = 10000;
    if (argc < 2 || argv[1][0] == '-') {
        bool help = argc >= 2 && strcmp(argv[1], "--help") == 0;

        fputs(usage, help ? stdout : stderr);
        return help ? 1 : -1;
    }
    o->command = argv[1];
    optind = 2;
    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        if (opt == 'h') {
            fputs(usage, stdout);
            return 1;
        }
        if (!parse_one(opt, o)) {
            return -1;
        }
        if (opt > 0 && opt < (int)sizeof(o->given)) {
            o->given[opt] = true;
        }
    }
    if (o->token != NULL && o->token[0] == '\0') {
        /* An empty token is none (FERRY_TOKEN= in a script), as ferry-worker
         * has it: cancel and release then say they need one, rather than
         * send "" for the coordinator to refuse. */
        o->token = NULL;
    }
    if (optind < argc) {
        o->id = argv[optind++];
    }
    if (optind < argc) {
        fprintf(stderr, "ferryctl: %s: unexpected argument '%s'\n", o->command, argv[optind]);
        return -1;
    }
    return check_tls_flags(o) ? 0 : -1;
}

/* Says what went wrong and returns its exit code. The message is the
 * coordinator's (or quotes a client's name): shown escaped. */
static int report(const char *what, ferry_status_t status, const rpc_error_t *err,
                  const ctl_conn_t *conn)
{
    char shown[CTL_SHOWN_CAP(sizeof(err->message))];

    fprintf(stderr, "ferryctl: %s: %s: %s (%s)\n", what, rpc_grpc_code_name(err->grpc_code),
            ctl_text_shown(shown, sizeof(shown), err->message), ctl_conn_target(conn));
    return ctl_exit_code(status);
}

/* The page tokens a list has sent: a coordinator that hands one back again
 * would have it read the same pages for ever. Open addressing over
 * pointers into the pages (and the options), which outlive it. */
typedef struct {
    const char **slots; /* NULL: free */
    size_t cap;         /* a power of two, or 0 */
    size_t n;
} token_set_t;

static size_t token_hash(const char *s)
{
    uint64_t h = 14695981039346656037ULL; /* FNV-1a */

    for (; *s != '\0'; s++) {
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    }
    return (size_t)h;
}

/* False when token is there already. The set has room. */
static bool token_set_put(token_set_t *set, const char *token)
{
    size_t i = token_hash(token) & (set->cap - 1);

    while (set->slots[i] != NULL) {
        if (strcmp(set->slots[i], token) == 0) {
            return false;
        }
        i = (i + 1) & (set->cap - 1);
    }
    set->slots[i] = token;
    set->n++;
    return true;
}

/* 1: added; 0: sent before; -1: no memory. Kept at most half full. */
static int token_set_add(token_set_t *set, const char *token)
{
    if ((set->n + 1) * 2 > set->cap) {
        size_t cap = set->cap != 0 ? set->cap * 2 : 64;
        token_set_t grown = {calloc(cap, sizeof(*grown.slots)), cap, 0};

        if (grown.slots == NULL) {
            return -1;
        }
        for (size_t i = 0; i < set->cap; i++) {
            if (set->slots[i] != NULL) {
                token_set_put(&grown, set->slots[i]);
            }
        }
        free(set->slots);
        *set = grown;
    }
    return token_set_put(set, token) ? 1 : 0;
}

/* Whether one list has read as much as it may hold (LIST_MAX_*). */
static bool list_full(size_t n_pages, size_t n_ops, size_t bytes)
{
    return n_ops >= LIST_MAX_OPS || n_pages >= LIST_MAX_PAGES || bytes >= LIST_MAX_BYTES;
}

/* Reads the pages, then prints them as one table or one JSON object. It
 * stops early, printing what it read and the token to go on from, when
 * interrupted, at --pages, at what one list holds (LIST_MAX_*: exit 130, as
 * interrupted) and when a later page fails (a compacted snapshot,
 * OUT_OF_RANGE; no coordinator answers): the call's exit code then. A
 * coordinator that sends a page token a second time (its pages loop) is a
 * protocol error: exit 1, nothing printed. */
static int cmd_list(const options_t *o, ctl_conn_t *conn)
{
    Ferry__V1__ListRequest req = FERRY__V1__LIST_REQUEST__INIT;
    Ferry__V1__ListResponse **pages = NULL;
    Ferry__V1__Operation **ops = NULL;
    Ferry__V1__ListResponse *resp;
    token_set_t sent = {0};
    size_t n_pages = 0, n_ops = 0, bytes = 0;
    rpc_error_t err = {0};
    ferry_status_t status;
    int rc = CTL_EXIT_OK;
    bool cut_short = false;
    bool ok;

    req.request_id_prefix = (char *)(o->prefix != NULL ? o->prefix : "");
    req.state = o->state;
    req.kind = o->kind;
    req.page_size = (uint32_t)o->page_size;
    req.page_token = (char *)(o->page_token != NULL ? o->page_token : "");
    if (req.page_token[0] != '\0' && token_set_add(&sent, req.page_token) < 0) {
        fprintf(stderr, "ferryctl: list: no memory for the page tokens\n");
        return CTL_EXIT_FAILED;
    }
    do {
        void *grown = realloc(pages, (n_pages + 1) * sizeof(*pages));
        int added;

        if (grown == NULL) {
            fprintf(stderr, "ferryctl: list: no memory for page %zu\n", n_pages + 1);
            rc = CTL_EXIT_FAILED;
            goto out;
        }
        pages = grown;
        status = ctl_conn_unary(conn, "List", &req.base, &ferry__v1__list_response__descriptor,
                                (ProtobufCMessage **)&resp, &err);
        if (status != FERRY_OK && ctl_stop) {
            cut_short = true; /* the page asked for when the signal came: as between pages */
            break;
        }
        if (status != FERRY_OK) {
            rc = report("list", status, &err, conn);
            if (n_pages > 0) {
                fprintf(stderr, "ferryctl: list: stopped after %zu page(s)\n", n_pages);
            }
            break;
        }
        pages[n_pages++] = resp;
        n_ops += resp->n_operations;
        bytes += protobuf_c_message_get_packed_size(&resp->base);
        req.page_token = resp->next_page_token;
        if (req.page_token[0] == '\0') {
            break;
        }
        added = token_set_add(&sent, req.page_token);
        if (added < 0) {
            fprintf(stderr, "ferryctl: list: no memory for the page tokens\n");
            rc = CTL_EXIT_FAILED;
            goto out;
        }
        if (added == 0) {
            err.grpc_code = rpc_status_to_grpc(FERRY_ERR_PROTOCOL);
            snprintf(err.message, sizeof(err.message),
                     "page %zu's next_page_token '%s' was sent before: the pages loop", n_pages,
                     req.page_token);
            rc = report("list", FERRY_ERR_PROTOCOL, &err, conn);
            goto out;
        }
        if (list_full(n_pages, n_ops, bytes)) {
            fprintf(stderr,
                    "ferryctl: list: stopped after %zu operations in %zu page(s): one list holds "
                    "at most %d operations, %d pages or %zu MiB; read on from its token with "
                    "--page-token and --pages N\n",
                    n_ops, n_pages, LIST_MAX_OPS, LIST_MAX_PAGES, LIST_MAX_BYTES >> 20);
            rc = CTL_EXIT_INTERRUPTED;
            break;
        }
    } while ((o->pages == 0 || (long)n_pages < o->pages) && !ctl_stop);
    /* Interrupted (SIGINT, SIGTERM): what was read, and where to go on. */
    if (rc == CTL_EXIT_OK && ctl_stop && (cut_short || req.page_token[0] != '\0')) {
        fprintf(stderr, "ferryctl: list: interrupted after %zu page(s)\n", n_pages);
        rc = CTL_EXIT_INTERRUPTED;
    }
    if (n_pages == 0) {
        goto out;
    }

    ops = calloc(n_ops + 1, sizeof(*ops));
    if (ops == NULL) {
        fprintf(stderr, "ferryctl: list: no memory for %zu records\n", n_ops);
        rc = CTL_EXIT_FAILED;
        goto out;
    }
    n_ops = 0;
    for (size_t p = 0; p < n_pages; p++) {
        for (size_t i = 0; i < pages[p]->n_operations; i++) {
            ops[n_ops++] = pages[p]->operations[i];
        }
    }
    if (o->json) {
        ok = ctl_print_list_json(ops, n_ops, req.page_token, pages[n_pages - 1]->header);
        rc = ok ? rc : CTL_EXIT_FAILED;
    } else {
        ctl_print_table(ops, n_ops);
        if (req.page_token[0] != '\0') {
            fputs("ferryctl: more: --page-token ", stderr);
            ctl_put_text(stderr, req.page_token);
            fputc('\n', stderr);
        }
    }
out:
    free(sent.slots);
    free(ops);
    for (size_t p = 0; p < n_pages; p++) {
        protobuf_c_message_free_unpacked(&pages[p]->base, NULL);
    }
    free(pages);
    return rc;
}

static int cmd_get(const options_t *o, ctl_conn_t *conn)
{
    Ferry__V1__GetRequest req = FERRY__V1__GET_REQUEST__INIT;
    Ferry__V1__GetResponse *resp;
    rpc_error_t err = {0};
    ferry_status_t status;
    bool ok = true;

    req.request_id = (char *)o->id;
    req.linearizable = o->linearizable;
    status = ctl_conn_unary(conn, "Get", &req.base, &ferry__v1__get_response__descriptor,
                            (ProtobufCMessage **)&resp, &err);
    if (status != FERRY_OK) {
        return report(o->id, status, &err, conn);
    }
    if (resp->operation == NULL) {
        fprintf(stderr, "ferryctl: %s: the answer has no operation\n", o->id);
        protobuf_c_message_free_unpacked(&resp->base, NULL);
        return CTL_EXIT_FAILED;
    }
    if (o->json) {
        ok = ctl_print_get_json(resp->operation, resp->header);
    } else {
        ctl_print_table(&resp->operation, 1);
    }
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return ok ? CTL_EXIT_OK : CTL_EXIT_FAILED;
}

static int cmd_cancel(const options_t *o, ctl_conn_t *conn)
{
    Ferry__V1__CancelRequest req = FERRY__V1__CANCEL_REQUEST__INIT;
    Ferry__V1__CancelResponse *resp;
    rpc_error_t err = {0};
    ferry_status_t status;
    bool ok = true;

    req.request_id = (char *)o->id;
    req.access_token = (char *)o->token;
    req.reason = (char *)(o->reason != NULL ? o->reason : "");
    status = ctl_conn_write(conn, "Cancel", &req.base, &ferry__v1__cancel_response__descriptor,
                            (ProtobufCMessage **)&resp, &err);
    if (status != FERRY_OK) {
        return report(o->id, status, &err, conn);
    }
    if (resp->operation != NULL) {
        if (o->json) {
            ok = ctl_print_get_json(resp->operation, resp->header);
        } else {
            ctl_print_table(&resp->operation, 1);
        }
    }
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return ok ? CTL_EXIT_OK : CTL_EXIT_FAILED;
}

static int cmd_release(const options_t *o, ctl_conn_t *conn)
{
    Ferry__V1__ReleaseRequest req = FERRY__V1__RELEASE_REQUEST__INIT;
    Ferry__V1__ReleaseResponse *resp;
    rpc_error_t err = {0};
    ferry_status_t status;
    bool ok = true;

    req.request_id = (char *)o->id;
    req.access_token = (char *)o->token;
    status = ctl_conn_write(conn, "Release", &req.base, &ferry__v1__release_response__descriptor,
                            (ProtobufCMessage **)&resp, &err);
    if (status != FERRY_OK) {
        return report(o->id, status, &err, conn);
    }
    if (o->json) {
        ok = ctl_print_released_json(o->id, resp->header != NULL ? resp->header->revision : 0);
    } else {
        printf("released %s\n", o->id);
    }
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return ok ? CTL_EXIT_OK : CTL_EXIT_FAILED;
}

/* One coordinator's health: its exit code (OK, NOT_SERVING, UNAVAILABLE...;
 * FAILED when the JSON line could not be built). */
static int health_one(const options_t *o, ctl_conn_t *conn, size_t i)
{
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    Grpc__Health__V1__HealthCheckResponse *resp;
    const ProtobufCEnumValue *v;
    rpc_error_t err = {0};
    ferry_status_t status;
    const char *target = conn->targets[i];
    char shown[CTL_SHOWN_CAP(sizeof(err.message))];
    int rc;

    req.service = (char *)o->service;
    status = ctl_conn_unary_at(conn, i, "/grpc.health.v1.Health/Check", &req.base,
                               &grpc__health__v1__health_check_response__descriptor,
                               (ProtobufCMessage **)&resp, &err);
    if (status != FERRY_OK) {
        if (o->json) {
            if (!ctl_print_health_json(target, rpc_grpc_code_name(err.grpc_code))) {
                return CTL_EXIT_FAILED;
            }
        } else {
            printf("%-24s %s (%s)\n", target, rpc_grpc_code_name(err.grpc_code),
                   ctl_text_shown(shown, sizeof(shown), err.message));
        }
        return ctl_exit_code(status);
    }
    v = protobuf_c_enum_descriptor_get_value(
        &grpc__health__v1__health_check_response__serving_status__descriptor, resp->status);
    rc = resp->status == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
             ? CTL_EXIT_OK
             : CTL_EXIT_NOT_SERVING;
    if (o->json) {
        rc = ctl_print_health_json(target, v != NULL ? v->name : "?") ? rc : CTL_EXIT_FAILED;
    } else {
        printf("%-24s %s\n", target, v != NULL ? v->name : "?");
    }
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return rc;
}

/* 0 when every coordinator is SERVING; 6 when none answered; otherwise the
 * first other code (7 for one that answered NOT_SERVING). */
static int cmd_health(const options_t *o, ctl_conn_t *conn)
{
    size_t unreachable = 0;
    int worst = CTL_EXIT_OK;

    if (!o->json) {
        printf("%-24s %s\n", "COORDINATOR", "STATUS");
    }
    for (size_t i = 0; i < conn->n_targets; i++) {
        int rc = health_one(o, conn, i);

        unreachable += rc == CTL_EXIT_UNAVAILABLE;
        if (worst == CTL_EXIT_OK && rc != CTL_EXIT_OK) {
            worst = rc == CTL_EXIT_UNAVAILABLE ? CTL_EXIT_NOT_SERVING : rc;
        }
    }
    return unreachable == conn->n_targets ? CTL_EXIT_UNAVAILABLE : worst;
}

static void sleep_ms(int64_t ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};

    nanosleep(&ts, NULL); /* a signal cuts it short, which is what watch wants */
}

/* Waits *backoff_ms, then doubles it up to WATCH_BACKOFF_MAX_MS. */
static void watch_backoff(int64_t *backoff_ms)
{
    sleep_ms(*backoff_ms);
    *backoff_ms = *backoff_ms * 2 > WATCH_BACKOFF_MAX_MS ? WATCH_BACKOFF_MAX_MS : *backoff_ms * 2;
}

/* Whether a stream message's revision can be watched after. An event
 * happens at a revision of 1 or more, and the resume after a stream adds
 * one to the last revision printed: a negative one, or INT64_MAX, can only
 * come from a broken or hostile replica (and would overflow). */
static bool watch_revision_ok(const Ferry__V1__WatchResponse *msg)
{
    if (msg->header == NULL) {
        return msg->n_events == 0;
    }
    return msg->header->revision >= (msg->n_events > 0 ? 1 : 0) &&
           msg->header->revision < INT64_MAX;
}

/* Reads one stream until it ends or ctl_stop; *delivered_p is set once it
 * printed an event. Returns the stream's end status (FERRY_OK when it ended
 * with OK or was interrupted), FERRY_ERR_PROTOCOL (err: DATA_LOSS) for a
 * message watch_revision_ok refuses, FERRY_ERR_IO when stdout could not be
 * written. */
static ferry_status_t watch_stream(const options_t *o, rpc_stream_t *stream, int64_t *revision_p,
                                   bool *delivered_p, rpc_error_t *err)
{
    while (!ctl_stop) {
        Ferry__V1__WatchResponse *msg = NULL;
        ferry_status_t status =
            rpc_stream_read(stream, WATCH_POLL_MS, (ProtobufCMessage **)&msg, err);

        if (rpc_stream_idle(status, err)) {
            continue;
        }
        if (status != FERRY_OK || msg == NULL) {
            return status;
        }
        if (!watch_revision_ok(msg)) {
            err->grpc_code = rpc_status_to_grpc(FERRY_ERR_PROTOCOL);
            snprintf(err->message, sizeof(err->message),
                     "a message of %zu event(s) has revision %lld", msg->n_events,
                     msg->header != NULL ? (long long)msg->header->revision : 0LL);
            protobuf_c_message_free_unpacked(&msg->base, NULL);
            return FERRY_ERR_PROTOCOL;
        }
        for (size_t i = 0; i < msg->n_events; i++) {
            if (!ctl_print_event(msg->events[i], msg->header, o->json)) {
                protobuf_c_message_free_unpacked(&msg->base, NULL);
                return FERRY_ERR_IO;
            }
            *delivered_p = true;
        }
        if (msg->header != NULL && !msg->fragment && msg->header->revision > *revision_p) {
            *revision_p = msg->header->revision;
        }
        protobuf_c_message_free_unpacked(&msg->base, NULL);
    }
    return FERRY_OK;
}

/* Watches until interrupted. `revision` is the last change this command has
 * printed (or the revision its first stream started after). A stream that
 * ends for any reason but a refusal (INVALID_ARGUMENT, PERMISSION_DENIED,
 * ...) is opened again on the next coordinator with start_revision set past
 * that revision, so nothing is missed or printed twice (`revision` moves only
 * when a revision's last message came: a stream that ends among the
 * `fragment`s of a revision too large for one message resumes at it, and
 * its first fragments print again). When the replica no
 * longer has those changes (OUT_OF_RANGE: its history is shorter, or it
 * reloaded its view) ferryctl watches from the current revision instead and
 * says on stderr which revisions it skipped (`list` shows the state they led
 * to). A replica that is full (RESOURCE_EXHAUSTED: --max-watches) or breaks
 * the protocol (DATA_LOSS) is left for the next as one that does not answer.
 * Before the next try it waits a backoff (doubling from WATCH_BACKOFF_MIN_MS
 * to WATCH_BACKOFF_MAX_MS) when no replica could be watched, and when the
 * stream ended without an event within WATCH_STEADY_MS: replicas that open
 * streams and end them at once (a crash loop, a broken one) would otherwise
 * be asked again as fast as they answer. Only a stream that printed an event
 * or lasted resets the backoff. */
static int cmd_watch(const options_t *o, ctl_conn_t *conn)
{
    Ferry__V1__WatchRequest req = FERRY__V1__WATCH_REQUEST__INIT;
    int64_t revision = o->start_revision > 0 ? o->start_revision - 1 : 0;
    int64_t backoff_ms = WATCH_BACKOFF_MIN_MS;
    bool started = false, gap = false;

    req.request_id = (char *)(o->id != NULL ? o->id : "");
    req.request_id_prefix = (char *)(o->prefix != NULL ? o->prefix : "");
    req.start_revision = o->start_revision;
    while (!ctl_stop) {
        Ferry__V1__WatchResponse *first = NULL;
        rpc_stream_t *stream = NULL;
        rpc_error_t err = {0};
        ferry_status_t status = ctl_conn_watch(conn, &req, &stream, &first, &err);
        char shown[CTL_SHOWN_CAP(sizeof(err.message))];
        bool delivered = false;
        int64_t created, opened_ms;

        if (status != FERRY_OK) {
            if (ctl_stop) {
                break;
            }
            if (status == FERRY_ERR_OUT_OF_RANGE && req.start_revision > 0) {
                fprintf(stderr,
                        "ferryctl: watch: %s no longer has the changes from revision %" PRId64
                        "; watching from now\n",
                        ctl_conn_target(conn), req.start_revision);
                req.start_revision = 0;
                gap = true;
                continue;
            }
            if (!ctl_status_tries_next_watch(status) || !started) {
                return report("watch", status, &err, conn);
            }
            watch_backoff(&backoff_ms);
            continue;
        }
        created = first->header != NULL ? first->header->revision : 0;
        if (req.start_revision == 0 && gap) {
            fprintf(stderr,
                    "ferryctl: watch: on %s after revision %" PRId64
                    "; the changes after revision %" PRId64 " up to it were not replayed\n",
                    ctl_conn_target(conn), created, revision);
            /* In the output too: a script reading it sees the gap where
             * it is, not only a person reading stderr. */
            if (o->json && !ctl_print_gap_json(first->header, revision)) {
                protobuf_c_message_free_unpacked(&first->base, NULL);
                rpc_stream_destroy(stream);
                return CTL_EXIT_FAILED;
            }
        }
        protobuf_c_message_free_unpacked(&first->base, NULL);
        if (req.start_revision == 0) {
            revision = created; /* the stream carries what follows it */
        } else if (started) {
            fprintf(stderr, "ferryctl: watch: resumed on %s from revision %" PRId64 "\n",
                    ctl_conn_target(conn), req.start_revision);
        }
        started = true;
        gap = false;
        opened_ms = ctl_now_ms();
        status = watch_stream(o, stream, &revision, &delivered, &err);
        rpc_stream_destroy(stream);
        if (ctl_stop) {
            break;
        }
        if (status == FERRY_ERR_IO) {
            return CTL_EXIT_FAILED; /* said: emit, or finish_output */
        }
        if (status != FERRY_OK && !ctl_status_tries_next_watch(status) &&
            status != FERRY_ERR_OUT_OF_RANGE) {
            return report("watch", status, &err, conn);
        }
        /* revision < INT64_MAX: ctl_conn_watch and watch_revision_ok refuse
         * it from a coordinator, and --start-revision is at most LONG_MAX. */
        fprintf(stderr,
                "ferryctl: watch: the stream from %s ended (%s%s%s); watching again from "
                "revision %" PRId64 "\n",
                ctl_conn_target(conn),
                status == FERRY_OK ? "OK" : rpc_grpc_code_name(err.grpc_code),
                status != FERRY_OK && err.message[0] != '\0' ? ": " : "",
                status != FERRY_OK ? ctl_text_shown(shown, sizeof(shown), err.message) : "",
                revision + 1);
        req.start_revision = revision + 1;
        ctl_conn_next(conn);
        if (delivered || ctl_now_ms() - opened_ms >= WATCH_STEADY_MS) {
            backoff_ms = WATCH_BACKOFF_MIN_MS;
        } else {
            watch_backoff(&backoff_ms);
        }
    }
    return CTL_EXIT_OK;
}

static void on_signal(int sig)
{
    (void)sig;
    atomic_store(&ctl_stop, true);
}

/* Which commands need what: false (said) when the arguments do not fit.
 * `takes` holds the getopt values of the command's own flags: any other
 * (but common_flags) is refused, rather than ignored as if it had done
 * something (`watch job-1 --state claimed` would print every state). */
static bool check_arguments(const options_t *o, const char *takes)
{
    bool needs_id = strcmp(o->command, "get") == 0 || strcmp(o->command, "cancel") == 0 ||
                    strcmp(o->command, "release") == 0;

    for (const struct option *f = longopts; f->name != NULL; f++) {
        if (o->given[f->val] && strchr(common_flags, f->val) == NULL &&
            strchr(takes, f->val) == NULL) {
            fprintf(stderr, "ferryctl: %s does not take --%s\n", o->command, f->name);
            return false;
        }
    }
    if (needs_id && o->id == NULL) {
        fprintf(stderr, "ferryctl: %s needs a request ID\n", o->command);
        return false;
    }
    if (strcmp(o->command, "watch") == 0 && (o->id != NULL) == (o->prefix != NULL)) {
        fprintf(stderr, "ferryctl: watch needs a request ID or --prefix, not both\n");
        return false;
    }
    if ((strcmp(o->command, "list") == 0 || strcmp(o->command, "health") == 0) && o->id != NULL) {
        fprintf(stderr, "ferryctl: %s takes no request ID ('%s')\n", o->command, o->id);
        return false;
    }
    if ((strcmp(o->command, "cancel") == 0 || strcmp(o->command, "release") == 0) &&
        o->token == NULL) {
        fprintf(stderr, "ferryctl: %s needs --token (or FERRY_TOKEN)\n", o->command);
        return false;
    }
    return true;
}

/* rc, or CTL_EXIT_FAILED when stdout could not be written (a full disk, a
 * closed file): a script must not take a cut or empty output for the
 * answer. */
static int finish_output(int rc)
{
    int flushed = fflush(stdout);
    int saved = errno;

    if (flushed != 0 || ferror(stdout)) {
        fprintf(stderr, "ferryctl: cannot write the output%s%s\n", flushed != 0 ? ": " : "",
                flushed != 0 ? strerror(saved) : "");
        return CTL_EXIT_FAILED;
    }
    return rc;
}

int main(int argc, char **argv)
{
    /* flags: the getopt values of the command's own flags (longopts).
     * catches_signals: list and watch stop at SIGINT and SIGTERM themselves
     * (list prints what it read, watch ends 0); the others keep the default
     * action and end at once, as their calls could not be cut short: a get
     * against a coordinator that never answers waited out --timeout (for
     * each coordinator listed) after Ctrl-C. */
    static const struct {
        const char *name;
        int (*run)(const options_t *o, ctl_conn_t *conn);
        const char *flags;
        bool catches_signals;
    } commands[] = {
        {"list", cmd_list, "pskznP", true},   {"get", cmd_get, "l", false},
        {"watch", cmd_watch, "pR", true},     {"cancel", cmd_cancel, "tr", false},
        {"release", cmd_release, "t", false}, {"health", cmd_health, "S", false},
    };
    struct sigaction sa = {0};
    ctl_conn_t conn = {0};
    options_t o;
    int rc;

    /* Warnings and errors of the layers below (a FERRY_RPC_KEEPALIVE_MS out
     * of range, a TLS file gRPC cannot use) on stderr, as the other
     * programs': without a level they were dropped. FERRY_LOG_LEVEL and
     * FERRY_LOG_FORMAT as everywhere (a value it does not know: warned of). */
    (void)ferry_log_init_from_env("ferryctl", FERRY_LOG_WARN);
    rc = parse_options(argc, argv, &o);

    if (rc != 0) {
        return rc > 0 ? finish_output(CTL_EXIT_OK) : CTL_EXIT_USAGE;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (strcmp(o.command, commands[i].name) != 0) {
            continue;
        }
        if (!check_arguments(&o, commands[i].flags) ||
            ctl_conn_init(&conn, o.coordinators) != FERRY_OK) {
            return CTL_EXIT_USAGE;
        }
        conn.timeout_ms = o.timeout_ms;
        if (o.tls_ca != NULL) {
            conn.use_tls = true;
            conn.tls.ca_file = o.tls_ca;
            conn.tls.cert_file = o.tls_cert;
            conn.tls.key_file = o.tls_key;
            conn.tls.server_name = o.tls_server_name;
        }
        if (commands[i].catches_signals) {
            /* One signal stops the command where it looks (between pages,
             * every WATCH_POLL_MS); SA_RESETHAND makes a second end it at
             * once, as while a page waits out a long --timeout. */
            sa.sa_handler = on_signal;
            sa.sa_flags = SA_RESETHAND;
            sigemptyset(&sa.sa_mask);
            sigaction(SIGINT, &sa, NULL);
            sigaction(SIGTERM, &sa, NULL);
        }
        rc = commands[i].run(&o, &conn);
        ctl_conn_cleanup(&conn);
        return finish_output(rc);
    }
    fprintf(stderr, "ferryctl: no command '%s' (list, get, watch, cancel, release, health)\n",
            o.command);
    return CTL_EXIT_USAGE;
}
