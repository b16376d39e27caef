/* Status strings (generated from CLLM_STATUS_MAP) and the per-thread last status
 * that pointer-returning calls leave behind. */
#include <cllm/status.h>

#include <errno.h>

#include "internal/util.h"
#include "internal/versioned.h"

/* ---- status ---- */
const char *cllm_status_str(cllm_status_t s) {
  switch (s) {
#define CLLM_STATUS_STR_(name, code, text) \
  case CLLM_##name:                        \
    return text;
    CLLM_STATUS_MAP(CLLM_STATUS_STR_)
#undef CLLM_STATUS_STR_
  }
  return "unknown status";
}

const char *cllm_status_name(cllm_status_t s) {
  switch (s) {
#define CLLM_STATUS_NAME_(name, code, text) \
  case CLLM_##name:                         \
    return "CLLM_" #name;
    CLLM_STATUS_MAP(CLLM_STATUS_NAME_)
#undef CLLM_STATUS_NAME_
  }
  return "CLLM_UNKNOWN";
}

static _Thread_local cllm_status_t t_last_status = CLLM_OK;
cllm_status_t cllm_last_status(void) { return t_last_status; }
void cllm_clear_last_status(void) { t_last_status = CLLM_OK; }
void cllm__set_last_status(cllm_status_t s) { t_last_status = s; }

cllm_status_t cllm__status_of_errno(int e) {
  switch (e) {
    case 0: return CLLM_OK;
    case ENOMEM: case EAGAIN: return CLLM_ENOMEM;
    case EIO: return CLLM_EIO;
    case ENOENT: case ENOTDIR: return CLLM_ENOTFOUND;
    case ENOSYS: case EOPNOTSUPP: return CLLM_ENOTSUP;
    case EBADF: case EINVAL: return CLLM_EINVAL;
    case EOVERFLOW: case EFBIG: return CLLM_EOVERFLOW;
    default: return CLLM_ESYS;
  }
}
