/* Float arrays (cllm_float_array_t): heap-backed ones come from the heaps or from
 * mimalloc and are freed by cllm_float_array_free; arena-backed ones (the inline
 * cllm_arena_floats) live until the arena's next reset or rewind. The array's kind_ says
 * which (cllm_float_array_kind_). */
#include <mimalloc.h>

#include <cllm/arena.h>

#include "internal/fault.h"
#include "internal/util.h"

cllm_float_array_t cllm_heap_floats(cllm_heaps_t *heaps, size_t n) {
  cllm_float_array_t f = {NULL, 0, NULL, CLLM_FLOAT_ARRAY_ARENA_};
  size_t bytes;
  if (cllm__mul_overflow(n, sizeof(float), &bytes) || bytes > CLLM_ARENA_MAX_REQUEST) {
    cllm__set_last_status(CLLM_EINVAL);
    return f;
  }
  if (heaps != NULL) {
    f.data = cllm_heap_alloc_aligned(heaps, bytes, 64);
    f.kind_ = CLLM_FLOAT_ARRAY_HEAPS_;
    f.heaps_ = heaps;
  } else {
    f.data = CLLM_FAULT(CLLM_FAULT_MI_ALLOC) ? NULL : mi_malloc_aligned(bytes ? bytes : 1, 64);
    f.kind_ = CLLM_FLOAT_ARRAY_MIMALLOC_;
    if (f.data == NULL) cllm__set_last_status(CLLM_ENOMEM);
  }
  if (f.data == NULL) return (cllm_float_array_t){NULL, 0, NULL, CLLM_FLOAT_ARRAY_ARENA_};
  f.n = n;
  return f;
}

void cllm_float_array_free(cllm_float_array_t *f) {
  if (f == NULL) return;
  if (f->data != NULL) {
    if (f->kind_ == CLLM_FLOAT_ARRAY_HEAPS_) cllm_heap_free(f->heaps_, f->data);
    else if (f->kind_ == CLLM_FLOAT_ARRAY_MIMALLOC_) mi_free(f->data);
  }
  *f = (cllm_float_array_t){NULL, 0, NULL, CLLM_FLOAT_ARRAY_ARENA_};
}
