/* The KV cache's id map: request ids to slots (one-cache-line buckets, below).
 *
 * Lock order: the *_locked functions require kv->lock; kv__id_lock takes it.
 */
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "internal/fault.h"
#include "internal/util.h"
#include "kv_internal.h"

/* ---- the id map ------------------------------------------------------------------ */

/* A bucket: lanes 0..KV_IDB_N-1 hold entries (tag: the low 32 bits of the id hash
 * with bit 0 set, so never 0; slot: slot index + 1), tag 0 / slot 0 = empty; lane 7
 * has tag 0 and, as its slot word, the bucket's overflow count. */
#define KV_IDB_N 7
typedef struct kv_idbucket {
  uint32_t tag[8];
  uint32_t slot[8];
} kv_idbucket_t;
#define KV_IDB_OVF(bk) ((bk)->slot[KV_IDB_N])
static inline uint32_t kv__id_tag(uint64_t h) { return (uint32_t)h | 1u; }
static inline kv_idbucket_t *kv__id_bucket(const cllm_kv_cache_t *kv, uint32_t b) {
  return &kv->idmap[b];
}
static inline uint32_t kv__id_home(const cllm_kv_cache_t *kv, uint64_t h) {
  return (uint32_t)(h >> 32) & kv->idmask;
}

/* Buckets of one cache line (kv_idbucket_t, 64-byte aligned): 7 entries, each a tag
 * (32 bits of the id hash, never 0) and a slot number + 1, and an overflow count:
 * how many entries found this bucket full on their way from their home bucket to a
 * later one (F14's outbound overflow count). A lookup reads its home bucket (the
 * high 32 bits of the hash pick it), compares all 7 tags at once (SSE2) and stops
 * at the first bucket without the id whose count is 0: nearly always one line and
 * no probe loop. A delete clears its entry and decrements the counts on its path:
 * no tombstones, no shifting. */

_Static_assert(sizeof(kv_idbucket_t) == 64, "an id map bucket is one cache line");

/* Bit i (i < 7) set: lanes[i] == v. */
static inline unsigned idb_match(const uint32_t *lanes, uint32_t v) {
#if defined(__SSE2__)
  __m128i x = _mm_set1_epi32((int)v);
  __m128i a = _mm_load_si128((const __m128i *)(const void *)lanes);
  __m128i b = _mm_load_si128((const __m128i *)(const void *)(lanes + 4));
  unsigned m = (unsigned)_mm_movemask_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(a, x))) |
               (unsigned)_mm_movemask_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(b, x))) << 4;
#else
  unsigned m = 0;
  for (unsigned i = 0; i < 8; i++) m |= (unsigned)(lanes[i] == v) << i;
#endif
  return m & ((1u << KV_IDB_N) - 1u);
}

cllm_status_t kv__idmap_alloc(cllm_kv_cache_t *kv, uint32_t max_slots) {
  uint64_t n = 16;  // buckets of 7 entries for 2 x max_slots, rounded up: >= 7/4 x max_slots
  while (n < 2 * (uint64_t)max_slots) n <<= 1;
  n /= 8;
  void *p = NULL;
  if (CLLM_FAULT(CLLM_FAULT_MALLOC) || posix_memalign(&p, 64, n * sizeof(kv_idbucket_t)) != 0)
    return CLLM_ENOMEM;
  memset(p, 0, n * sizeof(kv_idbucket_t));
  kv->idmap = p;
  kv->idmask = (uint32_t)n - 1;
  return CLLM_OK;
}

uint32_t kv__id_lock(const cllm_kv_cache_t *kv, const char *id, uint64_t *h, size_t *len) {
  *h = kv__hash_string(id, len);
  kv__lock(kv);
  return kv__id_lookup_locked(kv, id, *h);
}

uint32_t kv__id_lookup_locked(const cllm_kv_cache_t *kv, const char *id, uint64_t h) {
  uint32_t tag = kv__id_tag(h);
  uint32_t b = kv__id_home(kv, h);
  for (uint32_t step = 0; step <= kv->idmask; step++, b = (b + 1) & kv->idmask) {
    const kv_idbucket_t *bk = kv__id_bucket(kv, b);
    for (unsigned m = idb_match(bk->tag, tag); m != 0; m &= m - 1) {
      uint32_t s = bk->slot[__builtin_ctz(m)] - 1u;
      const kv_slot_t *sl = &kv->slots[s];
      if (sl->id_hash == h && strcmp(sl->id, id) == 0) return s;
    }
    if (KV_IDB_OVF(bk) == 0) return KV_NONE;
  }
  return KV_NONE;
}

/* There is always room: the map has 7/4 x max_slots entries or more. */
void kv__idmap_insert_locked(cllm_kv_cache_t *kv, uint32_t s) {
  uint64_t h = kv->slots[s].id_hash;
  uint32_t b = kv__id_home(kv, h);
  for (;;) {
    kv_idbucket_t *bk = kv__id_bucket(kv, b);
    unsigned m = idb_match(bk->tag, 0);
    if (m != 0) {
      unsigned i = (unsigned)__builtin_ctz(m);
      bk->tag[i] = kv__id_tag(h);
      bk->slot[i] = s + 1u;
      return;
    }
    KV_IDB_OVF(bk)++;
    b = (b + 1) & kv->idmask;
  }
}

void kv__idmap_remove_locked(cllm_kv_cache_t *kv, uint32_t s) {
  uint32_t b = kv__id_home(kv, kv->slots[s].id_hash);
  for (;;) {
    kv_idbucket_t *bk = kv__id_bucket(kv, b);
    unsigned m = idb_match(bk->slot, s + 1u);
    if (m != 0) {
      unsigned i = (unsigned)__builtin_ctz(m);
      bk->tag[i] = 0;
      bk->slot[i] = 0;
      return;
    }
    cllm_assert_internal(KV_IDB_OVF(bk) > 0);
    KV_IDB_OVF(bk)--;  // this entry passed bucket b when it was inserted
    b = (b + 1) & kv->idmask;
  }
}

cllm_status_t kv__idmap_check_locked(const cllm_kv_cache_t *kv, uint32_t *ovf,
                                     uint64_t *entries) {
  /* every entry names a live slot with its tag; the overflow counts equal the
   * entries whose path from their home bucket passes each bucket */
  *entries = 0;
  for (uint32_t b = 0; b <= kv->idmask; b++) ovf[b] = 0;
  for (uint32_t b = 0; b <= kv->idmask; b++) {
    const kv_idbucket_t *bk = kv__id_bucket(kv, b);
    CLLM_CHECK(bk->tag[KV_IDB_N] == 0, "kv", "id map bucket %u: lane 7 has a tag", b);
    for (unsigned i = 0; i < KV_IDB_N; i++) {
      uint32_t tag = bk->tag[i], sp = bk->slot[i];
      CLLM_CHECK((tag == 0) == (sp == 0), "kv", "id map bucket %u entry %u half empty", b, i);
      if (sp == 0) continue;
      ++*entries;
      CLLM_CHECK(sp - 1u < kv->max_slots && tag == kv__id_tag(kv->slots[sp - 1u].id_hash), "kv",
                 "id map bucket %u entry %u is corrupt", b, i);
      for (uint32_t c = kv__id_home(kv, kv->slots[sp - 1u].id_hash); c != b;
           c = (c + 1) & kv->idmask)
        ovf[c]++;
    }
  }
  for (uint32_t b = 0; b <= kv->idmask; b++)
    CLLM_CHECK(KV_IDB_OVF(kv__id_bucket(kv, b)) == ovf[b], "kv",
               "id map bucket %u overflow count %u, expected %u", b,
               KV_IDB_OVF(kv__id_bucket(kv, b)), ovf[b]);
  return CLLM_OK;
}
