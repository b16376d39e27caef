/* The shared benchmark harness: see harness.h. */
#include "harness.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static void usage(const char *bench, const char *own) {
  printf("usage: %s [--json] [--quick] [--reps N] [--threads N]%s%s\n"
         "  --json       one JSON object per line (bench, case, impl, threads,\n"
         "               ns_per_op_min, ns_per_op_median, ops, extras)\n"
         "  --quick      at most 20 s\n"
         "  --reps N     repetitions per row (default 7; quick: 5)\n"
         "  --threads N  largest thread count (default 2, or all CPUs when >= 16)\n",
         bench, own != NULL ? " " : "", own != NULL ? own : "");
}

static bool is_own(const char *arg, const char *own) {
  if (own == NULL) return false;
  size_t n = strcspn(arg, "=");
  const char *p = own;
  while (*p) {
    size_t m = strcspn(p, ",");
    if (m == n && strncmp(p, arg, n) == 0) return true;
    p += m + (p[m] == ',');
  }
  return false;
}

bench_opts_t bench_parse(int argc, char **argv, const char *bench, const char *own_flags) {
  bench_opts_t o = {.bench = bench, .reps = 0};
  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  o.ncpu = ncpu > 0 ? (int)ncpu : 1;
  o.max_threads = o.ncpu >= 16 ? o.ncpu : 2;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--json") == 0) o.json = true;
    else if (strcmp(a, "--quick") == 0) o.quick = true;
    else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) { usage(bench, own_flags); exit(0); }
    else if ((strcmp(a, "--reps") == 0 || strcmp(a, "--threads") == 0) && i + 1 < argc) {
      int v = atoi(argv[++i]);
      if (v <= 0) { fprintf(stderr, "%s: %s needs a positive number\n", bench, a); exit(2); }
      if (a[2] == 'r') o.reps = v < BENCH_MAX_REPS ? v : BENCH_MAX_REPS;
      else o.max_threads = v;
    } else if (is_own(a, own_flags)) {
      if (strchr(a, '=') == NULL && i + 1 < argc && argv[i + 1][0] != '-') i++;
    } else {
      fprintf(stderr, "%s: unknown option '%s' (try --help)\n", bench, a);
      exit(2);
    }
  }
  if (o.reps == 0) o.reps = o.quick ? 5 : 7;
  return o;
}

double bench_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

double bench_median(const double *v, int n) {
  if (n <= 0) return 0;
  double t[BENCH_MAX_REPS];
  if (n > BENCH_MAX_REPS) n = BENCH_MAX_REPS;
  memcpy(t, v, sizeof(double) * (size_t)n);
  qsort(t, (size_t)n, sizeof(double), cmp_d);
  return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

double bench_min(const double *v, int n) {
  double m = n > 0 ? v[0] : 0;
  for (int i = 1; i < n; i++) m = v[i] < m ? v[i] : m;
  return m;
}

void bench_stats(const double *ns, int n, bench_row_t *row) {
  row->ns_per_op_min = bench_min(ns, n);
  row->ns_per_op_median = bench_median(ns, n);
}

void bench_extra_num(bench_row_t *row, const char *key, double v) {
  if (row->n_extra < BENCH_MAX_EXTRA) row->extra[row->n_extra++] = (bench_extra_t){key, false, v, NULL};
}

void bench_extra_str(bench_row_t *row, const char *key, const char *v) {
  if (row->n_extra < BENCH_MAX_EXTRA) row->extra[row->n_extra++] = (bench_extra_t){key, true, 0, v};
}

static void json_str(const char *s) {
  putchar('"');
  for (; s != NULL && *s; s++) {
    if (*s == '"' || *s == '\\') printf("\\%c", *s);
    else if ((unsigned char)*s < 0x20) printf("\\u%04x", *s);
    else putchar(*s);
  }
  putchar('"');
}

static void json_num(double v) {
  if (v != v || v > 1e300 || v < -1e300) printf("null");
  else if (v == (double)(long long)v && v < 1e15 && v > -1e15) printf("%lld", (long long)v);
  else printf("%.6g", v);
}

void bench_emit(const bench_opts_t *o, const bench_row_t *r) {
  if (o->json) {
    printf("{\"bench\":");
    json_str(r->bench != NULL ? r->bench : o->bench);
    printf(",\"case\":");
    json_str(r->case_name);
    printf(",\"impl\":");
    json_str(r->impl);
    printf(",\"threads\":%d,\"ns_per_op_min\":", r->threads);
    json_num(r->ns_per_op_min);
    printf(",\"ns_per_op_median\":");
    json_num(r->ns_per_op_median);
    printf(",\"ops\":%llu", (unsigned long long)r->ops);
    for (int i = 0; i < r->n_extra; i++) {
      printf(",");
      json_str(r->extra[i].key);
      printf(":");
      if (r->extra[i].is_str) json_str(r->extra[i].str);
      else json_num(r->extra[i].num);
    }
    printf("}\n");
  } else {
    static bool header;
    if (!header) {
      printf("%-14s %-18s %-20s %3s %12s %12s %10s  %s\n", "bench", "case", "impl", "thr",
             "ns/op min", "ns/op med", "ops", "extra");
      header = true;
    }
    printf("%-14s %-18s %-20s %3d %12.2f %12.2f %10llu ", r->bench != NULL ? r->bench : o->bench,
           r->case_name, r->impl, r->threads, r->ns_per_op_min, r->ns_per_op_median,
           (unsigned long long)r->ops);
    for (int i = 0; i < r->n_extra; i++) {
      if (r->extra[i].is_str) printf(" %s=%s", r->extra[i].key, r->extra[i].str);
      else printf(" %s=%.4g", r->extra[i].key, r->extra[i].num);
    }
    printf("\n");
  }
  fflush(stdout);
}

void bench_note(const bench_opts_t *o, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  FILE *f = o->json ? stderr : stdout;
  vfprintf(f, fmt, ap);
  fputc('\n', f);
  va_end(ap);
}

uint64_t bench_minor_faults(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (uint64_t)ru.ru_minflt;
}

typedef struct gate {
  pthread_barrier_t *bar;
  void *(*fn)(void *);
  void *arg;
  double start_ns, end_ns;
} gate_t;

static void *gate_main(void *p) {
  gate_t *g = p;
  pthread_barrier_wait(g->bar);
  g->start_ns = bench_now_ns();
  g->fn(g->arg);
  g->end_ns = bench_now_ns();
  return NULL;
}

double bench_run_threads(int n, void *(*fn)(void *), void **args) {
  if (n <= 0) return 0;
  pthread_t *t = calloc((size_t)n, sizeof *t);
  gate_t *g = calloc((size_t)n, sizeof *g);
  if (t == NULL || g == NULL) {
    fprintf(stderr, "bench_run_threads: out of memory\n");
    exit(1);
  }
  pthread_barrier_t bar;
  pthread_barrier_init(&bar, NULL, (unsigned)n + 1);
  for (int i = 0; i < n; i++) {
    g[i] = (gate_t){&bar, fn, args[i], 0, 0};
    if (pthread_create(&t[i], NULL, gate_main, &g[i]) != 0) {
      fprintf(stderr, "bench_run_threads: cannot start thread %d\n", i);
      exit(1);
    }
  }
  pthread_barrier_wait(&bar);
  for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
  /* From the first thread's start to the last one's end (the main thread may be
   * descheduled after the barrier, so it does not take the time itself). */
  double t0 = g[0].start_ns, end = g[0].end_ns;
  for (int i = 1; i < n; i++) {
    t0 = g[i].start_ns < t0 ? g[i].start_ns : t0;
    end = g[i].end_ns > end ? g[i].end_ns : end;
  }
  pthread_barrier_destroy(&bar);
  free(t);
  free(g);
  return end - t0;
}

/* ---- glibc's own allocator ------------------------------------------------------ */

static void *(*g_malloc)(size_t);
static void *(*g_memalign)(size_t, size_t);
static void (*g_free)(void *);
static pthread_once_t g_glibc_once = PTHREAD_ONCE_INIT;

static void glibc_resolve(void) {
  void *h = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
  if (h != NULL) {
    g_malloc = (void *(*)(size_t))dlsym(h, "malloc");
    g_memalign = (void *(*)(size_t, size_t))dlsym(h, "memalign");
    g_free = (void (*)(void *))dlsym(h, "free");
  }
  if (g_malloc == NULL || g_memalign == NULL || g_free == NULL) {
    fprintf(stderr, "bench: cannot find glibc's malloc in libc.so.6\n");
    exit(1);
  }
}

void *bench_glibc_malloc(size_t n) {
  pthread_once(&g_glibc_once, glibc_resolve);
  return g_malloc(n);
}

void *bench_glibc_memalign(size_t align, size_t n) {
  pthread_once(&g_glibc_once, glibc_resolve);
  return g_memalign(align, n);
}

void bench_glibc_free(void *p) {
  pthread_once(&g_glibc_once, glibc_resolve);
  g_free(p);
}
