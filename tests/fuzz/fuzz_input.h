/* Helpers for the libFuzzer op-sequence fuzzers: read typed values from the input.
 * When the input runs out every reader returns 0 and fuzz_done() turns true. */
#ifndef CLLM_FUZZ_INPUT_H
#define CLLM_FUZZ_INPUT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct fuzz_in {
  const uint8_t *p;
  size_t n;
} fuzz_in_t;

static inline int fuzz_done(const fuzz_in_t *in) { return in->n == 0; }

static inline uint8_t fuzz_u8(fuzz_in_t *in) {
  if (in->n == 0) return 0;
  in->n--;
  return *in->p++;
}

static inline uint32_t fuzz_u32(fuzz_in_t *in) {
  uint32_t v = 0;
  for (int i = 0; i < 4; i++) v = (v << 8) | fuzz_u8(in);
  return v;
}

/* A size with interesting edges: 0, small, page-ish, large, SIZE_MAX. */
static inline size_t fuzz_size(fuzz_in_t *in, size_t max_normal) {
  uint8_t k = fuzz_u8(in);
  switch (k & 7) {
    case 0: return 0;
    case 1: return SIZE_MAX;
    case 2: return SIZE_MAX - fuzz_u8(in);
    case 3: return (size_t)1 << (fuzz_u8(in) % 64);
    default: return max_normal ? fuzz_u32(in) % (max_normal + 1) : 0;
  }
}

/* Abort with a message: any invariant failure or model mismatch is a crash. */
#define FUZZ_CHECK(cond, ...)                                              \
  do {                                                                     \
    if (!(cond)) {                                                         \
      fprintf(stderr, "fuzz check failed at %s:%d: %s: ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                                        \
      fputc('\n', stderr);                                                 \
      abort();                                                             \
    }                                                                      \
  } while (0)

#endif
