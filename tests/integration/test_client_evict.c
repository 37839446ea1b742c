/* Integration tests of eviction through libtqkv against a tqkvd with a 1 MiB host tier: blocks
 * leave in least-recently-used order (a GET or a LOOKUP hit makes a block recent again), pinned
 * blocks and blocks under a lease stay however much is written after them, and an admin EVICT
 * frees what it says. Blocks are ~64 KiB (fp16 preset) so a dozen or so fit. */
#include "test_client_util.h"
#include "tqkv_test.h"

static tqkvd_harness daemon_h;
static tqkv_client *cl;
static tc_geom geom;
static uint16_t *raw;

#define MAX_KEYS 400

static int put_key(const char *ns, const tqkv_key *k)
{
    tqkv_put_item it = {.key = *k, .data = raw, .len = tc_raw_len(&geom, geom.tokens),
                        .n_tokens = geom.tokens};
    return tqkv_put_raw(cl, ns, &it, 1, NULL);
}

static int present(const char *ns, const tqkv_key *k)
{
    uint32_t hits = 0;
    if (tqkv_lookup(cl, ns, k, 1, 0, &hits, NULL, NULL))
        return -1;
    return (int)hits;
}

static void test_lru_order(void)
{
    static tqkv_key keys[MAX_KEYS];
    ASSERT_OK(tc_register(cl, "lru", &geom));
    for (int i = 0; i < MAX_KEYS; i++)
        keys[i] = tc_key((uint32_t)i, 30);
    /* How many blocks fit: the capacity over the host bytes one block takes (page-rounded).
     * LOOKUP counts as a use (it moves hits to the recent end), so presence is only probed at
     * the end; while filling, the stats tell how many entries there are. */
    ASSERT_OK(put_key("lru", &keys[0]));
    const uint64_t per_block = tc_stat(cl, NULL, "tier.host.used");
    const uint64_t cap = tc_stat(cl, NULL, "tier.host.capacity");
    ASSERT_TRUE(per_block > 0 && cap >= per_block);
    const int fit = (int)(cap / per_block);
    ASSERT_TRUE(fit >= 4 && fit + 2 < MAX_KEYS);
    for (int i = 1; i < fit; i++)
        ASSERT_OK(put_key("lru", &keys[i]));
    ASSERT_EQ_U64(tc_stat(cl, NULL, "tier.host.entries"), fit);
    ASSERT_EQ_U64(tc_stat(cl, NULL, "tier.host.evictions"), 0);
    /* A GET makes key 0 the most recent: the next two PUTs must evict keys 1 and 2. */
    tqkv_get_item gi;
    memset(&gi, 0, sizeof(gi));
    ASSERT_OK(tqkv_get(cl, "lru", &keys[0], 1, NULL, &gi));
    ASSERT_EQ_INT(gi.status, 0);
    tqkv_get_items_release(&gi, 1);
    ASSERT_OK(put_key("lru", &keys[fit]));
    ASSERT_OK(put_key("lru", &keys[fit + 1]));
    ASSERT_EQ_U64(tc_stat(cl, NULL, "tier.host.evictions"), 2);
    ASSERT_EQ_U64(tc_stat(cl, NULL, "tier.host.entries"), fit);
    for (int i = 0; i < fit + 2; i++) {
        int want = !(i == 1 || i == 2);
        int got = present("lru", &keys[i]);
        if (got != want)
            TQKV__FAIL("key %d of %d: present %d, want %d", i, fit + 2, got, want);
    }
    /* And without a touch, the oldest goes first: key 3 (the lookups above touched 0, 3, 4,
     * ... in that order, so 0 is now the least recent, then 3). */
    ASSERT_OK(put_key("lru", &keys[fit + 2]));
    ASSERT_EQ_INT(present("lru", &keys[0]), 0);
    ASSERT_EQ_INT(present("lru", &keys[3]), 1);
    ASSERT_OK(tqkv_clear(cl, "lru"));
}

/* Writes `count` fresh blocks (tag) into ns. */
static int storm(const char *ns, uint32_t tag, int count)
{
    for (int i = 0; i < count; i++) {
        tqkv_key k = tc_key((uint32_t)i, tag);
        int rc = put_key(ns, &k);
        if (rc)
            return rc;
    }
    return 0;
}

static void test_pin_and_lease_protect(void)
{
    ASSERT_OK(tc_register(cl, "protect", &geom));
    tqkv_key pinned = tc_key(0, 40), leased = tc_key(1, 40), plain = tc_key(2, 40);
    ASSERT_OK(put_key("protect", &pinned));
    ASSERT_OK(put_key("protect", &leased));
    ASSERT_OK(put_key("protect", &plain));
    int st = 1;
    ASSERT_OK(tqkv_pin(cl, "protect", &pinned, 1, &st));
    ASSERT_EQ_INT(st, 0);
    uint32_t hits = 0;
    uint64_t lease = 0;
    ASSERT_OK(tqkv_lookup(cl, "protect", &leased, 1, 600000, &hits, NULL, &lease));
    ASSERT_EQ_INT(hits, 1);
    ASSERT_TRUE(lease != 0);
    /* three times the capacity written after them */
    ASSERT_OK(storm("protect", 41, 3 * 20));
    ASSERT_EQ_INT(present("protect", &plain), 0);
    ASSERT_EQ_INT(present("protect", &pinned), 1);
    ASSERT_EQ_INT(present("protect", &leased), 1);
    /* the protected blocks read back intact */
    size_t want_len = 0;
    void *want = tc_encode(&geom, &pinned, raw, geom.tokens, &want_len);
    tqkv_get_item gi;
    memset(&gi, 0, sizeof(gi));
    ASSERT_OK(tqkv_get(cl, "protect", &pinned, 1, NULL, &gi));
    ASSERT_EQ_U64(gi.len, want_len);
    ASSERT_MEM_EQ(gi.data, want, want_len);
    tqkv_get_items_release(&gi, 1);
    free(want);
    /* unpinned, and the lease released by a GET: both become evictable */
    ASSERT_OK(tqkv_unpin(cl, "protect", &pinned, 1, &st));
    ASSERT_EQ_INT(st, 0);
    tqkv_get_options o = {.release_lease = lease};
    memset(&gi, 0, sizeof(gi));
    ASSERT_OK(tqkv_get(cl, "protect", &leased, 1, &o, &gi));
    ASSERT_EQ_INT(gi.status, 0);
    tqkv_get_items_release(&gi, 1);
    ASSERT_OK(storm("protect", 42, 3 * 20));
    ASSERT_EQ_INT(present("protect", &pinned), 0);
    ASSERT_EQ_INT(present("protect", &leased), 0);
}

/* A lease ended early with tqkv_lease_release no longer protects its blocks. */
static void test_lease_release(void)
{
    ASSERT_OK(tc_register(cl, "lease", &geom));
    tqkv_key k = tc_key(0, 45);
    ASSERT_OK(put_key("lease", &k));
    uint32_t hits = 0;
    uint64_t lease = 0;
    ASSERT_OK(tqkv_lookup(cl, "lease", &k, 1, 600000, &hits, NULL, &lease));
    ASSERT_EQ_INT(hits, 1);
    ASSERT_TRUE(lease != 0);
    ASSERT_OK(storm("lease", 46, 3 * 20));
    ASSERT_EQ_INT(present("lease", &k), 1);
    ASSERT_OK(tqkv_lease_release(cl, "lease", lease));
    ASSERT_OK(storm("lease", 47, 3 * 20));
    ASSERT_EQ_INT(present("lease", &k), 0);
    ASSERT_ERR(tqkv_lease_release(cl, "lease", 0), TQKV_EINVAL);
}

static void test_admin_evict_and_clear(void)
{
    ASSERT_OK(tc_register(cl, "evict", &geom));
    ASSERT_OK(storm("evict", 50, 6));
    uint64_t freed = 0;
    const uint64_t block = tc_raw_len(&geom, geom.tokens); /* fp16: block ~ raw size */
    ASSERT_OK(tqkv_evict(cl, NULL, 2 * block, &freed));
    ASSERT_TRUE(freed >= 2 * block);
    /* with a namespace: only that namespace's blocks go */
    ASSERT_OK(tc_register(cl, "evict2", &geom));
    ASSERT_OK(storm("evict2", 51, 2));
    uint64_t held = 0; /* blocks of "evict" still in the host tier */
    for (int i = 0; i < 6; i++) {
        tqkv_key k = tc_key((uint32_t)i, 50);
        held += (uint64_t)present("evict", &k);
    }
    ASSERT_TRUE(held > 0);
    ASSERT_OK(tqkv_evict(cl, "evict", 1000 * block, &freed));
    ASSERT_TRUE(freed >= held * block);
    for (int i = 0; i < 6; i++) {
        tqkv_key k = tc_key((uint32_t)i, 50);
        ASSERT_EQ_INT(present("evict", &k), 0);
    }
    for (int i = 0; i < 2; i++) {
        tqkv_key k = tc_key((uint32_t)i, 51);
        ASSERT_EQ_INT(present("evict2", &k), 1);
    }
    ASSERT_ERR(tqkv_evict(cl, "nope", block, &freed), TQKV_ENONAMESPACE);
    ASSERT_OK(tqkv_clear(cl, "evict"));
    for (int i = 0; i < 6; i++) {
        tqkv_key k = tc_key((uint32_t)i, 50);
        ASSERT_EQ_INT(present("evict", &k), 0);
    }
}

static const tqkv_test_case cases[] = {
    {"lru_order", test_lru_order},
    {"pin_and_lease_protect", test_pin_and_lease_protect},
    {"lease_release", test_lease_release},
    {"admin_evict_and_clear", test_admin_evict_and_clear},
    {NULL, NULL},
};

int main(int argc, char **argv)
{
    static const char *const args[] = {"--host-capacity", "1M", "--encode-device", "cpu", NULL};
    geom = tc_geom_small("fp16");
    geom.tokens = 32; /* raw 4 layers x 2 x 32 tokens x 2 heads x 64 x 2 bytes = 64 KiB; the
                         fp16 block is that plus its header */
    raw = tc_make_raw(&geom, geom.tokens, 3);
    if (tc_start(&daemon_h, args))
        return 1;
    cl = tc_connect(daemon_h.unix_url, NULL);
    int rc = cl ? tqkv_test_main(argc, argv, cases) : 1;
    if (rc == 1)
        tqkvd_harness_dump_log(&daemon_h);
    tqkv_close(cl);
    free(raw);
    if (tqkvd_harness_stop(&daemon_h) != 0) {
        fprintf(stderr, "tqkvd did not shut down cleanly\n");
        rc = 1;
    }
    return rc;
}
