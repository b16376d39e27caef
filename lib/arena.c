/* Per-step bump arenas (include/cllm/arena.h).
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
 * multiple of CLLM_ARENA_GRANULE; capacity == sum of sizes == bytes charged to the
 * monitor's STEP category (0 for a heap-backed arena: the heaps charge HEAP); chunks[k].used <= size; mark ids strictly increase up the
 * stack and every slot lies at or before the current position.
 *
 * Locks: none. An arena is used by one thread at a time (external sync). With
 * CLLM_DEBUG >= 1 the out-of-line calls detect two threads at once (an atomic busy
 * tag) and two allocating threads within one step (a step-owner tag).
 */
#include <stdlib.h>
#include <string.h>

#include <mimalloc.h>

#include <cllm/arena.h>

#include "internal/atomic.h"
#include "internal/fault.h"
#include "internal/prim.h"
#include "internal/util.h"

#if CLLM_HAVE_ASAN
#include <sanitizer/asan_interface.h>
#endif

/* ---- types ---------------------------------------------------------------------- */

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
  /* must stay first: the header's fast path works on it. Cache-line aligned (and
   * the struct padded to whole lines) so that two threads' arenas never share a
   * line with a hot bump pointer. */
  _Alignas(64) cllm_arena_t pub;
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
#define MARKS_INITIAL 16

static _Atomic uint64_t g_arena_serial = 1;

static inline arena_t *impl(cllm_arena_t *a) { return (arena_t *)a; }
static inline const arena_t *cimpl(const cllm_arena_t *a) { return (const arena_t *)a; }

static inline size_t round_granule(size_t x) {
  size_t r;
  /* callers bound x by CLLM_ARENA_MAX_REQUEST (or by sums of mapped sizes) */
  if (!cllm__align_up_checked(x, GRANULE, &r)) return SIZE_MAX & ~(GRANULE - 1);
  return r;
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

static void set_current(arena_t *A, size_t idx, uintptr_t cur) {
  A->cur_idx = idx;
  A->pub.cur_ = cur;
  A->pub.end_ = A->chunks[idx].base + A->chunks[idx].size;
}

static void set_empty_position(arena_t *A) {
  A->cur_idx = 0;
  A->used_before = 0;
  if (A->n_chunks == 0) {
    A->pub.cur_ = A->pub.end_ = 0;
  } else {
    set_current(A, 0, A->chunks[0].base);
  }
}

/* ---- debug: two threads at once ---------------------------------------------------- */

static _Thread_local char t_self_tag;
#define SELF_TAG ((uintptr_t)&t_self_tag)

/* claim: this call allocates (or marks) for the step; check_owner: the step's
 * owner (if any) must be this thread. */
static void dbg_enter(arena_t *A, bool claim, bool check_owner) {
  if (CLLM_DEBUG < 1) return;
  uintptr_t prev = atomic_exchange_explicit(&A->busy, SELF_TAG, memory_order_acq_rel);
  if (prev != 0 && prev != SELF_TAG) {
    cllm__error("arena %p used from two threads at once", (void *)A);
    cllm_assert(prev == 0 && "arena used from two threads at once");
  }
  if (claim || check_owner) {
    uintptr_t owner = 0;
    bool ok;
    if (claim) {
      ok = atomic_compare_exchange_strong_explicit(&A->step_owner, &owner, SELF_TAG,
                                                   memory_order_acq_rel, memory_order_acquire) ||
           owner == SELF_TAG;
    } else {
      owner = cllm__atomic_load_acquire(&A->step_owner);
      ok = owner == 0 || owner == SELF_TAG;
    }
    if (!ok) {
      cllm__error("arena %p used from two threads within one step (reset between them)",
                  (void *)A);
      cllm_assert(ok && "arena used from two threads within one step");
    }
  }
}

static void dbg_leave(arena_t *A) {
  if (CLLM_DEBUG < 1) return;
  cllm__atomic_store_release(&A->busy, (uintptr_t)0);
}

/* ---- poisoning ------------------------------------------------------------------- */

void cllm_arena_asan_unpoison_(void *p, size_t bytes) {
#if CLLM_HAVE_ASAN
  ASAN_UNPOISON_MEMORY_REGION(p, bytes);
#else
  (void)p;
  (void)bytes;
#endif
}

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

/* ---- chunks: obtain and give back --------------------------------------------------- */

/* Heap-backed arenas do not charge STEP: the heaps already charge every byte they
 * hand out to HEAP, and one byte must be counted once in the monitor's total. */
static bool charges_step(const arena_t *A) { return A->cfg.heaps == NULL; }

static void monitor_release(arena_t *A, size_t bytes) {
  if (bytes == 0 || !charges_step(A)) return;
  A->monitor_calls++;
  cllm_status_t rc = cllm_monitor_release(A->mon, CLLM_CAT_STEP, bytes);
  cllm_assert_internal(rc == CLLM_OK);
  if (rc == CLLM_OK) A->charged -= bytes;
}

/* Obtain `size` bytes (a multiple of GRANULE): charge the monitor (its reclaimers
 * may run, unless `speculative`: then a limit simply refuses), then map or take from
 * the heap, advise and pre-fault. Nothing changes in the arena's chunk list; on
 * failure everything obtained is given back. */
static cllm_status_t chunk_obtain_ex(arena_t *A, size_t size, chunk_t *out, bool speculative) {
  cllm_assert_internal(size > 0 && size % GRANULE == 0);
  cllm_status_t rc = CLLM_OK;
  if (charges_step(A)) {
    A->monitor_calls++;
    rc = speculative ? cllm_monitor_try_reserve(A->mon, CLLM_CAT_STEP, size)
                     : cllm_monitor_reserve(A->mon, CLLM_CAT_STEP, size);
    if (rc != CLLM_OK) return rc; /* ELIMIT; EBUSY when called from a reclaimer */
    A->charged += size;
  }
  void *p = NULL;
  bool mapped = A->cfg.heaps == NULL;
  A->allocator_calls++;
  if (!mapped) {
    p = cllm_heap_alloc_aligned(A->cfg.heaps, size, GRANULE);
    /* the heap charges its own HEAP budget: pass its refusal on, else no memory */
    if (p == NULL) rc = cllm_last_status() == CLLM_ELIMIT ? CLLM_ELIMIT : CLLM_ENOMEM;
  } else if (cllm__prim_map(size, GRANULE, &p) != 0) {
    p = NULL;
    rc = CLLM_ENOMEM;
  }
  if (p != NULL) {
    if (A->cfg.transparent_huge_pages) (void)cllm__prim_advise_huge(p, size); /* best effort */
    if (A->cfg.populate && cllm__prim_populate(p, size) != 0) {
      A->allocator_calls++;
      if (mapped) (void)cllm__prim_unmap(p, size);
      else cllm_heap_free(A->cfg.heaps, p);
      p = NULL;
      rc = CLLM_ENOMEM;
    }
  }
  if (p == NULL) {
    monitor_release(A, size);
    return rc;
  }
  poison_range((uintptr_t)p, size);
  *out = (chunk_t){.base = (uintptr_t)p, .size = size, .used = 0, .mapped = mapped};
  return CLLM_OK;
}

static cllm_status_t chunk_obtain(arena_t *A, size_t size, chunk_t *out) {
  return chunk_obtain_ex(A, size, out, false);
}

static void chunk_give_back(arena_t *A, const chunk_t *c) {
  unpoison_range(c->base, c->size); /* the range may be reused by others */
  A->allocator_calls++;
  if (c->mapped) {
    int e = cllm__prim_unmap((void *)c->base, c->size);
    if (e != 0) cllm__warn("arena: unmapping a %zu-byte chunk failed (errno %d)", c->size, e);
  } else {
    cllm_heap_free(A->cfg.heaps, (void *)c->base);
  }
  monitor_release(A, c->size);
}

static bool ensure_chunk_slot(arena_t *A) {
  if (A->n_chunks < A->cap_chunks) return true;
  size_t cap = A->cap_chunks ? 2 * A->cap_chunks : 8;
  chunk_t *n = CLLM_FAULT(CLLM_FAULT_MALLOC) ? NULL : realloc(A->chunks, cap * sizeof *n);
  if (n == NULL) return false;
  A->chunks = n;
  A->cap_chunks = cap;
  return true;
}

static void insert_chunk(arena_t *A, size_t pos, const chunk_t *c) {
  cllm_assert_internal(A->n_chunks < A->cap_chunks && pos <= A->n_chunks);
  memmove(&A->chunks[pos + 1], &A->chunks[pos], (A->n_chunks - pos) * sizeof *c);
  A->chunks[pos] = *c;
  A->n_chunks++;
  A->capacity += c->size;
}

static void remove_chunk(arena_t *A, size_t pos) {
  A->capacity -= A->chunks[pos].size;
  memmove(&A->chunks[pos], &A->chunks[pos + 1], (A->n_chunks - pos - 1) * sizeof(chunk_t));
  A->n_chunks--;
}

/* Size of a new growth chunk able to hold `bytes`: the arena doubles (a new chunk
 * as large as the capacity so far), between min_chunk and max_chunk; a request
 * above max_chunk gets a dedicated chunk of its own (rounded) size. */
static size_t growth_size(const arena_t *A, size_t bytes) {
  size_t need = round_granule(bytes);
  if (need > A->max_chunk) return need;
  size_t size = A->capacity > A->min_chunk ? A->capacity : A->min_chunk;
  if (size > A->max_chunk) size = A->max_chunk;
  return size > need ? size : need;
}

/* Release everything after (chunk c, offset off) up to the current position. */
static void release_after(arena_t *A, size_t c, size_t off) {
  if (A->n_chunks == 0) return;
  for (size_t k = c; k <= A->cur_idx; k++) {
    chunk_t *ch = &A->chunks[k];
    uintptr_t lo = k == c ? ch->base + off : ch->base;
    uintptr_t hi = k == A->cur_idx ? A->pub.cur_ : ch->base + ch->used;
    if (CLLM_HAVE_ASAN || CLLM_DEBUG >= 2) release_range(lo, hi);
    ch->used = 0;
  }
}

/* With nothing in use: leave exactly one chunk able to hold `target` bytes (none if
 * target is 0). Keeps the smallest chunk that is large enough (shrunk to target
 * when `shrink`), else gives everything back and obtains one chunk of `target`.
 * Returns the status of that last obtain (the arena is then empty but usable). */
static cllm_status_t rebuild_single(arena_t *A, size_t target, bool shrink) {
  cllm_assert_internal(in_use(A) == 0);
  size_t best = SIZE_MAX;
  if (target > 0) {
    for (size_t k = 0; k < A->n_chunks; k++)
      if (A->chunks[k].size >= target && (best == SIZE_MAX || A->chunks[k].size < A->chunks[best].size))
        best = k;
  }
  for (size_t k = A->n_chunks; k-- > 0;) {
    if (k == best) continue;
    chunk_t c = A->chunks[k];
    remove_chunk(A, k);
    if (best != SIZE_MAX && k < best) best--;
    chunk_give_back(A, &c);
  }
  cllm_status_t rc = CLLM_OK;
  if (best != SIZE_MAX) {
    cllm_assert_internal(A->n_chunks == 1 && best == 0);
    chunk_t *c = &A->chunks[0];
    if (shrink && c->size > target) {
      if (c->mapped) {
        size_t cut = c->size - target;
        unpoison_range(c->base + target, cut);
        A->allocator_calls++;
        if (cllm__prim_unmap((void *)(c->base + target), cut) == 0) {
          c->size = target;
          A->capacity -= cut;
          monitor_release(A, cut);
        } else {
          poison_range(c->base + target, cut);
        }
      } else {
        chunk_t n;
        if (chunk_obtain(A, target, &n) == CLLM_OK) {
          chunk_t old = *c;
          A->capacity -= old.size;
          *c = n;
          A->capacity += n.size;
          chunk_give_back(A, &old);
        }
      }
    }
  } else if (target > 0) {
    chunk_t n;
    rc = chunk_obtain(A, target, &n);
    if (rc == CLLM_OK) {
      cllm_assert_internal(A->n_chunks == 0 && A->cap_chunks > 0); /* slots exist since create */
      insert_chunk(A, 0, &n);
    }
    if (rc != CLLM_OK) A->refused++;
  }
  set_empty_position(A);
  return rc;
}

/* ---- life cycle ------------------------------------------------------------------------ */

cllm_arena_config_t cllm_arena_config_default(void) {
  cllm_arena_config_t c;
  memset(&c, 0, sizeof c);
  c.struct_size = sizeof c;
  c.initial_bytes = 0;
  c.min_chunk_bytes = GRANULE;
  c.max_chunk_bytes = (size_t)256 << 20;
  c.heaps = NULL;
  c.monitor = NULL;
  c.transparent_huge_pages = true;
  c.populate = true;
  c.shrink_after_steps = 0;
  c.shrink_fraction = 0.5;
  return c;
}

/* Validate a config (NULL = defaults) into *c and the chunk bounds. */
static cllm_status_t config_check(const cllm_arena_config_t *cfg, cllm_arena_config_t *c,
                                  size_t *min_chunk, size_t *max_chunk) {
  *c = cfg != NULL ? *cfg : cllm_arena_config_default();
  if (c->struct_size < sizeof(cllm_arena_config_t)) return CLLM_EINVAL;
  if (!(c->shrink_fraction > 0.0 && c->shrink_fraction <= 1.0)) return CLLM_EINVAL;
  if (c->initial_bytes > CLLM_ARENA_MAX_REQUEST || c->min_chunk_bytes > CLLM_ARENA_MAX_REQUEST ||
      c->max_chunk_bytes > CLLM_ARENA_MAX_REQUEST)
    return CLLM_EINVAL;
  *min_chunk = round_granule(c->min_chunk_bytes != 0 ? c->min_chunk_bytes : GRANULE);
  *max_chunk = round_granule(c->max_chunk_bytes != 0 ? c->max_chunk_bytes : (size_t)256 << 20);
  return *max_chunk < *min_chunk ? CLLM_EINVAL : CLLM_OK;
}

size_t cllm_arena_footprint(const cllm_arena_config_t *cfg) {
  cllm_arena_config_t c;
  size_t lo, hi;
  if (config_check(cfg, &c, &lo, &hi) != CLLM_OK || c.heaps != NULL) return 0;
  return c.initial_bytes > 0 ? round_granule(c.initial_bytes) : 0;
}

cllm_status_t cllm_arena_create(const cllm_arena_config_t *cfg, cllm_arena_t **out) {
  if (out == NULL) return CLLM_EINVAL;
  *out = NULL;
  cllm_arena_config_t c;
  size_t min_chunk, max_chunk;
  cllm_status_t crc = config_check(cfg, &c, &min_chunk, &max_chunk);
  if (crc != CLLM_OK) return crc;

  arena_t *A = CLLM_FAULT(CLLM_FAULT_MALLOC) ? NULL : aligned_alloc(64, sizeof *A);
  if (A == NULL) return CLLM_ENOMEM;
  memset(A, 0, sizeof *A); /* sizeof is a multiple of 64 (_Alignas) */
  A->marks = CLLM_FAULT(CLLM_FAULT_MALLOC) ? NULL : malloc(MARKS_INITIAL * sizeof *A->marks);
  if (A->marks == NULL) {
    free(A);
    return CLLM_ENOMEM;
  }
  A->cap_marks = MARKS_INITIAL;
  A->cfg = c;
  A->cfg.struct_size = sizeof A->cfg;
  A->mon = c.monitor != NULL ? c.monitor : cllm_monitor_global();
  A->min_chunk = min_chunk;
  A->max_chunk = max_chunk;
  A->next_id = cllm__atomic_add_relaxed(&g_arena_serial, 1) << 32;
  atomic_init(&A->busy, (uintptr_t)0);
  atomic_init(&A->step_owner, (uintptr_t)0);
  if (!ensure_chunk_slot(A)) {
    free(A->marks);
    free(A);
    return CLLM_ENOMEM;
  }
  if (c.initial_bytes > 0) {
    chunk_t ch;
    cllm_status_t rc = chunk_obtain(A, round_granule(c.initial_bytes), &ch);
    if (rc != CLLM_OK) {
      free(A->chunks);
      free(A->marks);
      free(A);
      return rc;
    }
    insert_chunk(A, 0, &ch);
  }
  set_empty_position(A);
  *out = &A->pub;
  return CLLM_OK;
}

void cllm_arena_destroy(cllm_arena_t *a) {
  if (a == NULL) return;
  arena_t *A = impl(a);
  dbg_enter(A, false, false);
  for (size_t k = A->n_chunks; k-- > 0;) {
    chunk_t c = A->chunks[k];
    remove_chunk(A, k);
    chunk_give_back(A, &c);
  }
  cllm_assert_internal(A->charged == 0 && A->capacity == 0);
  free(A->chunks);
  free(A->marks);
  free(A);
}

/* ---- allocation slow path ------------------------------------------------------------ */

static inline void *bump(arena_t *A, uintptr_t p, size_t bytes) {
  A->pub.cur_ = p + bytes;
  unpoison_range(p, bytes);
  return (void *)p;
}

/* Leave the current chunk for chunk j (> cur_idx) for an allocation aligned to `align`. */
static void move_to(arena_t *A, size_t j, size_t align) {
  chunk_t *cur = &A->chunks[A->cur_idx];
  cur->used = A->pub.cur_ - cur->base;
  A->used_before += cur->used;
  for (size_t k = A->cur_idx + 1; k < j; k++) A->chunks[k].used = 0;
  set_current(A, j, A->chunks[j].base);
  A->transitions++;
  A->spill_slack += align - 1;
}

static void *alloc_slow_locked(arena_t *A, size_t bytes, size_t align) {
  if (A->n_chunks > 0) {
    uintptr_t p = (A->pub.cur_ + (align - 1)) & ~(uintptr_t)(align - 1);
    if (p <= A->pub.end_ && bytes <= A->pub.end_ - p) return bump(A, p, bytes);
    /* a later (free) chunk that holds it: every base is GRANULE >= align aligned */
    for (size_t j = A->cur_idx + 1; j < A->n_chunks; j++) {
      if (A->chunks[j].size >= bytes) {
        move_to(A, j, align);
        return bump(A, A->pub.cur_, bytes);
      }
    }
  }
  cllm_status_t rc = CLLM_ENOMEM;
  chunk_t c;
  bool slot = ensure_chunk_slot(A);
  if (slot) {
    /* The geometric part of a growth chunk (beyond what this request needs) is
     * speculative: it never makes the monitor's reclaimers evict (e.g. cached KV) and
     * a refusal of it falls back to a chunk of just the needed size. */
    size_t need = round_granule(bytes), size = growth_size(A, bytes);
    rc = chunk_obtain_ex(A, size, &c, size > need);
    if (rc != CLLM_OK && size > need) rc = chunk_obtain(A, need, &c);
  }
  if (slot && rc == CLLM_OK) {
    if (A->n_chunks == 0) {
      insert_chunk(A, 0, &c);
      set_current(A, 0, c.base);
    } else {
      insert_chunk(A, A->cur_idx + 1, &c);
      move_to(A, A->cur_idx + 1, align);
    }
    return bump(A, A->pub.cur_, bytes);
  }
  A->refused++;
  cllm__set_last_status(rc);
  return NULL;
}

void *cllm_arena_alloc_slow_(cllm_arena_t *a, size_t bytes, size_t align) {
  if (a == NULL) {
    cllm__set_last_status(CLLM_EINVAL);
    return NULL;
  }
  arena_t *A = impl(a);
  if (!cllm__is_pow2(align) || align > CLLM_ARENA_MAX_ALIGN || bytes > CLLM_ARENA_MAX_REQUEST) {
    A->einval++;
    cllm__set_last_status(CLLM_EINVAL);
    return NULL;
  }
  if (cursor_out(A)) {
    cllm__set_last_status(CLLM_ESTATE);
    return NULL;
  }
  if (bytes == 0) bytes = 1; /* a unique valid pointer */
  dbg_enter(A, true, false);
  void *p = alloc_slow_locked(A, bytes, align);
  dbg_leave(A);
  return p;
}

/* ---- cursors --------------------------------------------------------------------------- */

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
  dbg_enter(A, true, false);
  lend_position(A);
  A->pub.cursor_id_ = ++A->next_id;
  A->cursors++;
  dbg_leave(A);
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
  if (!cllm__is_pow2(align) || align > CLLM_ARENA_MAX_ALIGN || bytes > CLLM_ARENA_MAX_REQUEST) {
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
  dbg_enter(A, true, false);
  take_position(A, cur);
  void *p = alloc_slow_locked(A, bytes, align); /* on failure the position stays at cur */
  lend_position(A);
  dbg_leave(A);
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
  dbg_enter(A, false, false); /* ending allocates nothing: a hand-over point, like reset */
  take_position(A, cur);
  A->pub.cursor_id_ = 0;
  dbg_leave(A);
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
  dbg_enter(A, true, false);
  if (A->n_marks == A->cap_marks) {
    size_t cap = 2 * A->cap_marks;
    mark_slot_t *n =
        CLLM_FAULT(CLLM_FAULT_MALLOC) ? NULL : realloc(A->marks, cap * sizeof *n);
    if (n == NULL) {
      dbg_leave(A);
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
  dbg_leave(A);
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
  dbg_enter(A, false, true);
  const mark_slot_t s = A->marks[m.depth_];
  note_hw(A);
  if (A->n_chunks > 0) {
    release_after(A, s.chunk, s.off);
    A->used_before = s.used_before;
    set_current(A, s.chunk, A->chunks[s.chunk].base + s.off);
  }
  A->n_marks = m.depth_ + 1;
  dbg_leave(A);
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
    (void)rebuild_single(A, target, true);
    if (A->capacity < before) A->shrinks++;
  }
}

cllm_status_t cllm_arena_reset(cllm_arena_t *a) {
  if (a == NULL) return CLLM_EINVAL;
  arena_t *A = impl(a);
  if (cursor_out(A)) return CLLM_ESTATE;
  dbg_enter(A, false, false);
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
  if (CLLM_UNLIKELY(A->n_chunks > 1)) {
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
    (void)rebuild_single(A, target, false);
    A->coalesces++;
  } else {
    set_empty_position(A);
  }
  A->transitions = 0;
  A->spill_slack = 0;
  run_shrink_policy(A, hw);
  if (CLLM_DEBUG >= 1) cllm__atomic_store_release(&A->step_owner, (uintptr_t)0);
  dbg_leave(A);
  return CLLM_OK;
}

cllm_status_t cllm_arena_reserve(cllm_arena_t *a, size_t bytes) {
  if (a == NULL) return CLLM_EINVAL;
  arena_t *A = impl(a);
  if (bytes > CLLM_ARENA_MAX_REQUEST) {
    A->einval++;
    return CLLM_EINVAL;
  }
  if (cursor_out(A)) return CLLM_ESTATE;
  dbg_enter(A, false, true);
  cllm_status_t rc = CLLM_OK;
  size_t need = round_granule(bytes);
  if (bytes == 0) {
    /* only clears the floor */
  } else if (in_use(A) == 0) {
    if (A->n_chunks == 0 || A->chunks[0].size < bytes) {
      chunk_t c;
      if (!ensure_chunk_slot(A)) {
        rc = CLLM_ENOMEM;
      } else if ((rc = chunk_obtain(A, need, &c)) == CLLM_OK) {
        /* the new chunk becomes chunk 0; the old ones (all free) are given back */
        for (size_t k = A->n_chunks; k-- > 0;) {
          chunk_t o = A->chunks[k];
          remove_chunk(A, k);
          chunk_give_back(A, &o);
        }
        insert_chunk(A, 0, &c);
        set_empty_position(A);
      }
    }
  } else if (!(A->pub.end_ - A->pub.cur_ >= bytes)) {
    bool found = false;
    for (size_t j = A->cur_idx + 1; j < A->n_chunks && !found; j++) found = A->chunks[j].size >= bytes;
    if (!found) {
      chunk_t c;
      if (!ensure_chunk_slot(A)) rc = CLLM_ENOMEM;
      else if ((rc = chunk_obtain(A, need, &c)) == CLLM_OK) insert_chunk(A, A->cur_idx + 1, &c);
    }
  }
  if (rc == CLLM_OK) A->floor = bytes;
  else A->refused++;
  dbg_leave(A);
  return rc;
}

cllm_status_t cllm_arena_trim(cllm_arena_t *a) {
  if (a == NULL) return CLLM_EINVAL;
  arena_t *A = impl(a);
  if (in_use(A) != 0 || cursor_out(A)) return CLLM_ESTATE;
  dbg_enter(A, false, true);
  size_t target = round_granule(A->last_hw);
  size_t fl = round_granule(A->floor);
  if (fl > target) target = fl;
  if (target < A->capacity || A->n_chunks > 1) {
    size_t before = A->capacity;
    (void)rebuild_single(A, target, true);
    if (A->capacity < before) A->shrinks++;
  }
  A->low_steps = 0;
  A->window_hw = 0;
  dbg_leave(A);
  return CLLM_OK;
}

/* ---- stats and check ------------------------------------------------------------------ */

cllm_status_t cllm_arena_stats(const cllm_arena_t *a, cllm_arena_stats_t *st) {
  if (a == NULL || st == NULL || st->struct_size < sizeof(cllm_arena_stats_t)) return CLLM_EINVAL;
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
  for (size_t k = 0; k < A->n_chunks && s.resident_bytes != SIZE_MAX; k++) {
    size_t r;
    if (cllm__prim_resident_bytes((const void *)A->chunks[k].base, A->chunks[k].size, &r) != 0)
      s.resident_bytes = SIZE_MAX;
    else
      s.resident_bytes += r;
  }
  *st = s;
  return CLLM_OK;
}

#define CHECK(cond, ...)                                    \
  do {                                                      \
    if (!(cond)) {                                          \
      cllm__error("arena corrupt: " __VA_ARGS__);           \
      return CLLM_ECORRUPT;                                 \
    }                                                       \
  } while (0)

cllm_status_t cllm_arena_check(const cllm_arena_t *a) {
  if (a == NULL) return CLLM_EINVAL;
  const arena_t *A = cimpl(a);
  CHECK(A->n_chunks <= A->cap_chunks, "%p: %zu chunks > %zu slots", (void *)A, A->n_chunks,
        A->cap_chunks);
  CHECK(A->n_marks <= A->cap_marks, "%p: mark stack overflow", (void *)A);
  size_t cap = 0, before = 0;
  for (size_t k = 0; k < A->n_chunks; k++) {
    const chunk_t *c = &A->chunks[k];
    CHECK(c->base != 0 && c->base % GRANULE == 0 && c->size > 0 && c->size % GRANULE == 0,
          "%p: chunk %zu base %#lx size %zu misaligned", (void *)A, k, (unsigned long)c->base,
          c->size);
    CHECK(c->used <= c->size, "%p: chunk %zu used %zu > size %zu", (void *)A, k, c->used, c->size);
    if (k < A->cur_idx) before += c->used;
    if (k > A->cur_idx) CHECK(c->used == 0, "%p: free chunk %zu has used %zu", (void *)A, k, c->used);
    CHECK(!cllm__add_overflow(cap, c->size, &cap), "%p: capacity overflows", (void *)A);
  }
  CHECK(cap == A->capacity, "%p: capacity %zu != sum of chunks %zu", (void *)A, A->capacity, cap);
  CHECK(A->charged == (charges_step(A) ? A->capacity : 0), "%p: monitor charged %zu != capacity %zu", (void *)A, A->charged,
        A->capacity);
  uintptr_t pos = A->pub.cur_, end = A->pub.end_;
  if (cursor_out(A)) {
    CHECK(A->pub.cur_ == 0 && A->pub.end_ == 0, "%p: a cursor is out but the fast path is open",
          (void *)A);
    CHECK(A->pub.cursor_id_ <= A->next_id, "%p: cursor id %llu was never issued", (void *)A,
          (unsigned long long)A->pub.cursor_id_);
    pos = A->held_cur;
    end = A->held_end;
  }
  if (A->n_chunks == 0) {
    CHECK(pos == 0 && end == 0 && A->used_before == 0,
          "%p: empty arena with a bump pointer", (void *)A);
  } else {
    CHECK(A->cur_idx < A->n_chunks, "%p: current chunk %zu of %zu", (void *)A, A->cur_idx,
          A->n_chunks);
    const chunk_t *c = &A->chunks[A->cur_idx];
    CHECK(end == c->base + c->size && pos >= c->base && pos <= end,
          "%p: bump pointer %#lx outside chunk [%#lx, %#lx)", (void *)A,
          (unsigned long)pos, (unsigned long)c->base, (unsigned long)(c->base + c->size));
    CHECK(before == A->used_before, "%p: used_before %zu != %zu", (void *)A, A->used_before, before);
  }
  uint64_t prev = 0;
  size_t now = in_use(A);
  for (size_t d = 0; d < A->n_marks; d++) {
    const mark_slot_t *s = &A->marks[d];
    CHECK(s->id > prev, "%p: mark ids not increasing at depth %zu", (void *)A, d);
    prev = s->id;
    if (A->n_chunks > 0) {
      CHECK(s->chunk <= A->cur_idx && s->off <= A->chunks[s->chunk].size,
            "%p: mark %zu beyond the current position", (void *)A, d);
      CHECK(s->used_before + s->off <= now, "%p: mark %zu above bytes in use", (void *)A, d);
    } else {
      CHECK(s->chunk == 0 && s->off == 0 && s->used_before == 0, "%p: mark %zu in an empty arena",
            (void *)A, d);
    }
  }
  return CLLM_OK;
}

/* ---- float arrays --------------------------------------------------------------------- */

cllm_float_array_t cllm_heap_floats(cllm_heaps_t *heaps, size_t n) {
  cllm_float_array_t f = {NULL, 0, NULL, 0};
  size_t bytes;
  if (cllm__mul_overflow(n, sizeof(float), &bytes) || bytes > CLLM_ARENA_MAX_REQUEST) {
    cllm__set_last_status(CLLM_EINVAL);
    return f;
  }
  if (heaps != NULL) {
    f.data = cllm_heap_alloc_aligned(heaps, bytes, 64);
    f.kind_ = 1;
    f.heaps_ = heaps;
  } else {
    f.data = CLLM_FAULT(CLLM_FAULT_MI_ALLOC) ? NULL : mi_malloc_aligned(bytes ? bytes : 1, 64);
    f.kind_ = 2;
    if (f.data == NULL) cllm__set_last_status(CLLM_ENOMEM);
  }
  if (f.data == NULL) return (cllm_float_array_t){NULL, 0, NULL, 0};
  f.n = n;
  return f;
}

void cllm_float_array_free(cllm_float_array_t *f) {
  if (f == NULL) return;
  if (f->data != NULL) {
    if (f->kind_ == 1) cllm_heap_free(f->heaps_, f->data);
    else if (f->kind_ == 2) mi_free(f->data);
  }
  *f = (cllm_float_array_t){NULL, 0, NULL, 0};
}
