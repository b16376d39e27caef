/* The paged KV cache's private state, shared by lib/kv_cache.c (storage, blocks,
 * LRU, monitor, stats, check), lib/kv_seq.c (sequences, id map, preemption,
 * callbacks), lib/kv_prefix.c (hashing, prefix index) and lib/kv_copy.c (the
 * seed's copy API). Nothing here is public.
 *
 * Every helper named *_locked requires kv->lock; none takes it.
 */
#ifndef CLLM_KV_INTERNAL_H
#define CLLM_KV_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cllm/kv_cache.h>

#include "internal/util.h"
#include "kv_list.h"

#define KV_NONE CLLM_KV_NONE

/* ---- blocks ---- */
enum { KV_FREE = 0, KV_ACTIVE = 1, KV_CACHED = 2 };

typedef struct kv_block {
  uint32_t refcnt;
  union {                  // FREE: free stack links; CACHED (unpinned): LRU links
    kv_link_t link;
    struct { uint32_t prev, next; };
  };
  union {                  // hash index chain (indexed blocks, and stale-linked ones)
    kv_link_t hlink;
    struct { uint32_t hprev, hnext; };
  };
  uint32_t parent;         // indexed: the block before this one in its chain (NONE: first)
  uint32_t parent_gen;     // the parent's gen when this block was indexed
  uint32_t gen;            // bumped whenever the block's content identity ends
  uint32_t fill;           // token rows in use (ACTIVE)
  uint8_t state, band, indexed, pinned;
  uint8_t linked;          // in the hash chain of `hash` (indexed, or stale: unlinked lazily)
  uint8_t gone;            // FREE with its pages given back (on the dfree stack)
  uint64_t hash, salt;     // indexed blocks (hash also while stale-linked)
} kv_block_t;

/* ---- slots (sequences and copy entries) ---- */
enum { S_FREE = 0, S_OPEN = 1, S_PREEMPTED = 2, S_ZOMBIE = 3 };
enum { K_SEQ = 0, K_COPY = 1 };

/* One slot is two cache lines (the array is 64-byte aligned). Line 0 holds what an
 * id lookup, a preemption and a close read; line 1 the prefix-chain state (or the
 * copy entry's sizes) and small inline buffers, so a short id and a short block
 * table need no allocation of their own and no further cache line. */
#define KV_ID_INLINE 16    // ids of up to 15 bytes are stored in the slot
#define KV_TABLE_INLINE 2  // block tables of up to 2 blocks are stored in the slot

typedef struct kv_slot {
  /* line 0 */
  uint64_t id_hash;
  uint32_t *table;        // block ids in position order: table_inl, or owned (grows
                          // by doubling; kept across reuse of the slot)
  char *id;               // id_inl, or an owned copy of id_cap bytes (kept across reuse
                          // of the slot while it fits)
  size_t length;          // reserved token positions (copy entry: unused)
  uint32_t nb, table_cap;
  uint32_t gen;           // handle generation
  union {                 // sequence LRU (per band) or copy-entry LRU; free slot list
    kv_link_t lru;        //   (singly linked through lru_next)
    struct { uint32_t lru_prev, lru_next; };
  };
  uint32_t victim_next;   // callback list
  uint8_t state, kind, band, in_lru, cb_pending, chain_broken;
  uint8_t vreason;        // eviction reason, stable while cb_pending
  uint8_t tier_busy;      // tier hook: a remote fetch writes its blocks (not preemptable)
  /* line 1 */
  union {
    struct {              // sequences
      size_t committed;   // token ids recorded
      uint64_t salt;
      uint64_t chain_hash;     // hash of the last full committed block (0 at the root)
      uint32_t chain_prev;     // canonical indexed block for that position (NONE at root)
      uint32_t chain_prev_gen;
    };
    struct {              // copy entries
      size_t n_keys, n_values;
    };
  };
  uint32_t id_len;        // strlen(id)
  uint32_t id_cap;        // bytes owned at id (0: id is id_inl)
  uint32_t table_inl[KV_TABLE_INLINE];
  char id_inl[KV_ID_INLINE];
} kv_slot_t;
_Static_assert(sizeof(kv_slot_t) == 128, "a slot is two cache lines");

/* The evictions of one call whose callback is due. The first few ids are copied
 * here (on the caller's stack), so their slots can be reused at once and no second
 * lock round trip is needed; the rest are slots linked through victim_next and
 * marked cb_pending until their callback has run. */
#define KV_VICTIMS_INLINE 8
#define KV_VICTIMS_BYTES 512
typedef struct kv_victims {
  uint32_t head, tail;  // overflow: slots linked through victim_next
  uint32_t n_inline, used;
  uint16_t off[KV_VICTIMS_INLINE];
  uint8_t reason[KV_VICTIMS_INLINE];
  char buf[KV_VICTIMS_BYTES];
} kv_victims_t;

static inline void kv__victims_init(kv_victims_t *v) {
  v->head = v->tail = CLLM_KV_NONE;
  v->n_inline = v->used = 0;
}

struct cllm_kv_cache {
  pthread_mutex_t lock;

  /* shape and storage (immutable after create) */
  uint32_t layers, kv_heads, head_dim, dtype_bytes, bt, bt_shift;
  uint32_t num_blocks;
  size_t chunk_bytes;   // one block, one layer, K or V
  size_t block_bytes;   // 2 x layers x chunk_bytes
  size_t pool_stride;   // bytes from one pool to the next
  char *base;           // the one mapping: pools K0, V0, K1, V1, ...
  size_t map_bytes;
  bool populate, preemption;
  uint32_t unit;        // blocks whose pool bytes are whole pages (page / gcd(chunk,
                        // page)): given back and recharged together; 0 = never
  uint32_t commit_step; // blocks per commit step (populate); 0 = commit exactly what is used
  size_t granule;       // commit granule of a pool: the huge page (populate) or the page
  cllm_monitor_t *mon;
  cllm_kv_evict_fn evict_fn;
  void *evict_user;
  cllm_kv_hash_fn hash_fn;
  void *hash_user;
  bool reclaimer_on;

  /* blocks */
  kv_block_t *blocks;
  cllm_kv_token_t *btok;  // [num_blocks][bt]: token ids of indexed blocks
  uint32_t committed;     // blocks [0, committed) lie in the committed prefix of every pool
  size_t committed_bytes; // that prefix, per pool (granule-rounded, at most pool_stride)
  uint32_t hwm;           // blocks [hwm, num_blocks) were never used
  uint32_t free_head, free_count;  // recycled FREE blocks, pages resident (a doubly
                                   // linked stack: prev/next)
  uint32_t dfree_head, dfree_count;// FREE blocks whose pages were given back, whole
                                   // units (a doubly linked stack)
  uint32_t lru_head[CLLM_KV_BANDS], lru_tail[CLLM_KV_BANDS];  // head = least recent
  uint32_t cached_lru;    // CACHED blocks in the LRU lists (evictable)
  uint32_t cached_pinned; // CACHED pinned blocks (not in any list)
  uint32_t active_count, pinned_count, pin_cap;
  uint32_t *hbuckets;
  uint32_t hmask, indexed_count;
  size_t tokens_active;   // sum of fill over ACTIVE blocks
  size_t charged_bytes;   // what this cache holds in the monitor: 2 x layers x
                          // committed_bytes - dfree_count x block_bytes

  /* slots */
  kv_slot_t *slots;
  uint32_t max_slots, slot_free_head, slots_used;
  struct kv_idbucket *idmap;  // the id map (lib/kv_idmap.c): buckets of one cache line
  uint32_t idmask;        // buckets - 1 (a power of two)
  cllm_kv_token_t *tails; // [max_slots][bt]: committed tokens of the partial block
  uint32_t seq_lru_head[CLLM_KV_BANDS], seq_lru_tail[CLLM_KV_BANDS];
  uint32_t copy_lru_head, copy_lru_tail;
  uint32_t copy_blocks, copy_budget_blocks, copy_count, seq_count;

  /* the remote tier (lib/kv_tier.c) or NULL; tier hook */
  struct cllm_kv_tier *tier;

  /* statistics */
  uint64_t st_prefix_query, st_prefix_hit, st_evictions, st_copy_evictions;
  uint64_t st_preemptions, st_cow, st_refused, st_reclaimed, st_decommitted;
  cllm_kv_numa_t numa_applied;
  cllm_status_t numa_status;
};

/* The lists threaded through the blocks (free stacks, LRU) and the slots (LRU). */
static inline kv_links_t kv__block_links(const cllm_kv_cache_t *kv) {
  return (kv_links_t){(char *)kv->blocks, sizeof(kv_block_t), offsetof(kv_block_t, link)};
}
static inline kv_links_t kv__hash_links(const cllm_kv_cache_t *kv) {
  return (kv_links_t){(char *)kv->blocks, sizeof(kv_block_t), offsetof(kv_block_t, hlink)};
}
static inline kv_links_t kv__slot_links(const cllm_kv_cache_t *kv) {
  return (kv_links_t){(char *)kv->slots, sizeof(kv_slot_t), offsetof(kv_slot_t, lru)};
}

/* ---- lib/kv_cache.c: blocks ---- */
/* The mutex is no part of the cache's visible state: read-only calls take a const
 * cache and still lock it (a cache is never defined const: create allocates it). */
static inline void kv__lock(const cllm_kv_cache_t *kv) {
  (void)pthread_mutex_lock((pthread_mutex_t *)&kv->lock);
}
static inline void kv__unlock(const cllm_kv_cache_t *kv) {
  (void)pthread_mutex_unlock((pthread_mutex_t *)&kv->lock);
}
/* Take k blocks into ids[] (ACTIVE, refcount 1, fill 0, band `band`): recycled FREE
 * (resident), given-back FREE (charged again), never used (committed and charged
 * first), then LRU CACHED; when the monitor refuses a charge, CACHED blocks are used
 * instead where there are enough. Fails with CLLM_ENOMEM (not enough blocks, or a
 * commit failed), CLLM_ELIMIT (monitor); no block changes state then (a commit step
 * that succeeded stays committed and charged). */
cllm_status_t kv__take_blocks_locked(cllm_kv_cache_t *kv, uint32_t k, uint32_t band,
                                     uint32_t *ids);
/* Could k blocks be taken now without preemption (ignoring the monitor)? When not,
 * kv__take_blocks_locked returns CLLM_ENOMEM and changes nothing. */
static inline bool kv__blocks_available_locked(const cllm_kv_cache_t *kv, uint32_t k) {
  uint64_t avail = (uint64_t)kv->free_count + kv->dfree_count + (kv->num_blocks - kv->hwm) +
                   kv->cached_lru;
  return k <= avail;
}
/* Add a reference to an ACTIVE or CACHED block (CACHED leaves the LRU). */
void kv__ref_locked(cllm_kv_cache_t *kv, uint32_t b, uint32_t band);
/* Drop a reference; at 0 an indexed block becomes CACHED (MRU of its band or
 * pinned), any other FREE (still resident and charged). */
void kv__unref_locked(cllm_kv_cache_t *kv, uint32_t b);
/* Set a block's fill (ACTIVE), keeping tokens_active. */
static inline void kv__set_fill_locked(cllm_kv_cache_t *kv, uint32_t b, uint32_t fill) {
  kv_block_t *bl = &kv->blocks[b];
  cllm_assert_internal(bl->state == KV_ACTIVE && fill <= kv->bt);
  kv->tokens_active = kv->tokens_active - bl->fill + fill;
  bl->fill = fill;
}
/* Drop up to `n` CACHED blocks (LRU order) to FREE; returns how many. */
uint32_t kv__drop_cached_locked(cllm_kv_cache_t *kv, uint32_t n);
/* Pin / unpin one block (ACTIVE or CACHED). */
void kv__pin_locked(cllm_kv_cache_t *kv, uint32_t b);
void kv__unpin_locked(cllm_kv_cache_t *kv, uint32_t b);

static inline char *kv__k_ptr(const cllm_kv_cache_t *kv, uint32_t b, uint32_t layer) {
  return kv->base + (size_t)(2u * layer) * kv->pool_stride + (size_t)b * kv->chunk_bytes;
}
static inline char *kv__v_ptr(const cllm_kv_cache_t *kv, uint32_t b, uint32_t layer) {
  return kv->base + (size_t)(2u * layer + 1u) * kv->pool_stride + (size_t)b * kv->chunk_bytes;
}

/* ---- lib/kv_prefix.c: hashing and the prefix index ---- */
uint64_t kv__hash_default(void *user, uint64_t prev, uint64_t salt, const cllm_kv_token_t *t,
                          size_t n);
uint64_t kv__hash_string(const char *s, size_t *len);
/* Index block b under `hash` (unlinking it from a stale chain first). */
void kv__index_insert_locked(cllm_kv_cache_t *kv, uint32_t b, uint64_t hash);
/* Take b out of the index: O(1), touches only b (the chain link is dropped later). */
void kv__index_remove_locked(cllm_kv_cache_t *kv, uint32_t b);
/* The indexed block with this content after `prev` (NONE at the root), or NONE.
 * Unlinks the stale entries it walks over. */
uint32_t kv__index_find_locked(cllm_kv_cache_t *kv, uint64_t hash, uint64_t salt,
                               uint32_t prev, uint32_t prev_gen, const cllm_kv_token_t *tokens);
/* Record `n` committed tokens of slot s (positions checked by the caller),
 * indexing every block that becomes full. */
void kv__commit_tokens_blocks_locked(cllm_kv_cache_t *kv, uint32_t s,
                                     const cllm_kv_token_t *tokens, size_t n);
static inline void kv__commit_tokens_locked(cllm_kv_cache_t *kv, uint32_t s,
                                            const cllm_kv_token_t *tokens, size_t n) {
  kv_slot_t *sl = &kv->slots[s];
  size_t off = sl->committed & (kv->bt - 1);
  if (off + n >= kv->bt) {  // a block becomes full: it is indexed
    kv__commit_tokens_blocks_locked(kv, s, tokens, n);
    return;
  }
  cllm_kv_token_t *tail = &kv->tails[(size_t)s * kv->bt + off];
  for (size_t i = 0; i < n; i++) tail[i] = tokens[i];
  sl->committed += n;
}
/* Longest cached prefix of tokens[0..n) in blocks (at most max_blocks) for `salt`:
 * ids[] receives the blocks (not referenced yet). */
uint32_t kv__match_prefix_locked(cllm_kv_cache_t *kv, uint64_t salt,
                                 const cllm_kv_token_t *tokens, uint32_t max_blocks,
                                 uint32_t *ids);
cllm_status_t kv__check_index_locked(const cllm_kv_cache_t *kv);

/* ---- lib/kv_idmap.c: the id map (request ids -> slots) ---- */
/* Allocate an empty map with room for max_slots entries (kv->idmap, kv->idmask);
 * CLLM_ENOMEM. kv_free_all frees kv->idmap. */
cllm_status_t kv__idmap_alloc(cllm_kv_cache_t *kv, uint32_t max_slots);
/* Enter slot s (its id_hash set) / take it out. */
void kv__idmap_insert_locked(cllm_kv_cache_t *kv, uint32_t s);
void kv__idmap_remove_locked(cllm_kv_cache_t *kv, uint32_t s);
/* Look up `id` (NUL-terminated) whose hash is h; returns the slot or KV_NONE. */
uint32_t kv__id_lookup_locked(const cllm_kv_cache_t *kv, const char *id, uint64_t h);
/* The prologue of every call by id: hash (*h, *len = strlen(id); no lock needed),
 * lock, look up. Returns the slot or KV_NONE; the lock is held. */
uint32_t kv__id_lock(const cllm_kv_cache_t *kv, const char *id, uint64_t *h, size_t *len);
/* The map's part of cllm_kv_check: every entry names a live slot, the overflow counts
 * match; *entries gets the number of entries. ovf: idmask + 1 scratch counters. */
cllm_status_t kv__idmap_check_locked(const cllm_kv_cache_t *kv, uint32_t *ovf,
                                     uint64_t *entries);

/* ---- lib/kv_seq.c: slots ---- */
/* A free slot holding a copy of id, entered in the id map (state S_OPEN, kind). */
cllm_status_t kv__slot_new_locked(cllm_kv_cache_t *kv, const char *id, uint64_t h, size_t len,
                                  uint8_t kind, uint32_t *out);
/* Remove slot s from the id map and free it, or leave it as a zombie for a
 * pending callback. The blocks must already be released. */
void kv__slot_retire_locked(cllm_kv_cache_t *kv, uint32_t s);
/* Grow a slot's block table to hold at least n ids. */
cllm_status_t kv__table_grow(kv_slot_t *sl, uint32_t n);
static inline cllm_status_t kv__table_reserve(kv_slot_t *sl, uint32_t n) {
  return n <= sl->table_cap ? CLLM_OK : kv__table_grow(sl, n);
}
/* Queue slot s for the eviction callback (copies its id, or sets cb_pending). */
void kv__victim_push_locked(cllm_kv_cache_t *kv, kv_victims_t *v, uint32_t s);
/* Unlock, run the callbacks, then finish the victims under the lock again. */
void kv__unlock_and_call_slow(cllm_kv_cache_t *kv, kv_victims_t *v);
static inline void kv__unlock_and_call(cllm_kv_cache_t *kv, kv_victims_t *v) {
  if (v->n_inline == 0 && v->head == KV_NONE) kv__unlock(kv);  // no victims: nothing to call
  else kv__unlock_and_call_slow(kv, v);
}
void kv__free_slots(cllm_kv_cache_t *kv);
/* refs: num_blocks zeroed counters (filled); ovf: idmask + 1 scratch counters. */
cllm_status_t kv__check_slots_locked(const cllm_kv_cache_t *kv, uint32_t *refs, uint32_t *ovf);

/* Tier hook: release slot s's blocks from table index `keep` on (reserved, never
 * committed), so its length equals its committed count again. */
void kv__seq_truncate_locked(cllm_kv_cache_t *kv, uint32_t s, uint32_t keep);

/* ---- lib/kv_copy.c ---- */
/* Release a copy entry's blocks and LRU membership (slot not retired). */
void kv__copy_drop_locked(cllm_kv_cache_t *kv, uint32_t s);

#endif /* CLLM_KV_INTERNAL_H */
