/* The pinned weights heap: one region per model, placed, committed, locked, then
 * bump-allocated and filled from files, and finally sealed read-only.
 *
 * Concept. create() does, in this order and only in this order:
 *   1. reserve capacity in the monitor (WEIGHTS);
 *   2. map the region, uncommitted (hugetlbfs first when asked; on failure the
 *      ordinary mapping, 2 MiB aligned, advised for THP);
 *   3. apply the NUMA policy with mbind while no page of the region exists;
 *   4. lock (mlock2 MLOCK_ONFAULT: each page is locked when it is first written,
 *      so locking faults nothing in and places nothing).
 * Any failure undoes what was done before it (unmap, release) and returns.
 *
 * Pages become resident only as they are needed, after the policy is in place, so
 * they land where it says: alloc and load commit the pages up to their end that
 * are not yet (MADV_POPULATE_WRITE, in steps of COMMIT_STEP on the reader threads,
 * bound to the policy's nodes), a load then preads into them; seal commits the
 * rest. So the pages below `committed` are all present, and `committed` only grows.
 *
 * Invariants (cllm_weights_check):
 *   - used <= committed <= capacity, committed == capacity once sealed; locked is
 *     0 or capacity; the monitor holds >= capacity in WEIGHTS (charged at create,
 *     before any page is resident);
 *   - every byte in [used, capacity) is zero: alloc hands out zeros, and a failed
 *     load zeroes what it wrote before returning (so "the heap as it was" holds
 *     byte for byte, not just for the bump pointer);
 *   - once sealed, the region is PROT_READ and used never changes again.
 *
 * Threads and locks: no lock. create/alloc/load/seal are external-sync; `used`,
 * `sealed` and the load counters are atomics so that stats() may run on any thread.
 * load() runs reader threads of its own and joins them before returning; they touch
 * only the destination range and the job's atomics. The progress callback runs on
 * the calling thread with no library state locked.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include <cllm/weights.h>

#include "internal/atomic.h"
#include "internal/fault.h"
#include "internal/prim.h"
#include "internal/util.h"
#include "internal/versioned.h"
#include "weights_job.h"
#include "weights_replica.h"

#define WEIGHTS_MAGIC 0x574549474854534cull /* "WEIGHTSL" */
#define MAX_READERS 64
#define AUTO_READERS_MAX 8
#define DEFAULT_CHUNK ((size_t)8 << 20)
#define MIN_CHUNK ((size_t)64 << 10)
#define MAX_CHUNK ((size_t)1 << 30)
#define COMMIT_STEP ((size_t)64 << 20)

struct cllm_weights {
  uint64_t magic;
  char *base;
  size_t capacity;                 /* one copy (what alloc and load fill) */
  int replicas;                    /* copies, back to back (REPLICATE), else 1 */
  size_t span;                     /* capacity x replicas: mapped and charged */
  size_t commit_unit;              /* the page: base page, or the hugetlbfs page */
  size_t committed;                /* [0, committed) of every copy is present */
  _Atomic size_t used;             /* bump offset */
  _Atomic bool sealed;
  cllm_monitor_t *monitor;
  const cllm_topology_t *topo;     /* NULL only if hwloc could not load the machine */
  int readers;
  size_t chunk;
  cllm_weights_progress_fn progress;
  void *progress_user;

  size_t locked;
  cllm_weights_lock_t lock_requested;
  int lock_errno;
  size_t memlock_limit;

  cllm_weights_huge_t huge_requested, huge_applied;
  int huge_errno;

  cllm_weights_numa_t numa_requested, numa_applied;
  cllm_status_t numa_status;
  int n_nodes_applied;             /* nodes of the applied policy */
  int nodes_applied[MAX_READERS];  /* topology indexes (readers bind round-robin) */
  bool bind_readers;               /* several nodes, this machine: bind reader threads */

  _Atomic uint64_t loads, loaded_bytes, load_failures;
  _Atomic int last_load_errno;
};

/* ---- names -------------------------------------------------------------------- */

/* One name switch per public enum, generated from its map in weights.h. */
#define NAME_CASE_(prefix, id, name) \
  case prefix##id:                   \
    return name;

const char *cllm_weights_numa_name(cllm_weights_numa_t p) {
  switch (p) {
#define NUMA_NAME_(id, value, name) NAME_CASE_(CLLM_WEIGHTS_NUMA_, id, name)
    CLLM_WEIGHTS_NUMA_MAP(NUMA_NAME_)
#undef NUMA_NAME_
  }
  return "unknown";
}

const char *cllm_weights_huge_name(cllm_weights_huge_t h) {
  switch (h) {
#define HUGE_NAME_(id, value, name) NAME_CASE_(CLLM_WEIGHTS_HUGE_, id, name)
    CLLM_WEIGHTS_HUGE_MAP(HUGE_NAME_)
#undef HUGE_NAME_
  }
  return "unknown";
}

const char *cllm_weights_lock_name(cllm_weights_lock_t l) {
  switch (l) {
#define LOCK_NAME_(id, value, name) NAME_CASE_(CLLM_WEIGHTS_LOCK_, id, name)
    CLLM_WEIGHTS_LOCK_MAP(LOCK_NAME_)
#undef LOCK_NAME_
  }
  return "unknown";
}
#undef NAME_CASE_

cllm_weights_config_t cllm_weights_config_default(void) {
  cllm_weights_config_t c;
  memset(&c, 0, sizeof c);
  c.struct_size = sizeof c;
  c.numa = CLLM_WEIGHTS_NUMA_LOCAL;
  c.huge_pages = CLLM_WEIGHTS_HUGE_TRANSPARENT;
  c.lock = CLLM_WEIGHTS_LOCK_OFF;
  c.reader_threads = 0;
  return c;
}

/* reader_threads == 0: the CPUs this process may run on, at most AUTO_READERS_MAX
 * (one kernel copy thread reaches ~half of memcpy bandwidth; two or more reach it). */
static int auto_readers(void) {
  cpu_set_t set;
  int n = 0;
  if (sched_getaffinity(0, sizeof set, &set) == 0) n = CPU_COUNT(&set);
  if (n <= 0) {
    long v = sysconf(_SC_NPROCESSORS_ONLN);
    n = v > 0 ? (int)v : 1;
  }
  return n < AUTO_READERS_MAX ? n : AUTO_READERS_MAX;
}

/* A chunk job over [dst, dst + total) with this heap's threads, binding and
 * progress callback (fd < 0: commit). Replicas: reads fill copy 0, on node 0. */
static cllm__weights_job_t job_of(const cllm_weights_t *w, char *dst, size_t total, size_t chunk,
                                  int fd) {
  cllm__weights_job_t j = {.dst = dst, .total = total, .chunk = chunk, .fd = fd,
                           .topo = w->topo, .threads = w->readers, .progress = w->progress,
                           .progress_user = w->progress_user};
  if (w->bind_readers) {
    j.nodes = w->nodes_applied; /* with replicas, nodes_applied[0] is node 0 */
    j.n_nodes = w->replicas > 1 ? 1 : w->n_nodes_applied;
  }
  return j;
}

/* Does first touch decide where pages land (no policy on a several-node machine)? */
static bool first_touch_places(const cllm_weights_t *w) {
  int n_nodes = w->topo != NULL ? cllm_topology_nodes(w->topo) : 1;
  return w->numa_applied == CLLM_WEIGHTS_NUMA_DEFAULT && n_nodes > 1;
}

/* Commit [committed, to) of every copy (to rounded up to the commit unit, at most
 * capacity) on the reader threads. With no policy on a several-node machine only
 * this thread touches the pages (first touch decides their node). On failure
 * `committed` is unchanged (pages already faulted stay, charged). */
static cllm_status_t commit_to(cllm_weights_t *w, size_t to) {
  to = cllm__align_down(to + w->commit_unit - 1, w->commit_unit); /* to <= capacity */
  if (to > w->capacity) to = w->capacity;
  if (to <= w->committed) return CLLM_OK;
  size_t from = w->committed;
  size_t step = COMMIT_STEP;
  if (w->huge_applied == CLLM_WEIGHTS_HUGE_HUGETLBFS) step = cllm__align_down(step, w->commit_unit);
  cllm_status_t s;
  if (w->replicas > 1) {
    s = cllm__status_of_errno(cllm__weights_replicas_fill(w->topo, w->base, w->capacity, 0,
                                                          w->replicas, from, to - from,
                                                          w->readers, step, false));
  } else {
    cllm__weights_job_t commit = job_of(w, w->base + from, to - from, step, -1);
    s = cllm__weights_job_run(&commit, false, !first_touch_places(w));
  }
  if (s == CLLM_OK) w->committed = to;
  return s;
}

/* ---- create / destroy ----------------------------------------------------------- */

static void unmap_region(void *base, size_t size) {
  /* munmap of a whole mapping we own cannot fail in practice; a second try covers
   * an injected failure, and anything worse is logged (the bytes would leak). */
  int e = cllm__prim_unmap(base, size);
  if (e != 0) e = cllm__prim_unmap(base, size);
  if (e != 0) cllm__error("weights: munmap of %zu bytes failed: %s", size, strerror(e));
}

static cllm_status_t check_config(const cllm_weights_config_t *cfg, int n_nodes) {
  if (cfg->capacity_bytes == 0) {
    cllm__warn("weights: capacity_bytes is required (> 0)");
    return CLLM_EINVAL;
  }
  if ((unsigned)cfg->numa > CLLM_WEIGHTS_NUMA_REPLICATE) return CLLM_EINVAL;
  if ((unsigned)cfg->huge_pages > CLLM_WEIGHTS_HUGE_HUGETLBFS) return CLLM_EINVAL;
  if ((unsigned)cfg->lock > CLLM_WEIGHTS_LOCK_REQUIRED) return CLLM_EINVAL;
  if (cfg->reader_threads < 0 || cfg->reader_threads > MAX_READERS) return CLLM_EINVAL;
  if (cfg->numa == CLLM_WEIGHTS_NUMA_BIND && (cfg->node < 0 || cfg->node >= n_nodes))
    return CLLM_EINVAL;
  if (cfg->numa == CLLM_WEIGHTS_NUMA_INTERLEAVE) {
    if (cfg->n_interleave_nodes < 0 || cfg->n_interleave_nodes > MAX_READERS ||
        (cfg->n_interleave_nodes > 0 && cfg->interleave_nodes == NULL))
      return CLLM_EINVAL;
    for (int i = 0; i < cfg->n_interleave_nodes; i++)
      if (cfg->interleave_nodes[i] < 0 || cfg->interleave_nodes[i] >= n_nodes) return CLLM_EINVAL;
  }
  return CLLM_OK;
}

/* Map the region: hugetlbfs when asked (falling back), else 2 MiB aligned and
 * advised for THP, else plain pages. Records what was applied. */
static cllm_status_t map_region(cllm_weights_t *w) {
  size_t hp = cllm__prim_huge_page_size();
  void *p = NULL;
  w->huge_applied = w->huge_requested;
  if (w->huge_requested == CLLM_WEIGHTS_HUGE_HUGETLBFS) {
    int e = cllm__prim_map_hugetlb(w->span, &p);
    if (e == 0) {
      w->base = p;
      return CLLM_OK;
    }
    w->huge_errno = e;
    w->huge_applied = CLLM_WEIGHTS_HUGE_TRANSPARENT;
    cllm__info("weights: hugetlbfs mapping of %zu bytes refused (%s; see "
               "/proc/sys/vm/nr_hugepages); using transparent huge pages",
               w->span, strerror(e));
  }
  bool huge = w->huge_applied == CLLM_WEIGHTS_HUGE_TRANSPARENT;
  int e = cllm__prim_map(w->span, huge ? hp : 0, &p);
  if (e != 0) return cllm__status_of_errno(e);
  w->base = p;
  if (huge) {
    int a = cllm__prim_advise_huge(p, w->span);
    if (a != 0) {
      w->huge_errno = a;
      w->huge_applied = CLLM_WEIGHTS_HUGE_OFF;
    }
  }
  return CLLM_OK;
}

/* Apply the NUMA policy before any page is touched (see the header for when a
 * policy that cannot be applied is tolerated). */
static cllm_status_t place_region(cllm_weights_t *w, const cllm_weights_config_t *cfg) {
  int n_nodes = w->topo != NULL ? cllm_topology_nodes(w->topo) : 1;
  bool this_system = w->topo != NULL && cllm_topology_is_this_system(w->topo);
  cllm_status_t s = CLLM_OK;
  w->numa_applied = CLLM_WEIGHTS_NUMA_DEFAULT;
  w->n_nodes_applied = 0;
  switch (cfg->numa) {
    case CLLM_WEIGHTS_NUMA_DEFAULT:
      return CLLM_OK;
    case CLLM_WEIGHTS_NUMA_REPLICATE:
      /* One copy (one node, or not this machine: create said why): no policy. */
      if (w->replicas == 1) return CLLM_OK;
      for (int r = 0; r < w->replicas && s == CLLM_OK; r++)
        s = cllm_topology_bind_area(w->topo, w->base + (size_t)r * w->capacity, w->capacity, r);
      if (s == CLLM_OK) {
        w->numa_applied = CLLM_WEIGHTS_NUMA_REPLICATE;
        for (int r = 0; r < w->replicas; r++) w->nodes_applied[r] = r;
        w->n_nodes_applied = w->replicas;
      }
      break;
    case CLLM_WEIGHTS_NUMA_LOCAL: {
      /* One node: first touch by this thread is exact; no policy needed. */
      if (n_nodes <= 1) return CLLM_OK;
      int node = this_system ? cllm_topology_current_node(w->topo) : -1;
      s = node < 0 ? CLLM_ENOTSUP : cllm_topology_bind_area(w->topo, w->base, w->capacity, node);
      if (s == CLLM_OK) {
        w->numa_applied = CLLM_WEIGHTS_NUMA_BIND;
        w->nodes_applied[0] = node;
        w->n_nodes_applied = 1;
      } else {
        w->numa_status = s;  /* first touch by the creating thread instead */
      }
      return CLLM_OK;
    }
    case CLLM_WEIGHTS_NUMA_BIND:
      s = w->topo == NULL ? CLLM_ENOTSUP
                          : cllm_topology_bind_area(w->topo, w->base, w->capacity, cfg->node);
      if (s == CLLM_OK) {
        w->numa_applied = CLLM_WEIGHTS_NUMA_BIND;
        w->nodes_applied[0] = cfg->node;
        w->n_nodes_applied = 1;
      }
      break;
    case CLLM_WEIGHTS_NUMA_INTERLEAVE:
      s = w->topo == NULL ? CLLM_ENOTSUP
                          : cllm_topology_interleave_area(w->topo, w->base, w->capacity,
                                                          cfg->interleave_nodes,
                                                          cfg->n_interleave_nodes);
      if (s == CLLM_OK) {
        w->numa_applied = CLLM_WEIGHTS_NUMA_INTERLEAVE;
        if (cfg->n_interleave_nodes > 0) {
          for (int i = 0; i < cfg->n_interleave_nodes; i++)
            w->nodes_applied[i] = cfg->interleave_nodes[i];
          w->n_nodes_applied = cfg->n_interleave_nodes;
        } else {
          int n = n_nodes < MAX_READERS ? n_nodes : MAX_READERS;
          for (int i = 0; i < n; i++) w->nodes_applied[i] = i;
          w->n_nodes_applied = n;
        }
      }
      break;
  }
  if (s == CLLM_OK) return CLLM_OK;
  w->numa_status = s;
  if (n_nodes <= 1) return CLLM_OK; /* every page lands on the one node anyway */
  cllm__warn("weights: cannot apply NUMA policy %s over %d nodes: %s",
             cllm_weights_numa_name(cfg->numa), n_nodes, cllm_status_str(s));
  return s;
}

/* mlock the committed region. Best effort logs once and continues. */
static cllm_status_t lock_region(cllm_weights_t *w) {
  if (w->lock_requested == CLLM_WEIGHTS_LOCK_OFF) return CLLM_OK;
  w->memlock_limit = cllm__prim_memlock_limit();
  /* mlock2(MLOCK_ONFAULT): the pages are all present, so this locks them all
   * without faulting anything in (placement already happened); it is also a raw
   * syscall, which sanitizers do not replace (ASan turns mlock into a no-op).
   * Kernels without mlock2 (< 4.4) get plain mlock. */
  int e = cllm__prim_lock(w->base, w->span, true);
  if (e == ENOSYS || e == EINVAL) e = cllm__prim_lock(w->base, w->span, false);
  if (e == 0) {
    w->locked = w->span;
    return CLLM_OK;
  }
  (void)cllm__prim_unlock(w->base, w->span); /* drop any partial lock */
  w->lock_errno = e;
  char lim[32];
  if (w->memlock_limit == SIZE_MAX) snprintf(lim, sizeof lim, "unlimited");
  else snprintf(lim, sizeof lim, "%zu bytes", w->memlock_limit);
  if (w->lock_requested == CLLM_WEIGHTS_LOCK_REQUIRED) {
    cllm__error("weights: mlock of %zu bytes failed: %s (RLIMIT_MEMLOCK %s); raise "
                "`ulimit -l` or grant CAP_IPC_LOCK",
                w->span, strerror(e), lim);
    return CLLM_ESYS;
  }
  cllm__warn("weights: mlock of %zu bytes failed: %s (RLIMIT_MEMLOCK %s); continuing "
             "unlocked (pages may be swapped out); raise `ulimit -l` or grant CAP_IPC_LOCK",
             w->span, strerror(e), lim);
  return CLLM_OK;
}

/* Take the caller's config over the defaults into *cfg (versioned.h; NULL lacks the
 * required capacity), validate it and round its capacity (create and footprint). */
static cllm_status_t sized_config(const cllm_weights_config_t *in, cllm_weights_config_t *cfg,
                                  const cllm_topology_t **topo, int *n_nodes, size_t *capacity,
                                  size_t *granule) {
  *cfg = cllm_weights_config_default();
  if (cllm__config_in(cfg, sizeof *cfg, in) != CLLM_OK) return CLLM_EINVAL;
  *topo = cfg->topology != NULL ? cfg->topology : cllm_topology_system();
  *n_nodes = *topo != NULL ? cllm_topology_nodes(*topo) : 1;
  cllm_status_t s = check_config(cfg, *n_nodes);
  if (s != CLLM_OK) return s;
  bool huge = cfg->huge_pages != CLLM_WEIGHTS_HUGE_OFF;
  *granule = huge ? cllm__prim_huge_page_size() : cllm__prim_page_size();
  return cllm__align_up_checked(cfg->capacity_bytes, *granule, capacity) ? CLLM_OK
                                                                         : CLLM_EOVERFLOW;
}

/* How many copies REPLICATE makes on this topology (1 for every other policy, one
 * node, or a topology that is not this machine, with the reason in *why). */
static int replica_count(const cllm_weights_config_t *cfg, const cllm_topology_t *topo,
                         int n_nodes, cllm_status_t *why) {
  *why = CLLM_OK;
  if (cfg->numa != CLLM_WEIGHTS_NUMA_REPLICATE || n_nodes <= 1) return 1;
  if (!cllm_topology_is_this_system(topo)) {
    *why = CLLM_ENOTSUP;
    return 1;
  }
  return n_nodes < MAX_READERS ? n_nodes : MAX_READERS;
}

size_t cllm_weights_footprint(const cllm_weights_config_t *in) {
  cllm_weights_config_t cfg;
  const cllm_topology_t *topo;
  int n_nodes;
  size_t capacity, granule, span;
  cllm_status_t why;
  if (sized_config(in, &cfg, &topo, &n_nodes, &capacity, &granule) != CLLM_OK) return 0;
  int replicas = replica_count(&cfg, topo, n_nodes, &why);
  return cllm__mul_overflow(capacity, (size_t)replicas, &span) ? 0 : span;
}

cllm_status_t cllm_weights_create(const cllm_weights_config_t *in, cllm_weights_t **out) {
  if (out == NULL) return CLLM_EINVAL;
  *out = NULL;
  cllm_weights_config_t cfg_v;
  const cllm_weights_config_t *cfg = &cfg_v;
  const cllm_topology_t *topo;
  int n_nodes;
  size_t capacity, granule;
  cllm_status_t s = sized_config(in, &cfg_v, &topo, &n_nodes, &capacity, &granule);
  if (s != CLLM_OK) return s;

  cllm_weights_t *w = CLLM_FAULT(CLLM_FAULT_MALLOC) ? NULL : calloc(1, sizeof *w);
  if (w == NULL) return CLLM_ENOMEM;
  w->magic = WEIGHTS_MAGIC;
  w->capacity = capacity;
  w->monitor = cfg->monitor != NULL ? cfg->monitor : cllm_monitor_global();
  w->topo = topo;
  w->readers = cfg->reader_threads > 0 ? cfg->reader_threads : auto_readers();
  w->chunk = cfg->read_chunk_bytes != 0 ? cfg->read_chunk_bytes : DEFAULT_CHUNK;
  w->chunk = w->chunk < MIN_CHUNK ? MIN_CHUNK : w->chunk > MAX_CHUNK ? MAX_CHUNK : w->chunk;
  w->progress = cfg->progress;
  w->progress_user = cfg->progress_user;
  w->lock_requested = cfg->lock;
  w->huge_requested = cfg->huge_pages;
  w->numa_requested = cfg->numa;
  w->replicas = replica_count(cfg, topo, n_nodes, &w->numa_status);
  if (cllm__mul_overflow(capacity, (size_t)w->replicas, &w->span)) {
    free(w);
    return CLLM_EOVERFLOW;
  }

  s = cllm_monitor_reserve(w->monitor, CLLM_CAT_WEIGHTS, w->span);
  if (s != CLLM_OK) goto fail_free;
  s = map_region(w);
  if (s != CLLM_OK) goto fail_release;
  s = place_region(w, cfg);
  if (s != CLLM_OK) goto fail_unmap;
  w->bind_readers = w->n_nodes_applied > 0 && n_nodes > 1 && cllm_topology_is_this_system(topo);
  /* Nothing is committed here: pages land on their first write (see the top). */
  w->commit_unit = w->huge_applied == CLLM_WEIGHTS_HUGE_HUGETLBFS ? granule
                                                                  : cllm__prim_page_size();
  s = lock_region(w);
  if (s != CLLM_OK) goto fail_unmap;
  *out = w;
  return CLLM_OK;

fail_unmap:
  unmap_region(w->base, w->span);
fail_release:
  CLLM_DISCARD(cllm_monitor_release(w->monitor, CLLM_CAT_WEIGHTS, w->span));
fail_free:
  w->magic = 0;
  free(w);
  return s;
}

void cllm_weights_destroy(cllm_weights_t *w) {
  if (w == NULL) return;
  if (w->magic != WEIGHTS_MAGIC) return;
  unmap_region(w->base, w->span); /* also unlocks */
  CLLM_DISCARD(cllm_monitor_release(w->monitor, CLLM_CAT_WEIGHTS, w->span));
  w->magic = 0;
  free(w);
}

const void *cllm_weights_base(const cllm_weights_t *w) { return w != NULL ? w->base : NULL; }

const void *cllm_weights_replica(const cllm_weights_t *w, int node) {
  if (w == NULL || w->magic != WEIGHTS_MAGIC || node < 0 || node >= w->replicas) return NULL;
  return w->base + (size_t)node * w->capacity;
}

const void *cllm_weights_local(const cllm_weights_t *w) {
  if (w == NULL || w->magic != WEIGHTS_MAGIC) return NULL;
  int node = w->replicas > 1 ? cllm_topology_current_node(w->topo) : 0;
  return w->base + (size_t)(node >= 0 && node < w->replicas ? node : 0) * w->capacity;
}

/* ---- allocation ------------------------------------------------------------------- */

/* Where `bytes` aligned to `align` would go: the offset, or an error. */
static cllm_status_t place(const cllm_weights_t *w, size_t bytes, size_t align, size_t *off) {
  if (align == 0) align = CLLM_WEIGHTS_ALIGN_DEFAULT;
  if (!cllm__is_pow2(align)) return CLLM_EINVAL;
  uintptr_t cur = (uintptr_t)w->base + atomic_load_explicit(&w->used, memory_order_relaxed);
  size_t start, end;
  if (!cllm__align_up_checked((size_t)cur, align, &start)) return CLLM_ENOMEM;
  start -= (uintptr_t)w->base;
  if (cllm__add_overflow(start, bytes, &end) || end > w->capacity) return CLLM_ENOMEM;
  *off = start;
  return CLLM_OK;
}

static cllm_status_t writable(const cllm_weights_t *w) {
  return atomic_load_explicit(&w->sealed, memory_order_acquire) ? CLLM_ESTATE : CLLM_OK;
}

cllm_status_t cllm_weights_alloc(cllm_weights_t *w, size_t bytes, size_t align, void **out) {
  if (out == NULL) return CLLM_EINVAL;
  *out = NULL;
  if (w == NULL || w->magic != WEIGHTS_MAGIC || bytes == 0) return CLLM_EINVAL;
  if (align != 0 && !cllm__is_pow2(align)) return CLLM_EINVAL;
  cllm_status_t s = writable(w);
  if (s != CLLM_OK) return s;
  size_t off;
  s = place(w, bytes, align, &off);
  if (s != CLLM_OK) return s;
  s = commit_to(w, off + bytes); /* alloc hands out committed zeros */
  if (s != CLLM_OK) return s;
  atomic_store_explicit(&w->used, off + bytes, memory_order_relaxed);
  *out = w->base + off;
  return CLLM_OK;
}

/* ---- loading ---------------------------------------------------------------------- */

/* May a load at `off` let its reads fault its pages in? Transparent huge pages, one
 * copy, pages placed by a policy or on a one-node machine, and the load starts at
 * the committed end (so its reads write every page up to its last commit unit). */
static bool first_write_fits(const cllm_weights_t *w, size_t off) {
  return w->huge_applied == CLLM_WEIGHTS_HUGE_TRANSPARENT && w->replicas == 1 &&
         !first_touch_places(w) && off == w->committed;
}

static cllm_status_t load_into(cllm_weights_t *w, int fd, uint64_t offset, size_t bytes,
                               void **out) {
  size_t fsize, end;
  int e = cllm__prim_file_size(fd, &fsize);
  if (e != 0) return cllm__status_of_errno(e);
  if (bytes == CLLM_WEIGHTS_TO_EOF) {
    if (offset >= (uint64_t)fsize) return CLLM_ERANGE;
    bytes = fsize - (size_t)offset;
  }
  if (cllm__add_overflow((size_t)offset, bytes, &end) || offset > (uint64_t)INT64_MAX ||
      end > (size_t)INT64_MAX)
    return CLLM_EOVERFLOW;
  if (end > fsize) return CLLM_ERANGE;
  size_t off;
  cllm_status_t s = place(w, bytes, 0, &off);
  if (s != CLLM_OK) return s;
  /* The faster way per page size (bench/RESULTS.md, weights_bench full_load): with
   * transparent huge pages the reads' own writes fault the pages in, where every
   * page of the range is written and a policy (not first touch) places them;
   * otherwise the load's pages are committed first (on the readers), then read. */
  bool direct = first_write_fits(w, off);
  if (!direct) {
    s = commit_to(w, off + bytes);
    if (s != CLLM_OK) return s;
  }
  cllm__weights_job_t j = job_of(w, w->base + off, bytes, w->chunk, fd);
  j.file_off = (off_t)offset;
  s = cllm__weights_job_run(&j, true, true);
  if (s == CLLM_OK && direct) { /* written, so present; then the last unit's tail */
    w->committed = cllm__align_down(off + bytes, w->commit_unit);
    s = commit_to(w, off + bytes);
  }
  if (s == CLLM_OK && w->replicas > 1) /* the other copies, from copy 0 (a copy cannot fail) */
    (void)cllm__weights_replicas_fill(w->topo, w->base, w->capacity, 1, w->replicas, off, bytes,
                                      w->readers, w->chunk, true);
  if (s != CLLM_OK) {
    /* Put the zeros back where chunks may have been written. */
    memset(j.dst, 0, cllm__weights_job_claimed(&j));
    e = atomic_load(&j.err);
    if (e > 0) {
      atomic_store_explicit(&w->last_load_errno, e, memory_order_relaxed);
      cllm__warn("weights: read of %zu bytes at offset %llu failed: %s", bytes,
                 (unsigned long long)offset, strerror(e));
    } else if (e == CLLM__WEIGHTS_JOB_SHORT_READ) {
      cllm__warn("weights: file ended early while loading %zu bytes at offset %llu "
                 "(truncated during the load?)", bytes, (unsigned long long)offset);
    }
    return s;
  }
  size_t top = cllm__align_down(off + bytes + w->commit_unit - 1, w->commit_unit);
  if (top > w->committed) w->committed = top; /* written, so present; top <= capacity */
  atomic_store_explicit(&w->used, off + bytes, memory_order_relaxed);
  cllm__atomic_add_relaxed(&w->loads, 1);
  cllm__atomic_add_relaxed(&w->loaded_bytes, bytes);
  *out = j.dst;
  return CLLM_OK;
}

static cllm_status_t load_check(cllm_weights_t *w, size_t bytes, void **out) {
  if (out == NULL) return CLLM_EINVAL;
  *out = NULL;
  if (w == NULL || w->magic != WEIGHTS_MAGIC || bytes == 0) return CLLM_EINVAL;
  return writable(w);
}

cllm_status_t cllm_weights_load_fd(cllm_weights_t *w, int fd, uint64_t offset, size_t bytes,
                                   void **out) {
  cllm_status_t s = load_check(w, bytes, out);
  if (s != CLLM_OK) return s;
  if (fd < 0) return CLLM_EINVAL;
  s = load_into(w, fd, offset, bytes, out);
  if (s != CLLM_OK) cllm__atomic_add_relaxed(&w->load_failures, 1);
  return s;
}

cllm_status_t cllm_weights_load_path(cllm_weights_t *w, const char *path, uint64_t offset,
                                     size_t bytes, void **out) {
  cllm_status_t s = load_check(w, bytes, out);
  if (s != CLLM_OK) return s;
  if (path == NULL) return CLLM_EINVAL;
  int fd = -1;
  int e = cllm__prim_open_ro(path, &fd);
  if (e != 0) {
    cllm__atomic_add_relaxed(&w->load_failures, 1);
    atomic_store_explicit(&w->last_load_errno, e, memory_order_relaxed);
    return cllm__status_of_errno(e);
  }
  s = load_into(w, fd, offset, bytes, out);
  if (s != CLLM_OK) cllm__atomic_add_relaxed(&w->load_failures, 1);
  close(fd);
  return s;
}

/* ---- seal ---------------------------------------------------------------------------- */

cllm_status_t cllm_weights_seal(cllm_weights_t *w) {
  if (w == NULL || w->magic != WEIGHTS_MAGIC) return CLLM_EINVAL;
  if (atomic_load_explicit(&w->sealed, memory_order_acquire)) return CLLM_OK;
  /* The pages no alloc or load reached are committed now, by the policy. */
  cllm_status_t s = commit_to(w, w->capacity);
  if (s != CLLM_OK) {
    cllm__warn("weights: committing the rest of the region at seal failed: %s",
               cllm_status_name(s));
    return s;
  }
  /* Hand-written allocations reach the other copies now (loads are there already). */
  size_t used = atomic_load_explicit(&w->used, memory_order_relaxed);
  if (w->replicas > 1 && used > 0) /* a copy cannot fail */
    (void)cllm__weights_replicas_fill(w->topo, w->base, w->capacity, 1, w->replicas, 0, used,
                                      w->readers, w->chunk, true);
  int e = cllm__prim_protect(w->base, w->span, false);
  if (e != 0) {
    cllm__warn("weights: mprotect(PROT_READ) of %zu bytes failed: %s", w->capacity,
               strerror(e));
    return CLLM_ESYS;
  }
  atomic_store_explicit(&w->sealed, true, memory_order_release);
  return CLLM_OK;
}

/* ---- stats and check ------------------------------------------------------------------ */

/* Every figure into *st (the full struct), with the page read-back over
 * [from, from + len) of the region. */
static void stats_over(const cllm_weights_t *w, cllm_weights_stats_t *st, const char *from,
                       size_t len) {
  memset(st, 0, sizeof *st);
  st->capacity_bytes = w->capacity;
  st->used_bytes = atomic_load_explicit(&w->used, memory_order_relaxed);
  st->committed_bytes = w->span;
  st->replicas = w->replicas;
  st->locked_bytes = w->locked;
  st->lock_requested = w->lock_requested;
  st->lock_errno = w->lock_errno;
  st->memlock_limit_bytes = w->memlock_limit;
  st->huge_requested = w->huge_requested;
  st->huge_applied = w->huge_applied;
  st->huge_errno = w->huge_errno;
  st->numa_requested = w->numa_requested;
  st->numa_applied = w->numa_applied;
  for (int i = 0; i < w->n_nodes_applied; i++)
    if (w->nodes_applied[i] < 64) st->numa_nodes_mask |= (uint64_t)1 << w->nodes_applied[i];
  st->numa_status = w->numa_status;
  st->sealed = atomic_load_explicit(&w->sealed, memory_order_acquire);
  st->loads = atomic_load_explicit(&w->loads, memory_order_relaxed);
  st->loaded_bytes = atomic_load_explicit(&w->loaded_bytes, memory_order_relaxed);
  st->load_failures = atomic_load_explicit(&w->load_failures, memory_order_relaxed);
  st->last_load_errno = atomic_load_explicit(&w->last_load_errno, memory_order_relaxed);
  st->page_bytes = cllm__prim_page_size();

  /* Read back from the kernel what it actually did. */
  int e = 0;
  if (w->huge_applied == CLLM_WEIGHTS_HUGE_HUGETLBFS) {
    st->huge_bytes = len; /* hugetlbfs mappings are huge pages throughout */
  } else {
    e = cllm__prim_huge_bytes(from, len, &st->huge_bytes);
  }
  if (e == 0)
    e = cllm__prim_pages_per_node(from, len, st->pages_per_node,
                                  CLLM_WEIGHTS_MAX_NODES, &st->pages_absent, &st->pages_other);
  if (e == 0) e = cllm__prim_resident_bytes(from, len, &st->resident_bytes);
  if (e != 0) {
    st->readback_status = CLLM_ESYS;
    st->huge_bytes = st->resident_bytes = 0;
    memset(st->pages_per_node, 0, sizeof st->pages_per_node);
    st->pages_absent = st->pages_other = 0;
  } else {
    for (int i = 0; i < CLLM_WEIGHTS_MAX_NODES; i++)
      if (st->pages_per_node[i] != 0) st->pages_nodes = i + 1;
  }
}

static bool stats_args_ok(const cllm_weights_t *w, const cllm_weights_stats_t *st) {
  return w != NULL && w->magic == WEIGHTS_MAGIC && cllm__stats_size(st, sizeof *st) != 0;
}

cllm_status_t cllm_weights_stats(const cllm_weights_t *w, cllm_weights_stats_t *st) {
  if (!stats_args_ok(w, st)) return CLLM_EINVAL;
  cllm_weights_stats_t s;
  stats_over(w, &s, w->base, w->span);
  cllm__stats_out(st, &s, sizeof s);
  return CLLM_OK;
}

cllm_status_t cllm_weights_replica_stats(const cllm_weights_t *w, int replica,
                                         cllm_weights_stats_t *st) {
  if (!stats_args_ok(w, st)) return CLLM_EINVAL;
  if (replica < 0 || replica >= w->replicas) return CLLM_ENOTFOUND;
  cllm_weights_stats_t s;
  stats_over(w, &s, w->base + (size_t)replica * w->capacity, w->capacity);
  cllm__stats_out(st, &s, sizeof s);
  return CLLM_OK;
}

cllm_status_t cllm_weights_check(const cllm_weights_t *w) {
  if (w == NULL) return CLLM_EINVAL;
  CLLM_CHECK(w->magic == WEIGHTS_MAGIC, "weights", "bad magic %#llx",
             (unsigned long long)w->magic);
  size_t used = atomic_load_explicit(&w->used, memory_order_relaxed);
  CLLM_CHECK(used <= w->capacity, "weights", "used %zu > capacity %zu", used, w->capacity);
  CLLM_CHECK(w->base != NULL && ((uintptr_t)w->base & (cllm__prim_page_size() - 1)) == 0,
             "weights", "region base %p not page aligned", (void *)w->base);
  bool sealed = atomic_load_explicit(&w->sealed, memory_order_acquire);
  CLLM_CHECK(w->committed >= used && w->committed <= w->capacity &&
                 (!sealed || w->committed == w->capacity),
             "weights", "committed %zu is not in [used %zu, capacity %zu]%s", w->committed, used,
             w->capacity, sealed ? " or not the capacity once sealed" : "");
  CLLM_CHECK(w->locked == 0 || w->locked == w->span, "weights",
             "locked %zu is neither 0 nor the region's %zu", w->locked, w->span);
  size_t charged = cllm_monitor_used(w->monitor, CLLM_CAT_WEIGHTS);
  CLLM_CHECK(charged >= w->span, "weights",
             "monitor holds %zu in weights, less than the %zu committed", charged, w->span);
  if (CLLM_DEBUG >= 3) {
    for (size_t i = used; i < w->capacity; i++)
      CLLM_CHECK(w->base[i] == 0, "weights", "byte %zu past used (%zu) is not zero", i, used);
  }
  return CLLM_OK;
}
