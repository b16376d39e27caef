/* cllm-mem: the Redis backend of the KV cache's remote tier (its own library,
 * //:cllm_kv_redis, which links hiredis; the core library does not).
 *
 *   cllm_kv_redis_config_t rc = cllm_kv_redis_config_default();
 *   rc.endpoint = "unix:/run/redis/redis.sock";   // or "redis://10.0.0.5:6379"
 *   cllm_kv_tier_config_t tc = cllm_kv_tier_config_default();
 *   if (cllm_kv_store_redis_create(&rc, &tc.store) < 0) ...;
 *   rc = cllm_kv_tier_create(kv, &tc, &tier);
 *
 * Standalone servers (TCP or unix socket) and Redis Cluster (cluster = true, the
 * endpoint a comma-separated seed list): the slot map is read with CLUSTER SLOTS
 * on the first connection, each key goes to the master of its CRC16 slot, MOVED
 * updates the slot and refreshes the map, ASK is followed once with ASKING.
 * Commands: EXISTS (pipelined), GET, SET key value NX, PING; AUTH when a
 * password is set. Valkey speaks the same protocol.
 *
 * Each tier thread gets its own connection (one hiredis context per node); a
 * deadline is applied as the socket timeout of every call. A connection that
 * failed or timed out is not used again (the tier reconnects). The store never
 * changes the process's signal disposition: the tier's threads block SIGPIPE.
 */
#ifndef CLLM_KV_REDIS_H
#define CLLM_KV_REDIS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cllm/export.h>
#include <cllm/kv_tier.h>
#include <cllm/status.h>

CLLM_EXTERN_C_BEGIN

typedef struct cllm_kv_redis_config {
  size_t struct_size;          // set by cllm_kv_redis_config_default()
  const char *endpoint;        // "redis://host:port", "host:port" or "unix:/path" (copied);
                               // cluster: "host:port,host:port,..." (seeds, up to 16)
  bool cluster;                // Redis Cluster (CLUSTER SLOTS, MOVED / ASK)
  const char *user;            // AUTH user (NULL: "default" / password only)
  const char *password;        // AUTH password (NULL: no AUTH)
  uint32_t connect_timeout_ms; // 0 = 200
} cllm_kv_redis_config_t;

// Defaults: no endpoint (required), standalone, no AUTH. Thread: any.
CLLM_API cllm_kv_redis_config_t cllm_kv_redis_config_default(void);

// A store for cllm_kv_tier_create (connections are made by the tier's threads).
// An older, smaller config gets the defaults for the fields it lacks.
// Errors: CLLM_EINVAL (NULL, struct_size unset or a newer one with non-zero unknown
// fields, no or malformed endpoint, a unix socket path of 108 bytes or more, more
// than 16 seeds), CLLM_ENOMEM.
// Thread: any.
CLLM_API CLLM_NODISCARD cllm_status_t cllm_kv_store_redis_create(const cllm_kv_redis_config_t *cfg,
                                                                  cllm_kv_store_t *out);

// The Redis Cluster slot of a key (CRC16-XMODEM mod 16384; a {hash tag} is
// honoured). Thread: any.
CLLM_API uint32_t cllm_kv_redis_key_slot(const char *key, size_t len);

CLLM_EXTERN_C_END
#endif /* CLLM_KV_REDIS_H */
