/* tqkvd across nodes: membership in Redis, namespaces shared through Redis, and fetching blocks
 * from peers (docs/cluster.md is the design; transport.h the peer transport).
 *
 * Membership: every `heartbeat_ms` the daemon writes its record (id, advertised address, version,
 * tiers with capacity/used/hits/misses, hit rate) under "{tqkvdir}:node:<id>" with an expiry of
 * `member_ttl_ms`, adds its id to the set "{tqkvdir}:nodes", and reads the set and every record
 * back: a member whose record has expired is gone (and taken out of the set). Joins and leaves
 * are logged once. Namespaces: REGISTER writes "{tqkvdir}:ns:<name>"; a request naming a
 * namespace unknown here reads it back from Redis before answering TQKV_ENONAMESPACE. Peer
 * fetch: a GET whose keys miss in every local tier asks the live members over the transport.
 *
 * Everything here runs on the loop thread, except the peer transport calls, which run on the
 * worker pool. All functions are no-ops (or answer "not applicable") when the cluster is off. */
#ifndef TQKVD_CLUSTER_H
#define TQKVD_CLUSTER_H

#include <stddef.h>
#include <stdint.h>

#include "tiers.h"

struct tqkvd_server;
struct tqkvd_req;
typedef struct tqkvd_cluster tqkvd_cluster;

/* A member as last read from Redis. Strings are owned by the cluster module and valid until the
 * next refresh (use them on the loop thread, within one callback). */
typedef struct {
    char *id;
    char *addr;       /* advertised TCP address, "" if the member has none */
    int self;         /* this daemon */
    size_t n_fields;  /* the record's fields, in its order (docs/cluster.md lists them) */
    char **names;
    char **values;
} tqkvd_member;

/* Counters of the cluster module (STATS "cluster.*"). */
typedef struct {
    uint64_t heartbeats, heartbeat_errors;
    uint64_t ns_published, ns_fetched, ns_conflicts;
    uint64_t peer_requests;   /* GETs that asked peers */
    uint64_t peer_keys_asked, peer_hits, peer_misses, peer_errors, peer_bad_blocks;
    uint64_t peer_bytes;
} tqkvd_cluster_stats;

/* Starts membership (after the listeners are up, so the advertised address is known).
 * @return 0 (also when the cluster is off) or TQKV_EBADCONFIG / TQKV_ENOMEM. */
int tqkvd_cluster_start(struct tqkvd_server *s);
/* At shutdown, before the store (and the Redis tier's engine) goes: stops the heartbeat and
 * deletes this member's record. */
void tqkvd_cluster_stop(struct tqkvd_server *s);
/* Frees the module (after the loop has finished). */
void tqkvd_cluster_free(struct tqkvd_server *s);
/* 1 if the cluster is on. */
int tqkvd_cluster_enabled(const struct tqkvd_server *s);
/* This node's id ("" when off). */
const char *tqkvd_cluster_self(const struct tqkvd_server *s);
/* The members of the last refresh (this one included once its record is read back). */
size_t tqkvd_cluster_members(const struct tqkvd_server *s, const tqkvd_member **out);
void tqkvd_cluster_get_stats(const struct tqkvd_server *s, tqkvd_cluster_stats *out);

/* REGISTER of description `d` (validated; `info` is the daemon's per-namespace data for it):
 * compares it with the record in Redis. @return 1 when the request was taken over (the module
 * answers TQKV_ENSCONFLICT, or calls tqkvd__register_local and publishes the record), 0 when the
 * caller registers locally itself (cluster off). */
int tqkvd_cluster_register(struct tqkvd_req *r, const tqkv_ns_desc *d, void *info);

/* A request names namespace r->hdr->ns, unknown here: looks it up in Redis. @return 1 when the
 * request was taken over (registered from Redis and dispatched again, or answered
 * TQKV_ENONAMESPACE), 0 when the caller answers TQKV_ENONAMESPACE itself. */
int tqkvd_cluster_ns_lookup(struct tqkvd_req *r);

/* A GET whose store answers are in: if keys missed and peers may hold them, asks the peers on a
 * worker and calls tqkvd__get_continue when done. @return 1 when started, 0 when not. */
int tqkvd_cluster_peer_get(struct tqkvd_req *r);
/* A LOOKUP whose store answer is in: if keys from the first miss on may be held by peers, fetches
 * them on a worker, keeps them here, and calls tqkvd__lookup_again (which reports them with tier
 * TQKV_TIER_PEER). @return 1 when started, 0 when not. */
int tqkvd_cluster_peer_lookup(struct tqkvd_req *r);

/* ---- provided by dispatch.c for this module ---- */
/* Registers `d` locally and answers the REGISTER (takes ownership of info). */
void tqkvd__register_local(struct tqkvd_req *r, const tqkv_ns_desc *d, void *info);
/* Registers a namespace read from Redis (builds the codec parameters). @return 0 or an error. */
int tqkvd__ns_adopt(struct tqkvd_server *s, const tqkv_ns_desc *d);
/* Runs the request's handler again (after its namespace became known). */
void tqkvd__dispatch_again(struct tqkvd_req *r);
/* Continues a GET once every key has an answer. */
void tqkvd__get_continue(struct tqkvd_req *r);
/* Runs a LOOKUP's store lookup again (after peers' blocks were stored) and answers it. */
void tqkvd__lookup_again(struct tqkvd_req *r);
/* Checks that `data` is a whole valid block (checksums included) of the request's namespace
 * with key `key`. Any thread. @return 0 or the format error; *n_tokens gets its tokens. */
int tqkvd__block_check(const struct tqkvd_req *r, const void *data, size_t len,
                       const uint8_t *key, uint32_t *n_tokens);

#endif
