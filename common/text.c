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

size_t ferry_utf8_char(const char *s, size_t len, size_t *bad_p)
{
    const unsigned char *u = (const unsigned char *)s;
    unsigned char lo = 0x80, hi = 0xbf; /* the range of the second byte */
    size_t n, bad = 1;

    if (u[0] < 0x80) {
        return 1;
    }
    if (u[0] >= 0xc2 && u[0] <= 0xdf) {
        n = 2;
    } else if (u[0] >= 0xe0 && u[0] <= 0xef) {
        n = 3;
        lo = u[0] == 0xe0 ? 0xa0 : 0x80; /* not overlong */
        hi = u[0] == 0xed ? 0x9f : 0xbf; /* not a surrogate */
    } else if (u[0] >= 0xf0 && u[0] <= 0xf4) {
        n = 4;
        lo = u[0] == 0xf0 ? 0x90 : 0x80; /* not overlong */
        hi = u[0] == 0xf4 ? 0x8f : 0xbf; /* not past U+10FFFF */
    } else {
        n = 0; /* a continuation byte, C0/C1 (overlong) or F5..FF */
    }
    for (size_t i = 1; i < n; i++) {
        if (i >= len || u[i] < lo || u[i] > hi) {
            n = 0;
            break;
        }
        bad = i + 1;
        lo = 0x80;
        hi = 0xbf;
    }
    if (n == 0 && bad_p != NULL) {
        *bad_p = bad;
    }
    return n;
}

uint32_t ferry_utf8_code_point(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    uint32_t cp = n == 1 ? u[0] : u[0] & (0x7fu >> n);

    for (size_t i = 1; i < n; i++) {
        cp = cp << 6 | (u[i] & 0x3fu);
    }
    return cp;
}

size_t ferry_utf8_invalid_at(const char *s, size_t len)
{
    size_t i = 0;

    while (i < len) {
        size_t k = ferry_utf8_char(s + i, len - i, NULL);
        if (k == 0) {
            return i;
        }
        i += k;
    }
    return len;
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

/* Whether code point cp acts on a terminal instead of showing, or is the
 * escape's own backslash (text.h). */
static bool acts(uint32_t cp)
{
    return cp < 0x20 || cp == '\\' || (cp >= 0x7f && cp <= 0x9f) || cp == 0x061c || cp == 0x200e ||
           cp == 0x200f || (cp >= 0x202a && cp <= 0x202e) || (cp >= 0x2066 && cp <= 0x2069);
}

size_t ferry_text_shown(const char *s, size_t len)
{
    size_t n = ferry_utf8_char(s, len, NULL);

    return n == 0 || acts(ferry_utf8_code_point(s, n)) ? 0 : n;
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

void ferry_hex(char *out, const uint8_t *in, size_t n)
{
    static const char digit[] = "0123456789abcdef";

    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digit[in[i] >> 4];
        out[2 * i + 1] = digit[in[i] & 0xf];
    }
    out[2 * n] = '\0';
}
