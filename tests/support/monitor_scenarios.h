/* Concurrency scenarios for the monitor, shared by the Criterion suite
 * (monitor_test.c) and the plain program that runs under TSan (monitor_mt.c).
 *
 * Scenario "limit race": T threads reserve and release random sizes against a small
 * limit while a watcher samples `used`.  Each reserving thread also checks the value
 * it installed.  Run against the library and against a deliberately racy
 * check-then-add reference (the seed's algorithm), the first must never exceed the
 * limit, the second must be caught overshooting: that is what shows the test can fail.
 * Against the library the watcher also runs cllm_monitor_check, which must hold at
 * every instant (total == sum of categories, peaks >= used), not only when quiescent.
 */
#ifndef CLLM_TESTS_MONITOR_SCENARIOS_H
#define CLLM_TESTS_MONITOR_SCENARIOS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include <cllm/monitor.h>

#include "mt_check.h"

/* The seed's MemoryMonitor::allocate, re-implemented: load, compare, add. */
typedef struct racy_monitor {
  _Atomic size_t used;
  _Atomic size_t peak;
  size_t limit;
} racy_monitor_t;

static inline bool racy_reserve(racy_monitor_t *r, size_t bytes, size_t *installed) {
  size_t used = atomic_load(&r->used);
  if (used + bytes > r->limit) return false;
  *installed = atomic_fetch_add(&r->used, bytes) + bytes;
  size_t cur = atomic_load(&r->used); /* the seed re-loads for the peak */
  if (cur > atomic_load(&r->peak)) atomic_store(&r->peak, cur);
  return true;
}
static inline void racy_release(racy_monitor_t *r, size_t bytes) { atomic_fetch_sub(&r->used, bytes); }

typedef struct race_ctx {
  cllm_monitor_t *mon;     /* NULL: run against racy */
  racy_monitor_t *racy;
  size_t limit;
  long iters;
  _Atomic long overshoots; /* reservations that installed a value above the limit */
  _Atomic long successes;
  _Atomic long refusals;
  _Atomic size_t max_seen; /* largest `used` the watcher saw */
  _Atomic long checks, check_failures; /* cllm_monitor_check by the watcher */
  _Atomic int stop;
  _Atomic int seed;
} race_ctx_t;

static inline size_t race_used(race_ctx_t *c) {
  return c->mon != NULL ? cllm_monitor_used(c->mon, CLLM_CAT_COUNT) : atomic_load(&c->racy->used);
}

static void *race_watcher(void *arg) {
  race_ctx_t *c = arg;
  while (!atomic_load(&c->stop)) {
    size_t u = race_used(c);
    size_t m = atomic_load(&c->max_seen);
    while (u > m && !atomic_compare_exchange_weak(&c->max_seen, &m, u)) {
    }
    if (c->mon != NULL) {
      atomic_fetch_add(&c->checks, 1);
      if (cllm_monitor_check(c->mon) != CLLM_OK) atomic_fetch_add(&c->check_failures, 1);
    }
  }
  return NULL;
}

static void *race_worker(void *arg) {
  race_ctx_t *c = arg;
  unsigned long long s = (unsigned long long)atomic_fetch_add(&c->seed, 1) * 7919u + 1;
  size_t held[8];
  int n = 0;
  for (long i = 0; i < c->iters; i++) {
    size_t bytes = 64 + (size_t)(mt_rand(&s) % (c->limit / 4));
    bool ok;
    size_t installed = 0;
    if (c->mon != NULL) {
      cllm_category_t cat = (cllm_category_t)(mt_rand(&s) % CLLM_CAT_COUNT);
      ok = cllm_monitor_reserve(c->mon, cat, bytes) == CLLM_OK;
      if (ok) {
        installed = cllm_monitor_used(c->mon, CLLM_CAT_COUNT);
        /* Encode the category in the low bits of what we hold. */
        held[n] = (bytes << 2) | (size_t)cat;
      }
    } else {
      ok = racy_reserve(c->racy, bytes, &installed);
      if (ok) held[n] = bytes << 2;
    }
    if (ok) {
      n++;
      atomic_fetch_add(&c->successes, 1);
      if (installed > c->limit) atomic_fetch_add(&c->overshoots, 1);
    } else {
      atomic_fetch_add(&c->refusals, 1);
    }
    if (n == 8 || (n > 0 && (mt_rand(&s) & 1))) {
      size_t h = held[--n];
      if (c->mon != NULL)
        MT_CHECK(cllm_monitor_release(c->mon, (cllm_category_t)(h & 3), h >> 2) == CLLM_OK, "release");
      else
        racy_release(c->racy, h >> 2);
    }
  }
  while (n > 0) {
    size_t h = held[--n];
    if (c->mon != NULL)
      MT_CHECK(cllm_monitor_release(c->mon, (cllm_category_t)(h & 3), h >> 2) == CLLM_OK, "release");
    else
      racy_release(c->racy, h >> 2);
  }
  return NULL;
}

/* Run the scenario with `threads` workers (max 64) and a watcher. */
static inline void race_run(race_ctx_t *c, int threads) {
  pthread_t w, t[64];
  atomic_store(&c->stop, 0);
  pthread_create(&w, NULL, race_watcher, c);
  for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, race_worker, c);
  for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
  atomic_store(&c->stop, 1);
  pthread_join(w, NULL);
}

/* The library under the scenario: returns 0 when every guarantee held. */
static inline void scenario_limit_race_library(int threads, long iters) {
  cllm_monitor_config_t cfg = cllm_monitor_config_default();
  cfg.limit_bytes = 64 << 10;
  cllm_monitor_t *m;
  MT_CHECK(cllm_monitor_create(&cfg, &m) == CLLM_OK, "create");
  race_ctx_t c = {.mon = m, .limit = cfg.limit_bytes, .iters = iters};
  race_run(&c, threads);
  MT_CHECK(atomic_load(&c.overshoots) == 0, "library overshot the limit %ld times",
           atomic_load(&c.overshoots));
  MT_CHECK(atomic_load(&c.max_seen) <= cfg.limit_bytes, "watcher saw %zu > limit",
           atomic_load(&c.max_seen));
  MT_CHECK(atomic_load(&c.check_failures) == 0, "check failed %ld of %ld times under load",
           atomic_load(&c.check_failures), atomic_load(&c.checks));
  MT_CHECK(atomic_load(&c.successes) > 0 && atomic_load(&c.refusals) > 0,
           "scenario did not reach the limit (%ld ok, %ld refused)", atomic_load(&c.successes),
           atomic_load(&c.refusals));
  MT_CHECK(cllm_monitor_used(m, CLLM_CAT_COUNT) == 0, "used %zu at the end",
           cllm_monitor_used(m, CLLM_CAT_COUNT));
  MT_CHECK(cllm_monitor_peak(m, CLLM_CAT_COUNT) <= cfg.limit_bytes, "peak above limit");
  MT_CHECK(cllm_monitor_check(m) == CLLM_OK, "check");
  cllm_monitor_destroy(m);
}

/* The racy reference under the same scenario: returns the overshoots seen within
 * `max_seconds` (repeating rounds until one is seen). */
static inline long scenario_limit_race_reference(int threads, long iters, double max_seconds) {
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (;;) {
    racy_monitor_t r = {.limit = 64 << 10};
    race_ctx_t c = {.racy = &r, .limit = r.limit, .iters = iters};
    race_run(&c, threads);
    long over = atomic_load(&c.overshoots) + (atomic_load(&c.max_seen) > r.limit);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double el = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    if (over > 0 || el > max_seconds) return over;
  }
}

#endif
