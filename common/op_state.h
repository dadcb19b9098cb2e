/*
 * op_state.h: the operation state machine, written down once for C.
 *
 * The states are ferry.v1.OperationState (proto/ferry/v1/types.proto), whose
 * comment holds the same table. The coordinator refuses any transition this
 * table does not allow with FAILED_PRECONDITION; libferry uses it to decide
 * what a state change seen in a Watch means.
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

#endif /* FERRY_COMMON_OP_STATE_H */
