/* The KV cache's invariant check (cllm_kv_check): block states and counters, the
 * free stacks and LRU lists, the monitor charge; the slots' and the prefix index's
 * parts live beside their code (kv_seq.c, kv_prefix.c).
 *
 * Lock order: takes kv->lock (scratch is allocated before).
 */
#include <stdlib.h>

#include <cllm/kv_cache.h>

#include "internal/fault.h"
#include "internal/util.h"
#include "kv_internal.h"

/* ---- the invariant check -------------------------------------------------------- */

static cllm_status_t check_blocks_locked(const cllm_kv_cache_t *kv, const uint32_t *refs) {
  uint64_t n_free = 0, n_active = 0, n_cached = 0, n_pinned = 0, n_pinned_cached = 0, tokens = 0;
  for (uint32_t b = 0; b < kv->num_blocks; b++) {
    const kv_block_t *bl = &kv->blocks[b];
    CLLM_CHECK(refs[b] == bl->refcnt, "kv", "block %u refcount %u, held %u times", b, bl->refcnt, refs[b]);
    if (b >= kv->hwm) {
      CLLM_CHECK(bl->state == KV_FREE && bl->refcnt == 0 && !bl->indexed && bl->gen == 0, "kv",
               "never-used block %u is not pristine", b);
      continue;
    }
    if (bl->pinned) {
      n_pinned++;
      CLLM_CHECK(bl->indexed, "kv", "pinned block %u is not indexed", b);
    }
    switch (bl->state) {
      case KV_FREE:
        n_free++;
        CLLM_CHECK(bl->refcnt == 0 && !bl->indexed && !bl->pinned, "kv", "free block %u in use", b);
        break;
      case KV_ACTIVE:
        n_active++;
        tokens += bl->fill;
        CLLM_CHECK(bl->refcnt > 0 && bl->fill <= kv->bt, "kv", "active block %u refcount 0", b);
        break;
      case KV_CACHED:
        n_cached++;
        if (bl->pinned) n_pinned_cached++;
        CLLM_CHECK(bl->refcnt == 0 && bl->indexed && bl->fill == kv->bt, "kv",
                 "cached block %u: refcount %u indexed %u fill %u", b, bl->refcnt, bl->indexed,
                 bl->fill);
        break;
      default:
        CLLM_CHECK(0, "kv", "block %u has state %u", b, bl->state);
    }
    CLLM_CHECK(bl->band < CLLM_KV_BANDS, "kv", "block %u band %u", b, bl->band);
  }
  CLLM_CHECK(n_free == (uint64_t)kv->free_count + kv->dfree_count, "kv", "free blocks %llu, counters %u+%u",
           (unsigned long long)n_free, kv->free_count, kv->dfree_count);
  CLLM_CHECK(n_active == kv->active_count, "kv", "active blocks %llu, counter %u",
           (unsigned long long)n_active, kv->active_count);
  CLLM_CHECK(n_cached == (uint64_t)kv->cached_lru + kv->cached_pinned, "kv", "cached blocks %llu, counters %u+%u",
           (unsigned long long)n_cached, kv->cached_lru, kv->cached_pinned);
  CLLM_CHECK(n_pinned == kv->pinned_count && n_pinned_cached == kv->cached_pinned, "kv",
           "pinned counters");
  CLLM_CHECK(n_pinned <= kv->pin_cap, "kv", "pinned %llu over the cap %u", (unsigned long long)n_pinned,
           kv->pin_cap);
  CLLM_CHECK(tokens == kv->tokens_active, "kv", "tokens %llu, counter %zu", (unsigned long long)tokens,
           kv->tokens_active);
  CLLM_CHECK(kv->charged_bytes == 2u * (size_t)kv->layers * kv->committed_bytes -
                                    (size_t)kv->dfree_count * kv->block_bytes, "kv",
           "charged %zu bytes for %zu committed pool bytes and %u given-back blocks",
           kv->charged_bytes, kv->committed_bytes, kv->dfree_count);
  CLLM_CHECK(cllm_monitor_used(kv->mon, CLLM_CAT_KV) >= kv->charged_bytes, "kv",
           "the monitor holds less than the cache's charge");
  CLLM_CHECK(kv->hwm <= kv->committed, "kv", "blocks used past the committed mark");
  /* the free stacks */
  for (int which = 0; which < 2; which++) {
    uint32_t head = which ? kv->dfree_head : kv->free_head;
    uint32_t count = which ? kv->dfree_count : kv->free_count;
    uint64_t walked = 0;
    uint32_t prev = KV_NONE;
    for (uint32_t b = head; b != KV_NONE; prev = b, b = kv->blocks[b].next) {
      CLLM_CHECK(b < kv->hwm && kv->blocks[b].state == KV_FREE && kv->blocks[b].gone == which &&
                   kv->blocks[b].prev == prev, "kv",
               "free stack %d holds block %u", which, b);
      if (which) {  // given back whole units: every block of b's unit is given back
        uint32_t first = b - b % kv->unit;
        for (uint32_t x = first; x < first + kv->unit; x++)
          CLLM_CHECK(kv->blocks[x].state == KV_FREE && kv->blocks[x].gone, "kv",
                   "block %u of given-back unit %u is not given back", x, first);
      }
      CLLM_CHECK(++walked <= count, "kv", "free stack %d longer than its counter", which);
    }
    CLLM_CHECK(walked == count, "kv", "free stack %d: %llu, counter %u", which,
             (unsigned long long)walked, count);
  }
  uint64_t walked;
  /* the LRU lists */
  walked = 0;
  for (uint32_t band = 0; band < CLLM_KV_BANDS; band++) {
    uint32_t prev = KV_NONE;
    for (uint32_t b = kv->lru_head[band]; b != KV_NONE; b = kv->blocks[b].next) {
      const kv_block_t *bl = &kv->blocks[b];
      CLLM_CHECK(b < kv->hwm && bl->state == KV_CACHED && !bl->pinned && bl->band == band, "kv",
               "LRU band %u holds block %u (state %u)", band, b, bl->state);
      CLLM_CHECK(bl->prev == prev, "kv", "LRU back link broken at block %u", b);
      CLLM_CHECK(++walked <= kv->cached_lru, "kv", "LRU longer than its counter");
      prev = b;
    }
    CLLM_CHECK(kv->lru_tail[band] == prev, "kv", "LRU tail of band %u", band);
  }
  CLLM_CHECK(walked == kv->cached_lru, "kv", "LRU holds %llu, counter %u", (unsigned long long)walked,
           kv->cached_lru);
  return CLLM_OK;
}

cllm_status_t cllm_kv_check(const cllm_kv_cache_t *kv) {
  if (kv == NULL) return CLLM_EINVAL;
  uint32_t *refs = CLLM_FAULT(CLLM_FAULT_MALLOC) ? NULL : calloc(kv->num_blocks, sizeof(uint32_t));
  uint32_t *ovf = CLLM_FAULT(CLLM_FAULT_MALLOC) ? NULL : calloc((size_t)kv->idmask + 1, sizeof(uint32_t));
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
