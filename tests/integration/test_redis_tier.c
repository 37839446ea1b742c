/* Integration tests of the Redis engine behind the tier interface (storage/tier.h), against a
 * real redis-server started here: write / read / exists / remove through the vtable, results
 * mapped to HIT / MISS, namespace ids resolved to names (hex-encoded when not key-safe), the
 * destination callback refusing a buffer, and destroy with operations in flight. */
#include "redis_harness.h"
#include "redis_tier.h"
#include "tqkv_log.h"
#include "tqkv_test.h"

#include <signal.h>

static uv_loop_t loop;
static int pending;
static tqkv_test_redis server;

static const char *ns_name(void *arg, uint32_t id)
{
    switch (id) {
    case 1:
        return "llama-3-8b";
    case 2:
        return "name with spaces {x}";
    default:
        return NULL;
    }
}

typedef struct {
    int status, called;
} res;

static void done(void *arg, int status)
{
    res *r = arg;
    r->status = status;
    r->called++;
    pending--;
}

static int wait_res(int rc, res *r)
{
    if (rc < 0) return rc;
    pending++;
    if (tqkv_test_loop_wait(&loop, &pending, 20) < 0) return -10000;
    return r->status;
}

static uint8_t dest_buf[1 << 16];
static size_t dest_asked;
static void *dest_ok(void *arg, size_t len)
{
    dest_asked = len;
    return len <= sizeof(dest_buf) ? dest_buf : NULL;
}
static void *dest_none(void *arg, size_t len)
{
    return NULL;
}

static tqkv_tier *make_tier(void)
{
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", server.port);
    const char *nodes[1] = {addr};
    tqkv_redis_config cfg;
    tqkv_redis_config_default(&cfg);
    cfg.nodes = nodes;
    cfg.n_nodes = 1;
    tqkv_redis *r = NULL;
    tqkv_tier *t = NULL;
    if (tqkv_redis_create(&loop, &cfg, &r) < 0) return NULL;
    if (tqkv_redis_tier_create(r, ns_name, NULL, &t) < 0) {
        tqkv_redis_destroy(r);
        return NULL;
    }
    return t;
}

static void test_vtable(void)
{
    if (!tqkv_test_redis_available()) TEST_SKIP("redis-server not installed");
    ASSERT_TRUE(tqkv_test_redis_start(&server, NULL) == 0);
    tqkv_tier *t = make_tier();
    ASSERT_TRUE(t != NULL);
    ASSERT_EQ_INT(t->id, TQKV_TIER_REDIS);
    ASSERT_TRUE(t->flags & TQKV_TIER_F_KEYED);
    ASSERT_TRUE(t->flags & TQKV_TIER_F_SHARED);
    ASSERT_TRUE(tqkv_redis_from_tier(t) != NULL);

    uint8_t key[TQKV_KEY_BYTES] = {0xde, 0xad}, block[5000];
    for (size_t i = 0; i < sizeof(block); i++)
        block[i] = (uint8_t)(i * 13);
    res r = {0};
    size_t out_len = 0;
    ASSERT_EQ_INT(wait_res(t->ops->write(t, 1, key, block, sizeof(block), done, &r), &r), 0);
    ASSERT_EQ_INT(wait_res(t->ops->read(t, 1, key, dest_ok, NULL, &out_len, done, &r), &r),
                  TQKV_TIER_HIT);
    ASSERT_EQ_U64(out_len, sizeof(block));
    ASSERT_EQ_U64(dest_asked, sizeof(block));
    ASSERT_MEM_EQ(dest_buf, block, sizeof(block));
    /* No destination: the read fails, nothing is copied. */
    ASSERT_EQ_INT(wait_res(t->ops->read(t, 1, key, dest_none, NULL, &out_len, done, &r), &r),
                  TQKV_ENOSPC);
    /* exists: asynchronous; with no callback it cannot answer. */
    r.called = 0;
    ASSERT_EQ_INT(t->ops->exists(t, 1, key, done, &r), TQKV_TIER_PENDING);
    pending++;
    ASSERT_OK(tqkv_test_loop_wait(&loop, &pending, 20));
    ASSERT_EQ_INT(r.status, TQKV_TIER_HIT);
    ASSERT_EQ_INT(r.called, 1);
    ASSERT_ERR(t->ops->exists(t, 1, key, NULL, NULL), TQKV_EAGAIN);
    /* Same key in another namespace: a miss. Its name is not key-safe: stored hex-encoded. */
    ASSERT_EQ_INT(wait_res(t->ops->read(t, 2, key, dest_ok, NULL, &out_len, done, &r), &r),
                  TQKV_TIER_MISS);
    ASSERT_EQ_INT(wait_res(t->ops->write(t, 2, key, "abc", 3, done, &r), &r), 0);
    char rkey[512];
    ASSERT_TRUE(tqkv_redis_block_key("tqkv", "x6e616d65207769746820737061636573207b787d", key, 32,
                                     rkey, sizeof(rkey)) > 0);
    redisReply *rep = tqkv_test_redis_cmd(server.port, NULL, "EXISTS %s", rkey);
    ASSERT_TRUE(rep && rep->type == REDIS_REPLY_INTEGER && rep->integer == 1);
    freeReplyObject(rep);
    ASSERT_EQ_INT(wait_res(t->ops->read(t, 2, key, dest_ok, NULL, &out_len, done, &r), &r),
                  TQKV_TIER_HIT);
    ASSERT_EQ_U64(out_len, 3);
    /* Unknown namespace id: refused at once. */
    ASSERT_ERR(t->ops->write(t, 9, key, "abc", 3, done, &r), TQKV_ENONAMESPACE);
    /* remove. */
    ASSERT_EQ_INT(wait_res(t->ops->remove(t, 1, key, done, &r), &r), TQKV_TIER_HIT);
    ASSERT_EQ_INT(wait_res(t->ops->remove(t, 1, key, done, &r), &r), TQKV_TIER_MISS);
    ASSERT_EQ_INT(wait_res(t->ops->read(t, 1, key, dest_ok, NULL, &out_len, done, &r), &r),
                  TQKV_TIER_MISS);
    /* clear one namespace, then all. */
    ASSERT_EQ_INT(wait_res(t->ops->write(t, 1, key, "abc", 3, done, &r), &r), 0);
    ASSERT_EQ_INT(wait_res(t->ops->clear(t, 2, done, &r), &r), 0);
    ASSERT_EQ_INT(wait_res(t->ops->read(t, 2, key, dest_ok, NULL, &out_len, done, &r), &r),
                  TQKV_TIER_MISS);
    ASSERT_EQ_INT(wait_res(t->ops->read(t, 1, key, dest_ok, NULL, &out_len, done, &r), &r),
                  TQKV_TIER_HIT);
    ASSERT_EQ_INT(wait_res(t->ops->clear(t, UINT32_MAX, done, &r), &r), 0);
    ASSERT_EQ_INT(wait_res(t->ops->read(t, 1, key, dest_ok, NULL, &out_len, done, &r), &r),
                  TQKV_TIER_MISS);
    tqkv_tier_info info;
    t->ops->info(t, &info);
    ASSERT_EQ_U64(info.errors, 0); /* a refused destination is not an engine failure */
    ASSERT_OK(t->ops->set_capacity(t, 1 << 30));
    t->ops->info(t, &info);
    ASSERT_EQ_U64(info.capacity, 1 << 30);

    /* Destroy with writes in flight: each completes once, canceled. */
    res w[8];
    memset(w, 0, sizeof(w));
    for (int i = 0; i < 8; i++) {
        key[2] = (uint8_t)i;
        ASSERT_OK(t->ops->write(t, 1, key, block, sizeof(block), done, &w[i]));
        pending++;
    }
    t->ops->destroy(t);
    for (int i = 0; i < 8; i++) {
        ASSERT_EQ_INT(w[i].called, 1);
        ASSERT_EQ_INT(w[i].status, TQKV_ECANCELED);
    }
    ASSERT_EQ_INT(pending, 0);
    tqkv_test_loop_for(&loop, 5);
}

static const tqkv_test_case cases[] = {
    {"vtable", test_vtable},
    {NULL, NULL},
};

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    uv_loop_init(&loop);
    int rc = tqkv_test_main(argc, argv, cases);
    tqkv_test_redis_stop(&server);
    uv_run(&loop, UV_RUN_NOWAIT);
    uv_loop_close(&loop);
    return rc;
}
