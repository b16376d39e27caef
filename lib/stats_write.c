/* The stats writers: JSON and the Prometheus text exposition format over the monitor
 * and every component a caller registers (include/cllm/stats.h).
 *
 * Concept. Two phases. Collect: validate the sources, then call every component's
 * *_stats() into scratch arrays (one malloc); a failure there returns before any
 * byte is written. Emit: walk field tables (one per stats struct: name, Prometheus
 * family, help, counter or gauge, C type, offset) and write through a 4 KiB buffer
 * that is flushed to the caller's callback. Both formats are driven by the same
 * tables, so a field added to a table appears in both.
 *
 * Invariants: every byte goes through out_write (which flushes and records a short
 * write); after a short write nothing more is sent. Strings from callers (names)
 * are always escaped (JSON string rules, Prometheus label-value rules).
 *
 * Locks: none of its own; each component's stats call takes that component's lock
 * (if any) and releases it before returning, so the callback never runs under one.
 */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cllm/stats.h>
#include <cllm/version.h>

#include "internal/fault.h"
#include "internal/util.h"
#include "internal/versioned.h"

/* ---- output buffer ---------------------------------------------------------- */

typedef struct out {
  cllm_stats_write_fn fn;
  void *user;
  size_t len;
  bool failed;
  char buf[4096];
} out_t;

static void out_flush(out_t *o) {
  if (o->failed || o->len == 0) return;
  size_t w = o->fn(o->user, o->buf, o->len);
  if (w != o->len) o->failed = true;
  o->len = 0;
}

static void out_write(out_t *o, const char *s, size_t n) {
  while (n > 0 && !o->failed) {
    size_t room = sizeof o->buf - o->len;
    size_t take = n < room ? n : room;
    memcpy(o->buf + o->len, s, take);
    o->len += take;
    s += take;
    n -= take;
    if (o->len == sizeof o->buf) out_flush(o);
  }
}

static void out_str(out_t *o, const char *s) { out_write(o, s, strlen(s)); }

static void out_u64(out_t *o, uint64_t v) {
  char t[24];
  int n = snprintf(t, sizeof t, "%llu", (unsigned long long)v);
  out_write(o, t, (size_t)n);
}

static void out_i64(out_t *o, long long v) {
  char t[24];
  int n = snprintf(t, sizeof t, "%lld", v);
  out_write(o, t, (size_t)n);
}

/* JSON: null for NaN/inf; Prometheus: NaN, +Inf, -Inf. */
static void out_double(out_t *o, double v, bool json) {
  char t[40];
  int n;
  if (isnan(v)) n = snprintf(t, sizeof t, "%s", json ? "null" : "NaN");
  else if (isinf(v)) n = snprintf(t, sizeof t, "%s", json ? "null" : (v > 0 ? "+Inf" : "-Inf"));
  else n = snprintf(t, sizeof t, "%.17g", v);
  out_write(o, t, (size_t)n);
}

/* A JSON string literal, quotes included. */
static void out_json_str(out_t *o, const char *s) {
  out_write(o, "\"", 1);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    char t[8];
    switch (*p) {
      case '"': out_write(o, "\\\"", 2); break;
      case '\\': out_write(o, "\\\\", 2); break;
      case '\n': out_write(o, "\\n", 2); break;
      case '\r': out_write(o, "\\r", 2); break;
      case '\t': out_write(o, "\\t", 2); break;
      default:
        if (*p < 0x20) {
          snprintf(t, sizeof t, "\\u%04x", *p);
          out_write(o, t, 6);
        } else {
          out_write(o, (const char *)p, 1);
        }
    }
  }
  out_write(o, "\"", 1);
}

/* A Prometheus label value (inside quotes): backslash, quote and newline escaped. */
static void out_label_value(out_t *o, const char *s) {
  for (const char *p = s; *p; p++) {
    if (*p == '\\') out_write(o, "\\\\", 2);
    else if (*p == '"') out_write(o, "\\\"", 2);
    else if (*p == '\n') out_write(o, "\\n", 2);
    else out_write(o, p, 1);
  }
}

/* ---- field tables --------------------------------------------------------------- */

typedef enum ftype { F_SIZE, F_U64, F_U32, F_INT, F_DOUBLE, F_BOOL } ftype_t;

typedef struct field {
  const char *json;  /* key in JSON (the C field name) */
  const char *prom;  /* family suffix after the component prefix */
  const char *help;
  bool counter;
  ftype_t type;
  size_t offset;
} field_t;

#define FG(st, f, prom, t, help) {#f, prom, help, false, t, offsetof(st, f)}
#define FC(st, f, prom, t, help) {#f, prom, help, true, t, offsetof(st, f)}

static const field_t kv_fields[] = {
    FG(cllm_kv_stats_t, num_blocks, "capacity_blocks", F_SIZE, "Blocks in the pool."),
    FG(cllm_kv_stats_t, block_bytes, "block_bytes", F_SIZE, "Bytes of one block (K and V, every layer)."),
    FG(cllm_kv_stats_t, block_tokens, "block_tokens", F_U32, "Tokens per block."),
    FG(cllm_kv_stats_t, blocks_free, "blocks_free", F_SIZE, "FREE blocks (recycled and never used)."),
    FG(cllm_kv_stats_t, blocks_active, "blocks_active", F_SIZE, "ACTIVE blocks (held by sequences)."),
    FG(cllm_kv_stats_t, blocks_cached, "blocks_cached", F_SIZE, "CACHED blocks (reusable prefixes)."),
    FG(cllm_kv_stats_t, blocks_pinned, "blocks_pinned", F_SIZE, "Pinned blocks (ACTIVE or CACHED)."),
    FG(cllm_kv_stats_t, blocks_committed, "blocks_committed", F_SIZE, "Blocks inside the committed (charged) pool prefix."),
    FG(cllm_kv_stats_t, tokens_stored, "tokens_stored", F_SIZE, "Token rows in use in ACTIVE blocks."),
    FG(cllm_kv_stats_t, utilisation, "utilisation_ratio", F_DOUBLE, "Tokens stored over slots in ACTIVE blocks."),
    FG(cllm_kv_stats_t, kv_bytes, "used_bytes", F_SIZE, "Bytes of blocks in use ((active + cached) x block bytes)."),
    FG(cllm_kv_stats_t, charged_bytes, "charged_bytes", F_SIZE, "Bytes charged to the monitor (committed pool pages)."),
    FG(cllm_kv_stats_t, resident_bytes, "resident_bytes", F_SIZE, "Pool bytes resident, read back from the kernel."),
    FG(cllm_kv_stats_t, blocks_given_back, "blocks_given_back", F_SIZE, "FREE blocks whose pages were given back."),
    FC(cllm_kv_stats_t, given_back_blocks, "given_back_blocks_total", F_U64, "Times a block's pages were given back by the reclaimer."),
    FG(cllm_kv_stats_t, numa_applied, "numa_applied", F_INT, "Placement of the pools in force (cllm_kv_numa_t: 1 local, 2 bind, 3 interleave, 4 none)."),
    FG(cllm_kv_stats_t, numa_status, "numa_status", F_INT, "Status of a placement that could not be applied (0 if none)."),
    FG(cllm_kv_stats_t, sequences, "sequences", F_SIZE, "Open and preempted sequences."),
    FG(cllm_kv_stats_t, copy_entries, "copy_entries", F_SIZE, "Copy-API entries."),
    FG(cllm_kv_stats_t, copy_used_bytes, "copy_used_bytes", F_SIZE, "Bytes held by copy-API entries."),
    FC(cllm_kv_stats_t, prefix_query_tokens, "prefix_query_tokens_total", F_U64, "Prompt tokens looked up in the prefix cache."),
    FC(cllm_kv_stats_t, prefix_hit_tokens, "prefix_hit_tokens_total", F_U64, "Prompt tokens served from the prefix cache."),
    FC(cllm_kv_stats_t, evictions, "evictions_total", F_U64, "CACHED blocks reused or reclaimed."),
    FC(cllm_kv_stats_t, copy_evictions, "copy_evictions_total", F_U64, "Copy-API entries evicted by LRU."),
    FC(cllm_kv_stats_t, preemptions, "preemptions_total", F_U64, "Sequences preempted to free blocks."),
    FC(cllm_kv_stats_t, cow_copies, "cow_copies_total", F_U64, "Copy-on-write block copies."),
    FC(cllm_kv_stats_t, refused, "refused_total", F_U64, "Reserve and put calls refused."),
    FC(cllm_kv_stats_t, reclaimed_blocks, "reclaimed_blocks_total", F_U64, "CACHED blocks dropped by the monitor's reclaimer."),
    FG(cllm_kv_stats_t, tier_state, "tier_state", F_U32, "Remote tier: 0 none, 1 up, 2 down."),
    FC(cllm_kv_stats_t, tier_probes, "tier_probes_total", F_U64, "Remote tier probes."),
    FC(cllm_kv_stats_t, tier_remote_hit_tokens, "tier_remote_hit_tokens_total", F_U64, "Prompt tokens fetched from the remote tier."),
    FC(cllm_kv_stats_t, tier_fetched_bytes, "tier_fetched_bytes_total", F_U64, "Record bytes fetched from the remote tier."),
    FC(cllm_kv_stats_t, tier_fetch_ns, "tier_fetch_ns_total", F_U64, "Nanoseconds spent in remote fetches."),
    FC(cllm_kv_stats_t, tier_spills, "tier_spills_total", F_U64, "Blocks written to the remote tier."),
    FC(cllm_kv_stats_t, tier_spill_bytes, "tier_spill_bytes_total", F_U64, "Record bytes written to the remote tier."),
    FC(cllm_kv_stats_t, tier_spills_skipped, "tier_spills_skipped_total", F_U64, "Blocks evicted or changed before they were written."),
    FC(cllm_kv_stats_t, tier_errors, "tier_errors_total", F_U64, "Remote store operations that failed."),
    FC(cllm_kv_stats_t, tier_timeouts, "tier_timeouts_total", F_U64, "Remote store operations past their deadline."),
    FC(cllm_kv_stats_t, tier_reconnects, "tier_reconnects_total", F_U64, "Remote store connections made again."),
    FC(cllm_kv_stats_t, tier_rejects_oom, "tier_rejects_oom_total", F_U64, "Spills refused because the store is full."),
    FC(cllm_kv_stats_t, tier_rejects_noperm, "tier_rejects_noperm_total", F_U64, "Spills refused as not permitted."),
    FC(cllm_kv_stats_t, tier_rejects_record, "tier_rejects_record_total", F_U64, "Fetched records that failed verification."),
    FC(cllm_kv_stats_t, tier_rejects_mac, "tier_rejects_mac_total", F_U64, "Fetched records whose MAC did not verify (of tier_rejects_record)."),
};

static const field_t arena_fields[] = {
    FG(cllm_arena_stats_t, bytes_in_use, "in_use_bytes", F_SIZE, "Bytes in use in the current step."),
    FG(cllm_arena_stats_t, step_high_water_bytes, "step_high_water_bytes", F_SIZE, "Most bytes in use during the current step."),
    FG(cllm_arena_stats_t, last_step_high_water_bytes, "last_step_high_water_bytes", F_SIZE, "High-water of the last completed step."),
    FG(cllm_arena_stats_t, high_water_bytes, "high_water_bytes", F_SIZE, "All-time high-water."),
    FG(cllm_arena_stats_t, capacity_bytes, "capacity_bytes", F_SIZE, "Sum of chunk sizes (charged to the monitor)."),
    FG(cllm_arena_stats_t, chunks, "chunks", F_SIZE, "Chunks held."),
    FG(cllm_arena_stats_t, largest_chunk_bytes, "largest_chunk_bytes", F_SIZE, "Largest chunk."),
    FG(cllm_arena_stats_t, reserve_floor_bytes, "reserve_floor_bytes", F_SIZE, "Floor set by cllm_arena_reserve."),
    FC(cllm_arena_stats_t, resets, "resets_total", F_U64, "Resets (steps ended)."),
    FC(cllm_arena_stats_t, spilled_steps, "spilled_steps_total", F_U64, "Steps that spilled into more than one chunk."),
    FC(cllm_arena_stats_t, coalesces, "coalesces_total", F_U64, "Resets that rebuilt the chunks into one."),
    FC(cllm_arena_stats_t, shrinks, "shrinks_total", F_U64, "Times memory was given back by the shrink policy or trim."),
    FC(cllm_arena_stats_t, refused, "refused_total", F_U64, "Allocations or chunks refused."),
    FC(cllm_arena_stats_t, einval, "einval_total", F_U64, "Bad-argument calls."),
    FC(cllm_arena_stats_t, allocator_calls, "allocator_calls_total", F_U64, "Chunk obtain, give-back and trim calls."),
    FC(cllm_arena_stats_t, monitor_calls, "monitor_calls_total", F_U64, "Monitor reserve and release calls."),
    FG(cllm_arena_stats_t, heap_backed, "heap_backed", F_BOOL, "1 if chunks come from the NUMA heaps."),
    FG(cllm_arena_stats_t, cursor_out, "cursor_out", F_BOOL, "1 while a cursor is out."),
    FC(cllm_arena_stats_t, cursors, "cursors_total", F_U64, "Cursors begun."),
    FG(cllm_arena_stats_t, resident_bytes, "resident_bytes", F_SIZE, "Chunk bytes resident, read back from the kernel."),
};

static const field_t weights_fields[] = {
    FG(cllm_weights_stats_t, capacity_bytes, "capacity_bytes", F_SIZE, "Size of the weights region."),
    FG(cllm_weights_stats_t, used_bytes, "used_bytes", F_SIZE, "Bytes allocated or loaded (bump offset)."),
    FG(cllm_weights_stats_t, committed_bytes, "committed_bytes", F_SIZE, "Bytes committed and charged to the monitor."),
    FG(cllm_weights_stats_t, locked_bytes, "locked_bytes", F_SIZE, "Bytes mlocked."),
    FG(cllm_weights_stats_t, lock_errno, "lock_errno", F_INT, "errno of mlock when locking fell short (0 if not)."),
    FG(cllm_weights_stats_t, memlock_limit_bytes, "memlock_limit_bytes", F_SIZE, "RLIMIT_MEMLOCK when locking was tried."),
    FG(cllm_weights_stats_t, huge_errno, "huge_errno", F_INT, "errno explaining a huge-page fallback (0 if none)."),
    FG(cllm_weights_stats_t, huge_bytes, "huge_bytes", F_SIZE, "Bytes backed by huge pages."),
    FG(cllm_weights_stats_t, numa_nodes_mask, "numa_nodes_mask", F_U64, "Topology nodes of the applied policy (bit i = node i)."),
    FG(cllm_weights_stats_t, pages_nodes, "pages_nodes", F_INT, "Entries of pages_per_node."),
    FG(cllm_weights_stats_t, pages_absent, "pages_absent", F_SIZE, "Pages not present."),
    FG(cllm_weights_stats_t, pages_other, "pages_other", F_SIZE, "Pages on unknown or high nodes."),
    FG(cllm_weights_stats_t, page_bytes, "page_bytes", F_SIZE, "Base page size of the page counts."),
    FG(cllm_weights_stats_t, sealed, "sealed", F_BOOL, "1 if the region is read-only."),
    FC(cllm_weights_stats_t, loads, "loads_total", F_U64, "Successful loads."),
    FC(cllm_weights_stats_t, loaded_bytes, "loaded_bytes_total", F_U64, "Bytes read by loads."),
    FC(cllm_weights_stats_t, load_failures, "load_failures_total", F_U64, "Failed loads."),
    FG(cllm_weights_stats_t, last_load_errno, "last_load_errno", F_INT, "errno of the most recent failed open or read."),
    FG(cllm_weights_stats_t, resident_bytes, "resident_bytes", F_SIZE, "Region bytes resident, read back from the kernel."),
};

static const field_t heaps_fields[] = {
    FG(cllm_heaps_stats_t, nodes, "nodes", F_INT, "NUMA nodes with a region."),
    FG(cllm_heaps_stats_t, threads, "threads", F_INT, "Threads that have a heap."),
    FC(cllm_heaps_stats_t, foreign_frees, "foreign_frees_total", F_U64, "Frees of pointers not from these heaps."),
    FC(cllm_heaps_stats_t, einval, "einval_total", F_U64, "Bad-argument calls."),
    FG(cllm_heaps_stats_t, region_align_bytes, "region_align_bytes", F_SIZE, "Alignment of every region."),
    FG(cllm_heaps_stats_t, kept_blocks, "kept_blocks", F_U64, "Blocks held so that size classes keep their pages (keep_pages)."),
    FG(cllm_heaps_stats_t, bytes_in_use, "in_use_bytes", F_SIZE, "Bytes handed out and not freed, all nodes."),
    FG(cllm_heaps_stats_t, resident_bytes, "resident_bytes", F_SIZE, "Region bytes resident, read from the kernel."),
};

static const field_t heap_node_fields[] = {
    FG(cllm_heap_node_stats_t, region_bytes, "node_region_bytes", F_SIZE, "Region size of the node (0 in plain mode)."),
    FG(cllm_heap_node_stats_t, huge_page_bytes, "node_huge_page_bytes", F_SIZE, "Region bytes backed by huge pages."),
    FG(cllm_heap_node_stats_t, bytes_in_use, "node_in_use_bytes", F_SIZE, "Bytes handed out and not freed."),
    FC(cllm_heap_node_stats_t, allocations, "node_allocations_total", F_U64, "Allocations."),
    FC(cllm_heap_node_stats_t, frees, "node_frees_total", F_U64, "Frees."),
    FC(cllm_heap_node_stats_t, failures, "node_failures_total", F_U64, "Allocations that returned NULL."),
    FC(cllm_heap_node_stats_t, fallbacks, "node_fallbacks_total", F_U64, "Allocations served by another node."),
    FG(cllm_heap_node_stats_t, bound, "node_bound", F_BOOL, "1 if the region is bound to the node."),
    FG(cllm_heap_node_stats_t, os_node, "node_os_index", F_INT, "OS node the region is bound to (-1 if unbound)."),
};

/* The monitor: totals (JSON top level; Prometheus cllm_memory_total_*), per category
 * (JSON "categories"; Prometheus one family per figure, label `category`), counters. */
static const field_t monitor_total_fields[] = {
    FG(cllm_monitor_stats_t, used_bytes, "total_used_bytes", F_SIZE, "Bytes reserved in the monitor in total."),
    FG(cllm_monitor_stats_t, peak_bytes, "total_peak_bytes", F_SIZE, "Peak bytes reserved in total."),
    FG(cllm_monitor_stats_t, limit_bytes, "total_limit_bytes", F_SIZE, "Total limit (0 = unlimited)."),
};

static const field_t monitor_cat_fields[] = {
    FG(cllm_monitor_cat_stats_t, used_bytes, "used_bytes", F_SIZE, "Bytes reserved in the monitor, by category."),
    FG(cllm_monitor_cat_stats_t, peak_bytes, "peak_bytes", F_SIZE, "Peak bytes reserved, by category."),
    FG(cllm_monitor_cat_stats_t, limit_bytes, "limit_bytes", F_SIZE, "Limit by category (0 = unlimited)."),
};

static const field_t monitor_counter_fields[] = {
    FC(cllm_monitor_stats_t, refusals, "refusals_total", F_U64, "Reservations refused after reclaim."),
    FC(cllm_monitor_stats_t, reclaim_runs, "reclaim_runs_total", F_U64, "Times the reclaimers were asked."),
    FC(cllm_monitor_stats_t, reclaimed_bytes, "reclaimed_bytes_total", F_U64, "Bytes the reclaimers freed."),
    FC(cllm_monitor_stats_t, bad_releases, "bad_releases_total", F_U64, "Releases refused as larger than reserved."),
    FG(cllm_monitor_stats_t, batch_credit_bytes, "batch_credit_bytes", F_SIZE, "Credit held by per-thread batches."),
    FC(cllm_monitor_stats_t, try_refusals, "try_refusals_total", F_U64, "Reservations refused without reclaim (try_reserve: KV cache, arena growth)."),
};

/* Enum and status figures: a string in JSON ("key":"name"), a label of the
 * component's cllm_<component>_info sample (value 1) in Prometheus. */
typedef enum ltype { L_STATUS, L_WEIGHTS_LOCK, L_WEIGHTS_HUGE, L_WEIGHTS_NUMA, L_HEAP_MODE } ltype_t;

typedef struct label {
  const char *key; /* the C field name */
  ltype_t type;
  size_t offset;
} label_t;

#define FL(st, f, t) {#f, t, offsetof(st, f)}

static const label_t weights_labels[] = {
    FL(cllm_weights_stats_t, lock_requested, L_WEIGHTS_LOCK),
    FL(cllm_weights_stats_t, huge_requested, L_WEIGHTS_HUGE),
    FL(cllm_weights_stats_t, huge_applied, L_WEIGHTS_HUGE),
    FL(cllm_weights_stats_t, numa_requested, L_WEIGHTS_NUMA),
    FL(cllm_weights_stats_t, numa_applied, L_WEIGHTS_NUMA),
    FL(cllm_weights_stats_t, numa_status, L_STATUS),
    FL(cllm_weights_stats_t, readback_status, L_STATUS),
};

static const label_t heaps_labels[] = {
    FL(cllm_heaps_stats_t, mode, L_HEAP_MODE),
};

_Static_assert(sizeof(cllm_status_t) == sizeof(int) && sizeof(cllm_weights_lock_t) == sizeof(int) &&
                   sizeof(cllm_weights_huge_t) == sizeof(int) &&
                   sizeof(cllm_weights_numa_t) == sizeof(int) &&
                   sizeof(cllm_heap_mode_t) == sizeof(int),
               "label fields are read as int");

static const char *label_value(const label_t *l, const void *st) {
  int v;
  memcpy(&v, (const char *)st + l->offset, sizeof v);
  switch (l->type) {
    case L_STATUS: return cllm_status_name((cllm_status_t)v);
    case L_WEIGHTS_LOCK: return cllm_weights_lock_name((cllm_weights_lock_t)v);
    case L_WEIGHTS_HUGE: return cllm_weights_huge_name((cllm_weights_huge_t)v);
    case L_WEIGHTS_NUMA: return cllm_weights_numa_name((cllm_weights_numa_t)v);
    case L_HEAP_MODE: return cllm_heap_mode_name((cllm_heap_mode_t)v);
  }
  return "unknown";
}

#define NFIELDS(t) (sizeof(t) / sizeof((t)[0]))

/* Write the field's value (a number; JSON bools as true/false). */
static void out_field(out_t *o, const field_t *f, const void *st, bool json) {
  const char *p = (const char *)st + f->offset;
  switch (f->type) {
    case F_SIZE: { size_t v; memcpy(&v, p, sizeof v); out_u64(o, v); break; }
    case F_U64: { uint64_t v; memcpy(&v, p, sizeof v); out_u64(o, v); break; }
    case F_U32: { uint32_t v; memcpy(&v, p, sizeof v); out_u64(o, v); break; }
    case F_INT: { int v; memcpy(&v, p, sizeof v); out_i64(o, v); break; }
    case F_DOUBLE: { double v; memcpy(&v, p, sizeof v); out_double(o, v, json); break; }
    case F_BOOL: {
      bool v; memcpy(&v, p, sizeof v);
      if (json) out_str(o, v ? "true" : "false");
      else out_str(o, v ? "1" : "0");
      break;
    }
  }
}

/* ---- collect ---------------------------------------------------------------------- */

typedef struct collected {
  cllm_stats_sources_t src; /* the caller's sources over the defaults */
  cllm_monitor_stats_t mon;
  cllm_kv_stats_t *kv;
  cllm_arena_stats_t *arena;
  cllm_weights_stats_t *weights;
  cllm_heaps_stats_t *heaps;
  const char **kv_names, **arena_names, **weights_names, **heaps_names;
  void *block; /* the one allocation behind the arrays */
} collected_t;

/* Names: non-NULL, non-empty, distinct within a kind (O(n^2), n is small);
 * objects non-NULL. */
static cllm_status_t check_names(const char *const *names, const bool *null_obj, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (names[i] == NULL || names[i][0] == '\0' || null_obj[i]) return CLLM_EINVAL;
  for (size_t i = 0; i < n; i++)
    for (size_t j = i + 1; j < n; j++)
      if (strcmp(names[i], names[j]) == 0) return CLLM_EEXIST;
  return CLLM_OK;
}

static cllm_status_t validate_counts(const cllm_stats_sources_t *s) {
  if ((s->n_kv_caches > 0 && s->kv_caches == NULL) || (s->n_arenas > 0 && s->arenas == NULL) ||
      (s->n_weights > 0 && s->weights == NULL) || (s->n_heaps > 0 && s->heaps == NULL))
    return CLLM_EINVAL;
  if (s->n_kv_caches > CLLM_STATS_MAX_SOURCES || s->n_arenas > CLLM_STATS_MAX_SOURCES ||
      s->n_weights > CLLM_STATS_MAX_SOURCES || s->n_heaps > CLLM_STATS_MAX_SOURCES)
    return CLLM_EINVAL;
  return CLLM_OK;
}

/* Copy each kind's names into the flat arrays and check them (nulls: scratch, one flag
 * per source: its object is NULL). */
static cllm_status_t gather_names(const cllm_stats_sources_t *s, collected_t *c, bool *nulls) {
  cllm_status_t rc;
  for (size_t i = 0; i < s->n_kv_caches; i++)
    c->kv_names[i] = s->kv_caches[i].name, nulls[i] = s->kv_caches[i].cache == NULL;
  if ((rc = check_names(c->kv_names, nulls, s->n_kv_caches)) != CLLM_OK) return rc;
  for (size_t i = 0; i < s->n_arenas; i++)
    c->arena_names[i] = s->arenas[i].name, nulls[i] = s->arenas[i].arena == NULL;
  if ((rc = check_names(c->arena_names, nulls, s->n_arenas)) != CLLM_OK) return rc;
  for (size_t i = 0; i < s->n_weights; i++)
    c->weights_names[i] = s->weights[i].name, nulls[i] = s->weights[i].weights == NULL;
  if ((rc = check_names(c->weights_names, nulls, s->n_weights)) != CLLM_OK) return rc;
  for (size_t i = 0; i < s->n_heaps; i++)
    c->heaps_names[i] = s->heaps[i].name, nulls[i] = s->heaps[i].heaps == NULL;
  return check_names(c->heaps_names, nulls, s->n_heaps);
}

/* Every component's stats into c (c->src set); on failure nothing is kept. */
static cllm_status_t collect_stats(collected_t *c) {
  const cllm_stats_sources_t *s = &c->src;
  cllm_status_t rc;
  const cllm_monitor_t *m = s->monitor != NULL ? s->monitor : cllm_monitor_global();
  c->mon.struct_size = sizeof c->mon;
  if ((rc = cllm_monitor_stats(m, &c->mon)) != CLLM_OK) return rc;
  for (size_t i = 0; i < s->n_kv_caches; i++) {
    c->kv[i].struct_size = sizeof c->kv[i];
    if ((rc = cllm_kv_stats(s->kv_caches[i].cache, &c->kv[i])) != CLLM_OK) return rc;
  }
  for (size_t i = 0; i < s->n_arenas; i++) {
    c->arena[i].struct_size = sizeof c->arena[i];
    if ((rc = cllm_arena_stats(s->arenas[i].arena, &c->arena[i])) != CLLM_OK) return rc;
  }
  for (size_t i = 0; i < s->n_weights; i++) {
    c->weights[i].struct_size = sizeof c->weights[i];
    if ((rc = cllm_weights_stats(s->weights[i].weights, &c->weights[i])) != CLLM_OK) return rc;
  }
  for (size_t i = 0; i < s->n_heaps; i++) {
    c->heaps[i].struct_size = sizeof c->heaps[i];
    if ((rc = cllm_heaps_stats(s->heaps[i].heaps, &c->heaps[i])) != CLLM_OK) return rc;
  }
  return CLLM_OK;
}

/* Validate the sources (NULL: the defaults) and collect every figure into *c. */
static cllm_status_t begin(const cllm_stats_sources_t *src, cllm_stats_write_fn fn,
                           collected_t *c) {
  memset(c, 0, sizeof *c);
  c->src = cllm_stats_sources_default();
  if (fn == NULL || cllm__config_in(&c->src, sizeof c->src, src) != CLLM_OK) return CLLM_EINVAL;
  const cllm_stats_sources_t *s = &c->src;
  cllm_status_t rc = validate_counts(s);
  if (rc != CLLM_OK) return rc;
  /* One block: the counts are bounded by CLLM_STATS_MAX_SOURCES, so no overflow.
   * Stats structs first (their alignment), then the name arrays, then the flags. */
  size_t nk = s->n_kv_caches, na = s->n_arenas, nw = s->n_weights, nh = s->n_heaps;
  size_t kvb = nk * sizeof(cllm_kv_stats_t);
  size_t arb = na * sizeof(cllm_arena_stats_t);
  size_t wb = nw * sizeof(cllm_weights_stats_t);
  size_t hb = nh * sizeof(cllm_heaps_stats_t);
  size_t namesb = (nk + na + nw + nh) * sizeof(const char *);
  size_t maxn = nk > na ? nk : na;
  if (nw > maxn) maxn = nw;
  if (nh > maxn) maxn = nh;
  size_t total = kvb + arb + wb + hb + namesb + maxn * sizeof(bool);
  if (total > 0) {
    if (CLLM_FAULT(CLLM_FAULT_MALLOC)) return CLLM_ENOMEM;
    c->block = calloc(1, total);
    if (c->block == NULL) return CLLM_ENOMEM;
    char *p = c->block;
    c->kv = (cllm_kv_stats_t *)p;
    p += kvb;
    c->arena = (cllm_arena_stats_t *)p;
    p += arb;
    c->weights = (cllm_weights_stats_t *)p;
    p += wb;
    c->heaps = (cllm_heaps_stats_t *)p;
    p += hb;
    c->kv_names = (const char **)p;
    c->arena_names = c->kv_names + nk;
    c->weights_names = c->arena_names + na;
    c->heaps_names = c->weights_names + nw;
    rc = gather_names(s, c, (bool *)(c->heaps_names + nh));
  }
  if (rc == CLLM_OK) rc = collect_stats(c);
  if (rc != CLLM_OK) {
    free(c->block);
    c->block = NULL;
  }
  return rc;
}

static cllm_status_t finish(out_t *o, collected_t *c) {
  out_flush(o);
  free(c->block);
  return o->failed ? CLLM_EIO : CLLM_OK;
}

static void out_init(out_t *o, cllm_stats_write_fn fn, void *user) {
  o->fn = fn;
  o->user = user;
  o->len = 0;
  o->failed = false;
}

/* ---- JSON --------------------------------------------------------------------------- */

static void json_key(out_t *o, const char *k) {
  out_json_str(o, k);
  out_write(o, ":", 1);
}

/* "key":value for every field, each preceded by a comma unless it is the first of
 * the object (first). */
static void json_fields(out_t *o, const field_t *t, size_t n, const void *st, bool first) {
  for (size_t i = 0; i < n; i++) {
    if (!first || i > 0) out_write(o, ",", 1);
    json_key(o, t[i].json);
    out_field(o, &t[i], st, true);
  }
}

static void json_labels(out_t *o, const label_t *l, size_t n, const void *st) {
  for (size_t i = 0; i < n; i++) {
    out_write(o, ",", 1);
    json_key(o, l[i].key);
    out_json_str(o, label_value(&l[i], st));
  }
}

static void json_monitor(out_t *o, const cllm_monitor_stats_t *m) {
  json_key(o, "monitor");
  out_write(o, "{", 1);
  json_fields(o, monitor_total_fields, NFIELDS(monitor_total_fields), m, true);
  out_write(o, ",", 1);
  json_key(o, "categories");
  out_write(o, "{", 1);
  for (int c = 0; c < CLLM_CAT_COUNT; c++) {
    if (c > 0) out_write(o, ",", 1);
    json_key(o, cllm_category_name((cllm_category_t)c));
    out_write(o, "{", 1);
    json_fields(o, monitor_cat_fields, NFIELDS(monitor_cat_fields), &m->cat[c], true);
    out_write(o, "}", 1);
  }
  out_write(o, "}", 1);
  json_fields(o, monitor_counter_fields, NFIELDS(monitor_counter_fields), m, false);
  out_write(o, "}", 1);
}

static void json_name_open(out_t *o, size_t i, const char *name) {
  if (i > 0) out_write(o, ",", 1);
  out_write(o, "{", 1);
  json_key(o, "name");
  out_json_str(o, name);
}

/* The copies of pages_per_node that count (pages_nodes, clamped). */
static int weights_page_nodes(const cllm_weights_stats_t *w) {
  int n = w->pages_nodes < 0 ? 0 : w->pages_nodes;
  return n > CLLM_WEIGHTS_MAX_NODES ? CLLM_WEIGHTS_MAX_NODES : n;
}

static void json_weights_extra(out_t *o, const void *st) {
  const cllm_weights_stats_t *w = st;
  json_labels(o, weights_labels, NFIELDS(weights_labels), w);
  out_write(o, ",", 1);
  json_key(o, "pages_per_node");
  out_write(o, "[", 1);
  for (int i = 0; i < weights_page_nodes(w); i++) {
    if (i > 0) out_write(o, ",", 1);
    out_u64(o, w->pages_per_node[i]);
  }
  out_write(o, "]", 1);
}

/* "key":[{"name":..., fields..., extra...}, ...] over n stats structs `stride`
 * bytes apart, followed by a comma. */
static void json_list(out_t *o, const char *key, const char *const *names, size_t n,
                      const field_t *f, size_t nf, const void *stats, size_t stride,
                      void (*extra)(out_t *, const void *)) {
  json_key(o, key);
  out_write(o, "[", 1);
  for (size_t i = 0; i < n; i++) {
    const void *st = (const char *)stats + i * stride;
    json_name_open(o, i, names[i]);
    json_fields(o, f, nf, st, false);
    if (extra != NULL) extra(o, st);
    out_write(o, "}", 1);
  }
  out_write(o, "],", 2);
}

static int heap_nodes(const cllm_heaps_stats_t *h) {
  int n = h->nodes < 1 ? 1 : h->nodes; /* PLAIN mode reports under node[0] */
  return n > CLLM_HEAP_MAX_NODES ? CLLM_HEAP_MAX_NODES : n;
}

CLLM_API cllm_status_t cllm_stats_write_json(const cllm_stats_sources_t *src,
                                             cllm_stats_write_fn fn, void *user) {
  collected_t c;
  cllm_status_t rc = begin(src, fn, &c);
  if (rc != CLLM_OK) return rc;
  const cllm_stats_sources_t *s = &c.src;
  out_t o;
  out_init(&o, fn, user);

  out_write(&o, "{", 1);
  json_key(&o, "version");
  out_json_str(&o, cllm_version_string());
  out_write(&o, ",", 1);
  json_monitor(&o, &c.mon);

  out_write(&o, ",", 1);
  json_list(&o, "kv_caches", c.kv_names, s->n_kv_caches, kv_fields, NFIELDS(kv_fields), c.kv,
            sizeof *c.kv, NULL);
  json_list(&o, "arenas", c.arena_names, s->n_arenas, arena_fields, NFIELDS(arena_fields),
            c.arena, sizeof *c.arena, NULL);
  json_list(&o, "weights", c.weights_names, s->n_weights, weights_fields,
            NFIELDS(weights_fields), c.weights, sizeof *c.weights, json_weights_extra);

  json_key(&o, "heaps");
  out_write(&o, "[", 1);
  for (size_t i = 0; i < s->n_heaps; i++) {
    const cllm_heaps_stats_t *h = &c.heaps[i];
    json_name_open(&o, i, c.heaps_names[i]);
    json_labels(&o, heaps_labels, NFIELDS(heaps_labels), h);
    json_fields(&o, heaps_fields, NFIELDS(heaps_fields), h, false);
    out_write(&o, ",", 1);
    json_key(&o, "node");
    out_write(&o, "[", 1);
    for (int n = 0; n < heap_nodes(h); n++) {
      if (n > 0) out_write(&o, ",", 1);
      out_write(&o, "{", 1);
      json_key(&o, "node");
      out_i64(&o, h->node[n].node);
      json_fields(&o, heap_node_fields, NFIELDS(heap_node_fields), &h->node[n], false);
      out_write(&o, "}", 1);
    }
    out_write(&o, "]}", 2);
  }
  out_write(&o, "]}\n", 3);
  return finish(&o, &c);
}

/* ---- Prometheus ---------------------------------------------------------------------- */

static void prom_family(out_t *o, const char *name, const char *help, bool counter) {
  out_str(o, "# HELP ");
  out_str(o, name);
  out_write(o, " ", 1);
  out_str(o, help); /* help texts are ours: no backslash or newline */
  out_str(o, "\n# TYPE ");
  out_str(o, name);
  out_str(o, counter ? " counter\n" : " gauge\n");
}

static void prom_label(out_t *o, const char *key, const char *value) {
  out_str(o, key);
  out_str(o, "=\"");
  out_label_value(o, value);
  out_write(o, "\"", 1);
}

/* name{l1="v1"[,l2="v2"]} */
static void prom_sample_start(out_t *o, const char *name, const char *l1, const char *v1,
                              const char *l2, const char *v2) {
  out_str(o, name);
  if (l1 != NULL) {
    out_write(o, "{", 1);
    prom_label(o, l1, v1);
    if (l2 != NULL) {
      out_write(o, ",", 1);
      prom_label(o, l2, v2);
    }
    out_write(o, "}", 1);
  }
  out_write(o, " ", 1);
}

/* One family per table field, one sample per source (label `label` = its name; with
 * label NULL, one sample without labels). */
static void prom_table(out_t *o, const char *prefix, const char *label, const field_t *t,
                       size_t nf, const void *stats, size_t stride, const char *const *names,
                       size_t n) {
  char name[128];
  for (size_t f = 0; f < nf; f++) {
    snprintf(name, sizeof name, "%s_%s", prefix, t[f].prom);
    prom_family(o, name, t[f].help, t[f].counter);
    for (size_t i = 0; i < n; i++) {
      prom_sample_start(o, name, label, label != NULL ? names[i] : NULL, NULL, NULL);
      out_field(o, &t[f], (const char *)stats + i * stride, false);
      out_write(o, "\n", 1);
    }
  }
}

static void prom_monitor(out_t *o, const cllm_monitor_stats_t *m) {
  const char *cats[CLLM_CAT_COUNT];
  for (int c = 0; c < CLLM_CAT_COUNT; c++) cats[c] = cllm_category_name((cllm_category_t)c);
  prom_table(o, "cllm_memory", "category", monitor_cat_fields, NFIELDS(monitor_cat_fields),
             m->cat, sizeof m->cat[0], cats, CLLM_CAT_COUNT);
  prom_table(o, "cllm_memory", NULL, monitor_total_fields, NFIELDS(monitor_total_fields), m,
             sizeof *m, NULL, 1);
  prom_table(o, "cllm_memory", NULL, monitor_counter_fields, NFIELDS(monitor_counter_fields), m,
             sizeof *m, NULL, 1);
}

/* family{label="name",key="value",...} 1 for each source: its enum and status figures. */
static void prom_info(out_t *o, const char *family, const char *help, const char *label,
                      const char *const *names, const label_t *l, size_t nl, const void *stats,
                      size_t stride, size_t n) {
  prom_family(o, family, help, false);
  for (size_t i = 0; i < n; i++) {
    const void *st = (const char *)stats + i * stride;
    out_str(o, family);
    out_write(o, "{", 1);
    prom_label(o, label, names[i]);
    for (size_t k = 0; k < nl; k++) {
      out_write(o, ",", 1);
      prom_label(o, l[k].key, label_value(&l[k], st));
    }
    out_str(o, "} 1\n");
  }
}

static void prom_weights_extra(out_t *o, const collected_t *c) {
  prom_info(o, "cllm_weights_info",
            "Placement, huge-page and lock settings requested and applied (value 1).", "weights",
            c->weights_names, weights_labels, NFIELDS(weights_labels), c->weights,
            sizeof *c->weights, c->src.n_weights);
  prom_family(o, "cllm_weights_pages", "Base pages of the region per OS NUMA node.", false);
  for (size_t i = 0; i < c->src.n_weights; i++) {
    const cllm_weights_stats_t *w = &c->weights[i];
    for (int nd = 0; nd < weights_page_nodes(w); nd++) {
      char node[16];
      snprintf(node, sizeof node, "%d", nd);
      prom_sample_start(o, "cllm_weights_pages", "weights", c->weights_names[i], "node", node);
      out_u64(o, w->pages_per_node[nd]);
      out_write(o, "\n", 1);
    }
  }
}

static void prom_heaps_extra(out_t *o, const collected_t *c) {
  prom_info(o, "cllm_heaps_info", "Mode of the NUMA heaps (value 1).", "heaps", c->heaps_names,
            heaps_labels, NFIELDS(heaps_labels), c->heaps, sizeof *c->heaps, c->src.n_heaps);
  char name[128];
  for (size_t f = 0; f < NFIELDS(heap_node_fields); f++) {
    const field_t *t = &heap_node_fields[f];
    snprintf(name, sizeof name, "cllm_heaps_%s", t->prom);
    prom_family(o, name, t->help, t->counter);
    for (size_t i = 0; i < c->src.n_heaps; i++) {
      const cllm_heaps_stats_t *h = &c->heaps[i];
      for (int n = 0; n < heap_nodes(h); n++) {
        char node[16];
        snprintf(node, sizeof node, "%d", h->node[n].node);
        prom_sample_start(o, name, "heaps", c->heaps_names[i], "node", node);
        out_field(o, t, &h->node[n], false);
        out_write(o, "\n", 1);
      }
    }
  }
}

CLLM_API cllm_status_t cllm_stats_write_prometheus(const cllm_stats_sources_t *src,
                                                   cllm_stats_write_fn fn, void *user) {
  collected_t c;
  cllm_status_t rc = begin(src, fn, &c);
  if (rc != CLLM_OK) return rc;
  const cllm_stats_sources_t *s = &c.src;
  out_t o;
  out_init(&o, fn, user);

  prom_family(&o, "cllm_info", "cllm-mem library version (value 1).", false);
  prom_sample_start(&o, "cllm_info", "version", cllm_version_string(), NULL, NULL);
  out_str(&o, "1\n");
  prom_monitor(&o, &c.mon);
  if (s->n_kv_caches > 0) {
    prom_table(&o, "cllm_kv", "cache", kv_fields, NFIELDS(kv_fields), c.kv, sizeof *c.kv,
               c.kv_names, s->n_kv_caches);
  }
  if (s->n_arenas > 0) {
    prom_table(&o, "cllm_arena", "arena", arena_fields, NFIELDS(arena_fields), c.arena,
               sizeof *c.arena, c.arena_names, s->n_arenas);
  }
  if (s->n_weights > 0) {
    prom_table(&o, "cllm_weights", "weights", weights_fields, NFIELDS(weights_fields),
               c.weights, sizeof *c.weights, c.weights_names, s->n_weights);
    prom_weights_extra(&o, &c);
  }
  if (s->n_heaps > 0) {
    prom_table(&o, "cllm_heaps", "heaps", heaps_fields, NFIELDS(heaps_fields), c.heaps,
               sizeof *c.heaps, c.heaps_names, s->n_heaps);
    prom_heaps_extra(&o, &c);
  }
  return finish(&o, &c);
}

/* ---- helpers ---------------------------------------------------------------------------- */

CLLM_API size_t cllm_stats_fwrite(void *user, const char *buf, size_t n) {
  if (user == NULL || buf == NULL) return 0;
  return fwrite(buf, 1, n, (FILE *)user);
}

CLLM_API cllm_stats_sources_t cllm_stats_sources_default(void) {
  cllm_stats_sources_t s;
  memset(&s, 0, sizeof s);
  s.struct_size = sizeof s;
  return s;
}
