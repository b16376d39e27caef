/* Criterion tests that only a multi-node kernel can answer: where the heaps and the
 * weights really put their pages, read back from the kernel with move_pages.
 *
 * On a one-node machine every test here skips with a message; tools/numa_vm.sh runs
 * them in booted 2- and 4-node guests (.ci/run), where they must execute. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* syscall, CPU_* macros, sched_getaffinity */
#endif
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cllm/heap.h>
#include <cllm/monitor.h>
#include <cllm/numa.h>
#include <cllm/status.h>
#include <cllm/weights.h>

#include "lib/internal/fault.h"
#include "support/fixtures.h"
#include "support/heap_test_util.h"
#include "support/proc_status.h"

#define MiB ((size_t)1 << 20)
#define PAGE ((size_t)4096)

static const cllm_topology_t *multi_node(void) {
  const cllm_topology_t *t = cllm_topology_system();
  cr_assert_not_null(t);
  int n = cllm_topology_nodes(t);
  if (n < 2) cr_skip_test("one NUMA node: run it in tools/numa_vm.sh (2 or 4 nodes)");
  printf("numa_place: %d nodes\n", n);
  return t;
}

static int os_node(const cllm_topology_t *t, int node) {
  cllm_numa_node_info_t info;
  cr_assert_eq(cllm_topology_node_info(t, node, &info), CLLM_OK);
  return info.os_index;
}

/* The OS node of every page of [p, p+n) (touched already): -1 if they differ or one
 * is absent, else the node. */
static int pages_node(const void *p, size_t n) {
  uintptr_t a = (uintptr_t)p & ~(uintptr_t)(PAGE - 1), end = (uintptr_t)p + n;
  int node = -2;
  while (a < end) {
    void *pages[256];
    int status[256];
    unsigned long k = 0;
    for (; k < 256 && a < end; k++, a += PAGE) pages[k] = (void *)a;
    long r = syscall(SYS_move_pages, 0, k, pages, NULL, status, 0);
    cr_assert_eq(r, 0, "move_pages: %s", strerror(errno));
    for (unsigned long i = 0; i < k; i++) {
      if (status[i] < 0) return -1;
      if (node == -2) node = status[i];
      else if (node != status[i]) return -1;
    }
  }
  return node;
}

static cllm_heaps_t *numa_heaps(void) {
  cllm_heaps_config_t cfg = cllm_heaps_config_default();
  cfg.bytes_per_node = 64 * MiB;
  cllm_heaps_t *h = NULL;
  cr_assert_eq(cllm_heaps_create(&cfg, &h), CLLM_OK);
  cr_assert_eq(cllm_heaps_mode(h), CLLM_HEAP_MODE_NUMA);
  return h;
}

/* ---- heaps ---------------------------------------------------------------------- */

#define N_BLOCKS 64
static const size_t k_sizes[] = {16, 100, 1000, 4096, 20000, 65536, 300000, 1 << 20};
#define N_SIZES (sizeof k_sizes / sizeof k_sizes[0])

typedef struct job {
  cllm_heaps_t *h;
  int node;
  void *blocks[N_BLOCKS];
  int n;
  int failed_node; /* -1, or the first node a block's pages were found on instead */
} job_t;

static void *alloc_on_node(void *arg) {
  job_t *j = arg;
  const cllm_topology_t *t = cllm_topology_system();
  cr_assert_eq(cllm_thread_bind_node(t, j->node), CLLM_OK);
  int want = os_node(t, j->node);
  j->failed_node = -1;
  for (j->n = 0; j->n < N_BLOCKS; j->n++) {
    size_t sz = k_sizes[j->n % N_SIZES];
    void *p = cllm_heap_alloc(j->h, sz);
    cr_assert_not_null(p);
    memset(p, 0x5a, sz); /* touch every page of it */
    int got = pages_node(p, sz);
    if (got != want && j->failed_node == -1) j->failed_node = got;
    j->blocks[j->n] = p;
  }
  cr_assert_eq(cllm_heap_node(j->h), j->node);
  return NULL;
}

static void *free_all(void *arg) {
  job_t *j = arg;
  for (int i = 0; i < j->n; i++) cllm_heap_free(j->h, j->blocks[i]);
  return NULL;
}

/* A thread bound to node k allocates from its heap of node k: every page its blocks
 * cover is on node k, for every node. */
Test(numa_place, thread_on_node_k_gets_pages_on_node_k) {
  const cllm_topology_t *t = multi_node();
  cllm_heaps_t *h = numa_heaps();
  int nodes = cllm_topology_nodes(t);
  for (int k = 0; k < nodes; k++) {
    job_t j = {.h = h, .node = k};
    pthread_t tid;
    cr_assert_eq(pthread_create(&tid, NULL, alloc_on_node, &j), 0);
    pthread_join(tid, NULL);
    cr_assert_eq(j.failed_node, -1, "node %d: a block's pages are on OS node %d, want %d", k,
                 j.failed_node, os_node(t, k));
    cllm_heaps_stats_t st = stats_of(h);
    cr_assert(st.node[k].bound);
    cr_assert_eq(st.node[k].os_node, os_node(t, k));
    for (int i = 0; i < j.n; i++) cr_assert(inside(&st.node[k], j.blocks[i], 1), "node %d", k);
    printf("numa_place: node %d: %d blocks, every page on OS node %d\n", k, j.n, os_node(t, k));
    free_all(&j);
  }
  cr_assert_eq(cllm_heaps_check(h), CLLM_OK);
  cllm_heaps_destroy(h);
}

/* A block of node 0's heap freed by a thread on node 1 goes back to node 0's region
 * (node 0's figures), and that thread's next allocation comes from node 1. */
Test(numa_place, cross_node_free_returns_to_the_owner_node) {
  const cllm_topology_t *t = multi_node();
  cllm_heaps_t *h = numa_heaps();
  job_t a = {.h = h, .node = 0};
  pthread_t tid;
  cr_assert_eq(pthread_create(&tid, NULL, alloc_on_node, &a), 0);
  pthread_join(tid, NULL);
  cr_assert_eq(a.failed_node, -1);
  cllm_heaps_stats_t st = stats_of(h);
  uint64_t allocs0 = st.node[0].allocations;
  cr_assert_gt(st.node[0].bytes_in_use, 0);

  /* This thread, on node 1, frees them all, then allocates. */
  cr_assert_eq(cllm_thread_bind_node(t, 1), CLLM_OK);
  free_all(&a);
  st = stats_of(h);
  cr_assert_eq(st.node[0].frees, allocs0, "node 0 frees %llu, allocations %llu",
               (unsigned long long)st.node[0].frees, (unsigned long long)allocs0);
  cr_assert_eq(st.node[0].bytes_in_use, 0);
  cr_assert_eq(st.node[1].frees, 0);
  void *p = cllm_heap_alloc(h, 5000);
  cr_assert_not_null(p);
  memset(p, 1, 5000);
  cr_assert_eq(cllm_heap_node(h), 1);
  st = stats_of(h);
  cr_assert(inside(&st.node[1], p, 1));
  cr_assert_eq(st.node[1].allocations, 1);
  cr_assert_eq(pages_node(p, 5000), os_node(t, 1));
  cllm_heap_free(h, p);
  printf("numa_place: %llu blocks of node 0 freed from node 1 went back to node 0\n",
         (unsigned long long)allocs0);
  cr_assert_eq(cllm_heaps_check(h), CLLM_OK);
  cllm_heaps_destroy(h);
}

/* ---- weights ---------------------------------------------------------------------- */

static cllm_weights_stats_t wstats(const cllm_weights_t *w) {
  cllm_weights_stats_t st;
  memset(&st, 0, sizeof st);
  st.struct_size = sizeof st;
  cr_assert_eq(cllm_weights_stats(w, &st), CLLM_OK);
  cr_assert_eq(st.readback_status, CLLM_OK);
  return st;
}

Test(numa_place, weights_bind_puts_every_page_on_the_node) {
  const cllm_topology_t *t = multi_node();
  for (int k = 0; k < cllm_topology_nodes(t); k++) {
    cllm_weights_config_t cfg = cllm_weights_config_default();
    cfg.capacity_bytes = 16 * MiB;
    cfg.numa = CLLM_WEIGHTS_NUMA_BIND;
    cfg.node = k;
    cfg.reader_threads = 2;
    cllm_weights_t *w = NULL;
    cr_assert_eq(cllm_weights_create(&cfg, &w), CLLM_OK);
    cr_assert_eq(cllm_weights_seal(w), CLLM_OK); /* commits every page (create: none) */
    cllm_weights_stats_t st = wstats(w);
    cr_assert_eq(st.numa_applied, CLLM_WEIGHTS_NUMA_BIND);
    size_t pages = st.capacity_bytes / st.page_bytes;
    int os = os_node(t, k);
    cr_assert_eq(st.pages_per_node[os], pages, "node %d: %zu of %zu pages on OS node %d", k,
                 st.pages_per_node[os], pages, os);
    printf("numa_place: weights bound to node %d: %zu/%zu pages there\n", k,
           st.pages_per_node[os], pages);
    cllm_weights_destroy(w);
  }
}

/* INTERLEAVE with THP interleaves 2 MiB pages: with 8 huge pages per node, each node
 * holds within one huge page of an even share. */
Test(numa_place, weights_interleave_spreads_pages_evenly) {
  const cllm_topology_t *t = multi_node();
  int nodes = cllm_topology_nodes(t);
  cllm_weights_config_t cfg = cllm_weights_config_default();
  cfg.capacity_bytes = (size_t)nodes * 8 * 2 * MiB;
  cfg.numa = CLLM_WEIGHTS_NUMA_INTERLEAVE;
  cfg.reader_threads = nodes;
  cllm_weights_t *w = NULL;
  cr_assert_eq(cllm_weights_create(&cfg, &w), CLLM_OK);
  cr_assert_eq(cllm_weights_seal(w), CLLM_OK); /* commits every page (create: none) */
  cllm_weights_stats_t st = wstats(w);
  cr_assert_eq(st.numa_applied, CLLM_WEIGHTS_NUMA_INTERLEAVE);
  size_t pages = st.capacity_bytes / st.page_bytes, even = pages / (size_t)nodes;
  size_t slack = 2 * MiB / st.page_bytes;
  for (int k = 0; k < nodes; k++) {
    size_t got = st.pages_per_node[os_node(t, k)];
    printf("numa_place: interleave: node %d holds %zu of %zu pages (even %zu)\n", k, got, pages,
           even);
    cr_assert(got + slack >= even && got <= even + slack, "node %d: %zu pages, even %zu", k, got,
              even);
  }
  cllm_weights_destroy(w);
}

/* Loader threads run on the node whose pages they write: during a load into weights
 * bound to node k, every other thread of the process is bound to node k's CPUs. */
typedef struct watch {
  const cllm_topology_t *t;
  int node;
  int workers_seen;
  int wrong; /* a worker bound elsewhere (tid), 0 if none */
  bool checked;
  pid_t before[64]; /* threads that existed before the load (Criterion's own) */
  int n_before;
} watch_t;

static void snapshot_threads(watch_t *wt) {
  DIR *d = opendir("/proc/self/task");
  cr_assert_not_null(d);
  struct dirent *e;
  while ((e = readdir(d)) != NULL && wt->n_before < 64)
    if (atoi(e->d_name) > 0) wt->before[wt->n_before++] = (pid_t)atoi(e->d_name);
  closedir(d);
}

static bool existed(const watch_t *wt, pid_t tid) {
  for (int i = 0; i < wt->n_before; i++)
    if (wt->before[i] == tid) return true;
  return false;
}

/* True when every CPU of the thread's affinity is on `node`. */
static bool thread_on_node(const cllm_topology_t *t, pid_t tid, int node) {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(tid, sizeof set, &set) != 0) return true; /* it has exited */
  for (int c = 0; c < CPU_SETSIZE; c++)
    if (CPU_ISSET(c, &set) && cllm_topology_node_of_cpu(t, c) != node) return false;
  return true;
}

static bool watch_workers(void *user, size_t done, size_t total) {
  (void)done;
  (void)total;
  watch_t *wt = user;
  if (wt->checked) return true;
  wt->checked = true;
  pid_t self = (pid_t)syscall(SYS_gettid);
  DIR *d = opendir("/proc/self/task");
  cr_assert_not_null(d);
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    pid_t tid = (pid_t)atoi(e->d_name);
    if (tid <= 0 || tid == self || existed(wt, tid)) continue;
    wt->workers_seen++;
    /* A worker binds itself as it starts: give it up to 5 s to get there. */
    bool ok = false;
    for (int i = 0; i < 500 && !(ok = thread_on_node(wt->t, tid, wt->node)); i++)
      nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
    if (!ok && wt->wrong == 0) wt->wrong = tid;
  }
  closedir(d);
  return true;
}

Test(numa_place, loader_threads_run_on_the_node_they_fill) {
  const cllm_topology_t *t = multi_node();
  int nodes = cllm_topology_nodes(t);
  char path[] = "/tmp/numa_place_XXXXXX";
  int fd = mkstemp(path);
  cr_assert_geq(fd, 0);
  unlink(path);
  size_t bytes = 32 * MiB;
  char *buf = malloc(bytes);
  cr_assert_not_null(buf);
  for (size_t i = 0; i < bytes; i++) buf[i] = (char)(i * 7u);
  cr_assert_eq(write(fd, buf, bytes), (ssize_t)bytes);
  cr_assert_eq(cllm_thread_bind_node(t, 0), CLLM_OK); /* the caller stays on node 0 */
  for (int k = 1; k < nodes; k++) {
    watch_t wt = {.t = t, .node = k};
    cllm_weights_config_t cfg = cllm_weights_config_default();
    cfg.capacity_bytes = bytes;
    cfg.numa = CLLM_WEIGHTS_NUMA_BIND;
    cfg.node = k;
    cfg.reader_threads = 4;
    cfg.read_chunk_bytes = 64 << 10;
    cfg.progress = watch_workers;
    cfg.progress_user = &wt;
    cllm_weights_t *w = NULL;
    cr_assert_eq(cllm_weights_create(&cfg, &w), CLLM_OK);
    snapshot_threads(&wt);
    void *dst = NULL;
    cr_assert_eq(cllm_weights_load_fd(w, fd, 0, bytes, &dst), CLLM_OK);
    cr_assert_eq(memcmp(dst, buf, bytes), 0);
    cr_assert_gt(wt.workers_seen, 0, "no loader thread seen during the load");
    cr_assert_eq(wt.wrong, 0, "loader thread %d is not bound to node %d", wt.wrong, k);
    cllm_weights_stats_t st = wstats(w);
    cr_assert_eq(st.pages_per_node[os_node(t, k)], st.capacity_bytes / st.page_bytes);
    printf("numa_place: load into node %d: %d loader threads, all on node %d\n", k,
           wt.workers_seen, k);
    cllm_weights_destroy(w);
  }
  free(buf);
  close(fd);
}

/* ---- weight replicas ---------------------------------------------------------------- */

/* One copy per node, each copy's pages on its node, bit-identical contents after a
 * load and (hand-written allocations) after seal, charged nodes x capacity. */
Test(numa_place, replicas_live_on_their_nodes_and_match) {
  const cllm_topology_t *t = multi_node();
  int nodes = cllm_topology_nodes(t);
  cllm_monitor_t *m = mk_monitor(0);
  size_t file_bytes = 6 * MiB + 4096;
  char path[] = "/tmp/numa_replica_XXXXXX";
  int fd = mkstemp(path);
  cr_assert_geq(fd, 0);
  unlink(path);
  unsigned char *buf = malloc(file_bytes);
  cr_assert_not_null(buf);
  for (size_t i = 0; i < file_bytes; i++) buf[i] = (unsigned char)(i * 13u + (i >> 12));
  cr_assert_eq(write(fd, buf, file_bytes), (ssize_t)file_bytes);

  cllm_weights_config_t cfg = cllm_weights_config_default();
  cfg.capacity_bytes = 16 * MiB;
  cfg.numa = CLLM_WEIGHTS_NUMA_REPLICATE;
  cfg.monitor = m;
  cfg.reader_threads = 2;
  cfg.read_chunk_bytes = 1 * MiB;
  cllm_weights_t *w = NULL;
  cr_assert_eq(cllm_weights_create(&cfg, &w), CLLM_OK);
  cllm_weights_stats_t st = wstats(w);
  cr_assert_eq(st.replicas, nodes);
  cr_assert_eq(st.numa_applied, CLLM_WEIGHTS_NUMA_REPLICATE);
  cr_assert_eq(st.committed_bytes, (size_t)nodes * st.capacity_bytes);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_WEIGHTS), (size_t)nodes * st.capacity_bytes);

  unsigned char *bias = NULL;
  cr_assert_eq(cllm_weights_alloc(w, 3000, 0, (void **)&bias), CLLM_OK);
  void *tensor = NULL;
  cr_assert_eq(cllm_weights_load_fd(w, fd, 0, file_bytes, &tensor), CLLM_OK);
  const char *r0 = cllm_weights_replica(w, 0);
  cr_assert_eq(r0, cllm_weights_base(w));
  for (int r = 0; r < nodes; r++) {
    const char *rb = cllm_weights_replica(w, r);
    cr_assert_not_null(rb);
    cr_assert_eq(memcmp(rb + ((const char *)tensor - r0), buf, file_bytes), 0, "replica %d", r);
  }
  memset(bias, 0x3c, 3000); /* by hand, into copy 0: the others get it at seal */
  cr_assert_eq(cllm_weights_seal(w), CLLM_OK);
  for (int r = 0; r < nodes; r++) {
    const unsigned char *rb = cllm_weights_replica(w, r);
    for (size_t i = 0; i < 3000; i++) cr_assert_eq(rb[(const char *)bias - r0 + i], 0x3c);
    cr_assert_eq(memcmp(rb + ((const char *)tensor - r0), buf, file_bytes), 0, "replica %d", r);
    cllm_weights_stats_t rs;
    memset(&rs, 0, sizeof rs);
    rs.struct_size = sizeof rs;
    cr_assert_eq(cllm_weights_replica_stats(w, r, &rs), CLLM_OK);
    size_t pages = rs.capacity_bytes / rs.page_bytes;
    int os = os_node(t, r);
    cr_assert_eq(rs.pages_per_node[os], pages, "replica %d: %zu of %zu pages on OS node %d", r,
                 rs.pages_per_node[os], pages, os);
    printf("numa_place: replica %d: %zu/%zu pages on OS node %d, contents match\n", r,
           rs.pages_per_node[os], pages, os);
  }
  cr_assert_eq(cllm_weights_check(w), CLLM_OK);
  cllm_weights_destroy(w);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_COUNT), 0);
  cllm_monitor_destroy(m);
  free(buf);
  close(fd);
}

typedef struct local_job {
  const cllm_weights_t *w;
  int node;
  const void *got;
} local_job_t;

static void *local_on_node(void *arg) {
  local_job_t *j = arg;
  cr_assert_eq(cllm_thread_bind_node(cllm_topology_system(), j->node), CLLM_OK);
  j->got = cllm_weights_local(j->w);
  return NULL;
}

/* A thread bound to node k reads replica k. */
Test(numa_place, a_thread_on_node_k_gets_replica_k) {
  const cllm_topology_t *t = multi_node();
  cllm_weights_config_t cfg = cllm_weights_config_default();
  cfg.capacity_bytes = 4 * MiB;
  cfg.numa = CLLM_WEIGHTS_NUMA_REPLICATE;
  cllm_weights_t *w = NULL;
  cr_assert_eq(cllm_weights_create(&cfg, &w), CLLM_OK);
  for (int k = 0; k < cllm_topology_nodes(t); k++) {
    local_job_t j = {.w = w, .node = k};
    pthread_t tid;
    cr_assert_eq(pthread_create(&tid, NULL, local_on_node, &j), 0);
    pthread_join(tid, NULL);
    cr_assert_eq(j.got, cllm_weights_replica(w, k), "node %d", k);
    cr_assert_neq(j.got, NULL);
  }
  printf("numa_place: threads on nodes 0..%d got their own replica\n", cllm_topology_nodes(t) - 1);
  cllm_weights_destroy(w);
}

/* A failure in the middle of the second replica's commit (at seal: create commits
 * nothing): seal fails, the heap stays unsealed and whole, destroy leaves nothing. */
Test(numa_place, failure_mid_second_replica_leaves_nothing) {
  multi_node();
  cllm_monitor_t *m = mk_monitor(0);
  cllm_weights_config_t cfg = cllm_weights_config_default();
  cfg.capacity_bytes = 192 * MiB; /* three 64 MiB commit steps per replica */
  cfg.numa = CLLM_WEIGHTS_NUMA_REPLICATE;
  cfg.monitor = m;
  cfg.reader_threads = 1;
  cllm_weights_t *w = NULL;
  size_t vm0 = proc_status_kib("VmSize");
  /* A successful seal counts the madvise calls (3 commits per copy). */
  cr_assert_eq(cllm_weights_create(&cfg, &w), CLLM_OK);
  cllm_fault_reset();
  cr_assert_eq(cllm_weights_seal(w), CLLM_OK);
  unsigned long calls = cllm_fault_calls(CLLM_FAULT_MADVISE);
  int replicas = wstats(w).replicas;
  cllm_weights_destroy(w);
  cr_assert_geq(calls, (unsigned long)replicas * 3);
  unsigned long first_commit = calls - (unsigned long)replicas * 3 + 1;
  cllm_set_log_fn(cllm_log_discard, NULL);
  cr_assert_eq(cllm_weights_create(&cfg, &w), CLLM_OK);
  cllm_fault_reset();
  cllm_fault_arm(CLLM_FAULT_MADVISE, first_commit + 3 + 1); /* replica 1, second step */
  cr_assert_eq(cllm_weights_seal(w), CLLM_ENOMEM);
  cr_assert_eq(cllm_fault_injected(), 1);
  cllm_fault_reset();
  cr_assert_not(wstats(w).sealed);
  cr_assert_eq(cllm_weights_check(w), CLLM_OK);
  cllm_weights_destroy(w);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_COUNT), 0);
  size_t vm1 = proc_status_kib("VmSize");
  cr_assert_lt(vm1, vm0 + 64 * 1024, "VmSize %zu kB -> %zu kB: a replica stayed mapped", vm0, vm1);
  printf("numa_place: failure in replica 1's commit: seal refused, monitor 0, VmSize %zu -> %zu "
         "kB\n", vm0, vm1);
  cllm_monitor_destroy(m);
}
