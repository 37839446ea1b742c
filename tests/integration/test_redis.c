/* Integration tests of the Redis engine against a real standalone redis-server (started here on a
 * random loopback port, killed at the end): round trips, TTL, AUTH, key prefix, LZ4 on and off,
 * corrupt values served as misses, the directory operations, a server killed under load and
 * restarted, a server stopped (SIGSTOP) so that requests time out. */
#include "redis_harness.h"
#include "tqkv_alloc.h"
#include "tqkv_log.h"
#include "tqkv_redis.h"
#include "tqkv_test.h"

#include <signal.h>
#include <unistd.h>

static uv_loop_t loop;
static int pending;

typedef struct {
    int done;
    int status;
    size_t len;
    uint8_t *data; /* copy of a GET's value (malloc) */
    size_t n_members;
    char members[8][64];
} result;

static void done_cb(void *arg, int status)
{
    result *r = arg;
    r->done = 1;
    r->status = status;
    pending--;
}

static void get_cb(void *arg, int status, const void *data, size_t len)
{
    result *r = arg;
    r->done = 1;
    r->status = status;
    r->len = len;
    free(r->data);
    r->data = NULL;
    if (status == 1) {
        r->data = malloc(len ? len : 1);
        memcpy(r->data, data, len);
    }
    pending--;
}

static void members_cb(void *arg, int status, size_t n, const char *const *m, const size_t *lens)
{
    result *r = arg;
    r->done = 1;
    r->status = status;
    r->n_members = n;
    for (size_t i = 0; i < n && i < 8; i++)
        snprintf(r->members[i], sizeof(r->members[i]), "%.*s", (int)lens[i], m[i]);
    pending--;
}

/* Submits (rc = the call's return) and waits for the callback. @return the callback's status,
 * or the call's error. */
static int wait_result(int rc, result *r)
{
    if (rc < 0) return rc;
    pending++;
    if (tqkv_test_loop_wait(&loop, &pending, 20) < 0) return -10000;
    return r->status;
}

static int put_sync(tqkv_redis *e, const char *ns, const void *key, size_t kl, const void *d,
                    size_t n)
{
    result r = {0};
    return wait_result(tqkv_redis_put(e, ns, key, kl, d, n, done_cb, &r), &r);
}

/* @return the status; on a hit r->data/len hold a copy (caller frees r->data). */
static int get_sync(tqkv_redis *e, const char *ns, const void *key, size_t kl, result *r)
{
    memset(r, 0, sizeof(*r));
    return wait_result(tqkv_redis_get(e, ns, key, kl, get_cb, r), r);
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static void fill_random(uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        p[i] = (uint8_t)rng;
    }
}

static void make_key(uint8_t key[32], int i)
{
    memset(key, 0, 32);
    memcpy(key, &i, sizeof(i));
    key[31] = 0xAB;
}

/* Starts a server (extra args may be NULL); skips the test if redis-server is missing. */
#define START_SERVER(s, args)                                                                      \
    do {                                                                                           \
        if (!tqkv_test_redis_available()) TEST_SKIP("redis-server not installed");                 \
        ASSERT_TRUE(tqkv_test_redis_start((s), (args)) == 0);                                      \
    } while (0)

static void config_for(tqkv_redis_config *cfg, const tqkv_test_redis *s, char *addr, size_t cap,
                       const char **nodes)
{
    tqkv_redis_config_default(cfg);
    snprintf(addr, cap, "127.0.0.1:%d", s->port);
    nodes[0] = addr;
    cfg->nodes = nodes;
    cfg->n_nodes = 1;
    /* A guard, not what the tests measure: the cases about timeouts set their own. 500 ms of
     * silence happens on a loaded 2-core machine running sanitizer builds. */
    cfg->timeout_ms = 5000;
    cfg->backoff_min_ms = 20;
    cfg->backoff_max_ms = 200;
}

/* Runs the loop until the engine's state is `want` (bounded). @return 0 or -1. */
static int wait_state(tqkv_redis *e, tqkv_redis_state want)
{
    for (int i = 0; i < 1000; i++) {
        tqkv_redis_stats st;
        tqkv_redis_get_stats(e, &st);
        if (st.state == want) return 0;
        tqkv_test_loop_for(&loop, 10);
    }
    return -1;
}

static void destroy(tqkv_redis *e)
{
    tqkv_redis_destroy(e);
    tqkv_test_loop_for(&loop, 5); /* let the close callbacks free it */
}

static tqkv_redis_stats stats_of(tqkv_redis *e)
{
    tqkv_redis_stats st;
    tqkv_redis_get_stats(e, &st);
    return st;
}

/* ---- cases --------------------------------------------------------------------------------- */

static void roundtrip_body(tqkv_test_redis *s)
{
    tqkv_redis_config cfg;
    char addr[64];
    const char *nodes[1];
    config_for(&cfg, s, addr, sizeof(addr), nodes);
    tqkv_redis *e = NULL;
    ASSERT_OK(tqkv_redis_create(&loop, &cfg, &e));
    ASSERT_OK(wait_state(e, TQKV_REDIS_UP));

    /* Pipelined: every PUT submitted before any reply, then every GET. */
    enum { N = 24 };
    static const size_t sizes[] = {0, 1, 100, 4096, 65536, 1 << 20};
    uint8_t *vals[N];
    size_t lens[N];
    uint8_t key[32];
    result res[N];
    memset(res, 0, sizeof(res));
    for (int i = 0; i < N; i++) {
        lens[i] = sizes[i % 6];
        vals[i] = malloc(lens[i] + 1);
        fill_random(vals[i], lens[i]);
        make_key(key, i);
        ASSERT_OK(tqkv_redis_put(e, "llama", key, 32, vals[i], lens[i], done_cb, &res[i]));
        pending++;
    }
    ASSERT_OK(tqkv_test_loop_wait(&loop, &pending, 20));
    for (int i = 0; i < N; i++)
        ASSERT_EQ_INT(res[i].status, 0);
    for (int i = 0; i < N; i++) {
        memset(&res[i], 0, sizeof(res[i]));
        make_key(key, i);
        ASSERT_OK(tqkv_redis_get(e, "llama", key, 32, get_cb, &res[i]));
        pending++;
    }
    ASSERT_OK(tqkv_test_loop_wait(&loop, &pending, 20));
    for (int i = 0; i < N; i++) {
        ASSERT_EQ_INT(res[i].status, 1);
        ASSERT_EQ_U64(res[i].len, lens[i]);
        ASSERT_MEM_EQ(res[i].data, vals[i], lens[i]);
        free(res[i].data);
        free(vals[i]);
    }

    /* Another namespace, same key: a different block. */
    make_key(key, 3);
    result r;
    ASSERT_EQ_INT(get_sync(e, "mistral", key, 32, &r), 0);
    /* EXISTS and DEL. */
    result x = {0};
    ASSERT_EQ_INT(wait_result(tqkv_redis_exists(e, "llama", key, 32, done_cb, &x), &x), 1);
    ASSERT_EQ_INT(wait_result(tqkv_redis_del(e, "llama", key, 32, done_cb, &x), &x), 1);
    ASSERT_EQ_INT(wait_result(tqkv_redis_del(e, "llama", key, 32, done_cb, &x), &x), 0);
    ASSERT_EQ_INT(wait_result(tqkv_redis_exists(e, "llama", key, 32, done_cb, &x), &x), 0);
    ASSERT_EQ_INT(get_sync(e, "llama", key, 32, &r), 0);

    tqkv_redis_stats st = stats_of(e);
    ASSERT_EQ_U64(st.hits, N);
    ASSERT_EQ_U64(st.misses, 2);
    ASSERT_EQ_U64(st.errors, 0);
    ASSERT_EQ_U64(st.corrupt, 0);
    ASSERT_EQ_U64(st.requests, 2 * N + 6);
    uint64_t payload = 0;
    for (int i = 0; i < N; i++)
        payload += lens[i];
    ASSERT_EQ_U64(st.bytes_in, payload);
    ASSERT_EQ_U64(st.bytes_out, payload + N * (40 + 5 + 32));
    ASSERT_EQ_INT(st.state, TQKV_REDIS_UP);
    destroy(e);
}

static void test_roundtrip(void)
{
    tqkv_test_redis s;
    START_SERVER(&s, NULL);
    roundtrip_body(&s);
    tqkv_test_redis_stop(&s);
}

static long long pttl_of(tqkv_test_redis *s, const char *rkey)
{
    redisReply *rep = tqkv_test_redis_cmd(s->port, s->password, "PTTL %s", rkey);
    long long v = rep && rep->type == REDIS_REPLY_INTEGER ? rep->integer : -999;
    if (rep) freeReplyObject(rep);
    return v;
}

static void ttl_body(tqkv_test_redis *s)
{
    tqkv_redis_config cfg;
    char addr[64], rkey[256];
    const char *nodes[1];
    config_for(&cfg, s, addr, sizeof(addr), nodes);
    uint8_t key[32], v[64] = {7};
    make_key(key, 1);
    ASSERT_TRUE(tqkv_redis_block_key("tqkv", "ns", key, 32, rkey, sizeof(rkey)) > 0);

    tqkv_redis *e = NULL;
    ASSERT_OK(tqkv_redis_create(&loop, &cfg, &e));
    ASSERT_EQ_INT(put_sync(e, "ns", key, 32, v, sizeof(v)), 0);
    ASSERT_EQ_INT(pttl_of(s, rkey), -1); /* no TTL configured: no expiry */
    destroy(e);

    cfg.ttl_ms = 60000;
    ASSERT_OK(tqkv_redis_create(&loop, &cfg, &e));
    ASSERT_EQ_INT(put_sync(e, "ns", key, 32, v, sizeof(v)), 0);
    long long t = pttl_of(s, rkey);
    ASSERT_TRUE(t > 0);
    ASSERT_LE(t, 60000);

    /* Directory records take their own TTL. */
    result r = {0};
    ASSERT_EQ_INT(wait_result(tqkv_redis_kv_set(e, "node:a", "x", 1, 30000, done_cb, &r), &r), 0);
    t = pttl_of(s, "tqkv:node:a");
    ASSERT_TRUE(t > 0);
    ASSERT_LE(t, 30000);
    destroy(e);
}

static void test_ttl(void)
{
    tqkv_test_redis s;
    START_SERVER(&s, NULL);
    ttl_body(&s);
    tqkv_test_redis_stop(&s);
}

static void auth_body(tqkv_test_redis *s)
{
    tqkv_redis_config cfg;
    char addr[64];
    const char *nodes[1];
    config_for(&cfg, s, addr, sizeof(addr), nodes);
    uint8_t key[32], v[100];
    fill_random(v, sizeof(v));
    make_key(key, 9);
    result r;

    /* Right password. */
    cfg.password = "s3cret";
    tqkv_redis *e = NULL;
    ASSERT_OK(tqkv_redis_create(&loop, &cfg, &e));
    ASSERT_EQ_INT(put_sync(e, "ns", key, 32, v, sizeof(v)), 0);
    ASSERT_EQ_INT(get_sync(e, "ns", key, 32, &r), 1);
    ASSERT_MEM_EQ(r.data, v, sizeof(v));
    free(r.data);
    destroy(e);

    /* No password: the handshake is refused (NOAUTH), the node is never used. */
    cfg.password = NULL;
    ASSERT_OK(tqkv_redis_create(&loop, &cfg, &e));
    ASSERT_EQ_INT(put_sync(e, "ns", key, 32, v, sizeof(v)), TQKV_EAUTH);
    int st = get_sync(e, "ns", key, 32, &r);
    ASSERT_TRUE(st == TQKV_EAUTH || st == TQKV_ETIER);
    ASSERT_EQ_U64(stats_of(e).misses, 1);
    ASSERT_EQ_U64(stats_of(e).hits, 0);
    destroy(e);

    /* Wrong password: the connection is dropped, never used; requests fail, nothing served. */
    cfg.password = "wrong";
    ASSERT_OK(tqkv_redis_create(&loop, &cfg, &e));
    st = get_sync(e, "ns", key, 32, &r);
    ASSERT_TRUE(st == TQKV_EAUTH || st == TQKV_ETIER);
    ASSERT_EQ_U64(stats_of(e).hits, 0);
    ASSERT_NE_INT(stats_of(e).state, TQKV_REDIS_UP);
    destroy(e);

    /* An ACL user. */
    redisReply *rep =
        tqkv_test_redis_cmd(s->port, s->password, "ACL SETUSER tq on >pw2 ~tqkv:* +@all");
    ASSERT_TRUE(rep && rep->type == REDIS_REPLY_STATUS);
    freeReplyObject(rep);
    cfg.username = "tq";
    cfg.password = "pw2";
    ASSERT_OK(tqkv_redis_create(&loop, &cfg, &e));
    ASSERT_EQ_INT(get_sync(e, "ns", key, 32, &r), 1);
    ASSERT_MEM_EQ(r.data, v, sizeof(v));
    free(r.data);
    destroy(e);
}

static void test_auth(void)
{
    static const char *const args[] = {"--requirepass", "s3cret", NULL};
    tqkv_test_redis s;
    START_SERVER(&s, args);
    auth_body(&s);
    tqkv_test_redis_stop(&s);
}

static long long strlen_of(tqkv_test_redis *s, const char *rkey)
{
    redisReply *rep = tqkv_test_redis_cmd(s->port, NULL, "STRLEN %s", rkey);
    long long v = rep && rep->type == REDIS_REPLY_INTEGER ? rep->integer : -1;
    if (rep) freeReplyObject(rep);
    return v;
}

static void prefix_body(tqkv_test_redis *s)
{
    tqkv_redis_config cfg;
    char addr[64], rkey[256];
    const char *nodes[1];
    config_for(&cfg, s, addr, sizeof(addr), nodes);
    uint8_t key[32], v[10] = {1, 2, 3};
    make_key(key, 5);
    result r;
    cfg.prefix = "app1";
    tqkv_redis *e1 = NULL, *e2 = NULL;
    ASSERT_OK(tqkv_redis_create(&loop, &cfg, &e1));
    cfg.prefix = "app2";
    ASSERT_OK(tqkv_redis_create(&loop, &cfg, &e2));
    ASSERT_EQ_INT(put_sync(e1, "ns", key, 32, v, sizeof(v)), 0);
    ASSERT_TRUE(tqkv_redis_block_key("app1", "ns", key, 32, rkey, sizeof(rkey)) > 0);
    ASSERT_EQ_INT(strlen_of(s, rkey), 40 + 2 + 32 + 10);
    ASSERT_EQ_INT(get_sync(e2, "ns", key, 32, &r), 0); /* another prefix sees nothing */
    ASSERT_EQ_INT(get_sync(e1, "ns", key, 32, &r), 1);
    free(r.data);
    destroy(e1);
    destroy(e2);

    cfg.prefix = "bad{tag}";
    ASSERT_ERR(tqkv_redis_create(&loop, &cfg, &e1), TQKV_EBADCONFIG);
}

static void test_prefix(void)
{
    tqkv_test_redis s;
    START_SERVER(&s, NULL);
    prefix_body(&s);
    tqkv_test_redis_stop(&s);
}

static void lz4_body(tqkv_test_redis *s)
{
    enum { LEN = 256 * 1024 };
    tqkv_redis_config cfg;
    char addr[64], rkey[256];
    const char *nodes[1];
    config_for(&cfg, s, addr, sizeof(addr), nodes);
    uint8_t key[32];
    uint8_t *compressible = malloc(LEN), *random = malloc(LEN);
    for (size_t i = 0; i < LEN; i++)
        compressible[i] = (uint8_t)((i / 64) % 7); /* long runs */
    fill_random(random, LEN);
    const size_t overhead = 40 + 2 + 32;
    static const struct {
        int lz4;
        int random;
        int smaller; /* stored value smaller than the block */
    } cases[] = {{1, 0, 1}, {1, 1, 0}, {0, 0, 0}, {0, 1, 0}};
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        cfg.lz4 = cases[c].lz4;
        tqkv_redis *e = NULL;
        ASSERT_OK(tqkv_redis_create(&loop, &cfg, &e));
        const uint8_t *v = cases[c].random ? random : compressible;
        make_key(key, (int)c);
        ASSERT_EQ_INT(put_sync(e, "ns", key, 32, v, LEN), 0);
        ASSERT_TRUE(tqkv_redis_block_key("tqkv", "ns", key, 32, rkey, sizeof(rkey)) > 0);
        long long stored = strlen_of(s, rkey);
        if (cases[c].smaller)
            ASSERT_TRUE(stored > 0 && (size_t)stored < LEN / 4);
        else
            ASSERT_EQ_INT(stored, LEN + overhead);
        /* Whatever wrote it, any engine reads it back (the value says how it is stored). */
        cfg.lz4 = !cfg.lz4;
        tqkv_redis *reader = NULL;
        ASSERT_OK(tqkv_redis_create(&loop, &cfg, &reader));
        result r;
        ASSERT_EQ_INT(get_sync(reader, "ns", key, 32, &r), 1);
        ASSERT_EQ_U64(r.len, LEN);
        ASSERT_MEM_EQ(r.data, v, LEN);
        free(r.data);
        ASSERT_EQ_U64(stats_of(reader).bytes_in, LEN);
        destroy(reader);
        destroy(e);
    }
    free(compressible);
    free(random);
}

static void test_lz4(void)
{
    tqkv_test_redis s;
    START_SERVER(&s, NULL);
    lz4_body(&s);
    tqkv_test_redis_stop(&s);
}

static void corrupt_body(tqkv_test_redis *s)
{
    tqkv_redis_config cfg;
    char addr[64], k1[256], k2[256], k3[256];
    const char *nodes[1];
    config_for(&cfg, s, addr, sizeof(addr), nodes);
    uint8_t key1[32], key2[32], key3[32], v[1000];
    fill_random(v, sizeof(v));
    make_key(key1, 1);
    make_key(key2, 2);
    make_key(key3, 3);
    tqkv_redis_block_key("tqkv", "ns", key1, 32, k1, sizeof(k1));
    tqkv_redis_block_key("tqkv", "ns", key2, 32, k2, sizeof(k2));
    tqkv_redis_block_key("tqkv", "ns", key3, 32, k3, sizeof(k3));
    tqkv_redis *e = NULL;
    ASSERT_OK(tqkv_redis_create(&loop, &cfg, &e));
    ASSERT_EQ_INT(put_sync(e, "ns", key1, 32, v, sizeof(v)), 0);
    ASSERT_EQ_INT(put_sync(e, "ns", key3, 32, v, sizeof(v)), 0);

    /* key2 gets key1's intact value: checksum fine, but it names another block. */
    redisReply *rep = tqkv_test_redis_cmd(s->port, NULL, "COPY %s %s", k1, k2);
    ASSERT_TRUE(rep && rep->type == REDIS_REPLY_INTEGER && rep->integer == 1);
    freeReplyObject(rep);
    /* key1: one payload bit flipped. */
    rep = tqkv_test_redis_cmd(s->port, NULL, "GETRANGE %s 500 500", k1);
    ASSERT_TRUE(rep && rep->type == REDIS_REPLY_STRING && rep->len == 1);
    char flipped = (char)(rep->str[0] ^ 0x10);
    freeReplyObject(rep);
    rep = tqkv_test_redis_cmd(s->port, NULL, "SETRANGE %s 500 %b", k1, &flipped, (size_t)1);
    ASSERT_TRUE(rep && rep->type == REDIS_REPLY_INTEGER);
    freeReplyObject(rep);
    /* key3: not a tqkv value at all. */
    rep = tqkv_test_redis_cmd(s->port, NULL, "SET %s %s", k3, "hello, world");
    ASSERT_TRUE(rep != NULL);
    freeReplyObject(rep);

    result r;
    ASSERT_EQ_INT(get_sync(e, "ns", key1, 32, &r), 0);
    ASSERT_EQ_INT(get_sync(e, "ns", key2, 32, &r), 0);
    ASSERT_EQ_INT(get_sync(e, "ns", key3, 32, &r), 0);
    tqkv_redis_stats st = stats_of(e);
    ASSERT_EQ_U64(st.corrupt, 3);
    ASSERT_EQ_U64(st.misses, 3);
    ASSERT_EQ_U64(st.hits, 0);
    ASSERT_EQ_U64(st.errors, 0);
    destroy(e);
}

static void test_corrupt(void)
{
    tqkv_test_redis s;
    START_SERVER(&s, NULL);
    corrupt_body(&s);
    tqkv_test_redis_stop(&s);
}

static void directory_body(tqkv_test_redis *s)
{
    tqkv_redis_config cfg;
    char addr[64];
    const char *nodes[1];
    config_for(&cfg, s, addr, sizeof(addr), nodes);
    tqkv_redis *e = NULL;
    ASSERT_OK(tqkv_redis_create(&loop, &cfg, &e));
    result r = {0};
    ASSERT_EQ_INT(
        wait_result(tqkv_redis_kv_set(e, "ns:llama", "{\"d\":128}", 9, 0, done_cb, &r), &r), 0);
    memset(&r, 0, sizeof(r));
    ASSERT_EQ_INT(wait_result(tqkv_redis_kv_get(e, "ns:llama", get_cb, &r), &r), 1);
    ASSERT_EQ_U64(r.len, 9);
    ASSERT_MEM_EQ(r.data, "{\"d\":128}", 9);
    free(r.data);
    r.data = NULL;
    ASSERT_EQ_INT(wait_result(tqkv_redis_kv_expire(e, "ns:llama", 5000, done_cb, &r), &r), 1);
    ASSERT_EQ_INT(wait_result(tqkv_redis_kv_expire(e, "ns:none", 5000, done_cb, &r), &r), 0);
    ASSERT_EQ_INT(wait_result(tqkv_redis_kv_del(e, "ns:llama", done_cb, &r), &r), 1);
    ASSERT_EQ_INT(wait_result(tqkv_redis_kv_get(e, "ns:llama", get_cb, &r), &r), 0);
    /* SET NX: the first writer wins, a second one changes nothing */
    ASSERT_EQ_INT(wait_result(tqkv_redis_kv_set_nx(e, "ns:nx", "one", 3, done_cb, &r), &r), 1);
    ASSERT_EQ_INT(wait_result(tqkv_redis_kv_set_nx(e, "ns:nx", "two!", 4, done_cb, &r), &r), 0);
    ASSERT_EQ_INT(wait_result(tqkv_redis_kv_get(e, "ns:nx", get_cb, &r), &r), 1);
    ASSERT_EQ_U64(r.len, 3);
    ASSERT_MEM_EQ(r.data, "one", 3);
    free(r.data);
    r.data = NULL;
    ASSERT_EQ_INT(wait_result(tqkv_redis_kv_del(e, "ns:nx", done_cb, &r), &r), 1);

    ASSERT_EQ_INT(wait_result(tqkv_redis_set_add(e, "{dir}:members", "node-a", 6, done_cb, &r), &r),
                  1);
    ASSERT_EQ_INT(wait_result(tqkv_redis_set_add(e, "{dir}:members", "node-b", 6, done_cb, &r), &r),
                  1);
    ASSERT_EQ_INT(wait_result(tqkv_redis_set_add(e, "{dir}:members", "node-a", 6, done_cb, &r), &r),
                  0);
    ASSERT_EQ_INT(wait_result(tqkv_redis_set_members(e, "{dir}:members", members_cb, &r), &r), 0);
    ASSERT_EQ_U64(r.n_members, 2);
    int a = !strcmp(r.members[0], "node-a") || !strcmp(r.members[1], "node-a");
    int b = !strcmp(r.members[0], "node-b") || !strcmp(r.members[1], "node-b");
    ASSERT_TRUE(a && b);
    ASSERT_EQ_INT(wait_result(tqkv_redis_set_rem(e, "{dir}:members", "node-a", 6, done_cb, &r), &r),
                  1);
    ASSERT_EQ_INT(wait_result(tqkv_redis_set_members(e, "{dir}:members", members_cb, &r), &r), 0);
    ASSERT_EQ_U64(r.n_members, 1);
    ASSERT_TRUE(strcmp(r.members[0], "node-b") == 0);

    /* Bad arguments are refused at once; the callback is never called. */
    uint8_t key[32] = {0};
    ASSERT_ERR(tqkv_redis_kv_get(e, "has space", get_cb, &r), TQKV_EINVAL);
    ASSERT_ERR(tqkv_redis_kv_get(e, "", get_cb, &r), TQKV_EINVAL);
    ASSERT_ERR(tqkv_redis_get(e, "bad ns", key, 32, get_cb, &r), TQKV_EINVAL);
    ASSERT_ERR(tqkv_redis_get(e, "ns", key, 0, get_cb, &r), TQKV_EINVAL);
    ASSERT_ERR(tqkv_redis_get(e, "ns", key, 32, NULL, &r), TQKV_EINVAL);
    ASSERT_ERR(tqkv_redis_set_add(e, "s", "", 0, done_cb, &r), TQKV_EINVAL);
    ASSERT_ERR(tqkv_redis_kv_expire(e, "k", 0, done_cb, &r), TQKV_EINVAL);
    destroy(e);

    cfg.max_value_bytes = 16;
    ASSERT_OK(tqkv_redis_create(&loop, &cfg, &e));
    ASSERT_ERR(tqkv_redis_put(e, "ns", key, 32, "0123456789abcdefg", 17, done_cb, &r), TQKV_ERANGE);
    destroy(e);

    const char *two[2] = {addr, addr};
    cfg.nodes = two;
    cfg.n_nodes = 2; /* standalone takes one server */
    ASSERT_ERR(tqkv_redis_create(&loop, &cfg, &e), TQKV_EBADCONFIG);
    const char *bad[1] = {"127.0.0.1"};
    cfg.nodes = bad;
    cfg.n_nodes = 1;
    ASSERT_ERR(tqkv_redis_create(&loop, &cfg, &e), TQKV_EBADCONFIG);
}

static void test_directory(void)
{
    tqkv_test_redis s;
    START_SERVER(&s, NULL);
    directory_body(&s);
    tqkv_test_redis_stop(&s);
}

static void clear_body(tqkv_test_redis *s)
{
    tqkv_redis_config cfg;
    char addr[64];
    const char *nodes[1];
    config_for(&cfg, s, addr, sizeof(addr), nodes);
    tqkv_redis *e = NULL;
    ASSERT_OK(tqkv_redis_create(&loop, &cfg, &e));
    ASSERT_OK(wait_state(e, TQKV_REDIS_UP));
    uint8_t key[32];
    /* 2500 blocks in "a*b" (a glob character in the name), 10 in "ab", one directory record. */
    result r = {0};
    for (int i = 0; i < 2510; i++) {
        make_key(key, i);
        ASSERT_OK(tqkv_redis_put(e, i < 2500 ? "a*b" : "ab", key, 32, "v", 1, done_cb, &r));
        pending++;
    }
    ASSERT_OK(tqkv_test_loop_wait(&loop, &pending, 30));
    ASSERT_EQ_INT(wait_result(tqkv_redis_kv_set(e, "node:a", "x", 1, 0, done_cb, &r), &r), 0);
    ASSERT_EQ_INT(wait_result(tqkv_redis_clear(e, "a*b", done_cb, &r), &r), 2500);
    make_key(key, 7);
    ASSERT_EQ_INT(get_sync(e, "a*b", key, 32, &r), 0);
    make_key(key, 2505);
    ASSERT_EQ_INT(get_sync(e, "ab", key, 32, &r), 1); /* "a*b" matched only itself */
    free(r.data);
    ASSERT_EQ_INT(wait_result(tqkv_redis_clear(e, NULL, done_cb, &r), &r), 10);
    ASSERT_EQ_INT(get_sync(e, "ab", key, 32, &r), 0);
    memset(&r, 0, sizeof(r));
    ASSERT_EQ_INT(wait_result(tqkv_redis_kv_get(e, "node:a", get_cb, &r), &r), 1); /* kept */
    free(r.data);
    ASSERT_ERR(tqkv_redis_clear(e, "bad ns", done_cb, &r), TQKV_EINVAL);
    destroy(e);
}

static void test_clear(void)
{
    tqkv_test_redis s;
    START_SERVER(&s, NULL);
    clear_body(&s);
    tqkv_test_redis_stop(&s);
}

/* ---- failures ------------------------------------------------------------------------------ */

typedef struct {
    int ok, failed, hits;
} tally;

static void tally_done(void *arg, int status)
{
    tally *t = arg;
    if (status == 0)
        t->ok++;
    else
        t->failed++;
    pending--;
}

static void tally_get(void *arg, int status, const void *data, size_t len)
{
    tally *t = arg;
    if (status == 1)
        t->hits++;
    else
        t->failed++;
    pending--;
}

static size_t count_in_file(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char line[2048];
    size_t n = 0;
    while (fgets(line, sizeof(line), f))
        n += strstr(line, needle) != NULL;
    fclose(f);
    return n;
}

static void outage_body(tqkv_test_redis *s, const char *logpath)
{
    tqkv_redis_config cfg;
    char addr[64];
    const char *nodes[1];
    config_for(&cfg, s, addr, sizeof(addr), nodes);
    tqkv_redis *e = NULL;
    ASSERT_OK(tqkv_redis_create(&loop, &cfg, &e));
    ASSERT_OK(wait_state(e, TQKV_REDIS_UP));
    enum { N = 64, LEN = 1024 * 1024 };
    uint8_t *v = malloc(LEN);
    fill_random(v, LEN);
    uint8_t key[32];

    /* A load of PUTs; the server is killed while they are in flight. */
    tally t = {0};
    for (int i = 0; i < N; i++) {
        make_key(key, i);
        ASSERT_OK(tqkv_redis_put(e, "ns", key, 32, v, LEN, tally_done, &t));
        pending++;
    }
    /* A few served, then the kill. Most of the 64 MiB is still in hiredis' output buffer then
     * (this thread writes it only while the loop runs), so most of the load must fail. */
    while (pending > N - 4)
        uv_run(&loop, UV_RUN_ONCE);
    tqkv_test_redis_kill(s);
    ASSERT_OK(tqkv_test_loop_wait(&loop, &pending, 20)); /* every request completes */
    ASSERT_EQ_INT(t.ok + t.failed, N);
    ASSERT_TRUE(t.failed > 0);

    /* During the outage: no request waits, none is served. */
    tally g = {0};
    int refused = 0;
    for (int i = 0; i < 20; i++) {
        make_key(key, i);
        int rc = tqkv_redis_get(e, "ns", key, 32, tally_get, &g);
        if (rc < 0)
            refused++;
        else
            pending++;
        tqkv_test_loop_for(&loop, 20); /* lets several reconnect attempts fail meanwhile */
    }
    ASSERT_OK(tqkv_test_loop_wait(&loop, &pending, 20));
    ASSERT_EQ_INT(g.hits, 0);
    ASSERT_EQ_INT(g.failed + refused, 20);
    ASSERT_EQ_INT(stats_of(e).state, TQKV_REDIS_DOWN);

    /* Back: the engine reconnects by itself and serves again. */
    ASSERT_TRUE(tqkv_test_redis_restart(s) == 0);
    ASSERT_OK(wait_state(e, TQKV_REDIS_UP));
    make_key(key, 1000);
    ASSERT_EQ_INT(put_sync(e, "ns", key, 32, v, LEN), 0);
    result r;
    ASSERT_EQ_INT(get_sync(e, "ns", key, 32, &r), 1);
    ASSERT_MEM_EQ(r.data, v, LEN);
    free(r.data);
    tqkv_redis_stats st = stats_of(e);
    ASSERT_EQ_U64(st.reconnects, 1);
    ASSERT_EQ_U64(st.misses, 20); /* every GET of the outage counted as a miss */
    ASSERT_EQ_U64(st.hits, 1);
    /* Logged once per state change, not per request or per retry. */
    ASSERT_EQ_U64(count_in_file(logpath, "redis node down"), 1);
    ASSERT_EQ_U64(count_in_file(logpath, "redis node reconnected"), 1);
    free(v);
    destroy(e);
}

static void test_outage(void)
{
    tqkv_test_redis s;
    START_SERVER(&s, NULL);
    char logpath[] = "/tmp/tqkv-redis-log-XXXXXX";
    int fd = mkstemp(logpath);
    ASSERT_TRUE(fd >= 0);
    tqkv_log_set_fd(fd);
    outage_body(&s, logpath);
    tqkv_log_set_fd(2);
    close(fd);
    unlink(logpath);
    tqkv_test_redis_stop(&s);
}

static void slow_body(tqkv_test_redis *s)
{
    tqkv_redis_config cfg;
    char addr[64];
    const char *nodes[1];
    config_for(&cfg, s, addr, sizeof(addr), nodes);
    cfg.timeout_ms = 200;
    tqkv_redis *e = NULL;
    ASSERT_OK(tqkv_redis_create(&loop, &cfg, &e));
    uint8_t key[32], v[4096];
    fill_random(v, sizeof(v));
    make_key(key, 1);
    ASSERT_EQ_INT(put_sync(e, "ns", key, 32, v, sizeof(v)), 0);

    /* The server hangs (stopped): the kernel still accepts connections, nothing answers. */
    tqkv_test_redis_signal(s, SIGSTOP);
    result r;
    ASSERT_EQ_INT(get_sync(e, "ns", key, 32, &r), TQKV_ETIMEDOUT);
    int st = put_sync(e, "ns", key, 32, v, sizeof(v));
    ASSERT_TRUE(st == TQKV_ETIMEDOUT || st == TQKV_ETIER);
    tqkv_redis_stats s1 = stats_of(e);
    ASSERT_TRUE(s1.timeouts >= 1);
    ASSERT_EQ_U64(s1.hits, 0);

    tqkv_test_redis_signal(s, SIGCONT);
    int hit = 0;
    for (int i = 0; i < 200 && !hit; i++) { /* until it reconnects */
        hit = get_sync(e, "ns", key, 32, &r) == 1;
        if (hit) ASSERT_MEM_EQ(r.data, v, sizeof(v));
        free(r.data);
        if (!hit) tqkv_test_loop_for(&loop, 20);
    }
    ASSERT_TRUE(hit);
    destroy(e);
}

static void test_slow(void)
{
    tqkv_test_redis s;
    START_SERVER(&s, NULL);
    slow_body(&s);
    tqkv_test_redis_signal(&s, SIGCONT);
    tqkv_test_redis_stop(&s);
}

/* Regression: CLEAR's SCAN and UNLINK commands were not watched by the no-progress timeout
 * (only requests were), so a CLEAR sent to a hung server with nothing else in flight never
 * completed. It must fail with TQKV_ETIMEDOUT like any request. */
static void clear_hung_body(tqkv_test_redis *s)
{
    tqkv_redis_config cfg;
    char addr[64];
    const char *nodes[1];
    config_for(&cfg, s, addr, sizeof(addr), nodes);
    cfg.timeout_ms = 200;
    tqkv_redis *e = NULL;
    ASSERT_OK(tqkv_redis_create(&loop, &cfg, &e));
    ASSERT_OK(wait_state(e, TQKV_REDIS_UP));
    uint8_t key[32];
    make_key(key, 5);
    ASSERT_EQ_INT(put_sync(e, "hung", key, 32, "v", 1), 0);
    tqkv_test_redis_signal(s, SIGSTOP);
    result r = {0};
    ASSERT_EQ_INT(wait_result(tqkv_redis_clear(e, "hung", done_cb, &r), &r), TQKV_ETIMEDOUT);
    ASSERT_TRUE(stats_of(e).timeouts >= 1);
    tqkv_test_redis_signal(s, SIGCONT);
    /* once the server answers again, the engine reconnects and CLEAR works */
    int cleared = -1;
    for (int i = 0; i < 200 && cleared < 0; i++) {
        memset(&r, 0, sizeof(r));
        int rc = wait_result(tqkv_redis_clear(e, "hung", done_cb, &r), &r);
        if (rc >= 0)
            cleared = rc;
        else
            tqkv_test_loop_for(&loop, 20);
    }
    ASSERT_EQ_INT(cleared, 1);
    destroy(e);
}

static void test_clear_hung_server(void)
{
    tqkv_test_redis s;
    START_SERVER(&s, NULL);
    clear_hung_body(&s);
    tqkv_test_redis_signal(&s, SIGCONT);
    tqkv_test_redis_stop(&s);
}

/* Destroying the engine from one of its own callbacks, with requests in flight. */
static tqkv_redis *victim;
static int cancelled;
static void destroy_from_cb(void *arg, int status)
{
    tally_done(arg, status);
    if (victim) {
        tqkv_redis_destroy(victim);
        victim = NULL;
    }
}
static void count_cancel(void *arg, int status)
{
    cancelled += status == TQKV_ECANCELED;
    tally_done(arg, status);
}

static void destroy_body(tqkv_test_redis *s)
{
    tqkv_redis_config cfg;
    char addr[64];
    const char *nodes[1];
    config_for(&cfg, s, addr, sizeof(addr), nodes);
    tqkv_redis *e = NULL;
    ASSERT_OK(tqkv_redis_create(&loop, &cfg, &e));
    ASSERT_OK(wait_state(e, TQKV_REDIS_UP));
    uint8_t key[32], v[64] = {0};
    tally t = {0};
    make_key(key, 1);
    ASSERT_OK(tqkv_redis_put(e, "ns", key, 32, v, sizeof(v), destroy_from_cb, &t));
    pending++;
    for (int i = 0; i < 10; i++) {
        ASSERT_OK(tqkv_redis_put(e, "ns", key, 32, v, sizeof(v), count_cancel, &t));
        pending++;
    }
    victim = e;
    ASSERT_OK(tqkv_test_loop_wait(&loop, &pending, 20));
    ASSERT_EQ_INT(t.ok + t.failed, 11);
    ASSERT_EQ_INT(t.ok + cancelled, 11);
    tqkv_test_loop_for(&loop, 5);
}

static void test_destroy_in_callback(void)
{
    tqkv_test_redis s;
    START_SERVER(&s, NULL);
    destroy_body(&s);
    tqkv_test_redis_stop(&s);
}

/* A stalled server: once max_queued_bytes of commands wait on the node, new requests are refused
 * at once (TQKV_EBUSY) instead of piling up in memory; small ones still fit; all resumes. */
static void backpressure_body(tqkv_test_redis *s)
{
    tqkv_redis_config cfg;
    char addr[64];
    const char *nodes[1];
    config_for(&cfg, s, addr, sizeof(addr), nodes);
    cfg.max_queued_bytes = 1 << 20;
    cfg.timeout_ms = 10000; /* this test is about the limit, not the timeout */
    tqkv_redis *e = NULL;
    ASSERT_OK(tqkv_redis_create(&loop, &cfg, &e));
    ASSERT_OK(wait_state(e, TQKV_REDIS_UP));
    enum { LEN = 600 * 1024 };
    uint8_t *v = calloc(1, LEN), key[32];
    tally t = {0};
    result g = {0};
    tqkv_test_redis_signal(s, SIGSTOP);
    make_key(key, 1);
    ASSERT_OK(tqkv_redis_put(e, "ns", key, 32, v, LEN, tally_done, &t));
    pending++;
    make_key(key, 2);
    ASSERT_ERR(tqkv_redis_put(e, "ns", key, 32, v, LEN, tally_done, &t), TQKV_EBUSY);
    ASSERT_OK(tqkv_redis_kv_get(e, "small", get_cb, &g));
    pending++;
    tqkv_test_loop_for(&loop, 50);
    tqkv_test_redis_signal(s, SIGCONT);
    ASSERT_OK(tqkv_test_loop_wait(&loop, &pending, 20));
    ASSERT_EQ_INT(t.ok, 1);
    ASSERT_EQ_INT(g.status, 0);
    ASSERT_EQ_INT(put_sync(e, "ns", key, 32, v, LEN), 0); /* room again */
    ASSERT_EQ_U64(stats_of(e).errors, 1);
    free(v);
    destroy(e);
}

static void test_backpressure(void)
{
    tqkv_test_redis s;
    START_SERVER(&s, NULL);
    backpressure_body(&s);
    tqkv_test_redis_signal(&s, SIGCONT);
    tqkv_test_redis_stop(&s);
}

/* A send window smaller than one value: requests wait in the engine and go one at a time, in
 * order: the last PUT of a key wins, and a GET queued behind the PUTs sees it. */
static void window_body(tqkv_test_redis *s)
{
    tqkv_redis_config cfg;
    char addr[64];
    const char *nodes[1];
    config_for(&cfg, s, addr, sizeof(addr), nodes);
    cfg.send_window_bytes = 64 * 1024;
    tqkv_redis *e = NULL;
    ASSERT_OK(tqkv_redis_create(&loop, &cfg, &e));
    ASSERT_OK(wait_state(e, TQKV_REDIS_UP));
    enum { N = 30, LEN = 100 * 1000 };
    uint8_t *v = malloc(LEN), key[32];
    make_key(key, 5);
    tally t = {0};
    for (int i = 0; i < N; i++) {
        memset(v, i, LEN);
        ASSERT_OK(tqkv_redis_put(e, "ns", key, 32, v, LEN, tally_done, &t));
        pending++;
    }
    result g = {0};
    ASSERT_OK(tqkv_redis_get(e, "ns", key, 32, get_cb, &g));
    pending++;
    ASSERT_OK(tqkv_test_loop_wait(&loop, &pending, 20));
    ASSERT_EQ_INT(t.ok, N);
    ASSERT_EQ_INT(g.status, 1);
    ASSERT_EQ_U64(g.len, LEN);
    memset(v, N - 1, LEN);
    ASSERT_MEM_EQ(g.data, v, LEN);
    free(g.data);
    free(v);
    destroy(e);
}

static void test_send_window(void)
{
    tqkv_test_redis s;
    START_SERVER(&s, NULL);
    window_body(&s);
    tqkv_test_redis_stop(&s);
}

/* Destroying the engine from a callback run by the timeout check (the engine's own timer), with
 * more requests timing out behind it: nothing may reconnect or touch freed memory afterwards. */
static void destroy_on_timeout_body(tqkv_test_redis *s)
{
    tqkv_redis_config cfg;
    char addr[64];
    const char *nodes[1];
    config_for(&cfg, s, addr, sizeof(addr), nodes);
    cfg.timeout_ms = 100;
    tqkv_redis *e = NULL;
    ASSERT_OK(tqkv_redis_create(&loop, &cfg, &e));
    ASSERT_OK(wait_state(e, TQKV_REDIS_UP));
    tqkv_test_redis_signal(s, SIGSTOP);
    uint8_t key[32] = {0};
    tally t = {0};
    cancelled = 0;
    ASSERT_OK(tqkv_redis_put(e, "ns", key, 32, "v", 1, destroy_from_cb, &t));
    pending++;
    for (int i = 0; i < 5; i++) {
        ASSERT_OK(tqkv_redis_put(e, "ns", key, 32, "v", 1, count_cancel, &t));
        pending++;
    }
    victim = e;
    ASSERT_OK(tqkv_test_loop_wait(&loop, &pending, 20));
    ASSERT_TRUE(victim == NULL);    /* destroyed from the first callback */
    ASSERT_EQ_INT(t.failed, 6);     /* timed out (the first) or canceled (the rest) */
    tqkv_test_loop_for(&loop, 300); /* several ticks' worth: nothing may run any more */
    tqkv_test_redis_signal(s, SIGCONT);
}

static void test_destroy_on_timeout(void)
{
    tqkv_test_redis s;
    START_SERVER(&s, NULL);
    destroy_on_timeout_body(&s);
    tqkv_test_redis_signal(&s, SIGCONT);
    tqkv_test_redis_stop(&s);
}

/* Out of memory: the k-th allocation of the engine fails, for every k along one workload (create,
 * PUT with LZ4, GET with decompression, SMEMBERS, CLEAR). Each call either succeeds or returns
 * TQKV_ENOMEM; each accepted call completes exactly once; nothing leaks (run it under ASan). */
static long oom_target = -1, oom_seen;
static void *oom_malloc(size_t n)
{
    return oom_seen++ == oom_target ? NULL : malloc(n);
}
static void *oom_realloc(void *p, size_t n)
{
    return oom_seen++ == oom_target ? NULL : realloc(p, n);
}
static void *oom_calloc(size_t c, size_t n)
{
    return oom_seen++ == oom_target ? NULL : calloc(c, n);
}

static int oom_round(tqkv_test_redis *s, long target)
{
    tqkv_redis_config cfg;
    char addr[64];
    const char *nodes[1];
    config_for(&cfg, s, addr, sizeof(addr), nodes);
    cfg.lz4 = 1;
    static uint8_t v[8192];
    uint8_t key[32];
    make_key(key, 77);
    oom_seen = 0;
    oom_target = target;
    tqkv_replace_allocator(oom_malloc, oom_realloc, oom_calloc, free);
    tqkv_redis *e = NULL;
    int rc = tqkv_redis_create(&loop, &cfg, &e);
    int bad = 0;
    if (rc == 0) {
        wait_state(e, TQKV_REDIS_UP);
        result r[4];
        memset(r, 0, sizeof(r));
        int calls[4] = {
            tqkv_redis_put(e, "ns", key, 32, v, sizeof(v), done_cb, &r[0]),
            tqkv_redis_get(e, "ns", key, 32, get_cb, &r[1]),
            tqkv_redis_set_members(e, "s", members_cb, &r[2]),
            tqkv_redis_clear(e, "other", done_cb, &r[3]),
        };
        for (int i = 0; i < 4; i++) {
            if (calls[i] == 0)
                pending++;
            else if (calls[i] != TQKV_ENOMEM)
                bad++;
        }
        tqkv_test_loop_wait(&loop, &pending, 20);
        for (int i = 0; i < 4; i++) {
            if (calls[i] == 0 && !r[i].done) bad++;
            if (r[i].status < 0 && r[i].status != TQKV_ENOMEM) bad++;
        }
        free(r[1].data);
        destroy(e);
    } else if (rc != TQKV_ENOMEM) {
        bad++;
    }
    tqkv_replace_allocator(NULL, NULL, NULL, NULL);
    return bad ? -1 : (oom_seen <= target ? 1 : 0); /* 1: the target was never reached */
}

static void test_out_of_memory(void)
{
    tqkv_test_redis s;
    START_SERVER(&s, NULL);
    int rounds = 0;
    for (long k = 0; k < 200; k++) {
        int rc = oom_round(&s, k);
        if (rc < 0) fprintf(stderr, "allocation %ld failing broke the contract\n", k);
        ASSERT_TRUE(rc >= 0);
        rounds++;
        if (rc == 1) break; /* past the last allocation of the workload */
    }
    fprintf(stderr, "failed each of the workload's %d allocations in turn\n", rounds - 1);
    ASSERT_TRUE(rounds > 5);
    ASSERT_TRUE(rounds < 200);
    tqkv_test_redis_stop(&s);
}

static const tqkv_test_case cases[] = {
    {"roundtrip", test_roundtrip},
    {"ttl", test_ttl},
    {"auth", test_auth},
    {"prefix", test_prefix},
    {"lz4", test_lz4},
    {"corrupt", test_corrupt},
    {"directory", test_directory},
    {"clear", test_clear},
    {"outage", test_outage},
    {"slow", test_slow},
    {"clear_hung_server", test_clear_hung_server},
    {"destroy_in_callback", test_destroy_in_callback},
    {"destroy_on_timeout", test_destroy_on_timeout},
    {"backpressure", test_backpressure},
    {"send_window", test_send_window},
    {"out_of_memory", test_out_of_memory},
    {NULL, NULL},
};

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    uv_loop_init(&loop);
    tqkv_log_set_level(TQKV_LOG_INFO);
    int rc = tqkv_test_main(argc, argv, cases);
    uv_run(&loop, UV_RUN_NOWAIT);
    uv_loop_close(&loop);
    return rc;
}
