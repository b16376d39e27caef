/* The memory monitor: used / peak / limit per category and in total.
 *
 * Concept: every change to the counters happens inside one short critical section
 * guarded by the monitor's *gate*, a word taken with one CAS (0 -> the caller's
 * thread token) and left with a plain release store. Inside it a reservation checks
 * the total and the category limits against the values it replaces, then installs
 * the new total, category figure and peaks; a release checks the category and
 * subtracts from both. So a pair costs two locked instructions, as the seed's racy
 * fetch_add pair did, instead of four for two independent CAS-checked counters.
 *
 * Invariants (cllm_monitor_check verifies them, under the gate, at any time):
 *   - used(total) == sum of used(cat) at every instant a reader can observe through
 *     stats (both change in the same critical section);
 *   - used(x) <= limit(x) whenever the limit was not lowered below use, since every
 *     increase is checked against the value it replaces, under the gate;
 *   - peak(x) >= used(x): peaks are raised to values actually installed.
 *
 * Readers (used, peak, limit) load single counters without the gate. The gate never
 * blocks in the kernel: waiters spin with a pause and yield the CPU after a while (a
 * preempted holder gets to finish). Decided on monitor_bench: a pthread mutex costs
 * more per pair, and spinning without the yield stalls when threads outnumber CPUs. The thread token in the gate lets a
 * signal handler that interrupts a monitor call on the same thread get CLLM_EBUSY
 * instead of spinning on itself.
 *
 * Locks: the gate (counters only, never held across a call out); one mutex per
 * monitor guards the callback pair and the reclaimer table. Neither is held while a
 * callback runs; the mutex is never taken with the gate held.
 */
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include <cllm/monitor.h>

#include "internal/atomic.h"
#include "internal/fault.h"
#include "internal/util.h"
#include "internal/versioned.h"

/* ---- types ---------------------------------------------------------------- */

/* Counter index: a category, or TOT (== CLLM_CAT_COUNT, as in the public API). */
#define TOT CLLM_CAT_COUNT
#define NCTR (CLLM_CAT_COUNT + 1)

typedef struct reclaimer {
  cllm_reclaim_fn fn;
  void *user;
  unsigned busy; /* calls in flight (guarded by lock) */
  bool removed;
} reclaimer_t;

struct cllm_monitor {
  /* One cache line: what every reserve and release writes (under contention it is
   * the only line that moves between cores in the steady state). */
  _Alignas(64) _Atomic uintptr_t gate; /* 0, or the holder's thread token */
  _Atomic size_t used[NCTR];
  /* Read on every reserve, written only when a peak rises / a limit is set. */
  _Alignas(64) _Atomic size_t peak[NCTR];
  _Alignas(64) _Atomic size_t limit[NCTR]; /* 0 = unlimited */
  _Alignas(64) _Atomic uint64_t refusals;
  _Atomic uint64_t reclaim_runs;
  _Atomic uint64_t reclaimed_bytes;
  _Atomic uint64_t bad_releases;
  _Atomic uint64_t try_refusals;
  _Atomic size_t credit;
  _Atomic int n_reclaimers; /* a hint read without the lock */
  pthread_mutex_t lock;
  pthread_cond_t idle;
  cllm_limit_fn limit_fn;
  void *limit_user;
  int n_rec;
  reclaimer_t rec[CLLM_MONITOR_MAX_RECLAIMERS];
  bool is_global;
  /* &gate, for the calls that take a const monitor (stats, check): entering the gate
   * changes nothing a caller can observe, as locking a mutex would not. */
  _Atomic uintptr_t *gate_w;
};

static cllm_monitor_t g_monitor = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .idle = PTHREAD_COND_INITIALIZER,
    .is_global = true,
    .gate_w = &g_monitor.gate,
};

/* Per-thread state. Its address is the thread's token in the gate; in_reclaimer is
 * set while the thread runs reclaimers (enforces the reentrancy rule). */
static _Thread_local struct {
  int in_reclaimer;
} t_self;
#define t_in_reclaimer (t_self.in_reclaimer)

const char *cllm_category_name(cllm_category_t cat) {
  switch (cat) {
#define CLLM_CATEGORY_NAME_(id, code, text) \
  case CLLM_CAT_##id:                       \
    return text;
    CLLM_CATEGORY_MAP(CLLM_CATEGORY_NAME_)
#undef CLLM_CATEGORY_NAME_
    case CLLM_CAT_COUNT: break;
  }
  return "unknown";
}

static bool cat_ok(cllm_category_t cat) { return (unsigned)cat < CLLM_CAT_COUNT; }

/* ---- life cycle ------------------------------------------------------------ */

cllm_monitor_config_t cllm_monitor_config_default(void) {
  cllm_monitor_config_t c;
  memset(&c, 0, sizeof c);
  c.struct_size = sizeof c;
  return c;
}

cllm_status_t cllm_monitor_create(const cllm_monitor_config_t *cfg, cllm_monitor_t **out) {
  if (out == NULL) return CLLM_EINVAL;
  *out = NULL;
  cllm_monitor_config_t c = cllm_monitor_config_default();
  if (cllm__config_in(&c, sizeof c, cfg) != CLLM_OK) return CLLM_EINVAL;
  cllm_monitor_t *m = CLLM_FAULT(CLLM_FAULT_MALLOC) ? NULL : aligned_alloc(64, sizeof *m);
  if (m == NULL) return CLLM_ENOMEM;
  memset(m, 0, sizeof *m);
  if (pthread_mutex_init(&m->lock, NULL) != 0) {
    free(m);
    return CLLM_ENOMEM;
  }
  if (pthread_cond_init(&m->idle, NULL) != 0) {
    pthread_mutex_destroy(&m->lock);
    free(m);
    return CLLM_ENOMEM;
  }
  m->gate_w = &m->gate;
  atomic_init(&m->limit[TOT], c.limit_bytes);
  for (int i = 0; i < CLLM_CAT_COUNT; i++) atomic_init(&m->limit[i], c.category_limit_bytes[i]);
  m->limit_fn = c.limit_fn;
  m->limit_user = c.limit_user;
  *out = m;
  return CLLM_OK;
}

void cllm_monitor_destroy(cllm_monitor_t *m) {
  if (m == NULL || m->is_global) return;
  size_t used = cllm__atomic_load_relaxed(&m->used[TOT]);
  if (used != 0) cllm__warn("monitor destroyed with %zu bytes still reserved", used);
  pthread_cond_destroy(&m->idle);
  pthread_mutex_destroy(&m->lock);
  free(m);
}

cllm_monitor_t *cllm_monitor_global(void) { return &g_monitor; }

/* ---- reserve / release ------------------------------------------------------ */

/* Why a reservation was refused, for the shortfall and the limit callback. */
typedef struct refusal {
  size_t used, limit;
} refusal_t;

/* ---- the gate ----------------------------------------------------------------- */

static inline uintptr_t self_token(void) { return (uintptr_t)&t_self; }

/* Failed CASes with a pause before a waiter starts yielding. */
#define GATE_SPINS 100

/* Enter the gate: one CAS when it is free. false: this thread already holds it (a
 * signal handler interrupted a monitor call on this thread); the caller must not
 * touch the counters. A holder keeps the gate for a few instructions, so a waiter
 * spins with a pause; if the gate stays held, its holder was probably preempted, and
 * the waiter gives it the CPU (sched_yield) instead of spinning through its time
 * slice. */
static inline bool gate_enter(_Atomic uintptr_t *gate, uintptr_t me) {
  for (unsigned spins = 0;; spins++) {
    uintptr_t cur = 0;
    if (CLLM_LIKELY(atomic_compare_exchange_weak_explicit(gate, &cur, me, memory_order_acquire,
                                                          memory_order_relaxed)))
      return true;
    if (cur == me) return false;
    if (spins < GATE_SPINS) cllm__cpu_relax();
    else sched_yield();
  }
}

static inline void gate_leave(_Atomic uintptr_t *gate) {
  atomic_store_explicit(gate, (uintptr_t)0, memory_order_release);
}

/* Raise a peak to an installed value (gate held: plain load and store). */
static inline void raise_peak(cllm_monitor_t *m, int i, size_t v) {
  if (v > cllm__atomic_load_relaxed(&m->peak[i])) cllm__atomic_store_relaxed(&m->peak[i], v);
}

/* Check adding `bytes` to counter i (gate held): *next is the new value; false when
 * its limit would be passed or it would overflow, with *why filled. */
static inline bool counter_fits(cllm_monitor_t *m, int i, size_t bytes, size_t *next,
                                refusal_t *why) {
  size_t cur = cllm__atomic_load_relaxed(&m->used[i]);
  size_t lim = cllm__atomic_load_relaxed(&m->limit[i]);
  if (cllm__add_overflow(cur, bytes, next) || (lim != 0 && *next > lim)) {
    why->used = cur;
    why->limit = lim != 0 ? lim : SIZE_MAX;
    return false;
  }
  return true;
}

/* One attempt: CLLM_OK, CLLM_ELIMIT (*why filled) or CLLM_EBUSY (signal reentry). */
static cllm_status_t reserve_once(cllm_monitor_t *m, cllm_category_t cat, size_t bytes,
                                  refusal_t *why) {
  size_t total_next, cat_next;
  if (!gate_enter(&m->gate, self_token())) return CLLM_EBUSY;
  /* The category cannot overflow when the total did not: total >= every category. */
  if (!counter_fits(m, TOT, bytes, &total_next, why) ||
      !counter_fits(m, (int)cat, bytes, &cat_next, why)) {
    gate_leave(&m->gate);
    return CLLM_ELIMIT;
  }
  cllm__atomic_store_relaxed(&m->used[TOT], total_next);
  cllm__atomic_store_relaxed(&m->used[cat], cat_next);
  raise_peak(m, TOT, total_next);
  raise_peak(m, (int)cat, cat_next);
  gate_leave(&m->gate);
  return CLLM_OK;
}

/* Ask the reclaimers for `needed` bytes; returns what they report freeing. */
static size_t run_reclaimers(cllm_monitor_t *m, cllm_category_t cat, size_t needed) {
  reclaimer_t snap[CLLM_MONITOR_MAX_RECLAIMERS];
  int idx[CLLM_MONITOR_MAX_RECLAIMERS];
  int n = 0;
  pthread_mutex_lock(&m->lock);
  for (int i = 0; i < m->n_rec; i++) {
    if (m->rec[i].removed) continue;
    m->rec[i].busy++;
    snap[n] = m->rec[i];
    idx[n++] = i;
  }
  pthread_mutex_unlock(&m->lock);
  if (n == 0) return 0;
  cllm__atomic_add_relaxed(&m->reclaim_runs, 1);
  size_t freed = 0;
  t_in_reclaimer++;
  for (int i = 0; i < n && freed < needed; i++) {
    size_t got = snap[i].fn(snap[i].user, cat, needed - freed);
    freed = got > SIZE_MAX - freed ? SIZE_MAX : freed + got;
  }
  t_in_reclaimer--;
  pthread_mutex_lock(&m->lock);
  /* Entries never move while busy (remove waits for busy == 0 before compacting). */
  for (int i = 0; i < n; i++) m->rec[idx[i]].busy--;
  pthread_cond_broadcast(&m->idle);
  pthread_mutex_unlock(&m->lock);
  cllm__atomic_add_relaxed(&m->reclaimed_bytes, freed);
  return freed;
}

/* How a reservation treats a refusal: reclaim, then the callback (RESERVE); count it
 * in try_refusals (TRY); nothing (QUIET: a batch's speculative extra credit). */
enum { RESERVE, TRY, QUIET };

static cllm_status_t reserve_impl(cllm_monitor_t *m, cllm_category_t cat, size_t bytes,
                                  int mode) {
  if (m == NULL || !cat_ok(cat)) return CLLM_EINVAL;
  if (t_in_reclaimer) return CLLM_EBUSY;
  if (bytes == 0) return CLLM_OK;
  refusal_t why;
  if (CLLM_FAULT(CLLM_FAULT_RESERVE)) {
    why.used = cllm__atomic_load_relaxed(&m->used[TOT]);
    why.limit = cllm__atomic_load_relaxed(&m->limit[TOT]);
  } else {
    cllm_status_t rc = reserve_once(m, cat, bytes, &why);
    if (CLLM_LIKELY(rc == CLLM_OK)) return CLLM_OK;
    if (rc == CLLM_EBUSY) return rc;
  }
  if (mode != RESERVE) {
    if (mode == TRY) cllm__atomic_add_relaxed(&m->try_refusals, 1);
    return CLLM_ELIMIT;
  }
  if (cllm__atomic_load_relaxed(&m->n_reclaimers) > 0) {
    /* Shortfall = used + bytes - limit, saturating. */
    size_t short_by;
    if (why.used >= why.limit) {
      if (cllm__add_overflow(bytes, why.used - why.limit, &short_by)) short_by = SIZE_MAX;
    } else {
      size_t room = why.limit - why.used;
      short_by = bytes > room ? bytes - room : bytes;
    }
    run_reclaimers(m, cat, short_by);
    cllm_status_t rc = reserve_once(m, cat, bytes, &why);
    if (rc == CLLM_OK || rc == CLLM_EBUSY) return rc;
  }
  cllm__atomic_add_relaxed(&m->refusals, 1);
  pthread_mutex_lock(&m->lock);
  cllm_limit_fn fn = m->limit_fn;
  void *user = m->limit_user;
  pthread_mutex_unlock(&m->lock);
  if (fn != NULL) fn(user, cat, why.used, bytes, why.limit);
  return CLLM_ELIMIT;
}

cllm_status_t cllm_monitor_reserve(cllm_monitor_t *m, cllm_category_t cat, size_t bytes) {
  return reserve_impl(m, cat, bytes, RESERVE);
}

cllm_status_t cllm_monitor_try_reserve(cllm_monitor_t *m, cllm_category_t cat, size_t bytes) {
  return reserve_impl(m, cat, bytes, TRY);
}

cllm_status_t cllm_monitor_release(cllm_monitor_t *m, cllm_category_t cat, size_t bytes) {
  if (m == NULL || !cat_ok(cat)) return CLLM_EINVAL;
  if (bytes == 0) return CLLM_OK;
  if (!gate_enter(&m->gate, self_token())) return CLLM_EBUSY;
  size_t cur = cllm__atomic_load_relaxed(&m->used[cat]);
  if (CLLM_LIKELY(cur >= bytes)) {
    size_t total = cllm__atomic_load_relaxed(&m->used[TOT]);
    cllm_assert_internal(total >= bytes);
    cllm__atomic_store_relaxed(&m->used[cat], cur - bytes);
    cllm__atomic_store_relaxed(&m->used[TOT], total - bytes);
    gate_leave(&m->gate);
    return CLLM_OK;
  }
  gate_leave(&m->gate);
  cllm__atomic_add_relaxed(&m->bad_releases, 1);
  cllm__warn("release of %zu bytes of %s refused: only %zu reserved", bytes,
             cllm_category_name(cat), cur);
  return CLLM_EINVAL;
}

/* ---- limits, peaks, callbacks ---------------------------------------------- */

cllm_status_t cllm_monitor_set_limit(cllm_monitor_t *m, size_t bytes) {
  if (m == NULL) return CLLM_EINVAL;
  cllm__atomic_store_relaxed(&m->limit[TOT], bytes);
  return CLLM_OK;
}

cllm_status_t cllm_monitor_set_category_limit(cllm_monitor_t *m, cllm_category_t cat,
                                              size_t bytes) {
  if (m == NULL || !cat_ok(cat)) return CLLM_EINVAL;
  cllm__atomic_store_relaxed(&m->limit[cat], bytes);
  return CLLM_OK;
}

size_t cllm_monitor_limit(const cllm_monitor_t *m) {
  return m == NULL ? 0 : cllm__atomic_load_relaxed(&m->limit[TOT]);
}

/* Counter index of `cat` (TOT for CLLM_CAT_COUNT), or -1 for bad input. */
static int pick(const cllm_monitor_t *m, cllm_category_t cat) {
  if (m == NULL || (unsigned)cat > (unsigned)CLLM_CAT_COUNT) return -1;
  return (int)cat;
}

size_t cllm_monitor_used(const cllm_monitor_t *m, cllm_category_t cat) {
  int i = pick(m, cat);
  return i < 0 ? 0 : cllm__atomic_load_relaxed(&m->used[i]);
}

size_t cllm_monitor_peak(const cllm_monitor_t *m, cllm_category_t cat) {
  int i = pick(m, cat);
  return i < 0 ? 0 : cllm__atomic_load_relaxed(&m->peak[i]);
}

cllm_status_t cllm_monitor_reset_peak(cllm_monitor_t *m) {
  if (m == NULL) return CLLM_EINVAL;
  if (!gate_enter(&m->gate, self_token())) return CLLM_EBUSY;
  for (int i = 0; i < NCTR; i++)
    cllm__atomic_store_relaxed(&m->peak[i], cllm__atomic_load_relaxed(&m->used[i]));
  gate_leave(&m->gate);
  return CLLM_OK;
}

cllm_status_t cllm_monitor_set_limit_callback(cllm_monitor_t *m, cllm_limit_fn fn, void *user) {
  if (m == NULL) return CLLM_EINVAL;
  pthread_mutex_lock(&m->lock);
  m->limit_fn = fn;
  m->limit_user = fn != NULL ? user : NULL;
  pthread_mutex_unlock(&m->lock);
  return CLLM_OK;
}

/* ---- reclaimers ------------------------------------------------------------ */

cllm_status_t cllm_monitor_add_reclaimer(cllm_monitor_t *m, cllm_reclaim_fn fn, void *user) {
  if (m == NULL || fn == NULL) return CLLM_EINVAL;
  if (t_in_reclaimer) return CLLM_EBUSY;
  cllm_status_t rc = CLLM_OK;
  pthread_mutex_lock(&m->lock);
  for (int i = 0; i < m->n_rec; i++)
    if (!m->rec[i].removed && m->rec[i].fn == fn && m->rec[i].user == user) rc = CLLM_EEXIST;
  if (rc == CLLM_OK && m->n_rec == CLLM_MONITOR_MAX_RECLAIMERS) rc = CLLM_ENOMEM;
  if (rc == CLLM_OK) {
    m->rec[m->n_rec++] = (reclaimer_t){.fn = fn, .user = user};
    cllm__atomic_add_relaxed(&m->n_reclaimers, 1);
  }
  pthread_mutex_unlock(&m->lock);
  return rc;
}

cllm_status_t cllm_monitor_remove_reclaimer(cllm_monitor_t *m, cllm_reclaim_fn fn, void *user) {
  if (m == NULL || fn == NULL) return CLLM_EINVAL;
  if (t_in_reclaimer) return CLLM_EBUSY;
  pthread_mutex_lock(&m->lock);
  int at = -1;
  for (int i = 0; i < m->n_rec && at < 0; i++)
    if (!m->rec[i].removed && m->rec[i].fn == fn && m->rec[i].user == user) at = i;
  if (at < 0) {
    pthread_mutex_unlock(&m->lock);
    return CLLM_ENOTFOUND;
  }
  m->rec[at].removed = true; /* no new run picks it up */
  cllm__atomic_sub_relaxed(&m->n_reclaimers, 1);
  /* Wait until no run is calling any entry, so entries can move. */
  for (;;) {
    bool busy = false;
    for (int i = 0; i < m->n_rec; i++) busy = busy || m->rec[i].busy != 0;
    if (!busy) break;
    pthread_cond_wait(&m->idle, &m->lock);
  }
  int k = 0;
  for (int i = 0; i < m->n_rec; i++)
    if (!m->rec[i].removed) m->rec[k++] = m->rec[i];
  m->n_rec = k;
  pthread_mutex_unlock(&m->lock);
  return CLLM_OK;
}

/* ---- stats and check --------------------------------------------------------- */

cllm_status_t cllm_monitor_stats(const cllm_monitor_t *m, cllm_monitor_stats_t *st) {
  if (m == NULL || cllm__stats_size(st, sizeof *st) == 0) return CLLM_EINVAL;
  cllm_monitor_stats_t s;
  memset(&s, 0, sizeof s);
  /* One snapshot of the counters (under the gate, unless this thread holds it). */
  bool gated = gate_enter(m->gate_w, self_token());
  s.used_bytes = cllm__atomic_load_relaxed(&m->used[TOT]);
  s.peak_bytes = cllm__atomic_load_relaxed(&m->peak[TOT]);
  s.limit_bytes = cllm__atomic_load_relaxed(&m->limit[TOT]);
  for (int i = 0; i < CLLM_CAT_COUNT; i++) {
    s.cat[i].used_bytes = cllm__atomic_load_relaxed(&m->used[i]);
    s.cat[i].peak_bytes = cllm__atomic_load_relaxed(&m->peak[i]);
    s.cat[i].limit_bytes = cllm__atomic_load_relaxed(&m->limit[i]);
  }
  if (gated) gate_leave(m->gate_w);
  s.refusals = cllm__atomic_load_relaxed(&m->refusals);
  s.reclaim_runs = cllm__atomic_load_relaxed(&m->reclaim_runs);
  s.reclaimed_bytes = cllm__atomic_load_relaxed(&m->reclaimed_bytes);
  s.bad_releases = cllm__atomic_load_relaxed(&m->bad_releases);
  s.batch_credit_bytes = cllm__atomic_load_relaxed(&m->credit);
  s.try_refusals = cllm__atomic_load_relaxed(&m->try_refusals);
  cllm__stats_out(st, &s, sizeof s);
  return CLLM_OK;
}

cllm_status_t cllm_monitor_check(const cllm_monitor_t *m) {
  if (m == NULL) return CLLM_EINVAL;
  cllm_monitor_stats_t s = {.struct_size = sizeof s};
  if (cllm_monitor_stats(m, &s) != CLLM_OK) return CLLM_EINVAL;
  size_t sum = 0;
  for (int i = 0; i < CLLM_CAT_COUNT; i++) {
    sum += s.cat[i].used_bytes;
    CLLM_CHECK(s.cat[i].peak_bytes >= s.cat[i].used_bytes, "monitor", "%s peak %zu < used %zu",
               cllm_category_name((cllm_category_t)i), s.cat[i].peak_bytes, s.cat[i].used_bytes);
  }
  CLLM_CHECK(sum == s.used_bytes, "monitor", "total %zu != sum of categories %zu", s.used_bytes,
             sum);
  CLLM_CHECK(s.peak_bytes >= s.used_bytes && s.batch_credit_bytes <= s.used_bytes, "monitor",
             "peak %zu, used %zu, credit %zu inconsistent", s.peak_bytes, s.used_bytes,
             s.batch_credit_bytes);
  return CLLM_OK;
}

/* ---- batched accounting ------------------------------------------------------- */

cllm_status_t cllm_monitor_batch_init(cllm_monitor_batch_t *b, cllm_monitor_t *m,
                                      cllm_category_t cat, size_t batch_bytes) {
  if (b == NULL || m == NULL || !cat_ok(cat) || batch_bytes > SIZE_MAX / 4) return CLLM_EINVAL;
  b->monitor = m;
  b->cat = cat;
  b->batch_bytes = batch_bytes != 0 ? batch_bytes : CLLM_MONITOR_BATCH_DEFAULT_BYTES;
  b->credit = 0;
  b->published = 0;
  return CLLM_OK;
}

/* Report the batch's credit to the monitor's stats (slow paths only). */
static void publish(cllm_monitor_batch_t *b) {
  if (b->credit >= b->published)
    cllm__atomic_add_relaxed(&b->monitor->credit, b->credit - b->published);
  else
    cllm__atomic_sub_relaxed(&b->monitor->credit, b->published - b->credit);
  b->published = b->credit;
}

cllm_status_t cllm_monitor_batch_refill_(cllm_monitor_batch_t *b, size_t bytes) {
  if (b == NULL || b->monitor == NULL) return CLLM_EINVAL;
  if (bytes <= b->credit) { /* reached only through a direct call */
    b->credit -= bytes;
    return CLLM_OK;
  }
  cllm_monitor_t *m = b->monitor;
  size_t need = bytes - b->credit, ask;
  /* Leave batch_bytes of credit after this reservation, when the limit allows. */
  if (!cllm__add_overflow(need, b->batch_bytes, &ask) &&
      reserve_impl(m, b->cat, ask, QUIET) == CLLM_OK) {
    b->credit = b->batch_bytes;
    publish(b);
    return CLLM_OK;
  }
  /* Near the limit: reserve exactly the shortfall (reclaimers may run). */
  cllm_status_t rc = cllm_monitor_reserve(m, b->cat, need);
  if (rc != CLLM_OK) return rc;
  b->credit = 0;
  publish(b);
  return CLLM_OK;
}

cllm_status_t cllm_monitor_batch_release_slow_(cllm_monitor_batch_t *b, size_t bytes) {
  if (b == NULL || b->monitor == NULL) return CLLM_EINVAL;
  size_t total;
  if (cllm__add_overflow(b->credit, bytes, &total)) return CLLM_EINVAL;
  if (total <= 2 * b->batch_bytes) { /* reached only through a direct call */
    b->credit = total;
    return CLLM_OK;
  }
  size_t give = total - b->batch_bytes;
  cllm_status_t rc = cllm_monitor_release(b->monitor, b->cat, give);
  if (rc != CLLM_OK) return rc;
  b->credit = b->batch_bytes;
  publish(b);
  return CLLM_OK;
}

cllm_status_t cllm_monitor_batch_flush(cllm_monitor_batch_t *b) {
  if (b == NULL || b->monitor == NULL) return CLLM_EINVAL;
  if (b->credit == 0) { /* the fast path may have used up credit it published */
    publish(b);
    return CLLM_OK;
  }
  cllm_status_t rc = cllm_monitor_release(b->monitor, b->cat, b->credit);
  if (rc != CLLM_OK) return rc;
  b->credit = 0;
  publish(b);
  return CLLM_OK;
}
