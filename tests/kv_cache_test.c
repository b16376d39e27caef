/* Criterion suite for the paged KV cache (lib/kv_*.c): configuration, block API,
 * eviction order, preemption, prefix sharing (salts, forced collisions), fork and
 * copy-on-write, the monitor charge and reclaimer, pinning and bands, the copy
 * API, bad input and fault injection (the model-based randomized test is in
 * kv_model_test.c). Each Test runs in its own process. */
#include <criterion/criterion.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cllm/kv_cache.h>
#include <cllm/monitor.h>

#include "lib/internal/fault.h"
#include "support/mt_check.h"

#include "support/kv_test_util.h"

/* ---- configuration ------------------------------------------------------------------ */

Test(kv_config, defaults_and_validation) {
  cllm_kv_config_t d = cllm_kv_config_default();
  cr_assert_eq(d.struct_size, sizeof d);
  cr_assert_eq(d.block_tokens, 16);
  cr_assert_eq(d.numa_node, -1);
  cr_assert(d.populate);
  cllm_kv_cache_t *kv = (cllm_kv_cache_t *)1;
  cr_assert_eq(cllm_kv_cache_create(NULL, &kv), CLLM_EINVAL);
  cr_assert_null(kv);
  cr_assert_eq(cllm_kv_cache_create(&d, NULL), CLLM_EINVAL);
  cr_assert_eq(cllm_kv_cache_create(&d, &kv), CLLM_EINVAL);  // no shape
  cllm_monitor_t *m = mk_monitor(0);
  cllm_kv_config_t c = small_cfg(m, 8, 4);
  c.struct_size = 8;
  cr_assert_eq(cllm_kv_cache_create(&c, &kv), CLLM_EINVAL);
  c = small_cfg(m, 8, 3);
  cr_assert_eq(cllm_kv_cache_create(&c, &kv), CLLM_EINVAL);
  c = small_cfg(m, 8, 4);
  c.dtype_bytes = 3;
  cr_assert_eq(cllm_kv_cache_create(&c, &kv), CLLM_EINVAL);
  c.dtype_bytes = 0;  // no default: a runtime that forgets it is told
  cr_assert_eq(cllm_kv_cache_create(&c, &kv), CLLM_EINVAL);
  cr_assert_eq(d.dtype_bytes, 0);
  cr_assert_eq(cllm_kv_footprint(&c), 0);
  c = small_cfg(m, 0, 4);
  cr_assert_eq(cllm_kv_cache_create(&c, &kv), CLLM_EINVAL);
  c.capacity_bytes = 100;  // below one block
  cr_assert_eq(cllm_kv_cache_create(&c, &kv), CLLM_EINVAL);
  c = small_cfg(m, 8, 4);
  c.max_pinned_fraction = 1.5;
  cr_assert_eq(cllm_kv_cache_create(&c, &kv), CLLM_EINVAL);
  c = small_cfg(m, 8, 4);
  c.head_dim = UINT32_MAX;
  c.kv_heads = UINT32_MAX;
  c.layers = UINT32_MAX;
  cr_assert_eq(cllm_kv_cache_create(&c, &kv), CLLM_EOVERFLOW);
  c = small_cfg(m, (size_t)UINT32_MAX, 4);
  cr_assert_eq(cllm_kv_cache_create(&c, &kv), CLLM_EOVERFLOW);
  cr_assert_null(kv);
  /* capacity in bytes: rounded down to whole blocks */
  c = small_cfg(m, 0, 4);
  c.capacity_bytes = 10 * 128 + 5;  // a block is 2 layers x 2 x 4 x 16 = 256 bytes
  kv = mk(&c);
  cr_assert_eq(cllm_kv_block_bytes(kv), 256);
  cr_assert_eq(cllm_kv_num_blocks(kv), 5);
  cr_assert_eq(cllm_kv_block_tokens(kv), 4);
  cllm_kv_cache_destroy(kv);
  cllm_kv_cache_destroy(NULL);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_KV), 0);
  cllm_monitor_destroy(m);
}

Test(kv_config, dtype_2_and_default_block_tokens) {
  cllm_kv_config_t c = cllm_kv_config_default();
  c.layers = 3;
  c.kv_heads = 2;
  c.head_dim = 64;
  c.dtype_bytes = 2;
  c.capacity_blocks = 100;
  cllm_kv_cache_t *kv = mk(&c);  // global monitor
  cr_assert_eq(cllm_kv_block_bytes(kv), 3u * 2 * 16 * 2 * 64 * 2);
  cllm_kv_seq_t s = open_seq(kv, "a");
  cr_assert_eq(cllm_kv_seq_reserve(kv, s, 17, NULL), CLLM_OK);
  /* the whole 100-block pools fit one 2 MiB commit step each: all charged at once */
  cllm_kv_stats_t st = stats(kv);
  cr_assert_eq(st.kv_bytes, 2 * cllm_kv_block_bytes(kv));
  cr_assert_eq(st.charged_bytes, 6 * ((size_t)2 << 20));
  cr_assert_eq(cllm_kv_footprint(&c), st.charged_bytes);
  cr_assert_eq(cllm_monitor_used(cllm_monitor_global(), CLLM_CAT_KV), st.charged_bytes);
  cr_assert_leq(st.resident_bytes, st.charged_bytes);
  check(kv);
  cllm_kv_cache_destroy(kv);
  cr_assert_eq(cllm_monitor_used(cllm_monitor_global(), CLLM_CAT_KV), 0);
}

Test(kv_block, pointers_are_aligned_distinct_and_writable) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_kv_config_t c = small_cfg(m, 64, 4);
  cllm_kv_cache_t *kv = mk(&c);
  void *k0, *v0, *k1, *v1;
  cr_assert_eq(cllm_kv_block_layer(kv, 0, 0, &k0, &v0), CLLM_OK);
  cr_assert_eq(cllm_kv_block_layer(kv, 1, 1, &k1, &v1), CLLM_OK);
  cr_assert_eq((uintptr_t)k0 % 64, 0);
  cr_assert_eq((uintptr_t)v0 % 64, 0);
  cr_assert_neq(k0, v0);
  cr_assert_eq((char *)k1 - (char *)k0 > 0, 1);
  cr_assert_eq(cllm_kv_block_layer(kv, 64, 0, &k0, NULL), CLLM_ERANGE);
  cr_assert_eq(cllm_kv_block_layer(kv, 0, 2, &k0, NULL), CLLM_ERANGE);
  cr_assert_eq(cllm_kv_block_layer(NULL, 0, 0, &k0, NULL), CLLM_EINVAL);
  cr_assert_eq(cllm_kv_block_layer(kv, 3, 1, NULL, NULL), CLLM_OK);
  /* every block of every pool can be written without overlapping another */
  for (uint32_t b = 0; b < 64; b++)
    for (uint32_t l = 0; l < 2; l++) {
      void *k, *v;
      cr_assert_eq(cllm_kv_block_layer(kv, b, l, &k, &v), CLLM_OK);
      memset(k, (int)(b * 4 + l * 2), 64);
      memset(v, (int)(b * 4 + l * 2 + 1), 64);
    }
  for (uint32_t b = 0; b < 64; b++)
    for (uint32_t l = 0; l < 2; l++) {
      unsigned char *k, *v;
      cr_assert_eq(cllm_kv_block_layer(kv, b, l, (void **)&k, (void **)&v), CLLM_OK);
      cr_assert_eq(k[63], (unsigned char)(b * 4 + l * 2));
      cr_assert_eq(v[0], (unsigned char)(b * 4 + l * 2 + 1));
    }
  cllm_kv_cache_destroy(kv);
  cllm_monitor_destroy(m);
}

/* ---- sequences ---------------------------------------------------------------------- */

Test(kv_seq, reserve_returns_locations_and_grows_the_table) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_kv_config_t c = small_cfg(m, 16, 4);
  cllm_kv_cache_t *kv = mk(&c);
  cllm_kv_seq_t s = open_seq(kv, "r1");
  cllm_kv_loc_t loc[16];
  cr_assert_eq(cllm_kv_seq_reserve(kv, s, 5, loc), CLLM_OK);
  uint32_t t[16];
  cr_assert_eq(table(kv, s, t, 16), 2);
  for (int i = 0; i < 5; i++) {
    cr_assert_eq(loc[i].block, t[i / 4]);
    cr_assert_eq(loc[i].offset, (uint32_t)(i % 4));
  }
  cr_assert_eq(cllm_kv_seq_reserve(kv, s, 3, loc), CLLM_OK);  // fills block 1 to 4, then 1 more
  cr_assert_eq(table(kv, s, t, 16), 2);
  cr_assert_eq(loc[0].block, t[1]);
  cr_assert_eq(loc[0].offset, 1);
  cr_assert_eq(loc[2].offset, 3);
  size_t len = 0;
  cr_assert_eq(cllm_kv_seq_length(kv, s, &len), CLLM_OK);
  cr_assert_eq(len, 8);
  cllm_kv_stats_t st = stats(kv);
  cr_assert_eq(st.blocks_active, 2);
  cr_assert_eq(st.tokens_stored, 8);
  cr_assert_float_eq(st.utilisation, 1.0, 1e-9);
  cr_assert_eq(st.kv_bytes, 2 * cllm_kv_block_bytes(kv));
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_KV), st.charged_bytes);
  cr_assert_geq(st.charged_bytes, st.kv_bytes);
  cr_assert_eq(cllm_kv_seq_reserve(kv, s, 1, NULL), CLLM_OK);
  st = stats(kv);
  cr_assert_eq(st.blocks_active, 3);
  cr_assert_float_eq(st.utilisation, 9.0 / 12.0, 1e-9);
  /* size query and a too small buffer */
  size_t n = 0;
  cr_assert_eq(cllm_kv_seq_block_table(kv, s, NULL, 0, &n), CLLM_OK);
  cr_assert_eq(n, 3);
  cr_assert_eq(cllm_kv_seq_block_table(kv, s, t, 2, &n), CLLM_ERANGE);
  cr_assert_eq(n, 3);
  check(kv);
  cr_assert_eq(cllm_kv_seq_close(kv, s), CLLM_OK);
  st = stats(kv);
  cr_assert_eq(st.blocks_active, 0);
  cr_assert_eq(st.blocks_cached, 0);  // nothing committed: all FREE
  cr_assert_eq(st.kv_bytes, 0);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_KV), st.charged_bytes);  // FREE blocks stay resident
  check(kv);
  cllm_kv_cache_destroy(kv);
  cllm_monitor_destroy(m);
}

Test(kv_seq, bad_input_gets_clear_statuses_and_changes_nothing) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_kv_config_t c = small_cfg(m, 8, 4);
  cllm_kv_cache_t *kv = mk(&c);
  cllm_kv_seq_t s, x;
  cr_assert_eq(cllm_kv_seq_open(NULL, "a", NULL, &s), CLLM_EINVAL);
  cr_assert_eq(cllm_kv_seq_open(kv, NULL, NULL, &s), CLLM_EINVAL);
  cr_assert_eq(cllm_kv_seq_open(kv, "", NULL, &s), CLLM_EINVAL);
  cr_assert_eq(cllm_kv_seq_open(kv, "a", NULL, NULL), CLLM_EINVAL);
  cllm_kv_seq_opts_t bad = {.salt = 0, .priority = CLLM_KV_BANDS};
  cr_assert_eq(cllm_kv_seq_open(kv, "a", &bad, &s), CLLM_EINVAL);
  s = open_seq(kv, "a");
  cr_assert_eq(cllm_kv_seq_open(kv, "a", NULL, &x), CLLM_EEXIST);
  cr_assert_eq(cllm_kv_seq_open_with_prompt(kv, "b", NULL, NULL, 3, &x, NULL), CLLM_EINVAL);
  cr_assert_eq(cllm_kv_seq_reserve(kv, s, 0, NULL), CLLM_EINVAL);
  cr_assert_eq(cllm_kv_seq_reserve(NULL, s, 1, NULL), CLLM_EINVAL);
  cr_assert_eq(cllm_kv_seq_reserve(kv, s, 8 * 4 + 1, NULL), CLLM_ERANGE);  // more than the cache
  cr_assert_eq(cllm_kv_seq_reserve(kv, s, SIZE_MAX, NULL), CLLM_ERANGE);
  cllm_kv_stats_t st = stats(kv);
  cr_assert_eq(st.blocks_active, 0);
  cr_assert_eq(st.refused, 2);
  cr_assert_eq(cllm_kv_seq_reserve(kv, s, 32, NULL), CLLM_OK);  // exactly the cache
  cllm_kv_token_t tok[40] = {0};
  cr_assert_eq(cllm_kv_seq_commit(kv, s, tok, 33), CLLM_ERANGE);
  cr_assert_eq(cllm_kv_seq_commit(kv, s, NULL, 3), CLLM_EINVAL);
  cr_assert_eq(cllm_kv_seq_commit(kv, s, tok, 0), CLLM_EINVAL);
  size_t n;
  cr_assert_eq(cllm_kv_seq_block_table(kv, s, NULL, 4, &n), CLLM_EINVAL);
  cr_assert_eq(cllm_kv_seq_block_table(kv, s, NULL, 0, NULL), CLLM_EINVAL);
  cr_assert_eq(cllm_kv_seq_length(kv, s, NULL), CLLM_EINVAL);
  cllm_kv_seq_t bogus = {.slot = 1u << 30, .gen = 1};
  cr_assert_eq(cllm_kv_seq_touch(kv, bogus), CLLM_ENOTFOUND);
  cllm_kv_seq_t zero = {0, 0};
  cr_assert_eq(cllm_kv_seq_touch(kv, zero), CLLM_ENOTFOUND);
  cr_assert_eq(cllm_kv_seq_find(kv, "nope", &x), CLLM_ENOTFOUND);
  cr_assert_eq(cllm_kv_seq_find(kv, "a", &x), CLLM_OK);
  cr_assert_eq(x.slot, s.slot);
  cr_assert_eq(cllm_kv_seq_fork(kv, s, "a", &x), CLLM_EEXIST);
  cr_assert_eq(cllm_kv_seq_fork(kv, s, NULL, &x), CLLM_EINVAL);
  cr_assert_eq(cllm_kv_seq_close(kv, s), CLLM_OK);
  cr_assert_eq(cllm_kv_seq_close(kv, s), CLLM_ENOTFOUND);  // closing twice
  cr_assert_eq(cllm_kv_seq_close(NULL, s), CLLM_EINVAL);
  cr_assert_eq(cllm_kv_seq_reserve(kv, s, 1, NULL), CLLM_ENOTFOUND);
  cr_assert_eq(cllm_kv_seq_length(kv, s, &n), CLLM_ENOTFOUND);
  /* the id is free again; the old handle stays stale */
  x = open_seq(kv, "a");
  cr_assert_eq(cllm_kv_seq_touch(kv, s), CLLM_ENOTFOUND);
  cr_assert_eq(cllm_kv_seq_touch(kv, x), CLLM_OK);
  /* copy API bad input */
  float f[4] = {0};
  cr_assert_eq(cllm_kv_put(kv, NULL, f, 1, f, 1), CLLM_EINVAL);
  cr_assert_eq(cllm_kv_put(kv, "p", NULL, 1, f, 1), CLLM_EINVAL);
  cr_assert_eq(cllm_kv_put(kv, "p", f, SIZE_MAX, f, 1), CLLM_EOVERFLOW);
  cr_assert_eq(cllm_kv_put(kv, "a", f, 1, f, 1), CLLM_EEXIST);  // a sequence's id
  cr_assert_eq(cllm_kv_get(kv, "a", f, 4, &n, f, 4, &n), CLLM_ENOTFOUND);
  cr_assert_eq(cllm_kv_get(kv, "zz", f, 4, &n, f, 4, &n), CLLM_ENOTFOUND);
  cr_assert_eq(cllm_kv_get(kv, "zz", NULL, 4, &n, f, 4, &n), CLLM_EINVAL);
  cr_assert_eq(cllm_kv_evict(kv, "zz"), CLLM_ENOTFOUND);
  cr_assert_eq(cllm_kv_evict(kv, "a"), CLLM_ENOTFOUND);
  cr_assert_eq(cllm_kv_evict(NULL, "a"), CLLM_EINVAL);
  cr_assert_eq(cllm_kv_stats(kv, NULL), CLLM_EINVAL);
  cllm_kv_stats_t small = {.struct_size = 4};
  cr_assert_eq(cllm_kv_stats(kv, &small), CLLM_EINVAL);
  cr_assert_eq(cllm_kv_check(NULL), CLLM_EINVAL);
  cr_assert_eq(cllm_kv_used_bytes(NULL), 0);
  check(kv);
  cllm_kv_cache_destroy(kv);
  cllm_monitor_destroy(m);
}

Test(kv_seq, slots_run_out_cleanly) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_kv_config_t c = small_cfg(m, 8, 4);
  c.max_seqs = 3;
  cllm_kv_cache_t *kv = mk(&c);
  cllm_kv_seq_t s[3], x;
  s[0] = open_seq(kv, "a");
  s[1] = open_seq(kv, "b");
  s[2] = open_seq(kv, "c");
  cr_assert_eq(cllm_kv_seq_open(kv, "d", NULL, &x), CLLM_ENOMEM);
  float f = 1;
  cr_assert_eq(cllm_kv_put(kv, "d", &f, 1, &f, 1), CLLM_ENOMEM);
  cr_assert_eq(cllm_kv_seq_fork(kv, s[0], "d", &x), CLLM_ENOMEM);
  check(kv);
  cr_assert_eq(cllm_kv_seq_close(kv, s[1]), CLLM_OK);
  x = open_seq(kv, "a-much-longer-request-id-than-thirty-two-bytes-0123456789");
  cr_assert_eq(cllm_kv_seq_find(kv, "a-much-longer-request-id-than-thirty-two-bytes-0123456789", &s[1]),
               CLLM_OK);
  cr_assert_eq(s[1].slot, x.slot);
  check(kv);
  cllm_kv_cache_destroy(kv);
  cllm_monitor_destroy(m);
}

/* The id map keeps buckets of 7 entries with overflow counts (lib/kv_seq.c): with 64
 * slots it has 16 buckets, so a full cache overflows some of them. Fill it, close in a
 * scrambled order, reopen under other names, and check after every step that every
 * id is found (and every closed one is not) and that cllm_kv_check accepts the
 * counts. */
Test(kv_seq, a_full_id_map_overflows_buckets_and_still_finds_every_id) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_kv_config_t c = small_cfg(m, 8, 4);
  c.max_seqs = 64;
  cllm_kv_cache_t *kv = mk(&c);
  enum { N = 64 };
  cllm_kv_seq_t s[N], x;
  bool open[N] = {false};
  char id[N][32];
  unsigned long long rng = 7;
  for (int round = 0; round < 40; round++) {
    for (int i = 0; i < N; i++) {
      if (open[i]) continue;
      snprintf(id[i], sizeof id[i], "r%d-%d", round, i);
      cr_assert_eq(cllm_kv_seq_open(kv, id[i], NULL, &s[i]), CLLM_OK, "%s", id[i]);
      open[i] = true;
    }
    cr_assert_eq(cllm_kv_seq_open(kv, "one-too-many", NULL, &x), CLLM_ENOMEM);
    check(kv);
    for (int i = 0; i < N; i++) {
      cr_assert_eq(cllm_kv_seq_find(kv, id[i], &x), CLLM_OK, "%s", id[i]);
      cr_assert(x.slot == s[i].slot && x.gen == s[i].gen);
      cr_assert_eq(cllm_kv_seq_open(kv, id[i], NULL, &x), CLLM_EEXIST);
    }
    /* close about half, in a scrambled order */
    for (int k = 0; k < N; k++) {
      rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
      int i = (int)((rng >> 33) % N);
      if (!open[i] || (rng >> 20) % 2 == 0) continue;
      cr_assert_eq(cllm_kv_seq_close(kv, s[i]), CLLM_OK);
      open[i] = false;
      cr_assert_eq(cllm_kv_seq_find(kv, id[i], &x), CLLM_ENOTFOUND, "%s", id[i]);
      check(kv);
    }
    for (int i = 0; i < N; i++)
      cr_assert_eq(cllm_kv_seq_find(kv, id[i], &x), open[i] ? CLLM_OK : CLLM_ENOTFOUND);
  }
  cllm_kv_cache_destroy(kv);
  cllm_monitor_destroy(m);
}

/* One slot (max_seqs 1) reused again and again: ids short enough to live in the slot
 * and long ones in an owned buffer (growing, then reused for shorter ids), block
 * tables in the slot and grown past it; every id, location and table stays right,
 * through fork (a second slot) and the copy API too. */
Test(kv_seq, a_reused_slot_keeps_short_and_long_ids_and_tables_right) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_kv_config_t c = small_cfg(m, 64, 4);
  c.max_seqs = 2;
  cllm_kv_cache_t *kv = mk(&c);
  static const size_t lens[] = {1, 15, 16, 40, 3, 100, 15, 31, 32, 33, 2, 250, 7};
  static const size_t toks[] = {1, 8, 9, 4, 40, 3, 12, 1, 64, 5, 16, 2, 33};
  char id[300], other[310];
  for (size_t r = 0; r < sizeof lens / sizeof lens[0]; r++) {
    for (size_t i = 0; i < lens[r]; i++) id[i] = (char)('A' + (r * 7 + i) % 26);
    id[lens[r]] = '\0';
    cllm_kv_seq_t s = open_seq(kv, id), x;
    cr_assert_eq(cllm_kv_seq_find(kv, id, &x), CLLM_OK);
    cr_assert(x.slot == s.slot && x.gen == s.gen);
    cllm_kv_loc_t loc[80];
    cr_assert_eq(cllm_kv_seq_reserve(kv, s, toks[r], loc), CLLM_OK, "round %zu", r);
    cr_assert_eq(cllm_kv_seq_reserve(kv, s, 1, loc + toks[r]), CLLM_OK);  // one more, maybe a new block
    uint32_t t[32];
    size_t nb = table(kv, s, t, 32);
    cr_assert_eq(nb, (toks[r] + 1 + 3) / 4);
    for (size_t i = 0; i <= toks[r]; i++) {
      cr_assert_eq(loc[i].block, t[i / 4], "round %zu token %zu", r, i);
      cr_assert_eq(loc[i].offset, (uint32_t)(i % 4));
    }
    /* a fork takes the second slot and copies the table, inline or not */
    memcpy(other, id, lens[r]);
    memcpy(other + lens[r], "/fork", 6);
    cllm_kv_seq_t f;
    cr_assert_eq(cllm_kv_seq_fork(kv, s, other, &f), CLLM_OK);
    uint32_t tf[32];
    cr_assert_eq(table(kv, f, tf, 32), nb);
    cr_assert_eq(memcmp(t, tf, nb * sizeof t[0]), 0);
    check(kv);
    cr_assert_eq(cllm_kv_seq_close(kv, f), CLLM_OK);
    cr_assert_eq(cllm_kv_seq_close(kv, s), CLLM_OK);
    cr_assert_eq(cllm_kv_seq_find(kv, id, &x), CLLM_ENOTFOUND);
    /* the same slot as a copy entry of 3 blocks (32 key floats per block: 2 layers x
     * 4 rows x 4 floats) */
    float k[80], v[80], ko[80], vo[80];
    for (int i = 0; i < 80; i++) k[i] = (float)(r * 100 + (size_t)i), v[i] = -k[i];
    cr_assert_eq(cllm_kv_put(kv, id, k, 80, v, 80), CLLM_OK);
    cr_assert_eq(stats(kv).copy_used_bytes, 3 * cllm_kv_block_bytes(kv));
    size_t nk = 0, nv = 0;
    cr_assert_eq(cllm_kv_get(kv, id, ko, 80, &nk, vo, 80, &nv), CLLM_OK);
    cr_assert(nk == 80 && nv == 80 && memcmp(k, ko, sizeof k) == 0 && memcmp(v, vo, sizeof v) == 0);
    check(kv);
    cr_assert_eq(cllm_kv_evict(kv, id), CLLM_OK);
    check(kv);
  }
  cllm_kv_cache_destroy(kv);
  cllm_monitor_destroy(m);
}

/* Ids of every length from 1 to 80 bytes (the hash reads 1-3, 4-7, 8-16 and longer
 * ids differently), ids that differ only in their first, middle or last byte, and a
 * prefix of another id are all distinct keys. */
Test(kv_seq, ids_of_every_length_and_near_misses_are_distinct) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_kv_config_t c = small_cfg(m, 8, 4);
  c.max_seqs = 512;
  cllm_kv_cache_t *kv = mk(&c);
  char buf[96];
  cllm_kv_seq_t x, y;
  for (int len = 1; len <= 80; len++) {
    for (int variant = 0; variant < 4; variant++) {
      for (int i = 0; i < len; i++) buf[i] = (char)('a' + i % 26);
      buf[len] = '\0';
      if (variant == 1) buf[0] = 'Z';
      if (variant == 2) buf[len / 2] = (char)(buf[len / 2] == 'Q' ? 'R' : 'Q');
      if (variant == 3) buf[len - 1] = '#';
      if (variant > 0 && len == 1 && variant != 1) continue;  // same as variant 1 or 3
      cr_assert_eq(cllm_kv_seq_open(kv, buf, NULL, &x), CLLM_OK, "len %d variant %d", len, variant);
    }
  }
  check(kv);
  for (int len = 1; len <= 80; len++) {
    for (int i = 0; i < len; i++) buf[i] = (char)('a' + i % 26);
    buf[len] = '\0';
    cr_assert_eq(cllm_kv_seq_find(kv, buf, &x), CLLM_OK, "len %d", len);
    cr_assert_eq(cllm_kv_seq_open(kv, buf, NULL, &y), CLLM_EEXIST);
    buf[len - 1] = '!';  // never opened
    cr_assert_eq(cllm_kv_seq_find(kv, buf, &y), CLLM_ENOTFOUND, "len %d", len);
    buf[len - 1] = (char)('a' + (len - 1) % 26);
    buf[len] = 'a';  // one byte longer than an opened id (unless that length exists)
    buf[len + 1] = '\0';
    if (len == 80) cr_assert_eq(cllm_kv_seq_find(kv, buf, &y), CLLM_ENOTFOUND);
  }
  cllm_kv_cache_destroy(kv);
  cllm_monitor_destroy(m);
}

/* ---- eviction order ------------------------------------------------------------------ */

Test(kv_evict, fresh_and_free_blocks_before_cached_then_lru_tail_first) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_kv_config_t c = small_cfg(m, 8, 4);
  cllm_kv_cache_t *kv = mk(&c);
  cllm_kv_token_t ta[12], tb[8];
  seq_tokens(ta, 12, 1);
  seq_tokens(tb, 8, 2);
  cllm_kv_seq_t a = open_seq(kv, "a"), b = open_seq(kv, "b");
  extend(kv, a, ta, 12);  // a0 a1 a2
  extend(kv, b, tb, 8);   // b0 b1
  uint32_t at[3], bt[2];
  table(kv, a, at, 3);
  table(kv, b, bt, 2);
  cr_assert_eq(cllm_kv_seq_close(kv, a), CLLM_OK);
  cr_assert_eq(cllm_kv_seq_close(kv, b), CLLM_OK);
  cllm_kv_stats_t st = stats(kv);
  cr_assert_eq(st.blocks_cached, 5);
  cr_assert_eq(st.blocks_free, 3);
  /* an unindexed block released (never committed) is reused before the cached ones */
  cllm_kv_seq_t u = open_seq(kv, "u");
  cr_assert_eq(cllm_kv_seq_reserve(kv, u, 1, NULL), CLLM_OK);
  uint32_t ut[8];
  table(kv, u, ut, 8);
  cr_assert_eq(cllm_kv_seq_close(kv, u), CLLM_OK);
  /* the next 3 blocks come from FREE (recycled first, then never used) */
  cllm_kv_seq_t d = open_seq(kv, "d");
  cr_assert_eq(cllm_kv_seq_reserve(kv, d, 12, NULL), CLLM_OK);
  uint32_t dt[8];
  cr_assert_eq(table(kv, d, dt, 8), 3);
  cr_assert_eq(dt[0], ut[0], "the recycled block is taken first");
  st = stats(kv);
  cr_assert_eq(st.evictions, 0);
  cr_assert_eq(st.blocks_cached, 5);
  /* now every new block evicts: the LRU order is a2 a1 a0 b1 b0 (tail first) */
  uint32_t want[5] = {at[2], at[1], at[0], bt[1], bt[0]};
  for (int i = 0; i < 5; i++) {
    cr_assert_eq(cllm_kv_seq_reserve(kv, d, 4, NULL), CLLM_OK);
    cr_assert_eq(table(kv, d, dt, 8), (size_t)(4 + i));
    cr_assert_eq(dt[3 + i], want[i], "eviction %d took block %u, wanted %u", i, dt[3 + i], want[i]);
    check(kv);
  }
  st = stats(kv);
  cr_assert_eq(st.evictions, 5);
  cr_assert_eq(st.blocks_cached, 0);
  cr_assert_eq(cllm_kv_seq_reserve(kv, d, 1, NULL), CLLM_ERANGE);  // 33 tokens > the cache
  cllm_kv_seq_t e = open_seq(kv, "e");
  cr_assert_eq(cllm_kv_seq_reserve(kv, e, 1, NULL), CLLM_ENOMEM);  // no preemption
  check(kv);
  cllm_kv_cache_destroy(kv);
  cllm_monitor_destroy(m);
}

Test(kv_evict, reuse_moves_a_prefix_to_most_recent) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_kv_config_t c = small_cfg(m, 4, 4);
  cllm_kv_cache_t *kv = mk(&c);
  cllm_kv_token_t ta[9], tb[9];
  seq_tokens(ta, 9, 1);
  seq_tokens(tb, 9, 2);
  cllm_kv_seq_t a = open_seq(kv, "a"), b = open_seq(kv, "b");
  extend(kv, a, ta, 4);
  extend(kv, b, tb, 4);
  uint32_t a0, b0;
  table(kv, a, &a0, 1);
  table(kv, b, &b0, 1);
  cr_assert_eq(cllm_kv_seq_close(kv, a), CLLM_OK);
  cr_assert_eq(cllm_kv_seq_close(kv, b), CLLM_OK);  // LRU: a0 b0
  size_t cached;
  cllm_kv_seq_t a2;
  cr_assert_eq(cllm_kv_seq_open_with_prompt(kv, "a2", NULL, ta, 9, &a2, &cached), CLLM_OK);
  cr_assert_eq(cached, 4);
  cr_assert_eq(cllm_kv_seq_close(kv, a2), CLLM_OK);  // LRU: b0 a0
  cllm_kv_seq_t d = open_seq(kv, "d");
  cr_assert_eq(cllm_kv_seq_reserve(kv, d, 12, NULL), CLLM_OK);  // 2 fresh + 1 evicted
  uint32_t dt[3];
  table(kv, d, dt, 3);
  cr_assert_eq(dt[2], b0);
  cr_assert_eq(cllm_kv_seq_open_with_prompt(kv, "a3", NULL, ta, 9, &a2, &cached), CLLM_OK);
  cr_assert_eq(cached, 4, "a0 survived");
  check(kv);
  cllm_kv_cache_destroy(kv);
  cllm_monitor_destroy(m);
}

/* ---- preemption ------------------------------------------------------------------------ */

Test(kv_preempt, picks_the_lru_other_sequence_and_calls_back_once) {
  cllm_monitor_t *m = mk_monitor(0);
  rec_t r = {0};
  cllm_kv_config_t c = small_cfg(m, 8, 4);
  c.preemption = true;
  c.evict_fn = record;
  c.evict_user = &r;
  cllm_kv_cache_t *kv = mk(&c);
  cllm_kv_seq_t a = open_seq(kv, "A"), b = open_seq(kv, "B"), cc = open_seq(kv, "C");
  cr_assert_eq(cllm_kv_seq_reserve(kv, a, 8, NULL), CLLM_OK);
  cr_assert_eq(cllm_kv_seq_reserve(kv, b, 8, NULL), CLLM_OK);
  cr_assert_eq(cllm_kv_seq_reserve(kv, cc, 8, NULL), CLLM_OK);
  cr_assert_eq(cllm_kv_seq_touch(kv, a), CLLM_OK);  // order: B C A
  cllm_kv_seq_t d = open_seq(kv, "D");
  cr_assert_eq(cllm_kv_seq_reserve(kv, d, 16, NULL), CLLM_OK);  // 2 free + B's 2
  cr_assert_eq(r.calls, 1);
  cr_assert_str_eq(r.ids[0], "B");
  cr_assert_eq(r.reasons[0], CLLM_KV_EVICT_PREEMPTED);
  size_t n;
  cr_assert_eq(cllm_kv_seq_reserve(kv, b, 1, NULL), CLLM_EPREEMPTED);
  cr_assert_eq(cllm_kv_seq_length(kv, b, &n), CLLM_EPREEMPTED);
  cr_assert_eq(cllm_kv_seq_touch(kv, b), CLLM_EPREEMPTED);
  cr_assert_eq(cllm_kv_seq_commit(kv, b, (cllm_kv_token_t[]){1}, 1), CLLM_EPREEMPTED);
  cllm_kv_seq_t bf;
  cr_assert_eq(cllm_kv_seq_find(kv, "B", &bf), CLLM_OK);  // still there until closed
  cr_assert_eq(cllm_kv_seq_open(kv, "B", NULL, &bf), CLLM_EEXIST);
  cllm_kv_stats_t st = stats(kv);
  cr_assert_eq(st.preemptions, 1);
  check(kv);
  cr_assert_eq(cllm_kv_seq_close(kv, b), CLLM_OK);
  cr_assert_eq(cllm_kv_seq_close(kv, b), CLLM_ENOTFOUND);
  /* the requester is never its own victim: D grows, C then A go */
  cr_assert_eq(cllm_kv_seq_touch(kv, d), CLLM_OK);
  cr_assert_eq(cllm_kv_seq_reserve(kv, d, 16, NULL), CLLM_OK);
  cr_assert_eq(r.calls, 3);
  cr_assert_str_eq(r.ids[1], "C");
  cr_assert_str_eq(r.ids[2], "A");
  cr_assert_eq(cllm_kv_seq_length(kv, d, &n), CLLM_OK);
  cr_assert_eq(n, 32);
  /* nothing left to preempt */
  cllm_kv_seq_t e = open_seq(kv, "E");
  cr_assert_eq(cllm_kv_seq_reserve(kv, e, 1, NULL), CLLM_OK);  // preempts D
  cr_assert_eq(r.calls, 4);
  cr_assert_str_eq(r.ids[3], "D");
  check(kv);
  cllm_kv_cache_destroy(kv);
  cllm_monitor_destroy(m);
}

Test(kv_preempt, callback_may_close_the_victim_and_off_means_enomem_unchanged) {
  cllm_monitor_t *m = mk_monitor(0);
  rec_t r = {0};
  cllm_kv_config_t c = small_cfg(m, 4, 4);
  c.preemption = true;
  c.evict_fn = record;
  c.evict_user = &r;
  r.close_preempted = true;
  cllm_kv_cache_t *kv = mk(&c);
  r.kv = kv;
  cllm_kv_seq_t a = open_seq(kv, "A"), b = open_seq(kv, "B");
  cr_assert_eq(cllm_kv_seq_reserve(kv, a, 16, NULL), CLLM_OK);
  cr_assert_eq(cllm_kv_seq_reserve(kv, b, 4, NULL), CLLM_OK);
  cr_assert_eq(r.calls, 1);
  cr_assert_eq(cllm_kv_seq_find(kv, "A", &a), CLLM_ENOTFOUND);  // closed by the callback
  cllm_kv_stats_t st = stats(kv);
  cr_assert_eq(st.sequences, 1);
  check(kv);
  cllm_kv_cache_destroy(kv);

  c.preemption = false;
  kv = mk(&c);
  a = open_seq(kv, "A");
  b = open_seq(kv, "B");
  cr_assert_eq(cllm_kv_seq_reserve(kv, a, 14, NULL), CLLM_OK);
  cr_assert_eq(cllm_kv_seq_reserve(kv, b, 8, NULL), CLLM_ENOMEM);
  size_t n;
  cr_assert_eq(cllm_kv_seq_length(kv, b, &n), CLLM_OK);
  cr_assert_eq(n, 0);
  cr_assert_eq(cllm_kv_seq_length(kv, a, &n), CLLM_OK);
  cr_assert_eq(n, 14);
  st = stats(kv);
  cr_assert_eq(st.blocks_active, 4);
  cr_assert_eq(st.refused, 1);
  check(kv);
  cllm_kv_cache_destroy(kv);
  cllm_monitor_destroy(m);
}

Test(kv_preempt, many_victims_in_one_call_get_one_callback_each_in_order) {
  cllm_monitor_t *m = mk_monitor(0);
  rec_t r = {0};
  cllm_kv_config_t c = small_cfg(m, 32, 4);
  c.preemption = true;
  c.evict_fn = record;
  c.evict_user = &r;
  r.close_preempted = true;  // closing from the callback: zombie slots must wait
  cllm_kv_cache_t *kv = mk(&c);
  r.kv = kv;
  char ids[14][80];
  for (int i = 0; i < 14; i++) {
    /* long ids: the inline copies overflow to the linked path */
    snprintf(ids[i], sizeof ids[i], "sequence-%02d-with-a-long-request-id-padding-padding-padding", i);
    cllm_kv_seq_t s = open_seq(kv, ids[i]);
    cr_assert_eq(cllm_kv_seq_reserve(kv, s, 8, NULL), CLLM_OK);
  }
  cllm_kv_seq_t big = open_seq(kv, "big");
  cr_assert_eq(cllm_kv_seq_reserve(kv, big, 30 * 4, NULL), CLLM_OK);  // 4 free + 13 preempted
  cr_assert_eq(r.calls, 13);
  for (int i = 0; i < 13; i++) {
    cr_assert_str_eq(r.ids[i], ids[i], "victim %d", i);
    cllm_kv_seq_t s;
    cr_assert_eq(cllm_kv_seq_find(kv, ids[i], &s), CLLM_ENOTFOUND);
  }
  cllm_kv_stats_t st = stats(kv);
  cr_assert_eq(st.sequences, 2);
  check(kv);
  /* the slots were freed after their callbacks: all reusable */
  for (int i = 0; i < 13; i++) (void)open_seq(kv, ids[i]);
  check(kv);
  cllm_kv_cache_destroy(kv);
  cllm_monitor_destroy(m);
}

Test(kv_copy, one_put_evicting_many_entries_calls_back_in_lru_order) {
  cllm_monitor_t *m = mk_monitor(0);
  rec_t r = {0};
  cllm_kv_config_t c = small_cfg(m, 32, 4);
  c.evict_fn = record;
  c.evict_user = &r;
  cllm_kv_cache_t *kv = mk(&c);
  float f[32 * 32];
  fill_floats(f, 32 * 32, 3);
  char ids[20][80];
  for (int i = 0; i < 20; i++) {
    snprintf(ids[i], sizeof ids[i], "entry-%02d-with-a-long-request-id-padding-padding-padding", i);
    cr_assert_eq(cllm_kv_put(kv, ids[i], f, 32, f, 32), CLLM_OK);
  }
  cr_assert_eq(cllm_kv_put(kv, "big", f, 32 * 30, NULL, 0), CLLM_OK);  // 30 blocks: 18 go
  cr_assert_eq(r.calls, 18);
  for (int i = 0; i < 18; i++) cr_assert_str_eq(r.ids[i], ids[i], "victim %d", i);
  size_t nk, nv;
  cr_assert_eq(cllm_kv_get(kv, ids[18], NULL, 0, &nk, NULL, 0, &nv), CLLM_OK);
  check(kv);
  for (int i = 0; i < 18; i++) cr_assert_eq(cllm_kv_put(kv, ids[i], f, 1, NULL, 0), CLLM_OK);
  check(kv);
  cllm_kv_cache_destroy(kv);
  cllm_monitor_destroy(m);
}

/* ---- prefix sharing ----------------------------------------------------------------- */

Test(kv_prefix, common_prefix_shares_exactly_the_full_blocks) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_kv_config_t c = small_cfg(m, 32, 4);
  cllm_kv_cache_t *kv = mk(&c);
  cllm_kv_token_t p1[20], p2[20];
  seq_tokens(p1, 20, 1);
  memcpy(p2, p1, sizeof p2);
  for (int i = 11; i < 20; i++) p2[i] = -i;  // 11 tokens in common: 2 full blocks
  size_t cached;
  cllm_kv_seq_t s1, s2;
  cr_assert_eq(cllm_kv_seq_open_with_prompt(kv, "s1", NULL, p1, 20, &s1, &cached), CLLM_OK);
  cr_assert_eq(cached, 0);
  extend(kv, s1, p1, 20);
  cr_assert_eq(cllm_kv_seq_open_with_prompt(kv, "s2", NULL, p2, 20, &s2, &cached), CLLM_OK);
  cr_assert_eq(cached, 8);
  uint32_t t1[8], t2[8];
  table(kv, s1, t1, 8);
  cr_assert_eq(table(kv, s2, t2, 8), 2);
  cr_assert_eq(t2[0], t1[0]);
  cr_assert_eq(t2[1], t1[1]);
  size_t len;
  cr_assert_eq(cllm_kv_seq_length(kv, s2, &len), CLLM_OK);
  cr_assert_eq(len, 8);
  extend(kv, s2, p2 + 8, 12);
  table(kv, s2, t2, 8);
  cr_assert_neq(t2[2], t1[2]);
  /* a full-prompt hit is capped so one token is left to compute */
  cllm_kv_seq_t s3;
  cr_assert_eq(cllm_kv_seq_open_with_prompt(kv, "s3", NULL, p1, 20, &s3, &cached), CLLM_OK);
  cr_assert_eq(cached, 16);
  cllm_kv_seq_t s4;
  cr_assert_eq(cllm_kv_seq_open_with_prompt(kv, "s4", NULL, p1, 17, &s4, &cached), CLLM_OK);
  cr_assert_eq(cached, 16);
  cllm_kv_stats_t st = stats(kv);
  cr_assert_eq(st.prefix_query_tokens, 20 + 20 + 20 + 17);
  cr_assert_eq(st.prefix_hit_tokens, 8 + 16 + 16);
  cr_assert_eq(st.blocks_active, 5 + 3);  // s1: 5, s2: 3 of its own
  check(kv);
  /* after closing everything the blocks are CACHED and still shared */
  cr_assert_eq(cllm_kv_seq_close(kv, s1), CLLM_OK);
  cr_assert_eq(cllm_kv_seq_close(kv, s2), CLLM_OK);
  cr_assert_eq(cllm_kv_seq_close(kv, s3), CLLM_OK);
  cr_assert_eq(cllm_kv_seq_close(kv, s4), CLLM_OK);
  st = stats(kv);
  cr_assert_eq(st.blocks_active, 0);
  cr_assert_eq(st.blocks_cached, 8);
  cr_assert_eq(cllm_kv_seq_open_with_prompt(kv, "s5", NULL, p2, 20, &s1, &cached), CLLM_OK);
  cr_assert_eq(cached, 16);
  check(kv);
  cllm_kv_cache_destroy(kv);
  cllm_monitor_destroy(m);
}

Test(kv_prefix, salts_isolate_tenants) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_kv_config_t c = small_cfg(m, 32, 4);
  cllm_kv_cache_t *kv = mk(&c);
  cllm_kv_token_t p[13];
  seq_tokens(p, 13, 5);
  cllm_kv_seq_opts_t t1 = {.salt = 111}, t2 = {.salt = 222};
  size_t cached;
  cllm_kv_seq_t a, b, x;
  cr_assert_eq(cllm_kv_seq_open_with_prompt(kv, "a", &t1, p, 13, &a, &cached), CLLM_OK);
  extend(kv, a, p, 13);
  cr_assert_eq(cllm_kv_seq_open_with_prompt(kv, "b", &t2, p, 13, &b, &cached), CLLM_OK);
  cr_assert_eq(cached, 0, "tenant 2 must not see tenant 1's prefix");
  cr_assert_eq(cllm_kv_seq_open_with_prompt(kv, "c", NULL, p, 13, &x, &cached), CLLM_OK);
  cr_assert_eq(cached, 0, "the unsalted tenant neither");
  cr_assert_eq(cllm_kv_seq_open_with_prompt(kv, "d", &t1, p, 13, &x, &cached), CLLM_OK);
  cr_assert_eq(cached, 12);
  check(kv);
  cllm_kv_cache_destroy(kv);
  cllm_monitor_destroy(m);
}

static uint64_t const_hash(void *user, uint64_t prev, uint64_t salt, const cllm_kv_token_t *t,
                           size_t n) {
  (void)prev, (void)salt, (void)t, (void)n;
  ++*(int *)user;
  return 42;  // every block collides
}

Test(kv_prefix, forced_collisions_never_return_wrong_blocks) {
  cllm_monitor_t *m = mk_monitor(0);
  int calls = 0;
  cllm_kv_config_t c = small_cfg(m, 32, 4);
  c.hash_fn = const_hash;
  c.hash_user = &calls;
  cllm_kv_cache_t *kv = mk(&c);
  cllm_kv_token_t x[9], y[9], z[9];
  seq_tokens(x, 9, 1);  // X = [A B] + 1
  memcpy(y, x, sizeof y);
  for (int i = 0; i < 4; i++) y[i] = 900 + i;  // Y = [C B] + 1: same 2nd block, other parent
  memcpy(z, x, sizeof z);
  z[6] = -1;  // Z = [A B'] + 1
  size_t cached;
  cllm_kv_seq_t sx, sy, sz, s;
  cr_assert_eq(cllm_kv_seq_open_with_prompt(kv, "x", NULL, x, 9, &sx, &cached), CLLM_OK);
  extend(kv, sx, x, 9);
  cr_assert_eq(cllm_kv_seq_open_with_prompt(kv, "y", NULL, y, 9, &sy, &cached), CLLM_OK);
  cr_assert_eq(cached, 0);
  extend(kv, sy, y, 9);
  cr_assert_eq(cllm_kv_seq_open_with_prompt(kv, "z", NULL, z, 9, &sz, &cached), CLLM_OK);
  cr_assert_eq(cached, 4);
  extend(kv, sz, z + 4, 5);
  cr_assert_gt(calls, 0);
  uint32_t tx[3], ty[3], tz[3], t[3];
  table(kv, sx, tx, 3);
  table(kv, sy, ty, 3);
  table(kv, sz, tz, 3);
  cr_assert_eq(tz[0], tx[0]);
  cr_assert_neq(tz[1], tx[1]);
  cllm_kv_token_t *prompts[3] = {x, y, z};
  uint32_t *tables[3] = {tx, ty, tz};
  for (int round = 0; round < 2; round++) {
    for (int p = 0; p < 3; p++) {
      char id[16];
      snprintf(id, sizeof id, "q%d%d", round, p);
      cr_assert_eq(cllm_kv_seq_open_with_prompt(kv, id, NULL, prompts[p], 9, &s, &cached), CLLM_OK);
      cr_assert_eq(cached, 8, "prompt %d", p);
      table(kv, s, t, 3);
      cr_assert_eq(t[0], tables[p][0], "prompt %d block 0", p);
      cr_assert_eq(t[1], tables[p][1], "prompt %d block 1", p);
      cr_assert_eq(cllm_kv_seq_close(kv, s), CLLM_OK);
    }
    /* second round: from the CACHED state */
    cr_assert_eq(cllm_kv_seq_close(kv, sx), CLLM_OK);
    cr_assert_eq(cllm_kv_seq_close(kv, sy), CLLM_OK);
    cr_assert_eq(cllm_kv_seq_close(kv, sz), CLLM_OK);
    sx = open_seq(kv, round ? "xx2" : "xx");
    sy = open_seq(kv, round ? "yy2" : "yy");
    sz = open_seq(kv, round ? "zz2" : "zz");
    check(kv);
  }
  cllm_kv_cache_destroy(kv);
  cllm_monitor_destroy(m);
}

/* A child block indexed after parent P must not match once P's block id is reused
 * for other content, even when every hash collides (the generation check). */
Test(kv_prefix, a_reused_parent_block_never_validates_its_old_children) {
  cllm_monitor_t *m = mk_monitor(0);
  int calls = 0;
  cllm_kv_config_t c = small_cfg(m, 4, 4);
  c.hash_fn = const_hash;
  c.hash_user = &calls;
  cllm_kv_cache_t *kv = mk(&c);
  cllm_kv_token_t xy[8] = {1, 2, 3, 4, 5, 6, 7, 8}, x2[4] = {9, 9, 9, 9};
  cllm_kv_seq_t a = open_seq(kv, "a"), b = open_seq(kv, "b");
  extend(kv, a, xy, 4);  // X in block xa (indexed)
  extend(kv, b, xy, 8);  // X again (duplicate, not indexed), Y indexed after xa
  uint32_t xa, tb[2];
  table(kv, a, &xa, 1);
  table(kv, b, tb, 2);
  cr_assert_eq(cllm_kv_seq_close(kv, a), CLLM_OK);
  cr_assert_eq(cllm_kv_seq_close(kv, b), CLLM_OK);  // LRU: xa, Y
  cllm_kv_seq_t d = open_seq(kv, "d"), e = open_seq(kv, "e");
  cr_assert_eq(cllm_kv_seq_reserve(kv, d, 8, NULL), CLLM_OK);  // the free and the fresh block
  extend(kv, e, x2, 4);  // evicts xa and fills it with X'
  uint32_t te;
  table(kv, e, &te, 1);
  cr_assert_eq(te, xa);
  cllm_kv_token_t q[9] = {9, 9, 9, 9, 5, 6, 7, 8, 0};
  size_t cached;
  cllm_kv_seq_t s;
  cr_assert_eq(cllm_kv_seq_open_with_prompt(kv, "q", NULL, q, 9, &s, &cached), CLLM_OK);
  cr_assert_eq(cached, 4, "Y was computed after X, not X'");
  check(kv);
  cllm_kv_cache_destroy(kv);
  cllm_monitor_destroy(m);
}

Test(kv_prefix, duplicate_content_keeps_one_indexed_copy_and_the_chain_continues) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_kv_config_t c = small_cfg(m, 32, 4);
  cllm_kv_cache_t *kv = mk(&c);
  cllm_kv_token_t p[13];
  seq_tokens(p, 13, 3);
  cllm_kv_seq_t a = open_seq(kv, "a"), b = open_seq(kv, "b"), s;
  extend(kv, a, p, 4);   // a indexes block 0
  extend(kv, b, p, 13);  // b computes the same block 0 (not indexed), then 1 and 2
  cr_assert_eq(cllm_kv_seq_close(kv, b), CLLM_OK);  // b's copy of block 0 becomes FREE
  cllm_kv_stats_t st = stats(kv);
  cr_assert_eq(st.blocks_cached, 2);
  size_t cached;
  cr_assert_eq(cllm_kv_seq_open_with_prompt(kv, "c", NULL, p, 13, &s, &cached), CLLM_OK);
  cr_assert_eq(cached, 12, "a's block 0 then b's blocks 1 and 2");
  check(kv);
  cllm_kv_cache_destroy(kv);
  cllm_monitor_destroy(m);
}

/* ---- fork and copy-on-write -------------------------------------------------------- */

Test(kv_fork, shares_all_blocks_and_copies_the_partial_one_on_first_write) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_kv_config_t c = small_cfg(m, 16, 4);
  cllm_kv_cache_t *kv = mk(&c);
  cllm_kv_seq_t p = open_seq(kv, "p"), ch;
  cllm_kv_loc_t loc[8];
  cr_assert_eq(cllm_kv_seq_reserve(kv, p, 6, loc), CLLM_OK);
  for (int i = 0; i < 6; i++) write_row(kv, loc[i], 100 + i);
  cllm_kv_token_t tok[6] = {1, 2, 3, 4, 5, 6};
  cr_assert_eq(cllm_kv_seq_commit(kv, p, tok, 6), CLLM_OK);
  cr_assert_eq(cllm_kv_seq_fork(kv, p, "c", &ch), CLLM_OK);
  uint32_t tp[4], tc[4];
  cr_assert_eq(table(kv, ch, tc, 4), 2);
  table(kv, p, tp, 4);
  cr_assert_eq(memcmp(tp, tc, sizeof(uint32_t) * 2), 0);
  cllm_kv_stats_t st = stats(kv);
  cr_assert_eq(st.blocks_active, 2);
  cr_assert_eq(st.tokens_stored, 6);
  check(kv);
  /* the child writes first: its partial block is copied, the full one stays shared */
  cr_assert_eq(cllm_kv_seq_reserve(kv, ch, 1, loc), CLLM_OK);
  table(kv, ch, tc, 4);
  cr_assert_eq(tc[0], tp[0]);
  cr_assert_neq(tc[1], tp[1]);
  cr_assert_eq(loc[0].block, tc[1]);
  cr_assert_eq(loc[0].offset, 2);
  write_row(kv, loc[0], 900);
  for (size_t i = 0; i < 6; i++) {
    cr_assert_eq(read_row(kv, p, i), 100 + i);
    cr_assert_eq(read_row(kv, ch, i), 100 + i, "copied row %zu", i);
  }
  cr_assert_eq(read_row(kv, ch, 6), 900);
  st = stats(kv);
  cr_assert_eq(st.cow_copies, 1);
  cr_assert_eq(st.blocks_active, 3);
  /* the parent's partial block is no longer shared: no second copy */
  cr_assert_eq(cllm_kv_seq_reserve(kv, p, 1, loc), CLLM_OK);
  cr_assert_eq(loc[0].block, tp[1]);
  write_row(kv, loc[0], 700);
  cr_assert_eq(read_row(kv, ch, 6), 900);
  cr_assert_eq(read_row(kv, p, 6), 700);
  st = stats(kv);
  cr_assert_eq(st.cow_copies, 1);
  /* a fork at a block boundary needs no copy at all */
  cr_assert_eq(cllm_kv_seq_reserve(kv, p, 1, NULL), CLLM_OK);  // p: 8 tokens
  cllm_kv_seq_t c2;
  cr_assert_eq(cllm_kv_seq_fork(kv, p, "c2", &c2), CLLM_OK);
  cr_assert_eq(cllm_kv_seq_reserve(kv, c2, 1, NULL), CLLM_OK);
  st = stats(kv);
  cr_assert_eq(st.cow_copies, 1);
  check(kv);
  cr_assert_eq(cllm_kv_seq_close(kv, p), CLLM_OK);
  cr_assert_eq(read_row(kv, ch, 0), 100);
  cr_assert_eq(cllm_kv_seq_close(kv, ch), CLLM_OK);
  cr_assert_eq(cllm_kv_seq_close(kv, c2), CLLM_OK);
  st = stats(kv);
  cr_assert_eq(st.blocks_active, 0);
  cr_assert_eq(st.blocks_cached, 1);  // p's committed block 0
  cr_assert_eq(st.kv_bytes, cllm_kv_block_bytes(kv));
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_KV), st.charged_bytes);
  check(kv);
  cllm_kv_cache_destroy(kv);
  cllm_monitor_destroy(m);
}

/* ---- monitor ---------------------------------------------------------------------------- */

Test(kv_monitor, the_reclaimer_drops_cached_blocks_under_a_global_limit) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_kv_config_t c = page_cfg(m, 16);
  cllm_kv_cache_t *kv = mk(&c);
  size_t bb = cllm_kv_block_bytes(kv);
  cr_assert_eq(cllm_monitor_set_limit(m, 10 * bb), CLLM_OK);
  cllm_kv_token_t p[32];
  seq_tokens(p, 32, 7);
  cllm_kv_seq_t s = open_seq(kv, "s");
  extend(kv, s, p, 32);  // 8 full blocks
  cr_assert_eq(cllm_kv_seq_close(kv, s), CLLM_OK);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_KV), 8 * bb);
  /* a step arena wants 5 blocks' worth: 2 fit, the reclaimer frees 3 */
  cr_assert_eq(cllm_monitor_reserve(m, CLLM_CAT_STEP, 5 * bb), CLLM_OK);
  cllm_kv_stats_t st = stats(kv);
  cr_assert_eq(st.blocks_cached, 5);
  cr_assert_eq(st.reclaimed_blocks, 3);
  cr_assert_eq(st.blocks_given_back, 3);  // their pages went back to the kernel
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_KV), 5 * bb);
  cr_assert_eq(st.charged_bytes, 5 * bb);
  cr_assert_leq(st.resident_bytes, st.charged_bytes);
  check(kv);
  /* the LRU ones went (tail first): the first 5 blocks still hit */
  size_t cached;
  cr_assert_eq(cllm_kv_seq_open_with_prompt(kv, "t", NULL, p, 32, &s, &cached), CLLM_OK);
  cr_assert_eq(cached, 20);
  cr_assert_eq(cllm_monitor_release(m, CLLM_CAT_STEP, 5 * bb), CLLM_OK);
  cllm_kv_cache_destroy(kv);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_COUNT), 0);
  cllm_monitor_destroy(m);
}

Test(kv_monitor, a_refusal_reuses_cached_blocks_then_fails_unchanged) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_kv_config_t c = page_cfg(m, 16);
  cllm_kv_cache_t *kv = mk(&c);
  size_t bb = cllm_kv_block_bytes(kv);
  cr_assert_eq(cllm_monitor_set_category_limit(m, CLLM_CAT_KV, 4 * bb), CLLM_OK);
  cllm_kv_token_t p[16];
  seq_tokens(p, 16, 9);
  cllm_kv_seq_t s = open_seq(kv, "s");
  extend(kv, s, p, 16);
  cr_assert_eq(cllm_kv_seq_close(kv, s), CLLM_OK);  // 4 cached, the limit reached
  s = open_seq(kv, "n");
  cr_assert_eq(cllm_kv_seq_reserve(kv, s, 12, NULL), CLLM_OK);  // reuses 3 cached blocks
  cllm_kv_stats_t st = stats(kv);
  cr_assert_eq(st.blocks_active, 3);
  cr_assert_eq(st.blocks_cached, 1);
  cr_assert_eq(st.evictions, 3);
  cr_assert_eq(cllm_kv_seq_reserve(kv, s, 8, NULL), CLLM_ELIMIT);
  st = stats(kv);
  cr_assert_eq(st.blocks_active, 3);
  cr_assert_eq(st.blocks_cached, 1);
  size_t n;
  cr_assert_eq(cllm_kv_seq_length(kv, s, &n), CLLM_OK);
  cr_assert_eq(n, 12);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_KV), 4 * bb);
  check(kv);
  cllm_kv_cache_destroy(kv);
  cllm_monitor_destroy(m);
}

/* ---- pinning and bands ------------------------------------------------------------- */

Test(kv_retention, low_bands_go_first_and_pinned_blocks_stay) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_kv_config_t c = small_cfg(m, 8, 4);
  c.max_pinned_fraction = 0.25;  // 2 blocks
  cllm_kv_cache_t *kv = mk(&c);
  cllm_kv_token_t sys[9], lo[9], hi[9];
  seq_tokens(sys, 9, 1);
  seq_tokens(lo, 9, 2);
  seq_tokens(hi, 9, 3);
  cllm_kv_seq_opts_t high = {.priority = 3};
  cllm_kv_seq_t s = open_seq(kv, "sys"), l = open_seq(kv, "lo"), h, x;
  cr_assert_eq(cllm_kv_seq_open(kv, "hi", &high, &h), CLLM_OK);
  extend(kv, s, sys, 8);
  extend(kv, l, lo, 8);
  extend(kv, h, hi, 8);
  size_t np = 0;
  cr_assert_eq(cllm_kv_seq_pin(kv, s, &np), CLLM_OK);
  cr_assert_eq(np, 2);
  cr_assert_eq(cllm_kv_seq_pin(kv, h, &np), CLLM_ELIMIT);  // over the cap, nothing pinned
  cr_assert_eq(np, 0);
  cr_assert_eq(cllm_kv_seq_close(kv, h), CLLM_OK);  // closed first: oldest, but band 3
  cr_assert_eq(cllm_kv_seq_close(kv, s), CLLM_OK);
  cr_assert_eq(cllm_kv_seq_close(kv, l), CLLM_OK);
  cllm_kv_stats_t st = stats(kv);
  cr_assert_eq(st.blocks_cached, 6);
  cr_assert_eq(st.blocks_pinned, 2);
  check(kv);
  /* 2 free + 2 evictions: lo's blocks (band 0) go before hi's */
  x = open_seq(kv, "x");
  cr_assert_eq(cllm_kv_seq_reserve(kv, x, 16, NULL), CLLM_OK);
  size_t cached;
  cllm_kv_seq_t q;
  cr_assert_eq(cllm_kv_seq_open_with_prompt(kv, "q1", NULL, lo, 9, &q, &cached), CLLM_OK);
  cr_assert_eq(cached, 0);
  cr_assert_eq(cllm_kv_seq_open_with_prompt(kv, "q2", &high, hi, 9, &q, &cached), CLLM_OK);
  cr_assert_eq(cached, 8);
  cr_assert_eq(cllm_kv_seq_close(kv, q), CLLM_OK);
  /* the next two go from hi; the pinned system prompt survives everything */
  cr_assert_eq(cllm_kv_seq_reserve(kv, x, 8, NULL), CLLM_OK);
  cr_assert_eq(cllm_kv_seq_reserve(kv, x, 1, NULL), CLLM_ENOMEM);
  cr_assert_eq(cllm_kv_seq_open_with_prompt(kv, "q3", NULL, sys, 9, &q, &cached), CLLM_OK);
  cr_assert_eq(cached, 8);
  check(kv);
  /* unpinned, the system prompt becomes evictable */
  cr_assert_eq(cllm_kv_seq_unpin(kv, q, &np), CLLM_OK);
  cr_assert_eq(np, 2);
  cr_assert_eq(cllm_kv_seq_close(kv, q), CLLM_OK);
  cr_assert_eq(cllm_kv_seq_reserve(kv, x, 4, NULL), CLLM_OK);
  st = stats(kv);
  cr_assert_eq(st.blocks_pinned, 0);
  cr_assert_eq(st.blocks_cached, 1);
  check(kv);
  cllm_kv_cache_destroy(kv);
  cllm_monitor_destroy(m);
}

/* ---- the copy API --------------------------------------------------------------------- */

Test(kv_copy, lru_with_get_replace_without_double_count_and_oversize_refused) {
  cllm_monitor_t *m = mk_monitor(0);
  rec_t r = {0};
  cllm_kv_config_t c = small_cfg(m, 16, 4);
  c.copy_budget_bytes = 3 * 256;  // 3 blocks; a block stores 32 key floats
  c.evict_fn = record;
  c.evict_user = &r;
  cllm_kv_cache_t *kv = mk(&c);
  cr_assert_eq(cllm_kv_total_bytes(kv), 3 * 256);
  float in[96], out[96];
  size_t nk, nv;
  fill_floats(in, 32, 1);
  cr_assert_eq(cllm_kv_put(kv, "a", in, 32, in, 32), CLLM_OK);
  fill_floats(in, 32, 2);
  cr_assert_eq(cllm_kv_put(kv, "b", in, 20, in, 5), CLLM_OK);
  fill_floats(in, 32, 3);
  cr_assert_eq(cllm_kv_put(kv, "c", in, 1, NULL, 0), CLLM_OK);
  cr_assert_eq(cllm_kv_used_bytes(kv), 3 * 256);
  cr_assert_eq(cllm_kv_get(kv, "a", out, 96, &nk, out + 48, 48, &nv), CLLM_OK);  // a is MRU now
  cr_assert_eq(nk, 32);
  fill_floats(in, 32, 4);
  cr_assert_eq(cllm_kv_put(kv, "d", in, 32, in, 32), CLLM_OK);
  cr_assert_eq(r.calls, 1);
  cr_assert_str_eq(r.ids[0], "b", "get must move a to most recently used");
  cr_assert_eq(r.reasons[0], CLLM_KV_EVICT_LRU);
  /* replacing: same size, no double count and no eviction */
  fill_floats(in, 32, 5);
  cr_assert_eq(cllm_kv_put(kv, "c", in, 32, in, 32), CLLM_OK);
  cr_assert_eq(cllm_kv_used_bytes(kv), 3 * 256);
  cr_assert_eq(r.calls, 1);
  cr_assert_eq(cllm_kv_get(kv, "c", out, 96, &nk, out + 48, 48, &nv), CLLM_OK);
  cr_assert_eq(nk, 32);
  cr_assert_eq(nv, 32);
  cr_assert_eq(memcmp(out, in, 32 * sizeof(float)), 0);
  cr_assert_eq(memcmp(out + 48, in, 32 * sizeof(float)), 0);
  /* oversized: refused before anything is evicted */
  cr_assert_eq(cllm_kv_put(kv, "big", in, 96 + 1, NULL, 0), CLLM_ERANGE);
  cr_assert_eq(r.calls, 1);
  cr_assert_eq(cllm_kv_used_bytes(kv), 3 * 256);
  cr_assert_eq(cllm_kv_get(kv, "a", NULL, 0, &nk, NULL, 0, &nv), CLLM_OK);  // size query
  /* growing c to 2 blocks evicts the LRU other entry (a: d and c were used later) */
  cr_assert_eq(cllm_kv_put(kv, "c", in, 64, NULL, 0), CLLM_OK);
  cr_assert_eq(r.calls, 2);
  cr_assert_str_eq(r.ids[1], "a");
  cr_assert_eq(cllm_kv_get(kv, "c", out, 10, &nk, NULL, 0, &nv), CLLM_ERANGE);
  cr_assert_eq(nk, 64);
  cr_assert_eq(nv, 0);
  cr_assert_eq(cllm_kv_get(kv, "c", out, 96, &nk, NULL, 0, &nv), CLLM_OK);
  cr_assert_eq(memcmp(out, in, 64 * sizeof(float)), 0);
  /* shrinking frees blocks */
  cr_assert_eq(cllm_kv_put(kv, "c", in, 2, in, 2), CLLM_OK);
  cr_assert_eq(cllm_kv_used_bytes(kv), 2 * 256);
  cr_assert_eq(cllm_kv_evict(kv, "c"), CLLM_OK);
  cr_assert_eq(cllm_kv_evict(kv, "c"), CLLM_ENOTFOUND);
  cr_assert_eq(cllm_kv_used_bytes(kv), 256);
  cr_assert_eq(r.calls, 2, "explicit evict calls no callback");
  cllm_kv_stats_t st = stats(kv);
  cr_assert_eq(st.copy_entries, 1);
  cr_assert_eq(st.copy_evictions, 2);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_KV), st.charged_bytes);
  check(kv);
  cllm_kv_cache_destroy(kv);
  cllm_monitor_destroy(m);
}

Test(kv_copy, data_spans_blocks_and_layers_and_sequences_can_squeeze_entries) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_kv_config_t c = small_cfg(m, 6, 4);
  cllm_kv_cache_t *kv = mk(&c);
  float in[200], in2[200], out[200], out2[200];
  fill_floats(in, 200, 7);
  fill_floats(in2, 200, 8);
  cr_assert_eq(cllm_kv_put(kv, "e1", in, 70, in2, 33), CLLM_OK);  // 3 blocks
  cr_assert_eq(cllm_kv_put(kv, "e2", in2, 3, in, 64), CLLM_OK);   // 2 blocks
  size_t nk, nv;
  cr_assert_eq(cllm_kv_get(kv, "e1", out, 200, &nk, out2, 200, &nv), CLLM_OK);
  cr_assert_eq(nk, 70);
  cr_assert_eq(nv, 33);
  cr_assert_eq(memcmp(out, in, 70 * 4), 0);
  cr_assert_eq(memcmp(out2, in2, 33 * 4), 0);
  /* a sequence takes 3 blocks: 1 free, then e2 cannot be... the pool is shared */
  cllm_kv_seq_t s = open_seq(kv, "s");
  cr_assert_eq(cllm_kv_seq_reserve(kv, s, 4, NULL), CLLM_OK);
  cr_assert_eq(cllm_kv_put(kv, "e3", in, 64, NULL, 0), CLLM_OK);  // needs 2: evicts e2 (LRU)
  cr_assert_eq(cllm_kv_get(kv, "e2", NULL, 0, &nk, NULL, 0, &nv), CLLM_ENOTFOUND);
  cr_assert_eq(cllm_kv_get(kv, "e1", out, 200, &nk, out2, 200, &nv), CLLM_OK);
  cr_assert_eq(memcmp(out, in, 70 * 4), 0);
  cr_assert_eq(cllm_kv_seq_reserve(kv, s, 4, NULL), CLLM_ENOMEM);  // no preemption of entries
  cr_assert_eq(cllm_kv_put(kv, "e4", in, 200, NULL, 0), CLLM_ERANGE);  // 7 blocks > 6
  /* the pool cannot hold e5 even after evicting every other entry: refused */
  cr_assert_eq(cllm_kv_seq_close(kv, s), CLLM_OK);
  s = open_seq(kv, "s2");
  cr_assert_eq(cllm_kv_seq_reserve(kv, s, 4, NULL), CLLM_OK);
  cr_assert_eq(cllm_kv_put(kv, "e1", in, 192, NULL, 0), CLLM_ENOMEM);  // 6 blocks, 5 free at most
  cr_assert_eq(cllm_kv_get(kv, "e1", out, 200, &nk, out2, 200, &nv), CLLM_OK, "e1 is unchanged");
  cr_assert_eq(nk, 70);
  cr_assert_eq(memcmp(out, in, 70 * 4), 0);
  check(kv);
  cllm_kv_cache_destroy(kv);
  cllm_monitor_destroy(m);
}

/* ---- fault injection ------------------------------------------------------------------ */

static void sweep_create(cllm_fault_op_t op, int node) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_kv_config_t c = small_cfg(m, 64, 4);
  c.numa_node = node;
  int failures = 0;
  for (unsigned long nth = 1; nth < 64; nth++) {
    cllm_fault_reset();
    cllm_fault_arm(op, nth);
    cllm_kv_cache_t *kv = (cllm_kv_cache_t *)1;
    cllm_status_t rc = cllm_kv_cache_create(&c, &kv);
    bool hit = cllm_fault_injected() > 0;
    cllm_fault_reset();
    if (rc == CLLM_OK) {
      cr_assert_not_null(kv);
      /* a fault may land in an optional step (THP advice): still a working cache */
      cllm_kv_seq_t s = open_seq(kv, "a");
      cr_assert_eq(cllm_kv_seq_reserve(kv, s, 9, NULL), CLLM_OK);
      check(kv);
      cllm_kv_cache_destroy(kv);
      if (!hit) break;
      continue;
    }
    failures++;
    cr_assert(hit, "create failed (%s) without an injected fault", cllm_status_name(rc));
    cr_assert_null(kv);
    cr_assert(rc == CLLM_ENOMEM || rc == CLLM_ESYS || rc == CLLM_ENOTSUP || rc == CLLM_EBUSY,
              "op %s nth %lu: %s", cllm_fault_op_name(op), nth, cllm_status_name(rc));
    cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_KV), 0);
  }
  cllm_monitor_destroy(m);
  (void)failures;
}

/* First in its process: the system topology is loaded (and can fail) inside create. */
Test(kv_fault, create_bound_to_a_node_fails_cleanly_under_malloc_faults) {
  sweep_create(CLLM_FAULT_MALLOC, 0);
}

Test(kv_fault, create_fails_cleanly_under_every_fault) {
  sweep_create(CLLM_FAULT_MALLOC, -1);
  sweep_create(CLLM_FAULT_MMAP, -1);
  sweep_create(CLLM_FAULT_MADVISE, -1);
  sweep_create(CLLM_FAULT_BIND, 0);
}

Test(kv_fault, bind_to_a_missing_node_is_refused) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_kv_config_t c = small_cfg(m, 8, 4);
  c.numa_node = 4096;
  cllm_kv_cache_t *kv;
  cr_assert_eq(cllm_kv_cache_create(&c, &kv), CLLM_ENOTFOUND);
  c.numa_node = 0;
  kv = mk(&c);
  cllm_kv_seq_t s = open_seq(kv, "a");
  cr_assert_eq(cllm_kv_seq_reserve(kv, s, 9, NULL), CLLM_OK);
  /* the kernel's own answer: the pool pages are bound (MPOL_BIND) to node 0 */
  void *k, *v;
  cr_assert_eq(cllm_kv_block_layer(kv, 0, 1, &k, &v), CLLM_OK);
  int mode = -1;
  unsigned long mask = 0;
  cr_assert_eq(syscall(SYS_get_mempolicy, &mode, &mask, sizeof mask * 8, v, 2 /* MPOL_F_ADDR */), 0);
  cr_assert_eq(mode, 2 /* MPOL_BIND */);
  cr_assert_eq(mask, 1ul);
  cllm_kv_cache_destroy(kv);
  cllm_monitor_destroy(m);
}

Test(kv_fault, populate_reserve_and_malloc_faults_leave_the_cache_unchanged) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_kv_config_t c = small_cfg(m, 65536, 4);  // 4 MiB pools: committed in 2 MiB steps
  cllm_kv_cache_t *kv = mk(&c);
  cllm_kv_seq_t s = open_seq(kv, "a");
  /* populate fails: ENOMEM, nothing taken */
  cllm_fault_arm(CLLM_FAULT_MADVISE, 1);
  cr_assert_eq(cllm_kv_seq_reserve(kv, s, 5, NULL), CLLM_ENOMEM);
  cllm_fault_reset();
  cllm_kv_stats_t st = stats(kv);
  cr_assert_eq(st.blocks_active, 0);
  cr_assert_eq(st.blocks_committed, 0);
  check(kv);
  cr_assert_eq(cllm_kv_seq_reserve(kv, s, 5, NULL), CLLM_OK);
  st = stats(kv);
  cr_assert_gt(st.blocks_committed, 2);
  cr_assert_lt(st.blocks_committed, 65536);  // committed in a step, not all at once
  /* the block table cannot grow: ENOMEM, unchanged */
  size_t n;
  cllm_fault_arm(CLLM_FAULT_MALLOC, 1);
  cr_assert_eq(cllm_kv_seq_reserve(kv, s, 4 * 64, NULL), CLLM_ENOMEM);
  cllm_fault_reset();
  cr_assert_eq(cllm_kv_seq_length(kv, s, &n), CLLM_OK);
  cr_assert_eq(n, 5);
  /* the monitor refuses the commit of the rest of the pools: ELIMIT, unchanged */
  size_t charged = st.charged_bytes;
  cllm_fault_arm(CLLM_FAULT_RESERVE, 1);
  cr_assert_eq(cllm_kv_seq_reserve(kv, s, 4 * 65536 - 5, NULL), CLLM_ELIMIT);
  cllm_fault_reset();
  cr_assert_eq(stats(kv).charged_bytes, charged);
  cr_assert_eq(cllm_kv_seq_length(kv, s, &n), CLLM_OK);
  cr_assert_eq(n, 5);
  check(kv);
  /* the id copy fails (ids longer than 31 bytes need a new buffer) */
  cllm_kv_seq_t x;
  cllm_fault_arm(CLLM_FAULT_MALLOC, 1);
  cr_assert_eq(cllm_kv_seq_open(kv, "an-id-that-is-longer-than-thirty-two-bytes", NULL, &x),
               CLLM_ENOMEM);
  cllm_fault_arm(CLLM_FAULT_MALLOC, 1);
  float f[4] = {1, 2, 3, 4};
  cr_assert_eq(cllm_kv_put(kv, "an-id-that-is-longer-than-thirty-two-bytes", f, 4, f, 4),
               CLLM_ENOMEM);
  cllm_fault_arm(CLLM_FAULT_MALLOC, 1);
  cr_assert_eq(cllm_kv_seq_fork(kv, s, "an-id-that-is-longer-than-thirty-two-bytes", &x),
               CLLM_ENOMEM);
  cllm_fault_arm(CLLM_FAULT_MALLOC, 1);
  cr_assert_eq(cllm_kv_check(kv), CLLM_ENOMEM);
  cllm_fault_reset();
  st = stats(kv);
  cr_assert_eq(st.sequences, 1);
  cr_assert_eq(st.copy_entries, 0);
  check(kv);
  cllm_kv_cache_destroy(kv);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_COUNT), 0);
  cllm_monitor_destroy(m);
}

/* Found by the C++ layer's developer: with every slot taken, put refused a new id
 * (CLLM_ENOMEM) instead of evicting the least recently used entry. */
static int g_slot_evictions;
static void count_evict(void *user, const char *id, cllm_kv_evict_reason_t why) {
  (void)user;
  cr_assert_eq(why, CLLM_KV_EVICT_LRU);
  cr_assert_str_eq(id, "a");
  g_slot_evictions++;
}

Test(kv_copy, put_evicts_the_lru_entry_when_every_slot_is_taken) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_kv_config_t c = small_cfg(m, 64, 16);
  c.max_seqs = 2;
  c.evict_fn = count_evict;
  cllm_kv_cache_t *kv = mk(&c);
  float x[4] = {1, 2, 3, 4};
  cr_assert_eq(cllm_kv_put(kv, "a", x, 4, x, 4), CLLM_OK);
  cr_assert_eq(cllm_kv_put(kv, "b", x, 4, x, 4), CLLM_OK);
  cr_assert_eq(cllm_kv_put(kv, "c", x, 4, x, 4), CLLM_OK);
  cr_assert_eq(g_slot_evictions, 1);
  size_t nk, nv;
  cr_assert_eq(cllm_kv_get(kv, "a", NULL, 0, &nk, NULL, 0, &nv), CLLM_ENOTFOUND);
  cr_assert_eq(cllm_kv_get(kv, "c", NULL, 0, &nk, NULL, 0, &nv), CLLM_OK);
  cr_assert_eq(cllm_kv_check(kv), CLLM_OK);
  cllm_kv_cache_destroy(kv);
  cllm_monitor_destroy(m);
}
