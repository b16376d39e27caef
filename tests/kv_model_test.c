/* Criterion suite: the KV cache's model-based randomized test. Thousands of seeded
 * random operations (open, open_with_prompt, reserve, commit, fork, touch, close,
 * put, get, evict) against a reference model, with cllm_kv_check, the monitor figure
 * and every sequence's rows verified after every operation. ITER= and SEED= change
 * the run. Each Test runs in its own process. */
#include <criterion/criterion.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cllm/kv_cache.h>
#include <cllm/kv_tier.h>
#include <cllm/monitor.h>

#include "support/kv_test_util.h"
#include "support/mt_check.h"

/* ---- model-based randomized test -------------------------------------------------------
 * A reference model of every sequence (tokens, salt, state, recency) and copy entry
 * (size, data seed, LRU order). Each token row written holds a value derived from
 * the sequence's salt and all tokens up to it, so any block handed out to the wrong
 * prompt, overwritten by another sequence or lost in a copy shows up as a wrong row.
 * After every operation: cllm_kv_check, the monitor figure, every open sequence's
 * length, table size and rows, and every copy entry's presence.
 */

#define M_SEQS 24
#define M_ENTRIES 12
#define M_MAXTOK 160

typedef struct mseq {
  bool used, preempted;
  char id[16];
  cllm_kv_seq_t h;
  uint64_t salt;
  size_t len, committed;
  cllm_kv_token_t tok[M_MAXTOK];
  uint32_t row[M_MAXTOK];  // expected row value per position
  uint64_t stamp;          // last use (preemption order), valid when it holds blocks
} mseq_t;

typedef struct mentry {
  bool used;
  char id[16];
  size_t nk, nv;
  int seed;
  uint64_t stamp;
} mentry_t;

typedef struct model {
  cllm_kv_cache_t *kv;
  cllm_monitor_t *mon;
  mseq_t seq[M_SEQS];
  mentry_t ent[M_ENTRIES];
  uint64_t clock;
  unsigned long long rng;
  rec_t rec;
  uint32_t bt, nblocks, budget_blocks;
  /* the remote tier (fake store with injected faults), or NULL */
  cllm_kv_tier_t *tier;
  cllm_kv_fake_t *fake;
  struct {
    size_t n;
    uint64_t salt;
    cllm_kv_token_t tok[M_MAXTOK];
  } past[8];  // prompts of closed sequences (the store may still have them)
  uint64_t remote_tokens;
} model_t;

static uint32_t row_value(uint64_t salt, const cllm_kv_token_t *t, size_t pos) {
  uint64_t h = salt * 0x9e3779b97f4a7c15ULL + 1;
  for (size_t i = 0; i <= pos; i++) h = (h ^ (uint32_t)t[i]) * 0x100000001b3ULL;
  return (uint32_t)(h ^ (h >> 32)) & 0x7fffffff;
}

static size_t mblocks(const model_t *md, size_t len) { return (len + md->bt - 1) / md->bt; }

static void m_verify(model_t *md) {
  cr_assert_eq(cllm_kv_check(md->kv), CLLM_OK);
  cllm_kv_stats_t st = stats(md->kv);
  cr_assert_eq(cllm_monitor_used(md->mon, CLLM_CAT_KV), st.charged_bytes);
  cr_assert_eq(st.kv_bytes, (st.blocks_active + st.blocks_cached) * st.block_bytes);
  size_t nseq = 0, nent = 0;
  for (int i = 0; i < M_SEQS; i++) {
    mseq_t *q = &md->seq[i];
    if (!q->used) continue;
    nseq++;
    size_t len;
    cllm_status_t rc = cllm_kv_seq_length(md->kv, q->h, &len);
    if (q->preempted) {
      cr_assert_eq(rc, CLLM_EPREEMPTED);
      continue;
    }
    cr_assert_eq(rc, CLLM_OK, "%s: %s", q->id, cllm_status_name(rc));
    cr_assert_eq(len, q->len);
    uint32_t t[64];
    size_t n = table(md->kv, q->h, t, 64);
    cr_assert_eq(n, mblocks(md, q->len));
    for (size_t p = 0; p < q->len; p++) {
      uint32_t *k;
      cr_assert_eq(cllm_kv_block_layer(md->kv, t[p / md->bt], 1, (void **)&k, NULL), CLLM_OK);
      cr_assert_eq(k[(p % md->bt) * 4], q->row[p] + 1, "%s row %zu", q->id, p);
    }
  }
  for (int i = 0; i < M_ENTRIES; i++) {
    mentry_t *e = &md->ent[i];
    size_t nk, nv;
    cllm_status_t rc = cllm_kv_get(md->kv, e->id, NULL, 0, &nk, NULL, 0, &nv);
    if (!e->used) {
      cr_assert_eq(rc, CLLM_ENOTFOUND, "entry %s should be gone", e->id);
      continue;
    }
    nent++;
    cr_assert_eq(rc, CLLM_OK, "entry %s", e->id);
    cr_assert_eq(nk, e->nk);
    cr_assert_eq(nv, e->nv);
  }
  cr_assert_eq(st.sequences, nseq);
  cr_assert_eq(st.copy_entries, nent);
}

/* Apply the callbacks recorded since `from`: preempted sequences in model order. */
static void m_preemptions(model_t *md, int from, int requester) {
  for (int c = from; c < md->rec.calls; c++) {
    cr_assert_eq(md->rec.reasons[c], CLLM_KV_EVICT_PREEMPTED);
    /* the model's LRU other sequence holding blocks */
    int want = -1;
    for (int i = 0; i < M_SEQS; i++) {
      mseq_t *q = &md->seq[i];
      if (!q->used || q->preempted || i == requester || q->len == 0) continue;
      if (want < 0 || q->stamp < md->seq[want].stamp) want = i;
    }
    cr_assert_geq(want, 0, "preempted %s but the model has no candidate", md->rec.ids[c]);
    cr_assert_str_eq(md->rec.ids[c], md->seq[want].id, "preemption order");
    md->seq[want].preempted = true;
    md->seq[want].len = md->seq[want].committed = 0;
  }
  md->rec.calls = from;
}

static int m_pick(model_t *md, bool used) {
  int start = (int)(mt_rand(&md->rng) % M_SEQS);
  for (int k = 0; k < M_SEQS; k++) {
    int i = (start + k) % M_SEQS;
    if (md->seq[i].used == used) return i;
  }
  return -1;
}

static void m_prompt(model_t *md, cllm_kv_token_t *t, size_t n) {
  int base = (int)(mt_rand(&md->rng) % 3);  // few bases: prefixes get shared
  size_t diverge = mt_rand(&md->rng) % (n + 1);
  for (size_t i = 0; i < n; i++)
    t[i] = i < diverge ? (cllm_kv_token_t)(base * 1000 + (int)i)
                       : (cllm_kv_token_t)(mt_rand(&md->rng) % 50000);
}

static void m_open(model_t *md, int i, bool with_prompt) {
  mseq_t *q = &md->seq[i];
  memset(q, 0, sizeof *q);
  snprintf(q->id, sizeof q->id, "s%d-%llu", i, (unsigned long long)md->clock);
  q->salt = mt_rand(&md->rng) % 2;
  cllm_kv_seq_opts_t o = {.salt = q->salt};
  size_t n = with_prompt ? 1 + mt_rand(&md->rng) % 60 : 0, cached = 99;
  cllm_kv_token_t t[M_MAXTOK];
  m_prompt(md, t, n);
  cr_assert_eq(cllm_kv_seq_open_with_prompt(md->kv, q->id, &o, t, n, &q->h, &cached), CLLM_OK);
  q->used = true;
  cr_assert_eq(cached % md->bt, 0);
  cr_assert(n == 0 ? cached == 0 : cached <= (n - 1) / md->bt * md->bt);
  memcpy(q->tok, t, n * sizeof *t);
  for (size_t p = 0; p < cached; p++) q->row[p] = row_value(q->salt, q->tok, p);
  q->len = q->committed = cached;
  if (cached > 0) q->stamp = ++md->clock;
  /* duplicates are refused */
  cllm_kv_seq_t x;
  cr_assert_eq(cllm_kv_seq_open(md->kv, q->id, NULL, &x), CLLM_EEXIST);
}

/* Open j with the committed tokens of i plus a few more (same salt): prefix hits. */
static void m_open_like(model_t *md, int j, int i) {
  mseq_t *src = &md->seq[i], *q = &md->seq[j];
  cllm_kv_token_t t[M_MAXTOK];
  size_t n = src->committed;
  memcpy(t, src->tok, n * sizeof *t);
  size_t extra = 1 + mt_rand(&md->rng) % 8;
  if (n + extra > M_MAXTOK) extra = M_MAXTOK - n;
  for (size_t k = 0; k < extra; k++) t[n + k] = (cllm_kv_token_t)(mt_rand(&md->rng) % 50000);
  n += extra;
  if (n == 0) return;
  uint64_t salt = src->salt;
  memset(q, 0, sizeof *q);
  snprintf(q->id, sizeof q->id, "l%d-%llu", j, (unsigned long long)md->clock);
  q->salt = salt;
  cllm_kv_seq_opts_t o = {.salt = salt};
  size_t cached = 99;
  cr_assert_eq(cllm_kv_seq_open_with_prompt(md->kv, q->id, &o, t, n, &q->h, &cached), CLLM_OK);
  q->used = true;
  cr_assert_eq(cached % md->bt, 0);
  cr_assert_leq(cached, (n - 1) / md->bt * md->bt);
  memcpy(q->tok, t, n * sizeof *t);
  for (size_t p = 0; p < cached; p++) q->row[p] = row_value(q->salt, q->tok, p);
  q->len = q->committed = cached;
  if (cached > 0) q->stamp = ++md->clock;
}

static void m_reserve(model_t *md, int i) {
  mseq_t *q = &md->seq[i];
  size_t n = 1 + mt_rand(&md->rng) % 20;
  if (q->len + n > M_MAXTOK) n = M_MAXTOK - q->len;
  if (n == 0) return;
  cllm_kv_loc_t loc[M_MAXTOK];
  int from = md->rec.calls;
  cllm_status_t rc = cllm_kv_seq_reserve(md->kv, q->h, n, loc);
  if (q->preempted) {
    cr_assert_eq(rc, CLLM_EPREEMPTED);
    return;
  }
  m_preemptions(md, from, i);
  if (mblocks(md, q->len + n) > md->nblocks) {
    cr_assert_eq(rc, CLLM_ERANGE);
    return;
  }
  if (rc != CLLM_OK) {
    cr_assert(rc == CLLM_ENOMEM, "%s", cllm_status_name(rc));
    /* with preemption on, no other sequence may still hold blocks */
    for (int k = 0; k < M_SEQS; k++)
      if (k != i && md->seq[k].used && !md->seq[k].preempted)
        cr_assert(md->seq[k].len == 0 || md->rec.kv == NULL, "ENOMEM while %s holds blocks",
                  md->seq[k].id);
    return;
  }
  /* choose the tokens now; write the rows (as a kernel would) */
  for (size_t k = 0; k < n; k++) {
    size_t p = q->len + k;
    if (mt_rand(&md->rng) % 4 == 0) q->tok[p] = (cllm_kv_token_t)(mt_rand(&md->rng) % 50000);
    else q->tok[p] = q->tok[p ? p - 1 : 0] + 1;
    q->row[p] = row_value(q->salt, q->tok, p);
    write_row(md->kv, loc[k], q->row[p]);
  }
  q->len += n;
  q->stamp = ++md->clock;
}

static void m_commit(model_t *md, int i) {
  mseq_t *q = &md->seq[i];
  size_t pend = q->len - q->committed;
  if (q->preempted) {
    cllm_kv_token_t t = 1;
    cr_assert_eq(cllm_kv_seq_commit(md->kv, q->h, &t, 1), CLLM_EPREEMPTED);
    return;
  }
  if (pend == 0) {
    cllm_kv_token_t t = 1;
    cr_assert_eq(cllm_kv_seq_commit(md->kv, q->h, &t, 1), CLLM_ERANGE);
    return;
  }
  size_t n = 1 + mt_rand(&md->rng) % pend;
  cr_assert_eq(cllm_kv_seq_commit(md->kv, q->h, q->tok + q->committed, n), CLLM_OK);
  q->committed += n;
}

static void m_fork(model_t *md, int i) {
  int j = m_pick(md, false);
  if (j < 0) return;
  mseq_t *p = &md->seq[i], *c = &md->seq[j];
  char id[16];
  snprintf(id, sizeof id, "f%d-%llu", j, (unsigned long long)md->clock);
  cllm_kv_seq_t h;
  cllm_status_t rc = cllm_kv_seq_fork(md->kv, p->h, id, &h);
  if (p->preempted) {
    cr_assert_eq(rc, CLLM_EPREEMPTED);
    return;
  }
  cr_assert_eq(rc, CLLM_OK);
  *c = *p;
  snprintf(c->id, sizeof c->id, "%s", id);
  c->h = h;
  if (c->len > 0) c->stamp = ++md->clock;
}

static void m_close(model_t *md, int i) {
  mseq_t *q = &md->seq[i];
  if (md->tier != NULL && q->committed > 0 && !q->preempted) {
    int k = (int)(mt_rand(&md->rng) % 8);
    md->past[k].n = q->committed;
    md->past[k].salt = q->salt;
    memcpy(md->past[k].tok, q->tok, q->committed * sizeof *q->tok);
  }
  cr_assert_eq(cllm_kv_seq_close(md->kv, q->h), CLLM_OK);
  cr_assert_eq(cllm_kv_seq_close(md->kv, q->h), CLLM_ENOTFOUND);
  q->used = false;
}

/* Open j with a past prompt (plus a few tokens), then probe and fetch from the
 * remote tier: every fetched row must be the one the model expects. */
static void m_open_remote(model_t *md, int j) {
  int k = (int)(mt_rand(&md->rng) % 8);
  if (md->past[k].n == 0) return;
  mseq_t *q = &md->seq[j];
  memset(q, 0, sizeof *q);
  snprintf(q->id, sizeof q->id, "r%d-%llu", j, (unsigned long long)md->clock);
  q->salt = md->past[k].salt;
  size_t n = md->past[k].n;
  memcpy(q->tok, md->past[k].tok, n * sizeof *q->tok);
  size_t extra = 1 + mt_rand(&md->rng) % 4;
  if (n + extra > M_MAXTOK) extra = M_MAXTOK - n;
  for (size_t e = 0; e < extra; e++) q->tok[n + e] = (cllm_kv_token_t)(mt_rand(&md->rng) % 50000);
  n += extra;
  cllm_kv_seq_opts_t o = {.salt = q->salt};
  size_t cached = 99, avail = 99, ready = 99;
  cr_assert_eq(cllm_kv_seq_open_with_prompt(md->kv, q->id, &o, q->tok, n, &q->h, &cached),
               CLLM_OK);
  q->used = true;
  q->len = q->committed = cached;
  for (size_t p = 0; p < cached; p++) q->row[p] = row_value(q->salt, q->tok, p);
  if (cached > 0) q->stamp = ++md->clock;
  switch (mt_rand(&md->rng) % 8) {  // faults of the store
    case 0: cllm_kv_fake_fail_next(md->fake, 1 + (unsigned)(mt_rand(&md->rng) % 3), CLLM_EIO); break;
    case 1: cllm_kv_fake_fail_next(md->fake, 1, CLLM_EBUSY); break;
    case 2: {  // poison a random stored record
      char key[CLLM_KV_TIER_KEY_MAX];
      uint8_t rec[512];
      size_t len, nk = cllm_kv_fake_count(md->fake, NULL);
      if (nk > 0 && cllm_kv_fake_key_at(md->fake, mt_rand(&md->rng) % nk, key, sizeof key) == CLLM_OK &&
          cllm_kv_fake_raw_get(md->fake, key, rec, sizeof rec, &len) == CLLM_OK && len > 0) {
        rec[mt_rand(&md->rng) % len] ^= 0x10;
        cr_assert_eq(cllm_kv_fake_raw_set(md->fake, key, rec, len), CLLM_OK);
      }
      break;
    }
    default: break;
  }
  cr_assert_eq(cllm_kv_tier_probe(md->tier, q->h, q->tok, n, &avail), CLLM_OK);
  cr_assert_eq(avail % md->bt, 0);
  cr_assert_leq(cached + avail, (n - 1) / md->bt * md->bt);
  int from = md->rec.calls;
  cllm_status_t rc = cllm_kv_tier_fetch(md->tier, q->h, q->tok, n, M_MAXTOK, &ready);
  m_preemptions(md, from, j);
  if (rc != CLLM_OK) {
    cr_assert(rc == CLLM_ENOMEM, "%s", cllm_status_name(rc));
    return;
  }
  cr_assert_eq(ready % md->bt, 0);
  for (size_t p = cached; p < cached + ready; p++) q->row[p] = row_value(q->salt, q->tok, p);
  q->len = q->committed = cached + ready;
  if (q->len > 0) q->stamp = ++md->clock;
  md->remote_tokens += ready;
}

static void m_touch(model_t *md, int i) {
  mseq_t *q = &md->seq[i];
  cllm_status_t rc = cllm_kv_seq_touch(md->kv, q->h);
  cr_assert_eq(rc, q->preempted ? CLLM_EPREEMPTED : CLLM_OK);
  if (!q->preempted && q->len > 0) q->stamp = ++md->clock;
}

static void entry_data(float *f, size_t n, int seed, int which) {
  for (size_t k = 0; k < n; k++) f[k] = (float)(seed * 7 + which * 100003 + (int)k);
}

static size_t entry_blocks(size_t nk, size_t nv) {
  size_t a = (nk + 31) / 32, b = (nv + 31) / 32;
  return a > b ? a : b;
}

static void m_put(model_t *md) {
  int i = (int)(mt_rand(&md->rng) % M_ENTRIES);
  mentry_t *e = &md->ent[i];
  size_t nk = mt_rand(&md->rng) % 100, nv = mt_rand(&md->rng) % 100;
  if (mt_rand(&md->rng) % 20 == 0) nk = 32 * (md->budget_blocks + 1);  // oversized
  int seed = (int)(mt_rand(&md->rng) % 1000);
  static float k[4096], v[4096];
  entry_data(k, nk, seed, 0);
  entry_data(v, nv, seed, 1);
  size_t need = entry_blocks(nk, nv);
  int from = md->rec.calls;
  cllm_kv_stats_t before = stats(md->kv);
  cllm_status_t rc = cllm_kv_put(md->kv, e->id, k, nk, v, nv);
  if (need > md->budget_blocks) {
    cr_assert_eq(rc, CLLM_ERANGE);
    cr_assert_eq(md->rec.calls, from, "nothing evicted for an oversized entry");
    return;
  }
  /* evictions happen in LRU order, the entry itself excluded */
  for (int c = from; c < md->rec.calls; c++) {
    cr_assert_eq(md->rec.reasons[c], CLLM_KV_EVICT_LRU);
    int want = -1;
    for (int x = 0; x < M_ENTRIES; x++)
      if (md->ent[x].used && x != i && (want < 0 || md->ent[x].stamp < md->ent[want].stamp)) want = x;
    cr_assert_geq(want, 0);
    cr_assert_str_eq(md->rec.ids[c], md->ent[want].id, "copy eviction order");
    md->ent[want].used = false;
  }
  md->rec.calls = from;
  if (rc != CLLM_OK) {
    cr_assert(rc == CLLM_ENOMEM, "%s", cllm_status_name(rc));
    cllm_kv_stats_t now = stats(md->kv);
    cr_assert_eq(now.refused, before.refused + 1);
    return;
  }
  size_t after = 0;
  for (int x = 0; x < M_ENTRIES; x++)
    if (md->ent[x].used && x != i) after += entry_blocks(md->ent[x].nk, md->ent[x].nv);
  cr_assert_leq(after + need, md->budget_blocks, "budget kept");
  cr_assert_eq(cllm_kv_used_bytes(md->kv), (after + need) * 256);
  e->used = true;
  e->nk = nk;
  e->nv = nv;
  e->seed = seed;
  e->stamp = ++md->clock;
}

static void m_get(model_t *md) {
  int i = (int)(mt_rand(&md->rng) % M_ENTRIES);
  mentry_t *e = &md->ent[i];
  static float k[4096], v[4096], ek[4096], ev[4096];
  size_t nk, nv;
  cllm_status_t rc = cllm_kv_get(md->kv, e->id, k, 4096, &nk, v, 4096, &nv);
  if (!e->used) {
    cr_assert_eq(rc, CLLM_ENOTFOUND);
    return;
  }
  cr_assert_eq(rc, CLLM_OK);
  entry_data(ek, e->nk, e->seed, 0);
  entry_data(ev, e->nv, e->seed, 1);
  cr_assert_eq(memcmp(k, ek, e->nk * 4), 0, "entry %s keys", e->id);
  cr_assert_eq(memcmp(v, ev, e->nv * 4), 0, "entry %s values", e->id);
  e->stamp = ++md->clock;
}

static void m_evict(model_t *md) {
  int i = (int)(mt_rand(&md->rng) % M_ENTRIES);
  mentry_t *e = &md->ent[i];
  cr_assert_eq(cllm_kv_evict(md->kv, e->id), e->used ? CLLM_OK : CLLM_ENOTFOUND);
  e->used = false;
}

static void run_model(unsigned long long seed, bool preemption, bool tier, long ops) {
  model_t *md = calloc(1, sizeof *md);
  md->rng = seed;
  md->mon = mk_monitor(0);
  md->bt = 4;
  md->nblocks = 48;
  md->budget_blocks = 10;
  cllm_kv_config_t c = small_cfg(md->mon, md->nblocks, md->bt);
  c.preemption = preemption;
  c.evict_fn = record;
  c.evict_user = &md->rec;
  c.copy_budget_bytes = md->budget_blocks * 256;
  md->kv = mk(&c);
  md->rec.kv = preemption ? md->kv : NULL;
  if (tier) {
    cllm_kv_tier_config_t tc = cllm_kv_tier_config_default();
    cr_assert_eq(cllm_kv_store_fake_create(&tc.store, &md->fake), CLLM_OK);
    tc.write_through = true;
    tc.retry_ms = 1;
    tc.op_timeout_ms = 50;
    tc.breaker_failures = 1000;  // faults cost single operations (the breaker has its own test)
    cr_assert_eq(cllm_kv_tier_create(md->kv, &tc, &md->tier), CLLM_OK);
  }
  for (int i = 0; i < M_ENTRIES; i++) snprintf(md->ent[i].id, sizeof md->ent[i].id, "e%d", i);
  for (long op = 0; op < ops; op++) {
    md->clock++;
    int r = (int)(mt_rand(&md->rng) % 100);
    int i = m_pick(md, true);
    if (r < 8 || i < 0) {
      int j = m_pick(md, false);
      if (j >= 0) m_open(md, j, r % 2 == 0);
    } else if (r < 35) {
      m_reserve(md, i);
    } else if (r < 50) {
      m_commit(md, i);
    } else if (r < 56) {
      m_close(md, i);
    } else if (r < 60) {
      m_touch(md, i);
    } else if (r < 64) {
      m_fork(md, i);
    } else if (r < 74) {
      m_put(md);
    } else if (r < 86) {
      m_get(md);
    } else if (r < 90) {
      m_evict(md);
    } else {
      int j = m_pick(md, false);
      if (j >= 0 && tier && r % 2 == 0) m_open_remote(md, j);
      else if (j >= 0) m_open_like(md, j, i);
    }
    m_verify(md);
  }
  cllm_kv_stats_t st = stats(md->kv);
  cr_assert_gt(st.prefix_hit_tokens, 0, "the workload never hit a prefix");
  cr_assert_gt(st.cow_copies, 0, "the workload never copied on write");
  cr_assert_gt(st.evictions, 0, "the workload never evicted a cached block");
  if (preemption) cr_assert_gt(st.preemptions, 0, "the workload never preempted");
  if (tier) {
    cr_assert_gt(md->remote_tokens, 0, "the workload never fetched from the tier");
    cr_assert_eq(st.tier_remote_hit_tokens, md->remote_tokens);
    cr_assert_gt(st.tier_spills, 0);
    cllm_kv_tier_destroy(md->tier);
  }
  cllm_kv_cache_destroy(md->kv);
  cr_assert_eq(cllm_monitor_used(md->mon, CLLM_CAT_COUNT), 0);
  cllm_monitor_destroy(md->mon);
  free(md);
}

/* SEED=n in the environment replays another sequence of operations. */
static unsigned long long model_seed(unsigned long long dflt) {
  const char *e = getenv("SEED");
  return e != NULL ? strtoull(e, NULL, 0) ^ dflt : dflt;
}

Test(kv_model, random_operations_match_the_reference_with_preemption, .timeout = 120) {
  run_model(model_seed(0x5eed1234ULL), true, false, mt_iters(3000));
}

Test(kv_model, random_operations_match_the_reference_without_preemption, .timeout = 120) {
  run_model(model_seed(0xabcdef99ULL), false, false, mt_iters(3000));
}


Test(kv_model, random_operations_with_the_remote_tier_and_preemption, .timeout = 120) {
  run_model(model_seed(0x7e1e5a11ULL), true, true, mt_iters(3000));
}

Test(kv_model, random_operations_with_the_remote_tier, .timeout = 120) {
  run_model(model_seed(0x7e1e5a12ULL), false, true, mt_iters(3000));
}
