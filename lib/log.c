/* The log hook and the assert handler.
 *
 * The log handler and its user pointer are read and replaced together under a
 * small mutex (logging is never on a hot path), and called outside it. The default
 * handler writes warnings and errors to stderr. The assert handler formats into a
 * stack buffer, write(2)s it and aborts: it never allocates. */
#include <stdarg.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <cllm/status.h>

#include "internal/util.h"

static void log_stderr(void *user, cllm_log_level_t level, const char *msg) {
  (void)user;
  if (level < CLLM_LOG_WARN) return;
  fprintf(stderr, "cllm-mem %s: %s\n", cllm_log_level_str(level), msg);
}

void cllm_log_discard(void *user, cllm_log_level_t level, const char *msg) {
  (void)user, (void)level, (void)msg;
}

const char *cllm_log_level_str(cllm_log_level_t level) {
  switch (level) {
#define CLLM_LOG_LEVEL_STR_(id, value, name) \
  case CLLM_LOG_##id:                        \
    return name;
    CLLM_LOG_LEVEL_MAP(CLLM_LOG_LEVEL_STR_)
#undef CLLM_LOG_LEVEL_STR_
  }
  return "unknown";
}

static pthread_mutex_t g_log_lock = PTHREAD_MUTEX_INITIALIZER;
static cllm_log_fn g_log_fn = log_stderr;
static void *g_log_user = NULL;

void cllm_set_log_fn(cllm_log_fn fn, void *user) {
  pthread_mutex_lock(&g_log_lock);
  g_log_fn = fn != NULL ? fn : log_stderr;
  g_log_user = fn != NULL ? user : NULL;
  pthread_mutex_unlock(&g_log_lock);
}

void cllm__log(cllm_log_level_t level, const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  /* Copy the pair under the lock, call it outside: a handler may log or set again. */
  pthread_mutex_lock(&g_log_lock);
  cllm_log_fn fn = g_log_fn;
  void *user = g_log_user;
  pthread_mutex_unlock(&g_log_lock);
  fn(user, level, buf);
}

void cllm__assert_fail(const char *expr, const char *file, int line, const char *func) {
  /* No allocation: format into a stack buffer and write(2) it. */
  char buf[512];
  int n = snprintf(buf, sizeof buf, "cllm-mem: assertion failed: %s (%s:%d %s)\n", expr, file,
                   line, func);
  if (n > 0) {
    ssize_t w = write(2, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
    (void)w;
  }
  abort();
}
