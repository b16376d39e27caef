/* stepsim: the library backend. Everything goes through cllm-mem's public API:
 *   weights   one cllm_weights_t sized from the preset (or --weights-bytes), filled
 *             (or loaded from --weights-file), sealed; NUMA interleave when there are
 *             several nodes, transparent huge pages, locking as --lock-weights says;
 *   KV        one paged cllm_kv_cache_t sized so that its footprint (full charge)
 *             fits the limit: open_with_prompt (prefix sharing), ensure per prefill
 *             chunk and decode token, the block table read in place, K/V rows
 *             addressed through the layer views, commit, close; preemption on, the
 *             eviction callback re-queues the preempted request;
 *   temps     one cllm_arena_t per worker thread: a mark per layer and per attention
 *             tile, reset at the end of each step;
 *   bookkeeping  request token arrays and block tables from cllm_heaps_t;
 *   all of it charged to the global monitor under --mem-limit (the KV cache's
 *             reclaimer gives cached blocks back when an arena must grow).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "stepsim.h"

#include <cllm/kv_redis.h>

static void on_evict(void *user, const char *id, cllm_kv_evict_reason_t reason) {
  if (reason == CLLM_KV_EVICT_PREEMPTED) ss_on_kv_preempted(user, id);
}

static int fail(const char *what, cllm_status_t rc) {
  fprintf(stderr, "stepsim: %s: %s (%s)\n", what, cllm_status_str(rc), cllm_status_name(rc));
  return -1;
}

/* Fill [p, p+n) with a deterministic pattern (the region is zero until written). */
static void fill_pattern(unsigned char *p, size_t n, uint64_t seed) {
  uint64_t *q = (uint64_t *)p;
  uint64_t x = ss_mix64(seed);
  for (size_t i = 0; i < n / 8; i++) q[i] = x + i * 0x9e3779b97f4a7c15ull;
}

static const char *kv_numa_name(cllm_kv_numa_t p) {
  switch (p) {
    case CLLM_KV_NUMA_AUTO: return "auto";
    case CLLM_KV_NUMA_LOCAL: return "local";
    case CLLM_KV_NUMA_BIND: return "bind";
    case CLLM_KV_NUMA_INTERLEAVE: return "interleave";
    case CLLM_KV_NUMA_NONE: return "none";
  }
  return "?";
}

/* Where the KV pools' pages are: move_pages(2) in query mode over every layer's K and
 * V pool, counted per node (pages never touched are "absent"). */
static void kv_pages_per_node(const ss_sim_t *s, ss_result_t *res) {
  res->kv_pages_nodes = s->nodes < 8 ? (s->nodes > 0 ? s->nodes : 1) : 8;
  long ps = sysconf(_SC_PAGESIZE);
  enum { BATCH = 512 };
  void *pages[BATCH];
  int status[BATCH];
  for (uint32_t l = 0; l < (uint32_t)s->cfg->model.layers; l++) {
    cllm_kv_layer_view_t lv;
    if (cllm_kv_layer_view(s->kv, l, &lv) != CLLM_OK) return;
    size_t bytes = (size_t)lv.num_blocks * lv.block_stride;
    for (int kv = 0; kv < 2; kv++) {
      uintptr_t lo = (uintptr_t)(kv ? lv.v : lv.k) & ~(uintptr_t)(ps - 1);
      size_t n_pages = ((uintptr_t)(kv ? lv.v : lv.k) + bytes - lo + (size_t)ps - 1) / (size_t)ps;
      for (size_t done = 0; done < n_pages;) {
        size_t n = n_pages - done < BATCH ? n_pages - done : BATCH;
        for (size_t i = 0; i < n; i++) pages[i] = (void *)(lo + (done + i) * (size_t)ps);
        if (syscall(SYS_move_pages, 0, (unsigned long)n, pages, NULL, status, 0) != 0) return;
        for (size_t i = 0; i < n; i++) {
          if (status[i] >= 0 && status[i] < res->kv_pages_nodes) res->kv_pages_per_node[status[i]]++;
          else res->kv_pages_absent++;
        }
        done += n;
      }
    }
  }
}

cllm_weights_config_t ss_lib_weights_config(const ss_config_t *c, int nodes) {
  cllm_weights_config_t wc = cllm_weights_config_default();
  wc.capacity_bytes = c->weights_bytes;
  wc.numa = nodes > 1 ? CLLM_WEIGHTS_NUMA_INTERLEAVE : CLLM_WEIGHTS_NUMA_LOCAL;
  if (c->weights_numa_given) wc.numa = c->weights_numa, wc.node = c->weights_node;
  wc.huge_pages = CLLM_WEIGHTS_HUGE_TRANSPARENT;
  wc.lock = c->lock;
  wc.reader_threads = c->threads;
  return wc;
}

cllm_kv_config_t ss_lib_kv_config(const ss_config_t *c) {
  cllm_kv_config_t kc = cllm_kv_config_default();
  if (c->kv_numa_given) kc.numa = c->kv_numa, kc.numa_node = c->kv_node;
  kc.layers = (uint32_t)c->model.layers;
  kc.kv_heads = (uint32_t)c->model.kv_heads;
  kc.head_dim = (uint32_t)c->model.head_dim;
  kc.dtype_bytes = (uint32_t)c->model.dtype_bytes;
  kc.block_tokens = (uint32_t)c->block_tokens;
  kc.preemption = true;
  kc.max_seqs = (size_t)c->requests + 64;
  return kc;
}

size_t ss_lib_seq_blocks(const ss_config_t *c) {
  return ((size_t)c->max_seq_len + (size_t)c->block_tokens - 1) / (size_t)c->block_tokens + 1;
}

cllm_arena_config_t ss_lib_arena_config(void) {
  cllm_arena_config_t ac = cllm_arena_config_default();
  /* give memory back after a run of decode-only steps (the KV cache can use it);
   * a prefill-heavy step grows the arena again, reclaiming cached KV if need be */
  ac.shrink_after_steps = 8;
  ac.shrink_fraction = 0.5;
  return ac;
}

static int setup_weights(ss_sim_t *s) {
  const ss_config_t *c = s->cfg;
  cllm_weights_config_t wc = ss_lib_weights_config(c, s->nodes);
  cllm_status_t rc = cllm_weights_create(&wc, &s->wh);
  if (rc != CLLM_OK) return fail("weights heap", rc);
  size_t done = 0;
  void *p = NULL;
  if (c->weights_file != NULL) {
    struct stat st;
    if (stat(c->weights_file, &st) != 0 || st.st_size <= 0) {
      fprintf(stderr, "stepsim: --weights-file %s: cannot stat or empty\n", c->weights_file);
      return -1;
    }
    size_t n = (size_t)st.st_size < c->weights_bytes ? (size_t)st.st_size : c->weights_bytes;
    n &= ~(size_t)63;
    if (n > 0) {
      rc = cllm_weights_load_path(s->wh, c->weights_file, 0, n, &p);
      if (rc != CLLM_OK) return fail("loading --weights-file", rc);
      done = n;
    }
  }
  /* the rest (or everything): tensors filled by hand */
  cllm_weights_stats_t st = {.struct_size = sizeof st};
  if (cllm_weights_stats(s->wh, &st) != CLLM_OK) return -1;
  size_t left = st.capacity_bytes - st.used_bytes;
  left &= ~(size_t)4095;
  if (left >= 4096) {
    void *q = NULL;
    rc = cllm_weights_alloc(s->wh, left, 4096, &q);
    if (rc != CLLM_OK) return fail("weights alloc", rc);
    fill_pattern(q, left, s->cfg->seed);
    if (p == NULL) p = q;
    done += left;
  }
  (void)done;
  rc = cllm_weights_seal(s->wh);
  if (rc != CLLM_OK) return fail("weights seal", rc);
  s->weights = cllm_weights_base(s->wh);
  return 0;
}

/* The largest KV cache whose full charge (cllm_kv_footprint) fits: with populate
 * (2 MiB commit steps per pool) within `budget_huge`, while that leaves room for
 * need_blocks, else committed by pages within `budget_pages`. 0, or -1 when not even
 * need_blocks fit. */
static int kv_fit_budget(cllm_kv_config_t *kc, size_t budget_huge, size_t budget_pages,
                         size_t need_blocks) {
  size_t block = 2u * (size_t)kc->layers * kc->block_tokens * kc->kv_heads * kc->head_dim *
                 kc->dtype_bytes;
  for (int populate = 1; populate >= 0; populate--) {
    size_t budget = populate ? budget_huge : budget_pages;
    kc->populate = populate;
    kc->capacity_blocks = budget / block;
    for (;;) {
      size_t fp = kc->capacity_blocks == 0 ? 0 : cllm_kv_footprint(kc);
      if (fp == 0 || fp <= budget) break;
      size_t over = (fp - budget + block - 1) / block;
      kc->capacity_blocks = over < kc->capacity_blocks ? kc->capacity_blocks - over : 0;
    }
    if (kc->capacity_blocks >= need_blocks) return 0;
  }
  return -1;
}

size_t ss_lib_full_temps(const ss_config_t *c) {
  cllm_arena_config_t ac = ss_lib_arena_config();
  ac.initial_bytes = ss_step_temps_full(c);
  size_t arena = cllm_arena_footprint(&ac);
  return ss_mul_sat((size_t)c->threads, arena == 0 ? SIZE_MAX : arena);
}

static int lib_setup(ss_sim_t *s) {
  const ss_config_t *c = s->cfg;
  if (setup_weights(s) != 0) return -1;

  cllm_heaps_config_t hc = cllm_heaps_config_default();
  hc.bytes_per_node = 64 * SS_MIB;
  cllm_status_t rc = cllm_heaps_create(&hc, &s->heaps);
  if (rc != CLLM_OK) return fail("NUMA heaps", rc);

  /* KV pool: what the limit leaves after the weights, the bookkeeping and the temps.
   * Committed by pages, the pool may take what a full step's temps would need
   * beyond a decode step's (max batch tokens over the workers): the step arenas
   * take theirs from the same monitor as they grow, and then the KV cache's
   * reclaimer gives FREE and CACHED blocks' pages back (the monitor arbitrates); an
   * arena that still cannot grow fails the step and the scheduler preempts the
   * youngest request. Committed in huge-page steps, the pool gives pages back only
   * in whole huge pages of FREE blocks (cllm/kv_cache.h): it is sized beside the
   * arenas at a full step, so that it never has to. */
  size_t used = cllm_monitor_used(s->mon, CLLM_CAT_COUNT);
  size_t temps = (size_t)c->threads * ss_step_temp_estimate(c, c->max_batch / c->threads + 1);
  size_t book = SS_BOOK_BYTES; /* request token arrays and block tables, heap batches */
  if (c->mem_limit <= used + temps + book) { /* main.c's up-front check should prevent it */
    char t[3][32];
    ss_fmt_bytes(t[0], sizeof t[0], c->mem_limit);
    ss_fmt_bytes(t[1], sizeof t[1], used);
    ss_fmt_bytes(t[2], sizeof t[2], temps);
    fprintf(stderr, "stepsim: the limit %s leaves no room for the KV cache (weights %s, temps %s)\n",
            t[0], t[1], t[2]);
    return -1;
  }
  cllm_kv_config_t kc = ss_lib_kv_config(c);
  kc.evict_fn = on_evict;
  kc.evict_user = s;
  /* the cache charges its committed pages: size it so that its full charge fits */
  size_t need_blocks = ss_lib_seq_blocks(c);
  size_t full = ss_lib_full_temps(c), left = c->mem_limit - used - book;
  if (kv_fit_budget(&kc, left > full ? left - full : 0, left - temps, need_blocks) != 0) {
    fprintf(stderr, "stepsim: the KV cache (%zu blocks) cannot hold one sequence of --max-seq-len %d; "
            "raise %s\n", kc.capacity_blocks, c->max_seq_len,
            c->mem_limit_given ? "--mem-limit" : "--kv-budget");
    return -1;
  }
  /* cllm/kv_cache.h "Residency": huge-page steps with populate, else pages */
  s->kv_granule = kc.populate ? 2 * SS_MIB : (size_t)sysconf(_SC_PAGESIZE);
  rc = cllm_kv_cache_create(&kc, &s->kv);
  if (rc != CLLM_OK) return fail("KV cache", rc);
  if (c->kv_store != NULL) {  /* --kv-store: a write-through tier on Redis */
    cllm_kv_redis_config_t rcfg = cllm_kv_redis_config_default();
    bool cluster = strncmp(c->kv_store, "cluster:", 8) == 0;
    rcfg.endpoint = cluster ? c->kv_store + 8 : c->kv_store;
    rcfg.cluster = cluster;
    cllm_kv_tier_config_t tc = cllm_kv_tier_config_default();
    if ((rc = cllm_kv_store_redis_create(&rcfg, &tc.store)) != CLLM_OK) return fail("--kv-store", rc);
    tc.model_id = c->model.name;
    tc.model_id_len = strlen(c->model.name);
    tc.write_through = true;
    if ((rc = cllm_kv_tier_create(s->kv, &tc, &s->tier)) != CLLM_OK) {
      tc.store.ops->close(tc.store.user);
      return fail("KV tier", rc);
    }
  }
  s->res->kv_num_blocks = cllm_kv_num_blocks(s->kv);
  s->res->kv_block_bytes = cllm_kv_block_bytes(s->kv);
  s->res->kv_capacity_bytes = s->res->kv_num_blocks * s->res->kv_block_bytes;
  return 0;
}

static void lib_teardown(ss_sim_t *s) {
  ss_result_t *res = s->res;
  if (s->kv != NULL) {
    cllm_kv_stats_t ks = {.struct_size = sizeof ks};
    if (cllm_kv_stats(s->kv, &ks) == CLLM_OK) {
      res->kv_final_free = ks.blocks_free;
      res->kv_final_active = ks.blocks_active;
      res->kv_final_cached = ks.blocks_cached;
      res->kv_final_bytes = ks.kv_bytes;
      res->prefix_query_tokens = ks.prefix_query_tokens;
      res->prefix_hit_tokens = ks.prefix_hit_tokens;
      res->evictions = ks.evictions;
      res->reclaimed_blocks = ks.reclaimed_blocks;
    }
    res->kv_final_monitor_bytes = cllm_monitor_used(s->mon, CLLM_CAT_KV);
    res->kv_check_ok = cllm_kv_check(s->kv) == CLLM_OK;
  }
  for (int i = 0; i < s->cfg->threads; i++) {
    cllm_arena_stats_t as = {.struct_size = sizeof as};
    if (s->workers[i].arena != NULL && cllm_arena_stats(s->workers[i].arena, &as) == CLLM_OK) {
      res->arena_high_water[i] = as.high_water_bytes;
      res->arena_capacity[i] = as.capacity_bytes;
      res->arena_resets[i] = as.resets;
      res->arena_spills[i] = as.spilled_steps;
    }
  }
  if (s->wh != NULL) {
    cllm_weights_stats_t ws = {.struct_size = sizeof ws};
    if (cllm_weights_stats(s->wh, &ws) == CLLM_OK) {
      res->weights_capacity = ws.capacity_bytes;
      res->weights_locked = ws.locked_bytes;
      res->weights_huge = ws.huge_bytes;
      res->weights_lock = cllm_weights_lock_name(ws.lock_requested);
      res->weights_lock_errno = ws.lock_errno;
      res->weights_numa = cllm_weights_numa_name(ws.numa_applied);
      res->weights_huge_mode = cllm_weights_huge_name(ws.huge_applied);
      res->weights_sealed = ws.sealed;
      int n = ws.pages_nodes < 8 ? ws.pages_nodes : 8;
      res->weights_pages_nodes = n;
      for (int i = 0; i < n; i++) res->weights_pages_per_node[i] = ws.pages_per_node[i];
    }
  }
  if (s->kv != NULL) {
    cllm_kv_stats_t ks = {.struct_size = sizeof ks};
    if (cllm_kv_stats(s->kv, &ks) == CLLM_OK) res->kv_numa = kv_numa_name(ks.numa_applied);
    kv_pages_per_node(s, res);
  }
  if (s->heaps != NULL) res->heap_mode = cllm_heap_mode_name(cllm_heaps_mode(s->heaps));
  if (s->cfg->metrics) res->metrics_text = ss_collect_metrics(s, false);
  if (s->cfg->json_path != NULL) res->stats_json = ss_collect_metrics(s, true);

  for (int i = 0; i < s->cfg->threads; i++) {
    cllm_arena_destroy(s->workers[i].arena);
    s->workers[i].arena = NULL;
  }
  if (s->tier != NULL) {  /* --kv-store: leave the store warm for the next run */
    cllm_status_t frc = cllm_kv_tier_flush(s->tier, 30000);
    if (frc != CLLM_OK)
      fprintf(stderr, "stepsim: --kv-store: blocks still unwritten at exit (%s)\n",
              cllm_status_name(frc));
    cllm_kv_tier_destroy(s->tier);
    s->tier = NULL;
  }
  cllm_kv_cache_destroy(s->kv);
  cllm_heaps_destroy(s->heaps);
  cllm_weights_destroy(s->wh);
  s->kv = NULL;
  s->heaps = NULL;
  s->wh = NULL;
}

char *ss_collect_metrics(ss_sim_t *s, bool json) {
  cllm_stats_kv_source_t kvs[1] = {{"kv", s->kv}};
  cllm_stats_arena_source_t ars[SS_MAX_THREADS];
  char names[SS_MAX_THREADS][24];
  int na = 0;
  for (int i = 0; i < s->cfg->threads; i++) {
    if (s->workers[i].arena == NULL) continue;
    snprintf(names[na], sizeof names[na], "worker%d", i);
    ars[na].name = names[na];
    ars[na].arena = s->workers[i].arena;
    na++;
  }
  cllm_stats_weights_source_t ws[1] = {{"model", s->wh}};
  cllm_stats_heaps_source_t hs[1] = {{"requests", s->heaps}};
  cllm_stats_sources_t src = cllm_stats_sources_default();
  src.monitor = s->mon;
  src.kv_caches = kvs;
  src.n_kv_caches = s->kv != NULL;
  src.arenas = ars;
  src.n_arenas = (size_t)na;
  src.weights = ws;
  src.n_weights = s->wh != NULL;
  src.heaps = hs;
  src.n_heaps = s->heaps != NULL;
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  if (f == NULL) return NULL;
  cllm_status_t rc = json ? cllm_stats_write_json(&src, cllm_stats_fwrite, f)
                          : cllm_stats_write_prometheus(&src, cllm_stats_fwrite, f);
  fclose(f);
  if (rc != CLLM_OK) {
    fprintf(stderr, "stepsim: stats writer: %s\n", cllm_status_str(rc));
    free(buf);
    return NULL;
  }
  return buf;
}

static void *lib_book_alloc(ss_sim_t *s, size_t bytes) { return cllm_heap_alloc(s->heaps, bytes); }
static void lib_book_free(ss_sim_t *s, void *p) { cllm_heap_free(s->heaps, p); }

static size_t blocks_of(size_t tokens, int bt) { return (tokens + (size_t)bt - 1) / (size_t)bt; }

/* Blocks the monitor's headroom lets the cache add: past the committed prefix every
 * pool grows by whole granules (one step charges a granule per pool), so headroom
 * short of a step adds nothing; given-back FREE blocks are charged again per block. */
static size_t blocks_by_headroom(const ss_sim_t *s, const cllm_kv_stats_t *ks, size_t headroom) {
  size_t pools = 2 * (size_t)s->cfg->model.layers, chunk = ks->block_bytes / pools;
  size_t g = s->kv_granule;
  size_t step_blocks = chunk >= g ? 1 : g / chunk;
  size_t step_bytes = (chunk >= g ? (chunk + g - 1) / g * g : g) * pools;
  size_t grow = headroom / step_bytes * step_blocks;
  size_t beyond = ks->num_blocks - ks->blocks_committed;
  if (grow > beyond) grow = beyond;
  size_t back = headroom / ks->block_bytes;
  if (back > ks->blocks_given_back) back = ks->blocks_given_back;
  return grow > back ? grow : back;
}

static bool lib_can_admit(ss_sim_t *s, ss_req_t *r) {
  cllm_kv_stats_t ks = {.struct_size = sizeof ks};
  if (cllm_kv_stats(s->kv, &ks) != CLLM_OK) return false;
  /* Headroom for new KV: what the limit leaves, minus what the arenas may need to
   * grow back to a full step (the larger of the estimate and the most they have
   * held: they shrink in decode-only phases). Blocks inside the committed prefix
   * (FREE with their pages, CACHED) need no charge; more need the headroom. */
  const ss_config_t *c = s->cfg;
  size_t limit = cllm_monitor_limit(s->mon), used = cllm_monitor_used(s->mon, CLLM_CAT_COUNT);
  size_t step_now = cllm_monitor_used(s->mon, CLLM_CAT_STEP);
  size_t step_full = (size_t)c->threads * ss_step_temp_estimate(c, c->max_step_tokens / c->threads + 1);
  size_t step_peak = cllm_monitor_peak(s->mon, CLLM_CAT_STEP); /* what they really took */
  if (step_peak > step_full) step_full = step_peak;
  size_t keep = step_full > step_now ? step_full - step_now : 0;
  size_t headroom = limit > used + keep ? limit - used - keep : 0;
  size_t ready = ks.blocks_committed - ks.blocks_active - ks.blocks_given_back;
  size_t avail = ready + blocks_by_headroom(s, &ks, headroom);
  /* the prompt, plus a watermark so running requests can still grow */
  size_t need = blocks_of((size_t)r->prompt_len + 1, s->cfg->block_tokens) + ks.num_blocks / 50 + 1;
  return avail >= need;
}

static void lib_release(ss_sim_t *s, ss_req_t *r);

static cllm_status_t lib_admit(ss_sim_t *s, ss_req_t *r) {
  char id[32];
  snprintf(id, sizeof id, "req-%d", r->id);
  size_t cap = blocks_of((size_t)s->cfg->max_seq_len, s->cfg->block_tokens) + 1;
  r->table = s->be->book_alloc(s, cap * sizeof *r->table);
  if (r->table == NULL) return cllm_last_status();
  r->table_cap = cap;
  r->table_n = 0;
  size_t cached = 0;
  cllm_status_t rc = cllm_kv_seq_open_with_prompt(s->kv, id, NULL, r->tokens, (size_t)r->prompt_len,
                                                  &r->seq, &cached);
  if (rc != CLLM_OK) {
    s->be->book_free(s, r->table);
    r->table = NULL;
    return rc;
  }
  r->seq_open = true;
  if (s->tier != NULL && r->prompt_len > 0) {  /* --kv-store: fetch what the store has */
    size_t avail = 0, ready = 0;
    if (cllm_kv_tier_probe(s->tier, r->seq, r->tokens, (size_t)r->prompt_len, &avail) == CLLM_OK &&
        avail > 0 &&
        cllm_kv_tier_fetch(s->tier, r->seq, r->tokens, (size_t)r->prompt_len, avail, &ready) == CLLM_OK) {
      cached += ready;
      s->res->prompt_tokens_remote += ready;
    }
  }
  r->prefilled = r->kv_len = (int)cached;
  s->res->prompt_tokens_cached += cached;
  if (cached > 0) {
    rc = cllm_kv_seq_block_table(s->kv, r->seq, r->table, r->table_cap, &r->table_n);
    if (rc != CLLM_OK) {
      s->res->prompt_tokens_cached -= cached;
      lib_release(s, r);
      return rc;
    }
  }
  return CLLM_OK;
}

/* Room for positions [kv_reserved, kv_reserved + n) in one call; the block table is
 * then read in place (no copy under the cache lock) into the request's copy, which
 * the workers read while the main thread reserves for other requests. */
static cllm_status_t lib_reserve(ss_sim_t *s, ss_req_t *r, int n) {
  cllm_status_t rc = cllm_kv_seq_ensure(s->kv, r->seq, (size_t)r->kv_reserved, (size_t)n, NULL);
  if (rc != CLLM_OK) return rc;
  const uint32_t *table;
  size_t nb;
  rc = cllm_kv_seq_table_view(s->kv, r->seq, &table, &nb);
  if (rc != CLLM_OK) return rc;
  if (nb > r->table_cap) return CLLM_ERANGE;
  memcpy(r->table, table, nb * sizeof *table);
  r->table_n = nb;
  return CLLM_OK;
}

static void lib_commit(ss_sim_t *s, ss_req_t *r, int n) {
  cllm_status_t rc = cllm_kv_seq_commit(s->kv, r->seq, r->tokens + r->kv_len, (size_t)n);
  if (rc != CLLM_OK) fprintf(stderr, "stepsim: commit: %s\n", cllm_status_str(rc));
}

static void lib_release(ss_sim_t *s, ss_req_t *r) {
  if (!r->seq_open) return;
  cllm_status_t rc = cllm_kv_seq_close(s->kv, r->seq);
  if (rc != CLLM_OK) fprintf(stderr, "stepsim: close: %s\n", cllm_status_str(rc));
  r->seq_open = false;
}

static void lib_touch(ss_sim_t *s, ss_req_t *r) {
  if (r->seq_open) CLLM_DISCARD(cllm_kv_seq_touch(s->kv, r->seq));
}

static void lib_snapshot(ss_sim_t *s, ss_row_t *row) {
  cllm_kv_stats_t ks = {.struct_size = sizeof ks};
  if (cllm_kv_stats(s->kv, &ks) != CLLM_OK) return;
  row->kv_active = ks.blocks_active;
  row->kv_cached = ks.blocks_cached;
  row->kv_free = ks.blocks_free;
  row->kv_util = ks.utilisation;
}

/* ---- worker side ------------------------------------------------------------------------- */

static int lib_worker_init(ss_worker_t *w) {
  /* with --weights-numa replicate: the copy on this worker's node (it is bound) */
  w->weights = cllm_weights_local(w->sim->wh);
  cllm_arena_config_t ac = ss_lib_arena_config();
  cllm_status_t rc = cllm_arena_create(&ac, &w->arena);
  if (rc != CLLM_OK) return fail("step arena", rc);
  return 0;
}

static void lib_worker_fini(ss_worker_t *w) { (void)w; /* destroyed in teardown, after stats */ }

static void *lib_temp_alloc(ss_worker_t *w, size_t bytes) { return cllm_arena_alloc(w->arena, bytes); }

static size_t lib_temp_mark(ss_worker_t *w) {
  size_t d = (size_t)w->n_live;
  if (d >= sizeof w->marks / sizeof w->marks[0]) return d;
  w->marks[d] = cllm_arena_mark(w->arena);
  w->n_live++;
  return d;
}

static void lib_temp_rewind(ss_worker_t *w, size_t d) {
  if (d < (size_t)w->n_live) {
    CLLM_DISCARD(cllm_arena_rewind(w->arena, w->marks[d]));
    w->n_live = (int)d;
  }
}

static void lib_step_end(ss_worker_t *w) {
  w->n_live = 0;
  CLLM_DISCARD(cllm_arena_reset(w->arena));
}

static void lib_kv_block(ss_worker_t *w, ss_req_t *r, int bi, int layer, unsigned char **k,
                         unsigned char **v) {
  cllm_kv_layer_view_t lv;  // the pool layout: no lock, no call per block in a kernel
  CLLM_DISCARD(cllm_kv_layer_view(w->sim->kv, (uint32_t)layer, &lv));
  *k = (unsigned char *)lv.k + (size_t)r->table[bi] * lv.block_stride;
  *v = (unsigned char *)lv.v + (size_t)r->table[bi] * lv.block_stride;
}

const ss_backend_t ss_backend_library = {
    .name = "library",
    .setup = lib_setup,
    .teardown = lib_teardown,
    .book_alloc = lib_book_alloc,
    .book_free = lib_book_free,
    .can_admit = lib_can_admit,
    .admit = lib_admit,
    .reserve = lib_reserve,
    .commit = lib_commit,
    .release = lib_release,
    .touch = lib_touch,
    .snapshot = lib_snapshot,
    .worker_init = lib_worker_init,
    .worker_fini = lib_worker_fini,
    .temp_alloc = lib_temp_alloc,
    .temp_mark = lib_temp_mark,
    .temp_rewind = lib_temp_rewind,
    .step_end = lib_step_end,
    .kv_block = lib_kv_block,
};
