/* libFuzzer target: a small weights heap as an op sequence: alloc (edge sizes,
 * valid and invalid alignments), load of file ranges (inside, straddling and past
 * the end, through a path and an fd), seal, and calls after seal. The model is the
 * bump offset: a failed call must leave `used` and the data of earlier loads as
 * they were; loaded bytes must equal the file's. cllm_weights_check() after every op. */
#include <fcntl.h>
#include <stdbool.h>
#include <unistd.h>

#include <cllm/weights.h>

#include "fuzz_input.h"

#define FILE_BYTES (256u << 10)

static char g_path[64];
static int g_fd = -1;
static unsigned char g_file[FILE_BYTES];

static void make_file(void) {
  snprintf(g_path, sizeof g_path, "/tmp/cllm-weights-fuzz-%d.bin", (int)getpid());
  for (size_t i = 0; i < FILE_BYTES; i++) g_file[i] = (unsigned char)(i * 31 + (i >> 8));
  FILE *f = fopen(g_path, "wb");
  FUZZ_CHECK(f != NULL && fwrite(g_file, 1, FILE_BYTES, f) == FILE_BYTES, "temp file");
  fclose(f);
  g_fd = open(g_path, O_RDONLY);
  FUZZ_CHECK(g_fd >= 0, "open temp file");
}

typedef struct loaded {
  const unsigned char *p;
  size_t off, n;
} loaded_t;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_in_t in = {data, size};
  if (g_fd < 0) {
    cllm_set_log_fn(cllm_log_discard, NULL);
    make_file();
  }
  cllm_monitor_t *mon;
  FUZZ_CHECK(cllm_monitor_create(NULL, &mon) == CLLM_OK, "monitor");
  cllm_weights_config_t cfg = cllm_weights_config_default();
  cfg.capacity_bytes = ((size_t)1 + fuzz_u8(&in) % 16) << 16; /* 64 KiB .. 1 MiB */
  cfg.huge_pages = (cllm_weights_huge_t)(fuzz_u8(&in) % 3);
  cfg.numa = (cllm_weights_numa_t)(fuzz_u8(&in) % 4);
  cfg.lock = (cllm_weights_lock_t)(fuzz_u8(&in) % 2); /* off / best effort */
  cfg.reader_threads = fuzz_u8(&in) % 3;
  cfg.read_chunk_bytes = (size_t)4096 << (fuzz_u8(&in) % 6);
  cfg.monitor = mon;
  cllm_weights_t *w;
  cllm_status_t rc = cllm_weights_create(&cfg, &w);
  FUZZ_CHECK(rc == CLLM_OK, "create: %s", cllm_status_name(rc));
  loaded_t loads[64];
  int n_loads = 0;
  bool sealed = false;
  size_t used = 0; /* model of the bump offset: end of the last successful allocation */
  while (!fuzz_done(&in)) {
    uint8_t op = fuzz_u8(&in) % 6;
    void *p = (void *)1;
    switch (op) {
      case 0: case 1: { /* alloc */
        size_t n = fuzz_size(&in, 128 << 10);
        size_t align = op == 0 ? 0 : (fuzz_u8(&in) & 1 ? (size_t)1 << (fuzz_u8(&in) % 20) : fuzz_u32(&in));
        rc = cllm_weights_alloc(w, n, align, &p);
        if (rc == CLLM_OK) {
          size_t a = align ? align : 64;
          FUZZ_CHECK(!sealed && ((uintptr_t)p & (a - 1)) == 0, "alloc: sealed or misaligned");
          memset(p, 0xEE, n);
          used = (size_t)((uintptr_t)p - (uintptr_t)cllm_weights_base(w)) + n;
        } else {
          FUZZ_CHECK(p == NULL, "out not NULL on error");
          if (sealed) FUZZ_CHECK(rc == CLLM_ESTATE || rc == CLLM_EINVAL, "after seal: %s", cllm_status_name(rc));
          else FUZZ_CHECK(rc == CLLM_EINVAL || rc == CLLM_ENOMEM, "alloc: %s", cllm_status_name(rc));
        }
        break;
      }
      case 2: case 3: { /* load a range, by path or by fd */
        size_t off = fuzz_u32(&in) % (FILE_BYTES + 8192);
        size_t n = fuzz_size(&in, 96 << 10);
        rc = op == 2 ? cllm_weights_load_path(w, g_path, off, n, &p) : cllm_weights_load_fd(w, g_fd, off, n, &p);
        if (n == CLLM_WEIGHTS_TO_EOF) { /* the rest of the file; nothing left is ERANGE */
          if (off >= FILE_BYTES) {
            FUZZ_CHECK(rc == CLLM_ERANGE || (sealed && rc == CLLM_ESTATE), "to EOF from the end: %s",
                       cllm_status_name(rc));
            break;
          }
          n = FILE_BYTES - off;
        }
        if (rc == CLLM_OK) {
          FUZZ_CHECK(!sealed && off + n <= FILE_BYTES, "load succeeded out of range or sealed");
          FUZZ_CHECK(memcmp(p, g_file + off, n) == 0, "loaded bytes differ");
          if (n_loads < 64) loads[n_loads++] = (loaded_t){p, off, n};
          used = (size_t)((uintptr_t)p - (uintptr_t)cllm_weights_base(w)) + n;
        } else {
          FUZZ_CHECK(p == NULL, "out not NULL on error");
          if (sealed) FUZZ_CHECK(rc == CLLM_ESTATE || rc == CLLM_EINVAL, "load after seal: %s", cllm_status_name(rc));
          else if (n == 0) FUZZ_CHECK(rc == CLLM_EINVAL, "load 0: %s", cllm_status_name(rc));
          else if (off + n < off || off + n > (size_t)INT64_MAX)
            FUZZ_CHECK(rc == CLLM_EOVERFLOW, "overflow: %s", cllm_status_name(rc));
          else if (off + n > FILE_BYTES) FUZZ_CHECK(rc == CLLM_ERANGE || rc == CLLM_ENOMEM, "past end: %s", cllm_status_name(rc));
          else FUZZ_CHECK(rc == CLLM_ENOMEM, "load: %s", cllm_status_name(rc));
        }
        break;
      }
      case 4:
        FUZZ_CHECK(cllm_weights_seal(w) == CLLM_OK, "seal");
        sealed = true;
        break;
      case 5: { /* stats are consistent */
        cllm_weights_stats_t st = {.struct_size = sizeof st};
        FUZZ_CHECK(cllm_weights_stats(w, &st) == CLLM_OK, "stats");
        size_t pages = st.pages_absent + st.pages_other;
        for (int i = 0; i < st.pages_nodes; i++) pages += st.pages_per_node[i];
        if (st.readback_status == CLLM_OK)
          FUZZ_CHECK(pages * st.page_bytes == st.capacity_bytes, "pages %zu x %zu != capacity %zu", pages, st.page_bytes, st.capacity_bytes);
        FUZZ_CHECK(st.sealed == sealed, "sealed flag");
        FUZZ_CHECK(st.used_bytes == used, "used %zu, model %zu (a failed call moved it?)", st.used_bytes, used);
        FUZZ_CHECK(st.committed_bytes == cllm_monitor_used(mon, CLLM_CAT_WEIGHTS), "monitor");
        break;
      }
    }
    for (int i = 0; i < n_loads; i++)
      FUZZ_CHECK(memcmp(loads[i].p, g_file + loads[i].off, loads[i].n) == 0, "load %d changed", i);
    FUZZ_CHECK(cllm_weights_check(w) == CLLM_OK, "check");
  }
  cllm_weights_destroy(w);
  FUZZ_CHECK(cllm_monitor_used(mon, CLLM_CAT_COUNT) == 0, "monitor not balanced");
  cllm_monitor_destroy(mon);
  return 0;
}
