/* Criterion suite for how the KV cache's remote tier (lib/kv_tier*.c) treats its
 * store: write-back spilling under pressure, the breaker, deadlines, -OOM / NOPERM
 * answers, probes of two sequences in flight at once, block events. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cllm/kv_cache.h>
#include <cllm/kv_tier.h>
#include <cllm/monitor.h>

#include "support/kv_tier_fixture.h"

/* ---- spilling ------------------------------------------------------------------------------ */

Test(kv_tier, write_back_spills_under_pressure_and_counts_drops) {
  cllm_monitor_t *m;
  cllm_kv_cache_t *kv = mk_cache(&m, 16, 4);
  cllm_kv_fake_t *f;
  cllm_kv_store_t st = fake_store(&f);
  cllm_kv_tier_t *t = mk_tier(kv, st, false);
  cllm_kv_token_t tok[64];
  seq_tokens(tok, 64, 7);
  cllm_kv_seq_t s;
  cr_assert_eq(cllm_kv_seq_open(kv, "x", NULL, &s), CLLM_OK);
  compute(kv, s, tok, 0, 8);  // 2 blocks, 14 free: no pressure
  cr_assert_eq(cllm_kv_seq_close(kv, s), CLLM_OK);
  usleep(50000);
  cr_assert_eq(stats(kv).tier_spills, 0);
  cr_assert_eq(cllm_kv_seq_open(kv, "y", NULL, &s), CLLM_OK);
  compute(kv, s, tok + 8, 0, 48);  // 12 more: 2 free < 4 (low water)
  cr_assert_eq(cllm_kv_seq_close(kv, s), CLLM_OK);
  for (int i = 0; i < 200 && stats(kv).tier_spills < 14; i++) usleep(5000);
  cr_assert_eq(stats(kv).tier_spills, 14);  // every LRU block, oldest first
  /* store down: new blocks cannot be written; evicting them is counted */
  cllm_kv_fake_set_down(f, true);
  cllm_kv_token_t u[80];
  seq_tokens(u, 80, 8);
  cr_assert_eq(cllm_kv_seq_open(kv, "z", NULL, &s), CLLM_OK);
  compute(kv, s, u, 0, 32);  // 2 free + 6 written blocks evicted
  cr_assert_eq(cllm_kv_seq_close(kv, s), CLLM_OK);
  cr_assert_eq(cllm_kv_seq_open(kv, "w", NULL, &s), CLLM_OK);
  compute(kv, s, u + 32, 0, 48);  // the 8 written ones, then 4 of z's unwritten ones
  cllm_kv_stats_t sx = stats(kv);
  cr_assert_geq(sx.tier_spills_skipped, 1);
  cr_assert_eq(cllm_kv_seq_close(kv, s), CLLM_OK);
  check(kv);
  cllm_kv_tier_destroy(t);
  cllm_kv_cache_destroy(kv);
  cllm_monitor_destroy(m);
}

/* ---- store faults --------------------------------------------------------------------------- */

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

Test(kv_tier, breaker_opens_answers_at_once_and_recovers) {
  pair_t p;
  pair_up(&p, 64, true);
  cllm_kv_token_t t[17];
  seq_tokens(t, 17, 9);
  a_serves(&p, t, 17, 0);
  cllm_kv_fake_set_down(p.fake, true);
  cllm_kv_seq_t s;
  size_t cached, avail = 1;
  cr_assert_eq(cllm_kv_seq_open_with_prompt(p.b, "b", NULL, t, 17, &s, &cached), CLLM_OK);
  for (int i = 0; i < 3; i++) {
    cr_assert_eq(cllm_kv_tier_probe(p.tb, s, t, 17, &avail), CLLM_OK);
    cr_assert_eq(avail, 0);
  }
  cllm_kv_stats_t sb = stats(p.b);
  cr_assert_eq(sb.tier_state, CLLM_KV_TIER_DOWN);
  cr_assert_geq(sb.tier_errors, 1);
  int64_t t0 = mono_ms();
  cr_assert_eq(cllm_kv_tier_probe(p.tb, s, t, 17, &avail), CLLM_OK);
  cr_assert_lt(mono_ms() - t0, 50);  // DOWN: no store call
  cllm_kv_fake_set_down(p.fake, false);
  for (int i = 0; i < 400 && stats(p.b).tier_state != CLLM_KV_TIER_UP; i++) usleep(5000);
  cr_assert_eq(stats(p.b).tier_state, CLLM_KV_TIER_UP);
  usleep(30000);  // past the fetch connection's back-off
  cr_assert_eq(cllm_kv_tier_probe(p.tb, s, t, 17, &avail), CLLM_OK);
  cr_assert_eq(avail, 16);
  cr_assert_geq(stats(p.b).tier_reconnects, 1);
  cr_assert_eq(cllm_kv_seq_close(p.b, s), CLLM_OK);
  pair_down(&p);
}

Test(kv_tier, slow_store_misses_within_the_deadline) {
  pair_t p;
  pair_up(&p, 64, true);
  cllm_kv_token_t t[17];
  seq_tokens(t, 17, 10);
  a_serves(&p, t, 17, 0);
  cllm_kv_fake_set_delay(p.fake, 2000000);  // 2 s per operation; the deadline is 100 ms
  cllm_kv_seq_t s;
  size_t cached, avail = 1, ready = 1;
  cr_assert_eq(cllm_kv_seq_open_with_prompt(p.b, "b", NULL, t, 17, &s, &cached), CLLM_OK);
  int64_t t0 = mono_ms();
  cr_assert_eq(cllm_kv_tier_probe(p.tb, s, t, 17, &avail), CLLM_OK);
  cr_assert_eq(avail, 0);
  cr_assert_eq(cllm_kv_tier_fetch(p.tb, s, t, 17, 16, &ready), CLLM_OK);
  cr_assert_eq(ready, 0);
  int64_t took = mono_ms() - t0;
  cr_assert_lt(took, 1000, "took %lld ms", (long long)took);
  cr_assert_geq(stats(p.b).tier_timeouts, 2);
  cllm_kv_fake_set_delay(p.fake, 0);
  check(p.b);
  cr_assert_eq(cllm_kv_seq_close(p.b, s), CLLM_OK);
  pair_down(&p);
}

Test(kv_tier, full_store_and_noperm_are_counted_not_retried) {
  pair_t p;
  pair_up(&p, 64, true);
  cllm_kv_fake_set_max_bytes(p.fake, 1000);  // two records of 376 bytes
  cllm_kv_token_t t[17];
  seq_tokens(t, 17, 11);
  a_serves(&p, t, 17, 0);
  cllm_kv_stats_t sa = stats(p.a);
  cr_assert_eq(sa.tier_spills, 2);
  cr_assert_eq(sa.tier_rejects_oom, 2);
  cr_assert_eq(cllm_kv_tier_flush(p.ta, 5000), CLLM_OK);
  cr_assert_eq(stats(p.a).tier_rejects_oom, 2);  // not retried
  cr_assert_eq(sa.tier_state, CLLM_KV_TIER_UP);
  cr_assert_eq(cllm_kv_fake_set_deny_prefix(p.fake, "cllm:"), CLLM_OK);
  cllm_kv_fake_set_max_bytes(p.fake, 0);
  cllm_kv_token_t u[9];
  seq_tokens(u, 9, 12);
  cllm_kv_seq_t s;
  cr_assert_eq(cllm_kv_seq_open(p.a, "a2", NULL, &s), CLLM_OK);
  compute(p.a, s, u, 0, 9);
  cr_assert_eq(cllm_kv_seq_close(p.a, s), CLLM_OK);
  cr_assert_eq(cllm_kv_tier_flush(p.ta, 5000), CLLM_OK);
  cr_assert_eq(stats(p.a).tier_rejects_noperm, 2);
  pair_down(&p);
}

/* ---- probes in flight ------------------------------------------------------------------------ */

typedef struct prober {
  cllm_kv_tier_t *t;
  cllm_kv_seq_t s;
  const cllm_kv_token_t *tok;
  size_t n, avail;
  cllm_status_t rc;
} prober_t;

static void *probe_thread(void *arg) {
  prober_t *p = arg;
  p->rc = cllm_kv_tier_probe(p->t, p->s, p->tok, p->n, &p->avail);
  return NULL;
}

Test(kv_tier, probes_of_two_sequences_are_in_flight_at_once) {
  cllm_monitor_t *m;
  cllm_kv_cache_t *kv = mk_cache(&m, 64, 4);
  cllm_kv_fake_t *f;
  cllm_kv_store_t st = fake_store(&f);
  cllm_kv_tier_config_t tc = cllm_kv_tier_config_default();
  tc.store = st;
  tc.fetch_threads = 2;
  tc.op_timeout_ms = 30000;  // held operations must not time out
  cllm_kv_tier_t *t = NULL;
  cr_assert_eq(cllm_kv_tier_create(kv, &tc, &t), CLLM_OK);
  cllm_kv_token_t tok[2][21];
  prober_t pr[2];
  pthread_t th[2];
  cllm_kv_fake_hold(f, true);
  for (int i = 0; i < 2; i++) {
    seq_tokens(tok[i], 21, 100 + (uint32_t)i);
    size_t cached;
    char id[2] = {(char)('a' + i), 0};
    pr[i] = (prober_t){.t = t, .tok = tok[i], .n = 21, .rc = CLLM_EIO};
    cr_assert_eq(cllm_kv_seq_open_with_prompt(kv, id, NULL, tok[i], 21, &pr[i].s, &cached),
                 CLLM_OK);
    cr_assert_eq(pthread_create(&th[i], NULL, probe_thread, &pr[i]), 0);
  }
  /* both probes reach the store while it holds them: two jobs in flight, not one queued */
  for (int w = 0; w < 2000 && cllm_kv_fake_waiting(f) < 2; w++) usleep(5000);
  cr_assert_eq(cllm_kv_fake_waiting(f), 2);
  cllm_kv_fake_hold(f, false);
  for (int i = 0; i < 2; i++) {
    pthread_join(th[i], NULL);
    cr_assert_eq(pr[i].rc, CLLM_OK);
    cr_assert_eq(pr[i].avail, 0);
    cr_assert_eq(cllm_kv_seq_close(kv, pr[i].s), CLLM_OK);
  }
  cr_assert_eq(stats(kv).tier_probes, 2);
  cllm_kv_tier_destroy(t);
  check_destroy(kv, m);
}

/* ---- block events ------------------------------------------------------------------------------ */

typedef struct evlog {
  pthread_mutex_t mu;
  cllm_kv_event_t ev[256];
  cllm_kv_token_t tok[256][4];
  size_t n, calls, max_batch;
} evlog_t;

static void on_events(void *user, double ts, const cllm_kv_event_t *e, size_t n) {
  evlog_t *l = user;
  cr_assert_gt(ts, 1e9);
  cr_assert_geq(n, 1);
  pthread_mutex_lock(&l->mu);
  l->calls++;
  if (n > l->max_batch) l->max_batch = n;
  for (size_t i = 0; i < n && l->n < 256; i++, l->n++) {
    l->ev[l->n] = e[i];
    if (e[i].tokens != NULL) memcpy(l->tok[l->n], e[i].tokens, sizeof l->tok[0]);
    l->ev[l->n].tokens = e[i].tokens ? l->tok[l->n] : NULL;
  }
  pthread_mutex_unlock(&l->mu);
}

static size_t ev_count(evlog_t *l, uint32_t kind) {
  size_t c = 0;
  for (size_t i = 0; i < l->n; i++) c += l->ev[i].kind == kind;
  return c;
}

static cllm_kv_tier_t *mk_tier_ev(cllm_kv_cache_t *kv, cllm_kv_store_t st, evlog_t *l) {
  cllm_kv_tier_config_t tc = tier_cfg(st);
  tc.write_through = true;
  tc.event_fn = on_events;
  tc.event_user = l;
  tc.event_batch = 3;
  cllm_kv_tier_t *t = NULL;
  cr_assert_eq(cllm_kv_tier_create(kv, &tc, &t), CLLM_OK);
  return t;
}

Test(kv_tier, block_events_stored_spilled_fetched_removed) {
  static evlog_t la, lb;
  memset(&la, 0, sizeof la);
  memset(&lb, 0, sizeof lb);
  pthread_mutex_init(&la.mu, NULL);
  pthread_mutex_init(&lb.mu, NULL);
  pair_t p;
  cllm_kv_store_t st = pair_caches(&p, 8);
  p.ta = mk_tier_ev(p.a, st, &la);
  p.tb = mk_tier_ev(p.b, borrowed(st, &p.ops_b), &lb);
  cllm_kv_token_t t[21], u[21];
  seq_tokens(t, 21, 31);
  seq_tokens(u, 21, 32);
  a_serves(&p, t, 21, 0);  // 5 blocks stored and spilled
  cllm_kv_seq_t s;
  cr_assert_eq(b_fetches(&p, t, 21, 0, &s), 20);  // B: 5 fetched
  cr_assert_eq(cllm_kv_seq_close(p.b, s), CLLM_OK);
  /* A computes another prompt in its 8 blocks: cached blocks of the first are evicted */
  cr_assert_eq(serve(p.a, "u", NULL, u, 21), 0);
  cr_assert_eq(cllm_kv_tier_events_dropped(p.ta), 0);
  cr_assert_eq(cllm_kv_tier_events_dropped(NULL), 0);
  cllm_kv_tier_destroy(p.ta);  // delivers what is still queued
  cllm_kv_tier_destroy(p.tb);
  /* A: the first prompt's 5 blocks, in chain order, with tokens and chained digests */
  uint8_t root[16], d[16];
  cllm_kv_shape_t sh = SHAPE;
  sh.fingerprint = cllm_kv_tier_fingerprint(&sh, "test-model", 10);
  cllm_kv_tier_root_digest(sh.fingerprint, cllm_kv_tier_namespace(0, 0), root);
  memcpy(d, root, 16);
  size_t k = 0;
  for (size_t i = 0; i < la.n && k < 5; i++) {
    const cllm_kv_event_t *e = &la.ev[i];
    if (e->kind != CLLM_KV_EVENT_STORED) continue;
    cr_assert_eq(e->position, k);
    cr_assert_eq(e->block_tokens, 4);
    cr_assert_eq(memcmp(e->parent, d, 16), 0);
    cr_assert_eq(memcmp(e->tokens, t + 4 * k, 4 * sizeof *t), 0);
    cllm_kv_tier_chain_digest(d, t + 4 * k, 4, d);
    cr_assert_eq(memcmp(e->digest, d, 16), 0);
    k++;
  }
  cr_assert_eq(k, 5);
  cr_assert_eq(ev_count(&la, CLLM_KV_EVENT_STORED), 10);  // both prompts
  cr_assert_geq(ev_count(&la, CLLM_KV_EVENT_SPILLED), 5);
  cr_assert_geq(ev_count(&la, CLLM_KV_EVENT_REMOVED), 2);  // 8 blocks hold 5 + 6
  cr_assert_eq(ev_count(&la, CLLM_KV_EVENT_FETCHED), 0);
  for (size_t i = 0; i < la.n; i++)
    if (la.ev[i].kind == CLLM_KV_EVENT_REMOVED || la.ev[i].kind == CLLM_KV_EVENT_SPILLED)
      cr_assert_null(la.ev[i].tokens);
  /* B: fetched, never stored or spilled */
  cr_assert_eq(ev_count(&lb, CLLM_KV_EVENT_FETCHED), 5);
  cr_assert_eq(ev_count(&lb, CLLM_KV_EVENT_STORED), 0);
  cr_assert_eq(ev_count(&lb, CLLM_KV_EVENT_SPILLED), 0);
  cr_assert_leq(la.max_batch, 3);  // event_batch
  check(p.a);
  check(p.b);
  cllm_kv_cache_destroy(p.a);
  cllm_kv_cache_destroy(p.b);
  cllm_monitor_destroy(p.m);
}
