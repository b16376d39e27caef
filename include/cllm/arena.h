/* cllm-mem: per-step bump arenas for the temporary buffers of a forward pass.
 *
 *   cllm_arena_config_t cfg = cllm_arena_config_default();
 *   cfg.initial_bytes = 64u << 20;                  // optional: map the first chunk now
 *   cllm_arena_t *a; if (cllm_arena_create(&cfg, &a) < 0) ...;
 *
 *   for (;;) {                                      // one forward pass per iteration
 *     for (int l = 0; l < n_layers; l++) {
 *       CLLM_ARENA_SCOPE(a);                        // rewinds at the end of the block
 *       float *x = cllm_arena_alloc(a, d * sizeof(float));        // 64-byte aligned
 *       cllm_float_array_t q = cllm_arena_floats(a, d);           // { data, n }
 *       if (x == NULL || q.data == NULL) ... cllm_last_status() says why ...
 *     }
 *     cllm_arena_reset(a);                          // O(1) in the steady state
 *   }
 *   cllm_arena_destroy(a);
 *
 * Model. An arena owns a list of chunks and bumps a pointer through them. The fast
 * path (cllm_arena_alloc*, inline below) aligns, adds and compares: no lock, no atomic,
 * no call. Hot loops that store through char pointers use a cursor (below): the same
 * bump with the pointer in registers. When the current chunk is full the slow path
 * moves to the next chunk or adds one: geometric growth capped by max_chunk_bytes, a
 * dedicated chunk for a request above the cap.
 *
 * Steps. cllm_arena_reset() ends a step: O(1) when the step fit in one chunk; after a
 * spill the chunks are replaced by ONE chunk of the step's high-water size, so a
 * steady workload makes no allocator and no monitor call per step. The shrink policy
 * (shrink_after_steps, shrink_fraction) and cllm_arena_trim() give memory back.
 *
 * Chunks and the monitor. Without cfg.heaps (default) chunks are mapped, 2 MiB
 * aligned, advised for transparent huge pages and pre-faulted once
 * (MADV_POPULATE_WRITE), in multiples of CLLM_ARENA_GRANULE, and charged to the
 * monitor's STEP category (cllm_monitor_reserve, so its reclaimers may free memory
 * first; the geometric part beyond the request with cllm_monitor_try_reserve, which
 * runs no reclaimer: if refused, a chunk of just the needed size is obtained). With
 * cfg.heaps, chunks come from cllm_heap_alloc_aligned on the calling thread and are
 * charged to HEAP by the heaps, not to STEP (each byte is counted once).
 *
 * Residency. A mapped chunk is charged in full before it is mapped and released after
 * it is unmapped: resident_bytes (read back from the kernel) never exceeds the charge
 * (capacity_bytes); no slack. cllm_arena_footprint gives what create charges.
 *
 * Sanitizers and debug. Under AddressSanitizer (library and caller built with it),
 * memory past the bump pointer and memory released by reset or rewind is poisoned.
 * CLLM_DEBUG >= 2 fills released memory with 0xDB; CLLM_DEBUG >= 1 aborts when one
 * arena is used by two threads at once or within one step. Release builds add
 * nothing to the fast path.
 *
 * Thread: an arena is external-sync (one worker thread uses it without locks); in
 * debug builds one step (between two resets) is allocated by one thread, so hand an
 * arena over between steps (e.g. the main thread resets the workers' arenas after a
 * join). Functions are not thread-safe unless tagged otherwise.
 *
 * Errors. Pointer-returning calls return NULL and record the reason for the calling
 * thread (cllm_last_status()) and in the stats.
 *
 * Inline fast paths follow the rule written in cllm/monitor.h: the structs below exist
 * so that the static inline functions run without a call; their private fields are
 * read and written only by those functions and lib/arena*.c; names ending in `_`
 * (functions, types, macros) serve the inline functions and are not API; the layouts
 * and the `_` helpers are part of the ABI of a major version.
 */
#ifndef CLLM_ARENA_H
#define CLLM_ARENA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cllm/export.h>
#include <cllm/heap.h>
#include <cllm/monitor.h>
#include <cllm/status.h>

CLLM_EXTERN_C_BEGIN

// Default alignment of cllm_arena_alloc (a cache line; AVX-512 friendly).
#define CLLM_ARENA_DEFAULT_ALIGN ((size_t)64)
// Largest alignment cllm_arena_alloc_aligned accepts (larger: NULL, CLLM_EINVAL).
#define CLLM_ARENA_MAX_ALIGN ((size_t)2 << 20)
// Chunks start on and are sized in multiples of this (2 MiB, the THP size).
#define CLLM_ARENA_GRANULE ((size_t)2 << 20)
// Largest request accepted; above it: NULL, CLLM_EINVAL (an "overflowing size").
#define CLLM_ARENA_MAX_REQUEST (SIZE_MAX >> 2)

// Not API. A successful bump is not NULL (it lies in a chunk): telling the compiler
// lets a caller's NULL check vanish from the fast path.
#if defined(__GNUC__) || defined(__clang__)
#define CLLM_ARENA_NONNULL_(p) \
  do {                          \
    if ((p) == 0) __builtin_unreachable(); \
  } while (0)
#else
#define CLLM_ARENA_NONNULL_(p) ((void)0)
#endif

// Not API. Is the including translation unit built with AddressSanitizer?
#if defined(__SANITIZE_ADDRESS__)
#define CLLM_ARENA_ASAN_ 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CLLM_ARENA_ASAN_ 1
#endif
#endif
#ifndef CLLM_ARENA_ASAN_
#define CLLM_ARENA_ASAN_ 0
#endif

/* ---- configuration -------------------------------------------------------------- */

typedef struct cllm_arena_config {
  size_t struct_size;          // set by cllm_arena_config_default()
  size_t initial_bytes;        // first chunk, obtained by create; 0 = on first allocation
  size_t min_chunk_bytes;      // smallest growth chunk; 0 = 2 MiB (rounded up to 2 MiB)
  size_t max_chunk_bytes;      // cap on a growth chunk; 0 = 256 MiB. A request above it
                               // gets a dedicated chunk; reset's coalesced chunk (one
                               // step's high-water) is not capped.
  cllm_heaps_t *heaps;         // optional (borrowed): chunks from the calling thread's heap
  cllm_monitor_t *monitor;     // NULL = cllm_monitor_global() (borrowed)
  bool transparent_huge_pages; // advise chunks for THP (default true)
  bool populate;               // pre-fault every new chunk once (default true)
  unsigned shrink_after_steps; // shrink policy: K consecutive low steps; 0 = off (default)
  double shrink_fraction;      // a step is "low" when its high-water < fraction x
                               // capacity; in (0, 1], default 0.5
} cllm_arena_config_t;

// The defaults documented above. Thread: any.
CLLM_API cllm_arena_config_t cllm_arena_config_default(void);

/* ---- the arena ------------------------------------------------------------------------
 * Public only so that the fast path can be inline (rule above). Never declare a
 * cllm_arena_t yourself: only cllm_arena_create makes one (the rest of the state lies
 * behind it). */
typedef struct cllm_arena { // all fields private
  uintptr_t cur_;      // the bump pointer; 0 without a chunk or while a cursor is out
  uintptr_t end_;      // end of the current chunk (a multiple of CLLM_ARENA_GRANULE);
                       // 0 without a chunk or while a cursor is out
  uint64_t cursor_id_; // id of the cursor that is out, 0 when none
} cllm_arena_t;

// Create an arena (and its first chunk when cfg->initial_bytes > 0). cfg NULL =
// defaults. Errors: CLLM_EINVAL (out NULL, bad struct_size, shrink_fraction outside
// (0,1], max_chunk_bytes < min_chunk_bytes), CLLM_ENOMEM (metadata or first chunk),
// CLLM_ELIMIT (the monitor refused the first chunk). *out is NULL on error and
// nothing is leaked. Thread: any (the arena then belongs to its user thread).
CLLM_API CLLM_NODISCARD cllm_status_t cllm_arena_create(const cllm_arena_config_t *cfg,
                                                         cllm_arena_t **out);

// The bytes cllm_arena_create(cfg) charges the monitor's STEP category: the first
// chunk (initial_bytes rounded up to CLLM_ARENA_GRANULE), or 0 (no initial chunk,
// or chunks from cfg->heaps: the heaps charge HEAP). Later chunks are charged as
// they are obtained. 0 for a config create refuses. Thread: any.
CLLM_API size_t cllm_arena_footprint(const cllm_arena_config_t *cfg);

// Destroy the arena: every pointer from it (and a cursor that is out) becomes invalid,
// every chunk is given back and released from the monitor. NULL is a no-op.
// Thread: external-sync.
CLLM_API void cllm_arena_destroy(cllm_arena_t *a);

/* ---- allocation ----------------------------------------------------------------------- */

// Not API (the inline calls' helpers). The slow path: moves to or adds a chunk, handles
// bad input. Thread: external-sync.
CLLM_API void *cllm_arena_alloc_slow_(cllm_arena_t *a, size_t bytes, size_t align);
// Not API. Under AddressSanitizer: mark [p, p+bytes) addressable (a no-op without
// ASan). Thread: external-sync.
CLLM_API void cllm_arena_asan_unpoison_(void *p, size_t bytes);

// Not API. The bump shared by the arena and its cursors (align, add, compare): returns
// the block and advances *cur, or returns 0 and changes nothing when align or bytes is
// invalid or the request does not fit before `end` (the slow path then sorts out
// which). `end` is a multiple of CLLM_ARENA_MAX_ALIGN and *cur <= end, so the aligned
// p <= end; with bytes <= CLLM_ARENA_MAX_REQUEST, p + bytes cannot wrap.
// Thread: as its caller.
static inline uintptr_t cllm_arena_bump_(uintptr_t *cur, uintptr_t end, size_t bytes,
                                         size_t align) {
  if (CLLM_LIKELY(align != 0 && (align & (align - 1)) == 0 &&
                  align <= CLLM_ARENA_MAX_ALIGN)) {
    uintptr_t p = (*cur + (align - 1)) & ~(uintptr_t)(align - 1), q = p + bytes;
    if (CLLM_LIKELY(bytes != 0 && bytes <= CLLM_ARENA_MAX_REQUEST && q <= end)) {
      *cur = q;
      CLLM_ARENA_NONNULL_(p); // p >= the chunk's base (no chunk: end == 0 < q)
#if CLLM_ARENA_ASAN_
      cllm_arena_asan_unpoison_((void *)p, bytes);
#endif
      return p;
    }
  }
  return 0;
}

// Allocate `bytes` aligned to `align`, a power of two up to CLLM_ARENA_MAX_ALIGN.
// The memory lives until the next reset, or a rewind to a mark taken before it; it is
// not zeroed. bytes == 0 returns a unique valid pointer (one byte is reserved, like
// malloc(0) on glibc). NULL on failure, with the reason in cllm_last_status() and in
// the stats: CLLM_EINVAL (a NULL, align 0, not a power of two or above
// CLLM_ARENA_MAX_ALIGN, bytes above CLLM_ARENA_MAX_REQUEST, e.g. SIZE_MAX),
// CLLM_ELIMIT (the monitor refused a new chunk even after its reclaimers ran),
// CLLM_ENOMEM (the system or the heap had no memory), CLLM_ESTATE (a cursor is out:
// allocate from the cursor). A failed call changes nothing: the arena stays usable
// with the chunks it has. Thread: external-sync.
static inline void *cllm_arena_alloc_aligned(cllm_arena_t *a, size_t bytes, size_t align) {
  if (CLLM_LIKELY(a != NULL)) {
    uintptr_t p = cllm_arena_bump_(&a->cur_, a->end_, bytes, align);
    if (CLLM_LIKELY(p != 0)) return (void *)p;
  }
  return cllm_arena_alloc_slow_(a, bytes, align);
}

// cllm_arena_alloc_aligned(a, bytes, CLLM_ARENA_DEFAULT_ALIGN). Thread: external-sync.
static inline void *cllm_arena_alloc(cllm_arena_t *a, size_t bytes) {
  return cllm_arena_alloc_aligned(a, bytes, CLLM_ARENA_DEFAULT_ALIGN);
}

// End a step: every allocation is released (poisoned under ASan, filled with 0xDB
// when CLLM_DEBUG >= 2), every mark becomes stale. O(1) when the step fit in one
// chunk. After a spill the chunks are replaced by one chunk of the step's high-water
// size (they are given back first, then the new chunk is obtained; if that fails
// the arena is left empty but usable, and the refusal is counted). Runs the shrink
// policy. Nothing is returned to the kernel otherwise. Errors: CLLM_EINVAL (NULL),
// CLLM_ESTATE (a cursor is out: end it first; nothing changes).
// Thread: external-sync (any thread may reset between steps).
CLLM_API CLLM_NODISCARD cllm_status_t cllm_arena_reset(cllm_arena_t *a);

/* ---- cursors: the bump pointer in registers for hot loops ------------------------------
 *
 *   cllm_arena_cursor_t c;
 *   if (cllm_arena_cursor_begin(a, &c) != CLLM_OK) ...;   // the arena lends its position
 *   for (int i = 0; i < n; i++) {
 *     uint8_t *x = cllm_arena_cursor_alloc(&c, bytes[i]);  // inline, cursor in registers
 *     if (x == NULL) ... cllm_last_status() says why ...
 *     x[0] = 1;                                             // char stores: no reload
 *   }
 *   if (cllm_arena_cursor_end(a, &c) != CLLM_OK) ...;      // the arena takes it back
 *   cllm_arena_reset(a);
 *
 * Why. cllm_arena_alloc keeps the bump pointer in the arena, in memory, and a store
 * through a char pointer may alias it (C's aliasing rules): the compiler reloads it
 * after each such store. A cursor is a local copy of the position; while its address
 * does not escape (pass &c only to the cllm_arena_cursor_* functions, keep c a local
 * variable) it stays in registers.
 *
 * Rules. While a cursor is out, the arena lends it its position: every other call on
 * the arena that allocates or moves the position (cllm_arena_alloc*, mark, rewind,
 * reset, reserve, trim, another cursor_begin) is refused with CLLM_ESTATE (bad
 * arguments still get CLLM_EINVAL first) and changes nothing; cllm_arena_stats and
 * cllm_arena_check work (bytes in use are counted up to the position the arena last
 * saw: cursor_begin, or the cursor's last slow path) and cllm_arena_destroy ends the
 * cursor with the arena. Allocations made through the cursor are arena allocations
 * like any other: they live until the next reset or a rewind to a mark taken before
 * cursor_begin; marks taken before it stay valid; stats, high-water, chunk growth, the
 * monitor, ASan poisoning and the debug checks for two threads behave as with
 * cllm_arena_alloc (cursor_begin and the cursor's slow path count as allocations of
 * the step; cursor_end, like reset, may run on another thread after a hand-over). A
 * cursor belongs to one thread; copy it only to hand it over (then use only the new
 * copy). The fast path cannot check anything: misuse (a cursor used after its end, a
 * stale copy, a cursor of another arena) is detected at the cursor's next slow path or
 * at cursor_end. */

// A lent position of one arena, a value type.
typedef struct cllm_arena_cursor { // all fields private
  uintptr_t cur_;       // bump pointer
  uintptr_t end_;       // end of the current chunk
  cllm_arena_t *arena_; // the arena it belongs to
  uint64_t id_;         // serial (unique per arena, never reused); 0 = none
} cllm_arena_cursor_t;

// Not API (the inline cursor calls' helpers). A chunk position {p, end}.
typedef struct cllm_arena_span_ { // all fields private
  uintptr_t p_;
  uintptr_t end_;
} cllm_arena_span_t;
// Not API. Lend a's position (saved in a; closes a's fast path). Thread: external-sync.
CLLM_API cllm_status_t cllm_arena_cursor_begin_(cllm_arena_t *a);
// Not API. A cursor's slow path: validate, allocate, lend again. Thread: external-sync.
CLLM_API cllm_arena_span_t cllm_arena_cursor_refill_(cllm_arena_t *a, uint64_t id,
                                                     uintptr_t cur, uintptr_t end,
                                                     size_t bytes, size_t align);
// Not API. Validate a cursor and take its position back. Thread: external-sync.
CLLM_API cllm_status_t cllm_arena_cursor_end_(cllm_arena_t *a, const cllm_arena_t *owner,
                                              uint64_t id, uintptr_t cur, uintptr_t end);

// Lend the arena's position to *c. Errors: CLLM_EINVAL (a NULL), CLLM_ESTATE (a cursor
// of this arena is already out). On error *c (if not NULL) is an invalid cursor whose
// allocations fail with CLLM_EINVAL and whose end is refused. Thread: external-sync.
static inline CLLM_NODISCARD cllm_status_t cllm_arena_cursor_begin(cllm_arena_t *a,
                                                                    cllm_arena_cursor_t *c) {
  if (c == NULL) return cllm_arena_cursor_begin_(NULL);
  c->cur_ = 0;
  c->end_ = 0;
  c->arena_ = a;
  c->id_ = 0;
  uintptr_t cur = a != NULL ? a->cur_ : 0, end = a != NULL ? a->end_ : 0;
  cllm_status_t rc = cllm_arena_cursor_begin_(a); // saves the position, disables a's fast path
  if (rc == CLLM_OK) {
    c->cur_ = cur;
    c->end_ = end;
    c->id_ = a->cursor_id_;
  }
  return rc;
}

// Allocate from a cursor: exactly as cllm_arena_alloc_aligned (alignment, bytes == 0,
// the statuses, chunk growth, a failed call changes nothing), the position kept in *c.
// Also NULL with CLLM_EINVAL (c NULL, or a cursor whose begin failed or that was
// altered) or CLLM_ESTATE (the cursor was ended, or is a stale copy of an earlier
// cursor), detected only when the call takes the slow path. Thread: external-sync.
static inline void *cllm_arena_cursor_alloc_aligned(cllm_arena_cursor_t *c, size_t bytes,
                                                    size_t align) {
  if (CLLM_LIKELY(c != NULL)) {
    uintptr_t p = cllm_arena_bump_(&c->cur_, c->end_, bytes, align);
    if (CLLM_LIKELY(p != 0)) return (void *)p;
  }
  if (c == NULL) return (void *)cllm_arena_cursor_refill_(NULL, 0, 0, 0, bytes, align).p_;
  cllm_arena_span_t s =
      cllm_arena_cursor_refill_(c->arena_, c->id_, c->cur_, c->end_, bytes, align);
  if (s.p_ == 0) return NULL;
  c->cur_ = s.p_ + (bytes != 0 ? bytes : 1);
  c->end_ = s.end_;
  return (void *)s.p_;
}

// cllm_arena_cursor_alloc_aligned(c, bytes, CLLM_ARENA_DEFAULT_ALIGN). Thread: external-sync.
static inline void *cllm_arena_cursor_alloc(cllm_arena_cursor_t *c, size_t bytes) {
  return cllm_arena_cursor_alloc_aligned(c, bytes, CLLM_ARENA_DEFAULT_ALIGN);
}

// Give the position back to `a`, the arena the cursor came from: the arena goes on
// from where the cursor stopped, and *c is emptied (a later allocation from it fails
// with CLLM_ESTATE). Errors (nothing changes, the cursor stays out): CLLM_EINVAL (a
// NULL, a cursor of another arena, one whose begin failed, or an altered cursor),
// CLLM_ESTATE (this arena has no cursor out, or c is a stale copy of an earlier one).
// Thread: external-sync.
static inline CLLM_NODISCARD cllm_status_t cllm_arena_cursor_end(cllm_arena_t *a,
                                                                  cllm_arena_cursor_t *c) {
  if (c == NULL) return cllm_arena_cursor_end_(NULL, NULL, 0, 0, 0);
  cllm_status_t rc = cllm_arena_cursor_end_(a, c->arena_, c->id_, c->cur_, c->end_);
  if (rc == CLLM_OK) {
    c->cur_ = 0;
    c->end_ = 0;
  }
  return rc;
}

/* ---- marks: nested scopes inside a step --------------------------------------------- */

// A position in an arena, for cllm_arena_rewind. A value type. A mark stays valid
// until the arena is reset or rewound to an earlier mark; rewinding to it again is
// allowed (a per-layer loop may rewind to one mark N times).
typedef struct cllm_arena_mark { // all fields private
  const cllm_arena_t *arena_; // the arena it belongs to
  uint64_t id_;               // serial (unique per arena, never reused); 0 = none
  size_t depth_;              // its slot in the arena's mark stack
} cllm_arena_mark_t;

// Take a mark at the current position. On failure (a NULL: CLLM_EINVAL; the mark
// stack could not grow: CLLM_ENOMEM; a cursor is out: CLLM_ESTATE) the returned mark
// has id 0, rewinding to it is refused, and cllm_last_status() says why.
// Thread: external-sync.
CLLM_API cllm_arena_mark_t cllm_arena_mark(cllm_arena_t *a);

// Release every allocation made after `m` (poisoned / filled as by reset); marks
// taken after `m` become stale, `m` stays valid. Chunks are kept. Errors:
// CLLM_EINVAL (a NULL, a mark of another arena or with id 0), CLLM_ESTATE (a stale
// mark: the arena was reset, or rewound to a mark taken before it, since; or a cursor
// is out). A refused rewind changes nothing. Thread: external-sync.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_arena_rewind(cllm_arena_t *a, cllm_arena_mark_t m);

/* ---- capacity ------------------------------------------------------------------------ */

// Pre-size for a known worst case (ggml's reserve-then-run): afterwards `bytes` of
// allocations from the current position need no new chunk. When nothing is in use
// the arena becomes one chunk of at least `bytes` (a larger first chunk is obtained
// before the old ones are given back); during a step a chunk is added after the
// current one unless enough room is already there. Also sets the floor below which
// the shrink policy and trim never go (reserve(a, 0) clears it). Errors: CLLM_EINVAL
// (NULL, bytes > CLLM_ARENA_MAX_REQUEST), CLLM_ELIMIT, CLLM_ENOMEM, CLLM_ESTATE (a
// cursor is out) (nothing changed). Thread: external-sync.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_arena_reserve(cllm_arena_t *a, size_t bytes);

// Give memory back now, down to the last completed step's high-water (rounded up to
// CLLM_ARENA_GRANULE) but not below the reserve floor: one chunk of that size
// remains (none if it is 0); a mapped chunk is shrunk in place. Only between steps.
// Errors: CLLM_EINVAL (NULL), CLLM_ESTATE (allocations are live, or a cursor is out:
// reset first).
// If a smaller heap-backed chunk cannot be obtained the old one is kept.
// Thread: external-sync.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_arena_trim(cllm_arena_t *a);

/* ---- statistics ---------------------------------------------------------------------- */

typedef struct cllm_arena_stats {
  size_t struct_size;               // the caller sets sizeof(cllm_arena_stats_t)
  size_t bytes_in_use;              // from the first chunk's start to the bump pointer,
                                    // alignment padding included, chunk tails excluded
  size_t step_high_water_bytes;     // the most in use during the current step
  size_t last_step_high_water_bytes; // that of the step ended by the last reset
  size_t high_water_bytes;          // all-time
  size_t capacity_bytes;            // sum of chunk sizes (= what STEP is charged; a
                                    // heap-backed arena's chunks are charged to HEAP)
  size_t chunks;
  size_t largest_chunk_bytes;
  size_t reserve_floor_bytes;       // from cllm_arena_reserve
  uint64_t resets;
  uint64_t spilled_steps;           // resets that found more than one chunk in use
  uint64_t coalesces;               // resets that rebuilt the chunks into one
  uint64_t shrinks;                 // memory given back by the policy or trim
  uint64_t refused;                 // allocations or chunks refused (ELIMIT / ENOMEM)
  uint64_t einval;                  // bad-argument calls
  uint64_t allocator_calls;         // chunk obtain / give back / trim calls
  uint64_t monitor_calls;           // cllm_monitor_reserve / release calls
  bool heap_backed;                 // cfg.heaps was set
  bool cursor_out;                  // a cursor is out (bytes_in_use: up to the position
                                    // the arena last saw)
  uint64_t cursors;                 // cursors begun
  size_t resident_bytes;            // chunk bytes resident, read back from the kernel
                                    // (mincore); SIZE_MAX if unknown
} cllm_arena_stats_t;

// Fill *st: O(1), then resident_bytes from the kernel (one mincore per 4 MiB of
// chunks). Errors: CLLM_EINVAL (NULL, struct_size too small). Thread: external-sync.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_arena_stats(const cllm_arena_t *a,
                                                        cllm_arena_stats_t *st);

// Verify the invariants (bump pointer inside the current chunk, chunk sizes and
// alignment, capacity and monitor charge, usage, the mark stack). CLLM_ECORRUPT on a
// violation (logged), CLLM_EINVAL for NULL. Thread: external-sync.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_arena_check(const cllm_arena_t *a);

/* ---- float arrays -----------------------------------------------------------------------
 * An aligned float array with its length (the C side of the C++ layer's FloatArray).
 * From an arena (released by reset / rewind; cllm_float_array_free only clears it) or
 * from the heaps or mimalloc (freed by cllm_float_array_free). data NULL, n 0 on
 * failure. */

// Not API. Where an array's memory comes from (its kind_).
typedef enum cllm_float_array_kind_ {
  CLLM_FLOAT_ARRAY_ARENA_ = 0,   // an arena, or an empty array: nothing to free
  CLLM_FLOAT_ARRAY_HEAPS_ = 1,   // cllm_heap_alloc_aligned(heaps_, ...)
  CLLM_FLOAT_ARRAY_MIMALLOC_ = 2 // mi_malloc_aligned
} cllm_float_array_kind_t;

typedef struct cllm_float_array {
  float *data;          // 64-byte aligned
  size_t n;             // number of floats
  cllm_heaps_t *heaps_; // private: owner of a heap-backed array
  int kind_;            // private: a cllm_float_array_kind_t
} cllm_float_array_t;

// n floats from the arena, 64-byte aligned (n == 0: a unique pointer, n 0). NULL data
// on failure as cllm_arena_alloc (n * sizeof(float) overflowing: CLLM_EINVAL).
// Thread: external-sync.
static inline cllm_float_array_t cllm_arena_floats(cllm_arena_t *a, size_t n) {
  cllm_float_array_t f = {NULL, 0, NULL, CLLM_FLOAT_ARRAY_ARENA_};
  size_t bytes;
  if (__builtin_mul_overflow(n, sizeof(float), &bytes)) bytes = SIZE_MAX; // refused: EINVAL
  f.data = (float *)cllm_arena_alloc(a, bytes);
  if (f.data != NULL) f.n = n;
  return f;
}

// n floats, 64-byte aligned, from `heaps` (the calling thread's heap) or, with heaps
// NULL, from mimalloc. Free with cllm_float_array_free. Errors (data NULL):
// CLLM_EINVAL (n * sizeof(float) overflows), CLLM_ENOMEM / CLLM_ELIMIT (from the heap).
// Thread: any (with heaps: as cllm_heap_alloc_aligned).
CLLM_API cllm_float_array_t cllm_heap_floats(cllm_heaps_t *heaps, size_t n);

// Free a heap-backed array and set *f to {NULL, 0}; for an arena-backed or empty
// array only *f is cleared. NULL f is a no-op. Thread: any.
CLLM_API void cllm_float_array_free(cllm_float_array_t *f);

/* ---- scope-bound buffers (__attribute__((cleanup)), GCC and Clang) ----------------- */

// A mark plus its arena, rewound at scope exit by CLLM_ARENA_SCOPE.
typedef struct cllm_arena_scope {
  cllm_arena_t *arena;
  cllm_arena_mark_t mark;
} cllm_arena_scope_t;

// Not API (CLLM_ARENA_SCOPE's helpers): take a mark; rewind to it unless the scope is
// stale (the arena was reset inside it: the refusal is harmless). Thread: external-sync.
static inline cllm_arena_scope_t cllm_arena_scope_begin_(cllm_arena_t *a) {
  cllm_arena_scope_t s;
  s.arena = a;
  s.mark = cllm_arena_mark(a);
  return s;
}
// Not API. Thread: external-sync.
static inline void cllm_arena_scope_end_(cllm_arena_scope_t *s) {
  if (s->arena != NULL && s->mark.id_ != 0) {
    cllm_status_t rc = cllm_arena_rewind(s->arena, s->mark);
    (void)rc;
  }
}

#define CLLM_ARENA_CAT2_(x, y) x##y
#define CLLM_ARENA_CAT_(x, y) CLLM_ARENA_CAT2_(x, y)
#if defined(__GNUC__) || defined(__clang__)
#define CLLM_ARENA_HAVE_CLEANUP 1
// CLLM_ARENA_SCOPE(a);  takes a mark now and rewinds to it when the enclosing block
// exits (by any path: return, break, goto out of it). One per line. Thread: external-sync.
#define CLLM_ARENA_SCOPE(a)                                                   \
  __attribute__((cleanup(cllm_arena_scope_end_), unused)) cllm_arena_scope_t  \
  CLLM_ARENA_CAT_(cllm_arena_scope_, __LINE__) = cllm_arena_scope_begin_(a)
// CLLM_FLOAT_ARRAY_AUTO cllm_float_array_t w = cllm_heap_floats(h, n);  freed at
// scope exit by cllm_float_array_free. Thread: as cllm_float_array_free.
#define CLLM_FLOAT_ARRAY_AUTO __attribute__((cleanup(cllm_float_array_free)))
#else
#define CLLM_ARENA_HAVE_CLEANUP 0
#endif

CLLM_EXTERN_C_END

#endif /* CLLM_ARENA_H */
