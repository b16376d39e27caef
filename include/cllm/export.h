/* cllm-mem: export, attribute and C/C++ linkage macros shared by every public header. */
#ifndef CLLM_EXPORT_H
#define CLLM_EXPORT_H

/* Every status-returning call is must-use: clang and gcc warn (errors under
 * -Werror) when a status is dropped, in C11, C2x and C++. To drop one on purpose
 * write CLLM_DISCARD(f(...)): gcc's warn_unused_result ignores a (void) cast, and
 * C23's [[nodiscard]] (which honours it) cannot follow CLLM_API in a declaration. */
#define CLLM_DISCARD(status) ((void)!(status))

#if defined(__GNUC__) || defined(__clang__)
#define CLLM_API __attribute__((visibility("default")))
#define CLLM_NODISCARD __attribute__((warn_unused_result))
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
