/* //tests:bad_input_test: the bad-input table, driven from one array.
 *
 * Each row names a public function, a kind of bad input and the documented result,
 * and runs the call on a fresh fixture, then checks that the result is the one
 * documented and that the object is exactly as it was (its check passes, its
 * figures did not move). The same array is the README's "Errors" table:
 *   bazel-bin/tests/bad_input_test --markdown      prints it (a line per function, its
 * cases in order), and the test compares README.md's table with it line by line, so the
 * two cannot drift apart. A plain program (own main), so it also runs under TSan. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cllm/arena.h>
#include <cllm/heap.h>
#include <cllm/kv_cache.h>
#include <cllm/monitor.h>
#include <cllm/numa.h>
#include <cllm/weights.h>

#include "support/mt_check.h"

/* ---- fixtures: fresh objects on a private monitor --------------------------------- */

typedef struct fx {
  cllm_monitor_t *mon;
  cllm_arena_t *arena;
  cllm_weights_t *w;
  cllm_kv_cache_t *kv;
  cllm_kv_seq_t seq;
  cllm_heaps_t *heaps;
  cllm_topology_t *topo;
} fx_t;

static cllm_heaps_t *g_heaps; /* one for the process: mimalloc arenas cannot be unregistered */

static fx_t fx_new(void) {
  fx_t f;
  memset(&f, 0, sizeof f);
  cllm_monitor_config_t mc = cllm_monitor_config_default();
  mc.limit_bytes = (size_t)256 << 20;
  MT_CHECK(cllm_monitor_create(&mc, &f.mon) == CLLM_OK, "monitor");
  cllm_arena_config_t ac = cllm_arena_config_default();
  ac.monitor = f.mon;
  MT_CHECK(cllm_arena_create(&ac, &f.arena) == CLLM_OK, "arena");
  cllm_weights_config_t wc = cllm_weights_config_default();
  wc.capacity_bytes = 1u << 20;
  wc.monitor = f.mon;
  MT_CHECK(cllm_weights_create(&wc, &f.w) == CLLM_OK, "weights");
  cllm_kv_config_t kc = cllm_kv_config_default();
  kc.layers = 2, kc.kv_heads = 2, kc.head_dim = 16, kc.dtype_bytes = 2, kc.capacity_blocks = 16;
  kc.monitor = f.mon;
  MT_CHECK(cllm_kv_cache_create(&kc, &f.kv) == CLLM_OK, "kv");
  MT_CHECK(cllm_kv_seq_open(f.kv, "open-seq", NULL, &f.seq) == CLLM_OK, "seq");
  if (g_heaps == NULL) {
    cllm_heaps_config_t hc = cllm_heaps_config_default();
    hc.bytes_per_node = 32u << 20;
    MT_CHECK(cllm_heaps_create(&hc, &g_heaps) == CLLM_OK, "heaps");
  }
  f.heaps = g_heaps;
  cllm_topology_config_t tc = cllm_topology_config_default();
  tc.synthetic = "pack:2 numa:1 core:2 pu:1";
  MT_CHECK(cllm_topology_create(&tc, &f.topo) == CLLM_OK, "topology");
  return f;
}

/* The figures that must not move across a refused call. */
typedef struct figures {
  size_t mon[CLLM_CAT_COUNT + 1];
  size_t arena_in_use, arena_capacity, w_used, kv_active, kv_seqs, kv_copy;
} figures_t;

static figures_t figures(fx_t *f) {
  figures_t g;
  memset(&g, 0, sizeof g);
  for (int c = 0; c <= CLLM_CAT_COUNT; c++) g.mon[c] = cllm_monitor_used(f->mon, (cllm_category_t)c);
  cllm_arena_stats_t as = {.struct_size = sizeof as};
  MT_CHECK(cllm_arena_stats(f->arena, &as) == CLLM_OK, "arena stats");
  g.arena_in_use = as.bytes_in_use, g.arena_capacity = as.capacity_bytes;
  cllm_weights_stats_t ws = {.struct_size = sizeof ws};
  MT_CHECK(cllm_weights_stats(f->w, &ws) == CLLM_OK, "weights stats");
  g.w_used = ws.used_bytes;
  cllm_kv_stats_t ks = {.struct_size = sizeof ks};
  MT_CHECK(cllm_kv_stats(f->kv, &ks) == CLLM_OK, "kv stats");
  g.kv_active = ks.blocks_active, g.kv_seqs = ks.sequences, g.kv_copy = ks.copy_entries;
  return g;
}

static void fx_check(fx_t *f) {
  MT_CHECK(cllm_monitor_check(f->mon) == CLLM_OK, "monitor check");
  MT_CHECK(cllm_arena_check(f->arena) == CLLM_OK, "arena check");
  MT_CHECK(cllm_weights_check(f->w) == CLLM_OK, "weights check");
  MT_CHECK(cllm_kv_check(f->kv) == CLLM_OK, "kv check");
  MT_CHECK(cllm_heaps_check(f->heaps) == CLLM_OK, "heaps check");
}

static void fx_free(fx_t *f) {
  CLLM_DISCARD(cllm_kv_seq_close(f->kv, f->seq));
  cllm_kv_cache_destroy(f->kv);
  cllm_weights_destroy(f->w);
  cllm_arena_destroy(f->arena);
  cllm_topology_destroy(f->topo);
  MT_CHECK(cllm_monitor_used(f->mon, CLLM_CAT_COUNT) == 0, "monitor balance");
  cllm_monitor_destroy(f->mon);
}

/* For pointer-returning calls: the status they recorded. */
static cllm_status_t ptr_status(const void *p) { return p != NULL ? CLLM_OK : cllm_last_status(); }

static int dummy_reclaim_calls;
static size_t dummy_reclaim(void *u, cllm_category_t c, size_t n) {
  (void)u, (void)c, (void)n;
  dummy_reclaim_calls++;
  return 0;
}

/* ---- the table ---------------------------------------------------------------------- */

typedef cllm_status_t (*row_fn)(fx_t *f);
typedef struct row {
  const char *function;
  const char *input;
  cllm_status_t expect;
  row_fn run;
} row_t;

/* Rows are small functions; the ROWS table below lists them in README order. */

static cllm_status_t r_mon_create_null(fx_t *f) { (void)f; return cllm_monitor_create(NULL, NULL); }
static cllm_status_t r_mon_create_size(fx_t *f) {
  (void)f;
  cllm_monitor_config_t c = cllm_monitor_config_default();
  c.struct_size = 0;
  cllm_monitor_t *m = (cllm_monitor_t *)1;
  cllm_status_t rc = cllm_monitor_create(&c, &m);
  MT_CHECK(m == NULL, "*out not cleared");
  return rc;
}
static cllm_status_t r_mon_reserve_null(fx_t *f) { (void)f; return cllm_monitor_reserve(NULL, CLLM_CAT_KV, 1); }
static cllm_status_t r_mon_reserve_cat(fx_t *f) { return cllm_monitor_reserve(f->mon, (cllm_category_t)7, 1); }
static cllm_status_t r_mon_reserve_zero(fx_t *f) { return cllm_monitor_reserve(f->mon, CLLM_CAT_KV, 0); }
static cllm_status_t r_mon_reserve_max(fx_t *f) { return cllm_monitor_reserve(f->mon, CLLM_CAT_KV, SIZE_MAX); }
static cllm_status_t r_mon_release_more(fx_t *f) { return cllm_monitor_release(f->mon, CLLM_CAT_STEP, 1); }
static cllm_status_t r_mon_release_null(fx_t *f) { (void)f; return cllm_monitor_release(NULL, CLLM_CAT_KV, 1); }
static cllm_status_t r_mon_stats_null(fx_t *f) { return cllm_monitor_stats(f->mon, NULL); }
static cllm_status_t r_mon_add_null(fx_t *f) { return cllm_monitor_add_reclaimer(f->mon, NULL, NULL); }
static cllm_status_t r_mon_add_dup(fx_t *f) {
  MT_CHECK(cllm_monitor_add_reclaimer(f->mon, dummy_reclaim, f) == CLLM_OK, "add");
  cllm_status_t rc = cllm_monitor_add_reclaimer(f->mon, dummy_reclaim, f);
  MT_CHECK(cllm_monitor_remove_reclaimer(f->mon, dummy_reclaim, f) == CLLM_OK, "remove");
  return rc;
}
static cllm_status_t r_mon_remove_unknown(fx_t *f) { return cllm_monitor_remove_reclaimer(f->mon, dummy_reclaim, f); }
static cllm_status_t r_batch_init_null(fx_t *f) { return cllm_monitor_batch_init(NULL, f->mon, CLLM_CAT_HEAP, 0); }

static cllm_status_t r_topo_two(fx_t *f) {
  (void)f;
  cllm_topology_config_t c = cllm_topology_config_default();
  c.synthetic = "pack:1 pu:1";
  c.xml_path = "/nonexistent.xml";
  cllm_topology_t *t;
  return cllm_topology_create(&c, &t);
}
static cllm_status_t r_topo_bad(fx_t *f) {
  (void)f;
  cllm_topology_config_t c = cllm_topology_config_default();
  c.synthetic = "this is not a topology";
  cllm_topology_t *t;
  return cllm_topology_create(&c, &t);
}
static cllm_status_t r_topo_node(fx_t *f) {
  cllm_numa_node_info_t i;
  return cllm_topology_node_info(f->topo, 99, &i);
}
static cllm_status_t r_topo_bind_syn(fx_t *f) { return cllm_thread_bind_node(f->topo, 0); }
static cllm_status_t r_topo_area_zero(fx_t *f) {
  (void)f;
  char b[1];
  return cllm_topology_bind_area(cllm_topology_system(), b, 0, 0);
}

static cllm_status_t r_heaps_create_null(fx_t *f) { (void)f; return cllm_heaps_create(NULL, NULL); }
static cllm_status_t r_heap_alloc_null(fx_t *f) { (void)f; return ptr_status(cllm_heap_alloc(NULL, 16)); }
static cllm_status_t r_heap_align3(fx_t *f) { return ptr_status(cllm_heap_alloc_aligned(f->heaps, 16, 3)); }
static cllm_status_t r_heap_max(fx_t *f) { return ptr_status(cllm_heap_alloc(f->heaps, SIZE_MAX)); }
static cllm_status_t r_heap_calloc(fx_t *f) { return ptr_status(cllm_heap_calloc(f->heaps, SIZE_MAX / 2, 3)); }
static cllm_status_t r_heap_attach(fx_t *f) { return cllm_heap_attach(f->heaps, 64); }

static cllm_status_t r_arena_create_null(fx_t *f) { (void)f; return cllm_arena_create(NULL, NULL); }
static cllm_status_t r_arena_alloc_null(fx_t *f) { (void)f; return ptr_status(cllm_arena_alloc(NULL, 16)); }
static cllm_status_t r_arena_alloc_max(fx_t *f) { return ptr_status(cllm_arena_alloc(f->arena, SIZE_MAX)); }
static cllm_status_t r_arena_align3(fx_t *f) { return ptr_status(cllm_arena_alloc_aligned(f->arena, 16, 3)); }
static cllm_status_t r_arena_foreign(fx_t *f) {
  cllm_arena_config_t c = cllm_arena_config_default();
  c.monitor = f->mon;
  cllm_arena_t *o;
  MT_CHECK(cllm_arena_create(&c, &o) == CLLM_OK, "other arena");
  cllm_arena_mark_t m = cllm_arena_mark(o);
  cllm_status_t rc = cllm_arena_rewind(f->arena, m);
  cllm_arena_destroy(o);
  return rc;
}
static cllm_status_t r_arena_stale(fx_t *f) {
  cllm_arena_mark_t m = cllm_arena_mark(f->arena);
  MT_CHECK(cllm_arena_reset(f->arena) == CLLM_OK, "reset");
  return cllm_arena_rewind(f->arena, m);
}
static cllm_status_t r_arena_reset_null(fx_t *f) { (void)f; return cllm_arena_reset(NULL); }

static cllm_status_t r_w_create_zero(fx_t *f) {
  cllm_weights_config_t c = cllm_weights_config_default();
  c.monitor = f->mon;
  cllm_weights_t *w;
  return cllm_weights_create(&c, &w);
}
static cllm_status_t r_w_create_max(fx_t *f) {
  cllm_weights_config_t c = cllm_weights_config_default();
  c.capacity_bytes = SIZE_MAX;
  c.monitor = f->mon;
  cllm_weights_t *w;
  return cllm_weights_create(&c, &w);
}
static cllm_status_t r_w_align3(fx_t *f) {
  void *p;
  return cllm_weights_alloc(f->w, 64, 3, &p);
}
static cllm_status_t r_w_zero(fx_t *f) {
  void *p;
  return cllm_weights_alloc(f->w, 0, 0, &p);
}
static cllm_status_t r_w_sealed(fx_t *f) {
  /* sealing changes state by design; the refused alloc must not change `used` */
  void *p;
  MT_CHECK(cllm_weights_seal(f->w) == CLLM_OK, "seal");
  return cllm_weights_alloc(f->w, 64, 0, &p);
}
static cllm_status_t r_w_missing(fx_t *f) {
  void *p;
  return cllm_weights_load_path(f->w, "/nonexistent/model.bin", 0, 16, &p);
}
static cllm_status_t r_w_past_end(fx_t *f) {
  char path[64];
  snprintf(path, sizeof path, "/tmp/cllm-bad-input-%d.bin", (int)getpid());
  FILE *fp = fopen(path, "wb");
  MT_CHECK(fp != NULL, "temp file");
  fputs("0123456789", fp);
  fclose(fp);
  void *p;
  cllm_status_t rc = cllm_weights_load_path(f->w, path, 4, 16, &p);
  unlink(path);
  return rc;
}
static cllm_status_t r_w_fd(fx_t *f) {
  void *p;
  return cllm_weights_load_fd(f->w, -1, 0, 16, &p);
}
static cllm_status_t r_w_seal_twice(fx_t *f) {
  MT_CHECK(cllm_weights_seal(f->w) == CLLM_OK, "seal");
  return cllm_weights_seal(f->w);
}

static cllm_status_t r_kv_create_bt(fx_t *f) {
  cllm_kv_config_t c = cllm_kv_config_default();
  c.layers = 1, c.kv_heads = 1, c.head_dim = 8, c.dtype_bytes = 2, c.capacity_blocks = 4;
  c.block_tokens = 3;
  c.monitor = f->mon;
  cllm_kv_cache_t *kv;
  return cllm_kv_cache_create(&c, &kv);
}
static cllm_status_t r_kv_create_dtype0(fx_t *f) {
  cllm_kv_config_t c = cllm_kv_config_default();  // dtype_bytes has no default
  c.layers = 1, c.kv_heads = 1, c.head_dim = 8, c.capacity_blocks = 4;
  c.monitor = f->mon;
  cllm_kv_cache_t *kv;
  return cllm_kv_cache_create(&c, &kv);
}
static cllm_status_t r_kv_create_shape(fx_t *f) {
  cllm_kv_config_t c = cllm_kv_config_default();
  c.capacity_blocks = 4;
  c.monitor = f->mon;
  cllm_kv_cache_t *kv;
  return cllm_kv_cache_create(&c, &kv);
}
static cllm_status_t r_kv_open_dup(fx_t *f) {
  cllm_kv_seq_t s;
  return cllm_kv_seq_open(f->kv, "open-seq", NULL, &s);
}
static cllm_status_t r_kv_open_empty(fx_t *f) {
  cllm_kv_seq_t s;
  return cllm_kv_seq_open(f->kv, "", NULL, &s);
}
static cllm_status_t r_kv_find(fx_t *f) {
  cllm_kv_seq_t s;
  return cllm_kv_seq_find(f->kv, "no-such-request", &s);
}
static cllm_status_t r_kv_reserve0(fx_t *f) { return cllm_kv_seq_reserve(f->kv, f->seq, 0, NULL); }
static cllm_status_t r_kv_reserve_big(fx_t *f) { return cllm_kv_seq_reserve(f->kv, f->seq, 16 * 16 + 1, NULL); }
static cllm_status_t r_kv_close_twice(fx_t *f) {
  cllm_kv_seq_t s;
  MT_CHECK(cllm_kv_seq_open(f->kv, "closing", NULL, &s) == CLLM_OK, "open");
  MT_CHECK(cllm_kv_seq_close(f->kv, s) == CLLM_OK, "close");
  return cllm_kv_seq_close(f->kv, s);
}
static cllm_status_t r_kv_block(fx_t *f) {
  void *k, *v;
  return cllm_kv_block_layer(f->kv, 16, 0, &k, &v);
}
static cllm_status_t r_kv_put_big(fx_t *f) {
  static float big[1 << 16];
  return cllm_kv_put(f->kv, "big", big, 1 << 16, big, 1 << 16);
}
static cllm_status_t r_kv_get(fx_t *f) {
  size_t nk, nv;
  return cllm_kv_get(f->kv, "no-such-entry", NULL, 0, &nk, NULL, 0, &nv);
}
static cllm_status_t r_kv_evict(fx_t *f) { return cllm_kv_evict(f->kv, "no-such-entry"); }
static cllm_status_t r_kv_stats(fx_t *f) { return cllm_kv_stats(f->kv, NULL); }

static const row_t ROWS[] = {
    {"cllm_monitor_create", "NULL out-pointer", CLLM_EINVAL, r_mon_create_null},
    {"cllm_monitor_create", "struct_size 0", CLLM_EINVAL, r_mon_create_size},
    {"cllm_monitor_reserve", "NULL monitor", CLLM_EINVAL, r_mon_reserve_null},
    {"cllm_monitor_reserve", "unknown category", CLLM_EINVAL, r_mon_reserve_cat},
    {"cllm_monitor_reserve", "0 bytes", CLLM_OK, r_mon_reserve_zero},
    {"cllm_monitor_reserve", "SIZE_MAX bytes", CLLM_ELIMIT, r_mon_reserve_max},
    {"cllm_monitor_release", "more than reserved", CLLM_EINVAL, r_mon_release_more},
    {"cllm_monitor_release", "NULL monitor", CLLM_EINVAL, r_mon_release_null},
    {"cllm_monitor_stats", "NULL out-pointer", CLLM_EINVAL, r_mon_stats_null},
    {"cllm_monitor_add_reclaimer", "NULL function", CLLM_EINVAL, r_mon_add_null},
    {"cllm_monitor_add_reclaimer", "duplicate (fn, user)", CLLM_EEXIST, r_mon_add_dup},
    {"cllm_monitor_remove_reclaimer", "unknown (fn, user)", CLLM_ENOTFOUND, r_mon_remove_unknown},
    {"cllm_monitor_batch_init", "NULL batch", CLLM_EINVAL, r_batch_init_null},
    {"cllm_topology_create", "two sources", CLLM_EINVAL, r_topo_two},
    {"cllm_topology_create", "malformed synthetic description", CLLM_EINVAL, r_topo_bad},
    {"cllm_topology_node_info", "unknown node", CLLM_ENOTFOUND, r_topo_node},
    {"cllm_thread_bind_node", "topology not of this machine", CLLM_ENOTSUP, r_topo_bind_syn},
    {"cllm_topology_bind_area", "0 bytes", CLLM_EINVAL, r_topo_area_zero},
    {"cllm_heaps_create", "NULL out-pointer", CLLM_EINVAL, r_heaps_create_null},
    {"cllm_heap_alloc", "NULL heaps", CLLM_EINVAL, r_heap_alloc_null},
    {"cllm_heap_alloc", "SIZE_MAX bytes", CLLM_ENOMEM, r_heap_max},
    {"cllm_heap_alloc_aligned", "alignment 3", CLLM_EINVAL, r_heap_align3},
    {"cllm_heap_calloc", "n x size overflows", CLLM_EOVERFLOW, r_heap_calloc},
    {"cllm_heap_attach", "unknown node", CLLM_ENOTFOUND, r_heap_attach},
    {"cllm_arena_create", "NULL out-pointer", CLLM_EINVAL, r_arena_create_null},
    {"cllm_arena_alloc", "NULL arena", CLLM_EINVAL, r_arena_alloc_null},
    {"cllm_arena_alloc", "SIZE_MAX bytes", CLLM_EINVAL, r_arena_alloc_max},
    {"cllm_arena_alloc_aligned", "alignment 3", CLLM_EINVAL, r_arena_align3},
    {"cllm_arena_rewind", "mark of another arena", CLLM_EINVAL, r_arena_foreign},
    {"cllm_arena_rewind", "stale mark (taken before a reset)", CLLM_ESTATE, r_arena_stale},
    {"cllm_arena_reset", "NULL arena", CLLM_EINVAL, r_arena_reset_null},
    {"cllm_weights_create", "capacity 0", CLLM_EINVAL, r_w_create_zero},
    {"cllm_weights_create", "capacity SIZE_MAX", CLLM_EOVERFLOW, r_w_create_max},
    {"cllm_weights_alloc", "0 bytes", CLLM_EINVAL, r_w_zero},
    {"cllm_weights_alloc", "alignment 3", CLLM_EINVAL, r_w_align3},
    {"cllm_weights_alloc", "after seal", CLLM_ESTATE, r_w_sealed},
    {"cllm_weights_load_path", "missing file", CLLM_ENOTFOUND, r_w_missing},
    {"cllm_weights_load_path", "range past the end of the file", CLLM_ERANGE, r_w_past_end},
    {"cllm_weights_load_fd", "fd -1", CLLM_EINVAL, r_w_fd},
    {"cllm_weights_seal", "already sealed", CLLM_OK, r_w_seal_twice},
    {"cllm_kv_cache_create", "zero shape", CLLM_EINVAL, r_kv_create_shape},
    {"cllm_kv_cache_create", "block_tokens 3", CLLM_EINVAL, r_kv_create_bt},
    {"cllm_kv_cache_create", "dtype_bytes 0 (no default)", CLLM_EINVAL, r_kv_create_dtype0},
    {"cllm_kv_seq_open", "duplicate id", CLLM_EEXIST, r_kv_open_dup},
    {"cllm_kv_seq_open", "empty id", CLLM_EINVAL, r_kv_open_empty},
    {"cllm_kv_seq_find", "unknown id", CLLM_ENOTFOUND, r_kv_find},
    {"cllm_kv_seq_reserve", "0 tokens", CLLM_EINVAL, r_kv_reserve0},
    {"cllm_kv_seq_reserve", "more tokens than the cache holds", CLLM_ERANGE, r_kv_reserve_big},
    {"cllm_kv_seq_close", "closed twice", CLLM_ENOTFOUND, r_kv_close_twice},
    {"cllm_kv_block_layer", "block out of range", CLLM_ERANGE, r_kv_block},
    {"cllm_kv_put", "entry larger than the budget", CLLM_ERANGE, r_kv_put_big},
    {"cllm_kv_get", "unknown id", CLLM_ENOTFOUND, r_kv_get},
    {"cllm_kv_evict", "unknown id", CLLM_ENOTFOUND, r_kv_evict},
    {"cllm_kv_stats", "NULL out-pointer", CLLM_EINVAL, r_kv_stats},
};
#define N_ROWS ((int)(sizeof ROWS / sizeof ROWS[0]))

/* One table line per function, its cases in ROWS order: "| `f` | input: `STATUS`; ... |". */
static void markdown_line(int first, char *out, size_t cap) {
  size_t len = (size_t)snprintf(out, cap, "| `%s` | ", ROWS[first].function);
  const char *sep = "";
  for (int i = first; i < N_ROWS && len < cap; i++) {
    if (strcmp(ROWS[i].function, ROWS[first].function) != 0) continue;
    len += (size_t)snprintf(out + len, cap - len, "%s%s: `%s`", sep, ROWS[i].input,
                            cllm_status_name(ROWS[i].expect));
    sep = "; ";
  }
  if (len < cap) snprintf(out + len, cap - len, " |");
}

/* Is ROWS[i] the first row of its function? */
static bool first_of_function(int i) {
  for (int j = 0; j < i; j++)
    if (strcmp(ROWS[j].function, ROWS[i].function) == 0) return false;
  return true;
}

static void print_markdown(void) {
  printf("| function | bad input: result |\n|---|---|\n");
  char line[1024];
  for (int i = 0; i < N_ROWS; i++) {
    if (!first_of_function(i)) continue;
    markdown_line(i, line, sizeof line);
    printf("%s\n", line);
  }
}

/* README.md's Errors table must hold exactly the lines print_markdown prints. */
static void compare_readme(const char *path) {
  FILE *f = fopen(path, "r");
  MT_CHECK(f != NULL, "cannot open %s", path);
  char line[1024];
  bool in_errors = false;
  int seen[N_ROWS];
  memset(seen, 0, sizeof seen);
  int n_lines = 0;
  while (fgets(line, sizeof line, f) != NULL) {
    if (strncmp(line, "## ", 3) == 0) in_errors = strncmp(line, "## Errors", 9) == 0;
    if (!in_errors || strncmp(line, "| `cllm_", 8) != 0) continue;
    line[strcspn(line, "\n")] = 0;
    n_lines++;
    bool found = false;
    for (int i = 0; i < N_ROWS && !found; i++) {
      if (!first_of_function(i)) continue;
      char want[1024];
      markdown_line(i, want, sizeof want);
      if (strcmp(line, want) == 0) found = true, seen[i]++;
    }
    MT_CHECK(found, "README line not in the test's table (--markdown prints it): %s", line);
  }
  fclose(f);
  for (int i = 0; i < N_ROWS; i++)
    MT_CHECK(!first_of_function(i) || seen[i] == 1, "the line of %s is %s in README.md",
             ROWS[i].function, seen[i] ? "repeated" : "missing");
  printf("bad_input: README.md's Errors table matches the %d functions\n", n_lines);
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "--markdown") == 0) {
    print_markdown();
    return 0;
  }
  cllm_set_log_fn(cllm_log_discard, NULL);
  for (int i = 0; i < N_ROWS; i++) {
    fx_t f = fx_new();
    figures_t before = figures(&f);
    cllm_status_t rc = ROWS[i].run(&f);
    MT_CHECK(rc == ROWS[i].expect, "%s with %s: %s, documented %s", ROWS[i].function, ROWS[i].input,
             cllm_status_name(rc), cllm_status_name(ROWS[i].expect));
    figures_t after = figures(&f);
    /* Rows whose set-up changes state on purpose (a seal, a reset) still must
     * leave every figure the refused call could have moved as it was. */
    MT_CHECK(memcmp(before.mon, after.mon, sizeof before.mon) == 0, "%s with %s moved the monitor",
             ROWS[i].function, ROWS[i].input);
    MT_CHECK(before.w_used == after.w_used && before.kv_active == after.kv_active &&
                 before.kv_seqs == after.kv_seqs && before.kv_copy == after.kv_copy &&
                 before.arena_capacity == after.arena_capacity,
             "%s with %s changed an object", ROWS[i].function, ROWS[i].input);
    fx_check(&f);
    fx_free(&f);
  }
  printf("bad_input: %d rows hold\n", N_ROWS);
  const char *srcdir = getenv("TEST_SRCDIR"), *ws = getenv("TEST_WORKSPACE");
  char path[1024];
  if (srcdir != NULL && ws != NULL) snprintf(path, sizeof path, "%s/%s/README.md", srcdir, ws);
  else snprintf(path, sizeof path, "README.md");
  compare_readme(path);
  cllm_heaps_destroy(g_heaps);
  return 0;
}
