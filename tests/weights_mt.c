/* The weights heap's concurrency as a plain program, so it also runs under TSan:
 * loads with 4 reader threads (and the region committed by them) while another
 * thread reads the stats and readers of already loaded tensors verify them; then
 * seal and read from 4 threads at once. Twice: LOCAL, then REPLICATE (one copy per
 * node: copies are filled by threads of each node; readers read their node's copy).
 * Exit status 0 = all held. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cllm/weights.h>

#include "support/mt_check.h"

#define FILE_BYTES ((size_t)24 << 20)

static cllm_weights_t *g_w;
static _Atomic int g_stop;
static unsigned char *g_file;
static const unsigned char *_Atomic g_loaded; /* the first tensor, once loaded */

static void *stats_loop(void *arg) {
  (void)arg;
  while (!atomic_load(&g_stop)) {
    cllm_weights_stats_t st = {.struct_size = sizeof st};
    MT_CHECK(cllm_weights_stats(g_w, &st) == CLLM_OK, "stats");
    MT_CHECK(st.used_bytes <= st.capacity_bytes, "used above capacity");
    const unsigned char *t = atomic_load(&g_loaded);
    if (t != NULL) MT_CHECK(memcmp(t, g_file, 1 << 20) == 0, "a loaded tensor changed");
  }
  return NULL;
}

static void *read_sealed(void *arg) {
  /* arg: the tensor's offset in a copy; read it in this thread's node's copy */
  const unsigned char *t = (const unsigned char *)cllm_weights_local(g_w) + (size_t)arg;
  unsigned long sum = 0;
  for (int r = 0; r < 4; r++)
    for (size_t i = 0; i < FILE_BYTES; i += 64) sum += t[i];
  return (void *)sum;
}

static void run(const char *path, cllm_weights_numa_t numa) {
  atomic_store(&g_stop, 0);
  atomic_store(&g_loaded, NULL);
  cllm_weights_config_t c = cllm_weights_config_default();
  c.numa = numa;
  c.capacity_bytes = 4 * FILE_BYTES;
  c.reader_threads = 4;
  c.read_chunk_bytes = 1 << 20;
  MT_CHECK(cllm_weights_create(&c, &g_w) == CLLM_OK, "create");
  pthread_t st;
  pthread_create(&st, NULL, stats_loop, NULL);
  void *first = NULL;
  for (int i = 0; i < 3; i++) {
    void *p;
    MT_CHECK(cllm_weights_load_path(g_w, path, 0, FILE_BYTES, &p) == CLLM_OK, "load %d", i);
    MT_CHECK(memcmp(p, g_file, FILE_BYTES) == 0, "load %d differs", i);
    if (i == 0) atomic_store(&g_loaded, (const unsigned char *)(first = p));
  }
  void *p;
  MT_CHECK(cllm_weights_load_path(g_w, "/nonexistent", 0, 1, &p) == CLLM_ENOTFOUND, "missing");
  atomic_store(&g_stop, 1);
  pthread_join(st, NULL);
  MT_CHECK(cllm_weights_seal(g_w) == CLLM_OK, "seal");
  pthread_t rd[4];
  size_t off = (size_t)((char *)first - (const char *)cllm_weights_base(g_w));
  for (int i = 0; i < 4; i++) pthread_create(&rd[i], NULL, read_sealed, (void *)off);
  void *sums[4];
  for (int i = 0; i < 4; i++) pthread_join(rd[i], &sums[i]);
  for (int i = 1; i < 4; i++) MT_CHECK(sums[i] == sums[0], "readers disagree");
  MT_CHECK(cllm_weights_check(g_w) == CLLM_OK, "check");
  cllm_weights_stats_t ws = {.struct_size = sizeof ws};
  MT_CHECK(cllm_weights_stats(g_w, &ws) == CLLM_OK, "stats");
  cllm_weights_destroy(g_w);
  printf("weights_mt: %s (%d copies): 3 loads of %zu MiB with 4 readers, stats concurrently, "
         "4 sealed readers\n", cllm_weights_numa_name(numa), ws.replicas, FILE_BYTES >> 20);
}

int main(void) {
  char path[64];
  snprintf(path, sizeof path, "/tmp/cllm-weights-mt-%d.bin", (int)getpid());
  g_file = malloc(FILE_BYTES);
  MT_CHECK(g_file != NULL, "malloc");
  for (size_t i = 0; i < FILE_BYTES; i++) g_file[i] = (unsigned char)(i * 131 + (i >> 12));
  FILE *f = fopen(path, "wb");
  MT_CHECK(f != NULL && fwrite(g_file, 1, FILE_BYTES, f) == FILE_BYTES, "temp file");
  fclose(f);
  run(path, CLLM_WEIGHTS_NUMA_LOCAL);
  run(path, CLLM_WEIGHTS_NUMA_REPLICATE);
  unlink(path);
  free(g_file);
  return 0;
}
