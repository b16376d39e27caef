/* stepsim: model presets and shapes, request-length distributions, the PRNG.
 *
 * Presets carry the public shapes of real models (layers, hidden size, attention
 * heads, KV heads, head dim, MLP intermediate size, vocabulary); dtype is 2 bytes
 * (bf16/fp16). Parameter counts follow the Llama architecture: embeddings, per
 * layer a fused QKV and an output projection plus a gated MLP (gate, up, down),
 * and an untied LM head (tied for the 1B model, as it ships).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stepsim.h"

/* ---- presets ---------------------------------------------------------------------- */

typedef struct preset {
  ss_model_t m;
  bool tied; /* LM head shares the embedding matrix */
} preset_t;

static const preset_t presets[] = {
    /* name, layers, hidden, heads, kv_heads, head_dim, intermediate, dtype, vocab */
    {{"small", 4, 1024, 16, 2, 64, 2816, 2, 8000}, false},
    {{"tiny", 2, 128, 4, 2, 32, 256, 2, 1024}, false},
    {{"llama-3.2-1b", 16, 2048, 32, 8, 64, 8192, 2, 128256}, true},
    {{"llama-3.1-8b", 32, 4096, 32, 8, 128, 14336, 2, 128256}, false},
    {{"qwen2.5-7b", 28, 3584, 28, 4, 128, 18944, 2, 152064}, false},
};

#define NPRESETS (sizeof presets / sizeof presets[0])

bool ss_model_preset(const char *name, ss_model_t *m) {
  for (size_t i = 0; i < NPRESETS; i++) {
    if (strcasecmp(name, presets[i].m.name) == 0) {
      *m = presets[i].m;
      return true;
    }
  }
  return false;
}

const char *ss_model_preset_list(void) {
  return "small (default), tiny, llama-3.2-1b, llama-3.1-8b, qwen2.5-7b";
}

static bool preset_tied(const ss_model_t *m) {
  for (size_t i = 0; i < NPRESETS; i++)
    if (strcmp(m->name, presets[i].m.name) == 0) return presets[i].tied;
  return false;
}

size_t ss_model_qkv_dim(const ss_model_t *m) {
  return (size_t)(m->heads + 2 * m->kv_heads) * (size_t)m->head_dim;
}

uint64_t ss_model_params(const ss_model_t *m) {
  uint64_t h = (uint64_t)m->hidden;
  uint64_t attn = h * ss_model_qkv_dim(m) + (uint64_t)m->heads * m->head_dim * h;
  uint64_t mlp = 3 * h * (uint64_t)m->intermediate;
  uint64_t norms = 2 * h;
  uint64_t emb = (uint64_t)m->vocab * h;
  return (uint64_t)m->layers * (attn + mlp + norms) + emb * (preset_tied(m) ? 1 : 2) + h;
}

size_t ss_model_kv_token_bytes(const ss_model_t *m) {
  return 2 * (size_t)m->layers * (size_t)m->kv_heads * (size_t)m->head_dim *
         (size_t)m->dtype_bytes;
}

/* ---- the PRNG (xoroshiro128+, seeded with splitmix64) --------------------------------- */

uint64_t ss_mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

void ss_rng_seed(ss_rng_t *r, uint64_t seed) {
  r->s[0] = ss_mix64(seed);
  r->s[1] = ss_mix64(seed ^ 0x5851f42d4c957f2dull);
  if (r->s[0] == 0 && r->s[1] == 0) r->s[1] = 1;
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t ss_rng_next(ss_rng_t *r) {
  uint64_t s0 = r->s[0], s1 = r->s[1], out = s0 + s1;
  s1 ^= s0;
  r->s[0] = rotl(s0, 24) ^ s1 ^ (s1 << 16);
  r->s[1] = rotl(s1, 37);
  return out;
}

double ss_rng_uniform(ss_rng_t *r) { return (double)(ss_rng_next(r) >> 11) * 0x1.0p-53; }

static double rng_normal(ss_rng_t *r) {
  double u1 = ss_rng_uniform(r), u2 = ss_rng_uniform(r);
  if (u1 < 1e-300) u1 = 1e-300;
  return sqrt(-2.0 * log(u1)) * cos(2.0 * 3.14159265358979323846 * u2);
}

/* ---- distributions ---------------------------------------------------------------------- */

static int count_fields(const char *s) {
  int n = 1;
  for (; *s; s++) n += *s == ':';
  return n;
}

static bool parse_num(const char *s, double *out) {
  char *end;
  double v = strtod(s, &end);
  if (end == s || (*end != '\0' && *end != ':') || !isfinite(v)) return false;
  *out = v;
  return true;
}

bool ss_dist_parse(const char *s, ss_dist_t *d, char *err, size_t errlen) {
  memset(d, 0, sizeof *d);
  snprintf(d->text, sizeof d->text, "%s", s);
  const char *c = strchr(s, ':');
  if (c == NULL) {
    snprintf(err, errlen, "'%s': expected fixed:N, uniform:MIN:MAX or lognormal:MEDIAN:SIGMA[:MIN:MAX]", s);
    return false;
  }
  size_t kl = (size_t)(c - s);
  int nf = count_fields(s);
  double v[5] = {0};
  const char *p = c + 1;
  for (int i = 0; i < nf - 1; i++) {
    if (!parse_num(p, &v[i])) {
      snprintf(err, errlen, "'%s': field %d is not a number", s, i + 2);
      return false;
    }
    const char *n = strchr(p, ':');
    p = n ? n + 1 : p + strlen(p);
  }
  if (kl == 5 && strncmp(s, "fixed", 5) == 0 && nf == 2) {
    d->kind = SS_DIST_FIXED;
    d->a = v[0];
    d->min = d->max = (int)v[0];
  } else if (kl == 7 && strncmp(s, "uniform", 7) == 0 && nf == 3) {
    d->kind = SS_DIST_UNIFORM;
    d->a = v[0];
    d->b = v[1];
    d->min = (int)v[0];
    d->max = (int)v[1];
  } else if (kl == 9 && strncmp(s, "lognormal", 9) == 0 && (nf == 3 || nf == 5)) {
    d->kind = SS_DIST_LOGNORMAL;
    d->a = v[0];
    d->b = v[1];
    d->min = nf == 5 ? (int)v[2] : 1;
    d->max = nf == 5 ? (int)v[3] : (int)(v[0] * 8);
    if (d->a <= 0 || d->b < 0) {
      snprintf(err, errlen, "'%s': median must be > 0 and sigma >= 0", s);
      return false;
    }
  } else {
    snprintf(err, errlen, "'%s': expected fixed:N, uniform:MIN:MAX or lognormal:MEDIAN:SIGMA[:MIN:MAX]", s);
    return false;
  }
  if (d->min < 1 || d->max < d->min || d->max > (1 << 20)) {
    snprintf(err, errlen, "'%s': lengths must satisfy 1 <= min <= max <= 1048576", s);
    return false;
  }
  return true;
}

int ss_dist_sample(const ss_dist_t *d, ss_rng_t *r) {
  double x;
  switch (d->kind) {
    case SS_DIST_FIXED: x = d->a; break;
    case SS_DIST_UNIFORM: x = d->a + ss_rng_uniform(r) * (d->b - d->a + 1); break;
    default: x = d->a * exp(d->b * rng_normal(r)); break;
  }
  if (x < d->min) x = d->min;
  if (x > d->max) x = d->max;
  return (int)x;
}
