/* stepsim: requests, the continuous-batching scheduler, the worker threads and their
 * compute pass, progress.
 *
 * One run (ss_run) = set up a backend (library or malloc), generate the requests
 * from the seeded distributions, start the workers, then loop over steps until every
 * request has finished:
 *   plan    (main thread) running requests first, oldest first: one decode token
 *           each, or their next prefill chunk within the step's token budget; then
 *           admit waiting requests (FCFS) while the batch and the budget allow and the
 *           backend says the KV fits. Every new token's KV is reserved here. When a
 *           reservation is refused the youngest running request is preempted (its KV
 *           given back, the request re-queued at the front); the KV cache may also
 *           preempt a sequence itself (its eviction callback re-queues the request).
 *   compute (workers) each worker takes its share of the items and, layer by layer,
 *           takes temp buffers (QKV, attention scores, MLP intermediates) from its
 *           temp allocator, reads its slice of the layer's weights, writes the new
 *           tokens' K and V rows, reads the context's K and V, writes and reads the
 *           temps (a light compute pass: sums and scaled copies, real memory traffic),
 *           and ends the step (arena reset / frees).
 *   commit  (main thread) record the tokens, produce output tokens, close finished
 *           requests, record the step's timeline row.
 * A worker whose temp allocation is refused fails the step: the youngest request in
 * the plan is preempted and the step re-run.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "stepsim.h"

#define SS_QTILE 16 /* query rows per attention tile */

/* ---- sizes ---------------------------------------------------------------------------- */

size_t ss_step_temp_estimate(const ss_config_t *cfg, int tokens) {
  const ss_model_t *m = &cfg->model;
  size_t per_tok = (2 * (size_t)m->hidden + ss_model_qkv_dim(m) + 2 * (size_t)m->intermediate) * 4;
  size_t scores = ss_mul_sat((size_t)m->heads * SS_QTILE * 4, (size_t)cfg->max_seq_len);
  return ss_add_sat(ss_add_sat(ss_mul_sat((size_t)tokens, per_tok), scores), 16 * 64);
}

/* ---- the waiting queue (a ring of request indices) -------------------------------------- */

static void wait_push_back(ss_sim_t *s, int id) {
  int cap = s->cfg->requests;
  s->waiting[(s->wait_head + s->wait_n) % cap] = id;
  s->wait_n++;
}

static void wait_push_front(ss_sim_t *s, int id) {
  int cap = s->cfg->requests;
  s->wait_head = (s->wait_head + cap - 1) % cap;
  s->waiting[s->wait_head] = id;
  s->wait_n++;
}

static int wait_front(ss_sim_t *s) { return s->waiting[s->wait_head]; }

static void wait_pop(ss_sim_t *s) {
  s->wait_head = (s->wait_head + 1) % s->cfg->requests;
  s->wait_n--;
}

/* ---- running set, plan, preemption ------------------------------------------------------- */

static void running_remove(ss_sim_t *s, ss_req_t *r) {
  for (int i = 0; i < s->n_running; i++) {
    if (s->running[i] == r) {
      memmove(&s->running[i], &s->running[i + 1],
              (size_t)(s->n_running - i - 1) * sizeof s->running[0]);
      s->n_running--;
      return;
    }
  }
}

static void plan_remove(ss_sim_t *s, ss_req_t *r) {
  for (int i = 0; i < s->n_items; i++) {
    if (s->items[i].r == r) {
      memmove(&s->items[i], &s->items[i + 1], (size_t)(s->n_items - i - 1) * sizeof s->items[0]);
      s->n_items--;
      return;
    }
  }
}

static void req_free_book(ss_sim_t *s, ss_req_t *r) {
  s->be->book_free(s, r->tokens);
  s->be->book_free(s, r->table);
  r->tokens = NULL;
  r->table = NULL;
  r->table_cap = r->table_n = 0;
}

/* Give r's KV back and put it at the front of the queue (it restarts from scratch,
 * except for what the prefix cache still holds). */
static void preempt(ss_sim_t *s, ss_req_t *r) {
  s->be->release(s, r);
  req_free_book(s, r);
  running_remove(s, r);
  plan_remove(s, r);
  if (r->runs == 1) s->res->preempted_requests++;
  r->state = SS_REQ_WAITING;
  r->kv_len = r->prefilled = r->generated = r->kv_reserved = r->deferrals = 0;
  r->preempt_pending = false;
  wait_push_front(s, r->id);
}

/* The request at the front of the queue failed with nothing else running (its
 * admission, KV reservation or temps were refused). Twice in a row: it can never
 * fit under the limit; it is rejected and the run goes on with the others. */
static void alone_failed(ss_sim_t *s) {
  if (s->wait_n == 0) return;
  ss_req_t *r = &s->reqs[wait_front(s)];
  if (++r->alone_failures < 2) return;
  wait_pop(s);
  r->state = SS_REQ_REJECTED;
  s->res->rejected_no_room++;
  s->res->expected_tokens -= (uint64_t)r->output_len;
  fprintf(stderr, "stepsim: %s: request %d (prompt %d + output %d tokens) does not fit under the "
          "limit even alone; rejected\n", s->be->name, r->id, r->prompt_len, r->output_len);
}

void ss_on_kv_preempted(ss_sim_t *s, const char *id) {
  int n = 0;
  if (sscanf(id, "req-%d", &n) != 1 || n < 0 || n >= s->cfg->requests) return;
  if (s->reqs[n].preempt_pending) return;
  s->reqs[n].preempt_pending = true;
  s->preempted[s->n_preempted++] = n;
}

static void process_kv_preempted(ss_sim_t *s) {
  for (int i = 0; i < s->n_preempted; i++) {
    ss_req_t *r = &s->reqs[s->preempted[i]];
    if (r->state == SS_REQ_RUNNING) {
      s->res->kv_preemptions++;
      preempt(s, r);
    }
    r->preempt_pending = false;
  }
  s->n_preempted = 0;
}

static ss_req_t *youngest_running(ss_sim_t *s, const ss_req_t *except) {
  ss_req_t *best = NULL;
  for (int i = 0; i < s->n_running; i++) {
    ss_req_t *r = s->running[i];
    if (r != except && (best == NULL || r->admit_order > best->admit_order)) best = r;
  }
  return best;
}

/* Reserve n tokens for r, preempting the youngest other request while refused.
 * Returns CLLM_OK, CLLM_EPREEMPTED when r itself was preempted, or a fatal status. */
static cllm_status_t reserve_for(ss_sim_t *s, ss_req_t *r, int n) {
  int need = r->kv_len + n - r->kv_reserved; /* a deferred chunk already has room */
  if (need <= 0) return CLLM_OK;
  for (;;) {
    cllm_status_t rc = s->be->reserve(s, r, need);
    if (rc == CLLM_OK && r->state == SS_REQ_RUNNING) r->kv_reserved += need;
    process_kv_preempted(s);
    if (r->state != SS_REQ_RUNNING) return CLLM_EPREEMPTED;
    if (rc == CLLM_OK) return CLLM_OK;
    if (rc != CLLM_ELIMIT && rc != CLLM_ENOMEM && rc != CLLM_EPREEMPTED) return rc;
    ss_req_t *victim = youngest_running(s, r);
    if (victim == NULL) victim = r;
    s->res->sched_preemptions++;
    preempt(s, victim);
    if (victim == r) return CLLM_EPREEMPTED;
  }
}

static void plan_add(ss_sim_t *s, ss_req_t *r, int n) {
  ss_item_t *it = &s->items[s->n_items++];
  r->planned = s->res->steps + 1;
  it->r = r;
  it->pos0 = r->kv_len;
  it->n_new = n;
  it->worker = 0;
}

static int min_i(int a, int b) { return a < b ? a : b; }

/* Build the step's plan. Returns 0, or -1 on a fatal error (message printed). */
static int plan_step(ss_sim_t *s) {
  const ss_config_t *c = s->cfg;
  int budget = c->max_step_tokens;
  uint64_t mark = s->res->steps + 1;
  s->n_items = 0;
  /* Touch youngest first, so the KV cache's LRU victim is the youngest request that
   * has not reserved yet in this step (vLLM preempts the youngest too). */
  for (int i = s->n_running - 1; i >= 0; i--) s->be->touch(s, s->running[i]);
  /* running requests, oldest first (the array is in admission order) */
  for (int i = 0; i < s->n_running; i++) {
    ss_req_t *r = s->running[i];
    if (r->planned == mark) continue;
    int n;
    if (r->prefilled == r->prompt_len) n = 1; /* decode always runs */
    else n = min_i(min_i(c->prefill_chunk, r->prompt_len - r->prefilled), budget);
    if (n <= 0) continue;
    cllm_status_t rc = reserve_for(s, r, n);
    if (rc == CLLM_EPREEMPTED) {
      i = -1; /* the running array changed: restart the scan (planned ones are skipped) */
      continue;
    }
    if (rc != CLLM_OK) {
      fprintf(stderr, "stepsim: KV reservation failed: %s\n", cllm_status_str(rc));
      return -1;
    }
    plan_add(s, r, n);
    budget -= n;
  }
  /* admissions */
  while (s->n_running < c->max_batch && s->wait_n > 0 && budget > 0) {
    ss_req_t *r = &s->reqs[wait_front(s)];
    /* with nothing running the head is tried anyway: the reservation decides (the
     * backend's estimate keeps room for a full step of temps) */
    if (s->n_running > 0 && !s->be->can_admit(s, r)) {
      s->res->admissions_refused++;
      break;
    }
    size_t ntok = (size_t)r->prompt_len + (size_t)r->output_len;
    r->tokens = s->be->book_alloc(s, ntok * sizeof *r->tokens);
    if (r->tokens == NULL) break;
    /* ids: the shared system prompt, then ids derived from (seed, request, position) */
    for (size_t p = 0; p < ntok; p++) {
      if (r->shared && p < (size_t)c->shared_prefix_tokens) r->tokens[p] = s->system_prompt[p];
      else r->tokens[p] = (cllm_kv_token_t)(ss_mix64(c->seed ^ ((uint64_t)r->id << 32) ^ p) %
                                            (uint64_t)c->model.vocab);
    }
    cllm_status_t rc = s->be->admit(s, r);
    if (rc != CLLM_OK) {
      req_free_book(s, r);
      s->res->admissions_refused++;
      break;
    }
    wait_pop(s);
    r->kv_reserved = r->kv_len;
    if (r->runs > 0) s->res->reruns++;
    r->runs++;
    r->state = SS_REQ_RUNNING;
    r->admit_order = s->admit_serial++;
    s->running[s->n_running++] = r;
    int n = min_i(min_i(c->prefill_chunk, r->prompt_len - r->prefilled), budget);
    rc = reserve_for(s, r, n);
    if (rc == CLLM_EPREEMPTED) break;
    if (rc != CLLM_OK) {
      fprintf(stderr, "stepsim: KV reservation failed: %s\n", cllm_status_str(rc));
      return -1;
    }
    plan_add(s, r, n);
    budget -= n;
  }
  if (s->n_running > s->res->max_concurrent_seqs) s->res->max_concurrent_seqs = s->n_running;
  return 0;
}

/* Spread the items over the workers: greedy, least loaded first. */
static void assign_workers(ss_sim_t *s) {
  const ss_model_t *m = &s->cfg->model;
  double load[SS_MAX_THREADS] = {0};
  double per_tok = (double)(2 * m->hidden + (int)ss_model_qkv_dim(m) + 2 * m->intermediate);
  double per_ctx = (double)s->row_bytes * 2 / 4;
  for (int i = 0; i < s->n_items; i++) {
    ss_item_t *it = &s->items[i];
    int best = 0;
    for (int w = 1; w < s->cfg->threads; w++)
      if (load[w] < load[best]) best = w;
    it->worker = best;
    load[best] += it->n_new * per_tok + (it->pos0 + it->n_new) * per_ctx;
  }
}

/* ---- the compute pass --------------------------------------------------------------------- */

static void fill_from(float *dst, size_t dn, const float *src, size_t sn, float a, float b) {
  for (size_t e = 0; e < dn;) {
    size_t n = sn < dn - e ? sn : dn - e;
    for (size_t i = 0; i < n; i++) dst[e + i] = src[i] * a + b;
    e += n;
  }
}

static void store_row(unsigned char *dst, const float *src, size_t n, int dtype) {
  if (dtype == 2) {
    uint16_t *d = (uint16_t *)dst;
    for (size_t i = 0; i < n; i++) {
      uint32_t bits;
      memcpy(&bits, &src[i], 4);
      d[i] = (uint16_t)(bits >> 16);
    }
  } else if (dtype == 4) {
    memcpy(dst, src, n * 4);
  } else {
    for (size_t i = 0; i < n; i++) dst[i] = (unsigned char)(int)(src[i] * 64.0f);
  }
}

/* Read a K or V row (bytes is a multiple of 8 for every shape stepsim accepts:
 * kv_heads x head_dim x dtype with head_dim >= 8). */
static double sum_row(const unsigned char *p, size_t bytes) {
  const uint64_t *u = (const uint64_t *)p;
  uint64_t acc = 0;
  for (size_t i = 0; i < bytes / 8; i++) acc += u[i] & 0xffff0000ffffull;
  return (double)(acc & 0xffffffffull) * (1.0 / 65536.0);
}

static bool worker_step(ss_worker_t *w) {
  ss_sim_t *s = w->sim;
  const ss_backend_t *be = s->be;
  const ss_model_t *m = &s->cfg->model;
  const size_t H = (size_t)m->hidden, Q = ss_model_qkv_dim(m), I = (size_t)m->intermediate;
  const size_t NH = (size_t)m->heads, KD = (size_t)m->kv_heads * (size_t)m->head_dim;
  const int bt = s->cfg->block_tokens;
  size_t tok = 0;
  for (int i = 0; i < s->n_items; i++)
    if (s->items[i].worker == w->index) tok += (size_t)s->items[i].n_new;
  size_t slice = (s->layer_weight_bytes / (size_t)s->cfg->threads) & ~(size_t)63;
  double sink = 0;
  for (int l = 0; l < m->layers; l++) {
    size_t mk = be->temp_mark(w);
    /* temps first: a refused buffer fails the step before any work is done */
    float *X = NULL, *QKV = NULL, *ATT = NULL, *UP = NULL, *GATE = NULL;
    if (tok > 0) {
      X = be->temp_alloc(w, tok * H * 4);
      QKV = be->temp_alloc(w, tok * Q * 4);
      ATT = be->temp_alloc(w, tok * H * 4);
      UP = be->temp_alloc(w, tok * I * 4);
      GATE = be->temp_alloc(w, tok * I * 4);
      if (!X || !QKV || !ATT || !UP || !GATE) return false;
    }
    /* this worker's share of the layer's matmuls: read its slice of the weights */
    const uint64_t *wp =
        (const uint64_t *)(w->weights + (size_t)l * s->layer_weight_bytes + (size_t)w->index * slice);
    uint64_t acc = 0;
    for (size_t i = 0; i < slice / 8; i++) acc += wp[i];
    sink += (double)(acc & 0xffff);
    if (tok == 0) {
      be->temp_rewind(w, mk);
      continue;
    }
    /* activations and the fused QKV projection */
    size_t t = 0;
    for (int i = 0; i < s->n_items; i++) {
      const ss_item_t *it = &s->items[i];
      if (it->worker != w->index) continue;
      for (int j = 0; j < it->n_new; j++, t++) {
        cllm_kv_token_t id = it->r->tokens[it->pos0 + j];
        float base = (float)((id * 31 + l * 7) & 1023) * (1.0f / 1024.0f);
        for (size_t e = 0; e < H; e++) X[t * H + e] = base + (float)e * 1e-4f;
        fill_from(QKV + t * Q, Q, X + t * H, H, 0.5f, 0.25f);
      }
    }
    /* write the new tokens' K and V rows */
    t = 0;
    for (int i = 0; i < s->n_items; i++) {
      const ss_item_t *it = &s->items[i];
      if (it->worker != w->index) continue;
      for (int j = 0; j < it->n_new; j++, t++) {
        int pos = it->pos0 + j;
        unsigned char *k, *v;
        be->kv_block(w, it->r, pos / bt, l, &k, &v);
        size_t off = (size_t)(pos % bt) * s->row_bytes;
        store_row(k + off, QKV + t * Q + NH * m->head_dim, KD, m->dtype_bytes);
        store_row(v + off, QKV + t * Q + NH * m->head_dim + KD, KD, m->dtype_bytes);
      }
    }
    /* attention over each item's context: scores written, read back, V read */
    t = 0;
    for (int i = 0; i < s->n_items; i++) {
      const ss_item_t *it = &s->items[i];
      if (it->worker != w->index) continue;
      int ctx = it->pos0 + it->n_new;
      size_t qt = (size_t)min_i(it->n_new, SS_QTILE);
      size_t m2 = be->temp_mark(w);
      float *S = be->temp_alloc(w, NH * qt * (size_t)ctx * 4);
      if (S == NULL) return false;
      double vacc = 0;
      for (int bi = 0; bi * bt < ctx; bi++) {
        unsigned char *k, *v;
        be->kv_block(w, it->r, bi, l, &k, &v);
        int rows = min_i(bt, ctx - bi * bt);
        for (int r = 0; r < rows; r++) {
          float ks = (float)sum_row(k + (size_t)r * s->row_bytes, s->row_bytes);
          vacc += sum_row(v + (size_t)r * s->row_bytes, s->row_bytes);
          size_t pos = (size_t)bi * bt + (size_t)r;
          for (size_t h = 0; h < NH * qt; h++) S[h * (size_t)ctx + pos] = ks * (float)(h + 1) * 1e-3f;
        }
      }
      double norm = 0;
      for (size_t h = 0; h < NH * qt * (size_t)ctx; h++) norm += S[h];
      for (int j = 0; j < it->n_new; j++, t++)
        for (size_t e = 0; e < H; e++) ATT[(t)*H + e] = (float)(norm * 1e-6 + vacc * 1e-9) + X[t * H + e];
      be->temp_rewind(w, m2);
    }
    /* the gated MLP */
    for (size_t u = 0; u < tok; u++) {
      fill_from(UP + u * I, I, ATT + u * H, H, 0.5f, 0.0f);
      fill_from(GATE + u * I, I, ATT + u * H, H, 0.25f, 1.0f);
      float o = 0;
      for (size_t e = 0; e < I; e++) o += UP[u * I + e] * GATE[u * I + e];
      for (size_t e = 0; e < H; e++) X[u * H + e] += o * 1e-6f;
      sink += X[u * H];
    }
    be->temp_rewind(w, mk);
  }
  w->sink += sink;
  return true;
}

static void *worker_main(void *arg) {
  ss_worker_t *w = arg;
  ss_sim_t *s = w->sim;
  w->node = -1;
  if (s->nodes > 1 && s->topo != NULL) {
    int node = w->index % s->nodes;
    if (cllm_thread_bind_node(s->topo, node) == CLLM_OK) w->node = node;
  }
  w->weights = s->weights;
  w->failed = s->be->worker_init(w) != 0;
  pthread_barrier_wait(&s->done);
  for (;;) {
    pthread_barrier_wait(&s->start);
    if (s->quit) break;
    w->failed = !worker_step(w);
    s->be->step_end(w);
    pthread_barrier_wait(&s->done);
  }
  s->be->worker_fini(w);
  return NULL;
}

static bool run_workers(ss_sim_t *s) {
  pthread_barrier_wait(&s->start);
  pthread_barrier_wait(&s->done);
  for (int i = 0; i < s->cfg->threads; i++)
    if (s->workers[i].failed) return false;
  return true;
}

/* ---- commit ---------------------------------------------------------------------------------- */

static void commit_step(ss_sim_t *s) {
  ss_result_t *res = s->res;
  for (int i = 0; i < s->n_items; i++) {
    ss_item_t *it = &s->items[i];
    ss_req_t *r = it->r;
    s->be->commit(s, r, it->n_new);
    r->kv_len += it->n_new;
    r->deferrals = 0;
    r->alone_failures = 0;
    if (r->prefilled < r->prompt_len) {
      r->prefilled += it->n_new;
      res->prefill_tokens += (uint64_t)it->n_new;
      if (r->prefilled == r->prompt_len) r->generated = 1;
    } else {
      r->generated++;
      res->decode_tokens++;
    }
    if (r->generated >= r->output_len) {
      s->be->release(s, r);
      req_free_book(s, r);
      running_remove(s, r);
      r->state = SS_REQ_DONE;
      res->finished++;
      res->tokens_generated += (uint64_t)r->output_len;
    }
  }
}

/* ---- progress ------------------------------------------------------------------------------------- */

static void progress(ss_sim_t *s, double t0, bool final) {
  static double last = 0;
  const ss_config_t *c = s->cfg;
  if (c->quiet || c->progress == SS_PROGRESS_OFF) return;
  bool tty = c->progress == SS_PROGRESS_ON || (c->progress == SS_PROGRESS_AUTO && isatty(2));
  double now = ss_now_s();
  if (!final && now - last < (tty ? 0.1 : 2.0)) return;
  last = now;
  double el = now - t0;
  int pct = (int)(100.0 * s->res->finished / (c->requests > 0 ? c->requests : 1));
  double tps = el > 0 ? (double)(s->res->prefill_tokens + s->res->decode_tokens) / el : 0;
  if (tty) { /* one line, under 80 columns, rewritten in place */
    char bar[21];
    int fill = pct * 20 / 100;
    for (int i = 0; i < 20; i++) bar[i] = i < fill ? '#' : '.';
    bar[20] = '\0';
    fprintf(stderr, "\r%-7s [%s] %3d%% step %-5llu run %-4d wait %-5d %6.0f tok/s%s",
            s->be->name, bar, pct, (unsigned long long)s->res->steps, s->n_running, s->wait_n,
            tps, final ? "\n" : "");
  } else {
    fprintf(stderr, "stepsim %s: %d%% done, step %llu, running %d, waiting %d, %.0f tok/s computed, %.1f s\n",
            s->be->name, pct, (unsigned long long)s->res->steps, s->n_running, s->wait_n, tps, el);
  }
}

/* ---- a run ------------------------------------------------------------------------------------------- */

static void record_row(ss_sim_t *s, double ms, int prefill, int decode) {
  ss_result_t *res = s->res;
  if (res->n_rows == res->cap_rows) {
    size_t nc = res->cap_rows ? res->cap_rows * 2 : 1024;
    ss_row_t *nr = realloc(res->rows, nc * sizeof *nr);
    if (nr == NULL) return;
    res->rows = nr;
    res->cap_rows = nc;
  }
  ss_row_t *row = &res->rows[res->n_rows++];
  memset(row, 0, sizeof *row);
  row->step = (int)res->steps;
  row->ms = ms;
  row->batch = s->n_items;
  row->prefill_tokens = prefill;
  row->decode_tokens = decode;
  row->tokens = prefill + decode;
  row->running = s->n_running;
  row->waiting = s->wait_n;
  for (int c = 0; c < CLLM_CAT_COUNT; c++) row->mem[c] = cllm_monitor_used(s->mon, (cllm_category_t)c);
  row->mem_total = cllm_monitor_used(s->mon, CLLM_CAT_COUNT);
  s->be->snapshot(s, row);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static void finish_figures(ss_sim_t *s) {
  ss_result_t *res = s->res;
  res->tokens_per_s = res->run_s > 0 ? (double)res->tokens_generated / res->run_s : 0;
  res->steps_per_s = res->run_s > 0 ? (double)res->steps / res->run_s : 0;
  if (res->n_rows > 0) {
    double *ms = malloc(res->n_rows * sizeof *ms);
    double sum = 0, batch = 0, util = 0;
    for (size_t i = 0; i < res->n_rows; i++) {
      ms[i] = res->rows[i].ms;
      sum += ms[i];
      batch += res->rows[i].batch;
      util += res->rows[i].kv_util;
    }
    if (ms != NULL) {
      qsort(ms, res->n_rows, sizeof *ms, cmp_double);
      res->step_ms_median = ms[res->n_rows / 2];
      size_t p99 = (size_t)ceil(0.99 * (double)res->n_rows) - 1;
      res->step_ms_p99 = ms[p99 < res->n_rows ? p99 : res->n_rows - 1];
      free(ms);
    }
    res->step_ms_mean = sum / (double)res->n_rows;
    res->mean_batch = batch / (double)res->n_rows;
    res->kv_util_mean = util / (double)res->n_rows;
  }
  res->peak_bytes = cllm_monitor_peak(s->mon, CLLM_CAT_COUNT);
  for (int c = 0; c < CLLM_CAT_COUNT; c++) res->peak_cat[c] = cllm_monitor_peak(s->mon, (cllm_category_t)c);
  res->limit_bytes = cllm_monitor_limit(s->mon);
  cllm_monitor_stats_t ms = {.struct_size = sizeof ms};
  if (cllm_monitor_stats(s->mon, &ms) == CLLM_OK) { /* this run's share of the counters */
    res->reclaim_runs = ms.reclaim_runs - s->mon_start.reclaim_runs;
    res->reclaimed_bytes = ms.reclaimed_bytes - s->mon_start.reclaimed_bytes;
    res->refusals = ms.refusals - s->mon_start.refusals;
  }
  double sink = 0;
  for (int i = 0; i < s->cfg->threads; i++) sink += s->workers[i].sink;
  res->checksum = sink;
}

static int setup_requests(ss_sim_t *s) {
  const ss_config_t *c = s->cfg;
  ss_rng_t rng;
  ss_rng_seed(&rng, c->seed);
  s->reqs = calloc((size_t)c->requests, sizeof *s->reqs);
  s->waiting = calloc((size_t)c->requests, sizeof *s->waiting);
  s->running = calloc((size_t)c->requests, sizeof *s->running);
  s->items = calloc((size_t)c->requests, sizeof *s->items);
  s->preempted = calloc((size_t)c->requests, sizeof *s->preempted);
  s->system_prompt = calloc((size_t)c->shared_prefix_tokens + 1, sizeof *s->system_prompt);
  if (!s->reqs || !s->waiting || !s->running || !s->items || !s->preempted || !s->system_prompt) {
    fprintf(stderr, "stepsim: out of memory for %d requests\n", c->requests);
    return -1;
  }
  for (int p = 0; p < c->shared_prefix_tokens; p++)
    s->system_prompt[p] = (cllm_kv_token_t)(ss_mix64(c->seed * 7919 + (uint64_t)p) % (uint64_t)c->model.vocab);
  for (int i = 0; i < c->requests; i++) {
    ss_req_t *r = &s->reqs[i];
    r->id = i;
    r->shared = c->shared_prefix_tokens > 0 && ss_rng_uniform(&rng) < c->shared_fraction;
    int user = ss_dist_sample(&c->prompt, &rng);
    r->prompt_len = (r->shared ? c->shared_prefix_tokens : 0) + user;
    r->output_len = ss_dist_sample(&c->output, &rng);
    if (r->prompt_len > c->max_seq_len - 1) { /* as a server does: refused, not cut */
      r->state = SS_REQ_REJECTED;
      s->res->rejected_too_long++;
      continue;
    }
    /* generation stops at the context limit */
    if (r->prompt_len + r->output_len > c->max_seq_len) r->output_len = c->max_seq_len - r->prompt_len;
    s->res->expected_tokens += (uint64_t)r->output_len;
    wait_push_back(s, i);
  }
  return 0;
}

static void free_sim(ss_sim_t *s) {
  free(s->reqs);
  free(s->waiting);
  free(s->running);
  free(s->items);
  free(s->preempted);
  free(s->system_prompt);
}

int ss_run(const ss_config_t *cfg, ss_alloc_t mode, ss_result_t *res) {
  static ss_sim_t sim; /* one run at a time; the eviction callback reaches it via user */
  ss_sim_t *s = &sim;
  memset(s, 0, sizeof *s);
  memset(res, 0, sizeof *res);
  s->cfg = cfg;
  s->be = mode == SS_ALLOC_LIBRARY ? &ss_backend_library : &ss_backend_malloc;
  s->res = res;
  res->mode = s->be->name;
  res->requests = cfg->requests;
  res->threads = cfg->threads;
  s->mon = cllm_monitor_global();
  s->topo = cllm_topology_system();
  s->nodes = s->topo ? cllm_topology_nodes(s->topo) : 1;
  if (s->nodes < 1) s->nodes = 1;
  res->numa_nodes = s->nodes;
  s->kv_token_bytes = ss_model_kv_token_bytes(&cfg->model);
  s->row_bytes = (size_t)cfg->model.kv_heads * cfg->model.head_dim * cfg->model.dtype_bytes;
  s->layer_weight_bytes = (cfg->weights_bytes / (size_t)cfg->model.layers) & ~(size_t)4095;
  if (cllm_monitor_set_limit(s->mon, cfg->mem_limit) != CLLM_OK ||
      cllm_monitor_reset_peak(s->mon) != CLLM_OK) {
    fprintf(stderr, "stepsim: cannot set the monitor limit\n");
    return -1;
  }
  s->mon_start.struct_size = sizeof s->mon_start;
  if (cllm_monitor_stats(s->mon, &s->mon_start) != CLLM_OK) memset(&s->mon_start, 0, sizeof s->mon_start);
  if (cllm_monitor_used(s->mon, CLLM_CAT_COUNT) != 0)
    fprintf(stderr, "stepsim: warning: %zu bytes already charged to the monitor before the %s run\n",
            cllm_monitor_used(s->mon, CLLM_CAT_COUNT), s->be->name);

  double t0 = ss_now_s();
  int rc = -1;
  if (setup_requests(s) != 0) goto out_free;
  if (s->be->setup(s) != 0) goto out_free;
  pthread_barrier_init(&s->start, NULL, (unsigned)cfg->threads + 1);
  pthread_barrier_init(&s->done, NULL, (unsigned)cfg->threads + 1);
  int started = 0;
  for (int i = 0; i < cfg->threads; i++) {
    ss_worker_t *w = &s->workers[i];
    w->sim = s;
    w->index = i;
    if (pthread_create(&w->thread, NULL, worker_main, w) != 0) break;
    started++;
  }
  if (started < cfg->threads) {
    fprintf(stderr, "stepsim: cannot start worker threads\n");
    abort(); /* the barriers would never complete: nothing sensible to unwind */
  }
  pthread_barrier_wait(&s->done);
  bool init_ok = true;
  for (int i = 0; i < cfg->threads; i++) init_ok = init_ok && !s->workers[i].failed;
  res->setup_s = ss_now_s() - t0;

  double r0 = ss_now_s();
  bool fatal = !init_ok;
  if (!init_ok) fprintf(stderr, "stepsim: a worker could not set up its temp allocator\n");
  while (!fatal && res->finished + res->rejected_too_long + res->rejected_no_room < cfg->requests) {
    double st = ss_now_s();
    if (plan_step(s) != 0) {
      fatal = true;
      break;
    }
    if (s->n_items == 0) { /* nothing running and the head of the queue did not start */
      if (s->n_running > 0 || s->wait_n == 0) {
        fprintf(stderr, "stepsim: %s: an empty step with %d running and %d waiting\n", s->be->name,
                s->n_running, s->wait_n);
        fatal = true;
        break;
      }
      alone_failed(s);
      continue;
    }
    bool skip = false;
    for (;;) {
      assign_workers(s);
      if (run_workers(s)) break;
      /* A temp buffer was refused even after the reclaimers ran: make the step
       * smaller and run it again. First defer the youngest prefill chunk (it keeps
       * its KV reservation for the next step); with none left, preempt the youngest. */
      res->step_retries++;
      ss_req_t *victim = NULL;
      if (s->n_items > 1) {
        for (int i = 0; i < s->n_items; i++) {
          ss_req_t *r = s->items[i].r;
          if (r->prefilled < r->prompt_len && r->deferrals < 3 &&
              (victim == NULL || r->admit_order > victim->admit_order))
            victim = r;
        }
      }
      if (victim != NULL) {
        plan_remove(s, victim);
        victim->deferrals++;
        res->deferred_chunks++;
        continue;
      }
      /* one item left, or only decode tokens: preempt the youngest request (one
       * outside the plan if there is one: that frees KV without shrinking the step) */
      victim = youngest_running(s, NULL);
      bool in_plan = false;
      for (int i = 0; i < s->n_items; i++) in_plan = in_plan || s->items[i].r == victim;
      if (in_plan && s->n_items == 1 && s->n_running > 1) victim = youngest_running(s, s->items[0].r);
      res->sched_preemptions++;
      preempt(s, victim);
      if (s->n_items == 0) { /* its temps did not fit with nothing else running */
        if (s->n_running == 0) alone_failed(s);
        skip = true;
        break;
      }
    }
    if (skip) continue;
    int prefill = 0, decode = 0;
    for (int i = 0; i < s->n_items; i++) {
      if (s->items[i].r->prefilled < s->items[i].r->prompt_len) prefill += s->items[i].n_new;
      else decode += s->items[i].n_new;
    }
    commit_step(s);
    res->steps++;
    record_row(s, (ss_now_s() - st) * 1e3, prefill, decode);
    progress(s, r0, false);
  }
  res->run_s = ss_now_s() - r0;
  progress(s, r0, true);
  s->quit = true;
  pthread_barrier_wait(&s->start);
  for (int i = 0; i < cfg->threads; i++) pthread_join(s->workers[i].thread, NULL);
  pthread_barrier_destroy(&s->start);
  pthread_barrier_destroy(&s->done);
  finish_figures(s);
  /* requests still holding KV (after a fatal error) give it back before teardown */
  while (s->n_running > 0) {
    ss_req_t *r = s->running[0];
    s->be->release(s, r);
    req_free_book(s, r);
    running_remove(s, r);
  }
  s->be->teardown(s); /* fills the component figures first */
  res->end_used_bytes = cllm_monitor_used(s->mon, CLLM_CAT_COUNT);
  res->ok = !fatal;
  rc = fatal ? -1 : 0;
out_free:
  free_sim(s);
  return rc;
}

void ss_result_free(ss_result_t *r) {
  free(r->rows);
  free(r->metrics_text);
  free(r->stats_json);
  r->rows = NULL;
  r->metrics_text = r->stats_json = NULL;
}
