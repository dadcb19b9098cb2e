/*
 * test_op_state.c: the state machine allows exactly the transitions of the
 * table in op_state.h and types.proto, and nothing leaves a final state.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ferry/ferry.h>

#include "common/op_state.h"

static const ferry_op_state_t states[] = {
    FERRY_OP_REGISTERED, FERRY_OP_CLAIMED,   FERRY_OP_COMPLETE,
    FERRY_OP_ERRORED,    FERRY_OP_CANCELLED, FERRY_OP_EXPIRED,
};
#define N_STATES (sizeof(states) / sizeof(states[0]))

/* allowed[from][to], in the order of states[]. */
static const int allowed[N_STATES][N_STATES] = {
    /* REGISTERED */ {0, 1, 0, 0, 1, 1},
    /* CLAIMED    */ {0, 0, 1, 1, 1, 1},
    /* COMPLETE   */ {0, 0, 0, 0, 0, 0},
    /* ERRORED    */ {0, 0, 0, 0, 0, 0},
    /* CANCELLED  */ {0, 0, 0, 0, 0, 0},
    /* EXPIRED    */ {0, 0, 0, 0, 0, 0},
};

static void test_transition_table(void **state)
{
    (void)state;
    for (size_t f = 0; f < N_STATES; f++) {
        for (size_t t = 0; t < N_STATES; t++) {
            assert_int_equal(ferry__op_state_can_move(states[f], states[t]), allowed[f][t]);
        }
    }
}

static void test_final_states(void **state)
{
    (void)state;
    assert_false(ferry__op_state_is_final(FERRY_OP_REGISTERED));
    assert_false(ferry__op_state_is_final(FERRY_OP_CLAIMED));
    assert_true(ferry__op_state_is_final(FERRY_OP_COMPLETE));
    assert_true(ferry__op_state_is_final(FERRY_OP_ERRORED));
    assert_true(ferry__op_state_is_final(FERRY_OP_CANCELLED));
    assert_true(ferry__op_state_is_final(FERRY_OP_EXPIRED));
}

static void test_unspecified_goes_nowhere(void **state)
{
    (void)state;
    for (size_t t = 0; t < N_STATES; t++) {
        assert_false(ferry__op_state_can_move(0, states[t]));
    }
    assert_string_equal(ferry__op_state_name(0), "UNSPECIFIED");
    assert_string_equal(ferry__op_state_name(FERRY_OP_CLAIMED), "CLAIMED");
}

/* The status column: what an operation in each state reports, and what
 * libferry derives its own statuses from. */
static void test_public_status(void **state)
{
    (void)state;
    assert_int_equal(ferry__op_state_status(0), FERRY_OP_STATUS_UNINITIALIZED);
    assert_int_equal(ferry__op_state_status(FERRY_OP_REGISTERED), FERRY_OP_STATUS_INITIALIZED);
    assert_int_equal(ferry__op_state_status(FERRY_OP_CLAIMED), FERRY_OP_STATUS_IN_PROGRESS);
    assert_int_equal(ferry__op_state_status(FERRY_OP_COMPLETE), FERRY_OP_STATUS_COMPLETE);
    assert_int_equal(ferry__op_state_status(FERRY_OP_ERRORED), FERRY_OP_STATUS_ERRORED);
    assert_int_equal(ferry__op_state_status(FERRY_OP_CANCELLED), FERRY_OP_STATUS_CANCELLED);
    assert_int_equal(ferry__op_state_status(FERRY_OP_EXPIRED), FERRY_OP_STATUS_ERRORED);
    for (size_t i = 0; i < N_STATES; i++) {
        ferry_op_status_t s = ferry__op_state_status(states[i]);
        /* The public header's finality agrees with the state table's. */
        assert_int_equal(ferry_op_status_is_final(s), ferry__op_state_is_final(states[i]));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_transition_table),
        cmocka_unit_test(test_final_states),
        cmocka_unit_test(test_unspecified_goes_nowhere),
        cmocka_unit_test(test_public_status),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
