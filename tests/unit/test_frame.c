/* Unit tests of proto/frame.c: preamble parse/emit (every error code), header pack/unpack
 * round trips, malformed protobuf, item totals and key checks. */
#include "frame.h"
#include "tqkv_alloc.h"
#include "tqkv_endian.h"
#include "tqkv_test.h"

static void test_preamble_roundtrip(void)
{
    uint8_t b[TQKV_PREAMBLE_SIZE];
    tqkv_preamble_emit(b, 123, 456789);
    /* The layout is part of the protocol: check the bytes, not only the round trip. */
    static const uint8_t want[16] = {'T', 'Q', 'K', 'V', 1, 0, 0, 0,
                                     123, 0, 0, 0, 0x55, 0xF8, 0x06, 0x00};
    ASSERT_MEM_EQ(b, want, 16);
    ASSERT_EQ_U64(tqkv_load_le32(b), TQKV_FRAME_MAGIC_LE32);
    tqkv_preamble p;
    ASSERT_OK(tqkv_preamble_parse(b, sizeof b, 0, &p));
    ASSERT_EQ_INT(p.version, 1);
    ASSERT_EQ_INT(p.flags, 0);
    ASSERT_EQ_U64(p.header_len, 123);
    ASSERT_EQ_U64(p.payload_len, 456789);
    ASSERT_EQ_U64(tqkv_preamble_frame_size(&p), 16 + 123 + 456789);
}

typedef struct {
    const char *name;
    uint8_t bytes[16];
    size_t len;
    uint32_t max_frame;
    int want;
} preamble_case;

static void test_preamble_errors(void)
{
    static const preamble_case cases[] = {
        {"empty", {0}, 0, 0, TQKV_ETRUNCATED},
        {"15 bytes", {'T', 'Q', 'K', 'V', 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 15, 0, TQKV_ETRUNCATED},
        {"bad magic", {'T', 'Q', 'K', 'X', 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 16, 0,
         TQKV_EBADMAGIC},
        {"http", {'G', 'E', 'T', ' ', '/', ' ', 'H', 'T', 'T', 'P', 0, 0, 0, 0, 0, 0}, 16, 0,
         TQKV_EBADMAGIC},
        {"version 2", {'T', 'Q', 'K', 'V', 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 16, 0,
         TQKV_EBADVERSION},
        {"version 0", {'T', 'Q', 'K', 'V', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 16, 0,
         TQKV_EBADVERSION},
        {"flags", {'T', 'Q', 'K', 'V', 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 16, 0, TQKV_EPROTO},
        {"header too big", {'T', 'Q', 'K', 'V', 1, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0}, 16, 0,
         TQKV_EFRAMETOOBIG},
        {"frame past max", {'T', 'Q', 'K', 'V', 1, 0, 0, 0, 10, 0, 0, 0, 0xE7, 0x03, 0, 0}, 16,
         1024, TQKV_EFRAMETOOBIG},
        {"frame at max", {'T', 'Q', 'K', 'V', 1, 0, 0, 0, 10, 0, 0, 0, 0xE6, 0x03, 0, 0}, 16, 1024,
         0},
        {"u32 sum no wrap", {'T', 'Q', 'K', 'V', 1, 0, 0, 0, 0, 0, 0, 0x01, 0xFF, 0xFF, 0xFF, 0xFF},
         16, 0xFFFFFFFFu, TQKV_EFRAMETOOBIG},
        {"max header ok", {'T', 'Q', 'K', 'V', 1, 0, 0, 0, 0, 0, 0, 0x01, 0, 0, 0, 0}, 16, 0, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const preamble_case *c = &cases[i];
        tqkv_preamble p;
        int r = tqkv_preamble_parse(c->bytes, c->len, c->max_frame, &p);
        if (r != c->want)
            TQKV__FAIL("case %s: got %s, want %s", c->name, tqkv_err_name(r),
                       tqkv_err_name(c->want));
    }
    tqkv_preamble p;
    ASSERT_ERR(tqkv_preamble_parse(NULL, 16, 0, &p), TQKV_EINVAL);
}

static void test_header_roundtrip(void)
{
    Tqkv__Header h = TQKV__HEADER__INIT;
    h.op = TQKV__OP__OP_PUT;
    h.request_id = 0x123456789ull;
    h.ns = "llama";
    h.encoding = TQKV__ENCODING__ENC_RAW;
    h.dtype = TQKV__DTYPE__DTYPE_BF16;
    uint8_t keys[3][32];
    Tqkv__Item items[3], *pitems[3];
    for (int i = 0; i < 3; i++) {
        memset(keys[i], 0xA0 + i, 32);
        tqkv__item__init(&items[i]);
        items[i].key.data = keys[i];
        items[i].key.len = 32;
        items[i].n_tokens = 256 - (uint32_t)i;
        items[i].payload_len = 1000u + (uint64_t)i;
        pitems[i] = &items[i];
    }
    h.n_items = 3;
    h.items = pitems;

    void *frame;
    size_t flen;
    ASSERT_OK(tqkv_frame_build(&h, 3003, &frame, &flen));
    tqkv_preamble p;
    ASSERT_OK(tqkv_preamble_parse(frame, flen, 0, &p));
    ASSERT_EQ_U64(p.header_len + TQKV_PREAMBLE_SIZE, flen);
    ASSERT_EQ_U64(p.payload_len, 3003);
    ASSERT_EQ_U64(p.header_len, tqkv_header_packed_size(&h));

    Tqkv__Header *u = NULL;
    ASSERT_OK(tqkv_header_unpack((uint8_t *)frame + TQKV_PREAMBLE_SIZE, p.header_len, &u));
    tqkv_free(frame);
    ASSERT_EQ_INT(u->op, TQKV__OP__OP_PUT);
    ASSERT_EQ_U64(u->request_id, 0x123456789ull);
    ASSERT_TRUE(strcmp(u->ns, "llama") == 0);
    ASSERT_EQ_INT(u->encoding, TQKV__ENCODING__ENC_RAW);
    ASSERT_EQ_INT(u->dtype, TQKV__DTYPE__DTYPE_BF16);
    ASSERT_EQ_U64(u->n_items, 3);
    uint64_t total = 0;
    ASSERT_OK(tqkv_header_items_total(u, &total));
    ASSERT_EQ_U64(total, 3003);
    ASSERT_OK(tqkv_header_check_keys(u));
    for (int i = 0; i < 3; i++) {
        ASSERT_EQ_U64(u->items[i]->key.len, 32);
        ASSERT_MEM_EQ(u->items[i]->key.data, keys[i], 32);
        ASSERT_EQ_U64(u->items[i]->n_tokens, 256 - i);
    }
    tqkv_header_free(u);

    /* pack into a buffer that is too small */
    uint8_t small[4];
    ASSERT_EQ_U64(tqkv_header_pack(&h, small, sizeof small), 0);
}

static void test_header_empty(void)
{
    /* A header with every field at its default packs to zero bytes, and zero bytes unpack. */
    Tqkv__Header h = TQKV__HEADER__INIT;
    ASSERT_EQ_U64(tqkv_header_packed_size(&h), 0);
    Tqkv__Header *u = NULL;
    ASSERT_OK(tqkv_header_unpack(NULL, 0, &u));
    ASSERT_EQ_INT(u->op, 0);
    ASSERT_EQ_U64(u->n_items, 0);
    tqkv_header_free(u);
    tqkv_header_free(NULL);
}

static void test_header_malformed(void)
{
    static const struct {
        const char *name;
        uint8_t b[8];
        size_t len;
    } cases[] = {
        {"truncated varint", {0x10, 0xFF}, 2},           /* request_id varint never ends */
        {"length past end", {0x1A, 0x05, 'a'}, 3},       /* ns says 5 bytes, 1 present */
        {"bad wire type", {0x0F}, 1},                    /* field 1, wire type 7 */
        {"field zero", {0x00, 0x01}, 2},                 /* field number 0 is invalid */
        {"item past end", {0x22, 0x10, 0x0A, 0x20}, 4},  /* items submessage truncated */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        Tqkv__Header *u = (Tqkv__Header *)1;
        int r = tqkv_header_unpack(cases[i].b, cases[i].len, &u);
        if (r != TQKV_EBADHEADER)
            TQKV__FAIL("case %s: got %s, want TQKV_EBADHEADER", cases[i].name, tqkv_err_name(r));
        ASSERT_TRUE(u == NULL);
    }
}

static void test_keys_and_totals(void)
{
    Tqkv__Header h = TQKV__HEADER__INIT;
    uint8_t k[33] = {0};
    Tqkv__Item a = TQKV__ITEM__INIT, b = TQKV__ITEM__INIT, *items[2] = {&a, &b};
    a.key.data = k;
    a.key.len = 32;
    b.key.data = k;
    b.key.len = 31;
    h.items = items;
    h.n_items = 2;
    ASSERT_ERR(tqkv_header_check_keys(&h), TQKV_EBADKEYLEN);
    b.key.len = 33;
    ASSERT_ERR(tqkv_header_check_keys(&h), TQKV_EBADKEYLEN);
    b.key.len = 32;
    ASSERT_OK(tqkv_header_check_keys(&h));
    a.payload_len = UINT64_MAX;
    b.payload_len = 1;
    uint64_t t;
    ASSERT_ERR(tqkv_header_items_total(&h, &t), TQKV_EOVERFLOW);
    b.payload_len = 0;
    ASSERT_OK(tqkv_header_items_total(&h, &t));
    ASSERT_EQ_U64(t, UINT64_MAX);
}

static void test_op_names(void)
{
    ASSERT_TRUE(strcmp(tqkv_op_name(TQKV__OP__OP_PUT), "PUT") == 0);
    ASSERT_TRUE(strcmp(tqkv_op_name(TQKV__OP__OP_CLUSTER), "CLUSTER") == 0);
    ASSERT_TRUE(strcmp(tqkv_op_name(99), "UNKNOWN") == 0);
    ASSERT_TRUE(strcmp(tqkv_op_name(-1), "UNKNOWN") == 0);
}

static const tqkv_test_case cases[] = {
    {"preamble_roundtrip", test_preamble_roundtrip},
    {"preamble_errors", test_preamble_errors},
    {"header_roundtrip", test_header_roundtrip},
    {"header_empty", test_header_empty},
    {"header_malformed", test_header_malformed},
    {"keys_and_totals", test_keys_and_totals},
    {"op_names", test_op_names},
    {NULL, NULL},
};

int main(int argc, char **argv)
{
    return tqkv_test_main(argc, argv, cases);
}
