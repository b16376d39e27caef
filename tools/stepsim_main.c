/* stepsim: drives cllm-mem with a CPU LLM serving workload and prints a report.
 *
 * A model preset gives the shapes; requests with long-tailed prompt and output
 * lengths (a fraction sharing a system prompt) are served by a continuous-batching
 * scheduler and worker threads under a global memory limit. The library mode uses
 * every component of cllm-mem through its public API (weights heap, paged KV cache
 * with prefix sharing and preemption, per-worker step arenas, NUMA heaps, the global
 * monitor); the malloc mode runs the same workload with malloc/free and one
 * contiguous max-length KV buffer per request. --compare runs both and prints the
 * ratios. See --help for the options and tools/README_stepsim_section.md.
 *
 * This file: options, the derived configuration, the text report, main().
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cllm/version.h>

#include "stepsim.h"

double ss_now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void ss_fmt_bytes(char *buf, size_t n, size_t bytes) {
  if (bytes >= ((size_t)1 << 30)) snprintf(buf, n, "%.2f GiB", (double)bytes / (double)(1ull << 30));
  else if (bytes >= SS_MIB) snprintf(buf, n, "%.1f MiB", (double)bytes / (double)SS_MIB);
  else if (bytes >= 1024) snprintf(buf, n, "%.1f KiB", (double)bytes / 1024.0);
  else snprintf(buf, n, "%zu B", bytes);
}

/* ---- options -------------------------------------------------------------------------- */

static void usage(FILE *f) {
  fprintf(f,
"usage: stepsim [options]\n"
"\n"
"Serve a synthetic LLM workload on CPU worker threads through cllm-mem (weights heap,\n"
"paged KV cache, step arenas, NUMA heaps, global monitor) and report throughput,\n"
"memory and what the library did. Sizes accept K, M, G suffixes (powers of 1024).\n"
"\n"
"Model (a preset, then overrides):\n"
"  --model NAME            %s\n"
"  --layers N  --hidden N  --heads N  --kv-heads N  --head-dim N  --intermediate N\n"
"  --dtype-bytes {1,2,4}   element size of weights and K/V (default 2)\n"
"  --vocab N               vocabulary (token ids; weights size)\n"
"\n"
"Memory:\n"
"  --mem-limit SIZE        global monitor limit (default: weights + worker temps +\n"
"                          1 MiB bookkeeping + --kv-budget)\n"
"  --kv-budget SIZE        what the default limit leaves for KV (default: 16384\n"
"                          tokens of KV, e.g. 32M for small, 512M for llama-3.2-1b)\n"
"  --weights-bytes SIZE    weights heap size (default: the model's real size, capped\n"
"                          at 256M so presets of big models stay quick)\n"
"  --weights-file PATH     load the weights heap from this file (up to its size)\n"
"  --lock-weights MODE     off | best-effort | required (default best-effort)\n"
"  --weights-numa P        local | bind:N | interleave | replicate (one copy per node,\n"
"                          charged once per node) (default: interleave on several\n"
"                          nodes, local on one)\n"
"  --block-tokens N        KV block size in tokens, a power of two (default 16)\n"
"\n"
"Workload:\n"
"  --requests N            number of requests (default 360)\n"
"  --prompt-dist D         prompt lengths (default lognormal:160:0.9:16:1024)\n"
"  --output-dist D         output lengths (default lognormal:64:0.8:8:256)\n"
"                          D = fixed:N | uniform:MIN:MAX | lognormal:MEDIAN:SIGMA[:MIN:MAX]\n"
"  --shared-prefix-tokens N  system prompt length (default 256)\n"
"  --shared-fraction F     fraction of requests that start with it (default 0.5)\n"
"  --seed N                PRNG seed (default 42)\n"
"\n"
"Scheduler:\n"
"  --threads N             worker threads, bound to NUMA nodes when there are several\n"
"                          (default 2)\n"
"  --max-batch N           most running sequences (default 128)\n"
"  --prefill-chunk N       most prompt tokens of one request per step (default 256)\n"
"  --max-step-tokens N     token budget of one step (default 512)\n"
"  --max-seq-len N         context limit; malloc mode reserves this much KV per\n"
"                          request (default: longest prompt + system prompt + longest\n"
"                          output)\n"
"\n"
"Modes and output:\n"
"  --allocator A           library (default) | malloc (glibc malloc/free for temps,\n"
"                          one max-length KV buffer per request)\n"
"  --compare               run both allocators and print their ratios\n"
"  --json FILE             every figure and the config as JSON\n"
"  --timeline FILE.csv     one row per step (memory by category, KV blocks, batch,\n"
"                          step time)\n"
"  --plot FILE.png         plot the timeline with gnuplot\n"
"  --metrics               print the library's stats in Prometheus text format\n"
"  --progress MODE         auto (default: a bar when stderr is a terminal, else a\n"
"                          line every 2 s) | on | off\n"
"  --quiet                 no progress, no report (only what --metrics/--json ask)\n"
"  --help                  this text\n",
          ss_model_preset_list());
}

static int bad(const char *fmt, const char *a, const char *b) {
  fprintf(stderr, "stepsim: ");
  fprintf(stderr, fmt, a, b);
  fprintf(stderr, "\n(try --help)\n");
  exit(2);
}

static long long parse_int(const char *opt, const char *v, long long lo, long long hi) {
  char *end;
  errno = 0;
  long long x = strtoll(v, &end, 10);
  if (errno != 0 || end == v || *end != '\0' || x < lo || x > hi) {
    char range[64];
    snprintf(range, sizeof range, "%lld..%lld", lo, hi);
    fprintf(stderr, "stepsim: %s '%s': expected an integer in %s\n(try --help)\n", opt, v, range);
    exit(2);
  }
  return x;
}

static size_t parse_size(const char *opt, const char *v) {
  char *end;
  errno = 0;
  double x = strtod(v, &end);
  if (errno != 0 || end == v || !(x >= 0)) bad("%s '%s': expected a size such as 512M", opt, v);
  double mul = 1;
  if (*end != '\0') {
    char u = (char)toupper((unsigned char)*end);
    if (u == 'K') mul = 1024.0;
    else if (u == 'M') mul = 1024.0 * 1024;
    else if (u == 'G') mul = 1024.0 * 1024 * 1024;
    else if (u == 'T') mul = 1024.0 * 1024 * 1024 * 1024;
    else if (u != 'B') bad("%s '%s': unknown unit (use K, M, G)", opt, v);
    end++;
    if (*end == 'i' || *end == 'I') end++;
    if (*end == 'B' || *end == 'b') end++;
    if (*end != '\0') bad("%s '%s': trailing characters", opt, v);
  }
  double r = x * mul;
  if (r >= 1.8e19) bad("%s '%s': too large", opt, v);
  return (size_t)r;
}

typedef struct opts {
  ss_config_t c;
  int layers, hidden, heads, kv_heads, head_dim, intermediate, dtype, vocab;
  size_t kv_budget, weights_bytes;
  bool weights_given;
  int max_seq_len;
  const char *prompt, *output;
} opts_t;

static void parse(int argc, char **argv, opts_t *o) {
  ss_config_t *c = &o->c;
  memset(o, 0, sizeof *o);
  if (!ss_model_preset("small", &c->model)) abort();
  c->allocator = SS_ALLOC_LIBRARY;
  c->threads = 2;
  c->max_batch = 128;
  c->requests = 360;
  c->prefill_chunk = 256;
  c->max_step_tokens = 512;
  c->block_tokens = 16;
  c->shared_prefix_tokens = 256;
  c->shared_fraction = 0.5;
  c->lock = CLLM_WEIGHTS_LOCK_BEST_EFFORT;
  c->seed = 42;
  c->progress = SS_PROGRESS_AUTO;
  o->kv_budget = 0; /* derived: 16384 tokens of KV */
  o->prompt = "lognormal:160:0.9:16:1024";
  o->output = "lognormal:64:0.8:8:256";
  const char *model = NULL;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      exit(0);
    }
    if (!strcmp(a, "--compare")) { c->compare = true; continue; }
    if (!strcmp(a, "--metrics")) { c->metrics = true; continue; }
    if (!strcmp(a, "--quiet")) { c->quiet = true; continue; }
    if (strncmp(a, "--", 2) != 0) bad("unexpected argument '%s'%s", a, "");
    /* --opt=value or --opt value */
    char name[64];
    const char *v = NULL;
    const char *eq = strchr(a, '=');
    if (eq != NULL) {
      snprintf(name, sizeof name, "%.*s", (int)(eq - a), a);
      v = eq + 1;
    } else {
      snprintf(name, sizeof name, "%s", a);
      if (i + 1 >= argc) bad("%s needs a value%s", a, "");
      v = argv[++i];
    }
#define IS(x) (!strcmp(name, x))
    if (IS("--model")) model = v;
    else if (IS("--layers")) o->layers = (int)parse_int(name, v, 1, 1024);
    else if (IS("--hidden")) o->hidden = (int)parse_int(name, v, 8, 65536);
    else if (IS("--heads")) o->heads = (int)parse_int(name, v, 1, 1024);
    else if (IS("--kv-heads")) o->kv_heads = (int)parse_int(name, v, 1, 1024);
    else if (IS("--head-dim")) o->head_dim = (int)parse_int(name, v, 8, 1024);
    else if (IS("--intermediate")) o->intermediate = (int)parse_int(name, v, 8, 262144);
    else if (IS("--dtype-bytes")) {
      o->dtype = (int)parse_int(name, v, 1, 4);
      if (o->dtype == 3) bad("%s '%s': must be 1, 2 or 4", name, v);
    } else if (IS("--vocab")) o->vocab = (int)parse_int(name, v, 2, 1 << 24);
    else if (IS("--mem-limit")) { c->mem_limit = parse_size(name, v); c->mem_limit_given = true; }
    else if (IS("--kv-budget")) o->kv_budget = parse_size(name, v);
    else if (IS("--weights-bytes")) { o->weights_bytes = parse_size(name, v); o->weights_given = true; }
    else if (IS("--weights-file")) c->weights_file = v;
    else if (IS("--lock-weights")) {
      if (!strcmp(v, "off")) c->lock = CLLM_WEIGHTS_LOCK_OFF;
      else if (!strcmp(v, "best-effort")) c->lock = CLLM_WEIGHTS_LOCK_BEST_EFFORT;
      else if (!strcmp(v, "required")) c->lock = CLLM_WEIGHTS_LOCK_REQUIRED;
      else bad("%s '%s': expected off, best-effort or required", name, v);
    } else if (IS("--weights-numa")) {
      c->weights_numa_given = true;
      if (!strcmp(v, "local")) c->weights_numa = CLLM_WEIGHTS_NUMA_LOCAL;
      else if (!strcmp(v, "interleave")) c->weights_numa = CLLM_WEIGHTS_NUMA_INTERLEAVE;
      else if (!strcmp(v, "replicate")) c->weights_numa = CLLM_WEIGHTS_NUMA_REPLICATE;
      else if (!strncmp(v, "bind:", 5)) {
        c->weights_numa = CLLM_WEIGHTS_NUMA_BIND;
        c->weights_node = (int)parse_int(name, v + 5, 0, 63);
      } else bad("%s '%s': expected local, bind:N, interleave or replicate", name, v);
    } else if (IS("--block-tokens")) {
      c->block_tokens = (int)parse_int(name, v, 1, 4096);
      if (c->block_tokens & (c->block_tokens - 1)) bad("%s '%s': must be a power of two", name, v);
    } else if (IS("--requests")) c->requests = (int)parse_int(name, v, 1, 1000000);
    else if (IS("--prompt-dist")) o->prompt = v;
    else if (IS("--output-dist")) o->output = v;
    else if (IS("--shared-prefix-tokens")) c->shared_prefix_tokens = (int)parse_int(name, v, 0, 1 << 20);
    else if (IS("--shared-fraction")) {
      char *end;
      double f = strtod(v, &end);
      if (end == v || *end != '\0' || !(f >= 0 && f <= 1)) bad("%s '%s': expected a number in [0, 1]", name, v);
      c->shared_fraction = f;
    } else if (IS("--seed")) c->seed = (uint64_t)parse_int(name, v, 0, INT64_MAX);
    else if (IS("--threads")) c->threads = (int)parse_int(name, v, 1, SS_MAX_THREADS);
    else if (IS("--max-batch")) c->max_batch = (int)parse_int(name, v, 1, 100000);
    else if (IS("--prefill-chunk")) c->prefill_chunk = (int)parse_int(name, v, 1, 1 << 20);
    else if (IS("--max-step-tokens")) c->max_step_tokens = (int)parse_int(name, v, 1, 1 << 20);
    else if (IS("--max-seq-len")) o->max_seq_len = (int)parse_int(name, v, 2, 1 << 20);
    else if (IS("--allocator")) {
      if (!strcmp(v, "library") || !strcmp(v, "lib")) c->allocator = SS_ALLOC_LIBRARY;
      else if (!strcmp(v, "malloc")) c->allocator = SS_ALLOC_MALLOC;
      else bad("%s '%s': expected library or malloc", name, v);
    } else if (IS("--json")) c->json_path = v;
    else if (IS("--timeline")) c->timeline_path = v;
    else if (IS("--plot")) c->plot_path = v;
    else if (IS("--progress")) {
      if (!strcmp(v, "auto")) c->progress = SS_PROGRESS_AUTO;
      else if (!strcmp(v, "on")) c->progress = SS_PROGRESS_ON;
      else if (!strcmp(v, "off")) c->progress = SS_PROGRESS_OFF;
      else bad("%s '%s': expected auto, on or off", name, v);
    } else bad("unknown option '%s'%s", name, "");
#undef IS
  }
  if (model != NULL && !ss_model_preset(model, &c->model))
    bad("--model '%s': unknown preset (known: %s)", model, ss_model_preset_list());
  ss_model_t *m = &c->model;
  if (o->layers) m->layers = o->layers;
  if (o->hidden) m->hidden = o->hidden;
  if (o->heads) m->heads = o->heads;
  if (o->kv_heads) m->kv_heads = o->kv_heads;
  if (o->head_dim) m->head_dim = o->head_dim;
  if (o->intermediate) m->intermediate = o->intermediate;
  if (o->dtype) m->dtype_bytes = o->dtype;
  if (o->vocab) m->vocab = o->vocab;
  if (m->heads % m->kv_heads != 0) {
    char a[32], b[32];
    snprintf(a, sizeof a, "%d", m->heads);
    snprintf(b, sizeof b, "%d", m->kv_heads);
    bad("--heads %s must be a multiple of --kv-heads %s", a, b);
  }
  char err[160];
  if (!ss_dist_parse(o->prompt, &c->prompt, err, sizeof err)) bad("--prompt-dist %s%s", err, "");
  if (!ss_dist_parse(o->output, &c->output, err, sizeof err)) bad("--output-dist %s%s", err, "");
  if (c->threads > 1 && c->max_step_tokens < c->threads) c->max_step_tokens = c->threads;
}

/* Sizes that follow from the options. */
static void derive(opts_t *o) {
  ss_config_t *c = &o->c;
  c->max_seq_len = o->max_seq_len ? o->max_seq_len
                                  : c->prompt.max + c->shared_prefix_tokens + c->output.max;
  c->weights_real_bytes = ss_model_params(&c->model) * (uint64_t)c->model.dtype_bytes;
  if (o->weights_given) {
    c->weights_bytes = o->weights_bytes;
  } else if (c->weights_file != NULL) {
    struct stat st;
    if (stat(c->weights_file, &st) != 0) bad("--weights-file '%s': %s", c->weights_file, strerror(errno));
    c->weights_bytes = (size_t)st.st_size;
  } else {
    c->weights_bytes = c->weights_real_bytes < 256 * SS_MIB ? (size_t)c->weights_real_bytes : 256 * SS_MIB;
  }
  size_t min_w = (size_t)c->model.layers * (size_t)c->threads * 4096 * 2;
  if (c->weights_bytes < min_w) c->weights_bytes = min_w;
  c->weights_capped = c->weights_bytes < c->weights_real_bytes;
  c->kv_budget = o->kv_budget ? o->kv_budget : 16384 * ss_model_kv_token_bytes(&c->model);
  if (!c->mem_limit_given) {
    size_t w = (c->weights_bytes + 2 * SS_MIB - 1) & ~(2 * SS_MIB - 1);
    if (c->weights_numa_given && c->weights_numa == CLLM_WEIGHTS_NUMA_REPLICATE) {
      int copies = cllm_topology_nodes(cllm_topology_system()); /* one per node */
      w *= copies > 1 ? (size_t)copies : 1;
    }
    size_t temps = (size_t)c->threads * ss_step_temp_estimate(c, c->max_step_tokens / c->threads + 1);
    c->mem_limit = w + temps + 1 * SS_MIB + c->kv_budget;
  }
}

/* ---- the text report ------------------------------------------------------------------------ */

static const ss_result_t *g_cols[2];
static int g_ncols;

static void row_head(const char *label) { printf("  %-34s", label); }

static void row_num(const char *label, double a, double b, const char *fmt, bool ratio) {
  row_head(label);
  char t[48];
  for (int i = 0; i < g_ncols; i++) {
    snprintf(t, sizeof t, fmt, i == 0 ? a : b);
    printf(" %14s", t);
  }
  if (ratio && g_ncols == 2) {
    if (b > 0) printf(" %9.2fx", a / b);
    else printf(" %10s", "-");
  }
  printf("\n");
}

static void row_bytes(const char *label, size_t a, size_t b, bool ratio) {
  row_head(label);
  char t[32];
  for (int i = 0; i < g_ncols; i++) {
    ss_fmt_bytes(t, sizeof t, i == 0 ? a : b);
    printf(" %14s", t);
  }
  if (ratio && g_ncols == 2 && b > 0) printf(" %9.2fx", (double)a / (double)b);
  printf("\n");
}

static void row_str(const char *label, const char *a, const char *b) {
  row_head(label);
  for (int i = 0; i < g_ncols; i++) printf(" %14s", i == 0 ? a : b);
  printf("\n");
}

#define COL(field) g_cols[0]->field, (g_ncols > 1 ? g_cols[1]->field : 0)

static void report(const ss_config_t *c, const ss_result_t *a, const ss_result_t *b) {
  g_cols[0] = a;
  g_cols[1] = b;
  g_ncols = b ? 2 : 1;
  const ss_model_t *m = &c->model;
  char t1[32], t2[32], t3[32], t4[32];
  printf("\nstepsim (cllm-mem %s): model %s: %d layers, hidden %d, %d heads, %d kv heads, head_dim %d, "
         "intermediate %d, %d-byte dtype\n",
         cllm_version_string(), m->name, m->layers, m->hidden, m->heads, m->kv_heads, m->head_dim,
         m->intermediate, m->dtype_bytes);
  ss_fmt_bytes(t1, sizeof t1, c->weights_bytes);
  ss_fmt_bytes(t2, sizeof t2, (size_t)c->weights_real_bytes);
  ss_fmt_bytes(t3, sizeof t3, ss_model_kv_token_bytes(m));
  printf("  weights %s%s (the model's real size is %s%s); KV %s per token\n", t1,
         c->weights_file ? " from --weights-file" : "", t2,
         c->weights_capped ? ": capped so the run stays quick, every step still reads all of it" : "",
         t3);
  printf("  %d requests: prompt %s, output %s; %.0f%% start with a %d-token system prompt; seed %llu\n",
         c->requests, c->prompt.text, c->output.text, c->shared_fraction * 100, c->shared_prefix_tokens,
         (unsigned long long)c->seed);
  ss_fmt_bytes(t4, sizeof t4, c->mem_limit);
  printf("  %d worker threads, max batch %d, prefill chunk %d, %d tokens/step, max seq len %d, "
         "memory limit %s%s\n\n",
         c->threads, c->max_batch, c->prefill_chunk, c->max_step_tokens, c->max_seq_len, t4,
         c->mem_limit_given ? "" : " (weights + temps + KV budget)");
  row_head("");
  for (int i = 0; i < g_ncols; i++) printf(" %14s", g_cols[i]->mode);
  if (g_ncols == 2) printf(" %10s", "lib/malloc");
  printf("\n");
  row_num("throughput (generated tok/s)", COL(tokens_per_s), "%.0f", true);
  row_num("steps/s", COL(steps_per_s), "%.1f", true);
  row_num("step time median (ms)", COL(step_ms_median), "%.2f", false);
  row_num("step time p99 (ms)", COL(step_ms_p99), "%.2f", false);
  row_num("steps", (double)a->steps, b ? (double)b->steps : 0, "%.0f", false);
  row_num("wall time serving (s)", COL(run_s), "%.2f", false);
  row_num("mean batch (sequences/step)", COL(mean_batch), "%.1f", false);
  row_num("max concurrent sequences", (double)a->max_concurrent_seqs,
          b ? (double)b->max_concurrent_seqs : 0, "%.0f", true);
  row_num("tokens computed (prefill+decode)", (double)(a->prefill_tokens + a->decode_tokens),
          b ? (double)(b->prefill_tokens + b->decode_tokens) : 0, "%.0f", false);
  row_bytes("peak memory, total", COL(peak_bytes), true);
  for (int k = 0; k < CLLM_CAT_COUNT; k++) {
    char lab[40];
    snprintf(lab, sizeof lab, "  peak %s", cllm_category_name((cllm_category_t)k));
    row_bytes(lab, a->peak_cat[k], b ? b->peak_cat[k] : 0, false);
  }
  row_bytes("memory limit", COL(limit_bytes), false);
  row_num("KV utilisation (tokens/slots held)", a->kv_util_mean * 100, b ? b->kv_util_mean * 100 : 0,
          "%.1f%%", false);
  double hit_a = a->prefix_query_tokens ? 100.0 * (double)a->prefix_hit_tokens / (double)a->prefix_query_tokens : 0;
  double hit_b = b && b->prefix_query_tokens ? 100.0 * (double)b->prefix_hit_tokens / (double)b->prefix_query_tokens : 0;
  row_num("prefix hit rate (prompt tokens)", hit_a, hit_b, "%.1f%%", false);
  row_num("KV evictions (cached blocks reused)", (double)a->evictions, b ? (double)b->evictions : 0, "%.0f", false);
  row_num("reclaims (monitor runs)", (double)a->reclaim_runs, b ? (double)b->reclaim_runs : 0, "%.0f", false);
  row_bytes("reclaimed", (size_t)a->reclaimed_bytes, b ? (size_t)b->reclaimed_bytes : 0, false);
  row_num("preemptions by the KV cache", (double)a->kv_preemptions, b ? (double)b->kv_preemptions : 0, "%.0f", false);
  row_num("preemptions by the scheduler", (double)a->sched_preemptions, b ? (double)b->sched_preemptions : 0, "%.0f", false);
  row_num("prefill chunks deferred (temps)", (double)a->deferred_chunks, b ? (double)b->deferred_chunks : 0, "%.0f", false);
  row_num("requests finished", (double)a->finished, b ? (double)b->finished : 0, "%.0f", false);
  row_num("re-runs after preemption", (double)a->reruns, b ? (double)b->reruns : 0, "%.0f", false);
  for (int i = 0; i < c->threads && i < 8; i++) {
    char lab[48];
    snprintf(lab, sizeof lab, "temp high-water, worker %d", i);
    row_bytes(lab, a->arena_high_water[i], b ? b->arena_high_water[i] : 0, false);
  }
  if (c->threads > 8) printf("  (%d more workers in --json)\n", c->threads - 8);
  row_num("temp malloc calls", (double)a->temp_allocs, b ? (double)b->temp_allocs : 0, "%.0f", false);
  /* weights and heaps of the library run */
  const ss_result_t *lib = !strcmp(a->mode, "library") ? a : (b && !strcmp(b->mode, "library") ? b : NULL);
  if (lib != NULL) {
    char pages[256] = "";
    size_t off = 0;
    for (int n = 0; n < lib->weights_pages_nodes && off < sizeof pages - 32; n++)
      off += (size_t)snprintf(pages + off, sizeof pages - off, "%snode %d: %zu", n ? ", " : "", n,
                              lib->weights_pages_per_node[n]);
    ss_fmt_bytes(t1, sizeof t1, lib->weights_locked);
    ss_fmt_bytes(t2, sizeof t2, lib->weights_huge);
    printf("\n  library weights: placement %s (pages per node: %s), lock %s: %s locked%s%s, huge pages %s "
           "(%s), %s\n",
           lib->weights_numa, pages[0] ? pages : "n/a", lib->weights_lock, t1,
           lib->weights_lock_errno ? ", errno " : "", lib->weights_lock_errno ? strerror(lib->weights_lock_errno) : "",
           lib->weights_huge_mode, t2, lib->weights_sealed ? "sealed read-only" : "not sealed");
    ss_fmt_bytes(t1, sizeof t1, lib->kv_capacity_bytes);
    ss_fmt_bytes(t2, sizeof t2, lib->kv_block_bytes);
    printf("  library KV: %zu blocks of %s (%s pool); heaps mode %s; %d NUMA node(s); arenas: ",
           lib->kv_num_blocks, t2, t1, lib->heap_mode ? lib->heap_mode : "?", lib->numa_nodes);
    for (int i = 0; i < c->threads && i < 8; i++)
      printf("%sworker %d %llu resets, %llu spilled", i ? "; " : "", i,
             (unsigned long long)lib->arena_resets[i], (unsigned long long)lib->arena_spills[i]);
    printf("\n");
  }
  if (b != NULL) {
    printf("\n  library vs malloc: throughput %.2fx, peak memory %.2fx, max concurrent sequences %.2fx\n",
           b->tokens_per_s > 0 ? a->tokens_per_s / b->tokens_per_s : 0,
           b->peak_bytes > 0 ? (double)a->peak_bytes / (double)b->peak_bytes : 0,
           b->max_concurrent_seqs > 0 ? (double)a->max_concurrent_seqs / b->max_concurrent_seqs : 0);
  }
  printf("\n");
}

int main(int argc, char **argv) {
  /* under `bazel run`, relative paths (--json, --plot, ...) mean the caller's directory */
  const char *wd = getenv("BUILD_WORKING_DIRECTORY");
  if (wd != NULL && wd[0] != '\0' && chdir(wd) != 0)
    fprintf(stderr, "stepsim: cannot enter %s: %s\n", wd, strerror(errno));
  opts_t o;
  parse(argc, argv, &o);
  derive(&o);
  ss_config_t *c = &o.c;
  if (c->quiet) cllm_set_log_fn(cllm_log_discard, NULL);

  ss_result_t r[2];
  memset(r, 0, sizeof r);
  int n = 0, rc = 0;
  if (c->compare) {
    rc |= ss_run(c, SS_ALLOC_LIBRARY, &r[0]);
    rc |= ss_run(c, SS_ALLOC_MALLOC, &r[1]);
    n = 2;
  } else {
    rc |= ss_run(c, c->allocator, &r[0]);
    n = 1;
  }
  if (!c->quiet) report(c, &r[0], n == 2 ? &r[1] : NULL);
  const ss_result_t *lib = c->compare || c->allocator == SS_ALLOC_LIBRARY ? &r[0] : NULL;
  const ss_result_t *mal = c->compare ? &r[1] : (c->allocator == SS_ALLOC_MALLOC ? &r[0] : NULL);
  if (c->json_path && ss_write_json(c, lib, mal, c->json_path) != 0) rc = -1;
  if (c->timeline_path && ss_write_timeline(lib, mal, c->timeline_path) != 0) rc = -1;
  if (c->plot_path) {
    const char *csv = c->timeline_path;
    char tmp[] = "/tmp/stepsim_timeline_XXXXXX";
    if (csv == NULL) {
      int fd = mkstemp(tmp);
      if (fd >= 0) {
        FILE *f = fdopen(fd, "w");
        if (f) fclose(f);
        csv = tmp;
        if (ss_write_timeline(lib, mal, csv) != 0) rc = -1;
      }
    }
    if (csv && ss_write_plot(c, lib, mal, csv, c->plot_path) != 0) rc = -1;
    if (csv == tmp) remove(tmp);
  }
  if (c->metrics) { /* the library run's components; a malloc-only run has just the monitor */
    const ss_result_t *m = lib ? lib : mal;
    if (m && m->metrics_text) fputs(m->metrics_text, stdout);
  }
  for (int i = 0; i < n; i++) ss_result_free(&r[i]);
  return rc == 0 ? 0 : 1;
}
