/* libFuzzer target: a step arena as an op sequence (alloc with edge sizes and
 * alignments, mark, rewind to valid / stale / foreign marks, reset, reserve, trim)
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
  while (!fuzz_done(&in)) {
    uint8_t op = fuzz_u8(&in) % 10;
    switch (op) {
      case 0: case 1: case 2: { /* alloc */
        size_t n = fuzz_size(&in, (size_t)3 << 20);
        size_t align = op == 0 ? CLLM_ARENA_DEFAULT_ALIGN : (size_t)1 << (fuzz_u8(&in) % 24);
        if (op == 2) align = fuzz_u32(&in); /* often not a power of two */
        unsigned char *p = cllm_arena_alloc_aligned(a, n, align);
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
    FUZZ_CHECK(cllm_monitor_peak(mon, CLLM_CAT_COUNT) <= mc.limit_bytes, "peak above limit");
  }
  cllm_arena_destroy(a);
  cllm_arena_destroy(other);
  FUZZ_CHECK(cllm_monitor_used(mon, CLLM_CAT_COUNT) == 0, "monitor not balanced");
  cllm_monitor_destroy(mon);
  return 0;
}
