/* tqkvd's request handlers: one function per op. Each validates the whole request before it
 * changes anything (a malformed request gets its specific error and leaves no trace), talks to
 * the store on the loop thread, and sends heavy work — encoding raw KV, validating and copying
 * encoded blocks, decoding and slicing on GET — to the worker pool with uv_queue_work; the
 * after-callback finishes the request on the loop. */
#include "server.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "cluster.h"
#include "codec.h"
#include "metrics.h"
#include "tq.h"
#include "tqkv_alloc.h"
#include "tqkv_endian.h"
#include "tqkv_log.h"
#include "tqkv_time.h"

#ifdef TQKVD_HAVE_SSD
#include "ssd_tier.h"
#endif
#ifdef TQKVD_HAVE_REDIS
#include "redis_tier.h"
#endif

#define MOD "dispatch"
#define MAX_ITEMS 65536

/* What the daemon keeps per namespace (the store's user pointer): the parsed codec parameters. */
typedef struct {
    tq_codec_params p;
    size_t elem; /* bytes of one raw element */
} ns_info;

static const ns_info *nsinfo(const tqkvd_req *r)
{
    return tqkv_ns_get_user((tqkv_ns *)r->ns);
}

/* ---- response helpers ---- */

static char *own_str(tqkvd_req *r, char *s)
{
    if (!s)
        return NULL;
    if (r->n_strs == r->cap_strs) {
        size_t nc = r->cap_strs ? r->cap_strs * 2 : 16;
        char **n = tqkv_realloc(r->strs, nc * sizeof *n);
        if (!n) {
            tqkv_free(s);
            return NULL;
        }
        r->strs = n;
        r->cap_strs = nc;
    }
    r->strs[r->n_strs++] = s;
    return s;
}

void tqkvd_req_set_status(tqkvd_req *r, int status, const char *fmt, ...)
{
    r->resp.status = status;
    if (!fmt)
        return;
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    char *m = own_str(r, tqkv_strdup(buf));
    if (m)
        r->resp.message = m;
}

static void add_kv(tqkvd_req *r, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void add_kv(tqkvd_req *r, const char *name, const char *fmt, ...)
{
    if (r->n_rkv == r->cap_rkv) {
        size_t nc = r->cap_rkv ? r->cap_rkv * 2 : 32;
        Tqkv__KV *kv = tqkv_realloc(r->rkv, nc * sizeof *kv);
        if (!kv)
            return;
        r->rkv = kv;
        Tqkv__KV **pkv = tqkv_realloc(r->rpkv, nc * sizeof *pkv);
        if (!pkv)
            return;
        r->rpkv = pkv;
        r->cap_rkv = nc;
    }
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    char *k = own_str(r, tqkv_strdup(name));
    char *v = own_str(r, tqkv_strdup(buf));
    if (!k || !v)
        return;
    Tqkv__KV *kv = &r->rkv[r->n_rkv];
    tqkv__kv__init(kv);
    kv->key = k;
    kv->value = v;
    r->n_rkv++;
    /* realloc may have moved the array: re-point everything */
    for (size_t i = 0; i < r->n_rkv; i++)
        r->rpkv[i] = &r->rkv[i];
    r->resp.kv = r->rpkv;
    r->resp.n_kv = r->n_rkv;
}

static void respond(tqkvd_req *r)
{
    tqkvd_req_respond(r, 0);
}

static void fail(tqkvd_req *r, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail(tqkvd_req *r, int status, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    TQKV_LOGD(MOD, "msg=\"request refused\" conn=%" PRIu64 " op=%s status=%s why=\"%s\"",
              r->conn->id, tqkv_op_name(r->hdr->op), tqkv_err_name(status), buf);
    tqkvd_req_set_status(r, status, "%s", buf);
    respond(r);
}

/* Allocates the per-item state and the response items (key echoed). @return 0 or ENOMEM. */
static int alloc_items(tqkvd_req *r)
{
    size_t n = r->hdr->n_items;
    r->n_items = n;
    if (!n)
        return 0;
    r->items = tqkv_calloc(n, sizeof *r->items);
    r->ritems = tqkv_calloc(n, sizeof *r->ritems);
    r->rpitems = tqkv_calloc(n, sizeof *r->rpitems);
    if (!r->items || !r->ritems || !r->rpitems)
        return TQKV_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        r->items[i].req = r;
        r->items[i].key = r->hdr->items[i]->key.data;
        tqkv__item__init(&r->ritems[i]);
        r->rpitems[i] = &r->ritems[i];
    }
    r->resp.items = r->rpitems;
    r->resp.n_items = n;
    return 0;
}

/* Copies item states into the response items; the response status is the first item error. */
static void items_to_resp(tqkvd_req *r, int echo_keys)
{
    int first = 0;
    size_t first_i = 0;
    for (size_t i = 0; i < r->n_items; i++) {
        tqkvd_item *it = &r->items[i];
        Tqkv__Item *o = &r->ritems[i];
        if (echo_keys) {
            o->key.data = (uint8_t *)it->key;
            o->key.len = TQKV_KEY_LEN;
        }
        o->status = it->status;
        o->tier = (Tqkv__Tier)it->tier;
        o->n_tokens = it->n_tokens;
        o->payload_len = it->out_len;
        /* A GET miss is a result; it does not make the request fail. */
        if (it->status && it->status != TQKV_ENOENT && !first) {
            first = it->status;
            first_i = i;
        }
    }
    if (first && !r->resp.status)
        tqkvd_req_set_status(r, first, "item %zu: %s", first_i, tqkv_strerror(first));
}

void tqkvd_req_free(tqkvd_req *r)
{
    tqkvd_conn *c = r->conn;
    tqkvd_server *s = c->srv;
    /* A request with a response frame (req->head) is freed once that frame is written, or when
     * its connection is closed (write failed, shutdown): only the former is a served request. */
    if (r->hdr && r->head)
        tqkvd_metrics_request_done(s, r->hdr->op, r->resp.status, !c->closing,
                                   tqkv_now_ns() - r->start_ns);
    for (size_t i = 0; i < r->n_items; i++) {
        tqkvd_item *it = &r->items[i];
        if (it->put)
            tqkv_store_put_abort(s->store, it->put);
        if (it->ref)
            tqkv_store_ref_release(s->store, it->ref);
        tqkv_free(it->out);
    }
    tqkv_free(r->items);
    tqkv_free(r->ritems);
    tqkv_free(r->rpitems);
    for (size_t i = 0; i < r->n_strs; i++)
        tqkv_free(r->strs[i]);
    tqkv_free(r->strs);
    tqkv_free(r->rkv);
    tqkv_free(r->rpkv);
    tqkv_free(r->lookup_keys);
    tqkv_free(r->lookup_tiers);
    tqkv_free(r->head);
    tqkv_free(r->payload);
    tqkv_header_free(r->hdr);
    uint64_t charged = r->charged;
    tqkv_free(r);
    tqkvd__conn_request_done(c, charged);
}

/* ---- HELLO ---- */

static void op_hello(tqkvd_req *r)
{
    tqkvd_conn *c = r->conn;
    tqkvd_server *s = c->srv;
    Tqkv__Header *h = r->hdr;
    if (h->protocol_version != TQKV_PROTOCOL_VERSION) {
        r->resp.protocol_version = TQKV_PROTOCOL_VERSION;
        fail(r, TQKV_EBADVERSION, "protocol version %u not supported; this daemon speaks %d",
             h->protocol_version, TQKV_PROTOCOL_VERSION);
        return;
    }
    const char *tok = h->token ? h->token : "";
    size_t tlen = strlen(tok);
    int is_user = s->cfg.token[0] && tqkvd_token_equal(tok, tlen, s->cfg.token);
    int is_admin = s->cfg.admin_token[0] && tqkvd_token_equal(tok, tlen, s->cfg.admin_token);
    int token_required = c->is_tcp && (s->cfg.token[0] || s->cfg.admin_token[0]);
    if ((tlen && !is_user && !is_admin) || (token_required && !is_user && !is_admin)) {
        TQKV_LOGW(MOD, "msg=\"authentication failed\" conn=%" PRIu64 " peer=%s", c->id, c->peer);
        c->hello = c->authed = c->admin = 0;
        c->close_after_write = 1;
        fail(r, TQKV_EAUTH, tlen ? "token refused" : "this listener requires a token");
        return;
    }
    c->hello = c->authed = 1;
    /* Without an admin token, admin ops are for local operators (the Unix socket) only. */
    c->admin = is_admin || (!s->cfg.admin_token[0] && !c->is_tcp);
    snprintf(c->name, sizeof c->name, "%s", h->client_name ? h->client_name : "");
    TQKV_LOGD(MOD, "msg=\"hello\" conn=%" PRIu64 " client=\"%s\" admin=%d", c->id, c->name,
              c->admin);
    r->resp.protocol_version = TQKV_PROTOCOL_VERSION;
    r->resp.server_version = (char *)TQKVD_VERSION;
    r->resp.admin = c->admin;
    r->resp.max_frame = (uint32_t)s->cfg.max_frame;
    respond(r);
}

/* ---- REGISTER ---- */

static void op_register(tqkvd_req *r)
{
    const Tqkv__Namespace *n = r->hdr->namespace_;
    if (!n)
        return fail(r, TQKV_EINVAL, "REGISTER without a namespace");
    size_t nl = strlen(n->name);
    if (nl == 0 || nl > TQKV_NS_NAME_MAX)
        return fail(r, TQKV_EINVAL, "namespace name must be 1..%d bytes", TQKV_NS_NAME_MAX);
    if (n->model_fingerprint.len > TQKV_NS_FINGERPRINT_MAX)
        return fail(r, TQKV_EINVAL, "model fingerprint longer than %d bytes",
                    TQKV_NS_FINGERPRINT_MAX);
    if (n->n_layers < 1 || n->n_layers > TQ_MAX_LAYERS || n->n_kv_heads < 1 ||
        n->n_kv_heads > TQ_MAX_KV_HEADS || n->head_dim < 1 || n->head_dim > TQ_MAX_HEAD_DIM)
        return fail(r, TQKV_EBADGEOMETRY,
                    "geometry out of range: n_layers %u (1..%d), n_kv_heads %u (1..%d), "
                    "head_dim %u (1..%d)",
                    n->n_layers, TQ_MAX_LAYERS, n->n_kv_heads, TQ_MAX_KV_HEADS, n->head_dim,
                    TQ_MAX_HEAD_DIM);
    if (n->dtype < TQKV__DTYPE__DTYPE_F16 || n->dtype > TQKV__DTYPE__DTYPE_F32)
        return fail(r, TQKV_EBADDTYPE, "dtype %d: expected F16, BF16 or F32", (int)n->dtype);
    uint32_t chunk = n->chunk_size ? n->chunk_size : 256;
    if (chunk > TQ_MAX_TOKENS)
        return fail(r, TQKV_EBADGEOMETRY, "chunk_size %u exceeds %d", chunk, TQ_MAX_TOKENS);
    const char *preset = (n->preset && n->preset[0]) ? n->preset : "tq4";
    if (strlen(preset) > TQKV_NS_PRESET_MAX)
        return fail(r, TQKV_ENOENT, "unknown preset '%s'", preset);

    ns_info *info = tqkv_calloc(1, sizeof *info);
    if (!info)
        return fail(r, TQKV_ENOMEM, "out of memory");
    int e = tq_codec_params_init(&info->p, preset, (uint16_t)n->n_layers,
                                 (uint16_t)n->n_kv_heads, (uint16_t)n->head_dim,
                                 (tq_dtype)n->dtype);
    if (e == 0 && n->seed)
        info->p.seed = n->seed;
    if (e == 0)
        e = tq_codec_params_validate(&info->p);
    if (e) {
        tqkv_free(info);
        if (e == TQKV_ENOENT)
            return fail(r, e, "unknown preset '%s'", preset);
        return fail(r, e, "codec parameters refused: %s", tqkv_strerror(e));
    }
    info->elem = tq_dtype_size((tq_dtype)n->dtype);

    tqkv_ns_desc d;
    memset(&d, 0, sizeof d);
    memcpy(d.name, n->name, nl);
    if (n->model_fingerprint.len)
        memcpy(d.fingerprint, n->model_fingerprint.data, n->model_fingerprint.len);
    d.fingerprint_len = (uint32_t)n->model_fingerprint.len;
    d.n_layers = n->n_layers;
    d.n_kv_heads = n->n_kv_heads;
    d.head_dim = n->head_dim;
    d.dtype = (uint32_t)n->dtype;
    d.chunk_size = chunk;
    snprintf(d.preset, sizeof d.preset, "%s", preset);
    d.seed = info->p.seed; /* 0 and the default seed are the same namespace */

    /* With a cluster, the namespace's record in Redis is checked (and written) first. */
    if (tqkvd_cluster_register(r, &d, info))
        return;
    tqkvd__register_local(r, &d, info);
}

void tqkvd__register_local(tqkvd_req *r, const tqkv_ns_desc *dp, void *info_arg)
{
    tqkvd_server *s = r->conn->srv;
    ns_info *info = info_arg;
    tqkv_ns_desc d = *dp;
    int e;
    tqkv_ns *ns = NULL;
    int created = 0;
    if (!tqkv_store_ns_find(s->store, d.name)) {
        /* New: recorded (durably) under the id it is about to get before it can hold blocks,
         * so that after a restart it gets the same id back (lower.c). */
        uint32_t id = tqkv_store_ns_next_id(s->store);
        e = tqkvd_nsreg_append(s, &d, id);
        if (e == 0)
            e = tqkv_store_ns_register_id(s->store, &d, id, &ns);
        created = e == 0;
    } else {
        e = tqkv_store_ns_register(s->store, &d, &ns, &created);
    }
    if (e) {
        tqkv_free(info);
        if (e == TQKV_ENSCONFLICT)
            return fail(r, e, "namespace '%s' is registered with different parameters",
                        d.name);
        return fail(r, e, "cannot register: %s", tqkv_strerror(e));
    }
    if (created) {
        tqkv_ns_set_user(ns, info);
        TQKV_LOGI(MOD, "msg=\"namespace registered\" ns=%s layers=%u kv_heads=%u head_dim=%u "
                       "chunk=%u preset=%s",
                  d.name, d.n_layers, d.n_kv_heads, d.head_dim, d.chunk_size, d.preset);
    } else {
        tqkv_free(info);
    }
    add_kv(r, "created", "%d", created);
    add_kv(r, "block_bytes_full_chunk", "%zu",
           tq_block_size(&((ns_info *)tqkv_ns_get_user(ns))->p, d.chunk_size, 0, d.n_layers));
    respond(r);
}

/* ---- shared checks of data ops ---- */

/* Finds the namespace and checks the keys. @return 0, or the request was answered. */
static int need_ns_and_keys(tqkvd_req *r)
{
    tqkvd_server *s = r->conn->srv;
    if (!r->hdr->ns || !r->hdr->ns[0]) {
        fail(r, TQKV_ENONAMESPACE, "%s needs a namespace", tqkv_op_name(r->hdr->op));
        return -1;
    }
    r->ns = tqkv_store_ns_find(s->store, r->hdr->ns);
    if (!r->ns && tqkvd_cluster_ns_lookup(r))
        return -1; /* registered elsewhere? asked of Redis; the request is dispatched again */
    if (!r->ns || !tqkv_ns_get_user(r->ns)) {
        fail(r, TQKV_ENONAMESPACE, "no such namespace '%s' (REGISTER it first)", r->hdr->ns);
        return -1;
    }
    if (r->hdr->n_items > MAX_ITEMS) {
        fail(r, TQKV_ETOOMANY, "%zu keys in one request (at most %d)", r->hdr->n_items,
             MAX_ITEMS);
        return -1;
    }
    for (size_t i = 0; i < r->hdr->n_items; i++)
        if (r->hdr->items[i]->key.len != TQKV_KEY_LEN) {
            fail(r, TQKV_EBADKEYLEN, "item %zu: key of %zu bytes (must be %d)", i,
                 r->hdr->items[i]->key.len, TQKV_KEY_LEN);
            return -1;
        }
    if (alloc_items(r)) {
        fail(r, TQKV_ENOMEM, "out of memory");
        return -1;
    }
    return 0;
}

static int need_admin(tqkvd_req *r)
{
    if (r->conn->admin)
        return 0;
    fail(r, TQKV_EPERM, "%s requires the admin token", tqkv_op_name(r->hdr->op));
    return -1;
}

/* ---- PUT ---- */

static void free_items(tqkvd_req *r)
{
    tqkvd_server *s = r->conn->srv;
    for (size_t i = 0; i < r->n_items; i++)
        if (r->items[i].put)
            tqkv_store_put_abort(s->store, r->items[i].put);
    tqkv_free(r->items);
    tqkv_free(r->ritems);
    tqkv_free(r->rpitems);
    r->items = NULL;
    r->ritems = NULL;
    r->rpitems = NULL;
    r->n_items = 0;
    r->resp.items = NULL;
    r->resp.n_items = 0;
}

int tqkvd_put_prepare_direct(tqkvd_req *r)
{
    tqkvd_server *s = r->conn->srv;
    Tqkv__Header *h = r->hdr;
    uint64_t total;
    if (h->op != TQKV__OP__OP_PUT || h->encoding != TQKV__ENCODING__ENC_BLOCK || h->response ||
        !r->conn->hello || !h->ns[0] || h->n_items == 0 || h->n_items > MAX_ITEMS ||
        tqkv_header_items_total(h, &total) || total != r->payload_len ||
        tqkv_header_check_keys(h))
        return -1;
    tqkv_ns *ns = tqkv_store_ns_find(s->store, h->ns);
    if (!ns || !tqkv_ns_get_user(ns))
        return -1;
    for (size_t i = 0; i < h->n_items; i++)
        if (h->items[i]->payload_len == 0)
            return -1;
    if (alloc_items(r))
        goto fallback;
    for (size_t i = 0; i < r->n_items; i++) {
        tqkvd_item *it = &r->items[i];
        void *buf = NULL;
        it->src_len = (size_t)h->items[i]->payload_len;
        if (tqkv_store_put_reserve(s->store, ns, it->key, it->src_len, &it->put, &buf) != 0) {
            it->put = NULL;
            goto fallback; /* present already, or no room: the usual path answers it */
        }
        it->dst = buf;
        it->dst_cap = it->src_len;
        it->src = buf;
    }
    r->ns = ns;
    r->direct = 1;
    return 0;
fallback:
    free_items(r);
    return -1;
}

static void put_work(uv_work_t *w)
{
    tqkvd_req *r = w->data;
    const ns_info *info = nsinfo(r);
    tqkvd_server *s = r->conn->srv;
    int raw = r->hdr->encoding == TQKV__ENCODING__ENC_RAW;
    unsigned flags = s->cfg.verify_checksums ? 0 : TQ_PARSE_NO_CHECKSUM;
    for (size_t i = 0; i < r->n_items; i++) {
        tqkvd_item *it = &r->items[i];
        if (!it->put)
            continue;
        if (raw) {
            size_t out = 0;
            it->status = tqkvd_encode(&info->p, it->key, it->n_tokens, it->src, it->src_len,
                                      it->dst, it->dst_cap, &out);
            it->dst_len = out;
            continue;
        }
        tq_block_view v;
        int e = tq_block_parse(it->src, it->src_len, flags, &v);
        if (!e && v.len != it->src_len)
            e = TQKV_EBADPAYLOAD;
        if (!e && memcmp(v.key, it->key, TQ_KEY_BYTES) != 0)
            e = TQKV_EBADKEY;
        if (!e && (v.n_layers_total != info->p.n_layers || v.layer_begin != 0 ||
                   v.n_layers != info->p.n_layers))
            e = TQKV_EBADLAYERS;
        if (!e && (v.n_kv_heads != info->p.n_kv_heads || v.head_dim != info->p.head_dim))
            e = TQKV_EBADGEOMETRY;
        if (!e && v.seed != info->p.seed)
            e = TQKV_EBADCODEC;
        if (!e) {
            if (it->dst != it->src)
                memcpy(it->dst, it->src, it->src_len);
            it->dst_len = it->src_len;
            it->n_tokens = v.n_tokens;
        }
        it->status = e;
    }
}

/* The PUT's reply, once its items are all settled. */
static void put_reply(tqkvd_req *r)
{
    /* The payload is no longer needed; free it now rather than when the reply is written. */
    tqkv_free(r->payload);
    r->payload = NULL;
    items_to_resp(r, 1);
    respond(r);
}

/* One asynchronous part of a PUT is done (a worker job, or a write-through the reply waits
 * for); the last one replies. */
static void put_settle(tqkvd_req *r)
{
    if (--r->pending == 0)
        put_reply(r);
}

/* A write-through tier acknowledged (or refused) an item's block. */
static void put_durable(void *arg, int status)
{
    tqkvd_item *it = arg;
    if (status)
        it->status = status;
    put_settle(it->req);
}

void tqkvd__put_validate(tqkvd_req *r)
{
    r->work.data = r;
    put_work(&r->work);
}

static void put_after(uv_work_t *w, int status)
{
    tqkvd_req *r = w->data;
    tqkvd_server *s = r->conn->srv;
    s->works_inflight--;
    int raw = r->hdr->encoding == TQKV__ENCODING__ENC_RAW;
    for (size_t i = 0; i < r->n_items; i++) {
        tqkvd_item *it = &r->items[i];
        if (!it->put)
            continue;
        tqkv_store_put *p = it->put;
        it->put = NULL;
        if (status == UV_ECANCELED)
            it->status = TQKV_ECANCELED;
        if (it->status) {
            tqkv_store_put_abort(s->store, p);
            if (!raw)
                s->bad_blocks++;
            continue;
        }
        int e = tqkv_store_put_commit_cb(s->store, p, it->dst_len, put_durable, it);
        if (e == TQKV_STORE_PENDING)
            r->pending++;
        it->status = (e == TQKV_EEXIST || e == TQKV_STORE_PENDING) ? 0 : e;
        it->tier = TQKV_TIER_HOST;
        if (raw) {
            s->encodes++;
            s->encode_bytes += it->src_len;
        }
    }
    if (raw)
        s->encode_ns += tqkv_now_ns() - r->start_ns;
    put_settle(r); /* the worker job's part */
}

static void op_put(tqkvd_req *r)
{
    tqkvd_server *s = r->conn->srv;
    if (r->direct) { /* checked and reserved when the header arrived; the bytes are in place */
        r->work.data = r;
        r->pending = 1; /* the worker job */
        s->works_inflight++;
        if (r->validated) { /* by the worker that read the payload (conn.c) */
            put_after(&r->work, 0);
            return;
        }
        if (uv_queue_work(s->loop, &r->work, put_work, put_after) != 0) {
            s->works_inflight--;
            fail(r, TQKV_EINTERNAL, "cannot queue work");
        }
        return;
    }
    if (need_ns_and_keys(r))
        return;
    const ns_info *info = nsinfo(r);
    const tqkv_ns_desc *d = tqkv_ns_get_desc(r->ns);
    Tqkv__Header *h = r->hdr;
    uint64_t total;
    if (tqkv_header_items_total(h, &total) || total != r->payload_len)
        return fail(r, TQKV_EBADPAYLOAD,
                    "items announce %" PRIu64 " payload bytes, the frame carries %zu",
                    tqkv_header_items_total(h, &total) ? UINT64_MAX : total, r->payload_len);
    int raw;
    if (h->encoding == TQKV__ENCODING__ENC_RAW)
        raw = 1;
    else if (h->encoding == TQKV__ENCODING__ENC_BLOCK)
        raw = 0;
    else
        return fail(r, TQKV_EINVAL, "unknown encoding %d", (int)h->encoding);
    if (raw && h->dtype != TQKV__DTYPE__DTYPE_NONE && (uint32_t)h->dtype != d->dtype)
        return fail(r, TQKV_EBADDTYPE, "raw PUT of dtype %d into a namespace of dtype %u",
                    (int)h->dtype, d->dtype);
    /* Validate every item before reserving anything: a bad request leaves no trace. */
    size_t off = 0;
    for (size_t i = 0; i < r->n_items; i++) {
        const Tqkv__Item *in = h->items[i];
        tqkvd_item *it = &r->items[i];
        it->src = r->payload + off;
        it->src_len = (size_t)in->payload_len;
        off += it->src_len;
        if (raw) {
            if (in->n_tokens < 1 || in->n_tokens > d->chunk_size)
                return fail(r, TQKV_EBADGEOMETRY, "item %zu: n_tokens %u (1..%u)", i,
                            in->n_tokens, d->chunk_size);
            uint64_t want = (uint64_t)d->n_layers * 2 * in->n_tokens * d->n_kv_heads *
                            d->head_dim * info->elem;
            if (want != in->payload_len)
                return fail(r, TQKV_EBADPAYLOAD,
                            "item %zu: %" PRIu64 " bytes of raw KV, the geometry needs %" PRIu64
                            " ([%u layers][2][%u tokens][%u heads][%u dims] x %zu bytes)",
                            i, (uint64_t)in->payload_len, want, d->n_layers, in->n_tokens,
                            d->n_kv_heads, d->head_dim, info->elem);
            it->n_tokens = in->n_tokens;
        } else if (in->payload_len == 0) {
            return fail(r, TQKV_ETRUNCATED, "item %zu: empty block", i);
        }
    }
    int work = 0;
    r->pending = 1; /* held until every item has been reserved or answered */
    for (size_t i = 0; i < r->n_items; i++) {
        tqkvd_item *it = &r->items[i];
        size_t cap = raw ? tq_block_size(&info->p, it->n_tokens, 0, info->p.n_layers)
                         : it->src_len;
        if (!cap) {
            it->status = TQKV_EBADGEOMETRY;
            continue;
        }
        void *buf = NULL;
        int e = tqkv_store_put_reserve(s->store, r->ns, it->key, cap, &it->put, &buf);
        if (e == TQKV_EEXIST) {
            it->put = NULL;
            it->status = 0; /* idempotent, acknowledged with the first PUT's write-through */
            it->tier = TQKV_TIER_HOST;
            int w = tqkv_store_put_sync(s->store, r->ns, it->key, put_durable, it);
            if (w == TQKV_STORE_PENDING)
                r->pending++;
            else if (w < 0)
                it->status = w;
            continue;
        }
        if (e) {
            it->put = NULL;
            it->status = e;
            continue;
        }
        it->dst = buf;
        it->dst_cap = cap;
        work = 1;
    }
    if (!work)
        return put_settle(r);
    r->work.data = r;
    s->works_inflight++;
    if (uv_queue_work(s->loop, &r->work, put_work, put_after) != 0) {
        s->works_inflight--;
        for (size_t i = 0; i < r->n_items; i++)
            if (r->items[i].put) {
                tqkv_store_put_abort(s->store, r->items[i].put);
                r->items[i].put = NULL;
                r->items[i].status = TQKV_EINTERNAL;
            }
        return put_settle(r);
    }
    /* The worker job holds the reservation's count from here; put_after settles it. */
}

/* ---- GET ---- */

static void get_work(uv_work_t *w)
{
    tqkvd_req *r = w->data;
    for (size_t i = 0; i < r->n_items; i++) {
        tqkvd_item *it = &r->items[i];
        if (!it->ref || it->status)
            continue;
        const void *data = tqkv_store_ref_data(it->ref);
        size_t len = tqkv_store_ref_len(it->ref);
        tq_block_view v;
        /* The block was validated (checksums included) when it was stored. */
        int e = tq_block_parse(data, len, TQ_PARSE_NO_CHECKSUM, &v);
        if (!e && (r->layer_begin < v.layer_begin ||
                   r->layer_begin + r->layer_count > (uint32_t)v.layer_begin + v.n_layers))
            e = TQKV_EBADLAYERS;
        size_t need = 0;
        if (!e) {
            it->n_tokens = v.n_tokens;
            if (r->decode_dtype)
                need = (size_t)r->layer_count * 2 * v.n_tokens * v.n_kv_heads * v.head_dim *
                       tq_dtype_size((tq_dtype)r->decode_dtype);
            else
                need = tq_block_slice_size(&v, r->layer_begin, r->layer_count);
            if (!need)
                e = TQKV_EBADLAYERS;
        }
        if (!e && !(it->out = tqkv_malloc(need)))
            e = TQKV_ENOMEM;
        if (!e) {
            size_t out_len = need;
            if (r->decode_dtype)
                e = tq_block_decode(&v, r->layer_begin, r->layer_count,
                                    (tq_dtype)r->decode_dtype, it->out, need);
            else
                e = tq_block_slice(&v, r->layer_begin, r->layer_count, it->out, need, &out_len);
            it->out_ptr = it->out;
            it->out_len = out_len;
        }
        if (e) {
            tqkv_free(it->out);
            it->out = NULL;
            it->out_ptr = NULL;
            it->out_len = 0;
        }
        it->status = e;
    }
}

/* Caps the reply to max_frame: items that do not fit answer TQKV_EFRAMETOOBIG. */
static void get_reply(tqkvd_req *r)
{
    tqkvd_server *s = r->conn->srv;
    uint64_t budget = (uint64_t)s->cfg.max_frame - TQKV_PREAMBLE_SIZE -
                      (uint64_t)r->n_items * 64 - 4096;
    uint64_t used = 0;
    for (size_t i = 0; i < r->n_items; i++) {
        tqkvd_item *it = &r->items[i];
        if (!it->out_len)
            continue;
        if (used + it->out_len > budget) {
            it->status = TQKV_EFRAMETOOBIG;
            it->out_ptr = NULL;
            it->out_len = 0;
            continue;
        }
        used += it->out_len;
    }
    if (r->hdr->lease_id)
        tqkv_store_lease_release(s->store, r->hdr->lease_id);
    r->resp.encoding = r->decode_dtype ? TQKV__ENCODING__ENC_RAW : TQKV__ENCODING__ENC_BLOCK;
    r->resp.dtype = (Tqkv__DType)r->decode_dtype;
    r->resp.layer_begin = r->layer_begin;
    r->resp.layer_count = r->layer_count;
    items_to_resp(r, 1);
    tqkvd_req_respond(r, 1);
}

static void get_after(uv_work_t *w, int status)
{
    tqkvd_req *r = w->data;
    r->conn->srv->works_inflight--;
    if (status == UV_ECANCELED)
        for (size_t i = 0; i < r->n_items; i++)
            if (r->items[i].ref && !r->items[i].out_len)
                r->items[i].status = TQKV_ECANCELED;
    get_reply(r);
}

/* All keys answered by the store: serve whole blocks straight from the store, or go through a
 * worker for layer slices and decoding. */
static void get_continue(tqkvd_req *r);
void tqkvd__get_continue(tqkvd_req *r)
{
    get_continue(r);
}

static void get_continue(tqkvd_req *r)
{
    tqkvd_server *s = r->conn->srv;
    /* Keys every local tier missed may be held by another member. */
    if (tqkvd_cluster_peer_get(r))
        return;
    const ns_info *info = nsinfo(r);
    int whole = !r->decode_dtype && r->layer_begin == 0 && r->layer_count == info->p.n_layers;
    int any = 0;
    for (size_t i = 0; i < r->n_items; i++) {
        tqkvd_item *it = &r->items[i];
        if (!it->ref)
            continue;
        any = 1;
        if (whole) {
            it->out_ptr = tqkv_store_ref_data(it->ref);
            it->out_len = tqkv_store_ref_len(it->ref);
            if (it->out_len >= 128)
                it->n_tokens = tqkv_load_le32((const uint8_t *)it->out_ptr + 64);
        }
    }
    if (whole || !any)
        return get_reply(r);
    r->work.data = r;
    s->works_inflight++;
    if (uv_queue_work(s->loop, &r->work, get_work, get_after) != 0) {
        s->works_inflight--;
        fail(r, TQKV_EINTERNAL, "cannot queue work");
    }
}

static void get_cb(void *arg, int status, tqkv_store_ref *ref, tqkv_tier_id tier)
{
    tqkvd_item *it = arg;
    tqkvd_req *r = it->req;
    if (status == TQKV_STORE_HIT) {
        it->ref = ref;
        it->tier = (uint8_t)tier;
    } else if (status == TQKV_STORE_MISS) {
        it->status = TQKV_ENOENT;
    } else {
        it->status = status;
    }
    if (--r->pending == 0)
        get_continue(r);
}

static void op_get(tqkvd_req *r)
{
    tqkvd_server *s = r->conn->srv;
    if (need_ns_and_keys(r))
        return;
    const ns_info *info = nsinfo(r);
    Tqkv__Header *h = r->hdr;
    uint32_t nl = info->p.n_layers;
    if (h->layer_begin >= nl || (h->layer_count && h->layer_count > nl - h->layer_begin))
        return fail(r, TQKV_EBADLAYERS, "layers [%u, +%u) outside the namespace's %u layers",
                    h->layer_begin, h->layer_count, nl);
    r->layer_begin = h->layer_begin;
    r->layer_count = h->layer_count ? h->layer_count : nl - h->layer_begin;
    if (h->dtype != TQKV__DTYPE__DTYPE_NONE &&
        (h->dtype < TQKV__DTYPE__DTYPE_F16 || h->dtype > TQKV__DTYPE__DTYPE_F32))
        return fail(r, TQKV_EBADDTYPE, "cannot decode to dtype %d", (int)h->dtype);
    r->decode_dtype = (int)h->dtype;
    r->pending = 1; /* held until every key has been asked, so a callback cannot finish early */
    for (size_t i = 0; i < r->n_items; i++) {
        tqkvd_item *it = &r->items[i];
        tqkv_store_ref *ref = NULL;
        int e = tqkv_store_get(s->store, r->ns, it->key, &ref, get_cb, it);
        if (e == TQKV_STORE_HIT) {
            it->ref = ref;
            it->tier = TQKV_TIER_HOST;
        } else if (e == TQKV_STORE_MISS) {
            it->status = TQKV_ENOENT;
        } else if (e == TQKV_STORE_PENDING) {
            r->pending++;
        } else {
            it->status = e;
        }
    }
    if (--r->pending == 0)
        get_continue(r);
}

/* ---- LOOKUP ---- */

static void lookup_reply(tqkvd_req *r)
{
    /* Keys from the first miss on may be held by another member: fetched here, then looked up
     * again (tqkvd__lookup_again). */
    if (r->lookup.hits < r->n_items && tqkvd_cluster_peer_lookup(r))
        return;
    r->resp.hits = r->lookup.hits;
    r->resp.lease_id = r->lookup.lease_id;
    for (size_t i = 0; i < r->n_items; i++) {
        r->ritems[i].tier = (Tqkv__Tier)r->lookup_tiers[i];
        if (r->lookup_tiers[i] != TQKV_TIER_NONE && r->items[i].tier == TQKV_TIER_PEER)
            r->ritems[i].tier = TQKV__TIER__TIER_PEER;
    }
    respond(r);
}

static void lookup_cb(void *arg, int status, tqkv_lookup_result *res)
{
    tqkvd_req *r = arg;
    if (status < 0) {
        tqkvd_req_set_status(r, status, "lookup failed: %s", tqkv_strerror(status));
        return respond(r);
    }
    lookup_reply(r);
}

/* Looks the request's keys up in the store; answers now, or from lookup_cb when a lower tier
 * answers later. */
static void lookup_run(tqkvd_req *r)
{
    tqkvd_server *s = r->conn->srv;
    int e = tqkv_store_lookup(s->store, r->ns, (const uint8_t(*)[TQKV_KEY_BYTES])r->lookup_keys,
                              r->n_items, r->hdr->lease_ms, &r->lookup, lookup_cb, r);
    if (e == TQKV_STORE_PENDING)
        return;
    if (e < 0)
        return fail(r, e, "lookup failed: %s", tqkv_strerror(e));
    lookup_reply(r);
}

void tqkvd__lookup_again(tqkvd_req *r)
{
    tqkvd_server *s = r->conn->srv;
    /* The first lookup's lease (on its leading hits) is replaced by the new one. */
    if (r->lookup.lease_id)
        tqkv_store_lease_release(s->store, r->lookup.lease_id);
    r->lookup.lease_id = 0;
    r->lookup.hits = 0;
    memset(r->lookup_tiers, 0, r->n_items);
    lookup_run(r);
}

static void op_lookup(tqkvd_req *r)
{
    if (need_ns_and_keys(r))
        return;
    size_t n = r->n_items;
    if (n) {
        r->lookup_keys = tqkv_mallocarray(n, TQKV_KEY_LEN);
        r->lookup_tiers = tqkv_calloc(n, 1);
        if (!r->lookup_keys || !r->lookup_tiers)
            return fail(r, TQKV_ENOMEM, "out of memory");
        for (size_t i = 0; i < n; i++)
            memcpy(r->lookup_keys + i * TQKV_KEY_LEN, r->items[i].key, TQKV_KEY_LEN);
    }
    r->lookup.tiers = r->lookup_tiers;
    lookup_run(r);
}

/* ---- DELETE, PIN, UNPIN ---- */

static void keys_reply(tqkvd_req *r)
{
    uint64_t done = 0;
    for (size_t i = 0; i < r->n_items; i++)
        done += r->items[i].status == 0;
    r->resp.count = done;
    items_to_resp(r, 1);
    respond(r);
}

/* A PIN of a block that only a lower tier holds: the store fetched it (a GET, promoting it into
 * host memory); pin it there. Not promoted (no room even after eviction): TQKV_ENOSPC. */
static void pin_cb(void *arg, int status, tqkv_store_ref *ref, tqkv_tier_id tier)
{
    tqkvd_item *it = arg;
    tqkvd_req *r = it->req;
    tqkvd_server *s = r->conn->srv;
    (void)tier;
    if (status == TQKV_STORE_HIT) {
        int e = tqkv_store_pin(s->store, r->ns, it->key);
        it->status = e == TQKV_STORE_MISS ? TQKV_ENOSPC : e;
        tqkv_store_ref_release(s->store, ref);
    } else {
        it->status = status == TQKV_STORE_MISS ? TQKV_ENOENT : status;
    }
    if (--r->pending == 0)
        keys_reply(r);
}

static void op_keys(tqkvd_req *r)
{
    tqkvd_server *s = r->conn->srv;
    if (need_ns_and_keys(r))
        return;
    int op = r->hdr->op;
    if (op == TQKV__OP__OP_UNPIN && r->hdr->lease_id)
        tqkv_store_lease_release(s->store, r->hdr->lease_id);
    r->pending = 1; /* held until every key has been handled */
    for (size_t i = 0; i < r->n_items; i++) {
        tqkvd_item *it = &r->items[i];
        int e;
        if (op == TQKV__OP__OP_DELETE)
            e = tqkv_store_delete(s->store, r->ns, it->key);
        else if (op == TQKV__OP__OP_PIN)
            e = tqkv_store_pin(s->store, r->ns, it->key);
        else
            e = tqkv_store_unpin(s->store, r->ns, it->key);
        if (e == TQKV_STORE_MISS && op == TQKV__OP__OP_PIN) {
            /* not in host memory: a lower tier may hold it */
            tqkv_store_ref *ref = NULL;
            int g = tqkv_store_get(s->store, r->ns, it->key, &ref, pin_cb, it);
            if (g == TQKV_STORE_PENDING) {
                r->pending++;
                continue;
            }
            if (g == TQKV_STORE_HIT) { /* cannot happen after the miss; handled all the same */
                e = tqkv_store_pin(s->store, r->ns, it->key);
                tqkv_store_ref_release(s->store, ref);
            } else {
                e = g;
            }
        }
        it->status = e == TQKV_STORE_MISS ? TQKV_ENOENT : e;
    }
    if (--r->pending == 0)
        keys_reply(r);
}

/* ---- STATS, HEALTH ---- */

static void stats_tier(tqkvd_req *r, const char *name, const tqkv_tier_stats *t)
{
    char k[64];
#define T(field)                                                                                   \
    do {                                                                                           \
        snprintf(k, sizeof k, "tier.%s." #field, name);                                            \
        add_kv(r, k, "%" PRIu64, t->field);                                                        \
    } while (0)
    T(capacity);
    T(used);
    T(entries);
    T(resident);
    T(hits);
    T(misses);
    T(evictions);
    T(promotions);
    T(demotions);
    T(drops);
    T(bytes_in);
    T(bytes_out);
    T(errors);
#undef T
}

static void stats_ns(void *arg, tqkv_ns *ns)
{
    tqkvd_req *r = arg;
    const tqkv_ns_desc *d = tqkv_ns_get_desc(ns);
    if (r->hdr->ns[0] && strcmp(r->hdr->ns, d->name) != 0)
        return;
    tqkv_ns_stats st;
    tqkv_ns_get_stats(ns, &st);
    char k[TQKV_NS_NAME_MAX + 32];
#define N(field)                                                                                   \
    do {                                                                                           \
        snprintf(k, sizeof k, "ns.%s." #field, d->name);                                           \
        add_kv(r, k, "%" PRIu64, st.field);                                                        \
    } while (0)
    N(entries);
    N(bytes);
    N(hits);
    N(misses);
    N(puts);
    N(put_exists);
#undef N
}

/* The engines' own counters, under tier.<name>.* after the policy's. */
static void stats_engines(tqkvd_req *r)
{
    tqkvd_server *s = r->conn->srv;
    (void)s;
#ifdef TQKVD_HAVE_SSD
    tqkv_ssd *ssd = tqkv_ssd_from_tier(tqkv_store_tier(s->store, TQKV_TIER_SSD));
    if (ssd) {
        tqkv_ssd_stats e;
        tqkv_ssd_stats_get(ssd, &e);
        add_kv(r, "tier.ssd.corrupt", "%" PRIu64, e.corrupt);
        add_kv(r, "tier.ssd.io_errors", "%" PRIu64, e.io_errors);
        add_kv(r, "tier.ssd.segments", "%" PRIu64, e.segments);
        add_kv(r, "tier.ssd.live_bytes", "%" PRIu64, e.live_bytes);
        add_kv(r, "tier.ssd.segment_evictions", "%" PRIu64, e.evictions);
        add_kv(r, "tier.ssd.evicted_records", "%" PRIu64, e.evicted_records);
        add_kv(r, "tier.ssd.rewrites", "%" PRIu64, e.rewrites);
        add_kv(r, "tier.ssd.compactions", "%" PRIu64, e.compactions);
        add_kv(r, "tier.ssd.compressed", "%" PRIu64, e.compressed);
        add_kv(r, "tier.ssd.syncs", "%" PRIu64, e.syncs);
        add_kv(r, "tier.ssd.recovered", "%" PRIu64, e.recovered);
        add_kv(r, "tier.ssd.truncated_bytes", "%" PRIu64, e.truncated_bytes);
        add_kv(r, "tier.ssd.recovery_s", "%.3f", e.open_seconds);
        add_kv(r, "tier.ssd.write_policy", "%s",
               s->cfg.ssd_write == 0 ? "back" : s->cfg.ssd_write == 1 ? "through" : "async");
    }
#endif
#ifdef TQKVD_HAVE_REDIS
    tqkv_redis *rd = tqkv_redis_from_tier(tqkv_store_tier(s->store, TQKV_TIER_REDIS));
    if (rd) {
        tqkv_redis_stats e;
        tqkv_redis_get_stats(rd, &e);
        add_kv(r, "tier.redis.state", "%s", tqkv_redis_state_name(e.state));
        add_kv(r, "tier.redis.nodes_up", "%u", e.nodes_up);
        add_kv(r, "tier.redis.nodes_total", "%u", e.nodes_total);
        add_kv(r, "tier.redis.timeouts", "%" PRIu64, e.timeouts);
        add_kv(r, "tier.redis.request_errors", "%" PRIu64, e.errors);
        add_kv(r, "tier.redis.corrupt", "%" PRIu64, e.corrupt);
        add_kv(r, "tier.redis.reconnects", "%" PRIu64, e.reconnects);
        add_kv(r, "tier.redis.moved", "%" PRIu64, e.moved);
        add_kv(r, "tier.redis.ask", "%" PRIu64, e.ask);
        add_kv(r, "tier.redis.write_policy", "%s",
               s->cfg.redis_write == 0 ? "back" : s->cfg.redis_write == 1 ? "through" : "async");
    }
#endif
}

static void op_stats(tqkvd_req *r)
{
    tqkvd_server *s = r->conn->srv;
    if (r->hdr->ns[0] && !tqkv_store_ns_find(s->store, r->hdr->ns))
        return fail(r, TQKV_ENONAMESPACE, "no such namespace '%s'", r->hdr->ns);
    tqkv_store_stats st;
    tqkv_store_get_stats(s->store, &st);
    add_kv(r, "version", "%s", TQKVD_VERSION);
    add_kv(r, "uptime_s", "%.3f", (double)(tqkv_now_ns() - s->started_ns) / 1e9);
    add_kv(r, "connections", "%u", s->n_conns);
    add_kv(r, "connections_total", "%" PRIu64, s->conns_total);
    add_kv(r, "connections_refused", "%" PRIu64, s->conns_refused);
    add_kv(r, "requests", "%" PRIu64, s->requests);
    add_kv(r, "request_errors", "%" PRIu64, s->request_errors);
    for (int op = 1; op < 16; op++)
        if (s->ops[op]) {
            char k[48];
            snprintf(k, sizeof k, "ops.%s", tqkv_op_name(op));
            add_kv(r, k, "%" PRIu64, s->ops[op]);
        }
    add_kv(r, "bytes_in", "%" PRIu64, s->bytes_in);
    add_kv(r, "bytes_out", "%" PRIu64, s->bytes_out);
    add_kv(r, "encoder", "%s", tqkvd_codec_name());
    add_kv(r, "encodes", "%" PRIu64, s->encodes);
    add_kv(r, "encode_bytes", "%" PRIu64, s->encode_bytes);
    add_kv(r, "bad_blocks", "%" PRIu64, s->bad_blocks);
    add_kv(r, "entries", "%" PRIu64, st.entries);
    add_kv(r, "bytes", "%" PRIu64, st.bytes);
    add_kv(r, "hits", "%" PRIu64, st.hits);
    add_kv(r, "misses", "%" PRIu64, st.misses);
    add_kv(r, "puts", "%" PRIu64, st.puts);
    add_kv(r, "put_exists", "%" PRIu64, st.put_exists);
    add_kv(r, "put_aborts", "%" PRIu64, st.put_aborts);
    add_kv(r, "put_enospc", "%" PRIu64, st.put_enospc);
    add_kv(r, "reservations", "%" PRIu64, st.reservations);
    add_kv(r, "reserved_bytes", "%" PRIu64, st.reserved_bytes);
    add_kv(r, "pinned", "%" PRIu64, st.pinned);
    add_kv(r, "leases", "%" PRIu64, st.leases);
    add_kv(r, "refs", "%" PRIu64, st.refs);
    add_kv(r, "namespaces", "%u", st.namespaces);
    for (int t = 1; t < TQKV_TIER_COUNT; t++)
        if (st.tiers[t].present)
            stats_tier(r, tqkv_tier_name(t), &st.tiers[t]);
    stats_engines(r);
    if (tqkvd_cluster_enabled(s)) {
        tqkvd_cluster_stats cs;
        tqkvd_cluster_get_stats(s, &cs);
        const tqkvd_member *m = NULL;
        add_kv(r, "cluster.members", "%zu", tqkvd_cluster_members(s, &m));
#define C(f) add_kv(r, "cluster." #f, "%" PRIu64, cs.f)
        C(heartbeats);
        C(heartbeat_errors);
        C(ns_published);
        C(ns_fetched);
        C(ns_conflicts);
        C(peer_requests);
        C(peer_keys_asked);
        C(peer_hits);
        C(peer_misses);
        C(peer_errors);
        C(peer_bad_blocks);
        C(peer_bytes);
#undef C
    }
    tqkv_store_ns_foreach(s->store, stats_ns, r);
    respond(r);
}

static void op_health(tqkvd_req *r)
{
    tqkvd_server *s = r->conn->srv;
    tqkv_store_stats st;
    tqkv_store_get_stats(s->store, &st);
    add_kv(r, "status", "%s", s->shutting_down ? "shutting_down" : "ok");
    add_kv(r, "version", "%s", TQKVD_VERSION);
    add_kv(r, "uptime_s", "%.3f", (double)(tqkv_now_ns() - s->started_ns) / 1e9);
    add_kv(r, "connections", "%u", s->n_conns);
    add_kv(r, "host_used", "%" PRIu64, st.tiers[TQKV_TIER_HOST].used);
    add_kv(r, "host_capacity", "%" PRIu64, st.tiers[TQKV_TIER_HOST].capacity);
    add_kv(r, "encoder", "%s", tqkvd_codec_name());
    respond(r);
}

/* ---- CONFIG ---- */

static void op_config_get(tqkvd_req *r)
{
    tqkvd_server *s = r->conn->srv;
    char v[512];
    if (r->hdr->n_kv == 0) {
        for (size_t i = 0; i < tqkvd_config_count(); i++) {
            const char *name = tqkvd_config_name(i);
            add_kv(r, name, "%s", tqkvd_config_get(&s->cfg, name, v, sizeof v));
        }
        return respond(r);
    }
    for (size_t i = 0; i < r->hdr->n_kv; i++) {
        const char *name = r->hdr->kv[i]->key;
        if (!tqkvd_config_get(&s->cfg, name, v, sizeof v))
            return fail(r, TQKV_ENOENT, "unknown setting '%s'", name);
        add_kv(r, name, "%s", v);
    }
    respond(r);
}

static void op_config_set(tqkvd_req *r)
{
    tqkvd_server *s = r->conn->srv;
    if (need_admin(r))
        return;
    if (r->hdr->n_kv == 0)
        return fail(r, TQKV_EINVAL, "CONFIG_SET without a setting");
    for (size_t i = 0; i < r->hdr->n_kv; i++) {
        const char *name = r->hdr->kv[i]->key, *value = r->hdr->kv[i]->value;
        char err[256] = "";
        int e = tqkvd_config_set(&s->cfg, s, name, value, err, sizeof err);
        if (e)
            return fail(r, e, "%s", err[0] ? err : tqkv_strerror(e));
        char v[512];
        add_kv(r, name, "%s", tqkvd_config_get(&s->cfg, name, v, sizeof v));
        TQKV_LOGI(MOD, "msg=\"setting changed\" name=%s value=\"%s\" conn=%" PRIu64, name, v,
                  r->conn->id);
    }
    respond(r);
}

/* ---- EVICT, CLEAR ---- */

static void op_evict(tqkvd_req *r)
{
    tqkvd_server *s = r->conn->srv;
    if (need_admin(r))
        return;
    tqkv_ns *ns = NULL;
    if (r->hdr->ns[0] && !(ns = tqkv_store_ns_find(s->store, r->hdr->ns)))
        return fail(r, TQKV_ENONAMESPACE, "no such namespace '%s'", r->hdr->ns);
    uint64_t freed = 0;
    int e = tqkv_store_evict(s->store, ns, r->hdr->bytes, &freed);
    if (e)
        return fail(r, e, "evict failed: %s", tqkv_strerror(e));
    r->resp.bytes = freed;
    respond(r);
}

static void op_clear(tqkvd_req *r)
{
    tqkvd_server *s = r->conn->srv;
    if (need_admin(r))
        return;
    tqkv_ns *ns = NULL;
    if (r->hdr->ns[0] && !(ns = tqkv_store_ns_find(s->store, r->hdr->ns)))
        return fail(r, TQKV_ENONAMESPACE, "no such namespace '%s'", r->hdr->ns);
    uint64_t removed = 0;
    int e = tqkv_store_clear(s->store, ns, &removed);
    if (e)
        return fail(r, e, "clear failed: %s", tqkv_strerror(e));
    r->resp.count = removed;
    TQKV_LOGI(MOD, "msg=\"cleared\" ns=\"%s\" entries=%" PRIu64, r->hdr->ns, removed);
    respond(r);
}

/* ---- CLUSTER ---- */

static void op_cluster(tqkvd_req *r)
{
    tqkvd_server *s = r->conn->srv;
    const tqkvd_member *m = NULL;
    size_t n = tqkvd_cluster_members(s, &m);
    add_kv(r, "enabled", "%d", tqkvd_cluster_enabled(s));
    add_kv(r, "self", "%s", tqkvd_cluster_self(s));
    add_kv(r, "members", "%zu", n);
    for (size_t i = 0; i < n; i++) {
        char k[160];
        snprintf(k, sizeof k, "member.%zu.id", i);
        add_kv(r, k, "%s", m[i].id);
        for (size_t f = 0; f < m[i].n_fields; f++) {
            if (strcmp(m[i].names[f], "id") == 0)
                continue;
            snprintf(k, sizeof k, "member.%zu.%.100s", i, m[i].names[f]);
            add_kv(r, k, "%s", m[i].values[f]);
        }
    }
    respond(r);
}

int tqkvd__ns_adopt(tqkvd_server *s, const tqkv_ns_desc *d)
{
    tqkv_ns *ns = tqkv_store_ns_find(s->store, d->name);
    if (ns)
        return tqkv_ns_get_user(ns) ? 0 : tqkvd__ns_attach_info(ns);
    if (d->chunk_size < 1 || d->chunk_size > TQ_MAX_TOKENS)
        return TQKV_EBADGEOMETRY;
    uint32_t id = tqkv_store_ns_next_id(s->store);
    int e = tqkvd_nsreg_append(s, d, id);
    if (e == 0)
        e = tqkv_store_ns_register_id(s->store, d, id, &ns);
    if (e == 0)
        e = tqkvd__ns_attach_info(ns);
    return e;
}

int tqkvd__block_check(const tqkvd_req *r, const void *data, size_t len, const uint8_t *key,
                       uint32_t *n_tokens)
{
    const ns_info *info = nsinfo(r);
    tq_block_view v;
    int e = tq_block_parse(data, len, 0, &v);
    if (!e && v.len != len)
        e = TQKV_EBADPAYLOAD;
    if (!e && memcmp(v.key, key, TQ_KEY_BYTES) != 0)
        e = TQKV_EBADKEY;
    if (!e && (v.n_layers_total != info->p.n_layers || v.layer_begin != 0 ||
               v.n_layers != info->p.n_layers))
        e = TQKV_EBADLAYERS;
    if (!e && (v.n_kv_heads != info->p.n_kv_heads || v.head_dim != info->p.head_dim))
        e = TQKV_EBADGEOMETRY;
    if (!e && v.seed != info->p.seed)
        e = TQKV_EBADCODEC;
    if (!e)
        *n_tokens = v.n_tokens;
    return e;
}

static void dispatch_op(tqkvd_req *r);

void tqkvd_dispatch(tqkvd_req *r)
{
    tqkvd_conn *c = r->conn;
    tqkvd_server *s = c->srv;
    Tqkv__Header *h = r->hdr;
    s->requests++;
    if (h->op > 0 && h->op < 16)
        s->ops[h->op]++;
    TQKV_LOGT(MOD, "msg=\"request\" conn=%" PRIu64 " op=%s id=%" PRIu64 " items=%zu payload=%zu",
              c->id, tqkv_op_name(h->op), h->request_id, h->n_items, r->payload_len);
    if (h->response)
        return fail(r, TQKV_EPROTO, "a request must not have the response flag set");
    if (h->op != TQKV__OP__OP_HELLO && !c->hello)
        return fail(r, TQKV_ENOTREADY, "send HELLO first");
    /* Only PUT carries a payload. */
    if (r->payload_len && h->op != TQKV__OP__OP_PUT)
        return fail(r, TQKV_EBADPAYLOAD, "%s carries no payload (got %zu bytes)",
                    tqkv_op_name(h->op), r->payload_len);
    dispatch_op(r);
}

void tqkvd__dispatch_again(tqkvd_req *r)
{
    dispatch_op(r);
}

static void dispatch_op(tqkvd_req *r)
{
    Tqkv__Header *h = r->hdr;
    switch (h->op) {
    case TQKV__OP__OP_HELLO:
        return op_hello(r);
    case TQKV__OP__OP_REGISTER:
        return op_register(r);
    case TQKV__OP__OP_PUT:
        return op_put(r);
    case TQKV__OP__OP_GET:
        return op_get(r);
    case TQKV__OP__OP_LOOKUP:
        return op_lookup(r);
    case TQKV__OP__OP_DELETE:
    case TQKV__OP__OP_PIN:
    case TQKV__OP__OP_UNPIN:
        return op_keys(r);
    case TQKV__OP__OP_STATS:
        return op_stats(r);
    case TQKV__OP__OP_HEALTH:
        return op_health(r);
    case TQKV__OP__OP_CONFIG_GET:
        return op_config_get(r);
    case TQKV__OP__OP_CONFIG_SET:
        return op_config_set(r);
    case TQKV__OP__OP_EVICT:
        return op_evict(r);
    case TQKV__OP__OP_CLEAR:
        return op_clear(r);
    case TQKV__OP__OP_CLUSTER:
        return op_cluster(r);
    default:
        return fail(r, TQKV_EBADOP, "unknown op %d", (int)h->op);
    }
}

int tqkvd__ns_attach_info(tqkv_ns *ns)
{
    const tqkv_ns_desc *d = tqkv_ns_get_desc(ns);
    if (d->n_layers < 1 || d->n_layers > TQ_MAX_LAYERS || d->n_kv_heads < 1 ||
        d->n_kv_heads > TQ_MAX_KV_HEADS || d->head_dim < 1 || d->head_dim > TQ_MAX_HEAD_DIM ||
        d->dtype < TQKV__DTYPE__DTYPE_F16 || d->dtype > TQKV__DTYPE__DTYPE_F32)
        return TQKV_EBADGEOMETRY;
    ns_info *info = tqkv_calloc(1, sizeof *info);
    if (!info)
        return TQKV_ENOMEM;
    int e = tq_codec_params_init(&info->p, d->preset, (uint16_t)d->n_layers,
                                 (uint16_t)d->n_kv_heads, (uint16_t)d->head_dim,
                                 (tq_dtype)d->dtype);
    if (e == 0)
        info->p.seed = d->seed;
    if (e == 0)
        e = tq_codec_params_validate(&info->p);
    if (e) {
        tqkv_free(info);
        return e;
    }
    info->elem = tq_dtype_size((tq_dtype)d->dtype);
    tqkv_ns_set_user(ns, info);
    return 0;
}

/* Frees the daemon's per-namespace data (before the store is destroyed). */
static void free_ns_info(void *arg, tqkv_ns *ns)
{
    tqkv_free(tqkv_ns_get_user(ns));
    tqkv_ns_set_user(ns, NULL);
}

void tqkvd__dispatch_cleanup(tqkvd_server *s)
{
    if (s->store)
        tqkv_store_ns_foreach(s->store, free_ns_info, NULL);
}
