/* stepsim: machine-readable output: --json (every figure and the config), --timeline
 * (CSV, one row per step), --plot (gnuplot PNG of the timeline). --metrics text comes
 * from the library's own writer (cllm_stats_write_prometheus, stepsim_run_lib.c).
 * The files are opened (and gnuplot tried) before the run, so a bad path costs no
 * run; "-" is stdout for --json and --timeline; each file written is named.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

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
  KU("rejected", r->rejected_too_long + r->rejected_no_room);
  KU("rejected_too_long", r->rejected_too_long);
  KU("rejected_no_room", r->rejected_no_room);
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
  fprintf(f, ",\"kv_pools\":{\"placement\":");
  if (r->kv_numa != NULL) fprintf(f, "\"%s\"", r->kv_numa);
  else fprintf(f, "null");
  KU("pages_never_touched", r->kv_pages_absent);
  fprintf(f, ",\"pages_per_node\":[");
  for (int i = 0; i < r->kv_pages_nodes; i++) fprintf(f, "%s%zu", i ? "," : "", r->kv_pages_per_node[i]);
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

static int write_json(FILE *f, const ss_config_t *c, const ss_result_t *lib, const ss_result_t *mal) {
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
  return ferror(f) ? -1 : 0;
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

static int write_timeline(FILE *f, const ss_result_t *lib, const ss_result_t *mal) {
  /* malloc mode: kv_blocks_active = stored tokens in block-equivalents, kv_blocks_free =
   * reserved but unused block-equivalents of the running requests, nothing cached;
   * mem_step_bytes = the step's temp high-water (its temps are freed by its end, and
   * mem_total_bytes is the monitor's total after the step). */
  fprintf(f, "mode,step,step_ms,batch,tokens,prefill_tokens,decode_tokens,running,waiting,"
             "mem_weights_bytes,mem_kv_bytes,mem_step_bytes,mem_heap_bytes,mem_total_bytes,"
             "kv_blocks_active,kv_blocks_cached,kv_blocks_free,kv_utilisation\n");
  if (lib) csv_rows(f, lib);
  if (mal) csv_rows(f, mal);
  return ferror(f) ? -1 : 0;
}

/* ---- gnuplot ----------------------------------------------------------------------------------- */

/* A path as a gnuplot single-quoted string ('' stands for a quote). */
static void gp_str(FILE *g, const char *s) {
  fputc('\'', g);
  for (; *s; s++) {
    if (*s == '\'') fputc('\'', g);
    fputc(*s, g);
  }
  fputc('\'', g);
}

/* One colour per meaning across the three panels; the mode is the dash type
 * (library solid, malloc dashed). */
#define C_WEIGHTS "#7b3294"
#define C_KV "#1b9e77"
#define C_STEP "#2c7bb6"
#define C_HEAP "#a6761d"
#define C_TOTAL "#000000"
#define C_LIMIT "#e31a1c"
#define C_KV_HELD "#d95f02"   /* blocks holding tokens (library active, malloc stored) */
#define C_KV_CACHED "#66a61e" /* library: cached blocks (prefix cache) */
#define C_KV_FREE "#e7298a"   /* library: free blocks of the pool */
#define C_KV_UNUSED "#17becf" /* malloc: reserved, unused block-equivalents */
#define C_RUNNING "#e6ab02"
#define C_STEP_MS "#666666"

typedef struct plot_ctx {
  FILE *g;
  const char *csv;
  int n; /* series drawn so far in this plot command */
} plot_ctx_t;

static void series(plot_ctx_t *p, const char *mode, const char *expr, const char *axes, double lw,
                   const char *colour, const char *title) {
  FILE *g = p->g;
  fputs(p->n++ ? ", " : "plot ", g);
  if (p->n == 1) gp_str(g, p->csv);
  else fputs("''", g);
  fprintf(g, " using 2:(strcol(1) eq '%s' ? %s : 1/0) axes %s with lines lw %.1f dt %d lc rgb '%s' title '%s'",
          mode, expr, axes, lw, strcmp(mode, "malloc") == 0 ? 2 : 1, colour, title);
}

static void plot_script(FILE *g, const ss_config_t *c, const ss_result_t *lib, const ss_result_t *mal,
                        const char *csv, const char *png) {
  const ss_result_t *runs[2] = {lib, mal};
  double limit_mib = (double)c->mem_limit / (double)SS_MIB;
  bool both = lib != NULL && mal != NULL;
  char t[96];
  fprintf(g, "set terminal pngcairo size 1400,1200 font 'sans,11'\nset output ");
  gp_str(g, png);
  fprintf(g, "\nset datafile separator ','\nset key outside right top vertical\nset grid\n");
  fprintf(g, "set lmargin 12\nset rmargin 34\nset xlabel 'step'\n");
  fprintf(g, "set multiplot layout 3,1 title 'stepsim: model %s, %d requests, %d threads, limit %.1f MiB%s'\n",
          c->model.name, c->requests, c->threads, limit_mib,
          both ? " (library solid, malloc dashed)" : "");
  /* 1: memory by category; heap (small) on the right axis so it does not lie on the x axis */
  fprintf(g, "set title 'Memory charged to the monitor (MiB; heap on the right axis)'\n");
  fprintf(g, "set ylabel 'MiB'\nset yrange [0:%.3f]\nset y2label 'heap MiB'\nset y2range [0:*]\n"
             "set y2tics\nset ytics nomirror\n", limit_mib * 1.1);
  plot_ctx_t p = {g, csv, 0};
  for (int i = 0; i < 2; i++) {
    const ss_result_t *r = runs[i];
    if (r == NULL) continue;
    const char *m = r->mode;
    snprintf(t, sizeof t, "%s weights", m);
    series(&p, m, "$10/1048576", "x1y1", 2, C_WEIGHTS, t);
    snprintf(t, sizeof t, "%s kv", m);
    series(&p, m, "$11/1048576", "x1y1", 2, C_KV, t);
    snprintf(t, sizeof t, "%s temps%s", m, strcmp(m, "malloc") == 0 ? " (step peak)" : "");
    series(&p, m, "$12/1048576", "x1y1", 2, C_STEP, t);
    snprintf(t, sizeof t, "%s heap (right)", m);
    series(&p, m, "$13/1048576", "x1y2", 2, C_HEAP, t);
    snprintf(t, sizeof t, "%s total", m);
    series(&p, m, "$14/1048576", "x1y1", 3, C_TOTAL, t);
  }
  fprintf(g, ", %.3f axes x1y1 with lines lw 2 dt 3 lc rgb '%s' title 'limit'\n", limit_mib, C_LIMIT);
  /* 2: KV blocks */
  fprintf(g, "set title '%s'\n",
          both ? "KV blocks: library pool (solid); malloc max-length buffers in block-equivalents (dashed)"
               : lib ? "KV cache blocks (library)"
                     : "KV block-equivalents (malloc: one max-length buffer per request)");
  fprintf(g, "set ylabel 'blocks'\nset yrange [0:*]\nunset y2label\nunset y2tics\nset ytics mirror\n");
  p.n = 0;
  if (lib != NULL) {
    series(&p, "library", "$15", "x1y1", 2, C_KV_HELD, "library active");
    series(&p, "library", "$16", "x1y1", 2, C_KV_CACHED, "library cached");
    series(&p, "library", "$17", "x1y1", 2, C_KV_FREE, "library free");
  }
  if (mal != NULL) {
    series(&p, "malloc", "$15", "x1y1", 2, C_KV_HELD, "malloc stored");
    series(&p, "malloc", "$17", "x1y1", 2, C_KV_UNUSED, "malloc reserved, unused");
  }
  fputc('\n', g);
  /* 3: running sequences and step time, both modes */
  fprintf(g, "set title 'Running sequences (left) and step time (right)'\n");
  /* the first steps fault pages in: the right axis stops at twice the slowest p99 */
  double p99 = 0;
  for (int i = 0; i < 2; i++)
    if (runs[i] != NULL && runs[i]->step_ms_p99 > p99) p99 = runs[i]->step_ms_p99;
  fprintf(g, "set ylabel 'sequences'\nset y2label 'step ms'\nset y2tics\nset ytics nomirror\n");
  if (p99 > 0) fprintf(g, "set y2range [0:%.3f]\n", 2 * p99);
  else fprintf(g, "set y2range [0:*]\n");
  p.n = 0;
  for (int i = 0; i < 2; i++) {
    const ss_result_t *r = runs[i];
    if (r == NULL) continue;
    snprintf(t, sizeof t, "%s running", r->mode);
    series(&p, r->mode, "$8", "x1y1", 2, C_RUNNING, t);
    snprintf(t, sizeof t, "%s step ms (right)", r->mode);
    series(&p, r->mode, "$3", "x1y2", 1.5, C_STEP_MS, t);
  }
  fprintf(g, "\nunset multiplot\n");
}

/* Where gnuplot is (NULL if not in PATH). */
static bool gnuplot_in_path(void) {
  const char *path = getenv("PATH");
  if (path == NULL) return false;
  char buf[4096];
  for (const char *p = path; *p;) {
    const char *e = strchr(p, ':');
    size_t n = e ? (size_t)(e - p) : strlen(p);
    if (n > 0 && n < sizeof buf - 16) {
      snprintf(buf, sizeof buf, "%.*s/gnuplot", (int)n, p);
      if (access(buf, X_OK) == 0) return true;
    }
    p += n + (e != NULL);
    if (e == NULL) break;
  }
  return false;
}

/* Run gnuplot on `script` (a callback writes it); its stderr is kept in a temp file
 * and returned (malloc'd, maybe empty) so a failure shows gnuplot's own words. */
static int run_gnuplot(void (*script)(FILE *, void *), void *arg, char **errtext) {
  *errtext = NULL;
  const char *tmpdir = getenv("TMPDIR");
  char errpath[512];
  snprintf(errpath, sizeof errpath, "%s/stepsim_gnuplot_XXXXXX",
           tmpdir && *tmpdir && !strchr(tmpdir, '\'') ? tmpdir : "/tmp");
  int fd = mkstemp(errpath);
  if (fd < 0) return -1;
  close(fd);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "gnuplot 2>'%s' >&2", errpath);
  FILE *g = popen(cmd, "w");
  int st = -1;
  if (g != NULL) {
    script(g, arg);
    st = pclose(g);
  }
  FILE *e = fopen(errpath, "r");
  if (e != NULL) {
    size_t cap = 4096, n = fread(*errtext = calloc(1, cap + 1), 1, cap, e);
    if (*errtext != NULL) (*errtext)[n] = '\0';
    fclose(e);
  }
  remove(errpath);
  return st;
}

static void probe_script(FILE *g, void *arg) {
  (void)arg;
  fputs("set terminal pngcairo\n", g);
}

typedef struct plot_args {
  const ss_config_t *c;
  const ss_result_t *lib, *mal;
  const char *csv, *png;
} plot_args_t;

static void full_script(FILE *g, void *arg) {
  plot_args_t *a = arg;
  plot_script(g, a->c, a->lib, a->mal, a->csv, a->png);
}

static void show_gnuplot_text(const char *png, const char *text) {
  if (text == NULL || text[0] == '\0') return;
  fprintf(stderr, "stepsim: --plot %s: gnuplot says:\n", png);
  for (const char *l = text; *l;) {
    const char *e = strchr(l, '\n');
    int n = e ? (int)(e - l) : (int)strlen(l);
    if (n > 0) fprintf(stderr, "  %.*s\n", n, l);
    l += n + (e != NULL);
  }
}

/* ---- the output files: opened before the run, written after it --------------------------------- */

static void open_one(ss_output_t *o, const char *opt, const char *path, bool may_stdout, bool *taken) {
  memset(o, 0, sizeof *o);
  o->opt = opt;
  o->path = path;
  if (path == NULL) return;
  if (strcmp(path, "-") == 0) {
    if (!may_stdout) {
      fprintf(stderr, "stepsim: %s -: the PNG cannot go to stdout; give a file name\n", opt);
      exit(2);
    }
    if (*taken) {
      fprintf(stderr, "stepsim: %s -: stdout is already taken by another output\n", opt);
      exit(2);
    }
    *taken = true;
    o->f = stdout;
    return;
  }
  struct stat st;
  o->created = stat(path, &st) != 0;
  o->f = fopen(path, "w");
  if (o->f == NULL) {
    fprintf(stderr, "stepsim: %s %s: cannot open for writing: %s\n", opt, path, strerror(errno));
    exit(2);
  }
}

static void close_one(ss_output_t *o, bool keep) {
  if (o->f != NULL && o->f != stdout) fclose(o->f);
  o->f = NULL;
  if (!keep && o->created && o->path != NULL) remove(o->path);
}

void ss_outputs_open(const ss_config_t *c, ss_outputs_t *o) {
  memset(o, 0, sizeof *o);
  if (c->plot_path != NULL) { /* gnuplot first: nothing is created when it is missing */
    char *text = NULL;
    if (!gnuplot_in_path()) {
      fprintf(stderr, "stepsim: --plot %s: gnuplot not found in PATH (install gnuplot-nox)\n", c->plot_path);
      exit(2);
    }
    int st = run_gnuplot(probe_script, NULL, &text);
    if (st != 0 || (text != NULL && text[0] != '\0')) {
      fprintf(stderr, "stepsim: --plot %s: gnuplot cannot write PNG (pngcairo terminal)\n", c->plot_path);
      show_gnuplot_text(c->plot_path, text);
      free(text);
      exit(2);
    }
    free(text);
  }
  open_one(&o->json, "--json", c->json_path, true, &o->stdout_taken);
  open_one(&o->timeline, "--timeline", c->timeline_path, true, &o->stdout_taken);
  open_one(&o->plot, "--plot", c->plot_path, false, &o->stdout_taken);
  close_one(&o->plot, true); /* gnuplot writes it; it exists and is writable */
  if (o->stdout_taken && c->metrics) {
    fprintf(stderr, "stepsim: --metrics prints to stdout, which --json - or --timeline - takes\n");
    ss_outputs_discard(o);
    exit(2);
  }
}

void ss_outputs_discard(ss_outputs_t *o) {
  close_one(&o->json, false);
  close_one(&o->timeline, false);
  close_one(&o->plot, false);
}

static int finish_one(ss_output_t *o, int wrote, const char *what, FILE *note) {
  int rc = wrote;
  if (o->f == stdout) rc |= fflush(stdout) != 0 ? -1 : 0;
  else if (fclose(o->f) != 0) rc = -1;
  o->f = NULL;
  if (rc != 0) fprintf(stderr, "stepsim: %s %s: write failed: %s\n", o->opt, o->path, strerror(errno));
  else if (note != NULL && strcmp(o->path, "-") != 0) fprintf(note, "wrote %s (%s)\n", o->path, what);
  return rc;
}

int ss_outputs_write(const ss_config_t *c, ss_outputs_t *o, const ss_result_t *lib,
                     const ss_result_t *mal, FILE *note) {
  int rc = 0;
  if (o->json.f != NULL) rc |= finish_one(&o->json, write_json(o->json.f, c, lib, mal), "JSON report", note);
  bool csv_file = o->timeline.f != NULL && o->timeline.f != stdout;
  if (o->timeline.f != NULL)
    rc |= finish_one(&o->timeline, write_timeline(o->timeline.f, lib, mal), "timeline CSV", note);
  if (c->plot_path == NULL) return rc;
  /* gnuplot reads the timeline from a file: the --timeline one, else a temp file */
  char tmp[512];
  const char *csv = c->timeline_path;
  if (!csv_file) {
    const char *tmpdir = getenv("TMPDIR");
    snprintf(tmp, sizeof tmp, "%s/stepsim_timeline_XXXXXX", tmpdir && *tmpdir ? tmpdir : "/tmp");
    int fd = mkstemp(tmp);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (f == NULL || write_timeline(f, lib, mal) != 0 || fclose(f) != 0) {
      fprintf(stderr, "stepsim: --plot: cannot write a temp timeline in %s\n", tmp);
      return -1;
    }
    csv = tmp;
  }
  plot_args_t a = {c, lib, mal, csv, c->plot_path};
  char *text = NULL;
  int st = run_gnuplot(full_script, &a, &text);
  if (st != 0) {
    fprintf(stderr, "stepsim: --plot %s: gnuplot failed (%s %d)\n", c->plot_path,
            WIFEXITED(st) ? "exit status" : "wait status", WIFEXITED(st) ? WEXITSTATUS(st) : st);
    show_gnuplot_text(c->plot_path, text);
    rc = -1;
  } else {
    show_gnuplot_text(c->plot_path, text); /* warnings, if any */
    if (note != NULL) fprintf(note, "wrote %s (plot of the timeline)\n", c->plot_path);
  }
  free(text);
  if (!csv_file) remove(tmp);
  return rc;
}
