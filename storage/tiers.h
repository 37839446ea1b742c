/* The store: what the daemon calls to keep and serve blocks. It owns the namespaces, the index of
 * (namespace, 32-byte key) -> entry, the LRU order, pins, leases, reference counts, placement
 * across tiers (storage/tier.h engines: host now; ssd and redis plug in through
 * tqkv_store_attach_tier without changing the callers) and the statistics. The bytes it stores
 * are opaque to it: the daemon validates blocks before committing them.
 *
 * THREADING. A store belongs to one thread, the daemon's loop thread: every function here is
 * called on that thread only, except the two steps that move payload bytes:
 *   - filling the buffer that tqkv_store_put_reserve handed out (any thread, until the loop
 *     thread calls put_commit or put_abort);
 *   - reading through a read reference (tqkv_store_ref_data), from any thread, until the loop
 *     thread releases the reference.
 * The loop thread must not commit, abort or release while a worker still touches the buffer
 * (the daemon hands the buffer to a worker and commits in the completion that the worker posts
 * back). Callbacks of the store (async GET/LOOKUP from lower tiers) run on the loop thread.
 *
 * RESULTS. Functions return 0 or a negative TQKV_E* code; a miss is a result, reported as the
 * positive TQKV_STORE_MISS, never an error. Functions that take a callback and return an error or
 * a synchronous result never call the callback.
 *
 * MEMORY. The host tier is one arena of the configured capacity (storage/host): byte accounting
 * is page-rounded and equals what the arena really holds; freed pages are cached only while the
 * arena's resident size stays within capacity. */
#ifndef TQKV_TIERS_H
#define TQKV_TIERS_H

#include <stddef.h>
#include <stdint.h>

#include "tier.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Results (positive; errors are negative). */
#define TQKV_STORE_HIT 0
#define TQKV_STORE_MISS 1
#define TQKV_STORE_PENDING 2 /* the answer comes through the callback */

typedef struct tqkv_store tqkv_store;
typedef struct tqkv_ns tqkv_ns;               /* a namespace; lives as long as the store */
typedef struct tqkv_store_put tqkv_store_put; /* a reservation for a PUT */
typedef struct tqkv_store_ref tqkv_store_ref; /* a counted read reference to a stored block */

typedef struct {
    uint64_t host_capacity;     /* bytes; 0: 25% of physical memory */
    uint64_t host_max_capacity; /* address space reserved for the arena, the limit of later
                                 * capacity changes; 0: max(host_capacity, physical memory) */
    uint32_t host_page_size;    /* arena allocation unit, power of two >= 4096; 0: 16 KiB */
    /* Clock for lease expiry, ns; NULL: tqkv_now_ns (tests inject their own). */
    uint64_t (*clock_ns)(void *clock_arg);
    void *clock_arg;
} tqkv_store_config;

/* Creates a store with its host tier. @return 0, TQKV_EINVAL (bad config), TQKV_ENOMEM. */
int tqkv_store_create(const tqkv_store_config *cfg, tqkv_store **out);
/* Frees everything. Outstanding reservations and references must have been finished first
 * (the daemon drains its workers before); attached tiers are destroyed. NULL: no-op. */
void tqkv_store_destroy(tqkv_store *s);

/* Attaches a lower tier (ssd, redis): the store takes ownership. Evicted host entries are
 * demoted to it (written there before being dropped) and host misses are looked up and promoted
 * from it. Tiers are consulted in the order of their ids. @return 0, TQKV_EEXIST (that id is
 * already attached), TQKV_EINVAL (not a keyed tier). On error the caller keeps ownership. */
int tqkv_store_attach_tier(tqkv_store *s, tqkv_tier *t);

/* When blocks are written to an attached lower tier. */
typedef enum {
    /* Written when the block is evicted from the host tier (demotion); its host space is freed
     * when the write completes. The default of tqkv_store_attach_tier. */
    TQKV_WRITE_BACK = 0,
    /* Written when the PUT commits; the commit completes (tqkv_store_put_commit_cb) only when
     * the tier has acknowledged the write, and a failed write fails the PUT. With the SSD engine
     * under fsync=always, an acknowledged PUT survives a crash. */
    TQKV_WRITE_THROUGH = 1,
    /* Written when the PUT commits; the commit does not wait, failures are only counted. */
    TQKV_WRITE_ASYNC = 2,
} tqkv_write_policy;

/* Sets the write policy of attached tier `tier`. Affects PUTs committed afterwards.
 * @return 0, TQKV_ENOENT (not attached), TQKV_EINVAL. */
int tqkv_store_set_write_policy(tqkv_store *s, tqkv_tier_id tier, tqkv_write_policy policy);

/* The attached lower tier `tier`, borrowed (e.g. for its engine's own statistics), or NULL. */
tqkv_tier *tqkv_store_tier(tqkv_store *s, tqkv_tier_id tier);

/* Whether (ns_id, key) is pinned or leased now. Any thread (the SSD engine's eviction asks it
 * from its writer thread, to rewrite protected records instead of dropping them): the store
 * keeps protected keys in a set of their own under a mutex. @return 1 or 0. */
int tqkv_store_is_protected(tqkv_store *s, uint32_t ns_id, const uint8_t key[TQKV_KEY_BYTES]);

/* ---- namespaces ---- */

#define TQKV_NS_NAME_MAX 127
#define TQKV_NS_FINGERPRINT_MAX 64
#define TQKV_NS_PRESET_MAX 31

/* A namespace as REGISTER describes it. The store compares descriptions on re-register; it does
 * not interpret the geometry (the daemon validates it against libtq). */
typedef struct {
    char name[TQKV_NS_NAME_MAX + 1];           /* NUL-terminated, non-empty */
    uint8_t fingerprint[TQKV_NS_FINGERPRINT_MAX];
    uint32_t fingerprint_len;
    uint32_t n_layers, n_kv_heads, head_dim;
    uint32_t dtype;      /* tq_dtype */
    uint32_t chunk_size; /* tokens per full chunk */
    char preset[TQKV_NS_PRESET_MAX + 1];
    uint64_t seed;
} tqkv_ns_desc;

/* Registers a namespace, or finds it when an identical description is registered already.
 * *out borrows the store's namespace (valid for the store's life). *created (may be NULL) tells
 * which. @return 0, TQKV_ENSCONFLICT (same name, different description), TQKV_EINVAL,
 * TQKV_ENOMEM. */
int tqkv_store_ns_register(tqkv_store *s, const tqkv_ns_desc *desc, tqkv_ns **out, int *created);
/* Registers a namespace under a given id (a daemon that persists its namespaces restores them
 * with their old ids, which its persistent tiers use in their records). `id` must be non-zero
 * and unused; later new namespaces get ids above every id seen. @return 0, TQKV_EEXIST (name or
 * id taken), TQKV_EINVAL, TQKV_ENOMEM. */
int tqkv_store_ns_register_id(tqkv_store *s, const tqkv_ns_desc *desc, uint32_t id,
                              tqkv_ns **out);
/* The id the next new namespace will get. */
uint32_t tqkv_store_ns_next_id(const tqkv_store *s);
/* @return the namespace with id `id`, or NULL. */
tqkv_ns *tqkv_store_ns_by_id(tqkv_store *s, uint32_t id);
/* @return the namespace named `name`, or NULL. */
tqkv_ns *tqkv_store_ns_find(tqkv_store *s, const char *name);
/* Calls fn for every namespace in registration order. */
void tqkv_store_ns_foreach(tqkv_store *s, void (*fn)(void *arg, tqkv_ns *ns), void *arg);
const tqkv_ns_desc *tqkv_ns_get_desc(const tqkv_ns *ns);
uint32_t tqkv_ns_get_id(const tqkv_ns *ns); /* small integer, stable for the store's life */
/* One pointer of the caller's (e.g. the daemon's parsed codec parameters), freed by nobody. */
void tqkv_ns_set_user(tqkv_ns *ns, void *user);
void *tqkv_ns_get_user(const tqkv_ns *ns);

/* ---- PUT: reserve -> fill (any thread) -> commit or abort ---- */

/* Reserves `len` bytes (len > 0) in the host tier for `key`, evicting LRU entries that are not
 * pinned, leased or referenced (demoting them to the next tier when one is attached).
 * *buf is writable for `len` bytes from any thread until commit/abort. Several reservations of
 * one key may coexist: the first commit wins.
 * @return 0; TQKV_EEXIST when the key is already stored (PUT is idempotent: reply ok); TQKV_ENOSPC
 * when it does not fit even after eviction (or len exceeds the capacity); TQKV_EAGAIN when it
 * would fit once demotions to a lower tier now in flight complete (retry later); TQKV_EINVAL;
 * TQKV_ENOMEM. */
int tqkv_store_put_reserve(tqkv_store *s, tqkv_ns *ns, const uint8_t key[TQKV_KEY_BYTES],
                           size_t len, tqkv_store_put **out, void **buf);
/* Publishes the filled buffer as the block of its key, trimmed to `len` bytes (0 < len <= the
 * reserved length; whole tail pages go back to the arena). Frees the reservation.
 * @return 0; TQKV_EEXIST when another PUT of the key committed first (this buffer is dropped:
 * reply ok); TQKV_EINVAL (bad len: the reservation is aborted). */
int tqkv_store_put_commit(tqkv_store *s, tqkv_store_put *p, size_t len);
/* Completion of a commit that waited for write-through tiers: 0 (stored and acknowledged by
 * every write-through tier) or a negative code (a write-through tier failed: the block was
 * taken out of the store again, as if never stored). */
typedef void (*tqkv_store_commit_cb)(void *arg, int status);
/* tqkv_store_put_commit, but the commit waits for the write-through tiers (TQKV_WRITE_THROUGH):
 * @return 0 (stored; no write-through tier, so nothing to wait for), TQKV_STORE_PENDING (cb
 * brings the result), TQKV_EEXIST (another PUT of the key committed first and is acknowledged
 * already), TQKV_EINVAL. When another PUT of the key committed first but its write-through is
 * still in flight, this one waits for it: PENDING, and cb gets that write's result. cb runs on
 * the loop thread, never before this call returns. */
int tqkv_store_put_commit_cb(tqkv_store *s, tqkv_store_put *p, size_t len,
                             tqkv_store_commit_cb cb, void *arg);
/* For a PUT answered TQKV_EEXIST at reservation: waits until the present block's write-through
 * is acknowledged. @return 0 (nothing in flight), TQKV_STORE_PENDING (cb later, as above). */
int tqkv_store_put_sync(tqkv_store *s, tqkv_ns *ns, const uint8_t key[TQKV_KEY_BYTES],
                        tqkv_store_commit_cb cb, void *arg);
/* Drops a reservation (the fill failed or the request was malformed). Counted as an error. */
void tqkv_store_put_abort(tqkv_store *s, tqkv_store_put *p);

/* ---- GET ---- */

/* Completion of a GET that went to a lower tier: status TQKV_STORE_HIT with *ref set (the caller
 * owns it: release it), TQKV_STORE_MISS, or a negative code. `tier` is where it was found. */
typedef void (*tqkv_store_get_cb)(void *arg, int status, tqkv_store_ref *ref, tqkv_tier_id tier);

/* Looks `key` up and hands out a read reference. A host hit completes at once: @return
 * TQKV_STORE_HIT with *ref set, and `cb` is not called. A miss everywhere the store can tell at
 * once: @return TQKV_STORE_MISS. When a lower tier must be asked: @return TQKV_STORE_PENDING and
 * `cb` runs later on the loop thread (the block is then promoted into the host tier; when the
 * host tier has no room for it, not even after eviction, the hit is still served, from a buffer
 * of its own that the reference frees). A hit moves
 * the entry to the most-recently-used end and counts a hit; cb may be NULL only if the caller
 * accepts host hits only (lower tiers are then not asked). */
int tqkv_store_get(tqkv_store *s, tqkv_ns *ns, const uint8_t key[TQKV_KEY_BYTES],
                   tqkv_store_ref **ref, tqkv_store_get_cb cb, void *arg);
/* The block's bytes and length; valid from any thread until the reference is released. */
const void *tqkv_store_ref_data(const tqkv_store_ref *ref);
size_t tqkv_store_ref_len(const tqkv_store_ref *ref);
/* Releases a reference (loop thread). An entry deleted or evicted while referenced is freed
 * here, at its last release. */
void tqkv_store_ref_release(tqkv_store *s, tqkv_store_ref *ref);

/* ---- LOOKUP ---- */

typedef struct {
    uint32_t hits;     /* leading keys present (prefix semantics: stop at the first miss) */
    uint64_t lease_id; /* 0 when no lease was asked or there were no hits */
    /* Caller-provided, n entries: tier of each key (tqkv_tier_id, TQKV_TIER_NONE for a miss).
     * Keys after the first miss are still reported. May be NULL. */
    uint8_t *tiers;
} tqkv_lookup_result;

typedef void (*tqkv_store_lookup_cb)(void *arg, int status, tqkv_lookup_result *res);

/* Tells how many leading `keys` are present and where each key is. lease_ms > 0 takes a lease
 * on the leading hits: they are exempt from eviction for lease_ms or until
 * tqkv_store_lease_release. Counts one hit or miss per key up to and including the first miss.
 * @return 0 with *res filled (cb not called); TQKV_STORE_PENDING when a lower tier must be asked
 * (res and keys must stay valid until cb(arg, 0, res)); TQKV_EINVAL, TQKV_ENOMEM. */
int tqkv_store_lookup(tqkv_store *s, tqkv_ns *ns, const uint8_t (*keys)[TQKV_KEY_BYTES],
                      size_t n, uint32_t lease_ms, tqkv_lookup_result *res,
                      tqkv_store_lookup_cb cb, void *arg);
/* Ends a lease early. @return 0 or TQKV_ENOENT (unknown or expired). */
int tqkv_store_lease_release(tqkv_store *s, uint64_t lease_id);

/* ---- DELETE, PIN ---- */

/* Removes a key from every tier the store knows of (a referenced entry is freed at its last
 * release). @return 0, TQKV_STORE_MISS. */
int tqkv_store_delete(tqkv_store *s, tqkv_ns *ns, const uint8_t key[TQKV_KEY_BYTES]);
/* Pins (counted) a host entry against eviction; unpin undoes one pin.
 * @return 0, TQKV_STORE_MISS, TQKV_EINVAL (unpin of an entry that is not pinned). */
int tqkv_store_pin(tqkv_store *s, tqkv_ns *ns, const uint8_t key[TQKV_KEY_BYTES]);
int tqkv_store_unpin(tqkv_store *s, tqkv_ns *ns, const uint8_t key[TQKV_KEY_BYTES]);

/* ---- admin ---- */

/* Evicts least-recently-used evictable host entries (demoting them) of `ns` (NULL: of every
 * namespace) until `bytes` are freed or nothing evictable is left. *freed (may be NULL) gets the
 * bytes freed. @return 0. */
int tqkv_store_evict(tqkv_store *s, tqkv_ns *ns, uint64_t bytes, uint64_t *freed);
/* Removes every entry of `ns` (NULL: of every namespace) from the host tier, pinned and leased
 * ones included (referenced ones are freed at their last release); lower tiers are cleared too.
 * Namespaces stay registered. *removed (may be NULL) gets the number of entries. @return 0. */
int tqkv_store_clear(tqkv_store *s, tqkv_ns *ns, uint64_t *removed);
/* Changes a tier's capacity; shrinking evicts down to it. @return 0 (it may still be over when
 * pinned/leased/referenced entries are left: stats show it), TQKV_ENOENT (tier not present),
 * TQKV_ERANGE (past host_max_capacity or below one page). */
int tqkv_store_set_capacity(tqkv_store *s, tqkv_tier_id tier, uint64_t bytes);
/* Host arena address range, e.g. for cudaHostRegister when a GPU is present. */
void tqkv_store_host_arena(tqkv_store *s, void **base, size_t *len);

/* ---- stats ---- */

typedef struct {
    int present;       /* the tier is configured */
    uint64_t capacity; /* bytes */
    uint64_t used;     /* bytes allocated for blocks (page-rounded) */
    uint64_t entries;
    uint64_t resident; /* memory tiers: arena bytes backed by memory */
    uint64_t hits, misses;
    uint64_t evictions;  /* entries evicted from this tier */
    uint64_t promotions; /* entries copied up into this tier */
    uint64_t demotions;  /* entries written down from this tier */
    uint64_t drops;      /* evicted entries that no lower tier took */
    uint64_t bytes_in, bytes_out; /* committed / served */
    uint64_t errors;
} tqkv_tier_stats;

typedef struct {
    uint64_t entries, bytes; /* host tier; bytes: block lengths */
    uint64_t hits, misses;
    uint64_t puts, put_exists; /* committed PUTs; PUTs of a present key */
} tqkv_ns_stats;

typedef struct {
    uint64_t entries, bytes;          /* host tier, all namespaces */
    uint64_t hits, misses;            /* GET and LOOKUP, all tiers */
    uint64_t puts, put_exists, put_aborts, put_enospc;
    uint64_t reservations;            /* open now */
    uint64_t reserved_bytes;          /* held by open reservations */
    uint64_t pinned;                  /* entries with a pin */
    uint64_t leases;                  /* active leases */
    uint64_t refs;                    /* read references held now */
    uint32_t namespaces;
    tqkv_tier_stats tiers[TQKV_TIER_COUNT]; /* indexed by tqkv_tier_id */
} tqkv_store_stats;

void tqkv_store_get_stats(tqkv_store *s, tqkv_store_stats *out);
void tqkv_ns_get_stats(const tqkv_ns *ns, tqkv_ns_stats *out);

#ifdef __cplusplus
}
#endif
#endif
