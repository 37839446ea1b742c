/* The peer transport: how one tqkvd fetches blocks from another. A transport is a table of three
 * blocking operations (connect, fetch, close) that the cluster module runs on worker threads of
 * the daemon's pool, never on the loop thread. The TCP transport (peer_tcp.c) speaks the wire
 * protocol of docs/protocol.md (HELLO, then GET of whole encoded blocks) over a plain socket; an
 * RDMA transport would be another table with the same contract (connect: exchange queue-pair
 * details and register buffers; fetch: post the request, wait on the completion queue), chosen
 * by the `peer_transport` setting. Nothing above this header knows which one is in use.
 *
 * Contract shared by every implementation:
 *   - a connection is used by one thread at a time (the pool in cluster.c guarantees it);
 *   - every call gives up after the connection's timeout without progress (TQKV_ETIMEDOUT);
 *   - after a failed call the connection is broken: the caller closes it, never reuses it;
 *   - fetched bytes are copied into tqkv_malloc'd buffers that the caller owns;
 *   - the bytes are not trusted: the caller validates each block (format, checksums, key,
 *     geometry) before storing or serving it. */
#ifndef TQKVD_TRANSPORT_H
#define TQKVD_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>

typedef struct tqkvd_peer_conn tqkvd_peer_conn; /* transport-private */

typedef struct {
    uint32_t timeout_ms;  /* connect and no-progress limit per call */
    uint32_t max_frame;   /* largest frame sent or accepted */
    const char *token;    /* presented in HELLO when the peers require one; NULL or "": none */
    const char *self_id;  /* our node id, in HELLO's client_name (the peer's logs) */
} tqkvd_peer_opts;

/* Client name every transport announces in HELLO. A daemon serving a request from a connection
 * with this name prefix never asks its own peers (a fetch is one hop: no loops, no storms). */
#define TQKVD_PEER_CLIENT_PREFIX "tqkvd-peer/"

/* The result of one key of a fetch. */
typedef struct {
    int status;  /* 1 hit (data/len set), 0 miss, or a negative TQKV_E* code for this key */
    void *data;  /* tqkv_malloc'd block bytes on a hit; the caller frees them */
    size_t len;
} tqkvd_peer_block;

typedef struct tqkvd_transport {
    const char *name; /* "tcp" */
    /* Connects to `addr` ("host:port", "[v6]:port") and completes the handshake.
     * @return 0 and *out, or TQKV_ECONNECT, TQKV_ETIMEDOUT, TQKV_EAUTH, TQKV_EINVAL (bad address),
     *   TQKV_ENOMEM, TQKV_EPROTO. */
    int (*connect)(const char *addr, const tqkvd_peer_opts *opts, tqkvd_peer_conn **out);
    /* Asks for the whole encoded blocks of n keys (32 bytes each, contiguous) of namespace `ns`
     * and fills out[0..n-1]. A key the peer does not hold, or holds in a namespace it does not
     * know, is a miss (status 0). @return 0 when the exchange completed (per-key results in
     * out), or a transport error (out then holds no data). */
    int (*fetch)(tqkvd_peer_conn *c, const char *ns, const uint8_t *keys, size_t n,
                 tqkvd_peer_block *out);
    /* Closes and frees a connection. NULL: no-op. */
    void (*close)(tqkvd_peer_conn *c);
} tqkvd_transport;

/* The TCP transport (peer_tcp.c). */
extern const tqkvd_transport tqkvd_transport_tcp;

/* The transport named `name` ("tcp"), or NULL. */
const tqkvd_transport *tqkvd_transport_find(const char *name);

#endif
