/* cllm-mem for C++, part of <cllm/mem.hpp> (include that): errors, the handling of
 * exceptions thrown by callbacks, Monitor and Reclaimer. The rules (errors, callbacks,
 * threads) are in mem.hpp's header comment.
 */
#ifndef CLLM_MEM_CORE_HPP
#define CLLM_MEM_CORE_HPP

#if !defined(__cplusplus) || __cplusplus < 201703L
#error "cllm/mem.hpp needs C++17"
#endif

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>

#include <cllm/monitor.h>
#include <cllm/status.h>
#include <cllm/version.h>

namespace cllm {

/* ---- errors --------------------------------------------------------------------- */

// A failed C call: what() names the operation and the status; status() is the code.
class Error : public std::runtime_error {
 public:
  Error(cllm_status_t status, const std::string& context)
      : std::runtime_error(context + ": " + cllm_status_str(status) + " (" +
                           cllm_status_name(status) + ")"),
        status_(status) {}
  cllm_status_t status() const noexcept { return status_; }

 private:
  cllm_status_t status_;
};

// CLLM_ELIMIT: a memory budget refused (the seed's "Memory limit exceeded").
class LimitError : public Error {
 public:
  using Error::Error;
};

// Throw Error (LimitError for CLLM_ELIMIT) for status s; context names the call.
[[noreturn]] inline void throwStatus(cllm_status_t s, const char* context) {
  if (s == CLLM_ELIMIT) throw LimitError(s, context);
  throw Error(s, context);
}
// Throw unless s is CLLM_OK.
inline void checkStatus(cllm_status_t s, const char* context) {
  if (s != CLLM_OK) throwStatus(s, context);
}

namespace detail {

/* ---- exceptions thrown by callbacks (see "Callbacks and exceptions" above) ---------- */

struct CallbackExceptions {
  int depth = 0;             // capture scopes open on this thread
  std::exception_ptr first;  // the innermost scope's pending exception
};

inline CallbackExceptions& callbackExceptions() noexcept {
  static thread_local CallbackExceptions s;
  return s;
}

inline std::atomic<unsigned long long>& droppedCounter() noexcept {
  static std::atomic<unsigned long long> n{0};
  return n;
}

// Called from a trampoline's catch (...) block.
inline void captureCurrentException() noexcept {
  CallbackExceptions& s = callbackExceptions();
  if (s.depth > 0 && !s.first)
    s.first = std::current_exception();
  else
    droppedCounter().fetch_add(1, std::memory_order_relaxed);
}

// Opened by a throwing method around a C call that may run callbacks; the method then
// calls rethrowPending() after the C call. Nested scopes (a callback that calls another
// method) keep their own pending exception.
class CaptureScope {
 public:
  CaptureScope() noexcept : s_(callbackExceptions()), outer_(std::move(s_.first)) {
    s_.first = nullptr;
    ++s_.depth;
  }
  ~CaptureScope() {
    --s_.depth;
    if (s_.first) droppedCounter().fetch_add(1, std::memory_order_relaxed);
    s_.first = std::move(outer_);
  }
  CaptureScope(const CaptureScope&) = delete;
  CaptureScope& operator=(const CaptureScope&) = delete;

  bool pending() const noexcept { return static_cast<bool>(s_.first); }
  void rethrowPending() {
    if (s_.first) {
      std::exception_ptr e = std::move(s_.first);
      s_.first = nullptr;
      std::rethrow_exception(e);
    }
  }

 private:
  CallbackExceptions& s_;
  std::exception_ptr outer_;
};

// The owner of one C object: a unique_ptr whose deleter is the C destroy function.
// The classes over C objects hold one and get their moves from it (move-only; a
// moved-from object holds nullptr, so its C calls fail with CLLM_EINVAL). A class whose
// C object points into another member (a callback slot) declares the handle last, so
// the C object is destroyed first.
template <class T, void (*Destroy)(T*)>
struct Destroyer {
  void operator()(T* p) const noexcept { Destroy(p); }
};
template <class T, void (*Destroy)(T*)>
using Handle = std::unique_ptr<T, Destroyer<T, Destroy>>;

// A std::function that C code calls through a trampoline: swapped under `mu`, copied
// out (a shared_ptr copy: never throws) before the call, which runs unlocked.
template <class Fn>
struct CallbackSlot {
  std::mutex mu;
  std::shared_ptr<const Fn> fn;

  std::shared_ptr<const Fn> load() {
    std::lock_guard<std::mutex> g(mu);
    return fn;
  }
  // Install f (empty: none); returns whether one is installed now.
  bool store(Fn f) {
    std::shared_ptr<const Fn> next;
    if (f) next = std::make_shared<const Fn>(std::move(f));
    bool on = static_cast<bool>(next);
    {
      std::lock_guard<std::mutex> g(mu);
      fn.swap(next);
    }
    return on;  // the old function (now in `next`) is destroyed here, unlocked
  }
};

using LimitFn = std::function<void(cllm_category_t cat, size_t used, size_t requested,
                                   size_t limit)>;
using LimitSlot = CallbackSlot<LimitFn>;

inline void limitTrampoline(void* user, cllm_category_t cat, size_t used, size_t requested,
                            size_t limit) noexcept {
  try {
    std::shared_ptr<const LimitFn> fn = static_cast<LimitSlot*>(user)->load();
    if (fn) (*fn)(cat, used, requested, limit);
  } catch (...) {
    captureCurrentException();
  }
}

// The operations Monitor and MemoryMonitor share.
inline void monitorSetLimitCallback(cllm_monitor_t* m, LimitSlot& slot, LimitFn f) {
  std::lock_guard<std::mutex> g(slot.mu);  // C pointer and slot change together
  std::shared_ptr<const LimitFn> next;
  if (f) next = std::make_shared<const LimitFn>(std::move(f));
  cllm_status_t rc =
      cllm_monitor_set_limit_callback(m, next ? &limitTrampoline : nullptr, &slot);
  if (rc != CLLM_OK) throwStatus(rc, "cllm_monitor_set_limit_callback");
  slot.fn.swap(next);
}

inline void monitorReserve(cllm_monitor_t* m, cllm_category_t cat, size_t bytes,
                           const char* context) {
  CaptureScope scope;
  cllm_status_t rc = cllm_monitor_reserve(m, cat, bytes);
  if (rc == CLLM_OK && scope.pending()) {
    CLLM_DISCARD(cllm_monitor_release(m, cat, bytes));  // a reclaimer-path callback threw: undo
  }
  scope.rethrowPending();
  checkStatus(rc, context);
}

}  // namespace detail

// Callback exceptions that could not be rethrown to a C++ caller (see above).
inline unsigned long long droppedCallbackExceptions() noexcept {
  return detail::droppedCounter().load(std::memory_order_relaxed);
}

/* ---- Monitor: a private cllm_monitor_t ------------------------------------------- */

// Owns a private monitor (cllm_monitor_create). Pass get() to components' configs.
class Monitor {
 public:
  // (category, bytes in use, bytes requested, the limit that refused)
  using LimitCallback = detail::LimitFn;

  // A monitor with no limits. Throws Error (CLLM_ENOMEM).
  Monitor() : Monitor(cllm_monitor_config_default()) {}
  // From a config (limits; a C limit_fn in it stays until setLimitCallback).
  // Throws Error (CLLM_EINVAL for a bad config, CLLM_ENOMEM).
  explicit Monitor(const cllm_monitor_config_t& cfg) : slot_(new detail::LimitSlot) {
    cllm_monitor_t* m = nullptr;
    checkStatus(cllm_monitor_create(&cfg, &m), "cllm_monitor_create");
    h_.reset(m);
  }

  cllm_monitor_t* get() const noexcept { return h_.get(); }

  // Reserve exactly (reclaimers, then the limit callback on refusal). Throws
  // LimitError (nothing reserved) or Error (CLLM_EINVAL: bad category).
  void reserve(cllm_category_t cat, size_t bytes) {
    detail::monitorReserve(get(), cat, bytes, "cllm_monitor_reserve");
  }
  // No reclaimers, no callback: false if a limit refuses. Throws Error (CLLM_EINVAL).
  bool tryReserve(cllm_category_t cat, size_t bytes) {
    cllm_status_t rc = cllm_monitor_try_reserve(get(), cat, bytes);
    if (rc == CLLM_ELIMIT) return false;
    checkStatus(rc, "cllm_monitor_try_reserve");
    return true;
  }
  // Throws Error (CLLM_EINVAL: more than `cat` holds; nothing changes).
  void release(cllm_category_t cat, size_t bytes) {
    checkStatus(cllm_monitor_release(get(), cat, bytes), "cllm_monitor_release");
  }
  void setLimit(size_t bytes) { checkStatus(cllm_monitor_set_limit(get(), bytes), "cllm_monitor_set_limit"); }
  void setCategoryLimit(cllm_category_t cat, size_t bytes) {
    checkStatus(cllm_monitor_set_category_limit(get(), cat, bytes), "cllm_monitor_set_category_limit");
  }
  size_t limit() const noexcept { return cllm_monitor_limit(get()); }
  // In total (CLLM_CAT_COUNT) or in one category.
  size_t used(cllm_category_t cat = CLLM_CAT_COUNT) const noexcept { return cllm_monitor_used(get(), cat); }
  size_t peak(cllm_category_t cat = CLLM_CAT_COUNT) const noexcept { return cllm_monitor_peak(get(), cat); }
  void resetPeak() { checkStatus(cllm_monitor_reset_peak(get()), "cllm_monitor_reset_peak"); }
  // Replace the limit callback (empty: none). Thread: any.
  void setLimitCallback(LimitCallback cb) { detail::monitorSetLimitCallback(get(), *slot_, std::move(cb)); }
  cllm_monitor_stats_t stats() const {
    cllm_monitor_stats_t st{};
    st.struct_size = sizeof st;
    checkStatus(cllm_monitor_stats(get(), &st), "cllm_monitor_stats");
    return st;
  }
  // Throws Error (CLLM_ECORRUPT) if an invariant is violated.
  void check() const { checkStatus(cllm_monitor_check(get()), "cllm_monitor_check"); }

 private:
  std::unique_ptr<detail::LimitSlot> slot_;  // stable address: the C monitor points to it
  detail::Handle<cllm_monitor_t, cllm_monitor_destroy> h_;  // last: destroyed first
};

/* ---- Reclaimer: a registered cllm_reclaim_fn ---------------------------------------- */

// Registers `fn` as a reclaimer of a monitor for this object's lifetime (move-only).
// On a refused reservation the monitor asks fn(category, needed bytes) to free memory;
// fn releases what it frees from the monitor (cllm_monitor_release, Monitor::release,
// MemoryMonitor::deallocate) and returns the bytes released. It runs outside every
// monitor lock on the refused thread and must not reserve. If fn throws, the exception
// is handled as for any callback (rethrown by the throwing method that reserved, else
// dropped and counted) and the reclaimer reports 0 bytes.
class Reclaimer {
 public:
  using Fn = std::function<size_t(cllm_category_t cat, size_t needed)>;

  // Throws Error (CLLM_EINVAL: no monitor or empty fn; CLLM_ENOMEM: the monitor's
  // table is full; CLLM_EBUSY: called from a reclaimer).
  Reclaimer(cllm_monitor_t* monitor, Fn fn) : m_(monitor) {
    if (!fn) throw Error(CLLM_EINVAL, "cllm_monitor_add_reclaimer: empty function");
    fn_.reset(new Fn(std::move(fn)));
    checkStatus(cllm_monitor_add_reclaimer(m_, &trampoline, fn_.get()), "cllm_monitor_add_reclaimer");
  }
  // Unregisters (waiting for calls in flight on other threads). If that is refused
  // (CLLM_EBUSY: destroyed from inside a reclaimer) the function is leaked rather than
  // freed while the monitor may still call it.
  ~Reclaimer() {
    if (fn_ && cllm_monitor_remove_reclaimer(m_, &trampoline, fn_.get()) != CLLM_OK) (void)fn_.release();
  }
  Reclaimer(Reclaimer&&) noexcept = default;
  Reclaimer& operator=(Reclaimer&&) = delete;
  Reclaimer(const Reclaimer&) = delete;
  Reclaimer& operator=(const Reclaimer&) = delete;

 private:
  static size_t trampoline(void* user, cllm_category_t cat, size_t needed) noexcept {
    try {
      return (*static_cast<Fn*>(user))(cat, needed);
    } catch (...) {
      detail::captureCurrentException();
      return 0;
    }
  }

  cllm_monitor_t* m_;
  std::unique_ptr<Fn> fn_;  // stable: the monitor points to it
};

}  // namespace cllm

#endif /* CLLM_MEM_CORE_HPP */
