/* cllm-mem for C++ code written against the seed design (memory-manager-design.zh.md,
 * sections 2.3 and 11): its classes keep their names, signatures and behaviour, so such
 * code switches by including this one header. C++17, header-only, C API only (link
 * -lcllm-mem). New C++ code uses the RAII handles of <cllm/mem.hpp> (included here;
 * its header comment has the rules for errors, callbacks and threads).
 *
 *   #include <cllm/seed.hpp>
 *
 *   auto& mon = cllm::MemoryMonitor::instance();        // the global monitor
 *   mon.setLimit(8ull << 30);
 *   mon.setLimitCallback([](size_t used, size_t limit) { log(used, limit); });
 *   mon.allocate(1 << 20);                              // throws cllm::LimitError
 *   mon.deallocate(1 << 20);
 *
 *   cllm::KVCacheMemoryManager kv(1024);                // 1024 MiB, LRU, thread-safe
 *   kv.insert("req-1", keys, values);                   // false if it can never fit
 *   kv.get("req-1", keys, values);
 *
 * Classes: MemoryMonitor (over cllm_monitor_global()), KVCacheMemoryManager,
 * ModelExecutorMemoryManager, FloatArray, RAIIWrapper<T>.
 *
 * Where the seed is wrong this header is not: limits are one exact
 * reservation (no check-then-add), the peak is the value installed and resetPeak lowers
 * it to the current use (never below), getUsedMemory is O(1) and takes no C++ lock,
 * no user callback ever runs under a lock (C or C++), megabytes are converted with an
 * overflow check, and FloatArray is really 64-byte aligned (mimalloc's plain malloc
 * guarantees 16 bytes only).
 *
 * Errors: the seed's contract: MemoryMonitor::allocate and the
 * ModelExecutorMemoryManager allocations throw std::runtime_error (cllm::LimitError)
 * past the limit, KVCacheMemoryManager::insert/get return bool; other failures throw
 * cllm::Error as in <cllm/mem.hpp>.
 *
 * Thread: MemoryMonitor, KVCacheMemoryManager: any; ModelExecutorMemoryManager:
 * external-sync, as the seed says in its section 6.1.3; FloatArray, RAIIWrapper: like
 * any value, one writer at a time.
 */
#ifndef CLLM_SEED_HPP
#define CLLM_SEED_HPP

#include <cllm/arena.h>
#include <cllm/mem.hpp>

#include <cstddef>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace cllm {

/* ---- MemoryMonitor: the seed's singleton, over cllm_monitor_global() ---------------- */

// The seed's MemoryMonitor (seed 2.3.1). Every figure is the global monitor's, so it
// includes what the library's components charge (KV, STEP, WEIGHTS, HEAP).
// Thread: any.
class MemoryMonitor {
 public:
  typedef std::function<void(size_t used, size_t limit)> MemoryLimitCallback;

  // The one instance (never destroyed, so callbacks stay valid until exit).
  static MemoryMonitor& instance() {
    static MemoryMonitor* inst = new MemoryMonitor();
    return *inst;
  }

  // The total limit in bytes (0 = unlimited). Use below the limit is kept.
  void setLimit(size_t limitBytes) {
    checkStatus(cllm_monitor_set_limit(m_, limitBytes), "cllm_monitor_set_limit");
  }
  size_t getLimit() const noexcept { return cllm_monitor_limit(m_); }

  // Record `bytes` in `cat` (the seed has no categories: the default is HEAP, "anything
  // else"). One exact reservation: if a limit refuses, the reclaimers run, then the
  // limit callback (with the use and the limit that refused), then this throws
  // LimitError ("Memory limit exceeded", a std::runtime_error) and nothing is recorded.
  // If the callback itself throws, that exception propagates instead (as in the seed).
  void allocate(size_t bytes, cllm_category_t cat = CLLM_CAT_HEAP) {
    detail::monitorReserve(m_, cat, bytes, "Memory limit exceeded");
  }
  // Forget `bytes` recorded in `cat`. Releasing more than `cat` holds (the seed's
  // wrap-around) throws Error (CLLM_EINVAL) and changes nothing.
  void deallocate(size_t bytes, cllm_category_t cat = CLLM_CAT_HEAP) {
    checkStatus(cllm_monitor_release(m_, cat, bytes), "MemoryMonitor::deallocate");
  }
  // As deallocate, for destructors: false instead of throwing.
  bool tryDeallocate(size_t bytes, cllm_category_t cat = CLLM_CAT_HEAP) noexcept {
    return cllm_monitor_release(m_, cat, bytes) == CLLM_OK;
  }

  size_t getUsed() const noexcept { return cllm_monitor_used(m_, CLLM_CAT_COUNT); }
  size_t getUsed(cllm_category_t cat) const noexcept { return cllm_monitor_used(m_, cat); }
  size_t getPeak() const noexcept { return cllm_monitor_peak(m_, CLLM_CAT_COUNT); }
  size_t getPeak(cllm_category_t cat) const noexcept { return cllm_monitor_peak(m_, cat); }

  // Called when any reservation on the global monitor is refused, from any component,
  // outside every lock, on the refused thread. Replaces the global monitor's C limit
  // callback (an empty function removes it). Thread: any.
  void setLimitCallback(MemoryLimitCallback callback) {
    detail::LimitFn fn;
    if (callback) {
      fn = [cb = std::move(callback)](cllm_category_t, size_t used, size_t, size_t limit) {
        cb(used, limit);
      };
    }
    detail::monitorSetLimitCallback(m_, slot_, std::move(fn));
  }
  // Lower the peak (total and per category) to the current use, not to 0.
  void resetPeak() { checkStatus(cllm_monitor_reset_peak(m_), "cllm_monitor_reset_peak"); }

  cllm_monitor_t* handle() const noexcept { return m_; }

  MemoryMonitor(const MemoryMonitor&) = delete;
  MemoryMonitor& operator=(const MemoryMonitor&) = delete;

 private:
  MemoryMonitor() : m_(cllm_monitor_global()) {}

  cllm_monitor_t* m_;
  detail::LimitSlot slot_;
};

/* ---- FloatArray and RAIIWrapper (seed 2.3.4, 2.3.5) --------------------------------- */

// n floats, 64-byte aligned (cllm_heap_floats with no heaps: mimalloc inside the
// library), uninitialised, freed by the destructor. Move-only; a moved-from array is
// empty (data() nullptr, size() 0). Not charged to the monitor (the seed's FloatArray
// has no dependency on it; use Arena::floats or cllm_heap_floats for charged arrays).
class FloatArray {
 public:
  static constexpr size_t kAlignment = 64;

  // Throws Error (a std::runtime_error, as the seed's "Failed to allocate FloatArray"):
  // CLLM_EOVERFLOW when size * sizeof(float) overflows, CLLM_ENOMEM when the
  // allocation fails.
  explicit FloatArray(size_t size) : a_{nullptr, 0, nullptr, 0} {
    size_t bytes = 0;
    if (__builtin_mul_overflow(size, sizeof(float), &bytes))
      throw Error(CLLM_EOVERFLOW, "Failed to allocate FloatArray");
    a_ = cllm_heap_floats(nullptr, size);
    if (a_.data == nullptr) throw Error(CLLM_ENOMEM, "Failed to allocate FloatArray");
  }
  ~FloatArray() { cllm_float_array_free(&a_); }
  FloatArray(FloatArray&& o) noexcept : a_(std::exchange(o.a_, empty())) {}
  FloatArray& operator=(FloatArray&& o) noexcept {
    if (this != &o) {
      cllm_float_array_free(&a_);
      a_ = std::exchange(o.a_, empty());
    }
    return *this;
  }
  FloatArray(const FloatArray&) = delete;
  FloatArray& operator=(const FloatArray&) = delete;

  float* data() noexcept { return a_.data; }
  const float* data() const noexcept { return a_.data; }
  size_t size() const noexcept { return a_.n; }
  float& operator[](size_t i) noexcept { return a_.data[i]; }
  const float& operator[](size_t i) const noexcept { return a_.data[i]; }
  float* begin() noexcept { return a_.data; }
  float* end() noexcept { return a_.data + a_.n; }

 private:
  static cllm_float_array_t empty() noexcept { return cllm_float_array_t{nullptr, 0, nullptr, 0}; }
  cllm_float_array_t a_;
};

// Owns one object allocated with `new`: the seed's RAIIWrapper, which is
// std::unique_ptr<T> (get, release, reset, *, ->, bool, move-only) with the seed's
// two differences: the pointer constructor is the default one (no argument: owns
// nothing, it does not allocate a T; seed 11.2.3, while seed 7.1.3 disagrees and its
// own Release test needs nullptr after release), and reset(p) with the pointer it
// already owns keeps it instead of deleting it.
template <typename T>
class RAIIWrapper : public std::unique_ptr<T> {
 public:
  explicit RAIIWrapper(T* ptr = nullptr) noexcept : std::unique_ptr<T>(ptr) {}
  void reset(T* ptr = nullptr) noexcept {
    if (ptr != this->get()) std::unique_ptr<T>::reset(ptr);
  }
};

/* ---- KVCacheMemoryManager (seed 2.3.2, 11.2.2) ------------------------------------ */

namespace detail {
// maxMemoryMb * 1024 * 1024, checked.
inline size_t mebibytes(size_t mb, const char* who) {
  size_t bytes = 0;
  if (__builtin_mul_overflow(mb, static_cast<size_t>(1024) * 1024, &bytes))
    throw std::length_error(std::string(who) + ": maxMemoryMb * 1 MiB overflows size_t");
  return bytes;
}
}  // namespace detail

// The seed's KV cache manager: whole K and V float vectors per request id, LRU
// eviction, over the paged cache's copy API (cllm_kv_put/get/evict). Storage is
// block-granular: an entry takes ceil(max(keys, values) / blockFloats) blocks of
// blockFloats keys + blockFloats values, so getUsedMemory() (what is actually held,
// O(1), no C++ lock) is the floats' bytes rounded up to blocks. The budget is exactly
// getTotalMemory() = maxMemoryMb * 1024 * 1024 bytes (with a power-of-two blockFloats
// the C cache's budget is exactly that many whole blocks; otherwise the whole blocks
// that fit in it), charged to the monitor's KV category as blocks are used. The C cache
// commits pool pages in steps of 1/16 of the capacity on first use, so the first
// insert into a large, fresh cache pays for that step.
//
// Entry slots: the C cache has a fixed number of entry slots (Options::maxEntries;
// default one more than there are blocks, at most 65536). When every slot is taken,
// inserting a new id evicts the least recently used entry, as when blocks run out, so
// LRU eviction works exactly as the seed says. Thread: any (the C cache's lock;
// callbacks run unlocked).
class KVCacheMemoryManager {
 public:
  typedef std::function<void(const std::string&)> EvictionCallback;

  struct Options {
    uint32_t blockFloats = 256;         // floats of K (and of V) per block: a multiple
                                        // of 16; 256 = 2 KiB blocks
    cllm_monitor_t* monitor = nullptr;  // charged (KV); nullptr = the global monitor
    size_t maxEntries = 0;              // entry slots (each ~200 B of metadata); 0 =
                                        // blocks + 1, at most 65536 (see below)
  };

  // Throws std::invalid_argument (maxMemoryMb 0, bad blockFloats), std::length_error
  // (maxMemoryMb * 1 MiB overflows), Error (the cache could not be created).
  explicit KVCacheMemoryManager(size_t maxMemoryMb) : KVCacheMemoryManager(maxMemoryMb, Options()) {}
  KVCacheMemoryManager(size_t maxMemoryMb, const Options& opt)
      : maxMemoryBytes_(detail::mebibytes(maxMemoryMb, "KVCacheMemoryManager")),
        cache_(makeConfig(maxMemoryBytes_, opt)) {
    cache_.setEvictionCallback([this](const std::string& id, cllm_kv_evict_reason_t) {
      std::shared_ptr<const EvictionCallback> fn = evictSlot_->load();
      if (fn) (*fn)(id);
    });
  }
  KVCacheMemoryManager(const KVCacheMemoryManager&) = delete;
  KVCacheMemoryManager& operator=(const KVCacheMemoryManager&) = delete;

  // Insert or replace `requestId`, evicting least recently used entries (each reported
  // to the eviction callback) until it fits; the entry becomes most recently used.
  // Returns false, having evicted nothing, if it can never fit (larger than the whole
  // budget), and false if the memory is not there (the monitor's limit refused it, no
  // slot). Throws Error for a bad id (empty, containing NUL), and rethrows the eviction
  // callback's exception after the insert took effect.
  bool insert(const std::string& requestId, const std::vector<float>& keyCache,
              const std::vector<float>& valueCache) {
    try {
      cache_.put(requestId, keyCache.data(), keyCache.size(), valueCache.data(), valueCache.size());
      return true;
    } catch (const Error& e) {
      cllm_status_t s = e.status();
      if (s == CLLM_ERANGE || s == CLLM_ENOMEM || s == CLLM_ELIMIT || s == CLLM_EOVERFLOW) return false;
      throw;
    }
  }
  // Copy the entry out and make it most recently used; false if absent.
  bool get(const std::string& requestId, std::vector<float>& keyCache, std::vector<float>& valueCache) {
    return cache_.get(requestId, keyCache, valueCache);
  }
  // Drop `requestId` and report it to the eviction callback (as the seed does); no-op
  // if absent. The callback runs on this thread, unlocked; its exception propagates.
  void evict(const std::string& requestId) {
    if (!cache_.evict(requestId)) return;
    std::shared_ptr<const EvictionCallback> fn = evictSlot_->load();
    if (fn) (*fn)(requestId);
  }
  // Bytes held by entries (block-granular), O(1).
  size_t getUsedMemory() const noexcept { return cache_.usedBytes(); }
  // maxMemoryMb * 1024 * 1024.
  size_t getTotalMemory() const noexcept { return maxMemoryBytes_; }
  // Called with each evicted request id (LRU eviction in insert, and evict()).
  void setEvictionCallback(EvictionCallback callback) { evictSlot_->store(std::move(callback)); }

  KVCache& cache() noexcept { return cache_; }

 private:
  static cllm_kv_config_t makeConfig(size_t bytes, const Options& opt) {
    if (bytes == 0) throw std::invalid_argument("KVCacheMemoryManager: maxMemoryMb must be > 0");
    if (opt.blockFloats == 0 || opt.blockFloats % 16 != 0)
      throw std::invalid_argument("KVCacheMemoryManager: blockFloats must be a positive multiple of 16");
    cllm_kv_config_t cfg = cllm_kv_config_default();
    cfg.layers = 1;
    cfg.kv_heads = 1;
    cfg.block_tokens = 16;
    cfg.head_dim = opt.blockFloats / 16;
    cfg.dtype_bytes = sizeof(float);
    cfg.capacity_bytes = bytes;
    cfg.populate = false;  // committed (and charged) by pages: close to what is stored
    cfg.monitor = opt.monitor;
    size_t blocks = bytes / (2 * sizeof(float) * static_cast<size_t>(opt.blockFloats));
    cfg.max_seqs = opt.maxEntries != 0 ? opt.maxEntries : (blocks < 65536 ? blocks + 1 : 65536);
    return cfg;
  }

  size_t maxMemoryBytes_;
  std::unique_ptr<detail::CallbackSlot<EvictionCallback>> evictSlot_{
      new detail::CallbackSlot<EvictionCallback>};
  KVCache cache_;
};

/* ---- ModelExecutorMemoryManager (seed 2.3.3) -------------------------------------- */

// Temporary buffers from a step arena and individually freeable weight buffers, with
// the seed's per-kind usage and a limit of maxMemoryMb MiB.
//
// Temp buffers are bump-allocated (64-byte aligned) from a private Arena (charged to
// the monitor's STEP category per chunk). An arena frees in LIFO order only, so
// deallocateTempBuffer maps onto it like this: the buffer stops counting in
// getTempMemoryUsed() at once (usage is exact per kind); its space is reclaimed when
// it and every buffer allocated after it have been freed (the arena is rewound to
// just before the lowest such buffer; when none is live it is reset, O(1)), or at
// clearAll(). The limit is checked against what is held, so space not yet reclaimed
// counts toward it: held temp + weights + size <= maxMemoryMb MiB.
//
// Weight buffers are 64-byte aligned blocks of the library's mimalloc
// (cllm_heap_floats with no heaps), each freeable, charged to the monitor's WEIGHTS
// category for its exact size.
//
// Past the limit (this manager's or the monitor's) an allocation throws LimitError,
// a std::runtime_error ("Memory limit exceeded", seed 8.1.2); an allocation that
// fails otherwise throws Error (CLLM_ENOMEM, "Failed to allocate memory", seed 8.1.1).
// Nothing changes on a throw. Thread: external-sync (the seed's 6.1.3: one thread at a
// time; temp buffers: one thread per step, the arena's rule).
class ModelExecutorMemoryManager {
 public:
  // Throws std::length_error (maxMemoryMb * 1 MiB overflows), Error.
  explicit ModelExecutorMemoryManager(size_t maxMemoryMb, cllm_monitor_t* monitor = nullptr)
      : maxMemoryBytes_(detail::mebibytes(maxMemoryMb, "ModelExecutorMemoryManager")),
        monitor_(monitor != nullptr ? monitor : cllm_monitor_global()),
        arena_(arenaConfig(monitor_)) {}
  ~ModelExecutorMemoryManager() { freeWeights(); }
  ModelExecutorMemoryManager(const ModelExecutorMemoryManager&) = delete;
  ModelExecutorMemoryManager& operator=(const ModelExecutorMemoryManager&) = delete;

  // `size` bytes, 64-byte aligned, valid until deallocateTempBuffer or clearAll.
  void* allocateTempBuffer(size_t size) {
    checkLimit(size);
    if (temp_.size() == temp_.capacity())  // bookkeeping first: may throw, nothing changed
      temp_.reserve(temp_.capacity() < 16 ? 16 : 2 * temp_.capacity());
    // The arena keeps a mark rewound to (it stays valid), so it is reused: the arena's
    // mark stack holds exactly one mark per held buffer, plus this spare one.
    cllm_arena_mark_t m = haveSpare_ ? spare_ : arena_.mark();
    haveSpare_ = false;
    detail::CaptureScope scope;
    void* p = arena_.alloc(size);
    cllm_status_t why = cllm_last_status();
    if (p == nullptr || scope.pending()) {
      unwind(m);
      scope.rethrowPending();
      throwStatus(why == CLLM_OK ? CLLM_ENOMEM : why,
                  why == CLLM_ELIMIT ? "Memory limit exceeded" : "Failed to allocate memory");
    }
    try {
      tempIndex_.emplace(p, temp_.size());
    } catch (...) {
      unwind(m);
      throw;
    }
    temp_.push_back(TempBuffer{p, size, m, true});  // capacity reserved: no throw
    tempUsed_ += size;
    tempHeld_ += size;
    return p;
  }
  // Free a temp buffer (nullptr: no-op). Throws Error (CLLM_EINVAL: not a live temp
  // buffer of this manager, e.g. freed twice; nothing changes).
  void deallocateTempBuffer(void* ptr) {
    if (ptr == nullptr) return;
    auto it = tempIndex_.find(ptr);
    if (it == tempIndex_.end()) throw Error(CLLM_EINVAL, "deallocateTempBuffer: unknown pointer");
    TempBuffer& b = temp_[it->second];
    tempIndex_.erase(it);
    b.live = false;
    tempUsed_ -= b.size;
    size_t j = temp_.size();
    while (j > 0 && !temp_[j - 1].live) --j;
    if (j == temp_.size()) return;  // a live buffer above it: reclaimed later
    if (j == 0) {
      CLLM_DISCARD(cllm_arena_reset(arena_.get()));  // O(1); every mark is dropped
      haveSpare_ = false;
    } else {
      unwind(temp_[j].mark);  // valid: nothing was rewound past it
    }
    for (size_t i = j; i < temp_.size(); ++i) tempHeld_ -= temp_[i].size;
    temp_.resize(j);
  }

  // `size` bytes, 64-byte aligned, uninitialised (as the seed's), valid until
  // deallocateWeightsCache or clearAll.
  void* allocateWeightsCache(size_t size) {
    checkLimit(size);
    detail::monitorReserve(monitor_, CLLM_CAT_WEIGHTS, size, "Memory limit exceeded");
    size_t floats = size / sizeof(float) + (size % sizeof(float) != 0);
    cllm_float_array_t block = cllm_heap_floats(nullptr, floats);
    void* p = block.data;
    if (p == nullptr) {
      CLLM_DISCARD(cllm_monitor_release(monitor_, CLLM_CAT_WEIGHTS, size));
      throw Error(CLLM_ENOMEM, "Failed to allocate memory");
    }
    try {
      weights_.emplace(p, Block{block, size});
    } catch (...) {
      cllm_float_array_free(&block);
      CLLM_DISCARD(cllm_monitor_release(monitor_, CLLM_CAT_WEIGHTS, size));
      throw;
    }
    weightsUsed_ += size;
    return p;
  }
  // Free a weights buffer (nullptr: no-op). Throws Error (CLLM_EINVAL: unknown).
  void deallocateWeightsCache(void* ptr) {
    if (ptr == nullptr) return;
    auto it = weights_.find(ptr);
    if (it == weights_.end()) throw Error(CLLM_EINVAL, "deallocateWeightsCache: unknown pointer");
    Block b = it->second;
    size_t size = b.size;
    weights_.erase(it);
    cllm_float_array_free(&b.block);
    CLLM_DISCARD(cllm_monitor_release(monitor_, CLLM_CAT_WEIGHTS, size));
    weightsUsed_ -= size;
  }

  // Live bytes of each kind (freed buffers never count).
  size_t getTempMemoryUsed() const noexcept { return tempUsed_; }
  size_t getWeightsMemoryUsed() const noexcept { return weightsUsed_; }
  size_t getTotalMemoryUsed() const noexcept { return tempUsed_ + weightsUsed_; }
  // Temp bytes held by the arena for live buffers and not yet reclaimed freed ones.
  size_t getTempMemoryHeld() const noexcept { return tempHeld_; }
  size_t getMaxMemory() const noexcept { return maxMemoryBytes_; }

  // Free everything: every pointer handed out becomes invalid.
  void clearAll() noexcept {
    freeWeights();
    CLLM_DISCARD(cllm_arena_reset(arena_.get()));
    haveSpare_ = false;
    temp_.clear();
    tempIndex_.clear();
    tempUsed_ = 0;
    tempHeld_ = 0;
  }

  // The arena, for stats and checks (changing it would break the bookkeeping).
  const Arena& arena() const noexcept { return arena_; }

 private:
  struct TempBuffer {
    void* ptr;
    size_t size;
    cllm_arena_mark_t mark;  // taken just before it
    bool live;
  };

  static cllm_arena_config_t arenaConfig(cllm_monitor_t* m) {
    cllm_arena_config_t cfg = cllm_arena_config_default();
    cfg.monitor = m;
    return cfg;
  }
  // Rewind to m (it stays valid, at the new top) and keep it as the spare mark.
  void unwind(const cllm_arena_mark_t& m) noexcept {
    if (cllm_arena_rewind(arena_.get(), m) == CLLM_OK) {
      spare_ = m;
      haveSpare_ = true;
    }
  }
  void checkLimit(size_t size) const {
    size_t held = tempHeld_ + weightsUsed_;  // <= maxMemoryBytes_ always
    if (size > maxMemoryBytes_ - held) throw LimitError(CLLM_ELIMIT, "Memory limit exceeded");
  }
  void freeWeights() noexcept {
    for (auto& w : weights_) {
      cllm_float_array_free(&w.second.block);
      CLLM_DISCARD(cllm_monitor_release(monitor_, CLLM_CAT_WEIGHTS, w.second.size));
    }
    weights_.clear();
    weightsUsed_ = 0;
  }

  size_t maxMemoryBytes_;
  cllm_monitor_t* monitor_;
  Arena arena_;
  std::vector<TempBuffer> temp_;                 // allocation order (a stack)
  std::unordered_map<void*, size_t> tempIndex_;  // live temp buffer -> index in temp_
  struct Block {
    cllm_float_array_t block;  // from cllm_heap_floats(nullptr, ...)
    size_t size;               // bytes asked for (and charged)
  };
  std::unordered_map<void*, Block> weights_;     // weights buffer -> its block
  cllm_arena_mark_t spare_{};                    // valid at the top when haveSpare_
  bool haveSpare_ = false;
  size_t tempUsed_ = 0;
  size_t tempHeld_ = 0;
  size_t weightsUsed_ = 0;
};

}  // namespace cllm

#endif /* CLLM_SEED_HPP */
