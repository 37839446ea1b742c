/* libtqkv: the C client of the tqkv daemon (tqkvd).
 *
 * An inference engine links this library to store the attention KV of token chunks in tqkvd and
 * to fetch it back, TurboQuant-encoded (or decoded by the daemon to fp16, bf16 or fp32). It
 * speaks the wire protocol of docs/protocol.md over a Unix socket or TCP, computes the chunk keys
 * every process and node agree on (tqkv_chunk_keys), and pipelines batched calls: a batch of keys
 * is split into several requests that are all in flight at once, and responses are matched to
 * their requests by id in whatever order the daemon completes them.
 *
 * Errors: every function that can fail returns 0 or a negative TQKV_E* code (tqkv_errors.h;
 * tqkv_strerror() turns it into words). After a failed call, tqkv_errmsg() says more, including
 * the daemon's own message when the daemon refused the request. A cache miss is not an error:
 * it is reported per key (tier TQKV_TIER_NONE, status TQKV_ENOENT) while the call returns 0.
 * A transport failure (connection closed, timeout, a response the protocol does not allow)
 * breaks the client: every later call answers TQKV_ECLOSED; close it and connect again.
 *
 * Thread-safety: a tqkv_client is NOT thread-safe: use one client per thread (connections are
 * cheap), or serialise calls on a client with your own lock. Different clients may be used
 * concurrently from different threads. The functions that take no client (tqkv_chunk_keys(),
 * tqkv_key_hex(), tqkv_key_parse(), tqkv_strerror(), tqkv_tier_name(), tqkv_options_init(), ...)
 * are thread-safe. The library never raises SIGPIPE (it sends with
 * MSG_NOSIGNAL) and installs no signal handlers.
 *
 * Ownership: strings and buffers passed in are borrowed for the duration of the call. Buffers the
 * library allocates for the caller are released with the matching _free/_release function. */
#ifndef TQKV_H
#define TQKV_H

#include <stddef.h>
#include <stdint.h>

#include "tqkv_errors.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TQKV_KEY_BYTES 32
#define TQKV_PROTOCOL_VERSION 1

/* A chunk key (DESIGN.md, "Chunk key"). */
typedef struct {
    uint8_t bytes[TQKV_KEY_BYTES];
} tqkv_key;

/* Where a key was found (the wire's Tier enum). */
typedef enum {
    TQKV_TIER_NONE = 0, /* miss */
    TQKV_TIER_GPU = 1,
    TQKV_TIER_HOST = 2,
    TQKV_TIER_SSD = 3,
    TQKV_TIER_REDIS = 4,
    TQKV_TIER_PEER = 5,
} tqkv_tier;

/* Element types of raw KV (the same numbers as tq_dtype in tq.h and the wire's DType). */
typedef enum {
    TQKV_DTYPE_NONE = 0,
    TQKV_DTYPE_F16 = 1,
    TQKV_DTYPE_BF16 = 2,
    TQKV_DTYPE_F32 = 3,
} tqkv_dtype;

/* "none", "gpu", "host", "ssd", "redis", "peer"; "?" for an unknown value. Never NULL. */
const char *tqkv_tier_name(int tier);

/* ---- Chunk keys ---------------------------------------------------------------------------
 * key_i = SHA256("tqkv-chunk-v1" || ns || key_{i-1} || n_tokens_le32 || tokens_le32...)
 * where ns is the namespace name's bytes (no terminator, no length), n_tokens the number of
 * tokens of chunk i (chunk_size, or fewer for a trailing partial chunk), tokens its token ids as
 * 32-bit little-endian, and key_{-1} is `parent` (32 zero bytes when parent is NULL). */

/* Every chunk hashes with the zero parent instead of the previous key: the keys of a document
 * then do not depend on what precedes it (position-independent reuse, e.g. RAG documents). */
#define TQKV_CHUNK_INDEPENDENT 1u
/* Drop a trailing partial chunk (fewer than chunk_size tokens) instead of keying it. */
#define TQKV_CHUNK_FULL_ONLY 2u

/* Computes the keys of the chunks of `tokens` (n_tokens ids, cut every chunk_size tokens).
 * `parent` continues a chain (the key of the chunk before tokens[0]) or is NULL.
 * Writes at most keys_cap keys; *n_keys receives the number of chunks (also when it exceeds
 * keys_cap, in which case nothing is written and TQKV_ERANGE is returned: call again with a
 * larger array). Deterministic across processes, machines and languages.
 * @return 0, TQKV_EINVAL (NULL ns, chunk_size 0, tokens NULL with n_tokens > 0),
 *         TQKV_ERANGE (keys_cap too small), TQKV_EINTERNAL (libcrypto failure). */
int tqkv_chunk_keys(const char *ns, const uint32_t *tokens, size_t n_tokens, uint32_t chunk_size,
                    unsigned flags, const tqkv_key *parent, tqkv_key *keys, size_t keys_cap,
                    size_t *n_keys);

/* Lower-case hex of a key into out (65 bytes: 64 digits and a NUL). @return out. */
char *tqkv_key_hex(const tqkv_key *key, char out[2 * TQKV_KEY_BYTES + 1]);
/* Parses 64 hex digits. @return 0 or TQKV_EBADKEYLEN. */
int tqkv_key_parse(const char *hex, tqkv_key *out);

/* ---- Connection ----------------------------------------------------------------------------*/

typedef struct tqkv_client tqkv_client;

typedef struct {
    const char *token;       /* auth token sent in HELLO (user or admin); NULL: none */
    const char *client_name; /* shown in the daemon's logs; NULL: "libtqkv" */
    uint32_t timeout_ms;     /* a call fails with TQKV_ETIMEDOUT after this long without progress
                                (0: 30000) */
    uint32_t max_frame;      /* largest frame sent or accepted (0: 256 MiB; lowered to the
                                limit the daemon announces in HELLO) */
    uint32_t max_inflight;   /* requests of one batch call in flight at once (0: 16) */
    char *errbuf;            /* if non-NULL, tqkv_connect writes why it failed here */
    size_t errbuf_len;
} tqkv_options;

/* Fills `o` with the defaults (all zero / NULL). */
void tqkv_options_init(tqkv_options *o);

/* Connects to tqkvd and performs the HELLO handshake (protocol version, token, client name).
 * url: "unix:///path/to/socket", "tcp://host:port" (host a name, an IPv4 address or an IPv6
 * address in brackets). opts may be NULL (defaults); its strings are copied.
 * On success *out owns the connection: release it with tqkv_close.
 * @return 0, TQKV_EINVAL (bad URL), TQKV_ECONNECT (cannot connect), TQKV_EAUTH (token refused),
 *         TQKV_EBADVERSION (protocol version refused), TQKV_ETIMEDOUT, TQKV_ENOMEM, or another
 *         daemon error. On failure *out is NULL and, if opts->errbuf is set, the reason in
 *         words (with the daemon's message) is written there. */
int tqkv_connect(const char *url, const tqkv_options *opts, tqkv_client **out);

/* Closes the connection and frees the client. NULL is a no-op. */
void tqkv_close(tqkv_client *c);

/* The last error of this client in words ("TQKV_ENONAMESPACE: unknown namespace: no such
 * namespace 'x'"), or "" if the last call succeeded. Valid until the next call on c. */
const char *tqkv_errmsg(const tqkv_client *c);

/* The daemon's version string from HELLO. Valid until tqkv_close. */
const char *tqkv_server_version(const tqkv_client *c);
/* 1 if the token given was the daemon's admin token, else 0. */
int tqkv_is_admin(const tqkv_client *c);

/* ---- Namespaces ----------------------------------------------------------------------------*/

typedef struct {
    const char *name;              /* 1..255 bytes */
    const void *model_fingerprint; /* opaque bytes compared on re-register; may be NULL */
    size_t model_fingerprint_len;
    uint32_t n_layers;
    uint32_t n_kv_heads;
    uint32_t head_dim;
    tqkv_dtype dtype;   /* what the engine sends in raw PUTs */
    uint32_t chunk_size; /* tokens per full chunk; 0: 256 */
    const char *preset;  /* codec preset: "tq4", "tq3.5", "tq3-prod", "fp16", ...; NULL: "tq4" */
    uint64_t seed;       /* codec seed; 0: the default */
} tqkv_namespace;

/* Registers a namespace (idempotent when the parameters are the same).
 * @return 0, TQKV_ENSCONFLICT (registered with other parameters), TQKV_EINVAL, TQKV_ENOENT
 *         (unknown preset), TQKV_EBADGEOMETRY, ... */
int tqkv_register(tqkv_client *c, const tqkv_namespace *ns);

/* ---- PUT -----------------------------------------------------------------------------------*/

typedef struct {
    tqkv_key key;
    const void *data; /* raw KV [n_layers][2 (K,V)][n_tokens][n_kv_heads][head_dim] of the
                         namespace's dtype, or one encoded block (kernels/FORMAT.md) */
    size_t len;
    uint32_t n_tokens; /* raw only: tokens in this chunk (1..chunk_size) */
} tqkv_put_item;

/* Stores n chunks given as raw KV: the daemon encodes them with the namespace's preset. A key
 * already present is left as it is and reported as success (PUT is idempotent).
 * status: NULL, or n ints receiving each item's result (0 or a negative code).
 * Items are grouped into requests of at most max_frame bytes, pipelined.
 * @return 0 if every item was stored (or already present); otherwise the first failing item's
 *         code (statuses say which), or a connection-level error. */
int tqkv_put_raw(tqkv_client *c, const char *ns, const tqkv_put_item *items, size_t n,
                 int *status);

/* Stores n already-encoded blocks; the daemon validates each one (format, checksums, that the
 * block's key is the item's key and that its geometry matches the namespace) before storing it.
 * Same status and return conventions as tqkv_put_raw. */
int tqkv_put_blocks(tqkv_client *c, const char *ns, const tqkv_put_item *items, size_t n,
                    int *status);

/* ---- GET -----------------------------------------------------------------------------------*/

typedef struct {
    uint32_t layer_begin; /* first layer to return */
    uint32_t layer_count; /* 0: all layers from layer_begin */
    tqkv_dtype decode;    /* TQKV_DTYPE_NONE: the encoded block (a sub-block for a layer range);
                             F16/BF16/F32: decoded KV [layers][2][n_tokens][n_kv_heads][head_dim] */
    uint32_t keys_per_request; /* keys per pipelined request; 0: 8 (1 when decoding) */
    uint64_t release_lease;    /* non-zero: a lease from tqkv_lookup that the daemon releases
                                  once this GET is served */
} tqkv_get_options;

typedef struct {
    /* in */
    void *buf;  /* where to put this key's bytes, or NULL to let the library allocate */
    size_t cap; /* bytes at buf */
    /* out */
    void *data;        /* the bytes (buf, or an allocation to release) */
    size_t len;        /* their length */
    int status;        /* 0 hit; TQKV_ENOENT miss; TQKV_ERANGE buf too small (len says how much
                          is needed); or another error for this key */
    uint8_t tier;      /* tqkv_tier where it was found; TQKV_TIER_NONE on a miss */
    uint8_t allocated; /* data was allocated by the library */
} tqkv_get_item;

/* Fetches n keys. items[i].buf/cap are inputs; the rest are outputs. opts may be NULL
 * (whole encoded blocks). Misses are not errors. Keys the daemon could not fit in one reply
 * frame with the others are asked for again on their own.
 * @return 0 when every key was answered (hit or miss; see each item's status), or a
 *         connection-level / request-level error (bad namespace, bad layer range, ...). Items
 *         with allocated data must be released with tqkv_get_items_release even on error. */
int tqkv_get(tqkv_client *c, const char *ns, const tqkv_key *keys, size_t n,
             const tqkv_get_options *opts, tqkv_get_item *items);

/* Frees the library-allocated data of n items and clears their data/len. */
void tqkv_get_items_release(tqkv_get_item *items, size_t n);

/* ---- LOOKUP, DELETE, PIN -------------------------------------------------------------------*/

/* Prefix lookup: *hits receives the number of leading keys present (counting stops at the first
 * miss). tiers: NULL or n bytes receiving each key's tier as the daemon reports it
 * (TQKV_TIER_NONE for a miss). Keys after the first miss are reported too, but only on a best
 * effort basis (the daemon need not look for them everywhere): only the first *hits entries
 * and the first miss are authoritative. lease_ms > 0 asks the daemon to protect
 * the hits from eviction for that long; *lease_id (may be NULL) receives the lease's id.
 * @return 0 or an error. */
int tqkv_lookup(tqkv_client *c, const char *ns, const tqkv_key *keys, size_t n, uint32_t lease_ms,
                uint32_t *hits, uint8_t *tiers, uint64_t *lease_id);

/* Deletes n keys. status: NULL or n ints (0 deleted, TQKV_ENOENT absent, or an error).
 * @return 0 when every key was processed (absent keys included), or an error. */
int tqkv_delete(tqkv_client *c, const char *ns, const tqkv_key *keys, size_t n, int *status);

/* Pins (protects from eviction until unpinned) or unpins n keys. status as tqkv_delete. */
int tqkv_pin(tqkv_client *c, const char *ns, const tqkv_key *keys, size_t n, int *status);
int tqkv_unpin(tqkv_client *c, const char *ns, const tqkv_key *keys, size_t n, int *status);

/* Ends a lease from tqkv_lookup before it expires (a GET can also end it: release_lease).
 * Releasing an unknown or expired lease is not an error. @return 0 or an error. */
int tqkv_lease_release(tqkv_client *c, const char *ns, uint64_t lease_id);

/* ---- Administration and introspection ------------------------------------------------------*/

/* Name/value pairs as text, in the order the daemon sent them. */
typedef struct {
    size_t n;
    char **names;
    char **values;
} tqkv_kv_list;

/* Releases the arrays of a list filled by the functions below and zeroes it. */
void tqkv_kv_list_free(tqkv_kv_list *l);
/* The value for `name`, or NULL. Borrowed from l. */
const char *tqkv_kv_list_get(const tqkv_kv_list *l, const char *name);

/* Daemon statistics: global, per tier and per namespace ("ns.<name>.bytes", ...); ns non-NULL
 * restricts them to one namespace. On success *out owns arrays: tqkv_kv_list_free. */
int tqkv_stats(tqkv_client *c, const char *ns, tqkv_kv_list *out);
/* Liveness and readiness ("status" = "ok", version, uptime, ...). */
int tqkv_health(tqkv_client *c, tqkv_kv_list *out);
/* The cluster view ("self", "members", then "member.<i>.<field>": id, addr, tiers, hit_rate,
 * tier.<name>.capacity/used, ...; docs/cluster.md). "enabled" is 0 on a daemon without one. */
int tqkv_cluster(tqkv_client *c, tqkv_kv_list *out);
/* Settings and their current values; name NULL: all of them. */
int tqkv_config_get(tqkv_client *c, const char *name, tqkv_kv_list *out);
/* Changes a mutable setting (admin token). @return 0, TQKV_EPERM, TQKV_EREADONLY,
 * TQKV_ENOENT (unknown setting), TQKV_EBADCONFIG / TQKV_ERANGE (bad value). */
int tqkv_config_set(tqkv_client *c, const char *name, const char *value);
/* Evicts at least `bytes` bytes (LRU order, pins and leases exempt) from the host tier (admin),
 * or as much as is evictable: of namespace `ns` only, or of every namespace when ns is NULL
 * (TQKV_ENONAMESPACE: unknown ns). *evicted (may be NULL) receives the bytes freed. */
int tqkv_evict(tqkv_client *c, const char *ns, uint64_t bytes, uint64_t *evicted);
/* Drops every block (ns NULL) or those of one namespace (admin). */
int tqkv_clear(tqkv_client *c, const char *ns);

#ifdef __cplusplus
}
#endif
#endif
