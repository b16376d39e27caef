/* cllm-mem: the stats writers (JSON and the Prometheus text exposition format).
 *
 *   // once: say what to report, each component with a name
 *   cllm_stats_kv_source_t caches[] = {{"main", kv}};
 *   cllm_stats_arena_source_t arenas[] = {{"worker0", a0}, {"worker1", a1}};
 *   cllm_stats_sources_t src = cllm_stats_sources_default();   // monitor: the global one
 *   src.kv_caches = caches;  src.n_kv_caches = 1;
 *   src.arenas = arenas;     src.n_arenas = 2;
 *
 *   // an inference server's /metrics handler: write into its response buffer
 *   static size_t to_body(void *user, const char *buf, size_t n) {
 *     return body_append(user, buf, n) ? n : 0;                  // short = error
 *   }
 *   if (cllm_stats_write_prometheus(&src, to_body, resp) < 0) ... 500 ...;
 *   // or a file: cllm_stats_write_json(&src, cllm_stats_fwrite, stdout);
 *
 * What is written. The monitor (used / peak / limit in total and per category,
 * refusals, reclaims, batch credit) and, for every registered component, every
 * figure of its *_stats() struct (cllm_kv_stats_t, cllm_arena_stats_t,
 * cllm_weights_stats_t, cllm_heaps_stats_t; struct_size and the private
 * region_start pointer excepted). JSON: one object
 *   {"version": "0.1.0", "monitor": {...}, "kv_caches": [{"name": ..., ...}],
 *    "arenas": [...], "weights": [...], "heaps": [{..., "nodes": [{...}]}]}
 * with the C field names as keys (enums as their names, statuses as CLLM_* names).
 * Prometheus: families named cllm_<component>_<figure>, units in the name
 * (`_bytes`, `_ratio`), counters ending in `_total`, labels `category`, `cache`,
 * `arena`, `weights`, `heaps`, `node`, `state`; each family's samples follow its
 * `# HELP` and `# TYPE` lines; label values are escaped as the format requires.
 *
 * Every figure is read before the first byte is written, so a component whose
 * stats call fails produces no output at all (that status is returned). Once
 * writing has begun, a callback that returns less than it was given stops the
 * writer with CLLM_EIO: what was written before stays written.
 *
 * Threads: the writers are `Thread: any` as far as the monitor, KV caches, weights
 * heaps and NUMA heaps go (their stats calls are). Arena stats are
 * `Thread: external-sync`: register an arena only when its worker is between steps
 * or the caller otherwise serializes with it. Not thread-safe unless tagged.
 */
#ifndef CLLM_STATS_H
#define CLLM_STATS_H

#include <stddef.h>

#include <cllm/arena.h>
#include <cllm/export.h>
#include <cllm/heap.h>
#include <cllm/kv_cache.h>
#include <cllm/monitor.h>
#include <cllm/status.h>
#include <cllm/weights.h>

CLLM_EXTERN_C_BEGIN

// The writers' output: called with consecutive pieces of the text (n >= 1, buf not
// NUL-terminated); returns the bytes it consumed. Anything less than n stops the
// writer (CLLM_EIO). Never called with a library lock held.
typedef size_t (*cllm_stats_write_fn)(void *user, const char *buf, size_t n);

// A ready-made cllm_stats_write_fn for stdio: `user` is a FILE *; returns what
// fwrite wrote (0 for a NULL user or buf). Thread: any (as fwrite).
CLLM_API size_t cllm_stats_fwrite(void *user, const char *buf, size_t n);

// One named component. Names are any non-empty NUL-terminated strings (escaped on
// output); within one kind they must be distinct. Pointers are borrowed.
typedef struct cllm_stats_kv_source {
  const char *name;
  cllm_kv_cache_t *cache;
} cllm_stats_kv_source_t;

typedef struct cllm_stats_arena_source {
  const char *name;
  const cllm_arena_t *arena;
} cllm_stats_arena_source_t;

typedef struct cllm_stats_weights_source {
  const char *name;
  const cllm_weights_t *weights;
} cllm_stats_weights_source_t;

typedef struct cllm_stats_heaps_source {
  const char *name;
  const cllm_heaps_t *heaps;
} cllm_stats_heaps_source_t;

// Most sources of one kind a writer accepts.
#define CLLM_STATS_MAX_SOURCES 4096

// What the writers report. Arrays are borrowed for the duration of a write.
typedef struct cllm_stats_sources {
  size_t struct_size;                          // set by cllm_stats_sources_default()
  const cllm_monitor_t *monitor;               // NULL = cllm_monitor_global()
  const cllm_stats_kv_source_t *kv_caches;     // n_kv_caches entries (NULL if 0)
  size_t n_kv_caches;
  const cllm_stats_arena_source_t *arenas;
  size_t n_arenas;
  const cllm_stats_weights_source_t *weights;
  size_t n_weights;
  const cllm_stats_heaps_source_t *heaps;
  size_t n_heaps;
} cllm_stats_sources_t;

// Defaults: the global monitor, no components. Thread: any.
CLLM_API cllm_stats_sources_t cllm_stats_sources_default(void);

// Write every figure of `src` as one JSON object (UTF-8, a trailing newline)
// through fn(user, ...). Doubles are written with 17 significant digits; a figure
// that is not finite is written as null.
// src NULL: the defaults (the global monitor only).
// Errors: CLLM_EINVAL (fn NULL, bad struct_size, a NULL array with a count,
// a count above CLLM_STATS_MAX_SOURCES, a NULL or empty name, a NULL component),
// CLLM_EEXIST (two sources of one kind with the same name), CLLM_ENOMEM (scratch
// for the figures), any status a component's stats call returns (nothing written
// then), CLLM_EIO (fn consumed less than it was given). Thread: any (see the
// header comment for arenas).
CLLM_API CLLM_NODISCARD cllm_status_t cllm_stats_write_json(const cllm_stats_sources_t *src,
                                                             cllm_stats_write_fn fn, void *user);

// Write every figure of `src` in the Prometheus text exposition format (version
// 0.0.4: `# HELP`, `# TYPE`, one sample per line, '\n' line ends), ready to serve
// from /metrics with Content-Type "text/plain; version=0.0.4". Errors and threads
// as cllm_stats_write_json.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_stats_write_prometheus(const cllm_stats_sources_t *src,
                                                                   cllm_stats_write_fn fn,
                                                                   void *user);

CLLM_EXTERN_C_END
#endif /* CLLM_STATS_H */
