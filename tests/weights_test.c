/* Criterion suite for the pinned weights heap (lib/weights.c): config and bad input,
 * bump allocation and what the monitor is charged, sealing (a forked child dies
 * writing), huge pages read back from the kernel. Placement, locking and replicas are
 * in weights_place_test.c; loads and fault injection in weights_load_test.c. Each Test
 * runs in its own process. */
#include "support/child.h"
#include "support/weights_test_util.h"

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
  cllm_weights_stats_t st = {.struct_size = sizeof(size_t) - 1};
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
/* Base pages: the load commits its range (one step), then reads. Transparent huge
 * pages: the reads fault the range in (no step). */
Test(weights, a_load_commits_its_range_first_or_by_its_reads) {
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
    cr_assert_eq(cllm_fault_calls(CLLM_FAULT_MADVISE), madvise0 + (huge ? 0 : 1),
                 "steps (huge %d)", huge);
    cr_assert_eq(checksum(p, 6 * MiB), csum);
    st = stats_of(w);
    cr_assert_eq(st.resident_bytes, st.capacity_bytes, "written once, so resident");
    cr_assert_eq(st.pages_absent, 0);
    cr_assert_leq(st.resident_bytes, cllm_monitor_used(m, CLLM_CAT_WEIGHTS));
    cr_assert_eq(cllm_weights_seal(w), CLLM_OK);
    cr_assert_eq(cllm_fault_calls(CLLM_FAULT_MADVISE), madvise0 + (huge ? 0 : 1),
                 "nothing left for seal");
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

/* Transparent huge pages, a load ending inside a page (the commit unit): the reads
 * fault in what they write, one step commits the rest of that page; when that step fails the load
 * fails whole (zeros back, nothing used) and the heap stays consistent. */
Test(weights, a_first_write_load_commits_its_last_units_tail) {
  cllm_monitor_t *m = mk_monitor(0);
  uint64_t csum;
  const char *path = make_file(3 * MiB + 104, 44, 0, 3 * MiB + 104, &csum);
  cllm_weights_config_t c = cfg_with(m, 6 * MiB);
  c.huge_pages = CLLM_WEIGHTS_HUGE_TRANSPARENT;
  c.reader_threads = 2, c.read_chunk_bytes = MiB;
  for (int fail = 1; fail >= 0; fail--) {
    cllm_weights_t *w;
    cr_assert_eq(cllm_weights_create(&c, &w), CLLM_OK);
    cllm_fault_reset();
    unsigned long madvise0 = cllm_fault_calls(CLLM_FAULT_MADVISE);
    if (fail) cllm_fault_arm(CLLM_FAULT_MADVISE, 1);
    void *p;
    cllm_status_t rc = cllm_weights_load_path(w, path, 0, CLLM_WEIGHTS_TO_EOF, &p);
    unsigned long steps = cllm_fault_calls(CLLM_FAULT_MADVISE) - madvise0;
    cllm_fault_reset();
    cllm_weights_stats_t st = stats_of(w);
    if (fail) {
      cr_assert(rc == CLLM_ENOMEM || rc == CLLM_ESYS, "%s", cllm_status_name(rc));
      cr_assert_null(p);
      cr_assert_eq(st.used_bytes, 0);
      const unsigned char *b = cllm_weights_base(w);
      size_t nonzero = 0;
      for (size_t i = 0; i < 3 * MiB + 104; i++) nonzero += b[i] != 0;
      cr_assert_eq(nonzero, 0, "the zeros are back");
    } else {
      cr_assert_eq(rc, CLLM_OK);
      cr_assert_eq(steps, 1, "one step: the tail");
      cr_assert_eq(checksum(p, 3 * MiB + 104), csum);
      cr_assert_geq(st.resident_bytes, 3 * MiB + 4096, "the last page whole");
    }
    cr_assert_leq(st.resident_bytes, cllm_monitor_used(m, CLLM_CAT_WEIGHTS));
    cr_assert_eq(cllm_weights_check(w), CLLM_OK);
    cr_assert_eq(cllm_weights_seal(w), CLLM_OK);
    cr_assert_eq(cllm_weights_check(w), CLLM_OK);
    cllm_weights_destroy(w);
  }
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
  size_t vm0 = proc_status_kib_checked("VmSize");
  cllm_weights_t *w = (cllm_weights_t *)&w;
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_ELIMIT);
  cr_assert_null(w);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_COUNT), 0);
  cr_assert_lt(proc_status_kib_checked("VmSize"), vm0 + 16 * 1024, "no region left mapped");
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

/* ---- seal ------------------------------------------------------------------------------ */

typedef struct sealed_write {
  uint32_t *v;
  int pipefd[2];
} sealed_write_t;

/* The child: writes to sealed weights, which must fault; reports through the pipe
 * only if the write went through. */
static int write_sealed(void *arg) {
  sealed_write_t *s = arg;
  close(s->pipefd[0]);
  volatile uint32_t *target = s->v + 5;
  *target = 12345u;  /* must fault */
  (void)!write(s->pipefd[1], "W", 1);  /* reached only if the write went through */
  return 42;
}

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

  sealed_write_t sw = {.v = v};
  cr_assert_eq(pipe(sw.pipefd), 0);
  int status = run_child(write_sealed, &sw, NULL, 0);
  cr_assert_neq(status, -1, "fork or waitpid failed");
  close(sw.pipefd[1]);
  char ch;
  cr_assert_eq(read(sw.pipefd[0], &ch, 1), 0, "the child completed the write");
  close(sw.pipefd[0]);
  /* SIGSEGV, or under ASan its SEGV report and exit 1. */
  bool segv = WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV;
  bool asan_exit = WIFEXITED(status) && WEXITSTATUS(status) == 1;
  cr_assert(segv || asan_exit, "child status %#x", status);
  cr_assert_eq(v[5], 35u, "the weights are intact");
  cllm_weights_destroy(w);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_WEIGHTS), 0);
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
