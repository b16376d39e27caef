/* The Redis backend of the KV cache's remote tier (see cllm/kv_redis.h): hiredis
 * synchronous contexts, one per node per tier connection, standalone or Redis
 * Cluster (slot map from CLUSTER SLOTS, MOVED / ASK redirects).
 *
 * Deadlines: before every blocking hiredis call the socket timeout is set to the
 * time left; a call that fails marks the node's context dead (it is freed; the
 * tier drops the whole connection after any EIO / EBUSY answer).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <time.h>

#include <hiredis/hiredis.h>

#include <cllm/kv_redis.h>

#include "../internal/versioned.h"

#define MAX_SEEDS 16
#define MAX_NODES 64
#define N_SLOTS 16384
#define NO_NODE 0xffu
#define MAX_HOPS 5

typedef struct ep {
  char host[256];  // host name or address; or the unix socket path
  int port;        // 0: unix socket
} ep_t;

typedef struct rstore {
  ep_t seed[MAX_SEEDS];
  int nseeds;
  bool cluster;
  char *user, *pass;
  int64_t cto_ns;
} rstore_t;

typedef struct node {
  ep_t ep;
  redisContext *c;
} node_t;

typedef struct rconn {
  rstore_t *s;
  node_t node[MAX_NODES];
  int nn;
  bool map_ok;
  uint8_t slot_node[N_SLOTS];
} rconn_t;

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* ---- CRC16 (XMODEM) and key slots --------------------------------------------- */

static uint16_t crc16(const char *p, size_t n) {
  uint16_t crc = 0;
  for (size_t i = 0; i < n; i++) {
    crc ^= (uint16_t)((uint8_t)p[i] << 8);
    for (int b = 0; b < 8; b++) crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
  }
  return crc;
}

uint32_t cllm_kv_redis_key_slot(const char *key, size_t len) {
  if (key == NULL) return 0;
  const char *open = memchr(key, '{', len);
  if (open != NULL) {
    size_t start = (size_t)(open - key) + 1;
    const char *close = memchr(key + start, '}', len - start);
    if (close != NULL && close > key + start) return crc16(key + start, (size_t)(close - key - start)) & (N_SLOTS - 1);
  }
  return crc16(key, len) & (N_SLOTS - 1);
}

/* ---- endpoints ---------------------------------------------------------------- */

static bool parse_ep(const char *s, size_t n, ep_t *ep) {
  memset(ep, 0, sizeof *ep);
  if (n >= 5 && strncmp(s, "unix:", 5) == 0) {
    s += 5, n -= 5;
    if (n >= 2 && s[0] == '/' && s[1] == '/') s += 2, n -= 2;  // unix://path
    if (n == 0 || n >= 108) return false;
    memcpy(ep->host, s, n);
    return true;
  }
  if (n >= 8 && strncmp(s, "redis://", 8) == 0) s += 8, n -= 8;
  const char *colon = NULL;
  for (size_t i = 0; i < n; i++)
    if (s[i] == ':') colon = s + i;
  if (colon == NULL || colon == s || (size_t)(colon - s) >= sizeof ep->host) return false;
  char port[8] = {0};
  size_t pl = n - (size_t)(colon - s) - 1;
  if (pl == 0 || pl >= sizeof port) return false;
  memcpy(port, colon + 1, pl);
  char *end;
  long p = strtol(port, &end, 10);
  if (*end != '\0' || p <= 0 || p > 65535) return false;
  memcpy(ep->host, s, (size_t)(colon - s));
  ep->port = (int)p;
  return true;
}

static bool ep_eq(const ep_t *a, const ep_t *b) {
  return a->port == b->port && strcmp(a->host, b->host) == 0;
}

/* ---- contexts --------------------------------------------------------------------- */

static struct timeval tv_of(int64_t ns) {
  if (ns < 1000) ns = 1000;
  return (struct timeval){(time_t)(ns / 1000000000LL), (suseconds_t)((ns % 1000000000LL) / 1000)};
}

/* The status of a failed hiredis call on c (errno still from that call). */
static cllm_status_t ctx_status(const redisContext *c, int err) {
  if (c->err == REDIS_ERR_IO && (err == EAGAIN || err == EWOULDBLOCK || err == ETIMEDOUT ||
                                 err == EINPROGRESS))
    return CLLM_EBUSY;
  if (strstr(c->errstr, "timed out") != NULL || strstr(c->errstr, "temporarily") != NULL)
    return CLLM_EBUSY;
  return CLLM_EIO;
}

static void node_drop(node_t *nd) {
  if (nd->c != NULL) redisFree(nd->c);
  nd->c = NULL;
}

static cllm_status_t reply_error(const redisReply *r) {
  if (strncmp(r->str, "OOM", 3) == 0) return CLLM_ELIMIT;
  if (strncmp(r->str, "NOPERM", 6) == 0) return CLLM_ESTATE;
  return CLLM_EIO;
}

/* Set the socket timeout to what is left before dl. */
static cllm_status_t arm(redisContext *c, int64_t dl) {
  int64_t left = dl - now_ns();
  if (left <= 0) return CLLM_EBUSY;
  return redisSetTimeout(c, tv_of(left)) == REDIS_OK ? CLLM_OK : CLLM_EIO;
}

/* Read one reply from node nd; on failure the context is dropped. */
static cllm_status_t node_read(node_t *nd, int64_t dl, redisReply **out) {
  *out = NULL;
  cllm_status_t rc = arm(nd->c, dl);
  if (rc != CLLM_OK) {
    node_drop(nd);
    return rc;
  }
  void *r = NULL;
  errno = 0;
  if (redisGetReply(nd->c, &r) != REDIS_OK || r == NULL) {
    rc = ctx_status(nd->c, errno);
    node_drop(nd);
    return rc;
  }
  *out = r;
  return CLLM_OK;
}

static cllm_status_t node_open(rconn_t *k, node_t *nd, int64_t dl) {
  if (nd->c != NULL) return CLLM_OK;
  int64_t left = dl - now_ns();
  if (left <= 0) return CLLM_EBUSY;
  if (left > k->s->cto_ns) left = k->s->cto_ns;
  redisContext *c = nd->ep.port == 0 ? redisConnectUnixWithTimeout(nd->ep.host, tv_of(left))
                                     : redisConnectWithTimeout(nd->ep.host, nd->ep.port, tv_of(left));
  if (c == NULL) return CLLM_EIO;
  if (c->err) {
    cllm_status_t rc = ctx_status(c, errno);
    redisFree(c);
    return rc;
  }
  nd->c = c;
  if (k->s->pass != NULL) {
    const char *argv[3] = {"AUTH", k->s->user ? k->s->user : k->s->pass, k->s->pass};
    int argc = k->s->user ? 3 : 2;
    redisReply *r;
    redisAppendCommandArgv(c, argc, argv, NULL);
    cllm_status_t rc = node_read(nd, dl, &r);
    if (rc != CLLM_OK) return rc;
    bool ok = r->type == REDIS_REPLY_STATUS;
    freeReplyObject(r);
    if (!ok) {
      node_drop(nd);
      return CLLM_ESTATE;
    }
  }
  return CLLM_OK;
}

static int node_find_or_add(rconn_t *k, const ep_t *ep) {
  for (int i = 0; i < k->nn; i++)
    if (ep_eq(&k->node[i].ep, ep)) return i;
  if (k->nn == MAX_NODES) return -1;
  k->node[k->nn].ep = *ep;
  k->node[k->nn].c = NULL;
  return k->nn++;
}

/* ---- the cluster map --------------------------------------------------------------- */

static cllm_status_t apply_slots(rconn_t *k, const redisReply *r, const ep_t *asked) {
  if (r->type != REDIS_REPLY_ARRAY) return CLLM_EIO;
  memset(k->slot_node, NO_NODE, sizeof k->slot_node);
  for (size_t i = 0; i < r->elements; i++) {
    const redisReply *e = r->element[i];
    if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 || e->element[2]->type != REDIS_REPLY_ARRAY ||
        e->element[2]->elements < 2)
      return CLLM_EIO;
    long long lo = e->element[0]->integer, hi = e->element[1]->integer;
    const redisReply *m = e->element[2];
    ep_t ep = {{0}, (int)m->element[1]->integer};
    if (m->element[0]->type != REDIS_REPLY_STRING || m->element[0]->len == 0) snprintf(ep.host, sizeof ep.host, "%s", asked->host);
    else snprintf(ep.host, sizeof ep.host, "%.*s", (int)m->element[0]->len, m->element[0]->str);
    int idx = node_find_or_add(k, &ep);
    if (idx < 0 || lo < 0 || hi >= N_SLOTS || lo > hi) return CLLM_EIO;
    for (long long s = lo; s <= hi; s++) k->slot_node[s] = (uint8_t)idx;
  }
  k->map_ok = true;
  return CLLM_OK;
}

/* Read CLUSTER SLOTS from any node (known ones first, then the seeds). */
static cllm_status_t refresh_map(rconn_t *k, int64_t dl) {
  cllm_status_t last = CLLM_EIO;
  int n_known = k->nn;
  for (int pass = 0; pass < 2; pass++) {
    int n = pass == 0 ? n_known : k->s->nseeds;
    for (int i = 0; i < n; i++) {
      int idx = pass == 0 ? i : node_find_or_add(k, &k->s->seed[i]);
      if (idx < 0) continue;
      node_t *nd = &k->node[idx];
      if ((last = node_open(k, nd, dl)) != CLLM_OK) {
        if (last == CLLM_EBUSY) return last;
        continue;
      }
      const char *argv[2] = {"CLUSTER", "SLOTS"};
      redisAppendCommandArgv(nd->c, 2, argv, NULL);
      redisReply *r;
      if ((last = node_read(nd, dl, &r)) != CLLM_OK) {
        if (last == CLLM_EBUSY) return last;
        continue;
      }
      ep_t asked = nd->ep;
      last = apply_slots(k, r, &asked);
      freeReplyObject(r);
      if (last == CLLM_OK) return CLLM_OK;
    }
  }
  return last;
}

/* The node for a key (0 standalone). */
static cllm_status_t route(rconn_t *k, const char *key, int64_t dl, int *node) {
  if (!k->s->cluster) {
    *node = 0;
    return CLLM_OK;
  }
  uint32_t slot = cllm_kv_redis_key_slot(key, strlen(key));
  if (!k->map_ok || k->slot_node[slot] == NO_NODE) {
    cllm_status_t rc = refresh_map(k, dl);
    if (rc != CLLM_OK) return rc;
    if (k->slot_node[slot] == NO_NODE) return CLLM_EIO;  // slot not served
  }
  *node = k->slot_node[slot];
  return CLLM_OK;
}

/* A MOVED / ASK error: the target node; *moved tells which. Not a redirect: -1. */
static int redirect(rconn_t *k, const redisReply *r, bool *moved) {
  if (r->type != REDIS_REPLY_ERROR) return -1;
  bool m = strncmp(r->str, "MOVED ", 6) == 0, a = strncmp(r->str, "ASK ", 4) == 0;
  if (!m && !a) return -1;
  char *p = strchr(r->str + (m ? 6 : 4), ' ');
  if (p == NULL) return -1;
  long slot = strtol(r->str + (m ? 6 : 4), NULL, 10);
  ep_t ep;
  if (!parse_ep(p + 1, strlen(p + 1), &ep)) return -1;
  int idx = node_find_or_add(k, &ep);
  if (idx >= 0 && m && slot >= 0 && slot < N_SLOTS) {
    k->slot_node[slot] = (uint8_t)idx;
    k->map_ok = false;  // refreshed on the next miss of the map
  }
  *moved = m;
  return idx;
}

/* One command on the key's node, following redirects. *out: the reply (caller frees). */
static cllm_status_t run1(rconn_t *k, const char *key, int argc, const char **argv,
                          const size_t *lens, int64_t dl, redisReply **out) {
  int node;
  cllm_status_t rc = route(k, key, dl, &node);
  if (rc != CLLM_OK) return rc;
  bool asking = false;
  for (int hop = 0; hop < MAX_HOPS; hop++) {
    node_t *nd = &k->node[node];
    if ((rc = node_open(k, nd, dl)) != CLLM_OK) return rc;
    if (asking) {
      const char *ask[1] = {"ASKING"};
      redisAppendCommandArgv(nd->c, 1, ask, NULL);
    }
    redisAppendCommandArgv(nd->c, argc, argv, lens);
    redisReply *r;
    if (asking) {
      if ((rc = node_read(nd, dl, &r)) != CLLM_OK) return rc;
      freeReplyObject(r);
    }
    if ((rc = node_read(nd, dl, &r)) != CLLM_OK) return rc;
    bool moved = false;
    int to = redirect(k, r, &moved);
    if (to < 0) {
      *out = r;
      return CLLM_OK;
    }
    freeReplyObject(r);
    node = to;
    asking = !moved;
  }
  return CLLM_EIO;
}

/* ---- the store operations ------------------------------------------------------------ */

static int64_t dl_of(int64_t deadline_ns) {
  return deadline_ns > 0 ? deadline_ns : now_ns() + 5000000000LL;
}

static void r_disconnect(void *user, void *conn) {
  (void)user;
  rconn_t *k = conn;
  if (k == NULL) return;
  for (int i = 0; i < k->nn; i++) node_drop(&k->node[i]);
  free(k);
}

static cllm_status_t r_connect(void *user, void **conn) {
  rstore_t *s = user;
  *conn = NULL;
  rconn_t *k = calloc(1, sizeof *k);
  if (k == NULL) return CLLM_ENOMEM;
  k->s = s;
  memset(k->slot_node, NO_NODE, sizeof k->slot_node);
  int64_t dl = now_ns() + s->cto_ns;
  cllm_status_t rc;
  if (s->cluster) {
    rc = refresh_map(k, dl);
  } else {
    k->node[0].ep = s->seed[0];
    k->nn = 1;
    rc = node_open(k, &k->node[0], dl);
  }
  if (rc != CLLM_OK) {
    r_disconnect(user, k);
    return rc;
  }
  *conn = k;
  return CLLM_OK;
}

static cllm_status_t r_exists(void *user, void *conn, const char *const *keys, size_t n,
                              uint8_t *present, int64_t deadline_ns) {
  (void)user;
  rconn_t *k = conn;
  int64_t dl = dl_of(deadline_ns);
  int nodes[64];
  cllm_status_t rc = CLLM_OK;
  for (size_t i0 = 0; i0 < n && rc == CLLM_OK; i0 += 64) {
    size_t m = n - i0 < 64 ? n - i0 : 64;
    for (size_t i = 0; i < m && rc == CLLM_OK; i++) {  // pipeline every key on its node
      if ((rc = route(k, keys[i0 + i], dl, &nodes[i])) != CLLM_OK) break;
      node_t *nd = &k->node[nodes[i]];
      if ((rc = node_open(k, nd, dl)) != CLLM_OK) break;
      const char *argv[2] = {"EXISTS", keys[i0 + i]};
      redisAppendCommandArgv(nd->c, 2, argv, NULL);
    }
    bool redo[64] = {false};
    for (size_t i = 0; i < m && rc == CLLM_OK; i++) {  // every queued reply first
      redisReply *r;
      if ((rc = node_read(&k->node[nodes[i]], dl, &r)) != CLLM_OK) break;
      bool moved;
      if (redirect(k, r, &moved) >= 0) redo[i] = true;  // asked again below, on its own
      else if (r->type == REDIS_REPLY_INTEGER) present[i0 + i] = r->integer > 0;
      else rc = r->type == REDIS_REPLY_ERROR ? reply_error(r) : CLLM_EIO;
      freeReplyObject(r);
    }
    for (size_t i = 0; i < m && rc == CLLM_OK; i++) {
      if (!redo[i]) continue;
      const char *argv[2] = {"EXISTS", keys[i0 + i]};
      redisReply *r;
      if ((rc = run1(k, keys[i0 + i], 2, argv, NULL, dl, &r)) != CLLM_OK) break;
      if (r->type == REDIS_REPLY_INTEGER) present[i0 + i] = r->integer > 0;
      else rc = r->type == REDIS_REPLY_ERROR ? reply_error(r) : CLLM_EIO;
      freeReplyObject(r);
    }
  }
  if (rc != CLLM_OK)  // replies may still be queued: start clean next time
    for (int i = 0; i < k->nn; i++) node_drop(&k->node[i]);
  return rc;
}

static cllm_status_t r_get(void *user, void *conn, const char *key, void *buf, size_t cap,
                           size_t *len, int64_t deadline_ns) {
  (void)user;
  const char *argv[2] = {"GET", key};
  redisReply *r;
  cllm_status_t rc = run1(conn, key, 2, argv, NULL, dl_of(deadline_ns), &r);
  if (rc != CLLM_OK) return rc;
  if (r->type == REDIS_REPLY_NIL) {
    rc = CLLM_ENOTFOUND;
  } else if (r->type == REDIS_REPLY_STRING) {
    *len = r->len;
    if (r->len > cap) rc = CLLM_ERANGE;
    else if (r->len > 0) memcpy(buf, r->str, r->len);
  } else {
    rc = r->type == REDIS_REPLY_ERROR ? reply_error(r) : CLLM_EIO;
  }
  freeReplyObject(r);
  return rc;
}

/* The status of a SET NX reply. */
static cllm_status_t set_status(const redisReply *r) {
  if (r->type == REDIS_REPLY_ERROR) return reply_error(r);
  return r->type == REDIS_REPLY_STATUS || r->type == REDIS_REPLY_NIL ? CLLM_OK : CLLM_EIO;
}

static cllm_status_t r_put(void *user, void *conn, const char *key, const void *val, size_t len,
                           int64_t deadline_ns) {
  (void)user;
  const char *argv[4] = {"SET", key, val, "NX"};
  size_t lens[4] = {3, strlen(key), len, 2};
  redisReply *r;
  cllm_status_t rc = run1(conn, key, 4, argv, lens, dl_of(deadline_ns), &r);
  if (rc != CLLM_OK) return rc;
  rc = set_status(r);
  freeReplyObject(r);
  return rc;
}

/* Write `SET key val NX` straight to node nd's socket (the value is not copied
 * into hiredis's output buffer, which is empty between calls); its reply is read
 * later with node_read. MSG_NOSIGNAL: a vanished server is EIO, never SIGPIPE. */
static cllm_status_t node_send_set(node_t *nd, const char *key, const void *val, size_t len,
                                   int64_t dl) {
  char head[64 + CLLM_KV_TIER_KEY_MAX];
  static const char tail[] = "\r\n$2\r\nNX\r\n";
  size_t kl = strlen(key);
  int hn = snprintf(head, sizeof head, "*4\r\n$3\r\nSET\r\n$%zu\r\n%s\r\n$%zu\r\n", kl, key, len);
  if (hn < 0 || (size_t)hn >= sizeof head) return CLLM_EINVAL;
  struct iovec iov[3] = {{head, (size_t)hn}, {(void *)val, len}, {(void *)tail, sizeof tail - 1}};
  struct msghdr msg = {.msg_iov = iov, .msg_iovlen = 3};
  cllm_status_t rc = CLLM_OK;
  while (msg.msg_iovlen > 0 && rc == CLLM_OK) {
    if ((rc = arm(nd->c, dl)) != CLLM_OK) break;
    ssize_t w = sendmsg(nd->c->fd, &msg, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;  // re-armed
      rc = CLLM_EIO;
      break;
    }
    size_t done = (size_t)w;
    while (msg.msg_iovlen > 0 && done >= msg.msg_iov[0].iov_len) {
      done -= msg.msg_iov[0].iov_len;
      msg.msg_iov++, msg.msg_iovlen--;
    }
    if (msg.msg_iovlen > 0) {
      msg.msg_iov[0].iov_base = (char *)msg.msg_iov[0].iov_base + done;
      msg.msg_iov[0].iov_len -= done;
    }
  }
  if (rc != CLLM_OK) node_drop(nd);
  return rc;
}

/* Pipelined SET NX: commands are written to their keys' nodes while at most
 * PIPE_BYTES are unanswered (one at a time for values that large: the server
 * handles a pipeline of large bulk arguments far slower than single ones), every
 * reply is read in order, and a redirected key is sent again on its own (run1). */
#define PIPE_BYTES ((size_t)1 << 20)
static cllm_status_t r_put_batch(void *user, void *conn, const char *const *keys,
                                 const void *const *vals, const size_t *lens, size_t n,
                                 cllm_status_t *rcs, int64_t deadline_ns) {
  (void)user;
  rconn_t *k = conn;
  int64_t dl = dl_of(deadline_ns);
  cllm_status_t rc = CLLM_OK;
  int nodes[64];
  for (size_t i0 = 0; i0 < n && rc == CLLM_OK; i0 += 64) {
    size_t m = n - i0 < 64 ? n - i0 : 64, sent = 0, got = 0, out = 0;
    bool redo[64] = {false}, answered[64] = {false};
    while (got < m && rc == CLLM_OK) {
      if (sent < m && (sent == got || out + lens[i0 + sent] <= PIPE_BYTES)) {
        size_t i = i0 + sent;
        if ((rc = route(k, keys[i], dl, &nodes[sent])) != CLLM_OK) break;
        node_t *nd = &k->node[nodes[sent]];
        if ((rc = node_open(k, nd, dl)) != CLLM_OK) break;
        if ((rc = node_send_set(nd, keys[i], vals[i], lens[i], dl)) != CLLM_OK) break;
        out += lens[i];
        sent++;
        continue;
      }
      redisReply *r;
      if ((rc = node_read(&k->node[nodes[got]], dl, &r)) != CLLM_OK) break;
      bool moved;
      if (redirect(k, r, &moved) >= 0) redo[got] = true;
      else rcs[i0 + got] = set_status(r), answered[got] = true;
      freeReplyObject(r);
      out -= lens[i0 + got];
      got++;
    }
    for (size_t q = 0; q < m && rc == CLLM_OK; q++) {
      if (!redo[q]) continue;
      size_t i = i0 + q;
      const char *argv[4] = {"SET", keys[i], vals[i], "NX"};
      size_t alen[4] = {3, strlen(keys[i]), lens[i], 2};
      redisReply *r;
      if ((rc = run1(k, keys[i], 4, argv, alen, dl, &r)) != CLLM_OK) break;
      rcs[i] = set_status(r), answered[q] = true;
      freeReplyObject(r);
    }
    if (rc != CLLM_OK)
      for (size_t i = i0; i < n; i++)
        if (i >= i0 + m || !answered[i - i0]) rcs[i] = rc;
  }
  if (rc != CLLM_OK)  // replies may still be queued: start clean next time
    for (int i = 0; i < k->nn; i++) node_drop(&k->node[i]);
  return rc;
}

static cllm_status_t r_ping(void *user, void *conn, int64_t deadline_ns) {
  (void)user;
  rconn_t *k = conn;
  int64_t dl = dl_of(deadline_ns);
  int node = 0;
  if (k->s->cluster) {
    cllm_status_t rc = refresh_map(k, dl);  // also learns a new map
    if (rc != CLLM_OK) return rc;
    for (node = 0; node < k->nn && k->node[node].c == NULL; node++) {
    }
    if (node == k->nn) node = 0;
  }
  node_t *nd = &k->node[node];
  cllm_status_t rc = node_open(k, nd, dl);
  if (rc != CLLM_OK) return rc;
  const char *argv[1] = {"PING"};
  redisAppendCommandArgv(nd->c, 1, argv, NULL);
  redisReply *r;
  if ((rc = node_read(nd, dl, &r)) != CLLM_OK) return rc;
  if (r->type != REDIS_REPLY_STATUS) rc = r->type == REDIS_REPLY_ERROR ? reply_error(r) : CLLM_EIO;
  freeReplyObject(r);
  return rc;
}

static void r_close(void *user) {
  rstore_t *s = user;
  free(s->user);
  free(s->pass);
  free(s);
}

static const cllm_kv_store_ops_t redis_ops = {
    .connect = r_connect,
    .disconnect = r_disconnect,
    .exists = r_exists,
    .get = r_get,
    .put = r_put,
    .ping = r_ping,
    .close = r_close,
    .put_batch = r_put_batch,
};

cllm_kv_redis_config_t cllm_kv_redis_config_default(void) {
  return (cllm_kv_redis_config_t){.struct_size = sizeof(cllm_kv_redis_config_t)};
}

static char *dup_or_null(const char *s, bool *fail) {
  if (s == NULL) return NULL;
  char *d = strdup(s);
  if (d == NULL) *fail = true;
  return d;
}

cllm_status_t cllm_kv_store_redis_create(const cllm_kv_redis_config_t *config,
                                         cllm_kv_store_t *out) {
  /* The struct_size rule of every config (lib/internal/versioned.h); the endpoint has no
   * default, so a NULL config is refused like a config without one. */
  cllm_kv_redis_config_t c = cllm_kv_redis_config_default();
  if (out == NULL || cllm__config_in(&c, sizeof c, config) != CLLM_OK || c.endpoint == NULL)
    return CLLM_EINVAL;
  const cllm_kv_redis_config_t *cfg = &c;
  rstore_t *s = calloc(1, sizeof *s);
  if (s == NULL) return CLLM_ENOMEM;
  const char *p = cfg->endpoint;
  bool bad = false;
  while (*p != '\0' && !bad) {
    const char *comma = strchr(p, ',');
    size_t n = comma ? (size_t)(comma - p) : strlen(p);
    if (s->nseeds == MAX_SEEDS || !parse_ep(p, n, &s->seed[s->nseeds])) bad = true;
    s->nseeds++;
    p += n + (comma != NULL);
  }
  if (bad || s->nseeds == 0 || (!cfg->cluster && s->nseeds != 1)) {
    free(s);
    return CLLM_EINVAL;
  }
  s->cluster = cfg->cluster;
  s->cto_ns = (int64_t)(cfg->connect_timeout_ms ? cfg->connect_timeout_ms : 200) * 1000000LL;
  bool fail = false;
  s->user = dup_or_null(cfg->user, &fail);
  s->pass = dup_or_null(cfg->password, &fail);
  if (fail) {
    r_close(s);
    return CLLM_ENOMEM;
  }
  out->ops = &redis_ops;
  out->user = s;
  return CLLM_OK;
}
