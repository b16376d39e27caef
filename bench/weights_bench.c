/* weights_bench: the pinned weights heap against the physical limits.
 *
 * case load        a file range in the page cache into memory; ns_per_op is ns per
 *                  MiB (extra unit = "ns_per_MiB"), gb_per_s = GB/s (1e9 bytes/s):
 *   impl cllm_weights_load         load into a heap created beforehand (its pages land
 *                                  on the readers' first write), 1 reader and, as a
 *                                  separate row, 2 readers (threads)
 *   (every row has pct_of_memcpy: memcpy's median time / the row's median time;
 *   the impls run interleaved within each repetition)
 *   impl cllm_weights_create_load  create + load (the load's writes fault the pages
 *                                  in), default (auto) reader count
 *   impl memcpy                    memcpy of the same bytes between two committed
 *                                  buffers (the physical limit; the goal is load
 *                                  >= 80% of it)
 *   impl read_malloc               read() into a fresh malloc'd buffer (faults included)
 *   impl read_malloc_warm          read() into a malloc'd buffer already touched
 * case first_touch ns per 4 KiB page to commit fresh memory (unit "ns_per_4KiB_page"):
 *   impl mmap_touch_4k / mmap_touch_thp  write one byte per page of a fresh mapping
 *                                        (MADV_NOHUGEPAGE / MADV_HUGEPAGE)
 *   impl cllm_weights_create_off / _thp  cllm_weights_create + seal (seal commits the
 *                                        untouched region: MADV_POPULATE_WRITE)
 * case full_load   create + a load that fills the whole region, in ns per MiB (unit
 *                  "ns_per_MiB"), default (auto) readers, interleaved per repetition:
 *   impl cllm_weights_populate_first   the heap's region committed (MADV_POPULATE_WRITE
 *                                      in 64 MiB steps), then pread into in 8 MiB chunks,
 *                                      on the same threads (THP)
 *   impl cllm_weights_first_write      the same preads straight into the untouched
 *                                      region: each page's first write is the read's
 *                                      (THP); both done by the bench on the heap's
 *                                      region, so that both ways stay measured whichever
 *                                      cllm_weights_load takes (base pages: commit
 *                                      first; THP: first write)
 *   impl ..._4k                        the same two with base pages (huge_pages OFF)
 * case stream_read GB/s of one summing pass over loaded weights (unit "ns_per_MiB"):
 *   impl cllm_weights_off / cllm_weights_thp   heap with base pages / THP
 * case replicate / case interleave  GB/s of threads reading the whole model once each,
 *   one thread per CPU (--threads caps), thread i bound to node i % nodes (unit
 *   "ns_per_MiB" per thread): impl cllm_weights_replicate reads its node's copy
 *   (cllm_weights_local), impl cllm_weights_interleave reads one copy interleaved over
 *   every node. On a multi-socket machine replicate reads only local memory; on one
 *   node both are the same single copy (extra "replicas" says how many there were).
 *
 * Flags: --size MiB (file and heap size; default 512, quick 256). The temp file is
 * written under $TMPDIR (or /tmp), read once to warm the page cache, and deleted.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cllm/weights.h>

#include "harness.h"

#define MiB ((size_t)1 << 20)
#define BENCH "weights_bench"

static size_t g_size;
static char g_path[512];

static void die(const char *what) {
  fprintf(stderr, "%s: %s: %s\n", BENCH, what, strerror(errno));
  if (g_path[0] != '\0') unlink(g_path);
  exit(1);
}

static void write_file(void) {
  const char *dir = getenv("TMPDIR");
  if (dir == NULL || *dir == '\0') dir = "/tmp";
  snprintf(g_path, sizeof g_path, "%s/weights_bench_%d.bin", dir, (int)getpid());
  int fd = open(g_path, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0600);
  if (fd < 0) die("create temp file");
  uint64_t *buf = malloc(8 * MiB);
  if (buf == NULL) die("malloc");
  uint64_t x = 88172645463325252ull;
  for (size_t done = 0; done < g_size; done += 8 * MiB) {
    for (size_t i = 0; i < MiB; i++) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      buf[i] = x;
    }
    if (write(fd, buf, 8 * MiB) != (ssize_t)(8 * MiB)) die("write temp file");
  }
  free(buf);
  if (close(fd) != 0) die("close");
}

/* Read the file once (into a scratch buffer) so it is in the page cache. */
static void warm_cache(void *scratch) {
  int fd = open(g_path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) die("open");
  for (size_t done = 0; done < g_size;) {
    ssize_t r = pread(fd, (char *)scratch + done, g_size - done, (off_t)done);
    if (r <= 0) die("warm read");
    done += (size_t)r;
  }
  close(fd);
}

/* A committed buffer: mmap, huge pages on request, every page written. */
static void *committed(size_t bytes, bool thp) {
  void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) die("mmap");
  madvise(p, bytes, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
  memset(p, 1, bytes);
  return p;
}

static cllm_weights_t *heap_numa(size_t bytes, cllm_weights_huge_t huge, int readers,
                                 cllm_weights_numa_t numa) {
  cllm_weights_config_t c = cllm_weights_config_default();
  c.capacity_bytes = bytes;
  c.numa = numa;
  c.huge_pages = huge;
  c.reader_threads = readers;
  cllm_weights_t *w;
  cllm_status_t s = cllm_weights_create(&c, &w);
  if (s != CLLM_OK) {
    fprintf(stderr, "%s: cllm_weights_create: %s\n", BENCH, cllm_status_name(s));
    unlink(g_path);
    exit(1);
  }
  return w;
}

static cllm_weights_t *heap(size_t bytes, cllm_weights_huge_t huge, int readers) {
  return heap_numa(bytes, huge, readers, CLLM_WEIGHTS_NUMA_LOCAL);
}

static void *load(cllm_weights_t *w) {
  void *p;
  cllm_status_t s = cllm_weights_load_path(w, g_path, 0, g_size, &p);
  if (s != CLLM_OK) {
    fprintf(stderr, "%s: load: %s\n", BENCH, cllm_status_name(s));
    unlink(g_path);
    exit(1);
  }
  return p;
}

static void emit_bw(const bench_opts_t *o, const char *case_name, const char *impl, int threads,
                    const double *ns, uint64_t mib, double memcpy_median_ns, const char *note) {
  bench_row_t row = {.bench = BENCH, .case_name = case_name, .impl = impl, .threads = threads,
                     .ops = mib};
  double per_mib[BENCH_MAX_REPS];
  for (int r = 0; r < o->reps; r++) per_mib[r] = ns[r] / (double)mib;
  bench_stats(per_mib, o->reps, &row);
  bench_extra_str(&row, "unit", "ns_per_MiB");
  bench_extra_num(&row, "gb_per_s", (double)MiB / row.ns_per_op_median);
  bench_extra_num(&row, "gb_per_s_best", (double)MiB / row.ns_per_op_min);
  if (memcpy_median_ns > 0)
    bench_extra_num(&row, "pct_of_memcpy", 100.0 * memcpy_median_ns / bench_median(ns, o->reps));
  if (note != NULL) bench_extra_str(&row, "note", note);
  bench_emit(o, &row);
}

/* ---- case load ------------------------------------------------------------------ */

static double g_load_gbps[2], g_memcpy_gbps; /* bytes per ns = GB/s */

static double read_into(char *buf) {
  double t0 = bench_now_ns();
  int fd = open(g_path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) die("open");
  for (size_t done = 0; done < g_size;) {
    ssize_t n = read(fd, buf + done, g_size - done);
    if (n <= 0) die("read");
    done += (size_t)n;
  }
  close(fd);
  bench_sink(buf);
  return bench_now_ns() - t0;
}

/* The impls are interleaved within each repetition so that a machine shared with
 * other work slows them alike: the ratios to memcpy are the figures that count. */
static void case_load(const bench_opts_t *o) {
  enum { L1, L2, CREATE_LOAD, MEMCPY, READ_MALLOC, READ_WARM, N_IMPL };
  static double ns[N_IMPL][BENCH_MAX_REPS];
  uint64_t mib = g_size / MiB;
  int auto_readers = o->ncpu < 8 ? o->ncpu : 8;
  char *src = committed(g_size, true), *dst = committed(g_size, true);
  warm_cache(src); /* memcpy copies the same bytes */
  for (int r = 0; r < o->reps; r++) {
    for (int readers = 1; readers <= 2; readers++) {
      cllm_weights_t *w = heap(g_size, CLLM_WEIGHTS_HUGE_TRANSPARENT, readers);
      double t0 = bench_now_ns();
      bench_sink(load(w));
      ns[readers == 1 ? L1 : L2][r] = bench_now_ns() - t0;
      cllm_weights_destroy(w);
    }
    double t0 = bench_now_ns();
    memcpy(dst, src, g_size);
    bench_sink(dst);
    ns[MEMCPY][r] = bench_now_ns() - t0;

    t0 = bench_now_ns();
    cllm_weights_t *w = heap(g_size, CLLM_WEIGHTS_HUGE_TRANSPARENT, 0);
    bench_sink(load(w));
    ns[CREATE_LOAD][r] = bench_now_ns() - t0;
    cllm_weights_destroy(w);

    for (int warm = 0; warm <= 1; warm++) {
      char *buf = malloc(g_size);
      if (buf == NULL) die("malloc");
      if (warm) memset(buf, 0, g_size);
      ns[warm ? READ_WARM : READ_MALLOC][r] = read_into(buf);
      free(buf);
    }
  }
  munmap(src, g_size);
  munmap(dst, g_size);
  double memcpy_med = bench_median(ns[MEMCPY], o->reps);
  g_memcpy_gbps = (double)g_size / memcpy_med;
  g_load_gbps[0] = (double)g_size / bench_median(ns[L1], o->reps);
  g_load_gbps[1] = (double)g_size / bench_median(ns[L2], o->reps);
  emit_bw(o, "load", "cllm_weights_load", 1, ns[L1], mib, memcpy_med,
          "heap created beforehand (THP), 1 reader");
  emit_bw(o, "load", "cllm_weights_load", 2, ns[L2], mib, memcpy_med,
          "heap created beforehand (THP), 2 readers");
  emit_bw(o, "load", "cllm_weights_create_load", auto_readers, ns[CREATE_LOAD], mib, memcpy_med,
          "create (THP) + load, default (auto) readers");
  emit_bw(o, "load", "memcpy", 1, ns[MEMCPY], mib, memcpy_med, "committed THP buffers");
  emit_bw(o, "load", "read_malloc", 1, ns[READ_MALLOC], mib, memcpy_med,
          "fresh malloc: page faults included");
  emit_bw(o, "load", "read_malloc_warm", 1, ns[READ_WARM], mib, memcpy_med,
          "buffer touched before timing");
}

/* ---- case first_touch --------------------------------------------------------------- */

static void emit_touch(const bench_opts_t *o, const char *impl, const double *ns, size_t bytes,
                       double huge_frac) {
  size_t pages = bytes / 4096;
  bench_row_t row = {.bench = BENCH, .case_name = "first_touch", .impl = impl, .threads = 1,
                     .ops = pages};
  double per[BENCH_MAX_REPS];
  for (int r = 0; r < o->reps; r++) per[r] = ns[r] / (double)pages;
  bench_stats(per, o->reps, &row);
  bench_extra_str(&row, "unit", "ns_per_4KiB_page");
  bench_extra_num(&row, "gb_per_s", 4096.0 / row.ns_per_op_median);
  if (huge_frac >= 0) bench_extra_num(&row, "huge_fraction", huge_frac);
  bench_emit(o, &row);
}

static void case_first_touch(const bench_opts_t *o) {
  size_t bytes = o->quick ? 64 * MiB : 256 * MiB;
  double ns[BENCH_MAX_REPS];
  for (int thp = 0; thp <= 1; thp++) {
    for (int r = 0; r < o->reps; r++) {
      char *p = mmap(NULL, bytes + 2 * MiB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                     -1, 0);
      if (p == MAP_FAILED) die("mmap");
      char *a = (char *)(((uintptr_t)p + 2 * MiB - 1) & ~(uintptr_t)(2 * MiB - 1));
      madvise(a, bytes, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
      double t0 = bench_now_ns();
      for (size_t off = 0; off < bytes; off += 4096) ((volatile char *)a)[off] = 1;
      ns[r] = bench_now_ns() - t0;
      munmap(p, bytes + 2 * MiB);
    }
    emit_touch(o, thp ? "mmap_touch_thp" : "mmap_touch_4k", ns, bytes, -1);
  }
  for (int thp = 0; thp <= 1; thp++) {
    double frac = 0;
    for (int r = 0; r < o->reps; r++) {
      double t0 = bench_now_ns();
      cllm_weights_t *w =
          heap(bytes, thp ? CLLM_WEIGHTS_HUGE_TRANSPARENT : CLLM_WEIGHTS_HUGE_OFF, 1);
      if (cllm_weights_seal(w) != CLLM_OK) die("seal");
      ns[r] = bench_now_ns() - t0;
      cllm_weights_stats_t st = {.struct_size = sizeof st};
      if (cllm_weights_stats(w, &st) == CLLM_OK) frac = (double)st.huge_bytes / (double)bytes;
      cllm_weights_destroy(w);
    }
    emit_touch(o, thp ? "cllm_weights_create_thp" : "cllm_weights_create_off", ns, bytes, frac);
  }
}

/* ---- case full_load ----------------------------------------------------------------- */

typedef struct populate_arg {
  char *base;
  size_t bytes, step;
  int fd; /* < 0: populate; else pread the file */
  _Atomic size_t next;
} populate_arg_t;

static void *populate_steps(void *arg) {
  populate_arg_t *a = arg;
  for (;;) {
    size_t off = atomic_fetch_add(&a->next, a->step);
    if (off >= a->bytes) return NULL;
    size_t n = a->bytes - off < a->step ? a->bytes - off : a->step;
    if (a->fd < 0) {
      if (madvise(a->base + off, n, 23 /* MADV_POPULATE_WRITE */) != 0) die("populate");
      continue;
    }
    for (size_t done = 0; done < n;) {
      ssize_t r = pread(a->fd, a->base + off + done, n - done, (off_t)(off + done));
      if (r <= 0) die("pread");
      done += (size_t)r;
    }
  }
}

/* Pread the file into the heap's untouched region in the library's default 8 MiB
 * chunks (fd < 0: commit it in 64 MiB steps instead), on `threads` threads (the
 * caller one of them). */
static void fill_region(cllm_weights_t *w, int threads, int fd) {
  populate_arg_t a = {.base = (char *)cllm_weights_base(w), .bytes = g_size,
                      .step = fd < 0 ? 64 * MiB : 8 * MiB, .fd = fd};
  pthread_t tid[8];
  int n = 0;
  for (int i = 1; i < threads && i < 8; i++)
    if (pthread_create(&tid[n], NULL, populate_steps, &a) == 0) n++;
  populate_steps(&a);
  for (int i = 0; i < n; i++) pthread_join(tid[i], NULL);
}

static void case_full_load(const bench_opts_t *o) {
  enum { FIRST, RAW, N_WAYS };
  static const char *const impl[2][N_WAYS] = {
      {"cllm_weights_populate_first_4k", "cllm_weights_first_write_4k"},
      {"cllm_weights_populate_first", "cllm_weights_first_write"}};
  static const char *const note[N_WAYS] = {"region committed, then pread (bench threads)",
                                           "pread into the untouched region (bench threads)"};
  static double ns[2][N_WAYS][BENCH_MAX_REPS];
  int readers = o->ncpu < 8 ? o->ncpu : 8;
  int fd = open(g_path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) die("open");
  for (int r = 0; r < o->reps; r++) {
    for (int thp = 1; thp >= 0; thp--) {
      for (int way = 0; way < N_WAYS; way++) {
        double t0 = bench_now_ns();
        cllm_weights_t *w =
            heap(g_size, thp ? CLLM_WEIGHTS_HUGE_TRANSPARENT : CLLM_WEIGHTS_HUGE_OFF, readers);
        if (way == FIRST) fill_region(w, readers, -1);
        fill_region(w, readers, fd);
        ns[thp][way][r] = bench_now_ns() - t0;
        cllm_weights_destroy(w);
      }
    }
  }
  close(fd);
  for (int thp = 1; thp >= 0; thp--)
    for (int way = 0; way < N_WAYS; way++)
      emit_bw(o, "full_load", impl[thp][way], readers, ns[thp][way], g_size / MiB, 0, note[way]);
}

/* ---- case stream_read --------------------------------------------------------------- */

static uint64_t sum_words(const uint64_t *p, size_t n) {
  uint64_t a = 0, b = 0, c = 0, d = 0;
  size_t i = 0;
  for (; i + 4 <= n; i += 4) a += p[i], b += p[i + 1], c += p[i + 2], d += p[i + 3];
  for (; i < n; i++) a += p[i];
  return a + b + c + d;
}

static void case_stream_read(const bench_opts_t *o) {
  static double ns[2][BENCH_MAX_REPS];
  uint64_t mib = g_size / MiB;
  cllm_weights_t *w[2];
  const uint64_t *p[2];
  double frac[2];
  for (int thp = 0; thp <= 1; thp++) {
    w[thp] = heap(g_size, thp ? CLLM_WEIGHTS_HUGE_TRANSPARENT : CLLM_WEIGHTS_HUGE_OFF, 0);
    p[thp] = load(w[thp]);
    if (cllm_weights_seal(w[thp]) != CLLM_OK) die("seal");
    cllm_weights_stats_t st = {.struct_size = sizeof st};
    frac[thp] = cllm_weights_stats(w[thp], &st) == CLLM_OK ? (double)st.huge_bytes / (double)g_size : 0;
  }
  volatile uint64_t sink = 0;
  for (int r = 0; r < o->reps; r++) {
    for (int thp = 0; thp <= 1; thp++) {  /* interleaved, as in case load */
      double t0 = bench_now_ns();
      sink += sum_words(p[thp], g_size / 8);
      ns[thp][r] = bench_now_ns() - t0;
    }
  }
  (void)sink;
  for (int thp = 0; thp <= 1; thp++) {
    bench_row_t row = {.bench = BENCH, .case_name = "stream_read",
                       .impl = thp ? "cllm_weights_thp" : "cllm_weights_off", .threads = 1,
                       .ops = mib};
    double per[BENCH_MAX_REPS];
    for (int r = 0; r < o->reps; r++) per[r] = ns[thp][r] / (double)mib;
    bench_stats(per, o->reps, &row);
    bench_extra_str(&row, "unit", "ns_per_MiB");
    bench_extra_num(&row, "gb_per_s", (double)MiB / row.ns_per_op_median);
    bench_extra_num(&row, "gb_per_s_best", (double)MiB / row.ns_per_op_min);
    bench_extra_num(&row, "huge_fraction", frac[thp]);
    bench_emit(o, &row);
    cllm_weights_destroy(w[thp]);
  }
}

/* ---- cases replicate and interleave --------------------------------------------------- */

typedef struct numa_reader {
  const cllm_weights_t *w;
  size_t off; /* the loaded data's offset in a copy */
  int node;
  uint64_t sink;
} numa_reader_t;

static void *numa_read(void *arg) {
  numa_reader_t *r = arg;
  const cllm_topology_t *t = cllm_topology_system();
  if (cllm_topology_nodes(t) > 1) CLLM_DISCARD(cllm_thread_bind_node(t, r->node));
  const char *copy = cllm_weights_local(r->w); /* replicate: this node's; else the one */
  r->sink += sum_words((const uint64_t *)(copy + r->off), g_size / 8);
  return NULL;
}

static void case_numa_read(const bench_opts_t *o) {
  static double ns[2][BENCH_MAX_REPS];
  static const cllm_weights_numa_t policy[2] = {CLLM_WEIGHTS_NUMA_REPLICATE,
                                                CLLM_WEIGHTS_NUMA_INTERLEAVE};
  static const char *const name[2] = {"replicate", "interleave"};
  static const char *const impl[2] = {"cllm_weights_replicate", "cllm_weights_interleave"};
  const cllm_topology_t *t = cllm_topology_system();
  int nodes = t != NULL ? cllm_topology_nodes(t) : 1;
  int threads = o->ncpu < o->max_threads ? o->ncpu : o->max_threads;
  if (threads < 1) threads = 1;
  if (threads > 64) threads = 64;
  uint64_t mib = g_size / MiB;
  cllm_weights_t *w[2];
  int replicas[2];
  numa_reader_t rd[2][64];
  void *args[2][64];
  for (int k = 0; k < 2; k++) {
    w[k] = heap_numa(g_size, CLLM_WEIGHTS_HUGE_TRANSPARENT, 0, policy[k]);
    const char *p = load(w[k]);
    if (cllm_weights_seal(w[k]) != CLLM_OK) die("seal");
    cllm_weights_stats_t st = {.struct_size = sizeof st};
    replicas[k] = cllm_weights_stats(w[k], &st) == CLLM_OK ? st.replicas : 0;
    for (int i = 0; i < threads; i++) {
      size_t off = (size_t)(p - (const char *)cllm_weights_base(w[k]));
      rd[k][i] = (numa_reader_t){.w = w[k], .off = off, .node = i % nodes};
      args[k][i] = &rd[k][i];
    }
  }
  for (int r = 0; r < o->reps; r++)
    for (int k = 0; k < 2; k++) ns[k][r] = bench_run_threads(threads, numa_read, args[k]);
  for (int k = 0; k < 2; k++) {
    bench_row_t row = {.bench = BENCH, .case_name = name[k], .impl = impl[k],
                       .threads = threads, .ops = mib * (uint64_t)threads};
    double per[BENCH_MAX_REPS];
    for (int r = 0; r < o->reps; r++) per[r] = ns[k][r] / (double)(mib * (uint64_t)threads);
    bench_stats(per, o->reps, &row);
    bench_extra_str(&row, "unit", "ns_per_MiB");
    bench_extra_num(&row, "gb_per_s", (double)MiB / row.ns_per_op_median);
    bench_extra_num(&row, "nodes", nodes);
    bench_extra_num(&row, "replicas", replicas[k]);
    bench_emit(o, &row);
    cllm_weights_destroy(w[k]);
  }
}

int main(int argc, char **argv) {
  bench_opts_t o = bench_parse(argc, argv, BENCH, "--size");
  size_t mib = o.quick ? 256 : 512;
  for (int i = 1; i < argc; i++) {
    if (strncmp(argv[i], "--size=", 7) == 0) mib = strtoull(argv[i] + 7, NULL, 10);
    else if (strcmp(argv[i], "--size") == 0 && i + 1 < argc) mib = strtoull(argv[i + 1], NULL, 10);
  }
  if (mib < 8) mib = 8;
  g_size = (mib + 7) / 8 * 8 * MiB;
  cllm_set_log_fn(cllm_log_discard, NULL);
  write_file();
  {
    char *scratch = malloc(g_size);
    if (scratch == NULL) die("malloc");
    warm_cache(scratch);
    free(scratch);
  }
  double t0 = bench_now_ns();
  case_load(&o);
  case_first_touch(&o);
  case_full_load(&o);
  case_stream_read(&o);
  case_numa_read(&o);
  unlink(g_path);
  bench_note(&o,
             "load: 1 reader %.2f GB/s = %.0f%%, 2 readers %.2f GB/s = %.0f%% of memcpy "
             "%.2f GB/s (goal >= 80%%); %.1f s",
             g_load_gbps[0], 100.0 * g_load_gbps[0] / g_memcpy_gbps, g_load_gbps[1],
             100.0 * g_load_gbps[1] / g_memcpy_gbps, g_memcpy_gbps, (bench_now_ns() - t0) / 1e9);
  return 0;
}
