/* The pure parts of the Redis engine: the self-describing value stored per block, the Redis key
 * names and their cluster hash slots, and the RESP encoding of commands. Kept apart from the I/O
 * in redis.c so that they can be tested without a server (and under the sanitizers). */
#include "redis_internal.h"
#include "tqkv_endian.h"
#include "tqkv_errors.h"
#include "tqkv_redis.h"

#include <stdio.h>
#include <string.h>

#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#include <xxhash.h>
#if defined(__x86_64__)
/* libxxhash's runtime dispatch to its AVX2 / AVX-512 kernels (the plain entry points are built
 * for baseline SSE2): about twice the speed here, same results. Replaces XXH3_64bits* below. */
#include <xxh_x86dispatch.h>
#endif

size_t tqkv__redis_value_size(size_t ns_len, size_t key_len, size_t stored_len)
{
    return TQKV__REDIS_HDR_SIZE + ns_len + key_len + stored_len;
}

uint8_t *tqkv__redis_value_begin(uint8_t *dst, uint8_t flags, const char *ns, size_t ns_len,
                                 const uint8_t *key, size_t key_len, uint64_t raw_len,
                                 uint64_t stored_len)
{
    tqkv_store_le32(dst + 0, TQKV__REDIS_MAGIC);
    dst[4] = TQKV__REDIS_VERSION;
    dst[5] = flags;
    tqkv_store_le16(dst + 6, (uint16_t)ns_len);
    tqkv_store_le16(dst + 8, (uint16_t)key_len);
    tqkv_store_le16(dst + 10, (uint16_t)TQKV__REDIS_HDR_SIZE);
    tqkv_store_le32(dst + 12, 0);
    tqkv_store_le64(dst + 16, raw_len);
    tqkv_store_le64(dst + 24, stored_len);
    tqkv_store_le64(dst + TQKV__REDIS_CKSUM_OFF, 0);
    memcpy(dst + TQKV__REDIS_HDR_SIZE, ns, ns_len);
    memcpy(dst + TQKV__REDIS_HDR_SIZE + ns_len, key, key_len);
    return dst + TQKV__REDIS_HDR_SIZE + ns_len + key_len;
}

void tqkv__redis_value_seal(uint8_t *dst, size_t len)
{
    /* The field is still zero here, so one pass over the value gives the defined checksum. */
    tqkv_store_le64(dst + TQKV__REDIS_CKSUM_OFF, XXH3_64bits(dst, len));
}

void tqkv__redis_value_fill(uint8_t *dst, size_t len, const void *payload, size_t stored)
{
    /* Copy and hash in L2-sized chunks so that the hash reads what the copy just wrote from cache
     * rather than making a second pass over memory (values are up to several MiB). */
    enum { CHUNK = 64 * 1024 };
    size_t head = len - stored;
    uint8_t *p = dst + head;
    const uint8_t *src = payload;
    XXH3_state_t st;
    XXH3_64bits_reset(&st);
    XXH3_64bits_update(&st, dst, head);
    for (size_t off = 0; off < stored; off += CHUNK) {
        size_t n = stored - off < CHUNK ? stored - off : CHUNK;
        memcpy(p + off, src + off, n);
        XXH3_64bits_update(&st, p + off, n);
    }
    tqkv_store_le64(dst + TQKV__REDIS_CKSUM_OFF, XXH3_64bits_digest(&st));
}

int tqkv__redis_value_parse(const uint8_t *v, size_t len, const char *ns, size_t ns_len,
                            const uint8_t *key, size_t key_len, uint64_t max_raw,
                            tqkv__redis_value_view *out)
{
    if (len < TQKV__REDIS_HDR_SIZE)
        return len >= 4 && tqkv_load_le32(v) != TQKV__REDIS_MAGIC ? TQKV_EBADMAGIC
                                                                  : TQKV_ETRUNCATED;
    if (tqkv_load_le32(v) != TQKV__REDIS_MAGIC) return TQKV_EBADMAGIC;
    if (v[4] != TQKV__REDIS_VERSION) return TQKV_EBADVERSION;
    uint8_t flags = v[5];
    size_t vns = tqkv_load_le16(v + 6), vkey = tqkv_load_le16(v + 8);
    size_t hdr = tqkv_load_le16(v + 10);
    uint64_t raw_len = tqkv_load_le64(v + 16), stored = tqkv_load_le64(v + 24);
    if (hdr != TQKV__REDIS_HDR_SIZE || (flags & ~TQKV__REDIS_FLAG_LZ4) != 0 ||
        tqkv_load_le32(v + 12) != 0)
        return TQKV_EBADHEADER;
    size_t body = len - TQKV__REDIS_HDR_SIZE;
    if (vns > body || vkey > body - vns || stored != (uint64_t)(body - vns - vkey))
        return TQKV_ETRUNCATED;
    if (!(flags & TQKV__REDIS_FLAG_LZ4) && raw_len != stored) return TQKV_EBADHEADER;
    if (vns != ns_len || vkey != key_len || memcmp(v + TQKV__REDIS_HDR_SIZE, ns, ns_len) != 0 ||
        memcmp(v + TQKV__REDIS_HDR_SIZE + ns_len, key, key_len) != 0)
        return TQKV_EBADKEY;
    if (raw_len > max_raw) return TQKV_ERANGE;

    uint8_t h[TQKV__REDIS_HDR_SIZE];
    memcpy(h, v, sizeof(h));
    tqkv_store_le64(h + TQKV__REDIS_CKSUM_OFF, 0);
    XXH3_state_t st;
    XXH3_64bits_reset(&st);
    XXH3_64bits_update(&st, h, sizeof(h));
    XXH3_64bits_update(&st, v + sizeof(h), len - sizeof(h));
    if (XXH3_64bits_digest(&st) != tqkv_load_le64(v + TQKV__REDIS_CKSUM_OFF)) return TQKV_ECHECKSUM;

    out->flags = flags;
    out->raw_len = raw_len;
    out->payload = v + TQKV__REDIS_HDR_SIZE + vns + vkey;
    out->stored_len = (size_t)stored;
    return 0;
}

int tqkv__redis_name_ok(const char *s, size_t len, size_t max, int allow_tags)
{
    if (len == 0 || len > max) return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= ' ' || c == 0x7f) return 0;
        if (!allow_tags && (c == '{' || c == '}')) return 0;
    }
    return 1;
}

/* CRC16-CCITT (XMODEM: poly 0x1021, init 0), the one Redis Cluster uses for key slots. */
static uint16_t crc16(const uint8_t *p, size_t n)
{
    uint16_t crc = 0;
    for (size_t i = 0; i < n; i++) {
        crc ^= (uint16_t)(p[i] << 8);
        for (int b = 0; b < 8; b++)
            crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc;
}

uint16_t tqkv_redis_key_slot(const void *key, size_t len)
{
    const uint8_t *k = key;
    size_t open = 0;
    while (open < len && k[open] != '{')
        open++;
    if (open < len) {
        size_t close = open + 1;
        while (close < len && k[close] != '}')
            close++;
        if (close < len && close > open + 1) /* "{}" is no tag: the whole key hashes */
            return (uint16_t)(crc16(k + open + 1, close - open - 1) & (TQKV_REDIS_SLOTS - 1));
    }
    return (uint16_t)(crc16(k, len) & (TQKV_REDIS_SLOTS - 1));
}

int tqkv_redis_block_key(const char *prefix, const char *ns, const void *key, size_t key_len,
                         char *buf, size_t cap)
{
    static const char hex[] = "0123456789abcdef";
    if (!prefix || !ns || !key || !buf) return TQKV_EINVAL;
    size_t pl = strlen(prefix), nl = strlen(ns);
    if (!tqkv__redis_name_ok(prefix, pl, TQKV_REDIS_MAX_PREFIX, 0) ||
        !tqkv__redis_name_ok(ns, nl, TQKV_REDIS_MAX_NS, 0) || key_len == 0 ||
        key_len > TQKV_REDIS_MAX_KEY)
        return TQKV_EINVAL;
    size_t need = pl + 3 + nl + 1 + 2 * key_len;
    if (need + 1 > cap) return TQKV_ERANGE;
    char *p = buf;
    memcpy(p, prefix, pl);
    p += pl;
    memcpy(p, ":b:", 3);
    p += 3;
    memcpy(p, ns, nl);
    p += nl;
    *p++ = ':';
    const uint8_t *k = key;
    for (size_t i = 0; i < key_len; i++) {
        *p++ = hex[k[i] >> 4];
        *p++ = hex[k[i] & 15];
    }
    *p = '\0';
    return (int)need;
}

static size_t ndigits(size_t v)
{
    size_t n = 1;
    while (v >= 10) {
        v /= 10;
        n++;
    }
    return n;
}

size_t tqkv__resp_size(int argc, const size_t *lens)
{
    size_t n = 1 + ndigits((size_t)argc) + 2;
    for (int i = 0; i < argc; i++)
        n += 1 + ndigits(lens[i]) + 2 + lens[i] + 2;
    return n;
}

char *tqkv__resp_begin(char *p, int argc)
{
    return p + sprintf(p, "*%d\r\n", argc);
}

char *tqkv__resp_arg_open(char *p, size_t len)
{
    return p + sprintf(p, "$%zu\r\n", len);
}

char *tqkv__resp_arg_end(char *p)
{
    p[0] = '\r';
    p[1] = '\n';
    return p + 2;
}

char *tqkv__resp_arg(char *p, const void *data, size_t len)
{
    p = tqkv__resp_arg_open(p, len);
    memcpy(p, data, len);
    return tqkv__resp_arg_end(p + len);
}
