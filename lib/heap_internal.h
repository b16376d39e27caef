/* Private to the heaps (lib/heap*.c): the heaps object, the per-thread state and
 * the interfaces between the heaps' files. Not installed, not for other components.
 *
 *   heap.c           objects (create, destroy) and the allocation and free paths
 *   heap_thread.c    per-thread state: TLS lookup, creation, node choice, thread exit
 *   heap_mi209.c     workarounds for mimalloc 2.0.9 (size classes, kept pages,
 *                    aligned blocks), behind the functions declared below
 *   heap_stats.c     counters, stats, residency, footprint, check
 *   heap_region.c    the region pool
 */
#ifndef CLLM_LIB_HEAP_INTERNAL_H
#define CLLM_LIB_HEAP_INTERNAL_H

#include <mimalloc.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cllm/heap.h>

#include "internal/atomic.h"

#define CLLM__HEAP_REGION_ALIGN ((size_t)32 << 20) /* mimalloc 2.0.9 segment size */
#define CLLM__HEAP_POOL_MAX 64                     /* mimalloc's arena limit */
#define CLLM__HEAP_PSEG_SLOTS 4096                 /* PLAIN segment set: 128 GiB */
#define CLLM__HEAP_MIN_ALIGN ((size_t)16)          /* every block's alignment */

/* Counters of one (thread, node): written only by the owning thread with plain
 * relaxed load+store, read by stats with relaxed loads. */
typedef struct node_ctr {
  _Atomic uint64_t allocs, frees, failures, fallbacks, bytes_alloc, bytes_freed;
} node_ctr_t;

/* The same counters as plain sums (retired threads, stats). */
typedef struct heap_counts {
  uint64_t allocs, frees, failures, fallbacks, bytes_alloc, bytes_freed;
} heap_counts_t;

static inline uint64_t heap_counts_in_use(const heap_counts_t *c) {
  return c->bytes_alloc - c->bytes_freed;
}

struct cllm_heaps {
  uint64_t id;       /* unique, never reused */
  uint64_t fast_key; /* id when the inline fast paths may serve (not PLAIN, usable
                        sizes predicted), else HEAP_FAST_OFF */
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
  struct tstate *threads;           /* cllm__heap_lock */
  heap_counts_t retired[CLLM_HEAP_MAX_NODES]; /* of retired tstates (cllm__heap_lock) */
  _Atomic uint64_t direct_frees[CLLM_HEAP_MAX_NODES]; /* frees with no tstate */
  _Atomic uint64_t direct_bytes[CLLM_HEAP_MAX_NODES];
  _Atomic uint64_t foreign_frees;
  _Atomic uint64_t einval;
  _Atomic uintptr_t *pseg; /* PLAIN: set of mimalloc segments our heaps used */
  _Atomic bool pseg_full;  /* the set overflowed: fall back to mi_is_in_heap_region */
};

#define HEAP_FAST_OFF UINT64_MAX /* fast_key of an object the inline paths never serve */

/* A thread's state for one heaps object. Cache-line aligned and padded (another
 * thread's tstate never shares a line with this one's hot fields); the fields the
 * inline paths touch come first, in the first 80 bytes. */
typedef struct tstate {
  cllm_monitor_batch_t batch; /* the thread's HEAP credit */
  node_ctr_t *cur_ctr;        /* &ctr[cur_slot] */
  uintptr_t home_start;       /* region of `node` (0 in PLAIN mode) */
  size_t home_span16;         /* its size / 16 (0 in PLAIN mode): see in_home() */
  mi_heap_t *cur;             /* the heap of `node` (NULL until created) */
  uint16_t *fast16;           /* the class table the fast paths read (heap_mi209.c) */
  /* the rest */
  cllm_heaps_t *h;      /* the heaps object it belongs to */
  int cur_slot;         /* counter slot of `node` (PLAIN: 0) */
  int node;             /* node it allocates from */
  node_ctr_t *ctr;      /* [nodes], after the struct */
  uintptr_t last_seg;   /* PLAIN: the segment last added to h->pseg */
  /* cold */
  struct tstate *next, *prev; /* on h->threads (cllm__heap_lock) */
  void *owner;                /* the owning thread's TLS table (identity only) */
  mi_heap_t **heap;           /* [nodes] (PLAIN: [0] only), after the counters */
  _Atomic bool has_heap;      /* a mimalloc heap exists (read by stats) */
  void **keep;                /* kept pages: held blocks [slot][class] (NULL: off) */
  _Atomic uint64_t kept;      /* held blocks (read by stats) */
} tstate_t;

_Static_assert(offsetof(tstate_t, fast16) + sizeof(uint16_t *) <= 128,
               "the inline paths' fields lie in a tstate's first two cache lines");

/* The calling thread's last used heaps object and its state for it. */
typedef struct tls_cache {
  cllm_heaps_t *h;
  uint64_t id;
  tstate_t *ts;
} tls_cache_t;

/* The calling thread's cache (heap.c reads it inline; other files through this). */
tls_cache_t *cllm__heap_cache_mine(void);

/* Guards the list of live heaps objects and every object's tstate list. Taken
 * only on slow paths; nothing is called back under it. */
extern pthread_mutex_t cllm__heap_lock;

/* ---- small helpers shared by the heaps' files ---- */

static inline uint64_t heap_ld(const _Atomic uint64_t *p) { return cllm__atomic_load_relaxed(p); }
/* Owner-only increment: no read-modify-write instruction, no shared cache line. */
static inline void heap_bump(_Atomic uint64_t *p, uint64_t v) {
  cllm__atomic_store_relaxed(p, cllm__atomic_load_relaxed(p) + v);
}
/* Counter slot of a node (PLAIN: everything is node 0's). */
static inline int heap_ctr_slot(const cllm_heaps_t *h, int node) {
  return h->mode == CLLM_HEAP_MODE_PLAIN ? 0 : node;
}

/* ThreadSanitizer cannot see mimalloc's own synchronisation (the library is not
 * instrumented): a block freed by one thread and reused by another would look like
 * a race. Tell it: a free releases, an allocation acquires, on the block's 32 MiB
 * segment (blocks never cross one, and reuse at another address in the same segment
 * is covered too). */
#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#define HEAP_TSAN_SEG(p) ((void *)((uintptr_t)(p) & ~(uintptr_t)(CLLM__HEAP_REGION_ALIGN - 1)))
#define HEAP_TSAN_ON_FREE(p) __tsan_release(HEAP_TSAN_SEG(p))
#define HEAP_TSAN_ON_ALLOC(p) __tsan_acquire(HEAP_TSAN_SEG(p))
#else
#define HEAP_TSAN_ON_FREE(p) ((void)0)
#define HEAP_TSAN_ON_ALLOC(p) ((void)0)
#endif

/* ---- per-thread state (heap_thread.c) ---- */

/* Set up the process-wide key and the size-class tables, once. False: no key. */
bool cllm__heap_thread_init(void);
/* The calling thread's tstate for h, created on first use (create) and put in
 * its cache. NULL: out of memory, or none and !create. */
tstate_t *cllm__heap_tstate_slow(cllm_heaps_t *h, bool create);
/* The thread's mimalloc heap for `node`, created on first use. NULL: out of memory. */
mi_heap_t *cllm__heap_for(cllm_heaps_t *h, tstate_t *ts, int node);
/* Return kept blocks and credit, fold counters into h, unlink and free ts. Never
 * touches its mimalloc heaps. Lock held. */
void cllm__heap_tstate_retire_locked(cllm_heaps_t *h, tstate_t *ts);
/* Forget the calling thread's entry for (h, id) (destroy). */
void cllm__heap_tls_forget(cllm_heaps_t *h, uint64_t id);
/* True when the calling thread owns ts (it may destroy ts's mimalloc heaps). */
bool cllm__heap_tstate_is_mine(const tstate_t *ts);
/* True when (h, id) is a live heaps object. Lock held. */
bool cllm__heap_is_live_locked(const cllm_heaps_t *h, uint64_t id);
/* The node a thread starts on: its binding, else its CPU, folded onto h's nodes. */
int cllm__heap_initial_node(const cllm_heaps_t *h);
/* Zeroed metadata (fault point MALLOC). */
void *cllm__heap_meta_calloc(size_t n, size_t size);

/* ---- mimalloc 2.0.9 workarounds (heap_mi209.c) ----
 * Size classes: the usable size of a block of a 16-byte multiple request up to
 * HEAP_CLASS_LIMIT follows from a table of mimalloc's classes instead of a call.
 * Kept pages: a thread holds one block of each class it uses, so mimalloc never
 * frees and rebuilds the class's only page. Aligned blocks: mimalloc's answer is
 * checked and fixed. For a mimalloc without these faults the file goes as a unit:
 * classes_init sets nothing (class_max 0: no fast paths, no kept pages, every
 * usable size from mi_usable_size), the keep_* calls have nothing to do, and
 * cllm__heap_mi_aligned becomes mimalloc's aligned call. */

#define HEAP_CLASS_LIMIT ((size_t)128 << 10) /* MI_MEDIUM_OBJ_SIZE_MAX in 2.0.9 */

/* HEAP_CLASS_LIMIT when the class table is verified against this mimalloc, else 0. */
extern size_t cllm__heap_class_max;
/* Class size / 16 of each 16-byte request step (index (bytes + 15) / 16). */
extern uint16_t cllm__heap_class16[HEAP_CLASS_LIMIT / 16 + 1];

/* Verify mimalloc's classes and fill the tables (once, at first create). */
void cllm__heap_classes_init(void);
/* Number of classes (0: prediction off); the kept-pages table has this many per node. */
int cllm__heap_class_count(void);

/* Usable size of a block for a request of `bytes` (1..HEAP_CLASS_LIMIT) from a
 * class table: the verified one, or a thread's view of it. */
static inline size_t heap_class_in(const uint16_t *table, size_t bytes) {
  return (size_t)table[(bytes + 15) >> 4] << 4;
}
/* 1 <= x <= max in one compare: 0 wraps to SIZE_MAX. The fast paths use it for a
 * request size (0 and huge sizes take the general path). */
static inline bool heap_in_1_to(size_t x, size_t max) { return x - 1 < max; }
/* Usable size of cllm_heap_alloc(bytes)'s block, or 0 when not predicted. */
static inline size_t heap_usable_of_request(size_t bytes) {
  return heap_in_1_to(bytes, cllm__heap_class_max) ? heap_class_in(cllm__heap_class16, bytes) : 0;
}

/* Kept pages: set up ts's tables (keep: n_slots x classes held blocks, fast16: its
 * class table, all 0) in memory after it; bytes needed for that. */
size_t cllm__heap_keep_bytes(int slots);
void cllm__heap_keep_attach(tstate_t *ts, void *mem, int slots);
/* Open the fast path to the classes held in the heap of ts's current slot. */
void cllm__heap_keep_view(tstate_t *ts);
/* After the general path allocated `size` (16-byte multiple <= class max): hold a
 * block of its class in the thread's current heap, and open the class. */
void cllm__heap_keep_class(tstate_t *ts, size_t size);
/* Free every block ts holds (any thread may); with `close`, every class takes the
 * general path again. */
void cllm__heap_keep_release(const cllm_heaps_t *h, tstate_t *ts, bool close);
/* mimalloc's aligned allocation, with misaligned answers redone. */
void *cllm__heap_mi_aligned(mi_heap_t *mh, size_t size, size_t align, bool zero);

/* ---- counters (heap_stats.c) ---- */

/* Sum node i's counters over live and retired threads. Lock held. */
heap_counts_t cllm__heap_node_sum_locked(const cllm_heaps_t *h, int i);
/* Fold ts's counters into h->retired. Lock held. */
void cllm__heap_fold_locked(cllm_heaps_t *h, const tstate_t *ts);

/* ---- region pool (lib/heap_region.c; its own lock, never held with cllm__heap_lock) ---- */

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
