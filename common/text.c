/*
 * text.c: see text.h.
 */
#include "common/text.h"

#include <stdbool.h>
#include <stdint.h>
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

/* Whether code point cp acts on a terminal instead of showing (text.h). */
static bool acts(uint32_t cp)
{
    return cp < 0x20 || (cp >= 0x7f && cp <= 0x9f) || (cp >= 0x202a && cp <= 0x202e) ||
           (cp >= 0x2066 && cp <= 0x2069);
}

size_t ferry_text_shown(const char *s, size_t len)
{
    static const uint32_t least[5] = {0, 0, 0x80, 0x800, 0x10000}; /* no overlong form */
    const unsigned char *u = (const unsigned char *)s;
    size_t n = sequence_len(u[0]);
    uint32_t cp;

    if (n == 0 || n > len) {
        return 0;
    }
    cp = n == 1 ? u[0] : u[0] & (0x7fu >> n);
    for (size_t i = 1; i < n; i++) {
        if ((u[i] & 0xC0) != 0x80) {
            return 0;
        }
        cp = cp << 6 | (u[i] & 0x3Fu);
    }
    if (cp < least[n] || (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff || acts(cp)) {
        return 0;
    }
    return n;
}

size_t ferry_text_escape(char *out, size_t cap, const char *in)
{
    size_t len = strlen(in);
    size_t n = 0;

    while (len > 0) {
        size_t k = ferry_text_shown(in, len);
        if (k == 0) {
            if (n + 4 >= cap) {
                break;
            }
            n += (size_t)snprintf(out + n, cap - n, "\\x%02x", (unsigned char)in[0]);
            k = 1;
        } else {
            if (n + k >= cap) {
                break;
            }
            memcpy(out + n, in, k);
            n += k;
        }
        in += k;
        len -= k;
    }
    out[n] = '\0';
    return n;
}

size_t ferry_text_columns(const char *in)
{
    size_t len = strlen(in);
    size_t cols = 0;

    while (len > 0) {
        size_t k = ferry_text_shown(in, len);
        cols += k == 0 ? 4 : 1;
        k = k == 0 ? 1 : k;
        in += k;
        len -= k;
    }
    return cols;
}
