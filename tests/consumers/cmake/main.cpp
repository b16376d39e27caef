// The C++ consumer (tests/consumers/run.sh builds it with CMake against both
// imported targets): <cllm/mem.hpp> only, linked with cllm-mem and nothing else.
//   consumer_cpp [ALLOCATOR]   (mimalloc or libc: where the process's malloc is from)
#include <cllm/mem.hpp>

#include <dlfcn.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

static int failures = 0;
#define CHECK(cond)                                                              \
  do {                                                                           \
    if (!(cond)) {                                                               \
      std::fprintf(stderr, "consumer_cpp: %s:%d: failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                                \
    }                                                                            \
  } while (0)

static std::string mallocOwner() {
  Dl_info info;
  void* sym = dlsym(RTLD_DEFAULT, "malloc");
  if (sym == nullptr || dladdr(sym, &info) == 0 || info.dli_fname == nullptr) return "unknown";
  std::string f = info.dli_fname;
  if (f.find("mimalloc") != std::string::npos) return "mimalloc";
  if (f.find("libc.so") != std::string::npos) return "libc";
  return f;
}

static void run() {
  // A private monitor with a limit: a reservation past it throws LimitError.
  cllm_monitor_config_t mc = cllm_monitor_config_default();
  mc.limit_bytes = 256u << 20;
  cllm::Monitor mon(mc);
  bool refused = false;
  try {
    mon.reserve(CLLM_CAT_HEAP, 300u << 20);
  } catch (const cllm::LimitError&) {
    refused = true;
  }
  CHECK(refused);
  CHECK(mon.used() == 0);

  // Heaps: one allocation, charged, freed.
  cllm_heaps_config_t hc = cllm_heaps_config_default();
  hc.bytes_per_node = 64u << 20;
  hc.max_nodes = 1;
  hc.monitor = mon.get();
  cllm::Heaps heaps(hc);
  void* p = heaps.allocAligned(4000, 64);
  CHECK(p != nullptr);
  CHECK(mon.used(CLLM_CAT_HEAP) > 0);
  heaps.free(p);

  // An arena step.
  cllm_arena_config_t ac = cllm_arena_config_default();
  ac.monitor = mon.get();
  cllm::Arena arena(ac);
  float* t = arena.allocArray<float>(4096);
  CHECK(t != nullptr);
  if (t != nullptr) t[4095] = 1.0f;
  arena.reset();

  // Weights: load a file range, seal, compare.
  char path[] = "/tmp/cllm-consumer-cpp-XXXXXX";
  int fd = mkstemp(path);
  CHECK(fd >= 0);
  std::vector<unsigned char> data(8192);
  for (size_t i = 0; i < data.size(); i++) data[i] = static_cast<unsigned char>(i * 13);
  CHECK(fd >= 0 && write(fd, data.data(), data.size()) == static_cast<ssize_t>(data.size()));
  if (fd >= 0) close(fd);
  cllm_weights_config_t wc = cllm_weights_config_default();
  wc.capacity_bytes = 1u << 20;
  wc.monitor = mon.get();
  wc.reader_threads = 1;
  cllm::WeightsHeap weights(wc);
  void* loaded = weights.load(path, 0, data.size());
  weights.seal();
  CHECK(std::memcmp(loaded, data.data(), data.size()) == 0);
  unlink(path);

  // KV: the second sequence with the same prompt shares the first one's full blocks.
  cllm_kv_config_t kc = cllm_kv_config_default();
  kc.layers = 2;
  kc.kv_heads = 2;
  kc.head_dim = 16;
  kc.dtype_bytes = 2;  // required: no default
  kc.block_tokens = 16;
  kc.capacity_blocks = 64;
  kc.monitor = mon.get();
  cllm::KVCache kv(kc);
  std::vector<cllm_kv_token_t> prompt(40);
  for (size_t i = 0; i < prompt.size(); i++) prompt[i] = static_cast<cllm_kv_token_t>(100 + i);
  size_t cached = 99;
  cllm_kv_seq_t s1 = kv.openWithPrompt("req-1", prompt.data(), prompt.size(), &cached);
  CHECK(cached == 0);
  kv.reserve(s1, prompt.size());
  kv.commit(s1, prompt.data(), prompt.size());
  kv.close(s1);
  cllm_kv_seq_t s2 = kv.openWithPrompt("req-2", prompt.data(), prompt.size(), &cached);
  CHECK(cached == 32);
  kv.close(s2);

  // Stats as JSON.
  cllm_stats_sources_t src = cllm_stats_sources_default();
  src.monitor = mon.get();
  cllm_stats_kv_source_t kvs = {"kv", kv.get()};
  src.kv_caches = &kvs;
  src.n_kv_caches = 1;
  std::string json = cllm::statsJson(src);
  CHECK(!json.empty() && json[0] == '{' && json.find("\"kv\"") != std::string::npos);
}

int main(int argc, char** argv) {
  try {
    run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "consumer_cpp: exception: %s\n", e.what());
    return 1;
  }
  std::string owner = mallocOwner();
  if (argc > 1 && owner != argv[1]) {
    std::fprintf(stderr, "consumer_cpp: malloc comes from %s, expected %s\n", owner.c_str(), argv[1]);
    ++failures;
  }
  if (failures != 0) return 1;
  std::printf("consumer_cpp: ok (cllm-mem %s, malloc from %s)\n", cllm_version_string(), owner.c_str());
  return 0;
}
