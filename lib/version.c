/* The version the library was built as (compare with the header's CLLM_VERSION_HEX
 * to catch a header/library mismatch). */
#include <cllm/version.h>

unsigned cllm_version(void) { return CLLM_VERSION_HEX; }
const char *cllm_version_string(void) { return CLLM_VERSION_STRING; }
