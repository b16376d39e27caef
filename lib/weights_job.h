/* Internal: the weights' parallel chunk runner (commit, or pread at load).
 *
 * A job covers [dst, dst + total) in chunks of `chunk` bytes: each claimed chunk is
 * committed (fd < 0: MADV_POPULATE_WRITE) or read from fd at file_off + offset. The
 * calling thread and up to threads - 1 threads of the job's own claim chunks; thread
 * i binds to nodes[i % n_nodes] first when n_nodes > 0.
 */
#ifndef CLLM_WEIGHTS_JOB_H
#define CLLM_WEIGHTS_JOB_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include <cllm/weights.h>

#define CLLM__WEIGHTS_JOB_SHORT_READ (-1) /* err: the file ended before the range did */

typedef struct cllm__weights_job {
  char *dst;
  size_t total, chunk;
  int fd;                     /* < 0: commit (populate) instead of read */
  off_t file_off;
  const cllm_topology_t *topo;
  int threads;                /* at most this many threads, the caller included */
  const int *nodes;           /* bind thread i to nodes[i % n_nodes]; n_nodes 0: none */
  int n_nodes;
  cllm_weights_progress_fn progress; /* reads only; NULL: none */
  void *progress_user;
  _Atomic size_t next;        /* next offset to claim */
  _Atomic size_t done;        /* bytes completed */
  _Atomic int err;            /* first errno, or CLLM__WEIGHTS_JOB_SHORT_READ */
  _Atomic bool stop;
} cllm__weights_job_t;

/* Run the job on the calling thread plus up to threads - 1 threads (one thread
 * unless `multi`; fewer if the job is small or a thread cannot start). `progress`
 * (when with_progress) runs on the calling thread after each of its chunks and once
 * at the end; false cancels. CLLM_OK; CLLM_EPREEMPTED (cancelled); CLLM_EIO (short
 * read); else the status of the errno left in j->err (for the caller's log).
 * Thread: external-sync on the range. */
cllm_status_t cllm__weights_job_run(cllm__weights_job_t *j, bool with_progress, bool multi);

/* How far a stopped job may have written (claimed chunks), for undoing it. */
size_t cllm__weights_job_claimed(cllm__weights_job_t *j);

#endif /* CLLM_WEIGHTS_JOB_H */
