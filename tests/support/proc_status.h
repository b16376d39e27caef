/* Test helper: a field of /proc/self/status in kB ("VmSize", "VmRSS", "VmLck"); 0 if
 * it cannot be read. */
#ifndef CLLM_TEST_PROC_STATUS_H
#define CLLM_TEST_PROC_STATUS_H

#include <stdio.h>
#include <string.h>

static inline size_t proc_status_kib(const char *field) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  size_t kib = 0, n = strlen(field);
  while (f != NULL && fgets(line, sizeof line, f) != NULL)
    if (strncmp(line, field, n) == 0 && line[n] == ':' && sscanf(line + n + 1, "%zu", &kib) == 1)
      break;
  if (f != NULL) fclose(f);
  return kib;
}

#endif
