/*
 * text.h: cutting text from outside to a length without breaking it.
 *
 * A name a client sent (a claimant, an owner) or a peer's message may be
 * valid UTF-8 of any length its field allows; a message built around it in
 * a fixed buffer must not cut it in the middle of a character, or the
 * message is no longer valid UTF-8: a proto3 string that is not is refused
 * by the decoders of Go, Python and C++ (a whole List page or Watch message
 * with it), and Python's binding would raise UnicodeDecodeError in place of
 * the error the message explains.
 */
#ifndef FERRY_COMMON_TEXT_H
#define FERRY_COMMON_TEXT_H

#include <stdarg.h>
#include <stddef.h>

/* The length of s[0..len) less a last character that s[0..len) holds only
 * part of (a UTF-8 sequence cut short). Bytes that are not UTF-8 are kept. */
size_t ferry_utf8_whole(const char *s, size_t len);

/* The length of the longest prefix of s (NUL-terminated) that is at most
 * max bytes and does not end inside a UTF-8 sequence: the whole string when
 * it fits, else max less the bytes of a character cut short. Text that was
 * valid UTF-8 stays valid when cut there. */
size_t ferry_utf8_cut(const char *s, size_t max);

/* vsnprintf into dst[cap] (cap > 0), then, when the text did not fit,
 * drops a last character it holds only part of. */
void ferry_utf8_vformat(char *dst, size_t cap, const char *fmt, va_list ap);
void ferry_utf8_format(char *dst, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif /* FERRY_COMMON_TEXT_H */
