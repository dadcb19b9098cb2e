/*
 * ctl_print.c: what ferryctl writes on stdout.
 *
 * Two forms of the same records: a table for people (states and kinds
 * without their enum prefix, times in UTC) and JSON for scripts, one object
 * per line, built with cJSON. JSON field names are the .proto's; enums are
 * their short names ("REGISTERED"); times stay Unix milliseconds. Records
 * from Get, List and Watch never carry metadata or lease IDs
 * (coordinator.proto), so neither form has them.
 *
 * JSON keeps text as it came, with two exceptions for a broken or hostile
 * coordinator (the real one refuses the like at its RPC layer): a byte
 * sequence that is not UTF-8 becomes U+FFFD, so every line parses with a
 * strict parser (Python's json.loads on bytes, Go's), and 64-bit numbers go
 * in as raw integers, since cJSON's numbers are doubles and would round a
 * revision past 2^53 (as worker/cli/stats_json.c).
 *
 * Threads: one.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "common/text.h"
#include "ctl.h"

static const char *enum_short(const ProtobufCEnumDescriptor *desc, int value, const char *prefix)
{
    const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(desc, value);
    size_t plen = strlen(prefix);

    if (v == NULL) {
        return "?";
    }
    return strncmp(v->name, prefix, plen) == 0 ? v->name + plen : v->name;
}

const char *ctl_state_name(Ferry__V1__OperationState state)
{
    return enum_short(&ferry__v1__operation_state__descriptor, state, "OPERATION_STATE_");
}

const char *ctl_kind_name(Ferry__V1__OperationKind kind)
{
    return enum_short(&ferry__v1__operation_kind__descriptor, kind, "OPERATION_KIND_");
}

static bool enum_parse(const ProtobufCEnumDescriptor *desc, const char *prefix, const char *text,
                       int *value_p)
{
    size_t plen = strlen(prefix);

    for (unsigned i = 0; i < desc->n_values; i++) {
        const char *name = desc->values[i].name;

        if (desc->values[i].value == 0) {
            continue; /* UNSPECIFIED is "no filter": leave the flag out */
        }
        if (strcasecmp(text, name) == 0 || strcasecmp(text, name + plen) == 0) {
            *value_p = desc->values[i].value;
            return true;
        }
    }
    return false;
}

bool ctl_state_parse(const char *text, Ferry__V1__OperationState *state_p)
{
    int v;

    if (!enum_parse(&ferry__v1__operation_state__descriptor, "OPERATION_STATE_", text, &v)) {
        return false;
    }
    *state_p = (Ferry__V1__OperationState)v;
    return true;
}

bool ctl_kind_parse(const char *text, Ferry__V1__OperationKind *kind_p)
{
    int v;

    if (!enum_parse(&ferry__v1__operation_kind__descriptor, "OPERATION_KIND_", text, &v)) {
        return false;
    }
    *kind_p = (Ferry__V1__OperationKind)v;
    return true;
}

/* "2026-01-02T03:04:05.678Z", or "-" for 0. */
static void format_time(int64_t unix_ms, char *buf, size_t size)
{
    time_t s = (time_t)(unix_ms / 1000);
    struct tm tm;

    if (unix_ms <= 0 || gmtime_r(&s, &tm) == NULL) {
        snprintf(buf, size, "-");
        return;
    }
    snprintf(buf, size, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(unix_ms % 1000));
}

static const char *or_dash(const char *s)
{
    return s != NULL && s[0] != '\0' ? s : "-";
}

#define TABLE_COLUMNS 7

static const char *const table_header[TABLE_COLUMNS] = {"REQUEST ID", "STATE",   "KIND", "OWNER",
                                                        "CLAIMANT",   "UPDATED", "ERROR"};

/* An operation's cells; time_buf holds the UPDATED cell. */
static void table_cells(const Ferry__V1__Operation *op, char *time_buf, size_t time_size,
                        const char *cells[TABLE_COLUMNS])
{
    format_time(op->updated_unix_ms, time_buf, time_size);
    cells[0] = op->request_id;
    cells[1] = ctl_state_name(op->state);
    cells[2] = ctl_kind_name(op->kind);
    cells[3] = or_dash(op->owner);
    cells[4] = or_dash(op->claimant);
    cells[5] = time_buf;
    cells[6] = or_dash(op->error_message);
}

const char *ctl_text_shown(char *buf, size_t cap, const char *text)
{
    ferry_text_escape(buf, cap, text);
    return buf;
}

void ctl_put_text(FILE *f, const char *text)
{
    size_t len = strlen(text);

    while (len > 0) {
        size_t k = ferry_text_shown(text, len);
        if (k == 0) {
            fprintf(f, "\\x%02x", (unsigned char)*text);
            k = 1;
        } else {
            fwrite(text, 1, k, f);
        }
        text += k;
        len -= k;
    }
}

/* Prints a cell shown safely (common/text.h: names, reasons and messages
 * are any worker's text, and a newline or a terminal control in one must
 * not forge a row or reach the operator's terminal), padded with spaces to
 * width columns. */
static void put_cell(const char *s, int width)
{
    int n = (int)ferry_text_columns(s);

    ctl_put_text(stdout, s);
    printf("%*s", width > n ? width - n : 0, "");
}

static void table_row(const char *const cells[TABLE_COLUMNS], const int width[TABLE_COLUMNS])
{
    for (int c = 0; c < TABLE_COLUMNS - 1; c++) {
        put_cell(cells[c], width[c]);
        fputs("  ", stdout);
    }
    put_cell(cells[TABLE_COLUMNS - 1], 0);
    putchar('\n');
}

void ctl_print_table(Ferry__V1__Operation *const *ops, size_t n)
{
    int width[TABLE_COLUMNS];
    const char *cells[TABLE_COLUMNS];
    char when[96];

    for (int c = 0; c < TABLE_COLUMNS; c++) {
        width[c] = (int)strlen(table_header[c]);
    }
    for (size_t i = 0; i < n; i++) {
        table_cells(ops[i], when, sizeof(when), cells);
        for (int c = 0; c < TABLE_COLUMNS; c++) {
            int len = (int)ferry_text_columns(cells[c]);
            width[c] = len > width[c] ? len : width[c];
        }
    }
    table_row(table_header, width);
    for (size_t i = 0; i < n; i++) {
        table_cells(ops[i], when, sizeof(when), cells);
        table_row(cells, width);
    }
}

/* Adds text as a JSON string, each sequence that is not UTF-8 replaced by
 * U+FFFD (cJSON copies bytes as they are, and one bad byte would make the
 * whole line unreadable to a strict parser). False: no memory. */
static bool add_text(cJSON *o, const char *key, const char *text)
{
    static const char replacement[] = "\xef\xbf\xbd";
    size_t len = strlen(text), i, n = 0, bad;
    char *fixed;
    bool ok;

    if (ferry_utf8_invalid_at(text, len) == len) {
        return cJSON_AddStringToObject(o, key, text) != NULL;
    }
    fixed = malloc(len * 3 + 1); /* at worst each byte becomes three */
    if (fixed == NULL) {
        return false;
    }
    for (i = 0; i < len;) {
        size_t k = ferry_utf8_char(text + i, len - i, &bad);
        if (k == 0) {
            memcpy(fixed + n, replacement, 3);
            n += 3;
            i += bad;
        } else {
            memcpy(fixed + n, text + i, k);
            n += k;
            i += k;
        }
    }
    fixed[n] = '\0';
    ok = cJSON_AddStringToObject(o, key, fixed) != NULL;
    free(fixed);
    return ok;
}

/* A 64-bit number, exact. False: no memory. */
static bool add_i64(cJSON *o, const char *key, int64_t value)
{
    char text[24];

    snprintf(text, sizeof(text), "%" PRId64, value);
    return cJSON_AddRawToObject(o, key, text) != NULL;
}

/* NULL: no memory. */
static cJSON *op_json(const Ferry__V1__Operation *op)
{
    cJSON *o = cJSON_CreateObject();

    if (o == NULL || !add_text(o, "request_id", op->request_id) ||
        !add_text(o, "state", ctl_state_name(op->state)) ||
        !add_text(o, "kind", ctl_kind_name(op->kind)) || !add_text(o, "owner", op->owner) ||
        !add_text(o, "claimant", op->claimant) ||
        !add_i64(o, "created_unix_ms", op->created_unix_ms) ||
        !add_i64(o, "updated_unix_ms", op->updated_unix_ms) ||
        cJSON_AddNumberToObject(o, "error_code", op->error_code) == NULL ||
        !add_text(o, "error_message", op->error_message)) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

/* NULL: no memory. */
static cJSON *envelope(const Ferry__V1__ResponseHeader *header)
{
    cJSON *o = cJSON_CreateObject();

    if (o != NULL && header != NULL &&
        (!add_i64(o, "revision", header->revision) ||
         !add_text(o, "coordinator", header->coordinator))) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

/* Adds item (NULL: it could not be built) to o; false, with item deleted,
 * when either is missing or there is no memory to add it. */
static bool add_item(cJSON *o, const char *key, cJSON *item)
{
    if (o == NULL || item == NULL || !cJSON_AddItemToObject(o, key, item)) {
        cJSON_Delete(item);
        return false;
    }
    return true;
}

/* Prints o on one line and frees it. o NULL, or a member found missing
 * (ok false): the line could not be built; said, and false. */
static bool emit(cJSON *o, bool ok)
{
    char *text = o != NULL && ok ? cJSON_PrintUnformatted(o) : NULL;

    if (text == NULL) {
        fprintf(stderr, "ferryctl: no memory for JSON output\n");
    } else {
        printf("%s\n", text);
    }
    cJSON_free(text);
    cJSON_Delete(o);
    return text != NULL;
}

bool ctl_print_list_json(Ferry__V1__Operation *const *ops, size_t n, const char *next_page_token,
                         const Ferry__V1__ResponseHeader *header)
{
    cJSON *o = envelope(header);
    cJSON *arr = cJSON_CreateArray();
    bool ok = arr != NULL;

    for (size_t i = 0; ok && i < n; i++) {
        cJSON *op = op_json(ops[i]);

        ok = op != NULL && cJSON_AddItemToArray(arr, op);
        if (!ok) {
            cJSON_Delete(op);
        }
    }
    if (!ok) {
        cJSON_Delete(arr);
        arr = NULL;
    }
    ok = add_item(o, "operations", arr);
    if (ok && next_page_token != NULL && next_page_token[0] != '\0') {
        ok = add_text(o, "next_page_token", next_page_token);
    }
    return emit(o, ok);
}

bool ctl_print_get_json(const Ferry__V1__Operation *op, const Ferry__V1__ResponseHeader *header)
{
    cJSON *o = envelope(header);

    return emit(o, add_item(o, "operation", op_json(op)));
}

bool ctl_print_health_json(const char *target, const char *status)
{
    cJSON *o = cJSON_CreateObject();

    return emit(o,
                o != NULL && add_text(o, "coordinator", target) && add_text(o, "status", status));
}

bool ctl_print_released_json(const char *request_id, int64_t revision)
{
    cJSON *o = cJSON_CreateObject();

    return emit(o, o != NULL && add_text(o, "released", request_id) &&
                       add_i64(o, "revision", revision));
}

static const char *event_type_name(Ferry__V1__WatchEventType type)
{
    return enum_short(&ferry__v1__watch_event_type__descriptor, type, "WATCH_EVENT_TYPE_");
}

bool ctl_print_gap_json(const Ferry__V1__ResponseHeader *header, int64_t after_revision)
{
    cJSON *o = envelope(header);

    return emit(o, o != NULL && add_text(o, "type", "GAP") &&
                       add_i64(o, "after_revision", after_revision)) &&
           fflush(stdout) == 0 && !ferror(stdout);
}

bool ctl_print_event(const Ferry__V1__WatchEvent *ev, const Ferry__V1__ResponseHeader *header,
                     bool json)
{
    static bool header_done;
    static const Ferry__V1__Operation none = FERRY__V1__OPERATION__INIT;
    const Ferry__V1__Operation *op = ev->operation != NULL ? ev->operation : &none;
    const char *cells[TABLE_COLUMNS];
    char when[96];

    if (json) {
        cJSON *o = envelope(header);

        if (!emit(o, o != NULL && add_text(o, "type", event_type_name(ev->type)) &&
                         add_item(o, "operation", op_json(op)))) {
            return false;
        }
    } else {
        if (!header_done) {
            printf("%-10s %-6s ", "REVISION", "EVENT");
            table_row(table_header, (const int[TABLE_COLUMNS]){24, 10, 11, 16, 16, 24, 0});
            header_done = true;
        }
        table_cells(op, when, sizeof(when), cells);
        printf("%-10lld %-6s ", header != NULL ? (long long)header->revision : 0LL,
               event_type_name(ev->type));
        table_row(cells, (const int[TABLE_COLUMNS]){24, 10, 11, 16, 16, 24, 0});
    }
    return fflush(stdout) == 0 && !ferror(stdout);
}
