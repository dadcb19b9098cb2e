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

/* One decoder: a character's bytes, or the length of one bad sequence
 * (the longest start of a well-formed one there, at least one byte); the
 * overlong, surrogate and past-U+10FFFF forms are bad. */
static void test_utf8_char(void **state)
{
    static const struct {
        const char *s;
        size_t len, n, bad;
    } cases[] = {
        {"a", 1, 1, 0},
        {"\xC3\xA9", 2, 2, 0},
        {"\xE2\x82\xAC", 3, 3, 0},
        {"\xF0\x9F\x98\x80", 4, 4, 0},
        {"\xF4\x8F\xBF\xBF", 4, 4, 0}, /* U+10FFFF */
        {"\xE2\x82", 2, 0, 2},         /* cut short: one bad sequence */
        {"\xE2\x82"
         "A",
         3, 0, 2},
        {"\xE2"
         "A",
         2, 0, 1},
        {"\x80", 1, 0, 1},             /* a lone continuation byte */
        {"\xC0\xAF", 2, 0, 1},         /* overlong '/' */
        {"\xE0\x80\x80", 3, 0, 1},     /* overlong */
        {"\xED\xA0\x80", 3, 0, 1},     /* a surrogate */
        {"\xF4\x90\x80\x80", 4, 0, 1}, /* past U+10FFFF */
        {"\xFF", 1, 0, 1},
    };
    (void)state;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t bad = 0;
        assert_int_equal(ferry_utf8_char(cases[i].s, cases[i].len, &bad), cases[i].n);
        assert_int_equal(bad, cases[i].bad);
    }
    assert_int_equal(ferry_utf8_invalid_at("ab\xC3\xA9\xFFz", 6), 4);
    assert_int_equal(ferry_utf8_invalid_at("ab\xC3\xA9", 4), 4);
}

/* What is shown as it is and what as \xNN: printable ASCII and other
 * characters whole; C0, DEL, C1 (as UTF-8: U+009B is CSI to xterm) and the
 * bidirectional overrides, isolates and marks escaped byte by byte, and a
 * backslash, so that what is shown reads back one way only; bytes that are
 * not UTF-8 (a lone continuation, a cut sequence, an overlong form, a
 * surrogate) escaped one at a time. */
static void test_escape(void **state)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"worker-1", "worker-1"},
        {"caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80", "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80"},
        {"a\nb\x1b[2Jc\x7f", "a\\x0ab\\x1b[2Jc\\x7f"},
        {"x\xC2\x9B"
         "31mred",
         "x\\xc2\\x9b31mred"},        /* U+009B, CSI */
        {"\xC2\xA0ok", "\xC2\xA0ok"}, /* U+00A0: shown */
        {"ab\xE2\x80\xAE"
         "fdp.exe",
         "ab\\xe2\\x80\\xaefdp.exe"}, /* U+202E */
        {"\xE2\x81\xA6x\xE2\x81\xA9", "\\xe2\\x81\\xa6"
                                      "x\\xe2\\x81\\xa9"},
        {"\xE2\x80\x8Fx\xD8\x9C", "\\xe2\\x80\\x8fx\\xd8\\x9c"}, /* U+200F, U+061C */
        {"x\\x1b\\", "x\\x5cx1b\\x5c"},      /* a backslash: no look-alike escape */
        {"\x9b\xff", "\\x9b\\xff"},          /* not UTF-8 */
        {"\xC3", "\\xc3"},                   /* cut short */
        {"\xC0\xAF", "\\xc0\\xaf"},          /* overlong '/' */
        {"\xED\xA0\x80", "\\xed\\xa0\\x80"}, /* a surrogate */
    };
    char out[128];
    (void)state;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_int_equal(ferry_text_escape(out, sizeof(out), cases[i].in), strlen(cases[i].out));
        assert_string_equal(out, cases[i].out);
    }
    /* Cut at a whole character or escape, never inside one. */
    assert_int_equal(ferry_text_escape(out, 6, "ab\x1b"), 2);
    assert_string_equal(out, "ab");
    assert_int_equal(ferry_text_escape(out, 4, "ab\xE2\x82\xAC"), 2);
    assert_int_equal(ferry_text_escape(out, 1, "abc"), 0);
    assert_string_equal(out, "");
}

/* Columns: one per character shown, four per escaped byte. */
static void test_columns(void **state)
{
    (void)state;
    assert_int_equal(ferry_text_columns(""), 0);
    assert_int_equal(ferry_text_columns("abc"), 3);
    assert_int_equal(ferry_text_columns("caf\xC3\xA9"), 4);
    assert_int_equal(ferry_text_columns("a\x1b"), 5);
    assert_int_equal(ferry_text_columns("\xC2\x9B"), 8);
}

/* Every byte value, both nibbles, lower case, NUL-terminated at 2n; the
 * byte past it untouched. */
static void test_hex(void **state)
{
    (void)state;
    const uint8_t in[] = {0x00, 0x09, 0xa0, 0xff, 0x5c};
    char out[2 * sizeof(in) + 2];

    memset(out, 'Z', sizeof(out));
    ferry_hex(out, in, sizeof(in));
    assert_string_equal(out, "0009a0ff5c");
    assert_int_equal(out[sizeof(out) - 1], 'Z');

    ferry_hex(out, in, 0);
    assert_string_equal(out, "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fits_whole),
        cmocka_unit_test(test_cut_between_characters),
        cmocka_unit_test(test_never_inside_a_character),
        cmocka_unit_test(test_not_utf8_is_cut_where_asked),
        cmocka_unit_test(test_format_keeps_whole_characters),
        cmocka_unit_test(test_utf8_char),
        cmocka_unit_test(test_escape),
        cmocka_unit_test(test_columns),
        cmocka_unit_test(test_hex),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
