/* The SSD engine behind the tier interface (storage/tier.h): a keyed, persistent tier whose
 * completions are brought to a libuv loop through a uv_async_t (wakeups coalesce; each wakeup
 * drains every pending completion). Kept apart from tqkv_ssd.h so the engine itself needs
 * neither libuv nor the tier headers. */
#ifndef TQKV_SSD_TIER_H
#define TQKV_SSD_TIER_H

#include <uv.h>

#include "tier.h"
#include "tqkv_ssd.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Opens the engine with `opt` (copied; its notify fields are replaced) and wraps it as tier
 * TQKV_TIER_SSD on `loop` (borrowed, must outlive the tier; ops are called on its thread).
 * destroy() closes the engine (pending operations finish and their callbacks run during the
 * call, with their real results) and releases the uv_async_t: the loop must run once more
 * afterwards for its close callback to free the memory. @return 0 and *out, or what
 * tqkv_ssd_open returns, or TQKV_ENOMEM. */
int tqkv_ssd_tier_create(uv_loop_t *loop, const tqkv_ssd_options *opt, tqkv_tier **out);

/* The engine behind a tier made by tqkv_ssd_tier_create (for stats), or NULL for another one. */
tqkv_ssd *tqkv_ssd_from_tier(tqkv_tier *t);

#ifdef __cplusplus
}
#endif
#endif
