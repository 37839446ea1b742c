/* The put storm: four times the host capacity of ~1 MiB encoded blocks written into a tqkvd with
 * a 64 MiB host tier. The daemon's resident memory (VmRSS from /proc/PID/status, sampled every
 * 2 ms by a thread during the storm, and after it) must stay within capacity + 10% + 64 MiB, and
 * every block still present must read back byte-identical to what was written (blocks are
 * regenerated from their index to compare, so the test holds few at a time). The storm runs once
 * one block per call and once pipelined (32 blocks per batch call, one batched GET to check). */
#include <pthread.h>
#include <time.h>

#include "test_client_util.h"
#include "tqkv_test.h"

#define CAPACITY (64ull << 20)

static tqkvd_harness daemon_h;
static tqkv_client *cl;

static uint64_t rss_bytes(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    uint64_t kb = 0;
    while (f && fgets(line, sizeof(line), f))
        if (sscanf(line, "VmRSS: %" SCNu64 " kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb << 10;
}

/* Samples the daemon's VmRSS every 2 ms on its own thread, so peaks inside a batch count too. */
typedef struct {
    pthread_t th;
    volatile int stop;
    uint64_t max;
} rss_sampler;

static void *sample_main(void *arg)
{
    rss_sampler *s = arg;
    while (!s->stop) {
        uint64_t r = rss_bytes(daemon_h.pid);
        if (r > s->max)
            s->max = r;
        struct timespec ts = {0, 2 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

static int sampler_start(rss_sampler *s)
{
    memset(s, 0, sizeof(*s));
    return pthread_create(&s->th, NULL, sample_main, s);
}

static uint64_t sampler_stop(rss_sampler *s)
{
    s->stop = 1;
    pthread_join(s->th, NULL);
    return s->max;
}

/* 8 layers x 2 x 32 tokens x 8 heads x 128 x 2 bytes = 1 MiB of fp16 KV per block (tq4: ~270 KiB
 * encoded; fp16 preset: ~1 MiB). The storm uses the fp16 preset so it moves 4x the capacity. */
static tc_geom storm_geom(void)
{
    tc_geom g = {8, 8, 128, 32, "fp16"};
    return g;
}

static void *make_block(const tc_geom *g, uint32_t i, tqkv_key *key, size_t *len)
{
    *key = tc_key(i, 77);
    uint16_t *raw = tc_make_raw(g, g->tokens, 9000 + i);
    void *blk = raw ? tc_encode(g, key, raw, g->tokens, len) : NULL;
    free(raw);
    return blk;
}

static void test_put_storm(void)
{
    tc_geom g = storm_geom();
    ASSERT_OK(tc_register(cl, "storm", &g));
    tqkv_key key;
    size_t len = 0;
    void *probe = make_block(&g, 0, &key, &len);
    ASSERT_TRUE(probe != NULL);
    free(probe);
    const uint32_t n_blocks = (uint32_t)(4 * CAPACITY / len) + 1;
    const uint64_t limit = CAPACITY + CAPACITY / 10 + (64ull << 20);
    rss_sampler smp;
    ASSERT_EQ_INT(sampler_start(&smp), 0);
    for (uint32_t i = 0; i < n_blocks; i++) {
        void *blk = make_block(&g, i, &key, &len);
        tqkv_put_item it = {.key = key, .data = blk, .len = len};
        int st = 1;
        int rc = blk ? tqkv_put_blocks(cl, "storm", &it, 1, &st) : TQKV_ENOMEM;
        free(blk);
        if (rc) {
            sampler_stop(&smp);
            TQKV__FAIL("put %u of %u: %s", i, n_blocks, tqkv_errmsg(cl));
        }
    }
    uint64_t max_rss = sampler_stop(&smp);
    fprintf(stderr, "storm: %u blocks of %zu bytes (%.0f MiB), daemon max VmRSS %.1f MiB, "
                    "limit %.1f MiB\n",
            n_blocks, len, (double)n_blocks * (double)len / 1048576.0,
            (double)max_rss / 1048576.0, (double)limit / 1048576.0);
    ASSERT_TRUE(max_rss > 0);
    ASSERT_LE(max_rss, limit);

    /* Every block still present reads back intact; enough of them are present. */
    uint32_t n_present = 0;
    for (uint32_t i = 0; i < n_blocks; i++) {
        tqkv_key k = tc_key(i, 77);
        tqkv_get_item gi;
        memset(&gi, 0, sizeof(gi));
        int rc = tqkv_get(cl, "storm", &k, 1, NULL, &gi);
        int ok = rc == 0 && (gi.status == 0 || gi.status == TQKV_ENOENT);
        if (ok && gi.status == 0) { /* present: regenerate what was written and compare */
            n_present++;
            void *want = make_block(&g, i, &key, &len);
            ok = want && gi.len == len && memcmp(gi.data, want, len) == 0;
            free(want);
        }
        tqkv_get_items_release(&gi, 1);
        if (!ok)
            TQKV__FAIL("block %u: rc %d, not intact", i, rc);
    }
    fprintf(stderr, "storm: %u of %u blocks still present\n", n_present, n_blocks);
    /* the newest blocks (at least half a capacity's worth) must have survived */
    ASSERT_TRUE((uint64_t)n_present * len >= CAPACITY / 2);
    ASSERT_LE(rss_bytes(daemon_h.pid), limit);
}

/* The same storm, pipelined: 32 blocks per batch call (several requests in flight on the
 * connection while the daemon evicts), then every key fetched back in one batched GET. */
static void test_pipelined_put_storm(void)
{
    enum { GROUP = 32 };
    tc_geom g = storm_geom();
    ASSERT_OK(tc_register(cl, "storm-batch", &g));
    tqkv_key key;
    size_t len = 0;
    void *probe = make_block(&g, 0, &key, &len);
    ASSERT_TRUE(probe != NULL);
    free(probe);
    const uint32_t n_blocks = (uint32_t)((4 * CAPACITY / len + GROUP) / GROUP * GROUP);
    const uint64_t limit = CAPACITY + CAPACITY / 10 + (64ull << 20);
    tqkv_put_item items[GROUP];
    int st[GROUP];
    rss_sampler smp;
    ASSERT_EQ_INT(sampler_start(&smp), 0);
    for (uint32_t first = 0; first < n_blocks; first += GROUP) {
        for (uint32_t k = 0; k < GROUP; k++) {
            size_t l = 0;
            void *blk = make_block(&g, 100000 + first + k, &items[k].key, &l);
            if (!blk) {
                sampler_stop(&smp);
                while (k-- > 0)
                    free((void *)items[k].data);
                TQKV__FAIL("cannot make block %u", first);
            }
            items[k].data = blk;
            items[k].len = l;
            items[k].n_tokens = 0;
        }
        int rc = tqkv_put_blocks(cl, "storm-batch", items, GROUP, st);
        for (uint32_t k = 0; k < GROUP; k++)
            free((void *)items[k].data);
        if (rc) {
            sampler_stop(&smp);
            TQKV__FAIL("batch at %u: %s", first, tqkv_errmsg(cl));
        }
    }
    uint64_t max_rss = sampler_stop(&smp);
    fprintf(stderr, "pipelined storm: %u blocks, daemon max VmRSS %.1f MiB, limit %.1f MiB\n",
            n_blocks, (double)max_rss / 1048576.0, (double)limit / 1048576.0);
    ASSERT_LE(max_rss, limit);

    tqkv_key *keys = calloc(n_blocks, sizeof(*keys));
    tqkv_get_item *gi = calloc(n_blocks, sizeof(*gi));
    ASSERT_TRUE(keys && gi);
    for (uint32_t i = 0; i < n_blocks; i++)
        keys[i] = tc_key(100000 + i, 77);
    tqkv_get_options o = {.keys_per_request = 8};
    int rc = tqkv_get(cl, "storm-batch", keys, n_blocks, &o, gi);
    uint32_t n_present = 0, bad = 0;
    for (uint32_t i = 0; !rc && i < n_blocks; i++) {
        if (gi[i].status == TQKV_ENOENT)
            continue;
        if (gi[i].status) {
            bad++;
            continue;
        }
        n_present++;
        void *want = make_block(&g, 100000 + i, &key, &len);
        bad += !want || gi[i].len != len || memcmp(gi[i].data, want, len) != 0;
        free(want);
    }
    tqkv_get_items_release(gi, n_blocks);
    free(gi);
    free(keys);
    ASSERT_OK(rc);
    ASSERT_EQ_INT(bad, 0);
    fprintf(stderr, "pipelined storm: %u of %u blocks still present\n", n_present, n_blocks);
    ASSERT_TRUE((uint64_t)n_present * len >= CAPACITY / 2);
    ASSERT_LE(rss_bytes(daemon_h.pid), limit);
}

static const tqkv_test_case cases[] = {
    {"put_storm", test_put_storm},
    {"pipelined_put_storm", test_pipelined_put_storm},
    {NULL, NULL},
};

int main(int argc, char **argv)
{
    static const char *const args[] = {"--host-capacity", "64M", "--encode-device", "cpu", NULL};
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
