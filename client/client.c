/* libtqkv operations: the HELLO handshake and every op of the protocol, expressed as requests for
 * the pipelined engine of conn.c. Batch calls cut their keys into several requests (bounded by
 * the frame limit the daemon announced in HELLO) so that many are in flight at once, and map the
 * per-item results of the responses back onto the caller's arrays. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client_internal.h"
#include "tqkv_alloc.h"

#define TQKV__DEFAULT_TIMEOUT_MS 30000u
#define TQKV__DEFAULT_INFLIGHT 16u
#define TQKV__DEFAULT_GET_KEYS 8u
/* Payload bytes aimed at per PUT request: large enough to amortise a round trip, small enough
 * that several requests are in flight and the daemon can work on one while the next arrives. */
#define TQKV__PUT_TARGET_BYTES (8u << 20)
/* Keys per request of the key-only ops (DELETE, PIN, UNPIN): ~40 header bytes each. */
#define TQKV__KEYS_PER_REQUEST 16384u
/* Header bytes reserved per item and per request when sizing a frame. */
#define TQKV__ITEM_HEADER_BYTES 64u
#define TQKV__REQ_HEADER_BYTES 1024u

const char *tqkv_tier_name(int tier)
{
    switch (tier) {
    case TQKV_TIER_NONE: return "none";
    case TQKV_TIER_GPU: return "gpu";
    case TQKV_TIER_HOST: return "host";
    case TQKV_TIER_SSD: return "ssd";
    case TQKV_TIER_REDIS: return "redis";
    case TQKV_TIER_PEER: return "peer";
    default: return "?";
    }
}

void tqkv_options_init(tqkv_options *o)
{
    memset(o, 0, sizeof(*o));
}

const char *tqkv_errmsg(const tqkv_client *c)
{
    return c ? c->err : "no client";
}

const char *tqkv_server_version(const tqkv_client *c)
{
    return c && c->server_version ? c->server_version : "";
}

int tqkv_is_admin(const tqkv_client *c)
{
    return c ? c->admin : 0;
}

/* Checks a response's overall status; on error records the daemon's message. */
static int check_resp(tqkv_client *c, const Tqkv__Header *r, const char *what)
{
    if (!r)
        return tqkv__fail(c, TQKV_EPROTO, "%s: no response", what);
    if (r->status > 0)
        return tqkv__fail(c, TQKV_EPROTO, "%s: positive status %d", what, r->status);
    if (r->status < 0)
        return tqkv__fail(c, r->status, "%s: %s", what,
                          r->message && *r->message ? r->message : "(no message)");
    return 0;
}

/* One request/one response with no payloads; on success *resp is owned by the caller. */
static int simple_call(tqkv_client *c, Tqkv__Header *req, Tqkv__Header **resp, const char *what)
{
    tqkv__call call;
    memset(&call, 0, sizeof(call));
    call.req = req;
    c->err[0] = '\0';
    int rc = tqkv__exchange(c, &call, 1);
    if (!rc)
        rc = call.rc;
    if (!rc)
        rc = check_resp(c, call.resp, what);
    else if (!c->err[0])
        tqkv__fail(c, rc, "%s", what);
    if (rc) {
        tqkv__calls_cleanup(&call, 1);
        return rc;
    }
    *resp = call.resp;
    return 0;
}

/* ---- Connection -------------------------------------------------------------------------- */

static int hello(tqkv_client *c)
{
    Tqkv__Header req = TQKV__HEADER__INIT, *resp = NULL;
    req.op = TQKV__OP__OP_HELLO;
    req.protocol_version = TQKV_PROTOCOL_VERSION;
    req.token = c->token ? c->token : (char *)"";
    req.client_name = c->client_name;
    int rc = simple_call(c, &req, &resp, "HELLO");
    if (rc)
        return rc;
    c->server_version = tqkv_strdup(resp->server_version ? resp->server_version : "");
    c->admin = resp->admin ? 1 : 0;
    if (resp->max_frame >= 4096 && resp->max_frame < c->max_frame)
        c->max_frame = resp->max_frame;
    tqkv_header_free(resp);
    return c->server_version ? 0 : tqkv__fail(c, TQKV_ENOMEM, NULL);
}

int tqkv_connect(const char *url, const tqkv_options *opts, tqkv_client **out)
{
    tqkv_options def;
    char scratch[256];
    char *errbuf = scratch;
    size_t errlen = sizeof(scratch);
    int rc;

    if (!out)
        return TQKV_EINVAL;
    *out = NULL;
    if (!opts) {
        tqkv_options_init(&def);
        opts = &def;
    }
    if (opts->errbuf && opts->errbuf_len) {
        errbuf = opts->errbuf;
        errlen = opts->errbuf_len;
    }
    errbuf[0] = '\0';
    tqkv_client *c = tqkv_calloc(1, sizeof(*c));
    if (!c) {
        snprintf(errbuf, errlen, "out of memory");
        return TQKV_ENOMEM;
    }
    c->fd = -1;
    c->next_id = 1;
    c->timeout_ms = opts->timeout_ms ? opts->timeout_ms : TQKV__DEFAULT_TIMEOUT_MS;
    c->max_frame = opts->max_frame ? opts->max_frame : TQKV_DEFAULT_MAX_FRAME;
    c->max_inflight = opts->max_inflight ? opts->max_inflight : TQKV__DEFAULT_INFLIGHT;
    c->token = opts->token ? tqkv_strdup(opts->token) : NULL;
    c->client_name = tqkv_strdup(opts->client_name ? opts->client_name : "libtqkv");
    if ((opts->token && !c->token) || !c->client_name) {
        rc = TQKV_ENOMEM;
        snprintf(errbuf, errlen, "out of memory");
        goto fail;
    }
    rc = tqkv__dial(url, c->timeout_ms, errbuf, errlen);
    if (rc < 0)
        goto fail;
    c->fd = rc;
    rc = hello(c);
    if (rc) {
        snprintf(errbuf, errlen, "%s", c->err);
        goto fail;
    }
    *out = c;
    return 0;
fail:
    tqkv_close(c);
    return rc;
}

void tqkv_close(tqkv_client *c)
{
    if (!c)
        return;
    if (c->fd >= 0)
        close(c->fd);
    while (c->namespaces) {
        tqkv__ns_entry *e = c->namespaces;
        c->namespaces = e->next;
        tqkv_free(e);
    }
    tqkv_free(c->token);
    tqkv_free(c->client_name);
    tqkv_free(c->server_version);
    tqkv_free(c->rbuf);
    tqkv_free(c);
}

/* ---- Namespaces -------------------------------------------------------------------------- */

static void remember_ns(tqkv_client *c, const char *name, tqkv_dtype dtype)
{
    for (tqkv__ns_entry *e = c->namespaces; e; e = e->next)
        if (strcmp(e->name, name) == 0) {
            e->dtype = dtype;
            return;
        }
    size_t len = strlen(name);
    tqkv__ns_entry *e = tqkv_malloc(sizeof(*e) + len + 1);
    if (!e)
        return; /* only an optimisation hint: raw PUTs then let the daemon use its own dtype */
    memcpy(e->name, name, len + 1);
    e->dtype = dtype;
    e->next = c->namespaces;
    c->namespaces = e;
}

static tqkv_dtype ns_dtype(const tqkv_client *c, const char *name)
{
    for (const tqkv__ns_entry *e = c->namespaces; e; e = e->next)
        if (strcmp(e->name, name) == 0)
            return e->dtype;
    return TQKV_DTYPE_NONE;
}

int tqkv_register(tqkv_client *c, const tqkv_namespace *ns)
{
    if (!c)
        return TQKV_EINVAL;
    if (!ns || !ns->name || !*ns->name)
        return tqkv__fail(c, TQKV_EINVAL, "namespace needs a name");
    Tqkv__Namespace m = TQKV__NAMESPACE__INIT;
    m.name = (char *)ns->name;
    m.model_fingerprint.data = (uint8_t *)ns->model_fingerprint;
    m.model_fingerprint.len = ns->model_fingerprint ? ns->model_fingerprint_len : 0;
    m.n_layers = ns->n_layers;
    m.n_kv_heads = ns->n_kv_heads;
    m.head_dim = ns->head_dim;
    m.dtype = (Tqkv__DType)ns->dtype;
    m.chunk_size = ns->chunk_size ? ns->chunk_size : 256;
    m.preset = (char *)(ns->preset ? ns->preset : "tq4");
    m.seed = ns->seed;
    Tqkv__Header req = TQKV__HEADER__INIT, *resp = NULL;
    req.op = TQKV__OP__OP_REGISTER;
    req.ns = (char *)ns->name;
    req.namespace_ = &m;
    int rc = simple_call(c, &req, &resp, "REGISTER");
    if (rc)
        return rc;
    tqkv_header_free(resp);
    remember_ns(c, ns->name, ns->dtype);
    return 0;
}

/* ---- Batched requests ------------------------------------------------------------------- */

/* A batch: n requests, each covering items [first, first + count) of the caller's arrays. */
typedef struct {
    Tqkv__Header h;
    Tqkv__Item *items;
    Tqkv__Item **ptrs;
    struct iovec *iov; /* PUT payload, one per item */
    size_t first, count;
    /* GET sink state */
    tqkv_get_item *gitems;
    uint8_t *was_alloc; /* per item: allocated by the sink */
} req_slot;

typedef struct {
    tqkv__call *calls;
    req_slot *slots;
    size_t n;
} batch;

static void batch_free(batch *b)
{
    if (b->calls)
        tqkv__calls_cleanup(b->calls, b->n);
    for (size_t i = 0; b->slots && i < b->n; i++) {
        tqkv_free(b->slots[i].items);
        tqkv_free(b->slots[i].ptrs);
        tqkv_free(b->slots[i].iov);
        tqkv_free(b->slots[i].was_alloc);
        if (b->calls)
            tqkv_free(b->calls[i].riov);
    }
    tqkv_free(b->calls);
    tqkv_free(b->slots);
    memset(b, 0, sizeof(*b));
}

/* Allocates the batch's arrays for n_req requests. */
static int batch_alloc(batch *b, size_t n_req)
{
    memset(b, 0, sizeof(*b));
    b->calls = tqkv_calloc(n_req ? n_req : 1, sizeof(*b->calls));
    b->slots = tqkv_calloc(n_req ? n_req : 1, sizeof(*b->slots));
    if (!b->calls || !b->slots) {
        batch_free(b);
        return TQKV_ENOMEM;
    }
    b->n = n_req;
    return 0;
}

/* Sets up slot i: header of `op` in ns with `count` items keyed keys[first..]. */
static int slot_init(batch *b, size_t i, Tqkv__Op op, const char *ns, const tqkv_key *keys,
                     size_t key_stride, size_t first, size_t count)
{
    req_slot *s = &b->slots[i];
    Tqkv__Header h = TQKV__HEADER__INIT;
    s->h = h;
    s->h.op = op;
    s->h.ns = (char *)(ns ? ns : "");
    s->first = first;
    s->count = count;
    s->items = tqkv_calloc(count ? count : 1, sizeof(*s->items));
    s->ptrs = tqkv_calloc(count ? count : 1, sizeof(*s->ptrs));
    if (!s->items || !s->ptrs)
        return TQKV_ENOMEM;
    for (size_t k = 0; k < count; k++) {
        Tqkv__Item it = TQKV__ITEM__INIT;
        s->items[k] = it;
        const tqkv_key *key =
            (const tqkv_key *)((const uint8_t *)keys + (first + k) * key_stride);
        s->items[k].key.data = (uint8_t *)key->bytes;
        s->items[k].key.len = TQKV_KEY_BYTES;
        s->ptrs[k] = &s->items[k];
    }
    s->h.n_items = count;
    s->h.items = s->ptrs;
    b->calls[i].req = &s->h;
    b->calls[i].ctx = s;
    return 0;
}

/* Runs the batch and maps per-item statuses into status[] (may be NULL). @return the first
 * failure: transport, request-level or item-level. */
static int batch_run(tqkv_client *c, batch *b, int *status, const char *what)
{
    c->err[0] = '\0';
    int rc = tqkv__exchange(c, b->calls, b->n);
    int first_err = rc;
    for (size_t i = 0; i < b->n; i++) {
        req_slot *s = &b->slots[i];
        tqkv__call *call = &b->calls[i];
        int req_rc = call->rc;
        if (!req_rc) {
            const Tqkv__Header *r = call->resp;
            if (!r || r->status > 0)
                req_rc = TQKV_EPROTO;
            else if (r->status < 0)
                req_rc = r->status;
            if (req_rc && !first_err)
                tqkv__fail(c, req_rc, "%s: %s", what,
                           r && r->message && *r->message ? r->message : "(no message)");
        }
        for (size_t k = 0; k < s->count; k++) {
            int st = req_rc;
            if (!st && call->resp->n_items == s->count)
                st = call->resp->items[k]->status;
            else if (!st && call->resp->n_items != 0 && call->resp->n_items != s->count)
                st = TQKV_EPROTO;
            if (status)
                status[s->first + k] = st;
            if (st && !first_err) {
                first_err = st;
                if (!c->err[0] || !req_rc)
                    tqkv__fail(c, st, "%s: item %zu", what, s->first + k);
            }
        }
    }
    return first_err;
}

/* ---- PUT ---------------------------------------------------------------------------------- */

static int put_common(tqkv_client *c, const char *ns, const tqkv_put_item *items, size_t n,
                      int *status, int raw)
{
    if (!c)
        return TQKV_EINVAL;
    if (!ns || (!items && n))
        return tqkv__fail(c, TQKV_EINVAL, "PUT needs a namespace and items");
    if (n == 0)
        return 0;
    const uint64_t budget = c->max_frame - TQKV_PREAMBLE_SIZE - TQKV__REQ_HEADER_BYTES;
    const uint64_t target = budget < TQKV__PUT_TARGET_BYTES ? budget : TQKV__PUT_TARGET_BYTES;

    /* Pass 1: count requests. An item alone larger than the frame goes in a request of its own
     * and fails there with TQKV_EFRAMETOOBIG. */
    size_t n_req = 0;
    uint64_t acc = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t sz = items[i].len + TQKV__ITEM_HEADER_BYTES;
        if (acc > 0 && acc + sz > target) {
            n_req++;
            acc = 0;
        }
        acc += sz;
    }
    n_req++;

    batch b;
    int rc = batch_alloc(&b, n_req);
    if (rc)
        return tqkv__fail(c, rc, NULL);
    size_t first = 0, r = 0;
    acc = 0;
    for (size_t i = 0; i <= n; i++) {
        uint64_t sz = i < n ? items[i].len + TQKV__ITEM_HEADER_BYTES : 0;
        if (i == n || (acc > 0 && acc + sz > target)) {
            rc = slot_init(&b, r, TQKV__OP__OP_PUT, ns, &items[0].key, sizeof(tqkv_put_item),
                           first, i - first);
            if (rc)
                goto out;
            req_slot *s = &b.slots[r];
            s->h.encoding = raw ? TQKV__ENCODING__ENC_RAW : TQKV__ENCODING__ENC_BLOCK;
            s->h.dtype = raw ? (Tqkv__DType)ns_dtype(c, ns) : TQKV__DTYPE__DTYPE_NONE;
            s->iov = tqkv_calloc(s->count, sizeof(*s->iov));
            if (!s->iov) {
                rc = TQKV_ENOMEM;
                goto out;
            }
            for (size_t k = 0; k < s->count; k++) {
                const tqkv_put_item *it = &items[first + k];
                s->items[k].payload_len = it->len;
                s->items[k].n_tokens = raw ? it->n_tokens : 0;
                s->iov[k].iov_base = (void *)it->data;
                s->iov[k].iov_len = it->len;
            }
            b.calls[r].iov = s->iov;
            b.calls[r].iovcnt = (int)s->count;
            r++;
            first = i;
            acc = 0;
        }
        acc += sz;
    }
    rc = batch_run(c, &b, status, "PUT");
    batch_free(&b);
    return rc;
out:
    batch_free(&b);
    return tqkv__fail(c, rc, NULL);
}

int tqkv_put_raw(tqkv_client *c, const char *ns, const tqkv_put_item *items, size_t n,
                 int *status)
{
    return put_common(c, ns, items, n, status, 1);
}

int tqkv_put_blocks(tqkv_client *c, const char *ns, const tqkv_put_item *items, size_t n,
                    int *status)
{
    return put_common(c, ns, items, n, status, 0);
}

/* ---- GET ---------------------------------------------------------------------------------- */

/* Points the response payload of a GET request at the caller's buffers (or allocations). */
static int get_sink(tqkv__call *call, const Tqkv__Header *resp, uint32_t payload_len)
{
    req_slot *s = call->ctx;
    if (resp->n_items != s->count)
        return TQKV_EPROTO;
    call->riov = tqkv_calloc(s->count ? s->count : 1, sizeof(struct iovec));
    if (!call->riov)
        return TQKV_ENOMEM;
    call->riovcnt = (int)s->count;
    uint64_t total = 0;
    for (size_t k = 0; k < s->count; k++) {
        tqkv_get_item *g = &s->gitems[k];
        uint64_t len = resp->items[k]->payload_len;
        total += len;
        if (len > payload_len || total > payload_len)
            return TQKV_EPROTO;
        if (len == 0)
            continue;
        if (g->buf && g->cap >= len) {
            g->data = g->buf;
        } else {
            g->data = tqkv_malloc((size_t)len);
            if (!g->data)
                return TQKV_ENOMEM;
            g->allocated = 1;
        }
        g->len = (size_t)len;
        call->riov[k].iov_base = g->data;
        call->riov[k].iov_len = (size_t)len;
    }
    return 0;
}

/* The daemon answers TQKV_EFRAMETOOBIG (no bytes) for the hits of a request that do not fit in
 * one reply frame (docs/protocol.md, GET): asks for those again, one key per request. */
static int get_retry_too_big(tqkv_client *c, const char *ns, const tqkv_key *keys, size_t n,
                             const tqkv_get_options *opts, tqkv_get_item *items)
{
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        m += items[i].status == TQKV_EFRAMETOOBIG;
    if (m == 0)
        return 0;
    tqkv_key *rk = tqkv_mallocarray(m, sizeof(*rk));
    tqkv_get_item *ri = tqkv_calloc(m, sizeof(*ri));
    size_t *idx = tqkv_mallocarray(m, sizeof(*idx));
    int rc = TQKV_ENOMEM;
    if (rk && ri && idx) {
        size_t k = 0;
        for (size_t i = 0; i < n; i++)
            if (items[i].status == TQKV_EFRAMETOOBIG) {
                idx[k] = i;
                rk[k] = keys[i];
                ri[k].buf = items[i].buf;
                ri[k].cap = items[i].cap;
                k++;
            }
        tqkv_get_options one = *opts;
        one.keys_per_request = 1;
        one.release_lease = 0; /* released by the first pass */
        rc = tqkv_get(c, ns, rk, m, &one, ri);
        for (size_t k2 = 0; k2 < m; k2++)
            items[idx[k2]] = ri[k2]; /* hands over any allocation */
    } else {
        tqkv__fail(c, rc, NULL);
    }
    tqkv_free(rk);
    tqkv_free(ri);
    tqkv_free(idx);
    return rc;
}

int tqkv_get(tqkv_client *c, const char *ns, const tqkv_key *keys, size_t n,
             const tqkv_get_options *opts, tqkv_get_item *items)
{
    if (!c)
        return TQKV_EINVAL;
    if (!ns || (n && (!keys || !items)))
        return tqkv__fail(c, TQKV_EINVAL, "GET needs a namespace, keys and items");
    for (size_t i = 0; i < n; i++) {
        items[i].data = NULL;
        items[i].len = 0;
        items[i].status = 0;
        items[i].tier = TQKV_TIER_NONE;
        items[i].allocated = 0;
    }
    if (n == 0)
        return 0;
    tqkv_get_options def;
    memset(&def, 0, sizeof(def));
    if (!opts)
        opts = &def;
    /* Decoded KV is 4-16x the block: one key per request keeps each reply frame small. */
    size_t per = opts->keys_per_request ? opts->keys_per_request
                 : opts->decode != TQKV_DTYPE_NONE ? 1
                                                   : TQKV__DEFAULT_GET_KEYS;
    size_t n_req = (n + per - 1) / per;
    batch b;
    int rc = batch_alloc(&b, n_req);
    if (rc)
        return tqkv__fail(c, rc, NULL);
    for (size_t r = 0; r < n_req; r++) {
        size_t first = r * per, count = n - first < per ? n - first : per;
        rc = slot_init(&b, r, TQKV__OP__OP_GET, ns, keys, sizeof(tqkv_key), first, count);
        if (rc) {
            batch_free(&b);
            return tqkv__fail(c, rc, NULL);
        }
        req_slot *s = &b.slots[r];
        s->h.layer_begin = opts->layer_begin;
        s->h.layer_count = opts->layer_count;
        s->h.dtype = (Tqkv__DType)opts->decode;
        s->h.encoding = TQKV__ENCODING__ENC_BLOCK;
        if (r == n_req - 1)
            s->h.lease_id = opts->release_lease;
        s->gitems = items + first;
        b.calls[r].sink = get_sink;
    }
    c->err[0] = '\0';
    rc = tqkv__exchange(c, b.calls, b.n);
    int first_err = rc;
    for (size_t r = 0; r < n_req; r++) {
        req_slot *s = &b.slots[r];
        tqkv__call *call = &b.calls[r];
        const Tqkv__Header *resp = call->resp;
        int req_rc = call->rc;
        if (!req_rc && (!resp || resp->status > 0))
            req_rc = TQKV_EPROTO;
        if (!req_rc && resp->status < 0) {
            req_rc = resp->status;
            if (!first_err)
                tqkv__fail(c, req_rc, "GET: %s",
                           resp->message && *resp->message ? resp->message : "(no message)");
        }
        if (!req_rc && resp->n_items != s->count) {
            req_rc = TQKV_EPROTO;
            if (!first_err)
                tqkv__fail(c, req_rc, "GET: %zu items answered for %zu keys", resp->n_items,
                           s->count);
        }
        /* The sink only runs for a frame with payload: items that announce bytes the frame
         * does not carry would otherwise read as hits without data. */
        for (size_t k = 0; !req_rc && k < s->count; k++)
            if (resp->items[k]->payload_len != s->gitems[k].len) {
                req_rc = TQKV_EPROTO;
                if (!first_err)
                    tqkv__fail(c, req_rc, "GET: item %zu announces %llu bytes, %zu arrived", k,
                               (unsigned long long)resp->items[k]->payload_len,
                               s->gitems[k].len);
            }
        if (req_rc && !first_err) {
            first_err = req_rc;
            if (!c->err[0])
                tqkv__fail(c, req_rc, "GET");
        }
        for (size_t k = 0; k < s->count; k++) {
            tqkv_get_item *g = &s->gitems[k];
            if (req_rc) {
                g->status = req_rc;
                continue;
            }
            const Tqkv__Item *it = resp->items[k];
            g->tier = (uint8_t)it->tier;
            g->status = it->status;
            if (g->status == 0 && it->payload_len == 0)
                g->status = TQKV_ENOENT; /* a miss: no bytes */
            if (g->status == TQKV_ENOENT)
                g->tier = TQKV_TIER_NONE;
            if (g->status == 0 && g->buf && g->cap < g->len) {
                /* the caller's buffer was too small: report how much was needed */
                g->status = TQKV_ERANGE;
                tqkv_free(g->data);
                g->data = NULL;
                g->allocated = 0;
            }
        }
    }
    batch_free(&b);
    if (!first_err && per > 1)
        first_err = get_retry_too_big(c, ns, keys, n, opts, items);
    return first_err;
}

void tqkv_get_items_release(tqkv_get_item *items, size_t n)
{
    for (size_t i = 0; items && i < n; i++) {
        if (items[i].allocated)
            tqkv_free(items[i].data);
        items[i].allocated = 0;
        items[i].data = NULL;
        items[i].len = 0;
    }
}

/* ---- LOOKUP, DELETE, PIN ------------------------------------------------------------------ */

int tqkv_lookup(tqkv_client *c, const char *ns, const tqkv_key *keys, size_t n, uint32_t lease_ms,
                uint32_t *hits, uint8_t *tiers, uint64_t *lease_id)
{
    if (!c)
        return TQKV_EINVAL;
    if (!ns || (n && !keys) || !hits)
        return tqkv__fail(c, TQKV_EINVAL, "LOOKUP needs a namespace, keys and hits");
    *hits = 0;
    if (lease_id)
        *lease_id = 0;
    if (tiers)
        memset(tiers, 0, n);
    batch b;
    int rc = batch_alloc(&b, 1);
    if (rc)
        return tqkv__fail(c, rc, NULL);
    rc = slot_init(&b, 0, TQKV__OP__OP_LOOKUP, ns, keys, sizeof(tqkv_key), 0, n);
    if (rc) {
        batch_free(&b);
        return tqkv__fail(c, rc, NULL);
    }
    b.slots[0].h.lease_ms = lease_ms;
    c->err[0] = '\0';
    rc = tqkv__exchange(c, b.calls, 1);
    if (!rc)
        rc = b.calls[0].rc;
    if (!rc)
        rc = check_resp(c, b.calls[0].resp, "LOOKUP");
    if (!rc) {
        const Tqkv__Header *r = b.calls[0].resp;
        if (r->hits > n) {
            rc = tqkv__fail(c, TQKV_EPROTO, "LOOKUP: %u hits for %zu keys", r->hits, n);
        } else {
            *hits = r->hits;
            if (lease_id)
                *lease_id = r->lease_id;
            for (size_t k = 0; tiers && k < n && k < r->n_items; k++)
                tiers[k] = (uint8_t)r->items[k]->tier;
        }
    }
    batch_free(&b);
    return rc;
}

static int keys_op(tqkv_client *c, Tqkv__Op op, const char *what, const char *ns,
                   const tqkv_key *keys, size_t n, int *status)
{
    if (!c)
        return TQKV_EINVAL;
    if (!ns || (n && !keys))
        return tqkv__fail(c, TQKV_EINVAL, "%s needs a namespace and keys", what);
    if (n == 0)
        return 0;
    size_t n_req = (n + TQKV__KEYS_PER_REQUEST - 1) / TQKV__KEYS_PER_REQUEST;
    batch b;
    int rc = batch_alloc(&b, n_req);
    if (rc)
        return tqkv__fail(c, rc, NULL);
    for (size_t r = 0; r < n_req; r++) {
        size_t first = r * TQKV__KEYS_PER_REQUEST;
        size_t count = n - first < TQKV__KEYS_PER_REQUEST ? n - first : TQKV__KEYS_PER_REQUEST;
        rc = slot_init(&b, r, op, ns, keys, sizeof(tqkv_key), first, count);
        if (rc) {
            batch_free(&b);
            return tqkv__fail(c, rc, NULL);
        }
    }
    /* A key that is absent is a result for these ops, reported in status[] only. */
    int *st = status ? status : tqkv_calloc(n, sizeof(int));
    if (!st) {
        batch_free(&b);
        return tqkv__fail(c, TQKV_ENOMEM, NULL);
    }
    rc = batch_run(c, &b, st, what);
    if (rc == TQKV_ENOENT) {
        rc = 0;
        for (size_t i = 0; i < n && !rc; i++)
            if (st[i] && st[i] != TQKV_ENOENT)
                rc = st[i];
        if (!rc)
            c->err[0] = '\0';
    }
    if (st != status)
        tqkv_free(st);
    batch_free(&b);
    return rc;
}

int tqkv_delete(tqkv_client *c, const char *ns, const tqkv_key *keys, size_t n, int *status)
{
    return keys_op(c, TQKV__OP__OP_DELETE, "DELETE", ns, keys, n, status);
}

int tqkv_pin(tqkv_client *c, const char *ns, const tqkv_key *keys, size_t n, int *status)
{
    return keys_op(c, TQKV__OP__OP_PIN, "PIN", ns, keys, n, status);
}

int tqkv_unpin(tqkv_client *c, const char *ns, const tqkv_key *keys, size_t n, int *status)
{
    return keys_op(c, TQKV__OP__OP_UNPIN, "UNPIN", ns, keys, n, status);
}

int tqkv_lease_release(tqkv_client *c, const char *ns, uint64_t lease_id)
{
    if (!c)
        return TQKV_EINVAL;
    if (!ns || !lease_id)
        return tqkv__fail(c, TQKV_EINVAL, "releasing a lease needs a namespace and a lease id");
    /* An UNPIN of no keys that carries the lease (docs/protocol.md). */
    Tqkv__Header req = TQKV__HEADER__INIT, *resp = NULL;
    req.op = TQKV__OP__OP_UNPIN;
    req.ns = (char *)ns;
    req.lease_id = lease_id;
    int rc = simple_call(c, &req, &resp, "UNPIN (lease)");
    if (rc)
        return rc;
    tqkv_header_free(resp);
    return 0;
}

/* ---- Administration ---------------------------------------------------------------------- */

void tqkv_kv_list_free(tqkv_kv_list *l)
{
    if (!l)
        return;
    for (size_t i = 0; i < l->n; i++) {
        tqkv_free(l->names ? l->names[i] : NULL);
        tqkv_free(l->values ? l->values[i] : NULL);
    }
    tqkv_free(l->names);
    tqkv_free(l->values);
    memset(l, 0, sizeof(*l));
}

const char *tqkv_kv_list_get(const tqkv_kv_list *l, const char *name)
{
    for (size_t i = 0; l && name && i < l->n; i++)
        if (strcmp(l->names[i], name) == 0)
            return l->values[i];
    return NULL;
}

/* Copies a response's kv pairs into out. */
static int kv_copy(tqkv_client *c, const Tqkv__Header *r, tqkv_kv_list *out)
{
    memset(out, 0, sizeof(*out));
    size_t n = r->n_kv;
    out->names = tqkv_calloc(n ? n : 1, sizeof(char *));
    out->values = tqkv_calloc(n ? n : 1, sizeof(char *));
    if (!out->names || !out->values)
        goto oom;
    for (size_t i = 0; i < n; i++) {
        out->names[i] = tqkv_strdup(r->kv[i]->key ? r->kv[i]->key : "");
        out->values[i] = tqkv_strdup(r->kv[i]->value ? r->kv[i]->value : "");
        out->n = i + 1;
        if (!out->names[i] || !out->values[i])
            goto oom;
    }
    return 0;
oom:
    tqkv_kv_list_free(out);
    return tqkv__fail(c, TQKV_ENOMEM, NULL);
}

static int kv_call(tqkv_client *c, Tqkv__Op op, const char *what, const char *ns,
                   const char *name, const char *value, tqkv_kv_list *out)
{
    if (!c)
        return TQKV_EINVAL;
    if (out)
        memset(out, 0, sizeof(*out));
    Tqkv__Header req = TQKV__HEADER__INIT, *resp = NULL;
    Tqkv__KV kv = TQKV__KV__INIT, *kvp = &kv;
    req.op = op;
    req.ns = (char *)(ns ? ns : "");
    if (name) {
        kv.key = (char *)name;
        kv.value = (char *)(value ? value : "");
        req.n_kv = 1;
        req.kv = &kvp;
    }
    int rc = simple_call(c, &req, &resp, what);
    if (rc)
        return rc;
    if (out)
        rc = kv_copy(c, resp, out);
    tqkv_header_free(resp);
    return rc;
}

int tqkv_stats(tqkv_client *c, const char *ns, tqkv_kv_list *out)
{
    if (!out)
        return tqkv__fail(c, TQKV_EINVAL, "STATS needs an output list");
    return kv_call(c, TQKV__OP__OP_STATS, "STATS", ns, NULL, NULL, out);
}

int tqkv_health(tqkv_client *c, tqkv_kv_list *out)
{
    if (!out)
        return tqkv__fail(c, TQKV_EINVAL, "HEALTH needs an output list");
    return kv_call(c, TQKV__OP__OP_HEALTH, "HEALTH", NULL, NULL, NULL, out);
}

int tqkv_cluster(tqkv_client *c, tqkv_kv_list *out)
{
    if (!out)
        return tqkv__fail(c, TQKV_EINVAL, "CLUSTER needs an output list");
    return kv_call(c, TQKV__OP__OP_CLUSTER, "CLUSTER", NULL, NULL, NULL, out);
}

int tqkv_config_get(tqkv_client *c, const char *name, tqkv_kv_list *out)
{
    if (!out)
        return tqkv__fail(c, TQKV_EINVAL, "CONFIG GET needs an output list");
    return kv_call(c, TQKV__OP__OP_CONFIG_GET, "CONFIG GET", NULL, name, NULL, out);
}

int tqkv_config_set(tqkv_client *c, const char *name, const char *value)
{
    if (!name || !value)
        return tqkv__fail(c, TQKV_EINVAL, "CONFIG SET needs a name and a value");
    return kv_call(c, TQKV__OP__OP_CONFIG_SET, "CONFIG SET", NULL, name, value, NULL);
}

int tqkv_evict(tqkv_client *c, const char *ns, uint64_t bytes, uint64_t *evicted)
{
    if (!c)
        return TQKV_EINVAL;
    Tqkv__Header req = TQKV__HEADER__INIT, *resp = NULL;
    req.op = TQKV__OP__OP_EVICT;
    req.ns = (char *)(ns ? ns : "");
    req.bytes = bytes;
    int rc = simple_call(c, &req, &resp, "EVICT");
    if (rc)
        return rc;
    if (evicted)
        *evicted = resp->bytes;
    tqkv_header_free(resp);
    return 0;
}

int tqkv_clear(tqkv_client *c, const char *ns)
{
    if (!c)
        return TQKV_EINVAL;
    Tqkv__Header req = TQKV__HEADER__INIT, *resp = NULL;
    req.op = TQKV__OP__OP_CLEAR;
    req.ns = (char *)(ns ? ns : "");
    int rc = simple_call(c, &req, &resp, "CLEAR");
    if (rc)
        return rc;
    tqkv_header_free(resp);
    return 0;
}
