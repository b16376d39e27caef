/* Helpers shared by the C++ tests (tests/mem_test.cc, mem_handles_test.cc, mem_mt.cc). */
#ifndef CLLM_TESTS_MEM_TEST_UTIL_HPP
#define CLLM_TESTS_MEM_TEST_UTIL_HPP

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <vector>

namespace mem_test {

inline long iters(long dflt) {
  const char* e = std::getenv("ITER");
  long v = e != nullptr ? std::atol(e) : 0;
  return v > 0 ? v : dflt;
}

inline uint64_t splitmix(uint64_t* s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// A deterministic payload for request `id`: keys[i] = id*1000 + i, values negated.
inline void payload(int id, size_t n, std::vector<float>& k, std::vector<float>& v) {
  k.resize(n);
  v.resize(n);
  for (size_t i = 0; i < n; ++i) {
    k[i] = static_cast<float>(id * 1000 + static_cast<int>(i % 1000));
    v[i] = -k[i];
  }
}

// The tolerance of gtest's EXPECT_FLOAT_EQ (4 ULPs) around `expected`, for
// cr_expect_float_eq.
inline float ulps4(float expected) {
  return 4 * std::numeric_limits<float>::epsilon() * std::max(1.0f, std::fabs(expected));
}

inline bool aligned(const void* p, size_t a) { return reinterpret_cast<uintptr_t>(p) % a == 0; }

constexpr size_t kKiB = 1024;
constexpr size_t kMiB = 1024 * 1024;

}  // namespace mem_test

#endif /* CLLM_TESTS_MEM_TEST_UTIL_HPP */
