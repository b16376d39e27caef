/* The weights' parallel chunk runner (see weights_job.h): commit at alloc and seal,
 * pread at load. Threads claim chunks with one atomic add; the first failure stops
 * the job and is what it returns. Threads touch only the job's range and atomics.
 */
#include <pthread.h>
#include <stdatomic.h>

#include "internal/atomic.h"
#include "internal/prim.h"
#include "internal/util.h"
#include "internal/versioned.h"
#include "weights_job.h"

#define MAX_THREADS 64

typedef struct worker {
  cllm__weights_job_t *job;
  int node;               /* bind to this node first, or -1 */
  pthread_t tid;
} worker_t;

static void job_fail(cllm__weights_job_t *j, int e) {
  int zero = 0;
  atomic_compare_exchange_strong(&j->err, &zero, e);
  atomic_store_explicit(&j->stop, true, memory_order_release);
}

/* Claim and process one chunk; false when there is nothing left or the job stopped. */
static bool job_step(cllm__weights_job_t *j) {
  if (atomic_load_explicit(&j->stop, memory_order_acquire)) return false;
  size_t off = cllm__atomic_add_relaxed(&j->next, j->chunk);
  if (off >= j->total) return false;
  size_t n = j->total - off < j->chunk ? j->total - off : j->chunk;
  int e;
  if (j->fd < 0) {
    e = cllm__prim_populate(j->dst + off, n);
  } else {
    size_t got = 0;
    e = cllm__prim_pread_full(j->fd, j->dst + off, n, j->file_off + (off_t)off, &got);
    if (e == 0 && got < n) e = -1;
  }
  if (e != 0) {
    job_fail(j, e);
    return false;
  }
  cllm__atomic_add_relaxed(&j->done, n);
  return true;
}

static void *worker_main(void *arg) {
  worker_t *wk = arg;
  if (wk->node >= 0) CLLM_DISCARD(cllm_thread_bind_node(wk->job->topo, wk->node));
  while (job_step(wk->job)) {
  }
  return NULL;
}

cllm_status_t cllm__weights_job_run(cllm__weights_job_t *j, bool with_progress, bool multi) {
  worker_t workers[MAX_THREADS];
  int n_threads = 0;
  size_t n_chunks = (j->total + j->chunk - 1) / j->chunk;
  int want = multi ? j->threads : 1;
  if (want > MAX_THREADS) want = MAX_THREADS;
  if ((size_t)want > n_chunks) want = (int)n_chunks;
  for (int i = 1; i < want; i++) {
    worker_t *wk = &workers[n_threads];
    wk->job = j;
    wk->node = j->n_nodes > 0 ? j->nodes[i % j->n_nodes] : -1;
    if (pthread_create(&wk->tid, NULL, worker_main, wk) != 0) break;
    n_threads++;
  }
  bool cancelled = false;
  bool report = with_progress && j->progress != NULL;
  while (job_step(j)) {
    if (report && !j->progress(j->progress_user, atomic_load(&j->done), j->total)) {
      cancelled = true;
      atomic_store_explicit(&j->stop, true, memory_order_release);
      break;
    }
  }
  for (int i = 0; i < n_threads; i++) pthread_join(workers[i].tid, NULL);
  int e = atomic_load(&j->err);
  if (e != 0) return e == CLLM__WEIGHTS_JOB_SHORT_READ ? CLLM_EIO : cllm__status_of_errno(e);
  if (cancelled) return CLLM_EPREEMPTED;
  cllm_assert_internal(atomic_load(&j->done) == j->total);
  if (report && !j->progress(j->progress_user, j->total, j->total)) return CLLM_EPREEMPTED;
  return CLLM_OK;
}

size_t cllm__weights_job_claimed(cllm__weights_job_t *j) {
  size_t c = atomic_load(&j->next);
  return c < j->total ? c : j->total;
}
