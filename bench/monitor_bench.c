/* monitor_bench: the cost of charging memory to a global monitor.
 *
 * case reserve_release: one reserve + one release of a small random size, per op,
 * against a large limit, with 1, 2, ... threads (all on one monitor):
 *   seed_check_then_add  the seed's MemoryMonitor (load, compare, fetch_add; peak
 *                        from a re-load), re-implemented here;
 *   cllm_reserve         cllm_monitor_reserve / cllm_monitor_release (exact: one
 *                        gate CAS per call, total and category changed together);
 *   cllm_batched         cllm_monitor_batch_reserve / _release (per-thread credit).
 * ns_per_op is wall time x threads / pairs (time per pair on each thread); the
 * extra `mops_total` is the aggregate throughput and `scaling` its ratio to 1 thread.
 *
 * case overshoot: 2 threads reserve/release against a 64 KiB limit; counts how
 * often a successful reservation left `used` above the limit (seed) -- never for
 * cllm_reserve.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cllm/monitor.h>

#include "harness.h"

#define NSIZES 1024

typedef struct seed_monitor {
  _Alignas(64) _Atomic size_t used;
  _Atomic size_t peak;
  size_t limit;
} seed_monitor_t;

static int seed_allocate(seed_monitor_t *m, size_t bytes, size_t *installed) {
  size_t used = atomic_load(&m->used);
  if (used + bytes > m->limit) return -1; /* the seed throws */
  atomic_fetch_add(&m->used, bytes);
  size_t cur = atomic_load(&m->used);
  *installed = cur;
  if (cur > atomic_load(&m->peak)) atomic_store(&m->peak, cur);
  return 0;
}
static void seed_deallocate(seed_monitor_t *m, size_t bytes) { atomic_fetch_sub(&m->used, bytes); }

typedef enum { IMPL_SEED, IMPL_RESERVE, IMPL_BATCHED, IMPL_COUNT } impl_t;
static const char *const impl_name[IMPL_COUNT] = {"seed_check_then_add", "cllm_reserve",
                                                  "cllm_batched"};

typedef struct worker {
  impl_t impl;
  seed_monitor_t *seed;
  cllm_monitor_t *mon;
  long pairs;
  unsigned seed_rng;
  const size_t *sizes;
  long overshoots, successes;
  size_t limit;
  int hold;  /* overshoot case: hold a few reservations to reach the limit */
} worker_t;

static void *run_worker(void *arg) {
  worker_t *w = arg;
  const size_t *sz = w->sizes;
  long pairs = w->pairs;
  switch (w->impl) {
    case IMPL_SEED:
      for (long i = 0; i < pairs; i++) {
        size_t b = sz[i & (NSIZES - 1)], got;
        if (seed_allocate(w->seed, b, &got) == 0) seed_deallocate(w->seed, b);
        bench_sink(w->seed);
      }
      break;
    case IMPL_RESERVE:
      for (long i = 0; i < pairs; i++) {
        size_t b = sz[i & (NSIZES - 1)];
        if (cllm_monitor_reserve(w->mon, CLLM_CAT_HEAP, b) == CLLM_OK)
          CLLM_DISCARD(cllm_monitor_release(w->mon, CLLM_CAT_HEAP, b));
        bench_sink(w->mon);
      }
      break;
    case IMPL_BATCHED: {
      cllm_monitor_batch_t bt;
      if (cllm_monitor_batch_init(&bt, w->mon, CLLM_CAT_HEAP, 0) != CLLM_OK) abort();
      for (long i = 0; i < pairs; i++) {
        size_t b = sz[i & (NSIZES - 1)];
        if (cllm_monitor_batch_reserve(&bt, b) == CLLM_OK) CLLM_DISCARD(cllm_monitor_batch_release(&bt, b));
        bench_sink(&bt); /* keep the pair from being folded away */
      }
      CLLM_DISCARD(cllm_monitor_batch_flush(&bt));
      break;
    }
    default:
      break;
  }
  return NULL;
}

/* Overshoot case: each thread keeps up to `hold` reservations live. */
static void *run_overshoot(void *arg) {
  worker_t *w = arg;
  size_t held[8];
  int n = 0;
  unsigned s = w->seed_rng;
  for (long i = 0; i < w->pairs; i++) {
    size_t b = w->sizes[i & (NSIZES - 1)] * 4;
    size_t installed = 0;
    int ok;
    if (w->impl == IMPL_SEED) {
      ok = seed_allocate(w->seed, b, &installed) == 0;
    } else {
      ok = cllm_monitor_reserve(w->mon, CLLM_CAT_HEAP, b) == CLLM_OK;
      if (ok) installed = cllm_monitor_used(w->mon, CLLM_CAT_COUNT);
    }
    if (ok) {
      held[n++] = b;
      w->successes++;
      if (installed > w->limit) w->overshoots++;
    }
    s = s * 1103515245u + 12345u;
    if (n == w->hold || (n > 0 && (s >> 16) % 2)) {
      size_t r = held[--n];
      if (w->impl == IMPL_SEED) seed_deallocate(w->seed, r);
      else CLLM_DISCARD(cllm_monitor_release(w->mon, CLLM_CAT_HEAP, r));
    }
  }
  while (n > 0) {
    size_t r = held[--n];
    if (w->impl == IMPL_SEED) seed_deallocate(w->seed, r);
    else CLLM_DISCARD(cllm_monitor_release(w->mon, CLLM_CAT_HEAP, r));
  }
  return NULL;
}

int main(int argc, char **argv) {
  bench_opts_t o = bench_parse(argc, argv, "monitor_bench", NULL);
  size_t sizes[NSIZES];
  unsigned s = 12345;
  for (int i = 0; i < NSIZES; i++) {
    s = s * 1103515245u + 12345u;
    sizes[i] = 16 + (s >> 8) % 4096;
  }
  long pairs = o.quick ? 2000000 : 5000000;
  int tcounts[8], nt = 0;
  for (int t = 1; t <= o.max_threads && nt < 8; t *= 2) tcounts[nt++] = t;
  if (tcounts[nt - 1] != o.max_threads && nt < 8) tcounts[nt++] = o.max_threads;
  cllm_set_log_fn(cllm_log_discard, NULL);

  double base_mops[IMPL_COUNT] = {0};
  for (int ti = 0; ti < nt; ti++) {
    int threads = tcounts[ti];
    /* Pairs per thread shrink with the thread count (a contended global atomic
     * costs microseconds per pair with 16 threads), with a floor that keeps each
     * repetition well above the timer's resolution. */
    long tpairs = pairs / threads > 200000 ? pairs / threads : 200000;
    for (int impl = 0; impl < IMPL_COUNT; impl++) {
      double ns[BENCH_MAX_REPS];
      for (int r = 0; r < o.reps; r++) {
        seed_monitor_t seed = {.limit = (size_t)1 << 40};
        cllm_monitor_config_t cfg = cllm_monitor_config_default();
        cfg.limit_bytes = (size_t)1 << 40;
        cllm_monitor_t *mon;
        if (cllm_monitor_create(&cfg, &mon) != CLLM_OK) return 1;
        worker_t w[64];
        void *args[64];
        for (int i = 0; i < threads; i++) {
          w[i] = (worker_t){.impl = (impl_t)impl, .seed = &seed, .mon = mon, .pairs = tpairs,
                            .sizes = sizes};
          args[i] = &w[i];
        }
        double wall = bench_run_threads(threads, run_worker, args);
        ns[r] = wall / (double)tpairs; /* per pair, on each thread */
        cllm_monitor_destroy(mon);
      }
      bench_row_t row = {.case_name = "reserve_release", .impl = impl_name[impl],
                         .threads = threads, .ops = (uint64_t)tpairs * (uint64_t)threads};
      bench_stats(ns, o.reps, &row);
      double mops = (double)threads * 1e3 / row.ns_per_op_median;
      if (threads == 1) base_mops[impl] = mops;
      bench_extra_num(&row, "mops_total", mops);
      bench_extra_num(&row, "scaling", base_mops[impl] > 0 ? mops / base_mops[impl] : 0);
      bench_emit(&o, &row);
    }
  }

  /* Overshoot under 2 threads against a 64 KiB limit. */
  for (int impl = 0; impl < IMPL_BATCHED; impl++) {
    long over = 0, succ = 0;
    double ns[BENCH_MAX_REPS];
    long opairs = o.quick ? 500000 : 2000000;
    for (int r = 0; r < o.reps; r++) {
      seed_monitor_t seed = {.limit = 64 << 10};
      cllm_monitor_config_t cfg = cllm_monitor_config_default();
      cfg.limit_bytes = 64 << 10;
      cllm_monitor_t *mon;
      if (cllm_monitor_create(&cfg, &mon) != CLLM_OK) return 1;
      worker_t w[2];
      void *args[2];
      for (int i = 0; i < 2; i++) {
        w[i] = (worker_t){.impl = (impl_t)impl, .seed = &seed, .mon = mon, .pairs = opairs,
                          .sizes = sizes, .limit = 64 << 10, .hold = 4, .seed_rng = 77u + (unsigned)i};
        args[i] = &w[i];
      }
      ns[r] = bench_run_threads(2, run_overshoot, args) / (double)opairs;
      for (int i = 0; i < 2; i++) over += w[i].overshoots, succ += w[i].successes;
      cllm_monitor_destroy(mon);
    }
    bench_row_t row = {.case_name = "overshoot", .impl = impl_name[impl], .threads = 2,
                       .ops = (uint64_t)opairs * 2};
    bench_stats(ns, o.reps, &row);
    bench_extra_num(&row, "overshoots", (double)over);
    bench_extra_num(&row, "overshoot_rate", succ > 0 ? (double)over / (double)succ : 0);
    bench_extra_num(&row, "limit_bytes", 64 << 10);
    bench_emit(&o, &row);
  }
  return 0;
}
