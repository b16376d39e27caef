/* The remote tier's block events (see cllm_kv_event_t in include/cllm/kv_tier.h).
 *
 * The hooks queue events in a ring under kv->lock (O(1) plus a copy of the
 * block's token ids); a full ring drops the new event and counts it. Delivery
 * takes up to ev_batch events under kv->lock into ev_out, then calls the
 * handler with no lock held; ev_mu makes deliveries one at a time and in order.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cllm/kv_tier.h>

#include "internal/fault.h"
#include "internal/util.h"
#include "kv_internal.h"
#include "kv_tier_internal.h"

cllm_status_t kv__tier_events_init(cllm_kv_tier_t *t, const cllm_kv_tier_config_t *c) {
  t->ev_fn = c->event_fn;
  t->ev_user = c->event_user;
  if (t->ev_fn == NULL) return CLLM_OK;
  size_t bt = t->kv->bt;
  t->ev_batch = c->event_batch == 0 ? 64 : c->event_batch;
  t->ev_cap = 4 * t->kv->num_blocks + 256;
  if (CLLM_FAULT(CLLM_FAULT_MALLOC)) return CLLM_ENOMEM;
  t->ev_ring = calloc(t->ev_cap, sizeof *t->ev_ring);
  t->ev_tok = calloc((size_t)t->ev_cap * bt, sizeof *t->ev_tok);
  t->ev_out = calloc(t->ev_batch, sizeof *t->ev_out);
  t->ev_out_tok = calloc((size_t)t->ev_batch * bt, sizeof *t->ev_out_tok);
  if (t->ev_ring == NULL || t->ev_tok == NULL || t->ev_out == NULL || t->ev_out_tok == NULL)
    return CLLM_ENOMEM;
  return CLLM_OK;
}

void kv__tier_events_free(cllm_kv_tier_t *t) {
  free(t->ev_ring);
  free(t->ev_tok);
  free(t->ev_out);
  free(t->ev_out_tok);
}

void kv__tier_event_locked(cllm_kv_tier_t *t, uint32_t kind, uint32_t b) {
  if (t->ev_fn == NULL) return;
  if (t->ev_count == t->ev_cap) {
    CNT_ADD(t->c_ev_dropped, 1);
    return;
  }
  cllm_kv_cache_t *kv = t->kv;
  uint32_t i = (t->ev_head + t->ev_count) % t->ev_cap;
  const tier_blk_t *tb = &t->blk[b];
  cllm_kv_event_t *e = &t->ev_ring[i];
  *e = (cllm_kv_event_t){.kind = kind, .block_tokens = kv->bt, .position = tb->pos};
  memcpy(e->digest, tb->dig, 16);
  memcpy(e->parent, tb->pdig, 16);
  if (kind == CLLM_KV_EVENT_STORED || kind == CLLM_KV_EVENT_FETCHED) {
    memcpy(&t->ev_tok[(size_t)i * kv->bt], &kv->btok[(size_t)b * kv->bt],
           kv->bt * sizeof(cllm_kv_token_t));
    e->tokens = &t->ev_tok[(size_t)i * kv->bt];  // marks "has tokens"; rebased on delivery
  }
  t->ev_count++;
}

void kv__tier_events_deliver(cllm_kv_tier_t *t) {
  if (t->ev_fn == NULL || t->kv == NULL) return;
  cllm_kv_cache_t *kv = t->kv;
  pthread_mutex_lock(&t->ev_mu);
  for (;;) {
    uint32_t n = 0;
    kv__lock(kv);
    while (n < t->ev_batch && t->ev_count > 0) {
      uint32_t i = t->ev_head;
      cllm_kv_event_t *e = &t->ev_out[n];
      *e = t->ev_ring[i];
      if (e->tokens != NULL) {
        memcpy(&t->ev_out_tok[(size_t)n * kv->bt], &t->ev_tok[(size_t)i * kv->bt],
               kv->bt * sizeof(cllm_kv_token_t));
        e->tokens = &t->ev_out_tok[(size_t)n * kv->bt];
      }
      t->ev_head = (t->ev_head + 1) % t->ev_cap;
      t->ev_count--;
      n++;
    }
    kv__unlock(kv);
    if (n == 0) break;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    t->ev_fn(t->ev_user, (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9, t->ev_out, n);
  }
  pthread_mutex_unlock(&t->ev_mu);
}

uint64_t cllm_kv_tier_events_dropped(const cllm_kv_tier_t *t) {
  return t == NULL ? 0 : CNT_GET(t->c_ev_dropped);
}
