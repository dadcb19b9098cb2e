/*
 * op_state.c: the transition table of op_state.h.
 */
#include "common/op_state.h"

bool ferry__op_state_is_final(ferry_op_state_t state)
{
    switch (state) {
    case FERRY_OP_COMPLETE:
    case FERRY_OP_ERRORED:
    case FERRY_OP_CANCELLED:
    case FERRY_OP_EXPIRED:
        return true;
    default:
        return false;
    }
}

bool ferry__op_state_can_move(ferry_op_state_t from, ferry_op_state_t to)
{
    switch (from) {
    case FERRY_OP_REGISTERED:
        return to == FERRY_OP_CLAIMED || to == FERRY_OP_CANCELLED || to == FERRY_OP_EXPIRED;
    case FERRY_OP_CLAIMED:
        return to == FERRY_OP_COMPLETE || to == FERRY_OP_ERRORED || to == FERRY_OP_CANCELLED ||
               to == FERRY_OP_EXPIRED;
    default:
        return false;
    }
}

const char *ferry__op_state_name(ferry_op_state_t state)
{
    switch (state) {
    case FERRY_OP_REGISTERED:
        return "REGISTERED";
    case FERRY_OP_CLAIMED:
        return "CLAIMED";
    case FERRY_OP_COMPLETE:
        return "COMPLETE";
    case FERRY_OP_ERRORED:
        return "ERRORED";
    case FERRY_OP_CANCELLED:
        return "CANCELLED";
    case FERRY_OP_EXPIRED:
        return "EXPIRED";
    default:
        return "UNSPECIFIED";
    }
}
