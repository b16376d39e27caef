/* The KV cache's remote tier: chain digests of indexed blocks, the spill thread
 * (write-through and write-back, one pipelined batch per round), the circuit
 * breaker, the counters, create / destroy. Probe and fetch: lib/kv_tier_fetch.c.
 * See include/cllm/kv_tier.h.
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
#include "internal/versioned.h"
#include "kv_internal.h"
#include "kv_tier_internal.h"

enum { NOT_STORED = 0, STORED = 1, GAVE_UP = 2 };

int64_t kv__tier_now_ns(void) {
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
  kv__tier_event_locked(t, from_store ? CLLM_KV_EVENT_FETCHED : CLLM_KV_EVENT_STORED, b);
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
  if (!blk_valid_locked(t, b)) return;
  kv__tier_event_locked(t, CLLM_KV_EVENT_REMOVED, b);
  if (t->blk[b].stored == NOT_STORED && !t->blk[b].inflight) CNT_ADD(t->c_skipped, 1);
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
  st->tier_rejects_mac = CNT_GET(t->c_mac);
}

/* ---- connections and the breaker (tier threads) ---------------------------------- */

/* One more failure in a row: at breaker_failures the store is DOWN. */
static void breaker_fail(cllm_kv_tier_t *t, cllm_status_t rc) {
  pthread_mutex_lock(&t->mu);
  if (++t->fails >= t->breaker_failures && t->state == CLLM_KV_TIER_UP) {
    __atomic_store_n(&t->state, CLLM_KV_TIER_DOWN, __ATOMIC_RELAXED);
    t->next_probe = kv__tier_now_ns() + t->retry_ns;
    cllm__warn("kv tier: store down after %u failures (last: %s)", t->fails,
               cllm_status_name(rc));
  }
  pthread_mutex_unlock(&t->mu);
}

/* Count a store result; a failure drops the connection (a timed-out connection is
 * dead) and may open the breaker. Returns true if the store answered. */
bool kv__tier_note_result(cllm_kv_tier_t *t, tconn_t *tc, cllm_status_t rc) {
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

bool kv__tier_conn_get(cllm_kv_tier_t *t, tconn_t *tc) {
  if (tc->c != NULL) return true;
  int64_t now = kv__tier_now_ns();
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
    kv__tier_note_result(t, tc, rc == CLLM_EBUSY ? CLLM_EBUSY : CLLM_EIO);
    return false;
  }
  if (again) CNT_ADD(t->c_reconnects, 1);
  tc->c = c;
  return true;
}

void kv__tier_conn_drop(cllm_kv_tier_t *t, tconn_t *tc) {
  if (tc->c != NULL) t->store.ops->disconnect(t->store.user, tc->c);
  tc->c = NULL;
}

void kv__tier_block_sigpipe(void) {
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

/* Copy job j's rows, then check under the lock that the block is still the one
 * taken (else it is skipped). */
static void spill_copy(cllm_kv_tier_t *t, sjob_t *j) {
  cllm_kv_cache_t *kv = t->kv;
  uint8_t *pay = j->rec + t->payload_off;
  RACY_READS_BEGIN();
  for (uint32_t l = 0; l < kv->layers; l++) {
    memcpy(pay + (size_t)(2 * l) * kv->chunk_bytes, kv__k_ptr(kv, j->b, l), kv->chunk_bytes);
    memcpy(pay + (size_t)(2 * l + 1) * kv->chunk_bytes, kv__v_ptr(kv, j->b, l), kv->chunk_bytes);
  }
  RACY_READS_END();
  kv__lock(kv);
  j->send = kv->blocks[j->b].gen == j->gen && kv->blocks[j->b].indexed;
  if (!j->send) t->blk[j->b].inflight = 0;
  kv__unlock(kv);
  if (!j->send) CNT_ADD(t->c_skipped, 1);
  else kv__tier_seal(j->rec, t->rec_bytes, t->secret, &t->mac);
}

/* Send the records of the jobs still to send: one pipeline when the store has
 * put_batch, else one put each. Sets j->rc. */
static void spill_send(cllm_kv_tier_t *t, tconn_t *tc, uint32_t n) {
  uint32_t m = 0;
  for (uint32_t i = 0; i < n; i++) {
    sjob_t *j = &t->sjobs[i];
    if (!j->send) continue;
    j->rc = CLLM_EIO;
    t->pkeys[m] = j->key, t->pvals[m] = j->rec, t->plens[m] = t->rec_bytes, m++;
  }
  if (t->store.ops->put_batch != NULL && m > 0) {
    if (!kv__tier_conn_get(t, tc)) return;
    cllm_status_t rc = t->store.ops->put_batch(t->store.user, tc->c, t->pkeys, t->pvals, t->plens,
                                               m, t->prcs, kv__tier_now_ns() + t->op_ns * m);
    kv__tier_note_result(t, tc, rc);
    for (uint32_t i = 0, k = 0; i < n; i++)
      if (t->sjobs[i].send) t->sjobs[i].rc = t->prcs[k++];
    return;
  }
  for (uint32_t i = 0; i < n; i++) {
    sjob_t *j = &t->sjobs[i];
    if (!j->send || !kv__tier_conn_get(t, tc)) continue;
    j->rc = t->store.ops->put(t->store.user, tc->c, j->key, j->rec, t->rec_bytes,
                              kv__tier_now_ns() + t->op_ns);
    kv__tier_note_result(t, tc, j->rc);
  }
}

/* Record the outcome of a sent job (kv->lock held). */
static void spill_done_locked(cllm_kv_tier_t *t, sjob_t *j) {
  cllm_kv_cache_t *kv = t->kv;
  tier_blk_t *tb = &t->blk[j->b];
  tb->inflight = 0;
  bool valid = kv->blocks[j->b].gen == j->gen && blk_valid_locked(t, j->b);
  cllm_status_t rc = j->rc;
  if (rc == CLLM_OK) {
    CNT_ADD(t->c_spills, 1);
    CNT_ADD(t->c_spill_bytes, t->rec_bytes);
    if (valid) tb->stored = STORED;
    if (valid) kv__tier_event_locked(t, CLLM_KV_EVENT_SPILLED, j->b);
  } else if (rc == CLLM_ELIMIT || rc == CLLM_ESTATE) {
    CNT_ADD(*(rc == CLLM_ELIMIT ? &t->c_oom : &t->c_noperm), 1);
    if (valid) tb->stored = GAVE_UP;  // counted, not retried
  } else {
    if (rc != CLLM_EIO && rc != CLLM_EBUSY) CNT_ADD(t->c_errors, 1);
    if (valid) ring_push_locked(t, j->b);  // retried once the store answers
  }
}

static void spill_round(cllm_kv_tier_t *t, tconn_t *tc, uint32_t n) {
  for (uint32_t i = 0; i < n; i++) spill_copy(t, &t->sjobs[i]);
  spill_send(t, tc, n);
  kv__lock(t->kv);
  for (uint32_t i = 0; i < n; i++)
    if (t->sjobs[i].send) spill_done_locked(t, &t->sjobs[i]);
  kv__unlock(t->kv);
}

static void breaker_probe(cllm_kv_tier_t *t, tconn_t *tc) {
  pthread_mutex_lock(&t->mu);
  bool due = kv__tier_now_ns() >= t->next_probe;
  pthread_mutex_unlock(&t->mu);
  if (!due) return;
  tc->next_try = 0;
  cllm_status_t rc = CLLM_EIO;
  if (kv__tier_conn_get(t, tc)) {
    rc = t->store.ops->ping(t->store.user, tc->c, kv__tier_now_ns() + t->op_ns);
    kv__tier_note_result(t, tc, rc);
  }
  pthread_mutex_lock(&t->mu);
  if (rc == CLLM_OK) {
    t->fails = 0;
    __atomic_store_n(&t->state, CLLM_KV_TIER_UP, __ATOMIC_RELAXED);
    cllm__info("kv tier: store up again");
  } else {
    t->next_probe = kv__tier_now_ns() + t->retry_ns;
  }
  pthread_mutex_unlock(&t->mu);
}

static void *spill_main(void *arg) {
  cllm_kv_tier_t *t = arg;
  tconn_t tc = {0};
  kv__tier_block_sigpipe();
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
    kv__tier_events_deliver(t);
    uint32_t n = 0;
    if (tier_state(t) == CLLM_KV_TIER_DOWN) {
      breaker_probe(t, &tc);
    } else {
      kv__lock(t->kv);
      n = spill_collect_locked(t, flush != t->flush_done);
      kv__unlock(t->kv);
      spill_round(t, &tc, n);
    }
    pthread_mutex_lock(&t->mu);
    if (n > 0) t->kick = true;  // more may be waiting
    else if (flush != t->flush_done && tier_state(t) != CLLM_KV_TIER_DOWN)
      t->flush_done = flush;  // nothing left to write (a DOWN store wrote nothing)
    pthread_cond_broadcast(&t->cv_done);
  }
  pthread_mutex_unlock(&t->mu);
  kv__tier_conn_drop(t, &tc);
  return NULL;
}

cllm_status_t cllm_kv_tier_flush(cllm_kv_tier_t *t, uint32_t timeout_ms) {
  if (t == NULL) return CLLM_EINVAL;
  if (t->kv == NULL) return CLLM_ESTATE;  // the cache was destroyed first
  int64_t end = kv__tier_now_ns() + (int64_t)timeout_ms * 1000000LL;
  pthread_mutex_lock(&t->mu);
  uint64_t my = ++t->flush_req;
  t->kick = true;
  pthread_cond_signal(&t->cv_spill);
  cllm_status_t rc = CLLM_OK;
  while (t->flush_done < my) {
    int64_t left = end - kv__tier_now_ns();
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
  for (uint32_t i = 0; i < t->n_fetch; i++) free(t->fth[i].rec);
  free(t->sjobs);
  free(t->pkeys);
  free(t->pvals);
  free(t->plens);
  free(t->prcs);
  free(t->ring);
  free(t->blk);
  kv__tier_events_free(t);
  free(t);
}

static cllm_status_t tier_alloc(cllm_kv_tier_t *t, uint32_t num_blocks) {
  if (CLLM_FAULT(CLLM_FAULT_MALLOC)) return CLLM_ENOMEM;
  t->blk = calloc(num_blocks, sizeof *t->blk);
  t->ring = calloc(num_blocks, sizeof *t->ring);
  t->sjobs = calloc(t->batch, sizeof *t->sjobs);
  t->pkeys = calloc(t->batch, sizeof *t->pkeys);
  t->pvals = calloc(t->batch, sizeof *t->pvals);
  t->plens = calloc(t->batch, sizeof *t->plens);
  t->prcs = calloc(t->batch, sizeof *t->prcs);
  if (t->blk == NULL || t->ring == NULL || t->sjobs == NULL || t->pkeys == NULL ||
      t->pvals == NULL || t->plens == NULL || t->prcs == NULL)
    return CLLM_ENOMEM;
  for (uint32_t i = 0; i < t->batch; i++) {  // touched now: a spill never page-faults
    if (CLLM_FAULT(CLLM_FAULT_MALLOC) || (t->sjobs[i].rec = malloc(t->rec_bytes)) == NULL)
      return CLLM_ENOMEM;
    memset(t->sjobs[i].rec, 0, t->rec_bytes);
  }
  for (uint32_t i = 0; i < t->n_fetch; i++) {
    t->fth[i].t = t;
    if (CLLM_FAULT(CLLM_FAULT_MALLOC) || (t->fth[i].rec = malloc(t->rec_bytes)) == NULL)
      return CLLM_ENOMEM;
  }
  return CLLM_OK;
}

/* Stop and join the threads that were started (t->threads_live), then mark none. */
static void tier_stop(cllm_kv_tier_t *t, uint32_t n_fetch_started, bool spill_started) {
  pthread_mutex_lock(&t->mu);
  t->stop = true;
  pthread_cond_broadcast(&t->cv_spill);
  pthread_cond_broadcast(&t->cv_fetch);
  pthread_mutex_unlock(&t->mu);
  if (spill_started) pthread_join(t->th_spill, NULL);
  for (uint32_t i = 0; i < n_fetch_started; i++) pthread_join(t->fth[i].th, NULL);
  t->threads_live = false;
}

static cllm_status_t tier_init_sync(cllm_kv_tier_t *t) {
  pthread_condattr_t ca;
  bool ok = pthread_condattr_init(&ca) == 0;
  if (!ok) return CLLM_ENOMEM;
  (void)pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  ok = pthread_mutex_init(&t->mu, NULL) == 0 && pthread_mutex_init(&t->ev_mu, NULL) == 0;
  if (ok && pthread_cond_init(&t->cv_spill, &ca) != 0) ok = false;
  if (ok && pthread_cond_init(&t->cv_fetch, &ca) != 0) ok = false;
  if (ok && pthread_cond_init(&t->cv_done, &ca) != 0) ok = false;
  pthread_condattr_destroy(&ca);
  return ok ? CLLM_OK : CLLM_ENOMEM;
}

static void tier_settings(cllm_kv_tier_t *t, const cllm_kv_tier_config_t *c) {
  cllm_kv_cache_t *kv = t->kv;
  t->store = c->store;
  t->shape = (cllm_kv_shape_t){kv->layers, kv->kv_heads, kv->head_dim, kv->dtype_bytes, kv->bt, 0};
  t->shape.fingerprint = cllm_kv_tier_fingerprint(&t->shape, c->model_id, c->model_id_len);
  t->secret = c->secret;
  t->mac.len = c->mac_key_len;
  if (c->mac_key_len > 0) memcpy(t->mac.key, c->mac_key, c->mac_key_len);
  t->write_through = c->write_through;
  double lw = c->spill_low_water == 0.0 ? 0.25 : c->spill_low_water;
  t->low_water = (uint32_t)(lw * kv->num_blocks);
  t->batch = c->spill_batch == 0 ? 8 : c->spill_batch;
  if (t->batch > 1024) t->batch = 1024;
  t->n_fetch = c->fetch_threads == 0 ? 1 : c->fetch_threads;
  t->op_ns = (int64_t)(c->op_timeout_ms == 0 ? 200 : c->op_timeout_ms) * 1000000LL;
  t->breaker_failures = c->breaker_failures == 0 ? 3 : c->breaker_failures;
  t->retry_ns = (int64_t)(c->retry_ms == 0 ? 100 : c->retry_ms) * 1000000LL;
  t->rec_bytes = cllm_kv_tier_record_bytes(&t->shape);
  t->payload_off = CLLM_KV_TIER_HEADER_BYTES + (size_t)kv->bt * sizeof(cllm_kv_token_t);
  t->state = CLLM_KV_TIER_UP;
}

cllm_status_t cllm_kv_tier_create(cllm_kv_cache_t *kv, const cllm_kv_tier_config_t *cfg,
                                  cllm_kv_tier_t **out) {
  if (out != NULL) *out = NULL;
  cllm_kv_tier_config_t c = cllm_kv_tier_config_default();
  if (kv == NULL || cfg == NULL || out == NULL || cllm__config_in(&c, sizeof c, cfg) != CLLM_OK ||
      c.store.ops == NULL || !(c.spill_low_water >= 0.0 && c.spill_low_water <= 1.0) ||
      (c.model_id == NULL && c.model_id_len > 0) || c.fetch_threads > TIER_MAX_FETCH_THREADS ||
      c.mac_key_len > KV_TIER_MAC_KEY_MAX || (c.mac_key == NULL && c.mac_key_len > 0))
    return CLLM_EINVAL;
  const cllm_kv_store_ops_t *ops = c.store.ops;
  if (!ops->connect || !ops->disconnect || !ops->exists || !ops->get || !ops->put || !ops->ping ||
      !ops->close)
    return CLLM_EINVAL;
  cllm_kv_tier_t *t = CLLM_FAULT(CLLM_FAULT_MALLOC) ? NULL : calloc(1, sizeof *t);
  if (t == NULL) return CLLM_ENOMEM;
  t->kv = kv;
  tier_settings(t, &c);
  cllm_status_t rc = t->rec_bytes == 0 ? CLLM_EOVERFLOW : tier_alloc(t, kv->num_blocks);
  if (rc == CLLM_OK) rc = kv__tier_events_init(t, &c);
  if (rc == CLLM_OK) rc = tier_init_sync(t);
  if (rc != CLLM_OK) {
    tier_free(t);
    return rc;
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
  uint32_t nf = 0;
  while (spill_ok && nf < t->n_fetch &&
         pthread_create(&t->fth[nf].th, NULL, kv__tier_fetch_main, &t->fth[nf]) == 0)
    nf++;
  if (nf < t->n_fetch) {
    tier_stop(t, nf, spill_ok);
    kv__lock(kv);
    kv->tier = NULL;
    kv__unlock(kv);
    tier_free(t);
    return CLLM_ESYS;
  }
  t->threads_live = true;
  *out = t;
  return CLLM_OK;
}

void kv__tier_on_cache_destroy(cllm_kv_cache_t *kv) {
  cllm_kv_tier_t *t = kv->tier;
  cllm__error("kv cache destroyed before its tier: the tier is stopped and detached; "
              "call cllm_kv_tier_destroy first");
  tier_stop(t, t->n_fetch, true);
  kv__tier_events_deliver(t);
  kv->tier = NULL;
  t->kv = NULL;  // an orphan: only cllm_kv_tier_destroy remains valid
}

void cllm_kv_tier_destroy(cllm_kv_tier_t *t) {
  if (t == NULL) return;
  if (t->threads_live) tier_stop(t, t->n_fetch, true);
  kv__tier_events_deliver(t);  // the last ones (none for an orphan: delivered then)
  if (t->kv != NULL) {
    kv__lock(t->kv);
    t->kv->tier = NULL;
    kv__unlock(t->kv);
  }
  t->store.ops->close(t->store.user);
  pthread_cond_destroy(&t->cv_spill);
  pthread_cond_destroy(&t->cv_fetch);
  pthread_cond_destroy(&t->cv_done);
  pthread_mutex_destroy(&t->ev_mu);
  pthread_mutex_destroy(&t->mu);
  tier_free(t);
}
