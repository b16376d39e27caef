/* Criterion tests for the per-thread NUMA heaps (include/cllm/heap.h): config and
 * create, placement, exhaustion and limits, stats and check. The other behaviours are
 * in heap_free_test.c (sized and cross-thread free, thread exit), heap_nodes_test.c
 * (attach, synthetic topologies), heap_fault_test.c (fault injection),
 * heap_kept_test.c (kept pages) and heap_resident_test.c (residency).
 *
 * Criterion runs every Test in its own process, so each starts with a fresh
 * mimalloc (64-arena limit) and an empty region pool. The concurrency scenarios
 * that must also run under TSan live in tests/heap_mt.c. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* sched_getcpu, CPU_* macros, syscall */
#endif
#include "support/heap_test_util.h"

TestSuite(heap, .init = cllm_test_on_node0); /* bound to node 0: see on_node0.h */

/* ---- config and create -------------------------------------------------------------- */

Test(heap, config_default) {
  cllm_heaps_config_t c = cllm_heaps_config_default();
  cr_assert_eq(c.struct_size, sizeof c);
  cr_assert_eq(c.bytes_per_node, (size_t)1 << 30);
  cr_assert_null(c.monitor);
  cr_assert_null(c.topology);
  cr_assert_eq(c.max_nodes, 0);
  cr_assert(c.transparent_huge_pages);
  cr_assert(!c.allow_fallback);
  cr_assert(c.allow_plain);
  cr_assert_str_eq(cllm_heap_mode_name(CLLM_HEAP_MODE_NUMA), "numa");
  cr_assert_str_eq(cllm_heap_mode_name(CLLM_HEAP_MODE_SINGLE), "single");
  cr_assert_str_eq(cllm_heap_mode_name(CLLM_HEAP_MODE_PLAIN), "plain");
  cr_assert_str_eq(cllm_heap_mode_name((cllm_heap_mode_t)42), "unknown");
}

Test(heap, create_bad_input) {
  cllm_heaps_config_t cfg = cllm_heaps_config_default();
  cllm_heaps_t *h = (cllm_heaps_t *)&cfg;
  cr_assert_eq(cllm_heaps_create(&cfg, NULL), CLLM_EINVAL);
  cfg.struct_size = 0;
  cr_assert_eq(cllm_heaps_create(&cfg, &h), CLLM_EINVAL);
  cr_assert_null(h);
  cfg = cllm_heaps_config_default();
  cfg.max_nodes = -1;
  h = (cllm_heaps_t *)&cfg;
  cr_assert_eq(cllm_heaps_create(&cfg, &h), CLLM_EINVAL);
  cr_assert_null(h);
  cfg = cllm_heaps_config_default();
  cfg.bytes_per_node = SIZE_MAX;
  cr_assert_eq(cllm_heaps_create(&cfg, &h), CLLM_EINVAL);
  cfg = cllm_heaps_config_default();
  cfg.batch_bytes = SIZE_MAX;
  cr_assert_eq(cllm_heaps_create(&cfg, &h), CLLM_EINVAL);
  cr_assert_null(h);
  /* NULL-safe calls. */
  cllm_heaps_destroy(NULL);
  cr_assert_eq(cllm_heaps_mode(NULL), CLLM_HEAP_MODE_PLAIN);
  cr_assert_eq(cllm_heap_attach(NULL, 0), CLLM_EINVAL);
  cr_assert_eq(cllm_heap_node(NULL), -1);
  cr_assert_eq(cllm_heap_thread_flush(NULL), CLLM_EINVAL);
  cllm_clear_last_status();
  cr_assert_null(cllm_heap_alloc(NULL, 16));
  cr_assert_eq(cllm_last_status(), CLLM_EINVAL);
  cr_assert_null(cllm_heap_alloc_aligned(NULL, 16, 64));
  cr_assert_null(cllm_heap_calloc(NULL, 1, 16));
  cr_assert_null(cllm_heap_realloc(NULL, NULL, 16));
  cr_assert_eq(cllm_heap_usable_size(NULL, &cfg), 0);
  quiet();
  cllm_heap_free(NULL, NULL);
  cllm_heap_free(NULL, &cfg); /* logged, ignored */
  cr_assert_eq(g_warnings, 1);
  cllm_heaps_stats_t st = {.struct_size = sizeof st};
  cr_assert_eq(cllm_heaps_stats(NULL, &st), CLLM_EINVAL);
  cr_assert_eq(cllm_heaps_check(NULL), CLLM_EINVAL);
}

Test(heap, null_config_means_defaults) {
  cllm_heaps_t *h = NULL;
  cr_assert_eq(cllm_heaps_create(NULL, &h), CLLM_OK);
  cllm_heaps_stats_t st = stats_of(h);
  cr_assert_eq(st.node[0].region_bytes, (size_t)1 << 30);
  void *p = cllm_heap_alloc(h, 100);
  cr_assert_not_null(p);
  cllm_heap_free(h, p);
  cr_assert_eq(cllm_heaps_check(h), CLLM_OK);
  cllm_heaps_destroy(h);
}

/* This machine has one NUMA node: one region, bound to it. */
Test(heap, single_mode_on_this_machine) {
  if (cllm_topology_nodes(cllm_topology_system()) != 1) cr_skip_test("machine has several nodes");
  cllm_heaps_t *h = new_heaps(40 * MiB, NULL); /* rounded up to 64 MiB */
  cr_assert_eq(cllm_heaps_mode(h), CLLM_HEAP_MODE_SINGLE);
  cllm_heaps_stats_t st = stats_of(h);
  cr_assert_eq(st.struct_size, sizeof st);
  cr_assert_eq(st.mode, CLLM_HEAP_MODE_SINGLE);
  cr_assert_eq(st.nodes, 1);
  cr_assert_eq(st.threads, 0);
  cr_assert_eq(st.region_align_bytes, 32 * MiB);
  cr_assert_eq(st.node[0].node, 0);
  cr_assert_eq(st.node[0].region_bytes, 64 * MiB);
  cr_assert_eq((uintptr_t)st.node[0].region_start % (32 * MiB), 0);
  cr_assert(st.node[0].bound);
  cr_assert_eq(st.node[0].os_node, 0);
  cr_assert_eq(st.node[0].bytes_in_use, 0);
  cr_assert_eq(cllm_heap_node(h), 0);
  cllm_heaps_destroy(h);
}

/* ---- placement ------------------------------------------------------------------ */

Test(heap, blocks_lie_inside_region_and_policy_is_bound) {
  cllm_heaps_t *h = new_heaps(64 * MiB, NULL);
  cllm_heaps_stats_t st = stats_of(h);
  cr_assert_neq(st.mode, CLLM_HEAP_MODE_PLAIN);
  static const size_t sizes[] = {0, 1, 15, 16, 17, 100, 1000, 4096, 65536, 100000, 1 << 20, 5 << 20};
  void *p[sizeof sizes / sizeof sizes[0]];
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    p[i] = cllm_heap_alloc(h, sizes[i]);
    cr_assert_not_null(p[i], "size %zu", sizes[i]);
    cr_assert_eq((uintptr_t)p[i] % 16, 0);
    size_t us = cllm_heap_usable_size(h, p[i]);
    cr_assert_geq(us, sizes[i]);
    cr_assert(inside(&st.node[0], p[i], us), "size %zu at %p outside region", sizes[i], p[i]);
    fill(p[i], sizes[i], (unsigned)i);
  }
  if (st.node[0].bound) {
    int mode = -1;
    unsigned long mask[16] = {0};
    long r = syscall(SYS_get_mempolicy, &mode, mask, (unsigned long)(16 * 8 * sizeof(long)), p[5],
                     (unsigned long)MPOL_F_ADDR_);
    cr_assert_eq(r, 0, "get_mempolicy: %s", strerror(errno));
    cr_assert_eq(mode, MPOL_BIND_);
    cr_assert_eq(mask[0], 1ul << st.node[0].os_node);
    /* The whole region carries the policy, also pages nothing has touched yet. */
    const char *last = (const char *)st.node[0].region_start + st.node[0].region_bytes - 4096;
    r = syscall(SYS_get_mempolicy, &mode, mask, (unsigned long)(16 * 8 * sizeof(long)), last,
                (unsigned long)MPOL_F_ADDR_);
    cr_assert_eq(r, 0);
    cr_assert_eq(mode, MPOL_BIND_);
  }
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    cr_assert(verify(p[i], sizes[i], (unsigned)i));
    cllm_heap_free(h, p[i]);
  }
  cllm_heaps_destroy(h);
}

Test(heap, alloc_sizes_are_16_byte_aligned) {
  cllm_heaps_t *h = new_heaps(32 * MiB, NULL);
  void *p[200];
  for (size_t s = 0; s < 200; s++) {
    p[s] = cllm_heap_alloc(h, s);
    cr_assert_not_null(p[s]);
    cr_assert_eq((uintptr_t)p[s] % 16, 0, "size %zu gave %p", s, p[s]);
  }
  for (size_t s = 0; s < 200; s++) cllm_heap_free(h, p[s]);
  cllm_heaps_destroy(h);
}

Test(heap, aligned_alloc) {
  cllm_heaps_t *h = new_heaps(128 * MiB, NULL);
  cllm_heaps_stats_t st = stats_of(h);
  for (size_t a = 1; a <= CLLM_HEAP_MAX_ALIGN; a <<= 1) {
    void *p = cllm_heap_alloc_aligned(h, 100, a);
    cr_assert_not_null(p, "align %zu", a);
    cr_assert_eq((uintptr_t)p % a, 0, "align %zu gave %p", a, p);
    cr_assert_eq((uintptr_t)p % 16, 0);
    cr_assert(inside(&st.node[0], p, 100));
    cr_assert_geq(cllm_heap_usable_size(h, p), 100);
    memset(p, 0x5a, 100);
    cllm_heap_free(h, p);
  }
  /* Bad alignments: NULL, CLLM_EINVAL, counted, nothing allocated. */
  static const size_t bad[] = {0, 3, 24, 48, (size_t)1 << 25, SIZE_MAX};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    cllm_clear_last_status();
    cr_assert_null(cllm_heap_alloc_aligned(h, 64, bad[i]));
    cr_assert_eq(cllm_last_status(), CLLM_EINVAL, "align %zu", bad[i]);
  }
  cllm_heaps_stats_t s2 = stats_of(h);
  cr_assert_eq(s2.einval, sizeof bad / sizeof bad[0]);
  cr_assert_eq(s2.node[0].failures, sizeof bad / sizeof bad[0]);
  cr_assert_eq(s2.node[0].bytes_in_use, 0);
  cr_assert_eq(s2.node[0].allocations, s2.node[0].frees);
  cllm_heaps_destroy(h);
}

/* Sizes that are multiples of the alignment: mimalloc 2.0.9 serves those from the
 * plain size class, whose blocks are not always aligned (found by the heap fuzzer:
 * 512 bytes at 256 came back 128-byte aligned). Fresh heaps objects, so that pages
 * start at every kind of place. */
Test(heap, aligned_alloc_sizes_that_are_multiples_of_the_alignment) {
  cllm_monitor_t *m = mk_monitor(0);
  for (int round = 0; round < 4; round++) {
    cllm_heaps_t *h = new_heaps(64 * MiB, m);
    static void *keep[2048];
    int nk = 0;
    for (size_t align = 32; align <= 8192; align *= 2) {
      for (size_t k = 1; k <= 8 && k * align <= 128 * 1024; k++) {
        for (int rep = 0; rep < 4; rep++) {
          void *p = cllm_heap_alloc_aligned(h, k * align, align);
          cr_assert_not_null(p);
          cr_assert_eq((uintptr_t)p % align, 0, "%zu bytes at %zu: %p", k * align, align, p);
          cr_assert_geq(cllm_heap_usable_size(h, p), k * align);
          memset(p, 0x5a, k * align);
          cr_assert_lt(nk, 2048);
          keep[nk++] = p;
        }
      }
    }
    for (int i = 0; i < nk; i++) cllm_heap_free(h, keep[i]);
    cr_assert_eq(stats_of(h).node[0].bytes_in_use, 0);
    cr_assert_eq(cllm_heaps_check(h), CLLM_OK);
    cllm_heaps_destroy(h);
  }
  cllm_monitor_destroy(m);
}

Test(heap, huge_requests_fail_cleanly) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_heaps_t *h = new_heaps(32 * MiB, m);
  static const size_t big[] = {SIZE_MAX, SIZE_MAX - 8, SIZE_MAX / 2, 64 * MiB};
  for (size_t i = 0; i < sizeof big / sizeof big[0]; i++) {
    cllm_clear_last_status();
    cr_assert_null(cllm_heap_alloc(h, big[i]));
    cr_assert_eq(cllm_last_status(), CLLM_ENOMEM);
    cr_assert_null(cllm_heap_alloc_aligned(h, big[i], 64));
    cr_assert_eq(cllm_last_status(), CLLM_ENOMEM);
  }
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_HEAP) - stats_of(h).node[0].bytes_in_use,
               cllm_monitor_used(m, CLLM_CAT_HEAP)); /* nothing in use */
  void *p = cllm_heap_alloc(h, 64); /* still usable */
  cr_assert_not_null(p);
  cllm_heap_free(h, p);
  cr_assert_eq(cllm_heap_thread_flush(h), CLLM_OK);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_HEAP), 0);
  cllm_heaps_destroy(h);
  cllm_monitor_destroy(m);
}

Test(heap, calloc_zeroes_and_checks_overflow) {
  cllm_heaps_t *h = new_heaps(32 * MiB, NULL);
  /* Dirty some memory first so a recycled block would show. */
  void *d = cllm_heap_alloc(h, 4000);
  memset(d, 0xff, 4000);
  cllm_heap_free(h, d);
  unsigned char *p = cllm_heap_calloc(h, 1000, 4);
  cr_assert_not_null(p);
  for (size_t i = 0; i < 4000; i++) cr_assert_eq(p[i], 0);
  cllm_heap_free(h, p);
  cllm_clear_last_status();
  cr_assert_null(cllm_heap_calloc(h, SIZE_MAX / 2, 3));
  cr_assert_eq(cllm_last_status(), CLLM_EOVERFLOW);
  cr_assert_null(cllm_heap_calloc(h, (size_t)1 << 33, (size_t)1 << 33));
  cr_assert_eq(cllm_last_status(), CLLM_EOVERFLOW);
  p = cllm_heap_calloc(h, 0, 8);
  cr_assert_not_null(p);
  cllm_heap_free(h, p);
  cllm_heaps_destroy(h);
}

Test(heap, realloc) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_heaps_t *h = new_heaps(32 * MiB, m);
  char *p = cllm_heap_realloc(h, NULL, 100);
  cr_assert_not_null(p);
  fill(p, 100, 7);
  char *q = cllm_heap_realloc(h, p, 100000);
  cr_assert_not_null(q);
  cr_assert(verify(q, 100, 7));
  fill(q, 100000, 9);
  char *r = cllm_heap_realloc(h, q, 60000); /* shrink within half: kept */
  cr_assert_eq(r, q);
  r = cllm_heap_realloc(h, q, 50);
  cr_assert_not_null(r);
  cr_assert(verify(r, 50, 9));
  /* Failure leaves the block untouched. */
  cllm_clear_last_status();
  cr_assert_null(cllm_heap_realloc(h, r, SIZE_MAX));
  cr_assert_eq(cllm_last_status(), CLLM_ENOMEM);
  cr_assert(verify(r, 50, 9));
  /* Foreign block: refused. */
  quiet();
  char local[64];
  cr_assert_null(cllm_heap_realloc(h, local, 10));
  cr_assert_eq(cllm_last_status(), CLLM_EINVAL);
  cr_assert_null(cllm_heap_realloc(h, r, 0)); /* frees */
  cr_assert_eq(stats_of(h).node[0].bytes_in_use, 0);
  cr_assert_eq(cllm_heap_thread_flush(h), CLLM_OK);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_HEAP), 0);
  cllm_heaps_destroy(h);
  cllm_monitor_destroy(m);
}

Test(heap, foreign_pointers_are_ignored_and_counted) {
  quiet();
  cllm_heaps_t *h = new_heaps(32 * MiB, NULL);
  cllm_heaps_t *h2 = new_heaps(64 * MiB, NULL);
  void *libc = malloc(64);
  void *mi = mi_malloc(64);
  void *other = cllm_heap_alloc(h2, 64);
  void *mine = cllm_heap_alloc(h, 64);
  char stack[32];
  cllm_heap_free(h, libc);
  cllm_heap_free(h, mi);
  cllm_heap_free(h, other);
  cllm_heap_free(h, stack);
  cllm_heap_free(h, (char *)mine + 1); /* misaligned: not a block start */
  cllm_heap_free(h, NULL);             /* a no-op, not foreign */
  cllm_heaps_stats_t st = stats_of(h);
  cr_assert_eq(st.foreign_frees, 5);
  cr_assert_eq(g_warnings, 5);
  cr_assert(strstr(g_last_msg, "not from these heaps") != NULL, "%s", g_last_msg);
  cr_assert_eq(st.node[0].frees, 0);
  cr_assert_eq(cllm_heap_usable_size(h, libc), 0);
  cr_assert_eq(cllm_heap_usable_size(h, other), 0);
  cr_assert_eq(cllm_heap_usable_size(h, NULL), 0);
  cr_assert_geq(cllm_heap_usable_size(h, mine), 64);
  /* Everything still valid. */
  memset(libc, 1, 64);
  memset(mi, 1, 64);
  memset(other, 1, 64);
  free(libc);
  mi_free(mi);
  cllm_heap_free(h2, other);
  cllm_heap_free(h, mine);
  cr_assert_eq(cllm_heaps_check(h), CLLM_OK);
  cr_assert_eq(cllm_heaps_check(h2), CLLM_OK);
  cllm_heaps_destroy(h2);
  cllm_heaps_destroy(h);
}

/* ---- exhaustion and limits ------------------------------------------------------------- */

Test(heap, region_exhaustion_returns_null_and_stays_usable) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_heaps_t *h = new_heaps(32 * MiB, m);
  void *blk[64];
  int n = 0;
  cllm_clear_last_status();
  while (n < 64 && (blk[n] = cllm_heap_alloc(h, MiB)) != NULL) {
    memset(blk[n], n, 4096);
    n++;
  }
  cr_assert_lt(n, 64, "a 32 MiB region gave %d MiB", n);
  cr_assert_gt(n, 16);
  cr_assert_eq(cllm_last_status(), CLLM_ENOMEM);
  cllm_heaps_stats_t st = stats_of(h);
  cr_assert_eq(st.node[0].failures, 1);
  cr_assert_eq(st.node[0].allocations, (uint64_t)n);
  cr_assert_geq(st.node[0].bytes_in_use, (size_t)n * MiB);
  cr_assert_geq(cllm_monitor_used(m, CLLM_CAT_HEAP), st.node[0].bytes_in_use);
  cr_assert_eq(cllm_heaps_check(h), CLLM_OK);
  /* Smaller blocks may still fit; then free one and the same size fits again. */
  cllm_heap_free(h, blk[n / 2]);
  blk[n / 2] = cllm_heap_alloc(h, MiB);
  cr_assert_not_null(blk[n / 2]);
  for (int i = 0; i < n; i++) {
    cr_assert_eq(((unsigned char *)blk[i])[100], (unsigned char)(i == n / 2 ? ((unsigned char *)blk[i])[100] : i));
    cllm_heap_free(h, blk[i]);
  }
  st = stats_of(h);
  cr_assert_eq(st.node[0].bytes_in_use, 0);
  cr_assert_eq(cllm_heap_thread_flush(h), CLLM_OK);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_HEAP), 0);
  cllm_heaps_destroy(h);
  cllm_monitor_destroy(m);
}

Test(heap, monitor_limit_gives_elimit) {
  cllm_monitor_t *m = mk_monitor_category(CLLM_CAT_HEAP, MiB);
  cllm_heaps_config_t cfg = cllm_heaps_config_default();
  cfg.bytes_per_node = 32 * MiB;
  cfg.monitor = m;
  cfg.batch_bytes = 64 << 10;
  cllm_heaps_t *h = NULL;
  cr_assert_eq(cllm_heaps_create(&cfg, &h), CLLM_OK);
  void *blk[1024];
  int n = 0;
  cllm_clear_last_status();
  while (n < 1024 && (blk[n] = cllm_heap_alloc(h, 4096)) != NULL) n++;
  cr_assert_lt(n, 1024);
  cr_assert_geq(n, 200);
  cr_assert_eq(cllm_last_status(), CLLM_ELIMIT);
  cr_assert_leq(cllm_monitor_used(m, CLLM_CAT_HEAP), MiB);
  cllm_heaps_stats_t st = stats_of(h);
  cr_assert_eq(st.node[0].failures, 1);
  cr_assert_eq(st.node[0].bytes_in_use, (size_t)n * 4096);
  cllm_heap_free(h, blk[--n]);
  blk[n] = cllm_heap_alloc(h, 4096); /* room again */
  cr_assert_not_null(blk[n]);
  n++;
  for (int i = 0; i < n; i++) cllm_heap_free(h, blk[i]);
  cr_assert_eq(cllm_heap_thread_flush(h), CLLM_OK);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_HEAP), 0);
  cr_assert_eq(cllm_monitor_check(m), CLLM_OK);
  cllm_heaps_destroy(h);
  cllm_monitor_destroy(m);
}

/* ---- stats and check ----------------------------------------------------------------- */

Test(heap, stats_and_check) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_heaps_t *h = new_heaps(32 * MiB, m);
  cllm_heaps_stats_t st;
  st.struct_size = sizeof(size_t) - 1;
  cr_assert_eq(cllm_heaps_stats(h, &st), CLLM_EINVAL);
  cr_assert_eq(cllm_heaps_stats(h, NULL), CLLM_EINVAL);
  void *p = cllm_heap_alloc(h, 4 * MiB);
  memset(p, 1, 4 * MiB); /* THP-advised: the kernel may back it with huge pages */
  st = stats_of(h);
  cr_assert_eq(st.threads, 1);
  cr_assert_eq(st.node[0].allocations, 1);
  cr_assert_geq(st.node[0].bytes_in_use, 4 * MiB);
  cr_assert_leq(st.node[0].huge_page_bytes, st.node[0].region_bytes);
  cr_assert_eq(st.node[0].huge_page_bytes % (2 * MiB), 0);
  cr_assert_eq(cllm_heaps_check(h), CLLM_OK);
  /* The monitor HEAP figure covers bytes in use; faking a release breaks check. */
  size_t used = cllm_monitor_used(m, CLLM_CAT_HEAP);
  cr_assert_geq(used, st.node[0].bytes_in_use);
  quiet();
  cr_assert_eq(cllm_monitor_release(m, CLLM_CAT_HEAP, used), CLLM_OK);
  cr_assert_eq(cllm_heaps_check(h), CLLM_ECORRUPT);
  cr_assert_eq(cllm_monitor_reserve(m, CLLM_CAT_HEAP, used), CLLM_OK);
  cr_assert_eq(cllm_heaps_check(h), CLLM_OK);
  cllm_heap_free(h, p);
  cllm_heaps_destroy(h);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_HEAP), 0);
  cllm_monitor_destroy(m);
}
