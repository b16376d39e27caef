/* stepsim: drives cllm-mem with a CPU LLM serving workload and prints a report.
 *
 * A model preset gives the shapes; requests with long-tailed prompt and output
 * lengths (a fraction sharing a system prompt) are served by a continuous-batching
 * scheduler and worker threads under a global memory limit. The library mode uses
 * every component of cllm-mem through its public API (weights heap, paged KV cache
 * with prefix sharing and preemption, per-worker step arenas, NUMA heaps, the global
 * monitor); the malloc mode runs the same workload with malloc/free and one
 * contiguous max-length KV buffer per request. --compare runs both and prints the
 * ratios. See --help for the options and README.md for the figures.
 *
 * This file: options, the derived configuration, the text report, main().
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdarg.h>
#include <sys/resource.h>
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
  if (bytes >= ((size_t)1 << 40)) snprintf(buf, n, "%.2f TiB", (double)bytes / (double)(1ull << 40));
  else if (bytes >= ((size_t)1 << 30)) snprintf(buf, n, "%.2f GiB", (double)bytes / (double)(1ull << 30));
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
"                          tokens of KV, e.g. 32M for small, 512M for llama-3.2-1b;\n"
"                          0 is refused: omit it for the default)\n"
"  --weights-bytes SIZE    weights heap size (default: the model's real size, capped\n"
"                          at 256M so presets of big models stay quick)\n"
"  --weights-file PATH     load the weights heap from this file (up to its size)\n"
"  --lock-weights MODE     off | best-effort | required (default best-effort)\n"
"  --weights-numa P        local | bind:N | interleave | replicate (one copy per node,\n"
"                          charged once per node) (default: interleave on several\n"
"                          nodes, local on one)\n"
"  --kv-numa P             local | bind:N | interleave: the KV pools' placement\n"
"                          (default: interleave on several nodes)\n"
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
"                          output). Longer prompts are rejected (counted, reported),\n"
"                          outputs stop at it\n"
"\n"
"Modes and output:\n"
"  --allocator A           library (default) | malloc (glibc malloc/free for temps,\n"
"                          one max-length KV buffer per request)\n"
"  --compare               run both allocators and print their ratios\n"
"  --json FILE             every figure and the config as JSON (- = stdout; the text\n"
"                          report then goes to stderr)\n"
"  --timeline FILE.csv     one row per step (memory by category, KV blocks, batch,\n"
"                          step time; - = stdout)\n"
"  --plot FILE.png         plot the timeline with gnuplot\n"
"  --metrics               print the library's stats in Prometheus text format\n"
"  --progress MODE         auto (default: a bar when stderr is a terminal, else a\n"
"                          line every 2 s) | on | off\n"
"  --quiet                 no progress, no report (only what --metrics/--json ask)\n"
"  --kv-store EP           keep full KV blocks in Redis and fetch prompt prefixes from it:\n"
"                          redis://HOST:PORT, unix:PATH or cluster:HOST:PORT,HOST:PORT\n"
"  --help                  this text\n"
"\n"
"Sizes are checked before anything is mapped: against each other (the limit must hold\n"
"the weights, every worker's temps and one sequence of --max-seq-len), against the\n"
"memory this machine has available and RLIMIT_AS. Output files are opened and gnuplot\n"
"found before the run. Exit status: 0 done, 1 the run failed, 2 bad arguments or\n"
"sizes that cannot work.\n",
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

/* Options that take a value: `--json --compare` must not take --compare as a file. */
static bool takes_value(const char *name) {
  static const char *const names[] = {
      "--model", "--layers", "--hidden", "--heads", "--kv-heads", "--head-dim", "--intermediate",
      "--dtype-bytes", "--vocab", "--mem-limit", "--kv-budget", "--weights-bytes", "--weights-file",
      "--lock-weights", "--block-tokens", "--requests", "--prompt-dist", "--output-dist",
      "--shared-prefix-tokens", "--shared-fraction", "--seed", "--threads", "--max-batch",
      "--prefill-chunk", "--max-step-tokens", "--max-seq-len", "--allocator", "--json",
      "--timeline", "--plot", "--progress", "--kv-store", "--weights-numa", "--kv-numa"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (!strcmp(name, names[i])) return true;
  return false;
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
      if (v[0] == '-' && v[1] == '-' && takes_value(name))
        bad("%s needs a value, got the option '%s'", name, v);
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
    else if (IS("--mem-limit")) {
      c->mem_limit = parse_size(name, v);
      c->mem_limit_given = true;
      c->mem_limit_text = v;
      if (c->mem_limit == 0) bad("%s '%s': must be above 0", name, v);
    } else if (IS("--kv-budget")) {
      o->kv_budget = parse_size(name, v);
      c->kv_budget_text = v;
      if (o->kv_budget == 0) bad("%s '%s': must be above 0 (omit it for the default)", name, v);
    } else if (IS("--weights-bytes")) {
      o->weights_bytes = parse_size(name, v);
      o->weights_given = true;
      c->weights_bytes_text = v;
      if (o->weights_bytes == 0) bad("%s '%s': must be above 0", name, v);
    }
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
    } else if (IS("--kv-numa")) {
      c->kv_numa_given = true;
      if (!strcmp(v, "local")) c->kv_numa = CLLM_KV_NUMA_LOCAL;
      else if (!strcmp(v, "interleave")) c->kv_numa = CLLM_KV_NUMA_INTERLEAVE;
      else if (!strncmp(v, "bind:", 5)) {
        c->kv_numa = CLLM_KV_NUMA_BIND;
        c->kv_node = (int)parse_int(name, v + 5, 0, 63);
      } else bad("%s '%s': expected local, bind:N or interleave", name, v);
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
    } else if (IS("--kv-store")) c->kv_store = v;
    else bad("unknown option '%s'%s", name, "");
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
  c->kv_budget = o->kv_budget ? o->kv_budget : ss_mul_sat(16384, ss_model_kv_token_bytes(&c->model));
  if (!c->mem_limit_given) { /* what the library charges for one request, KV budget for KV */
    ss_need_t n;
    ss_lib_required_bytes(c, &n);
    c->mem_limit = ss_add_sat(ss_add_sat(n.weights, n.temps), ss_add_sat(SS_BOOK_BYTES, c->kv_budget));
  }
}

/* "node 0: N, node 1: M" ("" when there are no counts). */
static void fmt_pages(char *buf, size_t len, const size_t *counts, int n_nodes) {
  size_t off = 0;
  buf[0] = 0;
  for (int n = 0; n < n_nodes && off < len - 32; n++)
    off += (size_t)snprintf(buf + off, len - off, "%snode %d: %zu", n ? ", " : "", n, counts[n]);
}

/* ---- sizes that cannot work: refused (exit 2) before anything is mapped ----------------- */

static void refuse(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void refuse(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("stepsim: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(2);
}

/* The unit letter typed in a size ("118M" -> 'M'); 0 for plain bytes or none. */
static char typed_unit(const char *text) {
  if (text == NULL) return 0;
  char *end;
  (void)strtod(text, &end);
  char u = (char)toupper((unsigned char)*end);
  return u == 'K' || u == 'M' || u == 'G' || u == 'T' ? u : 0;
}

static double unit_bytes(char u) {
  return u == 'K' ? 0x1p10 : u == 'M' ? 0x1p20 : u == 'G' ? 0x1p30 : u == 'T' ? 0x1p40 : 1;
}

/* `bytes` in the unit typed in `text` (118M -> "115.3 MiB"), else the natural unit. */
typedef struct { char s[64]; } sz_t;
static sz_t in_units(size_t bytes, const char *text) {
  sz_t r;
  char u = typed_unit(text);
  if (bytes == SIZE_MAX) snprintf(r.s, sizeof r.s, "more than 16 EiB");
  else if (u == 0) ss_fmt_bytes(r.s, sizeof r.s, bytes);
  else {
    double v = (double)bytes / unit_bytes(u);
    char nat[32];
    ss_fmt_bytes(nat, sizeof nat, bytes);
    if (v >= 10000) snprintf(r.s, sizeof r.s, "%s", nat); /* 1K typed, 3 MiB meant */
    else if (v >= 0.1 || bytes == 0) snprintf(r.s, sizeof r.s, "%.1f %ciB", v, u);
    else if (v >= 0.001) snprintf(r.s, sizeof r.s, "%.3g %ciB (%s)", v, u, nat);
    else snprintf(r.s, sizeof r.s, "%s", nat);
  }
  return r;
}

/* `bytes` rounded up to a whole number of the typed unit, as an option value ("142M"). */
static sz_t as_option(size_t bytes, const char *text) {
  sz_t r;
  char u = typed_unit(text);
  if (u == 0) u = bytes >= ((size_t)1 << 30) ? 'G' : 'M';
  snprintf(r.s, sizeof r.s, "%.0f%c", ceil((double)bytes / unit_bytes(u)), u);
  return r;
}

typedef struct machine {
  size_t avail;           /* MemAvailable, or what a cgroup v2 memory.max leaves if less */
  const char *avail_src;
  size_t as_limit;        /* RLIMIT_AS, SIZE_MAX when unlimited */
} machine_t;

static size_t read_ull(const char *path) {
  FILE *f = fopen(path, "r");
  unsigned long long v = 0;
  bool ok = f != NULL && fscanf(f, "%llu", &v) == 1;
  if (f != NULL) fclose(f);
  return ok ? (size_t)v : SIZE_MAX;
}

static void machine_memory(machine_t *m) {
  m->avail = SIZE_MAX;
  m->avail_src = "MemAvailable";
  FILE *f = fopen("/proc/meminfo", "r");
  char line[128];
  unsigned long long kb;
  while (f != NULL && fgets(line, sizeof line, f) != NULL)
    if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) m->avail = ss_mul_sat((size_t)kb, 1024);
  if (f != NULL) fclose(f);
  size_t max = read_ull("/sys/fs/cgroup/memory.max"); /* "max" reads as SIZE_MAX */
  if (max != SIZE_MAX) {
    size_t cur = read_ull("/sys/fs/cgroup/memory.current");
    size_t left = cur != SIZE_MAX && max > cur ? max - cur : 0;
    if (left < m->avail) {
      m->avail = left;
      m->avail_src = "what the cgroup's memory.max leaves";
    }
  }
  struct rlimit rl;
  m->as_limit = getrlimit(RLIMIT_AS, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY ? (size_t)rl.rlim_cur
                                                                               : SIZE_MAX;
}

/* Address space beyond the limit: worker stacks and malloc arenas, libraries,
 * mimalloc's reservations, the KV pools' per-layer 2 MiB rounding. */
static size_t address_overhead(const ss_config_t *c) {
  return 128 * SS_MIB + (size_t)(c->threads + 1) * 72 * SS_MIB + (size_t)c->model.layers * 4 * SS_MIB;
}

/* What to lower when one request alone needs too much: the largest part. */
static const char *need_hint(const ss_config_t *c, const ss_need_t *n) {
  if (n->seq >= n->weights && n->seq >= n->temps)
    return c->model.layers > 0 ? "lower --max-seq-len, or the KV size of the model shape "
                                 "(--layers x --kv-heads x --head-dim x --dtype-bytes)"
                               : "lower --max-seq-len";
  if (n->temps >= n->weights) return "lower --max-step-tokens, --prefill-chunk or --threads";
  return "lower --weights-bytes";
}

typedef struct { char s[512]; } line_t;
static line_t breakdown(const ss_config_t *c, const ss_need_t *n, const char *units) {
  line_t r;
  sz_t w = in_units(n->weights, units), t = in_units(n->temps, units), b = in_units(n->book, units),
       q = in_units(n->seq, units), s = in_units(n->total, units);
  snprintf(r.s, sizeof r.s, "weights %s + temps %s (%d worker%s) + bookkeeping %s + one sequence of "
           "--max-seq-len %d %s = %s", w.s, t.s, c->threads, c->threads == 1 ? "" : "s", b.s, c->max_seq_len,
           q.s, s.s);
  return r;
}

static void check_sizes(const opts_t *o) {
  const ss_config_t *c = &o->c;
  machine_t mm;
  machine_memory(&mm);
  sz_t as = in_units(mm.as_limit, NULL);
  /* 1. each size typed, on its own */
  struct {
    const char *opt, *text, *units, *what;
    size_t bytes;
  } typed[] = {
      {"--mem-limit", c->mem_limit_text, c->mem_limit_text,
       "the run fills the limit (the KV cache takes what the rest leaves)", c->mem_limit_given ? c->mem_limit : 0},
      {"--kv-budget", c->kv_budget_text, c->kv_budget_text, "the default --mem-limit adds it whole", o->kv_budget},
      {"--weights-bytes", c->weights_bytes_text, c->weights_bytes_text, "the weights are mapped and filled",
       o->weights_given ? o->weights_bytes : 0},
      {"--weights-file", c->weights_file, NULL, "the weights heap takes the file's size",
       !o->weights_given && c->weights_file != NULL ? c->weights_bytes : 0},
  };
  for (size_t i = 0; i < sizeof typed / sizeof typed[0]; i++) {
    const char *u = typed[i].units;
    sz_t v = in_units(typed[i].bytes, u), a = in_units(mm.avail, u), l = in_units(mm.as_limit, u);
    if (typed[i].bytes > mm.avail)
      refuse("%s %s: %s is more than the %s this machine has available (%s); %s", typed[i].opt,
             typed[i].text, v.s, a.s, mm.avail_src, typed[i].what);
    if (typed[i].bytes > mm.as_limit)
      refuse("%s %s: %s is more than RLIMIT_AS (ulimit -v) allows: %s", typed[i].opt, typed[i].text,
             v.s, l.s);
  }
  /* 2. one request alone, in each mode that runs: against the machine, then the limit */
  for (int mode = 0; mode < 2; mode++) {
    ss_alloc_t a = mode == 0 ? SS_ALLOC_LIBRARY : SS_ALLOC_MALLOC;
    if (!c->compare && c->allocator != a) continue;
    const char *name = mode == 0 ? "library" : "malloc";
    ss_need_t n;
    if (mode == 0) ss_lib_required_bytes(c, &n);
    else ss_malloc_required_bytes(c, &n);
    const char *units = c->mem_limit_given ? c->mem_limit_text : c->kv_budget_text;
    size_t machine = mm.avail < mm.as_limit ? mm.avail : mm.as_limit;
    if (n.total > machine)
      refuse("one request alone needs, in %s mode, %s: more than the %s %s; %s", name,
             breakdown(c, &n, units).s, in_units(machine, units).s,
             mm.avail <= mm.as_limit ? "this machine has available" : "RLIMIT_AS (ulimit -v) allows",
             need_hint(c, &n));
    if (n.total > c->mem_limit) {
      if (c->mem_limit_given)
        refuse("--mem-limit %s cannot hold one request in %s mode: %s > %s; raise --mem-limit to at least "
               "%s or %s", c->mem_limit_text, name, breakdown(c, &n, units).s,
               in_units(c->mem_limit, units).s, as_option(n.total, units).s, need_hint(c, &n));
      size_t more = n.total - c->mem_limit;
      refuse("--kv-budget %s (what the default limit leaves for KV) cannot hold one request in %s mode: "
             "%s > limit %s; raise --kv-budget to at least %s or give --mem-limit",
             c->kv_budget_text ? c->kv_budget_text : in_units(c->kv_budget, NULL).s, name,
             breakdown(c, &n, units).s,
             in_units(c->mem_limit, units).s, as_option(ss_add_sat(c->kv_budget, more), units).s);
    }
  }
  /* 3. the default limit (weights + temps + bookkeeping + KV budget) */
  if (!c->mem_limit_given && c->mem_limit > mm.avail) {
    const char *u = c->kv_budget_text;
    char kv[192];
    if (u != NULL) snprintf(kv, sizeof kv, "--kv-budget %s", u);
    else snprintf(kv, sizeof kv, "KV budget %s (default: 16384 tokens of %s)",
                  in_units(c->kv_budget, NULL).s, in_units(ss_model_kv_token_bytes(&c->model), NULL).s);
    refuse("the default --mem-limit (weights + temps + bookkeeping + %s) is %s, more than the %s this "
           "machine has available (%s); lower --kv-budget or give --mem-limit", kv,
           in_units(c->mem_limit, u).s, in_units(mm.avail, u).s, mm.avail_src);
  }
  /* 4. address space: the limit and what a process of these threads maps besides */
  size_t vm = ss_add_sat(c->mem_limit, address_overhead(c));
  if (vm > mm.as_limit) {
    const char *u = c->mem_limit_text;
    refuse("RLIMIT_AS (ulimit -v) is %s; a run under the limit %s needs about %s of address space (the "
           "limit + %s for %d worker threads, libraries and allocator reservations); raise ulimit -v or "
           "lower %s", as.s, in_units(c->mem_limit, u).s, in_units(vm, u).s,
           in_units(address_overhead(c), u).s, c->threads, c->mem_limit_given ? "--mem-limit" : "--kv-budget");
  }
}


/* ---- the text report ------------------------------------------------------------------------ */

static const ss_result_t *g_cols[2];
static int g_ncols;
static FILE *g_rep; /* stdout, or stderr when --json - / --timeline - take stdout */
#define P(...) fprintf(g_rep, __VA_ARGS__)

static void row_head(const char *label) { P("  %-34s", label); }

static void row_num(const char *label, double a, double b, const char *fmt, bool ratio) {
  row_head(label);
  char t[48];
  for (int i = 0; i < g_ncols; i++) {
    snprintf(t, sizeof t, fmt, i == 0 ? a : b);
    P(" %14s", t);
  }
  if (ratio && g_ncols == 2) {
    if (b > 0) P(" %9.2fx", a / b);
    else P(" %10s", "-");
  }
  P("\n");
}

static void row_bytes(const char *label, size_t a, size_t b, bool ratio) {
  row_head(label);
  char t[32];
  for (int i = 0; i < g_ncols; i++) {
    ss_fmt_bytes(t, sizeof t, i == 0 ? a : b);
    P(" %14s", t);
  }
  if (ratio && g_ncols == 2 && b > 0) P(" %9.2fx", (double)a / (double)b);
  P("\n");
}

static void row_str(const char *label, const char *a, const char *b) {
  row_head(label);
  for (int i = 0; i < g_ncols; i++) P(" %14s", i == 0 ? a : b);
  P("\n");
}

#define NA(str) ((str) != NULL ? (str) : "n/a")
#define COL(field) g_cols[0]->field, (g_ncols > 1 ? g_cols[1]->field : 0)

static void report(const ss_config_t *c, const ss_result_t *a, const ss_result_t *b) {
  g_cols[0] = a;
  g_cols[1] = b;
  g_ncols = b ? 2 : 1;
  const ss_model_t *m = &c->model;
  char t1[32], t2[32], t3[32], t4[32];
  P("\nstepsim (cllm-mem %s): model %s: %d layers, hidden %d, %d heads, %d kv heads, head_dim %d, "
         "intermediate %d, %d-byte dtype\n",
         cllm_version_string(), m->name, m->layers, m->hidden, m->heads, m->kv_heads, m->head_dim,
         m->intermediate, m->dtype_bytes);
  ss_fmt_bytes(t1, sizeof t1, c->weights_bytes);
  ss_fmt_bytes(t2, sizeof t2, (size_t)c->weights_real_bytes);
  ss_fmt_bytes(t3, sizeof t3, ss_model_kv_token_bytes(m));
  P("  weights %s%s (the model's real size is %s%s); KV %s per token\n", t1,
         c->weights_file ? " from --weights-file" : "", t2,
         c->weights_capped ? ": capped so the run stays quick, every step still reads all of it" : "",
         t3);
  P("  %d requests: prompt %s, output %s; %.0f%% start with a %d-token system prompt; seed %llu\n",
         c->requests, c->prompt.text, c->output.text, c->shared_fraction * 100, c->shared_prefix_tokens,
         (unsigned long long)c->seed);
  ss_fmt_bytes(t4, sizeof t4, c->mem_limit);
  P("  %d worker thread%s, max batch %d, prefill chunk %d, %d tokens/step, max seq len %d, "
         "memory limit %s%s\n\n",
         c->threads, c->threads == 1 ? "" : "s", c->max_batch, c->prefill_chunk, c->max_step_tokens,
         c->max_seq_len, t4,
         c->mem_limit_given ? "" : " (weights + temps + KV budget)");
  row_head("");
  for (int i = 0; i < g_ncols; i++) P(" %14s", g_cols[i]->mode);
  if (g_ncols == 2) P(" %10s", "lib/malloc");
  P("\n");
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
  if (c->kv_store != NULL)
    row_num("  of it fetched from --kv-store", (double)a->prompt_tokens_remote,
            b ? (double)b->prompt_tokens_remote : 0, "%.0f", false);
  row_num("KV evictions (cached blocks reused)", (double)a->evictions, b ? (double)b->evictions : 0, "%.0f", false);
  row_num("reclaims (monitor runs)", (double)a->reclaim_runs, b ? (double)b->reclaim_runs : 0, "%.0f", false);
  row_bytes("reclaimed", (size_t)a->reclaimed_bytes, b ? (size_t)b->reclaimed_bytes : 0, false);
  row_num("preemptions by the KV cache", (double)a->kv_preemptions, b ? (double)b->kv_preemptions : 0, "%.0f", false);
  row_num("preemptions by the scheduler", (double)a->sched_preemptions, b ? (double)b->sched_preemptions : 0, "%.0f", false);
  row_num("prefill chunks deferred (temps)", (double)a->deferred_chunks, b ? (double)b->deferred_chunks : 0, "%.0f", false);
  row_num("requests finished", (double)a->finished, b ? (double)b->finished : 0, "%.0f", false);
  if (a->rejected_too_long + a->rejected_no_room + (b ? b->rejected_too_long + b->rejected_no_room : 0) > 0) {
    row_num("  rejected: prompt > --max-seq-len", (double)a->rejected_too_long,
            b ? (double)b->rejected_too_long : 0, "%.0f", false);
    row_num("  rejected: do not fit alone", (double)a->rejected_no_room, b ? (double)b->rejected_no_room : 0,
            "%.0f", false);
  }
  row_num("re-runs after preemption", (double)a->reruns, b ? (double)b->reruns : 0, "%.0f", false);
  for (int i = 0; i < c->threads && i < 8; i++) {
    char lab[48];
    snprintf(lab, sizeof lab, "temp high-water, worker %d", i);
    row_bytes(lab, a->arena_high_water[i], b ? b->arena_high_water[i] : 0, false);
  }
  if (c->threads > 8) P("  (%d more workers in --json)\n", c->threads - 8);
  row_num("temp malloc calls", (double)a->temp_allocs, b ? (double)b->temp_allocs : 0, "%.0f", false);
  /* weights and heaps of the library run */
  const ss_result_t *lib = !strcmp(a->mode, "library") ? a : (b && !strcmp(b->mode, "library") ? b : NULL);
  if (lib != NULL) {
    char pages[256], kv_pages[256];
    fmt_pages(pages, sizeof pages, lib->weights_pages_per_node, lib->weights_pages_nodes);
    fmt_pages(kv_pages, sizeof kv_pages, lib->kv_pages_per_node, lib->kv_pages_nodes);
    ss_fmt_bytes(t1, sizeof t1, lib->weights_locked);
    ss_fmt_bytes(t2, sizeof t2, lib->weights_huge);
    P("\n  library weights: placement %s (pages per node: %s), lock %s: %s locked%s%s, huge pages %s "
           "(%s), %s\n",
           NA(lib->weights_numa), pages[0] ? pages : "n/a", NA(lib->weights_lock), t1,
           lib->weights_lock_errno ? ", errno " : "", lib->weights_lock_errno ? strerror(lib->weights_lock_errno) : "",
           NA(lib->weights_huge_mode), t2, lib->weights_sealed ? "sealed read-only" : "not sealed");
    P("  library KV pools: placement %s (pages per node: %s; never touched: %zu)\n",
      NA(lib->kv_numa), kv_pages[0] ? kv_pages : "n/a", lib->kv_pages_absent);
    ss_fmt_bytes(t1, sizeof t1, lib->kv_capacity_bytes);
    ss_fmt_bytes(t2, sizeof t2, lib->kv_block_bytes);
    P("  library KV: %zu blocks of %s (%s pool); heaps mode %s; %d NUMA node(s); arenas: ",
           lib->kv_num_blocks, t2, t1, NA(lib->heap_mode), lib->numa_nodes);
    for (int i = 0; i < c->threads && i < 8; i++)
      P("%sworker %d %llu resets, %llu spilled", i ? "; " : "", i,
             (unsigned long long)lib->arena_resets[i], (unsigned long long)lib->arena_spills[i]);
    P("\n");
  }
  if (b != NULL) {
    P("\n  library vs malloc: throughput %.2fx, peak memory %.2fx, max concurrent sequences %.2fx\n",
           b->tokens_per_s > 0 ? a->tokens_per_s / b->tokens_per_s : 0,
           b->peak_bytes > 0 ? (double)a->peak_bytes / (double)b->peak_bytes : 0,
           b->max_concurrent_seqs > 0 ? (double)a->max_concurrent_seqs / b->max_concurrent_seqs : 0);
  }
  P("\n");
}

int main(int argc, char **argv) {
  /* under `bazel run`, relative paths (--json, --plot, ...) mean the caller's directory */
  const char *wd = getenv("BUILD_WORKING_DIRECTORY");
  if (wd != NULL && wd[0] != '\0' && chdir(wd) != 0)
    fprintf(stderr, "stepsim: cannot enter %s: %s\n", wd, strerror(errno));
  opts_t o;
  parse(argc, argv, &o);
  derive(&o);
  check_sizes(&o); /* exits 2 before anything is mapped */
  ss_config_t *c = &o.c;
  ss_outputs_t out;
  ss_outputs_open(c, &out); /* exits 2 when one cannot be written */
  g_rep = out.stdout_taken ? stderr : stdout;
  if (c->quiet) cllm_set_log_fn(cllm_log_discard, NULL);

  ss_result_t r[2];
  memset(r, 0, sizeof r);
  int n = 0, rc = 0;
  if (c->compare) {
    rc |= ss_run(c, SS_ALLOC_LIBRARY, &r[0]);
    if (rc == 0) rc |= ss_run(c, SS_ALLOC_MALLOC, &r[1]);
    n = 2;
  } else {
    rc |= ss_run(c, c->allocator, &r[0]);
    n = 1;
  }
  if (rc != 0) { /* no report of a run that did not happen, no empty files */
    ss_outputs_discard(&out);
    const ss_result_t *bad_run = n == 2 && r[0].ok ? &r[1] : &r[0];
    fprintf(stderr, "stepsim: the %s run failed (the reason is above); no report\n", bad_run->mode);
    for (int i = 0; i < n; i++) ss_result_free(&r[i]);
    return 1;
  }
  if (!c->quiet) report(c, &r[0], n == 2 ? &r[1] : NULL);
  const ss_result_t *lib = c->compare || c->allocator == SS_ALLOC_LIBRARY ? &r[0] : NULL;
  const ss_result_t *mal = c->compare ? &r[1] : (c->allocator == SS_ALLOC_MALLOC ? &r[0] : NULL);
  if (ss_outputs_write(c, &out, lib, mal, c->quiet ? NULL : g_rep) != 0) rc = -1;
  if (c->metrics) { /* the library run's components; a malloc-only run has just the monitor */
    const ss_result_t *m = lib ? lib : mal;
    if (m && m->metrics_text) fputs(m->metrics_text, stdout);
  }
  for (int i = 0; i < n; i++) ss_result_free(&r[i]);
  return rc == 0 ? 0 : 1;
}
