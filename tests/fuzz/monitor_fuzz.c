/* libFuzzer target: the monitor as an op sequence against a reference model.
 * Ops: reserve, try_reserve, release, set_limit, set_category_limit, reset_peak,
 * batch reserve/release/flush, add/remove a reclaimer, with valid and invalid
 * arguments; cllm_monitor_check() and a model comparison after every op. */
#include <stdbool.h>

#include <cllm/monitor.h>

#include "fuzz_input.h"

typedef struct model {
  size_t used[CLLM_CAT_COUNT];
  size_t total, limit, cat_limit[CLLM_CAT_COUNT];
  size_t cached; /* bytes the reclaimer may free (in KV) */
} model_t;

typedef struct rec_ctx {
  cllm_monitor_t *m;
  model_t *model;
  size_t freed;
} rec_ctx_t;

static size_t reclaimer(void *user, cllm_category_t cat, size_t needed) {
  (void)cat;
  rec_ctx_t *r = user;
  size_t n = r->model->cached < needed ? r->model->cached : needed;
  if (n > 0) {
    FUZZ_CHECK(cllm_monitor_release(r->m, CLLM_CAT_KV, n) == CLLM_OK, "reclaim release");
    r->model->cached -= n;
    r->model->used[CLLM_CAT_KV] -= n;
    r->model->total -= n;
  }
  r->freed += n;
  return n;
}

static bool fits(const model_t *md, int cat, size_t bytes) {
  size_t t;
  if (bytes == 0) return true; /* documented: 0 always succeeds, changes nothing */
  if (__builtin_add_overflow(md->total, bytes, &t)) return false;
  if (md->limit != 0 && t > md->limit) return false;
  if (md->cat_limit[cat] != 0 && (md->used[cat] + bytes > md->cat_limit[cat])) return false;
  return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_in_t in = {data, size};
  cllm_set_log_fn(cllm_log_discard, NULL);
  cllm_monitor_t *m;
  FUZZ_CHECK(cllm_monitor_create(NULL, &m) == CLLM_OK, "create");
  model_t md = {0};
  rec_ctx_t rc = {m, &md, 0};
  bool have_rec = false;
  cllm_monitor_batch_t batch;
  FUZZ_CHECK(cllm_monitor_batch_init(&batch, m, CLLM_CAT_HEAP, 4096) == CLLM_OK, "batch");
  size_t batch_handed = 0; /* bytes handed out through the batch */
  while (!fuzz_done(&in)) {
    uint8_t op = fuzz_u8(&in) % 12;
    int cat = fuzz_u8(&in) % (CLLM_CAT_COUNT + 1); /* CLLM_CAT_COUNT is invalid */
    size_t bytes = fuzz_size(&in, 1 << 20);
    cllm_status_t s;
    switch (op) {
      case 0:
      case 1: { /* reserve / try_reserve; the batch's credit counts in HEAP */
        bool with_reclaim = op == 0;
        s = with_reclaim ? cllm_monitor_reserve(m, (cllm_category_t)cat, bytes)
                         : cllm_monitor_try_reserve(m, (cllm_category_t)cat, bytes);
        if (cat == CLLM_CAT_COUNT) { FUZZ_CHECK(s == CLLM_EINVAL, "bad cat %d", s); break; }
        bool ok_model = fits(&md, cat, bytes);
        if (!ok_model && with_reclaim && have_rec && md.cached > 0) {
          /* The monitor may have reclaimed: the reclaimer updated the model. */
          ok_model = fits(&md, cat, bytes);
        }
        FUZZ_CHECK((s == CLLM_OK) == ok_model, "reserve %zu in %d: %d vs model %d", bytes, cat, s, ok_model);
        if (s == CLLM_OK) { md.used[cat] += bytes; md.total += bytes; }
        else FUZZ_CHECK(s == CLLM_ELIMIT, "status %d", s);
        break;
      }
      case 2: /* release */
        if (cat == CLLM_CAT_HEAP && bytes <= md.used[cat] &&
            bytes > md.used[cat] - (batch.credit + batch_handed))
          break; /* would take bytes the batch owns: not a sequence we model */
        s = cllm_monitor_release(m, (cllm_category_t)cat, bytes);
        if (cat == CLLM_CAT_COUNT) { FUZZ_CHECK(s == CLLM_EINVAL, "bad cat"); break; }
        if (bytes <= md.used[cat]) {
          FUZZ_CHECK(s == CLLM_OK, "release %zu of %zu: %d", bytes, md.used[cat], s);
          md.used[cat] -= bytes;
          md.total -= bytes;
          if (cat == CLLM_CAT_KV && md.cached > md.used[cat]) md.cached = md.used[cat];
        } else {
          FUZZ_CHECK(s == CLLM_EINVAL, "over-release %zu > %zu: %d", bytes, md.used[cat], s);
        }
        break;
      case 3:
        md.limit = bytes;
        FUZZ_CHECK(cllm_monitor_set_limit(m, bytes) == CLLM_OK, "set_limit");
        break;
      case 4:
        s = cllm_monitor_set_category_limit(m, (cllm_category_t)cat, bytes);
        if (cat == CLLM_CAT_COUNT) FUZZ_CHECK(s == CLLM_EINVAL, "bad cat");
        else { FUZZ_CHECK(s == CLLM_OK, "cat limit"); md.cat_limit[cat] = bytes; }
        break;
      case 5:
        FUZZ_CHECK(cllm_monitor_reset_peak(m) == CLLM_OK, "reset_peak");
        FUZZ_CHECK(cllm_monitor_peak(m, CLLM_CAT_COUNT) == md.total, "peak after reset");
        break;
      case 6: { /* batch reserve (small sizes) */
        size_t b = bytes % 8192;
        size_t before_used = cllm_monitor_used(m, CLLM_CAT_HEAP);
        s = cllm_monitor_batch_reserve(&batch, b);
        size_t after_used = cllm_monitor_used(m, CLLM_CAT_HEAP);
        if (s == CLLM_OK) batch_handed += b;
        md.used[CLLM_CAT_HEAP] += after_used - before_used;
        md.total += after_used - before_used;
        break;
      }
      case 7: { /* batch release of part of what it handed out */
        size_t b = batch_handed ? bytes % (batch_handed + 1) : 0;
        size_t before_used = cllm_monitor_used(m, CLLM_CAT_HEAP);
        FUZZ_CHECK(cllm_monitor_batch_release(&batch, b) == CLLM_OK, "batch release");
        size_t after_used = cllm_monitor_used(m, CLLM_CAT_HEAP);
        batch_handed -= b;
        md.used[CLLM_CAT_HEAP] -= before_used - after_used;
        md.total -= before_used - after_used;
        FUZZ_CHECK(batch.credit <= 2 * batch.batch_bytes, "credit bound");
        break;
      }
      case 8: {
        size_t before_used = cllm_monitor_used(m, CLLM_CAT_HEAP);
        FUZZ_CHECK(cllm_monitor_batch_flush(&batch) == CLLM_OK, "flush");
        size_t after_used = cllm_monitor_used(m, CLLM_CAT_HEAP);
        md.used[CLLM_CAT_HEAP] -= before_used - after_used;
        md.total -= before_used - after_used;
        FUZZ_CHECK(batch.credit == 0, "credit after flush");
        break;
      }
      case 9:
        s = cllm_monitor_add_reclaimer(m, reclaimer, &rc);
        FUZZ_CHECK(s == (have_rec ? CLLM_EEXIST : CLLM_OK), "add %d", s);
        have_rec = true;
        break;
      case 10:
        s = cllm_monitor_remove_reclaimer(m, reclaimer, &rc);
        FUZZ_CHECK(s == (have_rec ? CLLM_OK : CLLM_ENOTFOUND), "remove %d", s);
        have_rec = false;
        break;
      case 11: /* make some KV "cached" (reclaimable) */
        if (cllm_monitor_reserve(m, CLLM_CAT_KV, bytes % 65536) == CLLM_OK) {
          md.used[CLLM_CAT_KV] += bytes % 65536;
          md.total += bytes % 65536;
          md.cached += bytes % 65536;
        }
        break;
    }
    FUZZ_CHECK(cllm_monitor_check(m) == CLLM_OK, "check");
    for (int c = 0; c < CLLM_CAT_COUNT; c++)
      FUZZ_CHECK(cllm_monitor_used(m, (cllm_category_t)c) == md.used[c], "cat %d used %zu model %zu",
                 c, cllm_monitor_used(m, (cllm_category_t)c), md.used[c]);
    FUZZ_CHECK(cllm_monitor_used(m, CLLM_CAT_COUNT) == md.total, "total");
    FUZZ_CHECK(cllm_monitor_peak(m, CLLM_CAT_COUNT) >= md.total, "peak");
  }
  if (have_rec) CLLM_DISCARD(cllm_monitor_remove_reclaimer(m, reclaimer, &rc));
  cllm_monitor_destroy(m);
  return 0;
}
