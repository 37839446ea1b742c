/* The tier-interface adapter of the Redis engine: maps the vtable of storage/tier.h onto
 * tqkv_redis_put/get/del/exists, turning namespace ids into names (see redis_tier.h) and the
 * engine's results into the tier's (hit 0, TQKV_TIER_MISS, negative errors). Each operation
 * carries its own small context so that nothing refers to the tier after it is destroyed. */
#include "redis_tier.h"
#include "redis_internal.h"
#include "tqkv_alloc.h"

#include <string.h>

typedef struct {
    tqkv_tier base; /* first: the store sees a tqkv_tier */
    tqkv_redis *r;
    tqkv_redis_ns_name_fn ns_name;
    void *ns_arg;
    uint64_t capacity;
} redis_tier;

typedef struct {
    tqkv_tier_done_cb cb;
    void *arg;
    tqkv_tier_dest_fn dest;
    void *dest_arg;
    size_t *out_len;
} op_ctx;

static const tqkv_tier_ops redis_tier_ops;

/* Writes the engine namespace of `ns_id` into buf (2 * TQKV_NS_NAME_MAX-ish + 2 bytes).
 * @return 0 or TQKV_ENONAMESPACE. */
static int ns_of(redis_tier *t, uint32_t ns_id, char *buf, size_t cap)
{
    static const char hex[] = "0123456789abcdef";
    const char *name = t->ns_name(t->ns_arg, ns_id);
    if (!name || !*name) return TQKV_ENONAMESPACE;
    size_t n = strlen(name);
    if (n < cap && tqkv__redis_name_ok(name, n, TQKV_REDIS_MAX_NS, 0) &&
        !(name[0] == 'x' && n > 1 && strspn(name + 1, hex) == n - 1)) {
        /* (A plain name that looks like our hex form is hex-encoded too, so the two never
         * collide.) */
        memcpy(buf, name, n + 1);
        return 0;
    }
    if (1 + 2 * n + 1 > cap || 1 + 2 * n > TQKV_REDIS_MAX_NS) return TQKV_ENONAMESPACE;
    buf[0] = 'x';
    for (size_t i = 0; i < n; i++) {
        buf[1 + 2 * i] = hex[(unsigned char)name[i] >> 4];
        buf[2 + 2 * i] = hex[(unsigned char)name[i] & 15];
    }
    buf[1 + 2 * n] = '\0';
    return 0;
}

static op_ctx *ctx_new(tqkv_tier_done_cb cb, void *arg)
{
    op_ctx *c = tqkv_calloc(1, sizeof(*c));
    if (c) {
        c->cb = cb;
        c->arg = arg;
    }
    return c;
}

static void info(tqkv_tier *tt, tqkv_tier_info *out)
{
    redis_tier *t = (redis_tier *)tt;
    tqkv_redis_stats st;
    tqkv_redis_get_stats(t->r, &st);
    memset(out, 0, sizeof(*out));
    out->capacity = t->capacity;
    out->errors = st.errors + st.timeouts + st.corrupt;
}

static int set_capacity(tqkv_tier *tt, uint64_t bytes)
{
    ((redis_tier *)tt)->capacity = bytes;
    return 0;
}

static void destroy(tqkv_tier *tt)
{
    redis_tier *t = (redis_tier *)tt;
    tqkv_redis_destroy(t->r);
    tqkv_free(t);
}

static void write_done(void *arg, int status)
{
    op_ctx *c = arg;
    c->cb(c->arg, status < 0 ? status : 0);
    tqkv_free(c);
}

static int tier_write(tqkv_tier *tt, uint32_t ns_id, const uint8_t key[TQKV_KEY_BYTES],
                      const void *data, size_t len, tqkv_tier_done_cb cb, void *arg)
{
    redis_tier *t = (redis_tier *)tt;
    char ns[TQKV_REDIS_MAX_NS + 1];
    int rc = ns_of(t, ns_id, ns, sizeof(ns));
    if (rc < 0) return rc;
    op_ctx *c = ctx_new(cb, arg);
    if (!c) return TQKV_ENOMEM;
    rc = tqkv_redis_put(t->r, ns, key, TQKV_KEY_BYTES, data, len, write_done, c);
    if (rc < 0) tqkv_free(c);
    return rc;
}

static void read_done(void *arg, int status, const void *data, size_t len)
{
    op_ctx *c = arg;
    if (status == 1) {
        void *buf = c->dest(c->dest_arg, len);
        if (!buf) {
            status = TQKV_ENOSPC;
        } else {
            memcpy(buf, data, len);
            *c->out_len = len;
            status = TQKV_TIER_HIT;
        }
    } else if (status == 0) {
        status = TQKV_TIER_MISS; /* absent, or dropped as corrupt (counted by the engine) */
    }
    c->cb(c->arg, status);
    tqkv_free(c);
}

static int tier_read(tqkv_tier *tt, uint32_t ns_id, const uint8_t key[TQKV_KEY_BYTES],
                     tqkv_tier_dest_fn dest, void *dest_arg, size_t *out_len, tqkv_tier_done_cb cb,
                     void *arg)
{
    redis_tier *t = (redis_tier *)tt;
    if (!dest || !out_len || !cb) return TQKV_EINVAL;
    char ns[TQKV_REDIS_MAX_NS + 1];
    int rc = ns_of(t, ns_id, ns, sizeof(ns));
    if (rc < 0) return rc;
    op_ctx *c = ctx_new(cb, arg);
    if (!c) return TQKV_ENOMEM;
    c->dest = dest;
    c->dest_arg = dest_arg;
    c->out_len = out_len;
    rc = tqkv_redis_get(t->r, ns, key, TQKV_KEY_BYTES, read_done, c);
    if (rc < 0) tqkv_free(c);
    return rc;
}

/* DEL and EXISTS answer 1 / 0: the tier's HIT / MISS. */
static void presence_done(void *arg, int status)
{
    op_ctx *c = arg;
    c->cb(c->arg, status < 0 ? status : status == 1 ? TQKV_TIER_HIT : TQKV_TIER_MISS);
    tqkv_free(c);
}

static int tier_remove(tqkv_tier *tt, uint32_t ns_id, const uint8_t key[TQKV_KEY_BYTES],
                       tqkv_tier_done_cb cb, void *arg)
{
    redis_tier *t = (redis_tier *)tt;
    char ns[TQKV_REDIS_MAX_NS + 1];
    int rc = ns_of(t, ns_id, ns, sizeof(ns));
    if (rc < 0) return rc;
    op_ctx *c = ctx_new(cb, arg);
    if (!c) return TQKV_ENOMEM;
    rc = tqkv_redis_del(t->r, ns, key, TQKV_KEY_BYTES, presence_done, c);
    if (rc < 0) tqkv_free(c);
    return rc;
}

static int tier_exists(tqkv_tier *tt, uint32_t ns_id, const uint8_t key[TQKV_KEY_BYTES],
                       tqkv_tier_done_cb cb, void *arg)
{
    redis_tier *t = (redis_tier *)tt;
    if (!cb) return TQKV_EAGAIN; /* remote: no answer without a round trip */
    char ns[TQKV_REDIS_MAX_NS + 1];
    int rc = ns_of(t, ns_id, ns, sizeof(ns));
    if (rc < 0) return rc;
    op_ctx *c = ctx_new(cb, arg);
    if (!c) return TQKV_ENOMEM;
    rc = tqkv_redis_exists(t->r, ns, key, TQKV_KEY_BYTES, presence_done, c);
    if (rc < 0) {
        tqkv_free(c);
        return rc;
    }
    return TQKV_TIER_PENDING;
}

static void clear_done(void *arg, int status)
{
    op_ctx *c = arg;
    c->cb(c->arg, status < 0 ? status : 0);
    tqkv_free(c);
}

static int tier_clear(tqkv_tier *tt, uint32_t ns_id, tqkv_tier_done_cb cb, void *arg)
{
    redis_tier *t = (redis_tier *)tt;
    char ns[TQKV_REDIS_MAX_NS + 1];
    if (ns_id != UINT32_MAX) {
        int rc = ns_of(t, ns_id, ns, sizeof(ns));
        if (rc < 0) return rc;
    }
    op_ctx *c = ctx_new(cb, arg);
    if (!c) return TQKV_ENOMEM;
    int rc = tqkv_redis_clear(t->r, ns_id == UINT32_MAX ? NULL : ns, clear_done, c);
    if (rc < 0) tqkv_free(c);
    return rc;
}

static const tqkv_tier_ops redis_tier_ops = {
    .name = "redis",
    .info = info,
    .set_capacity = set_capacity,
    .destroy = destroy,
    .write = tier_write,
    .read = tier_read,
    .remove = tier_remove,
    .exists = tier_exists,
    .clear = tier_clear,
};

int tqkv_redis_tier_create(tqkv_redis *r, tqkv_redis_ns_name_fn ns_name, void *ns_arg,
                           tqkv_tier **out)
{
    if (!r || !ns_name || !out) return TQKV_EINVAL;
    redis_tier *t = tqkv_calloc(1, sizeof(*t));
    if (!t) return TQKV_ENOMEM;
    t->base.ops = &redis_tier_ops;
    t->base.id = TQKV_TIER_REDIS;
    t->base.flags = TQKV_TIER_F_KEYED | TQKV_TIER_F_PERSISTENT | TQKV_TIER_F_SHARED;
    t->r = r;
    t->ns_name = ns_name;
    t->ns_arg = ns_arg;
    t->capacity = UINT64_MAX;
    *out = &t->base;
    return 0;
}

tqkv_redis *tqkv_redis_from_tier(tqkv_tier *t)
{
    if (!t || t->ops != &redis_tier_ops) return NULL;
    return ((redis_tier *)t)->r;
}
