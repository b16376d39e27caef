/* Criterion tests for the per-thread NUMA heaps (include/cllm/heap.h): attach and
 * topologies (synthetic ones degrade to plain, max_nodes). Each Test runs in its own
 * process (a fresh mimalloc and region pool). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* sched_getcpu, CPU_* macros, syscall */
#endif
#include "support/heap_test_util.h"

TestSuite(heap, .init = cllm_test_on_node0); /* bound to node 0: see on_node0.h */

/* ---- attach and topologies ---------------------------------------------------------- */

Test(heap, attach) {
  cllm_heaps_t *h = new_heaps(32 * MiB, NULL);
  int nodes = cllm_topology_nodes(cllm_topology_system());
  cr_assert_eq(cllm_heap_attach(h, -1), CLLM_ENOTFOUND);
  cr_assert_eq(cllm_heap_attach(h, nodes), CLLM_ENOTFOUND);
  cr_assert_eq(cllm_heap_attach(h, CLLM_HEAP_MAX_NODES), CLLM_ENOTFOUND);
  for (int i = nodes - 1; i > 0; i--) {
    cr_assert_eq(cllm_heap_attach(h, i), CLLM_OK);
    cr_assert_eq(cllm_heap_node(h), i);
  }
  cr_assert_eq(cllm_heap_attach(h, 0), CLLM_OK);
  cr_assert_eq(cllm_heap_node(h), 0);
  cr_assert_eq(stats_of(h).threads, 1);
  cllm_heaps_destroy(h);
}

static cllm_topology_t *synthetic(const char *desc) {
  cllm_topology_config_t tc = cllm_topology_config_default();
  tc.synthetic = desc;
  cllm_topology_t *t = NULL;
  cr_assert_eq(cllm_topology_create(&tc, &t), CLLM_OK, "%s", desc);
  return t;
}

/* Over a topology that is not this machine: create refuses (CLLM_ENOTSUP) without
 * allow_plain, and gives PLAIN mode with it. */
static cllm_heaps_t *refused_then_plain(cllm_heaps_config_t *cfg) {
  cfg->allow_plain = false;
  cllm_heaps_t *h = (cllm_heaps_t *)cfg;
  cr_assert_eq(cllm_heaps_create(cfg, &h), CLLM_ENOTSUP);
  cr_assert_null(h);
  cfg->allow_plain = true;
  cr_assert_eq(cllm_heaps_create(cfg, &h), CLLM_OK);
  cr_assert_eq(cllm_heaps_mode(h), CLLM_HEAP_MODE_PLAIN);
  return h;
}

/* A region pooled by a heaps object of this machine is bound to a real node: a
 * synthetic topology whose nodes are numbered like the real ones must not get it
 * (it would report NUMA mode with pages it never bound). Only a machine with as
 * many nodes as the synthetic one can tell: one node skips. */
Test(heap, pooled_bound_region_is_not_lent_to_a_synthetic_topology) {
  int nodes = cllm_topology_nodes(cllm_topology_system());
  if (nodes < 2) cr_skip_test("one NUMA node: nothing bound to node 1 to be pooled");
  quiet();
  cllm_heaps_t *real = new_heaps(64 * MiB, NULL);
  cr_assert_eq(cllm_heaps_mode(real), CLLM_HEAP_MODE_NUMA);
  cllm_heaps_destroy(real); /* its regions (OS nodes 0..nodes-1) wait in the pool */
  char desc[64];
  snprintf(desc, sizeof desc, "pack:%d numa:1 core:1 pu:1", nodes);
  cllm_topology_t *t = synthetic(desc);
  cllm_heaps_config_t cfg = cllm_heaps_config_default();
  cfg.bytes_per_node = 64 * MiB;
  cfg.topology = t;
  cllm_heaps_t *h = refused_then_plain(&cfg);
  cllm_heaps_stats_t st = stats_of(h);
  for (int i = 0; i < nodes; i++) cr_assert(!st.node[i].bound, "node %d", i);
  cllm_heaps_destroy(h);
  cllm_topology_destroy(t);
  /* The pooled regions are still there for this machine. */
  real = new_heaps(64 * MiB, NULL);
  cr_assert_eq(cllm_heaps_mode(real), CLLM_HEAP_MODE_NUMA);
  cllm_heaps_destroy(real);
}

/* A 2-node topology that is not this machine cannot be bound: PLAIN mode, or the
 * binding's status when PLAIN is not allowed. */
Test(heap, synthetic_two_nodes_degrades_to_plain) {
  quiet();
  cllm_topology_t *t = synthetic("pack:2 numa:1 core:2 pu:1");
  cllm_monitor_t *m = mk_monitor(0);
  cllm_heaps_config_t cfg = cllm_heaps_config_default();
  cfg.bytes_per_node = 32 * MiB;
  cfg.topology = t;
  cfg.monitor = m;
  cllm_heaps_t *h = refused_then_plain(&cfg);
  cllm_heaps_stats_t st = stats_of(h);
  cr_assert_eq(st.nodes, 2);
  cr_assert_eq(st.node[0].region_bytes, 0);
  cr_assert_null(st.node[0].region_start);
  cr_assert(!st.node[1].bound);
  cr_assert_eq(cllm_heap_node(h), 0); /* not this machine: node 0 */
  cr_assert_eq(cllm_heap_attach(h, 1), CLLM_OK);
  cr_assert_eq(cllm_heap_node(h), 1);
  cr_assert_eq(cllm_heap_attach(h, 2), CLLM_ENOTFOUND);
  void *p = cllm_heap_alloc_aligned(h, 300, 64);
  cr_assert_not_null(p);
  cr_assert_eq((uintptr_t)p % 64, 0);
  cr_assert_geq(cllm_heap_usable_size(h, p), 300);
  st = stats_of(h);
  cr_assert_eq(st.node[0].allocations, 1); /* PLAIN: reported under node 0 */
  cr_assert_eq(st.node[1].allocations, 0);
  char local[16];
  cllm_heap_free(h, local); /* not mimalloc memory: foreign */
  cr_assert_eq(stats_of(h).foreign_frees, 1);
  cllm_heap_free(h, p);
  /* The sized free in PLAIN mode (no region: the general path). */
  for (size_t i = 0; i < N_SIZED; i++) {
    void *q = cllm_heap_alloc(h, k_sized[i]);
    cr_assert_not_null(q);
    cllm_heap_free_sized(h, q, k_sized[i]);
  }
  cllm_heap_free_sized(h, local, sizeof local);
  cr_assert_eq(stats_of(h).foreign_frees, 2);
  cr_assert_eq(stats_of(h).node[0].bytes_in_use, 0);
  cr_assert_eq(cllm_heaps_check(h), CLLM_OK);
  cr_assert_eq(cllm_heap_thread_flush(h), CLLM_OK);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_HEAP), 0);
  cllm_heaps_destroy(h);
  cllm_monitor_destroy(m);
  cllm_topology_destroy(t);
}

/* max_nodes 1 over a 2-node topology: SINGLE mode, one unbound region. */
Test(heap, max_nodes_one_is_single_unbound) {
  cllm_topology_t *t = synthetic("pack:2 numa:1 core:2 pu:1");
  cllm_heaps_config_t cfg = cllm_heaps_config_default();
  cfg.bytes_per_node = 32 * MiB;
  cfg.topology = t;
  cfg.max_nodes = 1;
  cllm_heaps_t *h = NULL;
  cr_assert_eq(cllm_heaps_create(&cfg, &h), CLLM_OK);
  cr_assert_eq(cllm_heaps_mode(h), CLLM_HEAP_MODE_SINGLE);
  cllm_heaps_stats_t st = stats_of(h);
  cr_assert_eq(st.nodes, 1);
  cr_assert(!st.node[0].bound);
  cr_assert_eq(st.node[0].os_node, -1);
  void *p = cllm_heap_alloc(h, 1000);
  cr_assert(inside(&st.node[0], p, 1000));
  cllm_heap_free(h, p);
  cllm_heaps_destroy(h);
  cllm_topology_destroy(t);
}
