/*
 * text.c: see text.h.
 */
#include "common/text.h"

#include <string.h>

size_t ferry_utf8_cut(const char *s, size_t max)
{
    size_t len = strnlen(s, max + 1);
    size_t n;

    if (len <= max) {
        return len;
    }
    /* s[max] is the first byte left out: back up to the start of the
     * character it belongs to, unless it starts one itself. */
    n = max;
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80 && max - n < 3) {
        n--;
    }
    if (((unsigned char)s[n] & 0xC0) == 0x80) {
        return max; /* not UTF-8 here: nothing to keep whole */
    }
    return n;
}
