/* GPU decode-attention latency over encoded chunks: 32 query heads, 8 KV heads, d = 128, chunks
 * of 256 tokens, for (batch, context) in {(1, 32K), (1, 128K), (8, 32K), (32, 8K)} and each
 * preset. The chunks are encoded on the GPU (tq_cuda_encode_section) from random fp16 KV; the
 * timing (cudaEvent, mean of `iters` launches after warm-up) covers tq_cuda_attention: the
 * split kernel and the merge. Effective bandwidth = encoded K and V bytes read / time. The fp16
 * SDPA baseline is cuda_sdpa_bench.py, run in the same session. One JSON object per line.
 *   [TQ_ATTENTION_GENERAL=1] [TQ_BENCH_Q_HEADS=32] cuda_attention_bench [iters=50] [presets...] */
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tq.h"
#include "tq_cuda.h"

#define CK(x)                                                                                      \
    do {                                                                                           \
        cudaError_t _e = (x);                                                                      \
        if (_e != cudaSuccess) {                                                                   \
            fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(_e));                               \
            return 1;                                                                              \
        }                                                                                          \
    } while (0)

#define POOL 16 /* distinct random chunks; chunk c is encoded from pool[c % POOL] */

static uint64_t mix(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint16_t to_f16(float v)
{
    uint32_t x;
    memcpy(&x, &v, 4);
    uint32_t ax = x & 0x7fffffffu, sign = (x >> 16) & 0x8000;
    if (ax < 0x38800000u)
        return (uint16_t)sign;
    return (uint16_t)(sign | ((ax + 0xc8000fffu + ((ax >> 13) & 1)) >> 13));
}

static float rnd(uint64_t *s)
{
    uint64_t r = mix(s);
    int acc = 0;
    for (int b = 0; b < 8; b++)
        acc += (int)((r >> (8 * b)) & 0xff);
    return ((float)acc - 1020.0f) / 209.0f;
}

int main(int argc, char **argv)
{
    /* TQ_BENCH_Q_HEADS: query heads (a multiple of the 8 KV heads; 32 unless set) */
    const char *nqs = getenv("TQ_BENCH_Q_HEADS");
    const uint32_t H = 8, NQ = nqs ? (uint32_t)atoi(nqs) : 32, D = 128, CT = 256;
    if (NQ == 0 || NQ % H || NQ > 128) {
        fprintf(stderr, "TQ_BENCH_Q_HEADS must be a multiple of %u up to 128\n", H);
        return 2;
    }
    int iters = argc > 1 ? atoi(argv[1]) : 50;
    /* TQ_ATTENTION_GENERAL=1: the general CUDA-core kernel even where tensor cores would run */
    const uint8_t general = getenv("TQ_ATTENTION_GENERAL") != NULL;
    static const char *const def[] = {"tq4", "tq3.5", "tq3", "tq4-prod", "tq3.5-prod", "tq3-prod"};
    const char *const *presets = argc > 2 ? (const char *const *)argv + 2 : def;
    int np = argc > 2 ? argc - 2 : 6;
    static const uint32_t shapes[][2] = {{1, 32768}, {1, 131072}, {8, 32768}, {32, 8192}};
    if (tq_cuda_device_count() <= 0) {
        fprintf(stderr, "no CUDA device\n");
        return 77;
    }
    /* random KV pool (K and V of POOL chunks) and queries */
    size_t per = (size_t)CT * H * D;
    uint16_t *hpool = malloc(2 * POOL * per * 2), *hq = malloc((size_t)32 * NQ * D * 2);
    if (!hpool || !hq)
        return 1;
    uint64_t seed = 1;
    for (size_t i = 0; i < 2 * POOL * per; i++)
        hpool[i] = to_f16(rnd(&seed));
    for (size_t i = 0; i < (size_t)32 * NQ * D; i++)
        hq[i] = to_f16(rnd(&seed));
    void *d_pool = NULL, *d_q = NULL, *d_o = NULL;
    CK(cudaMalloc(&d_pool, 2 * POOL * per * 2));
    CK(cudaMalloc(&d_q, (size_t)32 * NQ * D * 2));
    CK(cudaMalloc(&d_o, (size_t)32 * NQ * D * 2));
    CK(cudaMemcpy(d_pool, hpool, 2 * POOL * per * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_q, hq, (size_t)32 * NQ * D * 2, cudaMemcpyHostToDevice));
    cudaStream_t st;
    CK(cudaStreamCreate(&st));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));

    for (int pi = 0; pi < np; pi++) {
        tq_codec_params p;
        if (tq_codec_params_init(&p, presets[pi], 1, H, D, TQ_DTYPE_F16)) {
            fprintf(stderr, "bad preset %s\n", presets[pi]);
            return 1;
        }
        size_t szk = tq_section_size(&p.k, D, H, CT), szv = tq_section_size(&p.v, D, H, CT);
        size_t stride_k = (szk + 63) & ~(size_t)63, stride = stride_k + ((szv + 63) & ~(size_t)63);
        for (size_t si = 0; si < 4; si++) {
            uint32_t B = shapes[si][0], ctx = shapes[si][1], cps = ctx / CT, nch = B * cps;
            uint8_t *d_sec = NULL;
            CK(cudaMalloc((void **)&d_sec, nch * stride));
            tq_cuda_chunk *hch = malloc(nch * sizeof(*hch));
            int32_t *hind = malloc((B + 1) * sizeof(int32_t));
            if (!hch || !hind)
                return 1;
            for (uint32_t c = 0; c < nch; c++) {
                const uint16_t *src = (const uint16_t *)d_pool + (size_t)(c % POOL) * 2 * per;
                tq_kv_view kv = tq_kv_view_contiguous(src, TQ_DTYPE_F16, H, D);
                tq_kv_view vv = tq_kv_view_contiguous(src + per, TQ_DTYPE_F16, H, D);
                uint8_t *ks = d_sec + (size_t)c * stride, *vs = ks + stride_k;
                int rc = tq_cuda_encode_section(&p.k, D, H, CT, p.seed,
                                                (tq_codebook_kind)p.codebook, &kv, ks, szk, st);
                if (!rc)
                    rc = tq_cuda_encode_section(&p.v, D, H, CT, p.seed,
                                                (tq_codebook_kind)p.codebook, &vv, vs, szv, st);
                if (rc) {
                    fprintf(stderr, "encode: %s\n", tqkv_strerror(rc));
                    return 1;
                }
                hch[c].k_section = (uint64_t)(uintptr_t)ks;
                hch[c].v_section = (uint64_t)(uintptr_t)vs;
                hch[c].n_tokens = CT;
                hch[c].reserved = 0;
            }
            for (uint32_t b = 0; b <= B; b++)
                hind[b] = (int32_t)(b * cps);
            tq_cuda_attn_params ap;
            memset(&ap, 0, sizeof(ap));
            ap.k = p.k;
            ap.v = p.v;
            ap.head_dim = D;
            ap.n_kv_heads = H;
            ap.n_q_heads = NQ;
            ap.seed = p.seed;
            ap.codebook = p.codebook;
            ap.q_dtype = TQ_DTYPE_F16;
            ap.softmax_scale = 1.0f / sqrtf((float)D);
            ap.no_tensor_cores = general;
            size_t wsz = tq_cuda_attention_workspace_size(&ap, B, cps);
            void *d_ch = NULL, *d_ind = NULL, *d_ws = NULL;
            CK(cudaMalloc(&d_ch, nch * sizeof(*hch)));
            CK(cudaMalloc(&d_ind, (B + 1) * sizeof(int32_t)));
            CK(cudaMalloc(&d_ws, wsz));
            CK(cudaMemcpy(d_ch, hch, nch * sizeof(*hch), cudaMemcpyHostToDevice));
            CK(cudaMemcpy(d_ind, hind, (B + 1) * sizeof(int32_t), cudaMemcpyHostToDevice));
            float ms = 0.0f;
            for (int rep = 0; rep < iters + 3; rep++) {
                if (rep == 3)
                    CK(cudaEventRecord(e0, st));
                int rc = tq_cuda_attention(&ap, B, d_ind, (const tq_cuda_chunk *)d_ch, cps, d_q,
                                           d_o, d_ws, wsz, st);
                if (rc) {
                    fprintf(stderr, "attention: %s\n", tqkv_strerror(rc));
                    return 1;
                }
            }
            CK(cudaEventRecord(e1, st));
            CK(cudaEventSynchronize(e1));
            CK(cudaEventElapsedTime(&ms, e0, e1));
            double t = ms / 1e3 / iters, bytes = (double)nch * (szk + szv);
            double fp16_bytes = 2.0 * B * ctx * H * D * 2;
            printf("{\"bench\":\"cuda_attention\",\"preset\":\"%s\",\"batch\":%u,\"context\":%u,"
                   "\"q_heads\":%u,\"kv_heads\":%u,\"head_dim\":%u,\"chunk\":%u,\"us\":%.2f,"
                   "\"kv_bytes\":%.0f,\"fp16_kv_bytes\":%.0f,\"eff_gbps\":%.1f,\"general_forced\":%s}\n",
                   presets[pi], B, ctx, NQ, H, D, CT, t * 1e6, bytes, fp16_bytes, bytes / t / 1e9,
                   general ? "true" : "false");
            fflush(stdout);
            cudaFree(d_sec);
            cudaFree(d_ch);
            cudaFree(d_ind);
            cudaFree(d_ws);
            free(hch);
            free(hind);
        }
    }
    free(hpool);
    free(hq);
    return 0;
}
