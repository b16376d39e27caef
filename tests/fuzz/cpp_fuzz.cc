// libFuzzer target: the seed's C++ layer (include/cllm/seed.hpp) as an op sequence.
// KVCacheMemoryManager insert/get/evict against a model of the entries (the eviction
// callback reports what LRU eviction dropped, so the model is exact), with a check
// that used <= total and that what get returns is what was inserted;
// ModelExecutorMemoryManager temp and weights buffers allocated and freed in any
// order, against a model of the bytes in use and the MB limit; FloatArray and a
// private Monitor with a limit, whose refusals must throw and change nothing. Any
// C++ exception the seed's contract does not document is a crash.
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include <cllm/seed.hpp>

extern "C" {
#include "fuzz_input.h"
}

namespace {

struct Entry {
  size_t nk, nv;
  float seed;
};

void kv_ops(fuzz_in_t* in) {
  cllm::KVCacheMemoryManager kv(1);  // 1 MiB budget
  std::map<std::string, Entry> model;
  kv.setEvictionCallback([&](const std::string& id) {
    FUZZ_CHECK(model.erase(id) == 1, "callback for an id the model does not hold: %s", id.c_str());
  });
  for (int steps = 0; steps < 64 && !fuzz_done(in); steps++) {
    std::string id = "r" + std::to_string(fuzz_u8(in) % 12);
    switch (fuzz_u8(in) % 3) {
      case 0: {
        size_t nk = (size_t)fuzz_u8(in) * (1 + fuzz_u8(in) % 700), nv = (size_t)fuzz_u8(in) * 37;
        float seed = (float)fuzz_u8(in);
        std::vector<float> k(nk), v(nv);
        for (size_t i = 0; i < nk; i++) k[i] = seed + (float)i;
        for (size_t i = 0; i < nv; i++) v[i] = -seed - (float)i;
        bool ok = kv.insert(id, k, v);
        if (ok) model[id] = Entry{nk, nv, seed};
        FUZZ_CHECK(kv.getUsedMemory() <= kv.getTotalMemory(), "used above total");
        break;
      }
      case 1: {
        std::vector<float> k, v;
        bool ok = kv.get(id, k, v);
        auto it = model.find(id);
        FUZZ_CHECK(ok == (it != model.end()), "get(%s) = %d, model %d", id.c_str(), ok, it != model.end());
        if (ok) {
          FUZZ_CHECK(k.size() == it->second.nk && v.size() == it->second.nv, "sizes");
          for (size_t i = 0; i < k.size(); i += 7) FUZZ_CHECK(k[i] == it->second.seed + (float)i, "key");
          for (size_t i = 0; i < v.size(); i += 7) FUZZ_CHECK(v[i] == -it->second.seed - (float)i, "value");
        }
        break;
      }
      case 2:
        kv.evict(id);  // the callback erases it from the model
        FUZZ_CHECK(model.count(id) == 0, "evict left %s in the model", id.c_str());
        break;
    }
    FUZZ_CHECK(cllm_kv_check(kv.cache().get()) == CLLM_OK, "kv check");
  }
}

void executor_ops(fuzz_in_t* in, cllm_monitor_t* mon) {
  cllm::ModelExecutorMemoryManager ex(4, mon);  // 4 MiB
  std::vector<std::pair<void*, size_t>> temp, weights;
  size_t temp_model = 0, weights_model = 0;
  for (int steps = 0; steps < 64 && !fuzz_done(in); steps++) {
    uint8_t op = fuzz_u8(in) % 6;
    size_t sz = fuzz_size(in, 1 << 20);
    try {
      switch (op) {
        case 0: {
          void* p = ex.allocateTempBuffer(sz);
          FUZZ_CHECK(p != nullptr, "temp buffer NULL without a throw");
          if (sz > 0) memset(p, 0x3C, sz);
          temp.push_back({p, sz});
          temp_model += sz;
          break;
        }
        case 1:
          if (!temp.empty()) {
            size_t k = fuzz_u8(in) % temp.size();
            ex.deallocateTempBuffer(temp[k].first);
            temp_model -= temp[k].second;
            temp.erase(temp.begin() + (long)k);
          }
          break;
        case 2: {
          void* p = ex.allocateWeightsCache(sz);
          FUZZ_CHECK(p != nullptr && ((uintptr_t)p & 63) == 0, "weights buffer NULL or misaligned");
          weights.push_back({p, sz});
          weights_model += sz;
          break;
        }
        case 3:
          if (!weights.empty()) {
            size_t k = fuzz_u8(in) % weights.size();
            ex.deallocateWeightsCache(weights[k].first);
            weights_model -= weights[k].second;
            weights.erase(weights.begin() + (long)k);
          }
          break;
        case 4:
          ex.clearAll();
          temp.clear(), weights.clear();
          temp_model = weights_model = 0;
          break;
        case 5: {
          cllm::FloatArray a(sz % 100000);
          FUZZ_CHECK(((uintptr_t)a.data() & 63) == 0 && a.size() == sz % 100000, "FloatArray");
          cllm::FloatArray b(std::move(a));
          FUZZ_CHECK(a.data() == nullptr && a.size() == 0, "moved-from FloatArray not empty");
          break;
        }
      }
    } catch (const std::runtime_error&) {
      // the seed's contract: past the limit (or out of memory) it throws; nothing changed
    } catch (const std::bad_alloc&) {
    }
    FUZZ_CHECK(ex.getTempMemoryUsed() == temp_model, "temp used %zu, model %zu", ex.getTempMemoryUsed(), temp_model);
    FUZZ_CHECK(ex.getWeightsMemoryUsed() == weights_model, "weights used");
    FUZZ_CHECK(ex.getTotalMemoryUsed() <= ex.getMaxMemory() || ex.getTotalMemoryUsed() == temp_model + weights_model,
               "total used");
    for (auto& t : temp)
      if (t.second > 0) FUZZ_CHECK(((unsigned char*)t.first)[t.second - 1] == 0x3C, "a live temp buffer changed");
  }
}

void monitor_ops(fuzz_in_t* in) {
  cllm::Monitor m;
  m.setLimit(1 << 20);
  size_t held = 0;
  for (int steps = 0; steps < 32 && !fuzz_done(in); steps++) {
    size_t sz = fuzz_size(in, 1 << 19);
    if (fuzz_u8(in) & 1) {
      try {
        m.reserve(CLLM_CAT_KV, sz);
        held += sz;
      } catch (const cllm::Error& e) {
        FUZZ_CHECK(e.status() == CLLM_ELIMIT, "reserve threw %s", cllm_status_name(e.status()));
      }
    } else {
      try {
        m.release(CLLM_CAT_KV, sz);
        FUZZ_CHECK(sz <= held, "over-release accepted");
        held -= sz;
      } catch (const cllm::Error& e) {
        FUZZ_CHECK(e.status() == CLLM_EINVAL && sz > held, "release threw %s", cllm_status_name(e.status()));
      }
    }
    FUZZ_CHECK(m.used(CLLM_CAT_KV) == held, "monitor used");
  }
  if (held) m.release(CLLM_CAT_KV, held);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz_in_t in = {data, size};
  cllm_set_log_fn(cllm_log_discard, nullptr);
  cllm_monitor_t* mon = nullptr;
  FUZZ_CHECK(cllm_monitor_create(nullptr, &mon) == CLLM_OK, "monitor");
  while (!fuzz_done(&in)) {
    switch (fuzz_u8(&in) % 3) {
      case 0: kv_ops(&in); break;
      case 1: executor_ops(&in, mon); break;
      case 2: monitor_ops(&in); break;
    }
  }
  FUZZ_CHECK(cllm_monitor_used(mon, CLLM_CAT_COUNT) == 0, "executor left memory charged");
  cllm_monitor_destroy(mon);
  return 0;
}
