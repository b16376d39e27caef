/* A program that uses cllm-mem from outside this repository (built by the Makefile,
 * the external Bazel workspace and, in C++, by CMake: tests/consumers/run.sh).
 *   consumer [ALLOCATOR]
 * Runs a monitor with a limit, a heap allocation, an arena step, a weights load and
 * seal, a KV sequence that shares a cached prefix, and the stats as JSON; checks
 * every status and result. With ALLOCATOR (mimalloc or libc) it also checks which
 * library the process's malloc comes from. Exit 0 and one "consumer: ok" line when
 * everything holds. */
#define _GNU_SOURCE
#include <cllm/mem.h>

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int failures;

#define CHECK(cond)                                                        \
  do {                                                                     \
    if (!(cond)) {                                                         \
      fprintf(stderr, "consumer: %s:%d: failed: %s\n", __FILE__, __LINE__, #cond); \
      failures++;                                                          \
    }                                                                      \
  } while (0)
#define CHECK_OK(call)                                                     \
  do {                                                                     \
    cllm_status_t rc_ = (call);                                            \
    if (rc_ != CLLM_OK) {                                                  \
      fprintf(stderr, "consumer: %s:%d: %s: %s\n", __FILE__, __LINE__, #call, \
              cllm_status_name(rc_));                                      \
      failures++;                                                          \
    }                                                                      \
  } while (0)

// "mimalloc" or "libc": the library whose malloc this process calls.
static const char *malloc_owner(void) {
  Dl_info info;
  void *sym = dlsym(RTLD_DEFAULT, "malloc");
  if (sym == NULL || dladdr(sym, &info) == 0 || info.dli_fname == NULL) return "unknown";
  if (strstr(info.dli_fname, "mimalloc") != NULL) return "mimalloc";
  if (strstr(info.dli_fname, "libc.so") != NULL) return "libc";
  return info.dli_fname;
}

static size_t to_buffer(void *user, const char *buf, size_t n) {
  char **text = user;
  size_t old = *text ? strlen(*text) : 0;
  char *grown = realloc(*text, old + n + 1);
  if (grown == NULL) return 0;
  memcpy(grown + old, buf, n);
  grown[old + n] = '\0';
  *text = grown;
  return n;
}

int main(int argc, char **argv) {
  CHECK(cllm_version() == CLLM_VERSION_HEX);  // headers and library agree

  // A private monitor with a 256 MiB limit: a reservation past it is refused.
  cllm_monitor_config_t mc = cllm_monitor_config_default();
  mc.limit_bytes = 256u << 20;
  cllm_monitor_t *mon = NULL;
  CHECK_OK(cllm_monitor_create(&mc, &mon));
  if (mon == NULL) return 1;
  CHECK(cllm_monitor_reserve(mon, CLLM_CAT_HEAP, 300u << 20) == CLLM_ELIMIT);
  CHECK(cllm_monitor_used(mon, CLLM_CAT_COUNT) == 0);

  // Heaps: one allocation, charged to the monitor, freed.
  cllm_heaps_config_t hc = cllm_heaps_config_default();
  hc.bytes_per_node = 64u << 20;
  hc.max_nodes = 1;
  hc.monitor = mon;
  cllm_heaps_t *heaps = NULL;
  CHECK_OK(cllm_heaps_create(&hc, &heaps));
  float *x = cllm_heap_alloc_aligned(heaps, 1000 * sizeof(float), 64);
  CHECK(x != NULL && ((uintptr_t)x & 63) == 0);
  if (x != NULL) x[999] = 1.0f;
  CHECK(cllm_monitor_used(mon, CLLM_CAT_HEAP) > 0);
  cllm_heap_free(heaps, x);

  // An arena step: allocate, then reset.
  cllm_arena_config_t ac = cllm_arena_config_default();
  ac.monitor = mon;
  cllm_arena_t *arena = NULL;
  CHECK_OK(cllm_arena_create(&ac, &arena));
  float *t = cllm_arena_alloc(arena, 4096 * sizeof(float));
  CHECK(t != NULL);
  if (t != NULL) t[4095] = 2.0f;
  CHECK(cllm_monitor_used(mon, CLLM_CAT_STEP) >= 4096 * sizeof(float));
  CHECK_OK(cllm_arena_reset(arena));

  // Weights: load a file's bytes, seal, read them back.
  char path[] = "/tmp/cllm-consumer-XXXXXX";
  int fd = mkstemp(path);
  CHECK(fd >= 0);
  unsigned char data[8192];
  for (size_t i = 0; i < sizeof data; i++) data[i] = (unsigned char)(i * 7);
  CHECK(fd >= 0 && write(fd, data, sizeof data) == (ssize_t)sizeof data);
  if (fd >= 0) close(fd);
  cllm_weights_config_t wc = cllm_weights_config_default();
  wc.capacity_bytes = 1u << 20;
  wc.monitor = mon;
  wc.reader_threads = 1;
  cllm_weights_t *w = NULL;
  CHECK_OK(cllm_weights_create(&wc, &w));
  void *loaded = NULL;
  CHECK_OK(cllm_weights_load_path(w, path, 0, sizeof data, &loaded));
  CHECK_OK(cllm_weights_seal(w));
  CHECK(loaded != NULL && memcmp(loaded, data, sizeof data) == 0);
  unlink(path);

  // KV: a closed sequence's full blocks are shared by the next one with that prompt.
  cllm_kv_config_t kc = cllm_kv_config_default();
  kc.layers = 2;
  kc.kv_heads = 2;
  kc.head_dim = 16;
  kc.dtype_bytes = 2;  // required: no default
  kc.block_tokens = 16;
  kc.capacity_blocks = 64;
  kc.monitor = mon;
  cllm_kv_cache_t *kv = NULL;
  CHECK_OK(cllm_kv_cache_create(&kc, &kv));
  cllm_kv_token_t prompt[40];
  for (int i = 0; i < 40; i++) prompt[i] = 100 + i;
  cllm_kv_seq_t s1, s2;
  size_t cached = 99;
  CHECK_OK(cllm_kv_seq_open_with_prompt(kv, "req-1", NULL, prompt, 40, &s1, &cached));
  CHECK(cached == 0);
  CHECK_OK(cllm_kv_seq_reserve(kv, s1, 40, NULL));
  CHECK_OK(cllm_kv_seq_commit(kv, s1, prompt, 40));
  CHECK_OK(cllm_kv_seq_close(kv, s1));
  CHECK_OK(cllm_kv_seq_open_with_prompt(kv, "req-2", NULL, prompt, 40, &s2, &cached));
  CHECK(cached == 32);  // two full blocks of 16 tokens
  CHECK_OK(cllm_kv_seq_close(kv, s2));

  // Stats as JSON.
  cllm_stats_sources_t src = cllm_stats_sources_default();
  src.monitor = mon;
  cllm_stats_kv_source_t kvs = {"kv", kv};
  src.kv_caches = &kvs;
  src.n_kv_caches = 1;
  char *json = NULL;
  CHECK_OK(cllm_stats_write_json(&src, to_buffer, &json));
  CHECK(json != NULL && json[0] == '{' && strstr(json, "\"kv\"") != NULL);
  free(json);

  cllm_kv_cache_destroy(kv);
  cllm_weights_destroy(w);
  cllm_arena_destroy(arena);
  cllm_heaps_destroy(heaps);
  CHECK(cllm_monitor_used(mon, CLLM_CAT_COUNT) == 0);
  cllm_monitor_destroy(mon);

  const char *owner = malloc_owner();
  if (argc > 1 && strcmp(argv[1], owner) != 0) {
    fprintf(stderr, "consumer: malloc comes from %s, expected %s\n", owner, argv[1]);
    failures++;
  }
  if (failures != 0) return 1;
  printf("consumer: ok (cllm-mem %s, malloc from %s)\n", cllm_version_string(), owner);
  return 0;
}
