/*
 * ctl_print.c: what ferryctl writes on stdout.
 *
 * Two forms of the same records: a table for people (states and kinds
 * without their enum prefix, times in UTC) and JSON for scripts, one object
 * per line, built with cJSON. JSON field names are the .proto's; enums are
 * their short names ("REGISTERED"); times stay Unix milliseconds (they fit
 * a double exactly). Records from Get, List and Watch never carry metadata
 * or lease IDs (coordinator.proto), so neither form has them.
 *
 * Threads: one.
 */
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

/* Prints a cell shown safely (common/text.h: names, reasons and messages
 * are any worker's text, and a newline or a terminal control in one must
 * not forge a row or reach the operator's terminal), padded with spaces to
 * width columns. */
static void put_cell(const char *s, int width)
{
    size_t len = strlen(s);
    int n = (int)ferry_text_columns(s);

    while (len > 0) {
        size_t k = ferry_text_shown(s, len);
        if (k == 0) {
            printf("\\x%02x", (unsigned char)*s);
            k = 1;
        } else {
            fwrite(s, 1, k, stdout);
        }
        s += k;
        len -= k;
    }
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

static cJSON *op_json(const Ferry__V1__Operation *op)
{
    cJSON *o = cJSON_CreateObject();

    if (o == NULL) {
        return NULL;
    }
    cJSON_AddStringToObject(o, "request_id", op->request_id);
    cJSON_AddStringToObject(o, "state", ctl_state_name(op->state));
    cJSON_AddStringToObject(o, "kind", ctl_kind_name(op->kind));
    cJSON_AddStringToObject(o, "owner", op->owner);
    cJSON_AddStringToObject(o, "claimant", op->claimant);
    cJSON_AddNumberToObject(o, "created_unix_ms", (double)op->created_unix_ms);
    cJSON_AddNumberToObject(o, "updated_unix_ms", (double)op->updated_unix_ms);
    cJSON_AddNumberToObject(o, "error_code", op->error_code);
    cJSON_AddStringToObject(o, "error_message", op->error_message);
    return o;
}

static cJSON *envelope(const Ferry__V1__ResponseHeader *header)
{
    cJSON *o = cJSON_CreateObject();

    if (o != NULL && header != NULL) {
        cJSON_AddNumberToObject(o, "revision", (double)header->revision);
        cJSON_AddStringToObject(o, "coordinator", header->coordinator);
    }
    return o;
}

/* Prints o on one line and frees it. */
static void emit(cJSON *o)
{
    char *text = o != NULL ? cJSON_PrintUnformatted(o) : NULL;

    if (text == NULL) {
        fprintf(stderr, "ferryctl: no memory for JSON output\n");
    } else {
        printf("%s\n", text);
    }
    cJSON_free(text);
    cJSON_Delete(o);
}

void ctl_print_list_json(Ferry__V1__Operation *const *ops, size_t n, const char *next_page_token,
                         const Ferry__V1__ResponseHeader *header)
{
    cJSON *o = envelope(header);
    cJSON *arr = cJSON_AddArrayToObject(o, "operations");

    for (size_t i = 0; arr != NULL && i < n; i++) {
        cJSON_AddItemToArray(arr, op_json(ops[i]));
    }
    if (next_page_token != NULL && next_page_token[0] != '\0') {
        cJSON_AddStringToObject(o, "next_page_token", next_page_token);
    }
    emit(o);
}

void ctl_print_get_json(const Ferry__V1__Operation *op, const Ferry__V1__ResponseHeader *header)
{
    cJSON *o = envelope(header);

    cJSON_AddItemToObject(o, "operation", op_json(op));
    emit(o);
}

void ctl_print_health_json(const char *target, const char *status)
{
    cJSON *o = cJSON_CreateObject();

    cJSON_AddStringToObject(o, "coordinator", target);
    cJSON_AddStringToObject(o, "status", status);
    emit(o);
}

void ctl_print_released_json(const char *request_id, int64_t revision)
{
    cJSON *o = cJSON_CreateObject();

    cJSON_AddStringToObject(o, "released", request_id);
    cJSON_AddNumberToObject(o, "revision", (double)revision);
    emit(o);
}

static const char *event_type_name(Ferry__V1__WatchEventType type)
{
    return enum_short(&ferry__v1__watch_event_type__descriptor, type, "WATCH_EVENT_TYPE_");
}

void ctl_print_event(const Ferry__V1__WatchEvent *ev, const Ferry__V1__ResponseHeader *header,
                     bool json)
{
    static bool header_done;
    static const Ferry__V1__Operation none = FERRY__V1__OPERATION__INIT;
    const Ferry__V1__Operation *op = ev->operation != NULL ? ev->operation : &none;
    const char *cells[TABLE_COLUMNS];
    char when[96];

    if (json) {
        cJSON *o = envelope(header);

        cJSON_AddStringToObject(o, "type", event_type_name(ev->type));
        cJSON_AddItemToObject(o, "operation", op_json(op));
        emit(o);
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
    fflush(stdout);
}
