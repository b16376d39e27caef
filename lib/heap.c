/* Per-thread NUMA-aware heaps: mimalloc heaps inside per-node exclusive arenas.
 *
 * Concept
 *   A heaps object owns one region per NUMA node (NUMA mode), or one region (SINGLE
 *   mode), or none (PLAIN mode). A region is mapped 32 MiB aligned (mimalloc 2.0.9
 *   segfaults otherwise), sized in 32 MiB multiples (it rounds down and refuses less),
 *   bound to its node with mbind BEFORE anything touches it, advised for THP, and
 *   registered as an *exclusive* mimalloc arena tagged numa_node = -1 (we place the
 *   pages; mimalloc's own node check would return NULL to a thread on another node).
 *   Each thread that uses a heaps object gets a `tstate`: its monitor batch, its
 *   per-node counters and, lazily, one mimalloc heap per node it allocates from
 *   (mi_heap_new_in_arena; in PLAIN mode one mi_heap_new heap). The files:
 *   heap_internal.h.
 *
 * Regions (lib/heap_region.c)
 *   mimalloc cannot unregister an arena (at most 64 per process), so a registered
 *   region is never unmapped: destroy returns it to a process-wide pool and a later
 *   create with the same size, node and THP setting reuses it (and its arena).
 *
 * Thread state (lib/heap_thread.c)
 *   Each thread that uses a heaps object gets a tstate, found through a TLS cache.
 *   Allocation then needs no lock and no shared write: the thread's mimalloc heap,
 *   its batch (monitor credit) and its counters are its own. A free goes to the
 *   freeing thread's tstate (created on first free), so a block allocated by thread
 *   A and freed by B is charged to A's batch and credited to B's; only the sums are
 *   meaningful, and they balance.
 *
 * Inline paths (cllm_heap_alloc, cllm_heap_free, cllm_heap_free_sized)
 *   The common case: one TLS cache lookup (its id against h->fast_key, which is
 *   HEAP_FAST_OFF in PLAIN mode or without size classes), the size class from the
 *   thread's table (0 for a class whose page is not kept yet), a take from the
 *   thread's batch (cllm_monitor_batch_take, no call), two counters on the thread's
 *   own lines, and mimalloc's call; a free checks that p lies in the region of the
 *   thread's node and makes mimalloc's free a tail call. Everything
 *   else (another node's block, PLAIN mode, credit running out or piling up, a NULL
 *   from mimalloc, sizes over 128 KiB, bad input) goes to the general paths.
 *
 * Invariants
 *   - every live tstate is on exactly one heaps object's list and in its thread's
 *     TLS table; a TLS entry is only dereferenced after (h, id) is found live under
 *     the lock, or through the per-thread cache that destroy clears for its own thread
 *     (other threads' caches are invalidated by the id: ids are never reused);
 *   - per node: frees <= allocations and bytes freed <= bytes allocated (sums over
 *     live tstates plus the retired totals); bytes in use are charged to the
 *     monitor's HEAP category (through the batches, which may hold extra credit).
 *
 * Locks: cllm__heap_lock (process-wide) guards the list of live heaps objects and
 * every heaps object's tstate list. It is taken only on slow paths (first use by a
 * thread, thread exit, create, destroy, stats, check), never while allocating or
 * freeing, and nothing is called back under it. The region pool's lock
 * (heap_region.c) is never taken while cllm__heap_lock is held. Reservations reach
 * the monitor with no lock held (reclaimers may run); batches are flushed under the
 * lock, a release, which runs no callback.
 */
#include <mimalloc.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cllm/heap.h>

#include "internal/fault.h"
#include "internal/util.h"
#include "internal/versioned.h"
#include "heap_internal.h"

#define DEFAULT_BYTES_PER_NODE ((size_t)1 << 30)
#define MIN_ALIGN CLLM__HEAP_MIN_ALIGN
#define REGION_ALIGN CLLM__HEAP_REGION_ALIGN

pthread_mutex_t cllm__heap_lock = PTHREAD_MUTEX_INITIALIZER;
static cllm_heaps_t *g_live; /* live heaps objects (cllm__heap_lock) */
static uint64_t g_next_id = 1;

/* Default TLS model: the library is also a shared object that may be dlopen'ed, so
 * initial-exec is not assumed; static links relax the access to local-exec. The
 * variable is static so that the inline paths address it directly. */
static __thread tls_cache_t t_cache;

tls_cache_t *cllm__heap_cache_mine(void) { return &t_cache; }

static inline tstate_t *heap_tstate_get(cllm_heaps_t *h) {
  if (CLLM_LIKELY(t_cache.h == h && t_cache.id == h->id)) return t_cache.ts;
  return cllm__heap_tstate_slow(h, true);
}

const char *cllm_heap_mode_name(cllm_heap_mode_t mode) {
  switch (mode) {
#define CLLM_HEAP_MODE_NAME_(id, value, name) \
  case CLLM_HEAP_MODE_##id:                   \
    return name;
    CLLM_HEAP_MODE_MAP(CLLM_HEAP_MODE_NAME_)
#undef CLLM_HEAP_MODE_NAME_
  }
  return "unknown";
}

bool cllm__heap_is_live_locked(const cllm_heaps_t *h, uint64_t id) {
  for (cllm_heaps_t *x = g_live; x != NULL; x = x->next_live)
    if (x == h && x->id == id) return true;
  return false;
}

/* ---- create / destroy ------------------------------------------------------------- */

cllm_heaps_config_t cllm_heaps_config_default(void) {
  cllm_heaps_config_t c;
  memset(&c, 0, sizeof c);
  c.struct_size = sizeof c;
  c.bytes_per_node = DEFAULT_BYTES_PER_NODE;
  c.transparent_huge_pages = true;
  c.allow_plain = true;
  c.keep_pages = true;
  return c;
}

cllm_status_t cllm_heaps_create(const cllm_heaps_config_t *cfg_in, cllm_heaps_t **out) {
  if (out == NULL) return CLLM_EINVAL;
  *out = NULL;
  cllm_heaps_config_t cfg = cllm_heaps_config_default();
  if (cllm__config_in(&cfg, sizeof cfg, cfg_in) != CLLM_OK || cfg.max_nodes < 0 ||
      cfg.batch_bytes > SIZE_MAX / 8)
    return CLLM_EINVAL;
  size_t bytes = cfg.bytes_per_node != 0 ? cfg.bytes_per_node : DEFAULT_BYTES_PER_NODE;
  if (!cllm__align_up_checked(bytes, REGION_ALIGN, &bytes) || bytes > (SIZE_MAX >> 2))
    return CLLM_EINVAL;
  if (!cllm__heap_thread_init()) return CLLM_ESYS;

  const cllm_topology_t *topo = cfg.topology != NULL ? cfg.topology : cllm_topology_system();
  int topo_nodes = topo != NULL ? cllm_topology_nodes(topo) : 1;
  if (topo_nodes < 1) topo_nodes = 1;
  int n = topo_nodes;
  if (cfg.max_nodes > 0 && cfg.max_nodes < n) n = cfg.max_nodes;
  if (n > CLLM_HEAP_MAX_NODES) n = CLLM_HEAP_MAX_NODES;

  cllm_heaps_t *h = cllm__heap_meta_calloc(1, sizeof *h);
  if (h == NULL) return CLLM_ENOMEM;
  h->nodes = n;
  h->topo = topo;
  h->monitor = cfg.monitor != NULL ? cfg.monitor : cllm_monitor_global();
  h->allow_fallback = cfg.allow_fallback;
  h->keep_pages = cfg.keep_pages && cllm__heap_class_count() > 0;
  h->batch_bytes = cfg.batch_bytes;
  h->region_bytes = bytes;
  for (int i = 0; i < CLLM_HEAP_MAX_NODES; i++) {
    h->pool_idx[i] = -1;
    h->os_node[i] = -1;
  }

  /* NUMA: every node's region must be bound. SINGLE: bind when the topology is this
   * one-node machine, best effort. */
  h->mode = n == 1 ? CLLM_HEAP_MODE_SINGLE : CLLM_HEAP_MODE_NUMA;
  bool this_sys = topo != NULL && cllm_topology_is_this_system(topo);
  bool bind = h->mode == CLLM_HEAP_MODE_NUMA || (this_sys && topo_nodes == 1);
  bool bind_required = h->mode == CLLM_HEAP_MODE_NUMA;
  if (h->mode == CLLM_HEAP_MODE_SINGLE && topo == NULL) bind = false;

  cllm_status_t s = cllm__heap_regions_acquire(h, bind, bind_required, cfg.transparent_huge_pages);
  if (s != CLLM_OK) {
    if (!cfg.allow_plain) {
      free(h);
      return s;
    }
    cllm__info("heaps: regions unavailable (%s): plain per-thread mimalloc heaps",
               cllm_status_name(s));
    h->mode = CLLM_HEAP_MODE_PLAIN;
  }
  if (h->mode == CLLM_HEAP_MODE_PLAIN) {
    h->pseg = cllm__heap_meta_calloc(CLLM__HEAP_PSEG_SLOTS, sizeof *h->pseg);
    if (h->pseg == NULL) {
      free(h);
      return CLLM_ENOMEM;
    }
  }
  pthread_mutex_lock(&cllm__heap_lock);
  h->id = g_next_id++;
  h->fast_key = h->mode != CLLM_HEAP_MODE_PLAIN && cllm__heap_class_max != 0 ? h->id : HEAP_FAST_OFF;
  h->next_live = g_live;
  g_live = h;
  pthread_mutex_unlock(&cllm__heap_lock);
  *out = h;
  return CLLM_OK;
}

void cllm_heaps_destroy(cllm_heaps_t *h) {
  if (h == NULL) return;
  pthread_mutex_lock(&cllm__heap_lock);
  for (cllm_heaps_t **pp = &g_live; *pp != NULL; pp = &(*pp)->next_live) {
    if (*pp == h) {
      *pp = h->next_live;
      break;
    }
  }
  /* Blocks still live become invalid: give their bytes back to the monitor. */
  uint64_t in_use = 0;
  for (int i = 0; i < h->nodes; i++) {
    heap_counts_t v = cllm__heap_node_sum_locked(h, i);
    in_use += heap_counts_in_use(&v);
  }
  while (h->threads != NULL) {
    tstate_t *ts = h->threads;
    /* The calling thread's own heaps can be destroyed (only their owner may); other
     * live threads' heaps stay with mimalloc until those threads exit. */
    cllm__heap_keep_release(h, ts, false); /* before the heaps that hold them go */
    if (cllm__heap_tstate_is_mine(ts)) {
      int slots = h->mode == CLLM_HEAP_MODE_PLAIN ? 1 : h->nodes;
      for (int i = 0; i < slots; i++)
        if (ts->heap[i] != NULL) mi_heap_destroy(ts->heap[i]);
    }
    cllm__heap_tstate_retire_locked(h, ts);
  }
  pthread_mutex_unlock(&cllm__heap_lock);
  cllm__heap_regions_release(h);
  if (in_use != 0 && cllm_monitor_release(h->monitor, CLLM_CAT_HEAP, (size_t)in_use) != CLLM_OK)
    cllm__warn("heaps: returning %llu HEAP bytes of live blocks failed", (unsigned long long)in_use);
  cllm__heap_tls_forget(h, h->id);
  free((void *)h->pseg);
  free(h);
}

cllm_heap_mode_t cllm_heaps_mode(const cllm_heaps_t *h) {
  return h != NULL ? h->mode : CLLM_HEAP_MODE_PLAIN;
}

/* ---- allocation ------------------------------------------------------------------- */

static __attribute__((noinline, cold)) void release_failed(size_t us, cllm_status_t s) {
  cllm__warn("heaps: releasing %zu HEAP bytes failed: %s", us, cllm_status_name(s));
}

/* Hand `us` bytes back through the thread's batch. */
static inline __attribute__((always_inline)) void release(tstate_t *ts, size_t us) {
  cllm_status_t s = cllm_monitor_batch_release(&ts->batch, us);
  if (CLLM_UNLIKELY(s != CLLM_OK)) release_failed(us, s);
}

static void *fail(cllm_heaps_t *h, tstate_t *ts, cllm_status_t s) {
  if (ts != NULL) heap_bump(&ts->ctr[heap_ctr_slot(h, ts->node)].failures, 1);
  if (s == CLLM_EINVAL) cllm__atomic_add_relaxed(&h->einval, 1);
  cllm__set_last_status(s);
  return NULL;
}

static inline void *mi_alloc_in(mi_heap_t *mh, size_t size, size_t align, bool zero) {
  if (CLLM_FAULT(CLLM_FAULT_MI_ALLOC)) return NULL;
  if (align > MIN_ALIGN) {
    return cllm__heap_mi_aligned(mh, size, align, zero);
  }
  if (zero) return mi_heap_zalloc(mh, size);
  return size <= MI_SMALL_SIZE_MAX ? mi_heap_malloc_small(mh, size) : mi_heap_malloc(mh, size);
}

/* The home node's heap returned NULL: try the other nodes (allow_fallback, NUMA
 * mode) or fail with CLLM_ENOMEM. *at = the node that served. */
static __attribute__((noinline)) void *alloc_fallback(cllm_heaps_t *h, tstate_t *ts, size_t size,
                                                      size_t align, bool zero, int *at) {
  if (!h->allow_fallback || h->mode != CLLM_HEAP_MODE_NUMA) return fail(h, ts, CLLM_ENOMEM);
  void *p = NULL;
  for (int k = 1; k < h->nodes && p == NULL; k++) {
    *at = (ts->node + k) % h->nodes;
    mi_heap_t *other = cllm__heap_for(h, ts, *at);
    if (other != NULL) p = mi_alloc_in(other, size, align, zero);
  }
  if (p == NULL) return fail(h, ts, CLLM_ENOMEM);
  heap_bump(&ts->ctr[ts->node].fallbacks, 1);
  return p;
}

static __attribute__((noinline)) void *alloc_refused(cllm_heaps_t *h, tstate_t *ts, void *p,
                                                     cllm_status_t s) {
  mi_free(p);
  return fail(h, ts, s);
}

static __attribute__((noinline)) void pseg_note(cllm_heaps_t *h, tstate_t *ts, const void *p) {
  uintptr_t seg = (uintptr_t)p & ~(uintptr_t)(REGION_ALIGN - 1);
  if (seg != ts->last_seg) {
    cllm__heap_pseg_add(h, seg);
    ts->last_seg = seg;
  }
}

/* Account the block `p` the home heap returned (NULL: fall back or fail): charge its
 * usable size to the thread's batch and count it. */
static inline __attribute__((always_inline)) void *alloc_account(cllm_heaps_t *h, tstate_t *ts,
                                                                 void *p, size_t size,
                                                                 size_t align, bool zero) {
  int at = ts->cur_slot;
  if (CLLM_UNLIKELY(p == NULL)) {
    p = alloc_fallback(h, ts, size, align, zero, &at);
    if (p == NULL) return NULL;
  }
  HEAP_TSAN_ON_ALLOC(p);
  size_t us = align <= MIN_ALIGN ? heap_usable_of_request(size) : 0;
  if (us == 0) us = mi_usable_size(p);
  cllm_assert_internal(us == mi_usable_size(p));
  cllm_status_t s = cllm_monitor_batch_reserve(&ts->batch, us);
  if (CLLM_UNLIKELY(s != CLLM_OK)) return alloc_refused(h, ts, p, s);
  if (CLLM_UNLIKELY(h->pseg != NULL)) pseg_note(h, ts, p);
  node_ctr_t *c = &ts->ctr[at];
  heap_bump(&c->allocs, 1);
  heap_bump(&c->bytes_alloc, us);
  return p;
}

/* Allocate `size` (a multiple of 16) for the calling thread: the general path. */
static __attribute__((noinline)) void *alloc_impl(cllm_heaps_t *h, size_t size, size_t align,
                                                  bool zero) {
  tstate_t *ts = heap_tstate_get(h);
  if (CLLM_UNLIKELY(ts == NULL)) return fail(h, NULL, CLLM_ENOMEM);
  mi_heap_t *mh = ts->cur;
  if (CLLM_UNLIKELY(mh == NULL) && (mh = cllm__heap_for(h, ts, ts->node)) == NULL)
    return fail(h, ts, CLLM_ENOMEM);
  void *p = alloc_account(h, ts, mi_alloc_in(mh, size, align, zero), size, align, zero);
  if (p != NULL && ts->keep != NULL && size <= cllm__heap_class_max) cllm__heap_keep_class(ts, size);
  return p;
}

/* Round a request to a multiple of 16 (so every block is 16-byte aligned: mimalloc
 * would hand out 8-byte aligned blocks of 8 or 24 bytes). 0 on overflow. */
static inline size_t round16(size_t bytes) {
  if (CLLM_UNLIKELY(bytes > SIZE_MAX - 15)) return 0;
  size_t s = (bytes + 15) & ~(size_t)15;
  return s != 0 ? s : 16;
}

static __attribute__((noinline)) void *alloc_slow(cllm_heaps_t *h, size_t bytes) {
  if (h == NULL) {
    cllm__set_last_status(CLLM_EINVAL);
    return NULL;
  }
  size_t size = round16(bytes);
  if (size == 0) return fail(h, heap_tstate_get(h), CLLM_ENOMEM);
  return alloc_impl(h, size, 0, false);
}

/* True when the calling thread's cache holds h's state and the inline fast paths
 * may serve h. Comparing ids suffices: ids are unique and never reused, a live
 * object's fast_key is its id or HEAP_FAST_OFF, and an empty cache holds id 0. */
#define FAST_STATE(h) (CLLM_LIKELY((h) != NULL) && CLLM_LIKELY(t_cache.id == (h)->fast_key))

/* The home heap returned NULL after the fast path charged the block: undo the
 * charge, then fall back or fail as the general path does. */
static __attribute__((noinline)) void *alloc_unwind(size_t us) {
  tstate_t *ts = t_cache.ts;
  cllm_heaps_t *h = ts->h;
  release(ts, us);
  node_ctr_t *c = ts->cur_ctr;
  heap_bump(&c->allocs, (uint64_t)-1);
  heap_bump(&c->bytes_alloc, (uint64_t)0 - us);
  return alloc_account(h, ts, NULL, us, 0, false);
}

void *cllm_heap_alloc(cllm_heaps_t *h, size_t bytes) {
  /* Fast path: the thread's cached state and heap, a predicted size class (up to
   * 128 KiB, so bytes 0 and overflowing sizes go the general way) and credit left in
   * the thread's batch. The block is charged first, so that only the NULL check
   * follows mimalloc's call, and mimalloc is called once whatever the size (no
   * branch on the size here: the sizes callers ask for are a random mix, and a
   * mispredicted branch costs more than what it would skip). Anything else takes
   * the general path. */
  if (FAST_STATE(h) && CLLM_LIKELY(heap_in_1_to(bytes, HEAP_CLASS_LIMIT))) {
    tstate_t *ts = t_cache.ts;
    mi_heap_t *mh = ts->cur;
    /* The class from the thread's table: 0 while no block of it is held (kept
     * pages), which the batch never takes: the general path serves it. */
    size_t us = heap_class_in(ts->fast16, bytes);
    if (CLLM_LIKELY(mh != NULL) && cllm_monitor_batch_take(&ts->batch, us)) {
      node_ctr_t *c = ts->cur_ctr;
      heap_bump(&c->allocs, 1);
      heap_bump(&c->bytes_alloc, us);
      /* mimalloc gets the 16-byte rounded size, not the class (the same bin): the
       * class lookup would then sit on mimalloc's critical path; the charge does
       * not wait for mimalloc. */
      void *p = CLLM_FAULT(CLLM_FAULT_MI_ALLOC) ? NULL : mi_heap_malloc(mh, (bytes + 15) & ~(size_t)15);
      if (CLLM_LIKELY(p != NULL)) {
        cllm_assert_internal(us == mi_usable_size(p));
        HEAP_TSAN_ON_ALLOC(p);
        return p;
      }
      return alloc_unwind(us);
    }
  }
  return alloc_slow(h, bytes);
}

void *cllm_heap_alloc_aligned(cllm_heaps_t *h, size_t bytes, size_t align) {
  if (h == NULL) {
    cllm__set_last_status(CLLM_EINVAL);
    return NULL;
  }
  if (!cllm__is_pow2(align) || align > CLLM_HEAP_MAX_ALIGN) return fail(h, heap_tstate_get(h), CLLM_EINVAL);
  size_t size = round16(bytes);
  if (size == 0) return fail(h, heap_tstate_get(h), CLLM_ENOMEM);
  return alloc_impl(h, size, align, false);
}

void *cllm_heap_calloc(cllm_heaps_t *h, size_t n, size_t size) {
  if (h == NULL) {
    cllm__set_last_status(CLLM_EINVAL);
    return NULL;
  }
  size_t total;
  if (cllm__mul_overflow(n, size, &total)) return fail(h, heap_tstate_get(h), CLLM_EOVERFLOW);
  size_t sz = round16(total);
  if (sz == 0) return fail(h, heap_tstate_get(h), CLLM_ENOMEM);
  return alloc_impl(h, sz, 0, true);
}

/* ---- free ------------------------------------------------------------------------ */

/* The node whose region holds p, or -1 (PLAIN: 0 for mimalloc memory). */
static inline int node_of_ptr(const cllm_heaps_t *h, const void *p) {
  if (CLLM_UNLIKELY(((uintptr_t)p & (MIN_ALIGN - 1)) != 0)) return -1;
  if (h->mode == CLLM_HEAP_MODE_PLAIN) return cllm__heap_pseg_has(h, p) ? 0 : -1;
  for (int i = 0; i < h->nodes; i++)
    if ((uintptr_t)p - (uintptr_t)h->rstart[i] < h->region_bytes) return i;
  return -1;
}

/* p is 16-byte aligned and inside the region of the thread's node (never in PLAIN
 * mode: home_span16 is 0). */
static inline bool in_home(const tstate_t *ts, const void *p) {
  return ((uintptr_t)p & (MIN_ALIGN - 1)) == 0 && ((uintptr_t)p - ts->home_start) >> 4 < ts->home_span16;
}

static void foreign(cllm_heaps_t *h, const void *p, const char *what) {
  cllm__atomic_add_relaxed(&h->foreign_frees, 1);
  cllm__warn("heaps: %s of %p, which is not from these heaps: ignored", what, p);
}

/* Free p, a block of `us` usable bytes in the region of the thread's node: account
 * first, so that mimalloc's free is the last call (a tail call). */
static inline __attribute__((always_inline)) void free_home_tail(tstate_t *ts, void *p, size_t us) {
  node_ctr_t *c = ts->cur_ctr;
  heap_bump(&c->frees, 1);
  heap_bump(&c->bytes_freed, us);
  HEAP_TSAN_ON_FREE(p);
  mi_free(p);
}

/* free_home when the credit would pass its bound: hand credit back first. */
static __attribute__((noinline)) void free_home_spill(tstate_t *ts, void *p, size_t us) {
  release(ts, us);
  free_home_tail(ts, p, us);
}

static inline __attribute__((always_inline)) void free_home(tstate_t *ts, void *p, size_t us) {
  if (CLLM_UNLIKELY(!cllm_monitor_batch_give(&ts->batch, us))) {
    free_home_spill(ts, p, us);
    return;
  }
  free_home_tail(ts, p, us);
}

/* Usable size of p for a sized free: the class of `bytes`, or mimalloc's answer
 * where that is not predicted. A size that does not match is caller misuse. */
static inline size_t usable_sized(const void *p, size_t bytes) {
  size_t us = heap_usable_of_request(bytes);
  if (us == 0) us = mi_usable_size(p);
  cllm_assert(us == mi_usable_size(p) && "cllm_heap_free_sized: bytes is not the block's size");
  return us;
}

/* Every free that the inline path does not serve. sized: `bytes` is the block's. */
static __attribute__((noinline)) void free_slow(cllm_heaps_t *h, void *p, bool sized, size_t bytes) {
  if (p == NULL) return;
  if (CLLM_UNLIKELY(h == NULL)) {
    cllm__warn("heaps: free of %p with a NULL heaps object: ignored", p);
    return;
  }
  int node = node_of_ptr(h, p);
  if (CLLM_UNLIKELY(node < 0)) {
    foreign(h, p, "free");
    return;
  }
  size_t us = sized ? usable_sized(p, bytes) : mi_usable_size(p);
  tstate_t *ts = heap_tstate_get(h);
  if (ts != NULL && node == ts->cur_slot) {
    free_home(ts, p, us);
    return;
  }
  HEAP_TSAN_ON_FREE(p);
  mi_free(p);
  if (CLLM_LIKELY(ts != NULL)) {
    release(ts, us);
    node_ctr_t *c = &ts->ctr[node];
    heap_bump(&c->frees, 1);
    heap_bump(&c->bytes_freed, us);
  } else { /* no per-thread state (out of memory): account directly */
    if (cllm_monitor_release(h->monitor, CLLM_CAT_HEAP, us) != CLLM_OK)
      cllm__warn("heaps: releasing %zu HEAP bytes failed", us);
    cllm__atomic_add_relaxed(&h->direct_frees[node], 1);
    cllm__atomic_add_relaxed(&h->direct_bytes[node], us);
  }
}

void cllm_heap_free(cllm_heaps_t *h, void *p) {
  /* Fast path: the thread's cached state and a block of its own node's region. */
  if (FAST_STATE(h)) {
    tstate_t *ts = t_cache.ts;
    if (CLLM_LIKELY(in_home(ts, p))) {
      free_home(ts, p, mi_usable_size(p));
      return;
    }
  }
  free_slow(h, p, false, 0);
}

void cllm_heap_free_sized(cllm_heaps_t *h, void *p, size_t bytes) {
  /* Fast path: as cllm_heap_free's, with the class of `bytes` (no call but mimalloc's
   * free, made last: a tail call). */
  if (FAST_STATE(h) && CLLM_LIKELY(heap_in_1_to(bytes, HEAP_CLASS_LIMIT))) {
    tstate_t *ts = t_cache.ts;
    /* The thread's table, as cllm_heap_alloc reads; a class it does not serve (0:
     * not kept in this node's heap) goes the general way. */
    size_t us = heap_class_in(ts->fast16, bytes);
    if (CLLM_LIKELY(in_home(ts, p)) && CLLM_LIKELY(us != 0)) {
      cllm_assert(us == mi_usable_size(p) && "cllm_heap_free_sized: bytes is not the block's size");
      free_home(ts, p, us);
      return;
    }
  }
  free_slow(h, p, true, bytes);
}

size_t cllm_heap_usable_size(const cllm_heaps_t *h, const void *p) {
  if (h == NULL || p == NULL || node_of_ptr(h, p) < 0) return 0;
  return mi_usable_size(p);
}

void *cllm_heap_realloc(cllm_heaps_t *h, void *p, size_t bytes) {
  if (h == NULL) {
    cllm__set_last_status(CLLM_EINVAL);
    return NULL;
  }
  if (p == NULL) return cllm_heap_alloc(h, bytes);
  if (node_of_ptr(h, p) < 0) {
    foreign(h, p, "realloc");
    return fail(h, heap_tstate_get(h), CLLM_EINVAL);
  }
  if (bytes == 0) {
    cllm_heap_free(h, p);
    return NULL;
  }
  size_t old = mi_usable_size(p);
  /* Keep the block when it fits and would not waste more than half of it. */
  if (bytes <= old && bytes >= old / 2) return p;
  void *q = cllm_heap_alloc(h, bytes);
  if (q == NULL) return NULL; /* status recorded; p untouched */
  memcpy(q, p, bytes < old ? bytes : old);
  cllm_heap_free(h, p);
  return q;
}

