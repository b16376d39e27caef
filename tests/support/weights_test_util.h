/* What the weights suites (tests/weights_*_test.c) share: their includes, configs and
 * stats, the memory policy of an address, generated files with their checksums, a log
 * capture, and the per-node page figures. Failures of the helpers' own calls fail the
 * test (cr_assert). */
#ifndef CLLM_TEST_WEIGHTS_TEST_UTIL_H
#define CLLM_TEST_WEIGHTS_TEST_UTIL_H

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cllm/numa.h>
#include <cllm/weights.h>

#include "fixtures.h"
#include "lib/internal/fault.h"
#include "proc_status.h"

#ifndef MiB
#define MiB ((size_t)1 << 20)
#endif
#define MPOL_DEFAULT_ 0
#define MPOL_BIND_ 2
#define MPOL_INTERLEAVE_ 3
#define MPOL_F_ADDR_ 2

/* A field of /proc/self/status in kB ("VmSize", "VmLck"); the file must be readable. */
static inline size_t proc_status_kib_checked(const char *field) {
  cr_assert_eq(access("/proc/self/status", R_OK), 0);
  return proc_status_kib(field);
}

static inline cllm_weights_config_t cfg_with(cllm_monitor_t *m, size_t cap) {
  cllm_weights_config_t c = cllm_weights_config_default();
  c.capacity_bytes = cap;
  c.monitor = m;
  return c;
}

static inline cllm_weights_stats_t stats_of(const cllm_weights_t *w) {
  cllm_weights_stats_t st;
  memset(&st, 0xAB, sizeof st);
  st.struct_size = sizeof st;
  cr_assert_eq(cllm_weights_stats(w, &st), CLLM_OK);
  return st;
}

static inline size_t used_of(const cllm_weights_t *w) { return stats_of(w).used_bytes; }

static inline int policy_of(const void *addr, unsigned long *mask) {
  int mode = -1;
  unsigned long m[16] = {0};
  cr_assert_eq(syscall(SYS_get_mempolicy, &mode, m, sizeof m * 8, addr, MPOL_F_ADDR_), 0,
               "get_mempolicy: %s", strerror(errno));
  *mask = m[0];
  return mode;
}

static inline bool all_zero(const void *p, size_t n) {
  const unsigned char *b = p;
  for (size_t i = 0; i < n; i++)
    if (b[i] != 0) return false;
  return true;
}

static inline const char *tmp_dir(void) {
  const char *d = getenv("TEST_TMPDIR");
  return d != NULL && *d != '\0' ? d : "/tmp";
}

/* Deterministic file content: word i of the file is mix(seed, i). */
static inline uint64_t mix(uint64_t seed, uint64_t i) {
  uint64_t z = seed + i * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static inline uint64_t checksum(const void *p, size_t n) {
  const unsigned char *b = p;
  uint64_t h = 0xcbf29ce484222325ull;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t v;
    memcpy(&v, b + i, 8);
    h = (h ^ v) * 0x100000001b3ull;
    h ^= h >> 29;
  }
  for (; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
  return h;
}

/* Write `bytes` (a multiple of 8) of generated data; return the path (static) and
 * the checksum of bytes [csum_off, csum_off + csum_len). */
static char g_path[512];
static inline const char *make_file(size_t bytes, uint64_t seed, size_t csum_off, size_t csum_len,
                             uint64_t *csum) {
  snprintf(g_path, sizeof g_path, "%s/weights_test_%d_%llu.bin", tmp_dir(), (int)getpid(),
           (unsigned long long)seed);
  int fd = open(g_path, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0600);
  cr_assert(fd >= 0, "open %s: %s", g_path, strerror(errno));
  size_t buf_words = MiB;  /* 8 MiB buffer */
  uint64_t *buf = malloc(buf_words * 8);
  cr_assert_not_null(buf);
  for (size_t done = 0; done < bytes;) {
    size_t n = bytes - done < buf_words * 8 ? bytes - done : buf_words * 8;
    for (size_t k = 0; k < n / 8; k++) buf[k] = mix(seed, done / 8 + k);
    cr_assert_eq(write(fd, buf, n), (ssize_t)n);
    done += n;
  }
  free(buf);
  cr_assert_eq(close(fd), 0);
  if (csum != NULL) {
    /* Checksum of the wanted range, regenerated independently of any load. */
    unsigned char *tmp = malloc(csum_len);
    cr_assert_not_null(tmp);
    size_t w0 = csum_off / 8, w1 = (csum_off + csum_len + 7) / 8;
    uint64_t *words = malloc((w1 - w0) * 8);
    cr_assert_not_null(words);
    for (size_t k = w0; k < w1; k++) words[k - w0] = mix(seed, k);
    memcpy(tmp, (unsigned char *)words + (csum_off - w0 * 8), csum_len);
    *csum = checksum(tmp, csum_len);
    free(words);
    free(tmp);
  }
  return g_path;
}

static char g_log[1024];
static int g_warns;
static inline void capture_log(void *user, cllm_log_level_t level, const char *msg) {
  (void)user;
  if (level >= CLLM_LOG_WARN) {
    g_warns++;
    snprintf(g_log, sizeof g_log, "%s", msg);
  }
}

static inline int os_node0(void) {
  cllm_numa_node_info_t info;
  cr_assert_eq(cllm_topology_node_info(cllm_topology_system(), 0, &info), CLLM_OK);
  return info.os_index;
}

/* Seals first: seal commits the pages no alloc or load wrote. */
static inline void check_pages_add_up(cllm_weights_t *w) {
  cr_assert_eq(cllm_weights_seal(w), CLLM_OK);
  cllm_weights_stats_t st = stats_of(w);
  cr_assert_eq(st.readback_status, CLLM_OK);
  cr_assert_eq(st.page_bytes, (size_t)sysconf(_SC_PAGESIZE));
  size_t sum = st.pages_other;
  for (int i = 0; i < CLLM_WEIGHTS_MAX_NODES; i++) sum += st.pages_per_node[i];
  cr_assert_eq(st.pages_absent, 0, "every page committed");
  cr_assert_eq(sum, st.committed_bytes / st.page_bytes, "pages per node add up to committed");
  if (cllm_topology_nodes(cllm_topology_system()) == 1) {
    int n0 = os_node0();
    cr_assert_eq(st.pages_per_node[n0], st.committed_bytes / st.page_bytes, "100%% on node 0");
    cr_assert_eq(st.pages_nodes, n0 + 1);
  }
}

#endif /* CLLM_TEST_WEIGHTS_TEST_UTIL_H */
