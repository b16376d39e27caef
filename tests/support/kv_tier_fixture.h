/* The fixture of the KV tier suites (tests/kv_tier*_test.c): caches of 4-token blocks
 * on a private monitor, the fake store and tiers on it, rows whose values are a
 * function of position and token (written by compute, checked by expect_rows), and two
 * caches A and B sharing one store (A serves a prompt, B fetches it). A fixture that
 * cannot be built fails the test (cr_assert). */
#ifndef CLLM_TESTS_KV_TIER_FIXTURE_H
#define CLLM_TESTS_KV_TIER_FIXTURE_H

#include <criterion/criterion.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cllm/kv_cache.h>
#include <cllm/kv_tier.h>
#include <cllm/monitor.h>

#include "kv_test_util.h"

/* The shape of small_cfg(m, n, 4) (layers, heads, head dim, dtype bytes, block tokens). */
static const cllm_kv_shape_t SHAPE = {2, 1, 4, 4, 4, 0};

/* A fake store (its tier closes it); *fake may be NULL. */
static inline cllm_kv_store_t fake_store(cllm_kv_fake_t **fake) {
  cllm_kv_store_t st;
  cr_assert_eq(cllm_kv_store_fake_create(&st, fake), CLLM_OK);
  return st;
}

static inline void noop_close(void *user) { (void)user; }

/* A second handle on a store that the tier will not close (two tiers, one store). */
static inline cllm_kv_store_t borrowed(cllm_kv_store_t s, cllm_kv_store_ops_t *ops) {
  *ops = *s.ops;
  ops->close = noop_close;
  return (cllm_kv_store_t){ops, s.user};
}

/* The defaults on `store`, model id "test-model". */
static inline cllm_kv_tier_config_t tier_cfg(cllm_kv_store_t store) {
  cllm_kv_tier_config_t tc = cllm_kv_tier_config_default();
  tc.store = store;
  tc.model_id = "test-model";
  tc.model_id_len = 10;
  return tc;
}

/* A tier on `store`, write-through or write-back, 100 ms deadlines, 20 ms retries. */
static inline cllm_kv_tier_t *mk_tier(cllm_kv_cache_t *kv, cllm_kv_store_t store, bool wt) {
  cllm_kv_tier_config_t tc = tier_cfg(store);
  tc.write_through = wt;
  tc.op_timeout_ms = 100;
  tc.retry_ms = 20;
  cllm_kv_tier_t *t = NULL;
  cllm_status_t rc = cllm_kv_tier_create(kv, &tc, &t);
  cr_assert_eq(rc, CLLM_OK, "tier create: %s", cllm_status_name(rc));
  return t;
}

/* The K/V value written for a token: a function of the token position and id. */
static inline float kv_val(size_t pos, cllm_kv_token_t tok, uint32_t layer, int v, uint32_t e) {
  return (float)(pos * 131 + (size_t)tok * 7 + layer * 3 + (uint32_t)v * 1000003u + e);
}

/* Reserve, write K/V of tokens [from, n) and commit them. */
static inline void compute(cllm_kv_cache_t *kv, cllm_kv_seq_t s, const cllm_kv_token_t *t,
                           size_t from, size_t n) {
  cllm_kv_loc_t *locs = calloc(n - from, sizeof *locs);
  cr_assert_eq(cllm_kv_seq_reserve(kv, s, n - from, locs), CLLM_OK);
  for (size_t i = from; i < n; i++) {
    for (uint32_t l = 0; l < 2; l++) {
      void *k, *v;
      cr_assert_eq(cllm_kv_block_layer(kv, locs[i - from].block, l, &k, &v), CLLM_OK);
      float *kr = (float *)k + (size_t)locs[i - from].offset * 4;
      float *vr = (float *)v + (size_t)locs[i - from].offset * 4;
      for (uint32_t e = 0; e < 4; e++) {
        kr[e] = kv_val(i, t[i], l, 0, e);
        vr[e] = kv_val(i, t[i], l, 1, e);
      }
    }
  }
  cr_assert_eq(cllm_kv_seq_commit(kv, s, t + from, n - from), CLLM_OK);
  free(locs);
}

/* Open `id` with the prompt t[0..n), compute what is not cached, close; returns the
 * cached tokens. */
static inline size_t serve(cllm_kv_cache_t *kv, const char *id, const cllm_kv_seq_opts_t *o,
                           const cllm_kv_token_t *t, size_t n) {
  cllm_kv_seq_t s;
  size_t cached;
  cr_assert_eq(cllm_kv_seq_open_with_prompt(kv, id, o, t, n, &s, &cached), CLLM_OK);
  compute(kv, s, t, cached, n);
  cr_assert_eq(cllm_kv_seq_close(kv, s), CLLM_OK);
  return cached;
}

/* Every row of the sequence's first n_tok positions holds kv_val. */
static inline void expect_rows(cllm_kv_cache_t *kv, cllm_kv_seq_t s, const cllm_kv_token_t *t,
                               size_t n_tok) {
  uint32_t tab[256];
  size_t nb = table(kv, s, tab, 256);
  cr_assert_geq(nb * 4, n_tok);
  for (size_t i = 0; i < n_tok; i++) {
    for (uint32_t l = 0; l < 2; l++) {
      void *k, *v;
      cr_assert_eq(cllm_kv_block_layer(kv, tab[i / 4], l, &k, &v), CLLM_OK);
      for (uint32_t e = 0; e < 4; e++) {
        cr_assert_eq(((float *)k)[(i % 4) * 4 + e], kv_val(i, t[i], l, 0, e), "pos %zu", i);
        cr_assert_eq(((float *)v)[(i % 4) * 4 + e], kv_val(i, t[i], l, 1, e), "pos %zu", i);
      }
    }
  }
}

/* ---- two caches, one store -------------------------------------------------------------- */

typedef struct pair {
  cllm_monitor_t *m;
  cllm_kv_cache_t *a, *b;
  cllm_kv_tier_t *ta, *tb;
  cllm_kv_fake_t *fake;
  cllm_kv_store_ops_t ops_b;  // the store's ops without close (borrowed)
} pair_t;

/* Caches A and B of `blocks` blocks on one monitor, and the store (no tiers yet). */
static inline cllm_kv_store_t pair_caches(pair_t *p, size_t blocks) {
  memset(p, 0, sizeof *p);
  p->m = mk_monitor(0);
  cllm_kv_config_t c = small_cfg(p->m, blocks, 4);
  p->a = mk(&c);
  p->b = mk(&c);
  return fake_store(&p->fake);
}

/* The same with a tier each (mk_tier); A's closes the store. */
static inline void pair_up(pair_t *p, size_t blocks, bool wt) {
  cllm_kv_store_t st = pair_caches(p, blocks);
  p->ta = mk_tier(p->a, st, wt);
  p->tb = mk_tier(p->b, borrowed(st, &p->ops_b), wt);
}

static inline void pair_down(pair_t *p) {
  check(p->a);
  check(p->b);
  cllm_kv_tier_destroy(p->tb);
  cllm_kv_tier_destroy(p->ta);
  cllm_kv_cache_destroy(p->a);
  cllm_kv_cache_destroy(p->b);
  cllm_monitor_destroy(p->m);
}

/* A computes the prompt and closes; its blocks reach the store. */
static inline void a_serves(pair_t *p, const cllm_kv_token_t *t, size_t n, uint64_t salt) {
  cllm_kv_seq_opts_t o = {.salt = salt};
  (void)serve(p->a, "a", &o, t, n);
  cr_assert_eq(cllm_kv_tier_flush(p->ta, 5000), CLLM_OK);
}

/* B opens the prompt (nothing cached), probes and fetches all the store has; returns
 * the fetched tokens, the sequence's length. */
static inline size_t b_fetches(pair_t *p, const cllm_kv_token_t *t, size_t n, uint64_t salt,
                               cllm_kv_seq_t *out) {
  cllm_kv_seq_opts_t o = {.salt = salt};
  size_t cached, avail, ready;
  cr_assert_eq(cllm_kv_seq_open_with_prompt(p->b, "b", &o, t, n, out, &cached), CLLM_OK);
  cr_assert_eq(cached, 0);
  cr_assert_eq(cllm_kv_tier_probe(p->tb, *out, t, n, &avail), CLLM_OK);
  cr_assert_eq(cllm_kv_tier_fetch(p->tb, *out, t, n, avail, &ready), CLLM_OK);
  size_t len;
  cr_assert_eq(cllm_kv_seq_length(p->b, *out, &len), CLLM_OK);
  cr_assert_eq(len, ready);
  return ready;
}

#endif /* CLLM_TESTS_KV_TIER_FIXTURE_H */
