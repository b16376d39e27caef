/* The remote tier's read side: probe (EXISTS) and fetch (GET, verify, scatter
 * into the sequence's own reserved blocks, commit the verified prefix), run on
 * the tier's fetch threads. See include/cllm/kv_tier.h.
 *
 * Callers queue a job (t->mu) and wait for it; each of the `fetch_threads`
 * threads takes the oldest job and runs it on its own store connection, so that
 * many jobs are in flight at once. A job touches only its own window of keys and
 * the blocks reserved for its own sequence, which is marked tier_busy (never
 * preempted) while the job writes them.
 */
#include <stdlib.h>
#include <string.h>

#include <cllm/kv_tier.h>

#include "internal/fault.h"
#include "internal/util.h"
#include "kv_internal.h"
#include "kv_tier_internal.h"

static int tier_state(cllm_kv_tier_t *t) { return __atomic_load_n(&t->state, __ATOMIC_RELAXED); }

static void run_exists(cllm_kv_tier_t *t, tconn_t *tc, fjob_t *j) {
  j->result = 0;
  if (!kv__tier_conn_get(t, tc)) return;
  const char *ptrs[64];
  for (size_t i = 0; i < j->n;) {  // in runs of 64 keys: one round trip each
    size_t m = j->n - i < 64 ? j->n - i : 64;
    for (size_t k = 0; k < m; k++) ptrs[k] = j->keys[i + k];
    cllm_status_t rc = t->store.ops->exists(t->store.user, tc->c, ptrs, m, j->present,
                                            kv__tier_now_ns() + t->op_ns);
    if (!kv__tier_note_result(t, tc, rc) || rc != CLLM_OK) return;
    for (size_t k = 0; k < m; k++, i++) {
      if (!j->present[k]) return;
      j->result++;
    }
  }
}

static void run_get(cllm_kv_tier_t *t, tconn_t *tc, fjob_t *j, uint8_t *rec) {
  cllm_kv_cache_t *kv = t->kv;
  j->result = 0;
  for (size_t i = 0; i < j->n; i++) {
    if (!kv__tier_conn_get(t, tc)) return;
    size_t len = 0;
    cllm_status_t rc = t->store.ops->get(t->store.user, tc->c, j->keys[i], rec, t->rec_bytes,
                                         &len, kv__tier_now_ns() + t->op_ns);
    if (!kv__tier_note_result(t, tc, rc) || rc == CLLM_ENOTFOUND) return;
    const void *payload = NULL;
    cllm_kv_reject_t why = rc == CLLM_OK ? kv__tier_verify(&t->shape, &j->ids[i],
                                                            j->tokens + i * kv->bt, t->secret,
                                                            &t->mac, rec, len, &payload)
                                         : CLLM_KV_REJECT_FORMAT;
    if (why != CLLM_KV_REJECT_NONE) {
      CNT_ADD(t->c_record, 1);
      if (why == CLLM_KV_REJECT_MAC) CNT_ADD(t->c_mac, 1);
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

void *kv__tier_fetch_main(void *arg) {
  fthread_t *ft = arg;
  cllm_kv_tier_t *t = ft->t;
  tconn_t tc = {0};
  kv__tier_block_sigpipe();
  pthread_mutex_lock(&t->mu);
  for (;;) {
    while (t->q_head == NULL && !t->stop) pthread_cond_wait(&t->cv_fetch, &t->mu);
    if (t->stop) break;
    fjob_t *j = t->q_head;
    t->q_head = j->next;
    if (t->q_head == NULL) t->q_tail = NULL;
    pthread_mutex_unlock(&t->mu);
    if (j->kind == JOB_EXISTS) run_exists(t, &tc, j);
    else run_get(t, &tc, j, ft->rec);
    pthread_mutex_lock(&t->mu);
    j->done = true;
    pthread_cond_broadcast(&t->cv_done);
  }
  pthread_mutex_unlock(&t->mu);
  kv__tier_conn_drop(t, &tc);
  return NULL;
}

/* Queue a job and wait until a fetch thread ran it. */
static void submit(cllm_kv_tier_t *t, fjob_t *j) {
  j->next = NULL;
  j->done = false;
  pthread_mutex_lock(&t->mu);
  if (t->q_tail != NULL) t->q_tail->next = j;
  else t->q_head = j;
  t->q_tail = j;
  pthread_cond_signal(&t->cv_fetch);
  while (!j->done) pthread_cond_wait(&t->cv_done, &t->mu);
  pthread_mutex_unlock(&t->mu);
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
  if (t->kv == NULL) return CLLM_ESTATE;  // the cache was destroyed first
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
  if (t->kv == NULL) return CLLM_ESTATE;
  cllm_kv_cache_t *kv = t->kv;
  int64_t t0 = kv__tier_now_ns();
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
  CNT_ADD(t->c_fetch_ns, kv__tier_now_ns() - t0);
  return rc;
}
