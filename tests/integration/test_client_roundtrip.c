/* Integration tests of libtqkv against a real tqkvd: raw and encoded round trips for several
 * presets (the daemon's encoding must equal libtq's, byte for byte), layer-range GET,
 * decode-on-GET equal to tq_block_decode, lookup prefix semantics, idempotent PUT, misses,
 * DELETE, pipelined batches, caller buffers and the errors a client sees for bad requests. */
#include "test_client_util.h"
#include "tqkv_test.h"

static tqkvd_harness daemon_h;
static tqkv_client *cl;

static const char *const presets[] = {"tq4", "tq3.5", "tq3-prod", "tq2.5", "fp16", NULL};

/* PUT raw KV, GET the block back, compare with the local encoding of the same KV. */
static void test_raw_roundtrip_presets(void)
{
    for (int p = 0; presets[p]; p++) {
        char ns[64];
        snprintf(ns, sizeof(ns), "rt-%s", presets[p]);
        tc_geom g = tc_geom_small(presets[p]);
        ASSERT_OK(tc_register(cl, ns, &g));
        uint16_t *raw = tc_make_raw(&g, g.tokens, 100 + (uint64_t)p);
        tqkv_key key = tc_key((uint32_t)p, 1);
        size_t want_len = 0;
        void *want = tc_encode(&g, &key, raw, g.tokens, &want_len);
        ASSERT_TRUE(raw && want);
        tqkv_put_item it = {.key = key, .data = raw, .len = tc_raw_len(&g, g.tokens),
                            .n_tokens = g.tokens};
        int st = 1;
        ASSERT_OK(tqkv_put_raw(cl, ns, &it, 1, &st));
        ASSERT_EQ_INT(st, 0);
        tqkv_get_item gi;
        memset(&gi, 0, sizeof(gi));
        ASSERT_OK(tqkv_get(cl, ns, &key, 1, NULL, &gi));
        ASSERT_EQ_INT(gi.status, 0);
        ASSERT_EQ_INT(gi.tier, TQKV_TIER_HOST);
        ASSERT_EQ_U64(gi.len, want_len);
        ASSERT_MEM_EQ(gi.data, want, want_len);
        tq_block_view v;
        ASSERT_OK(tq_block_parse(gi.data, gi.len, 0, &v));
        ASSERT_MEM_EQ(v.key, key.bytes, TQKV_KEY_BYTES);
        ASSERT_EQ_INT(v.n_tokens, g.tokens);
        tqkv_get_items_release(&gi, 1);
        free(raw);
        free(want);
    }
}

/* PUT blocks encoded here (including a partial chunk), GET them back unchanged. */
static void test_encoded_roundtrip(void)
{
    for (int p = 0; presets[p]; p++) {
        char ns[64];
        snprintf(ns, sizeof(ns), "enc-%s", presets[p]);
        tc_geom g = tc_geom_small(presets[p]);
        ASSERT_OK(tc_register(cl, ns, &g));
        for (uint32_t n_tok = g.tokens; n_tok >= g.tokens - 5; n_tok -= 5) {
            uint16_t *raw = tc_make_raw(&g, n_tok, 7 + n_tok);
            tqkv_key key = tc_key(n_tok, 2);
            size_t len = 0;
            void *blk = tc_encode(&g, &key, raw, n_tok, &len);
            ASSERT_TRUE(blk != NULL);
            tqkv_put_item it = {.key = key, .data = blk, .len = len};
            ASSERT_OK(tqkv_put_blocks(cl, ns, &it, 1, NULL));
            tqkv_get_item gi;
            memset(&gi, 0, sizeof(gi));
            ASSERT_OK(tqkv_get(cl, ns, &key, 1, NULL, &gi));
            ASSERT_EQ_INT(gi.status, 0);
            ASSERT_EQ_U64(gi.len, len);
            ASSERT_MEM_EQ(gi.data, blk, len);
            tqkv_get_items_release(&gi, 1);
            free(raw);
            free(blk);
        }
    }
}

/* Shared setup of the next tests: one tq3 block stored through a raw PUT. */
static void put_one(const char *ns, const tc_geom *g, const tqkv_key *key, uint64_t seed,
                    void **block, size_t *block_len)
{
    uint16_t *raw = tc_make_raw(g, g->tokens, seed);
    *block = tc_encode(g, key, raw, g->tokens, block_len);
    tqkv_put_item it = {.key = *key, .data = raw, .len = tc_raw_len(g, g->tokens),
                        .n_tokens = g->tokens};
    int rc = tqkv_put_raw(cl, ns, &it, 1, NULL);
    free(raw);
    ASSERT_OK(rc);
    ASSERT_TRUE(*block != NULL);
}

static void test_layer_range_get(void)
{
    tc_geom g = tc_geom_small("tq3");
    ASSERT_OK(tc_register(cl, "layers", &g));
    tqkv_key key = tc_key(0, 3);
    void *blk = NULL;
    size_t len = 0;
    put_one("layers", &g, &key, 31, &blk, &len);
    TQKV_TEST_CHECK();
    tq_block_view v;
    ASSERT_OK(tq_block_parse(blk, len, 0, &v));
    static const uint32_t ranges[][2] = {{0, 1}, {1, 2}, {3, 1}, {2, 0}};
    for (size_t r = 0; r < sizeof(ranges) / sizeof(ranges[0]); r++) {
        uint32_t begin = ranges[r][0], count = ranges[r][1];
        uint32_t eff = count ? count : g.n_layers - begin;
        size_t cap = tq_block_slice_size(&v, begin, eff), want_len = 0;
        void *want = malloc(cap);
        ASSERT_OK(tq_block_slice(&v, begin, eff, want, cap, &want_len));
        tqkv_get_options o = {.layer_begin = begin, .layer_count = count};
        tqkv_get_item gi;
        memset(&gi, 0, sizeof(gi));
        ASSERT_OK(tqkv_get(cl, "layers", &key, 1, &o, &gi));
        ASSERT_EQ_INT(gi.status, 0);
        ASSERT_EQ_U64(gi.len, want_len);
        ASSERT_MEM_EQ(gi.data, want, want_len);
        tq_block_view sv;
        ASSERT_OK(tq_block_parse(gi.data, gi.len, 0, &sv));
        ASSERT_EQ_INT(sv.layer_begin, begin);
        ASSERT_EQ_INT(sv.n_layers, eff);
        tqkv_get_items_release(&gi, 1);
        free(want);
    }
    /* a range past the model's layers is refused */
    tqkv_get_options bad = {.layer_begin = 3, .layer_count = 2};
    tqkv_get_item gi;
    memset(&gi, 0, sizeof(gi));
    int rc = tqkv_get(cl, "layers", &key, 1, &bad, &gi);
    int st = rc ? rc : gi.status;
    tqkv_get_items_release(&gi, 1);
    ASSERT_ERR(st, TQKV_EBADLAYERS);
    free(blk);
}

static void test_decode_on_get(void)
{
    tc_geom g = tc_geom_small("tq3.5");
    ASSERT_OK(tc_register(cl, "decode", &g));
    tqkv_key key = tc_key(0, 4);
    void *blk = NULL;
    size_t len = 0;
    put_one("decode", &g, &key, 41, &blk, &len);
    TQKV_TEST_CHECK();
    tq_block_view v;
    ASSERT_OK(tq_block_parse(blk, len, 0, &v));
    static const struct {
        tqkv_dtype dt;
        uint32_t begin, count;
    } cases[] = {{TQKV_DTYPE_F16, 0, 0}, {TQKV_DTYPE_BF16, 0, 0}, {TQKV_DTYPE_F32, 1, 2},
                 {TQKV_DTYPE_F16, 3, 1}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint32_t eff = cases[i].count ? cases[i].count : g.n_layers - cases[i].begin;
        size_t want_len = (size_t)eff * 2 * g.tokens * g.n_kv_heads * g.head_dim *
                          tq_dtype_size((tq_dtype)cases[i].dt);
        void *want = malloc(want_len);
        ASSERT_OK(tq_block_decode(&v, cases[i].begin, eff, (tq_dtype)cases[i].dt, want, want_len));
        tqkv_get_options o = {.layer_begin = cases[i].begin, .layer_count = cases[i].count,
                              .decode = cases[i].dt};
        tqkv_get_item gi;
        memset(&gi, 0, sizeof(gi));
        ASSERT_OK(tqkv_get(cl, "decode", &key, 1, &o, &gi));
        ASSERT_EQ_INT(gi.status, 0);
        ASSERT_EQ_U64(gi.len, want_len);
        ASSERT_MEM_EQ(gi.data, want, want_len);
        tqkv_get_items_release(&gi, 1);
        free(want);
    }
    free(blk);
}

static void test_idempotent_put(void)
{
    tc_geom g = tc_geom_small("tq4");
    ASSERT_OK(tc_register(cl, "idem", &g));
    tqkv_key key = tc_key(0, 5);
    void *first = NULL, *second = NULL;
    size_t l1 = 0, l2 = 0;
    put_one("idem", &g, &key, 51, &first, &l1);
    TQKV_TEST_CHECK();
    /* same key, other KV: accepted (status 0), and the stored block stays the first one */
    put_one("idem", &g, &key, 52, &second, &l2);
    TQKV_TEST_CHECK();
    ASSERT_TRUE(l1 != l2 || memcmp(first, second, l1) != 0);
    tqkv_put_item it = {.key = key, .data = first, .len = l1};
    int st = 1;
    ASSERT_OK(tqkv_put_blocks(cl, "idem", &it, 1, &st));
    ASSERT_EQ_INT(st, 0);
    tqkv_get_item gi;
    memset(&gi, 0, sizeof(gi));
    ASSERT_OK(tqkv_get(cl, "idem", &key, 1, NULL, &gi));
    ASSERT_EQ_U64(gi.len, l1);
    ASSERT_MEM_EQ(gi.data, first, l1);
    tqkv_get_items_release(&gi, 1);
    ASSERT_EQ_U64(tc_stat(cl, "idem", "ns.idem.entries"), 1);
    free(first);
    free(second);
}

static void test_lookup_prefix(void)
{
    tc_geom g = tc_geom_small("tq4");
    ASSERT_OK(tc_register(cl, "prefix", &g));
    tqkv_key keys[6];
    for (uint32_t i = 0; i < 6; i++)
        keys[i] = tc_key(i, 6);
    uint16_t *raw = tc_make_raw(&g, g.tokens, 61);
    for (uint32_t i = 0; i < 6; i++) {
        if (i == 3)
            continue; /* the hole */
        tqkv_put_item it = {.key = keys[i], .data = raw, .len = tc_raw_len(&g, g.tokens),
                            .n_tokens = g.tokens};
        ASSERT_OK(tqkv_put_raw(cl, "prefix", &it, 1, NULL));
    }
    free(raw);
    uint32_t hits = 99;
    uint8_t tiers[6];
    ASSERT_OK(tqkv_lookup(cl, "prefix", keys, 6, 0, &hits, tiers, NULL));
    ASSERT_EQ_INT(hits, 3);
    for (int i = 0; i < 3; i++)
        ASSERT_EQ_INT(tiers[i], TQKV_TIER_HOST);
    ASSERT_EQ_INT(tiers[3], TQKV_TIER_NONE);
    /* a miss first: no hits at all */
    ASSERT_OK(tqkv_lookup(cl, "prefix", keys + 3, 3, 0, &hits, tiers, NULL));
    ASSERT_EQ_INT(hits, 0);
    ASSERT_OK(tqkv_lookup(cl, "prefix", keys + 4, 2, 0, &hits, NULL, NULL));
    ASSERT_EQ_INT(hits, 2);
    /* a lease on the hits comes back with an id */
    uint64_t lease = 0;
    ASSERT_OK(tqkv_lookup(cl, "prefix", keys, 2, 5000, &hits, NULL, &lease));
    ASSERT_EQ_INT(hits, 2);
    ASSERT_TRUE(lease != 0);
}

static void test_miss_and_delete(void)
{
    tc_geom g = tc_geom_small("tq4");
    ASSERT_OK(tc_register(cl, "del", &g));
    tqkv_key keys[2] = {tc_key(0, 7), tc_key(1, 7)};
    void *blk = NULL;
    size_t len = 0;
    put_one("del", &g, &keys[0], 71, &blk, &len);
    TQKV_TEST_CHECK();
    free(blk);
    tqkv_get_item gi[2];
    memset(gi, 0, sizeof(gi));
    ASSERT_OK(tqkv_get(cl, "del", keys, 2, NULL, gi));
    ASSERT_EQ_INT(gi[0].status, 0);
    ASSERT_EQ_INT(gi[1].status, TQKV_ENOENT);
    ASSERT_EQ_INT(gi[1].tier, TQKV_TIER_NONE);
    ASSERT_EQ_U64(gi[1].len, 0);
    tqkv_get_items_release(gi, 2);
    int st[2] = {1, 1};
    ASSERT_OK(tqkv_delete(cl, "del", keys, 2, st));
    ASSERT_EQ_INT(st[0], 0);
    ASSERT_EQ_INT(st[1], TQKV_ENOENT);
    uint32_t hits = 9;
    ASSERT_OK(tqkv_lookup(cl, "del", keys, 1, 0, &hits, NULL, NULL));
    ASSERT_EQ_INT(hits, 0);
}

/* Many keys, one request per key on GET: dozens of requests in flight on one connection. */
static void test_pipelined_batches(void)
{
    enum { N = 300 };
    tc_geom g = tc_geom_small("tq4");
    ASSERT_OK(tc_register(cl, "batch", &g));
    tqkv_put_item *items = calloc(N, sizeof(*items));
    tqkv_key *keys = calloc(N, sizeof(*keys));
    void **want = calloc(N, sizeof(void *));
    size_t *want_len = calloc(N, sizeof(size_t));
    int *st = calloc(N, sizeof(int));
    tqkv_get_item *gi = calloc(N, sizeof(*gi));
    ASSERT_TRUE(items && keys && want && want_len && st && gi);
    for (uint32_t i = 0; i < N; i++) {
        keys[i] = tc_key(i, 8);
        uint16_t *raw = tc_make_raw(&g, g.tokens, 1000 + i);
        want[i] = tc_encode(&g, &keys[i], raw, g.tokens, &want_len[i]);
        items[i].key = keys[i];
        items[i].data = raw;
        items[i].len = tc_raw_len(&g, g.tokens);
        items[i].n_tokens = g.tokens;
        st[i] = 1;
    }
    ASSERT_OK(tqkv_put_raw(cl, "batch", items, N, st));
    for (uint32_t i = 0; i < N; i++)
        ASSERT_EQ_INT(st[i], 0);
    tqkv_get_options o = {.keys_per_request = 1};
    ASSERT_OK(tqkv_get(cl, "batch", keys, N, &o, gi));
    for (uint32_t i = 0; i < N; i++) {
        ASSERT_EQ_INT(gi[i].status, 0);
        ASSERT_EQ_U64(gi[i].len, want_len[i]);
        ASSERT_MEM_EQ(gi[i].data, want[i], want_len[i]);
    }
    tqkv_get_items_release(gi, N);
    o.keys_per_request = 7; /* uneven split, last request short */
    ASSERT_OK(tqkv_get(cl, "batch", keys, N, &o, gi));
    for (uint32_t i = 0; i < N; i++)
        ASSERT_MEM_EQ(gi[i].data, want[i], want_len[i]);
    tqkv_get_items_release(gi, N);
    uint32_t hits = 0;
    ASSERT_OK(tqkv_lookup(cl, "batch", keys, N, 0, &hits, NULL, NULL));
    ASSERT_EQ_INT(hits, N);
    for (uint32_t i = 0; i < N; i++) {
        free((void *)items[i].data);
        free(want[i]);
    }
    free(items);
    free(keys);
    free(want);
    free(want_len);
    free(st);
    free(gi);
}

static void test_caller_buffer(void)
{
    tc_geom g = tc_geom_small("tq4");
    ASSERT_OK(tc_register(cl, "buf", &g));
    tqkv_key key = tc_key(0, 9);
    void *blk = NULL;
    size_t len = 0;
    put_one("buf", &g, &key, 91, &blk, &len);
    TQKV_TEST_CHECK();
    uint8_t *buf = malloc(len);
    tqkv_get_item gi = {.buf = buf, .cap = len};
    ASSERT_OK(tqkv_get(cl, "buf", &key, 1, NULL, &gi));
    ASSERT_EQ_INT(gi.status, 0);
    ASSERT_TRUE(gi.data == buf);
    ASSERT_EQ_INT(gi.allocated, 0);
    ASSERT_MEM_EQ(buf, blk, len);
    tqkv_get_item small = {.buf = buf, .cap = len - 1};
    ASSERT_OK(tqkv_get(cl, "buf", &key, 1, NULL, &small));
    ASSERT_EQ_INT(small.status, TQKV_ERANGE);
    ASSERT_EQ_U64(small.len, len);
    tqkv_get_items_release(&small, 1);
    free(buf);
    free(blk);
}

/* Requests the daemon must refuse, each with its own code; the connection keeps working. */
static void test_request_errors(void)
{
    tc_geom g = tc_geom_small("tq4");
    ASSERT_OK(tc_register(cl, "errs", &g));
    ASSERT_OK(tc_register(cl, "errs", &g)); /* same parameters: fine */
    tc_geom other = g;
    other.n_layers = 5;
    ASSERT_ERR(tc_register(cl, "errs", &other), TQKV_ENSCONFLICT);

    tqkv_key key = tc_key(0, 10), other_key = tc_key(1, 10);
    uint16_t *raw = tc_make_raw(&g, g.tokens, 101);
    size_t len = 0;
    uint8_t *blk = tc_encode(&g, &key, raw, g.tokens, &len);
    ASSERT_TRUE(blk != NULL);
    int st = 0;

    tqkv_get_item gi;
    memset(&gi, 0, sizeof(gi));
    ASSERT_ERR(tqkv_get(cl, "no-such-ns", &key, 1, NULL, &gi), TQKV_ENONAMESPACE);
    tqkv_get_items_release(&gi, 1);
    tqkv_put_item it = {.key = key, .data = raw, .len = tc_raw_len(&g, g.tokens),
                        .n_tokens = g.tokens};
    ASSERT_ERR(tqkv_put_raw(cl, "no-such-ns", &it, 1, &st), TQKV_ENONAMESPACE);

    it.len -= 2; /* raw length that disagrees with the geometry */
    ASSERT_ERR(tqkv_put_raw(cl, "errs", &it, 1, &st), TQKV_EBADPAYLOAD);

    tqkv_put_item bi = {.key = other_key, .data = blk, .len = len}; /* block of another key */
    ASSERT_ERR(tqkv_put_blocks(cl, "errs", &bi, 1, &st), TQKV_EBADKEY);

    bi.key = key;
    blk[len - 1] ^= 0x5a; /* payload byte: the layer checksum no longer matches */
    ASSERT_ERR(tqkv_put_blocks(cl, "errs", &bi, 1, &st), TQKV_ECHECKSUM);
    blk[len - 1] ^= 0x5a;

    tc_geom g5 = g;
    g5.n_kv_heads = 4;
    size_t len5 = 0;
    uint16_t *raw5 = tc_make_raw(&g5, g.tokens, 102);
    void *blk5 = tc_encode(&g5, &key, raw5, g.tokens, &len5);
    tqkv_put_item gi5 = {.key = key, .data = blk5, .len = len5}; /* geometry of another model */
    ASSERT_ERR(tqkv_put_blocks(cl, "errs", &gi5, 1, &st), TQKV_EBADGEOMETRY);

    /* none of the refused PUTs stored anything; a good one still works on this connection */
    uint32_t hits = 9;
    ASSERT_OK(tqkv_lookup(cl, "errs", &key, 1, 0, &hits, NULL, NULL));
    ASSERT_EQ_INT(hits, 0);
    ASSERT_OK(tqkv_put_blocks(cl, "errs", &bi, 1, &st));
    ASSERT_OK(tqkv_lookup(cl, "errs", &key, 1, 0, &hits, NULL, NULL));
    ASSERT_EQ_INT(hits, 1);
    free(raw);
    free(blk);
    free(raw5);
    free(blk5);
}

static void test_health_stats_config(void)
{
    tqkv_kv_list l;
    ASSERT_OK(tqkv_health(cl, &l));
    ASSERT_TRUE(l.n > 0);
    tqkv_kv_list_free(&l);
    ASSERT_OK(tqkv_stats(cl, NULL, &l));
    ASSERT_TRUE(l.n > 0);
    tqkv_kv_list_free(&l);
    ASSERT_OK(tqkv_config_get(cl, "host_capacity", &l));
    ASSERT_TRUE(tqkv_kv_list_get(&l, "host_capacity") != NULL);
    tqkv_kv_list_free(&l);
    ASSERT_TRUE(strlen(tqkv_server_version(cl)) > 0);
}

static const tqkv_test_case cases[] = {
    {"raw_roundtrip_presets", test_raw_roundtrip_presets},
    {"encoded_roundtrip", test_encoded_roundtrip},
    {"layer_range_get", test_layer_range_get},
    {"decode_on_get", test_decode_on_get},
    {"idempotent_put", test_idempotent_put},
    {"lookup_prefix", test_lookup_prefix},
    {"miss_and_delete", test_miss_and_delete},
    {"pipelined_batches", test_pipelined_batches},
    {"caller_buffer", test_caller_buffer},
    {"request_errors", test_request_errors},
    {"health_stats_config", test_health_stats_config},
    {NULL, NULL},
};

int main(int argc, char **argv)
{
    static const char *const args[] = {"--encode-device", "cpu", NULL};
    if (tc_start(&daemon_h, args))
        return 1;
    cl = tc_connect(daemon_h.unix_url, NULL);
    int rc = cl ? tqkv_test_main(argc, argv, cases) : 1;
    if (rc == 1)
        tqkvd_harness_dump_log(&daemon_h);
    tqkv_close(cl);
    if (tqkvd_harness_stop(&daemon_h) != 0) {
        fprintf(stderr, "tqkvd did not shut down cleanly\n");
        rc = 1;
    }
    return rc;
}
