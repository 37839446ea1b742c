/* Integration tests of the Redis engine against a real 3-master Redis Cluster started here
 * (redis-server --cluster-enabled yes x3 on random loopback ports, joined with redis-cli --cluster
 * create): round trips across slots from a single seed, MOVED after a slot migration the engine
 * has not heard of, ASK while the slot is migrating, the directory operations, clearing, a master
 * killed and restarted; and a 3+3 cluster with replicas where a replica is promoted. */
#include "redis_harness.h"
#include "tqkv_log.h"
#include "tqkv_redis.h"
#include "tqkv_test.h"

#include <signal.h>

static uv_loop_t loop;
static int pending;
static tqkv_test_redis_cluster cl;
static int cluster_up; /* started once, shared by the cases */

typedef struct {
    int status;
    size_t len;
    uint8_t *data;
} result;

static void done_cb(void *arg, int status)
{
    ((result *)arg)->status = status;
    pending--;
}

static void get_cb(void *arg, int status, const void *data, size_t len)
{
    result *r = arg;
    r->status = status;
    r->len = len;
    r->data = NULL;
    if (status == 1) {
        r->data = malloc(len ? len : 1);
        memcpy(r->data, data, len);
    }
    pending--;
}

static int wait_result(int rc, result *r)
{
    if (rc < 0) return rc;
    pending++;
    if (tqkv_test_loop_wait(&loop, &pending, 20) < 0) return -10000;
    return r->status;
}

static uint64_t rng = 0x2545F4914F6CDD1Dull;
static uint64_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void fill_random(uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)next_rand();
}

/* A random block key whose Redis key lies in `slot` (-1: any slot). */
static void key_in_slot(uint8_t key[32], int slot)
{
    char rkey[256];
    for (;;) {
        fill_random(key, 32);
        int n = tqkv_redis_block_key("tqkv", "ns", key, 32, rkey, sizeof(rkey));
        if (slot < 0 || tqkv_redis_key_slot(rkey, (size_t)n) == slot) return;
    }
}

#define NEED_CLUSTER()                                                                             \
    do {                                                                                           \
        if (!tqkv_test_redis_available()) TEST_SKIP("redis-server not installed");                 \
        if (!cluster_up) {                                                                         \
            ASSERT_TRUE(tqkv_test_redis_cluster_start(&cl, 3) == 0);                               \
            cluster_up = 1;                                                                        \
        }                                                                                          \
    } while (0)

/* An engine that knows only node 0: the rest of the cluster is learnt (CLUSTER SLOTS, MOVED). */
/* Send window for the next engine_from_seed (0: the default). */
static uint64_t next_window;

static tqkv_redis *engine_from_seed(char *addr, size_t cap, const char **nodes)
{
    tqkv_redis_config cfg;
    tqkv_redis_config_default(&cfg);
    snprintf(addr, cap, "127.0.0.1:%d", cl.node[0].port);
    nodes[0] = addr;
    cfg.nodes = nodes;
    cfg.n_nodes = 1;
    cfg.cluster = 1;
    cfg.timeout_ms = 2000;
    cfg.backoff_min_ms = 20;
    cfg.backoff_max_ms = 200;
    if (next_window) cfg.send_window_bytes = next_window;
    tqkv_redis *e = NULL;
    return tqkv_redis_create(&loop, &cfg, &e) == 0 ? e : NULL;
}

static tqkv_redis_stats stats_of(tqkv_redis *e)
{
    tqkv_redis_stats st;
    tqkv_redis_get_stats(e, &st);
    return st;
}

static long long dbsize(int port)
{
    redisReply *r = tqkv_test_redis_cmd(port, NULL, "DBSIZE");
    long long v = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    if (r) freeReplyObject(r);
    return v;
}

static void test_roundtrip_across_slots(void)
{
    NEED_CLUSTER();
    char addr[64];
    const char *nodes[1];
    tqkv_redis *e = engine_from_seed(addr, sizeof(addr), nodes);
    ASSERT_TRUE(e != NULL);
    enum { N = 150, LEN = 2000 };
    static uint8_t keys[N][32], vals[N][LEN];
    static result res[N];
    long long before[3];
    for (int i = 0; i < 3; i++)
        before[i] = dbsize(cl.node[i].port);
    /* Submitted at once, before the slot map is known: those for other masters are MOVED. */
    for (int i = 0; i < N; i++) {
        key_in_slot(keys[i], -1);
        fill_random(vals[i], LEN);
        ASSERT_OK(tqkv_redis_put(e, "ns", keys[i], 32, vals[i], LEN, done_cb, &res[i]));
        pending++;
    }
    ASSERT_OK(tqkv_test_loop_wait(&loop, &pending, 30));
    for (int i = 0; i < N; i++)
        ASSERT_EQ_INT(res[i].status, 0);
    /* The map refresh that the first MOVED asks for is a reply of its own, which may come after
     * the last PUT's: wait for it (a guard, not a timing). */
    for (int i = 0; i < 1000 && stats_of(e).slot_refreshes == 0; i++)
        tqkv_test_loop_for(&loop, 10);
    tqkv_redis_stats st = stats_of(e);
    ASSERT_TRUE(st.moved > 0);
    ASSERT_TRUE(st.slot_refreshes >= 1);
    ASSERT_EQ_INT(st.nodes_total, 3);
    ASSERT_EQ_INT(st.nodes_up, 3);
    ASSERT_EQ_INT(st.state, TQKV_REDIS_UP);
    long long added = 0;
    for (int i = 0; i < 3; i++) {
        long long d = dbsize(cl.node[i].port) - before[i];
        ASSERT_TRUE(d > 0); /* every master got some of them */
        added += d;
    }
    ASSERT_EQ_INT(added, N);

    /* With the map loaded, GETs go straight to the owners. */
    uint64_t moved = st.moved;
    for (int i = 0; i < N; i++) {
        ASSERT_OK(tqkv_redis_get(e, "ns", keys[i], 32, get_cb, &res[i]));
        pending++;
    }
    ASSERT_OK(tqkv_test_loop_wait(&loop, &pending, 30));
    for (int i = 0; i < N; i++) {
        ASSERT_EQ_INT(res[i].status, 1);
        ASSERT_EQ_U64(res[i].len, LEN);
        ASSERT_MEM_EQ(res[i].data, vals[i], LEN);
        free(res[i].data);
    }
    st = stats_of(e);
    ASSERT_EQ_U64(st.moved, moved);
    ASSERT_EQ_U64(st.hits, N);
    tqkv_redis_destroy(e);
    tqkv_test_loop_for(&loop, 5);
}

static int ok_reply(redisReply *r)
{
    int ok = r && r->type == REDIS_REPLY_STATUS;
    if (r && !ok)
        fprintf(stderr, "reply: %s\n", r->type == REDIS_REPLY_ERROR ? r->str : "(unexpected)");
    if (r) freeReplyObject(r);
    return ok;
}

static void moved_and_ask_body(void);

static void test_moved_and_ask(void)
{
    next_window = 0;
    moved_and_ask_body();
}

/* The same with a one-byte send window: every request but one waits in the engine, so the
 * redirected ones (ASKING included) go out from the waiting list. */
static void test_moved_and_ask_windowed(void)
{
    next_window = 1;
    moved_and_ask_body();
    next_window = 0;
}

static void moved_and_ask_body(void)
{
    NEED_CLUSTER();
    char addr[64];
    const char *nodes[1];
    tqkv_redis *e = engine_from_seed(addr, sizeof(addr), nodes);
    ASSERT_TRUE(e != NULL);
    /* Load the map first, so that what follows is a map gone stale. */
    uint8_t warm[32];
    key_in_slot(warm, -1);
    result r = {0};
    ASSERT_EQ_INT(wait_result(tqkv_redis_put(e, "ns", warm, 32, "w", 1, done_cb, &r), &r), 0);
    for (int i = 0; i < 1000 && stats_of(e).slot_refreshes == 0; i++)
        tqkv_test_loop_for(&loop, 10);
    ASSERT_TRUE(stats_of(e).slot_refreshes >= 1);

    int slot = (int)(next_rand() % TQKV_REDIS_SLOTS);
    int a = tqkv_test_redis_cluster_owner(&cl, slot);
    ASSERT_TRUE(a >= 0);
    int b = (a + 1) % 3;
    char id_a[41], id_b[41];
    ASSERT_TRUE(tqkv_test_redis_cluster_id(&cl, a, id_a) == 0);
    ASSERT_TRUE(tqkv_test_redis_cluster_id(&cl, b, id_b) == 0);
    uint8_t k1[32], k2[32], v1[3000], v2[3000];
    key_in_slot(k1, slot);
    key_in_slot(k2, slot);
    fill_random(v1, sizeof(v1));
    fill_random(v2, sizeof(v2));
    ASSERT_EQ_INT(wait_result(tqkv_redis_put(e, "ns", k1, 32, v1, sizeof(v1), done_cb, &r), &r), 0);

    /* Slot migrating from a to b. */
    int pa = cl.node[a].port, pb = cl.node[b].port;
    ASSERT_TRUE(
        ok_reply(tqkv_test_redis_cmd(pb, NULL, "CLUSTER SETSLOT %d IMPORTING %s", slot, id_a)));
    ASSERT_TRUE(
        ok_reply(tqkv_test_redis_cmd(pa, NULL, "CLUSTER SETSLOT %d MIGRATING %s", slot, id_b)));
    /* k2 and four more new keys of the slot, all at once: none exists on a, so a answers ASK
     * and the engine writes them on b with ASKING (with a small send window, from b's waiting
     * list). */
    tqkv_redis_stats s0 = stats_of(e);
    enum { X = 4 };
    uint8_t kx[X][32];
    result rx[X + 1];
    memset(rx, 0, sizeof(rx));
    ASSERT_OK(tqkv_redis_put(e, "ns", k2, 32, v2, sizeof(v2), done_cb, &rx[X]));
    pending++;
    for (int j = 0; j < X; j++) {
        key_in_slot(kx[j], slot);
        ASSERT_OK(tqkv_redis_put(e, "ns", kx[j], 32, v2, 100 + (size_t)j, done_cb, &rx[j]));
        pending++;
    }
    ASSERT_OK(tqkv_test_loop_wait(&loop, &pending, 20));
    for (int j = 0; j <= X; j++)
        ASSERT_EQ_INT(rx[j].status, 0);
    ASSERT_EQ_U64(stats_of(e).ask, s0.ask + X + 1);
    for (int j = 0; j < X; j++) {
        ASSERT_OK(tqkv_redis_get(e, "ns", kx[j], 32, get_cb, &rx[j]));
        pending++;
    }
    ASSERT_OK(tqkv_test_loop_wait(&loop, &pending, 20));
    for (int j = 0; j < X; j++) {
        ASSERT_EQ_INT(rx[j].status, 1);
        ASSERT_EQ_U64(rx[j].len, 100 + (size_t)j);
        ASSERT_MEM_EQ(rx[j].data, v2, rx[j].len);
        free(rx[j].data);
    }
    ASSERT_EQ_U64(stats_of(e).ask, s0.ask + 2 * X + 1);
    s0.ask += 2 * X;
    result g = {0};
    ASSERT_EQ_INT(wait_result(tqkv_redis_get(e, "ns", k2, 32, get_cb, &g), &g), 1);
    ASSERT_MEM_EQ(g.data, v2, sizeof(v2));
    free(g.data);
    ASSERT_EQ_U64(stats_of(e).ask, s0.ask + 2);
    /* k1 is still on a: served there. */
    ASSERT_EQ_INT(wait_result(tqkv_redis_get(e, "ns", k1, 32, get_cb, &g), &g), 1);
    ASSERT_MEM_EQ(g.data, v1, sizeof(v1));
    free(g.data);
    ASSERT_EQ_U64(stats_of(e).ask, s0.ask + 2);

    /* Move k1, finish the migration: the engine's map is now wrong about the slot. */
    char rk1[256];
    tqkv_redis_block_key("tqkv", "ns", k1, 32, rk1, sizeof(rk1));
    ASSERT_TRUE(ok_reply(
        tqkv_test_redis_cmd(pa, NULL, "MIGRATE 127.0.0.1 %d %s 0 5000 KEYS %s", pb, "", rk1)));
    ASSERT_TRUE(ok_reply(tqkv_test_redis_cmd(pb, NULL, "CLUSTER SETSLOT %d NODE %s", slot, id_b)));
    ASSERT_TRUE(ok_reply(tqkv_test_redis_cmd(pa, NULL, "CLUSTER SETSLOT %d NODE %s", slot, id_b)));
    ASSERT_TRUE(ok_reply(tqkv_test_redis_cmd(cl.node[3 - a - b].port, NULL,
                                             "CLUSTER SETSLOT %d NODE %s", slot, id_b)));
    tqkv_redis_stats s1 = stats_of(e);
    ASSERT_EQ_INT(wait_result(tqkv_redis_get(e, "ns", k1, 32, get_cb, &g), &g), 1);
    ASSERT_MEM_EQ(g.data, v1, sizeof(v1));
    free(g.data);
    ASSERT_EQ_U64(stats_of(e).moved, s1.moved + 1);
    /* The slot is now mapped to b: no more redirection. */
    ASSERT_EQ_INT(wait_result(tqkv_redis_get(e, "ns", k2, 32, get_cb, &g), &g), 1);
    free(g.data);
    ASSERT_EQ_U64(stats_of(e).moved, s1.moved + 1);
    ASSERT_EQ_U64(stats_of(e).errors, 0);
    ASSERT_EQ_U64(stats_of(e).corrupt, 0);
    tqkv_redis_destroy(e);
    tqkv_test_loop_for(&loop, 5);
}

static void test_directory(void)
{
    NEED_CLUSTER();
    char addr[64];
    const char *nodes[1];
    tqkv_redis *e = engine_from_seed(addr, sizeof(addr), nodes);
    ASSERT_TRUE(e != NULL);
    result r = {0};
    /* Records under one hash tag share a slot (and a master). */
    ASSERT_EQ_INT(tqkv_redis_key_slot("tqkv:{dir}:node:a", 17), tqkv_redis_key_slot("dir", 3));
    ASSERT_EQ_INT(
        wait_result(tqkv_redis_kv_set(e, "{dir}:node:a", "up", 2, 10000, done_cb, &r), &r), 0);
    ASSERT_EQ_INT(wait_result(tqkv_redis_set_add(e, "{dir}:members", "a", 1, done_cb, &r), &r), 1);
    result g = {0};
    ASSERT_EQ_INT(wait_result(tqkv_redis_kv_get(e, "{dir}:node:a", get_cb, &g), &g), 1);
    ASSERT_MEM_EQ(g.data, "up", 2);
    free(g.data);
    ASSERT_EQ_INT(wait_result(tqkv_redis_kv_del(e, "{dir}:node:a", done_cb, &r), &r), 1);
    ASSERT_EQ_INT(wait_result(tqkv_redis_set_rem(e, "{dir}:members", "a", 1, done_cb, &r), &r), 1);
    tqkv_redis_destroy(e);
    tqkv_test_loop_for(&loop, 5);
}

static void test_key_slot_matches_redis(void)
{
    NEED_CLUSTER();
    for (int i = 0; i < 50; i++) {
        uint8_t key[32];
        char rkey[256];
        key_in_slot(key, -1);
        int n = tqkv_redis_block_key("tqkv", "ns", key, 32, rkey, sizeof(rkey));
        redisReply *rep = tqkv_test_redis_cmd(cl.node[0].port, NULL, "CLUSTER KEYSLOT %s", rkey);
        ASSERT_TRUE(rep && rep->type == REDIS_REPLY_INTEGER);
        long long want = rep->integer;
        freeReplyObject(rep);
        ASSERT_EQ_INT(tqkv_redis_key_slot(rkey, (size_t)n), want);
    }
}

static void test_clear(void)
{
    NEED_CLUSTER();
    char addr[64];
    const char *nodes[1];
    tqkv_redis *e = engine_from_seed(addr, sizeof(addr), nodes);
    ASSERT_TRUE(e != NULL);
    result r = {0};
    uint8_t key[32];
    enum { N = 300 };
    for (int i = 0; i < N; i++) {
        key_in_slot(key, -1);
        ASSERT_OK(tqkv_redis_put(e, "clr", key, 32, "v", 1, done_cb, &r));
        pending++;
    }
    ASSERT_OK(tqkv_test_loop_wait(&loop, &pending, 30));
    ASSERT_EQ_INT(r.status, 0);
    for (int i = 0; i < 1000 && stats_of(e).slot_refreshes == 0; i++)
        tqkv_test_loop_for(&loop, 10);
    ASSERT_EQ_INT(wait_result(tqkv_redis_clear(e, "clr", done_cb, &r), &r), N);
    ASSERT_EQ_INT(wait_result(tqkv_redis_clear(e, "clr", done_cb, &r), &r), 0);
    tqkv_redis_destroy(e);
    tqkv_test_loop_for(&loop, 5);
}

/* One master killed and restarted (before the cluster declares it failed): its slots fail fast,
 * the others keep serving, and the engine reconnects by itself. */
static void test_master_down(void)
{
    NEED_CLUSTER();
    char addr[64];
    const char *nodes[1];
    tqkv_redis *e = engine_from_seed(addr, sizeof(addr), nodes);
    ASSERT_TRUE(e != NULL);
    enum { N = 30 };
    uint8_t keys[N][32];
    int owner[N];
    char rkey[256];
    result r = {0}, g = {0};
    for (int i = 0; i < N; i++) {
        key_in_slot(keys[i], -1);
        int n = tqkv_redis_block_key("tqkv", "ns", keys[i], 32, rkey, sizeof(rkey));
        owner[i] = tqkv_test_redis_cluster_owner(&cl, tqkv_redis_key_slot(rkey, (size_t)n));
        ASSERT_EQ_INT(wait_result(tqkv_redis_put(e, "ns", keys[i], 32, "v", 1, done_cb, &r), &r),
                      0);
    }
    ASSERT_EQ_INT(stats_of(e).state, TQKV_REDIS_UP);
    const int victim = 2; /* not the seed */
    tqkv_test_redis_kill(&cl.node[victim]);
    int served = 0, failed = 0, wrong = 0;
    for (int i = 0; i < N; i++) {
        g.data = NULL;
        int st = wait_result(tqkv_redis_get(e, "ns", keys[i], 32, get_cb, &g), &g);
        free(g.data);
        if (owner[i] == victim)
            failed += st < 0;
        else
            served += st == 1;
        wrong += (owner[i] == victim) != (st < 0);
    }
    ASSERT_EQ_INT(wrong, 0);
    ASSERT_TRUE(served > 0 && failed > 0);
    ASSERT_EQ_INT(stats_of(e).state, TQKV_REDIS_DEGRADED);
    ASSERT_TRUE(tqkv_test_redis_restart(&cl.node[victim]) == 0);
    ASSERT_TRUE(tqkv_test_redis_cluster_wait(&cl) == 0); /* it rejoins from its nodes.conf */
    for (int i = 0; i < 500 && stats_of(e).state != TQKV_REDIS_UP; i++)
        tqkv_test_loop_for(&loop, 10);
    ASSERT_EQ_INT(stats_of(e).state, TQKV_REDIS_UP);
    ASSERT_TRUE(stats_of(e).reconnects >= 1);
    for (int i = 0; i < N; i++) {
        if (owner[i] != victim) continue;
        /* The restarted master lost its data (no persistence): write, then read back. */
        ASSERT_EQ_INT(wait_result(tqkv_redis_put(e, "ns", keys[i], 32, "w", 1, done_cb, &r), &r),
                      0);
        ASSERT_EQ_INT(wait_result(tqkv_redis_get(e, "ns", keys[i], 32, get_cb, &g), &g), 1);
        free(g.data);
    }
    tqkv_redis_destroy(e);
    tqkv_test_loop_for(&loop, 5);
}

/* "master" or "slave" (ROLE), and for a replica its master's port and link state. */
static int role_of(int port, int *master_port, int *linked)
{
    redisReply *r = tqkv_test_redis_cmd(port, NULL, "ROLE");
    int is_master = -1;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
        r->element[0]->type == REDIS_REPLY_STRING) {
        is_master = strcmp(r->element[0]->str, "master") == 0;
        if (!is_master && r->elements >= 4) {
            *master_port = (int)r->element[2]->integer;
            *linked = strcmp(r->element[3]->str, "connected") == 0;
        }
    }
    if (r) freeReplyObject(r);
    return is_master;
}

static void sleep_ms(int ms)
{
    tqkv_test_loop_for(&loop, ms);
}

/* A replica promoted by CLUSTER FAILOVER: the engine's map is stale for the old master's slots;
 * MOVED leads it to the new master and the refreshed map keeps three masters. */
static void failover_body(tqkv_test_redis_cluster *fc)
{
    /* A replica linked to its master (replication starts after the cluster is formed). */
    int rep = -1, mport = 0, linked = 0;
    for (int t = 0; t < 500 && rep < 0; t++) {
        for (int i = 0; i < fc->n && rep < 0; i++)
            if (role_of(fc->node[i].port, &mport, &linked) == 0 && linked) rep = i;
        if (rep < 0) sleep_ms(20);
    }
    ASSERT_TRUE(rep >= 0);
    char addr[64];
    const char *nodes[1];
    tqkv_redis_config cfg;
    tqkv_redis_config_default(&cfg);
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", mport);
    nodes[0] = addr;
    cfg.nodes = nodes;
    cfg.n_nodes = 1;
    cfg.cluster = 1;
    cfg.backoff_min_ms = 20;
    cfg.backoff_max_ms = 200;
    tqkv_redis *e = NULL;
    ASSERT_OK(tqkv_redis_create(&loop, &cfg, &e));

    /* Blocks owned by the master that will be demoted. */
    enum { N = 12 };
    uint8_t keys[N][32];
    char rkey[256];
    result r = {0}, g = {0};
    int mi = -1;
    for (int i = 0; i < fc->n; i++)
        if (fc->node[i].port == mport) mi = i;
    ASSERT_TRUE(mi >= 0);
    for (int i = 0; i < N; i++) {
        int slot;
        do {
            key_in_slot(keys[i], -1);
            int n = tqkv_redis_block_key("tqkv", "ns", keys[i], 32, rkey, sizeof(rkey));
            slot = tqkv_redis_key_slot(rkey, (size_t)n);
        } while (tqkv_test_redis_cluster_owner(fc, slot) != mi);
        ASSERT_EQ_INT(wait_result(tqkv_redis_put(e, "ns", keys[i], 32, "kv", 2, done_cb, &r), &r),
                      0);
    }
    tqkv_redis_stats s0 = stats_of(e);
    ASSERT_EQ_INT(s0.nodes_total, 3);

    /* Manual failover: the replica catches up with its master, then takes its slots over. */
    ASSERT_TRUE(ok_reply(tqkv_test_redis_cmd(fc->node[rep].port, NULL, "CLUSTER FAILOVER")));
    /* Promoted, and every node agrees that it owns the slots (the old master included, which
     * must now answer MOVED rather than serve or refuse). */
    int promoted = 0;
    int slot_m = tqkv_redis_key_slot(rkey, strlen(rkey));
    for (int t = 0; t < 500 && !promoted; t++) {
        promoted = role_of(fc->node[rep].port, &mport, &linked) == 1;
        for (int i = 0; i < fc->n && promoted; i++)
            promoted = tqkv_test_redis_cluster_owner_on(fc, i, slot_m) == rep;
        if (!promoted) sleep_ms(20);
    }
    ASSERT_TRUE(promoted);
    ASSERT_TRUE(tqkv_test_redis_cluster_wait(fc) == 0);

    for (int i = 0; i < N; i++) {
        g.data = NULL;
        ASSERT_EQ_INT(wait_result(tqkv_redis_get(e, "ns", keys[i], 32, get_cb, &g), &g), 1);
        ASSERT_MEM_EQ(g.data, "kv", 2);
        free(g.data);
    }
    tqkv_redis_stats s1 = stats_of(e);
    ASSERT_TRUE(s1.moved > s0.moved);
    for (int t = 0; t < 1000 && stats_of(e).slot_refreshes == s0.slot_refreshes; t++)
        sleep_ms(10);
    s1 = stats_of(e);
    ASSERT_TRUE(s1.slot_refreshes > s0.slot_refreshes);
    ASSERT_EQ_INT(s1.nodes_total, 3);
    ASSERT_EQ_INT(s1.state, TQKV_REDIS_UP);
    ASSERT_EQ_U64(s1.errors, 0);
    tqkv_redis_destroy(e);
    tqkv_test_loop_for(&loop, 5);
}

static void test_failover(void)
{
    if (!tqkv_test_redis_available()) TEST_SKIP("redis-server not installed");
    tqkv_test_redis_cluster fc;
    ASSERT_TRUE(tqkv_test_redis_cluster_start_replicas(&fc, 3, 1) == 0);
    failover_body(&fc);
    tqkv_test_redis_cluster_stop(&fc);
}

static const tqkv_test_case cases[] = {
    {"key_slot_matches_redis", test_key_slot_matches_redis},
    {"roundtrip_across_slots", test_roundtrip_across_slots},
    {"moved_and_ask", test_moved_and_ask},
    {"moved_and_ask_windowed", test_moved_and_ask_windowed},
    {"directory", test_directory},
    {"clear", test_clear},
    {"master_down", test_master_down},
    {"failover", test_failover},
    {NULL, NULL},
};

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    uv_loop_init(&loop);
    int rc = tqkv_test_main(argc, argv, cases);
    tqkv_test_redis_cluster_stop(&cl);
    uv_run(&loop, UV_RUN_NOWAIT);
    uv_loop_close(&loop);
    return rc;
}
