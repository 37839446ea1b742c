/* The Redis engine: tqkv's shared tier across nodes, on Redis standalone or Redis Cluster.
 *
 * It stores one self-describing value per block (docs/redis.md has the key scheme and every
 * byte of the value) and offers a few generic key/value and set operations for the cluster
 * directory (heartbeats, namespace records). It knows nothing of the daemon or the tier policy.
 *
 * Threading: everything runs on one libuv loop, the caller's, through hiredis' asynchronous API
 * and its libuv adapter. Every function must be called on the loop's thread, and every callback
 * is called from the loop. The engine never blocks.
 *
 * Calls follow libuv's rule: a call that takes a callback either returns 0 and then calls the
 * callback exactly once, later, from the loop; or returns a negative TQKV_E* code and never
 * calls it. A miss is a result, not an error.
 *
 * Failure model: Redis down or slow never stalls the caller. A request to a node that is down
 * fails at once (TQKV_ETIER); a connection that makes no progress for `timeout_ms` is dropped
 * and its requests complete with TQKV_ETIMEDOUT; the engine reconnects by itself with
 * exponential backoff and logs once per state change, never per request. In the statistics a
 * failed block GET counts as a miss as well as an error or timeout.
 *
 * The process must ignore SIGPIPE (hiredis writes with write(2)); tqkvd does. */
#ifndef TQKV_REDIS_H
#define TQKV_REDIS_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "tqkv_errors.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tqkv_redis tqkv_redis;

#define TQKV_REDIS_SLOTS 16384
#define TQKV_REDIS_MAX_NS 255    /* namespace name, bytes */
#define TQKV_REDIS_MAX_KEY 255   /* block key, bytes (chunk keys are 32) */
#define TQKV_REDIS_MAX_PREFIX 64 /* key prefix, bytes */

typedef struct {
    /* "host:port" of the server (standalone: exactly one) or of one or more cluster nodes
     * (seeds: the slot map is learnt from them). Borrowed during tqkv_redis_create only. Use IP
     * addresses: hiredis resolves names with a blocking getaddrinfo on every connect. */
    const char *const *nodes;
    size_t n_nodes;
    int cluster;              /* 1: Redis Cluster (slot map, MOVED/ASK) */
    const char *username;     /* ACL user for AUTH; NULL: the default user */
    const char *password;     /* AUTH password; NULL: no AUTH */
    const char *prefix;       /* key prefix, default "tqkv"; no '{', '}', ' ', control bytes */
    uint32_t ttl_ms;          /* expiry of block values, 0: none */
    uint32_t timeout_ms;      /* connect + no-progress timeout, default 1000 */
    uint32_t backoff_min_ms;  /* first reconnect delay, default 50 */
    uint32_t backoff_max_ms;  /* reconnect delay cap, default 2000 */
    int lz4;                  /* 1: LZ4-compress a block when that saves >= 1/16 of its size */
    uint32_t max_redirects;   /* MOVED/ASK hops per request, default 5 */
    uint64_t max_value_bytes; /* largest block accepted on PUT or GET, default 256 MiB */
    /* Command bytes per node in flight or waiting (see send_window_bytes) beyond which new
     * requests are refused with TQKV_EBUSY (one request is always let through); default
     * 256 MiB, 0: no limit. Bounds the memory a slow server can make the engine hold. */
    uint64_t max_queued_bytes;
    /* Command bytes handed to hiredis per node before the next request waits in the engine for
     * replies to free room; default 8 MiB, 0: no window. hiredis memmoves its whole output buffer
     * after every partial write, so a deep pipeline kept in hiredis costs time quadratic in its
     * depth; kept here, it costs nothing. One request always goes, whatever its size. */
    uint64_t send_window_bytes;
} tqkv_redis_config;

/* Fills `cfg` with the defaults above (no nodes: the caller sets nodes/n_nodes). */
void tqkv_redis_config_default(tqkv_redis_config *cfg);

typedef enum {
    TQKV_REDIS_DOWN = 0,     /* no node reachable */
    TQKV_REDIS_DEGRADED = 1, /* some masters of the slot map unreachable */
    TQKV_REDIS_UP = 2,       /* every node (every master of the slot map) connected */
} tqkv_redis_state;

const char *tqkv_redis_state_name(tqkv_redis_state s);

typedef struct {
    uint64_t requests;       /* every call accepted or refused after validation */
    uint64_t hits;           /* block GETs served (checksum and key verified) */
    uint64_t misses;         /* block GETs not served: absent, corrupt, error or timeout */
    uint64_t corrupt;        /* values dropped: bad magic, version, key or checksum */
    uint64_t errors;         /* failed requests other than timeouts (node down, Redis error) */
    uint64_t timeouts;       /* requests failed with TQKV_ETIMEDOUT */
    uint64_t bytes_out;      /* value bytes stored by successful block PUTs (as stored) */
    uint64_t bytes_in;       /* block bytes served by hits (after decompression) */
    uint64_t reconnects;     /* connections re-established after a loss */
    uint64_t moved;          /* MOVED redirections followed */
    uint64_t ask;            /* ASK redirections followed */
    uint64_t slot_refreshes; /* slot maps loaded from CLUSTER SLOTS */
    uint32_t nodes_up;       /* connected nodes among those that count for `state` */
    uint32_t nodes_total;
    tqkv_redis_state state;
} tqkv_redis_stats;

/* Completion of a request without data. `status`: >= 0 success (the meaning is per call),
 * negative TQKV_E* on failure (TQKV_ETIMEDOUT, TQKV_ETIER, TQKV_ECLOSED, TQKV_EAUTH, TQKV_EIO,
 * TQKV_ECANCELED when the engine is destroyed first). */
typedef void (*tqkv_redis_done_cb)(void *arg, int status);
/* Completion of a GET. `status`: 1 hit, 0 miss, negative error. On a hit `data`/`len` hold the
 * value, borrowed: valid only until the callback returns. */
typedef void (*tqkv_redis_get_cb)(void *arg, int status, const void *data, size_t len);
/* Completion of tqkv_redis_set_members: on success (status 0) `n` members, each `lens[i]` bytes
 * at `members[i]`; all borrowed until the callback returns. */
typedef void (*tqkv_redis_members_cb)(void *arg, int status, size_t n, const char *const *members,
                                      const size_t *lens);

/* Creates an engine on `loop` (borrowed; must outlive the engine) and starts connecting. A node
 * that cannot be reached is not an error: the engine retries in the background.
 * @return 0 and *out, or TQKV_EINVAL / TQKV_EBADCONFIG (bad config), TQKV_ENOMEM. */
int tqkv_redis_create(uv_loop_t *loop, const tqkv_redis_config *cfg, tqkv_redis **out);

/* Closes the connections; requests still pending complete with TQKV_ECANCELED (their
 * callbacks may run during this call). The memory is released from the loop's close callbacks:
 * the loop must run (uv_run) afterwards. May be called from an engine callback. NULL: no-op. */
void tqkv_redis_destroy(tqkv_redis *r);

/* Stores `len` bytes of block `key` (key_len bytes, e.g. a 32-byte chunk key) in namespace `ns`
 * (1..TQKV_REDIS_MAX_NS bytes, no '{', '}', ' ' or control bytes). `data` is borrowed during the
 * call only (it is copied, LZ4-compressed if configured and worth it). Callback status 0: stored.
 * @return 0, TQKV_EINVAL, TQKV_ERANGE (larger than max_value_bytes), TQKV_ENOMEM, TQKV_ETIER
 * (no node for the key is reachable), TQKV_EBUSY (max_queued_bytes reached on that node),
 * TQKV_ECANCELED (engine closing). */
int tqkv_redis_put(tqkv_redis *r, const char *ns, const void *key, size_t key_len, const void *data,
                   size_t len, tqkv_redis_done_cb cb, void *arg);

/* Fetches block `key` of `ns`. A value whose header, key or checksum does not match is dropped,
 * counted in `corrupt` and reported as a miss (status 0), never served.
 * @return as tqkv_redis_put. */
int tqkv_redis_get(tqkv_redis *r, const char *ns, const void *key, size_t key_len,
                   tqkv_redis_get_cb cb, void *arg);

/* Callback status 1 if block `key` of `ns` exists, 0 if not (not verified: a GET verifies). */
int tqkv_redis_exists(tqkv_redis *r, const char *ns, const void *key, size_t key_len,
                      tqkv_redis_done_cb cb, void *arg);

/* Deletes a block. Callback status 1 if it existed, 0 if not. */
int tqkv_redis_del(tqkv_redis *r, const char *ns, const void *key, size_t key_len,
                   tqkv_redis_done_cb cb, void *arg);

/* Deletes every block of namespace `ns` (NULL: of every namespace) under this engine's prefix, on
 * every master: SCAN ... MATCH, then UNLINK of each key found. Not atomic: blocks written
 * meanwhile may survive. Callback status: the number of blocks deleted (capped at INT32_MAX), or
 * a negative error if any master failed (the others are still cleared).
 * @return 0, TQKV_EINVAL, TQKV_ENOMEM, TQKV_ETIER (no master reachable or, in a cluster, the
 * slot map not loaded yet). */
int tqkv_redis_clear(tqkv_redis *r, const char *ns, tqkv_redis_done_cb cb, void *arg);

/* Generic records for the cluster directory, stored raw under "<prefix>:<key>". `key` is a
 * NUL-terminated string of 1..255 bytes without spaces or control bytes; it may carry a hash
 * tag ("{dir}:node:a") to keep related records in one cluster slot. */

/* SET with an optional expiry (ttl_ms 0: none). Callback status 0: stored. */
int tqkv_redis_kv_set(tqkv_redis *r, const char *key, const void *val, size_t len, uint32_t ttl_ms,
                      tqkv_redis_done_cb cb, void *arg);
/* SET ... NX: stores only when the key is absent (one atomic step in Redis). Callback status 1:
 * stored, 0: the key was already there (not changed). */
int tqkv_redis_kv_set_nx(tqkv_redis *r, const char *key, const void *val, size_t len,
                         tqkv_redis_done_cb cb, void *arg);
/* GET. Callback status 1 (data valid until the callback returns) or 0 (absent). */
int tqkv_redis_kv_get(tqkv_redis *r, const char *key, tqkv_redis_get_cb cb, void *arg);
/* DEL. Callback status 1 if it existed, 0 if not. */
int tqkv_redis_kv_del(tqkv_redis *r, const char *key, tqkv_redis_done_cb cb, void *arg);
/* PEXPIRE (ttl_ms > 0). Callback status 1 if the key exists, 0 if not. */
int tqkv_redis_kv_expire(tqkv_redis *r, const char *key, uint32_t ttl_ms, tqkv_redis_done_cb cb,
                         void *arg);
/* SADD / SREM of one member (1..TQKV_REDIS_MAX_KEY bytes, any bytes) to the set `set`.
 * Callback status 1 if the set changed, 0 if not. */
int tqkv_redis_set_add(tqkv_redis *r, const char *set, const void *member, size_t len,
                       tqkv_redis_done_cb cb, void *arg);
int tqkv_redis_set_rem(tqkv_redis *r, const char *set, const void *member, size_t len,
                       tqkv_redis_done_cb cb, void *arg);
/* SMEMBERS. */
int tqkv_redis_set_members(tqkv_redis *r, const char *set, tqkv_redis_members_cb cb, void *arg);

/* Copies the counters into *out and computes nodes_up/nodes_total/state. */
void tqkv_redis_get_stats(const tqkv_redis *r, tqkv_redis_stats *out);

/* Redis Cluster hash slot of a Redis key: CRC16 (XMODEM) of the key, or of its hash tag (the
 * bytes between the first '{' and the next '}', when not empty), mod 16384. */
uint16_t tqkv_redis_key_slot(const void *key, size_t len);

/* Writes the Redis key of block `key` of `ns` under `prefix` ("<prefix>:b:<ns>:<hex key>") into
 * `buf` (capacity `cap`, NUL-terminated). @return its length, or TQKV_ERANGE if it does not fit,
 * TQKV_EINVAL for an invalid namespace or key. */
int tqkv_redis_block_key(const char *prefix, const char *ns, const void *key, size_t key_len,
                         char *buf, size_t cap);

#ifdef __cplusplus
}
#endif
#endif
