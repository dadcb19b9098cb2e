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
 * Threads: one; SIGINT and SIGTERM only set ctl_stop.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/tls_flags.h"
#include "ctl.h"
#include "grpc/health/v1/health.pb-c.h"

#define FLAG_TIMEOUT_MIN_S      0.001
#define FLAG_TIMEOUT_MAX_S      86400.0
#define FLAG_PAGE_SIZE_MAX      1000 /* ListRequest.page_size's own limit */
#define FLAG_PAGES_MAX          1000000
#define WATCH_POLL_MS           200 /* how often watch looks at ctl_stop */
#define WATCH_BACKOFF_MIN_MS    200
#define WATCH_BACKOFF_MAX_MS    5000
#define GRPC_RESOURCE_EXHAUSTED 8 /* a Watch stream the client read too slowly */
#define GRPC_OUT_OF_RANGE       11

volatile sig_atomic_t ctl_stop;

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
    "\n"
    "exit: 0 ok, 1 failed, 2 usage or INVALID_ARGUMENT, 3 NOT_FOUND,\n"
    "      4 PERMISSION_DENIED/UNAUTHENTICATED, 5 FAILED_PRECONDITION/ALREADY_EXISTS,\n"
    "      6 no coordinator answered, 7 health: not SERVING,\n"
    "      130 list interrupted before its last page\n";

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

/* 0: parsed; 1: --help printed; -1: bad usage (said). */
static int parse_options(int argc, char **argv, options_t *o)
{
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
    int opt;

    memset(o, 0, sizeof(*o));
    o->coordinators = getenv("FERRY_COORDINATOR") ? getenv("FERRY_COORDINATOR") : "127.0.0.1:7400";
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

/* Says what went wrong and returns its exit code. */
static int report(const char *what, ferry_status_t status, const rpc_error_t *err,
                  const ctl_conn_t *conn)
{
    fprintf(stderr, "ferryctl: %s: %s: %s (%s)\n", what, rpc_grpc_code_name(err->grpc_code),
            err->message, ctl_conn_target(conn));
    return ctl_exit_code(status, err);
}

static int cmd_list(const options_t *o, ctl_conn_t *conn)
{
    Ferry__V1__ListRequest req = FERRY__V1__LIST_REQUEST__INIT;
    Ferry__V1__ListResponse **pages = NULL;
    Ferry__V1__Operation **ops = NULL;
    Ferry__V1__ListResponse *resp;
    size_t n_pages = 0, n_ops = 0;
    rpc_error_t err = {0};
    ferry_status_t status;
    int rc = CTL_EXIT_OK;

    req.request_id_prefix = (char *)(o->prefix != NULL ? o->prefix : "");
    req.state = o->state;
    req.kind = o->kind;
    req.page_size = (uint32_t)o->page_size;
    req.page_token = (char *)(o->page_token != NULL ? o->page_token : "");
    do {
        void *grown = realloc(pages, (n_pages + 1) * sizeof(*pages));

        if (grown == NULL) {
            fprintf(stderr, "ferryctl: list: no memory for page %zu\n", n_pages + 1);
            rc = CTL_EXIT_FAILED;
            goto out;
        }
        pages = grown;
        status = ctl_conn_unary(conn, "List", &req.base, &ferry__v1__list_response__descriptor,
                                (ProtobufCMessage **)&resp, &err);
        if (status != FERRY_OK) {
            rc = report("list", status, &err, conn);
            goto out;
        }
        pages[n_pages++] = resp;
        n_ops += resp->n_operations;
        req.page_token = resp->next_page_token;
    } while (req.page_token[0] != '\0' && (o->pages == 0 || (long)n_pages < o->pages) && !ctl_stop);
    /* Interrupted (SIGINT, SIGTERM): what was read, and where to go on. */
    if (ctl_stop && req.page_token[0] != '\0') {
        fprintf(stderr, "ferryctl: list: interrupted after %zu page(s)\n", n_pages);
        rc = CTL_EXIT_INTERRUPTED;
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
        ctl_print_list_json(ops, n_ops, req.page_token, pages[n_pages - 1]->header);
    } else {
        ctl_print_table(ops, n_ops);
        if (req.page_token[0] != '\0') {
            fprintf(stderr, "ferryctl: more: --page-token %s\n", req.page_token);
        }
    }
out:
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
        ctl_print_get_json(resp->operation, resp->header);
    } else {
        ctl_print_table(&resp->operation, 1);
    }
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return CTL_EXIT_OK;
}

static int cmd_cancel(const options_t *o, ctl_conn_t *conn)
{
    Ferry__V1__CancelRequest req = FERRY__V1__CANCEL_REQUEST__INIT;
    Ferry__V1__CancelResponse *resp;
    rpc_error_t err = {0};
    ferry_status_t status;

    req.request_id = (char *)o->id;
    req.access_token = (char *)o->token;
    req.reason = (char *)(o->reason != NULL ? o->reason : "");
    status = ctl_conn_unary(conn, "Cancel", &req.base, &ferry__v1__cancel_response__descriptor,
                            (ProtobufCMessage **)&resp, &err);
    if (status != FERRY_OK) {
        return report(o->id, status, &err, conn);
    }
    if (resp->operation != NULL) {
        if (o->json) {
            ctl_print_get_json(resp->operation, resp->header);
        } else {
            ctl_print_table(&resp->operation, 1);
        }
    }
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return CTL_EXIT_OK;
}

static int cmd_release(const options_t *o, ctl_conn_t *conn)
{
    Ferry__V1__ReleaseRequest req = FERRY__V1__RELEASE_REQUEST__INIT;
    Ferry__V1__ReleaseResponse *resp;
    rpc_error_t err = {0};
    ferry_status_t status;

    req.request_id = (char *)o->id;
    req.access_token = (char *)o->token;
    status = ctl_conn_unary(conn, "Release", &req.base, &ferry__v1__release_response__descriptor,
                            (ProtobufCMessage **)&resp, &err);
    if (status != FERRY_OK) {
        return report(o->id, status, &err, conn);
    }
    if (o->json) {
        ctl_print_released_json(o->id, resp->header != NULL ? resp->header->revision : 0);
    } else {
        printf("released %s\n", o->id);
    }
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return CTL_EXIT_OK;
}

/* One coordinator's health: its exit code (OK, NOT_SERVING, UNAVAILABLE...). */
static int health_one(const options_t *o, ctl_conn_t *conn, size_t i)
{
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    Grpc__Health__V1__HealthCheckResponse *resp;
    const ProtobufCEnumValue *v;
    rpc_error_t err = {0};
    ferry_status_t status;
    const char *target = conn->targets[i];
    int rc;

    req.service = (char *)o->service;
    status = ctl_conn_unary_at(conn, i, "/grpc.health.v1.Health/Check", &req.base,
                               &grpc__health__v1__health_check_response__descriptor,
                               (ProtobufCMessage **)&resp, &err);
    if (status != FERRY_OK) {
        if (o->json) {
            ctl_print_health_json(target, rpc_grpc_code_name(err.grpc_code));
        } else {
            printf("%-24s %s (%s)\n", target, rpc_grpc_code_name(err.grpc_code), err.message);
        }
        return ctl_exit_code(status, &err);
    }
    v = protobuf_c_enum_descriptor_get_value(
        &grpc__health__v1__health_check_response__serving_status__descriptor, resp->status);
    if (o->json) {
        ctl_print_health_json(target, v != NULL ? v->name : "?");
    } else {
        printf("%-24s %s\n", target, v != NULL ? v->name : "?");
    }
    rc = resp->status == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
             ? CTL_EXIT_OK
             : CTL_EXIT_NOT_SERVING;
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

/* Reads one stream until it ends or ctl_stop. Returns the stream's end
 * status (FERRY_OK when it ended with OK or was interrupted). */
static ferry_status_t watch_stream(const options_t *o, rpc_stream_t *stream, int64_t *revision_p,
                                   rpc_error_t *err)
{
    while (!ctl_stop) {
        Ferry__V1__WatchResponse *msg = NULL;
        ferry_status_t status =
            rpc_stream_read(stream, WATCH_POLL_MS, (ProtobufCMessage **)&msg, err);

        if (status == FERRY_ERR_TIMED_OUT && err->grpc_code == 0) {
            continue;
        }
        if (status != FERRY_OK || msg == NULL) {
            return status;
        }
        for (size_t i = 0; i < msg->n_events; i++) {
            ctl_print_event(msg->events[i], msg->header, o->json);
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
 * to). */
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
        int64_t created;

        if (status != FERRY_OK) {
            if (err.grpc_code == GRPC_OUT_OF_RANGE && req.start_revision > 0) {
                fprintf(stderr,
                        "ferryctl: watch: %s no longer has the changes from revision %" PRId64
                        "; watching from now\n",
                        ctl_conn_target(conn), req.start_revision);
                req.start_revision = 0;
                gap = true;
                continue;
            }
            if (!ctl_code_is_unreachable(err.grpc_code) || !started) {
                return report("watch", status, &err, conn);
            }
            sleep_ms(backoff_ms);
            backoff_ms =
                backoff_ms * 2 > WATCH_BACKOFF_MAX_MS ? WATCH_BACKOFF_MAX_MS : backoff_ms * 2;
            continue;
        }
        created = first->header != NULL ? first->header->revision : 0;
        protobuf_c_message_free_unpacked(&first->base, NULL);
        if (req.start_revision == 0) {
            if (gap) {
                fprintf(stderr,
                        "ferryctl: watch: on %s after revision %" PRId64
                        "; the changes after revision %" PRId64 " up to it were not replayed\n",
                        ctl_conn_target(conn), created, revision);
            }
            revision = created; /* the stream carries what follows it */
        } else if (started) {
            fprintf(stderr, "ferryctl: watch: resumed on %s from revision %" PRId64 "\n",
                    ctl_conn_target(conn), req.start_revision);
        }
        started = true;
        gap = false;
        backoff_ms = WATCH_BACKOFF_MIN_MS;
        status = watch_stream(o, stream, &revision, &err);
        rpc_stream_destroy(stream);
        if (ctl_stop) {
            break;
        }
        if (status != FERRY_OK && !ctl_code_is_unreachable(err.grpc_code) &&
            err.grpc_code != GRPC_OUT_OF_RANGE && err.grpc_code != GRPC_RESOURCE_EXHAUSTED) {
            return report("watch", status, &err, conn);
        }
        fprintf(stderr,
                "ferryctl: watch: the stream from %s ended (%s); watching again from revision "
                "%" PRId64 "\n",
                ctl_conn_target(conn),
                status == FERRY_OK ? "OK" : rpc_grpc_code_name(err.grpc_code), revision + 1);
        req.start_revision = revision + 1;
        ctl_conn_next(conn);
    }
    return CTL_EXIT_OK;
}

static void on_signal(int sig)
{
    (void)sig;
    ctl_stop = 1;
}

/* Which commands need what: false (said) when the arguments do not fit. */
static bool check_arguments(const options_t *o)
{
    bool needs_id = strcmp(o->command, "get") == 0 || strcmp(o->command, "cancel") == 0 ||
                    strcmp(o->command, "release") == 0;

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

int main(int argc, char **argv)
{
    static const struct {
        const char *name;
        int (*run)(const options_t *o, ctl_conn_t *conn);
    } commands[] = {
        {"list", cmd_list},     {"get", cmd_get},         {"watch", cmd_watch},
        {"cancel", cmd_cancel}, {"release", cmd_release}, {"health", cmd_health},
    };
    struct sigaction sa = {0};
    ctl_conn_t conn = {0};
    options_t o;
    int rc = parse_options(argc, argv, &o);

    if (rc != 0) {
        return rc > 0 ? CTL_EXIT_OK : CTL_EXIT_USAGE;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (strcmp(o.command, commands[i].name) != 0) {
            continue;
        }
        if (!check_arguments(&o) || ctl_conn_init(&conn, o.coordinators) != FERRY_OK) {
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
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        rc = commands[i].run(&o, &conn);
        ctl_conn_cleanup(&conn);
        return rc;
    }
    fprintf(stderr, "ferryctl: no command '%s' (list, get, watch, cancel, release, health)\n",
            o.command);
    return CTL_EXIT_USAGE;
}
