/* Helpers shared by the KV cache's Criterion suites (tests/kv_*_test.c): configs, a
 * cache on a private monitor and its end, stats, sequences, rows, an eviction
 * recorder. The tier suites add support/kv_tier_fixture.h. */
#ifndef CLLM_TESTS_KV_TEST_UTIL_H
#define CLLM_TESTS_KV_TEST_UTIL_H

#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cllm/kv_cache.h>
#include <cllm/monitor.h>

#include "fixtures.h"

/* ---- helpers -------------------------------------------------------------------- */

/* layers 2, 1 head of dim 4, fp32: a row is 16 bytes, a chunk bt x 16. */
static cllm_kv_config_t small_cfg(cllm_monitor_t *m, size_t blocks, uint32_t bt) {
  cllm_kv_config_t c = cllm_kv_config_default();
  c.layers = 2;
  c.kv_heads = 1;
  c.head_dim = 4;
  c.dtype_bytes = 4;
  c.block_tokens = bt;
  c.capacity_blocks = blocks;
  c.monitor = m;
  return c;
}

/* Blocks that own whole pages (a chunk is 4096 bytes), committed page by page
 * (populate off): the cache's charge is then exactly blocks ever used x block bytes
 * (less the blocks the reclaimer gave back). */
static cllm_kv_config_t page_cfg(cllm_monitor_t *m, size_t blocks) {
  cllm_kv_config_t c = small_cfg(m, blocks, 4);
  c.head_dim = 256;  // a row is 1 KiB, a chunk 4 rows
  c.populate = false;
  return c;
}

static cllm_kv_cache_t *mk(const cllm_kv_config_t *c) {
  cllm_kv_cache_t *kv = NULL;
  cllm_status_t rc = cllm_kv_cache_create(c, &kv);
  cr_assert_eq(rc, CLLM_OK, "create: %s", cllm_status_name(rc));
  cr_assert_not_null(kv);
  return kv;
}

/* A cache of small_cfg(*m, blocks, bt) on a new private monitor *m (no limit). */
static cllm_kv_cache_t *mk_cache(cllm_monitor_t **m, size_t blocks, uint32_t bt) {
  *m = mk_monitor(0);
  cllm_kv_config_t c = small_cfg(*m, blocks, bt);
  return mk(&c);
}

static cllm_kv_stats_t stats(cllm_kv_cache_t *kv) {
  cllm_kv_stats_t st;
  st.struct_size = sizeof st;
  cr_assert_eq(cllm_kv_stats(kv, &st), CLLM_OK);
  return st;
}

static void check(cllm_kv_cache_t *kv) { cr_assert_eq(cllm_kv_check(kv), CLLM_OK); }

/* The end of a test: the cache's invariants hold, then the cache and its monitor go. */
static void check_destroy(cllm_kv_cache_t *kv, cllm_monitor_t *m) {
  check(kv);
  cllm_kv_cache_destroy(kv);
  cllm_monitor_destroy(m);
}

static cllm_kv_seq_t open_seq(cllm_kv_cache_t *kv, const char *id) {
  cllm_kv_seq_t s;
  cr_assert_eq(cllm_kv_seq_open(kv, id, NULL, &s), CLLM_OK);
  return s;
}

/* Reserve n tokens and commit tokens[0..n). */
static void extend(cllm_kv_cache_t *kv, cllm_kv_seq_t s, const cllm_kv_token_t *t, size_t n) {
  cr_assert_eq(cllm_kv_seq_reserve(kv, s, n, NULL), CLLM_OK);
  cr_assert_eq(cllm_kv_seq_commit(kv, s, t, n), CLLM_OK);
}

static size_t table(cllm_kv_cache_t *kv, cllm_kv_seq_t s, uint32_t *out, size_t cap) {
  size_t n = 0;
  cr_assert_eq(cllm_kv_seq_block_table(kv, s, out, cap, &n), CLLM_OK);
  return n;
}

static void seq_tokens(cllm_kv_token_t *t, size_t n, int base) {
  for (size_t i = 0; i < n; i++) t[i] = (cllm_kv_token_t)(base * 1000 + (int)i);
}

static void fill_floats(float *f, size_t n, int seed) {
  for (size_t i = 0; i < n; i++) f[i] = (float)(seed * 10000 + (int)i);
}

/* A recorder for the eviction callback. */
typedef struct rec {
  int calls;
  char ids[64][96];
  cllm_kv_evict_reason_t reasons[64];
  cllm_kv_cache_t *kv;
  bool close_preempted;
} rec_t;

static void record(void *user, const char *id, cllm_kv_evict_reason_t reason) {
  rec_t *r = user;
  if (r->calls < 64) {
    snprintf(r->ids[r->calls], sizeof r->ids[0], "%s", id);
    r->reasons[r->calls] = reason;
  }
  r->calls++;
  if (r->close_preempted && reason == CLLM_KV_EVICT_PREEMPTED) {
    cllm_kv_seq_t s;  // re-entrant: the callback runs outside the lock
    cr_assert_eq(cllm_kv_seq_find(r->kv, id, &s), CLLM_OK);
    cr_assert_eq(cllm_kv_seq_close(r->kv, s), CLLM_OK);
  }
}

static void write_row(cllm_kv_cache_t *kv, cllm_kv_loc_t loc, uint32_t val) {
  for (uint32_t l = 0; l < 2; l++) {
    uint32_t *k, *v;
    cr_assert_eq(cllm_kv_block_layer(kv, loc.block, l, (void **)&k, (void **)&v), CLLM_OK);
    for (int j = 0; j < 4; j++) {
      k[loc.offset * 4 + j] = val + l;
      v[loc.offset * 4 + j] = ~(val + l);
    }
  }
}

static uint32_t read_row(cllm_kv_cache_t *kv, cllm_kv_seq_t s, size_t pos) {
  uint32_t t[64];
  size_t n = table(kv, s, t, 64);
  cr_assert_lt(pos / 4, n);
  uint32_t *k, *v;
  cr_assert_eq(cllm_kv_block_layer(kv, t[pos / 4], 1, (void **)&k, (void **)&v), CLLM_OK);
  cr_assert_eq(v[(pos % 4) * 4], ~k[(pos % 4) * 4]);
  return k[(pos % 4) * 4] - 1;
}

#endif
