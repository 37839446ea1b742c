/* tqkvd across nodes (cluster.h): the heartbeat that keeps this daemon's member record alive in
 * Redis and reads the others back, the namespace records shared through Redis, and the peer
 * fetch that asks live members for blocks every local tier missed. docs/cluster.md explains the
 * choices (records with expiry rather than a lock service; asking peers on a miss rather than a
 * per-key directory written on every PUT). */
#include "cluster.h"

#ifdef TQKVD_HAVE_REDIS

#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "server.h"
#include "tqkv_alloc.h"
#include "tqkv_log.h"
#include "tqkv_time.h"
#include "transport.h"
#include "redis_tier.h"
#include "tqkv_redis.h"

#define MOD "cluster"
#define DIR_NODES "{tqkvdir}:nodes"
#define POOL_MAX 8        /* idle peer connections kept */
#define PEER_MAX_KEYS 256 /* keys asked of peers per GET (the rest stay misses) */
#define PEER_DOWN_MAX 16  /* peers remembered as unreachable */
#define PEER_DOWN_NS (1000ull * 1000000ull) /* how long one is skipped after a failure */

typedef struct pool_ent {
    struct pool_ent *next;
    char addr[96];
    tqkvd_peer_conn *conn;
} pool_ent;

struct tqkvd_cluster {
    tqkvd_server *s;
    tqkv_redis *redis;
    const tqkvd_transport *transport;
    char id[128];
    char addr[96];
    char node_key[200];
    uv_timer_t hb;
    int hb_on, stopping, refreshing;
    int hb_failing;              /* last heartbeat write failed (log once per change) */
    tqkvd_member *members;
    size_t n_members;
    tqkvd_cluster_stats st;
    pthread_mutex_t lock;        /* pool and the counters workers touch */
    pool_ent *pool;
    size_t pool_n;
    /* Peers whose last exchange failed, skipped until `until_ns`: a dead member that has not
     * expired yet must not cost every miss a connect timeout on a worker. */
    struct {
        char addr[96];
        uint64_t until_ns;
    } down[PEER_DOWN_MAX];
};

static void free_member(tqkvd_member *m)
{
    for (size_t i = 0; i < m->n_fields; i++) {
        tqkv_free(m->names[i]);
        tqkv_free(m->values[i]);
    }
    tqkv_free(m->names);
    tqkv_free(m->values);
    tqkv_free(m->id);
    tqkv_free(m->addr);
    memset(m, 0, sizeof *m);
}

static void free_members(tqkvd_member *m, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free_member(&m[i]);
    tqkv_free(m);
}

/* ---- the Redis engine ---- */

/* The Redis tier's engine (lower.c creates it from the redis* settings and the tier owns it):
 * the directory shares its connections. Valid until the store is destroyed at shutdown, which
 * comes after tqkvd_cluster_stop. */
static tqkv_redis *redis_engine(tqkvd_server *s)
{
    return tqkv_redis_from_tier(tqkv_store_tier(s->store, TQKV_TIER_REDIS));
}

/* ---- records ---- */

/* Text of one record: "name=value\n" lines. */
typedef struct {
    char *buf;
    size_t len, cap;
    int oom;
} text;

static void tput(text *t, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void tput(text *t, const char *name, const char *fmt, ...)
{
    char v[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(v, sizeof v, fmt, ap);
    va_end(ap);
    size_t need = strlen(name) + strlen(v) + 3;
    if (t->len + need > t->cap) {
        size_t nc = (t->cap ? t->cap * 2 : 1024) + need;
        char *nb = tqkv_realloc(t->buf, nc);
        if (!nb) {
            t->oom = 1;
            return;
        }
        t->buf = nb;
        t->cap = nc;
    }
    t->len += (size_t)snprintf(t->buf + t->len, t->cap - t->len, "%s=%s\n", name, v);
}

/* Parses "name=value\n" lines into m's fields. @return 0 or TQKV_ENOMEM. */
static int parse_record(tqkvd_member *m, const char *data, size_t len)
{
    size_t lines = 0;
    for (size_t i = 0; i < len; i++)
        lines += data[i] == '\n';
    m->names = tqkv_calloc(lines + 1, sizeof *m->names);
    m->values = tqkv_calloc(lines + 1, sizeof *m->values);
    if (!m->names || !m->values)
        return TQKV_ENOMEM;
    size_t pos = 0;
    while (pos < len) {
        const char *line = data + pos;
        const char *nl = memchr(line, '\n', len - pos);
        size_t ll = nl ? (size_t)(nl - line) : len - pos;
        pos += ll + 1;
        const char *eq = memchr(line, '=', ll);
        if (!eq || m->n_fields > lines)
            continue;
        size_t kl = (size_t)(eq - line);
        char *k = tqkv_malloc(kl + 1), *v = tqkv_malloc(ll - kl);
        if (!k || !v) {
            tqkv_free(k);
            tqkv_free(v);
            return TQKV_ENOMEM;
        }
        memcpy(k, line, kl);
        k[kl] = 0;
        memcpy(v, eq + 1, ll - kl - 1);
        v[ll - kl - 1] = 0;
        m->names[m->n_fields] = k;
        m->values[m->n_fields] = v;
        m->n_fields++;
    }
    return 0;
}

static const char *field(const tqkvd_member *m, const char *name)
{
    for (size_t i = 0; i < m->n_fields; i++)
        if (strcmp(m->names[i], name) == 0)
            return m->values[i];
    return NULL;
}

static void build_record(tqkvd_cluster *c, text *t)
{
    tqkvd_server *s = c->s;
    tqkv_store_stats st;
    tqkv_store_get_stats(s->store, &st);
    tput(t, "id", "%s", c->id);
    tput(t, "addr", "%s", c->addr);
    tput(t, "version", "%s", TQKVD_VERSION);
    tput(t, "uptime_s", "%.0f", (double)(tqkv_now_ns() - s->started_ns) / 1e9);
    char tiers[96] = "";
    for (int i = 1; i < TQKV_TIER_COUNT; i++)
        if (st.tiers[i].present) {
            size_t l = strlen(tiers);
            snprintf(tiers + l, sizeof tiers - l, "%s%s", l ? "," : "", tqkv_tier_name(i));
        }
    tput(t, "tiers", "%s", tiers);
    for (int i = 1; i < TQKV_TIER_COUNT; i++) {
        if (!st.tiers[i].present)
            continue;
        char k[64];
        const tqkv_tier_stats *ts = &st.tiers[i];
#define F(f)                                                                                       \
    do {                                                                                           \
        snprintf(k, sizeof k, "tier.%s." #f, tqkv_tier_name(i));                                   \
        tput(t, k, "%" PRIu64, ts->f);                                                             \
    } while (0)
        F(capacity);
        F(used);
        F(entries);
        F(hits);
        F(misses);
#undef F
    }
    tput(t, "hits", "%" PRIu64, st.hits);
    tput(t, "misses", "%" PRIu64, st.misses);
    uint64_t q = st.hits + st.misses;
    tput(t, "hit_rate", "%.3f", q ? (double)st.hits / (double)q : 0.0);
    pthread_mutex_lock(&c->lock);
    uint64_t ph = c->st.peer_hits;
    pthread_mutex_unlock(&c->lock);
    tput(t, "peer_hits", "%" PRIu64, ph);
    tput(t, "namespaces", "%u", st.namespaces);
}

/* ---- heartbeat and membership ---- */

typedef struct {
    tqkvd_cluster *c;
    tqkvd_member *m; /* one per id of the set */
    size_t n;
    int pending;
    int failed;      /* a record could not be read: keep the previous view */
} refresh;

static void log_changes(tqkvd_cluster *c, const tqkvd_member *nm, size_t nn)
{
    for (size_t i = 0; i < nn; i++) {
        int found = 0;
        for (size_t j = 0; j < c->n_members && !found; j++)
            found = strcmp(nm[i].id, c->members[j].id) == 0;
        if (!found)
            TQKV_LOGI(MOD, "msg=\"member joined\" id=%s addr=%s%s", nm[i].id, nm[i].addr,
                      nm[i].self ? " self=1" : "");
    }
    for (size_t j = 0; j < c->n_members; j++) {
        int found = 0;
        for (size_t i = 0; i < nn && !found; i++)
            found = strcmp(nm[i].id, c->members[j].id) == 0;
        if (!found)
            TQKV_LOGI(MOD, "msg=\"member left\" id=%s", c->members[j].id);
    }
}

static void ignore_done(void *arg, int status)
{
    (void)arg;
    (void)status;
}

static void refresh_finish(refresh *f)
{
    tqkvd_cluster *c = f->c;
    size_t live = 0;
    for (size_t i = 0; i < f->n; i++) {
        if (!f->m[i].id) {
            free_member(&f->m[i]);
            continue;
        }
        tqkvd_member keep = f->m[i];
        memset(&f->m[i], 0, sizeof f->m[i]);
        f->m[live++] = keep;
    }
    if (!c->stopping && !f->failed) {
        log_changes(c, f->m, live);
        free_members(c->members, c->n_members);
        c->members = f->m;
        c->n_members = live;
        f->m = NULL;
    } else {
        free_members(f->m, live);
    }
    c->refreshing = 0;
    tqkv_free(f);
}

typedef struct {
    refresh *f;
    size_t i;
    char *id;
} rec_get;

static void on_record(void *arg, int status, const void *data, size_t len)
{
    rec_get *g = arg;
    refresh *f = g->f;
    tqkvd_cluster *c = f->c;
    tqkvd_member *m = &f->m[g->i];
    if (status == 1) {
        if (parse_record(m, data, len) == 0 && field(m, "id")) {
            m->id = tqkv_strdup(g->id);
            const char *a = field(m, "addr");
            m->addr = tqkv_strdup(a ? a : "");
            m->self = strcmp(g->id, c->id) == 0;
            if (!m->id || !m->addr)
                free_member(m);
        } else {
            free_member(m);
        }
    } else if (status < 0) {
        f->failed = 1; /* Redis trouble is not a member leaving */
    } else if (status == 0 && c->redis && !c->stopping) {
        /* Expired: the member is gone; take it out of the set so the set does not grow. */
        if (tqkv_redis_set_rem(c->redis, DIR_NODES, g->id, strlen(g->id), ignore_done, NULL))
            TQKV_LOGD(MOD, "msg=\"cannot remove expired member\" id=%s", g->id);
    }
    tqkv_free(g->id);
    tqkv_free(g);
    if (--f->pending == 0)
        refresh_finish(f);
}

static void on_members(void *arg, int status, size_t n, const char *const *members,
                       const size_t *lens)
{
    refresh *f = arg;
    tqkvd_cluster *c = f->c;
    if (status < 0 || c->stopping || !c->redis) {
        if (status < 0 && !c->hb_failing)
            TQKV_LOGW(MOD, "msg=\"cannot read the member set\" err=%s", tqkv_err_name(status));
        c->refreshing = 0;
        tqkv_free(f);
        return;
    }
    f->m = tqkv_calloc(n ? n : 1, sizeof *f->m);
    if (!f->m) {
        c->refreshing = 0;
        tqkv_free(f);
        return;
    }
    f->n = n;
    f->pending = 1;
    for (size_t i = 0; i < n; i++) {
        if (lens[i] == 0 || lens[i] > 120)
            continue;
        rec_get *g = tqkv_calloc(1, sizeof *g);
        char key[200];
        snprintf(key, sizeof key, "{tqkvdir}:node:%.*s", (int)lens[i], members[i]);
        if (!g || !(g->id = tqkv_malloc(lens[i] + 1))) {
            tqkv_free(g);
            continue;
        }
        memcpy(g->id, members[i], lens[i]);
        g->id[lens[i]] = 0;
        g->f = f;
        g->i = i;
        f->pending++;
        int bad = strchr(g->id, ' ') != NULL;
        if (bad || tqkv_redis_kv_get(c->redis, key, on_record, g) != 0) {
            if (!bad)
                f->failed = 1;
            f->pending--;
            tqkv_free(g->id);
            tqkv_free(g);
        }
    }
    if (--f->pending == 0)
        refresh_finish(f);
}

static void on_heartbeat_set(void *arg, int status)
{
    tqkvd_cluster *c = arg;
    if (status < 0) {
        c->st.heartbeat_errors++;
        if (!c->hb_failing)
            TQKV_LOGW(MOD, "msg=\"heartbeat failed: this member may expire from the view\" "
                           "err=%s",
                      tqkv_err_name(status));
        c->hb_failing = 1;
    } else {
        if (c->hb_failing)
            TQKV_LOGI(MOD, "msg=\"heartbeat restored\"");
        c->hb_failing = 0;
    }
}

static void heartbeat(uv_timer_t *t)
{
    tqkvd_cluster *c = t->data;
    if (c->stopping || !c->redis)
        return;
    c->st.heartbeats++;
    text rec = {0};
    build_record(c, &rec);
    int e = rec.oom ? TQKV_ENOMEM
                    : tqkv_redis_kv_set(c->redis, c->node_key, rec.buf, rec.len,
                                        (uint32_t)c->s->cfg.member_ttl_ms, on_heartbeat_set, c);
    tqkv_free(rec.buf);
    if (e)
        on_heartbeat_set(c, e);
    tqkv_redis_set_add(c->redis, DIR_NODES, c->id, strlen(c->id), ignore_done, NULL);
    if (!c->refreshing) {
        refresh *f = tqkv_calloc(1, sizeof *f);
        if (!f)
            return;
        f->c = c;
        c->refreshing = 1;
        if (tqkv_redis_set_members(c->redis, DIR_NODES, on_members, f) != 0) {
            c->refreshing = 0;
            tqkv_free(f);
        }
    }
}

static int valid_id(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > 120)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)id[i] <= ' ' || id[i] == '{' || id[i] == '}' || id[i] == 0x7f)
            return 0;
    return 1;
}

int tqkvd_cluster_enabled(const tqkvd_server *s)
{
    return s->cluster != NULL;
}

int tqkvd_cluster_start(tqkvd_server *s)
{
    int want = (int)s->cfg.cluster; /* 0 auto, 1 on, 2 off */
    int have_redis = s->cfg.redis && s->cfg.redis[0];
    if (want == 2 || (want == 0 && !have_redis))
        return 0;
    if (!have_redis) {
        TQKV_LOGE(MOD, "msg=\"cluster=on needs a Redis (the redis setting)\"");
        return TQKV_EBADCONFIG;
    }
    tqkvd_cluster *c = tqkv_calloc(1, sizeof *c);
    if (!c)
        return TQKV_ENOMEM;
    c->s = s;
    pthread_mutex_init(&c->lock, NULL);
    s->cluster = c;
    c->transport = tqkvd_transport_find("tcp");
    /* The advertised address: the setting, else the bound TCP address (a wildcard bind is
     * advertised with the host name, which the peers must resolve). */
    if (s->cfg.advertise && s->cfg.advertise[0]) {
        snprintf(c->addr, sizeof c->addr, "%s", s->cfg.advertise);
    } else if (s->tcp_on) {
        char host[64] = "";
        if (strncmp(s->tcp_bound, "0.0.0.0:", 8) == 0 || strncmp(s->tcp_bound, "[::]:", 5) == 0) {
            gethostname(host, sizeof host - 1);
            snprintf(c->addr, sizeof c->addr, "%s%s", host, strrchr(s->tcp_bound, ':'));
        } else {
            snprintf(c->addr, sizeof c->addr, "%s", s->tcp_bound);
        }
    }
    if (s->cfg.node_id && s->cfg.node_id[0]) {
        snprintf(c->id, sizeof c->id, "%s", s->cfg.node_id);
    } else {
        char host[64] = "localhost";
        gethostname(host, sizeof host - 1);
        const char *port = s->tcp_on ? strrchr(s->tcp_bound, ':') : NULL;
        snprintf(c->id, sizeof c->id, "%s%s", host, port ? port : ":unix");
    }
    if (!valid_id(c->id)) {
        TQKV_LOGE(MOD, "msg=\"bad node_id (1..120 bytes, no spaces, braces or control bytes)\" "
                       "node_id=\"%s\"",
                  c->id);
        return TQKV_EBADCONFIG;
    }
    snprintf(c->node_key, sizeof c->node_key, "{tqkvdir}:node:%s", c->id);
    c->redis = redis_engine(s);
    if (!c->redis) {
        TQKV_LOGE(MOD, "msg=\"the cluster needs the Redis tier, which is not running\"");
        return TQKV_EBADCONFIG;
    }
    uv_timer_init(s->loop, &c->hb);
    c->hb.data = c;
    c->hb_on = 1;
    uv_timer_start(&c->hb, heartbeat, 0, (uint64_t)s->cfg.heartbeat_ms);
    TQKV_LOGI(MOD, "msg=\"cluster on\" id=%s addr=%s heartbeat_ms=%lld member_ttl_ms=%lld "
                   "peer_fetch=%lld",
              c->id, c->addr[0] ? c->addr : "(none: peers cannot fetch from us)",
              (long long)s->cfg.heartbeat_ms, (long long)s->cfg.member_ttl_ms,
              (long long)s->cfg.peer_fetch);
    return 0;
}

void tqkvd_cluster_stop(tqkvd_server *s)
{
    tqkvd_cluster *c = s->cluster;
    if (!c || c->stopping)
        return;
    c->stopping = 1;
    if (c->hb_on) {
        uv_close((uv_handle_t *)&c->hb, NULL);
        c->hb_on = 0;
    }
    if (c->redis) {
        /* Leave the view now rather than after the expiry (best effort: the engine closes with
         * the store, which may cancel these). */
        tqkv_redis_kv_del(c->redis, c->node_key, ignore_done, NULL);
        tqkv_redis_set_rem(c->redis, DIR_NODES, c->id, strlen(c->id), ignore_done, NULL);
    }
    c->redis = NULL;
}

void tqkvd_cluster_free(tqkvd_server *s)
{
    tqkvd_cluster *c = s->cluster;
    if (!c)
        return;
    free_members(c->members, c->n_members);
    for (pool_ent *p = c->pool, *n; p; p = n) {
        n = p->next;
        c->transport->close(p->conn);
        tqkv_free(p);
    }
    pthread_mutex_destroy(&c->lock);
    tqkv_free(c);
    s->cluster = NULL;
}

const char *tqkvd_cluster_self(const tqkvd_server *s)
{
    return s->cluster ? s->cluster->id : "";
}

size_t tqkvd_cluster_members(const tqkvd_server *s, const tqkvd_member **out)
{
    *out = s->cluster ? s->cluster->members : NULL;
    return s->cluster ? s->cluster->n_members : 0;
}

void tqkvd_cluster_get_stats(const tqkvd_server *s, tqkvd_cluster_stats *out)
{
    memset(out, 0, sizeof *out);
    if (!s->cluster)
        return;
    pthread_mutex_lock(&((tqkvd_cluster *)s->cluster)->lock);
    *out = s->cluster->st;
    pthread_mutex_unlock(&((tqkvd_cluster *)s->cluster)->lock);
}

/* ---- namespaces ---- */

/* Redis key of a namespace record: the name itself when it is a valid key, else "x" + hex. */
static void ns_key(const char *name, char *out, size_t cap)
{
    int plain = 1;
    for (const char *p = name; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == '{' || *p == '}' || *p == 0x7f)
            plain = 0;
    if (plain) {
        snprintf(out, cap, "{tqkvdir}:ns:%s", name);
        return;
    }
    size_t l = (size_t)snprintf(out, cap, "{tqkvdir}:ns:x");
    for (const unsigned char *p = (const unsigned char *)name; *p && l + 3 < cap; p++)
        l += (size_t)snprintf(out + l, cap - l, "%02x", *p);
}

/* The record of a namespace: its whole description as text, so that comparing two texts
 * compares the descriptions. */
static int ns_record(const tqkv_ns_desc *d, text *t)
{
    char fp[2 * TQKV_NS_FINGERPRINT_MAX + 1] = "";
    for (uint32_t i = 0; i < d->fingerprint_len && i < TQKV_NS_FINGERPRINT_MAX; i++)
        snprintf(fp + 2 * i, 3, "%02x", d->fingerprint[i]);
    /* The name in hex: names may hold any byte. */
    char nh[2 * TQKV_NS_NAME_MAX + 1] = "";
    for (size_t i = 0; d->name[i] && i < TQKV_NS_NAME_MAX; i++)
        snprintf(nh + 2 * i, 3, "%02x", (unsigned char)d->name[i]);
    tput(t, "name_hex", "%s", nh);
    tput(t, "fingerprint", "%s", fp);
    tput(t, "n_layers", "%u", d->n_layers);
    tput(t, "n_kv_heads", "%u", d->n_kv_heads);
    tput(t, "head_dim", "%u", d->head_dim);
    tput(t, "dtype", "%u", d->dtype);
    tput(t, "chunk_size", "%u", d->chunk_size);
    tput(t, "preset", "%s", d->preset);
    tput(t, "seed", "%" PRIu64, d->seed);
    return t->oom ? TQKV_ENOMEM : 0;
}

static int unhex(const char *h, uint8_t *out, size_t cap, size_t *n)
{
    size_t l = strlen(h);
    if (l % 2 || l / 2 > cap)
        return -1;
    for (size_t i = 0; i < l / 2; i++) {
        unsigned v;
        if (sscanf(h + 2 * i, "%2x", &v) != 1)
            return -1;
        out[i] = (uint8_t)v;
    }
    *n = l / 2;
    return 0;
}

/* Parses a namespace record. @return 0 or TQKV_ECORRUPT. */
static int ns_parse(const void *data, size_t len, tqkv_ns_desc *d)
{
    tqkvd_member m;
    memset(&m, 0, sizeof m);
    memset(d, 0, sizeof *d);
    int e = parse_record(&m, data, len);
    const char *nh = field(&m, "name_hex"), *fp = field(&m, "fingerprint"),
               *nl = field(&m, "n_layers"), *nk = field(&m, "n_kv_heads"),
               *hd = field(&m, "head_dim"), *dt = field(&m, "dtype"),
               *cs = field(&m, "chunk_size"), *pr = field(&m, "preset"), *sd = field(&m, "seed");
    size_t n = 0;
    if (e || !nh || !fp || !nl || !nk || !hd || !dt || !cs || !pr || !sd ||
        unhex(nh, (uint8_t *)d->name, TQKV_NS_NAME_MAX, &n) || n == 0 ||
        unhex(fp, d->fingerprint, TQKV_NS_FINGERPRINT_MAX, &n) ||
        strlen(pr) > TQKV_NS_PRESET_MAX) {
        free_member(&m);
        return TQKV_ECORRUPT;
    }
    d->fingerprint_len = (uint32_t)n;
    d->n_layers = (uint32_t)strtoul(nl, NULL, 10);
    d->n_kv_heads = (uint32_t)strtoul(nk, NULL, 10);
    d->head_dim = (uint32_t)strtoul(hd, NULL, 10);
    d->dtype = (uint32_t)strtoul(dt, NULL, 10);
    d->chunk_size = (uint32_t)strtoul(cs, NULL, 10);
    snprintf(d->preset, sizeof d->preset, "%s", pr);
    d->seed = strtoull(sd, NULL, 10);
    free_member(&m);
    return 0;
}

typedef struct {
    tqkvd_req *r;
    tqkv_ns_desc d;
    void *info;
    text rec;
    char key[300];
    int rechecked; /* the record was read again after a lost SET NX */
} ns_op;

/* Registers locally and answers; frees o. Answering only once the record is in Redis means a
 * client told "registered" by this node finds the namespace on any other node. */
static void register_here(ns_op *o)
{
    tqkvd__register_local(o->r, &o->d, o->info);
    tqkv_free(o->rec.buf);
    tqkv_free(o);
}

static void register_conflict(ns_op *o)
{
    o->r->conn->srv->cluster->st.ns_conflicts++;
    tqkv_free(o->info);
    tqkvd_req_set_status(o->r, TQKV_ENSCONFLICT,
                         "namespace '%s' is registered in the cluster with different parameters",
                         o->d.name);
    tqkvd_req_respond(o->r, 0);
    tqkv_free(o->rec.buf);
    tqkv_free(o);
}

static void on_register_get(void *arg, int status, const void *data, size_t len);

/* SET NX of the record answered: stored (this REGISTER published it), or another member's
 * record got there first (read it back and compare), or Redis failed (register locally; a later
 * REGISTER publishes it). Two members registering one name at the same instant thus agree: the
 * record written first wins, the other gets TQKV_ENSCONFLICT unless its parameters are equal. */
static void on_ns_published(void *arg, int status)
{
    ns_op *o = arg;
    tqkvd_cluster *c = o->r->conn->srv->cluster;
    if (status == 1) {
        c->st.ns_published++;
    } else if (status == 0) {
        if (c->redis && !c->stopping && !o->rechecked) {
            o->rechecked = 1;
            if (tqkv_redis_kv_get(c->redis, o->key, on_register_get, o) == 0)
                return;
        }
    } else {
        TQKV_LOGW(MOD, "msg=\"cannot publish a namespace\" ns=%s err=%s", o->d.name,
                  tqkv_err_name(status));
    }
    register_here(o);
}

static void on_register_get(void *arg, int status, const void *data, size_t len)
{
    ns_op *o = arg;
    tqkvd_cluster *c = o->r->conn->srv->cluster;
    if (status == 1 && (len != o->rec.len || memcmp(data, o->rec.buf, len) != 0)) {
        register_conflict(o);
        return;
    }
    if (status < 0)
        TQKV_LOGD(MOD, "msg=\"namespace check failed; registering locally\" ns=%s err=%s",
                  o->d.name, tqkv_err_name(status));
    /* Absent: publish it, only if still absent. Identical, or Redis unavailable: local only
     * (published by a later REGISTER). */
    if (status == 0 && c->redis && !c->stopping &&
        tqkv_redis_kv_set_nx(c->redis, o->key, o->rec.buf, o->rec.len, on_ns_published, o) == 0)
        return;
    register_here(o);
}

int tqkvd_cluster_register(tqkvd_req *r, const tqkv_ns_desc *d, void *info)
{
    tqkvd_cluster *c = r->conn->srv->cluster;
    if (!c || !c->redis || c->stopping)
        return 0;
    ns_op *o = tqkv_calloc(1, sizeof *o);
    if (!o)
        return 0;
    o->r = r;
    o->d = *d;
    o->info = info;
    ns_key(d->name, o->key, sizeof o->key);
    if (ns_record(d, &o->rec) != 0 || tqkv_redis_kv_get(c->redis, o->key, on_register_get, o)) {
        tqkv_free(o->rec.buf);
        tqkv_free(o);
        return 0;
    }
    return 1;
}

static void on_lookup_get(void *arg, int status, const void *data, size_t len)
{
    ns_op *o = arg;
    tqkvd_req *r = o->r;
    tqkvd_server *s = r->conn->srv;
    int e = TQKV_ENONAMESPACE;
    if (status == 1) {
        tqkv_ns_desc d;
        e = ns_parse(data, len, &d);
        if (e == 0 && strcmp(d.name, r->hdr->ns) != 0)
            e = TQKV_ECORRUPT;
        if (e == 0)
            e = tqkvd__ns_adopt(s, &d);
        if (e == 0) {
            s->cluster->st.ns_fetched++;
            TQKV_LOGI(MOD, "msg=\"namespace from the cluster\" ns=%s", d.name);
        } else {
            TQKV_LOGW(MOD, "msg=\"namespace record refused\" ns=%s err=%s", r->hdr->ns,
                      tqkv_err_name(e));
        }
    }
    tqkv_free(o);
    if (e == 0 && tqkv_store_ns_find(s->store, r->hdr->ns))
        return tqkvd__dispatch_again(r);
    tqkvd_req_set_status(r, TQKV_ENONAMESPACE,
                         "no such namespace '%s' here or in the cluster (REGISTER it first)%s",
                         r->hdr->ns, status < 0 ? "; the cluster could not be asked" : "");
    tqkvd_req_respond(r, 0);
}

int tqkvd_cluster_ns_lookup(tqkvd_req *r)
{
    tqkvd_cluster *c = r->conn->srv->cluster;
    if (!c || !c->redis || c->stopping || r->cluster_ns_tried || !r->hdr->ns ||
        !r->hdr->ns[0] || strlen(r->hdr->ns) > TQKV_NS_NAME_MAX)
        return 0;
    r->cluster_ns_tried = 1;
    ns_op *o = tqkv_calloc(1, sizeof *o);
    if (!o)
        return 0;
    o->r = r;
    ns_key(r->hdr->ns, o->key, sizeof o->key);
    if (tqkv_redis_kv_get(c->redis, o->key, on_lookup_get, o) != 0) {
        tqkv_free(o);
        return 0;
    }
    return 1;
}

/* ---- peer fetch ---- */

typedef struct {
    uv_work_t work;
    tqkvd_req *r;
    tqkvd_cluster *c;
    char ns[TQKV_NS_NAME_MAX + 1];
    size_t n;
    size_t *idx;            /* item index of each key asked */
    uint8_t *keys;          /* n x 32 */
    tqkvd_peer_block *res;  /* final result per key */
    uint32_t *n_tokens;
    char (*peers)[96];
    size_t n_peers;
    tqkvd_peer_opts opts;
    char token[256];
    int lookup; /* for a LOOKUP: store what is found, then look up again */
} peer_job;

static tqkvd_peer_conn *pool_take(tqkvd_cluster *c, const char *addr)
{
    pthread_mutex_lock(&c->lock);
    for (pool_ent **pp = &c->pool; *pp; pp = &(*pp)->next)
        if (strcmp((*pp)->addr, addr) == 0) {
            pool_ent *e = *pp;
            *pp = e->next;
            c->pool_n--;
            pthread_mutex_unlock(&c->lock);
            tqkvd_peer_conn *conn = e->conn;
            tqkv_free(e);
            return conn;
        }
    pthread_mutex_unlock(&c->lock);
    return NULL;
}

static void pool_put(tqkvd_cluster *c, const char *addr, tqkvd_peer_conn *conn)
{
    pool_ent *e = tqkv_calloc(1, sizeof *e);
    pthread_mutex_lock(&c->lock);
    if (e && c->pool_n < POOL_MAX) {
        snprintf(e->addr, sizeof e->addr, "%s", addr);
        e->conn = conn;
        e->next = c->pool;
        c->pool = e;
        c->pool_n++;
        pthread_mutex_unlock(&c->lock);
        return;
    }
    pthread_mutex_unlock(&c->lock);
    tqkv_free(e);
    c->transport->close(conn);
}

static int peer_is_down(tqkvd_cluster *c, const char *addr)
{
    uint64_t now = tqkv_now_ns();
    int down = 0;
    pthread_mutex_lock(&c->lock);
    for (int i = 0; i < PEER_DOWN_MAX && !down; i++)
        down = c->down[i].until_ns > now && strcmp(c->down[i].addr, addr) == 0;
    pthread_mutex_unlock(&c->lock);
    return down;
}

/* Marks addr unreachable for PEER_DOWN_NS (ok = 0), or reachable again (ok = 1). */
static void peer_mark(tqkvd_cluster *c, const char *addr, int ok)
{
    uint64_t now = tqkv_now_ns();
    pthread_mutex_lock(&c->lock);
    int slot = -1;
    for (int i = 0; i < PEER_DOWN_MAX; i++) {
        if (strcmp(c->down[i].addr, addr) == 0) {
            slot = i;
            break;
        }
        if (slot < 0 && c->down[i].until_ns <= now)
            slot = i;
    }
    if (slot >= 0) {
        snprintf(c->down[slot].addr, sizeof c->down[slot].addr, "%s", addr);
        c->down[slot].until_ns = ok ? 0 : now + PEER_DOWN_NS;
    }
    pthread_mutex_unlock(&c->lock);
}

static void peer_work(uv_work_t *w)
{
    peer_job *j = w->data;
    tqkvd_cluster *c = j->c;
    uint8_t *want = tqkv_malloc(j->n * 32);
    size_t *map = tqkv_calloc(j->n, sizeof *map);
    tqkvd_peer_block *got = tqkv_calloc(j->n, sizeof *got);
    uint64_t errors = 0, bad = 0, hits = 0, bytes = 0;
    if (!want || !map || !got)
        goto done;
    for (size_t p = 0; p < j->n_peers; p++) {
        size_t m = 0;
        for (size_t i = 0; i < j->n; i++)
            if (j->res[i].status != 1) {
                memcpy(want + m * 32, j->keys + i * 32, 32);
                map[m++] = i;
            }
        if (!m)
            break;
        if (peer_is_down(c, j->peers[p]))
            continue;
        tqkvd_peer_conn *conn = pool_take(c, j->peers[p]);
        int e = 0;
        for (int attempt = 0; attempt < 2; attempt++) {
            /* A pooled connection may have been closed by the peer: one fresh retry. */
            if (!conn && (e = c->transport->connect(j->peers[p], &j->opts, &conn)) != 0)
                break;
            e = c->transport->fetch(conn, j->ns, want, m, got);
            if (e == 0)
                break;
            c->transport->close(conn);
            conn = NULL;
            if (e == TQKV_ETIMEDOUT)
                break;
        }
        if (e) {
            errors++;
            if (e == TQKV_ECONNECT || e == TQKV_ETIMEDOUT || e == TQKV_ECLOSED)
                peer_mark(c, j->peers[p], 0);
            continue;
        }
        peer_mark(c, j->peers[p], 1);
        pool_put(c, j->peers[p], conn);
        for (size_t k = 0; k < m; k++) {
            size_t i = map[k];
            if (got[k].status != 1)
                continue;
            uint32_t nt = 0;
            if (tqkvd__block_check(j->r, got[k].data, got[k].len, j->keys + i * 32, &nt) != 0) {
                bad++;
                tqkv_free(got[k].data);
                continue;
            }
            j->res[i] = got[k];
            j->n_tokens[i] = nt;
            hits++;
            bytes += got[k].len;
        }
    }
done:
    tqkv_free(want);
    tqkv_free(map);
    tqkv_free(got);
    pthread_mutex_lock(&c->lock);
    c->st.peer_errors += errors;
    c->st.peer_bad_blocks += bad;
    c->st.peer_hits += hits;
    c->st.peer_misses += j->n - hits;
    c->st.peer_bytes += bytes;
    pthread_mutex_unlock(&c->lock);
}

static void peer_job_free(peer_job *j)
{
    for (size_t i = 0; i < j->n; i++)
        tqkv_free(j->res ? j->res[i].data : NULL);
    tqkv_free(j->res);
    tqkv_free(j->idx);
    tqkv_free(j->keys);
    tqkv_free(j->n_tokens);
    tqkv_free(j->peers);
    tqkv_free(j);
}

static void peer_after(uv_work_t *w, int status)
{
    peer_job *j = w->data;
    tqkvd_req *r = j->r;
    tqkvd_server *s = r->conn->srv;
    s->works_inflight--;
    for (size_t k = 0; k < j->n && status == 0; k++) {
        tqkvd_peer_block *b = &j->res[k];
        if (b->status != 1)
            continue;
        tqkvd_item *it = &r->items[j->idx[k]];
        /* Keep a copy here (the next GET of the key is a host hit), then serve from the store. */
        tqkv_store_put *p = NULL;
        void *buf = NULL;
        int e = tqkv_store_put_reserve(s->store, r->ns, it->key, b->len, &p, &buf);
        if (e == 0) {
            memcpy(buf, b->data, b->len);
            e = tqkv_store_put_commit(s->store, p, b->len);
        }
        if (j->lookup) {
            /* The LOOKUP looks again and reports these keys (now here) with tier PEER. */
            if (e == 0 || e == TQKV_EEXIST)
                it->tier = TQKV_TIER_PEER;
            continue;
        }
        tqkv_store_ref *ref = NULL;
        if ((e == 0 || e == TQKV_EEXIST) &&
            tqkv_store_get(s->store, r->ns, it->key, &ref, NULL, NULL) == TQKV_STORE_HIT) {
            it->ref = ref;
            it->status = 0;
            it->tier = TQKV_TIER_PEER;
        } else if (!r->decode_dtype && r->layer_begin == 0 &&
                   r->layer_count == tqkv_ns_get_desc(r->ns)->n_layers) {
            /* No room here: serve the whole block from the fetched buffer. */
            it->out = b->data;
            b->data = NULL;
            it->out_ptr = it->out;
            it->out_len = b->len;
            it->n_tokens = j->n_tokens[k];
            it->status = 0;
            it->tier = TQKV_TIER_PEER;
        }
    }
    int lookup = j->lookup;
    peer_job_free(j);
    if (lookup)
        tqkvd__lookup_again(r);
    else
        tqkvd__get_continue(r);
}

/* Whether item i of r is one to ask the peers for. */
static int wanted(const tqkvd_req *r, size_t i, int lookup)
{
    const tqkvd_item *it = &r->items[i];
    if (lookup)
        return i >= r->lookup.hits && r->lookup_tiers && r->lookup_tiers[i] == TQKV_TIER_NONE;
    return !it->ref && !it->out_len && it->status == TQKV_ENOENT;
}

static int peer_start(tqkvd_req *r, int lookup)
{
    tqkvd_server *s = r->conn->srv;
    tqkvd_cluster *c = s->cluster;
    if (!c || c->stopping || r->peer_tried || !s->cfg.peer_fetch || !c->transport ||
        s->shutting_down)
        return 0;
    /* One hop only: a peer's request never fans out again. */
    if (strncmp(r->conn->name, TQKVD_PEER_CLIENT_PREFIX, strlen(TQKVD_PEER_CLIENT_PREFIX)) == 0)
        return 0;
    r->peer_tried = 1;
    size_t n = 0, np = 0;
    for (size_t i = 0; i < r->n_items; i++)
        n += wanted(r, i, lookup);
    for (size_t i = 0; i < c->n_members; i++)
        np += !c->members[i].self && c->members[i].addr[0];
    if (!n || !np)
        return 0;
    if (n > PEER_MAX_KEYS)
        n = PEER_MAX_KEYS;
    peer_job *j = tqkv_calloc(1, sizeof *j);
    if (!j)
        return 0;
    j->r = r;
    j->c = c;
    j->lookup = lookup;
    j->idx = tqkv_calloc(n, sizeof *j->idx);
    j->keys = tqkv_malloc(n * 32);
    j->res = tqkv_calloc(n, sizeof *j->res);
    j->n_tokens = tqkv_calloc(n, sizeof *j->n_tokens);
    j->peers = tqkv_calloc(np, sizeof *j->peers);
    if (!j->idx || !j->keys || !j->res || !j->n_tokens || !j->peers) {
        peer_job_free(j);
        return 0;
    }
    for (size_t i = 0; i < r->n_items && j->n < n; i++) {
        tqkvd_item *it = &r->items[i];
        if (!wanted(r, i, lookup))
            continue;
        j->idx[j->n] = i;
        memcpy(j->keys + j->n * 32, it->key, 32);
        j->n++;
    }
    for (size_t i = 0; i < c->n_members; i++)
        if (!c->members[i].self && c->members[i].addr[0])
            snprintf(j->peers[j->n_peers++], 96, "%s", c->members[i].addr);
    snprintf(j->ns, sizeof j->ns, "%s", tqkv_ns_get_desc(r->ns)->name);
    snprintf(j->token, sizeof j->token, "%s", s->cfg.token ? s->cfg.token : "");
    j->opts.timeout_ms = (uint32_t)s->cfg.peer_timeout_ms;
    j->opts.max_frame = (uint32_t)s->cfg.max_frame;
    j->opts.token = j->token;
    j->opts.self_id = c->id;
    c->st.peer_requests++;
    c->st.peer_keys_asked += j->n;
    j->work.data = j;
    s->works_inflight++;
    if (uv_queue_work(s->loop, &j->work, peer_work, peer_after) != 0) {
        s->works_inflight--;
        peer_job_free(j);
        return 0;
    }
    return 1;
}

int tqkvd_cluster_peer_get(tqkvd_req *r)
{
    return peer_start(r, 0);
}

int tqkvd_cluster_peer_lookup(tqkvd_req *r)
{
    return peer_start(r, 1);
}

#else /* built without the Redis engine: no cluster */

#include <string.h>

#include "server.h"
#include "tqkv_log.h"

int tqkvd_cluster_start(tqkvd_server *s)
{
    if (s->cfg.cluster == 1) {
        TQKV_LOGE("cluster", "msg=\"cluster=on but this tqkvd was built without Redis\"");
        return TQKV_EBADCONFIG;
    }
    return 0;
}
void tqkvd_cluster_stop(tqkvd_server *s) { (void)s; }
void tqkvd_cluster_free(tqkvd_server *s) { (void)s; }
int tqkvd_cluster_enabled(const tqkvd_server *s) { (void)s; return 0; }
const char *tqkvd_cluster_self(const tqkvd_server *s) { (void)s; return ""; }
size_t tqkvd_cluster_members(const tqkvd_server *s, const tqkvd_member **out)
{
    (void)s;
    *out = NULL;
    return 0;
}
void tqkvd_cluster_get_stats(const tqkvd_server *s, tqkvd_cluster_stats *out)
{
    (void)s;
    memset(out, 0, sizeof *out);
}
int tqkvd_cluster_register(tqkvd_req *r, const tqkv_ns_desc *d, void *info)
{
    (void)r, (void)d, (void)info;
    return 0;
}
int tqkvd_cluster_ns_lookup(tqkvd_req *r) { (void)r; return 0; }
int tqkvd_cluster_peer_get(tqkvd_req *r) { (void)r; return 0; }
int tqkvd_cluster_peer_lookup(tqkvd_req *r) { (void)r; return 0; }

#endif
