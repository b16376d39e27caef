/* Arena stats (counters, high-water, residency read back from the kernel) and
 * cllm_arena_check (the invariants of lib/arena_internal.h). */
#include <string.h>

#include "arena_internal.h"
#include "internal/prim.h"
#include "internal/versioned.h"

/* Resident bytes of the chunks (mincore through the prim layer); SIZE_MAX if unknown. */
static size_t resident_bytes(const arena_t *A) {
  size_t total = 0;
  for (size_t k = 0; k < A->n_chunks; k++) {
    size_t r;
    if (cllm__prim_resident_bytes((const void *)A->chunks[k].base, A->chunks[k].size, &r) != 0)
      return SIZE_MAX;
    total += r;
  }
  return total;
}

cllm_status_t cllm_arena_stats(const cllm_arena_t *a, cllm_arena_stats_t *st) {
  if (a == NULL || cllm__stats_size(st, sizeof *st) == 0) return CLLM_EINVAL;
  const arena_t *A = cimpl(a);
  cllm_arena_stats_t s;
  memset(&s, 0, sizeof s);
  s.struct_size = sizeof s;
  s.bytes_in_use = in_use(A);
  s.step_high_water_bytes = A->step_hw > s.bytes_in_use ? A->step_hw : s.bytes_in_use;
  s.last_step_high_water_bytes = A->last_hw;
  s.high_water_bytes = A->all_hw > s.step_high_water_bytes ? A->all_hw : s.step_high_water_bytes;
  s.capacity_bytes = A->capacity;
  s.chunks = A->n_chunks;
  for (size_t k = 0; k < A->n_chunks; k++)
    if (A->chunks[k].size > s.largest_chunk_bytes) s.largest_chunk_bytes = A->chunks[k].size;
  s.reserve_floor_bytes = A->floor;
  s.resets = A->resets;
  s.spilled_steps = A->spilled_steps;
  s.coalesces = A->coalesces;
  s.shrinks = A->shrinks;
  s.refused = A->refused;
  s.einval = A->einval;
  s.allocator_calls = A->allocator_calls;
  s.monitor_calls = A->monitor_calls;
  s.heap_backed = A->cfg.heaps != NULL;
  s.cursor_out = cursor_out(A);
  s.cursors = A->cursors;
  s.resident_bytes = resident_bytes(A);
  cllm__stats_out(st, &s, sizeof s);
  return CLLM_OK;
}

cllm_status_t cllm_arena_check(const cllm_arena_t *a) {
  if (a == NULL) return CLLM_EINVAL;
  const arena_t *A = cimpl(a);
  CLLM_CHECK(A->n_chunks <= A->cap_chunks, "arena", "%p: %zu chunks > %zu slots", (void *)A,
             A->n_chunks, A->cap_chunks);
  CLLM_CHECK(A->n_marks <= A->cap_marks, "arena", "%p: mark stack overflow", (void *)A);
  size_t cap = 0, before = 0;
  for (size_t k = 0; k < A->n_chunks; k++) {
    const chunk_t *c = &A->chunks[k];
    CLLM_CHECK(c->base != 0 && c->base % GRANULE == 0 && c->size > 0 && c->size % GRANULE == 0,
               "arena", "%p: chunk %zu base %#lx size %zu misaligned", (void *)A, k,
               (unsigned long)c->base, c->size);
    CLLM_CHECK(c->used <= c->size, "arena", "%p: chunk %zu used %zu > size %zu", (void *)A, k,
               c->used, c->size);
    if (k < A->cur_idx) before += c->used;
    if (k > A->cur_idx)
      CLLM_CHECK(c->used == 0, "arena", "%p: free chunk %zu has used %zu", (void *)A, k, c->used);
    CLLM_CHECK(!cllm__add_overflow(cap, c->size, &cap), "arena", "%p: capacity overflows",
               (void *)A);
  }
  CLLM_CHECK(cap == A->capacity, "arena", "%p: capacity %zu != sum of chunks %zu", (void *)A,
             A->capacity, cap);
  CLLM_CHECK(A->charged == (charges_step(A) ? A->capacity : 0), "arena",
             "%p: monitor charged %zu != capacity %zu", (void *)A, A->charged, A->capacity);
  uintptr_t pos = A->pub.cur_, end = A->pub.end_;
  if (cursor_out(A)) {
    CLLM_CHECK(A->pub.cur_ == 0 && A->pub.end_ == 0, "arena",
               "%p: a cursor is out but the fast path is open", (void *)A);
    CLLM_CHECK(A->pub.cursor_id_ <= A->next_id, "arena", "%p: cursor id %llu was never issued",
               (void *)A, (unsigned long long)A->pub.cursor_id_);
    pos = A->held_cur;
    end = A->held_end;
  }
  if (A->n_chunks == 0) {
    CLLM_CHECK(pos == 0 && end == 0 && A->used_before == 0, "arena",
               "%p: empty arena with a bump pointer", (void *)A);
  } else {
    CLLM_CHECK(A->cur_idx < A->n_chunks, "arena", "%p: current chunk %zu of %zu", (void *)A,
               A->cur_idx, A->n_chunks);
    const chunk_t *c = &A->chunks[A->cur_idx];
    CLLM_CHECK(end == c->base + c->size && pos >= c->base && pos <= end, "arena",
               "%p: bump pointer %#lx outside chunk [%#lx, %#lx)", (void *)A, (unsigned long)pos,
               (unsigned long)c->base, (unsigned long)(c->base + c->size));
    CLLM_CHECK(before == A->used_before, "arena", "%p: used_before %zu != %zu", (void *)A,
               A->used_before, before);
  }
  uint64_t prev = 0;
  size_t now = in_use(A);
  for (size_t d = 0; d < A->n_marks; d++) {
    const mark_slot_t *s = &A->marks[d];
    CLLM_CHECK(s->id > prev, "arena", "%p: mark ids not increasing at depth %zu", (void *)A, d);
    prev = s->id;
    if (A->n_chunks > 0) {
      CLLM_CHECK(s->chunk <= A->cur_idx && s->off <= A->chunks[s->chunk].size, "arena",
                 "%p: mark %zu beyond the current position", (void *)A, d);
      CLLM_CHECK(s->used_before + s->off <= now, "arena", "%p: mark %zu above bytes in use",
                 (void *)A, d);
    } else {
      CLLM_CHECK(s->chunk == 0 && s->off == 0 && s->used_before == 0, "arena",
                 "%p: mark %zu in an empty arena", (void *)A, d);
    }
  }
  return CLLM_OK;
}
