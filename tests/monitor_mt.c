/* The monitor's concurrency scenarios as a plain program, so they also run under
 * ThreadSanitizer (where Criterion cannot start).  Exit status 0 = all held. */
#include <stdio.h>

#include "support/monitor_scenarios.h"

int main(void) {
  long iters = mt_iters(20000);
  scenario_limit_race_library(8, iters);
  long over = scenario_limit_race_reference(8, iters, 60.0);
  MT_CHECK(over > 0, "the racy reference never overshot: the scenario cannot fail");
  printf("monitor_mt: library exact; racy reference overshot %ld times\n", over);
  return 0;
}
