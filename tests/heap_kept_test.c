/* Criterion tests for the per-thread NUMA heaps (include/cllm/heap.h): kept pages
 * (config keep_pages) and the per-region THP figure. Each Test runs in its own
 * process (a fresh mimalloc and region pool). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* sched_getcpu, CPU_* macros, syscall */
#endif
#include "support/heap_test_util.h"

TestSuite(heap, .init = cllm_test_on_node0); /* bound to node 0: see on_node0.h */

/* ---- kept pages (config keep_pages) ------------------------------------------------ */

/* Distinct size classes of the sizes s[0..n) that kept pages cover (up to 128 KiB). */
static uint64_t kept_classes_of(const size_t *s, int n) {
  size_t cls[64];
  int k = 0;
  for (int i = 0; i < n; i++) {
    if (s[i] == 0 || s[i] > ((size_t)128 << 10)) continue;
    size_t c = mi_good_size((s[i] + 15) & ~(size_t)15);
    bool seen = false;
    for (int j = 0; j < k; j++) seen = seen || cls[j] == c;
    if (!seen) cls[k++] = c;
  }
  return (uint64_t)k;
}

static cllm_heaps_t *new_heaps_keep(cllm_monitor_t *m, bool keep) {
  cllm_heaps_config_t cfg = cllm_heaps_config_default();
  cr_assert(cfg.keep_pages, "keep_pages is on by default");
  cfg.bytes_per_node = 64 * MiB;
  cfg.monitor = m;
  cfg.keep_pages = keep;
  cllm_heaps_t *h = NULL;
  cr_assert_eq(cllm_heaps_create(&cfg, &h), CLLM_OK);
  return h;
}

/* One held block per class the thread allocated (alloc, sized and unsized frees, calloc,
 * a ring of few live blocks), none above 128 KiB, none with keep_pages off; held blocks
 * are neither charged nor counted. */
Test(heap, kept_pages_hold_one_block_per_class) {
  static const size_t sizes[] = {24, 32, 100, 112, 5000, 5001, 70000, 200000, 1};
  const int n = (int)(sizeof sizes / sizeof sizes[0]);
  for (int keep = 0; keep <= 1; keep++) {
    cllm_monitor_t *m = mk_monitor(0);
    cllm_heaps_t *h = new_heaps_keep(m, keep != 0);
    for (int round = 0; round < 3; round++) {
      for (int i = 0; i < n; i++) {
        void *p = round == 2 ? cllm_heap_calloc(h, 1, sizes[i]) : cllm_heap_alloc(h, sizes[i]);
        cr_assert_not_null(p, "size %zu", sizes[i]);
        fill(p, sizes[i], (unsigned)i);
        if (round == 1) cllm_heap_free_sized(h, p, sizes[i]);
        else cllm_heap_free(h, p);
      }
      cllm_heaps_stats_t st = stats_of(h);
      cr_assert_eq(st.kept_blocks, keep ? kept_classes_of(sizes, n) : 0, "keep %d round %d: %llu",
                   keep, round, (unsigned long long)st.kept_blocks);
      cr_assert_eq(st.node[0].allocations, (uint64_t)(round + 1) * (uint64_t)n);
      cr_assert_eq(st.node[0].bytes_in_use, 0);
    }
    /* few live blocks of mixed sizes: the pattern kept pages are for */
    void *ring[16] = {0};
    size_t rs[16] = {0};
    unsigned long long x = 7;
    for (int i = 0; i < 4000; i++) {
      int k = i & 15;
      if (ring[k] != NULL) {
        cr_assert_eq(*(unsigned char *)ring[k], (unsigned char)(rs[k] * 31u), "ring block %d", k);
        cllm_heap_free(h, ring[k]);
      }
      x = x * 6364136223846793005ull + 1442695040888963407ull;
      int e = 4 + (int)((x >> 33) % 13);
      rs[k] = ((size_t)1 << e) + (size_t)((x >> 40) % ((size_t)1 << e));
      ring[k] = cllm_heap_alloc(h, rs[k]);
      cr_assert_not_null(ring[k]);
      *(unsigned char *)ring[k] = (unsigned char)(rs[k] * 31u);
    }
    for (int k = 0; k < 16; k++) cllm_heap_free(h, ring[k]);
    cllm_heaps_stats_t st = stats_of(h);
    if (keep) cr_assert_gt(st.kept_blocks, kept_classes_of(sizes, n));
    else cr_assert_eq(st.kept_blocks, 0);
    cr_assert_eq(cllm_heaps_check(h), CLLM_OK);
    cr_assert_eq(cllm_heap_thread_flush(h), CLLM_OK);
    cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_HEAP), 0, "held blocks are not charged");
    cllm_heaps_destroy(h);
    cllm_monitor_destroy(m);
  }
}

typedef struct keeper_thread {
  cllm_heaps_t *h;
  uint64_t kept_inside;
} keeper_thread_t;

static void *alloc_classes_and_exit(void *arg) {
  keeper_thread_t *k = arg;
  for (size_t s = 16; s <= 4096; s *= 2) cllm_heap_free(k->h, cllm_heap_alloc(k->h, s));
  k->kept_inside = stats_of(k->h).kept_blocks;
  return NULL;
}

/* A thread's held blocks go with it: counted while it lives, released at its exit; and
 * destroy releases those of a thread that is still alive (park, below, holds one). */
Test(heap, kept_pages_go_with_their_thread) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_heaps_t *h = new_heaps_keep(m, true);
  void *mine = cllm_heap_alloc(h, 48);
  cr_assert_eq(stats_of(h).kept_blocks, 1);
  for (int r = 0; r < 8; r++) {
    keeper_thread_t k = {h, 0};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, alloc_classes_and_exit, &k), 0);
    pthread_join(t, NULL);
    cr_assert_eq(k.kept_inside, 1 + 9, "round %d: %llu", r, (unsigned long long)k.kept_inside);
    cr_assert_eq(stats_of(h).kept_blocks, 1, "round %d: the exited thread's blocks are still held", r);
  }
  cr_assert_eq(cllm_heaps_check(h), CLLM_OK);
  parked_t p;
  pthread_t t = park_start(&p, h);
  cr_assert_eq(stats_of(h).kept_blocks, 2);
  cllm_heap_free(h, mine);
  cllm_heaps_destroy(h); /* frees the parked thread's held block from here */
  park_end(&p, t);
  cllm_monitor_destroy(m);
}

/* The held block cannot be had (mimalloc fails): the caller's block is still served, the
 * class is served all the same, and a later general-path call holds one. */
Test(heap, kept_block_failure_is_absorbed) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_heaps_t *h = new_heaps_keep(m, true);
  void *a = cllm_heap_alloc(h, 64); /* the thread's state and heap exist from here */
  cr_assert_eq(stats_of(h).kept_blocks, 1);
  cllm_fault_arm(CLLM_FAULT_MI_ALLOC, 2); /* 1: the caller's block, 2: the held one */
  void *p = cllm_heap_alloc(h, 1000);
  cr_assert_eq(cllm_fault_injected(), 1);
  cllm_fault_reset();
  cr_assert_not_null(p);
  cr_assert_eq(stats_of(h).kept_blocks, 1);
  cllm_heap_free(h, p);
  p = cllm_heap_alloc(h, 1000); /* served by the fast path: nothing held yet */
  cr_assert_not_null(p);
  cr_assert_eq(stats_of(h).kept_blocks, 1);
  cllm_heap_free(h, p);
  p = cllm_heap_calloc(h, 10, 100); /* the general path: holds one now */
  cr_assert_not_null(p);
  cr_assert_eq(stats_of(h).kept_blocks, 2);
  cllm_heap_free(h, p);
  cr_assert_eq(cllm_heap_thread_flush(h), CLLM_OK); /* gives the held blocks back too */
  cr_assert_eq(stats_of(h).kept_blocks, 0);
  p = cllm_heap_alloc(h, 1000); /* and takes them again as it allocates */
  cr_assert_not_null(p);
  cr_assert_eq(stats_of(h).kept_blocks, 1);
  cllm_heap_free(h, p);
  cllm_heap_free(h, a);
  cllm_heaps_stats_t st = stats_of(h);
  cr_assert_eq(st.node[0].allocations, 5);
  cr_assert_eq(st.node[0].failures, 0);
  cr_assert_eq(cllm_heap_thread_flush(h), CLLM_OK);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_HEAP), 0);
  cllm_heaps_destroy(h);
  cllm_monitor_destroy(m);
}

/* Each region's THP figure is its own: two regions mapped one after the other are two
 * mappings for the kernel (smaps counts huge pages per mapping), so memory touched in
 * one never shows in the other's figure. */
Test(heap, thp_figure_is_per_region) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_heaps_t *a = new_heaps(64 * MiB, m), *b = new_heaps(64 * MiB, m);
  cr_assert_neq(stats_of(a).node[0].region_start, stats_of(b).node[0].region_start);
  char *p = cllm_heap_alloc(a, 4 * MiB);
  cr_assert_not_null(p);
  memset(p, 1, 4 * MiB);
  size_t ha = stats_of(a).node[0].huge_page_bytes, hb = stats_of(b).node[0].huge_page_bytes;
  cr_assert_eq(hb, 0, "b's untouched region reports %zu THP bytes (a: %zu)", hb, ha);
  if (ha == 0) cr_log_info("no transparent huge pages here: only b's figure was checked");
  cllm_heap_free(a, p);
  cllm_heaps_destroy(b);
  cllm_heaps_destroy(a);
  cllm_monitor_destroy(m);
}
