/* Per-step bump arenas (include/cllm/arena.h): objects (config, create, destroy), the
 * allocation slow path and the debug checks for two threads. Concept, invariants and
 * locks: lib/arena_internal.h. */
#include <stdlib.h>
#include <string.h>

#include "arena_internal.h"
#include "internal/atomic.h"
#include "internal/fault.h"
#include "internal/versioned.h"

#define MARKS_INITIAL 16
#define DEFAULT_MAX_CHUNK ((size_t)256 << 20)

/* Mark and cursor ids of an arena start at (serial << 32): never shared by two arenas. */
static _Atomic uint64_t g_arena_serial = 1;

/* ---- debug: two threads at once ---------------------------------------------------- */

static _Thread_local char t_self_tag;
#define SELF_TAG ((uintptr_t)&t_self_tag)

void cllm__arena_debug_enter(arena_t *A, bool claim, bool check_owner) {
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

void cllm__arena_debug_leave(arena_t *A) {
  cllm__atomic_store_release(&A->busy, (uintptr_t)0);
}

/* ---- the fast path's helper under ASan --------------------------------------------- */

void cllm_arena_asan_unpoison_(void *p, size_t bytes) {
#if CLLM_HAVE_ASAN
  ASAN_UNPOISON_MEMORY_REGION(p, bytes);
#else
  (void)p;
  (void)bytes;
#endif
}

/* ---- life cycle ------------------------------------------------------------------------ */

cllm_arena_config_t cllm_arena_config_default(void) {
  cllm_arena_config_t c;
  memset(&c, 0, sizeof c);
  c.struct_size = sizeof c;
  c.initial_bytes = 0;
  c.min_chunk_bytes = GRANULE;
  c.max_chunk_bytes = DEFAULT_MAX_CHUNK;
  c.heaps = NULL;
  c.monitor = NULL;
  c.transparent_huge_pages = true;
  c.populate = true;
  c.shrink_after_steps = 0;
  c.shrink_fraction = 0.5;
  return c;
}

/* Validate a config (NULL = defaults; an older, smaller struct gets the defaults for
 * the fields it lacks: lib/internal/versioned.h) into *c and the chunk bounds. */
static cllm_status_t config_check(const cllm_arena_config_t *cfg, cllm_arena_config_t *c,
                                  size_t *min_chunk, size_t *max_chunk) {
  *c = cllm_arena_config_default();
  if (cllm__config_in(c, sizeof *c, cfg) != CLLM_OK) return CLLM_EINVAL;
  if (!(c->shrink_fraction > 0.0 && c->shrink_fraction <= 1.0)) return CLLM_EINVAL;
  if (c->initial_bytes > CLLM_ARENA_MAX_REQUEST || c->min_chunk_bytes > CLLM_ARENA_MAX_REQUEST ||
      c->max_chunk_bytes > CLLM_ARENA_MAX_REQUEST)
    return CLLM_EINVAL;
  *min_chunk = round_granule(c->min_chunk_bytes != 0 ? c->min_chunk_bytes : GRANULE);
  *max_chunk = round_granule(c->max_chunk_bytes != 0 ? c->max_chunk_bytes : DEFAULT_MAX_CHUNK);
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

  arena_t *A = CLLM_FAULT(CLLM_FAULT_MALLOC) ? NULL : calloc(1, sizeof *A);
  if (A == NULL) return CLLM_ENOMEM;
  A->marks = CLLM_FAULT(CLLM_FAULT_MALLOC) ? NULL : malloc(MARKS_INITIAL * sizeof *A->marks);
  if (A->marks == NULL) {
    free(A);
    return CLLM_ENOMEM;
  }
  A->cap_marks = MARKS_INITIAL;
  A->cfg = c;
  A->mon = c.monitor != NULL ? c.monitor : cllm_monitor_global();
  A->min_chunk = min_chunk;
  A->max_chunk = max_chunk;
  A->next_id = cllm__atomic_add_relaxed(&g_arena_serial, 1) << 32;
  atomic_init(&A->busy, (uintptr_t)0);
  atomic_init(&A->step_owner, (uintptr_t)0);
  if (!cllm__arena_chunk_slot(A)) {
    free(A->marks);
    free(A);
    return CLLM_ENOMEM;
  }
  if (c.initial_bytes > 0) {
    chunk_t ch;
    cllm_status_t rc = cllm__arena_chunk_obtain(A, round_granule(c.initial_bytes), &ch, false);
    if (rc != CLLM_OK) {
      free(A->chunks);
      free(A->marks);
      free(A);
      return rc;
    }
    cllm__arena_chunk_insert(A, 0, &ch);
  }
  set_empty_position(A);
  *out = &A->pub;
  return CLLM_OK;
}

void cllm_arena_destroy(cllm_arena_t *a) {
  if (a == NULL) return;
  arena_t *A = impl(a);
  cllm__arena_dbg_enter(A, false, false);
  cllm__arena_chunk_give_back_all(A);
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

void *cllm__arena_alloc_locked(arena_t *A, size_t bytes, size_t align) {
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
  bool slot = cllm__arena_chunk_slot(A);
  if (slot) {
    /* The geometric part of a growth chunk (beyond what this request needs) is
     * speculative: it never makes the monitor's reclaimers evict (e.g. cached KV) and
     * a refusal of it falls back to a chunk of just the needed size. */
    size_t need = round_granule(bytes), size = cllm__arena_growth_size(A, bytes);
    rc = cllm__arena_chunk_obtain(A, size, &c, size > need);
    if (rc != CLLM_OK && size > need) rc = cllm__arena_chunk_obtain(A, need, &c, false);
  }
  if (slot && rc == CLLM_OK) {
    if (A->n_chunks == 0) {
      cllm__arena_chunk_insert(A, 0, &c);
      set_current(A, 0, c.base);
    } else {
      cllm__arena_chunk_insert(A, A->cur_idx + 1, &c);
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
  if (!request_valid(bytes, align)) {
    A->einval++;
    cllm__set_last_status(CLLM_EINVAL);
    return NULL;
  }
  if (cursor_out(A)) {
    cllm__set_last_status(CLLM_ESTATE);
    return NULL;
  }
  if (bytes == 0) bytes = 1; /* a unique valid pointer */
  cllm__arena_dbg_enter(A, true, false);
  void *p = cllm__arena_alloc_locked(A, bytes, align);
  cllm__arena_dbg_leave(A);
  return p;
}
