/* libFuzzer target: a step arena as an op sequence (alloc with edge sizes and
 * alignments, mark, rewind to valid / stale / foreign marks, reset, reserve, trim,
 * cursors: begin / end, allocations through the cursor while it is out, every other
 * arena call refused with CLLM_ESTATE then, misused cursors refused)
 * against a model of the live allocations: each live block carries a pattern that
 * is verified after every op (overlap or a lost block is a crash), alignment is
 * checked, and cllm_arena_check() runs after every op. A private monitor with a
 * small limit makes refused chunks happen. */
#include <stdbool.h>

#include <cllm/arena.h>

#include "fuzz_input.h"

#define MAX_LIVE 256
#define MAX_MARKS 16

typedef struct live {
  unsigned char *p;
  size_t n;
  unsigned char pat;
} live_t;

static void verify(const live_t *l, int n) {
  for (int i = 0; i < n; i++) {
    size_t step = l[i].n > 64 ? l[i].n / 61 : 1;
    for (size_t j = 0; j < l[i].n; j += step)
      FUZZ_CHECK(l[i].p[j] == l[i].pat, "block %d byte %zu overwritten", i, j);
    FUZZ_CHECK(l[i].p[l[i].n - 1] == l[i].pat, "block %d tail overwritten", i);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_in_t in = {data, size};
  cllm_set_log_fn(cllm_log_discard, NULL);
  cllm_monitor_config_t mc = cllm_monitor_config_default();
  mc.limit_bytes = (size_t)24 << 20;
  cllm_monitor_t *mon;
  FUZZ_CHECK(cllm_monitor_create(&mc, &mon) == CLLM_OK, "monitor");
  cllm_arena_config_t cfg = cllm_arena_config_default();
  cfg.monitor = mon;
  cfg.max_chunk_bytes = (size_t)8 << 20;
  cfg.populate = fuzz_u8(&in) & 1;
  cfg.shrink_after_steps = fuzz_u8(&in) % 4;
  cllm_arena_t *a, *other;
  FUZZ_CHECK(cllm_arena_create(&cfg, &a) == CLLM_OK, "create");
  FUZZ_CHECK(cllm_arena_create(&cfg, &other) == CLLM_OK, "create other");
  cllm_arena_mark_t foreign = cllm_arena_mark(other);
  live_t live[MAX_LIVE];
  int n_live = 0;
  struct { cllm_arena_mark_t m; int n_live; } marks[MAX_MARKS];
  int n_marks = 0;
  cllm_arena_mark_t stale[4];
  int n_stale = 0;
  unsigned char pat = 1;
  bool out = false;                 /* a cursor of `a` is out */
  cllm_arena_cursor_t cur, stale_cur = {0};
  bool have_stale_cur = false;
  cllm_arena_cursor_t ocur;         /* a cursor of `other`, out for the whole run */
  FUZZ_CHECK(cllm_arena_cursor_begin(other, &ocur) == CLLM_OK, "begin other");
  while (!fuzz_done(&in)) {
    uint8_t op = fuzz_u8(&in) % 12;
    if (out && op >= 3 && op <= 8) { /* the arena is lent out: refused, nothing changes */
      cllm_arena_stats_t b = {.struct_size = sizeof b}, c = {.struct_size = sizeof c};
      FUZZ_CHECK(cllm_arena_stats(a, &b) == CLLM_OK, "stats");
      cllm_status_t s = CLLM_OK;
      if (op == 3) {
        cllm_arena_mark_t m = cllm_arena_mark(a);
        FUZZ_CHECK(m.id_ == 0, "mark while a cursor is out");
        s = cllm_last_status();
      } else if (op == 4 && n_marks > 0) {
        s = cllm_arena_rewind(a, marks[fuzz_u8(&in) % n_marks].m);
      } else if (op == 6) {
        s = cllm_arena_reset(a);
      } else if (op == 7) {
        size_t n = fuzz_size(&in, (size_t)16 << 20);
        s = cllm_arena_reserve(a, n);
        if (n > CLLM_ARENA_MAX_REQUEST && s == CLLM_EINVAL) s = CLLM_ESTATE; /* bad input first */
      } else if (op == 8) {
        s = cllm_arena_trim(a);
      } else {
        FUZZ_CHECK(cllm_arena_alloc(a, fuzz_u8(&in)) == NULL, "alloc while a cursor is out");
        s = cllm_last_status();
      }
      FUZZ_CHECK(s == CLLM_ESTATE, "op %d while a cursor is out: %s", op, cllm_status_name(s));
      FUZZ_CHECK(cllm_arena_stats(a, &c) == CLLM_OK, "stats");
      FUZZ_CHECK(c.bytes_in_use == b.bytes_in_use && c.capacity_bytes == b.capacity_bytes &&
                     c.resets == b.resets && c.chunks == b.chunks,
                 "a refused op changed the arena");
      op = 255; /* done */
    }
    switch (op) {
      case 0: case 1: case 2: { /* alloc */
        size_t n = fuzz_size(&in, (size_t)3 << 20);
        size_t align = op == 0 ? CLLM_ARENA_DEFAULT_ALIGN : (size_t)1 << (fuzz_u8(&in) % 24);
        if (op == 2) align = fuzz_u32(&in); /* often not a power of two */
        unsigned char *p = out ? cllm_arena_cursor_alloc_aligned(&cur, n, align)
                               : cllm_arena_alloc_aligned(a, n, align);
        bool valid = (align & (align - 1)) == 0 && align != 0 && align <= CLLM_ARENA_MAX_ALIGN &&
                     n <= CLLM_ARENA_MAX_REQUEST;
        if (!valid) {
          FUZZ_CHECK(p == NULL && cllm_last_status() == CLLM_EINVAL, "bad input accepted: n %zu align %zu", n, align);
          break;
        }
        if (p == NULL) {
          cllm_status_t why = cllm_last_status();
          FUZZ_CHECK(why == CLLM_ELIMIT || why == CLLM_ENOMEM, "alloc failed: %s", cllm_status_name(why));
          break;
        }
        FUZZ_CHECK(((uintptr_t)p & (align - 1)) == 0, "misaligned %p for %zu", (void *)p, align);
        if (n > 0 && n_live < MAX_LIVE) {
          memset(p, pat, n);
          live[n_live++] = (live_t){p, n, pat};
          pat = (unsigned char)(pat * 3 + 1) | 1;
        }
        break;
      }
      case 3: /* mark */
        if (n_marks < MAX_MARKS) {
          marks[n_marks].m = cllm_arena_mark(a);
          marks[n_marks].n_live = n_live;
          n_marks++;
        }
        break;
      case 4: /* rewind to a valid mark */
        if (n_marks > 0) {
          int k = fuzz_u8(&in) % n_marks;
          FUZZ_CHECK(cllm_arena_rewind(a, marks[k].m) == CLLM_OK, "rewind to a live mark");
          for (int j = k + 1; j < n_marks && n_stale < 4; j++) stale[n_stale++] = marks[j].m;
          n_live = marks[k].n_live;
          n_marks = k + 1; /* marks taken after it are stale now */
        }
        break;
      case 5: /* rewind to a stale or foreign mark: refused, nothing changes */
        if (n_stale > 0 && (fuzz_u8(&in) & 1)) {
          FUZZ_CHECK(cllm_arena_rewind(a, stale[fuzz_u8(&in) % n_stale]) != CLLM_OK, "stale mark accepted");
        } else {
          FUZZ_CHECK(cllm_arena_rewind(a, foreign) != CLLM_OK, "foreign mark accepted");
        }
        break;
      case 6: /* reset: every mark is stale */
        FUZZ_CHECK(cllm_arena_reset(a) == CLLM_OK, "reset");
        for (int j = 0; j < n_marks && n_stale < 4; j++) stale[n_stale++] = marks[j].m;
        n_marks = 0;
        n_live = 0;
        break;
      case 7: { /* reserve */
        size_t n = fuzz_size(&in, (size_t)16 << 20);
        cllm_status_t s = cllm_arena_reserve(a, n);
        FUZZ_CHECK(s == CLLM_OK || s == CLLM_ELIMIT || s == CLLM_ENOMEM || s == CLLM_EINVAL,
                   "reserve %s", cllm_status_name(s));
        break;
      }
      case 8: {
        cllm_status_t s = cllm_arena_trim(a);
        if (s == CLLM_ESTATE) { /* documented: allocations are live */
          cllm_arena_stats_t st = {.struct_size = sizeof st};
          FUZZ_CHECK(cllm_arena_stats(a, &st) == CLLM_OK && st.bytes_in_use > 0, "ESTATE with nothing live");
        } else {
          FUZZ_CHECK(s == CLLM_OK || s == CLLM_ELIMIT || s == CLLM_ENOMEM, "trim %s", cllm_status_name(s));
        }
        break;
      }
      case 10: /* begin / end a cursor */
        if (!out) {
          FUZZ_CHECK(cllm_arena_cursor_begin(a, &cur) == CLLM_OK, "begin");
          out = true;
        } else {
          cllm_arena_cursor_t copy = cur;
          FUZZ_CHECK(cllm_arena_cursor_end(a, &cur) == CLLM_OK, "end");
          stale_cur = copy;
          have_stale_cur = true;
          out = false;
        }
        break;
      case 11: { /* misused cursors: refused, nothing changes */
        cllm_arena_stats_t b = {.struct_size = sizeof b}, c = {.struct_size = sizeof c};
        FUZZ_CHECK(cllm_arena_stats(a, &b) == CLLM_OK, "stats");
        FUZZ_CHECK(cllm_arena_cursor_end(a, &ocur) == CLLM_EINVAL, "another arena's cursor");
        cllm_arena_cursor_t two;
        cllm_status_t s = cllm_arena_cursor_begin(a, &two);
        if (out) {
          FUZZ_CHECK(s == CLLM_ESTATE, "two cursors at once: %s", cllm_status_name(s));
          FUZZ_CHECK(cllm_arena_cursor_alloc(&two, 1) == NULL, "a refused cursor allocated");
        } else {
          FUZZ_CHECK(s == CLLM_OK, "begin: %s", cllm_status_name(s));
          FUZZ_CHECK(cllm_arena_cursor_end(a, &two) == CLLM_OK, "end");
          FUZZ_CHECK(cllm_arena_cursor_end(a, &two) == CLLM_ESTATE, "ended twice");
        }
        if (have_stale_cur) {
          FUZZ_CHECK(cllm_arena_cursor_end(a, &stale_cur) != CLLM_OK, "stale cursor accepted");
          cllm_arena_cursor_t st = stale_cur;
          FUZZ_CHECK(cllm_arena_cursor_alloc(&st, (size_t)64 << 20) == NULL, "stale cursor allocated");
        }
        FUZZ_CHECK(cllm_arena_stats(a, &c) == CLLM_OK, "stats");
        FUZZ_CHECK(c.bytes_in_use == b.bytes_in_use && c.capacity_bytes == b.capacity_bytes &&
                       c.chunks == b.chunks && c.cursor_out == out,
                   "a refused cursor changed the arena");
        break;
      }
      case 9: { /* stats agree with the monitor */
        cllm_arena_stats_t st = {.struct_size = sizeof st};
        FUZZ_CHECK(cllm_arena_stats(a, &st) == CLLM_OK, "stats");
        cllm_arena_stats_t so = {.struct_size = sizeof so};
        FUZZ_CHECK(cllm_arena_stats(other, &so) == CLLM_OK, "stats other");
        FUZZ_CHECK(st.capacity_bytes + so.capacity_bytes == cllm_monitor_used(mon, CLLM_CAT_STEP),
                   "capacity %zu + %zu != STEP %zu", st.capacity_bytes, so.capacity_bytes,
                   cllm_monitor_used(mon, CLLM_CAT_STEP));
        break;
      }
    }
    verify(live, n_live);
    FUZZ_CHECK(cllm_arena_check(a) == CLLM_OK, "check");
    FUZZ_CHECK(cllm_arena_check(other) == CLLM_OK, "check other");
    FUZZ_CHECK(cllm_monitor_peak(mon, CLLM_CAT_COUNT) <= mc.limit_bytes, "peak above limit");
  }
  if (out && (n_live & 1)) FUZZ_CHECK(cllm_arena_cursor_end(a, &cur) == CLLM_OK, "end");
  cllm_arena_destroy(a); /* with or without a cursor out */
  cllm_arena_destroy(other);
  FUZZ_CHECK(cllm_monitor_used(mon, CLLM_CAT_COUNT) == 0, "monitor not balanced");
  cllm_monitor_destroy(mon);
  return 0;
}
