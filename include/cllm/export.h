/* cllm-mem: export, attribute and C/C++ linkage macros shared by every public header. */
#ifndef CLLM_EXPORT_H
#define CLLM_EXPORT_H

#if defined(__GNUC__) || defined(__clang__)
#define CLLM_API __attribute__((visibility("default")))
/* gcc's warn_unused_result cannot be silenced with a (void) cast, so only clang
 * (where the cast works) warns about an ignored status. */
#if defined(__clang__)
#define CLLM_NODISCARD __attribute__((warn_unused_result))
#else
#define CLLM_NODISCARD
#endif
#define CLLM_LIKELY(x) __builtin_expect(!!(x), 1)
#define CLLM_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define CLLM_MALLOC_ATTR __attribute__((malloc))
#else
#define CLLM_API
#define CLLM_NODISCARD
#define CLLM_LIKELY(x) (x)
#define CLLM_UNLIKELY(x) (x)
#define CLLM_MALLOC_ATTR
#endif

#ifdef __cplusplus
#define CLLM_EXTERN_C_BEGIN extern "C" {
#define CLLM_EXTERN_C_END }
#else
#define CLLM_EXTERN_C_BEGIN
#define CLLM_EXTERN_C_END
#endif

#endif /* CLLM_EXPORT_H */
