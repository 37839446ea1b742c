/* GPU tests of libtq's CUDA path against the CPU reference: encoded sections (every preset and
 * source dtype, contiguous and paged views) must equal tq_encode_section byte for byte, whole
 * blocks must equal tq_block_encode after sealing, decoded values must equal
 * tq_decode_section's, and decode attention over encoded chunks must match tq_attention_cpu
 * within a normalised error bound. Without a CUDA device every case skips (exit 77). */
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tq.h"
#include "tq_cuda.h"
#include "tq_test_util.h"
#include "tqkv_test.h"

#define NEED_GPU()                                                                                 \
    do {                                                                                           \
        if (tq_cuda_device_count() <= 0)                                                           \
            TEST_SKIP("no CUDA device");                                                           \
    } while (0)
#define CU(x) ASSERT_EQ_INT((x), cudaSuccess)

static uint16_t f32_to_f16(float f)
{
    /* round to nearest even through the CPU library's reference conversion path */
    uint32_t x;
    memcpy(&x, &f, 4);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u)
        return (uint16_t)(sign | (ax > 0x7f800000u ? 0x7e00 : 0x7c00));
    if (ax >= 0x47800000u)
        return (uint16_t)(sign | 0x7c00);
    if (ax < 0x38800000u) {
        float v;
        memcpy(&v, &ax, 4);
        v += 0.5f;
        uint32_t u;
        memcpy(&u, &v, 4);
        return (uint16_t)(sign | (u - 0x3f000000u));
    }
    ax += 0xc8000fffu + ((ax >> 13) & 1);
    return (uint16_t)(sign | (ax >> 13));
}
static float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, u;
    float f;
    if (exp == 0x1f)
        u = sign | 0x7f800000u | (mant << 13);
    else if (exp == 0) {
        f = (float)mant * 5.9604644775390625e-08f;
        return sign ? -f : f;
    } else
        u = sign | ((exp + 112) << 23) | (mant << 13);
    memcpy(&f, &u, 4);
    return f;
}
static uint16_t f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((x >> 16) | 0x40);
    x += 0x7fffu + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}
static float bf16_to_f32(uint16_t b)
{
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Fills n elements of dtype with Gaussian values; a few channels get 8x the energy (so the
 * outlier split has something to find) and, when `specials`, a few NaN/Inf/subnormal values. */
static void fill_kv(tq_rng *r, void *buf, tq_dtype dt, size_t n, uint32_t head_dim, int specials)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t j = (uint32_t)(i % head_dim);
        float v = (float)tq_rng_gauss(r) * ((j % 7 == 3) ? 8.0f : 1.0f);
        if (specials && i % 997 == 5)
            v = (i % 3 == 0) ? NAN : (i % 3 == 1) ? INFINITY : 1e-41f;
        if (dt == TQ_DTYPE_F16)
            ((uint16_t *)buf)[i] = f32_to_f16(v);
        else if (dt == TQ_DTYPE_BF16)
            ((uint16_t *)buf)[i] = f32_to_bf16(v);
        else
            ((float *)buf)[i] = v;
    }
}

/* Counts differing bytes, prints the first, and fails above 1e-6 of the section. */
static void compare_bytes(const char *what, const uint8_t *gpu, const uint8_t *cpu, size_t n)
{
    size_t diff = 0, first = n;
    for (size_t i = 0; i < n; i++)
        if (gpu[i] != cpu[i]) {
            if (first == n)
                first = i;
            diff++;
        }
    double frac = n ? (double)diff / (double)n : 0.0;
    if (diff)
        fprintf(stderr, "%s: %zu of %zu bytes differ (fraction %.3g), first at %zu: gpu 0x%02x "
                        "cpu 0x%02x\n", what, diff, n, frac, first, gpu[first], cpu[first]);
    ASSERT_LE(frac, 1e-6);
}

typedef struct {
    uint32_t head_dim, heads, tokens;
} geom;

static const geom g_geoms[] = {
    {128, 4, 37}, /* the common head size, odd token count */
    {64, 2, 256}, /* a full chunk */
    {96, 3, 5},   /* padded head dim (P = 128) */
    {32, 2, 33},  /* smallest P: outlier parts of 16 */
    {256, 1, 9},  /* largest P */
    {128, 2, 200}, /* several 32-token encode tiles and energy tiles, the last ones partial */
};

/* Encodes one section on both sides (view `v` on the host for the CPU, its device copy for the
 * GPU) and compares the bytes. */
static void check_section(const char *preset, const geom *g, tq_dtype dt, int paged)
{
    tq_recipe rk, rv;
    ASSERT_OK(tq_preset(preset, g->head_dim, &rk, &rv));
    tq_rng rng = {0x1234 + g->head_dim * 7 + dt * 131 + (uint64_t)paged, 0, 0.0};
    size_t es = tq_dtype_size(dt);
    const uint32_t page_size = 16, page_offset = paged ? 5 : 0;
    uint32_t n_pages = (g->tokens + page_offset + page_size - 1) / page_size;
    size_t row = (size_t)g->heads * g->head_dim;
    size_t n_elems = paged ? (size_t)(n_pages + 3) * page_size * row : (size_t)g->tokens * row;
    uint8_t *host = malloc(n_elems * es);
    int32_t pages[64];
    ASSERT_TRUE(host && n_pages <= 64);
    fill_kv(&rng, host, dt, n_elems, g->head_dim, 1);
    tq_kv_view hv = tq_kv_view_contiguous(host, dt, g->heads, g->head_dim);
    if (paged) {
        for (uint32_t i = 0; i < n_pages; i++)
            pages[i] = (int32_t)((i * 5 + 2) % (n_pages + 3)); /* scattered, distinct pages */
        hv.pages = pages;
        hv.page_size = page_size;
        hv.page_offset = page_offset;
        hv.page_stride = (int64_t)page_size * row;
    }
    void *dsrc = NULL, *ddst = NULL;
    int32_t *dpages = NULL;
    for (int t = 0; t < 2; t++) {
        const tq_recipe *r = t ? &rv : &rk;
        size_t sz = tq_section_size(r, g->head_dim, g->heads, g->tokens);
        ASSERT_TRUE(sz > 0);
        uint8_t *cpu = malloc(sz), *gpu = malloc(sz);
        ASSERT_TRUE(cpu && gpu);
        ASSERT_OK(tq_encode_section(r, g->head_dim, g->heads, g->tokens, 77, TQ_CODEBOOK_EXACT,
                                    &hv, cpu, sz));
        CU(cudaMalloc(&dsrc, n_elems * es));
        CU(cudaMalloc(&ddst, sz));
        CU(cudaMalloc((void **)&dpages, sizeof(pages)));
        CU(cudaMemcpy(dsrc, host, n_elems * es, cudaMemcpyHostToDevice));
        CU(cudaMemcpy(dpages, pages, sizeof(pages), cudaMemcpyHostToDevice));
        CU(cudaMemset(ddst, 0xAB, sz)); /* every byte must be written by the encoder */
        tq_kv_view dv = hv;
        dv.data = dsrc;
        dv.pages = paged ? dpages : NULL;
        ASSERT_OK(tq_cuda_encode_section(r, g->head_dim, g->heads, g->tokens, 77,
                                         TQ_CODEBOOK_EXACT, &dv, ddst, sz, NULL));
        CU(cudaMemcpy(gpu, ddst, sz, cudaMemcpyDeviceToHost));
        char what[128];
        snprintf(what, sizeof(what), "%s %s d=%u H=%u T=%u dtype=%d%s", preset, t ? "V" : "K",
                 g->head_dim, g->heads, g->tokens, dt, paged ? " paged" : "");
        compare_bytes(what, gpu, cpu, sz);
        cudaFree(dsrc);
        cudaFree(ddst);
        cudaFree(dpages);
        free(cpu);
        free(gpu);
        TQKV_TEST_CHECK();
    }
    free(host);
}

static void test_encode_equals_cpu(void)
{
    NEED_GPU();
    const char *const *names = tq_preset_names();
    static const tq_dtype dts[] = {TQ_DTYPE_F16, TQ_DTYPE_BF16, TQ_DTYPE_F32};
    for (const char *const *n = names; *n; n++)
        for (size_t g = 0; g < sizeof(g_geoms) / sizeof(g_geoms[0]); g++)
            for (size_t d = 0; d < 3; d++) {
                check_section(*n, &g_geoms[g], dts[d], 0);
                TQKV_TEST_CHECK();
            }
}

static void test_encode_paged_equals_cpu(void)
{
    NEED_GPU();
    static const char *const presets[] = {"tq4", "tq3.5", "tq3-prod", "fp16"};
    for (size_t i = 0; i < 4; i++) {
        check_section(presets[i], &g_geoms[0], TQ_DTYPE_F16, 1);
        TQKV_TEST_CHECK();
        check_section(presets[i], &g_geoms[2], TQ_DTYPE_BF16, 1);
        TQKV_TEST_CHECK();
    }
}

/* Norm variants and codebook kinds beyond the presets' defaults. */
static void test_encode_recipes_equal_cpu(void)
{
    NEED_GPU();
    static const tq_recipe recipes[] = {
        {TQ_MODE_MSE, 4, 0, TQ_NORM_PLAIN, 0, 0},     {TQ_MODE_MSE, 4, 0, TQ_NORM_UNBIASED, 0, 0},
        {TQ_MODE_MSE, 8, 0, TQ_NORM_CORRECTED, 0, 0}, {TQ_MODE_MSE, 1, 0, TQ_NORM_PLAIN, 0, 0},
        {TQ_MODE_PROD, 1, 0, TQ_NORM_PLAIN, 0, 0},    {TQ_MODE_PROD, 5, 0, TQ_NORM_UNBIASED, 0, 0},
        {TQ_MODE_MSE, 2, 8, TQ_NORM_PLAIN, 64, 0},    {TQ_MODE_PROD, 2, 4, TQ_NORM_CORRECTED, 64, 0},
    };
    const geom g = {128, 2, 19};
    tq_rng rng = {99, 0, 0.0};
    size_t n = (size_t)g.tokens * g.heads * g.head_dim;
    uint16_t *host = malloc(n * 2);
    ASSERT_TRUE(host != NULL);
    fill_kv(&rng, host, TQ_DTYPE_F16, n, g.head_dim, 0);
    void *dsrc = NULL, *ddst = NULL;
    CU(cudaMalloc(&dsrc, n * 2));
    CU(cudaMemcpy(dsrc, host, n * 2, cudaMemcpyHostToDevice));
    for (size_t i = 0; i < sizeof(recipes) / sizeof(recipes[0]); i++)
        for (int cb = 0; cb < 2; cb++) {
            const tq_recipe *r = &recipes[i];
            size_t sz = tq_section_size(r, g.head_dim, g.heads, g.tokens);
            ASSERT_TRUE(sz > 0);
            uint8_t *cpu = malloc(sz), *gpu = malloc(sz);
            ASSERT_TRUE(cpu && gpu);
            tq_kv_view hv = tq_kv_view_contiguous(host, TQ_DTYPE_F16, g.heads, g.head_dim);
            tq_kv_view dv = hv;
            dv.data = dsrc;
            ASSERT_OK(tq_encode_section(r, g.head_dim, g.heads, g.tokens, 5,
                                        (tq_codebook_kind)cb, &hv, cpu, sz));
            CU(cudaMalloc(&ddst, sz));
            ASSERT_OK(tq_cuda_encode_section(r, g.head_dim, g.heads, g.tokens, 5,
                                             (tq_codebook_kind)cb, &dv, ddst, sz, NULL));
            CU(cudaMemcpy(gpu, ddst, sz, cudaMemcpyDeviceToHost));
            char what[96];
            snprintf(what, sizeof(what), "recipe %zu codebook %d", i, cb);
            compare_bytes(what, gpu, cpu, sz);
            cudaFree(ddst);
            free(cpu);
            free(gpu);
            TQKV_TEST_CHECK();
        }
    cudaFree(dsrc);
    free(host);
}

static void test_decode_equals_cpu(void)
{
    NEED_GPU();
    static const char *const presets[] = {"tq4", "tq3.5", "tq3", "tq2.5", "tq4-prod",
                                          "tq3-prod", "tq2.5-prod", "bf16"};
    static const tq_dtype outs[] = {TQ_DTYPE_F32, TQ_DTYPE_F16, TQ_DTYPE_BF16};
    for (size_t pi = 0; pi < sizeof(presets) / sizeof(presets[0]); pi++)
        for (size_t gi = 0; gi < sizeof(g_geoms) / sizeof(g_geoms[0]); gi++) {
            const geom *g = &g_geoms[gi];
            tq_recipe rk, rv;
            ASSERT_OK(tq_preset(presets[pi], g->head_dim, &rk, &rv));
            size_t n = (size_t)g->tokens * g->heads * g->head_dim;
            float *host = malloc(n * 4);
            tq_rng rng = {gi * 31 + pi, 0, 0.0};
            ASSERT_TRUE(host != NULL);
            fill_kv(&rng, host, TQ_DTYPE_F32, n, g->head_dim, 0);
            tq_kv_view hv = tq_kv_view_contiguous(host, TQ_DTYPE_F32, g->heads, g->head_dim);
            size_t sz = tq_section_size(&rk, g->head_dim, g->heads, g->tokens);
            uint8_t *sec = malloc(sz);
            ASSERT_TRUE(sec != NULL);
            ASSERT_OK(tq_encode_section(&rk, g->head_dim, g->heads, g->tokens, 3,
                                        TQ_CODEBOOK_EXACT, &hv, sec, sz));
            void *dsec = NULL, *dout = NULL;
            CU(cudaMalloc(&dsec, sz));
            CU(cudaMalloc(&dout, n * 4));
            CU(cudaMemcpy(dsec, sec, sz, cudaMemcpyHostToDevice));
            for (size_t oi = 0; oi < 3; oi++) {
                size_t ob = n * tq_dtype_size(outs[oi]);
                uint8_t *cpu = malloc(ob), *gpu = malloc(ob);
                ASSERT_TRUE(cpu && gpu);
                ASSERT_OK(tq_decode_section(&rk, g->head_dim, g->heads, g->tokens, 3,
                                            TQ_CODEBOOK_EXACT, sec, sz, outs[oi], cpu, ob));
                ASSERT_OK(tq_cuda_decode_section(&rk, g->head_dim, g->heads, g->tokens, 3,
                                                 TQ_CODEBOOK_EXACT, dsec, sz, outs[oi], dout, ob,
                                                 NULL));
                CU(cudaMemcpy(gpu, dout, ob, cudaMemcpyDeviceToHost));
                char what[96];
                snprintf(what, sizeof(what), "decode %s d=%u out=%d", presets[pi], g->head_dim,
                         outs[oi]);
                compare_bytes(what, gpu, cpu, ob);
                free(cpu);
                free(gpu);
                TQKV_TEST_CHECK();
            }
            cudaFree(dsec);
            cudaFree(dout);
            free(sec);
            free(host);
        }
}

/* A whole block with per-layer overrides (first layer lossless), then sealed on the host. */
static void test_block_equals_cpu(void)
{
    NEED_GPU();
    static const char *const presets[] = {"tq3.5", "tq4-prod"};
    for (size_t pi = 0; pi < 2; pi++) {
        tq_codec_params p;
        const uint16_t L = 3, H = 2, D = 128;
        const uint32_t T = 41;
        ASSERT_OK(tq_codec_params_init(&p, presets[pi], L, H, D, TQ_DTYPE_BF16));
        tq_recipe kl[3], vl[3];
        for (int l = 0; l < L; l++) {
            kl[l] = p.k;
            vl[l] = p.v;
        }
        ASSERT_OK(tq_preset("bf16", D, &kl[0], &vl[0]));
        p.k_layers = kl;
        p.v_layers = vl;
        uint8_t key[TQ_KEY_BYTES];
        for (int i = 0; i < TQ_KEY_BYTES; i++)
            key[i] = (uint8_t)(i * 3 + 1);
        size_t per = (size_t)T * H * D, bsz = tq_block_size(&p, T, 0, L);
        ASSERT_TRUE(bsz > 0);
        uint16_t *kv = malloc(2 * L * per * 2);
        uint8_t *cpu = malloc(bsz), *gpu = malloc(bsz);
        ASSERT_TRUE(kv && cpu && gpu);
        tq_rng rng = {pi + 11, 0, 0.0};
        fill_kv(&rng, kv, TQ_DTYPE_BF16, 2 * L * per, D, 0);
        tq_kv_view hk[3], hv[3], dk[3], dvv[3];
        void *dkv = NULL, *dblk = NULL;
        CU(cudaMalloc(&dkv, 2 * L * per * 2));
        CU(cudaMalloc(&dblk, bsz));
        CU(cudaMemcpy(dkv, kv, 2 * L * per * 2, cudaMemcpyHostToDevice));
        CU(cudaMemset(dblk, 0xAB, bsz)); /* padding too must be written by the encoder */
        for (int l = 0; l < L; l++) {
            hk[l] = tq_kv_view_contiguous(kv + (2 * l) * per, TQ_DTYPE_BF16, H, D);
            hv[l] = tq_kv_view_contiguous(kv + (2 * l + 1) * per, TQ_DTYPE_BF16, H, D);
            dk[l] = tq_kv_view_contiguous((uint16_t *)dkv + (2 * l) * per, TQ_DTYPE_BF16, H, D);
            dvv[l] = tq_kv_view_contiguous((uint16_t *)dkv + (2 * l + 1) * per, TQ_DTYPE_BF16, H,
                                           D);
        }
        size_t cl = 0, gl = 0;
        ASSERT_OK(tq_block_encode(&p, key, T, hk, hv, cpu, bsz, &cl));
        ASSERT_OK(tq_cuda_block_encode(&p, key, T, dk, dvv, gpu, bsz, dblk, bsz, &gl, NULL));
        ASSERT_EQ_U64(gl, cl);
        CU(cudaMemcpy(gpu, dblk, gl, cudaMemcpyDeviceToHost));
        ASSERT_OK(tq_block_seal(gpu, gl));
        compare_bytes(presets[pi], gpu, cpu, cl);
        TQKV_TEST_CHECK();
        tq_block_view bv;
        ASSERT_OK(tq_block_parse(gpu, gl, 0, &bv));
        /* whole-block decode of layers 1..2 on the GPU equals tq_block_decode */
        size_t db = 2 * 2 * per * 2;
        uint8_t *cdec = malloc(db), *gdec = malloc(db);
        void *ddec = NULL;
        ASSERT_TRUE(cdec && gdec);
        CU(cudaMalloc(&ddec, db));
        ASSERT_OK(tq_block_decode(&bv, 1, 2, TQ_DTYPE_F16, cdec, db));
        ASSERT_OK(tq_cuda_block_decode(&bv, dblk, 1, 2, TQ_DTYPE_F16, ddec, db, NULL));
        CU(cudaMemcpy(gdec, ddec, db, cudaMemcpyDeviceToHost));
        compare_bytes("block decode", gdec, cdec, db);
        ASSERT_ERR(tq_cuda_block_decode(&bv, dblk, 2, 2, TQ_DTYPE_F16, ddec, db, NULL),
                   TQKV_EBADLAYERS);
        cudaFree(ddec);
        free(cdec);
        free(gdec);
        TQKV_TEST_CHECK();
        cudaFree(dkv);
        cudaFree(dblk);
        free(kv);
        free(cpu);
        free(gpu);
    }
}

/* ---- Attention ---------------------------------------------------------------------------- */

typedef struct {
    const char *preset;
    uint32_t head_dim, n_kv, group, chunk;
    uint32_t n_seqs;
    uint32_t lens[4];
    uint32_t max_splits;
    uint8_t general; /* 1: force the general kernel where the tensor-core one would run */
} att_case;

static const att_case g_att[] = {
    {"tq4", 128, 2, 1, 64, 1, {1}, 0, 0},                     /* a single token */
    {"tq3", 128, 2, 4, 64, 2, {37, 200}, 0, 0},               /* odd lengths, GQA 4 */
    {"tq3.5", 128, 2, 8, 64, 3, {130, 7, 64}, 0, 0},          /* outliers, GQA 8 */
    {"tq2.5", 64, 1, 4, 32, 2, {100, 33}, 1, 0},              /* outliers, one split */
    {"tq4-prod", 128, 2, 4, 256, 2, {3000, 513}, 0, 0},       /* long, split-KV merge */
    {"tq3-prod", 128, 1, 8, 128, 1, {1000}, 3, 0},            /* prod keys, GQA 8 */
    {"tq3.5-prod", 128, 2, 1, 96, 2, {500, 97}, 0, 0},        /* prod + outliers, odd chunk */
    {"tq4", 256, 1, 2, 64, 2, {150, 70}, 0, 0},               /* largest head dim */
    {"tq3", 96, 2, 4, 64, 4, {65, 1, 128, 300}, 0, 0},        /* padded head dim, 4 sequences */
    /* d = 128 with one part per tensor runs the tensor-core kernel; these also cover it with
     * whole 32-token tiles (chunks of 256), 16 query heads per KV head, and the general kernel
     * on the same geometry */
    {"tq4", 128, 2, 16, 256, 2, {2000, 300}, 0, 0},        /* tensor cores, GQA 16 */
    {"tq3", 128, 1, 4, 256, 3, {4096, 31, 700}, 0, 0},     /* tensor cores, long + short */
    {"tq3-prod", 128, 2, 2, 256, 1, {1024}, 2, 0},          /* tensor cores, 2-bit + signs */
    {"tq4", 128, 2, 4, 256, 2, {2000, 300}, 0, 1},         /* the general kernel, same shape */
    {"tq4-prod", 128, 1, 4, 256, 1, {777}, 0, 1},          /* the general kernel, prod keys */
    /* 63 chunks of 32: 63 splits on 132 SMs (att_mma_splits), the merge's two-round path */
    {"tq4", 128, 1, 4, 32, 1, {2000}, 0, 0},
    /* tq3.5 (split keys) runs on tensor cores up to 8 query heads per KV head (the GQA 8 case
     * above too): whole tiles with a long and a short sequence, a partial last chunk, and the
     * general kernel on the same */
    {"tq3.5", 128, 2, 4, 256, 2, {3000, 200}, 0, 0},       /* tensor cores, split keys */
    {"tq3.5", 128, 1, 2, 256, 2, {1025, 31}, 2, 0},        /* partial tiles, two splits */
    {"tq3.5", 128, 2, 4, 256, 1, {1500}, 0, 1},            /* the general kernel, split keys */
    {"tq3.5", 128, 1, 6, 256, 2, {1500, 77}, 0, 0},        /* 5..8 heads: one block per SM */
    /* tq3.5-prod (split prod keys, split values: each chunk's value sums are rotated back on
     * their own) runs on tensor cores up to 8 query heads per KV head (the GQA 1 case above
     * too): whole and partial tiles, one split of 20 chunks (warps walk several chunks each),
     * splits of 3 chunks (two side by side, four warps each, then the third), the general
     * kernel on the same, 5..8 heads (one block per SM) and d = 96 (padded to 128) */
    {"tq3.5-prod", 128, 2, 4, 256, 2, {3000, 200}, 0, 0},  /* tensor cores, split prod */
    {"tq3.5-prod", 128, 1, 4, 256, 1, {5000}, 1, 0},       /* one split: chunk after chunk */
    {"tq3.5-prod", 128, 1, 2, 256, 2, {1800, 31}, 3, 0},   /* 3 chunks a split, partial tiles */
    {"tq3.5-prod", 128, 2, 4, 256, 1, {1500}, 0, 1},       /* the general kernel, split prod */
    {"tq3.5-prod", 128, 1, 8, 256, 1, {700}, 0, 0},        /* GQA 8: one block per SM */
    {"tq3.5-prod", 128, 2, 6, 256, 2, {2100, 90}, 1, 0},   /* GQA 6, one split, partial tiles */
    {"tq3.5-prod", 96, 2, 4, 256, 2, {700, 300}, 0, 0},    /* padded head dim, tensor cores */
};

static void run_att_case(const att_case *c, tq_dtype qdt)
{
    tq_codec_params p;
    const uint32_t D = c->head_dim, H = c->n_kv, NQ = c->n_kv * c->group;
    ASSERT_OK(tq_codec_params_init(&p, c->preset, 1, (uint16_t)H, (uint16_t)D, TQ_DTYPE_F16));
    /* chunks: every sequence cut into blocks of c->chunk tokens (the last one shorter) */
    uint32_t n_chunks = 0, max_chunks = 0, indptr[5] = {0};
    for (uint32_t s = 0; s < c->n_seqs; s++) {
        uint32_t k = (c->lens[s] + c->chunk - 1) / c->chunk;
        n_chunks += k;
        max_chunks = k > max_chunks ? k : max_chunks;
        indptr[s + 1] = n_chunks;
    }
    tq_block_view *views = calloc(n_chunks, sizeof(*views));
    uint8_t **blocks = calloc(n_chunks, sizeof(*blocks));
    tq_cuda_chunk *hch = calloc(n_chunks, sizeof(*hch));
    void **dblocks = calloc(n_chunks, sizeof(void *));
    ASSERT_TRUE(views && blocks && hch && dblocks);
    tq_rng rng = {D * 1000 + H * 10 + c->group, 0, 0.0};
    uint32_t ci = 0;
    uint8_t key[TQ_KEY_BYTES] = {0};
    for (uint32_t s = 0; s < c->n_seqs; s++)
        for (uint32_t t0 = 0; t0 < c->lens[s]; t0 += c->chunk, ci++) {
            uint32_t T = c->lens[s] - t0 < c->chunk ? c->lens[s] - t0 : c->chunk;
            size_t per = (size_t)T * H * D;
            uint16_t *kv = malloc(2 * per * 2);
            ASSERT_TRUE(kv != NULL);
            fill_kv(&rng, kv, TQ_DTYPE_F16, 2 * per, D, 0);
            tq_kv_view k = tq_kv_view_contiguous(kv, TQ_DTYPE_F16, H, D);
            tq_kv_view v = tq_kv_view_contiguous(kv + per, TQ_DTYPE_F16, H, D);
            size_t bsz = tq_block_size(&p, T, 0, 1), len = 0;
            blocks[ci] = malloc(bsz);
            ASSERT_TRUE(blocks[ci] != NULL);
            ASSERT_OK(tq_block_encode(&p, key, T, &k, &v, blocks[ci], bsz, &len));
            ASSERT_OK(tq_block_parse(blocks[ci], len, 0, &views[ci]));
            CU(cudaMalloc(&dblocks[ci], len));
            CU(cudaMemcpy(dblocks[ci], blocks[ci], len, cudaMemcpyHostToDevice));
            ASSERT_OK(tq_cuda_chunk_from_block(&views[ci], dblocks[ci], 0, &hch[ci]));
            free(kv);
        }
    /* queries: fp16/bf16 values, the CPU gets the same values as floats */
    size_t nqv = (size_t)c->n_seqs * NQ * D;
    uint16_t *q16 = malloc(nqv * 2), *o16 = malloc(nqv * 2);
    float *qf = malloc(nqv * 4), *of = malloc(nqv * 4);
    ASSERT_TRUE(q16 && o16 && qf && of);
    for (size_t i = 0; i < nqv; i++) {
        float v = (float)tq_rng_gauss(&rng);
        q16[i] = qdt == TQ_DTYPE_BF16 ? f32_to_bf16(v) : f32_to_f16(v);
        qf[i] = qdt == TQ_DTYPE_BF16 ? bf16_to_f32(q16[i]) : f16_to_f32(q16[i]);
    }
    float scale = 1.0f / sqrtf((float)D);
    tq_chunk_table tab = {c->n_seqs, indptr, views};
    ASSERT_OK(tq_attention_cpu(&tab, 0, qf, NQ, scale, of));

    tq_cuda_attn_params ap;
    memset(&ap, 0, sizeof(ap));
    ap.k = p.k;
    ap.v = p.v;
    ap.head_dim = D;
    ap.n_kv_heads = H;
    ap.n_q_heads = NQ;
    ap.seed = p.seed;
    ap.codebook = p.codebook;
    ap.q_dtype = (uint8_t)qdt;
    ap.softmax_scale = scale;
    ap.max_splits = c->max_splits;
    ap.no_tensor_cores = c->general;
    size_t wsz = tq_cuda_attention_workspace_size(&ap, c->n_seqs, max_chunks);
    ASSERT_TRUE(wsz > 0);
    int32_t dind[5];
    for (int i = 0; i < 5; i++)
        dind[i] = (int32_t)indptr[i];
    void *d_ind = NULL, *d_ch = NULL, *d_q = NULL, *d_o = NULL, *d_ws = NULL;
    CU(cudaMalloc(&d_ind, sizeof(dind)));
    CU(cudaMalloc(&d_ch, n_chunks * sizeof(tq_cuda_chunk)));
    CU(cudaMalloc(&d_q, nqv * 2));
    CU(cudaMalloc(&d_o, nqv * 2));
    CU(cudaMalloc(&d_ws, wsz));
    CU(cudaMemcpy(d_ind, dind, sizeof(dind), cudaMemcpyHostToDevice));
    CU(cudaMemcpy(d_ch, hch, n_chunks * sizeof(tq_cuda_chunk), cudaMemcpyHostToDevice));
    CU(cudaMemcpy(d_q, q16, nqv * 2, cudaMemcpyHostToDevice));
    ASSERT_OK(tq_cuda_attention(&ap, c->n_seqs, d_ind, d_ch, max_chunks, d_q, d_o, d_ws, wsz,
                                NULL));
    CU(cudaDeviceSynchronize());
    CU(cudaMemcpy(o16, d_o, nqv * 2, cudaMemcpyDeviceToHost));
    /* normalised error per (sequence, head): ||gpu - cpu|| / ||cpu||. The GPU output is rounded
     * to the query dtype (relative 2^-11 for fp16, 2^-8 for bf16); fp32 accumulation adds far
     * less. The tensor-core kernel (padded head dim 128; one part per tensor, or tq3.5) rounds its
     * operands to fp16 as every tensor-core attention does: the rotated query (and sketch), the
     * centroids and the probabilities, each to a relative 2^-11 at most; that is its larger
     * fp16 bound. */
    uint32_t P = 16;
    while (P < D)
        P *= 2;
    const int split = strcmp(c->preset, "tq3.5") == 0; /* split keys: up to 8 heads */
    const int split_prod = strcmp(c->preset, "tq3.5-prod") == 0; /* up to 8 heads */
    const int tensor_cores =
        !c->general && P == 128 &&
        ((p.v.n_out == 0 && ((p.k.n_out == 0 && c->group <= 16) || (split && c->group <= 8))) ||
         (split_prod && c->group <= 8));
    double worst = 0.0, bound = qdt == TQ_DTYPE_BF16 ? 8e-3 : tensor_cores ? 4e-3 : 1.5e-3;
    for (size_t r = 0; r < (size_t)c->n_seqs * NQ; r++) {
        double num = 0.0, den = 0.0;
        for (uint32_t j = 0; j < D; j++) {
            double g = qdt == TQ_DTYPE_BF16 ? bf16_to_f32(o16[r * D + j])
                                            : f16_to_f32(o16[r * D + j]);
            double e = of[r * D + j];
            num += (g - e) * (g - e);
            den += e * e;
        }
        double err = den > 0.0 ? sqrt(num / den) : sqrt(num);
        worst = err > worst ? err : worst;
    }
    fprintf(stderr, "attention %s d=%u kv=%u group=%u seqs=%u dtype=%d%s: worst normalised "
                    "error %.3g (bound %.3g)\n", c->preset, D, H, c->group, c->n_seqs, qdt,
            c->general ? " general kernel" : "", worst, bound);
    ASSERT_LE(worst, bound);
    cudaFree(d_ind);
    cudaFree(d_ch);
    cudaFree(d_q);
    cudaFree(d_o);
    cudaFree(d_ws);
    for (uint32_t i = 0; i < n_chunks; i++) {
        cudaFree(dblocks[i]);
        free(blocks[i]);
    }
    free(views);
    free(blocks);
    free(hch);
    free(dblocks);
    free(q16);
    free(o16);
    free(qf);
    free(of);
}

static void test_attention_matches_cpu(void)
{
    NEED_GPU();
    for (size_t i = 0; i < sizeof(g_att) / sizeof(g_att[0]); i++) {
        run_att_case(&g_att[i], i % 2 ? TQ_DTYPE_BF16 : TQ_DTYPE_F16);
        TQKV_TEST_CHECK();
    }
}

static void test_bad_arguments(void)
{
    NEED_GPU();
    tq_recipe rk, rv;
    ASSERT_OK(tq_preset("tq4", 128, &rk, &rv));
    void *d = NULL;
    CU(cudaMalloc(&d, 4096));
    tq_kv_view v = tq_kv_view_contiguous(d, TQ_DTYPE_F16, 1, 128);
    size_t sz = tq_section_size(&rk, 128, 1, 8);
    ASSERT_ERR(tq_cuda_encode_section(&rk, 128, 1, 8, 1, TQ_CODEBOOK_EXACT, &v, d, sz - 1, NULL),
               TQKV_ENOSPC);
    tq_recipe bad = rk;
    bad.bits = 7;
    ASSERT_ERR(tq_cuda_encode_section(&bad, 128, 1, 8, 1, TQ_CODEBOOK_EXACT, &v, d, 4096, NULL),
               TQKV_EBADCODEC);
    v.dtype = 9;
    ASSERT_ERR(tq_cuda_encode_section(&rk, 128, 1, 8, 1, TQ_CODEBOOK_EXACT, &v, d, 4096, NULL),
               TQKV_EBADDTYPE);
    ASSERT_ERR(tq_cuda_decode_section(&rk, 128, 1, 8, 1, TQ_CODEBOOK_EXACT, d, sz - 1,
                                      TQ_DTYPE_F16, d, 4096, NULL),
               TQKV_ETRUNCATED);
    tq_cuda_attn_params ap;
    memset(&ap, 0, sizeof(ap));
    ap.k = rk;
    ap.v = rv;
    ap.head_dim = 128;
    ap.n_kv_heads = 2;
    ap.n_q_heads = 3; /* not a multiple */
    ap.q_dtype = TQ_DTYPE_F16;
    ASSERT_EQ_U64(tq_cuda_attention_workspace_size(&ap, 1, 1), 0);
    ap.n_q_heads = 4;
    ASSERT_ERR(tq_cuda_attention(&ap, 1, d, d, 1, d, d, d, 1, NULL), TQKV_ENOSPC);
    /* a workspace that is not 16-byte aligned: refused (its copies are 16-byte vector copies) */
    const size_t wsz = tq_cuda_attention_workspace_size(&ap, 1, 1);
    ASSERT_TRUE(wsz > 0 && wsz + 8 <= 4096);
    ASSERT_ERR(tq_cuda_attention(&ap, 1, d, d, 1, d, d, (char *)d + 8, wsz, NULL), TQKV_EINVAL);
    ASSERT_OK(cudaFree(d));
}

/* tq_cuda_encoder: raw KV in host memory encoded on the GPU equals tq_block_encode_packed, byte
 * for byte, for several presets, source dtypes and sizes through one encoder (its buffers grow);
 * bad lengths are refused. */
static void test_host_encoder_equals_cpu(void)
{
    NEED_GPU();
    static const struct {
        const char *preset;
        tq_dtype dt;
        uint16_t layers, heads, dim;
        uint32_t tokens;
    } cs[] = {
        {"tq4", TQ_DTYPE_F16, 2, 2, 128, 64},   {"tq3.5", TQ_DTYPE_BF16, 3, 4, 128, 256},
        {"tq3-prod", TQ_DTYPE_F32, 1, 1, 64, 37}, {"tq4", TQ_DTYPE_F16, 4, 8, 128, 512},
    };
    tq_cuda_encoder *enc = NULL;
    ASSERT_OK(tq_cuda_encoder_create(&enc));
    uint8_t key[TQ_KEY_BYTES];
    for (int i = 0; i < TQ_KEY_BYTES; i++)
        key[i] = (uint8_t)(i * 7 + 5);
    for (size_t ci = 0; ci < sizeof(cs) / sizeof(cs[0]); ci++) {
        tq_codec_params p;
        ASSERT_OK(tq_codec_params_init(&p, cs[ci].preset, cs[ci].layers, cs[ci].heads, cs[ci].dim,
                                       cs[ci].dt));
        const size_t es = tq_dtype_size(cs[ci].dt);
        const size_t n = (size_t)2 * cs[ci].layers * cs[ci].tokens * cs[ci].heads * cs[ci].dim;
        const size_t bsz = tq_block_size(&p, cs[ci].tokens, 0, cs[ci].layers);
        uint8_t *kv = malloc(n * es), *cpu = malloc(bsz), *gpu = malloc(bsz);
        ASSERT_TRUE(kv && cpu && gpu);
        tq_rng rng = {ci + 101, 0, 0.0};
        fill_kv(&rng, kv, cs[ci].dt, n, cs[ci].dim, 0);
        memset(gpu, 0xAB, bsz);
        size_t cl = 0, gl = 0;
        ASSERT_OK(tq_block_encode_packed(&p, key, cs[ci].tokens, kv, n * es, cpu, bsz, &cl));
        ASSERT_OK(tq_cuda_encoder_encode_packed(enc, &p, key, cs[ci].tokens, kv, n * es, gpu, bsz,
                                                &gl));
        ASSERT_EQ_U64(gl, cl);
        compare_bytes(cs[ci].preset, gpu, cpu, cl);
        TQKV_TEST_CHECK();
        ASSERT_ERR(tq_cuda_encoder_encode_packed(enc, &p, key, cs[ci].tokens, kv, n * es - 1, gpu,
                                                 bsz, &gl),
                   TQKV_EBADGEOMETRY);
        ASSERT_ERR(tq_cuda_encoder_encode_packed(enc, &p, key, cs[ci].tokens, kv, n * es, gpu,
                                                 bsz - 1, &gl),
                   TQKV_ENOSPC);
        free(kv);
        free(cpu);
        free(gpu);
    }
    tq_cuda_encoder_destroy(enc);
}

static const tqkv_test_case cases[] = {
    {"encode_equals_cpu", test_encode_equals_cpu},
    {"encode_paged_equals_cpu", test_encode_paged_equals_cpu},
    {"encode_recipes_equal_cpu", test_encode_recipes_equal_cpu},
    {"decode_equals_cpu", test_decode_equals_cpu},
    {"block_equals_cpu", test_block_equals_cpu},
    {"host_encoder_equals_cpu", test_host_encoder_equals_cpu},
    {"attention_matches_cpu", test_attention_matches_cpu},
    {"bad_arguments", test_bad_arguments},
    {NULL, NULL},
};

int main(int argc, char **argv)
{
    return tqkv_test_main(argc, argv, cases);
}
