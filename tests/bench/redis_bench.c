/* Benchmark of the Redis engine against raw hiredis, in the same run, on the same redis-server,
 * the same libuv loop and the same connection: PUT and GET throughput of 256 KiB - 4 MiB values,
 * with the same number of requests in flight (pipelining depth). The baseline is hiredis' async
 * API doing plain SET/GET of the same bytes (no header, no checksum); the engine adds its value
 * header, XXH3 checksums on write and on read, key verification and (optionally) LZ4. Values are
 * random (incompressible, like TurboQuant blocks).
 *
 * The baseline's commands go through the engine's own hiredis context: with two connections,
 * Redis' per-client state alone made one connection up to 30% faster than the other for the
 * same work (measured engine against engine). Each (op, size) runs `reps` rounds, engine and raw
 * back to back, alternating which goes first. Reported: throughput over all rounds (`ratio` =
 * engine / raw), the median over rounds of the per-round ratio, and the client process' CPU time
 * (user + system) per request on each side, which the other loads of a shared machine disturb
 * less than wall time. Prints one JSON object per
 * line on stdout.
 *
 *   redis_bench [--port P] [--sizes-kb 256,1024,4096] [--depth 8] [--total-mb 128]
 *               [--keys 16] [--reps 15] [--lz4] [--window-kb N]
 *
 * --total-mb is per round and side; --window-kb sets the engine's send window (0: none, i.e.
 * everything handed to hiredis at once, as the baseline does). Without --port it starts its own
 * redis-server on a random loopback port (and kills it). */
#include "redis_harness.h"
#include "redis_internal.h"
#include "tqkv_log.h"
#include "tqkv_redis.h"
#include "tqkv_time.h"

#include <hiredis/async.h>

#include <signal.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uv_loop_t loop;

typedef struct {
    int raw; /* 1: hiredis baseline, 0: engine */
    int put; /* 1: PUT/SET, 0: GET */
    size_t size;
    int n_ops, issued, done, inflight, depth, n_keys, errors;
    uint64_t bytes; /* value bytes moved */
    double cpu;     /* client CPU seconds over all rounds */
    const uint8_t *value;
    tqkv_redis *e;
    redisAsyncContext *ac;
} run_state;

static void issue(run_state *s);

static void key_of(int i, uint8_t key[32])
{
    memset(key, 0, 32);
    memcpy(key, &i, sizeof(i));
}

static void finish_one(run_state *s, int ok, size_t len)
{
    s->done++;
    s->inflight--;
    if (ok)
        s->bytes += len;
    else
        s->errors++;
    issue(s);
}

static void eng_put_cb(void *arg, int status)
{
    run_state *s = arg;
    finish_one(s, status == 0, s->size);
}

static void eng_get_cb(void *arg, int status, const void *data, size_t len)
{
    run_state *s = arg;
    finish_one(s, status == 1 && len == s->size, len);
}

static void raw_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
    run_state *s = privdata;
    redisReply *r = reply;
    if (s->put)
        finish_one(s, r && r->type == REDIS_REPLY_STATUS, s->size);
    else
        finish_one(s, r && r->type == REDIS_REPLY_STRING && r->len == s->size, r ? r->len : 0);
}

static void issue(run_state *s)
{
    while (s->inflight < s->depth && s->issued < s->n_ops) {
        int k = s->issued % s->n_keys;
        int rc;
        if (s->raw) {
            char rkey[64];
            int kl = snprintf(rkey, sizeof(rkey), "raw:%zu:%d", s->size, k);
            const char *argv[3] = {s->put ? "SET" : "GET", rkey, (const char *)s->value};
            size_t lens[3] = {3, (size_t)kl, s->size};
            rc = redisAsyncCommandArgv(s->ac, raw_cb, s, s->put ? 3 : 2, argv, lens) == REDIS_OK
                     ? 0
                     : -1;
        } else {
            uint8_t key[32];
            key_of(k, key);
            char ns[32];
            snprintf(ns, sizeof(ns), "bench%zu", s->size);
            rc = s->put ? tqkv_redis_put(s->e, ns, key, 32, s->value, s->size, eng_put_cb, s)
                        : tqkv_redis_get(s->e, ns, key, 32, eng_get_cb, s);
        }
        s->issued++;
        if (rc < 0) {
            s->done++;
            s->errors++;
            continue;
        }
        s->inflight++;
    }
}

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
}

/* Runs one measurement; adds the client's CPU time (user + system) to s->cpu.
 * @return MB/s (1e6 bytes), or -1 on errors. */
static double measure(run_state *s)
{
    s->issued = s->done = s->inflight = s->errors = 0;
    s->bytes = 0;
    double c0 = cpu_s();
    uint64_t t0 = tqkv_now_ns();
    issue(s);
    while (s->done < s->n_ops)
        uv_run(&loop, UV_RUN_ONCE);
    double sec = (double)(tqkv_now_ns() - t0) * 1e-9;
    s->cpu += cpu_s() - c0;
    if (s->errors) return -1;
    return (double)s->bytes / sec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int main(int argc, char **argv)
{
    int port = 0, depth = 8, total_mb = 128, n_keys = 16, reps = 15, lz4 = 0;
    long window_kb = -1; /* -1: the engine's default */
    size_t sizes[8] = {256 << 10, 1 << 20, 4 << 20};
    int n_sizes = 3;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--port") && i + 1 < argc)
            port = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--depth") && i + 1 < argc)
            depth = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--total-mb") && i + 1 < argc)
            total_mb = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--keys") && i + 1 < argc)
            n_keys = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--lz4"))
            lz4 = 1;
        else if (!strcmp(argv[i], "--window-kb") && i + 1 < argc)
            window_kb = atol(argv[++i]);
        else if (!strcmp(argv[i], "--sizes-kb") && i + 1 < argc) {
            n_sizes = 0;
            for (char *p = argv[++i]; *p && n_sizes < 8;) {
                sizes[n_sizes++] = (size_t)strtoul(p, &p, 10) << 10;
                if (*p == ',') p++;
            }
        } else {
            fprintf(stderr, "usage: redis_bench [--port P] [--sizes-kb 256,1024,4096] [--depth 8] "
                            "[--total-mb 128] [--keys 16] [--reps 15] [--lz4] [--window-kb N]\n");
            return 2;
        }
    }
    if (depth < 1 || reps < 1 || reps > 64 || n_keys < 1 || total_mb < 1) return 2;
    signal(SIGPIPE, SIG_IGN);
    tqkv_log_set_level(TQKV_LOG_WARN);
    uv_loop_init(&loop);

    tqkv_test_redis server = {0};
    if (!port) {
        if (!tqkv_test_redis_available()) {
            fprintf(stderr, "redis-server not installed\n");
            return 77;
        }
        if (tqkv_test_redis_start(&server, NULL) < 0) return 1;
        port = server.port;
    }

    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
    const char *nodes[1] = {addr};
    tqkv_redis_config cfg;
    tqkv_redis_config_default(&cfg);
    cfg.nodes = nodes;
    cfg.n_nodes = 1;
    cfg.lz4 = lz4;
    cfg.max_queued_bytes = 0; /* the baseline has no such limit: deep runs must not be refused */
    if (window_kb >= 0) cfg.send_window_bytes = (uint64_t)window_kb << 10;
    cfg.timeout_ms = 10000;
    tqkv_redis *e = NULL;
    if (tqkv_redis_create(&loop, &cfg, &e) < 0) return 1;
    tqkv_redis_stats st;
    for (int i = 0; i < 1000; i++) { /* up to ~10 s */
        tqkv_redis_get_stats(e, &st);
        if (st.state == TQKV_REDIS_UP) break;
        tqkv_test_loop_for(&loop, 10);
    }
    redisAsyncContext *ac = tqkv__redis_context(e, 0);
    if (st.state != TQKV_REDIS_UP || !ac) {
        fprintf(stderr, "cannot connect to redis-server on port %d\n", port);
        return 1;
    }

    int rc = 0;
    for (int si = 0; si < n_sizes && rc == 0; si++) {
        size_t size = sizes[si];
        uint8_t *value = malloc(size);
        uint64_t x = 0x9E3779B97F4A7C15ull ^ size;
        for (size_t i = 0; i < size; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            value[i] = (uint8_t)(x >> 24);
        }
        int n_ops = (int)(((uint64_t)total_mb << 20) / size);
        if (n_ops < 2 * depth) n_ops = 2 * depth;
        int keys = n_keys < n_ops ? n_keys : n_ops;
        for (int put = 1; put >= 0 && rc == 0; put--) {
            double eng[64], raw[64], t_eng = 0, t_raw = 0;
            run_state s[2];
            for (int w = 0; w < 2; w++) {
                memset(&s[w], 0, sizeof(s[w]));
                s[w].raw = w;
                s[w].put = put;
                s[w].size = size;
                s[w].n_ops = n_ops;
                s[w].depth = depth;
                s[w].n_keys = keys;
                s[w].value = value;
                s[w].e = e;
                s[w].ac = ac;
            }
            for (int r = 0; r < reps; r++) {
                int first = r % 2; /* alternate which goes first */
                double a = measure(&s[first]), b = measure(&s[!first]);
                if (a < 0 || b < 0) {
                    fprintf(stderr, "errors during %s of %zu bytes\n", put ? "put" : "get", size);
                    rc = 1;
                    break;
                }
                raw[r] = first ? a : b;
                eng[r] = first ? b : a;
                t_raw += (double)n_ops * (double)size / 1e6 / raw[r];
                t_eng += (double)n_ops * (double)size / 1e6 / eng[r];
            }
            if (rc) break;
            /* Throughput over all rounds (total bytes / total time), and the median over rounds
             * of the engine/raw ratio within a round (both run back to back, so a load change on
             * a shared machine hits the pair rather than one side). */
            double pair[64];
            for (int k = 0; k < reps; k++)
                pair[k] = eng[k] / raw[k];
            double mp = median(pair, reps);
            double total = (double)reps * n_ops * (double)size / 1e6;
            double me = total / t_eng, mr = total / t_raw;
            printf("{\"bench\":\"redis\",\"op\":\"%s\",\"value_bytes\":%zu,\"depth\":%d,"
                   "\"ops_per_round\":%d,\"rounds\":%d,\"lz4\":%d,\"window_kb\":%ld,\"engine_"
                   "MBps\":%.1f,"
                   "\"raw_hiredis_MBps\":%.1f,\"engine_ops_per_s\":%.1f,\"raw_ops_per_s\":%.1f,"
                   "\"ratio\":%.3f,\"ratio_median_of_rounds\":%.3f,\"engine_cpu_us_per_op\":%.1f,"
                   "\"raw_cpu_us_per_op\":%.1f}\n",
                   put ? "put" : "get", size, depth, n_ops, reps, lz4, window_kb, me, mr,
                   me * 1e6 / (double)size, mr * 1e6 / (double)size, me / mr, mp,
                   s[0].cpu * 1e6 / ((double)reps * n_ops),
                   s[1].cpu * 1e6 / ((double)reps * n_ops));
            fflush(stdout);
        }
        free(value);
    }
    tqkv_redis_get_stats(e, &st);
    if (st.corrupt || st.errors || st.timeouts) {
        fprintf(stderr, "engine errors: corrupt=%llu errors=%llu timeouts=%llu\n",
                (unsigned long long)st.corrupt, (unsigned long long)st.errors,
                (unsigned long long)st.timeouts);
        rc = 1;
    }
    tqkv_redis_destroy(e);
    uv_run(&loop, UV_RUN_NOWAIT);
    tqkv_test_redis_stop(&server);
    return rc;
}
