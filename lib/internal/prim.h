/* The OS primitive layer (mimalloc prim.h style): every call the library makes to
 * the kernel for memory goes through here, so that platform code stays in one file
 * (lib/prim_linux.c) and every fallible call has a fault-injection hook.
 *
 * Contract: each function returns 0 on success or an errno value (never -1), sets
 * nothing else on failure, and never logs. Sizes and addresses must be page aligned
 * where stated. All are thread-safe (they are thin syscall wrappers).
 */
#ifndef CLLM_INTERNAL_PRIM_H
#define CLLM_INTERNAL_PRIM_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* Exported from the testing library only, for white-box tests (tests/prim_test.c). */
#ifdef CLLM_FAULT_INJECTION
#define CLLM_TEST_VISIBLE __attribute__((visibility("default")))
#else
#define CLLM_TEST_VISIBLE
#endif

/* The base page size (4096 here). */
size_t cllm__prim_page_size(void);
/* The transparent huge page size (2 MiB on x86-64). */
size_t cllm__prim_huge_page_size(void);

/* Map `size` bytes (rounded up to pages) of private anonymous read-write memory,
 * not yet committed (MAP_NORESERVE), starting at a multiple of `align` (a power of
 * two; 0 or anything below a page = page aligned). Over-maps and trims. Fault: MMAP. */
int cllm__prim_map(size_t size, size_t align, void **out);
/* Map from explicit huge pages (hugetlbfs, MAP_HUGETLB, 2 MiB); size must be a
 * multiple of 2 MiB. ENOMEM when the pool has too few pages. Fault: MMAP. */
int cllm__prim_map_hugetlb(size_t size, void **out);
/* Unmap [addr, addr+size) (page aligned). Fault: MUNMAP. */
int cllm__prim_unmap(void *addr, size_t size);

/* Ask for transparent huge pages on the range (MADV_HUGEPAGE). EINVAL where the
 * kernel has no THP. Fault: MADVISE. */
int cllm__prim_advise_huge(void *addr, size_t size);
/* Ask for no transparent huge pages on the range (MADV_NOHUGEPAGE), so that with
 * THP set to "always" a fault still commits one base page. Fault: MADVISE. */
int cllm__prim_advise_nohuge(void *addr, size_t size);
/* Commit the range now, in one call (MADV_POPULATE_WRITE; where the kernel lacks it,
 * touch one byte per page). Fault: MADVISE. */
int cllm__prim_populate(void *addr, size_t size);
/* Give the range's pages back to the kernel (MADV_DONTNEED); contents become zero.
 * Fault: MADVISE. */
int cllm__prim_decommit(void *addr, size_t size);

/* mlock the range; with on_fault, mlock2(MLOCK_ONFAULT) (pages are locked as they
 * are first touched, so locking does not fault them in here). Fault: MLOCK. */
int cllm__prim_lock(void *addr, size_t size, bool on_fault);
/* munlock the range (never fails in practice; no fault hook). */
int cllm__prim_unlock(void *addr, size_t size);
/* mprotect the range read-only / read-write. Fault: MPROTECT. */
int cllm__prim_protect(void *addr, size_t size, bool writable);

/* Bytes of the range backed by transparent huge pages, from /proc/self/smaps
 * (AnonHugePages of the mappings that intersect the range, clipped to it). */
int cllm__prim_huge_bytes(const void *addr, size_t size, size_t *out);
/* Bytes of the range (page aligned) whose pages are resident, from mincore(2): exact
 * for the range itself, whatever the kernel merged it with (smaps is per mapping). */
CLLM_TEST_VISIBLE int cllm__prim_resident_bytes(const void *addr, size_t size, size_t *out);
/* For each page of the range (page aligned), the NUMA node it is on, via
 * move_pages(2) in query mode: counts[node] += 1 for nodes < max_nodes; pages not
 * yet committed are counted in *absent, others beyond max_nodes in *other. */
int cllm__prim_pages_per_node(const void *addr, size_t size, size_t *counts, int max_nodes,
                              size_t *absent, size_t *other);
/* Memory policy modes of mbind(2) and get_mempolicy(2), the kernel's values. */
enum { CLLM__PRIM_MPOL_DEFAULT = 0, CLLM__PRIM_MPOL_BIND = 2, CLLM__PRIM_MPOL_INTERLEAVE = 3 };
/* Words in a node mask of cllm__prim_bind (bit i = OS node i). */
#define CLLM__PRIM_NODEMASK_WORDS 16

/* Set the memory policy of [addr, addr+size) (addr page aligned) to `mode` over the
 * nodes of mask[CLLM__PRIM_NODEMASK_WORDS] (mbind, no flags: pages already present
 * stay where they are). Fault: BIND. */
int cllm__prim_bind(void *addr, size_t size, int mode, const unsigned long *mask);
/* The memory policy of the page at addr (get_mempolicy with MPOL_F_ADDR):
 * *mode is one of the modes above (or another MPOL_*), *nodemask the node bits. */
int cllm__prim_policy(const void *addr, int *mode, unsigned long *nodemask);

/* Open a file read-only (O_CLOEXEC). Fault: OPEN. */
int cllm__prim_open_ro(const char *path, int *fd);
/* Size of an open file (fstat). */
int cllm__prim_file_size(int fd, size_t *out);
/* pread until `n` bytes are read or an error/EOF: *done is what was read. A short
 * file gives 0 with *done < n (the caller decides). EINTR is retried. Fault: PREAD. */
int cllm__prim_pread_full(int fd, void *buf, size_t n, off_t off, size_t *done);

/* RLIMIT_MEMLOCK soft limit in bytes (SIZE_MAX = unlimited). */
size_t cllm__prim_memlock_limit(void);

#endif /* CLLM_INTERNAL_PRIM_H */
