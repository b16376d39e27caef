/* stepsim: machine-readable output: --json (every figure and the config), --timeline
 * (CSV, one row per step), --plot (gnuplot PNG of the timeline). --metrics text comes
 * from the library's own writer (cllm_stats_write_prometheus, stepsim_run_lib.c).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cllm/version.h>

#include "stepsim.h"

/* ---- JSON -------------------------------------------------------------------------------- */

static void jstr(FILE *f, const char *s) {
  fputc('"', f);
  for (; s && *s; s++) {
    if (*s == '"' || *s == '\\') fprintf(f, "\\%c", *s);
    else if ((unsigned char)*s < 0x20) fprintf(f, "\\u%04x", (unsigned char)*s);
    else fputc(*s, f);
  }
  fputc('"', f);
}

static void jnum(FILE *f, double v) {
  if (isfinite(v)) fprintf(f, "%.10g", v);
  else fputs("null", f);
}

#define KU(k, v) fprintf(f, ",\"%s\":%llu", k, (unsigned long long)(v))
#define KD(k, v) (fprintf(f, ",\"%s\":", k), jnum(f, (v)))
#define KS(k, v) (fprintf(f, ",\"%s\":", k), jstr(f, (v)))
#define KB(k, v) fprintf(f, ",\"%s\":%s", k, (v) ? "true" : "false")

static void json_config(FILE *f, const ss_config_t *c) {
  const ss_model_t *m = &c->model;
  fprintf(f, "\"config\":{\"model\":");
  jstr(f, m->name);
  KU("layers", m->layers);
  KU("hidden", m->hidden);
  KU("heads", m->heads);
  KU("kv_heads", m->kv_heads);
  KU("head_dim", m->head_dim);
  KU("intermediate", m->intermediate);
  KU("dtype_bytes", m->dtype_bytes);
  KU("vocab", m->vocab);
  KU("kv_bytes_per_token", ss_model_kv_token_bytes(m));
  KU("weights_bytes", c->weights_bytes);
  KU("weights_real_bytes", c->weights_real_bytes);
  KB("weights_capped", c->weights_capped);
  KS("weights_file", c->weights_file ? c->weights_file : "");
  KS("lock_weights", cllm_weights_lock_name(c->lock));
  KU("mem_limit_bytes", c->mem_limit);
  KB("mem_limit_given", c->mem_limit_given);
  KU("kv_budget_bytes", c->kv_budget);
  KU("threads", c->threads);
  KU("max_batch", c->max_batch);
  KU("requests", c->requests);
  KU("prefill_chunk", c->prefill_chunk);
  KU("max_step_tokens", c->max_step_tokens);
  KU("max_seq_len", c->max_seq_len);
  KU("block_tokens", c->block_tokens);
  KS("prompt_dist", c->prompt.text);
  KS("output_dist", c->output.text);
  KU("shared_prefix_tokens", c->shared_prefix_tokens);
  KD("shared_fraction", c->shared_fraction);
  KU("seed", c->seed);
  KB("compare", c->compare);
  KS("allocator", c->compare ? "both" : (c->allocator == SS_ALLOC_LIBRARY ? "library" : "malloc"));
  KS("library_version", cllm_version_string());
  fputc('}', f);
}

static void json_result(FILE *f, const ss_config_t *c, const ss_result_t *r) {
  fprintf(f, "{\"mode\":");
  jstr(f, r->mode);
  KB("ok", r->ok);
  KD("setup_s", r->setup_s);
  KD("run_s", r->run_s);
  KU("steps", r->steps);
  KD("steps_per_s", r->steps_per_s);
  KD("tokens_per_s", r->tokens_per_s);
  KU("tokens_generated", r->tokens_generated);
  KU("expected_tokens", r->expected_tokens);
  KU("prefill_tokens", r->prefill_tokens);
  KU("decode_tokens", r->decode_tokens);
  KU("prompt_tokens_cached", r->prompt_tokens_cached);
  KU("prompt_tokens_remote", r->prompt_tokens_remote);
  KD("step_ms_median", r->step_ms_median);
  KD("step_ms_p99", r->step_ms_p99);
  KD("step_ms_mean", r->step_ms_mean);
  KD("mean_batch", r->mean_batch);
  KU("max_concurrent_seqs", r->max_concurrent_seqs);
  KU("peak_bytes", r->peak_bytes);
  fprintf(f, ",\"peak_bytes_by_category\":{");
  for (int k = 0; k < CLLM_CAT_COUNT; k++)
    fprintf(f, "%s\"%s\":%zu", k ? "," : "", cllm_category_name((cllm_category_t)k), r->peak_cat[k]);
  fputc('}', f);
  KU("limit_bytes", r->limit_bytes);
  KU("end_used_bytes", r->end_used_bytes);
  KD("kv_utilisation_mean", r->kv_util_mean);
  KD("prefix_hit_rate",
     r->prefix_query_tokens ? (double)r->prefix_hit_tokens / (double)r->prefix_query_tokens : 0.0);
  fprintf(f, ",\"kv\":{\"num_blocks\":%zu", r->kv_num_blocks);
  KU("block_bytes", r->kv_block_bytes);
  KU("capacity_bytes", r->kv_capacity_bytes);
  KU("final_blocks_free", r->kv_final_free);
  KU("final_blocks_active", r->kv_final_active);
  KU("final_blocks_cached", r->kv_final_cached);
  KU("final_kv_bytes", r->kv_final_bytes);
  KU("final_monitor_kv_bytes", r->kv_final_monitor_bytes);
  KB("check_ok", r->kv_check_ok);
  KU("prefix_query_tokens", r->prefix_query_tokens);
  KU("prefix_hit_tokens", r->prefix_hit_tokens);
  KU("evictions", r->evictions);
  KU("reclaimed_blocks", r->reclaimed_blocks);
  fputc('}', f);
  fprintf(f, ",\"preemptions\":{\"kv_cache\":%llu", (unsigned long long)r->kv_preemptions);
  KU("scheduler", r->sched_preemptions);
  KU("step_retries", r->step_retries);
  KU("deferred_chunks", r->deferred_chunks);
  fputc('}', f);
  fprintf(f, ",\"monitor\":{\"reclaim_runs\":%llu", (unsigned long long)r->reclaim_runs);
  KU("reclaimed_bytes", r->reclaimed_bytes);
  KU("refusals", r->refusals);
  fputc('}', f);
  fprintf(f, ",\"requests\":{\"total\":%d", r->requests);
  KU("finished", r->finished);
  KU("preempted", r->preempted_requests);
  KU("reruns", r->reruns);
  KU("admissions_refused", r->admissions_refused);
  fputc('}', f);
  fprintf(f, ",\"temp_high_water_bytes\":[");
  for (int i = 0; i < c->threads; i++) fprintf(f, "%s%zu", i ? "," : "", r->arena_high_water[i]);
  fprintf(f, "],\"arena_capacity_bytes\":[");
  for (int i = 0; i < c->threads; i++) fprintf(f, "%s%zu", i ? "," : "", r->arena_capacity[i]);
  fprintf(f, "],\"arena_resets\":[");
  for (int i = 0; i < c->threads; i++) fprintf(f, "%s%llu", i ? "," : "", (unsigned long long)r->arena_resets[i]);
  fputc(']', f);
  KU("temp_malloc_calls", r->temp_allocs);
  fprintf(f, ",\"weights\":{\"capacity_bytes\":%zu", r->weights_capacity);
  KU("locked_bytes", r->weights_locked);
  KU("huge_bytes", r->weights_huge);
  KS("lock", r->weights_lock);
  KU("lock_errno", (unsigned)r->weights_lock_errno);
  KS("placement", r->weights_numa);
  KS("huge_pages", r->weights_huge_mode);
  KB("sealed", r->weights_sealed);
  fprintf(f, ",\"pages_per_node\":[");
  for (int i = 0; i < r->weights_pages_nodes; i++) fprintf(f, "%s%zu", i ? "," : "", r->weights_pages_per_node[i]);
  fprintf(f, "]}");
  KS("heap_mode", r->heap_mode);
  KU("numa_nodes", r->numa_nodes);
  KD("checksum", r->checksum);
  if (r->stats_json != NULL) {
    /* the library's own report (cllm_stats_write_json), embedded as is */
    size_t n = strlen(r->stats_json);
    while (n > 0 && r->stats_json[n - 1] == '\n') n--;
    fprintf(f, ",\"library_stats\":%.*s", (int)n, r->stats_json);
  }
  fputc('}', f);
}

int ss_write_json(const ss_config_t *c, const ss_result_t *lib, const ss_result_t *mal,
                  const char *path) {
  FILE *f = fopen(path, "w");
  if (f == NULL) {
    fprintf(stderr, "stepsim: --json %s: cannot open for writing\n", path);
    return -1;
  }
  fputc('{', f);
  json_config(f, c);
  if (lib != NULL) {
    fprintf(f, ",\"library\":");
    json_result(f, c, lib);
  }
  if (mal != NULL) {
    fprintf(f, ",\"malloc\":");
    json_result(f, c, mal);
  }
  if (lib != NULL && mal != NULL) {
    fprintf(f, ",\"ratios\":{\"throughput\":");
    jnum(f, mal->tokens_per_s > 0 ? lib->tokens_per_s / mal->tokens_per_s : NAN);
    fprintf(f, ",\"steps_per_s\":");
    jnum(f, mal->steps_per_s > 0 ? lib->steps_per_s / mal->steps_per_s : NAN);
    fprintf(f, ",\"peak_memory\":");
    jnum(f, mal->peak_bytes > 0 ? (double)lib->peak_bytes / (double)mal->peak_bytes : NAN);
    fprintf(f, ",\"max_concurrent_seqs\":");
    jnum(f, mal->max_concurrent_seqs > 0 ? (double)lib->max_concurrent_seqs / mal->max_concurrent_seqs : NAN);
    fputc('}', f);
  }
  fputs("}\n", f);
  if (fclose(f) != 0) {
    fprintf(stderr, "stepsim: --json %s: write failed\n", path);
    return -1;
  }
  return 0;
}

/* ---- timeline CSV ----------------------------------------------------------------------------- */

static void csv_rows(FILE *f, const ss_result_t *r) {
  for (size_t i = 0; i < r->n_rows; i++) {
    const ss_row_t *w = &r->rows[i];
    fprintf(f, "%s,%d,%.3f,%d,%d,%d,%d,%d,%d,%zu,%zu,%zu,%zu,%zu,%zu,%zu,%zu,%.4f\n", r->mode, w->step,
            w->ms, w->batch, w->tokens, w->prefill_tokens, w->decode_tokens, w->running, w->waiting,
            w->mem[CLLM_CAT_WEIGHTS], w->mem[CLLM_CAT_KV], w->mem[CLLM_CAT_STEP], w->mem[CLLM_CAT_HEAP],
            w->mem_total, w->kv_active, w->kv_cached, w->kv_free, w->kv_util);
  }
}

int ss_write_timeline(const ss_result_t *lib, const ss_result_t *mal, const char *path) {
  FILE *f = fopen(path, "w");
  if (f == NULL) {
    fprintf(stderr, "stepsim: --timeline %s: cannot open for writing\n", path);
    return -1;
  }
  /* malloc mode: kv_blocks_active = stored tokens in block-equivalents, kv_blocks_free =
   * reserved but unused block-equivalents of the running requests, nothing cached. */
  fprintf(f, "mode,step,step_ms,batch,tokens,prefill_tokens,decode_tokens,running,waiting,"
             "mem_weights_bytes,mem_kv_bytes,mem_step_bytes,mem_heap_bytes,mem_total_bytes,"
             "kv_blocks_active,kv_blocks_cached,kv_blocks_free,kv_utilisation\n");
  if (lib) csv_rows(f, lib);
  if (mal) csv_rows(f, mal);
  if (fclose(f) != 0) {
    fprintf(stderr, "stepsim: --timeline %s: write failed\n", path);
    return -1;
  }
  return 0;
}

/* ---- gnuplot ----------------------------------------------------------------------------------- */

int ss_write_plot(const ss_config_t *c, const ss_result_t *lib, const ss_result_t *mal,
                  const char *csv, const char *png) {
  FILE *g = popen("gnuplot 2>&1", "w");
  if (g == NULL) {
    fprintf(stderr, "stepsim: --plot: cannot run gnuplot (install gnuplot-nox)\n");
    return -1;
  }
  const ss_result_t *first = lib ? lib : mal;
  double limit_mib = (double)c->mem_limit / (double)SS_MIB;
  fprintf(g, "set terminal pngcairo size 1400,1200 font 'sans,11'\n");
  fprintf(g, "set output '%s'\n", png);
  fprintf(g, "set datafile separator ','\n");
  fprintf(g, "set key outside right top vertical\n");
  fprintf(g, "set grid\n");
  fprintf(g, "set lmargin 12\nset rmargin 30\n");
  fprintf(g, "set multiplot layout 3,1 title 'stepsim: model %s, %d requests, %d threads, limit %.1f MiB'\n",
          c->model.name, c->requests, c->threads, limit_mib);
  /* 1: memory by category (library), totals of both, the limit */
  fprintf(g, "set title 'Memory charged to the monitor (MiB)'\n");
  fprintf(g, "set ylabel 'MiB'\nset xlabel 'step'\nset yrange [0:%.0f]\n", limit_mib * 1.1);
  fprintf(g, "plot ");
  const char *m1 = first->mode;
  fprintf(g, "'%s' using 2:(strcol(1) eq '%s' ? $10/1048576 : 1/0) with lines lw 2 lc rgb '#7b3294' title '%s weights', ", csv, m1, m1);
  fprintf(g, "'' using 2:(strcol(1) eq '%s' ? $11/1048576 : 1/0) with lines lw 2 lc rgb '#1b9e77' title '%s kv', ", m1, m1);
  fprintf(g, "'' using 2:(strcol(1) eq '%s' ? $12/1048576 : 1/0) with lines lw 2 lc rgb '#2c7bb6' title '%s step', ", m1, m1);
  fprintf(g, "'' using 2:(strcol(1) eq '%s' ? $13/1048576 : 1/0) with lines lw 2 lc rgb '#a6761d' title '%s heap', ", m1, m1);
  fprintf(g, "'' using 2:(strcol(1) eq '%s' ? $14/1048576 : 1/0) with lines lw 3 lc rgb 'black' title '%s total', ", m1, m1);
  if (lib && mal) {
    fprintf(g, "'' using 2:(strcol(1) eq 'malloc' ? $14/1048576 : 1/0) with lines lw 2 lc rgb '#999999' title 'malloc total', ");
    fprintf(g, "'' using 2:(strcol(1) eq 'malloc' ? $11/1048576 : 1/0) with lines lw 1.5 lc rgb '#e07b39' title 'malloc kv', ");
  }
  fprintf(g, "%.3f with lines lw 2 dt 3 lc rgb 'red' title 'limit'\n", limit_mib);
  /* 2: KV blocks */
  fprintf(g, "set title 'KV cache blocks (%s%s)'\n", m1,
          lib ? "" : ": stored / reserved-unused block-equivalents");
  fprintf(g, "set ylabel 'blocks'\nset autoscale y\nset yrange [0:*]\n");
  fprintf(g, "plot '%s' using 2:(strcol(1) eq '%s' ? $15 : 1/0) with lines lw 2 lc rgb '#7b3294' title 'active', ", csv, m1);
  fprintf(g, "'' using 2:(strcol(1) eq '%s' ? $16 : 1/0) with lines lw 2 lc rgb '#1b9e77' title 'cached', ", m1);
  fprintf(g, "'' using 2:(strcol(1) eq '%s' ? $17 : 1/0) with lines lw 2 lc rgb '#2c7bb6' title 'free'", m1);
  if (lib && mal) {
    fprintf(g, ", '' using 2:(strcol(1) eq 'malloc' ? $15 : 1/0) with lines lw 1.5 lc rgb '#e07b39' title 'malloc: stored', ");
    fprintf(g, "'' using 2:(strcol(1) eq 'malloc' ? $17 : 1/0) with lines lw 1.5 lc rgb '#c9b200' title 'malloc: reserved, unused'");
  }
  fprintf(g, "\n");
  /* 3: batch size */
  fprintf(g, "set title 'Running sequences and step time'\n");
  fprintf(g, "set ylabel 'sequences'\nset y2label 'step ms'\nset y2tics\nset ytics nomirror\n");
  fprintf(g, "plot '%s' using 2:(strcol(1) eq '%s' ? $8 : 1/0) with lines lw 2 lc rgb '#7b3294' title '%s running', ", csv, m1, m1);
  fprintf(g, "'' using 2:(strcol(1) eq '%s' ? $3 : 1/0) axes x1y2 with lines lw 1 lc rgb '#b0b0b0' title '%s step ms'", m1, m1);
  if (lib && mal) fprintf(g, ", '' using 2:(strcol(1) eq 'malloc' ? $8 : 1/0) with lines lw 2 lc rgb '#e07b39' title 'malloc running'");
  fprintf(g, "\n");
  fprintf(g, "unset multiplot\n");
  int st = pclose(g);
  if (st != 0) {
    fprintf(stderr, "stepsim: --plot: gnuplot failed (status %d)\n", st);
    return -1;
  }
  return 0;
}
