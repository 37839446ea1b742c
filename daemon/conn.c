/* tqkvd connections: accept with the connection limit, frame reassembly (preamble + header into
 * the connection's buffer, the payload straight into the request's own buffer), per-connection
 * in-flight limits with read pausing, response writes and orderly close. Malformed framing gets
 * an error frame and, when the stream cannot be resynchronised, a closed connection.
 *
 * A large payload is read by a worker rather than by the loop: the loop thread alone can copy
 * only so many bytes per second out of the kernel (and, on memory not touched before, take the
 * page faults), while one worker per uploading connection spreads that over the cores. The
 * worker reads exactly the frame's remaining payload bytes with recv() on the connection's
 * socket while libuv's reading is stopped, so the next frame is left in the socket for the loop;
 * it gives the connection back to the loop as soon as the peer pauses (a slow peer never holds
 * a worker for long: the loop reads the rest as usual). A PUT of encoded blocks read whole by
 * the worker is also checked by it (tqkvd__put_validate), so that the loop only commits it.
 *
 * Large responses are the mirror image: a response with TX_WORKER_MIN payload bytes or more,
 * made when nothing else is being written to its connection, is sent by a worker (non-blocking
 * sendmsg of the frame head and the blocks, which stay held by the request's read references
 * until it is done), so that the copies of several GETs into their sockets run on several cores
 * rather than all on the loop thread. While a worker sends, the loop writes nothing to that
 * connection: the responses made meanwhile wait in the connection's queue and are written after
 * it, so responses leave a connection in the order they were made (clients match them by
 * request id, but a client reading one reply at a time gets them in the order it asked, as
 * before). A peer that stops reading holds the worker for a bounded time only: the worker hands
 * the unsent rest back to the loop, which writes it with uv_write like any other response. */
#include "server.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "tqkv_alloc.h"
#include "tqkv_log.h"
#include "tqkv_time.h"

#define MOD "conn"
#define RBUF_INITIAL (64u << 10)
/* Payload bytes still to come for which a worker reads them (smaller ones: the loop). */
#define RX_WORKER_MIN (256u << 10)
/* The worker hands the connection back to the loop when the socket has been empty this long, or
 * when it finds the socket empty after this long in all. */
#define RX_POLL_MS 2
#define RX_HOLD_NS (50ull * 1000 * 1000)
/* Response payload bytes from which a worker sends the response (smaller ones: the loop). */
#define TX_WORKER_MIN (256u << 10)
/* The sending worker hands the rest back to the loop when the socket has taken nothing for
 * TX_POLL_MS, or when it finds the socket full after TX_HOLD_NS in all. */
#define TX_POLL_MS 10
#define TX_HOLD_NS (50ull * 1000 * 1000)
/* Buffers per sendmsg call (a batched GET may have more; the rest goes in the next call). */
#define TX_IOV 64

/* A response (or error frame) waiting in its connection's queue, or being sent by a worker. */
typedef struct tqkvd_tx_msg {
    struct tqkvd_tx_msg *next;
    tqkvd_conn *conn;
    tqkvd_req *req;        /* a response (owned), or NULL for an error frame */
    struct err_write *err; /* the error frame (owned) when req is NULL */
    uint64_t total;        /* payload bytes */
    /* worker state, set before the job is queued */
    uv_work_t work;
    int fd;
    int err_no;   /* 0 or a negative errno from sendmsg */
    unsigned idx; /* first buffer not wholly sent */
    size_t off;   /* bytes of bufs[idx] sent */
    unsigned nbufs;
    uv_buf_t bufs[]; /* preamble + header, then the payload pieces */
} tqkvd_tx_msg;

typedef struct err_write {
    uv_write_t w;
    tqkvd_conn *conn;
    void *head;
    size_t len;
    int close_after;
} err_write;

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);

static void conn_unref(tqkvd_conn *c)
{
    if (--c->refs > 0)
        return;
    tqkvd_server *s = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->n_conns--;
    tqkv_free(c->rbuf);
    tqkv_free(c);
}

static void on_close(uv_handle_t *h)
{
    tqkvd_conn *c = h->data;
    c->closed = 1;
    if (c->cur) { /* a request whose payload was still arriving */
        tqkvd_req *r = c->cur;
        c->cur = NULL;
        tqkvd_req_free(r);
    }
    while (c->txq_head) { /* responses that were waiting behind a worker's send */
        tqkvd_tx_msg *m = c->txq_head;
        c->txq_head = m->next;
        if (m->req) {
            tqkvd_req_free(m->req);
        } else {
            tqkv_free(m->err->head);
            tqkv_free(m->err);
            conn_unref(c);
        }
        tqkv_free(m);
    }
    c->txq_tail = NULL;
    conn_unref(c);
}

void tqkvd_conn_close(tqkvd_conn *c, const char *why)
{
    if (c->closing)
        return;
    c->closing = 1;
    c->reading = 0;
    TQKV_LOGD(MOD, "msg=\"close\" conn=%" PRIu64 " peer=%s why=\"%s\"", c->id, c->peer, why);
    if (c->rx_busy || c->tx_busy) {
        /* the socket is closed once the workers using it are done (rx_after, tx_after) */
        __atomic_store_n(&c->rx_abort, 1, __ATOMIC_RELAXED);
        __atomic_store_n(&c->tx_abort, 1, __ATOMIC_RELAXED);
        return;
    }
    uv_close(&c->h.handle, on_close);
}

static void start_reading(tqkvd_conn *c)
{
    if (c->reading || c->closing || c->rx_busy || c->srv->shutting_down)
        return;
    if (uv_read_start(&c->h.stream, on_alloc, on_read) == 0)
        c->reading = 1;
}

static void stop_reading(tqkvd_conn *c)
{
    if (!c->reading)
        return;
    uv_read_stop(&c->h.stream);
    c->reading = 0;
}

void tqkvd_conn_accept(tqkvd_server *s, uv_stream_t *listener, int is_tcp)
{
    tqkvd_conn *c = tqkv_calloc(1, sizeof *c);
    if (!c) {
        TQKV_LOGE(MOD, "msg=\"out of memory accepting a connection\"");
        return;
    }
    c->srv = s;
    c->is_tcp = is_tcp;
    c->id = ++s->next_conn_id;
    c->refs = 1;
    c->h.handle.data = c;
    if (is_tcp)
        uv_tcp_init(s->loop, &c->h.tcp);
    else
        uv_pipe_init(s->loop, &c->h.pipe, 0);
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->n_conns++;
    if (uv_accept(listener, &c->h.stream) != 0) {
        tqkvd_conn_close(c, "accept failed");
        return;
    }
    s->conns_total++;
    if (is_tcp) {
        uv_tcp_nodelay(&c->h.tcp, 1);
        struct sockaddr_storage ss;
        int len = sizeof ss;
        char ip[64] = "?";
        if (uv_tcp_getpeername(&c->h.tcp, (struct sockaddr *)&ss, &len) == 0) {
            if (ss.ss_family == AF_INET6)
                uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof ip);
            else
                uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof ip);
        }
        snprintf(c->peer, sizeof c->peer, "%s", ip);
    } else {
        snprintf(c->peer, sizeof c->peer, "unix");
    }
    if (s->n_conns > (uint64_t)s->cfg.max_connections) {
        s->conns_refused++;
        TQKV_LOGW(MOD, "msg=\"connection refused: limit\" max_connections=%lld",
                  (long long)s->cfg.max_connections);
        tqkvd_conn_send_error(c, 0, 0, TQKV_ETOOMANY, "too many connections", 1);
        return;
    }
    TQKV_LOGD(MOD, "msg=\"accepted\" conn=%" PRIu64 " peer=%s", c->id, c->peer);
    start_reading(c);
}

/* ---- reading ---- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    tqkvd_conn *c = h->data;
    if (c->state == TQKVD_RD_PAYLOAD) {
        /* Read the payload in place: never past the end of this frame. */
        tqkvd_req *r = c->cur;
        if (r->direct) { /* into the current item's reservation, never past it */
            tqkvd_item *it = &r->items[r->cur_item];
            buf->base = (char *)it->dst + r->item_got;
            buf->len = it->src_len - r->item_got;
            return;
        }
        buf->base = (char *)r->payload + c->pgot;
        buf->len = r->payload_len - c->pgot;
        return;
    }
    if (c->rcap - c->rlen < 4096) {
        size_t ncap = c->rcap ? c->rcap * 2 : RBUF_INITIAL;
        uint8_t *n = tqkv_realloc(c->rbuf, ncap);
        if (!n) {
            buf->base = NULL;
            buf->len = 0; /* libuv reports UV_ENOBUFS */
            return;
        }
        c->rbuf = n;
        c->rcap = ncap;
    }
    buf->base = (char *)c->rbuf + c->rlen;
    buf->len = c->rcap - c->rlen;
}

static void charge(tqkvd_conn *c, tqkvd_req *r, uint64_t bytes)
{
    r->charged += bytes;
    c->inflight_bytes += bytes;
}

static int process_rbuf(tqkvd_conn *c);
static void rx_start(tqkvd_conn *c);

/* Closes a connection whose peer has shut its write side once nothing is left to answer. */
static void maybe_close_eof(tqkvd_conn *c)
{
    if (c->eof && !c->closing && c->inflight_reqs == 0 && c->state == TQKVD_RD_HEAD)
        tqkvd_conn_close(c, "eof");
}

void tqkvd__conn_request_done(tqkvd_conn *c, uint64_t charged)
{
    c->inflight_bytes -= charged;
    c->inflight_reqs--;
    if (!c->closing && !c->close_after_write && !c->srv->shutting_down &&
        c->state == TQKVD_RD_HEAD &&
        c->inflight_bytes < (uint64_t)c->srv->cfg.max_inflight_bytes) {
        if (!c->eof)
            start_reading(c);
        /* Bytes that arrived before a pause may hold complete frames. */
        if (!c->processing && c->rlen >= TQKV_PREAMBLE_SIZE) {
            c->refs++;
            process_rbuf(c);
            conn_unref(c);
        }
    }
    conn_unref(c);
}

/* Copies n bytes that arrived with the header into the payload destination. */
static void payload_fill(tqkvd_req *r, const uint8_t *src, size_t n)
{
    if (!r->direct) {
        memcpy(r->payload, src, n);
        return;
    }
    while (n) {
        tqkvd_item *it = &r->items[r->cur_item];
        size_t k = it->src_len - r->item_got;
        if (k > n)
            k = n;
        memcpy((uint8_t *)it->dst + r->item_got, src, k);
        src += k;
        n -= k;
        r->item_got += k;
        if (r->item_got == it->src_len) {
            r->cur_item++;
            r->item_got = 0;
        }
    }
}

static void finish_payload(tqkvd_conn *c)
{
    tqkvd_req *r = c->cur;
    c->cur = NULL;
    c->state = TQKVD_RD_HEAD;
    c->pgot = 0;
    tqkvd_dispatch(r);
}

/* Takes complete frames out of rbuf. @return 0 to continue reading, or -1 if the connection is
 * being closed or reading is paused. */
static int process_rbuf(tqkvd_conn *c)
{
    tqkvd_server *s = c->srv;
    size_t off = 0;
    int rc = 0;
    c->processing = 1;
    while (!c->closing && !c->close_after_write && c->state == TQKVD_RD_HEAD) {
        size_t avail = c->rlen - off;
        if (avail < TQKV_PREAMBLE_SIZE)
            break;
        tqkv_preamble p;
        int r = tqkv_preamble_parse(c->rbuf + off, avail, (uint32_t)s->cfg.max_frame, &p);
        if (r) {
            /* The frame boundaries cannot be trusted any more: answer and close. */
            char msg[160];
            if (r == TQKV_EFRAMETOOBIG)
                snprintf(msg, sizeof msg, "frame of %" PRIu64 " bytes exceeds max_frame %lld",
                         tqkv_preamble_frame_size(&p), (long long)s->cfg.max_frame);
            else if (r == TQKV_EBADVERSION)
                snprintf(msg, sizeof msg, "protocol version %u not supported (this daemon: %d)",
                         p.version, TQKV_PROTOCOL_VERSION);
            else if (r == TQKV_EBADMAGIC)
                snprintf(msg, sizeof msg, "bad magic: a frame starts with \"TQKV\"");
            else
                snprintf(msg, sizeof msg, "bad preamble: reserved flags set");
            s->request_errors++;
            tqkvd_conn_send_error(c, 0, 0, r, msg, 1);
            rc = -1;
            break;
        }
        if (avail < TQKV_PREAMBLE_SIZE + (size_t)p.header_len) {
            /* Make room for the whole header (at most TQKV_MAX_HEADER_LEN). */
            size_t need = TQKV_PREAMBLE_SIZE + (size_t)p.header_len + 4096;
            if (need > c->rcap) {
                memmove(c->rbuf, c->rbuf + off, avail);
                c->rlen = avail;
                off = 0;
                uint8_t *n = tqkv_realloc(c->rbuf, need);
                if (!n) {
                    tqkvd_conn_close(c, "out of memory");
                    return -1;
                }
                c->rbuf = n;
                c->rcap = need;
            }
            break;
        }
        /* Admission: wait while this connection has too much in flight (one request is always
         * admitted when nothing else is, so a frame larger than the limit still goes through). */
        uint64_t fsize = tqkv_preamble_frame_size(&p);
        if (c->inflight_reqs > 0 &&
            c->inflight_bytes + fsize > (uint64_t)s->cfg.max_inflight_bytes) {
            stop_reading(c);
            rc = -1;
            break;
        }
        tqkvd_req *req = tqkv_calloc(1, sizeof *req);
        Tqkv__Header *h = NULL;
        int hr = req ? tqkv_header_unpack(c->rbuf + off + TQKV_PREAMBLE_SIZE, p.header_len, &h)
                     : TQKV_ENOMEM;
        if (hr) {
            if (h)
                tqkv_header_free(h);
            tqkv_free(req);
            s->request_errors++;
            if (hr == TQKV_ENOMEM) {
                tqkvd_conn_send_error(c, 0, 0, TQKV_ENOMEM, "out of memory for the frame", 1);
                rc = -1;
                break;
            }
            /* The header is malformed but the frame's length is known: skip the frame. The
             * payload may not have arrived yet; a skipped payload still has to be read, so close
             * instead when it is not all here (a client that sends garbage gets no more). */
            if (avail < fsize) {
                tqkvd_conn_send_error(c, 0, 0, hr, "malformed protobuf header", 1);
                rc = -1;
                break;
            }
            tqkvd_conn_send_error(c, 0, 0, hr, "malformed protobuf header", 0);
            off += (size_t)fsize;
            continue;
        }
        tqkv__header__init(&req->resp);
        req->conn = c;
        req->hdr = h;
        req->payload_len = p.payload_len;
        req->start_ns = tqkv_now_ns();
        c->refs++;
        c->inflight_reqs++;
        charge(c, req, fsize);
        s->bytes_in += fsize;
        /* A PUT of encoded blocks is read straight into the store's reservations when it can
         * be; otherwise into a buffer of its own. */
        if (p.payload_len && tqkvd_put_prepare_direct(req) != 0) {
            req->payload = tqkv_malloc(p.payload_len);
            if (!req->payload) {
                tqkvd_req_free(req);
                tqkvd_conn_send_error(c, 0, 0, TQKV_ENOMEM, "out of memory for the frame", 1);
                rc = -1;
                break;
            }
        }
        off += TQKV_PREAMBLE_SIZE + p.header_len;
        size_t have = c->rlen - off;
        if (have > p.payload_len)
            have = p.payload_len;
        c->pgot = 0;
        if (have)
            payload_fill(req, c->rbuf + off, have);
        c->pgot = have;
        off += have;
        if (have == p.payload_len) {
            c->pgot = 0;
            tqkvd_dispatch(req);
        } else {
            c->cur = req;
            c->state = TQKVD_RD_PAYLOAD;
            if (p.payload_len - have >= RX_WORKER_MIN)
                rx_start(c);
        }
    }
    if (off) {
        memmove(c->rbuf, c->rbuf + off, c->rlen - off);
        c->rlen -= off;
    }
    /* Give back a buffer grown for a big header once it is empty. */
    if (c->rlen == 0 && c->rcap > RBUF_INITIAL) {
        tqkv_free(c->rbuf);
        c->rbuf = NULL;
        c->rcap = 0;
    }
    c->processing = 0;
    return rc;
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    tqkvd_conn *c = st->data;
    if (nread < 0) {
        if (nread != UV_EOF)
            TQKV_LOGD(MOD, "msg=\"read error\" conn=%" PRIu64 " err=%s", c->id,
                      uv_strerror((int)nread));
        stop_reading(c);
        if (nread != UV_EOF) {
            tqkvd_conn_close(c, "read error");
            return;
        }
        /* Half-close: requests already read are still answered (a pipelining client may shut
         * its write side), then the connection closes. */
        c->eof = 1;
        if (c->state == TQKVD_RD_PAYLOAD) /* a frame cut short can never complete */
            tqkvd_conn_close(c, "eof inside a frame");
        else
            maybe_close_eof(c);
        return;
    }
    if (c->close_after_write) /* refused (e.g. authentication): read nothing more */
        return;
    c->refs++; /* dispatch may finish requests synchronously */
    if (c->state == TQKVD_RD_PAYLOAD) {
        tqkvd_req *r = c->cur;
        c->pgot += (size_t)nread;
        if (r->direct && nread > 0) {
            r->item_got += (size_t)nread;
            if (r->item_got == r->items[r->cur_item].src_len) {
                r->cur_item++;
                r->item_got = 0;
            }
        }
        if (c->pgot == c->cur->payload_len)
            finish_payload(c);
    } else {
        c->rlen += (size_t)nread;
    }
    if (c->state == TQKVD_RD_HEAD)
        process_rbuf(c);
    conn_unref(c);
}

/* ---- payloads read by a worker ---- */

typedef struct {
    uv_work_t work;
    tqkvd_conn *conn;
    tqkvd_req *req;
    int fd;
    size_t off; /* payload bytes already read when the job started */
    size_t got; /* payload bytes read by the worker */
    int err;    /* 0, UV_EOF (the peer closed inside the frame) or a negative errno */
} rx_job;

/* Worker: reads the rest of the current frame's payload into its destination (the items'
 * reservations, or the request's buffer), never past the frame's end. Touches only the job, the
 * request (which nothing else uses until the payload is complete) and the socket. */
static void rx_work(uv_work_t *w)
{
    rx_job *j = w->data;
    tqkvd_req *r = j->req;
    tqkvd_conn *c = j->conn; /* only its rx_abort flag */
    size_t left = r->payload_len - j->off;
    uint64_t t0 = tqkv_now_ns();
    while (left > 0 && !__atomic_load_n(&c->rx_abort, __ATOMIC_RELAXED)) {
        uint8_t *dst;
        size_t want;
        if (r->direct) {
            tqkvd_item *it = &r->items[r->cur_item];
            dst = (uint8_t *)it->dst + r->item_got;
            want = it->src_len - r->item_got;
        } else {
            dst = r->payload + j->off + j->got;
            want = left;
        }
        ssize_t n = recv(j->fd, dst, want, 0);
        if (n > 0) {
            j->got += (size_t)n;
            left -= (size_t)n;
            if (r->direct) {
                r->item_got += (size_t)n;
                if (r->item_got == r->items[r->cur_item].src_len) {
                    r->cur_item++;
                    r->item_got = 0;
                }
            }
            continue;
        }
        if (n == 0) {
            j->err = UV_EOF;
            break;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            j->err = -errno;
            break;
        }
        if (tqkv_now_ns() - t0 > RX_HOLD_NS)
            break;
        struct pollfd pfd = {.fd = j->fd, .events = POLLIN};
        int pr = poll(&pfd, 1, RX_POLL_MS);
        if (pr == 0 || (pr < 0 && errno != EINTR))
            break; /* the peer paused: the loop waits for the rest */
    }
    /* A complete PUT of blocks is checked here, while its bytes are in this core's cache, rather
     * than on another trip through the pool. */
    if (left == 0 && r->direct) {
        tqkvd__put_validate(r);
        r->validated = 1;
    }
}

static void rx_after(uv_work_t *w, int status)
{
    rx_job *j = w->data;
    tqkvd_conn *c = j->conn;
    tqkvd_server *s = c->srv;
    int err = j->err;
    s->works_inflight--;
    c->rx_busy = 0;
    c->pgot += j->got;
    tqkv_free(j);
    if (c->closing) { /* closed while the worker read: the socket can go once no one uses it */
        if (!c->tx_busy)
            uv_close(&c->h.handle, on_close);
        conn_unref(c);
        return;
    }
    if (err == UV_EOF) {
        c->eof = 1;
        tqkvd_conn_close(c, "eof inside a frame");
    } else if (err) {
        TQKV_LOGD(MOD, "msg=\"read error\" conn=%" PRIu64 " err=%s", c->id, uv_strerror(err));
        tqkvd_conn_close(c, "read error");
    } else {
        if (c->pgot == c->cur->payload_len)
            finish_payload(c);
        start_reading(c); /* the next frame, or the rest of this payload if the peer paused */
    }
    conn_unref(c);
}

/* Hands the rest of the current payload to a worker, when one can take it; otherwise the loop
 * goes on reading it. */
static void rx_start(tqkvd_conn *c)
{
    tqkvd_server *s = c->srv;
    uv_os_fd_t fd;
    if (c->closing || s->shutting_down || uv_fileno(&c->h.handle, &fd) != 0)
        return;
    rx_job *j = tqkv_calloc(1, sizeof *j);
    if (!j)
        return;
    j->conn = c;
    j->req = c->cur;
    j->fd = fd;
    j->off = c->pgot;
    j->work.data = j;
    stop_reading(c);
    c->rx_busy = 1;
    __atomic_store_n(&c->rx_abort, 0, __ATOMIC_RELAXED);
    if (uv_queue_work(s->loop, &j->work, rx_work, rx_after) != 0) {
        c->rx_busy = 0;
        tqkv_free(j);
        start_reading(c);
        return;
    }
    s->works_inflight++;
    c->refs++;
}

/* ---- writing ---- */

static void on_resp_written(uv_write_t *w, int status);
static void tx_pump(tqkvd_conn *c);

/* Lingering close. Closing a socket that still has unread input makes the kernel send a reset,
 * and a reset makes the peer's kernel drop our error reply before the peer reads it (e.g. the
 * rest of an oversized frame). So after a closing error reply we shut our write side (the peer
 * reads the reply, then end-of-stream), discard whatever it still sends, and close when it
 * closes or a read fails. Such a connection still counts against max_connections. */
static void linger_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    static char sink[64 * 1024]; /* loop thread only; the bytes are thrown away */
    buf->base = sink;
    buf->len = sizeof sink;
}

static void linger_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    if (nread < 0)
        tqkvd_conn_close(st->data, "closed after error reply");
}

static void on_linger_shutdown(uv_shutdown_t *req, int status)
{
    tqkv_free(req);
}

static void conn_linger(tqkvd_conn *c)
{
    uv_shutdown_t *req = tqkv_malloc(sizeof(*req));
    if (c->closing || c->rx_busy || c->tx_busy || !req ||
        uv_shutdown(req, &c->h.stream, on_linger_shutdown) != 0) {
        tqkv_free(req);
        tqkvd_conn_close(c, "error reply sent");
        return;
    }
    uv_read_stop(&c->h.stream);
    c->reading = 0;
    if (uv_read_start(&c->h.stream, linger_alloc, linger_read) != 0)
        tqkvd_conn_close(c, "error reply sent");
}

static void on_err_written(uv_write_t *w, int status)
{
    err_write *e = (err_write *)w;
    tqkvd_conn *c = e->conn;
    c->writes_pending--;
    tqkv_free(e->head);
    if (e->close_after) {
        if (status == 0)
            conn_linger(c);
        else
            tqkvd_conn_close(c, "error reply not sent");
    }
    tqkv_free(e);
    if (c->writes_pending == 0)
        tx_pump(c);
    conn_unref(c);
}

/* Writes an error frame with libuv; on failure frees it and closes the connection. */
static void err_uv_write(err_write *e)
{
    tqkvd_conn *c = e->conn;
    uv_buf_t b = uv_buf_init(e->head, (unsigned)e->len);
    if (uv_write(&e->w, &c->h.stream, &b, 1, on_err_written) != 0) {
        tqkv_free(e->head);
        tqkv_free(e);
        conn_unref(c);
        tqkvd_conn_close(c, "write failed");
        return;
    }
    c->writes_pending++;
}

/* Writes a response's buffers with libuv (which copies the array); on failure frees the request
 * and closes the connection. */
static void resp_uv_write(tqkvd_req *req, const uv_buf_t *bufs, unsigned n)
{
    tqkvd_conn *c = req->conn;
    req->write.data = req;
    if (uv_write(&req->write, &c->h.stream, bufs, n, on_resp_written) != 0) {
        tqkvd_conn_close(c, "write failed");
        tqkvd_req_free(req);
        return;
    }
    c->writes_pending++;
}

static tqkvd_tx_msg *msg_new(tqkvd_conn *c, const uv_buf_t *bufs, unsigned n)
{
    tqkvd_tx_msg *m = tqkv_calloc(1, sizeof *m + (size_t)n * sizeof(uv_buf_t));
    if (!m)
        return NULL;
    m->conn = c;
    m->nbufs = n;
    if (n)
        memcpy(m->bufs, bufs, (size_t)n * sizeof *bufs);
    return m;
}

static void txq_push(tqkvd_conn *c, tqkvd_tx_msg *m)
{
    m->next = NULL;
    if (c->txq_tail)
        c->txq_tail->next = m;
    else
        c->txq_head = m;
    c->txq_tail = m;
}

/* Whether a response with `total` payload bytes is for a worker to send. It goes to the pool even
 * when every worker is busy: waiting there for one costs less than the loop sending it (with 4
 * clients on 2 workers, letting the loop send whenever no worker was free left it ~3x the loop
 * CPU per GET and ~40% less GET throughput than queueing). */
static int tx_for_worker(const tqkvd_conn *c, uint64_t total)
{
    (void)c;
    return total >= TX_WORKER_MIN;
}

/* A response is written (status < 0: it could not be): frees the request, which may take
 * further frames out of the read buffer, and closes the connection if it was to close. */
static void resp_done(tqkvd_req *r, int status)
{
    tqkvd_conn *c = r->conn;
    if (status < 0 && !c->closing)
        tqkvd_conn_close(c, "write failed");
    c->refs++;
    tqkvd_req_free(r);
    if (c->close_after_write && c->inflight_reqs == 0)
        tqkvd_conn_close(c, "refused");
    else
        maybe_close_eof(c);
    conn_unref(c);
}

static void on_resp_written(uv_write_t *w, int status)
{
    tqkvd_req *r = w->data;
    tqkvd_conn *c = r->conn;
    c->writes_pending--;
    c->refs++;
    resp_done(r, status);
    if (c->writes_pending == 0)
        tx_pump(c);
    conn_unref(c);
}

/* Worker: sends the message's buffers from where they stand, non-blocking, waiting for room in
 * the socket a bounded time. Touches only the message (whose buffers stay valid: the request and
 * its read references are not freed while the job runs) and the socket. */
static void tx_work(uv_work_t *w)
{
    tqkvd_tx_msg *m = w->data;
    tqkvd_conn *c = m->conn; /* only its tx_abort flag */
    uint64_t t0 = tqkv_now_ns();
    while (m->idx < m->nbufs && !__atomic_load_n(&c->tx_abort, __ATOMIC_RELAXED)) {
        struct iovec iov[TX_IOV];
        size_t n = 0;
        for (unsigned i = m->idx; i < m->nbufs && n < TX_IOV; i++, n++) {
            size_t skip = i == m->idx ? m->off : 0;
            iov[n].iov_base = m->bufs[i].base + skip;
            iov[n].iov_len = m->bufs[i].len - skip;
        }
        struct msghdr mh;
        memset(&mh, 0, sizeof mh);
        mh.msg_iov = iov;
        mh.msg_iovlen = n;
        ssize_t k = sendmsg(m->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (k > 0) {
            size_t left = (size_t)k;
            while (m->idx < m->nbufs && left >= m->bufs[m->idx].len - m->off) {
                left -= m->bufs[m->idx].len - m->off;
                m->idx++;
                m->off = 0;
            }
            m->off += left;
            continue;
        }
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            m->err_no = -errno;
            break;
        }
        if (tqkv_now_ns() - t0 > TX_HOLD_NS)
            break; /* a slow reader: the loop writes the rest */
        struct pollfd pfd = {.fd = m->fd, .events = POLLOUT};
        int pr = poll(&pfd, 1, TX_POLL_MS);
        if (pr == 0 || (pr < 0 && errno != EINTR))
            break; /* the peer stopped reading: the loop writes the rest */
    }
}

static void tx_after(uv_work_t *w, int status)
{
    (void)status;
    tqkvd_tx_msg *m = w->data;
    tqkvd_conn *c = m->conn;
    tqkvd_server *s = c->srv;
    tqkvd_req *req = m->req;
    s->works_inflight--;
    c->tx_busy = 0;
    if (c->closing) { /* closed while the worker sent: the socket can go once no one uses it */
        tqkv_free(m);
        tqkvd_req_free(req);
        if (!c->rx_busy)
            uv_close(&c->h.handle, on_close);
        conn_unref(c);
        return;
    }
    if (m->err_no) {
        TQKV_LOGD(MOD, "msg=\"write error\" conn=%" PRIu64 " err=%s", c->id,
                  uv_strerror(m->err_no));
        int err = m->err_no;
        tqkv_free(m);
        resp_done(req, err);
        conn_unref(c);
        return;
    }
    if (m->idx == m->nbufs) {
        tqkv_free(m);
        tx_pump(c); /* what waited behind it */
        resp_done(req, 0);
    } else {
        /* The peer is slow: the loop writes the rest, ahead of what waited behind it. */
        TQKV_LOGD(MOD, "msg=\"slow reader: send handed back to the loop\" conn=%" PRIu64,
                  c->id);
        m->bufs[m->idx].base += m->off;
        m->bufs[m->idx].len -= m->off;
        resp_uv_write(req, m->bufs + m->idx, m->nbufs - m->idx);
        tqkv_free(m);
        tx_pump(c);
    }
    conn_unref(c);
}

/* Hands a response to a worker. @return 0, or -1 if none can take it (the caller writes it). */
static int tx_start(tqkvd_conn *c, tqkvd_tx_msg *m)
{
    tqkvd_server *s = c->srv;
    uv_os_fd_t fd;
    if (c->closing || uv_fileno(&c->h.handle, &fd) != 0)
        return -1;
    m->fd = fd;
    m->idx = 0;
    m->off = 0;
    m->err_no = 0;
    m->work.data = m;
    c->tx_busy = 1;
    __atomic_store_n(&c->tx_abort, 0, __ATOMIC_RELAXED);
    if (uv_queue_work(s->loop, &m->work, tx_work, tx_after) != 0) {
        c->tx_busy = 0;
        return -1;
    }
    s->works_inflight++;
    c->refs++;
    return 0;
}

/* Writes what waits in the connection's queue, in order, until a large response goes to a
 * worker (it waits until the loop's own writes are out, so that it cannot overtake them). */
static void tx_pump(tqkvd_conn *c)
{
    while (!c->closing && !c->tx_busy && c->txq_head) {
        tqkvd_tx_msg *m = c->txq_head;
        int worker = m->req && tx_for_worker(c, m->total);
        if (worker && c->writes_pending)
            return; /* on_resp_written / on_err_written pump again */
        c->txq_head = m->next;
        if (!c->txq_head)
            c->txq_tail = NULL;
        if (worker && tx_start(c, m) == 0)
            return;
        if (m->req)
            resp_uv_write(m->req, m->bufs, m->nbufs);
        else
            err_uv_write(m->err);
        tqkv_free(m);
    }
}

void tqkvd_conn_send_error(tqkvd_conn *c, uint64_t request_id, int op, int status,
                           const char *msg, int close_after)
{
    TQKV_LOGD(MOD, "msg=\"error reply\" conn=%" PRIu64 " status=%s why=\"%s\"", c->id,
              tqkv_err_name(status), msg);
    if (c->closing)
        return;
    Tqkv__Header h = TQKV__HEADER__INIT;
    h.op = (Tqkv__Op)op;
    h.request_id = request_id;
    h.response = 1;
    h.status = status;
    h.message = (char *)msg;
    err_write *e = tqkv_calloc(1, sizeof *e);
    if (!e || tqkv_frame_build(&h, 0, &e->head, &e->len) != 0) {
        tqkv_free(e);
        tqkvd_conn_close(c, "out of memory");
        return;
    }
    e->conn = c;
    e->close_after = close_after;
    c->refs++;
    if (close_after)
        stop_reading(c);
    if (c->tx_busy || c->txq_head) { /* after the responses made before it */
        tqkvd_tx_msg *m = msg_new(c, NULL, 0);
        if (!m) {
            tqkv_free(e->head);
            tqkv_free(e);
            conn_unref(c);
            tqkvd_conn_close(c, "out of memory");
            return;
        }
        m->err = e;
        txq_push(c, m);
        return;
    }
    err_uv_write(e);
}

void tqkvd_req_respond(tqkvd_req *req, int with_payload)
{
    tqkvd_conn *c = req->conn;
    tqkvd_server *s = c->srv;
    Tqkv__Header *h = &req->resp;
    h->response = 1;
    h->request_id = req->hdr ? req->hdr->request_id : 0;
    if (req->hdr)
        h->op = req->hdr->op;
    if (h->status)
        s->request_errors++;
    if (c->closing) {
        tqkvd_req_free(req);
        return;
    }
    /* Payload pieces: items in order, each item's bytes at out_ptr. */
    size_t nb = 1;
    uint64_t total = 0;
    if (with_payload)
        for (size_t i = 0; i < req->n_items; i++)
            if (req->items[i].out_len) {
                nb++;
                total += req->items[i].out_len;
            }
    uv_buf_t stackbufs[64];
    uv_buf_t *bufs = nb <= 64 ? stackbufs : tqkv_mallocarray(nb, sizeof *bufs);
    size_t head_len = 0;
    int r = bufs ? tqkv_frame_build(h, (uint32_t)total, &req->head, &head_len) : TQKV_ENOMEM;
    if (r) {
        if (bufs != stackbufs)
            tqkv_free(bufs);
        TQKV_LOGE(MOD, "msg=\"cannot build a reply\" err=%s", tqkv_err_name(r));
        tqkvd_conn_close(c, "reply too large or out of memory");
        tqkvd_req_free(req);
        return;
    }
    bufs[0] = uv_buf_init(req->head, (unsigned)head_len);
    size_t k = 1;
    if (with_payload)
        for (size_t i = 0; i < req->n_items; i++)
            if (req->items[i].out_len)
                bufs[k++] = uv_buf_init((char *)req->items[i].out_ptr,
                                        (unsigned)req->items[i].out_len);
    charge(c, req, head_len + total);
    s->bytes_out += head_len + total;
    int worker = tx_for_worker(c, total);
    int behind = c->tx_busy || c->txq_head != NULL; /* a worker sends, or responses wait */
    if (behind || worker) {
        tqkvd_tx_msg *m = msg_new(c, bufs, (unsigned)k);
        if (!m && behind) {
            tqkvd_conn_close(c, "out of memory");
            tqkvd_req_free(req);
            goto out;
        }
        if (m) {
            m->req = req;
            m->total = total;
            if (behind || c->writes_pending) { /* tx_pump writes it, or hands it to a worker */
                txq_push(c, m);
                goto out;
            }
            if (tx_start(c, m) == 0)
                goto out;
            tqkv_free(m);
        }
    }
    resp_uv_write(req, bufs, (unsigned)k); /* the loop writes it now */
out:
    if (bufs != stackbufs)
        tqkv_free(bufs);
}
