/* cllm-mem: the pinned weights heap (one region per model: NUMA-placed, optionally
 * huge-paged and mlocked, bump-allocated, loaded from files, sealed read-only).
 *
 *   cllm_weights_config_t cfg = cllm_weights_config_default();
 *   cfg.capacity_bytes = model_bytes;
 *   cfg.numa = CLLM_WEIGHTS_NUMA_INTERLEAVE;           // spread over every node
 *   cfg.huge_pages = CLLM_WEIGHTS_HUGE_TRANSPARENT;
 *   cfg.lock = CLLM_WEIGHTS_LOCK_BEST_EFFORT;
 *   cfg.reader_threads = 4;                            // parallel preads
 *   cllm_weights_t *w;
 *   if (cllm_weights_create(&cfg, &w) < 0) ...;
 *
 *   void *tensor;                                      // a file range, bit-exact
 *   if (cllm_weights_load_path(w, "model.gguf", tensor_offset, tensor_bytes, &tensor) < 0) ...;
 *   float *bias;                                       // or filled by hand
 *   if (cllm_weights_alloc(w, n * sizeof(float), 0, (void **)&bias) < 0) ...;
 *   ...
 *   if (cllm_weights_seal(w) < 0) ...;                 // read-only from now on
 *   cllm_weights_stats_t st = {.struct_size = sizeof st};
 *   if (cllm_weights_stats(w, &st) == CLLM_OK) ...;    // where the pages are, locked?
 *   cllm_weights_destroy(w);                           // frees every tensor at once
 *
 * Order at create: reserve the bytes in the monitor,
 * map the region (no page present), ask for huge pages, apply the NUMA policy
 * (mbind) while no page exists, and mlock it on fault (MLOCK_ONFAULT: each page is
 * locked as it appears). Pages are therefore placed by the policy, never by the
 * thread that happens to lock them.
 *
 * Commit policy: create charges the whole region (stats: committed_bytes, counted
 * in the kernel's commit charge too) but writes no page. A page becomes resident
 * when first needed, where the policy puts it. A load's reader threads pread into
 * its range; with base pages they commit it first (MADV_POPULATE_WRITE), with
 * transparent huge pages the reads' writes fault it in where the range covers whole
 * commit units from the committed end (the faster way for each: bench/RESULTS.md,
 * weights_bench full_load; on a several-node machine with no policy the caller's
 * thread commits first, so that first touch does not scatter the pages). alloc
 * commits its pages before it returns (on the reader threads); seal commits
 * whatever no alloc or load reached, so a sealed region is wholly resident and
 * placed.
 * capacity_bytes is rounded up to the page size (to 2 MiB with huge pages); the
 * rounded size is what is charged and what stats report as capacity
 * (cllm_weights_footprint gives it before create).
 *
 * Residency: the region is charged before it is mapped, so its resident bytes
 * (stats: resident_bytes, read back from the kernel) never exceed the charge; no
 * slack. Until seal, resident_bytes is what was loaded or allocated so far.
 *
 * Placement that cannot be applied (the topology is not this machine, or mbind
 * fails): LOCAL proceeds with the kernel's default policy (first touch, by the
 * creating thread, is its own node); BIND and INTERLEAVE proceed the same way only
 * when the topology has a single node (every page lands there anyway); otherwise
 * create fails with the binding's status (CLLM_ENOTSUP or CLLM_ESYS). Stats report
 * the policy requested and the one applied, and why they differ.
 *
 * Interleave granularity: with transparent huge pages the kernel interleaves whole
 * 2 MiB pages, so a region of a few huge pages can land on one node; the spread is
 * even to within one huge page per node only from several huge pages per node.
 *
 * Replicas (CLLM_WEIGHTS_NUMA_REPLICATE): one full copy per node of the topology,
 * back to back in one mapping, copy r bound to node r before first touch and
 * committed by reader threads bound to node r. Every copy has the same layout: a
 * pointer p returned by alloc or load lies in copy 0, and the same tensor in copy r
 * is p - cllm_weights_replica(w, 0) + cllm_weights_replica(w, r). Loads fill every
 * copy (the file into copy 0, then each other copy from it, by threads of its
 * node); what the caller writes by hand into alloc'd memory of copy 0 reaches the
 * other copies at seal. The monitor is charged replicas x capacity. With one node,
 * or a topology that is not this machine, there is one copy (stats: replicas 1,
 * numa_status CLLM_OK or CLLM_ENOTSUP). Readers pick their copy with
 * cllm_weights_local().
 *
 * Memory handed out by alloc and load is zero-filled until written (a failed load
 * puts back the zeros it overwrote). Not thread-safe unless tagged: create, alloc,
 * load and seal are `Thread: external-sync` (one caller at a time; load itself
 * reads with several threads); the weights themselves may be read from any thread.
 */
#ifndef CLLM_WEIGHTS_H
#define CLLM_WEIGHTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cllm/export.h>
#include <cllm/monitor.h>
#include <cllm/numa.h>
#include <cllm/status.h>

CLLM_EXTERN_C_BEGIN

typedef struct cllm_weights cllm_weights_t;

// Where the pages go. LOCAL: the creating thread's node (bound when there are several
// nodes; first touch when there is one). BIND: strictly on `node` (MPOL_BIND).
// INTERLEAVE: round-robin over `interleave_nodes` (all if none). DEFAULT: no policy,
// the kernel places pages on first touch (the creating thread commits them); also what
// stats report when a policy could not be applied. REPLICATE: one copy per node, each
// bound to its node (above). XX(id, value, name): the one table (CLLM_WEIGHTS_NUMA_<id>).
#define CLLM_WEIGHTS_NUMA_MAP(XX) \
  XX(LOCAL, 0, "local")           \
  XX(BIND, 1, "bind")             \
  XX(INTERLEAVE, 2, "interleave") \
  XX(DEFAULT, 3, "default")       \
  XX(REPLICATE, 4, "replicate")

typedef enum cllm_weights_numa {
#define CLLM_WEIGHTS_NUMA_ENUM_(id, value, name) CLLM_WEIGHTS_NUMA_##id = (value),
  CLLM_WEIGHTS_NUMA_MAP(CLLM_WEIGHTS_NUMA_ENUM_)
#undef CLLM_WEIGHTS_NUMA_ENUM_
} cllm_weights_numa_t;

// Huge pages. OFF: base pages (the region is not advised; with THP in `always` mode
// the kernel may still use them). TRANSPARENT: madvise(MADV_HUGEPAGE), region 2 MiB
// aligned. HUGETLBFS: MAP_HUGETLB from the reserved pool; when the pool is short,
// falls back to TRANSPARENT (see stats). XX(id, value, name): CLLM_WEIGHTS_HUGE_<id>.
#define CLLM_WEIGHTS_HUGE_MAP(XX)   \
  XX(OFF, 0, "off")                 \
  XX(TRANSPARENT, 1, "transparent") \
  XX(HUGETLBFS, 2, "hugetlbfs")

typedef enum cllm_weights_huge {
#define CLLM_WEIGHTS_HUGE_ENUM_(id, value, name) CLLM_WEIGHTS_HUGE_##id = (value),
  CLLM_WEIGHTS_HUGE_MAP(CLLM_WEIGHTS_HUGE_ENUM_)
#undef CLLM_WEIGHTS_HUGE_ENUM_
} cllm_weights_huge_t;

// mlock. BEST_EFFORT: try; on failure continue unlocked, warn once through the log
// hook and report it in stats. REQUIRED: failure fails create with CLLM_ESYS.
// XX(id, value, name): the one table (CLLM_WEIGHTS_LOCK_<id>).
#define CLLM_WEIGHTS_LOCK_MAP(XX)   \
  XX(OFF, 0, "off")                 \
  XX(BEST_EFFORT, 1, "best_effort") \
  XX(REQUIRED, 2, "required")

typedef enum cllm_weights_lock {
#define CLLM_WEIGHTS_LOCK_ENUM_(id, value, name) CLLM_WEIGHTS_LOCK_##id = (value),
  CLLM_WEIGHTS_LOCK_MAP(CLLM_WEIGHTS_LOCK_ENUM_)
#undef CLLM_WEIGHTS_LOCK_ENUM_
} cllm_weights_lock_t;

// Load progress: called on the thread that called load, after each chunk it has
// read and once at the end (done == total). Return true to go on, false to cancel
// the load (it then fails with CLLM_EPREEMPTED and leaves the heap as it was). It
// may do anything except call this heap's functions.
typedef bool (*cllm_weights_progress_fn)(void *user, size_t done_bytes, size_t total_bytes);

#define CLLM_WEIGHTS_ALIGN_DEFAULT ((size_t)64)  // alignment when align == 0
#define CLLM_WEIGHTS_MAX_NODES 64                // pages_per_node entries (OS node numbers)

typedef struct cllm_weights_config {
  size_t struct_size;              // set by cllm_weights_config_default()
  size_t capacity_bytes;           // the region (required, > 0); rounded up, see above
  cllm_weights_numa_t numa;        // default LOCAL
  int node;                        // BIND: the node (topology index), default 0
  const int *interleave_nodes;     // INTERLEAVE: the nodes (borrowed during create);
  int n_interleave_nodes;          //   NULL/0 = every node of the topology
  cllm_weights_huge_t huge_pages;  // default TRANSPARENT
  cllm_weights_lock_t lock;        // default OFF
  cllm_monitor_t *monitor;         // charged (WEIGHTS) for what is committed; NULL = global
  const cllm_topology_t *topology; // NULL = cllm_topology_system(); must outlive the heap
  int reader_threads;              // threads that commit the region and read loads,
                                   // the calling thread included (1 = it alone; at most
                                   // 64; 0 = auto: the CPUs this process may use, at
                                   // most 8). One thread's pread copies at about half
                                   // of memcpy bandwidth (the kernel's copy), two reach
                                   // it. On a machine with several nodes each extra
                                   // thread is bound to the CPUs of a node of the policy
                                   // (with no policy there, commit stays on the caller)
  size_t read_chunk_bytes;         // one pread / one progress step; 0 = 8 MiB;
                                   // clamped to [64 KiB, 1 GiB]
  cllm_weights_progress_fn progress; // optional, for every load
  void *progress_user;
} cllm_weights_config_t;

// Defaults: capacity 0 (must be set), LOCAL, TRANSPARENT huge pages, no locking,
// global monitor, system topology, auto readers, 8 MiB chunks. Thread: any.
CLLM_API cllm_weights_config_t cllm_weights_config_default(void);

// Create the heap: reserve, map, place and lock the whole region, no page written
// (see the order above). *out is NULL on error and nothing is leaked (region unmapped,
// monitor released). Errors: CLLM_EINVAL (out NULL, cfg NULL (no capacity), bad struct_size,
// capacity 0, unknown enum, reader_threads < 0 or > 64, a node out of range,
// more than 64 interleave nodes),
// CLLM_EOVERFLOW (capacity cannot be rounded up), CLLM_ELIMIT (the monitor refused
// the capacity), CLLM_ENOMEM (metadata or map failed), CLLM_ENOTSUP /
// CLLM_ESYS (a placement that matters could not be applied, see above), CLLM_ESYS
// (lock REQUIRED and mlock failed: the errno and RLIMIT_MEMLOCK are logged).
// Thread: any.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_weights_create(const cllm_weights_config_t *cfg,
                                                           cllm_weights_t **out);
// Unmap the region (every pointer from the heap becomes invalid) and release the
// monitor. NULL is a no-op. Thread: external-sync (no other thread may use it).
CLLM_API void cllm_weights_destroy(cllm_weights_t *w);

// Bump-allocate `bytes` (zero-filled) aligned to `align` (a power of two; 0 = 64;
// e.g. 4096 for page alignment). Nothing is freed until destroy.
// Errors: CLLM_EINVAL (w or out NULL, bytes 0, align not a power of two),
// CLLM_ESTATE (sealed), CLLM_ENOMEM (does not fit in what is left, or its pages
// could not be committed). On error *out is NULL and the heap is unchanged.
// Thread: external-sync (the calling thread commits pages, with the reader threads).
CLLM_API CLLM_NODISCARD cllm_status_t cllm_weights_alloc(cllm_weights_t *w, size_t bytes,
                                                          size_t align, void **out);

// `bytes` for a load: the rest of the file from `offset`.
#define CLLM_WEIGHTS_TO_EOF SIZE_MAX

// The bytes cllm_weights_create(cfg) charges the monitor (capacity_bytes rounded
// as documented above, times the copies REPLICATE makes on this machine); 0 for a
// config create refuses. Thread: any.
CLLM_API size_t cllm_weights_footprint(const cllm_weights_config_t *cfg);

// Read `bytes` (or CLLM_WEIGHTS_TO_EOF: the rest of the file) of the file at `path`
// from `offset` into a new 64-byte aligned allocation, bit-exact, with pread calls
// of read_chunk_bytes on reader_threads threads, reporting progress through the
// configured callback. On success *out is the data; on error *out is NULL and the
// heap is as it was (nothing allocated, the zeros back). Errors: CLLM_EINVAL (NULL
// w/path/out, bytes 0), CLLM_ESTATE (sealed), CLLM_ENOMEM (does not fit, or its
// pages could not be committed),
// CLLM_ENOTFOUND (no such file), CLLM_ERANGE (offset + bytes beyond the end of the
// file; TO_EOF with nothing left), CLLM_EIO (a read error, or the file got shorter
// during the load), CLLM_ESYS (open or read failed otherwise, e.g.
// EACCES, EMFILE, EISDIR), CLLM_EPREEMPTED (the progress callback cancelled),
// CLLM_EOVERFLOW (offset + bytes overflows or passes the largest file offset,
// 2^63-1). Thread: external-sync.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_weights_load_path(cllm_weights_t *w, const char *path,
                                                              uint64_t offset, size_t bytes,
                                                              void **out);
// As load_path, from an open file descriptor (borrowed; its file position is not
// used or changed). Errors as load_path, and CLLM_EINVAL for fd < 0 or an fd that
// cannot be stat'ed. Thread: external-sync.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_weights_load_fd(cllm_weights_t *w, int fd,
                                                            uint64_t offset, size_t bytes,
                                                            void **out);

// Make the whole region read-only (mprotect): a later write is a SIGSEGV, reads
// keep working; alloc and load are refused with CLLM_ESTATE. Sealing a sealed heap
// is a no-op (CLLM_OK). First commits the pages no alloc or load wrote (see Commit
// policy). Errors: CLLM_EINVAL (NULL), CLLM_ENOMEM / CLLM_ESYS (that commit failed:
// unsealed, pages already committed stay), CLLM_ESYS (mprotect failed: still
// writable, unchanged). Thread: external-sync.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_weights_seal(cllm_weights_t *w);

// The region's base address (its size is stats' capacity_bytes), e.g. to register
// it with a device; NULL for NULL. With replicas: copy 0. Thread: any.
CLLM_API const void *cllm_weights_base(const cllm_weights_t *w);
// The base of the copy on the calling thread's node (cllm_topology_current_node: a
// system call, so look it up once per thread, after binding it); copy 0 for a thread
// on a CPU outside the topology, and without replicas (then it is
// cllm_weights_base). NULL for NULL. Thread: any.
CLLM_API const void *cllm_weights_local(const cllm_weights_t *w);
// The base of the copy on topology node `node`; NULL for NULL or a node without a
// copy (node < 0 or >= stats' replicas). Thread: any.
CLLM_API const void *cllm_weights_replica(const cllm_weights_t *w, int node);

typedef struct cllm_weights_stats {
  size_t struct_size;             // the caller sets sizeof(cllm_weights_stats_t)
  size_t capacity_bytes;          // the region (rounded as documented)
  size_t used_bytes;              // bump offset (allocations and loads, with padding)
  size_t committed_bytes;         // committed and charged to the monitor
                                  // (= capacity x replicas)
  size_t locked_bytes;            // mlocked (0 or committed_bytes)
  cllm_weights_lock_t lock_requested;
  int lock_errno;                 // mlock's errno when locking fell short, else 0
  size_t memlock_limit_bytes;     // RLIMIT_MEMLOCK when locking was tried (SIZE_MAX:
                                  // unlimited; root bypasses it with CAP_IPC_LOCK)
  cllm_weights_huge_t huge_requested;
  cllm_weights_huge_t huge_applied; // HUGETLBFS -> TRANSPARENT when the pool was short,
                                    // TRANSPARENT -> OFF when madvise failed
  int huge_errno;                 // why huge_applied differs from huge_requested, else 0
  size_t huge_bytes;              // bytes backed by huge pages, read back from the kernel
                                  // (smaps AnonHugePages; the whole region for hugetlbfs)
  cllm_weights_numa_t numa_requested;
  cllm_weights_numa_t numa_applied; // LOCAL is reported as BIND when it was bound
  uint64_t numa_nodes_mask;       // topology nodes of the applied policy (bit i = node
                                  // i; 0 for DEFAULT)
  cllm_status_t numa_status;      // why numa_applied differs from numa_requested (the
                                  // binding's status), else CLLM_OK
  int pages_nodes;                // entries filled in pages_per_node (highest OS node + 1)
  size_t pages_per_node[CLLM_WEIGHTS_MAX_NODES]; // base pages per OS node (move_pages)
  size_t pages_absent;            // pages not present (0 once sealed)
  size_t pages_other;             // pages on nodes >= CLLM_WEIGHTS_MAX_NODES or unknown
  size_t page_bytes;              // the base page size the counts are in
  cllm_status_t readback_status;  // CLLM_OK, or CLLM_ESYS if the kernel queries failed
                                  // (then huge_bytes/pages_* are 0)
  bool sealed;
  uint64_t loads;                 // successful loads
  uint64_t loaded_bytes;          // bytes they read
  uint64_t load_failures;         // loads that failed (heap left as it was)
  int last_load_errno;            // errno of the most recent open or read that failed
                                  // (0 if none has)
  size_t resident_bytes;          // region bytes resident, read back from the kernel
                                  // (mincore); 0 when readback_status is not CLLM_OK
  int replicas;                   // copies of the weights (1 unless REPLICATE applied);
                                  // pages_* above cover all of them
} cllm_weights_stats_t;

// Fill *st. Reads the page placement and huge pages back from the kernel: O(pages)
// (a move_pages query per 1024 pages and one pass over /proc/self/smaps), so call
// it after loading, not on a hot path. Errors: CLLM_EINVAL (NULL, bad
// struct_size). Thread: any (the figures are each exact; not one snapshot under alloc).
CLLM_API CLLM_NODISCARD cllm_status_t cllm_weights_stats(const cllm_weights_t *w,
                                                          cllm_weights_stats_t *st);
// As cllm_weights_stats, with the page read-back (huge_bytes, pages_*) of copy
// `replica` only. Errors: as stats, and CLLM_ENOTFOUND (replica < 0 or >= replicas).
// Thread: any.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_weights_replica_stats(const cllm_weights_t *w,
                                                                  int replica,
                                                                  cllm_weights_stats_t *st);

// Verify the invariants (used <= committed pages <= capacity, all once sealed, locked is 0 or
// capacity, the monitor holds at least what is committed, the bytes past `used`
// are zero when CLLM_DEBUG >= 3). Returns CLLM_ECORRUPT on a violation (and logs
// which), CLLM_EINVAL for NULL. Thread: external-sync.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_weights_check(const cllm_weights_t *w);

// "local", "bind", "interleave", "default", "replicate"; "unknown" otherwise. Static storage.
// These three: Thread: any.
CLLM_API const char *cllm_weights_numa_name(cllm_weights_numa_t p);
// "off", "transparent", "hugetlbfs"; "unknown" otherwise.
CLLM_API const char *cllm_weights_huge_name(cllm_weights_huge_t h);
// "off", "best_effort", "required"; "unknown" otherwise.
CLLM_API const char *cllm_weights_lock_name(cllm_weights_lock_t l);

CLLM_EXTERN_C_END
#endif /* CLLM_WEIGHTS_H */
