/* Criterion tests for the per-thread NUMA heaps (include/cllm/heap.h): every OS and
 * mimalloc failure by fault injection (lib/internal/fault.h) gives a status and
 * leaves nothing behind. Each Test runs in its own process. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* sched_getcpu, CPU_* macros, syscall */
#endif
#include "support/heap_test_util.h"

TestSuite(heap, .init = cllm_test_on_node0); /* bound to node 0: see on_node0.h */

/* ---- fault injection --------------------------------------------------------------- */

Test(heap, fault_mmap) {
  quiet();
  cllm_heaps_config_t cfg = cllm_heaps_config_default();
  cfg.bytes_per_node = 32 * MiB;
  cfg.allow_plain = false;
  warm_up();
  size_t vm0 = vm_size_kib();
  cllm_heaps_t *h = (cllm_heaps_t *)&cfg;
  cllm_fault_arm(CLLM_FAULT_MMAP, 1);
  cr_assert_eq(cllm_heaps_create(&cfg, &h), CLLM_ESYS);
  cr_assert_null(h);
  cr_assert_eq(cllm_fault_injected(), 1);
  cr_assert_lt(vm_size_kib() - vm0, 32 * 1024, "a region stayed mapped: %zu -> %zu KiB", vm0, vm_size_kib());
  cllm_fault_reset();
  cfg.allow_plain = true;
  cllm_fault_arm(CLLM_FAULT_MMAP, 1);
  cr_assert_eq(cllm_heaps_create(&cfg, &h), CLLM_OK);
  cr_assert_eq(cllm_heaps_mode(h), CLLM_HEAP_MODE_PLAIN);
  cllm_fault_reset();
  void *p = cllm_heap_alloc(h, 100);
  cr_assert_not_null(p);
  cllm_heap_free(h, p);
  cllm_heaps_destroy(h);
}

Test(heap, fault_bind) {
  if (!cllm_topology_is_this_system(cllm_topology_system()) ||
      cllm_topology_nodes(cllm_topology_system()) != 1)
    cr_skip_test("written for a one-node machine");
  quiet();
  cllm_heaps_config_t cfg = cllm_heaps_config_default();
  cfg.bytes_per_node = 32 * MiB;
  cfg.allow_plain = false;
  cllm_heaps_t *h = NULL;
  cllm_fault_arm(CLLM_FAULT_BIND, 1);
  /* One node: binding is not needed, SINGLE mode goes on unbound (documented). */
  cr_assert_eq(cllm_heaps_create(&cfg, &h), CLLM_OK);
  cr_assert_eq(cllm_fault_injected(), 1);
  cllm_fault_reset();
  cr_assert_eq(cllm_heaps_mode(h), CLLM_HEAP_MODE_SINGLE);
  cllm_heaps_stats_t st = stats_of(h);
  cr_assert(!st.node[0].bound);
  cr_assert_eq(st.node[0].os_node, -1);
  void *p = cllm_heap_alloc(h, 100);
  cr_assert(inside(&st.node[0], p, 100));
  cllm_heap_free(h, p);
  cllm_heaps_destroy(h);
  /* The next create reuses that region (no second arena) and binds it now. */
  const void *start = st.node[0].region_start;
  cr_assert_eq(cllm_heaps_create(&cfg, &h), CLLM_OK);
  st = stats_of(h);
  cr_assert(st.node[0].bound);
  cr_assert_eq(st.node[0].region_start, start);
  cllm_heaps_destroy(h);
  /* Binding that keeps failing never costs a new arena per create (70 rounds would
   * exceed mimalloc's 64 arenas). `keep` holds the bound region meanwhile. */
  cllm_heaps_t *keep = NULL;
  cr_assert_eq(cllm_heaps_create(&cfg, &keep), CLLM_OK);
  const void *unbound = NULL;
  for (int i = 0; i < 70; i++) {
    cllm_fault_arm(CLLM_FAULT_BIND, 1);
    cr_assert_eq(cllm_heaps_create(&cfg, &h), CLLM_OK, "round %d", i);
    cr_assert_eq(cllm_fault_injected(), 1, "round %d: no bind was tried", i);
    cllm_fault_reset();
    st = stats_of(h);
    cr_assert_eq(st.mode, CLLM_HEAP_MODE_SINGLE);
    cr_assert(!st.node[0].bound);
    if (i == 0) unbound = st.node[0].region_start;
    cr_assert_eq(st.node[0].region_start, unbound, "round %d registered another region", i);
    cllm_heaps_destroy(h);
  }
  cllm_heaps_destroy(keep);
}

/* THP advice refused: the region works without it (best effort). */
Test(heap, fault_madvise) {
  cllm_heaps_config_t cfg = cllm_heaps_config_default();
  cfg.bytes_per_node = 32 * MiB;
  cfg.allow_plain = false;
  cllm_heaps_t *h = NULL;
  cllm_fault_arm(CLLM_FAULT_MADVISE, 1);
  cr_assert_eq(cllm_heaps_create(&cfg, &h), CLLM_OK);
  cr_assert_eq(cllm_fault_injected(), 1);
  cllm_fault_reset();
  cr_assert_neq(cllm_heaps_mode(h), CLLM_HEAP_MODE_PLAIN);
  cllm_heaps_stats_t st = stats_of(h);
  void *p = cllm_heap_alloc(h, 3 * MiB);
  cr_assert(inside(&st.node[0], p, 3 * MiB));
  memset(p, 7, 3 * MiB);
  cllm_heap_free(h, p);
  cllm_heaps_destroy(h);
}

Test(heap, fault_mi_arena) {
  quiet();
  cllm_heaps_config_t cfg = cllm_heaps_config_default();
  cfg.bytes_per_node = 32 * MiB;
  cfg.allow_plain = false;
  warm_up();
  size_t vm0 = vm_size_kib();
  cllm_heaps_t *h = (cllm_heaps_t *)&cfg;
  cllm_fault_arm(CLLM_FAULT_MI_ARENA, 1);
  cr_assert_eq(cllm_heaps_create(&cfg, &h), CLLM_ENOTSUP);
  cr_assert_null(h);
  cr_assert_lt(vm_size_kib() - vm0, 32 * 1024, "the unregistered region stayed mapped");
  cllm_fault_reset();
  cfg.allow_plain = true;
  cllm_fault_arm(CLLM_FAULT_MI_ARENA, 1);
  cr_assert_eq(cllm_heaps_create(&cfg, &h), CLLM_OK);
  cllm_fault_reset();
  cr_assert_eq(cllm_heaps_mode(h), CLLM_HEAP_MODE_PLAIN);
  void *p = cllm_heap_calloc(h, 10, 10);
  cr_assert_not_null(p);
  cllm_heap_free(h, p);
  cllm_heaps_destroy(h);
}

Test(heap, fault_mi_heap_and_mi_alloc) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_heaps_t *h = new_heaps(32 * MiB, m);
  cllm_fault_arm(CLLM_FAULT_MI_HEAP, 1);
  cr_assert_eq(cllm_heap_attach(h, 0), CLLM_ENOMEM);
  cllm_fault_arm(CLLM_FAULT_MI_HEAP, 1);
  cllm_clear_last_status();
  cr_assert_null(cllm_heap_alloc(h, 64));
  cr_assert_eq(cllm_last_status(), CLLM_ENOMEM);
  cllm_fault_reset();
  cr_assert_eq(stats_of(h).threads, 0);
  void *p = cllm_heap_alloc(h, 64); /* heap created now */
  cr_assert_not_null(p);
  size_t used = cllm_monitor_used(m, CLLM_CAT_HEAP);
  cllm_fault_arm(CLLM_FAULT_MI_ALLOC, 1);
  cr_assert_null(cllm_heap_alloc_aligned(h, 64, 64));
  cr_assert_eq(cllm_last_status(), CLLM_ENOMEM);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_HEAP), used);
  cllm_fault_reset();
  cllm_heaps_stats_t st = stats_of(h);
  cr_assert_eq(st.node[0].failures, 2); /* attach reports its status, not a failure */
  cr_assert_eq(st.node[0].allocations, 1);
  cllm_heap_free(h, p);
  cr_assert_eq(cllm_heap_thread_flush(h), CLLM_OK);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_HEAP), 0);
  cllm_heaps_destroy(h);
  cllm_monitor_destroy(m);
}

static void *free_one(void *arg) {
  xfer_t *x = arg;
  cllm_fault_arm(CLLM_FAULT_MALLOC, 1); /* this thread's state cannot be allocated */
  cllm_heap_free(x->h, x->blk[0]);
  cllm_fault_reset();
  return NULL;
}

Test(heap, fault_malloc) {
  (void)cllm_topology_system(); /* loaded once, before any fault is armed */
  cllm_monitor_t *m = mk_monitor(0);
  cllm_heaps_config_t cfg = cllm_heaps_config_default();
  cfg.bytes_per_node = 32 * MiB;
  cfg.monitor = m;
  cllm_heaps_t *h = (cllm_heaps_t *)&cfg;
  cllm_fault_arm(CLLM_FAULT_MALLOC, 1);
  cr_assert_eq(cllm_heaps_create(&cfg, &h), CLLM_ENOMEM);
  cr_assert_null(h);
  cllm_fault_reset();
  cr_assert_eq(cllm_heaps_create(&cfg, &h), CLLM_OK);
  /* The thread's table, then its state: each failure is a clean ENOMEM. */
  for (int k = 1; k <= 3; k++) {
    cllm_fault_arm(CLLM_FAULT_MALLOC, (unsigned long)k);
    void *p = cllm_heap_alloc(h, 32);
    if (p == NULL) cr_assert_eq(cllm_last_status(), CLLM_ENOMEM);
    else cllm_heap_free(h, p);
    cllm_fault_reset();
  }
  /* A free from a thread whose state cannot be made is accounted directly. */
  xfer_t x = {.h = h, .n = 1};
  x.blk[0] = cllm_heap_alloc(h, 5000);
  cr_assert_not_null(x.blk[0]);
  pthread_t t;
  cr_assert_eq(pthread_create(&t, NULL, free_one, &x), 0);
  pthread_join(t, NULL);
  cllm_heaps_stats_t st = stats_of(h);
  cr_assert_eq(st.node[0].bytes_in_use, 0);
  cr_assert_eq(st.node[0].frees, st.node[0].allocations);
  cr_assert_eq(cllm_heaps_check(h), CLLM_OK);
  cllm_heaps_destroy(h); /* flushes every batch */
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_HEAP), 0);
  cllm_monitor_destroy(m);
}

/* Fail the k-th fallible operation of a whole create/alloc/free/destroy cycle, for
 * every k: each run either works or fails with a clean status, never crashes or
 * leaks (ASan), and the monitor ends at 0. */
Test(heap, fault_sweep) {
  quiet();
  (void)cllm_topology_system();
  cllm_monitor_t *m = mk_monitor(0);
  for (unsigned long k = 1; k < 40; k++) {
    cllm_heaps_config_t cfg = cllm_heaps_config_default();
    cfg.bytes_per_node = 32 * MiB;
    cfg.monitor = m;
    cfg.allow_plain = (k % 2) == 0;
    cllm_heaps_t *h = NULL;
    cllm_fault_arm_any(k);
    cllm_status_t s = cllm_heaps_create(&cfg, &h);
    if (s != CLLM_OK) {
      cr_assert_null(h);
      cr_assert(s == CLLM_ENOMEM || s == CLLM_ESYS || s == CLLM_ENOTSUP, "k=%lu %s", k,
                cllm_status_name(s));
      cllm_fault_reset();
      continue;
    }
    void *p[8];
    for (int i = 0; i < 8; i++) {
      p[i] = cllm_heap_alloc(h, (size_t)64 << i);
      if (p[i] == NULL)
        cr_assert(cllm_last_status() == CLLM_ENOMEM || cllm_last_status() == CLLM_ELIMIT);
    }
    for (int i = 0; i < 8; i++) cllm_heap_free(h, p[i]);
    cllm_fault_reset();
    cr_assert_eq(cllm_heaps_check(h), CLLM_OK);
    cllm_heaps_destroy(h);
    cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_HEAP), 0, "k=%lu", k);
  }
  cllm_monitor_destroy(m);
}
