/* cllm-mem status codes.
 *
 *   cllm_status_t rc = cllm_monitor_reserve(mon, CLLM_CAT_KV, bytes);
 *   if (rc < 0) fprintf(stderr, "%s: %s\n", cllm_status_name(rc), cllm_status_str(rc));
 *
 * Every function that can fail returns a cllm_status_t: 0 (CLLM_OK) on success, a
 * negative code otherwise.  A failed call leaves the object exactly as it was.
 * Calls that return a pointer (alloc) return NULL on failure and record the reason
 * for the calling thread: cllm_last_status().  Not thread-safe unless tagged.
 */
#ifndef CLLM_STATUS_H
#define CLLM_STATUS_H

#include <cllm/export.h>

// XX(name, code, description): the one table every status comes from.
#define CLLM_STATUS_MAP(XX)                                                   \
  XX(OK, 0, "success")                                                        \
  XX(ENOMEM, -1, "out of memory")                                             \
  XX(EINVAL, -2, "invalid argument")                                          \
  XX(ELIMIT, -3, "memory budget exceeded")                                    \
  XX(EBUSY, -4, "object still in use")                                        \
  XX(ENOTFOUND, -5, "no such entry")                                          \
  XX(ENOTSUP, -6, "not supported on this machine or build")                   \
  XX(EEXIST, -7, "entry already exists")                                      \
  XX(ESYS, -8, "system call failed (see errno in stats or the log)")          \
  XX(ESTATE, -9, "not allowed in the object's current state")                 \
  XX(ECORRUPT, -10, "internal invariant violated")                            \
  XX(EIO, -11, "I/O error or short read")                                     \
  XX(ERANGE, -12, "range outside the object")                                 \
  XX(EPREEMPTED, -13, "sequence was preempted")                               \
  XX(EOVERFLOW, -14, "size arithmetic overflows")

typedef enum cllm_status {
#define CLLM_STATUS_ENUM_(name, code, text) CLLM_##name = (code),
  CLLM_STATUS_MAP(CLLM_STATUS_ENUM_)
#undef CLLM_STATUS_ENUM_
} cllm_status_t;

CLLM_EXTERN_C_BEGIN

// Human description, e.g. "memory budget exceeded"; "unknown status" for codes not
// in the table. Never NULL, static storage. Thread: any.
CLLM_API const char *cllm_status_str(cllm_status_t s);
// Symbolic name, e.g. "CLLM_ELIMIT"; "CLLM_UNKNOWN" for codes not in the table.
// Never NULL, static storage. Thread: any.
CLLM_API const char *cllm_status_name(cllm_status_t s);
// The status recorded by the last pointer-returning call of this library that
// failed on the calling thread (CLLM_OK if none has failed yet). Thread: any
// (thread-local).
CLLM_API cllm_status_t cllm_last_status(void);
// Clear the calling thread's last status to CLLM_OK. Thread: any (thread-local).
CLLM_API void cllm_clear_last_status(void);

/* ---- Logging ---------------------------------------------------------------- */

// XX(id, value, name): the one table of log levels (CLLM_LOG_<id>).
#define CLLM_LOG_LEVEL_MAP(XX) \
  XX(DEBUG, 0, "debug")        \
  XX(INFO, 1, "info")          \
  XX(WARN, 2, "warn")          \
  XX(ERROR, 3, "error")

typedef enum cllm_log_level {
#define CLLM_LOG_LEVEL_ENUM_(id, value, name) CLLM_LOG_##id = (value),
  CLLM_LOG_LEVEL_MAP(CLLM_LOG_LEVEL_ENUM_)
#undef CLLM_LOG_LEVEL_ENUM_
} cllm_log_level_t;

// A log handler. `msg` is a NUL-terminated line without a trailing newline, valid
// only during the call. It is never called with a library lock held and never on
// a hot path (arena bump, KV slot reservation).
typedef void (*cllm_log_fn)(void *user, cllm_log_level_t level, const char *msg);

// Install the process-wide log handler; the library prints nothing except through
// it. fn == NULL restores the default, which writes warnings and errors to stderr.
// To silence the library, install cllm_log_discard. The (fn, user) pair is
// replaced as one; a message being delivered concurrently may still reach the
// previous handler. Thread: any.
CLLM_API void cllm_set_log_fn(cllm_log_fn fn, void *user);
// A handler that drops every message.
CLLM_API void cllm_log_discard(void *user, cllm_log_level_t level, const char *msg);
// The level name, "debug", "info", "warn" or "error".
CLLM_API const char *cllm_log_level_str(cllm_log_level_t level);

CLLM_EXTERN_C_END
#endif /* CLLM_STATUS_H */
