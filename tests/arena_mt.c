/* Per-thread arenas in 8 threads, as a plain program so that it also runs under
 * ThreadSanitizer (Criterion cannot start there). Exit status 0 = all held.
 *
 * Phase 1: each thread creates its own arena (half direct-mapped, half backed by
 * shared NUMA heaps) and runs seeded steps with nested marks, checking that its
 * buffers keep their pattern; all arenas charge one private monitor concurrently.
 * Some layers allocate through a cursor (cllm_arena_cursor_begin / _alloc / _end).
 * Phase 2: the main thread creates the arenas, hands them to workers for one step
 * each round and resets them itself after the join (hand-over between steps); the
 * workers leave a cursor out, which the main thread ends before the reset.
 * ITER scales the number of steps. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cllm/arena.h>
#include <cllm/heap.h>
#include <cllm/monitor.h>

#include "support/mt_check.h"

#define NTHREADS 8
#define MiB ((size_t)1 << 20)

static cllm_monitor_t *g_mon;
static cllm_heaps_t *g_heaps;
static long g_steps;

typedef struct buf {
  unsigned char *p;
  size_t n;
  unsigned char tag;
} buf_t;

static void one_step(cllm_arena_t *a, unsigned long long *seed, int tid) {
  enum { MAXB = 256 };
  buf_t b[MAXB];
  int n = 0;
  cllm_arena_mark_t outer = cllm_arena_mark(a);
  MT_CHECK(outer.id_ != 0, "mark failed in thread %d", tid);
  int layers = 4 + (int)(mt_rand(seed) % 4);
  for (int l = 0; l < layers; l++) {
    cllm_arena_mark_t m = cllm_arena_mark(a);
    int n0 = n;
    int k = 4 + (int)(mt_rand(seed) % 16);
    bool cursor = mt_rand(seed) % 3 == 0;
    cllm_arena_cursor_t c = {0, 0, NULL, 0};
    if (cursor) MT_CHECK(cllm_arena_cursor_begin(a, &c) == CLLM_OK, "thread %d: begin", tid);
    for (int i = 0; i < k && n < MAXB; i++) {
      size_t bytes = (mt_rand(seed) % 8 == 0) ? mt_rand(seed) % (3 * MiB) : mt_rand(seed) % 8192;
      size_t align = (size_t)1 << (mt_rand(seed) % 12);
      unsigned char *p = cursor ? cllm_arena_cursor_alloc_aligned(&c, bytes, align)
                                : cllm_arena_alloc_aligned(a, bytes, align);
      MT_CHECK(p != NULL, "thread %d: alloc %zu failed: %s", tid, bytes,
               cllm_status_name(cllm_last_status()));
      MT_CHECK((uintptr_t)p % align == 0, "thread %d: misaligned", tid);
      unsigned char tag = (unsigned char)(mt_rand(seed) | 1);
      size_t w = bytes < 4096 ? bytes : 4096;
      memset(p, tag, w);
      b[n++] = (buf_t){p, w, tag};
    }
    if (cursor) MT_CHECK(cllm_arena_cursor_end(a, &c) == CLLM_OK, "thread %d: end", tid);
    for (int i = 0; i < n; i++)
      for (size_t j = 0; j < b[i].n; j++)
        MT_CHECK(b[i].p[j] == b[i].tag, "thread %d: buffer %d overwritten", tid, i);
    if (mt_rand(seed) % 2) { /* the layer's temporaries die with it */
      MT_CHECK(cllm_arena_rewind(a, m) == CLLM_OK, "thread %d: rewind", tid);
      n = n0;
    }
  }
  MT_CHECK(cllm_arena_check(a) == CLLM_OK, "thread %d: check", tid);
  MT_CHECK(cllm_arena_rewind(a, outer) == CLLM_OK, "thread %d: outer rewind", tid);
}

static void *own_arena_thread(void *arg) {
  int tid = (int)(intptr_t)arg;
  cllm_arena_config_t cfg = cllm_arena_config_default();
  cfg.monitor = g_mon;
  cfg.max_chunk_bytes = 8 * MiB;
  cfg.heaps = (tid % 2 && g_heaps != NULL) ? g_heaps : NULL;
  cfg.shrink_after_steps = tid % 3 == 0 ? 4 : 0;
  cllm_arena_t *a = NULL;
  MT_CHECK(cllm_arena_create(&cfg, &a) == CLLM_OK, "thread %d: create", tid);
  unsigned long long seed = 1000 + (unsigned long long)tid;
  for (long s = 0; s < g_steps; s++) {
    one_step(a, &seed, tid);
    MT_CHECK(cllm_arena_reset(a) == CLLM_OK, "thread %d: reset", tid);
    if (s % 16 == 15) MT_CHECK(cllm_arena_trim(a) == CLLM_OK, "thread %d: trim", tid);
  }
  cllm_arena_stats_t st = {.struct_size = sizeof st};
  MT_CHECK(cllm_arena_stats(a, &st) == CLLM_OK, "stats");
  MT_CHECK(st.chunks <= 1 && st.resets == (uint64_t)g_steps, "thread %d: %zu chunks", tid,
           st.chunks);
  cllm_arena_destroy(a);
  if (g_heaps != NULL) CLLM_DISCARD(cllm_heap_thread_flush(g_heaps));
  return NULL;
}

typedef struct handed {
  cllm_arena_t *a;
  unsigned long long seed;
  int tid;
  cllm_arena_cursor_t cursor; /* left out by the worker, ended by the main thread */
} handed_t;

static void *handed_step_thread(void *arg) {
  handed_t *h = arg;
  one_step(h->a, &h->seed, h->tid);
  /* leave something allocated: the main thread's reset releases it */
  MT_CHECK(cllm_arena_alloc(h->a, 1000) != NULL, "thread %d: alloc", h->tid);
  cllm_arena_cursor_t c;
  MT_CHECK(cllm_arena_cursor_begin(h->a, &c) == CLLM_OK, "thread %d: begin", h->tid);
  unsigned char *p = cllm_arena_cursor_alloc(&c, 5000);
  MT_CHECK(p != NULL, "thread %d: cursor alloc", h->tid);
  memset(p, 0x5A, 5000);
  h->cursor = c; /* handed over through the join */
  return NULL;
}

int main(void) {
  g_steps = mt_iters(60);
  MT_CHECK(cllm_monitor_create(NULL, &g_mon) == CLLM_OK, "monitor");
  cllm_heaps_config_t hc = cllm_heaps_config_default();
  hc.bytes_per_node = 512 * MiB;
  hc.monitor = g_mon;
  if (cllm_heaps_create(&hc, &g_heaps) != CLLM_OK) {
    fprintf(stderr, "arena_mt: WARNING: cllm_heaps_create failed; all arenas direct-mapped\n");
    g_heaps = NULL;
  } else {
    /* Probe the heaps themselves (their own tests cover them): a failure here is
     * reported, and the arenas fall back to direct mapping. */
    void *probe = cllm_heap_alloc_aligned(g_heaps, 2 * MiB, 2 * MiB);
    if (probe == NULL) {
      fprintf(stderr, "arena_mt: WARNING: cllm_heap_alloc_aligned(2 MiB) failed (%s); "
              "heap-backed arenas NOT exercised\n", cllm_status_name(cllm_last_status()));
      cllm_heaps_destroy(g_heaps);
      g_heaps = NULL;
    } else {
      cllm_heap_free(g_heaps, probe);
    }
  }

  /* phase 1: own arenas */
  pthread_t t[NTHREADS];
  for (int i = 0; i < NTHREADS; i++)
    MT_CHECK(pthread_create(&t[i], NULL, own_arena_thread, (void *)(intptr_t)i) == 0, "spawn");
  for (int i = 0; i < NTHREADS; i++) MT_CHECK(pthread_join(t[i], NULL) == 0, "join");
  MT_CHECK(cllm_monitor_used(g_mon, CLLM_CAT_STEP) == 0, "STEP not released: %zu",
           cllm_monitor_used(g_mon, CLLM_CAT_STEP));

  /* phase 2: arenas created by main, used by a worker per step, reset by main */
  cllm_arena_t *arenas[NTHREADS];
  handed_t h[NTHREADS];
  for (int i = 0; i < NTHREADS; i++) {
    cllm_arena_config_t cfg = cllm_arena_config_default();
    cfg.monitor = g_mon;
    cfg.initial_bytes = 4 * MiB;
    MT_CHECK(cllm_arena_create(&cfg, &arenas[i]) == CLLM_OK, "create %d", i);
    h[i] = (handed_t){arenas[i], 77 + (unsigned long long)i, i, {0, 0, NULL, 0}};
  }
  long rounds = g_steps / 4 + 1;
  for (long r = 0; r < rounds; r++) {
    for (int i = 0; i < NTHREADS; i++) {
      h[i].a = arenas[(i + r) % NTHREADS]; /* a different worker each round */
      MT_CHECK(pthread_create(&t[i], NULL, handed_step_thread, &h[i]) == 0, "spawn");
    }
    for (int i = 0; i < NTHREADS; i++) MT_CHECK(pthread_join(t[i], NULL) == 0, "join");
    size_t cap = 0;
    for (int i = 0; i < NTHREADS; i++) {
      MT_CHECK(cllm_arena_reset(h[i].a) == CLLM_ESTATE, "reset with a cursor out");
      MT_CHECK(cllm_arena_cursor_end(h[i].a, &h[i].cursor) == CLLM_OK, "end handed cursor");
    }
    for (int i = 0; i < NTHREADS; i++) {
      MT_CHECK(cllm_arena_reset(arenas[i]) == CLLM_OK, "reset");
      cllm_arena_stats_t st = {.struct_size = sizeof st};
      MT_CHECK(cllm_arena_stats(arenas[i], &st) == CLLM_OK, "stats");
      cap += st.capacity_bytes;
    }
    MT_CHECK(cllm_monitor_used(g_mon, CLLM_CAT_STEP) == cap, "STEP %zu != capacity %zu",
             cllm_monitor_used(g_mon, CLLM_CAT_STEP), cap);
  }
  for (int i = 0; i < NTHREADS; i++) cllm_arena_destroy(arenas[i]);
  MT_CHECK(cllm_monitor_used(g_mon, CLLM_CAT_STEP) == 0, "STEP not released");
  cllm_heaps_destroy(g_heaps);
  MT_CHECK(cllm_monitor_check(g_mon) == CLLM_OK, "monitor check");
  cllm_monitor_destroy(g_mon);
  printf("arena_mt: %d threads x %ld steps, %ld hand-over rounds: ok\n", NTHREADS, g_steps, rounds);
  return 0;
}
