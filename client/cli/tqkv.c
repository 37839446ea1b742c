/* tqkv: the control CLI of tqkvd. A plain consumer of libtqkv (include/tqkv.h): it parses the
 * command line, calls the library, and prints human-readable tables (or one JSON object with
 * --json). Exit codes: 0 success, 1 the daemon refused or the operation failed, 2 usage error,
 * 3 cannot connect. Long operations (bulk put from files, bench) draw a progress bar on stderr
 * when stderr is a terminal. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tqkv.h"
#include "tqkv_time.h"

#define EXIT_FAIL 1
#define EXIT_USAGE 2
#define EXIT_CONNECT 3

typedef struct {
    const char *url;
    const char *token;
    const char *ns;
    int json;
    uint32_t timeout_ms;
    tqkv_client *c;
} cli;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: tqkv [--url URL] [--token T] [--json] [--timeout MS] COMMAND [ARGS]\n"
            "\n"
            "  URL: unix:///path or tcp://host:port (default: $TQKV_URL, else the daemon's\n"
            "       default socket: $XDG_RUNTIME_DIR/tqkvd.sock, /run/tqkv/tqkvd.sock as root,\n"
            "       else /tmp/tqkvd-$UID.sock). Token: --token or $TQKV_TOKEN.\n"
            "\n"
            "commands:\n"
            "  status                              health, version, capacity and usage\n"
            "  stats [--ns NS]                     statistics (global, per tier, per namespace)\n"
            "  cluster                             members of the cluster: tiers, usage, hit rate\n"
            "  register --ns NS --layers L --heads H --head-dim D [--dtype f16|bf16|f32]\n"
            "           [--preset tq4] [--chunk-size 256] [--seed S]\n"
            "  lookup --ns NS KEY...               leading hits and per-key tier\n"
            "  lookup --ns NS --tokens FILE [--chunk-size N]\n"
            "                                      keys of a token file (u32 ids, one per\n"
            "                                      line or whitespace-separated)\n"
            "  put --ns NS FILE...                 store encoded blocks (key read from each one)\n"
            "  put --ns NS --raw --key KEY --tokens-in-chunk N FILE\n"
            "                                      store raw KV (the daemon encodes it)\n"
            "  get --ns NS KEY [-o FILE] [--layers B:N] [--decode f16|bf16|f32]\n"
            "  delete|pin|unpin --ns NS KEY...\n"
            "  evict [--ns NS] BYTES               free at least BYTES (k/M/G suffixes) of the\n"
            "                                      least recent blocks (of NS only; admin)\n"
            "  clear (--ns NS | --all)             drop blocks (admin)\n"
            "  config get [NAME]                   settings and their values\n"
            "  config set NAME VALUE               change a mutable setting (admin)\n"
            "  bench [--ns NS] [--size 4M] [--count 64] [--layers 32] [--heads 8]\n"
            "                                      raw PUT then GET round trips, throughput and\n"
            "                                      p50/p99 latency\n"
            "\n"
            "KEY is 64 hex digits. Exit codes: 0 ok, 1 failed, 2 usage, 3 cannot connect.\n");
}

/* ---- Output helpers ----------------------------------------------------------------------- */

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p == '\n')
            fputs("\\n", f);
        else if (*p < 0x20)
            fprintf(f, "\\u%04x", *p);
        else
            fputc(*p, f);
    }
    fputc('"', f);
}

/* A value that reads as a number is printed bare in JSON. */
static int looks_numeric(const char *s)
{
    char *end;
    if (!*s)
        return 0;
    errno = 0;
    (void)strtod(s, &end);
    return *end == '\0' && errno == 0 && strcmp(s, "nan") && strcmp(s, "inf");
}

static void print_kv_json(const tqkv_kv_list *l)
{
    printf("{");
    for (size_t i = 0; i < l->n; i++) {
        printf("%s", i ? "," : "");
        json_str(stdout, l->names[i]);
        printf(":");
        if (looks_numeric(l->values[i]))
            printf("%s", l->values[i]);
        else
            json_str(stdout, l->values[i]);
    }
    printf("}");
}

static void print_kv(const cli *a, const tqkv_kv_list *l, const char *title)
{
    if (a->json) {
        print_kv_json(l);
        printf("\n");
        return;
    }
    size_t w = 4;
    for (size_t i = 0; i < l->n; i++)
        if (strlen(l->names[i]) > w)
            w = strlen(l->names[i]);
    if (title)
        printf("%s\n", title);
    printf("%-*s  %s\n", (int)w, "NAME", "VALUE");
    for (size_t i = 0; i < l->n; i++)
        printf("%-*s  %s\n", (int)w, l->names[i], l->values[i]);
}

static int fail(const cli *a, int rc, const char *what)
{
    const char *msg = a->c && *tqkv_errmsg(a->c) ? tqkv_errmsg(a->c) : tqkv_strerror(rc);
    if (a->json) {
        printf("{\"ok\":false,\"op\":");
        json_str(stdout, what);
        printf(",\"error\":");
        json_str(stdout, tqkv_err_name(rc));
        printf(",\"message\":");
        json_str(stdout, msg);
        printf("}\n");
    }
    fprintf(stderr, "tqkv %s: %s\n", what, msg);
    return EXIT_FAIL;
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "tqkv: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (tqkv --help)\n");
    va_end(ap);
    return EXIT_USAGE;
}

/* Progress bar on stderr when it is a terminal; silent otherwise. */
typedef struct {
    int on;
    uint64_t total, t0;
    const char *label;
} progress;

static void progress_init(progress *p, const char *label, uint64_t total)
{
    p->on = isatty(2);
    p->total = total;
    p->label = label;
    p->t0 = tqkv_now_ns();
}

static void progress_update(progress *p, uint64_t done, uint64_t bytes)
{
    if (!p->on || p->total == 0)
        return;
    const int width = 30;
    int fill = (int)(done * (uint64_t)width / p->total);
    double s = (double)(tqkv_now_ns() - p->t0) / 1e9;
    char bar[64];
    for (int i = 0; i < width; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[width] = '\0';
    fprintf(stderr, "\r%-8s [%s] %3d%% %" PRIu64 "/%" PRIu64 "  %.2f GB/s ", p->label, bar,
            (int)(done * 100 / p->total), done, p->total, s > 0 ? (double)bytes / s / 1e9 : 0.0);
    if (done == p->total)
        fputc('\n', stderr);
    fflush(stderr);
}

/* ---- Parsing helpers ---------------------------------------------------------------------- */

static int parse_size(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || v < 0)
        return -1;
    uint64_t mul = 1;
    switch (*end) {
    case 'k': case 'K': mul = 1ull << 10; end++; break;
    case 'm': case 'M': mul = 1ull << 20; end++; break;
    case 'g': case 'G': mul = 1ull << 30; end++; break;
    case 't': case 'T': mul = 1ull << 40; end++; break;
    default: break;
    }
    if (*end == 'B' || *end == 'b' || (*end == 'i' && end[1] == 'B' && end++))
        end++;
    if (*end)
        return -1;
    *out = (uint64_t)(v * (double)mul);
    return 0;
}

static int parse_u32(const char *s, uint32_t *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 0);
    if (errno || end == s || *end || v > UINT32_MAX)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

static int parse_dtype(const char *s, tqkv_dtype *out)
{
    if (!strcmp(s, "f16") || !strcmp(s, "fp16"))
        *out = TQKV_DTYPE_F16;
    else if (!strcmp(s, "bf16"))
        *out = TQKV_DTYPE_BF16;
    else if (!strcmp(s, "f32") || !strcmp(s, "fp32"))
        *out = TQKV_DTYPE_F32;
    else
        return -1;
    return 0;
}

/* Parses keys given as hex arguments. @return 0 or EXIT_USAGE. */
static int parse_keys(int argc, char **argv, tqkv_key **keys, size_t *n)
{
    *n = (size_t)argc;
    *keys = calloc(argc ? (size_t)argc : 1, sizeof(tqkv_key));
    if (!*keys)
        return EXIT_FAIL;
    for (int i = 0; i < argc; i++)
        if (tqkv_key_parse(argv[i], &(*keys)[i])) {
            free(*keys);
            *keys = NULL;
            return usage_error("bad key '%s' (want 64 hex digits)", argv[i]);
        }
    return 0;
}

static void *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    struct stat st;
    void *buf = NULL;
    if (fstat(fileno(f), &st) == 0 && st.st_size >= 0) {
        buf = malloc(st.st_size ? (size_t)st.st_size : 1);
        if (buf && fread(buf, 1, (size_t)st.st_size, f) != (size_t)st.st_size) {
            free(buf);
            buf = NULL;
        }
        *len = (size_t)st.st_size;
    }
    fclose(f);
    return buf;
}

/* Sub-command options: getopt_long over the command's own arguments. */
enum {
    O_NS = 1000, O_LAYERS, O_HEADS, O_HEAD_DIM, O_DTYPE, O_PRESET, O_CHUNK, O_SEED, O_TOKENS,
    O_RAW, O_KEY, O_TOK_IN_CHUNK, O_DECODE, O_ALL, O_SIZE, O_COUNT, O_LEASE,
};
static const struct option sub_opts[] = {
    {"ns", required_argument, NULL, O_NS},
    {"layers", required_argument, NULL, O_LAYERS},
    {"heads", required_argument, NULL, O_HEADS},
    {"head-dim", required_argument, NULL, O_HEAD_DIM},
    {"dtype", required_argument, NULL, O_DTYPE},
    {"preset", required_argument, NULL, O_PRESET},
    {"chunk-size", required_argument, NULL, O_CHUNK},
    {"seed", required_argument, NULL, O_SEED},
    {"tokens", required_argument, NULL, O_TOKENS},
    {"raw", no_argument, NULL, O_RAW},
    {"key", required_argument, NULL, O_KEY},
    {"tokens-in-chunk", required_argument, NULL, O_TOK_IN_CHUNK},
    {"decode", required_argument, NULL, O_DECODE},
    {"all", no_argument, NULL, O_ALL},
    {"size", required_argument, NULL, O_SIZE},
    {"count", required_argument, NULL, O_COUNT},
    {"lease", required_argument, NULL, O_LEASE},
    {"output", required_argument, NULL, 'o'},
    {NULL, 0, NULL, 0},
};

typedef struct {
    const char *ns, *layers, *heads, *head_dim, *dtype, *preset, *chunk, *seed, *tokens, *key,
        *tok_in_chunk, *decode, *size, *count, *lease, *output;
    int raw, all;
} sub_args;

/* Parses the options of a sub-command, wherever they are among its positional arguments (GNU
 * getopt permutes argv so that those end up in argv[*first_pos..]). */
static int parse_sub(int argc, char **argv, sub_args *s, int *first_pos)
{
    memset(s, 0, sizeof(*s));
    optind = 0; /* 0, not 1: GNU getopt then forgets the state of the previous parse */
    int ch;
    while ((ch = getopt_long(argc, argv, "o:", sub_opts, NULL)) != -1) {
        switch (ch) {
        case O_NS: s->ns = optarg; break;
        case O_LAYERS: s->layers = optarg; break;
        case O_HEADS: s->heads = optarg; break;
        case O_HEAD_DIM: s->head_dim = optarg; break;
        case O_DTYPE: s->dtype = optarg; break;
        case O_PRESET: s->preset = optarg; break;
        case O_CHUNK: s->chunk = optarg; break;
        case O_SEED: s->seed = optarg; break;
        case O_TOKENS: s->tokens = optarg; break;
        case O_RAW: s->raw = 1; break;
        case O_KEY: s->key = optarg; break;
        case O_TOK_IN_CHUNK: s->tok_in_chunk = optarg; break;
        case O_DECODE: s->decode = optarg; break;
        case O_ALL: s->all = 1; break;
        case O_SIZE: s->size = optarg; break;
        case O_COUNT: s->count = optarg; break;
        case O_LEASE: s->lease = optarg; break;
        case 'o': s->output = optarg; break;
        default: return EXIT_USAGE;
        }
    }
    *first_pos = optind;
    return 0;
}

/* ---- Commands ----------------------------------------------------------------------------- */

static int cmd_status(cli *a)
{
    tqkv_kv_list h, st;
    int rc = tqkv_health(a->c, &h);
    if (rc)
        return fail(a, rc, "status");
    rc = tqkv_stats(a->c, NULL, &st);
    if (rc) {
        tqkv_kv_list_free(&h);
        return fail(a, rc, "status");
    }
    if (a->json) {
        printf("{\"url\":");
        json_str(stdout, a->url);
        printf(",\"server_version\":");
        json_str(stdout, tqkv_server_version(a->c));
        printf(",\"admin\":%s,\"health\":", tqkv_is_admin(a->c) ? "true" : "false");
        print_kv_json(&h);
        printf(",\"stats\":");
        print_kv_json(&st);
        printf("}\n");
    } else {
        printf("tqkvd %s at %s%s\n", tqkv_server_version(a->c), a->url,
               tqkv_is_admin(a->c) ? " (admin)" : "");
        print_kv(a, &h, "health:");
        printf("\n");
        print_kv(a, &st, "stats:");
    }
    tqkv_kv_list_free(&h);
    tqkv_kv_list_free(&st);
    return 0;
}

static int cmd_stats(cli *a, int argc, char **argv)
{
    sub_args s;
    int pos;
    if (parse_sub(argc, argv, &s, &pos) || pos != argc)
        return usage_error("stats [--ns NS]");
    tqkv_kv_list st;
    int rc = tqkv_stats(a->c, s.ns, &st);
    if (rc)
        return fail(a, rc, "stats");
    print_kv(a, &st, NULL);
    tqkv_kv_list_free(&st);
    return 0;
}

/* The cluster view: one row per member (or the member fields as JSON objects). */
static int cmd_cluster(cli *a, int argc, char **argv)
{
    sub_args s;
    int pos;
    if (parse_sub(argc, argv, &s, &pos) || pos != argc)
        return usage_error("cluster");
    tqkv_kv_list l;
    int rc = tqkv_cluster(a->c, &l);
    if (rc)
        return fail(a, rc, "cluster");
    const char *en = tqkv_kv_list_get(&l, "enabled");
    const char *self = tqkv_kv_list_get(&l, "self");
    const char *nm = tqkv_kv_list_get(&l, "members");
    unsigned n = nm ? (unsigned)strtoul(nm, NULL, 10) : 0;
    if (a->json) {
        printf("{\"enabled\":%s,\"self\":", en && !strcmp(en, "1") ? "true" : "false");
        json_str(stdout, self ? self : "");
        printf(",\"members\":[");
        for (unsigned m = 0; m < n; m++) {
            char pre[32];
            int pl = snprintf(pre, sizeof(pre), "member.%u.", m);
            printf("%s{", m ? "," : "");
            int first = 1;
            for (size_t i = 0; i < l.n; i++) {
                if (strncmp(l.names[i], pre, (size_t)pl) != 0)
                    continue;
                printf("%s", first ? "" : ",");
                json_str(stdout, l.names[i] + pl);
                printf(":");
                json_str(stdout, l.values[i]);
                first = 0;
            }
            printf("}");
        }
        printf("]}\n");
    } else if (!en || strcmp(en, "1") != 0) {
        printf("cluster: off (no redis configured on this daemon)\n");
    } else {
        printf("%-28s %-22s %-16s %-22s %8s %8s\n", "ID", "ADDRESS", "TIERS", "HOST USED/CAP",
               "HIT_RATE", "UPTIME_S");
        for (unsigned m = 0; m < n; m++) {
            char k[64];
            const char *f[7];
            static const char *const names[] = {"id", "addr", "tiers", "tier.host.used",
                                                "tier.host.capacity", "hit_rate", "uptime_s"};
            for (int i = 0; i < 7; i++) {
                snprintf(k, sizeof(k), "member.%u.%s", m, names[i]);
                f[i] = tqkv_kv_list_get(&l, k);
                if (!f[i])
                    f[i] = "-";
            }
            char used[48];
            snprintf(used, sizeof(used), "%s/%s", f[3], f[4]);
            printf("%-28s %-22s %-16s %-22s %8s %8s%s\n", f[0], f[1], f[2], used, f[5], f[6],
                   self && !strcmp(self, f[0]) ? "  (this node)" : "");
        }
    }
    tqkv_kv_list_free(&l);
    return 0;
}

static int cmd_register(cli *a, int argc, char **argv)
{
    sub_args s;
    int pos;
    tqkv_namespace ns;
    memset(&ns, 0, sizeof(ns));
    if (parse_sub(argc, argv, &s, &pos) || pos != argc || !s.ns || !s.layers || !s.heads ||
        !s.head_dim)
        return usage_error("register --ns NS --layers L --heads H --head-dim D [...]");
    ns.name = s.ns;
    ns.dtype = TQKV_DTYPE_F16;
    ns.preset = s.preset;
    if (parse_u32(s.layers, &ns.n_layers) || parse_u32(s.heads, &ns.n_kv_heads) ||
        parse_u32(s.head_dim, &ns.head_dim) || (s.chunk && parse_u32(s.chunk, &ns.chunk_size)) ||
        (s.dtype && parse_dtype(s.dtype, &ns.dtype)))
        return usage_error("register: bad number or dtype");
    if (s.seed)
        ns.seed = strtoull(s.seed, NULL, 0);
    int rc = tqkv_register(a->c, &ns);
    if (rc)
        return fail(a, rc, "register");
    if (a->json) {
        printf("{\"ok\":true,\"ns\":");
        json_str(stdout, s.ns);
        printf("}\n");
    } else {
        printf("registered %s\n", s.ns);
    }
    return 0;
}

/* Reads whitespace-separated u32 token ids. */
static uint32_t *read_tokens(const char *path, size_t *n)
{
    FILE *f = strcmp(path, "-") ? fopen(path, "r") : stdin;
    if (!f)
        return NULL;
    size_t cap = 1024, k = 0;
    uint32_t *t = malloc(cap * sizeof(*t));
    unsigned long v;
    while (t && fscanf(f, "%lu", &v) == 1) {
        if (k == cap) {
            uint32_t *nt = realloc(t, 2 * cap * sizeof(*t));
            if (!nt) {
                free(t);
                t = NULL;
                break;
            }
            t = nt;
            cap *= 2;
        }
        t[k++] = (uint32_t)v;
    }
    if (f != stdin)
        fclose(f);
    *n = k;
    return t;
}

static int cmd_lookup(cli *a, int argc, char **argv)
{
    sub_args s;
    int pos, rc;
    tqkv_key *keys = NULL;
    size_t n = 0;
    uint32_t lease = 0;
    if (parse_sub(argc, argv, &s, &pos) || !s.ns || (s.lease && parse_u32(s.lease, &lease)))
        return usage_error("lookup --ns NS (KEY... | --tokens FILE) [--lease MS]");
    if (s.tokens) {
        size_t nt = 0;
        uint32_t chunk = 256;
        if (s.chunk && parse_u32(s.chunk, &chunk))
            return usage_error("bad --chunk-size");
        uint32_t *toks = read_tokens(s.tokens, &nt);
        if (!toks)
            return usage_error("cannot read tokens from %s", s.tokens);
        rc = tqkv_chunk_keys(s.ns, toks, nt, chunk, 0, NULL, NULL, 0, &n);
        keys = calloc(n ? n : 1, sizeof(*keys));
        if (keys && n)
            rc = tqkv_chunk_keys(s.ns, toks, nt, chunk, 0, NULL, keys, n, &n);
        free(toks);
        if (!keys || rc) {
            free(keys);
            return fail(a, rc ? rc : TQKV_ENOMEM, "lookup");
        }
    } else {
        rc = parse_keys(argc - pos, argv + pos, &keys, &n);
        if (rc)
            return rc;
    }
    if (n == 0) {
        free(keys);
        return usage_error("lookup: no keys");
    }
    uint8_t *tiers = calloc(n, 1);
    uint32_t hits = 0;
    uint64_t lease_id = 0;
    rc = tiers ? tqkv_lookup(a->c, s.ns, keys, n, lease, &hits, tiers, &lease_id) : TQKV_ENOMEM;
    if (rc) {
        free(keys);
        free(tiers);
        return fail(a, rc, "lookup");
    }
    char hex[2 * TQKV_KEY_BYTES + 1];
    if (a->json) {
        printf("{\"keys\":%zu,\"hits\":%u,\"lease_id\":%" PRIu64 ",\"tiers\":[", n, hits,
               lease_id);
        for (size_t i = 0; i < n; i++)
            printf("%s\"%s\"", i ? "," : "", tqkv_tier_name(tiers[i]));
        printf("]}\n");
    } else {
        printf("%u of %zu leading keys hit", hits, n);
        if (lease_id)
            printf(" (lease %" PRIu64 ")", lease_id);
        printf("\n%-5s  %-64s  %s\n", "#", "KEY", "TIER");
        for (size_t i = 0; i < n; i++)
            printf("%-5zu  %s  %s\n", i, tqkv_key_hex(&keys[i], hex), tqkv_tier_name(tiers[i]));
    }
    free(keys);
    free(tiers);
    return 0;
}

/* Files are read and sent in groups (up to PUT_GROUP_BYTES or PUT_GROUP_FILES), each group one
 * batch call: the library pipelines its requests, so a bulk load is not one round trip per file. */
#define PUT_GROUP_BYTES (64u << 20)
#define PUT_GROUP_FILES 256

static int cmd_put(cli *a, int argc, char **argv)
{
    sub_args s;
    int pos, failed = 0, broken = 0;
    if (parse_sub(argc, argv, &s, &pos) || !s.ns || pos == argc)
        return usage_error("put --ns NS FILE... | put --ns NS --raw --key KEY "
                           "--tokens-in-chunk N FILE");
    uint32_t n_tok = 0;
    tqkv_key rawkey;
    if (s.raw && (argc - pos != 1 || !s.key || !s.tok_in_chunk ||
                  tqkv_key_parse(s.key, &rawkey) || parse_u32(s.tok_in_chunk, &n_tok)))
        return usage_error("put --raw needs one FILE, --key KEY and --tokens-in-chunk N");
    uint64_t total_bytes = 0, stored = 0;
    progress p;
    progress_init(&p, "put", (uint64_t)(argc - pos));
    tqkv_put_item items[PUT_GROUP_FILES];
    void *data[PUT_GROUP_FILES];
    int st[PUT_GROUP_FILES], file_of[PUT_GROUP_FILES];
    tqkv_put_item batch[PUT_GROUP_FILES];
    int bst[PUT_GROUP_FILES];
    if (a->json)
        printf("{\"results\":[");
    for (int first = pos; first < argc && !broken;) {
        /* read one group */
        int n = 0, nb = 0;
        uint64_t group_bytes = 0;
        while (first + n < argc && n < PUT_GROUP_FILES && group_bytes < PUT_GROUP_BYTES) {
            const char *path = argv[first + n];
            size_t len = 0;
            memset(&items[n], 0, sizeof(items[n]));
            data[n] = read_file(path, &len);
            st[n] = 0;
            if (!data[n]) {
                st[n] = TQKV_EIO;
            } else if (s.raw) {
                items[n].key = rawkey;
                items[n].n_tokens = n_tok;
            } else if (len < 48 || memcmp(data[n], "TQKVBLK1", 8) != 0) {
                st[n] = TQKV_EBADMAGIC; /* not a block (kernels/FORMAT.md): key at offset 16 */
            } else {
                memcpy(items[n].key.bytes, (const uint8_t *)data[n] + 16, TQKV_KEY_BYTES);
            }
            items[n].data = data[n];
            items[n].len = len;
            if (!st[n]) {
                batch[nb] = items[n];
                file_of[nb++] = n;
            }
            group_bytes += len;
            n++;
        }
        /* send the readable ones in one pipelined call */
        if (nb > 0) {
            int rc = s.raw ? tqkv_put_raw(a->c, s.ns, batch, (size_t)nb, bst)
                           : tqkv_put_blocks(a->c, s.ns, batch, (size_t)nb, bst);
            for (int k = 0; k < nb; k++)
                st[file_of[k]] = bst[k];
            if (rc == TQKV_ECLOSED || rc == TQKV_ETIMEDOUT)
                broken = 1;
        }
        for (int i = 0; i < n; i++) {
            const char *path = argv[first + i];
            if (st[i]) {
                failed++;
                if (!a->json)
                    fprintf(stderr, "%s%s: %s: %s\n", p.on ? "\n" : "", path,
                            tqkv_err_name(st[i]), tqkv_strerror(st[i]));
            } else {
                stored++;
                total_bytes += items[i].len;
            }
            if (a->json) {
                printf("%s{\"file\":", first + i > pos ? "," : "");
                json_str(stdout, path);
                printf(",\"status\":\"%s\"}", st[i] ? tqkv_err_name(st[i]) : "ok");
            }
            free(data[i]);
        }
        first += n;
        progress_update(&p, (uint64_t)(first - pos), total_bytes);
    }
    if (broken && !a->json)
        fprintf(stderr, "tqkv put: %s; stopped\n", tqkv_errmsg(a->c));
    if (a->json)
        printf("],\"stored\":%" PRIu64 ",\"failed\":%d,\"bytes\":%" PRIu64 "}\n", stored,
               failed, total_bytes);
    else
        printf("stored %" PRIu64 " of %d (%" PRIu64 " bytes)\n", stored, argc - pos, total_bytes);
    return failed || broken ? EXIT_FAIL : 0;
}

static int cmd_get(cli *a, int argc, char **argv)
{
    sub_args s;
    int pos;
    tqkv_get_options go;
    memset(&go, 0, sizeof(go));
    if (parse_sub(argc, argv, &s, &pos) || !s.ns || argc - pos != 1)
        return usage_error("get --ns NS KEY [-o FILE] [--layers B:N] [--decode f16|bf16|f32]");
    tqkv_key key;
    if (tqkv_key_parse(argv[pos], &key))
        return usage_error("bad key '%s'", argv[pos]);
    if (s.layers && sscanf(s.layers, "%u:%u", &go.layer_begin, &go.layer_count) != 2)
        return usage_error("--layers wants BEGIN:COUNT");
    if (s.decode && parse_dtype(s.decode, &go.decode))
        return usage_error("--decode wants f16, bf16 or f32");
    tqkv_get_item it;
    memset(&it, 0, sizeof(it));
    int rc = tqkv_get(a->c, s.ns, &key, 1, &go, &it);
    if (rc) {
        tqkv_get_items_release(&it, 1);
        return fail(a, rc, "get");
    }
    if (it.status == TQKV_ENOENT) {
        if (a->json)
            printf("{\"found\":false}\n");
        else
            fprintf(stderr, "tqkv get: miss\n");
        return EXIT_FAIL;
    }
    if (it.status) {
        tqkv_get_items_release(&it, 1);
        return fail(a, it.status, "get");
    }
    int out_rc = 0;
    if (s.output) {
        FILE *f = fopen(s.output, "wb");
        if (!f || fwrite(it.data, 1, it.len, f) != it.len) {
            fprintf(stderr, "tqkv get: cannot write %s: %s\n", s.output, strerror(errno));
            out_rc = EXIT_FAIL;
        }
        if (f && fclose(f) != 0)
            out_rc = EXIT_FAIL;
    } else if (!a->json) {
        if (isatty(1)) {
            fprintf(stderr, "tqkv get: %zu bytes from %s; use -o FILE to save them\n", it.len,
                    tqkv_tier_name(it.tier));
        } else if (fwrite(it.data, 1, it.len, stdout) != it.len) {
            out_rc = EXIT_FAIL;
        }
    }
    if (a->json)
        printf("{\"found\":true,\"bytes\":%zu,\"tier\":\"%s\"}\n", it.len,
               tqkv_tier_name(it.tier));
    else if (s.output)
        printf("%zu bytes from %s -> %s\n", it.len, tqkv_tier_name(it.tier), s.output);
    tqkv_get_items_release(&it, 1);
    return out_rc;
}

static int cmd_keys(cli *a, int argc, char **argv, const char *what,
                    int (*fn)(tqkv_client *, const char *, const tqkv_key *, size_t, int *))
{
    sub_args s;
    int pos;
    if (parse_sub(argc, argv, &s, &pos) || !s.ns || pos == argc)
        return usage_error("%s --ns NS KEY...", what);
    tqkv_key *keys = NULL;
    size_t n = 0;
    int rc = parse_keys(argc - pos, argv + pos, &keys, &n);
    if (rc)
        return rc;
    int *st = calloc(n, sizeof(int));
    rc = st ? fn(a->c, s.ns, keys, n, st) : TQKV_ENOMEM;
    if (rc) {
        free(keys);
        free(st);
        return fail(a, rc, what);
    }
    char hex[2 * TQKV_KEY_BYTES + 1];
    size_t absent = 0;
    if (a->json)
        printf("{\"results\":[");
    else
        printf("%-64s  %s\n", "KEY", "RESULT");
    for (size_t i = 0; i < n; i++) {
        const char *r = st[i] == 0 ? "ok" : st[i] == TQKV_ENOENT ? "absent" : tqkv_err_name(st[i]);
        absent += st[i] == TQKV_ENOENT;
        if (a->json)
            printf("%s{\"key\":\"%s\",\"result\":\"%s\"}", i ? "," : "",
                   tqkv_key_hex(&keys[i], hex), r);
        else
            printf("%s  %s\n", tqkv_key_hex(&keys[i], hex), r);
    }
    if (a->json)
        printf("],\"absent\":%zu}\n", absent);
    free(keys);
    free(st);
    return 0;
}

static int cmd_evict(cli *a, int argc, char **argv)
{
    sub_args s;
    int pos;
    uint64_t bytes = 0, freed = 0;
    if (parse_sub(argc, argv, &s, &pos) || argc - pos != 1 || parse_size(argv[pos], &bytes))
        return usage_error("evict [--ns NS] BYTES");
    int rc = tqkv_evict(a->c, s.ns, bytes, &freed);
    if (rc)
        return fail(a, rc, "evict");
    if (a->json)
        printf("{\"ok\":true,\"requested\":%" PRIu64 ",\"evicted\":%" PRIu64 "}\n", bytes, freed);
    else
        printf("evicted %" PRIu64 " bytes (asked %" PRIu64 ")\n", freed, bytes);
    return 0;
}

static int cmd_clear(cli *a, int argc, char **argv)
{
    sub_args s;
    int pos;
    if (parse_sub(argc, argv, &s, &pos) || pos != argc || (!s.ns == !s.all))
        return usage_error("clear (--ns NS | --all)");
    int rc = tqkv_clear(a->c, s.ns);
    if (rc)
        return fail(a, rc, "clear");
    if (a->json)
        printf("{\"ok\":true}\n");
    else
        printf("cleared %s\n", s.ns ? s.ns : "everything");
    return 0;
}

static int cmd_config(cli *a, int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "get") && argc <= 3) {
        tqkv_kv_list l;
        int rc = tqkv_config_get(a->c, argc == 3 ? argv[2] : NULL, &l);
        if (rc)
            return fail(a, rc, "config get");
        print_kv(a, &l, NULL);
        tqkv_kv_list_free(&l);
        return 0;
    }
    if (argc == 4 && !strcmp(argv[1], "set")) {
        int rc = tqkv_config_set(a->c, argv[2], argv[3]);
        if (rc)
            return fail(a, rc, "config set");
        if (a->json)
            printf("{\"ok\":true}\n");
        else
            printf("%s = %s\n", argv[2], argv[3]);
        return 0;
    }
    return usage_error("config get [NAME] | config set NAME VALUE");
}

static int cmp_u64(const void *x, const void *y)
{
    uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
    return a < b ? -1 : a > b;
}

/* A quick loopback check an operator can run against a live daemon: raw PUTs (the daemon
 * encodes) then GETs of the encoded blocks, one request at a time so latencies are per op.
 * tests/bench/tqkv_bench is the full benchmark. */
static int cmd_bench(cli *a, int argc, char **argv)
{
    sub_args s;
    int pos;
    uint64_t size = 4u << 20;
    uint32_t count = 64, layers = 32, heads = 8, head_dim = 128;
    if (parse_sub(argc, argv, &s, &pos) || pos != argc || (s.size && parse_size(s.size, &size)) ||
        (s.count && parse_u32(s.count, &count)) || (s.layers && parse_u32(s.layers, &layers)) ||
        (s.heads && parse_u32(s.heads, &heads)) || count == 0 || layers == 0 || heads == 0)
        return usage_error("bench [--ns NS] [--size 4M] [--count N] [--layers L] [--heads H]");
    const char *ns_name = s.ns ? s.ns : "tqkv-cli-bench";
    /* fp16 raw KV of `size` bytes: layers * 2 * tokens * heads * head_dim * 2 */
    uint64_t per_token = (uint64_t)layers * 2 * heads * head_dim * 2;
    uint32_t tokens = (uint32_t)(size / per_token);
    if (tokens == 0 || tokens > 65535)
        return usage_error("bench: --size %" PRIu64 " gives %u tokens for this geometry", size,
                           tokens);
    tqkv_namespace ns;
    memset(&ns, 0, sizeof(ns));
    ns.name = ns_name;
    ns.n_layers = layers;
    ns.n_kv_heads = heads;
    ns.head_dim = head_dim;
    ns.dtype = TQKV_DTYPE_F16;
    ns.chunk_size = tokens;
    ns.preset = s.preset ? s.preset : "tq4";
    int rc = tqkv_register(a->c, &ns);
    if (rc)
        return fail(a, rc, "bench register");
    size_t raw_len = (size_t)(per_token * tokens);
    uint16_t *raw = malloc(raw_len);
    uint64_t *lat_put = calloc(count, sizeof(uint64_t)), *lat_get = calloc(count, sizeof(uint64_t));
    tqkv_key *keys = calloc(count, sizeof(tqkv_key));
    if (!raw || !lat_put || !lat_get || !keys) {
        rc = TQKV_ENOMEM;
        goto out;
    }
    /* Small random-looking fp16 values (exponent well inside the normal range). */
    uint64_t x = tqkv_now_ns() | 1;
    for (size_t i = 0; i < raw_len / 2; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        raw[i] = (uint16_t)(0x3000 | (x & 0x0fff) | ((x >> 20) & 0x8000));
    }
    uint64_t run = tqkv_now_ns();
    for (uint32_t i = 0; i < count; i++) {
        memcpy(keys[i].bytes, &run, sizeof(run));
        memcpy(keys[i].bytes + 8, &i, sizeof(i));
    }
    progress p;
    progress_init(&p, "put", count);
    uint64_t t0 = tqkv_now_ns();
    for (uint32_t i = 0; i < count; i++) {
        tqkv_put_item it = {.key = keys[i], .data = raw, .len = raw_len, .n_tokens = tokens};
        uint64_t t = tqkv_now_ns();
        rc = tqkv_put_raw(a->c, ns_name, &it, 1, NULL);
        lat_put[i] = tqkv_now_ns() - t;
        if (rc)
            goto out;
        progress_update(&p, i + 1, (uint64_t)(i + 1) * raw_len);
    }
    double put_s = (double)(tqkv_now_ns() - t0) / 1e9;
    progress_init(&p, "get", count);
    uint64_t got_bytes = 0, misses = 0;
    t0 = tqkv_now_ns();
    for (uint32_t i = 0; i < count; i++) {
        tqkv_get_item it;
        memset(&it, 0, sizeof(it));
        uint64_t t = tqkv_now_ns();
        rc = tqkv_get(a->c, ns_name, &keys[i], 1, NULL, &it);
        lat_get[i] = tqkv_now_ns() - t;
        got_bytes += it.len;
        misses += it.status == TQKV_ENOENT;
        tqkv_get_items_release(&it, 1);
        if (rc)
            goto out;
        progress_update(&p, i + 1, got_bytes);
    }
    double get_s = (double)(tqkv_now_ns() - t0) / 1e9;
    qsort(lat_put, count, sizeof(uint64_t), cmp_u64);
    qsort(lat_get, count, sizeof(uint64_t), cmp_u64);
    uint32_t i50 = count / 2, i99 = (uint32_t)((count * 99ull) / 100);
    if (i99 >= count)
        i99 = count - 1;
    double put_gbs = (double)raw_len * count / put_s / 1e9;
    double get_gbs = (double)got_bytes / get_s / 1e9;
    if (a->json) {
        printf("{\"ns\":\"%s\",\"raw_bytes\":%zu,\"count\":%u,\"put_raw_GBps\":%.3f,"
               "\"put_p50_ms\":%.3f,\"put_p99_ms\":%.3f,\"get_GBps\":%.3f,\"get_bytes\":%" PRIu64
               ",\"get_p50_ms\":%.3f,\"get_p99_ms\":%.3f,\"misses\":%" PRIu64 "}\n",
               ns_name, raw_len, count, put_gbs, lat_put[i50] / 1e6, lat_put[i99] / 1e6, get_gbs,
               got_bytes, lat_get[i50] / 1e6, lat_get[i99] / 1e6, misses);
    } else {
        printf("%-10s %12s %10s %10s %10s\n", "OP", "BYTES/OP", "GB/s", "p50 ms", "p99 ms");
        printf("%-10s %12zu %10.3f %10.3f %10.3f\n", "put(raw)", raw_len, put_gbs,
               lat_put[i50] / 1e6, lat_put[i99] / 1e6);
        printf("%-10s %12" PRIu64 " %10.3f %10.3f %10.3f\n", "get", got_bytes / count, get_gbs,
               lat_get[i50] / 1e6, lat_get[i99] / 1e6);
        if (misses)
            printf("%" PRIu64 " of %u blocks were evicted before the GET pass\n", misses, count);
    }
    rc = tqkv_delete(a->c, ns_name, keys, count, NULL);
out:
    free(raw);
    free(lat_put);
    free(lat_get);
    free(keys);
    return rc ? fail(a, rc, "bench") : 0;
}

/* ---- main --------------------------------------------------------------------------------- */

static const char *default_url(char *buf, size_t len)
{
    const char *env = getenv("TQKV_URL");
    if (env && *env)
        return env;
    const char *xdg = getenv("XDG_RUNTIME_DIR");
    if (geteuid() == 0)
        snprintf(buf, len, "unix:///run/tqkv/tqkvd.sock");
    else if (xdg && *xdg)
        snprintf(buf, len, "unix://%s/tqkvd.sock", xdg);
    else
        snprintf(buf, len, "unix:///tmp/tqkvd-%u.sock", (unsigned)getuid());
    return buf;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"url", required_argument, NULL, 'u'},  {"token", required_argument, NULL, 't'},
        {"json", no_argument, NULL, 'j'},       {"timeout", required_argument, NULL, 'T'},
        {"help", no_argument, NULL, 'h'},       {NULL, 0, NULL, 0},
    };
    char urlbuf[600];
    cli a;
    memset(&a, 0, sizeof(a));
    a.token = getenv("TQKV_TOKEN");
    int ch;
    /* '+': stop at the command name; the command parses its own options. */
    while ((ch = getopt_long(argc, argv, "+u:t:jT:h", opts, NULL)) != -1) {
        switch (ch) {
        case 'u': a.url = optarg; break;
        case 't': a.token = optarg; break;
        case 'j': a.json = 1; break;
        case 'T':
            if (parse_u32(optarg, &a.timeout_ms))
                return usage_error("bad --timeout");
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return EXIT_USAGE;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return EXIT_USAGE;
    }
    if (!a.url)
        a.url = default_url(urlbuf, sizeof(urlbuf));
    const char *cmd = argv[optind];
    int sub_argc = argc - optind;
    char **sub_argv = argv + optind;
    static const char *const known[] = {"status", "stats", "register", "lookup", "put", "get",
                                        "delete", "pin", "unpin", "evict", "clear", "config",
                                        "bench", "cluster", NULL};
    int ok = 0;
    for (int i = 0; known[i]; i++)
        ok |= !strcmp(cmd, known[i]);
    if (!ok)
        return usage_error("unknown command '%s'", cmd);

    char err[512];
    tqkv_options o;
    tqkv_options_init(&o);
    o.token = a.token;
    o.client_name = "tqkv-cli";
    o.timeout_ms = a.timeout_ms;
    o.errbuf = err;
    o.errbuf_len = sizeof(err);
    int rc = tqkv_connect(a.url, &o, &a.c);
    if (rc) {
        if (a.json) {
            printf("{\"ok\":false,\"error\":\"%s\",\"message\":", tqkv_err_name(rc));
            json_str(stdout, err);
            printf("}\n");
        }
        fprintf(stderr, "tqkv: cannot connect to %s: %s\n", a.url, err);
        return rc == TQKV_EAUTH || rc == TQKV_EBADVERSION ? EXIT_FAIL : EXIT_CONNECT;
    }
    if (!strcmp(cmd, "status"))
        rc = cmd_status(&a);
    else if (!strcmp(cmd, "stats"))
        rc = cmd_stats(&a, sub_argc, sub_argv);
    else if (!strcmp(cmd, "cluster"))
        rc = cmd_cluster(&a, sub_argc, sub_argv);
    else if (!strcmp(cmd, "register"))
        rc = cmd_register(&a, sub_argc, sub_argv);
    else if (!strcmp(cmd, "lookup"))
        rc = cmd_lookup(&a, sub_argc, sub_argv);
    else if (!strcmp(cmd, "put"))
        rc = cmd_put(&a, sub_argc, sub_argv);
    else if (!strcmp(cmd, "get"))
        rc = cmd_get(&a, sub_argc, sub_argv);
    else if (!strcmp(cmd, "delete"))
        rc = cmd_keys(&a, sub_argc, sub_argv, "delete", tqkv_delete);
    else if (!strcmp(cmd, "pin"))
        rc = cmd_keys(&a, sub_argc, sub_argv, "pin", tqkv_pin);
    else if (!strcmp(cmd, "unpin"))
        rc = cmd_keys(&a, sub_argc, sub_argv, "unpin", tqkv_unpin);
    else if (!strcmp(cmd, "evict"))
        rc = cmd_evict(&a, sub_argc, sub_argv);
    else if (!strcmp(cmd, "clear"))
        rc = cmd_clear(&a, sub_argc, sub_argv);
    else if (!strcmp(cmd, "config"))
        rc = cmd_config(&a, sub_argc, sub_argv);
    else
        rc = cmd_bench(&a, sub_argc, sub_argv);
    tqkv_close(a.c);
    return rc;
}
