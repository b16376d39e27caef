/* Criterion suite for the per-step bump arenas (lib/arena*.c, include/cllm/arena.h):
 * life cycle, configuration, bad input, alignment, a randomized
 * workload, marks and scopes.
 * Each Test runs in its own process. Most tests use a private monitor so that the
 * STEP figure can be compared exactly with the arena's capacity. */
#include "support/arena_fixtures.h"

/* ---- life cycle and configuration --------------------------------------------------- */

Test(arena, create_validates_config_and_leaves_out_null) {
  cllm_arena_t *a = (cllm_arena_t *)0x1;
  cr_assert_eq(cllm_arena_create(NULL, NULL), CLLM_EINVAL);
  cllm_arena_config_t cfg = cllm_arena_config_default();
  cr_assert_eq(cfg.struct_size, sizeof cfg);
  cfg.struct_size = 4; /* below sizeof(size_t): struct_size not set */
  cr_assert_eq(cllm_arena_create(&cfg, &a), CLLM_EINVAL);
  cr_assert_null(a);
  cfg = cllm_arena_config_default();
  cfg.shrink_fraction = 0.0;
  a = (cllm_arena_t *)0x1;
  cr_assert_eq(cllm_arena_create(&cfg, &a), CLLM_EINVAL);
  cr_assert_null(a);
  cfg.shrink_fraction = 1.5;
  cr_assert_eq(cllm_arena_create(&cfg, &a), CLLM_EINVAL);
  cfg = cllm_arena_config_default();
  cfg.min_chunk_bytes = 64 * MiB;
  cfg.max_chunk_bytes = 4 * MiB;
  cr_assert_eq(cllm_arena_create(&cfg, &a), CLLM_EINVAL);
  cfg = cllm_arena_config_default();
  cfg.initial_bytes = SIZE_MAX;
  cr_assert_eq(cllm_arena_create(&cfg, &a), CLLM_EINVAL);
  cr_assert_null(a);
  /* NULL config = defaults; an empty arena maps nothing until first use */
  size_t before = step_used(cllm_monitor_global());
  cr_assert_eq(cllm_arena_create(NULL, &a), CLLM_OK);
  cllm_arena_stats_t st = st_of(a);
  cr_assert_eq(st.chunks, 0);
  cr_assert_eq(st.capacity_bytes, 0);
  cr_assert_eq(cllm_arena_check(a), CLLM_OK);
  void *p = cllm_arena_alloc(a, 100);
  cr_assert_not_null(p);
  cr_assert_eq(step_used(cllm_monitor_global()), before + G); /* global monitor by default */
  cllm_arena_destroy(a);
  cr_assert_eq(step_used(cllm_monitor_global()), before);
  cllm_arena_destroy(NULL);
}

Test(arena, initial_chunk_is_charged_and_destroy_releases_it) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_arena_t *a = mk_arena(m, 5 * MiB, 0, 0);
  cllm_arena_stats_t st = st_of(a);
  cr_assert_eq(st.chunks, 1);
  cr_assert_eq(st.capacity_bytes, 6 * MiB); /* rounded up to the 2 MiB granule */
  cr_assert_eq(step_used(m), 6 * MiB);
  cr_assert_eq(st.monitor_calls, 1);
  cr_assert_eq(st.allocator_calls, 1);
  cllm_arena_destroy(a);
  cr_assert_eq(step_used(m), 0);
  cr_assert_eq(cllm_monitor_check(m), CLLM_OK);
  cllm_monitor_destroy(m);
}

/* The struct_size rule (lib/internal/versioned.h): an older, smaller config gets the
 * defaults for the fields it lacks; a larger one is accepted only with a zero tail. */
Test(arena, smaller_config_gets_defaults_and_larger_needs_a_zero_tail) {
  cllm_monitor_t *mon = mk_monitor(0);
  cllm_arena_config_t cfg = cllm_arena_config_default();
  cfg.monitor = mon;
  cfg.initial_bytes = 3 * MiB;
  cfg.populate = false;
  cfg.shrink_fraction = 7.0; /* beyond the older struct: ignored, the default 0.5 holds */
  cfg.struct_size = offsetof(cllm_arena_config_t, transparent_huge_pages);
  cllm_arena_t *a = NULL;
  cr_assert_eq(cllm_arena_create(&cfg, &a), CLLM_OK);
  cr_assert_eq(cllm_arena_footprint(&cfg), 4 * MiB);
  cr_assert_eq(st_of(a).capacity_bytes, 4 * MiB); /* initial_bytes, a field it has */
  cr_assert_eq(step_used(mon), 4 * MiB);          /* monitor, a field it has */
  cllm_arena_destroy(a);
  cfg.struct_size = sizeof(size_t); /* only struct_size: every default */
  cr_assert_eq(cllm_arena_create(&cfg, &a), CLLM_OK);
  cr_assert_eq(st_of(a).capacity_bytes, 0);
  cllm_arena_destroy(a);

  struct {
    cllm_arena_config_t c;
    uint64_t tail;
  } big;
  memset(&big, 0, sizeof big);
  big.c = cllm_arena_config_default();
  big.c.monitor = mon;
  big.c.struct_size = sizeof big;
  a = NULL;
  cr_assert_eq(cllm_arena_create(&big.c, &a), CLLM_OK); /* zero tail: nothing asked */
  cllm_arena_destroy(a);
  big.tail = 1;
  a = (cllm_arena_t *)0x1;
  cr_assert_eq(cllm_arena_create(&big.c, &a), CLLM_EINVAL);
  cr_assert_null(a);
  cr_assert_eq(cllm_arena_footprint(&big.c), 0);
  cr_assert_eq(step_used(mon), 0);
  cllm_monitor_destroy(mon);
}

/* Stats: a smaller struct gets the fields it has, struct_size says how many bytes. */
Test(arena, smaller_stats_struct_gets_its_prefix) {
  cllm_monitor_t *mon = mk_monitor(0);
  cllm_arena_t *a = mk_arena(mon, 2 * MiB, 0, 0);
  cr_assert_not_null(cllm_arena_alloc(a, 100));
  cllm_arena_stats_t full = st_of(a);
  cllm_arena_stats_t small;
  memset(&small, 0xAB, sizeof small);
  small.struct_size = offsetof(cllm_arena_stats_t, capacity_bytes);
  cr_assert_eq(cllm_arena_stats(a, &small), CLLM_OK);
  cr_assert_eq(small.struct_size, offsetof(cllm_arena_stats_t, capacity_bytes));
  cr_assert_eq(small.bytes_in_use, full.bytes_in_use);
  cr_assert_eq(small.high_water_bytes, full.high_water_bytes);
  unsigned char tail[sizeof small - offsetof(cllm_arena_stats_t, capacity_bytes)];
  memset(tail, 0xAB, sizeof tail);
  cr_assert_eq(memcmp(&small.capacity_bytes, tail, sizeof tail), 0); /* untouched */
  cllm_arena_stats_t big = {.struct_size = sizeof big + 64};
  cr_assert_eq(cllm_arena_stats(a, &big), CLLM_OK); /* the library writes its own size */
  cr_assert_eq(big.struct_size, sizeof big);
  cr_assert_eq(big.capacity_bytes, full.capacity_bytes);
  cllm_arena_stats_t zero = {.struct_size = 0};
  cr_assert_eq(cllm_arena_stats(a, &zero), CLLM_EINVAL);
  cr_assert_eq(cllm_arena_stats(a, NULL), CLLM_EINVAL);
  cllm_arena_destroy(a);
  cllm_monitor_destroy(mon);
}

/* ---- bad input --------------------------------------------------------------------------- */

Test(arena, null_arena_is_einval_everywhere) {
  cllm_clear_last_status();
  cr_assert_null(cllm_arena_alloc(NULL, 8));
  cr_assert_eq(cllm_last_status(), CLLM_EINVAL);
  cllm_clear_last_status();
  cr_assert_null(cllm_arena_alloc_aligned(NULL, 8, 16));
  cr_assert_eq(cllm_last_status(), CLLM_EINVAL);
  cllm_clear_last_status();
  cllm_arena_mark_t m = cllm_arena_mark(NULL);
  cr_assert_eq(m.id_, 0);
  cr_assert_eq(cllm_last_status(), CLLM_EINVAL);
  cr_assert_eq(cllm_arena_rewind(NULL, m), CLLM_EINVAL);
  cr_assert_eq(cllm_arena_reset(NULL), CLLM_EINVAL);
  cr_assert_eq(cllm_arena_reserve(NULL, 10), CLLM_EINVAL);
  cr_assert_eq(cllm_arena_trim(NULL), CLLM_EINVAL);
  cllm_arena_stats_t st = {.struct_size = sizeof st};
  cr_assert_eq(cllm_arena_stats(NULL, &st), CLLM_EINVAL);
  cr_assert_eq(cllm_arena_check(NULL), CLLM_EINVAL);
  cllm_float_array_t f = cllm_arena_floats(NULL, 4);
  cr_assert_null(f.data);
  cr_assert_eq(f.n, 0);
  cllm_arena_destroy(NULL);
}

Test(arena, zero_bytes_gives_unique_valid_pointers) {
  cllm_monitor_t *mon = mk_monitor(0);
  cllm_arena_t *a = mk_arena(mon, 0, 0, 0);
  char *p = cllm_arena_alloc(a, 0);   /* empty arena: slow path */
  char *q = cllm_arena_alloc(a, 0);   /* fast path (slow path again: bytes 0) */
  char *r = cllm_arena_alloc_aligned(a, 0, 1);
  cr_assert_not_null(p);
  cr_assert_not_null(q);
  cr_assert_not_null(r);
  cr_assert_neq(p, q);
  cr_assert_neq(q, r);
  cr_assert_eq((uintptr_t)p % 64, 0);
  cr_assert_eq((uintptr_t)q % 64, 0);
  *p = 1; *q = 2; *r = 3; /* one byte is usable */
  cr_assert_eq(*p + *q + *r, 6);
  cllm_float_array_t f = cllm_arena_floats(a, 0);
  cr_assert_not_null(f.data);
  cr_assert_eq(f.n, 0);
  cr_assert_eq(cllm_arena_check(a), CLLM_OK);
  cllm_arena_destroy(a);
  cllm_monitor_destroy(mon);
}

Test(arena, bad_sizes_and_alignments_are_einval_and_change_nothing) {
  cllm_monitor_t *mon = mk_monitor(0);
  cllm_arena_t *a = mk_arena(mon, 2 * MiB, 0, 0);
  cr_assert_not_null(cllm_arena_alloc(a, 1000));
  cllm_arena_stats_t before = st_of(a);
  const size_t bad_align[] = {0, 3, 6, 48, 100, (size_t)4 << 20, SIZE_MAX, ((size_t)1 << 63)};
  for (size_t i = 0; i < sizeof bad_align / sizeof bad_align[0]; i++) {
    cllm_clear_last_status();
    cr_assert_null(cllm_arena_alloc_aligned(a, 64, bad_align[i]), "align %zu", bad_align[i]);
    cr_assert_eq(cllm_last_status(), CLLM_EINVAL);
  }
  const size_t bad_size[] = {SIZE_MAX, SIZE_MAX - 63, CLLM_ARENA_MAX_REQUEST + 1, SIZE_MAX / 2};
  for (size_t i = 0; i < sizeof bad_size / sizeof bad_size[0]; i++) {
    cllm_clear_last_status();
    cr_assert_null(cllm_arena_alloc(a, bad_size[i]));
    cr_assert_eq(cllm_last_status(), CLLM_EINVAL);
    cr_assert_null(cllm_arena_alloc_aligned(a, bad_size[i], 1));
  }
  cllm_clear_last_status();
  cllm_float_array_t f = cllm_arena_floats(a, SIZE_MAX / 2);
  cr_assert_null(f.data);
  cr_assert_eq(cllm_last_status(), CLLM_EINVAL);
  cr_assert_eq(cllm_arena_reserve(a, SIZE_MAX), CLLM_EINVAL);
  cllm_arena_stats_t after = st_of(a);
  cr_assert_eq(after.bytes_in_use, before.bytes_in_use);
  cr_assert_eq(after.capacity_bytes, before.capacity_bytes);
  cr_assert_eq(after.chunks, before.chunks);
  cr_assert_eq(after.allocator_calls, before.allocator_calls);
  cr_assert_eq(after.einval, before.einval + 8 + 8 + 1 + 1);
  cr_assert_eq(step_used(mon), after.capacity_bytes);
  cllm_arena_stats_t small = {.struct_size = 4};
  cr_assert_eq(cllm_arena_stats(a, &small), CLLM_EINVAL);
  cr_assert_eq(cllm_arena_check(a), CLLM_OK);
  /* the largest supported alignment works */
  void *p = cllm_arena_alloc_aligned(a, 10, CLLM_ARENA_MAX_ALIGN);
  cr_assert_not_null(p);
  cr_assert_eq((uintptr_t)p % CLLM_ARENA_MAX_ALIGN, 0);
  cllm_arena_destroy(a);
  cllm_monitor_destroy(mon);
}

Test(arena, foreign_zero_and_stale_marks_are_refused_without_change) {
  cllm_monitor_t *mon = mk_monitor(0);
  cllm_arena_t *a = mk_arena(mon, 2 * MiB, 0, 0);
  cllm_arena_t *b = mk_arena(mon, 2 * MiB, 0, 0);
  cllm_arena_mark_t mb = cllm_arena_mark(b);
  cr_assert_not_null(cllm_arena_alloc(a, 4096));
  cllm_arena_mark_t ma = cllm_arena_mark(a);
  cr_assert_not_null(cllm_arena_alloc(a, 4096));
  size_t used = st_of(a).bytes_in_use;
  cr_assert_eq(cllm_arena_rewind(a, mb), CLLM_EINVAL); /* foreign */
  cllm_arena_mark_t forged = ma;
  forged.arena_ = b;
  cr_assert_eq(cllm_arena_rewind(b, forged), CLLM_ESTATE); /* b's stack never had that id */
  cllm_arena_mark_t zero = {0};
  cr_assert_eq(cllm_arena_rewind(a, zero), CLLM_EINVAL);
  cllm_arena_mark_t deep = ma;
  deep.depth_ = 1000;
  cr_assert_eq(cllm_arena_rewind(a, deep), CLLM_ESTATE);
  cr_assert_eq(st_of(a).bytes_in_use, used);
  cr_assert_eq(cllm_arena_reset(a), CLLM_OK);
  cr_assert_eq(cllm_arena_rewind(a, ma), CLLM_ESTATE); /* stale after reset */
  cr_assert_eq(st_of(a).bytes_in_use, 0);
  cr_assert_eq(cllm_arena_check(a), CLLM_OK);
  cr_assert_eq(cllm_arena_check(b), CLLM_OK);
  cllm_arena_destroy(a);
  cllm_arena_destroy(b);
  cllm_monitor_destroy(mon);
}

Test(arena, check_reports_a_corrupted_bump_pointer) {
  cllm_set_log_fn(cllm_log_discard, NULL);
  cllm_monitor_t *mon = mk_monitor(0);
  cllm_arena_t *a = mk_arena(mon, 2 * MiB, 0, 0);
  cr_assert_not_null(cllm_arena_alloc(a, 100));
  cr_assert_eq(cllm_arena_check(a), CLLM_OK);
  uintptr_t cur = a->cur_, end = a->end_;
  a->cur_ = end + 64; /* a stray write over the (private) fields */
  cr_assert_eq(cllm_arena_check(a), CLLM_ECORRUPT);
  a->cur_ = cur;
  a->end_ = end - 4096;
  cr_assert_eq(cllm_arena_check(a), CLLM_ECORRUPT);
  a->end_ = end;
  cr_assert_eq(cllm_arena_check(a), CLLM_OK);
  cllm_arena_destroy(a);
  cllm_monitor_destroy(mon);
}

/* ---- alignment --------------------------------------------------------------------------- */

Test(arena, every_pointer_is_aligned) {
  cllm_monitor_t *mon = mk_monitor(0);
  cllm_arena_t *a = mk_arena(mon, 0, 2 * MiB, 8 * MiB);
  unsigned long long seed = 42;
  for (int step = 0; step < 50; step++) {
    for (int i = 0; i < 400; i++) {
      size_t align = (size_t)1 << (mt_rand(&seed) % 22); /* 1 B .. 2 MiB */
      size_t bytes = mt_rand(&seed) % 3 == 0 ? mt_rand(&seed) % 300000 : mt_rand(&seed) % 200;
      char *p = cllm_arena_alloc_aligned(a, bytes, align);
      cr_assert_not_null(p);
      cr_assert_eq((uintptr_t)p % align, 0, "align %zu p %p", align, (void *)p);
      char *q = cllm_arena_alloc(a, bytes);
      cr_assert_not_null(q);
      cr_assert_eq((uintptr_t)q % 64, 0);
      if (bytes > 0) { p[bytes - 1] = 1; q[bytes - 1] = 2; }
    }
    cr_assert_eq(cllm_arena_check(a), CLLM_OK);
    cr_assert_eq(cllm_arena_reset(a), CLLM_OK);
  }
  cllm_arena_destroy(a);
  cllm_monitor_destroy(mon);
}

/* ---- the randomized workload: no two live allocations overlap -------------------------- */

Test(arena, randomized_workload_never_overlaps, .timeout = 300) {
  cllm_monitor_t *mon = mk_monitor(0);
  cllm_arena_t *a = mk_arena(mon, 0, 2 * MiB, 8 * MiB);
  long steps = mt_iters(1500);
  unsigned long long seed = 0xA4E4A;
  enum { MAXLIVE = 4096, MAXDEPTH = 8 };
  live_t *v = malloc(MAXLIVE * sizeof *v);
  cr_assert_not_null(v);
  unsigned char tag = 1;
  for (long step = 0; step < steps; step++) {
    size_t n = 0;
    cllm_arena_mark_t marks[MAXDEPTH];
    size_t mark_n[MAXDEPTH];
    int depth = 0;
    int ops = 50 + (int)(mt_rand(&seed) % 250);
    for (int op = 0; op < ops && n < MAXLIVE; op++) {
      unsigned r = (unsigned)(mt_rand(&seed) % 100);
      if (r < 4 && depth < MAXDEPTH) {
        marks[depth] = cllm_arena_mark(a);
        cr_assert_neq(marks[depth].id_, 0);
        mark_n[depth++] = n;
      } else if (r < 7 && depth > 0) {
        int d = (int)(mt_rand(&seed) % (unsigned)depth); /* rewind to any live mark */
        for (size_t i = 0; i < n; i++) verify(&v[i]);
        cr_assert_eq(cllm_arena_rewind(a, marks[d]), CLLM_OK);
        n = mark_n[d];
        depth = d + 1;
        for (size_t i = 0; i < n; i++) verify(&v[i]);
      } else {
        size_t bytes;
        unsigned k = (unsigned)(mt_rand(&seed) % 1000);
        if (k < 800) bytes = mt_rand(&seed) % 4097;
        else if (k < 950) bytes = mt_rand(&seed) % (64 * KiB);
        else if (k < 998) bytes = mt_rand(&seed) % MiB;
        else bytes = 8 * MiB + mt_rand(&seed) % (3 * MiB); /* above the cap: dedicated */
        size_t align = (size_t)1 << (mt_rand(&seed) % 13);
        unsigned char *p = cllm_arena_alloc_aligned(a, bytes, align);
        cr_assert_not_null(p);
        cr_assert_eq((uintptr_t)p % align, 0);
        v[n] = (live_t){p, bytes, tag};
        tag = (unsigned char)(tag % 250 + 1);
        fill(&v[n]);
        n++;
      }
    }
    for (size_t i = 0; i < n; i++) verify(&v[i]);
    check_disjoint(v, n);
    cr_assert_eq(cllm_arena_check(a), CLLM_OK);
    cllm_arena_stats_t st = st_of(a);
    cr_assert_eq(step_used(mon), st.capacity_bytes);
    cr_assert(st.step_high_water_bytes >= st.bytes_in_use);
    cr_assert_eq(cllm_arena_reset(a), CLLM_OK);
    st = st_of(a);
    cr_assert_eq(st.chunks, 1, "step %ld left %zu chunks", step, st.chunks);
    cr_assert_eq(st.bytes_in_use, 0);
    cr_assert(st.capacity_bytes >= st.last_step_high_water_bytes);
  }
  free(v);
  cllm_arena_destroy(a);
  cr_assert_eq(step_used(mon), 0);
  cllm_monitor_destroy(mon);
}

/* ---- marks ---------------------------------------------------------------------------- */

Test(arena, mark_rewind_nesting) {
  cllm_monitor_t *mon = mk_monitor(0);
  cllm_arena_t *a = mk_arena(mon, 2 * MiB, 0, 0);
  cllm_arena_mark_t m0 = cllm_arena_mark(a);
  char *x = cllm_arena_alloc(a, 100);
  cllm_arena_mark_t m1 = cllm_arena_mark(a);
  char *y = cllm_arena_alloc(a, 200);
  cllm_arena_mark_t m2 = cllm_arena_mark(a);
  char *z = cllm_arena_alloc(a, 300);
  cr_assert(x < y && y < z);
  size_t used_m1 = 100, used_m2 = 128 + 200;
  cr_assert_eq(st_of(a).bytes_in_use, 128 + 256 + 300);

  cr_assert_eq(cllm_arena_rewind(a, m2), CLLM_OK);
  cr_assert_eq(st_of(a).bytes_in_use, used_m2);
  cr_assert_eq(cllm_arena_alloc(a, 300), z); /* the same memory again */
  cr_assert_eq(cllm_arena_rewind(a, m2), CLLM_OK); /* a mark survives its own rewind */
  cr_assert_eq(cllm_arena_rewind(a, m1), CLLM_OK);
  cr_assert_eq(st_of(a).bytes_in_use, used_m1);
  cr_assert_eq(cllm_arena_rewind(a, m2), CLLM_ESTATE); /* taken after the rewind point */
  cr_assert_eq(st_of(a).bytes_in_use, used_m1);
  cllm_arena_mark_t m3 = cllm_arena_mark(a); /* may reuse m2's depth, never its id */
  cr_assert_eq(m3.depth_, m2.depth_);
  cr_assert_neq(m3.id_, m2.id_);
  cr_assert_eq(cllm_arena_rewind(a, m2), CLLM_ESTATE);
  cr_assert_not_null(cllm_arena_alloc(a, 5000));
  cr_assert_eq(cllm_arena_rewind(a, m3), CLLM_OK);
  cr_assert_eq(cllm_arena_rewind(a, m0), CLLM_OK);
  cr_assert_eq(st_of(a).bytes_in_use, 0);
  cr_assert_eq(cllm_arena_rewind(a, m1), CLLM_ESTATE);
  cr_assert_eq(cllm_arena_rewind(a, m3), CLLM_ESTATE);
  cr_assert_eq(cllm_arena_alloc(a, 100), x);
  cr_assert_eq(cllm_arena_check(a), CLLM_OK);
  /* a deep stack grows */
  cllm_arena_mark_t deep[100];
  for (int i = 0; i < 100; i++) {
    deep[i] = cllm_arena_mark(a);
    cr_assert_neq(deep[i].id_, 0);
    cr_assert_not_null(cllm_arena_alloc(a, 64));
  }
  cr_assert_eq(cllm_arena_check(a), CLLM_OK);
  for (int i = 99; i >= 0; i--) cr_assert_eq(cllm_arena_rewind(a, deep[i]), CLLM_OK);
  cr_assert_eq(st_of(a).bytes_in_use, 100);
  cllm_arena_destroy(a);
  cllm_monitor_destroy(mon);
}

Test(arena, rewind_across_chunks_reuses_them_without_allocator_calls) {
  cllm_monitor_t *mon = mk_monitor(0);
  cllm_arena_t *a = mk_arena(mon, 2 * MiB, 2 * MiB, 4 * MiB);
  cr_assert_not_null(cllm_arena_alloc(a, MiB));
  cllm_arena_mark_t m = cllm_arena_mark(a);
  for (int i = 0; i < 6; i++) cr_assert_not_null(cllm_arena_alloc(a, MiB)); /* spills */
  cllm_arena_stats_t s1 = st_of(a);
  cr_assert(s1.chunks >= 3);
  cr_assert_eq(s1.bytes_in_use, 7 * MiB);
  for (int round = 0; round < 5; round++) {
    cr_assert_eq(cllm_arena_rewind(a, m), CLLM_OK);
    cr_assert_eq(st_of(a).bytes_in_use, MiB);
    for (int i = 0; i < 6; i++) cr_assert_not_null(cllm_arena_alloc(a, MiB));
    cr_assert_eq(cllm_arena_check(a), CLLM_OK);
  }
  cllm_arena_stats_t s2 = st_of(a);
  cr_assert_eq(s2.allocator_calls, s1.allocator_calls);
  cr_assert_eq(s2.monitor_calls, s1.monitor_calls);
  cr_assert_eq(s2.chunks, s1.chunks);
  cr_assert_eq(s2.step_high_water_bytes, 7 * MiB);
  cllm_arena_destroy(a);
  cllm_monitor_destroy(mon);
}

#if CLLM_ARENA_HAVE_CLEANUP
static size_t scoped_layer(cllm_arena_t *a, int early) {
  CLLM_ARENA_SCOPE(a);
  float *x = cllm_arena_alloc(a, 4096);
  cr_assert_not_null(x);
  if (early) return st_of(a).bytes_in_use;
  CLLM_ARENA_SCOPE(a); /* nested, another line */
  cr_assert_not_null(cllm_arena_alloc(a, 8192));
  return st_of(a).bytes_in_use;
}
#endif

Test(arena, scope_helper_rewinds_at_scope_exit) {
#if !CLLM_ARENA_HAVE_CLEANUP
  cr_skip_test("no __attribute__((cleanup)) on this compiler");
#else
  cllm_monitor_t *mon = mk_monitor(0);
  cllm_arena_t *a = mk_arena(mon, 2 * MiB, 0, 0);
  cr_assert_not_null(cllm_arena_alloc(a, 64));
  for (int l = 0; l < 32; l++) {
    cr_assert_eq(scoped_layer(a, l & 1), (l & 1) ? 64 + 4096 : 64 + 4096 + 8192);
    cr_assert_eq(st_of(a).bytes_in_use, 64);
  }
  {
    CLLM_ARENA_SCOPE(a);
    cr_assert_not_null(cllm_arena_alloc(a, 100));
    cr_assert_eq(cllm_arena_reset(a), CLLM_OK); /* the scope's mark goes stale: harmless */
    cr_assert_not_null(cllm_arena_alloc(a, 256));
  }
  cr_assert_eq(st_of(a).bytes_in_use, 256);
  cr_assert_eq(cllm_arena_check(a), CLLM_OK);
  cllm_arena_destroy(a);
  cllm_monitor_destroy(mon);
#endif
}
