/* arena_bench: the "transformer step" workload against general allocators.
 *
 * Per step, for each of 32 layers, 8 temporary buffers with sizes drawn from a seeded
 * log-uniform distribution between 256 B and 4 MiB; the first cache line of each is
 * written; everything is released at the end of the step. Cases:
 *   vary   sizes redrawn every step (prefill-like): 64 seeded step tables, cycled;
 *   fixed  the same 256 sizes every step (decode-like, the serving steady state).
 * Implementations (impl):
 *   cllm_arena     the arena as a hot loop uses it: per step cllm_arena_cursor_begin,
 *                  cllm_arena_cursor_alloc for every buffer, cllm_arena_cursor_end, then
 *                  cllm_arena_reset (default config: THP, pre-faulted)
 *   cllm_arena_alloc  the same arena with cllm_arena_alloc (the bump pointer stays in
 *                  the arena: the char store of the touch may alias it, so the compiler
 *                  reloads it after every buffer) + cllm_arena_reset
 *   glibc          glibc's malloc / free (bench_glibc_*: malloc itself is mimalloc here)
 *   mimalloc       mi_malloc / mi_free
 *   mimalloc_heap  mi_heap_new, mi_heap_malloc..., mi_heap_destroy per step
 *   jemalloc       mallocx / dallocx from libjemalloc.so.2 (dlopen, RTLD_LOCAL: it does
 *                  not replace the process malloc); skipped if it cannot be loaded
 *   tcmalloc       tc_malloc / tc_free from libtcmalloc_minimal.so.4 (dlopen, same)
 *   ideal_bump     an inline bump pointer over one pre-faulted buffer on 4 KiB pages
 *   ideal_bump_thp the same on transparent huge pages (the physical limit)
 * Every thread runs its own instance (its own arena / heap / buffer) on its own size
 * tables. ns_per_op is wall time / allocations of all threads together, the share of
 * free / reset included; min and median over the repetitions. Extras:
 * faults_per_step (minor page faults per step and thread, getrusage, over the timed
 * repetitions), on cllm_arena rows reset_ns (ns per cllm_arena_reset after a one-
 * allocation step, 1e6 resets) and allocator_calls_per_step (chunk calls during the
 * timed repetitions: 0 in the steady state), on cllm_arena and ideal_bump rows
 * thp_fraction (thread 0, after the repetitions: AnonHugePages / Size of the mapping
 * that holds the arena's chunk or the bump buffer, from /proc/self/smaps; -1 unknown).
 *
 *   tools/bazel run -c opt //bench:arena_bench -- --quick
 *   own flags: --impl NAME (only that impl), --case vary|fixed,
 *              --steps N (N steps per repetition, no calibration: with --threads 1 the
 *              work is the same from run to run, e.g. for instruction counts:
 *   valgrind --tool=callgrind --toggle-collect=run_steps --toggle-collect=reset_loop \
 *     arena_bench --impl cllm_arena --case fixed --threads 1 --reps 1 --steps 200)
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <mimalloc.h>

#include <cllm/arena.h>

#include "harness.h"

#define LAYERS 32
#define BUFS 8
#define PER_STEP (LAYERS * BUFS)
#define MIN_SIZE 256.0
#define MAX_SIZE (4.0 * 1024 * 1024)
#define VARY_TABLES 64

enum { I_ARENA, I_ARENA_ALLOC, I_GLIBC, I_MI, I_MI_HEAP, I_JE, I_TC, I_BUMP, I_BUMP_THP, I_COUNT };
static const char *const k_impl[I_COUNT] = {
    "cllm_arena", "cllm_arena_alloc", "glibc",      "mimalloc",      "mimalloc_heap",
    "jemalloc",   "tcmalloc",         "ideal_bump", "ideal_bump_thp"};
static bool is_arena(int impl) { return impl == I_ARENA || impl == I_ARENA_ALLOC; }
enum { C_VARY, C_FIXED, C_COUNT };
static const char *const k_case[C_COUNT] = {"vary", "fixed"};

/* ---- jemalloc / tcmalloc through dlopen ------------------------------------------- */

static void *(*je_mallocx)(size_t, int);
static void (*je_dallocx)(void *, int);
static void *(*tc_malloc_fn)(size_t);
static void (*tc_free_fn)(void *);
static char je_why[256] = "not loaded", tc_why[256] = "not loaded";

/* libjemalloc.so.2 uses initial-exec TLS, which a dlopen can only place in glibc's
 * surplus static TLS (512 bytes by default: "cannot allocate memory in static TLS
 * block"). Re-exec once with a larger surplus (GLIBC_TUNABLES); this changes nothing
 * else, in particular not the process malloc. */
static void reexec_with_static_tls(char **argv) {
  if (getenv("ARENA_BENCH_REEXEC") != NULL) return;
  const char *old = getenv("GLIBC_TUNABLES");
  char tun[1024];
  snprintf(tun, sizeof tun, "%s%sglibc.rtld.optional_static_tls=65536", old ? old : "",
           old && *old ? ":" : "");
  setenv("GLIBC_TUNABLES", tun, 1);
  setenv("ARENA_BENCH_REEXEC", "1", 1);
  execv("/proc/self/exe", argv); /* returns only on failure: go on without */
}

static void load_others(void) {
  void *je = dlopen("libjemalloc.so.2", RTLD_NOW | RTLD_LOCAL);
  if (je != NULL) {
    je_mallocx = (void *(*)(size_t, int))dlsym(je, "mallocx");
    je_dallocx = (void (*)(void *, int))dlsym(je, "dallocx");
    if (je_mallocx == NULL || je_dallocx == NULL) snprintf(je_why, sizeof je_why, "no mallocx/dallocx");
  } else {
    snprintf(je_why, sizeof je_why, "%s", dlerror());
  }
  void *tc = dlopen("libtcmalloc_minimal.so.4", RTLD_NOW | RTLD_LOCAL);
  if (tc != NULL) {
    tc_malloc_fn = (void *(*)(size_t))dlsym(tc, "tc_malloc");
    tc_free_fn = (void (*)(void *))dlsym(tc, "tc_free");
    if (tc_malloc_fn == NULL || tc_free_fn == NULL) snprintf(tc_why, sizeof tc_why, "no tc_malloc/tc_free");
  } else {
    snprintf(tc_why, sizeof tc_why, "%s", dlerror());
  }
}

/* ---- workload ------------------------------------------------------------------------ */

static unsigned long long rng_next(unsigned long long *s) {
  unsigned long long z = (*s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/* 2^x for x in [0, 64) without libm (the benchmark links no -lm). */
static double pow2(double x) {
  int k = (int)x;
  double f = (x - k) * 0.69314718055994530942, term = 1, sum = 1;
  for (int i = 1; i < 20; i++) sum += (term *= f / i);
  return sum * (double)(1ULL << k);
}

/* Log-uniform in [256 B, 4 MiB] = 2^8 .. 2^22. */
static size_t draw_size(unsigned long long *s) {
  double u = (double)(rng_next(s) >> 11) * (1.0 / 9007199254740992.0);
  double v = MIN_SIZE * pow2(u * 14.0);
  size_t n = (size_t)v;
  return n < 256 ? 256 : n > (4u << 20) ? (4u << 20) : n;
}

typedef struct shared {
  pthread_barrier_t bar;
  int impl, kase, nthreads;
  long steps;          /* steps per repetition, set by thread 0 after warm-up */
  long fixed_steps;    /* --steps: steps per repetition without calibration (0: off) */
  int reps;
  double budget_ns;    /* per repetition */
  double ns[BENCH_MAX_REPS];
  unsigned long long faults;
  double reset_ns;
  double thp;
  unsigned long long chunk_calls;
  int failed;
} shared_t;

typedef struct worker {
  shared_t *sh;
  int tid;
  size_t *sizes; /* ntab x PER_STEP */
  int ntab;
  size_t max_step; /* bytes a bump pointer needs for the largest table (64 B aligned) */
  /* impl state */
  cllm_arena_t *arena;
  char *buf;
  size_t buf_len;
  void *map;
  size_t map_len;
  void *ptr[PER_STEP];
} worker_t;

static inline void touch(void *p, int i) { *(volatile char *)p = (char)i; }

static char *map_prefaulted(worker_t *w, size_t len, bool thp) {
  len = (len + (2u << 20) - 1) & ~(size_t)((2u << 20) - 1);
  char *p = mmap(NULL, len + (2u << 20), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return NULL;
  w->map = p;
  w->map_len = len + (2u << 20);
  char *a = (char *)(((uintptr_t)p + (2u << 20) - 1) & ~(uintptr_t)((2u << 20) - 1));
  (void)madvise(a, len, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
#ifdef MADV_POPULATE_WRITE
  if (madvise(a, len, MADV_POPULATE_WRITE) != 0)
#endif
    for (size_t o = 0; o < len; o += 4096) a[o] = 0;
  return a;
}

/* One step of the workload with impl `impl`; returns false on an allocation failure. */
static bool run_step(worker_t *w, int impl, const size_t *sz) {
  switch (impl) {
  case I_ARENA: {
    cllm_arena_t *a = w->arena;
    cllm_arena_cursor_t c;
    if (cllm_arena_cursor_begin(a, &c) != CLLM_OK) return false;
    for (int i = 0; i < PER_STEP; i++) {
      void *p = cllm_arena_cursor_alloc(&c, sz[i]);
      if (p == NULL) {
        CLLM_DISCARD(cllm_arena_cursor_end(a, &c));
        return false;
      }
      touch(p, i);
    }
    if (cllm_arena_cursor_end(a, &c) != CLLM_OK) return false;
    CLLM_DISCARD(cllm_arena_reset(a));
    return true;
  }
  case I_ARENA_ALLOC: {
    cllm_arena_t *a = w->arena;
    for (int i = 0; i < PER_STEP; i++) {
      void *p = cllm_arena_alloc(a, sz[i]);
      if (p == NULL) return false;
      touch(p, i);
    }
    CLLM_DISCARD(cllm_arena_reset(a));
    return true;
  }
  case I_BUMP:
  case I_BUMP_THP: {
    uintptr_t cur = (uintptr_t)w->buf, end = cur + w->buf_len;
    for (int i = 0; i < PER_STEP; i++) {
      uintptr_t p = (cur + 63) & ~(uintptr_t)63;
      if (p + sz[i] > end) return false;
      cur = p + sz[i];
      touch((void *)p, i);
    }
    bench_sink((void *)cur);
    return true;
  }
  case I_GLIBC:
    for (int i = 0; i < PER_STEP; i++) {
      if ((w->ptr[i] = bench_glibc_malloc(sz[i])) == NULL) return false;
      touch(w->ptr[i], i);
    }
    for (int i = 0; i < PER_STEP; i++) bench_glibc_free(w->ptr[i]);
    return true;
  case I_MI:
    for (int i = 0; i < PER_STEP; i++) {
      if ((w->ptr[i] = mi_malloc(sz[i])) == NULL) return false;
      touch(w->ptr[i], i);
    }
    for (int i = 0; i < PER_STEP; i++) mi_free(w->ptr[i]);
    return true;
  case I_MI_HEAP: {
    mi_heap_t *h = mi_heap_new();
    if (h == NULL) return false;
    for (int i = 0; i < PER_STEP; i++) {
      void *p = mi_heap_malloc(h, sz[i]);
      if (p == NULL) return false;
      touch(p, i);
    }
    mi_heap_destroy(h);
    return true;
  }
  case I_JE:
    for (int i = 0; i < PER_STEP; i++) {
      if ((w->ptr[i] = je_mallocx(sz[i], 0)) == NULL) return false;
      touch(w->ptr[i], i);
    }
    for (int i = 0; i < PER_STEP; i++) je_dallocx(w->ptr[i], 0);
    return true;
  case I_TC:
    for (int i = 0; i < PER_STEP; i++) {
      if ((w->ptr[i] = tc_malloc_fn(sz[i])) == NULL) return false;
      touch(w->ptr[i], i);
    }
    for (int i = 0; i < PER_STEP; i++) tc_free_fn(w->ptr[i]);
    return true;
  }
  return false;
}

static __attribute__((noinline)) bool run_steps(worker_t *w, long steps, long *cursor) {
  int impl = w->sh->impl;
  for (long s = 0; s < steps; s++) {
    const size_t *sz = w->sizes + (size_t)(*cursor % w->ntab) * PER_STEP;
    (*cursor)++;
    if (!run_step(w, impl, sz)) return false;
  }
  return true;
}

static unsigned long long arena_chunk_calls(cllm_arena_t *a) {
  cllm_arena_stats_t st = {.struct_size = sizeof st};
  if (a == NULL || cllm_arena_stats(a, &st) != CLLM_OK) return 0;
  return st.allocator_calls;
}

/* Fraction of the mapping that holds p backed by transparent huge pages
 * (/proc/self/smaps: AnonHugePages / Size); -1 when unknown. */
static double thp_fraction(const void *p) {
  FILE *f = fopen("/proc/self/smaps", "r");
  if (f == NULL) return -1;
  char line[512];
  bool in = false;
  double size = 0, huge = -1;
  while (fgets(line, sizeof line, f) != NULL) {
    unsigned long lo, hi;
    if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2) {
      in = (uintptr_t)p >= lo && (uintptr_t)p < hi;
      if (in) size = (double)(hi - lo);
    } else if (in && strncmp(line, "AnonHugePages:", 14) == 0) {
      huge = atof(line + 14) * 1024.0;
      break;
    }
  }
  fclose(f);
  return huge < 0 || size <= 0 ? -1 : huge / size;
}

/* Reset cost: a one-allocation step, n times; ns per step. */
static __attribute__((noinline)) double reset_loop(cllm_arena_t *a, long n) {
  double s = bench_now_ns();
  for (long i = 0; i < n; i++) {
    touch(cllm_arena_alloc(a, 64), (int)i);
    CLLM_DISCARD(cllm_arena_reset(a));
  }
  return (bench_now_ns() - s) / (double)n;
}

static void *worker_main(void *arg) {
  worker_t *w = arg;
  shared_t *sh = w->sh;
  bool ok = true;
  /* tables */
  w->ntab = sh->kase == C_VARY ? VARY_TABLES : 1;
  w->sizes = malloc(sizeof(size_t) * PER_STEP * (size_t)w->ntab);
  if (w->sizes == NULL) ok = false;
  unsigned long long seed = 0x5eedULL + 7919ULL * (unsigned long long)w->tid;
  w->max_step = 0;
  for (int t = 0; ok && t < w->ntab; t++) {
    size_t tot = 0;
    for (int i = 0; i < PER_STEP; i++) {
      size_t n = draw_size(&seed);
      w->sizes[(size_t)t * PER_STEP + (size_t)i] = n;
      tot = ((tot + 63) & ~(size_t)63) + n;
    }
    if (tot > w->max_step) w->max_step = tot;
  }
  /* impl set-up, on this thread */
  if (ok && is_arena(sh->impl)) {
    if (cllm_arena_create(NULL, &w->arena) != CLLM_OK) ok = false;
  } else if (ok && (sh->impl == I_BUMP || sh->impl == I_BUMP_THP)) {
    w->buf_len = w->max_step + 4096;
    w->buf = map_prefaulted(w, w->buf_len, sh->impl == I_BUMP_THP);
    if (w->buf == NULL) ok = false;
  }
  /* warm-up: every table once (the arena reaches its steady size), at least 3 steps */
  long cursor = 0;
  long warm = w->ntab > 3 ? w->ntab : 3;
  if (ok) ok = run_steps(w, warm, &cursor);
  /* calibration: double the step count until a run takes 1/10 of the budget */
  double per_step = 1;
  for (long n = 1; ok && sh->fixed_steps == 0; n *= 2) {
    double t0 = bench_now_ns();
    ok = run_steps(w, n, &cursor);
    double el = bench_now_ns() - t0;
    per_step = el / (double)n;
    if (el >= sh->budget_ns / 10 || n >= (1L << 20)) break;
  }
  if (!ok) sh->failed = 1;
  pthread_barrier_wait(&sh->bar);
  if (w->tid == 0) {
    long steps = (long)(sh->budget_ns / (per_step > 1 ? per_step : 1));
    if (steps < 2) steps = 2;
    if (steps > 2000000) steps = 2000000;
    sh->steps = sh->kase == C_VARY ? ((steps + w->ntab - 1) / w->ntab) * w->ntab : steps;
    if (sh->fixed_steps > 0) sh->steps = sh->fixed_steps;
  }
  pthread_barrier_wait(&sh->bar);
  unsigned long long calls0 = arena_chunk_calls(w->arena);
  for (int r = 0; r < sh->reps; r++) {
    double start = 0;
    unsigned long long f0 = 0;
    pthread_barrier_wait(&sh->bar);
    if (w->tid == 0) {
      f0 = bench_minor_faults();
      start = bench_now_ns();
    }
    if (!sh->failed && !run_steps(w, sh->steps, &cursor)) sh->failed = 1;
    pthread_barrier_wait(&sh->bar);
    if (w->tid == 0) {
      double el = bench_now_ns() - start;
      sh->ns[r] = el / ((double)sh->steps * PER_STEP * sh->nthreads);
      sh->faults += bench_minor_faults() - f0;
    }
  }
  if (w->tid == 0 && w->buf != NULL) sh->thp = thp_fraction(w->buf);
  if (w->tid == 0 && w->arena != NULL) {
    sh->chunk_calls = arena_chunk_calls(w->arena) - calls0;
    /* after a reset the position is the start of the (one) chunk */
    cllm_arena_cursor_t c;
    sh->thp = -1;
    if (cllm_arena_cursor_begin(w->arena, &c) == CLLM_OK) {
      void *p = cllm_arena_cursor_alloc(&c, 1);
      if (p != NULL) sh->thp = thp_fraction(p);
      if (cllm_arena_cursor_end(w->arena, &c) != CLLM_OK) sh->failed = 1;
    }
    CLLM_DISCARD(cllm_arena_reset(w->arena));
    sh->reset_ns = reset_loop(w->arena, 1000000);
  }
  pthread_barrier_wait(&sh->bar); /* nobody tears down while others still measure */
  cllm_arena_destroy(w->arena);
  if (w->map != NULL) munmap(w->map, w->map_len);
  free(w->sizes);
  return NULL;
}

static void run_row(const bench_opts_t *o, int impl, int kase, int nthreads, long steps) {
  if (impl == I_JE && je_mallocx == NULL) {
    bench_note(o, "arena_bench: jemalloc skipped: %s", je_why);
    return;
  }
  if (impl == I_TC && tc_malloc_fn == NULL) {
    bench_note(o, "arena_bench: tcmalloc skipped: %s", tc_why);
    return;
  }
  shared_t sh;
  memset(&sh, 0, sizeof sh);
  sh.impl = impl;
  sh.kase = kase;
  sh.nthreads = nthreads;
  sh.reps = o->reps;
  sh.budget_ns = o->quick ? 20e6 : 100e6;
  sh.fixed_steps = steps;
  pthread_barrier_init(&sh.bar, NULL, (unsigned)nthreads);
  pthread_t th[256];
  worker_t *w = calloc((size_t)nthreads, sizeof *w);
  if (w == NULL) return;
  for (int i = 0; i < nthreads; i++) {
    w[i].sh = &sh;
    w[i].tid = i;
    if (pthread_create(&th[i], NULL, worker_main, &w[i]) != 0) {
      fprintf(stderr, "arena_bench: cannot start threads\n");
      exit(1);
    }
  }
  for (int i = 0; i < nthreads; i++) pthread_join(th[i], NULL);
  pthread_barrier_destroy(&sh.bar);
  free(w);
  if (sh.failed) {
    bench_note(o, "arena_bench: %s/%s/%d threads: an allocation failed; row skipped",
               k_case[kase], k_impl[impl], nthreads);
    return;
  }
  bench_row_t row = {.bench = "arena_bench", .case_name = k_case[kase], .impl = k_impl[impl],
                     .threads = nthreads,
                     .ops = (uint64_t)sh.steps * PER_STEP * (uint64_t)nthreads};
  bench_stats(sh.ns, sh.reps, &row);
  bench_extra_num(&row, "faults_per_step",
                  (double)sh.faults / ((double)sh.steps * sh.reps * nthreads));
  bench_extra_num(&row, "steps_per_rep", (double)sh.steps);
  if (is_arena(impl) || impl == I_BUMP || impl == I_BUMP_THP)
    bench_extra_num(&row, "thp_fraction", sh.thp);
  if (is_arena(impl)) {
    bench_extra_num(&row, "reset_ns", sh.reset_ns);
    bench_extra_num(&row, "allocator_calls_per_step",
                    (double)sh.chunk_calls / ((double)sh.steps * sh.reps));
  }
  bench_emit(o, &row);
}

static int pick(const char *name, const char *const *names, int n, int argc, char **argv,
                const char *flag) {
  (void)name;
  size_t fl = strlen(flag);
  for (int i = 1; i < argc; i++) {
    const char *v = NULL;
    if (strncmp(argv[i], flag, fl) == 0 && argv[i][fl] == '=') v = argv[i] + fl + 1;
    else if (strcmp(argv[i], flag) == 0 && i + 1 < argc) v = argv[i + 1];
    if (v == NULL) continue;
    for (int k = 0; k < n; k++)
      if (strcmp(v, names[k]) == 0) return k;
    fprintf(stderr, "arena_bench: unknown %s '%s'\n", flag, v);
    exit(2);
  }
  return -1;
}

int main(int argc, char **argv) {
  bench_opts_t o = bench_parse(argc, argv, "arena_bench", "--impl,--case,--steps");
  reexec_with_static_tls(argv);
  int only_impl = pick("impl", k_impl, I_COUNT, argc, argv, "--impl");
  int only_case = pick("case", k_case, C_COUNT, argc, argv, "--case");
  long steps = 0;
  for (int i = 1; i + 1 < argc; i++)
    if (strcmp(argv[i], "--steps") == 0) steps = strtol(argv[i + 1], NULL, 10);
  if (steps < 0) {
    fprintf(stderr, "arena_bench: --steps needs a positive number\n");
    exit(2);
  }
  load_others();
  cllm_set_log_fn(cllm_log_discard, NULL);
  int counts[16], nc = 0;
  counts[nc++] = 1;
  for (int t = 2; t <= o.max_threads && nc < 15; t *= 2) counts[nc++] = t;
  if (counts[nc - 1] != o.max_threads && o.max_threads > 1 && o.max_threads <= 256)
    counts[nc++] = o.max_threads;
  for (int c = 0; c < C_COUNT; c++) {
    if (only_case >= 0 && c != only_case) continue;
    for (int k = 0; k < nc; k++) {
      if (counts[k] > 256) continue;
      for (int i = 0; i < I_COUNT; i++) {
        if (only_impl >= 0 && i != only_impl) continue;
        run_row(&o, i, c, counts[k], steps);
      }
    }
  }
  return 0;
}
