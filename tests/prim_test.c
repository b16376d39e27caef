/* The platform layer's kernel read-backs (lib/internal/prim.h), checked against the
 * kernel directly: cllm__prim_resident_bytes counts exactly the pages mincore(2) says
 * are resident, for ranges of any page count (word-wise counting and its tail). */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "lib/internal/prim.h"

/* Resident pages of [p, p + pages * ps), one mincore byte at a time. */
static size_t naive_resident_pages(void *p, size_t pages, size_t ps) {
  unsigned char *vec = malloc(pages);
  cr_assert_not_null(vec);
  cr_assert_eq(mincore(p, pages * ps, vec), 0);
  size_t n = 0;
  for (size_t i = 0; i < pages; i++) n += vec[i] & 1;
  free(vec);
  return n;
}

Test(prim, resident_bytes_counts_what_mincore_says) {
  size_t ps = (size_t)sysconf(_SC_PAGESIZE);
  /* more than one mincore batch (4096 pages), not a multiple of 8, and 255 words */
  const size_t sizes[] = {1, 7, 8, 9, 2040, 2047, 4096, 4103, 3 * 4096 + 5};
  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
    size_t pages = sizes[k];
    char *p = mmap(NULL, pages * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(p, MAP_FAILED);
    (void)madvise(p, pages * ps, MADV_NOHUGEPAGE);
    size_t got = SIZE_MAX;
    cr_assert_eq(cllm__prim_resident_bytes(p, pages * ps, &got), 0);
    cr_assert_eq(got, naive_resident_pages(p, pages, ps) * ps, "%zu pages, untouched", pages);
    for (size_t i = 0; i < pages; i++)
      if (i % 3 == 0 || i % 8 == 7 || i + 1 == pages) p[i * ps] = 1;
    cr_assert_eq(cllm__prim_resident_bytes(p, pages * ps, &got), 0);
    size_t want = naive_resident_pages(p, pages, ps) * ps;
    cr_assert_eq(got, want, "%zu pages: %zu resident bytes, mincore says %zu", pages, got, want);
    cr_assert_gt(got, 0);
    memset(p, 1, pages * ps);
    cr_assert_eq(cllm__prim_resident_bytes(p, pages * ps, &got), 0);
    cr_assert_eq(got, pages * ps, "%zu pages, all touched", pages);
    cr_assert_eq(munmap(p, pages * ps), 0);
  }
}

Test(prim, resident_bytes_refuses_bad_input) {
  size_t ps = (size_t)sysconf(_SC_PAGESIZE);
  size_t out = 7;
  char *p = mmap(NULL, 2 * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  cr_assert_neq(p, MAP_FAILED);
  cr_assert_neq(cllm__prim_resident_bytes(NULL, ps, &out), 0);
  cr_assert_neq(cllm__prim_resident_bytes(p + 1, ps, &out), 0);
  cr_assert_neq(cllm__prim_resident_bytes(p, ps, NULL), 0);
  cr_assert_eq(munmap(p, 2 * ps), 0);
}
