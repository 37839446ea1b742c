/* tqkv_bench: loopback throughput and latency of tqkvd through libtqkv, against redis-server
 * through hiredis in the same run with the same payloads and the same concurrency.
 *
 * For each block size (1, 4, 16 MiB of TurboQuant tq4 blocks) and each number of clients (1, 4,
 * 16; one thread and one TCP connection each), every client PUTs its own already-encoded blocks
 * (fresh keys: nothing is idempotent-skipped) and then GETs them back into a preallocated buffer;
 * the same bytes are SET and GET in redis-server. Each op is one request and one response, timed
 * on its own (p50/p99); throughput is all clients' bytes over the phase's wall time, the clients
 * starting together on a barrier. Then raw PUTs (fp16 KV of the 4 MiB block's chunk, encoded by
 * the daemon; GB/s of raw input) with the same client counts, and LOOKUP of 512 keys (p50/p99).
 * Prints one JSON object per line, then a summary line with the ratios the acceptance criteria
 * name.
 *
 *   tqkv_bench [--url tcp://127.0.0.1:PORT] [--redis HOST:PORT] [--sizes 1,4,16]
 *              [--clients 1,4,16] [--budget-mb 512] [--cold] [--no-raw] [--quick]
 *
 * Each configuration first runs once untimed on both systems (same volume, other keys, deleted
 * after), so that what is measured is the steady state of a running cache rather than the first
 * touch of fresh memory (tqkvd's host arena and redis' heap both fault pages in on first use);
 * --cold skips that pass.
 *
 * Without --url it starts its own tqkvd (tests/integration/tqkvd_harness.c) with a 4 GiB host
 * tier; without --redis it starts its own redis-server on a free port (no persistence). */
#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tq.h"
#include "tqkv.h"
#include "tqkv_time.h"
#include "tqkvd_harness.h"

#define MIB (1ull << 20)
#define MAX_CLIENTS 64

/* ---- small helpers ------------------------------------------------------------------------ */

static uint64_t xs(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Percentile (nearest rank) of n sorted samples, in ms. */
static double pct_ms(const uint64_t *sorted, size_t n, double p)
{
    if (n == 0)
        return 0;
    size_t i = (size_t)(p / 100.0 * (double)n + 0.999999);
    if (i == 0)
        i = 1;
    if (i > n)
        i = n;
    return (double)sorted[i - 1] / 1e6;
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "tqkv_bench: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

/* ---- blocks ------------------------------------------------------------------------------- */

/* Model-like geometry: 32 layers, 8 KV heads, head_dim 128, fp16 source, tq4. */
#define B_LAYERS 32
#define B_HEADS 8
#define B_DIM 128
#define B_PRESET "tq4"

static tq_codec_params codec;

/* A template block of about `target` bytes (the token count is chosen to get close). Keys are
 * changed per copy with make_copy(). */
typedef struct {
    uint8_t *blk;
    size_t len;
    uint32_t tokens;
} tmpl;

static tmpl make_template(uint64_t target)
{
    tmpl t = {0};
    size_t per1 = tq_block_size(&codec, 1, 0, B_LAYERS);
    size_t per2 = tq_block_size(&codec, 2, 0, B_LAYERS);
    size_t per_token = per2 - per1 ? per2 - per1 : 1;
    uint32_t tokens = (uint32_t)(target / per_token);
    if (tokens < 1)
        tokens = 1;
    if (tokens > TQ_MAX_TOKENS)
        tokens = TQ_MAX_TOKENS;
    while (tokens > 1 && tq_block_size(&codec, tokens, 0, B_LAYERS) > target)
        tokens--;
    size_t raw_len = (size_t)B_LAYERS * 2 * tokens * B_HEADS * B_DIM * 2;
    uint16_t *raw = malloc(raw_len);
    if (!raw)
        die("out of memory");
    uint64_t s = 0x9E3779B97F4A7C15ull ^ target;
    for (size_t i = 0; i < raw_len / 2; i++) /* fp16 values in about [-2, 2] */
        raw[i] = (uint16_t)(0x3800u | (xs(&s) & 0x07ffu) | ((s >> 20) & 0x8000u));
    size_t cap = tq_block_size(&codec, tokens, 0, B_LAYERS);
    t.blk = malloc(cap);
    uint8_t key[32] = {0};
    if (!t.blk ||
        tq_block_encode_packed(&codec, key, tokens, raw, raw_len, t.blk, cap, &t.len) != 0)
        die("cannot encode a template block of %" PRIu64 " bytes", target);
    t.tokens = tokens;
    free(raw);
    return t;
}

/* The block for `key`: the template with its key replaced and its checksums recomputed. */
static void make_copy(const tmpl *t, const tqkv_key *key, uint8_t *dst)
{
    memcpy(dst, t->blk, t->len);
    memcpy(dst + 16, key->bytes, 32); /* FORMAT.md: the key at offset 16 */
    if (tq_block_seal(dst, t->len) != 0)
        die("tq_block_seal failed");
}

/* ---- the run ------------------------------------------------------------------------------ */

typedef enum { SYS_TQKV, SYS_REDIS } sys_kind;

typedef struct {
    const char *url;
    const char *redis_host;
    int redis_port;
    const char *ns;
} target;

typedef struct {
    int id, n_clients, n_blocks;
    sys_kind sys;
    const target *tg;
    const tmpl *t;
    uint32_t run;
    pthread_barrier_t *bar;
    /* out */
    uint64_t *lat_put, *lat_get; /* [n_blocks] */
    uint64_t t_put0, t_put1, t_get0, t_get1;
    uint64_t bytes_got;
    int err;
    char why[200];
} client_job;

static tqkv_key job_key(uint32_t run, int client, int i)
{
    tqkv_key k;
    memset(&k, 0, sizeof(k));
    uint64_t s = ((uint64_t)run << 40) ^ ((uint64_t)client << 20) ^ (uint64_t)i ^ 0x5bd1e995u;
    for (int j = 0; j < 32; j += 8) {
        uint64_t r = xs(&s) + (uint64_t)j;
        memcpy(k.bytes + j, &r, 8);
    }
    return k;
}

static tqkv_client *tqkv_open(const target *tg)
{
    tqkv_options o;
    tqkv_options_init(&o);
    o.client_name = "tqkv_bench";
    o.timeout_ms = 120000;
    tqkv_client *c = NULL;
    return tqkv_connect(tg->url, &o, &c) == 0 ? c : NULL;
}

static void *client_main(void *arg)
{
    client_job *j = arg;
    const size_t len = j->t->len;
    uint8_t **blocks = calloc((size_t)j->n_blocks, sizeof(uint8_t *));
    uint8_t *dst = malloc(len);
    tqkv_key *keys = calloc((size_t)j->n_blocks, sizeof(tqkv_key));
    tqkv_client *c = NULL;
    redisContext *rc = NULL;
    if (!blocks || !dst || !keys) {
        snprintf(j->why, sizeof(j->why), "out of memory");
        j->err = 1;
    }
    for (int i = 0; !j->err && i < j->n_blocks; i++) {
        keys[i] = job_key(j->run, j->id, i);
        blocks[i] = malloc(len);
        if (!blocks[i]) {
            snprintf(j->why, sizeof(j->why), "out of memory");
            j->err = 1;
            break;
        }
        make_copy(j->t, &keys[i], blocks[i]);
        memset(dst, 0, len); /* touch the pages now, not in the timed loop */
    }
    if (!j->err && j->sys == SYS_TQKV && !(c = tqkv_open(j->tg))) {
        snprintf(j->why, sizeof(j->why), "cannot connect to %s", j->tg->url);
        j->err = 1;
    }
    if (!j->err && j->sys == SYS_REDIS) {
        rc = redisConnect(j->tg->redis_host, j->tg->redis_port);
        if (!rc || rc->err) {
            snprintf(j->why, sizeof(j->why), "redis connect: %s", rc ? rc->errstr : "?");
            j->err = 1;
        } /* hiredis sets TCP_NODELAY itself */
    }
    /* everyone waits here even after an error, so the barrier never deadlocks */
    pthread_barrier_wait(j->bar);
    j->t_put0 = tqkv_now_ns();
    for (int i = 0; !j->err && i < j->n_blocks; i++) {
        uint64_t t0 = tqkv_now_ns();
        if (j->sys == SYS_TQKV) {
            tqkv_put_item it = {.key = keys[i], .data = blocks[i], .len = len};
            int st = 0;
            if (tqkv_put_blocks(c, j->tg->ns, &it, 1, &st)) {
                snprintf(j->why, sizeof(j->why), "put: %s", tqkv_errmsg(c));
                j->err = 1;
            }
        } else {
            redisReply *r =
                redisCommand(rc, "SET %b %b", keys[i].bytes, (size_t)32, blocks[i], len);
            if (!r || r->type == REDIS_REPLY_ERROR) {
                snprintf(j->why, sizeof(j->why), "SET: %s", r ? r->str : rc->errstr);
                j->err = 1;
            }
            if (r)
                freeReplyObject(r);
        }
        j->lat_put[i] = tqkv_now_ns() - t0;
    }
    j->t_put1 = tqkv_now_ns();
    pthread_barrier_wait(j->bar);
    j->t_get0 = tqkv_now_ns();
    for (int i = 0; !j->err && i < j->n_blocks; i++) {
        uint64_t t0 = tqkv_now_ns();
        size_t got = 0;
        if (j->sys == SYS_TQKV) {
            tqkv_get_item gi = {.buf = dst, .cap = len};
            if (tqkv_get(c, j->tg->ns, &keys[i], 1, NULL, &gi) || gi.status) {
                snprintf(j->why, sizeof(j->why), "get: %s (status %d)", tqkv_errmsg(c),
                         gi.status);
                j->err = 1;
            }
            got = gi.len;
            tqkv_get_items_release(&gi, 1);
        } else {
            redisReply *r = redisCommand(rc, "GET %b", keys[i].bytes, (size_t)32);
            if (!r || r->type != REDIS_REPLY_STRING) {
                snprintf(j->why, sizeof(j->why), "GET failed");
                j->err = 1;
            } else {
                /* a client copies the value out of the reply object, as with tqkv's buffer */
                memcpy(dst, r->str, (size_t)r->len < len ? (size_t)r->len : len);
                got = (size_t)r->len;
            }
            if (r)
                freeReplyObject(r);
        }
        j->lat_get[i] = tqkv_now_ns() - t0;
        j->bytes_got += got;
        if (!j->err && (got != len || memcmp(dst + 48, blocks[i] + 48, 64) != 0)) {
            snprintf(j->why, sizeof(j->why), "GET returned other bytes (%zu)", got);
            j->err = 1;
        }
    }
    j->t_get1 = tqkv_now_ns();
    /* cleanup, untimed: keep the daemon and redis from growing across configurations */
    if (c) {
        tqkv_delete(c, j->tg->ns, keys, (size_t)j->n_blocks, NULL);
        tqkv_close(c);
    }
    if (rc) {
        for (int i = 0; i < j->n_blocks; i++) {
            redisReply *r = redisCommand(rc, "DEL %b", keys[i].bytes, (size_t)32);
            if (r)
                freeReplyObject(r);
        }
        redisFree(rc);
    }
    for (int i = 0; blocks && i < j->n_blocks; i++)
        free(blocks[i]);
    free(blocks);
    free(keys);
    free(dst);
    return NULL;
}

typedef struct {
    double put_gbps, get_gbps;
} result;

static result run_config(sys_kind sys, const target *tg, const tmpl *t, int n_clients,
                         int n_blocks, uint32_t run, int quiet)
{
    pthread_t th[MAX_CLIENTS];
    client_job jobs[MAX_CLIENTS];
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, (unsigned)n_clients);
    size_t n_all = (size_t)n_clients * (size_t)n_blocks;
    uint64_t *lp = calloc(n_all, sizeof(uint64_t)), *lg = calloc(n_all, sizeof(uint64_t));
    if (!lp || !lg)
        die("out of memory");
    for (int i = 0; i < n_clients; i++) {
        jobs[i] = (client_job){.id = i, .n_clients = n_clients, .n_blocks = n_blocks, .sys = sys,
                               .tg = tg, .t = t, .run = run, .bar = &bar,
                               .lat_put = lp + (size_t)i * n_blocks,
                               .lat_get = lg + (size_t)i * n_blocks};
        if (pthread_create(&th[i], NULL, client_main, &jobs[i]))
            die("pthread_create");
    }
    uint64_t p0 = UINT64_MAX, p1 = 0, g0 = UINT64_MAX, g1 = 0, got = 0;
    for (int i = 0; i < n_clients; i++) {
        pthread_join(th[i], NULL);
        if (jobs[i].err)
            die("%s client %d: %s", sys == SYS_TQKV ? "tqkv" : "redis", i, jobs[i].why);
        p0 = jobs[i].t_put0 < p0 ? jobs[i].t_put0 : p0;
        p1 = jobs[i].t_put1 > p1 ? jobs[i].t_put1 : p1;
        g0 = jobs[i].t_get0 < g0 ? jobs[i].t_get0 : g0;
        g1 = jobs[i].t_get1 > g1 ? jobs[i].t_get1 : g1;
        got += jobs[i].bytes_got;
    }
    pthread_barrier_destroy(&bar);
    qsort(lp, n_all, sizeof(uint64_t), cmp_u64);
    qsort(lg, n_all, sizeof(uint64_t), cmp_u64);
    result r;
    r.put_gbps = (double)n_all * (double)t->len / ((double)(p1 - p0) / 1e9) / 1e9;
    r.get_gbps = (double)got / ((double)(g1 - g0) / 1e9) / 1e9;
    const char *name = sys == SYS_TQKV ? "tqkvd" : "redis";
    if (quiet)
        goto out;
    printf("{\"system\":\"%s\",\"op\":\"%s\",\"block_bytes\":%zu,\"clients\":%d,\"ops\":%zu,"
           "\"GBps\":%.3f,\"ops_per_s\":%.1f,\"p50_ms\":%.3f,\"p99_ms\":%.3f}\n",
           name, sys == SYS_TQKV ? "put_block" : "set", t->len, n_clients, n_all, r.put_gbps,
           (double)n_all / ((double)(p1 - p0) / 1e9), pct_ms(lp, n_all, 50), pct_ms(lp, n_all, 99));
    printf("{\"system\":\"%s\",\"op\":\"get\",\"block_bytes\":%zu,\"clients\":%d,\"ops\":%zu,"
           "\"GBps\":%.3f,\"ops_per_s\":%.1f,\"p50_ms\":%.3f,\"p99_ms\":%.3f}\n",
           name, t->len, n_clients, n_all, r.get_gbps,
           (double)n_all / ((double)(g1 - g0) / 1e9), pct_ms(lg, n_all, 50), pct_ms(lg, n_all, 99));
    fflush(stdout);
out:
    free(lp);
    free(lg);
    return r;
}

/* ---- raw PUT: the daemon encodes ------------------------------------------------------------ */

typedef struct {
    int id, n_blocks;
    const target *tg;
    const uint16_t *raw;
    size_t raw_len;
    uint32_t tokens, run;
    pthread_barrier_t *bar;
    uint64_t *lat;
    uint64_t t0, t1;
    int err;
    char why[200];
} raw_job;

static void *raw_main(void *arg)
{
    raw_job *j = arg;
    tqkv_key *keys = calloc((size_t)j->n_blocks, sizeof(tqkv_key));
    tqkv_client *c = tqkv_open(j->tg);
    if (!keys || !c) {
        snprintf(j->why, sizeof(j->why), "setup failed");
        j->err = 1;
    }
    for (int i = 0; keys && i < j->n_blocks; i++)
        keys[i] = job_key(j->run, j->id, i);
    pthread_barrier_wait(j->bar);
    j->t0 = tqkv_now_ns();
    for (int i = 0; !j->err && i < j->n_blocks; i++) {
        tqkv_put_item it = {.key = keys[i], .data = j->raw, .len = j->raw_len,
                            .n_tokens = j->tokens};
        uint64_t t = tqkv_now_ns();
        int st = 0;
        if (tqkv_put_raw(c, j->tg->ns, &it, 1, &st)) {
            snprintf(j->why, sizeof(j->why), "put_raw: %s", tqkv_errmsg(c));
            j->err = 1;
        }
        j->lat[i] = tqkv_now_ns() - t;
    }
    j->t1 = tqkv_now_ns();
    if (c) {
        tqkv_delete(c, j->tg->ns, keys, (size_t)j->n_blocks, NULL);
        tqkv_close(c);
    }
    free(keys);
    return NULL;
}

/* n_clients clients each PUT n_blocks raw fp16 chunks of `tokens` tokens (fresh keys); the daemon
 * encodes them with the namespace's preset on its workers. GB/s counts raw input bytes. */
static void bench_put_raw(const target *tg, const uint16_t *raw, size_t raw_len, uint32_t tokens,
                          size_t block_len, int n_clients, int n_blocks, uint32_t run, int quiet)
{
    pthread_t th[MAX_CLIENTS];
    raw_job jobs[MAX_CLIENTS];
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, (unsigned)n_clients);
    size_t n_all = (size_t)n_clients * (size_t)n_blocks;
    uint64_t *lat = calloc(n_all, sizeof(uint64_t));
    if (!lat)
        die("out of memory");
    for (int i = 0; i < n_clients; i++) {
        jobs[i] = (raw_job){.id = i, .n_blocks = n_blocks, .tg = tg, .raw = raw,
                            .raw_len = raw_len, .tokens = tokens, .run = run, .bar = &bar,
                            .lat = lat + (size_t)i * n_blocks};
        if (pthread_create(&th[i], NULL, raw_main, &jobs[i]))
            die("pthread_create");
    }
    uint64_t t0 = UINT64_MAX, t1 = 0;
    for (int i = 0; i < n_clients; i++) {
        pthread_join(th[i], NULL);
        if (jobs[i].err)
            die("raw client %d: %s", i, jobs[i].why);
        t0 = jobs[i].t0 < t0 ? jobs[i].t0 : t0;
        t1 = jobs[i].t1 > t1 ? jobs[i].t1 : t1;
    }
    pthread_barrier_destroy(&bar);
    qsort(lat, n_all, sizeof(uint64_t), cmp_u64);
    double s = (double)(t1 - t0) / 1e9;
    if (!quiet)
        printf("{\"system\":\"tqkvd\",\"op\":\"put_raw\",\"raw_bytes\":%zu,\"block_bytes\":%zu,"
               "\"clients\":%d,\"ops\":%zu,\"GBps_raw\":%.3f,\"ops_per_s\":%.1f,"
               "\"p50_ms\":%.3f,\"p99_ms\":%.3f}\n",
               raw_len, block_len, n_clients, n_all, (double)n_all * (double)raw_len / s / 1e9,
               (double)n_all / s, pct_ms(lat, n_all, 50), pct_ms(lat, n_all, 99));
    fflush(stdout);
    free(lat);
}

/* LOOKUP of 512 keys that are all present, from one client: p50/p99 per call. */
static double bench_lookup(const target *tg, int iters)
{
    tqkv_client *c = tqkv_open(tg);
    if (!c)
        die("cannot connect to %s", tg->url);
    tqkv_namespace ns = {.name = "bench-lookup", .n_layers = 2, .n_kv_heads = 1, .head_dim = 64,
                         .dtype = TQKV_DTYPE_F16, .chunk_size = 16, .preset = "tq4"};
    if (tqkv_register(c, &ns))
        die("register: %s", tqkv_errmsg(c));
    enum { N = 512, T = 16 };
    static tqkv_key keys[N];
    static tqkv_put_item items[N];
    static uint16_t raw[2 * 2 * T * 64];
    for (size_t i = 0; i < sizeof(raw) / 2; i++)
        raw[i] = (uint16_t)(0x3800u | (i * 37 & 0x3ff));
    for (int i = 0; i < N; i++) {
        keys[i] = job_key(0xffff, 0, i);
        items[i] = (tqkv_put_item){.key = keys[i], .data = raw, .len = sizeof(raw), .n_tokens = T};
    }
    if (tqkv_put_raw(c, "bench-lookup", items, N, NULL))
        die("put for lookup: %s", tqkv_errmsg(c));
    uint64_t *lat = calloc((size_t)iters, sizeof(uint64_t));
    uint8_t tiers[N];
    for (int w = 0; w < 50; w++) { /* warm-up */
        uint32_t hits;
        tqkv_lookup(c, "bench-lookup", keys, N, 0, &hits, tiers, NULL);
    }
    uint64_t t0 = tqkv_now_ns();
    for (int i = 0; i < iters; i++) {
        uint32_t hits = 0;
        uint64_t t = tqkv_now_ns();
        if (tqkv_lookup(c, "bench-lookup", keys, N, 0, &hits, tiers, NULL) || hits != N)
            die("lookup: %s (hits %u)", tqkv_errmsg(c), hits);
        lat[i] = tqkv_now_ns() - t;
    }
    double wall = (double)(tqkv_now_ns() - t0) / 1e9;
    qsort(lat, (size_t)iters, sizeof(uint64_t), cmp_u64);
    double p99 = pct_ms(lat, (size_t)iters, 99);
    printf("{\"system\":\"tqkvd\",\"op\":\"lookup\",\"keys\":%d,\"clients\":1,\"ops\":%d,"
           "\"ops_per_s\":%.1f,\"p50_ms\":%.4f,\"p99_ms\":%.4f}\n",
           N, iters, iters / wall, pct_ms(lat, (size_t)iters, 50), p99);
    fflush(stdout);
    free(lat);
    tqkv_delete(c, "bench-lookup", keys, N, NULL);
    tqkv_close(c);
    return p99;
}

/* ---- redis-server ------------------------------------------------------------------------- */

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof(a);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) || getsockname(fd, (void *)&a, &l))
        die("cannot find a free port");
    int port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static pid_t start_redis(int port)
{
    char ports[16];
    snprintf(ports, sizeof(ports), "%d", port);
    pid_t pid = fork();
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0) {
            dup2(devnull, 1);
            dup2(devnull, 2);
        }
        execlp("redis-server", "redis-server", "--port", ports, "--bind", "127.0.0.1",
               "--save", "", "--appendonly", "no", "--protected-mode", "no", (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 100; i++) { /* up to 5 s */
        redisContext *c = redisConnect("127.0.0.1", port);
        if (c && !c->err) {
            redisReply *r = redisCommand(c, "PING");
            int ok = r && r->type == REDIS_REPLY_STATUS;
            if (r)
                freeReplyObject(r);
            redisFree(c);
            if (ok)
                return pid;
        } else if (c) {
            redisFree(c);
        }
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    die("redis-server did not start (is it installed?)");
}

/* ---- main --------------------------------------------------------------------------------- */

static int parse_list(const char *s, int *out, int max)
{
    int n = 0;
    while (*s && n < max) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v <= 0)
            return -1;
        out[n++] = (int)v;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',')
            return -1;
    }
    return n;
}

int main(int argc, char **argv)
{
    const char *url = NULL, *redis = NULL;
    int sizes[8] = {1, 4, 16}, n_sizes = 3, clients[8] = {1, 4, 16}, n_clients = 3;
    uint64_t budget = 512 * MIB;
    int lookup_iters = 5000, warm = 1, raw_rows = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--url") && i + 1 < argc)
            url = argv[++i];
        else if (!strcmp(argv[i], "--redis") && i + 1 < argc)
            redis = argv[++i];
        else if (!strcmp(argv[i], "--sizes") && i + 1 < argc)
            n_sizes = parse_list(argv[++i], sizes, 8);
        else if (!strcmp(argv[i], "--clients") && i + 1 < argc)
            n_clients = parse_list(argv[++i], clients, 8);
        else if (!strcmp(argv[i], "--budget-mb") && i + 1 < argc)
            budget = strtoull(argv[++i], NULL, 10) * MIB;
        else if (!strcmp(argv[i], "--cold"))
            warm = 0;
        else if (!strcmp(argv[i], "--no-raw"))
            raw_rows = 0;
        else if (!strcmp(argv[i], "--quick")) {
            budget = 64 * MIB;
            lookup_iters = 500;
        } else {
            fprintf(stderr,
                    "usage: %s [--url tcp://HOST:PORT] [--redis HOST:PORT] [--sizes 1,4,16]\n"
                    "          [--clients 1,4,16] [--budget-mb 512] [--cold] [--no-raw]"
                    " [--quick]\n",
                    argv[0]);
            return 2;
        }
    }
    if (n_sizes <= 0 || n_clients <= 0 || budget == 0)
        die("bad --sizes, --clients or --budget-mb");
    for (int i = 0; i < n_clients; i++)
        if (clients[i] > MAX_CLIENTS)
            die("at most %d clients", MAX_CLIENTS);
    signal(SIGPIPE, SIG_IGN);

    if (tq_codec_params_init(&codec, B_PRESET, B_LAYERS, B_HEADS, B_DIM, TQ_DTYPE_F16))
        die("codec params");

    tqkvd_harness h;
    int own_daemon = !url;
    if (own_daemon) {
        static const char *const args[] = {"--host-capacity", "4G", "--log-level", "warn",
                                           NULL};
        if (tqkvd_harness_start(&h, args))
            die("cannot start tqkvd");
        static char tcp[64];
        snprintf(tcp, sizeof(tcp), "tcp://127.0.0.1:%u", (unsigned)h.tcp_port);
        url = tcp;
    }
    target tg = {.url = url, .ns = "bench"};
    pid_t redis_pid = -1;
    static char rhost[128];
    if (redis) {
        const char *colon = strrchr(redis, ':');
        if (!colon || (size_t)(colon - redis) >= sizeof(rhost))
            die("--redis wants HOST:PORT");
        memcpy(rhost, redis, (size_t)(colon - redis));
        tg.redis_host = rhost;
        tg.redis_port = atoi(colon + 1);
    } else {
        tg.redis_port = free_port();
        tg.redis_host = "127.0.0.1";
        redis_pid = start_redis(tg.redis_port);
    }

    tqkv_client *c = tqkv_open(&tg);
    if (!c)
        die("cannot connect to %s", url);
    tqkv_namespace ns = {.name = "bench", .n_layers = B_LAYERS, .n_kv_heads = B_HEADS,
                         .head_dim = B_DIM, .dtype = TQKV_DTYPE_F16, .chunk_size = 4096,
                         .preset = B_PRESET};
    if (tqkv_register(c, &ns))
        die("register: %s", tqkv_errmsg(c));
    printf("{\"bench\":\"tqkv_bench\",\"url\":\"%s\",\"redis\":\"%s:%d\",\"server_version\":"
           "\"%s\",\"preset\":\"%s\",\"layers\":%d,\"kv_heads\":%d,\"head_dim\":%d,"
           "\"transport\":\"tcp loopback\",\"warmup\":%s}\n",
           url, tg.redis_host, tg.redis_port, tqkv_server_version(c), B_PRESET, B_LAYERS, B_HEADS,
           B_DIM, warm ? "true" : "false");
    tqkv_close(c);

    double get4 = 0, set4 = 0, put4 = 0, rget4 = 0;
    uint32_t run = 1;
    for (int si = 0; si < n_sizes; si++) {
        tmpl t = make_template((uint64_t)sizes[si] * MIB);
        for (int ci = 0; ci < n_clients; ci++) {
            int nc = clients[ci];
            uint64_t per = budget / ((uint64_t)nc * t.len);
            int nb = per < 4 ? 4 : per > 64 ? 64 : (int)per;
            if (warm) { /* the same volume once, untimed: steady state, not first touch */
                run_config(SYS_TQKV, &tg, &t, nc, nb, run++, 1);
                run_config(SYS_REDIS, &tg, &t, nc, nb, run++, 1);
            }
            result a = run_config(SYS_TQKV, &tg, &t, nc, nb, run++, 0);
            result b = run_config(SYS_REDIS, &tg, &t, nc, nb, run++, 0);
            if (sizes[si] == 4 && nc == 4) {
                put4 = a.put_gbps;
                get4 = a.get_gbps;
                set4 = b.put_gbps;
                rget4 = b.get_gbps;
            }
        }
        free(t.blk);
    }
    if (raw_rows) {
        /* Raw PUT of the 4 MiB block's chunk: fp16 KV the daemon encodes to tq4. */
        tmpl t = make_template(4 * MIB);
        size_t raw_len = (size_t)B_LAYERS * 2 * t.tokens * B_HEADS * B_DIM * 2;
        uint16_t *raw = malloc(raw_len);
        if (!raw)
            die("out of memory");
        uint64_t s = 12345;
        for (size_t i = 0; i < raw_len / 2; i++)
            raw[i] = (uint16_t)(0x3800u | (xs(&s) & 0x07ffu) | ((s >> 20) & 0x8000u));
        for (int ci = 0; ci < n_clients; ci++) {
            int nc = clients[ci];
            uint64_t per = budget / ((uint64_t)nc * raw_len);
            int nb = per < 4 ? 4 : per > 64 ? 64 : (int)per;
            if (warm)
                bench_put_raw(&tg, raw, raw_len, t.tokens, t.len, nc, nb, run++, 1);
            bench_put_raw(&tg, raw, raw_len, t.tokens, t.len, nc, nb, run++, 0);
        }
        free(raw);
        free(t.blk);
    }
    double lookup_p99 = bench_lookup(&tg, lookup_iters);
    if (put4 > 0)
        printf("{\"summary\":true,\"get_4MiB_4clients_vs_redis\":%.2f,"
               "\"put_block_4MiB_4clients_vs_redis_set\":%.2f,\"lookup512_p99_ms\":%.4f}\n",
               get4 / rget4, put4 / set4, lookup_p99);
    else
        printf("{\"summary\":true,\"lookup512_p99_ms\":%.4f}\n", lookup_p99);

    if (redis_pid > 0) {
        kill(redis_pid, SIGTERM);
        waitpid(redis_pid, NULL, 0);
    }
    if (own_daemon && tqkvd_harness_stop(&h) != 0)
        fprintf(stderr, "tqkv_bench: tqkvd did not shut down cleanly\n");
    return 0;
}
