/* Criterion tests for the per-thread NUMA heaps (include/cllm/heap.h): sized free,
 * frees from other threads, thread exit and destroy with live threads. Each Test runs
 * in its own process (a fresh mimalloc and region pool). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* sched_getcpu, CPU_* macros, syscall */
#endif
#include "support/child.h"
#include "support/heap_test_util.h"

TestSuite(heap, .init = cllm_test_on_node0); /* bound to node 0: see on_node0.h */

/* ---- sized free -------------------------------------------------------------------- */

Test(heap, free_sized_accounts_as_free_does) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_heaps_t *h = new_heaps(64 * MiB, m);
  void *p[N_SIZED], *q[N_SIZED];
  size_t expect = 0;
  for (size_t i = 0; i < N_SIZED; i++) {
    p[i] = cllm_heap_alloc(h, k_sized[i]);
    q[i] = cllm_heap_calloc(h, 3, k_sized[i]);
    cr_assert_not_null(p[i]);
    cr_assert_not_null(q[i]);
    expect += cllm_heap_usable_size(h, p[i]) + cllm_heap_usable_size(h, q[i]);
  }
  cllm_heaps_stats_t st = stats_of(h);
  cr_assert_eq(st.node[0].bytes_in_use, expect);
  for (size_t i = 0; i < N_SIZED; i++) {
    cllm_heap_free_sized(h, p[i], k_sized[i]);
    cllm_heap_free_sized(h, q[i], 3 * k_sized[i]); /* calloc: n x size */
  }
  st = stats_of(h);
  cr_assert_eq(st.node[0].bytes_in_use, 0);
  cr_assert_eq(st.node[0].frees, st.node[0].allocations);
  cr_assert_eq(st.foreign_frees, 0);
  cr_assert_eq(cllm_heaps_check(h), CLLM_OK);
  cr_assert_eq(cllm_heap_thread_flush(h), CLLM_OK);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_HEAP), 0, "left %zu", cllm_monitor_used(m, CLLM_CAT_HEAP));
  cllm_heaps_destroy(h);
  cllm_monitor_destroy(m);
}

Test(heap, free_sized_accepts_any_size_up_to_usable) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_heaps_t *h = new_heaps(64 * MiB, m);
  for (size_t n = 1; n <= 140000; n = n < 4096 ? n + 7 : n + n / 5) {
    void *a = cllm_heap_alloc(h, n), *b = cllm_heap_alloc(h, n);
    cr_assert_not_null(a);
    cr_assert_not_null(b);
    size_t ua = cllm_heap_usable_size(h, a);
    cr_assert_geq(ua, n);
    cllm_heap_free_sized(h, a, ua);              /* the usable size */
    cllm_heap_free_sized(h, b, n + (ua - n) / 2); /* anything in between */
  }
  cllm_heaps_stats_t st = stats_of(h);
  cr_assert_eq(st.node[0].bytes_in_use, 0);
  cr_assert_eq(cllm_heaps_check(h), CLLM_OK);
  cr_assert_eq(cllm_heap_thread_flush(h), CLLM_OK);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_HEAP), 0);
  cllm_heaps_destroy(h);
  cllm_monitor_destroy(m);
}

Test(heap, free_sized_bad_input_is_ignored_like_free) {
  quiet();
  cllm_heaps_t *h = new_heaps(32 * MiB, NULL);
  cllm_heaps_t *h2 = new_heaps(64 * MiB, NULL);
  void *libc = malloc(64);
  void *other = cllm_heap_alloc(h2, 64);
  void *mine = cllm_heap_alloc(h, 64);
  char stack[32];
  cllm_heap_free_sized(h, NULL, 0); /* no-ops, not foreign */
  cllm_heap_free_sized(h, NULL, 64);
  cr_assert_eq(g_warnings, 0);
  cllm_heap_free_sized(h, libc, 64);
  cllm_heap_free_sized(h, other, 64);
  cllm_heap_free_sized(h, stack, sizeof stack);
  cllm_heap_free_sized(h, (char *)mine + 1, 63); /* misaligned: not a block start */
  cllm_heaps_stats_t st = stats_of(h);
  cr_assert_eq(st.foreign_frees, 4);
  cr_assert_eq(g_warnings, 4);
  cr_assert(strstr(g_last_msg, "not from these heaps") != NULL, "%s", g_last_msg);
  cllm_heap_free_sized(NULL, mine, 64); /* NULL heaps object: ignored with a warning */
  cr_assert_eq(g_warnings, 5);
  cr_assert(strstr(g_last_msg, "NULL heaps object") != NULL, "%s", g_last_msg);
  st = stats_of(h);
  cr_assert_eq(st.foreign_frees, 4);
  cr_assert_eq(st.node[0].frees, 0);
  cr_assert_eq(st.node[0].bytes_in_use, cllm_heap_usable_size(h, mine)); /* still live */
  memset(mine, 1, 64);
  cllm_heap_free_sized(h, mine, 64);
  cr_assert_eq(stats_of(h).node[0].bytes_in_use, 0);
  cr_assert_eq(cllm_heaps_check(h), CLLM_OK);
  memset(libc, 1, 64);
  memset(other, 1, 64);
  free(libc);
  cllm_heap_free_sized(h2, other, 64);
  cr_assert_eq(stats_of(h2).node[0].bytes_in_use, 0);
  cllm_heaps_destroy(h2);
  cllm_heaps_destroy(h);
}

static int free_sized_wrong_size(void *arg) {
  (void)arg;
  cllm_heaps_t *h = NULL;
  if (cllm_heaps_create(NULL, &h) != CLLM_OK) _exit(3);
  void *p = cllm_heap_alloc(h, 100);
  if (p == NULL) _exit(4);
  cllm_heap_free_sized(h, p, 5000); /* a 112-byte block: debug assertion */
  return 0;
}

Test(heap, free_sized_wrong_size_aborts_in_debug) {
  if (CLLM_DEBUG < 1) cr_skip_test("CLLM_DEBUG == 0: the check is compiled out");
  char err[4096];
  int status = run_child(free_sized_wrong_size, NULL, err, sizeof err);
  cr_assert_neq(status, -1, "fork or waitpid failed");
  cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT, "child status %#x:\n%s", status, err);
  cr_assert(strstr(err, "cllm_heap_free_sized") != NULL, "%s", err);
}

/* ---- threads ---------------------------------------------------------------------- */

static void *alloc_and_exit(void *arg) {
  xfer_t *x = arg;
  for (int i = 0; i < x->n; i++) {
    x->size[i] = 16 + (size_t)i * 97;
    x->blk[i] = cllm_heap_alloc(x->h, x->size[i]);
    if (x->blk[i] != NULL) fill(x->blk[i], x->size[i], (unsigned)i);
  }
  return NULL;
}

static void *free_all(void *arg) {
  xfer_t *x = arg;
  for (int i = 0; i < x->n; i++) {
    if (!verify(x->blk[i], x->size[i], (unsigned)i)) return (void *)1;
    cllm_heap_free(x->h, x->blk[i]);
  }
  return NULL;
}

static void *free_all_sized(void *arg) {
  xfer_t *x = arg;
  for (int i = 0; i < x->n; i++) {
    if (!verify(x->blk[i], x->size[i], (unsigned)i)) return (void *)1;
    cllm_heap_free_sized(x->h, x->blk[i], x->size[i]);
  }
  return NULL;
}

Test(heap, cross_thread_free) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_heaps_t *h = new_heaps(128 * MiB, m);
  xfer_t x = {.h = h, .n = 200};
  alloc_and_exit(&x); /* main allocates */
  for (int i = 0; i < x.n; i++) cr_assert_not_null(x.blk[i]);
  pthread_t t;
  void *rv = (void *)2;
  cr_assert_eq(pthread_create(&t, NULL, free_all, &x), 0); /* another thread frees */
  pthread_join(t, &rv);
  cr_assert_null(rv);
  cllm_heaps_stats_t st = stats_of(h);
  cr_assert_eq(st.node[0].allocations, 200);
  cr_assert_eq(st.node[0].frees, 200);
  cr_assert_eq(st.node[0].bytes_in_use, 0);
  cr_assert_eq(st.threads, 1); /* the freeing thread never had a mimalloc heap */
  cr_assert_eq(cllm_heap_thread_flush(h), CLLM_OK);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_HEAP), 0, "left %zu", cllm_monitor_used(m, CLLM_CAT_HEAP));
  cllm_heaps_destroy(h);
  cllm_monitor_destroy(m);
}

Test(heap, cross_thread_free_sized) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_heaps_t *h = new_heaps(128 * MiB, m);
  xfer_t x = {.h = h, .n = 256};
  pthread_t t;
  cr_assert_eq(pthread_create(&t, NULL, alloc_and_exit, &x), 0); /* another thread allocates */
  pthread_join(t, NULL);
  void *rv = (void *)2;
  rv = free_all_sized(&x); /* main frees, sized */
  cr_assert_null(rv);
  cllm_heaps_stats_t st = stats_of(h);
  cr_assert_eq(st.node[0].allocations, 256);
  cr_assert_eq(st.node[0].frees, 256);
  cr_assert_eq(st.node[0].bytes_in_use, 0);
  cr_assert_eq(cllm_heap_thread_flush(h), CLLM_OK);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_HEAP), 0, "left %zu", cllm_monitor_used(m, CLLM_CAT_HEAP));
  cllm_heaps_destroy(h);
  cllm_monitor_destroy(m);
}

/* A thread allocates and exits; its blocks stay valid and another thread frees them
 * later. Many such threads in turn must not exhaust a small region (mimalloc
 * reclaims the exited threads' segments) nor leave credit in the monitor. */
Test(heap, thread_exit_leaves_nothing_dangling) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_heaps_t *h = new_heaps(64 * MiB, m);
  enum { ROUNDS = 12 };
  static xfer_t x[ROUNDS];
  for (int r = 0; r < ROUNDS; r++) {
    x[r].h = h;
    x[r].n = 100;
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, alloc_and_exit, &x[r]), 0);
    pthread_join(t, NULL);
    for (int i = 0; i < x[r].n; i++) cr_assert_not_null(x[r].blk[i], "round %d block %d", r, i);
    cllm_heaps_stats_t st = stats_of(h);
    cr_assert_eq(st.threads, 0, "an exited thread still counted");
    if (r % 2 == 1) { /* free the previous round's blocks from this thread, later */
      cr_assert_null(free_all(&x[r - 1]));
      cr_assert_null(free_all(&x[r]));
    }
  }
  cllm_heaps_stats_t st = stats_of(h);
  cr_assert_eq(st.node[0].allocations, ROUNDS * 100);
  cr_assert_eq(st.node[0].frees, ROUNDS * 100);
  cr_assert_eq(st.node[0].bytes_in_use, 0);
  cr_assert_eq(cllm_heaps_check(h), CLLM_OK);
  cr_assert_eq(cllm_heap_thread_flush(h), CLLM_OK);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_HEAP), 0);
  cllm_heaps_destroy(h);
  cllm_monitor_destroy(m);
}

Test(heap, destroy_with_live_thread_then_reuse_region) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_heaps_t *h = new_heaps(64 * MiB, m);
  const void *start = stats_of(h).node[0].region_start;
  parked_t p;
  pthread_t t = park_start(&p, h);
  cr_assert_not_null(p.blk);
  void *mine = cllm_heap_alloc(h, 1000);
  cr_assert_not_null(mine);
  cllm_heaps_destroy(h); /* blocks still live: all invalid now */
  /* Destroy returned every thread's credit and the bytes of the dropped blocks. */
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_HEAP), 0);
  /* A new heaps object of the same shape reuses the pooled region. */
  cllm_heaps_t *h2 = new_heaps(64 * MiB, m);
  cr_assert_eq(stats_of(h2).node[0].region_start, start);
  void *q = cllm_heap_alloc(h2, 1000);
  cr_assert_not_null(q);
  park_end(&p, t); /* the parked thread exits after its heaps object died */
  cllm_heap_free(h2, q);
  cr_assert_eq(cllm_heaps_check(h2), CLLM_OK);
  cllm_heaps_destroy(h2);
  cllm_monitor_destroy(m);
}

Test(heap, create_destroy_many_times_reuses_arenas) {
  const void *start = NULL;
  for (int i = 0; i < 100; i++) { /* more than mimalloc's 64 arenas */
    cllm_heaps_t *h = new_heaps(32 * MiB, NULL);
    const void *s = stats_of(h).node[0].region_start;
    if (i == 0) start = s;
    cr_assert_eq(s, start, "round %d got a new region", i);
    void *p = cllm_heap_alloc(h, 1 << 16);
    cr_assert_not_null(p, "round %d", i);
    if (i % 2) cllm_heap_free(h, p); /* the rest is dropped by destroy */
    cllm_heaps_destroy(h);
  }
  /* Two objects alive at once get two regions. */
  cllm_heaps_t *a = new_heaps(32 * MiB, NULL), *b = new_heaps(32 * MiB, NULL);
  cr_assert_neq(stats_of(a).node[0].region_start, stats_of(b).node[0].region_start);
  cllm_heaps_destroy(a);
  cllm_heaps_destroy(b);
}
