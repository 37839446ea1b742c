/* tqkvd internals shared by its modules: the server (loop, listeners, settings, store), the
 * connection (frame reassembly, limits, auth state) and the request (one frame in, one frame
 * out). Everything here lives on the loop thread; a request's `work` part runs on a worker and
 * touches only the request's own buffers, the payload and store buffers it was handed.
 *
 * DESIGN. A connection reads the preamble and header into its buffer, then reads the payload
 * straight into a per-request buffer (the libuv alloc callback hands out the rest of that
 * buffer, so KV bytes are copied once: socket -> request buffer; the worker validates or encodes
 * them into the store's reservation; a PUT of encoded blocks is read straight into the store's
 * reservations). The rest of a payload of 256 KiB or more is read by a worker rather than by the
 * loop, so that the uploads of several connections are copied out of the kernel in parallel
 * (conn.c). A response is one gathered write whose buffers are the preamble + header and the
 * payload pieces, which point into stored blocks held by read references (no copy) or into
 * buffers the worker produced (decode, layer slices); a response with 256 KiB of payload or more
 * is sent by a worker (sendmsg) rather than by the loop, for the same reason as the reads, and
 * responses leave a connection in the order they were made. The request lives until its
 * response is written; the connection lives until its last request is gone.
 *
 * Limits: a frame larger than max_frame is refused and the connection closed (the stream cannot
 * be resynchronised without reading it); reading pauses while a connection's in-flight bytes
 * (payloads being processed + responses not yet written) exceed max_inflight_bytes. */
#ifndef TQKVD_SERVER_H
#define TQKVD_SERVER_H

#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "frame.h"
#include "tiers.h"

#define TQKVD_VERSION "0.1.0"

struct tqkvd_conn;
struct tqkvd_req;

typedef struct tqkvd_server {
    uv_loop_t *loop;
    tqkvd_config cfg;
    tqkv_store *store;

    uv_pipe_t unix_srv;
    uv_tcp_t tcp_srv;
    int unix_on, tcp_on;
    char tcp_bound[96]; /* "127.0.0.1:7070" once listening */

    uv_signal_t sig_term, sig_int, sig_pipe;
    uv_timer_t shutdown_timer;
    int shutting_down;
    int exit_code;

    struct tqkvd_conn *conns; /* doubly linked list of open connections */
    uint32_t n_conns;
    uint64_t next_conn_id;
    uint64_t started_ns;

    /* counters (STATS) */
    uint64_t conns_total, conns_refused;
    uint64_t requests, request_errors, ops[16];
    uint64_t bytes_in, bytes_out;
    uint64_t encodes, encode_ns, encode_bytes;
    uint64_t bad_blocks;
    uint64_t works_inflight; /* requests on the worker pool */

    int nsreg_fd; /* namespace registry in ssd_dir, or -1 */
    struct tqkvd_cluster *cluster; /* cluster.c; NULL when the cluster is off */
    struct tqkvd_metrics *metrics; /* metrics.c: latency histograms, /metrics and /healthz */
} tqkvd_server;

enum { TQKVD_RD_HEAD = 0, TQKVD_RD_PAYLOAD = 1 };

typedef struct tqkvd_conn {
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_pipe_t pipe;
        uv_tcp_t tcp;
    } h;
    tqkvd_server *srv;
    struct tqkvd_conn *next, *prev;
    uint64_t id;
    int is_tcp;
    int hello, authed, admin;
    int closing, closed; /* uv_close called / close callback ran */
    int reading;         /* uv_read_start active */
    int close_after_write; /* refused (authentication): close once the reply is written */
    int eof;               /* the peer shut its write side: answer what was read, then close */
    int processing;        /* inside process_rbuf (no re-entry) */
    /* A worker is reading the current frame's payload from the socket (conn.c, rx_work): libuv
     * does not read meanwhile, and closing waits for the worker (rx_abort asks it to stop). */
    int rx_busy;
    int rx_abort; /* read and written with __atomic builtins */
    /* A worker is sending a large response (conn.c, tx_work): the loop writes nothing to the
     * connection meanwhile; the responses that come after it wait in txq, in order. Closing
     * waits for the worker (tx_abort asks it to stop). */
    int tx_busy;
    int tx_abort;             /* read and written with __atomic builtins */
    uint32_t writes_pending;  /* uv_write calls not yet called back */
    struct tqkvd_tx_msg *txq_head, *txq_tail;
    uint32_t refs; /* requests alive + 1 for the handle */

    uint8_t *rbuf; /* preamble + header accumulation */
    size_t rcap, rlen;
    int state;
    struct tqkvd_req *cur; /* request whose payload is being read */
    size_t pgot;

    uint64_t inflight_bytes;
    uint32_t inflight_reqs;
    char peer[64];
    char name[64];
} tqkvd_conn;

/* Per-key state of a batched request. */
typedef struct {
    struct tqkvd_req *req;
    int status;
    uint8_t tier;
    uint32_t n_tokens;
    const uint8_t *key;     /* 32 bytes, borrowed from the request header */
    const uint8_t *src;     /* PUT: this item's bytes in the payload */
    size_t src_len;
    tqkv_store_put *put;    /* PUT: the reservation */
    void *dst;
    size_t dst_cap, dst_len;
    tqkv_store_ref *ref;    /* GET: the read reference */
    void *out;              /* GET: worker-produced bytes (tqkv_malloc), or NULL */
    const void *out_ptr;    /* GET: bytes to send (into ref or out) */
    size_t out_len;
} tqkvd_item;

typedef struct tqkvd_req {
    tqkvd_conn *conn;
    Tqkv__Header *hdr; /* the request's header (owned) */
    uint8_t *payload;  /* owned; hdr's items point into it in order */
    size_t payload_len;
    uint64_t charged;  /* bytes counted in conn->inflight_bytes */
    uint64_t start_ns;

    uv_work_t work;
    uv_write_t write;
    void *ns; /* tqkv_ns * of the request, when it names one */
    tqkvd_item *items;
    size_t n_items;
    uint32_t pending; /* asynchronous store answers still awaited */
    uint32_t layer_begin, layer_count;
    int decode_dtype; /* 0: send blocks */
    int direct;       /* PUT of blocks read straight into the items' reservations */
    int validated;    /* direct PUT: its blocks were checked by the worker that read them */
    uint8_t cluster_ns_tried; /* cluster.c: the namespace was looked up in Redis */
    uint8_t peer_tried;       /* cluster.c: the peers were asked */
    size_t cur_item, item_got;

    /* the response */
    Tqkv__Header resp;
    Tqkv__Item *ritems;
    Tqkv__Item **rpitems;
    Tqkv__KV *rkv;
    Tqkv__KV **rpkv;
    size_t n_rkv, cap_rkv;
    char **strs; /* strings owned by the response (kv values, message) */
    size_t n_strs, cap_strs;
    uint8_t *lookup_keys; /* LOOKUP: n x 32 contiguous */
    uint8_t *lookup_tiers;
    tqkv_lookup_result lookup;
    void *head; /* preamble + packed header */
} tqkvd_req;

/* ---- server.c ---- */
int tqkvd_server_init(tqkvd_server *s, tqkvd_config *cfg);
int tqkvd_server_run(tqkvd_server *s);
void tqkvd_server_close(tqkvd_server *s);
/* Starts the graceful shutdown (signals; tests). */
void tqkvd_server_shutdown(tqkvd_server *s, const char *why);
/* Apply callbacks of the settings table (config.c). */
int tqkvd_server_apply_capacity(tqkvd_server *s);
int tqkvd_server_apply_log_level(tqkvd_server *s);
int tqkvd_server_apply_encode_device(tqkvd_server *s);
int tqkvd_server_apply_ssd_capacity(tqkvd_server *s);
int tqkvd_server_apply_write_policy(tqkvd_server *s);

/* ---- lower.c: the SSD and Redis tiers, the namespace registry ---- */
/* Opens the configured lower tiers on s->loop, attaches them to the store with their write
 * policies, then restores the namespaces registered before (ssd_dir's registry), with their
 * ids. @return 0 or an error (logged). */
int tqkvd_lower_open(tqkvd_server *s);
/* Records a new namespace in the registry (durable before it returns) under the id the store
 * will give it. No-op without an SSD tier. @return 0 or TQKV_EIO. */
int tqkvd_nsreg_append(tqkvd_server *s, const tqkv_ns_desc *d, uint32_t id);
/* Closes the registry. */
void tqkvd_lower_close(tqkvd_server *s);

/* ---- dispatch.c: per-namespace codec data ---- */
/* Builds the daemon's per-namespace data from a stored description and sets it as the
 * namespace's user pointer. @return 0, TQKV_ENOMEM or the codec's refusal. */
int tqkvd__ns_attach_info(tqkv_ns *ns);

/* ---- conn.c ---- */
void tqkvd_conn_accept(tqkvd_server *s, uv_stream_t *listener, int is_tcp);
/* Closes a connection (pending requests finish and are dropped). */
void tqkvd_conn_close(tqkvd_conn *c, const char *why);
/* Sends the request's response (req->resp plus the items' out_ptr/out_len payload pieces when
 * with_payload) and frees the request once written. Takes ownership of req. */
void tqkvd_req_respond(tqkvd_req *req, int with_payload);
/* Sends an error response for a request without a usable header (request_id may be 0) and
 * optionally closes the connection once it is written. */
void tqkvd_conn_send_error(tqkvd_conn *c, uint64_t request_id, int op, int status,
                           const char *msg, int close_after);
/* Called when a request is freed: releases its bytes and may resume reading. */
void tqkvd__conn_request_done(tqkvd_conn *c, uint64_t charged);

/* ---- dispatch.c ---- */
/* Handles one complete request (header + payload); takes ownership of req. */
void tqkvd_dispatch(tqkvd_req *req);
/* For a PUT of encoded blocks whose header is valid and whose keys can all be reserved: makes
 * the reservations so that the payload is read straight into them (req->direct = 1).
 * @return 0, or -1 to read the payload into a buffer of its own (the request is then handled,
 * and any error answered, by tqkvd_dispatch as usual). */
int tqkvd_put_prepare_direct(tqkvd_req *req);
/* Checks a direct PUT's blocks in place (what its worker job would do), on the worker that read
 * the payload; tqkvd_dispatch then commits them without another trip to the pool. Sets each
 * item's status. Touches only the request. */
void tqkvd__put_validate(tqkvd_req *req);
/* Frees a request and everything it owns (references, reservations, buffers). */
void tqkvd_req_free(tqkvd_req *req);
/* Frees the daemon's per-namespace data; before the store is destroyed. */
void tqkvd__dispatch_cleanup(tqkvd_server *s);
/* Response helpers. */
void tqkvd_req_set_status(tqkvd_req *req, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- auth.c ---- */
/* Constant-time equality of a presented token and a configured one (time depends only on the
 * configured token's length). @return 1 if equal. */
int tqkvd_token_equal(const char *given, size_t given_len, const char *expected);

/* ---- codec.c ---- */
/* Selects the encoder for raw PUTs (tqkvd_encode_device). @return 0 or TQKV_ENODEVICE (cuda
 * asked for but not available). */
int tqkvd_codec_select(int device);
/* Name of the encoder in use ("cpu", "cuda"). */
const char *tqkvd_codec_name(void);

#endif
