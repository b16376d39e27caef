/* Criterion suite for the pinned weights heap (lib/weights.c): placement read back
 * from the kernel, locking (as root, in a forked child without CAP_IPC_LOCK, and by
 * fault injection), and replicas where there is one node. Each Test runs in its own
 * process. */
#include "support/child.h"
#include "support/weights_test_util.h"

/* ---- placement ------------------------------------------------------------------------- */

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
  size_t vm0 = proc_status_kib_checked("VmSize");
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_ENOTSUP);
  cr_assert_null(w);
  c.numa = CLLM_WEIGHTS_NUMA_INTERLEAVE;
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_ENOTSUP);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_COUNT), 0);
  cr_assert_lt(proc_status_kib_checked("VmSize"), vm0 + 4 * 1024);
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
  size_t lck0 = proc_status_kib_checked("VmLck");
  cllm_weights_t *w;
  cllm_status_t s = cllm_weights_create(&c, &w);
  cr_assert_eq(s, CLLM_OK);
  cllm_weights_stats_t st = stats_of(w);
  cr_assert_eq(st.locked_bytes, cap);
  cr_assert_eq(st.lock_errno, 0);
  cr_assert_eq(st.lock_requested, CLLM_WEIGHTS_LOCK_REQUIRED);
  cr_assert_geq(proc_status_kib_checked("VmLck"), lck0 + cap / 1024, "the kernel agrees");
  check_pages_add_up(w);
  cllm_weights_destroy(w);
  cr_assert_lt(proc_status_kib_checked("VmLck"), lck0 + cap / 1024, "unlocked by destroy");
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
static int lock_failure_child(void *arg) {
  (void)arg;
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
  int status = run_child(lock_failure_child, NULL, NULL, 0);
  cr_assert_neq(status, -1, "fork or waitpid failed");
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
  size_t vm0 = proc_status_kib_checked("VmSize");
  c.lock = CLLM_WEIGHTS_LOCK_REQUIRED;
  cllm_fault_arm(CLLM_FAULT_MLOCK, 1);
  w = (cllm_weights_t *)&w;
  cr_assert_eq(cllm_weights_create(&c, &w), CLLM_ESYS);
  cr_assert_null(w);
  cr_assert_eq(cllm_monitor_used(m, CLLM_CAT_COUNT), 0, "monitor released");
  cr_assert_lt(proc_status_kib_checked("VmSize"), vm0 + 4 * 1024, "region unmapped");
  cllm_fault_reset();
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
