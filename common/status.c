/*
 * status.c: names and messages of ferry_status_t, generated from the one
 * table in ferry/status.h. Plain switches, so -Wswitch flags a code that the
 * table gained but a switch did not.
 */
#include <ferry/status.h>

const char *ferry_status_name(ferry_status_t status)
{
    switch (status) {
#define FERRY__STATUS_NAME(name, value, msg) \
    case FERRY_##name:                       \
        return "FERRY_" #name;
        FERRY_FOREACH_STATUS(FERRY__STATUS_NAME)
#undef FERRY__STATUS_NAME
    }
    return "FERRY_UNKNOWN_STATUS";
}

const char *ferry_status_string(ferry_status_t status)
{
    switch (status) {
#define FERRY__STATUS_STRING(name, value, msg) \
    case FERRY_##name:                         \
        return msg;
        FERRY_FOREACH_STATUS(FERRY__STATUS_STRING)
#undef FERRY__STATUS_STRING
    }
    return "unknown status";
}
