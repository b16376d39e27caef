/* Criterion suite for the pinned weights heap (lib/weights.c): placement read back
 * from the kernel, locking (as root, in a forked child without CAP_IPC_LOCK, and by
 * fault injection), sealing (a forked child dies writing), bit-exact loads of a
 * generated file, load failures that leave the heap as it was, huge pages, fault
 * injection for every OS call, and bad input. Each Test runs in its own process. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cllm/weights.h>

#include "lib/internal/fault.h"

#define MiB ((size_t)1 << 20)
#define MPOL_DEFAULT_ 0
#define MPOL_BIND_ 2
#define MPOL_INTERLEAVE_ 3
#define MPOL_F_ADDR_ 2

/* ---- helpers -------------------------------------------------------------------- */

static cllm_monitor_t *mk_monitor(size_t limit) {
  cllm_monitor_config_t cfg = cllm_monitor_config_default();
  cfg.limit_bytes = limit;
  cllm_monitor_t *m = NULL;
  cr_assert_eq(cllm_monitor_create(&cfg, &m), CLLM_OK);
  return m;
}

static cllm_weights_config_t cfg_with(cllm_monitor_t *m, size_t cap) {
  cllm_weights_config_t c = cllm_weights_config_default();
  c.capacity_bytes = cap;
  c.monitor = m;
  return c;
}

static cllm_weights_stats_t stats_of(const cllm_weights_t *w) {
  cllm_weights_stats_t st;
  memset(&st, 0xAB, sizeof st);
  st.struct_size = sizeof st;
  cr_assert_eq(cllm_weights_stats(w, &st), CLLM_OK);
  return st;
}

static size_t used_of(const cllm_weights_t *w) { return stats_of(w).used_bytes; }

/* A field of /proc/self/status in kB ("VmSize", "VmLck"). */
static size_t proc_status_kb(const char *field) {
  FILE *f = fopen("/proc/self/status", "r");
  cr_assert_not_null(f);
  char line[256];
  size_t v = 0, n = strlen(field);
  while (fgets(line, sizeof line, f) != NULL)
    if (strncmp(line, field, n) == 0 && line[n] == ':') v = strtoull(line + n + 1, NULL, 10);
  fclose(f);
  return v;
}

static int policy_of(const void *addr, unsigned long *mask) {
  int mode = -1;
  unsigned long m[16] = {0};
  cr_assert_eq(syscall(SYS_get_mempolicy, &mode, m, sizeof m * 8, addr, MPOL_F_ADDR_), 0,
               "get_mempolicy: %s", strerror(errno));
  *mask = m[0];
  return mode;
}

static bool all_zero(const void *p, size_t n) {
  const unsigned char *b = p;
  for (size_t i = 0; i < n; i++)
    if (b[i] != 0) return false;
  return true;
}

static const char *tmp_dir(void) {
  const char *d = getenv("TEST_TMPDIR");
  return d != NULL && *d != '\0' ? d : "/tmp";
}

/* Deterministic file content: word i of the file is mix(seed, i). */
static uint64_t mix(uint64_t seed, uint64_t i) {
  uint64_t z = seed + i * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static uint64_t checksum(const void *p, size_t n) {
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
static const char *make_file(size_t bytes, uint64_t seed, size_t csum_off, size_t csum_len,
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
static void capture_log(void *user, cllm_log_level_t level, const char *msg) {
  (void)user;
  if (level >= CLLM_LOG_WARN) {
    g_warns++;
    snprintf(g_log, sizeof g_log, "%s", msg);
  }
}

/* ---- config and bad input ---------------------------------------------------------- */

Test(weights, config_defaults) {
  cllm_weights_config_t c = cllm_weights_config_default();
  cr_assert_eq(c.struct_size, sizeof c);
  cr_assert_eq(c.capacity_bytes, 0);
  cr_assert_eq(c.numa, CLLM_WEIGHTS_NUMA_LOCAL);
  cr_assert_eq(c.huge_pages, CLLM_WEIGHTS_HUGE_TRANSPARENT);
  cr_assert_eq(c.lock, CLLM_WEIGHTS_LOCK_OFF);
  cr_assert_eq(c.reader_threads, 0, "auto");
  cr_assert_eq(c.read_chunk_bytes, 0);
  cr_assert_null(c.monitor);
  cr_assert_null(c.topology);
  cr_assert_str_eq(cllm_weights_numa_name(CLLM_WEIGHTS_NUMA_INTERLEAVE), "interleave");
  cr_assert_str_eq(cllm_weights_huge_name(CLLM_WEIGHTS_HUGE_HUGETLBFS), "hugetlbfs");
  cr_assert_str_eq(cllm_weights_lock_name(CLLM_WEIGHTS_LOCK_BEST_EFFORT), "best_effort");
  cr_assert_str_eq(cllm_weights_numa_name((cllm_weights_numa_t)42), "unknown");
}

Test(weights, create_rejects_bad_config) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_weights_t *w = (cllm_weights_t *)&w;
  cllm_weights_config_t c = cfg_with(m, MiB);
  cr_assert_eq(cllm_weights_create(NULL, &w), CLLM_EINVAL);
  cr_assert_null(w);
  cr_assert_eq(cllm_weights_create(&c, NULL), CLLM_EINVAL);
  struct { size_t *field; size_t v; } sz[] = {{&c.capacity_bytes, 0}, {&c.struct_size, 0},
                                              {&c.capacity_bytes, SIZE_MAX}};
  cllm_status_t want[] = {CLLM_EINVAL, CLLM_EINVAL, CLLM_EOVERFLOW};
  for (size_t i = 0; i < sizeof sz / sizeof sz[0]; i++) {
    c = cfg_with(m, MiB);
    *sz[i].field = sz[i].v;
    w = (cllm_weights_t *)&w;
    cr_assert_eq(cllm_weights_create(&c, &w), want[i], "case %zu", i);
    cr_assert_null(w);
  }
  /* SIZE_MAX - page: rounds fine for base pages, not for 2 MiB. */
  c = cfg_with(m, SIZE_MAX - 4096);
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_EOVERFLOW);
  c.huge_pages = CLLM_WEIGHTS_HUGE_OFF;
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_ENOMEM, "SIZE_MAX-4096 cannot be mapped");
  c = cfg_with(m, MiB), c.numa = (cllm_weights_numa_t)7;
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_EINVAL);
  c = cfg_with(m, MiB), c.huge_pages = (cllm_weights_huge_t)-1;
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_EINVAL);
  c = cfg_with(m, MiB), c.lock = (cllm_weights_lock_t)3;
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_EINVAL);
  c = cfg_with(m, MiB), c.reader_threads = -1;
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_EINVAL);
  c.reader_threads = 65;
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_EINVAL);
  c = cfg_with(m, MiB), c.numa = CLLM_WEIGHTS_NUMA_BIND, c.node = 4096;
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_EINVAL);
  c.node = -1;
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_EINVAL);
  int bad_nodes[] = {0, 999};
  c = cfg_with(m, MiB), c.numa = CLLM_WEIGHTS_NUMA_INTERLEAVE;
  c.interleave_nodes = bad_nodes, c.n_interleave_nodes = 2;
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_EINVAL);
  c.interleave_nodes = NULL, c.n_interleave_nodes = 1;
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_EINVAL);
  cr_assert_null(w);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_COUNT), 0, "nothing charged by refusals");
  cllm_weights_destroy(NULL);
  cr_assert_null(cllm_weights_base(NULL));
  cr_assert_eq(cllm_weights_check(NULL), CLLM_EINVAL);
  cr_assert_eq(cllm_weights_seal(NULL), CLLM_EINVAL);
  cllm_weights_stats_t st = {.struct_size = sizeof st};
  cr_assert_eq(cllm_weights_stats(NULL, &st), CLLM_EINVAL);
  cllm_monitor_destroy(m);
}

Test(weights, alloc_and_load_reject_bad_input) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_weights_config_t c = cfg_with(m, MiB);
  cllm_weights_t *w;
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_OK);
  void *p = &p;
  cr_assert_eq(cllm_weights_alloc(NULL, 64, 0, &p), CLLM_EINVAL);
  cr_assert_null(p);
  cr_assert_eq(cllm_weights_alloc(w, 64, 0, NULL), CLLM_EINVAL);
  cr_assert_eq(cllm_weights_alloc(w, 0, 0, &p), CLLM_EINVAL);
  cr_assert_eq(cllm_weights_alloc(w, 64, 3, &p), CLLM_EINVAL);
  cr_assert_eq(cllm_weights_alloc(w, 64, SIZE_MAX, &p), CLLM_EINVAL);
  cr_assert_eq(cllm_weights_alloc(w, SIZE_MAX, 0, &p), CLLM_ENOMEM);
  cr_assert_eq(cllm_weights_alloc(w, 64, (size_t)1 << 63, &p), CLLM_ENOMEM);
  cr_assert_null(p);
  const char *path = make_file(4096, 3, 0, 0, NULL);
  cr_assert_eq(cllm_weights_load_path(w, NULL, 0, 10, &p), CLLM_EINVAL);
  cr_assert_eq(cllm_weights_load_path(w, path, 0, 0, &p), CLLM_EINVAL);
  cr_assert_eq(cllm_weights_load_path(NULL, path, 0, 1, &p), CLLM_EINVAL);
  cr_assert_eq(cllm_weights_load_path(w, path, 0, 1, NULL), CLLM_EINVAL);
  cr_assert_eq(cllm_weights_load_fd(w, -1, 0, 10, &p), CLLM_EINVAL);
  int fd = open(path, O_RDONLY);
  cr_assert(fd >= 0);
  cr_assert_eq(close(fd), 0);
  cr_assert_eq(cllm_weights_load_fd(w, fd, 0, 1, &p), CLLM_EINVAL, "closed fd");
  cr_assert_eq(cllm_weights_load_fd(w, 0x7ffffff0, 0, 1, &p), CLLM_EINVAL, "never-open fd");
  cr_assert_eq(cllm_weights_load_path(w, path, UINT64_MAX, 2, &p), CLLM_EOVERFLOW);
  cr_assert_eq(unlink(path), 0);
  cllm_weights_stats_t st = {.struct_size = 8};
  cr_assert_eq(cllm_weights_stats(w, &st), CLLM_EINVAL);
  cr_assert_eq(used_of(w), 0);
  cr_assert_eq(cllm_weights_check(w), CLLM_OK);
  cllm_weights_destroy(w);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_WEIGHTS), 0);
  cllm_monitor_destroy(m);
}

/* ---- allocation and the monitor ------------------------------------------------------ */

Test(weights, bump_alloc_aligns_zero_fills_and_stops_at_capacity) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_weights_config_t c = cfg_with(m, 4 * MiB);
  c.huge_pages = CLLM_WEIGHTS_HUGE_OFF;
  cllm_weights_t *w;
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_OK);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_WEIGHTS), 4 * MiB, "charged for what is committed");
  const char *base = cllm_weights_base(w);
  cr_assert_eq((uintptr_t)base % 4096, 0);
  void *a, *b, *pg, *big;
  cr_assert_eq(cllm_weights_alloc(w, 3, 0, &a), CLLM_OK);
  cr_assert_eq(a, base);
  cr_assert_eq(cllm_weights_alloc(w, 100, 0, &b), CLLM_OK);
  cr_assert_eq((uintptr_t)b % 64, 0);
  cr_assert_eq((char *)b, base + 64);
  cr_assert_eq(cllm_weights_alloc(w, 10, 4096, &pg), CLLM_OK);
  cr_assert_eq((char *)pg, base + 4096, "page alignment");
  cr_assert_eq(cllm_weights_alloc(w, 8, 1, &a), CLLM_OK);
  cr_assert_eq((char *)a, base + 4096 + 10, "align 1 packs");
  cr_assert(all_zero(b, 100) && all_zero(pg, 10));
  memset(b, 0x5a, 100);
  cr_assert_eq(used_of(w), 4096 + 18);
  /* Fill the rest exactly; then nothing more fits and nothing changes. */
  size_t left = 4 * MiB - (4096 + 18);
  cr_assert_eq(cllm_weights_alloc(w, left + 1, 1, &big), CLLM_ENOMEM);
  cr_assert_null(big);
  cr_assert_eq(used_of(w), 4096 + 18);
  cr_assert_eq(cllm_weights_alloc(w, left, 1, &big), CLLM_OK);
  cr_assert(all_zero(big, left));
  cr_assert_eq(cllm_weights_alloc(w, 1, 1, &a), CLLM_ENOMEM);
  cllm_weights_stats_t st = stats_of(w);
  cr_assert_eq(st.used_bytes, 4 * MiB);
  cr_assert_eq(st.capacity_bytes, 4 * MiB);
  cr_assert_eq(st.committed_bytes, 4 * MiB);
  cr_assert_eq(cllm_weights_check(w), CLLM_OK);
  cllm_weights_destroy(w);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_WEIGHTS), 0);
  cllm_monitor_destroy(m);
}

Test(weights, capacity_is_rounded_and_charged) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_weights_config_t c = cfg_with(m, 1);
  c.huge_pages = CLLM_WEIGHTS_HUGE_OFF;
  cllm_weights_t *w;
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_OK);
  cr_assert_eq(stats_of(w).capacity_bytes, (size_t)sysconf(_SC_PAGESIZE));
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_WEIGHTS), (size_t)sysconf(_SC_PAGESIZE));
  cllm_weights_destroy(w);
  c.huge_pages = CLLM_WEIGHTS_HUGE_TRANSPARENT;
  c.capacity_bytes = 3 * MiB;
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_OK);
  cr_assert_eq(stats_of(w).capacity_bytes, 4 * MiB);
  cr_assert_eq((uintptr_t)cllm_weights_base(w) % (2 * MiB), 0, "THP region 2 MiB aligned");
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_WEIGHTS), 4 * MiB);
  cllm_weights_destroy(w);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_WEIGHTS), 0);
  cllm_monitor_destroy(m);
}

Test(weights, footprint_is_what_create_charges_and_resident_never_passes_it) {
  cllm_monitor_t *m = mk_monitor(0);
  size_t caps[] = {1, 3 * MiB, 5 * MiB + 7};
  for (int huge = 0; huge < 2; huge++) {
    for (size_t i = 0; i < sizeof caps / sizeof caps[0]; i++) {
      cllm_weights_config_t c = cfg_with(m, caps[i]);
      c.huge_pages = huge ? CLLM_WEIGHTS_HUGE_TRANSPARENT : CLLM_WEIGHTS_HUGE_OFF;
      size_t fp = cllm_weights_footprint(&c);
      cllm_weights_t *w;
      cr_assert_eq(cllm_weights_create(&c, &w), CLLM_OK);
      cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_WEIGHTS), fp, "cap %zu huge %d", caps[i], huge);
      cllm_weights_stats_t st = stats_of(w);
      cr_assert_eq(st.readback_status, CLLM_OK);
      cr_assert_leq(st.resident_bytes, fp);
      cr_assert_eq(st.resident_bytes, 0, "nothing resident before the first write");
      cr_assert_eq(cllm_weights_seal(w), CLLM_OK);
      st = stats_of(w);
      cr_assert_eq(st.resident_bytes, st.capacity_bytes, "seal commits the rest");
      cr_assert_leq(st.resident_bytes, fp);
      cllm_weights_destroy(w);
    }
  }
  cllm_weights_config_t c = cfg_with(m, 0);
  cr_assert_eq(cllm_weights_footprint(&c), 0);  // create refuses it
  cr_assert_eq(cllm_weights_footprint(NULL), 0);
  cllm_monitor_destroy(m);
}

/* Create commits nothing; a load commits its own range (one commit step per 64 MiB),
 * then reads; resident never passes the charge taken at create. A partial fill
 * commits the rest at seal. */
Test(weights, a_load_commits_its_range_then_reads_it) {
  cllm_monitor_t *m = mk_monitor(0);
  uint64_t csum;
  const char *path = make_file(6 * MiB, 43, 0, 6 * MiB, &csum);
  for (int huge = 0; huge < 2; huge++) {
    cllm_weights_config_t c = cfg_with(m, 6 * MiB);
    c.huge_pages = huge ? CLLM_WEIGHTS_HUGE_TRANSPARENT : CLLM_WEIGHTS_HUGE_OFF;
    c.reader_threads = 2, c.read_chunk_bytes = MiB;
    cllm_weights_t *w;
    cr_assert_eq(cllm_weights_create(&c, &w), CLLM_OK);
    cllm_weights_stats_t st = stats_of(w);
    cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_WEIGHTS), st.capacity_bytes, "charged first");
    cr_assert_eq(st.resident_bytes, 0);
    cllm_fault_reset();
    unsigned long madvise0 = cllm_fault_calls(CLLM_FAULT_MADVISE);
    void *p;
    cr_assert_eq(cllm_weights_load_path(w, path, 0, CLLM_WEIGHTS_TO_EOF, &p), CLLM_OK);
    cr_assert_eq(cllm_fault_calls(CLLM_FAULT_MADVISE), madvise0 + 1, "one step (huge %d)", huge);
    cr_assert_eq(checksum(p, 6 * MiB), csum);
    st = stats_of(w);
    cr_assert_eq(st.resident_bytes, st.capacity_bytes, "written once, so resident");
    cr_assert_eq(st.pages_absent, 0);
    cr_assert_leq(st.resident_bytes, cllm_monitor_used(m, CLLM_CAT_WEIGHTS));
    cr_assert_eq(cllm_weights_seal(w), CLLM_OK);
    cr_assert_eq(cllm_fault_calls(CLLM_FAULT_MADVISE), madvise0 + 1, "nothing left for seal");
    cr_assert_eq(cllm_weights_check(w), CLLM_OK);
    cllm_weights_destroy(w);
  }
  /* Partial: an alloc commits its pages, a load its own, seal the rest; resident
   * stays at or below the charge at every step. */
  cllm_weights_config_t c = cfg_with(m, 16 * MiB);
  c.huge_pages = CLLM_WEIGHTS_HUGE_OFF;
  cllm_weights_t *w;
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_OK);
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  void *a, *p;
  cr_assert_eq(cllm_weights_alloc(w, 10, 0, &a), CLLM_OK);
  cr_assert_geq(stats_of(w).resident_bytes, page, "alloc commits its page");
  cr_assert_eq(cllm_weights_alloc(w, 3 * page, page, &a), CLLM_OK);
  cr_assert_geq(stats_of(w).resident_bytes, 4 * page);
  cr_assert_eq(cllm_weights_load_path(w, path, MiB, 2 * MiB, &p), CLLM_OK);
  /* (more where the kernel has THP "always": a commit step may fault huge pages) */
  cr_assert_geq(stats_of(w).resident_bytes, 4 * page + 2 * MiB);
  cr_assert_eq(cllm_weights_check(w), CLLM_OK);
  cr_assert_leq(stats_of(w).resident_bytes, cllm_monitor_used(m, CLLM_CAT_WEIGHTS));
  cr_assert_eq(cllm_weights_seal(w), CLLM_OK);
  cr_assert_eq(stats_of(w).resident_bytes, 16 * MiB);
  cr_assert_eq(cllm_weights_check(w), CLLM_OK);
  cllm_weights_destroy(w);
  unlink(path);
  cllm_monitor_destroy(m);
}

Test(weights, load_to_eof_reads_the_rest_of_the_file) {
  cllm_monitor_t *m = mk_monitor(0);
  uint64_t csum;
  const char *path = make_file(3 * MiB, 41, 4096, 3 * MiB - 4096, &csum);
  cllm_weights_config_t c = cfg_with(m, 4 * MiB);
  cllm_weights_t *w;
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_OK);
  void *p;
  cr_assert_eq(cllm_weights_load_path(w, path, 4096, CLLM_WEIGHTS_TO_EOF, &p), CLLM_OK);
  cr_assert_eq(checksum(p, 3 * MiB - 4096), csum);
  cr_assert_eq(stats_of(w).loaded_bytes, 3 * MiB - 4096);
  cr_assert_eq(cllm_weights_load_path(w, path, 3 * MiB, CLLM_WEIGHTS_TO_EOF, &p), CLLM_ERANGE);
  cr_assert_null(p);
  cr_assert_eq(cllm_weights_load_path(w, path, 3 * MiB + 1, CLLM_WEIGHTS_TO_EOF, &p), CLLM_ERANGE);
  cr_assert_eq(cllm_weights_load_path(w, path, 0, CLLM_WEIGHTS_TO_EOF, &p), CLLM_ENOMEM);  // no room
  cr_assert_eq(stats_of(w).loaded_bytes, 3 * MiB - 4096);
  unlink(path);
  cllm_weights_destroy(w);
  cllm_monitor_destroy(m);
}

Test(weights, monitor_limit_refuses_and_leaves_nothing) {
  cllm_monitor_t *m = mk_monitor(8 * MiB);
  cllm_weights_config_t c = cfg_with(m, 16 * MiB);
  cr_assert_not_null(cllm_topology_system()); /* loaded before measuring */
  size_t vm0 = proc_status_kb("VmSize");
  cllm_weights_t *w = (cllm_weights_t *)&w;
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_ELIMIT);
  cr_assert_null(w);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_COUNT), 0);
  cr_assert_lt(proc_status_kb("VmSize"), vm0 + 16 * 1024, "no region left mapped");
  c.capacity_bytes = 8 * MiB;
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_OK);
  cllm_weights_destroy(w);
  cllm_monitor_destroy(m);
}

Test(weights, global_monitor_by_default) {
  size_t before = cllm_monitor_used(cllm_monitor_global(), CLLM_CAT_WEIGHTS);
  cllm_weights_config_t c = cllm_weights_config_default();
  c.capacity_bytes = 2 * MiB;
  cllm_weights_t *w;
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_OK);
  cr_assert_eq(cllm_monitor_used(cllm_monitor_global(), CLLM_CAT_WEIGHTS), before + 2 * MiB);
  cllm_weights_destroy(w);
  cr_assert_eq(cllm_monitor_used(cllm_monitor_global(), CLLM_CAT_WEIGHTS), before);
}

/* ---- placement ------------------------------------------------------------------------- */

static int os_node0(void) {
  cllm_numa_node_info_t info;
  cr_assert_eq(cllm_topology_node_info(cllm_topology_system(), 0, &info), CLLM_OK);
  return info.os_index;
}

/* Seals first: seal commits the pages no alloc or load wrote. */
static void check_pages_add_up(cllm_weights_t *w) {
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

Test(weights, bind_to_node0_reads_back_mpol_bind) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_weights_config_t c = cfg_with(m, 8 * MiB);
  c.numa = CLLM_WEIGHTS_NUMA_BIND, c.node = 0, c.reader_threads = 2;
  cllm_weights_t *w;
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_OK);
  unsigned long mask;
  const char *base = cllm_weights_base(w);
  cr_assert_eq(policy_of(base, &mask), MPOL_BIND_);
  cr_assert_eq(mask, 1ul << os_node0());
  cr_assert_eq(policy_of(base + 8 * MiB - 1, &mask), MPOL_BIND_, "the whole region");
  cllm_weights_stats_t st = stats_of(w);
  cr_assert_eq(st.numa_requested, CLLM_WEIGHTS_NUMA_BIND);
  cr_assert_eq(st.numa_applied, CLLM_WEIGHTS_NUMA_BIND);
  cr_assert_eq(st.numa_nodes_mask, 1);
  cr_assert_eq(st.numa_status, CLLM_OK);
  check_pages_add_up(w);
  cllm_weights_destroy(w);
  cllm_monitor_destroy(m);
}

Test(weights, interleave_over_the_one_node_reads_back_mpol_interleave) {
  cllm_monitor_t *m = mk_monitor(0);
  int nodes[] = {0};
  cllm_weights_config_t c = cfg_with(m, 8 * MiB);
  c.numa = CLLM_WEIGHTS_NUMA_INTERLEAVE, c.interleave_nodes = nodes, c.n_interleave_nodes = 1;
  cllm_weights_t *w;
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_OK);
  unsigned long mask;
  cr_assert_eq(policy_of(cllm_weights_base(w), &mask), MPOL_INTERLEAVE_);
  cr_assert_eq(mask, 1ul << os_node0());
  cr_assert_eq(stats_of(w).numa_applied, CLLM_WEIGHTS_NUMA_INTERLEAVE);
  check_pages_add_up(w);
  cllm_weights_destroy(w);
  /* All nodes (none given). */
  c.interleave_nodes = NULL, c.n_interleave_nodes = 0;
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_OK);
  cr_assert_eq(policy_of(cllm_weights_base(w), &mask), MPOL_INTERLEAVE_);
  int n = cllm_topology_nodes(cllm_topology_system());
  cr_assert_eq(stats_of(w).numa_nodes_mask, n >= 64 ? UINT64_MAX : (((uint64_t)1 << n) - 1));
  check_pages_add_up(w);
  cllm_weights_destroy(w);
  cllm_monitor_destroy(m);
}

Test(weights, local_and_default_placement) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_weights_config_t c = cfg_with(m, 4 * MiB);
  cllm_weights_t *w;
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_OK);
  cllm_weights_stats_t st = stats_of(w);
  cr_assert_eq(st.numa_requested, CLLM_WEIGHTS_NUMA_LOCAL);
  unsigned long mask;
  int mode = policy_of(cllm_weights_base(w), &mask);
  if (cllm_topology_nodes(cllm_topology_system()) == 1) {
    /* One node: first touch by this thread is the local node; no policy is set. */
    cr_assert_eq(st.numa_applied, CLLM_WEIGHTS_NUMA_DEFAULT);
    cr_assert_eq(mode, MPOL_DEFAULT_);
  } else {
    cr_assert_eq(st.numa_applied, CLLM_WEIGHTS_NUMA_BIND);
    cr_assert_eq(mode, MPOL_BIND_);
  }
  check_pages_add_up(w);
  cllm_weights_destroy(w);
  c.numa = CLLM_WEIGHTS_NUMA_DEFAULT;
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_OK);
  cr_assert_eq(policy_of(cllm_weights_base(w), &mask), MPOL_DEFAULT_);
  cr_assert_eq(stats_of(w).numa_applied, CLLM_WEIGHTS_NUMA_DEFAULT);
  cr_assert_eq(stats_of(w).numa_nodes_mask, 0);
  cllm_weights_destroy(w);
  cllm_monitor_destroy(m);
}

Test(weights, placement_on_a_synthetic_topology) {
  /* Two nodes that are not this machine: binding is impossible. BIND/INTERLEAVE
   * would put pages on the wrong node, so they fail cleanly; LOCAL proceeds. */
  cllm_topology_config_t tc = cllm_topology_config_default();
  tc.synthetic = "pack:2 numa:1 core:2 pu:1";
  cllm_topology_t *topo;
  cr_assert_eq(cllm_topology_create(&tc, &topo), CLLM_OK);
  cllm_monitor_t *m = mk_monitor(0);
  cllm_weights_config_t c = cfg_with(m, 4 * MiB);
  c.topology = topo;
  c.numa = CLLM_WEIGHTS_NUMA_BIND, c.node = 1;
  cllm_set_log_fn(cllm_log_discard, NULL);
  cllm_weights_t *w = (cllm_weights_t *)&w;
  size_t vm0 = proc_status_kb("VmSize");
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_ENOTSUP);
  cr_assert_null(w);
  c.numa = CLLM_WEIGHTS_NUMA_INTERLEAVE;
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_ENOTSUP);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_COUNT), 0);
  cr_assert_lt(proc_status_kb("VmSize"), vm0 + 4 * 1024);
  c.numa = CLLM_WEIGHTS_NUMA_LOCAL, c.reader_threads = 2;
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_OK);
  cllm_weights_stats_t st = stats_of(w);
  cr_assert_eq(st.numa_applied, CLLM_WEIGHTS_NUMA_DEFAULT);
  cr_assert_eq(st.numa_status, CLLM_ENOTSUP);
  cllm_weights_destroy(w);
  cllm_monitor_destroy(m);
  cllm_topology_destroy(topo);
}

/* ---- locking ---------------------------------------------------------------------------- */

/* Can this process lock `bytes` (root with CAP_IPC_LOCK in the initial namespace, or
 * a high enough RLIMIT_MEMLOCK)? Raw syscalls: ASan turns mlock() into a no-op. */
static bool can_lock(size_t bytes) {
  void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  cr_assert_neq(p, MAP_FAILED);
  bool ok = syscall(SYS_mlock, p, bytes) == 0;
  if (ok) syscall(SYS_munlock, p, bytes);
  munmap(p, bytes);
  return ok;
}

Test(weights, locked_bytes_equal_the_region_when_allowed) {
  /* Root bypasses RLIMIT_MEMLOCK (not inside a user namespace such as Bazel's
   * sandbox); otherwise stay under the limit (8 MiB here). */
  size_t cap = can_lock(64 * MiB) ? 64 * MiB : 2 * MiB;
  if (!can_lock(cap)) cr_skip_test("cannot mlock even %zu bytes here", cap);
  cllm_monitor_t *m = mk_monitor(0);
  cllm_weights_config_t c = cfg_with(m, cap);
  c.lock = CLLM_WEIGHTS_LOCK_REQUIRED, c.reader_threads = 2;
  size_t lck0 = proc_status_kb("VmLck");
  cllm_weights_t *w;
  cllm_status_t s = cllm_weights_create(&c, &w);
  cr_assert_eq(s, CLLM_OK);
  cllm_weights_stats_t st = stats_of(w);
  cr_assert_eq(st.locked_bytes, cap);
  cr_assert_eq(st.lock_errno, 0);
  cr_assert_eq(st.lock_requested, CLLM_WEIGHTS_LOCK_REQUIRED);
  cr_assert_geq(proc_status_kb("VmLck"), lck0 + cap / 1024, "the kernel agrees");
  check_pages_add_up(w);
  cllm_weights_destroy(w);
  cr_assert_lt(proc_status_kb("VmLck"), lck0 + cap / 1024, "unlocked by destroy");
  cllm_monitor_destroy(m);
}

/* Drop CAP_IPC_LOCK from this process (raw capset: libcap may be absent). */
static int drop_ipc_lock(void) {
  struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct data[2];
  if (syscall(SYS_capget, &hdr, data) != 0) return -1;
  data[CAP_IPC_LOCK / 32].effective &= ~(1u << (CAP_IPC_LOCK % 32));
  data[CAP_IPC_LOCK / 32].permitted &= ~(1u << (CAP_IPC_LOCK % 32));
  data[CAP_IPC_LOCK / 32].inheritable &= ~(1u << (CAP_IPC_LOCK % 32));
  return syscall(SYS_capset, &hdr, data) == 0 ? 0 : -1;
}

/* The child's checks: returns 0 or the number of the first failed check. */
static int lock_failure_child(void) {
  const size_t limit = 256 << 10;
  struct rlimit rl = {limit, limit};
  if (setrlimit(RLIMIT_MEMLOCK, &rl) != 0) return 1;
  if (drop_ipc_lock() != 0) return 2;
  cllm_set_log_fn(capture_log, NULL);
  cllm_monitor_t *m = NULL;
  cllm_monitor_config_t mc = cllm_monitor_config_default();
  if (cllm_monitor_create(&mc, &m) != CLLM_OK) return 3;
  cllm_weights_config_t c = cfg_with(m, 8 * MiB);
  c.lock = CLLM_WEIGHTS_LOCK_BEST_EFFORT;
  cllm_weights_t *w = NULL;
  if (cllm_weights_create(&c, &w) != CLLM_OK) return 4;
  cllm_weights_stats_t st = {.struct_size = sizeof st};
  if (cllm_weights_stats(w, &st) != CLLM_OK) return 5;
  if (st.locked_bytes != 0) return 6;
  if (st.lock_errno != ENOMEM && st.lock_errno != EPERM) return 7;
  if (st.memlock_limit_bytes != limit) return 8;
  if (g_warns != 1 || strstr(g_log, "mlock") == NULL || strstr(g_log, "262144") == NULL)
    return 9;
  void *p;
  if (cllm_weights_alloc(w, 4096, 0, &p) != CLLM_OK) return 10; /* usable, unlocked */
  memset(p, 1, 4096);
  cllm_weights_destroy(w);
  c.lock = CLLM_WEIGHTS_LOCK_REQUIRED;
  w = (cllm_weights_t *)&w;
  if (cllm_weights_create(&c, &w) != CLLM_ESYS) return 11;
  if (w != NULL) return 12;
  if (cllm_monitor_used(m, CLLM_CAT_COUNT) != 0) return 13;
  if (g_warns != 2) return 14; /* one error for the required failure */
  cllm_monitor_destroy(m);
  return 0;
}

Test(weights, lock_failure_for_real_in_a_child_without_cap_ipc_lock) {
  fflush(NULL);
  pid_t pid = fork();
  cr_assert(pid >= 0);
  if (pid == 0) _exit(lock_failure_child());
  int status;
  cr_assert_eq(waitpid(pid, &status, 0), pid);
  cr_assert(WIFEXITED(status), "child died: status %#x", status);
  cr_assert_eq(WEXITSTATUS(status), 0, "child check %d failed", WEXITSTATUS(status));
}

Test(weights, lock_failure_by_fault_injection) {
  cr_assert_not_null(cllm_topology_system());
  cllm_set_log_fn(capture_log, NULL);
  cllm_monitor_t *m = mk_monitor(0);
  cllm_weights_config_t c = cfg_with(m, 4 * MiB);
  c.lock = CLLM_WEIGHTS_LOCK_BEST_EFFORT;
  cllm_weights_t *w;
  cllm_fault_reset();
  cllm_fault_arm(CLLM_FAULT_MLOCK, 1);
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_OK);
  cllm_weights_stats_t st = stats_of(w);
  cr_assert_eq(st.locked_bytes, 0);
  cr_assert_eq(st.lock_errno, ENOMEM);
  cr_assert_neq(st.memlock_limit_bytes, 0);
  cr_assert_eq(g_warns, 1, "logged once");
  cr_assert(strstr(g_log, "RLIMIT_MEMLOCK") != NULL, "%s", g_log);
  cr_assert_eq(cllm_weights_check(w), CLLM_OK);
  cllm_weights_destroy(w);
  size_t vm0 = proc_status_kb("VmSize");
  c.lock = CLLM_WEIGHTS_LOCK_REQUIRED;
  cllm_fault_arm(CLLM_FAULT_MLOCK, 1);
  w = (cllm_weights_t *)&w;
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_ESYS);
  cr_assert_null(w);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_COUNT), 0, "monitor released");
  cr_assert_lt(proc_status_kb("VmSize"), vm0 + 4 * 1024, "region unmapped");
  cllm_fault_reset();
  cllm_monitor_destroy(m);
}

/* ---- seal ------------------------------------------------------------------------------ */

Test(weights, seal_makes_writes_fault_and_refuses_alloc) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_weights_config_t c = cfg_with(m, 2 * MiB);
  cllm_weights_t *w;
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_OK);
  uint32_t *v;
  cr_assert_eq(cllm_weights_alloc(w, 1024 * sizeof *v, 0, (void **)&v), CLLM_OK);
  for (uint32_t i = 0; i < 1024; i++) v[i] = i * 7u;
  cr_assert_eq(cllm_weights_seal(w), CLLM_OK);
  cr_assert_eq(cllm_weights_seal(w), CLLM_OK, "sealing twice is a no-op");
  uint64_t sum = 0;
  for (uint32_t i = 0; i < 1024; i++) sum += v[i];
  cr_assert_eq(sum, 7ull * 1023 * 1024 / 2, "reads still work");
  size_t used = used_of(w);
  void *p = &p;
  cr_assert_eq(cllm_weights_alloc(w, 64, 0, &p), CLLM_ESTATE);
  cr_assert_null(p);
  cr_assert_eq(cllm_weights_load_path(w, "/nonexistent", 0, 1, &p), CLLM_ESTATE);
  cr_assert_eq(used_of(w), used);
  cr_assert(stats_of(w).sealed);
  cr_assert_eq(cllm_weights_check(w), CLLM_OK);

  int pipefd[2];
  cr_assert_eq(pipe(pipefd), 0);
  fflush(NULL);
  pid_t pid = fork();
  cr_assert(pid >= 0);
  if (pid == 0) {
    close(pipefd[0]);
    volatile uint32_t *target = v + 5;
    *target = 12345u;  /* must fault */
    (void)!write(pipefd[1], "W", 1);  /* reached only if the write went through */
    _exit(42);
  }
  close(pipefd[1]);
  int status;
  cr_assert_eq(waitpid(pid, &status, 0), pid);
  char ch;
  cr_assert_eq(read(pipefd[0], &ch, 1), 0, "the child completed the write");
  close(pipefd[0]);
  /* SIGSEGV, or under ASan its SEGV report and exit 1. */
  bool segv = WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV;
  bool asan_exit = WIFEXITED(status) && WEXITSTATUS(status) == 1;
  cr_assert(segv || asan_exit, "child status %#x", status);
  cr_assert_eq(v[5], 35u, "the weights are intact");
  cllm_weights_destroy(w);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_WEIGHTS), 0);
  cllm_monitor_destroy(m);
}

/* ---- loading ----------------------------------------------------------------------------- */

typedef struct progress_log {
  size_t calls, last_done, total;
  bool monotone;
  int cancel_at;          /* return false on this call (1-based); 0 = never */
  const char *truncate;   /* truncate this file on the first call */
  off_t truncate_to;
} progress_log_t;

static bool on_progress(void *user, size_t done, size_t total) {
  progress_log_t *pl = user;
  pl->calls++;
  if (done < pl->last_done || done > total) pl->monotone = false;
  pl->last_done = done;
  pl->total = total;
  if (pl->truncate != NULL && pl->calls == 1) cr_assert_eq(truncate(pl->truncate, pl->truncate_to), 0);
  return !(pl->cancel_at != 0 && (int)pl->calls == pl->cancel_at);
}

/* On several nodes LOCAL binds to the calling thread's node: run on the node with
 * the most memory, so that the region and the file fit (nodes may be unequal). */
static void run_on_roomiest_node(void) {
  const cllm_topology_t *t = cllm_topology_system();
  int n = cllm_topology_nodes(t), best = 0;
  if (n < 2) return;
  size_t most = 0;
  for (int i = 0; i < n; i++) {
    cllm_numa_node_info_t info;
    cr_assert_eq(cllm_topology_node_info(t, i, &info), CLLM_OK);
    if (info.memory_bytes > most) most = info.memory_bytes, best = i;
  }
  cr_assert_eq(cllm_thread_bind_node(t, best), CLLM_OK);
}

static void load_big_file(int readers) {
  run_on_roomiest_node();
  const size_t file_bytes = 256 * MiB;
  const size_t off = 3 * MiB + 12, len = 200 * MiB + 333;
  uint64_t csum_range;
  const char *path = make_file(file_bytes, 7, off, len, &csum_range);
  char pathcopy[512];
  snprintf(pathcopy, sizeof pathcopy, "%s", path);
  cllm_monitor_t *m = mk_monitor(0);
  cllm_weights_config_t c = cfg_with(m, file_bytes + len + 64);
  c.reader_threads = readers;
  progress_log_t pl = {.monotone = true};
  c.progress = on_progress, c.progress_user = &pl;
  cllm_weights_t *w;
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_OK);

  /* The whole file: bit-exact against the generator. */
  void *p;
  cr_assert_eq(cllm_weights_load_path(w, pathcopy, 0, file_bytes, &p), CLLM_OK);
  cr_assert_eq((uintptr_t)p % 64, 0);
  const uint64_t *words = p;
  for (size_t i = 0; i < file_bytes / 8; i++)
    if (words[i] != mix(7, i)) cr_assert_fail("word %zu differs", i);
  cr_assert(pl.monotone);
  cr_assert_eq(pl.last_done, file_bytes, "final progress call reports the total");
  cr_assert_eq(pl.total, file_bytes);
  if (readers == 1) cr_assert_eq(pl.calls, file_bytes / (8 * MiB) + 1, "one per chunk + final");
  else cr_assert_geq(pl.calls, 2);

  /* An unaligned range through an fd: checksum of what the generator wrote. */
  int fd = open(pathcopy, O_RDONLY);
  cr_assert(fd >= 0);
  off_t pos = lseek(fd, 0, SEEK_CUR);
  void *q;
  cr_assert_eq(cllm_weights_load_fd(w, fd, off, len, &q), CLLM_OK);
  cr_assert_eq(checksum(q, len), csum_range);
  cr_assert_eq(lseek(fd, 0, SEEK_CUR), pos, "file position untouched");
  close(fd);
  cr_assert_eq(unlink(pathcopy), 0);

  cllm_weights_stats_t st = stats_of(w);
  cr_assert_eq(st.loads, 2);
  cr_assert_eq(st.loaded_bytes, file_bytes + len);
  cr_assert_eq(st.load_failures, 0);
  cr_assert_geq(st.used_bytes, file_bytes + len);
  check_pages_add_up(w);
  cr_assert_eq(cllm_weights_check(w), CLLM_OK);
  cllm_weights_destroy(w);
  cllm_monitor_destroy(m);
}

Test(weights, loads_256mib_file_bit_exactly, .timeout = 240) { load_big_file(1); }
Test(weights, loads_256mib_file_bit_exactly_with_two_readers, .timeout = 240) { load_big_file(2); }

Test(weights, read_chunk_is_clamped) {
  const char *path = make_file(MiB, 5, 0, 0, NULL);
  char pathcopy[512];
  snprintf(pathcopy, sizeof pathcopy, "%s", path);
  cllm_monitor_t *m = mk_monitor(0);
  cllm_weights_config_t c = cfg_with(m, 2 * MiB);
  c.read_chunk_bytes = 1, c.reader_threads = 1; /* -> 64 KiB */
  progress_log_t pl = {.monotone = true};
  c.progress = on_progress, c.progress_user = &pl;
  cllm_weights_t *w;
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_OK);
  void *p;
  cr_assert_eq(cllm_weights_load_path(w, pathcopy, 0, MiB, &p), CLLM_OK);
  cr_assert_eq(pl.calls, MiB / (64 << 10) + 1);
  cr_assert(pl.monotone);
  for (size_t i = 0; i < MiB / 8; i++) cr_assert_eq(((uint64_t *)p)[i], mix(5, i));
  cllm_weights_destroy(w);
  c.read_chunk_bytes = SIZE_MAX; /* -> 1 GiB: one pread */
  pl = (progress_log_t){.monotone = true};
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_OK);
  cr_assert_eq(cllm_weights_load_path(w, pathcopy, 8, MiB - 8, &p), CLLM_OK);
  cr_assert_eq(pl.calls, 2);
  cr_assert_eq(((uint64_t *)p)[0], mix(5, 1));
  cllm_weights_destroy(w);
  cr_assert_eq(unlink(pathcopy), 0);
  cllm_monitor_destroy(m);
}

/* After a failed load the heap is as it was: same used, and the next allocation of
 * the same size lands where the load would have and is all zeros. */
static void assert_unchanged(cllm_weights_t *w, size_t used_before, size_t bytes) {
  cr_assert_eq(used_of(w), used_before);
  void *p;
  cr_assert_eq(cllm_weights_alloc(w, bytes, 0, &p), CLLM_OK);
  size_t start = (used_before + 63) & ~(size_t)63;
  cr_assert_eq((const char *)p, (const char *)cllm_weights_base(w) + start);
  cr_assert(all_zero(p, bytes), "a failed load left bytes behind");
}

Test(weights, load_failures_give_statuses_and_leave_the_heap_as_it_was) {
  cllm_set_log_fn(cllm_log_discard, NULL);
  const size_t file_bytes = 24 * MiB;
  const char *path = make_file(file_bytes, 11, 0, 0, NULL);
  char pathcopy[512];
  snprintf(pathcopy, sizeof pathcopy, "%s", path);
  cllm_monitor_t *m = mk_monitor(0);
  cllm_weights_config_t c = cfg_with(m, 128 * MiB);
  c.read_chunk_bytes = MiB, c.reader_threads = 1; /* progress counts are exact */
  progress_log_t pl = {.monotone = true};
  c.progress = on_progress, c.progress_user = &pl;
  cllm_weights_t *w;
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_OK);
  void *p;
  cr_assert_eq(cllm_weights_alloc(w, 100, 0, &p), CLLM_OK);
  size_t used = used_of(w);

  /* Ranges past the end. */
  cr_assert_eq(cllm_weights_load_path(w, pathcopy, 0, file_bytes + 1, &p), CLLM_ERANGE);
  cr_assert_null(p);
  cr_assert_eq(cllm_weights_load_path(w, pathcopy, file_bytes, 1, &p), CLLM_ERANGE);
  cr_assert_eq(cllm_weights_load_path(w, pathcopy, (uint64_t)1 << 40, 1, &p), CLLM_ERANGE);
  cr_assert_eq(used_of(w), used);
  /* A missing file, a directory. */
  char missing[600];
  snprintf(missing, sizeof missing, "%s.does-not-exist", pathcopy);
  cr_assert_eq(cllm_weights_load_path(w, missing, 0, 1, &p), CLLM_ENOTFOUND);
  cr_assert_eq(stats_of(w).last_load_errno, ENOENT);
  cr_assert_eq(cllm_weights_load_path(w, "/", 0, 1, &p), CLLM_ESYS, "a directory");
  cr_assert_eq(stats_of(w).last_load_errno, EISDIR);
  /* Too big for the heap. */
  cllm_weights_t *small;
  cllm_weights_config_t sc = cfg_with(m, 2 * MiB);
  cr_assert_eq(cllm_weights_create(&sc, &small), CLLM_OK);
  cr_assert_eq(cllm_weights_load_path(small, pathcopy, 0, 4 * MiB, &p), CLLM_ENOMEM);
  cr_assert_eq(used_of(small), 0);
  cllm_weights_destroy(small);
  cr_assert_eq(used_of(w), used);
  cr_assert_eq(pl.calls, 0, "no read was started");

  /* Cancelled by the progress callback after 5 chunks. */
  pl = (progress_log_t){.monotone = true, .cancel_at = 5};
  cr_assert_eq(cllm_weights_load_path(w, pathcopy, 0, file_bytes, &p), CLLM_EPREEMPTED);
  cr_assert_eq(pl.calls, 5);
  cr_assert_null(p);
  cr_assert_eq(used_of(w), used);
  /* Cancelled at the very end (the final call). */
  pl = (progress_log_t){.monotone = true, .cancel_at = 25};
  cr_assert_eq(cllm_weights_load_path(w, pathcopy, 0, file_bytes, &p), CLLM_EPREEMPTED);
  cr_assert_eq(pl.last_done, file_bytes);
  /* A read error (injected) in the middle. */
  pl = (progress_log_t){.monotone = true};
  cllm_fault_reset();
  cllm_fault_arm(CLLM_FAULT_PREAD, 7);
  cr_assert_eq(cllm_weights_load_path(w, pathcopy, 0, file_bytes, &p), CLLM_EIO);
  cllm_fault_reset();
  cr_assert_eq(stats_of(w).last_load_errno, EIO);
  /* Open fails (injected: EMFILE). */
  cllm_fault_arm(CLLM_FAULT_OPEN, 1);
  cr_assert_eq(cllm_weights_load_path(w, pathcopy, 0, file_bytes, &p), CLLM_ESYS);
  cllm_fault_reset();
  cr_assert_eq(stats_of(w).last_load_errno, EMFILE);
  /* The file is truncated during the load (from the progress callback). */
  pl = (progress_log_t){.monotone = true, .truncate = pathcopy, .truncate_to = MiB};
  cr_assert_eq(cllm_weights_load_path(w, pathcopy, 0, file_bytes, &p), CLLM_EIO);
  cr_assert_eq(pl.calls, 1);
  cllm_weights_stats_t st = stats_of(w);
  cr_assert_eq(st.loads, 0);
  cr_assert_eq(st.load_failures, 10);
  cr_assert_eq(cllm_weights_check(w), CLLM_OK);
  assert_unchanged(w, used, file_bytes);
  cr_assert_eq(unlink(pathcopy), 0);
  cllm_weights_destroy(w);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_COUNT), 0);
  cllm_monitor_destroy(m);
}

Test(weights, failed_parallel_load_is_undone) {
  cllm_set_log_fn(cllm_log_discard, NULL);
  const size_t file_bytes = 32 * MiB;
  const char *path = make_file(file_bytes, 13, 0, 0, NULL);
  char pathcopy[512];
  snprintf(pathcopy, sizeof pathcopy, "%s", path);
  cllm_monitor_t *m = mk_monitor(0);
  cllm_weights_config_t c = cfg_with(m, 64 * MiB);
  c.read_chunk_bytes = MiB, c.reader_threads = 3;
  cllm_weights_t *w;
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_OK);
  void *p;
  for (unsigned long nth = 1; nth <= 32; nth += 13) {
    cllm_fault_reset();
    cllm_fault_arm(CLLM_FAULT_PREAD, nth);
    cr_assert_eq(cllm_weights_load_path(w, pathcopy, 0, file_bytes, &p), CLLM_EIO, "nth %lu", nth);
    cr_assert_eq(used_of(w), 0);
  }
  cllm_fault_reset();
  assert_unchanged(w, 0, file_bytes);
  cr_assert_eq(unlink(pathcopy), 0);
  cllm_weights_destroy(w);
  cllm_monitor_destroy(m);
}

/* ---- huge pages ----------------------------------------------------------------------------- */

static bool thp_mode_is(const char *mode) {
  FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
  if (f == NULL) return false;
  char line[128] = {0};
  bool r = fgets(line, sizeof line, f) != NULL;
  fclose(f);
  char want[32];
  snprintf(want, sizeof want, "[%s]", mode);
  return r && strstr(line, want) != NULL;
}

/* AnonHugePages of the mapping(s) inside [lo, hi), read independently of the library. */
static size_t smaps_huge_bytes(uintptr_t lo, uintptr_t hi) {
  FILE *f = fopen("/proc/self/smaps", "r");
  cr_assert_not_null(f);
  char line[512];
  bool in = false;
  size_t total = 0;
  while (fgets(line, sizeof line, f) != NULL) {
    unsigned long a, b;
    char c;
    if (sscanf(line, "%lx-%lx %c", &a, &b, &c) == 3) {
      in = a >= lo && b <= hi;
      continue;
    }
    unsigned long kb;
    if (in && sscanf(line, "AnonHugePages: %lu kB", &kb) == 1) total += kb * 1024;
  }
  fclose(f);
  return total;
}

Test(weights, huge_page_bytes_are_read_back_from_the_kernel) {
  cllm_monitor_t *m = mk_monitor(0);
  cllm_weights_config_t c = cfg_with(m, 32 * MiB);
  c.huge_pages = CLLM_WEIGHTS_HUGE_TRANSPARENT;
  cllm_weights_t *w;
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_OK);
  cllm_weights_stats_t st = stats_of(w);
  uintptr_t lo = (uintptr_t)cllm_weights_base(w);
  size_t mine = smaps_huge_bytes(lo, lo + st.capacity_bytes);
  cr_assert_eq(st.huge_requested, CLLM_WEIGHTS_HUGE_TRANSPARENT);
  if (st.huge_applied == CLLM_WEIGHTS_HUGE_TRANSPARENT) {
    cr_assert_eq(st.huge_errno, 0);
  } else {
    cr_assert_eq(st.huge_applied, CLLM_WEIGHTS_HUGE_OFF);
    cr_assert_neq(st.huge_errno, 0, "a fallback says why");
  }
  /* May be 0 when the kernel gives none; then the report must still agree. */
  cr_assert_leq(st.huge_bytes, st.capacity_bytes);
  cr_assert_eq(st.huge_bytes % (2 * MiB), 0);
  cr_assert_eq(st.huge_bytes, mine, "library %zu vs smaps %zu", st.huge_bytes, mine);
  cllm_weights_destroy(w);

  /* Off: with THP in madvise mode an unadvised region gets no huge pages. */
  c.huge_pages = CLLM_WEIGHTS_HUGE_OFF;
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_OK);
  st = stats_of(w);
  cr_assert_eq(st.huge_applied, CLLM_WEIGHTS_HUGE_OFF);
  if (thp_mode_is("madvise") || thp_mode_is("never")) cr_assert_eq(st.huge_bytes, 0);
  lo = (uintptr_t)cllm_weights_base(w);
  cr_assert_eq(st.huge_bytes, smaps_huge_bytes(lo, lo + st.capacity_bytes));
  cllm_weights_destroy(w);
  cllm_monitor_destroy(m);
}

Test(weights, hugetlbfs_falls_back_to_transparent_and_says_so) {
  cllm_set_log_fn(cllm_log_discard, NULL);
  cllm_monitor_t *m = mk_monitor(0);
  cllm_weights_config_t c = cfg_with(m, 4 * MiB);
  c.huge_pages = CLLM_WEIGHTS_HUGE_HUGETLBFS;
  cllm_weights_t *w;
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_OK);
  cllm_weights_stats_t st = stats_of(w);
  cr_assert_eq(st.huge_requested, CLLM_WEIGHTS_HUGE_HUGETLBFS);
  if (st.huge_applied == CLLM_WEIGHTS_HUGE_HUGETLBFS) {
    cr_assert_eq(st.huge_bytes, st.capacity_bytes);  /* a pool was configured */
  } else {
    cr_assert_eq(st.huge_applied, CLLM_WEIGHTS_HUGE_TRANSPARENT);
    cr_assert_neq(st.huge_errno, 0);
  }
  void *p;
  cr_assert_eq(cllm_weights_alloc(w, MiB, 0, &p), CLLM_OK);
  memset(p, 3, MiB);
  cllm_weights_destroy(w);
  /* Forced: the hugetlbfs map fails (injected), the fallback maps. */
  cllm_fault_reset();
  cllm_fault_arm(CLLM_FAULT_MMAP, 1);
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_OK);
  st = stats_of(w);
  cr_assert_eq(st.huge_applied, CLLM_WEIGHTS_HUGE_TRANSPARENT);
  cr_assert_eq(st.huge_errno, ENOMEM);
  cllm_weights_destroy(w);
  cllm_fault_reset();
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_COUNT), 0);
  cllm_monitor_destroy(m);
}

/* ---- fault injection ----------------------------------------------------------------------- */

Test(weights, each_os_failure_gives_a_status_and_leaks_nothing) {
  cllm_set_log_fn(cllm_log_discard, NULL);
  cr_assert_not_null(cllm_topology_system()); /* loaded before any fault is armed */
  cllm_monitor_t *m = mk_monitor(0);
  /* Small enough to lock without privileges (RLIMIT_MEMLOCK is 8 MiB here). */
  cllm_weights_config_t c = cfg_with(m, 4 * MiB);
  c.numa = CLLM_WEIGHTS_NUMA_BIND, c.node = 0, c.lock = CLLM_WEIGHTS_LOCK_REQUIRED;
  c.reader_threads = 2;
  size_t vm0 = proc_status_kb("VmSize");
  struct { cllm_fault_op_t op; cllm_status_t want; } cases[] = {
      {CLLM_FAULT_MALLOC, CLLM_ENOMEM},
      {CLLM_FAULT_RESERVE, CLLM_ELIMIT},
      {CLLM_FAULT_MMAP, CLLM_ENOMEM},
      {CLLM_FAULT_MLOCK, CLLM_ESYS},
  };
  cllm_weights_t *w;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    cllm_fault_reset();
    cllm_fault_arm(cases[i].op, 1);
    w = (cllm_weights_t *)&w;
    cr_assert_eq(cllm_weights_create(&c, &w), cases[i].want, "%s", cllm_fault_op_name(cases[i].op));
    cr_assert_null(w);
    cr_assert_eq(cllm_fault_injected(), 1);
    cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_COUNT), 0, "monitor balanced");
    cr_assert_lt(proc_status_kb("VmSize"), vm0 + 4 * 1024, "nothing mapped");
  }
  /* madvise: the 1st is the THP advice (tolerated: OFF, says why); create commits
   * nothing, so the next is a commit step of alloc or seal: refused, state kept. */
  cllm_fault_reset();
  cllm_fault_arm(CLLM_FAULT_MADVISE, 1);
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_OK);
  cr_assert_eq(stats_of(w).huge_applied, CLLM_WEIGHTS_HUGE_OFF);
  cr_assert_eq(stats_of(w).huge_errno, EINVAL);
  cllm_weights_destroy(w);
  cllm_fault_reset();
  cllm_fault_arm(CLLM_FAULT_MADVISE, 2);
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_OK);
  cr_assert_eq(cllm_fault_injected(), 0, "create commits nothing");
  void *a = NULL;
  cr_assert_eq(cllm_weights_alloc(w, 3 * 4096, 0, &a), CLLM_ENOMEM);
  cr_assert_null(a);
  cr_assert_eq(stats_of(w).used_bytes, 0);
  cllm_fault_arm(CLLM_FAULT_MADVISE, 1);
  cr_assert_eq(cllm_weights_seal(w), CLLM_ENOMEM);
  cr_assert_not(stats_of(w).sealed);
  cr_assert_eq(cllm_weights_check(w), CLLM_OK);
  cr_assert_eq(cllm_weights_seal(w), CLLM_OK);
  cr_assert_eq(cllm_weights_check(w), CLLM_OK);
  cllm_weights_destroy(w);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_COUNT), 0);
  /* bind: one node, so BIND proceeds with the default policy and says so. */
  cllm_fault_reset();
  cllm_fault_arm(CLLM_FAULT_BIND, 1);
  cllm_status_t s = cllm_weights_create(&c, &w);
  if (cllm_topology_nodes(cllm_topology_system()) == 1) {
    cr_assert_eq(s, CLLM_OK);
    cllm_weights_stats_t st = stats_of(w);
    cr_assert_eq(st.numa_applied, CLLM_WEIGHTS_NUMA_DEFAULT);
    cr_assert_eq(st.numa_status, CLLM_ESYS);
    unsigned long mask;
    cr_assert_eq(policy_of(cllm_weights_base(w), &mask), MPOL_DEFAULT_);
    cllm_weights_destroy(w);
  } else {
    cr_assert_eq(s, CLLM_ESYS);
  }
  /* mprotect: seal fails, the heap stays writable and unsealed. */
  cllm_fault_reset();
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_OK);
  void *p;
  cr_assert_eq(cllm_weights_alloc(w, 64, 0, &p), CLLM_OK);
  cllm_fault_arm(CLLM_FAULT_MPROTECT, 1);
  cr_assert_eq(cllm_weights_seal(w), CLLM_ESYS);
  cr_assert(!stats_of(w).sealed);
  memset(p, 9, 64);
  cr_assert_eq(cllm_weights_alloc(w, 64, 0, &p), CLLM_OK);
  cr_assert_eq(cllm_weights_seal(w), CLLM_OK);
  cllm_weights_destroy(w);
  /* munmap failing once in destroy is retried: nothing stays mapped. */
  cllm_fault_reset();
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_OK);
  cllm_fault_arm(CLLM_FAULT_MUNMAP, 1);
  cllm_weights_destroy(w);
  cr_assert_lt(proc_status_kb("VmSize"), vm0 + 4 * 1024);
  cllm_fault_reset();
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_COUNT), 0);
  cllm_monitor_destroy(m);
}

/* Fail the nth fallible operation of create for every n until it succeeds untouched:
 * each failure leaves nothing charged and nothing mapped. */
static void sweep_create(cllm_monitor_t *m, cllm_weights_numa_t numa) {
  cllm_weights_config_t c = cfg_with(m, 6 * MiB);
  c.numa = numa, c.huge_pages = CLLM_WEIGHTS_HUGE_HUGETLBFS;
  c.lock = CLLM_WEIGHTS_LOCK_REQUIRED;
  cllm_weights_t *warm = NULL; /* thread stacks glibc keeps after a join count in VmSize */
  cr_assert_eq(cllm_weights_create(&c, &warm), CLLM_OK);
  cllm_weights_destroy(warm);
  size_t vm0 = proc_status_kb("VmSize");
  unsigned long n;
  for (n = 1; n < 100; n++) {
    cllm_fault_reset();
    cllm_fault_arm_any(n);
    cllm_weights_t *w = (cllm_weights_t *)&w;
    cllm_status_t s = cllm_weights_create(&c, &w);
    bool injected = cllm_fault_injected() > 0;
    cllm_fault_reset();
    if (s == CLLM_OK) {
      cr_assert_not_null(w);
      cr_assert_eq(cllm_weights_check(w), CLLM_OK);
      cllm_weights_destroy(w);
      if (!injected) break;
    } else {
      cr_assert(s < 0);
      cr_assert(injected, "failed without an injected fault: %s", cllm_status_name(s));
      cr_assert_null(w);
    }
    cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_COUNT), 0, "n=%lu", n);
    cr_assert_lt(proc_status_kb("VmSize"), vm0 + 6 * 1024, "n=%lu", n);
  }
  cr_assert_lt(n, 100, "create never succeeded");
  cr_assert_geq(n, 5, "too few fallible steps seen");
}

/* INTERLEAVE, and REPLICATE (on several nodes each copy's bind and commit too). */
Test(weights, fault_sweep_over_create) {
  cllm_set_log_fn(cllm_log_discard, NULL);
  cr_assert_not_null(cllm_topology_system());
  cllm_monitor_t *m = mk_monitor(0);
  sweep_create(m, CLLM_WEIGHTS_NUMA_INTERLEAVE);
  sweep_create(m, CLLM_WEIGHTS_NUMA_REPLICATE);
  cllm_monitor_destroy(m);
}

/* ---- replicas (CLLM_WEIGHTS_NUMA_REPLICATE): one copy where there is one node ---------- */

/* One node, or a topology that is not this machine: one copy, charged once, and
 * stats say so (replicas 1, the policy applied DEFAULT, the binding's status). The
 * several-node behaviour is in numa_place_test (run by tools/numa_vm.sh). */
Test(weights, replicate_gives_one_copy_where_it_cannot_replicate) {
  cr_assert_str_eq(cllm_weights_numa_name(CLLM_WEIGHTS_NUMA_REPLICATE), "replicate");
  cllm_topology_config_t tc = cllm_topology_config_default();
  tc.synthetic = "pack:2 numa:1 core:2 pu:1";
  cllm_topology_t *topo;
  cr_assert_eq(cllm_topology_create(&tc, &topo), CLLM_OK);
  cllm_set_log_fn(cllm_log_discard, NULL);
  const cllm_topology_t *sys = cllm_topology_system();
  bool one_node = cllm_topology_nodes(sys) == 1;
  for (int pass = one_node ? 0 : 1; pass < 2; pass++) {
    cllm_monitor_t *m = mk_monitor(0);
    cllm_weights_config_t c = cfg_with(m, 4 * MiB);
    c.numa = CLLM_WEIGHTS_NUMA_REPLICATE;
    c.topology = pass == 0 ? NULL : topo;
    cllm_weights_t *w = NULL;
    cr_assert_eq(cllm_weights_create(&c, &w), CLLM_OK, "pass %d", pass);
    cllm_weights_stats_t st = stats_of(w);
    cr_assert_eq(st.replicas, 1);
    cr_assert_eq(st.numa_requested, CLLM_WEIGHTS_NUMA_REPLICATE);
    cr_assert_eq(st.numa_applied, CLLM_WEIGHTS_NUMA_DEFAULT);
    cr_assert_eq(st.numa_status, pass == 0 ? CLLM_OK : CLLM_ENOTSUP);
    cr_assert_eq(st.committed_bytes, st.capacity_bytes);
    cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_WEIGHTS), st.capacity_bytes);
    cr_assert_eq(cllm_weights_local(w), cllm_weights_base(w));
    cr_assert_eq(cllm_weights_replica(w, 0), cllm_weights_base(w));
    cr_assert_null(cllm_weights_replica(w, 1));
    cr_assert_null(cllm_weights_replica(w, -1));
    cllm_weights_stats_t rs = {.struct_size = sizeof rs};
    cr_assert_eq(cllm_weights_replica_stats(w, 1, &rs), CLLM_ENOTFOUND);
    cr_assert_eq(cllm_weights_replica_stats(w, -1, &rs), CLLM_ENOTFOUND);
    cr_assert_eq(cllm_weights_replica_stats(w, 0, &rs), CLLM_OK);
    cr_assert_eq(rs.replicas, 1);
    cr_assert_eq(rs.pages_absent, rs.capacity_bytes / rs.page_bytes, "nothing written yet");
    void *p = NULL;
    cr_assert_eq(cllm_weights_alloc(w, 1000, 0, &p), CLLM_OK);
    memset(p, 7, 1000);
    cr_assert_eq(cllm_weights_seal(w), CLLM_OK);
    cr_assert_eq(((const char *)cllm_weights_local(w))[999], 7);
    cr_assert_eq(cllm_weights_check(w), CLLM_OK);
    cllm_weights_destroy(w);
    cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_COUNT), 0);
    cllm_monitor_destroy(m);
  }
  cr_assert_null(cllm_weights_local(NULL));
  cr_assert_null(cllm_weights_replica(NULL, 0));
  cllm_weights_stats_t st = {.struct_size = sizeof st};
  cr_assert_eq(cllm_weights_replica_stats(NULL, 0, &st), CLLM_EINVAL);
  cllm_topology_destroy(topo);
}
