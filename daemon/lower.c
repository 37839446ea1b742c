/* tqkvd's lower tiers: opens the SSD tier (storage/ssd) and the Redis tier (storage/redis) from
 * the settings, attaches them to the store with their write policies, and keeps the namespace
 * registry that makes the SSD tier's contents usable after a restart.
 *
 * WHY A REGISTRY. The store names a namespace by a small integer id and the SSD engine keys its
 * records by that id, not by the name. After a restart a namespace must get its old id back, or
 * a namespace registered first after the restart would read another one's blocks. So every new
 * namespace is appended to `<ssd_dir>/namespaces.tqn` (and made durable) before REGISTER
 * answers, and start-up registers them again with their ids. Redis keys carry the namespace name
 * (storage/redis/redis_tier.h), so Redis needs no such thing.
 *
 * Registry record (little-endian, 288 bytes; a torn or corrupt tail is cut at start-up):
 *   0 magic "TQNS" (0x534E5154) | 4 version u16 = 1 | 6 reserved u16 | 8 id u32 |
 *   12 fingerprint_len u32 | 16 n_layers | 20 n_kv_heads | 24 head_dim | 28 dtype |
 *   32 chunk_size (u32 each) | 36 reserved u32 | 40 seed u64 | 48 name[128] (NUL-padded) |
 *   176 fingerprint[64] | 240 preset[32] | 272 reserved[8] | 280 xxh3-64 of bytes 0..279. */
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xxhash.h>

#include "tqkv_alloc.h"
#include "tqkv_endian.h"
#include "tqkv_log.h"

#ifdef TQKVD_HAVE_SSD
#include "ssd_tier.h"
#endif
#ifdef TQKVD_HAVE_REDIS
#include "redis_tier.h"
#endif

#define MOD "tiers"
#define NSREG_FILE "namespaces.tqn"
#define NSREG_MAGIC 0x534E5154u
#define NSREG_REC 288

_Static_assert(TQKV_NS_NAME_MAX + 1 == 128, "registry name field is 128 bytes");
_Static_assert(TQKV_NS_FINGERPRINT_MAX == 64, "registry fingerprint field is 64 bytes");
_Static_assert(TQKV_NS_PRESET_MAX + 1 == 32, "registry preset field is 32 bytes");

/* ---- settings applied at run time ---- */

int tqkvd_server_apply_ssd_capacity(tqkvd_server *s)
{
    if (!s->store || !tqkv_store_tier(s->store, TQKV_TIER_SSD))
        return 0;
    return tqkv_store_set_capacity(s->store, TQKV_TIER_SSD, (uint64_t)s->cfg.ssd_capacity);
}

int tqkvd_server_apply_write_policy(tqkvd_server *s)
{
    if (!s->store)
        return 0;
    if (tqkv_store_tier(s->store, TQKV_TIER_SSD))
        tqkv_store_set_write_policy(s->store, TQKV_TIER_SSD, (tqkv_write_policy)s->cfg.ssd_write);
    if (tqkv_store_tier(s->store, TQKV_TIER_REDIS))
        tqkv_store_set_write_policy(s->store, TQKV_TIER_REDIS,
                                    (tqkv_write_policy)s->cfg.redis_write);
    return 0;
}

/* ---- namespace registry ---- */

static void nsreg_encode(uint8_t *b, const tqkv_ns_desc *d, uint32_t id)
{
    memset(b, 0, NSREG_REC);
    tqkv_store_le32(b + 0, NSREG_MAGIC);
    tqkv_store_le16(b + 4, 1);
    tqkv_store_le32(b + 8, id);
    tqkv_store_le32(b + 12, d->fingerprint_len);
    tqkv_store_le32(b + 16, d->n_layers);
    tqkv_store_le32(b + 20, d->n_kv_heads);
    tqkv_store_le32(b + 24, d->head_dim);
    tqkv_store_le32(b + 28, d->dtype);
    tqkv_store_le32(b + 32, d->chunk_size);
    tqkv_store_le64(b + 40, d->seed);
    memcpy(b + 48, d->name, strnlen(d->name, TQKV_NS_NAME_MAX));
    memcpy(b + 176, d->fingerprint, d->fingerprint_len);
    memcpy(b + 240, d->preset, strnlen(d->preset, TQKV_NS_PRESET_MAX));
    tqkv_store_le64(b + 280, XXH3_64bits(b, 280));
}

/* @return 0 and *d, *id from a valid record, -1 otherwise. */
static int nsreg_decode(const uint8_t *b, tqkv_ns_desc *d, uint32_t *id)
{
    if (tqkv_load_le32(b) != NSREG_MAGIC || tqkv_load_le16(b + 4) != 1 ||
        tqkv_load_le64(b + 280) != XXH3_64bits(b, 280))
        return -1;
    memset(d, 0, sizeof(*d));
    *id = tqkv_load_le32(b + 8);
    d->fingerprint_len = tqkv_load_le32(b + 12);
    if (d->fingerprint_len > TQKV_NS_FINGERPRINT_MAX || b[48 + TQKV_NS_NAME_MAX] ||
        b[240 + TQKV_NS_PRESET_MAX])
        return -1;
    d->n_layers = tqkv_load_le32(b + 16);
    d->n_kv_heads = tqkv_load_le32(b + 20);
    d->head_dim = tqkv_load_le32(b + 24);
    d->dtype = tqkv_load_le32(b + 28);
    d->chunk_size = tqkv_load_le32(b + 32);
    d->seed = tqkv_load_le64(b + 40);
    memcpy(d->name, b + 48, TQKV_NS_NAME_MAX);
    memcpy(d->fingerprint, b + 176, d->fingerprint_len);
    memcpy(d->preset, b + 240, TQKV_NS_PRESET_MAX);
    return 0;
}

static void fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
}

/* Opens the registry and registers every namespace it holds. @return 0 or TQKV_EIO. */
static int nsreg_open(tqkvd_server *s)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", s->cfg.ssd_dir, NSREG_FILE);
    struct stat st;
    int existed = stat(path, &st) == 0;
    int fd = open(path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (fd < 0) {
        TQKV_LOGE(MOD, "msg=\"cannot open the namespace registry\" file=%s err=\"%s\"", path,
                  strerror(errno));
        return TQKV_EIO;
    }
    if (!existed)
        fsync_dir(s->cfg.ssd_dir);
    uint8_t b[NSREG_REC];
    off_t off = 0;
    uint32_t n = 0;
    for (;;) {
        ssize_t got = pread(fd, b, NSREG_REC, off);
        if (got < 0) {
            TQKV_LOGE(MOD, "msg=\"cannot read the namespace registry\" err=\"%s\"",
                      strerror(errno));
            close(fd);
            return TQKV_EIO;
        }
        tqkv_ns_desc d;
        uint32_t id;
        if (got < NSREG_REC || nsreg_decode(b, &d, &id) != 0)
            break;
        off += NSREG_REC;
        tqkv_ns *ns = NULL;
        int r = tqkv_store_ns_register_id(s->store, &d, id, &ns);
        if (r == 0)
            r = tqkvd__ns_attach_info(ns);
        if (r) {
            /* Its id stays reserved (next ids are above it) so its records are never read as
             * another namespace's. */
            TQKV_LOGW(MOD, "msg=\"registry entry not restored\" ns=\"%s\" id=%u err=%s", d.name,
                      id, tqkv_err_name(r));
            continue;
        }
        n++;
    }
    if (fstat(fd, &st) == 0 && st.st_size > off) {
        TQKV_LOGW(MOD, "msg=\"cutting a torn or corrupt registry tail\" bytes=%lld",
                  (long long)(st.st_size - off));
        if (ftruncate(fd, off) != 0 || fdatasync(fd) != 0) {
            close(fd);
            return TQKV_EIO;
        }
    }
    s->nsreg_fd = fd;
    if (n)
        TQKV_LOGI(MOD, "msg=\"namespaces restored\" count=%u", n);
    return 0;
}

int tqkvd_nsreg_append(tqkvd_server *s, const tqkv_ns_desc *d, uint32_t id)
{
    if (s->nsreg_fd < 0)
        return 0;
    uint8_t b[NSREG_REC];
    nsreg_encode(b, d, id);
    /* REGISTER is rare: a synchronous durable append on the loop thread costs one fdatasync. */
    if (write(s->nsreg_fd, b, NSREG_REC) != NSREG_REC || fdatasync(s->nsreg_fd) != 0) {
        TQKV_LOGE(MOD, "msg=\"cannot write the namespace registry\" err=\"%s\"", strerror(errno));
        return TQKV_EIO;
    }
    return 0;
}

void tqkvd_lower_close(tqkvd_server *s)
{
    if (s->nsreg_fd >= 0)
        close(s->nsreg_fd);
    s->nsreg_fd = -1;
}

/* ---- opening the tiers ---- */

#ifdef TQKVD_HAVE_SSD
/* The SSD engine's eviction asks this on its writer thread: pinned and leased blocks are
 * rewritten instead of dropped. */
static int ssd_keep(void *ctx, uint32_t ns_id, const uint8_t key[TQKV_SSD_KEY_BYTES], size_t len)
{
    (void)len;
    return tqkv_store_is_protected(ctx, ns_id, key);
}

static int open_ssd(tqkvd_server *s)
{
    tqkv_ssd_options o;
    tqkv_ssd_options_init(&o);
    o.dir = s->cfg.ssd_dir;
    o.capacity = (uint64_t)s->cfg.ssd_capacity;
    o.io_threads = (uint32_t)s->cfg.ssd_io_threads;
    o.direct_io = (int)s->cfg.ssd_direct_io;
    o.fsync = (tqkv_ssd_fsync)s->cfg.ssd_fsync;
    o.fsync_interval_ms = (uint32_t)s->cfg.ssd_fsync_interval_ms;
    o.no_compress = !s->cfg.ssd_lz4;
    o.keep = ssd_keep;
    o.keep_ctx = s->store;
    tqkv_tier *t = NULL;
    int r = tqkv_ssd_tier_create(s->loop, &o, &t);
    if (r) {
        TQKV_LOGE(MOD, "msg=\"cannot open the SSD tier\" dir=%s err=%s", s->cfg.ssd_dir,
                  tqkv_err_name(r));
        return r;
    }
    if ((r = tqkv_store_attach_tier(s->store, t)) != 0) {
        t->ops->destroy(t);
        return r;
    }
    tqkv_ssd_stats st;
    tqkv_ssd_stats_get(tqkv_ssd_from_tier(t), &st);
    TQKV_LOGI(MOD,
              "msg=\"SSD tier open\" dir=%s capacity=%" PRIu64 " records=%" PRIu64
              " segments=%" PRIu64 " corrupt=%" PRIu64 " truncated_bytes=%" PRIu64
              " scan_s=%.3f fsync=%s write=%s",
              s->cfg.ssd_dir, st.capacity, st.records, st.segments, st.corrupt,
              st.truncated_bytes, st.open_seconds,
              s->cfg.ssd_fsync == 0 ? "always" : s->cfg.ssd_fsync == 1 ? "interval" : "none",
              s->cfg.ssd_write == 0 ? "back" : s->cfg.ssd_write == 1 ? "through" : "async");
    return 0;
}
#endif

#ifdef TQKVD_HAVE_REDIS
static const char *redis_ns_name(void *arg, uint32_t ns_id)
{
    tqkv_ns *ns = tqkv_store_ns_by_id(arg, ns_id);
    return ns ? tqkv_ns_get_desc(ns)->name : NULL;
}

static int open_redis(tqkvd_server *s)
{
    char *list = tqkv_strdup(s->cfg.redis);
    const char *nodes[64];
    size_t n = 0;
    if (!list)
        return TQKV_ENOMEM;
    for (char *save = NULL, *tok = strtok_r(list, ", ", &save); tok && n < 64;
         tok = strtok_r(NULL, ", ", &save))
        nodes[n++] = tok;
    tqkv_redis_config c;
    tqkv_redis_config_default(&c);
    c.nodes = nodes;
    c.n_nodes = n;
    c.cluster = (int)s->cfg.redis_cluster;
    c.username = s->cfg.redis_user[0] ? s->cfg.redis_user : NULL;
    c.password = s->cfg.redis_password[0] ? s->cfg.redis_password : NULL;
    c.prefix = s->cfg.redis_prefix;
    c.ttl_ms = (uint32_t)(s->cfg.redis_ttl_s * 1000);
    c.timeout_ms = (uint32_t)s->cfg.redis_timeout_ms;
    c.lz4 = (int)s->cfg.redis_lz4;
    c.max_value_bytes = (uint64_t)s->cfg.max_frame;
    tqkv_redis *rd = NULL;
    int r = n ? tqkv_redis_create(s->loop, &c, &rd) : TQKV_EBADCONFIG;
    tqkv_free(list);
    if (r) {
        TQKV_LOGE(MOD, "msg=\"cannot start the Redis tier\" redis=\"%s\" err=%s", s->cfg.redis,
                  tqkv_err_name(r));
        return r;
    }
    tqkv_tier *t = NULL;
    if ((r = tqkv_redis_tier_create(rd, redis_ns_name, s->store, &t)) != 0) {
        tqkv_redis_destroy(rd);
        return r;
    }
    if ((r = tqkv_store_attach_tier(s->store, t)) != 0) {
        t->ops->destroy(t);
        return r;
    }
    TQKV_LOGI(MOD, "msg=\"Redis tier started\" redis=\"%s\" cluster=%d write=%s", s->cfg.redis,
              (int)s->cfg.redis_cluster,
              s->cfg.redis_write == 0 ? "back" : s->cfg.redis_write == 1 ? "through" : "async");
    return 0;
}
#endif

int tqkvd_lower_open(tqkvd_server *s)
{
    int r = 0;
    (void)r;
    s->nsreg_fd = -1;
    if (s->cfg.ssd_dir[0]) {
#ifdef TQKVD_HAVE_SSD
        if ((r = open_ssd(s)) != 0)
            return r;
        if ((r = nsreg_open(s)) != 0)
            return r;
#else
        TQKV_LOGE(MOD, "msg=\"ssd_dir is set but this tqkvd was built without the SSD tier\"");
        return TQKV_EBADCONFIG;
#endif
    }
    if (s->cfg.redis[0]) {
#ifdef TQKVD_HAVE_REDIS
        if ((r = open_redis(s)) != 0)
            return r;
#else
        TQKV_LOGE(MOD, "msg=\"redis is set but this tqkvd was built without the Redis tier\"");
        return TQKV_EBADCONFIG;
#endif
    }
    return tqkvd_server_apply_write_policy(s);
}
