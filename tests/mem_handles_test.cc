// Criterion suite for the C++ layer (include/cllm/seed.hpp and mem.hpp), part 2 of 2
// (part 1: mem_test.cc, the seed's tests, MemoryMonitor, Monitor,
// KVCacheMemoryManager): the seed's ModelExecutorMemoryManager, FloatArray and
// RAIIWrapper beyond the seed's own tests, the RAII handles over the C objects (Arena,
// WeightsHeap, KVCache; Heaps, which frees from a second thread, is in mem_mt.cc), the
// stats strings and the error types. Criterion runs each test in its own process.

#include <cllm/seed.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <criterion/criterion.h>

#include "support/mem_test_util.hpp"

using namespace cllm;
using namespace mem_test;

/* ---- ModelExecutorMemoryManager ---- */

Test(ModelExecutorMemoryManager, TempBuffersAndExactUsage) {
  ModelExecutorMemoryManager m(16);
  void* a = m.allocateTempBuffer(1000);
  void* b = m.allocateTempBuffer(3000);
  void* c = m.allocateTempBuffer(5);
  cr_expect(aligned(a, 64) && aligned(b, 64) && aligned(c, 64));
  std::memset(a, 1, 1000);
  std::memset(b, 2, 3000);
  cr_expect_eq(m.getTempMemoryUsed(), 4005);
  m.deallocateTempBuffer(b);  // out of order: stops counting, reclaimed later
  cr_expect_eq(m.getTempMemoryUsed(), 1005);
  cr_expect_eq(m.getTempMemoryHeld(), 4005);
  m.deallocateTempBuffer(c);  // c and b reclaimed: the arena rewinds to before b
  cr_expect_eq(m.getTempMemoryHeld(), 1000);
  void* d = m.allocateTempBuffer(64);
  cr_expect_eq(d, b);  // the reclaimed space is reused
  cr_expect_eq(static_cast<unsigned char*>(a)[999], 1);
  m.deallocateTempBuffer(a);
  m.deallocateTempBuffer(d);  // nothing live: the arena is reset
  cr_expect_eq(m.getTempMemoryUsed(), 0);
  cr_expect_eq(m.getTempMemoryHeld(), 0);
  cr_expect_eq(m.arena().stats().bytes_in_use, 0);
  // Bad pointers: refused, nothing changes.
  void* e0 = m.allocateTempBuffer(10);
  void* e = m.allocateTempBuffer(10);
  m.deallocateTempBuffer(e0);
  try {
    m.deallocateTempBuffer(e0);  // freed already
    cr_expect(false);
  } catch (const Error& err) {
    cr_expect_eq(err.status(), CLLM_EINVAL);
  }
  int local = 0;
  cr_expect_throw(m.deallocateTempBuffer(&local), Error);
  cr_expect_throw(m.deallocateWeightsCache(e), Error);  // a temp buffer is not a weight
  m.deallocateTempBuffer(nullptr);
  cr_expect_eq(m.getTempMemoryUsed(), 10);
  m.arena().check();
}

// Freeing and allocating the top buffer over and over reuses the same space and the
// same arena mark: nothing grows while an older buffer stays live.
Test(ModelExecutorMemoryManager, TopOfStackChurnDoesNotGrow) {
  ModelExecutorMemoryManager m(16);
  void* keep = m.allocateTempBuffer(100);
  void* first = m.allocateTempBuffer(64);
  m.deallocateTempBuffer(first);
  for (int i = 0; i < 10000; ++i) {
    void* p = m.allocateTempBuffer(64);
    cr_assert_eq(p, first);
    m.deallocateTempBuffer(p);
  }
  cr_expect_throw(m.allocateTempBuffer(32 * kMiB), LimitError);  // refused: state kept
  cr_expect_eq(m.getTempMemoryHeld(), 100);
  cllm_arena_mark_t probe = cllm_arena_mark(m.arena().get());
  cr_expect_leq(probe.depth_, 2);  // keep's mark and the spare one
  void* again = m.allocateTempBuffer(64);  // the spare mark (below the probe) drops it
  cr_expect_eq(again, first);
  m.deallocateTempBuffer(again);
  m.deallocateTempBuffer(keep);
  cr_expect_eq(m.getTempMemoryHeld(), 0);
  m.arena().check();
}

Test(ModelExecutorMemoryManager, WeightsChargedAndFreeable) {
  auto& mon = MemoryMonitor::instance();
  ModelExecutorMemoryManager m(16);
  void* w1 = m.allocateWeightsCache(100000);
  void* w2 = m.allocateWeightsCache(3);
  cr_expect(aligned(w1, 64) && aligned(w2, 64));
  std::memset(w1, 7, 100000);
  cr_expect_eq(m.getWeightsMemoryUsed(), 100003);
  cr_expect_eq(mon.getUsed(CLLM_CAT_WEIGHTS), 100003);
  m.deallocateWeightsCache(w1);
  cr_expect_eq(m.getWeightsMemoryUsed(), 3);
  cr_expect_eq(mon.getUsed(CLLM_CAT_WEIGHTS), 3);
  cr_expect_throw(m.deallocateWeightsCache(w1), Error);
  void* t = m.allocateTempBuffer(50);
  cr_expect_eq(m.getTotalMemoryUsed(), 53);
  (void)t;
  m.clearAll();
  cr_expect_eq(m.getTotalMemoryUsed(), 0);
  cr_expect_eq(mon.getUsed(CLLM_CAT_WEIGHTS), 0);
  void* w3 = m.allocateWeightsCache(10);
  (void)w3;  // freed by the destructor (LeakSanitizer and the monitor check it)
}

Test(ModelExecutorMemoryManager, LimitIsEnforced) {
  cr_expect_throw(ModelExecutorMemoryManager m(SIZE_MAX), std::length_error);
  ModelExecutorMemoryManager m(1);
  void* t = m.allocateTempBuffer(600 * kKiB);
  cr_expect_throw(m.allocateWeightsCache(500 * kKiB), std::runtime_error);
  cr_expect_throw(m.allocateTempBuffer(500 * kKiB), LimitError);
  cr_expect_eq(m.getTotalMemoryUsed(), 600 * kKiB);
  void* w = m.allocateWeightsCache(424 * kKiB);  // exactly up to 1 MiB
  cr_expect_throw(m.allocateTempBuffer(1), LimitError);
  cr_expect_throw(m.allocateTempBuffer(SIZE_MAX), LimitError);
  cr_expect_throw(m.allocateWeightsCache(SIZE_MAX), LimitError);
  m.deallocateWeightsCache(w);
  // Held but freed temp space counts until reclaimed.
  void* t2 = m.allocateTempBuffer(100 * kKiB);
  m.deallocateTempBuffer(t);
  cr_expect_eq(m.getTempMemoryUsed(), 100 * kKiB);
  cr_expect_throw(m.allocateTempBuffer(400 * kKiB), LimitError);
  m.deallocateTempBuffer(t2);
  cr_expect_not_null(m.allocateTempBuffer(1 * kMiB));
}

// The monitor's own limit applies too, and a throwing limit callback reaches the
// caller of allocateTempBuffer / allocateWeightsCache (a throwing method).
Test(ModelExecutorMemoryManager, MonitorLimitAndThrowingCallback) {
  Monitor mon;
  mon.setCategoryLimit(CLLM_CAT_WEIGHTS, 1000);
  mon.setCategoryLimit(CLLM_CAT_STEP, 1);
  ModelExecutorMemoryManager m(64, mon.get());
  cr_expect_throw(m.allocateWeightsCache(1001), LimitError);
  cr_expect_throw(m.allocateTempBuffer(10), LimitError);  // the arena's first chunk is refused
  cr_expect_eq(m.getTotalMemoryUsed(), 0);
  mon.setLimitCallback([](cllm_category_t cat, size_t, size_t, size_t) {
    throw std::domain_error(cllm_category_name(cat));
  });
  try {
    m.allocateTempBuffer(10);
    cr_expect(false);
  } catch (const std::domain_error& e) {
    cr_expect_eq(std::string(e.what()), "step");
  }
  try {
    m.allocateWeightsCache(5000);
    cr_expect(false);
  } catch (const std::domain_error& e) {
    cr_expect_eq(std::string(e.what()), "weights");
  }
  cr_expect_eq(droppedCallbackExceptions(), 0);
  cr_expect_eq(m.getTotalMemoryUsed(), 0);
  cr_expect_eq(mon.used(), 0);
  mon.setCategoryLimit(CLLM_CAT_STEP, 0);
  void* p = m.allocateTempBuffer(10);
  cr_expect_not_null(p);
}

/* ---- FloatArray and RAIIWrapper ---- */

Test(FloatArray, AlignedMovableAndChecked) {
  for (size_t n : {0u, 1u, 3u, 17u, 1000u, 100000u}) {
    FloatArray a(n);
    cr_expect_eq(a.size(), n);
    cr_expect_not_null(a.data());
    cr_expect(aligned(a.data(), 64));
  }
  FloatArray a(10);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i);
  float* p = a.data();
  FloatArray b(std::move(a));
  cr_expect_null(a.data());
  cr_expect_eq(a.size(), 0);
  cr_expect_eq(b.data(), p);
  cr_expect_float_eq(b[9], 9.0f, ulps4(9.0f));
  FloatArray c(3);
  c = std::move(b);  // c's old array is freed
  cr_expect_eq(c.data(), p);
  cr_expect_eq(c.size(), 10);
  c = std::move(c);  // self-move keeps it
  cr_expect_eq(c.data(), p);
  try {
    FloatArray big(SIZE_MAX / 2);
    cr_expect(false);
  } catch (const Error& e) {
    cr_expect_eq(e.status(), CLLM_EOVERFLOW);
  }
  cr_expect_throw(FloatArray huge(SIZE_MAX / 8), std::runtime_error);  // 2^61 bytes: ENOMEM
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

Test(RAIIWrapper, MoveResetAndOwnership) {
  {
    RAIIWrapper<Counted> a(new Counted(1));
    RAIIWrapper<Counted> empty;
    cr_expect_null(empty.get());  // the default constructor allocates nothing
    cr_expect_eq(Counted::live.load(), 1);
    RAIIWrapper<Counted> b(std::move(a));
    cr_expect_null(a.get());
    cr_expect_eq(b->v, 1);
    RAIIWrapper<Counted> c(new Counted(2));
    c = std::move(b);  // Counted(2) deleted
    cr_expect_eq(Counted::live.load(), 1);
    cr_expect_eq((*c).v, 1);
    c.reset(c.get());  // same pointer: kept, not deleted
    cr_expect_eq(Counted::live.load(), 1);
    c = std::move(c);
    cr_expect_eq(c->v, 1);
    c.reset();
    cr_expect_eq(Counted::live.load(), 0);
    cr_expect_not(static_cast<bool>(c));
    const RAIIWrapper<Counted> d(new Counted(3));
    cr_expect_eq(d.get()->v, 3);
  }
  cr_expect_eq(Counted::live.load(), 0);
}

/* ---- RAII handles over the C objects ---- */

Test(Arena, AllocResetMarksAndMove) {
  Arena a;
  float* x = a.allocArray<float>(1000);
  cr_assert_not_null(x);
  cr_expect(aligned(x, 64));
  x[999] = 1.0f;
  cr_expect_null(a.allocArray<double>(SIZE_MAX / 4));  // n * 8 overflows
  cr_expect_eq(cllm_last_status(), CLLM_EINVAL);
  cr_expect_null(a.allocAligned(10, 3));
  cr_expect_eq(cllm_last_status(), CLLM_EINVAL);
  cllm_float_array_t f = a.floats(16);
  cr_expect_eq(f.n, 16);
  size_t before = a.stats().bytes_in_use;
  {
    Arena::Scope s(a);
    cr_expect_not_null(a.alloc(100000));
    cr_expect_gt(a.stats().bytes_in_use, before);
  }
  cr_expect_eq(a.stats().bytes_in_use, before);
  cllm_arena_mark_t m = a.mark();
  cr_expect_not_null(a.alloc(10));
  a.rewind(m);
  a.reset();
  try {
    a.rewind(m);  // stale after reset
    cr_expect(false);
  } catch (const Error& e) {
    cr_expect_eq(e.status(), CLLM_ESTATE);
  }
  a.reserve(4 * kMiB);
  cr_expect_geq(a.stats().capacity_bytes, 4 * kMiB);
  Arena b = std::move(a);
  cr_expect_null(a.get());
  cr_expect_null(a.alloc(1));
  cr_expect_throw(a.reset(), Error);
  cr_expect_not_null(b.alloc(1));
  b.check();
  cr_expect_gt(MemoryMonitor::instance().getUsed(CLLM_CAT_STEP), 0);
  b = Arena();
  cr_expect_eq(MemoryMonitor::instance().getUsed(CLLM_CAT_STEP), 0);
}

Test(Arena, CursorLendsThePositionAndGivesItBack) {
  Arena a;
  a.reserve(4 * kMiB);
  unsigned long long calls = a.stats().allocator_calls;
  {
    Arena::Cursor c(a);
    cr_expect_throw(Arena::Cursor{a}, Error);   // one cursor at a time
    cr_expect_null(a.alloc(16));        // the arena's own path is refused
    cr_expect_eq(cllm_last_status(), CLLM_ESTATE);
    cr_expect_throw(a.reset(), Error);
    uint8_t* prev = nullptr;
    for (int i = 0; i < 1000; i++) {
      uint8_t* p = c.allocArray<uint8_t>(1000 + (size_t)i);
      cr_assert_not_null(p);
      cr_expect(aligned(p, 64));
      if (prev != nullptr) cr_expect_geq(p, prev + 999 + (size_t)i);  // no overlap
      p[0] = (uint8_t)i;
      prev = p;
    }
    cr_expect_null(c.allocArray<double>(SIZE_MAX / 4));
    cr_expect_eq(cllm_last_status(), CLLM_EINVAL);
    cr_expect_null(c.allocAligned(8, 3));
    cr_expect_eq(cllm_last_status(), CLLM_EINVAL);
    cr_expect_not_null(c.alloc(3 * kMiB));  // past the chunk: the slow path grows it
    c.end();
    cr_expect_throw(c.end(), Error);
    cr_expect_null(c.alloc(1));
    cr_expect_eq(cllm_last_status(), CLLM_ESTATE);
  }
  cr_expect_gt(a.stats().allocator_calls, calls);
  cr_expect_not_null(a.alloc(16));  // the arena goes on from where the cursor stopped
  cr_expect_geq(a.stats().bytes_in_use, 3 * kMiB + 1000 * 1000);
  a.reset();
  { Arena::Cursor c(a); }  // the destructor ends it
  cr_expect_not_null(a.alloc(16));
  a.check();
}

// Arena::alloc is noexcept: a limit callback that throws while it gets a chunk cannot
// reach its caller; the exception is dropped and counted, alloc returns nullptr.
Test(Arena, ThrowingCallbackInNoexceptAllocIsDropped) {
  Monitor mon;
  mon.setCategoryLimit(CLLM_CAT_STEP, 4 * kMiB);
  mon.setLimitCallback([](cllm_category_t, size_t, size_t, size_t) { throw std::bad_alloc(); });
  cllm_arena_config_t cfg = cllm_arena_config_default();
  cfg.monitor = mon.get();
  Arena a(cfg);
  cr_expect_not_null(a.alloc(kMiB));
  cr_expect_null(a.alloc(8 * kMiB));
  cr_expect_eq(cllm_last_status(), CLLM_ELIMIT);
  cr_expect_eq(droppedCallbackExceptions(), 1);
  cr_expect_throw(a.reserve(16 * kMiB), std::bad_alloc);  // a throwing method: rethrown
  cr_expect_eq(droppedCallbackExceptions(), 1);
  a.check();
}

Test(WeightsHeap, AllocLoadProgressSeal) {
  Monitor mon;
  cllm_weights_config_t cfg = cllm_weights_config_default();
  cfg.capacity_bytes = 4 * kMiB;
  cfg.huge_pages = CLLM_WEIGHTS_HUGE_OFF;
  cfg.monitor = mon.get();
  char path[] = "/tmp/cllm_mem_test_XXXXXX";
  int fd = mkstemp(path);
  cr_assert_geq(fd, 0);
  std::vector<unsigned char> data(100000);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<unsigned char>(i * 7);
  cr_assert_eq(write(fd, data.data(), data.size()), static_cast<ssize_t>(data.size()));
  int progress_calls = 0;
  bool throw_now = true;
  {
    WeightsHeap w(cfg, [&](size_t done, size_t total) {
      ++progress_calls;
      if (throw_now) throw std::runtime_error("cancelled by progress");
      return done <= total;
    });
    cr_expect_geq(mon.used(CLLM_CAT_WEIGHTS), 4 * kMiB);
    void* p = w.alloc(1000);
    cr_expect(aligned(p, 64));
    cr_expect(aligned(w.alloc(10, 4096), 4096));
    size_t used = w.stats().used_bytes;
    bool caught = false;
    try {
      w.load(path, 0, data.size());
    } catch (const std::runtime_error& e) {
      caught = std::string(e.what()) == "cancelled by progress";
    }
    cr_expect(caught);
    cr_expect_eq(w.stats().used_bytes, used);  // the load was undone
    cr_expect_eq(w.stats().load_failures, 1);
    throw_now = false;
    void* q = w.load(path, 100, data.size() - 100);
    cr_expect_eq(std::memcmp(q, data.data() + 100, data.size() - 100), 0);
    void* r = w.loadFd(fd, 0, 10);
    cr_expect_eq(std::memcmp(r, data.data(), 10), 0);
    cr_expect_geq(progress_calls, 3);
    try {
      w.load("/nonexistent/cllm", 0, 10);
      cr_expect(false);
    } catch (const Error& e) {
      cr_expect_eq(e.status(), CLLM_ENOTFOUND);
    }
    cr_expect_throw(w.alloc(0), Error);
    w.seal();
    try {
      w.alloc(10);
      cr_expect(false);
    } catch (const Error& e) {
      cr_expect_eq(e.status(), CLLM_ESTATE);
    }
    cr_expect(w.stats().sealed);
    w.check();
    WeightsHeap w2 = std::move(w);
    cr_expect_null(w.get());
    cr_expect_not_null(w2.base());
  }
  cr_expect_eq(mon.used(), 0);
  close(fd);
  unlink(path);
  cfg.capacity_bytes = 0;
  cr_expect_throw(WeightsHeap bad(cfg), Error);
  cfg.capacity_bytes = 64 * kMiB;
  mon.setCategoryLimit(CLLM_CAT_WEIGHTS, kMiB);
  cr_expect_throw(WeightsHeap refused(cfg), LimitError);
}

Test(KVCache, SequencesAndCopyApi) {
  cllm_kv_config_t cfg = cllm_kv_config_default();
  cfg.layers = 2;
  cfg.kv_heads = 2;
  cfg.head_dim = 8;
  cfg.dtype_bytes = 2;
  cfg.capacity_blocks = 64;
  KVCache kv(cfg);
  cr_expect_eq(kv.numBlocks(), 64);
  cr_expect_eq(kv.blockTokens(), 16);
  cllm_kv_seq_t s = kv.open("seq-1");
  std::vector<cllm_kv_loc_t> locs(40);
  kv.reserve(s, 40, locs.data());
  cr_expect_eq(kv.length(s), 40);
  std::vector<cllm_kv_token_t> toks(40);
  for (int i = 0; i < 40; ++i) toks[i] = i;
  kv.commit(s, toks.data(), 40);
  cr_expect_eq(kv.blockTable(s).size(), 3);
  void* k = nullptr;
  kv.blockLayer(locs[0].block, 1, &k, nullptr);
  cr_expect_not_null(k);
  cr_expect_throw(kv.blockLayer(1000, 0, &k, nullptr), Error);
  cllm_kv_seq_t child = kv.fork(s, "seq-2");
  cr_expect_eq(kv.length(child), 40);
  cr_expect_eq(kv.find("seq-1").slot, s.slot);
  try {
    kv.open("seq-1");
    cr_expect(false);
  } catch (const Error& e) {
    cr_expect_eq(e.status(), CLLM_EEXIST);
  }
  try {
    kv.find("nobody");
    cr_expect(false);
  } catch (const Error& e) {
    cr_expect_eq(e.status(), CLLM_ENOTFOUND);
  }
  kv.close(s);
  kv.close(child);
  cr_expect_throw(kv.close(s), Error);  // closed twice: stale handle
  size_t cached = 0;
  cllm_kv_seq_t again = kv.openWithPrompt("seq-3", toks.data(), 40, &cached);
  cr_expect_eq(cached, 32);  // two full blocks shared
  kv.touch(again);
  kv.close(again);

  std::vector<std::string> evicted;
  kv.setEvictionCallback([&](const std::string& id, cllm_kv_evict_reason_t r) {
    cr_expect_eq(r, CLLM_KV_EVICT_LRU);
    evicted.push_back(id);
  });
  std::vector<float> keys(500, 1.5f), values(300, -2.0f), gk, gv;
  kv.put("entry", keys.data(), keys.size(), values.data(), values.size());
  cr_expect(kv.get("entry", gk, gv));
  cr_expect(gk == keys);
  cr_expect(gv == values);
  cr_expect_gt(kv.usedBytes(), 0);
  cr_expect(kv.evict("entry"));
  cr_expect_not(kv.evict("entry"));
  cr_expect_not(kv.get("entry", gk, gv));
  cr_expect(evicted.empty());
  KVCache moved = std::move(kv);
  cr_expect_null(kv.get());
  cr_expect_throw(kv.open("x"), Error);
  moved.check();
  cr_expect_eq(moved.stats().num_blocks, 64);
}

Test(Topology, SyntheticQueriesAndMove) {
  cllm_topology_config_t cfg = cllm_topology_config_default();
  cfg.synthetic = "pack:2 numa:1 core:2 pu:1";
  Topology t(cfg);
  cr_expect_eq(t.nodes(), 2);
  cr_expect_not(t.isThisSystem());
  cllm_numa_node_info_t info = t.nodeInfo(1);
  cr_expect_eq(info.index, 1);
  cr_expect_eq(info.n_cpus, 2);
  std::vector<int> cpus = t.nodeCpus(1);
  cr_assert_eq(cpus.size(), 2);
  cr_expect_lt(cpus[0], cpus[1]);
  cr_expect_eq(t.nodeOfCpu(cpus[0]), 1);
  try {
    t.nodeInfo(2);
    cr_expect(false);
  } catch (const Error& e) {
    cr_expect_eq(e.status(), CLLM_ENOTFOUND);
  }
  cr_expect_throw(t.nodeCpus(-1), Error);
  try {
    t.bindThread(0);  // a synthetic topology is not this machine
    cr_expect(false);
  } catch (const Error& e) {
    cr_expect_eq(e.status(), CLLM_ENOTSUP);
  }
  Topology moved = std::move(t);
  cr_expect_null(t.get());
  cr_expect_eq(t.nodes(), 0);
  cr_expect_eq(moved.nodes(), 2);
  Topology here;  // the running machine, loaded afresh
  cr_expect(here.isThisSystem());
  cr_expect_geq(here.nodes(), 1);
  cr_expect_geq(here.nodeCpus(0).size(), 1);
  cfg.synthetic = "not a topology";
  cr_expect_throw(Topology bad(cfg), Error);
  cfg.synthetic = nullptr;
  cfg.max_nodes = -1;
  cr_expect_throw(Topology bad(cfg), Error);
}

Test(Stats, JsonAndPrometheusStrings) {
  MemoryMonitor::instance().allocate(12345);
  Arena arena;
  cr_expect_not_null(arena.alloc(100));
  cllm_stats_arena_source_t arenas[] = {{"worker0", arena.get()}};
  cllm_stats_sources_t src = cllm_stats_sources_default();
  src.arenas = arenas;
  src.n_arenas = 1;
  std::string json = statsJson(src);
  cr_expect_eq(json.front(), '{');
  cr_expect_neq(json.find("worker0"), std::string::npos);
  cr_expect_neq(json.find("12345"), std::string::npos);
  std::string prom = statsPrometheus();
  cr_expect_neq(prom.find("# TYPE"), std::string::npos);
  src.n_arenas = 5000;  // above CLLM_STATS_MAX_SOURCES
  try {
    (void)statsJson(src);
    cr_expect(false);
  } catch (const Error& e) {
    cr_expect_eq(e.status(), CLLM_EINVAL);
  }
  MemoryMonitor::instance().deallocate(12345);
}

Test(Errors, CarryTheStatus) {
  Error e(CLLM_ENOTFOUND, "ctx");
  cr_expect_eq(e.status(), CLLM_ENOTFOUND);
  cr_expect_neq(std::string(e.what()).find("CLLM_ENOTFOUND"), std::string::npos);
  cr_expect_neq(std::string(e.what()).find("ctx"), std::string::npos);
  cr_expect_throw(throwStatus(CLLM_ELIMIT, "x"), LimitError);
  cr_expect_no_throw(checkStatus(CLLM_OK, "x"), std::exception);
  cr_expect_throw(checkStatus(CLLM_ENOMEM, "x"), std::runtime_error);
}

