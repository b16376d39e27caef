/* stepsim: shared types of the serving simulator (see stepsim_main.c for the overview).
 *
 * Files, one concept each:
 *   stepsim_main.c        options, the text report, --compare, main()
 *   stepsim_model.c       model presets and shapes, length distributions, the PRNG
 *   stepsim_sched.c       requests, the continuous-batching scheduler, worker threads,
 *                         the compute pass, progress
 *   stepsim_run_lib.c     the library backend (weights heap, paged KV cache, step
 *                         arenas, NUMA heaps, global monitor)
 *   stepsim_run_malloc.c  the malloc backend (malloc/free temps, contiguous max-length
 *                         KV per request)
 *   stepsim_need.c        the least memory each backend needs for one request (the
 *                         up-front size checks), overflow-safe size arithmetic
 *   stepsim_out.c         --json, --timeline, --plot, --metrics
 */
#ifndef STEPSIM_H
#define STEPSIM_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cllm/arena.h>
#include <cllm/heap.h>
#include <cllm/kv_cache.h>
#include <cllm/kv_tier.h>
#include <cllm/monitor.h>
#include <cllm/numa.h>
#include <cllm/stats.h>
#include <cllm/weights.h>

#define SS_MIB ((size_t)1 << 20)
#define SS_MAX_THREADS 64
#define SS_BOOK_BYTES SS_MIB /* what the library mode's KV pool leaves for bookkeeping */
#define SS_BOOK_ONE ((size_t)260 << 10) /* what the heaps charge for one request: a 256 KiB page */

/* ---- model shapes (stepsim_model.c) ------------------------------------------- */

typedef struct ss_model {
  char name[32];
  int layers, hidden, heads, kv_heads, head_dim, intermediate, dtype_bytes, vocab;
} ss_model_t;

/* Fill *m with preset `name`; false if unknown. */
bool ss_model_preset(const char *name, ss_model_t *m);
/* The preset names, comma separated (for --help and errors). */
const char *ss_model_preset_list(void);
/* Parameters of the real model (embeddings, attention, MLP, lm head). */
uint64_t ss_model_params(const ss_model_t *m);
/* K+V bytes of one token over every layer. */
size_t ss_model_kv_token_bytes(const ss_model_t *m);
/* Width of the fused QKV projection output. */
size_t ss_model_qkv_dim(const ss_model_t *m);

/* ---- length distributions and the PRNG -------------------------------------------- */

typedef enum { SS_DIST_FIXED, SS_DIST_UNIFORM, SS_DIST_LOGNORMAL } ss_dist_kind_t;

typedef struct ss_dist {
  ss_dist_kind_t kind;
  double a, b;  /* fixed: a; uniform: [a, b]; lognormal: median a, sigma b */
  int min, max; /* clamp */
  char text[64];
} ss_dist_t;

/* Parse "fixed:N", "uniform:MIN:MAX", "lognormal:MEDIAN:SIGMA[:MIN:MAX]". */
bool ss_dist_parse(const char *s, ss_dist_t *d, char *err, size_t errlen);

typedef struct ss_rng { uint64_t s[2]; } ss_rng_t;
void ss_rng_seed(ss_rng_t *r, uint64_t seed);
uint64_t ss_rng_next(ss_rng_t *r);
double ss_rng_uniform(ss_rng_t *r); /* [0, 1) */
int ss_dist_sample(const ss_dist_t *d, ss_rng_t *r);
uint64_t ss_mix64(uint64_t x);

/* ---- configuration (stepsim_main.c) ------------------------------------------------ */

typedef enum { SS_ALLOC_LIBRARY = 0, SS_ALLOC_MALLOC = 1 } ss_alloc_t;
typedef enum { SS_PROGRESS_AUTO, SS_PROGRESS_ON, SS_PROGRESS_OFF } ss_progress_t;

typedef struct ss_config {
  ss_model_t model;
  ss_alloc_t allocator;
  bool compare;
  int threads, max_batch, requests, prefill_chunk, max_step_tokens, max_seq_len;
  int block_tokens;
  ss_dist_t prompt, output;
  int shared_prefix_tokens;
  double shared_fraction;
  size_t mem_limit;      /* effective (computed when not given) */
  bool mem_limit_given;
  size_t kv_budget;      /* what the default limit leaves for KV */
  size_t weights_bytes;  /* effective */
  /* sizes as typed (NULL when not given), for messages in the user's units */
  const char *mem_limit_text, *kv_budget_text, *weights_bytes_text;
  bool weights_capped;   /* weights_bytes < the model's real size */
  uint64_t weights_real_bytes;
  const char *weights_file;
  cllm_weights_lock_t lock;
  bool weights_numa_given;           /* --weights-numa; else interleave on >1 node */
  cllm_weights_numa_t weights_numa;
  int weights_node;                  /* bind:N */
  bool kv_numa_given;                /* --kv-numa; else the cache's default (AUTO) */
  cllm_kv_numa_t kv_numa;
  int kv_node;                       /* bind:N */
  uint64_t seed;
  const char *json_path, *timeline_path, *plot_path;
  bool metrics;
  ss_progress_t progress;
  bool quiet;
  const char *kv_store;  /* --kv-store: the KV tier's Redis endpoint, or NULL */
} ss_config_t;

/* ---- requests ---------------------------------------------------------------------- */

typedef enum { SS_REQ_WAITING, SS_REQ_RUNNING, SS_REQ_DONE, SS_REQ_REJECTED } ss_req_state_t;

typedef struct ss_req {
  int id;
  int prompt_len, output_len;
  bool shared;            /* starts with the shared system prompt */
  ss_req_state_t state;
  int kv_len;             /* tokens whose K/V are stored (reserved and written) */
  int kv_reserved;        /* positions reserved (>= kv_len: a deferred chunk keeps its room) */
  int prefilled;          /* prompt tokens with K/V (cached prefix included) */
  int generated;          /* output tokens produced */
  int runs;               /* starts (1 + re-runs after preemption) */
  int alone_failures;     /* consecutive failures with nothing else running */
  uint64_t admit_order;   /* admission serial (preemption picks the youngest) */
  bool preempt_pending;   /* the KV cache preempted it during this step */
  uint64_t planned;       /* step number + 1 of the plan it is in */
  int deferrals;          /* consecutive steps its prefill chunk was deferred */
  cllm_kv_token_t *tokens; /* prompt followed by output ids (bookkeeping allocation) */
  /* library backend */
  cllm_kv_seq_t seq;
  bool seq_open;
  uint32_t *table;        /* block table (bookkeeping allocation) */
  size_t table_cap, table_n;
  /* malloc backend */
  unsigned char *kvbuf;   /* [layers][2][max_seq_len][row_bytes] */
  size_t kvbuf_bytes;
} ss_req_t;

/* One request's work in a step. */
typedef struct ss_item {
  ss_req_t *r;
  int pos0;  /* KV position of the first new token */
  int n_new; /* new tokens (prefill chunk or 1 decode token) */
  int worker;
} ss_item_t;

/* ---- one timeline row per step ------------------------------------------------------ */

typedef struct ss_row {
  int step;
  double ms;
  int batch, tokens, prefill_tokens, decode_tokens, running, waiting;
  size_t mem[CLLM_CAT_COUNT], mem_total;
  size_t kv_active, kv_cached, kv_free; /* blocks (malloc: block-equivalents, see out) */
  double kv_util;
} ss_row_t;

/* ---- results of one run ---------------------------------------------------------------- */

typedef struct ss_result {
  const char *mode;  /* "library" / "malloc" */
  bool ok;
  double setup_s, run_s;
  uint64_t steps, tokens_generated, prefill_tokens, decode_tokens, prompt_tokens_cached;
  uint64_t prompt_tokens_remote;  /* of the cached ones: fetched from --kv-store */
  double tokens_per_s, steps_per_s, step_ms_median, step_ms_p99, step_ms_mean;
  size_t peak_bytes, peak_cat[CLLM_CAT_COUNT], limit_bytes, end_used_bytes;
  int max_concurrent_seqs;
  double mean_batch, kv_util_mean;
  /* KV */
  size_t kv_num_blocks, kv_block_bytes, kv_capacity_bytes;
  size_t kv_final_free, kv_final_active, kv_final_cached, kv_final_bytes, kv_final_monitor_bytes;
  uint64_t prefix_query_tokens, prefix_hit_tokens, evictions, kv_preemptions, reclaimed_blocks;
  uint64_t sched_preemptions, step_retries, deferred_chunks, admissions_refused;
  uint64_t reclaim_runs, reclaimed_bytes, refusals;
  bool kv_check_ok;
  /* requests */
  int requests, finished, reruns, preempted_requests;
  int rejected_too_long; /* prompt longer than --max-seq-len: never queued */
  int rejected_no_room;  /* failed twice with nothing else running: cannot fit */
  uint64_t expected_tokens;
  /* per-thread temp memory high-water */
  int threads;
  size_t arena_high_water[SS_MAX_THREADS], arena_capacity[SS_MAX_THREADS];
  uint64_t arena_resets[SS_MAX_THREADS], arena_spills[SS_MAX_THREADS];
  uint64_t temp_allocs;  /* malloc mode: malloc calls for temps */
  /* weights */
  size_t weights_capacity, weights_locked, weights_huge;
  int weights_pages_nodes;
  size_t weights_pages_per_node[8];
  const char *weights_lock, *weights_numa, *weights_huge_mode;
  /* KV pools: the policy in force and their pages per node (move_pages read-back) */
  const char *kv_numa;
  int kv_pages_nodes;
  size_t kv_pages_per_node[8], kv_pages_absent;
  int weights_lock_errno;
  bool weights_sealed;
  /* heaps */
  const char *heap_mode;
  int numa_nodes;
  double checksum;
  /* timeline */
  ss_row_t *rows;
  size_t n_rows, cap_rows;
  char *metrics_text; /* --metrics (library mode): Prometheus text, malloc'd */
  char *stats_json;   /* library stats as JSON (cllm_stats_write_json), malloc'd */
} ss_result_t;

/* ---- the simulator state and backends ------------------------------------------------- */

typedef struct ss_sim ss_sim_t;
typedef struct ss_worker ss_worker_t;

typedef struct ss_backend {
  const char *name;
  int (*setup)(ss_sim_t *s);    /* 0 or -1 (message printed) */
  void (*teardown)(ss_sim_t *s);
  /* bookkeeping memory for a request (main thread) */
  void *(*book_alloc)(ss_sim_t *s, size_t bytes);
  void (*book_free)(ss_sim_t *s, void *p);
  /* admission: can `r` start now? then start it (prefix lookup / KV reservation) */
  bool (*can_admit)(ss_sim_t *s, ss_req_t *r);
  cllm_status_t (*admit)(ss_sim_t *s, ss_req_t *r);
  /* room for n tokens at r->kv_len (main thread) */
  cllm_status_t (*reserve)(ss_sim_t *s, ss_req_t *r, int n);
  void (*commit)(ss_sim_t *s, ss_req_t *r, int n);
  void (*release)(ss_sim_t *s, ss_req_t *r); /* finished or preempted: give its KV back */
  void (*touch)(ss_sim_t *s, ss_req_t *r);   /* mark most recently used (preemption order) */
  void (*snapshot)(ss_sim_t *s, ss_row_t *row);
  /* worker side */
  int (*worker_init)(ss_worker_t *w);
  void (*worker_fini)(ss_worker_t *w);
  void *(*temp_alloc)(ss_worker_t *w, size_t bytes); /* 64-byte aligned; NULL = refused */
  size_t (*temp_mark)(ss_worker_t *w);
  void (*temp_rewind)(ss_worker_t *w, size_t mark);
  void (*step_end)(ss_worker_t *w);
  /* K and V of `layer` for block index `bi` of r (rows bi*bt .. bi*bt+bt-1) */
  void (*kv_block)(ss_worker_t *w, ss_req_t *r, int bi, int layer, unsigned char **k,
                   unsigned char **v);
} ss_backend_t;

struct ss_worker {
  ss_sim_t *sim;
  int index;
  pthread_t thread;
  int node;        /* NUMA node it is bound to, -1 if not */
  const unsigned char *weights; /* the copy of the weights it reads (its node's replica) */
  /* library */
  cllm_arena_t *arena;
  cllm_arena_mark_t marks[8];
  /* malloc */
  void *live[64];
  size_t live_bytes[64];
  int n_live;
  size_t temp_in_use, temp_high_water, step_temp_high; /* step_temp_high: this step's */
  uint64_t temp_allocs;
  /* per-step */
  bool failed;
  double sink;
};

struct ss_sim {
  const ss_config_t *cfg;
  const ss_backend_t *be;
  ss_result_t *res;
  cllm_monitor_t *mon;
  cllm_monitor_stats_t mon_start; /* counters when the run began */
  const cllm_topology_t *topo;
  int nodes;
  size_t kv_token_bytes, row_bytes; /* per token over all layers; one layer's K (or V) row */
  size_t layer_weight_bytes;        /* weights read per layer per step (all workers) */
  const unsigned char *weights;     /* base of the weights */
  /* requests */
  ss_req_t *reqs;
  int *waiting;                     /* queue of request indices (ring) */
  int wait_head, wait_n;
  ss_req_t **running;
  int n_running;
  uint64_t admit_serial;
  cllm_kv_token_t *system_prompt;
  /* step plan */
  ss_item_t *items;
  int n_items;
  /* workers */
  ss_worker_t workers[SS_MAX_THREADS];
  pthread_barrier_t start, done;
  bool quit;
  /* library backend */
  cllm_weights_t *wh;
  cllm_kv_cache_t *kv;
  size_t kv_granule;                /* per pool: the pools are committed in these steps */
  cllm_heaps_t *heaps;
  int *preempted;                   /* request ids preempted by the KV cache this step */
  int n_preempted;
  cllm_kv_tier_t *tier;             /* --kv-store */
  /* malloc backend */
  unsigned char *mweights;
  size_t mweights_bytes, mbook_bytes;
};

/* stepsim_sched.c */
int ss_run(const ss_config_t *cfg, ss_alloc_t mode, ss_result_t *res); /* 0 ok */
void ss_on_kv_preempted(ss_sim_t *s, const char *id);
void ss_result_free(ss_result_t *r);
/* Arena-size estimate of one worker for a step of `tokens` tokens (bytes). */
size_t ss_step_temp_estimate(const ss_config_t *cfg, int tokens);

/* stepsim_run_lib.c / stepsim_run_malloc.c */
extern const ss_backend_t ss_backend_library;
extern const ss_backend_t ss_backend_malloc;

/* stepsim_need.c: overflow-safe sizes (SIZE_MAX when the true value does not fit) */
size_t ss_add_sat(size_t a, size_t b);
size_t ss_mul_sat(size_t a, size_t b);
size_t ss_round_up_sat(size_t n, size_t granule); /* granule: a power of two */

/* The least the monitor must allow for the run to serve one request of
 * --max-seq-len with nothing else running. total = the sum (SIZE_MAX on overflow). */
typedef struct ss_need {
  size_t weights; /* the weights as charged */
  size_t temps;   /* every worker's step temps at the full step budget */
  size_t book;    /* bookkeeping */
  size_t seq;     /* KV of one sequence of --max-seq-len */
  size_t total;
} ss_need_t;
/* Library mode: what cllm-mem will charge, from its footprint functions (weights,
 * one arena chunk of a full step per worker, a KV cache of the whole sequence + 1
 * block). */
void ss_lib_required_bytes(const ss_config_t *cfg, ss_need_t *n);
/* stepsim_run_lib.c: the configs library mode creates (the need asks their footprints). */
cllm_weights_config_t ss_lib_weights_config(const ss_config_t *cfg, int nodes);
cllm_kv_config_t ss_lib_kv_config(const ss_config_t *cfg); /* no eviction callback */
cllm_arena_config_t ss_lib_arena_config(void);
size_t ss_lib_seq_blocks(const ss_config_t *cfg); /* blocks of one max_seq_len sequence + 1 */
size_t ss_lib_full_temps(const ss_config_t *cfg); /* arena charge of a full step, all workers */
/* Malloc mode: 64-byte rounded weights, malloc'd temps, one max-length KV buffer. */
void ss_malloc_required_bytes(const ss_config_t *cfg, ss_need_t *n);
/* Per-worker temps of a full step (max_step_tokens spread over the workers). */
size_t ss_step_temps_full(const ss_config_t *cfg);

/* stepsim_out.c */
typedef struct ss_output {
  const char *opt;  /* "--json", "--timeline", "--plot" */
  const char *path; /* as given; "-" = stdout (--json, --timeline) */
  FILE *f;          /* opened before the run (NULL for --plot: gnuplot writes it) */
  bool created;     /* the file did not exist: removed again when the run fails */
} ss_output_t;
typedef struct ss_outputs {
  ss_output_t json, timeline, plot;
  bool stdout_taken; /* --json - or --timeline -: the text report goes to stderr */
} ss_outputs_t;
/* Open every output file and find gnuplot before the run; exits 2 with a message
 * naming the option when one cannot be written. */
void ss_outputs_open(const ss_config_t *cfg, ss_outputs_t *o);
/* The run failed: close and remove the files created by ss_outputs_open. */
void ss_outputs_discard(ss_outputs_t *o);
/* Write the outputs; each file written is named on `note`. 0 or -1 (message printed). */
int ss_outputs_write(const ss_config_t *cfg, ss_outputs_t *o, const ss_result_t *lib,
                     const ss_result_t *mal, FILE *note);
char *ss_collect_metrics(ss_sim_t *s, bool json); /* Prometheus or JSON text, malloc'd */

/* small helpers (stepsim_main.c) */
void ss_fmt_bytes(char *buf, size_t n, size_t bytes);
double ss_now_s(void);

#endif /* STEPSIM_H */
