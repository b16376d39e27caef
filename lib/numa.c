/* NUMA topology with hwloc: the only file of the library that includes hwloc.
 *
 * A cllm_topology_t is a loaded hwloc topology plus a flat, read-only summary built
 * at create time (node -> cpus, cpu -> node), so every query after create is a
 * lookup with no lock. Nodes are hwloc's logical NUMA indexes; with max_nodes = N
 * the machine's node i >= N is folded onto i % N.
 *
 * The system topology is loaded once (pthread_once) and never destroyed.
 */
#include <errno.h>
#include <hwloc.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#include <cllm/numa.h>

#include "internal/fault.h"
#include "internal/prim.h"
#include "internal/util.h"
#include "internal/versioned.h"

#define MAX_CPUS 4096

struct cllm_topology {
  hwloc_topology_t topo;
  bool this_system;
  bool is_static; /* the system topology: never destroyed */
  int n_nodes;     /* after folding */
  hwloc_bitmap_t *cpuset;  /* per folded node */
  hwloc_bitmap_t *nodeset; /* per folded node: the hw nodes folded onto it */
  cllm_numa_node_info_t *info;
  int max_cpu;      /* largest OS cpu number + 1 */
  int16_t *cpu_node; /* cpu -> folded node, -1 unknown */
};

cllm_topology_config_t cllm_topology_config_default(void) {
  cllm_topology_config_t c;
  memset(&c, 0, sizeof c);
  c.struct_size = sizeof c;
  return c;
}

static void topo_free(cllm_topology_t *t) {
  if (t == NULL) return;
  for (int i = 0; t->cpuset != NULL && i < t->n_nodes; i++) hwloc_bitmap_free(t->cpuset[i]);
  for (int i = 0; t->nodeset != NULL && i < t->n_nodes; i++) hwloc_bitmap_free(t->nodeset[i]);
  free(t->cpuset);
  free(t->nodeset);
  free(t->info);
  free(t->cpu_node);
  if (t->topo != NULL) hwloc_topology_destroy(t->topo);
  free(t);
}

/* Build the flat summary. */
static cllm_status_t summarise(cllm_topology_t *t, int max_nodes) {
  int hw = hwloc_get_nbobjs_by_type(t->topo, HWLOC_OBJ_NUMANODE);
  if (hw <= 0) hw = 0;
  t->n_nodes = hw == 0 ? 1 : (max_nodes > 0 && max_nodes < hw ? max_nodes : hw);
  t->cpuset = calloc((size_t)t->n_nodes, sizeof *t->cpuset);
  t->nodeset = calloc((size_t)t->n_nodes, sizeof *t->nodeset);
  t->info = calloc((size_t)t->n_nodes, sizeof *t->info);
  if (t->cpuset == NULL || t->nodeset == NULL || t->info == NULL)
    return CLLM_ENOMEM;
  for (int i = 0; i < t->n_nodes; i++) {
    t->cpuset[i] = hwloc_bitmap_alloc();
    t->nodeset[i] = hwloc_bitmap_alloc();
    if (t->cpuset[i] == NULL || t->nodeset[i] == NULL) return CLLM_ENOMEM;
    t->info[i].index = i;
    t->info[i].os_index = -1;
  }
  if (hw == 0) { /* no NUMA object at all: one node with every CPU */
    hwloc_bitmap_copy(t->cpuset[0], hwloc_topology_get_topology_cpuset(t->topo));
    hwloc_bitmap_copy(t->nodeset[0], hwloc_topology_get_topology_nodeset(t->topo));
    t->info[0].os_index = 0;
  }
  for (int i = 0; i < hw; i++) {
    hwloc_obj_t o = hwloc_get_obj_by_type(t->topo, HWLOC_OBJ_NUMANODE, (unsigned)i);
    int f = i % t->n_nodes;
    if (o->cpuset != NULL) hwloc_bitmap_or(t->cpuset[f], t->cpuset[f], o->cpuset);
    hwloc_bitmap_set(t->nodeset[f], o->os_index);
    if (t->info[f].os_index < 0) t->info[f].os_index = (int)o->os_index;
    t->info[f].memory_bytes += (size_t)o->attr->numanode.local_memory;
  }
  int last = hwloc_bitmap_last(hwloc_topology_get_topology_cpuset(t->topo));
  t->max_cpu = last < 0 ? 1 : (last + 1 > MAX_CPUS ? MAX_CPUS : last + 1);
  t->cpu_node = malloc(sizeof *t->cpu_node * (size_t)t->max_cpu);
  if (t->cpu_node == NULL) return CLLM_ENOMEM;
  for (int c = 0; c < t->max_cpu; c++) t->cpu_node[c] = -1;
  for (int n = 0; n < t->n_nodes; n++) {
    int c;
    hwloc_bitmap_foreach_begin(c, t->cpuset[n]) {
      if (c < t->max_cpu) t->cpu_node[c] = (int16_t)n;
    }
    hwloc_bitmap_foreach_end();
    t->info[n].n_cpus = hwloc_bitmap_weight(t->cpuset[n]);
    if (t->info[n].n_cpus < 0) t->info[n].n_cpus = 0;
  }
  return CLLM_OK;
}

cllm_status_t cllm_topology_create(const cllm_topology_config_t *cfg, cllm_topology_t **out) {
  if (out == NULL) return CLLM_EINVAL;
  *out = NULL;
  cllm_topology_config_t c = cllm_topology_config_default();
  if (cllm__config_in(&c, sizeof c, cfg) != CLLM_OK) return CLLM_EINVAL;
  int sources = (c.xml_path != NULL) + (c.xml_buffer != NULL) + (c.synthetic != NULL);
  if (sources > 1 || c.max_nodes < 0) return CLLM_EINVAL;
  cllm_topology_t *t = CLLM_FAULT(CLLM_FAULT_MALLOC) ? NULL : calloc(1, sizeof *t);
  if (t == NULL) return CLLM_ENOMEM;
  if (hwloc_topology_init(&t->topo) != 0) {
    free(t);
    return CLLM_ENOMEM;
  }
  int rc = 0;
  if (c.xml_path != NULL) rc = hwloc_topology_set_xml(t->topo, c.xml_path);
  else if (c.xml_buffer != NULL)
    rc = hwloc_topology_set_xmlbuffer(t->topo, c.xml_buffer, (int)strlen(c.xml_buffer) + 1);
  else if (c.synthetic != NULL) rc = hwloc_topology_set_synthetic(t->topo, c.synthetic);
  if (rc != 0) {
    topo_free(t);
    return CLLM_EINVAL;
  }
  if (hwloc_topology_load(t->topo) != 0) {
    topo_free(t);
    return sources > 0 ? CLLM_EINVAL : CLLM_ESYS;
  }
  t->this_system = hwloc_topology_is_thissystem(t->topo) != 0;
  cllm_status_t s = summarise(t, c.max_nodes);
  if (s != CLLM_OK) {
    topo_free(t);
    return s;
  }
  *out = t;
  return CLLM_OK;
}

void cllm_topology_destroy(cllm_topology_t *t) {
  if (t == NULL || t->is_static) return;
  topo_free(t);
}

/* CLLM_NUMA_MAX_NODES: a positive decimal caps the system topology's nodes; anything
 * else (unset, empty, trailing text, out of range) means no cap (0). */
static int env_max_nodes(void) {
  const char *s = getenv("CLLM_NUMA_MAX_NODES");
  if (s == NULL || *s == '\0') return 0;
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno != 0 || *end != '\0' || v <= 0 || v > INT_MAX) {
    cllm__warn("CLLM_NUMA_MAX_NODES=\"%s\" is not a positive number: ignored", s);
    return 0;
  }
  return (int)v;
}

/* Loaded on first use under a mutex; a failed load (e.g. out of memory) is not
 * cached, the next call tries again. Once loaded it is never freed. */
static pthread_mutex_t g_sys_lock = PTHREAD_MUTEX_INITIALIZER;
static cllm_topology_t *_Atomic g_sys;

const cllm_topology_t *cllm_topology_system(void) {
  cllm_topology_t *t = atomic_load_explicit(&g_sys, memory_order_acquire);
  if (t != NULL) return t;
  pthread_mutex_lock(&g_sys_lock);
  t = atomic_load_explicit(&g_sys, memory_order_relaxed);
  if (t == NULL) {
    cllm_topology_config_t c = cllm_topology_config_default();
    c.max_nodes = env_max_nodes();
    if (cllm_topology_create(&c, &t) == CLLM_OK) {
      t->is_static = true;
      atomic_store_explicit(&g_sys, t, memory_order_release);
    } else {
      t = NULL;
      cllm__warn("hwloc could not load this machine's topology");
    }
  }
  pthread_mutex_unlock(&g_sys_lock);
  return t;
}

/* ---- queries -------------------------------------------------------------------------- */

int cllm_topology_nodes(const cllm_topology_t *t) { return t == NULL ? 0 : t->n_nodes; }

bool cllm_topology_is_this_system(const cllm_topology_t *t) { return t != NULL && t->this_system; }

cllm_status_t cllm_topology_node_info(const cllm_topology_t *t, int node,
                                      cllm_numa_node_info_t *out) {
  if (t == NULL || out == NULL) return CLLM_EINVAL;
  if (node < 0 || node >= t->n_nodes) return CLLM_ENOTFOUND;
  *out = t->info[node];
  return CLLM_OK;
}

cllm_status_t cllm_topology_node_cpus(const cllm_topology_t *t, int node, int *cpus, size_t cap,
                                      size_t *n_out) {
  if (t == NULL || n_out == NULL || (cpus == NULL && cap > 0)) return CLLM_EINVAL;
  if (node < 0 || node >= t->n_nodes) return CLLM_ENOTFOUND;
  size_t n = 0;
  int c;
  hwloc_bitmap_foreach_begin(c, t->cpuset[node]) {
    if (n < cap) cpus[n] = c;
    n++;
  }
  hwloc_bitmap_foreach_end();
  *n_out = n;
  return CLLM_OK;
}

int cllm_topology_node_of_cpu(const cllm_topology_t *t, int cpu) {
  if (t == NULL || cpu < 0 || cpu >= t->max_cpu) return -1;
  return t->cpu_node[cpu];
}

/* The single node containing `set`, or -1. */
static int node_of_set(const cllm_topology_t *t, hwloc_const_bitmap_t set) {
  if (hwloc_bitmap_iszero(set)) return -1;
  for (int n = 0; n < t->n_nodes; n++)
    if (hwloc_bitmap_isincluded(set, t->cpuset[n])) return n;
  return -1;
}

int cllm_topology_bound_node(const cllm_topology_t *t) {
  if (t == NULL || !t->this_system) return -1;
  hwloc_bitmap_t set = hwloc_bitmap_alloc();
  if (set == NULL) return -1;
  int node = -1;
  if (hwloc_get_cpubind(t->topo, set, HWLOC_CPUBIND_THREAD) == 0) node = node_of_set(t, set);
  hwloc_bitmap_free(set);
  return node;
}

int cllm_topology_current_node(const cllm_topology_t *t) {
  if (t == NULL || !t->this_system) return -1;
  int node = cllm_topology_bound_node(t);
  if (node >= 0) return node;
  int cpu = sched_getcpu();
  node = cllm_topology_node_of_cpu(t, cpu);
  return node >= 0 ? node : (t->n_nodes == 1 ? 0 : -1);
}

/* ---- binding ------------------------------------------------------------------------- */

static cllm_status_t bind_check(const cllm_topology_t *t, int node) {
  if (t == NULL) return CLLM_EINVAL;
  if (node < 0 || node >= t->n_nodes) return CLLM_ENOTFOUND;
  if (!t->this_system) return CLLM_ENOTSUP;
  return CLLM_OK;
}

cllm_status_t cllm_thread_bind_node(const cllm_topology_t *t, int node) {
  cllm_status_t s = bind_check(t, node);
  if (s != CLLM_OK) return s;
  if (CLLM_FAULT(CLLM_FAULT_BIND)) return CLLM_ESYS;
  if (hwloc_set_cpubind(t->topo, t->cpuset[node], HWLOC_CPUBIND_THREAD) != 0) {
    cllm__warn("binding thread to node %d failed: %s", node, strerror(errno));
    return CLLM_ESYS;
  }
  return CLLM_OK;
}

/* mbind(2) (cllm__prim_bind) rather than hwloc_set_area_membind: hwloc turns a BIND
 * or an INTERLEAVE that covers every node of the machine into another policy (on a
 * one-node machine the kernel would then report MPOL_DEFAULT or MPOL_BIND), and
 * callers (and tests) must be able to read back exactly the policy they asked for.
 * The kernel's refusal is CLLM_ESYS, a kernel without NUMA CLLM_ENOTSUP. */
static cllm_status_t set_area(void *addr, size_t bytes, hwloc_const_bitmap_t nodes, int mode) {
  unsigned long mask[CLLM__PRIM_NODEMASK_WORDS] = {0};
  const int bits = (int)(8 * sizeof mask[0]);
  int n;
  hwloc_bitmap_foreach_begin(n, nodes) {
    if (n < CLLM__PRIM_NODEMASK_WORDS * bits) mask[n / bits] |= 1ul << (n % bits);
  }
  hwloc_bitmap_foreach_end();
  size_t ps = cllm__prim_page_size();
  uintptr_t start = (uintptr_t)addr & ~(uintptr_t)(ps - 1);
  size_t len = bytes + ((uintptr_t)addr - start);
  int e = cllm__prim_bind((void *)start, len, mode, mask);
  if (e != 0) {
    cllm__warn("mbind of %zu bytes failed: %s", len, strerror(e));
    return cllm__status_of_errno(e) == CLLM_ENOTSUP ? CLLM_ENOTSUP : CLLM_ESYS;
  }
  return CLLM_OK;
}

cllm_status_t cllm_topology_bind_area(const cllm_topology_t *t, void *addr, size_t bytes,
                                      int node) {
  if (addr == NULL || bytes == 0) return CLLM_EINVAL;
  cllm_status_t s = bind_check(t, node);
  if (s != CLLM_OK) return s;
  return set_area(addr, bytes, t->nodeset[node], CLLM__PRIM_MPOL_BIND);
}

cllm_status_t cllm_topology_interleave_area(const cllm_topology_t *t, void *addr, size_t bytes,
                                            const int *nodes, int n) {
  if (t == NULL || addr == NULL || bytes == 0 || n < 0 || (n > 0 && nodes == NULL))
    return CLLM_EINVAL;
  for (int i = 0; i < n; i++)
    if (nodes[i] < 0 || nodes[i] >= t->n_nodes) return CLLM_ENOTFOUND;
  if (!t->this_system) return CLLM_ENOTSUP;
  hwloc_bitmap_t set = hwloc_bitmap_alloc();
  if (set == NULL) return CLLM_ENOMEM;
  if (n == 0) {
    for (int i = 0; i < t->n_nodes; i++) hwloc_bitmap_or(set, set, t->nodeset[i]);
  } else {
    for (int i = 0; i < n; i++) hwloc_bitmap_or(set, set, t->nodeset[nodes[i]]);
  }
  cllm_status_t s = set_area(addr, bytes, set, CLLM__PRIM_MPOL_INTERLEAVE);
  hwloc_bitmap_free(set);
  return s;
}
