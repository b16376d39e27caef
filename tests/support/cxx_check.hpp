/* A tiny gtest-shaped test registry for the C++ test programs (tests/<name>_test.cc).
 *
 *   TEST(MemoryMonitorTest, SetLimit) {
 *     MemoryMonitor::instance().setLimit(1024);
 *     EXPECT_EQ(MemoryMonitor::instance().getLimit(), 1024);
 *   }
 *
 * The macros have gtest's names and meaning, so the seed's tests (seed section 10)
 * read as written: TEST, EXPECT_/ASSERT_ EQ NE LT LE GT GE TRUE FALSE FLOAT_EQ,
 * EXPECT_THROW, EXPECT_NO_THROW, EXPECT_ANY_THROW. EXPECT_* records a failure and
 * goes on; ASSERT_* records it and returns from the current function. Checks are
 * thread-safe (a worker thread may EXPECT).
 *
 * One process per test: run without arguments, the program re-executes itself
 * (/proc/self/exe --run <name>) once per registered test, so process-wide state
 * (the global monitor, MemoryMonitor::instance()) starts fresh for every test, as
 * each seed test assumes. A test fails if it records a failure, throws, crashes,
 * exits, or runs past CXX_TEST_TIMEOUT seconds (default 120). The exit status is
 * non-zero if any test failed.
 *
 *   prog                 run every test, each in its own process
 *   prog <substring>     only the tests whose "Suite.Name" contains it
 *   prog --list          list the tests
 *   prog --run <name>    run one test in this process (what the parent does)
 *
 * Integer comparisons are value-correct across signedness (EXPECT_EQ(v.size(), 100)
 * compiles without -Wsign-compare noise and -1 never equals SIZE_MAX).
 */
#ifndef CLLM_TESTS_CXX_CHECK_HPP
#define CLLM_TESTS_CXX_CHECK_HPP

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace cxx_check {

struct TestCase {
  std::string name;
  void (*fn)();
};

inline std::vector<TestCase>& registry() {
  static std::vector<TestCase> r;
  return r;
}

struct Registrar {
  Registrar(const char* name, void (*fn)()) { registry().push_back({name, fn}); }
};

inline std::atomic<int>& failures() {
  static std::atomic<int> n{0};
  return n;
}

inline std::mutex& print_mutex() {
  static std::mutex m;
  return m;
}

inline void fail(const char* file, int line, const std::string& msg) {
  failures().fetch_add(1);
  std::lock_guard<std::mutex> g(print_mutex());
  std::fprintf(stderr, "%s:%d: FAILED: %s\n", file, line, msg.c_str());
  std::fflush(stderr);
}

/* ---- value printing and comparisons ----------------------------------------- */

template <class T, class = void>
struct Printable : std::false_type {};
template <class T>
struct Printable<T, std::void_t<decltype(std::declval<std::ostream&>() << std::declval<const T&>())>>
    : std::true_type {};

template <class T>
std::string show(const T& v) {
  if constexpr (std::is_same_v<T, std::nullptr_t>) {
    return "nullptr";
  } else if constexpr (Printable<T>::value) {
    std::ostringstream os;
    if constexpr (std::is_pointer_v<T>)
      os << static_cast<const void*>(v);
    else
      os << v;
    return os.str();
  } else {
    return "<unprintable>";
  }
}

// Integer comparisons that are correct across signedness (C++20's std::cmp_*).
template <class A, class B>
constexpr bool int_less(A a, B b) {
  if constexpr (std::is_signed_v<A> == std::is_signed_v<B>)
    return a < b;
  else if constexpr (std::is_signed_v<A>)
    return a < 0 ? true : static_cast<std::make_unsigned_t<A>>(a) < b;
  else
    return b < 0 ? false : a < static_cast<std::make_unsigned_t<B>>(b);
}

template <class T>
constexpr bool is_int_v = std::is_integral_v<T> && !std::is_same_v<T, bool>;

template <class A, class B>
bool eq(const A& a, const B& b) {
  if constexpr (is_int_v<A> && is_int_v<B>)
    return !int_less(a, b) && !int_less(b, a);
  else
    return a == b;
}
template <class A, class B>
bool lt(const A& a, const B& b) {
  if constexpr (is_int_v<A> && is_int_v<B>)
    return int_less(a, b);
  else
    return a < b;
}

inline bool float_eq(float a, float b) {
  // gtest's EXPECT_FLOAT_EQ: within 4 ULPs.
  if (std::isnan(a) || std::isnan(b)) return false;
  if (a == b) return true;
  int32_t ia, ib;
  std::memcpy(&ia, &a, 4);
  std::memcpy(&ib, &b, 4);
  if ((ia < 0) != (ib < 0)) return false;
  int64_t d = static_cast<int64_t>(ia) - static_cast<int64_t>(ib);
  return d <= 4 && d >= -4;
}

/* ---- the driver --------------------------------------------------------------- */

inline int run_one(const std::string& name) {
  for (const TestCase& t : registry()) {
    if (t.name != name) continue;
    try {
      t.fn();
    } catch (const std::exception& e) {
      fail("<test>", 0, "uncaught exception: " + std::string(e.what()));
    } catch (...) {
      fail("<test>", 0, "uncaught non-standard exception");
    }
    return failures().load() == 0 ? 0 : 1;
  }
  std::fprintf(stderr, "no test named %s\n", name.c_str());
  return 2;
}

inline int run_all(const char* argv0, const char* filter) {
  unsigned timeout = 120;
  if (const char* e = std::getenv("CXX_TEST_TIMEOUT")) {
    long v = std::atol(e);
    if (v > 0) timeout = static_cast<unsigned>(v);
  }
  int ran = 0;
  std::vector<std::string> failed;
  for (const TestCase& t : registry()) {
    if (filter != nullptr && t.name.find(filter) == std::string::npos) continue;
    ++ran;
    std::fflush(stdout);
    std::fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
      std::perror("fork");
      return 1;
    }
    if (pid == 0) {
      alarm(timeout);  // survives exec: a hung test dies with SIGALRM
      execl("/proc/self/exe", argv0, "--run", t.name.c_str(), static_cast<char*>(nullptr));
      std::perror("execl /proc/self/exe");
      _exit(127);
    }
    int st = 0;
    while (waitpid(pid, &st, 0) < 0) {
    }
    bool ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
    if (ok) {
      std::printf("[ OK ] %s\n", t.name.c_str());
    } else {
      if (WIFSIGNALED(st))
        std::printf("[FAIL] %s (signal %d%s)\n", t.name.c_str(), WTERMSIG(st),
                    WTERMSIG(st) == SIGALRM ? ": timeout" : "");
      else
        std::printf("[FAIL] %s (exit %d)\n", t.name.c_str(), WEXITSTATUS(st));
      failed.push_back(t.name);
    }
  }
  std::printf("%d tests, %zu failed\n", ran, failed.size());
  for (const std::string& f : failed) std::printf("  failed: %s\n", f.c_str());
  if (ran == 0) {
    std::printf("no test matched\n");
    return 1;
  }
  return failed.empty() ? 0 : 1;
}

inline int main(int argc, char** argv) {
  if (argc >= 2 && std::strcmp(argv[1], "--list") == 0) {
    for (const TestCase& t : registry()) std::printf("%s\n", t.name.c_str());
    return 0;
  }
  if (argc >= 3 && std::strcmp(argv[1], "--run") == 0) return run_one(argv[2]);
  return run_all(argv[0], argc >= 2 ? argv[1] : nullptr);
}

}  // namespace cxx_check

#define CXX_CHECK_CAT2_(a, b) a##b
#define CXX_CHECK_CAT_(a, b) CXX_CHECK_CAT2_(a, b)

#define TEST(suite, name)                                                              \
  static void suite##_##name##_test_fn();                                              \
  static ::cxx_check::Registrar suite##_##name##_test_reg(#suite "." #name,            \
                                                          &suite##_##name##_test_fn); \
  static void suite##_##name##_test_fn()

// The program's main: every test file ends with CXX_CHECK_MAIN().
#define CXX_CHECK_MAIN() \
  int main(int argc, char** argv) { return ::cxx_check::main(argc, argv); }

#define CXX_CHECK_BINOP_(pred, opname, a, b, on_fail)                                     \
  do {                                                                                    \
    const auto& cxx_a_ = (a);                                                             \
    const auto& cxx_b_ = (b);                                                             \
    if (!(pred)) {                                                                        \
      ::cxx_check::fail(__FILE__, __LINE__,                                               \
                        std::string(#a " " opname " " #b ": ") +                          \
                            ::cxx_check::show(cxx_a_) + " vs " + ::cxx_check::show(cxx_b_)); \
      on_fail;                                                                            \
    }                                                                                     \
  } while (0)

#define CXX_CHECK_NOTHING_
#define EXPECT_EQ(a, b) CXX_CHECK_BINOP_(::cxx_check::eq(cxx_a_, cxx_b_), "==", a, b, CXX_CHECK_NOTHING_)
#define EXPECT_NE(a, b) CXX_CHECK_BINOP_(!::cxx_check::eq(cxx_a_, cxx_b_), "!=", a, b, CXX_CHECK_NOTHING_)
#define EXPECT_LT(a, b) CXX_CHECK_BINOP_(::cxx_check::lt(cxx_a_, cxx_b_), "<", a, b, CXX_CHECK_NOTHING_)
#define EXPECT_LE(a, b) CXX_CHECK_BINOP_(!::cxx_check::lt(cxx_b_, cxx_a_), "<=", a, b, CXX_CHECK_NOTHING_)
#define EXPECT_GT(a, b) CXX_CHECK_BINOP_(::cxx_check::lt(cxx_b_, cxx_a_), ">", a, b, CXX_CHECK_NOTHING_)
#define EXPECT_GE(a, b) CXX_CHECK_BINOP_(!::cxx_check::lt(cxx_a_, cxx_b_), ">=", a, b, CXX_CHECK_NOTHING_)
#define EXPECT_FLOAT_EQ(a, b) \
  CXX_CHECK_BINOP_(::cxx_check::float_eq(cxx_a_, cxx_b_), "~=", a, b, CXX_CHECK_NOTHING_)
#define ASSERT_EQ(a, b) CXX_CHECK_BINOP_(::cxx_check::eq(cxx_a_, cxx_b_), "==", a, b, return)
#define ASSERT_NE(a, b) CXX_CHECK_BINOP_(!::cxx_check::eq(cxx_a_, cxx_b_), "!=", a, b, return)
#define ASSERT_LT(a, b) CXX_CHECK_BINOP_(::cxx_check::lt(cxx_a_, cxx_b_), "<", a, b, return)
#define ASSERT_LE(a, b) CXX_CHECK_BINOP_(!::cxx_check::lt(cxx_b_, cxx_a_), "<=", a, b, return)
#define ASSERT_GT(a, b) CXX_CHECK_BINOP_(::cxx_check::lt(cxx_b_, cxx_a_), ">", a, b, return)
#define ASSERT_GE(a, b) CXX_CHECK_BINOP_(!::cxx_check::lt(cxx_a_, cxx_b_), ">=", a, b, return)

#define CXX_CHECK_BOOL_(cond, want, on_fail)                                        \
  do {                                                                              \
    if (static_cast<bool>(cond) != (want)) {                                        \
      ::cxx_check::fail(__FILE__, __LINE__, std::string(#cond " is not ") + #want); \
      on_fail;                                                                      \
    }                                                                               \
  } while (0)
#define EXPECT_TRUE(c) CXX_CHECK_BOOL_(c, true, CXX_CHECK_NOTHING_)
#define EXPECT_FALSE(c) CXX_CHECK_BOOL_(c, false, CXX_CHECK_NOTHING_)
#define ASSERT_TRUE(c) CXX_CHECK_BOOL_(c, true, return)
#define ASSERT_FALSE(c) CXX_CHECK_BOOL_(c, false, return)

// EXPECT_THROW(stmt, type): stmt must throw something catchable as `type`.
#define EXPECT_THROW(stmt, type)                                                           \
  do {                                                                                     \
    bool cxx_caught_ = false;                                                              \
    try {                                                                                  \
      stmt;                                                                                \
    } catch (const type&) {                                                                \
      cxx_caught_ = true;                                                                  \
    } catch (...) {                                                                        \
      ::cxx_check::fail(__FILE__, __LINE__, "threw something other than " #type);          \
      cxx_caught_ = true;                                                                  \
    }                                                                                      \
    if (!cxx_caught_) ::cxx_check::fail(__FILE__, __LINE__, "did not throw " #type ": " #stmt); \
  } while (0)

#define EXPECT_ANY_THROW(stmt)                                                             \
  do {                                                                                     \
    bool cxx_caught_ = false;                                                              \
    try {                                                                                  \
      stmt;                                                                                \
    } catch (...) {                                                                        \
      cxx_caught_ = true;                                                                  \
    }                                                                                      \
    if (!cxx_caught_) ::cxx_check::fail(__FILE__, __LINE__, "did not throw: " #stmt);     \
  } while (0)

#define EXPECT_NO_THROW(stmt)                                                          \
  do {                                                                                 \
    try {                                                                              \
      stmt;                                                                            \
    } catch (const std::exception& e) {                                                \
      ::cxx_check::fail(__FILE__, __LINE__, std::string("threw: ") + e.what());        \
    } catch (...) {                                                                    \
      ::cxx_check::fail(__FILE__, __LINE__, "threw a non-standard exception: " #stmt); \
    }                                                                                  \
  } while (0)

#endif /* CLLM_TESTS_CXX_CHECK_HPP */
