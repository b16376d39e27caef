/* cllm-mem: the paged KV cache (fixed-size blocks, block tables, prefix caching,
 * LRU eviction on blocks, preemption) and the seed's copy API on top of it.
 *
 *   cllm_kv_config_t cfg = cllm_kv_config_default();
 *   cfg.layers = 32; cfg.kv_heads = 8; cfg.head_dim = 128; cfg.dtype_bytes = 2;
 *   cfg.capacity_bytes = 8ull << 30;             // or cfg.capacity_blocks
 *   cfg.preemption = true;
 *   cllm_kv_cache_t *kv;
 *   if (cllm_kv_cache_create(&cfg, &kv) < 0) ...;
 *
 *   cllm_kv_seq_t seq; size_t cached;
 *   rc = cllm_kv_seq_open_with_prompt(kv, "req-42", NULL, prompt, n_prompt, &seq, &cached);
 *   // tokens [cached, n_prompt) still need K/V: make room, write, record the ids
 *   cllm_kv_loc_t loc[4096];
 *   rc = cllm_kv_seq_reserve(kv, seq, n_prompt - cached, loc);
 *   for each token i: void *k, *v; cllm_kv_block_layer(kv, loc[i].block, layer, &k, &v);
 *       write K/V of token i at row loc[i].offset (row = kv_heads * head_dim elements)
 *   rc = cllm_kv_seq_commit(kv, seq, prompt + cached, n_prompt - cached);
 *   ... decode: reserve 1, write, commit 1, per step ...
 *   rc = cllm_kv_seq_close(kv, seq);            // full blocks stay CACHED for reuse
 *   cllm_kv_cache_destroy(kv);
 *
 * Storage: for every layer one K pool and one V pool, each
 * [num_blocks][block_tokens][kv_heads][head_dim] elements of dtype_bytes, 64-byte
 * aligned (2 MiB aligned in practice); a block id indexes every layer. Pointers
 * are stable for the cache's life. Pools are reserved up front and committed in
 * large steps as blocks are first used (THP + MADV_POPULATE_WRITE).
 *
 * Block states: FREE (no reusable content), ACTIVE (refcount >= 1: held by block
 * tables), CACHED (refcount 0, a full block of a known prefix, kept in LRU order
 * per priority band). A block is needed: FREE first (recycled, then never used),
 * then the least recently used CACHED block of the lowest band, then (preemption
 * on) the least recently used other sequence of the lowest band is preempted.
 *
 * The monitor (config; NULL = global) is charged CLLM_CAT_KV = (ACTIVE + CACHED)
 * blocks x block_bytes, always; the cache registers a reclaimer that drops CACHED
 * blocks when another component hits a limit.
 *
 * Sequences are named by a request id (a string, copied) and addressed by a
 * handle (cllm_kv_seq_t, slot + generation: a stale handle is CLLM_ENOTFOUND).
 * Copy-API entries (cllm_kv_put) share the id namespace with sequences.
 *
 * Thread safety: every function is `Thread: any` (one mutex per cache guards the
 * metadata). Writing and reading K/V data through block pointers takes no lock; a
 * caller must not write a block it shares (see reserve: the cache copies a shared
 * partial block before handing it out for writing). Callbacks run outside the lock.
 */
#ifndef CLLM_KV_CACHE_H
#define CLLM_KV_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cllm/export.h>
#include <cllm/monitor.h>
#include <cllm/status.h>

CLLM_EXTERN_C_BEGIN

typedef struct cllm_kv_cache cllm_kv_cache_t;

// A token id (llama.cpp's llama_token is int32_t too).
typedef int32_t cllm_kv_token_t;

// Number of retention priority bands: 0 is evicted first, CLLM_KV_BANDS-1 last.
#define CLLM_KV_BANDS 4
// No block (a 32-bit link's null value).
#define CLLM_KV_NONE UINT32_MAX

// Why the eviction callback was called.
typedef enum cllm_kv_evict_reason {
  CLLM_KV_EVICT_LRU = 0,        // a copy-API entry was dropped to make room
  CLLM_KV_EVICT_PREEMPTED = 1,  // a sequence was preempted (it stays until closed)
} cllm_kv_evict_reason_t;

// The seed's EvictionCallback: `id` is the request id, valid during the call only.
// Runs outside the cache lock on the thread whose call caused the eviction, after
// that call's work is done; it may call back into the cache (e.g. close the
// preempted sequence by id).
typedef void (*cllm_kv_evict_fn)(void *user, const char *id, cllm_kv_evict_reason_t reason);

// The block hash: chained over the block's tokens, the previous block's hash (0
// for the first block) and the salt. Override only to test collisions: a hit is
// always confirmed by comparing the stored token ids and the parent block.
typedef uint64_t (*cllm_kv_hash_fn)(void *user, uint64_t prev_hash, uint64_t salt,
                                    const cllm_kv_token_t *tokens, size_t n);

typedef struct cllm_kv_config {
  size_t struct_size;        // set by cllm_kv_config_default()
  uint32_t layers;           // required, >= 1
  uint32_t kv_heads;         // required, >= 1
  uint32_t head_dim;         // required, >= 1
  uint32_t dtype_bytes;      // 1, 2 or 4 (default 2)
  uint32_t block_tokens;     // power of two; 0 = 16
  size_t capacity_blocks;    // pool size in blocks; 0 = derive from capacity_bytes
  size_t capacity_bytes;     // pool size in bytes of K+V (rounded down to blocks)
  int numa_node;             // bind the pools to this node; -1 = no binding
  cllm_monitor_t *monitor;   // borrowed; NULL = cllm_monitor_global()
  cllm_kv_evict_fn evict_fn; // optional (set once, here: never changed later)
  void *evict_user;
  bool preemption;           // preempt the LRU other sequence when out of blocks
  bool populate;             // commit pools in steps as used (default true); false =
                             // reserve only, pages fault in on first touch
  size_t max_seqs;           // sequence + copy-entry slots; 0 = min(max(blocks,64),65536)
  size_t copy_budget_bytes;  // copy-API budget; 0 = the whole cache
  double max_pinned_fraction;// cap on pinned blocks as a fraction of the pool; 0 = 0.5
  cllm_kv_hash_fn hash_fn;   // NULL = the built-in 64-bit hash
  void *hash_user;
} cllm_kv_config_t;

// Defaults: no shape (layers etc. 0: must be set), dtype 2, block_tokens 16,
// numa_node -1, global monitor, no callback, preemption off, populate on.
// Thread: any.
CLLM_API cllm_kv_config_t cllm_kv_config_default(void);

// Create a cache. *out is NULL on error and nothing is leaked.
// Errors: CLLM_EINVAL (NULL, bad struct_size, zero shape, dtype not 1/2/4,
// block_tokens not a power of two, capacity 0 or below one block, fraction outside
// [0,1]), CLLM_EOVERFLOW (sizes overflow, more than 2^32-2 blocks), CLLM_ENOMEM
// (mapping, metadata, or the system topology could not be loaded),
// CLLM_ENOTFOUND/CLLM_ENOTSUP/CLLM_ESYS (NUMA binding),
// CLLM_ENOMEM/CLLM_EBUSY (reclaimer registration). Thread: any.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_kv_cache_create(const cllm_kv_config_t *cfg,
                                                            cllm_kv_cache_t **out);

// Destroy: unregisters the reclaimer, releases the monitor charge, unmaps the
// pools. NULL is a no-op. No other thread may use the cache. Thread: external-sync.
CLLM_API void cllm_kv_cache_destroy(cllm_kv_cache_t *kv);

// Bytes of one block (K and V, every layer) and the number of blocks.
// 0 for NULL. Thread: any.
CLLM_API size_t cllm_kv_block_bytes(const cllm_kv_cache_t *kv);
CLLM_API size_t cllm_kv_num_blocks(const cllm_kv_cache_t *kv);
CLLM_API uint32_t cllm_kv_block_tokens(const cllm_kv_cache_t *kv);

// The K and V data of `block` in `layer`: block_tokens rows of kv_heads*head_dim
// elements each. Stable pointers, no lock. Either out pointer may be NULL.
// Errors: CLLM_EINVAL (kv NULL), CLLM_ERANGE (block or layer out of range).
// Thread: any.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_kv_block_layer(const cllm_kv_cache_t *kv,
                                                           uint32_t block, uint32_t layer,
                                                           void **k, void **v);

/* ---- Sequences ------------------------------------------------------------------ */

// A sequence handle: copy it freely; it turns stale (CLLM_ENOTFOUND) once closed.
typedef struct cllm_kv_seq {
  uint32_t slot;
  uint32_t gen;
} cllm_kv_seq_t;

// Where one reserved token goes: row `offset` of `block`.
typedef struct cllm_kv_loc {
  uint32_t block;
  uint32_t offset;
} cllm_kv_loc_t;

// Per-sequence options (NULL = defaults: salt 0, priority 0).
typedef struct cllm_kv_seq_opts {
  uint64_t salt;     // tenant salt: prefixes are shared only between equal salts
  uint32_t priority; // retention band, 0 .. CLLM_KV_BANDS-1 (higher is kept longer)
} cllm_kv_seq_opts_t;

// Open an empty sequence named `id` (copied). Errors: CLLM_EINVAL (NULL, empty
// id, bad priority), CLLM_EEXIST (id already open, or a copy entry), CLLM_ENOMEM
// (no free slot: max_seqs, or the id copy). Thread: any.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_kv_seq_open(cllm_kv_cache_t *kv, const char *id,
                                                        const cllm_kv_seq_opts_t *opts,
                                                        cllm_kv_seq_t *out);

// Open a sequence and share the longest cached prefix of `tokens` (full blocks
// only, and at most (n-1)/block_tokens blocks, so at least one prompt token is left
// to compute). *n_cached = tokens already present (a multiple of block_tokens); the
// sequence's length and committed count start there. n == 0 is a plain open.
// Errors: as cllm_kv_seq_open; CLLM_EINVAL also for tokens NULL with n > 0.
// Thread: any.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_kv_seq_open_with_prompt(
    cllm_kv_cache_t *kv, const char *id, const cllm_kv_seq_opts_t *opts,
    const cllm_kv_token_t *tokens, size_t n, cllm_kv_seq_t *out, size_t *n_cached);

// Find the open (or preempted) sequence named `id`. Errors: CLLM_EINVAL,
// CLLM_ENOTFOUND (no such id, or it names a copy entry). Thread: any.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_kv_seq_find(cllm_kv_cache_t *kv, const char *id,
                                                        cllm_kv_seq_t *out);

// Make room for n_tokens new tokens at positions [length, length+n_tokens): blocks
// are taken as described above; a shared partial last block (after fork) is first
// copied (copy-on-write, that block only, under the lock). If `locs` is not NULL it
// receives n_tokens entries. Counts as a use (touch).
// Preemption and threads: with preemption on, a reserve may take every block of
// another sequence at once. Write or read a sequence's blocks only while no other
// thread can be reserving (e.g. one scheduler thread reserves for a step, then the
// kernels run, as in vLLM), or keep preemption off and handle CLLM_ENOMEM.
// Errors: CLLM_EINVAL (n_tokens 0, NULL kv), CLLM_ENOTFOUND (stale handle),
// CLLM_EPREEMPTED, CLLM_ERANGE (the sequence would exceed the whole cache: refused
// before anything is evicted), CLLM_ENOMEM (no block even after eviction /
// preemption, or the block table could not grow), CLLM_ELIMIT (the monitor refused
// even after using cached blocks). On error the sequence is unchanged (other
// sequences may have been preempted). Thread: any (one caller per sequence).
CLLM_API CLLM_NODISCARD cllm_status_t cllm_kv_seq_reserve(cllm_kv_cache_t *kv, cllm_kv_seq_t seq,
                                                           size_t n_tokens,
                                                           cllm_kv_loc_t *locs);

// Record the ids of the next n tokens written (positions [committed, committed+n),
// all reserved). Each block that becomes full is entered in the prefix index.
// Errors: CLLM_EINVAL (NULL tokens with n > 0, n 0), CLLM_ERANGE (past the
// reserved length), CLLM_ENOTFOUND, CLLM_EPREEMPTED. Thread: any.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_kv_seq_commit(cllm_kv_cache_t *kv, cllm_kv_seq_t seq,
                                                          const cllm_kv_token_t *tokens, size_t n);

// Copy the block table (block ids, position order) into out[0..cap). *n_blocks
// gets the number of blocks always; out NULL with cap 0 asks only the size.
// Errors: CLLM_EINVAL, CLLM_ENOTFOUND, CLLM_EPREEMPTED, CLLM_ERANGE (cap too small;
// nothing copied). Thread: any.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_kv_seq_block_table(cllm_kv_cache_t *kv,
                                                               cllm_kv_seq_t seq, uint32_t *out,
                                                               size_t cap, size_t *n_blocks);

// Tokens held (reserved positions). Errors: CLLM_EINVAL, CLLM_ENOTFOUND,
// CLLM_EPREEMPTED. Thread: any.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_kv_seq_length(cllm_kv_cache_t *kv, cllm_kv_seq_t seq,
                                                          size_t *length);

// Mark the sequence most recently used (preemption order). Errors as length.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_kv_seq_touch(cllm_kv_cache_t *kv, cllm_kv_seq_t seq);

// Close: release the blocks tail first (full committed blocks become CACHED, the
// rest FREE) and forget the id. Closing a preempted sequence is CLLM_OK.
// Errors: CLLM_EINVAL, CLLM_ENOTFOUND (stale handle: e.g. closed twice). Thread: any.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_kv_seq_close(cllm_kv_cache_t *kv, cllm_kv_seq_t seq);

// Fork: a new sequence `child_id` sharing every block of `parent`, the partial
// last block included (refcounts up; the first reserve of either that writes into
// a shared partial block copies it). Same salt and priority.
// Errors: as open; CLLM_ENOTFOUND/CLLM_EPREEMPTED for the parent. Thread: any.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_kv_seq_fork(cllm_kv_cache_t *kv, cllm_kv_seq_t parent,
                                                        const char *child_id,
                                                        cllm_kv_seq_t *child);

// Pin the sequence's full committed (indexed) blocks: once released they stay
// CACHED but are never evicted or reclaimed until unpinned. Pinned blocks are
// capped at max_pinned_fraction of the pool. *n_pinned (optional) gets the
// blocks newly pinned. Errors: CLLM_EINVAL, CLLM_ENOTFOUND, CLLM_EPREEMPTED,
// CLLM_ELIMIT (would pass the cap; nothing pinned). Thread: any.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_kv_seq_pin(cllm_kv_cache_t *kv, cllm_kv_seq_t seq,
                                                       size_t *n_pinned);
// Unpin the sequence's pinned blocks (reopen the prompt to reach blocks pinned
// by a closed sequence). Errors as pin (never ELIMIT). Thread: any.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_kv_seq_unpin(cllm_kv_cache_t *kv, cllm_kv_seq_t seq,
                                                         size_t *n_unpinned);

/* ---- The seed's copy API (KVCacheMemoryManager) ----------------------------------
 * Whole K and V float arrays per request id, stored at block granularity in the
 * paged pools: an entry of k key and v value floats takes
 * max(ceil(4k / B), ceil(4v / B)) blocks, B = layers * block_tokens * kv_heads *
 * head_dim * dtype_bytes (one block's K bytes). The budget (copy_budget_bytes, or
 * the whole cache) counts those blocks x block_bytes. Data is copied under the lock.
 */

// Insert (or replace) `id`: least recently used entries are evicted (eviction
// callback, CLLM_KV_EVICT_LRU) until the entry fits the budget, and one is evicted
// when every slot (max_seqs) is taken by a new id; the entry becomes most recently
// used. A replaced entry is not double counted. NULL arrays are
// allowed with a count of 0.
// Errors: CLLM_EINVAL (NULL kv/id, empty id, NULL array with count > 0),
// CLLM_EOVERFLOW, CLLM_ERANGE (larger than the budget: refused before anything is
// evicted), CLLM_EEXIST (id is an open sequence), CLLM_ENOMEM (blocks held by
// sequences, slots or id copy), CLLM_ELIMIT (monitor). On error the entry (if it
// existed) is unchanged. Thread: any.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_kv_put(cllm_kv_cache_t *kv, const char *id,
                                                   const float *keys, size_t n_keys,
                                                   const float *values, size_t n_values);

// Copy entry `id` out and make it most recently used. *n_keys / *n_values get the
// sizes always (either may be NULL); with both arrays NULL and caps 0 it only asks
// the sizes (and is not a use). Errors: CLLM_EINVAL, CLLM_ENOTFOUND, CLLM_ERANGE
// (a cap is too small: nothing copied, not a use). Thread: any.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_kv_get(cllm_kv_cache_t *kv, const char *id,
                                                   float *keys_out, size_t keys_cap,
                                                   size_t *n_keys, float *values_out,
                                                   size_t values_cap, size_t *n_values);

// Drop entry `id` (no callback). Errors: CLLM_EINVAL, CLLM_ENOTFOUND (no such entry,
// or `id` names a sequence: close it instead). Thread: any.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_kv_evict(cllm_kv_cache_t *kv, const char *id);

// Copy-API bytes in use (entry blocks x block_bytes) and the budget. 0 for NULL.
// Thread: any.
CLLM_API size_t cllm_kv_used_bytes(cllm_kv_cache_t *kv);
CLLM_API size_t cllm_kv_total_bytes(const cllm_kv_cache_t *kv);

/* ---- Statistics and checks ---------------------------------------------------- */

typedef struct cllm_kv_stats {
  size_t struct_size;       // the caller sets sizeof(cllm_kv_stats_t)
  size_t num_blocks;
  size_t block_bytes;
  uint32_t block_tokens;
  size_t blocks_free;       // recycled FREE + never used
  size_t blocks_active;
  size_t blocks_cached;
  size_t blocks_pinned;     // pinned (ACTIVE or CACHED)
  size_t blocks_committed;  // blocks whose pages are committed (populated)
  size_t tokens_stored;     // token rows in use in ACTIVE blocks (shared counted once)
  double utilisation;       // tokens_stored / (blocks_active x block_tokens); 1 if none
  size_t kv_bytes;          // charged to the monitor: (active + cached) x block_bytes
  size_t sequences;         // open + preempted sequences
  size_t copy_entries;
  size_t copy_used_bytes;
  uint64_t prefix_query_tokens; // tokens asked for in open_with_prompt
  uint64_t prefix_hit_tokens;   // tokens served from the cache
  uint64_t evictions;           // CACHED blocks reused or reclaimed
  uint64_t copy_evictions;      // copy-API entries evicted by LRU
  uint64_t preemptions;
  uint64_t cow_copies;
  uint64_t refused;             // reserve / put calls refused
  uint64_t reclaimed_blocks;    // CACHED blocks dropped by the monitor's reclaimer
  /* the remote tier (cllm/kv_tier.h); all 0 without one */
  uint32_t tier_state;             // CLLM_KV_TIER_NONE / _UP / _DOWN
  uint64_t tier_probes;            // probe calls
  uint64_t tier_remote_hit_tokens; // tokens fetched, verified and committed
  uint64_t tier_fetched_bytes;     // record bytes read by fetches
  uint64_t tier_fetch_ns;          // time spent in fetches
  uint64_t tier_spills;            // blocks written to the store
  uint64_t tier_spill_bytes;       // record bytes written
  uint64_t tier_spills_skipped;    // blocks evicted or changed before they were written
  uint64_t tier_errors;            // store operations failed (connection, protocol)
  uint64_t tier_timeouts;          // store operations past their deadline
  uint64_t tier_reconnects;        // connections made again after a failure
  uint64_t tier_rejects_oom;       // puts refused: the store is full
  uint64_t tier_rejects_noperm;    // puts refused: not permitted
  uint64_t tier_rejects_record;    // fetched records that failed verification
} cllm_kv_stats_t;

// Fill *st (O(1)). Errors: CLLM_EINVAL (NULL, struct_size too small). Thread: any.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_kv_stats(cllm_kv_cache_t *kv, cllm_kv_stats_t *st);

// Verify every invariant (O(blocks + sequences), under the lock): block states and
// counts, refcounts vs block tables, free and LRU list integrity, the hash index vs
// the indexed blocks, the id map, token and copy counters, and the monitor charge.
// Errors: CLLM_ECORRUPT (logged), CLLM_EINVAL, CLLM_ENOMEM (scratch). Thread: any.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_kv_check(cllm_kv_cache_t *kv);

CLLM_EXTERN_C_END
#endif /* CLLM_KV_CACHE_H */
