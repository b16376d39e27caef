/* Arena positions that move: cursors (the position lent to a caller), marks and
 * rewind, reset (the end of a step, with the coalescing and the shrink policy),
 * reserve and trim. */
#include <stdlib.h>

#include "arena_internal.h"
#include "internal/atomic.h"
#include "internal/fault.h"

/* ---- cursors --------------------------------------------------------------------------- */

/* Release (fill and poison) everything from (chunk c, offset off) up to the current
 * position; every chunk's `used` from c on becomes 0. */
static void release_after(arena_t *A, size_t c, size_t off) {
  if (A->n_chunks == 0) return;
  for (size_t k = c; k <= A->cur_idx; k++) {
    chunk_t *ch = &A->chunks[k];
    uintptr_t lo = k == c ? ch->base + off : ch->base;
    uintptr_t hi = k == A->cur_idx ? A->pub.cur_ : ch->base + ch->used;
    release_range(lo, hi);
    ch->used = 0;
  }
}

/* Lend the position: save it, close the inline fast path (cur_ = end_ = 0). */
static void lend_position(arena_t *A) {
  A->held_cur = A->pub.cur_;
  A->held_end = A->pub.end_;
  A->pub.cur_ = A->pub.end_ = 0;
}

/* Take the position back from a validated cursor at `cur`. */
static void take_position(arena_t *A, uintptr_t cur) {
  A->pub.cur_ = cur;
  A->pub.end_ = A->held_end;
  A->held_cur = A->held_end = 0;
}

/* Is (id, cur, end) the cursor this arena lent? EINVAL: no cursor (id 0) or an
 * altered one; ESTATE: none is out, or an earlier cursor (ended, or a stale copy). */
static cllm_status_t cursor_validate(const arena_t *A, uint64_t id, uintptr_t cur,
                                     uintptr_t end) {
  if (id == 0) return CLLM_EINVAL;
  if (!cursor_out(A) || id != A->pub.cursor_id_) return CLLM_ESTATE;
  if (end != A->held_end || cur < A->held_cur || cur > end) return CLLM_EINVAL;
  return CLLM_OK;
}

cllm_status_t cllm_arena_cursor_begin_(cllm_arena_t *a) {
  if (a == NULL) {
    cllm__set_last_status(CLLM_EINVAL);
    return CLLM_EINVAL;
  }
  arena_t *A = impl(a);
  if (cursor_out(A)) {
    cllm__set_last_status(CLLM_ESTATE);
    return CLLM_ESTATE;
  }
  cllm__arena_dbg_enter(A, true, false);
  lend_position(A);
  A->pub.cursor_id_ = ++A->next_id;
  A->cursors++;
  cllm__arena_dbg_leave(A);
  return CLLM_OK;
}

cllm_arena_span_t cllm_arena_cursor_refill_(cllm_arena_t *a, uint64_t id, uintptr_t cur,
                                            uintptr_t end, size_t bytes, size_t align) {
  cllm_arena_span_t none = {0, 0};
  if (a == NULL) {
    cllm__set_last_status(CLLM_EINVAL);
    return none;
  }
  arena_t *A = impl(a);
  if (!request_valid(bytes, align)) {
    A->einval++;
    cllm__set_last_status(CLLM_EINVAL);
    return none;
  }
  cllm_status_t rc = cursor_validate(A, id, cur, end);
  if (rc != CLLM_OK) {
    if (rc == CLLM_EINVAL) A->einval++;
    cllm__set_last_status(rc);
    return none;
  }
  if (bytes == 0) bytes = 1; /* a unique valid pointer */
  cllm__arena_dbg_enter(A, true, false);
  take_position(A, cur);
  void *p = cllm__arena_alloc_locked(A, bytes, align); /* on failure the position stays at cur */
  lend_position(A);
  cllm__arena_dbg_leave(A);
  if (p == NULL) return none; /* the status is set */
  return (cllm_arena_span_t){(uintptr_t)p, A->held_end};
}

cllm_status_t cllm_arena_cursor_end_(cllm_arena_t *a, const cllm_arena_t *owner, uint64_t id,
                                     uintptr_t cur, uintptr_t end) {
  if (a == NULL) return CLLM_EINVAL;
  arena_t *A = impl(a);
  if (owner != a) {
    A->einval++;
    return CLLM_EINVAL;
  }
  cllm_status_t rc = cursor_validate(A, id, cur, end);
  if (rc != CLLM_OK) {
    if (rc == CLLM_EINVAL) A->einval++;
    return rc;
  }
  /* ending allocates nothing: a hand-over point, like reset */
  cllm__arena_dbg_enter(A, false, false);
  take_position(A, cur);
  A->pub.cursor_id_ = 0;
  cllm__arena_dbg_leave(A);
  return CLLM_OK;
}

/* ---- marks --------------------------------------------------------------------------- */

cllm_arena_mark_t cllm_arena_mark(cllm_arena_t *a) {
  cllm_arena_mark_t m = {NULL, 0, 0};
  if (a == NULL) {
    cllm__set_last_status(CLLM_EINVAL);
    return m;
  }
  arena_t *A = impl(a);
  if (cursor_out(A)) {
    cllm__set_last_status(CLLM_ESTATE);
    return m;
  }
  cllm__arena_dbg_enter(A, true, false);
  if (A->n_marks == A->cap_marks) {
    size_t cap = 2 * A->cap_marks;
    mark_slot_t *n =
        CLLM_FAULT(CLLM_FAULT_MALLOC) ? NULL : realloc(A->marks, cap * sizeof *n);
    if (n == NULL) {
      cllm__arena_dbg_leave(A);
      cllm__set_last_status(CLLM_ENOMEM);
      return m;
    }
    A->marks = n;
    A->cap_marks = cap;
  }
  mark_slot_t *s = &A->marks[A->n_marks];
  s->id = ++A->next_id;
  s->chunk = A->n_chunks ? A->cur_idx : 0;
  s->off = A->n_chunks ? A->pub.cur_ - A->chunks[A->cur_idx].base : 0;
  s->used_before = A->used_before;
  m.arena_ = a;
  m.id_ = s->id;
  m.depth_ = A->n_marks++;
  cllm__arena_dbg_leave(A);
  return m;
}

cllm_status_t cllm_arena_rewind(cllm_arena_t *a, cllm_arena_mark_t m) {
  if (a == NULL) return CLLM_EINVAL;
  arena_t *A = impl(a);
  if (m.arena_ != a || m.id_ == 0) {
    A->einval++;
    return CLLM_EINVAL;
  }
  if (m.depth_ >= A->n_marks || A->marks[m.depth_].id != m.id_ || cursor_out(A))
    return CLLM_ESTATE;
  cllm__arena_dbg_enter(A, false, true);
  const mark_slot_t s = A->marks[m.depth_];
  note_hw(A);
  if (A->n_chunks > 0) {
    release_after(A, s.chunk, s.off);
    A->used_before = s.used_before;
    set_current(A, s.chunk, A->chunks[s.chunk].base + s.off);
  }
  A->n_marks = m.depth_ + 1;
  cllm__arena_dbg_leave(A);
  return CLLM_OK;
}

/* ---- reset, reserve, trim ------------------------------------------------------------- */

static void run_shrink_policy(arena_t *A, size_t hw) {
  unsigned k = A->cfg.shrink_after_steps;
  if (k == 0 || A->capacity == 0) return;
  if ((double)hw < A->cfg.shrink_fraction * (double)A->capacity) {
    A->low_steps++;
    if (hw > A->window_hw) A->window_hw = hw;
  } else {
    A->low_steps = 0;
    A->window_hw = 0;
  }
  if (A->low_steps < k) return;
  size_t target = round_granule(A->window_hw);
  size_t fl = round_granule(A->floor);
  if (fl > target) target = fl;
  A->low_steps = 0;
  A->window_hw = 0;
  if (target < A->capacity) {
    size_t before = A->capacity;
    (void)cllm__arena_rebuild_single(A, target, true);
    if (A->capacity < before) A->shrinks++;
  }
}

cllm_status_t cllm_arena_reset(cllm_arena_t *a) {
  if (a == NULL) return CLLM_EINVAL;
  arena_t *A = impl(a);
  if (cursor_out(A)) return CLLM_ESTATE;
  cllm__arena_dbg_enter(A, false, false);
  note_hw(A);
  size_t hw = A->step_hw;
  bool spilled = A->transitions > 0;
  release_after(A, 0, 0);
  A->n_marks = 0;
  A->resets++;
  A->last_hw = hw;
  if (hw > A->all_hw) A->all_hw = hw;
  A->used_before = 0;
  A->step_hw = 0;
  if (A->n_chunks > 1) {
    /* Coalesce into one chunk of the step's high-water (plus the alignment slack a
     * single-chunk layout may need). A step that spilled did not fit chunk 0, so
     * the new chunk is larger than chunk 0 even when padding hid that in hw. */
    size_t target = round_granule(hw + A->spill_slack);
    if (spilled && target <= A->chunks[0].size) target = A->chunks[0].size + GRANULE;
    size_t fl = round_granule(A->floor);
    if (fl > target) target = fl;
    if (spilled) A->spilled_steps++;
    A->cur_idx = 0;
    A->pub.cur_ = A->chunks[0].base; /* in use is 0 from here */
    (void)cllm__arena_rebuild_single(A, target, false);
    A->coalesces++;
  } else {
    set_empty_position(A);
  }
  A->transitions = 0;
  A->spill_slack = 0;
  run_shrink_policy(A, hw);
  if (CLLM_DEBUG >= 1) cllm__atomic_store_release(&A->step_owner, (uintptr_t)0);
  cllm__arena_dbg_leave(A);
  return CLLM_OK;
}

/* Reserve between steps (nothing in use): chunk 0 holds `bytes`, else a chunk of that
 * size is obtained first and then replaces all the others. */
static cllm_status_t reserve_between_steps(arena_t *A, size_t bytes) {
  if (A->n_chunks > 0 && A->chunks[0].size >= bytes) return CLLM_OK;
  chunk_t c;
  if (!cllm__arena_chunk_slot(A)) return CLLM_ENOMEM;
  cllm_status_t rc = cllm__arena_chunk_obtain(A, round_granule(bytes), &c, false);
  if (rc != CLLM_OK) return rc;
  cllm__arena_chunk_give_back_all(A);
  cllm__arena_chunk_insert(A, 0, &c);
  set_empty_position(A);
  return CLLM_OK;
}

/* Reserve during a step: room after the position (the current chunk's tail or a later
 * free chunk), else a new chunk right after the current one. */
static cllm_status_t reserve_in_step(arena_t *A, size_t bytes) {
  if (A->pub.end_ - A->pub.cur_ >= bytes) return CLLM_OK;
  for (size_t j = A->cur_idx + 1; j < A->n_chunks; j++)
    if (A->chunks[j].size >= bytes) return CLLM_OK;
  chunk_t c;
  if (!cllm__arena_chunk_slot(A)) return CLLM_ENOMEM;
  cllm_status_t rc = cllm__arena_chunk_obtain(A, round_granule(bytes), &c, false);
  if (rc == CLLM_OK) cllm__arena_chunk_insert(A, A->cur_idx + 1, &c);
  return rc;
}

cllm_status_t cllm_arena_reserve(cllm_arena_t *a, size_t bytes) {
  if (a == NULL) return CLLM_EINVAL;
  arena_t *A = impl(a);
  if (bytes > CLLM_ARENA_MAX_REQUEST) {
    A->einval++;
    return CLLM_EINVAL;
  }
  if (cursor_out(A)) return CLLM_ESTATE;
  cllm__arena_dbg_enter(A, false, true);
  cllm_status_t rc = CLLM_OK; /* bytes == 0 only clears the floor */
  if (bytes > 0) rc = in_use(A) == 0 ? reserve_between_steps(A, bytes) : reserve_in_step(A, bytes);
  if (rc == CLLM_OK) A->floor = bytes;
  else A->refused++;
  cllm__arena_dbg_leave(A);
  return rc;
}

cllm_status_t cllm_arena_trim(cllm_arena_t *a) {
  if (a == NULL) return CLLM_EINVAL;
  arena_t *A = impl(a);
  if (in_use(A) != 0 || cursor_out(A)) return CLLM_ESTATE;
  cllm__arena_dbg_enter(A, false, true);
  size_t target = round_granule(A->last_hw);
  size_t fl = round_granule(A->floor);
  if (fl > target) target = fl;
  if (target < A->capacity || A->n_chunks > 1) {
    size_t before = A->capacity;
    (void)cllm__arena_rebuild_single(A, target, true);
    if (A->capacity < before) A->shrinks++;
  }
  A->low_steps = 0;
  A->window_hw = 0;
  cllm__arena_dbg_leave(A);
  return CLLM_OK;
}
