/* Two tqkvd daemons (two temp dirs, two ports) sharing one real redis-server started here: the
 * cluster view shows both; a namespace registered on A is usable on B and a conflicting one is
 * refused; a block put through A is a hit through B by peer fetch (when it is only in A's host
 * tier: Redis write-back; GET and LOOKUP) and by Redis (write-through); with Redis gone each node
 * keeps serving its own tiers (and peer fetch still works), and when Redis comes back the member
 * records return by themselves; a member killed with SIGKILL leaves the view once its record
 * expires.
 *
 * The cases run in order on the same daemons. Waits are bounded by generous deadlines (guards
 * against hanging, never timing assertions). */
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "redis_harness.h"
#include "test_client_util.h"
#include "tqkv_test.h"

static tqkv_test_redis redis_srv;
static tqkvd_harness node_a, node_b;
static int b_running;
static tqkv_client *ca, *cb; /* Unix-socket clients (admin: no admin token configured) */
static const char *const NS = "shared-ns";
static tc_geom geom;

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* The members' ids in c's cluster view, comma-separated into out. @return their count, -1. */
static int view(tqkv_client *c, char *out, size_t cap)
{
    tqkv_kv_list l;
    if (tqkv_cluster(c, &l) != 0)
        return -1;
    const char *n = tqkv_kv_list_get(&l, "members");
    int m = n ? atoi(n) : 0;
    out[0] = 0;
    for (int i = 0; i < m; i++) {
        char k[48];
        snprintf(k, sizeof(k), "member.%d.id", i);
        const char *id = tqkv_kv_list_get(&l, k);
        size_t len = strlen(out);
        snprintf(out + len, cap - len, "%s%s", len ? "," : "", id ? id : "?");
    }
    tqkv_kv_list_free(&l);
    return m;
}

/* Polls c's view until it has `want` members (at most 15 s). @return the last count. */
static int wait_members(tqkv_client *c, int want, char *ids, size_t cap)
{
    int n = -1;
    for (int i = 0; i < 300; i++) {
        n = view(c, ids, cap);
        if (n == want)
            break;
        sleep_ms(50);
    }
    return n;
}

static int put_one(tqkv_client *c, const tqkv_key *key, uint64_t seed)
{
    uint16_t *raw = tc_make_raw(&geom, geom.tokens, seed);
    if (!raw)
        return TQKV_ENOMEM;
    tqkv_put_item it = {.key = *key, .data = raw, .len = tc_raw_len(&geom, geom.tokens),
                        .n_tokens = geom.tokens};
    int st = 1;
    int rc = tqkv_put_raw(c, NS, &it, 1, &st);
    free(raw);
    return rc ? rc : st;
}

/* GET of one whole block: *tier and a malloc'd copy of the bytes (NULL on a miss). */
static int get_one(tqkv_client *c, const tqkv_key *key, uint8_t *tier, void **data, size_t *len)
{
    tqkv_get_item gi;
    memset(&gi, 0, sizeof(gi));
    *data = NULL;
    *len = 0;
    int rc = tqkv_get(c, NS, key, 1, NULL, &gi);
    *tier = gi.tier;
    if (rc == 0 && gi.status == 0 && gi.len) {
        *data = malloc(gi.len);
        if (*data)
            memcpy(*data, gi.data, gi.len);
        *len = gi.len;
    }
    if (rc == 0 && gi.status != 0 && gi.status != TQKV_ENOENT)
        rc = gi.status;
    tqkv_get_items_release(&gi, 1);
    return rc;
}

static void test_view_shows_both(void)
{
    char ids[256];
    ASSERT_EQ_INT(wait_members(ca, 2, ids, sizeof(ids)), 2);
    ASSERT_TRUE(strstr(ids, "node-a") && strstr(ids, "node-b"));
    ASSERT_EQ_INT(wait_members(cb, 2, ids, sizeof(ids)), 2);
    tqkv_kv_list l;
    ASSERT_OK(tqkv_cluster(ca, &l));
    const char *self = tqkv_kv_list_get(&l, "self");
    const char *en = tqkv_kv_list_get(&l, "enabled");
    int ok_self = self && !strcmp(self, "node-a"), ok_en = en && !strcmp(en, "1");
    /* every member advertises its TCP address and its tiers */
    int addrs = 0, host = 0;
    for (size_t i = 0; i < l.n; i++) {
        if (strstr(l.names[i], ".addr") && !strncmp(l.values[i], "127.0.0.1:", 10))
            addrs++;
        if (strstr(l.names[i], ".tiers") && strstr(l.values[i], "host"))
            host++;
    }
    tqkv_kv_list_free(&l);
    ASSERT_TRUE(ok_self);
    ASSERT_TRUE(ok_en);
    ASSERT_EQ_INT(addrs, 2);
    ASSERT_EQ_INT(host, 2);
}

/* `tqkv cluster` (table and --json) run against B lists both members. */
static void test_cli(void)
{
#ifdef TQKV_CLI_PATH
    char cmd[512], out[8192];
    const char *modes[] = {"--json cluster", "cluster"};
    for (int m = 0; m < 2; m++) {
        snprintf(cmd, sizeof(cmd), "%s --url %s %s", TQKV_CLI_PATH, node_b.unix_url, modes[m]);
        FILE *p = popen(cmd, "r");
        ASSERT_TRUE(p != NULL);
        size_t n = fread(out, 1, sizeof(out) - 1, p);
        out[n] = 0;
        int st = pclose(p);
        ASSERT_EQ_INT(st, 0);
        ASSERT_TRUE(strstr(out, "node-a") && strstr(out, "node-b"));
        if (m == 0)
            ASSERT_TRUE(strstr(out, "\"self\":\"node-b\"") && strstr(out, "\"hit_rate\":"));
        else
            ASSERT_TRUE(strstr(out, "(this node)") && strstr(out, "HIT_RATE"));
    }
#endif
}

static void test_namespace_shared(void)
{
    ASSERT_OK(tc_register(ca, NS, &geom));
    /* B never registered it: a LOOKUP there finds it through Redis (a miss, not an error) */
    tqkv_key k = tc_key(999, 5);
    uint32_t hits = 7;
    ASSERT_OK(tqkv_lookup(cb, NS, &k, 1, 0, &hits, NULL, NULL));
    ASSERT_EQ_INT(hits, 0);
    /* the same description on B is accepted; another geometry is a conflict */
    ASSERT_OK(tc_register(cb, NS, &geom));
    tc_geom other = geom;
    other.head_dim = 128;
    ASSERT_ERR(tc_register(cb, NS, &other), TQKV_ENSCONFLICT);
    /* a namespace nobody registered is still unknown */
    ASSERT_ERR(tqkv_lookup(cb, "never-registered", &k, 1, 0, &hits, NULL, NULL),
               TQKV_ENONAMESPACE);
    /* and a conflicting registration on a third name: first on B, then A disagrees */
    ASSERT_OK(tc_register(cb, "second-ns", &geom));
    ASSERT_ERR(tc_register(ca, "second-ns", &other), TQKV_ENSCONFLICT);
}

/* Two members registering one name with different geometries at the same instant: exactly one
 * wins (SET NX), the other answers TQKV_ENSCONFLICT. Without the atomic write both could win. */
typedef struct {
    tqkv_client *c;
    const char *name;
    tc_geom g;
    pthread_barrier_t *bar;
    int rc;
} race_arg;

static void *race_register(void *p)
{
    race_arg *a = p;
    pthread_barrier_wait(a->bar);
    a->rc = tc_register(a->c, a->name, &a->g);
    return NULL;
}

static void test_register_race(void)
{
    pthread_barrier_t bar;
    ASSERT_EQ_INT(pthread_barrier_init(&bar, NULL, 2), 0);
    tc_geom other = geom;
    other.head_dim = 128;
    for (int round = 0; round < 16; round++) {
        char name[32];
        snprintf(name, sizeof name, "race-%d", round);
        race_arg a = {ca, name, geom, &bar, 1}, b = {cb, name, other, &bar, 1};
        pthread_t th;
        ASSERT_EQ_INT(pthread_create(&th, NULL, race_register, &b), 0);
        race_register(&a);
        pthread_join(th, NULL);
        const int wins = (a.rc == 0) + (b.rc == 0);
        if (wins != 1)
            fprintf(stderr, "round %d: A %d, B %d\n", round, a.rc, b.rc);
        ASSERT_EQ_INT(wins, 1);
        ASSERT_TRUE(a.rc == 0 || a.rc == TQKV_ENSCONFLICT);
        ASSERT_TRUE(b.rc == 0 || b.rc == TQKV_ENSCONFLICT);
    }
    pthread_barrier_destroy(&bar);
}

/* Redis write-back (the daemons' setting): a PUT stays in A's host tier; B finds it at A. */
static void test_peer_fetch(void)
{
    tqkv_key k = tc_key(1, 6);
    ASSERT_OK(put_one(ca, &k, 11));
    uint8_t ta = 0, tb = 0, tb2 = 0;
    void *da = NULL, *db = NULL, *db2 = NULL;
    size_t la = 0, lb = 0, lb2 = 0;
    ASSERT_OK(get_one(ca, &k, &ta, &da, &la));
    ASSERT_OK(get_one(cb, &k, &tb, &db, &lb));
    ASSERT_OK(get_one(cb, &k, &tb2, &db2, &lb2));
    int same = da && db && la == lb && !memcmp(da, db, la);
    int same2 = db2 && lb2 == la && !memcmp(da, db2, la);
    free(da);
    free(db);
    free(db2);
    ASSERT_EQ_INT(ta, TQKV_TIER_HOST);
    ASSERT_EQ_INT(tb, TQKV_TIER_PEER);
    ASSERT_TRUE(same);
    /* B kept a copy: the next GET is a host hit */
    ASSERT_EQ_INT(tb2, TQKV_TIER_HOST);
    ASSERT_TRUE(same2);
    ASSERT_EQ_U64(tc_stat(cb, NULL, "cluster.peer_hits"), 1);
    /* a key nobody has stays a miss after asking the peers */
    tqkv_key none = tc_key(2, 6);
    ASSERT_OK(get_one(cb, &none, &tb, &db, &lb));
    ASSERT_EQ_INT(tb, TQKV_TIER_NONE);
    ASSERT_TRUE(db == NULL);
}

/* A LOOKUP through B of a prefix whose second chunk is only in A's host tier: B fetches it, keeps
 * it, reports it with tier PEER (the prefix is whole); the GET that follows is a host hit. */
static void test_peer_lookup(void)
{
    tqkv_key k[2] = {tc_key(10, 6), tc_key(11, 6)};
    ASSERT_OK(put_one(cb, &k[0], 100));
    ASSERT_OK(put_one(ca, &k[1], 101));
    uint32_t hits = 0;
    uint8_t tiers[2] = {0, 0};
    uint64_t lease = 0;
    ASSERT_OK(tqkv_lookup(cb, NS, k, 2, 5000, &hits, tiers, &lease));
    ASSERT_EQ_INT(hits, 2);
    ASSERT_EQ_INT(tiers[0], TQKV_TIER_HOST);
    ASSERT_EQ_INT(tiers[1], TQKV_TIER_PEER);
    ASSERT_TRUE(lease != 0);
    uint8_t t = 0;
    void *d = NULL;
    size_t l = 0;
    ASSERT_OK(get_one(cb, &k[1], &t, &d, &l));
    free(d);
    ASSERT_EQ_INT(t, TQKV_TIER_HOST);
    ASSERT_TRUE(l > 0);
}

/* Redis write-through on A: the block is in Redis when the PUT answers; B gets it from Redis. */
static void test_redis_write_through(void)
{
    ASSERT_OK(tqkv_config_set(ca, "redis_write", "through"));
    tqkv_key k = tc_key(3, 6);
    ASSERT_OK(put_one(ca, &k, 33));
    /* make sure B cannot take it from A: A drops its host copy (it stays in Redis) */
    uint64_t freed = 0;
    ASSERT_OK(tqkv_evict(ca, NULL, UINT64_MAX / 2, &freed));
    uint8_t ta = 0, tb = 0;
    void *da = NULL, *db = NULL;
    size_t la = 0, lb = 0;
    ASSERT_OK(get_one(cb, &k, &tb, &db, &lb));
    ASSERT_OK(get_one(ca, &k, &ta, &da, &la));
    int same = da && db && la == lb && !memcmp(da, db, la);
    free(da);
    free(db);
    ASSERT_EQ_INT(tb, TQKV_TIER_REDIS);
    ASSERT_TRUE(same);
    ASSERT_OK(tqkv_config_set(ca, "redis_write", "back"));
}

/* B dies without a word (SIGKILL): its record expires and A's view drops it. */
static void test_member_expires(void)
{
    ASSERT_TRUE(b_running);
    kill(node_b.pid, SIGKILL);
    tqkv_close(cb);
    cb = NULL;
    tqkvd_harness_stop(&node_b);
    b_running = 0;
    /* Until B expires, A still lists it: misses on A try B once, then skip it for a while
     * instead of paying a connection attempt per miss. */
    uint64_t err0 = tc_stat(ca, NULL, "cluster.peer_errors");
    for (uint32_t i = 0; i < 3; i++) {
        tqkv_key none = tc_key(40 + i, 6);
        uint8_t t = 9;
        void *d = NULL;
        size_t l = 0;
        ASSERT_OK(get_one(ca, &none, &t, &d, &l));
        ASSERT_EQ_INT(t, TQKV_TIER_NONE);
    }
    ASSERT_LE(tc_stat(ca, NULL, "cluster.peer_errors") - err0, 1);
    char ids[256];
    ASSERT_EQ_INT(wait_members(ca, 1, ids, sizeof(ids)), 1);
    ASSERT_TRUE(strcmp(ids, "node-a") == 0);
}

/* Redis killed: each node keeps serving from its own tiers (PUT, GET, LOOKUP), CLUSTER still
 * answers with the last view, and a block only in A's host tier still reaches B by peer fetch. */
static void test_redis_down(void)
{
    tqkv_test_redis_kill(&redis_srv);
    tqkv_client *cs[2] = {ca, cb};
    for (int n = 0; n < 2; n++) {
        tqkv_key k = tc_key(20 + (uint32_t)n, 6);
        ASSERT_OK(put_one(cs[n], &k, 44));
        uint8_t t = 0;
        void *d = NULL;
        size_t l = 0;
        ASSERT_OK(get_one(cs[n], &k, &t, &d, &l));
        free(d);
        ASSERT_EQ_INT(t, TQKV_TIER_HOST);
        ASSERT_TRUE(l > 0);
        uint32_t hits = 0;
        tqkv_key miss = tc_key(30 + (uint32_t)n, 6);
        ASSERT_OK(tqkv_lookup(cs[n], NS, &miss, 1, 0, &hits, NULL, NULL));
        ASSERT_EQ_INT(hits, 0);
        char ids[256];
        ASSERT_EQ_INT(view(cs[n], ids, sizeof(ids)), 2);
    }
    tqkv_key k = tc_key(20, 6); /* put through A above */
    uint8_t t = 0;
    void *d = NULL;
    size_t l = 0;
    ASSERT_OK(get_one(cb, &k, &t, &d, &l));
    free(d);
    ASSERT_EQ_INT(t, TQKV_TIER_PEER);
    ASSERT_TRUE(tqkvd_harness_alive(&node_a));
    ASSERT_TRUE(tqkvd_harness_alive(&node_b));
}

/* Redis back (empty: it kept nothing): the heartbeats write the records again by themselves. */
static void test_redis_back(void)
{
    ASSERT_OK(tqkv_test_redis_restart(&redis_srv));
    redisReply *rep = NULL;
    int found = 0;
    for (int i = 0; i < 300 && !found; i++) {
        rep = tqkv_test_redis_cmd(redis_srv.port, NULL, "EXISTS tqkv:{tqkvdir}:node:node-a "
                                                         "tqkv:{tqkvdir}:node:node-b");
        found = rep && rep->type == REDIS_REPLY_INTEGER && rep->integer == 2;
        if (rep)
            freeReplyObject(rep);
        if (!found)
            sleep_ms(50);
    }
    ASSERT_TRUE(found);
    char ids[256];
    ASSERT_EQ_INT(wait_members(ca, 2, ids, sizeof(ids)), 2);
}

static const tqkv_test_case cases[] = {
    {"view_shows_both", test_view_shows_both},
    {"cli", test_cli},
    {"namespace_shared", test_namespace_shared},
    {"register_race", test_register_race},
    {"peer_fetch", test_peer_fetch},
    {"peer_lookup", test_peer_lookup},
    {"redis_write_through", test_redis_write_through},
    {"redis_down", test_redis_down},
    {"redis_back", test_redis_back},
    {"member_expires", test_member_expires},
    {NULL, NULL},
};

int main(int argc, char **argv)
{
    if (!tqkv_test_redis_available()) {
        fprintf(stderr, "redis-server not available: skipped\n");
        return TQKV_TEST_SKIP;
    }
    if (tqkv_test_redis_start(&redis_srv, NULL) != 0)
        return 1;
    geom = tc_geom_small("tq4");
    char redis_addr[32];
    snprintf(redis_addr, sizeof(redis_addr), "127.0.0.1:%d", redis_srv.port);
    const char *args_a[] = {"--redis", redis_addr, "--node-id", "node-a", "--heartbeat-ms", "100",
                            "--member-ttl-ms", "1000", "--redis-write", "back",
                            "--redis-timeout-ms", "300", NULL};
    const char *args_b[] = {"--redis", redis_addr, "--node-id", "node-b", "--heartbeat-ms", "100",
                            "--member-ttl-ms", "1000", "--redis-write", "back",
                            "--redis-timeout-ms", "300", NULL};
    int rc = 1;
    if (tc_start(&node_a, args_a) != 0)
        goto out_redis;
    if (tc_start(&node_b, args_b) != 0)
        goto out_a;
    b_running = 1;
    ca = tc_connect(node_a.unix_url, NULL);
    cb = tc_connect(node_b.unix_url, NULL);
    if (ca && cb)
        rc = tqkv_test_main(argc, argv, cases);
    if (rc) {
        tqkvd_harness_dump_log(&node_a);
        if (b_running)
            tqkvd_harness_dump_log(&node_b);
    }
    tqkv_close(ca);
    tqkv_close(cb);
    if (b_running)
        tqkvd_harness_stop(&node_b);
out_a:
    if (tqkvd_harness_stop(&node_a) != 0 && rc == 0) {
        fprintf(stderr, "node A did not shut down cleanly\n");
        rc = 1;
    }
out_redis:
    tqkv_test_redis_stop(&redis_srv);
    return rc;
}
