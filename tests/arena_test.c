/* Criterion suite for the per-step bump arenas (lib/arena.c, include/cllm/arena.h).
 * Each Test runs in its own process. Most tests use a private monitor so that the
 * STEP figure can be compared exactly with the arena's capacity. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cllm/arena.h>
#include <cllm/heap.h>
#include <cllm/monitor.h>

#include "lib/internal/fault.h"
#include "lib/internal/util.h"
#include "support/mt_check.h"

#define MiB ((size_t)1 << 20)
#define KiB ((size_t)1 << 10)
#define G CLLM_ARENA_GRANULE

static cllm_monitor_t *mk_monitor(size_t limit) {
  cllm_monitor_config_t cfg = cllm_monitor_config_default();
  cfg.limit_bytes = limit;
  cllm_monitor_t *m = NULL;
  cr_assert_eq(cllm_monitor_create(&cfg, &m), CLLM_OK);
  return m;
}

static cllm_arena_t *mk_arena(cllm_monitor_t *mon, size_t initial, size_t min_chunk,
                              size_t max_chunk) {
  cllm_arena_config_t cfg = cllm_arena_config_default();
  cfg.monitor = mon;
  cfg.initial_bytes = initial;
  cfg.min_chunk_bytes = min_chunk;
  cfg.max_chunk_bytes = max_chunk;
  cllm_arena_t *a = NULL;
  cr_assert_eq(cllm_arena_create(&cfg, &a), CLLM_OK);
  cr_assert_not_null(a);
  return a;
}

static cllm_arena_stats_t st_of(const cllm_arena_t *a) {
  cllm_arena_stats_t st;
  memset(&st, 0, sizeof st);
  st.struct_size = sizeof st;
  cr_assert_eq(cllm_arena_stats(a, &st), CLLM_OK);
  return st;
}

static size_t step_used(cllm_monitor_t *m) { return cllm_monitor_used(m, CLLM_CAT_STEP); }

static size_t round_up(size_t x, size_t g) { return (x + g - 1) / g * g; }

static int run_child(void (*fn)(void), char *err, size_t errlen);

/* ---- life cycle and configuration --------------------------------------------------- */

Test(arena, create_validates_config_and_leaves_out_null) {
  cllm_arena_t *a = (cllm_arena_t *)0x1;
  cr_assert_eq(cllm_arena_create(NULL, NULL), CLLM_EINVAL);
  cllm_arena_config_t cfg = cllm_arena_config_default();
  cr_assert_eq(cfg.struct_size, sizeof cfg);
  cfg.struct_size = 8;
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
  cllm_arena_stats_t small = {.struct_size = 8};
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

typedef struct live {
  unsigned char *p;
  size_t n;
  unsigned char tag;
} live_t;

static void fill(const live_t *l) {
  if (l->n <= 8192) {
    memset(l->p, l->tag, l->n);
  } else { /* large: head, tail and a stride */
    memset(l->p, l->tag, 4096);
    memset(l->p + l->n - 4096, l->tag, 4096);
    for (size_t o = 4096; o < l->n - 4096; o += 65536) l->p[o] = l->tag;
  }
}

static void verify(const live_t *l) {
  size_t bad = SIZE_MAX;
  if (l->n <= 8192) {
    for (size_t i = 0; i < l->n && bad == SIZE_MAX; i++) if (l->p[i] != l->tag) bad = i;
  } else {
    for (size_t i = 0; i < 4096 && bad == SIZE_MAX; i++) {
      if (l->p[i] != l->tag) bad = i;
      if (l->p[l->n - 4096 + i] != l->tag) bad = l->n - 4096 + i;
    }
    for (size_t o = 4096; o < l->n - 4096 && bad == SIZE_MAX; o += 65536) if (l->p[o] != l->tag) bad = o;
  }
  cr_assert_eq(bad, SIZE_MAX, "allocation %p (%zu bytes, tag %u) overwritten at %zu", (void *)l->p,
               l->n, l->tag, bad);
}

static int cmp_live(const void *x, const void *y) {
  const live_t *a = x, *b = y;
  return (a->p > b->p) - (a->p < b->p);
}

static void check_disjoint(live_t *v, size_t n) {
  live_t *s = malloc(n * sizeof *s);
  cr_assert_not_null(s);
  memcpy(s, v, n * sizeof *s);
  qsort(s, n, sizeof *s, cmp_live);
  for (size_t i = 1; i < n; i++)
    cr_assert(s[i - 1].p + (s[i - 1].n ? s[i - 1].n : 1) <= s[i].p, "overlap: %p+%zu and %p",
              (void *)s[i - 1].p, s[i - 1].n, (void *)s[i].p);
  free(s);
}

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

/* ---- reset, coalescing, reserve ----------------------------------------------------------- */

static void transformer_like_step(cllm_arena_t *a) {
  for (int l = 0; l < 8; l++)
    for (int b = 0; b < 4; b++) {
      char *p = cllm_arena_alloc(a, (size_t)(b + 1) * 300 * KiB);
      cr_assert_not_null(p);
      p[0] = 1;
    }
}

Test(arena, reset_after_spill_leaves_one_chunk_of_the_high_water) {
  cllm_monitor_t *mon = mk_monitor(0);
  cllm_arena_t *a = mk_arena(mon, 0, 2 * MiB, 4 * MiB);
  transformer_like_step(a); /* 8 x 3000 KiB ~ 23.4 MiB through 2..4 MiB chunks */
  cllm_arena_stats_t s = st_of(a);
  cr_assert(s.chunks > 3, "%zu chunks", s.chunks);
  size_t hw = s.step_high_water_bytes;
  cr_assert_eq(hw, 8 * 3000 * KiB);
  cr_assert_eq(cllm_arena_reset(a), CLLM_OK);
  s = st_of(a);
  cr_assert_eq(s.chunks, 1);
  cr_assert_eq(s.last_step_high_water_bytes, hw);
  cr_assert_eq(s.spilled_steps, 1);
  cr_assert_eq(s.coalesces, 1);
  cr_assert(s.capacity_bytes >= hw && s.capacity_bytes < hw + G + 4096, "capacity %zu hw %zu",
            s.capacity_bytes, hw);
  cr_assert_eq(s.capacity_bytes, round_up(hw, G)); /* 24000 KiB -> 24 MiB */
  cr_assert_eq(step_used(mon), s.capacity_bytes);
  /* steady state: zero allocator and zero monitor calls per step */
  for (int i = 0; i < 20; i++) {
    transformer_like_step(a);
    cr_assert_eq(cllm_arena_reset(a), CLLM_OK);
  }
  cllm_arena_stats_t t = st_of(a);
  cr_assert_eq(t.allocator_calls, s.allocator_calls);
  cr_assert_eq(t.monitor_calls, s.monitor_calls);
  cr_assert_eq(t.chunks, 1);
  cr_assert_eq(t.resets, 21);
  cr_assert_eq(t.spilled_steps, 1);
  cr_assert_eq(t.high_water_bytes, hw);
  cr_assert_eq(cllm_arena_check(a), CLLM_OK);
  cllm_arena_destroy(a);
  cllm_monitor_destroy(mon);
}

Test(arena, repeated_step_with_odd_alignments_converges_to_zero_calls) {
  cllm_monitor_t *mon = mk_monitor(0);
  cllm_arena_t *a = mk_arena(mon, 0, 2 * MiB, 4 * MiB);
  cllm_arena_stats_t s3 = {0};
  for (int step = 0; step < 12; step++) {
    unsigned long long seed = 7; /* the same step every time */
    for (int i = 0; i < 300; i++) {
      size_t align = (size_t)1 << (mt_rand(&seed) % 22);
      size_t bytes = mt_rand(&seed) % (256 * KiB) + 1;
      cr_assert_not_null(cllm_arena_alloc_aligned(a, bytes, align));
    }
    cr_assert_eq(cllm_arena_reset(a), CLLM_OK);
    if (step == 2) s3 = st_of(a);
  }
  cllm_arena_stats_t s = st_of(a);
  cr_assert_eq(s.chunks, 1);
  cr_assert_eq(s.allocator_calls, s3.allocator_calls, "still spilling after 3 steps");
  cr_assert_eq(s.monitor_calls, s3.monitor_calls);
  cr_assert(s.spilled_steps <= 2, "%llu spilled steps", (unsigned long long)s.spilled_steps);
  cllm_arena_destroy(a);
  cllm_monitor_destroy(mon);
}

Test(arena, request_above_cap_gets_a_dedicated_chunk) {
  cllm_monitor_t *mon = mk_monitor(0);
  cllm_arena_t *a = mk_arena(mon, 2 * MiB, 2 * MiB, 4 * MiB);
  cr_assert_not_null(cllm_arena_alloc(a, 1000));
  char *big = cllm_arena_alloc(a, 9 * MiB);
  cr_assert_not_null(big);
  big[9 * MiB - 1] = 1;
  cllm_arena_stats_t s = st_of(a);
  cr_assert_eq(s.chunks, 2);
  cr_assert_eq(s.largest_chunk_bytes, 10 * MiB);
  /* the next growth chunk is capped */
  cr_assert_not_null(cllm_arena_alloc(a, 2 * MiB)); /* the 10 MiB chunk has 1 MiB left */
  s = st_of(a);
  cr_assert_eq(s.chunks, 3);
  cr_assert_eq(s.capacity_bytes, 2 * MiB + 10 * MiB + 4 * MiB);
  cr_assert_eq(step_used(mon), s.capacity_bytes);
  cr_assert_eq(cllm_arena_reset(a), CLLM_OK);
  s = st_of(a);
  cr_assert_eq(s.chunks, 1);
  cr_assert(s.capacity_bytes >= 1024 + 9 * MiB + 2 * MiB);
  cllm_arena_destroy(a);
  cllm_monitor_destroy(mon);
}

Test(arena, reserve_presizes_and_sets_a_floor) {
  cllm_monitor_t *mon = mk_monitor(0);
  cllm_arena_t *a = mk_arena(mon, 2 * MiB, 0, 0);
  cr_assert_eq(cllm_arena_reserve(a, 10 * MiB), CLLM_OK);
  cllm_arena_stats_t s = st_of(a);
  cr_assert_eq(s.chunks, 1);
  cr_assert_eq(s.capacity_bytes, 10 * MiB);
  cr_assert_eq(s.reserve_floor_bytes, 10 * MiB);
  cr_assert_eq(step_used(mon), 10 * MiB);
  for (int i = 0; i < 10; i++) cr_assert_not_null(cllm_arena_alloc(a, MiB));
  cllm_arena_stats_t t = st_of(a);
  cr_assert_eq(t.allocator_calls, s.allocator_calls);
  cr_assert_eq(t.chunks, 1);
  /* reserve during a step adds a chunk after the current one; nothing moves */
  cr_assert_eq(cllm_arena_reserve(a, 3 * MiB), CLLM_OK);
  t = st_of(a);
  cr_assert_eq(t.chunks, 2);
  cr_assert_eq(t.bytes_in_use, 10 * MiB);
  cr_assert_not_null(cllm_arena_alloc(a, 3 * MiB));
  cr_assert_eq(st_of(a).allocator_calls, t.allocator_calls);
  cr_assert_eq(cllm_arena_reserve(a, 100), CLLM_OK); /* room is there: nothing to do */
  cr_assert_eq(st_of(a).allocator_calls, t.allocator_calls);
  cr_assert_eq(cllm_arena_reset(a), CLLM_OK);
  cr_assert_eq(st_of(a).chunks, 1);
  /* trim does not go below the floor */
  cr_assert_eq(cllm_arena_reserve(a, 6 * MiB), CLLM_OK); /* enough already: just the floor */
  cr_assert_not_null(cllm_arena_alloc(a, 100));
  cr_assert_eq(cllm_arena_trim(a), CLLM_ESTATE); /* live allocations */
  cr_assert_eq(cllm_arena_reset(a), CLLM_OK);
  cr_assert_eq(cllm_arena_trim(a), CLLM_OK);
  cr_assert_eq(st_of(a).capacity_bytes, 6 * MiB);
  cr_assert_eq(step_used(mon), 6 * MiB);
  cr_assert_eq(cllm_arena_reserve(a, 0), CLLM_OK); /* clears the floor */
  cr_assert_eq(cllm_arena_trim(a), CLLM_OK);
  cr_assert_eq(st_of(a).capacity_bytes, 2 * MiB); /* the last step's high-water, rounded */
  cr_assert_eq(step_used(mon), 2 * MiB);
  cr_assert_eq(cllm_arena_check(a), CLLM_OK);
  cllm_arena_destroy(a);
  cllm_monitor_destroy(mon);
}

Test(arena, shrink_policy_gives_memory_back_and_step_follows) {
  cllm_monitor_t *mon = mk_monitor(0);
  cllm_arena_config_t cfg = cllm_arena_config_default();
  cfg.monitor = mon;
  cfg.shrink_after_steps = 3;
  cfg.shrink_fraction = 0.25;
  cllm_arena_t *a = NULL;
  cr_assert_eq(cllm_arena_create(&cfg, &a), CLLM_OK);
  cr_assert_not_null(cllm_arena_alloc(a, 40 * MiB)); /* a prefill-sized step */
  cr_assert_eq(cllm_arena_reset(a), CLLM_OK);
  cr_assert_eq(st_of(a).capacity_bytes, 40 * MiB);
  cr_assert_eq(step_used(mon), 40 * MiB);
  /* decode-sized steps: below a quarter of the capacity */
  for (int i = 0; i < 2; i++) {
    cr_assert_not_null(cllm_arena_alloc(a, 3 * MiB));
    cr_assert_not_null(cllm_arena_alloc(a, 1 * MiB + (size_t)i * MiB));
    cr_assert_eq(cllm_arena_reset(a), CLLM_OK);
    cr_assert_eq(st_of(a).capacity_bytes, 40 * MiB, "shrunk after %d low steps", i + 1);
  }
  cr_assert_not_null(cllm_arena_alloc(a, 3 * MiB));
  cr_assert_eq(cllm_arena_reset(a), CLLM_OK);
  cllm_arena_stats_t s = st_of(a);
  cr_assert_eq(s.shrinks, 1);
  cr_assert_eq(s.chunks, 1);
  cr_assert_eq(s.capacity_bytes, 6 * MiB); /* the largest of the three: 3 + 2 MiB -> 6 */
  cr_assert_eq(step_used(mon), 6 * MiB);
  cr_assert_eq(cllm_monitor_peak(mon, CLLM_CAT_STEP), 40 * MiB);
  /* a high step resets the count */
  cr_assert_not_null(cllm_arena_alloc(a, 5 * MiB));
  cr_assert_eq(cllm_arena_reset(a), CLLM_OK);
  cr_assert_not_null(cllm_arena_alloc(a, 1 * MiB));
  cr_assert_eq(cllm_arena_reset(a), CLLM_OK);
  cr_assert_eq(st_of(a).capacity_bytes, 6 * MiB);
  cr_assert_eq(cllm_arena_check(a), CLLM_OK);
  /* the memory really works after shrinking in place */
  char *p = cllm_arena_alloc(a, 6 * MiB);
  cr_assert_not_null(p);
  memset(p, 7, 6 * MiB);
  cllm_arena_destroy(a);
  cr_assert_eq(step_used(mon), 0);
  cllm_monitor_destroy(mon);
}

/* ---- refusals: the arena stays usable --------------------------------------------------- */

Test(arena, refused_chunk_leaves_the_arena_usable) {
  cllm_monitor_t *mon = mk_monitor(6 * MiB);
  cllm_arena_t *a = mk_arena(mon, 2 * MiB, 2 * MiB, 64 * MiB);
  char *x = cllm_arena_alloc(a, MiB);
  cr_assert_not_null(x);
  memset(x, 1, MiB);
  cllm_clear_last_status();
  cr_assert_null(cllm_arena_alloc(a, 5 * MiB)); /* needs a 6 MiB chunk: over the limit */
  cr_assert_eq(cllm_last_status(), CLLM_ELIMIT);
  cllm_arena_stats_t s = st_of(a);
  cr_assert_eq(s.refused, 1);
  cr_assert_eq(s.chunks, 1);
  cr_assert_eq(s.bytes_in_use, MiB);
  cr_assert_eq(step_used(mon), 2 * MiB);
  cr_assert_eq(cllm_arena_check(a), CLLM_OK);
  char *y = cllm_arena_alloc(a, 512 * KiB); /* still room in chunk 0 */
  cr_assert_not_null(y);
  cr_assert_eq(y, x + MiB);
  char *z = cllm_arena_alloc(a, 3 * MiB); /* a 4 MiB chunk fits the limit */
  cr_assert_not_null(z);
  cr_assert_eq(step_used(mon), 6 * MiB);
  cr_assert_eq(x[MiB - 1], 1);
  /* reset: coalescing gives the chunks back first, so the 6 MiB chunk fits */
  cr_assert_eq(cllm_arena_reset(a), CLLM_OK);
  s = st_of(a);
  cr_assert_eq(s.chunks, 1);
  cr_assert_eq(s.capacity_bytes, 6 * MiB);
  cr_assert_eq(step_used(mon), 6 * MiB);
  cr_assert_eq(cllm_monitor_check(mon), CLLM_OK);
  cllm_arena_destroy(a);
  cllm_monitor_destroy(mon);
}

static cllm_monitor_t *g_rec_mon;
static size_t g_rec_held;
static size_t reclaim_kv(void *user, cllm_category_t cat, size_t needed) {
  (void)user;
  (void)cat;
  size_t give = g_rec_held < needed ? g_rec_held : needed;
  if (give == 0) return 0;
  cr_assert_eq(cllm_monitor_release(g_rec_mon, CLLM_CAT_KV, give), CLLM_OK);
  g_rec_held -= give;
  return give;
}

Test(arena, reclaimers_run_before_a_chunk_is_refused) {
  cllm_monitor_t *mon = mk_monitor(16 * MiB);
  g_rec_mon = mon;
  cr_assert_eq(cllm_monitor_reserve(mon, CLLM_CAT_KV, 14 * MiB), CLLM_OK); /* "cached KV" */
  g_rec_held = 14 * MiB;
  cr_assert_eq(cllm_monitor_add_reclaimer(mon, reclaim_kv, NULL), CLLM_OK);
  cllm_arena_t *a = mk_arena(mon, 0, 2 * MiB, 64 * MiB);
  char *p = cllm_arena_alloc(a, 7 * MiB); /* 8 MiB chunk: 6 MiB must be reclaimed */
  cr_assert_not_null(p);
  cr_assert_eq(g_rec_held, 8 * MiB);
  cr_assert_eq(step_used(mon), 8 * MiB);
  cr_assert_eq(cllm_monitor_used(mon, CLLM_CAT_KV), 8 * MiB);
  cllm_arena_destroy(a);
  cr_assert_eq(cllm_monitor_remove_reclaimer(mon, reclaim_kv, NULL), CLLM_OK);
  cr_assert_eq(cllm_monitor_release(mon, CLLM_CAT_KV, 8 * MiB), CLLM_OK);
  cllm_monitor_destroy(mon);
}

Test(arena, growth_beyond_the_request_never_forces_a_reclaim) {
  cllm_monitor_t *mon = mk_monitor(16 * MiB);
  g_rec_mon = mon;
  cr_assert_eq(cllm_monitor_reserve(mon, CLLM_CAT_KV, 6 * MiB), CLLM_OK); /* "cached KV" */
  g_rec_held = 6 * MiB;
  cr_assert_eq(cllm_monitor_add_reclaimer(mon, reclaim_kv, NULL), CLLM_OK);
  cllm_arena_t *a = mk_arena(mon, 8 * MiB, 2 * MiB, 64 * MiB); /* 14 of 16 MiB used */
  cr_assert_not_null(cllm_arena_alloc(a, 7 * MiB));
  /* needs a chunk: the geometric one (8 MiB) does not fit the limit, a 2 MiB one does,
   * and no KV is reclaimed for it */
  char *p = cllm_arena_alloc(a, 2 * MiB);
  cr_assert_not_null(p);
  memset(p, 1, 2 * MiB);
  cr_assert_eq(g_rec_held, 6 * MiB);
  cr_assert_eq(st_of(a).capacity_bytes, 10 * MiB);
  cr_assert_eq(st_of(a).refused, 0);
  /* the next one needs 4 MiB over the limit: exactly that much is reclaimed */
  char *q = cllm_arena_alloc(a, 3 * MiB);
  cr_assert_not_null(q);
  memset(q, 2, 3 * MiB);
  cr_assert_eq(g_rec_held, 2 * MiB, "reclaimed %zu MiB", (6 * MiB - g_rec_held) / MiB);
  cr_assert_eq(st_of(a).capacity_bytes, 14 * MiB);
  cr_assert_eq(step_used(mon), 14 * MiB);
  cr_assert_eq(cllm_arena_check(a), CLLM_OK);
  /* the same through a cursor: a need the limit cannot meet is still refused */
  cllm_arena_cursor_t c;
  cr_assert_eq(cllm_arena_cursor_begin(a, &c), CLLM_OK);
  cllm_clear_last_status();
  cr_assert_null(cllm_arena_cursor_alloc(&c, 5 * MiB));
  cr_assert_eq(cllm_last_status(), CLLM_ELIMIT);
  cr_assert_eq(g_rec_held, 0); /* the reclaimers had their chance */
  cr_assert_eq(cllm_arena_cursor_end(a, &c), CLLM_OK);
  cr_assert_eq(st_of(a).refused, 1);
  cr_assert_eq(cllm_arena_check(a), CLLM_OK);
  cllm_arena_destroy(a);
  cr_assert_eq(cllm_monitor_remove_reclaimer(mon, reclaim_kv, NULL), CLLM_OK);
  cllm_monitor_destroy(mon);
}

Test(arena, injected_faults_leave_the_arena_usable) {
  cllm_monitor_t *mon = mk_monitor(0);
  cllm_arena_t *a = mk_arena(mon, 2 * MiB, 2 * MiB, 8 * MiB);
  cr_assert_not_null(cllm_arena_alloc(a, MiB));
  const struct { cllm_fault_op_t op; unsigned long nth; cllm_status_t want; } cases[] = {
      {CLLM_FAULT_RESERVE, 1, CLLM_ELIMIT},
      {CLLM_FAULT_MMAP, 1, CLLM_ENOMEM},
      {CLLM_FAULT_MADVISE, 2, CLLM_ENOMEM}, /* the 1st is the THP advice (ignored) */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    cllm_arena_stats_t before = st_of(a);
    cllm_fault_reset();
    cllm_fault_arm(cases[i].op, cases[i].nth);
    cllm_clear_last_status();
    cr_assert_null(cllm_arena_alloc(a, 3 * MiB), "case %zu", i);
    cr_assert_eq(cllm_last_status(), cases[i].want, "case %zu: %s", i,
                 cllm_status_name(cllm_last_status()));
    cr_assert_eq(cllm_fault_injected(), 1);
    cllm_fault_reset();
    cllm_arena_stats_t after = st_of(a);
    cr_assert_eq(after.refused, before.refused + 1);
    cr_assert_eq(after.chunks, before.chunks);
    cr_assert_eq(after.capacity_bytes, before.capacity_bytes);
    cr_assert_eq(after.bytes_in_use, before.bytes_in_use);
    cr_assert_eq(step_used(mon), before.capacity_bytes);
    cr_assert_eq(cllm_arena_check(a), CLLM_OK);
    cr_assert_not_null(cllm_arena_alloc(a, 1000)); /* still usable */
  }
  cr_assert_not_null(cllm_arena_alloc(a, 3 * MiB)); /* and it grows once faults stop */
  /* metadata: the chunk table grows (8 slots at first); its realloc can fail */
  for (int i = 0; i < 6; i++) cr_assert_not_null(cllm_arena_alloc(a, 8 * MiB));
  cllm_arena_stats_t before = st_of(a);
  cr_assert_eq(before.chunks, 8);
  cllm_fault_arm(CLLM_FAULT_MALLOC, 1);
  cllm_clear_last_status();
  cr_assert_null(cllm_arena_alloc(a, 8 * MiB));
  cr_assert_eq(cllm_last_status(), CLLM_ENOMEM);
  cllm_fault_reset();
  cr_assert_eq(st_of(a).chunks, 8);
  cr_assert_eq(step_used(mon), before.capacity_bytes);
  cr_assert_eq(cllm_arena_check(a), CLLM_OK);
  /* mark: a stack that cannot grow gives a mark with id 0 and changes nothing */
  cllm_arena_mark_t ms[16];
  for (int i = 0; i < 16; i++) ms[i] = cllm_arena_mark(a);
  cllm_fault_arm(CLLM_FAULT_MALLOC, 1);
  cllm_arena_mark_t bad = cllm_arena_mark(a);
  cllm_fault_reset();
  cr_assert_eq(bad.id_, 0);
  cr_assert_eq(cllm_last_status(), CLLM_ENOMEM);
  cr_assert_eq(cllm_arena_rewind(a, bad), CLLM_EINVAL);
  cr_assert_eq(cllm_arena_rewind(a, ms[15]), CLLM_OK);
  cr_assert_eq(cllm_arena_check(a), CLLM_OK);
  cllm_arena_destroy(a);
  cr_assert_eq(step_used(mon), 0);
  cllm_monitor_destroy(mon);
}

Test(arena, create_fault_sweep_leaks_nothing) {
  cllm_monitor_t *mon = mk_monitor(0);
  cllm_arena_config_t cfg = cllm_arena_config_default();
  cfg.monitor = mon;
  cfg.initial_bytes = 4 * MiB;
  int failures = 0;
  for (unsigned long n = 1; n < 50; n++) {
    cllm_fault_reset();
    cllm_fault_arm_any(n);
    cllm_arena_t *a = (cllm_arena_t *)0x1;
    cllm_status_t rc = cllm_arena_create(&cfg, &a);
    bool injected = cllm_fault_injected() > 0;
    cllm_fault_reset();
    if (rc == CLLM_OK) {
      cr_assert_not_null(a);
      cr_assert_eq(step_used(mon), 4 * MiB);
      cllm_arena_destroy(a);
      if (!injected) break;
      continue; /* a failure the create survives (the THP advice) */
    }
    failures++;
    cr_assert(injected);
    cr_assert_null(a);
    cr_assert(rc == CLLM_ENOMEM || rc == CLLM_ELIMIT, "%s", cllm_status_name(rc));
    cr_assert_eq(step_used(mon), 0);
  }
  cr_assert(failures >= 4, "only %d injected failures", failures); /* malloc x2+, reserve, mmap, populate */
  cr_assert_eq(step_used(mon), 0);
  cllm_monitor_destroy(mon);
}

Test(arena, coalesce_refused_leaves_an_empty_usable_arena) {
  cllm_monitor_t *mon = mk_monitor(0);
  cllm_arena_t *a = mk_arena(mon, 2 * MiB, 2 * MiB, 4 * MiB);
  for (int i = 0; i < 5; i++) cr_assert_not_null(cllm_arena_alloc(a, MiB)); /* spills */
  cr_assert(st_of(a).chunks >= 2);
  cllm_fault_arm(CLLM_FAULT_RESERVE, 1);
  cr_assert_eq(cllm_arena_reset(a), CLLM_OK);
  cllm_fault_reset();
  cllm_arena_stats_t s = st_of(a);
  cr_assert_eq(s.chunks, 0);
  cr_assert_eq(s.capacity_bytes, 0);
  cr_assert_eq(s.refused, 1);
  cr_assert_eq(step_used(mon), 0);
  cr_assert_eq(cllm_arena_check(a), CLLM_OK);
  cr_assert_not_null(cllm_arena_alloc(a, MiB));
  cr_assert_eq(cllm_arena_check(a), CLLM_OK);
  cllm_arena_destroy(a);
  cllm_monitor_destroy(mon);
}

/* ---- pre-faulting ----------------------------------------------------------------------- */

static long minor_faults(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_minflt;
}

Test(arena, chunks_are_prefaulted_once) {
#if CLLM_HAVE_ASAN
  cr_skip_test("ASan shadow pages fault on first use");
#else
  cllm_monitor_t *mon = mk_monitor(0);
  cllm_arena_t *a = mk_arena(mon, 16 * MiB, 0, 0);
  long f0 = minor_faults();
  for (int step = 0; step < 3; step++) {
    char *p = cllm_arena_alloc(a, 16 * MiB);
    cr_assert_not_null(p);
    for (size_t o = 0; o < 16 * MiB; o += 4096) p[o] = (char)o;
    cr_assert_eq(cllm_arena_reset(a), CLLM_OK);
  }
  long faults = minor_faults() - f0;
  cr_assert(faults < 64, "%ld faults touching 3 x 4096 pre-faulted pages", faults);
  cllm_arena_destroy(a);
  cllm_monitor_destroy(mon);
#endif
}

/* ---- cursors ------------------------------------------------------------------------------ */

/* The same seeded sequence through cllm_arena_alloc_aligned and through a cursor lands
 * on the same addresses (in two arenas of the same shape: same offsets from the first
 * pointer), grows the same chunks, and leaves the same stats. */
static void cursor_or_arena_step(cllm_arena_t *a, bool cursor, unsigned long long seed,
                                 uintptr_t *offs, size_t n, live_t *v) {
  cllm_arena_cursor_t c = {0, 0, NULL, 0};
  if (cursor) cr_assert_eq(cllm_arena_cursor_begin(a, &c), CLLM_OK);
  uintptr_t first = 0;
  for (size_t i = 0; i < n; i++) {
    size_t align = (size_t)1 << (mt_rand(&seed) % 22);
    unsigned k = (unsigned)(mt_rand(&seed) % 100);
    size_t bytes = k < 90 ? mt_rand(&seed) % 5000 : k < 99 ? mt_rand(&seed) % (700 * KiB)
                                                             : 9 * MiB; /* above the cap */
    if (k == 0) bytes = 0;
    unsigned char *p = cursor ? (k & 1 ? cllm_arena_cursor_alloc_aligned(&c, bytes, align)
                                       : cllm_arena_cursor_alloc(&c, bytes))
                              : (k & 1 ? cllm_arena_alloc_aligned(a, bytes, align)
                                       : cllm_arena_alloc(a, bytes));
    cr_assert_not_null(p, "alloc %zu failed: %s", i, cllm_status_name(cllm_last_status()));
    size_t want = k & 1 ? align : CLLM_ARENA_DEFAULT_ALIGN;
    cr_assert_eq((uintptr_t)p % want, 0);
    if (i == 0) first = (uintptr_t)p;
    offs[i] = (uintptr_t)p - first;
    v[i] = (live_t){p, bytes < 100000 ? bytes : 100000, (unsigned char)(i % 251 + 1)};
    fill(&v[i]);
  }
  for (size_t i = 0; i < n; i++) verify(&v[i]);
  check_disjoint(v, n);
  if (cursor) {
    cllm_arena_stats_t st = st_of(a);
    cr_assert(st.cursor_out);
    cr_assert_eq(cllm_arena_check(a), CLLM_OK);
    cr_assert_eq(cllm_arena_cursor_end(a, &c), CLLM_OK);
  }
  cr_assert_not(st_of(a).cursor_out);
  cr_assert_eq(cllm_arena_check(a), CLLM_OK);
}

Test(arena_cursor, allocates_exactly_like_the_arena) {
  cllm_monitor_t *mon = mk_monitor(0);
  cllm_arena_t *a = mk_arena(mon, 0, 2 * MiB, 8 * MiB);
  cllm_arena_t *b = mk_arena(mon, 0, 2 * MiB, 8 * MiB);
  enum { N = 600 };
  uintptr_t *oa = malloc(N * sizeof *oa), *ob = malloc(N * sizeof *ob);
  live_t *v = malloc(N * sizeof *v);
  cr_assert(oa && ob && v);
  for (int step = 0; step < 6; step++) {
    unsigned long long seed = 1000 + (unsigned long long)(step % 3);
    cursor_or_arena_step(a, false, seed, oa, N, v);
    cursor_or_arena_step(b, true, seed, ob, N, v);
    cllm_arena_stats_t sa = st_of(a), sb = st_of(b);
    cr_assert_eq(sb.bytes_in_use, sa.bytes_in_use, "step %d", step);
    cr_assert_eq(sb.step_high_water_bytes, sa.step_high_water_bytes);
    cr_assert_eq(sb.capacity_bytes, sa.capacity_bytes);
    cr_assert_eq(sb.chunks, sa.chunks);
    cr_assert_eq(sb.allocator_calls, sa.allocator_calls);
    cr_assert_eq(sb.monitor_calls, sa.monitor_calls);
    cr_assert_eq(sb.cursors, (uint64_t)step + 1);
    if (sa.chunks == 1) /* same chunk layout: same offsets */
      cr_assert_eq(memcmp(oa, ob, N * sizeof *oa), 0, "step %d: other addresses", step);
    cr_assert_eq(cllm_arena_reset(a), CLLM_OK);
    cr_assert_eq(cllm_arena_reset(b), CLLM_OK);
    sa = st_of(a);
    sb = st_of(b);
    cr_assert_eq(sb.chunks, 1);
    cr_assert_eq(sb.capacity_bytes, sa.capacity_bytes);
    cr_assert_eq(sb.last_step_high_water_bytes, sa.last_step_high_water_bytes);
    cr_assert_eq(sb.high_water_bytes, sa.high_water_bytes);
    cr_assert_eq(sb.spilled_steps, sa.spilled_steps);
  }
  cr_assert_eq(step_used(mon), st_of(a).capacity_bytes + st_of(b).capacity_bytes);
  free(oa);
  free(ob);
  free(v);
  cllm_arena_destroy(a);
  cllm_arena_destroy(b);
  cr_assert_eq(step_used(mon), 0);
  cllm_monitor_destroy(mon);
}

Test(arena_cursor, steady_state_makes_no_calls_and_reset_is_exact) {
  cllm_monitor_t *mon = mk_monitor(0);
  cllm_arena_t *a = mk_arena(mon, 0, 0, 0);
  cllm_arena_stats_t s2 = {0};
  for (int step = 0; step < 8; step++) {
    unsigned long long seed = 99; /* the same step every time */
    cllm_arena_cursor_t c;
    cr_assert_eq(cllm_arena_cursor_begin(a, &c), CLLM_OK);
    size_t want = 0;
    for (int i = 0; i < 256; i++) {
      size_t bytes = 256 + mt_rand(&seed) % (512 * KiB);
      uint8_t *p = cllm_arena_cursor_alloc(&c, bytes);
      cr_assert_not_null(p);
      p[0] = (uint8_t)i; /* a char store: the case cursors are for */
      want = round_up(want, 64) + bytes;
    }
    cr_assert_eq(st_of(a).cursor_out, true);
    cr_assert_eq(cllm_arena_cursor_end(a, &c), CLLM_OK);
    cllm_arena_stats_t st = st_of(a);
    if (step > 0) /* one chunk from step 1 on: exactly the single-chunk layout */
      cr_assert_eq(st.bytes_in_use, want, "step %d: %zu in use, want %zu", step, st.bytes_in_use, want);
    cr_assert_eq(cllm_arena_reset(a), CLLM_OK);
    st = st_of(a);
    cr_assert_eq(st.chunks, 1);
    cr_assert_eq(st.capacity_bytes, round_up(want, G), "capacity %zu for a %zu-byte step",
                 st.capacity_bytes, want);
    if (step == 1) s2 = st;
  }
  cllm_arena_stats_t s = st_of(a);
  cr_assert_eq(s.allocator_calls, s2.allocator_calls, "allocator calls in the steady state");
  cr_assert_eq(s.monitor_calls, s2.monitor_calls);
  cllm_arena_destroy(a);
  cllm_monitor_destroy(mon);
}

Test(arena_cursor, arena_calls_are_refused_while_a_cursor_is_out) {
  cllm_monitor_t *mon = mk_monitor(0);
  cllm_arena_t *a = mk_arena(mon, 2 * MiB, 0, 0);
  char *x = cllm_arena_alloc(a, 1000);
  cr_assert_not_null(x);
  cllm_arena_mark_t m = cllm_arena_mark(a);
  cr_assert_neq(m.id_, 0);
  cllm_arena_cursor_t c;
  cr_assert_eq(cllm_arena_cursor_begin(a, &c), CLLM_OK);
  char *y = cllm_arena_cursor_alloc(&c, 3000);
  cr_assert_not_null(y);
  cr_assert_eq(y, x + 1024);
  cllm_arena_stats_t before = st_of(a);
  cr_assert(before.cursor_out);
  cr_assert_eq(before.bytes_in_use, 1000); /* the position the arena last saw */
  cllm_clear_last_status();
  cr_assert_null(cllm_arena_alloc(a, 10));
  cr_assert_eq(cllm_last_status(), CLLM_ESTATE);
  cllm_clear_last_status();
  cr_assert_null(cllm_arena_alloc_aligned(a, 10, 4096));
  cr_assert_eq(cllm_last_status(), CLLM_ESTATE);
  cllm_clear_last_status();
  cr_assert_null(cllm_arena_floats(a, 10).data);
  cr_assert_eq(cllm_last_status(), CLLM_ESTATE);
  cllm_clear_last_status();
  cllm_arena_mark_t m2 = cllm_arena_mark(a);
  cr_assert_eq(m2.id_, 0);
  cr_assert_eq(cllm_last_status(), CLLM_ESTATE);
  cr_assert_eq(cllm_arena_rewind(a, m), CLLM_ESTATE);
  cr_assert_eq(cllm_arena_reset(a), CLLM_ESTATE);
  cr_assert_eq(cllm_arena_reserve(a, 8 * MiB), CLLM_ESTATE);
  cr_assert_eq(cllm_arena_trim(a), CLLM_ESTATE);
  cllm_arena_cursor_t c2;
  cllm_clear_last_status();
  cr_assert_eq(cllm_arena_cursor_begin(a, &c2), CLLM_ESTATE); /* one at a time */
  cr_assert_eq(cllm_last_status(), CLLM_ESTATE);
  cr_assert_eq(c2.id_, 0);
  cllm_clear_last_status();
  cr_assert_null(cllm_arena_cursor_alloc(&c2, 10)); /* the refused cursor gives nothing */
  cr_assert_eq(cllm_last_status(), CLLM_EINVAL);
  cr_assert_eq(cllm_arena_cursor_end(a, &c2), CLLM_EINVAL);
  cllm_arena_stats_t after = st_of(a);
  cr_assert_eq(after.bytes_in_use, before.bytes_in_use);
  cr_assert_eq(after.capacity_bytes, before.capacity_bytes);
  cr_assert_eq(after.allocator_calls, before.allocator_calls);
  cr_assert_eq(after.resets, before.resets);
  cr_assert_eq(after.reserve_floor_bytes, before.reserve_floor_bytes);
  cr_assert_eq(cllm_arena_check(a), CLLM_OK);
  /* the real cursor still works, and the arena goes on where it stopped */
  char *z = cllm_arena_cursor_alloc(&c, 64);
  cr_assert_eq(z, y + 3008);
  cr_assert_eq(cllm_arena_cursor_end(a, &c), CLLM_OK);
  cr_assert_eq(st_of(a).bytes_in_use, 1024 + 3008 + 64);
  char *w = cllm_arena_alloc(a, 1);
  cr_assert_eq(w, z + 64);
  /* marks taken before the cursor stay valid and release what it allocated */
  cr_assert_eq(cllm_arena_rewind(a, m), CLLM_OK);
  cr_assert_eq(st_of(a).bytes_in_use, 1000);
  cr_assert_eq(cllm_arena_alloc(a, 1), y);
  cr_assert_eq(cllm_arena_reset(a), CLLM_OK);
  cr_assert_eq(cllm_arena_check(a), CLLM_OK);
  cllm_arena_destroy(a);
  cllm_monitor_destroy(mon);
}

Test(arena_cursor, bad_input_and_misuse_get_a_status) {
  cllm_monitor_t *mon = mk_monitor(0);
  cllm_arena_t *a = mk_arena(mon, 2 * MiB, 0, 0);
  cllm_arena_t *b = mk_arena(mon, 2 * MiB, 0, 0);
  cllm_arena_cursor_t c;
  /* NULLs */
  cllm_clear_last_status();
  cr_assert_eq(cllm_arena_cursor_begin(NULL, &c), CLLM_EINVAL);
  cr_assert_eq(cllm_last_status(), CLLM_EINVAL);
  cr_assert_eq(c.id_, 0);
  cllm_clear_last_status();
  cr_assert_null(cllm_arena_cursor_alloc(&c, 8)); /* a cursor from a failed begin */
  cr_assert_eq(cllm_last_status(), CLLM_EINVAL);
  cr_assert_eq(cllm_arena_cursor_begin(a, NULL), CLLM_EINVAL);
  cllm_clear_last_status();
  cr_assert_null(cllm_arena_cursor_alloc(NULL, 8));
  cr_assert_eq(cllm_last_status(), CLLM_EINVAL);
  cllm_clear_last_status();
  cr_assert_null(cllm_arena_cursor_alloc_aligned(NULL, 8, 16));
  cr_assert_eq(cllm_last_status(), CLLM_EINVAL);
  cr_assert_eq(cllm_arena_cursor_end(a, NULL), CLLM_EINVAL);
  cr_assert_eq(cllm_arena_cursor_end(a, &c), CLLM_EINVAL); /* failed begin: id 0 */
  cr_assert_eq(cllm_arena_cursor_end(NULL, &c), CLLM_EINVAL);
  cllm_arena_cursor_t zero = {0};
  cr_assert_eq(cllm_arena_cursor_end(a, &zero), CLLM_EINVAL);
  cr_assert_eq(cllm_arena_cursor_end(a, &zero), CLLM_EINVAL);
  /* no cursor out: ending one is a state error */
  cr_assert_eq(cllm_arena_cursor_begin(a, &c), CLLM_OK);
  cllm_arena_cursor_t copy = c;
  cr_assert_eq(cllm_arena_cursor_end(a, &c), CLLM_OK);
  cr_assert_eq(cllm_arena_cursor_end(a, &copy), CLLM_ESTATE); /* ended already */
  cllm_clear_last_status();
  cr_assert_null(cllm_arena_cursor_alloc(&c, 8)); /* used after its end */
  cr_assert_eq(cllm_last_status(), CLLM_ESTATE);
  /* bad sizes and alignments: EINVAL, the cursor unchanged */
  uint64_t einval0 = st_of(a).einval;
  cr_assert_eq(cllm_arena_cursor_begin(a, &c), CLLM_OK);
  char *p = cllm_arena_cursor_alloc(&c, 100);
  cr_assert_not_null(p);
  cllm_arena_cursor_t keep = c;
  const size_t bad_align[] = {0, 3, 6, 48, (size_t)4 << 20, SIZE_MAX};
  for (size_t i = 0; i < sizeof bad_align / sizeof bad_align[0]; i++) {
    cllm_clear_last_status();
    cr_assert_null(cllm_arena_cursor_alloc_aligned(&c, 64, bad_align[i]), "align %zu", bad_align[i]);
    cr_assert_eq(cllm_last_status(), CLLM_EINVAL);
  }
  const size_t bad_size[] = {SIZE_MAX, SIZE_MAX - 63, CLLM_ARENA_MAX_REQUEST + 1};
  for (size_t i = 0; i < sizeof bad_size / sizeof bad_size[0]; i++) {
    cllm_clear_last_status();
    cr_assert_null(cllm_arena_cursor_alloc(&c, bad_size[i]));
    cr_assert_eq(cllm_last_status(), CLLM_EINVAL);
  }
  cr_assert_eq(memcmp(&c, &keep, sizeof c), 0);
  cr_assert_eq(st_of(a).einval, einval0 + 9);
  /* zero bytes: unique pointers */
  char *z0 = cllm_arena_cursor_alloc(&c, 0), *z1 = cllm_arena_cursor_alloc(&c, 0);
  char *z2 = cllm_arena_cursor_alloc_aligned(&c, 0, 1);
  cr_assert(z0 && z1 && z2 && z0 != z1 && z1 != z2);
  cr_assert_eq(z0, p + 128);
  *z0 = 1; *z1 = 2; *z2 = 3;
  /* another arena's cursor, and a forged one, are refused; nothing changes */
  cllm_arena_cursor_t cb;
  cr_assert_eq(cllm_arena_cursor_begin(b, &cb), CLLM_OK);
  cr_assert_eq(cllm_arena_cursor_end(a, &cb), CLLM_EINVAL);
  cr_assert_eq(cllm_arena_cursor_end(b, &c), CLLM_EINVAL);
  cllm_arena_cursor_t forged = cb;
  forged.arena_ = a; /* b's id and position, a's name */
  cr_assert_eq(cllm_arena_cursor_end(a, &forged), CLLM_ESTATE);
  cllm_arena_cursor_t moved = c;
  moved.cur_ = moved.end_ + 64; /* altered: past its chunk */
  cr_assert_eq(cllm_arena_cursor_end(a, &moved), CLLM_EINVAL);
  moved = c;
  moved.cur_ = (uintptr_t)p; /* altered: behind the position the arena saw */
  cr_assert_eq(cllm_arena_cursor_end(a, &moved), CLLM_EINVAL);
  cr_assert_eq(cllm_arena_cursor_end(a, &keep), CLLM_EINVAL); /* a stale copy of c: behind */
  cr_assert(st_of(a).cursor_out);
  cr_assert(st_of(b).cursor_out);
  cr_assert_eq(cllm_arena_cursor_end(b, &cb), CLLM_OK);
  cr_assert_eq(cllm_arena_cursor_end(a, &c), CLLM_OK);
  cr_assert_eq(st_of(a).bytes_in_use, 194); /* z0 at 128, z1 at 192, z2 at 193 */
  /* a stale copy of an earlier cursor while a new one is out */
  cllm_arena_cursor_t c3;
  cr_assert_eq(cllm_arena_cursor_begin(a, &c3), CLLM_OK);
  cllm_clear_last_status();
  cr_assert_null(cllm_arena_cursor_alloc(&copy, 5 * MiB)); /* slow path: id checked */
  cr_assert_eq(cllm_last_status(), CLLM_ESTATE);
  cr_assert_eq(cllm_arena_cursor_end(a, &copy), CLLM_ESTATE);
  cr_assert_eq(cllm_arena_cursor_end(a, &c3), CLLM_OK);
  cr_assert_eq(cllm_arena_check(a), CLLM_OK);
  cr_assert_eq(cllm_arena_check(b), CLLM_OK);
  /* destroy with a cursor out gives everything back */
  cr_assert_eq(cllm_arena_cursor_begin(b, &cb), CLLM_OK);
  cr_assert_not_null(cllm_arena_cursor_alloc(&cb, 3 * MiB));
  cllm_arena_destroy(b);
  cr_assert_eq(step_used(mon), st_of(a).capacity_bytes);
  cllm_arena_destroy(a);
  cr_assert_eq(step_used(mon), 0);
  cllm_monitor_destroy(mon);
}

Test(arena_cursor, starts_on_an_empty_arena_and_grows) {
  cllm_monitor_t *mon = mk_monitor(0);
  cllm_arena_t *a = mk_arena(mon, 0, 2 * MiB, 4 * MiB);
  cllm_arena_cursor_t c;
  cr_assert_eq(cllm_arena_cursor_begin(a, &c), CLLM_OK); /* no chunk yet */
  cr_assert_eq(cllm_arena_check(a), CLLM_OK);
  unsigned char *p[40];
  for (int i = 0; i < 40; i++) {
    p[i] = cllm_arena_cursor_alloc_aligned(&c, 700 * KiB, 4096);
    cr_assert_not_null(p[i]);
    cr_assert_eq((uintptr_t)p[i] % 4096, 0);
    memset(p[i], i + 1, 700 * KiB);
    cr_assert_eq(cllm_arena_check(a), CLLM_OK);
  }
  unsigned char *big = cllm_arena_cursor_alloc(&c, 9 * MiB); /* above the cap: dedicated */
  cr_assert_not_null(big);
  memset(big, 0xEE, 9 * MiB);
  for (int i = 0; i < 40; i++) cr_assert_eq(p[i][700 * KiB - 1], i + 1);
  cllm_arena_stats_t st = st_of(a);
  cr_assert(st.chunks > 3);
  cr_assert_eq(step_used(mon), st.capacity_bytes);
  cr_assert_eq(cllm_arena_cursor_end(a, &c), CLLM_OK);
  size_t used = st_of(a).bytes_in_use;
  cr_assert(used >= 40 * 700 * KiB + 9 * MiB);
  cr_assert_eq(cllm_arena_reset(a), CLLM_OK);
  st = st_of(a);
  cr_assert_eq(st.chunks, 1);
  cr_assert_eq(st.last_step_high_water_bytes, used);
  cr_assert(st.capacity_bytes >= used && st.capacity_bytes <= round_up(used, G) + 2 * G);
  cllm_arena_destroy(a);
  cllm_monitor_destroy(mon);
}

Test(arena_cursor, refused_chunk_leaves_the_cursor_usable) {
  cllm_monitor_t *mon = mk_monitor(6 * MiB);
  cllm_arena_t *a = mk_arena(mon, 2 * MiB, 2 * MiB, 64 * MiB);
  cllm_arena_cursor_t c;
  cr_assert_eq(cllm_arena_cursor_begin(a, &c), CLLM_OK);
  char *x = cllm_arena_cursor_alloc(&c, MiB);
  cr_assert_not_null(x);
  memset(x, 1, MiB);
  cllm_arena_cursor_t before = c;
  cllm_clear_last_status();
  cr_assert_null(cllm_arena_cursor_alloc(&c, 5 * MiB)); /* a 6 MiB chunk: over the limit */
  cr_assert_eq(cllm_last_status(), CLLM_ELIMIT);
  cr_assert_eq(memcmp(&c, &before, sizeof c), 0);
  cllm_arena_stats_t s = st_of(a);
  cr_assert_eq(s.refused, 1);
  cr_assert_eq(s.chunks, 1);
  cr_assert_eq(s.bytes_in_use, MiB); /* the arena saw the position at the slow path */
  cr_assert_eq(cllm_arena_check(a), CLLM_OK);
  char *y = cllm_arena_cursor_alloc(&c, 512 * KiB);
  cr_assert_eq(y, x + MiB);
  char *z = cllm_arena_cursor_alloc(&c, 3 * MiB); /* a 4 MiB chunk fits */
  cr_assert_not_null(z);
  cr_assert_eq(step_used(mon), 6 * MiB);
  cr_assert_eq(cllm_arena_cursor_end(a, &c), CLLM_OK);
  cr_assert_eq(cllm_arena_reset(a), CLLM_OK);
  s = st_of(a);
  cr_assert_eq(s.chunks, 1);
  cr_assert_eq(s.capacity_bytes, 6 * MiB);
  cllm_arena_destroy(a);
  cllm_monitor_destroy(mon);
}

static void *cursor_thread(void *arg) {
  cllm_arena_t *a = arg;
  cllm_arena_cursor_t c;
  if (cllm_arena_cursor_begin(a, &c) != CLLM_OK) return NULL;
  void *p = cllm_arena_cursor_alloc(&c, 3 * MiB);
  if (cllm_arena_cursor_end(a, &c) != CLLM_OK) return NULL;
  return p;
}

Test(arena_cursor, handing_over_between_steps_is_allowed) {
  cllm_arena_t *a = NULL;
  cr_assert_eq(cllm_arena_create(NULL, &a), CLLM_OK);
  for (int i = 0; i < 3; i++) {
    pthread_t t;
    void *p = NULL;
    cr_assert_eq(pthread_create(&t, NULL, cursor_thread, a), 0);
    cr_assert_eq(pthread_join(t, &p), 0);
    cr_assert_not_null(p);
    cr_assert_eq(cllm_arena_reset(a), CLLM_OK);
  }
  cllm_arena_destroy(a);
}

static void cursor_two_threads_one_step(void) {
  cllm_arena_t *a = NULL;
  if (cllm_arena_create(NULL, &a) != CLLM_OK) _exit(3);
  pthread_t t;
  void *p = NULL;
  if (pthread_create(&t, NULL, cursor_thread, a) != 0 || pthread_join(t, &p) != 0 || p == NULL)
    _exit(4);
  cllm_arena_cursor_t c;
  CLLM_DISCARD(cllm_arena_cursor_begin(a, &c)); /* same step, another thread: debug assertion */
  _exit(0);
}

Test(arena_cursor, two_threads_in_one_step_abort_in_debug) {
  if (CLLM_DEBUG < 1) cr_skip_test("CLLM_DEBUG == 0: the check is compiled out");
  char err[4096];
  int status = run_child(cursor_two_threads_one_step, err, sizeof err);
  cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT, "child status %#x:\n%s", status, err);
  cr_assert(strstr(err, "two threads within one step") != NULL, "%s", err);
}

/* ---- AddressSanitizer: use after reset / rewind is reported ------------------------------ */

/* Run fn in a forked child with stderr captured; returns the child's wait status. */
static int run_child(void (*fn)(void), char *err, size_t errlen) {
  int fds[2];
  cr_assert_eq(pipe(fds), 0);
  pid_t pid = fork();
  cr_assert(pid >= 0);
  if (pid == 0) {
    close(fds[0]);
    dup2(fds[1], 2);
    fn();
    _exit(0);
  }
  close(fds[1]);
  size_t got = 0;
  ssize_t r;
  while ((r = read(fds[0], err + got, errlen - 1 - got)) > 0) got += (size_t)r;
  err[got] = 0;
  close(fds[0]);
  int status = 0;
  cr_assert_eq(waitpid(pid, &status, 0), pid);
  return status;
}

static volatile char g_sink;

static void read_after_reset(void) {
  cllm_arena_t *a = NULL;
  if (cllm_arena_create(NULL, &a) != CLLM_OK) _exit(3);
  char *p = cllm_arena_alloc(a, 256);
  if (p == NULL) _exit(4);
  p[0] = 42;
  g_sink = p[0]; /* fine */
  if (cllm_arena_reset(a) != CLLM_OK) _exit(5);
  g_sink = p[0]; /* use after reset: ASan must report */
  _exit(0);
}

static void read_after_rewind(void) {
  cllm_arena_t *a = NULL;
  if (cllm_arena_create(NULL, &a) != CLLM_OK) _exit(3);
  cllm_arena_mark_t m = cllm_arena_mark(a);
  char *p = cllm_arena_alloc(a, 256);
  if (p == NULL || cllm_arena_rewind(a, m) != CLLM_OK) _exit(4);
  g_sink = p[10];
  _exit(0);
}

static void read_past_bump(void) {
  cllm_arena_t *a = NULL;
  if (cllm_arena_create(NULL, &a) != CLLM_OK) _exit(3);
  char *p = cllm_arena_alloc(a, 100);
  if (p == NULL) _exit(4);
  g_sink = p[100]; /* one past the end of the allocation */
  _exit(0);
}

static void cursor_read_after_reset(void) {
  cllm_arena_t *a = NULL;
  cllm_arena_cursor_t c;
  if (cllm_arena_create(NULL, &a) != CLLM_OK || cllm_arena_cursor_begin(a, &c) != CLLM_OK) _exit(3);
  char *p = cllm_arena_cursor_alloc(&c, 256);
  if (p == NULL) _exit(4);
  p[0] = 42;
  g_sink = p[0]; /* fine */
  if (cllm_arena_cursor_end(a, &c) != CLLM_OK || cllm_arena_reset(a) != CLLM_OK) _exit(5);
  g_sink = p[0]; /* use after reset: ASan must report */
  _exit(0);
}

static void cursor_read_past_bump(void) {
  cllm_arena_t *a = NULL;
  cllm_arena_cursor_t c;
  if (cllm_arena_create(NULL, &a) != CLLM_OK || cllm_arena_cursor_begin(a, &c) != CLLM_OK) _exit(3);
  char *p = cllm_arena_cursor_alloc(&c, 100); /* slow path: the first chunk */
  char *q = cllm_arena_cursor_alloc(&c, 100); /* fast path */
  if (p == NULL || q == NULL) _exit(4);
  q[99] = 1;
  g_sink = q[100]; /* one past the end of the allocation */
  _exit(0);
}

Test(arena_asan, use_after_reset_rewind_and_overflow_are_reported) {
#if !CLLM_HAVE_ASAN
  cr_skip_test("not built with AddressSanitizer (run with --config=asan)");
#else
  void (*cases[])(void) = {read_after_reset, read_after_rewind, read_past_bump,
                           cursor_read_after_reset, cursor_read_past_bump};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char err[8192];
    int status = run_child(cases[i], err, sizeof err);
    cr_assert(!(WIFEXITED(status) && WEXITSTATUS(status) == 0), "case %zu: child read freely", i);
    cr_assert(strstr(err, "use-after-poison") != NULL, "case %zu: no ASan report:\n%s", i, err);
  }
#endif
}

Test(arena, debug_fills_released_memory) {
#if CLLM_HAVE_ASAN
  cr_skip_test("released memory is poisoned under ASan");
#else
  if (CLLM_DEBUG < 2) cr_skip_test("CLLM_DEBUG < 2: no fill pattern");
  cllm_arena_t *a = NULL;
  cr_assert_eq(cllm_arena_create(NULL, &a), CLLM_OK);
  unsigned char *p = cllm_arena_alloc(a, 256);
  memset(p, 0, 256);
  cr_assert_eq(cllm_arena_reset(a), CLLM_OK);
  for (int i = 0; i < 256; i++) cr_assert_eq(p[i], 0xDB);
  cllm_arena_destroy(a);
#endif
}

/* ---- debug: two threads on one arena ------------------------------------------------------ */

static void *slow_alloc_thread(void *arg) {
  cllm_arena_t *a = arg;
  /* larger than what is left: always the out-of-line path */
  void *p = cllm_arena_alloc(a, 3 * MiB);
  return p;
}

Test(arena, handing_over_between_steps_is_allowed) {
  cllm_arena_t *a = NULL;
  cr_assert_eq(cllm_arena_create(NULL, &a), CLLM_OK);
  for (int i = 0; i < 3; i++) {
    pthread_t t;
    void *p = NULL;
    cr_assert_eq(pthread_create(&t, NULL, slow_alloc_thread, a), 0);
    cr_assert_eq(pthread_join(t, &p), 0);
    cr_assert_not_null(p);
    cr_assert_eq(cllm_arena_reset(a), CLLM_OK); /* the main thread ends the step */
  }
  cllm_arena_destroy(a);
}

static void two_threads_one_step(void) {
  cllm_arena_t *a = NULL;
  if (cllm_arena_create(NULL, &a) != CLLM_OK) _exit(3);
  pthread_t t;
  void *p = NULL;
  if (pthread_create(&t, NULL, slow_alloc_thread, a) != 0 || pthread_join(t, &p) != 0 || p == NULL)
    _exit(4);
  (void)cllm_arena_alloc(a, 3 * MiB); /* same step, another thread: debug assertion */
  _exit(0);
}

Test(arena, two_threads_in_one_step_abort_in_debug) {
  if (CLLM_DEBUG < 1) cr_skip_test("CLLM_DEBUG == 0: the check is compiled out");
  char err[4096];
  int status = run_child(two_threads_one_step, err, sizeof err);
  cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT, "child status %#x:\n%s", status, err);
  cr_assert(strstr(err, "two threads within one step") != NULL, "%s", err);
}

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
