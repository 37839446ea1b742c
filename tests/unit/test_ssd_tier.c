/* Tests of the SSD engine behind the tier vtable (storage/ssd/ssd_tier.c): completions arrive on
 * the libuv loop, reads go into the destination the caller hands out, results use the tier's
 * numbers (HIT, MISS), and destroy releases everything once the loop runs. */
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "ssd_tier.h"
#include "tqkv_errors.h"
#include "tqkv_test.h"

static int rm_cb(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
    (void)sb;
    (void)type;
    (void)ftw;
    return remove(path);
}

typedef struct {
    int done;
    int status;
} done_t;

static void on_done(void *arg, int status)
{
    done_t *d = arg;
    d->done++;
    d->status = status;
}

static void run_until(uv_loop_t *loop, const int *flag)
{
    while (!*flag)
        uv_run(loop, UV_RUN_ONCE);
}

static uint8_t g_dest[8192];
static size_t g_dest_asked;

static void *dest(void *arg, size_t len)
{
    (void)arg;
    g_dest_asked = len;
    return len <= sizeof(g_dest) ? g_dest : NULL;
}

static void test_tier_roundtrip(void)
{
    char tmpl[] = "/tmp/tqkv-ssdtier-XXXXXX";
    char *dir = mkdtemp(tmpl);
    ASSERT_TRUE(dir);
    uv_loop_t loop;
    ASSERT_EQ_INT(uv_loop_init(&loop), 0);
    tqkv_ssd_options o;
    tqkv_ssd_options_init(&o);
    o.dir = dir;
    o.capacity = 64u << 20;
    o.segment_bytes = 4u << 20;
    tqkv_tier *t = NULL;
    for (int pass = 0; pass < 2; pass++) {
        ASSERT_OK(tqkv_ssd_tier_create(&loop, &o, &t));
        ASSERT_EQ_INT(t->id, TQKV_TIER_SSD);
        ASSERT_TRUE(t->flags & TQKV_TIER_F_KEYED);
        ASSERT_TRUE(t->flags & TQKV_TIER_F_PERSISTENT);
        ASSERT_TRUE(tqkv_ssd_from_tier(t) != NULL);
        uint8_t key[32] = {7}, key2[32] = {8};
        uint8_t block[5000];
        for (size_t i = 0; i < sizeof(block); i++)
            block[i] = (uint8_t)(i * 131 + 7);
        if (pass == 0) {
            done_t w = {0};
            ASSERT_OK(t->ops->write(t, 3, key, block, sizeof(block), on_done, &w));
            ASSERT_OK(t->ops->write(t, 3, key2, block, 100, on_done, &w));
            while (w.done < 2)
                uv_run(&loop, UV_RUN_ONCE);
            ASSERT_EQ_INT(w.status, 0);
        }
        /* Written in pass 0, read back in both passes (pass 1: after a restart). */
        ASSERT_EQ_INT(t->ops->exists(t, 3, key, on_done, NULL), TQKV_TIER_HIT);
        ASSERT_EQ_INT(t->ops->exists(t, 4, key, on_done, NULL), TQKV_TIER_MISS);
        done_t r = {0};
        size_t out_len = 0;
        memset(g_dest, 0, sizeof(g_dest));
        ASSERT_OK(t->ops->read(t, 3, key, dest, NULL, &out_len, on_done, &r));
        run_until(&loop, &r.done);
        ASSERT_EQ_INT(r.status, 0);
        ASSERT_EQ_U64(out_len, sizeof(block));
        ASSERT_EQ_U64(g_dest_asked, sizeof(block));
        ASSERT_MEM_EQ(g_dest, block, sizeof(block));
        tqkv_tier_info info;
        t->ops->info(t, &info);
        ASSERT_EQ_U64(info.entries, pass == 0 ? 2 : 1);
        ASSERT_EQ_U64(info.capacity, 64u << 20);
        ASSERT_TRUE(info.used > 0);
        if (pass == 0) {
            done_t d = {0};
            ASSERT_OK(t->ops->remove(t, 3, key2, on_done, &d));
            run_until(&loop, &d.done);
            ASSERT_EQ_INT(d.status, 0);
            done_t d2 = {0};
            ASSERT_OK(t->ops->remove(t, 3, key2, on_done, &d2));
            run_until(&loop, &d2.done);
            ASSERT_EQ_INT(d2.status, TQKV_TIER_MISS);
        }
        done_t m = {0};
        ASSERT_OK(t->ops->read(t, 3, key2, dest, NULL, &out_len, on_done, &m));
        run_until(&loop, &m.done);
        ASSERT_EQ_INT(m.status, TQKV_TIER_MISS);
        ASSERT_ERR(t->ops->set_capacity(t, 1024), TQKV_ERANGE);
        ASSERT_OK(t->ops->set_capacity(t, 128u << 20));
        t->ops->destroy(t);
        uv_run(&loop, UV_RUN_DEFAULT); /* the async handle's close callback frees the tier */
    }
    ASSERT_EQ_INT(uv_loop_close(&loop), 0);
    nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

static const tqkv_test_case cases[] = {
    {"tier_roundtrip", test_tier_roundtrip},
    {NULL, NULL},
};

int main(int argc, char **argv)
{
    return tqkv_test_main(argc, argv, cases);
}
