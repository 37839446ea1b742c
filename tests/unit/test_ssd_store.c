/* The SSD tier under the store (storage/tiers.h): host evictions are demoted to the SSD engine,
 * a host miss is found there and promoted, and the blocks are still there after the store and
 * the engine are recreated on the same directory (a daemon restart). */
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "ssd_tier.h"
#include "tiers.h"
#include "tqkv_errors.h"
#include "tqkv_test.h"

#define NBLOCKS 40
#define BLOCK 100000

static int rm_cb(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
    (void)sb;
    (void)type;
    (void)ftw;
    return remove(path);
}

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
    key[31] = 0x5d;
}

typedef struct {
    int done;
    int status;
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

static int open_store(uv_loop_t *loop, const char *dir, tqkv_store **s, tqkv_ns **ns)
{
    tqkv_store_config c = {0};
    c.host_capacity = 1u << 20;
    c.host_max_capacity = 1u << 20;
    c.host_page_size = 64u << 10;
    int rc = tqkv_store_create(&c, s);
    if (rc != 0) return rc;
    tqkv_ssd_options o;
    tqkv_ssd_options_init(&o);
    o.dir = dir;
    o.capacity = 64u << 20;
    o.segment_bytes = 4u << 20;
    tqkv_tier *t = NULL;
    if ((rc = tqkv_ssd_tier_create(loop, &o, &t)) != 0) return rc;
    if ((rc = tqkv_store_attach_tier(*s, t)) != 0) return rc;
    tqkv_ns_desc d;
    memset(&d, 0, sizeof(d));
    snprintf(d.name, sizeof(d.name), "model");
    d.n_layers = 2;
    d.n_kv_heads = 2;
    d.head_dim = 128;
    d.chunk_size = 256;
    snprintf(d.preset, sizeof(d.preset), "tq4");
    return tqkv_store_ns_register(*s, &d, ns, NULL);
}

/* Gets block i, expecting it from the SSD tier, and checks its bytes. */
static void expect_from_ssd(uv_loop_t *loop, tqkv_store *s, tqkv_ns *ns, uint32_t i, uint8_t *buf)
{
    uint8_t key[TQKV_KEY_BYTES];
    key_of(i, key);
    get_t g = {0};
    tqkv_store_ref *ref = NULL;
    int r = tqkv_store_get(s, ns, key, &ref, on_get, &g);
    ASSERT_EQ_INT(r, TQKV_STORE_PENDING);
    while (!g.done)
        uv_run(loop, UV_RUN_ONCE);
    ASSERT_EQ_INT(g.status, TQKV_STORE_HIT);
    ASSERT_EQ_INT(g.tier, TQKV_TIER_SSD);
    fill(i, buf);
    ASSERT_EQ_U64(tqkv_store_ref_len(g.ref), BLOCK);
    ASSERT_MEM_EQ(tqkv_store_ref_data(g.ref), buf, BLOCK);
    tqkv_store_ref_release(s, g.ref);
}

static void test_demote_promote_restart(void)
{
    char tmpl[] = "/tmp/tqkv-ssdstore-XXXXXX";
    char *dir = mkdtemp(tmpl);
    ASSERT_TRUE(dir);
    uint8_t *buf = malloc(BLOCK);
    uv_loop_t loop;
    ASSERT_EQ_INT(uv_loop_init(&loop), 0);
    tqkv_store *s = NULL;
    tqkv_ns *ns = NULL;
    ASSERT_OK(open_store(&loop, dir, &s, &ns));

    /* 40 blocks of 100 KB through a 1 MiB host tier: most are demoted to the SSD. */
    for (uint32_t i = 0; i < NBLOCKS; i++) {
        uint8_t key[TQKV_KEY_BYTES];
        key_of(i, key);
        tqkv_store_put *p = NULL;
        void *dst = NULL;
        int r;
        while ((r = tqkv_store_put_reserve(s, ns, key, BLOCK, &p, &dst)) == TQKV_EAGAIN)
            uv_run(&loop, UV_RUN_ONCE); /* demotions in flight free the space */
        ASSERT_OK(r);
        fill(i, dst);
        ASSERT_OK(tqkv_store_put_commit(s, p, BLOCK));
    }
    /* Make room in the host tier for promotions: evict half of it and let the demotions (SSD
     * writes) complete. */
    ASSERT_OK(tqkv_store_evict(s, NULL, 512u << 10, NULL));
    tqkv_store_stats st;
    for (;;) {
        tqkv_store_get_stats(s, &st);
        const tqkv_tier_stats *h = &st.tiers[TQKV_TIER_HOST];
        if (h->demotions + h->drops >= h->evictions) break;
        uv_run(&loop, UV_RUN_ONCE);
    }
    ASSERT_TRUE(st.tiers[TQKV_TIER_HOST].demotions >= NBLOCKS - 10);
    ASSERT_EQ_U64(st.tiers[TQKV_TIER_HOST].drops, 0);

    expect_from_ssd(&loop, s, ns, 0, buf);
    TQKV_TEST_CHECK();
    expect_from_ssd(&loop, s, ns, 7, buf);
    TQKV_TEST_CHECK();

    /* Restart: a new store and a new engine on the same directory. */
    tqkv_store_destroy(s);
    uv_run(&loop, UV_RUN_DEFAULT);
    s = NULL;
    ASSERT_OK(open_store(&loop, dir, &s, &ns));
    for (uint32_t i = 1; i < 20; i += 3) {
        expect_from_ssd(&loop, s, ns, i, buf);
        TQKV_TEST_CHECK();
    }
    tqkv_store_destroy(s);
    uv_run(&loop, UV_RUN_DEFAULT);
    ASSERT_EQ_INT(uv_loop_close(&loop), 0);
    free(buf);
    nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

static const tqkv_test_case cases[] = {
    {"demote_promote_restart", test_demote_promote_restart},
    {NULL, NULL},
};

int main(int argc, char **argv)
{
    return tqkv_test_main(argc, argv, cases);
}
