/* tqkvd's Prometheus endpoint. libmicrohttpd serves `/metrics` and `/healthz` on its own thread
 * (setting `metrics`, host:port); the daemon's counters, the store's statistics and the latency
 * histograms kept here belong to the loop thread, and the HTTP thread never reads them.
 *
 * DESIGN. A scrape asks the loop: the HTTP thread bumps a request number under the mutex, wakes
 * the loop with uv_async_send and waits on a condition variable (at most ASK_TIMEOUT_MS); the
 * loop's async callback renders the exposition text from its own state (no lock held while it
 * reads), then publishes the text and the number it answered under the mutex and broadcasts.
 * The text is therefore as fresh as the scrape, and a loop that does not answer in time makes the
 * scrape (and /healthz, which takes the same round trip without rendering) answer 503: a stuck
 * loop fails the liveness probe. Lock order: only this module's mutex; the loop renders outside
 * it. Shutdown: /healthz answers 503 from the moment the graceful shutdown starts; at the end,
 * tqkvd_metrics_stop marks the module closed (a waiting scrape returns 503 at once), stops the
 * HTTP thread, then closes the async handle, so the loop never gets a wake-up for a closed handle.
 *
 * Latency: from the arrival of a request's frame header (conn.c's start_ns) to the moment its
 * response has been written to the socket (the request is freed after its write completes;
 * dispatch.c reports it then), in fixed log-spaced buckets, per op. */
#include "metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "cluster.h"
#include "codec.h"
#include "server.h"
#include "tqkv_alloc.h"
#include "tqkv_errors.h"
#include "tqkv_log.h"
#include "tqkv_time.h"

#ifdef TQKVD_HAVE_SSD
#include "ssd_tier.h"
#endif
#ifdef TQKVD_HAVE_REDIS
#include "redis_tier.h"
#endif

#define MOD "metrics"
#define N_OPS 16    /* proto ops 0..15 */
#define N_CODES 128 /* error numbers 0..127 (TQKV_E* are -1..-127) */
#define ASK_TIMEOUT_MS 2000
#define LAT_BUCKETS 19

/* Bucket bounds: 1, 2.5 and 5 per decade from 10 us to 10 s, in ns (exact comparisons) and as
 * the `le` label Prometheus shows. */
static const uint64_t lat_bound_ns[LAT_BUCKETS] = {
    10000ull,      25000ull,      50000ull,      100000ull,      250000ull,
    500000ull,     1000000ull,    2500000ull,    5000000ull,     10000000ull,
    25000000ull,   50000000ull,   100000000ull,  250000000ull,   500000000ull,
    1000000000ull, 2500000000ull, 5000000000ull, 10000000000ull,
};
static const char *const lat_le[LAT_BUCKETS] = {
    "1e-05", "2.5e-05", "5e-05", "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01",
    "0.025", "0.05",    "0.1",   "0.25",   "0.5",     "1",      "2.5",   "5",      "10",
};

typedef struct {
    uint64_t buckets[LAT_BUCKETS + 1]; /* not cumulative; the last one is +Inf */
    uint64_t sum_ns, count;
} lat_hist;

struct tqkvd_metrics {
    tqkvd_server *srv;
    /* loop thread only */
    lat_hist lat[N_OPS];
    uint64_t errors[N_OPS][N_CODES];

    /* shared with the HTTP thread, under mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t asked, answered; /* round trips asked / answered by the loop */
    int want_text;            /* a /metrics scrape waits: render */
    char *text;               /* the last rendered text (tqkv_malloc), len bytes */
    size_t text_len;
    int shutting_down; /* /healthz answers 503 */
    int closed;        /* the loop will not answer any more */

    int sync_init; /* mu and cv initialised */
    uv_async_t async;
    int async_on;
    struct MHD_Daemon *mhd;
    char bound[96];
};

/* ---- the loop side ---- */

static unsigned lat_bucket(uint64_t ns)
{
    unsigned lo = 0, hi = LAT_BUCKETS; /* first bound >= ns */
    while (lo < hi) {
        unsigned mid = (lo + hi) / 2;
        if (lat_bound_ns[mid] >= ns)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

void tqkvd_metrics_request_done(tqkvd_server *s, int op, int status, int written, uint64_t ns)
{
    tqkvd_metrics *m = s->metrics;
    if (!m)
        return;
    if (op < 0 || op >= N_OPS)
        op = 0;
    if (status) {
        int code = -status;
        m->errors[op][code > 0 && code < N_CODES ? code : 0]++;
    }
    if (written) {
        lat_hist *h = &m->lat[op];
        h->buckets[lat_bucket(ns)]++;
        h->sum_ns += ns;
        h->count++;
    }
}

/* A growing text buffer; `oom` once an allocation failed (the scrape then answers 503). */
typedef struct {
    char *p;
    size_t len, cap;
    int oom;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...)
{
    if (b->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = 1;
            return;
        }
        if (b->p && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        size_t nc = b->cap ? b->cap * 2 : 16384;
        while (nc < b->len + (size_t)n + 1)
            nc *= 2;
        char *np = tqkv_realloc(b->p, nc);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = nc;
    }
}

static void family(sbuf *b, const char *name, const char *type, const char *help)
{
    sb_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A label value with \, " and newline escaped (namespace names come from clients). */
static void sb_label(sbuf *b, const char *v)
{
    for (; *v; v++) {
        if (*v == '\\' || *v == '"')
            sb_printf(b, "\\%c", *v);
        else if (*v == '\n')
            sb_printf(b, "\\n");
        else
            sb_printf(b, "%c", *v);
    }
}

/* The op's label value: "get", "config_set", ... */
static void op_label(int op, char *out, size_t outlen)
{
    snprintf(out, outlen, "%s", tqkv_op_name(op));
    for (char *p = out; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
}

typedef struct {
    const char *name;
    tqkv_tier_stats st;
} tier_row;

typedef struct {
    sbuf *b;
    int field;
} ns_walk;

enum { NS_ENTRIES, NS_BYTES, NS_HITS, NS_MISSES, NS_PUTS, NS_FIELDS };

static void ns_sample(void *arg, tqkv_ns *ns)
{
    ns_walk *w = arg;
    static const char *const names[NS_FIELDS] = {
        "tqkv_namespace_entries", "tqkv_namespace_bytes", "tqkv_namespace_hits_total",
        "tqkv_namespace_misses_total", "tqkv_namespace_puts_total"};
    tqkv_ns_stats st;
    tqkv_ns_get_stats(ns, &st);
    uint64_t v[NS_FIELDS] = {st.entries, st.bytes, st.hits, st.misses, st.puts};
    sb_printf(w->b, "%s{ns=\"", names[w->field]);
    sb_label(w->b, tqkv_ns_get_desc(ns)->name);
    sb_printf(w->b, "\"} %" PRIu64 "\n", v[w->field]);
}

static void render_tiers(sbuf *b, const tqkvd_server *s, const tqkv_store_stats *st)
{
    tier_row rows[TQKV_TIER_COUNT + 1];
    size_t n = 0;
    for (int t = 1; t < TQKV_TIER_COUNT; t++)
        if (st->tiers[t].present) {
            rows[n].name = tqkv_tier_name(t);
            rows[n].st = st->tiers[t];
            n++;
        }
    /* Blocks fetched from the other members: the cluster module counts them (no store tier). */
    if (tqkvd_cluster_enabled(s) && !st->tiers[TQKV_TIER_PEER].present) {
        tqkvd_cluster_stats cs;
        tqkvd_cluster_get_stats(s, &cs);
        memset(&rows[n].st, 0, sizeof rows[n].st);
        rows[n].name = "peer";
        rows[n].st.hits = cs.peer_hits;
        rows[n].st.misses = cs.peer_misses;
        rows[n].st.bytes_out = cs.peer_bytes;
        rows[n].st.errors = cs.peer_errors + cs.peer_bad_blocks;
        n++;
    }
    static const struct {
        const char *name, *type, *help;
        size_t off;
    } fields[] = {
#define F(f, name, type, help) {name, type, help, offsetof(tqkv_tier_stats, f)}
        F(capacity, "tqkv_tier_capacity_bytes", "gauge", "Bytes the tier may hold."),
        F(used, "tqkv_tier_used_bytes", "gauge", "Bytes the tier holds now."),
        F(entries, "tqkv_tier_entries", "gauge", "Blocks the tier holds now."),
        F(hits, "tqkv_tier_hits_total", "counter", "Keys found in the tier."),
        F(misses, "tqkv_tier_misses_total", "counter", "Keys asked of the tier and not found."),
        F(evictions, "tqkv_tier_evictions_total", "counter", "Blocks evicted from the tier."),
        F(promotions, "tqkv_tier_promotions_total", "counter",
          "Blocks copied up into the tier from a lower one."),
        F(demotions, "tqkv_tier_demotions_total", "counter",
          "Blocks written down from the tier to a lower one."),
        F(drops, "tqkv_tier_drops_total", "counter", "Evicted blocks that no lower tier took."),
        F(bytes_in, "tqkv_tier_bytes_in_total", "counter", "Block bytes stored in the tier."),
        F(bytes_out, "tqkv_tier_bytes_out_total", "counter", "Block bytes served from the tier."),
        F(errors, "tqkv_tier_errors_total", "counter", "Failed operations of the tier."),
#undef F
    };
    for (size_t f = 0; f < sizeof fields / sizeof fields[0]; f++) {
        family(b, fields[f].name, fields[f].type, fields[f].help);
        for (size_t i = 0; i < n; i++) {
            uint64_t v;
            memcpy(&v, (const char *)&rows[i].st + fields[f].off, sizeof v);
            sb_printf(b, "%s{tier=\"%s\"} %" PRIu64 "\n", fields[f].name, rows[i].name, v);
        }
    }
}

static void render_requests(sbuf *b, const tqkvd_server *s, const tqkvd_metrics *m)
{
    char op[24];
    family(b, "tqkv_requests_total", "counter", "Requests received, by op.");
    for (int o = 1; o < N_OPS; o++) {
        op_label(o, op, sizeof op);
        sb_printf(b, "tqkv_requests_total{op=\"%s\"} %" PRIu64 "\n", op, s->ops[o]);
    }
    family(b, "tqkv_request_errors_total", "counter",
           "Responses with an error status, by op and code (a GET miss is not an error).");
    for (int o = 0; o < N_OPS; o++)
        for (int c = 0; c < N_CODES; c++)
            if (m->errors[o][c]) {
                op_label(o, op, sizeof op);
                sb_printf(b, "tqkv_request_errors_total{op=\"%s\",code=\"%s\"} %" PRIu64 "\n", op,
                          c ? tqkv_err_name(-c) : "TQKV_EUNKNOWN", m->errors[o][c]);
            }
    family(b, "tqkv_error_responses_total", "counter",
           "Every error response, frames that could not be parsed included.");
    sb_printf(b, "tqkv_error_responses_total %" PRIu64 "\n", s->request_errors);
    family(b, "tqkv_request_duration_seconds", "histogram",
           "From a request's arrival to its response written to the socket, by op.");
    for (int o = 1; o < N_OPS; o++) {
        const lat_hist *h = &m->lat[o];
        op_label(o, op, sizeof op);
        uint64_t cum = 0;
        for (int i = 0; i < LAT_BUCKETS; i++) {
            cum += h->buckets[i];
            sb_printf(b, "tqkv_request_duration_seconds_bucket{op=\"%s\",le=\"%s\"} %" PRIu64 "\n",
                      op, lat_le[i], cum);
        }
        cum += h->buckets[LAT_BUCKETS];
        sb_printf(b, "tqkv_request_duration_seconds_bucket{op=\"%s\",le=\"+Inf\"} %" PRIu64 "\n",
                  op, cum);
        sb_printf(b, "tqkv_request_duration_seconds_sum{op=\"%s\"} %" PRIu64 ".%09" PRIu64 "\n", op,
                  h->sum_ns / UINT64_C(1000000000), h->sum_ns % UINT64_C(1000000000));
        sb_printf(b, "tqkv_request_duration_seconds_count{op=\"%s\"} %" PRIu64 "\n", op, h->count);
    }
}

static void counter(sbuf *b, const char *name, const char *help, uint64_t v)
{
    family(b, name, "counter", help);
    sb_printf(b, "%s %" PRIu64 "\n", name, v);
}

static void gauge(sbuf *b, const char *name, const char *help, uint64_t v)
{
    family(b, name, "gauge", help);
    sb_printf(b, "%s %" PRIu64 "\n", name, v);
}

static void render_engines(sbuf *b, tqkvd_server *s)
{
    (void)b;
    if (!s->store)
        return;
#ifdef TQKVD_HAVE_SSD
    tqkv_ssd *ssd = tqkv_ssd_from_tier(tqkv_store_tier(s->store, TQKV_TIER_SSD));
    if (ssd) {
        tqkv_ssd_stats e;
        tqkv_ssd_stats_get(ssd, &e);
        counter(b, "tqkv_ssd_corrupt_records_total",
                "Records on the SSD whose checksum failed (served as misses).", e.corrupt);
        counter(b, "tqkv_ssd_io_errors_total", "I/O errors of the SSD engine.", e.io_errors);
        gauge(b, "tqkv_ssd_segments", "Segment files of the SSD tier.", e.segments);
        counter(b, "tqkv_ssd_syncs_total", "fdatasync calls of the SSD engine.", e.syncs);
        counter(b, "tqkv_ssd_compactions_total", "Segments compacted.", e.compactions);
    }
#endif
#ifdef TQKVD_HAVE_REDIS
    tqkv_redis *rd = tqkv_redis_from_tier(tqkv_store_tier(s->store, TQKV_TIER_REDIS));
    if (rd) {
        tqkv_redis_stats e;
        tqkv_redis_get_stats(rd, &e);
        gauge(b, "tqkv_redis_nodes_up", "Redis nodes the engine is connected to.", e.nodes_up);
        gauge(b, "tqkv_redis_nodes", "Redis nodes the engine knows.", e.nodes_total);
        counter(b, "tqkv_redis_timeouts_total", "Redis requests that timed out.", e.timeouts);
        counter(b, "tqkv_redis_reconnects_total", "Reconnections to Redis.", e.reconnects);
    }
#endif
}

/* Renders the whole exposition text into b. Loop thread. */
static void render(tqkvd_server *s, sbuf *b)
{
    tqkvd_metrics *m = s->metrics;
    tqkv_store_stats st;
    memset(&st, 0, sizeof st);
    if (s->store)
        tqkv_store_get_stats(s->store, &st);

    family(b, "tqkv_build_info", "gauge", "The daemon's version and encoder (always 1).");
    sb_printf(b, "tqkv_build_info{version=\"%s\",encoder=\"%s\"} 1\n", TQKVD_VERSION,
              tqkvd_codec_name());
    family(b, "tqkv_uptime_seconds", "gauge", "Seconds since the daemon started.");
    sb_printf(b, "tqkv_uptime_seconds %.3f\n", (double)(tqkv_now_ns() - s->started_ns) / 1e9);
    gauge(b, "tqkv_connections", "Open client connections.", s->n_conns);
    counter(b, "tqkv_connections_total", "Connections accepted.", s->conns_total);
    counter(b, "tqkv_connections_refused_total", "Connections refused (max_connections).",
            s->conns_refused);
    render_requests(b, s, m);
    counter(b, "tqkv_received_bytes_total", "Frame bytes received from clients.", s->bytes_in);
    counter(b, "tqkv_sent_bytes_total", "Frame bytes sent to clients.", s->bytes_out);

    counter(b, "tqkv_encoded_blocks_total", "Chunks of raw KV encoded by the daemon.", s->encodes);
    counter(b, "tqkv_encode_input_bytes_total", "Raw KV bytes encoded by the daemon.",
            s->encode_bytes);
    family(b, "tqkv_encode_seconds_total", "counter",
           "Time of raw PUTs from arrival to encoded (throughput: rate of "
           "tqkv_encode_input_bytes_total over rate of this).");
    sb_printf(b, "tqkv_encode_seconds_total %" PRIu64 ".%09" PRIu64 "\n",
              s->encode_ns / UINT64_C(1000000000), s->encode_ns % UINT64_C(1000000000));
    counter(b, "tqkv_bad_blocks_total", "Encoded blocks refused at PUT (format, checksum, key).",
            s->bad_blocks);

    gauge(b, "tqkv_store_entries", "Blocks in host memory, all namespaces.", st.entries);
    gauge(b, "tqkv_store_bytes", "Block bytes in host memory, all namespaces.", st.bytes);
    counter(b, "tqkv_store_hits_total", "Keys found by GET and LOOKUP, any tier.", st.hits);
    counter(b, "tqkv_store_misses_total", "Keys not found by GET and LOOKUP.", st.misses);
    counter(b, "tqkv_puts_total", "Blocks committed by PUT.", st.puts);
    counter(b, "tqkv_put_exists_total", "PUTs of a key already present.", st.put_exists);
    counter(b, "tqkv_put_aborts_total", "PUT reservations abandoned.", st.put_aborts);
    counter(b, "tqkv_put_nospace_total", "PUTs refused for want of space.", st.put_enospc);
    gauge(b, "tqkv_pinned_entries", "Blocks pinned.", st.pinned);
    gauge(b, "tqkv_leases", "Active leases.", st.leases);
    gauge(b, "tqkv_namespaces", "Registered namespaces.", st.namespaces);
    render_tiers(b, s, &st);
    render_engines(b, s);

    if (tqkvd_cluster_enabled(s)) {
        tqkvd_cluster_stats cs;
        tqkvd_cluster_get_stats(s, &cs);
        const tqkvd_member *mem = NULL;
        gauge(b, "tqkv_cluster_members", "Live members in the last view.",
              tqkvd_cluster_members(s, &mem));
        counter(b, "tqkv_cluster_heartbeat_errors_total", "Heartbeats that failed.",
                cs.heartbeat_errors);
        counter(b, "tqkv_cluster_peer_requests_total", "GETs that asked the peers.",
                cs.peer_requests);
    }

    static const char *const ns_help[NS_FIELDS][3] = {
        {"tqkv_namespace_entries", "gauge", "Blocks of the namespace in host memory."},
        {"tqkv_namespace_bytes", "gauge", "Block bytes of the namespace in host memory."},
        {"tqkv_namespace_hits_total", "counter", "Keys of the namespace found."},
        {"tqkv_namespace_misses_total", "counter", "Keys of the namespace not found."},
        {"tqkv_namespace_puts_total", "counter", "Blocks of the namespace committed."},
    };
    if (s->store && st.namespaces)
        for (int f = 0; f < NS_FIELDS; f++) {
            family(b, ns_help[f][0], ns_help[f][1], ns_help[f][2]);
            ns_walk w = {b, f};
            tqkv_store_ns_foreach(s->store, ns_sample, &w);
        }
}

static void on_async(uv_async_t *a)
{
    tqkvd_metrics *m = a->data;
    pthread_mutex_lock(&m->mu);
    uint64_t gen = m->asked;
    int want = m->want_text;
    m->want_text = 0;
    pthread_mutex_unlock(&m->mu);

    sbuf b = {0};
    if (want)
        render(m->srv, &b);

    pthread_mutex_lock(&m->mu);
    if (want) {
        tqkv_free(m->text);
        m->text = b.oom ? NULL : b.p;
        m->text_len = b.oom ? 0 : b.len;
        if (b.oom)
            tqkv_free(b.p);
    }
    m->answered = gen;
    pthread_cond_broadcast(&m->cv);
    pthread_mutex_unlock(&m->mu);
}

/* ---- the HTTP side ---- */

/* Asks the loop for a round trip (and the text when want_text). On success *text is a copy the
 * caller frees (tqkv_free) and the return is 0; otherwise *why says why and the return is -1. */
static int ask_loop(tqkvd_metrics *m, int want_text, char **text, size_t *len, const char **why)
{
    *text = NULL;
    *len = 0;
    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += ASK_TIMEOUT_MS / 1000;
    dl.tv_nsec += (long)(ASK_TIMEOUT_MS % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    int rc = -1;
    pthread_mutex_lock(&m->mu);
    if (m->closed) {
        *why = "stopping\n";
        goto out;
    }
    uint64_t gen = ++m->asked;
    if (want_text)
        m->want_text = 1;
    uv_async_send(&m->async);
    while (m->answered < gen && !m->closed)
        if (pthread_cond_timedwait(&m->cv, &m->mu, &dl) == ETIMEDOUT)
            break;
    if (m->answered < gen) {
        *why = m->closed ? "stopping\n" : "the daemon's loop did not answer in time\n";
        goto out;
    }
    if (want_text) {
        if (!m->text) {
            *why = "out of memory\n";
            goto out;
        }
        *text = tqkv_malloc(m->text_len ? m->text_len : 1);
        if (!*text) {
            *why = "out of memory\n";
            goto out;
        }
        memcpy(*text, m->text, m->text_len);
        *len = m->text_len;
    }
    rc = 0;
out:
    pthread_mutex_unlock(&m->mu);
    return rc;
}

static enum MHD_Result reply_static(struct MHD_Connection *conn, unsigned code, const char *body)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_PERSISTENT);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
    enum MHD_Result ret = MHD_queue_response(conn, code, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result on_http(void *cls, struct MHD_Connection *conn, const char *url,
                               const char *method, const char *version, const char *upload,
                               size_t *upload_size, void **con_cls)
{
    (void)version;
    (void)upload;
    (void)con_cls;
    tqkvd_metrics *m = cls;
    if (*upload_size) /* a GET has no body; ignore anything sent */
        *upload_size = 0;
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
        return reply_static(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET\n");
    char *text;
    size_t len;
    const char *why = "";
    if (strcmp(url, "/healthz") == 0) {
        pthread_mutex_lock(&m->mu);
        int down = m->shutting_down;
        pthread_mutex_unlock(&m->mu);
        if (down)
            return reply_static(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "shutting down\n");
        if (ask_loop(m, 0, &text, &len, &why) != 0)
            return reply_static(conn, MHD_HTTP_SERVICE_UNAVAILABLE, why);
        return reply_static(conn, MHD_HTTP_OK, "ok\n");
    }
    if (strcmp(url, "/metrics") != 0)
        return reply_static(conn, MHD_HTTP_NOT_FOUND, "not found: try /metrics or /healthz\n");
    if (ask_loop(m, 1, &text, &len, &why) != 0)
        return reply_static(conn, MHD_HTTP_SERVICE_UNAVAILABLE, why);
    struct MHD_Response *r =
        MHD_create_response_from_buffer_with_free_callback(len, text, tqkv_free);
    if (!r) {
        tqkv_free(text);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8");
    enum MHD_Result ret = MHD_queue_response(conn, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return ret;
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char buf[256];
    vsnprintf(buf, sizeof buf, fmt, ap);
    size_t n = strlen(buf);
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        buf[--n] = 0;
    TQKV_LOGW(MOD, "msg=\"http\" detail=\"%s\"", buf);
}

/* Binds and listens on "host:port" ("[v6]:port" too). @return the socket, or a negative error
 * (logged). Writes the bound address into bound. */
static int listen_on(const char *addr, char *bound, size_t boundlen)
{
    char host[128];
    const char *colon = strrchr(addr, ':');
    if (!colon || colon == addr)
        goto bad;
    size_t n = (size_t)(colon - addr);
    const char *h = addr;
    if (h[0] == '[' && n >= 2 && h[n - 1] == ']') {
        h++;
        n -= 2;
    }
    if (n >= sizeof host)
        goto bad;
    memcpy(host, h, n);
    host[n] = 0;
    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (!colon[1] || *end || port < 0 || port > 65535 ||
        getaddrinfo(host, colon + 1, &hints, &ai) != 0)
        goto bad;
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 64) != 0) {
        TQKV_LOGE(MOD, "msg=\"cannot listen\" metrics=%s err=\"%s\"", addr, strerror(errno));
        if (fd >= 0)
            close(fd);
        freeaddrinfo(ai);
        return TQKV_EIO;
    }
    freeaddrinfo(ai);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    char ip[INET6_ADDRSTRLEN];
    getsockname(fd, (struct sockaddr *)&ss, &sl);
    if (ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &a6->sin6_addr, ip, sizeof ip);
        snprintf(bound, boundlen, "[%s]:%u", ip, (unsigned)ntohs(a6->sin6_port));
    } else {
        const struct sockaddr_in *a4 = (const struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &a4->sin_addr, ip, sizeof ip);
        snprintf(bound, boundlen, "%s:%u", ip, (unsigned)ntohs(a4->sin_port));
    }
    return fd;
bad:
    TQKV_LOGE(MOD, "msg=\"bad metrics address (host:port, numeric host)\" metrics=%s", addr);
    return TQKV_EBADCONFIG;
}

int tqkvd_metrics_start(tqkvd_server *s)
{
    tqkvd_metrics *m = tqkv_calloc(1, sizeof *m);
    if (!m)
        return TQKV_ENOMEM;
    m->srv = s;
    s->metrics = m;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int e = pthread_mutex_init(&m->mu, NULL);
    if (e == 0 && (e = pthread_cond_init(&m->cv, &ca)) != 0)
        pthread_mutex_destroy(&m->mu);
    pthread_condattr_destroy(&ca);
    if (e)
        return TQKV_ENOMEM;
    m->sync_init = 1;
    if (!s->cfg.metrics || !s->cfg.metrics[0])
        return 0;

    if (uv_async_init(s->loop, &m->async, on_async) != 0)
        return TQKV_EIO;
    m->async.data = m;
    m->async_on = 1;
    int fd = listen_on(s->cfg.metrics, m->bound, sizeof m->bound);
    if (fd < 0)
        return fd;
    /* One internal thread (epoll on Linux: no FD_SETSIZE limit, the daemon may hold many fds);
     * scrapes are few and short. MHD closes the listening socket when it stops. */
    m->mhd =
        MHD_start_daemon(MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_ERROR_LOG, 0, NULL, NULL, on_http,
                         m, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, NULL, MHD_OPTION_LISTEN_SOCKET,
                         (MHD_socket)fd, MHD_OPTION_CONNECTION_LIMIT, (unsigned int)32,
                         MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)10, MHD_OPTION_END);
    if (!m->mhd) {
        close(fd);
        m->bound[0] = 0;
        TQKV_LOGE(MOD, "msg=\"cannot start the HTTP server\" metrics=%s", s->cfg.metrics);
        return TQKV_EIO;
    }
    TQKV_LOGI(MOD, "msg=\"listening\" metrics=%s paths=\"/metrics /healthz\"", m->bound);
    return 0;
}

const char *tqkvd_metrics_bound(const tqkvd_server *s)
{
    return s->metrics ? s->metrics->bound : "";
}

void tqkvd_metrics_shutting_down(tqkvd_server *s)
{
    tqkvd_metrics *m = s->metrics;
    if (!m || !m->sync_init)
        return;
    pthread_mutex_lock(&m->mu);
    m->shutting_down = 1;
    pthread_mutex_unlock(&m->mu);
}

void tqkvd_metrics_stop(tqkvd_server *s)
{
    tqkvd_metrics *m = s->metrics;
    if (!m || !m->sync_init)
        return;
    pthread_mutex_lock(&m->mu);
    m->closed = 1;
    m->shutting_down = 1;
    pthread_cond_broadcast(&m->cv);
    pthread_mutex_unlock(&m->mu);
    if (m->mhd) {
        MHD_stop_daemon(m->mhd); /* joins the HTTP thread: no uv_async_send after this */
        m->mhd = NULL;
    }
    if (m->async_on) {
        uv_close((uv_handle_t *)&m->async, NULL);
        m->async_on = 0;
    }
}

void tqkvd_metrics_free(tqkvd_server *s)
{
    tqkvd_metrics *m = s->metrics;
    if (!m)
        return;
    if (m->sync_init) {
        pthread_cond_destroy(&m->cv);
        pthread_mutex_destroy(&m->mu);
    }
    tqkv_free(m->text);
    tqkv_free(m);
    s->metrics = NULL;
}
