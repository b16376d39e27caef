/* The remote tier's hooks into the KV cache (called from lib/kv_cache.c and
 * lib/kv_prefix.c, each only when kv->tier is set) and the codec helpers
 * lib/kv_tier.c shares with lib/kv_tier_codec.c. Nothing here is public.
 *
 * Every *_locked function requires kv->lock.
 */
#ifndef CLLM_KV_TIER_INTERNAL_H
#define CLLM_KV_TIER_INTERNAL_H

#include <cllm/kv_tier.h>

#include "kv_internal.h"

/* Block b was just entered in the prefix index: record its chain digest. */
void kv__tier_on_index_locked(cllm_kv_cache_t *kv, uint32_t b);
/* CACHED block b is about to lose its content (eviction or reclaim). */
void kv__tier_on_evict_locked(cllm_kv_cache_t *kv, uint32_t b);
/* Fill the tier fields of *st. */
void kv__tier_stats_locked(const cllm_kv_cache_t *kv, cllm_kv_stats_t *st);

/* Codec: write the header and tokens of a record at out (record_bytes long; the
 * payload is filled by the caller), then seal it (the checksum). */
void kv__tier_encode_head(const cllm_kv_shape_t *shape, const cllm_kv_block_id_t *id,
                          const cllm_kv_token_t *tokens, void *out);
void kv__tier_seal(void *rec, size_t total, uint64_t secret);

#endif /* CLLM_KV_TIER_INTERNAL_H */
