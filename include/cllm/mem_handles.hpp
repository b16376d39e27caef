/* cllm-mem for C++, part of <cllm/mem.hpp> (include that): move-only RAII owners of
 * the C objects (Topology, Arena, WeightsHeap, Heaps, KVCache, KVTier) and the stats
 * writers as strings.
 * The rules (errors, callbacks, threads) are in mem.hpp's header comment.
 */
#ifndef CLLM_MEM_HANDLES_HPP
#define CLLM_MEM_HANDLES_HPP

#include <cllm/mem_core.hpp>

#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <cllm/arena.h>
#include <cllm/heap.h>
#include <cllm/kv_cache.h>
#include <cllm/kv_tier.h>
#include <cllm/numa.h>
#include <cllm/stats.h>
#include <cllm/weights.h>

namespace cllm {

/* ---- Topology: RAII over cllm_topology_t ------------------------------------------- */

// A loaded NUMA topology (include/cllm/numa.h): the running machine, an XML file or a
// synthetic description. Pass get() to components' configs; it must outlive them. The
// shared topology of the running machine is cllm_topology_system() (never destroyed).
// Thread: any for queries; destroyed when no one uses it.
class Topology {
 public:
  // The running machine, loaded afresh. Throws Error (CLLM_ENOMEM, CLLM_ESYS).
  Topology() : Topology(cllm_topology_config_default()) {}
  // Throws Error (CLLM_EINVAL: two sources, max_nodes < 0, a description hwloc
  // rejects; CLLM_ENOMEM; CLLM_ESYS).
  explicit Topology(const cllm_topology_config_t& cfg) {
    cllm_topology_t* t = nullptr;
    checkStatus(cllm_topology_create(&cfg, &t), "cllm_topology_create");
    h_.reset(t);
  }

  cllm_topology_t* get() const noexcept { return h_.get(); }

  int nodes() const noexcept { return cllm_topology_nodes(get()); }
  bool isThisSystem() const noexcept { return cllm_topology_is_this_system(get()); }
  // Throws Error (CLLM_ENOTFOUND: no such node).
  cllm_numa_node_info_t nodeInfo(int node) const {
    cllm_numa_node_info_t info{};
    checkStatus(cllm_topology_node_info(get(), node, &info), "cllm_topology_node_info");
    return info;
  }
  // The node's CPUs (OS numbers, ascending). Throws Error (CLLM_ENOTFOUND).
  std::vector<int> nodeCpus(int node) const {
    size_t n = 0;
    checkStatus(cllm_topology_node_cpus(get(), node, nullptr, 0, &n), "cllm_topology_node_cpus");
    std::vector<int> cpus(n);
    checkStatus(cllm_topology_node_cpus(get(), node, cpus.data(), cpus.size(), &n),
                "cllm_topology_node_cpus");
    return cpus;
  }
  // The node of an OS CPU number, or -1.
  int nodeOfCpu(int cpu) const noexcept { return cllm_topology_node_of_cpu(get(), cpu); }
  // Bind the calling thread to the node's CPUs. Throws Error (CLLM_ENOTFOUND,
  // CLLM_ENOTSUP: not this machine, CLLM_ESYS).
  void bindThread(int node) const {
    checkStatus(cllm_thread_bind_node(get(), node), "cllm_thread_bind_node");
  }

 private:
  detail::Handle<cllm_topology_t, cllm_topology_destroy> h_;
};

/* ---- Arena: RAII over cllm_arena_t ----------------------------------------------- */

// A step arena (include/cllm/arena.h). Thread: external-sync, like the C arena.
class Arena {
 public:
  Arena() : Arena(cllm_arena_config_default()) {}
  // Throws Error (CLLM_EINVAL, CLLM_ENOMEM) or LimitError (first chunk refused).
  explicit Arena(const cllm_arena_config_t& cfg) {
    detail::CaptureScope scope;
    cllm_arena_t* a = nullptr;
    cllm_status_t rc = cllm_arena_create(&cfg, &a);
    if (scope.pending()) cllm_arena_destroy(a);
    scope.rethrowPending();
    checkStatus(rc, "cllm_arena_create");
    h_.reset(a);
  }

  cllm_arena_t* get() const noexcept { return h_.get(); }

  // The inline bump path; nullptr on failure (cllm_last_status() says why). A limit
  // callback exception raised while getting a chunk is dropped (noexcept: counted).
  void* alloc(size_t bytes) noexcept { return cllm_arena_alloc(get(), bytes); }
  void* allocAligned(size_t bytes, size_t align) noexcept {
    return cllm_arena_alloc_aligned(get(), bytes, align);
  }
  // n objects of T (uninitialised), aligned to max(64, alignof(T)); nullptr if n *
  // sizeof(T) overflows (CLLM_EINVAL) or on failure.
  template <class T>
  T* allocArray(size_t n) noexcept {
    size_t bytes = 0;
    if (__builtin_mul_overflow(n, sizeof(T), &bytes)) bytes = SIZE_MAX;  // refused: EINVAL
    size_t align = alignof(T) > CLLM_ARENA_DEFAULT_ALIGN ? alignof(T) : CLLM_ARENA_DEFAULT_ALIGN;
    return static_cast<T*>(cllm_arena_alloc_aligned(get(), bytes, align));
  }
  cllm_float_array_t floats(size_t n) noexcept { return cllm_arena_floats(get(), n); }

  // End the step (every allocation released). Throws Error (CLLM_EINVAL: no arena).
  void reset() {
    detail::CaptureScope scope;  // a coalesce may obtain a chunk
    cllm_status_t rc = cllm_arena_reset(get());
    scope.rethrowPending();
    checkStatus(rc, "cllm_arena_reset");
  }
  // Throws Error (CLLM_EINVAL, CLLM_ENOMEM) when no mark could be taken.
  cllm_arena_mark_t mark() {
    cllm_arena_mark_t m = cllm_arena_mark(get());
    if (m.id_ == 0) throwStatus(cllm_last_status(), "cllm_arena_mark");
    return m;
  }
  // Throws Error (CLLM_EINVAL, CLLM_ESTATE: stale mark; nothing changed).
  void rewind(const cllm_arena_mark_t& m) { checkStatus(cllm_arena_rewind(get(), m), "cllm_arena_rewind"); }
  // Throws Error / LimitError (nothing changed).
  void reserve(size_t bytes) {
    detail::CaptureScope scope;
    cllm_status_t rc = cllm_arena_reserve(get(), bytes);
    scope.rethrowPending();
    checkStatus(rc, "cllm_arena_reserve");
  }
  void trim() { checkStatus(cllm_arena_trim(get()), "cllm_arena_trim"); }
  cllm_arena_stats_t stats() const {
    cllm_arena_stats_t st{};
    st.struct_size = sizeof st;
    checkStatus(cllm_arena_stats(get(), &st), "cllm_arena_stats");
    return st;
  }
  void check() const { checkStatus(cllm_arena_check(get()), "cllm_arena_check"); }

  // Takes a mark now and rewinds to it at scope exit (errors ignored: a scope made
  // stale by a reset inside it is harmless).
  class Scope {
   public:
    explicit Scope(Arena& a) : a_(a.get()), m_(a.mark()) {}
    ~Scope() { CLLM_DISCARD(cllm_arena_rewind(a_, m_)); }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    cllm_arena_t* a_;
    cllm_arena_mark_t m_;
  };

  // A cursor (cllm_arena_cursor_t) for a hot loop: the arena's position lent to this
  // local object, kept in registers across char stores. While it lives, the arena's
  // own alloc/mark/rewind/reset/reserve/trim are refused (CLLM_ESTATE). Keep it a
  // local variable (neither copyable nor movable: a copy would be a stale cursor).
  // The destructor gives the position back (errors ignored); end() does it early.
  class Cursor {
   public:
    // Throws Error (CLLM_EINVAL: no arena; CLLM_ESTATE: a cursor is already out).
    explicit Cursor(Arena& a) : a_(a.get()) {
      checkStatus(cllm_arena_cursor_begin(a_, &c_), "cllm_arena_cursor_begin");
      open_ = true;
    }
    ~Cursor() {
      if (open_) CLLM_DISCARD(cllm_arena_cursor_end(a_, &c_));
    }
    Cursor(const Cursor&) = delete;
    Cursor& operator=(const Cursor&) = delete;

    // As Arena::alloc / allocAligned (nullptr on failure, cllm_last_status() says why;
    // after end(): nullptr, CLLM_ESTATE).
    void* alloc(size_t bytes) noexcept { return cllm_arena_cursor_alloc(&c_, bytes); }
    void* allocAligned(size_t bytes, size_t align) noexcept {
      return cllm_arena_cursor_alloc_aligned(&c_, bytes, align);
    }
    // n objects of T (no constructors run); nullptr when n * sizeof(T) overflows.
    template <class T>
    T* allocArray(size_t n, size_t align = alignof(T) > 64 ? alignof(T) : 64) noexcept {
      size_t bytes;
      if (__builtin_mul_overflow(n, sizeof(T), &bytes)) bytes = SIZE_MAX;  // refused: EINVAL
      return static_cast<T*>(cllm_arena_cursor_alloc_aligned(&c_, bytes, align));
    }
    // Give the position back now. Throws Error (CLLM_ESTATE: already ended).
    void end() {
      checkStatus(open_ ? cllm_arena_cursor_end(a_, &c_) : CLLM_ESTATE, "cllm_arena_cursor_end");
      open_ = false;
    }

   private:
    cllm_arena_t* a_;
    cllm_arena_cursor_t c_{};
    bool open_ = false;
  };

 private:
  detail::Handle<cllm_arena_t, cllm_arena_destroy> h_;
};

/* ---- WeightsHeap: RAII over cllm_weights_t --------------------------------------- */

// The pinned weights heap (include/cllm/weights.h). Thread: external-sync for create,
// alloc, load and seal; the weights themselves may be read from any thread.
class WeightsHeap {
 public:
  // Load progress (done, total): return false to cancel the load.
  using ProgressCallback = std::function<bool(size_t done, size_t total)>;

  // Throws Error (see cllm_weights_create: CLLM_EINVAL, CLLM_ENOMEM, CLLM_ESYS, ...)
  // or LimitError. A non-empty `progress` replaces cfg.progress; if it throws, the
  // load is cancelled and load() rethrows its exception.
  explicit WeightsHeap(cllm_weights_config_t cfg, ProgressCallback progress = {})
      : slot_(new detail::CallbackSlot<ProgressCallback>) {
    if (slot_->store(std::move(progress))) {
      cfg.progress = &progressTrampoline;
      cfg.progress_user = slot_.get();
    }
    detail::CaptureScope scope;
    cllm_weights_t* w = nullptr;
    cllm_status_t rc = cllm_weights_create(&cfg, &w);
    if (scope.pending()) cllm_weights_destroy(w);
    scope.rethrowPending();
    checkStatus(rc, "cllm_weights_create");
    h_.reset(w);
  }

  cllm_weights_t* get() const noexcept { return h_.get(); }

  // Zero-filled, aligned to align (0 = 64). Throws Error (CLLM_EINVAL, CLLM_ESTATE,
  // CLLM_ENOMEM: does not fit).
  void* alloc(size_t bytes, size_t align = 0) {
    void* p = nullptr;
    checkStatus(cllm_weights_alloc(get(), bytes, align, &p), "cllm_weights_alloc");
    return p;
  }
  // A file range, bit-exact, 64-byte aligned. Throws Error (see cllm_weights_load_path),
  // or the progress callback's exception (the load is then undone).
  void* load(const std::string& path, uint64_t offset, size_t bytes) {
    detail::CaptureScope scope;
    void* p = nullptr;
    cllm_status_t rc = cllm_weights_load_path(get(), path.c_str(), offset, bytes, &p);
    scope.rethrowPending();
    checkStatus(rc, "cllm_weights_load_path");
    return p;
  }
  void* loadFd(int fd, uint64_t offset, size_t bytes) {
    detail::CaptureScope scope;
    void* p = nullptr;
    cllm_status_t rc = cllm_weights_load_fd(get(), fd, offset, bytes, &p);
    scope.rethrowPending();
    checkStatus(rc, "cllm_weights_load_fd");
    return p;
  }
  void seal() { checkStatus(cllm_weights_seal(get()), "cllm_weights_seal"); }
  const void* base() const noexcept { return cllm_weights_base(get()); }
  cllm_weights_stats_t stats() const {
    cllm_weights_stats_t st{};
    st.struct_size = sizeof st;
    checkStatus(cllm_weights_stats(get(), &st), "cllm_weights_stats");
    return st;
  }
  void check() const { checkStatus(cllm_weights_check(get()), "cllm_weights_check"); }

 private:
  static bool progressTrampoline(void* user, size_t done, size_t total) noexcept {
    try {
      auto fn = static_cast<detail::CallbackSlot<ProgressCallback>*>(user)->load();
      return fn ? (*fn)(done, total) : true;
    } catch (...) {
      detail::captureCurrentException();
      return false;  // cancel: load() rethrows the exception
    }
  }

  std::unique_ptr<detail::CallbackSlot<ProgressCallback>> slot_;
  detail::Handle<cllm_weights_t, cllm_weights_destroy> h_;  // last: destroyed first
};

/* ---- Heaps: RAII over cllm_heaps_t ----------------------------------------------- */

// The per-thread NUMA heaps (include/cllm/heap.h): alloc on the calling thread's heap
// (Thread: owner), free from any thread.
class Heaps {
 public:
  Heaps() : Heaps(cllm_heaps_config_default()) {}
  // Throws Error (CLLM_EINVAL, CLLM_ENOMEM, CLLM_ESYS, CLLM_ENOTSUP).
  explicit Heaps(const cllm_heaps_config_t& cfg) {
    cllm_heaps_t* h = nullptr;
    checkStatus(cllm_heaps_create(&cfg, &h), "cllm_heaps_create");
    h_.reset(h);
  }

  cllm_heaps_t* get() const noexcept { return h_.get(); }
  cllm_heap_mode_t mode() const noexcept { return cllm_heaps_mode(get()); }
  void attach(int node) { checkStatus(cllm_heap_attach(get(), node), "cllm_heap_attach"); }
  int node() noexcept { return cllm_heap_node(get()); }
  // nullptr on failure (cllm_last_status() says why). Thread: owner.
  void* alloc(size_t bytes) noexcept { return cllm_heap_alloc(get(), bytes); }
  void* allocAligned(size_t bytes, size_t align) noexcept {
    return cllm_heap_alloc_aligned(get(), bytes, align);
  }
  void* calloc(size_t n, size_t size) noexcept { return cllm_heap_calloc(get(), n, size); }
  void* realloc(void* p, size_t bytes) noexcept { return cllm_heap_realloc(get(), p, bytes); }
  // Thread: any.
  void free(void* p) noexcept { cllm_heap_free(get(), p); }
  size_t usableSize(const void* p) const noexcept { return cllm_heap_usable_size(get(), p); }
  void threadFlush() { checkStatus(cllm_heap_thread_flush(get()), "cllm_heap_thread_flush"); }
  cllm_heaps_stats_t stats() const {
    auto st = std::make_unique<cllm_heaps_stats_t>();  // large (per-node array)
    std::memset(st.get(), 0, sizeof *st);
    st->struct_size = sizeof *st;
    checkStatus(cllm_heaps_stats(get(), st.get()), "cllm_heaps_stats");
    return *st;
  }
  void check() const { checkStatus(cllm_heaps_check(get()), "cllm_heaps_check"); }

 private:
  detail::Handle<cllm_heaps_t, cllm_heaps_destroy> h_;
};

/* ---- KVCache: RAII over cllm_kv_cache_t ------------------------------------------ */

namespace detail {
using KvEvictFn = std::function<void(const std::string& id, cllm_kv_evict_reason_t reason)>;
using KvEvictSlot = CallbackSlot<KvEvictFn>;

inline void kvEvictTrampoline(void* user, const char* id, cllm_kv_evict_reason_t reason) noexcept {
  try {
    std::shared_ptr<const KvEvictFn> fn = static_cast<KvEvictSlot*>(user)->load();
    if (fn) (*fn)(std::string(id != nullptr ? id : ""), reason);
  } catch (...) {
    captureCurrentException();
  }
}

// A request id as the C API wants it: non-empty, no NUL inside.
inline const char* kvId(const std::string& id, const char* context) {
  if (id.empty() || std::memchr(id.data(), '\0', id.size()) != nullptr)
    throw Error(CLLM_EINVAL, std::string(context) + ": request id empty or containing NUL");
  return id.c_str();
}
}  // namespace detail

// The paged KV cache (include/cllm/kv_cache.h). Thread: any.
class KVCache {
 public:
  // (request id, why): LRU for a dropped copy-API entry, PREEMPTED for a sequence.
  using EvictionCallback = detail::KvEvictFn;

  // Throws Error (see cllm_kv_cache_create). If cfg.evict_fn is NULL the cache calls
  // back through this object, so setEvictionCallback works; otherwise the C callback
  // in cfg is kept and setEvictionCallback throws Error (CLLM_ESTATE).
  explicit KVCache(cllm_kv_config_t cfg) : slot_(new detail::KvEvictSlot) {
    if (cfg.evict_fn == nullptr) {
      cfg.evict_fn = &detail::kvEvictTrampoline;
      cfg.evict_user = slot_.get();
      own_callback_ = true;
    }
    cllm_kv_cache_t* kv = nullptr;
    checkStatus(cllm_kv_cache_create(&cfg, &kv), "cllm_kv_cache_create");
    h_.reset(kv);
  }

  cllm_kv_cache_t* get() const noexcept { return h_.get(); }

  // Thread: any; runs outside every lock, on the thread whose call evicted.
  void setEvictionCallback(EvictionCallback cb) {
    if (!own_callback_ || !slot_) throw Error(CLLM_ESTATE, "KVCache::setEvictionCallback: C callback in config");
    slot_->store(std::move(cb));
  }

  size_t blockBytes() const noexcept { return cllm_kv_block_bytes(get()); }
  size_t numBlocks() const noexcept { return cllm_kv_num_blocks(get()); }
  uint32_t blockTokens() const noexcept { return cllm_kv_block_tokens(get()); }
  // K and V data of `block` in `layer` (either out may be nullptr). Throws Error.
  void blockLayer(uint32_t block, uint32_t layer, void** k, void** v) const {
    checkStatus(cllm_kv_block_layer(get(), block, layer, k, v), "cllm_kv_block_layer");
  }

  /* sequences: each throws Error with the C call's status */
  cllm_kv_seq_t open(const std::string& id, const cllm_kv_seq_opts_t* opts = nullptr) {
    cllm_kv_seq_t s{};
    checkStatus(cllm_kv_seq_open(get(), detail::kvId(id, "cllm_kv_seq_open"), opts, &s), "cllm_kv_seq_open");
    return s;
  }
  // Shares the longest cached prefix; *nCached (optional) gets the tokens present.
  cllm_kv_seq_t openWithPrompt(const std::string& id, const cllm_kv_token_t* tokens, size_t n,
                               size_t* nCached = nullptr, const cllm_kv_seq_opts_t* opts = nullptr) {
    cllm_kv_seq_t s{};
    size_t cached = 0;
    checkStatus(cllm_kv_seq_open_with_prompt(get(), detail::kvId(id, "cllm_kv_seq_open_with_prompt"), opts,
                                             tokens, n, &s, &cached),
                "cllm_kv_seq_open_with_prompt");
    if (nCached != nullptr) *nCached = cached;
    return s;
  }
  cllm_kv_seq_t find(const std::string& id) {
    cllm_kv_seq_t s{};
    checkStatus(cllm_kv_seq_find(get(), detail::kvId(id, "cllm_kv_seq_find"), &s), "cllm_kv_seq_find");
    return s;
  }
  // May evict or preempt (callbacks); locs (optional) gets nTokens entries.
  void reserve(cllm_kv_seq_t seq, size_t nTokens, cllm_kv_loc_t* locs = nullptr) {
    detail::CaptureScope scope;
    cllm_status_t rc = cllm_kv_seq_reserve(get(), seq, nTokens, locs);
    scope.rethrowPending();
    checkStatus(rc, "cllm_kv_seq_reserve");
  }
  void commit(cllm_kv_seq_t seq, const cllm_kv_token_t* tokens, size_t n) {
    checkStatus(cllm_kv_seq_commit(get(), seq, tokens, n), "cllm_kv_seq_commit");
  }
  std::vector<uint32_t> blockTable(cllm_kv_seq_t seq) {
    for (;;) {
      size_t n = 0;
      checkStatus(cllm_kv_seq_block_table(get(), seq, nullptr, 0, &n), "cllm_kv_seq_block_table");
      std::vector<uint32_t> out(n);
      cllm_status_t rc = cllm_kv_seq_block_table(get(), seq, out.data(), out.size(), &n);
      if (rc == CLLM_ERANGE) continue;  // grew meanwhile
      checkStatus(rc, "cllm_kv_seq_block_table");
      out.resize(n);
      return out;
    }
  }
  size_t length(cllm_kv_seq_t seq) {
    size_t n = 0;
    checkStatus(cllm_kv_seq_length(get(), seq, &n), "cllm_kv_seq_length");
    return n;
  }
  void touch(cllm_kv_seq_t seq) { checkStatus(cllm_kv_seq_touch(get(), seq), "cllm_kv_seq_touch"); }
  void close(cllm_kv_seq_t seq) { checkStatus(cllm_kv_seq_close(get(), seq), "cllm_kv_seq_close"); }
  cllm_kv_seq_t fork(cllm_kv_seq_t parent, const std::string& childId) {
    cllm_kv_seq_t s{};
    checkStatus(cllm_kv_seq_fork(get(), parent, detail::kvId(childId, "cllm_kv_seq_fork"), &s),
                "cllm_kv_seq_fork");
    return s;
  }
  size_t pin(cllm_kv_seq_t seq) {
    size_t n = 0;
    checkStatus(cllm_kv_seq_pin(get(), seq, &n), "cllm_kv_seq_pin");
    return n;
  }
  size_t unpin(cllm_kv_seq_t seq) {
    size_t n = 0;
    checkStatus(cllm_kv_seq_unpin(get(), seq, &n), "cllm_kv_seq_unpin");
    return n;
  }

  /* the copy API */

  // Insert or replace; LRU entries are evicted (callback) until it fits. Throws Error
  // (CLLM_ERANGE: larger than the budget, nothing evicted; CLLM_ENOMEM; CLLM_EEXIST;
  // CLLM_EINVAL), LimitError, or the eviction callback's exception (the put happened).
  void put(const std::string& id, const float* keys, size_t nKeys, const float* values,
           size_t nValues) {
    const char* cid = detail::kvId(id, "cllm_kv_put");
    detail::CaptureScope scope;
    cllm_status_t rc = cllm_kv_put(get(), cid, keys, nKeys, values, nValues);
    scope.rethrowPending();
    checkStatus(rc, "cllm_kv_put");
  }
  // Copy entry `id` out (resizing the vectors) and make it most recently used; false
  // if there is no such entry. Throws Error for other failures, std::bad_alloc.
  bool get(const std::string& id, std::vector<float>& keys, std::vector<float>& values) {
    const char* cid = detail::kvId(id, "cllm_kv_get");
    for (;;) {
      size_t nk = 0, nv = 0;
      cllm_status_t rc = cllm_kv_get(get(), cid, nullptr, 0, &nk, nullptr, 0, &nv);
      if (rc == CLLM_ENOTFOUND) return false;
      checkStatus(rc, "cllm_kv_get");
      keys.resize(nk);
      values.resize(nv);
      rc = cllm_kv_get(get(), cid, keys.data(), keys.size(), &nk, values.data(), values.size(), &nv);
      if (rc == CLLM_ENOTFOUND) return false;  // evicted meanwhile
      if (rc == CLLM_ERANGE) continue;          // replaced by a larger entry meanwhile
      checkStatus(rc, "cllm_kv_get");
      keys.resize(nk);
      values.resize(nv);
      return true;
    }
  }
  // Drop entry `id` (no callback); false if there is none.
  bool evict(const std::string& id) {
    cllm_status_t rc = cllm_kv_evict(get(), detail::kvId(id, "cllm_kv_evict"));
    if (rc == CLLM_ENOTFOUND) return false;
    checkStatus(rc, "cllm_kv_evict");
    return true;
  }
  size_t usedBytes() const noexcept { return cllm_kv_used_bytes(get()); }
  size_t totalBytes() const noexcept { return cllm_kv_total_bytes(get()); }

  cllm_kv_stats_t stats() const {
    cllm_kv_stats_t st{};
    st.struct_size = sizeof st;
    checkStatus(cllm_kv_stats(get(), &st), "cllm_kv_stats");
    return st;
  }
  void check() const { checkStatus(cllm_kv_check(get()), "cllm_kv_check"); }

 private:
  std::unique_ptr<detail::KvEvictSlot> slot_;  // stable: the C cache points to it
  bool own_callback_ = false;
  detail::Handle<cllm_kv_cache_t, cllm_kv_cache_destroy> h_;  // last: destroyed first
};

/* ---- KVTier: RAII over cllm_kv_tier_t ---------------------------------------------- */

// A KV cache's remote tier (include/cllm/kv_tier.h): spills indexed blocks to a store
// and fetches verified ones back. It must be destroyed before its cache: declare it
// after the KVCache. Thread: any (one caller per sequence); destroy: external-sync,
// with no probe or fetch running.
class KVTier {
 public:
  // Attach to `kv` and start the tier's threads. The store in cfg belongs to the tier
  // once this returns; on a throw it stays the caller's. Throws Error (CLLM_EINVAL,
  // CLLM_EEXIST: the cache has a tier, CLLM_ENOMEM, CLLM_ESYS).
  KVTier(KVCache& kv, const cllm_kv_tier_config_t& cfg) {
    cllm_kv_tier_t* t = nullptr;
    checkStatus(cllm_kv_tier_create(kv.get(), &cfg, &t), "cllm_kv_tier_create");
    h_.reset(t);
  }

  cllm_kv_tier_t* get() const noexcept { return h_.get(); }

  // Tokens after the sequence's committed prefix that the store holds for this prompt
  // (whole blocks; 0 while the store is down). Throws Error (see cllm_kv_tier_probe).
  size_t probe(cllm_kv_seq_t seq, const cllm_kv_token_t* tokens, size_t n) {
    size_t avail = 0;
    checkStatus(cllm_kv_tier_probe(get(), seq, tokens, n, &avail), "cllm_kv_tier_probe");
    return avail;
  }
  // Fetch up to maxTokens of the prompt into the sequence, verified and committed;
  // returns the tokens committed. May evict or preempt (callbacks). Throws Error (see
  // cllm_kv_tier_fetch) or the eviction callback's exception (the fetch happened).
  size_t fetch(cllm_kv_seq_t seq, const cllm_kv_token_t* tokens, size_t n, size_t maxTokens) {
    detail::CaptureScope scope;
    size_t ready = 0;
    cllm_status_t rc = cllm_kv_tier_fetch(get(), seq, tokens, n, maxTokens, &ready);
    scope.rethrowPending();
    checkStatus(rc, "cllm_kv_tier_fetch");
    return ready;
  }
  // Spill every indexed block not yet stored and wait; false if that took longer than
  // timeoutMs or the store is down (CLLM_EBUSY). Throws Error (CLLM_EINVAL).
  bool flush(uint32_t timeoutMs) {
    cllm_status_t rc = cllm_kv_tier_flush(get(), timeoutMs);
    if (rc == CLLM_EBUSY) return false;
    checkStatus(rc, "cllm_kv_tier_flush");
    return true;
  }

 private:
  detail::Handle<cllm_kv_tier_t, cllm_kv_tier_destroy> h_;
};

/* ---- stats writers ------------------------------------------------------------------ */

namespace detail {
inline size_t appendToString(void* user, const char* buf, size_t n) noexcept {
  try {
    static_cast<std::string*>(user)->append(buf, n);
    return n;
  } catch (...) {
    captureCurrentException();  // std::bad_alloc: the writer stops (CLLM_EIO)
    return 0;
  }
}

template <class Writer>
std::string writeStats(Writer writer, const cllm_stats_sources_t& src, const char* context) {
  std::string out;
  CaptureScope scope;
  cllm_status_t rc = writer(&src, &appendToString, &out);
  scope.rethrowPending();
  checkStatus(rc, context);
  return out;
}
}  // namespace detail

// Every figure of `src` (default: the global monitor only) as one JSON object
// (cllm_stats_write_json). Throws Error (see there) or std::bad_alloc.
inline std::string statsJson(const cllm_stats_sources_t& src = cllm_stats_sources_default()) {
  return detail::writeStats(&cllm_stats_write_json, src, "cllm_stats_write_json");
}
// The same in the Prometheus text format (cllm_stats_write_prometheus).
inline std::string statsPrometheus(const cllm_stats_sources_t& src = cllm_stats_sources_default()) {
  return detail::writeStats(&cllm_stats_write_prometheus, src, "cllm_stats_write_prometheus");
}

}  // namespace cllm

#endif /* CLLM_MEM_HANDLES_HPP */
