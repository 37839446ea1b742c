/* The TCP peer transport (transport.h): a blocking client of another tqkvd's TCP listener that
 * speaks the ordinary wire protocol (docs/protocol.md): HELLO once per connection, then one GET
 * of whole encoded blocks per fetch. It runs on the daemon's worker threads, so blocking is fine;
 * every wait goes through poll with the connection's timeout, so a dead or stalled peer costs at
 * most one timeout per call. */
#include "transport.h"

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
#include <unistd.h>

#include "frame.h"
#include "tqkv_alloc.h"
#include "tqkv_errors.h"
#include "tqkv_time.h"

struct tqkvd_peer_conn {
    int fd;
    uint32_t timeout_ms;
    uint32_t max_frame;
    uint64_t next_id;
};

/* Waits for `events` on fd until the deadline. @return 0, TQKV_ETIMEDOUT or TQKV_ECLOSED. */
static int wait_fd(int fd, short events, uint64_t deadline_ns)
{
    for (;;) {
        uint64_t now = tqkv_now_ns();
        if (now >= deadline_ns)
            return TQKV_ETIMEDOUT;
        struct pollfd p = {.fd = fd, .events = events};
        int ms = (int)((deadline_ns - now + 999999) / 1000000);
        int r = poll(&p, 1, ms);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return TQKV_ECLOSED;
        if (r == 0)
            return TQKV_ETIMEDOUT;
        if (p.revents & (POLLERR | POLLNVAL))
            return TQKV_ECLOSED;
        return 0;
    }
}

/* The deadline restarts whenever bytes move: the timeout bounds a stall, not a transfer. */
static int send_all(tqkvd_peer_conn *c, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    uint64_t deadline = tqkv_now_ns() + (uint64_t)c->timeout_ms * 1000000ull;
    while (len) {
        ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            deadline = tqkv_now_ns() + (uint64_t)c->timeout_ms * 1000000ull;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int e = wait_fd(c->fd, POLLOUT, deadline);
            if (e)
                return e;
            continue;
        }
        return TQKV_ECLOSED;
    }
    return 0;
}

static int recv_all(tqkvd_peer_conn *c, void *buf, size_t len)
{
    uint8_t *p = buf;
    uint64_t deadline = tqkv_now_ns() + (uint64_t)c->timeout_ms * 1000000ull;
    while (len) {
        ssize_t n = recv(c->fd, p, len, MSG_DONTWAIT);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            deadline = tqkv_now_ns() + (uint64_t)c->timeout_ms * 1000000ull;
            continue;
        }
        if (n == 0)
            return TQKV_ECLOSED;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            int e = wait_fd(c->fd, POLLIN, deadline);
            if (e)
                return e;
            continue;
        }
        return TQKV_ECLOSED;
    }
    return 0;
}

/* Sends one request frame (no payload). @return 0 or a transport error. */
static int send_request(tqkvd_peer_conn *c, Tqkv__Header *h)
{
    void *frame = NULL;
    size_t len = 0;
    int e = tqkv_frame_build(h, 0, &frame, &len);
    if (e)
        return e;
    if (len > c->max_frame) {
        tqkv_free(frame);
        return TQKV_EFRAMETOOBIG;
    }
    e = send_all(c, frame, len);
    tqkv_free(frame);
    return e;
}

/* Reads one response frame: its header (*out, owned) and its payload (*payload, tqkv_malloc'd
 * or NULL when empty). @return 0 or a transport error. */
static int recv_response(tqkvd_peer_conn *c, uint64_t want_id, Tqkv__Header **out,
                         uint8_t **payload, size_t *payload_len)
{
    uint8_t pre[TQKV_PREAMBLE_SIZE];
    tqkv_preamble p;
    uint8_t *hbuf = NULL, *pl = NULL;
    Tqkv__Header *h = NULL;
    int e = recv_all(c, pre, sizeof pre);
    if (e)
        return e;
    if ((e = tqkv_preamble_parse(pre, sizeof pre, c->max_frame, &p)) != 0)
        return TQKV_EPROTO;
    if (p.header_len && !(hbuf = tqkv_malloc(p.header_len)))
        return TQKV_ENOMEM;
    if (p.payload_len && !(pl = tqkv_malloc(p.payload_len))) {
        e = TQKV_ENOMEM;
        goto fail;
    }
    if ((e = recv_all(c, hbuf, p.header_len)) != 0 || (e = recv_all(c, pl, p.payload_len)) != 0)
        goto fail;
    if (tqkv_header_unpack(hbuf, p.header_len, &h) != 0 || !h->response ||
        h->request_id != want_id) {
        e = TQKV_EPROTO;
        goto fail;
    }
    tqkv_free(hbuf);
    *out = h;
    *payload = pl;
    *payload_len = p.payload_len;
    return 0;
fail:
    if (h)
        tqkv_header_free(h);
    tqkv_free(hbuf);
    tqkv_free(pl);
    return e;
}

/* Splits "host:port" / "[v6]:port". @return 0 or TQKV_EINVAL. */
static int split_addr(const char *addr, char *host, size_t hostlen, char *port, size_t portlen)
{
    const char *colon = strrchr(addr, ':');
    if (!colon || colon == addr || !colon[1] || strlen(colon + 1) >= portlen)
        return TQKV_EINVAL;
    size_t n = (size_t)(colon - addr);
    if (addr[0] == '[' && n >= 2 && addr[n - 1] == ']') {
        addr++;
        n -= 2;
    }
    if (n == 0 || n >= hostlen)
        return TQKV_EINVAL;
    memcpy(host, addr, n);
    host[n] = 0;
    snprintf(port, portlen, "%s", colon + 1);
    return 0;
}

static int dial(const char *addr, uint32_t timeout_ms, int *fd_out)
{
    char host[256], port[16];
    if (split_addr(addr, host, sizeof host, port, sizeof port))
        return TQKV_EINVAL;
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    if (getaddrinfo(host, port, &hints, &res) != 0 || !res)
        return TQKV_ECONNECT;
    int e = TQKV_ECONNECT;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
                        a->ai_protocol);
        if (fd < 0)
            continue;
        int r = connect(fd, a->ai_addr, a->ai_addrlen);
        if (r != 0 && errno == EINPROGRESS) {
            uint64_t deadline = tqkv_now_ns() + (uint64_t)timeout_ms * 1000000ull;
            r = wait_fd(fd, POLLOUT, deadline);
            if (r == 0) {
                int err = 0;
                socklen_t el = sizeof err;
                r = (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) == 0 && err == 0) ? 0 : -1;
            } else if (r == TQKV_ETIMEDOUT) {
                e = TQKV_ETIMEDOUT;
            }
        }
        if (r == 0) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            freeaddrinfo(res);
            *fd_out = fd;
            return 0;
        }
        close(fd);
    }
    freeaddrinfo(res);
    return e;
}

static int tcp_connect(const char *addr, const tqkvd_peer_opts *o, tqkvd_peer_conn **out)
{
    *out = NULL;
    tqkvd_peer_conn *c = tqkv_calloc(1, sizeof *c);
    if (!c)
        return TQKV_ENOMEM;
    c->fd = -1;
    c->timeout_ms = o->timeout_ms ? o->timeout_ms : 1000;
    c->max_frame = o->max_frame ? o->max_frame : (256u << 20);
    c->next_id = 1;
    int e = dial(addr, c->timeout_ms, &c->fd);
    if (e)
        goto fail;
    char name[160];
    snprintf(name, sizeof name, "%s%s", TQKVD_PEER_CLIENT_PREFIX, o->self_id ? o->self_id : "");
    Tqkv__Header h;
    tqkv__header__init(&h);
    h.op = TQKV__OP__OP_HELLO;
    h.request_id = c->next_id++;
    h.protocol_version = 1;
    h.client_name = name;
    h.token = (char *)(o->token ? o->token : "");
    if ((e = send_request(c, &h)) != 0)
        goto fail;
    Tqkv__Header *resp = NULL;
    uint8_t *pl = NULL;
    size_t pl_len = 0;
    if ((e = recv_response(c, h.request_id, &resp, &pl, &pl_len)) != 0)
        goto fail;
    tqkv_free(pl);
    e = resp->status;
    if (e == 0 && resp->max_frame && resp->max_frame < c->max_frame)
        c->max_frame = resp->max_frame;
    tqkv_header_free(resp);
    if (e)
        goto fail;
    *out = c;
    return 0;
fail:
    if (c->fd >= 0)
        close(c->fd);
    tqkv_free(c);
    return e;
}

static int tcp_fetch(tqkvd_peer_conn *c, const char *ns, const uint8_t *keys, size_t n,
                     tqkvd_peer_block *out)
{
    memset(out, 0, n * sizeof *out);
    Tqkv__Item *items = tqkv_calloc(n, sizeof *items);
    Tqkv__Item **pitems = tqkv_calloc(n, sizeof *pitems);
    Tqkv__Header *resp = NULL;
    uint8_t *pl = NULL;
    size_t pl_len = 0;
    int e = TQKV_ENOMEM;
    if (!items || !pitems)
        goto done;
    for (size_t i = 0; i < n; i++) {
        tqkv__item__init(&items[i]);
        items[i].key.data = (uint8_t *)keys + i * 32;
        items[i].key.len = 32;
        pitems[i] = &items[i];
    }
    Tqkv__Header h;
    tqkv__header__init(&h);
    h.op = TQKV__OP__OP_GET;
    h.request_id = c->next_id++;
    h.ns = (char *)ns;
    h.items = pitems;
    h.n_items = n;
    if ((e = send_request(c, &h)) != 0 ||
        (e = recv_response(c, h.request_id, &resp, &pl, &pl_len)) != 0)
        goto done;
    if (resp->status == TQKV_ENONAMESPACE) { /* the peer does not know it: all misses */
        e = 0;
        goto done;
    }
    if (resp->n_items != n) {
        e = TQKV_EPROTO;
        goto done;
    }
    /* Item i's bytes follow those of the items before it. */
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        const Tqkv__Item *it = resp->items[i];
        if (it->payload_len > pl_len - off) {
            e = TQKV_EPROTO;
            goto done;
        }
        off += it->payload_len;
    }
    off = 0;
    for (size_t i = 0; i < n; i++) {
        const Tqkv__Item *it = resp->items[i];
        size_t len = (size_t)it->payload_len;
        if (it->status == 0 && len) {
            void *d = tqkv_malloc(len);
            if (!d) {
                out[i].status = TQKV_ENOMEM;
            } else {
                memcpy(d, pl + off, len);
                out[i].status = 1;
                out[i].data = d;
                out[i].len = len;
            }
        } else if (it->status == 0 || it->status == TQKV_ENOENT) {
            out[i].status = 0;
        } else {
            out[i].status = it->status;
        }
        off += len;
    }
    e = 0;
done:
    if (e)
        for (size_t i = 0; i < n; i++) {
            tqkv_free(out[i].data);
            out[i].data = NULL;
            out[i].len = 0;
            out[i].status = e;
        }
    if (resp)
        tqkv_header_free(resp);
    tqkv_free(pl);
    tqkv_free(items);
    tqkv_free(pitems);
    return e;
}

static void tcp_close(tqkvd_peer_conn *c)
{
    if (!c)
        return;
    if (c->fd >= 0)
        close(c->fd);
    tqkv_free(c);
}

const tqkvd_transport tqkvd_transport_tcp = {
    .name = "tcp",
    .connect = tcp_connect,
    .fetch = tcp_fetch,
    .close = tcp_close,
};

const tqkvd_transport *tqkvd_transport_find(const char *name)
{
    if (name && strcmp(name, "tcp") == 0)
        return &tqkvd_transport_tcp;
    return NULL;
}
