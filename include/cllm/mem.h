/* cllm-mem: the umbrella header. Includes every public C header:
 *
 *   #include <cllm/mem.h>
 *
 * status.h (statuses, last status, log hook), version.h, monitor.h (the global
 * atomic monitor), numa.h (topology and binding), heap.h (per-thread NUMA heaps),
 * arena.h (per-step bump arenas), weights.h (the pinned weights heap), kv_cache.h
 * (the paged KV cache), stats.h (JSON and Prometheus writers). C++ code may include
 * <cllm/mem.hpp> instead (the seed's classes and RAII owners over this API). */
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
