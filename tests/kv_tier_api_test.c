/* Criterion suite for the KV tier's API contract (lib/kv_tier*.c): bad input,
 * allocation faults, the config's struct_size rule, a cache destroyed before its
 * tier. */
#include <criterion/criterion.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cllm/kv_cache.h>
#include <cllm/kv_tier.h>
#include <cllm/monitor.h>

#include "lib/internal/fault.h"
#include "support/kv_tier_fixture.h"

/* ---- bad input and faults ------------------------------------------------------------------ */

Test(kv_tier, bad_input) {
  cllm_monitor_t *m;
  cllm_kv_cache_t *kv = mk_cache(&m, 16, 4);
  cllm_kv_fake_t *f;
  cllm_kv_store_t st = fake_store(&f);
  cllm_kv_tier_config_t tc = cllm_kv_tier_config_default();
  cllm_kv_tier_t *t = (cllm_kv_tier_t *)1;
  cr_assert_eq(cllm_kv_tier_create(kv, &tc, &t), CLLM_EINVAL);  // no store
  cr_assert_null(t);
  tc.store = st;
  cr_assert_eq(cllm_kv_tier_create(NULL, &tc, &t), CLLM_EINVAL);
  cr_assert_eq(cllm_kv_tier_create(kv, NULL, &t), CLLM_EINVAL);
  cr_assert_eq(cllm_kv_tier_create(kv, &tc, NULL), CLLM_EINVAL);
  tc.spill_low_water = 2;
  cr_assert_eq(cllm_kv_tier_create(kv, &tc, &t), CLLM_EINVAL);
  tc.spill_low_water = 0;
  tc.struct_size = 3;
  cr_assert_eq(cllm_kv_tier_create(kv, &tc, &t), CLLM_EINVAL);
  tc.struct_size = sizeof tc;
  cr_assert_eq(cllm_kv_tier_create(kv, &tc, &t), CLLM_OK);
  cllm_kv_tier_t *t2;
  cr_assert_eq(cllm_kv_tier_create(kv, &tc, &t2), CLLM_EEXIST);
  cllm_kv_token_t tok[9];
  seq_tokens(tok, 9, 1);
  size_t n;
  cllm_kv_seq_t s = open_seq(kv, "s");
  cr_assert_eq(cllm_kv_tier_probe(NULL, s, tok, 9, &n), CLLM_EINVAL);
  cr_assert_eq(cllm_kv_tier_probe(t, s, NULL, 9, &n), CLLM_EINVAL);
  cr_assert_eq(cllm_kv_tier_probe(t, s, tok, 0, &n), CLLM_EINVAL);
  cr_assert_eq(cllm_kv_tier_probe(t, s, tok, 9, NULL), CLLM_EINVAL);
  cr_assert_eq(cllm_kv_tier_fetch(t, s, tok, 9, 8, NULL), CLLM_EINVAL);
  cr_assert_eq(cllm_kv_seq_reserve(kv, s, 2, NULL), CLLM_OK);  // reserved, not committed
  cr_assert_eq(cllm_kv_tier_probe(t, s, tok, 9, &n), CLLM_ESTATE);
  cr_assert_eq(cllm_kv_tier_fetch(t, s, tok, 9, 8, &n), CLLM_ESTATE);
  cr_assert_eq(cllm_kv_seq_commit(kv, s, tok, 2), CLLM_OK);  // 2: not a block boundary
  cr_assert_eq(cllm_kv_tier_probe(t, s, tok, 9, &n), CLLM_ESTATE);
  cr_assert_eq(cllm_kv_seq_close(kv, s), CLLM_OK);
  cr_assert_eq(cllm_kv_tier_probe(t, s, tok, 9, &n), CLLM_ENOTFOUND);  // stale handle
  cr_assert_eq(cllm_kv_tier_flush(NULL, 10), CLLM_EINVAL);
  check(kv);
  cllm_kv_tier_destroy(t);
  cllm_kv_tier_destroy(NULL);
  cllm_kv_cache_destroy(kv);
  cllm_monitor_destroy(m);
}

Test(kv_tier, allocation_failures_leave_nothing) {
  cllm_monitor_t *m;
  cllm_kv_cache_t *kv = mk_cache(&m, 16, 4);
  cllm_kv_token_t tok[9];
  seq_tokens(tok, 9, 1);
  int ok_at = 0;
  for (unsigned nth = 1; nth < 20 && ok_at == 0; nth++) {
    cllm_kv_store_t st = fake_store(NULL);
    cllm_kv_tier_config_t tc = cllm_kv_tier_config_default();
    tc.store = st;
    cllm_kv_tier_t *t = NULL;
    cllm_fault_reset();
    cllm_fault_arm(CLLM_FAULT_MALLOC, nth);
    cllm_status_t rc = cllm_kv_tier_create(kv, &tc, &t);
    cllm_fault_reset();
    if (rc == CLLM_OK) {
      ok_at = (int)nth;
      /* probe's allocation fails too */
      cllm_kv_seq_t s;
      size_t cached, n;
      cr_assert_eq(cllm_kv_seq_open_with_prompt(kv, "s", NULL, tok, 9, &s, &cached), CLLM_OK);
      cllm_fault_arm(CLLM_FAULT_MALLOC, 1);
      cr_assert_eq(cllm_kv_tier_probe(t, s, tok, 9, &n), CLLM_ENOMEM);
      cr_assert_eq(cllm_kv_tier_fetch(t, s, tok, 9, 8, &n), CLLM_OK);  // disarmed after 1
      cllm_fault_reset();
      cr_assert_eq(cllm_kv_seq_close(kv, s), CLLM_OK);
      cllm_kv_tier_destroy(t);
    } else {
      cr_assert_eq(rc, CLLM_ENOMEM);
      cr_assert_null(t);
      st.ops->close(st.user);
    }
  }
  cr_assert_gt(ok_at, 1);
  check_destroy(kv, m);
}

/* ---- versioned config, destroy order ------------------------------------------------------ */

Test(kv_tier, config_struct_size_rule) {
  cllm_monitor_t *m;
  cllm_kv_cache_t *kv = mk_cache(&m, 16, 4);
  cllm_kv_store_t st = fake_store(NULL);
  /* an older, smaller struct: the fields it lacks (fetch_threads) keep their defaults,
   * so a garbage byte past its end is never read */
  struct {
    cllm_kv_tier_config_t tc;
    uint8_t tail[16];
  } big;
  memset(&big, 0, sizeof big);
  big.tc = cllm_kv_tier_config_default();
  big.tc.store = st;
  big.tc.fetch_threads = 999;  // beyond the older struct: ignored
  big.tc.struct_size = offsetof(cllm_kv_tier_config_t, fetch_threads);
  cllm_kv_tier_t *t = NULL;
  cr_assert_eq(cllm_kv_tier_create(kv, &big.tc, &t), CLLM_OK);
  cllm_kv_tier_destroy(t);
  /* a newer, larger struct: accepted with a zero tail, refused with a non-zero one */
  st = fake_store(NULL);
  big.tc.store = st;
  big.tc.fetch_threads = 0;
  big.tc.struct_size = sizeof big;
  cr_assert_eq(cllm_kv_tier_create(kv, &big.tc, &t), CLLM_OK);
  cllm_kv_tier_destroy(t);
  st = fake_store(NULL);
  big.tc.store = st;
  big.tail[7] = 1;
  t = (cllm_kv_tier_t *)1;
  cr_assert_eq(cllm_kv_tier_create(kv, &big.tc, &t), CLLM_EINVAL);
  cr_assert_null(t);
  big.tail[7] = 0;
  big.tc.fetch_threads = 17;  // above the maximum
  cr_assert_eq(cllm_kv_tier_create(kv, &big.tc, &t), CLLM_EINVAL);
  big.tc.struct_size = sizeof(size_t) - 1;  // not set
  cr_assert_eq(cllm_kv_tier_create(kv, &big.tc, &t), CLLM_EINVAL);
  st.ops->close(st.user);
  check_destroy(kv, m);
}

static int logged_errors;
static void count_errors(void *user, cllm_log_level_t level, const char *msg) {
  (void)user, (void)msg;
  if (level == CLLM_LOG_ERROR) __atomic_fetch_add(&logged_errors, 1, __ATOMIC_RELAXED);
}

Test(kv_tier, cache_destroyed_before_its_tier_is_caught) {
  cllm_monitor_t *m;
  cllm_kv_cache_t *kv = mk_cache(&m, 64, 4);
  cllm_kv_fake_t *f;
  cllm_kv_store_t st = fake_store(&f);
  cllm_kv_tier_t *t = mk_tier(kv, st, true);
  cllm_kv_token_t tok[21];
  seq_tokens(tok, 21, 5);
  cllm_kv_seq_t s;
  size_t cached, n = 7;
  cr_assert_eq(cllm_kv_seq_open_with_prompt(kv, "s", NULL, tok, 21, &s, &cached), CLLM_OK);
  compute(kv, s, tok, 0, 21);
  cr_assert_eq(cllm_kv_seq_close(kv, s), CLLM_OK);  // the spill thread has work
  logged_errors = 0;
  cllm_set_log_fn(count_errors, NULL);
  cllm_kv_cache_destroy(kv);  // wrong order: logged, the tier stopped and detached
  cllm_set_log_fn(NULL, NULL);
  cr_assert_eq(logged_errors, 1);
  cr_assert_eq(cllm_kv_tier_probe(t, s, tok, 21, &n), CLLM_ESTATE);
  cr_assert_eq(cllm_kv_tier_fetch(t, s, tok, 21, 16, &n), CLLM_ESTATE);
  cr_assert_eq(cllm_kv_tier_flush(t, 10), CLLM_ESTATE);
  size_t before = cllm_kv_fake_count(f, NULL);
  usleep(20000);
  cr_assert_eq(cllm_kv_fake_count(f, NULL), before);  // nothing runs any more
  cllm_kv_tier_destroy(t);  // still valid: closes the store, frees the tier
  cllm_monitor_destroy(m);
}
