/* Criterion suite for the KV cache's remote tier (lib/kv_tier*.c), two caches sharing
 * a store: fetched bytes equal, partial local hits, poisoned records, tenants (salts),
 * stores without put_batch, the deployment MAC key. The other tier suites:
 * kv_tier_codec_test.c (records, fake store), kv_tier_store_test.c (spilling, the
 * breaker, deadlines, -OOM / NOPERM, probes in flight, block events),
 * kv_tier_api_test.c (bad input, allocation faults, config, destroy order). */
#include <criterion/criterion.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cllm/kv_cache.h>
#include <cllm/kv_tier.h>
#include <cllm/monitor.h>

#include "support/kv_tier_fixture.h"

/* ---- two caches, one store ---------------------------------------------------------- */

Test(kv_tier, b_fetches_a_blocks_bytes_equal) {
  pair_t p;
  pair_up(&p, 64, true);
  cllm_kv_token_t t[42];
  seq_tokens(t, 42, 3);
  a_serves(&p, t, 42, 0);
  cllm_kv_stats_t sa = stats(p.a);
  cr_assert_eq(sa.tier_state, CLLM_KV_TIER_UP);
  cr_assert_eq(sa.tier_spills, 10);  // 42 tokens: 10 full blocks
  cr_assert_eq(cllm_kv_fake_count(p.fake, NULL), 10);
  cllm_kv_seq_t s;
  size_t ready = b_fetches(&p, t, 42, 0, &s);
  cr_assert_eq(ready, 40);
  expect_rows(p.b, s, t, 40);
  compute(p.b, s, t, 40, 42);  // the rest as usual
  cllm_kv_stats_t sb = stats(p.b);
  cr_assert_eq(sb.tier_remote_hit_tokens, 40);
  cr_assert_eq(sb.tier_probes, 1);
  cr_assert_eq(sb.tier_fetched_bytes, 40 / 4 * 376);
  cr_assert_eq(sb.prefix_hit_tokens, 0);
  check(p.b);
  /* fetched blocks are indexed: a second request in B hits them locally */
  cr_assert_eq(cllm_kv_seq_close(p.b, s), CLLM_OK);
  size_t cached;
  cr_assert_eq(cllm_kv_seq_open_with_prompt(p.b, "b2", NULL, t, 42, &s, &cached), CLLM_OK);
  cr_assert_eq(cached, 40);
  /* and are not written back (the store has them) */
  cr_assert_eq(cllm_kv_tier_flush(p.tb, 5000), CLLM_OK);
  cr_assert_eq(stats(p.b).tier_spills, 0);
  cr_assert_eq(cllm_kv_seq_close(p.b, s), CLLM_OK);
  pair_down(&p);
}

Test(kv_tier, partial_local_hit_then_remote) {
  pair_t p;
  pair_up(&p, 64, false);
  cllm_kv_token_t t[33];
  seq_tokens(t, 33, 4);
  a_serves(&p, t, 33, 0);  // write-back: flush writes them
  cr_assert_eq(stats(p.a).tier_spills, 8);
  /* B computed the first 2 blocks itself */
  cllm_kv_seq_t s;
  cr_assert_eq(cllm_kv_seq_open(p.b, "b0", NULL, &s), CLLM_OK);
  compute(p.b, s, t, 0, 8);
  cr_assert_eq(cllm_kv_seq_close(p.b, s), CLLM_OK);
  size_t cached, avail, ready;
  cr_assert_eq(cllm_kv_seq_open_with_prompt(p.b, "b", NULL, t, 33, &s, &cached), CLLM_OK);
  cr_assert_eq(cached, 8);
  cr_assert_eq(cllm_kv_tier_probe(p.tb, s, t, 33, &avail), CLLM_OK);
  cr_assert_eq(avail, 24);
  cr_assert_eq(cllm_kv_tier_fetch(p.tb, s, t, 33, 9, &ready), CLLM_OK);  // 2 blocks asked
  cr_assert_eq(ready, 8);
  cr_assert_eq(cllm_kv_tier_fetch(p.tb, s, t, 33, 1000, &ready), CLLM_OK);
  cr_assert_eq(ready, 16);
  expect_rows(p.b, s, t, 32);
  cr_assert_eq(cllm_kv_tier_probe(p.tb, s, t, 33, &avail), CLLM_OK);
  cr_assert_eq(avail, 0);  // the last token is always computed
  cr_assert_eq(cllm_kv_seq_close(p.b, s), CLLM_OK);
  pair_down(&p);
}

Test(kv_tier, poisoned_record_stops_the_fetch) {
  pair_t p;
  pair_up(&p, 64, true);
  cllm_kv_token_t t[21];
  seq_tokens(t, 21, 5);
  a_serves(&p, t, 21, 0);
  /* overwrite block 2's value with block 3's record (valid checksum, wrong identity) */
  uint8_t d[5][16], root[16];
  uint64_t ns = cllm_kv_tier_namespace(0, 0);
  cllm_kv_shape_t sh = SHAPE;
  sh.fingerprint = cllm_kv_tier_fingerprint(&sh, "test-model", 10);
  cllm_kv_tier_root_digest(sh.fingerprint, ns, root);
  for (int i = 0; i < 5; i++) cllm_kv_tier_chain_digest(i ? d[i - 1] : root, t + 4 * i, 4, d[i]);
  char k2[CLLM_KV_TIER_KEY_MAX], k3[CLLM_KV_TIER_KEY_MAX];
  cllm_kv_tier_key(sh.fingerprint, ns, d[2], k2);
  cllm_kv_tier_key(sh.fingerprint, ns, d[3], k3);
  uint8_t rec[512];
  size_t len;
  cr_assert_eq(cllm_kv_fake_raw_get(p.fake, k3, rec, sizeof rec, &len), CLLM_OK);
  cr_assert_eq(cllm_kv_fake_raw_set(p.fake, k2, rec, len), CLLM_OK);
  cllm_kv_seq_t s;
  cr_assert_eq(b_fetches(&p, t, 21, 0, &s), 8);
  cr_assert_eq(stats(p.b).tier_rejects_record, 1);
  expect_rows(p.b, s, t, 8);
  check(p.b);
  /* a flipped payload byte (checksum) in block 0: nothing is used */
  cr_assert_eq(cllm_kv_seq_close(p.b, s), CLLM_OK);
  char k0[CLLM_KV_TIER_KEY_MAX];
  cllm_kv_tier_key(sh.fingerprint, ns, d[0], k0);
  cr_assert_eq(cllm_kv_fake_raw_get(p.fake, k0, rec, sizeof rec, &len), CLLM_OK);
  rec[200] ^= 1;
  cr_assert_eq(cllm_kv_fake_raw_set(p.fake, k0, rec, len), CLLM_OK);
  cllm_kv_cache_t *kv = p.b;
  cllm_kv_seq_t s2;
  size_t cached, ready;
  cr_assert_eq(cllm_kv_seq_open_with_prompt(kv, "c", NULL, t + 0, 21, &s2, &cached), CLLM_OK);
  cr_assert_eq(cached, 8);  // B indexed blocks 0 and 1 itself: no fetch needed
  cr_assert_eq(cllm_kv_seq_close(kv, s2), CLLM_OK);
  /* a third cache sees the poisoned block 0 */
  cllm_kv_config_t c = small_cfg(p.m, 16, 4);
  cllm_kv_cache_t *kc = mk(&c);
  cllm_kv_store_t st = {&p.ops_b, p.fake};  // p.ops_b never closes the store
  cllm_kv_tier_t *tc = mk_tier(kc, st, false);
  cr_assert_eq(cllm_kv_seq_open_with_prompt(kc, "c", NULL, t, 21, &s2, &cached), CLLM_OK);
  cr_assert_eq(cllm_kv_tier_fetch(tc, s2, t, 21, 1000, &ready), CLLM_OK);
  cr_assert_eq(ready, 0);
  cllm_kv_stats_t sc = stats(kc);
  cr_assert_eq(sc.tier_rejects_record, 1);
  cr_assert_eq(sc.blocks_active, 0);  // the reserved blocks went back
  size_t slen;
  cr_assert_eq(cllm_kv_seq_length(kc, s2, &slen), CLLM_OK);
  cr_assert_eq(slen, 0);
  check(kc);
  compute(kc, s2, t, 0, 21);  // and the sequence works as usual
  cr_assert_eq(cllm_kv_seq_close(kc, s2), CLLM_OK);
  cllm_kv_tier_destroy(tc);
  cllm_kv_cache_destroy(kc);
  pair_down(&p);
}

Test(kv_tier, salts_are_separate_namespaces) {
  pair_t p;
  pair_up(&p, 64, true);
  cllm_kv_token_t t[17];
  seq_tokens(t, 17, 6);
  a_serves(&p, t, 17, 1);
  cllm_kv_seq_t s;
  size_t cached, avail;
  cllm_kv_seq_opts_t o = {.salt = 2};
  cr_assert_eq(cllm_kv_seq_open_with_prompt(p.b, "b", &o, t, 17, &s, &cached), CLLM_OK);
  cr_assert_eq(cllm_kv_tier_probe(p.tb, s, t, 17, &avail), CLLM_OK);
  cr_assert_eq(avail, 0);
  cr_assert_eq(cllm_kv_seq_close(p.b, s), CLLM_OK);
  cr_assert_eq(b_fetches(&p, t, 17, 1, &s), 16);
  cr_assert_eq(cllm_kv_seq_close(p.b, s), CLLM_OK);
  /* no key names the salt: every key's namespace is the keyed hash of 1 */
  char key[CLLM_KV_TIER_KEY_MAX], want[24];
  snprintf(want, sizeof want, ":%016llx:",
           (unsigned long long)cllm_kv_tier_namespace(1, 0));
  for (size_t i = 0; cllm_kv_fake_key_at(p.fake, i, key, sizeof key) == CLLM_OK; i++)
    cr_assert_not_null(strstr(key, want), "%s", key);
  pair_down(&p);
}

/* ---- stores without put_batch ---------------------------------------------------------------- */

Test(kv_tier, a_store_without_put_batch_spills_one_put_at_a_time) {
  pair_t p;
  cllm_kv_store_t st = pair_caches(&p, 64);
  static cllm_kv_store_ops_t plain;
  plain = *st.ops;
  plain.put_batch = NULL;
  p.ta = mk_tier(p.a, (cllm_kv_store_t){&plain, st.user}, true);
  p.tb = mk_tier(p.b, borrowed(st, &p.ops_b), true);
  cllm_kv_token_t t[42];
  seq_tokens(t, 42, 9);
  a_serves(&p, t, 42, 0);
  cr_assert_eq(stats(p.a).tier_spills, 10);
  cllm_kv_seq_t s;
  cr_assert_eq(b_fetches(&p, t, 42, 0, &s), 40);
  expect_rows(p.b, s, t, 40);
  cr_assert_eq(cllm_kv_seq_close(p.b, s), CLLM_OK);
  pair_down(&p);
}

/* ---- the deployment MAC key ------------------------------------------------------------------ */

typedef struct reader {
  cllm_kv_cache_t *kv;
  cllm_kv_tier_t *t;
} reader_t;

/* A cache with a tier on the pair's store (never closed by it), MAC key `key` or none. */
static reader_t reader(pair_t *p, const char *key) {
  cllm_kv_config_t c = small_cfg(p->m, 64, 4);
  reader_t r = {.kv = mk(&c)};
  cllm_kv_tier_config_t tc = tier_cfg((cllm_kv_store_t){&p->ops_b, p->fake});
  tc.op_timeout_ms = 1000;
  tc.mac_key = key;
  tc.mac_key_len = key ? strlen(key) : 0;
  cr_assert_eq(cllm_kv_tier_create(r.kv, &tc, &r.t), CLLM_OK);
  return r;
}

/* Blocks the reader fetches for the prompt; *rejects gets its record rejects. */
static size_t reader_fetch(reader_t *r, const cllm_kv_token_t *t, size_t n, uint64_t *rejects) {
  cllm_kv_seq_t s;
  size_t cached, ready;
  cr_assert_eq(cllm_kv_seq_open_with_prompt(r->kv, "r", NULL, t, n, &s, &cached), CLLM_OK);
  cr_assert_eq(cllm_kv_tier_fetch(r->t, s, t, n, n, &ready), CLLM_OK);
  if (ready > 0) expect_rows(r->kv, s, t, ready);
  cr_assert_eq(cllm_kv_seq_close(r->kv, s), CLLM_OK);
  *rejects = stats(r->kv).tier_rejects_record;
  check(r->kv);
  return ready;
}

static void reader_down(reader_t *r) {
  cllm_kv_tier_destroy(r->t);
  cllm_kv_cache_destroy(r->kv);
}

Test(kv_tier, mac_key_rejects_other_keys_no_key_and_poisoning) {
  pair_t p;
  memset(&p, 0, sizeof p);
  p.a = mk_cache(&p.m, 64, 4);
  cllm_kv_store_t st = fake_store(&p.fake);
  (void)borrowed(st, &p.ops_b);  // the readers' ops: they never close the store
  cllm_kv_tier_config_t tc = tier_cfg(st);
  tc.mac_key = "deployment-key-1";
  tc.mac_key_len = 16;
  cr_assert_eq(cllm_kv_tier_create(p.a, &tc, &p.ta), CLLM_OK);
  cllm_kv_token_t t[21];
  seq_tokens(t, 21, 77);
  a_serves(&p, t, 21, 0);  // 5 tagged records
  uint64_t rej;
  reader_t same = reader(&p, "deployment-key-1"), other = reader(&p, "deployment-key-2"),
           none = reader(&p, NULL);
  cr_assert_eq(reader_fetch(&same, t, 21, &rej), 20);
  cr_assert_eq(rej, 0);
  cr_assert_eq(stats(same.kv).tier_rejects_mac, 0);
  cr_assert_eq(reader_fetch(&other, t, 21, &rej), 0);  // another key: rejected, counted
  cr_assert_eq(rej, 1);
  cr_assert_eq(stats(other.kv).tier_rejects_mac, 1, "counted as a MAC reject");
  cr_assert_eq(reader_fetch(&none, t, 21, &rej), 0);  // no key: cannot verify, rejected
  cr_assert_eq(rej, 1);
  cr_assert_eq(stats(none.kv).tier_rejects_mac, 1);
  /* the record itself says it is tagged; flipping that flag or the tag is caught */
  uint8_t d[16], root[16];
  uint64_t ns = cllm_kv_tier_namespace(0, 0);
  cllm_kv_shape_t sh = SHAPE;
  sh.fingerprint = cllm_kv_tier_fingerprint(&sh, "test-model", 10);
  cllm_kv_tier_root_digest(sh.fingerprint, ns, root);
  cllm_kv_tier_chain_digest(root, t, 4, d);
  char k0[CLLM_KV_TIER_KEY_MAX];
  cllm_kv_tier_key(sh.fingerprint, ns, d, k0);
  uint8_t rec[512], orig[512];
  size_t len;
  cr_assert_eq(cllm_kv_fake_raw_get(p.fake, k0, orig, sizeof orig, &len), CLLM_OK);
  cr_assert_eq(orig[28], 1);  // flags: MAC
  const size_t offs[3] = {200, len - 1, 28};  // payload byte, tag byte, flag byte
  for (int i = 0; i < 3; i++) {
    memcpy(rec, orig, len);
    rec[offs[i]] ^= 1;
    cr_assert_eq(cllm_kv_fake_raw_set(p.fake, k0, rec, len), CLLM_OK);
    reader_t r = reader(&p, "deployment-key-1");
    cr_assert_eq(reader_fetch(&r, t, 21, &rej), 0, "offset %zu", offs[i]);
    cr_assert_eq(rej, 1);
    cr_assert_eq(stats(r.kv).tier_rejects_mac, 1, "offset %zu", offs[i]);
    reader_down(&r);
  }
  /* a downgrade: a valid unkeyed record (right checksum) under the same key */
  cr_assert_eq(cllm_kv_fake_raw_del(p.fake, k0), CLLM_OK);
  reader_t w = reader(&p, NULL);
  cr_assert_eq(serve(w.kv, "w", NULL, t, 21), 0);
  cr_assert_eq(cllm_kv_tier_flush(w.t, 5000), CLLM_OK);
  cr_assert_eq(cllm_kv_fake_raw_get(p.fake, k0, rec, sizeof rec, &len), CLLM_OK);
  cr_assert_eq(rec[28], 0);  // rewritten unkeyed
  reader_t r = reader(&p, "deployment-key-1");
  cr_assert_eq(reader_fetch(&r, t, 21, &rej), 0);
  cr_assert_eq(rej, 1);
  reader_down(&r);
  reader_down(&w);
  reader_down(&same);
  reader_down(&other);
  reader_down(&none);
  /* bad keys are refused */
  cllm_kv_config_t c = small_cfg(p.m, 64, 4);
  cllm_kv_cache_t *kv = mk(&c);
  tc.store = (cllm_kv_store_t){&p.ops_b, p.fake};
  tc.mac_key_len = 65;
  cllm_kv_tier_t *bad;
  cr_assert_eq(cllm_kv_tier_create(kv, &tc, &bad), CLLM_EINVAL);
  tc.mac_key = NULL;
  tc.mac_key_len = 4;
  cr_assert_eq(cllm_kv_tier_create(kv, &tc, &bad), CLLM_EINVAL);
  cllm_kv_cache_destroy(kv);
  check(p.a);
  cllm_kv_tier_destroy(p.ta);
  cllm_kv_cache_destroy(p.a);
  cllm_monitor_destroy(p.m);
}
