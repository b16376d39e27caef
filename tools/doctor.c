/* doctor: what this machine offers cllm-mem, and what the library will do here.
 *
 *   tools/bazel run //tools:doctor
 *
 * Prints the NUMA nodes (CPUs, memory), transparent huge page mode, reserved huge
 * pages, RLIMIT_MEMLOCK and whether this process may lock beyond it, automatic NUMA
 * balancing, the versions of cllm-mem, mimalloc and hwloc, and the heap mode the
 * library uses here (it creates a small heaps object to find out). Read-only apart
 * from that object; always exits 0 (a missing file is reported, not fatal).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <hwloc.h>
#include <mimalloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cllm/heap.h>
#include <cllm/numa.h>
#include <cllm/status.h>
#include <cllm/version.h>

#define CAP_IPC_LOCK_BIT 14

/* The first line of a file, without the newline; "" and false if unreadable. */
static bool read_line(const char *path, char *buf, size_t cap) {
  buf[0] = '\0';
  FILE *f = fopen(path, "r");
  if (f == NULL) return false;
  bool ok = fgets(buf, (int)cap, f) != NULL;
  fclose(f);
  buf[strcspn(buf, "\n")] = '\0';
  return ok;
}

/* A /proc/meminfo or /proc/self/status field ("Name:"), or false. */
static bool read_field(const char *path, const char *name, char *buf, size_t cap) {
  FILE *f = fopen(path, "r");
  if (f == NULL) return false;
  char line[256];
  size_t n = strlen(name);
  bool found = false;
  while (fgets(line, sizeof line, f) != NULL) {
    if (strncmp(line, name, n) == 0 && line[n] == ':') {
      const char *v = line + n + 1;
      while (*v == ' ' || *v == '\t') v++;
      snprintf(buf, cap, "%s", v);
      buf[strcspn(buf, "\n")] = '\0';
      found = true;
      break;
    }
  }
  fclose(f);
  return found;
}

static void print_size(size_t b) {
  if (b >= ((size_t)1 << 30)) printf("%.1f GiB", (double)b / (double)((size_t)1 << 30));
  else if (b >= ((size_t)1 << 20)) printf("%.1f MiB", (double)b / (double)((size_t)1 << 20));
  else printf("%zu KiB", b >> 10);
}

/* CPUs as ranges: 0-3,8,10-11 */
static void print_cpus(const int *c, size_t n) {
  for (size_t i = 0; i < n;) {
    size_t j = i;
    while (j + 1 < n && c[j + 1] == c[j] + 1) j++;
    printf("%s%d", i ? "," : "", c[i]);
    if (j > i) printf("-%d", c[j]);
    i = j + 1;
  }
}

static void section(const char *name) { printf("\n%s\n", name); }

static void numa(void) {
  section("NUMA topology (hwloc)");
  const cllm_topology_t *t = cllm_topology_system();
  if (t == NULL) {
    printf("  hwloc could not load this machine's topology\n");
    return;
  }
  int nodes = cllm_topology_nodes(t);
  const char *cap = getenv("CLLM_NUMA_MAX_NODES");
  printf("  nodes: %d%s%s%s\n", nodes, cap ? " (CLLM_NUMA_MAX_NODES=" : "", cap ? cap : "",
         cap ? ")" : "");
  for (int n = 0; n < nodes; n++) {
    cllm_numa_node_info_t info;
    if (cllm_topology_node_info(t, n, &info) != CLLM_OK) continue;
    int cpus[4096];
    size_t nc = 0;
    if (cllm_topology_node_cpus(t, n, cpus, 4096, &nc) != CLLM_OK) nc = 0;
    printf("  node %d (OS node %d): ", n, info.os_index);
    print_size(info.memory_bytes);
    printf(", %d CPUs: ", info.n_cpus);
    print_cpus(cpus, nc < 4096 ? nc : 4096);
    printf("\n");
  }
  int cur = cllm_topology_current_node(t);
  printf("  this thread runs on node %d\n", cur);
}

static void huge_pages(void) {
  char en[256], df[256];
  section("Huge pages");
  if (read_line("/sys/kernel/mm/transparent_hugepage/enabled", en, sizeof en))
    printf("  THP enabled: %s\n", en);
  else
    printf("  THP enabled: (no /sys/kernel/mm/transparent_hugepage: the kernel has no THP)\n");
  if (read_line("/sys/kernel/mm/transparent_hugepage/defrag", df, sizeof df))
    printf("  THP defrag:  %s\n", df);
  if (en[0] != '\0' && strstr(en, "[never]") == NULL)
    printf("  => regions advised with MADV_HUGEPAGE (heaps, weights) can get huge pages\n");
  else
    printf("  => no transparent huge pages: regions use 4 KiB pages\n");
  char total[64] = "?", free_[64] = "?", size[64] = "?";
  read_field("/proc/meminfo", "HugePages_Total", total, sizeof total);
  read_field("/proc/meminfo", "HugePages_Free", free_, sizeof free_);
  read_field("/proc/meminfo", "Hugepagesize", size, sizeof size);
  printf("  reserved huge pages (hugetlbfs): total %s, free %s, size %s\n", total, free_, size);
  if (strcmp(total, "0") == 0)
    printf("  => no hugetlbfs pages reserved: explicit huge page mappings (MAP_HUGETLB) fail here\n");
}

static void memlock(void) {
  section("Locking memory");
  struct rlimit rl;
  if (getrlimit(RLIMIT_MEMLOCK, &rl) == 0) {
    printf("  RLIMIT_MEMLOCK: soft ");
    if (rl.rlim_cur == RLIM_INFINITY) printf("unlimited");
    else print_size((size_t)rl.rlim_cur);
    printf(", hard ");
    if (rl.rlim_max == RLIM_INFINITY) printf("unlimited");
    else print_size((size_t)rl.rlim_max);
    printf("\n");
  } else {
    printf("  RLIMIT_MEMLOCK: getrlimit failed: %s\n", strerror(errno));
  }
  char caps[64] = "";
  bool cap_lock = false;
  if (read_field("/proc/self/status", "CapEff", caps, sizeof caps))
    cap_lock = (strtoull(caps, NULL, 16) >> CAP_IPC_LOCK_BIT) & 1;
  bool root = geteuid() == 0;
  printf("  euid %u%s, CAP_IPC_LOCK %s\n", (unsigned)geteuid(), root ? " (root)" : "",
         cap_lock ? "yes" : "no");
  if (cap_lock)
    printf("  => this process can lock beyond RLIMIT_MEMLOCK (weights locking can succeed)\n");
  else if (rl.rlim_cur == RLIM_INFINITY)
    printf("  => no lock limit\n");
  else
    printf("  => locking stops at the soft limit: best-effort locking falls short, required "
           "locking fails\n");
}

static void balancing(void) {
  char buf[64];
  section("Automatic NUMA balancing");
  if (read_line("/proc/sys/kernel/numa_balancing", buf, sizeof buf))
    printf("  /proc/sys/kernel/numa_balancing = %s%s\n", buf,
           strcmp(buf, "0") == 0 ? " (off)"
                                 : " (on: the kernel may migrate pages; bound regions stay put)");
  else
    printf("  /proc/sys/kernel/numa_balancing: absent (kernel without NUMA balancing)\n");
}

static void versions(void) {
  section("Versions");
  printf("  cllm-mem: %s (header %s)\n", cllm_version_string(), CLLM_VERSION_STRING);
  int mv = mi_version();
  printf("  mimalloc: %d.%d.%d (header %d)\n", mv / 100, (mv / 10) % 10, mv % 10,
         MI_MALLOC_VERSION);
  unsigned hv = hwloc_get_api_version();
  printf("  hwloc: API 0x%05x at run time, 0x%05x at build time (HWLOC_API_VERSION)\n", hv,
         (unsigned)HWLOC_API_VERSION);
  if ((hv >> 16) != (HWLOC_API_VERSION >> 16))
    printf("  WARNING: hwloc major version differs between build and run time\n");
}

static void heap_mode(void) {
  section("Per-thread heaps");
  cllm_set_log_fn(cllm_log_discard, NULL); /* the outcome is printed below */
  cllm_heaps_config_t cfg = cllm_heaps_config_default();
  cfg.bytes_per_node = (size_t)32 << 20;
  cllm_heaps_t *h = NULL;
  cllm_status_t s = cllm_heaps_create(&cfg, &h);
  cllm_set_log_fn(NULL, NULL);
  if (s != CLLM_OK) {
    printf("  cllm_heaps_create failed: %s (%s)\n", cllm_status_name(s), cllm_status_str(s));
    return;
  }
  void *p = cllm_heap_alloc(h, 64);
  cllm_heaps_stats_t st;
  st.struct_size = sizeof st;
  if (cllm_heaps_stats(h, &st) == CLLM_OK) {
    printf("  mode: %s", cllm_heap_mode_name(st.mode));
    switch (st.mode) {
    case CLLM_HEAP_MODE_NUMA:
      printf(" (one bound exclusive mimalloc arena per node)\n");
      break;
    case CLLM_HEAP_MODE_SINGLE:
      printf(" (one node: one exclusive mimalloc arena)\n");
      break;
    case CLLM_HEAP_MODE_PLAIN:
      printf(" (regions could not be set up: plain per-thread mimalloc heaps)\n");
      break;
    }
    for (int i = 0; i < st.nodes; i++) {
      printf("  node %d: region ", i);
      print_size(st.node[i].region_bytes);
      if (st.node[i].bound) printf(", bound to OS node %d", st.node[i].os_node);
      else if (st.node[i].region_bytes != 0) printf(", not bound (first touch decides)");
      printf("\n");
    }
    printf("  a %s allocation from this thread: %s\n", "64-byte",
           p != NULL ? "ok" : cllm_status_name(cllm_last_status()));
  }
  cllm_heap_free(h, p);
  cllm_heaps_destroy(h);
}

int main(void) {
  printf("cllm-mem doctor\n");
  numa();
  huge_pages();
  memlock();
  balancing();
  versions();
  heap_mode();
  return 0;
}
