/* Tests of the Redis engine's pure parts, no server needed: the stored value (round trip and
 * every way a value can be wrong), cluster key slots against Redis' own vectors, block key names
 * and the RESP builder. */
#include "redis_internal.h"
#include "tqkv_endian.h"
#include "tqkv_errors.h"
#include "tqkv_redis.h"
#include "tqkv_test.h"

static const uint8_t KEY[32] = {1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15, 16,
                                17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};

/* A sealed value of `n` payload bytes into buf; @return its size. */
static size_t make_value(uint8_t *buf, const char *ns, const uint8_t *key, size_t n)
{
    size_t nl = strlen(ns);
    size_t total = tqkv__redis_value_size(nl, 32, n);
    uint8_t *p = tqkv__redis_value_begin(buf, 0, ns, nl, key, 32, n, n);
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(i * 7 + 3);
    tqkv__redis_value_seal(buf, total);
    return total;
}

static void test_value_roundtrip(void)
{
    uint8_t buf[512];
    size_t len = make_value(buf, "llama", KEY, 300);
    ASSERT_EQ_U64(len, 40 + 5 + 32 + 300);
    ASSERT_EQ_U64(tqkv_load_le32(buf), 0x56525154u);
    ASSERT_TRUE(memcmp(buf, "TQRV", 4) == 0);
    tqkv__redis_value_view v;
    ASSERT_OK(tqkv__redis_value_parse(buf, len, "llama", 5, KEY, 32, 1 << 20, &v));
    ASSERT_EQ_U64(v.stored_len, 300);
    ASSERT_EQ_U64(v.raw_len, 300);
    ASSERT_EQ_INT(v.flags, 0);
    ASSERT_TRUE(v.payload == buf + 40 + 5 + 32);
    ASSERT_EQ_INT(v.payload[299], (uint8_t)(299 * 7 + 3));
    /* An empty payload is a valid value. */
    len = make_value(buf, "n", KEY, 0);
    ASSERT_OK(tqkv__redis_value_parse(buf, len, "n", 1, KEY, 32, 1 << 20, &v));
    ASSERT_EQ_U64(v.stored_len, 0);
}

typedef struct {
    const char *name;
    size_t off;      /* byte to change (or new length if truncate) */
    uint8_t xor_val; /* 0: truncate to `off` bytes instead */
    int want;
} corrupt_case;

static void test_value_corrupt(void)
{
    static const corrupt_case cases[] = {
        {"magic", 0, 0x01, TQKV_EBADMAGIC},
        {"version", 4, 0x02, TQKV_EBADVERSION},
        {"unknown flag", 5, 0x80, TQKV_EBADHEADER},
        {"ns_len", 6, 0x01, TQKV_ETRUNCATED},
        {"hdr_len", 10, 0x08, TQKV_EBADHEADER},
        {"reserved", 12, 0x01, TQKV_EBADHEADER},
        {"raw_len", 16, 0x01, TQKV_EBADHEADER},
        {"stored_len", 24, 0x01, TQKV_ETRUNCATED},
        {"checksum", 32, 0x01, TQKV_ECHECKSUM},
        {"namespace byte", 40, 0x20, TQKV_EBADKEY},
        {"key byte", 45 + 31, 0x01, TQKV_EBADKEY},
        {"payload first", 77, 0x01, TQKV_ECHECKSUM},
        {"payload last", 77 + 99, 0x40, TQKV_ECHECKSUM},
        {"truncated payload", 150, 0, TQKV_ETRUNCATED},
        {"truncated header", 39, 0, TQKV_ETRUNCATED},
        {"empty", 0, 0, TQKV_ETRUNCATED},
    };
    uint8_t good[256], bad[256];
    size_t len = make_value(good, "llama", KEY, 100);
    ASSERT_EQ_U64(len, 177);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const corrupt_case *c = &cases[i];
        memcpy(bad, good, len);
        size_t blen = len;
        if (c->xor_val)
            bad[c->off] ^= c->xor_val;
        else
            blen = c->off;
        tqkv__redis_value_view v;
        int rc = tqkv__redis_value_parse(bad, blen, "llama", 5, KEY, 32, 1 << 20, &v);
        if (rc != c->want) fprintf(stderr, "case %s\n", c->name);
        ASSERT_ERR(rc, c->want);
    }
    tqkv__redis_value_view v;
    /* Asked under another namespace or key: the value names what it is. */
    ASSERT_ERR(tqkv__redis_value_parse(good, len, "llamb", 5, KEY, 32, 1 << 20, &v), TQKV_EBADKEY);
    ASSERT_ERR(tqkv__redis_value_parse(good, len, "llama", 5, KEY, 31, 1 << 20, &v), TQKV_EBADKEY);
    ASSERT_ERR(tqkv__redis_value_parse(good, len, "llama", 5, KEY, 32, 99, &v), TQKV_ERANGE);
}

static void test_key_slot(void)
{
    /* Vectors from the Redis Cluster specification and CLUSTER KEYSLOT. */
    static const struct {
        const char *key;
        int slot;
    } cases[] = {
        {"123456789", 0x31C3 & 16383}, /* CRC16/XMODEM check value 0x31C3 */
        {"foo", 12182},
        {"bar", 5061},
        {"user1000", 3443},
        {"{user1000}.following", 3443},
        {"{user1000}.followers", 3443},
        {"foo{}{bar}", 8363},    /* "{}" is no tag: the whole key hashes */
        {"foo{{bar}}zap", 4015}, /* the tag is "{bar" */
        {"foo{bar}{zap}", 5061}, /* the first tag wins */
        {"", 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        ASSERT_EQ_INT(tqkv_redis_key_slot(cases[i].key, strlen(cases[i].key)), cases[i].slot);
}

static void test_block_key(void)
{
    char buf[256];
    int n = tqkv_redis_block_key("tqkv", "llama", KEY, 4, buf, sizeof(buf));
    ASSERT_EQ_INT(n, 21);
    ASSERT_TRUE(strcmp(buf, "tqkv:b:llama:01020304") == 0);
    n = tqkv_redis_block_key("p", "ns", KEY, 32, buf, sizeof(buf));
    ASSERT_EQ_INT(n, 7 + 64);
    ASSERT_ERR(tqkv_redis_block_key("p", "ns", KEY, 32, buf, 71), TQKV_ERANGE);
    ASSERT_ERR(tqkv_redis_block_key("p", "n{s}", KEY, 32, buf, sizeof(buf)), TQKV_EINVAL);
    ASSERT_ERR(tqkv_redis_block_key("p", "n s", KEY, 32, buf, sizeof(buf)), TQKV_EINVAL);
    ASSERT_ERR(tqkv_redis_block_key("p", "", KEY, 32, buf, sizeof(buf)), TQKV_EINVAL);
    ASSERT_ERR(tqkv_redis_block_key("{p}", "ns", KEY, 32, buf, sizeof(buf)), TQKV_EINVAL);
    ASSERT_ERR(tqkv_redis_block_key("p", "ns", KEY, 0, buf, sizeof(buf)), TQKV_EINVAL);
}

static void test_resp(void)
{
    size_t lens[3] = {3, 1, 0};
    size_t n = tqkv__resp_size(3, lens);
    char buf[64];
    memset(buf, '#', sizeof(buf));
    char *p = tqkv__resp_begin(buf, 3);
    p = tqkv__resp_arg(p, "SET", 3);
    p = tqkv__resp_arg(p, "k", 1);
    p = tqkv__resp_arg(p, "", 0);
    static const char want[] = "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n";
    ASSERT_EQ_U64((size_t)(p - buf), n);
    ASSERT_EQ_U64(n, sizeof(want) - 1);
    ASSERT_MEM_EQ(buf, want, n);
    ASSERT_EQ_INT(buf[n], '#'); /* nothing written past the computed size */
}

/* The one-pass fill gives the same bytes as memcpy + seal, for sizes around the chunk size. */
static void test_value_fill(void)
{
    static const size_t sizes[] = {0, 1, 65535, 65536, 65537, 3 * 65536 + 17};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        size_t n = sizes[i], total = tqkv__redis_value_size(2, 32, n);
        uint8_t *src = malloc(n + 1), *a = malloc(total), *b = malloc(total);
        for (size_t k = 0; k < n; k++)
            src[k] = (uint8_t)(k * 31 + i);
        memcpy(tqkv__redis_value_begin(a, 0, "ns", 2, KEY, 32, n, n), src, n);
        tqkv__redis_value_seal(a, total);
        tqkv__redis_value_begin(b, 0, "ns", 2, KEY, 32, n, n);
        tqkv__redis_value_fill(b, total, src, n);
        ASSERT_MEM_EQ(a, b, total);
        tqkv__redis_value_view v;
        ASSERT_OK(tqkv__redis_value_parse(b, total, "ns", 2, KEY, 32, 1 << 20, &v));
        free(src);
        free(a);
        free(b);
    }
}

static const tqkv_test_case cases[] = {
    {"value_fill", test_value_fill},
    {"value_roundtrip", test_value_roundtrip},
    {"value_corrupt", test_value_corrupt},
    {"key_slot", test_key_slot},
    {"block_key", test_block_key},
    {"resp", test_resp},
    {NULL, NULL},
};

int main(int argc, char **argv)
{
    return tqkv_test_main(argc, argv, cases);
}
