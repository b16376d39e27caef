/* A child-process runner for tests whose subject dies (a debug abort, a write to
 * sealed memory) or changes the process for good (rlimits, capabilities). No test
 * framework inside: Criterion suites and plain programs (C or C++) use it alike. */
#ifndef CLLM_TEST_CHILD_H
#define CLLM_TEST_CHILD_H

#include <stdio.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

/* Runs fn(arg) in a forked child, which exits with fn's return value (fn may also die
 * or _exit). With err non-NULL the child's stderr is captured into err, NUL-terminated
 * (at most errlen - 1 bytes kept, the rest drained). stdio is flushed before the fork.
 * Returns the child's wait status, or -1 if it could not be started or waited for
 * (no W* macro then reports a normal exit or a signal). */
static inline int run_child(int (*fn)(void *arg), void *arg, char *err, size_t errlen) {
  int fds[2] = {-1, -1};
  if (err != NULL && (errlen == 0 || pipe(fds) != 0)) return -1;
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) {
    if (err != NULL) close(fds[0]), close(fds[1]);
    return -1;
  }
  if (pid == 0) {
    if (err != NULL) {
      close(fds[0]);
      dup2(fds[1], 2);
    }
    _exit(fn(arg));
  }
  if (err != NULL) {
    close(fds[1]);
    size_t got = 0;
    char scratch[256];
    ssize_t r;
    for (;;) {
      char *to = got < errlen - 1 ? err + got : scratch;
      size_t room = got < errlen - 1 ? errlen - 1 - got : sizeof scratch;
      if ((r = read(fds[0], to, room)) <= 0) break;
      if (to != scratch) got += (size_t)r;
    }
    err[got] = '\0';
    close(fds[0]);
  }
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) return -1;
  return status;
}

#endif /* CLLM_TEST_CHILD_H */
