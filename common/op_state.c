/*
 * op_state.c: the functions of op_state.h, each generated from its one
 * table (FERRY_FOREACH_OP_STATE).
 */
#include "common/op_state.h"

bool ferry__op_state_is_final(ferry_op_state_t state)
{
    switch (state) {
#define FINAL(name, final, status, moves)                    \
    case FERRY__V1__OPERATION_STATE__OPERATION_STATE_##name: \
        return final;
        FERRY_FOREACH_OP_STATE(FINAL)
#undef FINAL
    default:
        return false;
    }
}

bool ferry__op_state_can_move(ferry_op_state_t from, ferry_op_state_t to)
{
    unsigned moves = 0;

    switch (from) {
#define MOVES(name, final, status, to_bits)                  \
    case FERRY__V1__OPERATION_STATE__OPERATION_STATE_##name: \
        moves = to_bits;                                     \
        break;
        FERRY_FOREACH_OP_STATE(MOVES)
#undef MOVES
    default:
        return false;
    }
    return to > 0 && to < 32 && (moves & (1u << to)) != 0;
}

const char *ferry__op_state_name(ferry_op_state_t state)
{
    switch (state) {
#define NAME(name, final, status, moves)                     \
    case FERRY__V1__OPERATION_STATE__OPERATION_STATE_##name: \
        return #name;
        FERRY_FOREACH_OP_STATE(NAME)
#undef NAME
    default:
        return "UNSPECIFIED";
    }
}
