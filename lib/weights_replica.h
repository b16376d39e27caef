/* Internal: the weights' per-node replicas (CLLM_WEIGHTS_NUMA_REPLICATE).
 *
 * The region holds n replicas of `stride` bytes each, back to back: replica r at
 * base + r * stride, bound to topology node r. Every replica is committed and
 * written only by threads bound to its node.
 */
#ifndef CLLM_WEIGHTS_REPLICA_H
#define CLLM_WEIGHTS_REPLICA_H

#include <stdbool.h>
#include <stddef.h>

#include <cllm/numa.h>

/* For each replica r in [first, n): `threads` threads bound to node r commit
 * (copy false: MADV_POPULATE_WRITE) or copy from replica 0 (copy true) the range
 * [off, off + bytes) of replica r, in steps of `chunk`. A replica whose threads
 * cannot start is done by the caller (its pages are bound anyway). Returns 0 or the
 * first errno. Thread: external-sync on the range. */
int cllm__weights_replicas_fill(const cllm_topology_t *t, char *base, size_t stride, int first,
                                int n, size_t off, size_t bytes, int threads, size_t chunk,
                                bool copy);

#endif /* CLLM_WEIGHTS_REPLICA_H */
