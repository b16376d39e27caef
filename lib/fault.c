/* Test-only fault injection: see lib/internal/fault.h.  Compiled to nothing in
 * release builds.  Counters are atomics so threaded tests stay race-free. */
#include "internal/fault.h"

#ifdef CLLM_FAULT_INJECTION
#include <stdatomic.h>

static _Atomic unsigned long g_calls[CLLM_FAULT_COUNT];
static _Atomic unsigned long g_armed[CLLM_FAULT_COUNT];  /* remaining calls before failure */
static _Atomic unsigned long g_any_armed;
static _Atomic unsigned long g_any_calls;
static _Atomic unsigned long g_injected;

static const char *const g_names[CLLM_FAULT_COUNT] = {
    "mmap", "munmap", "madvise", "bind", "mlock", "mprotect", "pread",
    "open", "mi_arena", "mi_heap", "mi_alloc", "malloc", "reserve"};

const char *cllm_fault_op_name(cllm_fault_op_t op) {
  return (unsigned)op < CLLM_FAULT_COUNT ? g_names[op] : "unknown";
}

void cllm_fault_arm(cllm_fault_op_t op, unsigned long nth) {
  if ((unsigned)op < CLLM_FAULT_COUNT) atomic_store(&g_armed[op], nth);
}

void cllm_fault_arm_any(unsigned long nth) { atomic_store(&g_any_armed, nth); }

unsigned long cllm_fault_calls(cllm_fault_op_t op) {
  if (op == CLLM_FAULT_COUNT) return atomic_load(&g_any_calls);
  return (unsigned)op < CLLM_FAULT_COUNT ? atomic_load(&g_calls[op]) : 0;
}

unsigned long cllm_fault_injected(void) { return atomic_load(&g_injected); }

void cllm_fault_reset(void) {
  for (int i = 0; i < CLLM_FAULT_COUNT; i++) {
    atomic_store(&g_calls[i], 0);
    atomic_store(&g_armed[i], 0);
  }
  atomic_store(&g_any_armed, 0);
  atomic_store(&g_any_calls, 0);
  atomic_store(&g_injected, 0);
}

/* Count down an armed counter; true when this call is the armed one. */
static bool countdown(_Atomic unsigned long *armed) {
  unsigned long cur = atomic_load(armed);
  while (cur != 0) {
    if (atomic_compare_exchange_weak(armed, &cur, cur - 1)) return cur == 1;
  }
  return false;
}

bool cllm__fault_hit(cllm_fault_op_t op) {
  if ((unsigned)op >= CLLM_FAULT_COUNT) return false;
  atomic_fetch_add(&g_calls[op], 1);
  atomic_fetch_add(&g_any_calls, 1);
  bool hit = countdown(&g_armed[op]);
  hit = countdown(&g_any_armed) || hit;
  if (hit) atomic_fetch_add(&g_injected, 1);
  return hit;
}
#else
typedef int cllm__fault_unused_t; /* ISO C forbids an empty translation unit */
#endif
