/* TurboQuant encode on the GPU: KV in device memory (fp16, bf16 or fp32; contiguous or paged) ->
 * the section layout of kernels/FORMAT.md, bit for bit what the CPU reference writes.
 *
 * Design: one thread encodes one (token, head) vector, holding the part vector in registers
 * (template N = part dimension), so that the reference's sequential and fixed-tree sums are
 * reproduced in the same order without cross-lane traffic. Consecutive threads take consecutive
 * tokens of one head, so the word-major, token-minor code planes are written as contiguous
 * 128-byte runs per warp. Outlier recipes run a first kernel that sums channel energies per head
 * (sequentially over tokens, like the reference), chooses the outlier channels and writes the
 * mask into the head record; the encode kernel then reads the mask back. Several sections that
 * share a recipe (the layers of a block) are encoded by one launch (grid.z = job). */
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

/* Energies, outlier choice and mask of one head of one job: block (head, 1, job), P threads. */
__global__ void tqc_mask_kernel(const __grid_constant__ tqc_rec R, const __grid_constant__ tqc_jobs J,
                                uint32_t n_out)
{
    __shared__ float E[TQ_MAX_HEAD_DIM];
    __shared__ uint32_t mask[TQ_MAX_HEAD_DIM / 32];
    const tqc_job &jb = J.job[blockIdx.z];
    const uint32_t h = blockIdx.x, j = threadIdx.x, P = R.P;
    float e = 0.0f;
    if (j < R.head_dim) {
        /* the sum is one sequential chain (the reference's order); unrolling keeps many loads
         * in flight ahead of it */
#pragma unroll 32
        for (uint32_t t = 0; t < R.T; t++) {
            float x = tqc_load_elem(jb.data, J.dtype, tqc_view_index(jb, t, h) + j);
            e = __fadd_rn(e, __fmul_rn(x, x));
        }
    }
    E[j] = e;
    if (j < P / 32)
        mask[j] = 0;
    __syncthreads();
    uint32_t rank = 0;
    for (uint32_t i = 0; i < P; i++) {
        float ei = E[i];
        rank += ei > e || (ei == e && i < j);
    }
    if (rank < n_out)
        atomicOr(&mask[j >> 5], 1u << (j & 31));
    __syncthreads();
    if (j < P / 32)
        ((uint32_t *)(jb.dst + (size_t)h * R.record_size))[j] = mask[j];
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

/* Launches the kernels of one batch of jobs sharing the recipe R. */
static int tqc_encode_jobs(const tqc_rec &R, uint32_t n_out, const tqc_jobs &J, cudaStream_t s)
{
    if (R.raw) {
        dim3 grid((R.T * R.P + 255) / 256, R.n_heads, J.n_jobs);
        tqc_encode_raw_kernel<<<grid, 256, 0, s>>>(R, J);
        TQC_CHECK_LAUNCH("encode_raw launch");
        return 0;
    }
    if (R.n_parts == 2) {
        tqc_mask_kernel<<<dim3(R.n_heads, 1, J.n_jobs), R.P, 0, s>>>(R, J, n_out);
        TQC_CHECK_LAUNCH("mask launch");
        switch (R.P) {
        case 32: launch_encode<16, 2>(R, J, s); break;
        case 64: launch_encode<32, 2>(R, J, s); break;
        case 128: launch_encode<64, 2>(R, J, s); break;
        case 256: launch_encode<128, 2>(R, J, s); break;
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
    return tqc_encode_jobs(R, r->n_out, J, (cudaStream_t)stream);
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
                    rc = tqc_encode_jobs(R, cur.n_out, J, s);
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
