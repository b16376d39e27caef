/* kv_tier_bench: the KV cache's remote tier on Redis at the llama-3.1-8b KV shape
 * (32 layers, 8 KV heads, head_dim 128, bf16, 16-token blocks: 2 MiB a block).
 *
 * Rows (--json: one object per line, the harness contract):
 *   spill_<T>   cllm_tier_redis    flush a T-token prompt's blocks to Redis (ns per block)
 *   spill_<T>   hiredis_pipelined  the same bytes as plain pipelined SETs (an anchor)
 *   spill_<T>   hiredis_sync       the same bytes as plain SETs, one per round trip (an anchor)
 *               (anchors run first; the tier's spill row gets hiredis_gib_per_s, the best
 *               anchor, and vs_hiredis = its GiB/s / that: the goal is >= 0.5)
 *   fetch_<T>   cllm_tier_redis    remote prefix hit: probe + fetch + verify + commit
 *                                  into a cold cache (ns per block); extras probe_ms,
 *                                  fetch_ms, gib_per_s, recompute_ms, recompute_ratio
 *   fetch_<T>   hiredis_pipelined  the same bytes as plain pipelined GETs
 *   fetch_<T>   hiredis_sync       the same bytes as plain GETs (fetch row: vs_hiredis too)
 *   sgemm       openblas           cblas_sgemm on 2048 x 4096 x 1024 (GFLOP/s)
 * recompute_ms = 2 x 8.03e9 parameters x fetched tokens / the sgemm rate measured
 * in this run: a lower bound on recomputing that prefill on this machine's CPUs;
 * recompute_ratio = recompute_ms / (probe_ms + fetch_ms).
 *
 *   kv_tier_bench [--json] [--quick] [--reps N] [--tokens T] [--redis ENDPOINT]
 * Without --redis it starts its own redis-server (unix socket under /tmp, no
 * persistence) and stops it at exit. */
#include <cblas.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include <cllm/kv_cache.h>
#include <cllm/kv_redis.h>
#include <cllm/kv_tier.h>

#include "harness.h"

#define PARAMS_8B 8.03e9

static pid_t server_pid;
static char server_sock[64];

static void stop_server(void) {
  if (server_pid > 0) {
    kill(server_pid, SIGKILL);
    waitpid(server_pid, NULL, 0);
    unlink(server_sock);
  }
}

static void die(const char *what) {
  fprintf(stderr, "kv_tier_bench: %s\n", what);
  stop_server();
  exit(1);
}

static redisContext *connect_unix_or_die(const char *path) {
  struct timeval tv = {5, 0};
  redisContext *c = redisConnectUnixWithTimeout(path, tv);
  if (c == NULL || c->err) die("cannot reach the redis-server it started");
  return c;
}

static void start_server(void) {
  snprintf(server_sock, sizeof server_sock, "/tmp/ckb%d.sock", (int)getpid());
  unlink(server_sock);
  server_pid = fork();
  if (server_pid < 0) die("fork");
  if (server_pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    int dn = open("/dev/null", O_WRONLY);
    dup2(dn, 1), dup2(dn, 2);
    execl("/usr/bin/redis-server", "redis-server", "--port", "0", "--unixsocket", server_sock,
          "--save", "", "--appendonly", "no", "--dir", "/tmp", (char *)NULL);
    _exit(127);
  }
  for (int i = 0; i < 500; i++) {
    struct timeval tv = {0, 100000};
    redisContext *c = redisConnectUnixWithTimeout(server_sock, tv);
    bool ok = c != NULL && !c->err;
    if (c) redisFree(c);
    if (ok) return;
    usleep(10000);
  }
  die("redis-server did not start (is it installed? tools/bazel installs it)");
}

typedef struct shape {
  cllm_kv_config_t cfg;
  size_t blocks, tokens;
} shape_t;

static cllm_kv_cache_t *mk_cache(const shape_t *sh) {
  cllm_kv_cache_t *kv;
  if (cllm_kv_cache_create(&sh->cfg, &kv) != CLLM_OK) die("cache create");
  return kv;
}

static cllm_kv_tier_t *mk_tier(cllm_kv_cache_t *kv, const char *endpoint) {
  cllm_kv_redis_config_t rc = cllm_kv_redis_config_default();
  rc.endpoint = endpoint;
  rc.connect_timeout_ms = 2000;
  cllm_kv_tier_config_t tc = cllm_kv_tier_config_default();
  if (cllm_kv_store_redis_create(&rc, &tc.store) != CLLM_OK) die("bad --redis endpoint");
  tc.model_id = "llama-3.1-8b";
  tc.model_id_len = 12;
  tc.op_timeout_ms = 5000;
  tc.spill_batch = 16;
  cllm_kv_tier_t *t;
  if (cllm_kv_tier_create(kv, &tc, &t) != CLLM_OK) die("tier create");
  return t;
}

static void prompt(cllm_kv_token_t *t, size_t n) {
  for (size_t i = 0; i < n; i++) t[i] = (cllm_kv_token_t)(1000 + (i * 7919) % 120000);
}

/* Compute (fill) the prompt in kv and close the sequence: its blocks become CACHED. */
static void fill_prompt(cllm_kv_cache_t *kv, const shape_t *sh, const cllm_kv_token_t *t) {
  cllm_kv_seq_t s;
  if (cllm_kv_seq_open(kv, "a", NULL, &s) != CLLM_OK) die("open");
  if (cllm_kv_seq_reserve(kv, s, sh->tokens, NULL) != CLLM_OK) die("reserve");
  uint32_t *tab = malloc(sh->blocks * sizeof *tab);
  size_t nb;
  if (cllm_kv_seq_block_table(kv, s, tab, sh->blocks, &nb) != CLLM_OK) die("table");
  for (size_t b = 0; b < nb; b++)
    for (uint32_t l = 0; l < sh->cfg.layers; l++) {
      void *k, *v;
      if (cllm_kv_block_layer(kv, tab[b], l, &k, &v) != CLLM_OK) die("layer");
      size_t chunk = cllm_kv_block_bytes(kv) / (2u * sh->cfg.layers);
      memset(k, (int)(b * 3 + l) & 0xff, chunk);
      memset(v, (int)(b * 5 + l + 1) & 0xff, chunk);
    }
  free(tab);
  if (cllm_kv_seq_commit(kv, s, t, sh->tokens) != CLLM_OK) die("commit");
  if (cllm_kv_seq_close(kv, s) != CLLM_OK) die("close");
}

static void flushall(const char *sock) {
  redisContext *c = connect_unix_or_die(sock);
  redisReply *r = redisCommand(c, "FLUSHALL");
  if (r == NULL) die("FLUSHALL");
  freeReplyObject(r);
  redisFree(c);
}

/* Plain pipelined SETs then GETs of n values of `bytes` (the anchor rows), in
 * windows of 8 commands (hiredis 0.14 moves its whole output buffer after every
 * partial write: one 254 MiB pipeline runs 100x slower). */
#define WINDOW 8
static void raw_pipeline(const char *sock, size_t n, size_t bytes, double *set_ns, double *get_ns) {
  redisContext *c = connect_unix_or_die(sock);
  char *val = malloc(bytes);
  memset(val, 0x5a, bytes);
  char key[32];
  double t0 = bench_now_ns();
  for (size_t i0 = 0; i0 < n; i0 += WINDOW) {
    size_t m = n - i0 < WINDOW ? n - i0 : WINDOW;
    for (size_t i = i0; i < i0 + m; i++) {
      snprintf(key, sizeof key, "bench:raw:%zu", i);
      redisAppendCommand(c, "SET %s %b", key, val, bytes);
    }
    for (size_t i = 0; i < m; i++) {
      redisReply *r;
      if (redisGetReply(c, (void **)&r) != REDIS_OK) die("pipelined SET");
      freeReplyObject(r);
    }
  }
  *set_ns = bench_now_ns() - t0;
  t0 = bench_now_ns();
  for (size_t i0 = 0; i0 < n; i0 += WINDOW) {
    size_t m = n - i0 < WINDOW ? n - i0 : WINDOW;
    for (size_t i = i0; i < i0 + m; i++) {
      snprintf(key, sizeof key, "bench:raw:%zu", i);
      redisAppendCommand(c, "GET %s", key);
    }
    for (size_t i = 0; i < m; i++) {
      redisReply *r;
      if (redisGetReply(c, (void **)&r) != REDIS_OK || r->len != bytes) die("pipelined GET");
      freeReplyObject(r);
    }
  }
  *get_ns = bench_now_ns() - t0;
  free(val);
  redisFree(c);
}

/* The same SETs then GETs one command per round trip (redisCommand): large
 * values through a pipeline are slower than this on Redis 7.0 (see RESULTS). */
static void raw_sync(const char *sock, size_t n, size_t bytes, double *set_ns, double *get_ns) {
  redisContext *c = connect_unix_or_die(sock);
  char *val = malloc(bytes);
  memset(val, 0x5a, bytes);
  char key[32];
  double t0 = bench_now_ns();
  for (size_t i = 0; i < n; i++) {
    snprintf(key, sizeof key, "bench:sync:%zu", i);
    redisReply *r = redisCommand(c, "SET %s %b", key, val, bytes);
    if (r == NULL || r->type != REDIS_REPLY_STATUS) die("SET");
    freeReplyObject(r);
  }
  *set_ns = bench_now_ns() - t0;
  t0 = bench_now_ns();
  for (size_t i = 0; i < n; i++) {
    snprintf(key, sizeof key, "bench:sync:%zu", i);
    redisReply *r = redisCommand(c, "GET %s", key);
    if (r == NULL || r->len != bytes) die("GET");
    freeReplyObject(r);
  }
  *get_ns = bench_now_ns() - t0;
  free(val);
  redisFree(c);
}

/* One anchor pair (SET as spill_<T>, GET as fetch_<T>): rows emitted, GiB/s out. */
typedef void (*anchor_fn)(const char *, size_t, size_t, double *, double *);
static void anchor(const bench_opts_t *o, anchor_fn fn, const char *impl, const char *spill_case,
                   const char *fetch_case, size_t n, size_t rec_bytes, double *set_gib,
                   double *get_gib) {
  double set_ns[BENCH_MAX_REPS], get_ns[BENCH_MAX_REPS];
  for (int r = 0; r < o->reps; r++) {
    flushall(server_sock);
    double s_ns, g_ns;
    fn(server_sock, n, rec_bytes, &s_ns, &g_ns);
    set_ns[r] = s_ns / (double)n;
    get_ns[r] = g_ns / (double)n;
  }
  const char *cases[2] = {spill_case, fetch_case};
  double *ns[2] = {set_ns, get_ns}, *gib[2] = {set_gib, get_gib};
  for (int k = 0; k < 2; k++) {
    bench_row_t row = {.bench = "kv_tier_bench", .case_name = cases[k], .impl = impl,
                       .threads = 1, .ops = n};
    bench_stats(ns[k], o->reps, &row);
    *gib[k] = (double)rec_bytes / row.ns_per_op_median * 1e9 / (1 << 30);
    bench_extra_num(&row, "gib_per_s", *gib[k]);
    bench_emit(o, &row);
  }
}

static double sgemm_gflops(int reps) {
  const int M = 2048, K = 4096, N = 1024;
  float *a = malloc(sizeof(float) * M * K), *b = malloc(sizeof(float) * K * N),
        *c = malloc(sizeof(float) * M * N);
  for (size_t i = 0; i < (size_t)M * K; i++) a[i] = (float)(i % 17) * 0.01f;
  for (size_t i = 0; i < (size_t)K * N; i++) b[i] = (float)(i % 13) * 0.01f;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, a, K, b, N, 0.0f, c, N);
  double best = 1e30;
  for (int r = 0; r < reps; r++) {
    double t0 = bench_now_ns();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, a, K, b, N, 0.0f, c, N);
    double t = bench_now_ns() - t0;
    if (t < best) best = t;
  }
  bench_sink(c);
  free(a), free(b), free(c);
  return 2.0 * M * N * K / best;  // FLOP per ns = GFLOP/s
}

int main(int argc, char **argv) {
  bench_opts_t o = bench_parse(argc, argv, "kv_tier_bench", "--tokens,--redis");
  size_t tokens = 2048;
  const char *endpoint = NULL;
  for (int i = 1; i + 1 < argc; i++) {
    if (strcmp(argv[i], "--tokens") == 0) tokens = strtoull(argv[++i], NULL, 10);
    else if (strcmp(argv[i], "--redis") == 0) endpoint = argv[++i];
  }
  if (tokens < 32 || tokens > 65536) die("--tokens must be 32..65536");
  char ep[96];
  if (endpoint == NULL) {
    start_server();
    snprintf(ep, sizeof ep, "unix:%s", server_sock);
    endpoint = ep;
  }
  cllm_set_log_fn(cllm_log_discard, NULL);
  shape_t sh = {.cfg = cllm_kv_config_default(), .tokens = tokens};
  sh.cfg.layers = 32, sh.cfg.kv_heads = 8, sh.cfg.head_dim = 128, sh.cfg.dtype_bytes = 2;
  sh.cfg.block_tokens = 16;
  sh.blocks = (tokens + 15) / 16;
  sh.cfg.capacity_blocks = sh.blocks + 8;
  size_t fetch_blocks = (tokens - 1) / 16;
  cllm_kv_token_t *t = malloc(tokens * sizeof *t);
  prompt(t, tokens);
  char spill_case[32], fetch_case[32];
  snprintf(spill_case, sizeof spill_case, "spill_%zu", tokens);
  snprintf(fetch_case, sizeof fetch_case, "fetch_%zu", tokens);
  size_t block_bytes = 0, rec_bytes = 0;

  /* the anchors first: plain hiredis on the same server, the same record bytes */
  cllm_kv_shape_t rshape = {32, 8, 128, 2, 16, 0};
  size_t anchor_bytes = cllm_kv_tier_record_bytes(&rshape);
  double ref_set = 0, ref_get = 0, p_set = 0, p_get = 0, s_set = 0, s_get = 0;
  if (server_pid > 0) {
    anchor(&o, raw_pipeline, "hiredis_pipelined", spill_case, fetch_case, fetch_blocks,
           anchor_bytes, &p_set, &p_get);
    anchor(&o, raw_sync, "hiredis_sync", spill_case, fetch_case, fetch_blocks, anchor_bytes,
           &s_set, &s_get);
    ref_set = p_set > s_set ? p_set : s_set;
    ref_get = p_get > s_get ? p_get : s_get;
  }

  /* spill: a fresh cache computes the prompt, then the tier writes every block */
  double spill_ns[BENCH_MAX_REPS];
  for (int r = 0; r < o.reps; r++) {
    if (server_pid > 0) flushall(server_sock);
    cllm_kv_cache_t *kv = mk_cache(&sh);
    block_bytes = cllm_kv_block_bytes(kv);
    cllm_kv_tier_t *tier = mk_tier(kv, endpoint);
    fill_prompt(kv, &sh, t);
    double t0 = bench_now_ns();
    if (cllm_kv_tier_flush(tier, 120000) != CLLM_OK) die("flush (is the store reachable?)");
    spill_ns[r] = (bench_now_ns() - t0) / (double)sh.blocks;
    cllm_kv_stats_t st = {.struct_size = sizeof st};
    if (cllm_kv_stats(kv, &st) != CLLM_OK || st.tier_spills != sh.blocks) die("not every block spilled");
    rec_bytes = st.tier_spill_bytes / st.tier_spills;
    cllm_kv_tier_destroy(tier);
    cllm_kv_cache_destroy(kv);
  }
  bench_row_t row = {.bench = "kv_tier_bench", .case_name = spill_case, .impl = "cllm_tier_redis",
                     .threads = 1, .ops = sh.blocks};
  bench_stats(spill_ns, o.reps, &row);
  bench_extra_num(&row, "gib_per_s", (double)rec_bytes / row.ns_per_op_median * 1e9 / (1 << 30));
  bench_extra_num(&row, "block_bytes", (double)block_bytes);
  bench_extra_num(&row, "record_bytes", (double)rec_bytes);
  if (ref_set > 0) {  // the best plain-hiredis SET rate of this run, and tier / that
    double gib = (double)rec_bytes / row.ns_per_op_median * 1e9 / (1 << 30);
    bench_extra_num(&row, "hiredis_gib_per_s", ref_set);
    bench_extra_num(&row, "vs_hiredis", gib / ref_set);
  }
  bench_emit(&o, &row);

  /* fetch: a cold cache gets the prompt's prefix from the store (left by the last spill) */
  double fetch_ns[BENCH_MAX_REPS], probe_ms[BENCH_MAX_REPS], fetch_ms[BENCH_MAX_REPS];
  for (int r = 0; r < o.reps; r++) {
    cllm_kv_cache_t *kv = mk_cache(&sh);
    cllm_kv_tier_t *tier = mk_tier(kv, endpoint);
    cllm_kv_seq_t s;
    size_t cached, avail, ready;
    double t0 = bench_now_ns();
    if (cllm_kv_seq_open_with_prompt(kv, "b", NULL, t, tokens, &s, &cached) != CLLM_OK) die("open b");
    if (cllm_kv_tier_probe(tier, s, t, tokens, &avail) != CLLM_OK) die("probe");
    double t1 = bench_now_ns();
    if (cllm_kv_tier_fetch(tier, s, t, tokens, avail, &ready) != CLLM_OK) die("fetch");
    double t2 = bench_now_ns();
    if (ready != fetch_blocks * 16) die("the fetch did not get the whole prefix");
    size_t nb;
    void *k;
    if (cllm_kv_seq_block_table(kv, s, NULL, 0, &nb) != CLLM_OK || nb != fetch_blocks) die("table");
    uint32_t *tab = malloc(nb * sizeof *tab);
    if (cllm_kv_seq_block_table(kv, s, tab, nb, &nb) != CLLM_OK ||
        cllm_kv_block_layer(kv, tab[nb - 1], 3, &k, NULL) != CLLM_OK ||
        ((unsigned char *)k)[100] != (unsigned char)(((nb - 1) * 3 + 3) & 0xff))
      die("fetched bytes differ from the spilled ones");
    free(tab);
    probe_ms[r] = (t1 - t0) / 1e6;
    fetch_ms[r] = (t2 - t1) / 1e6;
    fetch_ns[r] = (t2 - t0) / (double)fetch_blocks;
    if (cllm_kv_seq_close(kv, s) != CLLM_OK) die("close b");
    cllm_kv_tier_destroy(tier);
    cllm_kv_cache_destroy(kv);
  }
  double gflops = sgemm_gflops(o.quick ? 2 : 3);
  double recompute_ms = 2.0 * PARAMS_8B * (double)(fetch_blocks * 16) / gflops / 1e6;
  row = (bench_row_t){.bench = "kv_tier_bench", .case_name = fetch_case, .impl = "cllm_tier_redis",
                      .threads = 1, .ops = fetch_blocks};
  bench_stats(fetch_ns, o.reps, &row);
  double total_ms = row.ns_per_op_median * (double)fetch_blocks / 1e6;
  bench_extra_num(&row, "probe_ms", bench_median(probe_ms, o.reps));
  bench_extra_num(&row, "fetch_ms", bench_median(fetch_ms, o.reps));
  bench_extra_num(&row, "gib_per_s", (double)rec_bytes / row.ns_per_op_median * 1e9 / (1 << 30));
  bench_extra_num(&row, "tokens", (double)(fetch_blocks * 16));
  bench_extra_num(&row, "recompute_ms", recompute_ms);
  bench_extra_num(&row, "recompute_ratio", recompute_ms / total_ms);
  if (ref_get > 0) {
    bench_extra_num(&row, "hiredis_gib_per_s", ref_get);
    bench_extra_num(&row, "vs_hiredis", (double)rec_bytes / row.ns_per_op_median * 1e9 /
                                            (1 << 30) / ref_get);
  }
  bench_emit(&o, &row);

  double g[1] = {1e9 / gflops};  // ns per GFLOP
  row = (bench_row_t){.bench = "kv_tier_bench", .case_name = "sgemm", .impl = "openblas",
                      .threads = o.ncpu, .ops = 1};
  bench_stats(g, 1, &row);
  bench_extra_num(&row, "gflops", gflops);
  bench_extra_str(&row, "dims", "2048x4096x1024");
  bench_emit(&o, &row);
  free(t);
  stop_server();
  return 0;
}
