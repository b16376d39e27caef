/* Workarounds for mimalloc 2.0.9, in one file (see heap_internal.h for the interface).
 *
 * Size classes
 *   The monitor is charged the usable size of every block. For small and medium
 *   requests that is the size of mimalloc's size class, computed here as mimalloc
 *   2.0.9 computes its bins (_mi_bin / _mi_bin_size) and stored per 16-byte request
 *   step, so the fast paths need one load instead of a call to mi_usable_size. At
 *   first create the formula is checked against mi_good_size for every step up to
 *   128 KiB and against real allocations; if anything differs (another mimalloc
 *   build), prediction stays off and with it the inline fast paths and kept pages.
 *   Debug builds assert the prediction on every allocation.
 *
 * Kept pages (config keep_pages)
 *   mimalloc 2.0.9 frees a size class's only page soon after its last block goes and
 *   builds it again on the next allocation. A thread therefore holds one block of
 *   each class up to 128 KiB it has allocated, per node heap. The fast paths learn
 *   which classes are held from the thread's own copy of the class table
 *   (ts->fast16, the view of its current node's heap): a class not held reads 0,
 *   which fails the fast path's check, so its first allocation takes the general
 *   path, which takes the held block (cllm__heap_keep_class) and opens the class.
 *   Held blocks are neither charged nor counted; stats report their number.
 *
 * Aligned blocks
 *   mimalloc 2.0.9 serves an aligned request whose size is a multiple of the
 *   alignment (up to 128 KiB) from the plain size class, assuming such blocks are
 *   aligned; they are not when their page does not start on an aligned address. A
 *   misaligned block goes back and the request is made 16 bytes larger: no longer a
 *   multiple, so mimalloc over-allocates and aligns it itself.
 */
#include <mimalloc.h>
#include <string.h>

#include "internal/fault.h"
#include "internal/util.h"
#include "heap_internal.h"

#define MAX_CLASSES 128

size_t cllm__heap_class_max;
uint16_t cllm__heap_class16[HEAP_CLASS_LIMIT / 16 + 1];
/* Each step's class ordinal, and the first and last step of each class. */
static uint8_t g_ord16[HEAP_CLASS_LIMIT / 16 + 1];
static uint16_t g_ord_first[MAX_CLASSES], g_ord_last[MAX_CLASSES];
static int g_nclasses;

/* mimalloc 2.0.9's bin size for a request of `size` bytes. */
static size_t bin_size(size_t size) {
  size_t w = (size + sizeof(void *) - 1) / sizeof(void *); /* words */
  if (w <= 8) return (w <= 1 ? 1 : w) * sizeof(void *);
  size_t w1 = w - 1;
  int b = 63 - __builtin_clzll((unsigned long long)w1);
  size_t q = (w1 >> (b - 2)) & 3;
  return ((4 + q + 1) << (b - 2)) * sizeof(void *);
}

/* bin_size agrees with mimalloc's own answers for every step (mi_good_size) and for
 * allocations of plain, zeroed and class-sized requests. */
static bool bins_match_mimalloc(void) {
  for (size_t sz = 16; sz <= HEAP_CLASS_LIMIT; sz += 16)
    if (bin_size(sz) != mi_good_size(sz) || bin_size(bin_size(sz)) != bin_size(sz) ||
        bin_size(sz) % 16 != 0 || bin_size(sz) / 16 > UINT16_MAX)
      return false;
  mi_heap_t *t = mi_heap_new();
  if (t == NULL) return false;
  bool ok = true;
  for (size_t sz = 16; sz <= HEAP_CLASS_LIMIT && ok; sz = sz < 2048 ? sz + 16 : sz + sz / 7 + 16) {
    size_t r = sz & ~(size_t)15;
    void *p = mi_heap_malloc(t, r);
    ok = p != NULL && mi_usable_size(p) == bin_size(r);
    void *z = mi_heap_zalloc(t, r);
    ok = ok && z != NULL && mi_usable_size(z) == bin_size(r);
    size_t us = bin_size(r); /* the fast path's unwind asks for the class size */
    void *c = mi_heap_malloc(t, us);
    ok = ok && c != NULL && mi_usable_size(c) == us;
  }
  mi_heap_destroy(t);
  return ok;
}

void cllm__heap_classes_init(void) {
  if (!bins_match_mimalloc()) return;
  for (size_t i = 1; i <= HEAP_CLASS_LIMIT / 16; i++)
    cllm__heap_class16[i] = (uint16_t)(bin_size(16 * i) / 16);
  cllm__heap_class_max = HEAP_CLASS_LIMIT;
  int ord = 0; /* classes grow with the step: number them (kept pages) */
  for (size_t i = 1; i <= HEAP_CLASS_LIMIT / 16; i++) {
    if (i > 1 && cllm__heap_class16[i] != cllm__heap_class16[i - 1]) ord++;
    if (ord >= MAX_CLASSES) return; /* another mimalloc build: keep no pages */
    if (i == 1 || cllm__heap_class16[i] != cllm__heap_class16[i - 1]) g_ord_first[ord] = (uint16_t)i;
    g_ord_last[ord] = (uint16_t)i;
    g_ord16[i] = (uint8_t)ord;
  }
  g_nclasses = ord + 1;
}

int cllm__heap_class_count(void) { return g_nclasses; }

/* ---- kept pages ---- */

size_t cllm__heap_keep_bytes(int slots) {
  return (size_t)slots * (size_t)g_nclasses * sizeof(void *) + sizeof cllm__heap_class16;
}

void cllm__heap_keep_attach(tstate_t *ts, void *mem, int slots) {
  ts->keep = mem;
  ts->fast16 = (uint16_t *)(ts->keep + (size_t)slots * (size_t)g_nclasses);
}

static void **keep_row(const tstate_t *ts) {
  return &ts->keep[(size_t)ts->cur_slot * (size_t)g_nclasses];
}

void cllm__heap_keep_view(tstate_t *ts) {
  void **k = keep_row(ts);
  for (size_t i = 1; i <= HEAP_CLASS_LIMIT / 16; i++)
    ts->fast16[i] = k[g_ord16[i]] != NULL ? cllm__heap_class16[i] : 0;
}

/* A failure to hold a block is absorbed: the class is opened all the same, and a
 * later general-path call tries again. */
void cllm__heap_keep_class(tstate_t *ts, size_t size) {
  int o = g_ord16[size >> 4];
  void **k = &keep_row(ts)[o];
  if (*k == NULL && ts->cur != NULL) {
    size_t us = (size_t)cllm__heap_class16[size >> 4] << 4;
    void *b = CLLM_FAULT(CLLM_FAULT_MI_ALLOC) ? NULL : mi_heap_malloc(ts->cur, us);
    if (b != NULL) {
      HEAP_TSAN_ON_ALLOC(b);
      *k = b;
      heap_bump(&ts->kept, 1);
    }
  }
  for (size_t i = g_ord_first[o]; i <= g_ord_last[o]; i++) ts->fast16[i] = cllm__heap_class16[i];
}

void cllm__heap_keep_release(const cllm_heaps_t *h, tstate_t *ts, bool close) {
  if (ts->keep == NULL) return;
  size_t n = (size_t)h->nodes * (size_t)g_nclasses;
  for (size_t i = 0; i < n; i++) {
    if (ts->keep[i] != NULL) {
      HEAP_TSAN_ON_FREE(ts->keep[i]);
      mi_free(ts->keep[i]);
      ts->keep[i] = NULL;
    }
  }
  cllm__atomic_store_relaxed(&ts->kept, 0);
  if (close) memset(ts->fast16, 0, sizeof cllm__heap_class16);
}

/* ---- aligned blocks ---- */

static __attribute__((noinline)) void *realign(mi_heap_t *mh, void *p, size_t size, size_t align,
                                               bool zero) {
  mi_free(p);
  size += CLLM__HEAP_MIN_ALIGN;
  p = zero ? mi_heap_zalloc_aligned(mh, size, align) : mi_heap_malloc_aligned(mh, size, align);
  if (p != NULL && ((uintptr_t)p & (align - 1)) != 0) { /* refuse rather than misalign */
    mi_free(p);
    p = NULL;
  }
  return p;
}

void *cllm__heap_mi_aligned(mi_heap_t *mh, size_t size, size_t align, bool zero) {
  void *p = zero ? mi_heap_zalloc_aligned(mh, size, align) : mi_heap_malloc_aligned(mh, size, align);
  if (CLLM_UNLIKELY(((uintptr_t)p & (align - 1)) != 0)) p = realign(mh, p, size, align, zero);
  return p;
}
