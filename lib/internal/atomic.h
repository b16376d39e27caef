/* Named-order wrappers over <stdatomic.h> (mimalloc's atomic.h style): the order is
 * in the name, so a reader sees what each access promises. */
#ifndef CLLM_INTERNAL_ATOMIC_H
#define CLLM_INTERNAL_ATOMIC_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#define cllm__atomic_load_relaxed(p) atomic_load_explicit((p), memory_order_relaxed)
#define cllm__atomic_load_acquire(p) atomic_load_explicit((p), memory_order_acquire)
#define cllm__atomic_store_relaxed(p, v) atomic_store_explicit((p), (v), memory_order_relaxed)
#define cllm__atomic_store_release(p, v) atomic_store_explicit((p), (v), memory_order_release)
#define cllm__atomic_add_relaxed(p, v) atomic_fetch_add_explicit((p), (v), memory_order_relaxed)
#define cllm__atomic_sub_relaxed(p, v) atomic_fetch_sub_explicit((p), (v), memory_order_relaxed)
#define cllm__atomic_add_acq_rel(p, v) atomic_fetch_add_explicit((p), (v), memory_order_acq_rel)
#define cllm__atomic_sub_acq_rel(p, v) atomic_fetch_sub_explicit((p), (v), memory_order_acq_rel)
#define cllm__atomic_cas_weak_acq_rel(p, expected, desired)                          \
  atomic_compare_exchange_weak_explicit((p), (expected), (desired), memory_order_acq_rel, \
                                        memory_order_relaxed)

/* Raise *p to at least v (exact peak: v is a value this thread installed). */
static inline void cllm__atomic_max_relaxed(_Atomic size_t *p, size_t v) {
  size_t cur = cllm__atomic_load_relaxed(p);
  while (cur < v &&
         !atomic_compare_exchange_weak_explicit(p, &cur, v, memory_order_relaxed,
                                                memory_order_relaxed)) {
  }
}

#endif /* CLLM_INTERNAL_ATOMIC_H */
