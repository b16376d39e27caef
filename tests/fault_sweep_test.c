/* //tests:fault_sweep_test: for every public create/alloc/load/reserve call, fail
 * the 1st, 2nd, ... fallible operation in turn (lib/internal/fault.h) until the call
 * succeeds (libuv's OOM sweep, SQLite's faultsim). At every step: the status is one
 * the header documents, the object is unchanged (its check passes and its figures
 * equal those before the call), the private monitor balances to zero once the
 * objects are destroyed, and -- under --config=asan, whose leak checker runs at the
 * exit of each test process -- nothing leaked.
 *
 * A failure the library absorbs by design (transparent huge pages refused, a
 * degraded heap mode, ...) may return CLLM_OK with a failure injected; the sweep
 * then moves on to the next N. */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <stdbool.h>
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

#include "lib/internal/fault.h"
#include "support/fixtures.h"

#define MAX_N 400

typedef struct sweep_ctx {
  cllm_monitor_t *mon;
  void *obj;   /* the object under test (created by setup, or by the call) */
  void *aux;   /* a second object or a pointer the call returns */
  void *aux2;
  size_t before[8]; /* figures taken before the call */
  char path[64];
} sweep_ctx_t;

typedef struct sweep_case {
  void (*setup)(sweep_ctx_t *c);  /* runs with no fault armed; may be NULL */
  cllm_status_t (*call)(sweep_ctx_t *c);
  void (*unchanged)(sweep_ctx_t *c); /* after a failed call */
  void (*teardown)(sweep_ctx_t *c);  /* destroys whatever exists */
  cllm_status_t allowed[6];          /* documented failure statuses (0-terminated) */
} sweep_case_t;

static bool allowed(const sweep_case_t *sc, cllm_status_t rc) {
  for (int i = 0; i < 6 && sc->allowed[i] != CLLM_OK; i++)
    if (sc->allowed[i] == rc) return true;
  return false;
}

/* Returns the N at which the call first succeeded with nothing injected. */
static unsigned long sweep(const sweep_case_t *sc) {
  cllm_set_log_fn(cllm_log_discard, NULL);
  for (unsigned long n = 1; n <= MAX_N; n++) {
    sweep_ctx_t c;
    memset(&c, 0, sizeof c);
    c.mon = mk_monitor(0);
    if (sc->setup != NULL) sc->setup(&c);
    cllm_fault_reset();
    cllm_fault_arm_any(n);
    cllm_status_t rc = sc->call(&c);
    unsigned long injected = cllm_fault_injected();
    cllm_fault_reset();
    bool done = injected == 0;
    if (done) cr_assert_eq(rc, CLLM_OK, "no fault injected at N=%lu but %s", n, cllm_status_name(rc));
    else if (rc != CLLM_OK) {
      cr_assert(allowed(sc, rc), "N=%lu: undocumented status %s", n, cllm_status_name(rc));
      sc->unchanged(&c);
    }
    sc->teardown(&c);
    for (int cat = 0; cat <= CLLM_CAT_COUNT; cat++)
      cr_assert_eq(cllm_monitor_used(c.mon, (cllm_category_t)cat), 0,
                   "N=%lu: the monitor still holds %zu bytes in %d", n,
                   cllm_monitor_used(c.mon, (cllm_category_t)cat), cat);
    cr_assert_eq(cllm_monitor_check(c.mon), CLLM_OK);
    cllm_monitor_destroy(c.mon);
    if (done) return n;
  }
  cr_assert(false, "the call never succeeded within %d injected failures", MAX_N);
  return 0;
}

/* ---- monitor ----------------------------------------------------------------------- */

static cllm_status_t call_monitor_create(sweep_ctx_t *c) {
  return cllm_monitor_create(NULL, (cllm_monitor_t **)&c->obj);
}
static void unchanged_out_null(sweep_ctx_t *c) { cr_assert_null(c->obj, "*out not NULL on error"); }
static void teardown_monitor(sweep_ctx_t *c) { cllm_monitor_destroy(c->obj); }

Test(fault_sweep, monitor_create) {
  sweep_case_t sc = {NULL, call_monitor_create, unchanged_out_null, teardown_monitor, {CLLM_ENOMEM}};
  sweep(&sc);
}

static cllm_status_t call_monitor_reserve(sweep_ctx_t *c) {
  return cllm_monitor_reserve(c->mon, CLLM_CAT_KV, 4096);
}
static void unchanged_monitor(sweep_ctx_t *c) { cr_assert_eq(cllm_monitor_used(c->mon, CLLM_CAT_COUNT), 0); }
static void teardown_reserve(sweep_ctx_t *c) {
  if (cllm_monitor_used(c->mon, CLLM_CAT_KV) != 0)
    cr_assert_eq(cllm_monitor_release(c->mon, CLLM_CAT_KV, 4096), CLLM_OK);
}

Test(fault_sweep, monitor_reserve) {
  sweep_case_t sc = {NULL, call_monitor_reserve, unchanged_monitor, teardown_reserve, {CLLM_ELIMIT}};
  sweep(&sc);
}

/* ---- topology ------------------------------------------------------------------------ */

static cllm_status_t call_topology_create(sweep_ctx_t *c) {
  cllm_topology_config_t cfg = cllm_topology_config_default();
  cfg.synthetic = "pack:2 numa:1 core:2 pu:1";
  return cllm_topology_create(&cfg, (cllm_topology_t **)&c->obj);
}
static void teardown_topology(sweep_ctx_t *c) { cllm_topology_destroy(c->obj); }

Test(fault_sweep, topology_create) {
  sweep_case_t sc = {NULL, call_topology_create, unchanged_out_null, teardown_topology, {CLLM_ENOMEM}};
  sweep(&sc);
}

/* ---- heaps ---------------------------------------------------------------------------- */

static cllm_status_t call_heaps_create(sweep_ctx_t *c) {
  cllm_heaps_config_t cfg = cllm_heaps_config_default();
  cfg.bytes_per_node = 32u << 20;
  cfg.monitor = c->mon;
  cfg.allow_plain = false;
  return cllm_heaps_create(&cfg, (cllm_heaps_t **)&c->obj);
}
static void teardown_heaps(sweep_ctx_t *c) { cllm_heaps_destroy(c->obj); }

Test(fault_sweep, heaps_create) {
  sweep_case_t sc = {NULL, call_heaps_create, unchanged_out_null, teardown_heaps,
                     {CLLM_ENOMEM, CLLM_ESYS, CLLM_ENOTSUP}};
  sweep(&sc);
}

static void setup_heaps(sweep_ctx_t *c) {
  cr_assert_eq(call_heaps_create(c), CLLM_OK);
  cllm_heaps_stats_t st = {.struct_size = sizeof st};
  cr_assert_eq(cllm_heaps_stats(c->obj, &st), CLLM_OK);
  c->before[0] = st.node[0].bytes_in_use;
}
static cllm_status_t call_heap_alloc(sweep_ctx_t *c) {
  c->aux = cllm_heap_alloc(c->obj, 1000);
  return c->aux != NULL ? CLLM_OK : cllm_last_status();
}
static void unchanged_heap(sweep_ctx_t *c) {
  cr_assert_null(c->aux);
  cllm_heaps_stats_t st = {.struct_size = sizeof st};
  cr_assert_eq(cllm_heaps_stats(c->obj, &st), CLLM_OK);
  cr_assert_eq(st.node[0].bytes_in_use, c->before[0]);
  cr_assert_eq(cllm_heaps_check(c->obj), CLLM_OK);
  /* still usable */
  void *p = cllm_heap_alloc(c->obj, 64);
  cr_assert_not_null(p);
  cllm_heap_free(c->obj, p);
}
static void teardown_heap_alloc(sweep_ctx_t *c) {
  cllm_heap_free(c->obj, c->aux);
  cr_assert_eq(cllm_heap_thread_flush(c->obj), CLLM_OK);
  cllm_heaps_destroy(c->obj);
}

Test(fault_sweep, heap_alloc) {
  sweep_case_t sc = {setup_heaps, call_heap_alloc, unchanged_heap, teardown_heap_alloc,
                     {CLLM_ENOMEM, CLLM_ELIMIT}};
  sweep(&sc);
}

/* ---- arenas --------------------------------------------------------------------------- */

static cllm_status_t call_arena_create(sweep_ctx_t *c) {
  cllm_arena_config_t cfg = cllm_arena_config_default();
  cfg.initial_bytes = 4u << 20;
  cfg.monitor = c->mon;
  return cllm_arena_create(&cfg, (cllm_arena_t **)&c->obj);
}
static void teardown_arena(sweep_ctx_t *c) { cllm_arena_destroy(c->obj); }

Test(fault_sweep, arena_create) {
  sweep_case_t sc = {NULL, call_arena_create, unchanged_out_null, teardown_arena,
                     {CLLM_ENOMEM, CLLM_ELIMIT}};
  sweep(&sc);
}

static void arena_figures(cllm_arena_t *a, size_t *f) {
  cllm_arena_stats_t st = {.struct_size = sizeof st};
  cr_assert_eq(cllm_arena_stats(a, &st), CLLM_OK);
  f[0] = st.capacity_bytes, f[1] = st.chunks, f[2] = st.bytes_in_use;
}
static void setup_arena(sweep_ctx_t *c) {
  cllm_arena_config_t cfg = cllm_arena_config_default();
  cfg.initial_bytes = 2u << 20;
  cfg.monitor = c->mon;
  cr_assert_eq(cllm_arena_create(&cfg, (cllm_arena_t **)&c->obj), CLLM_OK);
  c->aux2 = cllm_arena_alloc(c->obj, 1536u << 10);
  cr_assert_not_null(c->aux2);
  memset(c->aux2, 0x5A, 1536u << 10);
  arena_figures(c->obj, c->before);
}
static cllm_status_t call_arena_grow(sweep_ctx_t *c) {
  c->aux = cllm_arena_alloc(c->obj, 3u << 20); /* does not fit: a new chunk */
  return c->aux != NULL ? CLLM_OK : cllm_last_status();
}
static void unchanged_arena(sweep_ctx_t *c) {
  size_t now[3];
  arena_figures(c->obj, now);
  cr_assert_eq(now[0], c->before[0], "capacity changed");
  cr_assert_eq(now[1], c->before[1], "chunks changed");
  cr_assert_eq(now[2], c->before[2], "bytes in use changed");
  cr_assert_eq(cllm_arena_check(c->obj), CLLM_OK);
  const unsigned char *p = c->aux2;
  cr_assert(p[0] == 0x5A && p[(1536u << 10) - 1] == 0x5A, "earlier allocation changed");
  void *q = cllm_arena_alloc(c->obj, 1024); /* still usable in its chunk */
  cr_assert_not_null(q);
}

Test(fault_sweep, arena_alloc_new_chunk) {
  sweep_case_t sc = {setup_arena, call_arena_grow, unchanged_arena, teardown_arena,
                     {CLLM_ENOMEM, CLLM_ELIMIT}};
  sweep(&sc);
}

static cllm_status_t call_arena_reserve(sweep_ctx_t *c) { return cllm_arena_reserve(c->obj, 16u << 20); }

Test(fault_sweep, arena_reserve) {
  sweep_case_t sc = {setup_arena, call_arena_reserve, unchanged_arena, teardown_arena,
                     {CLLM_ENOMEM, CLLM_ELIMIT}};
  sweep(&sc);
}

/* ---- weights -------------------------------------------------------------------------- */

static cllm_status_t call_weights_create(sweep_ctx_t *c) {
  cllm_weights_config_t cfg = cllm_weights_config_default();
  cfg.capacity_bytes = 4u << 20;
  cfg.numa = CLLM_WEIGHTS_NUMA_BIND;
  cfg.node = 0;
  cfg.lock = geteuid() == 0 ? CLLM_WEIGHTS_LOCK_REQUIRED : CLLM_WEIGHTS_LOCK_OFF;
  cfg.monitor = c->mon;
  return cllm_weights_create(&cfg, (cllm_weights_t **)&c->obj);
}
static void teardown_weights(sweep_ctx_t *c) {
  cllm_weights_destroy(c->obj);
  if (c->path[0]) unlink(c->path);
}

Test(fault_sweep, weights_create) {
  sweep_case_t sc = {NULL, call_weights_create, unchanged_out_null, teardown_weights,
                     {CLLM_ENOMEM, CLLM_ESYS, CLLM_ENOTSUP, CLLM_ELIMIT}};
  sweep(&sc);
}

static void setup_weights(sweep_ctx_t *c) {
  cr_assert_eq(call_weights_create(c), CLLM_OK);
  snprintf(c->path, sizeof c->path, "/tmp/cllm-sweep-%d.bin", (int)getpid());
  FILE *f = fopen(c->path, "wb");
  cr_assert_not_null(f);
  for (int i = 0; i < (1 << 20); i++) fputc(i * 7 + 1, f);
  fclose(f);
  cllm_weights_stats_t st = {.struct_size = sizeof st};
  cr_assert_eq(cllm_weights_stats(c->obj, &st), CLLM_OK);
  c->before[0] = st.used_bytes;
}
static cllm_status_t call_weights_load(sweep_ctx_t *c) {
  return cllm_weights_load_path(c->obj, c->path, 0, 1u << 20, &c->aux);
}
static void unchanged_weights(sweep_ctx_t *c) {
  cr_assert_null(c->aux);
  cllm_weights_stats_t st = {.struct_size = sizeof st};
  cr_assert_eq(cllm_weights_stats(c->obj, &st), CLLM_OK);
  cr_assert_eq(st.used_bytes, c->before[0], "used changed");
  cr_assert_eq(cllm_weights_check(c->obj), CLLM_OK);
  /* the bytes the load would have used are zero again */
  const unsigned char *base = cllm_weights_base(c->obj);
  for (size_t i = 0; i < (1u << 20); i += 4093) cr_assert_eq(base[c->before[0] + i], 0);
}

Test(fault_sweep, weights_load) {
  sweep_case_t sc = {setup_weights, call_weights_load, unchanged_weights, teardown_weights,
                     {CLLM_ESYS, CLLM_EIO, CLLM_ENOMEM, CLLM_ENOTFOUND}};
  sweep(&sc);
}

static void setup_weights_alloc(sweep_ctx_t *c) {
  cr_assert_eq(call_weights_create(c), CLLM_OK);
  cr_assert_eq(cllm_weights_alloc(c->obj, 4096, 0, &c->aux2), CLLM_OK);
  memset(c->aux2, 0x77, 4096);
}
static cllm_status_t call_weights_seal(sweep_ctx_t *c) { return cllm_weights_seal(c->obj); }
static void unchanged_seal(sweep_ctx_t *c) {
  cllm_weights_stats_t st = {.struct_size = sizeof st};
  cr_assert_eq(cllm_weights_stats(c->obj, &st), CLLM_OK);
  cr_assert(!st.sealed);
  memset(c->aux2, 0x78, 4096); /* still writable: no fault */
  void *p;
  cr_assert_eq(cllm_weights_alloc(c->obj, 64, 0, &p), CLLM_OK);
}

Test(fault_sweep, weights_seal) {
  sweep_case_t sc = {setup_weights_alloc, call_weights_seal, unchanged_seal, teardown_weights,
                     {CLLM_ESYS, CLLM_ENOMEM}};
  sweep(&sc);
}

/* alloc commits its pages (create commits none): a failed commit leaves it unchanged. */
static void setup_weights_created(sweep_ctx_t *c) { cr_assert_eq(call_weights_create(c), CLLM_OK); }
static cllm_status_t call_weights_alloc(sweep_ctx_t *c) {
  return cllm_weights_alloc(c->obj, 3 * 4096, 0, &c->aux2);
}
static void unchanged_alloc(sweep_ctx_t *c) {
  cr_assert_null(c->aux2);
  cllm_weights_stats_t st = {.struct_size = sizeof st};
  cr_assert_eq(cllm_weights_stats(c->obj, &st), CLLM_OK);
  cr_assert_eq(st.used_bytes, 0);
  cr_assert_eq(cllm_weights_check(c->obj), CLLM_OK);
}

Test(fault_sweep, weights_alloc) {
  sweep_case_t sc = {setup_weights_created, call_weights_alloc, unchanged_alloc, teardown_weights,
                     {CLLM_ENOMEM}};
  sweep(&sc);
}

/* ---- KV cache ------------------------------------------------------------------------- */

static cllm_kv_config_t kv_cfg(cllm_monitor_t *m) {
  cllm_kv_config_t cfg = cllm_kv_config_default();
  cfg.layers = 2, cfg.kv_heads = 2, cfg.head_dim = 32, cfg.dtype_bytes = 2;
  cfg.capacity_blocks = 256;
  cfg.numa_node = 0;
  cfg.monitor = m;
  return cfg;
}
static cllm_status_t call_kv_create(sweep_ctx_t *c) {
  cllm_kv_config_t cfg = kv_cfg(c->mon);
  return cllm_kv_cache_create(&cfg, (cllm_kv_cache_t **)&c->obj);
}
static void teardown_kv(sweep_ctx_t *c) { cllm_kv_cache_destroy(c->obj); }

Test(fault_sweep, kv_cache_create) {
  sweep_case_t sc = {NULL, call_kv_create, unchanged_out_null, teardown_kv,
                     {CLLM_ENOMEM, CLLM_ESYS, CLLM_ENOTSUP, CLLM_EBUSY}};
  sweep(&sc);
}

static void setup_kv(sweep_ctx_t *c) { cr_assert_eq(call_kv_create(c), CLLM_OK); }
static cllm_status_t call_kv_open(sweep_ctx_t *c) {
  cllm_kv_seq_t s;
  return cllm_kv_seq_open(c->obj, "request-1", NULL, &s);
}
static void unchanged_kv_open(sweep_ctx_t *c) {
  cllm_kv_seq_t s;
  cr_assert_eq(cllm_kv_seq_find(c->obj, "request-1", &s), CLLM_ENOTFOUND);
  cr_assert_eq(cllm_kv_check(c->obj), CLLM_OK);
}

Test(fault_sweep, kv_seq_open) {
  sweep_case_t sc = {setup_kv, call_kv_open, unchanged_kv_open, teardown_kv, {CLLM_ENOMEM}};
  sweep(&sc);
}

static void setup_kv_seq(sweep_ctx_t *c) {
  setup_kv(c);
  cllm_kv_seq_t *s = malloc(sizeof *s);
  cr_assert_not_null(s);
  cr_assert_eq(cllm_kv_seq_open(c->obj, "request-1", NULL, s), CLLM_OK);
  c->aux2 = s;
}
static cllm_status_t call_kv_reserve(sweep_ctx_t *c) {
  cllm_kv_loc_t loc[40];
  return cllm_kv_seq_reserve(c->obj, *(cllm_kv_seq_t *)c->aux2, 40, loc);
}
static void unchanged_kv_reserve(sweep_ctx_t *c) {
  size_t len = 99;
  cr_assert_eq(cllm_kv_seq_length(c->obj, *(cllm_kv_seq_t *)c->aux2, &len), CLLM_OK);
  cr_assert_eq(len, 0);
  cllm_kv_stats_t st = {.struct_size = sizeof st};
  cr_assert_eq(cllm_kv_stats(c->obj, &st), CLLM_OK);
  cr_assert_eq(st.blocks_active, 0);
  cr_assert_eq(cllm_monitor_used(c->mon, CLLM_CAT_KV), 0);
  cr_assert_eq(cllm_kv_check(c->obj), CLLM_OK);
}
static void teardown_kv_seq(sweep_ctx_t *c) {
  free(c->aux2);
  cllm_kv_cache_destroy(c->obj);
}

Test(fault_sweep, kv_seq_reserve) {
  sweep_case_t sc = {setup_kv_seq, call_kv_reserve, unchanged_kv_reserve, teardown_kv_seq,
                     {CLLM_ENOMEM, CLLM_ELIMIT}};
  sweep(&sc);
}

static cllm_status_t call_kv_put(sweep_ctx_t *c) {
  static float k[3000], v[3000];
  return cllm_kv_put(c->obj, "entry", k, 3000, v, 3000);
}
static void unchanged_kv_put(sweep_ctx_t *c) {
  size_t nk, nv;
  cr_assert_eq(cllm_kv_get(c->obj, "entry", NULL, 0, &nk, NULL, 0, &nv), CLLM_ENOTFOUND);
  cr_assert_eq(cllm_kv_used_bytes(c->obj), 0);
  cr_assert_eq(cllm_kv_check(c->obj), CLLM_OK);
}

Test(fault_sweep, kv_put) {
  sweep_case_t sc = {setup_kv, call_kv_put, unchanged_kv_put, teardown_kv,
                     {CLLM_ENOMEM, CLLM_ELIMIT}};
  sweep(&sc);
}
