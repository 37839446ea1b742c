/* Integration test of tqkvd's Prometheus endpoint (daemon/metrics.c): a real daemon started with
 * `--metrics 127.0.0.1:0` reports the bound port in its ready file; the test speaks HTTP over a
 * plain socket, checks /healthz and the exposition format of /metrics, then does a PUT, a GET hit,
 * a GET miss and a GET of an unknown namespace through libtqkv and checks that the counters moved
 * by exactly that, that each latency histogram is cumulative and monotone, and that its _count
 * equals the requests of its op. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "frame.h"
#include "test_client_util.h"
#include "tqkv_alloc.h"
#include "tqkv_test.h"

static tqkvd_harness daemon_h;
static tqkv_client *cl;

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- HTTP over a plain socket ---- */

typedef struct {
    int status;
    char *body; /* malloc'd, NUL-terminated */
    size_t len;
} http_reply;

/* GET path from the metrics port of daemon h. @return 0, or -1 (printed). */
static int http_get_from(const tqkvd_harness *h, const char *path, http_reply *out)
{
    memset(out, 0, sizeof(*out));
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons(h->metrics_port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        fprintf(stderr, "connect to the metrics port %u: %s\n", h->metrics_port, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    struct timeval tv = {10, 0}; /* a guard against a hang, not a timing assertion */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    char req[256];
    int n = snprintf(req, sizeof(req),
                     "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", path);
    if (write(fd, req, (size_t)n) != n) {
        close(fd);
        return -1;
    }
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (len + 1 >= cap)
            buf = realloc(buf, cap *= 2);
        ssize_t k = read(fd, buf + len, cap - len - 1);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break;
        len += (size_t)k;
    }
    close(fd);
    buf[len] = 0;
    char *body = strstr(buf, "\r\n\r\n");
    if (sscanf(buf, "HTTP/1.%*d %d", &out->status) != 1 || !body) {
        fprintf(stderr, "not an HTTP reply: '%.200s'\n", buf);
        free(buf);
        return -1;
    }
    body += 4;
    out->len = len - (size_t)(body - buf);
    out->body = malloc(out->len + 1);
    memcpy(out->body, body, out->len + 1);
    free(buf);
    return 0;
}

static int http_get(const char *path, http_reply *out)
{
    return http_get_from(&daemon_h, path, out);
}

/* ---- exposition text ---- */

/* The value of the sample written exactly `series` (name with its labels), or -1 if absent. */
static double sample(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (strncmp(p, series, n) == 0 && p[n] == ' ')
            return strtod(p + n + 1, NULL);
    return -1;
}

/* The same, 0 when absent (a series with labels appears once it is non-zero). */
static double sample0(const char *text, const char *series)
{
    double v = sample(text, series);
    return v < 0 ? 0 : v;
}

static char *scrape(void)
{
    http_reply r;
    if (http_get("/metrics", &r) != 0)
        return NULL;
    if (r.status != 200) {
        fprintf(stderr, "/metrics answered %d: %s\n", r.status, r.body);
        free(r.body);
        return NULL;
    }
    return r.body;
}

static int valid_name_char(char c, int first)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
           (!first && c >= '0' && c <= '9');
}

/* ---- cases ---- */

static void test_healthz(void)
{
    http_reply r;
    ASSERT_OK(http_get("/healthz", &r));
    ASSERT_EQ_INT(r.status, 200);
    int ok = strcmp(r.body, "ok\n") == 0;
    free(r.body);
    ASSERT_TRUE(ok);
    ASSERT_OK(http_get("/nothing-here", &r));
    free(r.body);
    ASSERT_EQ_INT(r.status, 404);
}

/* Every line is a comment (# HELP / # TYPE) or `name{labels} value`; every sample's family was
 * typed before it; counters end in _total; the families asked for are there. */
static void test_format(void)
{
    char *text = scrape();
    ASSERT_TRUE(text != NULL);
    char typed[256][96];
    char types[256][16];
    int n_typed = 0, bad = 0, samples = 0;
    char line[1024];
    for (const char *p = text; *p;) {
        const char *nl = strchr(p, '\n');
        size_t l = nl ? (size_t)(nl - p) : strlen(p);
        if (l >= sizeof(line))
            l = sizeof(line) - 1;
        memcpy(line, p, l);
        line[l] = 0;
        p = nl ? nl + 1 : p + l;
        if (!strncmp(line, "# TYPE ", 7)) {
            if (n_typed < 256 &&
                sscanf(line + 7, "%95s %15s", typed[n_typed], types[n_typed]) == 2) {
                if (!strcmp(types[n_typed], "counter")) {
                    size_t k = strlen(typed[n_typed]);
                    if (k < 6 || strcmp(typed[n_typed] + k - 6, "_total") != 0) {
                        fprintf(stderr, "counter without _total: %s\n", line);
                        bad++;
                    }
                }
                n_typed++;
            }
            continue;
        }
        if (!strncmp(line, "# HELP ", 7))
            continue;
        if (line[0] == '#' || !line[0]) {
            fprintf(stderr, "unexpected line: '%s'\n", line);
            bad++;
            continue;
        }
        samples++;
        size_t i = 0;
        while (valid_name_char(line[i], i == 0))
            i++;
        char name[96];
        snprintf(name, sizeof(name), "%.*s", (int)i, line);
        if (line[i] == '{') {
            char *close = strchr(line + i, '}');
            if (!close) {
                fprintf(stderr, "unclosed labels: '%s'\n", line);
                bad++;
                continue;
            }
            i = (size_t)(close - line) + 1;
        }
        char *end;
        if (line[i] != ' ' || (strtod(line + i + 1, &end), *end != 0) || end == line + i + 1) {
            fprintf(stderr, "bad sample: '%s'\n", line);
            bad++;
            continue;
        }
        /* the family: the name, or the name less a histogram suffix */
        int found = 0;
        for (int t = 0; t < n_typed && !found; t++) {
            size_t k = strlen(typed[t]);
            if (!strcmp(name, typed[t]))
                found = 1;
            else if (!strncmp(name, typed[t], k) && !strcmp(types[t], "histogram") &&
                     (!strcmp(name + k, "_bucket") || !strcmp(name + k, "_sum") ||
                      !strcmp(name + k, "_count")))
                found = 1;
        }
        if (!found) {
            fprintf(stderr, "sample before its # TYPE: '%s'\n", line);
            bad++;
        }
    }
    static const char *const want[] = {
        "tqkv_tier_hits_total",
        "tqkv_tier_misses_total",
        "tqkv_tier_bytes_in_total",
        "tqkv_tier_bytes_out_total",
        "tqkv_tier_evictions_total",
        "tqkv_tier_demotions_total",
        "tqkv_tier_promotions_total",
        "tqkv_tier_capacity_bytes",
        "tqkv_tier_used_bytes",
        "tqkv_requests_total",
        "tqkv_request_errors_total",
        "tqkv_request_duration_seconds",
        "tqkv_encode_input_bytes_total",
        "tqkv_encode_seconds_total",
        "tqkv_connections",
    };
    int missing = 0;
    for (size_t w = 0; w < sizeof(want) / sizeof(want[0]); w++) {
        int found = 0;
        for (int t = 0; t < n_typed; t++)
            found |= !strcmp(typed[t], want[w]);
        if (!found) {
            fprintf(stderr, "family missing: %s\n", want[w]);
            missing++;
        }
    }
    double cap = sample(text, "tqkv_tier_capacity_bytes{tier=\"host\"}");
    free(text);
    ASSERT_EQ_INT(bad, 0);
    ASSERT_EQ_INT(missing, 0);
    ASSERT_TRUE(samples > 100);
    ASSERT_EQ_U64((uint64_t)cap, 64ull << 20); /* the harness's --host-capacity 64M */
}

/* Cumulative buckets of op's histogram, non-decreasing, +Inf == _count. @return _count, or -1
 * when the shape is wrong (printed). */
static double check_histogram(const char *text, const char *op)
{
    static const char *const le[] = {"1e-05",  "2.5e-05", "5e-05",  "0.0001", "0.00025",
                                     "0.0005", "0.001",   "0.0025", "0.005",  "0.01",
                                     "0.025",  "0.05",    "0.1",    "0.25",   "0.5",
                                     "1",      "2.5",     "5",      "10",     "+Inf"};
    char s[160];
    double prev = 0;
    for (size_t i = 0; i < sizeof(le) / sizeof(le[0]); i++) {
        snprintf(s, sizeof(s), "tqkv_request_duration_seconds_bucket{op=\"%s\",le=\"%s\"}", op,
                 le[i]);
        double v = sample(text, s);
        if (v < 0 || v < prev) {
            fprintf(stderr, "%s = %g after %g\n", s, v, prev);
            return -1;
        }
        prev = v;
    }
    snprintf(s, sizeof(s), "tqkv_request_duration_seconds_count{op=\"%s\"}", op);
    double count = sample(text, s);
    snprintf(s, sizeof(s), "tqkv_request_duration_seconds_sum{op=\"%s\"}", op);
    double sum = sample(text, s);
    if (count != prev || sum < 0 || (count > 0) != (sum > 0)) {
        fprintf(stderr, "op %s: +Inf %g, count %g, sum %g\n", op, prev, count, sum);
        return -1;
    }
    return count;
}

#define S_PUT_REQ "tqkv_requests_total{op=\"put\"}"
#define S_GET_REQ "tqkv_requests_total{op=\"get\"}"
#define S_PUT_N "tqkv_request_duration_seconds_count{op=\"put\"}"
#define S_GET_N "tqkv_request_duration_seconds_count{op=\"get\"}"

static void test_counters_move(void)
{
    tc_geom g = tc_geom_small("tq4");
    ASSERT_OK(tc_register(cl, "m", &g));
    uint16_t *raw = tc_make_raw(&g, g.tokens, 7);
    ASSERT_TRUE(raw != NULL);
    const size_t raw_len = tc_raw_len(&g, g.tokens);
    tqkv_key k1 = tc_key(1, 5), k2 = tc_key(2, 5);
    /* What the PUT will store: the block libtq makes of this chunk (the daemon encodes alike). */
    size_t block_len = 0;
    void *block = tc_encode(&g, &k1, raw, g.tokens, &block_len);
    free(block);
    ASSERT_TRUE(block_len > 0);

    char *a = scrape();
    ASSERT_TRUE(a != NULL);
    tqkv_put_item it = {.key = k1, .data = raw, .len = raw_len, .n_tokens = g.tokens};
    int put_rc = tqkv_put_raw(cl, "m", &it, 1, NULL);
    tqkv_get_item hit, miss, none;
    memset(&hit, 0, sizeof(hit));
    memset(&miss, 0, sizeof(miss));
    memset(&none, 0, sizeof(none));
    int hit_rc = tqkv_get(cl, "m", &k1, 1, NULL, &hit);
    int miss_rc = tqkv_get(cl, "m", &k2, 1, NULL, &miss);
    int none_rc = tqkv_get(cl, "no-such-namespace", &k1, 1, NULL, &none);
    size_t got_len = hit.len;
    int hit_status = hit.status, miss_status = miss.status;
    tqkv_get_items_release(&hit, 1);
    tqkv_get_items_release(&miss, 1);
    tqkv_get_items_release(&none, 1);
    free(raw);

    /* The latency of a request is recorded once its response is written, which the loop learns
     * right after the client may already have read it: scrape again until the GETs are in (a
     * bound against a hang; the values are then compared exactly). */
    char *b = NULL;
    for (int i = 0; i < 100; i++) {
        free(b);
        b = scrape();
        if (!b || sample(b, S_GET_N) - sample(a, S_GET_N) >= 3)
            break;
        sleep_ms(20);
    }
    double d_put_req = b ? sample(b, S_PUT_REQ) - sample(a, S_PUT_REQ) : -1;
    double d_get_req = b ? sample(b, S_GET_REQ) - sample(a, S_GET_REQ) : -1;
    double d_put_n = b ? sample(b, S_PUT_N) - sample(a, S_PUT_N) : -1;
    double d_get_n = b ? sample(b, S_GET_N) - sample(a, S_GET_N) : -1;
#define DELTA(series) (b ? sample0(b, series) - sample0(a, series) : -1)
    double d_hits = DELTA("tqkv_tier_hits_total{tier=\"host\"}");
    double d_misses = DELTA("tqkv_tier_misses_total{tier=\"host\"}");
    double d_in = DELTA("tqkv_tier_bytes_in_total{tier=\"host\"}");
    double d_out = DELTA("tqkv_tier_bytes_out_total{tier=\"host\"}");
    double d_entries = DELTA("tqkv_tier_entries{tier=\"host\"}");
    double d_puts = DELTA("tqkv_puts_total");
    double d_enc = DELTA("tqkv_encoded_blocks_total");
    double d_enc_bytes = DELTA("tqkv_encode_input_bytes_total");
    double d_ns_hits = DELTA("tqkv_namespace_hits_total{ns=\"m\"}");
    double d_err = DELTA("tqkv_request_errors_total{op=\"get\",code=\"TQKV_ENONAMESPACE\"}");
    double d_put_err = DELTA("tqkv_request_errors_total{op=\"put\",code=\"TQKV_ENONAMESPACE\"}");
    double d_evict = DELTA("tqkv_tier_evictions_total{tier=\"host\"}");
    double enc_s = b ? sample(b, "tqkv_encode_seconds_total") : -1;
#undef DELTA
    double get_count = b ? check_histogram(b, "get") : -1;
    double put_count = b ? check_histogram(b, "put") : -1;
    double hello_count = b ? check_histogram(b, "hello") : -1;
    double evict_count = b ? check_histogram(b, "evict") : -1;
    double get_req = b ? sample(b, S_GET_REQ) : -1;
    free(a);
    free(b);

    ASSERT_OK(put_rc);
    ASSERT_OK(hit_rc);
    ASSERT_OK(miss_rc);
    ASSERT_EQ_INT(none_rc, TQKV_ENONAMESPACE);
    ASSERT_EQ_INT(hit_status, 0);
    ASSERT_EQ_INT(miss_status, TQKV_ENOENT);
    ASSERT_EQ_U64(got_len, block_len);

    ASSERT_EQ_INT(d_put_req, 1);
    ASSERT_EQ_INT(d_get_req, 3);
    ASSERT_EQ_INT(d_put_n, 1);
    ASSERT_EQ_INT(d_get_n, 3);
    ASSERT_EQ_INT(d_hits, 1);
    ASSERT_EQ_INT(d_misses, 1);
    ASSERT_EQ_U64((uint64_t)d_in, block_len);
    ASSERT_EQ_U64((uint64_t)d_out, block_len);
    ASSERT_EQ_INT(d_entries, 1);
    ASSERT_EQ_INT(d_puts, 1);
    ASSERT_EQ_INT(d_enc, 1);
    ASSERT_EQ_U64((uint64_t)d_enc_bytes, raw_len);
    ASSERT_TRUE(enc_s > 0);
    ASSERT_EQ_INT(d_ns_hits, 1);
    ASSERT_EQ_INT(d_err, 1);
    ASSERT_EQ_INT(d_put_err, 0);
    ASSERT_EQ_INT(d_evict, 0);
    /* Histograms: well formed, and every request of the op is in its count. */
    ASSERT_EQ_INT(get_count, get_req);
    ASSERT_TRUE(put_count >= 1);
    ASSERT_TRUE(hello_count >= 1);
    ASSERT_EQ_INT(evict_count, 0);
}

/* The harness turns the listener off unless asked: no metrics= line then. */
static void test_off_by_flag(void)
{
    tqkvd_harness h2;
    ASSERT_OK(tqkvd_harness_start(&h2, NULL));
    uint16_t port = h2.metrics_port;
    ASSERT_EQ_INT(tqkvd_harness_stop(&h2), 0);
    ASSERT_EQ_INT(port, 0);
}

/* While a graceful shutdown waits for a request in flight (a PUT frame whose payload never
 * comes), /healthz answers 503 and /metrics still answers 200. */
static void test_healthz_shutting_down(void)
{
    static const char *const args[] = {"--metrics", "127.0.0.1:0", "--shutdown-timeout-ms", "4000",
                                       NULL};
    tqkvd_harness h2;
    ASSERT_OK(tqkvd_harness_start(&h2, args));
    int fd = tqkvd_harness_connect_unix(&h2);
    Tqkv__Header hd = TQKV__HEADER__INIT;
    hd.op = TQKV__OP__OP_PUT;
    hd.request_id = 1;
    void *head = NULL;
    size_t hl = 0;
    int sent = fd >= 0 && tqkv_frame_build(&hd, 4096, &head, &hl) == 0 &&
               write(fd, head, hl) == (ssize_t)hl;
    tqkv_free(head);
    http_reply before, during, metrics;
    memset(&during, 0, sizeof(during));
    memset(&metrics, 0, sizeof(metrics));
    int rc_before = http_get_from(&h2, "/healthz", &before);
    free(before.body);
    /* Wait until the daemon holds the request (it counts a frame's bytes when it takes the
     * frame's header); a bound against a hang. */
    for (int i = 0; i < 500; i++) {
        http_reply m;
        if (http_get_from(&h2, "/metrics", &m) != 0)
            break;
        double got = m.status == 200 ? sample(m.body, "tqkv_received_bytes_total") : -1;
        free(m.body);
        if (got > 0)
            break;
        sleep_ms(10);
    }
    kill(h2.pid, SIGTERM);
    int rc_during = -1;
    for (int i = 0; i < 100; i++) { /* a bound against a hang */
        free(during.body);
        rc_during = http_get_from(&h2, "/healthz", &during);
        if (rc_during != 0 || during.status != 200)
            break;
        sleep_ms(10);
    }
    int rc_metrics = http_get_from(&h2, "/metrics", &metrics);
    free(during.body);
    free(metrics.body);
    if (fd >= 0)
        close(fd);
    /* The daemon exits by itself once shutdown_timeout_ms has passed (the harness's stop would
     * send a second SIGTERM, which exits at once with status 1). */
    int st = 0, stop = -1;
    pid_t r = 0;
    for (int i = 0; i < 1500 && (r = waitpid(h2.pid, &st, WNOHANG)) == 0; i++)
        sleep_ms(10);
    if (r == h2.pid) {
        stop = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
        h2.pid = -1;
    }
    tqkvd_harness_stop(&h2); /* the temp directory; kills the daemon if it is still there */
    ASSERT_TRUE(sent);
    ASSERT_OK(rc_before);
    ASSERT_EQ_INT(before.status, 200);
    ASSERT_OK(rc_during);
    ASSERT_EQ_INT(during.status, 503);
    ASSERT_OK(rc_metrics);
    ASSERT_EQ_INT(metrics.status, 200);
    ASSERT_EQ_INT(stop, 0);
}

/* An address the listener cannot take is a start-up failure, not a daemon without metrics: a
 * host name (numeric hosts only) and a port already bound. */
static void test_bad_address_refused(void)
{
    static const char *const name[] = {"--metrics", "localhost:0", NULL};
    char taken[32];
    snprintf(taken, sizeof(taken), "127.0.0.1:%u", (unsigned)daemon_h.metrics_port);
    const char *const busy[] = {"--metrics", taken, NULL};
    tqkvd_harness h2;
    fprintf(stderr, "(two start-up failures follow, as expected)\n");
    int r1 = tqkvd_harness_start(&h2, name);
    if (r1 == 0)
        tqkvd_harness_stop(&h2);
    int r2 = tqkvd_harness_start(&h2, busy);
    if (r2 == 0)
        tqkvd_harness_stop(&h2);
    ASSERT_EQ_INT(r1, -1);
    ASSERT_EQ_INT(r2, -1);
}

static const tqkv_test_case cases[] = {
    {"healthz", test_healthz},
    {"format", test_format},
    {"counters_move", test_counters_move},
    {"off_by_flag", test_off_by_flag},
    {"healthz_shutting_down", test_healthz_shutting_down},
    {"bad_address_refused", test_bad_address_refused},
    {NULL, NULL},
};

int main(int argc, char **argv)
{
    static const char *const args[] = {"--metrics", "127.0.0.1:0", "--encode-device", "cpu", NULL};
    if (tc_start(&daemon_h, args))
        return 1;
    if (daemon_h.metrics_port == 0) {
        fprintf(stderr, "the ready file has no metrics= line\n");
        tqkvd_harness_dump_log(&daemon_h);
        tqkvd_harness_stop(&daemon_h);
        return 1;
    }
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
