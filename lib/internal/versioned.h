/* The one rule for versioned structs, shared by every component.
 *
 * Every public config and stats struct starts with `size_t struct_size`, set by the caller
 * (the `*_config_default()` functions and the `{.struct_size = sizeof s}` idiom).
 *
 * Configs (input): a caller built against an older header passes a smaller struct. The
 *   fields it has are taken, every later field keeps its default. A larger struct (a caller
 *   built against a newer header) is accepted only when the bytes this library does not
 *   know are all zero, i.e. it asks for nothing this build cannot do. A struct_size below
 *   sizeof(size_t) is refused: the caller did not set it.
 * NULL config: the defaults. A component whose defaults lack a required field refuses it
 *   the same way it refuses that field missing (CLLM_EINVAL, naming the field in the log).
 * Stats (output): the library writes min(caller's struct_size, its own size) bytes and
 *   stores that size in struct_size; a struct_size below sizeof(size_t) is refused.
 * System errors become statuses through one table (cllm__status_of_errno). */
#ifndef CLLM_INTERNAL_VERSIONED_H
#define CLLM_INTERNAL_VERSIONED_H

#include <stddef.h>
#include <string.h>

#include <cllm/status.h>

/* dst: `dst_size` bytes already holding the defaults. src: the caller's struct or NULL.
 * CLLM_OK: dst holds the caller's fields over the defaults. CLLM_EINVAL: struct_size below
 * sizeof(size_t), or unknown trailing bytes not zero; dst unchanged. */
static inline cllm_status_t cllm__config_in(void *dst, size_t dst_size, const void *src) {
  if (src == NULL) return CLLM_OK;
  size_t ss;
  memcpy(&ss, src, sizeof ss);
  if (ss < sizeof(size_t)) return CLLM_EINVAL;
  if (ss > dst_size) {
    const unsigned char *tail = (const unsigned char *)src + dst_size;
    for (size_t i = 0; i < ss - dst_size; i++)
      if (tail[i] != 0) return CLLM_EINVAL;
    ss = dst_size;
  }
  memcpy(dst, src, ss);
  memcpy(dst, &dst_size, sizeof dst_size); /* the struct now holds every field */
  return CLLM_OK;
}

/* The caller's stats struct size, checked: 0 when dst is NULL or its struct_size is below
 * sizeof(size_t) (refuse with CLLM_EINVAL), else the number of bytes cllm__stats_out writes. */
static inline size_t cllm__stats_size(const void *dst, size_t src_size) {
  if (dst == NULL) return 0;
  size_t ss;
  memcpy(&ss, dst, sizeof ss);
  if (ss < sizeof(size_t)) return 0;
  return ss < src_size ? ss : src_size;
}

/* Copy a filled stats struct (src, src_size bytes, struct_size set or not) into the caller's
 * dst, which cllm__stats_size accepted: min(sizes) bytes, struct_size = that count. */
static inline void cllm__stats_out(void *dst, const void *src, size_t src_size) {
  size_t n = cllm__stats_size(dst, src_size);
  memcpy(dst, src, n);
  memcpy(dst, &n, sizeof n);
}

/* errno after a failed system call -> status: 0 OK; ENOMEM, EAGAIN ENOMEM; EIO EIO;
 * ENOENT, ENOTDIR ENOTFOUND; ENOSYS, EOPNOTSUPP ENOTSUP; EBADF, EINVAL EINVAL;
 * EOVERFLOW, EFBIG EOVERFLOW; anything else ESYS. */
cllm_status_t cllm__status_of_errno(int e);

#endif /* CLLM_INTERNAL_VERSIONED_H */
