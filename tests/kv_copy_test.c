/* Criterion suite for the KV cache's copy API (lib/kv_copy.c: put / get / evict, LRU,
 * budget, callbacks) and fault injection over create, reserve and put. Each Test runs in its own process. */
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
  check_destroy(kv, m);
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
  check_destroy(kv, m);
}

Test(kv_copy, data_spans_blocks_and_layers_and_sequences_can_squeeze_entries) {
  cllm_monitor_t *m;
  cllm_kv_cache_t *kv = mk_cache(&m, 6, 4);
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
  check_destroy(kv, m);
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
