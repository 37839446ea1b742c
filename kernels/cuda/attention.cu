/* Decode attention over TurboQuant-encoded chunks on the GPU (one query token per sequence).
 *
 * Grid (split, kv head x query-head group, sequence); 128 threads. A thread block takes GT query
 * heads that share one KV head (GQA: every K and V word is loaded once for all of them) and a
 * contiguous range of the sequence's chunks (split-KV). Per 128-token tile:
 *   - scores: one thread per token reads its K code words straight from global memory (the
 *     word-major, token-minor planes make a warp's reads contiguous) and sums
 *     q_rot[k] * cent[code_k] for its GT heads, plus the QJL term for prod keys; q_rot and the
 *     sketch S q_rot were prepared once (per chunk for outlier keys, whose rotation follows the
 *     chunk's own channel split), with softmax_scale * log2(e) folded in;
 *   - online softmax in base 2; the tile's V code words are staged in shared memory;
 *   - values: one thread per rotated coordinate accumulates p_t * scale_t * cent[code] for its GT
 *     heads. Values stay rotated; the accumulator is rotated back (D . H z / n) once per split,
 *     or once per chunk for outlier values (their channel split is per chunk).
 * Split results (unnormalised output, max, sum) go to the workspace and a second kernel merges
 * them by log-sum-exp into the output dtype. No dequantized key or value is ever written to
 * global memory. */
#include <math.h>

#include "attention.cuh"

#define TQC_ATT_THREADS 128
#define TQC_ATT_TT 128 /* tokens per tile: one thread per token in the score phase */
#define TQC_VPRE 20 /* V words per token held in registers while the scores are computed */

/* Layout of the record of one chunk: the offsets in tqc_part hold for T = 1; for a chunk of T
 * tokens every offset scales with T, except the mask at the start. We recompute them here. */
struct tqc_part_off {
    uint32_t scale, gamma, plane[2], signs;
};

__device__ __forceinline__ uint32_t tqc_half_words(uint32_t T) { return (T + 1) / 2 * 4; }

/* Byte offsets of part p's arrays in a record of T tokens (tqkv__layout's arithmetic). */
__device__ __forceinline__ void tqc_part_offsets(const tqc_att_tensor &X, uint32_t T,
                                                 tqc_part_off (&o)[2], uint32_t &rec_size)
{
    uint32_t off = X.mask_words * 4;
    for (uint32_t p = 0; p < X.n_parts; p++) {
        const tqc_part &pp = X.part[p];
        o[p].scale = off;
        off += tqc_half_words(T);
        if (pp.prod) {
            o[p].gamma = off;
            off += tqc_half_words(T);
        }
        for (uint32_t q = 0; q < pp.n_planes; q++) {
            o[p].plane[q] = off;
            off += pp.plane_words[q] * 4 * T;
        }
        if (pp.prod) {
            o[p].signs = off;
            off += pp.sign_words * 4 * T;
        }
    }
    rec_size = off;
}

/* Splits a record's mask into channel lists (increasing order) in ch[0..P): part 0 first, then
 * part 1; inv[j] = position of channel j in that list. A malformed mask (not exactly P/2 bits)
 * is treated as "first half / second half" so that nothing reads out of range. */
__device__ void tqc_channels(const uint8_t *rec, uint32_t P, uint32_t n_parts, uint16_t *ch,
                             uint16_t *inv)
{
    if (threadIdx.x == 0) {
        if (n_parts == 1) {
            for (uint32_t j = 0; j < P; j++)
                ch[j] = inv[j] = (uint16_t)j;
        } else {
            const uint32_t *mk = (const uint32_t *)rec;
            uint32_t a = 0, b = P / 2, cnt = 0;
            for (uint32_t j = 0; j < P; j++)
                cnt += (mk[j >> 5] >> (j & 31)) & 1;
            for (uint32_t j = 0; j < P; j++) {
                uint32_t bit = cnt == P / 2 ? (mk[j >> 5] >> (j & 31)) & 1 : j < P / 2;
                uint32_t pos = bit ? a++ : b++;
                ch[pos] = (uint16_t)j;
                inv[j] = (uint16_t)pos;
            }
        }
    }
}

/* In-place unnormalised FWHT of GT vectors of length P stored [g][P], independently within each
 * part segment [0, n0) and [n0, P) (one segment when n0 == P). All threads participate. */
template <int GT> __device__ void tqc_fwht_smem(float *v, uint32_t P, uint32_t n0)
{
    uint32_t nmin = n0 < P ? n0 : P;
    for (uint32_t h = 1; h < nmin; h <<= 1) {
        for (uint32_t i = threadIdx.x; i < GT * P / 2; i += TQC_ATT_THREADS) {
            uint32_t g = i / (P / 2), r = i % (P / 2);
            uint32_t j = (r / h) * 2 * h + (r % h); /* pairs never straddle segments: h < n0 */
            float *x = v + g * P;
            float a = x[j], b = x[j + h];
            x[j] = a + b;
            x[j + h] = a - b;
        }
        __syncthreads();
    }
}

/* Prepares the rotated, scaled query (qk) and QJL sketch (qs) of the GT heads for the K part
 * split `chk` (channel list). qraw: [GT][P] original query, rot: [GT][P] scratch;
 * qk, qs: [P][GT]. Ends with a barrier. */
template <int GT>
__device__ void tqc_prep_q(const tqc_att &A, const float *qraw, float *rot, const uint16_t *chk,
                           float *qk, float *qs)
{
    const uint32_t P = A.P, n0 = A.K.part[0].n;
    for (uint32_t i = threadIdx.x; i < GT * P; i += TQC_ATT_THREADS) {
        uint32_t g = i / P, kk = i % P;
        uint32_t p = kk < n0 ? 0 : 1, k = kk - (p ? n0 : 0);
        float v = qraw[g * P + chk[kk]];
        rot[i] = __uint_as_float(__float_as_uint(v) ^ __ldg(A.K.part[p].dsign + k));
    }
    __syncthreads();
    tqc_fwht_smem<GT>(rot, P, n0);
    for (uint32_t i = threadIdx.x; i < GT * P; i += TQC_ATT_THREADS) {
        uint32_t g = i / P, kk = i % P;
        uint32_t p = kk < n0 ? 0 : 1;
        qk[kk * GT + g] = rot[i] * A.c_qk[p];
    }
    for (uint32_t p = 0; p < A.K.n_parts; p++) {
        const tqc_part &pp = A.K.part[p];
        if (!pp.prod)
            continue;
        const uint32_t n = pp.n, off = p ? n0 : 0;
        for (uint32_t k = threadIdx.x; k < n; k += TQC_ATT_THREADS) {
            float a[GT];
#pragma unroll
            for (int g = 0; g < GT; g++)
                a[g] = 0.0f;
            for (uint32_t j = 0; j < n; j++) {
                float s = __ldg(pp.St + (size_t)j * n + k); /* S[k][j] */
#pragma unroll
                for (int g = 0; g < GT; g++)
                    a[g] += s * rot[g * P + off + j];
            }
#pragma unroll
            for (int g = 0; g < GT; g++)
                qs[(off + k) * GT + g] = a[g] * A.c_qs[p];
        }
    }
    __syncthreads();
}

template <int GT>
__device__ __forceinline__ void tqc_fma_coord(float (&d)[GT], const float *qk, uint32_t kk,
                                              float cv)
{
    if (GT % 4 == 0) {
#pragma unroll
        for (int g = 0; g < GT; g += 4) {
            float4 q = *(const float4 *)(qk + kk * GT + g);
            d[g] += q.x * cv;
            d[g + 1] += q.y * cv;
            d[g + 2] += q.z * cv;
            d[g + 3] += q.w * cv;
        }
    } else {
#pragma unroll
        for (int g = 0; g < GT; g++)
            d[g] += qk[kk * GT + g] * cv;
    }
}

/* <qk, cent[codes]> over the n coordinates of one part for token t (K record `rec`). */
template <int GT>
__device__ __forceinline__ void tqc_score_mse(const tqc_part &pp, const tqc_part_off &po,
                                              const uint8_t *rec, uint32_t T, uint32_t t,
                                              const float *cent, const float *qk, float (&d)[GT])
{
    const uint32_t *p0 = (const uint32_t *)(rec + po.plane[0]) + t;
    const uint32_t *p1 = (const uint32_t *)(rec + po.plane[1]) + t;
    const uint32_t n = pp.n;
    for (uint32_t g0 = 0; g0 < n; g0 += 32) {
        /* coordinates g0 .. g0+31 (fewer when n == 16) */
        const bool full = g0 + 32 <= n;
        switch (pp.m) {
        case 1: {
            uint32_t w = __ldg(p0 + (size_t)(g0 / 32) * T);
#pragma unroll
            for (int s = 0; s < 32; s++)
                if (full || (uint32_t)s < n - g0)
                    tqc_fma_coord<GT>(d, qk, g0 + s, cent[(w >> s) & 1]);
            break;
        }
        case 2: {
            uint32_t w[2];
#pragma unroll
            for (int i = 0; i < 2; i++)
                w[i] = (full || i == 0) ? __ldg(p0 + (size_t)(g0 / 16 + i) * T) : 0;
#pragma unroll
            for (int s = 0; s < 32; s++)
                if (full || (uint32_t)s < n - g0)
                    tqc_fma_coord<GT>(d, qk, g0 + s, cent[(w[s >> 4] >> ((s & 15) * 2)) & 3]);
            break;
        }
        case 3: {
            uint32_t w[2], hi = __ldg(p1 + (size_t)(g0 / 32) * T);
#pragma unroll
            for (int i = 0; i < 2; i++)
                w[i] = (full || i == 0) ? __ldg(p0 + (size_t)(g0 / 16 + i) * T) : 0;
#pragma unroll
            for (int s = 0; s < 32; s++)
                if (full || (uint32_t)s < n - g0) {
                    uint32_t c = ((w[s >> 4] >> ((s & 15) * 2)) & 3) | (((hi >> s) & 1) << 2);
                    tqc_fma_coord<GT>(d, qk, g0 + s, cent[c]);
                }
            break;
        }
        case 4: {
            uint32_t w[4];
#pragma unroll
            for (int i = 0; i < 4; i++)
                w[i] = (full || i < 2) ? __ldg(p0 + (size_t)(g0 / 8 + i) * T) : 0;
#pragma unroll
            for (int s = 0; s < 32; s++)
                if (full || (uint32_t)s < n - g0)
                    tqc_fma_coord<GT>(d, qk, g0 + s, cent[(w[s >> 3] >> ((s & 7) * 4)) & 15]);
            break;
        }
        case 8: {
            uint32_t w[8];
#pragma unroll
            for (int i = 0; i < 8; i++)
                w[i] = (full || i < 4) ? __ldg(p0 + (size_t)(g0 / 4 + i) * T) : 0;
#pragma unroll
            for (int s = 0; s < 32; s++)
                if (full || (uint32_t)s < n - g0)
                    tqc_fma_coord<GT>(d, qk, g0 + s, cent[(w[s >> 2] >> ((s & 3) * 8)) & 255]);
            break;
        }
        default:
            break;
        }
    }
}

/* The common case (n a multiple of 32, at most 128, m <= 4): every code word of the token is
 * loaded first, so that a warp has all its loads in flight before the arithmetic starts. */
template <int GT>
__device__ __forceinline__ void tqc_score_mse_fast(const tqc_part &pp, const tqc_part_off &po,
                                                   const uint8_t *rec, uint32_t T, uint32_t t,
                                                   const float *cent, const float *qk,
                                                   float (&d)[GT])
{
    const uint32_t *p0 = (const uint32_t *)(rec + po.plane[0]) + t;
    const uint32_t *p1 = (const uint32_t *)(rec + po.plane[1]) + t;
    const uint32_t n = pp.n, m = pp.m, nw0 = pp.plane_words[0];
    const uint32_t nw1 = pp.n_planes == 2 ? pp.plane_words[1] : 0;
    uint32_t w[16], hi[4];
#pragma unroll
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)i < nw0 ? __ldg(p0 + (size_t)i * T) : 0u;
#pragma unroll
    for (int i = 0; i < 4; i++)
        hi[i] = (uint32_t)i < nw1 ? __ldg(p1 + (size_t)i * T) : 0u;
#pragma unroll
    for (int gi = 0; gi < 4; gi++) {
        if ((uint32_t)gi * 32 >= n)
            break;
        const uint32_t k0 = gi * 32;
        if (m == 4) {
#pragma unroll
            for (int s = 0; s < 32; s++)
                tqc_fma_coord<GT>(d, qk, k0 + s, cent[(w[4 * gi + (s >> 3)] >> ((s & 7) * 4)) & 15]);
        } else if (m == 3) {
#pragma unroll
            for (int s = 0; s < 32; s++) {
                uint32_t c = ((w[2 * gi + (s >> 4)] >> ((s & 15) * 2)) & 3) |
                             (((hi[gi] >> s) & 1) << 2);
                tqc_fma_coord<GT>(d, qk, k0 + s, cent[c]);
            }
        } else if (m == 2) {
#pragma unroll
            for (int s = 0; s < 32; s++)
                tqc_fma_coord<GT>(d, qk, k0 + s, cent[(w[2 * gi + (s >> 4)] >> ((s & 15) * 2)) & 3]);
        } else {
#pragma unroll
            for (int s = 0; s < 32; s++)
                tqc_fma_coord<GT>(d, qk, k0 + s, cent[(w[gi] >> s) & 1]);
        }
    }
}

/* sum_k qs[k] * (2 sign_k - 1) over one part. */
template <int GT>
__device__ __forceinline__ void tqc_score_qjl(const tqc_part &pp, const tqc_part_off &po,
                                              const uint8_t *rec, uint32_t T, uint32_t t,
                                              const float *qs, float (&d)[GT])
{
    const uint32_t *ps = (const uint32_t *)(rec + po.signs) + t;
    for (uint32_t g0 = 0; g0 < pp.n; g0 += 32) {
        uint32_t w = __ldg(ps + (size_t)(g0 / 32) * T);
        const bool full = g0 + 32 <= pp.n;
#pragma unroll
        for (int s = 0; s < 32; s++) {
            if (full || (uint32_t)s < pp.n - g0) {
                uint32_t neg = ((w >> s) & 1) ? 0u : 0x80000000u;
#pragma unroll
                for (int g = 0; g < GT; g++)
                    d[g] += __uint_as_float(__float_as_uint(qs[(g0 + s) * GT + g]) ^ neg);
            }
        }
    }
}

/* Shared memory plan (floats / words), sized at launch. */
struct tqc_att_smem {
    uint32_t qraw, rot, qk, qs, centk, centv, prob, vw, red, chk, chv, invv, total;
};

__host__ __device__ inline tqc_att_smem tqc_att_plan(uint32_t P, uint32_t GT, uint32_t slots)
{
    tqc_att_smem s;
    uint32_t o = 0;
    s.qraw = o; o += GT * P;
    s.rot = o; o += GT * P;
    s.qk = o; o += GT * P;
    s.qs = o; o += GT * P;
    s.centk = o; o += 2 * 256;
    s.centv = o; o += 2 * 256;
    s.prob = o; o += 2 * TQC_ATT_TT * GT;
    s.vw = o; o += slots * (TQC_ATT_TT + 1);
    s.red = o; o += (TQC_ATT_THREADS / 32) * GT;
    s.chk = o; o += P / 2 + 1; /* uint16 lists packed two per word */
    s.chv = o; o += P / 2 + 1;
    s.invv = o; o += P / 2 + 1;
    s.total = o * 4;
    return s;
}

template <int GT, int CPT>
__global__ void __launch_bounds__(TQC_ATT_THREADS)
    tqc_attention_kernel(const __grid_constant__ tqc_att A, const int32_t *chunk_indptr,
                         const tq_cuda_chunk *chunks, const void *q, float *ws_o, float *ws_ml)
{
    extern __shared__ float sm[];
    __shared__ uint32_t slot_src[TQC_VPRE];
    const uint32_t P = A.P, tid = threadIdx.x;
    const uint32_t sp = blockIdx.x, seq = blockIdx.z;
    const uint32_t h = blockIdx.y / A.n_groups, gi = blockIdx.y % A.n_groups;
    const uint32_t hq0 = h * A.group + gi * GT;
    const tqc_att_smem L = tqc_att_plan(P, GT, A.kv_slots);
    float *qraw = sm + L.qraw, *rot = sm + L.rot, *qk = sm + L.qk, *qs = sm + L.qs;
    float *centk = sm + L.centk, *centv = sm + L.centv, *prob = sm + L.prob, *red = sm + L.red;
    uint32_t *vw = (uint32_t *)(sm + L.vw);
    uint16_t *chk = (uint16_t *)(sm + L.chk), *chv = (uint16_t *)(sm + L.chv);
    uint16_t *invv = (uint16_t *)(sm + L.invv);

    const int32_t c_begin = chunk_indptr[seq], c_end = chunk_indptr[seq + 1];
    const int32_t c0 = c_begin + (int32_t)(sp * A.cps);
    const int32_t c1 = min(c_end, c0 + (int32_t)A.cps);

    /* tables and the raw query */
    for (uint32_t p = 0; p < 2; p++) {
        uint32_t nk = p < A.K.n_parts && A.K.part[p].m ? 1u << A.K.part[p].m : 0;
        uint32_t nv = p < A.V.n_parts && A.V.part[p].m ? 1u << A.V.part[p].m : 0;
        for (uint32_t i = tid; i < 256; i += TQC_ATT_THREADS) {
            centk[p * 256 + i] = i < nk ? __ldg(A.K.part[p].cent + i) : 0.0f;
            centv[p * 256 + i] = i < nv ? __ldg(A.V.part[p].cent + i) : 0.0f;
        }
    }
    for (uint32_t i = tid; i < GT * P; i += TQC_ATT_THREADS) {
        uint32_t g = i / P, j = i % P;
        float v = 0.0f;
        if (j < A.head_dim) {
            size_t qi = ((size_t)seq * A.n_q + hq0 + g) * A.head_dim + j;
            uint16_t b = ((const uint16_t *)q)[qi];
            v = A.q_dtype == TQ_DTYPE_BF16 ? tqc_bf16_to_f32(b) : tqc_f16_to_f32(b);
        }
        qraw[i] = v;
    }
    const bool k_split = A.K.n_parts == 2, v_split = A.V.n_parts == 2;
    if (!k_split)
        tqc_channels(NULL, P, 1, chk, chk);
    if (!v_split)
        tqc_channels(NULL, P, 1, chv, invv);
    __syncthreads();
    if (!k_split && c0 < c1)
        tqc_prep_q<GT>(A, qraw, rot, chk, qk, qs);

    /* this thread's rotated V coordinates kk = tid + 128 i: part, index, staging slot, shift */
    const uint32_t n0v = A.V.part[0].n;
    float acc[CPT][GT], oacc[CPT][GT];
#pragma unroll
    for (int i = 0; i < CPT; i++)
#pragma unroll
        for (int g = 0; g < GT; g++)
            acc[i][g] = oacc[i][g] = 0.0f;
    float m_run[GT], l_part[GT];
#pragma unroll
    for (int g = 0; g < GT; g++) {
        m_run[g] = -INFINITY;
        l_part[g] = 0.0f;
    }

    for (int32_t c = c0; c < c1; c++) {
        const tq_cuda_chunk ck = chunks[c];
        const uint32_t T = ck.n_tokens;
        tqc_part_off ko[2], vo[2];
        uint32_t krs, vrs;
        tqc_part_offsets(A.K, T, ko, krs);
        tqc_part_offsets(A.V, T, vo, vrs);
        const uint8_t *krec = (const uint8_t *)ck.k_section + (size_t)h * krs;
        const uint8_t *vrec = (const uint8_t *)ck.v_section + (size_t)h * vrs;
        __syncthreads(); /* the previous chunk is done with slot_src */
        if (tid < A.kv_slots && tid < TQC_VPRE) {
            /* byte offset in the record of staging slot tid (part p, plane q, word i) */
            for (uint32_t p = 0; p < A.V.n_parts; p++)
                for (uint32_t qq = 0; qq < A.V.part[p].n_planes; qq++) {
                    uint32_t s0 = A.slot_off[p][qq];
                    if (tid >= s0 && tid < s0 + A.V.part[p].plane_words[qq])
                        slot_src[tid] = vo[p].plane[qq] + (tid - s0) * 4 * T;
                }
        }
        __syncthreads();
        if (k_split || v_split) {
            __syncthreads(); /* previous chunk done with the lists */
            if (k_split)
                tqc_channels(krec, P, 2, chk, invv); /* invv used as scratch here */
            __syncthreads();
            if (v_split)
                tqc_channels(vrec, P, 2, chv, invv);
            __syncthreads();
            if (k_split)
                tqc_prep_q<GT>(A, qraw, rot, chk, qk, qs);
        }
        for (uint32_t t0 = 0; t0 < T; t0 += TQC_ATT_TT) {
            const uint32_t t = t0 + tid;
            const bool valid = t < T;
            /* this tile's V words: issued now, stored to shared memory after the scores */
            uint32_t vpre[TQC_VPRE];
            const bool vfast = A.kv_slots <= TQC_VPRE;
            if (vfast) {
#pragma unroll
                for (int i = 0; i < TQC_VPRE; i++)
                    vpre[i] = (valid && (uint32_t)i < A.kv_slots)
                                  ? __ldg((const uint32_t *)(vrec + slot_src[i]) + t)
                                  : 0u;
            } else if (valid) {
                for (uint32_t p = 0; p < A.V.n_parts; p++) {
                    const tqc_part &pp = A.V.part[p];
                    for (uint32_t qq = 0; qq < pp.n_planes; qq++) {
                        const uint32_t *src = (const uint32_t *)(vrec + vo[p].plane[qq]) + t;
                        uint32_t s0 = A.slot_off[p][qq];
                        for (uint32_t i = 0; i < pp.plane_words[qq]; i++)
                            vw[(s0 + i) * (TQC_ATT_TT + 1) + tid] = __ldg(src + (size_t)i * T);
                    }
                }
            }
            /* scores */
            float s[GT];
#pragma unroll
            for (int g = 0; g < GT; g++)
                s[g] = -INFINITY;
            float vscale[2] = {0.0f, 0.0f};
            if (valid) {
#pragma unroll
                for (int g = 0; g < GT; g++)
                    s[g] = 0.0f;
                for (uint32_t p = 0; p < A.K.n_parts; p++) {
                    const tqc_part &pp = A.K.part[p];
                    const uint32_t off = p ? A.K.part[0].n : 0;
                    float d[GT];
#pragma unroll
                    for (int g = 0; g < GT; g++)
                        d[g] = 0.0f;
                    if (pp.m && pp.m <= 4 && pp.n % 32 == 0 && pp.n <= 128)
                        tqc_score_mse_fast<GT>(pp, ko[p], krec, T, t, centk + p * 256,
                                               qk + off * GT, d);
                    else if (pp.m)
                        tqc_score_mse<GT>(pp, ko[p], krec, T, t, centk + p * 256, qk + off * GT,
                                          d);
                    float sc = tqc_f16_to_f32(((const uint16_t *)(krec + ko[p].scale))[t]);
#pragma unroll
                    for (int g = 0; g < GT; g++)
                        s[g] += sc * d[g];
                    if (pp.prod) {
                        float e[GT];
#pragma unroll
                        for (int g = 0; g < GT; g++)
                            e[g] = 0.0f;
                        tqc_score_qjl<GT>(pp, ko[p], krec, T, t, qs + off * GT, e);
                        float gm = tqc_f16_to_f32(((const uint16_t *)(krec + ko[p].gamma))[t]);
#pragma unroll
                        for (int g = 0; g < GT; g++)
                            s[g] += gm * e[g];
                    }
                }
                for (uint32_t p = 0; p < A.V.n_parts; p++)
                    vscale[p] = tqc_f16_to_f32(((const uint16_t *)(vrec + vo[p].scale))[t]);
            }
            if (vfast)
#pragma unroll
                for (int i = 0; i < TQC_VPRE; i++)
                    if ((uint32_t)i < A.kv_slots)
                        vw[i * (TQC_ATT_TT + 1) + tid] = vpre[i];
            /* tile maximum per head */
            float mx[GT];
#pragma unroll
            for (int g = 0; g < GT; g++) {
                float v = s[g];
#pragma unroll
                for (int o = 16; o; o >>= 1)
                    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
                mx[g] = v;
            }
            if ((tid & 31) == 0)
#pragma unroll
                for (int g = 0; g < GT; g++)
                    red[(tid >> 5) * GT + g] = mx[g];
            __syncthreads();
            float alpha[GT];
#pragma unroll
            for (int g = 0; g < GT; g++) {
                float v = red[g];
#pragma unroll
                for (int w = 1; w < TQC_ATT_THREADS / 32; w++)
                    v = fmaxf(v, red[w * GT + g]);
                float mn = fmaxf(m_run[g], v);
                alpha[g] = exp2f(m_run[g] - mn); /* 0 on the first tile (m_run = -inf) */
                m_run[g] = mn;
                float pr = valid ? exp2f(s[g] - mn) : 0.0f;
                l_part[g] = l_part[g] * alpha[g] + pr;
                prob[tid * GT + g] = pr * vscale[0];
                prob[TQC_ATT_TT * GT + tid * GT + g] = pr * vscale[1];
            }
#pragma unroll
            for (int i = 0; i < CPT; i++)
#pragma unroll
                for (int g = 0; g < GT; g++)
                    acc[i][g] *= alpha[g];
            if (!v_split) {
                /* nothing else to rescale */
            } else {
#pragma unroll
                for (int i = 0; i < CPT; i++)
#pragma unroll
                    for (int g = 0; g < GT; g++)
                        oacc[i][g] *= alpha[g];
            }
            __syncthreads();
            /* values: coordinates kk = tid + 128 i of the rotated domain */
            const uint32_t nt = min((uint32_t)TQC_ATT_TT, T - t0);
#pragma unroll
            for (int i = 0; i < CPT; i++) {
                const uint32_t kk = tid + TQC_ATT_THREADS * i;
                if (kk >= P)
                    break;
                const uint32_t p = kk < n0v ? 0 : 1, k = kk - (p ? n0v : 0);
                const tqc_part &pp = A.V.part[p];
                const uint32_t m = pp.m;
                if (!m)
                    continue;
                uint32_t slot0, sh0, slot1 = 0, sh1 = 0, mask0;
                if (m == 3) {
                    slot0 = A.slot_off[p][0] + k / 16;
                    sh0 = (k % 16) * 2;
                    mask0 = 3;
                    slot1 = A.slot_off[p][1] + k / 32;
                    sh1 = k % 32;
                } else {
                    slot0 = A.slot_off[p][0] + (k * m) / 32;
                    sh0 = (k * m) % 32;
                    mask0 = (1u << m) - 1;
                }
                const uint32_t *w0 = vw + slot0 * (TQC_ATT_TT + 1);
                const uint32_t *w1 = vw + slot1 * (TQC_ATT_TT + 1);
                const float *cv = centv + p * 256;
                const float *pr = prob + p * TQC_ATT_TT * GT;
                float a[GT];
#pragma unroll
                for (int g = 0; g < GT; g++)
                    a[g] = acc[i][g];
                if (m == 3) {
#pragma unroll 4
                    for (uint32_t tt = 0; tt < nt; tt++) {
                        uint32_t code = ((w0[tt] >> sh0) & 3) | (((w1[tt] >> sh1) & 1) << 2);
                        tqc_fma_coord<GT>(a, pr, tt, cv[code]);
                    }
                } else {
#pragma unroll 4
                    for (uint32_t tt = 0; tt < nt; tt++)
                        tqc_fma_coord<GT>(a, pr, tt, cv[(w0[tt] >> sh0) & mask0]);
                }
#pragma unroll
                for (int g = 0; g < GT; g++)
                    acc[i][g] = a[g];
            }
            __syncthreads(); /* the next tile overwrites vw and prob */
        }
        if (v_split) {
            /* rotate this chunk's values back: x = D . (H z) / n, scattered by the chunk's mask */
#pragma unroll
            for (int i = 0; i < CPT; i++) {
                const uint32_t kk = tid + TQC_ATT_THREADS * i;
                if (kk < P)
#pragma unroll
                    for (int g = 0; g < GT; g++) {
                        rot[g * P + kk] = acc[i][g];
                        acc[i][g] = 0.0f;
                    }
            }
            /* inverse list of this chunk's V channels */
            for (uint32_t j = tid; j < P; j += TQC_ATT_THREADS)
                invv[chv[j]] = (uint16_t)j;
            __syncthreads();
            tqc_fwht_smem<GT>(rot, P, n0v);
#pragma unroll
            for (int i = 0; i < CPT; i++) {
                const uint32_t j = tid + TQC_ATT_THREADS * i;
                if (j < P) {
                    const uint32_t kk = invv[j], p = kk < n0v ? 0 : 1, k = kk - (p ? n0v : 0);
                    const float f = 1.0f / (float)A.V.part[p].n;
                    const uint32_t ds = __ldg(A.V.part[p].dsign + k);
#pragma unroll
                    for (int g = 0; g < GT; g++)
                        oacc[i][g] += __uint_as_float(__float_as_uint(rot[g * P + kk] * f) ^ ds);
                }
            }
        }
    }
    if (!v_split) {
        __syncthreads();
#pragma unroll
        for (int i = 0; i < CPT; i++) {
            const uint32_t kk = tid + TQC_ATT_THREADS * i;
            if (kk < P)
#pragma unroll
                for (int g = 0; g < GT; g++)
                    rot[g * P + kk] = acc[i][g];
        }
        __syncthreads();
        tqc_fwht_smem<GT>(rot, P, P);
        const float f = 1.0f / (float)P;
#pragma unroll
        for (int i = 0; i < CPT; i++) {
            const uint32_t j = tid + TQC_ATT_THREADS * i;
            if (j < P) {
                const uint32_t ds = __ldg(A.V.part[0].dsign + j);
#pragma unroll
                for (int g = 0; g < GT; g++)
                    oacc[i][g] = __uint_as_float(__float_as_uint(rot[g * P + j] * f) ^ ds);
            }
        }
    }
    /* the softmax denominator: every thread holds its tokens' share, all with the same m_run */
    __syncthreads();
#pragma unroll
    for (int g = 0; g < GT; g++) {
        float v = l_part[g];
#pragma unroll
        for (int o = 16; o; o >>= 1)
            v += __shfl_xor_sync(0xffffffffu, v, o);
        if ((tid & 31) == 0)
            red[(tid >> 5) * GT + g] = v;
    }
    __syncthreads();
    const size_t base = ((size_t)seq * A.n_q + hq0) * A.n_splits + sp;
#pragma unroll
    for (int g = 0; g < GT; g++) {
        const size_t row = base + (size_t)g * A.n_splits;
#pragma unroll
        for (int i = 0; i < CPT; i++) {
            const uint32_t j = tid + TQC_ATT_THREADS * i;
            if (j < A.head_dim)
                ws_o[row * A.head_dim + j] = oacc[i][g];
        }
        if (tid == 0) {
            float l = 0.0f;
            for (int w = 0; w < TQC_ATT_THREADS / 32; w++)
                l += red[w * GT + g];
            ws_ml[row * 2] = m_run[g];
            ws_ml[row * 2 + 1] = l;
        }
    }
}

#define TQC_MERGE_BATCH 1024
#define TQC_MERGE_FAST 32 /* splits the one-load merge takes (tqc_merge_fast) */

/* Output coordinate j of query head hq: the four warps' sums over L, in the query dtype. */
__device__ __forceinline__ void tqc_merge_store(const tqc_att &A,
                                                const float (*part)[TQ_MAX_HEAD_DIM], float inv,
                                                uint32_t seq, uint32_t hq, uint32_t j, void *out)
{
    const float o = (part[0][j] + part[1][j] + part[2][j] + part[3][j]) * inv;
    const size_t oi = ((size_t)seq * A.n_q + hq) * A.head_dim + j;
    if (A.q_dtype == TQ_DTYPE_BF16)
        ((uint16_t *)out)[oi] = tqc_f32_to_bf16(o);
    else
        ((uint16_t *)out)[oi] = tqc_f32_to_f16(o);
}

/* The merge of at most TQC_MERGE_FAST splits of 128-float rows with one round of loads, where the
 * general one below takes two rounds and two more barriers: every warp loads all the (m, l)
 * pairs (lane s: split s) and its own rows (splits w, w + 4, ...) at once, then computes the
 * maximum and the weights itself. Leaves the warp's weighted sums in part[warp]; returns L. */
__device__ __forceinline__ float tqc_merge_fast(const float *ws_o, const float *ml2, size_t base,
                                                uint32_t S, uint32_t lane, uint32_t warp,
                                                float (*part)[TQ_MAX_HEAD_DIM])
{
    constexpr int R = TQC_MERGE_FAST / 4; /* rows per warp */
    float m = -INFINITY, l = 0.0f;
    if (lane < S) {
        m = ml2[2 * lane];
        l = ml2[2 * lane + 1];
    }
    float r[R][4];
#pragma unroll
    for (int i = 0; i < R; i++) {
        const uint32_t sp = warp + 4 * i;
        const float *row = ws_o + (base + sp) * 128 + lane;
#pragma unroll
        for (int k = 0; k < 4; k++)
            r[i][k] = sp < S ? row[32 * k] : 0.0f;
    }
    if (!(l > 0.0f))
        m = -INFINITY; /* an empty split (no tokens) weighs nothing */
    float M = m;
#pragma unroll
    for (int k = 16; k; k >>= 1)
        M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, k));
    const float w = m == -INFINITY ? 0.0f : exp2f(m - M);
    float L = l * w;
#pragma unroll
    for (int k = 16; k; k >>= 1)
        L += __shfl_xor_sync(0xffffffffu, L, k);
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int i = 0; i < R; i++) {
        const float wi = __shfl_sync(0xffffffffu, w, (warp + 4 * i) & 31);
#pragma unroll
        for (int k = 0; k < 4; k++)
            acc[k] += r[i][k] * wi;
    }
#pragma unroll
    for (int k = 0; k < 4; k++)
        part[warp][lane + 32 * k] = acc[k];
    return L;
}

/* Merge: block (query head, sequence) of 128 threads. Each batch of splits' (m, l) is staged in
 * shared memory in one pass and warp 0 turns it into weights 2^(m_s - M); then warp w sums the
 * rows of splits w, w + 4, ... (lane j holds coordinates j, j + 32, ...: one coalesced row per
 * step, every step independent, so all of a warp's loads are in flight together) and the four
 * partial sums meet in shared memory. The running maximum of earlier batches rescales them. */
__global__ void __launch_bounds__(128)
    tqc_attention_merge(const __grid_constant__ tqc_att A, const float *ws_o, const float *ws_ml,
                        void *out)
{
    __shared__ float wt[TQC_MERGE_BATCH], wl[TQC_MERGE_BATCH];
    __shared__ float part[4][TQ_MAX_HEAD_DIM];
    __shared__ float stat[2];
    const uint32_t hq = blockIdx.x, seq = blockIdx.y, S = A.n_splits, D = A.head_dim;
    const uint32_t tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const size_t base = ((size_t)seq * A.n_q + hq) * S;
    tqc_grid_wait(); /* launched ahead of the split kernel's end (att_merge_launch) */
    const float *ml2 = ws_ml + base * 2; /* (m, l) per split; only 4-byte aligned */
    float M = -INFINITY, L = 0.0f;
    if (S <= TQC_MERGE_FAST && D == 128) {
        L = tqc_merge_fast(ws_o, ml2, base, S, lane, warp, part);
        __syncthreads();
        const float inv = L > 0.0f ? 1.0f / L : 0.0f;
        tqc_merge_store(A, part, inv, seq, hq, tid, out);
        return;
    }
    float acc[TQ_MAX_HEAD_DIM / 32];
#pragma unroll
    for (int k = 0; k < TQ_MAX_HEAD_DIM / 32; k++)
        acc[k] = 0.0f;
    for (uint32_t s0 = 0; s0 < S; s0 += TQC_MERGE_BATCH) {
        const uint32_t n = min((uint32_t)TQC_MERGE_BATCH, S - s0);
        __syncthreads(); /* the previous batch is consumed */
        for (uint32_t i = tid; i < n; i += blockDim.x) {
            const float l = ml2[2 * (s0 + i) + 1], m = ml2[2 * (s0 + i)];
            wt[i] = l > 0.0f ? m : -INFINITY;
            wl[i] = l > 0.0f ? l : 0.0f;
        }
        __syncthreads();
        if (warp == 0) {
            float m = -INFINITY;
            for (uint32_t i = lane; i < n; i += 32)
                m = fmaxf(m, wt[i]);
#pragma unroll
            for (int k = 16; k; k >>= 1)
                m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, k));
            const float mn = fmaxf(M, m);
            float l = 0.0f;
            for (uint32_t i = lane; i < n; i += 32) {
                const float w = wt[i] == -INFINITY ? 0.0f : exp2f(wt[i] - mn);
                l += wl[i] * w;
                wt[i] = w;
            }
#pragma unroll
            for (int k = 16; k; k >>= 1)
                l += __shfl_xor_sync(0xffffffffu, l, k);
            if (lane == 0) {
                stat[0] = mn;
                stat[1] = l;
            }
        }
        __syncthreads();
        const float mn = stat[0];
        const float r = M == -INFINITY ? 0.0f : exp2f(M - mn); /* rescales earlier batches */
        L = L * r + stat[1];
        M = mn;
#pragma unroll
        for (int k = 0; k < TQ_MAX_HEAD_DIM / 32; k++)
            acc[k] *= r;
        if (D == 128) { /* the common head dim: four loads per row, eight rows in flight */
#pragma unroll 8
            for (uint32_t i = warp; i < n; i += 4) {
                const float w = wt[i];
                const float *row = ws_o + (base + s0 + i) * D + lane;
#pragma unroll
                for (int k = 0; k < 4; k++)
                    acc[k] += row[32 * k] * w;
            }
        } else {
#pragma unroll 4
            for (uint32_t i = warp; i < n; i += 4) {
                const float w = wt[i];
                const float *row = ws_o + (base + s0 + i) * D;
#pragma unroll
                for (int k = 0; k < TQ_MAX_HEAD_DIM / 32; k++)
                    if (lane + 32 * k < D)
                        acc[k] += row[lane + 32 * k] * w;
            }
        }
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < TQ_MAX_HEAD_DIM / 32; k++)
        if (lane + 32 * k < D)
            part[warp][lane + 32 * k] = acc[k];
    __syncthreads();
    const float inv = L > 0.0f ? 1.0f / L : 0.0f;
    for (uint32_t j = tid; j < D; j += blockDim.x)
        tqc_merge_store(A, part, inv, seq, hq, j, out);
}

/* ---- Host --------------------------------------------------------------------------------- */

static uint32_t att_gt(uint32_t group)
{
    return group % 8 == 0 ? 8 : group % 4 == 0 ? 4 : group % 2 == 0 ? 2 : 1;
}

/* Multiprocessors of the current device (132 on an H200 when it cannot be asked). */
uint32_t tqkv__att_sm_count(void)
{
    int dev = 0, n = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n <= 0)
        return 132;
    return (uint32_t)n;
}

/* Splits per (sequence, KV head) for the tensor-core kernel, whose blocks all take about the same
 * time: the count whose waves of blocks over the `slots` resident at once finish first. A block
 * costs its chunks, rounded up to whole rounds of the nl its warps walk side by side, plus about
 * two chunks' worth of fixed work (tables, query rotation, merge), so (1, 128K) takes 32 splits
 * of 16 chunks (one wave of 256 blocks on 264 slots), and (8, 32K) 4 splits of 32 chunks (one
 * wave) rather than 5 of 26 (320 blocks: a second wave for 56). */
static uint32_t att_mma_splits(uint32_t ctas, uint32_t slots, uint32_t max_chunks)
{
    uint32_t best = 1;
    uint64_t best_cost = UINT64_MAX;
    for (uint32_t w = 1; w <= max_chunks && w <= 4 * slots; w++) {
        const uint32_t cps = (max_chunks + w - 1) / w, sp = (max_chunks + cps - 1) / cps;
        if (sp != w)
            continue; /* the same split as a smaller w */
        const uint64_t waves = ((uint64_t)ctas * sp + slots - 1) / slots;
        const uint32_t nl = tqc_chunk_lanes(cps);
        const uint64_t cost = waves * ((cps + nl - 1) / nl * nl + 2);
        if (cost < best_cost) {
            best_cost = cost;
            best = sp;
        }
    }
    return best;
}

static int att_setup(const tq_cuda_attn_params *p, uint32_t n_seqs, uint32_t max_chunks,
                     tqc_att *A)
{
    if (!p || p->head_dim == 0 || p->head_dim > TQ_MAX_HEAD_DIM || p->n_kv_heads == 0 ||
        p->n_q_heads == 0 || p->n_q_heads % p->n_kv_heads || n_seqs == 0 || max_chunks == 0)
        return TQKV_EINVAL;
    if (p->q_dtype != TQ_DTYPE_F16 && p->q_dtype != TQ_DTYPE_BF16)
        return TQKV_EBADDTYPE;
    if (tq_recipe_validate(&p->k, p->head_dim) || tq_recipe_validate(&p->v, p->head_dim))
        return TQKV_EBADCODEC;
    if (p->k.mode == TQ_MODE_RAW || p->v.mode != TQ_MODE_MSE)
        return TQKV_ENOTSUP; /* raw tensors and prod values: the CPU reference handles them */
    memset(A, 0, sizeof(*A));
    tqc_rec RK, RV;
    int rc = tqkv__cuda_rec(&p->k, p->head_dim, p->n_kv_heads, 1, p->seed,
                            (tq_codebook_kind)p->codebook, &RK);
    if (!rc)
        rc = tqkv__cuda_rec(&p->v, p->head_dim, p->n_kv_heads, 1, p->seed,
                            (tq_codebook_kind)p->codebook, &RV);
    if (rc)
        return rc;
    A->P = RK.P;
    A->head_dim = p->head_dim;
    A->n_kv = p->n_kv_heads;
    A->n_q = p->n_q_heads;
    A->group = p->n_q_heads / p->n_kv_heads;
    uint32_t GT = att_gt(A->group);
    A->n_groups = A->group / GT;
    A->q_dtype = p->q_dtype;
    const float c = p->softmax_scale * TQC_LOG2E;
    for (uint32_t i = 0; i < RK.n_parts; i++) {
        double n = RK.part[i].n;
        A->c_qk[i] = (float)(c / n);
        A->c_qs[i] = (float)(c * 1.2533141373155002512 / (n * sqrt(n)));
    }
    A->K.n_parts = RK.n_parts;
    A->K.mask_words = RK.mask_words;
    A->V.n_parts = RV.n_parts;
    A->V.mask_words = RV.mask_words;
    uint32_t slots = 0;
    for (int i = 0; i < 2; i++) {
        A->K.part[i] = RK.part[i];
        A->V.part[i] = RV.part[i];
        for (uint32_t qq = 0; qq < 2; qq++) {
            A->slot_off[i][qq] = slots;
            if ((uint32_t)i < RV.n_parts && qq < RV.part[i].n_planes)
                slots += RV.part[i].plane_words[qq];
        }
    }
    A->kv_slots = slots ? slots : 1;
    A->softmax_scale = p->softmax_scale;
    A->mma = tqkv__att_mma_eligible(*A) && !p->no_tensor_cores;
    /* split-KV: enough blocks to keep every multiprocessor busy. The general kernel is
     * latency-bound below about 8 resident blocks per multiprocessor; the tensor-core kernel
     * (one block per KV head and all its query heads, 2 resident per multiprocessor) takes the
     * split that fills whole waves (att_mma_splits). */
    uint32_t ctas = A->mma ? n_seqs * A->n_kv : n_seqs * A->n_kv * A->n_groups;
    uint32_t per_sm = A->mma ? tqkv__att_mma_blocks_per_sm(*A) : 8;
    uint32_t want = A->mma ? att_mma_splits(ctas, tqkv__att_sm_count() * per_sm, max_chunks)
                           : (tqkv__att_sm_count() * per_sm + ctas - 1) / ctas;
    if (p->max_splits && want > p->max_splits)
        want = p->max_splits;
    if (want > max_chunks)
        want = max_chunks;
    if (want == 0)
        want = 1;
    A->cps = (max_chunks + want - 1) / want;
    A->n_splits = (max_chunks + A->cps - 1) / A->cps;
    return 0;
}

/* Bytes of the split outputs (rows of head_dim sums, then (m, l) per row), rounded up to 256 so
 * that what follows them in the workspace (tqkv__att_mma_extra) is aligned for vector copies. */
static size_t att_split_bytes(const tqc_att &A, uint32_t n_seqs)
{
    const size_t rows = (size_t)n_seqs * A.n_q * A.n_splits;
    return (rows * (A.head_dim + 2) * sizeof(float) + 255) & ~(size_t)255;
}

extern "C" size_t tq_cuda_attention_workspace_size(const tq_cuda_attn_params *p, uint32_t n_seqs,
                                                   uint32_t max_chunks)
{
    tqc_att A;
    if (att_setup(p, n_seqs, max_chunks, &A))
        return 0;
    return att_split_bytes(A, n_seqs) + (A.mma ? tqkv__att_mma_extra(A, n_seqs, max_chunks) : 0);
}

extern "C" int tq_cuda_chunk_from_block(const tq_block_view *b, const void *dev_block,
                                        uint32_t layer, tq_cuda_chunk *out)
{
    const uint8_t *ks, *vs;
    size_t kl, vl;
    tq_recipe kr, vr;
    if (!b || !dev_block || !out)
        return TQKV_EINVAL;
    int rc = tq_block_section(b, layer, TQ_K, &ks, &kl, &kr);
    if (!rc)
        rc = tq_block_section(b, layer, TQ_V, &vs, &vl, &vr);
    if (rc)
        return rc;
    out->k_section = (uint64_t)(uintptr_t)dev_block + (uint64_t)(ks - b->base);
    out->v_section = (uint64_t)(uintptr_t)dev_block + (uint64_t)(vs - b->base);
    out->n_tokens = b->n_tokens;
    out->reserved = 0;
    return 0;
}

/* The merge, launched as a programmatic dependent of the split kernel: its blocks are scheduled
 * as the split kernel's finish (or signal tqc_grid_dependents) instead of after the whole grid
 * has drained, and wait in tqc_grid_wait until every split row is written and visible. */
static int att_merge_launch(const tqc_att &A, uint32_t n_seqs, const float *wo, const float *wml,
                            void *out, cudaStream_t s)
{
    return tqc_launch_dependent(tqc_attention_merge, dim3(A.n_q, n_seqs), dim3(128), 0, s,
                                "attention merge launch", A, wo, wml, out);
}

template <int GT, int CPT>
static int launch_att(const tqc_att &A, uint32_t n_seqs, const int32_t *indptr,
                      const tq_cuda_chunk *chunks, const void *q, float *wo, float *wml,
                      cudaStream_t s)
{
    tqc_att_smem L = tqc_att_plan(A.P, GT, A.kv_slots);
    if (L.total > 48 * 1024) {
        cudaError_t e = cudaFuncSetAttribute(tqc_attention_kernel<GT, CPT>,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             (int)L.total);
        if (e != cudaSuccess)
            return tqkv__cuda_err(e, "attention smem attribute");
    }
    dim3 grid(A.n_splits, A.n_kv * A.n_groups, n_seqs);
    tqc_attention_kernel<GT, CPT><<<grid, TQC_ATT_THREADS, L.total, s>>>(A, indptr, chunks, q,
                                                                           wo, wml);
    TQC_CHECK_LAUNCH("attention launch");
    return 0;
}

extern "C" int tq_cuda_attention(const tq_cuda_attn_params *p, uint32_t n_seqs,
                                 const int32_t *chunk_indptr, const tq_cuda_chunk *chunks,
                                 uint32_t max_chunks, const void *q, void *out, void *workspace,
                                 size_t workspace_size, void *stream)
{
    if (!chunk_indptr || !chunks || !q || !out || !workspace || ((uintptr_t)workspace & 15))
        return TQKV_EINVAL;
    tqc_att A;
    int rc = att_setup(p, n_seqs, max_chunks, &A);
    if (rc)
        return rc;
    size_t rows = (size_t)n_seqs * A.n_q * A.n_splits;
    size_t split_bytes = att_split_bytes(A, n_seqs);
    if (workspace_size < split_bytes + (A.mma ? tqkv__att_mma_extra(A, n_seqs, max_chunks) : 0))
        return TQKV_ENOSPC;
    float *wo = (float *)workspace, *wml = wo + rows * A.head_dim;
    cudaStream_t s = (cudaStream_t)stream;
    if (A.mma) {
        rc = tqkv__att_mma_launch(A, n_seqs, max_chunks, chunk_indptr, chunks, q, wo, wml,
                                  (char *)workspace + split_bytes, s);
        if (rc)
            return rc;
        return att_merge_launch(A, n_seqs, wo, wml, out, s);
    }
    uint32_t GT = att_gt(A.group);
    bool two = A.P > TQC_ATT_THREADS;
    switch (GT * 2 + (two ? 1 : 0)) {
    case 2: rc = launch_att<1, 1>(A, n_seqs, chunk_indptr, chunks, q, wo, wml, s); break;
    case 3: rc = launch_att<1, 2>(A, n_seqs, chunk_indptr, chunks, q, wo, wml, s); break;
    case 4: rc = launch_att<2, 1>(A, n_seqs, chunk_indptr, chunks, q, wo, wml, s); break;
    case 5: rc = launch_att<2, 2>(A, n_seqs, chunk_indptr, chunks, q, wo, wml, s); break;
    case 8: rc = launch_att<4, 1>(A, n_seqs, chunk_indptr, chunks, q, wo, wml, s); break;
    case 9: rc = launch_att<4, 2>(A, n_seqs, chunk_indptr, chunks, q, wo, wml, s); break;
    case 16: rc = launch_att<8, 1>(A, n_seqs, chunk_indptr, chunks, q, wo, wml, s); break;
    default: rc = launch_att<8, 2>(A, n_seqs, chunk_indptr, chunks, q, wo, wml, s); break;
    }
    if (rc)
        return rc;
    return att_merge_launch(A, n_seqs, wo, wml, out, s);
}
