// The C++ layer's concurrency tests (include/cllm/seed.hpp, mem.hpp): a plain program
// (tag "tsan"), so that they also run under --config=tsan, where Criterion crashes
// (.bazelrc). Every C++ test that starts a thread is here: the seed's integration tests
// (memory-manager-design.zh.md, 10.2.1 and 10.2.2, kept as written), the same with 16
// threads and many rounds (ITER scales them), callbacks swapped under contention, a
// free from another thread, and the KV tier (its own threads). The single-threaded
// tests are Criterion suites (mem_test.cc, mem_handles_test.cc). The scenarios run in
// one process, in order; each leaves the global monitor as it found it (no limit, no
// callback, nothing in use).

#include <cllm/seed.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "support/mem_test_util.hpp"
#include "support/mt_check.h"

using namespace cllm;
using namespace mem_test;

// 10.2.1 MemoryMonitor integration
static void MemoryMonitorIntegration_MultipleThreads() {
  MemoryMonitor::instance().setLimit(1024 * 1024);
  MemoryMonitor::instance().resetPeak();

  std::vector<std::thread> threads;
  for (int i = 0; i < 10; ++i) {
    threads.emplace_back([i]() {
      (void)i;
      MemoryMonitor::instance().allocate(100 * 1024);
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      MemoryMonitor::instance().deallocate(100 * 1024);
    });
  }

  for (auto& thread : threads) {
    thread.join();
  }

  MT_CHECK(MemoryMonitor::instance().getUsed() == 0, "%s", __func__);
}

// 10.2.2 KVCacheMemoryManager integration
static void KVCacheMemoryManagerIntegration_ConcurrentAccess() {
  KVCacheMemoryManager manager(100);

  std::vector<std::thread> threads;
  for (int i = 0; i < 10; ++i) {
    threads.emplace_back([&manager, i]() {
      std::vector<float> keyCache(100, 1.0f);
      std::vector<float> valueCache(100, 2.0f);

      std::string requestId = "req" + std::to_string(i);
      manager.insert(requestId, keyCache, valueCache);

      std::vector<float> retrievedKey;
      std::vector<float> retrievedValue;
      manager.get(requestId, retrievedKey, retrievedValue);
    });
  }

  for (auto& thread : threads) {
    thread.join();
  }
  // The seed checks nothing here; every thread's entry must be there (100 MiB holds
  // them all) with its content.
  for (int i = 0; i < 10; ++i) {
    std::vector<float> k, v;
    MT_CHECK(manager.get("req" + std::to_string(i), k, v), "%s", __func__);
    MT_CHECK(k.size() == 100, "%s", __func__);
    MT_CHECK(v.at(99) == 2.0f, "%s", __func__);
  }
}

// The seed's 10.2.1 with 16 threads, many rounds, and a limit that refuses: the
// reservation is exact, so the use never passes the limit (the seed's check-then-add
// could overshoot) and everything allocated is given back.
static void MemoryMonitorIntegration_SixteenThreadsExactLimit() {
  auto& mon = MemoryMonitor::instance();
  const size_t limit = 1024 * 1024, chunk = 100 * 1024;  // 10 chunks fit, 16 threads
  mon.setLimit(limit);
  mon.resetPeak();
  std::atomic<long> ok{0}, refused{0}, callbacks{0};
  std::atomic<bool> bad_callback{false};
  mon.setLimitCallback([&](size_t used, size_t lim) {
    callbacks.fetch_add(1);
    if (lim != limit || used + chunk <= limit) bad_callback = true;  // it really refused
  });
  const long rounds = iters(5000);
  std::vector<std::thread> threads;
  for (int t = 0; t < 16; ++t) {
    threads.emplace_back([&] {
      for (long r = 0; r < rounds; ++r) {
        try {
          mon.allocate(chunk);
        } catch (const std::runtime_error&) {
          refused.fetch_add(1);
          continue;
        }
        ok.fetch_add(1);
        std::this_thread::yield();
        mon.deallocate(chunk);
      }
    });
  }
  for (auto& th : threads) th.join();
  MT_CHECK(ok.load() + refused.load() == 16 * rounds, "%s", __func__);
  MT_CHECK(callbacks.load() == refused.load(), "%s", __func__);
  MT_CHECK(!bad_callback.load(), "%s", __func__);
  MT_CHECK(mon.getUsed() == 0, "%s", __func__);
  MT_CHECK(mon.getPeak() <= limit, "%s", __func__);
  MT_CHECK(cllm_monitor_check(mon.handle()) == CLLM_OK, "%s", __func__);
}

// Callbacks swapped on some threads while others are refused: tsan-clean, and every
// refusal calls exactly one installed callback.
static void MemoryMonitor_ConcurrentCallbackSwap() {
  auto& mon = MemoryMonitor::instance();
  mon.setLimit(1);
  std::atomic<long> calls{0}, refusals{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      while (!stop.load()) mon.setLimitCallback([&](size_t, size_t) { calls.fetch_add(1); });
    });
  }
  const long rounds = iters(3000);
  for (int t = 0; t < 12; ++t) {
    threads.emplace_back([&] {
      for (long r = 0; r < rounds; ++r) {
        try {
          mon.allocate(100);
        } catch (const LimitError&) {
          refusals.fetch_add(1);
        }
      }
    });
  }
  for (size_t i = 4; i < threads.size(); ++i) threads[i].join();
  stop = true;
  for (size_t i = 0; i < 4; ++i) threads[i].join();
  MT_CHECK(refusals.load() == 12 * rounds, "%s", __func__);
  MT_CHECK(calls.load() <= refusals.load(), "%s", __func__);
  MT_CHECK(calls.load() > 0, "%s", __func__);
}

// The seed's 10.2.2 with 16 threads and many operations on a cache small enough to
// evict constantly; every value read back must belong to its id.
static void KVCacheMemoryManagerIntegration_SixteenThreadsWithEviction() {
  KVCacheMemoryManager m(1);
  std::atomic<long> evictions{0}, hits{0}, bad{0};
  m.setEvictionCallback([&](const std::string&) { evictions.fetch_add(1); });
  const long rounds = iters(1000);
  std::vector<std::thread> threads;
  for (int t = 0; t < 16; ++t) {
    threads.emplace_back([&, t] {
      uint64_t seed = 1234 + static_cast<uint64_t>(t);
      std::vector<float> k, v, gk, gv;
      for (long r = 0; r < rounds; ++r) {
        uint64_t x = splitmix(&seed);
        int id = static_cast<int>(x % 64);
        std::string rid = "req" + std::to_string(id);
        switch ((x >> 8) % 4) {
          case 0:
          case 1:
            payload(id, 256 * (1 + id % 24), k, v);  // 1..24 blocks: ~40 fit at once
            if (!m.insert(rid, k, v)) bad.fetch_add(1);
            break;
          case 2:
            if (m.get(rid, gk, gv)) {
              hits.fetch_add(1);
              payload(id, 256 * (1 + id % 24), k, v);
              if (gk != k || gv != v) bad.fetch_add(1);
            }
            break;
          default:
            m.evict(rid);
        }
        if (m.getUsedMemory() > m.getTotalMemory()) bad.fetch_add(1);
      }
    });
  }
  // One more thread keeps replacing the eviction callback while the others evict.
  std::atomic<bool> stop{false};
  std::atomic<long> swapped_calls{0};
  std::thread swapper([&] {
    while (!stop.load()) {
      m.setEvictionCallback([&](const std::string&) { swapped_calls.fetch_add(1); });
      m.setEvictionCallback([&](const std::string&) { evictions.fetch_add(1); });
    }
  });
  for (auto& th : threads) th.join();
  stop = true;
  swapper.join();
  MT_CHECK(bad.load() == 0, "%s", __func__);
  MT_CHECK(hits.load() > 0, "%s", __func__);
  MT_CHECK(evictions.load() + swapped_calls.load() > 0, "%s", __func__);
  // Every LRU eviction reached one of the callbacks (evict() also calls them, and the
  // C cache does not count those).
  MT_CHECK(static_cast<uint64_t>(evictions.load() + swapped_calls.load()) >=
               m.cache().stats().copy_evictions,
           "%s", __func__);
  MT_CHECK(m.cache().stats().copy_evictions > 0, "%s", __func__);
  m.cache().check();
}

static void Heaps_AllocFreeAndMove() {
  cllm_heaps_config_t cfg = cllm_heaps_config_default();
  cfg.bytes_per_node = 64 * kMiB;
  Heaps h(cfg);
  void* p = h.allocAligned(1000, 64);
  if (p == nullptr)
    std::fprintf(stderr, "heap alloc: %s, mode %s\n", cllm_status_name(cllm_last_status()),
                 cllm_heap_mode_name(h.mode()));
  MT_CHECK(p != nullptr, "%s", __func__);
  MT_CHECK(aligned(p, 64), "%s", __func__);
  MT_CHECK(h.usableSize(p) >= 1000, "%s", __func__);
  MT_CHECK(h.allocAligned(10, 3) == nullptr, "%s", __func__);
  MT_CHECK(cllm_last_status() == CLLM_EINVAL, "%s", __func__);
  void* q = h.calloc(10, 10);
  MT_CHECK(q != nullptr, "%s", __func__);
  MT_CHECK(static_cast<unsigned char*>(q)[99] == 0, "%s", __func__);
  std::thread other([&] { h.free(q); });  // free from any thread
  other.join();
  h.free(p);
  h.threadFlush();
  Heaps h2 = std::move(h);
  MT_CHECK(h.get() == nullptr, "%s", __func__);
  MT_CHECK(h.alloc(1) == nullptr, "%s", __func__);
  void* r = h2.alloc(10);
  MT_CHECK(r != nullptr, "%s", __func__);
  h2.free(r);
  h2.check();
}

// KVTier: cache A spills a prompt's blocks into a fake store; cache B, with its own tier
// on the same store, fetches them back bit-exact. The tiers' threads spill and ping.
static void KVTier_SpillsAndFetchesBack() {
  cllm_kv_config_t c = cllm_kv_config_default();
  c.layers = 2;
  c.kv_heads = 1;
  c.head_dim = 4;
  c.dtype_bytes = 4;
  c.block_tokens = 4;
  c.capacity_blocks = 16;
  KVCache a(c), b(c);
  cllm_kv_store_t store;
  MT_CHECK(cllm_kv_store_fake_create(&store, nullptr) == CLLM_OK, "%s", __func__);
  cllm_kv_store_ops_t borrowed = *store.ops;  // B's tier uses A's store; A's closes it
  borrowed.close = [](void*) {};
  cllm_kv_tier_config_t tc = cllm_kv_tier_config_default();
  tc.model_id = "mem_mt";
  tc.model_id_len = 6;
  tc.store = store;
  KVTier ta(a, tc);
  tc.store = cllm_kv_store_t{&borrowed, store.user};
  KVTier tb(b, tc);  // destroyed before ta, which closes the store

  std::vector<cllm_kv_token_t> toks(13);
  for (size_t i = 0; i < toks.size(); ++i) toks[i] = static_cast<cllm_kv_token_t>(100 + i);
  const size_t block_bytes = 4 * 4 * sizeof(float);  // block_tokens x head_dim floats
  cllm_kv_seq_t s = a.openWithPrompt("a", toks.data(), toks.size());
  a.reserve(s, toks.size());
  std::vector<uint32_t> blocks_a = a.blockTable(s);
  MT_CHECK(blocks_a.size() == 4, "%s", __func__);
  for (size_t i = 0; i < blocks_a.size(); ++i) {
    for (uint32_t layer = 0; layer < 2; ++layer) {
      void *k = nullptr, *v = nullptr;
      a.blockLayer(blocks_a[i], layer, &k, &v);
      for (size_t j = 0; j < block_bytes; ++j) {
        static_cast<unsigned char*>(k)[j] = static_cast<unsigned char>(i * 31 + layer * 7 + j);
        static_cast<unsigned char*>(v)[j] = static_cast<unsigned char>(i * 17 + layer * 5 + j);
      }
    }
  }
  a.commit(s, toks.data(), toks.size());
  a.close(s);
  MT_CHECK(ta.flush(5000), "%s", __func__);

  size_t cached = 1;
  cllm_kv_seq_t sb = b.openWithPrompt("b", toks.data(), toks.size(), &cached);
  MT_CHECK(cached == 0, "%s", __func__);
  size_t avail = tb.probe(sb, toks.data(), toks.size());
  MT_CHECK(avail == 12, "%s: %zu", __func__, avail);  // whole blocks, one token left
  MT_CHECK(tb.fetch(sb, toks.data(), toks.size(), avail) == 12, "%s", __func__);
  MT_CHECK(b.length(sb) == 12, "%s", __func__);
  std::vector<uint32_t> blocks_b = b.blockTable(sb);
  MT_CHECK(blocks_b.size() == 3, "%s", __func__);
  for (size_t i = 0; i < blocks_b.size(); ++i) {
    for (uint32_t layer = 0; layer < 2; ++layer) {
      void *ka, *va, *kb, *vb;
      a.blockLayer(blocks_a[i], layer, &ka, &va);
      b.blockLayer(blocks_b[i], layer, &kb, &vb);
      MT_CHECK(std::memcmp(ka, kb, block_bytes) == 0, "%s: K block %zu", __func__, i);
      MT_CHECK(std::memcmp(va, vb, block_bytes) == 0, "%s: V block %zu", __func__, i);
    }
  }
  b.close(sb);
  a.check();
  b.check();
}

// Between scenarios: the global monitor as a fresh process has it.
static void expect_global_monitor_idle(const char* after) {
  auto& mon = MemoryMonitor::instance();
  mon.setLimitCallback(nullptr);  // the scenario's callback captured its locals
  mon.setLimit(0);
  MT_CHECK(mon.getUsed() == 0, "after %s", after);
  MT_CHECK(cllm_monitor_check(mon.handle()) == CLLM_OK, "after %s", after);
}

int main() {
  struct Scenario {
    const char* name;
    void (*fn)();
  };
  const Scenario scenarios[] = {
      {"MemoryMonitorIntegration.MultipleThreads", MemoryMonitorIntegration_MultipleThreads},
      {"KVCacheMemoryManagerIntegration.ConcurrentAccess",
       KVCacheMemoryManagerIntegration_ConcurrentAccess},
      {"MemoryMonitorIntegration.SixteenThreadsExactLimit",
       MemoryMonitorIntegration_SixteenThreadsExactLimit},
      {"MemoryMonitor.ConcurrentCallbackSwap", MemoryMonitor_ConcurrentCallbackSwap},
      {"KVCacheMemoryManagerIntegration.SixteenThreadsWithEviction",
       KVCacheMemoryManagerIntegration_SixteenThreadsWithEviction},
      {"Heaps.AllocFreeAndMove", Heaps_AllocFreeAndMove},
      {"KVTier.SpillsAndFetchesBack", KVTier_SpillsAndFetchesBack},
  };
  for (const Scenario& s : scenarios) {
    s.fn();
    expect_global_monitor_idle(s.name);
    std::printf("mem_mt: %s passed\n", s.name);
  }
  return 0;
}
