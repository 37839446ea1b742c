/* The Redis tier under the store (storage/tiers.h), two stores standing for two daemons that
 * share one redis-server: store A's host evictions are demoted to Redis; store B, whose host tier
 * is empty and whose namespace ids differ, finds those blocks in Redis by namespace name and
 * promotes them. */
#include "redis_harness.h"
#include "redis_tier.h"
#include "tiers.h"
#include "tqkv_test.h"

#include <signal.h>

#define NBLOCKS 40
#define BLOCK 100000

static uv_loop_t loop;

static void fill(uint32_t i, uint8_t *out)
{
    uint64_t x = 0x9e3779b97f4a7c15ull * (i + 1);
    for (size_t k = 0; k < BLOCK; k++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out[k] = (uint8_t)x;
    }
}

static void key_of(uint32_t i, uint8_t key[TQKV_KEY_BYTES])
{
    memset(key, 0, TQKV_KEY_BYTES);
    memcpy(key, &i, sizeof(i));
    key[31] = 0x7e;
}

/* The daemon's side of the adapter: namespace id -> name, through the store. */
typedef struct {
    uint32_t id;
    const char *name;
} ns_find;

static void find_one(void *arg, tqkv_ns *ns)
{
    ns_find *f = arg;
    if (tqkv_ns_get_id(ns) == f->id) f->name = tqkv_ns_get_desc(ns)->name;
}

static const char *ns_name(void *arg, uint32_t id)
{
    ns_find f = {id, NULL};
    tqkv_store_ns_foreach(arg, find_one, &f);
    return f.name;
}

static int register_ns(tqkv_store *s, const char *name, tqkv_ns **ns)
{
    tqkv_ns_desc d;
    memset(&d, 0, sizeof(d));
    snprintf(d.name, sizeof(d.name), "%s", name);
    d.n_layers = 2;
    d.n_kv_heads = 2;
    d.head_dim = 128;
    d.chunk_size = 256;
    snprintf(d.preset, sizeof(d.preset), "tq4");
    return tqkv_store_ns_register(s, &d, ns, NULL);
}

static int open_store(int port, uint64_t host_bytes, tqkv_store **s)
{
    tqkv_store_config c = {0};
    c.host_capacity = host_bytes;
    c.host_max_capacity = host_bytes;
    c.host_page_size = 64u << 10;
    int rc = tqkv_store_create(&c, s);
    if (rc != 0) return rc;
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
    const char *nodes[1] = {addr};
    tqkv_redis_config cfg;
    tqkv_redis_config_default(&cfg);
    cfg.nodes = nodes;
    cfg.n_nodes = 1;
    tqkv_redis *r = NULL;
    tqkv_tier *t = NULL;
    if ((rc = tqkv_redis_create(&loop, &cfg, &r)) != 0) return rc;
    if ((rc = tqkv_redis_tier_create(r, ns_name, *s, &t)) != 0) {
        tqkv_redis_destroy(r);
        return rc;
    }
    if ((rc = tqkv_store_attach_tier(*s, t)) != 0) t->ops->destroy(t);
    return rc;
}

typedef struct {
    int done, status;
    tqkv_store_ref *ref;
    tqkv_tier_id tier;
} get_t;

static void on_get(void *arg, int status, tqkv_store_ref *ref, tqkv_tier_id tier)
{
    get_t *g = arg;
    g->done = 1;
    g->status = status;
    g->ref = ref;
    g->tier = tier;
}

static void shared_body(tqkv_test_redis *srv, tqkv_store **sa, tqkv_store **sb, uint8_t *buf)
{
    tqkv_ns *ns_a = NULL, *ns_b = NULL, *other = NULL;
    ASSERT_OK(open_store(srv->port, 1u << 20, sa));
    ASSERT_OK(register_ns(*sa, "model-x", &ns_a));
    /* 40 blocks of 100 KB through a 1 MiB host tier: most are demoted to Redis. */
    for (uint32_t i = 0; i < NBLOCKS; i++) {
        uint8_t key[TQKV_KEY_BYTES];
        key_of(i, key);
        tqkv_store_put *p = NULL;
        void *dst = NULL;
        int r;
        while ((r = tqkv_store_put_reserve(*sa, ns_a, key, BLOCK, &p, &dst)) == TQKV_EAGAIN)
            uv_run(&loop, UV_RUN_ONCE); /* demotions in flight free the space */
        ASSERT_OK(r);
        fill(i, dst);
        ASSERT_OK(tqkv_store_put_commit(*sa, p, BLOCK));
    }
    tqkv_store_stats st;
    for (int t = 0; t < 2000; t++) { /* let the demotions complete */
        tqkv_store_get_stats(*sa, &st);
        const tqkv_tier_stats *h = &st.tiers[TQKV_TIER_HOST];
        if (h->demotions + h->drops >= h->evictions) break;
        tqkv_test_loop_for(&loop, 5);
    }
    ASSERT_TRUE(st.tiers[TQKV_TIER_HOST].demotions >= NBLOCKS - 10);
    ASSERT_EQ_U64(st.tiers[TQKV_TIER_HOST].drops, 0);

    /* Store B: another namespace registered first, so "model-x" gets another id there; its host
     * tier holds every block, so promotions never wait on evictions. */
    ASSERT_OK(open_store(srv->port, 8u << 20, sb));
    ASSERT_OK(register_ns(*sb, "unrelated", &other));
    ASSERT_OK(register_ns(*sb, "model-x", &ns_b));
    ASSERT_NE_INT(tqkv_ns_get_id(ns_a), tqkv_ns_get_id(ns_b));
    /* A evicted its least recently used blocks first: 0 .. demoted-1 are in Redis, the rest only
     * in A's host tier (a miss for B). */
    uint64_t demoted = st.tiers[TQKV_TIER_HOST].demotions;
    for (uint32_t i = 0; i < NBLOCKS; i++) {
        uint8_t key[TQKV_KEY_BYTES];
        key_of(i, key);
        get_t g = {0};
        tqkv_store_ref *ref = NULL;
        int r = tqkv_store_get(*sb, ns_b, key, &ref, on_get, &g);
        ASSERT_EQ_INT(r, TQKV_STORE_PENDING); /* B's host tier is empty: Redis is asked */
        while (!g.done)
            uv_run(&loop, UV_RUN_ONCE);
        if (i >= demoted) {
            ASSERT_EQ_INT(g.status, TQKV_STORE_MISS);
            continue;
        }
        ASSERT_EQ_INT(g.status, TQKV_STORE_HIT);
        ASSERT_EQ_INT(g.tier, TQKV_TIER_REDIS);
        fill(i, buf);
        ASSERT_EQ_U64(tqkv_store_ref_len(g.ref), BLOCK);
        ASSERT_MEM_EQ(tqkv_store_ref_data(g.ref), buf, BLOCK);
        tqkv_store_ref_release(*sb, g.ref);
    }
    tqkv_store_get_stats(*sb, &st);
    ASSERT_EQ_U64(st.tiers[TQKV_TIER_REDIS].hits, demoted);
    /* In "unrelated", the same keys are misses. */
    uint8_t key[TQKV_KEY_BYTES];
    key_of(0, key);
    get_t g = {0};
    tqkv_store_ref *ref = NULL;
    int r = tqkv_store_get(*sb, other, key, &ref, on_get, &g);
    if (r == TQKV_STORE_PENDING) {
        while (!g.done)
            uv_run(&loop, UV_RUN_ONCE);
        r = g.status;
    }
    ASSERT_EQ_INT(r, TQKV_STORE_MISS);
}

static void test_shared_across_stores(void)
{
    if (!tqkv_test_redis_available()) TEST_SKIP("redis-server not installed");
    tqkv_test_redis srv;
    ASSERT_TRUE(tqkv_test_redis_start(&srv, NULL) == 0);
    uint8_t *buf = malloc(BLOCK);
    tqkv_store *sa = NULL, *sb = NULL;
    shared_body(&srv, &sa, &sb, buf);
    tqkv_store_destroy(sa);
    tqkv_store_destroy(sb);
    tqkv_test_loop_for(&loop, 5);
    free(buf);
    tqkv_test_redis_stop(&srv);
}

static const tqkv_test_case cases[] = {
    {"shared_across_stores", test_shared_across_stores},
    {NULL, NULL},
};

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    uv_loop_init(&loop);
    int rc = tqkv_test_main(argc, argv, cases);
    uv_run(&loop, UV_RUN_NOWAIT);
    uv_loop_close(&loop);
    return rc;
}
