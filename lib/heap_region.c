/* The heaps' process-wide region pool, and PLAIN mode's segment set.
 *
 * Concept
 *   A region is one node's memory for a heaps object: mapped 32 MiB aligned and
 *   sized in 32 MiB multiples (mimalloc 2.0.9 segfaults on an unaligned arena and
 *   rounds sizes down), bound to its node with mbind before anything touches it,
 *   advised for THP, and registered as an exclusive mimalloc arena tagged
 *   numa_node = -1. mimalloc can neither unregister an arena nor take more than 64,
 *   so a registered region is never unmapped: it lives in this pool, and when its
 *   heaps object is destroyed it waits for a later create asking for the same size,
 *   OS node and THP setting. Only heaps created in an exclusive arena allocate from
 *   it, and the heaps API never reaches a destroyed object's heaps, so a pooled
 *   region is handed out again only through its next owner.
 *
 * Invariants
 *   - g_pool[0..g_pool_n) are registered arenas; entries are never removed;
 *   - an entry is in_use iff exactly one live heaps object names it in pool_idx.
 *
 * Locks: g_pool_lock guards the pool. It is never held together with heap.c's lock
 * (create acquires regions before publishing the object; destroy releases them
 * after retiring its threads), and nothing is called back under it.
 */
#include <errno.h>
#include <mimalloc.h>
#include <pthread.h>
#include <string.h>

#include <cllm/heap.h>

#include "heap_internal.h"
#include "internal/atomic.h"
#include "internal/fault.h"
#include "internal/prim.h"
#include "internal/util.h"

#define REGION_ALIGN CLLM__HEAP_REGION_ALIGN
#define POOL_MAX CLLM__HEAP_POOL_MAX
#define PSEG_SLOTS CLLM__HEAP_PSEG_SLOTS

typedef struct region {
  char *start;
  size_t size;
  mi_arena_id_t arena;
  int os_node; /* the OS node it is bound to, -1 when unbound */
  bool thp;    /* THP asked for at map time (part of the reuse key) */
  bool in_use; /* owned by a live heaps object */
} region_t;

static pthread_mutex_t g_pool_lock = PTHREAD_MUTEX_INITIALIZER;
static region_t g_pool[POOL_MAX];
static int g_pool_n;

/* ---- region pool ------------------------------------------------------------------- */

/* A free pooled region of this shape, or -1. */
static int pool_find_locked(size_t size, int os_node, bool thp) {
  for (int i = 0; i < g_pool_n; i++) {
    const region_t *r = &g_pool[i];
    if (!r->in_use && r->size == size && r->os_node == os_node && r->thp == thp) return i;
  }
  return -1;
}

/* Map, bind, advise and register a new region for node `node`; add it to the pool.
 * With bind && !bind_required a failed bind leaves the region unbound. On error
 * nothing stays mapped or registered. */
static cllm_status_t region_new_locked(const cllm_heaps_t *h, int node, bool bind,
                                       bool bind_required, bool thp, int *idx) {
  if (g_pool_n >= POOL_MAX) {
    cllm__warn("heaps: this process already registered %d mimalloc arenas", POOL_MAX);
    return CLLM_ENOTSUP;
  }
  size_t size = h->region_bytes;
  /* One read-only page after the region: the kernel would otherwise merge it with
   * an adjacent region into one mapping, and smaps (the THP figure of the stats)
   * reports per mapping. Best effort: the figure is all it guards. */
  size_t guard = cllm__prim_page_size();
  void *p = NULL;
  int e = cllm__prim_map(size + guard, REGION_ALIGN, &p);
  if (e != 0) {
    cllm__warn("heaps: mapping a %zu-byte region failed: %s", size, strerror(e));
    return CLLM_ESYS;
  }
  (void)cllm__prim_protect((char *)p + size, guard, false);
  int os_node = -1;
  if (bind) {
    cllm_status_t s = cllm_topology_bind_area(h->topo, p, size, node);
    if (s == CLLM_OK) {
      cllm_numa_node_info_t info;
      os_node = cllm_topology_node_info(h->topo, node, &info) == CLLM_OK ? info.os_index : node;
    } else if (bind_required) {
      (void)cllm__prim_unmap(p, size + guard);
      return s;
    } else {
      cllm__info("heaps: binding the region of node %d failed (%s); it stays unbound", node,
                 cllm_status_name(s));
    }
  }
  /* Best effort, stats show the result. Without thp the region is advised against
   * huge pages, so a kernel with THP "always" cannot back it with them (the
   * residency bound of heap.h counts 4 KiB pages then). */
  if (thp) (void)cllm__prim_advise_huge(p, size);
  else (void)cllm__prim_advise_nohuge(p, size);
  mi_arena_id_t arena = 0;
  bool ok = !CLLM_FAULT(CLLM_FAULT_MI_ARENA) &&
            mi_manage_os_memory_ex(p, size, true /*committed*/, false /*large*/, true /*zero*/,
                                   -1 /*numa: we place*/, true /*exclusive*/, &arena);
  if (!ok) {
    cllm__warn("heaps: mimalloc refused to register a %zu-byte arena", size);
    (void)cllm__prim_unmap(p, size + guard);
    return CLLM_ENOTSUP;
  }
  region_t *r = &g_pool[g_pool_n];
  r->start = p;
  r->size = size;
  r->arena = arena;
  r->os_node = os_node;
  r->thp = thp;
  r->in_use = true;
  *idx = g_pool_n++;
  return CLLM_OK;
}

/* Node `node`'s region for h: pooled (bound to the node's OS node, or unbound when
 * binding is not asked for) or new. Pooled regions are bound to nodes of this
 * machine, so only a topology of this machine may reuse one as bound; for any other
 * (a synthetic node numbered like a real one) a required bind takes the new-region
 * path, whose bind refuses as it would have the first time. */
static cllm_status_t acquire_one_locked(cllm_heaps_t *h, int node, bool bind, bool bind_required,
                                        bool thp) {
  int want = -1;
  if (bind && cllm_topology_is_this_system(h->topo)) {
    cllm_numa_node_info_t info;
    if (cllm_topology_node_info(h->topo, node, &info) == CLLM_OK) want = info.os_index;
  }
  int idx = bind_required && want < 0 ? -1 : pool_find_locked(h->region_bytes, want, thp);
  if (idx < 0 && bind && !bind_required) {
    /* Binding is optional (SINGLE mode: one node, so every page of the region is on
     * it already): reuse an unbound region, binding it now if the kernel agrees,
     * rather than registering another arena each time binding fails. */
    idx = pool_find_locked(h->region_bytes, -1, thp);
    if (idx >= 0 && want >= 0 &&
        cllm_topology_bind_area(h->topo, g_pool[idx].start, g_pool[idx].size, node) == CLLM_OK)
      g_pool[idx].os_node = want;
  }
  if (idx < 0) {
    cllm_status_t s = region_new_locked(h, node, bind, bind_required, thp, &idx);
    if (s != CLLM_OK) return s;
  } else {
    g_pool[idx].in_use = true;
  }
  const region_t *r = &g_pool[idx];
  h->pool_idx[node] = idx;
  h->rstart[node] = r->start;
  h->rend[node] = r->start + r->size;
  h->arena[node] = r->arena;
  h->os_node[node] = r->os_node;
  return CLLM_OK;
}

static void release_locked(cllm_heaps_t *h) {
  for (int i = 0; i < h->nodes; i++) {
    if (h->pool_idx[i] >= 0) g_pool[h->pool_idx[i]].in_use = false;
    h->pool_idx[i] = -1;
    h->rstart[i] = h->rend[i] = NULL;
    h->os_node[i] = -1;
  }
}

cllm_status_t cllm__heap_regions_acquire(cllm_heaps_t *h, bool bind, bool bind_required,
                                         bool thp) {
  cllm_status_t s = CLLM_OK;
  pthread_mutex_lock(&g_pool_lock);
  for (int i = 0; i < h->nodes && s == CLLM_OK; i++) s = acquire_one_locked(h, i, bind, bind_required, thp);
  if (s != CLLM_OK) release_locked(h);
  pthread_mutex_unlock(&g_pool_lock);
  return s;
}

void cllm__heap_regions_release(cllm_heaps_t *h) {
  pthread_mutex_lock(&g_pool_lock);
  release_locked(h);
  pthread_mutex_unlock(&g_pool_lock);
}

bool cllm__heap_regions_verify(const cllm_heaps_t *h) {
  bool ok = true;
  pthread_mutex_lock(&g_pool_lock);
  for (int i = 0; i < h->nodes && ok; i++) {
    int idx = h->pool_idx[i];
    if (h->mode == CLLM_HEAP_MODE_PLAIN) {
      if (idx >= 0) {
        cllm__error("heaps check: PLAIN mode holds a region");
        ok = false;
      }
      continue;
    }
    size_t asz = 0;
    void *area = idx >= 0 ? mi_arena_area(h->arena[i], &asz) : NULL;
    if (idx < 0 || idx >= g_pool_n || !g_pool[idx].in_use || g_pool[idx].start != h->rstart[i] ||
        ((uintptr_t)h->rstart[i] & (REGION_ALIGN - 1)) != 0 || area != (void *)h->rstart[i] ||
        asz != (size_t)(h->rend[i] - h->rstart[i]) || asz != h->region_bytes) {
      cllm__error("heaps check: the region of node %d is not its registered arena", i);
      ok = false;
    }
  }
  pthread_mutex_unlock(&g_pool_lock);
  return ok;
}

/* ---- PLAIN mode: which segments are ours ---------------------------------------------
 * Without regions, a free must still tell our blocks from foreign pointers before
 * handing them to mi_free. mi_is_in_heap_region cannot (its segment map covers only
 * the low 40 TiB; under ASan mimalloc's OS memory lies above that). So every 32 MiB
 * mimalloc segment an allocation came from is recorded in an insert-only
 * open-addressing set (a thread records again only when it moves to another segment).
 * A segment mimalloc later returns to the OS may stay in the set: a stale match can
 * only be mimalloc memory, which mi_free handles. */

static inline size_t pseg_hash(uintptr_t seg) {
  return (size_t)(((uint64_t)(seg / REGION_ALIGN) * 0x9e3779b97f4a7c15ull) >> 52) & (PSEG_SLOTS - 1);
}

void cllm__heap_pseg_add(cllm_heaps_t *h, uintptr_t seg) {
  size_t i = pseg_hash(seg);
  for (size_t k = 0; k < PSEG_SLOTS; k++, i = (i + 1) & (PSEG_SLOTS - 1)) {
    uintptr_t cur = cllm__atomic_load_acquire(&h->pseg[i]);
    if (cur == seg) return;
    if (cur == 0 && (atomic_compare_exchange_strong_explicit(&h->pseg[i], &cur, seg,
                                                             memory_order_acq_rel,
                                                             memory_order_acquire) ||
                     cur == seg))
      return;
  }
  cllm__atomic_store_release(&h->pseg_full, true);
}

bool cllm__heap_pseg_has(const cllm_heaps_t *h, const void *p) {
  uintptr_t seg = (uintptr_t)p & ~(uintptr_t)(REGION_ALIGN - 1);
  size_t i = pseg_hash(seg);
  for (size_t k = 0; k < PSEG_SLOTS; k++, i = (i + 1) & (PSEG_SLOTS - 1)) {
    uintptr_t cur = cllm__atomic_load_acquire((_Atomic uintptr_t *)&h->pseg[i]);
    if (cur == seg) return true;
    if (cur == 0) break;
  }
  return cllm__atomic_load_acquire((_Atomic bool *)&h->pseg_full) && mi_is_in_heap_region(p);
}
