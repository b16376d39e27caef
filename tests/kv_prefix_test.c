/* Criterion suite for the KV cache's prefix sharing (lib/kv_prefix.c): shared full
 * blocks, salts, forced hash collisions, reused parents, duplicate content; fork and
 * copy-on-write. Each Test runs in its own process. */
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

/* ---- prefix sharing ----------------------------------------------------------------- */

Test(kv_prefix, common_prefix_shares_exactly_the_full_blocks) {
  cllm_monitor_t *m;
  cllm_kv_cache_t *kv = mk_cache(&m, 32, 4);
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
  check_destroy(kv, m);
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
  check_destroy(kv, m);
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
  check_destroy(kv, m);
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
  check_destroy(kv, m);
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
  check_destroy(kv, m);
}
