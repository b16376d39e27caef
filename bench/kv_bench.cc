// kv_bench: the paged KV cache (include/cllm/kv_cache.h) against the seed's design.
//
// Block operations, ns per block (per lookup for the prefix case), on caches of 1K,
// 64K and 1M blocks (a tiny block shape, reserve-only pools, so memory stays small):
//   block_alloc         reserve one block (16 tokens) for a sequence;
//   block_free          close a sequence, per block released;
//   evict               reserve one block when every block is CACHED (LRU eviction);
//   prefix_lookup_2048  open_with_prompt of a cached 2048-token prompt (128 blocks)
//                       + close, in a cache full of other cached blocks.
//   Rows carry `blocks`; the goal is that nothing grows with it.
//
// The seed comparison (one thread; every implementation in the same run):
//   seed_lru          the seed's KVCacheMemoryManager as written: unordered_map +
//                     std::list LRU of whole per-request vector<float> copies; its
//                     insert locks and then calls getUsedMemory(), which locks again
//                     (a deadlock), so it gets an unlocked helper that still sums the
//                     list (once per eviction step, as written);
//   seed_lru_counter  the same with a running used-bytes counter (the strongest form);
//                     both run every container and string the seed owns (and the
//                     caller's arrays) on glibc's own malloc, as a standalone build of
//                     the seed would: linking cllm-mem brings in Debian's libmimalloc,
//                     which replaces malloc in the whole process, so they use a small
//                     std allocator over bench_glibc_malloc/free ("seed_malloc":"glibc");
//   seed_lru_mimalloc, seed_lru_counter_mimalloc
//                     the same two on the process malloc, i.e. mimalloc
//                     ("seed_malloc":"mimalloc"), shown too so nothing is hidden;
//   cllm_kv           the block API: open + reserve (the cache preempts the least
//                     recently used sequence when full; its id comes back through the
//                     eviction callback and the bench closes it) + the K/V bytes copied
//                     into the blocks through the block pointers; get = block_table +
//                     the block pointers (zero-copy: kernels read K/V in place, which is
//                     the point of the block API; the copy semantics are cllm_kv_copy);
//   cllm_kv_copy      the copy API: cllm_kv_put + cllm_kv_get;
//   memcpy            (256k only) a plain memcpy of the same bytes in and out.
//   insert_get_1k     entries of 1 KiB (128 key + 128 value floats), `resident` =
//                     1024..8192 under a full budget, 4 x resident insert+get of new ids
//                     per repetition (so eviction runs on every insert); ns per request.
//                     Ids are "req-N", kept as text and counted up in place (no
//                     snprintf) and parsed back by hand in cllm_kv's eviction
//                     callback (no strtol), the same for every implementation.
//   insert_get_256k   4096 requests of 256 KiB under a 256 MiB budget; ns per request.
//
// The runtime's view (a forward(token, pos) loop; ns per token):
//   decode_attention  read every K row of a 1024-token sequence (16-token blocks, 4
//                     layers, rows of 8 heads x 64 fp32 = 2 KiB, the dot product with
//                     a query row) through the layer views and the block table
//                     (cllm_kv_view; the sequence's blocks interleaved with 3 others,
//                     as under continuous batching) vs the same rows in one flat
//                     array per layer (flat); goal: within 1.1x of flat;
//   ensure_commit     one token per call for 1024-token sequences: cllm_kv_ensure =
//                     cllm_kv_seq_ensure + cllm_kv_seq_commit, and
//                     cllm_kv_seq_table_view when ensure reached a new block (offset
//                     0: the table may have moved), vs cllm_kv_four_calls = length +
//                     reserve + block_table (copy) + commit; goal: at least 2x fewer
//                     ns per token. Also cllm_kv_two_getters: the length and
//                     block_table calls alone (what four_calls does beyond a
//                     reserve + commit; plus a 16-token reserve per 16 calls, so the
//                     table grows as there), so the best ratio four_calls can have
//                     over ensure is about 1 + two_getters / ensure.
//
// Flags: --only blocks|seed1k|seed256k|utilisation|decode|ensure, --impl NAME (seed rows).
//
// utilisation: continuous batching of a mixed-length workload (prompt 16-4096, output
// 1-1024 tokens; `dist` = loguniform or uniform) on a fixed budget: each step admits
// requests while blocks are free, every running sequence reserves one token, finished
// ones close, and the cache preempts when it runs out (a preempted request restarts).
// `utilisation` = tokens stored / token slots of the blocks in use, averaged over the
// steps; `concurrent_seqs_ratio` = average running sequences over what a contiguous
// max-length (5120-token) reservation per slot fits in the same budget. ns_per_op is
// per reserve call.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <list>
#include <mutex>
#include <new>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <cllm/kv_cache.h>
#include <cllm/monitor.h>

#include "harness.h"

static bench_opts_t g_o;
static const char *g_impl;  // --impl NAME: only that implementation's seed rows
static cllm_monitor_t *g_mon;

#define CHECK(cond, ...)                              \
  do {                                                \
    if (!(cond)) {                                    \
      std::fprintf(stderr, "kv_bench: " __VA_ARGS__); \
      std::fputc('\n', stderr);                       \
      std::exit(1);                                   \
    }                                                 \
  } while (0)

static void emit(const char *kase, const char *impl, const double *ns, int reps, uint64_t ops,
                 const char *k1 = nullptr, double v1 = 0, const char *k2 = nullptr, double v2 = 0,
                 const char *k3 = nullptr, double v3 = 0, const char *skey = nullptr,
                 const char *sval = nullptr) {
  bench_row_t row;
  std::memset(&row, 0, sizeof row);
  row.bench = "kv_bench";
  row.case_name = kase;
  row.impl = impl;
  row.threads = 1;
  row.ops = ops;
  bench_stats(ns, reps, &row);
  if (k1) bench_extra_num(&row, k1, v1);
  if (k2) bench_extra_num(&row, k2, v2);
  if (k3) bench_extra_num(&row, k3, v3);
  if (skey && sval) bench_extra_str(&row, skey, sval);
  bench_emit(&g_o, &row);
}

static cllm_kv_cache_t *make_kv(uint32_t layers, uint32_t heads, uint32_t dim, uint32_t dtype,
                                size_t blocks, bool populate, bool preempt,
                                cllm_kv_evict_fn fn = nullptr, void *user = nullptr,
                                size_t max_seqs = 0) {
  cllm_kv_config_t c = cllm_kv_config_default();
  c.layers = layers;
  c.kv_heads = heads;
  c.head_dim = dim;
  c.dtype_bytes = dtype;
  c.block_tokens = 16;
  c.capacity_blocks = blocks;
  c.populate = populate;
  c.preemption = preempt;
  c.evict_fn = fn;
  c.evict_user = user;
  c.monitor = g_mon;
  c.max_seqs = max_seqs;
  cllm_kv_cache_t *kv = nullptr;
  cllm_status_t rc = cllm_kv_cache_create(&c, &kv);
  CHECK(rc == CLLM_OK, "create: %s", cllm_status_name(rc));
  return kv;
}

/* ---- block operations ----------------------------------------------------------- */

static cllm_kv_seq_t open_or_die(cllm_kv_cache_t *kv, const char *id) {
  cllm_kv_seq_t s;
  cllm_status_t rc = cllm_kv_seq_open(kv, id, nullptr, &s);
  CHECK(rc == CLLM_OK, "open %s: %s", id, cllm_status_name(rc));
  return s;
}

/* Fill `blocks` blocks with unique committed tokens and close: they become CACHED. */
static void cache_blocks(cllm_kv_cache_t *kv, size_t blocks, int32_t *next_token,
                         std::vector<cllm_kv_token_t> &buf) {
  buf.resize(blocks * 16);
  for (auto &t : buf) t = (*next_token)++;
  cllm_kv_seq_t s = open_or_die(kv, "filler");
  CHECK(cllm_kv_seq_reserve(kv, s, buf.size(), nullptr) == CLLM_OK, "fill reserve");
  CHECK(cllm_kv_seq_commit(kv, s, buf.data(), buf.size()) == CLLM_OK, "fill commit");
  CHECK(cllm_kv_seq_close(kv, s) == CLLM_OK, "fill close");
}

static void bench_block_ops(size_t nblocks) {
  const int reps = g_o.reps;
  const size_t ops = std::min<size_t>(nblocks, 65536);
  const size_t rounds = std::max<size_t>(1, (g_o.quick ? 16384 : 65536) / ops);
  double ns_alloc[BENCH_MAX_REPS], ns_free[BENCH_MAX_REPS], ns_evict[BENCH_MAX_REPS],
      ns_lookup[BENCH_MAX_REPS];
  std::vector<cllm_kv_token_t> buf;
  int32_t next_token = 1;
  {
    cllm_kv_cache_t *kv = make_kv(1, 1, 1, 2, nblocks, false, false);
    for (int r = 0; r < reps; r++) {
      double ta = 0, tf = 0;
      for (size_t k = 0; k < rounds; k++) {
        cllm_kv_seq_t s = open_or_die(kv, "a");
        double t0 = bench_now_ns();
        for (size_t i = 0; i < ops; i++)
          if (cllm_kv_seq_reserve(kv, s, 16, nullptr) != CLLM_OK) CHECK(0, "alloc");
        double t1 = bench_now_ns();
        CHECK(cllm_kv_seq_close(kv, s) == CLLM_OK, "close");
        double t2 = bench_now_ns();
        ta += t1 - t0;
        tf += t2 - t1;
      }
      ns_alloc[r] = ta / (double)(ops * rounds);
      ns_free[r] = tf / (double)(ops * rounds);
    }
    CHECK(cllm_kv_check(kv) == CLLM_OK, "check");
    cllm_kv_cache_destroy(kv);
  }
  emit("block_alloc", "cllm_kv", ns_alloc, reps, ops * rounds, "blocks", (double)nblocks);
  emit("block_free", "cllm_kv", ns_free, reps, ops * rounds, "blocks", (double)nblocks);
  {
    cllm_kv_cache_t *kv = make_kv(1, 1, 1, 2, nblocks, false, false);
    cache_blocks(kv, nblocks, &next_token, buf);
    for (int r = 0; r < reps; r++) {
      double te = 0;
      for (size_t k = 0; k < rounds; k++) {
        cllm_kv_seq_t s = open_or_die(kv, "e");
        double t0 = bench_now_ns();
        for (size_t i = 0; i < ops; i++)
          if (cllm_kv_seq_reserve(kv, s, 16, nullptr) != CLLM_OK) CHECK(0, "evict");
        te += bench_now_ns() - t0;
        CHECK(cllm_kv_seq_close(kv, s) == CLLM_OK, "close");
        cache_blocks(kv, ops, &next_token, buf);  // re-cache what was taken
      }
      ns_evict[r] = te / (double)(ops * rounds);
    }
    cllm_kv_stats_t st;
    st.struct_size = sizeof st;
    CHECK(cllm_kv_stats(kv, &st) == CLLM_OK && st.blocks_cached == nblocks, "all cached");
    CHECK(cllm_kv_check(kv) == CLLM_OK, "check");
    cllm_kv_cache_destroy(kv);
  }
  emit("evict", "cllm_kv", ns_evict, reps, ops * rounds, "blocks", (double)nblocks);
  {
    cllm_kv_cache_t *kv = make_kv(1, 1, 1, 2, nblocks, false, false);
    std::vector<cllm_kv_token_t> prompt(2049);
    for (auto &t : prompt) t = next_token++;
    cllm_kv_seq_t s = open_or_die(kv, "p");
    CHECK(cllm_kv_seq_reserve(kv, s, 2048, nullptr) == CLLM_OK, "prompt");
    CHECK(cllm_kv_seq_commit(kv, s, prompt.data(), 2048) == CLLM_OK, "commit");
    CHECK(cllm_kv_seq_close(kv, s) == CLLM_OK, "close");
    cache_blocks(kv, nblocks - 128, &next_token, buf);
    const size_t lookups = g_o.quick ? 500 : 2000;
    for (int r = 0; r < reps; r++) {
      double t0 = bench_now_ns();
      for (size_t i = 0; i < lookups; i++) {
        size_t cached = 0;
        if (cllm_kv_seq_open_with_prompt(kv, "q", nullptr, prompt.data(), 2049, &s, &cached) !=
                CLLM_OK ||
            cached != 2048)
          CHECK(0, "lookup hit %zu", cached);
        if (cllm_kv_seq_close(kv, s) != CLLM_OK) CHECK(0, "close");
      }
      ns_lookup[r] = (bench_now_ns() - t0) / (double)lookups;
    }
    CHECK(cllm_kv_check(kv) == CLLM_OK, "check");
    cllm_kv_cache_destroy(kv);
    emit("prefix_lookup_2048", "cllm_kv", ns_lookup, reps, lookups, "blocks", (double)nblocks,
         "ns_per_block_min", bench_min(ns_lookup, reps) / 128.0);
  }
}

/* ---- the seed's KVCacheMemoryManager ------------------------------------------------ */

/* glibc's own malloc for the seed's containers. Linking cllm-mem brings in Debian's
 * libmimalloc, which replaces malloc (and operator new through it) in the whole
 * process; a standalone build of the seed would run on glibc, so the `seed_*` rows
 * give every container and string the seed owns this allocator. The `*_mimalloc`
 * rows run the same code on the process malloc (std::allocator). */
template <class T>
struct GlibcAllocator {
  using value_type = T;
  GlibcAllocator() noexcept = default;
  template <class U>
  GlibcAllocator(const GlibcAllocator<U> &) noexcept {}
  T *allocate(size_t n) {
    if (n > SIZE_MAX / sizeof(T)) throw std::bad_alloc();
    void *p = bench_glibc_malloc(n * sizeof(T));
    if (p == nullptr) throw std::bad_alloc();
    return static_cast<T *>(p);
  }
  void deallocate(T *p, size_t) noexcept { bench_glibc_free(p); }
  template <class U>
  bool operator==(const GlibcAllocator<U> &) const noexcept { return true; }
  template <class U>
  bool operator!=(const GlibcAllocator<U> &) const noexcept { return false; }
};

template <template <class> class Alloc>
class SeedKVCache {
 public:
  using String = std::basic_string<char, std::char_traits<char>, Alloc<char>>;
  using FloatVec = std::vector<float, Alloc<float>>;
  typedef std::function<void(const String &)> EvictionCallback;

  SeedKVCache(size_t max_bytes, bool counter) : maxMemory_(max_bytes), counter_(counter) {}
  bool insert(const String &requestId, const FloatVec &keys, const FloatVec &values) {
    std::lock_guard<std::mutex> lock(mutex_);
    size_t required = (keys.size() + values.size()) * sizeof(float);
    while (usedLocked() + required > maxMemory_ && !cacheList_.empty()) evictLRU();
    if (usedLocked() + required > maxMemory_) return false;
    cacheList_.push_front({requestId, Entry{keys, values}});
    cacheMap_[requestId] = cacheList_.begin();
    used_ += required;
    return true;
  }
  bool get(const String &requestId, FloatVec &keys, FloatVec &values) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = cacheMap_.find(requestId);
    if (it == cacheMap_.end()) return false;
    keys = it->second->second.keys;  // deep copies; the entry is not moved (as written)
    values = it->second->second.values;
    return true;
  }
  void setEvictionCallback(EvictionCallback cb) { callback_ = std::move(cb); }

 private:
  struct Entry {
    FloatVec keys, values;
  };
  typedef std::pair<String, Entry> Node;
  typedef std::list<Node, Alloc<Node>> List;
  // std::hash<std::string> is std::_Hash_bytes over the characters, as is the
  // string_view hash: the same function for both allocators.
  struct StrHash {
    size_t operator()(const String &s) const noexcept {
      return std::hash<std::string_view>()(std::string_view(s.data(), s.size()));
    }
  };
  typedef std::pair<const String, typename List::iterator> MapNode;
  // The one change: getUsedMemory() without the second lock. seed_lru sums the list
  // as the seed does; seed_lru_counter reads a running counter.
  size_t usedLocked() const {
    if (counter_) return used_;
    size_t total = 0;
    for (const auto &e : cacheList_)
      total += (e.second.keys.size() + e.second.values.size()) * sizeof(float);
    return total;
  }
  void evictLRU() {
    auto &victim = cacheList_.back();
    if (callback_) callback_(victim.first);
    used_ -= (victim.second.keys.size() + victim.second.values.size()) * sizeof(float);
    cacheMap_.erase(victim.first);
    cacheList_.pop_back();
  }
  List cacheList_;
  std::unordered_map<String, typename List::iterator, StrHash, std::equal_to<String>,
                     Alloc<MapNode>>
      cacheMap_;
  size_t maxMemory_;
  bool counter_;
  size_t used_ = 0;
  std::mutex mutex_;
  EvictionCallback callback_;
};

/* The seed plus what its caller owns (the request's arrays and the get buffers, all
 * on the same allocator, as in a standalone build). */
template <template <class> class Alloc>
struct SeedRunner {
  typedef SeedKVCache<Alloc> Cache;
  Cache cache;
  typename Cache::FloatVec keys, values, kout, vout;
  SeedRunner(size_t budget, bool counter, const std::vector<float> &k,
             const std::vector<float> &v)
      : cache(budget, counter), keys(k.begin(), k.end()), values(v.begin(), v.end()),
        kout(k.size()), vout(v.size()) {
    cache.setEvictionCallback([](const typename Cache::String &) {});
  }
  void request(const char *id) {
    typename Cache::String sid(id);
    cache.insert(sid, keys, values);
    if (!cache.get(sid, kout, vout)) CHECK(0, "seed get");
    bench_sink(kout.data());
    bench_sink(vout.data());
  }
};

/* Request ids "req-N" for N = 0, 1, 2, ...: the decimal text is kept and counted up in
 * place (a hand-written itoa: no snprintf, no division; one or two bytes change per
 * request), the same for every implementation, so the driver's own cost stays small
 * next to the caches'; cllm_kv's eviction callback parses N back by hand. */
struct IdText {
  char buf[32] = "req-0";
  size_t len = 5;
  void advance() {
    size_t i = len;
    while (i > 4 && buf[i - 1] == '9') buf[--i] = '0';
    if (i > 4) {
      buf[i - 1]++;
      return;
    }
    buf[4] = '1';  // 9...9 -> 10...0
    buf[len++] = '0';
    buf[len] = '\0';
  }
};

static inline long parse_id(const char *id) {  // "req-N" -> N
  long n = 0;
  for (const char *p = id + 4; *p >= '0' && *p <= '9'; p++) n = n * 10 + (*p - '0');
  return n;
}

/* ---- the four implementations behind one driver ---------------------------------- */

struct BlockApi {
  cllm_kv_cache_t *kv = nullptr;
  std::vector<cllm_kv_seq_t> handles;  // by request number
  std::vector<long> victims;
  size_t kfloats = 0, vfloats = 0, blocks_per_req = 0, chunk = 0;
};

static void block_api_evicted(void *user, const char *id, cllm_kv_evict_reason_t reason) {
  (void)reason;
  BlockApi *b = static_cast<BlockApi *>(user);
  b->victims.push_back(parse_id(id));
}

enum Impl { SEED_LRU, SEED_COUNTER, SEED_LRU_MI, SEED_COUNTER_MI, CLLM_KV, CLLM_COPY, MEMCPY };
static const char *const kImpl[] = {"seed_lru",          "seed_lru_counter",
                                    "seed_lru_mimalloc", "seed_lru_counter_mimalloc",
                                    "cllm_kv",           "cllm_kv_copy",
                                    "memcpy"};
// The seed rows' "seed_malloc" field: which malloc the seed's containers ran on.
static const char *seed_malloc(Impl i) {
  if (i == SEED_LRU || i == SEED_COUNTER) return "glibc";
  if (i == SEED_LRU_MI || i == SEED_COUNTER_MI) return "mimalloc";
  return nullptr;
}
static bool seed_sums(Impl i) { return i == SEED_LRU || i == SEED_LRU_MI; }

struct Driver {
  Impl impl;
  size_t kfloats, vfloats, budget_bytes;
  SeedRunner<GlibcAllocator> *seed = nullptr;  // seed_lru, seed_lru_counter
  SeedRunner<std::allocator> *seed_mi = nullptr; // the *_mimalloc rows
  BlockApi blk;
  cllm_kv_cache_t *copy = nullptr;
  char *arena = nullptr;  // memcpy baseline
  size_t slots = 0;
  std::vector<float> keys, values, kout, vout;
  long next = 0;
  IdText id_text;  // "req-<next>"

  Driver(Impl i, size_t kf, size_t vf, size_t budget, uint32_t heads, uint32_t dim)
      : impl(i), kfloats(kf), vfloats(vf), budget_bytes(budget) {
    keys.assign(kf, 1.5f);
    values.assign(vf, 2.5f);
    kout.resize(kf);
    vout.resize(vf);
    for (size_t j = 0; j < kf; j++) keys[j] = (float)j;
    size_t entry = (kf + vf) * sizeof(float);
    size_t block_bytes = 2 * (size_t)16 * heads * dim * 4;  // layers 1, fp32
    size_t blocks = budget / block_bytes;
    switch (impl) {
      case SEED_LRU:
      case SEED_COUNTER:
        seed = new SeedRunner<GlibcAllocator>(budget, impl == SEED_COUNTER, keys, values);
        break;
      case SEED_LRU_MI:
      case SEED_COUNTER_MI:
        seed_mi = new SeedRunner<std::allocator>(budget, impl == SEED_COUNTER_MI, keys, values);
        break;
      case CLLM_KV:
        blk.kv = make_kv(1, heads, dim, 4, blocks, true, true, block_api_evicted, &blk,
                         blocks + 64);
        blk.kfloats = kf;
        blk.vfloats = vf;
        blk.blocks_per_req = (kf * 4 + block_bytes / 2 - 1) / (block_bytes / 2);
        blk.chunk = cllm_kv_block_bytes(blk.kv) / 2;
        break;
      case CLLM_COPY:
        copy = make_kv(1, heads, dim, 4, blocks, true, false, nullptr, nullptr, blocks + 64);
        break;
      case MEMCPY:
        slots = budget / entry;
        arena = static_cast<char *>(std::aligned_alloc(64, slots * entry));
        std::memset(arena, 1, slots * entry);
        break;
    }
  }
  ~Driver() {
    delete seed;
    delete seed_mi;
    if (blk.kv) cllm_kv_cache_destroy(blk.kv);
    if (copy) cllm_kv_cache_destroy(copy);
    std::free(arena);
  }

  // One request: insert a new id, then get it.
  void request() {
    long n = next++;
    const char *id = id_text.buf;
    if ((n & 4095) == 0) CHECK(parse_id(id) == n, "id %s for request %ld", id, n);
    request_with(n, id);
    id_text.advance();
  }

  void request_with(long n, const char *id) {
    switch (impl) {
      case SEED_LRU:
      case SEED_COUNTER:
        seed->request(id);
        return;
      case SEED_LRU_MI:
      case SEED_COUNTER_MI:
        seed_mi->request(id);
        return;
      case CLLM_KV: {
        cllm_kv_seq_t s;
        if (cllm_kv_seq_open(blk.kv, id, nullptr, &s) != CLLM_OK) CHECK(0, "open");
        if ((size_t)n >= blk.handles.size()) blk.handles.resize(2 * (size_t)n + 16);
        blk.handles[(size_t)n] = s;
        size_t tokens = blk.blocks_per_req * 16;
        cllm_kv_loc_t loc[64];
        cllm_status_t rc = cllm_kv_seq_reserve(blk.kv, s, tokens, loc);
        if (rc != CLLM_OK) CHECK(0, "reserve: %s", cllm_status_name(rc));
        for (long v : blk.victims)
          if (cllm_kv_seq_close(blk.kv, blk.handles[(size_t)v]) != CLLM_OK) CHECK(0, "close");
        blk.victims.clear();
        write_blocks(loc, blk.chunk);
        /* get: the block table; K/V are read in place through the block pointers */
        uint32_t table[64];
        size_t nb = 0;
        if (cllm_kv_seq_block_table(blk.kv, s, table, 64, &nb) != CLLM_OK) CHECK(0, "table");
        for (size_t j = 0; j < nb; j++) {
          void *k, *v;
          CLLM_DISCARD(cllm_kv_block_layer(blk.kv, table[j], 0, &k, &v));
          bench_sink(k);
          bench_sink(v);
        }
        break;
      }
      case CLLM_COPY: {
        cllm_status_t rc = cllm_kv_put(copy, id, keys.data(), kfloats, values.data(), vfloats);
        if (rc != CLLM_OK) CHECK(0, "put: %s", cllm_status_name(rc));
        size_t nk, nv;
        if (cllm_kv_get(copy, id, kout.data(), kfloats, &nk, vout.data(), vfloats, &nv) != CLLM_OK)
          CHECK(0, "get");
        break;
      }
      case MEMCPY: {
        char *slot = arena + (size_t)(n % (long)slots) * (kfloats + vfloats) * sizeof(float);
        std::memcpy(slot, keys.data(), kfloats * sizeof(float));
        std::memcpy(slot + kfloats * sizeof(float), values.data(), vfloats * sizeof(float));
        bench_sink(slot);
        std::memcpy(kout.data(), slot, kfloats * sizeof(float));
        std::memcpy(vout.data(), slot + kfloats * sizeof(float), vfloats * sizeof(float));
        break;
      }
    }
    bench_sink(kout.data());
    bench_sink(vout.data());
  }

  void write_blocks(const cllm_kv_loc_t *loc, size_t chunk) {
    size_t kb = kfloats * sizeof(float), vb = vfloats * sizeof(float);
    for (size_t j = 0, off = 0; off < kb || off < vb; j++, off += chunk) {
      void *k, *v;
      CLLM_DISCARD(cllm_kv_block_layer(blk.kv, loc[j * 16].block, 0, &k, &v));
      if (off < kb) std::memcpy(k, (const char *)keys.data() + off, std::min(chunk, kb - off));
      if (off < vb) std::memcpy(v, (const char *)values.data() + off, std::min(chunk, vb - off));
    }
  }
};

static void bench_seed_1k(size_t resident) {
  const size_t kf = 128, vf = 128;  // 1 KiB per entry
  for (int impl = SEED_LRU; impl <= CLLM_COPY; impl++) {
    if (g_impl != nullptr && std::strcmp(g_impl, kImpl[impl]) != 0) continue;
    int reps = g_o.reps;
    if (seed_sums((Impl)impl) && g_o.quick) reps = 1;  // O(n) per eviction step: seconds
    Driver d((Impl)impl, kf, vf, resident * 1024, 1, 8);  // a block = 1 KiB
    for (size_t i = 0; i < resident; i++) d.request();   // fill the budget (untimed)
    double ns[BENCH_MAX_REPS];
    const size_t reqs = 4 * resident;
    for (int r = 0; r < reps; r++) {
      double t0 = bench_now_ns();
      for (size_t i = 0; i < reqs; i++) d.request();
      ns[r] = (bench_now_ns() - t0) / (double)reqs;
    }
    emit("insert_get_1k", kImpl[impl], ns, reps, reqs, "resident", (double)resident, nullptr, 0,
         nullptr, 0, "seed_malloc", seed_malloc((Impl)impl));
  }
}

static void bench_seed_256k() {
  const size_t kf = 32768, vf = 32768;  // 256 KiB per request
  const size_t reqs = 4096;
  for (int impl = SEED_LRU; impl <= MEMCPY; impl++) {
    if (g_impl != nullptr && std::strcmp(g_impl, kImpl[impl]) != 0) continue;
    int reps = g_o.reps;
    if (seed_malloc((Impl)impl) != nullptr && g_o.quick) reps = std::min(reps, 2);
    Driver d((Impl)impl, kf, vf, (size_t)256 << 20, 8, 128);  // a block = 128 KiB
    double ns[BENCH_MAX_REPS];
    for (int r = 0; r < reps; r++) {
      double t0 = bench_now_ns();
      for (size_t i = 0; i < reqs; i++) d.request();
      ns[r] = (bench_now_ns() - t0) / (double)reqs;
    }
    emit("insert_get_256k", kImpl[impl], ns, reps, reqs, "bytes_per_request", 262144.0, nullptr,
         0, nullptr, 0, "seed_malloc", seed_malloc((Impl)impl));
  }
}

/* ---- utilisation under continuous batching ------------------------------------------ */

struct Req {
  int prompt, output, done;
  bool running;
  cllm_kv_seq_t h;
};

struct Sim {
  std::vector<Req> reqs;
  std::vector<int> preempted;  // request numbers
};

static void sim_evicted(void *user, const char *id, cllm_kv_evict_reason_t) {
  int n = 0;  // "rN"
  for (const char *p = id + 1; *p >= '0' && *p <= '9'; p++) n = n * 10 + (*p - '0');
  static_cast<Sim *>(user)->preempted.push_back(n);
}

static int draw_len(unsigned long long *rng, int lo, int hi, bool loguniform) {
  *rng = *rng * 6364136223846793005ULL + 1442695040888963407ULL;
  double u = (double)(*rng >> 11) / 9007199254740992.0;
  if (loguniform) return (int)std::lround(std::exp(std::log((double)lo) + u * (std::log((double)hi) - std::log((double)lo))));
  return lo + (int)(u * (hi - lo + 1));
}

static void bench_utilisation(bool loguniform) {
  const size_t blocks = 16384;  // 262144 token slots
  const int max_len = 4096 + 1024;
  const double per_slot = (double)(blocks * 16 / max_len);
  const int steps = g_o.quick ? 3000 : 12000;
  double ns[BENCH_MAX_REPS], util_sum = 0, conc_sum = 0;
  uint64_t reserves = 0;
  int reps = std::min(g_o.reps, 3);
  for (int r = 0; r < reps; r++) {
    Sim sim;
    cllm_kv_cache_t *kv = make_kv(1, 1, 1, 2, blocks, false, true, sim_evicted, &sim, 8192);
    unsigned long long rng = 42 + (unsigned long long)r;
    std::vector<int> queue, running;
    size_t next_req = 0;
    auto new_req = [&]() {
      Req q;
      q.prompt = draw_len(&rng, 16, 4096, loguniform);
      q.output = draw_len(&rng, 1, 1024, loguniform);
      q.done = 0;
      q.running = false;
      sim.reqs.push_back(q);
      return (int)sim.reqs.size() - 1;
    };
    double util = 0, conc = 0;
    int measured = 0;
    uint64_t nres = 0;
    double t_res = 0;
    for (int step = 0; step < steps; step++) {
      /* admit while the free blocks cover the next prompt plus a 0.5% watermark */
      for (;;) {
        if (queue.empty()) queue.push_back(new_req());
        Req &q = sim.reqs[(size_t)queue.front()];
        cllm_kv_stats_t st;
        st.struct_size = sizeof st;
        CLLM_DISCARD(cllm_kv_stats(kv, &st));
        size_t need = (size_t)(q.prompt + q.done + 15) / 16;
        if (st.blocks_free + st.blocks_cached < need + blocks / 200) break;
        int n = queue.front();
        queue.erase(queue.begin());
        char id[32];
        std::snprintf(id, sizeof id, "r%d", n);
        CHECK(cllm_kv_seq_open(kv, id, nullptr, &q.h) == CLLM_OK, "open");
        double t0 = bench_now_ns();
        cllm_status_t rc = cllm_kv_seq_reserve(kv, q.h, (size_t)(q.prompt + q.done), nullptr);
        t_res += bench_now_ns() - t0;
        nres++;
        CHECK(rc == CLLM_OK, "prompt reserve: %s", cllm_status_name(rc));
        q.running = true;
        running.push_back(n);
        next_req++;
      }
      /* one decode step */
      for (size_t i = 0; i < running.size(); i++) {
        Req &q = sim.reqs[(size_t)running[i]];
        if (!q.running) continue;
        double t0 = bench_now_ns();
        cllm_status_t rc = cllm_kv_seq_reserve(kv, q.h, 1, nullptr);
        t_res += bench_now_ns() - t0;
        nres++;
        if (rc == CLLM_EPREEMPTED) continue;
        CHECK(rc == CLLM_OK, "decode reserve: %s", cllm_status_name(rc));
        q.done++;
      }
      for (int v : sim.preempted) {  // restart later, from the prompt
        Req &q = sim.reqs[(size_t)v];
        CHECK(cllm_kv_seq_close(kv, q.h) == CLLM_OK, "close preempted");
        q.running = false;
        q.done = 0;
        queue.insert(queue.begin(), v);
      }
      sim.preempted.clear();
      std::vector<int> still;
      for (int n : running) {
        Req &q = sim.reqs[(size_t)n];
        if (!q.running) continue;
        if (q.done >= q.output) {
          CHECK(cllm_kv_seq_close(kv, q.h) == CLLM_OK, "close");
          q.running = false;
        } else {
          still.push_back(n);
        }
      }
      running.swap(still);
      if (step >= steps / 5) {  // after warm-up
        cllm_kv_stats_t st;
        st.struct_size = sizeof st;
        CLLM_DISCARD(cllm_kv_stats(kv, &st));
        util += st.utilisation;
        conc += (double)running.size();
        measured++;
      }
    }
    CHECK(cllm_kv_check(kv) == CLLM_OK, "check");
    cllm_kv_cache_destroy(kv);
    ns[r] = t_res / (double)nres;
    reserves = nres;
    util_sum += util / measured;
    conc_sum += conc / measured;
  }
  bench_row_t row;
  std::memset(&row, 0, sizeof row);
  row.bench = "kv_bench";
  row.case_name = "utilisation";
  row.impl = "cllm_kv";
  row.threads = 1;
  row.ops = reserves;
  bench_stats(ns, reps, &row);
  bench_extra_num(&row, "utilisation", util_sum / reps);
  bench_extra_num(&row, "concurrent_seqs_ratio", conc_sum / reps / per_slot);
  bench_extra_num(&row, "concurrent_seqs", conc_sum / reps);
  bench_extra_num(&row, "per_slot_seqs", per_slot);
  bench_extra_str(&row, "dist", loguniform ? "loguniform" : "uniform");
  bench_emit(&g_o, &row);
}

/* ---- the runtime's view -------------------------------------------------------------- */

static constexpr size_t kRowFloats = 8 * 64;  // one token's K: 8 heads x 64, fp32

static inline float dot_row(const float *row, const float *q) {
  float acc = 0;
  for (size_t i = 0; i < kRowFloats; i++) acc += row[i] * q[i];
  return acc;
}

static void bench_decode_attention() {
  const uint32_t layers = 4, tokens = 1024, seqs = 4;
  cllm_kv_cache_t *kv = make_kv(layers, 8, 64, 4, seqs * tokens / 16 + 16, true, false);
  cllm_kv_seq_t s[seqs];
  char id[16];
  for (uint32_t i = 0; i < seqs; i++) {
    std::snprintf(id, sizeof id, "s%u", i);
    s[i] = open_or_die(kv, id);
  }
  for (uint32_t pos = 0; pos < tokens; pos += 16)  // interleaved blocks
    for (uint32_t i = 0; i < seqs; i++)
      CHECK(cllm_kv_seq_ensure(kv, s[i], pos, 16, nullptr) == CLLM_OK, "ensure");
  std::vector<cllm_kv_layer_view_t> lv(layers);
  std::vector<std::vector<float>> flat(layers, std::vector<float>(tokens * kRowFloats));
  std::vector<float> q(kRowFloats);
  for (size_t i = 0; i < kRowFloats; i++) q[i] = 1.0f / (float)(i + 1);
  const uint32_t *table;
  size_t nb;
  CHECK(cllm_kv_seq_table_view(kv, s[0], &table, &nb) == CLLM_OK && nb == tokens / 16, "table");
  for (uint32_t l = 0; l < layers; l++) {
    CHECK(cllm_kv_layer_view(kv, l, &lv[l]) == CLLM_OK, "view");
    for (uint32_t t = 0; t < tokens; t++) {
      float *row = (float *)((char *)lv[l].k + table[t / 16] * lv[l].block_stride +
                             (t % 16) * lv[l].row_bytes);
      for (size_t i = 0; i < kRowFloats; i++) row[i] = flat[l][t * kRowFloats + i] = (float)((t + i + l) % 7);
    }
  }
  std::vector<double> ns[2];
  float sums[2] = {0, 0};
  for (int rep = 0; rep < g_o.reps; rep++) {
    for (int impl = 0; impl < 2; impl++) {  // alternate, so neither gets a warmer cache
      double t0 = bench_now_ns();
      float acc = 0;
      for (uint32_t l = 0; l < layers; l++) {
        if (impl == 0) {
          const char *k = (const char *)lv[l].k;
          size_t stride = lv[l].block_stride, rb = lv[l].row_bytes;
          for (uint32_t b = 0; b < tokens / 16; b++) {
            const char *blk = k + table[b] * stride;
            for (uint32_t j = 0; j < 16; j++) acc += dot_row((const float *)(blk + j * rb), q.data());
          }
        } else {
          const float *f = flat[l].data();
          for (uint32_t t = 0; t < tokens; t++) acc += dot_row(f + t * kRowFloats, q.data());
        }
      }
      ns[impl].push_back((bench_now_ns() - t0) / (double)(tokens * layers));
      sums[impl] += acc;
    }
  }
  CHECK(sums[0] == sums[1], "the two reads differ");
  emit("decode_attention", "cllm_kv_view", ns[0].data(), g_o.reps, tokens * layers, "tokens", tokens,
       "layers", layers);
  emit("decode_attention", "flat", ns[1].data(), g_o.reps, tokens * layers, "tokens", tokens,
       "layers", layers);
  cllm_kv_cache_destroy(kv);
}

static void bench_ensure_commit() {
  const size_t tokens = 1024, seqs = 64;
  cllm_kv_cache_t *kv = make_kv(4, 8, 64, 2, tokens / 16 + 16, true, false);
  std::vector<uint32_t> copy(tokens / 16 + 1);
  std::vector<double> ns[3];
  char id[16];
  uint64_t serial = 0;
  for (int rep = 0; rep < g_o.reps; rep++) {
    for (int impl = 0; impl < 3; impl++) {
      double total = 0;
      for (size_t q = 0; q < seqs; q++) {
        std::snprintf(id, sizeof id, "r%llu", (unsigned long long)serial++);
        cllm_kv_seq_t s = open_or_die(kv, id);
        double t0 = bench_now_ns();
        const uint32_t *table = nullptr;
        size_t nb = 0;
        for (size_t pos = 0; pos < tokens; pos++) {
          cllm_kv_token_t tok = (cllm_kv_token_t)(serial * 7 + pos);
          cllm_kv_loc_t loc;
          if (impl == 2) {  // the getters alone; the table grows a block per 16 calls
            if (pos % 16 == 0) CHECK(cllm_kv_seq_reserve(kv, s, 16, nullptr) == CLLM_OK, "reserve");
            size_t len;
            CHECK(cllm_kv_seq_length(kv, s, &len) == CLLM_OK && len == pos - pos % 16 + 16, "length");
            CHECK(cllm_kv_seq_block_table(kv, s, copy.data(), copy.size(), &nb) == CLLM_OK, "table");
            bench_sink((void *)(uintptr_t)copy[nb - 1]);
            continue;
          }
          if (impl == 0) {
            CHECK(cllm_kv_seq_ensure(kv, s, pos, 1, &loc) == CLLM_OK, "ensure");
            if (loc.offset == 0)
              CHECK(cllm_kv_seq_table_view(kv, s, &table, &nb) == CLLM_OK, "view");
            CHECK(table[nb - 1] == loc.block, "the table view is stale");
            bench_sink((void *)(uintptr_t)table[nb - 1]);
          } else {
            size_t len;
            CHECK(cllm_kv_seq_length(kv, s, &len) == CLLM_OK && len == pos, "length");
            CHECK(cllm_kv_seq_reserve(kv, s, 1, &loc) == CLLM_OK, "reserve");
            CHECK(cllm_kv_seq_block_table(kv, s, copy.data(), copy.size(), &nb) == CLLM_OK, "table");
            bench_sink((void *)(uintptr_t)copy[nb - 1]);
          }
          bench_sink((void *)(uintptr_t)loc.block);
          CHECK(cllm_kv_seq_commit(kv, s, &tok, 1) == CLLM_OK, "commit");
        }
        total += bench_now_ns() - t0;
        CHECK(cllm_kv_seq_close(kv, s) == CLLM_OK, "close");
      }
      ns[impl].push_back(total / (double)(tokens * seqs));
    }
  }
  emit("ensure_commit", "cllm_kv_ensure", ns[0].data(), g_o.reps, tokens * seqs, "tokens", tokens);
  emit("ensure_commit", "cllm_kv_four_calls", ns[1].data(), g_o.reps, tokens * seqs, "tokens", tokens);
  emit("ensure_commit", "cllm_kv_two_getters", ns[2].data(), g_o.reps, tokens * seqs, "tokens", tokens);
  cllm_kv_cache_destroy(kv);
}

int main(int argc, char **argv) {
  g_o = bench_parse(argc, argv, "kv_bench", "--only,--impl");
  const char *only = nullptr;
  for (int i = 1; i + 1 < argc; i++) {
    if (std::strcmp(argv[i], "--only") == 0) only = argv[i + 1];
    if (std::strcmp(argv[i], "--impl") == 0) g_impl = argv[i + 1];
  }
  cllm_monitor_config_t mc = cllm_monitor_config_default();
  CHECK(cllm_monitor_create(&mc, &g_mon) == CLLM_OK, "monitor");
  auto want = [&](const char *what) { return only == nullptr || std::strstr(what, only) != nullptr; };
  if (want("blocks")) {
    bench_block_ops(1024);
    bench_block_ops(65536);
    bench_block_ops(1u << 20);
  }
  if (want("seed1k"))
    for (size_t resident : {1024, 2048, 4096, 8192}) bench_seed_1k(resident);
  if (want("seed256k")) bench_seed_256k();
  if (want("utilisation")) {
    bench_utilisation(true);
    bench_utilisation(false);
  }
  if (want("decode")) bench_decode_attention();
  if (want("ensure")) bench_ensure_commit();
  CHECK(cllm_monitor_used(g_mon, CLLM_CAT_COUNT) == 0, "bytes left in the monitor");
  cllm_monitor_destroy(g_mon);
  return 0;
}
