/* The in-process fake store of the remote tier: a chained hash map under one
 * mutex behind cllm_kv_store_ops_t, with injectable failures, delays, a size
 * limit (the Redis -OOM answer) and a denied key prefix (the NOPERM answer).
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cllm/kv_tier.h>

#include "internal/fault.h"
#include "internal/util.h"

#define FAKE_BUCKETS 4096u

typedef struct fake_ent {
  struct fake_ent *next;
  size_t len;
  void *val;
  char key[];
} fake_ent_t;

struct cllm_kv_fake {
  pthread_mutex_t lock;
  fake_ent_t *b[FAKE_BUCKETS];
  size_t count, bytes;
  unsigned fail_n;
  cllm_status_t fail_rc;
  uint32_t delay_us;
  bool down;
  size_t max_bytes;
  char *deny;
  pthread_cond_t gate_cv;  // hold: operations wait here until released
  bool hold;
  unsigned waiting;
};

static uint32_t key_bucket(const char *k) {
  uint64_t h = 1469598103934665603ULL;
  for (; *k; k++) h = (h ^ (unsigned char)*k) * 1099511628211ULL;
  return (uint32_t)(h ^ (h >> 32)) & (FAKE_BUCKETS - 1);
}

static fake_ent_t **find_locked(cllm_kv_fake_t *f, const char *key) {
  fake_ent_t **pp = &f->b[key_bucket(key)];
  while (*pp != NULL && strcmp((*pp)->key, key) != 0) pp = &(*pp)->next;
  return pp;
}

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* The common prologue of every operation: delay (deadline_ns < 0: none, for
 * connect), injected failure, down. */
static cllm_status_t fake_enter(cllm_kv_fake_t *f, int64_t deadline_ns) {
  pthread_mutex_lock(&f->lock);
  uint32_t delay = deadline_ns < 0 ? 0 : f->delay_us;
  cllm_status_t rc = CLLM_OK;
  if (f->fail_n > 0) {
    f->fail_n--;
    rc = f->fail_rc;
  } else if (f->down) {
    rc = CLLM_EIO;
  }
  if (deadline_ns >= 0 && f->hold) {
    f->waiting++;
    while (f->hold) {
      struct timespec ts;  // CLOCK_MONOTONIC gate_cv: wake at the deadline
      int64_t dl = deadline_ns > 0 ? deadline_ns : now_ns() + 1000000000LL;
      ts.tv_sec = (time_t)(dl / 1000000000LL);
      ts.tv_nsec = (long)(dl % 1000000000LL);
      if (pthread_cond_timedwait(&f->gate_cv, &f->lock, &ts) != 0 && deadline_ns > 0 &&
          now_ns() >= deadline_ns) {
        rc = CLLM_EBUSY;
        break;
      }
    }
    f->waiting--;
  }
  pthread_mutex_unlock(&f->lock);
  if (rc == CLLM_EBUSY) return rc;
  if (delay > 0) {
    int64_t until = now_ns() + (int64_t)delay * 1000;
    bool late = deadline_ns > 0 && until > deadline_ns;
    if (late) until = deadline_ns;
    int64_t left = until - now_ns();
    if (left > 0) {
      struct timespec ts = {(time_t)(left / 1000000000LL), (long)(left % 1000000000LL)};
      while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
      }
    }
    if (late) return CLLM_EBUSY;
  }
  return rc;
}

static cllm_status_t fake_connect(void *user, void **conn) {
  cllm_status_t rc = fake_enter(user, -1);
  *conn = rc == CLLM_OK ? user : NULL;
  return rc;
}

static void fake_disconnect(void *user, void *conn) { (void)user, (void)conn; }

static cllm_status_t fake_exists(void *user, void *conn, const char *const *keys, size_t n,
                                 uint8_t *present, int64_t deadline_ns) {
  (void)conn;
  cllm_kv_fake_t *f = user;
  cllm_status_t rc = fake_enter(f, deadline_ns);
  if (rc != CLLM_OK) return rc;
  pthread_mutex_lock(&f->lock);
  for (size_t i = 0; i < n; i++) present[i] = *find_locked(f, keys[i]) != NULL;
  pthread_mutex_unlock(&f->lock);
  return CLLM_OK;
}

static cllm_status_t get_locked(cllm_kv_fake_t *f, const char *key, void *buf, size_t cap,
                                size_t *len) {
  fake_ent_t *e = *find_locked(f, key);
  if (e == NULL) return CLLM_ENOTFOUND;
  *len = e->len;
  if (e->len > cap) return CLLM_ERANGE;
  if (e->len > 0) memcpy(buf, e->val, e->len);
  return CLLM_OK;
}

static cllm_status_t fake_get(void *user, void *conn, const char *key, void *buf, size_t cap,
                              size_t *len, int64_t deadline_ns) {
  (void)conn;
  cllm_kv_fake_t *f = user;
  cllm_status_t rc = fake_enter(f, deadline_ns);
  if (rc != CLLM_OK) return rc;
  pthread_mutex_lock(&f->lock);
  rc = get_locked(f, key, buf, cap, len);
  pthread_mutex_unlock(&f->lock);
  return rc;
}

/* Set key (replace = overwrite an existing value, else leave it). */
static cllm_status_t set_locked(cllm_kv_fake_t *f, const char *key, const void *val, size_t len,
                                bool replace) {
  fake_ent_t **pp = find_locked(f, key);
  if (*pp != NULL && !replace) return CLLM_OK;
  void *copy = CLLM_FAULT(CLLM_FAULT_MALLOC) ? NULL : malloc(len == 0 ? 1 : len);
  if (copy == NULL) return CLLM_ENOMEM;
  if (len > 0) memcpy(copy, val, len);
  fake_ent_t *e = *pp;
  if (e == NULL) {
    size_t kl = strlen(key);
    e = CLLM_FAULT(CLLM_FAULT_MALLOC) ? NULL : malloc(sizeof *e + kl + 1);
    if (e == NULL) {
      free(copy);
      return CLLM_ENOMEM;
    }
    memcpy(e->key, key, kl + 1);
    e->next = NULL;
    e->val = NULL;
    e->len = 0;
    *pp = e;
    f->count++;
  }
  f->bytes = f->bytes - e->len + len;
  free(e->val);
  e->val = copy;
  e->len = len;
  return CLLM_OK;
}

static cllm_status_t fake_put(void *user, void *conn, const char *key, const void *val,
                              size_t len, int64_t deadline_ns) {
  (void)conn;
  cllm_kv_fake_t *f = user;
  cllm_status_t rc = fake_enter(f, deadline_ns);
  if (rc != CLLM_OK) return rc;
  pthread_mutex_lock(&f->lock);
  if (f->deny != NULL && strncmp(key, f->deny, strlen(f->deny)) == 0) rc = CLLM_ESTATE;
  else if (*find_locked(f, key) != NULL) rc = CLLM_OK;
  else if (f->max_bytes != 0 && f->bytes + len > f->max_bytes) rc = CLLM_ELIMIT;
  else rc = set_locked(f, key, val, len, false);
  pthread_mutex_unlock(&f->lock);
  return rc;
}

static cllm_status_t fake_put_batch(void *user, void *conn, const char *const *keys,
                                    const void *const *vals, const size_t *lens, size_t n,
                                    cllm_status_t *rcs, int64_t deadline_ns) {
  for (size_t i = 0; i < n; i++) {
    rcs[i] = fake_put(user, conn, keys[i], vals[i], lens[i], deadline_ns);
    if (rcs[i] == CLLM_EIO || rcs[i] == CLLM_EBUSY) {  // the pipeline ends here
      for (size_t k = i + 1; k < n; k++) rcs[k] = rcs[i];
      return rcs[i];
    }
  }
  return CLLM_OK;
}

static cllm_status_t fake_ping(void *user, void *conn, int64_t deadline_ns) {
  (void)conn;
  return fake_enter(user, deadline_ns);
}

static void fake_close(void *user) {
  cllm_kv_fake_t *f = user;
  for (uint32_t i = 0; i < FAKE_BUCKETS; i++) {
    for (fake_ent_t *e = f->b[i], *n; e != NULL; e = n) {
      n = e->next;
      free(e->val);
      free(e);
    }
  }
  free(f->deny);
  pthread_cond_destroy(&f->gate_cv);
  pthread_mutex_destroy(&f->lock);
  free(f);
}

static const cllm_kv_store_ops_t fake_ops = {
    .connect = fake_connect,
    .disconnect = fake_disconnect,
    .exists = fake_exists,
    .get = fake_get,
    .put = fake_put,
    .ping = fake_ping,
    .close = fake_close,
    .put_batch = fake_put_batch,
};

cllm_status_t cllm_kv_store_fake_create(cllm_kv_store_t *out, cllm_kv_fake_t **fake) {
  if (out == NULL) return CLLM_EINVAL;
  cllm_kv_fake_t *f = CLLM_FAULT(CLLM_FAULT_MALLOC) ? NULL : calloc(1, sizeof *f);
  if (f == NULL) return CLLM_ENOMEM;
  pthread_condattr_t ca;
  bool ok = pthread_condattr_init(&ca) == 0;
  if (ok) {
    (void)pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    ok = pthread_cond_init(&f->gate_cv, &ca) == 0;
    pthread_condattr_destroy(&ca);
  }
  if (ok && pthread_mutex_init(&f->lock, NULL) != 0) {
    pthread_cond_destroy(&f->gate_cv);
    ok = false;
  }
  if (!ok) {
    free(f);
    return CLLM_ENOMEM;
  }
  out->ops = &fake_ops;
  out->user = f;
  if (fake != NULL) *fake = f;
  return CLLM_OK;
}

void cllm_kv_fake_fail_next(cllm_kv_fake_t *f, unsigned n, cllm_status_t rc) {
  if (f == NULL) return;
  pthread_mutex_lock(&f->lock);
  f->fail_n = rc == CLLM_OK ? 0 : n;
  f->fail_rc = rc;
  pthread_mutex_unlock(&f->lock);
}

void cllm_kv_fake_set_delay(cllm_kv_fake_t *f, uint32_t delay_us) {
  if (f == NULL) return;
  pthread_mutex_lock(&f->lock);
  f->delay_us = delay_us;
  pthread_mutex_unlock(&f->lock);
}

void cllm_kv_fake_hold(cllm_kv_fake_t *f, bool hold) {
  if (f == NULL) return;
  pthread_mutex_lock(&f->lock);
  f->hold = hold;
  if (!hold) pthread_cond_broadcast(&f->gate_cv);
  pthread_mutex_unlock(&f->lock);
}

unsigned cllm_kv_fake_waiting(cllm_kv_fake_t *f) {
  if (f == NULL) return 0;
  pthread_mutex_lock(&f->lock);
  unsigned n = f->waiting;
  pthread_mutex_unlock(&f->lock);
  return n;
}

void cllm_kv_fake_set_down(cllm_kv_fake_t *f, bool down) {
  if (f == NULL) return;
  pthread_mutex_lock(&f->lock);
  f->down = down;
  pthread_mutex_unlock(&f->lock);
}

void cllm_kv_fake_set_max_bytes(cllm_kv_fake_t *f, size_t max_bytes) {
  if (f == NULL) return;
  pthread_mutex_lock(&f->lock);
  f->max_bytes = max_bytes;
  pthread_mutex_unlock(&f->lock);
}

cllm_status_t cllm_kv_fake_set_deny_prefix(cllm_kv_fake_t *f, const char *prefix) {
  if (f == NULL) return CLLM_EINVAL;
  char *copy = NULL;
  if (prefix != NULL) {
    size_t n = strlen(prefix);
    copy = CLLM_FAULT(CLLM_FAULT_MALLOC) ? NULL : malloc(n + 1);
    if (copy == NULL) return CLLM_ENOMEM;
    memcpy(copy, prefix, n + 1);
  }
  pthread_mutex_lock(&f->lock);
  free(f->deny);
  f->deny = copy;
  pthread_mutex_unlock(&f->lock);
  return CLLM_OK;
}

cllm_status_t cllm_kv_fake_raw_set(cllm_kv_fake_t *f, const char *key, const void *val,
                                   size_t len) {
  if (f == NULL || key == NULL || (val == NULL && len > 0)) return CLLM_EINVAL;
  pthread_mutex_lock(&f->lock);
  cllm_status_t rc = set_locked(f, key, val, len, true);
  pthread_mutex_unlock(&f->lock);
  return rc;
}

cllm_status_t cllm_kv_fake_raw_get(cllm_kv_fake_t *f, const char *key, void *buf, size_t cap,
                                   size_t *len) {
  if (f == NULL || key == NULL || len == NULL || (buf == NULL && cap > 0)) return CLLM_EINVAL;
  pthread_mutex_lock(&f->lock);
  cllm_status_t rc = get_locked(f, key, buf, cap, len);
  pthread_mutex_unlock(&f->lock);
  return rc;
}

cllm_status_t cllm_kv_fake_raw_del(cllm_kv_fake_t *f, const char *key) {
  if (f == NULL || key == NULL) return CLLM_EINVAL;
  pthread_mutex_lock(&f->lock);
  fake_ent_t **pp = find_locked(f, key), *e = *pp;
  if (e != NULL) {
    *pp = e->next;
    f->count--;
    f->bytes -= e->len;
    free(e->val);
    free(e);
  }
  pthread_mutex_unlock(&f->lock);
  return e != NULL ? CLLM_OK : CLLM_ENOTFOUND;
}

size_t cllm_kv_fake_count(cllm_kv_fake_t *f, size_t *bytes) {
  if (f == NULL) return 0;
  pthread_mutex_lock(&f->lock);
  size_t n = f->count;
  if (bytes != NULL) *bytes = f->bytes;
  pthread_mutex_unlock(&f->lock);
  return n;
}

cllm_status_t cllm_kv_fake_key_at(cllm_kv_fake_t *f, size_t i, char *buf, size_t cap) {
  if (f == NULL || buf == NULL) return CLLM_EINVAL;
  cllm_status_t rc = CLLM_ENOTFOUND;
  pthread_mutex_lock(&f->lock);
  for (uint32_t k = 0; k < FAKE_BUCKETS && rc == CLLM_ENOTFOUND; k++) {
    for (fake_ent_t *e = f->b[k]; e != NULL; e = e->next) {
      if (i-- > 0) continue;
      size_t n = strlen(e->key);
      if (n + 1 > cap) {
        rc = CLLM_ERANGE;
      } else {
        memcpy(buf, e->key, n + 1);
        rc = CLLM_OK;
      }
      break;
    }
  }
  pthread_mutex_unlock(&f->lock);
  return rc;
}
