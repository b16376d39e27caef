/* The seed's copy API on top of the paged KV cache. The seed is the original C++ design
 * this library keeps compatible with; its KVCacheMemoryManager copied whole entries.
 *
 * Concept
 *   An entry is a request id with one K and one V float array, copied in by put and
 *   out by get. It lives in a slot of kind K_COPY (same id namespace as sequences)
 *   and holds ACTIVE, unindexed blocks: its key bytes fill the K chunks of its
 *   blocks in (block, layer) order, its value bytes the V chunks, so an entry of
 *   k keys and v values takes max(ceil(4k / C), ceil(4v / C)) blocks, C = layers x
 *   one block's K bytes of one layer.
 *
 *   Behaviour (the seed's, with its three bugs fixed):
 *   - put evicts least recently used entries until the entry fits the budget
 *     (copy_budget_bytes or the whole cache), in blocks; an entry larger than the
 *     budget is refused before anything is evicted;
 *   - get makes the entry most recently used (the seed's never moved it: FIFO);
 *   - put of an existing id replaces it in place, reusing its blocks, so bytes are
 *     never double counted (the seed added the new size on top of the old);
 *   - the eviction callback gets each evicted id after the lock is dropped.
 *   Entries are kept in one doubly linked LRU (32-bit links through the slots):
 *   touch, insert and evict are O(1) per entry.
 *
 * Invariant: copy_blocks == sum of the entries' blocks <= copy_budget_blocks.
 * Lock order: kv->lock only; data is copied under it.
 */
#include <string.h>

#include "internal/util.h"
#include "kv_internal.h"

/* ---- the entry LRU (head = least recently used) ----------------------------------- */

static void copy_lru_remove_locked(cllm_kv_cache_t *kv, uint32_t s) {
  kv__list_remove(kv__slot_links(kv), &kv->copy_lru_head, &kv->copy_lru_tail, s);
}

static void copy_lru_append_locked(cllm_kv_cache_t *kv, uint32_t s) {
  kv__list_push_back(kv__slot_links(kv), &kv->copy_lru_head, &kv->copy_lru_tail, s);
}

/* Is s in the entry LRU? (New entries are not, until the put succeeds.) */
static bool copy_lru_member(const cllm_kv_cache_t *kv, uint32_t s) {
  const kv_slot_t *sl = &kv->slots[s];
  return sl->lru_prev != KV_NONE || kv->copy_lru_head == s;
}

void kv__copy_drop_locked(cllm_kv_cache_t *kv, uint32_t s) {
  kv_slot_t *sl = &kv->slots[s];
  for (uint32_t i = sl->nb; i-- > 0;) kv__unref_locked(kv, sl->table[i]);
  kv->copy_blocks -= sl->nb;
  sl->nb = 0;
  if (copy_lru_member(kv, s)) copy_lru_remove_locked(kv, s);
}

/* Evict the least recently used entry other than `keep`; false if there is none. */
static bool evict_lru_entry_locked(cllm_kv_cache_t *kv, uint32_t keep, kv_victims_t *v) {
  uint32_t s = kv->copy_lru_head;
  if (s == keep && s != KV_NONE) s = kv->slots[s].lru_next;
  if (s == KV_NONE) return false;
  kv__copy_drop_locked(kv, s);
  kv__victim_push_locked(kv, v, s);
  kv__slot_retire_locked(kv, s);
  kv->st_copy_evictions++;
  return true;
}

/* Copy `bytes` between a flat array and the (K or V) chunks of the entry's blocks. */
static void copy_chunks(const cllm_kv_cache_t *kv, const uint32_t *table, bool values,
                        char *flat, size_t bytes, bool to_blocks) {
  size_t off = 0;
  for (uint32_t j = 0; off < bytes; j++) {
    for (uint32_t l = 0; l < kv->layers && off < bytes; l++) {
      char *p = values ? kv__v_ptr(kv, table[j], l) : kv__k_ptr(kv, table[j], l);
      size_t n = bytes - off < kv->chunk_bytes ? bytes - off : kv->chunk_bytes;
      if (to_blocks) memcpy(p, flat + off, n);
      else memcpy(flat + off, p, n);
      off += n;
    }
  }
}

/* ---- put / get / evict ------------------------------------------------------------- */

cllm_status_t cllm_kv_put(cllm_kv_cache_t *kv, const char *id, const float *keys, size_t n_keys,
                          const float *values, size_t n_values) {
  if (kv == NULL || id == NULL || id[0] == '\0') return CLLM_EINVAL;
  if ((keys == NULL && n_keys > 0) || (values == NULL && n_values > 0)) return CLLM_EINVAL;
  size_t kbytes, vbytes;
  if (cllm__mul_overflow(n_keys, sizeof(float), &kbytes) ||
      cllm__mul_overflow(n_values, sizeof(float), &vbytes))
    return CLLM_EOVERFLOW;
  size_t cap = (size_t)kv->layers * kv->chunk_bytes;
  size_t kb = kbytes / cap + (kbytes % cap != 0), vb = vbytes / cap + (vbytes % cap != 0);
  size_t nbs = kb > vb ? kb : vb;
  size_t len;
  uint64_t h;
  kv_victims_t v;
  kv__victims_init(&v);
  uint32_t s = kv__id_lock(kv, id, &h, &len);
  if (nbs > kv->copy_budget_blocks) {
    kv->st_refused++;
    kv__unlock(kv);
    return CLLM_ERANGE;  // larger than the whole budget: refused before any eviction
  }
  uint32_t nb = (uint32_t)nbs;
  bool created = false;
  cllm_status_t rc = CLLM_OK;
  if (s != KV_NONE && kv->slots[s].kind != K_COPY) {
    kv__unlock(kv);
    return CLLM_EEXIST;
  }
  if (s == KV_NONE) {
    /* Every slot taken: a slot is room too, so the least recently used entry goes
     * (the seed's insert evicts until the new entry fits). */
    if (kv->slot_free_head == KV_NONE) (void)evict_lru_entry_locked(kv, KV_NONE, &v);
    rc = kv__slot_new_locked(kv, id, h, len, K_COPY, &s);
    if (rc != CLLM_OK) goto refused;
    created = true;
  }
  kv_slot_t *sl = &kv->slots[s];
  uint32_t old_nb = sl->nb;
  if (kv__table_reserve(sl, nb) != CLLM_OK) {
    rc = CLLM_ENOMEM;
    goto undo;
  }
  /* LRU eviction until the entry fits the budget (its own old blocks count as freed). */
  while ((uint64_t)kv->copy_blocks - old_nb + nb > kv->copy_budget_blocks) {
    bool ok = evict_lru_entry_locked(kv, s, &v);
    cllm_assert_internal(ok);
    if (!ok) break;
  }
  if (nb > old_nb) {
    /* Blocks held by sequences may leave too few: drop more entries while needed. */
    for (;;) {
      rc = kv__take_blocks_locked(kv, nb - old_nb, 0, sl->table + old_nb);
      if (rc == CLLM_OK) break;
      if (!evict_lru_entry_locked(kv, s, &v)) goto undo;
    }
    for (uint32_t i = old_nb; i < nb; i++) kv__set_fill_locked(kv, sl->table[i], kv->bt);
  } else {
    for (uint32_t i = old_nb; i-- > nb;) kv__unref_locked(kv, sl->table[i]);
  }
  kv->copy_blocks = kv->copy_blocks - old_nb + nb;
  sl->nb = nb;
  sl->n_keys = n_keys;
  sl->n_values = n_values;
  copy_chunks(kv, sl->table, false, (char *)(uintptr_t)keys, kbytes, true);
  copy_chunks(kv, sl->table, true, (char *)(uintptr_t)values, vbytes, true);
  if (copy_lru_member(kv, s)) copy_lru_remove_locked(kv, s);
  copy_lru_append_locked(kv, s);
  kv__unlock_and_call(kv, &v);
  return CLLM_OK;
undo:
  if (created) kv__slot_retire_locked(kv, s);
refused:
  kv->st_refused++;
  kv__unlock_and_call(kv, &v);
  return rc;
}

cllm_status_t cllm_kv_get(cllm_kv_cache_t *kv, const char *id, float *keys_out, size_t keys_cap,
                          size_t *n_keys, float *values_out, size_t values_cap,
                          size_t *n_values) {
  if (kv == NULL || id == NULL || id[0] == '\0') return CLLM_EINVAL;
  if ((keys_out == NULL && keys_cap > 0) || (values_out == NULL && values_cap > 0))
    return CLLM_EINVAL;
  size_t len;
  uint64_t h;
  uint32_t s = kv__id_lock(kv, id, &h, &len);
  if (s == KV_NONE || kv->slots[s].kind != K_COPY) {
    kv__unlock(kv);
    return CLLM_ENOTFOUND;
  }
  kv_slot_t *sl = &kv->slots[s];
  if (n_keys != NULL) *n_keys = sl->n_keys;
  if (n_values != NULL) *n_values = sl->n_values;
  cllm_status_t rc = CLLM_OK;
  if (keys_out == NULL && values_out == NULL) {
    /* size query: not a use */
  } else if ((sl->n_keys > 0 && (keys_out == NULL || keys_cap < sl->n_keys)) ||
             (sl->n_values > 0 && (values_out == NULL || values_cap < sl->n_values))) {
    rc = CLLM_ERANGE;
  } else {
    copy_chunks(kv, sl->table, false, (char *)keys_out, sl->n_keys * sizeof(float), false);
    copy_chunks(kv, sl->table, true, (char *)values_out, sl->n_values * sizeof(float), false);
    if (kv->copy_lru_tail != s) {
      copy_lru_remove_locked(kv, s);
      copy_lru_append_locked(kv, s);
    }
  }
  kv__unlock(kv);
  return rc;
}

cllm_status_t cllm_kv_evict(cllm_kv_cache_t *kv, const char *id) {
  if (kv == NULL || id == NULL || id[0] == '\0') return CLLM_EINVAL;
  size_t len;
  uint64_t h;
  uint32_t s = kv__id_lock(kv, id, &h, &len);
  cllm_status_t rc = CLLM_ENOTFOUND;
  if (s != KV_NONE && kv->slots[s].kind == K_COPY) {
    kv__copy_drop_locked(kv, s);
    kv__slot_retire_locked(kv, s);
    rc = CLLM_OK;
  }
  kv__unlock(kv);
  return rc;
}

size_t cllm_kv_used_bytes(const cllm_kv_cache_t *kv) {
  if (kv == NULL) return 0;
  kv__lock(kv);
  size_t used = (size_t)kv->copy_blocks * kv->block_bytes;
  kv__unlock(kv);
  return used;
}

size_t cllm_kv_total_bytes(const cllm_kv_cache_t *kv) {
  return kv == NULL ? 0 : (size_t)kv->copy_budget_blocks * kv->block_bytes;
}
