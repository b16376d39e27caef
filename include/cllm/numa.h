/* cllm-mem: NUMA topology (hwloc), thread and memory binding.
 *
 *   const cllm_topology_t *topo = cllm_topology_system();   // this machine
 *   int nodes = cllm_topology_nodes(topo);
 *   if (cllm_thread_bind_node(topo, worker_id % nodes) < 0) ...;  // pin a worker
 *
 *   // Tests and VMs that misreport nodes: a synthetic or XML topology.
 *   cllm_topology_config_t cfg = cllm_topology_config_default();
 *   cfg.synthetic = "pack:2 numa:1 core:4 pu:1";              // 2 nodes x 4 CPUs
 *   cllm_topology_t *t; if (cllm_topology_create(&cfg, &t) < 0) ...;
 *
 * Nodes are numbered 0..n-1 in hwloc's logical order (node i is the i-th NUMA node,
 * whatever the OS calls it; cllm_numa_node_info_t.os_index gives the OS number).
 * CPUs are OS CPU numbers, as sched_getcpu() returns them. With max_nodes = N, the
 * machine's nodes i >= N are folded onto node i % N (their CPUs report that node).
 *
 * A topology that is not the running machine (synthetic, or XML not from this
 * machine) answers every query but refuses to bind (CLLM_ENOTSUP).
 * Not thread-safe unless tagged; a created topology is read-only, so every query is
 * `Thread: any`.
 */
#ifndef CLLM_NUMA_H
#define CLLM_NUMA_H

#include <stdbool.h>
#include <stddef.h>

#include <cllm/export.h>
#include <cllm/status.h>

CLLM_EXTERN_C_BEGIN

typedef struct cllm_topology cllm_topology_t;

typedef struct cllm_topology_config {
  size_t struct_size;      // set by cllm_topology_config_default()
  const char *xml_path;    // load an hwloc XML file (optional)
  const char *xml_buffer;  // or an hwloc XML document in memory (optional)
  const char *synthetic;   // or an hwloc synthetic description (optional)
  int max_nodes;           // use at most this many nodes (0 = all)
} cllm_topology_config_t;

typedef struct cllm_numa_node_info {
  int index;             // logical index, 0..n-1
  int os_index;          // the OS node number (as in /sys/devices/system/node/nodeN)
  size_t memory_bytes;   // local memory hwloc reports (0 if unknown)
  int n_cpus;            // CPUs (PUs) in the node's cpuset
} cllm_numa_node_info_t;

// Defaults: the running machine, all nodes. Thread: any.
CLLM_API cllm_topology_config_t cllm_topology_config_default(void);

// Load a topology: at most one of xml_path, xml_buffer and synthetic may be set;
// none = the running machine (hwloc honours HWLOC_XMLFILE and HWLOC_SYNTHETIC).
// Errors: CLLM_EINVAL (out NULL, two sources, max_nodes < 0, a description hwloc
// rejects), CLLM_ENOMEM, CLLM_ESYS (hwloc failed to load the machine). Thread: any.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_topology_create(const cllm_topology_config_t *cfg,
                                                            cllm_topology_t **out);
// NULL is a no-op; cllm_topology_system() is never destroyed (no-op). Owner only:
// no other thread may be using it.
CLLM_API void cllm_topology_destroy(cllm_topology_t *t);

// The running machine's topology, loaded once on first use; CLLM_NUMA_MAX_NODES in
// the environment caps its nodes. NULL if it cannot be loaded (hwloc failed, or out
// of memory: a later call tries again). Thread: any.
CLLM_API const cllm_topology_t *cllm_topology_system(void);

// Number of NUMA nodes (>= 1); 0 for NULL. Thread: any.
CLLM_API int cllm_topology_nodes(const cllm_topology_t *t);
// True when this topology describes the running machine (binding allowed).
CLLM_API bool cllm_topology_is_this_system(const cllm_topology_t *t);
// Describe node `node`. Errors: CLLM_EINVAL (NULL), CLLM_ENOTFOUND (no such node).
CLLM_API CLLM_NODISCARD cllm_status_t cllm_topology_node_info(const cllm_topology_t *t, int node,
                                                               cllm_numa_node_info_t *out);
// The node's CPUs (OS numbers, ascending) into cpus[0..cap); *n_out = how many the
// node has (may exceed cap: then only cap are written). Errors: CLLM_EINVAL,
// CLLM_ENOTFOUND.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_topology_node_cpus(const cllm_topology_t *t, int node,
                                                               int *cpus, size_t cap,
                                                               size_t *n_out);
// The node of an OS CPU number, or -1 (unknown CPU, NULL topology).
CLLM_API int cllm_topology_node_of_cpu(const cllm_topology_t *t, int cpu);
// The node of the calling thread: the node its CPU binding lies in when it is bound
// within one node, else the node of the CPU it runs on now; -1 if unknown (a
// topology that is not this machine). Thread: any.
CLLM_API int cllm_topology_current_node(const cllm_topology_t *t);
// The node the calling thread is bound to (its binding lies within one node), or
// -1 if it is not bound to a single node. Thread: any.
CLLM_API int cllm_topology_bound_node(const cllm_topology_t *t);

// Bind the calling thread to the CPUs of `node`. Errors: CLLM_EINVAL (NULL),
// CLLM_ENOTFOUND (no such node), CLLM_ENOTSUP (not this machine), CLLM_ESYS (the
// kernel refused; the thread's binding is unchanged). Thread: any (acts on caller).
CLLM_API CLLM_NODISCARD cllm_status_t cllm_thread_bind_node(const cllm_topology_t *t, int node);

// Bind the pages of [addr, addr+bytes) to `node` (MPOL_BIND, strict) before they
// are touched. Errors: CLLM_EINVAL (NULL, bytes 0), CLLM_ENOTFOUND, CLLM_ENOTSUP,
// CLLM_ESYS. Thread: any.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_topology_bind_area(const cllm_topology_t *t,
                                                               void *addr, size_t bytes,
                                                               int node);
// Interleave the pages of the range over `nodes[0..n)` (n == 0: all nodes).
// Errors as bind_area.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_topology_interleave_area(const cllm_topology_t *t,
                                                                     void *addr, size_t bytes,
                                                                     const int *nodes, int n);

CLLM_EXTERN_C_END
#endif /* CLLM_NUMA_H */
