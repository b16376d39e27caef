/* The weights' per-node replicas: commit and copy each replica on threads bound to
 * its node (see weights_replica.h).
 *
 * Replicas are filled one after the other, each by its own threads; the order is
 * fixed so that a failure (and the fault sweep's Nth-call injection) always hits
 * the same replica. The caller waits; it never touches a replica itself unless none
 * of that replica's threads could start.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "internal/atomic.h"
#include "internal/prim.h"
#include "weights_replica.h"

#define MAX_THREADS 64

typedef struct fill {
  const cllm_topology_t *topo;
  int node;
  char *dst;
  const char *src; /* NULL: commit */
  size_t total, chunk;
  _Atomic size_t next;
  _Atomic int err;
} fill_t;

/* Claim and process chunks until none is left or one failed. */
static void fill_steps(fill_t *f) {
  for (;;) {
    if (atomic_load_explicit(&f->err, memory_order_acquire) != 0) return;
    size_t off = cllm__atomic_add_relaxed(&f->next, f->chunk);
    if (off >= f->total) return;
    size_t n = f->total - off < f->chunk ? f->total - off : f->chunk;
    int e = 0;
    if (f->src != NULL) memcpy(f->dst + off, f->src + off, n);
    else e = cllm__prim_populate(f->dst + off, n);
    if (e != 0) {
      int zero = 0;
      atomic_compare_exchange_strong(&f->err, &zero, e);
      return;
    }
  }
}

static void *fill_main(void *arg) {
  fill_t *f = arg;
  CLLM_DISCARD(cllm_thread_bind_node(f->topo, f->node)); /* mbind places the pages regardless */
  fill_steps(f);
  return NULL;
}

int cllm__weights_replicas_fill(const cllm_topology_t *t, char *base, size_t stride, int first,
                                int n, size_t off, size_t bytes, int threads, size_t chunk,
                                bool copy) {
  if (bytes == 0) return 0;
  if (threads < 1) threads = 1;
  if (threads > MAX_THREADS) threads = MAX_THREADS;
  if (chunk == 0) chunk = bytes;
  size_t n_chunks = (bytes + chunk - 1) / chunk;
  if ((size_t)threads > n_chunks) threads = (int)n_chunks;
  for (int r = first; r < n; r++) {
    fill_t f = {.topo = t, .node = r, .dst = base + (size_t)r * stride + off,
                .src = copy ? base + off : NULL, .total = bytes, .chunk = chunk};
    pthread_t tid[MAX_THREADS];
    int started = 0;
    for (int i = 0; i < threads; i++) {
      if (pthread_create(&tid[started], NULL, fill_main, &f) != 0) break;
      started++;
    }
    if (started == 0) fill_steps(&f);
    for (int i = 0; i < started; i++) pthread_join(tid[i], NULL);
    int e = atomic_load(&f.err);
    if (e != 0) return e;
  }
  return 0;
}
