/* Per-thread state of the heaps: finding, creating and retiring a thread's tstate.
 *
 * Lookup
 *   A thread finds its tstate for h through a one-entry TLS cache (h, h->id), and on
 *   a miss through its TLS table (one entry per heaps object it has used). Entries
 *   of destroyed objects are dropped when the table next grows; a TLS entry is only
 *   dereferenced after (h, id) is found live under the lock, or through the cache,
 *   which destroy clears for its own thread (other threads' caches are invalidated
 *   by the id: ids are never reused).
 *
 * Thread exit
 *   mimalloc deletes a thread's explicit heaps when the thread exits (their pages go
 *   to the thread's backing heap and are abandoned; blocks stay valid, any thread may
 *   free them, and another heap of the same arena reclaims the segments). A pthread
 *   key destructor retires each of the thread's tstates: frees the blocks it holds
 *   for kept pages, flushes its batch to the monitor, folds its counters into the
 *   heaps object and frees it. It never touches a mi_heap_t (the destructor may run
 *   after mimalloc's own one has deleted it; freeing blocks is fine then).
 *
 * Metadata (tstates, TLS tables) comes from malloc, so in a process whose malloc is
 * mimalloc it lies in the thread's own segments and is freed by the key destructor.
 * Decision: it stays there; a pool of mapped chunks for it made threads that come
 * and go take fresh region segments instead of reusing the exited threads' ones.
 */
#include <mimalloc.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "internal/fault.h"
#include "internal/util.h"
#include "heap_internal.h"

typedef struct tls_ent {
  cllm_heaps_t *h;
  uint64_t id;
  tstate_t *ts;
} tls_ent_t;

typedef struct tls_table {
  int n, cap;
  tls_ent_t *ent;
} tls_table_t;

static __thread tls_table_t *t_table; /* every tstate of this thread */

static pthread_once_t g_key_once = PTHREAD_ONCE_INIT;
static pthread_key_t g_key;
static bool g_key_ok;

static void key_destructor(void *arg);

static void key_init(void) {
  g_key_ok = pthread_key_create(&g_key, key_destructor) == 0;
  cllm__heap_classes_init();
}

bool cllm__heap_thread_init(void) {
  pthread_once(&g_key_once, key_init);
  return g_key_ok;
}

void *cllm__heap_meta_calloc(size_t n, size_t size) {
  if (CLLM_FAULT(CLLM_FAULT_MALLOC)) return NULL;
  return calloc(n, size);
}

/* Zeroed, 64-byte aligned metadata. */
static void *meta_alloc(size_t n) {
  void *p = NULL;
  size_t sz = (n + 63) & ~(size_t)63;
  if (CLLM_FAULT(CLLM_FAULT_MALLOC) || posix_memalign(&p, 64, sz) != 0) return NULL;
  memset(p, 0, sz);
  return p;
}

static void cache_set(tstate_t *ts) {
  *cllm__heap_cache_mine() = (tls_cache_t){ts->h, ts->h->id, ts};
}

/* Make `node` the node the thread allocates from (its heap: `mh`, may be NULL). */
static void set_home(const cllm_heaps_t *h, tstate_t *ts, int node, mi_heap_t *mh) {
  ts->node = node;
  ts->cur = mh;
  ts->cur_slot = heap_ctr_slot(h, node);
  ts->cur_ctr = &ts->ctr[ts->cur_slot];
  bool region = h->mode != CLLM_HEAP_MODE_PLAIN && h->rstart[node] != NULL;
  ts->home_start = region ? (uintptr_t)h->rstart[node] : 0;
  ts->home_span16 = region ? h->region_bytes >> 4 : 0;
  if (ts->keep != NULL) cllm__heap_keep_view(ts);
}

int cllm__heap_initial_node(const cllm_heaps_t *h) {
  if (h->topo == NULL || h->nodes == 1) return 0;
  int node = cllm_topology_current_node(h->topo);
  if (node < 0) return 0;
  return node % h->nodes;
}

static tls_table_t *table_get(void) {
  tls_table_t *tt = t_table;
  if (tt != NULL) return tt;
  tt = cllm__heap_meta_calloc(1, sizeof *tt);
  if (tt == NULL) return NULL;
  if (pthread_setspecific(g_key, tt) != 0) {
    free(tt);
    return NULL;
  }
  return t_table = tt;
}

/* A zeroed tstate for h on the calling thread, not linked yet. */
static tstate_t *tstate_new(cllm_heaps_t *h, tls_table_t *tt) {
  int n = h->nodes;
  size_t head = (sizeof(tstate_t) + 63) & ~(size_t)63;
  size_t keep_at = head + (size_t)n * (sizeof(node_ctr_t) + sizeof(mi_heap_t *));
  size_t sz = keep_at + (h->keep_pages ? cllm__heap_keep_bytes(n) : 0);
  tstate_t *ts = meta_alloc(sz);
  if (ts == NULL) return NULL;
  ts->ctr = (node_ctr_t *)((char *)ts + head);
  ts->heap = (mi_heap_t **)(ts->ctr + n);
  if (h->keep_pages) /* the table starts all 0: every class takes the general path once */
    cllm__heap_keep_attach(ts, (char *)ts + keep_at, n);
  else
    ts->fast16 = cllm__heap_class16;
  ts->owner = tt;
  ts->h = h;
  set_home(h, ts, cllm__heap_initial_node(h), NULL);
  if (cllm_monitor_batch_init(&ts->batch, h->monitor, CLLM_CAT_HEAP, h->batch_bytes) != CLLM_OK) {
    free(ts);
    return NULL;
  }
  return ts;
}

tstate_t *cllm__heap_tstate_slow(cllm_heaps_t *h, bool create) {
  tls_table_t *tt = t_table;
  for (int i = 0; tt != NULL && i < tt->n; i++) {
    if (tt->ent[i].h == h && tt->ent[i].id == h->id) {
      cache_set(tt->ent[i].ts);
      return tt->ent[i].ts;
    }
  }
  if (!create || !g_key_ok || (tt = table_get()) == NULL) return NULL;
  tstate_t *ts = tstate_new(h, tt);
  if (ts == NULL) return NULL;
  pthread_mutex_lock(&cllm__heap_lock);
  /* Drop entries of destroyed heaps objects (their tstates are already freed). */
  for (int i = 0; i < tt->n;) {
    if (!cllm__heap_is_live_locked(tt->ent[i].h, tt->ent[i].id)) tt->ent[i] = tt->ent[--tt->n];
    else i++;
  }
  if (tt->n == tt->cap) {
    int cap = tt->cap ? 2 * tt->cap : 4;
    tls_ent_t *ne = CLLM_FAULT(CLLM_FAULT_MALLOC) ? NULL : realloc(tt->ent, (size_t)cap * sizeof *ne);
    if (ne == NULL) {
      pthread_mutex_unlock(&cllm__heap_lock);
      free(ts);
      return NULL;
    }
    tt->ent = ne;
    tt->cap = cap;
  }
  ts->next = h->threads;
  if (h->threads != NULL) h->threads->prev = ts;
  h->threads = ts;
  tt->ent[tt->n++] = (tls_ent_t){h, h->id, ts};
  pthread_mutex_unlock(&cllm__heap_lock);
  cache_set(ts);
  return ts;
}

static void tstate_unlink_locked(cllm_heaps_t *h, tstate_t *ts) {
  if (ts->prev != NULL) ts->prev->next = ts->next;
  else h->threads = ts->next;
  if (ts->next != NULL) ts->next->prev = ts->prev;
  ts->next = ts->prev = NULL;
}

void cllm__heap_tstate_retire_locked(cllm_heaps_t *h, tstate_t *ts) {
  cllm__heap_keep_release(h, ts, false);
  cllm_status_t s = cllm_monitor_batch_flush(&ts->batch);
  if (s != CLLM_OK) cllm__warn("heaps: returning a thread's HEAP credit failed: %s", cllm_status_name(s));
  cllm__heap_fold_locked(h, ts);
  tstate_unlink_locked(h, ts);
  free(ts);
}

static void key_destructor(void *arg) {
  tls_table_t *tt = arg;
  if (tt == NULL) return;
  pthread_mutex_lock(&cllm__heap_lock);
  for (int i = 0; i < tt->n; i++)
    if (cllm__heap_is_live_locked(tt->ent[i].h, tt->ent[i].id))
      cllm__heap_tstate_retire_locked(tt->ent[i].h, tt->ent[i].ts);
  pthread_mutex_unlock(&cllm__heap_lock);
  if (t_table == tt) t_table = NULL;
  memset(cllm__heap_cache_mine(), 0, sizeof(tls_cache_t));
  free(tt->ent);
  free(tt);
}

void cllm__heap_tls_forget(cllm_heaps_t *h, uint64_t id) {
  tls_table_t *tt = t_table;
  tls_cache_t *c = cllm__heap_cache_mine();
  if (c->h == h && c->id == id) memset(c, 0, sizeof *c);
  for (int i = 0; tt != NULL && i < tt->n; i++) {
    if (tt->ent[i].h == h && tt->ent[i].id == id) {
      tt->ent[i] = tt->ent[--tt->n];
      return;
    }
  }
}

bool cllm__heap_tstate_is_mine(const tstate_t *ts) {
  return ts->owner != NULL && ts->owner == (void *)t_table;
}

mi_heap_t *cllm__heap_for(cllm_heaps_t *h, tstate_t *ts, int node) {
  int slot = heap_ctr_slot(h, node);
  mi_heap_t *mh = ts->heap[slot];
  if (CLLM_LIKELY(mh != NULL)) return mh;
  if (CLLM_FAULT(CLLM_FAULT_MI_HEAP)) return NULL;
  mh = h->mode == CLLM_HEAP_MODE_PLAIN ? mi_heap_new() : mi_heap_new_in_arena(h->arena[slot]);
  if (mh == NULL) return NULL;
  ts->heap[slot] = mh;
  if (node == ts->node) set_home(h, ts, node, mh);
  cllm__atomic_store_relaxed(&ts->has_heap, true);
  return mh;
}

/* ---- public per-thread calls ---- */

cllm_status_t cllm_heap_attach(cllm_heaps_t *h, int node) {
  if (h == NULL) return CLLM_EINVAL;
  if (node < 0 || node >= h->nodes) return CLLM_ENOTFOUND;
  tstate_t *ts = cllm__heap_tstate_slow(h, true);
  if (ts == NULL) return CLLM_ENOMEM;
  mi_heap_t *mh = cllm__heap_for(h, ts, node);
  if (mh == NULL) return CLLM_ENOMEM;
  set_home(h, ts, node, mh);
  return CLLM_OK;
}

int cllm_heap_node(cllm_heaps_t *h) {
  if (h == NULL) return -1;
  tstate_t *ts = cllm__heap_tstate_slow(h, true);
  return ts != NULL ? ts->node : cllm__heap_initial_node(h);
}

cllm_status_t cllm_heap_thread_flush(cllm_heaps_t *h) {
  if (h == NULL) return CLLM_EINVAL;
  tstate_t *ts = cllm__heap_tstate_slow(h, false);
  if (ts == NULL) return CLLM_OK; /* this thread holds no credit */
  cllm__heap_keep_release(h, ts, true); /* taken again on next use */
  return cllm_monitor_batch_flush(&ts->batch);
}
