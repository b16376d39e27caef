/* heap_bench: the per-thread NUMA heaps against plain mimalloc and glibc malloc.
 *
 * Sizes: a fixed mix from 16 B to 64 KiB (70% 16..256 B, 20% 256 B..4 KiB,
 * 10% 4..64 KiB), drawn from a seeded table. Every block gets one byte written.
 *
 * case same_thread:  each thread keeps a ring of 256 live blocks; one op = free the
 *                    oldest block and allocate a new one (so 1 alloc + 1 free).
 * case cross_thread: threads in a ring (2, 4, ...): each allocates blocks and hands
 *                    them through a single-producer/single-consumer queue to the
 *                    next thread, which frees them; one op = 1 alloc here + 1 free of
 *                    a block another thread allocated.
 * case sparse:       as same_thread with a ring of only 16 live blocks, sizes
 *                    log-uniform from 16 B to 64 KiB (2^e + rand(2^e), e = 4..15):
 *                    few blocks of many size classes, so a class's only page often
 *                    empties (what config keep_pages is for: see heap.h).
 *
 * impl: cllm_heap (cllm_heap_alloc/free, monitor accounting included), cllm_heap_nokeep
 * (the same on a heaps object created with keep_pages off), cllm_heap_sized
 * (same_thread only: the same, freeing with cllm_heap_free_sized and the size the
 * worker asked for, which it keeps next to each pointer as a user of the sized call
 * would), mimalloc
 * (mi_malloc/mi_free on the default heap), mi_arena_heap (what cllm_heap is built
 * on, see below), glibc (glibc's own malloc/free through bench_glibc_*: mimalloc's
 * library replaces malloc and the __libc_* aliases in this process), and the floor
 * rows mi_arena_pure, floor_region, floor_charge, floor_counted (same_thread only,
 * but mi_arena_pure in both cases): minimal wrappers that add cllm_heap's duties one
 * at a time, so the cost of each duty can be read off (see "floor rows" below).
 * ns_per_op: wall time x threads / ops (time per alloc+free on one thread). Extras:
 * mops_total (all threads), vs_mimalloc (ns_per_op_median / mimalloc's, same run),
 * faults_per_op (minor page faults over the timed repetitions).
 * Repetitions interleave the implementations so background load hits them alike.
 * Every repetition starts fresh threads (so each gets a new mimalloc heap; the
 * exited threads' segments are reclaimed). --no-thp: regions without MADV_HUGEPAGE.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <cllm/heap.h>
#include <cllm/monitor.h>
#include <mimalloc.h>

#include "harness.h"


#define NSIZES 4096
#define RING 256
#define QCAP 1024

typedef enum {
  IMPL_CLLM, IMPL_CLLM_SIZED, IMPL_MI, IMPL_MI_ARENA, IMPL_GLIBC,
  IMPL_MI_ARENA_PURE, IMPL_FLOOR_REGION, IMPL_FLOOR_CHARGE, IMPL_FLOOR_COUNTED, IMPL_CLLM_NOKEEP,
  IMPL_COUNT
} impl_t;
static const char *const impl_name[IMPL_COUNT] = {
    "cllm_heap",     "cllm_heap_sized", "mimalloc",     "mi_arena_heap", "glibc",
    "mi_arena_pure", "floor_region",    "floor_charge", "floor_counted", "cllm_heap_nokeep"};

typedef enum { CASE_SAME, CASE_CROSS, CASE_SPARSE, CASE_COUNT } case_t;
static const char *const case_name[CASE_COUNT] = {"same_thread", "cross_thread", "sparse"};
#define SPARSE_RING 16

/* mi_arena_heap: what cllm_heap is built on, without it: a per-thread mimalloc heap
 * in an exclusive arena of our own (32 MiB aligned region), plus mi_usable_size on
 * both sides (the accounting's unavoidable part). The gap cllm_heap - mi_arena_heap
 * is the cost of the cllm layer (thread state, monitor batch, counters, checks). */
static mi_arena_id_t g_arena;
static bool g_arena_ok;
static uintptr_t g_arena_start;
#define ARENA_BYTES ((size_t)1 << 30)
static __thread mi_heap_t *t_arena_heap;
static volatile size_t g_usable_sink;

/* The floor rows: what any heap with cllm_heap's duties must pay at least, measured
 * as minimal inline wrappers over the same exclusive-arena mimalloc heap (no call
 * layer, no TLS cache lookup, the state in the thread's own TLS block), each adding
 * one duty to the one before:
 *   mi_arena_pure   mi_heap_malloc / mi_free on a heap in the exclusive arena
 *                   (NUMA placement's only cost: the arena);
 *   floor_region    + a free checks that p lies in the region, 16-byte aligned (a
 *                   foreign pointer must not reach mi_free); sizes rounded to 16 B;
 *   floor_charge    + every block charged to a monitor (HEAP) at its size class
 *                   through a per-thread batch (cllm_monitor_batch_reserve/release,
 *                   the class from a table; sized frees, as cllm_heap_sized);
 *   floor_counted   + the per-thread allocation, free and byte counters that
 *                   per-node stats need.
 * floor_counted against cllm_heap_sized is what cllm_heap's own code costs beyond
 * those duties (the call, the TLS cache lookup, the checks of its general paths). */
typedef struct floor_state {
  mi_heap_t *mh;
  cllm_monitor_batch_t batch;
  uint64_t allocs, frees, bytes_alloc, bytes_freed, errors;
} floor_state_t;
static __thread floor_state_t t_floor;
static cllm_monitor_t *g_floor_mon;
static uint16_t g_floor_class16[(64 << 10) / 16 + 1]; /* mi_good_size / 16 */
static volatile uint64_t g_floor_sink;

static bool is_floor(int i) { return i >= IMPL_FLOOR_REGION && i <= IMPL_FLOOR_COUNTED; }

/* Rows each case measures (cllm_heap_sized: not cross_thread; mi_arena_heap and the
 * floor rows: same_thread only). */
static bool impl_in_case(int i, case_t c) {
  if (!g_arena_ok && (i == IMPL_MI_ARENA || i == IMPL_MI_ARENA_PURE || is_floor(i))) return false;
  if (!g_floor_mon && is_floor(i)) return false;
  if (c == CASE_CROSS && (i == IMPL_CLLM_SIZED || is_floor(i))) return false;
  if (c == CASE_SPARSE && (i == IMPL_MI_ARENA || is_floor(i))) return false;
  return true;
}

static bool arena_init(void) {
  size_t size = ARENA_BYTES, align = (size_t)32 << 20;
  char *m = mmap(NULL, size + align, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) return false;
  char *start = (char *)(((uintptr_t)m + align - 1) & ~(uintptr_t)(align - 1));
  g_arena_start = (uintptr_t)start;
  return mi_manage_os_memory_ex(start, size, true, false, true, -1, true, &g_arena);
}

static bool floor_init(void) {
  cllm_monitor_config_t mc = cllm_monitor_config_default();
  if (cllm_monitor_create(&mc, &g_floor_mon) != CLLM_OK) return false;
  for (size_t i = 1; i < sizeof g_floor_class16 / sizeof g_floor_class16[0]; i++)
    g_floor_class16[i] = (uint16_t)(mi_good_size(16 * i) / 16);
  return true;
}

static inline mi_heap_t *arena_heap(void) {
  mi_heap_t *h = t_arena_heap;
  if (__builtin_expect(h == NULL, 0)) h = t_arena_heap = mi_heap_new_in_arena(g_arena);
  return h;
}

static inline size_t floor_class(size_t n) { return (size_t)g_floor_class16[(n + 15) >> 4] << 4; }

static inline __attribute__((always_inline)) void *floor_alloc(impl_t impl, size_t n) {
  floor_state_t *t = &t_floor;
  if (__builtin_expect(t->mh == NULL, 0)) {
    if (cllm_monitor_batch_init(&t->batch, g_floor_mon, CLLM_CAT_HEAP, 0) != CLLM_OK) return NULL;
    if ((t->mh = mi_heap_new_in_arena(g_arena)) == NULL) return NULL;
  }
  size_t us = 0;
  if (impl >= IMPL_FLOOR_CHARGE) {
    us = floor_class(n);
    if (cllm_monitor_batch_reserve(&t->batch, us) != CLLM_OK) return NULL;
    if (impl >= IMPL_FLOOR_COUNTED) t->allocs++, t->bytes_alloc += us;
  }
  void *p = mi_heap_malloc(t->mh, (n + 15) & ~(size_t)15);
  if (__builtin_expect(p == NULL, 0) && impl >= IMPL_FLOOR_CHARGE &&
      cllm_monitor_batch_release(&t->batch, us) != CLLM_OK)
    t->errors++;
  return p;
}

static inline __attribute__((always_inline)) void floor_free(impl_t impl, void *p, size_t n) {
  floor_state_t *t = &t_floor;
  uintptr_t d = (uintptr_t)p - g_arena_start; /* misaligned: low bits rotate to the top */
  if (__builtin_expect(((d >> 4) | (d << 60)) >= ARENA_BYTES / 16, 0)) {
    t->errors++; /* not ours: never given to mi_free */
    return;
  }
  if (impl >= IMPL_FLOOR_CHARGE) {
    size_t us = floor_class(n);
    if (cllm_monitor_batch_release(&t->batch, us) != CLLM_OK) t->errors++;
    if (impl >= IMPL_FLOOR_COUNTED) t->frees++, t->bytes_freed += us;
  }
  mi_free(p);
}

/* End of a floor worker: its credit back to the monitor, its counters kept alive. */
static void floor_done(void) {
  floor_state_t *t = &t_floor;
  if (t->mh != NULL && cllm_monitor_batch_flush(&t->batch) != CLLM_OK) t->errors++;
  g_floor_sink += t->allocs + t->frees + t->bytes_alloc + t->bytes_freed;
  if (t->errors != 0) fprintf(stderr, "heap_bench: floor rows: %llu errors\n", (unsigned long long)t->errors);
  memset(t, 0, sizeof *t); /* the thread exits: mimalloc deletes its heap */
}

static inline void *arena_alloc(size_t n) {
  mi_heap_t *h = arena_heap();
  if (h == NULL) return NULL;
  void *p = n <= MI_SMALL_SIZE_MAX ? mi_heap_malloc_small(h, n) : mi_heap_malloc(h, n);
  if (p != NULL) g_usable_sink = mi_usable_size(p);
  return p;
}

static size_t g_sizes[NSIZES], g_sparse_sizes[NSIZES];
static cllm_heaps_t *g_heaps, *g_heaps_nokeep;

static void make_sizes(void) {
  unsigned long long s = 42;
  for (int i = 0; i < NSIZES; i++) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    unsigned r = (unsigned)(s >> 33);
    unsigned bucket = r % 100;
    size_t lo, hi;
    if (bucket < 70) lo = 16, hi = 256;
    else if (bucket < 90) lo = 256, hi = 4096;
    else lo = 4096, hi = 65536;
    g_sizes[i] = lo + (size_t)((r >> 8) % (unsigned)(hi - lo + 1));
  }
  for (int i = 0; i < NSIZES; i++) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    unsigned r = (unsigned)(s >> 33);
    int e = 4 + (int)(r % 12);
    g_sparse_sizes[i] = ((size_t)1 << e) + (size_t)((r >> 8) % (1u << e));
  }
}

/* One allocator call per implementation; `impl` is a constant in each loop below. */
static inline __attribute__((always_inline)) void *A(impl_t impl, size_t n) {
  switch (impl) {
  case IMPL_CLLM:
  case IMPL_CLLM_SIZED: return cllm_heap_alloc(g_heaps, n);
  case IMPL_CLLM_NOKEEP: return cllm_heap_alloc(g_heaps_nokeep, n);
  case IMPL_MI: return mi_malloc(n);
  case IMPL_MI_ARENA: return arena_alloc(n);
  case IMPL_MI_ARENA_PURE: {
    mi_heap_t *h = arena_heap();
    return h != NULL ? mi_heap_malloc(h, n) : NULL;
  }
  case IMPL_FLOOR_REGION:
  case IMPL_FLOOR_CHARGE:
  case IMPL_FLOOR_COUNTED: return floor_alloc(impl, n);
  default: return bench_glibc_malloc(n);
  }
}
/* n: the size p was allocated with (used by cllm_heap_sized only). */
static inline __attribute__((always_inline)) void F(impl_t impl, void *p, size_t n) {
  switch (impl) {
  case IMPL_CLLM: cllm_heap_free(g_heaps, p); break;
  case IMPL_CLLM_NOKEEP: cllm_heap_free(g_heaps_nokeep, p); break;
  case IMPL_CLLM_SIZED: cllm_heap_free_sized(g_heaps, p, n); break;
  case IMPL_MI: mi_free(p); break;
  case IMPL_MI_ARENA: g_usable_sink = mi_usable_size(p); mi_free(p); break;
  case IMPL_MI_ARENA_PURE: mi_free(p); break;
  case IMPL_FLOOR_REGION:
  case IMPL_FLOOR_CHARGE:
  case IMPL_FLOOR_COUNTED: floor_free(impl, p, n); break;
  default: bench_glibc_free(p); break;
  }
}

/* ---- single-producer single-consumer queue ---- */
typedef struct queue {
  _Alignas(64) _Atomic size_t head; /* consumer */
  _Alignas(64) _Atomic size_t tail; /* producer */
  _Alignas(64) void *slot[QCAP];
} queue_t;

static bool q_push(queue_t *q, void *p) {
  size_t t = atomic_load_explicit(&q->tail, memory_order_relaxed);
  if (t - atomic_load_explicit(&q->head, memory_order_acquire) >= QCAP) return false;
  q->slot[t % QCAP] = p;
  atomic_store_explicit(&q->tail, t + 1, memory_order_release);
  return true;
}
static void *q_pop(queue_t *q) {
  size_t h = atomic_load_explicit(&q->head, memory_order_relaxed);
  if (h == atomic_load_explicit(&q->tail, memory_order_acquire)) return NULL;
  void *p = q->slot[h % QCAP];
  atomic_store_explicit(&q->head, h + 1, memory_order_release);
  return p;
}

typedef struct worker {
  impl_t impl;
  int id;
  long ops;
  int ring_mask;        /* ring size - 1 (same_thread, sparse) */
  const size_t *sizes; /* NSIZES sizes to draw from */
  void *ring[RING];
  size_t ring_n[RING]; /* cllm_heap_sized: the size of each ring block */
  queue_t *in, *out;
  atomic_long *done; /* cross_thread: producers finished */
  int nthreads;
  long failures;
} worker_t;

#define SAME_THREAD_LOOP(IMPL)                                 \
  for (long i = 0; i < w->ops; i++) {                          \
    int k = (int)(i & w->ring_mask);                           \
    if (w->ring[k] != NULL) F(IMPL, w->ring[k], w->ring_n[k]); \
    size_t n = w->sizes[(i * 7 + w->id * 131) & (NSIZES - 1)]; \
    char *p = A(IMPL, n);                                      \
    if (p == NULL) { w->failures++; w->ring[k] = NULL; continue; } \
    p[0] = (char)i;                                            \
    w->ring[k] = p;                                            \
    if (IMPL == IMPL_CLLM_SIZED || is_floor(IMPL)) w->ring_n[k] = n; \
  }

static void *same_thread(void *arg) {
  worker_t *w = arg;
  switch (w->impl) {
  case IMPL_CLLM: SAME_THREAD_LOOP(IMPL_CLLM) break;
  case IMPL_CLLM_SIZED: SAME_THREAD_LOOP(IMPL_CLLM_SIZED) break;
  case IMPL_CLLM_NOKEEP: SAME_THREAD_LOOP(IMPL_CLLM_NOKEEP) break;
  case IMPL_MI: SAME_THREAD_LOOP(IMPL_MI) break;
  case IMPL_MI_ARENA: SAME_THREAD_LOOP(IMPL_MI_ARENA) break;
  case IMPL_MI_ARENA_PURE: SAME_THREAD_LOOP(IMPL_MI_ARENA_PURE) break;
  case IMPL_FLOOR_REGION: SAME_THREAD_LOOP(IMPL_FLOOR_REGION) break;
  case IMPL_FLOOR_CHARGE: SAME_THREAD_LOOP(IMPL_FLOOR_CHARGE) break;
  case IMPL_FLOOR_COUNTED: SAME_THREAD_LOOP(IMPL_FLOOR_COUNTED) break;
  default: SAME_THREAD_LOOP(IMPL_GLIBC) break;
  }
  for (int k = 0; k < RING; k++) {
    if (w->ring[k] != NULL) F(w->impl, w->ring[k], w->ring_n[k]);
    w->ring[k] = NULL;
  }
  if (is_floor(w->impl)) floor_done();
  return NULL;
}

#define CROSS_LOOP(IMPL)                                                  \
  for (long i = 0; i < w->ops; i++) {                                     \
    char *p = A(IMPL, g_sizes[(i * 7 + w->id * 131) & (NSIZES - 1)]);     \
    if (p == NULL) { w->failures++; continue; }                           \
    p[0] = (char)i;                                                       \
    while (!q_push(w->out, p)) { /* full: free what others sent us */     \
      void *q = q_pop(w->in);                                             \
      if (q != NULL) F(IMPL, q, 0);                                          \
      else sched_yield(); /* the consumer may share our core */           \
    }                                                                     \
    void *q = q_pop(w->in);                                               \
    if (q != NULL) F(IMPL, q, 0);                                            \
  }                                                                       \
  atomic_fetch_add(w->done, 1);                                           \
  for (;;) { /* drain until every producer is done and the queue is empty */ \
    void *q = q_pop(w->in);                                               \
    if (q != NULL) { F(IMPL, q, 0); continue; }                              \
    sched_yield();                                                        \
    if (atomic_load(w->done) == w->nthreads) {                            \
      while ((q = q_pop(w->in)) != NULL) F(IMPL, q, 0);                      \
      break;                                                              \
    }                                                                     \
  }

static void *cross_thread(void *arg) {
  worker_t *w = arg;
  switch (w->impl) { /* no cllm_heap_sized nor floor rows here (impl_in_case) */
  case IMPL_CLLM: CROSS_LOOP(IMPL_CLLM) break;
  case IMPL_CLLM_NOKEEP: CROSS_LOOP(IMPL_CLLM_NOKEEP) break;
  case IMPL_MI: CROSS_LOOP(IMPL_MI) break;
  case IMPL_MI_ARENA: CROSS_LOOP(IMPL_MI_ARENA) break;
  case IMPL_MI_ARENA_PURE: CROSS_LOOP(IMPL_MI_ARENA_PURE) break;
  default: CROSS_LOOP(IMPL_GLIBC) break;
  }
  return NULL;
}

/* One repetition: ns per op (per thread). */
static double run_once(case_t c, impl_t impl, int threads, long ops, long *failures) {
  bool cross = c == CASE_CROSS;
  static worker_t w[64];
  static queue_t q[64];
  void *args[64];
  atomic_long done = 0;
  for (int i = 0; i < threads; i++) {
    memset(&w[i], 0, sizeof w[i]);
    w[i].impl = impl;
    w[i].id = i;
    w[i].ops = ops;
    w[i].nthreads = threads;
    w[i].done = &done;
    w[i].ring_mask = c == CASE_SPARSE ? SPARSE_RING - 1 : RING - 1;
    w[i].sizes = c == CASE_SPARSE ? g_sparse_sizes : g_sizes;
    atomic_store(&q[i].head, 0);
    atomic_store(&q[i].tail, 0);
    w[i].out = &q[i];
    w[i].in = &q[(i + threads - 1) % threads];
    args[i] = &w[i];
  }
  double ns = bench_run_threads(threads, cross ? cross_thread : same_thread, args);
  for (int i = 0; i < threads; i++) *failures += w[i].failures;
  return ns * threads / ((double)ops * threads);
}

int main(int argc, char **argv) {
  bench_opts_t o = bench_parse(argc, argv, "heap_bench", "--no-thp");
  bool thp = true;
  for (int i = 1; i < argc; i++)
    if (strcmp(argv[i], "--no-thp") == 0) thp = false;
  make_sizes();
  cllm_monitor_t *mon = NULL;
  cllm_monitor_config_t mc = cllm_monitor_config_default();
  if (cllm_monitor_create(&mc, &mon) != CLLM_OK) return 1;
  cllm_heaps_config_t hc = cllm_heaps_config_default();
  hc.monitor = mon;
  hc.bytes_per_node = (size_t)2 << 30; /* room for 64 threads' segments */
  hc.transparent_huge_pages = thp;
  if (cllm_heaps_create(&hc, &g_heaps) != CLLM_OK) {
    fprintf(stderr, "heap_bench: cllm_heaps_create failed\n");
    return 1;
  }
  hc.keep_pages = false;
  if (cllm_heaps_create(&hc, &g_heaps_nokeep) != CLLM_OK) {
    fprintf(stderr, "heap_bench: cllm_heaps_create (keep_pages off) failed\n");
    return 1;
  }
  bench_note(&o, "heap mode: %s", cllm_heap_mode_name(cllm_heaps_mode(g_heaps)));
  g_arena_ok = arena_init();
  if (!g_arena_ok) bench_note(&o, "mi_arena_heap and the floor rows: skipped (could not register an arena)");
  if (g_arena_ok && !floor_init()) bench_note(&o, "floor rows: skipped (no monitor)");
  long ops = o.quick ? 200000 : 1000000;
  int max_t = o.max_threads < 64 ? o.max_threads : 64;

  for (int ci = 0; ci < CASE_COUNT; ci++) {
    case_t c = (case_t)ci;
    bool cross = c == CASE_CROSS;
    for (int t = cross ? 2 : 1; t <= max_t; t *= 2) {
      double ns[IMPL_COUNT][BENCH_MAX_REPS] = {{0}};
      long fails[IMPL_COUNT] = {0};
      uint64_t faults[IMPL_COUNT] = {0};
      for (int i = 0; i < IMPL_COUNT; i++) { /* warm-up: first touch of fresh memory */
        if (!impl_in_case(i, c)) continue;
        long f = 0;
        (void)run_once(c, (impl_t)i, t, ops / 4, &f);
      }
      for (int r = 0; r < o.reps; r++) {
        for (int i = 0; i < IMPL_COUNT; i++) {
          if (!impl_in_case(i, c)) continue;
          uint64_t f0 = bench_minor_faults();
          ns[i][r] = run_once(c, (impl_t)i, t, ops, &fails[i]);
          faults[i] += bench_minor_faults() - f0;
        }
      }
      bench_row_t rows[IMPL_COUNT];
      for (int i = 0; i < IMPL_COUNT; i++) {
        bench_row_t row = {.bench = "heap_bench",
                           .case_name = case_name[c],
                           .impl = impl_name[i],
                           .threads = t,
                           .ops = (uint64_t)ops * (uint64_t)t};
        bench_stats(ns[i], o.reps, &row);
        rows[i] = row;
      }
      for (int i = 0; i < IMPL_COUNT; i++) {
        if (!impl_in_case(i, c)) continue;
        bench_extra_num(&rows[i], "mops_total", 1e3 * t / rows[i].ns_per_op_median);
        bench_extra_num(&rows[i], "vs_mimalloc",
                        rows[i].ns_per_op_median / rows[IMPL_MI].ns_per_op_median);
        bench_extra_num(&rows[i], "faults_per_op",
                        (double)faults[i] / ((double)o.reps * (double)ops * t));
        if (fails[i] != 0) bench_extra_num(&rows[i], "failures", (double)fails[i]);
        if (i == IMPL_CLLM || i == IMPL_CLLM_SIZED || i == IMPL_CLLM_NOKEEP)
          bench_extra_num(&rows[i], "thp", thp ? 1.0 : 0.0);
        bench_emit(&o, &rows[i]);
      }
    }
  }
  cllm_heaps_stats_t st;
  st.struct_size = sizeof st;
  if (cllm_heaps_stats(g_heaps, &st) == CLLM_OK)
    bench_note(&o,
               "cllm_heap: %llu allocations, %llu failures, %zu bytes in use at the end, "
               "%zu region bytes backed by THP",
               (unsigned long long)st.node[0].allocations, (unsigned long long)st.node[0].failures,
               st.node[0].bytes_in_use, st.node[0].huge_page_bytes);
  cllm_heaps_destroy(g_heaps);
  cllm_heaps_destroy(g_heaps_nokeep);
  if (cllm_monitor_used(mon, CLLM_CAT_HEAP) != 0) {
    fprintf(stderr, "heap_bench: monitor HEAP did not return to 0\n");
    return 1;
  }
  cllm_monitor_destroy(mon);
  if (g_floor_mon != NULL) {
    if (cllm_monitor_used(g_floor_mon, CLLM_CAT_HEAP) != 0) {
      fprintf(stderr, "heap_bench: the floor rows' monitor did not return to 0\n");
      return 1;
    }
    cllm_monitor_destroy(g_floor_mon);
  }
  return 0;
}
