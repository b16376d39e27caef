// Tests of the C++ layer (include/cllm/seed.hpp and mem.hpp), part 2 of 2 (part 1:
// mem_test.cc, the seed's tests, MemoryMonitor, Monitor, KVCacheMemoryManager): the seed's
// ModelExecutorMemoryManager, FloatArray and RAIIWrapper beyond the seed's own tests,
// the RAII handles over the C objects (Arena, WeightsHeap, KVCache, Heaps), the stats
// strings and the error types. One process per test (support/cxx_check.hpp).

#include <cllm/seed.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "support/cxx_check.hpp"
#include "support/mem_test_util.hpp"

using namespace cllm;
using namespace mem_test;

/* ---- ModelExecutorMemoryManager ---- */

TEST(ModelExecutorMemoryManager, TempBuffersAndExactUsage) {
  ModelExecutorMemoryManager m(16);
  void* a = m.allocateTempBuffer(1000);
  void* b = m.allocateTempBuffer(3000);
  void* c = m.allocateTempBuffer(5);
  EXPECT_TRUE(aligned(a, 64) && aligned(b, 64) && aligned(c, 64));
  std::memset(a, 1, 1000);
  std::memset(b, 2, 3000);
  EXPECT_EQ(m.getTempMemoryUsed(), 4005);
  m.deallocateTempBuffer(b);  // out of order: stops counting, reclaimed later
  EXPECT_EQ(m.getTempMemoryUsed(), 1005);
  EXPECT_EQ(m.getTempMemoryHeld(), 4005);
  m.deallocateTempBuffer(c);  // c and b reclaimed: the arena rewinds to before b
  EXPECT_EQ(m.getTempMemoryHeld(), 1000);
  void* d = m.allocateTempBuffer(64);
  EXPECT_EQ(d, b);  // the reclaimed space is reused
  EXPECT_EQ(static_cast<unsigned char*>(a)[999], 1);
  m.deallocateTempBuffer(a);
  m.deallocateTempBuffer(d);  // nothing live: the arena is reset
  EXPECT_EQ(m.getTempMemoryUsed(), 0);
  EXPECT_EQ(m.getTempMemoryHeld(), 0);
  EXPECT_EQ(m.arena().stats().bytes_in_use, 0);
  // Bad pointers: refused, nothing changes.
  void* e0 = m.allocateTempBuffer(10);
  void* e = m.allocateTempBuffer(10);
  m.deallocateTempBuffer(e0);
  try {
    m.deallocateTempBuffer(e0);  // freed already
    EXPECT_TRUE(false);
  } catch (const Error& err) {
    EXPECT_EQ(err.status(), CLLM_EINVAL);
  }
  int local = 0;
  EXPECT_THROW(m.deallocateTempBuffer(&local), Error);
  EXPECT_THROW(m.deallocateWeightsCache(e), Error);  // a temp buffer is not a weight
  m.deallocateTempBuffer(nullptr);
  EXPECT_EQ(m.getTempMemoryUsed(), 10);
  m.arena().check();
}

// Freeing and allocating the top buffer over and over reuses the same space and the
// same arena mark: nothing grows while an older buffer stays live.
TEST(ModelExecutorMemoryManager, TopOfStackChurnDoesNotGrow) {
  ModelExecutorMemoryManager m(16);
  void* keep = m.allocateTempBuffer(100);
  void* first = m.allocateTempBuffer(64);
  m.deallocateTempBuffer(first);
  for (int i = 0; i < 10000; ++i) {
    void* p = m.allocateTempBuffer(64);
    ASSERT_EQ(p, first);
    m.deallocateTempBuffer(p);
  }
  EXPECT_THROW(m.allocateTempBuffer(32 * kMiB), LimitError);  // refused: state kept
  EXPECT_EQ(m.getTempMemoryHeld(), 100);
  cllm_arena_mark_t probe = cllm_arena_mark(m.arena().get());
  EXPECT_LE(probe.depth_, 2);  // keep's mark and the spare one
  void* again = m.allocateTempBuffer(64);  // the spare mark (below the probe) drops it
  EXPECT_EQ(again, first);
  m.deallocateTempBuffer(again);
  m.deallocateTempBuffer(keep);
  EXPECT_EQ(m.getTempMemoryHeld(), 0);
  m.arena().check();
}

TEST(ModelExecutorMemoryManager, WeightsChargedAndFreeable) {
  auto& mon = MemoryMonitor::instance();
  ModelExecutorMemoryManager m(16);
  void* w1 = m.allocateWeightsCache(100000);
  void* w2 = m.allocateWeightsCache(3);
  EXPECT_TRUE(aligned(w1, 64) && aligned(w2, 64));
  std::memset(w1, 7, 100000);
  EXPECT_EQ(m.getWeightsMemoryUsed(), 100003);
  EXPECT_EQ(mon.getUsed(CLLM_CAT_WEIGHTS), 100003);
  m.deallocateWeightsCache(w1);
  EXPECT_EQ(m.getWeightsMemoryUsed(), 3);
  EXPECT_EQ(mon.getUsed(CLLM_CAT_WEIGHTS), 3);
  EXPECT_THROW(m.deallocateWeightsCache(w1), Error);
  void* t = m.allocateTempBuffer(50);
  EXPECT_EQ(m.getTotalMemoryUsed(), 53);
  (void)t;
  m.clearAll();
  EXPECT_EQ(m.getTotalMemoryUsed(), 0);
  EXPECT_EQ(mon.getUsed(CLLM_CAT_WEIGHTS), 0);
  void* w3 = m.allocateWeightsCache(10);
  (void)w3;  // freed by the destructor (LeakSanitizer and the monitor check it)
}

TEST(ModelExecutorMemoryManager, LimitIsEnforced) {
  EXPECT_THROW(ModelExecutorMemoryManager m(SIZE_MAX), std::length_error);
  ModelExecutorMemoryManager m(1);
  void* t = m.allocateTempBuffer(600 * kKiB);
  EXPECT_THROW(m.allocateWeightsCache(500 * kKiB), std::runtime_error);
  EXPECT_THROW(m.allocateTempBuffer(500 * kKiB), LimitError);
  EXPECT_EQ(m.getTotalMemoryUsed(), 600 * kKiB);
  void* w = m.allocateWeightsCache(424 * kKiB);  // exactly up to 1 MiB
  EXPECT_THROW(m.allocateTempBuffer(1), LimitError);
  EXPECT_THROW(m.allocateTempBuffer(SIZE_MAX), LimitError);
  EXPECT_THROW(m.allocateWeightsCache(SIZE_MAX), LimitError);
  m.deallocateWeightsCache(w);
  // Held but freed temp space counts until reclaimed.
  void* t2 = m.allocateTempBuffer(100 * kKiB);
  m.deallocateTempBuffer(t);
  EXPECT_EQ(m.getTempMemoryUsed(), 100 * kKiB);
  EXPECT_THROW(m.allocateTempBuffer(400 * kKiB), LimitError);
  m.deallocateTempBuffer(t2);
  EXPECT_NE(m.allocateTempBuffer(1 * kMiB), nullptr);
}

// The monitor's own limit applies too, and a throwing limit callback reaches the
// caller of allocateTempBuffer / allocateWeightsCache (a throwing method).
TEST(ModelExecutorMemoryManager, MonitorLimitAndThrowingCallback) {
  Monitor mon;
  mon.setCategoryLimit(CLLM_CAT_WEIGHTS, 1000);
  mon.setCategoryLimit(CLLM_CAT_STEP, 1);
  ModelExecutorMemoryManager m(64, mon.get());
  EXPECT_THROW(m.allocateWeightsCache(1001), LimitError);
  EXPECT_THROW(m.allocateTempBuffer(10), LimitError);  // the arena's first chunk is refused
  EXPECT_EQ(m.getTotalMemoryUsed(), 0);
  mon.setLimitCallback([](cllm_category_t cat, size_t, size_t, size_t) {
    throw std::domain_error(cllm_category_name(cat));
  });
  try {
    m.allocateTempBuffer(10);
    EXPECT_TRUE(false);
  } catch (const std::domain_error& e) {
    EXPECT_EQ(std::string(e.what()), "step");
  }
  try {
    m.allocateWeightsCache(5000);
    EXPECT_TRUE(false);
  } catch (const std::domain_error& e) {
    EXPECT_EQ(std::string(e.what()), "weights");
  }
  EXPECT_EQ(droppedCallbackExceptions(), 0);
  EXPECT_EQ(m.getTotalMemoryUsed(), 0);
  EXPECT_EQ(mon.used(), 0);
  mon.setCategoryLimit(CLLM_CAT_STEP, 0);
  void* p = m.allocateTempBuffer(10);
  EXPECT_NE(p, nullptr);
}

/* ---- FloatArray and RAIIWrapper ---- */

TEST(FloatArray, AlignedMovableAndChecked) {
  for (size_t n : {0u, 1u, 3u, 17u, 1000u, 100000u}) {
    FloatArray a(n);
    EXPECT_EQ(a.size(), n);
    EXPECT_NE(a.data(), nullptr);
    EXPECT_TRUE(aligned(a.data(), 64));
  }
  FloatArray a(10);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i);
  float* p = a.data();
  FloatArray b(std::move(a));
  EXPECT_EQ(a.data(), nullptr);
  EXPECT_EQ(a.size(), 0);
  EXPECT_EQ(b.data(), p);
  EXPECT_FLOAT_EQ(b[9], 9.0f);
  FloatArray c(3);
  c = std::move(b);  // c's old array is freed
  EXPECT_EQ(c.data(), p);
  EXPECT_EQ(c.size(), 10);
  c = std::move(c);  // self-move keeps it
  EXPECT_EQ(c.data(), p);
  try {
    FloatArray big(SIZE_MAX / 2);
    EXPECT_TRUE(false);
  } catch (const Error& e) {
    EXPECT_EQ(e.status(), CLLM_EOVERFLOW);
  }
  EXPECT_THROW(FloatArray huge(SIZE_MAX / 8), std::runtime_error);  // 2^61 bytes: ENOMEM
}

namespace {
struct Counted {
  static std::atomic<int> live;
  int v;
  explicit Counted(int x) : v(x) { live.fetch_add(1); }
  ~Counted() { live.fetch_sub(1); }
};
std::atomic<int> Counted::live{0};
}  // namespace

TEST(RAIIWrapper, MoveResetAndOwnership) {
  {
    RAIIWrapper<Counted> a(new Counted(1));
    RAIIWrapper<Counted> empty;
    EXPECT_EQ(empty.get(), nullptr);  // the default constructor allocates nothing
    EXPECT_EQ(Counted::live.load(), 1);
    RAIIWrapper<Counted> b(std::move(a));
    EXPECT_EQ(a.get(), nullptr);
    EXPECT_EQ(b->v, 1);
    RAIIWrapper<Counted> c(new Counted(2));
    c = std::move(b);  // Counted(2) deleted
    EXPECT_EQ(Counted::live.load(), 1);
    EXPECT_EQ((*c).v, 1);
    c.reset(c.get());  // same pointer: kept, not deleted
    EXPECT_EQ(Counted::live.load(), 1);
    c = std::move(c);
    EXPECT_EQ(c->v, 1);
    c.reset();
    EXPECT_EQ(Counted::live.load(), 0);
    EXPECT_FALSE(static_cast<bool>(c));
    const RAIIWrapper<Counted> d(new Counted(3));
    EXPECT_EQ(d.get()->v, 3);
  }
  EXPECT_EQ(Counted::live.load(), 0);
}

/* ---- RAII handles over the C objects ---- */

TEST(Arena, AllocResetMarksAndMove) {
  Arena a;
  float* x = a.allocArray<float>(1000);
  ASSERT_NE(x, nullptr);
  EXPECT_TRUE(aligned(x, 64));
  x[999] = 1.0f;
  EXPECT_EQ(a.allocArray<double>(SIZE_MAX / 4), nullptr);  // n * 8 overflows
  EXPECT_EQ(cllm_last_status(), CLLM_EINVAL);
  EXPECT_EQ(a.allocAligned(10, 3), nullptr);
  EXPECT_EQ(cllm_last_status(), CLLM_EINVAL);
  cllm_float_array_t f = a.floats(16);
  EXPECT_EQ(f.n, 16);
  size_t before = a.stats().bytes_in_use;
  {
    Arena::Scope s(a);
    EXPECT_NE(a.alloc(100000), nullptr);
    EXPECT_GT(a.stats().bytes_in_use, before);
  }
  EXPECT_EQ(a.stats().bytes_in_use, before);
  cllm_arena_mark_t m = a.mark();
  EXPECT_NE(a.alloc(10), nullptr);
  a.rewind(m);
  a.reset();
  try {
    a.rewind(m);  // stale after reset
    EXPECT_TRUE(false);
  } catch (const Error& e) {
    EXPECT_EQ(e.status(), CLLM_ESTATE);
  }
  a.reserve(4 * kMiB);
  EXPECT_GE(a.stats().capacity_bytes, 4 * kMiB);
  Arena b = std::move(a);
  EXPECT_EQ(a.get(), nullptr);
  EXPECT_EQ(a.alloc(1), nullptr);
  EXPECT_THROW(a.reset(), Error);
  EXPECT_NE(b.alloc(1), nullptr);
  b.check();
  EXPECT_GT(MemoryMonitor::instance().getUsed(CLLM_CAT_STEP), 0);
  b = Arena();
  EXPECT_EQ(MemoryMonitor::instance().getUsed(CLLM_CAT_STEP), 0);
}

TEST(Arena, CursorLendsThePositionAndGivesItBack) {
  Arena a;
  a.reserve(4 * kMiB);
  unsigned long long calls = a.stats().allocator_calls;
  {
    Arena::Cursor c(a);
    EXPECT_THROW(Arena::Cursor{a}, Error);   // one cursor at a time
    EXPECT_EQ(a.alloc(16), nullptr);        // the arena's own path is refused
    EXPECT_EQ(cllm_last_status(), CLLM_ESTATE);
    EXPECT_THROW(a.reset(), Error);
    uint8_t* prev = nullptr;
    for (int i = 0; i < 1000; i++) {
      uint8_t* p = c.allocArray<uint8_t>(1000 + (size_t)i);
      ASSERT_NE(p, nullptr);
      EXPECT_TRUE(aligned(p, 64));
      if (prev != nullptr) EXPECT_GE(p, prev + 999 + (size_t)i);  // no overlap
      p[0] = (uint8_t)i;
      prev = p;
    }
    EXPECT_EQ(c.allocArray<double>(SIZE_MAX / 4), nullptr);
    EXPECT_EQ(cllm_last_status(), CLLM_EINVAL);
    EXPECT_EQ(c.allocAligned(8, 3), nullptr);
    EXPECT_EQ(cllm_last_status(), CLLM_EINVAL);
    EXPECT_NE(c.alloc(3 * kMiB), nullptr);  // past the chunk: the slow path grows it
    c.end();
    EXPECT_THROW(c.end(), Error);
    EXPECT_EQ(c.alloc(1), nullptr);
    EXPECT_EQ(cllm_last_status(), CLLM_ESTATE);
  }
  EXPECT_GT(a.stats().allocator_calls, calls);
  EXPECT_NE(a.alloc(16), nullptr);  // the arena goes on from where the cursor stopped
  EXPECT_GE(a.stats().bytes_in_use, 3 * kMiB + 1000 * 1000);
  a.reset();
  { Arena::Cursor c(a); }  // the destructor ends it
  EXPECT_NE(a.alloc(16), nullptr);
  a.check();
}

// Arena::alloc is noexcept: a limit callback that throws while it gets a chunk cannot
// reach its caller; the exception is dropped and counted, alloc returns nullptr.
TEST(Arena, ThrowingCallbackInNoexceptAllocIsDropped) {
  Monitor mon;
  mon.setCategoryLimit(CLLM_CAT_STEP, 4 * kMiB);
  mon.setLimitCallback([](cllm_category_t, size_t, size_t, size_t) { throw std::bad_alloc(); });
  cllm_arena_config_t cfg = cllm_arena_config_default();
  cfg.monitor = mon.get();
  Arena a(cfg);
  EXPECT_NE(a.alloc(kMiB), nullptr);
  EXPECT_EQ(a.alloc(8 * kMiB), nullptr);
  EXPECT_EQ(cllm_last_status(), CLLM_ELIMIT);
  EXPECT_EQ(droppedCallbackExceptions(), 1);
  EXPECT_THROW(a.reserve(16 * kMiB), std::bad_alloc);  // a throwing method: rethrown
  EXPECT_EQ(droppedCallbackExceptions(), 1);
  a.check();
}

TEST(WeightsHeap, AllocLoadProgressSeal) {
  Monitor mon;
  cllm_weights_config_t cfg = cllm_weights_config_default();
  cfg.capacity_bytes = 4 * kMiB;
  cfg.huge_pages = CLLM_WEIGHTS_HUGE_OFF;
  cfg.monitor = mon.get();
  char path[] = "/tmp/cllm_mem_test_XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  std::vector<unsigned char> data(100000);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<unsigned char>(i * 7);
  ASSERT_EQ(write(fd, data.data(), data.size()), static_cast<ssize_t>(data.size()));
  int progress_calls = 0;
  bool throw_now = true;
  {
    WeightsHeap w(cfg, [&](size_t done, size_t total) {
      ++progress_calls;
      if (throw_now) throw std::runtime_error("cancelled by progress");
      return done <= total;
    });
    EXPECT_GE(mon.used(CLLM_CAT_WEIGHTS), 4 * kMiB);
    void* p = w.alloc(1000);
    EXPECT_TRUE(aligned(p, 64));
    EXPECT_TRUE(aligned(w.alloc(10, 4096), 4096));
    size_t used = w.stats().used_bytes;
    bool caught = false;
    try {
      w.load(path, 0, data.size());
    } catch (const std::runtime_error& e) {
      caught = std::string(e.what()) == "cancelled by progress";
    }
    EXPECT_TRUE(caught);
    EXPECT_EQ(w.stats().used_bytes, used);  // the load was undone
    EXPECT_EQ(w.stats().load_failures, 1);
    throw_now = false;
    void* q = w.load(path, 100, data.size() - 100);
    EXPECT_EQ(std::memcmp(q, data.data() + 100, data.size() - 100), 0);
    void* r = w.loadFd(fd, 0, 10);
    EXPECT_EQ(std::memcmp(r, data.data(), 10), 0);
    EXPECT_GE(progress_calls, 3);
    try {
      w.load("/nonexistent/cllm", 0, 10);
      EXPECT_TRUE(false);
    } catch (const Error& e) {
      EXPECT_EQ(e.status(), CLLM_ENOTFOUND);
    }
    EXPECT_THROW(w.alloc(0), Error);
    w.seal();
    try {
      w.alloc(10);
      EXPECT_TRUE(false);
    } catch (const Error& e) {
      EXPECT_EQ(e.status(), CLLM_ESTATE);
    }
    EXPECT_TRUE(w.stats().sealed);
    w.check();
    WeightsHeap w2 = std::move(w);
    EXPECT_EQ(w.get(), nullptr);
    EXPECT_NE(w2.base(), nullptr);
  }
  EXPECT_EQ(mon.used(), 0);
  close(fd);
  unlink(path);
  cfg.capacity_bytes = 0;
  EXPECT_THROW(WeightsHeap bad(cfg), Error);
  cfg.capacity_bytes = 64 * kMiB;
  mon.setCategoryLimit(CLLM_CAT_WEIGHTS, kMiB);
  EXPECT_THROW(WeightsHeap refused(cfg), LimitError);
}

TEST(KVCache, SequencesAndCopyApi) {
  cllm_kv_config_t cfg = cllm_kv_config_default();
  cfg.layers = 2;
  cfg.kv_heads = 2;
  cfg.head_dim = 8;
  cfg.dtype_bytes = 2;
  cfg.capacity_blocks = 64;
  KVCache kv(cfg);
  EXPECT_EQ(kv.numBlocks(), 64);
  EXPECT_EQ(kv.blockTokens(), 16);
  cllm_kv_seq_t s = kv.open("seq-1");
  std::vector<cllm_kv_loc_t> locs(40);
  kv.reserve(s, 40, locs.data());
  EXPECT_EQ(kv.length(s), 40);
  std::vector<cllm_kv_token_t> toks(40);
  for (int i = 0; i < 40; ++i) toks[i] = i;
  kv.commit(s, toks.data(), 40);
  EXPECT_EQ(kv.blockTable(s).size(), 3);
  void* k = nullptr;
  kv.blockLayer(locs[0].block, 1, &k, nullptr);
  EXPECT_NE(k, nullptr);
  EXPECT_THROW(kv.blockLayer(1000, 0, &k, nullptr), Error);
  cllm_kv_seq_t child = kv.fork(s, "seq-2");
  EXPECT_EQ(kv.length(child), 40);
  EXPECT_EQ(kv.find("seq-1").slot, s.slot);
  try {
    kv.open("seq-1");
    EXPECT_TRUE(false);
  } catch (const Error& e) {
    EXPECT_EQ(e.status(), CLLM_EEXIST);
  }
  try {
    kv.find("nobody");
    EXPECT_TRUE(false);
  } catch (const Error& e) {
    EXPECT_EQ(e.status(), CLLM_ENOTFOUND);
  }
  kv.close(s);
  kv.close(child);
  EXPECT_THROW(kv.close(s), Error);  // closed twice: stale handle
  size_t cached = 0;
  cllm_kv_seq_t again = kv.openWithPrompt("seq-3", toks.data(), 40, &cached);
  EXPECT_EQ(cached, 32);  // two full blocks shared
  kv.touch(again);
  kv.close(again);

  std::vector<std::string> evicted;
  kv.setEvictionCallback([&](const std::string& id, cllm_kv_evict_reason_t r) {
    EXPECT_EQ(r, CLLM_KV_EVICT_LRU);
    evicted.push_back(id);
  });
  std::vector<float> keys(500, 1.5f), values(300, -2.0f), gk, gv;
  kv.put("entry", keys.data(), keys.size(), values.data(), values.size());
  EXPECT_TRUE(kv.get("entry", gk, gv));
  EXPECT_TRUE(gk == keys);
  EXPECT_TRUE(gv == values);
  EXPECT_GT(kv.usedBytes(), 0);
  EXPECT_TRUE(kv.evict("entry"));
  EXPECT_FALSE(kv.evict("entry"));
  EXPECT_FALSE(kv.get("entry", gk, gv));
  EXPECT_TRUE(evicted.empty());
  KVCache moved = std::move(kv);
  EXPECT_EQ(kv.get(), nullptr);
  EXPECT_THROW(kv.open("x"), Error);
  moved.check();
  EXPECT_EQ(moved.stats().num_blocks, 64);
}

TEST(Heaps, AllocFreeAndMove) {
  cllm_heaps_config_t cfg = cllm_heaps_config_default();
  cfg.bytes_per_node = 64 * kMiB;
  Heaps h(cfg);
  void* p = h.allocAligned(1000, 64);
  if (p == nullptr)
    std::fprintf(stderr, "heap alloc: %s, mode %s\n", cllm_status_name(cllm_last_status()),
                 cllm_heap_mode_name(h.mode()));
  ASSERT_NE(p, nullptr);
  EXPECT_TRUE(aligned(p, 64));
  EXPECT_GE(h.usableSize(p), 1000);
  EXPECT_EQ(h.allocAligned(10, 3), nullptr);
  EXPECT_EQ(cllm_last_status(), CLLM_EINVAL);
  void* q = h.calloc(10, 10);
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(static_cast<unsigned char*>(q)[99], 0);
  std::thread other([&] { h.free(q); });  // free from any thread
  other.join();
  h.free(p);
  h.threadFlush();
  Heaps h2 = std::move(h);
  EXPECT_EQ(h.get(), nullptr);
  EXPECT_EQ(h.alloc(1), nullptr);
  void* r = h2.alloc(10);
  EXPECT_NE(r, nullptr);
  h2.free(r);
  h2.check();
}

TEST(Stats, JsonAndPrometheusStrings) {
  MemoryMonitor::instance().allocate(12345);
  Arena arena;
  EXPECT_NE(arena.alloc(100), nullptr);
  cllm_stats_arena_source_t arenas[] = {{"worker0", arena.get()}};
  cllm_stats_sources_t src = cllm_stats_sources_default();
  src.arenas = arenas;
  src.n_arenas = 1;
  std::string json = statsJson(src);
  EXPECT_EQ(json.front(), '{');
  EXPECT_NE(json.find("worker0"), std::string::npos);
  EXPECT_NE(json.find("12345"), std::string::npos);
  std::string prom = statsPrometheus();
  EXPECT_NE(prom.find("# TYPE"), std::string::npos);
  src.n_arenas = 5000;  // above CLLM_STATS_MAX_SOURCES
  try {
    (void)statsJson(src);
    EXPECT_TRUE(false);
  } catch (const Error& e) {
    EXPECT_EQ(e.status(), CLLM_EINVAL);
  }
  MemoryMonitor::instance().deallocate(12345);
}

TEST(Errors, CarryTheStatus) {
  Error e(CLLM_ENOTFOUND, "ctx");
  EXPECT_EQ(e.status(), CLLM_ENOTFOUND);
  EXPECT_NE(std::string(e.what()).find("CLLM_ENOTFOUND"), std::string::npos);
  EXPECT_NE(std::string(e.what()).find("ctx"), std::string::npos);
  EXPECT_THROW(throwStatus(CLLM_ELIMIT, "x"), LimitError);
  EXPECT_NO_THROW(checkStatus(CLLM_OK, "x"));
  EXPECT_THROW(checkStatus(CLLM_ENOMEM, "x"), std::runtime_error);
}

CXX_CHECK_MAIN()
