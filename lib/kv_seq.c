/* KV cache sequences: slots, block tables, reserve / ensure / commit / close /
 * fork / touch / pin, preemption and the eviction callback.
 *
 * Concept
 *   A sequence (or a copy-API entry, lib/kv_copy.c) lives in a slot of a flat array
 *   of max_seqs slots; a handle is (slot, generation) and turns stale when the slot
 *   is retired. Request ids map to slots through the id map (lib/kv_idmap.c); the id
 *   is hashed before the lock is taken. A slot is two cache lines and holds ids of
 *   up to 15 bytes and block tables of up to 2 blocks itself; longer ones get an
 *   owned buffer that the slot keeps when it is reused, so in steady state
 *   open/close allocate nothing; a table grows by doubling (amortised O(1)).
 *
 *   Open sequences that hold blocks sit in one LRU list per priority band (32-bit
 *   links through the slots): preemption takes the least recently used sequence of
 *   the lowest band other than the requester (O(1)).
 *
 *   Callbacks: the ids of the first few victims of a call are copied into the
 *   caller's kv_victims_t (stack); further victims are linked through victim_next
 *   and marked cb_pending. After the call's work the lock is dropped and the
 *   callbacks run; only linked victims need the lock again to finish. While
 *   cb_pending a slot is never reused (a closed one waits as S_ZOMBIE), so the id
 *   string handed to the callback stays valid without a copy.
 *
 * Invariants: every S_OPEN/S_PREEMPTED slot is in the id map exactly once; an open
 * sequence holds ceil(length / block_tokens) blocks, a preempted one none; an open
 * sequence is in its band's LRU iff it holds blocks.
 *
 * Lock order: kv->lock only; callbacks run with no lock held.
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "internal/fault.h"
#include "internal/util.h"
#include "kv_internal.h"

/* ---- slots ------------------------------------------------------------------------ */

cllm_status_t kv__slot_new_locked(cllm_kv_cache_t *kv, const char *id, uint64_t h, size_t len,
                                  uint8_t kind, uint32_t *out) {
  uint32_t s = kv->slot_free_head;
  if (s == KV_NONE) return CLLM_ENOMEM;
  kv_slot_t *sl = &kv->slots[s];
  if (len >= UINT32_MAX - 1) return CLLM_ENOMEM;  // no copy of a 4 GiB id
  /* an owned buffer is used while it fits; else a short id goes in id_inl */
  if (sl->id_cap != 0 ? sl->id_cap < len + 1 : len + 1 > KV_ID_INLINE) {
    size_t cap = len + 1 < 32 ? 32 : len + 1;
    char *p = CLLM_FAULT(CLLM_FAULT_MALLOC) ? NULL : malloc(cap);
    if (p == NULL) return CLLM_ENOMEM;
    if (sl->id_cap != 0) free(sl->id);
    sl->id = p;
    sl->id_cap = (uint32_t)cap;
  }
  memcpy(sl->id, id, len + 1);
  kv->slot_free_head = sl->lru_next;
  sl->id_hash = h;
  sl->id_len = (uint32_t)len;
  sl->nb = 0;
  sl->length = sl->committed = 0;
  sl->salt = 0;
  sl->chain_hash = 0;
  sl->chain_prev = KV_NONE;
  sl->chain_prev_gen = 0;
  sl->lru_prev = sl->lru_next = sl->victim_next = KV_NONE;
  sl->state = S_OPEN;
  sl->kind = kind;
  sl->band = 0;
  sl->in_lru = sl->cb_pending = sl->chain_broken = 0;
  sl->n_keys = sl->n_values = 0;
  kv__idmap_insert_locked(kv, s);
  kv->slots_used++;
  if (kind == K_SEQ) kv->seq_count++;
  else kv->copy_count++;
  *out = s;
  return CLLM_OK;
}

static void slot_free_locked(cllm_kv_cache_t *kv, uint32_t s) {
  kv_slot_t *sl = &kv->slots[s];
  sl->state = S_FREE;
  sl->lru_prev = KV_NONE;
  sl->lru_next = kv->slot_free_head;
  kv->slot_free_head = s;
  kv->slots_used--;
}

void kv__slot_retire_locked(cllm_kv_cache_t *kv, uint32_t s) {
  kv_slot_t *sl = &kv->slots[s];
  cllm_assert_internal(sl->nb == 0 && !sl->in_lru);
  kv__idmap_remove_locked(kv, s);
  sl->gen++;
  if (sl->gen == 0) sl->gen = 1;
  if (sl->kind == K_SEQ) kv->seq_count--;
  else kv->copy_count--;
  if (sl->cb_pending) sl->state = S_ZOMBIE;
  else slot_free_locked(kv, s);
}

cllm_status_t kv__table_grow(kv_slot_t *sl, uint32_t n) {
  if (n <= sl->table_cap) return CLLM_OK;
  uint64_t cap = sl->table_cap < 8 ? 8 : sl->table_cap;
  while (cap < n) cap *= 2;
  if (cap > UINT32_MAX) cap = UINT32_MAX;
  bool inl = sl->table == sl->table_inl;
  uint32_t *t = CLLM_FAULT(CLLM_FAULT_MALLOC) ? NULL
                : inl ? malloc(cap * sizeof(uint32_t))
                      : realloc(sl->table, cap * sizeof(uint32_t));
  if (t == NULL) return CLLM_ENOMEM;
  if (inl) memcpy(t, sl->table_inl, sizeof sl->table_inl);
  sl->table = t;
  sl->table_cap = (uint32_t)cap;
  return CLLM_OK;
}

void kv__free_slots(cllm_kv_cache_t *kv) {
  for (uint32_t s = 0; s < kv->max_slots; s++) {
    kv_slot_t *sl = &kv->slots[s];
    if (sl->id_cap != 0) free(sl->id);
    if (sl->table != sl->table_inl) free(sl->table);
  }
}

/* ---- callbacks --------------------------------------------------------------------- */

void kv__victim_push_locked(cllm_kv_cache_t *kv, kv_victims_t *v, uint32_t s) {
  if (kv->evict_fn == NULL) return;
  kv_slot_t *sl = &kv->slots[s];
  uint8_t reason = sl->kind == K_COPY ? CLLM_KV_EVICT_LRU : CLLM_KV_EVICT_PREEMPTED;
  size_t len = (size_t)sl->id_len + 1;
  if (v->head == KV_NONE && v->n_inline < KV_VICTIMS_INLINE && len <= KV_VICTIMS_BYTES - v->used) {
    memcpy(v->buf + v->used, sl->id, len);
    v->off[v->n_inline] = (uint16_t)v->used;
    v->reason[v->n_inline++] = reason;
    v->used += (uint32_t)len;
    return;
  }
  sl->cb_pending = 1;
  sl->vreason = reason;
  sl->victim_next = KV_NONE;
  if (v->tail != KV_NONE) kv->slots[v->tail].victim_next = s;
  else v->head = s;
  v->tail = s;
}

void kv__unlock_and_call_slow(cllm_kv_cache_t *kv, kv_victims_t *v) {
  uint32_t head = v->head;
  kv__unlock(kv);
  for (uint32_t i = 0; i < v->n_inline; i++)
    kv->evict_fn(kv->evict_user, v->buf + v->off[i], (cllm_kv_evict_reason_t)v->reason[i]);
  if (head == KV_NONE) return;
  /* id, vreason and victim_next are not written by anyone while cb_pending is set. */
  for (uint32_t s = head; s != KV_NONE; s = kv->slots[s].victim_next)
    kv->evict_fn(kv->evict_user, kv->slots[s].id, (cllm_kv_evict_reason_t)kv->slots[s].vreason);
  kv__lock(kv);
  for (uint32_t s = head, next; s != KV_NONE; s = next) {
    kv_slot_t *sl = &kv->slots[s];
    next = sl->victim_next;
    sl->victim_next = KV_NONE;
    sl->cb_pending = 0;
    if (sl->state == S_ZOMBIE) slot_free_locked(kv, s);
  }
  kv__unlock(kv);
}

/* ---- the sequence LRU ------------------------------------------------------------- */

static void seq_lru_add_locked(cllm_kv_cache_t *kv, uint32_t s) {
  kv_slot_t *sl = &kv->slots[s];
  kv__list_push_back(kv__slot_links(kv), &kv->seq_lru_head[sl->band], &kv->seq_lru_tail[sl->band],
                     s);
  sl->in_lru = 1;
}

static void seq_lru_remove_locked(cllm_kv_cache_t *kv, uint32_t s) {
  kv_slot_t *sl = &kv->slots[s];
  if (!sl->in_lru) return;
  kv__list_remove(kv__slot_links(kv), &kv->seq_lru_head[sl->band], &kv->seq_lru_tail[sl->band], s);
  sl->in_lru = 0;
}

static void seq_lru_move_locked(cllm_kv_cache_t *kv, uint32_t s) {
  seq_lru_remove_locked(kv, s);
  if (kv->slots[s].nb > 0) seq_lru_add_locked(kv, s);
}

/* Mark s most recently used; enter or leave the list by whether it holds blocks. */
static inline void seq_lru_touch_locked(cllm_kv_cache_t *kv, uint32_t s) {
  const kv_slot_t *sl = &kv->slots[s];
  if (sl->in_lru && sl->nb > 0 && kv->seq_lru_tail[sl->band] == s) return;  // already last
  seq_lru_move_locked(kv, s);
}

/* ---- block release and preemption -------------------------------------------------- */

static void release_blocks_locked(cllm_kv_cache_t *kv, uint32_t s) {
  kv_slot_t *sl = &kv->slots[s];
  for (uint32_t i = sl->nb; i-- > 0;) kv__unref_locked(kv, sl->table[i]);  // tail first
  sl->nb = 0;
  seq_lru_remove_locked(kv, s);
}

/* Tier hook (a failed remote fetch gives back its reserved blocks). */
void kv__seq_truncate_locked(cllm_kv_cache_t *kv, uint32_t s, uint32_t keep) {
  kv_slot_t *sl = &kv->slots[s];
  cllm_assert_internal(keep <= sl->nb && ((size_t)keep << kv->bt_shift) >= sl->committed);
  while (sl->nb > keep) kv__unref_locked(kv, sl->table[--sl->nb]);
  sl->length = sl->committed;
  if (sl->nb == 0) seq_lru_remove_locked(kv, s);
}

static void preempt_locked(cllm_kv_cache_t *kv, uint32_t s, kv_victims_t *v) {
  kv_slot_t *sl = &kv->slots[s];
  release_blocks_locked(kv, s);
  sl->state = S_PREEMPTED;
  sl->length = sl->committed = 0;
  sl->chain_hash = 0;
  sl->chain_prev = KV_NONE;
  kv->st_preemptions++;
  kv__victim_push_locked(kv, v, s);
}

static uint32_t preempt_victim_locked(const cllm_kv_cache_t *kv, uint32_t requester) {
  for (uint32_t band = 0; band < CLLM_KV_BANDS; band++) {
    uint32_t s = kv->seq_lru_head[band];
    /* tier hook: a sequence whose blocks a remote fetch writes is skipped */
    while (s != KV_NONE && (s == requester || kv->slots[s].tier_busy)) s = kv->slots[s].lru_next;
    if (s != KV_NONE) return s;
  }
  return KV_NONE;
}

/* Take k blocks for slot s, preempting other sequences if allowed. */
static cllm_status_t acquire_locked(cllm_kv_cache_t *kv, uint32_t s, uint32_t k, uint32_t *ids,
                                    kv_victims_t *v) {
  for (;;) {
    /* when the blocks are not there at all, take would say ENOMEM: skip the call */
    cllm_status_t rc = CLLM_ENOMEM;
    if (kv__blocks_available_locked(kv, k)) {
      rc = kv__take_blocks_locked(kv, k, kv->slots[s].band, ids);
      if (rc != CLLM_ENOMEM && rc != CLLM_ELIMIT) return rc;
    }
    if (!kv->preemption) return rc;
    uint32_t victim = preempt_victim_locked(kv, s);
    if (victim == KV_NONE) return rc;
    preempt_locked(kv, victim, v);
  }
}

/* ---- handles ---------------------------------------------------------------------- */

static cllm_status_t seq_get_locked(const cllm_kv_cache_t *kv, cllm_kv_seq_t seq) {
  if (seq.slot >= kv->max_slots) return CLLM_ENOTFOUND;
  const kv_slot_t *sl = &kv->slots[seq.slot];
  if (sl->gen != seq.gen || sl->kind != K_SEQ) return CLLM_ENOTFOUND;
  if (sl->state == S_OPEN) return CLLM_OK;
  if (sl->state == S_PREEMPTED) return CLLM_EPREEMPTED;
  return CLLM_ENOTFOUND;
}

/* The prologue of every call on a handle: lock, then the slot of the open sequence
 * `seq` names, or NULL with *rc set (CLLM_ENOTFOUND, CLLM_EPREEMPTED). The lock is
 * held either way: the caller unlocks. */
static inline kv_slot_t *seq_lock(const cllm_kv_cache_t *kv, cllm_kv_seq_t seq, cllm_status_t *rc) {
  kv__lock(kv);
  *rc = seq_get_locked(kv, seq);
  return *rc == CLLM_OK ? &kv->slots[seq.slot] : NULL;
}

static bool id_ok(const char *id) { return id != NULL && id[0] != '\0'; }

/* ---- open / find ------------------------------------------------------------------- */

cllm_status_t cllm_kv_seq_open_with_prompt(cllm_kv_cache_t *kv, const char *id,
                                           const cllm_kv_seq_opts_t *opts,
                                           const cllm_kv_token_t *tokens, size_t n,
                                           cllm_kv_seq_t *out, size_t *n_cached) {
  if (kv == NULL || !id_ok(id) || out == NULL || (tokens == NULL && n > 0)) return CLLM_EINVAL;
  if (opts != NULL && opts->priority >= CLLM_KV_BANDS) return CLLM_EINVAL;
  size_t len;
  uint64_t h;
  uint32_t s;
  if (kv__id_lock(kv, id, &h, &len) != KV_NONE) {
    kv__unlock(kv);
    return CLLM_EEXIST;
  }
  cllm_status_t rc = kv__slot_new_locked(kv, id, h, len, K_SEQ, &s);
  if (rc != CLLM_OK) {
    kv__unlock(kv);
    return rc;
  }
  kv_slot_t *sl = &kv->slots[s];
  if (opts != NULL) {
    sl->salt = opts->salt;
    sl->band = (uint8_t)opts->priority;
  }
  size_t m = 0;
  if (n > 0) {
    size_t max_blocks = (n - 1) >> kv->bt_shift;
    if (max_blocks > kv->num_blocks) max_blocks = kv->num_blocks;
    if (max_blocks > 0 && kv__table_reserve(sl, (uint32_t)max_blocks) != CLLM_OK) {
      kv__slot_retire_locked(kv, s);
      kv__unlock(kv);
      return CLLM_ENOMEM;
    }
    m = kv__match_prefix_locked(kv, sl->salt, tokens, (uint32_t)max_blocks, sl->table);
    for (size_t i = 0; i < m; i++) kv__ref_locked(kv, sl->table[i], sl->band);
    sl->nb = (uint32_t)m;
    sl->length = sl->committed = m << kv->bt_shift;
    if (m > 0) {
      uint32_t last = sl->table[m - 1];
      sl->chain_hash = kv->blocks[last].hash;
      sl->chain_prev = last;
      sl->chain_prev_gen = kv->blocks[last].gen;
      seq_lru_add_locked(kv, s);
    }
    kv->st_prefix_query += n;
    kv->st_prefix_hit += m << kv->bt_shift;
  }
  *out = (cllm_kv_seq_t){s, sl->gen};  // one store: callers pass the handle on at once
  if (n_cached != NULL) *n_cached = m << kv->bt_shift;
  kv__unlock(kv);
  return CLLM_OK;
}

cllm_status_t cllm_kv_seq_open(cllm_kv_cache_t *kv, const char *id,
                               const cllm_kv_seq_opts_t *opts, cllm_kv_seq_t *out) {
  return cllm_kv_seq_open_with_prompt(kv, id, opts, NULL, 0, out, NULL);
}

cllm_status_t cllm_kv_seq_find(const cllm_kv_cache_t *kv, const char *id, cllm_kv_seq_t *out) {
  if (kv == NULL || !id_ok(id) || out == NULL) return CLLM_EINVAL;
  size_t len;
  uint64_t h;
  uint32_t s = kv__id_lock(kv, id, &h, &len);
  cllm_status_t rc = CLLM_ENOTFOUND;
  if (s != KV_NONE && kv->slots[s].kind == K_SEQ) {
    *out = (cllm_kv_seq_t){s, kv->slots[s].gen};
    rc = CLLM_OK;
  }
  kv__unlock(kv);
  return rc;
}

/* ---- reserve / commit ------------------------------------------------------------- */

/* locs[j] = {b, off + j} for j < n. */
static inline void fill_locs(cllm_kv_loc_t *locs, uint32_t b, uint32_t off, size_t n) {
  for (size_t j = 0; j < n; j++) locs[j] = (cllm_kv_loc_t){b, off + (uint32_t)j};
}

/* locs[i] = where position pos + i lies, for positions already reserved. */
static void locate_locked(const cllm_kv_cache_t *kv, const kv_slot_t *sl, size_t pos, size_t n,
                          cllm_kv_loc_t *locs) {
  uint32_t mask = kv->bt - 1;
  for (size_t i = 0; i < n;) {  // one run per block: rows off, off+1, ... of the same block
    uint32_t b = sl->table[pos >> kv->bt_shift], off = (uint32_t)(pos & mask);
    size_t run = kv->bt - off;
    if (run > n - i) run = n - i;
    fill_locs(locs + i, b, off, run);
    i += run;
    pos += run;
  }
}

/* The decode step: n more positions that fit in the last block, which this sequence
 * holds alone (no block to take, nothing to copy). False: reserve_locked's full path. */
static inline bool grow_in_place_locked(cllm_kv_cache_t *kv, uint32_t s, size_t n, cllm_kv_loc_t *locs) {
  kv_slot_t *sl = &kv->slots[s];
  uint32_t off = (uint32_t)(sl->length & (kv->bt - 1));
  if (off == 0 || n > kv->bt - off) return false;
  uint32_t b = sl->table[sl->nb - 1];
  if (kv->blocks[b].refcnt != 1) return false;
  if (kv->blocks[b].fill < off + n) kv__set_fill_locked(kv, b, off + (uint32_t)n);
  sl->length += n;
  if (locs != NULL) fill_locs(locs, b, off, n);
  seq_lru_touch_locked(kv, s);
  return true;
}

/* reserve_locked past its fast path: blocks to take, or a shared block to copy. */
static cllm_status_t reserve_blocks_locked(cllm_kv_cache_t *kv, uint32_t s, size_t n_tokens,
                                           cllm_kv_loc_t *locs, kv_victims_t *v) {
  cllm_status_t rc;
  kv_slot_t *sl = &kv->slots[s];
  size_t len = sl->length, new_len;
  uint32_t mask = kv->bt - 1;
  if (cllm__add_overflow(len, n_tokens, &new_len) || new_len > SIZE_MAX - mask ||
      ((new_len + mask) >> kv->bt_shift) > kv->num_blocks) {
    kv->st_refused++;
    return CLLM_ERANGE;  // could never fit: nothing was evicted
  }
  uint32_t need = (uint32_t)((new_len + mask) >> kv->bt_shift);
  uint32_t nb = sl->nb;
  uint32_t fresh = need - nb;
  bool cow = (len & mask) != 0 && kv->blocks[sl->table[nb - 1]].refcnt > 1;
  uint32_t k = fresh + (cow ? 1u : 0u);
  /* the table moves only when this call adds a block or copies the last one (the
   * copy's id goes in slot need first): cllm_kv_seq_table_view's promise */
  if (kv__table_reserve(sl, need + (cow ? 1u : 0u)) != CLLM_OK) {
    kv->st_refused++;
    return CLLM_ENOMEM;
  }
  rc = acquire_locked(kv, s, k, sl->table + nb, v);
  if (rc != CLLM_OK) {
    kv->st_refused++;
    return rc;
  }
  if (cow) {
    uint32_t old = sl->table[nb - 1], nw = sl->table[nb + fresh];
    if (kv->blocks[old].refcnt == 1) {
      kv__unref_locked(kv, nw);  // a preempted sharer let go of it: no copy needed
    } else {
      size_t bytes = (size_t)(len & mask) * (kv->chunk_bytes >> kv->bt_shift);
      for (uint32_t l = 0; l < kv->layers; l++) {
        memcpy(kv__k_ptr(kv, nw, l), kv__k_ptr(kv, old, l), bytes);
        memcpy(kv__v_ptr(kv, nw, l), kv__v_ptr(kv, old, l), bytes);
      }
      kv__set_fill_locked(kv, nw, (uint32_t)(len & mask));  // this sequence's rows
      kv__unref_locked(kv, old);
      sl->table[nb - 1] = nw;
      kv->st_cow++;
    }
  }
  /* fill counts and locations */
  size_t first = len >> kv->bt_shift, last = (new_len - 1) >> kv->bt_shift;
  for (size_t i = first; i <= last; i++) {
    uint32_t fill = i == last ? (uint32_t)(((new_len - 1) & mask) + 1) : kv->bt;
    if (kv->blocks[sl->table[i]].fill < fill) kv__set_fill_locked(kv, sl->table[i], fill);
  }
  sl->nb = need;
  sl->length = new_len;
  if (locs != NULL) locate_locked(kv, sl, len, n_tokens, locs);
  seq_lru_touch_locked(kv, s);
  return CLLM_OK;
}

/* Reserve n_tokens more positions of open slot s (the body of cllm_kv_seq_reserve). */
static inline cllm_status_t reserve_locked(cllm_kv_cache_t *kv, uint32_t s, size_t n_tokens,
                                           cllm_kv_loc_t *locs, kv_victims_t *v) {
  if (grow_in_place_locked(kv, s, n_tokens, locs)) return CLLM_OK;
  return reserve_blocks_locked(kv, s, n_tokens, locs, v);
}

cllm_status_t cllm_kv_seq_reserve(cllm_kv_cache_t *kv, cllm_kv_seq_t seq, size_t n_tokens,
                                  cllm_kv_loc_t *locs) {
  if (kv == NULL || n_tokens == 0) return CLLM_EINVAL;
  cllm_status_t rc;
  if (seq_lock(kv, seq, &rc) != NULL && grow_in_place_locked(kv, seq.slot, n_tokens, locs)) {
    kv__unlock(kv);  // the decode step: no block taken, so no victim to call back
    return CLLM_OK;
  }
  kv_victims_t v;
  kv__victims_init(&v);
  if (rc == CLLM_OK) rc = reserve_blocks_locked(kv, seq.slot, n_tokens, locs, &v);
  kv__unlock_and_call(kv, &v);
  return rc;
}

cllm_status_t cllm_kv_seq_ensure(cllm_kv_cache_t *kv, cllm_kv_seq_t seq, size_t pos, size_t n,
                                 cllm_kv_loc_t *locs) {
  if (kv == NULL || n == 0) return CLLM_EINVAL;
  cllm_status_t rc;
  kv_slot_t *sl = seq_lock(kv, seq, &rc);
  if (sl != NULL && pos == sl->length && grow_in_place_locked(kv, seq.slot, n, locs)) {
    kv__unlock(kv);  // the decode step, as in cllm_kv_seq_reserve
    return CLLM_OK;
  }
  kv_victims_t v;
  kv__victims_init(&v);
  if (sl != NULL) {
    size_t len = sl->length, end;
    if (pos > len || cllm__add_overflow(pos, n, &end)) {
      kv->st_refused++;
      rc = CLLM_ERANGE;
    } else {
      size_t have = end < len ? n : len - pos;  // positions already reserved
      if (have < n)
        rc = reserve_locked(kv, seq.slot, n - have, locs != NULL ? locs + have : NULL, &v);
      else
        seq_lru_touch_locked(kv, seq.slot);
      if (rc == CLLM_OK && locs != NULL && have > 0) locate_locked(kv, sl, pos, have, locs);
    }
  }
  kv__unlock_and_call(kv, &v);
  return rc;
}

cllm_status_t cllm_kv_seq_commit(cllm_kv_cache_t *kv, cllm_kv_seq_t seq,
                                 const cllm_kv_token_t *tokens, size_t n) {
  if (kv == NULL || tokens == NULL || n == 0) return CLLM_EINVAL;
  cllm_status_t rc;
  kv_slot_t *sl = seq_lock(kv, seq, &rc);
  if (sl != NULL) {
    if (n > sl->length - sl->committed) rc = CLLM_ERANGE;
    else kv__commit_tokens_locked(kv, seq.slot, tokens, n);
  }
  kv__unlock(kv);
  return rc;
}

/* ---- queries ----------------------------------------------------------------------- */

cllm_status_t cllm_kv_seq_block_table(const cllm_kv_cache_t *kv, cllm_kv_seq_t seq,
                                      uint32_t *out, size_t cap, size_t *n_blocks) {
  if (kv == NULL || n_blocks == NULL || (out == NULL && cap > 0)) return CLLM_EINVAL;
  cllm_status_t rc;
  const kv_slot_t *sl = seq_lock(kv, seq, &rc);
  if (sl != NULL) {
    *n_blocks = sl->nb;
    if (out != NULL) {
      if (cap < sl->nb) rc = CLLM_ERANGE;
      else if (sl->nb > 0) memcpy(out, sl->table, (size_t)sl->nb * sizeof *out);
    }
  }
  kv__unlock(kv);
  return rc;
}

/* The sequence's length (reserved positions) or committed count. */
static cllm_status_t seq_count(const cllm_kv_cache_t *kv, cllm_kv_seq_t seq, bool committed,
                               size_t *out) {
  if (kv == NULL || out == NULL) return CLLM_EINVAL;
  cllm_status_t rc;
  const kv_slot_t *sl = seq_lock(kv, seq, &rc);
  if (sl != NULL) *out = committed ? sl->committed : sl->length;
  kv__unlock(kv);
  return rc;
}

cllm_status_t cllm_kv_seq_length(const cllm_kv_cache_t *kv, cllm_kv_seq_t seq, size_t *length) {
  return seq_count(kv, seq, false, length);
}

cllm_status_t cllm_kv_seq_committed(const cllm_kv_cache_t *kv, cllm_kv_seq_t seq, size_t *n) {
  return seq_count(kv, seq, true, n);
}

cllm_status_t cllm_kv_seq_table_view(const cllm_kv_cache_t *kv, cllm_kv_seq_t seq,
                                     const uint32_t **table, size_t *n_blocks) {
  if (kv == NULL || table == NULL || n_blocks == NULL) return CLLM_EINVAL;
  cllm_status_t rc;
  const kv_slot_t *sl = seq_lock(kv, seq, &rc);
  if (sl != NULL) {
    *table = sl->table;
    *n_blocks = sl->nb;
  }
  kv__unlock(kv);
  return rc;
}

cllm_status_t cllm_kv_seq_touch(cllm_kv_cache_t *kv, cllm_kv_seq_t seq) {
  if (kv == NULL) return CLLM_EINVAL;
  cllm_status_t rc;
  if (seq_lock(kv, seq, &rc) != NULL) seq_lru_touch_locked(kv, seq.slot);
  kv__unlock(kv);
  return rc;
}

/* ---- close / fork ------------------------------------------------------------------- */

cllm_status_t cllm_kv_seq_close(cllm_kv_cache_t *kv, cllm_kv_seq_t seq) {
  if (kv == NULL) return CLLM_EINVAL;
  cllm_status_t rc;
  (void)seq_lock(kv, seq, &rc);
  if (rc == CLLM_OK || rc == CLLM_EPREEMPTED) {  // a preempted sequence is closed too
    release_blocks_locked(kv, seq.slot);
    kv__slot_retire_locked(kv, seq.slot);
    rc = CLLM_OK;
  }
  kv__unlock(kv);
  return rc;
}

cllm_status_t cllm_kv_seq_fork(cllm_kv_cache_t *kv, cllm_kv_seq_t parent, const char *child_id,
                               cllm_kv_seq_t *child) {
  if (kv == NULL || !id_ok(child_id) || child == NULL) return CLLM_EINVAL;
  size_t len;
  uint64_t h;
  uint32_t c, existing = kv__id_lock(kv, child_id, &h, &len);
  cllm_status_t rc = seq_get_locked(kv, parent);
  if (rc == CLLM_OK && existing != KV_NONE) rc = CLLM_EEXIST;
  if (rc == CLLM_OK) rc = kv__slot_new_locked(kv, child_id, h, len, K_SEQ, &c);
  if (rc != CLLM_OK) {
    kv__unlock(kv);
    return rc;
  }
  const kv_slot_t *p = &kv->slots[parent.slot];
  kv_slot_t *cs = &kv->slots[c];
  if (kv__table_reserve(cs, p->nb) != CLLM_OK) {
    kv__slot_retire_locked(kv, c);
    kv__unlock(kv);
    return CLLM_ENOMEM;
  }
  for (uint32_t i = 0; i < p->nb; i++) {
    cs->table[i] = p->table[i];
    kv__ref_locked(kv, p->table[i], p->band);
  }
  cs->nb = p->nb;
  cs->length = p->length;
  cs->committed = p->committed;
  cs->salt = p->salt;
  cs->band = p->band;
  cs->chain_hash = p->chain_hash;
  cs->chain_prev = p->chain_prev;
  cs->chain_prev_gen = p->chain_prev_gen;
  cs->chain_broken = p->chain_broken;
  memcpy(&kv->tails[(size_t)c * kv->bt], &kv->tails[(size_t)parent.slot * kv->bt],
         (size_t)kv->bt * sizeof(cllm_kv_token_t));
  if (cs->nb > 0) seq_lru_add_locked(kv, c);
  *child = (cllm_kv_seq_t){c, cs->gen};
  kv__unlock(kv);
  return CLLM_OK;
}

/* ---- pinning ------------------------------------------------------------------------ */

static cllm_status_t pin_common(cllm_kv_cache_t *kv, cllm_kv_seq_t seq, bool pin, size_t *count) {
  if (kv == NULL) return CLLM_EINVAL;
  cllm_status_t rc;
  const kv_slot_t *sl = seq_lock(kv, seq, &rc);
  size_t n = 0;
  if (sl != NULL) {
    uint32_t full = (uint32_t)(sl->committed >> kv->bt_shift);
    for (uint32_t i = 0; i < full; i++) {
      const kv_block_t *bl = &kv->blocks[sl->table[i]];
      if (bl->indexed && bl->pinned != pin) n++;
    }
    if (pin && (uint64_t)kv->pinned_count + n > kv->pin_cap) {
      rc = CLLM_ELIMIT;
      n = 0;
    } else {
      for (uint32_t i = 0; i < full; i++) {
        uint32_t b = sl->table[i];
        if (!kv->blocks[b].indexed) continue;
        if (pin) kv__pin_locked(kv, b);
        else kv__unpin_locked(kv, b);
      }
    }
  }
  kv__unlock(kv);
  if (count != NULL) *count = n;
  return rc;
}

cllm_status_t cllm_kv_seq_pin(cllm_kv_cache_t *kv, cllm_kv_seq_t seq, size_t *n_pinned) {
  return pin_common(kv, seq, true, n_pinned);
}

cllm_status_t cllm_kv_seq_unpin(cllm_kv_cache_t *kv, cllm_kv_seq_t seq, size_t *n_unpinned) {
  return pin_common(kv, seq, false, n_unpinned);
}

/* ---- check -------------------------------------------------------------------------- */

cllm_status_t kv__check_slots_locked(const cllm_kv_cache_t *kv, uint32_t *refs, uint32_t *ovf) {
  uint64_t used = 0, seqs = 0, copies = 0, copy_blocks = 0, in_lru = 0, mapped = 0;
  for (uint32_t s = 0; s < kv->max_slots; s++) {
    const kv_slot_t *sl = &kv->slots[s];
    if (sl->state == S_FREE) {
      CLLM_CHECK(!sl->cb_pending, "kv", "free slot %u has a pending callback", s);
      continue;
    }
    used++;
    if (sl->state == S_ZOMBIE) {
      CLLM_CHECK(sl->cb_pending && sl->nb == 0, "kv", "zombie slot %u", s);
      continue;
    }
    CLLM_CHECK(sl->state == S_OPEN || sl->state == S_PREEMPTED, "kv", "slot %u state %u", s, sl->state);
    size_t len;
    uint64_t h = kv__hash_string(sl->id, &len);
    CLLM_CHECK(kv__id_lookup_locked(kv, sl->id, h) == s && h == sl->id_hash, "kv",
               "slot %u (%s) not found by its id", s, sl->id);
    mapped++;
    CLLM_CHECK(sl->nb <= sl->table_cap || sl->nb == 0, "kv", "slot %u table overflow", s);
    for (uint32_t i = 0; i < sl->nb; i++) {
      uint32_t b = sl->table[i];
      CLLM_CHECK(b < kv->hwm && kv->blocks[b].state == KV_ACTIVE, "kv", "slot %u holds block %u (state %u)",
                 s, b, b < kv->num_blocks ? kv->blocks[b].state : 9);
      refs[b]++;
    }
    if (sl->kind == K_COPY) {
      copies++;
      copy_blocks += sl->nb;
      CLLM_CHECK(sl->state == S_OPEN && !sl->in_lru, "kv", "copy entry %u state", s);
      continue;
    }
    seqs++;
    CLLM_CHECK(sl->committed <= sl->length, "kv", "slot %u committed %zu > length %zu", s, sl->committed,
               sl->length);
    CLLM_CHECK(sl->nb == ((sl->length + kv->bt - 1) >> kv->bt_shift), "kv",
               "slot %u holds %u blocks for %zu tokens", s, sl->nb, sl->length);
    CLLM_CHECK(sl->state == S_OPEN || sl->nb == 0, "kv", "preempted slot %u holds blocks", s);
    CLLM_CHECK(sl->in_lru == (sl->state == S_OPEN && sl->nb > 0), "kv", "slot %u LRU membership", s);
    for (uint32_t i = 0; i < sl->nb; i++) {
      size_t want = i + 1 < sl->nb ? kv->bt : sl->length - ((size_t)i << kv->bt_shift);
      CLLM_CHECK(kv->blocks[sl->table[i]].fill >= want, "kv", "slot %u block %u fill %u < %zu", s, i,
                 kv->blocks[sl->table[i]].fill, want);
    }
    if (sl->in_lru) in_lru++;
  }
  CLLM_CHECK(used == kv->slots_used && seqs == kv->seq_count && copies == kv->copy_count, "kv",
             "slot counters: used %llu/%u seqs %llu/%u copies %llu/%u", (unsigned long long)used,
             kv->slots_used, (unsigned long long)seqs, kv->seq_count, (unsigned long long)copies,
             kv->copy_count);
  CLLM_CHECK(copy_blocks == kv->copy_blocks && copy_blocks <= kv->copy_budget_blocks, "kv",
             "copy blocks %llu, counter %u, budget %u", (unsigned long long)copy_blocks,
             kv->copy_blocks, kv->copy_budget_blocks);
  uint64_t entries;
  cllm_status_t rc = kv__idmap_check_locked(kv, ovf, &entries);
  if (rc != CLLM_OK) return rc;
  CLLM_CHECK(entries == mapped, "kv", "id map holds %llu entries for %llu slots",
             (unsigned long long)entries, (unsigned long long)mapped);
  uint64_t walked = 0;
  for (uint32_t band = 0; band < CLLM_KV_BANDS; band++) {
    uint32_t prev = KV_NONE;
    for (uint32_t s = kv->seq_lru_head[band]; s != KV_NONE; s = kv->slots[s].lru_next) {
      CLLM_CHECK(kv->slots[s].in_lru && kv->slots[s].band == band && kv->slots[s].lru_prev == prev, "kv",
                 "sequence LRU broken at slot %u", s);
      CLLM_CHECK(++walked <= in_lru, "kv", "sequence LRU longer than its members");
      prev = s;
    }
    CLLM_CHECK(kv->seq_lru_tail[band] == prev, "kv", "sequence LRU tail of band %u", band);
  }
  CLLM_CHECK(walked == in_lru, "kv", "sequence LRU holds %llu of %llu", (unsigned long long)walked,
             (unsigned long long)in_lru);
  walked = 0;
  uint32_t prev = KV_NONE;
  for (uint32_t s = kv->copy_lru_head; s != KV_NONE; s = kv->slots[s].lru_next) {
    CLLM_CHECK(kv->slots[s].kind == K_COPY && kv->slots[s].state == S_OPEN &&
                   kv->slots[s].lru_prev == prev, "kv",
               "copy LRU broken at slot %u", s);
    CLLM_CHECK(++walked <= copies, "kv", "copy LRU longer than the entries");
    prev = s;
  }
  CLLM_CHECK(walked == copies && kv->copy_lru_tail == prev, "kv", "copy LRU holds %llu of %llu",
             (unsigned long long)walked, (unsigned long long)copies);
  walked = 0;
  for (uint32_t s = kv->slot_free_head; s != KV_NONE; s = kv->slots[s].lru_next) {
    CLLM_CHECK(kv->slots[s].state == S_FREE, "kv", "free slot list holds slot %u", s);
    CLLM_CHECK(++walked <= kv->max_slots, "kv", "free slot list cycles");
  }
  CLLM_CHECK(walked + used == kv->max_slots, "kv", "free slots %llu + used %llu != %u",
             (unsigned long long)walked, (unsigned long long)used, kv->max_slots);
  return CLLM_OK;
}
