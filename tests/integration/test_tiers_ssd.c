/* Integration tests of tqkvd with an SSD tier: blocks acknowledged by PUT survive kill -9 and are
 * served byte-identical by the restarted daemon (namespaces keep their ids, whatever order they
 * are registered in after the restart); a record damaged on disk, found at start-up or when read,
 * is a miss and a counter in STATS, never served; and the tier policy under a capacity squeeze:
 * write-back demotes evicted blocks to the SSD, write-through makes eviction free the host copy at
 * once, a GET promotes, LOOKUP reports each key's tier, pins keep blocks in host memory. */
#include "test_tiers_util.h"
#include "tqkv_test.h"

static tc_geom geom;
static char ssd_dir[64];
static char dirs[8][64]; /* every test's data directory, removed at exit */
static int n_dirs;

/* A fresh SSD data directory for the test that calls it. @return 0 or -1. */
static int fresh_dir(void)
{
    if (n_dirs == 8 || tt_mkdir(dirs[n_dirs], sizeof dirs[0]))
        return -1;
    snprintf(ssd_dir, sizeof ssd_dir, "%s", dirs[n_dirs++]);
    return 0;
}

/* Starts a daemon on ssd_dir with the extra flags `more` (NULL-terminated, may be NULL). */
static int start(tqkvd_harness *h, const char *host_cap, const char *const *more)
{
    const char *args[24] = {"--ssd-dir", ssd_dir, "--ssd-capacity", "64M", "--host-capacity",
                            host_cap, "--encode-device", "cpu", NULL};
    size_t n = 8;
    for (size_t i = 0; more && more[i] && n < 22; i++)
        args[n++] = more[i];
    args[n] = NULL;
    return tc_start(h, args);
}

#define N_RESTART 48

static void test_kill9_restart(void)
{
    tqkvd_harness h;
    ASSERT_OK(fresh_dir());
    ASSERT_OK(start(&h, "64M", NULL));
    tqkv_client *c = tc_connect(h.unix_url, NULL);
    ASSERT_TRUE(c);
    ASSERT_OK(tc_register(c, "other", &geom)); /* id 1 */
    ASSERT_OK(tc_register(c, "kv", &geom));    /* id 2 */
    for (uint32_t i = 0; i < N_RESTART; i++)
        ASSERT_OK(tt_put(c, "kv", &geom, i, 1));
    ASSERT_EQ_U64(tc_stat(c, NULL, "tier.ssd.entries"), N_RESTART);
    tqkv_close(c);
    tt_kill9(&h);

    ASSERT_OK(start(&h, "64M", NULL));
    c = tc_connect(h.unix_url, NULL);
    ASSERT_TRUE(c);
    ASSERT_EQ_U64(tc_stat(c, NULL, "tier.ssd.recovered"), N_RESTART);
    ASSERT_EQ_U64(tc_stat(c, NULL, "namespaces"), 2); /* restored from the registry */
    /* registered again in the other order: same namespaces, same ids */
    ASSERT_OK(tc_register(c, "kv", &geom));
    ASSERT_OK(tc_register(c, "other", &geom));
    ASSERT_EQ_INT(tt_where(c, "kv", 0, 1), TQKV_TIER_SSD);
    ASSERT_EQ_INT(tt_where(c, "other", 0, 1), TQKV_TIER_NONE);
    for (uint32_t i = 0; i < N_RESTART; i++) {
        uint8_t tier = 0;
        ASSERT_EQ_INT(tt_get(c, "kv", &geom, i, 1, &tier), 1);
        ASSERT_EQ_INT(tier, TQKV_TIER_SSD);
    }
    /* promoted: host hits now */
    ASSERT_EQ_INT(tt_where(c, "kv", 3, 1), TQKV_TIER_HOST);
    uint8_t tier = 0;
    ASSERT_EQ_INT(tt_get(c, "kv", &geom, 3, 1, &tier), 1);
    ASSERT_EQ_INT(tier, TQKV_TIER_HOST);
    ASSERT_EQ_U64(tc_stat(c, NULL, "tier.host.promotions"), N_RESTART);
    ASSERT_EQ_U64(tc_stat(c, NULL, "tier.ssd.hits"), N_RESTART + 1); /* GETs + the LOOKUP */
    /* a namespace registered with another description is refused, not confused */
    tc_geom g2 = geom;
    g2.n_layers = 2;
    ASSERT_ERR(tc_register(c, "kv", &g2), TQKV_ENSCONFLICT);
    tqkv_close(c);
    ASSERT_EQ_INT(tqkvd_harness_stop(&h), 0);
}

static void test_corrupt_record(void)
{
    tqkvd_harness h;
    ASSERT_OK(fresh_dir());
    char file[512];
    long off = 0;
    /* at start-up: a damaged record in the middle of a segment is dropped by the scan */
    ASSERT_OK(start(&h, "64M", NULL));
    tqkv_client *c = tc_connect(h.unix_url, NULL);
    ASSERT_TRUE(c);
    ASSERT_OK(tc_register(c, "cor", &geom));
    for (uint32_t i = 0; i < 8; i++)
        ASSERT_OK(tt_put(c, "cor", &geom, i, 2));
    tqkv_close(c);
    ASSERT_EQ_INT(tqkvd_harness_stop(&h), 0);
    ASSERT_OK(tt_find_record(ssd_dir, 2, 2, file, sizeof file, &off));
    ASSERT_OK(tt_flip(file, off + 80 + 100)); /* a payload byte */
    ASSERT_OK(start(&h, "64M", NULL));
    c = tc_connect(h.unix_url, NULL);
    ASSERT_TRUE(c);
    ASSERT_TRUE(tc_stat(c, NULL, "tier.ssd.corrupt") >= 1);
    for (uint32_t i = 0; i < 8; i++)
        ASSERT_EQ_INT(tt_get(c, "cor", &geom, i, 2, NULL), i == 2 ? 0 : 1);

    /* when read: evict everything from host memory, damage a record under the running daemon */
    uint64_t freed = 0;
    ASSERT_OK(tqkv_evict(c, NULL, 1ull << 40, &freed));
    ASSERT_EQ_U64(tc_stat(c, NULL, "tier.host.entries"), 0);
    ASSERT_EQ_INT(tt_where(c, "cor", 5, 2), TQKV_TIER_SSD);
    uint64_t before = tc_stat(c, NULL, "tier.ssd.corrupt");
    ASSERT_OK(tt_find_record(ssd_dir, 5, 2, file, sizeof file, &off));
    ASSERT_OK(tt_flip(file, off + 80 + 7));
    ASSERT_EQ_INT(tt_get(c, "cor", &geom, 5, 2, NULL), 0); /* a miss, not corrupt bytes */
    ASSERT_EQ_U64(tc_stat(c, NULL, "tier.ssd.corrupt"), before + 1);
    ASSERT_EQ_INT(tt_where(c, "cor", 5, 2), TQKV_TIER_NONE); /* dropped from the index */
    ASSERT_EQ_INT(tt_get(c, "cor", &geom, 6, 2, NULL), 1);  /* the others still are served */
    /* a new PUT of the damaged key stores it again */
    ASSERT_OK(tt_put(c, "cor", &geom, 5, 2));
    ASSERT_EQ_INT(tt_get(c, "cor", &geom, 5, 2, NULL), 1);
    tqkv_close(c);
    ASSERT_EQ_INT(tqkvd_harness_stop(&h), 0);
}

/* Host memory of 1 MiB holds `fit` blocks; write `n` > fit blocks and see where they go. */
static void test_squeeze_write_back(void)
{
    tqkvd_harness h;
    ASSERT_OK(fresh_dir());
    static const char *const back[] = {"--ssd-write", "back", NULL};
    ASSERT_OK(start(&h, "1M", back));
    tqkv_client *c = tc_connect(h.unix_url, NULL);
    ASSERT_TRUE(c);
    ASSERT_OK(tc_register(c, "wb", &geom));
    ASSERT_OK(tt_put(c, "wb", &geom, 0, 3));
    const uint64_t per_block = tc_stat(c, NULL, "tier.host.used");
    const uint64_t cap = tc_stat(c, NULL, "tier.host.capacity");
    ASSERT_TRUE(per_block > 0);
    const uint32_t fit = (uint32_t)(cap / per_block);
    ASSERT_EQ_U64(tc_stat(c, NULL, "tier.ssd.entries"), 0); /* write-back: not yet */
    /* pin the first four: they must stay in host memory through the squeeze */
    for (uint32_t i = 1; i < 4; i++)
        ASSERT_OK(tt_put(c, "wb", &geom, i, 3));
    tqkv_key pins[4];
    for (uint32_t i = 0; i < 4; i++)
        pins[i] = tc_key(i, 3);
    int st[4];
    ASSERT_OK(tqkv_pin(c, "wb", pins, 4, st));
    const uint32_t n = 3 * fit;
    for (uint32_t i = 4; i < n; i++) {
        int rc = tt_put(c, "wb", &geom, i, 3);
        if (rc == TQKV_EAGAIN) { /* host space held by demotions in flight: retry */
            usleep(2000);
            i--;
            continue;
        }
        ASSERT_OK(rc);
    }
    ASSERT_TRUE(tc_stat(c, NULL, "tier.host.evictions") >= n - fit);
    ASSERT_TRUE(tc_stat(c, NULL, "tier.host.demotions") >= n - fit);
    ASSERT_EQ_U64(tc_stat(c, NULL, "tier.host.drops"), 0);
    for (uint32_t i = 0; i < 4; i++)
        ASSERT_EQ_INT(tt_where(c, "wb", i, 3), TQKV_TIER_HOST);
    /* the oldest unpinned block went down; a GET brings it back up */
    ASSERT_EQ_INT(tt_where(c, "wb", 4, 3), TQKV_TIER_SSD);
    uint8_t tier = 0;
    ASSERT_EQ_INT(tt_get(c, "wb", &geom, 4, 3, &tier), 1);
    ASSERT_EQ_INT(tier, TQKV_TIER_SSD);
    ASSERT_EQ_INT(tt_where(c, "wb", 4, 3), TQKV_TIER_HOST);
    /* every block is served, from wherever it is */
    for (uint32_t i = 0; i < n; i++)
        ASSERT_EQ_INT(tt_get(c, "wb", &geom, i, 3, NULL), 1);
    ASSERT_TRUE(tc_stat(c, NULL, "tier.host.promotions") >= 1);
    /* LOOKUP of a prefix across tiers */
    tqkv_key keys[3] = {tc_key(0, 3), tc_key(5, 3), tc_key(n + 7, 3)};
    uint32_t hits = 0;
    uint8_t tiers[3];
    ASSERT_OK(tqkv_lookup(c, "wb", keys, 3, 0, &hits, tiers, NULL));
    ASSERT_EQ_INT(hits, 2);
    ASSERT_EQ_INT(tiers[0], TQKV_TIER_HOST);
    ASSERT_TRUE(tiers[1] == TQKV_TIER_SSD || tiers[1] == TQKV_TIER_HOST);
    ASSERT_EQ_INT(tiers[2], TQKV_TIER_NONE);
    ASSERT_OK(tqkv_unpin(c, "wb", pins, 4, st));
    tqkv_close(c);
    ASSERT_EQ_INT(tqkvd_harness_stop(&h), 0);
}

static void test_squeeze_write_through(void)
{
    tqkvd_harness h;
    ASSERT_OK(fresh_dir());
    ASSERT_OK(start(&h, "1M", NULL)); /* ssd_write=through, the default */
    tqkv_client *c = tc_connect(h.unix_url, NULL);
    ASSERT_TRUE(c);
    ASSERT_OK(tc_register(c, "wt", &geom));
    ASSERT_OK(tt_put(c, "wt", &geom, 0, 4));
    ASSERT_EQ_U64(tc_stat(c, NULL, "tier.ssd.entries"), 1); /* acknowledged after the SSD */
    const uint64_t fit = tc_stat(c, NULL, "tier.host.capacity") /
                         tc_stat(c, NULL, "tier.host.used");
    const uint32_t n = (uint32_t)(3 * fit);
    for (uint32_t i = 1; i < n; i++)
        ASSERT_OK(tt_put(c, "wt", &geom, i, 4)); /* never EAGAIN: eviction frees at once */
    ASSERT_TRUE(tc_stat(c, NULL, "tier.host.evictions") >= n - fit);
    ASSERT_EQ_U64(tc_stat(c, NULL, "tier.host.demotions"), 0);
    ASSERT_EQ_U64(tc_stat(c, NULL, "tier.host.drops"), 0);
    ASSERT_EQ_U64(tc_stat(c, NULL, "tier.ssd.entries"), n);
    ASSERT_EQ_U64(tc_stat(c, NULL, "put_enospc"), 0);
    /* PIN of a block only the SSD holds brings it back into host memory and keeps it there */
    ASSERT_EQ_INT(tt_where(c, "wt", 0, 4), TQKV_TIER_SSD);
    tqkv_key pk[2] = {tc_key(0, 4), tc_key(n + 100, 4)}; /* the second is nowhere */
    int pst[2] = {1, 1};
    ASSERT_OK(tqkv_pin(c, "wt", pk, 2, pst));
    ASSERT_EQ_INT(pst[0], 0);
    ASSERT_EQ_INT(pst[1], TQKV_ENOENT);
    ASSERT_EQ_INT(tt_where(c, "wt", 0, 4), TQKV_TIER_HOST);
    for (uint32_t i = n; i < n + (uint32_t)fit + 2; i++)
        ASSERT_OK(tt_put(c, "wt", &geom, i, 4));
    ASSERT_EQ_INT(tt_where(c, "wt", 0, 4), TQKV_TIER_HOST);
    ASSERT_OK(tqkv_unpin(c, "wt", pk, 1, pst));
    for (uint32_t i = 0; i < n; i++)
        ASSERT_EQ_INT(tt_get(c, "wt", &geom, i, 4, NULL), 1);
    tqkv_close(c);
    ASSERT_EQ_INT(tqkvd_harness_stop(&h), 0);
}

static const tqkv_test_case cases[] = {
    {"kill9_restart", test_kill9_restart},
    {"corrupt_record", test_corrupt_record},
    {"squeeze_write_back", test_squeeze_write_back},
    {"squeeze_write_through", test_squeeze_write_through},
    {NULL, NULL},
};

int main(int argc, char **argv)
{
    geom = tc_geom_small("fp16");
    geom.tokens = 8; /* 4 layers x 2 x 8 tokens x 2 heads x 64 x 2 bytes = 16 KiB of fp16 */
    int rc = tqkv_test_main(argc, argv, cases);
    for (int i = 0; i < n_dirs; i++)
        tt_rmdir(dirs[i]);
    return rc;
}
