/* cllm-mem: per-thread NUMA-aware heaps (mimalloc heaps in per-node exclusive arenas).
 *
 *   cllm_heaps_config_t cfg = cllm_heaps_config_default();
 *   cfg.bytes_per_node = 1ull << 30;                 // one region per NUMA node
 *   cllm_heaps_t *heaps; if (cllm_heaps_create(&cfg, &heaps) < 0) ...;
 *
 *   // in a worker thread (optionally: cllm_heap_attach(heaps, node) first)
 *   float *x = cllm_heap_alloc_aligned(heaps, n * sizeof(float), 64);
 *   ...
 *   cllm_heap_free(heaps, x);                        // from any thread
 *   int *v = cllm_heap_alloc(heaps, 100 * sizeof(int));
 *   cllm_heap_free_sized(heaps, v, 100 * sizeof(int)); // the fastest free
 *   cllm_heaps_destroy(heaps);                        // after every thread is done
 *
 * Each thread allocates from its own mimalloc heap inside the region of its node:
 * cllm_heap_attach() wins, then the node the thread is bound to, then the node of
 * the CPU it runs on. Allocation is for the owning thread; free works from any
 * thread. Every block's usable size is charged to the monitor's HEAP category
 * through a per-thread batch (cllm_monitor_batch_t). A thread that exits leaves its
 * blocks valid; its credit goes back to the monitor.
 *
 * Pointer-returning calls return NULL on failure and record the reason for the
 * calling thread (cllm_last_status()) and in the stats.
 *
 * Residency. A region's pages become resident as mimalloc first touches them (with
 * transparent huge pages, 2 MiB at a time) and stay resident after their blocks are
 * freed: mimalloc 2.0.9 reuses them on the node and never returns them to the
 * kernel, so resident_bytes is a high-water mark (at most region_bytes per node).
 * With B the peak HEAP charge of the heaps so far, it stays within
 *   resident_bytes <= B + B / 2 + U x (C + T)
 * B / 2: the unused tails of full mimalloc pages (under a quarter of a page's
 * blocks up to 128 KiB, under 64 KiB beside one larger block); C: partly used
 * pages, one per size class and thread-node heap (with keep_pages, the stats'
 * kept_blocks); T: thread-node heaps (segment metadata); U: CLLM_HEAPS_RESIDENT_UNIT (2 MiB with
 * transparent_huge_pages, else 64 KiB). Batch credit is charged but not resident.
 * Frees that leave one live block in many pages, followed by allocations of other
 * sizes, can pass the bound (fragmentation); the hard bound is region_bytes per
 * node, so a runtime that needs one sizes bytes_per_node to it.
 */
#ifndef CLLM_HEAP_H
#define CLLM_HEAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cllm/export.h>
#include <cllm/monitor.h>
#include <cllm/numa.h>
#include <cllm/status.h>

CLLM_EXTERN_C_BEGIN

typedef struct cllm_heaps cllm_heaps_t;

// What the heaps could set up on this machine.
typedef enum cllm_heap_mode {
  CLLM_HEAP_MODE_NUMA = 0,   // one bound exclusive arena per node
  CLLM_HEAP_MODE_SINGLE = 1, // one node (or max_nodes 1): one arena, no binding needed
  CLLM_HEAP_MODE_PLAIN = 2,  // regions could not be set up or bound: plain per-thread
                             // mimalloc heaps from mimalloc's own memory
} cllm_heap_mode_t;

// "numa", "single", "plain" ("unknown" otherwise). Thread: any.
CLLM_API const char *cllm_heap_mode_name(cllm_heap_mode_t mode);

typedef struct cllm_heaps_config {
  size_t struct_size;              // set by cllm_heaps_config_default()
  size_t bytes_per_node;           // region per node; rounded up to 32 MiB; default 1 GiB
  cllm_monitor_t *monitor;         // NULL = cllm_monitor_global()
  const cllm_topology_t *topology; // NULL = cllm_topology_system()
  int max_nodes;                   // 0 = all nodes of the topology
  bool transparent_huge_pages;     // advise regions for THP (default true)
  bool allow_fallback;             // a full node may serve from another node (counted)
  bool allow_plain;                // degrade to PLAIN mode when regions fail (default true)
  size_t batch_bytes;              // monitor batch per thread; 0 = default
  bool keep_pages;                 // keep size classes' pages (default true): see below
} cllm_heaps_config_t;

// keep_pages: each thread holds one block of every size class up to 128 KiB it has
// allocated, per node heap, so mimalloc 2.0.9 never frees and rebuilds a class's
// only page when its last live block goes (what makes few live blocks of mixed
// sizes slow). Cost: at most one mimalloc page per class, thread and node, and one
// general-path call per class and thread. Held blocks are neither charged nor
// counted (stats: kept_blocks); they go when their thread exits or calls
// cllm_heap_thread_flush, or at destroy. Turn it off for loops that keep many
// blocks live.

// Defaults as documented above. Thread: any.
CLLM_API cllm_heaps_config_t cllm_heaps_config_default(void);

/* ---- lifetime ------------------------------------------------------------------
 * Regions are mapped MAP_NORESERVE (only touched pages use memory). Each thread
 * allocating on a node holds at least one 32 MiB mimalloc segment of its region, so
 * bytes_per_node should be >= 32 MiB x the threads on the node, plus what they keep
 * live. mimalloc can never unregister an arena (64 per process), so a registered
 * region stays mapped for the life of the process: destroy puts it in a
 * process-wide pool, and a create asking for the same size, node and THP setting
 * reuses it (pages the kernel committed stay committed and serve the next owner).
 * Creating and destroying heaps of one shape therefore uses at most `nodes` arenas.
 */

// Reserve, bind and register one region per node (cfg NULL = defaults). Errors:
// CLLM_EINVAL (out NULL, bad config), CLLM_ENOMEM, CLLM_ESYS (map or bind failed),
// CLLM_ENOTSUP (arena limit reached, or binding refused because the topology is not
// this machine); with allow_plain, a failure to set up regions gives PLAIN mode
// instead. *out is NULL on error; nothing is leaked. Thread: any.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_heaps_create(const cllm_heaps_config_t *cfg,
                                                         cllm_heaps_t **out);
// Destroy the heaps (NULL: no-op); every pointer from them becomes invalid and every
// thread's batch credit goes back to the monitor. No thread may use them any more.
// The calling thread's mimalloc heaps go at once; a live thread's stay until it
// exits (only the owner may delete a mimalloc heap), and with them the region space
// they hold. Thread: any.
CLLM_API void cllm_heaps_destroy(cllm_heaps_t *h);
// The mode in force (PLAIN for NULL). Thread: any.
CLLM_API cllm_heap_mode_t cllm_heaps_mode(const cllm_heaps_t *h);

/* ---- the calling thread's node ------------------------------------------------- */

// Allocate from `node`'s region from now on (its heap for the node is created now);
// blocks from other nodes stay valid. Errors: CLLM_EINVAL (NULL), CLLM_ENOTFOUND (no
// such node), CLLM_ENOMEM. In PLAIN mode the node is only recorded. Thread: owner.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_heap_attach(cllm_heaps_t *h, int node);
// The node the calling thread allocates from, chosen by the rules above on first use
// (-1 for NULL). Thread: owner.
CLLM_API int cllm_heap_node(cllm_heaps_t *h);

/* ---- blocks ----------------------------------------------------------------------
 * Blocks are 16-byte aligned; a request of 0 bytes gets a unique minimal block.
 * Allocation errors (NULL and cllm_last_status()): CLLM_EINVAL (h NULL, bad
 * alignment: counted in einval), CLLM_ENOMEM (region full, size too large, no memory
 * for the thread's heap), CLLM_ELIMIT (the monitor refused), CLLM_EOVERFLOW (calloc).
 * With allow_fallback in NUMA mode a full node is served by the next node with room
 * (counted in the thread's node's fallbacks).
 * Frees accept any thread's blocks of h. A pointer not from h is ignored, counted
 * (foreign_frees) and logged: in NUMA and SINGLE modes it must lie in one of h's
 * regions, 16-byte aligned; in PLAIN mode in a 32 MiB mimalloc segment h's heaps
 * used, so there a plain mi_malloc block of the same segment passes (freed safely,
 * the HEAP figure is then off). A pointer into the middle of a block is undefined.
 */

// `bytes` for the calling thread. Thread: owner.
CLLM_API CLLM_MALLOC_ATTR void *cllm_heap_alloc(cllm_heaps_t *h, size_t bytes);
// Largest alignment cllm_heap_alloc_aligned accepts (half a mimalloc segment).
#define CLLM_HEAP_MAX_ALIGN ((size_t)16 << 20)
// As alloc, aligned to a power of two up to CLLM_HEAP_MAX_ALIGN; the usable size
// counts from the returned pointer. Thread: owner.
CLLM_API CLLM_MALLOC_ATTR void *cllm_heap_alloc_aligned(cllm_heaps_t *h, size_t bytes,
                                                        size_t align);
// n x size zeroed bytes. Thread: owner.
CLLM_API CLLM_MALLOC_ATTR void *cllm_heap_calloc(cllm_heaps_t *h, size_t n, size_t size);
// Resize p (NULL p: alloc; bytes 0: free, NULL returned); on failure NULL and p is
// untouched. The result is the calling thread's and 16-byte aligned (an alignment of
// alloc_aligned is not kept when the block moves). A foreign p: NULL, CLLM_EINVAL,
// counted in foreign_frees. Thread: owner.
CLLM_API void *cllm_heap_realloc(cllm_heaps_t *h, void *p, size_t bytes);
// Free p (NULL: no-op); its bytes go back through the calling thread's batch.
// Thread: any.
CLLM_API void cllm_heap_free(cllm_heaps_t *h, void *p);
// Free p, a block of cllm_heap_alloc or cllm_heap_calloc, with the size asked for
// (n x size for calloc; anything up to cllm_heap_usable_size(p) is accepted): no
// size lookup, the fastest free. Blocks of realloc and alloc_aligned go to
// cllm_heap_free. A wrong size is caller misuse: debug builds assert; otherwise the
// block is freed and the HEAP figure is off by the difference. Thread: any.
CLLM_API void cllm_heap_free_sized(cllm_heaps_t *h, void *p, size_t bytes);
// Usable bytes of p (0 for NULL or a foreign pointer). Thread: any.
CLLM_API size_t cllm_heap_usable_size(cllm_heaps_t *h, const void *p);
// Return the calling thread's batch credit and its kept blocks now (for a thread
// that stops allocating for long; it takes them again as it allocates).
// Thread: owner.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_heap_thread_flush(cllm_heaps_t *h);

/* ---- statistics -------------------------------------------------------------- */

#define CLLM_HEAP_MAX_NODES 64

typedef struct cllm_heap_node_stats {
  int node;
  size_t region_bytes;      // 0 in PLAIN mode
  size_t huge_page_bytes;   // region bytes the kernel backs with THP (smaps)
  size_t bytes_in_use;      // handed out and not freed (usable sizes)
  uint64_t allocations;
  uint64_t frees;
  uint64_t failures;        // NULL returned (full region, limit, bad input)
  uint64_t fallbacks;       // this node's threads served by another node (allow_fallback)
  bool bound;               // the region is bound to the node (mbind), as read at create
  int os_node;              // the OS node it is bound to, -1 if unbound
  const void *region_start; // first byte of the region (NULL in PLAIN mode)
} cllm_heap_node_stats_t;

typedef struct cllm_heaps_stats {
  size_t struct_size;       // the caller sets sizeof(cllm_heaps_stats_t)
  cllm_heap_mode_t mode;
  int nodes;
  int threads;              // threads that have a heap now
  uint64_t foreign_frees;   // frees of pointers not from these heaps
  uint64_t einval;          // bad-argument calls (non-power-of-two alignment, ...)
  cllm_heap_node_stats_t node[CLLM_HEAP_MAX_NODES];
  size_t region_align_bytes; // alignment of every region (32 MiB)
  uint64_t kept_blocks;      // blocks held for keep_pages (live threads)
  size_t bytes_in_use;       // sum of the nodes' bytes_in_use
  size_t resident_bytes;     // region pages resident, read from the kernel (0 in PLAIN)
} cllm_heaps_stats_t;

// The page unit U of the residency bound above, per transparent_huge_pages.
#define CLLM_HEAPS_RESIDENT_UNIT(thp) ((size_t)((thp) ? 2u << 20 : 64u << 10))

// Per-node figures add up blocks by the node whose region holds them (allocations
// and frees from every thread, live and exited). In PLAIN mode memory has no node:
// every figure is reported under node[0]. Figures are exact when no thread is
// allocating; otherwise each is a recent value.

// Fill *st (takes the heaps lock and reads the kernel's figures: not for hot paths).
// Errors: CLLM_EINVAL (NULL, struct_size too small). Thread: any.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_heaps_stats(const cllm_heaps_t *h,
                                                        cllm_heaps_stats_t *st);
// HEAP bytes cllm_heaps_create charges for `cfg` (NULL: defaults): 0, blocks are
// charged as they are handed out. Thread: any.
CLLM_API size_t cllm_heaps_footprint(const cllm_heaps_config_t *cfg);
// HEAP bytes each thread that allocates may hold charged beyond its live blocks:
// its batch credit, at most 2 x batch_bytes. 0 for a config create refuses.
// Thread: any.
CLLM_API size_t cllm_heaps_thread_footprint(const cllm_heaps_config_t *cfg);

// Verify invariants (regions registered, per-node counters consistent, monitor
// HEAP figure covers bytes in use). CLLM_ECORRUPT on violation. Thread: any.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_heaps_check(const cllm_heaps_t *h);

CLLM_EXTERN_C_END
#endif /* CLLM_HEAP_H */
