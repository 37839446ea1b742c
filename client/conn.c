/* The transport of libtqkv: opening the socket a URL names, and the pipelined request/response
 * engine. The engine keeps up to max_inflight requests on the wire, writes while the socket
 * takes bytes and reads whatever responses are ready in the same poll loop (so a large GET
 * batch never deadlocks on full socket buffers), and matches responses to requests by id in the
 * order the daemon completes them. Payloads go straight from and to the caller's buffers: a
 * request's KV is sent with sendmsg from the caller's iovecs, a response's payload is read with
 * readv into the places the call's sink chose. */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "client_internal.h"
#include "tqkv_alloc.h"
#include "tqkv_time.h"

int tqkv__fail(tqkv_client *c, int rc, const char *fmt, ...)
{
    if (!c)
        return rc;
    int n = snprintf(c->err, sizeof(c->err), "%s: %s", tqkv_err_name(rc), tqkv_strerror(rc));
    if (fmt && n > 0 && (size_t)n < sizeof(c->err) - 2) {
        va_list ap;
        va_start(ap, fmt);
        c->err[n++] = ':';
        c->err[n++] = ' ';
        vsnprintf(c->err + n, sizeof(c->err) - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return rc;
}

/* ---- Dialing ------------------------------------------------------------------------------ */

static int set_nonblock(int fd, int on)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0)
        return -1;
    return fcntl(fd, F_SETFL, on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK);
}

/* connect() with a timeout; leaves the socket non-blocking. */
static int connect_timeout(int fd, const struct sockaddr *sa, socklen_t len, uint32_t timeout_ms)
{
    if (set_nonblock(fd, 1) < 0)
        return -errno;
    if (connect(fd, sa, len) == 0)
        return 0;
    if (errno != EINPROGRESS && errno != EAGAIN)
        return -errno;
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    int r;
    do
        r = poll(&p, 1, (int)timeout_ms);
    while (r < 0 && errno == EINTR);
    if (r == 0)
        return -ETIMEDOUT;
    if (r < 0)
        return -errno;
    int soerr = 0;
    socklen_t sl = sizeof(soerr);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
        return -errno;
    return soerr ? -soerr : 0;
}

static int dial_unix(const char *path, uint32_t timeout_ms, char *errbuf, size_t errbuf_len)
{
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    if (!*path || strlen(path) >= sizeof(sa.sun_path)) {
        snprintf(errbuf, errbuf_len, "bad unix socket path '%s'", path);
        return TQKV_EINVAL;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(errbuf, errbuf_len, "socket: %s", strerror(errno));
        return TQKV_ECONNECT;
    }
    int r = connect_timeout(fd, (struct sockaddr *)&sa, sizeof(sa), timeout_ms);
    if (r < 0) {
        snprintf(errbuf, errbuf_len, "connect unix:%s: %s", path, strerror(-r));
        close(fd);
        return r == -ETIMEDOUT ? TQKV_ETIMEDOUT : TQKV_ECONNECT;
    }
    return fd;
}

static int dial_tcp(const char *hostport, uint32_t timeout_ms, char *errbuf, size_t errbuf_len)
{
    char host[256];
    const char *port;
    if (hostport[0] == '[') { /* [v6]:port */
        const char *end = strchr(hostport, ']');
        if (!end || end[1] != ':' || (size_t)(end - hostport - 1) >= sizeof(host))
            goto bad;
        memcpy(host, hostport + 1, (size_t)(end - hostport - 1));
        host[end - hostport - 1] = '\0';
        port = end + 2;
    } else {
        const char *colon = strrchr(hostport, ':');
        if (!colon || (size_t)(colon - hostport) >= sizeof(host) || colon == hostport)
            goto bad;
        memcpy(host, hostport, (size_t)(colon - hostport));
        host[colon - hostport] = '\0';
        port = colon + 1;
    }
    if (!*port || strspn(port, "0123456789") != strlen(port) || atol(port) > 65535)
        goto bad;

    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int gr = getaddrinfo(host, port, &hints, &res);
    if (gr != 0) {
        snprintf(errbuf, errbuf_len, "resolve %s: %s", host, gai_strerror(gr));
        return TQKV_ECONNECT;
    }
    int rc = TQKV_ECONNECT;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0)
            continue;
        int r = connect_timeout(fd, ai->ai_addr, ai->ai_addrlen, timeout_ms);
        if (r == 0) {
            int one = 1;
            /* Requests are written as one frame; Nagle would only delay the last segment. */
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            freeaddrinfo(res);
            return fd;
        }
        snprintf(errbuf, errbuf_len, "connect tcp:%s: %s", hostport, strerror(-r));
        rc = r == -ETIMEDOUT ? TQKV_ETIMEDOUT : TQKV_ECONNECT;
        close(fd);
    }
    freeaddrinfo(res);
    return rc;
bad:
    snprintf(errbuf, errbuf_len, "bad tcp address '%s' (want host:port or [v6]:port)", hostport);
    return TQKV_EINVAL;
}

int tqkv__dial(const char *url, uint32_t timeout_ms, char *errbuf, size_t errbuf_len)
{
    if (!url)
        return TQKV_EINVAL;
    if (strncmp(url, "unix://", 7) == 0)
        return dial_unix(url + 7, timeout_ms, errbuf, errbuf_len);
    if (strncmp(url, "tcp://", 6) == 0)
        return dial_tcp(url + 6, timeout_ms, errbuf, errbuf_len);
    snprintf(errbuf, errbuf_len, "bad url '%s' (want unix:///path or tcp://host:port)", url);
    return TQKV_EINVAL;
}

/* ---- The exchange engine ------------------------------------------------------------------ */

#define TQKV__MAX_SEND_IOV 64

typedef struct {
    /* send side */
    size_t next_send;  /* index of the next call to start sending */
    size_t in_flight;  /* sent (fully or partly) and not answered */
    int sending;       /* a frame is partly written */
    void *head;        /* preamble + header of the frame being written */
    size_t head_len, head_off;
    const struct iovec *piov; /* its payload */
    int piovcnt, pidx;
    size_t poff;
    /* receive side */
    tqkv__call *rcall;        /* call whose payload is being read, NULL between frames */
    struct iovec *riov;       /* private copy of rcall's iovecs, advanced as bytes arrive */
    int riovcnt, ridx;
    uint64_t rleft;
    int rdiscard_rc;          /* sink refused: payload read into scratch and dropped */
    uint8_t scratch[65536];
} xstate;

static void break_conn(tqkv_client *c)
{
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
}

/* Starts writing the next call's frame. */
static int start_send(tqkv_client *c, xstate *x, tqkv__call *call)
{
    uint64_t plen = 0;
    for (int i = 0; i < call->iovcnt; i++)
        plen += call->iov[i].iov_len;
    call->req->request_id = c->next_id++;
    void *head = NULL;
    size_t head_len = 0;
    if (plen > UINT32_MAX)
        return TQKV_EFRAMETOOBIG;
    int rc = tqkv_frame_build(call->req, (uint32_t)plen, &head, &head_len);
    if (rc)
        return rc;
    if (head_len + plen > c->max_frame) {
        tqkv_free(head);
        return TQKV_EFRAMETOOBIG;
    }
    x->head = head;
    x->head_len = head_len;
    x->head_off = 0;
    x->piov = call->iov;
    x->piovcnt = call->iovcnt;
    x->pidx = 0;
    x->poff = 0;
    x->sending = 1;
    return 0;
}

/* Writes as much of the current frame as the socket takes. @return 0 or a negative code. */
static int do_send(tqkv_client *c, xstate *x)
{
    struct iovec v[TQKV__MAX_SEND_IOV];
    int k = 0;
    if (x->head_off < x->head_len) {
        v[k].iov_base = (uint8_t *)x->head + x->head_off;
        v[k].iov_len = x->head_len - x->head_off;
        k++;
    }
    for (int i = x->pidx; i < x->piovcnt && k < TQKV__MAX_SEND_IOV; i++) {
        size_t off = i == x->pidx ? x->poff : 0;
        if (x->piov[i].iov_len == off)
            continue;
        v[k].iov_base = (uint8_t *)x->piov[i].iov_base + off;
        v[k].iov_len = x->piov[i].iov_len - off;
        k++;
    }
    if (k > 0) {
        struct msghdr mh;
        memset(&mh, 0, sizeof(mh));
        mh.msg_iov = v;
        mh.msg_iovlen = (size_t)k;
        ssize_t w = sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                return 0;
            return tqkv__fail(c, TQKV_ECLOSED, "send: %s", strerror(errno));
        }
        size_t left = (size_t)w;
        size_t h = x->head_len - x->head_off < left ? x->head_len - x->head_off : left;
        x->head_off += h;
        left -= h;
        while (left > 0 && x->pidx < x->piovcnt) {
            size_t room = x->piov[x->pidx].iov_len - x->poff;
            size_t t = room < left ? room : left;
            x->poff += t;
            left -= t;
            if (x->poff == x->piov[x->pidx].iov_len) {
                x->pidx++;
                x->poff = 0;
            }
        }
    }
    while (x->pidx < x->piovcnt && x->piov[x->pidx].iov_len == x->poff) {
        x->pidx++;
        x->poff = 0;
    }
    if (x->head_off == x->head_len && x->pidx == x->piovcnt) {
        tqkv_free(x->head);
        x->head = NULL;
        x->sending = 0;
    }
    return 0;
}

/* Reads what is available into the receive buffer. @return bytes read (> 0), 0 if none is
 * available now, or a negative code (connection closed or failed). */
static ssize_t fill_rbuf(tqkv_client *c, size_t need)
{
    if (c->rpos > 0 && (c->rlen == c->rpos || c->rcap - c->rpos < need)) {
        memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
        c->rlen -= c->rpos;
        c->rpos = 0;
    }
    if (c->rcap < need) {
        uint8_t *nb = tqkv_realloc(c->rbuf, need);
        if (!nb)
            return TQKV_ENOMEM;
        c->rbuf = nb;
        c->rcap = need;
    }
    ssize_t r = recv(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen, MSG_DONTWAIT);
    if (r > 0) {
        c->rlen += (size_t)r;
        return r;
    }
    if (r == 0)
        return tqkv__fail(c, TQKV_ECLOSED, "the daemon closed the connection");
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
        return 0;
    return tqkv__fail(c, TQKV_ECLOSED, "recv: %s", strerror(errno));
}

/* Moves payload bytes (from the receive buffer, then the socket) into the current call's
 * iovecs. Sets x->rcall = NULL when the payload is complete. */
static int read_payload(tqkv_client *c, xstate *x, size_t n_calls, size_t *completed)
{
    while (x->rleft > 0) {
        if (c->rpos < c->rlen) { /* buffered bytes first */
            size_t avail = c->rlen - c->rpos;
            if (x->rdiscard_rc) {
                size_t t = avail < x->rleft ? avail : (size_t)x->rleft;
                c->rpos += t;
                x->rleft -= t;
                continue;
            }
            while (avail > 0 && x->rleft > 0) {
                /* items without bytes (misses) have empty iovecs: skip them */
                while (x->riov[x->ridx].iov_len == 0)
                    x->ridx++;
                struct iovec *v = &x->riov[x->ridx];
                size_t t = v->iov_len < avail ? v->iov_len : avail;
                memcpy(v->iov_base, c->rbuf + c->rpos, t);
                c->rpos += t;
                avail -= t;
                x->rleft -= t;
                v->iov_base = (uint8_t *)v->iov_base + t;
                v->iov_len -= t;
                if (v->iov_len == 0)
                    x->ridx++;
            }
            continue;
        }
        ssize_t r;
        if (x->rdiscard_rc) {
            size_t t = x->rleft < sizeof(x->scratch) ? (size_t)x->rleft : sizeof(x->scratch);
            r = recv(c->fd, x->scratch, t, MSG_DONTWAIT);
        } else {
            while (x->riov[x->ridx].iov_len == 0)
                x->ridx++;
            int cnt = x->riovcnt - x->ridx;
            r = readv(c->fd, x->riov + x->ridx, cnt > 64 ? 64 : cnt);
        }
        if (r == 0)
            return tqkv__fail(c, TQKV_ECLOSED, "the daemon closed the connection mid-payload");
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                return 0;
            return tqkv__fail(c, TQKV_ECLOSED, "recv: %s", strerror(errno));
        }
        x->rleft -= (size_t)r;
        if (x->rdiscard_rc)
            continue;
        size_t left = (size_t)r;
        while (left > 0) {
            struct iovec *v = &x->riov[x->ridx];
            size_t t = v->iov_len < left ? v->iov_len : left;
            v->iov_base = (uint8_t *)v->iov_base + t;
            v->iov_len -= t;
            left -= t;
            if (v->iov_len == 0)
                x->ridx++;
        }
    }
    tqkv__call *call = x->rcall;
    if (x->rdiscard_rc)
        call->rc = x->rdiscard_rc;
    call->done = 1;
    (*completed)++;
    x->in_flight--;
    x->rcall = NULL;
    tqkv_free(x->riov);
    x->riov = NULL;
    (void)n_calls;
    return 0;
}

/* Parses complete frame heads in the receive buffer and dispatches them. */
static int read_frames(tqkv_client *c, xstate *x, tqkv__call *calls, size_t n, uint64_t base_id,
                       size_t *completed)
{
    for (;;) {
        if (x->rcall) {
            int rc = read_payload(c, x, n, completed);
            if (rc || x->rcall)
                return rc;
            continue;
        }
        if (*completed == n)
            return 0;
        size_t have = c->rlen - c->rpos;
        tqkv_preamble pre;
        int rc = have < TQKV_PREAMBLE_SIZE
                     ? TQKV_ETRUNCATED
                     : tqkv_preamble_parse(c->rbuf + c->rpos, have, c->max_frame, &pre);
        if (rc == TQKV_ETRUNCATED || (rc == 0 && have < TQKV_PREAMBLE_SIZE + pre.header_len)) {
            size_t need = rc ? TQKV_PREAMBLE_SIZE : TQKV_PREAMBLE_SIZE + pre.header_len;
            if (need < 65536)
                need = 65536;
            ssize_t r = fill_rbuf(c, need);
            if (r < 0)
                return (int)r;
            if (r == 0)
                return 0;
            continue;
        }
        if (rc)
            return tqkv__fail(c, rc, "bad response preamble");
        Tqkv__Header *h = NULL;
        rc = tqkv_header_unpack(c->rbuf + c->rpos + TQKV_PREAMBLE_SIZE, pre.header_len, &h);
        if (rc)
            return tqkv__fail(c, rc, "bad response header");
        c->rpos += TQKV_PREAMBLE_SIZE + pre.header_len;
        uint64_t idx = h->request_id - base_id;
        if (h->request_id < base_id || idx >= n || calls[idx].done || calls[idx].resp ||
            idx >= x->next_send) {
            rc = tqkv__fail(c, TQKV_EPROTO, "response to unknown request id %llu (op %s)",
                            (unsigned long long)h->request_id, tqkv_op_name(h->op));
            tqkv_header_free(h);
            return rc;
        }
        tqkv__call *call = &calls[idx];
        call->resp = h;
        x->rcall = call;
        x->rleft = pre.payload_len;
        x->rdiscard_rc = 0;
        x->ridx = 0;
        x->riovcnt = 0;
        if (pre.payload_len > 0) {
            int src = call->sink ? call->sink(call, h, pre.payload_len) : TQKV_EPROTO;
            uint64_t total = 0;
            for (int i = 0; !src && i < call->riovcnt; i++)
                total += call->riov[i].iov_len;
            if (!src && total != pre.payload_len)
                src = TQKV_EPROTO;
            if (!src) {
                x->riov = tqkv_mallocarray((size_t)call->riovcnt, sizeof(struct iovec));
                if (!x->riov)
                    src = TQKV_ENOMEM;
                else
                    memcpy(x->riov, call->riov, (size_t)call->riovcnt * sizeof(struct iovec));
                /* zero-length iovecs would stall the cursor: skip them as it advances */
                x->riovcnt = call->riovcnt;
                while (x->ridx < x->riovcnt && x->riov && x->riov[x->ridx].iov_len == 0)
                    x->ridx++;
            }
            if (src) {
                x->rdiscard_rc = src;
                if (src == TQKV_EPROTO)
                    tqkv__fail(c, src, "unexpected response payload of %u bytes",
                               (unsigned)pre.payload_len);
            }
        }
    }
}

int tqkv__exchange(tqkv_client *c, tqkv__call *calls, size_t n)
{
    if (c->fd < 0)
        return tqkv__fail(c, TQKV_ECLOSED, "connection broken by an earlier error");
    xstate *x = tqkv_calloc(1, sizeof(*x));
    if (!x)
        return tqkv__fail(c, TQKV_ENOMEM, NULL);
    const uint64_t base_id = c->next_id;
    size_t completed = 0;
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        calls[i].resp = NULL;
        calls[i].rc = 0;
        calls[i].done = 0;
        calls[i].riov = NULL;
        calls[i].riovcnt = 0;
    }

    while (completed < n) {
        /* Start frames while the window allows; a frame that cannot be built fails its call
         * alone, without touching the wire (ids stay consecutive: the id is taken first). */
        while (!x->sending && x->next_send < n && x->in_flight < c->max_inflight) {
            tqkv__call *call = &calls[x->next_send];
            int src = start_send(c, x, call);
            x->next_send++;
            if (src) {
                call->rc = tqkv__fail(c, src, "request %zu not sent", x->next_send - 1);
                call->done = 1;
                completed++;
                continue;
            }
            x->in_flight++;
            rc = do_send(c, x);
            if (rc)
                goto broken;
        }
        if (completed == n)
            break;
        struct pollfd p = {.fd = c->fd, .events = POLLIN | (x->sending ? POLLOUT : 0)};
        int pr;
        do
            pr = poll(&p, 1, (int)c->timeout_ms);
        while (pr < 0 && errno == EINTR);
        if (pr == 0) {
            rc = tqkv__fail(c, TQKV_ETIMEDOUT, "no progress for %u ms", c->timeout_ms);
            goto broken;
        }
        if (pr < 0) {
            rc = tqkv__fail(c, TQKV_EIO, "poll: %s", strerror(errno));
            goto broken;
        }
        if (x->sending && (p.revents & POLLOUT)) {
            rc = do_send(c, x);
            if (rc)
                goto broken;
        }
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            rc = read_frames(c, x, calls, n, base_id, &completed);
            if (rc)
                goto broken;
        }
    }
    /* Every call is answered but a frame is still partly written (the daemon answered before
     * reading all of it): the stream cannot be resynchronised, so the connection is done. */
    if (x->sending)
        break_conn(c);
    goto out;
broken:
    break_conn(c);
    for (size_t i = 0; i < n; i++)
        if (!calls[i].done) {
            calls[i].rc = rc;
            calls[i].done = 1;
        }
    /* ids of unsent calls were never used; keep them monotonic anyway */
out:
    tqkv_free(x->head);
    tqkv_free(x->riov);
    tqkv_free(x);
    return rc;
}

void tqkv__calls_cleanup(tqkv__call *calls, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        tqkv_header_free(calls[i].resp);
        calls[i].resp = NULL;
    }
}
