/* Criterion suite for the KV cache's remote tier (lib/kv_tier*.c): the record
 * codec and every poisoning case, the fake store, two caches sharing a store,
 * write-through / write-back spilling, rejected records, tenants, the breaker,
 * deadlines, -OOM / NOPERM answers, bad input and allocation faults. */
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

#include "lib/internal/fault.h"
#include "support/kv_test_util.h"

/* ---- helpers ------------------------------------------------------------------------ */

static void noop_close(void *user) { (void)user; }

/* A second handle on a store that the tier will not close (two tiers, one store). */
static cllm_kv_store_t borrowed(cllm_kv_store_t s, cllm_kv_store_ops_t *ops) {
  *ops = *s.ops;
  ops->close = noop_close;
  return (cllm_kv_store_t){ops, s.user};
}

static cllm_kv_tier_t *mk_tier(cllm_kv_cache_t *kv, cllm_kv_store_t store, bool wt) {
  cllm_kv_tier_config_t tc = cllm_kv_tier_config_default();
  tc.store = store;
  tc.model_id = "test-model";
  tc.model_id_len = 10;
  tc.write_through = wt;
  tc.op_timeout_ms = 100;
  tc.retry_ms = 20;
  cllm_kv_tier_t *t = NULL;
  cllm_status_t rc = cllm_kv_tier_create(kv, &tc, &t);
  cr_assert_eq(rc, CLLM_OK, "tier create: %s", cllm_status_name(rc));
  return t;
}

/* The K/V value written for a token: a function of the token position and id. */
static float kv_val(size_t pos, cllm_kv_token_t tok, uint32_t layer, int v, uint32_t e) {
  return (float)(pos * 131 + (size_t)tok * 7 + layer * 3 + (uint32_t)v * 1000003u + e);
}

/* Reserve, write K/V of tokens [len, n) and commit them. */
static void compute(cllm_kv_cache_t *kv, cllm_kv_seq_t s, const cllm_kv_token_t *t, size_t from,
                    size_t n) {
  cllm_kv_loc_t *locs = calloc(n - from, sizeof *locs);
  cr_assert_eq(cllm_kv_seq_reserve(kv, s, n - from, locs), CLLM_OK);
  for (size_t i = from; i < n; i++) {
    for (uint32_t l = 0; l < 2; l++) {
      void *k, *v;
      cr_assert_eq(cllm_kv_block_layer(kv, locs[i - from].block, l, &k, &v), CLLM_OK);
      float *kr = (float *)k + (size_t)locs[i - from].offset * 4;
      float *vr = (float *)v + (size_t)locs[i - from].offset * 4;
      for (uint32_t e = 0; e < 4; e++) {
        kr[e] = kv_val(i, t[i], l, 0, e);
        vr[e] = kv_val(i, t[i], l, 1, e);
      }
    }
  }
  cr_assert_eq(cllm_kv_seq_commit(kv, s, t + from, n - from), CLLM_OK);
  free(locs);
}

/* Every row of the sequence's first n_tok positions holds kv_val. */
static void expect_rows(cllm_kv_cache_t *kv, cllm_kv_seq_t s, const cllm_kv_token_t *t,
                        size_t n_tok) {
  uint32_t tab[256];
  size_t nb = table(kv, s, tab, 256);
  cr_assert_geq(nb * 4, n_tok);
  for (size_t i = 0; i < n_tok; i++) {
    for (uint32_t l = 0; l < 2; l++) {
      void *k, *v;
      cr_assert_eq(cllm_kv_block_layer(kv, tab[i / 4], l, &k, &v), CLLM_OK);
      for (uint32_t e = 0; e < 4; e++) {
        cr_assert_eq(((float *)k)[(i % 4) * 4 + e], kv_val(i, t[i], l, 0, e), "pos %zu", i);
        cr_assert_eq(((float *)v)[(i % 4) * 4 + e], kv_val(i, t[i], l, 1, e), "pos %zu", i);
      }
    }
  }
}

typedef struct pair {
  cllm_monitor_t *m;
  cllm_kv_cache_t *a, *b;
  cllm_kv_tier_t *ta, *tb;
  cllm_kv_fake_t *fake;
  cllm_kv_store_ops_t ops_b;
} pair_t;

static void pair_up(pair_t *p, size_t blocks, bool wt) {
  memset(p, 0, sizeof *p);
  p->m = mk_monitor(0);
  cllm_kv_config_t c = small_cfg(p->m, blocks, 4);
  p->a = mk(&c);
  p->b = mk(&c);
  cllm_kv_store_t st;
  cr_assert_eq(cllm_kv_store_fake_create(&st, &p->fake), CLLM_OK);
  p->ta = mk_tier(p->a, st, wt);
  p->tb = mk_tier(p->b, borrowed(st, &p->ops_b), wt);
}

static void pair_down(pair_t *p) {
  check(p->a);
  check(p->b);
  cllm_kv_tier_destroy(p->tb);
  cllm_kv_tier_destroy(p->ta);
  cllm_kv_cache_destroy(p->a);
  cllm_kv_cache_destroy(p->b);
  cllm_monitor_destroy(p->m);
}

/* A computes the prompt and closes; its blocks reach the store. */
static void a_serves(pair_t *p, const cllm_kv_token_t *t, size_t n, uint64_t salt) {
  cllm_kv_seq_opts_t o = {.salt = salt};
  cllm_kv_seq_t s;
  size_t cached;
  cr_assert_eq(cllm_kv_seq_open_with_prompt(p->a, "a", &o, t, n, &s, &cached), CLLM_OK);
  compute(p->a, s, t, cached, n);
  cr_assert_eq(cllm_kv_seq_close(p->a, s), CLLM_OK);
  cr_assert_eq(cllm_kv_tier_flush(p->ta, 5000), CLLM_OK);
}

static size_t b_fetches(pair_t *p, const cllm_kv_token_t *t, size_t n, uint64_t salt,
                        cllm_kv_seq_t *out) {
  cllm_kv_seq_opts_t o = {.salt = salt};
  size_t cached, avail, ready;
  cr_assert_eq(cllm_kv_seq_open_with_prompt(p->b, "b", &o, t, n, out, &cached), CLLM_OK);
  cr_assert_eq(cached, 0);
  cr_assert_eq(cllm_kv_tier_probe(p->tb, *out, t, n, &avail), CLLM_OK);
  cr_assert_eq(cllm_kv_tier_fetch(p->tb, *out, t, n, avail, &ready), CLLM_OK);
  size_t len;
  cr_assert_eq(cllm_kv_seq_length(p->b, *out, &len), CLLM_OK);
  cr_assert_eq(len, ready);
  return ready;
}

static const cllm_kv_shape_t SHAPE = {2, 1, 4, 4, 4, 0};

/* ---- codec --------------------------------------------------------------------------- */

typedef struct rec_fixture {
  cllm_kv_shape_t shape;
  cllm_kv_block_id_t id;
  cllm_kv_token_t tok[4];
  float payload[64];
  uint8_t rec[1024];
  size_t len;
} rec_fixture_t;

static void rec_make(rec_fixture_t *f) {
  f->shape = SHAPE;
  f->shape.fingerprint = cllm_kv_tier_fingerprint(&f->shape, "m", 1);
  uint64_t ns = cllm_kv_tier_namespace(7, 99);
  cllm_kv_tier_root_digest(f->shape.fingerprint, ns, f->id.parent);
  for (int i = 0; i < 4; i++) f->tok[i] = 100 + i;
  for (int i = 0; i < 64; i++) f->payload[i] = (float)i * 0.5f;
  cllm_kv_tier_chain_digest(f->id.parent, f->tok, 4, f->id.digest);
  f->id.position = 0;
  cr_assert_eq(cllm_kv_tier_record_bytes(&f->shape), 96 + 16 + 256 + 8);
  cr_assert_eq(cllm_kv_tier_encode(&f->shape, &f->id, f->tok, f->payload, 5, f->rec,
                                   sizeof f->rec, &f->len),
               CLLM_OK);
  cr_assert_eq(f->len, 376);
}

static cllm_kv_reject_t rec_verify(const rec_fixture_t *f, const void *rec, size_t len) {
  return cllm_kv_tier_verify(&f->shape, &f->id, f->tok, 5, rec, len, NULL);
}

Test(kv_tier_codec, roundtrip_and_key) {
  rec_fixture_t f;
  rec_make(&f);
  const void *pay = NULL;
  cr_assert_eq(cllm_kv_tier_verify(&f.shape, &f.id, f.tok, 5, f.rec, f.len, &pay),
               CLLM_KV_REJECT_NONE);
  cr_assert_eq(memcmp(pay, f.payload, sizeof f.payload), 0);
  uint32_t magic;
  memcpy(&magic, f.rec, 4);
  cr_assert_eq(magic, CLLM_KV_TIER_MAGIC);
  char key[CLLM_KV_TIER_KEY_MAX];
  cllm_kv_tier_key(0x0123456789abcdefULL, 0xfedcba9876543210ULL, f.id.digest, key);
  cr_assert_eq(strlen(key), 74);
  cr_assert_eq(strncmp(key, "cllm:v1:0123456789abcdef:fedcba9876543210:", 42), 0);
  /* the namespace hides the salt and depends on the secret */
  cr_assert_neq(cllm_kv_tier_namespace(7, 99), cllm_kv_tier_namespace(8, 99));
  cr_assert_neq(cllm_kv_tier_namespace(7, 99), cllm_kv_tier_namespace(7, 98));
  cr_assert_neq(cllm_kv_tier_namespace(7, 0), 7);
  /* the fingerprint covers shape and model id */
  cllm_kv_shape_t s2 = SHAPE;
  s2.head_dim = 8;
  cr_assert_neq(cllm_kv_tier_fingerprint(&s2, "m", 1), f.shape.fingerprint);
  cr_assert_neq(cllm_kv_tier_fingerprint(&SHAPE, "n", 1), f.shape.fingerprint);
  /* chain digests depend on the parent and every token */
  uint8_t d2[16];
  cllm_kv_token_t t2[4] = {100, 101, 102, 104};
  cllm_kv_tier_chain_digest(f.id.parent, t2, 4, d2);
  cr_assert_neq(memcmp(d2, f.id.digest, 16), 0);
  cllm_kv_tier_chain_digest(f.id.digest, f.tok, 4, d2);
  cr_assert_neq(memcmp(d2, f.id.digest, 16), 0);
  /* bad input */
  size_t len;
  cr_assert_eq(cllm_kv_tier_encode(NULL, &f.id, f.tok, f.payload, 0, f.rec, 1024, &len),
               CLLM_EINVAL);
  cr_assert_eq(cllm_kv_tier_encode(&f.shape, &f.id, f.tok, f.payload, 0, f.rec, 375, &len),
               CLLM_ERANGE);
  cllm_kv_shape_t bad = SHAPE;
  bad.dtype_bytes = 3;
  cr_assert_eq(cllm_kv_tier_record_bytes(&bad), 0);
  cr_assert_eq(cllm_kv_tier_record_bytes(NULL), 0);
  cr_assert_eq(cllm_kv_tier_verify(NULL, &f.id, f.tok, 5, f.rec, f.len, NULL),
               CLLM_KV_REJECT_FORMAT);
}

/* Corrupt a copy at `off` (xor) and expect `why`. */
static void poison(const rec_fixture_t *f, size_t off, cllm_kv_reject_t why) {
  uint8_t r[1024];
  memcpy(r, f->rec, f->len);
  r[off] ^= 0x40;
  cr_assert_eq(rec_verify(f, r, f->len), why, "offset %zu", off);
}

Test(kv_tier_codec, every_poisoning_is_rejected) {
  rec_fixture_t f;
  rec_make(&f);
  poison(&f, 0, CLLM_KV_REJECT_FORMAT);    // magic
  poison(&f, 4, CLLM_KV_REJECT_FORMAT);    // version
  poison(&f, 6, CLLM_KV_REJECT_FORMAT);    // header size
  poison(&f, 80, CLLM_KV_REJECT_FORMAT);   // payload bytes
  poison(&f, 8, CLLM_KV_REJECT_FINGERPRINT);   // layers
  poison(&f, 24, CLLM_KV_REJECT_FINGERPRINT);  // block tokens
  poison(&f, 33, CLLM_KV_REJECT_FINGERPRINT);  // fingerprint
  poison(&f, 40, CLLM_KV_REJECT_POSITION);
  poison(&f, 50, CLLM_KV_REJECT_DIGEST);
  poison(&f, 70, CLLM_KV_REJECT_PARENT);
  poison(&f, 96, CLLM_KV_REJECT_TOKENS);
  poison(&f, 111, CLLM_KV_REJECT_TOKENS);
  poison(&f, 112, CLLM_KV_REJECT_CHECKSUM);  // payload
  poison(&f, 300, CLLM_KV_REJECT_CHECKSUM);
  poison(&f, 370, CLLM_KV_REJECT_CHECKSUM);  // the checksum itself
  poison(&f, 28, CLLM_KV_REJECT_CHECKSUM);   // a reserved header byte
  /* length: short, long, empty */
  cr_assert_eq(rec_verify(&f, f.rec, f.len - 1), CLLM_KV_REJECT_FORMAT);
  cr_assert_eq(rec_verify(&f, f.rec, f.len + 1), CLLM_KV_REJECT_FORMAT);
  cr_assert_eq(rec_verify(&f, f.rec, 0), CLLM_KV_REJECT_FORMAT);
  /* what the caller expects differs from a valid record */
  rec_fixture_t g = f;
  g.tok[3]++;
  cr_assert_eq(rec_verify(&g, f.rec, f.len), CLLM_KV_REJECT_TOKENS);
  g = f;
  g.id.position = 1;
  cr_assert_eq(rec_verify(&g, f.rec, f.len), CLLM_KV_REJECT_POSITION);
  g = f;
  g.id.parent[0] ^= 1;
  cr_assert_eq(rec_verify(&g, f.rec, f.len), CLLM_KV_REJECT_PARENT);
  g = f;
  g.shape.fingerprint ^= 1;
  cr_assert_eq(rec_verify(&g, f.rec, f.len), CLLM_KV_REJECT_FINGERPRINT);
  /* another secret: the checksum no longer matches */
  cr_assert_eq(cllm_kv_tier_verify(&f.shape, &f.id, f.tok, 6, f.rec, f.len, NULL),
               CLLM_KV_REJECT_CHECKSUM);
}

/* ---- the fake store -------------------------------------------------------------------- */

Test(kv_tier_fake, operations_and_faults) {
  cllm_kv_store_t st;
  cllm_kv_fake_t *f;
  cr_assert_eq(cllm_kv_store_fake_create(NULL, NULL), CLLM_EINVAL);
  cr_assert_eq(cllm_kv_store_fake_create(&st, &f), CLLM_OK);
  void *c;
  cr_assert_eq(st.ops->connect(st.user, &c), CLLM_OK);
  char buf[16];
  size_t len;
  cr_assert_eq(st.ops->put(st.user, c, "k1", "abc", 3, 0), CLLM_OK);
  cr_assert_eq(st.ops->put(st.user, c, "k1", "xyz", 3, 0), CLLM_OK);  // first writer wins
  cr_assert_eq(st.ops->get(st.user, c, "k1", buf, sizeof buf, &len, 0), CLLM_OK);
  cr_assert_eq(len, 3);
  cr_assert_eq(memcmp(buf, "abc", 3), 0);
  cr_assert_eq(st.ops->get(st.user, c, "k1", buf, 2, &len, 0), CLLM_ERANGE);
  cr_assert_eq(st.ops->get(st.user, c, "k2", buf, 2, &len, 0), CLLM_ENOTFOUND);
  const char *keys[2] = {"k2", "k1"};
  uint8_t pr[2];
  cr_assert_eq(st.ops->exists(st.user, c, keys, 2, pr, 0), CLLM_OK);
  cr_assert(pr[0] == 0 && pr[1] == 1);
  cllm_kv_fake_fail_next(f, 2, CLLM_EIO);
  cr_assert_eq(st.ops->ping(st.user, c, 0), CLLM_EIO);
  cr_assert_eq(st.ops->ping(st.user, c, 0), CLLM_EIO);
  cr_assert_eq(st.ops->ping(st.user, c, 0), CLLM_OK);
  cllm_kv_fake_set_down(f, true);
  cr_assert_eq(st.ops->get(st.user, c, "k1", buf, sizeof buf, &len, 0), CLLM_EIO);
  cllm_kv_fake_set_down(f, false);
  cllm_kv_fake_set_max_bytes(f, 5);
  cr_assert_eq(st.ops->put(st.user, c, "k3", "abc", 3, 0), CLLM_ELIMIT);
  cllm_kv_fake_set_max_bytes(f, 0);
  cr_assert_eq(cllm_kv_fake_set_deny_prefix(f, "k"), CLLM_OK);
  cr_assert_eq(st.ops->put(st.user, c, "k3", "abc", 3, 0), CLLM_ESTATE);
  cr_assert_eq(cllm_kv_fake_set_deny_prefix(f, NULL), CLLM_OK);
  cllm_kv_fake_set_delay(f, 20000);
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  int64_t now = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
  cr_assert_eq(st.ops->ping(st.user, c, now + 1000000), CLLM_EBUSY);  // 1 ms deadline
  cllm_kv_fake_set_delay(f, 0);
  size_t bytes;
  cr_assert_eq(cllm_kv_fake_count(f, &bytes), 1);
  cr_assert_eq(bytes, 3);
  cr_assert_eq(cllm_kv_fake_raw_set(f, "k1", "zz", 2), CLLM_OK);  // raw overwrites
  cr_assert_eq(cllm_kv_fake_raw_get(f, "k1", buf, sizeof buf, &len), CLLM_OK);
  cr_assert_eq(len, 2);
  cr_assert_eq(cllm_kv_fake_key_at(f, 0, buf, sizeof buf), CLLM_OK);
  cr_assert_str_eq(buf, "k1");
  cr_assert_eq(cllm_kv_fake_key_at(f, 1, buf, sizeof buf), CLLM_ENOTFOUND);
  cr_assert_eq(cllm_kv_fake_raw_del(f, "k1"), CLLM_OK);
  cr_assert_eq(cllm_kv_fake_raw_del(f, "k1"), CLLM_ENOTFOUND);
  st.ops->disconnect(st.user, c);
  st.ops->close(st.user);
}

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

/* ---- spilling ------------------------------------------------------------------------------ */

Test(kv_tier, write_back_spills_under_pressure_and_counts_drops) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_kv_config_t c = small_cfg(m, 16, 4);
  cllm_kv_cache_t *kv = mk(&c);
  cllm_kv_store_t st;
  cllm_kv_fake_t *f;
  cr_assert_eq(cllm_kv_store_fake_create(&st, &f), CLLM_OK);
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

/* ---- bad input and faults ------------------------------------------------------------------ */

Test(kv_tier, bad_input) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_kv_config_t c = small_cfg(m, 16, 4);
  cllm_kv_cache_t *kv = mk(&c);
  cllm_kv_store_t st;
  cllm_kv_fake_t *f;
  cr_assert_eq(cllm_kv_store_fake_create(&st, &f), CLLM_OK);
  cllm_kv_tier_config_t tc = cllm_kv_tier_config_default();
  cllm_kv_tier_t *t = (cllm_kv_tier_t *)1;
  cr_assert_eq(cllm_kv_tier_create(kv, &tc, &t), CLLM_EINVAL);  // no store
  cr_assert_null(t);
  tc.store = st;
  cr_assert_eq(cllm_kv_tier_create(NULL, &tc, &t), CLLM_EINVAL);
  cr_assert_eq(cllm_kv_tier_create(kv, NULL, &t), CLLM_EINVAL);
  cr_assert_eq(cllm_kv_tier_create(kv, &tc, NULL), CLLM_EINVAL);
  tc.spill_low_water = 2;
  cr_assert_eq(cllm_kv_tier_create(kv, &tc, &t), CLLM_EINVAL);
  tc.spill_low_water = 0;
  tc.struct_size = 3;
  cr_assert_eq(cllm_kv_tier_create(kv, &tc, &t), CLLM_EINVAL);
  tc.struct_size = sizeof tc;
  cr_assert_eq(cllm_kv_tier_create(kv, &tc, &t), CLLM_OK);
  cllm_kv_tier_t *t2;
  cr_assert_eq(cllm_kv_tier_create(kv, &tc, &t2), CLLM_EEXIST);
  cllm_kv_token_t tok[9];
  seq_tokens(tok, 9, 1);
  size_t n;
  cllm_kv_seq_t s = open_seq(kv, "s");
  cr_assert_eq(cllm_kv_tier_probe(NULL, s, tok, 9, &n), CLLM_EINVAL);
  cr_assert_eq(cllm_kv_tier_probe(t, s, NULL, 9, &n), CLLM_EINVAL);
  cr_assert_eq(cllm_kv_tier_probe(t, s, tok, 0, &n), CLLM_EINVAL);
  cr_assert_eq(cllm_kv_tier_probe(t, s, tok, 9, NULL), CLLM_EINVAL);
  cr_assert_eq(cllm_kv_tier_fetch(t, s, tok, 9, 8, NULL), CLLM_EINVAL);
  cr_assert_eq(cllm_kv_seq_reserve(kv, s, 2, NULL), CLLM_OK);  // reserved, not committed
  cr_assert_eq(cllm_kv_tier_probe(t, s, tok, 9, &n), CLLM_ESTATE);
  cr_assert_eq(cllm_kv_tier_fetch(t, s, tok, 9, 8, &n), CLLM_ESTATE);
  cr_assert_eq(cllm_kv_seq_commit(kv, s, tok, 2), CLLM_OK);  // 2: not a block boundary
  cr_assert_eq(cllm_kv_tier_probe(t, s, tok, 9, &n), CLLM_ESTATE);
  cr_assert_eq(cllm_kv_seq_close(kv, s), CLLM_OK);
  cr_assert_eq(cllm_kv_tier_probe(t, s, tok, 9, &n), CLLM_ENOTFOUND);  // stale handle
  cr_assert_eq(cllm_kv_tier_flush(NULL, 10), CLLM_EINVAL);
  check(kv);
  cllm_kv_tier_destroy(t);
  cllm_kv_tier_destroy(NULL);
  cllm_kv_cache_destroy(kv);
  cllm_monitor_destroy(m);
}

Test(kv_tier, allocation_failures_leave_nothing) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_kv_config_t c = small_cfg(m, 16, 4);
  cllm_kv_cache_t *kv = mk(&c);
  cllm_kv_token_t tok[9];
  seq_tokens(tok, 9, 1);
  int ok_at = 0;
  for (unsigned nth = 1; nth < 20 && ok_at == 0; nth++) {
    cllm_kv_store_t st;
    cr_assert_eq(cllm_kv_store_fake_create(&st, NULL), CLLM_OK);
    cllm_kv_tier_config_t tc = cllm_kv_tier_config_default();
    tc.store = st;
    cllm_kv_tier_t *t = NULL;
    cllm_fault_reset();
    cllm_fault_arm(CLLM_FAULT_MALLOC, nth);
    cllm_status_t rc = cllm_kv_tier_create(kv, &tc, &t);
    cllm_fault_reset();
    if (rc == CLLM_OK) {
      ok_at = (int)nth;
      /* probe's allocation fails too */
      cllm_kv_seq_t s;
      size_t cached, n;
      cr_assert_eq(cllm_kv_seq_open_with_prompt(kv, "s", NULL, tok, 9, &s, &cached), CLLM_OK);
      cllm_fault_arm(CLLM_FAULT_MALLOC, 1);
      cr_assert_eq(cllm_kv_tier_probe(t, s, tok, 9, &n), CLLM_ENOMEM);
      cr_assert_eq(cllm_kv_tier_fetch(t, s, tok, 9, 8, &n), CLLM_OK);  // disarmed after 1
      cllm_fault_reset();
      cr_assert_eq(cllm_kv_seq_close(kv, s), CLLM_OK);
      cllm_kv_tier_destroy(t);
    } else {
      cr_assert_eq(rc, CLLM_ENOMEM);
      cr_assert_null(t);
      st.ops->close(st.user);
    }
  }
  cr_assert_gt(ok_at, 1);
  check(kv);
  cllm_kv_cache_destroy(kv);
  cllm_monitor_destroy(m);
}

/* ---- versioned config, destroy order, fetches in flight, stores without put_batch ---------- */

Test(kv_tier, config_struct_size_rule) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_kv_config_t c = small_cfg(m, 16, 4);
  cllm_kv_cache_t *kv = mk(&c);
  cllm_kv_store_t st;
  cr_assert_eq(cllm_kv_store_fake_create(&st, NULL), CLLM_OK);
  /* an older, smaller struct: the fields it lacks (fetch_threads) keep their defaults,
   * so a garbage byte past its end is never read */
  struct {
    cllm_kv_tier_config_t tc;
    uint8_t tail[16];
  } big;
  memset(&big, 0, sizeof big);
  big.tc = cllm_kv_tier_config_default();
  big.tc.store = st;
  big.tc.fetch_threads = 999;  // beyond the older struct: ignored
  big.tc.struct_size = offsetof(cllm_kv_tier_config_t, fetch_threads);
  cllm_kv_tier_t *t = NULL;
  cr_assert_eq(cllm_kv_tier_create(kv, &big.tc, &t), CLLM_OK);
  cllm_kv_tier_destroy(t);
  /* a newer, larger struct: accepted with a zero tail, refused with a non-zero one */
  cr_assert_eq(cllm_kv_store_fake_create(&st, NULL), CLLM_OK);
  big.tc.store = st;
  big.tc.fetch_threads = 0;
  big.tc.struct_size = sizeof big;
  cr_assert_eq(cllm_kv_tier_create(kv, &big.tc, &t), CLLM_OK);
  cllm_kv_tier_destroy(t);
  cr_assert_eq(cllm_kv_store_fake_create(&st, NULL), CLLM_OK);
  big.tc.store = st;
  big.tail[7] = 1;
  t = (cllm_kv_tier_t *)1;
  cr_assert_eq(cllm_kv_tier_create(kv, &big.tc, &t), CLLM_EINVAL);
  cr_assert_null(t);
  big.tail[7] = 0;
  big.tc.fetch_threads = 17;  // above the maximum
  cr_assert_eq(cllm_kv_tier_create(kv, &big.tc, &t), CLLM_EINVAL);
  big.tc.struct_size = sizeof(size_t) - 1;  // not set
  cr_assert_eq(cllm_kv_tier_create(kv, &big.tc, &t), CLLM_EINVAL);
  st.ops->close(st.user);
  check(kv);
  cllm_kv_cache_destroy(kv);
  cllm_monitor_destroy(m);
}

static int logged_errors;
static void count_errors(void *user, cllm_log_level_t level, const char *msg) {
  (void)user, (void)msg;
  if (level == CLLM_LOG_ERROR) __atomic_fetch_add(&logged_errors, 1, __ATOMIC_RELAXED);
}

Test(kv_tier, cache_destroyed_before_its_tier_is_caught) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_kv_config_t c = small_cfg(m, 64, 4);
  cllm_kv_cache_t *kv = mk(&c);
  cllm_kv_store_t st;
  cllm_kv_fake_t *f;
  cr_assert_eq(cllm_kv_store_fake_create(&st, &f), CLLM_OK);
  cllm_kv_tier_t *t = mk_tier(kv, st, true);
  cllm_kv_token_t tok[21];
  seq_tokens(tok, 21, 5);
  cllm_kv_seq_t s;
  size_t cached, n = 7;
  cr_assert_eq(cllm_kv_seq_open_with_prompt(kv, "s", NULL, tok, 21, &s, &cached), CLLM_OK);
  compute(kv, s, tok, 0, 21);
  cr_assert_eq(cllm_kv_seq_close(kv, s), CLLM_OK);  // the spill thread has work
  logged_errors = 0;
  cllm_set_log_fn(count_errors, NULL);
  cllm_kv_cache_destroy(kv);  // wrong order: logged, the tier stopped and detached
  cllm_set_log_fn(NULL, NULL);
  cr_assert_eq(logged_errors, 1);
  cr_assert_eq(cllm_kv_tier_probe(t, s, tok, 21, &n), CLLM_ESTATE);
  cr_assert_eq(cllm_kv_tier_fetch(t, s, tok, 21, 16, &n), CLLM_ESTATE);
  cr_assert_eq(cllm_kv_tier_flush(t, 10), CLLM_ESTATE);
  size_t before = cllm_kv_fake_count(f, NULL);
  usleep(20000);
  cr_assert_eq(cllm_kv_fake_count(f, NULL), before);  // nothing runs any more
  cllm_kv_tier_destroy(t);  // still valid: closes the store, frees the tier
  cllm_monitor_destroy(m);
}

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
  cllm_monitor_t *m = mk_monitor(0);
  cllm_kv_config_t c = small_cfg(m, 64, 4);
  cllm_kv_cache_t *kv = mk(&c);
  cllm_kv_store_t st;
  cllm_kv_fake_t *f;
  cr_assert_eq(cllm_kv_store_fake_create(&st, &f), CLLM_OK);
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
  check(kv);
  cllm_kv_cache_destroy(kv);
  cllm_monitor_destroy(m);
}

Test(kv_tier, a_store_without_put_batch_spills_one_put_at_a_time) {
  pair_t p;
  memset(&p, 0, sizeof p);
  p.m = mk_monitor(0);
  cllm_kv_config_t c = small_cfg(p.m, 64, 4);
  p.a = mk(&c);
  p.b = mk(&c);
  cllm_kv_store_t st;
  cr_assert_eq(cllm_kv_store_fake_create(&st, &p.fake), CLLM_OK);
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
  cllm_kv_tier_config_t tc = cllm_kv_tier_config_default();
  tc.store = (cllm_kv_store_t){&p->ops_b, p->fake};
  tc.model_id = "test-model";
  tc.model_id_len = 10;
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
  p.m = mk_monitor(0);
  cllm_kv_config_t c = small_cfg(p.m, 64, 4);
  p.a = mk(&c);
  cllm_kv_store_t st;
  cr_assert_eq(cllm_kv_store_fake_create(&st, &p.fake), CLLM_OK);
  p.ops_b = *st.ops;
  p.ops_b.close = noop_close;
  cllm_kv_tier_config_t tc = cllm_kv_tier_config_default();
  tc.store = st;
  tc.model_id = "test-model";
  tc.model_id_len = 10;
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
  cllm_kv_seq_t s;
  size_t cached;
  cr_assert_eq(cllm_kv_seq_open_with_prompt(w.kv, "w", NULL, t, 21, &s, &cached), CLLM_OK);
  compute(w.kv, s, t, 0, 21);
  cr_assert_eq(cllm_kv_seq_close(w.kv, s), CLLM_OK);
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
  cllm_kv_tier_config_t tc = cllm_kv_tier_config_default();
  tc.store = st;
  tc.model_id = "test-model";
  tc.model_id_len = 10;
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
  memset(&p, 0, sizeof p);
  p.m = mk_monitor(0);
  cllm_kv_config_t c = small_cfg(p.m, 8, 4);
  p.a = mk(&c);
  p.b = mk(&c);
  cllm_kv_store_t st;
  cr_assert_eq(cllm_kv_store_fake_create(&st, &p.fake), CLLM_OK);
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
  size_t cached;
  cr_assert_eq(cllm_kv_seq_open_with_prompt(p.a, "u", NULL, u, 21, &s, &cached), CLLM_OK);
  compute(p.a, s, u, 0, 21);
  cr_assert_eq(cllm_kv_seq_close(p.a, s), CLLM_OK);
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
