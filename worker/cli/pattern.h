/*
 * pattern.h: the byte pattern ferry-worker writes and checks. Each 8-byte
 * word is a function of its offset, so a byte that lands in the wrong place,
 * or a region that was never written, is caught.
 */
#ifndef FERRY_WORKER_CLI_PATTERN_H
#define FERRY_WORKER_CLI_PATTERN_H

#include <stdbool.h>
#include <stdint.h>

void ferry_pattern_fill(uint8_t *buf, uint64_t size);
bool ferry_pattern_check(const uint8_t *buf, uint64_t size);
/* The first offset that differs; size when none does. */
uint64_t ferry_pattern_first_mismatch(const uint8_t *buf, uint64_t size);

#endif /* FERRY_WORKER_CLI_PATTERN_H */
