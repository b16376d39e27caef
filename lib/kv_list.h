/* The KV cache's one intrusive list: doubly linked, 32-bit indices into an array of
 * elements (blocks or slots), KV_NONE (CLLM_KV_NONE) ends it. An element holds a
 * kv_link_t; kv_links_t says where that link lies in the array, so one set of
 * functions serves the blocks' free stacks, LRU lists and prefix-index chains and the
 * slots' sequence and copy-entry LRU lists. A list is a head and, where the caller
 * keeps one, a tail (tail NULL: used through its head only).
 *
 * Invariants: an element is in at most one list through a given link; its link is
 * {KV_NONE, KV_NONE} when it is in none. No function here takes a lock or counts:
 * the callers keep their counters and hold kv->lock.
 */
#ifndef CLLM_KV_LIST_H
#define CLLM_KV_LIST_H

#include <stddef.h>
#include <stdint.h>

#include <cllm/kv_cache.h>

typedef struct kv_link {
  uint32_t prev, next;
} kv_link_t;

/* Element i's link lies at base + i * stride + off. */
typedef struct kv_links {
  char *base;
  size_t stride, off;
} kv_links_t;

static inline kv_link_t *kv__link(kv_links_t a, uint32_t i) {
  return (kv_link_t *)(void *)(a.base + (size_t)i * a.stride + a.off);
}

/* Insert i first. (Links are read into locals first: a store through a link may alias
 * head or tail, and would force them to be loaded again.) */
static inline void kv__list_push_front(kv_links_t a, uint32_t *head, uint32_t *tail, uint32_t i) {
  uint32_t h = *head;
  kv_link_t *l = kv__link(a, i);
  l->prev = CLLM_KV_NONE;
  l->next = h;
  if (h != CLLM_KV_NONE) kv__link(a, h)->prev = i;
  else if (tail != NULL) *tail = i;
  *head = i;
}

/* Insert i last (the list keeps a tail). */
static inline void kv__list_push_back(kv_links_t a, uint32_t *head, uint32_t *tail, uint32_t i) {
  uint32_t t = *tail;
  kv_link_t *l = kv__link(a, i);
  l->next = CLLM_KV_NONE;
  l->prev = t;
  if (t != CLLM_KV_NONE) kv__link(a, t)->next = i;
  else *head = i;
  *tail = i;
}

/* Take i (a member) out; its link becomes {KV_NONE, KV_NONE}. */
static inline void kv__list_remove(kv_links_t a, uint32_t *head, uint32_t *tail, uint32_t i) {
  kv_link_t *l = kv__link(a, i);
  uint32_t p = l->prev, n = l->next;
  if (p != CLLM_KV_NONE) kv__link(a, p)->next = n;
  else *head = n;
  if (n != CLLM_KV_NONE) kv__link(a, n)->prev = p;
  else if (tail != NULL) *tail = p;
  l->prev = l->next = CLLM_KV_NONE;
}

#endif /* CLLM_KV_LIST_H */
