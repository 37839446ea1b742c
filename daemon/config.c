/* tqkvd's settings table and its three front ends: the INI file (libinih), the command-line
 * flags and CONFIG GET/SET. Adding a setting is one row in `settings` plus a field in
 * tqkvd_config; the flag, the file key, --help and CONFIG GET follow from the row. */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <ini.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "server.h"
#include "tqkv_alloc.h"
#include "tqkv_errors.h"
#include "tqkv_log.h"

typedef enum { T_STRING, T_INT, T_SIZE, T_BOOL, T_ENUM } setting_type;

typedef struct {
    const char *name;
    setting_type type;
    size_t offset;            /* of the field in tqkvd_config */
    const char *def;          /* default as text; NULL: computed by tqkvd_config_defaults */
    int64_t min, max;         /* T_INT / T_SIZE */
    const char *const *names; /* T_ENUM values, index = stored number */
    int mutable_;
    int secret;
    /* Applies a changed value at run time (mutable settings only); NULL: read where used. */
    int (*apply)(struct tqkvd_server *s);
    const char *help;
} setting;

static const char *const log_levels[] = {"error", "warn", "info", "debug", "trace", NULL};
static const char *const devices[] = {"auto", "cpu", "cuda", NULL};
/* Same order as tqkv_ssd_fsync and tqkv_write_policy. */
static const char *const fsyncs[] = {"always", "interval", "none", NULL};
static const char *const write_policies[] = {"back", "through", "async", NULL};
static const char *const cluster_modes[] = {"auto", "on", "off", NULL};

#define OFF(f) offsetof(tqkvd_config, f)
static const setting settings[] = {
    {"unix_socket", T_STRING, OFF(unix_socket), NULL, 0, 0, NULL, 0, 0, NULL,
     "Unix socket path (mode 0660); \"\" disables. Default: $XDG_RUNTIME_DIR/tqkvd.sock, "
     "/run/tqkv/tqkvd.sock as root, else /tmp/tqkvd-$UID.sock"},
    {"tcp", T_STRING, OFF(tcp), "127.0.0.1:7070", 0, 0, NULL, 0, 0, NULL,
     "TCP listen address host:port (port 0: ephemeral); \"\" disables"},
    {"token", T_STRING, OFF(token), "", 0, 0, NULL, 1, 1, NULL,
     "auth token required from TCP clients in HELLO; \"\" = none"},
    {"admin_token", T_STRING, OFF(admin_token), "", 0, 0, NULL, 1, 1, NULL,
     "token for admin ops (CLEAR, EVICT, CONFIG SET); \"\" = admin ops on the Unix socket only"},
    {"host_capacity", T_SIZE, OFF(host_capacity), NULL, 1 << 20, INT64_MAX, NULL, 1, 0,
     tqkvd_server_apply_capacity,
     "bytes of the host DRAM tier (K/M/G/T suffixes or N% of RAM); default 25%"},
    {"max_frame", T_SIZE, OFF(max_frame), "256M", 64 << 10, UINT32_MAX, NULL, 1, 0, NULL,
     "largest frame accepted (preamble + header + payload)"},
    {"max_connections", T_INT, OFF(max_connections), "1024", 1, 65536, NULL, 1, 0, NULL,
     "connections accepted at once; more are refused with TQKV_ETOOMANY"},
    {"max_inflight_bytes", T_SIZE, OFF(max_inflight_bytes), "64M", 1 << 20, INT64_MAX, NULL, 1, 0,
     NULL, "request and response bytes in flight per connection before reading pauses"},
    {"workers", T_INT, OFF(workers), NULL, 1, 128, NULL, 0, 0, NULL,
     "worker threads for encoding, checksums and copies (default: CPU count, at most 16)"},
    {"log_level", T_ENUM, OFF(log_level), "info", 0, 0, log_levels, 1, 0,
     tqkvd_server_apply_log_level, "error, warn, info, debug or trace"},
    {"encode_device", T_ENUM, OFF(encode_device), "auto", 0, 0, devices, 1, 0,
     tqkvd_server_apply_encode_device,
     "where raw PUTs are encoded: auto (GPU when built with CUDA and present), cpu, cuda"},
    {"verify_checksums", T_BOOL, OFF(verify_checksums), "true", 0, 1, NULL, 1, 0, NULL,
     "verify payload checksums of encoded blocks on PUT"},
    {"shutdown_timeout_ms", T_INT, OFF(shutdown_timeout_ms), "5000", 0, 600000, NULL, 1, 0, NULL,
     "on SIGTERM/SIGINT, how long in-flight requests may take before connections are closed"},
    {"ready_file", T_STRING, OFF(ready_file), "", 0, 0, NULL, 0, 0, NULL,
     "file written once listening (unix=PATH, tcp=HOST:PORT lines), for supervisors and tests"},
    {"metrics", T_STRING, OFF(metrics), "127.0.0.1:9470", 0, 0, NULL, 0, 0, NULL,
     "HTTP address host:port of the Prometheus /metrics and /healthz endpoint (numeric host; "
     "port 0: ephemeral); \"\" disables"},
    {"ssd_dir", T_STRING, OFF(ssd_dir), "", 0, 0, NULL, 0, 0, NULL,
     "directory of the SSD tier (segment files, namespace registry); \"\" disables the tier"},
    {"ssd_capacity", T_SIZE, OFF(ssd_capacity), "16G", 16 << 20, INT64_MAX, NULL, 1, 0,
     tqkvd_server_apply_ssd_capacity,
     "bytes of segment files the SSD tier may hold (oldest segments are evicted past it)"},
    {"ssd_fsync", T_ENUM, OFF(ssd_fsync), "always", 0, 0, fsyncs, 0, 0, NULL,
     "always: a PUT written through to the SSD is acknowledged once durable (group commit); "
     "interval: fdatasync every ssd_fsync_interval_ms; none: the kernel decides"},
    {"ssd_fsync_interval_ms", T_INT, OFF(ssd_fsync_interval_ms), "100", 1, 60000, NULL, 0, 0,
     NULL, "fdatasync period of ssd_fsync=interval"},
    {"ssd_direct_io", T_BOOL, OFF(ssd_direct_io), "false", 0, 1, NULL, 0, 0, NULL,
     "O_DIRECT for segment I/O (no page cache)"},
    {"ssd_lz4", T_BOOL, OFF(ssd_lz4), "true", 0, 1, NULL, 0, 0, NULL,
     "LZ4 per record when it saves space"},
    {"ssd_io_threads", T_INT, OFF(ssd_io_threads), "2", 1, 64, NULL, 0, 0, NULL,
     "reader threads of the SSD tier"},
    {"ssd_write", T_ENUM, OFF(ssd_write), "through", 0, 0, write_policies, 1, 0,
     tqkvd_server_apply_write_policy,
     "when blocks go to the SSD: through (at PUT; the reply waits for it), async (at PUT; "
     "the reply does not wait) or back (when evicted from host memory)"},
    {"redis", T_STRING, OFF(redis), "", 0, 0, NULL, 0, 0, NULL,
     "Redis tier: host:port of the server, or of cluster seed nodes, comma-separated (use IP "
     "addresses); \"\" disables the tier"},
    {"redis_cluster", T_BOOL, OFF(redis_cluster), "false", 0, 1, NULL, 0, 0, NULL,
     "the Redis nodes form a Redis Cluster (slot map, MOVED/ASK)"},
    {"redis_user", T_STRING, OFF(redis_user), "", 0, 0, NULL, 0, 0, NULL,
     "ACL user for Redis AUTH; \"\": the default user"},
    {"redis_password", T_STRING, OFF(redis_password), "", 0, 0, NULL, 0, 1, NULL,
     "password for Redis AUTH; \"\": no AUTH"},
    {"redis_prefix", T_STRING, OFF(redis_prefix), "tqkv", 0, 0, NULL, 0, 0, NULL,
     "prefix of the Redis keys (docs/redis.md)"},
    {"redis_ttl_s", T_INT, OFF(redis_ttl_s), "0", 0, 4294967, NULL, 0, 0, NULL,
     "expiry of blocks stored in Redis, seconds; 0: none"},
    {"redis_timeout_ms", T_INT, OFF(redis_timeout_ms), "1000", 10, 600000, NULL, 0, 0, NULL,
     "connect and no-progress timeout of Redis requests (they then count as misses)"},
    {"redis_lz4", T_BOOL, OFF(redis_lz4), "true", 0, 1, NULL, 0, 0, NULL,
     "LZ4 per block stored in Redis when it saves space"},
    {"redis_write", T_ENUM, OFF(redis_write), "async", 0, 0, write_policies, 1, 0,
     tqkvd_server_apply_write_policy,
     "when blocks go to Redis: async (at PUT, the reply does not wait), through (at PUT, the "
     "reply waits) or back (when evicted from the tiers above)"},
    {"cluster", T_ENUM, OFF(cluster), "auto", 0, 0, cluster_modes, 0, 0, NULL,
     "membership in Redis, shared namespaces and peer fetch (docs/cluster.md): auto (on when "
     "redis is set), on, off"},
    {"node_id", T_STRING, OFF(node_id), "", 0, 0, NULL, 0, 0, NULL,
     "this daemon's id in the cluster; \"\": hostname:port"},
    {"advertise", T_STRING, OFF(advertise), "", 0, 0, NULL, 0, 0, NULL,
     "host:port the peers use to fetch blocks from this daemon; \"\": the bound TCP address "
     "(the host name for a wildcard bind)"},
    {"heartbeat_ms", T_INT, OFF(heartbeat_ms), "1000", 20, 60000, NULL, 0, 0, NULL,
     "period of the member record's refresh and of reading the members back"},
    {"member_ttl_ms", T_INT, OFF(member_ttl_ms), "5000", 100, 3600000, NULL, 0, 0, NULL,
     "expiry of the member record: a member silent this long leaves the view"},
    {"peer_fetch", T_BOOL, OFF(peer_fetch), "true", 0, 1, NULL, 1, 0, NULL,
     "a GET that misses every local tier asks the live members for the blocks"},
    {"peer_timeout_ms", T_INT, OFF(peer_timeout_ms), "500", 10, 60000, NULL, 1, 0, NULL,
     "connect and no-progress limit of one peer fetch, per peer"},
};
#undef OFF
#define N_SETTINGS (sizeof(settings) / sizeof(settings[0]))

static void errf(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void errf(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static const setting *find(const char *name)
{
    for (size_t i = 0; i < N_SETTINGS; i++)
        if (strcmp(settings[i].name, name) == 0)
            return &settings[i];
    return NULL;
}

static char **str_field(tqkvd_config *c, const setting *s)
{
    return (char **)((char *)c + s->offset);
}
static int64_t *num_field(tqkvd_config *c, const setting *s)
{
    return (int64_t *)((char *)c + s->offset);
}

uint64_t tqkvd_mem_total(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    uint64_t kb = 0;
    if (f) {
        char line[256];
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "MemTotal: %" SCNu64 " kB", &kb) == 1)
                break;
        fclose(f);
    }
    return kb ? kb * 1024 : (4ull << 30);
}

int tqkvd_parse_size(const char *s, int64_t *out)
{
    if (!s || !*s)
        return TQKV_EBADCONFIG;
    errno = 0;
    char *end;
    double v = strtod(s, &end);
    if (errno || end == s || v < 0)
        return TQKV_EBADCONFIG;
    while (*end == ' ')
        end++;
    double mul = 1;
    if (*end == '%') {
        if (end[1] || v > 100)
            return TQKV_EBADCONFIG;
        *out = (int64_t)((double)tqkvd_mem_total() * v / 100.0);
        return 0;
    }
    switch (*end) {
    case 'k': case 'K': mul = 1024.0; end++; break;
    case 'm': case 'M': mul = 1024.0 * 1024; end++; break;
    case 'g': case 'G': mul = 1024.0 * 1024 * 1024; end++; break;
    case 't': case 'T': mul = 1024.0 * 1024 * 1024 * 1024; end++; break;
    default: break;
    }
    if (mul > 1 && (*end == 'i' || *end == 'I'))
        end++;
    if (*end == 'b' || *end == 'B')
        end++;
    if (*end)
        return TQKV_EBADCONFIG;
    double bytes = v * mul;
    if (bytes >= 9.2e18)
        return TQKV_EBADCONFIG;
    *out = (int64_t)bytes;
    return 0;
}

/* Parses `value` for setting s into *num or *str (newly allocated). */
static int parse_value(const setting *s, const char *value, int64_t *num, char **str, char *err,
                       size_t errlen)
{
    switch (s->type) {
    case T_STRING:
        *str = tqkv_strdup(value);
        return *str ? 0 : TQKV_ENOMEM;
    case T_INT: {
        errno = 0;
        char *end;
        long long v = strtoll(value, &end, 10);
        if (errno || end == value || *end) {
            errf(err, errlen, "%s: not an integer: '%s'", s->name, value);
            return TQKV_EBADCONFIG;
        }
        *num = v;
        break;
    }
    case T_SIZE:
        if (tqkvd_parse_size(value, num) != 0) {
            errf(err, errlen, "%s: not a size: '%s' (e.g. 4096, 64M, 2G, 25%%)", s->name, value);
            return TQKV_EBADCONFIG;
        }
        break;
    case T_BOOL:
        if (!strcasecmp(value, "true") || !strcasecmp(value, "yes") || !strcmp(value, "1") ||
            !strcasecmp(value, "on"))
            *num = 1;
        else if (!strcasecmp(value, "false") || !strcasecmp(value, "no") || !strcmp(value, "0") ||
                 !strcasecmp(value, "off"))
            *num = 0;
        else {
            errf(err, errlen, "%s: not a boolean: '%s'", s->name, value);
            return TQKV_EBADCONFIG;
        }
        return 0;
    case T_ENUM:
        for (int64_t i = 0; s->names[i]; i++)
            if (!strcasecmp(s->names[i], value)) {
                *num = i;
                return 0;
            }
        errf(err, errlen, "%s: unknown value '%s'", s->name, value);
        return TQKV_EBADCONFIG;
    }
    if (*num < s->min || *num > s->max) {
        errf(err, errlen, "%s: %lld out of range [%lld, %lld]", s->name, (long long)*num,
             (long long)s->min, (long long)s->max);
        return TQKV_ERANGE;
    }
    return 0;
}

int tqkvd_config_set(tqkvd_config *c, struct tqkvd_server *server, const char *name,
                     const char *value, char *err, size_t errlen)
{
    const setting *s = find(name);
    if (!s) {
        errf(err, errlen, "unknown setting '%s'", name);
        return TQKV_ENOENT;
    }
    if (server && !s->mutable_) {
        errf(err, errlen, "%s cannot be changed at run time", name);
        return TQKV_EREADONLY;
    }
    int64_t num = 0;
    char *str = NULL;
    int r = parse_value(s, value, &num, &str, err, errlen);
    if (r)
        return r;
    if (s->type == T_STRING) {
        char **f = str_field(c, s);
        char *old = *f;
        *f = str;
        if (server && s->apply && (r = s->apply(server)) != 0) {
            *f = old;
            tqkv_free(str);
            errf(err, errlen, "%s: cannot apply '%s': %s", name, value, tqkv_strerror(r));
            return r;
        }
        tqkv_free(old);
    } else {
        int64_t *f = num_field(c, s);
        int64_t old = *f;
        *f = num;
        if (server && s->apply && (r = s->apply(server)) != 0) {
            *f = old;
            errf(err, errlen, "%s: cannot apply '%s': %s", name, value, tqkv_strerror(r));
            return r;
        }
    }
    return 0;
}

const char *tqkvd_config_get(const tqkvd_config *c, const char *name, char *out, size_t outlen)
{
    const setting *s = find(name);
    if (!s)
        return NULL;
    tqkvd_config *m = (tqkvd_config *)c;
    switch (s->type) {
    case T_STRING: {
        const char *v = *str_field(m, s);
        if (s->secret)
            v = (v && *v) ? "(set)" : "";
        snprintf(out, outlen, "%s", v ? v : "");
        break;
    }
    case T_INT:
    case T_SIZE:
        snprintf(out, outlen, "%lld", (long long)*num_field(m, s));
        break;
    case T_BOOL:
        snprintf(out, outlen, "%s", *num_field(m, s) ? "true" : "false");
        break;
    case T_ENUM:
        snprintf(out, outlen, "%s", s->names[*num_field(m, s)]);
        break;
    }
    return out;
}

size_t tqkvd_config_count(void)
{
    return N_SETTINGS;
}

const char *tqkvd_config_name(size_t i)
{
    return i < N_SETTINGS ? settings[i].name : NULL;
}

static char *default_unix_socket(void)
{
    char buf[512];
    const char *xdg = getenv("XDG_RUNTIME_DIR");
    if (geteuid() == 0)
        snprintf(buf, sizeof buf, "/run/tqkv/tqkvd.sock");
    else if (xdg && *xdg)
        snprintf(buf, sizeof buf, "%s/tqkvd.sock", xdg);
    else
        snprintf(buf, sizeof buf, "/tmp/tqkvd-%u.sock", (unsigned)getuid());
    return tqkv_strdup(buf);
}

int tqkvd_config_defaults(tqkvd_config *c)
{
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < N_SETTINGS; i++) {
        const setting *s = &settings[i];
        if (!s->def)
            continue;
        int r = tqkvd_config_set(c, NULL, s->name, s->def, NULL, 0);
        if (r)
            return r;
    }
    c->unix_socket = default_unix_socket();
    if (!c->unix_socket)
        return TQKV_ENOMEM;
    c->host_capacity = (int64_t)(tqkvd_mem_total() / 4);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    c->workers = n < 1 ? 4 : (n > 16 ? 16 : n);
    return 0;
}

void tqkvd_config_free(tqkvd_config *c)
{
    for (size_t i = 0; i < N_SETTINGS; i++)
        if (settings[i].type == T_STRING) {
            char **f = str_field(c, &settings[i]);
            tqkv_free(*f);
            *f = NULL;
        }
}

typedef struct {
    tqkvd_config *c;
    char *err;
    size_t errlen;
    int result;
} ini_ctx;

static int on_ini_line(void *user, const char *section, const char *name, const char *value)
{
    ini_ctx *x = user;
    if (section[0] && strcmp(section, "tqkvd") != 0)
        return 1; /* other sections belong to other programs (e.g. [tqkv] for the CLI) */
    int r = tqkvd_config_set(x->c, NULL, name, value, x->err, x->errlen);
    if (r) {
        x->result = r;
        return 0;
    }
    return 1;
}

void tqkvd_config_usage(const char *prog)
{
    printf("usage: %s [--config FILE] [--SETTING VALUE ...]\n\n"
           "tqkvd, the tqkv KV-cache daemon. Settings come from built-in defaults, then the\n"
           "config file (INI, section [tqkvd], keys as below), then these flags.\n\n"
           "  -c, --config FILE       read settings from FILE\n"
           "  -h, --help              print this help\n"
           "  -V, --version           print the version\n",
           prog);
    tqkvd_config cfg;
    if (tqkvd_config_defaults(&cfg) != 0)
        return;
    for (size_t i = 0; i < N_SETTINGS; i++) {
        const setting *s = &settings[i];
        char flag[64], val[256];
        snprintf(flag, sizeof flag, "--%s", s->name);
        for (char *p = flag + 2; *p; p++)
            if (*p == '_')
                *p = '-';
        tqkvd_config_get(&cfg, s->name, val, sizeof val);
        printf("  %-22s  %s\n  %-22s  (default: %s%s)\n", flag, s->help, "",
               val[0] ? val : "\"\"", s->mutable_ ? "; can be changed at run time" : "");
    }
    tqkvd_config_free(&cfg);
}

/* "--host-capacity" -> "host_capacity" into out. @return 1 if arg is a long option. */
static int flag_name(const char *arg, char *out, size_t outlen, const char **inline_value)
{
    if (strncmp(arg, "--", 2) != 0)
        return 0;
    arg += 2;
    const char *eq = strchr(arg, '=');
    size_t n = eq ? (size_t)(eq - arg) : strlen(arg);
    if (n >= outlen)
        n = outlen - 1;
    for (size_t i = 0; i < n; i++)
        out[i] = arg[i] == '-' ? '_' : arg[i];
    out[n] = 0;
    *inline_value = eq ? eq + 1 : NULL;
    return 1;
}

int tqkvd_config_load(tqkvd_config *c, int argc, char **argv, char *err, size_t errlen)
{
    const char *file = NULL;
    /* Pass 1: --help, --version, --config. */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            tqkvd_config_usage(argv[0]);
            return 1;
        }
        if (!strcmp(argv[i], "-V") || !strcmp(argv[i], "--version")) {
            printf("tqkvd %s\n", TQKVD_VERSION);
            return 1;
        }
        if (!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) {
            if (i + 1 >= argc) {
                errf(err, errlen, "%s needs a file name", argv[i]);
                return TQKV_EBADCONFIG;
            }
            file = argv[++i];
        } else if (!strncmp(argv[i], "--config=", 9)) {
            file = argv[i] + 9;
        }
    }
    if (file) {
        ini_ctx x = {c, err, errlen, 0};
        int r = ini_parse(file, on_ini_line, &x);
        if (r < 0) {
            errf(err, errlen, "cannot read config file %s", file);
            return TQKV_ENOENT;
        }
        if (x.result) {
            char inner[256];
            snprintf(inner, sizeof inner, "%s", err ? err : "");
            errf(err, errlen, "%s line %d: %s", file, r, inner);
            return x.result;
        }
        if (r > 0) {
            errf(err, errlen, "%s line %d: syntax error", file, r);
            return TQKV_EBADCONFIG;
        }
    }
    /* Pass 2: every other flag. */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) {
            i++;
            continue;
        }
        if (!strncmp(argv[i], "--config=", 9))
            continue;
        char name[64];
        const char *value;
        if (!flag_name(argv[i], name, sizeof name, &value)) {
            errf(err, errlen, "unexpected argument '%s' (see --help)", argv[i]);
            return TQKV_EBADCONFIG;
        }
        if (!find(name)) {
            errf(err, errlen, "unknown flag '%s' (see --help)", argv[i]);
            return TQKV_ENOENT;
        }
        if (!value) {
            if (i + 1 >= argc) {
                errf(err, errlen, "%s needs a value", argv[i]);
                return TQKV_EBADCONFIG;
            }
            value = argv[++i];
        }
        int r = tqkvd_config_set(c, NULL, name, value, err, errlen);
        if (r)
            return r;
    }
    return 0;
}
