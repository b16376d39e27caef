/* Criterion tests for the NUMA topology layer (include/cllm/numa.h).
 *
 * Multi-node machines are modelled with hwloc synthetic topologies (1, 2 and 4
 * nodes, CPU numbers interleaved across nodes, as on many two-socket servers) and
 * with an XML export of one of them. Binding is tried on the real machine, and the
 * kernel's own answer is read back with get_mempolicy(MPOL_F_ADDR). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* sched_getcpu, CPU_* macros, syscall */
#endif
#include <criterion/criterion.h>
#include <errno.h>
#include <hwloc.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cllm/numa.h>
#include <cllm/status.h>

#include "lib/internal/fault.h"

#define MPOL_DEFAULT_ 0
#define MPOL_BIND_ 2
#define MPOL_INTERLEAVE_ 3
#define MPOL_F_NODE_ (1 << 0)
#define MPOL_F_ADDR_ (1 << 1)
#define GiB ((size_t)1 << 30)

/* 8 CPUs over 2 nodes, even CPUs on node 0 and odd ones on node 1. */
#define TWO_INTERLEAVED "pack:2 numa:1 core:4 pu:1(indexes=0,2,4,6,1,3,5,7)"
/* 8 CPUs over 4 nodes: node k holds CPUs k and k + 4. */
#define FOUR_INTERLEAVED "pack:4 numa:1 core:2 pu:1(indexes=0,4,1,5,2,6,3,7)"

static void quiet(void) { cllm_set_log_fn(cllm_log_discard, NULL); }

static cllm_topology_t *load(const char *synthetic, int max_nodes) {
  cllm_topology_config_t c = cllm_topology_config_default();
  c.synthetic = synthetic;
  c.max_nodes = max_nodes;
  cllm_topology_t *t = NULL;
  cr_assert_eq(cllm_topology_create(&c, &t), CLLM_OK, "%s", synthetic);
  cr_assert_not_null(t);
  return t;
}

/* The node's CPUs must be exactly `want` (ascending), node_of_cpu must agree. */
static void expect_cpus(const cllm_topology_t *t, int node, const int *want, size_t n) {
  int cpus[64];
  size_t got = 0;
  cr_assert_eq(cllm_topology_node_cpus(t, node, cpus, 64, &got), CLLM_OK);
  cr_assert_eq(got, n, "node %d has %zu cpus, want %zu", node, got, n);
  for (size_t i = 0; i < n; i++) {
    cr_assert_eq(cpus[i], want[i], "node %d cpu[%zu] = %d, want %d", node, i, cpus[i], want[i]);
    cr_assert_eq(cllm_topology_node_of_cpu(t, want[i]), node, "cpu %d", want[i]);
  }
  cllm_numa_node_info_t info;
  cr_assert_eq(cllm_topology_node_info(t, node, &info), CLLM_OK);
  cr_assert_eq(info.index, node);
  cr_assert_eq(info.n_cpus, (int)n);
}

static void expect_not_this_system(const cllm_topology_t *t) {
  cr_assert(!cllm_topology_is_this_system(t));
  cr_assert_eq(cllm_topology_current_node(t), -1);
  cr_assert_eq(cllm_topology_bound_node(t), -1);
  cr_assert_eq(cllm_thread_bind_node(t, 0), CLLM_ENOTSUP);
  char buf[8192] __attribute__((aligned(4096)));
  cr_assert_eq(cllm_topology_bind_area(t, buf, 4096, 0), CLLM_ENOTSUP);
  cr_assert_eq(cllm_topology_interleave_area(t, buf, 4096, NULL, 0), CLLM_ENOTSUP);
}

/* ---- synthetic topologies -------------------------------------------------------- */

Test(numa, synthetic_one_node) {
  cllm_topology_t *t = load("pack:1 core:4 pu:1", 0);
  cr_assert_eq(cllm_topology_nodes(t), 1);
  static const int all[] = {0, 1, 2, 3};
  expect_cpus(t, 0, all, 4);
  cllm_numa_node_info_t info;
  cr_assert_eq(cllm_topology_node_info(t, 0, &info), CLLM_OK);
  cr_assert_eq(info.os_index, 0);
  cr_assert_gt(info.memory_bytes, 0);
  cr_assert_eq(cllm_topology_node_of_cpu(t, 4), -1);
  cr_assert_eq(cllm_topology_node_of_cpu(t, -1), -1);
  cr_assert_eq(cllm_topology_node_of_cpu(t, 1 << 20), -1);
  expect_not_this_system(t);
  cllm_topology_destroy(t);
}

Test(numa, synthetic_two_nodes_interleaved_cpus) {
  cllm_topology_t *t = load(TWO_INTERLEAVED, 0);
  cr_assert_eq(cllm_topology_nodes(t), 2);
  static const int even[] = {0, 2, 4, 6}, odd[] = {1, 3, 5, 7};
  expect_cpus(t, 0, even, 4);
  expect_cpus(t, 1, odd, 4);
  for (int c = 0; c < 8; c++) cr_assert_eq(cllm_topology_node_of_cpu(t, c), c % 2, "cpu %d", c);
  for (int n = 0; n < 2; n++) {
    cllm_numa_node_info_t info;
    cr_assert_eq(cllm_topology_node_info(t, n, &info), CLLM_OK);
    cr_assert_eq(info.os_index, n);
    cr_assert_eq(info.memory_bytes, GiB); /* hwloc's synthetic default */
  }
  /* A short buffer: the count is complete, only `cap` CPUs are written. */
  int cpus[2] = {-7, -7};
  size_t n = 0;
  cr_assert_eq(cllm_topology_node_cpus(t, 1, cpus, 1, &n), CLLM_OK);
  cr_assert_eq(n, 4);
  cr_assert_eq(cpus[0], 1);
  cr_assert_eq(cpus[1], -7);
  cr_assert_eq(cllm_topology_node_cpus(t, 0, NULL, 0, &n), CLLM_OK);
  cr_assert_eq(n, 4);
  expect_not_this_system(t);
  cllm_topology_destroy(t);
}

Test(numa, synthetic_four_nodes_interleaved_cpus) {
  cllm_topology_t *t = load(FOUR_INTERLEAVED, 0);
  cr_assert_eq(cllm_topology_nodes(t), 4);
  for (int n = 0; n < 4; n++) {
    int want[2] = {n, n + 4};
    expect_cpus(t, n, want, 2);
    cllm_numa_node_info_t info;
    cr_assert_eq(cllm_topology_node_info(t, n, &info), CLLM_OK);
    cr_assert_eq(info.os_index, n);
  }
  cr_assert_eq(cllm_topology_node_of_cpu(t, 8), -1);
  cllm_numa_node_info_t info;
  cr_assert_eq(cllm_topology_node_info(t, 4, &info), CLLM_ENOTFOUND);
  size_t n;
  cr_assert_eq(cllm_topology_node_cpus(t, 4, NULL, 0, &n), CLLM_ENOTFOUND);
  cr_assert_eq(cllm_topology_node_cpus(t, -1, NULL, 0, &n), CLLM_ENOTFOUND);
  expect_not_this_system(t);
  cllm_topology_destroy(t);
}

/* max_nodes folds node i >= N onto i % N: its CPUs and memory join that node. */
Test(numa, max_nodes_folds) {
  cllm_topology_t *t = load(FOUR_INTERLEAVED, 2);
  cr_assert_eq(cllm_topology_nodes(t), 2);
  static const int n0[] = {0, 2, 4, 6}, n1[] = {1, 3, 5, 7}; /* nodes {0,2} and {1,3} */
  expect_cpus(t, 0, n0, 4);
  expect_cpus(t, 1, n1, 4);
  cllm_numa_node_info_t info;
  cr_assert_eq(cllm_topology_node_info(t, 0, &info), CLLM_OK);
  cr_assert_eq(info.os_index, 0);
  cr_assert_eq(info.memory_bytes, 2 * GiB);
  cr_assert_eq(cllm_topology_node_info(t, 1, &info), CLLM_OK);
  cr_assert_eq(info.os_index, 1);
  cr_assert_eq(info.memory_bytes, 2 * GiB);
  cllm_topology_destroy(t);

  t = load(FOUR_INTERLEAVED, 3); /* node 3 folds onto node 0 */
  cr_assert_eq(cllm_topology_nodes(t), 3);
  static const int f0[] = {0, 3, 4, 7}, f1[] = {1, 5}, f2[] = {2, 6};
  expect_cpus(t, 0, f0, 4);
  expect_cpus(t, 1, f1, 2);
  expect_cpus(t, 2, f2, 2);
  cllm_topology_destroy(t);

  t = load(FOUR_INTERLEAVED, 1);
  cr_assert_eq(cllm_topology_nodes(t), 1);
  for (int c = 0; c < 8; c++) cr_assert_eq(cllm_topology_node_of_cpu(t, c), 0);
  cllm_topology_destroy(t);

  t = load(FOUR_INTERLEAVED, 16); /* more than there are: all of them */
  cr_assert_eq(cllm_topology_nodes(t), 4);
  cllm_topology_destroy(t);
}

/* The same two-node machine given as hwloc XML (a buffer and a file). */
Test(numa, xml_topology) {
  hwloc_topology_t ht;
  cr_assert_eq(hwloc_topology_init(&ht), 0);
  cr_assert_eq(hwloc_topology_set_synthetic(ht, TWO_INTERLEAVED), 0);
  cr_assert_eq(hwloc_topology_load(ht), 0);
  char *buf = NULL;
  int len = 0;
  cr_assert_eq(hwloc_topology_export_xmlbuffer(ht, &buf, &len, 0), 0);
  char *xml = strdup(buf);
  hwloc_free_xmlbuffer(ht, buf);
  hwloc_topology_destroy(ht);

  cllm_topology_config_t c = cllm_topology_config_default();
  c.xml_buffer = xml;
  cllm_topology_t *t = NULL;
  cr_assert_eq(cllm_topology_create(&c, &t), CLLM_OK);
  cr_assert_eq(cllm_topology_nodes(t), 2);
  static const int even[] = {0, 2, 4, 6}, odd[] = {1, 3, 5, 7};
  expect_cpus(t, 0, even, 4);
  expect_cpus(t, 1, odd, 4);
  cr_assert(!cllm_topology_is_this_system(t));
  cllm_topology_destroy(t);

  char path[] = "/tmp/cllm_numa_test_XXXXXX";
  int fd = mkstemp(path);
  cr_assert_geq(fd, 0);
  cr_assert_eq(write(fd, xml, strlen(xml)), (ssize_t)strlen(xml));
  close(fd);
  c = cllm_topology_config_default();
  c.xml_path = path;
  c.max_nodes = 1;
  cr_assert_eq(cllm_topology_create(&c, &t), CLLM_OK);
  unlink(path);
  cr_assert_eq(cllm_topology_nodes(t), 1);
  static const int all[] = {0, 1, 2, 3, 4, 5, 6, 7};
  expect_cpus(t, 0, all, 8);
  cllm_topology_destroy(t);
  free(xml);
}

Test(numa, bad_input) {
  quiet();
  cllm_topology_config_t c = cllm_topology_config_default();
  cllm_topology_t *t = (cllm_topology_t *)&c;
  cr_assert_eq(cllm_topology_create(&c, NULL), CLLM_EINVAL);
  c.synthetic = "pack:2 core:2 pu:1";
  c.xml_buffer = "<topology/>";
  cr_assert_eq(cllm_topology_create(&c, &t), CLLM_EINVAL); /* two sources */
  cr_assert_null(t);
  c = cllm_topology_config_default();
  c.synthetic = "this is not a topology";
  t = (cllm_topology_t *)&c;
  cr_assert_eq(cllm_topology_create(&c, &t), CLLM_EINVAL);
  cr_assert_null(t);
  c = cllm_topology_config_default();
  c.xml_buffer = "<not xml";
  cr_assert_eq(cllm_topology_create(&c, &t), CLLM_EINVAL);
  c = cllm_topology_config_default();
  c.xml_path = "/nonexistent/topology.xml";
  cr_assert_eq(cllm_topology_create(&c, &t), CLLM_EINVAL);
  c = cllm_topology_config_default();
  c.max_nodes = -1;
  cr_assert_eq(cllm_topology_create(&c, &t), CLLM_EINVAL);
  cr_assert_null(t);
  /* NULL topology */
  cr_assert_eq(cllm_topology_nodes(NULL), 0);
  cr_assert(!cllm_topology_is_this_system(NULL));
  cr_assert_eq(cllm_topology_node_of_cpu(NULL, 0), -1);
  cr_assert_eq(cllm_topology_current_node(NULL), -1);
  cr_assert_eq(cllm_topology_bound_node(NULL), -1);
  cllm_numa_node_info_t info;
  size_t n;
  cr_assert_eq(cllm_topology_node_info(NULL, 0, &info), CLLM_EINVAL);
  cr_assert_eq(cllm_topology_node_cpus(NULL, 0, NULL, 0, &n), CLLM_EINVAL);
  cr_assert_eq(cllm_thread_bind_node(NULL, 0), CLLM_EINVAL);
  char buf[4096];
  cr_assert_eq(cllm_topology_bind_area(NULL, buf, 4096, 0), CLLM_EINVAL);
  cr_assert_eq(cllm_topology_interleave_area(NULL, buf, 4096, NULL, 0), CLLM_EINVAL);
  cllm_topology_destroy(NULL);
  /* Bad arguments on a good topology. */
  t = load("pack:2 numa:1 core:1 pu:1", 0);
  cr_assert_eq(cllm_topology_node_info(t, 0, NULL), CLLM_EINVAL);
  cr_assert_eq(cllm_topology_node_cpus(t, 0, NULL, 4, &n), CLLM_EINVAL);
  cr_assert_eq(cllm_topology_node_cpus(t, 0, (int[1]){0}, 1, NULL), CLLM_EINVAL);
  cr_assert_eq(cllm_thread_bind_node(t, 2), CLLM_ENOTFOUND);
  cr_assert_eq(cllm_topology_bind_area(t, buf, 4096, -1), CLLM_ENOTFOUND);
  cr_assert_eq(cllm_topology_bind_area(t, NULL, 4096, 0), CLLM_EINVAL);
  cr_assert_eq(cllm_topology_bind_area(t, buf, 0, 0), CLLM_EINVAL);
  cr_assert_eq(cllm_topology_interleave_area(t, buf, 4096, (int[1]){5}, 1), CLLM_ENOTFOUND);
  cr_assert_eq(cllm_topology_interleave_area(t, buf, 4096, NULL, 1), CLLM_EINVAL);
  cllm_topology_destroy(t);
}

/* ---- the running machine ---------------------------------------------------------- */

Test(numa, system_topology) {
  const cllm_topology_t *t = cllm_topology_system();
  cr_assert_not_null(t);
  cr_assert_eq(cllm_topology_system(), t); /* loaded once */
  cr_assert(cllm_topology_is_this_system(t));
  int nodes = cllm_topology_nodes(t);
  cr_assert_geq(nodes, 1);
  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  int total = 0;
  for (int n = 0; n < nodes; n++) {
    cllm_numa_node_info_t info;
    cr_assert_eq(cllm_topology_node_info(t, n, &info), CLLM_OK);
    cr_assert_geq(info.os_index, 0);
    cr_assert_gt(info.memory_bytes, 0);
    total += info.n_cpus;
  }
  cr_assert_eq(total, ncpu);
  cpu_set_t set;
  cr_assert_eq(sched_getaffinity(0, sizeof set, &set), 0);
  for (int c = 0; c < CPU_SETSIZE; c++) {
    if (!CPU_ISSET(c, &set)) continue;
    int n = cllm_topology_node_of_cpu(t, c);
    cr_assert(n >= 0 && n < nodes, "cpu %d has node %d", c, n);
  }
  int cur = cllm_topology_current_node(t);
  cr_assert(cur >= 0 && cur < nodes);
  /* The system topology is never destroyed. */
  cllm_topology_destroy((cllm_topology_t *)t);
  cr_assert_eq(cllm_topology_nodes(cllm_topology_system()), nodes);
  /* A created topology of this machine (no source) also binds. */
  cllm_topology_t *mine = NULL;
  cr_assert_eq(cllm_topology_create(NULL, &mine), CLLM_OK);
  cr_assert(cllm_topology_is_this_system(mine));
  cr_assert_eq(cllm_topology_nodes(mine), nodes);
  cllm_topology_destroy(mine);
}

Test(numa, bind_thread_on_this_machine) {
  const cllm_topology_t *t = cllm_topology_system();
  cr_assert_eq(cllm_thread_bind_node(t, 0), CLLM_OK);
  cr_assert_eq(cllm_topology_bound_node(t), 0);
  cr_assert_eq(cllm_topology_current_node(t), 0);
  cr_assert_eq(cllm_topology_node_of_cpu(t, sched_getcpu()), 0);
  cpu_set_t set;
  cr_assert_eq(sched_getaffinity(0, sizeof set, &set), 0);
  int cpus[1024];
  size_t n = 0;
  cr_assert_eq(cllm_topology_node_cpus(t, 0, cpus, 1024, &n), CLLM_OK);
  cr_assert_eq((size_t)CPU_COUNT(&set), n);
  for (size_t i = 0; i < n; i++) cr_assert(CPU_ISSET(cpus[i], &set));
  cr_assert_eq(cllm_thread_bind_node(t, cllm_topology_nodes(t)), CLLM_ENOTFOUND);
  /* A refused binding leaves the thread's binding as it was. */
  cllm_fault_arm(CLLM_FAULT_BIND, 1);
  cr_assert_eq(cllm_thread_bind_node(t, 0), CLLM_ESYS);
  cllm_fault_reset();
  cpu_set_t after;
  cr_assert_eq(sched_getaffinity(0, sizeof after, &after), 0);
  cr_assert(CPU_EQUAL(&set, &after));
}

static int policy_of(const void *addr, unsigned long *mask) {
  int mode = -1;
  long r = syscall(SYS_get_mempolicy, &mode, mask, (unsigned long)(16 * 8 * sizeof(long)), addr,
                   (unsigned long)MPOL_F_ADDR_);
  cr_assert_eq(r, 0, "get_mempolicy: %s", strerror(errno));
  return mode;
}

Test(numa, bind_area_on_this_machine) {
  const cllm_topology_t *t = cllm_topology_system();
  cllm_numa_node_info_t info;
  cr_assert_eq(cllm_topology_node_info(t, 0, &info), CLLM_OK);
  size_t len = 4 << 20;
  char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  cr_assert_neq(p, MAP_FAILED);
  unsigned long mask[16] = {0};
  cr_assert_eq(policy_of(p, mask), MPOL_DEFAULT_);
  /* A refused bind changes nothing. */
  cllm_fault_arm(CLLM_FAULT_BIND, 1);
  cr_assert_eq(cllm_topology_bind_area(t, p, len, 0), CLLM_ESYS);
  cllm_fault_reset();
  cr_assert_eq(policy_of(p, mask), MPOL_DEFAULT_);
  /* Bind before the first touch, then the pages land on the node. */
  cr_assert_eq(cllm_topology_bind_area(t, p, len, 0), CLLM_OK);
  memset(mask, 0, sizeof mask);
  cr_assert_eq(policy_of(p + len - 1, mask), MPOL_BIND_);
  cr_assert_eq(mask[0], 1ul << info.os_index);
  memset(p, 1, len);
  int node = -1;
  cr_assert_eq(syscall(SYS_get_mempolicy, &node, NULL, 0UL, p + len / 2,
                       (unsigned long)(MPOL_F_NODE_ | MPOL_F_ADDR_)), 0);
  cr_assert_eq(node, info.os_index);
  /* Interleave over every node. */
  cr_assert_eq(cllm_topology_interleave_area(t, p, len / 2, NULL, 0), CLLM_OK);
  memset(mask, 0, sizeof mask);
  cr_assert_eq(policy_of(p, mask), MPOL_INTERLEAVE_);
  cr_assert(mask[0] & (1ul << info.os_index));
  cr_assert_eq(policy_of(p + len - 1, mask), MPOL_BIND_); /* the other half kept its bind */
  munmap(p, len);
}
