/*
 * text.h: cutting text from outside to a length without breaking it.
 *
 * A name a client sent (a claimant, an owner) may be valid UTF-8 of any
 * length its field allows; a message built around it in a fixed buffer
 * must not cut it in the middle of a character, or the message is no
 * longer valid UTF-8, and a proto3 string that is not is refused by the
 * decoders of Go, Python and C++ (a whole List page or Watch message with
 * it).
 */
#ifndef FERRY_COMMON_TEXT_H
#define FERRY_COMMON_TEXT_H

#include <stddef.h>

/* The length of the longest prefix of s (NUL-terminated) that is at most
 * max bytes and does not end inside a UTF-8 sequence: the whole string when
 * it fits, else max less the bytes of a character cut short. Text that was
 * valid UTF-8 stays valid when cut there. */
size_t ferry_utf8_cut(const char *s, size_t max);

#endif /* FERRY_COMMON_TEXT_H */
