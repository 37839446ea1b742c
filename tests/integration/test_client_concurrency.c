/* Concurrency test of tqkvd through libtqkv: 32 clients, each on its own thread and connection,
 * run 1000 mixed operations (raw and encoded PUT, batched GET, LOOKUP, DELETE, PUTs and GETs of
 * keys shared by every client) and check every answer against what that client knows must be
 * true: a GET of a key it stored returns exactly the block libtq encodes, a key it deleted
 * misses, LOOKUP counts the leading keys it holds. The host tier is large enough that nothing is
 * evicted, so every answer is determined. */
#include <pthread.h>

#include "test_client_util.h"
#include "tqkv_test.h"

#define N_CLIENTS 32
#define N_OPS 1000
#define N_KEYS 48   /* private keys per client */
#define N_SHARED 16 /* keys every client writes and reads */

static tqkvd_harness daemon_h;
static tc_geom geom;
static uint16_t *raws[4]; /* the KV of key k is raws[k % 4] */
static void *shared_blk[N_SHARED];
static size_t shared_len[N_SHARED];

typedef struct {
    int id;
    int failures;
    char why[256];
    uint64_t ops;
} worker;

#define WFAIL(w, ...)                                                                              \
    do {                                                                                           \
        if (!(w)->failures++)                                                                      \
            snprintf((w)->why, sizeof((w)->why), __VA_ARGS__);                                     \
        goto out;                                                                                  \
    } while (0)

static void *run_worker(void *arg)
{
    worker *w = arg;
    tqkv_key keys[N_KEYS], skeys[N_SHARED];
    void *blk[N_KEYS] = {0};
    size_t blen[N_KEYS];
    int have[N_KEYS] = {0};
    uint64_t rnd = 0x1234567ull + (uint64_t)w->id * 7919;
    tqkv_client *c = tc_connect(w->id % 2 ? daemon_h.unix_url : daemon_h.tcp_url, NULL);
    if (!c)
        WFAIL(w, "connect failed");
    if (tc_register(c, "conc", &geom))
        WFAIL(w, "register: %s", tqkv_errmsg(c));
    for (int k = 0; k < N_KEYS; k++) {
        keys[k] = tc_key((uint32_t)k, 1000 + (uint32_t)w->id);
        blk[k] = tc_encode(&geom, &keys[k], raws[k % 4], geom.tokens, &blen[k]);
        if (!blk[k])
            WFAIL(w, "local encode failed");
    }
    for (int k = 0; k < N_SHARED; k++)
        skeys[k] = tc_key((uint32_t)k, 999);
    const size_t raw_len = tc_raw_len(&geom, geom.tokens);

    for (int op = 0; op < N_OPS; op++) {
        unsigned r = (unsigned)(tc_rand(&rnd) % 100);
        int k = (int)(tc_rand(&rnd) % N_KEYS);
        int rc;
        if (r < 20) { /* raw PUT: the daemon encodes */
            tqkv_put_item it = {.key = keys[k], .data = raws[k % 4], .len = raw_len,
                                .n_tokens = geom.tokens};
            int st = 1;
            if ((rc = tqkv_put_raw(c, "conc", &it, 1, &st)) || st)
                WFAIL(w, "op %d put_raw: %s", op, tqkv_errmsg(c));
            have[k] = 1;
        } else if (r < 35) { /* encoded PUT of 1..4 consecutive keys */
            tqkv_put_item it[4];
            int n = 1 + (int)(tc_rand(&rnd) % 4);
            for (int j = 0; j < n; j++) {
                int kk = (k + j) % N_KEYS;
                it[j] = (tqkv_put_item){.key = keys[kk], .data = blk[kk], .len = blen[kk]};
            }
            if ((rc = tqkv_put_blocks(c, "conc", it, (size_t)n, NULL)))
                WFAIL(w, "op %d put_blocks: %s", op, tqkv_errmsg(c));
            for (int j = 0; j < n; j++)
                have[(k + j) % N_KEYS] = 1;
        } else if (r < 60) { /* batched GET of 1..6 keys */
            tqkv_key gk[6];
            int idx[6];
            tqkv_get_item gi[6];
            int n = 1 + (int)(tc_rand(&rnd) % 6);
            memset(gi, 0, sizeof(gi));
            for (int j = 0; j < n; j++) {
                idx[j] = (k + 5 * j) % N_KEYS;
                gk[j] = keys[idx[j]];
            }
            tqkv_get_options o = {.keys_per_request = 1 + (uint32_t)(tc_rand(&rnd) % 3)};
            rc = tqkv_get(c, "conc", gk, (size_t)n, &o, gi);
            int bad = rc ? -2 : -1;
            for (int j = 0; !rc && j < n && bad < 0; j++) {
                int i = idx[j];
                if (have[i] && (gi[j].status || gi[j].len != blen[i] ||
                                memcmp(gi[j].data, blk[i], blen[i]) != 0))
                    bad = j;
                if (!have[i] && gi[j].status != TQKV_ENOENT)
                    bad = j;
            }
            tqkv_get_items_release(gi, (size_t)n);
            if (bad != -1)
                WFAIL(w, "op %d get: rc %d, wrong answer for item %d", op, rc, bad);
        } else if (r < 75) { /* LOOKUP of a run of keys */
            int n = 1 + (int)(tc_rand(&rnd) % 8);
            if (k + n > N_KEYS)
                n = N_KEYS - k;
            uint32_t hits = 0, want = 0;
            while ((int)want < n && have[k + (int)want])
                want++;
            if ((rc = tqkv_lookup(c, "conc", keys + k, (size_t)n, 0, &hits, NULL, NULL)))
                WFAIL(w, "op %d lookup: %s", op, tqkv_errmsg(c));
            if (hits != want)
                WFAIL(w, "op %d lookup: %u hits, want %u", op, hits, want);
        } else if (r < 85) { /* DELETE */
            int st = 1;
            if ((rc = tqkv_delete(c, "conc", &keys[k], 1, &st)))
                WFAIL(w, "op %d delete: %s", op, tqkv_errmsg(c));
            if (st != (have[k] ? 0 : TQKV_ENOENT))
                WFAIL(w, "op %d delete: status %d with have=%d", op, st, have[k]);
            have[k] = 0;
        } else { /* shared keys: everyone PUTs the same blocks (idempotent) and GETs them */
            int s = k % N_SHARED;
            tqkv_put_item it = {.key = skeys[s], .data = shared_blk[s], .len = shared_len[s]};
            if ((rc = tqkv_put_blocks(c, "conc", &it, 1, NULL)))
                WFAIL(w, "op %d shared put: %s", op, tqkv_errmsg(c));
            tqkv_get_item gi;
            memset(&gi, 0, sizeof(gi));
            rc = tqkv_get(c, "conc", &skeys[s], 1, NULL, &gi);
            int ok = !rc && gi.status == 0 && gi.len == shared_len[s] &&
                     memcmp(gi.data, shared_blk[s], gi.len) == 0;
            tqkv_get_items_release(&gi, 1);
            if (!ok)
                WFAIL(w, "op %d shared get: rc %d", op, rc);
        }
        w->ops++;
    }
out:
    for (int k = 0; k < N_KEYS; k++)
        free(blk[k]);
    tqkv_close(c);
    return NULL;
}

static void test_32_clients_1000_ops(void)
{
    pthread_t th[N_CLIENTS];
    static worker ws[N_CLIENTS];
    for (int i = 0; i < N_CLIENTS; i++) {
        memset(&ws[i], 0, sizeof(ws[i]));
        ws[i].id = i;
        ASSERT_EQ_INT(pthread_create(&th[i], NULL, run_worker, &ws[i]), 0);
    }
    uint64_t total = 0;
    int failed = 0;
    for (int i = 0; i < N_CLIENTS; i++) {
        pthread_join(th[i], NULL);
        total += ws[i].ops;
        if (ws[i].failures) {
            failed++;
            fprintf(stderr, "client %d: %s\n", i, ws[i].why);
        }
    }
    ASSERT_EQ_INT(failed, 0);
    ASSERT_EQ_U64(total, (uint64_t)N_CLIENTS * N_OPS);
    ASSERT_EQ_INT(tqkvd_harness_alive(&daemon_h), 1);
}

static const tqkv_test_case cases[] = {
    {"32_clients_1000_ops", test_32_clients_1000_ops},
    {NULL, NULL},
};

int main(int argc, char **argv)
{
    static const char *const args[] = {"--host-capacity", "256M", "--encode-device", "cpu",
                                       NULL};
    geom = tc_geom_small("tq4");
    for (int i = 0; i < 4; i++)
        raws[i] = tc_make_raw(&geom, geom.tokens, 500 + (uint64_t)i);
    for (int k = 0; k < N_SHARED; k++) {
        tqkv_key sk = tc_key((uint32_t)k, 999);
        shared_blk[k] = tc_encode(&geom, &sk, raws[k % 4], geom.tokens, &shared_len[k]);
    }
    if (tc_start(&daemon_h, args))
        return 1;
    int rc = tqkv_test_main(argc, argv, cases);
    if (rc == 1)
        tqkvd_harness_dump_log(&daemon_h);
    if (tqkvd_harness_stop(&daemon_h) != 0) {
        fprintf(stderr, "tqkvd did not shut down cleanly\n");
        rc = 1;
    }
    for (int i = 0; i < 4; i++)
        free(raws[i]);
    for (int k = 0; k < N_SHARED; k++)
        free(shared_blk[k]);
    return rc;
}
