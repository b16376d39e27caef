/* //tests:soak_test: every component at once, for a bounded time.
 *
 *   bazel test //tests:soak_test --test_arg=--seconds=600 [--test_arg=--threads=16]
 *
 * Worker threads run a serving-like loop through one private monitor with a limit
 * that forces reclaim and preemption:
 *   - a step arena per worker, reset every step (sizes vary, so arenas spill,
 *     coalesce and sometimes hit the limit);
 *   - KV sequences opened (some with a shared system prompt), extended token by
 *     token, forked, closed, and preempted when the cache is short; every token's
 *     K row carries a tag that is verified before close, so a block handed to two
 *     sequences or overwritten by another is caught;
 *   - heap allocations passed to another worker and freed there;
 *   - a sealed weights heap every worker reads.
 * What the kernel holds is checked against the charges (resident bytes read back by
 * each component's stats, no slack): every 32 steps each worker checks its arena and
 * its own KV cache (only it commits there, so a stats call sees no commit in
 * flight; the reclaimer only lowers residency before the charge); at the end the
 * shared cache, the weights, and their sum against the monitor.
 * At the end everything is destroyed: the monitor must read zero in every category,
 * its peak must never have passed the limit, and each component's check must hold.
 * A plain program (own main): it also runs under TSan.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cllm/arena.h>
#include <cllm/heap.h>
#include <cllm/kv_cache.h>
#include <cllm/monitor.h>
#include <cllm/weights.h>

#include "support/mt_check.h"

#define MAX_THREADS 64
#define SYS_PROMPT 48

typedef struct shared {
  cllm_monitor_t *mon;
  cllm_kv_cache_t *kv;
  cllm_heaps_t *heaps;
  cllm_weights_t *w;
  const uint32_t *weights;
  size_t n_weights;
  uint32_t weights_sum;
  double deadline;
  /* cross-thread frees: a small mutex-protected stack of heap pointers */
  pthread_mutex_t lock;
  void *handoff[4096];
  int n_handoff;
  _Atomic long steps, tokens, preempted, forks, handed, refused_steps, own_evictions;
  _Atomic long residency_checks;
} shared_t;

typedef struct seq_state {
  cllm_kv_cache_t *kv; /* the shared cache, or the worker's own */
  cllm_kv_seq_t seq;
  bool open;
  /* Who wrote each position: segment k covers [seg_start[k], seg_start[k+1]) and
   * carries seg_tag[k]; a fork copies its parent's segments and starts its own. */
  uint32_t seg_tag[8];
  size_t seg_start[8];
  int nseg;
  size_t len;
  size_t target;
  char id[48];
} seq_state_t;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint32_t row_tag(const seq_state_t *s, size_t pos) {
  if (pos < SYS_PROMPT) return 0x5EED0000u; /* the shared system prompt */
  for (int k = s->nseg - 1; k > 0; k--)
    if (pos >= s->seg_start[k]) return s->seg_tag[k];
  return s->seg_tag[0];
}

/* Write or verify the tag of token `pos` in layer 0's K row. */
static void *k_row(cllm_kv_cache_t *kv, uint32_t block, uint32_t off) {
  void *k = NULL;
  MT_CHECK(cllm_kv_block_layer(kv, block, 0, &k, NULL) == CLLM_OK, "block_layer");
  return (char *)k + (size_t)off * 2 * 64 * 2; /* kv_heads 2 x head_dim 64 x 2 bytes */
}

static void verify_seq(shared_t *sh, seq_state_t *s) {
  (void)sh;
  uint32_t table[1024];
  size_t nb = 0;
  cllm_status_t rc = cllm_kv_seq_block_table(s->kv, s->seq, table, 1024, &nb);
  if (rc == CLLM_EPREEMPTED) return;
  MT_CHECK(rc == CLLM_OK, "block_table %s", cllm_status_name(rc));
  for (size_t pos = 0; pos < s->len; pos++) {
    uint32_t got;
    memcpy(&got, k_row(s->kv, table[pos / 16], (uint32_t)(pos % 16)), sizeof got);
    MT_CHECK(got == row_tag(s, pos), "seq %s pos %zu: tag %08x, expected %08x", s->id, pos, got,
             row_tag(s, pos));
  }
}

static void close_seq(shared_t *sh, seq_state_t *s) {
  if (!s->open) return;
  verify_seq(sh, s);
  MT_CHECK(cllm_kv_seq_close(s->kv, s->seq) == CLLM_OK, "close");
  s->open = false;
}

/* Extend by one token; false when preempted (the sequence is then closed). */
static bool extend(shared_t *sh, seq_state_t *s, const cllm_kv_token_t *prompt) {
  cllm_kv_loc_t loc;
  cllm_status_t rc = cllm_kv_seq_reserve(s->kv, s->seq, 1, &loc);
  if (rc == CLLM_EPREEMPTED) {
    atomic_fetch_add(&sh->preempted, 1);
    MT_CHECK(cllm_kv_seq_close(s->kv, s->seq) == CLLM_OK, "close preempted");
    s->open = false;
    return false;
  }
  if (rc == CLLM_ENOMEM || rc == CLLM_ELIMIT) return true; /* full for now: retry later */
  MT_CHECK(rc == CLLM_OK, "reserve %s", cllm_status_name(rc));
  uint32_t tag = row_tag(s, s->len);
  memcpy(k_row(s->kv, loc.block, loc.offset), &tag, sizeof tag);
  cllm_kv_token_t t = s->len < SYS_PROMPT ? prompt[s->len] : (cllm_kv_token_t)(tag ^ s->len);
  rc = cllm_kv_seq_commit(s->kv, s->seq, &t, 1);
  MT_CHECK(rc == CLLM_OK, "commit %s", cllm_status_name(rc));
  s->len++;
  atomic_fetch_add(&sh->tokens, 1);
  return true;
}

typedef struct worker {
  shared_t *sh;
  int id;
} worker_t;

static void *worker_main(void *arg) {
  worker_t *wk = arg;
  shared_t *sh = wk->sh;
  unsigned long long rng = 0x1234567ull * (unsigned long long)(wk->id + 1);
  cllm_arena_config_t ac = cllm_arena_config_default();
  ac.monitor = sh->mon;
  ac.max_chunk_bytes = 8u << 20;
  cllm_arena_t *arena;
  MT_CHECK(cllm_arena_create(&ac, &arena) == CLLM_OK, "arena");
  cllm_kv_token_t prompt[SYS_PROMPT];
  for (int i = 0; i < SYS_PROMPT; i++) prompt[i] = 1000 + i;
  /* Slots 0-1 use the shared cache (no preemption: a sequence preempted by another
   * thread could still be writing its rows, which only a runtime's scheduler can
   * prevent); slots 2-3 use this worker's own small cache, with preemption. */
  cllm_kv_config_t kc = cllm_kv_config_default();
  kc.layers = 4, kc.kv_heads = 2, kc.head_dim = 64, kc.dtype_bytes = 2, kc.block_tokens = 16;
  kc.capacity_blocks = 24;
  kc.monitor = sh->mon;
  kc.preemption = true;
  cllm_kv_cache_t *own;
  MT_CHECK(cllm_kv_cache_create(&kc, &own) == CLLM_OK, "own kv");
  seq_state_t seqs[4];
  memset(seqs, 0, sizeof seqs);
  for (int i = 0; i < 4; i++) seqs[i].kv = i < 2 ? sh->kv : own;
  uint32_t serial = 0;
  while (now_s() < sh->deadline) {
    /* one step: temp buffers from the arena, touched */
    size_t layers = 4 + mt_rand(&rng) % 8;
    bool refused = false;
    for (size_t l = 0; l < layers && !refused; l++) {
      size_t n = 4096 + mt_rand(&rng) % (1u << 20);
      unsigned char *b = cllm_arena_alloc(arena, n);
      if (b == NULL) {
        cllm_status_t why = cllm_last_status();
        MT_CHECK(why == CLLM_ELIMIT, "arena alloc of %zu failed: %s", n, cllm_status_name(why));
        refused = true;
        break;
      }
      b[0] = (unsigned char)l, b[n - 1] = (unsigned char)l;
    }
    if (refused) atomic_fetch_add(&sh->refused_steps, 1);
    /* the weights are read every step */
    uint32_t sum = 0;
    for (size_t i = 0; i < sh->n_weights; i += 64) sum += sh->weights[i];
    MT_CHECK(sum == sh->weights_sum, "weights changed");
    /* KV: open / extend / fork / close */
    for (int i = 0; i < 4; i++) {
      seq_state_t *s = &seqs[i];
      if (!s->open) {
        snprintf(s->id, sizeof s->id, "w%d-%u", wk->id, serial++);
        s->seg_tag[0] = ((uint32_t)wk->id << 24) | (serial & 0xFFFFFF);
        s->seg_start[0] = 0;
        s->nseg = 1;
        s->target = SYS_PROMPT + 1 + mt_rand(&rng) % 200;
        size_t cached = 0;
        cllm_status_t rc;
        if (mt_rand(&rng) % 2)
          rc = cllm_kv_seq_open_with_prompt(s->kv, s->id, NULL, prompt, SYS_PROMPT, &s->seq, &cached);
        else
          rc = cllm_kv_seq_open(s->kv, s->id, NULL, &s->seq);
        if (rc == CLLM_ENOMEM) continue;
        MT_CHECK(rc == CLLM_OK, "open %s", cllm_status_name(rc));
        s->open = true;
        s->len = cached;
      }
      for (int t = 0; t < 4 && s->open && s->len < s->target; t++)
        if (!extend(sh, s, prompt)) break;
      if (!s->open) continue;
      if (s->len >= s->target) {
        /* sometimes fork the finished sequence into the next slot's place first */
        int j = i ^ 1; /* the other slot on the same cache */
        if (!seqs[j].open && s->nseg < 8 && mt_rand(&rng) % 4 == 0) {
          seq_state_t *c = &seqs[j];
          snprintf(c->id, sizeof c->id, "w%d-f%u", wk->id, serial++);
          cllm_status_t rc = cllm_kv_seq_fork(s->kv, s->seq, c->id, &c->seq);
          if (rc == CLLM_OK) {
            c->open = true;
            memcpy(c->seg_tag, s->seg_tag, sizeof c->seg_tag);
            memcpy(c->seg_start, s->seg_start, sizeof c->seg_start);
            c->seg_tag[s->nseg] = ((uint32_t)wk->id << 24) | (serial & 0xFFFFFF) | 0x800000u;
            c->seg_start[s->nseg] = s->len;
            c->nseg = s->nseg + 1;
            c->len = s->len;
            c->target = s->len + 1 + mt_rand(&rng) % 64;
            atomic_fetch_add(&sh->forks, 1);
          } else {
            MT_CHECK(rc == CLLM_ENOMEM || rc == CLLM_EPREEMPTED, "fork %s", cllm_status_name(rc));
          }
        }
        close_seq(sh, s);
      }
    }
    /* heap: allocate, hand to another worker, free what others handed over */
    void *mine = cllm_heap_alloc(sh->heaps, 16 + mt_rand(&rng) % 8192);
    pthread_mutex_lock(&sh->lock);
    void *theirs = sh->n_handoff > 0 && mt_rand(&rng) % 2 ? sh->handoff[--sh->n_handoff] : NULL;
    if (mine != NULL && sh->n_handoff < 4096) {
      sh->handoff[sh->n_handoff++] = mine;
      mine = NULL;
    }
    pthread_mutex_unlock(&sh->lock);
    if (theirs != NULL) atomic_fetch_add(&sh->handed, 1);
    cllm_heap_free(sh->heaps, theirs);
    cllm_heap_free(sh->heaps, mine);
    if (atomic_fetch_add(&sh->steps, 1) % 32 == 0) {  // the kernel vs the charges
      cllm_arena_stats_t as = {.struct_size = sizeof as};
      MT_CHECK(cllm_arena_stats(arena, &as) == CLLM_OK, "arena stats");
      MT_CHECK(as.resident_bytes <= as.capacity_bytes, "arena resident %zu > charged %zu",
               as.resident_bytes, as.capacity_bytes);
      cllm_kv_stats_t os = {.struct_size = sizeof os};
      MT_CHECK(cllm_kv_stats(own, &os) == CLLM_OK, "own kv stats");
      MT_CHECK(os.resident_bytes <= os.charged_bytes, "own kv resident %zu > charged %zu",
               os.resident_bytes, os.charged_bytes);
      atomic_fetch_add(&sh->residency_checks, 1);
    }
    MT_CHECK(cllm_arena_reset(arena) == CLLM_OK, "reset");
  }
  for (int i = 0; i < 4; i++) close_seq(sh, &seqs[i]);
  MT_CHECK(cllm_kv_check(own) == CLLM_OK, "own kv check");
  cllm_kv_stats_t ks = {.struct_size = sizeof ks};
  MT_CHECK(cllm_kv_stats(own, &ks) == CLLM_OK, "own kv stats");
  atomic_fetch_add(&sh->own_evictions, (long)ks.evictions);
  cllm_kv_cache_destroy(own);
  MT_CHECK(cllm_arena_check(arena) == CLLM_OK, "arena check");
  cllm_arena_destroy(arena);
  MT_CHECK(cllm_heap_thread_flush(sh->heaps) == CLLM_OK, "heap flush");
  return NULL;
}

int main(int argc, char **argv) {
  double seconds = 5;
  int threads = 8;
  for (int i = 1; i < argc; i++) {
    if (strncmp(argv[i], "--seconds=", 10) == 0) seconds = atof(argv[i] + 10);
    else if (strncmp(argv[i], "--threads=", 10) == 0) threads = atoi(argv[i] + 10);
    else {
      fprintf(stderr, "usage: soak [--seconds=N] [--threads=N]\n");
      return 2;
    }
  }
  if (getenv("SOAK_SECONDS") != NULL) seconds = atof(getenv("SOAK_SECONDS"));
  if (threads < 1 || threads > MAX_THREADS || seconds <= 0) {
    fprintf(stderr, "soak: --threads must be 1..%d and --seconds positive\n", MAX_THREADS);
    return 2;
  }
  cllm_set_log_fn(cllm_log_discard, NULL);
  shared_t sh = {.lock = PTHREAD_MUTEX_INITIALIZER};
  const size_t limit = (size_t)112 << 20;
  cllm_monitor_config_t mc = cllm_monitor_config_default();
  mc.limit_bytes = limit;
  MT_CHECK(cllm_monitor_create(&mc, &sh.mon) == CLLM_OK, "monitor");

  cllm_weights_config_t wc = cllm_weights_config_default();
  wc.capacity_bytes = 4u << 20;
  wc.monitor = sh.mon;
  MT_CHECK(cllm_weights_create(&wc, &sh.w) == CLLM_OK, "weights");
  uint32_t *wt;
  MT_CHECK(cllm_weights_alloc(sh.w, 4u << 20, 4096, (void **)&wt) == CLLM_OK, "weights alloc");
  sh.n_weights = (4u << 20) / sizeof(uint32_t);
  for (size_t i = 0; i < sh.n_weights; i++) wt[i] = (uint32_t)(i * 2654435761u);
  for (size_t i = 0; i < sh.n_weights; i += 64) sh.weights_sum += wt[i];
  MT_CHECK(cllm_weights_seal(sh.w) == CLLM_OK, "seal");
  sh.weights = wt;

  cllm_kv_config_t kc = cllm_kv_config_default();
  kc.layers = 4, kc.kv_heads = 2, kc.head_dim = 64, kc.dtype_bytes = 2, kc.block_tokens = 16;
  kc.capacity_blocks = 2048; /* 32 KiB blocks: 64 MiB */
  kc.monitor = sh.mon;
  kc.preemption = false; /* see the worker's comment */
  MT_CHECK(cllm_kv_cache_create(&kc, &sh.kv) == CLLM_OK, "kv");

  cllm_heaps_config_t hc = cllm_heaps_config_default();
  hc.bytes_per_node = 64u << 20;
  hc.monitor = sh.mon;
  MT_CHECK(cllm_heaps_create(&hc, &sh.heaps) == CLLM_OK, "heaps");

  sh.deadline = now_s() + seconds;
  pthread_t t[MAX_THREADS];
  worker_t wk[MAX_THREADS];
  for (int i = 0; i < threads; i++) {
    wk[i] = (worker_t){&sh, i};
    pthread_create(&t[i], NULL, worker_main, &wk[i]);
  }
  for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
  for (int i = 0; i < sh.n_handoff; i++) cllm_heap_free(sh.heaps, sh.handoff[i]);
  MT_CHECK(cllm_kv_check(sh.kv) == CLLM_OK, "kv check");
  MT_CHECK(cllm_heaps_check(sh.heaps) == CLLM_OK, "heaps check");
  MT_CHECK(cllm_weights_check(sh.w) == CLLM_OK, "weights check");
  cllm_kv_stats_t ks = {.struct_size = sizeof ks};
  MT_CHECK(cllm_kv_stats(sh.kv, &ks) == CLLM_OK, "kv stats");
  cllm_monitor_stats_t ms = {.struct_size = sizeof ms};
  MT_CHECK(cllm_monitor_stats(sh.mon, &ms) == CLLM_OK, "monitor stats");
  /* quiescent: what the kernel holds for the shared cache and the weights, each and
   * together, against what the monitor holds for them */
  cllm_weights_stats_t ws = {.struct_size = sizeof ws};
  MT_CHECK(cllm_weights_stats(sh.w, &ws) == CLLM_OK, "weights stats");
  MT_CHECK(ks.resident_bytes <= ks.charged_bytes, "kv resident %zu > charged %zu",
           ks.resident_bytes, ks.charged_bytes);
  MT_CHECK(ws.resident_bytes <= ws.capacity_bytes, "weights resident %zu > charged %zu",
           ws.resident_bytes, ws.capacity_bytes);
  MT_CHECK(ks.resident_bytes + ws.resident_bytes <=
               ms.cat[CLLM_CAT_KV].used_bytes + ms.cat[CLLM_CAT_WEIGHTS].used_bytes,
           "resident %zu > the monitor's KV + WEIGHTS", ks.resident_bytes + ws.resident_bytes);
  MT_CHECK(atomic_load(&sh.residency_checks) > 0, "no residency check ran");

  cllm_kv_cache_destroy(sh.kv);
  cllm_heaps_destroy(sh.heaps);
  cllm_weights_destroy(sh.w);
  for (int c = 0; c <= CLLM_CAT_COUNT; c++)
    MT_CHECK(cllm_monitor_used(sh.mon, (cllm_category_t)c) == 0, "%s still holds %zu bytes",
             c == CLLM_CAT_COUNT ? "total" : cllm_category_name((cllm_category_t)c),
             cllm_monitor_used(sh.mon, (cllm_category_t)c));
  MT_CHECK(cllm_monitor_peak(sh.mon, CLLM_CAT_COUNT) <= limit, "peak %zu above the limit %zu",
           cllm_monitor_peak(sh.mon, CLLM_CAT_COUNT), limit);
  MT_CHECK(cllm_monitor_check(sh.mon) == CLLM_OK, "monitor check");
  printf("soak: %d threads, %.0f s: %ld steps (%ld refused by the limit), %ld tokens, %ld forks, "
         "%ld preemptions, %ld cross-thread frees; kv evictions %llu shared + %ld own, reclaimed "
         "blocks %llu; "
         "monitor peak %.1f of %.1f MiB, reclaim runs %llu\n",
         threads, seconds, atomic_load(&sh.steps), atomic_load(&sh.refused_steps),
         atomic_load(&sh.tokens), atomic_load(&sh.forks), atomic_load(&sh.preempted),
         atomic_load(&sh.handed), (unsigned long long)ks.evictions, atomic_load(&sh.own_evictions),
         (unsigned long long)ks.reclaimed_blocks, (double)ms.peak_bytes / 1048576.0,
         (double)limit / 1048576.0, (unsigned long long)ms.reclaim_runs);
  cllm_monitor_destroy(sh.mon);
  return 0;
}
