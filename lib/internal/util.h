/* Internal helpers shared by every component: overflow-checked size arithmetic,
 * alignment, asserts by debug level, logging, and the per-thread last status. */
#ifndef CLLM_INTERNAL_UTIL_H
#define CLLM_INTERNAL_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cllm/status.h>

/* CLLM_DEBUG: 0 in optimised builds (NDEBUG), 2 otherwise; 3 enables expensive
 * walks. Use `if (CLLM_DEBUG >= 2)` rather than #if so every build compiles the check. */
#ifndef CLLM_DEBUG
#ifdef NDEBUG
#define CLLM_DEBUG 0
#else
#define CLLM_DEBUG 2
#endif
#endif

/* Built with AddressSanitizer? (gcc defines __SANITIZE_ADDRESS__; clang has __has_feature.) */
#if defined(__SANITIZE_ADDRESS__)
#define CLLM_HAVE_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CLLM_HAVE_ASAN 1
#endif
#endif
#ifndef CLLM_HAVE_ASAN
#define CLLM_HAVE_ASAN 0
#endif

void cllm__assert_fail(const char *expr, const char *file, int line, const char *func);

#define cllm_assert(e) \
  do { if (CLLM_DEBUG >= 1 && !(e)) cllm__assert_fail(#e, __FILE__, __LINE__, __func__); } while (0)
#define cllm_assert_internal(e) \
  do { if (CLLM_DEBUG >= 2 && !(e)) cllm__assert_fail(#e, __FILE__, __LINE__, __func__); } while (0)
#define cllm_assert_expensive(e) \
  do { if (CLLM_DEBUG >= 3 && !(e)) cllm__assert_fail(#e, __FILE__, __LINE__, __func__); } while (0)

/* ---- size arithmetic ---- */
static inline bool cllm__mul_overflow(size_t a, size_t b, size_t *out) {
  return __builtin_mul_overflow(a, b, out);
}
static inline bool cllm__add_overflow(size_t a, size_t b, size_t *out) {
  return __builtin_add_overflow(a, b, out);
}
static inline bool cllm__is_pow2(size_t x) { return x != 0 && (x & (x - 1)) == 0; }
/* Round x up to a multiple of align (a power of two); false on overflow. */
static inline bool cllm__align_up_checked(size_t x, size_t align, size_t *out) {
  size_t t;
  if (cllm__add_overflow(x, align - 1, &t)) return false;
  *out = t & ~(align - 1);
  return true;
}
static inline size_t cllm__align_down(size_t x, size_t align) { return x & ~(align - 1); }

/* ---- logging (through the hook installed with cllm_set_log_fn) ---- */
void cllm__log(cllm_log_level_t level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
#define cllm__warn(...) cllm__log(CLLM_LOG_WARN, __VA_ARGS__)
#define cllm__error(...) cllm__log(CLLM_LOG_ERROR, __VA_ARGS__)
#define cllm__info(...) cllm__log(CLLM_LOG_INFO, __VA_ARGS__)

/* ---- invariant checks ---- */
/* The one form of a `*_check()` step: in a function returning cllm_status_t, log
 * "<what> check: <message>" and return CLLM_ECORRUPT when cond is false. A check that holds
 * a lock or owns scratch memory walks in a helper built of these and releases in its caller. */
#define CLLM_CHECK(cond, what, ...)                   \
  do {                                                \
    if (!(cond)) {                                    \
      cllm__error(what " check: " __VA_ARGS__);       \
      return CLLM_ECORRUPT;                           \
    }                                                 \
  } while (0)

/* ---- per-thread last status (for pointer-returning calls) ---- */
void cllm__set_last_status(cllm_status_t s);

#endif /* CLLM_INTERNAL_UTIL_H */
