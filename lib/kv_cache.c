/* The paged KV cache: storage, the block state machine, LRU eviction, the monitor
 * charge and reclaimer, statistics and the invariant check.
 *
 * Concept
 *   One mapping holds 2 x layers pools (K0, V0, K1, V1, ...), each
 *   [num_blocks][block_tokens][kv_heads][head_dim] of dtype_bytes, every pool 2 MiB
 *   aligned. It is reserved at create (MAP_NORESERVE, THP advised, bound to the NUMA
 *   node first) and committed in steps of max(2 MiB of each pool, 1/16 of the
 *   pool) on a high-water mark of block ids, so a block used before never waits on
 *   a page fault, and a large capacity costs nothing until used.
 *
 *   Block metadata is one flat array of kv_block_t with 32-bit links:
 *     FREE    refcount 0; either above the high-water mark `hwm` (never used) or in
 *             the recycled stack `free_head` (no reusable content);
 *     ACTIVE  refcount >= 1 (held by block tables / copy entries);
 *     CACHED  refcount 0, indexed (a full block of a known prefix); unpinned ones
 *             sit in one doubly linked LRU list per priority band (head = least
 *             recently used), pinned ones in no list.
 *   A block is taken from the recycled stack, then above hwm, then from the LRU
 *   head of the lowest non-empty band: O(1) each (the band loop is 4 steps).
 *
 * Invariants (cllm_kv_check verifies them all)
 *   - active_count + cached_lru + cached_pinned + free_count + (num_blocks - hwm)
 *     == num_blocks; blocks >= hwm are FREE and untouched.
 *   - refcnt(b) == occurrences of b in block tables and copy entries.
 *   - charged_bytes == (ACTIVE + CACHED) x block_bytes, and the monitor holds it,
 *     whenever the lock is free (frees are released in one call at unlock).
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
  c.dtype_bytes = 2;
  c.block_tokens = 16;
  c.numa_node = -1;
  c.populate = true;
  c.max_pinned_fraction = 0.5;
  return c;
}

/* ---- commit steps ------------------------------------------------------------- */

/* Make blocks [0, upto) committed in every pool. Failure changes nothing that
 * matters (pages populated before the failure simply stay). */
static cllm_status_t ensure_committed_locked(cllm_kv_cache_t *kv, uint32_t upto) {
  if (upto <= kv->committed) return CLLM_OK;
  if (!kv->populate) {
    kv->committed = upto;
    return CLLM_OK;
  }
  uint64_t target = (uint64_t)kv->committed + kv->commit_step;
  if (target < upto) target = upto;
  if (target > kv->num_blocks) target = kv->num_blocks;
  size_t page = cllm__prim_page_size();
  size_t start = cllm__align_down((size_t)kv->committed * kv->chunk_bytes, page);
  size_t end = (size_t)target * kv->chunk_bytes;
  end = (end + page - 1) & ~(page - 1);
  if (end > kv->pool_stride) end = kv->pool_stride;
  for (uint32_t p = 0; p < 2u * kv->layers; p++) {
    int e = cllm__prim_populate(kv->base + (size_t)p * kv->pool_stride + start, end - start);
    if (e != 0) return CLLM_ENOMEM;
  }
  kv->committed = (uint32_t)target;
  return CLLM_OK;
}

/* ---- monitor charge ----------------------------------------------------------- */

/* Blocks freed under the lock are released to the monitor once, when the lock is
 * dropped (kv__unlock); a block taken in the same call reuses such a charge without
 * touching the monitor. Outside the lock the monitor holds exactly charged_bytes. */
static cllm_status_t charge_locked(cllm_kv_cache_t *kv, size_t blocks) {
  size_t netted = blocks < kv->uncharge_pending ? blocks : kv->uncharge_pending;
  blocks -= netted;
  if (blocks == 0) {
    kv->uncharge_pending -= netted;
    return CLLM_OK;
  }
  size_t bytes = blocks * kv->block_bytes;  // <= num_blocks x block_bytes: no overflow
  cllm_status_t rc = cllm_monitor_try_reserve(kv->mon, CLLM_CAT_KV, bytes);
  if (rc != CLLM_OK) return rc;  // nothing netted either
  kv->uncharge_pending -= netted;
  kv->charged_bytes += bytes;
  return CLLM_OK;
}

static void uncharge_locked(cllm_kv_cache_t *kv, size_t blocks) { kv->uncharge_pending += blocks; }

void kv__flush_uncharge_locked(cllm_kv_cache_t *kv) {
  size_t bytes = kv->uncharge_pending * kv->block_bytes;
  cllm_status_t rc = cllm_monitor_release(kv->mon, CLLM_CAT_KV, bytes);
  cllm_assert_internal(rc == CLLM_OK);
  (void)rc;
  kv->charged_bytes -= bytes;
  kv->uncharge_pending = 0;
}

/* ---- LRU lists (per band, head = least recently used) --------------------------- */

static void lru_append_locked(cllm_kv_cache_t *kv, uint32_t b) {
  kv_block_t *bl = &kv->blocks[b];
  uint32_t band = bl->band;
  bl->next = KV_NONE;
  bl->prev = kv->lru_tail[band];
  if (kv->lru_tail[band] != KV_NONE) kv->blocks[kv->lru_tail[band]].next = b;
  else kv->lru_head[band] = b;
  kv->lru_tail[band] = b;
  kv->cached_lru++;
}

static void lru_remove_locked(cllm_kv_cache_t *kv, uint32_t b) {
  kv_block_t *bl = &kv->blocks[b];
  uint32_t band = bl->band;
  if (bl->prev != KV_NONE) kv->blocks[bl->prev].next = bl->next;
  else kv->lru_head[band] = bl->next;
  if (bl->next != KV_NONE) kv->blocks[bl->next].prev = bl->prev;
  else kv->lru_tail[band] = bl->prev;
  bl->prev = bl->next = KV_NONE;
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
  uint32_t fresh_left = kv->num_blocks - kv->hwm;
  uint64_t avail_free = (uint64_t)kv->free_count + fresh_left;
  if ((uint64_t)k > avail_free + kv->cached_lru) return CLLM_ENOMEM;
  uint32_t n_new = k < avail_free ? k : (uint32_t)avail_free;
  uint32_t n_fresh = n_new > kv->free_count ? n_new - kv->free_count : 0;
  if (n_fresh > 0) {
    cllm_status_t rc = ensure_committed_locked(kv, kv->hwm + n_fresh);
    if (rc != CLLM_OK) return rc;
  }
  cllm_status_t rc = charge_locked(kv, n_new);
  if (rc != CLLM_OK) {
    /* The monitor refused: reuse our own CACHED blocks instead of new ones (no
     * charge change), then charge only what is left. */
    uint32_t alt = k > kv->cached_lru ? k - kv->cached_lru : 0;
    if (alt < n_new && charge_locked(kv, alt) == CLLM_OK) n_new = alt;
    else return CLLM_ELIMIT;
  }
  uint32_t n_old = k - n_new;
  for (uint32_t i = 0; i < k; i++) {
    uint32_t b;
    if (i < n_new) {
      if (kv->free_head != KV_NONE) {
        b = kv->free_head;
        kv->free_head = kv->blocks[b].next;
        kv->free_count--;
      } else {
        b = kv->hwm++;
      }
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
  (void)n_old;
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
  bl->prev = KV_NONE;
  bl->next = kv->free_head;
  kv->free_head = b;
  kv->free_count++;
  uncharge_locked(kv, 1);
}

uint32_t kv__drop_cached_locked(cllm_kv_cache_t *kv, uint32_t n) {
  uint32_t done = 0;
  while (done < n) {
    uint32_t b = lru_victim_locked(kv);
    if (b == KV_NONE) break;
    evict_cached_locked(kv, b);
    kv_block_t *bl = &kv->blocks[b];
    bl->state = KV_FREE;
    bl->next = kv->free_head;
    kv->free_head = b;
    kv->free_count++;
    uncharge_locked(kv, 1);
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

static size_t kv_reclaim(void *user, cllm_category_t cat, size_t needed) {
  (void)cat;
  cllm_kv_cache_t *kv = user;
  kv__lock(kv);
  size_t want = needed / kv->block_bytes + (needed % kv->block_bytes != 0);
  if (want == 0) want = 1;
  if (want > kv->num_blocks) want = kv->num_blocks;
  uint32_t got = kv__drop_cached_locked(kv, (uint32_t)want);
  kv->st_reclaimed += got;
  kv__unlock(kv);
  return (size_t)got * kv->block_bytes;
}

/* ---- create / destroy ------------------------------------------------------------ */

static void kv_free_all(cllm_kv_cache_t *kv) {
  kv->uncharge_pending = 0;  // still part of charged_bytes, released below
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

cllm_status_t cllm_kv_cache_create(const cllm_kv_config_t *cfg, cllm_kv_cache_t **out) {
  if (out == NULL) return CLLM_EINVAL;
  *out = NULL;
  if (cfg == NULL || cfg->struct_size < sizeof(cllm_kv_config_t)) return CLLM_EINVAL;
  if (cfg->layers == 0 || cfg->kv_heads == 0 || cfg->head_dim == 0) return CLLM_EINVAL;
  if (cfg->dtype_bytes != 1 && cfg->dtype_bytes != 2 && cfg->dtype_bytes != 4) return CLLM_EINVAL;
  uint32_t bt = cfg->block_tokens == 0 ? 16 : cfg->block_tokens;
  if (!cllm__is_pow2(bt) || bt > 65536) return CLLM_EINVAL;
  if (!(cfg->max_pinned_fraction >= 0.0 && cfg->max_pinned_fraction <= 1.0)) return CLLM_EINVAL;
  if (cfg->numa_node < -1) return CLLM_EINVAL;

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
  size_t step = ((size_t)2 << 20) / chunk + 1;
  if (step < nblocks / 16) step = nblocks / 16;
  if (step > nblocks) step = nblocks;
  kv->commit_step = (uint32_t)step;
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
  if (cfg->numa_node >= 0) {
    const cllm_topology_t *topo = cllm_topology_system();  // NULL: could not load (memory)
    rc = topo == NULL ? CLLM_ENOMEM : cllm_topology_bind_area(topo, base, map_bytes, cfg->numa_node);
    if (rc != CLLM_OK) goto fail;
  }
  if (kv->populate) {
    int e = cllm__prim_advise_huge(base, map_bytes);
    if (e != 0) cllm__info("kv cache: no transparent huge pages for the pools (errno %d)", e);
  }
  rc = CLLM_ENOMEM;
  kv->blocks = kv_calloc_lines(nblocks, sizeof(kv_block_t));
  kv->btok = kv_calloc(tok_n, sizeof(cllm_kv_token_t));
  uint32_t nbuckets = pow2_at_least(nblocks);
  kv->hbuckets = CLLM_FAULT(CLLM_FAULT_MALLOC) ? NULL : malloc((size_t)nbuckets * sizeof(uint32_t));
  kv->slots = kv_calloc_lines(max_slots, sizeof(kv_slot_t));
  uint32_t nmap = pow2_at_least(2 * (uint64_t)max_slots) / 8;  // buckets of 7 entries
  kv->idmap = kv_calloc_lines(nmap, sizeof(kv_idbucket_t));
  kv->tails = kv_calloc(max_slots * (size_t)bt, sizeof(cllm_kv_token_t));
  if (kv->blocks == NULL || kv->btok == NULL || kv->hbuckets == NULL || kv->slots == NULL ||
      kv->idmap == NULL || kv->tails == NULL)
    goto fail;
  memset(kv->hbuckets, 0xff, (size_t)nbuckets * sizeof(uint32_t));
  kv->hmask = nbuckets - 1;
  kv->idmask = nmap - 1;
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
  kv_free_all(kv);
}

/* ---- shape and block pointers ------------------------------------------------- */

size_t cllm_kv_block_bytes(const cllm_kv_cache_t *kv) { return kv ? kv->block_bytes : 0; }
size_t cllm_kv_num_blocks(const cllm_kv_cache_t *kv) { return kv ? kv->num_blocks : 0; }
uint32_t cllm_kv_block_tokens(const cllm_kv_cache_t *kv) { return kv ? kv->bt : 0; }

cllm_status_t cllm_kv_block_layer(const cllm_kv_cache_t *kv, uint32_t block, uint32_t layer,
                                  void **k, void **v) {
  if (kv == NULL) return CLLM_EINVAL;
  if (block >= kv->num_blocks || layer >= kv->layers) return CLLM_ERANGE;
  if (k != NULL) *k = kv__k_ptr(kv, block, layer);
  if (v != NULL) *v = kv__v_ptr(kv, block, layer);
  return CLLM_OK;
}

/* ---- statistics ----------------------------------------------------------------- */

cllm_status_t cllm_kv_stats(cllm_kv_cache_t *kv, cllm_kv_stats_t *st) {
  if (kv == NULL || st == NULL || st->struct_size < sizeof(cllm_kv_stats_t)) return CLLM_EINVAL;
  memset(st, 0, sizeof *st);
  st->struct_size = sizeof *st;
  kv__lock(kv);
  st->num_blocks = kv->num_blocks;
  st->block_bytes = kv->block_bytes;
  st->block_tokens = kv->bt;
  st->blocks_free = (size_t)kv->free_count + (kv->num_blocks - kv->hwm);
  st->blocks_active = kv->active_count;
  st->blocks_cached = (size_t)kv->cached_lru + kv->cached_pinned;
  st->blocks_pinned = kv->pinned_count;
  st->blocks_committed = kv->populate ? kv->committed : 0;
  st->tokens_stored = kv->tokens_active;
  st->utilisation = kv->active_count == 0
                        ? 1.0
                        : (double)kv->tokens_active / ((double)kv->active_count * kv->bt);
  st->kv_bytes = kv->charged_bytes;
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
  return CLLM_OK;
}

/* ---- the invariant check -------------------------------------------------------- */

#define KV_CHECK(cond, ...)              \
  do {                                   \
    if (!(cond)) {                       \
      cllm__error("kv check: " __VA_ARGS__); \
      rc = CLLM_ECORRUPT;                \
      goto out;                          \
    }                                    \
  } while (0)

static cllm_status_t check_blocks_locked(const cllm_kv_cache_t *kv, const uint32_t *refs) {
  cllm_status_t rc = CLLM_OK;
  uint64_t n_free = 0, n_active = 0, n_cached = 0, n_pinned = 0, n_pinned_cached = 0, tokens = 0;
  for (uint32_t b = 0; b < kv->num_blocks; b++) {
    const kv_block_t *bl = &kv->blocks[b];
    KV_CHECK(refs[b] == bl->refcnt, "block %u refcount %u, held %u times", b, bl->refcnt, refs[b]);
    if (b >= kv->hwm) {
      KV_CHECK(bl->state == KV_FREE && bl->refcnt == 0 && !bl->indexed && bl->gen == 0,
               "never-used block %u is not pristine", b);
      continue;
    }
    if (bl->pinned) {
      n_pinned++;
      KV_CHECK(bl->indexed, "pinned block %u is not indexed", b);
    }
    switch (bl->state) {
      case KV_FREE:
        n_free++;
        KV_CHECK(bl->refcnt == 0 && !bl->indexed && !bl->pinned, "free block %u in use", b);
        break;
      case KV_ACTIVE:
        n_active++;
        tokens += bl->fill;
        KV_CHECK(bl->refcnt > 0 && bl->fill <= kv->bt, "active block %u refcount 0", b);
        break;
      case KV_CACHED:
        n_cached++;
        if (bl->pinned) n_pinned_cached++;
        KV_CHECK(bl->refcnt == 0 && bl->indexed && bl->fill == kv->bt,
                 "cached block %u: refcount %u indexed %u fill %u", b, bl->refcnt, bl->indexed,
                 bl->fill);
        break;
      default:
        KV_CHECK(0, "block %u has state %u", b, bl->state);
    }
    KV_CHECK(bl->band < CLLM_KV_BANDS, "block %u band %u", b, bl->band);
  }
  KV_CHECK(n_free == kv->free_count, "free blocks %llu, counter %u", (unsigned long long)n_free,
           kv->free_count);
  KV_CHECK(n_active == kv->active_count, "active blocks %llu, counter %u",
           (unsigned long long)n_active, kv->active_count);
  KV_CHECK(n_cached == (uint64_t)kv->cached_lru + kv->cached_pinned, "cached blocks %llu, counters %u+%u",
           (unsigned long long)n_cached, kv->cached_lru, kv->cached_pinned);
  KV_CHECK(n_pinned == kv->pinned_count && n_pinned_cached == kv->cached_pinned,
           "pinned counters");
  KV_CHECK(n_pinned <= kv->pin_cap, "pinned %llu over the cap %u", (unsigned long long)n_pinned,
           kv->pin_cap);
  KV_CHECK(tokens == kv->tokens_active, "tokens %llu, counter %zu", (unsigned long long)tokens,
           kv->tokens_active);
  KV_CHECK(kv->uncharge_pending == 0, "uncharged blocks left over: %zu", kv->uncharge_pending);
  KV_CHECK(kv->charged_bytes == (n_active + n_cached) * kv->block_bytes,
           "charged %zu bytes for %llu blocks", kv->charged_bytes,
           (unsigned long long)(n_active + n_cached));
  KV_CHECK(cllm_monitor_used(kv->mon, CLLM_CAT_KV) >= kv->charged_bytes,
           "the monitor holds less than the cache's charge");
  KV_CHECK(kv->hwm <= kv->committed || !kv->populate, "blocks used past the committed mark");
  /* the free stack */
  uint64_t walked = 0;
  for (uint32_t b = kv->free_head; b != KV_NONE; b = kv->blocks[b].next) {
    KV_CHECK(b < kv->hwm && kv->blocks[b].state == KV_FREE, "free stack holds block %u", b);
    KV_CHECK(++walked <= kv->free_count, "free stack longer than its counter");
  }
  KV_CHECK(walked == kv->free_count, "free stack %llu, counter %u", (unsigned long long)walked,
           kv->free_count);
  /* the LRU lists */
  walked = 0;
  for (uint32_t band = 0; band < CLLM_KV_BANDS; band++) {
    uint32_t prev = KV_NONE;
    for (uint32_t b = kv->lru_head[band]; b != KV_NONE; b = kv->blocks[b].next) {
      const kv_block_t *bl = &kv->blocks[b];
      KV_CHECK(b < kv->hwm && bl->state == KV_CACHED && !bl->pinned && bl->band == band,
               "LRU band %u holds block %u (state %u)", band, b, bl->state);
      KV_CHECK(bl->prev == prev, "LRU back link broken at block %u", b);
      KV_CHECK(++walked <= kv->cached_lru, "LRU longer than its counter");
      prev = b;
    }
    KV_CHECK(kv->lru_tail[band] == prev, "LRU tail of band %u", band);
  }
  KV_CHECK(walked == kv->cached_lru, "LRU holds %llu, counter %u", (unsigned long long)walked,
           kv->cached_lru);
out:
  return rc;
}

cllm_status_t cllm_kv_check(cllm_kv_cache_t *kv) {
  if (kv == NULL) return CLLM_EINVAL;
  uint32_t *refs = kv_calloc(kv->num_blocks, sizeof(uint32_t));
  uint32_t *ovf = kv_calloc((size_t)kv->idmask + 1, sizeof(uint32_t));
  if (refs == NULL || ovf == NULL) {
    free(refs);
    free(ovf);
    return CLLM_ENOMEM;
  }
  kv__lock(kv);
  cllm_status_t rc = kv__check_slots_locked(kv, refs, ovf);
  if (rc == CLLM_OK) rc = check_blocks_locked(kv, refs);
  if (rc == CLLM_OK) rc = kv__check_index_locked(kv);
  kv__unlock(kv);
  free(refs);
  free(ovf);
  return rc;
}
