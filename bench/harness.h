/* The benchmark harness shared by every bench/<name>_bench program.
 *
 * Contract (read by other tools; keep it): each benchmark accepts
 *   --json         one JSON object per line on stdout, fields at least bench, case,
 *                  impl, threads, ns_per_op_min, ns_per_op_median, ops, plus extras;
 *   --quick        a run of at most 20 s;
 *   --reps N       repetitions per row (default 7, quick 5);
 *   --threads N    the largest thread count to try (default: 2, or the CPU count
 *                  when it is 16 or more);
 * and otherwise prints a readable table. Every implementation is measured in the
 * same run, so ratios within one run are the figures that count.
 *
 *   bench_opts_t o = bench_parse(argc, argv, "arena_bench");
 *   double ns[BENCH_MAX_REPS];
 *   for (int r = 0; r < o.reps; r++) { double t0 = bench_now_ns(); work(); ns[r] = (bench_now_ns() - t0) / ops; }
 *   bench_row_t row = {.bench = "arena_bench", .case_name = "fixed", .impl = "cllm_arena", .threads = 1, .ops = ops};
 *   bench_stats(ns, o.reps, &row);
 *   bench_extra_num(&row, "faults_per_step", 0.0);
 *   bench_emit(&o, &row);
 */
#ifndef CLLM_BENCH_HARNESS_H
#define CLLM_BENCH_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BENCH_MAX_REPS 64
#define BENCH_MAX_EXTRA 12

typedef struct bench_opts {
  const char *bench;  // the benchmark's name
  bool json;
  bool quick;
  int reps;
  int max_threads;
  int ncpu;
} bench_opts_t;

typedef struct bench_extra {
  const char *key;
  bool is_str;
  double num;
  const char *str;
} bench_extra_t;

typedef struct bench_row {
  const char *bench;
  const char *case_name;
  const char *impl;
  int threads;
  double ns_per_op_min;
  double ns_per_op_median;
  uint64_t ops;          // operations per repetition (all threads together)
  int n_extra;
  bench_extra_t extra[BENCH_MAX_EXTRA];
} bench_row_t;

// Parse the common flags; exits 2 with a message on an unknown flag, prints usage
// and exits 0 on --help. Flags the benchmark handles itself may be listed in
// `own_flags` ("--cases,--size") and are skipped here.
bench_opts_t bench_parse(int argc, char **argv, const char *bench, const char *own_flags);
// Monotonic clock in nanoseconds.
double bench_now_ns(void);
// Fill row->ns_per_op_min / median from per-repetition ns/op samples.
void bench_stats(const double *ns_per_op, int n, bench_row_t *row);
double bench_median(const double *v, int n);
double bench_min(const double *v, int n);
// Attach an extra field to the row (numbers print as JSON numbers).
void bench_extra_num(bench_row_t *row, const char *key, double v);
void bench_extra_str(bench_row_t *row, const char *key, const char *v);
// Print the row: a JSON line with --json, else a table line (header printed once).
void bench_emit(const bench_opts_t *o, const bench_row_t *row);
// Print a free-form note (table mode only; goes to stderr in JSON mode).
void bench_note(const bench_opts_t *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
// Minor page faults of the process so far (getrusage).
uint64_t bench_minor_faults(void);
// Run fn(arg_i) on n threads started together (a barrier), return the wall time of
// the slowest in ns. args is an array of n pointers.
double bench_run_threads(int n, void *(*fn)(void *), void **args);
// glibc's own malloc/free/memalign, looked up in libc.so.6 (dlsym on its handle).
// Linking cllm-mem brings in Debian's libmimalloc, which replaces malloc AND the
// __libc_* aliases for the whole process, so "glibc" rows must not call malloc.
void *bench_glibc_malloc(size_t n);
void *bench_glibc_memalign(size_t align, size_t n);
void bench_glibc_free(void *p);
// Keep the compiler from optimising a value away.
static inline void bench_sink(const void *p) { __asm__ volatile("" : : "r"(p) : "memory"); }

#ifdef __cplusplus
}
#endif
#endif
