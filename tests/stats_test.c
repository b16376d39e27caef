/* Criterion suite for the stats writers (lib/stats_write.c): JSON and Prometheus
 * text format validity, every field present, escaping, bad input, short writes,
 * fault injection. The JSON checker and the exposition-format checker below are
 * small strict parsers written for this test. */
#include <criterion/criterion.h>
#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cllm/stats.h>

#include "lib/internal/fault.h"

/* ---- a growable sink ---------------------------------------------------------- */

typedef struct sink {
  char *buf;
  size_t len, cap;
  size_t calls;
  size_t fail_after; /* consume at most this many bytes in total (SIZE_MAX: no limit) */
} sink_t;

static size_t sink_fn(void *user, const char *b, size_t n) {
  sink_t *s = user;
  s->calls++;
  cr_assert(n >= 1);
  size_t take = n;
  if (s->fail_after != SIZE_MAX) {
    size_t left = s->fail_after > s->len ? s->fail_after - s->len : 0;
    if (take > left) take = left;
  }
  if (s->len + take + 1 > s->cap) {
    s->cap = (s->len + take + 1) * 2;
    s->buf = realloc(s->buf, s->cap);
    cr_assert_not_null(s->buf);
  }
  memcpy(s->buf + s->len, b, take);
  s->len += take;
  s->buf[s->len] = '\0';
  return take;
}

static sink_t sink_new(void) {
  sink_t s = {NULL, 0, 0, 0, SIZE_MAX};
  return s;
}

/* ---- a strict JSON validator (RFC 8259 grammar) ----------------------------------- */

typedef struct jp { const char *p; int depth; } jp_t;

static void jws(jp_t *j) { while (*j->p == ' ' || *j->p == '\n' || *j->p == '\t' || *j->p == '\r') j->p++; }
static bool jvalue(jp_t *j);

static bool jstring(jp_t *j) {
  if (*j->p != '"') return false;
  j->p++;
  while (*j->p != '"') {
    unsigned char c = (unsigned char)*j->p;
    if (c == '\0' || c < 0x20) return false;
    if (c == '\\') {
      j->p++;
      if (*j->p == 'u') {
        for (int i = 1; i <= 4; i++) if (!isxdigit((unsigned char)j->p[i])) return false;
        j->p += 5;
        continue;
      }
      if (!strchr("\"\\/bfnrt", *j->p) || *j->p == '\0') return false;
    }
    j->p++;
  }
  j->p++;
  return true;
}

static bool jnumber(jp_t *j) {
  const char *s = j->p;
  if (*j->p == '-') j->p++;
  if (*j->p == '0') j->p++;
  else if (isdigit((unsigned char)*j->p)) while (isdigit((unsigned char)*j->p)) j->p++;
  else return false;
  if (*j->p == '.') { j->p++; if (!isdigit((unsigned char)*j->p)) return false; while (isdigit((unsigned char)*j->p)) j->p++; }
  if (*j->p == 'e' || *j->p == 'E') {
    j->p++;
    if (*j->p == '+' || *j->p == '-') j->p++;
    if (!isdigit((unsigned char)*j->p)) return false;
    while (isdigit((unsigned char)*j->p)) j->p++;
  }
  return j->p > s;
}

static bool jvalue(jp_t *j) {
  if (++j->depth > 64) return false;
  jws(j);
  bool ok;
  if (*j->p == '{') {
    j->p++; jws(j);
    ok = true;
    if (*j->p == '}') { j->p++; }
    else for (;;) {
      jws(j);
      if (!jstring(j)) { ok = false; break; }
      jws(j);
      if (*j->p != ':') { ok = false; break; }
      j->p++;
      if (!jvalue(j)) { ok = false; break; }
      jws(j);
      if (*j->p == ',') { j->p++; continue; }
      if (*j->p == '}') { j->p++; break; }
      ok = false; break;
    }
  } else if (*j->p == '[') {
    j->p++; jws(j);
    ok = true;
    if (*j->p == ']') { j->p++; }
    else for (;;) {
      if (!jvalue(j)) { ok = false; break; }
      jws(j);
      if (*j->p == ',') { j->p++; continue; }
      if (*j->p == ']') { j->p++; break; }
      ok = false; break;
    }
  } else if (*j->p == '"') ok = jstring(j);
  else if (!strncmp(j->p, "true", 4)) { j->p += 4; ok = true; }
  else if (!strncmp(j->p, "false", 5)) { j->p += 5; ok = true; }
  else if (!strncmp(j->p, "null", 4)) { j->p += 4; ok = true; }
  else ok = jnumber(j);
  j->depth--;
  return ok;
}

static bool json_valid(const char *s) {
  jp_t j = {s, 0};
  if (!jvalue(&j)) return false;
  jws(&j);
  return *j.p == '\0';
}

/* ---- a Prometheus text-format checker ------------------------------------------------ */

typedef struct fam { char name[128]; bool help, type, counter; int samples; } fam_t;

static fam_t *fam_find(fam_t *f, int n, const char *name) {
  for (int i = 0; i < n; i++) if (!strcmp(f[i].name, name)) return &f[i];
  return NULL;
}

static bool metric_name_ok(const char *s, size_t n) {
  if (n == 0 || !(isalpha((unsigned char)s[0]) || s[0] == '_' || s[0] == ':')) return false;
  for (size_t i = 1; i < n; i++)
    if (!(isalnum((unsigned char)s[i]) || s[i] == '_' || s[i] == ':')) return false;
  return true;
}

/* Returns the number of families, fails the test on any violation. */
static int prom_check(const char *text, fam_t *fams, int max) {
  int nf = 0;
  const char *current = NULL; /* family whose samples may follow */
  const char *p = text;
  cr_assert(strlen(text) > 0 && text[strlen(text) - 1] == '\n', "must end with a newline");
  while (*p) {
    const char *e = strchr(p, '\n');
    cr_assert_not_null(e);
    size_t len = (size_t)(e - p);
    char line[1024];
    cr_assert(len < sizeof line, "line too long");
    memcpy(line, p, len);
    line[len] = '\0';
    p = e + 1;
    if (!strncmp(line, "# HELP ", 7) || !strncmp(line, "# TYPE ", 7)) {
      char *name = line + 7;
      char *sp = strchr(name, ' ');
      cr_assert_not_null(sp, "bad comment: %s", line);
      *sp = '\0';
      cr_assert(metric_name_ok(name, strlen(name)), "bad name %s", name);
      fam_t *f = fam_find(fams, nf, name);
      if (f == NULL) {
        cr_assert(nf < max);
        f = &fams[nf++];
        memset(f, 0, sizeof *f);
        snprintf(f->name, sizeof f->name, "%s", name);
      }
      cr_assert_eq(f->samples, 0, "HELP/TYPE after samples of %s", name);
      if (line[2] == 'H') {
        cr_assert(!f->help, "two HELP lines for %s", name);
        cr_assert(strlen(sp + 1) > 0, "empty help for %s", name);
        f->help = true;
      } else {
        cr_assert(!f->type, "two TYPE lines for %s", name);
        cr_assert(!strcmp(sp + 1, "counter") || !strcmp(sp + 1, "gauge"), "type %s", sp + 1);
        f->type = true;
        f->counter = !strcmp(sp + 1, "counter");
        if (f->counter) {
          size_t n = strlen(name);
          cr_assert(n > 6 && !strcmp(name + n - 6, "_total"), "counter %s must end in _total", name);
        }
      }
      current = f->name;
      continue;
    }
    cr_assert(line[0] != '#' && line[0] != '\0', "unexpected line: '%s'", line);
    /* sample: name[{l="v",...}] value */
    size_t nl = strcspn(line, "{ ");
    cr_assert(metric_name_ok(line, nl), "bad sample name: %s", line);
    char name[128];
    memcpy(name, line, nl);
    name[nl] = '\0';
    fam_t *f = fam_find(fams, nf, name);
    cr_assert_not_null(f, "sample without HELP/TYPE: %s", line);
    cr_assert(f->help && f->type, "family %s lacks HELP or TYPE", name);
    cr_assert(current != NULL && !strcmp(current, name), "samples of %s not grouped", name);
    f->samples++;
    const char *q = line + nl;
    if (*q == '{') {
      q++;
      while (*q != '}') {
        size_t ln = strcspn(q, "=");
        cr_assert(metric_name_ok(q, ln) && q[ln] == '=' && q[ln + 1] == '"', "bad label: %s", line);
        q += ln + 2;
        while (*q != '"') {
          cr_assert(*q != '\0', "unterminated label value: %s", line);
          if (*q == '\\') {
            cr_assert(q[1] == '\\' || q[1] == '"' || q[1] == 'n', "bad escape: %s", line);
            q++;
          }
          q++;
        }
        q++;
        if (*q == ',') q++;
        else cr_assert_eq(*q, '}', "bad label list: %s", line);
      }
      q++;
    }
    cr_assert_eq(*q, ' ', "no space before value: %s", line);
    q++;
    char *end;
    (void)strtod(q, &end);
    cr_assert(end != q && *end == '\0', "bad value: %s", line);
  }
  return nf;
}

/* ---- fixtures --------------------------------------------------------------------------- */

typedef struct world {
  cllm_monitor_t *mon;
  cllm_kv_cache_t *kv;
  cllm_arena_t *arena;
  cllm_weights_t *weights;
  cllm_heaps_t *heaps;
  cllm_stats_kv_source_t kvs[1];
  cllm_stats_arena_source_t ars[1];
  cllm_stats_weights_source_t ws[1];
  cllm_stats_heaps_source_t hs[1];
  cllm_stats_sources_t src;
} world_t;

static void world_init(world_t *w) {
  memset(w, 0, sizeof *w);
  cllm_monitor_config_t mc = cllm_monitor_config_default();
  mc.limit_bytes = 1ull << 30;
  cr_assert_eq(cllm_monitor_create(&mc, &w->mon), CLLM_OK);

  cllm_kv_config_t kc = cllm_kv_config_default();
  kc.layers = 2;
  kc.kv_heads = 2;
  kc.head_dim = 16;
  kc.dtype_bytes = 2;
  kc.capacity_blocks = 32;
  kc.monitor = w->mon;
  cr_assert_eq(cllm_kv_cache_create(&kc, &w->kv), CLLM_OK);
  cllm_kv_token_t toks[40];
  for (int i = 0; i < 40; i++) toks[i] = i;
  cllm_kv_seq_t seq;
  size_t cached = 0;
  cr_assert_eq(cllm_kv_seq_open_with_prompt(w->kv, "a", NULL, toks, 40, &seq, &cached), CLLM_OK);
  cr_assert_eq(cllm_kv_seq_reserve(w->kv, seq, 40, NULL), CLLM_OK);
  cr_assert_eq(cllm_kv_seq_commit(w->kv, seq, toks, 40), CLLM_OK);

  cllm_arena_config_t ac = cllm_arena_config_default();
  ac.monitor = w->mon;
  cr_assert_eq(cllm_arena_create(&ac, &w->arena), CLLM_OK);
  cr_assert_not_null(cllm_arena_alloc(w->arena, 1000));

  cllm_weights_config_t wc = cllm_weights_config_default();
  wc.capacity_bytes = 4 << 20;
  wc.monitor = w->mon;
  cr_assert_eq(cllm_weights_create(&wc, &w->weights), CLLM_OK);
  void *wp; /* a page written, so the region has pages to report */
  cr_assert_eq(cllm_weights_alloc(w->weights, 1000, 0, &wp), CLLM_OK);

  cllm_heaps_config_t hc = cllm_heaps_config_default();
  hc.bytes_per_node = 64 << 20;
  hc.monitor = w->mon;
  cr_assert_eq(cllm_heaps_create(&hc, &w->heaps), CLLM_OK);
  void *p = cllm_heap_alloc(w->heaps, 100);
  cr_assert_not_null(p);
  cllm_heap_free(w->heaps, p);

  w->kvs[0] = (cllm_stats_kv_source_t){"main \"kv\"\\\n", w->kv};
  w->ars[0] = (cllm_stats_arena_source_t){"worker0", w->arena};
  w->ws[0] = (cllm_stats_weights_source_t){"model", w->weights};
  w->hs[0] = (cllm_stats_heaps_source_t){"heaps", w->heaps};
  w->src = cllm_stats_sources_default();
  w->src.monitor = w->mon;
  w->src.kv_caches = w->kvs;
  w->src.n_kv_caches = 1;
  w->src.arenas = w->ars;
  w->src.n_arenas = 1;
  w->src.weights = w->ws;
  w->src.n_weights = 1;
  w->src.heaps = w->hs;
  w->src.n_heaps = 1;
}

static void world_fini(world_t *w) {
  cllm_heaps_destroy(w->heaps);
  cllm_weights_destroy(w->weights);
  cllm_arena_destroy(w->arena);
  cllm_kv_cache_destroy(w->kv);
  cllm_monitor_destroy(w->mon);
}

static void expect_key(const char *json, const char *key) {
  char pat[160];
  snprintf(pat, sizeof pat, "\"%s\":", key);
  cr_assert_not_null(strstr(json, pat), "JSON lacks key %s", key);
}

/* ---- JSON ------------------------------------------------------------------------------ */

Test(stats_json, valid_and_every_field_present) {
  world_t w;
  world_init(&w);
  sink_t s = sink_new();
  cr_assert_eq(cllm_stats_write_json(&w.src, sink_fn, &s), CLLM_OK);
  cr_assert(json_valid(s.buf), "invalid JSON: %s", s.buf);
  const char *keys[] = {
      "version", "monitor", "used_bytes", "peak_bytes", "limit_bytes", "categories", "weights",
      "kv", "step", "heap", "refusals", "reclaim_runs", "reclaimed_bytes", "bad_releases",
      "batch_credit_bytes", "try_refusals", "kv_caches", "arenas", "heaps", "name",
      /* kv */
      "num_blocks", "block_bytes", "block_tokens", "blocks_free", "blocks_active",
      "blocks_cached", "blocks_pinned", "blocks_committed", "tokens_stored", "utilisation",
      "kv_bytes", "charged_bytes", "resident_bytes", "blocks_given_back", "given_back_blocks",
      "sequences", "copy_entries", "copy_used_bytes", "prefix_query_tokens",
      "prefix_hit_tokens", "evictions", "copy_evictions", "preemptions", "cow_copies", "refused",
      "reclaimed_blocks",
      /* arena */
      "bytes_in_use", "step_high_water_bytes", "last_step_high_water_bytes", "high_water_bytes",
      "capacity_bytes", "chunks", "largest_chunk_bytes", "reserve_floor_bytes", "resets",
      "spilled_steps", "coalesces", "shrinks", "einval", "allocator_calls", "monitor_calls",
      "heap_backed", "cursor_out", "cursors",
      /* weights */
      "committed_bytes", "locked_bytes", "lock_requested", "lock_errno", "memlock_limit_bytes",
      "huge_requested", "huge_applied", "huge_errno", "huge_bytes", "numa_requested",
      "numa_applied", "numa_nodes_mask", "numa_status", "pages_nodes", "pages_per_node",
      "pages_absent", "pages_other", "page_bytes", "readback_status", "sealed", "loads",
      "loaded_bytes", "load_failures", "last_load_errno",
      /* heaps */
      "mode", "nodes", "threads", "foreign_frees", "region_align_bytes", "kept_blocks", "node", "region_bytes",
      "huge_page_bytes", "allocations", "frees", "failures", "fallbacks", "bound", "os_node",
  };
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) expect_key(s.buf, keys[i]);
  /* values that must be what the components say */
  cr_assert_not_null(strstr(s.buf, "\"name\":\"main \\\"kv\\\"\\\\\\n\""), "escaped name: %s", s.buf);
  cr_assert_not_null(strstr(s.buf, "\"blocks_active\":3"), "%s", s.buf);
  cr_assert_not_null(strstr(s.buf, "\"limit_bytes\":1073741824"));
  cr_assert_not_null(strstr(s.buf, "\"heap_backed\":false"));
  free(s.buf);
  world_fini(&w);
}

Test(stats_json, monitor_only_and_fwrite) {
  cllm_stats_sources_t src = cllm_stats_sources_default(); /* the global monitor */
  cr_assert_eq(cllm_monitor_reserve(cllm_monitor_global(), CLLM_CAT_KV, 12345), CLLM_OK);
  char *mem = NULL;
  size_t memlen = 0;
  FILE *f = open_memstream(&mem, &memlen);
  cr_assert_not_null(f);
  cr_assert_eq(cllm_stats_write_json(&src, cllm_stats_fwrite, f), CLLM_OK);
  fclose(f);
  cr_assert(json_valid(mem), "%s", mem);
  cr_assert_not_null(strstr(mem, "\"kv\":{\"used_bytes\":12345,"), "%s", mem);
  cr_assert_not_null(strstr(mem, "\"kv_caches\":[]"));
  free(mem);
  cr_assert_eq(cllm_stats_fwrite(NULL, "x", 1), 0);
}

/* ---- Prometheus ------------------------------------------------------------------------- */

Test(stats_prometheus, valid_and_every_family_present) {
  world_t w;
  world_init(&w);
  sink_t s = sink_new();
  cr_assert_eq(cllm_stats_write_prometheus(&w.src, sink_fn, &s), CLLM_OK);
  fam_t fams[256];
  int nf = prom_check(s.buf, fams, 256);
  const char *must[] = {
      "cllm_info", "cllm_memory_used_bytes", "cllm_memory_peak_bytes", "cllm_memory_limit_bytes",
      "cllm_memory_total_used_bytes", "cllm_memory_total_peak_bytes",
      "cllm_memory_total_limit_bytes", "cllm_memory_refusals_total",
      "cllm_memory_reclaim_runs_total", "cllm_memory_reclaimed_bytes_total",
      "cllm_memory_bad_releases_total", "cllm_memory_batch_credit_bytes",
      "cllm_memory_try_refusals_total", "cllm_kv_charged_bytes", "cllm_kv_resident_bytes",
      "cllm_kv_capacity_blocks", "cllm_kv_block_bytes", "cllm_kv_blocks_free",
      "cllm_kv_blocks_active", "cllm_kv_blocks_cached", "cllm_kv_blocks_pinned",
      "cllm_kv_blocks_committed", "cllm_kv_tokens_stored", "cllm_kv_utilisation_ratio",
      "cllm_kv_used_bytes", "cllm_kv_sequences", "cllm_kv_copy_entries",
      "cllm_kv_copy_used_bytes", "cllm_kv_prefix_query_tokens_total",
      "cllm_kv_prefix_hit_tokens_total", "cllm_kv_evictions_total",
      "cllm_kv_copy_evictions_total", "cllm_kv_preemptions_total", "cllm_kv_cow_copies_total",
      "cllm_kv_refused_total", "cllm_kv_reclaimed_blocks_total", "cllm_kv_block_tokens",
      "cllm_arena_in_use_bytes", "cllm_arena_high_water_bytes", "cllm_arena_capacity_bytes",
      "cllm_arena_resets_total", "cllm_arena_refused_total", "cllm_arena_chunks",
      "cllm_arena_step_high_water_bytes", "cllm_arena_last_step_high_water_bytes",
      "cllm_arena_heap_backed", "cllm_arena_monitor_calls_total",
      "cllm_arena_cursor_out", "cllm_arena_cursors_total",
      "cllm_weights_capacity_bytes", "cllm_weights_locked_bytes", "cllm_weights_huge_bytes",
      "cllm_weights_info", "cllm_weights_pages", "cllm_weights_sealed",
      "cllm_weights_loads_total", "cllm_heaps_info", "cllm_heaps_threads",
      "cllm_heaps_node_in_use_bytes", "cllm_heaps_node_allocations_total",
      "cllm_heaps_node_frees_total", "cllm_heaps_node_bound",
  };
  for (size_t i = 0; i < sizeof must / sizeof must[0]; i++) {
    fam_t *f = fam_find(fams, nf, must[i]);
    cr_assert_not_null(f, "family %s missing", must[i]);
    cr_assert(f->samples >= 1, "family %s has no sample", must[i]);
  }
  /* every category, labels escaped, values from the components */
  cr_assert_not_null(strstr(s.buf, "cllm_memory_used_bytes{category=\"weights\"} "));
  cr_assert_not_null(strstr(s.buf, "cllm_memory_limit_bytes{category=\"heap\"} 0\n"));
  cr_assert_not_null(strstr(s.buf, "cllm_memory_total_limit_bytes 1073741824\n"));
  cr_assert_not_null(strstr(s.buf, "cllm_kv_blocks_active{cache=\"main \\\"kv\\\"\\\\\\n\"} 3\n"),
                     "%s", s.buf);
  cr_assert_not_null(strstr(s.buf, "cllm_arena_chunks{arena=\"worker0\"} "));
  cr_assert_not_null(strstr(s.buf, "cllm_weights_pages{weights=\"model\",node=\"0\"} "));
  free(s.buf);
  world_fini(&w);
}

Test(stats_prometheus, monitor_only) {
  cllm_stats_sources_t src = cllm_stats_sources_default();
  sink_t s = sink_new();
  cr_assert_eq(cllm_stats_write_prometheus(&src, sink_fn, &s), CLLM_OK);
  fam_t fams[64];
  int nf = prom_check(s.buf, fams, 64);
  cr_assert_eq(nf, 13);
  cr_assert_null(strstr(s.buf, "cllm_kv_"));
  free(s.buf);
}

/* ---- bad input, short writes, faults ----------------------------------------------------- */

typedef cllm_status_t (*writer_t)(const cllm_stats_sources_t *, cllm_stats_write_fn, void *);
static const writer_t writers[2] = {cllm_stats_write_json, cllm_stats_write_prometheus};

Test(stats_bad, refused_with_nothing_written) {
  world_t w;
  world_init(&w);
  for (int k = 0; k < 2; k++) {
    sink_t s = sink_new();
    cr_assert_eq(writers[k](&w.src, NULL, &s), CLLM_EINVAL);
    cllm_stats_sources_t b = w.src;
    b.struct_size = 0;
    cr_assert_eq(writers[k](&b, sink_fn, &s), CLLM_EINVAL);
    b = w.src;
    b.kv_caches = NULL;
    cr_assert_eq(writers[k](&b, sink_fn, &s), CLLM_EINVAL);
    b = w.src;
    b.n_arenas = CLLM_STATS_MAX_SOURCES + 1;
    cr_assert_eq(writers[k](&b, sink_fn, &s), CLLM_EINVAL);
    b = w.src;
    b.n_arenas = SIZE_MAX;
    cr_assert_eq(writers[k](&b, sink_fn, &s), CLLM_EINVAL);
    cllm_stats_arena_source_t two[2] = {{"same", w.arena}, {"same", w.arena}};
    b = w.src;
    b.arenas = two;
    b.n_arenas = 2;
    cr_assert_eq(writers[k](&b, sink_fn, &s), CLLM_EEXIST);
    cllm_stats_kv_source_t noname[1] = {{"", w.kv}};
    b = w.src;
    b.kv_caches = noname;
    cr_assert_eq(writers[k](&b, sink_fn, &s), CLLM_EINVAL);
    noname[0].name = NULL;
    cr_assert_eq(writers[k](&b, sink_fn, &s), CLLM_EINVAL);
    cllm_stats_heaps_source_t noobj[1] = {{"h", NULL}};
    b = w.src;
    b.heaps = noobj;
    cr_assert_eq(writers[k](&b, sink_fn, &s), CLLM_EINVAL);
    cr_assert_eq(s.calls, 0, "nothing may be written on a refused call");
  }
  world_fini(&w);
}

/* The struct_size rule (lib/internal/versioned.h): NULL sources are the defaults, an
 * older (smaller) struct gets defaults for what it lacks, a newer one with a non-zero
 * tail is refused. */
Test(stats_bad, sources_versioned) {
  for (int k = 0; k < 2; k++) {
    cllm_stats_sources_t d = cllm_stats_sources_default();
    sink_t want = sink_new(), got = sink_new();
    cr_assert_eq(writers[k](&d, sink_fn, &want), CLLM_OK);
    cr_assert_eq(writers[k](NULL, sink_fn, &got), CLLM_OK);
    cr_assert_str_eq(got.buf, want.buf);
    free(got.buf);
    struct {
      cllm_stats_sources_t s;
      size_t tail;
    } big = {.s = cllm_stats_sources_default(), .tail = 0};
    big.s.struct_size = sizeof big;
    got = sink_new();
    cr_assert_eq(writers[k](&big.s, sink_fn, &got), CLLM_OK, "zero tail: accepted");
    cr_assert_str_eq(got.buf, want.buf);
    free(got.buf);
    big.tail = 1;
    got = sink_new();
    cr_assert_eq(writers[k](&big.s, sink_fn, &got), CLLM_EINVAL, "non-zero tail: refused");
    cr_assert_eq(got.calls, 0);
    /* an older struct: the monitor only (every later field defaulted: no components) */
    cllm_stats_sources_t old = cllm_stats_sources_default();
    old.struct_size = offsetof(cllm_stats_sources_t, kv_caches);
    old.n_kv_caches = 3; /* past struct_size: not read */
    got = sink_new();
    cr_assert_eq(writers[k](&old, sink_fn, &got), CLLM_OK);
    cr_assert_str_eq(got.buf, want.buf);
    free(got.buf);
    free(want.buf);
  }
}

Test(stats_bad, short_write_is_eio) {
  world_t w;
  world_init(&w);
  for (int k = 0; k < 2; k++) {
    sink_t full = sink_new();
    cr_assert_eq(writers[k](&w.src, sink_fn, &full), CLLM_OK);
    size_t limits[] = {0, 1, 100, full.len / 2, full.len - 1};
    for (size_t i = 0; i < sizeof limits / sizeof limits[0]; i++) {
      sink_t s = sink_new();
      s.fail_after = limits[i];
      cr_assert_eq(writers[k](&w.src, sink_fn, &s), CLLM_EIO, "limit %zu", limits[i]);
      cr_assert(s.len <= limits[i]);
      cr_assert(s.calls >= 1);
      /* what was written is a prefix of the full output */
      cr_assert(s.len == 0 || memcmp(s.buf, full.buf, s.len) == 0);
      free(s.buf);
    }
    /* A full write works afterwards: the writer kept no state. */
    sink_t s = sink_new();
    cr_assert_eq(writers[k](&w.src, sink_fn, &s), CLLM_OK);
    cr_assert_eq(s.len, full.len);
    free(s.buf);
    free(full.buf);
  }
  world_fini(&w);
}

Test(stats_bad, scratch_failure_is_enomem_and_writes_nothing) {
  world_t w;
  world_init(&w);
  for (int k = 0; k < 2; k++) {
    sink_t s = sink_new();
    cllm_fault_reset();
    cllm_fault_arm(CLLM_FAULT_MALLOC, 1);
    cllm_status_t rc = writers[k](&w.src, sink_fn, &s);
    cllm_fault_reset();
    cr_assert_eq(rc, CLLM_ENOMEM);
    cr_assert_eq(s.calls, 0);
  }
  world_fini(&w);
}

Test(stats_json, doubles_and_many_sources) {
  /* 100 arenas: names distinct, output still valid (exercises buffer flushing). */
  cllm_monitor_t *m = NULL;
  cr_assert_eq(cllm_monitor_create(NULL, &m), CLLM_OK);
  enum { N = 100 };
  cllm_arena_t *as[N];
  cllm_stats_arena_source_t src_a[N];
  char names[N][16];
  cllm_arena_config_t ac = cllm_arena_config_default();
  ac.monitor = m;
  for (int i = 0; i < N; i++) {
    cr_assert_eq(cllm_arena_create(&ac, &as[i]), CLLM_OK);
    snprintf(names[i], sizeof names[i], "a%d", i);
    src_a[i] = (cllm_stats_arena_source_t){names[i], as[i]};
  }
  cllm_stats_sources_t src = cllm_stats_sources_default();
  src.monitor = m;
  src.arenas = src_a;
  src.n_arenas = N;
  sink_t s = sink_new();
  cr_assert_eq(cllm_stats_write_json(&src, sink_fn, &s), CLLM_OK);
  cr_assert(json_valid(s.buf));
  cr_assert(s.calls >= 2, "a large report is flushed in pieces");
  cr_assert_not_null(strstr(s.buf, "\"name\":\"a99\""));
  free(s.buf);
  s = sink_new();
  cr_assert_eq(cllm_stats_write_prometheus(&src, sink_fn, &s), CLLM_OK);
  fam_t fams[64];
  int nf = prom_check(s.buf, fams, 64);
  fam_t *f = fam_find(fams, nf, "cllm_arena_resets_total");
  cr_assert_not_null(f);
  cr_assert_eq(f->samples, N);
  free(s.buf);
  for (int i = 0; i < N; i++) cllm_arena_destroy(as[i]);
  cllm_monitor_destroy(m);
}
