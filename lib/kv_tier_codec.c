/* The remote tier's record codec: BLAKE2b (digests, fingerprints, namespaces),
 * the 64-bit record checksum, keys, encode and verify. Pure functions, no state.
 *
 * Record layout (little-endian; offsets in bytes):
 *   0 magic u32 | 4 version u16 | 6 header bytes u16 | 8 layers | 12 kv_heads |
 *   16 head_dim | 20 dtype_bytes | 24 block_tokens (u32 each) | 28 flags u32 |
 *   32 fingerprint u64 | 40 position u64 | 48 digest[16] | 64 parent[16] |
 *   80 payload bytes u64 | 88 zero u64 | 96 token ids (i32 x block_tokens) |
 *   payload | checksum u64 over every byte before it.
 * flags: 0, or KV_TIER_FLAG_MAC: the last u64 is then a BLAKE2b-64 keyed with the
 * deployment's MAC key (a MAC, not a checksum) over every byte before it.
 */
#include <stdbool.h>
#include <string.h>

#include <cllm/kv_tier.h>

#include "kv_tier_internal.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "records are little-endian");

/* ---- BLAKE2b (RFC 7693) ---------------------------------------------------------- */

typedef struct b2b {
  uint64_t h[8], t[2];
  uint8_t buf[128];
  size_t n, outlen;
} b2b_t;

static const uint64_t b2b_iv[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
    0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL};

static const uint8_t b2b_sigma[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3}};

static inline uint64_t rotr64(uint64_t x, unsigned r) { return (x >> r) | (x << (64 - r)); }
static inline uint64_t rotl64(uint64_t x, unsigned r) { return (x << r) | (x >> (64 - r)); }

static void b2b_compress(b2b_t *c, int last) {
  uint64_t v[16], m[16];
  memcpy(m, c->buf, sizeof m);
  for (int i = 0; i < 8; i++) v[i] = c->h[i], v[i + 8] = b2b_iv[i];
  v[12] ^= c->t[0];
  v[13] ^= c->t[1];
  if (last) v[14] = ~v[14];
#define B2B_G(a, b, c_, d, x, y)          \
  do {                                    \
    v[a] = v[a] + v[b] + (x);             \
    v[d] = rotr64(v[d] ^ v[a], 32);       \
    v[c_] = v[c_] + v[d];                 \
    v[b] = rotr64(v[b] ^ v[c_], 24);      \
    v[a] = v[a] + v[b] + (y);             \
    v[d] = rotr64(v[d] ^ v[a], 16);       \
    v[c_] = v[c_] + v[d];                 \
    v[b] = rotr64(v[b] ^ v[c_], 63);      \
  } while (0)
  for (int r = 0; r < 12; r++) {
    const uint8_t *s = b2b_sigma[r];
    B2B_G(0, 4, 8, 12, m[s[0]], m[s[1]]);
    B2B_G(1, 5, 9, 13, m[s[2]], m[s[3]]);
    B2B_G(2, 6, 10, 14, m[s[4]], m[s[5]]);
    B2B_G(3, 7, 11, 15, m[s[6]], m[s[7]]);
    B2B_G(0, 5, 10, 15, m[s[8]], m[s[9]]);
    B2B_G(1, 6, 11, 12, m[s[10]], m[s[11]]);
    B2B_G(2, 7, 8, 13, m[s[12]], m[s[13]]);
    B2B_G(3, 4, 9, 14, m[s[14]], m[s[15]]);
  }
#undef B2B_G
  for (int i = 0; i < 8; i++) c->h[i] ^= v[i] ^ v[i + 8];
}

static void b2b_update(b2b_t *c, const void *in, size_t n) {
  const uint8_t *p = in;
  while (n > 0) {
    if (c->n == 128) {  // a full buffer is compressed only once more input follows
      c->t[0] += 128;
      if (c->t[0] < 128) c->t[1]++;
      b2b_compress(c, 0);
      c->n = 0;
    }
    size_t take = 128 - c->n;
    if (take > n) take = n;
    memcpy(c->buf + c->n, p, take);
    c->n += take;
    p += take;
    n -= take;
  }
}

static void b2b_init(b2b_t *c, size_t outlen, const void *key, size_t keylen) {
  memset(c, 0, sizeof *c);
  for (int i = 0; i < 8; i++) c->h[i] = b2b_iv[i];
  c->h[0] ^= 0x01010000ULL ^ (keylen << 8) ^ outlen;
  c->outlen = outlen;
  if (keylen > 0) {
    uint8_t block[128] = {0};
    memcpy(block, key, keylen);
    b2b_update(c, block, 128);
  }
}

static void b2b_final(b2b_t *c, void *out) {
  c->t[0] += c->n;
  if (c->t[0] < c->n) c->t[1]++;
  memset(c->buf + c->n, 0, 128 - c->n);
  b2b_compress(c, 1);
  memcpy(out, c->h, c->outlen);
}

/* ---- checksum: four xxh64-style lanes over 32-byte stripes ------------------------ */

#define P1 0x9E3779B185EBCA87ULL
#define P2 0xC2B2AE3D27D4EB4FULL
#define P3 0x165667B19E3779F9ULL

static inline uint64_t ck_round(uint64_t acc, uint64_t w) {
  return rotl64(acc + w * P2, 31) * P1;
}

static uint64_t checksum(const void *data, size_t n, uint64_t seed) {
  const uint8_t *p = data;
  uint64_t a[4] = {seed + P1 + P2, seed + P2, seed, seed - P1};
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    uint64_t w[4];
    memcpy(w, p + i, 32);
    for (int l = 0; l < 4; l++) a[l] = ck_round(a[l], w[l]);
  }
  uint64_t h = rotl64(a[0], 1) + rotl64(a[1], 7) + rotl64(a[2], 12) + rotl64(a[3], 18);
  for (int l = 0; l < 4; l++) h = (h ^ ck_round(0, a[l])) * P1 + P3;
  h += n;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    memcpy(&w, p + i, 8);
    h = rotl64(h ^ ck_round(0, w), 27) * P1 + P3;
  }
  for (; i < n; i++) h = rotl64(h ^ (p[i] * P3), 11) * P1;
  h ^= h >> 33;
  h *= P2;
  h ^= h >> 29;
  h *= P3;
  return h ^ (h >> 32);
}

/* ---- identities --------------------------------------------------------------- */

uint64_t cllm_kv_tier_fingerprint(const cllm_kv_shape_t *shape, const void *model_id,
                                  size_t model_id_len) {
  if (shape == NULL) return 0;
  uint32_t f[5] = {shape->layers, shape->kv_heads, shape->head_dim, shape->dtype_bytes,
                   shape->block_tokens};
  b2b_t c;
  uint64_t out = 0;
  b2b_init(&c, 8, NULL, 0);
  b2b_update(&c, "cllm-kv-model", 13);
  b2b_update(&c, f, sizeof f);
  uint64_t idl = model_id == NULL ? 0 : model_id_len;
  b2b_update(&c, &idl, sizeof idl);
  if (idl > 0) b2b_update(&c, model_id, model_id_len);
  b2b_final(&c, &out);
  return out;
}

uint64_t cllm_kv_tier_namespace(uint64_t salt, uint64_t secret) {
  b2b_t c;
  uint64_t out = 0;
  b2b_init(&c, 8, &secret, sizeof secret);
  b2b_update(&c, "cllm-kv-ns", 10);
  b2b_update(&c, &salt, sizeof salt);
  b2b_final(&c, &out);
  return out;
}

void cllm_kv_tier_root_digest(uint64_t fingerprint, uint64_t ns, uint8_t out[16]) {
  b2b_t c;
  b2b_init(&c, 16, NULL, 0);
  b2b_update(&c, "cllm-kv-root", 12);
  b2b_update(&c, &fingerprint, 8);
  b2b_update(&c, &ns, 8);
  b2b_final(&c, out);
}

void cllm_kv_tier_chain_digest(const uint8_t parent[16], const cllm_kv_token_t *tokens, size_t n,
                               uint8_t out[16]) {
  b2b_t c;
  b2b_init(&c, 16, NULL, 0);
  b2b_update(&c, parent, 16);
  if (n > 0) b2b_update(&c, tokens, n * sizeof *tokens);
  b2b_final(&c, out);
}

static void hex(char *dst, const uint8_t *src, size_t n) {
  static const char d[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    dst[2 * i] = d[src[i] >> 4];
    dst[2 * i + 1] = d[src[i] & 15];
  }
}

static void hex64(char *dst, uint64_t v) {
  uint8_t b[8];
  for (int i = 0; i < 8; i++) b[i] = (uint8_t)(v >> (56 - 8 * i));
  hex(dst, b, 8);
}

void cllm_kv_tier_key(uint64_t fingerprint, uint64_t ns, const uint8_t digest[16], char *buf) {
  memcpy(buf, "cllm:v1:", 8);
  hex64(buf + 8, fingerprint);
  buf[24] = ':';
  hex64(buf + 25, ns);
  buf[41] = ':';
  hex(buf + 42, digest, 16);
  buf[74] = '\0';
}

/* ---- records --------------------------------------------------------------------- */

static bool shape_ok(const cllm_kv_shape_t *s) {
  return s != NULL && s->layers > 0 && s->kv_heads > 0 && s->head_dim > 0 &&
         (s->dtype_bytes == 1 || s->dtype_bytes == 2 || s->dtype_bytes == 4) &&
         s->block_tokens > 0;
}

static size_t payload_bytes(const cllm_kv_shape_t *s) {
  __uint128_t b = (__uint128_t)2 * s->layers * s->block_tokens * s->kv_heads * s->head_dim *
                  s->dtype_bytes;
  return b > (SIZE_MAX >> 2) ? 0 : (size_t)b;
}

size_t cllm_kv_tier_record_bytes(const cllm_kv_shape_t *shape) {
  if (!shape_ok(shape)) return 0;
  size_t p = payload_bytes(shape);
  if (p == 0) return 0;
  return CLLM_KV_TIER_HEADER_BYTES + (size_t)shape->block_tokens * sizeof(cllm_kv_token_t) + p + 8;
}

static inline void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static inline uint32_t get32(const uint8_t *p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}
static inline uint64_t get64(const uint8_t *p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
}

void kv__tier_encode_head(const cllm_kv_shape_t *shape, const cllm_kv_block_id_t *id,
                          const cllm_kv_token_t *tokens, void *out) {
  uint8_t *p = out;
  memset(p, 0, CLLM_KV_TIER_HEADER_BYTES);
  put32(p + 0, CLLM_KV_TIER_MAGIC);
  uint16_t ver = CLLM_KV_TIER_VERSION, hb = CLLM_KV_TIER_HEADER_BYTES;
  memcpy(p + 4, &ver, 2);
  memcpy(p + 6, &hb, 2);
  put32(p + 8, shape->layers);
  put32(p + 12, shape->kv_heads);
  put32(p + 16, shape->head_dim);
  put32(p + 20, shape->dtype_bytes);
  put32(p + 24, shape->block_tokens);
  put64(p + 32, shape->fingerprint);
  put64(p + 40, id->position);
  memcpy(p + 48, id->digest, 16);
  memcpy(p + 64, id->parent, 16);
  put64(p + 80, payload_bytes(shape));
  memcpy(p + CLLM_KV_TIER_HEADER_BYTES, tokens,
         (size_t)shape->block_tokens * sizeof(cllm_kv_token_t));
}

static uint64_t mac_tag(const void *p, size_t n, const kv_tier_mac_t *mac) {
  b2b_t c;
  uint64_t out = 0;
  b2b_init(&c, 8, mac->key, mac->len);
  b2b_update(&c, p, n);
  b2b_final(&c, &out);
  return out;
}

void kv__tier_seal(void *rec, size_t total, uint64_t secret, const kv_tier_mac_t *mac) {
  uint8_t *p = rec;
  bool keyed = mac != NULL && mac->len > 0;
  put32(p + 28, keyed ? KV_TIER_FLAG_MAC : 0);
  put64(p + total - 8, keyed ? mac_tag(p, total - 8, mac) : checksum(p, total - 8, secret));
}

cllm_status_t cllm_kv_tier_encode(const cllm_kv_shape_t *shape, const cllm_kv_block_id_t *id,
                                  const cllm_kv_token_t *tokens, const void *payload,
                                  uint64_t secret, void *out, size_t cap, size_t *len) {
  if (!shape_ok(shape) || id == NULL || tokens == NULL || payload == NULL || out == NULL ||
      len == NULL)
    return CLLM_EINVAL;
  size_t total = cllm_kv_tier_record_bytes(shape);
  if (total == 0) return CLLM_EINVAL;
  if (cap < total) return CLLM_ERANGE;
  kv__tier_encode_head(shape, id, tokens, out);
  memcpy((uint8_t *)out + CLLM_KV_TIER_HEADER_BYTES +
             (size_t)shape->block_tokens * sizeof(cllm_kv_token_t),
         payload, payload_bytes(shape));
  kv__tier_seal(out, total, secret, NULL);
  *len = total;
  return CLLM_OK;
}

cllm_kv_reject_t cllm_kv_tier_verify(const cllm_kv_shape_t *shape, const cllm_kv_block_id_t *id,
                                     const cllm_kv_token_t *tokens, uint64_t secret,
                                     const void *rec, size_t len, const void **payload) {
  return kv__tier_verify(shape, id, tokens, secret, NULL, rec, len, payload);
}

cllm_kv_reject_t kv__tier_verify(const cllm_kv_shape_t *shape, const cllm_kv_block_id_t *id,
                                 const cllm_kv_token_t *tokens, uint64_t secret,
                                 const kv_tier_mac_t *mac, const void *rec, size_t len,
                                 const void **payload) {
  if (!shape_ok(shape) || id == NULL || tokens == NULL || rec == NULL) return CLLM_KV_REJECT_FORMAT;
  size_t total = cllm_kv_tier_record_bytes(shape);
  const uint8_t *p = rec;
  uint16_t ver, hb;
  if (total == 0 || len != total) return CLLM_KV_REJECT_FORMAT;
  memcpy(&ver, p + 4, 2);
  memcpy(&hb, p + 6, 2);
  if (get32(p) != CLLM_KV_TIER_MAGIC || ver != CLLM_KV_TIER_VERSION ||
      hb != CLLM_KV_TIER_HEADER_BYTES || get64(p + 80) != payload_bytes(shape))
    return CLLM_KV_REJECT_FORMAT;
  if (get32(p + 8) != shape->layers || get32(p + 12) != shape->kv_heads ||
      get32(p + 16) != shape->head_dim || get32(p + 20) != shape->dtype_bytes ||
      get32(p + 24) != shape->block_tokens || get64(p + 32) != shape->fingerprint)
    return CLLM_KV_REJECT_FINGERPRINT;
  if (get64(p + 40) != id->position) return CLLM_KV_REJECT_POSITION;
  if (memcmp(p + 48, id->digest, 16) != 0) return CLLM_KV_REJECT_DIGEST;
  if (memcmp(p + 64, id->parent, 16) != 0) return CLLM_KV_REJECT_PARENT;
  size_t tb = (size_t)shape->block_tokens * sizeof(cllm_kv_token_t);
  if (memcmp(p + CLLM_KV_TIER_HEADER_BYTES, tokens, tb) != 0) return CLLM_KV_REJECT_TOKENS;
  bool keyed = mac != NULL && mac->len > 0, tagged = (get32(p + 28) & KV_TIER_FLAG_MAC) != 0;
  if (keyed != tagged) return CLLM_KV_REJECT_MAC;  // MAC expected but absent, or unverifiable
  if (keyed && get64(p + total - 8) != mac_tag(p, total - 8, mac)) return CLLM_KV_REJECT_MAC;
  if (!keyed && get64(p + total - 8) != checksum(p, total - 8, secret))
    return CLLM_KV_REJECT_CHECKSUM;
  if (payload != NULL) *payload = p + CLLM_KV_TIER_HEADER_BYTES + tb;
  return CLLM_KV_REJECT_NONE;
}
