/* Criterion suite for the per-step bump arenas (lib/arena*.c, include/cllm/arena.h):
 * ASan reports, the debug fill, two threads on one arena.
 * Each Test runs in its own process. Most tests use a private monitor so that the
 * STEP figure can be compared exactly with the arena's capacity. */
#include "support/arena_fixtures.h"

/* ---- AddressSanitizer: use after reset / rewind is reported ------------------------------ */

static volatile char g_sink;

static void read_after_reset(void) {
  cllm_arena_t *a = NULL;
  if (cllm_arena_create(NULL, &a) != CLLM_OK) _exit(3);
  char *p = cllm_arena_alloc(a, 256);
  if (p == NULL) _exit(4);
  p[0] = 42;
  g_sink = p[0]; /* fine */
  if (cllm_arena_reset(a) != CLLM_OK) _exit(5);
  g_sink = p[0]; /* use after reset: ASan must report */
  _exit(0);
}

static void read_after_rewind(void) {
  cllm_arena_t *a = NULL;
  if (cllm_arena_create(NULL, &a) != CLLM_OK) _exit(3);
  cllm_arena_mark_t m = cllm_arena_mark(a);
  char *p = cllm_arena_alloc(a, 256);
  if (p == NULL || cllm_arena_rewind(a, m) != CLLM_OK) _exit(4);
  g_sink = p[10];
  _exit(0);
}

static void read_past_bump(void) {
  cllm_arena_t *a = NULL;
  if (cllm_arena_create(NULL, &a) != CLLM_OK) _exit(3);
  char *p = cllm_arena_alloc(a, 100);
  if (p == NULL) _exit(4);
  g_sink = p[100]; /* one past the end of the allocation */
  _exit(0);
}

static void cursor_read_after_reset(void) {
  cllm_arena_t *a = NULL;
  cllm_arena_cursor_t c;
  if (cllm_arena_create(NULL, &a) != CLLM_OK || cllm_arena_cursor_begin(a, &c) != CLLM_OK) _exit(3);
  char *p = cllm_arena_cursor_alloc(&c, 256);
  if (p == NULL) _exit(4);
  p[0] = 42;
  g_sink = p[0]; /* fine */
  if (cllm_arena_cursor_end(a, &c) != CLLM_OK || cllm_arena_reset(a) != CLLM_OK) _exit(5);
  g_sink = p[0]; /* use after reset: ASan must report */
  _exit(0);
}

static void cursor_read_past_bump(void) {
  cllm_arena_t *a = NULL;
  cllm_arena_cursor_t c;
  if (cllm_arena_create(NULL, &a) != CLLM_OK || cllm_arena_cursor_begin(a, &c) != CLLM_OK) _exit(3);
  char *p = cllm_arena_cursor_alloc(&c, 100); /* slow path: the first chunk */
  char *q = cllm_arena_cursor_alloc(&c, 100); /* fast path */
  if (p == NULL || q == NULL) _exit(4);
  q[99] = 1;
  g_sink = q[100]; /* one past the end of the allocation */
  _exit(0);
}

Test(arena_asan, use_after_reset_rewind_and_overflow_are_reported) {
#if !CLLM_HAVE_ASAN
  cr_skip_test("not built with AddressSanitizer (run with --config=asan)");
#else
  void (*cases[])(void) = {read_after_reset, read_after_rewind, read_past_bump,
                           cursor_read_after_reset, cursor_read_past_bump};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char err[8192];
    int status = run_void_child(cases[i], err, sizeof err);
    cr_assert(!(WIFEXITED(status) && WEXITSTATUS(status) == 0), "case %zu: child read freely", i);
    cr_assert(strstr(err, "use-after-poison") != NULL, "case %zu: no ASan report:\n%s", i, err);
  }
#endif
}

Test(arena, debug_fills_released_memory) {
#if CLLM_HAVE_ASAN
  cr_skip_test("released memory is poisoned under ASan");
#else
  if (CLLM_DEBUG < 2) cr_skip_test("CLLM_DEBUG < 2: no fill pattern");
  cllm_arena_t *a = NULL;
  cr_assert_eq(cllm_arena_create(NULL, &a), CLLM_OK);
  unsigned char *p = cllm_arena_alloc(a, 256);
  memset(p, 0, 256);
  cr_assert_eq(cllm_arena_reset(a), CLLM_OK);
  for (int i = 0; i < 256; i++) cr_assert_eq(p[i], 0xDB);
  cllm_arena_destroy(a);
#endif
}

/* ---- debug: two threads on one arena ------------------------------------------------------ */

static void *slow_alloc_thread(void *arg) {
  cllm_arena_t *a = arg;
  /* larger than what is left: always the out-of-line path */
  void *p = cllm_arena_alloc(a, 3 * MiB);
  return p;
}

Test(arena, handing_over_between_steps_is_allowed) {
  cllm_arena_t *a = NULL;
  cr_assert_eq(cllm_arena_create(NULL, &a), CLLM_OK);
  for (int i = 0; i < 3; i++) {
    pthread_t t;
    void *p = NULL;
    cr_assert_eq(pthread_create(&t, NULL, slow_alloc_thread, a), 0);
    cr_assert_eq(pthread_join(t, &p), 0);
    cr_assert_not_null(p);
    cr_assert_eq(cllm_arena_reset(a), CLLM_OK); /* the main thread ends the step */
  }
  cllm_arena_destroy(a);
}

static void two_threads_one_step(void) {
  cllm_arena_t *a = NULL;
  if (cllm_arena_create(NULL, &a) != CLLM_OK) _exit(3);
  pthread_t t;
  void *p = NULL;
  if (pthread_create(&t, NULL, slow_alloc_thread, a) != 0 || pthread_join(t, &p) != 0 || p == NULL)
    _exit(4);
  (void)cllm_arena_alloc(a, 3 * MiB); /* same step, another thread: debug assertion */
  _exit(0);
}

Test(arena, two_threads_in_one_step_abort_in_debug) {
  if (CLLM_DEBUG < 1) cr_skip_test("CLLM_DEBUG == 0: the check is compiled out");
  char err[4096];
  int status = run_void_child(two_threads_one_step, err, sizeof err);
  cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT, "child status %#x:\n%s", status, err);
  cr_assert(strstr(err, "two threads within one step") != NULL, "%s", err);
}
