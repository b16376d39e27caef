/* Criterion suite for the per-step bump arenas (lib/arena*.c, include/cllm/arena.h):
 * float arrays, chunks from the NUMA heaps, residency and
 * footprint.
 * Each Test runs in its own process. Most tests use a private monitor so that the
 * STEP figure can be compared exactly with the arena's capacity. */
#include "support/arena_fixtures.h"

/* ---- float arrays and heaps ----------------------------------------------------------------- */

Test(arena, float_arrays_from_arena_and_mimalloc) {
  cllm_arena_t *a = NULL;
  cr_assert_eq(cllm_arena_create(NULL, &a), CLLM_OK);
  cllm_float_array_t f = cllm_arena_floats(a, 1000);
  cr_assert_not_null(f.data);
  cr_assert_eq(f.n, 1000);
  cr_assert_eq((uintptr_t)f.data % 64, 0);
  for (size_t i = 0; i < f.n; i++) f.data[i] = (float)i;
  cllm_float_array_free(&f); /* arena-backed: only cleared */
  cr_assert_null(f.data);
  cllm_float_array_t h = cllm_heap_floats(NULL, 4097);
  cr_assert_not_null(h.data);
  cr_assert_eq(h.n, 4097);
  cr_assert_eq((uintptr_t)h.data % 64, 0);
  h.data[4096] = 1.0f;
  cllm_float_array_free(&h);
  cr_assert_null(h.data);
  cr_assert_eq(h.n, 0);
  cllm_float_array_free(&h); /* double free of a cleared array: no-op */
  cllm_float_array_free(NULL);
  cllm_clear_last_status();
  cllm_float_array_t bad = cllm_heap_floats(NULL, SIZE_MAX / 2);
  cr_assert_null(bad.data);
  cr_assert_eq(cllm_last_status(), CLLM_EINVAL);
#if CLLM_ARENA_HAVE_CLEANUP
  {
    CLLM_FLOAT_ARRAY_AUTO cllm_float_array_t w = cllm_heap_floats(NULL, 64);
    cr_assert_not_null(w.data);
    w.data[63] = 2.0f;
  } /* freed here (LeakSanitizer would report otherwise) */
#endif
  cllm_arena_destroy(a);
}

Test(arena, chunks_from_numa_heaps) {
  cllm_monitor_t *mon = mk_monitor(0);
  cllm_heaps_config_t hc = cllm_heaps_config_default();
  hc.bytes_per_node = 256 * MiB;
  hc.monitor = mon;
  cllm_heaps_t *heaps = NULL;
  cllm_status_t rc = cllm_heaps_create(&hc, &heaps);
  cr_assert_eq(rc, CLLM_OK, "%s", cllm_status_name(rc));
  /* Probe the heaps first: if they cannot hand out a 2 MiB block, that is a heap
   * failure (tests/heap_test.c), not an arena one. */
  void *probe = cllm_heap_alloc_aligned(heaps, 2 * MiB, 2 * MiB);
  if (probe == NULL) {
    cllm_status_t why = cllm_last_status();
    cllm_heaps_destroy(heaps);
    cllm_monitor_destroy(mon);
    cr_skip_test("the heaps refuse a 2 MiB block (%s): heap-backed arenas not exercised",
                 cllm_status_name(why));
  }
  cllm_heap_free(heaps, probe);
  cllm_arena_config_t cfg = cllm_arena_config_default();
  cfg.monitor = mon;
  cfg.heaps = heaps;
  cfg.min_chunk_bytes = 2 * MiB;
  cfg.max_chunk_bytes = 8 * MiB;
  cllm_arena_t *a = NULL;
  cr_assert_eq(cllm_arena_create(&cfg, &a), CLLM_OK);
  for (int step = 0; step < 5; step++) {
    for (int i = 0; i < 12; i++) {
      char *p = cllm_arena_alloc(a, MiB);
      cr_assert_not_null(p, "%s", cllm_status_name(cllm_last_status()));
      memset(p, i, MiB);
    }
    cr_assert_eq(cllm_arena_check(a), CLLM_OK);
    cr_assert_eq(cllm_arena_reset(a), CLLM_OK);
  }
  cllm_arena_stats_t s = st_of(a);
  cr_assert(s.heap_backed);
  cr_assert_eq(s.chunks, 1);
  cr_assert(s.capacity_bytes >= 12 * MiB);
  /* heap-backed chunks are charged once, to HEAP by the heaps, not to STEP too */
  cr_assert_eq(step_used(mon), 0);
  cr_assert_geq(cllm_monitor_used(mon, CLLM_CAT_HEAP), s.capacity_bytes);
  cr_assert_eq(s.spilled_steps, 1);
  /* shrink through the heap (obtain smaller, give back larger) */
  cr_assert_not_null(cllm_arena_alloc(a, MiB));
  cr_assert_eq(cllm_arena_reset(a), CLLM_OK);
  cr_assert_eq(cllm_arena_trim(a), CLLM_OK);
  cr_assert_eq(st_of(a).capacity_bytes, 2 * MiB);
  cr_assert_eq(step_used(mon), 0);
  cllm_float_array_t f = cllm_heap_floats(heaps, 100);
  cr_assert_not_null(f.data);
  cr_assert_eq((uintptr_t)f.data % 64, 0);
  f.data[99] = 1.0f;
  cllm_float_array_free(&f);
  cllm_arena_destroy(a);
  cr_assert_eq(step_used(mon), 0);
  cr_assert_eq(cllm_heaps_check(heaps), CLLM_OK);
  cllm_heaps_destroy(heaps);
  cllm_monitor_destroy(mon);
}

/* ---- residency and footprint ---------------------------------------------------------- */

static cllm_arena_stats_t arena_stats_of(const cllm_arena_t *a) {
  cllm_arena_stats_t st = {.struct_size = sizeof st};
  cr_assert_eq(cllm_arena_stats(a, &st), CLLM_OK);
  return st;
}

Test(arena, footprint_is_what_create_charges_and_resident_never_passes_the_charge) {
  cllm_monitor_t *mon = mk_monitor(0);
  for (int populate = 0; populate < 2; populate++) {
    cllm_arena_config_t c = cllm_arena_config_default();
    c.monitor = mon;
    c.populate = populate;
    c.initial_bytes = 17 * 1024;  // 17 KiB of scratch: one 2 MiB chunk
    size_t fp = cllm_arena_footprint(&c);
    cr_assert_eq(fp, CLLM_ARENA_GRANULE);
    cllm_arena_t *a = NULL;
    cr_assert_eq(cllm_arena_create(&c, &a), CLLM_OK);
    cr_assert_eq(cllm_monitor_used(mon, CLLM_CAT_STEP), fp);
    cllm_arena_stats_t st = arena_stats_of(a);
    cr_assert_leq(st.resident_bytes, st.capacity_bytes);
    if (populate) cr_assert_eq(st.resident_bytes, st.capacity_bytes, "pre-faulted");
    /* grow past the first chunk, touch everything */
    for (int i = 0; i < 5; i++) {
      char *p = cllm_arena_alloc(a, 1500 * 1024);
      cr_assert_not_null(p);
      memset(p, 1, 1500 * 1024);
      st = arena_stats_of(a);
      cr_assert_leq(st.resident_bytes, st.capacity_bytes);
      cr_assert_eq(cllm_monitor_used(mon, CLLM_CAT_STEP), st.capacity_bytes);
    }
    cr_assert_eq(cllm_arena_reset(a), CLLM_OK);  // coalesces into one chunk
    st = arena_stats_of(a);
    cr_assert_leq(st.resident_bytes, st.capacity_bytes);
    cllm_arena_destroy(a);
    cr_assert_eq(cllm_monitor_used(mon, CLLM_CAT_STEP), 0);
  }
  cllm_arena_config_t c = cllm_arena_config_default();
  cr_assert_eq(cllm_arena_footprint(&c), 0);  // no initial chunk
  cr_assert_eq(cllm_arena_footprint(NULL), 0);
  c.shrink_fraction = 2.0;
  c.initial_bytes = 1;
  cr_assert_eq(cllm_arena_footprint(&c), 0);  // create refuses it
  cllm_monitor_destroy(mon);
}
