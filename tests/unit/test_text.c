/*
 * test_text.c: ferry_utf8_cut keeps whole characters: a string that fits is
 * kept whole, a cut never ends inside a UTF-8 sequence (of two, three or
 * four bytes), and bytes that are not UTF-8 are cut where asked;
 * ferry_utf8_format, which formats into a fixed buffer, drops a last
 * character that did not fit whole, and only then.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <string.h>

#include "common/text.h"

static void test_fits_whole(void **state)
{
    (void)state;
    assert_int_equal(ferry_utf8_cut("", 0), 0);
    assert_int_equal(ferry_utf8_cut("abc", 3), 3);
    assert_int_equal(ferry_utf8_cut("abc", 10), 3);
    assert_int_equal(ferry_utf8_cut("a\xC3\xA9", 3), 3);
}

static void test_cut_between_characters(void **state)
{
    (void)state;
    assert_int_equal(ferry_utf8_cut("abcdef", 4), 4);
    assert_int_equal(ferry_utf8_cut("ab\xC3\xA9z", 4), 4); /* after the é */
    assert_int_equal(ferry_utf8_cut("ab\xC3\xA9z", 2), 2); /* before it */
}

static void test_never_inside_a_character(void **state)
{
    (void)state;
    /* é (2 bytes), € (3), U+1F600 (4), each after "ab". */
    assert_int_equal(ferry_utf8_cut("ab\xC3\xA9", 3), 2);
    assert_int_equal(ferry_utf8_cut("ab\xE2\x82\xAC", 3), 2);
    assert_int_equal(ferry_utf8_cut("ab\xE2\x82\xAC", 4), 2);
    assert_int_equal(ferry_utf8_cut("ab\xF0\x9F\x98\x80", 3), 2);
    assert_int_equal(ferry_utf8_cut("ab\xF0\x9F\x98\x80", 5), 2);
    assert_int_equal(ferry_utf8_cut("\xC3\xA9", 1), 0);
}

static void test_not_utf8_is_cut_where_asked(void **state)
{
    (void)state;
    /* Continuation bytes with no lead: nothing to keep whole. */
    assert_int_equal(ferry_utf8_cut("\x80\x80\x80\x80\x80", 4), 4);
}

static void test_format_keeps_whole_characters(void **state)
{
    char buf[8];
    (void)state;

    /* "ab" + 3 x U+20AC (3 bytes each) into 8 bytes: 7 fit, the second
     * euro only in part. */
    ferry_utf8_format(buf, sizeof(buf), "ab%s", "\xE2\x82\xAC\xE2\x82\xAC\xE2\x82\xAC");
    assert_string_equal(buf, "ab\xE2\x82\xAC");
    ferry_utf8_format(buf, sizeof(buf), "%s", "abcdefghij"); /* ASCII: as snprintf */
    assert_string_equal(buf, "abcdefg");
    ferry_utf8_format(buf, sizeof(buf), "%d%s", 12, "\xC3\xA9"); /* fits: unchanged */
    assert_string_equal(buf, "12\xC3\xA9");
    assert_int_equal(ferry_utf8_whole("a\xF0\x9F\x98", 4), 1);
    assert_int_equal(ferry_utf8_whole("a\xF0\x9F\x98\x80", 5), 5);
    assert_int_equal(ferry_utf8_whole("", 0), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fits_whole),
        cmocka_unit_test(test_cut_between_characters),
        cmocka_unit_test(test_never_inside_a_character),
        cmocka_unit_test(test_not_utf8_is_cut_where_asked),
        cmocka_unit_test(test_format_keeps_whole_characters),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
