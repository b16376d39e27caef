/* Concurrency scenarios for the per-thread NUMA heaps, as a plain program so that it
 * also runs under ThreadSanitizer (Criterion crashes there).
 *
 *  1. 8 threads allocate mixed sizes (16 B .. 64 KiB) at once, write a pattern into
 *     every block and verify it before freeing; a quarter of the blocks go through a
 *     shared mailbox and are freed by another thread; at a barrier every live block
 *     of every thread is collected and checked for overlap. Half of the threads exit
 *     early, leaving blocks in the mailbox that the others free later. A poller
 *     reads stats meanwhile. At the end the monitor's HEAP figure is exactly 0.
 *  2. The same in PLAIN mode (a synthetic two-node topology, threads attached to
 *     both nodes).
 *  Odd-seeded blocks are freed with cllm_heap_free_sized, the others with
 *  cllm_heap_free (both, same thread and cross-thread).
 *  3. Threads create, use and destroy heaps objects of one shape concurrently (the
 *     process-wide region pool is shared: at most one arena per live object).
 *
 * ITER (environment) sets the operations per thread (default 20000, 4000 under TSan).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* sched_getcpu, CPU_* macros, syscall */
#endif
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cllm/heap.h>
#include <cllm/monitor.h>
#include <cllm/numa.h>

#include "support/mt_check.h"

#define MiB ((size_t)1 << 20)
#define NTHREADS 8
#define WINDOW 64    /* live blocks per thread */
#define MAILBOX 4096 /* blocks in flight between threads */

typedef struct blk {
  unsigned char *p;
  size_t n;
  uint64_t seed;
} blk_t;

/* The pattern: one 64-bit word per 8 bytes, derived from the seed and the offset. */
static void fill(const blk_t *b) {
  uint64_t *w = (uint64_t *)b->p;
  for (size_t i = 0; i < b->n / 8; i++) w[i] = b->seed * 0x9e3779b97f4a7c15ull + i;
}
static int check(const blk_t *b) {
  const uint64_t *w = (const uint64_t *)b->p;
  for (size_t i = 0; i < b->n / 8; i++)
    if (w[i] != b->seed * 0x9e3779b97f4a7c15ull + i) return 0;
  return 1;
}

/* Free a block: with the sized call for odd seeds (every block comes from
 * cllm_heap_alloc with b->n bytes), else the plain one. */
static void free_blk(cllm_heaps_t *h, const blk_t *b) {
  if (b->seed & 1) cllm_heap_free_sized(h, b->p, b->n);
  else cllm_heap_free(h, b->p);
}

/* ---- the mailbox: blocks handed to another thread to free ---- */
static pthread_mutex_t mb_lock = PTHREAD_MUTEX_INITIALIZER;
static blk_t mailbox[MAILBOX];
static int mb_n;
/* Blocks of threads that exited, freed by main after every worker is gone. */
static blk_t late[NTHREADS * WINDOW];
static int late_n;

static int mb_put(blk_t b) {
  int ok = 0;
  pthread_mutex_lock(&mb_lock);
  if (mb_n < MAILBOX) {
    mailbox[mb_n++] = b;
    ok = 1;
  }
  pthread_mutex_unlock(&mb_lock);
  return ok;
}
static int mb_get(blk_t *b) {
  int ok = 0;
  pthread_mutex_lock(&mb_lock);
  if (mb_n > 0) {
    *b = mailbox[--mb_n];
    ok = 1;
  }
  pthread_mutex_unlock(&mb_lock);
  return ok;
}

/* ---- scenario 1 and 2 ---- */
typedef struct worker {
  cllm_heaps_t *h;
  int id;
  int node; /* attach to this node, -1: leave the default */
  long iters;
  int early_exit;
  blk_t live[WINDOW];
  int n_live;
} worker_t;

static pthread_barrier_t g_barrier;
static const char *g_region; /* the node-0 region (NULL in PLAIN mode) */
static size_t g_region_bytes;
static blk_t g_all[NTHREADS * WINDOW];
static int g_all_n;
static pthread_mutex_t g_all_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_int g_stop;

static int cmp_blk(const void *a, const void *b) {
  uintptr_t x = (uintptr_t)((const blk_t *)a)->p, y = (uintptr_t)((const blk_t *)b)->p;
  return x < y ? -1 : x > y;
}

static size_t pick_size(unsigned long long *rng) {
  unsigned long long r = mt_rand(rng);
  /* mostly small, some medium: 16 B .. 64 KiB */
  int shift = 4 + (int)(r % 13);
  return ((size_t)1 << shift) + (size_t)((r >> 8) % ((size_t)1 << shift));
}

static void *worker(void *arg) {
  worker_t *w = arg;
  unsigned long long rng = 0x1234 + (unsigned long long)w->id * 7919;
  if (w->node >= 0) MT_CHECK(cllm_heap_attach(w->h, w->node) == CLLM_OK, "attach %d", w->node);
  long half = w->iters / 2;
  for (int phase = 0; phase < 2; phase++) {
    for (long i = 0; i < half; i++) {
      int slot = (int)(mt_rand(&rng) % WINDOW);
      if (slot < w->n_live) { /* replace: verify, then free here or hand over */
        blk_t *b = &w->live[slot];
        MT_CHECK(check(b), "thread %d block %p (%zu B) corrupted", w->id, (void *)b->p, b->n);
        if (mt_rand(&rng) % 4 == 0 && mb_put(*b)) {
        } else {
          free_blk(w->h, b);
        }
        *b = w->live[--w->n_live];
      }
      blk_t nb = {.n = pick_size(&rng), .seed = mt_rand(&rng)};
      nb.p = cllm_heap_alloc(w->h, nb.n);
      MT_CHECK(nb.p != NULL, "thread %d: alloc %zu failed: %s", w->id, nb.n,
               cllm_status_name(cllm_last_status()));
      MT_CHECK(((uintptr_t)nb.p & 15) == 0, "misaligned %p", (void *)nb.p);
      MT_CHECK(g_region == NULL ||
                   ((const char *)nb.p >= g_region && (const char *)nb.p + nb.n <= g_region + g_region_bytes),
               "block %p outside the region", (void *)nb.p);
      MT_CHECK(cllm_heap_usable_size(w->h, nb.p) >= nb.n, "usable size");
      fill(&nb);
      w->live[w->n_live++] = nb;
      blk_t ob;
      if (i % 3 == 0 && mb_get(&ob)) { /* free another thread's block */
        MT_CHECK(check(&ob), "mailbox block %p corrupted", (void *)ob.p);
        free_blk(w->h, &ob);
      }
    }
    if (phase == 0) { /* collect every live block and look for overlaps */
      pthread_mutex_lock(&g_all_lock);
      for (int i = 0; i < w->n_live; i++) g_all[g_all_n++] = w->live[i];
      pthread_mutex_unlock(&g_all_lock);
      int r = pthread_barrier_wait(&g_barrier);
      if (r == PTHREAD_BARRIER_SERIAL_THREAD) {
        qsort(g_all, (size_t)g_all_n, sizeof g_all[0], cmp_blk);
        for (int i = 1; i < g_all_n; i++)
          MT_CHECK(g_all[i - 1].p + g_all[i - 1].n <= g_all[i].p, "live blocks overlap: %p+%zu > %p",
                   (void *)g_all[i - 1].p, g_all[i - 1].n, (void *)g_all[i].p);
        g_all_n = 0;
      }
      pthread_barrier_wait(&g_barrier);
      if (w->early_exit) { /* leave: hand live blocks to the others and to main */
        for (int i = 0; i < w->n_live; i++) {
          if (i % 2 == 0) {
            pthread_mutex_lock(&mb_lock);
            late[late_n++] = w->live[i];
            pthread_mutex_unlock(&mb_lock);
          } else if (!mb_put(w->live[i])) {
            free_blk(w->h, &w->live[i]);
          }
        }
        w->n_live = 0;
        return NULL;
      }
    }
  }
  for (int i = 0; i < w->n_live; i++) {
    MT_CHECK(check(&w->live[i]), "final check");
    free_blk(w->h, &w->live[i]);
  }
  w->n_live = 0;
  return NULL;
}

static void *poller(void *arg) {
  cllm_heaps_t *h = arg;
  while (!atomic_load(&g_stop)) {
    cllm_heaps_stats_t st;
    st.struct_size = sizeof st;
    MT_CHECK(cllm_heaps_stats(h, &st) == CLLM_OK, "stats");
    MT_CHECK(st.threads <= NTHREADS + 1, "threads %d", st.threads);
    MT_CHECK(st.nodes >= 1 && st.nodes <= CLLM_HEAP_MAX_NODES, "nodes %d", st.nodes);
    struct timespec ts = {0, 2000000};
    nanosleep(&ts, NULL);
  }
  return NULL;
}

static void run_workers(cllm_heaps_t *h, cllm_monitor_t *m, int nodes, const char *name) {
  static worker_t w[NTHREADS];
  pthread_t t[NTHREADS], pt;
#ifdef CLLM_TSAN
  long iters = mt_iters(4000);
#else
  long iters = mt_iters(20000);
#endif
  mb_n = 0;
  atomic_store(&g_stop, 0);
  cllm_heaps_stats_t s0;
  s0.struct_size = sizeof s0;
  MT_CHECK(cllm_heaps_stats(h, &s0) == CLLM_OK, "stats");
  g_region = s0.nodes == 1 ? (const char *)s0.node[0].region_start : NULL;
  g_region_bytes = s0.node[0].region_bytes;
  MT_CHECK(pthread_barrier_init(&g_barrier, NULL, NTHREADS) == 0, "barrier");
  for (int i = 0; i < NTHREADS; i++) {
    memset(&w[i], 0, sizeof w[i]);
    w[i].h = h;
    w[i].id = i;
    w[i].node = nodes > 1 ? i % nodes : -1;
    w[i].iters = iters;
    w[i].early_exit = i % 2;
    MT_CHECK(pthread_create(&t[i], NULL, worker, &w[i]) == 0, "create");
  }
  MT_CHECK(pthread_create(&pt, NULL, poller, h) == 0, "create poller");
  for (int i = 0; i < NTHREADS; i++) pthread_join(t[i], NULL);
  atomic_store(&g_stop, 1);
  pthread_join(pt, NULL);
  pthread_barrier_destroy(&g_barrier);
  /* Blocks of exited threads still in the mailbox: freed here, later. */
  blk_t b;
  int left = 0;
  while (mb_get(&b)) {
    MT_CHECK(check(&b), "mailbox block corrupted");
    free_blk(h, &b);
  }
  for (int i = 0; i < late_n; i++) {
    MT_CHECK(check(&late[i]), "late block corrupted");
    free_blk(h, &late[i]);
    left++;
  }
  MT_CHECK(left > 0, "no block outlived its thread");
  late_n = 0;
  cllm_heaps_stats_t st;
  st.struct_size = sizeof st;
  MT_CHECK(cllm_heaps_stats(h, &st) == CLLM_OK, "stats");
  uint64_t allocs = 0, frees = 0;
  for (int i = 0; i < st.nodes; i++) {
    MT_CHECK(st.node[i].bytes_in_use == 0, "node %d still has %zu bytes", i, st.node[i].bytes_in_use);
    MT_CHECK(st.node[i].failures == 0, "node %d failures", i);
    allocs += st.node[i].allocations;
    frees += st.node[i].frees;
  }
  MT_CHECK(allocs == frees && allocs >= (uint64_t)NTHREADS * (iters / 2), "allocs %llu frees %llu",
           (unsigned long long)allocs, (unsigned long long)frees);
  MT_CHECK(st.threads == 0, "exited threads still counted: %d", st.threads);
  MT_CHECK(st.foreign_frees == 0, "foreign frees");
  MT_CHECK(cllm_heaps_check(h) == CLLM_OK, "check");
  MT_CHECK(cllm_heap_thread_flush(h) == CLLM_OK, "flush");
  MT_CHECK(cllm_monitor_used(m, CLLM_CAT_HEAP) == 0, "%s: HEAP left %zu", name,
           cllm_monitor_used(m, CLLM_CAT_HEAP));
  printf("%s: mode %s, %llu allocations, %d freed late after their threads exited\n", name,
         cllm_heap_mode_name(st.mode), (unsigned long long)allocs, left);
}

/* ---- scenario 3 ---- */
static void *create_destroy(void *arg) {
  cllm_monitor_t *m = arg;
  for (int r = 0; r < 20; r++) {
    cllm_heaps_config_t cfg = cllm_heaps_config_default();
    cfg.bytes_per_node = 64 * MiB;
    cfg.monitor = m;
    cllm_heaps_t *h = NULL;
    MT_CHECK(cllm_heaps_create(&cfg, &h) == CLLM_OK, "create round %d", r);
    MT_CHECK(cllm_heaps_mode(h) != CLLM_HEAP_MODE_PLAIN, "fell back to PLAIN (arena slots ran out?)");
    void *p[16];
    for (int i = 0; i < 16; i++) {
      p[i] = cllm_heap_alloc(h, (size_t)100 << (i % 8));
      MT_CHECK(p[i] != NULL, "alloc");
    }
    for (int i = 0; i < 16; i += 2) cllm_heap_free(h, p[i]); /* the rest: destroy drops them */
    cllm_heaps_destroy(h);
  }
  return NULL;
}

int main(void) {
  cllm_monitor_config_t mc = cllm_monitor_config_default();
  cllm_monitor_t *m = NULL;
  MT_CHECK(cllm_monitor_create(&mc, &m) == CLLM_OK, "monitor");

  /* 1: this machine (SINGLE or NUMA). 32 MiB per thread segment, 8 threads. */
  cllm_heaps_config_t cfg = cllm_heaps_config_default();
  cfg.bytes_per_node = 512 * MiB;
  cfg.monitor = m;
  cfg.batch_bytes = 64 << 10;
  cllm_heaps_t *h = NULL;
  MT_CHECK(cllm_heaps_create(&cfg, &h) == CLLM_OK, "create");
  run_workers(h, m, 1, "regions");
  cllm_heaps_destroy(h);
  MT_CHECK(cllm_monitor_used(m, CLLM_CAT_HEAP) == 0, "after destroy");

  /* 2: PLAIN mode over a synthetic two-node topology. */
  cllm_topology_config_t tc = cllm_topology_config_default();
  tc.synthetic = "pack:2 numa:1 core:2 pu:1";
  cllm_topology_t *topo = NULL;
  MT_CHECK(cllm_topology_create(&tc, &topo) == CLLM_OK, "topology");
  cllm_set_log_fn(cllm_log_discard, NULL);
  cfg.topology = topo;
  MT_CHECK(cllm_heaps_create(&cfg, &h) == CLLM_OK, "create plain");
  cllm_set_log_fn(NULL, NULL);
  MT_CHECK(cllm_heaps_mode(h) == CLLM_HEAP_MODE_PLAIN, "mode");
  run_workers(h, m, 2, "plain");
  cllm_heaps_destroy(h);
  cllm_topology_destroy(topo);

  /* 3: concurrent create/destroy. */
  pthread_t t[4];
  for (int i = 0; i < 4; i++) MT_CHECK(pthread_create(&t[i], NULL, create_destroy, m) == 0, "create");
  for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
  MT_CHECK(cllm_monitor_used(m, CLLM_CAT_HEAP) == 0, "create/destroy left %zu",
           cllm_monitor_used(m, CLLM_CAT_HEAP));
  MT_CHECK(cllm_monitor_check(m) == CLLM_OK, "monitor check");
  cllm_monitor_destroy(m);
  printf("heap_mt: ok\n");
  return 0;
}
