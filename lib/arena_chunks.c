/* Arena chunks: obtain (charge, map or take from the heaps, advise, pre-fault), give
 * back, the chunk list, and rebuilding the list into one chunk. */
#include <stdlib.h>
#include <string.h>

#include "arena_internal.h"
#include "internal/fault.h"
#include "internal/prim.h"

static void monitor_release(arena_t *A, size_t bytes) {
  if (bytes == 0 || !charges_step(A)) return;
  A->monitor_calls++;
  cllm_status_t rc = cllm_monitor_release(A->mon, CLLM_CAT_STEP, bytes);
  cllm_assert_internal(rc == CLLM_OK);
  if (rc == CLLM_OK) A->charged -= bytes;
}

/* Charge first (its reclaimers may run, unless `speculative`: then a limit simply
 * refuses), then map or take from the heap, advise and pre-fault. */
cllm_status_t cllm__arena_chunk_obtain(arena_t *A, size_t size, chunk_t *out, bool speculative) {
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

void cllm__arena_chunk_give_back(arena_t *A, const chunk_t *c) {
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

void cllm__arena_chunk_give_back_all(arena_t *A) {
  for (size_t k = A->n_chunks; k-- > 0;) {
    chunk_t c = A->chunks[k];
    cllm__arena_chunk_remove(A, k);
    cllm__arena_chunk_give_back(A, &c);
  }
}

bool cllm__arena_chunk_slot(arena_t *A) {
  if (A->n_chunks < A->cap_chunks) return true;
  size_t cap = A->cap_chunks ? 2 * A->cap_chunks : 8;
  chunk_t *n = CLLM_FAULT(CLLM_FAULT_MALLOC) ? NULL : realloc(A->chunks, cap * sizeof *n);
  if (n == NULL) return false;
  A->chunks = n;
  A->cap_chunks = cap;
  return true;
}

void cllm__arena_chunk_insert(arena_t *A, size_t pos, const chunk_t *c) {
  cllm_assert_internal(A->n_chunks < A->cap_chunks && pos <= A->n_chunks);
  memmove(&A->chunks[pos + 1], &A->chunks[pos], (A->n_chunks - pos) * sizeof *c);
  A->chunks[pos] = *c;
  A->n_chunks++;
  A->capacity += c->size;
}

void cllm__arena_chunk_remove(arena_t *A, size_t pos) {
  A->capacity -= A->chunks[pos].size;
  memmove(&A->chunks[pos], &A->chunks[pos + 1], (A->n_chunks - pos - 1) * sizeof(chunk_t));
  A->n_chunks--;
}

/* Size of a new growth chunk able to hold `bytes`: the arena doubles (a new chunk
 * as large as the capacity so far), between min_chunk and max_chunk; a request
 * above max_chunk gets a dedicated chunk of its own (rounded) size. */
size_t cllm__arena_growth_size(const arena_t *A, size_t bytes) {
  size_t need = round_granule(bytes);
  if (need > A->max_chunk) return need;
  size_t size = A->capacity > A->min_chunk ? A->capacity : A->min_chunk;
  if (size > A->max_chunk) size = A->max_chunk;
  return size > need ? size : need;
}

/* Keeps the smallest chunk that is large enough, else gives everything back and
 * obtains one chunk of `target`. A mapped chunk shrinks in place (unmap of its tail);
 * a heap-backed one is replaced when a smaller one can be obtained, else kept. */
cllm_status_t cllm__arena_rebuild_single(arena_t *A, size_t target, bool shrink) {
  cllm_assert_internal(in_use(A) == 0);
  size_t best = SIZE_MAX;
  if (target > 0) {
    for (size_t k = 0; k < A->n_chunks; k++)
      if (A->chunks[k].size >= target &&
          (best == SIZE_MAX || A->chunks[k].size < A->chunks[best].size))
        best = k;
  }
  for (size_t k = A->n_chunks; k-- > 0;) {
    if (k == best) continue;
    chunk_t c = A->chunks[k];
    cllm__arena_chunk_remove(A, k);
    if (best != SIZE_MAX && k < best) best--;
    cllm__arena_chunk_give_back(A, &c);
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
        if (cllm__arena_chunk_obtain(A, target, &n, false) == CLLM_OK) {
          chunk_t old = *c;
          A->capacity -= old.size;
          *c = n;
          A->capacity += n.size;
          cllm__arena_chunk_give_back(A, &old);
        }
      }
    }
  } else if (target > 0) {
    chunk_t n;
    rc = cllm__arena_chunk_obtain(A, target, &n, false);
    if (rc == CLLM_OK) {
      cllm_assert_internal(A->n_chunks == 0 && A->cap_chunks > 0); /* slots exist since create */
      cllm__arena_chunk_insert(A, 0, &n);
    }
    if (rc != CLLM_OK) A->refused++;
  }
  set_empty_position(A);
  return rc;
}
