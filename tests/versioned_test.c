/* The struct_size rule (lib/internal/versioned.h) for the monitor, topology, weights and
 * heaps: an older (smaller) config gets the defaults for the fields it lacks, a newer
 * (larger) one is accepted when its unknown tail is zero and refused otherwise, a NULL
 * config is the defaults (refused where a required field has no default); stats write
 * min(caller's struct_size, the library's) bytes and store that size. */
#include <criterion/criterion.h>
#include <stddef.h>
#include <string.h>

#include <cllm/heap.h>
#include <cllm/monitor.h>
#include <cllm/numa.h>
#include <cllm/weights.h>

#define MiB ((size_t)1 << 20)

/* A config or stats struct followed by one more field a newer header might add. */
#define NEWER(type) \
  struct {          \
    type s;         \
    size_t extra;   \
  }

static cllm_monitor_t *new_monitor(void) {
  cllm_monitor_t *m;
  cr_assert_eq(cllm_monitor_create(NULL, &m), CLLM_OK);
  return m;
}

/* ---- monitor ------------------------------------------------------------------------- */

Test(versioned, monitor_config) {
  cllm_monitor_t *m = (cllm_monitor_t *)&m;
  /* Older: only struct_size and limit_bytes; the category limits past it are not read. */
  cllm_monitor_config_t old = cllm_monitor_config_default();
  old.limit_bytes = 1000;
  old.category_limit_bytes[CLLM_CAT_KV] = 10;
  old.struct_size = offsetof(cllm_monitor_config_t, category_limit_bytes);
  cr_assert_eq(cllm_monitor_create(&old, &m), CLLM_OK);
  cr_assert_eq(cllm_monitor_limit(m), 1000);
  cr_assert_eq(cllm_monitor_reserve(m, CLLM_CAT_KV, 100), CLLM_OK, "KV limit defaulted to none");
  cr_assert_eq(cllm_monitor_release(m, CLLM_CAT_KV, 100), CLLM_OK);
  cllm_monitor_destroy(m);

  NEWER(cllm_monitor_config_t) big = {.s = cllm_monitor_config_default(), .extra = 0};
  big.s.struct_size = sizeof big;
  big.s.limit_bytes = 77;
  cr_assert_eq(cllm_monitor_create(&big.s, &m), CLLM_OK, "zero tail: accepted");
  cr_assert_eq(cllm_monitor_limit(m), 77);
  cllm_monitor_destroy(m);
  big.extra = 1;
  m = (cllm_monitor_t *)&m;
  cr_assert_eq(cllm_monitor_create(&big.s, &m), CLLM_EINVAL, "non-zero tail: refused");
  cr_assert_null(m);
}

Test(versioned, monitor_stats) {
  cllm_monitor_t *m = new_monitor();
  cr_assert_eq(cllm_monitor_reserve(m, CLLM_CAT_STEP, 5), CLLM_OK);
  NEWER(cllm_monitor_stats_t) big;
  memset(&big, 0xAB, sizeof big);
  big.s.struct_size = sizeof big;
  cr_assert_eq(cllm_monitor_stats(m, &big.s), CLLM_OK);
  cr_assert_eq(big.s.struct_size, sizeof(cllm_monitor_stats_t), "what the library wrote");
  cr_assert_eq(big.s.used_bytes, 5);
  cr_assert_eq(big.extra, (size_t)0xABABABABABABABABull, "nothing written past its struct");
  cllm_monitor_stats_t small = {.struct_size = sizeof(size_t) - 1};
  cr_assert_eq(cllm_monitor_stats(m, &small), CLLM_EINVAL);
  cr_assert_eq(cllm_monitor_release(m, CLLM_CAT_STEP, 5), CLLM_OK);
  cllm_monitor_destroy(m);
}

/* ---- topology ------------------------------------------------------------------------ */

Test(versioned, topology_config) {
  cllm_topology_t *t = NULL;
  cllm_topology_config_t old = cllm_topology_config_default();
  old.struct_size = sizeof(size_t); /* nothing but struct_size: every field defaulted */
  cr_assert_eq(cllm_topology_create(&old, &t), CLLM_OK);
  cr_assert_geq(cllm_topology_nodes(t), 1);
  cllm_topology_destroy(t);

  NEWER(cllm_topology_config_t) big = {.s = cllm_topology_config_default(), .extra = 0};
  big.s.struct_size = sizeof big;
  big.s.synthetic = "pack:2 numa:1 core:1 pu:1";
  cr_assert_eq(cllm_topology_create(&big.s, &t), CLLM_OK);
  cr_assert_eq(cllm_topology_nodes(t), 2);
  cllm_topology_destroy(t);
  big.extra = 1;
  t = (cllm_topology_t *)&t;
  cr_assert_eq(cllm_topology_create(&big.s, &t), CLLM_EINVAL);
  cr_assert_null(t);
}

/* ---- weights ------------------------------------------------------------------------- */

Test(versioned, weights_config_and_stats) {
  cllm_monitor_t *m = new_monitor();
  cllm_weights_t *w = (cllm_weights_t *)&w;
  /* capacity_bytes has no default: NULL is refused as a missing capacity is. */
  cr_assert_eq(cllm_weights_create(NULL, &w), CLLM_EINVAL);
  cr_assert_null(w);
  cr_assert_eq(cllm_weights_footprint(NULL), 0);

  /* Older: up to the monitor; reader_threads and later fields take their defaults. */
  cllm_weights_config_t old = cllm_weights_config_default();
  old.capacity_bytes = MiB;
  old.huge_pages = CLLM_WEIGHTS_HUGE_OFF;
  old.monitor = m;
  old.reader_threads = -5; /* past struct_size: not read (it would be refused) */
  old.struct_size = offsetof(cllm_weights_config_t, topology);
  cr_assert_eq(cllm_weights_footprint(&old), MiB);
  cr_assert_eq(cllm_weights_create(&old, &w), CLLM_OK);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_WEIGHTS), MiB);

  /* Stats: a smaller struct gets its prefix, a larger one the whole struct. */
  cllm_weights_stats_t small;
  memset(&small, 0xCD, sizeof small);
  small.struct_size = offsetof(cllm_weights_stats_t, used_bytes);
  cr_assert_eq(cllm_weights_stats(w, &small), CLLM_OK);
  cr_assert_eq(small.struct_size, offsetof(cllm_weights_stats_t, used_bytes));
  cr_assert_eq(small.capacity_bytes, MiB);
  size_t untouched;
  memset(&untouched, 0xCD, sizeof untouched);
  cr_assert_eq(memcmp(&small.used_bytes, &untouched, sizeof untouched), 0);
  NEWER(cllm_weights_stats_t) big;
  memset(&big, 0xCD, sizeof big);
  big.s.struct_size = sizeof big;
  cr_assert_eq(cllm_weights_stats(w, &big.s), CLLM_OK);
  cr_assert_eq(big.s.struct_size, sizeof(cllm_weights_stats_t));
  cr_assert_eq(big.extra, untouched);
  cllm_weights_destroy(w);

  NEWER(cllm_weights_config_t) nc = {.s = old, .extra = 1};
  nc.s.struct_size = sizeof nc;
  nc.s.reader_threads = 0;
  w = (cllm_weights_t *)&w;
  cr_assert_eq(cllm_weights_create(&nc.s, &w), CLLM_EINVAL, "non-zero tail: refused");
  cr_assert_null(w);
  cr_assert_eq(cllm_weights_footprint(&nc.s), 0);
  nc.extra = 0;
  cr_assert_eq(cllm_weights_create(&nc.s, &w), CLLM_OK, "zero tail: accepted");
  cllm_weights_destroy(w);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_COUNT), 0);
  cllm_monitor_destroy(m);
}

/* ---- heaps --------------------------------------------------------------------------- */

Test(versioned, heaps_config_and_stats) {
  cllm_monitor_t *m = new_monitor();
  /* Older: before keep_pages (the last field), which keeps its default (true). */
  cllm_heaps_config_t old = cllm_heaps_config_default();
  old.bytes_per_node = 32 * MiB;
  old.monitor = m;
  old.batch_bytes = 64 << 10;
  old.struct_size = offsetof(cllm_heaps_config_t, keep_pages);
  cr_assert_eq(cllm_heaps_thread_footprint(&old), 2 * (64 << 10));
  cllm_heaps_t *h = NULL;
  cr_assert_eq(cllm_heaps_create(&old, &h), CLLM_OK);
  void *p = cllm_heap_alloc(h, 1000);
  cr_assert_not_null(p);
  cllm_heaps_stats_t small;
  memset(&small, 0xEF, sizeof small);
  small.struct_size = offsetof(cllm_heaps_stats_t, nodes) + sizeof small.nodes;
  cr_assert_eq(cllm_heaps_stats(h, &small), CLLM_OK);
  cr_assert_eq(small.struct_size, offsetof(cllm_heaps_stats_t, nodes) + sizeof small.nodes);
  cr_assert_geq(small.nodes, 1);
  NEWER(cllm_heaps_stats_t) big;
  memset(&big, 0xEF, sizeof big);
  big.s.struct_size = sizeof big;
  cr_assert_eq(cllm_heaps_stats(h, &big.s), CLLM_OK);
  cr_assert_eq(big.s.struct_size, sizeof(cllm_heaps_stats_t));
  cr_assert_geq(big.s.bytes_in_use, 1000);
  size_t untouched;
  memset(&untouched, 0xEF, sizeof untouched);
  cr_assert_eq(big.extra, untouched);
  cllm_heap_free(h, p);
  cllm_heaps_destroy(h);

  NEWER(cllm_heaps_config_t) nc = {.s = cllm_heaps_config_default(), .extra = 1};
  nc.s.struct_size = sizeof nc;
  nc.s.monitor = m;
  h = (cllm_heaps_t *)&h;
  cr_assert_eq(cllm_heaps_create(&nc.s, &h), CLLM_EINVAL, "non-zero tail: refused");
  cr_assert_null(h);
  cr_assert_eq(cllm_heaps_thread_footprint(&nc.s), 0);
  cr_assert_eq(cllm_heaps_thread_footprint(NULL),
               2 * CLLM_MONITOR_BATCH_DEFAULT_BYTES, "NULL: the defaults");
  cllm_monitor_destroy(m);
}
