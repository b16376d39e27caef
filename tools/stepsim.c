/* stepsim: drives cllm-mem with a CPU serving workload and prints a report.
 *
 * This first version exercises the global monitor the way a runtime does: worker
 * threads run forward passes (steps); each step charges its temp buffers to STEP,
 * requests grow their KV (charged per 16-token block to KV) under a global limit,
 * a reclaimer gives back cached KV when a step would not fit, and the report shows
 * peak memory per category, refusals and reclaims.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cllm/monitor.h>
#include <cllm/version.h>

typedef struct sim {
  cllm_monitor_t *mon;
  int threads, steps, layers;
  size_t hidden, block_bytes;
  _Atomic size_t cached_kv;  /* KV bytes of finished requests kept for reuse */
  _Atomic long tokens, refused_steps;
} sim_t;

/* The reclaimer: drop cached KV of finished requests. */
static size_t drop_cached(void *user, cllm_category_t cat, size_t needed) {
  (void)cat;
  sim_t *s = user;
  size_t have = atomic_load(&s->cached_kv), take;
  do {
    take = have < needed ? have : needed;
    take -= take % s->block_bytes;
    if (take < needed && take + s->block_bytes <= have) take += s->block_bytes;
  } while (take > 0 && !atomic_compare_exchange_weak(&s->cached_kv, &have, have - take));
  if (take > 0 && cllm_monitor_release(s->mon, CLLM_CAT_KV, take) != CLLM_OK) return 0;
  return take;
}

static void *worker(void *arg) {
  sim_t *s = arg;
  unsigned seed = (unsigned)(uintptr_t)&seed;
  size_t kv_held = 0;
  int req_tokens = 0, req_len = 64 + (int)(rand_r(&seed) % 512);
  for (int step = 0; step < s->steps; step++) {
    /* Temp buffers of one forward pass: QKV, scores, MLP, per layer. */
    size_t temp = (size_t)s->layers * s->hidden * sizeof(float) * 12;
    if (cllm_monitor_reserve(s->mon, CLLM_CAT_STEP, temp) != CLLM_OK) {
      atomic_fetch_add(&s->refused_steps, 1);
      continue;
    }
    float *buf = malloc(temp);
    if (buf != NULL) {
      for (size_t i = 0; i < temp / sizeof(float); i += 16) buf[i] = (float)i;
      free(buf);
    }
    /* One decode token: a new KV block every 16 tokens. */
    if (req_tokens % 16 == 0) {
      if (cllm_monitor_reserve(s->mon, CLLM_CAT_KV, s->block_bytes) == CLLM_OK)
        kv_held += s->block_bytes;
    }
    req_tokens++;
    atomic_fetch_add(&s->tokens, 1);
    (void)cllm_monitor_release(s->mon, CLLM_CAT_STEP, temp);
    if (req_tokens == req_len) { /* request done: its KV stays cached for reuse */
      atomic_fetch_add(&s->cached_kv, kv_held);
      kv_held = 0;
      req_tokens = 0;
      req_len = 64 + (int)(rand_r(&seed) % 512);
    }
  }
  (void)cllm_monitor_release(s->mon, CLLM_CAT_KV, kv_held);
  return NULL;
}

static void mib(const char *what, size_t used, size_t peak) {
  printf("  %-8s used %9.2f MiB   peak %9.2f MiB\n", what, (double)used / 1048576.0,
         (double)peak / 1048576.0);
}

int main(int argc, char **argv) {
  sim_t s = {.threads = 2, .steps = 4000, .layers = 16, .hidden = 2048};
  size_t limit = (size_t)64 << 20;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) s.threads = atoi(argv[++i]);
    else if (strcmp(argv[i], "--steps") == 0 && i + 1 < argc) s.steps = atoi(argv[++i]);
    else if (strcmp(argv[i], "--mem-limit-mib") == 0 && i + 1 < argc) limit = (size_t)atol(argv[++i]) << 20;
    else if (strcmp(argv[i], "--help") == 0) {
      printf("usage: stepsim [--threads N] [--steps N] [--mem-limit-mib N]\n");
      return 0;
    } else {
      fprintf(stderr, "stepsim: unknown option '%s' (try --help)\n", argv[i]);
      return 2;
    }
  }
  if (s.threads < 1 || s.threads > 64 || s.steps < 1) {
    fprintf(stderr, "stepsim: --threads must be 1..64 and --steps positive\n");
    return 2;
  }
  s.block_bytes = (size_t)16 * 2 * s.layers * 8 * 128 * 2; /* 16 tokens, K+V, 8 kv heads x 128, fp16 */
  s.mon = cllm_monitor_global();
  if (cllm_monitor_set_limit(s.mon, limit) != CLLM_OK ||
      cllm_monitor_add_reclaimer(s.mon, drop_cached, &s) != CLLM_OK)
    return 1;
  printf("cllm-mem %s stepsim: %d threads x %d steps, %d layers, limit %zu MiB\n",
         cllm_version_string(), s.threads, s.steps, s.layers, limit >> 20);
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  pthread_t t[64];
  for (int i = 0; i < s.threads; i++) pthread_create(&t[i], NULL, worker, &s);
  for (int i = 0; i < s.threads; i++) pthread_join(t[i], NULL);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
  size_t rest = atomic_load(&s.cached_kv);
  (void)cllm_monitor_remove_reclaimer(s.mon, drop_cached, &s);
  cllm_monitor_stats_t st = {.struct_size = sizeof st};
  if (cllm_monitor_stats(s.mon, &st) != CLLM_OK) return 1;
  printf("\n%ld tokens in %.2f s (%.0f tokens/s), %ld steps refused by the limit\n",
         atomic_load(&s.tokens), secs, (double)atomic_load(&s.tokens) / secs,
         atomic_load(&s.refused_steps));
  printf("memory (monitor):\n");
  for (int c = 0; c < CLLM_CAT_COUNT; c++)
    mib(cllm_category_name((cllm_category_t)c), st.cat[c].used_bytes, st.cat[c].peak_bytes);
  mib("total", st.used_bytes, st.peak_bytes);
  printf("  limit %zu MiB; peak %s the limit\n", limit >> 20,
         st.peak_bytes <= limit ? "within" : "ABOVE");
  printf("reclaim: %llu runs freed %.2f MiB of cached KV; %llu reservations refused\n",
         (unsigned long long)st.reclaim_runs, (double)st.reclaimed_bytes / 1048576.0,
         (unsigned long long)st.refusals);
  (void)cllm_monitor_release(s.mon, CLLM_CAT_KV, rest);
  return cllm_monitor_check(s.mon) == CLLM_OK && st.peak_bytes <= limit ? 0 : 1;
}
