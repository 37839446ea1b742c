/* TurboQuant encode on the GPU: KV in device memory (fp16, bf16 or fp32; contiguous or paged) ->
 * the section layout of kernels/FORMAT.md, bit for bit what the CPU reference writes.
 *
 * Design: the common recipes (one mse part of 64 or 128 with 1 to 4 bits, fp16/bf16 rows that can
 * be read as 16-byte chunks: tq4, tq3, the V side of most presets) go to the streaming kernel
 * (tqc_encode_p_kernel, below): two lanes per vector with half the vector each in registers, the
 * codebook search as one cell-table lookup, persistent warps fed by cp.async. Everything else
 * (prod recipes, outlier splits, fp32 input, P = 256, 8-bit codes) takes the eight-lane kernel
 * (tqc_encode_g_kernel, parts of dimension >= 32): lane j holds coordinates 4j + e + 32r, which
 * makes the reference's fixed-tree sums and FWHT stages a few shfl_xor steps, lets a group read
 * its row as 64-byte runs, and lets a block of 32 tokens write each code-plane word as one
 * 128-byte run through shared memory. The one-thread kernel (tqc_encode_kernel, template N = part
 * dimension) remains for parts of 16 (P = 32 split in two). Outlier recipes first sum channel
 * energies (sequentially over tokens, like the reference): tqc_energy_kernel, one chain per lane
 * and 32 channels per block, parks them in the head record, tqc_rank_kernel chooses the outlier
 * channels and writes the mask (paged views and fp32 input use the one-block-per-head
 * tqc_mask_kernel instead); the encode kernel then reads the mask back. Several sections that
 * share a recipe (the layers of a block) are encoded by one launch (jobs). */
#include <math.h>
#include <string.h>

#include "tqc.cuh"

#define TQC_MAX_JOBS 64
#define TQC_ENC_THREADS 128

/* Threads per block of the encode kernel: outlier recipes keep a per-thread row in shared memory
 * (P + 1 floats, padded against bank conflicts), so they use smaller blocks. */
template <int P, int NP> struct tqc_enc_tb {
    static constexpr int value = NP == 1 ? TQC_ENC_THREADS : (P == 256 ? 32 : 64);
};

/* One section to encode: its source view and destination (device pointers). */
typedef struct {
    const void *data;     /* device, elements of the view's dtype */
    const int32_t *pages; /* device [num_pages] page list, or NULL for a strided view */
    int64_t token_stride, head_stride, page_stride;
    uint32_t page_size, page_offset;
    uint8_t *dst;         /* device, section bytes (n_heads head records) */
    uint32_t pad;         /* zero bytes to write after the section (block padding), < 64 */
} tqc_job;

typedef struct {
    uint32_t n_jobs;
    uint32_t dtype; /* tq_dtype of every job's source */
    uint32_t vec;   /* 1 when rows may be read with 16-byte loads */
    tqc_job job[TQC_MAX_JOBS];
} tqc_jobs;

__device__ __forceinline__ int64_t tqc_view_index(const tqc_job &j, uint32_t t, uint32_t h)
{
    if (!j.pages)
        return (int64_t)t * j.token_stride + (int64_t)h * j.head_stride;
    uint64_t pt = (uint64_t)t + j.page_offset;
    return (int64_t)__ldg(j.pages + pt / j.page_size) * j.page_stride +
           (int64_t)(pt % j.page_size) * j.token_stride + (int64_t)h * j.head_stride;
}

__device__ __forceinline__ float tqc_load_elem(const void *data, uint32_t dtype, int64_t i)
{
    if (dtype == TQ_DTYPE_F16)
        return tqc_finite(tqc_f16_to_f32(__ldg((const unsigned short *)data + i)));
    if (dtype == TQ_DTYPE_BF16)
        return tqc_finite(tqc_bf16_to_f32(__ldg((const unsigned short *)data + i)));
    return tqc_finite(__ldg((const float *)data + i));
}

/* Reads head vector (t, h) into x[0..P): head_dim values, zero beyond. */
template <int P>
__device__ __forceinline__ void tqc_load_row(const tqc_job &j, uint32_t dtype, uint32_t vec,
                                             uint32_t head_dim, uint32_t t, uint32_t h,
                                             float (&x)[P])
{
    int64_t base = tqc_view_index(j, t, h);
    if (vec && dtype != TQ_DTYPE_F32) {
        const uint4 *p = (const uint4 *)((const unsigned short *)j.data + base);
#pragma unroll
        for (int c = 0; c < P / 8; c++) {
            if ((uint32_t)c * 8 < head_dim) {
                uint4 u = __ldg(p + c);
                uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    uint16_t lo = (uint16_t)(w[e] & 0xffff), hi = (uint16_t)(w[e] >> 16);
                    if (dtype == TQ_DTYPE_F16) {
                        x[c * 8 + 2 * e] = tqc_finite(tqc_f16_to_f32(lo));
                        x[c * 8 + 2 * e + 1] = tqc_finite(tqc_f16_to_f32(hi));
                    } else {
                        x[c * 8 + 2 * e] = tqc_finite(tqc_bf16_to_f32(lo));
                        x[c * 8 + 2 * e + 1] = tqc_finite(tqc_bf16_to_f32(hi));
                    }
                }
            } else {
#pragma unroll
                for (int e = 0; e < 8; e++)
                    x[c * 8 + e] = 0.0f;
            }
        }
    } else if (vec) {
        const float4 *p = (const float4 *)((const float *)j.data + base);
#pragma unroll
        for (int c = 0; c < P / 4; c++) {
            if ((uint32_t)c * 4 < head_dim) {
                float4 u = __ldg(p + c);
                x[c * 4] = tqc_finite(u.x);
                x[c * 4 + 1] = tqc_finite(u.y);
                x[c * 4 + 2] = tqc_finite(u.z);
                x[c * 4 + 3] = tqc_finite(u.w);
            } else {
                x[c * 4] = x[c * 4 + 1] = x[c * 4 + 2] = x[c * 4 + 3] = 0.0f;
            }
        }
    } else {
#pragma unroll
        for (int k = 0; k < P; k++)
            x[k] = (uint32_t)k < head_dim ? tqc_load_elem(j.data, dtype, base + k) : 0.0f;
    }
}

/* Number of boundaries <= v (the code of v): binary search over 2^m - 1 sorted boundaries,
 * equal to the reference's linear count (NaN compares false everywhere and gets code 0). */
__device__ __forceinline__ uint32_t tqc_quant(const float *bnd, uint32_t m, float v)
{
    uint32_t code = 0;
    for (uint32_t step = 1u << (m - 1); step; step >>= 1)
        if (v >= bnd[code + step - 1])
            code += step;
    return code;
}

/* Streams codes of consecutive coordinates into the u32 words of a sub-plane, writing each
 * full word at its word-major, token-minor place. */
struct tqc_plane_writer {
    uint32_t *base; /* word 0 of token t */
    uint32_t T, w, shift, mask, cur, sh, wi;
    __device__ __forceinline__ void init(uint8_t *rec, uint32_t off, uint32_t T_, uint32_t t,
                                         uint32_t w_, uint32_t shift_)
    {
        base = (uint32_t *)(rec + off) + t;
        T = T_;
        w = w_;
        shift = shift_;
        mask = (1u << w_) - 1;
        cur = sh = wi = 0;
    }
    __device__ __forceinline__ void put(uint32_t code)
    {
        cur |= ((code >> shift) & mask) << sh;
        sh += w;
        if (sh == 32) {
            base[(size_t)wi * T] = cur;
            wi++;
            cur = sh = 0;
        }
    }
    __device__ __forceinline__ void flush()
    {
        if (sh)
            base[(size_t)wi * T] = cur;
    }
};

/* Bits 4s + b of x (s = 0..7) gathered into bits s: one bit of each of eight nibbles. */
__device__ __forceinline__ uint32_t tqc_nib_bit(uint32_t x, int b)
{
    x = (x >> b) & 0x11111111u;
    x = (x | (x >> 3)) & 0x03030303u;
    x = (x | (x >> 6)) & 0x000f000fu;
    return (x | (x >> 12)) & 0xffu;
}
/* The low two bits of each of eight nibbles, gathered into 16 bits. */
__device__ __forceinline__ uint32_t tqc_nib_low2(uint32_t x)
{
    x &= 0x33333333u;
    x = (x | (x >> 2)) & 0x0f0f0f0fu;
    x = (x | (x >> 4)) & 0x00ff00ffu;
    return (x | (x >> 8)) & 0xffffu;
}

/* Writes the code planes of token t from the codes kept as nibbles (m = 1..4): word i of a
 * w-bit plane holds coordinates i*32/w .. in bits [s*w, s*w + w). */
template <int N>
__device__ __forceinline__ void tqc_write_planes(const tqc_part &pp, const uint32_t (&cpk)[(N + 7) / 8],
                                                 uint8_t *rec, uint32_t T, uint32_t t)
{
    constexpr int NW = (N + 7) / 8;
    uint32_t *p0 = (uint32_t *)(rec + pp.plane_off[0]) + t;
    if (pp.m == 4) {
#pragma unroll
        for (int i = 0; i < NW; i++)
            p0[(size_t)i * T] = cpk[i];
        return;
    }
    if (pp.m == 2 || pp.m == 3) {
#pragma unroll
        for (int i = 0; i < (NW + 1) / 2; i++) {
            uint32_t lo = tqc_nib_low2(cpk[2 * i]);
            uint32_t hi = 2 * i + 1 < NW ? tqc_nib_low2(cpk[2 * i + 1]) : 0u;
            p0[(size_t)i * T] = lo | (hi << 16);
        }
    }
    if (pp.m == 1 || pp.m == 3) {
        uint32_t *p1 = pp.m == 3 ? (uint32_t *)(rec + pp.plane_off[1]) + t : p0;
        const int b = pp.m == 3 ? 2 : 0;
#pragma unroll
        for (int i = 0; i < (NW + 3) / 4; i++) {
            uint32_t v = 0;
#pragma unroll
            for (int j = 0; j < 4; j++)
                if (4 * i + j < NW)
                    v |= tqc_nib_bit(cpk[4 * i + j], b) << (8 * j);
            p1[(size_t)i * T] = v;
        }
    }
}

/* Code k of a vector whose codes were kept in cpk (nibbles; m = 8 searches again). */
template <int N>
__device__ __forceinline__ uint32_t tqc_code_at(const float (&w)[N], const uint32_t (&cpk)[(N + 7) / 8],
                                                const float *bnd_s, uint32_t m, float inv, int k)
{
    if (m <= 4)
        return (cpk[k >> 3] >> (4 * (k & 7))) & 15;
    return tqc_quant(bnd_s, m, __fmul_rn(w[k], inv));
}

/* Terms of the corrected and unbiased scales: cent[c_k]^2 and w_k * cent[c_k]. */
template <int N> struct tqc_cent_sq_term {
    const float (&w)[N];
    const uint32_t (&cpk)[(N + 7) / 8];
    const float *cent, *bnd_s;
    uint32_t m;
    float inv;
    __device__ __forceinline__ float operator()(int k) const
    {
        float c = __ldg(cent + tqc_code_at<N>(w, cpk, bnd_s, m, inv, k));
        return __fmul_rn(c, c);
    }
};
template <int N> struct tqc_wc_term {
    const float (&w)[N];
    const uint32_t (&cpk)[(N + 7) / 8];
    const float *cent, *bnd_s;
    uint32_t m;
    float inv;
    __device__ __forceinline__ float operator()(int k) const
    {
        return __fmul_rn(w[k], __ldg(cent + tqc_code_at<N>(w, cpk, bnd_s, m, inv, k)));
    }
};

/* Encodes one part vector w[N] (channels already gathered) of token t into record `rec`. */
template <int N>
__device__ __forceinline__ void tqc_encode_part(const tqc_part &pp, uint32_t norm_kind,
                                                float (&w)[N], uint8_t *rec, uint32_t T,
                                                uint32_t t, const float *bnd_s)
{
    const uint32_t m = pp.m;
    float ss = tqc_tree_sum_sq(w); /* squares do not see D's signs */
#pragma unroll
    for (int k = 0; k < N; k++)
        w[k] = __uint_as_float(__float_as_uint(w[k]) ^ __ldg(pp.dsign + k));
    tqc_fwht(w);
    float norm = sqrtf(ss);
    float inv = norm > 0.0f ? __fdiv_rn(1.0f, norm) : 0.0f;
    float sc = norm;
    /* codes of the vector, eight per word (m <= 4): the later passes read them back instead of
     * searching the codebook again (8-bit codes are searched again: same input, same codes) */
    uint32_t cpk[(N + 7) / 8];
#pragma unroll
    for (int i = 0; i < (N + 7) / 8; i++)
        cpk[i] = 0;
    if (m && m <= 4) {
        /* every code first (independent searches overlap), then the planes from the nibbles */
#pragma unroll
        for (int k = 0; k < N; k++)
            cpk[k >> 3] |= tqc_quant(bnd_s, m, __fmul_rn(w[k], inv)) << (4 * (k & 7));
        tqc_write_planes<N>(pp, cpk, rec, T, t);
    } else if (m) {
        tqc_plane_writer pw0;
        pw0.init(rec, pp.plane_off[0], T, t, pp.plane_w[0], 0);
#pragma unroll
        for (int k = 0; k < N; k++)
            pw0.put(tqc_quant(bnd_s, m, __fmul_rn(w[k], inv)));
        pw0.flush();
    }
    if (m) {
        if (norm_kind == TQ_NORM_CORRECTED) {
            tqc_cent_sq_term<N> term{w, cpk, pp.cent, bnd_s, m, inv};
            float q = tqc_tree_sum<N>(term);
            sc = __fdiv_rn(norm, sqrtf(__fmul_rn(q, __fdiv_rn(1.0f, (float)N))));
        } else if (norm_kind == TQ_NORM_UNBIASED) {
            tqc_wc_term<N> term{w, cpk, pp.cent, bnd_s, m, inv};
            float dot = tqc_tree_sum<N>(term);
            if (dot > 0.0f)
                sc = __fdiv_rn(__fmul_rn(ss, (float)N), dot);
        }
    }
    uint16_t s16 = tqc_f32_to_f16(sc);
    ((uint16_t *)(rec + pp.scale_off))[t] = s16;
    if ((T & 1) && t == T - 1)
        ((uint16_t *)(rec + pp.scale_off))[T] = 0;
    if (!pp.prod)
        return;
    /* QJL stage: residual rho = w - s16 * cent[code] in place (codes recomputed: same input,
     * same arithmetic, same codes), gamma, and the signs of S . rho (sequential sums). */
    float sf = tqc_f16_to_f32(s16);
    if (m) {
#pragma unroll
        for (int k = 0; k < N; k++) {
            uint32_t code = tqc_code_at<N>(w, cpk, bnd_s, m, inv, k);
            w[k] = __fsub_rn(w[k], __fmul_rn(sf, __ldg(pp.cent + code)));
        }
    }
    float g = sqrtf(__fmul_rn(tqc_tree_sum_sq(w), __fdiv_rn(1.0f, (float)N)));
    ((uint16_t *)(rec + pp.gamma_off))[t] = tqc_f32_to_f16(g);
    if ((T & 1) && t == T - 1)
        ((uint16_t *)(rec + pp.gamma_off))[T] = 0;
    uint32_t *sg = (uint32_t *)(rec + pp.signs_off) + t;
    uint32_t cur = 0;
#pragma unroll 1
    for (int k = 0; k < N; k++) {
        const float4 *row = (const float4 *)(pp.S + (size_t)k * N);
        float a = 0.0f;
#pragma unroll
        for (int j = 0; j < N / 4; j++) {
            float4 s = __ldg(row + j);
            a = __fadd_rn(a, __fmul_rn(s.x, w[4 * j]));
            a = __fadd_rn(a, __fmul_rn(s.y, w[4 * j + 1]));
            a = __fadd_rn(a, __fmul_rn(s.z, w[4 * j + 2]));
            a = __fadd_rn(a, __fmul_rn(s.w, w[4 * j + 3]));
        }
        if (a >= 0.0f)
            cur |= 1u << (k & 31);
        if ((k & 31) == 31 || k == N - 1) {
            sg[(size_t)(k >> 5) * T] = cur;
            cur = 0;
        }
    }
}

/* Energies, outlier choice and mask of one head of one job: block (head, 1, job),
 * TQC_MASK_THREADS threads, DT the source dtype. The reference fixes each channel's energy as one
 * sequential chain over the tokens, so the chain itself stays one thread per channel; what is
 * parallel is the reading: all threads load the next tile of tokens as raw 32-bit words
 * (coalesced, independent loads with no arithmetic between them, TQC_MASK_PER each, held in
 * registers) while the channel threads run their chains over the current tile in shared memory,
 * so the loads' latency hides behind the adds instead of stalling every token. */
#define TQC_MASK_THREADS 256
#define TQC_MASK_TILE 8192 /* u32 words of one tile (32 KiB) */
#define TQC_MASK_PER (TQC_MASK_TILE / TQC_MASK_THREADS)

template <int DT>
__device__ __forceinline__ void tqc_mask_load(const tqc_job &jb, uint32_t vec, uint32_t T,
                                              uint32_t head_dim, uint32_t lw, uint32_t h,
                                              uint32_t t0, uint32_t tid,
                                              uint32_t (&pre)[TQC_MASK_PER])
{
    constexpr uint32_t CPW = DT == TQ_DTYPE_F32 ? 1 : 2; /* channels per word */
    if (vec || CPW == 1) {
        /* vec: rows start 4-byte aligned and head_dim is even (a multiple of 8) */
#pragma unroll
        for (int q = 0; q < TQC_MASK_PER; q++) {
            uint32_t idx = (uint32_t)q * TQC_MASK_THREADS + tid;
            uint32_t t = t0 + (idx >> lw), c = (idx & ((1u << lw) - 1)) * CPW;
            bool ok = t < T && c < head_dim;
            int64_t e = ok ? tqc_view_index(jb, t, h) + c : 0;
            pre[q] = ok ? __ldg((const uint32_t *)((const char *)jb.data + e * (4 / CPW))) : 0u;
        }
    } else {
#pragma unroll
        for (int q = 0; q < TQC_MASK_PER; q++) {
            uint32_t idx = (uint32_t)q * TQC_MASK_THREADS + tid;
            uint32_t t = t0 + (idx >> lw), c = (idx & ((1u << lw) - 1)) * 2;
            int64_t e = t < T ? tqc_view_index(jb, t, h) + c : 0;
            const unsigned short *p = (const unsigned short *)jb.data + e;
            uint32_t lo = t < T && c < head_dim ? __ldg(p) : 0u;
            uint32_t hi = t < T && c + 1 < head_dim ? __ldg(p + 1) : 0u;
            pre[q] = lo | hi << 16;
        }
    }
}

/* Whether channel c, of energy e (E: all P channels' energies in shared memory), is among the n_out
 * largest: FORMAT.md's ranking, ties to the lower index. */
__device__ __forceinline__ bool tqc_is_outlier(const float *E, float e, uint32_t c, uint32_t P,
                                               uint32_t n_out)
{
    uint32_t rank = 0;
    for (uint32_t i = 0; i < P; i++) {
        const float ei = E[i];
        rank += ei > e || (ei == e && i < c);
    }
    return rank < n_out;
}

template <int DT>
__global__ void __launch_bounds__(TQC_MASK_THREADS)
    tqc_mask_kernel(const __grid_constant__ tqc_rec R, const __grid_constant__ tqc_jobs J,
                    uint32_t n_out)
{
    constexpr uint32_t CPW = DT == TQ_DTYPE_F32 ? 1 : 2;
    __shared__ uint32_t tile[TQC_MASK_TILE];
    __shared__ float E[TQ_MAX_HEAD_DIM];
    __shared__ uint32_t mask[TQ_MAX_HEAD_DIM / 32];
    const tqc_job &jb = J.job[blockIdx.z];
    const uint32_t h = blockIdx.x, tid = threadIdx.x, P = R.P, T = R.T, hd = R.head_dim;
    const uint32_t lw = (uint32_t)__ffs((int)(P / CPW)) - 1; /* log2 of words per row */
    const uint32_t TT = TQC_MASK_TILE >> lw;                  /* tokens per tile */
    uint32_t pre[TQC_MASK_PER];
    float e = 0.0f;
    tqc_mask_load<DT>(jb, J.vec, T, hd, lw, h, 0, tid, pre);
    for (uint32_t t0 = 0; t0 < T; t0 += TT) {
        __syncthreads(); /* the previous tile is consumed */
#pragma unroll
        for (int q = 0; q < TQC_MASK_PER; q++)
            tile[q * TQC_MASK_THREADS + tid] = pre[q];
        __syncthreads();
        if (t0 + TT < T)
            tqc_mask_load<DT>(jb, J.vec, T, hd, lw, h, t0 + TT, tid, pre);
        uint32_t nt = T - t0 < TT ? T - t0 : TT;
        if (tid < hd) {
            const uint32_t *col = tile + tid / CPW, sh = 16 * (tid % CPW);
            /* token 0 first, each product rounded, then added: the reference's chain */
#pragma unroll 8
            for (uint32_t tt = 0; tt < nt; tt++) {
                uint32_t wd = col[tt << lw];
                float x = DT == TQ_DTYPE_F32 ? __uint_as_float(wd)
                          : DT == TQ_DTYPE_F16 ? tqc_f16_to_f32((uint16_t)(wd >> sh))
                                               : tqc_bf16_to_f32((uint16_t)(wd >> sh));
                x = tqc_finite(x);
                e = __fadd_rn(e, __fmul_rn(x, x));
            }
        }
    }
    if (tid < P)
        E[tid] = e;
    if (tid < P / 32)
        mask[tid] = 0;
    __syncthreads();
    if (tid < P && tqc_is_outlier(E, e, tid, P, n_out))
        atomicOr(&mask[tid >> 5], 1u << (tid & 31));
    __syncthreads();
    if (tid < P / 32)
        ((uint32_t *)(jb.dst + (size_t)h * R.record_size))[tid] = mask[tid];
}

/* Encode: block (token tile, head, job). NP = 1 (no split, N = P) or 2 (outliers, N = P/2). */
template <int N, int NP>
__global__ void __launch_bounds__(tqc_enc_tb<N * NP, NP>::value)
    tqc_encode_kernel(const __grid_constant__ tqc_rec R, const __grid_constant__ tqc_jobs J)
{
    constexpr int P = N * NP;
    constexpr int TB = tqc_enc_tb<P, NP>::value;
    __shared__ float bnd_s[2][255];
    __shared__ uint16_t ch_s[2][NP == 2 ? N : 1];
    __shared__ float row_s[NP == 2 ? TB * (P + 1) : 1];
    const tqc_job &jb = J.job[blockIdx.z];
    const uint32_t h = blockIdx.y, T = R.T;
    const uint32_t t = blockIdx.x * TB + threadIdx.x;
    uint8_t *rec = jb.dst + (size_t)h * R.record_size;
    if (blockIdx.x == 0 && blockIdx.y == 0)
        for (uint32_t i = threadIdx.x; i < jb.pad; i += TB)
            jb.dst[(size_t)R.n_heads * R.record_size + i] = 0;
    for (int p = 0; p < NP; p++) {
        uint32_t nb = R.part[p].m ? (1u << R.part[p].m) - 1 : 0;
        for (uint32_t i = threadIdx.x; i < nb; i += TB)
            bnd_s[p][i] = R.part[p].bnd[i];
    }
    if (NP == 2 && threadIdx.x == 0) {
        /* channel lists from the mask the mask kernel wrote (increasing channel order) */
        const uint32_t *mk = (const uint32_t *)rec;
        uint32_t a = 0, b = 0;
        for (uint32_t c = 0; c < (uint32_t)P; c++) {
            if ((mk[c >> 5] >> (c & 31)) & 1)
                ch_s[0][a++ % N] = (uint16_t)c;
            else
                ch_s[NP - 1][b++ % N] = (uint16_t)c;
        }
    }
    __syncthreads();
    if (t >= T)
        return;
    if (NP == 1) {
        float w[N];
        tqc_load_row<N>(jb, J.dtype, J.vec, R.head_dim, t, h, w);
        tqc_encode_part<N>(R.part[0], R.norm, w, rec, T, t, bnd_s[0]);
    } else {
        float *row = row_s + threadIdx.x * (P + 1);
        {
            float x[P];
            tqc_load_row<P>(jb, J.dtype, J.vec, R.head_dim, t, h, x);
#pragma unroll
            for (int k = 0; k < P; k++)
                row[k] = x[k];
        }
#pragma unroll 1
        for (int p = 0; p < NP; p++) {
            float w[N];
#pragma unroll
            for (int k = 0; k < N; k++)
                w[k] = row[ch_s[p][k]];
            tqc_encode_part<N>(R.part[p], R.norm, w, rec, T, t, bnd_s[p]);
        }
    }
}

/* ---- Cooperative encoder: eight lanes per vector (mse parts of dimension >= 32) -------------
 * A group of eight lanes encodes one (token, head) vector; lane j (0..7) holds the coordinates
 * k = 4j + e + 32r (e = 0..3, r = 0..n/32-1) as v[e + 4r]. That assignment is what the
 * reference arithmetic needs at the least cross-lane cost:
 *   - Tree sum: the reference's lane partial L_l (k = l mod 32, increasing k) is lane j's
 *     sequential chain over r for l = 4j + e; its pairwise steps at 16, 8, 4 pair lanes j^4, j^2,
 *     j^1 (shfl_xor; both lanes get the same commutative sum) and the steps at 2 and 1 pair e's
 *     inside the lane.
 *   - FWHT: stages h = 1, 2 pair e's inside a lane, h = 4, 8, 16 pair lanes (shfl_xor 1, 2, 4;
 *     the upper lane computes partner + (-own), which is partner - own exactly), h >= 32 pair
 *     r's inside a lane. Every stage runs after the previous one, as the reference orders them.
 *   - Input: lane j reads 4 consecutive values per r (8 bytes of fp16/bf16, 16 of fp32), so the
 *     group reads each 256-byte row as 64-byte runs.
 *   - Output: every code plane word belongs to 1, 2, 4 or 8 lanes of one group (widths 8, 4, 2,
 *     1), merged with shfl_xor; the words of the block's 32 tokens go through shared memory so
 *     that each plane word is written as one 128-byte run of consecutive tokens.
 * The block is 8 warps = 32 groups = 32 consecutive tokens of one head. */
#define TQC_G_TOK 32
#define TQC_G_THREADS 256
#define TQC_G_STAGE 36 /* row stride (u32) of the output stage: the 4 groups x 8 words a store
                        * instruction touches fall in 32 distinct banks */

/* The reference tree sum of per-lane terms a[e + 4r] (term of k = 4j + e + 32r); all lanes of
 * the warp must call it (shuffles). Every lane of a group returns its vector's sum. */
template <int E> __device__ __forceinline__ float tqc_g_tree_sum(const float (&a)[E])
{
    float L[4];
#pragma unroll
    for (int e = 0; e < 4; e++) {
        float s = 0.0f;
#pragma unroll
        for (int r = 0; r < E / 4; r++)
            s = __fadd_rn(s, a[e + 4 * r]);
        L[e] = s;
    }
#pragma unroll
    for (int d = 4; d >= 1; d >>= 1) {
#pragma unroll
        for (int e = 0; e < 4; e++)
            L[e] = __fadd_rn(L[e], __shfl_xor_sync(0xffffffffu, L[e], d));
    }
    return __fadd_rn(__fadd_rn(L[0], L[2]), __fadd_rn(L[1], L[3]));
}

/* The reference's unnormalised FWHT over a group's vector, stage by stage. */
template <int E> __device__ __forceinline__ void tqc_g_fwht(float (&v)[E], uint32_t j)
{
#pragma unroll
    for (int h = 1; h <= 2; h <<= 1) {
#pragma unroll
        for (int i = 0; i < E; i++) {
            if (i & h)
                continue;
            float a = v[i], b = v[i + h];
            v[i] = __fadd_rn(a, b);
            v[i + h] = __fsub_rn(a, b);
        }
    }
#pragma unroll
    for (uint32_t l = 1; l <= 4; l <<= 1) {
        const bool up = (j & l) != 0;
#pragma unroll
        for (int i = 0; i < E; i++) {
            float p = __shfl_xor_sync(0xffffffffu, v[i], l);
            v[i] = __fadd_rn(p, up ? -v[i] : v[i]);
        }
    }
#pragma unroll
    for (int h = 4; h < E; h <<= 1) {
#pragma unroll
        for (int i = 0; i < E; i++) {
            if (i & h)
                continue;
            float a = v[i], b = v[i + h];
            v[i] = __fadd_rn(a, b);
            v[i + h] = __fsub_rn(a, b);
        }
    }
}

/* Reads lane j's coordinates of head vector (t, h) of the padded dimension P: x[e + 4r] is
 * coordinate 4j + e + 32r (0 beyond head_dim). */
template <int P>
__device__ __forceinline__ void tqc_g_load(const tqc_job &jb, uint32_t dtype, uint32_t vec,
                                           uint32_t head_dim, uint32_t t, uint32_t h, uint32_t j,
                                           float (&x)[P / 8])
{
    int64_t base = tqc_view_index(jb, t, h);
#pragma unroll
    for (int r = 0; r < P / 32; r++) {
        uint32_t k0 = 4 * j + 32 * r;
        if (vec && dtype != TQ_DTYPE_F32) {
            /* vec: head_dim is a multiple of 8, so the 4 values are all in or all out */
            if (k0 < head_dim) {
                uint2 u = __ldg((const uint2 *)((const unsigned short *)jb.data + base + k0));
                uint32_t wd[2] = {u.x, u.y};
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    uint16_t b16 = (uint16_t)(wd[e >> 1] >> (16 * (e & 1)));
                    x[4 * r + e] = tqc_finite(dtype == TQ_DTYPE_F16 ? tqc_f16_to_f32(b16)
                                                                    : tqc_bf16_to_f32(b16));
                }
            } else {
#pragma unroll
                for (int e = 0; e < 4; e++)
                    x[4 * r + e] = 0.0f;
            }
        } else if (vec) {
            if (k0 < head_dim) {
                float4 u = __ldg((const float4 *)((const float *)jb.data + base + k0));
                x[4 * r] = tqc_finite(u.x);
                x[4 * r + 1] = tqc_finite(u.y);
                x[4 * r + 2] = tqc_finite(u.z);
                x[4 * r + 3] = tqc_finite(u.w);
            } else {
#pragma unroll
                for (int e = 0; e < 4; e++)
                    x[4 * r + e] = 0.0f;
            }
        } else {
#pragma unroll
            for (int e = 0; e < 4; e++)
                x[4 * r + e] = k0 + e < head_dim ? tqc_load_elem(jb.data, dtype, base + k0 + e)
                                                 : 0.0f;
        }
    }
}

/* One w-bit sub-plane (bits [shift, shift + W) of every code) into the stage rows wb.., column
 * g. Word (W*j)/8 + W*r of the plane takes lanes j..j+8/W-1's bits, merged by shfl_xor. */
template <int W, int E>
__device__ __forceinline__ void tqc_g_plane(const uint32_t (&code)[E], uint32_t shift, uint32_t j,
                                            uint32_t g, uint32_t (*stage)[TQC_G_STAGE],
                                            uint32_t wb)
{
    constexpr uint32_t mask = (1u << W) - 1, share = 8 / W;
#pragma unroll
    for (int r = 0; r < E / 4; r++) {
        uint32_t v = 0;
#pragma unroll
        for (int e = 0; e < 4; e++)
            v |= ((code[4 * r + e] >> shift) & mask) << ((W * (4 * j + e)) & 31);
#pragma unroll
        for (uint32_t s = 1; s < share; s <<= 1)
            v |= __shfl_xor_sync(0xffffffffu, v, s);
        if ((j & (share - 1)) == 0)
            stage[wb + (W * j) / 8 + W * r][g] = v;
    }
}

/* The code of v (number of boundaries <= v) for a compile-time M: the binary search unrolled,
 * so that a lane's searches are independent chains the scheduler interleaves. */
template <int M> __device__ __forceinline__ uint32_t tqc_g_quant(const float *bnd_s, float v)
{
    uint32_t code = 0;
#pragma unroll
    for (uint32_t step = 1u << (M - 1); step; step >>= 1)
        if (v >= bnd_s[code + step - 1])
            code += step;
    return code;
}

/* Encodes one part (dimension N, M-bit codes, QJL stage when PROD; w = its gathered input,
 * destroyed) of the group's vector: code words into stage rows wb.. (then the sign words, prod),
 * the fp16 scale into *sc and gamma into *gm (lane 0). rho: the group's row of N + 1 floats
 * (prod only), where the residual is shared for the sign sums. */
template <int N, int M, bool PROD>
__device__ __forceinline__ void tqc_g_encode_part(const tqc_part &pp, uint32_t norm_kind,
                                                  float (&w)[N / 8], uint32_t j, uint32_t g,
                                                  const float *bnd_s, const float *cent_s,
                                                  const uint32_t *dsg_s, float *rho,
                                                  uint32_t (*stage)[TQC_G_STAGE], uint32_t wb,
                                                  uint16_t *sc, uint16_t *gm)
{
    constexpr int E = N / 8;
    float a[E];
#pragma unroll
    for (int i = 0; i < E; i++)
        a[i] = __fmul_rn(w[i], w[i]);
    float ss = tqc_g_tree_sum<E>(a); /* squares do not see D's signs */
#pragma unroll
    for (int r = 0; r < E / 4; r++) {
        uint4 d = *(const uint4 *)(dsg_s + 4 * j + 32 * r);
        w[4 * r] = __uint_as_float(__float_as_uint(w[4 * r]) ^ d.x);
        w[4 * r + 1] = __uint_as_float(__float_as_uint(w[4 * r + 1]) ^ d.y);
        w[4 * r + 2] = __uint_as_float(__float_as_uint(w[4 * r + 2]) ^ d.z);
        w[4 * r + 3] = __uint_as_float(__float_as_uint(w[4 * r + 3]) ^ d.w);
    }
    tqc_g_fwht<E>(w, j);
    float norm = sqrtf(ss);
    float inv = norm > 0.0f ? __fdiv_rn(1.0f, norm) : 0.0f;
    uint32_t code[E];
#pragma unroll
    for (int i = 0; i < E; i++)
        code[i] = M > 0 ? tqc_g_quant<M ? M : 1>(bnd_s, __fmul_rn(w[i], inv)) : 0u;
    float s = norm; /* plain, and always when m = 0 */
    if (M > 0 && norm_kind == TQ_NORM_CORRECTED) {
#pragma unroll
        for (int i = 0; i < E; i++) {
            float c = cent_s[code[i]];
            a[i] = __fmul_rn(c, c);
        }
        float q = tqc_g_tree_sum<E>(a);
        s = __fdiv_rn(norm, sqrtf(__fmul_rn(q, __fdiv_rn(1.0f, (float)N))));
    } else if (M > 0 && norm_kind == TQ_NORM_UNBIASED) {
#pragma unroll
        for (int i = 0; i < E; i++)
            a[i] = __fmul_rn(w[i], cent_s[code[i]]);
        float dot = tqc_g_tree_sum<E>(a);
        if (dot > 0.0f)
            s = __fdiv_rn(__fmul_rn(ss, (float)N), dot);
    }
    uint16_t s16 = tqc_f32_to_f16(s);
    if (j == 0)
        *sc = s16;
    /* sub-planes (FORMAT.md): 1 -> [1], 2 -> [2], 3 -> [2, 1], 4 -> [4], 8 -> [8] */
    if (M == 3) {
        tqc_g_plane<2, E>(code, 0, j, g, stage, wb);
        tqc_g_plane<1, E>(code, 2, j, g, stage, wb + N * 2 / 32);
    } else if (M > 0) {
        tqc_g_plane<M ? M : 1, E>(code, 0, j, g, stage, wb);
    }
    if (!PROD)
        return;
    /* QJL stage: residual rho = w - s16 * cent[code], gamma, and the signs of S . rho, each sign
     * sum sequential over the input index as the reference orders it. Lane j takes the outputs
     * k = 4j + e + 32r, so that the sign bits pack like a 1-bit plane; S is read through its
     * transpose (row jj = S[.][jj]), 128 contiguous bytes per group and step, shared by the
     * warp's four groups. */
    float sf = tqc_f16_to_f32(s16);
    if (M > 0) {
#pragma unroll
        for (int i = 0; i < E; i++)
            w[i] = __fsub_rn(w[i], __fmul_rn(sf, cent_s[code[i]]));
    }
#pragma unroll
    for (int i = 0; i < E; i++)
        a[i] = __fmul_rn(w[i], w[i]);
    float gam = sqrtf(__fmul_rn(tqc_g_tree_sum<E>(a), __fdiv_rn(1.0f, (float)N)));
    if (j == 0)
        *gm = tqc_f32_to_f16(gam);
#pragma unroll
    for (int i = 0; i < E; i++)
        rho[4 * j + (i & 3) + 32 * (i >> 2)] = w[i];
    __syncwarp();
    float acc[E];
#pragma unroll
    for (int i = 0; i < E; i++)
        acc[i] = 0.0f;
    const float *St = pp.St + 4 * j;
#pragma unroll 2
    for (int jj = 0; jj < N; jj++) {
        float rj = rho[jj];
        const float4 *sr = (const float4 *)(St + (size_t)jj * N);
#pragma unroll
        for (int r = 0; r < E / 4; r++) {
            float4 sv = __ldg(sr + 8 * r);
            acc[4 * r] = __fadd_rn(acc[4 * r], __fmul_rn(sv.x, rj));
            acc[4 * r + 1] = __fadd_rn(acc[4 * r + 1], __fmul_rn(sv.y, rj));
            acc[4 * r + 2] = __fadd_rn(acc[4 * r + 2], __fmul_rn(sv.z, rj));
            acc[4 * r + 3] = __fadd_rn(acc[4 * r + 3], __fmul_rn(sv.w, rj));
        }
    }
    __syncwarp(); /* the row is free again (the next part reuses it) */
#pragma unroll
    for (int i = 0; i < E; i++)
        code[i] = acc[i] >= 0.0f ? 1u : 0u;
    tqc_g_plane<1, E>(code, 0, j, g, stage, wb + N * M / 32);
}

/* One part of the group's vector, M taken from the recipe (uniform across the block). */
template <int N, bool PROD>
__device__ __forceinline__ void tqc_g_part(const tqc_part &pp, uint32_t norm_kind,
                                           float (&w)[N / 8], uint32_t j, uint32_t g,
                                           const float *bnd_s, const float *cent_s,
                                           const uint32_t *dsg_s, float *rho,
                                           uint32_t (*stage)[TQC_G_STAGE], uint32_t wb,
                                           uint16_t *sc, uint16_t *gm)
{
#define TQC_G_CASE(m)                                                                              \
    case m:                                                                                        \
        tqc_g_encode_part<N, m, PROD>(pp, norm_kind, w, j, g, bnd_s, cent_s, dsg_s, rho, stage,   \
                                      wb, sc, gm);                                                 \
        break;
    if (PROD) {
        switch (pp.m) {
            TQC_G_CASE(0)
            TQC_G_CASE(1)
            TQC_G_CASE(2)
            TQC_G_CASE(3)
        default:
            tqc_g_encode_part<N, 4, PROD>(pp, norm_kind, w, j, g, bnd_s, cent_s, dsg_s, rho,
                                          stage, wb, sc, gm);
            break;
        }
    } else {
        switch (pp.m) {
            TQC_G_CASE(1)
            TQC_G_CASE(2)
            TQC_G_CASE(3)
            TQC_G_CASE(4)
        default:
            tqc_g_encode_part<N, 8, PROD>(pp, norm_kind, w, j, g, bnd_s, cent_s, dsg_s, rho,
                                          stage, wb, sc, gm);
            break;
        }
    }
#undef TQC_G_CASE
}

/* Encode, recipes whose parts have n >= 32: block (32-token tile, head, job), 256 threads.
 * NP = 1 (no split, N = P) or 2 (outliers, N = P/2; the mask kernel ran first); PROD: the
 * recipe's mode is prod (both parts). */
template <int N, int NP, bool PROD>
__global__ void __launch_bounds__(TQC_G_THREADS)
    tqc_encode_g_kernel(const __grid_constant__ tqc_rec R, const __grid_constant__ tqc_jobs J)
{
    constexpr int P = N * NP, E = N / 8;
    constexpr int ROWF = NP == 2 ? TQC_G_TOK * (P + 1) : 0; /* gathered rows (split only) */
    constexpr int STG = (P / 4) * TQC_G_STAGE; /* at most P/4 words per token (m + 1 <= 8) */
    constexpr int RHO = PROD ? TQC_G_TOK * (N + 1) : 0; /* residual rows, after the stage */
    __shared__ __align__(16) uint32_t buf[ROWF > STG + RHO ? ROWF : STG + RHO];
    __shared__ float bnd_s[NP][255];
    __shared__ float cent_s[NP][256];
    __shared__ __align__(16) uint32_t dsg_s[NP][N];
    __shared__ uint16_t ch_s[NP][NP == 2 ? N : 1];
    __shared__ uint32_t woff[P / 4];
    __shared__ uint16_t sc_s[NP][TQC_G_TOK];
    __shared__ uint16_t gm_s[PROD ? NP : 1][TQC_G_TOK];
    uint32_t(*stage)[TQC_G_STAGE] = (uint32_t(*)[TQC_G_STAGE])buf;
    float *rho = (float *)buf + STG + (threadIdx.x >> 3) * (N + 1);
    const tqc_job &jb = J.job[blockIdx.z];
    const uint32_t h = blockIdx.y, T = R.T, tid = threadIdx.x;
    const uint32_t g = tid >> 3, j = tid & 7;
    const uint32_t t0 = blockIdx.x * TQC_G_TOK, t = t0 + g;
    uint8_t *rec = jb.dst + (size_t)h * R.record_size;
    if (blockIdx.x == 0 && blockIdx.y == 0)
        for (uint32_t i = tid; i < jb.pad; i += TQC_G_THREADS)
            jb.dst[(size_t)R.n_heads * R.record_size + i] = 0;
    /* start the row loads first: the table set-up below overlaps them */
    float x[P / 8];
    if (t < T) {
        tqc_g_load<P>(jb, J.dtype, J.vec, R.head_dim, t, h, j, x);
    } else {
#pragma unroll
        for (int i = 0; i < P / 8; i++)
            x[i] = 0.0f; /* idle groups still take part in the shuffles */
    }
    uint32_t nw = 0; /* stage words per token, all parts */
#pragma unroll
    for (int p = 0; p < NP; p++) {
        const tqc_part &pp = R.part[p];
        uint32_t nb = pp.m ? (1u << pp.m) - 1 : 0;
        for (uint32_t i = tid; i < nb; i += TQC_G_THREADS)
            bnd_s[p][i] = __ldg(pp.bnd + i);
        for (uint32_t i = tid; pp.m && i <= nb; i += TQC_G_THREADS)
            cent_s[p][i] = __ldg(pp.cent + i);
        for (uint32_t i = tid; i < (uint32_t)N; i += TQC_G_THREADS)
            dsg_s[p][i] = __ldg(pp.dsign + i);
        for (uint32_t q = 0; q < pp.n_planes; q++) {
            uint32_t W = pp.plane_words[q];
            if (tid >= nw && tid < nw + W)
                woff[tid] = pp.plane_off[q] / 4 + (tid - nw) * T;
            nw += W;
        }
        if (PROD) {
            uint32_t W = pp.sign_words;
            if (tid >= nw && tid < nw + W)
                woff[tid] = pp.signs_off / 4 + (tid - nw) * T;
            nw += W;
        }
    }
    if (NP == 2 && tid < (uint32_t)P) {
        /* channel lists from the mask the mask kernel wrote (increasing channel order) */
        const uint32_t *mk = (const uint32_t *)rec;
        uint32_t before = __popc(__ldg(mk + (tid >> 5)) & ((1u << (tid & 31)) - 1));
        for (uint32_t i = 0; i < (tid >> 5); i++)
            before += __popc(__ldg(mk + i));
        if ((__ldg(mk + (tid >> 5)) >> (tid & 31)) & 1) {
            if (before < (uint32_t)N)
                ch_s[0][before] = (uint16_t)tid;
        } else if (tid - before < (uint32_t)N) {
            ch_s[NP - 1][tid - before] = (uint16_t)tid;
        }
    }
    __syncthreads();
    if (NP == 1) {
        float(&w)[E] = *reinterpret_cast<float(*)[E]>(&x);
        tqc_g_part<N, PROD>(R.part[0], R.norm, w, j, g, bnd_s[0], cent_s[0], dsg_s[0], rho,
                            stage, 0, &sc_s[0][g], &gm_s[0][g]);
    } else {
        float *row = (float *)buf + g * (P + 1);
#pragma unroll
        for (int i = 0; i < P / 8; i++)
            row[4 * j + (i & 3) + 32 * (i >> 2)] = x[i];
        __syncwarp(); /* a group's row is written and read by its own warp */
        float w0[E], w1[E];
#pragma unroll
        for (int i = 0; i < E; i++) {
            uint32_t k = 4 * j + (i & 3) + 32 * (i >> 2);
            w0[i] = row[ch_s[0][k]];
            w1[i] = row[ch_s[NP - 1][k]];
        }
        __syncthreads(); /* the stage reuses the rows' memory */
        tqc_g_part<N, PROD>(R.part[0], R.norm, w0, j, g, bnd_s[0], cent_s[0], dsg_s[0], rho,
                            stage, 0, &sc_s[0][g], &gm_s[0][g]);
        const tqc_part &p0 = R.part[0];
        uint32_t wb1 = (p0.n_planes > 0 ? p0.plane_words[0] : 0) +
                       (p0.n_planes > 1 ? p0.plane_words[1] : 0) + (PROD ? p0.sign_words : 0);
        tqc_g_part<N, PROD>(R.part[NP - 1], R.norm, w1, j, g, bnd_s[NP - 1], cent_s[NP - 1],
                            dsg_s[NP - 1], rho, stage, wb1, &sc_s[NP - 1][g],
                            &gm_s[PROD ? NP - 1 : 0][g]);
    }
    __syncthreads();
    uint32_t *rec32 = (uint32_t *)rec;
    for (uint32_t i = tid; i < nw * TQC_G_TOK; i += TQC_G_THREADS) {
        uint32_t wi = i / TQC_G_TOK, tt = i % TQC_G_TOK;
        if (t0 + tt < T)
            rec32[woff[wi] + t0 + tt] = stage[wi][tt];
    }
    if (tid < NP * TQC_G_TOK) {
        uint32_t p = tid / TQC_G_TOK, tt = tid % TQC_G_TOK;
        uint16_t *so = (uint16_t *)(rec + R.part[p].scale_off);
        if (t0 + tt < T)
            so[t0 + tt] = sc_s[p][tt];
        if ((T & 1) && t0 + tt == T)
            so[T] = 0;
        if (PROD) {
            uint16_t *go = (uint16_t *)(rec + R.part[p].gamma_off);
            if (t0 + tt < T)
                go[t0 + tt] = gm_s[PROD ? p : 0][tt];
            if ((T & 1) && t0 + tt == T)
                go[T] = 0;
        }
    }
}

/* ---- Streaming encoder: two lanes per vector (mse, one part of 64 or 128, 16-bit input) ------
 * The common recipes (tq4, tq3: no outlier split, mse codes of 1 to 4 bits) are bound by the
 * instruction issue rate, not by memory: 2^21 vectors in 0.27 ms leave about 130 warp
 * instructions per vector. The lanes 2r and 2r + 1 of a warp hold token r's vector in registers,
 * lane 2r + hf the coordinates k whose bit 4 is hf (N/2 of them, local index j = (k & 15) +
 * 16 (k >> 5)), so that the reference's float operations are almost all thread-local:
 *   - FWHT stages 1, 2, 4, 8 and 32, 64 pair local values; stage 16 is one shuffle and one FFMA
 *     per value (fma(v, +-1, o) is o + v or o - v with the reference's single rounding);
 *   - a tree sum's 32 lane partials L_l run over k = l (mod 32): L_{16 hf + l'} is the lane's own
 *     chain over j = l' + 16 m; the step at distance 16 is one shuffle per partial, the steps at
 *     8, 4, 2, 1 run in both lanes (the same floats in the same order, so both get the sum);
 *   - fp16 squares are exact in fp32, so ss's product-then-add is one FFMA for fp16 input;
 *   - the signs D are kernel parameters (LOP3 on packed fp16/bf16 pairs), and the codebook search
 *     is a table lookup instead of a binary search: cell g = round(t * c + off) for integers c and
 *     off: one FFMA with c and off scaled by 2^-149, whose result is the subnormal g * 2^-149,
 *     i.e. its bits are g (no conversion, and the lookup address is one LEA); the host picks c so
 *     that every cell holds at most one boundary and no boundary lies on a cell edge, so the code
 *     is base[g] + (t >= bnd[g]): one 8-byte shared load and one compare give exactly
 *     #{j : t >= bnd_j}, the reference's count;
 *   - corrected and unbiased norms take cent^2 or cent of the code from a second 8-byte entry of
 *     the cell (the terms of both codes the cell can give, selected by the same compare).
 * Half a vector per thread is what buys occupancy: 128 registers and 16 warps per SM, where one
 * thread per vector (168 registers, 12 warps) left the schedulers idle 40 % of the time on the
 * table loads' latency; the shuffles and the duplicated scalar work (norm, scale) cost about 18 %
 * more instructions, and the issue rate rose from 0.60 to 0.69 per scheduler and cycle.
 * The lookup needs |t| <= sqrt(n) (true up to rounding when ss is finite and not tiny: the norm
 * bounds every rotated coordinate); a vector whose ss is not finite (NaN/Inf input, overflow)
 * or below 2^-100 (underflowing squares) goes through tqc_f_slow, the one-thread reference path
 * (in the pair's even lane).
 * One block per SM, its warps persistent over the block's share of the (job, head, 16-token tile)
 * items (blockIdx.x + k * gridDim.x, every SM gets the same number within one), each warp taking
 * the next k from a shared counter, so that the SMs finish together; a warp copies its next
 * tile's rows into shared memory with cp.async (coalesced, no registers; tqc_p_prefetch) while it
 * encodes the current one; rows are stored with their 16-byte chunks swizzled (chunk c of row r
 * at c ^ r) against bank conflicts of the per-lane 16-byte row reads. Code words are stored straight from
 * registers: word i of 16 consecutive tokens is one 64-byte run. */
#define TQC_F_CELLS 128

/* What the streaming kernel needs beyond R: the cell table and D, built on the host. */
typedef struct {
    float c, moff;                /* cell of t: the bits of fma(t, c, moff) (subnormal) */
    uint32_t cells;               /* used entries of lut */
    uint32_t pad_;
    uint64_t mag_job, mag_tile;   /* tqc_divm multipliers of n_heads * n_tiles and of n_tiles */
    uint2 lut[TQC_F_CELLS];       /* {bits of the cell's boundary (+inf: none), codes below} */
    float2 t2[TQC_F_CELLS];       /* norm term of the cell's two codes: cent^2 (corrected) or
                                   * cent (unbiased) of base and base + 1 */
    uint32_t dx[TQ_MAX_HEAD_DIM / 2]; /* D as sign masks of packed 16-bit pairs (bits 15, 31) */
} tqc_fast;

__device__ __forceinline__ void tqc_cp16(uint32_t dst, const void *src, uint32_t n)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n)
                 : "memory");
}
__device__ __forceinline__ void tqc_cp_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void tqc_cp_wait1() { asm volatile("cp.async.wait_group 1;\n" ::: "memory"); }

/* floor(x / d) for a divisor d < 2^32 fixed per launch, from m = ceil(2^64 / d) (0 for d = 1;
 * tqc_divm_magic): x * m / 2^64 exceeds x / d by less than x / 2^64 < 1/d, so the floor is exact
 * for every 32-bit x. Two wide multiplies instead of the integer division's dozen instructions. */
__device__ __forceinline__ uint32_t tqc_divm(uint32_t x, uint64_t m)
{
    if (m == 0)
        return x;
    uint64_t lo = (uint64_t)x * (uint32_t)m;
    uint64_t hi = (uint64_t)x * (uint32_t)(m >> 32) + (lo >> 32);
    return (uint32_t)(hi >> 32);
}
static uint64_t tqc_divm_magic(uint32_t d)
{
    return d <= 1 ? 0 : UINT64_MAX / d + 1; /* ceil(2^64 / d), also when d is a power of two */
}

struct tqc_f_item {
    const tqc_job *jb;
    uint32_t h, t0;
};

/* The reference path for one vector whose ss is not finite or tiny: the raw row again (non-finite
 * values to +0), then the one-thread encoder. Rare; kept out of line. */
template <int N>
__device__ __noinline__ void tqc_f_slow(const tqc_part &pp, uint32_t norm_kind, const uint8_t *row,
                                        uint32_t sw, uint32_t dtype, uint8_t *rec, uint32_t T,
                                        uint32_t t)
{
    float x[N];
#pragma unroll
    for (int c = 0; c < N / 8; c++) {
        uint4 u = *(const uint4 *)(row + ((c ^ sw) << 4));
        uint32_t wd[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int e = 0; e < 8; e++) {
            uint16_t b16 = (uint16_t)(wd[e >> 1] >> (16 * (e & 1)));
            x[8 * c + e] =
                tqc_finite(dtype == TQ_DTYPE_F16 ? tqc_f16_to_f32(b16) : tqc_bf16_to_f32(b16));
        }
    }
    tqc_encode_part<N>(pp, norm_kind, x, rec, T, t, pp.bnd);
}

/* Nibble of coordinate 8i + p in code word i: p, or for 2- and 3-bit codes (PI) even p in
 * nibbles 0..3 and odd p in 4..7, so that the low two bits of 16 coordinates (words 2j and 2j + 1)
 * land in their 2-bit plane word with two byte permutes, a shift and a LOP3 (tqc_p_write_planes;
 * in coordinate order it takes 15 operations). Compile-time, so that the packing stays one IMAD
 * and one predicated add per code. */
template <int PI> __device__ __forceinline__ constexpr int tqc_f_nib(int p)
{
    return PI ? (p & 1 ? 4 + (p >> 1) : p >> 1) : p;
}

/* Bit b of the eight codes of a PI-ordered word, in coordinate order: even p sit at 4(p/2),
 * odd p at 16 + 4(p/2); the first step puts odd p next to even p, the next two close the gaps. */
__device__ __forceinline__ uint32_t tqc_f_pi_bit(uint32_t x, int b)
{
    x = (x >> b) & 0x11111111u;
    x = (x | (x >> 15)) & 0x3333u;
    x = (x | (x >> 2)) & 0x0f0fu;
    return (x | (x >> 4)) & 0xffu;
}

#define TQC_P_WARPS 16 /* one block per SM: 16 x 128 registers x 32 lanes */
#define TQC_P_THREADS (32 * TQC_P_WARPS)

/* Copies the 16 rows of a 16-token item (2N bytes each, zeros beyond head_dim and T) into buf,
 * RPP whole rows per cp.async instruction (lane: chunk lane % CH of row q * RPP + lane / CH).
 * Strided views: each lane steps its own row address by RPP tokens (one 64-bit add per copy);
 * paged views: row addresses come from lane 2r by shuffle (two per copy, on the MIO queue that
 * the table loads and the FWHT shuffles use; the strided path measured 1.2 % faster for tq4 and
 * tq3). */
template <int N>
__device__ __forceinline__ void tqc_p_prefetch(const tqc_rec &R, const tqc_f_item &it,
                                               uint32_t buf, uint32_t lane)
{
    constexpr int CH = N / 8, RPP = 32 / CH;
    const tqc_job &jb = *it.jb;
    if (!jb.pages) {
        /* strided view: this lane's rows are RPP tokens apart, no row address to share */
        const uint32_t c = lane % CH, r0 = lane / CH;
        const bool ok_c = c * 8 < R.head_dim;
        const char *lb = (const char *)jb.data +
                         2 * ((int64_t)(it.t0 + r0) * jb.token_stride +
                              (int64_t)it.h * jb.head_stride) + 16 * c;
        const int64_t step = 2 * (int64_t)RPP * jb.token_stride;
#pragma unroll
        for (int q = 0; q < 16 / RPP; q++) {
            const uint32_t r = (uint32_t)q * RPP + r0;
            const bool ok = ok_c && it.t0 + r < R.T;
            tqc_cp16(buf + r * (2 * N) + ((c ^ (r & (CH - 1))) << 4),
                     ok ? lb + q * step : (const char *)jb.data, ok ? 16u : 0u);
        }
        return;
    }
    uint32_t t = it.t0 + (lane >> 1);
    const char *p = t < R.T ? (const char *)jb.data + 2 * tqc_view_index(jb, t, it.h)
                            : (const char *)jb.data;
    uint64_t pv = (uint64_t)p;
    const uint32_t c = lane % CH, ok_c = c * 8 < R.head_dim;
#pragma unroll
    for (int q = 0; q < 16 / RPP; q++) {
        uint32_t r = (uint32_t)q * RPP + lane / CH;
        uint64_t src = __shfl_sync(0xffffffffu, pv, 2 * r);
        bool ok = ok_c && it.t0 + r < R.T;
        tqc_cp16(buf + r * (2 * N) + ((c ^ (r & (CH - 1))) << 4),
                 (const char *)src + (ok ? c * 16 : 0), ok ? 16u : 0u);
    }
}

/* Item `it`: job, head and first token of its 16-token tile. */
__device__ __forceinline__ tqc_f_item tqc_p_decode(const tqc_rec &R, const tqc_jobs &J,
                                                   const tqc_fast &F, uint32_t it,
                                                   uint32_t n_tiles)
{
    uint32_t per_job = R.n_heads * n_tiles, job = tqc_divm(it, F.mag_job);
    uint32_t rem = it - job * per_job, h = tqc_divm(rem, F.mag_tile);
    return {&J.job[job], h, (rem - h * n_tiles) * 16};
}

/* One in-lane FWHT stage of distance H over the lane's HN values (compile-time indices). */
template <int HN, int H> __device__ __forceinline__ void tqc_p_stage(float (&v)[HN])
{
#pragma unroll
    for (int i = 0; i < HN; i += 2 * H)
#pragma unroll
        for (int j = 0; j < H; j++) {
            float x = v[i + j], y = v[i + j + H];
            v[i + j] = __fadd_rn(x, y);
            v[i + j + H] = __fsub_rn(x, y);
        }
}

/* The pair's tree sum: own partials a[l] (l < 16) are L_{16 hf + l}; `mask` holds both lanes of
 * every pair that calls it. */
__device__ __forceinline__ float tqc_p_tree_tail(float (&a)[16], uint32_t mask)
{
#pragma unroll
    for (int l = 0; l < 16; l++)
        a[l] = __fadd_rn(a[l], __shfl_xor_sync(mask, a[l], 1));
#pragma unroll
    for (int l = 0; l < 8; l++)
        a[l] = __fadd_rn(a[l], a[l + 8]);
#pragma unroll
    for (int l = 0; l < 4; l++)
        a[l] = __fadd_rn(a[l], a[l + 4]);
    a[0] = __fadd_rn(a[0], a[2]);
    a[1] = __fadd_rn(a[1], a[3]);
    return __fadd_rn(a[0], a[1]);
}

/* Writes the code planes of token t from the lane's code words (local word u = global word
 * (u & 1) + 2 hf + 4 (u >> 1), nibble order tqc_f_nib<PI>); `mask` holds both lanes of every pair
 * that calls it (a 1-bit plane word takes two bytes from each lane). */
template <int N, int PI>
__device__ __forceinline__ void tqc_p_write_planes(const tqc_part &pp,
                                                   const uint32_t (&cpk)[N / 16], uint8_t *rec,
                                                   uint32_t T, uint32_t t, uint32_t hf,
                                                   uint32_t mask)
{
    constexpr int NU = N / 16;
    uint32_t *p0 = (uint32_t *)(rec + pp.plane_off[0]) + t;
    if (!PI && pp.m == 4) {
        uint32_t *q = p0 + (size_t)(2 * hf) * T;
#pragma unroll
        for (int u = 0; u < NU; u++)
            q[(size_t)((u & 1) + 4 * (u >> 1)) * T] = cpk[u];
        return;
    }
    if (PI) {
        /* 2-bit word 2v + hf from local words 2v, 2v + 1 */
        uint32_t *q = p0 + (size_t)hf * T;
#pragma unroll
        for (int v = 0; v < NU / 2; v++) {
            const uint32_t x = __byte_perm(cpk[2 * v], cpk[2 * v + 1], 0x5410);
            const uint32_t y = __byte_perm(cpk[2 * v], cpk[2 * v + 1], 0x7632);
            q[(size_t)(2 * v) * T] = (x & 0x33333333u) | ((y << 2) & 0xccccccccu);
        }
    }
    if (pp.m == 1 || pp.m == 3) {
        /* 1-bit word j1: bytes 2 hf, 2 hf + 1 from local words 2 j1, 2 j1 + 1 */
        uint32_t *p1 = pp.m == 3 ? (uint32_t *)(rec + pp.plane_off[1]) + t : p0;
        const int b = pp.m == 3 ? 2 : 0;
#pragma unroll
        for (int j1 = 0; j1 < NU / 2; j1++) {
            uint32_t own = PI ? tqc_f_pi_bit(cpk[2 * j1], b) | tqc_f_pi_bit(cpk[2 * j1 + 1], b) << 8
                              : tqc_nib_bit(cpk[2 * j1], b) | tqc_nib_bit(cpk[2 * j1 + 1], b) << 8;
            uint32_t oth = __shfl_xor_sync(mask, own, 1);
            if (hf == (uint32_t)(j1 & 1))
                p1[(size_t)j1 * T] = hf ? (oth | own << 16) : (own | oth << 16);
        }
    }
}

/* Code of the lane's value j from the cell table (packed into the lane's code words) and the norm
 * term of that code: lut[g] = {boundary, codes below}, lut[TQC_F_CELLS + g] = the terms of the
 * cell's two possible codes. Two 8-byte loads at one address register: a 16-byte entry (one load)
 * gathers with far more bank conflicts (quarter-warp phases: 7.1 wavefronts per load against 2.7
 * for each 8-byte one; 14 % slower), and a term looked up by code (a 16-entry table, conflict-free)
 * makes the chain load-compare-add-load (9 % slower for tq4, 22 % for tq3; both measured with
 * the one-thread-per-vector kernel this one replaced). */
template <int N, int NORM, int PI> struct tqc_p_quant_term {
    const float (&w)[N / 2];
    uint32_t (&cpk)[N / 16];
    float inv, c, moff;
    const uint2 *lut;
    __device__ __forceinline__ float operator()(int j) const
    {
        float t = __fmul_rn(w[j], inv);
        const uint32_t g = __float_as_uint(__fmaf_rn(t, c, moff));
        const uint2 e = lut[g];
        const bool up = t >= __uint_as_float(e.x);
        const int sh = 4 * tqc_f_nib<PI>(j & 7);
        cpk[j >> 3] += e.y << sh;
        if (up)
            cpk[j >> 3] += 1u << sh;
        if (NORM == TQ_NORM_PLAIN)
            return 0.0f;
        const uint2 f2 = lut[TQC_F_CELLS + g];
        float v = __uint_as_float(up ? f2.y : f2.x);
        return NORM == TQ_NORM_CORRECTED ? v : __fmul_rn(w[j], v);
    }
};

/* Encode: persistent warps over (job, head, 16-token tile) items, lane 2r + hf on half hf of token
 * r's vector; NORM the recipe's norm, DT the source dtype (fp16 or bf16), PI the code word order
 * (tqc_f_nib). */
template <int N, int NORM, int DT, int PI>
__global__ void __launch_bounds__(TQC_P_THREADS, 1)
    tqc_encode_p_kernel(const __grid_constant__ tqc_rec R, const __grid_constant__ tqc_jobs J,
                        const __grid_constant__ tqc_fast F, uint32_t n_tiles, uint32_t n_items)
{
    constexpr int CH = N / 8, HN = N / 2, TILE = 16 * 2 * N;
    extern __shared__ __align__(16) uint8_t tqc_p_dsm[];
    __shared__ uint2 lut_s[2 * TQC_F_CELLS]; /* F.lut, then F.t2 */
    __shared__ uint32_t next_s;
    const uint32_t tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, hf = lane & 1;
    if (tid == 0)
        next_s = TQC_P_WARPS;
    for (uint32_t i = tid; i < F.cells; i += TQC_P_THREADS) {
        lut_s[i] = F.lut[i];
        if (NORM != TQ_NORM_PLAIN)
            lut_s[TQC_F_CELLS + i] =
                make_uint2(__float_as_uint(F.t2[i].x), __float_as_uint(F.t2[i].y));
    }
    __syncthreads();
    const tqc_part &pp = R.part[0];
    const uint32_t T = R.T;
    const uint32_t stg = (uint32_t)__cvta_generic_to_shared(tqc_p_dsm) + warp * 2 * TILE;
    const uint8_t *stg_g = tqc_p_dsm + warp * 2 * TILE;
    const float sgn = hf ? -1.0f : 1.0f;
    const uint32_t *dxh = F.dx + 8 * hf;
    uint32_t it = blockIdx.x + warp * gridDim.x;
    if (it < n_items)
        tqc_p_prefetch<N>(R, tqc_p_decode(R, J, F, it, n_tiles), stg, lane);
    tqc_cp_commit();
    for (uint32_t b = 0; it < n_items; b ^= 1) {
        uint32_t k = 0;
        if (lane == 0)
            k = atomicAdd(&next_s, 1u);
        const uint32_t nx = blockIdx.x + __shfl_sync(0xffffffffu, k, 0) * gridDim.x;
        if (nx < n_items)
            tqc_p_prefetch<N>(R, tqc_p_decode(R, J, F, nx, n_tiles), stg + (b ^ 1) * TILE, lane);
        tqc_cp_commit();
        tqc_cp_wait1();
        __syncwarp();
        const tqc_f_item cur = tqc_p_decode(R, J, F, it, n_tiles);
        const tqc_job &jb = *cur.jb;
        const uint32_t r = lane >> 1, t = cur.t0 + r, sw = r & (CH - 1);
        uint8_t *rec = jb.dst + (size_t)cur.h * R.record_size;
        if (cur.h == 0 && cur.t0 == 0)
            for (uint32_t i = lane; i < jb.pad; i += 32)
                jb.dst[(size_t)R.n_heads * R.record_size + i] = 0;
        const uint8_t *row = stg_g + b * TILE + r * (2 * N);
        float w[HN];
#pragma unroll
        for (int i = 0; i < CH / 4; i++) {
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const uint32_t c = 4 * i + 2 * hf + e; /* chunk: coordinates 8c .. 8c + 7 */
                uint4 u = *(const uint4 *)(row + ((c ^ sw) << 4));
                const int d = 16 * i + 4 * e; /* dx of chunk c: F.dx[4c ..], 4c = d + 8 hf */
                uint32_t wd[4] = {u.x ^ dxh[d], u.y ^ dxh[d + 1], u.z ^ dxh[d + 2],
                                  u.w ^ dxh[d + 3]};
#pragma unroll
                for (int q = 0; q < 4; q++) {
                    const int j = 16 * i + 8 * e + 2 * q;
                    if (DT == TQ_DTYPE_F16) {
                        w[j] = tqc_f16_to_f32((uint16_t)(wd[q] & 0xffff));
                        w[j + 1] = tqc_f16_to_f32((uint16_t)(wd[q] >> 16));
                    } else {
                        w[j] = __uint_as_float(wd[q] << 16);
                        w[j + 1] = __uint_as_float(wd[q] & 0xffff0000u);
                    }
                }
            }
        }
        /* ss: own partials over j = l + 16 m (k = 16 hf + l + 32 m, increasing) */
        float a[16];
#pragma unroll
        for (int l = 0; l < 16; l++) {
            float s = __fmul_rn(w[l], w[l]);
#pragma unroll
            for (int j = l + 16; j < HN; j += 16)
                s = DT == TQ_DTYPE_F16 ? __fmaf_rn(w[j], w[j], s)
                                       : __fadd_rn(s, __fmul_rn(w[j], w[j]));
            a[l] = s;
        }
        const float ss = tqc_p_tree_tail(a, 0xffffffffu);
        /* FWHT: stages 1, 2, 4, 8 (j bits 0..3), 16 across the pair, 32, 64 (j bits 4, 5) */
        tqc_p_stage<HN, 1>(w);
        tqc_p_stage<HN, 2>(w);
        tqc_p_stage<HN, 4>(w);
        tqc_p_stage<HN, 8>(w);
#pragma unroll
        for (int j = 0; j < HN; j++)
            w[j] = __fmaf_rn(w[j], sgn, __shfl_xor_sync(0xffffffffu, w[j], 1));
        tqc_p_stage<HN, 16>(w);
        if constexpr (HN > 32)
            tqc_p_stage<HN, 32>(w);
        float norm = sqrtf(ss);
        float inv = norm > 0.0f ? __fdiv_rn(1.0f, norm) : 0.0f;
        const bool fast = ss < INFINITY && (ss == 0.0f || ss >= 7.88860905e-31f /* 2^-100 */);
        /* fast and t are the same in both lanes of a pair: the shuffles below name the pairs that
         * take the branch */
        const uint32_t m_fast = __ballot_sync(0xffffffffu, fast);
        const uint32_t m_out = __ballot_sync(0xffffffffu, fast && t < T);
        if (fast) {
            uint32_t cpk[N / 16];
#pragma unroll
            for (int i = 0; i < N / 16; i++)
                cpk[i] = 0;
            tqc_p_quant_term<N, NORM, PI> term{w, cpk, inv, F.c, F.moff, lut_s};
            float s = norm;
            if (NORM == TQ_NORM_PLAIN) {
#pragma unroll
                for (int j = 0; j < HN; j++)
                    (void)term(j);
            } else {
#pragma unroll
                for (int l = 0; l < 16; l++) {
                    float v = NORM == TQ_NORM_CORRECTED ? term(l) : __fadd_rn(0.0f, term(l));
#pragma unroll
                    for (int j = l + 16; j < HN; j += 16)
                        v = __fadd_rn(v, term(j));
                    a[l] = v;
                }
                const float q = tqc_p_tree_tail(a, m_fast);
                if (NORM == TQ_NORM_CORRECTED)
                    s = __fdiv_rn(norm, sqrtf(__fmul_rn(q, 1.0f / (float)N)));
                else if (q > 0.0f)
                    s = __fdiv_rn(__fmul_rn(ss, (float)N), q);
            }
            if (t < T) {
                tqc_p_write_planes<N, PI>(pp, cpk, rec, T, t, hf, m_out);
                if (!hf)
                    ((uint16_t *)(rec + pp.scale_off))[t] = tqc_f32_to_f16(s);
            }
        } else if (t < T && !hf) {
            tqc_f_slow<N>(pp, NORM, row, sw, DT, rec, T, t);
        }
        if (t == T && (T & 1) && !hf)
            ((uint16_t *)(rec + pp.scale_off))[T] = 0; /* the padding fp16 of an odd T */
        __syncwarp();
        it = nx;
    }
}

/* Launches tqc_encode_p_kernel over J's jobs (one block per SM at most). @return 0 or an error. */
template <int N, int NORM, int DT, int PI>
static int launch_encode_p(const tqc_rec &R, const tqc_jobs &J, const tqc_fast &F,
                           cudaStream_t s)
{
    constexpr int SMEM = TQC_P_WARPS * 2 * 16 * 2 * N;
    static int ready[64];
    int dev = 0, rc = tqkv__cuda_err(cudaGetDevice(&dev), "cudaGetDevice");
    if (rc)
        return rc;
    if (dev < 0 || dev >= 64)
        return TQKV_EINVAL;
    if (!ready[dev]) {
        int nsm = 0, nb = 0;
        rc = tqkv__cuda_err(cudaFuncSetAttribute(tqc_encode_p_kernel<N, NORM, DT, PI>,
                                                 cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 SMEM),
                            "encode_p attribute");
        if (!rc)
            rc = tqkv__cuda_err(cudaDeviceGetAttribute(&nsm, cudaDevAttrMultiProcessorCount, dev),
                                "SM count");
        if (!rc)
            rc = tqkv__cuda_err(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
                                    &nb, tqc_encode_p_kernel<N, NORM, DT, PI>, TQC_P_THREADS,
                                    SMEM),
                                "encode_p occupancy");
        if (rc)
            return rc;
        ready[dev] = 1 + (nsm * (nb > 0 ? nb : 1));
    }
    uint32_t n_tiles = (R.T + 15) / 16, n_items = J.n_jobs * R.n_heads * n_tiles;
    uint32_t blocks = (n_items + TQC_P_WARPS - 1) / TQC_P_WARPS;
    tqc_fast Fl = F;
    Fl.mag_job = tqc_divm_magic(R.n_heads * n_tiles);
    Fl.mag_tile = tqc_divm_magic(n_tiles);
    if (blocks > (uint32_t)(ready[dev] - 1))
        blocks = (uint32_t)(ready[dev] - 1);
    tqc_encode_p_kernel<N, NORM, DT, PI>
        <<<blocks, TQC_P_THREADS, SMEM, s>>>(R, J, Fl, n_tiles, n_items);
    TQC_CHECK_LAUNCH("encode_p launch");
    return 0;
}

/* Energies of 32 channels of one head: block (head * P/32 + slice, 1, job), one warp, contiguous
 * views only; the ranking and the mask follow in tqc_rank_kernel. The reference fixes each
 * channel's energy as one sequential chain over the tokens, so the whole section costs at least
 * T dependent adds per channel; this kernel keeps every chain fed: lane c runs the chain of
 * channel 32*slice + c, reading token rows' 64-byte slices from a 12-stage shared-memory ring
 * that cp.async fills TQC_E_TT tokens ahead (the loads cost no registers and overlap the adds).
 * fp16 squares are exact in fp32, so fp16 chains are one FFMA per token (the same rounding as the
 * reference's product then add); non-finite inputs are not tested per token: a chain that ends
 * non-finite is summed again with the reference's +0 substitution (for fp16 no finite input can
 * make it overflow; for bf16 an overflowing sum stays Inf either way). The energies go to the
 * head record right after the mask words (the encode kernel overwrites them later). */
#define TQC_E_TT 128 /* tokens per stage */
#define TQC_E_STAGES 12 /* 96 KiB of ring (dynamic shared memory): 11 stages, 1408 tokens and
                        * 88 KiB per SM, in flight */

template <int DT> __device__ __forceinline__ float tqc_e_val(uint16_t b)
{
    return DT == TQ_DTYPE_F16 ? tqc_f16_to_f32(b) : tqc_bf16_to_f32(b);
}

template <int DT>
__global__ void __launch_bounds__(32)
    tqc_energy_kernel(const __grid_constant__ tqc_rec R, const __grid_constant__ tqc_jobs J)
{
    extern __shared__ __align__(16) uint8_t tqc_e_dsm[];
    uint8_t(*ring)[TQC_E_TT * 64] = (uint8_t(*)[TQC_E_TT * 64])tqc_e_dsm;
    const tqc_job &jb = J.job[blockIdx.z];
    const uint32_t spp = R.P / 32, h = blockIdx.x / spp, slice = blockIdx.x % spp;
    const uint32_t lane = threadIdx.x, T = R.T, ns = (T + TQC_E_TT - 1) / TQC_E_TT;
    const char *base = (const char *)jb.data + 2 * ((int64_t)h * jb.head_stride + slice * 32);
    const uint32_t ch = lane & 3, ok_c = slice * 32 + ch * 8 < R.head_dim;
    /* stage s: tokens s*TT.., lane copies chunk ch of tokens lane/4 + 8q */
    auto fill = [&](uint32_t s) {
        uint32_t dst = (uint32_t)__cvta_generic_to_shared(ring[s % TQC_E_STAGES]);
        for (uint32_t q = 0; q < TQC_E_TT / 8; q++) {
            uint32_t tt = q * 8 + (lane >> 2), t = s * TQC_E_TT + tt;
            bool ok = ok_c && t < T;
            tqc_cp16(dst + tt * 64 + ch * 16,
                     base + (ok ? 2 * (int64_t)t * jb.token_stride + ch * 16 : 0), ok ? 16u : 0u);
        }
        tqc_cp_commit();
    };
#pragma unroll 1
    for (uint32_t s = 0; s < TQC_E_STAGES - 1; s++)
        if (s < ns)
            fill(s);
        else
            tqc_cp_commit();
    float e = 0.0f;

#pragma unroll 1
    for (uint32_t s = 0; s < ns; s++) {
        asm volatile("cp.async.wait_group %0;\n" ::"n"(TQC_E_STAGES - 2) : "memory");
        __syncwarp();
        const uint8_t *st = ring[s % TQC_E_STAGES] + 2 * lane;
        uint32_t nt = T - s * TQC_E_TT < TQC_E_TT ? T - s * TQC_E_TT : TQC_E_TT;
        if (nt == TQC_E_TT) {
#pragma unroll 32
            for (uint32_t tt = 0; tt < TQC_E_TT; tt++) {
                float x = tqc_e_val<DT>(*(const uint16_t *)(st + tt * 64));
                e = DT == TQ_DTYPE_F16 ? __fmaf_rn(x, x, e) : __fadd_rn(e, __fmul_rn(x, x));
            }
        } else {
            for (uint32_t tt = 0; tt < nt; tt++) {
                float x = tqc_e_val<DT>(*(const uint16_t *)(st + tt * 64));
                e = DT == TQ_DTYPE_F16 ? __fmaf_rn(x, x, e) : __fadd_rn(e, __fmul_rn(x, x));
            }
        }
        __syncwarp(); /* the stage is consumed: refill it */
        if (s + TQC_E_STAGES - 1 < ns)
            fill(s + TQC_E_STAGES - 1);
        else
            tqc_cp_commit();
    }
    const uint32_t c = slice * 32 + lane;
    if (!(e < INFINITY) && c < R.head_dim) {
        /* a NaN/Inf input (or an overflow): the reference chain, non-finite values as +0 */
        e = 0.0f;
        const unsigned short *p = (const unsigned short *)jb.data + (int64_t)h * jb.head_stride + c;
        for (uint32_t t = 0; t < T; t++) {
            uint16_t b = p[(int64_t)t * jb.token_stride];
            float x = tqc_finite(tqc_e_val<DT>(b));
            e = __fadd_rn(e, __fmul_rn(x, x));
        }
    }
    float *E = (float *)(jb.dst + (size_t)h * R.record_size + 4 * R.mask_words);
    E[c] = c < R.head_dim ? e : 0.0f;
}

/* Ranking of one head's energies (written by tqc_energy_kernel after the mask words) and the
 * mask, as tqc_mask_kernel ranks them: block (head, 1, job), P threads. */
__global__ void tqc_rank_kernel(const __grid_constant__ tqc_rec R,
                                const __grid_constant__ tqc_jobs J, uint32_t n_out)
{
    __shared__ float E[TQ_MAX_HEAD_DIM];
    __shared__ uint32_t mask[TQ_MAX_HEAD_DIM / 32];
    const tqc_job &jb = J.job[blockIdx.z];
    const uint32_t h = blockIdx.x, tid = threadIdx.x, P = R.P;
    uint32_t *rec = (uint32_t *)(jb.dst + (size_t)h * R.record_size);
    float e = ((const float *)(rec + R.mask_words))[tid];
    E[tid] = e;
    if (tid < P / 32)
        mask[tid] = 0;
    __syncthreads();
    if (tqc_is_outlier(E, e, tid, P, n_out))
        atomicOr(&mask[tid >> 5], 1u << (tid & 31));
    __syncthreads();
    if (tid < P / 32)
        rec[tid] = mask[tid];
}

/* Raw (lossless 16-bit) sections: one thread per (token, head, channel). */
__global__ void tqc_encode_raw_kernel(const __grid_constant__ tqc_rec R,
                                      const __grid_constant__ tqc_jobs J)
{
    const tqc_job &jb = J.job[blockIdx.z];
    const uint32_t h = blockIdx.y;
    const uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
    const uint32_t t = i / R.P, j = i % R.P;
    if (blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x < jb.pad)
        jb.dst[(size_t)R.n_heads * R.record_size + threadIdx.x] = 0;
    if (t >= R.T)
        return;
    uint16_t *out = (uint16_t *)(jb.dst + (size_t)h * R.record_size) + (size_t)t * R.P + j;
    if (j >= R.head_dim) {
        *out = 0;
        return;
    }
    int64_t idx = tqc_view_index(jb, t, h) + j;
    if (J.dtype == R.raw_dtype) {
        *out = __ldg((const unsigned short *)jb.data + idx); /* the bits as they are */
        return;
    }
    float x = tqc_load_elem(jb.data, J.dtype, idx);
    *out = R.raw_dtype == TQ_DTYPE_F16 ? tqc_f32_to_f16(x) : tqc_f32_to_bf16(x);
}

/* ---- Launchers ----------------------------------------------------------------------------- */

template <int N, int NP>
static void launch_encode(const tqc_rec &R, const tqc_jobs &J, cudaStream_t s)
{
    constexpr int TB = tqc_enc_tb<N * NP, NP>::value;
    dim3 grid((R.T + TB - 1) / TB, R.n_heads, J.n_jobs);
    tqc_encode_kernel<N, NP><<<grid, TB, 0, s>>>(R, J);
}

template <int N, int NP>
static void launch_encode_g(const tqc_rec &R, const tqc_jobs &J, cudaStream_t s)
{
    dim3 grid((R.T + TQC_G_TOK - 1) / TQC_G_TOK, R.n_heads, J.n_jobs);
    if (R.part[0].prod)
        tqc_encode_g_kernel<N, NP, true><<<grid, TQC_G_THREADS, 0, s>>>(R, J);
    else
        tqc_encode_g_kernel<N, NP, false><<<grid, TQC_G_THREADS, 0, s>>>(R, J);
}

/* The streaming kernel's cell table for codebook (cb, n, m) and norm: the cell width 1/c (c an
 * integer) is below the smallest gap between boundaries (so a cell holds at most one), and c is
 * raised until no boundary sits exactly on a cell edge; the cells cover |t| <= 1.001 sqrt(n) +
 * 0.01. Cell g holds t with t*c + off in [g - 1/2, g + 1/2]: the device computes
 * fma(t, c * 2^-149, off * 2^-149), one rounding to the subnormal grid, i.e. to an integer
 * multiple of 2^-149; b*c + off is exact in double for float b, so the edge test is exact.
 * @return false when the codebook does not fit (the eight-lane kernel encodes it then). */
static bool tqc_fast_table(tq_codebook_kind cb, uint32_t n, uint32_t m, uint32_t norm,
                           tqc_fast *F)
{
    const float *cent = m >= 1 && m <= 4 ? tq_codebook(cb, n, m) : NULL;
    if (!cent)
        return false;
    const uint32_t K = (1u << m) - 1;
    float bnd[15];
    double gap = 4.0;
    for (uint32_t j = 0; j < K; j++) {
        bnd[j] = (cent[j] + cent[j + 1]) * 0.5f; /* as the reference (and tables.cu) */
        if (j > 0) {
            if (!(bnd[j] > bnd[j - 1]))
                return false;
            double d = (double)bnd[j] - (double)bnd[j - 1];
            gap = d < gap ? d : gap;
        }
    }
    const double tmax = sqrt((double)n) * 1.001 + 0.01;
    for (int a = 0; a < 16; a++) {
        float c = (float)(floor(1.0 / gap) + 1 + a);
        double off = ceil(tmax * c) + 1.0;
        uint32_t cells = 2 * (uint32_t)off + 1, cell[15];
        if (cells > TQC_F_CELLS)
            return false;
        bool ok = true;
        for (uint32_t j = 0; j < K && ok; j++) {
            double pos = (double)bnd[j] * (double)c + off;
            cell[j] = (uint32_t)floor(pos + 0.5);
            ok = pos - floor(pos) != 0.5 && cell[j] < cells && (j == 0 || cell[j] != cell[j - 1]);
        }
        if (!ok)
            continue;
        F->c = ldexpf(c, -149); /* subnormal: c and off are integers below 2^23 */
        F->moff = ldexpf((float)off, -149);
        F->cells = cells;
        for (uint32_t g = 0, j = 0; g < cells; g++) {
            while (j < K && cell[j] < g)
                j++;
            uint32_t bits = 0x7f800000u; /* +inf: no boundary in the cell */
            if (j < K && cell[j] == g)
                memcpy(&bits, &bnd[j], 4);
            F->lut[g] = make_uint2(bits, j);
            /* the term of code j and j + 1 (the latter only taken when the cell has a boundary) */
            float lo = cent[j], hi = cent[j < K ? j + 1 : j];
            if (norm == TQ_NORM_CORRECTED) {
                lo = lo * lo; /* one rounded product, as __fmul_rn on the device */
                hi = hi * hi;
            }
            F->t2[g] = make_float2(lo, hi);
        }
        return true;
    }
    return false;
}

/* launch_encode_p for the recipe's norm and code word order. */
template <int N, int DT>
static int launch_encode_p_pi(const tqc_rec &R, const tqc_jobs &J, const tqc_fast &F, bool pi,
                              cudaStream_t s)
{
    if (pi)
        switch (R.norm) {
        case TQ_NORM_PLAIN: return launch_encode_p<N, TQ_NORM_PLAIN, DT, 1>(R, J, F, s);
        case TQ_NORM_CORRECTED: return launch_encode_p<N, TQ_NORM_CORRECTED, DT, 1>(R, J, F, s);
        default: return launch_encode_p<N, TQ_NORM_UNBIASED, DT, 1>(R, J, F, s);
        }
    switch (R.norm) {
    case TQ_NORM_PLAIN: return launch_encode_p<N, TQ_NORM_PLAIN, DT, 0>(R, J, F, s);
    case TQ_NORM_CORRECTED: return launch_encode_p<N, TQ_NORM_CORRECTED, DT, 0>(R, J, F, s);
    default: return launch_encode_p<N, TQ_NORM_UNBIASED, DT, 0>(R, J, F, s);
    }
}

/* Launches the streaming kernel when it takes R and J (one mse part of 64 or 128 with 1 to 4
 * bits, fp16/bf16 rows readable as 16-byte chunks, a codebook the cell table fits). @return 1
 * when it does not take them, else 0 or an error. */
static int tqc_encode_fast(const tqc_rec &R, const tqc_jobs &J, uint64_t seed,
                           tq_codebook_kind cb, cudaStream_t s)
{
    const tqc_part &pp = R.part[0];
    if (R.raw || R.n_parts != 1 || pp.prod || pp.m < 1 || pp.m > 4 || !J.vec ||
        (J.dtype != TQ_DTYPE_F16 && J.dtype != TQ_DTYPE_BF16) || (R.P != 64 && R.P != 128))
        return 1;
    static tqc_fast F0;
    tqc_fast F = F0;
    if (!tqc_fast_table(cb, pp.n, pp.m, R.norm, &F))
        return 1;
    uint32_t D[TQ_MAX_HEAD_DIM];
    tqkv__rotation_signs(seed, pp.n, 0, D);
    for (uint32_t i = 0; i < pp.n / 2; i++)
        F.dx[i] = D[2 * i] >> 16 | D[2 * i + 1];
    const bool pi = pp.m == 2 || pp.m == 3;
    if (R.P == 128)
        return J.dtype == TQ_DTYPE_F16 ? launch_encode_p_pi<128, TQ_DTYPE_F16>(R, J, F, pi, s)
                                       : launch_encode_p_pi<128, TQ_DTYPE_BF16>(R, J, F, pi, s);
    return J.dtype == TQ_DTYPE_F16 ? launch_encode_p_pi<64, TQ_DTYPE_F16>(R, J, F, pi, s)
                                   : launch_encode_p_pi<64, TQ_DTYPE_BF16>(R, J, F, pi, s);
}

/* Whether the cooperative kernel takes R: parts of dimension >= 32 (eight lanes of at least
 * four coordinates), mse codes of 1, 2, 3, 4 or 8 bits, prod codes of 0 to 4 (its
 * instantiations). Smaller parts (P = 32 split in two) stay with the one-thread kernel. */
static bool tqc_use_g(const tqc_rec &R)
{
    for (uint32_t p = 0; p < R.n_parts; p++) {
        const tqc_part &pp = R.part[p];
        if (pp.n < 32 || pp.prod != R.part[0].prod)
            return false;
        if (pp.prod ? pp.m > 4 : (pp.m == 0 || (pp.m > 4 && pp.m != 8)))
            return false;
    }
    return true;
}

/* Launches the kernels of one batch of jobs sharing the recipe R. */
static int tqc_encode_jobs(const tqc_rec &R, uint32_t n_out, const tqc_jobs &J, uint64_t seed,
                           tq_codebook_kind cb, cudaStream_t s)
{
    int rc;
    if (R.raw) {
        dim3 grid((R.T * R.P + 255) / 256, R.n_heads, J.n_jobs);
        tqc_encode_raw_kernel<<<grid, 256, 0, s>>>(R, J);
        TQC_CHECK_LAUNCH("encode_raw launch");
        return 0;
    }
    if (R.n_parts == 2) {
        dim3 mg(R.n_heads, 1, J.n_jobs);
        bool strided = true;
        for (uint32_t i = 0; i < J.n_jobs; i++)
            strided = strided && !J.job[i].pages;
        if (strided && J.vec && (J.dtype == TQ_DTYPE_F16 || J.dtype == TQ_DTYPE_BF16) &&
            (R.P == 64 || R.P == 128 || R.P == 256) &&
            R.record_size >= 4 * (R.mask_words + R.P)) {
            /* energies per 32-channel slice, then the ranking (energies parked in the record) */
            dim3 eg(R.n_heads * (R.P / 32), 1, J.n_jobs);
            constexpr int ESM = TQC_E_STAGES * TQC_E_TT * 64;
            static bool eready[2][64]; /* per dtype and device: the shared memory limit is set */
            int dev = 0, di = J.dtype == TQ_DTYPE_F16 ? 0 : 1;
            rc = tqkv__cuda_err(cudaGetDevice(&dev), "cudaGetDevice");
            if (rc)
                return rc;
            if (dev < 0 || dev >= 64)
                return TQKV_EINVAL;
            if (!eready[di][dev]) {
                rc = tqkv__cuda_err(
                    cudaFuncSetAttribute(di ? tqc_energy_kernel<TQ_DTYPE_BF16>
                                            : tqc_energy_kernel<TQ_DTYPE_F16>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, ESM),
                    "energy attribute");
                if (rc)
                    return rc;
                eready[di][dev] = true;
            }
            if (J.dtype == TQ_DTYPE_F16)
                tqc_energy_kernel<TQ_DTYPE_F16><<<eg, 32, ESM, s>>>(R, J);
            else
                tqc_energy_kernel<TQ_DTYPE_BF16><<<eg, 32, ESM, s>>>(R, J);
            TQC_CHECK_LAUNCH("energy launch");
            tqc_rank_kernel<<<mg, R.P, 0, s>>>(R, J, n_out);
        } else if (J.dtype == TQ_DTYPE_F16)
            tqc_mask_kernel<TQ_DTYPE_F16><<<mg, TQC_MASK_THREADS, 0, s>>>(R, J, n_out);
        else if (J.dtype == TQ_DTYPE_BF16)
            tqc_mask_kernel<TQ_DTYPE_BF16><<<mg, TQC_MASK_THREADS, 0, s>>>(R, J, n_out);
        else
            tqc_mask_kernel<TQ_DTYPE_F32><<<mg, TQC_MASK_THREADS, 0, s>>>(R, J, n_out);
        TQC_CHECK_LAUNCH("mask launch");
        if (tqc_use_g(R)) {
            switch (R.P) {
            case 64: launch_encode_g<32, 2>(R, J, s); break;
            case 128: launch_encode_g<64, 2>(R, J, s); break;
            case 256: launch_encode_g<128, 2>(R, J, s); break;
            default: return TQKV_EINVAL;
            }
        } else switch (R.P) {
        case 32: launch_encode<16, 2>(R, J, s); break;
        case 64: launch_encode<32, 2>(R, J, s); break;
        case 128: launch_encode<64, 2>(R, J, s); break;
        case 256: launch_encode<128, 2>(R, J, s); break;
        default: return TQKV_EINVAL;
        }
    } else if ((rc = tqc_encode_fast(R, J, seed, cb, s)) != 1) {
        return rc;
    } else if (tqc_use_g(R)) {
        switch (R.P) {
        case 32: launch_encode_g<32, 1>(R, J, s); break;
        case 64: launch_encode_g<64, 1>(R, J, s); break;
        case 128: launch_encode_g<128, 1>(R, J, s); break;
        case 256: launch_encode_g<256, 1>(R, J, s); break;
        default: return TQKV_EINVAL;
        }
    } else {
        switch (R.P) {
        case 32: launch_encode<32, 1>(R, J, s); break;
        case 64: launch_encode<64, 1>(R, J, s); break;
        case 128: launch_encode<128, 1>(R, J, s); break;
        case 256: launch_encode<256, 1>(R, J, s); break;
        default: return TQKV_EINVAL;
        }
    }
    TQC_CHECK_LAUNCH("encode launch");
    return 0;
}

static int check_view(const tq_kv_view *v, uint32_t head_dim, tqc_jobs *J, uint8_t *dst,
                      uint32_t pad)
{
    if (!v || !v->data)
        return TQKV_EINVAL;
    size_t es = tq_dtype_size((tq_dtype)v->dtype);
    if (!es)
        return TQKV_EBADDTYPE;
    if (v->pages && v->page_size == 0)
        return TQKV_EINVAL;
    if (J->n_jobs == 0) {
        J->dtype = v->dtype;
        J->vec = 1;
    } else if (J->dtype != v->dtype) {
        return TQKV_EBADDTYPE;
    }
    /* 16-byte loads need every row start 16-byte aligned and whole 16-byte columns */
    size_t ve = 16 / es;
    if (((uintptr_t)v->data & 15) || v->token_stride % ve || v->head_stride % ve ||
        (v->pages && v->page_stride % ve) || head_dim % ve)
        J->vec = 0;
    tqc_job *jb = &J->job[J->n_jobs++];
    jb->data = v->data;
    jb->pages = v->pages;
    jb->token_stride = v->token_stride;
    jb->head_stride = v->head_stride;
    jb->page_stride = v->page_stride;
    jb->page_size = v->page_size;
    jb->page_offset = v->page_offset;
    jb->dst = dst;
    jb->pad = pad;
    return 0;
}

extern "C" int tq_cuda_encode_section(const tq_recipe *r, uint32_t head_dim, uint32_t n_kv_heads,
                                      uint32_t n_tokens, uint64_t seed, tq_codebook_kind cb,
                                      const tq_kv_view *src, void *dst, size_t dst_cap,
                                      void *stream)
{
    if (!dst)
        return TQKV_EINVAL;
    size_t need = tq_section_size(r, head_dim, n_kv_heads, n_tokens);
    if (!need)
        return r && tq_recipe_validate(r, head_dim) ? TQKV_EBADCODEC : TQKV_EBADGEOMETRY;
    if (dst_cap < need)
        return TQKV_ENOSPC;
    tqc_rec R;
    int rc = tqkv__cuda_rec(r, head_dim, n_kv_heads, n_tokens, seed, cb, &R);
    if (rc)
        return rc;
    static tqc_jobs J0; /* only for its zero-initialised shape */
    tqc_jobs J = J0;
    J.n_jobs = 0;
    rc = check_view(src, head_dim, &J, (uint8_t *)dst, 0);
    if (rc)
        return rc;
    return tqc_encode_jobs(R, r->n_out, J, seed, cb, (cudaStream_t)stream);
}

static bool recipe_eq(const tq_recipe *a, const tq_recipe *b)
{
    return a->mode == b->mode && a->bits == b->bits && a->out_bits == b->out_bits &&
           a->norm == b->norm && a->n_out == b->n_out && a->raw_dtype == b->raw_dtype;
}

/* The header is written on the host by tq_block_write_header; the layer table in it gives every
 * section's offset. */
extern "C" int tq_cuda_block_encode(const tq_codec_params *p, const uint8_t key[TQ_KEY_BYTES],
                                    uint32_t n_tokens, const tq_kv_view *k, const tq_kv_view *v,
                                    void *host_block, size_t host_cap, void *dst, size_t dst_cap,
                                    size_t *out_len, void *stream)
{
    if (!p || !k || !v || !host_block || !dst || !out_len)
        return TQKV_EINVAL;
    size_t len = 0;
    int rc = tq_block_write_header(p, key, n_tokens, host_block, host_cap, &len);
    if (rc)
        return rc;
    if (dst_cap < len)
        return TQKV_ENOSPC;
    const uint8_t *hb = (const uint8_t *)host_block;
    uint32_t n_recipes = hb[82];
    uint32_t payload = (uint32_t)hb[84] | (uint32_t)hb[85] << 8 | (uint32_t)hb[86] << 16 |
                       (uint32_t)hb[87] << 24;
    if (payload > host_cap || payload > len)
        return TQKV_EINTERNAL;
    cudaStream_t s = (cudaStream_t)stream;
    /* No memset of the block: the header copy brings its own padding and every encode job zeroes
     * the padding after its section, so each byte is written exactly once. */
    rc = tqkv__cuda_err(cudaMemcpyAsync(dst, host_block, payload, cudaMemcpyHostToDevice, s),
                        "block header copy");
    if (rc)
        return rc;
    /* Batch consecutive sections of the same tensor kind and recipe into one launch. */
    const uint8_t *ltab = hb + 128 + 16 * n_recipes;
    for (int tensor = 0; tensor < 2; tensor++) {
        static tqc_jobs J0;
        tqc_jobs J = J0;
        J.n_jobs = 0;
        tq_recipe cur;
        memset(&cur, 0, sizeof(cur));
        for (uint32_t l = 0; l <= p->n_layers; l++) {
            tq_recipe r;
            memset(&r, 0, sizeof(r));
            if (l < p->n_layers) {
                const tq_recipe *rl = tensor == 0 ? p->k_layers : p->v_layers;
                r = rl ? rl[l] : (tensor == 0 ? p->k : p->v);
            }
            bool flush = J.n_jobs > 0 &&
                         (l == p->n_layers || J.n_jobs == TQC_MAX_JOBS ||
                          !recipe_eq(&r, &cur) ||
                          (tensor == 0 ? k[l] : v[l]).dtype != J.dtype);
            if (flush) {
                tqc_rec R;
                rc = tqkv__cuda_rec(&cur, p->head_dim, p->n_kv_heads, n_tokens, p->seed,
                                    (tq_codebook_kind)p->codebook, &R);
                if (!rc)
                    rc = tqc_encode_jobs(R, cur.n_out, J, p->seed,
                                         (tq_codebook_kind)p->codebook, s);
                if (rc)
                    return rc;
                J.n_jobs = 0;
            }
            if (l == p->n_layers)
                break;
            cur = r;
            const uint8_t *e = ltab + 32 * l;
            uint64_t off = 0;
            for (int b = 7; b >= 0; b--)
                off = off << 8 | e[b];
            uint32_t kbytes = (uint32_t)e[8] | (uint32_t)e[9] << 8 | (uint32_t)e[10] << 16 |
                              (uint32_t)e[11] << 24;
            uint32_t vbytes = (uint32_t)e[12] | (uint32_t)e[13] << 8 | (uint32_t)e[14] << 16 |
                              (uint32_t)e[15] << 24;
            if (tensor == 1)
                off += ((uint64_t)kbytes + 63) & ~(uint64_t)63;
            uint32_t bytes = tensor == 0 ? kbytes : vbytes;
            if (off + bytes > len || off < payload)
                return TQKV_EINTERNAL;
            rc = check_view(tensor == 0 ? &k[l] : &v[l], p->head_dim, &J, (uint8_t *)dst + off,
                            (uint32_t)((64 - bytes % 64) % 64));
            if (rc)
                return rc;
        }
    }
    *out_len = len;
    return 0;
}
