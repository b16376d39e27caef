/* cllm-mem for C++: RAII handles over every C object, and its errors.
 * C++17, header-only; it calls the C API only, so linking the C library is enough
 * (-lcllm-mem, //:cllm_mem). Code written against the seed design includes
 * <cllm/seed.hpp> instead: the seed's classes, over this header.
 *
 *   #include <cllm/mem.hpp>
 *
 *   cllm_monitor_config_t mc = cllm_monitor_config_default();
 *   mc.limit_bytes = 8ull << 30;
 *   cllm::Monitor mon(mc);                              // a private monitor
 *   mon.reserve(CLLM_CAT_KV, 1 << 20);                  // throws cllm::LimitError
 *   cllm::Arena arena;                                  // RAII over cllm_arena_t
 *   float* x = arena.allocArray<float>(4096);           // nullptr on failure
 *   arena.reset();
 *   std::string json = cllm::statsJson();               // the stats writers' output
 *
 * Files: this header includes mem_core.hpp (errors, callbacks, Monitor, Reclaimer) and
 * mem_handles.hpp (Topology, Arena, WeightsHeap, Heaps, KVCache, KVTier,
 * statsJson/statsPrometheus).
 * Include only <cllm/mem.hpp>.
 *
 * Classes: Monitor (a private cllm_monitor_t), Reclaimer (a registered reclaimer),
 * Topology, Arena, WeightsHeap, Heaps, KVCache, KVTier. Each owns its C object
 * (move-only; a moved-from object holds none and its calls fail with CLLM_EINVAL), and
 * get() gives the C handle for C calls.
 *
 * Errors. The rule mirrors the C API: a method over a C call that returns a
 * cllm_status_t throws cllm::Error (a std::runtime_error carrying the status) on
 * failure, cllm::LimitError (derived from it) for CLLM_ELIMIT; a method over a C call
 * that returns a pointer (Arena::alloc, Heaps::alloc) is noexcept and returns nullptr,
 * with the reason in cllm_last_status(). Queries (used, peak, stats figures) are
 * noexcept.
 *
 * Callbacks and exceptions. Every std::function callback set here or in seed.hpp
 * (limit, eviction, reclaim, load progress, stats output) is called through a noexcept
 * C trampoline: no C++ exception ever unwinds through a C frame. The function is kept
 * in a stable (heap or static) object that the C object points to; setting it swaps a
 * shared_ptr under a mutex, and a call copies the shared_ptr out first, so the callback
 * never runs under any lock and may be replaced (or call back into the object) at any
 * time. If the callback throws, the trampoline catches the exception. When the C call
 * that ran the callback was made by a throwing (not noexcept) method on the same
 * thread, that method rethrows the first such exception once the C call has returned
 * and the C object is consistent (e.g. MemoryMonitor::allocate rethrows the limit
 * callback's exception, as the seed's allocate would propagate it). Methods that record
 * a reservation or hand out memory (Monitor::reserve, MemoryMonitor::allocate, the
 * ModelExecutorMemoryManager allocations, constructors) undo it first, so a throw
 * changes nothing; the others keep the C call's effect (KVCacheMemoryManager::insert
 * and KVCache::put rethrow the eviction callback's exception after the entry was
 * stored). Otherwise (a noexcept method such as Arena::alloc, a plain C call, or a
 * second exception in the same call) the exception is discarded and counted:
 * cllm::droppedCallbackExceptions().
 *
 * Thread: as the C objects underneath (Monitor, Topology queries, KVCache, KVTier,
 * Heaps::free: any; Arena, WeightsHeap mutation: external-sync; Heaps::alloc: owner).
 */
#ifndef CLLM_MEM_HPP
#define CLLM_MEM_HPP

#include <cllm/mem_core.hpp>
#include <cllm/mem_handles.hpp>

#endif /* CLLM_MEM_HPP */
