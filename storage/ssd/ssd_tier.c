/* Adapter from the tier vtable (storage/tier.h) to the SSD engine (tqkv_ssd.h). The engine's
 * results already use the tier's numbers (HIT 0, MISS 1) and its callback shapes, so most ops
 * pass straight through; reads add the length out-parameter the tier interface asks for. */
#include "ssd_tier.h"

#include <string.h>

#include "tqkv_alloc.h"

typedef struct {
    tqkv_tier base; /* first: the store sees a tqkv_tier * */
    tqkv_ssd *ssd;
    uv_async_t async;
} ssd_tier;

static const tqkv_tier_ops ssd_tier_ops;

static ssd_tier *from(tqkv_tier *t)
{
    return (ssd_tier *)t;
}

static void on_async(uv_async_t *h)
{
    ssd_tier *st = h->data;
    tqkv_ssd_drain(st->ssd);
}

static void notify(void *ctx)
{
    uv_async_send(ctx);
}

static void on_close(uv_handle_t *h)
{
    tqkv_free(h->data);
}

static void t_info(tqkv_tier *t, tqkv_tier_info *out)
{
    tqkv_ssd_stats s;
    tqkv_ssd_stats_get(from(t)->ssd, &s);
    memset(out, 0, sizeof(*out));
    out->capacity = s.capacity;
    out->used = s.used;
    out->entries = s.records;
    out->errors = s.corrupt + s.io_errors;
}

static int t_set_capacity(tqkv_tier *t, uint64_t bytes)
{
    return tqkv_ssd_set_capacity(from(t)->ssd, bytes) == 0 ? 0 : TQKV_ERANGE;
}

static void t_destroy(tqkv_tier *t)
{
    ssd_tier *st = from(t);
    tqkv_ssd_close(st->ssd); /* runs the remaining callbacks here */
    st->ssd = NULL;
    uv_close((uv_handle_t *)&st->async, on_close);
}

static int t_write(tqkv_tier *t, uint32_t ns_id, const uint8_t key[TQKV_KEY_BYTES],
                   const void *data, size_t len, tqkv_tier_done_cb cb, void *arg)
{
    return tqkv_ssd_put(from(t)->ssd, ns_id, key, data, len, cb, arg);
}

typedef struct {
    size_t *out_len;
    tqkv_tier_dest_fn dest;
    void *dest_arg;
    tqkv_tier_done_cb cb;
    void *arg;
} read_ctx;

/* Runs on the loop thread (tqkv_ssd_drain). The policy's destination function is called here,
 * not on the engine's reader thread: a policy allocates destinations from its own structures
 * (the store evicts host entries to make room), which belong to the loop thread. It costs one
 * copy of the block, small next to the disk read. */
static void on_read(void *arg, int status, void *data, size_t len)
{
    read_ctx c = *(read_ctx *)arg;
    tqkv_free(arg);
    if (status == TQKV_SSD_HIT) {
        void *out = c.dest(c.dest_arg, len);
        if (!out) {
            c.cb(c.arg, TQKV_ENOSPC);
            return;
        }
        if (len) memcpy(out, data, len);
        if (c.out_len) *c.out_len = len;
        c.cb(c.arg, 0);
        return;
    }
    c.cb(c.arg, status == TQKV_SSD_MISS ? TQKV_TIER_MISS : status);
}

static int t_read(tqkv_tier *t, uint32_t ns_id, const uint8_t key[TQKV_KEY_BYTES],
                  tqkv_tier_dest_fn dest, void *dest_arg, size_t *out_len, tqkv_tier_done_cb cb,
                  void *arg)
{
    if (!dest || !cb) return TQKV_EINVAL;
    read_ctx *c = tqkv_malloc(sizeof(*c));
    if (!c) return TQKV_ENOMEM;
    c->out_len = out_len;
    c->dest = dest;
    c->dest_arg = dest_arg;
    c->cb = cb;
    c->arg = arg;
    int rc = tqkv_ssd_get(from(t)->ssd, ns_id, key, NULL, NULL, on_read, c);
    if (rc != 0) tqkv_free(c);
    return rc;
}

static int t_remove(tqkv_tier *t, uint32_t ns_id, const uint8_t key[TQKV_KEY_BYTES],
                    tqkv_tier_done_cb cb, void *arg)
{
    return tqkv_ssd_remove(from(t)->ssd, ns_id, key, cb, arg);
}

static int t_exists(tqkv_tier *t, uint32_t ns_id, const uint8_t key[TQKV_KEY_BYTES],
                    tqkv_tier_done_cb cb, void *arg)
{
    return tqkv_ssd_contains(from(t)->ssd, ns_id, key) == TQKV_SSD_HIT ? TQKV_TIER_HIT
                                                                       : TQKV_TIER_MISS;
}

static int t_clear(tqkv_tier *t, uint32_t ns_id, tqkv_tier_done_cb cb, void *arg)
{
    return tqkv_ssd_clear(from(t)->ssd, ns_id, cb, arg);
}

static const tqkv_tier_ops ssd_tier_ops = {
    .name = "ssd",
    .info = t_info,
    .set_capacity = t_set_capacity,
    .destroy = t_destroy,
    .write = t_write,
    .read = t_read,
    .remove = t_remove,
    .exists = t_exists,
    .clear = t_clear,
};

int tqkv_ssd_tier_create(uv_loop_t *loop, const tqkv_ssd_options *opt, tqkv_tier **out)
{
    if (!loop || !opt || !out) return TQKV_EINVAL;
    ssd_tier *st = tqkv_calloc(1, sizeof(*st));
    if (!st) return TQKV_ENOMEM;
    st->base.ops = &ssd_tier_ops;
    st->base.id = TQKV_TIER_SSD;
    st->base.flags = TQKV_TIER_F_KEYED | TQKV_TIER_F_PERSISTENT;
    if (uv_async_init(loop, &st->async, on_async) != 0) {
        tqkv_free(st);
        return TQKV_ENOMEM;
    }
    st->async.data = st;
    tqkv_ssd_options o = *opt;
    o.notify = notify;
    o.notify_ctx = &st->async;
    int rc = tqkv_ssd_open(&o, &st->ssd);
    if (rc != 0) {
        uv_close((uv_handle_t *)&st->async, on_close);
        return rc;
    }
    *out = &st->base;
    return 0;
}

tqkv_ssd *tqkv_ssd_from_tier(tqkv_tier *t)
{
    return t && t->ops == &ssd_tier_ops ? from(t)->ssd : NULL;
}
