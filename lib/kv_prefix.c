/* The KV cache's prefix index: block hashes, the hash index over indexed blocks,
 * prefix matching (open_with_prompt) and the registration of full blocks as tokens
 * are committed.
 *
 * Concept
 *   A full, committed block gets a 64-bit hash chained over its token ids, the
 *   previous block's hash (0 for the first block) and the sequence's salt. Indexed
 *   blocks (ACTIVE or CACHED) sit in a bucket array of 32-bit heads with doubly
 *   linked 32-bit chains (hprev/hnext), so insert and remove are O(1) and a lookup
 *   walks only its bucket.
 *
 *   A hash is only a hint. A block matches position i of a prompt when its hash,
 *   salt and stored token ids equal the prompt's, and its recorded parent is the
 *   block matched at position i-1 with the generation that block had when this one
 *   was indexed (block generations change whenever a block's content identity
 *   ends). By induction a match proves that every token before it is equal, so a
 *   hash collision, even a forced one, can never hand out another prompt's KV.
 *
 *   Removal is lazy: an evicted block only loses its `indexed` flag (eviction then
 *   touches no bucket, a cache miss in a large cache); it stays linked, stale, until
 *   it is indexed again or a lookup walks over it, and either unlinks it in O(1).
 *
 *   Duplicates: if a sequence completes a block whose content is already indexed
 *   (computed twice concurrently), its own copy is not indexed; its chain continues
 *   from the canonical copy, so later blocks still register.
 *
 * Invariants: a block is in the index iff its `indexed` flag is set; indexed blocks
 * are ACTIVE or CACHED, full (fill == block_tokens) and their token ids are stored
 * in kv->btok.
 *
 * Lock order: every function here requires kv->lock (the callers hold it).
 */
#include <string.h>

#include "internal/util.h"
#include "kv_internal.h"
#include "kv_tier_internal.h"

/* ---- hashing --------------------------------------------------------------------- */

static inline uint64_t mix64(uint64_t a, uint64_t b) {
  __uint128_t r = (__uint128_t)a * b;
  return (uint64_t)r ^ (uint64_t)(r >> 64);
}

uint64_t kv__hash_default(void *user, uint64_t prev, uint64_t salt, const cllm_kv_token_t *t,
                          size_t n) {
  (void)user;
  uint64_t h = mix64(prev ^ 0xa0761d6478bd642fULL, salt ^ 0xe7037ed1a0b428dbULL);
  size_t i = 0;
  for (; i + 2 <= n; i += 2) {
    uint64_t w = (uint64_t)(uint32_t)t[i] | ((uint64_t)(uint32_t)t[i + 1] << 32);
    h = mix64(h ^ w ^ 0x8ebc6af09c88c6e3ULL, 0x589965cc75374cc3ULL);
  }
  if (i < n) h = mix64(h ^ (uint32_t)t[i] ^ 0x1d8e4e27c47d124fULL, 0x589965cc75374cc3ULL);
  return mix64(h ^ n, 0x9e3779b97f4a7c15ULL);
}

/* Request-id hash (the id map) and strlen in one pass. The id is read a byte at a
 * time (callers often format it just before the call: a wide load over bytes still in
 * the store buffer waits for them); bytes gather into 64-bit words, one multiply per
 * word. */
uint64_t kv__hash_string(const char *s, size_t *len) {
  const unsigned char *p = (const unsigned char *)s;
  uint64_t h = 0xa0761d6478bd642fULL, w = 0;
  size_t n = 0;
  for (; p[n] != 0; n++) {
    w = (w << 8) | p[n];
    if ((n & 7) == 7) {
      h = mix64(h ^ w, 0xe7037ed1a0b428dbULL);
      w = 0;
    }
  }
  *len = n;
  return mix64(h ^ w ^ ((uint64_t)n << 56), 0x8ebc6af09c88c6e3ULL) ^ n;
}

static uint64_t block_hash(const cllm_kv_cache_t *kv, uint64_t prev, uint64_t salt,
                           const cllm_kv_token_t *tokens) {
  return kv->hash_fn(kv->hash_user, prev, salt, tokens, kv->bt);
}

/* ---- the index ------------------------------------------------------------------ */

static inline void index_unlink_locked(cllm_kv_cache_t *kv, uint32_t b) {
  kv_block_t *bl = &kv->blocks[b];
  if (!bl->linked) return;
  kv__list_remove(kv__hash_links(kv), &kv->hbuckets[bl->hash & kv->hmask], NULL, b);
  bl->linked = 0;
}

void kv__index_insert_locked(cllm_kv_cache_t *kv, uint32_t b, uint64_t hash) {
  kv_block_t *bl = &kv->blocks[b];
  index_unlink_locked(kv, b);  // a stale link under its previous hash
  bl->hash = hash;
  kv__list_push_front(kv__hash_links(kv), &kv->hbuckets[hash & kv->hmask], NULL, b);
  bl->linked = 1;
  bl->indexed = 1;
  kv->indexed_count++;
}

void kv__index_remove_locked(cllm_kv_cache_t *kv, uint32_t b) {
  kv_block_t *bl = &kv->blocks[b];
  if (!bl->indexed) return;
  bl->indexed = 0;  // stays linked (stale) until re-indexed or walked over: eviction
  kv->indexed_count--;  // then touches no bucket, which at 1M blocks is a cache miss
}

static bool block_matches(const cllm_kv_cache_t *kv, uint32_t c, uint64_t hash, uint64_t salt,
                          uint32_t prev, uint32_t prev_gen, const cllm_kv_token_t *tokens) {
  const kv_block_t *bl = &kv->blocks[c];
  if (!bl->indexed || bl->hash != hash || bl->salt != salt || bl->parent != prev) return false;
  if (prev != KV_NONE && bl->parent_gen != prev_gen) return false;
  return memcmp(&kv->btok[(size_t)c * kv->bt], tokens, (size_t)kv->bt * sizeof *tokens) == 0;
}

uint32_t kv__index_find_locked(cllm_kv_cache_t *kv, uint64_t hash, uint64_t salt,
                               uint32_t prev, uint32_t prev_gen, const cllm_kv_token_t *tokens) {
  for (uint32_t c = kv->hbuckets[hash & kv->hmask], next; c != KV_NONE; c = next) {
    next = kv->blocks[c].hnext;
    if (!kv->blocks[c].indexed) {
      index_unlink_locked(kv, c);
      continue;
    }
    if (block_matches(kv, c, hash, salt, prev, prev_gen, tokens)) return c;
  }
  return KV_NONE;
}

/* ---- matching and registration ---------------------------------------------------- */

uint32_t kv__match_prefix_locked(cllm_kv_cache_t *kv, uint64_t salt,
                                 const cllm_kv_token_t *tokens, uint32_t max_blocks,
                                 uint32_t *ids) {
  uint64_t h = 0;
  uint32_t prev = KV_NONE, prev_gen = 0, i = 0;
  for (; i < max_blocks; i++) {
    const cllm_kv_token_t *t = tokens + (size_t)i * kv->bt;
    h = block_hash(kv, h, salt, t);
    uint32_t c = kv__index_find_locked(kv, h, salt, prev, prev_gen, t);
    if (c == KV_NONE) break;
    ids[i] = c;
    prev = c;
    prev_gen = kv->blocks[c].gen;
  }
  return i;
}

/* Slot s just completed the block at table index `idx` (its tokens are the slot's
 * tail buffer): enter it in the index, or continue the chain from an equal block. */
static void register_block_locked(cllm_kv_cache_t *kv, uint32_t s, uint32_t idx) {
  kv_slot_t *sl = &kv->slots[s];
  if (sl->chain_broken) return;
  if (sl->chain_prev != KV_NONE && kv->blocks[sl->chain_prev].gen != sl->chain_prev_gen) {
    sl->chain_broken = 1;  // the parent's content is gone: nothing after it can match
    return;
  }
  const cllm_kv_token_t *tail = &kv->tails[(size_t)s * kv->bt];
  uint32_t b = sl->table[idx];
  kv_block_t *bl = &kv->blocks[b];
  uint64_t h = block_hash(kv, sl->chain_hash, sl->salt, tail);
  uint32_t canonical;
  if (bl->indexed) {
    /* Shared with a fork sibling that completed it first. */
    if (!block_matches(kv, b, h, sl->salt, sl->chain_prev, sl->chain_prev_gen, tail)) {
      sl->chain_broken = 1;
      return;
    }
    canonical = b;
  } else {
    canonical = kv__index_find_locked(kv, h, sl->salt, sl->chain_prev, sl->chain_prev_gen, tail);
    if (canonical == KV_NONE) {
      cllm_assert_internal(bl->state == KV_ACTIVE && bl->fill == kv->bt);
      memcpy(&kv->btok[(size_t)b * kv->bt], tail, (size_t)kv->bt * sizeof *tail);
      bl->salt = sl->salt;
      bl->parent = sl->chain_prev;
      bl->parent_gen = sl->chain_prev == KV_NONE ? 0 : sl->chain_prev_gen;
      kv__index_insert_locked(kv, b, h);
      if (kv->tier != NULL) kv__tier_on_index_locked(kv, b);  // tier hook: chain digest
      canonical = b;
    }
  }
  sl->chain_hash = h;
  sl->chain_prev = canonical;
  sl->chain_prev_gen = kv->blocks[canonical].gen;
}

void kv__commit_tokens_blocks_locked(cllm_kv_cache_t *kv, uint32_t s,
                                     const cllm_kv_token_t *tokens, size_t n) {
  kv_slot_t *sl = &kv->slots[s];
  cllm_kv_token_t *tail = &kv->tails[(size_t)s * kv->bt];
  size_t pos = sl->committed;
  uint32_t mask = kv->bt - 1;
  while (n > 0) {
    size_t off = pos & mask;
    size_t take = kv->bt - off;
    if (take > n) take = n;
    memcpy(tail + off, tokens, take * sizeof *tokens);
    pos += take;
    tokens += take;
    n -= take;
    if ((pos & mask) == 0) register_block_locked(kv, s, (uint32_t)((pos >> kv->bt_shift) - 1));
  }
  sl->committed = pos;
}

/* ---- check ------------------------------------------------------------------------- */

cllm_status_t kv__check_index_locked(const cllm_kv_cache_t *kv) {
  uint64_t in_chains = 0, flagged = 0, walked = 0, linked = 0;
  for (uint64_t k = 0; k <= kv->hmask; k++) {
    uint32_t prev = KV_NONE;
    for (uint32_t c = kv->hbuckets[k]; c != KV_NONE; c = kv->blocks[c].hnext) {
      const kv_block_t *bl = &kv->blocks[c];
      CLLM_CHECK(c < kv->num_blocks && bl->linked && (bl->hash & kv->hmask) == k &&
                     bl->hprev == prev && ++walked <= kv->num_blocks,
                 "kv", "hash index chain %llu broken at block %u", (unsigned long long)k, c);
      in_chains += bl->indexed;
      prev = c;
    }
  }
  for (uint32_t b = 0; b < kv->num_blocks; b++) {
    const kv_block_t *bl = &kv->blocks[b];
    linked += bl->linked;
    if (!bl->indexed) continue;
    CLLM_CHECK(bl->linked, "kv", "indexed block %u is not in the index", b);
    flagged++;
    CLLM_CHECK((bl->state == KV_ACTIVE || bl->state == KV_CACHED) && bl->fill == kv->bt, "kv",
               "indexed block %u has state %u fill %u", b, bl->state, bl->fill);
    CLLM_CHECK(bl->parent == KV_NONE || bl->parent < kv->num_blocks, "kv",
               "indexed block %u has parent %u", b, bl->parent);
  }
  CLLM_CHECK(in_chains == kv->indexed_count && flagged == kv->indexed_count && walked == linked,
             "kv", "index holds %llu blocks, %llu flagged, counter %u",
             (unsigned long long)in_chains, (unsigned long long)flagged, kv->indexed_count);
  return CLLM_OK;
}
