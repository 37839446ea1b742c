/* Integration tests of tqkvd with a Redis tier (a real redis-server started by the test; skipped
 * when redis-server is not installed): a block written to Redis (async write at PUT) is served
 * from Redis once evicted from host memory, by this daemon and by a second daemon sharing the
 * Redis; with redis-server killed during a load the daemon does not crash, PUTs and host hits go
 * on, Redis-only blocks are misses; once redis-server is back the tier recovers by itself. */
#include "redis_harness.h"
#include "test_tiers_util.h"
#include "tqkv_test.h"

static tc_geom geom;
static tqkv_test_redis rs;
static char redis_addr[64];

/* The Redis timeout is generous: nothing here waits for one (a killed server refuses at once),
 * and a sanitizer build of the daemon on a loaded machine can be silent for far more than 200 ms,
 * which failed async writes and GETs the test expects to succeed. */
static int start(tqkvd_harness *h)
{
    const char *args[] = {"--redis", redis_addr, "--redis-timeout-ms", "3000", "--host-capacity",
                          "64M", "--encode-device", "cpu", NULL};
    return tc_start(h, args);
}

static const char *stat_str(tqkv_client *c, const char *name, char *out, size_t len)
{
    tqkv_kv_list l;
    out[0] = 0;
    if (tqkv_stats(c, NULL, &l) == 0) {
        const char *v = tqkv_kv_list_get(&l, name);
        snprintf(out, len, "%s", v ? v : "");
        tqkv_kv_list_free(&l);
    }
    return out;
}

/* Waits (at most max_ms: a guard against hanging, not a timing assertion) until the stat
 * `name` reaches `want`. @return 0 or -1. */
static int wait_stat(tqkv_client *c, const char *name, uint64_t want, int max_ms)
{
    for (int t = 0; t < max_ms; t += 10) {
        if (tc_stat(c, NULL, name) >= want)
            return 0;
        usleep(10000);
    }
    return -1;
}

static int wait_state(tqkv_client *c, const char *state, int max_ms)
{
    char v[32];
    for (int t = 0; t < max_ms; t += 20) {
        if (!strcmp(stat_str(c, "tier.redis.state", v, sizeof v), state))
            return 0;
        usleep(20000);
    }
    return -1;
}

static int evict_all(tqkv_client *c)
{
    uint64_t freed = 0;
    return tqkv_evict(c, NULL, 1ull << 40, &freed);
}

static void test_shared_roundtrip(void)
{
    tqkvd_harness a, b;
    ASSERT_OK(start(&a));
    tqkv_client *ca = tc_connect(a.unix_url, NULL);
    ASSERT_TRUE(ca);
    ASSERT_OK(wait_state(ca, "up", 10000));
    ASSERT_OK(tc_register(ca, "shared", &geom));
    for (uint32_t i = 0; i < 8; i++)
        ASSERT_OK(tt_put(ca, "shared", &geom, i, 5));
    /* every async write acknowledged: the bytes Redis took equal the blocks' bytes */
    ASSERT_OK(wait_stat(ca, "tier.redis.bytes_in", tc_stat(ca, NULL, "bytes"), 10000));
    ASSERT_EQ_U64(tc_stat(ca, NULL, "tier.redis.errors"), 0);
    ASSERT_OK(evict_all(ca));
    ASSERT_EQ_INT(tt_where(ca, "shared", 0, 5), TQKV_TIER_REDIS);
    uint8_t tier = 0;
    ASSERT_EQ_INT(tt_get(ca, "shared", &geom, 0, 5, &tier), 1);
    ASSERT_EQ_INT(tier, TQKV_TIER_REDIS);
    ASSERT_EQ_INT(tt_where(ca, "shared", 0, 5), TQKV_TIER_HOST); /* promoted */

    /* a second daemon on the same Redis serves what the first one put */
    ASSERT_OK(start(&b));
    tqkv_client *cb = tc_connect(b.unix_url, NULL);
    ASSERT_TRUE(cb);
    ASSERT_OK(wait_state(cb, "up", 10000));
    ASSERT_OK(tc_register(cb, "shared", &geom));
    for (uint32_t i = 0; i < 8; i++) {
        ASSERT_EQ_INT(tt_get(cb, "shared", &geom, i, 5, &tier), 1);
        ASSERT_EQ_INT(tier, TQKV_TIER_REDIS);
    }
    tqkv_close(cb);
    ASSERT_EQ_INT(tqkvd_harness_stop(&b), 0);
    tqkv_close(ca);
    ASSERT_EQ_INT(tqkvd_harness_stop(&a), 0);
}

static void test_redis_outage(void)
{
    tqkvd_harness h;
    ASSERT_OK(start(&h));
    tqkv_client *c = tc_connect(h.unix_url, NULL);
    ASSERT_TRUE(c);
    ASSERT_OK(wait_state(c, "up", 10000));
    ASSERT_OK(tc_register(c, "out", &geom));
    ASSERT_OK(tt_put(c, "out", &geom, 0, 6));
    ASSERT_OK(wait_stat(c, "tier.redis.bytes_in", 1, 10000));
    ASSERT_OK(evict_all(c)); /* block 0 is now in Redis only */

    /* Redis goes away in the middle of a load */
    for (uint32_t i = 1; i < 40; i++) {
        if (i == 10)
            tqkv_test_redis_kill(&rs);
        ASSERT_OK(tt_put(c, "out", &geom, i, 6)); /* PUTs go on (async writes fail, counted) */
        ASSERT_EQ_INT(tt_get(c, "out", &geom, i, 6, NULL), 1); /* host hits go on */
    }
    ASSERT_TRUE(tqkvd_harness_alive(&h));
    ASSERT_OK(wait_state(c, "down", 10000));
    ASSERT_EQ_INT(tt_get(c, "out", &geom, 0, 6, NULL), 0); /* Redis-only: a miss, not a hang */
    ASSERT_TRUE(tc_stat(c, NULL, "tier.redis.errors") > 0);
    for (uint32_t i = 1; i < 40; i++)
        ASSERT_EQ_INT(tt_get(c, "out", &geom, i, 6, NULL), 1);

    /* back: the tier reconnects by itself and serves again */
    ASSERT_EQ_INT(tqkv_test_redis_restart(&rs), 0);
    ASSERT_OK(wait_state(c, "up", 15000));
    uint64_t in = tc_stat(c, NULL, "tier.redis.bytes_in");
    ASSERT_OK(tt_put(c, "out", &geom, 100, 6));
    ASSERT_OK(wait_stat(c, "tier.redis.bytes_in", in + 1, 10000));
    ASSERT_OK(evict_all(c));
    uint8_t tier = 0;
    ASSERT_EQ_INT(tt_get(c, "out", &geom, 100, 6, &tier), 1);
    ASSERT_EQ_INT(tier, TQKV_TIER_REDIS);
    tqkv_close(c);
    ASSERT_TRUE(tqkvd_harness_alive(&h));
    ASSERT_EQ_INT(tqkvd_harness_stop(&h), 0);
}

static const tqkv_test_case cases[] = {
    {"shared_roundtrip", test_shared_roundtrip},
    {"redis_outage", test_redis_outage},
    {NULL, NULL},
};

int main(int argc, char **argv)
{
    if (!tqkv_test_redis_available()) {
        fprintf(stderr, "redis-server not available: skipped\n");
        return 77;
    }
    geom = tc_geom_small("fp16");
    geom.tokens = 8;
    if (tqkv_test_redis_start(&rs, NULL) != 0)
        return 1;
    snprintf(redis_addr, sizeof redis_addr, "127.0.0.1:%d", rs.port);
    int rc = tqkv_test_main(argc, argv, cases);
    tqkv_test_redis_stop(&rs);
    return rc;
}
