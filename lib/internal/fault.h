/* Test-only fault injection (SQLite faultsim / libuv OOM sweep style).
 *
 * In test builds (//:cllm_mem_testing, compiled with CLLM_FAULT_INJECTION) every
 * fallible operation of the library first asks CLLM_FAULT(op); a test arms a failure
 * for the Nth such call.  In release builds CLLM_FAULT(op) is the constant 0 and
 * nothing below exists: it costs nothing.
 *
 *   cllm_fault_arm(CLLM_FAULT_MMAP, 2);   // the 2nd mmap from now fails with ENOMEM
 *   cllm_fault_arm_any(5);                // the 5th fallible op of any kind fails
 *   ... call the API, check the status and that nothing changed ...
 *   cllm_fault_reset();
 */
#ifndef CLLM_INTERNAL_FAULT_H
#define CLLM_INTERNAL_FAULT_H

#include <stdbool.h>

typedef enum cllm_fault_op {
  CLLM_FAULT_MMAP = 0,
  CLLM_FAULT_MUNMAP,
  CLLM_FAULT_MADVISE,
  CLLM_FAULT_BIND,        // mbind / hwloc area or thread binding
  CLLM_FAULT_MLOCK,
  CLLM_FAULT_MPROTECT,
  CLLM_FAULT_PREAD,
  CLLM_FAULT_OPEN,
  CLLM_FAULT_MI_ARENA,    // mi_manage_os_memory_ex
  CLLM_FAULT_MI_HEAP,     // mi_heap_new_in_arena
  CLLM_FAULT_MI_ALLOC,    // allocation from a mimalloc heap
  CLLM_FAULT_MALLOC,      // the library's own metadata allocations
  CLLM_FAULT_RESERVE,     // the monitor's reservation
  CLLM_FAULT_COUNT
} cllm_fault_op_t;

#ifdef CLLM_FAULT_INJECTION
#ifdef __cplusplus
extern "C" {
#endif
/* Name of an op, e.g. "mmap". */
__attribute__((visibility("default"))) const char *cllm_fault_op_name(cllm_fault_op_t op);
/* The nth call (1-based, counted from now) of `op` fails; 0 disarms `op`. */
__attribute__((visibility("default"))) void cllm_fault_arm(cllm_fault_op_t op, unsigned long nth);
/* The nth fallible call of any op (counted from now) fails; 0 disarms. */
__attribute__((visibility("default"))) void cllm_fault_arm_any(unsigned long nth);
/* Calls of `op` since the last reset (CLLM_FAULT_COUNT: all ops). */
__attribute__((visibility("default"))) unsigned long cllm_fault_calls(cllm_fault_op_t op);
/* Failures injected since the last reset. */
__attribute__((visibility("default"))) unsigned long cllm_fault_injected(void);
/* Disarm everything and zero the counters. */
__attribute__((visibility("default"))) void cllm_fault_reset(void);
/* Library side: true if this call of `op` must fail. */
__attribute__((visibility("default"))) bool cllm__fault_hit(cllm_fault_op_t op);
#ifdef __cplusplus
}
#endif
#define CLLM_FAULT(op) cllm__fault_hit(op)
#else
#define CLLM_FAULT(op) 0
#endif

#endif /* CLLM_INTERNAL_FAULT_H */
