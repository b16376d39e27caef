/* libFuzzer target: the NUMA heaps as an op sequence: alloc, alloc_aligned (valid
 * and invalid alignments), calloc (overflowing products), realloc, free (plain, and
 * sized for blocks of alloc and calloc), frees of
 * foreign pointers, usable_size, attach to valid and invalid nodes. Live blocks carry
 * a pattern verified after every op; cllm_heaps_check() runs after every op. One
 * heaps object serves every input (mimalloc arenas cannot be unregistered), and each
 * input frees everything it allocated: the in-use figure must return to zero. */
#include <stdbool.h>

#include <cllm/heap.h>

#include "fuzz_input.h"

#define MAX_LIVE 128

typedef struct live {
  unsigned char *p;
  size_t n;
  unsigned char pat;
  bool sized; /* from alloc or calloc with n bytes: cllm_heap_free_sized may free it */
} live_t;

static cllm_heaps_t *g_heaps;
static cllm_monitor_t *g_mon;

static size_t in_use(void) {
  cllm_heaps_stats_t st = {.struct_size = sizeof st};
  FUZZ_CHECK(cllm_heaps_stats(g_heaps, &st) == CLLM_OK, "stats");
  size_t s = 0;
  for (int i = 0; i < st.nodes && i < CLLM_HEAP_MAX_NODES; i++) s += st.node[i].bytes_in_use;
  return s;
}

static void check_live(const live_t *l, int n) {
  for (int i = 0; i < n; i++) {
    FUZZ_CHECK(cllm_heap_usable_size(g_heaps, l[i].p) >= l[i].n, "usable size shrank");
    size_t step = l[i].n > 64 ? l[i].n / 37 : 1;
    for (size_t j = 0; j < l[i].n; j += step) FUZZ_CHECK(l[i].p[j] == l[i].pat, "block %d overwritten", i);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_in_t in = {data, size};
  if (g_heaps == NULL) {
    cllm_set_log_fn(cllm_log_discard, NULL);
    cllm_monitor_config_t mc = cllm_monitor_config_default();
    mc.limit_bytes = (size_t)96 << 20;
    FUZZ_CHECK(cllm_monitor_create(&mc, &g_mon) == CLLM_OK, "monitor");
    cllm_heaps_config_t cfg = cllm_heaps_config_default();
    cfg.bytes_per_node = (size_t)64 << 20;
    cfg.monitor = g_mon;
    FUZZ_CHECK(cllm_heaps_create(&cfg, &g_heaps) == CLLM_OK, "heaps");
  }
  live_t live[MAX_LIVE];
  int n = 0;
  unsigned char pat = 3;
  size_t base_use = in_use();
  while (!fuzz_done(&in)) {
    uint8_t op = fuzz_u8(&in) % 9;
    size_t sz = fuzz_size(&in, 256 << 10);
    unsigned char *p = NULL;
    bool record = false, sized = false;
    switch (op) {
      case 0: p = cllm_heap_alloc(g_heaps, sz); record = sized = true; break;
      case 1: {
        size_t align = fuzz_u8(&in) & 1 ? (size_t)1 << (fuzz_u8(&in) % 26) : fuzz_u32(&in);
        p = cllm_heap_alloc_aligned(g_heaps, sz, align);
        bool valid = align != 0 && (align & (align - 1)) == 0 && align <= CLLM_HEAP_MAX_ALIGN;
        if (!valid) FUZZ_CHECK(p == NULL && cllm_last_status() == CLLM_EINVAL, "bad align %zu accepted", align);
        if (p != NULL) FUZZ_CHECK(((uintptr_t)p & (align - 1)) == 0, "misaligned");
        record = true;
        break;
      }
      case 2: {
        size_t cnt = fuzz_size(&in, 4096), prod;
        p = cllm_heap_calloc(g_heaps, cnt, sz);
        if (__builtin_mul_overflow(cnt, sz, &prod)) {
          FUZZ_CHECK(p == NULL && cllm_last_status() == CLLM_EOVERFLOW, "calloc overflow accepted");
        } else if (p != NULL) {
          for (size_t j = 0; j < prod; j += 997) FUZZ_CHECK(p[j] == 0, "calloc not zero");
          sz = prod;
          sized = true;
        }
        record = true;
        break;
      }
      case 3: /* realloc a live block */
        if (n > 0) {
          int k = fuzz_u8(&in) % n;
          size_t keep = live[k].n < sz ? live[k].n : sz;
          unsigned char *q = cllm_heap_realloc(g_heaps, live[k].p, sz);
          if (sz == 0) { FUZZ_CHECK(q == NULL, "realloc 0"); live[k] = live[--n]; break; }
          if (q == NULL) break; /* old block untouched: still verified */
          for (size_t j = 0; j < keep; j += 131) FUZZ_CHECK(q[j] == live[k].pat, "realloc lost data");
          memset(q, live[k].pat, sz);
          live[k].p = q, live[k].n = sz, live[k].sized = false;
        }
        break;
      case 4: case 5: /* free; 5: sized where the block allows it */
        if (n > 0) {
          int k = fuzz_u8(&in) % n;
          if (op == 5 && live[k].sized) cllm_heap_free_sized(g_heaps, live[k].p, live[k].n);
          else cllm_heap_free(g_heaps, live[k].p);
          live[k] = live[--n];
        }
        break;
      case 6: { /* foreign pointers are ignored */
        static unsigned char stack_like[64];
        unsigned char *m = malloc(32);
        cllm_heap_free(g_heaps, m);
        cllm_heap_free(g_heaps, stack_like + (fuzz_u8(&in) % 32));
        cllm_heap_free_sized(g_heaps, stack_like + (fuzz_u8(&in) % 32), fuzz_size(&in, 64));
        free(m);
        FUZZ_CHECK(cllm_heap_usable_size(g_heaps, stack_like) == 0, "usable size of a foreign pointer");
        break;
      }
      case 7: { /* attach: only node 0 exists here */
        int node = (int)(fuzz_u8(&in) % 4) - 1;
        cllm_status_t rc = cllm_heap_attach(g_heaps, node);
        if (node == 0) FUZZ_CHECK(rc == CLLM_OK || rc == CLLM_EBUSY, "attach 0: %s", cllm_status_name(rc));
        else FUZZ_CHECK(rc == CLLM_ENOTFOUND || rc == CLLM_EINVAL, "attach %d: %s", node, cllm_status_name(rc));
        break;
      }
      case 8:
        FUZZ_CHECK(cllm_heap_usable_size(g_heaps, NULL) == 0, "usable NULL");
        cllm_heap_free(g_heaps, NULL);
        cllm_heap_free_sized(g_heaps, NULL, sz);
        break;
    }
    if (record && p != NULL) {
      if (n < MAX_LIVE) {
        memset(p, pat, sz);
        live[n++] = (live_t){p, sz, pat, sized};
        pat = (unsigned char)(pat * 5 + 2) | 1;
      } else {
        cllm_heap_free(g_heaps, p);
      }
    } else if (record) {
      cllm_status_t why = cllm_last_status();
      FUZZ_CHECK(why == CLLM_ENOMEM || why == CLLM_ELIMIT || why == CLLM_EINVAL || why == CLLM_EOVERFLOW,
                 "alloc failed: %s", cllm_status_name(why));
    }
    check_live(live, n);
    FUZZ_CHECK(cllm_heaps_check(g_heaps) == CLLM_OK, "check");
    FUZZ_CHECK(cllm_monitor_peak(g_mon, CLLM_CAT_COUNT) <= (size_t)96 << 20, "peak above limit");
  }
  for (int k = 0; k < n; k++) cllm_heap_free(g_heaps, live[k].p);
  FUZZ_CHECK(in_use() == base_use, "in use %zu after freeing everything (was %zu)", in_use(), base_use);
  return 0;
}
