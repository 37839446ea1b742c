/* The Redis engine's I/O: connections, routing, redirections, timeouts and reconnection, on
 * hiredis' asynchronous API (0.14, Debian 12) and its libuv adapter.
 *
 * DESIGN
 * - One node per server: standalone has one, a cluster one per master learnt from CLUSTER SLOTS
 *   (seeds first). Each node holds at most one redisAsyncContext; requests are pipelined on it.
 * - A request (`req`) owns its formatted RESP command. In cluster mode the command is kept until
 *   the reply, so that MOVED (update the slot, resend, refresh the map) and ASK (ASKING + resend
 *   to the target, map unchanged) can replay it; standalone frees it once handed to hiredis.
 * - hiredis 0.14 has no timeouts for the async API, so one repeating timer (`tick`) checks every
 *   node: a connect (plus AUTH) that does not finish in timeout_ms, or in-flight requests with
 *   no reply for timeout_ms, drop the connection. Dropping it (redisAsyncFree) makes hiredis
 *   call every pending callback with a NULL reply; they complete with the node's `fail_status`
 *   (TQKV_ETIMEDOUT here). The same tick reconnects nodes whose backoff expired.
 * - A node that is down refuses requests at once (TQKV_ETIER): the caller is never made to wait
 *   for a dead server. A node that is connecting queues them.
 * - Send window: at most send_window_bytes of commands are handed to a node's hiredis context;
 *   later requests wait on the node's list, in order, and are handed over as replies free room
 *   (node_pump). hiredis memmoves its whole output buffer after each partial write, so a deep
 *   pipeline must not sit there. Past max_queued_bytes (in flight + waiting) calls get
 *   TQKV_EBUSY.
 * - Callbacks may re-enter the engine (a user callback may submit or destroy). hiredis defers a
 *   redisAsyncFree called inside one of its callbacks; so nodes and the engine are freed only in
 *   the tick timer's close callback, after every hiredis callback has run.
 * - Logging: once per node state change (down / connected / reconnected / auth failed), never
 *   per request; retries while down log at debug. */
#include "redis_internal.h"
#include "tqkv_alloc.h"
#include "tqkv_errors.h"
#include "tqkv_log.h"
#include "tqkv_redis.h"
#include "tqkv_time.h"

#include <hiredis/adapters/libuv.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <lz4.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MOD "redis"
#define REFRESH_MIN_NS (100ull * 1000 * 1000) /* at most 10 CLUSTER SLOTS per second */
#define LZ4_MIN_BYTES 256                     /* below this compression is never worth it */

typedef enum {
    OP_PUT,
    OP_GET,
    OP_EXISTS,
    OP_DEL,
    OP_KV_SET,
    OP_KV_SETNX,
    OP_KV_GET,
    OP_KV_DEL,
    OP_KV_EXPIRE,
    OP_SADD,
    OP_SREM,
    OP_SMEMBERS,
} op_kind;

typedef enum { NODE_DOWN, NODE_CONNECTING, NODE_UP } node_state;
/* Any callback type, for the helpers shared by the calls (converted back before the call). */
typedef void (*tqkv__redis_fn)(void);

typedef struct node node;
typedef struct req req;

struct req {
    tqkv_redis *r;
    node *n;          /* node it is queued or in flight on */
    req *prev, *next; /* that node's waiting or in-flight list, in order */
    op_kind op;
    uint8_t redirects;
    uint8_t waiting; /* on n's waiting list (not handed to hiredis yet) */
    uint8_t asking;  /* send ASKING first (ASK redirection) */
    uint16_t slot;
    char *cmd; /* formatted command; NULL once sent in standalone mode */
    size_t cmd_len;
    size_t value_bytes; /* PUT: bytes stored, for the statistics */
    union {
        tqkv_redis_done_cb done;
        tqkv_redis_get_cb get;
        tqkv_redis_members_cb members;
    } cb;
    void *arg;
    /* GET: what the value must name, checked before it is served. */
    size_t ns_len, key_len;
    char *ns;
    uint8_t *key;
};

struct node {
    tqkv_redis *r;
    char *host;
    int port;
    redisAsyncContext *ac;
    node_state st;
    int ever_up;     /* has been connected once: the next connect is a reconnect */
    int down_logged; /* the current outage has been logged */
    int in_map;      /* owns slots (cluster) or is the server (standalone) */
    int fail_status; /* status for the requests of a connection we dropped */
    uint64_t connect_ns, retry_ns, progress_ns;
    uint32_t backoff_ms;
    req *head, *tail;           /* in flight: handed to hiredis, reply pending */
    req *wait_head, *wait_tail; /* waiting for room in the send window */
    uint64_t sent_bytes;        /* command bytes in flight */
    uint64_t queued_bytes;      /* command bytes in flight or waiting */
    uint32_t side_inflight;     /* CLEAR's SCAN/UNLINK commands in flight (not on the lists) */
};

struct tqkv_redis {
    uv_loop_t *loop;
    uv_timer_t tick;
    char *prefix, *username, *password;
    int cluster, lz4, closing;
    uint32_t ttl_ms, timeout_ms, backoff_min_ms, backoff_max_ms, max_redirects;
    uint64_t max_value, max_queued, send_window;
    node **nodes;
    size_t n_nodes, cap_nodes;
    int16_t slots[TQKV_REDIS_SLOTS]; /* node index, -1: unknown */
    int map_loaded, refresh_wanted, refresh_inflight;
    uint64_t refresh_ns;
    tqkv_redis_stats st;
};

static void node_connect(node *n);
static void maybe_refresh(tqkv_redis *r);

void tqkv_redis_config_default(tqkv_redis_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->prefix = "tqkv";
    cfg->timeout_ms = 1000;
    cfg->backoff_min_ms = 50;
    cfg->backoff_max_ms = 2000;
    cfg->max_redirects = 5;
    cfg->max_value_bytes = 256ull << 20;
    cfg->max_queued_bytes = 256ull << 20;
    cfg->send_window_bytes = 8ull << 20;
}

const char *tqkv_redis_state_name(tqkv_redis_state s)
{
    switch (s) {
    case TQKV_REDIS_DOWN:
        return "down";
    case TQKV_REDIS_DEGRADED:
        return "degraded";
    case TQKV_REDIS_UP:
        return "up";
    }
    return "unknown";
}

/* ---- requests ------------------------------------------------------------------------------ */

static req *req_new(tqkv_redis *r, op_kind op, size_t cmd_len, size_t extra)
{
    req *q = tqkv_calloc(1, sizeof(*q) + extra);
    if (!q) return NULL;
    q->cmd = tqkv_malloc(cmd_len);
    if (!q->cmd) {
        tqkv_free(q);
        return NULL;
    }
    q->r = r;
    q->op = op;
    q->cmd_len = cmd_len;
    return q;
}

static void req_free(req *q)
{
    tqkv_free(q->cmd);
    tqkv_free(q);
}

/* Appends q to the list (*head, *tail). */
static void list_push(req **head, req **tail, req *q)
{
    q->next = NULL;
    q->prev = *tail;
    if (*tail)
        (*tail)->next = q;
    else
        *head = q;
    *tail = q;
}

/* Takes q off its node's waiting or in-flight list and out of the byte counts. */
static void req_unlink(req *q)
{
    node *n = q->n;
    if (!n) return;
    req **head = q->waiting ? &n->wait_head : &n->head;
    req **tail = q->waiting ? &n->wait_tail : &n->tail;
    if (q->prev)
        q->prev->next = q->next;
    else
        *head = q->next;
    if (q->next)
        q->next->prev = q->prev;
    else
        *tail = q->prev;
    q->prev = q->next = NULL;
    q->n = NULL;
    n->queued_bytes -= q->cmd_len;
    if (!q->waiting) n->sent_bytes -= q->cmd_len;
    q->waiting = 0;
}

static int is_block_get(const req *q)
{
    return q->op == OP_GET;
}

/* Accounts a failure and calls the callback; frees q. */
static void req_fail(req *q, int status)
{
    tqkv_redis *r = q->r;
    if (status == TQKV_ETIMEDOUT)
        r->st.timeouts++;
    else
        r->st.errors++;
    if (is_block_get(q)) r->st.misses++;
    switch (q->op) {
    case OP_GET:
    case OP_KV_GET:
        q->cb.get(q->arg, status, NULL, 0);
        break;
    case OP_SMEMBERS:
        q->cb.members(q->arg, status, 0, NULL, NULL);
        break;
    default:
        q->cb.done(q->arg, status);
        break;
    }
    req_free(q);
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata);

/* Gives q (already counted in n->queued_bytes, on no list) to hiredis. @return 0, or TQKV_ETIER
 * (the connection is closing): q is then on no list and no longer counted. */
static int req_handover(req *q, node *n)
{
    static const char asking_cmd[] = "*1\r\n$6\r\nASKING\r\n";
    if (!n->ac ||
        (q->asking && redisAsyncFormattedCommand(n->ac, NULL, NULL, asking_cmd,
                                                 sizeof(asking_cmd) - 1) != REDIS_OK) ||
        redisAsyncFormattedCommand(n->ac, on_reply, q, q->cmd, q->cmd_len) != REDIS_OK) {
        n->queued_bytes -= q->cmd_len;
        q->n = NULL;
        return TQKV_ETIER;
    }
    if (!n->head)
        n->progress_ns = tqkv_now_ns(); /* the no-progress clock starts with the first request */
    q->waiting = 0;
    list_push(&n->head, &n->tail, q);
    n->sent_bytes += q->cmd_len;
    if (!q->r->cluster) {
        /* hiredis has its own copy; nothing can redirect a standalone request. */
        tqkv_free(q->cmd);
        q->cmd = NULL;
    }
    return 0;
}

/* Whether one more command of `len` bytes fits in n's send window now. At least one is always in
 * flight, so a command larger than the window still goes. */
static int window_fits(const node *n, size_t len)
{
    return !n->head || !n->r->send_window || n->sent_bytes + len <= n->r->send_window;
}

/* Routes q to node n: straight to hiredis when the send window has room and nothing waits before
 * it, else onto the waiting list (order is kept). @return 0, TQKV_ETIER (n down or closing),
 * TQKV_EBUSY (max_queued_bytes reached); on error q is not queued. */
static int req_send(req *q, node *n, int asking)
{
    if (!n || n->st == NODE_DOWN || !n->ac) return TQKV_ETIER;
    /* Backpressure: what waits or is in flight is memory the caller cannot see; a slow server
     * must not make it grow without bound. */
    if (q->r->max_queued && (n->head || n->wait_head) &&
        n->queued_bytes + q->cmd_len > q->r->max_queued)
        return TQKV_EBUSY;
    q->asking = (uint8_t)asking;
    q->n = n;
    n->queued_bytes += q->cmd_len;
    if (n->wait_head || !window_fits(n, q->cmd_len)) {
        q->waiting = 1;
        list_push(&n->wait_head, &n->wait_tail, q);
        return 0;
    }
    return req_handover(q, n);
}

/* Moves waiting requests into the send window as replies free it. A request hiredis refuses
 * fails (its callback runs, and may destroy the engine: then stop). */
static void node_pump(node *n)
{
    tqkv_redis *r = n->r;
    while (n->wait_head && !r->closing && window_fits(n, n->wait_head->cmd_len)) {
        req *q = n->wait_head;
        req_unlink(q);
        q->n = n;
        n->queued_bytes += q->cmd_len;
        if (req_handover(q, n) < 0) req_fail(q, TQKV_ETIER);
    }
}

/* Fails every waiting request of n (its connection is gone). One at a time from the head: a
 * callback may destroy the engine, which drains the same list. */
static void node_drop_waiting(node *n, int status)
{
    while (n->wait_head) {
        req *q = n->wait_head;
        req_unlink(q);
        req_fail(q, n->r->closing ? TQKV_ECANCELED : status);
    }
}

/* ---- nodes --------------------------------------------------------------------------------- */

static node *node_find(tqkv_redis *r, const char *host, int port, size_t *idx)
{
    for (size_t i = 0; i < r->n_nodes; i++) {
        if (r->nodes[i]->port == port && strcmp(r->nodes[i]->host, host) == 0) {
            if (idx) *idx = i;
            return r->nodes[i];
        }
    }
    return NULL;
}

/* Finds or adds (and starts connecting) the node host:port. @return it, or NULL (ENOMEM). */
static node *node_get(tqkv_redis *r, const char *host, int port, size_t *idx)
{
    node *n = node_find(r, host, port, idx);
    if (n) return n;
    if (r->n_nodes >= INT16_MAX) return NULL;
    if (r->n_nodes == r->cap_nodes) {
        size_t cap = r->cap_nodes ? 2 * r->cap_nodes : 4;
        node **nn = tqkv_realloc(r->nodes, cap * sizeof(*nn));
        if (!nn) return NULL;
        r->nodes = nn;
        r->cap_nodes = cap;
    }
    n = tqkv_calloc(1, sizeof(*n));
    if (!n) return NULL;
    n->host = tqkv_strdup(host);
    if (!n->host) {
        tqkv_free(n);
        return NULL;
    }
    n->r = r;
    n->port = port;
    n->st = NODE_DOWN;
    n->backoff_ms = r->backoff_min_ms;
    if (idx) *idx = r->n_nodes;
    r->nodes[r->n_nodes++] = n;
    if (!r->closing) node_connect(n);
    return n;
}

/* The node lost (or never got) its connection: schedule a retry, log if this is news. */
static void node_down(node *n, const char *why)
{
    tqkv_redis *r = n->r;
    n->st = NODE_DOWN;
    n->ac = NULL;
    n->retry_ns = tqkv_now_ns() + (uint64_t)n->backoff_ms * 1000000ull;
    n->backoff_ms = n->backoff_ms >= r->backoff_max_ms / 2 ? r->backoff_max_ms : 2 * n->backoff_ms;
    if (r->closing) return;
    if (!n->down_logged) {
        TQKV_LOGW(MOD, "msg=\"redis node down\" node=%s:%d reason=\"%s\"", n->host, n->port, why);
        n->down_logged = 1;
    } else {
        TQKV_LOGD(MOD, "msg=\"redis reconnect failed\" node=%s:%d reason=\"%s\"", n->host, n->port,
                  why);
    }
    if (r->cluster) {
        /* A master that vanished may have been failed over: learn the new owners. */
        r->refresh_wanted = 1;
    }
}

static void node_up(node *n)
{
    tqkv_redis *r = n->r;
    n->st = NODE_UP;
    n->backoff_ms = r->backoff_min_ms;
    n->down_logged = 0;
    if (n->ever_up) {
        r->st.reconnects++;
        TQKV_LOGI(MOD, "msg=\"redis node reconnected\" node=%s:%d", n->host, n->port);
    } else {
        TQKV_LOGI(MOD, "msg=\"redis node connected\" node=%s:%d", n->host, n->port);
    }
    n->ever_up = 1;
    if (r->cluster && (!r->map_loaded || r->refresh_wanted)) {
        r->refresh_wanted = 1;
        maybe_refresh(r);
    }
}

/* Drops n's connection on our initiative; its pending requests complete with `status`. */
static void node_fail(node *n, int status, const char *why)
{
    redisAsyncContext *ac = n->ac;
    n->fail_status = status;
    node_down(n, why);
    if (ac) redisAsyncFree(ac); /* deferred by hiredis when called from one of its callbacks */
    node_drop_waiting(n, status);
}

static int map_error(const redisReply *rep);

static void on_connect(const redisAsyncContext *ac, int status)
{
    node *n = ac->data;
    if (n->ac != ac) return;
    if (status != REDIS_OK) {
        /* hiredis frees the context after this callback. */
        node_down(n, ac->errstr ? ac->errstr : "connect failed");
        node_drop_waiting(n, TQKV_ECLOSED);
        return;
    }
    /* Up only once the handshake (AUTH or PING) is answered: a hung server still accepts TCP
     * connections from its listen backlog. */
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    node *n = ac->data;
    if (n->ac != ac) return; /* a connection we dropped ourselves */
    node_down(n, status == REDIS_OK ? "closed" : (ac->errstr ? ac->errstr : "connection lost"));
    node_drop_waiting(n, TQKV_ECLOSED);
}

static void on_hello(redisAsyncContext *ac, void *reply, void *privdata)
{
    node *n = privdata;
    redisReply *rep = reply;
    if (!rep || n->ac != ac) return;
    if (rep->type == REDIS_REPLY_ERROR) {
        /* NOAUTH / WRONGPASS, or LOADING from a server still reading its dataset. */
        int status = map_error(rep);
        if (!n->down_logged && status == TQKV_EAUTH)
            TQKV_LOGE(MOD, "msg=\"redis auth failed\" node=%s:%d reply=\"%.100s\"", n->host,
                      n->port, rep->str);
        if (status == TQKV_EAUTH) n->down_logged = 1;
        node_fail(n, status, "handshake refused");
        return;
    }
    node_up(n);
}

static void node_connect(node *n)
{
    tqkv_redis *r = n->r;
    if (r->closing) return; /* never a new connection for an engine being destroyed */
    n->fail_status = 0;
    n->side_inflight = 0; /* the old connection's commands were all answered when it was freed */
    redisAsyncContext *ac = redisAsyncConnect(n->host, n->port);
    if (!ac) {
        node_down(n, "out of memory");
        return;
    }
    if (ac->err) {
        char why[128];
        snprintf(why, sizeof(why), "%s", ac->errstr);
        redisAsyncFree(ac);
        node_down(n, why);
        return;
    }
    ac->data = n;
    if (redisLibuvAttach(ac, r->loop) != REDIS_OK) {
        redisAsyncFree(ac);
        node_down(n, "cannot attach to the loop");
        return;
    }
    n->ac = ac;
    n->st = NODE_CONNECTING;
    n->connect_ns = tqkv_now_ns();
    /* The connect callback must be set after the adapter: it arms the first write event. */
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    if (r->password) {
        const char *argv[3] = {"AUTH", r->username, r->password};
        size_t lens[3] = {4, r->username ? strlen(r->username) : 0, strlen(r->password)};
        if (!r->username) {
            argv[1] = r->password;
            lens[1] = lens[2];
        }
        redisAsyncCommandArgv(ac, on_hello, n, r->username ? 3 : 2, argv, lens);
    } else {
        const char *argv[1] = {"PING"};
        size_t lens[1] = {4};
        redisAsyncCommandArgv(ac, on_hello, n, 1, argv, lens);
    }
}

/* ---- routing and the slot map -------------------------------------------------------------- */

static node *route(tqkv_redis *r, uint16_t slot)
{
    if (!r->cluster) return r->nodes[0];
    int idx = r->slots[slot];
    if (idx >= 0) return r->nodes[idx];
    /* Unknown slot (no map yet): any live node; a MOVED will tell us the owner. */
    node *best = NULL;
    for (size_t i = 0; i < r->n_nodes; i++) {
        node *n = r->nodes[i];
        if (n->st == NODE_UP) return n;
        if (n->st == NODE_CONNECTING && !best) best = n;
    }
    return best;
}

static void on_slots(redisAsyncContext *ac, void *reply, void *privdata)
{
    node *src = privdata;
    tqkv_redis *r = src->r;
    redisReply *rep = reply;
    r->refresh_inflight = 0;
    if (r->closing) return;
    if (!rep || rep->type != REDIS_REPLY_ARRAY) {
        r->refresh_wanted = 1;
        return;
    }
    int16_t map[TQKV_REDIS_SLOTS];
    for (size_t s = 0; s < TQKV_REDIS_SLOTS; s++)
        map[s] = -1;
    for (size_t i = 0; i < rep->elements; i++) {
        redisReply *e = rep->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
            e->element[0]->type != REDIS_REPLY_INTEGER ||
            e->element[1]->type != REDIS_REPLY_INTEGER ||
            e->element[2]->type != REDIS_REPLY_ARRAY || e->element[2]->elements < 2)
            goto bad;
        long long lo = e->element[0]->integer, hi = e->element[1]->integer;
        redisReply *m = e->element[2];
        if (lo < 0 || hi < lo || hi >= TQKV_REDIS_SLOTS ||
            m->element[0]->type != REDIS_REPLY_STRING ||
            m->element[1]->type != REDIS_REPLY_INTEGER || m->element[1]->integer <= 0 ||
            m->element[1]->integer > 65535)
            goto bad;
        /* An empty or "?" endpoint means "the address you reached me at". */
        const char *host = m->element[0]->str;
        if (host[0] == '\0' || strcmp(host, "?") == 0) host = src->host;
        size_t idx;
        if (!node_get(r, host, (int)m->element[1]->integer, &idx)) {
            r->refresh_wanted = 1;
            return;
        }
        for (long long s = lo; s <= hi; s++)
            map[s] = (int16_t)idx;
    }
    memcpy(r->slots, map, sizeof(map));
    for (size_t i = 0; i < r->n_nodes; i++)
        r->nodes[i]->in_map = 0;
    size_t masters = 0;
    for (size_t s = 0; s < TQKV_REDIS_SLOTS; s++) {
        if (map[s] >= 0 && !r->nodes[map[s]]->in_map) {
            r->nodes[map[s]]->in_map = 1;
            masters++;
        }
    }
    if (!r->map_loaded)
        TQKV_LOGI(MOD, "msg=\"redis cluster slot map loaded\" masters=%zu", masters);
    else
        TQKV_LOGD(MOD, "msg=\"redis cluster slot map refreshed\" masters=%zu", masters);
    r->map_loaded = 1;
    r->st.slot_refreshes++;
    (void)ac;
    return;
bad:
    TQKV_LOGD(MOD, "msg=\"malformed CLUSTER SLOTS reply\" node=%s:%d", src->host, src->port);
    r->refresh_wanted = 1;
}

static void maybe_refresh(tqkv_redis *r)
{
    static const char cmd[] = "*2\r\n$7\r\nCLUSTER\r\n$5\r\nSLOTS\r\n";
    if (!r->cluster || !r->refresh_wanted || r->refresh_inflight || r->closing) return;
    uint64_t now = tqkv_now_ns();
    if (r->refresh_ns && now - r->refresh_ns < REFRESH_MIN_NS) return; /* the tick will come back */
    node *src = NULL;
    for (size_t i = 0; i < r->n_nodes && !src; i++)
        if (r->nodes[i]->st == NODE_UP) src = r->nodes[i];
    if (!src) return;
    if (redisAsyncFormattedCommand(src->ac, on_slots, src, cmd, sizeof(cmd) - 1) != REDIS_OK)
        return;
    r->refresh_inflight = 1;
    r->refresh_wanted = 0;
    r->refresh_ns = now;
}

/* ---- replies ------------------------------------------------------------------------------- */

static int map_error(const redisReply *rep)
{
    if (strncmp(rep->str, "NOAUTH", 6) == 0 || strncmp(rep->str, "WRONGPASS", 9) == 0 ||
        strncmp(rep->str, "NOPERM", 6) == 0)
        return TQKV_EAUTH;
    if (strncmp(rep->str, "OOM", 3) == 0) return TQKV_ENOSPC;
    if (strncmp(rep->str, "TRYAGAIN", 8) == 0 || strncmp(rep->str, "LOADING", 7) == 0 ||
        strncmp(rep->str, "CLUSTERDOWN", 11) == 0)
        return TQKV_EAGAIN;
    return TQKV_EIO;
}

/* MOVED / ASK: "MOVED <slot> <host>:<port>". @return 1 if q was redirected or completed. */
static int handle_redirect(req *q, node *from, const redisReply *rep)
{
    tqkv_redis *r = q->r;
    int ask;
    const char *p;
    if (strncmp(rep->str, "MOVED ", 6) == 0) {
        ask = 0;
        p = rep->str + 6;
    } else if (strncmp(rep->str, "ASK ", 4) == 0) {
        ask = 1;
        p = rep->str + 4;
    } else {
        return 0;
    }
    char *end;
    unsigned long slot = strtoul(p, &end, 10);
    const char *addr = end + (*end == ' ');
    const char *colon = strrchr(addr, ':');
    char host[256];
    if (end == p || *end != ' ' || slot >= TQKV_REDIS_SLOTS || !colon ||
        (size_t)(colon - addr) >= sizeof(host)) {
        req_fail(q, TQKV_EPROTO);
        return 1;
    }
    long port = strtol(colon + 1, &end, 10);
    if (*end != '\0' || port <= 0 || port > 65535) {
        req_fail(q, TQKV_EPROTO);
        return 1;
    }
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = '\0';
    if (host[0] == '\0') {
        /* Unknown endpoint: the node that redirected us is the only address we know. */
        snprintf(host, sizeof(host), "%s", from ? from->host : "127.0.0.1");
    }
    if (++q->redirects > r->max_redirects) {
        req_fail(q, TQKV_EIO);
        return 1;
    }
    size_t idx;
    node *target = node_get(r, host, (int)port, &idx);
    if (!target) {
        req_fail(q, TQKV_ENOMEM);
        return 1;
    }
    if (ask) {
        r->st.ask++;
    } else {
        r->st.moved++;
        r->slots[slot] = (int16_t)idx;
        target->in_map = 1;
        r->refresh_wanted = 1;
        maybe_refresh(r);
    }
    int rc = req_send(q, target, ask);
    if (rc < 0) req_fail(q, rc);
    return 1;
}

static void complete_get(req *q, const redisReply *rep)
{
    tqkv_redis *r = q->r;
    tqkv__redis_value_view v;
    int rc = tqkv__redis_value_parse((const uint8_t *)rep->str, rep->len, q->ns, q->ns_len, q->key,
                                     q->key_len, r->max_value, &v);
    if (rc < 0) {
        TQKV_LOGD(MOD, "msg=\"redis value dropped\" err=%s", tqkv_err_name(rc));
        goto corrupt;
    }
    if (!(v.flags & TQKV__REDIS_FLAG_LZ4)) {
        r->st.hits++;
        r->st.bytes_in += v.stored_len;
        q->cb.get(q->arg, 1, v.payload, v.stored_len);
        return;
    }
    if (v.raw_len > LZ4_MAX_INPUT_SIZE || v.stored_len > INT_MAX) goto corrupt;
    char *raw = tqkv_malloc(v.raw_len ? (size_t)v.raw_len : 1);
    if (!raw) {
        r->st.errors++;
        r->st.misses++;
        q->cb.get(q->arg, TQKV_ENOMEM, NULL, 0);
        return;
    }
    int got = LZ4_decompress_safe((const char *)v.payload, raw, (int)v.stored_len, (int)v.raw_len);
    if (got < 0 || (uint64_t)got != v.raw_len) {
        tqkv_free(raw);
        goto corrupt;
    }
    r->st.hits++;
    r->st.bytes_in += v.raw_len;
    q->cb.get(q->arg, 1, raw, (size_t)v.raw_len);
    tqkv_free(raw);
    return;
corrupt:
    r->st.corrupt++;
    r->st.misses++;
    q->cb.get(q->arg, 0, NULL, 0);
}

static void complete_members(req *q, const redisReply *rep)
{
    size_t n = rep->elements;
    const char **m = tqkv_mallocarray(n ? n : 1, sizeof(*m));
    size_t *lens = tqkv_mallocarray(n ? n : 1, sizeof(*lens));
    if (!m || !lens) {
        tqkv_free(m);
        tqkv_free(lens);
        q->r->st.errors++;
        q->cb.members(q->arg, TQKV_ENOMEM, 0, NULL, NULL);
        return;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (rep->element[i]->type != REDIS_REPLY_STRING) continue;
        m[k] = rep->element[i]->str;
        lens[k++] = rep->element[i]->len;
    }
    q->cb.members(q->arg, 0, k, m, lens);
    tqkv_free(m);
    tqkv_free(lens);
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    req *q = privdata;
    tqkv_redis *r = q->r;
    redisReply *rep = reply;
    node *n = q->n;
    req_unlink(q);
    (void)ac;
    if (!rep) {
        /* The connection went away with q in flight. */
        int status = r->closing              ? TQKV_ECANCELED
                     : (n && n->fail_status) ? n->fail_status
                                             : TQKV_ECLOSED;
        req_fail(q, status);
        return;
    }
    if (n) {
        n->progress_ns = tqkv_now_ns();
        node_pump(n); /* keep the window full before running callbacks */
    }
    if (rep->type == REDIS_REPLY_ERROR) {
        if (r->cluster && handle_redirect(q, n, rep)) return;
        if (r->cluster && strncmp(rep->str, "CLUSTERDOWN", 11) == 0) r->refresh_wanted = 1;
        req_fail(q, map_error(rep));
        return;
    }
    switch (q->op) {
    case OP_PUT:
    case OP_KV_SET:
        if (rep->type != REDIS_REPLY_STATUS) goto proto;
        if (q->op == OP_PUT) r->st.bytes_out += q->value_bytes;
        q->cb.done(q->arg, 0);
        break;
    case OP_GET:
        if (rep->type == REDIS_REPLY_NIL) {
            r->st.misses++;
            q->cb.get(q->arg, 0, NULL, 0);
        } else if (rep->type == REDIS_REPLY_STRING) {
            complete_get(q, rep);
        } else {
            goto proto;
        }
        break;
    case OP_KV_SETNX: /* OK: stored; nil: the key was there */
        if (rep->type == REDIS_REPLY_STATUS)
            q->cb.done(q->arg, 1);
        else if (rep->type == REDIS_REPLY_NIL)
            q->cb.done(q->arg, 0);
        else
            goto proto;
        break;
    case OP_KV_GET:
        if (rep->type == REDIS_REPLY_NIL)
            q->cb.get(q->arg, 0, NULL, 0);
        else if (rep->type == REDIS_REPLY_STRING)
            q->cb.get(q->arg, 1, rep->str, rep->len);
        else
            goto proto;
        break;
    case OP_EXISTS:
    case OP_DEL:
    case OP_KV_DEL:
    case OP_KV_EXPIRE:
    case OP_SADD:
    case OP_SREM:
        if (rep->type != REDIS_REPLY_INTEGER) goto proto;
        q->cb.done(q->arg, rep->integer > 0 ? 1 : 0);
        break;
    case OP_SMEMBERS:
        if (rep->type != REDIS_REPLY_ARRAY) goto proto;
        complete_members(q, rep);
        break;
    }
    req_free(q);
    return;
proto:
    req_fail(q, TQKV_EPROTO);
}

/* ---- the timer ----------------------------------------------------------------------------- */

static void on_tick(uv_timer_t *t)
{
    tqkv_redis *r = t->data;
    uint64_t now = tqkv_now_ns(), limit = (uint64_t)r->timeout_ms * 1000000ull;
    /* node_fail runs request callbacks, which may destroy the engine: stop then. */
    for (size_t i = 0; i < r->n_nodes && !r->closing; i++) {
        node *n = r->nodes[i];
        if (n->st == NODE_CONNECTING && now - n->connect_ns > limit)
            node_fail(n, TQKV_ETIMEDOUT, "connect timed out");
        else if (n->st != NODE_DOWN && (n->head || n->side_inflight) &&
                 now - n->progress_ns > limit)
            node_fail(n, TQKV_ETIMEDOUT, "no reply within the timeout");
        else if (n->st == NODE_DOWN && now >= n->retry_ns &&
                 (n->in_map || !r->map_loaded || !r->cluster))
            node_connect(n);
    }
    maybe_refresh(r);
}

static void on_tick_close(uv_handle_t *h)
{
    tqkv_redis *r = h->data;
    for (size_t i = 0; i < r->n_nodes; i++) {
        tqkv_free(r->nodes[i]->host);
        tqkv_free(r->nodes[i]);
    }
    tqkv_free(r->nodes);
    tqkv_free(r->prefix);
    tqkv_free(r->username);
    tqkv_free(r->password);
    tqkv_free(r);
}

/* ---- create / destroy ---------------------------------------------------------------------- */

static int parse_hostport(const char *s, char *host, size_t cap, int *port)
{
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s || (size_t)(colon - s) >= cap) return TQKV_EBADCONFIG;
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (*end != '\0' || p <= 0 || p > 65535) return TQKV_EBADCONFIG;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = '\0';
    *port = (int)p;
    return 0;
}

int tqkv_redis_create(uv_loop_t *loop, const tqkv_redis_config *cfg, tqkv_redis **out)
{
    if (!loop || !cfg || !out || !cfg->nodes || cfg->n_nodes == 0) return TQKV_EINVAL;
    if (!cfg->cluster && cfg->n_nodes != 1) return TQKV_EBADCONFIG;
    const char *prefix = cfg->prefix ? cfg->prefix : "tqkv";
    if (!tqkv__redis_name_ok(prefix, strlen(prefix), TQKV_REDIS_MAX_PREFIX, 0) ||
        cfg->timeout_ms == 0 || cfg->backoff_min_ms == 0 ||
        cfg->backoff_max_ms < cfg->backoff_min_ms || cfg->max_value_bytes == 0 ||
        (cfg->username && !cfg->password))
        return TQKV_EBADCONFIG;
    char host[256];
    int port = 0; /* set by every parse below (validated here first); 0 quiets -O3's warning */
    for (size_t i = 0; i < cfg->n_nodes; i++)
        if (!cfg->nodes[i] || parse_hostport(cfg->nodes[i], host, sizeof(host), &port) < 0)
            return TQKV_EBADCONFIG;

    tqkv_redis *r = tqkv_calloc(1, sizeof(*r));
    if (!r) return TQKV_ENOMEM;
    r->loop = loop;
    r->cluster = cfg->cluster;
    r->lz4 = cfg->lz4;
    r->ttl_ms = cfg->ttl_ms;
    r->timeout_ms = cfg->timeout_ms;
    r->backoff_min_ms = cfg->backoff_min_ms;
    r->backoff_max_ms = cfg->backoff_max_ms;
    r->max_redirects = cfg->max_redirects;
    r->max_value = cfg->max_value_bytes;
    r->max_queued = cfg->max_queued_bytes;
    r->send_window = cfg->send_window_bytes;
    for (size_t s = 0; s < TQKV_REDIS_SLOTS; s++)
        r->slots[s] = -1;
    r->prefix = tqkv_strdup(prefix);
    if (!r->prefix || (cfg->username && !(r->username = tqkv_strdup(cfg->username))) ||
        (cfg->password && !(r->password = tqkv_strdup(cfg->password))))
        goto nomem;
    /* The nodes are created first and connected after: node_get connects at once, and a node
     * that cannot be added must not leave a connection behind. */
    r->closing = 1;
    for (size_t i = 0; i < cfg->n_nodes; i++) {
        parse_hostport(cfg->nodes[i], host, sizeof(host), &port);
        if (!node_get(r, host, port, NULL)) goto nomem;
    }
    r->closing = 0;
    if (!r->cluster) r->nodes[0]->in_map = 1;

    uv_timer_init(loop, &r->tick);
    r->tick.data = r;
    uint64_t period = r->timeout_ms / 4;
    if (period > r->backoff_min_ms) period = r->backoff_min_ms;
    if (period < 5) period = 5;
    if (period > 250) period = 250;
    uv_timer_start(&r->tick, on_tick, period, period);
    uv_unref((uv_handle_t *)&r->tick); /* housekeeping alone does not keep the loop alive */
    for (size_t i = 0; i < r->n_nodes; i++)
        node_connect(r->nodes[i]);
    *out = r;
    return 0;
nomem:
    for (size_t i = 0; i < r->n_nodes; i++) {
        tqkv_free(r->nodes[i]->host);
        tqkv_free(r->nodes[i]);
    }
    tqkv_free(r->nodes);
    tqkv_free(r->prefix);
    tqkv_free(r->username);
    tqkv_free(r->password);
    tqkv_free(r);
    return TQKV_ENOMEM;
}

void tqkv_redis_destroy(tqkv_redis *r)
{
    if (!r || r->closing) return;
    r->closing = 1;
    uv_timer_stop(&r->tick);
    for (size_t i = 0; i < r->n_nodes; i++) {
        node *n = r->nodes[i];
        if (n->ac)
            node_fail(n, TQKV_ECANCELED, "engine closed");
        else
            node_drop_waiting(n, TQKV_ECANCELED);
    }
    uv_close((uv_handle_t *)&r->tick, on_tick_close);
}

struct redisAsyncContext *tqkv__redis_context(tqkv_redis *r, size_t i)
{
    if (i >= r->n_nodes || r->nodes[i]->st != NODE_UP) return NULL;
    return r->nodes[i]->ac;
}

void tqkv_redis_get_stats(const tqkv_redis *r, tqkv_redis_stats *out)
{
    *out = r->st;
    uint32_t up = 0, total = 0, any_up = 0;
    for (size_t i = 0; i < r->n_nodes; i++) {
        const node *n = r->nodes[i];
        if (n->st == NODE_UP) any_up = 1;
        if (r->cluster && r->map_loaded && !n->in_map) continue;
        total++;
        up += n->st == NODE_UP;
    }
    out->nodes_up = up;
    out->nodes_total = total;
    if (up == total && total > 0)
        out->state = TQKV_REDIS_UP;
    else if (any_up)
        out->state = TQKV_REDIS_DEGRADED;
    else
        out->state = TQKV_REDIS_DOWN;
}

/* ---- submission ---------------------------------------------------------------------------- */

/* Routes and sends q, whose Redis key is rkey. On failure accounts it, frees q and returns the
 * error (the callback is not called). */
static int req_submit(req *q, const char *rkey, size_t rkey_len)
{
    tqkv_redis *r = q->r;
    q->slot = r->cluster ? tqkv_redis_key_slot(rkey, rkey_len) : 0;
    node *n = route(r, q->slot);
    int rc = req_send(q, n, 0);
    if (rc < 0) {
        r->st.errors++;
        if (is_block_get(q)) r->st.misses++;
        if (r->cluster) r->refresh_wanted = 1;
        req_free(q);
    }
    return rc;
}

/* Checks what every call checks and counts the request. */
static int check_call(tqkv_redis *r, tqkv__redis_fn cb)
{
    if (!r || !cb) return TQKV_EINVAL;
    if (r->closing) return TQKV_ECANCELED;
    r->st.requests++;
    return 0;
}

static int block_key(tqkv_redis *r, const char *ns, const void *key, size_t key_len, char *buf,
                     size_t cap)
{
    if (!ns || !key) return TQKV_EINVAL;
    return tqkv_redis_block_key(r->prefix, ns, key, key_len, buf, cap);
}

#define RKEY_CAP (TQKV_REDIS_MAX_PREFIX + 4 + TQKV_REDIS_MAX_NS + 2 * TQKV_REDIS_MAX_KEY + 2)

int tqkv_redis_put(tqkv_redis *r, const char *ns, const void *key, size_t key_len, const void *data,
                   size_t len, tqkv_redis_done_cb cb, void *arg)
{
    int rc = check_call(r, (tqkv__redis_fn)cb);
    if (rc < 0) return rc;
    char rkey[RKEY_CAP];
    int kl = block_key(r, ns, key, key_len, rkey, sizeof(rkey));
    if (kl < 0) return kl;
    if (!data && len) return TQKV_EINVAL;
    if (len > r->max_value) return TQKV_ERANGE;
    size_t ns_len = strlen(ns);

    /* LZ4 into a scratch buffer capped at 15/16 of the input: LZ4 gives up (returns 0) as soon
     * as the output would not fit, so incompressible blocks cost little. */
    char *lz = NULL;
    size_t stored = len;
    uint8_t flags = 0;
    if (r->lz4 && len >= LZ4_MIN_BYTES && len <= LZ4_MAX_INPUT_SIZE) {
        int cap = (int)(len - len / 16);
        lz = tqkv_malloc((size_t)cap);
        if (lz) {
            int c = LZ4_compress_default(data, lz, (int)len, cap);
            if (c > 0) {
                stored = (size_t)c;
                flags = TQKV__REDIS_FLAG_LZ4;
            }
        }
    }
    size_t vlen = tqkv__redis_value_size(ns_len, key_len, stored);
    char ttl[24];
    int ttl_len = r->ttl_ms ? snprintf(ttl, sizeof(ttl), "%u", r->ttl_ms) : 0;
    size_t lens[5] = {3, (size_t)kl, vlen, 2, (size_t)ttl_len};
    int argc = r->ttl_ms ? 5 : 3;
    req *q = req_new(r, OP_PUT, tqkv__resp_size(argc, lens), 0);
    if (!q) {
        tqkv_free(lz);
        return TQKV_ENOMEM;
    }
    q->cb.done = cb;
    q->arg = arg;
    q->value_bytes = vlen;
    char *p = tqkv__resp_begin(q->cmd, argc);
    p = tqkv__resp_arg(p, "SET", 3);
    p = tqkv__resp_arg(p, rkey, (size_t)kl);
    uint8_t *val = (uint8_t *)tqkv__resp_arg_open(p, vlen);
    tqkv__redis_value_begin(val, flags, ns, ns_len, key, key_len, len, stored);
    tqkv__redis_value_fill(val, vlen, flags ? (const void *)lz : data, stored);
    p = tqkv__resp_arg_end((char *)val + vlen);
    if (r->ttl_ms) {
        p = tqkv__resp_arg(p, "PX", 2);
        p = tqkv__resp_arg(p, ttl, (size_t)ttl_len);
    }
    tqkv_free(lz);
    return req_submit(q, rkey, (size_t)kl);
}

/* Builds and submits a command of `argc` arguments, argv[1] being the Redis key. */
static int submit_simple(tqkv_redis *r, op_kind op, int argc, const char *const *argv,
                         const size_t *lens, req **outq, size_t extra, tqkv__redis_fn cb, void *arg)
{
    req *q = req_new(r, op, tqkv__resp_size(argc, lens), extra);
    if (!q) return TQKV_ENOMEM;
    char *p = tqkv__resp_begin(q->cmd, argc);
    for (int i = 0; i < argc; i++)
        p = tqkv__resp_arg(p, argv[i], lens[i]);
    switch (op) {
    case OP_GET:
    case OP_KV_GET:
        q->cb.get = (tqkv_redis_get_cb)cb;
        break;
    case OP_SMEMBERS:
        q->cb.members = (tqkv_redis_members_cb)cb;
        break;
    default:
        q->cb.done = (tqkv_redis_done_cb)cb;
        break;
    }
    q->arg = arg;
    if (outq) *outq = q;
    return 0;
}

int tqkv_redis_get(tqkv_redis *r, const char *ns, const void *key, size_t key_len,
                   tqkv_redis_get_cb cb, void *arg)
{
    int rc = check_call(r, (tqkv__redis_fn)cb);
    if (rc < 0) return rc;
    char rkey[RKEY_CAP];
    int kl = block_key(r, ns, key, key_len, rkey, sizeof(rkey));
    if (kl < 0) return kl;
    size_t ns_len = strlen(ns);
    const char *argv[2] = {"GET", rkey};
    size_t lens[2] = {3, (size_t)kl};
    req *q;
    rc = submit_simple(r, OP_GET, 2, argv, lens, &q, ns_len + key_len, (tqkv__redis_fn)cb, arg);
    if (rc < 0) return rc;
    q->ns = (char *)(q + 1);
    q->key = (uint8_t *)q->ns + ns_len;
    q->ns_len = ns_len;
    q->key_len = key_len;
    memcpy(q->ns, ns, ns_len);
    memcpy(q->key, key, key_len);
    return req_submit(q, rkey, (size_t)kl);
}

static int block_simple(tqkv_redis *r, op_kind op, const char *verb, const char *ns,
                        const void *key, size_t key_len, tqkv_redis_done_cb cb, void *arg)
{
    int rc = check_call(r, (tqkv__redis_fn)cb);
    if (rc < 0) return rc;
    char rkey[RKEY_CAP];
    int kl = block_key(r, ns, key, key_len, rkey, sizeof(rkey));
    if (kl < 0) return kl;
    const char *argv[2] = {verb, rkey};
    size_t lens[2] = {strlen(verb), (size_t)kl};
    req *q;
    rc = submit_simple(r, op, 2, argv, lens, &q, 0, (tqkv__redis_fn)cb, arg);
    return rc < 0 ? rc : req_submit(q, rkey, (size_t)kl);
}

int tqkv_redis_exists(tqkv_redis *r, const char *ns, const void *key, size_t key_len,
                      tqkv_redis_done_cb cb, void *arg)
{
    return block_simple(r, OP_EXISTS, "EXISTS", ns, key, key_len, cb, arg);
}

int tqkv_redis_del(tqkv_redis *r, const char *ns, const void *key, size_t key_len,
                   tqkv_redis_done_cb cb, void *arg)
{
    return block_simple(r, OP_DEL, "DEL", ns, key, key_len, cb, arg);
}

/* "<prefix>:<key>" for the directory records. @return its length or TQKV_EINVAL. */
static int dir_key(const tqkv_redis *r, const char *key, char *buf, size_t cap)
{
    if (!key) return TQKV_EINVAL;
    size_t kl = strlen(key), pl = strlen(r->prefix);
    if (!tqkv__redis_name_ok(key, kl, TQKV_REDIS_MAX_KEY, 1) || pl + 1 + kl + 1 > cap)
        return TQKV_EINVAL;
    memcpy(buf, r->prefix, pl);
    buf[pl] = ':';
    memcpy(buf + pl + 1, key, kl + 1);
    return (int)(pl + 1 + kl);
}

/* A directory command: verb, the record's key, then up to two more arguments. */
static int dir_call(tqkv_redis *r, op_kind op, const char *verb, const char *key, const void *a2,
                    size_t l2, const void *a3, size_t l3, int argc, tqkv__redis_fn cb, void *arg)
{
    int rc = check_call(r, cb);
    if (rc < 0) return rc;
    char rkey[TQKV_REDIS_MAX_PREFIX + TQKV_REDIS_MAX_KEY + 2];
    int kl = dir_key(r, key, rkey, sizeof(rkey));
    if (kl < 0) return kl;
    const char *argv[4] = {verb, rkey, a2, a3};
    size_t lens[4] = {strlen(verb), (size_t)kl, l2, l3};
    req *q;
    rc = submit_simple(r, op, argc, argv, lens, &q, 0, cb, arg);
    return rc < 0 ? rc : req_submit(q, rkey, (size_t)kl);
}

int tqkv_redis_kv_set(tqkv_redis *r, const char *key, const void *val, size_t len, uint32_t ttl_ms,
                      tqkv_redis_done_cb cb, void *arg)
{
    if (!r || (!val && len)) return TQKV_EINVAL;
    if (len > r->max_value) return TQKV_ERANGE;
    if (!ttl_ms)
        return dir_call(r, OP_KV_SET, "SET", key, val ? val : "", len, NULL, 0, 3,
                        (tqkv__redis_fn)cb, arg);
    /* SET key val PX ms: five arguments, built here rather than widening dir_call. */
    int rc = check_call(r, (tqkv__redis_fn)cb);
    if (rc < 0) return rc;
    char rkey[TQKV_REDIS_MAX_PREFIX + TQKV_REDIS_MAX_KEY + 2], ttl[24];
    int kl = dir_key(r, key, rkey, sizeof(rkey));
    if (kl < 0) return kl;
    int tl = snprintf(ttl, sizeof(ttl), "%u", ttl_ms);
    const char *argv[5] = {"SET", rkey, val ? val : "", "PX", ttl};
    size_t lens[5] = {3, (size_t)kl, len, 2, (size_t)tl};
    req *q;
    rc = submit_simple(r, OP_KV_SET, 5, argv, lens, &q, 0, (tqkv__redis_fn)cb, arg);
    return rc < 0 ? rc : req_submit(q, rkey, (size_t)kl);
}

int tqkv_redis_kv_set_nx(tqkv_redis *r, const char *key, const void *val, size_t len,
                         tqkv_redis_done_cb cb, void *arg)
{
    if (!r || (!val && len)) return TQKV_EINVAL;
    if (len > r->max_value) return TQKV_ERANGE;
    return dir_call(r, OP_KV_SETNX, "SET", key, val ? val : "", len, "NX", 2, 4,
                    (tqkv__redis_fn)cb, arg);
}

int tqkv_redis_kv_get(tqkv_redis *r, const char *key, tqkv_redis_get_cb cb, void *arg)
{
    return dir_call(r, OP_KV_GET, "GET", key, NULL, 0, NULL, 0, 2, (tqkv__redis_fn)cb, arg);
}

int tqkv_redis_kv_del(tqkv_redis *r, const char *key, tqkv_redis_done_cb cb, void *arg)
{
    return dir_call(r, OP_KV_DEL, "DEL", key, NULL, 0, NULL, 0, 2, (tqkv__redis_fn)cb, arg);
}

int tqkv_redis_kv_expire(tqkv_redis *r, const char *key, uint32_t ttl_ms, tqkv_redis_done_cb cb,
                         void *arg)
{
    if (ttl_ms == 0) return TQKV_EINVAL;
    char ttl[24];
    int tl = snprintf(ttl, sizeof(ttl), "%u", ttl_ms);
    return dir_call(r, OP_KV_EXPIRE, "PEXPIRE", key, ttl, (size_t)tl, NULL, 0, 3,
                    (tqkv__redis_fn)cb, arg);
}

int tqkv_redis_set_add(tqkv_redis *r, const char *set, const void *member, size_t len,
                       tqkv_redis_done_cb cb, void *arg)
{
    if (!member || len == 0 || len > TQKV_REDIS_MAX_KEY) return TQKV_EINVAL;
    return dir_call(r, OP_SADD, "SADD", set, member, len, NULL, 0, 3, (tqkv__redis_fn)cb, arg);
}

int tqkv_redis_set_rem(tqkv_redis *r, const char *set, const void *member, size_t len,
                       tqkv_redis_done_cb cb, void *arg)
{
    if (!member || len == 0 || len > TQKV_REDIS_MAX_KEY) return TQKV_EINVAL;
    return dir_call(r, OP_SREM, "SREM", set, member, len, NULL, 0, 3, (tqkv__redis_fn)cb, arg);
}

int tqkv_redis_set_members(tqkv_redis *r, const char *set, tqkv_redis_members_cb cb, void *arg)
{
    return dir_call(r, OP_SMEMBERS, "SMEMBERS", set, NULL, 0, NULL, 0, 2, (tqkv__redis_fn)cb, arg);
}

/* ---- clearing a namespace ------------------------------------------------------------------ */

/* SCAN each master for "<prefix>:b:<ns>:*" and UNLINK what it finds, on that master's own
 * connection (single-key UNLINKs: no cross-slot errors). Every command sent holds a reference on
 * the operation; the last reply completes it. */
typedef struct clear_op clear_op;
typedef struct {
    clear_op *op;
    node *n;
} clear_node;

struct clear_op {
    tqkv_redis *r;
    tqkv_redis_done_cb cb;
    void *arg;
    int refs, status;
    uint64_t deleted;
    char *pattern;
    size_t n_nodes;
    clear_node nodes[];
};

static void clear_unref(clear_op *op)
{
    if (--op->refs > 0) return;
    int status = op->status;
    if (status == 0) status = op->deleted > INT32_MAX ? INT32_MAX : (int)op->deleted;
    if (op->status < 0) {
        if (op->status == TQKV_ETIMEDOUT)
            op->r->st.timeouts++;
        else
            op->r->st.errors++;
    }
    op->cb(op->arg, status);
    tqkv_free(op->pattern);
    tqkv_free(op);
}

static void clear_fail(clear_op *op, int status)
{
    if (op->status == 0) op->status = status;
}

/* CLEAR's commands go to hiredis outside the request lists; the no-progress timeout must see
 * them all the same, or a CLEAR on a hung server with nothing else in flight never completes. */
static void side_sent(node *n)
{
    if (!n->head && !n->side_inflight) n->progress_ns = tqkv_now_ns();
    n->side_inflight++;
}

static void side_answered(node *n, const redisReply *rep)
{
    if (n->side_inflight) n->side_inflight--;
    if (rep) n->progress_ns = tqkv_now_ns();
}

static void on_clear_unlink(redisAsyncContext *ac, void *reply, void *privdata)
{
    clear_node *cn = privdata;
    redisReply *rep = reply;
    (void)ac;
    side_answered(cn->n, rep);
    if (!rep)
        clear_fail(cn->op, cn->op->r->closing   ? TQKV_ECANCELED
                           : cn->n->fail_status ? cn->n->fail_status
                                                : TQKV_ECLOSED);
    else if (rep->type == REDIS_REPLY_INTEGER)
        cn->op->deleted += (uint64_t)rep->integer;
    else
        clear_fail(cn->op, rep->type == REDIS_REPLY_ERROR ? map_error(rep) : TQKV_EPROTO);
    clear_unref(cn->op);
}

static void on_clear_scan(redisAsyncContext *ac, void *reply, void *privdata);

static void clear_scan(clear_node *cn, const char *cursor, size_t cursor_len)
{
    clear_op *op = cn->op;
    const char *argv[6] = {"SCAN", cursor, "MATCH", op->pattern, "COUNT", "1000"};
    size_t lens[6] = {4, cursor_len, 5, strlen(op->pattern), 5, 4};
    if (!cn->n->ac || cn->n->st != NODE_UP ||
        redisAsyncCommandArgv(cn->n->ac, on_clear_scan, cn, 6, argv, lens) != REDIS_OK) {
        clear_fail(op, TQKV_ETIER);
        return;
    }
    side_sent(cn->n);
    op->refs++;
}

static void on_clear_scan(redisAsyncContext *ac, void *reply, void *privdata)
{
    clear_node *cn = privdata;
    clear_op *op = cn->op;
    redisReply *rep = reply;
    side_answered(cn->n, rep);
    if (!rep) {
        clear_fail(op, op->r->closing       ? TQKV_ECANCELED
                       : cn->n->fail_status ? cn->n->fail_status
                                            : TQKV_ECLOSED);
    } else if (rep->type == REDIS_REPLY_ERROR) {
        clear_fail(op, map_error(rep));
    } else if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
               rep->element[0]->type != REDIS_REPLY_STRING ||
               rep->element[1]->type != REDIS_REPLY_ARRAY) {
        clear_fail(op, TQKV_EPROTO);
    } else if (!op->r->closing) {
        redisReply *keys = rep->element[1];
        for (size_t i = 0; i < keys->elements; i++) {
            if (keys->element[i]->type != REDIS_REPLY_STRING) continue;
            const char *argv[2] = {"UNLINK", keys->element[i]->str};
            size_t lens[2] = {6, keys->element[i]->len};
            if (redisAsyncCommandArgv(ac, on_clear_unlink, cn, 2, argv, lens) != REDIS_OK) {
                clear_fail(op, TQKV_ECLOSED);
                break;
            }
            side_sent(cn->n);
            op->refs++;
        }
        if (strcmp(rep->element[0]->str, "0") != 0 && op->status == 0)
            clear_scan(cn, rep->element[0]->str, rep->element[0]->len);
    }
    clear_unref(op);
}

/* Appends `s` to p with the glob characters of SCAN MATCH escaped. @return the new end. */
static char *glob_escape(char *p, const char *s)
{
    for (; *s; s++) {
        if (*s == '*' || *s == '?' || *s == '[' || *s == ']' || *s == '\\') *p++ = '\\';
        *p++ = *s;
    }
    return p;
}

int tqkv_redis_clear(tqkv_redis *r, const char *ns, tqkv_redis_done_cb cb, void *arg)
{
    int rc = check_call(r, (tqkv__redis_fn)cb);
    if (rc < 0) return rc;
    if (ns && !tqkv__redis_name_ok(ns, strlen(ns), TQKV_REDIS_MAX_NS, 0)) return TQKV_EINVAL;
    size_t masters = 0;
    for (size_t i = 0; i < r->n_nodes; i++)
        masters += r->nodes[i]->in_map;
    if (masters == 0 || (r->cluster && !r->map_loaded))
        return TQKV_ETIER; /* which masters exist is not known yet */
    clear_op *op = tqkv_calloc(1, sizeof(*op) + masters * sizeof(clear_node));
    if (!op) return TQKV_ENOMEM;
    op->pattern = tqkv_malloc(2 * (strlen(r->prefix) + (ns ? strlen(ns) : 0)) + 8);
    if (!op->pattern) {
        tqkv_free(op);
        return TQKV_ENOMEM;
    }
    char *p = glob_escape(op->pattern, r->prefix);
    memcpy(p, ":b:", 3);
    p += 3;
    if (ns) {
        p = glob_escape(p, ns);
        *p++ = ':';
    }
    *p++ = '*';
    *p = '\0';
    op->r = r;
    op->cb = cb;
    op->arg = arg;
    op->refs = 1; /* ours, until every scan is started */
    for (size_t i = 0; i < r->n_nodes; i++) {
        if (!r->nodes[i]->in_map) continue;
        clear_node *cn = &op->nodes[op->n_nodes++];
        cn->op = op;
        cn->n = r->nodes[i];
        clear_scan(cn, "0", 1);
    }
    if (op->refs == 1 && op->status < 0) {
        /* Nothing could be started: refuse rather than complete. */
        rc = op->status;
        r->st.errors++;
        tqkv_free(op->pattern);
        tqkv_free(op);
        return rc;
    }
    clear_unref(op);
    return 0;
}
