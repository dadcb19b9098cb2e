/*
 * text.c: see text.h.
 */
#include "common/text.h"

#include <stdio.h>
#include <string.h>

/* Bytes of the UTF-8 sequence that lead byte b starts; 0: b starts none
 * (a continuation byte, or not UTF-8). */
static size_t sequence_len(unsigned char b)
{
    if (b < 0x80) {
        return 1;
    }
    if ((b & 0xE0) == 0xC0) {
        return 2;
    }
    if ((b & 0xF0) == 0xE0) {
        return 3;
    }
    if ((b & 0xF8) == 0xF0) {
        return 4;
    }
    return 0;
}

size_t ferry_utf8_whole(const char *s, size_t len)
{
    size_t lead, need;

    if (len == 0) {
        return 0;
    }
    /* Back to the start of the last character: at most 3 continuation
     * bytes (10xxxxxx) before it. */
    lead = len - 1;
    while (lead > 0 && ((unsigned char)s[lead] & 0xC0) == 0x80 && len - lead < 4) {
        lead--;
    }
    need = sequence_len((unsigned char)s[lead]);
    if (need == 0) {
        return len; /* not UTF-8 here: nothing to keep whole */
    }
    return lead + need > len ? lead : len;
}

size_t ferry_utf8_cut(const char *s, size_t max)
{
    size_t len = strnlen(s, max + 1);

    return len <= max ? len : ferry_utf8_whole(s, max);
}

void ferry_utf8_vformat(char *dst, size_t cap, const char *fmt, va_list ap)
{
    int n = vsnprintf(dst, cap, fmt, ap);

    if (n >= 0 && (size_t)n >= cap) {
        dst[ferry_utf8_whole(dst, cap - 1)] = '\0';
    }
}

void ferry_utf8_format(char *dst, size_t cap, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    ferry_utf8_vformat(dst, cap, fmt, ap);
    va_end(ap);
}
