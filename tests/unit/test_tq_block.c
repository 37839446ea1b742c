/* Blocks: encode/parse/decode round trip, the header + seal path of the GPU encoder, per-layer
 * recipe overrides, layer-range slices, and the parser against malformed and random-corrupted
 * input (each kind of damage gets its own error code; none may crash or pass). */
#include <xxhash.h>

#include "tq_internal.h"
#include "tq_test_util.h"
#include "tqkv_endian.h"
#include "tqkv_test.h"

enum { NL = 3, H = 2, D = 96, T = 17 };

static uint8_t g_key[TQ_KEY_BYTES];

static void *make_packed(tq_dtype dt, uint64_t seed, size_t *len)
{
    size_t n = (size_t)NL * 2 * T * H * D;
    *len = n * tq_dtype_size(dt);
    uint8_t *buf = malloc(*len);
    tq_rng rng = {.s = seed};
    for (size_t i = 0; i < n; i++) {
        float x = (float)tq_rng_gauss(&rng);
        if (dt == TQ_DTYPE_F16)
            ((uint16_t *)buf)[i] = tq__f32_to_f16(x);
        else if (dt == TQ_DTYPE_BF16)
            ((uint16_t *)buf)[i] = tq__f32_to_bf16(x);
        else
            ((float *)buf)[i] = x;
    }
    return buf;
}

static uint8_t *make_block(const tq_codec_params *p, size_t *len)
{
    size_t kvlen;
    void *kv = make_packed((tq_dtype)p->src_dtype, 1, &kvlen);
    size_t cap = tq_block_size(p, T, 0, p->n_layers);
    uint8_t *b = malloc(cap);
    int rc = tq_block_encode_packed(p, g_key, T, kv, kvlen, b, cap, len);
    free(kv);
    if (rc) {
        free(b);
        return NULL;
    }
    return b;
}

static void test_roundtrip(void)
{
    tq_codec_params p;
    ASSERT_OK(tq_codec_params_init(&p, "tq3.5", NL, H, D, TQ_DTYPE_F16));
    size_t len, kvlen;
    uint8_t *b = make_block(&p, &len);
    ASSERT_TRUE(b != NULL);
    ASSERT_EQ_U64(len, tq_block_size(&p, T, 0, NL));
    ASSERT_EQ_U64(len % 64, 0);
    tq_block_view v;
    ASSERT_OK(tq_block_parse(b, len, 0, &v));
    ASSERT_EQ_INT(v.n_tokens, T);
    ASSERT_EQ_INT(v.n_layers, NL);
    ASSERT_EQ_INT(v.head_dim_padded, 128);
    ASSERT_EQ_INT(v.n_recipes, 2); /* tq3.5: K split 4/2, V 4 bits */
    ASSERT_MEM_EQ(v.key, g_key, TQ_KEY_BYTES);
    /* block decode equals section decode of each layer */
    size_t per = (size_t)T * H * D;
    float *out = malloc(per * 2 * NL * 4), *sec_out = malloc(per * 4);
    ASSERT_OK(tq_block_decode(&v, 0, NL, TQ_DTYPE_F32, out, per * 2 * NL * 4));
    void *kv = make_packed(TQ_DTYPE_F16, 1, &kvlen);
    double e = 0, s = 0;
    for (uint32_t l = 0; l < NL; l++)
        for (int t = 0; t < 2; t++) {
            const uint8_t *sec;
            size_t sl;
            tq_recipe r;
            ASSERT_OK(tq_block_section(&v, l, (tq_tensor)t, &sec, &sl, &r));
            ASSERT_EQ_U64((uintptr_t)(sec - b) % 64, 0);
            ASSERT_OK(tq_decode_section(&r, D, H, T, v.seed, TQ_CODEBOOK_EXACT, sec, sl,
                                        TQ_DTYPE_F32, sec_out, per * 4));
            ASSERT_MEM_EQ(sec_out, out + per * (2 * l + t), per * 4);
            for (size_t i = 0; i < per; i++) {
                float x = tq__f16_to_f32(((uint16_t *)kv)[per * (2 * l + t) + i]);
                e += (double)(x - sec_out[i]) * (x - sec_out[i]);
                s += (double)x * x;
            }
        }
    ASSERT_LE(e / s, 0.03);
    ASSERT_ERR(tq_block_section(&v, NL, TQ_K, NULL, NULL, NULL), TQKV_EINVAL);
    const uint8_t *sec;
    size_t sl;
    ASSERT_ERR(tq_block_section(&v, NL, TQ_K, &sec, &sl, NULL), TQKV_EBADLAYERS);
    ASSERT_ERR(tq_block_decode(&v, 0, NL, TQ_DTYPE_F32, out, per * 2 * NL * 4 - 1), TQKV_ENOSPC);
    free(kv);
    free(out);
    free(sec_out);
    free(b);
}

static void test_header_seal_path(void)
{
    /* what the GPU path does: header, sections filled separately, seal -> same bytes */
    tq_codec_params p;
    ASSERT_OK(tq_codec_params_init(&p, "tq3-prod", NL, H, D, TQ_DTYPE_F32));
    size_t len, kvlen, hl;
    uint8_t *ref = make_block(&p, &len);
    ASSERT_TRUE(ref != NULL);
    uint8_t *b = malloc(len);
    memset(b, 0xAB, len);
    ASSERT_OK(tq_block_write_header(&p, g_key, T, b, len, &hl));
    ASSERT_EQ_U64(hl, len);
    tq_block_view v;
    ASSERT_ERR(tq_block_parse(b, len, 0, &v), TQKV_EHDRCHECKSUM);
    float *kv = make_packed(TQ_DTYPE_F32, 1, &kvlen);
    size_t per = (size_t)T * H * D;
    const uint8_t *lt = b + 128 + 16 * 2;
    for (uint32_t l = 0; l < NL; l++) {
        uint64_t koff = tqkv_load_le64(lt + 32 * l);
        uint32_t ks = tqkv_load_le32(lt + 32 * l + 8), vs = tqkv_load_le32(lt + 32 * l + 12);
        uint64_t voff = (koff + ks + 63) / 64 * 64;
        tq_kv_view kvv = tq_kv_view_contiguous(kv + per * (2 * l), TQ_DTYPE_F32, H, D);
        tq_kv_view vvv = tq_kv_view_contiguous(kv + per * (2 * l + 1), TQ_DTYPE_F32, H, D);
        ASSERT_OK(tq_encode_section(&p.k, D, H, T, p.seed, TQ_CODEBOOK_EXACT, &kvv, b + koff, ks));
        ASSERT_OK(tq_encode_section(&p.v, D, H, T, p.seed, TQ_CODEBOOK_EXACT, &vvv, b + voff, vs));
    }
    ASSERT_OK(tq_block_seal(b, len));
    ASSERT_MEM_EQ(b, ref, len);
    ASSERT_OK(tq_block_parse(b, len, 0, &v));
    ASSERT_EQ_INT(v.n_recipes, 2);
    free(kv);
    free(b);
    free(ref);
}

static void test_layer_overrides_and_slice(void)
{
    tq_codec_params p;
    ASSERT_OK(tq_codec_params_init(&p, "tq2.5", NL, H, D, TQ_DTYPE_BF16));
    tq_recipe kl[NL], vl[NL];
    for (int l = 0; l < NL; l++) {
        kl[l] = p.k;
        vl[l] = p.v;
    }
    ASSERT_OK(tq_preset("bf16", D, &kl[0], &vl[0])); /* first layer lossless */
    ASSERT_OK(tq_preset("tq4-prod", D, &kl[NL - 1], &vl[NL - 1]));
    p.k_layers = kl;
    p.v_layers = vl;
    ASSERT_OK(tq_codec_params_validate(&p));
    size_t len, kvlen;
    uint8_t *b = make_block(&p, &len);
    ASSERT_TRUE(b != NULL);
    tq_block_view v;
    ASSERT_OK(tq_block_parse(b, len, 0, &v));
    ASSERT_EQ_INT(v.n_recipes, 5); /* bf16; tq2.5 K, V; tq4-prod K, tq4 V */
    size_t per = (size_t)T * H * D;
    uint16_t *full = malloc(per * 2 * NL * 2);
    ASSERT_OK(tq_block_decode(&v, 0, NL, TQ_DTYPE_BF16, full, per * 2 * NL * 2));
    uint16_t *kv = make_packed(TQ_DTYPE_BF16, 1, &kvlen);
    ASSERT_MEM_EQ(full, kv, per * 2 * 2); /* layer 0 is bit-exact */
    /* slice layers 1..2, parse, decode, compare */
    size_t ss = tq_block_slice_size(&v, 1, 2);
    ASSERT_TRUE(ss > 0 && ss < len);
    uint8_t *sl = malloc(ss);
    size_t sl_len;
    ASSERT_ERR(tq_block_slice(&v, 1, 2, sl, ss - 1, &sl_len), TQKV_ENOSPC);
    ASSERT_OK(tq_block_slice(&v, 1, 2, sl, ss, &sl_len));
    ASSERT_EQ_U64(sl_len, ss);
    tq_block_view sv;
    ASSERT_OK(tq_block_parse(sl, sl_len, 0, &sv));
    ASSERT_EQ_INT(sv.flags & 1, 1);
    ASSERT_EQ_INT(sv.layer_begin, 1);
    ASSERT_EQ_INT(sv.n_layers, 2);
    uint16_t *part = malloc(per * 2 * 2 * 2);
    ASSERT_OK(tq_block_decode(&sv, 1, 2, TQ_DTYPE_BF16, part, per * 2 * 2 * 2));
    ASSERT_MEM_EQ(part, full + per * 2, per * 2 * 2 * 2);
    ASSERT_ERR(tq_block_decode(&sv, 0, 1, TQ_DTYPE_BF16, part, per * 2 * 2 * 2), TQKV_EBADLAYERS);
    /* a slice of a slice */
    tq_block_view ssv;
    uint8_t *s2 = malloc(tq_block_slice_size(&sv, 2, 1));
    ASSERT_OK(tq_block_slice(&sv, 2, 1, s2, tq_block_slice_size(&sv, 2, 1), &sl_len));
    ASSERT_OK(tq_block_parse(s2, sl_len, 0, &ssv));
    ASSERT_EQ_INT(ssv.layer_begin, 2);
    /* more than 8 distinct recipes cannot be described */
    tq_codec_params q;
    ASSERT_OK(tq_codec_params_init(&q, "tq3", 5, H, D, TQ_DTYPE_F16));
    tq_recipe mk[5], mv[5];
    for (int l = 0; l < 5; l++) {
        mk[l] = (tq_recipe){.mode = TQ_MODE_MSE, .bits = (uint8_t)(l + 1 == 5 ? 8 : l + 1)};
        mv[l] = (tq_recipe){.mode = TQ_MODE_PROD, .bits = (uint8_t)(l + 1)};
    }
    q.k_layers = mk;
    q.v_layers = mv;
    ASSERT_ERR(tq_codec_params_validate(&q), TQKV_EBADCODEC);
    ASSERT_EQ_U64(tq_block_size(&q, T, 0, 5), 0);
    mv[4] = mk[4];
    mv[3] = mk[3];
    ASSERT_OK(tq_codec_params_validate(&q)); /* 8 */
    free(s2);
    free(part);
    free(sl);
    free(kv);
    free(full);
    free(b);
}

static void rehash(uint8_t *b)
{
    uint32_t po = tqkv_load_le32(b + 84);
    uint8_t *tmp = malloc(po);
    memcpy(tmp, b, po);
    memset(tmp + 120, 0, 8);
    tqkv_store_le64(b + 120, XXH3_64bits(tmp, po));
    free(tmp);
}

static void test_malformed(void)
{
    tq_codec_params p;
    ASSERT_OK(tq_codec_params_init(&p, "tq3.5", NL, H, D, TQ_DTYPE_F16));
    size_t len;
    uint8_t *good = make_block(&p, &len);
    ASSERT_TRUE(good != NULL);
    uint8_t *b = malloc(len + 64);
    tq_block_view v;
    uint32_t lt = 128 + 2 * 16; /* two recipes (tq3.5: K and V differ) */
    uint64_t k0 = tqkv_load_le64(good + lt);
    int codes_seen[64] = {0};
#define CASE(mutation, resign, want_len, code)                                                     \
    do {                                                                                           \
        memcpy(b, good, len);                                                                      \
        size_t L_ = (want_len);                                                                    \
        mutation;                                                                                  \
        if (resign)                                                                                \
            rehash(b);                                                                             \
        ASSERT_ERR(tq_block_parse(b, L_, 0, &v), code);                                            \
        codes_seen[-(code)] = 1;                                                                   \
    } while (0)
    CASE((void)0, 0, 100, TQKV_ETRUNCATED);                               /* short header */
    CASE(b[3] = 'X', 0, len, TQKV_EBADMAGIC);                             /* magic */
    CASE(tqkv_store_le16(b + 8, 2), 0, len, TQKV_EBADVERSION);            /* version */
    CASE((void)0, 0, len - 64, TQKV_ETRUNCATED);                          /* truncated payload */
    CASE(tqkv_store_le16(b + 10, 64), 0, len, TQKV_EBADHEADER);           /* header_size */
    CASE(b[130] ^= 1, 0, len, TQKV_EHDRCHECKSUM);                         /* flipped recipe bit */
    CASE(b[len - 64 - 1] ^= 0x10, 0, len, TQKV_ECHECKSUM);                /* flipped payload bit */
    CASE(tqkv_store_le32(b + 84, 512), 0, len, TQKV_EBADOFFSET);          /* payload_offset */
    CASE(tqkv_store_le16(b + 76, 300), 1, len, TQKV_EBADGEOMETRY);        /* head_dim > 256 */
    CASE(tqkv_store_le16(b + 78, 64), 1, len, TQKV_EBADGEOMETRY);         /* wrong padded dim */
    CASE(b[129] = 7, 1, len, TQKV_EBADCODEC);                             /* recipe bits */
    CASE(b[lt + 16] = 3, 1, len, TQKV_EBADCODEC);                         /* recipe index */
    CASE(tqkv_store_le64(b + lt, k0 + 64), 1, len, TQKV_EBADOFFSET);      /* section offset */
    CASE(tqkv_store_le32(b + lt + 8, 4), 1, len, TQKV_EBADOFFSET);        /* section size */
    CASE(b[80] = 9, 1, len, TQKV_EBADDTYPE);                              /* src dtype */
    CASE(tqkv_store_le16(b + 70, 1), 1, len, TQKV_EBADLAYERS);            /* range w/o flag */
    CASE(tqkv_store_le16(b + 68, 2), 1, len, TQKV_EBADLAYERS);            /* range > total */
    CASE(b[100] = 1, 1, len, TQKV_EBADPADDING);                           /* reserved header */
    CASE(tqkv_store_le32(b + 12, 6), 1, len, TQKV_EBADHEADER);            /* unknown flags */
    CASE(tqkv_store_le64(b + 48, len + 64), 0, len + 64, TQKV_EHDRCHECKSUM); /* total_size */
    CASE(tqkv_store_le32(b + k0, 0xffffffffu), 0, len, TQKV_ECHECKSUM);
    /* an outlier mask with too many bits, with valid checksums: only the semantic check sees it */
    memcpy(b, good, len);
    tqkv_store_le32(b + k0, tqkv_load_le32(b + k0) | 0xffffffffu);
    {
        uint64_t end = tqkv_load_le64(b + lt + 32);
        tqkv_store_le64(b + lt + 24, XXH3_64bits(b + k0, (size_t)(end - k0)));
        rehash(b);
        ASSERT_ERR(tq_block_parse(b, len, 0, &v), TQKV_EBADMASK);
        codes_seen[-TQKV_EBADMASK] = 1;
        float *o = malloc((size_t)T * H * D * 4);
        ASSERT_ERR(tq_decode_section(&p.k, D, H, T, p.seed, TQ_CODEBOOK_EXACT, b + k0,
                                     tqkv_load_le32(b + lt + 8), TQ_DTYPE_F32, o,
                                     (size_t)T * H * D * 4),
                   TQKV_EBADMASK);
        free(o);
    }
    int distinct = 0;
    for (int i = 0; i < 64; i++)
        distinct += codes_seen[i];
    fprintf(stderr, "  %d distinct errors\n", distinct);
    ASSERT_TRUE(distinct >= 12);
    ASSERT_OK(tq_block_parse(good, len, 0, &v));
#undef CASE
    free(b);
    free(good);
}

static void test_fuzz(void)
{
    /* random bit flips and truncations: never accepted, never a crash (ASan watches) */
    tq_codec_params p;
    ASSERT_OK(tq_codec_params_init(&p, "tq2.5-prod", NL, H, D, TQ_DTYPE_F16));
    size_t len;
    uint8_t *good = make_block(&p, &len);
    ASSERT_TRUE(good != NULL);
    tq_rng rng = {.s = 2024};
    tq_block_view v;
    for (int i = 0; i < 3000; i++) {
        size_t L = len;
        uint8_t *b = malloc(len);
        memcpy(b, good, len);
        int nflip = 1 + (int)(tq_rng_u64(&rng) % 4);
        for (int f = 0; f < nflip; f++) {
            size_t at = tq_rng_u64(&rng) % (i & 1 ? 256 : len);
            b[at] ^= (uint8_t)(1u << (tq_rng_u64(&rng) % 8));
        }
        if (i % 7 == 0)
            L = tq_rng_u64(&rng) % len;
        int rc = tq_block_parse(b, L, 0, &v);
        if (memcmp(b, good, L) || L != len)
            ASSERT_TRUE(rc < 0);
        free(b);
    }
    free(good);
}

static const tqkv_test_case cases[] = {
    {"roundtrip", test_roundtrip},
    {"header_seal_path", test_header_seal_path},
    {"layer_overrides_and_slice", test_layer_overrides_and_slice},
    {"malformed", test_malformed},
    {"fuzz", test_fuzz},
    {NULL, NULL},
};

int main(int argc, char **argv)
{
    for (int i = 0; i < TQ_KEY_BYTES; i++)
        g_key[i] = (uint8_t)(i * 7 + 1);
    return tqkv_test_main(argc, argv, cases);
}
