/* Private to the heaps (lib/heap.c, lib/heap_region.c): the heaps object and the
 * region pool's interface. Not installed, not for other components. */
#ifndef CLLM_LIB_HEAP_INTERNAL_H
#define CLLM_LIB_HEAP_INTERNAL_H

#include <mimalloc.h>
#include <stdbool.h>
#include <stdint.h>

#include <cllm/heap.h>

#define CLLM__HEAP_REGION_ALIGN ((size_t)32 << 20) /* mimalloc 2.0.9 segment size */
#define CLLM__HEAP_POOL_MAX 64                     /* mimalloc's arena limit */
#define CLLM__HEAP_PSEG_SLOTS 4096                 /* PLAIN segment set: 128 GiB */

/* Counters of one (thread, node): written only by the owning thread with plain
 * relaxed load+store, read by stats with relaxed loads. */
typedef struct node_ctr {
  _Atomic uint64_t allocs, frees, failures, fallbacks, bytes_alloc, bytes_freed;
} node_ctr_t;

struct cllm_heaps {
  uint64_t id;       /* unique, never reused */
  uint64_t fast_key; /* id when the inline fast paths may serve (not PLAIN, usable
                        sizes predicted), else 0 (no thread's cache ever holds 0) */
  cllm_heaps_t *next_live;
  cllm_heap_mode_t mode;
  int nodes;
  bool allow_fallback;
  bool keep_pages; /* config keep_pages, and size prediction is on */
  cllm_monitor_t *monitor;
  const cllm_topology_t *topo;
  size_t batch_bytes;
  size_t region_bytes;
  char *rstart[CLLM_HEAP_MAX_NODES];
  char *rend[CLLM_HEAP_MAX_NODES];
  int pool_idx[CLLM_HEAP_MAX_NODES];
  mi_arena_id_t arena[CLLM_HEAP_MAX_NODES];
  int os_node[CLLM_HEAP_MAX_NODES]; /* bound node, -1 unbound */
  struct tstate *threads;           /* heap.c g_lock */
  uint64_t retired[CLLM_HEAP_MAX_NODES][6]; /* counters of retired tstates (g_lock) */
  _Atomic uint64_t direct_frees[CLLM_HEAP_MAX_NODES]; /* frees with no tstate */
  _Atomic uint64_t direct_bytes[CLLM_HEAP_MAX_NODES];
  _Atomic uint64_t foreign_frees;
  _Atomic uint64_t einval;
  _Atomic uintptr_t *pseg; /* PLAIN: set of mimalloc segments our heaps used */
  _Atomic bool pseg_full;  /* the set overflowed: fall back to mi_is_in_heap_region */
};

/* ---- region pool (lib/heap_region.c; its own lock, never held with heap.c's) ---- */

/* Give h one region per node (h->nodes, h->region_bytes, h->topo set): a pooled one
 * of the same size, node and THP setting, else a new one mapped, bound (when
 * `bind`; a failure is an error only when `bind_required`), advised for THP and
 * registered as an exclusive mimalloc arena. Fills h->pool_idx, rstart, rend, arena,
 * os_node. On error h holds no region and nothing new stays mapped. */
cllm_status_t cllm__heap_regions_acquire(cllm_heaps_t *h, bool bind, bool bind_required,
                                         bool thp);
/* Return h's regions to the pool (they stay mapped and registered). */
void cllm__heap_regions_release(cllm_heaps_t *h);
/* True when each of h's regions is the pool entry and the mimalloc arena it names. */
bool cllm__heap_regions_verify(const cllm_heaps_t *h);

/* PLAIN mode: record / look up a 32 MiB mimalloc segment in h->pseg. */
void cllm__heap_pseg_add(cllm_heaps_t *h, uintptr_t seg);
bool cllm__heap_pseg_has(const cllm_heaps_t *h, const void *p);

#endif /* CLLM_LIB_HEAP_INTERNAL_H */
