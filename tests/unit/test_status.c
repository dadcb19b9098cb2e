/*
 * test_status.c: the ferry_status_t table gives every code a unique value,
 * a name that matches its enum spelling, and a message.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <string.h>

#include <ferry/status.h>

static const struct {
    ferry_status_t code;
    const char *spelled;
} all_codes[] = {
#define ROW(name, value, msg) {FERRY_##name, "FERRY_" #name},
    FERRY_FOREACH_STATUS(ROW)
#undef ROW
};
#define N_CODES (sizeof(all_codes) / sizeof(all_codes[0]))

static void test_ok_is_zero_and_errors_negative(void **state)
{
    (void)state;
    assert_int_equal(FERRY_OK, 0);
    for (size_t i = 0; i < N_CODES; i++) {
        if (all_codes[i].code != FERRY_OK) {
            assert_true(all_codes[i].code < 0);
        }
    }
}

static void test_values_unique(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_CODES; i++) {
        for (size_t j = i + 1; j < N_CODES; j++) {
            assert_int_not_equal(all_codes[i].code, all_codes[j].code);
        }
    }
}

static void test_names_match_enum(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_CODES; i++) {
        assert_string_equal(ferry_status_name(all_codes[i].code), all_codes[i].spelled);
    }
    assert_string_equal(ferry_status_name(FERRY_ERR_NOT_FOUND), "FERRY_ERR_NOT_FOUND");
}

static void test_messages_present(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_CODES; i++) {
        const char *msg = ferry_status_string(all_codes[i].code);
        assert_non_null(msg);
        assert_true(strlen(msg) > 0);
        assert_string_not_equal(msg, "unknown status");
    }
}

static void test_unknown_value(void **state)
{
    (void)state;
    assert_string_equal(ferry_status_name((ferry_status_t)-9999), "FERRY_UNKNOWN_STATUS");
    assert_string_equal(ferry_status_string((ferry_status_t)42), "unknown status");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ok_is_zero_and_errors_negative),
        cmocka_unit_test(test_values_unique),
        cmocka_unit_test(test_names_match_enum),
        cmocka_unit_test(test_messages_present),
        cmocka_unit_test(test_unknown_value),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
