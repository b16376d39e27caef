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
 *   (mi_heap_new_in_arena; in PLAIN mode one mi_heap_new heap).
 *
 * Regions (lib/heap_region.c)
 *   mimalloc cannot unregister an arena (at most 64 per process), so a registered
 *   region is never unmapped: destroy returns it to a process-wide pool and a later
 *   create with the same size, node and THP setting reuses it (and its arena).
 *
 * Thread state
 *   A thread finds its tstate for h through a one-entry TLS cache (h, h->id) and,
 *   on a miss, its TLS table. Allocation then needs no lock and no shared write:
 *   the thread's mimalloc heap, its batch (monitor credit) and its counters are its
 *   own. A free goes to the freeing thread's tstate (created on first free), so a
 *   block allocated by thread A and freed by B is charged to A's batch and credited
 *   to B's; only the sums are meaningful, and they balance.
 *
 * Inline paths (cllm_heap_alloc, cllm_heap_free, cllm_heap_free_sized)
 *   The common case costs one TLS cache lookup (its id against h->fast_key, which
 *   is FAST_OFF in PLAIN mode or without size prediction), a lookup of the size
 *   class in the thread's table (0 for a class whose page is not kept yet), the
 *   batch credit and two counters on the thread's own lines, and
 *   mimalloc's call; a free checks that p lies in the region of the thread's node
 *   (one compare) and makes mimalloc's free a tail call. Everything else (another
 *   node's block, PLAIN mode, credit running out or piling up, a NULL from
 *   mimalloc, sizes over 128 KiB, bad input) goes to the general paths.
 *
 * Thread exit
 *   mimalloc deletes a thread's explicit heaps when the thread exits (their pages go
 *   to the thread's backing heap and are abandoned; blocks stay valid, any thread may
 *   free them, and another heap of the same arena reclaims the segments). A pthread
 *   key destructor retires our tstate: frees the blocks it holds for kept pages,
 *   flushes its batch to the monitor, folds its counters into the heaps object and
 *   frees it. It never touches a mi_heap_t (the destructor may run after mimalloc's
 *   own one has deleted it; freeing blocks is fine then).
 *
 * Invariants
 *   - every live tstate is on exactly one heaps object's list and in its thread's
 *     TLS table; a TLS entry is only dereferenced after (h, id) is found live under
 *     g_lock, or through the per-thread cache that destroy clears for its own thread
 *     (other threads' caches are invalidated by the id: ids are never reused);
 *   - per node: frees <= allocations and bytes freed <= bytes allocated (sums over
 *     live tstates plus the retired totals); bytes in use are charged to the
 *     monitor's HEAP category (through the batches, which may hold extra credit).
 *
 * Locks: g_lock (process-wide) guards the list of live heaps objects and every heaps
 * object's tstate list. It is taken only on slow paths (first use by a thread,
 * thread exit, create, destroy, stats, check), never while allocating or freeing,
 * and nothing is called back under it. The region pool's lock (heap_region.c) is
 * never taken while g_lock is held. Reservations reach the monitor with no lock
 * held (reclaimers may run); batches are flushed under g_lock, a release, which
 * runs no callback.
 */
#include <errno.h>
#include <mimalloc.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cllm/heap.h>

#include "internal/atomic.h"
#include "internal/fault.h"
#include "internal/prim.h"
#include "internal/util.h"
#include "heap_internal.h"

#define DEFAULT_BYTES_PER_NODE ((size_t)1 << 30)
#define MIN_ALIGN ((size_t)16)
#define REGION_ALIGN CLLM__HEAP_REGION_ALIGN

/* ---- types ------------------------------------------------------------------- */

/* Cache-line aligned and padded (another thread's tstate never shares a line with
 * this one's hot fields); the owner's hot fields come first. */
typedef struct tstate {
  /* first cache line: everything the inline alloc and free paths touch here */
  cllm_monitor_batch_t batch; /* 40 bytes */
  node_ctr_t *cur_ctr;        /* &ctr[cur_slot] */
  uintptr_t home_start;       /* region of `node` (0 in PLAIN mode) */
  size_t home_span16;         /* its size / 16 (0 in PLAIN mode): see in_home() */
  /* the rest */
  mi_heap_t *cur;       /* the heap of `node` (NULL until created; also in t_cache) */
  cllm_heaps_t *h;      /* the heaps object it belongs to */
  int cur_slot;         /* counter slot of `node` (PLAIN: 0) */
  int node;             /* node it allocates from */
  node_ctr_t *ctr;      /* [nodes], after the struct */
  uintptr_t last_seg;   /* PLAIN: the segment last added to h->pseg */
  /* cold */
  struct tstate *next, *prev; /* on h->threads (g_lock) */
  void *owner;                /* the owning thread's TLS table (identity only) */
  mi_heap_t **heap;           /* [nodes] (PLAIN: [0] only), after the counters */
  _Atomic bool has_heap;      /* a mimalloc heap exists (read by stats) */
  /* keep_pages (NULL / g_class16 without): the held blocks, [slot][class ordinal],
   * and the fast path's class table for the heap of `node` (see "kept pages") */
  void **keep;
  uint16_t *fast16;
  _Atomic uint64_t kept; /* held blocks (read by stats) */
} tstate_t;

_Static_assert(offsetof(tstate_t, home_span16) + sizeof(size_t) <= 64,
               "the fields of the inline paths share one cache line");

/* One entry of a thread's table: which tstate it has for which heaps object. */
typedef struct tls_ent {
  cllm_heaps_t *h;
  uint64_t id;
  tstate_t *ts;
} tls_ent_t;

typedef struct tls_table {
  int n, cap;
  tls_ent_t *ent;
} tls_table_t;

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static cllm_heaps_t *g_live;
static uint64_t g_next_id = 1;

static pthread_once_t g_key_once = PTHREAD_ONCE_INIT;
static pthread_key_t g_key;
static bool g_key_ok;

/* Default TLS model: initial-exec here broke the Bazel test link (the per-thread
 * cache aliased another library TLS variable), and static links relax it anyway. */
/* The last heaps object used, and the thread's heap of its node (mh: one dependent
 * load less before mimalloc's own chain of loads starts). */
typedef struct tls_cache {
  cllm_heaps_t *h;
  uint64_t id;
  tstate_t *ts;
  mi_heap_t *mh;       /* ts->cur */
  const uint16_t *c16; /* ts->fast16 */
} tls_cache_t;
static __thread tls_cache_t t_cache;
static __thread tls_table_t *t_table; /* every tstate of this thread */

#define PRED_LIMIT ((size_t)128 << 10) /* MI_MEDIUM_OBJ_SIZE_MAX in 2.0.9 */
static size_t g_pred_max; /* 0: always ask mimalloc (see "usable size without a call") */
/* Class size / 16 of each 16-byte request size up to PRED_LIMIT (predict_init). */
static uint16_t g_class16[PRED_LIMIT / 16 + 1];
/* kept pages: each class's ordinal, and the first and last table index of each. */
#define MAX_CLASSES 128
static uint8_t g_ord16[PRED_LIMIT / 16 + 1];
static uint16_t g_ord_first[MAX_CLASSES], g_ord_last[MAX_CLASSES];
static int g_nclasses;
#define FAST_OFF UINT64_MAX /* fast_key of a heaps object the inline paths never serve */

/* ThreadSanitizer cannot see mimalloc's own synchronisation (the library is not
 * instrumented): a block freed by one thread and reused by another would look like
 * a race. Tell it: a free releases, an allocation acquires, on the block's 32 MiB
 * segment (blocks never cross one, and reuse at another address in the same segment
 * is covered too). */
#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#define TSAN_SEG(p) ((void *)((uintptr_t)(p) & ~(uintptr_t)(REGION_ALIGN - 1)))
#define TSAN_ON_FREE(p) __tsan_release(TSAN_SEG(p))
#define TSAN_ON_ALLOC(p) __tsan_acquire(TSAN_SEG(p))
#else
#define TSAN_ON_FREE(p) ((void)0)
#define TSAN_ON_ALLOC(p) ((void)0)
#endif

/* ---- small helpers --------------------------------------------------------------- */

const char *cllm_heap_mode_name(cllm_heap_mode_t mode) {
  switch (mode) {
  case CLLM_HEAP_MODE_NUMA: return "numa";
  case CLLM_HEAP_MODE_SINGLE: return "single";
  case CLLM_HEAP_MODE_PLAIN: return "plain";
  }
  return "unknown";
}

static inline uint64_t ld(_Atomic uint64_t *p) { return cllm__atomic_load_relaxed(p); }
/* Owner-only increment: no read-modify-write instruction, no shared cache line. */
static inline void bump(_Atomic uint64_t *p, uint64_t v) {
  cllm__atomic_store_relaxed(p, cllm__atomic_load_relaxed(p) + v);
}

/* Counter slot of a node (PLAIN: everything is node 0's). */
static inline int ctr_slot(const cllm_heaps_t *h, int node) {
  return h->mode == CLLM_HEAP_MODE_PLAIN ? 0 : node;
}

/* Make `node` the node the thread allocates from (its heap: `mh`, may be NULL). */
static void set_home(const cllm_heaps_t *h, tstate_t *ts, int node, mi_heap_t *mh) {
  ts->node = node;
  ts->cur = mh;
  if (t_cache.ts == ts) t_cache.mh = mh;
  ts->cur_slot = ctr_slot(h, node);
  ts->cur_ctr = &ts->ctr[ts->cur_slot];
  bool region = h->mode != CLLM_HEAP_MODE_PLAIN && h->rstart[node] != NULL;
  ts->home_start = region ? (uintptr_t)h->rstart[node] : 0;
  ts->home_span16 = region ? h->region_bytes >> 4 : 0;
  if (ts->keep != NULL) { /* the fast path serves the classes held in this node's heap */
    void **k = &ts->keep[(size_t)ts->cur_slot * (size_t)g_nclasses];
    for (size_t i = 1; i <= PRED_LIMIT / 16; i++)
      ts->fast16[i] = k[g_ord16[i]] != NULL ? g_class16[i] : 0;
  }
}

static void *meta_calloc(size_t n, size_t size) {
  if (CLLM_FAULT(CLLM_FAULT_MALLOC)) return NULL;
  return calloc(n, size);
}

/* Zeroed, 64-byte aligned metadata (thread states, TLS tables). They come from
 * malloc, i.e. from the thread's own mimalloc heap in this process, and are freed by
 * our key destructor, which runs after mimalloc's thread-exit hook: the segment that
 * holds them is then abandoned by mimalloc (measured: about 85 us more per thread
 * start+exit than a bare mimalloc heap). Allocating them elsewhere (a pool of mapped
 * chunks) removed that cost, but then threads that come and go kept getting fresh
 * region segments (first touches of huge pages, very slow on this VM, in the middle
 * of later threads' work) instead of reusing the exited threads' ones; until that is
 * understood, malloc stays. */
static void *meta_alloc(size_t n) {
  void *p = NULL;
  size_t sz = (n + 63) & ~(size_t)63;
  if (CLLM_FAULT(CLLM_FAULT_MALLOC) || posix_memalign(&p, 64, sz) != 0) return NULL;
  memset(p, 0, sz);
  return p;
}

static bool is_live_locked(const cllm_heaps_t *h, uint64_t id) {
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

static void key_destructor(void *arg);
static void predict_init(void);
static void key_init(void) {
  g_key_ok = pthread_key_create(&g_key, key_destructor) == 0;
  predict_init();
}

cllm_status_t cllm_heaps_create(const cllm_heaps_config_t *cfg_in, cllm_heaps_t **out) {
  if (out == NULL) return CLLM_EINVAL;
  *out = NULL;
  cllm_heaps_config_t cfg = cfg_in != NULL ? *cfg_in : cllm_heaps_config_default();
  if (cfg.struct_size < sizeof(cllm_heaps_config_t) || cfg.max_nodes < 0 ||
      cfg.batch_bytes > SIZE_MAX / 8)
    return CLLM_EINVAL;
  size_t bytes = cfg.bytes_per_node != 0 ? cfg.bytes_per_node : DEFAULT_BYTES_PER_NODE;
  if (!cllm__align_up_checked(bytes, REGION_ALIGN, &bytes) || bytes > (SIZE_MAX >> 2))
    return CLLM_EINVAL;
  pthread_once(&g_key_once, key_init);
  if (!g_key_ok) return CLLM_ESYS;

  const cllm_topology_t *topo = cfg.topology != NULL ? cfg.topology : cllm_topology_system();
  int topo_nodes = topo != NULL ? cllm_topology_nodes(topo) : 1;
  if (topo_nodes < 1) topo_nodes = 1;
  int n = topo_nodes;
  if (cfg.max_nodes > 0 && cfg.max_nodes < n) n = cfg.max_nodes;
  if (n > CLLM_HEAP_MAX_NODES) n = CLLM_HEAP_MAX_NODES;

  cllm_heaps_t *h = meta_calloc(1, sizeof *h);
  if (h == NULL) return CLLM_ENOMEM;
  h->nodes = n;
  h->topo = topo;
  h->monitor = cfg.monitor != NULL ? cfg.monitor : cllm_monitor_global();
  h->allow_fallback = cfg.allow_fallback;
  h->keep_pages = cfg.keep_pages && g_nclasses > 0;
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
    h->pseg = meta_calloc(CLLM__HEAP_PSEG_SLOTS, sizeof *h->pseg);
    if (h->pseg == NULL) {
      free(h);
      return CLLM_ENOMEM;
    }
  }
  pthread_mutex_lock(&g_lock);
  h->id = g_next_id++;
  h->fast_key = h->mode != CLLM_HEAP_MODE_PLAIN && g_pred_max != 0 ? h->id : FAST_OFF;
  h->next_live = g_live;
  g_live = h;
  pthread_mutex_unlock(&g_lock);
  *out = h;
  return CLLM_OK;
}

static void node_sum_locked(const cllm_heaps_t *h, int i, uint64_t v[6]);
static void keep_release(const cllm_heaps_t *h, tstate_t *ts);

static void tstate_fold_locked(cllm_heaps_t *h, tstate_t *ts) {
  int slots = h->nodes;
  for (int i = 0; i < slots; i++) {
    node_ctr_t *c = &ts->ctr[i];
    h->retired[i][0] += ld(&c->allocs);
    h->retired[i][1] += ld(&c->frees);
    h->retired[i][2] += ld(&c->failures);
    h->retired[i][3] += ld(&c->fallbacks);
    h->retired[i][4] += ld(&c->bytes_alloc);
    h->retired[i][5] += ld(&c->bytes_freed);
  }
}

static void tstate_unlink_locked(cllm_heaps_t *h, tstate_t *ts) {
  if (ts->prev != NULL) ts->prev->next = ts->next;
  else h->threads = ts->next;
  if (ts->next != NULL) ts->next->prev = ts->prev;
  ts->next = ts->prev = NULL;
}

/* Flush a tstate's batch, keep its counters, unlink and free it. Never touches its
 * mimalloc heaps (see "Thread exit" above). */
static void tstate_retire_locked(cllm_heaps_t *h, tstate_t *ts) {
  keep_release(h, ts);
  cllm_status_t s = cllm_monitor_batch_flush(&ts->batch);
  if (s != CLLM_OK) cllm__warn("heaps: returning a thread's HEAP credit failed: %s", cllm_status_name(s));
  tstate_fold_locked(h, ts);
  tstate_unlink_locked(h, ts);
  free(ts);
}

static void tls_remove(cllm_heaps_t *h, uint64_t id) {
  tls_table_t *tt = t_table;
  if (t_cache.h == h && t_cache.id == id) memset(&t_cache, 0, sizeof t_cache);
  if (tt == NULL) return;
  for (int i = 0; i < tt->n; i++) {
    if (tt->ent[i].h == h && tt->ent[i].id == id) {
      tt->ent[i] = tt->ent[--tt->n];
      return;
    }
  }
}

void cllm_heaps_destroy(cllm_heaps_t *h) {
  if (h == NULL) return;
  pthread_mutex_lock(&g_lock);
  for (cllm_heaps_t **pp = &g_live; *pp != NULL; pp = &(*pp)->next_live) {
    if (*pp == h) {
      *pp = h->next_live;
      break;
    }
  }
  /* Blocks still live become invalid: give their bytes back to the monitor. */
  uint64_t in_use = 0;
  for (int i = 0; i < h->nodes; i++) {
    uint64_t v[6];
    node_sum_locked(h, i, v);
    in_use += v[4] - v[5];
  }
  while (h->threads != NULL) {
    tstate_t *ts = h->threads;
    /* The calling thread's own heaps can be destroyed (only their owner may); other
     * live threads' heaps stay with mimalloc until those threads exit. */
    keep_release(h, ts); /* before the heaps that hold them go */
    if (ts->owner != NULL && ts->owner == (void *)t_table) {
      int slots = h->mode == CLLM_HEAP_MODE_PLAIN ? 1 : h->nodes;
      for (int i = 0; i < slots; i++)
        if (ts->heap[i] != NULL) mi_heap_destroy(ts->heap[i]);
    }
    tstate_retire_locked(h, ts);
  }
  pthread_mutex_unlock(&g_lock);
  cllm__heap_regions_release(h);
  if (in_use != 0 && cllm_monitor_release(h->monitor, CLLM_CAT_HEAP, (size_t)in_use) != CLLM_OK)
    cllm__warn("heaps: returning %llu HEAP bytes of live blocks failed", (unsigned long long)in_use);
  tls_remove(h, h->id);
  free((void *)h->pseg);
  free(h);
}

cllm_heap_mode_t cllm_heaps_mode(const cllm_heaps_t *h) {
  return h != NULL ? h->mode : CLLM_HEAP_MODE_PLAIN;
}

/* ---- per-thread state ---------------------------------------------------------------- */

static void key_destructor(void *arg) {
  tls_table_t *tt = arg;
  if (tt == NULL) return;
  pthread_mutex_lock(&g_lock);
  for (int i = 0; i < tt->n; i++)
    if (is_live_locked(tt->ent[i].h, tt->ent[i].id)) tstate_retire_locked(tt->ent[i].h, tt->ent[i].ts);
  pthread_mutex_unlock(&g_lock);
  if (t_table == tt) t_table = NULL;
  memset(&t_cache, 0, sizeof t_cache);
  free(tt->ent);
  free(tt);
}

/* The node a thread starts on: its binding, else its CPU, folded onto h's nodes. */
static int initial_node(const cllm_heaps_t *h) {
  if (h->topo == NULL || h->nodes == 1) return 0;
  int node = cllm_topology_current_node(h->topo);
  if (node < 0) return 0;
  return node % h->nodes;
}

/* Find or create the calling thread's tstate for h. NULL: out of memory. */
static tstate_t *tstate_slow(cllm_heaps_t *h, bool create) {
  tls_table_t *tt = t_table;
  if (tt != NULL) {
    for (int i = 0; i < tt->n; i++) {
      if (tt->ent[i].h == h && tt->ent[i].id == h->id) {
        tstate_t *ts = tt->ent[i].ts;
        t_cache = (tls_cache_t){tt->ent[i].h, tt->ent[i].id, ts, ts->cur, ts->fast16};
        return tt->ent[i].ts;
      }
    }
  }
  if (!create || !g_key_ok) return NULL;
  if (tt == NULL) {
    tt = meta_calloc(1, sizeof *tt);
    if (tt == NULL) return NULL;
    if (pthread_setspecific(g_key, tt) != 0) {
      free(tt);
      return NULL;
    }
    t_table = tt;
  }
  int n = h->nodes;
  size_t head = (sizeof(tstate_t) + 63) & ~(size_t)63;
  size_t sz = head + (size_t)n * (sizeof(node_ctr_t) + sizeof(mi_heap_t *));
  size_t keep_at = sz, keep_n = h->keep_pages ? (size_t)n * (size_t)g_nclasses : 0;
  if (h->keep_pages) sz += keep_n * sizeof(void *) + sizeof g_class16;
  sz = (sz + 63) & ~(size_t)63;
  tstate_t *ts = meta_alloc(sz); /* zeroed, 64-byte aligned */
  if (ts == NULL) return NULL;
  ts->ctr = (node_ctr_t *)((char *)ts + head);
  ts->heap = (mi_heap_t **)(ts->ctr + n);
  if (h->keep_pages) { /* the table starts all 0: every class takes the slow path once */
    ts->keep = (void **)((char *)ts + keep_at);
    ts->fast16 = (uint16_t *)(ts->keep + keep_n);
  } else {
    ts->fast16 = g_class16;
  }
  ts->owner = tt;
  ts->h = h;
  set_home(h, ts, initial_node(h), NULL);
  if (cllm_monitor_batch_init(&ts->batch, h->monitor, CLLM_CAT_HEAP, h->batch_bytes) != CLLM_OK) {
    free(ts);
    return NULL;
  }
  pthread_mutex_lock(&g_lock);
  /* Drop entries of destroyed heaps objects (their tstates are already freed). */
  for (int i = 0; i < tt->n;) {
    if (!is_live_locked(tt->ent[i].h, tt->ent[i].id)) tt->ent[i] = tt->ent[--tt->n];
    else i++;
  }
  if (tt->n == tt->cap) {
    int cap = tt->cap ? 2 * tt->cap : 4;
    tls_ent_t *ne = CLLM_FAULT(CLLM_FAULT_MALLOC) ? NULL : realloc(tt->ent, (size_t)cap * sizeof *ne);
    if (ne == NULL) {
      pthread_mutex_unlock(&g_lock);
      free(ts);
      return NULL;
    }
    tt->ent = ne;
    tt->cap = cap;
  }
  ts->next = h->threads;
  if (h->threads != NULL) h->threads->prev = ts;
  h->threads = ts;
  tls_ent_t e = {h, h->id, ts};
  tt->ent[tt->n++] = e;
  pthread_mutex_unlock(&g_lock);
  t_cache = (tls_cache_t){h, h->id, ts, ts->cur, ts->fast16};
  return ts;
}

static inline tstate_t *tstate_get(cllm_heaps_t *h) {
  if (CLLM_LIKELY(t_cache.h == h && t_cache.id == h->id)) return t_cache.ts;
  return tstate_slow(h, true);
}

/* The thread's mimalloc heap for node `node` (created on first use). */
static mi_heap_t *heap_for(cllm_heaps_t *h, tstate_t *ts, int node) {
  int slot = h->mode == CLLM_HEAP_MODE_PLAIN ? 0 : node;
  mi_heap_t *mh = ts->heap[slot];
  if (CLLM_LIKELY(mh != NULL)) return mh;
  if (CLLM_FAULT(CLLM_FAULT_MI_HEAP)) return NULL;
  mh = h->mode == CLLM_HEAP_MODE_PLAIN ? mi_heap_new() : mi_heap_new_in_arena(h->arena[slot]);
  if (mh == NULL) return NULL;
  ts->heap[slot] = mh;
  if (node == ts->node) set_home(h, ts, node, mh);
  cllm__atomic_store_relaxed(&ts->has_heap, true);
  return mh;
}

cllm_status_t cllm_heap_attach(cllm_heaps_t *h, int node) {
  if (h == NULL) return CLLM_EINVAL;
  if (node < 0 || node >= h->nodes) return CLLM_ENOTFOUND;
  tstate_t *ts = tstate_get(h);
  if (ts == NULL) return CLLM_ENOMEM;
  mi_heap_t *mh = heap_for(h, ts, node);
  if (mh == NULL) return CLLM_ENOMEM;
  set_home(h, ts, node, mh);
  return CLLM_OK;
}

int cllm_heap_node(cllm_heaps_t *h) {
  if (h == NULL) return -1;
  tstate_t *ts = tstate_get(h);
  return ts != NULL ? ts->node : initial_node(h);
}

cllm_status_t cllm_heap_thread_flush(cllm_heaps_t *h) {
  if (h == NULL) return CLLM_EINVAL;
  tstate_t *ts = (t_cache.h == h && t_cache.id == h->id) ? t_cache.ts : tstate_slow(h, false);
  if (ts == NULL) return CLLM_OK; /* this thread holds no credit */
  if (ts->keep != NULL) { /* and no blocks for kept pages: taken again on next use */
    keep_release(h, ts);
    memset(ts->fast16, 0, sizeof g_class16);
  }
  return cllm_monitor_batch_flush(&ts->batch);
}

/* ---- allocation ------------------------------------------------------------------- */

/* ---- usable size without a call ---------------------------------------------------
 * The monitor is charged the usable size of every block. Asking mimalloc
 * (mi_usable_size) costs a library call per allocation, a large part of an
 * alloc+free pair; for small and medium requests the usable size is the size of
 * mimalloc's size class, which is computed here as mimalloc 2.0.9 computes its bins
 * (_mi_bin / _mi_bin_size). At first create the formula is checked against
 * mi_good_size for every 16-byte step up to 128 KiB and against real allocations; if
 * anything differs (another mimalloc build), prediction stays off (and with it the
 * inline fast paths: every heaps object's fast_key is FAST_OFF). Debug builds assert
 * the prediction on every allocation. */

static inline size_t predict_usable(size_t size) {
  size_t w = (size + sizeof(void *) - 1) / sizeof(void *); /* words */
  if (w <= 8) return (w <= 1 ? 1 : w) * sizeof(void *);
  size_t w1 = w - 1;
  int b = 63 - __builtin_clzll((unsigned long long)w1);
  size_t q = (w1 >> (b - 2)) & 3;
  return ((4 + q + 1) << (b - 2)) * sizeof(void *);
}

/* predict_usable(round16(bytes)) for 1 <= bytes <= PRED_LIMIT from a table (16 KiB,
 * filled by predict_init): one load instead of the formula's dozen instructions and
 * its branch on the size (the fast paths see a random mix of sizes; measured 0.5 ns
 * per alloc+free pair). Entries are class sizes / 16 (classes are 16-byte multiples
 * for 16-byte multiple requests, checked at init). */
static inline size_t class_in(const uint16_t *table, size_t bytes) {
  return (size_t)table[(bytes + 15) >> 4] << 4;
}
static inline size_t class_of(size_t bytes) { return class_in(g_class16, bytes); }

/* Usable size of the block cllm_heap_alloc(bytes) returns, or 0 when it is not
 * predicted (bytes 0, over 128 KiB, prediction off). */
static inline size_t usable_of_request(size_t bytes) {
  return bytes - 1 < g_pred_max ? class_of(bytes) : 0;
}

static void predict_init(void) {
  for (size_t sz = 16; sz <= PRED_LIMIT; sz += 16)
    if (predict_usable(sz) != mi_good_size(sz) || predict_usable(predict_usable(sz)) != predict_usable(sz) ||
        predict_usable(sz) % 16 != 0 || predict_usable(sz) / 16 > UINT16_MAX)
      return;
  mi_heap_t *t = mi_heap_new();
  if (t == NULL) return;
  bool ok = true;
  for (size_t sz = 16; sz <= PRED_LIMIT && ok; sz = sz < 2048 ? sz + 16 : sz + sz / 7 + 16) {
    size_t r = sz & ~(size_t)15;
    void *p = mi_heap_malloc(t, r);
    ok = p != NULL && mi_usable_size(p) == predict_usable(r);
    void *z = mi_heap_zalloc(t, r);
    ok = ok && z != NULL && mi_usable_size(z) == predict_usable(r);
    size_t us = predict_usable(r); /* alloc_unwind's fallback asks for the class size */
    void *c = mi_heap_malloc(t, us);
    ok = ok && c != NULL && mi_usable_size(c) == us;
  }
  mi_heap_destroy(t);
  if (!ok) return;
  for (size_t i = 1; i <= PRED_LIMIT / 16; i++) g_class16[i] = (uint16_t)(predict_usable(16 * i) / 16);
  g_pred_max = PRED_LIMIT;
  int ord = 0; /* classes grow with the index: number them (kept pages) */
  for (size_t i = 1; i <= PRED_LIMIT / 16; i++) {
    if (i > 1 && g_class16[i] != g_class16[i - 1]) ord++;
    if (ord >= MAX_CLASSES) return; /* another mimalloc build: keep no pages */
    if (i == 1 || g_class16[i] != g_class16[i - 1]) g_ord_first[ord] = (uint16_t)i;
    g_ord_last[ord] = (uint16_t)i;
    g_ord16[i] = (uint8_t)ord;
  }
  g_nclasses = ord + 1;
}

/* ---- kept pages -----------------------------------------------------------------
 * (config keep_pages; see heap.h.) A thread holds one block of each size class up to
 * 128 KiB it has allocated, per node heap, so that mimalloc never finds that class's
 * page empty and frees it. The inline fast path learns which classes are held from
 * the thread's own copy of the class table (ts->fast16, the view of its current
 * node's heap): a class not held yet reads 0, which no credit check passes, so its
 * first allocation takes the general path, which takes the held block (keep_class)
 * and opens the class to the fast path. Held blocks are uncharged and uncounted. */

/* After the general path allocated `size` (a 16-byte multiple <= PRED_LIMIT) for the
 * calling thread: hold a block of its class in the thread's current heap if none is
 * held. A failure is absorbed (the class is opened all the same; a later general
 * path call tries again). */
static __attribute__((noinline)) void keep_class(tstate_t *ts, size_t size) {
  int o = g_ord16[size >> 4];
  void **k = &ts->keep[(size_t)ts->cur_slot * (size_t)g_nclasses + (size_t)o];
  if (*k == NULL && ts->cur != NULL) {
    void *b = CLLM_FAULT(CLLM_FAULT_MI_ALLOC) ? NULL : mi_heap_malloc(ts->cur, (size_t)g_class16[size >> 4] << 4);
    if (b != NULL) {
      TSAN_ON_ALLOC(b);
      *k = b;
      cllm__atomic_store_relaxed(&ts->kept, cllm__atomic_load_relaxed(&ts->kept) + 1);
    }
  }
  for (size_t i = g_ord_first[o]; i <= g_ord_last[o]; i++) ts->fast16[i] = g_class16[i];
}

/* Free every block ts holds (its thread exits, or the heaps are destroyed: any
 * thread may free them; mimalloc takes blocks of other threads' heaps back). */
static void keep_release(const cllm_heaps_t *h, tstate_t *ts) {
  if (ts->keep == NULL) return;
  size_t n = (size_t)h->nodes * (size_t)g_nclasses;
  for (size_t i = 0; i < n; i++) {
    if (ts->keep[i] != NULL) {
      TSAN_ON_FREE(ts->keep[i]);
      mi_free(ts->keep[i]);
      ts->keep[i] = NULL;
    }
  }
  cllm__atomic_store_relaxed(&ts->kept, 0);
}


static void *fail(cllm_heaps_t *h, tstate_t *ts, cllm_status_t s) {
  if (ts != NULL) bump(&ts->ctr[ctr_slot(h, ts->node)].failures, 1);
  if (s == CLLM_EINVAL) cllm__atomic_add_relaxed(&h->einval, 1);
  cllm__set_last_status(s);
  return NULL;
}

/* mimalloc 2.0.9 serves an aligned request whose size is a multiple of the
 * alignment (up to 128 KiB) from the plain size class, assuming that such blocks are
 * aligned (alloc-aligned.c, "use regular allocation if it is guaranteed to fit the
 * alignment constraints"); they are not when their page does not start on an
 * aligned address (measured: 96 of 1152 such requests came back 128-byte aligned
 * only). A misaligned block goes back, and the request is made again 16 bytes
 * larger: no longer a multiple, so mimalloc over-allocates and aligns it itself. */
static __attribute__((noinline)) void *realign(mi_heap_t *mh, void *p, size_t size, size_t align,
                                               bool zero) {
  mi_free(p);
  size += MIN_ALIGN;
  p = zero ? mi_heap_zalloc_aligned(mh, size, align) : mi_heap_malloc_aligned(mh, size, align);
  if (p != NULL && ((uintptr_t)p & (align - 1)) != 0) { /* never seen: refuse, never misalign */
    mi_free(p);
    p = NULL;
  }
  return p;
}

static inline void *mi_alloc_in(mi_heap_t *mh, size_t size, size_t align, bool zero) {
  if (CLLM_FAULT(CLLM_FAULT_MI_ALLOC)) return NULL;
  if (align > MIN_ALIGN) {
    void *p = zero ? mi_heap_zalloc_aligned(mh, size, align) : mi_heap_malloc_aligned(mh, size, align);
    if (CLLM_UNLIKELY(((uintptr_t)p & (align - 1)) != 0)) p = realign(mh, p, size, align, zero);
    return p;
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
    mi_heap_t *other = heap_for(h, ts, *at);
    if (other != NULL) p = mi_alloc_in(other, size, align, zero);
  }
  if (p == NULL) return fail(h, ts, CLLM_ENOMEM);
  bump(&ts->ctr[ts->node].fallbacks, 1);
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
  TSAN_ON_ALLOC(p);
  size_t us = align <= MIN_ALIGN && size <= g_pred_max ? predict_usable(size) : mi_usable_size(p);
  cllm_assert_internal(us == mi_usable_size(p));
  if (CLLM_LIKELY(us <= ts->batch.credit)) {
    ts->batch.credit -= us;
  } else {
    cllm_status_t s = cllm_monitor_batch_refill_(&ts->batch, us);
    if (CLLM_UNLIKELY(s != CLLM_OK)) return alloc_refused(h, ts, p, s);
  }
  if (CLLM_UNLIKELY(h->pseg != NULL)) pseg_note(h, ts, p);
  node_ctr_t *c = &ts->ctr[at];
  bump(&c->allocs, 1);
  bump(&c->bytes_alloc, us);
  return p;
}

/* Allocate `size` (a multiple of 16) for the calling thread: the general path. */
static __attribute__((noinline)) void *alloc_impl(cllm_heaps_t *h, size_t size, size_t align,
                                                  bool zero) {
  tstate_t *ts = tstate_get(h);
  if (CLLM_UNLIKELY(ts == NULL)) return fail(h, NULL, CLLM_ENOMEM);
  mi_heap_t *mh = ts->cur;
  if (CLLM_UNLIKELY(mh == NULL) && (mh = heap_for(h, ts, ts->node)) == NULL)
    return fail(h, ts, CLLM_ENOMEM);
  void *p = alloc_account(h, ts, mi_alloc_in(mh, size, align, zero), size, align, zero);
  if (p != NULL && ts->keep != NULL && size <= g_pred_max) keep_class(ts, size);
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
  if (size == 0) return fail(h, tstate_get(h), CLLM_ENOMEM);
  return alloc_impl(h, size, 0, false);
}

/* True when the calling thread's cache holds h's state and the inline fast paths
 * may serve h. Comparing ids suffices: ids are unique and never reused, a live
 * object's fast_key is its id or FAST_OFF, and an empty cache holds id 0. */
#define FAST_STATE(h) (CLLM_LIKELY((h) != NULL) && CLLM_LIKELY(t_cache.id == (h)->fast_key))

/* The home heap returned NULL after the fast path charged the block: undo the
 * charge, then fall back or fail as the general path does. */
static __attribute__((noinline)) void *alloc_unwind(size_t us) {
  tstate_t *ts = t_cache.ts;
  cllm_heaps_t *h = ts->h;
  ts->batch.credit += us;
  node_ctr_t *c = ts->cur_ctr;
  bump(&c->allocs, (uint64_t)-1);
  bump(&c->bytes_alloc, (uint64_t)0 - us);
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
  if (FAST_STATE(h) && CLLM_LIKELY(bytes - 1 < PRED_LIMIT)) {
    tstate_t *ts = t_cache.ts;
    mi_heap_t *mh = t_cache.mh;
    /* The class from the thread's table: 0 while no block of it is held (kept
     * pages), which fails the credit check (us - 1 wraps) and takes the general path. */
    size_t us = class_in(t_cache.c16, bytes);
    if (CLLM_LIKELY(mh != NULL) && CLLM_LIKELY(us - 1 < ts->batch.credit)) {
      ts->batch.credit -= us;
      node_ctr_t *c = ts->cur_ctr;
      bump(&c->allocs, 1);
      bump(&c->bytes_alloc, us);
      /* mimalloc gets the 16-byte rounded size, not the class (the same bin): the
       * class lookup would then sit on mimalloc's critical path (measured here: a
       * pair 2 ns slower); the charge does not wait for mimalloc. */
      void *p = CLLM_FAULT(CLLM_FAULT_MI_ALLOC) ? NULL : mi_heap_malloc(mh, (bytes + 15) & ~(size_t)15);
      if (CLLM_LIKELY(p != NULL)) {
        cllm_assert_internal(us == mi_usable_size(p));
        TSAN_ON_ALLOC(p);
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
  if (!cllm__is_pow2(align) || align > CLLM_HEAP_MAX_ALIGN) return fail(h, tstate_get(h), CLLM_EINVAL);
  size_t size = round16(bytes);
  if (size == 0) return fail(h, tstate_get(h), CLLM_ENOMEM);
  return alloc_impl(h, size, align, false);
}

void *cllm_heap_calloc(cllm_heaps_t *h, size_t n, size_t size) {
  if (h == NULL) {
    cllm__set_last_status(CLLM_EINVAL);
    return NULL;
  }
  size_t total;
  if (cllm__mul_overflow(n, size, &total)) return fail(h, tstate_get(h), CLLM_EOVERFLOW);
  size_t sz = round16(total);
  if (sz == 0) return fail(h, tstate_get(h), CLLM_ENOMEM);
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

/* p is 16-byte aligned and inside the region of the thread's node: one subtract,
 * one rotate, one compare (a misaligned offset rotates its low bits to the top; NULL
 * and anything below the region wrap to huge offsets). Never true in PLAIN mode. */
static inline bool in_home(const tstate_t *ts, const void *p) {
  uintptr_t d = (uintptr_t)p - ts->home_start;
  return ((d >> 4) | (d << (sizeof d * 8 - 4))) < ts->home_span16;
}

static void foreign(cllm_heaps_t *h, const void *p, const char *what) {
  cllm__atomic_add_relaxed(&h->foreign_frees, 1);
  cllm__warn("heaps: %s of %p, which is not from these heaps: ignored", what, p);
}

static __attribute__((noinline)) void release_slow(tstate_t *ts, size_t us) {
  cllm_status_t s = cllm_monitor_batch_release(&ts->batch, us);
  if (CLLM_UNLIKELY(s != CLLM_OK))
    cllm__warn("heaps: releasing %zu HEAP bytes failed: %s", us, cllm_status_name(s));
}

/* Free p, a block of `us` usable bytes in the region of the thread's node: account
 * first, so that mimalloc's free is the last call (a tail call). */
static inline __attribute__((always_inline)) void free_home_tail(tstate_t *ts, void *p, size_t us) {
  node_ctr_t *c = ts->cur_ctr;
  bump(&c->frees, 1);
  bump(&c->bytes_freed, us);
  TSAN_ON_FREE(p);
  mi_free(p);
}

/* free_home when the batch would pass its credit bound: hand credit back first. */
static __attribute__((noinline)) void free_home_spill(tstate_t *ts, void *p, size_t us) {
  release_slow(ts, us);
  free_home_tail(ts, p, us);
}

static inline __attribute__((always_inline)) void free_home(tstate_t *ts, void *p, size_t us) {
  size_t credit = ts->batch.credit + us; /* no overflow: credit <= 2 x batch, us < region */
  if (CLLM_UNLIKELY(credit > 2 * ts->batch.batch_bytes)) { /* as cllm_monitor_batch_release */
    free_home_spill(ts, p, us);
    return;
  }
  ts->batch.credit = credit;
  free_home_tail(ts, p, us);
}

/* Usable size of p for a sized free: the class of `bytes`, or mimalloc's answer
 * where that is not predicted. A size that does not match is caller misuse. */
static inline size_t usable_sized(const void *p, size_t bytes) {
  size_t us = usable_of_request(bytes);
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
  tstate_t *ts = tstate_get(h);
  if (ts != NULL && node == ts->cur_slot) {
    free_home(ts, p, us);
    return;
  }
  TSAN_ON_FREE(p);
  mi_free(p);
  if (CLLM_LIKELY(ts != NULL)) {
    release_slow(ts, us);
    node_ctr_t *c = &ts->ctr[node];
    bump(&c->frees, 1);
    bump(&c->bytes_freed, us);
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
  if (FAST_STATE(h) && CLLM_LIKELY(bytes - 1 < PRED_LIMIT)) {
    tstate_t *ts = t_cache.ts;
    /* The thread's table, as cllm_heap_alloc reads (one table in the cache, not
     * two); a class it does not serve (0: not kept in this node's heap) goes the
     * general way. */
    size_t us = class_in(t_cache.c16, bytes);
    if (CLLM_LIKELY(in_home(ts, p)) && CLLM_LIKELY(us != 0)) {
      cllm_assert(us == mi_usable_size(p) && "cllm_heap_free_sized: bytes is not the block's size");
      free_home(ts, p, us);
      return;
    }
  }
  free_slow(h, p, true, bytes);
}

size_t cllm_heap_usable_size(cllm_heaps_t *h, const void *p) {
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
    return fail(h, tstate_get(h), CLLM_EINVAL);
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

/* ---- statistics and checks ----------------------------------------------------------- */

/* Sum the counters of node i (g_lock held). */
static void node_sum_locked(const cllm_heaps_t *h, int i, uint64_t v[6]) {
  for (int k = 0; k < 6; k++) v[k] = h->retired[i][k];
  v[1] += ld((_Atomic uint64_t *)&h->direct_frees[i]);
  v[5] += ld((_Atomic uint64_t *)&h->direct_bytes[i]);
  for (tstate_t *ts = h->threads; ts != NULL; ts = ts->next) {
    node_ctr_t *c = &ts->ctr[i];
    v[0] += ld(&c->allocs);
    v[1] += ld(&c->frees);
    v[2] += ld(&c->failures);
    v[3] += ld(&c->fallbacks);
    v[4] += ld(&c->bytes_alloc);
    v[5] += ld(&c->bytes_freed);
  }
}

cllm_status_t cllm_heaps_stats(const cllm_heaps_t *h, cllm_heaps_stats_t *st) {
  if (h == NULL || st == NULL || st->struct_size < sizeof(cllm_heaps_stats_t)) return CLLM_EINVAL;
  cllm_heaps_stats_t s;
  memset(&s, 0, sizeof s);
  s.struct_size = sizeof s;
  s.mode = h->mode;
  s.nodes = h->nodes;
  s.foreign_frees = ld((_Atomic uint64_t *)&h->foreign_frees);
  s.einval = ld((_Atomic uint64_t *)&h->einval);
  s.region_align_bytes = REGION_ALIGN;
  pthread_mutex_lock(&g_lock);
  for (tstate_t *ts = h->threads; ts != NULL; ts = ts->next) {
    if (cllm__atomic_load_relaxed(&ts->has_heap)) s.threads++;
    s.kept_blocks += cllm__atomic_load_relaxed(&ts->kept);
  }
  for (int i = 0; i < h->nodes; i++) {
    uint64_t v[6];
    node_sum_locked(h, i, v);
    cllm_heap_node_stats_t *ns = &s.node[i];
    ns->node = i;
    ns->region_bytes = h->rstart[i] != NULL ? (size_t)(h->rend[i] - h->rstart[i]) : 0;
    ns->bytes_in_use = (size_t)(v[4] - v[5]);
    ns->allocations = v[0];
    ns->frees = v[1];
    ns->failures = v[2];
    ns->fallbacks = v[3];
    ns->bound = h->os_node[i] >= 0;
    ns->os_node = h->os_node[i];
    ns->region_start = h->rstart[i];
  }
  pthread_mutex_unlock(&g_lock);
  for (int i = 0; i < h->nodes; i++) { /* smaps read: outside the lock */
    size_t hb = 0;
    if (s.node[i].region_bytes != 0 && cllm__prim_huge_bytes(h->rstart[i], s.node[i].region_bytes, &hb) == 0)
      s.node[i].huge_page_bytes = hb;
  }
  *st = s;
  return CLLM_OK;
}

cllm_status_t cllm_heaps_check(const cllm_heaps_t *h) {
  if (h == NULL) return CLLM_EINVAL;
  cllm_status_t rc = CLLM_OK;
  uint64_t in_use = 0;
  pthread_mutex_lock(&g_lock);
  if (!is_live_locked(h, h->id)) {
    cllm__error("heaps check: object is not live");
    rc = CLLM_ECORRUPT;
  }
  for (int i = 0; i < h->nodes && rc == CLLM_OK; i++) {
    uint64_t v[6];
    node_sum_locked(h, i, v);
    if (v[1] > v[0] || v[5] > v[4]) {
      cllm__error("heaps check: node %d freed more than it allocated (%llu > %llu blocks)", i,
                  (unsigned long long)v[1], (unsigned long long)v[0]);
      rc = CLLM_ECORRUPT;
      break;
    }
    in_use += v[4] - v[5];
  }
  pthread_mutex_unlock(&g_lock);
  if (rc == CLLM_OK && !cllm__heap_regions_verify(h)) rc = CLLM_ECORRUPT;
  size_t used = cllm_monitor_used(h->monitor, CLLM_CAT_HEAP);
  if (rc == CLLM_OK && used < in_use) {
    cllm__error("heaps check: monitor HEAP %zu below bytes in use %llu", used,
                (unsigned long long)in_use);
    rc = CLLM_ECORRUPT;
  }
  return rc;
}
