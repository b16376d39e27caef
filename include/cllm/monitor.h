/* cllm-mem: the memory monitor (used / peak / limit, per category and in total).
 *
 *   cllm_monitor_t *mon = cllm_monitor_global();          // or a private one:
 *   cllm_monitor_config_t cfg = cllm_monitor_config_default();
 *   cfg.limit_bytes = 8ull << 30;
 *   cllm_monitor_t *priv; if (cllm_monitor_create(&cfg, &priv) < 0) ...;
 *
 *   if (cllm_monitor_reserve(priv, CLLM_CAT_KV, 1 << 20) == CLLM_OK) {
 *     ... use the megabyte ...
 *     CLLM_DISCARD(cllm_monitor_release(priv, CLLM_CAT_KV, 1 << 20));
 *   }
 *   cllm_monitor_destroy(priv);
 *
 * Guarantees
 * - reserve is exact: `used` never exceeds a limit, not even for an instant, under
 *   any number of threads (the seed's check-then-add could). Every counter change is
 *   one short critical section behind the monitor's gate (one CAS to enter, a store
 *   to leave, never held across a call out, never a sleep in the kernel: waiters spin
 *   and then yield), so the total always equals the sum of the categories and a
 *   reserve + release pair costs two locked instructions, like the seed's pair.
 * - Async-signal-safe in the sense that it never deadlocks: a signal handler that
 *   interrupts a reserve/release/reset_peak on the same thread and calls one of them
 *   on the same monitor gets CLLM_EBUSY (nothing changed) instead of waiting on itself.
 * - release never underflows: releasing more than is reserved (in the category) is
 *   refused with CLLM_EINVAL and changes nothing.
 * - peak is the maximum of values actually installed; reset_peak lowers it to the
 *   current use, never below.
 * - Callbacks (limit callback, reclaimers) never run with a monitor lock held.
 *
 * Residency (the rule every component follows): a component charges the monitor for
 * the memory it makes resident (mapped and committed, populated, or held for a
 * thread) before it makes it resident, and releases the charge only after giving the
 * memory back; so what the kernel holds for the library stays within the monitor's
 * total, plus each component's documented, bounded slack. Each component's stats
 * report its resident bytes read back from the kernel next to its charge; its
 * header's "Residency" paragraph says how it applies the rule (weights: the whole
 * region at create; arenas: whole chunks; KV cache: the pools' committed pages;
 * heaps: heap.h), and cllm_*_footprint() gives what create charges, so a runtime
 * can size its limit before anything exists.
 *
 * The global monitor, cllm_monitor_global(), is the process-wide default: components
 * take a `cllm_monitor_t *` in their config and NULL there means the global one.
 * The functions below take the monitor explicitly; NULL there is CLLM_EINVAL.
 *
 * Thread safety: every function is `Thread: any` unless tagged otherwise.
 */
#ifndef CLLM_MONITOR_H
#define CLLM_MONITOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cllm/export.h>
#include <cllm/status.h>

CLLM_EXTERN_C_BEGIN

// What memory is for; each has its own used, peak and optional limit.
// XX(id, value, name): the one table of categories (CLLM_CAT_<id>).
#define CLLM_CATEGORY_MAP(XX)                                                    \
  XX(WEIGHTS, 0, "weights") /* the pinned weights heap */                        \
  XX(KV, 1, "kv")           /* the paged KV cache */                             \
  XX(STEP, 2, "step")       /* per-step arenas */                                \
  XX(HEAP, 3, "heap")       /* per-thread NUMA heaps (everything else) */

typedef enum cllm_category {
#define CLLM_CATEGORY_ENUM_(id, value, name) CLLM_CAT_##id = (value),
  CLLM_CATEGORY_MAP(CLLM_CATEGORY_ENUM_)
#undef CLLM_CATEGORY_ENUM_
  CLLM_CAT_COUNT = 4
} cllm_category_t;

// "weights", "kv", "step", "heap"; "unknown" otherwise. Static storage.
CLLM_API const char *cllm_category_name(cllm_category_t cat);

typedef struct cllm_monitor cllm_monitor_t;

// Called for exactly the refusals counted in `refusals`: a cllm_monitor_reserve or
// a batch refill (cllm_monitor_batch_*) refused by a limit after the reclaimers had
// their chance. Never for a cllm_monitor_try_reserve refusal (counted in
// `try_refusals`; the components that use it, e.g. the KV cache, count their own
// refusals in their stats too), nor for CLLM_EINVAL / CLLM_EBUSY. It runs outside
// any lock, with the category, what was in use (in total when the total limit
// refused, in the category when its own limit refused), the bytes requested and the
// limit that refused. It may call release; it must not call reserve on the same
// monitor (that reservation would not reclaim and may be refused again).
typedef void (*cllm_limit_fn)(void *user, cllm_category_t cat, size_t used,
                              size_t requested, size_t limit);

// A reclaimer frees memory owned by some component (the KV cache drops cached
// blocks) when a reservation is refused. It is asked to free at least `needed`
// bytes and returns the bytes it released to the monitor (0 if it could not).
// It runs outside any monitor lock, on the thread whose reservation was refused.
// Reentrancy rule: a reclaimer may call cllm_monitor_release (that is how it frees);
// it must not reserve on any monitor and must not add or remove reclaimers (both
// are refused with CLLM_EBUSY from inside a reclaimer).
typedef size_t (*cllm_reclaim_fn)(void *user, cllm_category_t cat, size_t needed);

typedef struct cllm_monitor_config {
  size_t struct_size;                          // set by cllm_monitor_config_default()
  size_t limit_bytes;                          // total limit; 0 = unlimited
  size_t category_limit_bytes[CLLM_CAT_COUNT]; // per category; 0 = unlimited
  cllm_limit_fn limit_fn;                      // optional
  void *limit_user;
} cllm_monitor_config_t;

// Defaults: no limits, no callback. Thread: any.
CLLM_API cllm_monitor_config_t cllm_monitor_config_default(void);

// Create a private monitor. cfg may be NULL (defaults). *out is NULL on error.
// Errors: CLLM_EINVAL (out NULL, bad struct_size), CLLM_ENOMEM.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_monitor_create(const cllm_monitor_config_t *cfg,
                                                           cllm_monitor_t **out);

// Destroy a private monitor. NULL and the global monitor are no-ops. The caller
// guarantees no other thread uses it and every component charging it is destroyed;
// reserved bytes still outstanding are reported through the log (warning).
CLLM_API void cllm_monitor_destroy(cllm_monitor_t *m);

// The process-wide monitor (statically allocated, never destroyed).
CLLM_API cllm_monitor_t *cllm_monitor_global(void);

// Reserve `bytes` in `cat`. bytes == 0 succeeds and changes nothing. If a limit
// refuses, the reclaimers are asked for the shortfall and the reservation is retried
// once; if it is still refused the limit callback runs and CLLM_ELIMIT is returned.
// Errors: CLLM_EINVAL (m NULL, unknown category), CLLM_ELIMIT (nothing changed),
// CLLM_EBUSY (from a reclaimer, or from a signal handler that interrupted a monitor
// call on this thread: nothing changed).
CLLM_API CLLM_NODISCARD cllm_status_t cllm_monitor_reserve(cllm_monitor_t *m, cllm_category_t cat,
                                                            size_t bytes);

// As reserve, but never runs reclaimers or the limit callback: for components that
// hold their own lock while reserving (a reclaimer could need that lock). A
// refusal by a limit counts in try_refusals.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_monitor_try_reserve(cllm_monitor_t *m,
                                                                cllm_category_t cat, size_t bytes);

// Release `bytes` previously reserved in `cat`.
// Errors: CLLM_EINVAL (m NULL, unknown category, or more than `cat` holds: nothing
// changes and a warning is logged), CLLM_EBUSY (signal-handler reentry, as above).
CLLM_API CLLM_NODISCARD cllm_status_t cllm_monitor_release(cllm_monitor_t *m, cllm_category_t cat,
                                                            size_t bytes);

// Set the total limit (0 = unlimited). A limit below the current use is accepted:
// existing reservations stay, new ones are refused until use drops below it.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_monitor_set_limit(cllm_monitor_t *m, size_t bytes);
// Set one category's limit (0 = unlimited). Same rules as set_limit.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_monitor_set_category_limit(cllm_monitor_t *m,
                                                                       cllm_category_t cat,
                                                                       size_t bytes);
// The total limit (0 = unlimited; 0 also for m == NULL).
CLLM_API size_t cllm_monitor_limit(const cllm_monitor_t *m);
// Bytes in use in `cat`, or in total when cat == CLLM_CAT_COUNT (0 for bad input).
CLLM_API size_t cllm_monitor_used(const cllm_monitor_t *m, cllm_category_t cat);
// Peak bytes in `cat`, or in total when cat == CLLM_CAT_COUNT (0 for bad input).
CLLM_API size_t cllm_monitor_peak(const cllm_monitor_t *m, cllm_category_t cat);
// Lower every peak (total and categories) to the current use, as one step.
// Errors: CLLM_EINVAL (NULL), CLLM_EBUSY (signal-handler reentry).
CLLM_API CLLM_NODISCARD cllm_status_t cllm_monitor_reset_peak(cllm_monitor_t *m);

// Replace the limit callback (fn NULL removes it). The pair (fn, user) is swapped as
// one: a refusal sees either the old pair or the new one, never a mix.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_monitor_set_limit_callback(cllm_monitor_t *m,
                                                                       cllm_limit_fn fn,
                                                                       void *user);

#define CLLM_MONITOR_MAX_RECLAIMERS 32

// Register a reclaimer. Reclaimers are asked in registration order.
// Errors: CLLM_EINVAL (NULL), CLLM_EEXIST (same fn and user already registered),
// CLLM_ENOMEM (CLLM_MONITOR_MAX_RECLAIMERS reached), CLLM_EBUSY (called from a
// reclaimer).
CLLM_API CLLM_NODISCARD cllm_status_t cllm_monitor_add_reclaimer(cllm_monitor_t *m,
                                                                  cllm_reclaim_fn fn, void *user);
// Unregister a reclaimer. When it returns, the reclaimer is not running on any
// thread and will not be called again, so `user` may be freed.
// Errors: CLLM_EINVAL, CLLM_ENOTFOUND, CLLM_EBUSY (called from a reclaimer).
CLLM_API CLLM_NODISCARD cllm_status_t cllm_monitor_remove_reclaimer(cllm_monitor_t *m,
                                                                     cllm_reclaim_fn fn,
                                                                     void *user);

/* ---- Statistics --------------------------------------------------------------- */

typedef struct cllm_monitor_cat_stats {
  size_t used_bytes;
  size_t peak_bytes;
  size_t limit_bytes;  // 0 = unlimited
} cllm_monitor_cat_stats_t;

typedef struct cllm_monitor_stats {
  size_t struct_size;  // the caller sets sizeof(cllm_monitor_stats_t)
  size_t used_bytes;   // total in use (batched credit included)
  size_t peak_bytes;
  size_t limit_bytes;  // 0 = unlimited
  cllm_monitor_cat_stats_t cat[CLLM_CAT_COUNT];
  uint64_t refusals;         // reserve / batch refusals (after reclaim; the limit callback ran)
  uint64_t reclaim_runs;     // times the reclaimers were asked
  uint64_t reclaimed_bytes;  // bytes they reported freeing
  uint64_t bad_releases;     // releases refused as larger than the reservation
  size_t batch_credit_bytes; // held by batches, not handed out (as of each batch's last refill/spill)
  uint64_t try_refusals;     // cllm_monitor_try_reserve refusals (no reclaim, no callback)
} cllm_monitor_stats_t;

// Fill *st (O(1): a fixed number of atomic loads; struct_size as in mem.h).
// The used and peak figures are one snapshot (read inside the gate: total == sum of
// categories); the other counters are read one by one. Errors: CLLM_EINVAL.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_monitor_stats(const cllm_monitor_t *m,
                                                          cllm_monitor_stats_t *st);

// Verify the invariants: total == sum of categories, peak >= used, credit <= used.
// The first two hold at every instant, so it may run while other threads reserve
// and release; credit <= used needs no batch refilling or spilling at that moment
// (batches publish their credit after the reservation). Returns CLLM_ECORRUPT on
// a violation (and logs which), CLLM_EINVAL for NULL.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_monitor_check(const cllm_monitor_t *m);

/* ---- Batched per-thread accounting ---------------------------------------------
 * For high-rate callers (the NUMA heaps charge every allocation): a batch holds a
 * credit of bytes already reserved in the monitor and serves reservations from it
 * without touching any shared cache line; it refills in steps of `batch_bytes` and
 * hands back what exceeds 2 x batch_bytes (the Linux percpu_counter pattern, but the
 * credit is reserved up front, so the limit stays exact: used, which counts credit,
 * never exceeds it).
 *
 * Slack bound: each live batch holds at most 2 x batch_bytes of credit, counted as
 * used but not handed out; stats report it as batch_credit_bytes. Near the limit a
 * refill that cannot get batch_bytes reserves exactly the shortfall instead, so a
 * reservation is refused only if it would not fit even after the batch's own credit
 * is used up (other batches' credit can still cause a refusal: at most
 * n_batches x 2 x batch_bytes).
 *
 * A batch belongs to one thread at a time (Thread: external-sync).
 *
 * Inline fast paths (the rule every public header of cllm-mem follows):
 * - A header exposes a struct only so that the static inline functions declared
 *   beside it run without a call. Its fields are private: only those inline
 *   functions and the owning component's .c file read or write them; every other
 *   caller, other components of this library included, calls the functions.
 * - The struct's comment says which fields are private (here: all of them).
 * - Out-of-line helpers that exist only for the inline functions end in `_`
 *   (cllm_monitor_batch_refill_): exported because inlined code calls them, not
 *   API; never call them directly.
 * - ABI: inlined code is compiled into the caller, so the struct's layout and the
 *   `_` helpers are part of the ABI of a major version (SONAME) and change only
 *   with it; a caller is built against the headers of the major version it links.
 */
typedef struct cllm_monitor_batch { // all fields private
  cllm_monitor_t *monitor;
  cllm_category_t cat;
  size_t batch_bytes;
  size_t credit;     // reserved in the monitor, not handed out
  size_t published;  // credit as last reported to the monitor's stats
} cllm_monitor_batch_t;

#define CLLM_MONITOR_BATCH_DEFAULT_BYTES ((size_t)256 << 10)

// Initialise a batch (no reservation yet). batch_bytes 0 = the default (256 KiB).
// Errors: CLLM_EINVAL (NULL b or m, unknown category).
CLLM_API CLLM_NODISCARD cllm_status_t cllm_monitor_batch_init(cllm_monitor_batch_t *b,
                                                               cllm_monitor_t *m,
                                                               cllm_category_t cat,
                                                               size_t batch_bytes);
// Slow paths of the inline calls below; call those instead.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_monitor_batch_refill_(cllm_monitor_batch_t *b,
                                                                  size_t bytes);
CLLM_API CLLM_NODISCARD cllm_status_t cllm_monitor_batch_release_slow_(cllm_monitor_batch_t *b,
                                                                       size_t bytes);
// Return all credit to the monitor (the batch stays usable). Call before the
// owning thread exits. Errors: CLLM_EINVAL when the monitor refuses the release
// (more was released through batches than reserved).
CLLM_API CLLM_NODISCARD cllm_status_t cllm_monitor_batch_flush(cllm_monitor_batch_t *b);

// Reserve `bytes` through the batch: no atomic operation while credit lasts.
// Errors as cllm_monitor_reserve (reclaimers run on a refused refill).
static inline CLLM_NODISCARD cllm_status_t cllm_monitor_batch_reserve(cllm_monitor_batch_t *b,
                                                                      size_t bytes) {
  if (CLLM_LIKELY(b != NULL && bytes <= b->credit)) {
    b->credit -= bytes;
    return CLLM_OK;
  }
  return cllm_monitor_batch_refill_(b, bytes);
}

// Take `bytes` from the batch's credit when it holds that much and bytes is not 0:
// true (credit reduced) or false (nothing changed; reserve through
// cllm_monitor_batch_reserve). Never calls out: for inline fast paths that leave
// every other case, a 0 "not known" size included, to their general path.
static inline bool cllm_monitor_batch_take(cllm_monitor_batch_t *b, size_t bytes) {
  if (CLLM_LIKELY(bytes - 1 < b->credit)) { // 1 <= bytes <= credit: 0 wraps
    b->credit -= bytes;
    return true;
  }
  return false;
}

// Put `bytes` back into the batch's credit when the credit stays within its bound
// (2 x batch_bytes): true, or false (nothing changed; release through
// cllm_monitor_batch_release). Never calls out: for inline fast paths.
static inline bool cllm_monitor_batch_give(cllm_monitor_batch_t *b, size_t bytes) {
  if (CLLM_LIKELY(bytes <= 2 * b->batch_bytes - b->credit)) {
    b->credit += bytes;
    return true;
  }
  return false;
}

// Release `bytes` through the batch (any batch of the same monitor and category
// may release what another reserved: cross-thread frees). Over-release is detected
// when credit is handed back to the monitor (here, once the credit would pass
// 2 x batch_bytes, or in flush): then CLLM_EINVAL and the batch is unchanged.
static inline CLLM_NODISCARD cllm_status_t cllm_monitor_batch_release(cllm_monitor_batch_t *b,
                                                                      size_t bytes) {
  if (CLLM_LIKELY(b != NULL && bytes <= 2 * b->batch_bytes - b->credit)) {
    b->credit += bytes;
    return CLLM_OK;
  }
  return cllm_monitor_batch_release_slow_(b, bytes);
}

CLLM_EXTERN_C_END
#endif /* CLLM_MONITOR_H */
