/* Private to the arenas (lib/arena*.c): the arena object, its invariants and the
 * interfaces between the arena's files. Not installed, not for other components.
 *
 *   arena.c         objects (config, create, destroy), the allocation slow path and
 *                   the debug checks for two threads
 *   arena_chunks.c  chunks: obtain, give back, the chunk list, rebuild into one chunk
 *   arena_step.c    positions that move: cursors, marks and rewind, reset, reserve, trim
 *   arena_check.c   stats (residency included) and cllm_arena_check
 *   arena_floats.c  float arrays (cllm_heap_floats, cllm_float_array_free)
 *
 * Concept. An arena is a list of chunks (2 MiB aligned, sizes multiples of 2 MiB)
 * and a bump pointer. The public struct cllm_arena (cur_, end_) is the first member
 * of the private struct arena below, so the header's inline fast path bumps through
 * the current chunk without calling in here. Everything else (moving to the next
 * chunk, obtaining a chunk, bad input) is the slow path. A step ends with reset:
 * the pointer goes back to the first chunk; if the step spilled, the chunks are
 * rebuilt as one chunk of the step's high-water size, so a steady workload makes no
 * allocator or monitor call per step.
 *
 * Positions. The chunk being bumped is chunks[cur_idx]; chunks before it were used
 * this step up to chunks[k].used bytes (their tails are waste, not counted), chunks
 * after it are free. used_before = sum of chunks[k].used for k < cur_idx, so the
 * bytes in use are used_before + (cur_ - chunks[cur_idx].base). A new chunk is
 * always inserted right after the current one, so the chunk index of every live
 * mark (which is <= cur_idx) stays valid.
 *
 * Marks. Live marks form a stack (marks[0 .. n_marks)) of slots holding a serial id
 * and the position. A mark value carries the arena, the id and its stack depth; it
 * is valid iff marks[depth].id == id. Rewinding to a mark truncates the stack just
 * above it, and reset empties it, so a stale mark (one taken after a rewind point
 * that was later rewound to, or before a reset) never matches again: ids are
 * never reused (they start at a per-arena base drawn from a process-wide counter,
 * so a mark of another arena never matches either).
 *
 * Cursors. cllm_arena_cursor_begin lends the position to a caller's local cursor:
 * pub.cursor_id_ holds the cursor's id, held_cur / held_end the position the arena
 * last saw (at begin and after each cursor slow path), and pub.cur_ = pub.end_ = 0 so
 * that the inline cllm_arena_alloc lands in the slow path, which refuses (ESTATE), as
 * do mark, rewind, reset, reserve and trim. The cursor's slow path (refill) and end
 * validate the cursor against the arena (id, end of the current chunk, held_cur <=
 * cur <= held_end), put the position back into pub, run the ordinary code and, for a
 * refill, lend it out again.
 *
 * High-water. The fast path does not track it: in use only grows between the calls
 * that lower it (rewind, reset), so the step high-water is raised there and read in
 * stats as max(step_hw, in use).
 *
 * Invariants (cllm_arena_check): n_chunks == 0 implies cur_ == end_ == 0; otherwise
 * chunks[cur_idx].base <= cur_ <= end_ == base + size; every base and size is a
 * multiple of CLLM_ARENA_GRANULE; capacity == sum of sizes; bytes charged to the
 * monitor's STEP category == capacity (0 for a heap-backed arena: the heaps charge
 * HEAP); chunks[k].used <= size; mark ids strictly increase up the stack and every
 * slot lies at or before the current position.
 *
 * Locks: none. An arena is used by one thread at a time (external sync). With
 * CLLM_DEBUG >= 1 the out-of-line calls detect two threads at once (an atomic busy
 * tag) and two allocating threads within one step (a step-owner tag).
 */
#ifndef CLLM_LIB_ARENA_INTERNAL_H
#define CLLM_LIB_ARENA_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cllm/arena.h>

#include "internal/util.h"

#if CLLM_HAVE_ASAN
#include <sanitizer/asan_interface.h>
#endif

typedef struct chunk {
  uintptr_t base;
  size_t size;
  size_t used;  /* bytes used this step while not the current chunk */
  bool mapped;  /* from cllm__prim_map (else from cfg.heaps) */
} chunk_t;

typedef struct mark_slot {
  uint64_t id;
  size_t chunk;
  size_t off;
  size_t used_before;
} mark_slot_t;

typedef struct arena {
  cllm_arena_t pub; /* first: the header's fast path works on it */
  cllm_arena_config_t cfg;
  cllm_monitor_t *mon;
  size_t min_chunk, max_chunk;

  chunk_t *chunks;
  size_t n_chunks, cap_chunks;
  size_t cur_idx;
  size_t used_before;
  size_t capacity; /* sum of chunk sizes */
  size_t charged;  /* reserved in the monitor (== capacity) */

  /* this step */
  size_t step_hw;
  size_t transitions; /* chunk changes in the slow path */
  size_t spill_slack; /* alignment slack the one-chunk layout may need */

  size_t last_hw, all_hw, floor;
  unsigned low_steps;
  size_t window_hw;

  mark_slot_t *marks;
  size_t n_marks, cap_marks;
  uint64_t next_id; /* marks and cursors */

  /* while a cursor is out (pub.cursor_id_ != 0): the position last seen */
  uintptr_t held_cur, held_end;
  uint64_t cursors;

  uint64_t resets, spilled_steps, coalesces, shrinks, refused, einval;
  uint64_t allocator_calls, monitor_calls;

  _Atomic uintptr_t busy;       /* debug: thread inside an out-of-line call */
  _Atomic uintptr_t step_owner; /* debug: thread allocating this step */
} arena_t;

#define GRANULE CLLM_ARENA_GRANULE

static inline arena_t *impl(cllm_arena_t *a) { return (arena_t *)a; }
static inline const arena_t *cimpl(const cllm_arena_t *a) { return (const arena_t *)a; }

static inline size_t round_granule(size_t x) {
  size_t r;
  /* callers bound x by CLLM_ARENA_MAX_REQUEST (or by sums of mapped sizes) */
  if (!cllm__align_up_checked(x, GRANULE, &r)) return SIZE_MAX & ~(GRANULE - 1);
  return r;
}

/* What the slow paths accept (the inline bump refuses more: also bytes == 0, which
 * the slow paths turn into 1). */
static inline bool request_valid(size_t bytes, size_t align) {
  return cllm__is_pow2(align) && align <= CLLM_ARENA_MAX_ALIGN && bytes <= CLLM_ARENA_MAX_REQUEST;
}

static inline bool cursor_out(const arena_t *A) { return A->pub.cursor_id_ != 0; }

/* The bump pointer: the arena's, or while a cursor is out the position it last saw. */
static inline uintptr_t position(const arena_t *A) {
  return cursor_out(A) ? A->held_cur : A->pub.cur_;
}

static inline size_t in_use(const arena_t *A) {
  if (A->n_chunks == 0) return 0;
  return A->used_before + (position(A) - A->chunks[A->cur_idx].base);
}

static inline void note_hw(arena_t *A) {
  size_t u = in_use(A);
  if (u > A->step_hw) A->step_hw = u;
}

static inline void set_current(arena_t *A, size_t idx, uintptr_t cur) {
  A->cur_idx = idx;
  A->pub.cur_ = cur;
  A->pub.end_ = A->chunks[idx].base + A->chunks[idx].size;
}

static inline void set_empty_position(arena_t *A) {
  A->cur_idx = 0;
  A->used_before = 0;
  if (A->n_chunks == 0) {
    A->pub.cur_ = A->pub.end_ = 0;
  } else {
    set_current(A, 0, A->chunks[0].base);
  }
}
/* ---- poisoning (ASan) and the debug fill ---- */

/* Memory [lo, hi) is released: fill it (debug) and poison it (ASan). */
static inline void release_range(uintptr_t lo, uintptr_t hi) {
  if (hi <= lo) return;
#if CLLM_HAVE_ASAN
  ASAN_UNPOISON_MEMORY_REGION((void *)lo, hi - lo);
#endif
  if (CLLM_DEBUG >= 2) memset((void *)lo, 0xDB, hi - lo);
#if CLLM_HAVE_ASAN
  ASAN_POISON_MEMORY_REGION((void *)lo, hi - lo);
#endif
}

static inline void poison_range(uintptr_t lo, size_t n) {
#if CLLM_HAVE_ASAN
  ASAN_POISON_MEMORY_REGION((void *)lo, n);
#else
  (void)lo;
  (void)n;
#endif
}

static inline void unpoison_range(uintptr_t lo, size_t n) {
#if CLLM_HAVE_ASAN
  ASAN_UNPOISON_MEMORY_REGION((void *)lo, n);
#else
  (void)lo;
  (void)n;
#endif
}

/* Heap-backed arenas do not charge STEP: the heaps already charge every byte they
 * hand out to HEAP, and one byte must be counted once in the monitor's total. */
static inline bool charges_step(const arena_t *A) { return A->cfg.heaps == NULL; }

/* ---- between the arena's files ---- */

/* Debug (CLLM_DEBUG >= 1; nothing otherwise): enter / leave an out-of-line call.
 * claim: this call allocates (or marks) for the step; check_owner: the step's owner
 * (if any) must be this thread. Two threads at once, or two within one step, is a
 * debug assertion. */
void cllm__arena_debug_enter(arena_t *A, bool claim, bool check_owner);
void cllm__arena_debug_leave(arena_t *A);
static inline void cllm__arena_dbg_enter(arena_t *A, bool claim, bool check_owner) {
  if (CLLM_DEBUG >= 1) cllm__arena_debug_enter(A, claim, check_owner);
}
static inline void cllm__arena_dbg_leave(arena_t *A) {
  if (CLLM_DEBUG >= 1) cllm__arena_debug_leave(A);
}

/* arena.c: the slow path of an allocation (valid bytes >= 1 and align, no cursor
 * out): bump in the current chunk, move to a later free chunk or add one. NULL with
 * the last status set on failure; nothing changes then. */
void *cllm__arena_alloc_locked(arena_t *A, size_t bytes, size_t align);

/* arena_chunks.c. Obtain `size` bytes (a multiple of GRANULE) charged to the monitor
 * (a `speculative` charge never runs its reclaimers), mapped or from the heaps,
 * advised and pre-faulted as configured, poisoned. The chunk list is not changed; on
 * failure nothing is kept. */
cllm_status_t cllm__arena_chunk_obtain(arena_t *A, size_t size, chunk_t *out, bool speculative);
/* Unmap or free a chunk (already out of the list) and release its charge. */
void cllm__arena_chunk_give_back(arena_t *A, const chunk_t *c);
/* Give back every chunk, last first (capacity and charge drop to 0). */
void cllm__arena_chunk_give_back_all(arena_t *A);
/* A free slot in the chunk array (grown by doubling): false when it cannot grow. */
bool cllm__arena_chunk_slot(arena_t *A);
/* Insert at / remove from position `pos` of the list, keeping capacity the sum. */
void cllm__arena_chunk_insert(arena_t *A, size_t pos, const chunk_t *c);
void cllm__arena_chunk_remove(arena_t *A, size_t pos);
/* Size of a new growth chunk able to hold `bytes`. */
size_t cllm__arena_growth_size(const arena_t *A, size_t bytes);
/* With nothing in use: leave one chunk able to hold `target` bytes (none for 0),
 * shrunk to target when `shrink`. Returns the status of the obtain it needed (the
 * arena is then empty but usable). */
cllm_status_t cllm__arena_rebuild_single(arena_t *A, size_t target, bool shrink);

#endif /* CLLM_LIB_ARENA_INTERNAL_H */
