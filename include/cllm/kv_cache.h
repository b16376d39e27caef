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
 *   cllm_kv_layer_view_t lv[32];                 // once: every layer's pool layout
 *   for (uint32_t l = 0; l < 32; l++) CLLM_DISCARD(cllm_kv_layer_view(kv, l, &lv[l]));
 *
 *   cllm_kv_seq_t seq; size_t pos;               // pos: the next position to compute
 *   rc = cllm_kv_seq_open_with_prompt(kv, "req-42", NULL, prompt, n_prompt, &seq, &pos);
 *   for (;;) {                                   // forward(token, pos), one token a step
 *     cllm_kv_loc_t loc;
 *     rc = cllm_kv_seq_ensure(kv, seq, pos, 1, &loc);     // one lock: slot for `pos`
 *     for each layer l: write K/V of the token at
 *         (char *)lv[l].k + loc.block * lv[l].block_stride + loc.offset * lv[l].row_bytes
 *     const uint32_t *table; size_t nb;                   // attention over [0, pos]
 *     rc = cllm_kv_seq_table_view(kv, seq, &table, &nb);  // no copy
 *     for t in [0, pos]: row t is in block table[t / block_tokens], slot t % block_tokens
 *     rc = cllm_kv_seq_commit(kv, seq, &token, 1);        // its id, for prefix reuse
 *     pos++;
 *   }
 *   rc = cllm_kv_seq_close(kv, seq);            // full blocks stay CACHED for reuse
 *   cllm_kv_cache_destroy(kv);
 *
 * Storage: for every layer one K pool and one V pool, each
 * [num_blocks][block_tokens][kv_heads][head_dim] elements of dtype_bytes, 64-byte
 * aligned (2 MiB aligned in practice); a block id indexes every layer. Pointers
 * are stable for the cache's life (cllm_kv_layer_view gives a layer's bases and
 * strides). Pools are reserved up front and committed as blocks are first used.
 *
 * Block states: FREE (no reusable content), ACTIVE (refcount >= 1: held by block
 * tables), CACHED (refcount 0, a full block of a known prefix, kept in LRU order
 * per priority band). A block is needed: FREE first (recycled, then never used),
 * then the least recently used CACHED block of the lowest band, then (preemption
 * on) the least recently used other sequence of the lowest band is preempted.
 *
 * Residency. The monitor (config; NULL = global) is charged CLLM_CAT_KV for the
 * pool memory the cache makes resident, before it is made resident: the committed
 * prefix of every pool (blocks are committed in the order they are first used),
 * less the blocks whose pages the reclaimer gave back. With populate (default) the
 * prefix grows in huge-page (2 MiB) steps, a step ahead where the monitor allows
 * it, and is pre-faulted; without, it grows by pages, the pools are advised
 * MADV_NOHUGEPAGE (so THP "always" cannot fault in more than is charged) and pages
 * fault in when written. A FREE block keeps its pages and its charge: the charge
 * is the committed high-water, not the blocks in use (kv_bytes). Stats report the
 * resident bytes read back from the kernel next to the charge: resident <= charge,
 * no slack. cllm_kv_footprint gives the most a cache can charge.
 * The cache registers a reclaimer: when another component is refused, it gives
 * back the pages of FREE blocks, then drops CACHED blocks (LRU order) and gives
 * back theirs, releasing their charge; reuse charges them again. Pages go back in
 * units of the fewest blocks whose share of a pool is whole pages (P / gcd(
 * block_tokens x kv_heads x head_dim x dtype_bytes, P) blocks, all FREE, where P
 * is the page: 2 MiB with populate, so huge pages are never split, 4 KiB
 * without); a shape needing more than 64 blocks per unit frees nothing. The cache charges with
 * cllm_monitor_try_reserve: its refusals count in the monitor's try_refusals and in
 * this cache's `refused`, and never run the limit callback.
 *
 * Sequences are named by a request id (a string, copied) and addressed by a
 * handle (cllm_kv_seq_t, slot + generation: a stale handle is CLLM_ENOTFOUND).
 * Copy-API entries (cllm_kv_put) share the id namespace with sequences.
 *
 * Thread safety: every function is `Thread: any` (one mutex per cache guards the
 * metadata). Writing and reading K/V data through block pointers takes no lock; a
 * caller must not write a block it shares (see reserve: the cache copies a shared
 * partial block before handing it out for writing). Callbacks run outside the lock.
 * Calls that change nothing visible take a const cache (they still take its mutex).
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

// Where the pools' pages go; the policy is applied (mbind) before any page is
// touched. One node, or a topology that is not this machine: the kernel's default.
typedef enum cllm_kv_numa {
  CLLM_KV_NUMA_AUTO = 0,       // default: BIND when numa_node >= 0, else INTERLEAVE on
                               // a machine with several nodes, else nothing
  CLLM_KV_NUMA_LOCAL = 1,      // the creating thread's node (bound on several nodes)
  CLLM_KV_NUMA_BIND = 2,       // numa_node (required, >= 0), strict
  CLLM_KV_NUMA_INTERLEAVE = 3, // every node, page by page (2 MiB pages with populate)
  CLLM_KV_NUMA_NONE = 4,       // no policy: first touch decides
} cllm_kv_numa_t;

typedef struct cllm_kv_config {
  size_t struct_size;        // set by cllm_kv_config_default(); an older, smaller struct
                             // gets the defaults for the fields it lacks
  uint32_t layers;           // required, >= 1
  uint32_t kv_heads;         // required, >= 1
  uint32_t head_dim;         // required, >= 1
  uint32_t dtype_bytes;      // required: bytes of one K/V element, 1, 2 or 4
  uint32_t block_tokens;     // power of two; 0 = 16
  size_t capacity_blocks;    // pool size in blocks; 0 = derive from capacity_bytes
  size_t capacity_bytes;     // pool size in bytes of K+V (rounded down to blocks)
  int numa_node;             // the node of CLLM_KV_NUMA_BIND (and of AUTO when >= 0); -1
  cllm_monitor_t *monitor;   // borrowed; NULL = cllm_monitor_global()
  cllm_kv_evict_fn evict_fn; // optional (set once, here: never changed later)
  void *evict_user;
  bool preemption;           // preempt the LRU other sequence when out of blocks
  bool populate;             // default true: commit in 2 MiB (THP-advised) steps and
                             // pre-fault; false: commit by pages, no huge pages
                             // (MADV_NOHUGEPAGE), pages fault in on first write
  size_t max_seqs;           // sequence + copy-entry slots; 0 = min(max(blocks,64),65536)
  size_t copy_budget_bytes;  // copy-API budget; 0 = the whole cache
  double max_pinned_fraction;// cap on pinned blocks as a fraction of the pool; 0 = 0.5
  cllm_kv_hash_fn hash_fn;   // NULL = the built-in 64-bit hash
  void *hash_user;
  cllm_kv_numa_t numa;       // placement of the pools (default AUTO)
} cllm_kv_config_t;

// Defaults: no shape (layers, kv_heads, head_dim, dtype_bytes 0: must be set), block_tokens 16,
// numa_node -1, global monitor, no callback, preemption off, populate on.
// Thread: any.
CLLM_API cllm_kv_config_t cllm_kv_config_default(void);

// Create a cache. *out is NULL on error and nothing is leaked.
// cfg NULL means the defaults, which have no shape: refused like a missing field.
// Errors: CLLM_EINVAL (NULL, struct_size below sizeof(size_t) or larger with unknown
// fields set, zero shape (the field is logged), dtype_bytes not 1/2/4
// (0 included: there is no default; logged), block_tokens not a power of two,
// capacity 0 or below one block, fraction outside [0,1], unknown numa, BIND without
// a node), CLLM_EOVERFLOW (sizes overflow, more than 2^32-2 blocks), CLLM_ENOMEM
// (mapping, metadata, or the system topology could not be loaded),
// CLLM_ENOTFOUND/CLLM_ENOTSUP/CLLM_ESYS (a BIND, or an INTERLEAVE on several
// nodes, that could not be applied; LOCAL falls back to first touch),
// CLLM_ENOMEM/CLLM_EBUSY (reclaimer registration). Thread: any.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_kv_cache_create(const cllm_kv_config_t *cfg,
                                                            cllm_kv_cache_t **out);

// The most a cache created from *cfg charges the monitor: every pool committed
// (2 x layers x the pool rounded up to the commit granule). A new cache charges 0;
// the charge reaches this once every block has been used. 0 for a config that
// create refuses. Thread: any.
CLLM_API size_t cllm_kv_footprint(const cllm_kv_config_t *cfg);

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

// The layout of one layer's pools: K of token slot s of block b lies at
// (char *)k + b * block_stride + s * row_bytes (V likewise from v). Valid for the
// cache's life. Errors: CLLM_EINVAL (NULL), CLLM_ERANGE (layer). Thread: any.
typedef struct cllm_kv_layer_view {
  void *k, *v;          // block 0, slot 0 of the layer's K and V pools
  size_t block_stride;  // bytes from one block to the next (block_tokens x row_bytes)
  size_t row_bytes;     // one token: kv_heads x head_dim x dtype_bytes
  uint32_t block_tokens;
  uint32_t num_blocks;
} cllm_kv_layer_view_t;
CLLM_API CLLM_NODISCARD cllm_status_t cllm_kv_layer_view(const cllm_kv_cache_t *kv,
                                                          uint32_t layer,
                                                          cllm_kv_layer_view_t *out);

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
CLLM_API CLLM_NODISCARD cllm_status_t cllm_kv_seq_find(const cllm_kv_cache_t *kv, const char *id,
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

// Make positions [pos, pos + n) writable in one call (one lock): positions below the
// length are already reserved and only located; the rest are reserved as by
// cllm_kv_seq_reserve (copy-on-write of a shared partial last block included).
// pos must not lie past the length (no gaps). If `locs` is not NULL it receives n
// entries, locs[i] for position pos + i. A block already reserved is not copied
// for a write: after a fork, rewrite only positions at or past the fork's length.
// Errors: CLLM_EINVAL (kv NULL, n 0), CLLM_ERANGE (pos > length: a gap; or past the
// whole cache), and as cllm_kv_seq_reserve. On error the sequence is unchanged.
// Thread: any (one caller per sequence).
CLLM_API CLLM_NODISCARD cllm_status_t cllm_kv_seq_ensure(cllm_kv_cache_t *kv, cllm_kv_seq_t seq,
                                                          size_t pos, size_t n,
                                                          cllm_kv_loc_t *locs);

// Token ids recorded so far (commit's next position). Errors as length. Thread: any.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_kv_seq_committed(const cllm_kv_cache_t *kv,
                                                             cllm_kv_seq_t seq, size_t *n);

// The sequence's own block table (block ids in position order), not a copy:
// *table stays valid and unchanged until a call adds a block to this sequence or
// copies its shared last block (a reserve or ensure of it reaching a new block, or
// the first write after a fork), closes it, or preempts it (possible only with
// preemption on, while another thread reserves). So the thread that drives the
// sequence reads it lock-free between its own calls, and a one-token-per-step loop
// asks again only when ensure returns offset 0. Errors: as length.
// Thread: any (read the table as stated).
CLLM_API CLLM_NODISCARD cllm_status_t cllm_kv_seq_table_view(const cllm_kv_cache_t *kv,
                                                              cllm_kv_seq_t seq,
                                                              const uint32_t **table,
                                                              size_t *n_blocks);

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
CLLM_API CLLM_NODISCARD cllm_status_t cllm_kv_seq_block_table(const cllm_kv_cache_t *kv,
                                                               cllm_kv_seq_t seq, uint32_t *out,
                                                               size_t cap, size_t *n_blocks);

// Tokens held (reserved positions). Errors: CLLM_EINVAL, CLLM_ENOTFOUND,
// CLLM_EPREEMPTED. Thread: any.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_kv_seq_length(const cllm_kv_cache_t *kv, cllm_kv_seq_t seq,
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
CLLM_API size_t cllm_kv_used_bytes(const cllm_kv_cache_t *kv);
CLLM_API size_t cllm_kv_total_bytes(const cllm_kv_cache_t *kv);

/* ---- Statistics and checks ---------------------------------------------------- */

typedef struct cllm_kv_stats {
  size_t struct_size;       // the caller sets sizeof(cllm_kv_stats_t); stats writes
                            // min(that, its own size) bytes and stores that count here
  size_t num_blocks;
  size_t block_bytes;
  uint32_t block_tokens;
  size_t blocks_free;       // recycled FREE + never used
  size_t blocks_active;
  size_t blocks_cached;
  size_t blocks_pinned;     // pinned (ACTIVE or CACHED)
  size_t blocks_committed;  // blocks inside every pool's committed (charged) prefix
  size_t tokens_stored;     // token rows in use in ACTIVE blocks (shared counted once)
  double utilisation;       // tokens_stored / (blocks_active x block_tokens); 1 if none
  size_t kv_bytes;          // blocks in use: (active + cached) x block_bytes
  size_t sequences;         // open + preempted sequences
  size_t copy_entries;
  size_t copy_used_bytes;
  uint64_t prefix_query_tokens; // tokens asked for in open_with_prompt
  uint64_t prefix_hit_tokens;   // tokens served from the cache
  uint64_t evictions;           // CACHED blocks reused or reclaimed
  uint64_t copy_evictions;      // copy-API entries evicted by LRU
  uint64_t preemptions;
  uint64_t cow_copies;
  uint64_t refused;             // reserve / ensure / put calls refused
  uint64_t reclaimed_blocks;    // CACHED blocks dropped by the monitor's reclaimer
  size_t charged_bytes;         // held in the monitor (CLLM_CAT_KV): see "Residency"
  size_t resident_bytes;        // pool bytes resident, read back from the kernel
                                // (mincore over the pools); SIZE_MAX if unknown
  size_t blocks_given_back;     // FREE blocks whose pages were given back (not charged)
  uint64_t given_back_blocks;   // times a block's pages were given back (reclaimer)
  cllm_kv_numa_t numa_applied;  // the policy in force (NONE when none was applied)
  cllm_status_t numa_status;    // why it differs from the one asked for, else CLLM_OK
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
  uint64_t tier_rejects_mac;       // of those, records whose MAC (mac_key) did not verify
} cllm_kv_stats_t;

// Fill *st: O(1) under the lock, then resident_bytes from the kernel (one mincore
// per 4 MiB of pools, no lock). Errors: CLLM_EINVAL (NULL, struct_size below
// sizeof(size_t)).
// Thread: any.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_kv_stats(const cllm_kv_cache_t *kv, cllm_kv_stats_t *st);

// Verify every invariant (O(blocks + sequences), under the lock): block states and
// counts, refcounts vs block tables, free and LRU list integrity, the hash index vs
// the indexed blocks, the id map, token and copy counters, and the monitor charge.
// Errors: CLLM_ECORRUPT (logged), CLLM_EINVAL, CLLM_ENOMEM (scratch). Thread: any.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_kv_check(const cllm_kv_cache_t *kv);

CLLM_EXTERN_C_END
#endif /* CLLM_KV_CACHE_H */
