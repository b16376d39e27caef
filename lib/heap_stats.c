/* Counters, statistics, residency, footprint and the invariant check of the heaps.
 *
 * Counters live per (thread, node) in each tstate (node_ctr_t, written by the owner
 * only); a retired tstate's counters are folded into its heaps object (retired),
 * and frees by a thread without a tstate go to direct_frees/direct_bytes. A node's
 * figure is the sum of the three (cllm__heap_node_sum_locked).
 */
#include <string.h>

#include "internal/prim.h"
#include "internal/util.h"
#include "internal/versioned.h"
#include "heap_internal.h"

static void counts_add(heap_counts_t *sum, const node_ctr_t *c) {
  sum->allocs += heap_ld(&c->allocs);
  sum->frees += heap_ld(&c->frees);
  sum->failures += heap_ld(&c->failures);
  sum->fallbacks += heap_ld(&c->fallbacks);
  sum->bytes_alloc += heap_ld(&c->bytes_alloc);
  sum->bytes_freed += heap_ld(&c->bytes_freed);
}

void cllm__heap_fold_locked(cllm_heaps_t *h, const tstate_t *ts) {
  for (int i = 0; i < h->nodes; i++) counts_add(&h->retired[i], &ts->ctr[i]);
}

heap_counts_t cllm__heap_node_sum_locked(const cllm_heaps_t *h, int i) {
  heap_counts_t v = h->retired[i];
  v.frees += heap_ld(&h->direct_frees[i]);
  v.bytes_freed += heap_ld(&h->direct_bytes[i]);
  for (const tstate_t *ts = h->threads; ts != NULL; ts = ts->next) counts_add(&v, &ts->ctr[i]);
  return v;
}

size_t cllm_heaps_footprint(const cllm_heaps_config_t *cfg) {
  (void)cfg;
  return 0; /* create charges nothing: blocks are charged as they are handed out */
}

size_t cllm_heaps_thread_footprint(const cllm_heaps_config_t *cfg) {
  cllm_heaps_config_t c = cllm_heaps_config_default();
  if (cllm__config_in(&c, sizeof c, cfg) != CLLM_OK || c.batch_bytes > SIZE_MAX / 8) return 0;
  return 2 * (c.batch_bytes != 0 ? c.batch_bytes : CLLM_MONITOR_BATCH_DEFAULT_BYTES);
}

cllm_status_t cllm_heaps_stats(const cllm_heaps_t *h, cllm_heaps_stats_t *st) {
  if (h == NULL || cllm__stats_size(st, sizeof *st) == 0) return CLLM_EINVAL;
  cllm_heaps_stats_t s;
  memset(&s, 0, sizeof s);
  s.mode = h->mode;
  s.nodes = h->nodes;
  s.foreign_frees = heap_ld(&h->foreign_frees);
  s.einval = heap_ld(&h->einval);
  s.region_align_bytes = CLLM__HEAP_REGION_ALIGN;
  pthread_mutex_lock(&cllm__heap_lock);
  for (const tstate_t *ts = h->threads; ts != NULL; ts = ts->next) {
    if (cllm__atomic_load_relaxed(&ts->has_heap)) s.threads++;
    s.kept_blocks += heap_ld(&ts->kept);
  }
  for (int i = 0; i < h->nodes; i++) {
    heap_counts_t v = cllm__heap_node_sum_locked(h, i);
    cllm_heap_node_stats_t *ns = &s.node[i];
    ns->node = i;
    ns->region_bytes = h->rstart[i] != NULL ? (size_t)(h->rend[i] - h->rstart[i]) : 0;
    ns->bytes_in_use = (size_t)heap_counts_in_use(&v);
    ns->allocations = v.allocs;
    ns->frees = v.frees;
    ns->failures = v.failures;
    ns->fallbacks = v.fallbacks;
    ns->bound = h->os_node[i] >= 0;
    ns->os_node = h->os_node[i];
    ns->region_start = h->rstart[i];
    s.bytes_in_use += ns->bytes_in_use;
  }
  pthread_mutex_unlock(&cllm__heap_lock);
  for (int i = 0; i < h->nodes; i++) { /* the kernel's figures: outside the lock */
    size_t hb = 0, rb = 0;
    if (s.node[i].region_bytes == 0) continue;
    if (cllm__prim_huge_bytes(h->rstart[i], s.node[i].region_bytes, &hb) == 0)
      s.node[i].huge_page_bytes = hb;
    if (cllm__prim_resident_bytes(h->rstart[i], s.node[i].region_bytes, &rb) == 0)
      s.resident_bytes += rb;
  }
  cllm__stats_out(st, &s, sizeof s);
  return CLLM_OK;
}

/* The checks made under the heaps lock (CLLM_CHECK returns, the caller unlocks);
 * *in_use: the bytes handed out and not freed, all nodes. */
static cllm_status_t check_counts_locked(const cllm_heaps_t *h, uint64_t *in_use) {
  CLLM_CHECK(cllm__heap_is_live_locked(h, h->id), "heaps", "object is not live");
  *in_use = 0;
  for (int i = 0; i < h->nodes; i++) {
    heap_counts_t v = cllm__heap_node_sum_locked(h, i);
    CLLM_CHECK(v.frees <= v.allocs && v.bytes_freed <= v.bytes_alloc, "heaps",
               "node %d freed more than it allocated (%llu > %llu blocks)", i,
               (unsigned long long)v.frees, (unsigned long long)v.allocs);
    *in_use += heap_counts_in_use(&v);
  }
  return CLLM_OK;
}

cllm_status_t cllm_heaps_check(const cllm_heaps_t *h) {
  if (h == NULL) return CLLM_EINVAL;
  uint64_t in_use;
  pthread_mutex_lock(&cllm__heap_lock);
  cllm_status_t rc = check_counts_locked(h, &in_use);
  pthread_mutex_unlock(&cllm__heap_lock);
  if (rc != CLLM_OK) return rc;
  if (!cllm__heap_regions_verify(h)) return CLLM_ECORRUPT;
  size_t used = cllm_monitor_used(h->monitor, CLLM_CAT_HEAP);
  CLLM_CHECK(used >= in_use, "heaps", "monitor HEAP %zu below bytes in use %llu", used,
             (unsigned long long)in_use);
  return CLLM_OK;
}
