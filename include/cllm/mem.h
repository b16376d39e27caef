/* cllm-mem: the umbrella header. Includes every public C header:
 *
 *   #include <cllm/mem.h>
 *
 * status.h (statuses, last status, log hook), version.h, monitor.h (the global
 * atomic monitor), numa.h (topology and binding), heap.h (per-thread NUMA heaps),
 * arena.h (per-step bump arenas), weights.h (the pinned weights heap), kv_cache.h
 * (the paged KV cache), stats.h (JSON and Prometheus writers). C++ code may include
 * <cllm/mem.hpp> instead (the seed's classes and RAII owners over this API).
 *
 * Versioned structs (every config and stats struct starts with `size_t struct_size`):
 * - A config built against an older header (smaller struct_size) is accepted: the
 *   fields it has are taken, later fields keep their defaults. A larger one is
 *   accepted only if the bytes this library does not know are zero. A NULL config
 *   means the defaults (refused with CLLM_EINVAL where a field has no default, e.g.
 *   the weights' capacity). "Bad struct_size" in the errors: below sizeof(size_t),
 *   or a larger struct with non-zero unknown bytes.
 * - Stats calls write min(struct_size, the library's size) bytes and store that
 *   size in struct_size; a struct_size below sizeof(size_t) is CLLM_EINVAL. */
#ifndef CLLM_MEM_H
#define CLLM_MEM_H

#include <cllm/status.h>
#include <cllm/version.h>
#include <cllm/monitor.h>
#include <cllm/numa.h>
#include <cllm/heap.h>
#include <cllm/arena.h>
#include <cllm/weights.h>
#include <cllm/kv_cache.h>
#include <cllm/stats.h>

#endif /* CLLM_MEM_H */
