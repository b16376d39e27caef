/* cllm-mem version.  cllm_version() returns the library's CLLM_VERSION_HEX, so a
 * program can detect a header/library mismatch at run time. */
#ifndef CLLM_VERSION_H
#define CLLM_VERSION_H

#include <cllm/export.h>

#define CLLM_VERSION_MAJOR 0
#define CLLM_VERSION_MINOR 1
#define CLLM_VERSION_PATCH 0
#define CLLM_VERSION_HEX \
  ((CLLM_VERSION_MAJOR << 16) | (CLLM_VERSION_MINOR << 8) | CLLM_VERSION_PATCH)
#define CLLM_VERSION_STRING "0.1.0"

CLLM_EXTERN_C_BEGIN

// The version the library was built as (CLLM_VERSION_HEX of its headers). Thread: any.
CLLM_API unsigned cllm_version(void);
// The same as a string, e.g. "0.1.0". Static storage. Thread: any.
CLLM_API const char *cllm_version_string(void);

CLLM_EXTERN_C_END
#endif /* CLLM_VERSION_H */
