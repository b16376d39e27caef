/* Criterion suite for the paged KV cache (lib/kv_*.c): configuration (struct_size
 * rule), the block API, sequences and the id map, bad input. Eviction, preemption and
 * retention: kv_evict_test.c; prefix sharing and fork: kv_prefix_test.c; the copy API
 * and fault injection: kv_copy_test.c; the model-based randomized test:
 * kv_model_test.c. Each Test runs in its own process. */
#include <criterion/criterion.h>
#include <stdbool.h>
#include <stddef.h>
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

/* lib/internal/versioned.h: an older (smaller) config keeps the defaults of the
 * fields it lacks; a newer (larger) one is accepted only with its unknown tail zero. */
Test(kv_config, an_older_struct_gets_defaults_and_a_newer_one_needs_a_zero_tail) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_kv_config_t c = small_cfg(m, 8, 4);
  c.populate = false;      // past the cut below: the default (true) applies
  c.max_seqs = 3;          // past the cut: the default (derived from the blocks) applies
  c.struct_size = offsetof(cllm_kv_config_t, evict_fn);  // up to and including `monitor`
  cllm_kv_cache_t *kv = NULL;
  cr_assert_eq(cllm_kv_cache_create(&c, &kv), CLLM_OK);
  cr_assert_gt(cllm_kv_footprint(&c), 0);
  cllm_kv_seq_t s[8];
  char id[8];
  for (int i = 0; i < 8; i++) {  // more than max_seqs = 3 would allow
    snprintf(id, sizeof id, "s%d", i);
    cr_assert_eq(cllm_kv_seq_open(kv, id, NULL, &s[i]), CLLM_OK);
  }
  cllm_kv_stats_t st = {.struct_size = sizeof st};
  cr_assert_eq(cllm_kv_stats(kv, &st), CLLM_OK);
  cr_assert_eq(st.sequences, 8);
  check(kv);
  cllm_kv_cache_destroy(kv);

  struct {
    cllm_kv_config_t c;
    uint64_t future;
  } big;
  memset(&big, 0, sizeof big);
  big.c = small_cfg(m, 8, 4);
  big.c.struct_size = sizeof big;
  big.future = 1;  // asks for something this build cannot do
  kv = (cllm_kv_cache_t *)1;
  cr_assert_eq(cllm_kv_cache_create(&big.c, &kv), CLLM_EINVAL);
  cr_assert_null(kv);
  cr_assert_eq(cllm_kv_footprint(&big.c), 0);
  big.future = 0;
  cr_assert_eq(cllm_kv_cache_create(&big.c, &kv), CLLM_OK);
  cllm_kv_cache_destroy(kv);
  c.struct_size = sizeof(size_t) - 1;  // not set
  cr_assert_eq(cllm_kv_cache_create(&c, &kv), CLLM_EINVAL);
  cr_assert_eq(cllm_kv_footprint(NULL), 0);  // NULL: the defaults, which have no shape
  cllm_monitor_destroy(m);
}

/* Stats out: a smaller struct gets its own fields and struct_size = its size. */
Test(kv_config, stats_fill_an_older_struct_up_to_its_size) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_kv_config_t c = small_cfg(m, 8, 4);
  cllm_kv_cache_t *kv;
  cr_assert_eq(cllm_kv_cache_create(&c, &kv), CLLM_OK);
  const cllm_kv_cache_t *ro = kv;  // read-only calls take a const cache
  union {
    cllm_kv_stats_t st;
    unsigned char bytes[sizeof(cllm_kv_stats_t)];
  } u;
  memset(&u, 0xab, sizeof u);
  size_t cut = offsetof(cllm_kv_stats_t, block_tokens);
  u.st.struct_size = cut;
  cr_assert_eq(cllm_kv_stats(ro, &u.st), CLLM_OK);
  cr_assert_eq(u.st.struct_size, cut);
  cr_assert_eq(u.st.num_blocks, 8);
  cr_assert_eq(u.st.block_bytes, cllm_kv_block_bytes(kv));
  for (size_t i = cut; i < sizeof u; i++) cr_assert_eq(u.bytes[i], 0xab, "byte %zu written", i);
  u.st.struct_size = sizeof u.st + 64;  // a newer caller: gets this build's fields
  cr_assert_eq(cllm_kv_stats(ro, &u.st), CLLM_OK);
  cr_assert_eq(u.st.struct_size, sizeof u.st);
  cr_assert_eq(cllm_kv_check(ro), CLLM_OK);
  cr_assert_eq(cllm_kv_used_bytes(ro), 0);
  cllm_kv_cache_destroy(kv);
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
  cllm_monitor_t *m;
  cllm_kv_cache_t *kv = mk_cache(&m, 64, 4);
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
  cllm_monitor_t *m;
  cllm_kv_cache_t *kv = mk_cache(&m, 16, 4);
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
  check_destroy(kv, m);
}

Test(kv_seq, bad_input_gets_clear_statuses_and_changes_nothing) {
  cllm_monitor_t *m;
  cllm_kv_cache_t *kv = mk_cache(&m, 8, 4);
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
  check_destroy(kv, m);
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
  check_destroy(kv, m);
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
