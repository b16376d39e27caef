/* libFuzzer target: the paged KV cache as an op sequence. Sequences are opened
 * (plain or with prompts that share prefixes), extended, committed, forked,
 * touched and closed; copy-API entries are put, got and evicted; the input picks
 * preemption on or off and whether every block hash collides. A reference model
 * tracks each sequence's length and each copy entry's contents (the eviction
 * callback reports what the cache dropped, so the model stays exact).
 *
 * Data integrity: the K row of each token (layer 0) holds a tag derived from the
 * token ids of the whole prefix up to it, so a prefix hit that hands out blocks of
 * another prompt -- e.g. after a forced hash collision -- or a block shared by two
 * writers shows up as a wrong tag when a sequence is verified (before close).
 * cllm_kv_check() runs after every op.
 *
 * Flag 8 attaches the remote tier (write-through, on the fake store): prompts are
 * then also fetched from the store (probe + fetch), with injected store failures
 * and poisoned records; fetched rows must carry the prompt's tags too. */
#include <stdbool.h>

#include <cllm/kv_cache.h>
#include <cllm/kv_tier.h>

#include "fuzz_input.h"

#define N_IDS 8
#define MAX_LEN 160
#define ROW_BYTES (2 * 16 * 2) /* kv_heads 2 x head_dim 16 x dtype 2 */

typedef struct mseq {
  bool open, preempted;
  cllm_kv_seq_t h;
  size_t len, committed;
  cllm_kv_token_t tok[MAX_LEN];
} mseq_t;

typedef struct mcopy {
  bool present;
  size_t nk, nv;
  float seed;
} mcopy_t;

typedef struct model {
  mseq_t seq[N_IDS];
  mcopy_t copy[N_IDS];
  int preempt_calls, evict_calls;
} model_t;

static const char *ids[N_IDS] = {"a", "b", "c", "d", "e", "f", "g", "h"};
static int id_index(const char *id) {
  for (int i = 0; i < N_IDS; i++)
    if (strcmp(id, ids[i]) == 0) return i;
  return -1;
}

static void on_evict(void *user, const char *id, cllm_kv_evict_reason_t why) {
  model_t *m = user;
  int i = id_index(id);
  FUZZ_CHECK(i >= 0, "callback for unknown id %s", id);
  if (why == CLLM_KV_EVICT_PREEMPTED) {
    FUZZ_CHECK(m->seq[i].open, "preempted a sequence that is not open: %s", id);
    m->seq[i].preempted = true;
    m->preempt_calls++;
  } else {
    FUZZ_CHECK(m->copy[i].present, "evicted a copy entry that is not there: %s", id);
    m->copy[i].present = false;
    m->evict_calls++;
  }
}

static uint64_t collide(void *user, uint64_t prev, uint64_t salt, const cllm_kv_token_t *t, size_t n) {
  (void)user, (void)prev, (void)salt, (void)t, (void)n;
  return 42; /* every block collides: only the token comparison keeps prefixes apart */
}

/* The tag of position `pos`: a hash of the tokens [0, pos]. */
static uint32_t tag_of(const cllm_kv_token_t *tok, size_t pos) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i <= pos; i++) h = (h ^ (uint32_t)tok[i]) * 16777619u;
  return h;
}

static void *row(cllm_kv_cache_t *kv, uint32_t block, uint32_t off) {
  void *k = NULL;
  FUZZ_CHECK(cllm_kv_block_layer(kv, block, 0, &k, NULL) == CLLM_OK, "block_layer");
  return (char *)k + (size_t)off * ROW_BYTES;
}

static void verify(cllm_kv_cache_t *kv, mseq_t *s) {
  uint32_t table[MAX_LEN / 16 + 2];
  size_t nb;
  cllm_status_t rc = cllm_kv_seq_block_table(kv, s->h, table, MAX_LEN / 16 + 2, &nb);
  if (rc == CLLM_EPREEMPTED) { s->preempted = true; return; }
  FUZZ_CHECK(rc == CLLM_OK, "block table %s", cllm_status_name(rc));
  FUZZ_CHECK(nb == (s->len + 15) / 16, "table has %zu blocks for %zu tokens", nb, s->len);
  for (size_t p = 0; p < s->committed; p++) {
    uint32_t got;
    memcpy(&got, row(kv, table[p / 16], (uint32_t)(p % 16)), 4);
    FUZZ_CHECK(got == tag_of(s->tok, p), "pos %zu: tag %08x expected %08x", p, got, tag_of(s->tok, p));
  }
}

/* A prompt family: the first 32+ tokens are shared within a family. */
static size_t make_prompt(fuzz_in_t *in, cllm_kv_token_t *out) {
  int family = fuzz_u8(in) % 3;
  size_t n = 1 + fuzz_u8(in) % 80;
  for (size_t i = 0; i < n; i++) out[i] = i < 40 ? (cllm_kv_token_t)(family * 1000 + (int)i) : (cllm_kv_token_t)fuzz_u8(in);
  return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_in_t in = {data, size};
  cllm_set_log_fn(cllm_log_discard, NULL);
  model_t md;
  memset(&md, 0, sizeof md);
  cllm_monitor_t *mon;
  FUZZ_CHECK(cllm_monitor_create(NULL, &mon) == CLLM_OK, "monitor");
  uint8_t flags = fuzz_u8(&in);
  cllm_kv_config_t cfg = cllm_kv_config_default();
  cfg.layers = 2, cfg.kv_heads = 2, cfg.head_dim = 16, cfg.dtype_bytes = 2, cfg.block_tokens = 16;
  cfg.capacity_blocks = 8 + (flags >> 4);
  cfg.monitor = mon;
  cfg.preemption = flags & 1;
  cfg.populate = flags & 4;
  if (flags & 2) cfg.hash_fn = collide;
  cfg.evict_fn = on_evict;
  cfg.evict_user = &md;
  cllm_kv_cache_t *kv;
  FUZZ_CHECK(cllm_kv_cache_create(&cfg, &kv) == CLLM_OK, "create");
  cllm_kv_tier_t *tier = NULL;
  cllm_kv_fake_t *fake = NULL;
  if (flags & 8) {
    cllm_kv_tier_config_t tc = cllm_kv_tier_config_default();
    FUZZ_CHECK(cllm_kv_store_fake_create(&tc.store, &fake) == CLLM_OK, "fake store");
    tc.write_through = true;
    tc.retry_ms = 1;
    tc.op_timeout_ms = 50;
    FUZZ_CHECK(cllm_kv_tier_create(kv, &tc, &tier) == CLLM_OK, "tier");
  }
  const size_t cap_tokens = cfg.capacity_blocks * 16;
  while (!fuzz_done(&in)) {
    uint8_t op = fuzz_u8(&in) % (tier != NULL ? 13 : 11);
    int i = fuzz_u8(&in) % N_IDS;
    mseq_t *s = &md.seq[i];
    cllm_status_t rc;
    switch (op) {
      case 0: { /* open */
        rc = cllm_kv_seq_open(kv, ids[i], NULL, &s->h);
        if (s->open || md.copy[i].present) { FUZZ_CHECK(rc == CLLM_EEXIST, "dup open %s", cllm_status_name(rc)); break; }
        FUZZ_CHECK(rc == CLLM_OK, "open %s", cllm_status_name(rc));
        s->open = true, s->preempted = false, s->len = s->committed = 0;
        break;
      }
      case 1: { /* open with a prompt: cached prefix must match the model */
        cllm_kv_token_t p[MAX_LEN];
        size_t n = make_prompt(&in, p), cached = 0;
        rc = cllm_kv_seq_open_with_prompt(kv, ids[i], NULL, p, n, &s->h, &cached);
        if (s->open || md.copy[i].present) { FUZZ_CHECK(rc == CLLM_EEXIST, "dup open"); break; }
        FUZZ_CHECK(rc == CLLM_OK, "open_with_prompt %s", cllm_status_name(rc));
        FUZZ_CHECK(cached % 16 == 0 && cached < n + (n == 0), "cached %zu of %zu", cached, n);
        s->open = true, s->preempted = false;
        memcpy(s->tok, p, n * sizeof *p);
        s->len = s->committed = cached;
        verify(kv, s); /* the shared blocks carry this prompt's tags */
        break;
      }
      case 2: case 3: { /* reserve n, write tags, commit */
        size_t n = op == 2 ? 1 : 1 + fuzz_u8(&in) % 40;
        if (!s->open) {
          FUZZ_CHECK(cllm_kv_seq_reserve(kv, s->h, n, NULL) != CLLM_OK, "reserve on a closed handle");
          break;
        }
        cllm_kv_loc_t loc[64];
        if (s->len + n > MAX_LEN) n = MAX_LEN - s->len;
        if (n == 0) break;
        rc = cllm_kv_seq_reserve(kv, s->h, n, loc);
        if (rc == CLLM_EPREEMPTED || s->preempted) {
          FUZZ_CHECK(rc == CLLM_EPREEMPTED, "preempted but %s", cllm_status_name(rc));
          s->preempted = true;
          break;
        }
        if (s->len + n > cap_tokens) { FUZZ_CHECK(rc == CLLM_ERANGE, "over capacity: %s", cllm_status_name(rc)); break; }
        if (rc == CLLM_ENOMEM) break; /* full of active blocks */
        FUZZ_CHECK(rc == CLLM_OK, "reserve %s", cllm_status_name(rc));
        /* Make sure tokens before it are committed (commit order), then write */
        for (size_t k = 0; k < n; k++) {
          size_t pos = s->len + k;
          s->tok[pos] = (cllm_kv_token_t)fuzz_u8(&in);
          uint32_t t = tag_of(s->tok, pos);
          memcpy(row(kv, loc[k].block, loc[k].offset), &t, 4);
        }
        s->len += n;
        if (s->committed + n == s->len) {
          rc = cllm_kv_seq_commit(kv, s->h, s->tok + s->committed, n);
          FUZZ_CHECK(rc == CLLM_OK, "commit %s", cllm_status_name(rc));
          s->committed += n;
        }
        break;
      }
      case 4: /* close (verify first) */
        if (!s->open) {
          FUZZ_CHECK(cllm_kv_seq_close(kv, s->h) != CLLM_OK, "close of a closed handle accepted");
          break;
        }
        if (!s->preempted) verify(kv, s);
        FUZZ_CHECK(cllm_kv_seq_close(kv, s->h) == CLLM_OK, "close");
        s->open = false;
        FUZZ_CHECK(cllm_kv_seq_close(kv, s->h) == CLLM_ENOTFOUND, "second close");
        break;
      case 5: { /* fork into another id */
        int j = fuzz_u8(&in) % N_IDS;
        mseq_t *c = &md.seq[j];
        if (!s->open || c->open || md.copy[j].present || i == j) break;
        cllm_kv_seq_t child;
        rc = cllm_kv_seq_fork(kv, s->h, ids[j], &child);
        if (s->preempted || rc == CLLM_EPREEMPTED) { FUZZ_CHECK(rc == CLLM_EPREEMPTED, "fork of preempted"); s->preempted = true; break; }
        if (rc == CLLM_ENOMEM) break;
        FUZZ_CHECK(rc == CLLM_OK, "fork %s", cllm_status_name(rc));
        *c = *s;
        c->h = child;
        break;
      }
      case 6:
        if (s->open) {
          rc = cllm_kv_seq_touch(kv, s->h);
          FUZZ_CHECK(rc == CLLM_OK || (rc == CLLM_EPREEMPTED && (s->preempted = true)), "touch %s", cllm_status_name(rc));
        }
        break;
      case 7: { /* put */
        size_t nk = fuzz_u8(&in) * 7u, nv = fuzz_u8(&in) * 5u;
        float *k = malloc((nk + 1) * sizeof(float)), *v = malloc((nv + 1) * sizeof(float));
        float seed = (float)fuzz_u8(&in);
        for (size_t x = 0; x < nk; x++) k[x] = seed + (float)x;
        for (size_t x = 0; x < nv; x++) v[x] = seed - (float)x;
        rc = cllm_kv_put(kv, ids[i], k, nk, v, nv);
        free(k), free(v);
        if (s->open) { FUZZ_CHECK(rc == CLLM_EEXIST, "put over a sequence: %s", cllm_status_name(rc)); break; }
        if (rc == CLLM_OK) md.copy[i] = (mcopy_t){true, nk, nv, seed};
        else FUZZ_CHECK(rc == CLLM_ERANGE || rc == CLLM_ENOMEM, "put %s", cllm_status_name(rc));
        break;
      }
      case 8: { /* get: contents must match */
        size_t nk = 0, nv = 0;
        float k[256 * 7], v[256 * 5];
        rc = cllm_kv_get(kv, ids[i], k, 256 * 7, &nk, v, 256 * 5, &nv);
        if (!md.copy[i].present) { FUZZ_CHECK(rc == CLLM_ENOTFOUND, "get of absent: %s", cllm_status_name(rc)); break; }
        FUZZ_CHECK(rc == CLLM_OK, "get %s", cllm_status_name(rc));
        FUZZ_CHECK(nk == md.copy[i].nk && nv == md.copy[i].nv, "sizes");
        for (size_t x = 0; x < nk; x++) FUZZ_CHECK(k[x] == md.copy[i].seed + (float)x, "key %zu", x);
        for (size_t x = 0; x < nv; x++) FUZZ_CHECK(v[x] == md.copy[i].seed - (float)x, "value %zu", x);
        break;
      }
      case 9:
        rc = cllm_kv_evict(kv, ids[i]);
        FUZZ_CHECK(rc == (md.copy[i].present ? CLLM_OK : CLLM_ENOTFOUND), "evict %s", cllm_status_name(rc));
        md.copy[i].present = false;
        break;
      case 11: { /* tier: open with a prompt, then probe and fetch the rest */
        cllm_kv_token_t p[MAX_LEN];
        size_t n = make_prompt(&in, p), cached = 0, avail = 0, ready = 0;
        rc = cllm_kv_seq_open_with_prompt(kv, ids[i], NULL, p, n, &s->h, &cached);
        if (s->open || md.copy[i].present) { FUZZ_CHECK(rc == CLLM_EEXIST, "dup open"); break; }
        FUZZ_CHECK(rc == CLLM_OK, "open_with_prompt %s", cllm_status_name(rc));
        s->open = true, s->preempted = false;
        memcpy(s->tok, p, n * sizeof *p);
        s->len = s->committed = cached;
        FUZZ_CHECK(cllm_kv_tier_probe(tier, s->h, p, n, &avail) == CLLM_OK, "probe");
        FUZZ_CHECK(avail % 16 == 0 && cached + avail <= (n - 1) / 16 * 16, "avail %zu", avail);
        rc = cllm_kv_tier_fetch(tier, s->h, p, n, fuzz_u8(&in) % 2 ? avail : MAX_LEN, &ready);
        FUZZ_CHECK(rc == CLLM_OK || rc == CLLM_ENOMEM || rc == CLLM_ERANGE, "fetch %s", cllm_status_name(rc));
        FUZZ_CHECK(ready % 16 == 0 && cached + ready <= (n - 1) / 16 * 16, "ready %zu", ready);
        s->len = s->committed = cached + ready;
        verify(kv, s); /* fetched blocks carry this prompt's tags */
        break;
      }
      case 12: { /* tier: store faults and poisoned records */
        uint8_t what = fuzz_u8(&in);
        if (what % 4 == 0) cllm_kv_fake_fail_next(fake, 1 + what / 64, CLLM_EIO);
        else if (what % 4 == 1) cllm_kv_fake_fail_next(fake, 1, CLLM_EBUSY);
        else if (what % 4 == 2) cllm_kv_fake_set_max_bytes(fake, what < 128 ? 0 : (size_t)what * 1024);
        else {
          char key[CLLM_KV_TIER_KEY_MAX];
          static uint8_t rec[64 * 1024];
          size_t len, nk = cllm_kv_fake_count(fake, NULL);
          if (nk > 0 && cllm_kv_fake_key_at(fake, fuzz_u8(&in) % nk, key, sizeof key) == CLLM_OK &&
              cllm_kv_fake_raw_get(fake, key, rec, sizeof rec, &len) == CLLM_OK && len > 0) {
            rec[fuzz_u32(&in) % len] ^= (uint8_t)(1 + what);
            FUZZ_CHECK(cllm_kv_fake_raw_set(fake, key, rec, len) == CLLM_OK, "poison");
          }
        }
        break;
      }
      case 10: { /* length agrees */
        if (!s->open) break;
        size_t len;
        rc = cllm_kv_seq_length(kv, s->h, &len);
        if (rc == CLLM_EPREEMPTED) { s->preempted = true; break; }
        FUZZ_CHECK(rc == CLLM_OK && len == s->len, "length %zu vs %zu", len, s->len);
        break;
      }
    }
    FUZZ_CHECK(cllm_kv_check(kv) == CLLM_OK, "check after op %d", op);
    cllm_kv_stats_t st = {.struct_size = sizeof st};
    FUZZ_CHECK(cllm_kv_stats(kv, &st) == CLLM_OK, "stats");
    FUZZ_CHECK(st.charged_bytes == cllm_monitor_used(mon, CLLM_CAT_KV), "monitor %zu vs kv %zu",
               cllm_monitor_used(mon, CLLM_CAT_KV), st.charged_bytes);
    FUZZ_CHECK(st.resident_bytes <= st.charged_bytes && st.kv_bytes <= st.charged_bytes,
               "resident %zu, in use %zu, charged %zu", st.resident_bytes, st.kv_bytes,
               st.charged_bytes);
    FUZZ_CHECK(!cfg.preemption ? md.preempt_calls == 0 : true, "preempted with preemption off");
  }
  for (int i = 0; i < N_IDS; i++)
    if (md.seq[i].open) {
      if (!md.seq[i].preempted) verify(kv, &md.seq[i]);
      FUZZ_CHECK(cllm_kv_seq_close(kv, md.seq[i].h) == CLLM_OK, "final close");
    }
  cllm_kv_tier_destroy(tier);
  cllm_kv_cache_destroy(kv);
  FUZZ_CHECK(cllm_monitor_used(mon, CLLM_CAT_COUNT) == 0, "monitor not balanced");
  cllm_monitor_destroy(mon);
  return 0;
}
