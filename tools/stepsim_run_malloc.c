/* stepsim: the malloc backend, what runtimes without paging do, on the same
 * workload and under the same memory limit:
 *   weights   one malloc'd block, filled (or read from --weights-file);
 *   KV        one contiguous max-length buffer per request ([layer][K|V][max_seq_len]
 *             rows), malloc'd at admission: a request is admitted only when
 *             max_seq_len x per-token KV bytes fits under the limit; no prefix sharing;
 *   temps     malloc/free for every temp buffer (freed at the end of each layer and
 *             attention tile);
 *   bookkeeping  malloc.
 * Every byte is charged to the same global monitor (same categories) so the peaks
 * compare like for like; malloc's own overhead (headers, fragmentation) is not.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "stepsim.h"

/* Linking cllm-mem brings in Debian's libmimalloc, which replaces the process's
 * malloc (and the __libc_* aliases). This mode stands for what a runtime gets by
 * default, glibc's malloc, so it looks glibc's own functions up in libc.so.6. Under
 * a sanitizer it uses the process's malloc, which the sanitizer must see. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SYS_ALLOC_SANITIZED 1
#endif

static void *(*sys_malloc_fn)(size_t);
static void *(*sys_memalign_fn)(size_t, size_t);
static void (*sys_free_fn)(void *);
static pthread_once_t sys_once = PTHREAD_ONCE_INIT;

static void *plain_memalign(size_t align, size_t n) {
  void *p = NULL;
  return posix_memalign(&p, align, n) == 0 ? p : NULL;
}

static void sys_resolve(void) {
  sys_malloc_fn = malloc, sys_memalign_fn = plain_memalign, sys_free_fn = free;
#ifndef SYS_ALLOC_SANITIZED
  void *h = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
  void *m = h ? dlsym(h, "malloc") : NULL, *a = h ? dlsym(h, "memalign") : NULL,
       *f = h ? dlsym(h, "free") : NULL;
  if (m != NULL && a != NULL && f != NULL) {
    sys_malloc_fn = (void *(*)(size_t))m;
    sys_memalign_fn = (void *(*)(size_t, size_t))a;
    sys_free_fn = (void (*)(void *))f;
  }
#endif
}

static void *sys_malloc(size_t n) {
  pthread_once(&sys_once, sys_resolve);
  return sys_malloc_fn(n);
}
static void *sys_memalign(size_t align, size_t n) {
  pthread_once(&sys_once, sys_resolve);
  return sys_memalign_fn(align, n);
}
static void sys_free(void *p) {
  pthread_once(&sys_once, sys_resolve);
  sys_free_fn(p);
}

static size_t round64(size_t n) { return (n + 63) & ~(size_t)63; }

static size_t kvbuf_bytes(const ss_sim_t *s) {
  return 2 * (size_t)s->cfg->model.layers * (size_t)s->cfg->max_seq_len * s->row_bytes;
}

static size_t temp_margin(const ss_sim_t *s) {
  return (size_t)s->cfg->threads * ss_step_temps_full(s->cfg);
}

static int mal_setup(ss_sim_t *s) {
  const ss_config_t *c = s->cfg;
  size_t n = round64(c->weights_bytes);
  cllm_status_t rc = cllm_monitor_reserve(s->mon, CLLM_CAT_WEIGHTS, n);
  if (rc != CLLM_OK) {
    char t[32];
    ss_fmt_bytes(t, sizeof t, n);
    fprintf(stderr, "stepsim: malloc mode: the weights (%s) do not fit the limit\n", t);
    return -1;
  }
  s->mweights = sys_memalign(64, n);
  if (s->mweights == NULL) {
    CLLM_DISCARD(cllm_monitor_release(s->mon, CLLM_CAT_WEIGHTS, n));
    fprintf(stderr, "stepsim: malloc mode: out of memory for the weights\n");
    return -1;
  }
  s->mweights_bytes = n;
  size_t done = 0;
  if (c->weights_file != NULL) {
    FILE *f = fopen(c->weights_file, "rb");
    if (f != NULL) {
      done = fread(s->mweights, 1, n, f);
      fclose(f);
    }
  }
  uint64_t *q = (uint64_t *)(s->mweights + (done & ~(size_t)7));
  uint64_t x = ss_mix64(c->seed);
  for (size_t i = 0; i < (n - (done & ~(size_t)7)) / 8; i++) q[i] = x + i * 0x9e3779b97f4a7c15ull;
  s->weights = s->mweights;
  s->res->kv_block_bytes = (size_t)c->block_tokens * s->kv_token_bytes;
  return 0;
}

static void mal_teardown(ss_sim_t *s) {
  ss_result_t *res = s->res;
  res->weights_capacity = s->mweights_bytes;
  res->weights_lock = "off";
  res->weights_numa = "first-touch";
  res->weights_huge_mode = "off";
  res->heap_mode = "malloc";
  res->kv_check_ok = true;
  res->kv_final_monitor_bytes = cllm_monitor_used(s->mon, CLLM_CAT_KV);
  for (int i = 0; i < s->cfg->threads; i++) {
    res->arena_high_water[i] = s->workers[i].temp_high_water;
    res->temp_allocs += s->workers[i].temp_allocs;
  }
  /* only the monitor is there to report (what malloc does is invisible to it) */
  if (s->cfg->metrics) res->metrics_text = ss_collect_metrics(s, false);
  sys_free(s->mweights);
  s->mweights = NULL;
  CLLM_DISCARD(cllm_monitor_release(s->mon, CLLM_CAT_WEIGHTS, s->mweights_bytes));
  if (s->mbook_bytes != 0) fprintf(stderr, "stepsim: malloc mode leaked %zu bookkeeping bytes\n", s->mbook_bytes);
}

/* Bookkeeping: a 16-byte header keeps the size so free can release it exactly. */
static void *mal_book_alloc(ss_sim_t *s, size_t bytes) {
  if (cllm_monitor_reserve(s->mon, CLLM_CAT_HEAP, bytes + 16) != CLLM_OK) return NULL;
  unsigned char *p = sys_malloc(bytes + 16);
  if (p == NULL) {
    CLLM_DISCARD(cllm_monitor_release(s->mon, CLLM_CAT_HEAP, bytes + 16));
    return NULL;
  }
  memcpy(p, &bytes, sizeof bytes);
  s->mbook_bytes += bytes + 16;
  return p + 16;
}

static void mal_book_free(ss_sim_t *s, void *q) {
  if (q == NULL) return;
  unsigned char *p = (unsigned char *)q - 16;
  size_t bytes;
  memcpy(&bytes, p, sizeof bytes);
  sys_free(p);
  s->mbook_bytes -= bytes + 16;
  CLLM_DISCARD(cllm_monitor_release(s->mon, CLLM_CAT_HEAP, bytes + 16));
}

static bool mal_can_admit(ss_sim_t *s, ss_req_t *r) {
  (void)r;
  size_t limit = cllm_monitor_limit(s->mon), used = cllm_monitor_used(s->mon, CLLM_CAT_COUNT);
  size_t need = kvbuf_bytes(s) + temp_margin(s);
  return limit == 0 || (used < limit && limit - used >= need);
}

static cllm_status_t mal_admit(ss_sim_t *s, ss_req_t *r) {
  size_t n = kvbuf_bytes(s);
  cllm_status_t rc = cllm_monitor_reserve(s->mon, CLLM_CAT_KV, n);
  if (rc != CLLM_OK) return rc;
  r->kvbuf = sys_malloc(n); /* not zeroed: pages are touched as tokens are written */
  if (r->kvbuf == NULL) {
    CLLM_DISCARD(cllm_monitor_release(s->mon, CLLM_CAT_KV, n));
    return CLLM_ENOMEM;
  }
  r->kvbuf_bytes = n;
  r->prefilled = r->kv_len = 0;
  return CLLM_OK;
}

static cllm_status_t mal_reserve(ss_sim_t *s, ss_req_t *r, int n) {
  return r->kv_len + n <= s->cfg->max_seq_len ? CLLM_OK : CLLM_ERANGE;
}

static void mal_commit(ss_sim_t *s, ss_req_t *r, int n) { (void)s, (void)r, (void)n; }
static void mal_touch(ss_sim_t *s, ss_req_t *r) { (void)s, (void)r; }

static void mal_release(ss_sim_t *s, ss_req_t *r) {
  if (r->kvbuf == NULL) return;
  sys_free(r->kvbuf);
  r->kvbuf = NULL;
  CLLM_DISCARD(cllm_monitor_release(s->mon, CLLM_CAT_KV, r->kvbuf_bytes));
  r->kvbuf_bytes = 0;
}

/* KV columns for malloc mode: tokens stored (in block-equivalents) as "active",
 * reserved but unused slots as "free", nothing cached. Step temps: malloc'd temps are
 * all freed by the end of a step, so the row holds the step's high-water over the
 * workers instead (the library's arenas hold theirs between steps). */
static void mal_snapshot(ss_sim_t *s, ss_row_t *row) {
  size_t temps = 0;
  for (int i = 0; i < s->cfg->threads; i++) { /* the workers wait at the barrier */
    temps += s->workers[i].step_temp_high;
    s->workers[i].step_temp_high = 0;
  }
  row->mem[CLLM_CAT_STEP] = temps;
  int bt = s->cfg->block_tokens;
  size_t used = 0, reserved = 0, tokens = 0;
  for (int i = 0; i < s->n_running; i++) {
    const ss_req_t *r = s->running[i];
    used += ((size_t)r->kv_len + (size_t)bt - 1) / (size_t)bt;
    reserved += ((size_t)s->cfg->max_seq_len + (size_t)bt - 1) / (size_t)bt;
    tokens += (size_t)r->kv_len;
  }
  row->kv_active = used;
  row->kv_cached = 0;
  row->kv_free = reserved - used;
  row->kv_util = s->n_running > 0 ? (double)tokens / ((double)s->n_running * s->cfg->max_seq_len) : 1.0;
}

/* ---- worker side ---------------------------------------------------------------------------- */

static int mal_worker_init(ss_worker_t *w) {
  w->n_live = 0;
  return 0;
}

static void mal_worker_fini(ss_worker_t *w) { (void)w; }

static void *mal_temp_alloc(ss_worker_t *w, size_t bytes) {
  ss_sim_t *s = w->sim;
  if (w->n_live >= (int)(sizeof w->live / sizeof w->live[0])) return NULL;
  size_t n = round64(bytes ? bytes : 1);
  if (cllm_monitor_reserve(s->mon, CLLM_CAT_STEP, n) != CLLM_OK) return NULL;
  void *p = sys_memalign(64, n);
  if (p == NULL) {
    CLLM_DISCARD(cllm_monitor_release(s->mon, CLLM_CAT_STEP, n));
    return NULL;
  }
  w->live[w->n_live] = p;
  w->live_bytes[w->n_live] = n;
  w->n_live++;
  w->temp_allocs++;
  w->temp_in_use += n;
  if (w->temp_in_use > w->temp_high_water) w->temp_high_water = w->temp_in_use;
  if (w->temp_in_use > w->step_temp_high) w->step_temp_high = w->temp_in_use;
  return p;
}

static size_t mal_temp_mark(ss_worker_t *w) { return (size_t)w->n_live; }

static void mal_temp_rewind(ss_worker_t *w, size_t mark) {
  while ((size_t)w->n_live > mark) {
    w->n_live--;
    sys_free(w->live[w->n_live]);
    CLLM_DISCARD(cllm_monitor_release(w->sim->mon, CLLM_CAT_STEP, w->live_bytes[w->n_live]));
    w->temp_in_use -= w->live_bytes[w->n_live];
  }
}

static void mal_step_end(ss_worker_t *w) { mal_temp_rewind(w, 0); }

static void mal_kv_block(ss_worker_t *w, ss_req_t *r, int bi, int layer, unsigned char **k,
                         unsigned char **v) {
  const ss_sim_t *s = w->sim;
  size_t per = (size_t)s->cfg->max_seq_len * s->row_bytes;
  size_t off = (size_t)bi * (size_t)s->cfg->block_tokens * s->row_bytes;
  *k = r->kvbuf + (size_t)(2 * layer) * per + off;
  *v = r->kvbuf + (size_t)(2 * layer + 1) * per + off;
}

const ss_backend_t ss_backend_malloc = {
    .name = "malloc",
    .setup = mal_setup,
    .teardown = mal_teardown,
    .book_alloc = mal_book_alloc,
    .book_free = mal_book_free,
    .can_admit = mal_can_admit,
    .admit = mal_admit,
    .reserve = mal_reserve,
    .commit = mal_commit,
    .release = mal_release,
    .touch = mal_touch,
    .snapshot = mal_snapshot,
    .worker_init = mal_worker_init,
    .worker_fini = mal_worker_fini,
    .temp_alloc = mal_temp_alloc,
    .temp_mark = mal_temp_mark,
    .temp_rewind = mal_temp_rewind,
    .step_end = mal_step_end,
    .kv_block = mal_kv_block,
};
