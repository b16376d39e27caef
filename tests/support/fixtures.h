/* Fixtures shared by the Criterion suites: private monitors. A fixture that cannot be
 * built fails the test (cr_assert). Other components' fixtures stay in their suites
 * or in support/<component>_test_util.h. */
#ifndef CLLM_TEST_FIXTURES_H
#define CLLM_TEST_FIXTURES_H

#include <criterion/criterion.h>
#include <stddef.h>

#include <cllm/monitor.h>

/* A private monitor with a total limit (0: none). */
static inline cllm_monitor_t *mk_monitor(size_t limit) {
  cllm_monitor_config_t mc = cllm_monitor_config_default();
  mc.limit_bytes = limit;
  cllm_monitor_t *m = NULL;
  cr_assert_eq(cllm_monitor_create(&mc, &m), CLLM_OK);
  return m;
}

/* A private monitor with a limit on one category only (0: none). */
static inline cllm_monitor_t *mk_monitor_category(cllm_category_t cat, size_t limit) {
  cllm_monitor_config_t mc = cllm_monitor_config_default();
  mc.category_limit_bytes[cat] = limit;
  cllm_monitor_t *m = NULL;
  cr_assert_eq(cllm_monitor_create(&mc, &m), CLLM_OK);
  return m;
}

#endif /* CLLM_TEST_FIXTURES_H */
