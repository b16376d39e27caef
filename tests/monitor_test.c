/* Criterion suite for the monitor (lib/monitor.c) and the common API (status, log,
 * version). Each Test runs in its own process, so the global monitor starts fresh. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include <cllm/monitor.h>
#include <cllm/version.h>

#include "lib/internal/fault.h"
#include "support/monitor_scenarios.h"

static cllm_monitor_t *mk(size_t limit) {
  cllm_monitor_config_t cfg = cllm_monitor_config_default();
  cfg.limit_bytes = limit;
  cllm_monitor_t *m = NULL;
  cr_assert_eq(cllm_monitor_create(&cfg, &m), CLLM_OK);
  cr_assert_not_null(m);
  return m;
}

/* ---- common API --------------------------------------------------------------- */

Test(status, every_code_has_a_name_and_text) {
#define CHECK_(name, code, text)                                  \
  cr_assert_str_eq(cllm_status_name(CLLM_##name), "CLLM_" #name); \
  cr_assert_str_eq(cllm_status_str(CLLM_##name), text);           \
  cr_assert(code <= 0);
  CLLM_STATUS_MAP(CHECK_)
#undef CHECK_
  cr_assert_eq(CLLM_OK, 0);
  cr_assert_str_eq(cllm_status_name((cllm_status_t)-999), "CLLM_UNKNOWN");
  cr_assert_str_eq(cllm_status_str((cllm_status_t)42), "unknown status");
}

Test(status, version_matches_headers) {
  cr_assert_eq(cllm_version(), (unsigned)CLLM_VERSION_HEX);
  cr_assert_str_eq(cllm_version_string(), CLLM_VERSION_STRING);
}

static char g_logged[512];
static int g_log_calls;
static void capture_log(void *user, cllm_log_level_t level, const char *msg) {
  cr_assert_eq(user, (void *)&g_log_calls);
  cr_assert_eq(level, CLLM_LOG_WARN);
  snprintf(g_logged, sizeof g_logged, "%s", msg);
  g_log_calls++;
}

Test(status, log_hook_receives_warnings_and_can_be_silenced) {
  cllm_set_log_fn(capture_log, &g_log_calls);
  cllm_monitor_t *m = mk(0);
  cr_assert_eq(cllm_monitor_release(m, CLLM_CAT_KV, 10), CLLM_EINVAL);
  cr_assert_eq(g_log_calls, 1);
  cr_assert(strstr(g_logged, "release of 10 bytes of kv refused") != NULL, "%s", g_logged);
  cllm_set_log_fn(cllm_log_discard, NULL);
  cr_assert_eq(cllm_monitor_release(m, CLLM_CAT_KV, 10), CLLM_EINVAL);
  cr_assert_eq(g_log_calls, 1);
  cllm_set_log_fn(NULL, NULL); /* default restored */
  cllm_monitor_destroy(m);
}

/* ---- life cycle and bad input ----------------------------------------------------- */

Test(monitor, create_rejects_bad_config_and_leaves_out_null) {
  cllm_monitor_t *m = (cllm_monitor_t *)0x1;
  cr_assert_eq(cllm_monitor_create(NULL, NULL), CLLM_EINVAL);
  cllm_monitor_config_t cfg = cllm_monitor_config_default();
  cfg.struct_size = 3;
  cr_assert_eq(cllm_monitor_create(&cfg, &m), CLLM_EINVAL);
  cr_assert_null(m);
  cr_assert_eq(cllm_monitor_create(NULL, &m), CLLM_OK); /* NULL config = defaults */
  cr_assert_eq(cllm_monitor_limit(m), 0);
  cllm_monitor_destroy(m);
  cllm_monitor_destroy(NULL);
  cllm_monitor_destroy(cllm_monitor_global()); /* no-op */
  cr_assert_eq(cllm_monitor_reserve(cllm_monitor_global(), CLLM_CAT_HEAP, 1), CLLM_OK);
  cr_assert_eq(cllm_monitor_release(cllm_monitor_global(), CLLM_CAT_HEAP, 1), CLLM_OK);
}

Test(monitor, create_reports_enomem_without_leaking) {
  cllm_monitor_t *m = (cllm_monitor_t *)0x1;
  cllm_fault_arm(CLLM_FAULT_MALLOC, 1);
  cr_assert_eq(cllm_monitor_create(NULL, &m), CLLM_ENOMEM);
  cr_assert_null(m);
  cllm_fault_reset();
}

Test(monitor, null_monitor_and_unknown_category_are_einval) {
  cr_assert_eq(cllm_monitor_reserve(NULL, CLLM_CAT_KV, 1), CLLM_EINVAL);
  cr_assert_eq(cllm_monitor_try_reserve(NULL, CLLM_CAT_KV, 1), CLLM_EINVAL);
  cr_assert_eq(cllm_monitor_release(NULL, CLLM_CAT_KV, 1), CLLM_EINVAL);
  cr_assert_eq(cllm_monitor_set_limit(NULL, 1), CLLM_EINVAL);
  cr_assert_eq(cllm_monitor_reset_peak(NULL), CLLM_EINVAL);
  cr_assert_eq(cllm_monitor_check(NULL), CLLM_EINVAL);
  cr_assert_eq(cllm_monitor_used(NULL, CLLM_CAT_KV), 0);
  cllm_monitor_t *m = mk(0);
  cr_assert_eq(cllm_monitor_reserve(m, CLLM_CAT_COUNT, 1), CLLM_EINVAL);
  cr_assert_eq(cllm_monitor_reserve(m, (cllm_category_t)-1, 1), CLLM_EINVAL);
  cr_assert_eq(cllm_monitor_release(m, (cllm_category_t)77, 1), CLLM_EINVAL);
  cr_assert_eq(cllm_monitor_set_category_limit(m, (cllm_category_t)9, 1), CLLM_EINVAL);
  cr_assert_eq(cllm_monitor_used(m, (cllm_category_t)9), 0);
  cr_assert_eq(cllm_monitor_stats(m, NULL), CLLM_EINVAL);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_COUNT), 0);
  cr_assert_str_eq(cllm_category_name((cllm_category_t)9), "unknown");
  cr_assert_str_eq(cllm_category_name(CLLM_CAT_STEP), "step");
  cllm_monitor_destroy(m);
}

Test(monitor, release_of_more_than_reserved_changes_nothing) {
  cllm_set_log_fn(cllm_log_discard, NULL);
  cllm_monitor_t *m = mk(0);
  cr_assert_eq(cllm_monitor_reserve(m, CLLM_CAT_KV, 100), CLLM_OK);
  cr_assert_eq(cllm_monitor_reserve(m, CLLM_CAT_STEP, 50), CLLM_OK);
  /* KV holds 100; the total would allow 150 but the category must not underflow. */
  cr_assert_eq(cllm_monitor_release(m, CLLM_CAT_KV, 101), CLLM_EINVAL);
  cr_assert_eq(cllm_monitor_release(m, CLLM_CAT_HEAP, 1), CLLM_EINVAL);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_KV), 100);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_COUNT), 150);
  cllm_monitor_stats_t st = {.struct_size = sizeof st};
  cr_assert_eq(cllm_monitor_stats(m, &st), CLLM_OK);
  cr_assert_eq(st.bad_releases, 2);
  cr_assert_eq(cllm_monitor_release(m, CLLM_CAT_KV, 100), CLLM_OK);
  cr_assert_eq(cllm_monitor_release(m, CLLM_CAT_STEP, 50), CLLM_OK);
  cr_assert_eq(cllm_monitor_release(m, CLLM_CAT_STEP, 1), CLLM_EINVAL); /* double release */
  cr_assert_eq(cllm_monitor_check(m), CLLM_OK);
  cllm_monitor_destroy(m);
}

Test(monitor, size_max_and_overflow_are_refused_cleanly) {
  cllm_monitor_t *m = mk(0); /* unlimited: only overflow can refuse */
  cr_assert_eq(cllm_monitor_reserve(m, CLLM_CAT_WEIGHTS, SIZE_MAX), CLLM_OK);
  cr_assert_eq(cllm_monitor_reserve(m, CLLM_CAT_KV, 1), CLLM_ELIMIT); /* total would wrap */
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_KV), 0);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_COUNT), SIZE_MAX);
  cr_assert_eq(cllm_monitor_release(m, CLLM_CAT_WEIGHTS, SIZE_MAX), CLLM_OK);
  cllm_monitor_t *l = mk(1000);
  cr_assert_eq(cllm_monitor_reserve(l, CLLM_CAT_KV, SIZE_MAX), CLLM_ELIMIT);
  cr_assert_eq(cllm_monitor_reserve(l, CLLM_CAT_KV, 0), CLLM_OK);
  cr_assert_eq(cllm_monitor_used(l, CLLM_CAT_COUNT), 0);
  cr_assert_eq(cllm_monitor_peak(l, CLLM_CAT_COUNT), 0);
  cr_assert_eq(cllm_monitor_check(l), CLLM_OK);
  cllm_monitor_destroy(l);
  cllm_monitor_destroy(m);
}

/* ---- limits and peaks ------------------------------------------------------------ */

Test(monitor, limits_total_and_per_category) {
  cllm_monitor_t *m = mk(1000);
  cr_assert_eq(cllm_monitor_set_category_limit(m, CLLM_CAT_STEP, 300), CLLM_OK);
  cr_assert_eq(cllm_monitor_reserve(m, CLLM_CAT_STEP, 300), CLLM_OK);
  cr_assert_eq(cllm_monitor_reserve(m, CLLM_CAT_STEP, 1), CLLM_ELIMIT);
  cr_assert_eq(cllm_monitor_reserve(m, CLLM_CAT_KV, 700), CLLM_OK);
  cr_assert_eq(cllm_monitor_reserve(m, CLLM_CAT_KV, 1), CLLM_ELIMIT);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_COUNT), 1000);
  cllm_monitor_stats_t st = {.struct_size = sizeof st};
  cr_assert_eq(cllm_monitor_stats(m, &st), CLLM_OK);
  cr_assert_eq(st.refusals, 2);
  cr_assert_eq(st.cat[CLLM_CAT_STEP].limit_bytes, 300);
  cr_assert_eq(st.limit_bytes, 1000);
  /* Lowering the limit below use is accepted; new reservations wait for room. */
  cr_assert_eq(cllm_monitor_set_limit(m, 500), CLLM_OK);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_COUNT), 1000);
  cr_assert_eq(cllm_monitor_reserve(m, CLLM_CAT_HEAP, 1), CLLM_ELIMIT);
  cr_assert_eq(cllm_monitor_release(m, CLLM_CAT_KV, 700), CLLM_OK);
  cr_assert_eq(cllm_monitor_reserve(m, CLLM_CAT_HEAP, 200), CLLM_OK);
  cr_assert_eq(cllm_monitor_reserve(m, CLLM_CAT_HEAP, 1), CLLM_ELIMIT);
  cr_assert_eq(cllm_monitor_set_limit(m, 0), CLLM_OK); /* unlimited */
  cr_assert_eq(cllm_monitor_reserve(m, CLLM_CAT_HEAP, 1 << 20), CLLM_OK);
  cr_assert_eq(cllm_monitor_check(m), CLLM_OK);
  cllm_monitor_destroy(m);
}

static int g_try_cb_calls;
static void count_cb(void *u, cllm_category_t c, size_t used, size_t req, size_t lim) {
  (void)u, (void)c, (void)used, (void)req, (void)lim;
  g_try_cb_calls++;
}

Test(monitor, try_reserve_refusals_are_counted_apart_and_never_reach_the_callback) {
  cllm_monitor_t *m = mk(100);
  cr_assert_eq(cllm_monitor_set_limit_callback(m, count_cb, NULL), CLLM_OK);
  cr_assert_eq(cllm_monitor_try_reserve(m, CLLM_CAT_KV, 101), CLLM_ELIMIT);
  cr_assert_eq(cllm_monitor_try_reserve(m, CLLM_CAT_KV, 100), CLLM_OK);
  cr_assert_eq(cllm_monitor_try_reserve(m, CLLM_CAT_KV, 1), CLLM_ELIMIT);
  cr_assert_eq(cllm_monitor_try_reserve(m, CLLM_CAT_COUNT, 1), CLLM_EINVAL);  // not a refusal
  cllm_monitor_stats_t st = {.struct_size = sizeof st};
  cr_assert_eq(cllm_monitor_stats(m, &st), CLLM_OK);
  cr_assert_eq(st.try_refusals, 2);
  cr_assert_eq(st.refusals, 0);
  cr_assert_eq(g_try_cb_calls, 0);
  cr_assert_eq(cllm_monitor_reserve(m, CLLM_CAT_KV, 1), CLLM_ELIMIT);  // this one does
  cr_assert_eq(cllm_monitor_stats(m, &st), CLLM_OK);
  cr_assert_eq(st.refusals, 1);
  cr_assert_eq(st.try_refusals, 2);
  cr_assert_eq(g_try_cb_calls, 1);
  cr_assert_eq(cllm_monitor_release(m, CLLM_CAT_KV, 100), CLLM_OK);
  cllm_monitor_destroy(m);
}

Test(monitor, peak_is_installed_value_and_reset_goes_to_current_use) {
  cllm_monitor_t *m = mk(0);
  cr_assert_eq(cllm_monitor_reserve(m, CLLM_CAT_KV, 512), CLLM_OK);
  cr_assert_eq(cllm_monitor_reserve(m, CLLM_CAT_STEP, 256), CLLM_OK);
  cr_assert_eq(cllm_monitor_release(m, CLLM_CAT_STEP, 256), CLLM_OK);
  cr_assert_eq(cllm_monitor_peak(m, CLLM_CAT_COUNT), 768);
  cr_assert_eq(cllm_monitor_peak(m, CLLM_CAT_STEP), 256);
  cr_assert_eq(cllm_monitor_reset_peak(m), CLLM_OK);
  cr_assert_eq(cllm_monitor_peak(m, CLLM_CAT_COUNT), 512); /* never below use */
  cr_assert_eq(cllm_monitor_peak(m, CLLM_CAT_STEP), 0);
  cr_assert_eq(cllm_monitor_peak(m, CLLM_CAT_KV), 512);
  cllm_monitor_destroy(m);
}

Test(monitor, stats_honours_struct_size) {
  cllm_monitor_t *m = mk(77);
  unsigned char buf[sizeof(cllm_monitor_stats_t) + 16];
  memset(buf, 0xAB, sizeof buf);
  cllm_monitor_stats_t *st = (cllm_monitor_stats_t *)buf;
  st->struct_size = offsetof(cllm_monitor_stats_t, limit_bytes) + sizeof(size_t);
  cr_assert_eq(cllm_monitor_stats(m, st), CLLM_OK);
  cr_assert_eq(st->limit_bytes, 77);
  cr_assert_eq(buf[st->struct_size], 0xAB); /* nothing written past struct_size */
  cllm_monitor_destroy(m);
}

/* ---- the seed's monitor tests (seed 10.1.1 and 10.2.1) against the C API --------- */

Test(seed_monitor, SetLimit) {
  cr_assert_eq(cllm_monitor_set_limit(cllm_monitor_global(), 1024), CLLM_OK);
  cr_assert_eq(cllm_monitor_limit(cllm_monitor_global()), 1024);
}

Test(seed_monitor, AllocateAndDeallocate) {
  cllm_monitor_t *g = cllm_monitor_global();
  cr_assert_eq(cllm_monitor_set_limit(g, 1024), CLLM_OK);
  cr_assert_eq(cllm_monitor_reserve(g, CLLM_CAT_HEAP, 512), CLLM_OK);
  cr_assert_eq(cllm_monitor_used(g, CLLM_CAT_COUNT), 512);
  cr_assert_eq(cllm_monitor_release(g, CLLM_CAT_HEAP, 256), CLLM_OK);
  cr_assert_eq(cllm_monitor_used(g, CLLM_CAT_COUNT), 256);
}

Test(seed_monitor, PeakMemory) {
  cllm_monitor_t *g = cllm_monitor_global();
  cr_assert_eq(cllm_monitor_set_limit(g, 1024), CLLM_OK);
  cr_assert_eq(cllm_monitor_reset_peak(g), CLLM_OK);
  cr_assert_eq(cllm_monitor_reserve(g, CLLM_CAT_HEAP, 512), CLLM_OK);
  cr_assert_eq(cllm_monitor_peak(g, CLLM_CAT_COUNT), 512);
  cr_assert_eq(cllm_monitor_reserve(g, CLLM_CAT_HEAP, 256), CLLM_OK);
  cr_assert_eq(cllm_monitor_peak(g, CLLM_CAT_COUNT), 768);
  cr_assert_eq(cllm_monitor_release(g, CLLM_CAT_HEAP, 256), CLLM_OK);
  cr_assert_eq(cllm_monitor_peak(g, CLLM_CAT_COUNT), 768);
}

Test(seed_monitor, MemoryLimitExceeded) {
  cllm_monitor_t *g = cllm_monitor_global();
  cr_assert_eq(cllm_monitor_set_limit(g, 1024), CLLM_OK);
  cr_assert_eq(cllm_monitor_reset_peak(g), CLLM_OK);
  cr_assert_eq(cllm_monitor_reserve(g, CLLM_CAT_HEAP, 2048), CLLM_ELIMIT);
  cr_assert_eq(cllm_monitor_used(g, CLLM_CAT_COUNT), 0);
}

/* The seed's test slept 10 ms while holding, assuming the ten threads overlap; on a
 * loaded machine (sanitizers, CI) one could finish before another started and the
 * peak came out lower. A barrier makes the overlap certain: all hold, then all
 * release. */
static pthread_barrier_t seed_bar;

static void *seed_thread(void *arg) {
  (void)arg;
  cllm_monitor_t *g = cllm_monitor_global();
  cr_assert_eq(cllm_monitor_reserve(g, CLLM_CAT_HEAP, 100 * 1024), CLLM_OK);
  pthread_barrier_wait(&seed_bar);
  cr_assert_eq(cllm_monitor_release(g, CLLM_CAT_HEAP, 100 * 1024), CLLM_OK);
  return NULL;
}

Test(seed_monitor, MultipleThreads) {
  cllm_monitor_t *g = cllm_monitor_global();
  cr_assert_eq(cllm_monitor_set_limit(g, 1024 * 1024), CLLM_OK);
  cr_assert_eq(cllm_monitor_reset_peak(g), CLLM_OK);
  pthread_t t[10];
  cr_assert_eq(pthread_barrier_init(&seed_bar, NULL, 10), 0);
  for (int i = 0; i < 10; i++) pthread_create(&t[i], NULL, seed_thread, NULL);
  for (int i = 0; i < 10; i++) pthread_join(t[i], NULL);
  pthread_barrier_destroy(&seed_bar);
  cr_assert_eq(cllm_monitor_used(g, CLLM_CAT_COUNT), 0);
  cr_assert_eq(cllm_monitor_peak(g, CLLM_CAT_COUNT), 10 * 100 * 1024);
}

/* ---- concurrency ------------------------------------------------------------------ */

Test(monitor_mt, eight_threads_never_pass_the_limit, .timeout = 120) {
  scenario_limit_race_library(8, mt_iters(200000));
}

Test(monitor_mt, the_same_test_catches_a_check_then_add_reference, .timeout = 120) {
  long over = scenario_limit_race_reference(8, 200000, 60.0);
  cr_assert_gt(over, 0, "the racy reference never overshot: the scenario cannot fail");
}

/* A signal handler that interrupts a monitor call on the same thread and calls the
 * monitor itself must get CLLM_EBUSY (or succeed), never spin on its own thread. */
static cllm_monitor_t *g_sig_mon;
static volatile sig_atomic_t g_sig_ok, g_sig_busy, g_sig_other;

static void sig_reserve(int sig) {
  (void)sig;
  cllm_status_t rc = cllm_monitor_reserve(g_sig_mon, CLLM_CAT_KV, 64);
  if (rc == CLLM_OK) {
    g_sig_ok++;
    if (cllm_monitor_release(g_sig_mon, CLLM_CAT_KV, 64) != CLLM_OK) g_sig_other++;
  } else if (rc == CLLM_EBUSY) {
    g_sig_busy++;
  } else {
    g_sig_other++;
  }
}

Test(monitor, signal_handler_reentry_is_ebusy_not_a_hang, .timeout = 60) {
  g_sig_mon = mk(0);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = sig_reserve;
  cr_assert_eq(sigaction(SIGALRM, &sa, NULL), 0);
  struct itimerval it = {{0, 50}, {0, 50}}; /* as fast as the kernel delivers */
  cr_assert_eq(setitimer(ITIMER_REAL, &it, NULL), 0);
  for (long i = 0; i < 3000000 && g_sig_busy == 0; i++) {
    cr_assert_eq(cllm_monitor_reserve(g_sig_mon, CLLM_CAT_HEAP, 128), CLLM_OK);
    cr_assert_eq(cllm_monitor_release(g_sig_mon, CLLM_CAT_HEAP, 128), CLLM_OK);
  }
  struct itimerval off = {{0, 0}, {0, 0}};
  cr_assert_eq(setitimer(ITIMER_REAL, &off, NULL), 0);
  signal(SIGALRM, SIG_IGN);
  cr_assert_eq(g_sig_other, 0);
  cr_assert_gt(g_sig_ok + g_sig_busy, 0, "no signal arrived: the test proved nothing");
  cr_assert_eq(cllm_monitor_used(g_sig_mon, CLLM_CAT_COUNT), 0);
  cr_assert_eq(cllm_monitor_check(g_sig_mon), CLLM_OK);
  cllm_monitor_destroy(g_sig_mon);
}

/* ---- limit callback and reclaimers -------------------------------------------------- */

typedef struct cb_rec {
  int calls;
  cllm_category_t cat;
  size_t used, requested, limit;
  cllm_monitor_t *m;
} cb_rec_t;

static void limit_cb(void *user, cllm_category_t cat, size_t used, size_t requested, size_t limit) {
  cb_rec_t *r = user;
  r->calls++;
  r->cat = cat, r->used = used, r->requested = requested, r->limit = limit;
  /* Callbacks never run under a monitor lock: calling back in must not deadlock. */
  cllm_monitor_stats_t st = {.struct_size = sizeof st};
  cr_assert_eq(cllm_monitor_stats(r->m, &st), CLLM_OK);
  cr_assert_eq(cllm_monitor_set_limit_callback(r->m, limit_cb, r), CLLM_OK);
  cr_assert_eq(cllm_monitor_release(r->m, CLLM_CAT_HEAP, 0), CLLM_OK);
}

Test(monitor, limit_callback_gets_the_refusal_outside_any_lock) {
  cllm_monitor_t *m = mk(1000);
  cb_rec_t r = {.m = m};
  cr_assert_eq(cllm_monitor_set_limit_callback(m, limit_cb, &r), CLLM_OK);
  cr_assert_eq(cllm_monitor_reserve(m, CLLM_CAT_KV, 600), CLLM_OK);
  cr_assert_eq(cllm_monitor_reserve(m, CLLM_CAT_STEP, 500), CLLM_ELIMIT);
  cr_assert_eq(r.calls, 1);
  cr_assert_eq(r.cat, CLLM_CAT_STEP);
  cr_assert_eq(r.used, 600);
  cr_assert_eq(r.requested, 500);
  cr_assert_eq(r.limit, 1000);
  /* try_reserve never calls back. */
  cr_assert_eq(cllm_monitor_try_reserve(m, CLLM_CAT_STEP, 500), CLLM_ELIMIT);
  cr_assert_eq(r.calls, 1);
  cr_assert_eq(cllm_monitor_set_limit_callback(m, NULL, NULL), CLLM_OK);
  cr_assert_eq(cllm_monitor_reserve(m, CLLM_CAT_STEP, 500), CLLM_ELIMIT);
  cr_assert_eq(r.calls, 1);
  cr_assert_eq(cllm_monitor_release(m, CLLM_CAT_KV, 600), CLLM_OK);
  cllm_monitor_destroy(m);
}

typedef struct pool {
  cllm_monitor_t *m;
  size_t held;  /* bytes "cached" that the reclaimer can drop */
  size_t give;  /* bytes it gives per call (0 = frees nothing) */
  int calls;
  cllm_status_t nested_reserve, nested_add;
} pool_t;

static size_t reclaim_pool(void *user, cllm_category_t cat, size_t needed) {
  pool_t *p = user;
  (void)cat;
  p->calls++;
  p->nested_reserve = cllm_monitor_reserve(p->m, CLLM_CAT_KV, 1);
  p->nested_add = cllm_monitor_add_reclaimer(p->m, reclaim_pool, NULL);
  size_t n = p->give < needed ? p->give : needed;
  if (n > p->held) n = p->held;
  if (n > 0) {
    cr_assert_eq(cllm_monitor_release(p->m, CLLM_CAT_KV, n), CLLM_OK); /* releasing is allowed */
    p->held -= n;
  }
  return n;
}

Test(monitor, reclaimer_that_frees_enough_turns_refusal_into_success) {
  cllm_monitor_t *m = mk(1000);
  pool_t p = {.m = m, .held = 800, .give = SIZE_MAX};
  cr_assert_eq(cllm_monitor_reserve(m, CLLM_CAT_KV, 800), CLLM_OK);
  cr_assert_eq(cllm_monitor_add_reclaimer(m, reclaim_pool, &p), CLLM_OK);
  cr_assert_eq(cllm_monitor_add_reclaimer(m, reclaim_pool, &p), CLLM_EEXIST);
  cr_assert_eq(cllm_monitor_reserve(m, CLLM_CAT_STEP, 500), CLLM_OK);
  cr_assert_eq(p.calls, 1);
  cr_assert_eq(p.held, 500); /* asked for exactly the shortfall: 800 + 500 - 1000 */
  cr_assert_eq(p.nested_reserve, CLLM_EBUSY);
  cr_assert_eq(p.nested_add, CLLM_EBUSY);
  cllm_monitor_stats_t st = {.struct_size = sizeof st};
  cr_assert_eq(cllm_monitor_stats(m, &st), CLLM_OK);
  cr_assert_eq(st.reclaim_runs, 1);
  cr_assert_eq(st.reclaimed_bytes, 300);
  cr_assert_eq(st.refusals, 0);
  /* try_reserve never reclaims. */
  cr_assert_eq(cllm_monitor_try_reserve(m, CLLM_CAT_STEP, 100), CLLM_ELIMIT);
  cr_assert_eq(p.calls, 1);
  cr_assert_eq(cllm_monitor_remove_reclaimer(m, reclaim_pool, &p), CLLM_OK);
  cr_assert_eq(cllm_monitor_remove_reclaimer(m, reclaim_pool, &p), CLLM_ENOTFOUND);
  cr_assert_eq(cllm_monitor_check(m), CLLM_OK);
  cllm_monitor_destroy(m);
}

Test(monitor, reclaimer_that_frees_nothing_gives_elimit_not_a_loop) {
  cllm_monitor_t *m = mk(1000);
  pool_t p = {.m = m, .held = 800, .give = 0};
  cb_rec_t r = {.m = m};
  cr_assert_eq(cllm_monitor_set_limit_callback(m, limit_cb, &r), CLLM_OK);
  cr_assert_eq(cllm_monitor_reserve(m, CLLM_CAT_KV, 800), CLLM_OK);
  cr_assert_eq(cllm_monitor_add_reclaimer(m, reclaim_pool, &p), CLLM_OK);
  cr_assert_eq(cllm_monitor_reserve(m, CLLM_CAT_STEP, 500), CLLM_ELIMIT);
  cr_assert_eq(p.calls, 1); /* asked once, retried once, then refused */
  cr_assert_eq(r.calls, 1); /* and the limit callback ran after the reclaimers */
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_COUNT), 800);
  /* A reclaimer that frees only part: still refused, nothing left half-reserved. */
  p.give = 100;
  cr_assert_eq(cllm_monitor_reserve(m, CLLM_CAT_STEP, 500), CLLM_ELIMIT);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_COUNT), 700);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_STEP), 0);
  cr_assert_eq(cllm_monitor_remove_reclaimer(m, reclaim_pool, &p), CLLM_OK);
  cllm_monitor_destroy(m);
}

Test(monitor, reclaimer_table_bad_input_and_capacity) {
  cllm_monitor_t *m = mk(0);
  cr_assert_eq(cllm_monitor_add_reclaimer(NULL, reclaim_pool, NULL), CLLM_EINVAL);
  cr_assert_eq(cllm_monitor_add_reclaimer(m, NULL, NULL), CLLM_EINVAL);
  cr_assert_eq(cllm_monitor_remove_reclaimer(m, NULL, NULL), CLLM_EINVAL);
  int tags[CLLM_MONITOR_MAX_RECLAIMERS + 1];
  for (int i = 0; i < CLLM_MONITOR_MAX_RECLAIMERS; i++)
    cr_assert_eq(cllm_monitor_add_reclaimer(m, reclaim_pool, &tags[i]), CLLM_OK);
  cr_assert_eq(cllm_monitor_add_reclaimer(m, reclaim_pool, &tags[CLLM_MONITOR_MAX_RECLAIMERS]),
               CLLM_ENOMEM);
  for (int i = 0; i < CLLM_MONITOR_MAX_RECLAIMERS; i++)
    cr_assert_eq(cllm_monitor_remove_reclaimer(m, reclaim_pool, &tags[i]), CLLM_OK);
  cllm_monitor_destroy(m);
}

Test(monitor, injected_reserve_failure_runs_the_refusal_path) {
  cllm_monitor_t *m = mk(0);
  cllm_fault_arm(CLLM_FAULT_RESERVE, 1);
  cr_assert_eq(cllm_monitor_reserve(m, CLLM_CAT_KV, 10), CLLM_ELIMIT);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_COUNT), 0);
  cr_assert_eq(cllm_monitor_reserve(m, CLLM_CAT_KV, 10), CLLM_OK);
  cr_assert_eq(cllm_monitor_release(m, CLLM_CAT_KV, 10), CLLM_OK);
  cllm_fault_reset();
  cllm_monitor_destroy(m);
}

/* ---- batched counter ---------------------------------------------------------------- */

Test(monitor_batch, serves_from_credit_and_bounds_the_slack) {
  cllm_monitor_t *m = mk(0);
  cllm_monitor_batch_t b;
  cr_assert_eq(cllm_monitor_batch_init(&b, m, CLLM_CAT_HEAP, 4096), CLLM_OK);
  cr_assert_eq(cllm_monitor_batch_reserve(&b, 100), CLLM_OK);
  /* One refill of need + batch: used = 100 + 4096, credit 4096. */
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_HEAP), 4196);
  for (int i = 0; i < 40; i++) cr_assert_eq(cllm_monitor_batch_reserve(&b, 100), CLLM_OK);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_HEAP), 4196); /* served from credit */
  for (int i = 0; i < 1000; i++) {
    cr_assert_eq(cllm_monitor_batch_reserve(&b, 64), CLLM_OK);
    size_t used = cllm_monitor_used(m, CLLM_CAT_HEAP);
    size_t handed = 4100 + (size_t)(i + 1) * 64;
    cr_assert(used >= handed && used - handed <= 2 * 4096, "slack %zu", used - handed);
  }
  size_t handed = 4100 + 1000 * 64;
  cr_assert_eq(cllm_monitor_batch_release(&b, handed), CLLM_OK);
  cr_assert(cllm_monitor_used(m, CLLM_CAT_HEAP) <= 2 * 4096);
  cr_assert_eq(cllm_monitor_batch_flush(&b), CLLM_OK);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_HEAP), 0);
  cllm_monitor_stats_t st = {.struct_size = sizeof st};
  cr_assert_eq(cllm_monitor_stats(m, &st), CLLM_OK);
  cr_assert_eq(st.batch_credit_bytes, 0);
  cr_assert_eq(cllm_monitor_check(m), CLLM_OK);
  cllm_monitor_destroy(m);
}

/* Credit published at a refill and then used up on the fast path: a flush with no
 * credit left still reports 0, so the stats and the check agree with the batch. */
Test(monitor_batch, flush_of_used_up_credit_clears_what_was_published) {
  cllm_monitor_t *m = mk(0);
  cllm_monitor_batch_t b;
  cr_assert_eq(cllm_monitor_batch_init(&b, m, CLLM_CAT_HEAP, 4096), CLLM_OK);
  cr_assert_eq(cllm_monitor_batch_reserve(&b, 100), CLLM_OK);  /* refill: 4096 published */
  cr_assert_eq(cllm_monitor_batch_reserve(&b, 4096), CLLM_OK); /* fast path: credit 0 */
  cr_assert_eq(b.credit, 0);
  cr_assert_eq(cllm_monitor_batch_flush(&b), CLLM_OK);
  cllm_monitor_stats_t st = {.struct_size = sizeof st};
  cr_assert_eq(cllm_monitor_stats(m, &st), CLLM_OK);
  cr_assert_eq(st.batch_credit_bytes, 0, "stale credit %zu", st.batch_credit_bytes);
  cr_assert_eq(cllm_monitor_release(m, CLLM_CAT_HEAP, 4196), CLLM_OK);
  cr_assert_eq(cllm_monitor_check(m), CLLM_OK, "credit <= used once all is released");
  cllm_monitor_destroy(m);
}

Test(monitor_batch, exact_near_the_limit) {
  cllm_monitor_t *m = mk(10000);
  cllm_monitor_batch_t b;
  cr_assert_eq(cllm_monitor_batch_init(&b, m, CLLM_CAT_HEAP, 4096), CLLM_OK);
  size_t got = 0;
  while (cllm_monitor_batch_reserve(&b, 100) == CLLM_OK) got += 100;
  /* Every byte up to the limit can be handed out, and never more. */
  cr_assert_eq(got, 10000);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_COUNT), 10000);
  cr_assert_eq(cllm_monitor_batch_release(&b, got), CLLM_OK);
  cr_assert_eq(cllm_monitor_batch_flush(&b), CLLM_OK);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_COUNT), 0);
  cllm_monitor_destroy(m);
}

Test(monitor_batch, over_release_is_refused_when_credit_returns) {
  cllm_set_log_fn(cllm_log_discard, NULL);
  cllm_monitor_t *m = mk(0);
  cllm_monitor_batch_t b;
  cr_assert_eq(cllm_monitor_batch_init(&b, m, CLLM_CAT_HEAP, 1024), CLLM_OK);
  cr_assert_eq(cllm_monitor_batch_reserve(&b, 10), CLLM_OK);
  cr_assert_eq(cllm_monitor_batch_release(&b, 10), CLLM_OK);
  size_t credit = b.credit;
  cr_assert_eq(cllm_monitor_batch_release(&b, 100000), CLLM_EINVAL);
  cr_assert_eq(b.credit, credit); /* unchanged */
  cr_assert_eq(cllm_monitor_batch_flush(&b), CLLM_OK);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_COUNT), 0);
  cr_assert_eq(cllm_monitor_batch_init(NULL, m, CLLM_CAT_HEAP, 0), CLLM_EINVAL);
  cr_assert_eq(cllm_monitor_batch_init(&b, NULL, CLLM_CAT_HEAP, 0), CLLM_EINVAL);
  cr_assert_eq(cllm_monitor_batch_init(&b, m, CLLM_CAT_COUNT, 0), CLLM_EINVAL);
  cr_assert_eq(cllm_monitor_batch_init(&b, m, CLLM_CAT_HEAP, SIZE_MAX), CLLM_EINVAL);
  cr_assert_eq(cllm_monitor_batch_reserve(NULL, 1), CLLM_EINVAL);
  cr_assert_eq(cllm_monitor_batch_release(NULL, 1), CLLM_EINVAL);
  cllm_monitor_destroy(m);
}

typedef struct batch_ctx {
  cllm_monitor_t *m;
  long iters;
  _Atomic long refused;
} batch_ctx_t;

static void *batch_worker(void *arg) {
  batch_ctx_t *c = arg;
  cllm_monitor_batch_t b;
  cr_assert_eq(cllm_monitor_batch_init(&b, c->m, CLLM_CAT_HEAP, 8192), CLLM_OK);
  unsigned long long s = (unsigned long long)(uintptr_t)&b;
  size_t held = 0;
  for (long i = 0; i < c->iters; i++) {
    size_t n = 16 + mt_rand(&s) % 2048;
    if (cllm_monitor_batch_reserve(&b, n) == CLLM_OK) held += n;
    else atomic_fetch_add(&c->refused, 1);
    cr_assert_leq(cllm_monitor_used(c->m, CLLM_CAT_COUNT), 1 << 20);
    if (held > 64 * 1024) {
      cr_assert_eq(cllm_monitor_batch_release(&b, held), CLLM_OK);
      held = 0;
    }
  }
  cr_assert_eq(cllm_monitor_batch_release(&b, held), CLLM_OK);
  cr_assert_eq(cllm_monitor_batch_flush(&b), CLLM_OK);
  return NULL;
}

Test(monitor_batch, eight_threads_balance_to_zero_under_a_limit, .timeout = 120) {
  cllm_monitor_t *m = mk(1 << 20);
  batch_ctx_t c = {.m = m, .iters = mt_iters(100000)};
  pthread_t t[8];
  for (int i = 0; i < 8; i++) pthread_create(&t[i], NULL, batch_worker, &c);
  for (int i = 0; i < 8; i++) pthread_join(t[i], NULL);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_COUNT), 0);
  cr_assert_leq(cllm_monitor_peak(m, CLLM_CAT_COUNT), 1 << 20);
  cr_assert_eq(cllm_monitor_check(m), CLLM_OK);
  cllm_monitor_destroy(m);
}
