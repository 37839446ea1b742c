/* The tier interface: what a storage engine (host DRAM, GPU memory, SSD segments, Redis) offers
 * the tier policy of storage/tiers.c. The policy owns the index of what is where, LRU order, pins,
 * leases and placement; an engine only stores bytes. Engines come in two kinds, told apart by
 * their flags:
 *
 *   memory tiers (TQKV_TIER_F_ADDRESSABLE: host, gpu) hand out directly addressable spans of an
 *   arena; the policy keeps their index itself and calls span_alloc / span_trim / span_free.
 *
 *   keyed tiers (TQKV_TIER_F_KEYED: ssd, redis) keep their own index (rebuilt at start, or
 *   remote) and are addressed by (namespace id, 32-byte key): write / read / remove / exists,
 *   all asynchronous. A completion is delivered on the store's loop thread (the engine arranges
 *   that, e.g. uv_async_t or hiredis' libuv adapter); an engine may also complete before the call
 *   returns. If a call that takes a callback returns an error, the callback is never called.
 *
 * Tier ids equal the wire protocol's Tier enum (proto/tqkv.proto), so a per-key tier travels to
 * the client unchanged. Every function returns 0 or a negative TQKV_E* code unless its comment
 * says otherwise; a miss is a result (TQKV_TIER_MISS), never an error. */
#ifndef TQKV_TIER_H
#define TQKV_TIER_H

#include <stddef.h>
#include <stdint.h>

#include "tqkv_errors.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TQKV_KEY_BYTES 32

/* Same numbers as `enum Tier` in proto/tqkv.proto. */
typedef enum {
    TQKV_TIER_NONE = 0, /* miss */
    TQKV_TIER_GPU = 1,
    TQKV_TIER_HOST = 2,
    TQKV_TIER_SSD = 3,
    TQKV_TIER_REDIS = 4,
    TQKV_TIER_PEER = 5,
} tqkv_tier_id;
#define TQKV_TIER_COUNT 6

/* Name of a tier id ("host", "ssd", ...; "none" for 0, "unknown" otherwise). Never NULL. */
const char *tqkv_tier_name(int tier);

/* Positive results of lookups and reads (errors are negative). */
#define TQKV_TIER_HIT 0
#define TQKV_TIER_MISS 1
#define TQKV_TIER_PENDING 2 /* the answer comes later through the callback */

/* Engine capabilities. */
#define TQKV_TIER_F_ADDRESSABLE 0x1u /* span_* ops: memory the policy indexes itself */
#define TQKV_TIER_F_KEYED 0x2u       /* write/read/remove/exists ops: the engine's own index */
#define TQKV_TIER_F_PERSISTENT 0x4u  /* contents survive a restart (ssd, redis) */
#define TQKV_TIER_F_SHARED 0x8u      /* other nodes see the contents (redis) */

/* Counters an engine keeps about itself; the policy adds its own (hits, evictions, ...) in
 * tqkv_tier_stats of tiers.h. */
typedef struct {
    uint64_t capacity; /* bytes the tier may hold */
    uint64_t used;     /* bytes really allocated for blocks (page-rounded for memory tiers) */
    uint64_t entries;  /* blocks (memory tiers: spans) held */
    uint64_t resident; /* memory tiers: bytes of the arena backed by memory now (used + cached
                        * free pages); keyed tiers: 0 */
    uint64_t errors;   /* engine-level failures (I/O, corrupt records dropped, ...) */
} tqkv_tier_info;

/* A span of an addressable tier's arena. `ptr` is valid until span_free; `cookie` is the
 * engine's own bookkeeping (e.g. first page index), opaque to the policy. */
typedef struct {
    void *ptr;
    size_t len;      /* bytes asked for (after span_trim: the trimmed length) */
    uint64_t cookie; /* engine-private */
    uint32_t n_units; /* engine-private (e.g. pages) */
} tqkv_tier_span;

/* Keyed-tier completions; called on the loop thread. `status` is 0 (done), TQKV_TIER_MISS
 * (read/exists/remove: not there) or a negative TQKV_E* code. */
typedef void (*tqkv_tier_done_cb)(void *arg, int status);
/* A keyed read first learns the record's length (ssd: once read and verified; redis: from the
 * reply), then asks the policy for a destination (a host span) through this callback. An engine
 * must call it on the store's loop thread (the policy makes room by evicting from its host tier,
 * whose structures belong to that thread; an engine reading on threads of its own hands the
 * bytes to the loop first, e.g. in its completion drain). It returns a buffer of at least `len`
 * bytes, valid until the read's completion, or NULL: the engine then completes the read with
 * TQKV_ENOSPC. The store's destination function refuses (NULL) a call from another thread. */
typedef void *(*tqkv_tier_dest_fn)(void *arg, size_t len);

typedef struct tqkv_tier tqkv_tier;

/* The vtable. Ops a tier does not have are NULL. Unless said otherwise, ops are called on the
 * store's loop thread only. */
typedef struct {
    const char *name; /* "host", "ssd", ... */

    /* All tiers. */
    void (*info)(tqkv_tier *t, tqkv_tier_info *out);
    /* Changes the capacity. Shrinking below what is used is allowed: new allocations fail until
     * the policy has evicted enough. @return 0, TQKV_ERANGE (past the engine's hard limit). */
    int (*set_capacity)(tqkv_tier *t, uint64_t bytes);
    /* Frees everything the engine owns and the tier itself. Memory tiers: every span must have
     * been freed; keyed tiers: pending operations complete with TQKV_ECANCELED first. */
    void (*destroy)(tqkv_tier *t);

    /* Memory tiers (TQKV_TIER_F_ADDRESSABLE). */
    /* Allocates `len` bytes (len > 0). @return 0, TQKV_ENOSPC (over capacity or no run large
     * enough: the policy evicts and retries), TQKV_EINVAL, TQKV_ENOMEM. */
    int (*span_alloc)(tqkv_tier *t, size_t len, tqkv_tier_span *out);
    /* Shrinks a span to `len` bytes (0 < len <= span->len), giving back whole tail units. */
    void (*span_trim)(tqkv_tier *t, tqkv_tier_span *span, size_t len);
    /* Returns a span to the arena. */
    void (*span_free)(tqkv_tier *t, const tqkv_tier_span *span);

    /* Keyed tiers (TQKV_TIER_F_KEYED). `data` of write is borrowed until `cb`; the policy
     * frees the host copy of an evicted block only then, so an engine should copy or queue the
     * bytes and complete quickly. */
    int (*write)(tqkv_tier *t, uint32_t ns_id, const uint8_t key[TQKV_KEY_BYTES],
                 const void *data, size_t len, tqkv_tier_done_cb cb, void *arg);
    /* Reads a record into the buffer `dest` returns; `cb` gets 0 and *out_len set, or
     * TQKV_TIER_MISS (absent, or its checksum failed: counted in errors, never served). */
    int (*read)(tqkv_tier *t, uint32_t ns_id, const uint8_t key[TQKV_KEY_BYTES],
                tqkv_tier_dest_fn dest, void *dest_arg, size_t *out_len, tqkv_tier_done_cb cb,
                void *arg);
    int (*remove)(tqkv_tier *t, uint32_t ns_id, const uint8_t key[TQKV_KEY_BYTES],
                  tqkv_tier_done_cb cb, void *arg);
    /* Presence test without reading. An engine with an in-memory index (ssd) answers at once:
     * @return TQKV_TIER_HIT or TQKV_TIER_MISS, and `cb` is not called. A remote one (redis)
     * @return TQKV_TIER_PENDING and `cb` later brings HIT or MISS (or an error) as status.
     * `cb` may be NULL (the caller wants no asynchronous answer): then an engine that cannot
     * answer at once @return TQKV_EAGAIN and calls nothing. */
    int (*exists)(tqkv_tier *t, uint32_t ns_id, const uint8_t key[TQKV_KEY_BYTES],
                  tqkv_tier_done_cb cb, void *arg);
    /* Removes every record of namespace `ns_id` (UINT32_MAX: all). */
    int (*clear)(tqkv_tier *t, uint32_t ns_id, tqkv_tier_done_cb cb, void *arg);
} tqkv_tier_ops;

/* Every engine's handle starts with this; the engine's own state follows (embed it first). */
struct tqkv_tier {
    const tqkv_tier_ops *ops;
    tqkv_tier_id id;
    uint32_t flags; /* TQKV_TIER_F_* */
};

#ifdef __cplusplus
}
#endif
#endif
