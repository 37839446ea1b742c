/* Internals of libtqkv shared by its source files: the client structure, the pipelined
 * request/response engine (conn.c) and error reporting. Not installed, not part of the API. */
#ifndef TQKV_CLIENT_INTERNAL_H
#define TQKV_CLIENT_INTERNAL_H

#include <stdarg.h>
#include <stdint.h>
#include <sys/uio.h>

#include "frame.h"
#include "tqkv.h"

/* Namespaces registered through this client: raw PUTs announce their dtype. */
typedef struct tqkv__ns_entry {
    struct tqkv__ns_entry *next;
    tqkv_dtype dtype;
    char name[];
} tqkv__ns_entry;

struct tqkv_client {
    int fd;            /* -1 once the connection is broken */
    uint64_t next_id;  /* request ids are allocated in increasing order */
    uint32_t timeout_ms;
    uint32_t max_frame;     /* min(ours, the daemon's) */
    uint32_t max_inflight;
    char *token;
    char *client_name;
    char *server_version;
    int admin;
    tqkv__ns_entry *namespaces;
    /* receive buffer: preamble, header and the first bytes of a payload */
    uint8_t *rbuf;
    size_t rcap, rpos, rlen;
    char err[512];
};

/* One request of a pipelined exchange and, once done, its response. */
typedef struct tqkv__call tqkv__call;
/* Called when the response header of `call` arrived, before its payload is read: it points
 * call->riov at where the payload_len payload bytes go (iovecs summing to payload_len; it may
 * allocate, and must free what it allocated itself later). @return 0, or a negative code: the
 * payload is then discarded and the call fails with that code. */
typedef int (*tqkv__sink_fn)(tqkv__call *call, const Tqkv__Header *resp, uint32_t payload_len);

struct tqkv__call {
    /* in */
    Tqkv__Header *req;         /* request_id is assigned by the engine */
    const struct iovec *iov;   /* request payload pieces */
    int iovcnt;
    tqkv__sink_fn sink;        /* NULL: the response must carry no payload */
    void *ctx;                 /* for the sink */
    /* out */
    Tqkv__Header *resp;        /* owned: tqkv_header_free (tqkv__calls_cleanup does it) */
    struct iovec *riov;        /* set by the sink; the engine consumes a private copy */
    int riovcnt;
    int rc;                    /* transport result: 0 when resp is valid */
    int done;
};

/* Sends every call (at most c->max_inflight in flight), reads the responses, matches them by
 * request id (any order) and stores them in the calls. A transport failure (closed
 * connection, timeout, protocol violation) breaks the connection: later calls answer
 * TQKV_ECLOSED. @return 0 if every call got a response (each response's status is the caller's
 * to check), else the transport error (calls that did not complete have rc set). */
int tqkv__exchange(tqkv_client *c, tqkv__call *calls, size_t n);

/* Frees the responses of n calls. */
void tqkv__calls_cleanup(tqkv__call *calls, size_t n);

/* Records the error of the last call in c->err ("TQKV_NAME: message[: detail]") and returns rc. */
int tqkv__fail(tqkv_client *c, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Opens the socket of a URL (unix:// or tcp://), blocking connect with a timeout; errbuf gets the
 * reason on failure. @return an fd >= 0, or a negative code. */
int tqkv__dial(const char *url, uint32_t timeout_ms, char *errbuf, size_t errbuf_len);

#endif
