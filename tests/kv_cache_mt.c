/* The KV cache under concurrency, as a plain program so it also runs under
 * ThreadSanitizer (Criterion cannot start there). Exit status 0 = all held.
 *
 * 8 worker threads run sequences at once on one small cache (blocks run out, so
 * CACHED blocks are evicted all the time): open with a prompt drawn from a few
 * shared prefixes (prefix hits), reserve, write every row with a value derived
 * from the sequence's salt and all its tokens so far, commit, sometimes fork, and
 * after every step re-read all of the sequence's rows: a block handed to the wrong
 * prompt or written by another sequence shows up as a wrong row. Two of the
 * workers also use the copy API. A ninth thread reserves and releases step memory
 * on the same limited monitor, so the cache's reclaimer runs concurrently.
 * At the end: cllm_kv_check and the monitor figure.
 *
 * Preemption is off here: a preempted sequence's blocks are reused at once, so a
 * caller must not be writing them at that moment (see kv_cache.h); preemption is
 * covered single-threaded in kv_cache_test.c.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include <cllm/kv_cache.h>
#include <cllm/monitor.h>

#include "support/mt_check.h"

#define THREADS 8
#define BT 8
#define MAXTOK 256

static cllm_kv_cache_t *g_kv;
static cllm_monitor_t *g_mon;
static long g_iters;
static atomic_int g_running;
static atomic_long g_hits, g_enomem, g_rows;

static uint32_t row_value(uint64_t salt, const cllm_kv_token_t *t, size_t pos) {
  uint64_t h = salt * 0x9e3779b97f4a7c15ULL + 1;
  for (size_t i = 0; i <= pos; i++) h = (h ^ (uint32_t)t[i]) * 0x100000001b3ULL;
  return (uint32_t)(h ^ (h >> 32));
}

typedef struct wseq {
  cllm_kv_seq_t h;
  uint64_t salt;
  size_t len;
  cllm_kv_token_t tok[MAXTOK];
  uint32_t row[MAXTOK];
} wseq_t;

/* layers 2, kv_heads 2, head_dim 64, fp32: a row is ROW floats per layer, a block's
 * share of a pool one page (so the reclaimer can give pages back); rows are checked
 * by their first 8 words. */
#define ROW 128
static void write_row(cllm_kv_loc_t loc, uint32_t val) {
  for (uint32_t l = 0; l < 2; l++) {
    uint32_t *k, *v;
    MT_CHECK(cllm_kv_block_layer(g_kv, loc.block, l, (void **)&k, (void **)&v) == CLLM_OK, "ptr");
    for (int j = 0; j < 8; j++) {
      k[loc.offset * ROW + j] = val ^ l;
      v[loc.offset * ROW + j] = ~val ^ l;
    }
  }
}

static void verify(const wseq_t *s, const char *id) {
  uint32_t table[MAXTOK / BT + 1];
  size_t n = 0;
  MT_CHECK(cllm_kv_seq_block_table(g_kv, s->h, table, MAXTOK / BT + 1, &n) == CLLM_OK, "table %s", id);
  MT_CHECK(n == (s->len + BT - 1) / BT, "%s: %zu blocks for %zu tokens", id, n, s->len);
  for (size_t p = 0; p < s->len; p++) {
    for (uint32_t l = 0; l < 2; l++) {
      uint32_t *k, *v;
      MT_CHECK(cllm_kv_block_layer(g_kv, table[p / BT], l, (void **)&k, (void **)&v) == CLLM_OK, "p");
      uint32_t o = (uint32_t)(p % BT) * ROW;
      MT_CHECK(k[o] == (s->row[p] ^ l) && k[o + 7] == (s->row[p] ^ l) && v[o + 3] == (~s->row[p] ^ l),
               "%s row %zu layer %u changed: %08x, wanted %08x", id, p, l, k[o], s->row[p] ^ l);
    }
  }
  atomic_fetch_add_explicit(&g_rows, (long)s->len, memory_order_relaxed);
}

/* Grow s by n tokens: reserve, write, commit. false on ENOMEM / ELIMIT. */
static bool grow(wseq_t *s, size_t n, unsigned long long *rng, const char *id) {
  if (s->len + n > MAXTOK) n = MAXTOK - s->len;
  if (n == 0) return true;
  cllm_kv_loc_t loc[MAXTOK];
  cllm_status_t rc = cllm_kv_seq_reserve(g_kv, s->h, n, loc);
  if (rc == CLLM_ENOMEM || rc == CLLM_ELIMIT) {
    atomic_fetch_add_explicit(&g_enomem, 1, memory_order_relaxed);
    return false;
  }
  MT_CHECK(rc == CLLM_OK, "%s reserve: %s", id, cllm_status_name(rc));
  for (size_t k = 0; k < n; k++) {
    size_t p = s->len + k;
    s->tok[p] = (cllm_kv_token_t)(mt_rand(rng) % 3 == 0 ? (long long)(mt_rand(rng) % 1000)
                                                       : (long long)p);
    s->row[p] = row_value(s->salt, s->tok, p);
    write_row(loc[k], s->row[p]);
  }
  MT_CHECK(cllm_kv_seq_commit(g_kv, s->h, s->tok + s->len, n) == CLLM_OK, "%s commit", id);
  s->len += n;
  return true;
}

static void copy_api_step(int t, long it, unsigned long long *rng) {
  char id[32];
  snprintf(id, sizeof id, "entry-%d-%ld", t, (long)(mt_rand(rng) % 16));
  static _Thread_local float buf[1024], out[1024], vout[512];
  size_t n = 64 + mt_rand(rng) % 512;
  float tag = (float)(mt_rand(rng) % 100000);
  for (size_t i = 0; i < n; i++) buf[i] = tag + (float)i;
  cllm_status_t rc = cllm_kv_put(g_kv, id, buf, n, buf, n / 2);
  MT_CHECK(rc == CLLM_OK || rc == CLLM_ENOMEM || rc == CLLM_ELIMIT, "put: %s", cllm_status_name(rc));
  size_t nk = 0, nv = 0;
  rc = cllm_kv_get(g_kv, id, out, 1024, &nk, vout, 512, &nv);
  if (rc == CLLM_OK) {
    /* the entry may have been replaced by this thread only (ids are per thread) */
    MT_CHECK(nv == nk / 2, "entry %s sizes %zu/%zu", id, nk, nv);
    for (size_t i = 1; i < nk; i++) MT_CHECK(out[i] == out[0] + (float)i, "entry %s keys", id);
    for (size_t i = 0; i < nv; i++) MT_CHECK(vout[i] == out[i], "entry %s values", id);
  } else {
    MT_CHECK(rc == CLLM_ENOTFOUND || rc == CLLM_ERANGE, "get: %s", cllm_status_name(rc));
  }
  (void)it;
}

static void *worker(void *arg) {
  int t = (int)(intptr_t)arg;
  unsigned long long rng = 0x1234567ULL * (unsigned long long)(t + 1);
  wseq_t *s = calloc(2, sizeof *s);
  for (long it = 0; it < g_iters; it++) {
    char id[32], cid[32];
    snprintf(id, sizeof id, "t%d-%ld", t, it);
    /* a prompt from one of 4 shared prefixes, salts 0/1 */
    s[0].salt = mt_rand(&rng) % 2;
    size_t plen = 8 + mt_rand(&rng) % 80;
    int base = (int)(mt_rand(&rng) % 4);
    cllm_kv_token_t prompt[MAXTOK];
    for (size_t i = 0; i < plen; i++) prompt[i] = (cllm_kv_token_t)(base * 100000 + (int)i);
    cllm_kv_seq_opts_t o = {.salt = s[0].salt};
    size_t cached = 0;
    MT_CHECK(cllm_kv_seq_open_with_prompt(g_kv, id, &o, prompt, plen, &s[0].h, &cached) == CLLM_OK,
             "open %s", id);
    if (cached > 0) atomic_fetch_add_explicit(&g_hits, 1, memory_order_relaxed);
    memcpy(s[0].tok, prompt, plen * sizeof *prompt);
    for (size_t p = 0; p < cached; p++) s[0].row[p] = row_value(s[0].salt, s[0].tok, p);
    s[0].len = cached;
    verify(&s[0], id);  // shared blocks hold exactly this prompt's rows
    /* the rest of the prompt: must be the prompt's own tokens */
    bool ok = true;
    {
      size_t n = plen - cached;
      cllm_kv_loc_t loc[MAXTOK];
      cllm_status_t rc = cllm_kv_seq_reserve(g_kv, s[0].h, n, loc);
      if (rc == CLLM_OK) {
        for (size_t k = 0; k < n; k++) {
          s[0].row[cached + k] = row_value(s[0].salt, s[0].tok, cached + k);
          write_row(loc[k], s[0].row[cached + k]);
        }
        MT_CHECK(cllm_kv_seq_commit(g_kv, s[0].h, prompt + cached, n) == CLLM_OK, "commit");
        s[0].len = plen;
      } else {
        MT_CHECK(rc == CLLM_ENOMEM || rc == CLLM_ELIMIT, "prompt reserve: %s", cllm_status_name(rc));
        atomic_fetch_add_explicit(&g_enomem, 1, memory_order_relaxed);
        ok = false;
      }
    }
    bool forked = false;
    if (ok && mt_rand(&rng) % 4 == 0) {
      snprintf(cid, sizeof cid, "t%d-%ld-child", t, it);
      MT_CHECK(cllm_kv_seq_fork(g_kv, s[0].h, cid, &s[1].h) == CLLM_OK, "fork");
      cllm_kv_seq_t keep = s[1].h;
      s[1] = s[0];
      s[1].h = keep;
      forked = true;
    }
    for (int step = 0; ok && step < 12; step++) {
      ok = grow(&s[0], 1 + mt_rand(&rng) % 6, &rng, id);
      if (ok) verify(&s[0], id);
      if (forked && grow(&s[1], 1 + mt_rand(&rng) % 6, &rng, cid)) verify(&s[1], cid);
      if (forked) verify(&s[0], id);
      if (t < 2) copy_api_step(t, it, &rng);
    }
    if (forked) MT_CHECK(cllm_kv_seq_close(g_kv, s[1].h) == CLLM_OK, "close child");
    MT_CHECK(cllm_kv_seq_close(g_kv, s[0].h) == CLLM_OK, "close");
    MT_CHECK(cllm_kv_seq_close(g_kv, s[0].h) == CLLM_ENOTFOUND, "double close");
  }
  free(s);
  return NULL;
}

static void *step_memory(void *arg) {
  (void)arg;
  size_t bytes = 3 * cllm_kv_block_bytes(g_kv);
  while (atomic_load(&g_running) > 0) {
    if (cllm_monitor_reserve(g_mon, CLLM_CAT_STEP, bytes) == CLLM_OK)
      MT_CHECK(cllm_monitor_release(g_mon, CLLM_CAT_STEP, bytes) == CLLM_OK, "release");
    sched_yield();
  }
  return NULL;
}

int main(void) {
  g_iters = mt_iters(150);
  cllm_monitor_config_t mc = cllm_monitor_config_default();
  MT_CHECK(cllm_monitor_create(&mc, &g_mon) == CLLM_OK, "monitor");
  cllm_kv_config_t c = cllm_kv_config_default();
  c.layers = 2;
  c.kv_heads = 2;
  c.head_dim = 64;
  c.populate = false;  // committed page by page: the charge follows the blocks used
  c.dtype_bytes = 4;
  c.block_tokens = BT;
  c.capacity_blocks = 96;
  c.monitor = g_mon;
  c.copy_budget_bytes = 24 * (size_t)16384;  // 24 blocks
  MT_CHECK(cllm_kv_cache_create(&c, &g_kv) == CLLM_OK, "create");
  MT_CHECK(cllm_monitor_set_limit(g_mon, 92 * cllm_kv_block_bytes(g_kv)) == CLLM_OK, "limit");
  pthread_t th[THREADS], stepper;
  atomic_store(&g_running, THREADS);
  MT_CHECK(pthread_create(&stepper, NULL, step_memory, NULL) == 0, "thread");
  for (int t = 0; t < THREADS; t++)
    MT_CHECK(pthread_create(&th[t], NULL, worker, (void *)(intptr_t)t) == 0, "thread");
  for (int t = 0; t < THREADS; t++) {
    pthread_join(th[t], NULL);
    atomic_fetch_sub(&g_running, 1);
  }
  pthread_join(stepper, NULL);
  MT_CHECK(cllm_kv_check(g_kv) == CLLM_OK, "check at the end");
  cllm_kv_stats_t st = {.struct_size = sizeof st};
  MT_CHECK(cllm_kv_stats(g_kv, &st) == CLLM_OK, "stats");
  MT_CHECK(st.sequences == 0 && st.blocks_active == st.copy_used_bytes / st.block_bytes,
           "sequences left: %zu, active %zu", st.sequences, st.blocks_active);
  MT_CHECK(cllm_monitor_used(g_mon, CLLM_CAT_KV) == st.charged_bytes, "monitor figure");
  MT_CHECK(st.resident_bytes <= st.charged_bytes, "resident %zu > charged %zu", st.resident_bytes,
           st.charged_bytes);
  MT_CHECK(atomic_load(&g_hits) > 0, "no prefix was ever shared");
  MT_CHECK(st.evictions > 0, "no cached block was ever evicted");
  printf("kv_cache_mt: %ld rows verified, %ld prefix hits, %ld refusals, %llu evictions, "
         "%llu reclaimed, %llu copies on write\n",
         atomic_load(&g_rows), atomic_load(&g_hits), atomic_load(&g_enomem),
         (unsigned long long)st.evictions, (unsigned long long)st.reclaimed_blocks,
         (unsigned long long)st.cow_copies);
  cllm_kv_cache_destroy(g_kv);
  MT_CHECK(cllm_monitor_used(g_mon, CLLM_CAT_COUNT) == 0, "bytes left in the monitor");
  cllm_monitor_destroy(g_mon);
  return 0;
}
