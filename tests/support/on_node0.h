/* A Criterion suite's .init for tests whose figures are per node: on a machine with
 * several nodes the test's thread (and the threads it starts, which inherit the
 * binding) runs on node 0, so what it allocates comes from node 0's heap whatever
 * CPU the scheduler picks. Tests about other nodes bind themselves. */
#ifndef CLLM_TEST_ON_NODE0_H
#define CLLM_TEST_ON_NODE0_H

#include <criterion/criterion.h>

#include <cllm/numa.h>

static inline void cllm_test_on_node0(void) {
  const cllm_topology_t *t = cllm_topology_system();
  if (t != NULL && cllm_topology_nodes(t) > 1) cr_assert_eq(cllm_thread_bind_node(t, 0), CLLM_OK);
}

#endif /* CLLM_TEST_ON_NODE0_H */
