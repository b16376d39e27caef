/* Criterion suite for the per-step bump arenas (lib/arena*.c, include/cllm/arena.h):
 * reset and coalescing, reserve, the shrink policy, refusals
 * and injected faults, pre-faulting.
 * Each Test runs in its own process. Most tests use a private monitor so that the
 * STEP figure can be compared exactly with the arena's capacity. */
#include "support/arena_fixtures.h"

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
