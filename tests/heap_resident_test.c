/* Criterion tests: the heaps' resident bytes, read back from the kernel, against
 * their HEAP charge and the bound documented in include/cllm/heap.h ("Residency"),
 * and the footprint calls. Each Test runs in its own process (fresh region pool). */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cllm/heap.h>
#include <cllm/monitor.h>

#include "support/on_node0.h"

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)

typedef struct world {
  cllm_monitor_t *m;
  cllm_heaps_t *h;
  bool thp;
} world_t;

static world_t world(bool thp, bool keep_pages) {
  world_t w = {.thp = thp};
  cllm_monitor_config_t mc = cllm_monitor_config_default();
  cr_assert_eq(cllm_monitor_create(&mc, &w.m), CLLM_OK);
  cllm_heaps_config_t c = cllm_heaps_config_default();
  c.monitor = w.m;
  c.bytes_per_node = 512 * MiB;
  c.transparent_huge_pages = thp;
  c.keep_pages = keep_pages;
  cr_assert_eq(cllm_heaps_create(&c, &w.h), CLLM_OK);
  return w;
}

static void world_end(world_t *w) {
  cllm_heaps_destroy(w->h);
  cllm_monitor_destroy(w->m);
}

/* On several nodes the figures are node 0's: the test and its threads run there. */
TestSuite(heap_resident, .init = cllm_test_on_node0);

static cllm_heaps_stats_t stats(const world_t *w) {
  cllm_heaps_stats_t s;
  memset(&s, 0, sizeof s);
  s.struct_size = sizeof s;
  cr_assert_eq(cllm_heaps_stats(w->h, &s), CLLM_OK);
  return s;
}

/* Resident bytes of the heaps' regions, read here with mincore, independently of
 * the library's own reading. */
static size_t resident_mincore(const cllm_heaps_stats_t *s) {
  size_t ps = (size_t)sysconf(_SC_PAGESIZE), total = 0;
  static unsigned char vec[(512 * MiB) / 4096];
  for (int i = 0; i < s->nodes; i++) {
    if (s->node[i].region_bytes == 0) continue;
    size_t n = s->node[i].region_bytes / ps;
    cr_assert_leq(n, sizeof vec);
    cr_assert_eq(mincore((void *)s->node[i].region_start, n * ps, vec), 0);
    for (size_t k = 0; k < n; k++) total += vec[k] & 1;
  }
  return total * ps;
}

/* The bound of heap.h: B + B / 2 + U x (C + T), B the peak HEAP charge. */
static size_t documented_bound(const world_t *w, const cllm_heaps_stats_t *s, size_t heaps_threads) {
  size_t b = cllm_monitor_peak(w->m, CLLM_CAT_HEAP);
  size_t t = heaps_threads * (size_t)s->nodes;
  return b + b / 2 + CLLM_HEAPS_RESIDENT_UNIT(w->thp) * ((size_t)s->kept_blocks + t);
}

static void check_bound(const world_t *w, size_t threads, const char *what) {
  cllm_heaps_stats_t s = stats(w);
  size_t kernel = resident_mincore(&s);
  size_t bound = documented_bound(w, &s, threads);
  /* the library reports what the kernel says (between the two readings pages can
   * only become resident: khugepaged may collapse a huge page) */
  cr_assert_gt(s.resident_bytes, 0, "%s", what);
  cr_assert_leq(s.resident_bytes, kernel, "%s: stats %zu, mincore %zu", what, s.resident_bytes, kernel);
  cr_assert_leq(kernel, bound, "%s: resident %zu > bound %zu (in use %zu, kept %llu)", what, kernel, bound,
                s.bytes_in_use, (unsigned long long)s.kept_blocks);
  cr_assert_leq(s.bytes_in_use, cllm_monitor_used(w->m, CLLM_CAT_HEAP), "%s", what);
}

/* Allocate `n` blocks of sizes from `lo` growing by `step` (wrapping at `hi`),
 * touching every byte, as a runtime writes what it allocates. */
static void fill(cllm_heaps_t *h, void **p, size_t n, size_t lo, size_t hi, size_t step) {
  size_t sz = lo;
  for (size_t i = 0; i < n; i++) {
    p[i] = cllm_heap_alloc(h, sz);
    cr_assert_not_null(p[i], "size %zu", sz);
    memset(p[i], 0x5a, sz);
    sz = sz + step > hi ? lo : sz + step;
  }
}

static void drain(cllm_heaps_t *h, void **p, size_t n) {
  for (size_t i = 0; i < n; i++) cllm_heap_free(h, p[i]);
}

#define N_BLOCKS 20000
static void *g_blocks[N_BLOCKS];

static void one_thread_mixes(bool thp, bool keep) {
  world_t w = world(thp, keep);
  cllm_heaps_stats_t s0 = stats(&w);
  cr_assert_eq(s0.resident_bytes, 0, "a new region is not resident");
  if (cllm_heaps_mode(w.h) == CLLM_HEAP_MODE_PLAIN) {
    world_end(&w);
    cr_skip_test("regions unavailable here (PLAIN mode)");
  }
  void *one = cllm_heap_alloc(w.h, 16);
  cr_assert_not_null(one);
  check_bound(&w, 1, "one block");
  fill(w.h, g_blocks, 4000, 16, 1024, 16); /* small classes */
  check_bound(&w, 1, "small");
  fill(w.h, g_blocks + 4000, 1000, 1024, 128 * KiB, 1008); /* medium classes */
  check_bound(&w, 1, "small + medium");
  fill(w.h, g_blocks + 5000, 40, 129 * KiB, 3 * MiB, 77 * KiB); /* large blocks */
  check_bound(&w, 1, "small + medium + large");
  /* Freed pages stay resident (a high-water mark), and are reused: repeating the
   * same work keeps within the bound of the same peak charge. */
  size_t high = stats(&w).resident_bytes;
  for (int round = 0; round < 6; round++) {
    drain(w.h, g_blocks, 5040);
    cr_assert_geq(stats(&w).resident_bytes, high, "freeing returns nothing to the kernel");
    fill(w.h, g_blocks, 4000, 16, 1024, 16);
    fill(w.h, g_blocks + 4000, 1000, 1024, 128 * KiB, 1008);
    fill(w.h, g_blocks + 5000, 40, 129 * KiB, 3 * MiB, 77 * KiB);
    check_bound(&w, 1, "the same work again");
    high = stats(&w).resident_bytes;
  }
  drain(w.h, g_blocks, 5040);
  cllm_heap_free(w.h, one);
  world_end(&w);
}

Test(heap_resident, one_thread_thp) { one_thread_mixes(true, true); }
Test(heap_resident, one_thread_no_thp) { one_thread_mixes(false, true); }
Test(heap_resident, one_thread_no_keep_pages) { one_thread_mixes(true, false); }

typedef struct worker_arg {
  cllm_heaps_t *h;
  pthread_barrier_t *bar;
  size_t lo, hi, step;
  void *blocks[2000];
} worker_arg_t;

static void *worker(void *arg) {
  worker_arg_t *a = arg;
  fill(a->h, a->blocks, 2000, a->lo, a->hi, a->step);
  pthread_barrier_wait(a->bar); /* allocated: main checks */
  pthread_barrier_wait(a->bar);
  drain(a->h, a->blocks, 2000);
  return NULL;
}

Test(heap_resident, four_threads) {
  world_t w = world(true, true);
  if (cllm_heaps_mode(w.h) == CLLM_HEAP_MODE_PLAIN) {
    world_end(&w);
    cr_skip_test("regions unavailable here (PLAIN mode)");
  }
  enum { T = 4 };
  pthread_barrier_t bar;
  pthread_barrier_init(&bar, NULL, T + 1);
  static worker_arg_t args[T];
  pthread_t th[T];
  for (int i = 0; i < T; i++) {
    args[i] = (worker_arg_t){.h = w.h, .bar = &bar, .lo = 16 << i, .hi = 64 * KiB, .step = 48 + 16 * (size_t)i};
    cr_assert_eq(pthread_create(&th[i], NULL, worker, &args[i]), 0);
  }
  pthread_barrier_wait(&bar);
  check_bound(&w, T, "four threads");
  pthread_barrier_wait(&bar);
  for (int i = 0; i < T; i++) pthread_join(th[i], NULL);
  pthread_barrier_destroy(&bar);
  world_end(&w);
}

Test(heap_resident, footprints) {
  cr_assert_eq(cllm_heaps_footprint(NULL), 0);
  cllm_heaps_config_t c = cllm_heaps_config_default();
  c.batch_bytes = 96 * KiB;
  cr_assert_eq(cllm_heaps_thread_footprint(&c), 192 * KiB);
  cr_assert_eq(cllm_heaps_thread_footprint(NULL), 2 * CLLM_MONITOR_BATCH_DEFAULT_BYTES);
  c.struct_size = 0;
  cr_assert_eq(cllm_heaps_thread_footprint(&c), 0, "a config create refuses");

  world_t w = world(true, true);
  cr_assert_eq(cllm_monitor_used(w.m, CLLM_CAT_HEAP), cllm_heaps_footprint(NULL), "create charges nothing");
  /* Each allocating thread holds at most its thread footprint beyond its blocks. */
  void *p[64];
  for (int i = 0; i < 64; i++) {
    p[i] = cllm_heap_alloc(w.h, (size_t)100 << (i % 10));
    cr_assert_not_null(p[i]);
    cllm_heaps_stats_t s = stats(&w);
    size_t used = cllm_monitor_used(w.m, CLLM_CAT_HEAP);
    cr_assert_leq(used, s.bytes_in_use + cllm_heaps_thread_footprint(NULL), "used %zu, in use %zu", used,
                  s.bytes_in_use);
  }
  for (int i = 0; i < 64; i++) cllm_heap_free(w.h, p[i]);
  world_end(&w);
}
