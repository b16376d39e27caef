/* What the heap suites (tests/heap_*_test.c) share: their includes, a log counter,
 * heaps and their stats, region membership, a warm-up that loads what the first create
 * loads, a byte pattern, sized-free sizes, and a thread parked on the heaps. Failures
 * of the helpers' own calls fail the test (cr_assert). */
#ifndef CLLM_TEST_HEAP_TEST_UTIL_H
#define CLLM_TEST_HEAP_TEST_UTIL_H

#include <criterion/criterion.h>
#include <errno.h>
#include <mimalloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cllm/heap.h>
#include <cllm/monitor.h>
#include <cllm/numa.h>
#include <cllm/status.h>

#include "fixtures.h"
#include "lib/internal/fault.h"
#include "lib/internal/util.h"
#include "on_node0.h"
#include "proc_status.h"

#ifndef MiB
#define MiB ((size_t)1 << 20)
#endif
#define MPOL_BIND_ 2
#define MPOL_F_ADDR_ (1 << 1)

static int g_warnings;
static char g_last_msg[512];
static inline void count_log(void *user, cllm_log_level_t level, const char *msg) {
  (void)user;
  if (level >= CLLM_LOG_WARN) g_warnings++;
  snprintf(g_last_msg, sizeof g_last_msg, "%s", msg);
}
static inline void quiet(void) { cllm_set_log_fn(count_log, NULL); }

static inline cllm_heaps_t *new_heaps(size_t bytes, cllm_monitor_t *m) {
  cllm_heaps_config_t cfg = cllm_heaps_config_default();
  cfg.bytes_per_node = bytes;
  cfg.monitor = m;
  cllm_heaps_t *h = NULL;
  cr_assert_eq(cllm_heaps_create(&cfg, &h), CLLM_OK);
  cr_assert_not_null(h);
  return h;
}

static inline cllm_heaps_stats_t stats_of(const cllm_heaps_t *h) {
  cllm_heaps_stats_t st;
  memset(&st, 0xab, sizeof st);
  st.struct_size = sizeof st;
  cr_assert_eq(cllm_heaps_stats(h, &st), CLLM_OK);
  return st;
}

static inline bool inside(const cllm_heap_node_stats_t *ns, const void *p, size_t n) {
  const char *s = ns->region_start, *c = p;
  return s != NULL && c >= s && c + n <= s + ns->region_bytes;
}

/* Load what the first create loads (topology, mimalloc's thread state) so that
 * address-space comparisons see only what the call under test maps. */
static inline void warm_up(void) {
  (void)cllm_topology_system();
  mi_free(mi_malloc(16));
  cllm_heaps_t *h = NULL;
  cllm_heaps_config_t cfg = cllm_heaps_config_default();
  cfg.bytes_per_node = 96 * MiB; /* a shape the tests below do not reuse */
  cr_assert_eq(cllm_heaps_create(&cfg, &h), CLLM_OK);
  cllm_heap_free(h, cllm_heap_alloc(h, 16));
  cllm_heaps_destroy(h);
}

static inline size_t vm_size_kib(void) { return proc_status_kib("VmSize"); }

static inline void fill(void *p, size_t n, unsigned seed) {
  unsigned char *c = p;
  for (size_t i = 0; i < n; i++) c[i] = (unsigned char)(seed + i * 31u);
}
static inline bool verify(const void *p, size_t n, unsigned seed) {
  const unsigned char *c = p;
  for (size_t i = 0; i < n; i++)
    if (c[i] != (unsigned char)(seed + i * 31u)) return false;
  return true;
}

/* Sizes on both sides of every branch of the sized path: 0, the small table, the
 * medium classes, the 128 KiB prediction limit and beyond (mimalloc is asked). */
static const size_t k_sized[] = {0,    1,     15,    16,    17,     63,     64,     65,
                                 100,  1000,  1024,  1025,  4095,   4096,   65536,  100000,
                                 131071, 131072, 131073, 300000, 1 << 20, 3 << 20};
#define N_SIZED (sizeof k_sized / sizeof k_sized[0])

/* Blocks handed from the thread that allocates them to one that frees them. */
typedef struct xfer {
  cllm_heaps_t *h;
  void *blk[256];
  size_t size[256];
  int n;
} xfer_t;

/* destroy while another thread that used the heaps is still alive; it exits later. */
typedef struct parked {
  cllm_heaps_t *h;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int stage;
  void *blk;
} parked_t;

static inline void *park(void *arg) {
  parked_t *p = arg;
  p->blk = cllm_heap_alloc(p->h, 1000);
  pthread_mutex_lock(&p->mu);
  p->stage = 1;
  pthread_cond_broadcast(&p->cv);
  while (p->stage != 2) pthread_cond_wait(&p->cv, &p->mu);
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

/* Start a thread that allocates one block from h and waits, parked, until unparked. */
static inline pthread_t park_start(parked_t *p, cllm_heaps_t *h) {
  *p = (parked_t){.h = h, .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
  pthread_t t;
  cr_assert_eq(pthread_create(&t, NULL, park, p), 0);
  pthread_mutex_lock(&p->mu);
  while (p->stage != 1) pthread_cond_wait(&p->cv, &p->mu);
  pthread_mutex_unlock(&p->mu);
  return t;
}

/* Let the parked thread exit, and join it. */
static inline void park_end(parked_t *p, pthread_t t) {
  pthread_mutex_lock(&p->mu);
  p->stage = 2;
  pthread_cond_broadcast(&p->cv);
  pthread_mutex_unlock(&p->mu);
  pthread_join(t, NULL);
}

#endif /* CLLM_TEST_HEAP_TEST_UTIL_H */
