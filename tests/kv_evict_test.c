/* Criterion suite for the KV cache's block reuse (lib/kv_cache.c, lib/kv_seq.c):
 * eviction order, preemption and its callbacks, the monitor charge and reclaimer,
 * pinning and priority bands. Each Test runs in its own process. */
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

/* ---- eviction order ------------------------------------------------------------------ */

Test(kv_evict, fresh_and_free_blocks_before_cached_then_lru_tail_first) {
  cllm_monitor_t *m;
  cllm_kv_cache_t *kv = mk_cache(&m, 8, 4);
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
  check_destroy(kv, m);
}

Test(kv_evict, reuse_moves_a_prefix_to_most_recent) {
  cllm_monitor_t *m;
  cllm_kv_cache_t *kv = mk_cache(&m, 4, 4);
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
  check_destroy(kv, m);
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
  check_destroy(kv, m);
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
  check_destroy(kv, m);
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
  check_destroy(kv, m);
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
  check_destroy(kv, m);
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
  check_destroy(kv, m);
}
