/* The remote tier's hooks into the KV cache (called from lib/kv_cache.c and
 * lib/kv_prefix.c, each only when kv->tier is set), the codec helpers and the
 * tier's own state shared by lib/kv_tier.c (hooks, connections, spill thread,
 * create / destroy) and lib/kv_tier_fetch.c (fetch threads, probe, fetch).
 * Nothing here is public.
 *
 * Every *_locked function requires kv->lock.
 */
#ifndef CLLM_KV_TIER_INTERNAL_H
#define CLLM_KV_TIER_INTERNAL_H

#include <pthread.h>

#include <cllm/kv_tier.h>

#include "kv_internal.h"

/* Block b was just entered in the prefix index: record its chain digest. */
void kv__tier_on_index_locked(cllm_kv_cache_t *kv, uint32_t b);
/* CACHED block b is about to lose its content (eviction or reclaim). */
void kv__tier_on_evict_locked(cllm_kv_cache_t *kv, uint32_t b);
/* Fill the tier fields of *st. */
void kv__tier_stats_locked(const cllm_kv_cache_t *kv, cllm_kv_stats_t *st);
/* The cache is being destroyed while its tier is attached (lock NOT held): the
 * tier's threads stop, it detaches and keeps only what cllm_kv_tier_destroy
 * needs (the store); every other tier call answers CLLM_ESTATE. */
void kv__tier_on_cache_destroy(cllm_kv_cache_t *kv);

/* A deployment's MAC key (len 0: none; records then carry the checksum). */
#define KV_TIER_MAC_KEY_MAX 64u
#define KV_TIER_FLAG_MAC 1u
typedef struct kv_tier_mac {
  uint8_t key[KV_TIER_MAC_KEY_MAX];
  size_t len;
} kv_tier_mac_t;

/* Codec: write the header and tokens of a record at out (record_bytes long; the
 * payload is filled by the caller), then seal it (flags and the checksum, or the
 * keyed tag when mac has a key), and verify a record like cllm_kv_tier_verify
 * with a MAC key: a keyed reader rejects untagged records and wrong tags, an
 * unkeyed one rejects tagged records (CLLM_KV_REJECT_MAC). */
void kv__tier_encode_head(const cllm_kv_shape_t *shape, const cllm_kv_block_id_t *id,
                          const cllm_kv_token_t *tokens, void *out);
void kv__tier_seal(void *rec, size_t total, uint64_t secret, const kv_tier_mac_t *mac);
cllm_kv_reject_t kv__tier_verify(const cllm_kv_shape_t *shape, const cllm_kv_block_id_t *id,
                                 const cllm_kv_token_t *tokens, uint64_t secret,
                                 const kv_tier_mac_t *mac, const void *rec, size_t len,
                                 const void **payload);

/* ---- the tier's state ---------------------------------------------------------- */

typedef struct tier_blk {
  uint8_t dig[16], pdig[16];
  uint64_t ns;
  uint32_t pos, dgen;
  uint32_t fgen;  // fetched: the generation the fetch wrote (the store has it)
  uint8_t has_dig, stored, queued, inflight, fetched;
} tier_blk_t;

/* One tier thread's store connection. */
typedef struct tconn {
  void *c;
  bool ever;         // connect tried before: a later success is a reconnect
  int64_t next_try;  // no connect attempt before this (back-off)
} tconn_t;

/* A probe (EXISTS) or fetch (GET) job, queued for the fetch threads. */
enum { JOB_EXISTS = 1, JOB_GET = 2 };
typedef struct fjob {
  struct fjob *next;  // the queue (t->mu)
  int kind;
  bool done;  // t->mu
  size_t n;
  const char (*keys)[CLLM_KV_TIER_KEY_MAX];
  const cllm_kv_block_id_t *ids;
  const cllm_kv_token_t *tokens;  // block i's tokens at tokens + i * bt
  const uint32_t *blocks;         // JOB_GET: destination blocks
  uint8_t *present;               // JOB_EXISTS scratch
  size_t result;                  // leading blocks present / verified
  uint64_t bytes;
} fjob_t;

typedef struct sjob {
  uint32_t b, gen;
  bool send;  // still the block it was taken as (checked after the copy)
  cllm_status_t rc;
  uint8_t *rec;
  char key[CLLM_KV_TIER_KEY_MAX];
} sjob_t;

#define TIER_MAX_FETCH_THREADS 16u

/* One fetch thread: its record buffer (a GET lands there before verification). */
typedef struct fthread {
  struct cllm_kv_tier *t;
  uint8_t *rec;
  pthread_t th;
} fthread_t;

struct cllm_kv_tier {
  cllm_kv_cache_t *kv;  // NULL once the cache was destroyed first (orphan)
  cllm_kv_store_t store;
  cllm_kv_shape_t shape;
  uint64_t secret;
  kv_tier_mac_t mac;
  bool write_through;
  uint32_t low_water, batch, breaker_failures, n_fetch;
  int64_t op_ns, retry_ns;
  size_t rec_bytes, payload_off;

  tier_blk_t *blk;  // [num_blocks]  (kv->lock)
  uint32_t *ring;   // blocks indexed and not yet taken by the spill thread (kv->lock)
  uint32_t ring_head, ring_count;
  sjob_t *sjobs;    // [batch], spill thread only
  const char **pkeys;        // [batch] put_batch arguments, spill thread only
  const void **pvals;
  size_t *plens;
  cllm_status_t *prcs;

  pthread_mutex_t mu;
  pthread_cond_t cv_spill, cv_fetch, cv_done;
  bool stop, kick, threads_live;
  uint64_t flush_req, flush_done;
  fjob_t *q_head, *q_tail;  // fetch jobs waiting (t->mu)
  uint32_t fails;
  int state;
  int64_t next_probe;
  pthread_t th_spill;
  fthread_t fth[TIER_MAX_FETCH_THREADS];  // [n_fetch]

  /* block events (lib/kv_tier_events.c); ring under kv->lock, delivery under ev_mu */
  cllm_kv_event_fn ev_fn;
  void *ev_user;
  uint32_t ev_batch, ev_cap, ev_head, ev_count;
  cllm_kv_event_t *ev_ring, *ev_out;
  cllm_kv_token_t *ev_tok, *ev_out_tok;  // [ev_cap x bt], [ev_batch x bt]
  pthread_mutex_t ev_mu;
  uint64_t c_ev_dropped;

  uint64_t c_probes, c_hit_tokens, c_fetched_bytes, c_fetch_ns, c_spills, c_spill_bytes,
      c_skipped, c_errors, c_timeouts, c_reconnects, c_oom, c_noperm, c_record, c_mac;
};

#define CNT_ADD(field, v) __atomic_fetch_add(&(field), (uint64_t)(v), __ATOMIC_RELAXED)
#define CNT_GET(field) __atomic_load_n(&(field), __ATOMIC_RELAXED)

int64_t kv__tier_now_ns(void);
/* A live connection, or false (back-off, or connect failed). */
bool kv__tier_conn_get(cllm_kv_tier_t *t, tconn_t *tc);
void kv__tier_conn_drop(cllm_kv_tier_t *t, tconn_t *tc);
/* Count a store result; a failure drops the connection and may open the breaker.
 * Returns true if the store answered. */
bool kv__tier_note_result(cllm_kv_tier_t *t, tconn_t *tc, cllm_status_t rc);
/* The calling tier thread never receives SIGPIPE. */
void kv__tier_block_sigpipe(void);
/* Events: allocate (create), queue one for block b (kv->lock held; the block's
 * tier state is valid), deliver what is queued (no lock held; any thread), free. */
cllm_status_t kv__tier_events_init(cllm_kv_tier_t *t, const cllm_kv_tier_config_t *c);
void kv__tier_event_locked(cllm_kv_tier_t *t, uint32_t kind, uint32_t b);
void kv__tier_events_deliver(cllm_kv_tier_t *t);
void kv__tier_events_free(cllm_kv_tier_t *t);
/* A fetch thread's body (lib/kv_tier_fetch.c); arg: its fthread_t. */
void *kv__tier_fetch_main(void *arg);

#endif /* CLLM_KV_TIER_INTERNAL_H */
