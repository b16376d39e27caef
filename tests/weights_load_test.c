/* Criterion suite for the pinned weights heap (lib/weights.c): bit-exact loads of a
 * generated file (one and two readers), progress, load failures that leave the heap as
 * it was, and fault injection for every OS call. Each Test runs in its own process. */
#include "support/weights_test_util.h"

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

/* ---- fault injection ----------------------------------------------------------------------- */

Test(weights, each_os_failure_gives_a_status_and_leaks_nothing) {
  cllm_set_log_fn(cllm_log_discard, NULL);
  cr_assert_not_null(cllm_topology_system()); /* loaded before any fault is armed */
  cllm_monitor_t *m = mk_monitor(0);
  /* Small enough to lock without privileges (RLIMIT_MEMLOCK is 8 MiB here). */
  cllm_weights_config_t c = cfg_with(m, 4 * MiB);
  c.numa = CLLM_WEIGHTS_NUMA_BIND, c.node = 0, c.lock = CLLM_WEIGHTS_LOCK_REQUIRED;
  c.reader_threads = 2;
  size_t vm0 = proc_status_kib_checked("VmSize");
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
    cr_assert_lt(proc_status_kib_checked("VmSize"), vm0 + 4 * 1024, "nothing mapped");
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
  cr_assert_lt(proc_status_kib_checked("VmSize"), vm0 + 4 * 1024);
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
  size_t vm0 = proc_status_kib_checked("VmSize");
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
    cr_assert_lt(proc_status_kib_checked("VmSize"), vm0 + 6 * 1024, "n=%lu", n);
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
