/* stepsim: the least memory each backend needs to serve one request of --max-seq-len
 * with nothing else running, for the up-front size checks (stepsim_main.c), and
 * overflow-safe size arithmetic (a product or sum that does not fit is SIZE_MAX, so
 * it compares as "more than any machine has").
 *
 * ss_lib_required_bytes() asks the library's footprint functions, with the configs
 * the run will create (stepsim_run_lib.c builds both), so the two cannot drift.
 */
#include "stepsim.h"

size_t ss_add_sat(size_t a, size_t b) {
  size_t r;
  return __builtin_add_overflow(a, b, &r) ? SIZE_MAX : r;
}

size_t ss_mul_sat(size_t a, size_t b) {
  size_t r;
  return __builtin_mul_overflow(a, b, &r) ? SIZE_MAX : r;
}

size_t ss_round_up_sat(size_t n, size_t granule) {
  size_t r = ss_add_sat(n, granule - 1);
  return r == SIZE_MAX ? SIZE_MAX : r & ~(granule - 1);
}

static size_t max_z(size_t a, size_t b) { return a > b ? a : b; }

size_t ss_step_temps_full(const ss_config_t *c) {
  /* a full step spread over the workers; a single request's prefill chunk goes to
   * one worker whole; the library sizes its KV pool after a decode step of
   * --max-batch tokens */
  int spread = c->max_step_tokens / c->threads + 1;
  int chunk = c->prefill_chunk < c->max_step_tokens ? c->prefill_chunk : c->max_step_tokens;
  int batch = c->max_batch / c->threads + 1;
  return max_z(max_z(ss_step_temp_estimate(c, spread), ss_step_temp_estimate(c, chunk)),
               ss_step_temp_estimate(c, batch));
}

static void sum_need(ss_need_t *n) {
  n->total = ss_add_sat(ss_add_sat(n->weights, n->temps), ss_add_sat(n->book, n->seq));
}

void ss_lib_required_bytes(const ss_config_t *c, ss_need_t *n) {
  int nodes = cllm_topology_nodes(cllm_topology_system());
  cllm_weights_config_t wc = ss_lib_weights_config(c, nodes);
  n->weights = cllm_weights_footprint(&wc);
  if (n->weights == 0) n->weights = SIZE_MAX; /* a config create refuses: never fits */
  n->temps = ss_lib_full_temps(c); /* every worker's arena keeps a full step's chunk */
  cllm_heaps_config_t hc = cllm_heaps_config_default();
  n->book = ss_add_sat(SS_BOOK_ONE, cllm_heaps_footprint(&hc));
  /* a cache that holds one sequence of max_seq_len (plus one block: a deferred
   * chunk's reservation may straddle a block edge), committed by pages: the least
   * the run's cache can be (stepsim_run_lib.c's kv_fit_budget) */
  cllm_kv_config_t kc = ss_lib_kv_config(c);
  kc.capacity_blocks = ss_lib_seq_blocks(c);
  kc.populate = false;
  n->seq = cllm_kv_footprint(&kc);
  if (n->seq == 0) n->seq = SIZE_MAX;
  sum_need(n);
}

void ss_malloc_required_bytes(const ss_config_t *c, ss_need_t *n) {
  n->weights = ss_round_up_sat(c->weights_bytes, 64);
  n->temps = ss_mul_sat((size_t)c->threads, ss_step_temps_full(c));
  /* the request's token array with its 16-byte header */
  n->book = ss_add_sat(ss_mul_sat((size_t)c->max_seq_len, sizeof(cllm_kv_token_t)), 16);
  n->seq = ss_mul_sat((size_t)c->max_seq_len, ss_model_kv_token_bytes(&c->model));
  sum_need(n);
}
