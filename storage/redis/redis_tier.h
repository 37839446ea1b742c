/* The Redis engine behind the tier interface (storage/tier.h): a keyed, persistent, shared tier
 * (TQKV_TIER_REDIS). Completions arrive on the engine's libuv loop through hiredis' adapter.
 * Kept apart from tqkv_redis.h so the engine itself does not depend on the tier headers.
 *
 * The tier interface names namespaces by the store's small integer id, which is local to one
 * daemon; Redis is shared across daemons, so its keys must carry the namespace *name*. The
 * caller supplies `ns_name` to resolve an id (e.g. through tqkv_store_ns_foreach). A name that is
 * not a valid engine namespace (spaces, braces, control bytes, over 255 bytes) is stored as "x"
 * followed by its bytes in hex, so any name works and every daemon derives the same key. */
#ifndef TQKV_REDIS_TIER_H
#define TQKV_REDIS_TIER_H

#include <stdint.h>

#include "tier.h"
#include "tqkv_redis.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The NUL-terminated name of namespace `ns_id`, borrowed until the call that asked returns, or
 * NULL if the id is unknown (the operation then fails with TQKV_ENONAMESPACE). */
typedef const char *(*tqkv_redis_ns_name_fn)(void *arg, uint32_t ns_id);

/* Wraps engine `r` as a tier. The tier takes ownership of `r` (destroy() destroys it; pending
 * operations complete with TQKV_ECANCELED during that call, and the loop must run afterwards for
 * the engine's close callbacks to free it). Capacity is not enforced here (Redis' maxmemory and
 * the TTL govern it); info() reports the configured value. clear() is tqkv_redis_clear.
 * @return 0 and *out, TQKV_EINVAL, TQKV_ENOMEM (r is then not taken). */
int tqkv_redis_tier_create(tqkv_redis *r, tqkv_redis_ns_name_fn ns_name, void *ns_arg,
                           tqkv_tier **out);

/* The engine behind a tier made by tqkv_redis_tier_create (for its stats), or NULL for another. */
tqkv_redis *tqkv_redis_from_tier(tqkv_tier *t);

#ifdef __cplusplus
}
#endif
#endif
