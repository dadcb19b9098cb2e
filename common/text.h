/*
 * text.h: cutting text from outside to a length without breaking it, and
 * showing it where a control character in it would act (a terminal, a log
 * line).
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
#include <stdint.h>

/* The bytes of the well-formed UTF-8 character at s[0..len) (len > 0),
 * 1..4; 0 when none starts there, and then *bad_p (unless NULL) is how many
 * bytes make one bad sequence: the longest start of a well-formed one
 * there, at least 1 (Unicode's "maximal subpart", which Python's decoder
 * follows too). Well-formed: no overlong form, no UTF-16 surrogate, nothing
 * past U+10FFFF. The one check of well-formed UTF-8 in the tree: the RPC
 * layer's, the escapers' (below, the log's JSON) and ferryctl's JSON use it
 * (ferry_utf8_whole only finds where a character starts, to cut text). */
size_t ferry_utf8_char(const char *s, size_t len, size_t *bad_p);

/* The code point of the well-formed character s[0..n), n as
 * ferry_utf8_char found it (1..4). */
uint32_t ferry_utf8_code_point(const char *s, size_t n);

/* The offset of the first byte of s[0..len) that is not part of
 * well-formed UTF-8; len when there is none. */
size_t ferry_utf8_invalid_at(const char *s, size_t len);

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

/* Showing text from outside on a terminal or in a log line. A name, reason
 * or message is any client's valid UTF-8 (the RPC layer refuses the rest),
 * and a few of its characters act on a terminal rather than show: C0
 * controls (a newline forges a line; ESC starts a sequence), DEL, C1
 * controls (U+0080..U+009F: U+009B is CSI to xterm), the bidirectional
 * overrides and isolates (U+202A..U+202E, U+2066..U+2069), which reorder
 * what follows them on screen, and the invisible direction marks (U+061C,
 * U+200E, U+200F), which move the punctuation around them. Those
 * characters, a backslash (so that a name typed as "x\x1b" is not read as
 * an escaped ESC: the shown text reads back to one text only), and bytes
 * that are not UTF-8 (from a peer that does not check it), are shown as
 * \xNN, byte by byte; every other character as it is. */

/* Bytes of the next character of s[0..len) (len > 0) when it may be shown
 * as it is; 0 when s[0] is to be shown as \xNN. */
size_t ferry_text_shown(const char *s, size_t len);

/* in, shown so, into out[cap] (cap > 0; NUL-terminated; cut at a whole
 * character or escape). Returns the length written. */
size_t ferry_text_escape(char *out, size_t cap, const char *in);

/* The columns in shown so takes: one per character (a wide or combining
 * one counts one too), four per escaped byte. */
size_t ferry_text_columns(const char *in);

/* The n bytes at in as 2n lower-case hex digits into out, NUL-terminated:
 * out has room for 2n + 1 bytes. Tokens, fence names and passwords are
 * random or MAC bytes written so. */
void ferry_hex(char *out, const uint8_t *in, size_t n);

#endif /* FERRY_COMMON_TEXT_H */
