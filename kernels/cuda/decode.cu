/* TurboQuant decode on the GPU: a section in device memory -> [tokens, heads, head_dim] fp16,
 * bf16 or fp32 in the original domain, in the reference's arithmetic order (decoded values equal
 * tq_decode_section's). One thread per (token, head) vector, the part in registers, like the
 * encoder; prod parts add their QJL correction gamma * sqrt(pi/2)/sqrt(n) * S^T (2 signs - 1)
 * before the inverse rotation, as the reference does. */
#include <math.h>

#include "tqc.cuh"

#define TQC_DEC_THREADS 64

/* Threads per block: outlier recipes keep a per-thread row of P + 1 floats in shared memory. */
template <int P, int NP> struct tqc_dec_tb {
    static constexpr int value = (NP == 2 && P == 256) ? 32 : TQC_DEC_THREADS;
};

/* Reads the codes of consecutive coordinates from one sub-plane (word-major, token-minor). */
struct tqc_plane_reader {
    const uint32_t *base;
    uint32_t T, w, mask, cur, sh, wi;
    __device__ __forceinline__ void init(const uint8_t *rec, uint32_t off, uint32_t T_,
                                         uint32_t t, uint32_t w_)
    {
        base = (const uint32_t *)(rec + off) + t;
        T = T_;
        w = w_;
        mask = (1u << w_) - 1;
        cur = sh = wi = 0;
    }
    __device__ __forceinline__ uint32_t get()
    {
        if (sh == 0)
            cur = __ldg(base + (size_t)(wi++) * T);
        uint32_t c = (cur >> sh) & mask;
        sh += w;
        if (sh == 32)
            sh = 0;
        return c;
    }
};

template <int N>
__device__ __forceinline__ void tqc_decode_part(const tqc_part &pp, const uint8_t *rec,
                                                uint32_t T, uint32_t t, float (&z)[N])
{
    float s = tqc_f16_to_f32(((const uint16_t *)(rec + pp.scale_off))[t]);
    float coef = 0.0f;
    if (pp.prod) {
        /* z[k] = sum_j (2 sign_j - 1) S[j][k], sequential in j (the reference's order); the
         * MSE part is added afterwards: (s c) + coef z is the same sum as the reference's. */
        float g = tqc_f16_to_f32(((const uint16_t *)(rec + pp.gamma_off))[t]);
        coef = __fmul_rn(g, (float)(1.2533141373155002512 / sqrt((double)N)));
#pragma unroll
        for (int k = 0; k < N; k++)
            z[k] = 0.0f;
#pragma unroll
        for (int i = 0; i < (N + 31) / 32; i++) {
            uint32_t word = __ldg((const uint32_t *)(rec + pp.signs_off) + (size_t)i * T + t);
#pragma unroll 1
            for (int jj = 0; jj < 32 && i * 32 + jj < N; jj++) {
                const float *row = pp.S + (size_t)(i * 32 + jj) * N;
                uint32_t neg = ((word >> jj) & 1) ? 0u : 0x80000000u;
#pragma unroll
                for (int k = 0; k < N; k++)
                    z[k] = __fadd_rn(z[k], __uint_as_float(__float_as_uint(__ldg(row + k)) ^ neg));
            }
        }
    }
    if (pp.m) {
        tqc_plane_reader r0, r1;
        r0.init(rec, pp.plane_off[0], T, t, pp.plane_w[0]);
        if (pp.n_planes == 2)
            r1.init(rec, pp.plane_off[1], T, t, pp.plane_w[1]);
#pragma unroll
        for (int k = 0; k < N; k++) {
            uint32_t code = r0.get();
            if (pp.n_planes == 2)
                code |= r1.get() << 2;
            float v = __fmul_rn(s, __ldg(pp.cent + code));
            z[k] = pp.prod ? __fadd_rn(v, __fmul_rn(coef, z[k])) : v;
        }
    } else {
#pragma unroll
        for (int k = 0; k < N; k++)
            z[k] = pp.prod ? __fadd_rn(0.0f, __fmul_rn(coef, z[k])) : 0.0f;
    }
    tqc_fwht(z);
    const float f = __fdiv_rn(1.0f, (float)N);
#pragma unroll
    for (int k = 0; k < N; k++)
        z[k] = __uint_as_float(__float_as_uint(__fmul_rn(z[k], f)) ^ __ldg(pp.dsign + k));
}

__device__ __forceinline__ void tqc_store(void *dst, uint32_t dt, size_t i, float v)
{
    if (dt == TQ_DTYPE_F16)
        ((uint16_t *)dst)[i] = tqc_f32_to_f16(v);
    else if (dt == TQ_DTYPE_BF16)
        ((uint16_t *)dst)[i] = tqc_f32_to_bf16(v);
    else
        ((float *)dst)[i] = v;
}

/* Block (token tile, head). out: [T, n_heads, head_dim] of out_dtype. */
template <int N, int NP>
__global__ void __launch_bounds__(tqc_dec_tb<N * NP, NP>::value)
    tqc_decode_kernel(const __grid_constant__ tqc_rec R, const uint8_t *section, uint32_t out_dtype,
                      void *out)
{
    constexpr int P = N * NP;
    constexpr int TB = tqc_dec_tb<P, NP>::value;
    __shared__ uint16_t ch_s[2][NP == 2 ? N : 1];
    __shared__ float row_s[NP == 2 ? TB * (P + 1) : 1];
    const uint32_t h = blockIdx.y, T = R.T;
    const uint32_t t = blockIdx.x * TB + threadIdx.x;
    const uint8_t *rec = section + (size_t)h * R.record_size;
    __shared__ int bad;
    if (NP == 2 && threadIdx.x == 0) {
        const uint32_t *mk = (const uint32_t *)rec;
        uint32_t a = 0, b = 0;
        for (uint32_t c = 0; c < (uint32_t)P; c++) {
            if ((mk[c >> 5] >> (c & 31)) & 1) {
                if (a < (uint32_t)N)
                    ch_s[0][a] = (uint16_t)c;
                a++;
            } else {
                if (b < (uint32_t)N)
                    ch_s[NP - 1][b] = (uint16_t)c;
                b++;
            }
        }
        bad = a != (uint32_t)N; /* a malicious mask: output zeros rather than read out of range */
    }
    __syncthreads();
    if (t >= T)
        return;
    size_t o = ((size_t)t * R.n_heads + h) * R.head_dim;
    if (NP == 1) {
        float z[N];
        tqc_decode_part<N>(R.part[0], rec, T, t, z);
#pragma unroll
        for (int k = 0; k < N; k++)
            if ((uint32_t)k < R.head_dim)
                tqc_store(out, out_dtype, o + k, z[k]);
    } else {
        float *row = row_s + threadIdx.x * (P + 1);
#pragma unroll 1
        for (int p = 0; p < NP; p++) {
            float z[N];
            tqc_decode_part<N>(R.part[p], rec, T, t, z);
#pragma unroll
            for (int k = 0; k < N; k++)
                row[ch_s[p][k]] = bad ? 0.0f : z[k];
        }
        for (uint32_t k = 0; k < R.head_dim; k++)
            tqc_store(out, out_dtype, o + k, row[k]);
    }
}

__global__ void tqc_decode_raw_kernel(const __grid_constant__ tqc_rec R, const uint8_t *section,
                                      uint32_t out_dtype, void *out)
{
    const uint32_t h = blockIdx.y;
    const uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
    const uint32_t t = i / R.head_dim, j = i % R.head_dim;
    if (t >= R.T)
        return;
    uint16_t v = ((const uint16_t *)(section + (size_t)h * R.record_size))[(size_t)t * R.P + j];
    size_t o = ((size_t)t * R.n_heads + h) * R.head_dim + j;
    if (out_dtype == R.raw_dtype)
        ((uint16_t *)out)[o] = v; /* lossless: keep the bits */
    else
        tqc_store(out, out_dtype, o,
                  R.raw_dtype == TQ_DTYPE_F16 ? tqc_f16_to_f32(v) : tqc_bf16_to_f32(v));
}

template <int N, int NP>
static void launch_decode(const tqc_rec &R, const uint8_t *sec, uint32_t dt, void *out,
                          cudaStream_t s)
{
    constexpr int TB = tqc_dec_tb<N * NP, NP>::value;
    dim3 grid((R.T + TB - 1) / TB, R.n_heads);
    tqc_decode_kernel<N, NP><<<grid, TB, 0, s>>>(R, sec, dt, out);
}

extern "C" int tq_cuda_decode_section(const tq_recipe *r, uint32_t head_dim, uint32_t n_kv_heads,
                                      uint32_t n_tokens, uint64_t seed, tq_codebook_kind cb,
                                      const void *section, size_t section_len,
                                      tq_dtype out_dtype, void *dst, size_t dst_cap, void *stream)
{
    if (!section || !dst)
        return TQKV_EINVAL;
    size_t es = tq_dtype_size(out_dtype);
    if (!es)
        return TQKV_EBADDTYPE;
    size_t need = tq_section_size(r, head_dim, n_kv_heads, n_tokens);
    if (!need)
        return r && tq_recipe_validate(r, head_dim) ? TQKV_EBADCODEC : TQKV_EBADGEOMETRY;
    if (section_len < need)
        return TQKV_ETRUNCATED;
    if (dst_cap / es / head_dim / n_kv_heads < n_tokens)
        return TQKV_ENOSPC;
    tqc_rec R;
    int rc = tqkv__cuda_rec(r, head_dim, n_kv_heads, n_tokens, seed, cb, &R);
    if (rc)
        return rc;
    const uint8_t *sec = (const uint8_t *)section;
    cudaStream_t s = (cudaStream_t)stream;
    uint32_t dt = (uint32_t)out_dtype;
    if (R.raw) {
        dim3 grid((n_tokens * head_dim + 255) / 256, n_kv_heads);
        tqc_decode_raw_kernel<<<grid, 256, 0, s>>>(R, sec, dt, dst);
    } else if (R.n_parts == 2) {
        switch (R.P) {
        case 32: launch_decode<16, 2>(R, sec, dt, dst, s); break;
        case 64: launch_decode<32, 2>(R, sec, dt, dst, s); break;
        case 128: launch_decode<64, 2>(R, sec, dt, dst, s); break;
        default: launch_decode<128, 2>(R, sec, dt, dst, s); break;
        }
    } else {
        switch (R.P) {
        case 32: launch_decode<32, 1>(R, sec, dt, dst, s); break;
        case 64: launch_decode<64, 1>(R, sec, dt, dst, s); break;
        case 128: launch_decode<128, 1>(R, sec, dt, dst, s); break;
        default: launch_decode<256, 1>(R, sec, dt, dst, s); break;
        }
    }
    TQC_CHECK_LAUNCH("decode launch");
    return 0;
}

extern "C" int tq_cuda_block_decode(const tq_block_view *b, const void *dev_block,
                                    uint32_t layer_begin, uint32_t n_layers, tq_dtype out_dtype,
                                    void *dst, size_t dst_cap, void *stream)
{
    if (!b || !dev_block || !dst)
        return TQKV_EINVAL;
    size_t per;
    int err = tqkv__block_decode_check(b, layer_begin, n_layers, out_dtype, dst_cap, &per);
    if (err)
        return err;
    for (uint32_t l = 0; l < n_layers; l++)
        for (int t = 0; t < 2; t++) {
            const uint8_t *sec;
            size_t sl;
            tq_recipe r;
            int rc = tq_block_section(b, layer_begin + l, (tq_tensor)t, &sec, &sl, &r);
            if (!rc)
                rc = tq_cuda_decode_section(&r, b->head_dim, b->n_kv_heads, b->n_tokens, b->seed,
                                            (tq_codebook_kind)b->codebook,
                                            (const uint8_t *)dev_block + (sec - b->base), sl,
                                            out_dtype, (uint8_t *)dst + per * (2 * l + t), per,
                                            stream);
            if (rc)
                return rc;
        }
    return 0;
}
