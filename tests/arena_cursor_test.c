/* Criterion suite for the per-step bump arenas (lib/arena*.c, include/cllm/arena.h):
 * cursors.
 * Each Test runs in its own process. Most tests use a private monitor so that the
 * STEP figure can be compared exactly with the arena's capacity. */
#include "support/arena_fixtures.h"

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
  int status = run_void_child(cursor_two_threads_one_step, err, sizeof err);
  cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT, "child status %#x:\n%s", status, err);
  cr_assert(strstr(err, "two threads within one step") != NULL, "%s", err);
}
