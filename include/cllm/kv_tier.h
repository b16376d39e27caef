/* cllm-mem: a remote tier for the KV cache's full blocks, shared by many caches
 * (processes, machines) through a key-value store such as Redis.
 *
 *   cllm_kv_store_t store;                       // e.g. cllm_kv_store_fake_create or
 *   cllm_kv_store_redis_create(...) (//:cllm_kv_redis)
 *   cllm_kv_tier_config_t tc = cllm_kv_tier_config_default();
 *   tc.store = store; tc.model_id = "llama-3.1-8b@rev"; tc.model_id_len = 16;
 *   cllm_kv_tier_t *tier;
 *   rc = cllm_kv_tier_create(kv, &tc, &tier);    // the tier owns the store from here
 *   rc = cllm_kv_seq_open_with_prompt(kv, id, &opts, prompt, n, &seq, &cached);
 *   size_t avail, ready;
 *   rc = cllm_kv_tier_probe(tier, seq, prompt, n, &avail);   // tokens the store has next
 *   if (avail > 0) rc = cllm_kv_tier_fetch(tier, seq, prompt, n, avail, &ready);
 *   // the sequence now holds `cached + ready` committed tokens: compute the rest
 *   ...
 *   cllm_kv_tier_destroy(tier);                  // before cllm_kv_cache_destroy
 *
 * What is stored: one value per full indexed block, under the key
 *   cllm:v1:<model fingerprint, 16 hex>:<namespace, 16 hex>:<chain digest, 32 hex>
 * The namespace is a keyed hash of the sequence's salt (never the salt itself);
 * the chain digest is a 128-bit BLAKE2b over the parent's digest and the block's
 * token ids (the root's parent digest covers the fingerprint and namespace), so a
 * key names one exact token prefix of one model and tenant. The value is a record:
 * a little-endian header (CLLM_KV_TIER_MAGIC, format version, the shape, the
 * model fingerprint, the block's position in its chain, its digest and parent
 * digest, payload bytes), the block's token ids, the payload exactly as the pools
 * hold it (for each layer: the K rows then the V rows) and a 64-bit checksum over
 * all of it (keyed with `secret` when set), or with `mac_key` a keyed BLAKE2b
 * tag (a MAC: without the key a valid record cannot be forged). Values are
 * immutable: a put never replaces an existing key.
 *
 * A fetched block is used only if every field matches what the prompt implies
 * (format, shape, fingerprint, position, digest, parent, tokens, length,
 * checksum); the first block that does not is counted as a reject and the fetch
 * stops there: the caller computes from that point.
 *
 * Spilling: a tier thread writes indexed blocks that are not yet stored. Write-
 * through writes each block when it is released to CACHED; write-back (default)
 * writes the least recently released ones while free blocks are below
 * `spill_low_water` of the pool (eviction is near). Allocation, eviction and the
 * reclaimer never wait for the tier: a CACHED block evicted before it was written
 * is dropped and counted (tier_spill_dropped).
 *
 * Network I/O runs only on the tier's threads (one spill thread, and
 * `fetch_threads` threads running probe/fetch callers' jobs), each with its own
 * store connection and with SIGPIPE blocked; the cache lock is taken only for
 * short state changes. When the store fails `breaker_failures` times in a row
 * the tier is DOWN: probes answer 0 at once and nothing is spilled; the spill
 * thread pings it every `retry_ms` and reconnects, and the tier is UP again
 * after the first good answer.
 */
#ifndef CLLM_KV_TIER_H
#define CLLM_KV_TIER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cllm/export.h>
#include <cllm/kv_cache.h>
#include <cllm/status.h>

CLLM_EXTERN_C_BEGIN

/* ---- The store interface ------------------------------------------------------ */

/* A store is a table of operations and a user pointer. Every operation except
 * close runs on one connection made by `connect` for one tier thread (a
 * connection is used by one thread at a time). `deadline_ns` is an absolute
 * CLOCK_MONOTONIC time: the operation returns by then.
 * Results: CLLM_OK; CLLM_ENOTFOUND (get: no such key); CLLM_ERANGE (get: the
 * value is larger than cap; *len gets its size); CLLM_EBUSY (the deadline passed);
 * CLLM_EIO (connection or protocol error); CLLM_ELIMIT (the store is full, Redis
 * -OOM: not retried); CLLM_ESTATE (not permitted, Redis NOPERM: not retried). */
typedef struct cllm_kv_store_ops {
  cllm_status_t (*connect)(void *user, void **conn);
  void (*disconnect)(void *user, void *conn);
  // present[i] = 1 if keys[i] exists, else 0.
  cllm_status_t (*exists)(void *user, void *conn, const char *const *keys, size_t n,
                          uint8_t *present, int64_t deadline_ns);
  cllm_status_t (*get)(void *user, void *conn, const char *key, void *buf, size_t cap,
                       size_t *len, int64_t deadline_ns);
  // Store key = val unless key exists (then CLLM_OK, nothing written).
  cllm_status_t (*put)(void *user, void *conn, const char *key, const void *val, size_t len,
                       int64_t deadline_ns);
  cllm_status_t (*ping)(void *user, void *conn, int64_t deadline_ns);
  // Release the store (every connection is already disconnected).
  void (*close)(void *user);
  // Optional (NULL: the tier calls put once per key): put keys[i] = vals[i]
  // (lens[i] bytes) for i < n as put does, in one pipeline; rcs[i] gets each
  // put's result. Returns CLLM_OK when every put was answered, else the failure
  // that ended the pipeline (EBUSY / EIO; the unanswered rcs[i] hold it too).
  cllm_status_t (*put_batch)(void *user, void *conn, const char *const *keys,
                             const void *const *vals, const size_t *lens, size_t n,
                             cllm_status_t *rcs, int64_t deadline_ns);
} cllm_kv_store_ops_t;

typedef struct cllm_kv_store {
  const cllm_kv_store_ops_t *ops;
  void *user;
} cllm_kv_store_t;

/* ---- The in-process fake store (tests, fuzzers, single-process runs) ---------- */

typedef struct cllm_kv_fake cllm_kv_fake_t;

// A fake store: a hash map in memory behind the same interface. *fake (optional)
// gets a handle for injecting faults; it stays valid until the store is closed.
// Errors: CLLM_EINVAL (out NULL), CLLM_ENOMEM. Thread: any.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_kv_store_fake_create(cllm_kv_store_t *out,
                                                                 cllm_kv_fake_t **fake);

// Faults: the next `n` operations (of any kind, connect included) fail with `rc`
// (0 disarms); every operation first sleeps `delay_us` (an operation whose
// deadline passes while sleeping returns CLLM_EBUSY); `down` makes every operation
// fail with CLLM_EIO; puts that would take the stored bytes past `max_bytes`
// (0 = no limit) fail with CLLM_ELIMIT; puts of keys starting with `deny_prefix`
// (NULL = none; copied) fail with CLLM_ESTATE. Thread: any.
CLLM_API void cllm_kv_fake_fail_next(cllm_kv_fake_t *f, unsigned n, cllm_status_t rc);
CLLM_API void cllm_kv_fake_set_delay(cllm_kv_fake_t *f, uint32_t delay_us);
CLLM_API void cllm_kv_fake_set_down(cllm_kv_fake_t *f, bool down);
// hold: every operation but connect waits until released (or its deadline passes:
// CLLM_EBUSY); waiting: how many operations wait now. Thread: any.
CLLM_API void cllm_kv_fake_hold(cllm_kv_fake_t *f, bool hold);
CLLM_API unsigned cllm_kv_fake_waiting(cllm_kv_fake_t *f);
CLLM_API void cllm_kv_fake_set_max_bytes(cllm_kv_fake_t *f, size_t max_bytes);
CLLM_API CLLM_NODISCARD cllm_status_t cllm_kv_fake_set_deny_prefix(cllm_kv_fake_t *f,
                                                                    const char *prefix);
// Raw access, bypassing faults: overwrite (or create) a value, read one
// (CLLM_ENOTFOUND / CLLM_ERANGE as get), delete one, count keys and bytes, and
// copy the n-th key (iteration order, stable while nothing is added or removed).
// Thread: any.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_kv_fake_raw_set(cllm_kv_fake_t *f, const char *key,
                                                            const void *val, size_t len);
CLLM_API CLLM_NODISCARD cllm_status_t cllm_kv_fake_raw_get(cllm_kv_fake_t *f, const char *key,
                                                            void *buf, size_t cap, size_t *len);
CLLM_API CLLM_NODISCARD cllm_status_t cllm_kv_fake_raw_del(cllm_kv_fake_t *f, const char *key);
CLLM_API size_t cllm_kv_fake_count(cllm_kv_fake_t *f, size_t *bytes);
CLLM_API CLLM_NODISCARD cllm_status_t cllm_kv_fake_key_at(cllm_kv_fake_t *f, size_t i, char *buf,
                                                           size_t cap);

/* ---- Records -------------------------------------------------------------------- */

#define CLLM_KV_TIER_MAGIC 0x424b4c43u  // "CLKB" little-endian
#define CLLM_KV_TIER_VERSION 1u
#define CLLM_KV_TIER_HEADER_BYTES 96u
#define CLLM_KV_TIER_KEY_MAX 96  // bytes of a key with its NUL

// The identity of one block for the codec (also what a key is made from).
typedef struct cllm_kv_block_id {
  uint64_t position;     // block index in its chain (0: the first block)
  uint8_t digest[16];    // chain digest of this block
  uint8_t parent[16];    // chain digest of the previous block (the root digest at 0)
} cllm_kv_block_id_t;

// The model and layout a record belongs to.
typedef struct cllm_kv_shape {
  uint32_t layers, kv_heads, head_dim, dtype_bytes, block_tokens;
  uint64_t fingerprint;  // cllm_kv_tier_fingerprint of the above and the model id
} cllm_kv_shape_t;

// The fingerprint of a shape and the runtime's model id bytes (may be NULL with 0).
// Thread: any.
CLLM_API uint64_t cllm_kv_tier_fingerprint(const cllm_kv_shape_t *shape, const void *model_id,
                                           size_t model_id_len);
// The namespace of a salt under a deployment secret (keyed, one-way). Thread: any.
CLLM_API uint64_t cllm_kv_tier_namespace(uint64_t salt, uint64_t secret);
// The root digest (parent of position 0) of a fingerprint and namespace, and one
// chain step over block_tokens token ids. Thread: any.
CLLM_API void cllm_kv_tier_root_digest(uint64_t fingerprint, uint64_t ns, uint8_t out[16]);
CLLM_API void cllm_kv_tier_chain_digest(const uint8_t parent[16], const cllm_kv_token_t *tokens,
                                        size_t n, uint8_t out[16]);
// The key of a block: "cllm:v1:<fp>:<ns>:<digest>" into buf (>= CLLM_KV_TIER_KEY_MAX).
// Thread: any.
CLLM_API void cllm_kv_tier_key(uint64_t fingerprint, uint64_t ns, const uint8_t digest[16],
                               char *buf);
// Bytes of a record for a shape (0 on overflow or a bad shape). Thread: any.
CLLM_API size_t cllm_kv_tier_record_bytes(const cllm_kv_shape_t *shape);
// Encode a record: header, tokens[block_tokens], the payload (payload_bytes =
// 2 x layers x block_tokens x kv_heads x head_dim x dtype_bytes) and the checksum.
// Errors: CLLM_EINVAL (NULL, bad shape), CLLM_ERANGE (cap too small). Thread: any.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_kv_tier_encode(
    const cllm_kv_shape_t *shape, const cllm_kv_block_id_t *id, const cllm_kv_token_t *tokens,
    const void *payload, uint64_t secret, void *out, size_t cap, size_t *len);

// Why a record was rejected.
typedef enum cllm_kv_reject {
  CLLM_KV_REJECT_NONE = 0,
  CLLM_KV_REJECT_FORMAT = 1,       // length, magic, version or header size
  CLLM_KV_REJECT_FINGERPRINT = 2,  // shape or model fingerprint
  CLLM_KV_REJECT_POSITION = 3,
  CLLM_KV_REJECT_DIGEST = 4,
  CLLM_KV_REJECT_PARENT = 5,
  CLLM_KV_REJECT_TOKENS = 6,
  CLLM_KV_REJECT_CHECKSUM = 7,
  CLLM_KV_REJECT_MAC = 8,  // MAC tag wrong, missing (the reader has a MAC key) or
                           // unverifiable (it has none)
  CLLM_KV_REJECT_COUNT
} cllm_kv_reject_t;

// Verify a record of `len` bytes against what the caller expects (shape, id,
// tokens); on success *payload points at the payload inside rec. Returns the
// first failing reason (checked in the order of the enum), NONE when valid.
// Thread: any.
CLLM_API cllm_kv_reject_t cllm_kv_tier_verify(const cllm_kv_shape_t *shape,
                                              const cllm_kv_block_id_t *id,
                                              const cllm_kv_token_t *tokens, uint64_t secret,
                                              const void *rec, size_t len, const void **payload);

/* ---- The tier --------------------------------------------------------------------- */

typedef struct cllm_kv_tier cllm_kv_tier_t;

/* Block events, for routers that track which server holds which prefix (the
 * vLLM KV-events model: BlockStored / BlockRemoved with chain and parent hashes).
 * Events are queued under the cache lock and delivered in batches, in order, on
 * the tier's spill thread (and by destroy for the last ones), never under a lock. */
typedef enum cllm_kv_event_kind {
  CLLM_KV_EVENT_STORED = 1,   // a computed block entered the local prefix index
  CLLM_KV_EVENT_REMOVED = 2,  // a local block left the index (evicted or reclaimed)
  CLLM_KV_EVENT_SPILLED = 3,  // a block was written to the store
  CLLM_KV_EVENT_FETCHED = 4,  // a block fetched from the store entered the local index
} cllm_kv_event_kind_t;

typedef struct cllm_kv_event {
  uint32_t kind;          // cllm_kv_event_kind_t
  uint32_t block_tokens;  // tokens per block (vLLM block_size)
  uint64_t position;      // block index in its chain
  uint8_t digest[16];     // chain digest (the block's hash; the store key's last part)
  uint8_t parent[16];     // parent's chain digest (the root digest at position 0)
  const cllm_kv_token_t *tokens;  // STORED / FETCHED: the block's token ids; else NULL
} cllm_kv_event_t;

// Receives n >= 1 events; ts: CLOCK_REALTIME seconds when the batch was taken.
// The array and tokens are valid only during the call. It must not call into the
// tier (it runs on the tier's thread); the cache may be used.
typedef void (*cllm_kv_event_fn)(void *user, double ts, const cllm_kv_event_t *events, size_t n);

typedef struct cllm_kv_tier_config {
  size_t struct_size;        // set by cllm_kv_tier_config_default()
  cllm_kv_store_t store;     // required; owned by the tier once create succeeds
  const void *model_id;      // bytes naming the model weights (copied); may be NULL
  size_t model_id_len;
  uint64_t secret;           // namespace and checksum key (0: unkeyed)
  bool write_through;        // spill every block when it becomes CACHED
  double spill_low_water;    // write-back: spill while free blocks < this x pool; 0 = 0.25
  uint32_t spill_batch;      // blocks per spill round; 0 = 8
  uint32_t op_timeout_ms;    // deadline of one store operation; 0 = 200
  uint32_t breaker_failures; // failures in a row that mark the store DOWN; 0 = 3
  uint32_t retry_ms;         // ping interval while DOWN (and reconnect back-off); 0 = 100
  uint32_t fetch_threads;    // probes / fetches in flight at once, each on its own
                             // thread and connection; 0 = 1, at most 16
  const void *mac_key;       // deployment MAC key (copied), up to 64 bytes; NULL = none.
  size_t mac_key_len;        // With a key, records carry a keyed BLAKE2b-64 tag instead
                             // of the checksum, and records without a valid tag are
                             // rejected (CLLM_KV_REJECT_MAC, counted in the stats'
                             // tier_rejects_mac); a tier without a key rejects
                             // tagged records.
  cllm_kv_event_fn event_fn; // block events (NULL: none), called with event_user
  void *event_user;
  uint32_t event_batch;      // events per call at most; 0 = 64. Up to 4 x blocks + 256
                             // events wait; beyond that they are dropped and counted.
} cllm_kv_tier_config_t;

// Defaults as documented on the fields. Thread: any.
CLLM_API cllm_kv_tier_config_t cllm_kv_tier_config_default(void);

// Attach a tier to a cache (one per cache) and start its threads. On error the
// store is not closed (it stays the caller's). A cfg from an older header
// (smaller struct_size) gets the defaults for the fields it lacks; a larger one
// is accepted only if the bytes this library does not know are zero.
// Errors: CLLM_EINVAL (NULL, struct_size below sizeof(size_t) or unknown non-zero
// tail, store without ops, fraction outside [0,1], fetch_threads above 16,
// mac_key_len above 64 or without mac_key),
// CLLM_EEXIST (the cache has a tier), CLLM_ENOMEM, CLLM_ESYS (threads).
// Thread: any.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_kv_tier_create(cllm_kv_cache_t *kv,
                                                          const cllm_kv_tier_config_t *cfg,
                                                          cllm_kv_tier_t **out);

// Stop the threads (a spill in flight finishes or times out), detach from the
// cache and close the store. NULL is a no-op; no probe or fetch may be running.
// Order: destroy the tier, then the cache. A cache destroyed while its tier is
// attached logs an error, stops the tier's threads and detaches it; the tier
// handle then stays valid only for this call (probe, fetch and flush answer
// CLLM_ESTATE), which closes the store and frees it. Thread: external-sync.
CLLM_API void cllm_kv_tier_destroy(cllm_kv_tier_t *tier);

// How many tokens after the sequence's committed prefix the store holds for this
// prompt: whole blocks, stopping at the first missing one, and at most up to
// (n-1)/block_tokens blocks in all (one prompt token is always left to compute).
// 0 at once while the store is DOWN. The sequence must have no reserved,
// uncommitted positions and its committed tokens must equal tokens[0..).
// Errors: CLLM_EINVAL (NULL, n 0), CLLM_ENOTFOUND, CLLM_EPREEMPTED, CLLM_ESTATE
// (reserved positions not committed, committed not a multiple of block_tokens,
// or the cache was destroyed first), CLLM_ENOMEM (key scratch). A store failure is not an error:
// *n_avail is then 0.
// Thread: any (one caller per sequence).
CLLM_API CLLM_NODISCARD cllm_status_t cllm_kv_tier_probe(cllm_kv_tier_t *tier, cllm_kv_seq_t seq,
                                                         const cllm_kv_token_t *tokens, size_t n,
                                                         size_t *n_avail);

// Fetch up to max_tokens (rounded down to blocks) of the prompt after the
// committed prefix into blocks reserved for the sequence, verify each, and commit
// the verified prefix (it is indexed as if computed). *n_ready gets the tokens
// committed; blocks after the first failure are released again, so the sequence's
// length equals its committed count afterwards. The sequence is never preempted
// while its blocks are written. Errors: as probe; as cllm_kv_seq_reserve (nothing
// fetched). A store failure or a rejected record is not an error (*n_ready stops
// there). Thread: any (one caller per sequence).
CLLM_API CLLM_NODISCARD cllm_status_t cllm_kv_tier_fetch(cllm_kv_tier_t *tier, cllm_kv_seq_t seq,
                                                         const cllm_kv_token_t *tokens, size_t n,
                                                         size_t max_tokens, size_t *n_ready);

// Spill every indexed block not yet stored (regardless of mode) and wait until
// done or timeout_ms passed. Errors: CLLM_EINVAL, CLLM_EBUSY (timed out, or the
// store is DOWN), CLLM_ESTATE (the cache was destroyed first). Thread: any.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_kv_tier_flush(cllm_kv_tier_t *tier,
                                                         uint32_t timeout_ms);

// Events dropped because the queue was full (0 without event_fn). Thread: any.
CLLM_API uint64_t cllm_kv_tier_events_dropped(const cllm_kv_tier_t *tier);

// Tier states (cllm_kv_stats_t.tier_state).
enum { CLLM_KV_TIER_NONE = 0, CLLM_KV_TIER_UP = 1, CLLM_KV_TIER_DOWN = 2 };

CLLM_EXTERN_C_END
#endif /* CLLM_KV_TIER_H */
