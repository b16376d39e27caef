/* Criterion suite for the KV tier's Redis backend (//:cllm_kv_redis) against real
 * redis-server processes that each test starts (unix socket under /tmp, TCP on a
 * free loopback port, no persistence) and that die with the test process: two
 * caches (and two processes) sharing one Redis, records poisoned in Redis,
 * tenants by salt and by ACL, a server stopped / paused / killed / full, and a
 * Redis Cluster of three masters with a slot moved mid-run. A system Redis on
 * 6379 is never touched. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include <cllm/kv_cache.h>
#include <cllm/kv_redis.h>
#include <cllm/kv_tier.h>
#include <cllm/monitor.h>

#include "tests/support/kv_test_util.h"

#define REDIS_SERVER "/usr/bin/redis-server"

/* ---- servers --------------------------------------------------------------------- */

typedef struct srv {
  pid_t pid;
  int port;        // 0: unix socket only
  char sock[64];
  char dir[64];
} srv_t;

static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t l = sizeof a;
  cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
  cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &l), 0);
  close(fd);
  return ntohs(a.sin_port);
}

static redisContext *admin(const srv_t *s) {
  struct timeval tv = {2, 0};
  redisContext *c = redisConnectUnixWithTimeout(s->sock, tv);
  cr_assert(c != NULL && !c->err, "admin connect %s: %s", s->sock, c ? c->errstr : "");
  return c;
}

static redisReply *cmd(const srv_t *s, const char *fmt, ...) {
  redisContext *c = admin(s);
  va_list ap;
  va_start(ap, fmt);
  redisReply *r = redisvCommand(c, fmt, ap);
  va_end(ap);
  cr_assert_not_null(r, "%s: %s", fmt, c->errstr);
  redisFree(c);
  return r;
}

static long long cmd_int(const srv_t *s, const char *fmt, const char *arg) {
  redisReply *r = cmd(s, fmt, arg);
  cr_assert_eq(r->type, REDIS_REPLY_INTEGER, "%s: %s", fmt, r->str ? r->str : "");
  long long v = r->integer;
  freeReplyObject(r);
  return v;
}

static void cmd_ok(const srv_t *s, const char *fmt, const char *arg) {
  redisReply *r = cmd(s, fmt, arg);
  cr_assert(r->type == REDIS_REPLY_STATUS, "%s: %s", fmt, r->str ? r->str : "");
  freeReplyObject(r);
}

static void srv_start(srv_t *s, int port, const char *extra1, const char *extra2) {
  static int n;
  if (access(REDIS_SERVER, X_OK) != 0) cr_skip_test("redis-server not installed (tools/bazel installs it)");
  if (s->sock[0] == '\0') {
    snprintf(s->sock, sizeof s->sock, "/tmp/ckr%d-%d.sock", (int)getpid(), n);
    snprintf(s->dir, sizeof s->dir, "/tmp/ckr%d-%d", (int)getpid(), n++);
  }
  mkdir(s->dir, 0700);
  s->port = port;
  unlink(s->sock);
  char ports[16];
  snprintf(ports, sizeof ports, "%d", port);
  pid_t pid = fork();
  cr_assert_geq(pid, 0);
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    int dn = open("/dev/null", O_WRONLY);
    dup2(dn, 1), dup2(dn, 2);
    const char *argv[24] = {REDIS_SERVER, "--port", ports, "--bind", "127.0.0.1", "--unixsocket",
                            s->sock, "--save", "", "--appendonly", "no", "--dir", s->dir,
                            "--enable-debug-command", "local"};
    int a = 15;
    if (extra1 != NULL) {
      argv[a++] = extra1;
      argv[a++] = extra2;
    }
    argv[a] = NULL;
    execv(REDIS_SERVER, (char *const *)argv);
    _exit(127);
  }
  s->pid = pid;
  for (int i = 0; i < 500; i++) {
    struct timeval tv = {0, 100000};
    redisContext *c = redisConnectUnixWithTimeout(s->sock, tv);
    if (c != NULL && !c->err) {
      redisReply *r = redisCommand(c, "PING");
      bool ok = r != NULL && r->type == REDIS_REPLY_STATUS;
      if (r) freeReplyObject(r);
      redisFree(c);
      if (ok) return;
    } else if (c) {
      redisFree(c);
    }
    usleep(10000);
  }
  cr_assert_fail("redis-server did not start on %s", s->sock);
}

static void srv_stop(srv_t *s) {
  if (s->pid <= 0) return;
  kill(s->pid, SIGKILL);
  waitpid(s->pid, NULL, 0);
  s->pid = 0;
  unlink(s->sock);
  rmdir(s->dir);
}

static void block_sigpipe_here(void) {  // this test thread's own admin connections
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
}

/* ---- caches ------------------------------------------------------------------------ */

static cllm_kv_tier_t *redis_tier(cllm_kv_cache_t *kv, const char *endpoint, bool cluster,
                                  const char *user, const char *pass) {
  cllm_kv_redis_config_t rc = cllm_kv_redis_config_default();
  rc.endpoint = endpoint;
  rc.cluster = cluster;
  rc.user = user;
  rc.password = pass;
  cllm_kv_tier_config_t tc = cllm_kv_tier_config_default();
  cr_assert_eq(cllm_kv_store_redis_create(&rc, &tc.store), CLLM_OK);
  tc.model_id = "test-model";
  tc.model_id_len = 10;
  tc.write_through = true;
  tc.op_timeout_ms = 150;
  tc.retry_ms = 20;
  cllm_kv_tier_t *t = NULL;
  cr_assert_eq(cllm_kv_tier_create(kv, &tc, &t), CLLM_OK);
  return t;
}

static void fill(cllm_kv_cache_t *kv, cllm_kv_seq_t s, const cllm_kv_token_t *t, size_t from,
                 size_t n) {
  cllm_kv_loc_t locs[256];
  cr_assert_eq(cllm_kv_seq_reserve(kv, s, n - from, locs), CLLM_OK);
  for (size_t i = from; i < n; i++) write_row(kv, locs[i - from], (uint32_t)(t[i] * 7 + i));
  cr_assert_eq(cllm_kv_seq_commit(kv, s, t + from, n - from), CLLM_OK);
}

static void serve(cllm_kv_cache_t *kv, const char *id, const cllm_kv_token_t *tok, size_t n,
                  uint64_t salt) {
  cllm_kv_seq_opts_t o = {.salt = salt};
  cllm_kv_seq_t s;
  size_t cached;
  cr_assert_eq(cllm_kv_seq_open_with_prompt(kv, id, &o, tok, n, &s, &cached), CLLM_OK);
  fill(kv, s, tok, cached, n);
  cr_assert_eq(cllm_kv_seq_close(kv, s), CLLM_OK);
}

/* Open, probe, fetch; returns the tokens fetched (the sequence stays open). */
static size_t fetch(cllm_kv_cache_t *kv, cllm_kv_tier_t *t, const char *id, const cllm_kv_token_t *tok,
                    size_t n, uint64_t salt, cllm_kv_seq_t *s) {
  cllm_kv_seq_opts_t o = {.salt = salt};
  size_t cached, avail = 0, ready = 0;
  cr_assert_eq(cllm_kv_seq_open_with_prompt(kv, id, &o, tok, n, s, &cached), CLLM_OK);
  cr_assert_eq(cllm_kv_tier_probe(t, *s, tok, n, &avail), CLLM_OK);
  cr_assert_eq(cllm_kv_tier_fetch(t, *s, tok, n, avail, &ready), CLLM_OK);
  return ready;
}

static void expect_rows(cllm_kv_cache_t *kv, cllm_kv_seq_t s, const cllm_kv_token_t *t, size_t n) {
  for (size_t i = 0; i < n; i++) cr_assert_eq(read_row(kv, s, i), (uint32_t)(t[i] * 7 + i), "row %zu", i);
}

typedef struct rig {
  cllm_monitor_t *m;
  cllm_kv_cache_t *a, *b;
} rig_t;

static void rig_up(rig_t *r) {
  block_sigpipe_here();
  cllm_set_log_fn(cllm_log_discard, NULL);
  r->m = mk_monitor(0);
  cllm_kv_config_t c = small_cfg(r->m, 64, 4);
  r->a = mk(&c);
  r->b = mk(&c);
}

static void rig_down(rig_t *r) {
  check(r->a);
  check(r->b);
  cllm_kv_cache_destroy(r->a);
  cllm_kv_cache_destroy(r->b);
  cllm_monitor_destroy(r->m);
}

static char *ep_unix(const srv_t *s) {
  static char buf[96];
  snprintf(buf, sizeof buf, "unix:%s", s->sock);
  return buf;
}

/* ---- two caches, one Redis ---------------------------------------------------------------- */

Test(kv_redis, two_caches_share_one_redis_tcp_and_unix) {
  rig_t r;
  rig_up(&r);
  srv_t s = {0};
  srv_start(&s, free_port(), NULL, NULL);
  char tcp[64];
  snprintf(tcp, sizeof tcp, "redis://127.0.0.1:%d", s.port);
  cllm_kv_tier_t *ta = redis_tier(r.a, ep_unix(&s), false, NULL, NULL);
  cllm_kv_tier_t *tb = redis_tier(r.b, tcp, false, NULL, NULL);
  cllm_kv_token_t tok[42];
  seq_tokens(tok, 42, 3);
  serve(r.a, "a", tok, 42, 0);
  cr_assert_eq(cllm_kv_tier_flush(ta, 5000), CLLM_OK);
  cr_assert_eq(stats(r.a).tier_spills, 10);
  cr_assert_eq(cmd_int(&s, "DBSIZE", NULL), 10);
  cllm_kv_seq_t sb;
  cr_assert_eq(fetch(r.b, tb, "b", tok, 42, 0, &sb), 40);
  expect_rows(r.b, sb, tok, 40);
  cllm_kv_stats_t st = stats(r.b);
  cr_assert_eq(st.tier_remote_hit_tokens, 40);
  cr_assert_eq(st.tier_fetched_bytes, 10 * 376);
  cr_assert_eq(st.tier_errors + st.tier_timeouts, 0);
  fill(r.b, sb, tok, 40, 42);
  cr_assert_eq(cllm_kv_seq_close(r.b, sb), CLLM_OK);
  cllm_kv_tier_destroy(tb);
  cllm_kv_tier_destroy(ta);
  srv_stop(&s);
  rig_down(&r);
}

Test(kv_redis, two_processes_share_one_redis) {
  rig_t r;
  rig_up(&r);
  srv_t s = {0};
  srv_start(&s, 0, NULL, NULL);
  cllm_kv_token_t tok[33];
  seq_tokens(tok, 33, 4);
  pid_t pid = fork();
  cr_assert_geq(pid, 0);
  if (pid == 0) {  // process A: its own cache, its own tier
    cllm_kv_config_t c = small_cfg(NULL, 16, 4);
    cllm_kv_cache_t *kv = NULL;
    if (cllm_kv_cache_create(&c, &kv) != CLLM_OK) _exit(2);
    cllm_kv_tier_t *t = redis_tier(kv, ep_unix(&s), false, NULL, NULL);
    serve(kv, "a", tok, 33, 0);
    int ok = cllm_kv_tier_flush(t, 5000) == CLLM_OK;
    cllm_kv_tier_destroy(t);
    cllm_kv_cache_destroy(kv);
    _exit(ok ? 0 : 3);
  }
  int status;
  cr_assert_eq(waitpid(pid, &status, 0), pid);
  cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "process A: %d", status);
  cllm_kv_tier_t *tb = redis_tier(r.b, ep_unix(&s), false, NULL, NULL);
  cllm_kv_seq_t sb;
  cr_assert_eq(fetch(r.b, tb, "b", tok, 33, 0, &sb), 32);
  expect_rows(r.b, sb, tok, 32);
  cr_assert_eq(stats(r.b).tier_remote_hit_tokens, 32);
  cr_assert_eq(cllm_kv_seq_close(r.b, sb), CLLM_OK);
  cllm_kv_tier_destroy(tb);
  srv_stop(&s);
  rig_down(&r);
}

/* ---- poisoning and tenants -------------------------------------------------------------- */

Test(kv_redis, records_poisoned_in_redis_are_rejected) {
  rig_t r;
  rig_up(&r);
  srv_t s = {0};
  srv_start(&s, 0, NULL, NULL);
  cllm_kv_tier_t *ta = redis_tier(r.a, ep_unix(&s), false, NULL, NULL);
  cllm_kv_tier_t *tb = redis_tier(r.b, ep_unix(&s), false, NULL, NULL);
  cllm_kv_token_t tok[21];
  seq_tokens(tok, 21, 5);
  serve(r.a, "a", tok, 21, 0);
  cr_assert_eq(cllm_kv_tier_flush(ta, 5000), CLLM_OK);
  /* block 2: flip one payload byte (checksum); block 1: swap in block 3's record */
  cllm_kv_shape_t sh = {2, 1, 4, 4, 4, 0};
  sh.fingerprint = cllm_kv_tier_fingerprint(&sh, "test-model", 10);
  uint64_t ns = cllm_kv_tier_namespace(0, 0);
  uint8_t d[5][16], root[16];
  char key[5][CLLM_KV_TIER_KEY_MAX];
  cllm_kv_tier_root_digest(sh.fingerprint, ns, root);
  for (int i = 0; i < 5; i++) {
    cllm_kv_tier_chain_digest(i ? d[i - 1] : root, tok + 4 * i, 4, d[i]);
    cllm_kv_tier_key(sh.fingerprint, ns, d[i], key[i]);
  }
  redisReply *v = cmd(&s, "GET %s", key[2]);
  cr_assert_eq(v->type, REDIS_REPLY_STRING);
  v->str[200] ^= 1;
  freeReplyObject(cmd(&s, "SET %s %b", key[2], v->str, v->len));
  freeReplyObject(v);
  cllm_kv_seq_t sb;
  cr_assert_eq(fetch(r.b, tb, "b1", tok, 21, 0, &sb), 8);
  cr_assert_eq(stats(r.b).tier_rejects_record, 1);
  expect_rows(r.b, sb, tok, 8);
  cr_assert_eq(cllm_kv_seq_close(r.b, sb), CLLM_OK);
  check(r.b);
  v = cmd(&s, "GET %s", key[3]);
  freeReplyObject(cmd(&s, "SET %s %b", key[0], v->str, v->len));  // wrong identity
  freeReplyObject(v);
  cllm_kv_config_t c = small_cfg(r.m, 16, 4);
  cllm_kv_cache_t *kc = mk(&c);
  cllm_kv_tier_t *tc = redis_tier(kc, ep_unix(&s), false, NULL, NULL);
  cr_assert_eq(fetch(kc, tc, "c", tok, 21, 0, &sb), 0);
  cr_assert_eq(stats(kc).tier_rejects_record, 1);
  cr_assert_eq(stats(kc).blocks_active, 0);
  check(kc);
  cr_assert_eq(cllm_kv_seq_close(kc, sb), CLLM_OK);
  cllm_kv_tier_destroy(tc);
  cllm_kv_cache_destroy(kc);
  cllm_kv_tier_destroy(tb);
  cllm_kv_tier_destroy(ta);
  srv_stop(&s);
  rig_down(&r);
}

Test(kv_redis, tenants_by_salt_and_acl_user) {
  rig_t r;
  rig_up(&r);
  srv_t s = {0};
  srv_start(&s, 0, NULL, NULL);
  cllm_kv_shape_t sh = {2, 1, 4, 4, 4, 0};
  sh.fingerprint = cllm_kv_tier_fingerprint(&sh, "test-model", 10);
  char pattern[96];
  snprintf(pattern, sizeof pattern, "~cllm:v1:%016llx:%016llx:*", (unsigned long long)sh.fingerprint,
           (unsigned long long)cllm_kv_tier_namespace(1, 0));
  redisReply *ar = cmd(&s, "ACL SETUSER tenant1 on >pw1 %s +get +set +exists +ping", pattern);
  cr_assert_eq(ar->type, REDIS_REPLY_STATUS, "%s", ar->str);
  freeReplyObject(ar);
  cllm_kv_tier_t *ta = redis_tier(r.a, ep_unix(&s), false, "tenant1", "pw1");
  cllm_kv_tier_t *tb = redis_tier(r.b, ep_unix(&s), false, NULL, NULL);
  cllm_kv_token_t tok[17];
  seq_tokens(tok, 17, 6);
  serve(r.a, "a1", tok, 17, 1);  // its namespace: written
  cr_assert_eq(cllm_kv_tier_flush(ta, 5000), CLLM_OK);
  cllm_kv_token_t u[9];
  seq_tokens(u, 9, 7);
  serve(r.a, "a2", u, 9, 2);  // another salt: NOPERM
  cr_assert_eq(cllm_kv_tier_flush(ta, 5000), CLLM_OK);
  cllm_kv_stats_t st = stats(r.a);
  cr_assert_eq(st.tier_spills, 4);
  cr_assert_eq(st.tier_rejects_noperm, 2);
  cr_assert_eq(st.tier_state, CLLM_KV_TIER_UP);
  cr_assert_eq(cmd_int(&s, "DBSIZE", NULL), 4);
  /* B with salt 2 sees nothing of salt 1; with salt 1 it does */
  cllm_kv_seq_t sb;
  cr_assert_eq(fetch(r.b, tb, "b2", tok, 17, 2, &sb), 0);
  cr_assert_eq(cllm_kv_seq_close(r.b, sb), CLLM_OK);
  cr_assert_eq(fetch(r.b, tb, "b1", tok, 17, 1, &sb), 16);
  cr_assert_eq(cllm_kv_seq_close(r.b, sb), CLLM_OK);
  /* a wrong password: the connection is refused and counted; the cache works */
  cllm_kv_config_t c = small_cfg(r.m, 16, 4);
  cllm_kv_cache_t *kc = mk(&c);
  cllm_kv_tier_t *tc = redis_tier(kc, ep_unix(&s), false, "tenant1", "nope");
  cr_assert_eq(fetch(kc, tc, "c", tok, 17, 1, &sb), 0);
  cr_assert_geq(stats(kc).tier_errors, 1);
  cr_assert_eq(cllm_kv_seq_close(kc, sb), CLLM_OK);
  cllm_kv_tier_destroy(tc);
  cllm_kv_cache_destroy(kc);
  cllm_kv_tier_destroy(tb);
  cllm_kv_tier_destroy(ta);
  srv_stop(&s);
  rig_down(&r);
}

/* ---- faults ---------------------------------------------------------------------------------- */

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

Test(kv_redis, stopped_and_paused_server_answers_within_deadlines) {
  rig_t r;
  rig_up(&r);
  srv_t s = {0};
  srv_start(&s, 0, NULL, NULL);
  cllm_kv_tier_t *ta = redis_tier(r.a, ep_unix(&s), false, NULL, NULL);
  cllm_kv_tier_t *tb = redis_tier(r.b, ep_unix(&s), false, NULL, NULL);
  cllm_kv_token_t tok[17];
  seq_tokens(tok, 17, 8);
  serve(r.a, "a", tok, 17, 0);
  cr_assert_eq(cllm_kv_tier_flush(ta, 5000), CLLM_OK);
  /* SIGSTOP: every call returns by its deadline (150 ms) */
  kill(s.pid, SIGSTOP);
  cllm_kv_seq_t sb;
  int64_t t0 = mono_ms();
  cr_assert_eq(fetch(r.b, tb, "b", tok, 17, 0, &sb), 0);
  int64_t took = mono_ms() - t0;
  cr_assert_lt(took, 1000, "took %lld ms", (long long)took);
  cr_assert_geq(stats(r.b).tier_timeouts, 1);
  cr_assert_eq(cllm_kv_seq_close(r.b, sb), CLLM_OK);
  check(r.b);
  kill(s.pid, SIGCONT);
  size_t got = 0;
  for (int i = 0; i < 100 && got == 0; i++) {
    usleep(20000);
    got = fetch(r.b, tb, "b", tok, 17, 0, &sb);
    cr_assert_eq(cllm_kv_seq_close(r.b, sb), CLLM_OK);
  }
  cr_assert_eq(got, 16);
  /* CLIENT PAUSE: the same */
  freeReplyObject(cmd(&s, "CLIENT PAUSE 600 ALL"));
  cllm_kv_config_t c = small_cfg(r.m, 16, 4);
  cllm_kv_cache_t *kc = mk(&c);
  cllm_kv_tier_t *tc = redis_tier(kc, ep_unix(&s), false, NULL, NULL);
  t0 = mono_ms();
  cr_assert_eq(fetch(kc, tc, "c", tok, 17, 0, &sb), 0);
  cr_assert_lt(mono_ms() - t0, 550);
  cr_assert_geq(stats(kc).tier_timeouts, 1);
  cr_assert_eq(cllm_kv_seq_close(kc, sb), CLLM_OK);
  usleep(700000);  // the pause ends
  /* DEBUG SLEEP (sent without waiting for its answer): the same */
  redisContext *ac = admin(&s);
  redisAppendCommand(ac, "DEBUG SLEEP 0.6");
  int done = 0;
  while (!done) cr_assert_eq(redisBufferWrite(ac, &done), REDIS_OK);
  usleep(20000);
  uint64_t before = stats(kc).tier_timeouts;
  t0 = mono_ms();
  cr_assert_eq(fetch(kc, tc, "c", tok, 17, 0, &sb), 0);
  cr_assert_lt(mono_ms() - t0, 550);
  cr_assert_gt(stats(kc).tier_timeouts, before);
  redisReply *dr;
  cr_assert_eq(redisGetReply(ac, (void **)&dr), REDIS_OK);
  freeReplyObject(dr);
  redisFree(ac);
  cr_assert_eq(cllm_kv_seq_close(kc, sb), CLLM_OK);
  check(kc);
  cllm_kv_tier_destroy(tc);
  cllm_kv_cache_destroy(kc);
  cllm_kv_tier_destroy(tb);
  cllm_kv_tier_destroy(ta);
  srv_stop(&s);
  rig_down(&r);
}

Test(kv_redis, server_killed_mid_spill_then_restarted) {
  rig_t r;
  rig_up(&r);
  srv_t s = {0};
  srv_start(&s, 0, NULL, NULL);
  cllm_kv_tier_t *ta = redis_tier(r.a, ep_unix(&s), false, NULL, NULL);
  cllm_kv_token_t tok[200];
  seq_tokens(tok, 200, 9);
  cllm_kv_seq_t sa;
  cr_assert_eq(cllm_kv_seq_open(r.a, "a", NULL, &sa), CLLM_OK);
  fill(r.a, sa, tok, 0, 100);
  srv_stop(&s);  // while the spill thread writes
  fill(r.a, sa, tok, 100, 200);
  cr_assert_eq(cllm_kv_seq_close(r.a, sa), CLLM_OK);
  cr_assert_eq(cllm_kv_tier_flush(ta, 300), CLLM_EBUSY);
  cllm_kv_stats_t st = stats(r.a);
  cr_assert_geq(st.tier_errors, 1);
  cr_assert_eq(st.tier_state, CLLM_KV_TIER_DOWN);
  check(r.a);
  /* local service goes on */
  cllm_kv_seq_t s2;
  size_t cached;
  cr_assert_eq(cllm_kv_seq_open_with_prompt(r.a, "a2", NULL, tok, 200, &s2, &cached), CLLM_OK);
  cr_assert_eq(cached, 196);
  cr_assert_eq(cllm_kv_seq_close(r.a, s2), CLLM_OK);
  /* the server comes back (same socket, empty): the blocks not written yet are */
  uint64_t before = st.tier_spills;
  cr_assert_lt(before, 50);
  srv_start(&s, 0, NULL, NULL);
  cllm_status_t frc = CLLM_EBUSY;
  for (int i = 0; i < 200 && frc != CLLM_OK; i++) {
    usleep(20000);
    frc = cllm_kv_tier_flush(ta, 2000);
  }
  cr_assert_eq(frc, CLLM_OK);
  cr_assert_eq(cmd_int(&s, "DBSIZE", NULL), 50 - (long long)before);
  st = stats(r.a);
  cr_assert_eq(st.tier_spills, 50);
  cr_assert_eq(st.tier_state, CLLM_KV_TIER_UP);
  cr_assert_geq(st.tier_reconnects, 1);
  cllm_kv_tier_destroy(ta);
  srv_stop(&s);
  rig_down(&r);
}

Test(kv_redis, full_server_answers_oom_counted_not_retried) {
  rig_t r;
  rig_up(&r);
  srv_t s = {0};
  srv_start(&s, 0, "--maxmemory", "1");
  cllm_kv_tier_t *ta = redis_tier(r.a, ep_unix(&s), false, NULL, NULL);
  cllm_kv_token_t tok[17];
  seq_tokens(tok, 17, 10);
  serve(r.a, "a", tok, 17, 0);
  cr_assert_eq(cllm_kv_tier_flush(ta, 5000), CLLM_OK);
  cllm_kv_stats_t st = stats(r.a);
  cr_assert_eq(st.tier_rejects_oom, 4);
  cr_assert_eq(st.tier_spills, 0);
  cr_assert_eq(st.tier_state, CLLM_KV_TIER_UP);
  cr_assert_eq(cllm_kv_tier_flush(ta, 5000), CLLM_OK);
  cr_assert_eq(stats(r.a).tier_rejects_oom, 4);
  cllm_kv_tier_destroy(ta);
  srv_stop(&s);
  rig_down(&r);
}

/* ---- Redis Cluster ----------------------------------------------------------------------------- */

/* A port p with p and its cluster bus port p + 10000 free. */
static int cluster_port(int salt) {
  for (int tries = 0; tries < 200; tries++) {
    int p = 20000 + (int)((getpid() * 7919u + (unsigned)salt * 104729u + (unsigned)tries * 131u) % 9000u);
    int ok = 1;
    for (int k = 0; k < 2 && ok; k++) {
      int fd = socket(AF_INET, SOCK_STREAM, 0);
      struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)(p + k * 10000)),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
      ok = bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
      close(fd);
    }
    if (ok) return p;
  }
  cr_assert_fail("no free port pair");
  return 0;
}

static int run_cli(const char *const *argv) {
  pid_t pid = fork();
  if (pid == 0) {
    int dn = open("/dev/null", O_WRONLY);
    dup2(dn, 1), dup2(dn, 2);
    execv("/usr/bin/redis-cli", (char *const *)argv);
    _exit(127);
  }
  int st;
  waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static bool reply_has(const srv_t *s, const char *command, const char *needle) {
  redisReply *r = cmd(s, command);
  bool has = r->type == REDIS_REPLY_STRING && strstr(r->str, needle);
  freeReplyObject(r);
  return has;
}

static void node_id(const srv_t *s, char *out) {
  redisReply *r = cmd(s, "CLUSTER MYID");
  cr_assert_eq(r->type, REDIS_REPLY_STRING);
  snprintf(out, 64, "%s", r->str);
  freeReplyObject(r);
}

static size_t keys_in_slot(const srv_t *s, long slot) {
  char c[64];
  snprintf(c, sizeof c, "CLUSTER COUNTKEYSINSLOT %ld", slot);
  return (size_t)cmd_int(s, c, NULL);
}

Test(kv_redis, cluster_of_three_masters_with_resharding, .timeout = 60) {
  if (access("/usr/bin/redis-cli", X_OK) != 0) cr_skip_test("redis-cli not installed");
  rig_t r;
  rig_up(&r);
  srv_t n[3] = {{0}};
  char addr[3][32];
  for (int i = 0; i < 3; i++) {
    srv_start(&n[i], cluster_port(i), "--cluster-enabled", "yes");
    snprintf(addr[i], sizeof addr[i], "127.0.0.1:%d", n[i].port);
  }
  const char *argv[] = {"redis-cli", "--cluster", "create", addr[0], addr[1], addr[2],
                        "--cluster-yes", NULL};
  cr_assert_eq(run_cli(argv), 0, "redis-cli --cluster create");
  for (int i = 0; i < 3; i++) {
    int w = 0;
    while (!reply_has(&n[i], "CLUSTER INFO", "cluster_state:ok") && w++ < 500) usleep(10000);
    cr_assert_lt(w, 500, "node %d never ok", i);
  }
  char seeds[100];
  snprintf(seeds, sizeof seeds, "%s,%s", addr[0], addr[1]);
  cllm_kv_tier_t *ta = redis_tier(r.a, seeds, true, NULL, NULL);
  cllm_kv_token_t tok[200];
  seq_tokens(tok, 200, 11);
  serve(r.a, "a", tok, 200, 0);
  cr_assert_eq(cllm_kv_tier_flush(ta, 5000), CLLM_OK);
  cr_assert_eq(stats(r.a).tier_spills, 50);
  long long total = 0;
  for (int i = 0; i < 3; i++) {
    long long k = cmd_int(&n[i], "DBSIZE", NULL);
    cr_assert_gt(k, 0, "node %d holds no block", i);
    total += k;
  }
  cr_assert_eq(total, 50);
  /* D loads the slot map now (a probe of another prompt), before the resharding */
  cllm_kv_config_t c = small_cfg(r.m, 64, 4);
  cllm_kv_cache_t *kd = mk(&c);
  cllm_kv_tier_t *td = redis_tier(kd, addr[2], true, NULL, NULL);
  cllm_kv_token_t other[9];
  seq_tokens(other, 9, 12);
  cllm_kv_seq_t sd;
  cr_assert_eq(fetch(kd, td, "d0", other, 9, 0, &sd), 0);
  cr_assert_eq(cllm_kv_seq_close(kd, sd), CLLM_OK);
  /* migrate the slot of block 0's key: first half way (ASK), then fully (MOVED) */
  cllm_kv_shape_t sh = {2, 1, 4, 4, 4, 0};
  sh.fingerprint = cllm_kv_tier_fingerprint(&sh, "test-model", 10);
  uint64_t ns = cllm_kv_tier_namespace(0, 0);
  uint8_t root[16], d0[16];
  char k0[CLLM_KV_TIER_KEY_MAX];
  cllm_kv_tier_root_digest(sh.fingerprint, ns, root);
  cllm_kv_tier_chain_digest(root, tok, 4, d0);
  cllm_kv_tier_key(sh.fingerprint, ns, d0, k0);
  long slot = (long)cllm_kv_redis_key_slot(k0, strlen(k0));
  int src = -1;
  for (int i = 0; i < 3; i++)
    if (keys_in_slot(&n[i], slot) > 0) src = i;
  cr_assert_geq(src, 0);
  int dst = (src + 1) % 3;
  char sid[64], did[64], line[200];
  node_id(&n[src], sid);
  node_id(&n[dst], did);
  snprintf(line, sizeof line, "CLUSTER SETSLOT %ld IMPORTING %s", slot, sid);
  cmd_ok(&n[dst], line, NULL);
  snprintf(line, sizeof line, "CLUSTER SETSLOT %ld MIGRATING %s", slot, did);
  cmd_ok(&n[src], line, NULL);
  redisReply *mr = cmd(&n[src], "MIGRATE 127.0.0.1 %d %s 0 5000", n[dst].port, k0);
  cr_assert_eq(mr->type, REDIS_REPLY_STATUS, "%s", mr->str);
  freeReplyObject(mr);
  cr_assert_eq(keys_in_slot(&n[src], slot), 0);
  cr_assert_eq(keys_in_slot(&n[dst], slot), 1);
  cllm_kv_tier_t *tb = redis_tier(r.b, seeds, true, NULL, NULL);
  cllm_kv_seq_t sb;
  cr_assert_eq(fetch(r.b, tb, "b", tok, 200, 0, &sb), 196);  // block 0 through ASK
  expect_rows(r.b, sb, tok, 196);
  cr_assert_eq(cllm_kv_seq_close(r.b, sb), CLLM_OK);
  for (int i = 0; i < 3; i++) {
    snprintf(line, sizeof line, "CLUSTER SETSLOT %ld NODE %s", slot, did);
    cmd_ok(&n[i], line, NULL);
  }
  cr_assert_eq(fetch(kd, td, "d", tok, 200, 0, &sd), 196);  // stale map: MOVED
  expect_rows(kd, sd, tok, 196);
  cr_assert_eq(cllm_kv_seq_close(kd, sd), CLLM_OK);
  cllm_kv_stats_t st = stats(kd);
  cr_assert_eq(st.tier_remote_hit_tokens, 196);
  cr_assert_eq(st.tier_errors + st.tier_timeouts + st.tier_rejects_record, 0);
  check(kd);
  cllm_kv_tier_destroy(td);
  cllm_kv_cache_destroy(kd);
  cllm_kv_tier_destroy(tb);
  cllm_kv_tier_destroy(ta);
  for (int i = 0; i < 3; i++) {
    srv_stop(&n[i]);
    char f[96];
    snprintf(f, sizeof f, "%s/nodes.conf", n[i].dir);
    unlink(f);
    rmdir(n[i].dir);
  }
  rig_down(&r);
}

/* ---- bad input ------------------------------------------------------------------------------ */

Test(kv_redis, config_validation_and_key_slots) {
  cllm_kv_redis_config_t c = cllm_kv_redis_config_default();
  cllm_kv_store_t st;
  cr_assert_eq(cllm_kv_store_redis_create(&c, &st), CLLM_EINVAL);  // no endpoint
  cr_assert_eq(cllm_kv_store_redis_create(NULL, &st), CLLM_EINVAL);
  const char *bad[] = {"", "host", "host:", "host:0", "host:70000", "redis://:5", "unix:",
                       "a:1,b:2" /* two seeds, standalone */};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    c.endpoint = bad[i];
    cr_assert_eq(cllm_kv_store_redis_create(&c, &st), CLLM_EINVAL, "%s", bad[i]);
  }
  char longp[200];
  memset(longp, 'x', sizeof longp);
  memcpy(longp, "unix:/", 6);
  longp[199] = '\0';
  c.endpoint = longp;
  cr_assert_eq(cllm_kv_store_redis_create(&c, &st), CLLM_EINVAL);
  c.endpoint = "a:1,b:2";
  c.cluster = true;
  cr_assert_eq(cllm_kv_store_redis_create(&c, &st), CLLM_OK);
  st.ops->close(st.user);
  /* struct_size: an older (smaller) config gets the defaults for what it lacks, a
   * newer one with a non-zero unknown tail is refused, an unset size is refused */
  cllm_kv_redis_config_t old = cllm_kv_redis_config_default();
  old.endpoint = "127.0.0.1:7";
  old.cluster = true;  /* past the older size: the default (standalone) applies */
  old.struct_size = offsetof(cllm_kv_redis_config_t, cluster);
  cr_assert_eq(cllm_kv_store_redis_create(&old, &st), CLLM_OK);
  st.ops->close(st.user);
  old.endpoint = "a:1,b:2";  /* two seeds: refused unless cluster, which it lacks */
  cr_assert_eq(cllm_kv_store_redis_create(&old, &st), CLLM_EINVAL);
  old.struct_size = 0;
  cr_assert_eq(cllm_kv_store_redis_create(&old, &st), CLLM_EINVAL);
  struct {
    cllm_kv_redis_config_t c;
    uint64_t newer;
  } nc = {.c = cllm_kv_redis_config_default()};
  nc.c.endpoint = "127.0.0.1:7";
  nc.c.struct_size = sizeof nc;
  cr_assert_eq(cllm_kv_store_redis_create(&nc.c, &st), CLLM_OK, "a zero tail is accepted");
  st.ops->close(st.user);
  nc.newer = 1;
  cr_assert_eq(cllm_kv_store_redis_create(&nc.c, &st), CLLM_EINVAL, "a non-zero tail is not");
  /* the reference slots (Redis Cluster specification) */
  cr_assert_eq(cllm_kv_redis_key_slot("123456789", 9), 0x31c3 & 16383);
  cr_assert_eq(cllm_kv_redis_key_slot("foo", 3), 12182);
  cr_assert_eq(cllm_kv_redis_key_slot("{user1000}.following", 20),
               cllm_kv_redis_key_slot("user1000", 8));
}
