/* Tiny assert macros for the plain (non-Criterion) test programs that also run under
 * ThreadSanitizer.  A failed check prints where and exits 1. */
#ifndef CLLM_TESTS_MT_CHECK_H
#define CLLM_TESTS_MT_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#define MT_CHECK(cond, ...)                                                   \
  do {                                                                        \
    if (!(cond)) {                                                            \
      fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                                           \
      fputc('\n', stderr);                                                    \
      exit(1);                                                                \
    }                                                                         \
  } while (0)

/* splitmix64: a seeded PRNG for deterministic stress. */
static inline unsigned long long mt_rand(unsigned long long *s) {
  unsigned long long z = (*s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/* ITER from the environment (stress knob), or the default. */
static inline long mt_iters(long dflt) {
  const char *e = getenv("ITER");
  return e != NULL && atol(e) > 0 ? atol(e) : dflt;
}

#endif
