/* The KV cache as a forward(token, pos) runtime uses it: slots by position
 * (cllm_kv_seq_ensure), the committed count, layer views and the table view;
 * the footprint and the residency rule (what the kernel holds <= the charge). */
#include <criterion/criterion.h>
#include <stdint.h>
#include <string.h>

#include <cllm/kv_cache.h>
#include <cllm/monitor.h>

#include "support/kv_test_util.h"

/* ---- ensure ---------------------------------------------------------------------- */

Test(kv_runtime, ensure_locates_reserved_positions_and_reserves_new_ones) {
  cllm_monitor_t *m;
  cllm_kv_cache_t *kv = mk_cache(&m, 16, 4);
  cllm_kv_seq_t s = open_seq(kv, "a");
  cllm_kv_loc_t loc[8], again[8];
  /* one token per call, as a decode loop does */
  for (size_t pos = 0; pos < 6; pos++) {
    cr_assert_eq(cllm_kv_seq_ensure(kv, s, pos, 1, &loc[pos]), CLLM_OK);
    size_t len;
    cr_assert_eq(cllm_kv_seq_length(kv, s, &len), CLLM_OK);
    cr_assert_eq(len, pos + 1);
  }
  const uint32_t *t;
  size_t nb;
  cr_assert_eq(cllm_kv_seq_table_view(kv, s, &t, &nb), CLLM_OK);
  cr_assert_eq(nb, 2);
  for (size_t pos = 0; pos < 6; pos++) {
    cr_assert_eq(loc[pos].block, t[pos / 4]);
    cr_assert_eq(loc[pos].offset, pos % 4);
  }
  /* idempotent: positions already reserved are only located, nothing grows */
  cr_assert_eq(cllm_kv_seq_ensure(kv, s, 2, 4, again), CLLM_OK);
  cr_assert_eq(memcmp(again, loc + 2, 4 * sizeof *loc), 0);
  size_t len;
  cr_assert_eq(cllm_kv_seq_length(kv, s, &len), CLLM_OK);
  cr_assert_eq(len, 6);
  /* overlapping: [4, 10) = 2 located + 4 new, locs in position order */
  cr_assert_eq(cllm_kv_seq_ensure(kv, s, 4, 6, again), CLLM_OK);
  cr_assert_eq(cllm_kv_seq_length(kv, s, &len), CLLM_OK);
  cr_assert_eq(len, 10);
  cr_assert_eq(cllm_kv_seq_table_view(kv, s, &t, &nb), CLLM_OK);
  cr_assert_eq(nb, 3);
  for (size_t i = 0; i < 6; i++) {
    cr_assert_eq(again[i].block, t[(4 + i) / 4]);
    cr_assert_eq(again[i].offset, (4 + i) % 4);
  }
  /* locs may be NULL */
  cr_assert_eq(cllm_kv_seq_ensure(kv, s, 10, 1, NULL), CLLM_OK);
  check_destroy(kv, m);
}

Test(kv_runtime, ensure_refuses_gaps_and_bad_input_and_leaves_the_sequence_unchanged) {
  cllm_monitor_t *m;
  cllm_kv_cache_t *kv = mk_cache(&m, 4, 4);
  cllm_kv_seq_t s = open_seq(kv, "a");
  cllm_kv_loc_t loc[4];
  cr_assert_eq(cllm_kv_seq_ensure(kv, s, 0, 3, loc), CLLM_OK);
  cr_assert_eq(cllm_kv_seq_ensure(kv, s, 4, 1, loc), CLLM_ERANGE);  // gap at position 3
  cr_assert_eq(cllm_kv_seq_ensure(kv, s, 3, 0, loc), CLLM_EINVAL);
  cr_assert_eq(cllm_kv_seq_ensure(NULL, s, 3, 1, loc), CLLM_EINVAL);
  cr_assert_eq(cllm_kv_seq_ensure(kv, s, 3, SIZE_MAX, loc), CLLM_ERANGE);
  cr_assert_eq(cllm_kv_seq_ensure(kv, s, 3, 14, loc), CLLM_ERANGE);  // past the whole cache
  cllm_kv_seq_t stale = {s.slot, s.gen + 1};
  cr_assert_eq(cllm_kv_seq_ensure(kv, stale, 3, 1, loc), CLLM_ENOTFOUND);
  size_t len, n;
  cr_assert_eq(cllm_kv_seq_length(kv, s, &len), CLLM_OK);
  cr_assert_eq(len, 3);
  /* committed getter */
  cr_assert_eq(cllm_kv_seq_committed(kv, s, &n), CLLM_OK);
  cr_assert_eq(n, 0);
  cllm_kv_token_t tok[3] = {1, 2, 3};
  cr_assert_eq(cllm_kv_seq_commit(kv, s, tok, 2), CLLM_OK);
  cr_assert_eq(cllm_kv_seq_committed(kv, s, &n), CLLM_OK);
  cr_assert_eq(n, 2);
  cr_assert_eq(cllm_kv_seq_commit(kv, s, tok, 2), CLLM_ERANGE);  // only 1 more reserved
  cr_assert_eq(cllm_kv_seq_commit(kv, s, tok, 1), CLLM_OK);
  cr_assert_eq(cllm_kv_seq_committed(kv, s, &n), CLLM_OK);
  cr_assert_eq(n, 3);
  cr_assert_eq(cllm_kv_seq_committed(kv, s, NULL), CLLM_EINVAL);
  cr_assert_eq(cllm_kv_seq_committed(NULL, s, &n), CLLM_EINVAL);
  cr_assert_eq(cllm_kv_seq_committed(kv, stale, &n), CLLM_ENOTFOUND);
  const uint32_t *t;
  cr_assert_eq(cllm_kv_seq_table_view(kv, s, NULL, &n), CLLM_EINVAL);
  cr_assert_eq(cllm_kv_seq_table_view(kv, s, &t, NULL), CLLM_EINVAL);
  cr_assert_eq(cllm_kv_seq_table_view(kv, stale, &t, &n), CLLM_ENOTFOUND);
  check_destroy(kv, m);
}

Test(kv_runtime, ensure_copies_a_shared_partial_block_before_extending_it) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_kv_config_t c = small_cfg(m, 8, 4);
  cllm_kv_cache_t *kv = mk(&c);
  cllm_kv_seq_t p = open_seq(kv, "p"), ch;
  cr_assert_eq(cllm_kv_seq_ensure(kv, p, 0, 2, NULL), CLLM_OK);
  cr_assert_eq(cllm_kv_seq_fork(kv, p, "c", &ch), CLLM_OK);
  cllm_kv_loc_t loc[2];
  cr_assert_eq(cllm_kv_seq_ensure(kv, ch, 1, 2, loc), CLLM_OK);  // 1 located, 1 new
  const uint32_t *tp, *tc;
  size_t np, nc;
  cr_assert_eq(cllm_kv_seq_table_view(kv, p, &tp, &np), CLLM_OK);
  cr_assert_eq(cllm_kv_seq_table_view(kv, ch, &tc, &nc), CLLM_OK);
  cr_assert_neq(tp[0], tc[0]);  // the child's copy
  cr_assert_eq(loc[0].block, tc[0]);
  cr_assert_eq(loc[1].block, tc[0]);
  cr_assert_eq(stats(kv).cow_copies, 1);
  check_destroy(kv, m);
}

Test(kv_runtime, the_caches_refusals_show_in_the_monitor) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_kv_config_t c = page_cfg(m, 8);
  cllm_kv_cache_t *kv = mk(&c);
  cr_assert_eq(cllm_monitor_set_limit(m, 2 * cllm_kv_block_bytes(kv)), CLLM_OK);
  cllm_kv_seq_t s = open_seq(kv, "a");
  cr_assert_eq(cllm_kv_seq_ensure(kv, s, 0, 8, NULL), CLLM_OK);
  cr_assert_eq(cllm_kv_seq_ensure(kv, s, 8, 1, NULL), CLLM_ELIMIT);
  cr_assert_eq(cllm_kv_seq_reserve(kv, s, 4, NULL), CLLM_ELIMIT);
  cllm_monitor_stats_t ms = {.struct_size = sizeof ms};
  cr_assert_eq(cllm_monitor_stats(m, &ms), CLLM_OK);
  cr_assert_eq(ms.try_refusals, 2);
  cr_assert_eq(stats(kv).refused, 2);
  cllm_kv_cache_destroy(kv);
  cllm_monitor_destroy(m);
}

/* ---- layer views ------------------------------------------------------------------- */

Test(kv_runtime, layer_view_addresses_every_block_as_block_layer_does) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_kv_config_t c = small_cfg(m, 10, 8);
  c.layers = 3;
  cllm_kv_cache_t *kv = mk(&c);
  for (uint32_t l = 0; l < 3; l++) {
    cllm_kv_layer_view_t v;
    cr_assert_eq(cllm_kv_layer_view(kv, l, &v), CLLM_OK);
    cr_assert_eq(v.row_bytes, 16);  // 1 head x 4 x fp32
    cr_assert_eq(v.block_stride, 8 * 16);
    cr_assert_eq(v.block_tokens, 8);
    cr_assert_eq(v.num_blocks, 10);
    for (uint32_t b = 0; b < 10; b++) {
      void *k, *vv;
      cr_assert_eq(cllm_kv_block_layer(kv, b, l, &k, &vv), CLLM_OK);
      cr_assert_eq((char *)v.k + b * v.block_stride, (char *)k);
      cr_assert_eq((char *)v.v + b * v.block_stride, (char *)vv);
    }
  }
  cllm_kv_layer_view_t v;
  cr_assert_eq(cllm_kv_layer_view(kv, 3, &v), CLLM_ERANGE);
  cr_assert_eq(cllm_kv_layer_view(kv, 0, NULL), CLLM_EINVAL);
  cr_assert_eq(cllm_kv_layer_view(NULL, 0, &v), CLLM_EINVAL);
  cllm_kv_cache_destroy(kv);
  cllm_monitor_destroy(m);
}

/* ---- footprint and residency --------------------------------------------------------- */

/* Use every block once, then compare the charge with the footprint and with what
 * the kernel holds. */
static void fill_and_compare(cllm_kv_config_t *c) {
  cllm_monitor_t *m = mk_monitor(0);
  c->monitor = m;
  size_t fp = cllm_kv_footprint(c);
  cr_assert_gt(fp, 0);
  cllm_kv_cache_t *kv = mk(c);
  cllm_kv_stats_t st = stats(kv);
  cr_assert_eq(st.charged_bytes, 0, "a new cache charges nothing");
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_KV), 0);
  cr_assert_leq(st.resident_bytes, st.charged_bytes);
  cllm_kv_seq_t s = open_seq(kv, "all");
  uint32_t bt = cllm_kv_block_tokens(kv);
  size_t n = cllm_kv_num_blocks(kv) * bt;
  for (size_t pos = 0; pos < n; pos += bt) {
    cllm_kv_loc_t loc;
    cr_assert_eq(cllm_kv_seq_ensure(kv, s, pos, 1, &loc), CLLM_OK);
    for (uint32_t l = 0; l < c->layers; l++) {  // the runtime writes the token's rows
      cllm_kv_layer_view_t v;
      cr_assert_eq(cllm_kv_layer_view(kv, l, &v), CLLM_OK);
      memset((char *)v.k + loc.block * v.block_stride + loc.offset * v.row_bytes, 1, v.row_bytes);
      memset((char *)v.v + loc.block * v.block_stride + loc.offset * v.row_bytes, 2, v.row_bytes);
    }
    st = stats(kv);
    cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_KV), st.charged_bytes);
    cr_assert_leq(st.resident_bytes, st.charged_bytes, "resident %zu > charged %zu at %zu",
                  st.resident_bytes, st.charged_bytes, pos);
    cr_assert_leq(st.charged_bytes, fp);
    if (pos + bt < n) cr_assert_eq(cllm_kv_seq_ensure(kv, s, pos + 1, bt - 1, NULL), CLLM_OK);
  }
  st = stats(kv);
  cr_assert_eq(st.charged_bytes, fp, "full cache: charge %zu, footprint %zu", st.charged_bytes, fp);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_KV), fp);
  check(kv);
  cllm_kv_cache_destroy(kv);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_KV), 0);
  cllm_monitor_destroy(m);
}

Test(kv_runtime, footprint_is_the_full_charge_and_resident_never_passes_it_populated) {
  cllm_kv_config_t c = small_cfg(NULL, 0, 16);
  c.kv_heads = 2, c.head_dim = 64, c.dtype_bytes = 2, c.layers = 3;  // 4 KiB a block and pool
  c.capacity_blocks = 1100;  // pools of 4.3 MiB: three 2 MiB commit steps
  fill_and_compare(&c);
}

Test(kv_runtime, footprint_is_the_full_charge_and_resident_never_passes_it_by_pages) {
  cllm_kv_config_t c = small_cfg(NULL, 0, 16);
  c.kv_heads = 1, c.head_dim = 24, c.dtype_bytes = 4, c.layers = 2;  // 1.5 KiB chunks
  c.capacity_blocks = 300;
  c.populate = false;
  fill_and_compare(&c);
}

Test(kv_runtime, reclaim_gives_pages_back_and_reuse_charges_them_again) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_kv_config_t c = page_cfg(m, 8);
  cllm_kv_cache_t *kv = mk(&c);
  size_t bb = cllm_kv_block_bytes(kv);
  cllm_kv_seq_t s = open_seq(kv, "a");
  cr_assert_eq(cllm_kv_seq_ensure(kv, s, 0, 32, NULL), CLLM_OK);  // all 8 blocks
  cllm_kv_layer_view_t v;
  for (uint32_t l = 0; l < 2; l++) {
    cr_assert_eq(cllm_kv_layer_view(kv, l, &v), CLLM_OK);
    memset(v.k, 7, 8 * v.block_stride);
    memset(v.v, 7, 8 * v.block_stride);
  }
  cllm_kv_stats_t st = stats(kv);
  cr_assert_eq(st.charged_bytes, 8 * bb);
  cr_assert_eq(st.resident_bytes, 8 * bb);
  cr_assert_eq(cllm_kv_seq_close(kv, s), CLLM_OK);  // 8 FREE blocks, still resident
  cr_assert_eq(stats(kv).resident_bytes, 8 * bb);
  cr_assert_eq(cllm_monitor_set_limit(m, 8 * bb), CLLM_OK);
  cr_assert_eq(cllm_monitor_reserve(m, CLLM_CAT_STEP, 3 * bb), CLLM_OK);  // reclaims 3
  st = stats(kv);
  cr_assert_eq(st.blocks_given_back, 3);
  cr_assert_eq(st.charged_bytes, 5 * bb);
  cr_assert_eq(st.resident_bytes, 5 * bb);
  cr_assert_eq(cllm_kv_seq_ensure(kv, s, 0, 1, NULL), CLLM_ENOTFOUND);  // closed
  s = open_seq(kv, "b");
  cr_assert_eq(cllm_kv_seq_ensure(kv, s, 0, 20, NULL), CLLM_OK);  // the 5 resident: no charge
  cr_assert_eq(stats(kv).charged_bytes, 5 * bb);
  cr_assert_eq(cllm_kv_seq_ensure(kv, s, 20, 4, NULL), CLLM_ELIMIT);  // a given-back one: no room
  cr_assert_eq(cllm_monitor_release(m, CLLM_CAT_STEP, 3 * bb), CLLM_OK);
  cr_assert_eq(cllm_kv_seq_ensure(kv, s, 20, 12, NULL), CLLM_OK);
  st = stats(kv);
  cr_assert_eq(st.blocks_given_back, 0);
  cr_assert_eq(st.charged_bytes, 8 * bb);
  cr_assert_leq(st.resident_bytes, st.charged_bytes);
  check_destroy(kv, m);
}

Test(kv_runtime, blocks_smaller_than_a_page_are_given_back_in_whole_page_units) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_kv_config_t c = small_cfg(m, 256, 4);  // a block's share of a pool: 64 bytes
  c.populate = false;
  cllm_kv_cache_t *kv = mk(&c);
  size_t bb = cllm_kv_block_bytes(kv);  // 256: a unit is 64 blocks (one page per pool)
  cllm_kv_seq_t s = open_seq(kv, "a"), t;
  cr_assert_eq(cllm_kv_seq_ensure(kv, s, 0, 4 * 256, NULL), CLLM_OK);
  for (uint32_t l = 0; l < 2; l++) {
    cllm_kv_layer_view_t v;
    cr_assert_eq(cllm_kv_layer_view(kv, l, &v), CLLM_OK);
    memset(v.k, 3, 256 * v.block_stride);
    memset(v.v, 3, 256 * v.block_stride);
  }
  cr_assert_eq(stats(kv).charged_bytes, 256 * bb);
  cr_assert_eq(stats(kv).resident_bytes, 256 * bb);
  cr_assert_eq(cllm_kv_seq_close(kv, s), CLLM_OK);
  /* one block still in use keeps its unit resident */
  t = open_seq(kv, "t");
  cr_assert_eq(cllm_kv_seq_ensure(kv, t, 0, 1, NULL), CLLM_OK);
  cr_assert_eq(cllm_monitor_set_limit(m, 256 * bb), CLLM_OK);
  cr_assert_eq(cllm_monitor_reserve(m, CLLM_CAT_STEP, 150 * bb), CLLM_OK);  // 3 units
  cllm_kv_stats_t st = stats(kv);
  cr_assert_eq(st.blocks_given_back, 192);
  cr_assert_eq(st.charged_bytes, 64 * bb);
  cr_assert_leq(st.resident_bytes, st.charged_bytes);
  check(kv);
  /* the next blocks come from the resident unit, then a given-back unit is charged whole */
  cr_assert_eq(cllm_monitor_release(m, CLLM_CAT_STEP, 150 * bb), CLLM_OK);
  cr_assert_eq(cllm_kv_seq_ensure(kv, t, 1, 4 * 64, NULL), CLLM_OK);  // 64 more blocks
  st = stats(kv);
  cr_assert_eq(st.blocks_given_back, 128);
  cr_assert_eq(st.charged_bytes, 128 * bb);
  cr_assert_leq(st.resident_bytes, st.charged_bytes);
  check_destroy(kv, m);
}

/* ---- placement (issue: KV pools take the weights' choices) ---------------------------- */

#include <cllm/numa.h>

#include <sys/syscall.h>
#include <unistd.h>

Test(kv_runtime, placement_is_validated_and_reported) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_kv_config_t c = small_cfg(m, 8, 4);
  cllm_kv_cache_t *kv = NULL;
  c.numa = CLLM_KV_NUMA_BIND;  // without a node
  cr_assert_eq(cllm_kv_cache_create(&c, &kv), CLLM_EINVAL);
  c.numa = (cllm_kv_numa_t)9;
  cr_assert_eq(cllm_kv_cache_create(&c, &kv), CLLM_EINVAL);
  cr_assert_eq(cllm_kv_footprint(&c), 0);
  const cllm_topology_t *topo = cllm_topology_system();
  cr_assert_not_null(topo);
  int nodes = cllm_topology_nodes(topo);
  cllm_kv_numa_t modes[] = {CLLM_KV_NUMA_AUTO, CLLM_KV_NUMA_LOCAL, CLLM_KV_NUMA_INTERLEAVE,
                            CLLM_KV_NUMA_NONE};
  for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
    c.numa = modes[i];
    kv = mk(&c);
    cllm_kv_stats_t st = stats(kv);
    if (nodes <= 1 || modes[i] == CLLM_KV_NUMA_NONE)
      cr_assert_eq(st.numa_applied, CLLM_KV_NUMA_NONE, "one node: the kernel's default");
    else
      cr_assert_eq(st.numa_applied, modes[i] == CLLM_KV_NUMA_LOCAL ? CLLM_KV_NUMA_LOCAL
                                                                   : CLLM_KV_NUMA_INTERLEAVE);
    cllm_kv_cache_destroy(kv);
  }
  c.numa = CLLM_KV_NUMA_BIND;
  c.numa_node = 0;
  kv = mk(&c);
  cr_assert_eq(stats(kv).numa_applied, CLLM_KV_NUMA_BIND);
  cllm_kv_cache_destroy(kv);
  cllm_monitor_destroy(m);
}

/* Pages of every pool after a write to every block, per node (move_pages). */
static void pages_per_node(cllm_kv_cache_t *kv, uint32_t layers, size_t *counts, int max_nodes) {
  memset(counts, 0, (size_t)max_nodes * sizeof *counts);
  for (uint32_t l = 0; l < layers; l++) {
    cllm_kv_layer_view_t v;
    cr_assert_eq(cllm_kv_layer_view(kv, l, &v), CLLM_OK);
    size_t bytes = (size_t)v.num_blocks * v.block_stride, absent = 0, other = 0;
    void *pools[2] = {v.k, v.v};
    for (int p = 0; p < 2; p++) {
      memset(pools[p], 1, bytes);
      for (size_t off = 0; off < bytes; off += 4096) {  // move_pages, query mode
        void *page = (char *)pools[p] + off;
        int status = -1;
        cr_assert_eq(syscall(SYS_move_pages, 0, 1UL, &page, NULL, &status, 0), 0);
        if (status < 0) absent++;
        else if (status >= max_nodes) other++;
        else counts[status]++;
      }
      cr_assert_eq(absent + other, 0);
    }
  }
}

Test(kv_runtime, pools_land_where_the_policy_says_move_pages) {
  const cllm_topology_t *topo = cllm_topology_system();
  cr_assert_not_null(topo);
  int nodes = cllm_topology_nodes(topo);
  if (nodes < 2) cr_skip_test("one NUMA node: placement can only be proved on several (the 2/4-node guests)");
  cllm_monitor_t *m = mk_monitor(0);
  enum { MAXN = 64 };
  size_t counts[MAXN];
  /* 4 MiB per pool (two 2 MiB pages), 2 layers: 16 MiB */
  cllm_kv_config_t c = small_cfg(m, 0, 16);
  c.kv_heads = 8, c.head_dim = 64, c.dtype_bytes = 4;  // 32 KiB a block per pool
  c.capacity_blocks = 128 * (size_t)nodes;  // 4 MiB x nodes per pool
  for (int k = 0; k < nodes; k++) {
    c.numa = CLLM_KV_NUMA_BIND;
    c.numa_node = k;
    cllm_kv_cache_t *kv = mk(&c);
    pages_per_node(kv, 2, counts, MAXN);
    cllm_numa_node_info_t info;
    cr_assert_eq(cllm_topology_node_info(topo, k, &info), CLLM_OK);
    size_t total = 0;
    for (int n = 0; n < MAXN; n++) total += counts[n];
    cr_assert_eq(counts[info.os_index], total, "bind %d: every page on OS node %u", k, info.os_index);
    cllm_kv_cache_destroy(kv);
  }
  c.numa = CLLM_KV_NUMA_INTERLEAVE;
  c.numa_node = -1;
  cllm_kv_cache_t *kv = mk(&c);
  cr_assert_eq(stats(kv).numa_applied, CLLM_KV_NUMA_INTERLEAVE);
  pages_per_node(kv, 2, counts, MAXN);
  size_t total = 0, lo = SIZE_MAX, hi = 0;
  for (int k = 0; k < nodes; k++) {
    cllm_numa_node_info_t info;
    cr_assert_eq(cllm_topology_node_info(topo, k, &info), CLLM_OK);
    size_t n = counts[info.os_index];
    total += n;
    lo = n < lo ? n : lo;
    hi = n > hi ? n : hi;
  }
  size_t huge = 512;  // 4 KiB pages in a 2 MiB page
  cr_assert_leq(hi - lo, 2 * huge * 4, "interleave: per-node pages %zu..%zu of %zu", lo, hi, total);
  cr_assert_gt(lo, 0, "interleave: a node got no page");
  cllm_kv_cache_destroy(kv);
  cllm_monitor_destroy(m);
}

Test(kv_runtime, the_table_view_stays_put_until_a_block_is_added) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_kv_config_t c = small_cfg(m, 64, 4);
  cllm_kv_cache_t *kv = mk(&c);
  cllm_kv_seq_t s = open_seq(kv, "a"), ch;
  const uint32_t *t0 = NULL, *t;
  size_t nb0 = 0, nb;
  for (size_t pos = 0; pos < 4 * 40; pos++) {  // the table grows (and moves) several times
    cllm_kv_loc_t loc;
    cr_assert_eq(cllm_kv_seq_ensure(kv, s, pos, 1, &loc), CLLM_OK);
    cr_assert_eq(cllm_kv_seq_table_view(kv, s, &t, &nb), CLLM_OK);
    if (loc.offset != 0) {  // no block added: the same table, the same entries
      cr_assert_eq(t, t0, "moved at position %zu", pos);
      cr_assert_eq(nb, nb0);
    }
    cr_assert_eq(t[nb - 1], loc.block);
    t0 = t, nb0 = nb;
  }
  /* after a fork the child's first write copies the shared last block (the table may
   * move then); later writes in that block do not move it */
  cr_assert_eq(cllm_kv_seq_ensure(kv, s, 160, 2, NULL), CLLM_OK);  // a partial block
  cr_assert_eq(cllm_kv_seq_fork(kv, s, "c", &ch), CLLM_OK);
  cr_assert_eq(cllm_kv_seq_ensure(kv, ch, 162, 1, NULL), CLLM_OK);  // copy on write
  cr_assert_eq(cllm_kv_seq_table_view(kv, ch, &t0, &nb0), CLLM_OK);
  cr_assert_eq(cllm_kv_seq_ensure(kv, ch, 163, 1, NULL), CLLM_OK);
  cr_assert_eq(cllm_kv_seq_table_view(kv, ch, &t, &nb), CLLM_OK);
  cr_assert_eq(t, t0);
  check_destroy(kv, m);
}
