/* The remote tier under concurrency, as a plain program so it also runs under
 * ThreadSanitizer. Exit status 0 = all held.
 *
 * Two small caches share one fake store, each with a write-through tier (three
 * fetch threads, block events counted by a handler on the tier's thread). Three
 * worker threads per cache run requests at once: open with a prompt drawn from a
 * few shared prefixes, probe and fetch what the store has, compute the rest (each
 * row holds a value derived from all tokens up to it), verify every row, close.
 * The caches are small, so CACHED blocks are evicted while the spill threads copy
 * them, and the store fails now and then (injected). At the end: cllm_kv_check,
 * both caches fetched remote tokens, and stored / spilled / fetched events came. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include <cllm/kv_cache.h>
#include <cllm/kv_tier.h>
#include <cllm/monitor.h>

#include "support/mt_check.h"

#define WORKERS 3
#define BT 8
#define MAXTOK 160

static cllm_kv_cache_t *g_kv[2];
static cllm_kv_tier_t *g_tier[2];
static cllm_kv_fake_t *g_fake;
static long g_iters;

static uint32_t row_value(const cllm_kv_token_t *t, size_t pos) {
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i <= pos; i++) h = (h ^ (uint32_t)t[i]) * 1099511628211ULL;
  return (uint32_t)(h ^ (h >> 32));
}

static uint32_t *row_ptr(cllm_kv_cache_t *kv, uint32_t block, uint32_t off) {
  void *k;
  MT_CHECK(cllm_kv_block_layer(kv, block, 1, &k, NULL) == CLLM_OK, "layer");
  return (uint32_t *)k + (size_t)off * 4;
}

static void *worker(void *arg) {
  int id = (int)(intptr_t)arg;
  int c = id % 2;
  cllm_kv_cache_t *kv = g_kv[c];
  unsigned long long rng = 0x1234567ULL * (unsigned long long)(id + 1);
  cllm_kv_token_t tok[MAXTOK];
  cllm_kv_loc_t loc[MAXTOK];
  uint32_t table[MAXTOK / BT + 2];
  char name[32];
  for (long it = 0; it < g_iters; it++) {
    int fam = (int)(mt_rand(&rng) % 4);
    size_t n = 24 + mt_rand(&rng) % 100, shared = 16 + (size_t)fam * 16;
    for (size_t i = 0; i < n; i++)
      tok[i] = i < shared ? (cllm_kv_token_t)(fam * 1000 + (int)i) : (cllm_kv_token_t)(mt_rand(&rng) % 999);
    snprintf(name, sizeof name, "w%d-%ld", id, it);
    cllm_kv_seq_t s;
    size_t cached, avail = 0, ready = 0;
    MT_CHECK(cllm_kv_seq_open_with_prompt(kv, name, NULL, tok, n, &s, &cached) == CLLM_OK, "open");
    if (mt_rand(&rng) % 16 == 0) cllm_kv_fake_fail_next(g_fake, 1, CLLM_EIO);
    MT_CHECK(cllm_kv_tier_probe(g_tier[c], s, tok, n, &avail) == CLLM_OK, "probe");
    cllm_status_t rc = cllm_kv_tier_fetch(g_tier[c], s, tok, n, avail, &ready);
    MT_CHECK(rc == CLLM_OK || rc == CLLM_ENOMEM, "fetch %s", cllm_status_name(rc));
    size_t have = cached + ready;
    rc = cllm_kv_seq_reserve(kv, s, n - have, loc);
    if (rc == CLLM_ENOMEM) {  // every block held by the other workers: try again later
      MT_CHECK(cllm_kv_seq_close(kv, s) == CLLM_OK, "close");
      continue;
    }
    MT_CHECK(rc == CLLM_OK, "reserve %s", cllm_status_name(rc));
    for (size_t i = have; i < n; i++) {
      uint32_t *r = row_ptr(kv, loc[i - have].block, loc[i - have].offset);
      for (int e = 0; e < 4; e++) r[e] = row_value(tok, i);
    }
    MT_CHECK(cllm_kv_seq_commit(kv, s, tok + have, n - have) == CLLM_OK, "commit");
    size_t nb;
    MT_CHECK(cllm_kv_seq_block_table(kv, s, table, MAXTOK / BT + 2, &nb) == CLLM_OK, "table");
    for (size_t i = 0; i < n; i++)
      MT_CHECK(*row_ptr(kv, table[i / BT], (uint32_t)(i % BT)) == row_value(tok, i),
               "%s row %zu of %zu (cached %zu, fetched %zu)", name, i, n, cached, ready);
    MT_CHECK(cllm_kv_seq_close(kv, s) == CLLM_OK, "close");
  }
  return NULL;
}

static void noop_close(void *user) { (void)user; }

/* Block events: counted per kind; the handler runs on the tier's thread. */
static uint64_t g_events[5];
static void on_events(void *user, double ts, const cllm_kv_event_t *e, size_t n) {
  (void)user, (void)ts;
  for (size_t i = 0; i < n; i++)
    if (e[i].kind >= 1 && e[i].kind <= 4) __atomic_fetch_add(&g_events[e[i].kind], 1, __ATOMIC_RELAXED);
}

int main(void) {
  g_iters = mt_iters(200);
  cllm_set_log_fn(cllm_log_discard, NULL);
  cllm_kv_store_t st;
  MT_CHECK(cllm_kv_store_fake_create(&st, &g_fake) == CLLM_OK, "fake");
  static cllm_kv_store_ops_t borrowed;
  borrowed = *st.ops;
  borrowed.close = noop_close;
  for (int c = 0; c < 2; c++) {
    cllm_kv_config_t kc = cllm_kv_config_default();
    kc.layers = 2, kc.kv_heads = 1, kc.head_dim = 4, kc.dtype_bytes = 4;
    kc.block_tokens = BT;
    kc.capacity_blocks = 64;
    MT_CHECK(cllm_kv_cache_create(&kc, &g_kv[c]) == CLLM_OK, "cache");
    cllm_kv_tier_config_t tc = cllm_kv_tier_config_default();
    tc.store = c == 0 ? st : (cllm_kv_store_t){&borrowed, st.user};
    tc.write_through = true;
    tc.retry_ms = 1;
    tc.breaker_failures = 1000;
    tc.fetch_threads = 3;  // several probes / fetches in flight per tier
    tc.event_fn = on_events;
    tc.event_batch = 7;
    if (c == 1) tc.spill_batch = 3;
    MT_CHECK(cllm_kv_tier_create(g_kv[c], &tc, &g_tier[c]) == CLLM_OK, "tier");
  }
  pthread_t th[2 * WORKERS];
  for (int i = 0; i < 2 * WORKERS; i++)
    MT_CHECK(pthread_create(&th[i], NULL, worker, (void *)(intptr_t)i) == 0, "thread");
  for (int i = 0; i < 2 * WORKERS; i++) pthread_join(th[i], NULL);
  uint64_t remote = 0;
  for (int c = 0; c < 2; c++) {
    MT_CHECK(cllm_kv_check(g_kv[c]) == CLLM_OK, "check");
    cllm_kv_stats_t s = {.struct_size = sizeof s};
    MT_CHECK(cllm_kv_stats(g_kv[c], &s) == CLLM_OK, "stats");
    MT_CHECK(s.sequences == 0, "sequences left");
    remote += s.tier_remote_hit_tokens;
    printf("cache %d: spills %llu remote hit tokens %llu skipped %llu errors %llu\n", c,
           (unsigned long long)s.tier_spills, (unsigned long long)s.tier_remote_hit_tokens,
           (unsigned long long)s.tier_spills_skipped, (unsigned long long)s.tier_errors);
  }
  MT_CHECK(remote > 0, "no request was served from the store");
  cllm_kv_tier_destroy(g_tier[1]);
  cllm_kv_tier_destroy(g_tier[0]);  // both deliver their last events
  printf("events: stored %llu removed %llu spilled %llu fetched %llu\n",
         (unsigned long long)g_events[1], (unsigned long long)g_events[2],
         (unsigned long long)g_events[3], (unsigned long long)g_events[4]);
  MT_CHECK(g_events[1] > 0 && g_events[3] > 0 && g_events[4] > 0, "events missing");
  cllm_kv_cache_destroy(g_kv[0]);
  cllm_kv_cache_destroy(g_kv[1]);
  return 0;
}
