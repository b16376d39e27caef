/* Fixtures of the arena suites (tests/arena*_test.c): a private monitor, an arena on
 * it, stats, and a child-process runner with stderr captured. */
#ifndef CLLM_TESTS_SUPPORT_ARENA_FIXTURES_H
#define CLLM_TESTS_SUPPORT_ARENA_FIXTURES_H

#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cllm/arena.h>
#include <cllm/heap.h>
#include <cllm/monitor.h>

#include "lib/internal/fault.h"
#include "lib/internal/util.h"
#include "child.h"
#include "fixtures.h"
#include "mt_check.h"

#define MiB ((size_t)1 << 20)
#define KiB ((size_t)1 << 10)
#define G CLLM_ARENA_GRANULE

static cllm_arena_t *mk_arena(cllm_monitor_t *mon, size_t initial, size_t min_chunk,
                              size_t max_chunk) {
  cllm_arena_config_t cfg = cllm_arena_config_default();
  cfg.monitor = mon;
  cfg.initial_bytes = initial;
  cfg.min_chunk_bytes = min_chunk;
  cfg.max_chunk_bytes = max_chunk;
  cllm_arena_t *a = NULL;
  cr_assert_eq(cllm_arena_create(&cfg, &a), CLLM_OK);
  cr_assert_not_null(a);
  return a;
}

static cllm_arena_stats_t st_of(const cllm_arena_t *a) {
  cllm_arena_stats_t st;
  memset(&st, 0, sizeof st);
  st.struct_size = sizeof st;
  cr_assert_eq(cllm_arena_stats(a, &st), CLLM_OK);
  return st;
}

static size_t step_used(cllm_monitor_t *m) { return cllm_monitor_used(m, CLLM_CAT_STEP); }

static size_t round_up(size_t x, size_t g) { return (x + g - 1) / g * g; }

/* Run fn in a forked child with stderr captured (tests/support/child.h); returns the
 * child's wait status. */
static int call_void_fn(void *fn) {
  (*(void (**)(void))fn)();
  return 0;
}
static int run_void_child(void (*fn)(void), char *err, size_t errlen) {
  int status = run_child(call_void_fn, &fn, err, errlen);
  cr_assert(status != -1, "the child could not be started");
  return status;
}

/* Live allocations of the randomized workloads: filled with a tag, verified, and
 * checked pairwise disjoint. */
typedef struct live {
  unsigned char *p;
  size_t n;
  unsigned char tag;
} live_t;

static void fill(const live_t *l) {
  if (l->n <= 8192) {
    memset(l->p, l->tag, l->n);
  } else { /* large: head, tail and a stride */
    memset(l->p, l->tag, 4096);
    memset(l->p + l->n - 4096, l->tag, 4096);
    for (size_t o = 4096; o < l->n - 4096; o += 65536) l->p[o] = l->tag;
  }
}

static void verify(const live_t *l) {
  size_t bad = SIZE_MAX;
  if (l->n <= 8192) {
    for (size_t i = 0; i < l->n && bad == SIZE_MAX; i++) if (l->p[i] != l->tag) bad = i;
  } else {
    for (size_t i = 0; i < 4096 && bad == SIZE_MAX; i++) {
      if (l->p[i] != l->tag) bad = i;
      if (l->p[l->n - 4096 + i] != l->tag) bad = l->n - 4096 + i;
    }
    for (size_t o = 4096; o < l->n - 4096 && bad == SIZE_MAX; o += 65536) if (l->p[o] != l->tag) bad = o;
  }
  cr_assert_eq(bad, SIZE_MAX, "allocation %p (%zu bytes, tag %u) overwritten at %zu", (void *)l->p,
               l->n, l->tag, bad);
}

static int cmp_live(const void *x, const void *y) {
  const live_t *a = x, *b = y;
  return (a->p > b->p) - (a->p < b->p);
}

static void check_disjoint(live_t *v, size_t n) {
  live_t *s = malloc(n * sizeof *s);
  cr_assert_not_null(s);
  memcpy(s, v, n * sizeof *s);
  qsort(s, n, sizeof *s, cmp_live);
  for (size_t i = 1; i < n; i++)
    cr_assert(s[i - 1].p + (s[i - 1].n ? s[i - 1].n : 1) <= s[i].p, "overlap: %p+%zu and %p",
              (void *)s[i - 1].p, s[i - 1].n, (void *)s[i].p);
  free(s);
}

#endif /* CLLM_TESTS_SUPPORT_ARENA_FIXTURES_H */
