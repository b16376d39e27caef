/* The paged KV cache: storage, the block state machine, LRU eviction, the monitor
 * charge and reclaimer, statistics (the invariant check: lib/kv_check.c).
 *
 * Concept
 *   One mapping holds 2 x layers pools (K0, V0, K1, V1, ...), each
 *   [num_blocks][block_tokens][kv_heads][head_dim] of dtype_bytes, every pool 2 MiB
 *   aligned. It is reserved at create (MAP_NORESERVE, placed by the NUMA policy
 *   first) and committed on a high-water mark of block ids: with populate in
 *   huge-page steps (2 MiB of each pool, or 1/16 of the pool, a step ahead where the
 *   monitor allows), pre-faulted; without, by pages (MADV_NOHUGEPAGE). A commit is
 *   charged to the monitor before its pages exist, so a large capacity costs
 *   nothing until used and resident memory never passes the charge.
 *
 *   Block metadata is one flat array of kv_block_t with 32-bit links:
 *     FREE    refcount 0; above the high-water mark `hwm` (never used), or on the
 *             resident stack `free_head` (recycled, pages and charge kept), or on
 *             the given-back stack `dfree_head` (its unit's pages returned to the
 *             kernel by the reclaimer, charge released; a unit owns whole pages of
 *             every pool, huge pages with populate, and none exists when that
 *             takes more than 64 blocks: such a cache gives nothing back);
 *     ACTIVE  refcount >= 1 (held by block tables / copy entries);
 *     CACHED  refcount 0, indexed (a full block of a known prefix); unpinned ones
 *             sit in one doubly linked LRU list per priority band (head = least
 *             recently used), pinned ones in no list.
 *   A block is taken from the resident stack, then the given-back stack (its unit
 *   charged again), then above hwm, then from the LRU head of the lowest non-empty
 *   band: O(1) each (the band loop is 4 steps).
 *
 * Invariants (cllm_kv_check verifies them all)
 *   - active_count + cached_lru + cached_pinned + free_count + dfree_count +
 *     (num_blocks - hwm) == num_blocks; blocks >= hwm are FREE and untouched;
 *     hwm <= committed.
 *   - refcnt(b) == occurrences of b in block tables and copy entries.
 *   - charged_bytes == 2 x layers x committed_bytes - dfree_count x block_bytes, and
 *     the monitor holds it; given-back blocks come in whole units.
 *   - tokens_active == sum of fill over ACTIVE blocks.
 *   - indexed blocks are exactly the ones in the hash index; CACHED => indexed.
 *
 * Lock order: kv->lock is the only lock of the cache. Under it the cache calls
 * cllm_monitor_try_reserve/release (lock-free) and nothing that can call back.
 * The monitor's reclaimer (kv_reclaim) takes kv->lock; it is never run from a
 * thread holding kv->lock because the cache never uses the reclaiming reserve.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <cllm/kv_cache.h>
#include <cllm/numa.h>

#include "internal/fault.h"
#include "internal/prim.h"
#include "internal/util.h"
#include "internal/versioned.h"
#include "kv_internal.h"
#include "kv_tier_internal.h"

/* ---- small helpers ------------------------------------------------------------ */

static void *kv_calloc(size_t n, size_t size) {
  if (CLLM_FAULT(CLLM_FAULT_MALLOC)) return NULL;
  return calloc(n == 0 ? 1 : n, size);
}

/* Zeroed, 64-byte aligned (one cache line per block / slot line). */
static void *kv_calloc_lines(size_t n, size_t size) {
  size_t bytes;
  void *p = NULL;
  if (CLLM_FAULT(CLLM_FAULT_MALLOC) || cllm__mul_overflow(n == 0 ? 1 : n, size, &bytes) ||
      posix_memalign(&p, 64, bytes) != 0)
    return NULL;
  memset(p, 0, bytes);
  return p;
}

static uint32_t pow2_at_least(uint64_t x) {
  uint64_t p = 16;
  while (p < x) p <<= 1;
  return (uint32_t)p;
}

cllm_kv_config_t cllm_kv_config_default(void) {
  cllm_kv_config_t c;
  memset(&c, 0, sizeof c);
  c.struct_size = sizeof c;
  c.block_tokens = 16;
  c.numa_node = -1;
  c.populate = true;
  c.max_pinned_fraction = 0.5;
  return c;
}

/* ---- commit and charge ----------------------------------------------------------- */

/* The cache charges the monitor for the pages it makes resident, before it makes
 * them resident: every pool's committed prefix (granule-rounded), less the blocks
 * whose pages were given back. A FREE block keeps its pages and its charge. */

static size_t pool_round(const cllm_kv_cache_t *kv, size_t bytes) {
  size_t r = (bytes + kv->granule - 1) & ~(kv->granule - 1);  // bytes <= pool_stride
  return r < kv->pool_stride ? r : kv->pool_stride;
}

/* Grow every pool's committed prefix to `want` bytes: charge, then populate. A
 * failure leaves the prefix, the pages and the charge as they were. */
static cllm_status_t commit_to_locked(cllm_kv_cache_t *kv, size_t want) {
  size_t old = kv->committed_bytes, n = want - old, pools = 2u * (size_t)kv->layers;
  cllm_status_t rc = cllm_monitor_try_reserve(kv->mon, CLLM_CAT_KV, n * pools);
  if (rc != CLLM_OK) return rc;
  if (kv->populate) {
    for (size_t p = 0; p < pools; p++) {
      if (cllm__prim_populate(kv->base + p * kv->pool_stride + old, n) == 0) continue;
      for (size_t q = 0; q <= p; q++)  // give back what this call made resident
        (void)cllm__prim_decommit(kv->base + q * kv->pool_stride + old, n);
      rc = cllm_monitor_release(kv->mon, CLLM_CAT_KV, n * pools);
      cllm_assert_internal(rc == CLLM_OK);
      return CLLM_ENOMEM;
    }
  }
  kv->committed_bytes = want;
  size_t blocks = want / kv->chunk_bytes;
  kv->committed = blocks < kv->num_blocks ? (uint32_t)blocks : kv->num_blocks;
  kv->charged_bytes += n * pools;
  return CLLM_OK;
}

/* Make blocks [0, upto) committed: a step ahead where the monitor allows it (so a
 * block used before never waits on a page fault), else exactly what is needed. */
static cllm_status_t ensure_committed_locked(cllm_kv_cache_t *kv, uint32_t upto) {
  if (upto <= kv->committed) return CLLM_OK;
  size_t need = pool_round(kv, (size_t)upto * kv->chunk_bytes);
  uint64_t ahead_blocks = (uint64_t)kv->committed + kv->commit_step;
  if (ahead_blocks > kv->num_blocks) ahead_blocks = kv->num_blocks;
  size_t ahead = pool_round(kv, (size_t)ahead_blocks * kv->chunk_bytes);
  if (ahead > need) {
    cllm_status_t rc = commit_to_locked(kv, ahead);
    if (rc != CLLM_ELIMIT) return rc;
  }
  return commit_to_locked(kv, need);
}

/* ---- the free stacks (doubly linked through prev / next) ------------------------ */

static inline void free_push_locked(cllm_kv_cache_t *kv, uint32_t b, bool gone) {
  kv->blocks[b].gone = gone;
  kv__list_push_front(kv__block_links(kv), gone ? &kv->dfree_head : &kv->free_head, NULL, b);
  if (gone) kv->dfree_count++;
  else kv->free_count++;
}

static inline void free_remove_locked(cllm_kv_cache_t *kv, uint32_t b) {
  kv_block_t *bl = &kv->blocks[b];
  kv__list_remove(kv__block_links(kv), bl->gone ? &kv->dfree_head : &kv->free_head, NULL, b);
  if (bl->gone) kv->dfree_count--;
  else kv->free_count--;
  bl->gone = 0;
}

/* ---- giving pages back ------------------------------------------------------------- */

/* Units of `unit` blocks own whole pages of every pool. A unit is given back only
 * when all its blocks are FREE, resident and below hwm, and recharged whole, so
 * resident never exceeds the charge. */

/* Give back the unit of block b if it qualifies; returns its blocks (0 if not). */
static uint32_t give_back_unit_locked(cllm_kv_cache_t *kv, uint32_t b) {
  uint32_t u = kv->unit, first = b - b % u;
  if ((uint64_t)first + u > kv->hwm) return 0;
  for (uint32_t x = first; x < first + u; x++)
    if (kv->blocks[x].state != KV_FREE || kv->blocks[x].gone) return 0;
  size_t off = (size_t)first * kv->chunk_bytes, len = (size_t)u * kv->chunk_bytes;
  for (uint32_t p = 0; p < 2u * kv->layers; p++)
    if (cllm__prim_decommit(kv->base + (size_t)p * kv->pool_stride + off, len) != 0)
      return 0;  // the unit keeps its charge (some of its pages may be gone)
  for (uint32_t x = first; x < first + u; x++) {
    free_remove_locked(kv, x);
    free_push_locked(kv, x, true);
  }
  size_t bytes = (size_t)u * kv->block_bytes;
  cllm_status_t rc = cllm_monitor_release(kv->mon, CLLM_CAT_KV, bytes);
  cllm_assert_internal(rc == CLLM_OK);
  (void)rc;
  kv->charged_bytes -= bytes;
  kv->st_decommitted += u;
  return u;
}

/* Give back units of FREE blocks until at least `want` blocks went; returns how many. */
static uint32_t give_back_locked(cllm_kv_cache_t *kv, uint32_t want) {
  uint32_t done = 0;
  if (kv->unit == 0) return 0;
  for (uint32_t b = kv->free_head, next; b != KV_NONE && done < want; b = next) {
    uint32_t got = give_back_unit_locked(kv, b);
    /* the walk goes on from a block still on the resident stack */
    next = kv->blocks[b].next;
    if (got > 0) next = kv->free_head;
    done += got;
  }
  return done;
}

/* Charge the unit at the top of the given-back stack again and put its blocks back
 * on the resident stack (their pages fault in on first write). */
static cllm_status_t recharge_unit_locked(cllm_kv_cache_t *kv) {
  uint32_t u = kv->unit, first = kv->dfree_head - kv->dfree_head % u;
  size_t bytes = (size_t)u * kv->block_bytes;
  cllm_status_t rc = cllm_monitor_try_reserve(kv->mon, CLLM_CAT_KV, bytes);
  if (rc != CLLM_OK) return rc;
  for (uint32_t x = first; x < first + u; x++) {
    free_remove_locked(kv, x);
    free_push_locked(kv, x, false);
  }
  kv->charged_bytes += bytes;
  return CLLM_OK;
}

/* ---- LRU lists (per band, head = least recently used) --------------------------- */

static inline void lru_append_locked(cllm_kv_cache_t *kv, uint32_t b) {
  uint32_t band = kv->blocks[b].band;
  kv__list_push_back(kv__block_links(kv), &kv->lru_head[band], &kv->lru_tail[band], b);
  kv->cached_lru++;
}

static inline void lru_remove_locked(cllm_kv_cache_t *kv, uint32_t b) {
  uint32_t band = kv->blocks[b].band;
  kv__list_remove(kv__block_links(kv), &kv->lru_head[band], &kv->lru_tail[band], b);
  kv->cached_lru--;
}

/* The least recently used evictable CACHED block (lowest band first), or NONE. */
static uint32_t lru_victim_locked(const cllm_kv_cache_t *kv) {
  for (uint32_t band = 0; band < CLLM_KV_BANDS; band++)
    if (kv->lru_head[band] != KV_NONE) return kv->lru_head[band];
  return KV_NONE;
}

/* Take a CACHED block out of the LRU and out of the index: its content is gone. */
static void evict_cached_locked(cllm_kv_cache_t *kv, uint32_t b) {
  kv_block_t *bl = &kv->blocks[b];
  cllm_assert_internal(bl->state == KV_CACHED && !bl->pinned);
  if (kv->tier != NULL) kv__tier_on_evict_locked(kv, b);  // tier hook: count unwritten drops
  lru_remove_locked(kv, b);
  kv__index_remove_locked(kv, b);
  bl->gen++;
  bl->fill = 0;
  bl->band = 0;
  kv->st_evictions++;
}

/* ---- block state machine ------------------------------------------------------ */

cllm_status_t kv__take_blocks_locked(cllm_kv_cache_t *kv, uint32_t k, uint32_t band,
                                     uint32_t *ids) {
  if (k == 0) return CLLM_OK;
  if (!kv__blocks_available_locked(kv, k)) return CLLM_ENOMEM;
  /* FREE blocks first: resident ones, then given-back units charged again */
  uint64_t want_free = (uint64_t)kv->free_count + kv->dfree_count;
  if (want_free > k) want_free = k;
  cllm_status_t rc = CLLM_OK;
  while (kv->free_count < want_free && rc == CLLM_OK) rc = recharge_unit_locked(kv);
  if (rc != CLLM_OK && rc != CLLM_ELIMIT) return rc;
  uint32_t a = k < kv->free_count ? k : kv->free_count, rem = k - a;
  uint32_t fresh_left = kv->num_blocks - kv->hwm;
  uint32_t f = rem < fresh_left ? rem : fresh_left, c = rem - f;
  if (c > kv->cached_lru) return CLLM_ELIMIT;  // given-back blocks were needed: refused
  if (f > 0) {  // never used: commit (and charge) first
    rc = ensure_committed_locked(kv, kv->hwm + f);
    if (rc == CLLM_ELIMIT && kv->cached_lru > c) {  // the monitor refused: reuse CACHED
      uint32_t moved = f < kv->cached_lru - c ? f : kv->cached_lru - c;
      f -= moved;
      c += moved;
      rc = f == 0 ? CLLM_OK : ensure_committed_locked(kv, kv->hwm + f);
    }
    if (rc != CLLM_OK) return rc;
  }
  for (uint32_t i = 0; i < k; i++) {
    uint32_t b;
    if (i < a) {
      b = kv->free_head;
      free_remove_locked(kv, b);
    } else if (i < a + f) {
      b = kv->hwm++;
    } else {
      b = lru_victim_locked(kv);
      cllm_assert_internal(b != KV_NONE);
      evict_cached_locked(kv, b);
    }
    kv_block_t *bl = &kv->blocks[b];
    bl->state = KV_ACTIVE;
    bl->refcnt = 1;
    bl->fill = 0;
    bl->band = (uint8_t)band;
    bl->prev = bl->next = KV_NONE;
    ids[i] = b;
  }
  kv->active_count += k;
  return CLLM_OK;
}

void kv__ref_locked(cllm_kv_cache_t *kv, uint32_t b, uint32_t band) {
  kv_block_t *bl = &kv->blocks[b];
  if (bl->state == KV_CACHED) {
    if (bl->pinned) kv->cached_pinned--;
    else lru_remove_locked(kv, b);
    bl->state = KV_ACTIVE;
    bl->refcnt = 1;
    kv->active_count++;
    kv->tokens_active += bl->fill;
  } else {
    cllm_assert_internal(bl->state == KV_ACTIVE && bl->refcnt > 0);
    bl->refcnt++;
  }
  if (band > bl->band) bl->band = (uint8_t)band;
}

void kv__unref_locked(cllm_kv_cache_t *kv, uint32_t b) {
  kv_block_t *bl = &kv->blocks[b];
  cllm_assert_internal(bl->state == KV_ACTIVE && bl->refcnt > 0);
  if (--bl->refcnt > 0) return;
  kv->active_count--;
  kv->tokens_active -= bl->fill;
  if (bl->indexed) {
    bl->state = KV_CACHED;
    if (bl->pinned) kv->cached_pinned++;
    else lru_append_locked(kv, b);
    return;
  }
  bl->state = KV_FREE;
  bl->gen++;
  bl->fill = 0;
  bl->band = 0;
  free_push_locked(kv, b, false);
}

uint32_t kv__drop_cached_locked(cllm_kv_cache_t *kv, uint32_t n) {
  uint32_t done = 0;
  while (done < n) {
    uint32_t b = lru_victim_locked(kv);
    if (b == KV_NONE) break;
    evict_cached_locked(kv, b);
    kv_block_t *bl = &kv->blocks[b];
    bl->state = KV_FREE;
    free_push_locked(kv, b, false);
    done++;
  }
  return done;
}

void kv__pin_locked(cllm_kv_cache_t *kv, uint32_t b) {
  kv_block_t *bl = &kv->blocks[b];
  if (bl->pinned) return;
  if (bl->state == KV_CACHED) {
    lru_remove_locked(kv, b);
    kv->cached_pinned++;
  }
  bl->pinned = 1;
  kv->pinned_count++;
}

void kv__unpin_locked(cllm_kv_cache_t *kv, uint32_t b) {
  kv_block_t *bl = &kv->blocks[b];
  if (!bl->pinned) return;
  bl->pinned = 0;
  kv->pinned_count--;
  if (bl->state == KV_CACHED) {
    kv->cached_pinned--;
    lru_append_locked(kv, b);
  }
}

/* ---- the monitor's reclaimer ---------------------------------------------------- */

/* Frees resident memory only: FREE blocks' pages are given back first (whole units),
 * then CACHED blocks are dropped (LRU order) and theirs given back where their
 * units are then all FREE. A cache without units (unit 0) frees nothing. */
static size_t kv_reclaim(void *user, cllm_category_t cat, size_t needed) {
  (void)cat;
  cllm_kv_cache_t *kv = user;
  if (kv->unit == 0) return 0;
  kv__lock(kv);
  size_t want = needed / kv->block_bytes + (needed % kv->block_bytes != 0);
  if (want == 0) want = 1;
  if (want > kv->num_blocks) want = kv->num_blocks;
  uint32_t got = give_back_locked(kv, (uint32_t)want);
  for (uint32_t drop = (uint32_t)want - got; got < want && kv->cached_lru > 0; drop = kv->unit) {
    uint32_t dropped = kv__drop_cached_locked(kv, drop);
    kv->st_reclaimed += dropped;
    got += give_back_locked(kv, (uint32_t)want - got);
  }
  kv__unlock(kv);
  return (size_t)got * kv->block_bytes;
}

/* ---- create / destroy ------------------------------------------------------------ */

static void kv_free_all(cllm_kv_cache_t *kv) {
  if (kv->reclaimer_on) {
    cllm_status_t rc = cllm_monitor_remove_reclaimer(kv->mon, kv_reclaim, kv);
    if (rc != CLLM_OK) cllm__warn("kv cache: removing the reclaimer failed: %s", cllm_status_name(rc));
  }
  if (kv->charged_bytes > 0) {
    cllm_status_t rc = cllm_monitor_release(kv->mon, CLLM_CAT_KV, kv->charged_bytes);
    (void)rc;
    kv->charged_bytes = 0;
  }
  if (kv->slots != NULL) kv__free_slots(kv);
  free(kv->slots);
  free(kv->idmap);
  free(kv->tails);
  free(kv->hbuckets);
  free(kv->btok);
  free(kv->blocks);
  if (kv->base != NULL) (void)cllm__prim_unmap(kv->base, kv->map_bytes);
  pthread_mutex_destroy(&kv->lock);
  free(kv);
}

/* The sizes create derives from a config (shared with cllm_kv_footprint). */
typedef struct kv_shape {
  uint32_t bt;
  size_t chunk, block_bytes, nblocks, stride, map_bytes, tok_n, huge, granule;
} kv_shape_t;

/* The caller's config over the defaults (lib/internal/versioned.h: NULL is the
 * defaults, which lack the shape and are refused below like a config without it). */
static cllm_status_t kv_config_in(const cllm_kv_config_t *in, cllm_kv_config_t *cfg) {
  *cfg = cllm_kv_config_default();
  if (cllm__config_in(cfg, sizeof *cfg, in) == CLLM_OK) return CLLM_OK;
  cllm__warn("kv cache: config struct_size %zu refused (below sizeof(size_t), or unknown "
             "trailing fields set)", in->struct_size);
  return CLLM_EINVAL;
}

static cllm_status_t kv_shape(const cllm_kv_config_t *cfg, kv_shape_t *sh) {
  const char *missing = cfg->layers == 0     ? "layers"
                        : cfg->kv_heads == 0 ? "kv_heads"
                        : cfg->head_dim == 0 ? "head_dim"
                                             : NULL;
  if (missing != NULL) {
    cllm__warn("kv cache: %s is 0; it is required (a NULL config has no shape)", missing);
    return CLLM_EINVAL;
  }
  if (cfg->dtype_bytes != 1 && cfg->dtype_bytes != 2 && cfg->dtype_bytes != 4) {
    cllm__warn("kv cache: dtype_bytes is %u; set it to the size of one K/V element (1, 2 or 4)",
               cfg->dtype_bytes);
    return CLLM_EINVAL;
  }
  uint32_t bt = cfg->block_tokens == 0 ? 16 : cfg->block_tokens;
  if (!cllm__is_pow2(bt) || bt > 65536) return CLLM_EINVAL;
  if (!(cfg->max_pinned_fraction >= 0.0 && cfg->max_pinned_fraction <= 1.0)) return CLLM_EINVAL;
  if (cfg->numa_node < -1 || cfg->max_seqs > ((size_t)1 << 24)) return CLLM_EINVAL;
  if ((unsigned)cfg->numa > CLLM_KV_NUMA_NONE ||
      (cfg->numa == CLLM_KV_NUMA_BIND && cfg->numa_node < 0))
    return CLLM_EINVAL;
  size_t chunk, block_bytes, t;
  if (cllm__mul_overflow(bt, cfg->kv_heads, &t) || cllm__mul_overflow(t, cfg->head_dim, &t) ||
      cllm__mul_overflow(t, cfg->dtype_bytes, &chunk) ||
      cllm__mul_overflow(chunk, 2u * (size_t)cfg->layers, &block_bytes))
    return CLLM_EOVERFLOW;
  size_t nblocks = cfg->capacity_blocks != 0 ? cfg->capacity_blocks
                                             : cfg->capacity_bytes / block_bytes;
  if (nblocks == 0) return CLLM_EINVAL;
  if (nblocks > (size_t)UINT32_MAX - 2) return CLLM_EOVERFLOW;
  size_t huge = cllm__prim_huge_page_size();
  if (huge < 4096 || !cllm__is_pow2(huge)) huge = (size_t)2 << 20;
  size_t pool, stride, map_bytes, tok_n;
  if (cllm__mul_overflow(nblocks, chunk, &pool) || !cllm__align_up_checked(pool, huge, &stride) ||
      cllm__mul_overflow(stride, 2u * (size_t)cfg->layers, &map_bytes) ||
      cllm__mul_overflow(nblocks, bt, &tok_n) || tok_n > SIZE_MAX / sizeof(cllm_kv_token_t))
    return CLLM_EOVERFLOW;
  *sh = (kv_shape_t){.bt = bt, .chunk = chunk, .block_bytes = block_bytes, .nblocks = nblocks,
                     .stride = stride, .map_bytes = map_bytes, .tok_n = tok_n, .huge = huge,
                     .granule = cfg->populate ? huge : cllm__prim_page_size()};
  return CLLM_OK;
}

/* Apply the placement to the whole mapping while no page of it exists. */
static cllm_status_t place_pools(cllm_kv_cache_t *kv, const cllm_kv_config_t *cfg) {
  cllm_kv_numa_t want = cfg->numa;
  if (want == CLLM_KV_NUMA_AUTO)
    want = cfg->numa_node >= 0 ? CLLM_KV_NUMA_BIND : CLLM_KV_NUMA_INTERLEAVE;
  kv->numa_applied = CLLM_KV_NUMA_NONE;
  if (want == CLLM_KV_NUMA_NONE) return CLLM_OK;
  const cllm_topology_t *topo = cllm_topology_system();  // NULL: could not load (memory)
  if (topo == NULL) return want == CLLM_KV_NUMA_BIND ? CLLM_ENOMEM : CLLM_OK;
  int nodes = cllm_topology_nodes(topo);
  cllm_status_t rc;
  switch (want) {
    case CLLM_KV_NUMA_BIND:  // asked for explicitly: applied (and refused) even on one node
      rc = cllm_topology_bind_area(topo, kv->base, kv->map_bytes, cfg->numa_node);
      if (rc == CLLM_OK) kv->numa_applied = CLLM_KV_NUMA_BIND;
      return rc;
    case CLLM_KV_NUMA_LOCAL: {
      if (nodes <= 1) return CLLM_OK;  // first touch is exact on one node
      int node = cllm_topology_current_node(topo);
      rc = node < 0 ? CLLM_ENOTSUP : cllm_topology_bind_area(topo, kv->base, kv->map_bytes, node);
      if (rc == CLLM_OK) kv->numa_applied = CLLM_KV_NUMA_LOCAL;
      else kv->numa_status = rc;  // first touch by the committing thread instead
      return CLLM_OK;
    }
    default:  // INTERLEAVE
      if (nodes <= 1) return CLLM_OK;
      rc = cllm_topology_interleave_area(topo, kv->base, kv->map_bytes, NULL, 0);
      if (rc == CLLM_OK) kv->numa_applied = CLLM_KV_NUMA_INTERLEAVE;
      else if (cfg->numa == CLLM_KV_NUMA_AUTO) kv->numa_status = rc;  // the default: tolerated
      else return rc;
      return CLLM_OK;
  }
}

size_t cllm_kv_footprint(const cllm_kv_config_t *in) {
  cllm_kv_config_t c;
  kv_shape_t sh;
  if (kv_config_in(in, &c) != CLLM_OK || kv_shape(&c, &sh) != CLLM_OK) return 0;
  size_t pool = sh.nblocks * sh.chunk, per = (pool + sh.granule - 1) & ~(sh.granule - 1);
  if (per > sh.stride) per = sh.stride;
  return per * 2u * (size_t)c.layers;  // <= map_bytes: no overflow
}

cllm_status_t cllm_kv_cache_create(const cllm_kv_config_t *in, cllm_kv_cache_t **out) {
  if (out == NULL) return CLLM_EINVAL;
  *out = NULL;
  cllm_kv_config_t c;
  const cllm_kv_config_t *cfg = &c;
  kv_shape_t sh;
  cllm_status_t src = kv_config_in(in, &c);
  if (src == CLLM_OK) src = kv_shape(cfg, &sh);
  if (src != CLLM_OK) return src;
  uint32_t bt = sh.bt;
  size_t chunk = sh.chunk, block_bytes = sh.block_bytes, nblocks = sh.nblocks;
  size_t stride = sh.stride, map_bytes = sh.map_bytes, tok_n = sh.tok_n, huge = sh.huge;

  cllm_kv_cache_t *kv = kv_calloc(1, sizeof *kv);
  if (kv == NULL) return CLLM_ENOMEM;
  if (pthread_mutex_init(&kv->lock, NULL) != 0) {
    free(kv);
    return CLLM_ENOMEM;
  }
  kv->layers = cfg->layers;
  kv->kv_heads = cfg->kv_heads;
  kv->head_dim = cfg->head_dim;
  kv->dtype_bytes = cfg->dtype_bytes;
  kv->bt = bt;
  kv->bt_shift = (uint32_t)__builtin_ctz(bt);
  kv->num_blocks = (uint32_t)nblocks;
  kv->chunk_bytes = chunk;
  kv->block_bytes = block_bytes;
  kv->pool_stride = stride;
  kv->map_bytes = map_bytes;
  kv->populate = cfg->populate;
  kv->preemption = cfg->preemption;
  kv->mon = cfg->monitor != NULL ? cfg->monitor : cllm_monitor_global();
  kv->evict_fn = cfg->evict_fn;
  kv->evict_user = cfg->evict_user;
  kv->hash_fn = cfg->hash_fn != NULL ? cfg->hash_fn : kv__hash_default;
  kv->hash_user = cfg->hash_user;
  kv->granule = sh.granule;
  /* A unit owns whole pages of every pool; with populate the pools are huge-page
   * backed, and giving back part of a huge page would split it (every later access
   * of that 2 MiB then walks 4 KiB page tables): units are whole huge pages there. */
  size_t page = cfg->populate ? cllm__prim_huge_page_size() : cllm__prim_page_size();
  size_t g = chunk, r = page;
  while (r != 0) {  // g = gcd(chunk, page)
    size_t t = g % r;
    g = r;
    r = t;
  }
  kv->unit = page / g <= 64 && page / g <= nblocks ? (uint32_t)(page / g) : 0;
  size_t step = sh.granule / chunk;  // one huge page of each pool, or 1/16 of the pool
  if (step < nblocks / 16) step = nblocks / 16;
  if (step == 0) step = 1;
  if (step > nblocks) step = nblocks;
  kv->commit_step = cfg->populate ? (uint32_t)step : 0;
  kv->dfree_head = KV_NONE;
  double pin_fraction = cfg->max_pinned_fraction == 0.0 ? 0.5 : cfg->max_pinned_fraction;
  kv->pin_cap = (uint32_t)(pin_fraction * (double)nblocks);
  kv->copy_budget_blocks = kv->num_blocks;
  if (cfg->copy_budget_bytes != 0 && cfg->copy_budget_bytes / block_bytes < nblocks)
    kv->copy_budget_blocks = (uint32_t)(cfg->copy_budget_bytes / block_bytes);
  kv->free_head = KV_NONE;
  kv->slot_free_head = KV_NONE;
  kv->copy_lru_head = kv->copy_lru_tail = KV_NONE;
  for (int b = 0; b < CLLM_KV_BANDS; b++) {
    kv->lru_head[b] = kv->lru_tail[b] = KV_NONE;
    kv->seq_lru_head[b] = kv->seq_lru_tail[b] = KV_NONE;
  }
  size_t max_slots = cfg->max_seqs;
  if (max_slots == 0) max_slots = nblocks < 64 ? 64 : (nblocks > 65536 ? 65536 : nblocks);
  if (max_slots > ((size_t)1 << 24)) {
    kv_free_all(kv);
    return CLLM_EINVAL;
  }
  kv->max_slots = (uint32_t)max_slots;

  cllm_status_t rc = CLLM_ENOMEM;
  void *base = NULL;
  if (cllm__prim_map(map_bytes, huge, &base) != 0) goto fail;
  kv->base = base;
  rc = place_pools(kv, cfg);
  if (rc != CLLM_OK) goto fail;
  if (kv->populate) {
    int e = cllm__prim_advise_huge(base, map_bytes);
    if (e != 0) cllm__info("kv cache: no transparent huge pages for the pools (errno %d)", e);
  } else {  // pages are charged one by one: a huge page on a fault would pass the charge
    int e = cllm__prim_advise_nohuge(base, map_bytes);  // EINVAL: a kernel without THP
    if (e != 0) cllm__info("kv cache: MADV_NOHUGEPAGE refused (errno %d)", e);
  }
  rc = CLLM_ENOMEM;
  kv->blocks = kv_calloc_lines(nblocks, sizeof(kv_block_t));
  kv->btok = kv_calloc(tok_n, sizeof(cllm_kv_token_t));
  uint32_t nbuckets = pow2_at_least(nblocks);
  kv->hbuckets = CLLM_FAULT(CLLM_FAULT_MALLOC) ? NULL : malloc((size_t)nbuckets * sizeof(uint32_t));
  kv->slots = kv_calloc_lines(max_slots, sizeof(kv_slot_t));
  kv->tails = kv_calloc(max_slots * (size_t)bt, sizeof(cllm_kv_token_t));
  if (kv->blocks == NULL || kv->btok == NULL || kv->hbuckets == NULL || kv->slots == NULL ||
      kv->tails == NULL || kv__idmap_alloc(kv, kv->max_slots) != CLLM_OK)
    goto fail;
  memset(kv->hbuckets, 0xff, (size_t)nbuckets * sizeof(uint32_t));
  kv->hmask = nbuckets - 1;
  for (uint32_t s = 0; s < kv->max_slots; s++) {
    kv_slot_t *sl = &kv->slots[s];
    sl->lru_next = s + 1 < kv->max_slots ? s + 1 : KV_NONE;
    sl->lru_prev = sl->victim_next = KV_NONE;
    sl->gen = 1;  // a zeroed handle never names a slot
    sl->id = sl->id_inl;
    sl->table = sl->table_inl;
    sl->table_cap = KV_TABLE_INLINE;
  }
  kv->slot_free_head = 0;
  rc = cllm_monitor_add_reclaimer(kv->mon, kv_reclaim, kv);
  if (rc != CLLM_OK) goto fail;
  kv->reclaimer_on = true;
  *out = kv;
  return CLLM_OK;
fail:
  kv_free_all(kv);
  return rc;
}

void cllm_kv_cache_destroy(cllm_kv_cache_t *kv) {
  if (kv == NULL) return;
  if (kv->tier != NULL) kv__tier_on_cache_destroy(kv);  // tier hook: stops and detaches it
  kv_free_all(kv);
}

/* ---- shape and block pointers ------------------------------------------------- */

size_t cllm_kv_block_bytes(const cllm_kv_cache_t *kv) { return kv ? kv->block_bytes : 0; }
size_t cllm_kv_num_blocks(const cllm_kv_cache_t *kv) { return kv ? kv->num_blocks : 0; }
uint32_t cllm_kv_block_tokens(const cllm_kv_cache_t *kv) { return kv ? kv->bt : 0; }

cllm_status_t cllm_kv_layer_view(const cllm_kv_cache_t *kv, uint32_t layer,
                                 cllm_kv_layer_view_t *out) {
  if (kv == NULL || out == NULL) return CLLM_EINVAL;
  if (layer >= kv->layers) return CLLM_ERANGE;
  *out = (cllm_kv_layer_view_t){.k = kv__k_ptr(kv, 0, layer), .v = kv__v_ptr(kv, 0, layer),
                                .block_stride = kv->chunk_bytes,
                                .row_bytes = kv->chunk_bytes >> kv->bt_shift,
                                .block_tokens = kv->bt, .num_blocks = kv->num_blocks};
  return CLLM_OK;
}

cllm_status_t cllm_kv_block_layer(const cllm_kv_cache_t *kv, uint32_t block, uint32_t layer,
                                  void **k, void **v) {
  if (kv == NULL) return CLLM_EINVAL;
  if (block >= kv->num_blocks || layer >= kv->layers) return CLLM_ERANGE;
  if (k != NULL) *k = kv__k_ptr(kv, block, layer);
  if (v != NULL) *v = kv__v_ptr(kv, block, layer);
  return CLLM_OK;
}

/* ---- statistics ----------------------------------------------------------------- */

cllm_status_t cllm_kv_stats(const cllm_kv_cache_t *kv, cllm_kv_stats_t *out) {
  if (kv == NULL || cllm__stats_size(out, sizeof *out) == 0) return CLLM_EINVAL;
  cllm_kv_stats_t full, *st = &full;
  memset(st, 0, sizeof *st);
  kv__lock(kv);
  st->num_blocks = kv->num_blocks;
  st->block_bytes = kv->block_bytes;
  st->block_tokens = kv->bt;
  st->blocks_free = (size_t)kv->free_count + kv->dfree_count + (kv->num_blocks - kv->hwm);
  st->blocks_active = kv->active_count;
  st->blocks_cached = (size_t)kv->cached_lru + kv->cached_pinned;
  st->blocks_pinned = kv->pinned_count;
  st->blocks_committed = kv->committed;
  st->tokens_stored = kv->tokens_active;
  st->utilisation = kv->active_count == 0
                        ? 1.0
                        : (double)kv->tokens_active / ((double)kv->active_count * kv->bt);
  st->kv_bytes = ((size_t)kv->active_count + kv->cached_lru + kv->cached_pinned) * kv->block_bytes;
  st->charged_bytes = kv->charged_bytes;
  st->blocks_given_back = kv->dfree_count;
  st->given_back_blocks = kv->st_decommitted;
  st->numa_applied = kv->numa_applied;
  st->numa_status = kv->numa_status;
  st->sequences = kv->seq_count;
  st->copy_entries = kv->copy_count;
  st->copy_used_bytes = (size_t)kv->copy_blocks * kv->block_bytes;
  st->prefix_query_tokens = kv->st_prefix_query;
  st->prefix_hit_tokens = kv->st_prefix_hit;
  st->evictions = kv->st_evictions;
  st->copy_evictions = kv->st_copy_evictions;
  st->preemptions = kv->st_preemptions;
  st->cow_copies = kv->st_cow;
  st->refused = kv->st_refused;
  st->reclaimed_blocks = kv->st_reclaimed;
  if (kv->tier != NULL) kv__tier_stats_locked(kv, st);  // tier hook: tier counters
  kv__unlock(kv);
  /* base and map_bytes never change: the kernel is asked without the lock */
  int e = cllm__prim_resident_bytes(kv->base, kv->map_bytes, &st->resident_bytes);
  if (e != 0) st->resident_bytes = SIZE_MAX;
  cllm__stats_out(out, st, sizeof *st);
  return CLLM_OK;
}
