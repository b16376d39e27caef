/* Criterion suite for the KV tier's record codec and its fake store (lib/kv_tier*.c),
 * no cache involved: the record round trip and key, every poisoning case, the fake
 * store's operations and injected faults. The cache-level suites are kv_tier_test.c
 * (sharing), kv_tier_store_test.c (the store's behaviour) and kv_tier_api_test.c. */
#include <criterion/criterion.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cllm/kv_cache.h>
#include <cllm/kv_tier.h>
#include <cllm/monitor.h>

#include "support/kv_tier_fixture.h"

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
