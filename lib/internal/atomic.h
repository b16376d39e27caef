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

/* A spin-wait hint (PAUSE on x86, YIELD on arm64). */
static inline void cllm__cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#else
  atomic_signal_fence(memory_order_seq_cst);
#endif
}

#endif /* CLLM_INTERNAL_ATOMIC_H */
