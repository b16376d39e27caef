/* The KV cache's remote tier: chain digests of indexed blocks, the spill thread
 * (write-through and write-back), probe and fetch through the fetch thread, the
 * circuit breaker and the counters. See include/cllm/kv_tier.h.
 *
 * State and locks
 *   Per-block tier state (blk[], ring) is guarded by kv->lock, like the blocks it
 *   describes; the hooks (kv_tier_internal.h) change it in O(1) (plus one
 *   BLAKE2b step over a block's tokens when a block is indexed). t->mu guards
 *   the threads' hand-offs and the breaker; lock order kv->lock -> t->mu. The
 *   counters are relaxed atomics.
 *
 *   A block's tier state is valid while blk[b].dgen == blocks[b].gen and the
 *   block is indexed: generations change whenever a block's content identity
 *   ends, so eviction needs no work here beyond counting a drop.
 *
 * Spilling reads a block's pool rows without the lock (indexed blocks are
 * immutable), then checks under the lock that its generation did not change
 * before the record is sent: a block evicted meanwhile is skipped, never sent
 * with mixed content.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cllm/kv_tier.h>

#include "internal/fault.h"
#include "internal/util.h"
#include "kv_internal.h"
#include "kv_tier_internal.h"

typedef struct tier_blk {
  uint8_t dig[16], pdig[16];
  uint64_t ns;
  uint32_t pos, dgen;
  uint32_t fgen;  // fetched: the generation the fetch wrote (the store has it)
  uint8_t has_dig, stored, queued, inflight, fetched;
} tier_blk_t;

enum { NOT_STORED = 0, STORED = 1, GAVE_UP = 2 };

/* One tier thread's store connection. */
typedef struct tconn {
  void *c;
  bool ever;        // connect tried before: a later success is a reconnect
  int64_t next_try; // no connect attempt before this (back-off)
} tconn_t;

enum { JOB_EXISTS = 1, JOB_GET = 2 };
typedef struct fjob {
  int kind;
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
  uint8_t *rec;
  char key[CLLM_KV_TIER_KEY_MAX];
} sjob_t;

struct cllm_kv_tier {
  cllm_kv_cache_t *kv;
  cllm_kv_store_t store;
  cllm_kv_shape_t shape;
  uint64_t secret;
  bool write_through;
  uint32_t low_water, batch, breaker_failures;
  int64_t op_ns, retry_ns;
  size_t rec_bytes, payload_off;

  tier_blk_t *blk;  // [num_blocks]  (kv->lock)
  uint32_t *ring;   // blocks indexed and not yet taken by the spill thread (kv->lock)
  uint32_t ring_head, ring_count;
  sjob_t *sjobs;    // [batch], spill thread only
  uint8_t *fetch_rec;

  pthread_mutex_t mu;
  pthread_cond_t cv_spill, cv_fetch, cv_done;
  pthread_mutex_t caller;  // one probe / fetch at a time
  bool stop, kick;
  uint64_t flush_req, flush_done;
  fjob_t *job;
  bool job_done;
  uint32_t fails;
  int state;
  int64_t next_probe;
  pthread_t th_spill, th_fetch;

  uint64_t c_probes, c_hit_tokens, c_fetched_bytes, c_fetch_ns, c_spills, c_spill_bytes,
      c_skipped, c_errors, c_timeouts, c_reconnects, c_oom, c_noperm, c_record;
};

#define CNT_ADD(field, v) __atomic_fetch_add(&(field), (uint64_t)(v), __ATOMIC_RELAXED)
#define CNT_GET(field) __atomic_load_n(&(field), __ATOMIC_RELAXED)

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void abs_time(struct timespec *ts, int64_t ns_from_now) {
  clock_gettime(CLOCK_MONOTONIC, ts);
  int64_t t = (int64_t)ts->tv_nsec + ns_from_now;
  ts->tv_sec += (time_t)(t / 1000000000LL);
  ts->tv_nsec = (long)(t % 1000000000LL);
}

static int tier_state(cllm_kv_tier_t *t) { return __atomic_load_n(&t->state, __ATOMIC_RELAXED); }

/* ---- hooks (kv->lock held) -------------------------------------------------------- */

static void ring_push_locked(cllm_kv_tier_t *t, uint32_t b) {
  if (t->blk[b].queued) return;
  uint32_t cap = t->kv->num_blocks;
  cllm_assert_internal(t->ring_count < cap);  // a block is queued at most once
  t->ring[(t->ring_head + t->ring_count) % cap] = b;
  t->ring_count++;
  t->blk[b].queued = 1;
}

void kv__tier_on_index_locked(cllm_kv_cache_t *kv, uint32_t b) {
  cllm_kv_tier_t *t = kv->tier;
  tier_blk_t *tb = &t->blk[b];
  const kv_block_t *bl = &kv->blocks[b];
  tb->has_dig = 0;
  if (bl->parent == KV_NONE) {
    tb->ns = cllm_kv_tier_namespace(bl->salt, t->secret);
    cllm_kv_tier_root_digest(t->shape.fingerprint, tb->ns, tb->pdig);
    tb->pos = 0;
  } else {
    const tier_blk_t *p = &t->blk[bl->parent];
    if (!p->has_dig || p->dgen != kv->blocks[bl->parent].gen) return;  // chain unknown
    memcpy(tb->pdig, p->dig, 16);
    tb->ns = p->ns;
    tb->pos = p->pos + 1;
  }
  cllm_kv_tier_chain_digest(tb->pdig, &kv->btok[(size_t)b * kv->bt], kv->bt, tb->dig);
  tb->dgen = bl->gen;
  tb->has_dig = 1;
  bool from_store = tb->fetched && tb->fgen == bl->gen;
  tb->fetched = 0;
  if (from_store) {  // committed by a fetch: nothing to write back
    tb->stored = STORED;
    return;
  }
  tb->stored = NOT_STORED;
  ring_push_locked(t, b);
  if (t->write_through) {
    pthread_mutex_lock(&t->mu);
    t->kick = true;
    pthread_cond_signal(&t->cv_spill);
    pthread_mutex_unlock(&t->mu);
  }
}

static bool blk_valid_locked(const cllm_kv_tier_t *t, uint32_t b) {
  const kv_block_t *bl = &t->kv->blocks[b];
  return bl->indexed && t->blk[b].has_dig && t->blk[b].dgen == bl->gen;
}

void kv__tier_on_evict_locked(cllm_kv_cache_t *kv, uint32_t b) {
  cllm_kv_tier_t *t = kv->tier;
  if (blk_valid_locked(t, b) && t->blk[b].stored == NOT_STORED && !t->blk[b].inflight)
    CNT_ADD(t->c_skipped, 1);
}

void kv__tier_stats_locked(const cllm_kv_cache_t *kv, cllm_kv_stats_t *st) {
  cllm_kv_tier_t *t = kv->tier;
  st->tier_state = (uint32_t)tier_state(t);
  st->tier_probes = CNT_GET(t->c_probes);
  st->tier_remote_hit_tokens = CNT_GET(t->c_hit_tokens);
  st->tier_fetched_bytes = CNT_GET(t->c_fetched_bytes);
  st->tier_fetch_ns = CNT_GET(t->c_fetch_ns);
  st->tier_spills = CNT_GET(t->c_spills);
  st->tier_spill_bytes = CNT_GET(t->c_spill_bytes);
  st->tier_spills_skipped = CNT_GET(t->c_skipped);
  st->tier_errors = CNT_GET(t->c_errors);
  st->tier_timeouts = CNT_GET(t->c_timeouts);
  st->tier_reconnects = CNT_GET(t->c_reconnects);
  st->tier_rejects_oom = CNT_GET(t->c_oom);
  st->tier_rejects_noperm = CNT_GET(t->c_noperm);
  st->tier_rejects_record = CNT_GET(t->c_record);
}

/* ---- connections and the breaker (tier threads) ---------------------------------- */

/* One more failure in a row: at breaker_failures the store is DOWN. */
static void breaker_fail(cllm_kv_tier_t *t, cllm_status_t rc) {
  pthread_mutex_lock(&t->mu);
  if (++t->fails >= t->breaker_failures && t->state == CLLM_KV_TIER_UP) {
    __atomic_store_n(&t->state, CLLM_KV_TIER_DOWN, __ATOMIC_RELAXED);
    t->next_probe = now_ns() + t->retry_ns;
    cllm__warn("kv tier: store down after %u failures (last: %s)", t->fails,
               cllm_status_name(rc));
  }
  pthread_mutex_unlock(&t->mu);
}

/* Count a store result; a failure drops the connection (a timed-out connection is
 * dead) and may open the breaker. Returns true if the store answered. */
static bool note_result(cllm_kv_tier_t *t, tconn_t *tc, cllm_status_t rc) {
  if (rc != CLLM_EIO && rc != CLLM_EBUSY) {
    pthread_mutex_lock(&t->mu);
    t->fails = 0;
    pthread_mutex_unlock(&t->mu);
    return true;
  }
  if (rc == CLLM_EBUSY) CNT_ADD(t->c_timeouts, 1);
  else CNT_ADD(t->c_errors, 1);
  if (tc->c != NULL) {
    t->store.ops->disconnect(t->store.user, tc->c);
    tc->c = NULL;
  }
  breaker_fail(t, rc);
  return false;
}

/* A live connection, or false (back-off, or connect failed). */
static bool conn_get(cllm_kv_tier_t *t, tconn_t *tc) {
  if (tc->c != NULL) return true;
  int64_t now = now_ns();
  if (now < tc->next_try) {  // backing off: a failure for the breaker, not an error
    breaker_fail(t, CLLM_EIO);
    return false;
  }
  void *c = NULL;
  cllm_status_t rc = t->store.ops->connect(t->store.user, &c);
  bool again = tc->ever;
  tc->ever = true;
  if (rc != CLLM_OK) {
    tc->next_try = now + t->retry_ns;
    note_result(t, tc, rc == CLLM_EBUSY ? CLLM_EBUSY : CLLM_EIO);
    return false;
  }
  if (again) CNT_ADD(t->c_reconnects, 1);
  tc->c = c;
  return true;
}

static void conn_drop(cllm_kv_tier_t *t, tconn_t *tc) {
  if (tc->c != NULL) t->store.ops->disconnect(t->store.user, tc->c);
  tc->c = NULL;
}

static void block_sigpipe(void) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGPIPE);
  (void)pthread_sigmask(SIG_BLOCK, &set, NULL);
}

/* ---- the spill thread ---------------------------------------------------------------- */

static bool spill_candidate_locked(cllm_kv_tier_t *t, uint32_t b) {
  return blk_valid_locked(t, b) && t->blk[b].stored == NOT_STORED && !t->blk[b].inflight;
}

static void sjob_take_locked(cllm_kv_tier_t *t, sjob_t *j, uint32_t b) {
  cllm_kv_cache_t *kv = t->kv;
  tier_blk_t *tb = &t->blk[b];
  cllm_kv_block_id_t id = {.position = tb->pos};
  memcpy(id.digest, tb->dig, 16);
  memcpy(id.parent, tb->pdig, 16);
  kv__tier_encode_head(&t->shape, &id, &kv->btok[(size_t)b * kv->bt], j->rec);
  cllm_kv_tier_key(t->shape.fingerprint, tb->ns, tb->dig, j->key);
  j->b = b;
  j->gen = kv->blocks[b].gen;
  tb->inflight = 1;
}

/* Choose up to `batch` blocks to write: the ring in write-through or flush mode,
 * and in write-back the LRU heads while free blocks are below the low water. */
static uint32_t spill_collect_locked(cllm_kv_tier_t *t, bool flush) {
  cllm_kv_cache_t *kv = t->kv;
  uint32_t n = 0;
  if (t->write_through || flush) {
    while (n < t->batch && t->ring_count > 0) {
      uint32_t b = t->ring[t->ring_head];
      t->ring_head = (t->ring_head + 1) % kv->num_blocks;
      t->ring_count--;
      t->blk[b].queued = 0;
      if (spill_candidate_locked(t, b)) sjob_take_locked(t, &t->sjobs[n++], b);
    }
  }
  uint64_t free_blocks = (uint64_t)kv->free_count + (kv->num_blocks - kv->hwm);
  if (n < t->batch && free_blocks < t->low_water) {
    uint32_t scanned = 0, limit = 4 * t->batch + 64;
    for (uint32_t band = 0; band < CLLM_KV_BANDS && n < t->batch && scanned < limit; band++) {
      for (uint32_t b = kv->lru_head[band]; b != KV_NONE && n < t->batch && scanned < limit;
           b = kv->blocks[b].next, scanned++)
        if (spill_candidate_locked(t, b)) sjob_take_locked(t, &t->sjobs[n++], b);
    }
  }
  return n;
}

/* The copy races by design with a new owner writing the block if it is evicted
 * meanwhile (a seqlock-style read): the generation check below discards such a
 * copy. ThreadSanitizer is told to ignore these reads. */
#if defined(__SANITIZE_THREAD__)
void AnnotateIgnoreReadsBegin(const char *file, int line);
void AnnotateIgnoreReadsEnd(const char *file, int line);
#define RACY_READS_BEGIN() AnnotateIgnoreReadsBegin(__FILE__, __LINE__)
#define RACY_READS_END() AnnotateIgnoreReadsEnd(__FILE__, __LINE__)
#else
#define RACY_READS_BEGIN() ((void)0)
#define RACY_READS_END() ((void)0)
#endif

static void spill_one(cllm_kv_tier_t *t, tconn_t *tc, sjob_t *j) {
  cllm_kv_cache_t *kv = t->kv;
  uint8_t *pay = j->rec + t->payload_off;
  RACY_READS_BEGIN();
  for (uint32_t l = 0; l < kv->layers; l++) {
    memcpy(pay + (size_t)(2 * l) * kv->chunk_bytes, kv__k_ptr(kv, j->b, l), kv->chunk_bytes);
    memcpy(pay + (size_t)(2 * l + 1) * kv->chunk_bytes, kv__v_ptr(kv, j->b, l), kv->chunk_bytes);
  }
  RACY_READS_END();
  kv__lock(kv);
  bool same = kv->blocks[j->b].gen == j->gen && kv->blocks[j->b].indexed;
  if (!same) t->blk[j->b].inflight = 0;
  kv__unlock(kv);
  if (!same) {
    CNT_ADD(t->c_skipped, 1);
    return;
  }
  kv__tier_seal(j->rec, t->rec_bytes, t->secret);
  cllm_status_t rc = CLLM_EIO;
  if (conn_get(t, tc)) {
    rc = t->store.ops->put(t->store.user, tc->c, j->key, j->rec, t->rec_bytes,
                           now_ns() + t->op_ns);
    note_result(t, tc, rc);
  }
  kv__lock(kv);
  tier_blk_t *tb = &t->blk[j->b];
  tb->inflight = 0;
  bool valid = kv->blocks[j->b].gen == j->gen && blk_valid_locked(t, j->b);
  if (rc == CLLM_OK) {
    CNT_ADD(t->c_spills, 1);
    CNT_ADD(t->c_spill_bytes, t->rec_bytes);
    if (valid) tb->stored = STORED;
  } else if (rc == CLLM_ELIMIT || rc == CLLM_ESTATE) {
    CNT_ADD(*(rc == CLLM_ELIMIT ? &t->c_oom : &t->c_noperm), 1);
    if (valid) tb->stored = GAVE_UP;  // counted, not retried
  } else {
    if (rc != CLLM_EIO && rc != CLLM_EBUSY) CNT_ADD(t->c_errors, 1);
    if (valid) ring_push_locked(t, j->b);  // retried once the store answers
  }
  kv__unlock(kv);
}

static void breaker_probe(cllm_kv_tier_t *t, tconn_t *tc) {
  pthread_mutex_lock(&t->mu);
  bool due = now_ns() >= t->next_probe;
  pthread_mutex_unlock(&t->mu);
  if (!due) return;
  tc->next_try = 0;
  cllm_status_t rc = CLLM_EIO;
  if (conn_get(t, tc)) {
    rc = t->store.ops->ping(t->store.user, tc->c, now_ns() + t->op_ns);
    note_result(t, tc, rc);
  }
  pthread_mutex_lock(&t->mu);
  if (rc == CLLM_OK) {
    t->fails = 0;
    __atomic_store_n(&t->state, CLLM_KV_TIER_UP, __ATOMIC_RELAXED);
    cllm__info("kv tier: store up again");
  } else {
    t->next_probe = now_ns() + t->retry_ns;
  }
  pthread_mutex_unlock(&t->mu);
}

static void *spill_main(void *arg) {
  cllm_kv_tier_t *t = arg;
  tconn_t tc = {0};
  block_sigpipe();
  pthread_mutex_lock(&t->mu);
  while (!t->stop) {
    if (!t->kick) {
      struct timespec ts;
      abs_time(&ts, 10 * 1000000LL);
      pthread_cond_timedwait(&t->cv_spill, &t->mu, &ts);
      if (t->stop) break;
    }
    t->kick = false;
    uint64_t flush = t->flush_req;
    pthread_mutex_unlock(&t->mu);
    uint32_t n = 0;
    if (tier_state(t) == CLLM_KV_TIER_DOWN) {
      breaker_probe(t, &tc);
    } else {
      kv__lock(t->kv);
      n = spill_collect_locked(t, flush != t->flush_done);
      kv__unlock(t->kv);
      for (uint32_t i = 0; i < n; i++) spill_one(t, &tc, &t->sjobs[i]);
    }
    pthread_mutex_lock(&t->mu);
    if (n > 0) t->kick = true;  // more may be waiting
    else if (flush != t->flush_done && tier_state(t) != CLLM_KV_TIER_DOWN)
      t->flush_done = flush;  // nothing left to write (a DOWN store wrote nothing)
    pthread_cond_broadcast(&t->cv_done);
  }
  pthread_mutex_unlock(&t->mu);
  conn_drop(t, &tc);
  return NULL;
}

/* ---- the fetch thread ------------------------------------------------------------- */

static void run_exists(cllm_kv_tier_t *t, tconn_t *tc, fjob_t *j) {
  j->result = 0;
  if (!conn_get(t, tc)) return;
  const char *ptrs[64];
  for (size_t i = 0; i < j->n;) {  // in runs of 64 keys: one round trip each
    size_t m = j->n - i < 64 ? j->n - i : 64;
    for (size_t k = 0; k < m; k++) ptrs[k] = j->keys[i + k];
    cllm_status_t rc =
        t->store.ops->exists(t->store.user, tc->c, ptrs, m, j->present, now_ns() + t->op_ns);
    if (!note_result(t, tc, rc) || rc != CLLM_OK) return;
    for (size_t k = 0; k < m; k++, i++) {
      if (!j->present[k]) return;
      j->result++;
    }
  }
}

static void run_get(cllm_kv_tier_t *t, tconn_t *tc, fjob_t *j) {
  cllm_kv_cache_t *kv = t->kv;
  j->result = 0;
  for (size_t i = 0; i < j->n; i++) {
    if (!conn_get(t, tc)) return;
    size_t len = 0;
    cllm_status_t rc = t->store.ops->get(t->store.user, tc->c, j->keys[i], t->fetch_rec,
                                         t->rec_bytes, &len, now_ns() + t->op_ns);
    if (!note_result(t, tc, rc) || rc == CLLM_ENOTFOUND) return;
    const void *payload = NULL;
    cllm_kv_reject_t why = rc == CLLM_OK ? cllm_kv_tier_verify(&t->shape, &j->ids[i],
                                                                j->tokens + i * kv->bt, t->secret,
                                                                t->fetch_rec, len, &payload)
                                         : CLLM_KV_REJECT_FORMAT;
    if (why != CLLM_KV_REJECT_NONE) {
      CNT_ADD(t->c_record, 1);
      cllm__warn("kv tier: record %s rejected (reason %d, %s)", j->keys[i], (int)why,
                 cllm_status_name(rc));
      return;
    }
    const uint8_t *p = payload;
    for (uint32_t l = 0; l < kv->layers; l++) {
      memcpy(kv__k_ptr(kv, j->blocks[i], l), p + (size_t)(2 * l) * kv->chunk_bytes,
             kv->chunk_bytes);
      memcpy(kv__v_ptr(kv, j->blocks[i], l), p + (size_t)(2 * l + 1) * kv->chunk_bytes,
             kv->chunk_bytes);
    }
    j->bytes += len;
    j->result = i + 1;
  }
}

static void *fetch_main(void *arg) {
  cllm_kv_tier_t *t = arg;
  tconn_t tc = {0};
  block_sigpipe();
  pthread_mutex_lock(&t->mu);
  for (;;) {
    while (t->job == NULL && !t->stop) pthread_cond_wait(&t->cv_fetch, &t->mu);
    if (t->stop) break;
    fjob_t *j = t->job;
    pthread_mutex_unlock(&t->mu);
    if (j->kind == JOB_EXISTS) run_exists(t, &tc, j);
    else run_get(t, &tc, j);
    pthread_mutex_lock(&t->mu);
    t->job = NULL;
    t->job_done = true;
    pthread_cond_broadcast(&t->cv_done);
  }
  pthread_mutex_unlock(&t->mu);
  conn_drop(t, &tc);
  return NULL;
}

static void submit(cllm_kv_tier_t *t, fjob_t *j) {
  pthread_mutex_lock(&t->caller);
  pthread_mutex_lock(&t->mu);
  t->job = j;
  t->job_done = false;
  pthread_cond_signal(&t->cv_fetch);
  while (!t->job_done) pthread_cond_wait(&t->cv_done, &t->mu);
  pthread_mutex_unlock(&t->mu);
  pthread_mutex_unlock(&t->caller);
}

/* ---- probe and fetch ------------------------------------------------------------ */

/* Check the sequence and compute the window: blocks [c0, c0 + *want). */
static cllm_status_t seq_window_locked(cllm_kv_tier_t *t, cllm_kv_seq_t seq, size_t n,
                                       size_t *c0, size_t *want, uint64_t *salt) {
  cllm_kv_cache_t *kv = t->kv;
  if (seq.slot >= kv->max_slots) return CLLM_ENOTFOUND;
  kv_slot_t *sl = &kv->slots[seq.slot];
  if (sl->gen != seq.gen || sl->kind != K_SEQ) return CLLM_ENOTFOUND;
  if (sl->state == S_PREEMPTED) return CLLM_EPREEMPTED;
  if (sl->state != S_OPEN) return CLLM_ENOTFOUND;
  if (sl->length != sl->committed || (sl->committed & (kv->bt - 1)) != 0 || sl->tier_busy)
    return CLLM_ESTATE;
  *c0 = sl->committed >> kv->bt_shift;
  size_t maxb = n == 0 ? 0 : (n - 1) >> kv->bt_shift;
  *want = maxb > *c0 ? maxb - *c0 : 0;
  *salt = sl->salt;
  return CLLM_OK;
}

typedef struct window {
  cllm_kv_block_id_t *ids;
  char (*keys)[CLLM_KV_TIER_KEY_MAX];
  uint8_t *present;
  uint32_t *blocks;
} window_t;

static void window_free(window_t *w) {
  free(w->ids);
  free(w->keys);
  free(w->present);
  free(w->blocks);
}

/* Digests and keys of blocks [c0, c0 + want) of the prompt. */
static cllm_status_t window_make(cllm_kv_tier_t *t, const cllm_kv_token_t *tokens, size_t c0,
                                 size_t want, uint64_t salt, window_t *w) {
  uint32_t bt = t->kv->bt;
  memset(w, 0, sizeof *w);
  if (CLLM_FAULT(CLLM_FAULT_MALLOC)) return CLLM_ENOMEM;
  w->ids = calloc(want, sizeof *w->ids);
  w->keys = calloc(want, sizeof *w->keys);
  w->present = calloc(want < 64 ? want : 64, 1);
  w->blocks = calloc(want, sizeof *w->blocks);
  if (w->ids == NULL || w->keys == NULL || w->present == NULL || w->blocks == NULL) {
    window_free(w);
    return CLLM_ENOMEM;
  }
  uint64_t ns = cllm_kv_tier_namespace(salt, t->secret);
  uint8_t d[16], nd[16];
  cllm_kv_tier_root_digest(t->shape.fingerprint, ns, d);
  for (size_t i = 0; i < c0 + want; i++) {
    cllm_kv_tier_chain_digest(d, tokens + i * bt, bt, nd);
    if (i >= c0) {
      cllm_kv_block_id_t *id = &w->ids[i - c0];
      id->position = i;
      memcpy(id->parent, d, 16);
      memcpy(id->digest, nd, 16);
      cllm_kv_tier_key(t->shape.fingerprint, ns, nd, w->keys[i - c0]);
    }
    memcpy(d, nd, 16);
  }
  return CLLM_OK;
}

cllm_status_t cllm_kv_tier_probe(cllm_kv_tier_t *t, cllm_kv_seq_t seq,
                                 const cllm_kv_token_t *tokens, size_t n, size_t *n_avail) {
  if (t == NULL || tokens == NULL || n == 0 || n_avail == NULL) return CLLM_EINVAL;
  size_t c0, want;
  uint64_t salt;
  kv__lock(t->kv);
  cllm_status_t rc = seq_window_locked(t, seq, n, &c0, &want, &salt);
  kv__unlock(t->kv);
  if (rc != CLLM_OK) return rc;
  CNT_ADD(t->c_probes, 1);
  *n_avail = 0;
  if (want == 0 || tier_state(t) == CLLM_KV_TIER_DOWN) return CLLM_OK;
  window_t w;
  if ((rc = window_make(t, tokens, c0, want, salt, &w)) != CLLM_OK) return rc;
  fjob_t j = {.kind = JOB_EXISTS, .n = want, .keys = (const char(*)[CLLM_KV_TIER_KEY_MAX])w.keys,
              .present = w.present};
  submit(t, &j);
  *n_avail = j.result << t->kv->bt_shift;
  window_free(&w);
  return CLLM_OK;
}

cllm_status_t cllm_kv_tier_fetch(cllm_kv_tier_t *t, cllm_kv_seq_t seq,
                                 const cllm_kv_token_t *tokens, size_t n, size_t max_tokens,
                                 size_t *n_ready) {
  if (t == NULL || tokens == NULL || n == 0 || n_ready == NULL) return CLLM_EINVAL;
  cllm_kv_cache_t *kv = t->kv;
  int64_t t0 = now_ns();
  size_t c0, want;
  uint64_t salt;
  *n_ready = 0;
  kv__lock(kv);
  cllm_status_t rc = seq_window_locked(t, seq, n, &c0, &want, &salt);
  if (rc == CLLM_OK && want > (max_tokens >> kv->bt_shift)) want = max_tokens >> kv->bt_shift;
  kv__unlock(kv);
  if (rc != CLLM_OK || want == 0 || tier_state(t) == CLLM_KV_TIER_DOWN) return rc;
  window_t w;
  if ((rc = window_make(t, tokens, c0, want, salt, &w)) != CLLM_OK) return rc;
  kv__lock(kv);
  kv->slots[seq.slot].tier_busy = 1;  // never preempted while the fetch writes
  kv__unlock(kv);
  rc = cllm_kv_seq_reserve(kv, seq, want << kv->bt_shift, NULL);
  if (rc == CLLM_OK) {
    kv__lock(kv);
    memcpy(w.blocks, kv->slots[seq.slot].table + c0, want * sizeof *w.blocks);
    kv__unlock(kv);
    fjob_t j = {.kind = JOB_GET, .n = want, .keys = (const char(*)[CLLM_KV_TIER_KEY_MAX])w.keys,
                .ids = w.ids, .tokens = tokens + (c0 << kv->bt_shift), .blocks = w.blocks};
    submit(t, &j);
    size_t got = j.result << kv->bt_shift;
    kv__lock(kv);
    for (size_t i = 0; i < j.result; i++) {  // indexed by the commit below, not written back
      t->blk[w.blocks[i]].fetched = 1;
      t->blk[w.blocks[i]].fgen = kv->blocks[w.blocks[i]].gen;
    }
    kv__unlock(kv);
    if (got > 0) {
      cllm_status_t crc = cllm_kv_seq_commit(kv, seq, tokens + (c0 << kv->bt_shift), got);
      cllm_assert_internal(crc == CLLM_OK);
      (void)crc;
    }
    kv__lock(kv);
    kv__seq_truncate_locked(kv, seq.slot, (uint32_t)(c0 + j.result));
    for (size_t i = 0; i < j.result; i++) t->blk[w.blocks[i]].fetched = 0;  // duplicates
    kv__unlock(kv);
    *n_ready = got;
    CNT_ADD(t->c_hit_tokens, got);
    CNT_ADD(t->c_fetched_bytes, j.bytes);
  }
  kv__lock(kv);
  kv->slots[seq.slot].tier_busy = 0;
  kv__unlock(kv);
  window_free(&w);
  CNT_ADD(t->c_fetch_ns, now_ns() - t0);
  return rc;
}

cllm_status_t cllm_kv_tier_flush(cllm_kv_tier_t *t, uint32_t timeout_ms) {
  if (t == NULL) return CLLM_EINVAL;
  int64_t end = now_ns() + (int64_t)timeout_ms * 1000000LL;
  pthread_mutex_lock(&t->mu);
  uint64_t my = ++t->flush_req;
  t->kick = true;
  pthread_cond_signal(&t->cv_spill);
  cllm_status_t rc = CLLM_OK;
  while (t->flush_done < my) {
    int64_t left = end - now_ns();
    if (left <= 0 || t->state == CLLM_KV_TIER_DOWN) {
      rc = CLLM_EBUSY;
      break;
    }
    struct timespec ts;
    abs_time(&ts, left < 10000000LL ? left : 10000000LL);
    pthread_cond_timedwait(&t->cv_done, &t->mu, &ts);
  }
  pthread_mutex_unlock(&t->mu);
  return rc;
}

/* ---- create / destroy -------------------------------------------------------------- */

cllm_kv_tier_config_t cllm_kv_tier_config_default(void) {
  return (cllm_kv_tier_config_t){.struct_size = sizeof(cllm_kv_tier_config_t)};
}

static void tier_free(cllm_kv_tier_t *t) {
  if (t->sjobs != NULL)
    for (uint32_t i = 0; i < t->batch; i++) free(t->sjobs[i].rec);
  free(t->sjobs);
  free(t->fetch_rec);
  free(t->ring);
  free(t->blk);
  free(t);
}

static cllm_status_t tier_alloc(cllm_kv_tier_t *t, uint32_t num_blocks) {
  if (CLLM_FAULT(CLLM_FAULT_MALLOC)) return CLLM_ENOMEM;
  t->blk = calloc(num_blocks, sizeof *t->blk);
  t->ring = calloc(num_blocks, sizeof *t->ring);
  t->sjobs = calloc(t->batch, sizeof *t->sjobs);
  t->fetch_rec = malloc(t->rec_bytes);
  if (t->blk == NULL || t->ring == NULL || t->sjobs == NULL || t->fetch_rec == NULL)
    return CLLM_ENOMEM;
  for (uint32_t i = 0; i < t->batch; i++) {
    if (CLLM_FAULT(CLLM_FAULT_MALLOC) || (t->sjobs[i].rec = malloc(t->rec_bytes)) == NULL)
      return CLLM_ENOMEM;
  }
  return CLLM_OK;
}

cllm_status_t cllm_kv_tier_create(cllm_kv_cache_t *kv, const cllm_kv_tier_config_t *cfg,
                                  cllm_kv_tier_t **out) {
  if (out != NULL) *out = NULL;
  if (kv == NULL || cfg == NULL || out == NULL ||
      cfg->struct_size != sizeof(cllm_kv_tier_config_t) || cfg->store.ops == NULL ||
      !(cfg->spill_low_water >= 0.0 && cfg->spill_low_water <= 1.0) ||
      (cfg->model_id == NULL && cfg->model_id_len > 0))
    return CLLM_EINVAL;
  const cllm_kv_store_ops_t *ops = cfg->store.ops;
  if (!ops->connect || !ops->disconnect || !ops->exists || !ops->get || !ops->put || !ops->ping ||
      !ops->close)
    return CLLM_EINVAL;
  cllm_kv_tier_t *t = CLLM_FAULT(CLLM_FAULT_MALLOC) ? NULL : calloc(1, sizeof *t);
  if (t == NULL) return CLLM_ENOMEM;
  t->kv = kv;
  t->store = cfg->store;
  t->shape = (cllm_kv_shape_t){kv->layers, kv->kv_heads, kv->head_dim, kv->dtype_bytes, kv->bt, 0};
  t->shape.fingerprint = cllm_kv_tier_fingerprint(&t->shape, cfg->model_id, cfg->model_id_len);
  t->secret = cfg->secret;
  t->write_through = cfg->write_through;
  double lw = cfg->spill_low_water == 0.0 ? 0.25 : cfg->spill_low_water;
  t->low_water = (uint32_t)(lw * kv->num_blocks);
  t->batch = cfg->spill_batch == 0 ? 8 : cfg->spill_batch;
  if (t->batch > 1024) t->batch = 1024;
  t->op_ns = (int64_t)(cfg->op_timeout_ms == 0 ? 200 : cfg->op_timeout_ms) * 1000000LL;
  t->breaker_failures = cfg->breaker_failures == 0 ? 3 : cfg->breaker_failures;
  t->retry_ns = (int64_t)(cfg->retry_ms == 0 ? 100 : cfg->retry_ms) * 1000000LL;
  t->rec_bytes = cllm_kv_tier_record_bytes(&t->shape);
  t->payload_off = CLLM_KV_TIER_HEADER_BYTES + (size_t)kv->bt * sizeof(cllm_kv_token_t);
  t->state = CLLM_KV_TIER_UP;
  cllm_status_t rc = t->rec_bytes == 0 ? CLLM_EOVERFLOW : tier_alloc(t, kv->num_blocks);
  if (rc != CLLM_OK) {
    tier_free(t);
    return rc;
  }
  pthread_condattr_t ca;
  bool sync_ok = pthread_condattr_init(&ca) == 0;
  if (sync_ok) {
    (void)pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    sync_ok = pthread_mutex_init(&t->mu, NULL) == 0;
    if (sync_ok && pthread_mutex_init(&t->caller, NULL) != 0) sync_ok = false;
    if (sync_ok && pthread_cond_init(&t->cv_spill, &ca) != 0) sync_ok = false;
    if (sync_ok && pthread_cond_init(&t->cv_fetch, &ca) != 0) sync_ok = false;
    if (sync_ok && pthread_cond_init(&t->cv_done, &ca) != 0) sync_ok = false;
    pthread_condattr_destroy(&ca);
  }
  if (!sync_ok) {
    tier_free(t);
    return CLLM_ENOMEM;
  }
  kv__lock(kv);
  bool taken = kv->tier != NULL;
  if (!taken) kv->tier = t;
  kv__unlock(kv);
  if (taken) {
    tier_free(t);
    return CLLM_EEXIST;
  }
  bool spill_ok = pthread_create(&t->th_spill, NULL, spill_main, t) == 0;
  bool fetch_ok = spill_ok && pthread_create(&t->th_fetch, NULL, fetch_main, t) == 0;
  if (!fetch_ok) {
    pthread_mutex_lock(&t->mu);
    t->stop = true;
    pthread_cond_broadcast(&t->cv_spill);
    pthread_mutex_unlock(&t->mu);
    if (spill_ok) pthread_join(t->th_spill, NULL);
    kv__lock(kv);
    kv->tier = NULL;
    kv__unlock(kv);
    tier_free(t);
    return CLLM_ESYS;
  }
  *out = t;
  return CLLM_OK;
}

void cllm_kv_tier_destroy(cllm_kv_tier_t *t) {
  if (t == NULL) return;
  pthread_mutex_lock(&t->mu);
  t->stop = true;
  pthread_cond_broadcast(&t->cv_spill);
  pthread_cond_broadcast(&t->cv_fetch);
  pthread_mutex_unlock(&t->mu);
  pthread_join(t->th_spill, NULL);
  pthread_join(t->th_fetch, NULL);
  kv__lock(t->kv);
  t->kv->tier = NULL;
  kv__unlock(t->kv);
  t->store.ops->close(t->store.user);
  pthread_cond_destroy(&t->cv_spill);
  pthread_cond_destroy(&t->cv_fetch);
  pthread_cond_destroy(&t->cv_done);
  pthread_mutex_destroy(&t->caller);
  pthread_mutex_destroy(&t->mu);
  tier_free(t);
}
