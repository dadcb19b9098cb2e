/*
 * op_state.h: the operation state machine, written down once for C.
 *
 * The states are ferry.v1.OperationState (proto/ferry/v1/types.proto), whose
 * comment holds the same table. One table, FERRY_FOREACH_OP_STATE, and
 * everything else is derived from it: the coordinator refuses any
 * transition it does not allow with FAILED_PRECONDITION (can_move); libferry
 * maps each of its own finer data-plane states to one of these (its phase)
 * and takes finality and the public ferry_op_status_t from here, and its
 * coordinator client reads a watched record's state through the same
 * status column (ferry__op_state_status).
 *
 *   from \ to    REGISTERED CLAIMED COMPLETE ERRORED CANCELLED EXPIRED
 *   REGISTERED       -         x       -        -        x        x
 *   CLAIMED          -         -       x        x        x        x
 *   final states     -         -       -        -        -        -
 */
#ifndef FERRY_COMMON_OP_STATE_H
#define FERRY_COMMON_OP_STATE_H

#include <stdbool.h>

#include "ferry/v1/types.pb-c.h"

typedef Ferry__V1__OperationState ferry_op_state_t;

#define FERRY_OP_STATE_BIT(s) (1u << FERRY__V1__OPERATION_STATE__OPERATION_STATE_##s)

/* _(STATE, final, STATUS (the ferry_op_status_t, FERRY_OP_STATUS_ omitted,
 * an operation in this state reports), the states it may move to). */
#define FERRY_FOREACH_OP_STATE(_)                                                                  \
    _(UNSPECIFIED, false, UNINITIALIZED, 0u)                                                       \
    _(REGISTERED, false, INITIALIZED,                                                              \
      FERRY_OP_STATE_BIT(CLAIMED) | FERRY_OP_STATE_BIT(CANCELLED) | FERRY_OP_STATE_BIT(EXPIRED))   \
    _(CLAIMED, false, IN_PROGRESS,                                                                 \
      FERRY_OP_STATE_BIT(COMPLETE) | FERRY_OP_STATE_BIT(ERRORED) | FERRY_OP_STATE_BIT(CANCELLED) | \
          FERRY_OP_STATE_BIT(EXPIRED))                                                             \
    _(COMPLETE, true, COMPLETE, 0u)                                                                \
    _(ERRORED, true, ERRORED, 0u)                                                                  \
    _(CANCELLED, true, CANCELLED, 0u)                                                              \
    _(EXPIRED, true, ERRORED, 0u)

/* The number of states in the table (their values run 0..COUNT-1), for
 * arrays indexed by state. */
#define FERRY__OP_STATE_ONE(name, final, status, moves) +1
enum { FERRY_OP_STATE_COUNT = 0 FERRY_FOREACH_OP_STATE(FERRY__OP_STATE_ONE) };

#define FERRY_OP_REGISTERED FERRY__V1__OPERATION_STATE__OPERATION_STATE_REGISTERED
#define FERRY_OP_CLAIMED    FERRY__V1__OPERATION_STATE__OPERATION_STATE_CLAIMED
#define FERRY_OP_COMPLETE   FERRY__V1__OPERATION_STATE__OPERATION_STATE_COMPLETE
#define FERRY_OP_ERRORED    FERRY__V1__OPERATION_STATE__OPERATION_STATE_ERRORED
#define FERRY_OP_CANCELLED  FERRY__V1__OPERATION_STATE__OPERATION_STATE_CANCELLED
#define FERRY_OP_EXPIRED    FERRY__V1__OPERATION_STATE__OPERATION_STATE_EXPIRED

/* True for a state nothing leaves: COMPLETE, ERRORED, CANCELLED, EXPIRED. */
bool ferry__op_state_is_final(ferry_op_state_t state);

/* True when the table above allows from -> to. */
bool ferry__op_state_can_move(ferry_op_state_t from, ferry_op_state_t to);

/* "REGISTERED", ...; "UNSPECIFIED" for 0 and unknown values. Static. */
const char *ferry__op_state_name(ferry_op_state_t state);

#ifdef FERRY_FERRY_H
/* The public status of an operation in this state (the table's STATUS
 * column); for files that include ferry/ferry.h first. */
static inline ferry_op_status_t ferry__op_state_status(ferry_op_state_t state)
{
    switch (state) {
#define FERRY__OP_STATE_STATUS(name, final, status, moves)   \
    case FERRY__V1__OPERATION_STATE__OPERATION_STATE_##name: \
        return FERRY_OP_STATUS_##status;
        FERRY_FOREACH_OP_STATE(FERRY__OP_STATE_STATUS)
#undef FERRY__OP_STATE_STATUS
    default:
        return FERRY_OP_STATUS_UNINITIALIZED;
    }
}
#endif

#endif /* FERRY_COMMON_OP_STATE_H */
