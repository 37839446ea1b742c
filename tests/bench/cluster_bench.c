/* Cost of reading a block across nodes: two tqkvd daemons (A, B) sharing one redis-server, all
 * started here on loopback. Each row is one JSON object: the mean latency of single-key GETs
 * through B of blocks that are
 *   host   - in B's own host tier (the baseline, same run),
 *   peer   - only in A's host tier (B fetches them from A over TCP and keeps a copy),
 *   redis  - only in Redis (written through by A, evicted from A),
 * and of GETs of absent keys through B with peer fetch on and off (what a miss pays for asking
 * the peers). Usage: cluster_bench [N keys, default 200]. */
#include <time.h>

#include "redis_harness.h"
#include "test_client_util.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static const char *const NS = "bench-ns";

/* Mean seconds per single-key GET of keys[0..n); counts tiers seen into *tier_ok. */
static double get_each(tqkv_client *c, const tqkv_key *keys, int n, int want_tier, int *tier_ok)
{
    *tier_ok = 0;
    double t0 = now_s();
    for (int i = 0; i < n; i++) {
        tqkv_get_item gi;
        memset(&gi, 0, sizeof(gi));
        if (tqkv_get(c, NS, &keys[i], 1, NULL, &gi) == 0 && gi.tier == want_tier)
            (*tier_ok)++;
        tqkv_get_items_release(&gi, 1);
    }
    return (now_s() - t0) / n;
}

static void row(const char *what, double s, int n, int ok, size_t block)
{
    printf("{\"bench\":\"cluster_get\",\"case\":\"%s\",\"keys\":%d,\"as_expected\":%d,"
           "\"block_bytes\":%zu,\"mean_us\":%.1f}\n",
           what, n, ok, block, s * 1e6);
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 200;
    if (n < 1 || n > 100000)
        n = 200;
    tqkv_test_redis rs;
    if (!tqkv_test_redis_available() || tqkv_test_redis_start(&rs, NULL) != 0) {
        fprintf(stderr, "redis-server not available\n");
        return 1;
    }
    char addr[32];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", rs.port);
    const char *aa[] = {"--redis", addr, "--node-id", "bench-a", "--redis-write", "back",
                        "--host-capacity", "1G", NULL};
    const char *ab[] = {"--redis", addr, "--node-id", "bench-b", "--redis-write", "back",
                        "--host-capacity", "1G", NULL};
    tqkvd_harness ha, hb;
    int rc = 1;
    if (tc_start(&ha, aa) != 0)
        goto out_r;
    if (tc_start(&hb, ab) != 0)
        goto out_a;
    tqkv_client *ca = tc_connect(ha.unix_url, NULL), *cb = tc_connect(hb.unix_url, NULL);
    tc_geom g = tc_geom_small("tq4");
    tqkv_key *keys = calloc((size_t)n * 4, sizeof(*keys));
    if (!ca || !cb || !keys || tc_register(ca, NS, &g) || tc_register(cb, NS, &g))
        goto out;
    /* wait for both members to see each other (a guard, at most 10 s) */
    for (int i = 0; i < 200; i++) {
        tqkv_kv_list l;
        int m = 0;
        if (tqkv_cluster(cb, &l) == 0) {
            const char *v = tqkv_kv_list_get(&l, "members");
            m = v ? atoi(v) : 0;
            tqkv_kv_list_free(&l);
        }
        if (m == 2)
            break;
        struct timespec ts = {0, 50000000};
        nanosleep(&ts, NULL);
    }
    uint16_t *raw = tc_make_raw(&g, g.tokens, 1);
    size_t rl = tc_raw_len(&g, g.tokens);
    /* keys [0,n): on B; [n,2n): only on A; [2n,3n): only in Redis; [3n,4n): nowhere */
    for (int i = 0; i < 4 * n; i++)
        keys[i] = tc_key((uint32_t)i, 77);
    tqkv_put_item it = {.data = raw, .len = rl, .n_tokens = g.tokens};
    /* Redis keys: written through by A, then A's host tier is emptied (admin EVICT) */
    tqkv_config_set(ca, "redis_write", "through");
    for (int i = 0; i < n; i++) {
        it.key = keys[2 * n + i];
        tqkv_put_raw(ca, NS, &it, 1, NULL);
    }
    tqkv_config_set(ca, "redis_write", "back");
    uint64_t freed = 0;
    tqkv_evict(ca, NULL, UINT64_MAX / 2, &freed);
    /* peer keys: in A's host tier only (write-back: Redis sees them only on eviction) */
    for (int i = 0; i < n; i++) {
        it.key = keys[i];
        tqkv_put_raw(cb, NS, &it, 1, NULL);
        it.key = keys[n + i];
        tqkv_put_raw(ca, NS, &it, 1, NULL);
    }
    size_t block = 0;
    {
        tqkv_get_item gi;
        memset(&gi, 0, sizeof(gi));
        if (tqkv_get(cb, NS, &keys[0], 1, NULL, &gi) == 0)
            block = gi.len;
        tqkv_get_items_release(&gi, 1);
    }
    int ok;
    double t = get_each(cb, keys, n, TQKV_TIER_HOST, &ok);
    row("host", t, n, ok, block);
    t = get_each(cb, keys + n, n, TQKV_TIER_PEER, &ok);
    row("peer", t, n, ok, block);
    t = get_each(cb, keys + 2 * n, n, TQKV_TIER_REDIS, &ok);
    row("redis", t, n, ok, block);
    t = get_each(cb, keys + 3 * n, n, TQKV_TIER_NONE, &ok);
    row("miss_peer_fetch_on", t, n, ok, block);
    tqkv_config_set(cb, "peer_fetch", "false");
    t = get_each(cb, keys + 3 * n, n, TQKV_TIER_NONE, &ok);
    row("miss_peer_fetch_off", t, n, ok, block);
    free(raw);
    rc = 0;
out:
    free(keys);
    tqkv_close(ca);
    tqkv_close(cb);
    tqkvd_harness_stop(&hb);
out_a:
    tqkvd_harness_stop(&ha);
out_r:
    tqkv_test_redis_stop(&rs);
    return rc;
}
