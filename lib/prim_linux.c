/* The OS primitive layer for Linux: see lib/internal/prim.h for the contract.
 *
 * Every function returns 0 or an errno value and has no other effect on failure.
 * Memory calls go through libc's wrappers (not raw syscalls) so sanitizers see them,
 * except the NUMA calls (mbind, move_pages, get_mempolicy), which glibc does not wrap.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/mempolicy.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal/atomic.h"
#include "internal/fault.h"
#include "internal/prim.h"
#include "internal/util.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#ifndef MLOCK_ONFAULT
#define MLOCK_ONFAULT 0x01
#endif
#ifndef MAP_HUGE_SHIFT
#define MAP_HUGE_SHIFT 26
#endif

/* Read once; racing first calls store the same value (relaxed atomic, no data race). */
size_t cllm__prim_page_size(void) {
  static _Atomic size_t cached;
  size_t ps = cllm__atomic_load_relaxed(&cached);
  if (ps == 0) {
    long v = sysconf(_SC_PAGESIZE);
    ps = v > 0 ? (size_t)v : 4096;
    cllm__atomic_store_relaxed(&cached, ps);
  }
  return ps;
}

size_t cllm__prim_huge_page_size(void) { return (size_t)2 << 20; }

static bool page_aligned(const void *p, size_t n) {
  size_t ps = cllm__prim_page_size();
  return ((uintptr_t)p & (ps - 1)) == 0 && (n & (ps - 1)) == 0;
}

/* ---- mapping ------------------------------------------------------------------- */

int cllm__prim_map(size_t size, size_t align, void **out) {
  size_t ps = cllm__prim_page_size();
  if (out == NULL || size == 0) return EINVAL;
  if (align < ps) align = ps;
  if (!cllm__is_pow2(align)) return EINVAL;
  size_t len, span;
  if (!cllm__align_up_checked(size, ps, &len) || cllm__add_overflow(len, align - ps, &span))
    return ENOMEM;
  if (CLLM_FAULT(CLLM_FAULT_MMAP)) return ENOMEM;
  void *p = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
  if (p == MAP_FAILED) return errno != 0 ? errno : ENOMEM;
  uintptr_t start = (uintptr_t)p, aligned = (start + align - 1) & ~(uintptr_t)(align - 1);
  size_t head = aligned - start, tail = span - head - len;
  if (head != 0) munmap(p, head);
  if (tail != 0) munmap((void *)(aligned + len), tail);
  *out = (void *)aligned;
  return 0;
}

int cllm__prim_map_hugetlb(size_t size, void **out) {
  size_t hp = cllm__prim_huge_page_size();
  if (out == NULL || size == 0 || (size & (hp - 1)) != 0) return EINVAL;
  if (CLLM_FAULT(CLLM_FAULT_MMAP)) return ENOMEM;
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | (21 << MAP_HUGE_SHIFT), -1, 0);
  if (p == MAP_FAILED) return errno != 0 ? errno : ENOMEM;
  *out = p;
  return 0;
}

int cllm__prim_unmap(void *addr, size_t size) {
  if (addr == NULL || size == 0) return EINVAL;
  size_t len;
  if (!cllm__align_up_checked(size, cllm__prim_page_size(), &len)) return EINVAL;
  if (CLLM_FAULT(CLLM_FAULT_MUNMAP)) return EINVAL;
  return munmap(addr, len) == 0 ? 0 : errno;
}

/* ---- advice and commit ------------------------------------------------------------ */

int cllm__prim_advise_huge(void *addr, size_t size) {
  if (addr == NULL || !page_aligned(addr, size)) return EINVAL;
  if (CLLM_FAULT(CLLM_FAULT_MADVISE)) return EINVAL;
  return madvise(addr, size, MADV_HUGEPAGE) == 0 ? 0 : errno;
}

int cllm__prim_advise_nohuge(void *addr, size_t size) {
  if (addr == NULL || !page_aligned(addr, size)) return EINVAL;
  if (CLLM_FAULT(CLLM_FAULT_MADVISE)) return EINVAL;
  return madvise(addr, size, MADV_NOHUGEPAGE) == 0 ? 0 : errno;
}

int cllm__prim_populate(void *addr, size_t size) {
  if (addr == NULL || !page_aligned(addr, size)) return EINVAL;
  if (size == 0) return 0;
  if (CLLM_FAULT(CLLM_FAULT_MADVISE)) return ENOMEM;
  if (madvise(addr, size, MADV_POPULATE_WRITE) == 0) return 0;
  int e = errno;
  if (e != EINVAL) return e; /* ENOMEM, EFAULT...: a real failure */
  /* Kernel without MADV_POPULATE_WRITE (< 5.14): touch one byte per page. The
   * region is ours and still zero where untouched, so writing 0 keeps contents. */
  volatile char *p = addr;
  size_t ps = cllm__prim_page_size();
  for (size_t off = 0; off < size; off += ps) p[off] = p[off];
  return 0;
}

int cllm__prim_decommit(void *addr, size_t size) {
  if (addr == NULL || !page_aligned(addr, size)) return EINVAL;
  if (size == 0) return 0;
  if (CLLM_FAULT(CLLM_FAULT_MADVISE)) return EINVAL;
  return madvise(addr, size, MADV_DONTNEED) == 0 ? 0 : errno;
}

/* ---- locking and protection ------------------------------------------------------- */

int cllm__prim_lock(void *addr, size_t size, bool on_fault) {
  if (addr == NULL || size == 0) return EINVAL;
  if (CLLM_FAULT(CLLM_FAULT_MLOCK)) return ENOMEM;
  if (on_fault) {
#ifdef SYS_mlock2
    if (syscall(SYS_mlock2, addr, size, MLOCK_ONFAULT) == 0) return 0;
    return errno;
#else
    return ENOSYS;
#endif
  }
  /* The raw syscall: AddressSanitizer intercepts mlock() and turns it into a no-op
   * that reports success, which would make every lock report look true. */
  return syscall(SYS_mlock, addr, size) == 0 ? 0 : errno;
}

int cllm__prim_unlock(void *addr, size_t size) {
  if (addr == NULL || size == 0) return EINVAL;
  return syscall(SYS_munlock, addr, size) == 0 ? 0 : errno;
}

int cllm__prim_protect(void *addr, size_t size, bool writable) {
  if (addr == NULL || !page_aligned(addr, size)) return EINVAL;
  if (CLLM_FAULT(CLLM_FAULT_MPROTECT)) return ENOMEM;
  return mprotect(addr, size, writable ? PROT_READ | PROT_WRITE : PROT_READ) == 0 ? 0 : errno;
}

/* ---- reading back what the kernel did ------------------------------------------------ */

int cllm__prim_huge_bytes(const void *addr, size_t size, size_t *out) {
  if (out == NULL) return EINVAL;
  *out = 0;
  FILE *f = fopen("/proc/self/smaps", "re");
  if (f == NULL) return errno;
  uintptr_t lo = (uintptr_t)addr, hi = lo + size;
  char line[512];
  bool in = false;
  uintptr_t vs = 0, ve = 0;
  size_t total = 0;
  while (fgets(line, sizeof line, f) != NULL) {
    unsigned long a, b;
    if (sscanf(line, "%lx-%lx ", &a, &b) == 2 && strchr(line, '-') < strchr(line, ' ')) {
      vs = a, ve = b;
      in = vs < hi && ve > lo;
      continue;
    }
    if (!in) continue;
    unsigned long kb;
    if (sscanf(line, "AnonHugePages: %lu kB", &kb) == 1) {
      /* smaps gives a per-mapping figure; clip to the share of the mapping that
       * lies in the range (exact when the range covers whole mappings). */
      size_t bytes = (size_t)kb * 1024;
      uintptr_t cs = vs > lo ? vs : lo, ce = ve < hi ? ve : hi;
      size_t inside = ce - cs, map_len = ve - vs;
      if (inside < map_len && bytes > inside) bytes = inside;
      total += bytes;
    }
  }
  fclose(f);
  *out = total;
  return 0;
}

int cllm__prim_resident_bytes(const void *addr, size_t size, size_t *out) {
  size_t ps = cllm__prim_page_size();
  if (out == NULL || addr == NULL || ((uintptr_t)addr & (ps - 1)) != 0) return EINVAL;
  *out = 0;
  enum { BATCH = 4096 };
  _Alignas(8) unsigned char vec[BATCH];
  size_t n_pages = (size + ps - 1) / ps, total = 0;
  for (size_t done = 0; done < n_pages;) {
    size_t n = n_pages - done < BATCH ? n_pages - done : BATCH;
    if (mincore((char *)addr + done * ps, n * ps, vec) != 0) return errno;
    /* Bit 0 of each byte says resident. Eight pages per word: each byte lane of acc
     * counts up to 255 words, then the lanes are summed in 16-bit lanes into total. */
    size_t i = 0;
    while (i + 8 <= n) {
      uint64_t acc = 0;
      for (int k = 0; k < 255 && i + 8 <= n; k++, i += 8) {
        uint64_t w;
        memcpy(&w, vec + i, sizeof w);
        acc += w & 0x0101010101010101ull;
      }
      acc = (acc & 0x00ff00ff00ff00ffull) + ((acc >> 8) & 0x00ff00ff00ff00ffull);
      total += (size_t)((acc * 0x0001000100010001ull) >> 48);
    }
    for (; i < n; i++) total += vec[i] & 1;
    done += n;
  }
  *out = total * ps;
  return 0;
}

int cllm__prim_pages_per_node(const void *addr, size_t size, size_t *counts, int max_nodes,
                              size_t *absent, size_t *other) {
  size_t ps = cllm__prim_page_size();
  if (addr == NULL || counts == NULL || max_nodes <= 0 || absent == NULL || other == NULL ||
      ((uintptr_t)addr & (ps - 1)) != 0)
    return EINVAL;
  for (int i = 0; i < max_nodes; i++) counts[i] = 0;
  *absent = 0, *other = 0;
  enum { BATCH = 1024 };
  void *pages[BATCH];
  int status[BATCH];
  size_t n_pages = (size + ps - 1) / ps;
  for (size_t done = 0; done < n_pages;) {
    size_t n = n_pages - done < BATCH ? n_pages - done : BATCH;
    for (size_t i = 0; i < n; i++) pages[i] = (char *)addr + (done + i) * ps;
    if (syscall(SYS_move_pages, 0, (unsigned long)n, pages, NULL, status, 0) != 0) return errno;
    for (size_t i = 0; i < n; i++) {
      if (status[i] >= 0 && status[i] < max_nodes) counts[status[i]]++;
      else if (status[i] == -ENOENT || status[i] == -EFAULT) (*absent)++;
      else (*other)++;
    }
    done += n;
  }
  return 0;
}

_Static_assert((int)CLLM__PRIM_MPOL_DEFAULT == (int)MPOL_DEFAULT &&
                   (int)CLLM__PRIM_MPOL_BIND == (int)MPOL_BIND &&
                   (int)CLLM__PRIM_MPOL_INTERLEAVE == (int)MPOL_INTERLEAVE,
               "prim.h's policy modes are the kernel's");

int cllm__prim_bind(void *addr, size_t size, int mode, const unsigned long *mask) {
  if (addr == NULL || size == 0 || mask == NULL) return EINVAL;
  if (CLLM_FAULT(CLLM_FAULT_BIND)) return EPERM;
  unsigned long maxnode = CLLM__PRIM_NODEMASK_WORDS * 8 * sizeof(unsigned long);
  return syscall(SYS_mbind, addr, size, mode, mask, maxnode, 0) == 0 ? 0 : errno;
}

int cllm__prim_policy(const void *addr, int *mode, unsigned long *nodemask) {
  if (mode == NULL || nodemask == NULL) return EINVAL;
  unsigned long mask[CLLM__PRIM_NODEMASK_WORDS] = {0};
  if (syscall(SYS_get_mempolicy, mode, mask, sizeof mask * 8, addr, MPOL_F_ADDR) != 0)
    return errno;
  *nodemask = mask[0];
  return 0;
}

/* ---- files ------------------------------------------------------------------------ */

int cllm__prim_open_ro(const char *path, int *fd) {
  if (path == NULL || fd == NULL) return EINVAL;
  if (CLLM_FAULT(CLLM_FAULT_OPEN)) return EMFILE;
  int f = open(path, O_RDONLY | O_CLOEXEC);
  if (f < 0) return errno;
  *fd = f;
  return 0;
}

int cllm__prim_file_size(int fd, size_t *out) {
  struct stat st;
  if (out == NULL) return EINVAL;
  if (fstat(fd, &st) != 0) return errno;
  *out = (size_t)st.st_size;
  return 0;
}

int cllm__prim_pread_full(int fd, void *buf, size_t n, off_t off, size_t *done) {
  if (buf == NULL || done == NULL || off < 0) return EINVAL;
  *done = 0;
  enum { MAX_IO = 1 << 30 }; /* Linux caps one read at ~2 GiB */
  while (*done < n) {
    if (CLLM_FAULT(CLLM_FAULT_PREAD)) return EIO;
    size_t want = n - *done < MAX_IO ? n - *done : MAX_IO;
    ssize_t r = pread(fd, (char *)buf + *done, want, off + (off_t)*done);
    if (r < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (r == 0) return 0; /* EOF: short */
    *done += (size_t)r;
  }
  return 0;
}

size_t cllm__prim_memlock_limit(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_MEMLOCK, &rl) != 0) return 0;
  return rl.rlim_cur == RLIM_INFINITY ? SIZE_MAX : (size_t)rl.rlim_cur;
}
