/* Decode attention on tensor cores, for the geometry most engines run: head_dim_padded 128, the
 * recipes of tq4, tq3, tq4-prod and tq3-prod (one part per tensor, up to 16 query heads per KV
 * head), tq3.5 (keys split into 64 outlier channels at 4 bits and 64 at 2, up to 8) and
 * tq3.5-prod (split prod keys and split values, up to 8; see kSplitProd).
 *
 * Grid (split, KV head, sequence), eight warps. Each warp walks its own 32-token tiles of the
 * block's chunks, whole chunks at a time, with its own online softmax (no barrier in the loop)
 * and the block merges its eight warps at the end. A tile's code words and scales reach shared
 * memory by cp.async into the warp's two staging slots (keys, values), each refilled with the next
 * tile's as soon as its words have been read into registers, so that no load is ever in flight in
 * registers at a branch. Per tile, all with mma.sync m16n8k16 (fp16 operands, fp32 sums):
 *   - scores S[tokens x heads] = K . Q'^T: the A operand is decoded straight from the code words
 *     into fragments: a byte of codes (two coordinates of one token) indexes a table of half2
 *     centroid pairs in shared memory, replicated once per lane so that the 32 lookups of a warp
 *     never share a bank. The coordinates each lane feeds are a permutation of 0..127 chosen so
 *     that its code words are whole 16-byte reads; the query fragments (B operand, one column per
 *     query head) follow the same permutation, which leaves every dot product unchanged. QJL
 *     signs become +-1 fragments by two bit operations and a second accumulator. The rotated
 *     query q' = H (D . q) / sqrt(128) is computed by each block (MSE keys), with its sketch
 *     S q' once per sequence by att_mma_prep (prod keys), or per chunk and part by
 *     att_mma_prep_split (tq3.5, whose channel split is each chunk's own).
 *   - values O^T[128 x heads] += V^T[128 x tokens] . P'^T: P' = p * scale_v, rounded to fp16 and
 *     transposed into the B operand with movmatrix; the A operand takes two tokens per register,
 *     so a lane interleaves the codes of two tokens into table indices. The token order inside a
 *     tile is permuted the same way on both sides, so that each lane's code words of four or
 *     eight consecutive tokens are one 16-byte read.
 * No dequantized key or value is written anywhere; values stay rotated and the block rotates its
 * merged sum back (D . H z / n) once, into the same split workspace the general kernel writes;
 * the merge kernel is launched as a programmatic dependent of this one. */
#include <math.h>

#include "attention.cuh"

namespace
{

constexpr int kWarps = 8, kThreads = 32 * kWarps, kTile = 32;
/* Window address of dynamic shared memory in a block without static shared memory: the 1 KiB
 * the system reserves per block comes first (sm_80 and later). The tables start there, so their
 * address is an immediate of the shared load (checked at run time). */
constexpr uint32_t kSmemBase = 1024;
/* Chunk descriptors a block copies into shared memory up front (the rest are read from global
 * memory as they come): the walk from chunk to chunk then waits on no global load. */
constexpr uint32_t kDesc = 64;
/* Row stride (floats) of the warps' sums in the merge: odd, so that the fragment stores of a
 * warp spread over the banks (a row of 128 would put the four t4 columns in one bank). */
constexpr uint32_t kOs = 129;

/* KM tag of split keys (tq3.5): outlier part 0 of 64 channels at 4 bits and part 1 of the other
 * 64 at 2 bits, each rotated on its own, the channel split per chunk and head (its mask). Their
 * queries are split and rotated per chunk by att_mma_prep_split into fragment order; the block
 * copies them with the keys. */
constexpr int kSplit = 42, kSplit8 = 43; /* kSplit8: the same, 5 to 8 query heads per KV head */
__host__ __device__ constexpr bool splitk(int KM)
{
    return KM == kSplit || KM == kSplit8;
}
/* Query heads per KV head the split kernel's per-chunk query fragments hold (256 bytes each). */
__host__ __device__ constexpr uint32_t qheads(int KM)
{
    return KM == kSplit8 ? 8 : 4;
}
/* Where split keys' part 1 table starts in the window: table addresses take their entry as byte
 * 1 (lut_addr), so a table starts at a multiple of 64 KiB; part 0's and the values' fill the
 * first 64 KiB. */
constexpr uint32_t kK1Table = 65536;

/* KM and VM tags of tq3.5-prod, split prod keys ("KP"): keys part 0 of 64 outlier channels at 4
 * MSE bits and QJL signs, part 1 of the other 64 at 1 MSE bit and signs; values split as well,
 * part 0 at 4 bits, part 1 at 3, each tensor with its own channel split per chunk and head. The
 * queries are split, rotated and sketched per chunk by att_mma_prep_sp. The value sums are
 * rotated per chunk, so a warp walks whole chunks (a chunk's tiles split among at most eight
 * warps) and moves its sums into the original domain each time it leaves one (flush_sp). */
constexpr int kSplitProd = 44, kSplitV = 45;
constexpr int kSplitProd8 = 46; /* the same, 5 to 8 query heads per KV head */
__host__ __device__ constexpr bool splitp(int KM)
{
    return KM == kSplitProd || KM == kSplitProd8;
}
/* Query heads per KV head a KP kernel's fragments and sums hold. */
__host__ __device__ constexpr uint32_t sp_heads(int KM)
{
    return KM == kSplitProd8 ? 8 : 4;
}
/* Record geometry of KP keys and values (T tokens, H2 bytes of a scale run). Keys: mask, part
 * 0's scale and gamma runs, its [4] plane (8 rows of T words) and signs (2 rows), part 1's scale
 * and gamma, its [1] plane and signs (2 rows each). Values: mask, part 0's scales and [4] plane,
 * part 1's scales, [2] plane (4 rows) and [1] plane (2 rows). */
struct sp_rec {
    __device__ static uint32_t ksize(uint32_t T, uint32_t H2)
    {
        return 16 + 4 * H2 + 56 * T;
    }
    __device__ static uint32_t vsize(uint32_t T, uint32_t H2)
    {
        return 16 + 2 * H2 + 56 * T;
    }
    /* key rows 0..9 from here (row r at 4 r T), and 10..13 from k1 (row r at 4 (r - 10) T) */
    __device__ static uint32_t k0(uint32_t H2)
    {
        return 16 + 2 * H2;
    }
    __device__ static uint32_t k1(uint32_t T, uint32_t H2)
    {
        return 16 + 4 * H2 + 40 * T;
    }
    /* key scale runs: 0 part 0's scales, 1 its gammas, 2 part 1's scales, 3 its gammas */
    __device__ static uint32_t krun(uint32_t k, uint32_t T, uint32_t H2)
    {
        return (k < 2 ? 16 : 16 + 2 * H2 + 40 * T) + (k & 1) * H2;
    }
    /* value rows 0..7 from v0, 8..13 from v1 (row r at 4 (r - 8) T) */
    __device__ static uint32_t v0(uint32_t H2)
    {
        return 16 + H2;
    }
    __device__ static uint32_t v1(uint32_t T, uint32_t H2)
    {
        return 16 + 2 * H2 + 32 * T;
    }
    /* value scale runs: part 0's, part 1's */
    __device__ static uint32_t vrun(uint32_t k, uint32_t T, uint32_t H2)
    {
        return k ? 16 + H2 + 32 * T : 16;
    }
};
/* KP staging slots, 16 rows of 128 bytes (32 tokens) each. Keys: rows 0..13 the word rows, 14
 * and 15 the scale runs 0, 1 and 2, 3 (64 bytes each). Values: rows 0..13 the word rows, 14 the
 * two scale runs, 15 the record's mask (16 bytes). */
constexpr uint32_t kSpRows = 14, kSpSlot = 16 * 128;
/* First table row whose second half holds flush_sp's channel maps (warp w: rows + 2w, + 2w + 1). */
constexpr uint32_t kSpInv = 192;
/* Query fragments of KP per (sequence, chunk, KV head): 4 lanes per head, 32 words each. */
__host__ __device__ constexpr uint32_t sp_qbytes(int KM)
{
    return sp_heads(KM) * 512;
}
/* kSplitProd8's value sums in the original domain: 8 warps x 8 heads x 512 bytes at this window
 * offset (1 KiB aligned), past the staging slots (checked by att_kernel). */
constexpr uint32_t kSp8Acc = 100352;

struct mma_args {
    uint32_t n_kv, n_q, group, head_dim, n_splits, cps;
    /* softmax_scale * log2e / sqrt(n); cQ: times sqrt(pi/2) / sqrt(n) for the sketch, or for
     * split keys the same factor as cK for part 1 */
    float cK, cQ;
    const float *kcent, *vcent, *k1cent; /* k1cent: split keys' part 1 */
    const uint8_t *qsplit; /* split keys: att_mma_prep_split's fragments, [seq][chunk][kv] */
    uint32_t max_chunks;   /* chunks per sequence the fragment array has room for */
    const uint32_t *vdsign;
    uint32_t share_lut; /* keys and values use the same table (same codebook and width) */
    const void *q;      /* the queries (MSE keys: each block rotates its own) */
    uint32_t q_dtype;
    const uint32_t *kdsign;
    const float *v1cent;     /* KP: the values' part 1 */
    const uint32_t *v1dsign; /* KP: the values' part 1 */
};

/* Planes of an m-bit MSE part at n = 128: [4] = 16 words, [2,1] = 8 + 4, [2] = 8 (per token);
 * split keys: part 0's [4] = 8 words, part 1's [2] = 4 words (n = 64 each). */
template <int M> struct planes {
    static constexpr uint32_t w0 = splitk(M) ? 8 : M == 4 ? 16 : 8;
    static constexpr uint32_t w1 = splitk(M) ? 4 : M == 3 ? 4 : 0;
};
/* Bytes of a key record of T tokens before its first plane word row (mask and scales), and
 * from there to part 1's rows (split keys: part 0's rows and part 1's scale). */
template <int KM, bool KQ> struct krec_layout {
    __device__ static uint32_t head(uint32_t H2)
    {
        return splitk(KM) ? 16 + H2 : H2 * (KQ ? 2 : 1);
    }
    __device__ static uint32_t gap(uint32_t T, uint32_t H2)
    {
        return splitk(KM) ? 32 * T + H2 : planes<KM>::w0 * 4 * T;
    }
    __device__ static uint32_t size(uint32_t T, uint32_t H2)
    {
        if (splitp(KM)) return sp_rec::ksize(T, H2);
        return head(H2) + gap(T, H2) + (planes<KM>::w1 + (KQ ? 4 : 0)) * 4 * T;
    }
};
/* Entries of a lookup table: 4-bit codes index by a byte (two codes), 2- and 3-bit codes by a
 * 6-bit index (two low pairs, two high bits). Entry e is a 256-byte row: the key table's 32
 * copies in its first half, the value table's (when it differs) in the second. */
template <int M> struct lut_size {
    static constexpr uint32_t entries = M == 4 || splitk(M) || splitp(M) ? 256 : 64;
    static constexpr uint32_t bytes = entries * 256;
};

__device__ __forceinline__ void mma16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                         uint32_t a3, uint32_t b0, uint32_t b1)
{
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_half2(float lo, float hi)
{
    __half2 h = __floats2half2_rn(lo, hi);
    return *(uint32_t *)&h;
}

/* Offset of the table entry that byte B of w indexes: entry * 256 + lb, lb = half * 128 +
 * lane * 4 (< 256): one byte permute puts the byte above lb's. */
template <int B> __device__ __forceinline__ uint32_t lut_addr(uint32_t w, uint32_t lb)
{
    return __byte_perm(w, lb, 0x7604 | (B << 4));
}
__device__ __forceinline__ uint32_t lds(uint32_t off)
{
    uint32_t v;
    asm("ld.shared.b32 %0, [%1+1024];" : "=r"(v) : "r"(off)); /* kSmemBase */
    return v;
}
/* 2^x with the hardware approximation (x <= 0 here; -inf gives 0). */
__device__ __forceinline__ float ex2(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
/* Transposes an 8x8 matrix of 16-bit values held one row pair per lane (mma fragment layout). */
__device__ __forceinline__ uint32_t movmatrix_t(uint32_t x)
{
    uint32_t y;
    asm("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;" : "=r"(y) : "r"(x));
    return y;
}

/* Stages of the unnormalised Walsh-Hadamard transform as the reference orders them (stage h:
 * x[j] = u + v, x[j + h] = u - v): the two between a lane's four registers (distances 1 and 2 of
 * their index), and those between lanes (lane distances 1 .. LANES / 2) by shuffles. */
__device__ __forceinline__ void fwht_registers(float (&x)[4])
{
    const float a = x[0] + x[1], b = x[0] - x[1], c = x[2] + x[3], d = x[2] - x[3];
    x[0] = a + c;
    x[1] = b + d;
    x[2] = a - c;
    x[3] = b - d;
}
template <uint32_t LANES>
__device__ __forceinline__ void fwht_shuffles(float (&x)[4], uint32_t lane)
{
#pragma unroll
    for (uint32_t m = 1; m < LANES; m <<= 1) {
        const float sg = (lane & m) ? -1.0f : 1.0f; /* upper lane: other - own, one rounding */
#pragma unroll
        for (int i = 0; i < 4; i++)
            x[i] = fmaf(x[i], sg, __shfl_xor_sync(0xffffffffu, x[i], m));
    }
}
/* The transform of a 4 * LANES-float row held by LANES lanes (element 4 l + i in lane l's x[i];
 * LANES = 32: one 128-point row, 16: two 64-point rows, one per half warp), no shared memory
 * and no barrier. */
template <uint32_t LANES> __device__ __forceinline__ void warp_fwht(float (&x)[4], uint32_t lane)
{
    fwht_registers(x);
    fwht_shuffles<LANES>(x, lane);
}
/* The same for a 128-float row held with element lane + 32 i in x[i] (distances 32 and 64 are
 * then the registers'). */
__device__ __forceinline__ void warp_fwht_strided(float (&x)[4], uint32_t lane)
{
    fwht_shuffles<32>(x, lane);
    fwht_registers(x);
}

/* Nibbles 0..3 of the low 16 bits of x (or of the high 16 bits with HI) into bytes 0..3. */
template <bool HI> __device__ __forceinline__ uint32_t spread_nibbles(uint32_t x)
{
    uint32_t s = __byte_perm(x, 0, HI ? 0x4342 : 0x4140);
    return (s | (s << 4)) & 0x0F0F0F0Fu;
}

/* ---- Coordinate permutations (which rotated channel each fragment element holds) ---------- */

/* Key side, lane quad position t4, decoded register r (0..15) of a token, half e: the channel. */
template <int KM>
__device__ __forceinline__ uint32_t key_channel(uint32_t t4, uint32_t r, uint32_t e)
{
    if (KM == 4) return 8 * (t4 + 4 * (r >> 2)) + 2 * (r & 3) + e;
    return 32 * t4 + 16 * (r >> 3) + 4 * (r & 3) + 2 * ((r >> 2) & 1) + e;
}
/* The inverse for a pair of channels 2m, 2m + 1 (always one register of one lane): the lane
 * quad position t4 and the decoded register r (= 2 j + hi of k-step j) that hold it. */
template <int KM> __device__ __forceinline__ void key_word(uint32_t m, uint32_t &t4, uint32_t &r)
{
    if (KM == 4) {
        t4 = (m >> 2) & 3;
        r = 4 * (m >> 4) + (m & 3);
    } else {
        t4 = m >> 4;
        r = 8 * ((m >> 3) & 1) + 4 * (m & 1) + ((m >> 1) & 3);
    }
}
__device__ __forceinline__ uint32_t sign_channel(uint32_t t4, uint32_t r, uint32_t e)
{
    return 32 * t4 + r + 16 * e;
}
/* Value side, lane group g, m-tile mt (0..7), row half h (row g or g + 8): the channel. */
template <int VM>
__device__ __forceinline__ uint32_t value_channel(uint32_t g, uint32_t mt, uint32_t h)
{
    if (VM == 4) return 64 * h + 8 * g + mt;
    return 16 * g + 4 * (2 * (mt & 1) + h) + (mt >> 1);
}

/* KP keys' sign rows and 1-bit code rows (64 channels, two words per token): the channel lane
 * quad position t4 feeds as register r (0..7) half e, bits 8 (t4 & 1) + r (+ 16) of word t4 / 2. */
__host__ __device__ constexpr uint32_t sign64_channel(uint32_t t4, uint32_t r, uint32_t e)
{
    return 32 * (t4 >> 1) + 8 * (t4 & 1) + r + 16 * e;
}
/* KP values, lane group g, m-tile mt, row half h: the channel within its part. M-tiles 0..3 are
 * part 0 (4-bit word g: codes 2 mt + h), 4..7 part 1 (3-bit: [2] word g / 2, [1] word g / 4). */
__host__ __device__ constexpr uint32_t vsp_channel(uint32_t g, uint32_t mt, uint32_t h)
{
    return mt < 4 ? 8 * g + 2 * mt + h
                  : 16 * (g >> 1) + 4 * (2 * ((mt - 4) & 1) + h) + 2 * (g & 1) + ((mt - 4) >> 1);
}
/* The sign mask and flush_sp read part 1's channels as 16 (g / 2) + 4 q + 2 (g & 1) + u, those
 * of m-tile 4 + 2u + (q >> 1), row half q & 1 (two per 8-byte read); every channel once. */
constexpr bool vsp_checked()
{
    uint32_t seen[8] = {};
    for (uint32_t g = 0; g < 8; g++)
        for (uint32_t q = 0; q < 4; q++)
            for (uint32_t u = 0; u < 2; u++) {
                const uint32_t ch = vsp_channel(g, 4 + 2 * u + (q >> 1), q & 1);
                if (ch != 16 * (g >> 1) + 4 * q + 2 * (g & 1) + u || ch >= 64) return false;
                seen[ch >> 3] |= 1u << (ch & 7);
            }
    for (uint32_t i = 0; i < 8; i++)
        if (seen[i] != 0xff) return false;
    return true;
}
static_assert(vsp_checked(), "KP value channels: part 1's reads");

/* ---- Query preparation: q' = H (D . q) / sqrt(n) and the sketch S q', fp16 ----------------- */

__global__ void __launch_bounds__(128)
    att_mma_prep(const __grid_constant__ tqc_att A, const void *q, __half *wq)
{
    /* a programmatic dependent itself (tqkv__att_mma_launch): nothing is read before the kernel
     * ahead of it has ended. Then the split kernel (this grid's programmatic dependent) may be
     * scheduled: its tables and first copies overlap this work (it waits for the whole grid
     * before it reads the queries), and the chunks it copies before that wait were written
     * before the kernel ahead of this one ended */
    tqc_grid_begin();
    __shared__ float v[128];
    const uint32_t k = threadIdx.x, hq = blockIdx.x, seq = blockIdx.y;
    const tqc_part &pp = A.K.part[0];
    float x = 0.0f;
    if (k < A.head_dim) {
        uint16_t b = ((const uint16_t *)q)[((size_t)seq * A.n_q + hq) * A.head_dim + k];
        x = A.q_dtype == TQ_DTYPE_BF16 ? tqc_bf16_to_f32(b) : tqc_f16_to_f32(b);
    }
    v[k] = __uint_as_float(__float_as_uint(x) ^ __ldg(pp.dsign + k));
    __syncthreads();
    for (uint32_t h = 1; h < 128; h <<= 1) {
        float a = v[k], b = v[k ^ h];
        __syncthreads();
        v[k] = (k & h) ? b - a : a + b;
        __syncthreads();
    }
    const float r = v[k] * 0.08838834764831845f; /* 1 / sqrt(128) */
    __half *out = wq + ((size_t)seq * A.n_q + hq) * 256;
    out[k] = __float2half_rn(r);
    if (pp.prod) {
        __syncthreads();
        v[k] = r;
        __syncthreads();
        float s = 0.0f;
#pragma unroll 16
        for (uint32_t j = 0; j < 128; j++)
            s += __ldg(pp.St + (size_t)j * 128 + k) * v[j]; /* S[k][j] */
        out[128 + k] = __float2half_rn(s);
    }
}

/* Split keys (tq3.5): a chunk's channel split is its own (the mask of each KV head's record),
 * so the group's queries are split and rotated per (chunk, KV head) here: part p of head r is
 * q'_p = H (D_p . q[channels of part p, increasing]) / sqrt(64), in fp16, written in the order the
 * split kernel's lane L = 4 g + t4 (g < qh) reads its B fragments (head g; word 2 j + hi of
 * k-step j: part 0 for j < 4, part 1 for j >= 4), its four 16-byte quads at columns (k + L / 2)
 * mod 4 so that a quarter warp's reads meet no bank twice: qh / 4 KiB per (chunk, KV head), qh =
 * 4 or 8 heads (qheads). Heads past the group are zeros. A mask without exactly 64 bits set is read
 * as "first half, second half", as the general kernel does. */
__global__ void __launch_bounds__(128)
    att_mma_prep_split(const __grid_constant__ tqc_att A, const int32_t *indptr,
                       const tq_cuda_chunk *chunks, const void *q, uint32_t max_chunks, uint32_t qh,
                       uint32_t *out)
{
    tqc_grid_begin(); /* as att_mma_prep */
    __shared__ float v[8][128];
    const uint32_t h = blockIdx.y, seq = blockIdx.z, tid = threadIdx.x;
    const uint32_t lane = tid & 31, warp = tid >> 5;
    const int32_t c = indptr[seq] + (int32_t)blockIdx.x;
    if (c >= indptr[seq + 1]) return;
    const tq_cuda_chunk ck = chunks[c];
    const uint32_t T = ck.n_tokens, H2 = (T + 1) / 2 * 4;
    const uint32_t *mk =
        (const uint32_t *)((const uint8_t *)ck.k_section + (size_t)h * (16 + 2 * H2 + 48 * T));
    uint32_t m[4], cnt = 0;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        m[i] = mk[i];
        cnt += __popc(m[i]);
    }
    const bool ok = cnt == 64;
    for (uint32_t r = warp; r < qh; r += 4) { /* a warp per head row (qh = 4 or 8) */
        const uint16_t *qp =
            (const uint16_t *)q + ((size_t)seq * A.n_q + h * A.group + r) * A.head_dim;
        float x[4];
#pragma unroll
        for (int i = 0; i < 4; i++) { /* channel j to its place in its part */
            const uint32_t j = 4 * lane + i, w = j >> 5, b = j & 31;
            uint32_t below = __popc(m[w] & ((1u << b) - 1));
#pragma unroll
            for (uint32_t u = 0; u < 3; u++)
                below += u < w ? __popc(m[u]) : 0;
            const bool out0 = ok ? ((m[w] >> b) & 1) != 0 : j < 64;
            const uint32_t r0 = ok ? below : (j < 64 ? j : 64);
            const uint32_t pos = out0 ? r0 : 64 + (j - r0);
            float val = 0.0f;
            if (r < A.group && j < A.head_dim)
                val = A.q_dtype == TQ_DTYPE_BF16 ? tqc_bf16_to_f32(qp[j]) : tqc_f16_to_f32(qp[j]);
            v[r][pos] = __uint_as_float(__float_as_uint(val) ^
                                        __ldg(A.K.part[pos >> 6].dsign + (pos & 63)));
        }
        __syncwarp();
#pragma unroll
        for (int i = 0; i < 4; i++)
            x[i] = v[r][4 * lane + i];
        warp_fwht<16>(x, lane); /* each part's 64 points: lanes 0..15 part 0, 16..31 part 1 */
#pragma unroll
        for (int i = 0; i < 4; i++)
            v[r][4 * lane + i] = x[i] * 0.125f; /* 1 / sqrt(64) */
    }
    __syncthreads();
    uint32_t *dst = out + (((size_t)seq * max_chunks + blockIdx.x) * A.n_kv + h) * qh * 64;
    for (uint32_t w = tid; w < qh * 64; w += 128) { /* lanes 0 .. 4 qh - 1: heads 0 .. qh - 1 */
        const uint32_t L = w >> 4, n = w & 15, g = L >> 2, t4 = L & 3;
        const uint32_t j = n >> 1, rr = 2 * (j & 3) + (n & 1);
        const uint32_t ch = j < 4 ? 8 * (t4 + 4 * (rr >> 2)) + 2 * (rr & 3)
                                  : 64 + 16 * t4 + 4 * (rr & 3) + 2 * ((rr >> 2) & 1);
        const uint32_t val = pack_half2(v[g][ch], v[g][ch + 1]);
        dst[L * 16 + ((((n >> 2) + (L >> 1)) & 3) << 2) + (n & 3)] = val;
    }
}

/* A split query's place in its part: channel j of a mask m (4 words) with `ok` (64 bits set)
 * goes to part 0 when its bit is set (position: the set bits below it), else to part 1 at 64 +
 * the clear bits below it. A mask without exactly 64 bits set is read as "first half, second
 * half", as the general kernel does. */
__device__ __forceinline__ uint32_t split_pos(const uint32_t (&m)[4], bool ok, uint32_t j)
{
    const uint32_t w = j >> 5, b = j & 31;
    const uint32_t mw = w == 0 ? m[0] : w == 1 ? m[1] : w == 2 ? m[2] : m[3];
    uint32_t below = __popc(mw & ((1u << b) - 1));
#pragma unroll
    for (uint32_t u = 0; u < 3; u++)
        below += u < w ? __popc(m[u]) : 0;
    if (!ok) return j;
    return ((mw >> b) & 1) ? below : 64 + (j - below);
}

/* KP (tq3.5-prod) keys: per (chunk, KV head), each of the group's queries (at most KH = 4 or 8)
 * split by the chunk's key mask, each part rotated, q'_p = H (D_p . q_p) / 8, and sketched, s_p =
 * S_p q'_p, into the B fragments lane L = 4 g + t4 (g < KH: query head g) holds: 32 words, the
 * sums q'_0 (register r = 2 j + hi of k-step j: channels key_channel<4>), s_0, q'_1 and s_1
 * (channels sign64_channel), 8 words each, fp16 pairs, laid out as qsp_row reads them; KH / 2 KiB
 * per (chunk, KV head), heads past the group zeros. A block takes `per` (at most kPrepMax) chunks
 * of one sequence and KV head, their masks read at once. The sketches are tensor-core products:
 * warp w holds m-tiles 2 (w & 1) and + 1 of S_p (p = w / 2) as fp16 A fragments for all the
 * block's chunks, the rotated queries (fp16, as the score product takes them) are the B operand,
 * one column per head. */
constexpr uint32_t kPrepMax = 16;
template <uint32_t KH>
__global__ void __launch_bounds__(128)
    att_mma_prep_sp(const __grid_constant__ tqc_att A, const int32_t *indptr,
                    const tq_cuda_chunk *chunks, const void *q, uint32_t max_chunks, uint32_t per,
                    uint32_t *out)
{
    tqc_grid_begin();                         /* as att_mma_prep */
    __shared__ float v[KH][128], sk[KH][128]; /* [head][part * 64 + k]: q'_p, s_p */
    __shared__ uint32_t msk[kPrepMax][4];
    constexpr uint32_t RR = KH / 4, NL = 4 * KH; /* head rows per warp; fragment lanes */
    const uint32_t h = blockIdx.y, seq = blockIdx.z, tid = threadIdx.x;
    const uint32_t lane = tid & 31, r = tid >> 5, g = lane >> 2, t4 = lane & 3;
    const int32_t cb = indptr[seq], ce = indptr[seq + 1];
    const int32_t c0 = cb + (int32_t)(blockIdx.x * per);
    if (c0 >= ce) return;
    const uint32_t n = (uint32_t)min(ce - c0, (int32_t)per);
    if (tid < 4 * n) {
        const tq_cuda_chunk ck = chunks[c0 + (int32_t)(tid >> 2)];
        const uint32_t T = ck.n_tokens, H2 = (T + 1) / 2 * 4;
        msk[tid >> 2][tid & 3] = ((const uint32_t *)((const uint8_t *)ck.k_section +
                                                     (size_t)h * sp_rec::ksize(T, H2)))[tid & 3];
    }
    float qv[RR][4]; /* warp r: query heads r + 4 rr, channels 4 lane + i */
    uint32_t ds[4];  /* D's sign bits of part positions 4 lane + i (part lane / 16) */
#pragma unroll
    for (int i = 0; i < 4; i++)
        ds[i] = __ldg(A.K.part[lane >> 4].dsign + ((4 * lane + i) & 63));
#pragma unroll
    for (uint32_t rr = 0; rr < RR; rr++) {
        const uint32_t hr = r + 4 * rr;
        const uint16_t *qp =
            (const uint16_t *)q + ((size_t)seq * A.n_q + h * A.group + hr) * A.head_dim;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const uint32_t j = 4 * lane + i;
            qv[rr][i] = 0.0f;
            if (hr < A.group && j < A.head_dim)
                qv[rr][i] =
                    A.q_dtype == TQ_DTYPE_BF16 ? tqc_bf16_to_f32(qp[j]) : tqc_f16_to_f32(qp[j]);
        }
    }
    const uint32_t p = r >> 1; /* this warp's sketch part */
    uint32_t sa[2][4][4];      /* [m-tile 2 (r & 1) + mi][k-step][A register] */
#pragma unroll
    for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int ks = 0; ks < 4; ks++)
#pragma unroll
            for (int ar = 0; ar < 4; ar++) { /* rows g (+ 8), columns 2 t4 (+ 8) */
                const uint32_t row = 16 * (2 * (r & 1) + mi) + g + 8 * (ar & 1);
                const uint32_t col = 16 * ks + 2 * t4 + 8 * (ar >> 1);
                const float2 x = __ldg((const float2 *)(A.K.part[p].S + row * 64 + col));
                sa[mi][ks][ar] = pack_half2(x.x, x.y);
            }
    __syncthreads();
    for (uint32_t ci = 0; ci < n; ci++) {
        const uint32_t m[4] = {msk[ci][0], msk[ci][1], msk[ci][2], msk[ci][3]};
        const bool ok = __popc(m[0]) + __popc(m[1]) + __popc(m[2]) + __popc(m[3]) == 64;
        /* warp r: heads r + 4 rr, their parts each rotated by 16 lanes */
#pragma unroll
        for (uint32_t rr = 0; rr < RR; rr++)
#pragma unroll
            for (int i = 0; i < 4; i++)
                v[r + 4 * rr][split_pos(m, ok, 4 * lane + i)] = qv[rr][i];
        __syncwarp();
#pragma unroll
        for (uint32_t rr = 0; rr < RR; rr++) {
            float x[4];
#pragma unroll
            for (int i = 0; i < 4; i++)
                x[i] = __uint_as_float(__float_as_uint(v[r + 4 * rr][4 * lane + i]) ^ ds[i]);
            warp_fwht<16>(x, lane);
#pragma unroll
            for (int i = 0; i < 4; i++)
                v[r + 4 * rr][4 * lane + i] = x[i] * 0.125f; /* 1 / sqrt(64) */
        }
        __syncthreads();
        float d[2][4] = {};
#pragma unroll
        for (int ks = 0; ks < 4; ks++) {
            uint32_t b[2] = {0u, 0u};
            if (g < KH)
#pragma unroll
                for (int hi = 0; hi < 2; hi++) {
                    const float2 y = *(const float2 *)&v[g][64 * p + 16 * ks + 2 * t4 + 8 * hi];
                    b[hi] = pack_half2(y.x, y.y);
                }
#pragma unroll
            for (int mi = 0; mi < 2; mi++)
                mma16816(d[mi], sa[mi][ks][0], sa[mi][ks][1], sa[mi][ks][2], sa[mi][ks][3], b[0],
                         b[1]);
        }
        if (2 * t4 < KH) /* columns 2 t4, 2 t4 + 1: the heads */
#pragma unroll
            for (int mi = 0; mi < 2; mi++)
#pragma unroll
                for (int cc = 0; cc < 4; cc++)
                    sk[2 * t4 + (cc & 1)][64 * p + 16 * (2 * (r & 1) + mi) + g + 8 * (cc >> 1)] =
                        d[mi][cc];
        __syncthreads();
        uint32_t *dst =
            out + (((size_t)seq * max_chunks + (c0 - cb + ci)) * A.n_kv + h) * (KH * 128);
#pragma unroll
        for (uint32_t i = 0; i < KH; i++) { /* word w: 16-byte column k of lane L */
            const uint32_t w = tid + 128 * i, k = w / (4 * NL), L = (w >> 2) % NL;
            const uint32_t sum = k >> 1, rr = 4 * (k & 1) + (w & 3);
            const uint32_t gl = L >> 2, tl = L & 3;
            const float *src = (sum & 1 ? sk[gl] : v[gl]) + 64 * (sum >> 1);
            const uint32_t ch = sum == 0 ? key_channel<4>(tl, rr, 0) : sign64_channel(tl, rr, 0);
            dst[w] = pack_half2(src[ch], src[ch + (sum == 0 ? 1 : 16)]);
        }
        __syncthreads();
    }
}

/* A tile's value rows and fp16 scales in a warp's value staging slot: the rows (128 bytes each,
 * 16-byte column c of row r at (c ^ (r & 1)) * 16: the eight lanes of a quarter warp, rows g
 * and g + 1 at columns 2 t4 (+1), then hit eight distinct columns), then the key scales, the
 * value scales and, for prod keys, the gammas, 64 bytes each (32 tokens). */
template <bool KQ, int VM, bool KS = false> struct vstage {
    static constexpr uint32_t rows = planes<VM>::w0 + planes<VM>::w1;
    /* kgm: the gammas of prod keys, or split keys' part 1 scales */
    static constexpr uint32_t ksc = rows * 128, vsc = ksc + 64, kgm = vsc + 64;
    static constexpr uint32_t runs = KQ || KS ? 3 : 2, bytes = ksc + runs * 64;
    static_assert(rows % 4 == 0, "a tile's rows are copied 4 rows (32 x 16 bytes) at a time");
};
/* Bytes of a warp's value staging slot. */
template <int KM, bool KQ, int VM> __host__ __device__ constexpr uint32_t vslot_bytes()
{
    if constexpr (splitp(KM))
        return kSpSlot;
    else
        return vstage<KQ, VM, splitk(KM)>::bytes;
}

/* Key rows of a tile (plane word rows, then the QJL sign rows) and the bytes of one staging slot:
 * the rows of a 32-token tile, 128 bytes each. */
template <int KM, bool KQ> struct kstage {
    static constexpr uint32_t krows = planes<KM>::w0 + planes<KM>::w1 + (KQ ? 4 : 0);
    /* split keys: then the chunk's query fragments, 1 KiB (att_mma_prep_split) */
    static constexpr uint32_t rows = krows + (splitk(KM) ? 2 * qheads(KM) : 0);
    static constexpr uint32_t bytes = splitp(KM) ? kSpSlot : rows * 128;
    static_assert(rows % 4 == 0, "a tile's rows are copied 4 rows (32 x 16 bytes) at a time");
    /* 16-byte column swizzle of row r: the lane quad position t4 that reads it, times two, so
     * that the eight lanes of a quarter warp (g = 0, 1 or 2, 3; t4 = 0..3) hit eight distinct
     * columns. Plane rows of 4-bit keys are t4 + 4 i, of 2- and 3-bit keys 2 t4 + b; the [1]
     * plane and the sign rows start at multiples of 4 and are t4 there. */
    __device__ static uint32_t swz(uint32_t r)
    {
        if (r >= krows) return 0; /* query fragments: written pre-swizzled */
        return 2 * ((KM != 4 && !splitk(KM) && r < planes<KM>::w0) ? (r >> 1) & 3 : r & 3);
    }
};

/* Where a warp's tile is. */
struct tile_pos {
    const uint8_t *krec, *vrec;
    uint32_t T, t0, H2;
    int32_t c; /* the chunk's index in the chunk table */
    bool fast; /* whole tile, 16-byte aligned: vector loads */
};

/* Moves p to the warp's next tile, entering chunk c + 1 .. c1 - 1 when the current one is done.
 * @return false when the block's chunks are exhausted. */
template <int KM, bool KQ, int VM>
__device__ __forceinline__ bool next_tile(tile_pos &p, int32_t &c, int32_t c1,
                                          const tq_cuda_chunk *chunks, const tq_cuda_chunk *sdesc,
                                          int32_t cs, uint32_t h, uint32_t first, uint32_t tstep,
                                          int32_t cstep)
{
    p.t0 += tstep;
    /* votes: the walk is the same for every lane, and a branch the compiler knows to be uniform
     * needs no reconvergence point (before which it would wait for the loads in flight) */
    while (__any_sync(0xffffffffu, p.t0 >= p.T)) {
        if (__any_sync(0xffffffffu, (c += cstep) >= c1)) return false;
        const tq_cuda_chunk ck = c - cs < (int32_t)kDesc ? sdesc[c - cs] : chunks[c];
        const uint32_t T = ck.n_tokens, H2 = (T + 1) / 2 * 4;
        const uint32_t krs = krec_layout<KM, KQ>::size(T, H2);
        const uint32_t vrs =
            splitp(KM) ? sp_rec::vsize(T, H2) : H2 + (planes<VM>::w0 + planes<VM>::w1) * 4 * T;
        p.krec = (const uint8_t *)ck.k_section + (size_t)h * krs;
        p.vrec = (const uint8_t *)ck.v_section + (size_t)h * vrs;
        p.T = T;
        p.H2 = H2;
        p.c = c;
        p.fast = __all_sync(0xffffffffu,
                            T % kTile == 0 && (((uintptr_t)p.krec | (uintptr_t)p.vrec) & 15) == 0);
        p.t0 = first;
    }
    return true;
}

__device__ __forceinline__ void half4_to_f32(const uint2 &v, float (&o)[4])
{
    o[0] = tqc_f16_to_f32((uint16_t)(v.x & 0xffff));
    o[1] = tqc_f16_to_f32((uint16_t)(v.x >> 16));
    o[2] = tqc_f16_to_f32((uint16_t)(v.y & 0xffff));
    o[3] = tqc_f16_to_f32((uint16_t)(v.y >> 16));
}

/* A record's runs of per-token fp16 values: k = 0 the key scales (of part 0), 1 the value
 * scales, 2 the gammas of prod keys or split keys' part 1 scales. */
template <int KM, bool KQ>
__device__ __forceinline__ const uint8_t *scale_run(const tile_pos &p, uint32_t k)
{
    const uint8_t *run0 = p.krec + (splitk(KM) ? 16 : 0);
    if (k == 0) return run0;
    if (k == 1) return p.vrec;
    return splitk(KM) ? run0 + p.H2 + 32 * p.T : p.krec + p.H2;
}
/* Scale runs a tile has. */
template <int KM, bool KQ> __host__ __device__ constexpr uint32_t scale_runs()
{
    return KQ || splitk(KM) ? 3 : 2;
}

/* Asks L2 for a tile's value words and scales ahead of their loads (its keys are staged a tile
 * ahead by cp.async): both 128-byte lines a value row of the tile (32 tokens of one word) can
 * touch, one row per lane, and the scale runs. Costs no registers. */
template <int KM, bool KQ, int VM>
__device__ __forceinline__ void prefetch_values(const tile_pos &p, uint32_t lane)
{
    constexpr uint32_t vrows = planes<VM>::w0 + planes<VM>::w1;
    if (!p.fast || splitp(KM)) /* a partial tile's rows could end past the section */
        return;
    const uint32_t row = lane >> 1, end = (lane & 1) * 124;
    const uint8_t *v = p.vrec + p.H2 + ((size_t)row * p.T + p.t0) * 4 + end;
    if (row < vrows) asm volatile("prefetch.global.L2 [%0];" ::"l"(v));
    if (lane < scale_runs<KM, KQ>())
        asm volatile(
            "prefetch.global.L2 [%0];" ::"l"(scale_run<KM, KQ>(p, lane) + (size_t)p.t0 * 2));
}

__device__ __forceinline__ void cp_async16(uint32_t dst, const void *src)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(src) : "memory");
}
/* n = 16, or 0 for a zero fill */
__device__ __forceinline__ void cp_async16z(uint32_t dst, const void *src, uint32_t n)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(n)
                 : "memory");
}
/* n = 4, or 0 for a zero fill */
__device__ __forceinline__ void cp_async4(uint32_t dst, const void *src, uint32_t n)
{
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(dst), "l"(src), "r"(n)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit(void)
{
    asm volatile("cp.async.commit_group;" ::: "memory");
}
/* Waits until at most one group (the newest) is in flight. */
__device__ __forceinline__ void cp_async_wait1(void)
{
    asm volatile("cp.async.wait_group 1;" ::: "memory");
}
__device__ __forceinline__ void cp_async_wait0(void)
{
    asm volatile("cp.async.wait_group 0;" ::: "memory");
}

/* Split keys: copies the chunk's query fragments (qheads(KM) * 256 bytes from qf) into the rows
 * after a key slot's key rows, as they are. */
template <int KM, bool KQ>
__device__ __forceinline__ void stage_qfrags(uint32_t slot, uint32_t lane, const uint8_t *qf)
{
    const uint32_t r0 = lane >> 3, c = lane & 7;
#pragma unroll
    for (uint32_t j = 0; j < qheads(KM) / 2; j++)
        cp_async16(slot + (kstage<KM, KQ>::krows + r0 + 4 * j) * 128 + c * 16,
                   qf + (r0 + 4 * j) * 128 + c * 16);
}

/* Copies a tile's key rows into a staging slot (shared address `slot`) without holding a
 * register: row r at r * 128, its 16-byte column c at (c ^ swz(r)) * 16. A whole aligned tile
 * goes by 16-byte copies (rows * 8 of them over the 32 lanes); a partial or unaligned one word
 * by word, the tokens past the chunk filled with zeros. The rows of the first plane lie back to
 * back (T words each), those after it `gap` bytes further (split keys: past part 0's rows and
 * part 1's scale). Split keys also take the chunk's query fragments from `qf` (stage_qfrags;
 * the first tile's come later when qf is null: att_mma_prep_split may still be writing them). */
template <int KM, bool KQ>
__device__ __forceinline__ void stage_keys(const tile_pos &p, uint32_t slot, uint32_t lane,
                                           const uint8_t *qf)
{
    using S = kstage<KM, KQ>;
    using L = krec_layout<KM, KQ>;
    constexpr uint32_t w0 = planes<KM>::w0;
    const uint32_t T = p.T;
    const uint8_t *k0 = p.krec + L::head(p.H2);
    const uint8_t *k1 = k0 + L::gap(T, p.H2) - (size_t)w0 * 4 * T; /* + r * 4T for r >= w0 */
    const uint32_t r0 = lane >> 3, c = lane & 7;
    if (p.fast) { /* copy j: row lane / 8 + 4 j, column lane % 8; 32-bit offsets */
        const uint32_t off = (r0 * T + p.t0) * 4 + c * 16;
#pragma unroll
        for (uint32_t j = 0; j < S::krows / 4; j++) {
            const uint32_t r = r0 + 4 * j;
            cp_async16(slot + r * 128 + ((c ^ S::swz(r)) << 4),
                       (4 * j < w0 ? k0 : k1) + off + j * 16 * T);
        }
    } else {
        const uint32_t tok = p.t0 + lane, n = tok < T ? 4u : 0u;
        const uint32_t col = ((lane >> 2) << 4) | ((lane & 3) << 2);
#pragma unroll
        for (uint32_t r = 0; r < S::krows; r++)
            cp_async4(slot + r * 128 + (col ^ (S::swz(r) << 4)),
                      (r < w0 ? k0 : k1) + ((size_t)r * T + (n ? tok : 0)) * 4, n);
    }
    if (splitk(KM) && qf) stage_qfrags<KM, KQ>(slot, lane, qf);
}

__device__ __forceinline__ uint4 lds128(uint32_t addr)
{
    uint4 v;
    asm volatile("ld.shared.v4.b32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "r"(addr));
    return v;
}

/* A lane's key words of the staged tile: tokens 4g .. 4g + 3 (column g) of its rows (the rows
 * its decode needs: key_channel); the sign words of prod keys in s. */
template <int KM, bool KQ>
__device__ __forceinline__ void read_keys(uint4 (&k)[4], uint4 &sw, uint32_t slot, uint32_t g,
                                          uint32_t t4)
{
    using S = kstage<KM, KQ>;
    const auto at = [&](uint32_t r) { return lds128(slot + r * 128 + ((g ^ S::swz(r)) << 4)); };
    if (KM == 4) {
#pragma unroll
        for (int i = 0; i < 4; i++)
            k[i] = at(t4 + 4 * i);
    } else if (splitk(KM)) { /* part 0's words t4 and t4 + 4, part 1's word t4 */
        k[0] = at(t4);
        k[1] = at(t4 + 4);
        k[2] = at(8 + t4);
        k[3] = make_uint4(0, 0, 0, 0);
    } else {
        k[0] = at(2 * t4);
        k[1] = at(2 * t4 + 1);
        k[2] = KM == 3 ? at(planes<KM>::w0 + t4) : make_uint4(0, 0, 0, 0);
        k[3] = make_uint4(0, 0, 0, 0);
    }
    sw = KQ ? at(planes<KM>::w0 + planes<KM>::w1 + t4) : make_uint4(0, 0, 0, 0);
}

/* Copies a tile's value rows and all its scales into the warp's value staging slot (vstage)
 * without holding a register; as stage_keys, by 16-byte copies for a whole aligned tile, else
 * word by word (scales by token pairs) with the tokens past the chunk filled with zeros. */
template <int KM, bool KQ, int VM>
__device__ __forceinline__ void stage_values(const tile_pos &p, uint32_t slot, uint32_t lane)
{
    using S = vstage<KQ, VM, splitk(KM)>;
    const uint32_t T = p.T;
    const uint8_t *v0 = p.vrec + p.H2; /* the rows lie back to back, T words each */
    if (p.fast) {
        const uint32_t r0 = lane >> 3, c = lane & 7;
        const uint32_t off = (r0 * T + p.t0) * 4 + c * 16;
#pragma unroll
        for (uint32_t j = 0; j < S::rows / 4; j++) {
            const uint32_t r = r0 + 4 * j;
            cp_async16(slot + r * 128 + ((c ^ (r & 1)) << 4), v0 + off + j * 16 * T);
        }
        /* scales: 4 x 16 bytes per run; lane 4 k + c copies run k's column c */
        const uint32_t k = lane >> 2, cc = lane & 3;
        if (k < S::runs) {
            const uint8_t *src = scale_run<KM, KQ>(p, k);
            cp_async16(slot + S::ksc + k * 64 + cc * 16, src + p.t0 * 2 + cc * 16);
        }
        return;
    }
    const uint32_t tok = p.t0 + lane, n = tok < T ? 4u : 0u;
    const uint32_t col = ((lane >> 2) << 4) | ((lane & 3) << 2);
#pragma unroll
    for (uint32_t r = 0; r < S::rows; r++)
        cp_async4(slot + r * 128 + (col ^ ((r & 1) << 4)), v0 + ((size_t)r * T + (n ? tok : 0)) * 4,
                  n);
    /* scales by token pairs (4 bytes, 4-byte aligned: a scale run is padded to whole pairs):
     * lanes 0..15 the key scales' pairs, 16..31 the value scales', then the gammas' */
    const uint32_t pr = lane & 15, t2 = p.t0 + 2 * pr;
    const uint32_t nb = t2 + 1 < T ? 4u : t2 < T ? 2u : 0u;
#pragma unroll
    for (uint32_t pass = 0; pass < (S::runs + 1) / 2; pass++) {
        const uint32_t k = pass * 2 + (lane >> 4);
        if (k < S::runs) {
            const uint8_t *src = scale_run<KM, KQ>(p, k);
            cp_async4(slot + S::ksc + k * 64 + pr * 4, src + (nb ? t2 : 0) * 2, nb);
        }
    }
}

__device__ __forceinline__ uint2 lds64(uint32_t addr)
{
    uint2 v;
    asm volatile("ld.shared.v2.b32 {%0,%1}, [%2];" : "=r"(v.x), "=r"(v.y) : "r"(addr));
    return v;
}

/* The four table entries bytes 0..3 of index word x select, into r[0..3]. */
__device__ __forceinline__ void lookup_bytes(uint32_t x, uint32_t lb, uint32_t *r)
{
    r[0] = lds(lut_addr<0>(x, lb));
    r[1] = lds(lut_addr<1>(x, lb));
    r[2] = lds(lut_addr<2>(x, lb));
    r[3] = lds(lut_addr<3>(x, lb));
}

/* Decodes the 16 fragment registers (32 coordinates, key_channel order) of one token's key
 * words w (KM = 4: four words of 8 codes; 3 and 2: two words of the [2] plane and, for 3, the
 * token's [1] word). */
template <int KM>
__device__ __forceinline__ void decode_key(const uint32_t (&w)[4], uint32_t lb, uint32_t lb1,
                                           uint32_t (&b)[16])
{
    if (splitk(KM)) { /* part 0: two words of 4-bit codes; part 1: one of 2-bit (table lb1) */
        lookup_bytes(w[0], lb, b);
        lookup_bytes(w[1], lb, b + 4);
        lookup_bytes(w[2] & 0x0F0F0F0Fu, lb1, b + 8);
        lookup_bytes((w[2] >> 4) & 0x0F0F0F0Fu, lb1, b + 12);
    } else if (KM == 4) {
#pragma unroll
        for (int i = 0; i < 4; i++)
            lookup_bytes(w[i], lb, b + 4 * i);
    } else {
#pragma unroll
        for (int hh = 0; hh < 2; hh++) {
            const uint32_t w2 = w[hh];
            uint32_t ia = w2 & 0x0F0F0F0Fu, ib = (w2 >> 4) & 0x0F0F0F0Fu;
            if (KM == 3) {
                const uint32_t hs = hh ? spread_nibbles<true>(w[2]) : spread_nibbles<false>(w[2]);
                ia |= (hs << 4) & 0x30303030u;
                ib |= (hs << 2) & 0x30303030u;
            }
            lookup_bytes(ia, lb, b + 8 * hh);
            lookup_bytes(ib, lb, b + 8 * hh + 4);
        }
    }
}

/* Split keys: the query fragments of chunk c (index in the chunk table). */
template <int KM, bool KS = splitk(KM)>
__device__ __forceinline__ const uint8_t *qfrag_row(const mma_args &A, int64_t qrow0, int32_t c)
{
    return KS ? A.qsplit + (qrow0 + (int64_t)c * A.n_kv) * (qheads(KM) * 256) : nullptr;
}

__device__ __forceinline__ uint32_t lane_of(uint32_t g, uint32_t t4)
{
    return 4 * g + t4;
}

__device__ __forceinline__ uint32_t pick(const uint4 &x, int i)
{
    return i == 0 ? x.x : i == 1 ? x.y : i == 2 ? x.z : x.w;
}

/* Per-lane query fragments (B operand of the score product, column = query head). */
template <bool KQ, bool G16> struct qfrag {
    uint32_t q[G16 ? 2 : 1][8][2];
    uint32_t s[KQ ? (G16 ? 2 : 1) : 1][KQ ? 8 : 1][2];
};

/* Online softmax of one head tile's scores, pv[e][i] (head column 2 t4 + e, token 4 g + i), into
 * their weights 2^(s - m): the running maximum and sum of each column move, and the value sums
 * are rescaled when a maximum moved. A partial tile's missing tokens weigh nothing. */
template <int HN>
__device__ __forceinline__ void softmax_tile(float (&pv)[2][4], const tile_pos &p_, uint32_t g,
                                             int hn, float (&o)[8][HN][4], float (&m_run)[HN][2],
                                             float (&l_run)[HN][2])
{
#pragma unroll
    for (int e = 0; e < 2; e++) {
        float mx = -INFINITY;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            if (!p_.fast) pv[e][i] = p_.t0 + 4 * g + i < p_.T ? pv[e][i] : -INFINITY;
            mx = fmaxf(mx, pv[e][i]);
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 8));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
        const float mn = fmaxf(m_run[hn][e], mx); /* finite: the tile has a token */
        const float alpha = ex2(m_run[hn][e] - mn);
        m_run[hn][e] = mn;
        float ls = 0.0f;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            pv[e][i] = ex2(pv[e][i] - mn);
            ls += pv[e][i];
        }
        l_run[hn][e] = l_run[hn][e] * alpha + ls;
        /* the running maximum settles early in a sequence: skip the rescale when no head of
         * the warp moved (a warp-uniform branch) */
        if (__any_sync(0xffffffffu, alpha != 1.0f))
#pragma unroll
            for (int mt = 0; mt < 8; mt++) {
                o[mt][hn][e] *= alpha;
                o[mt][hn][2 + e] *= alpha;
            }
    }
}
/* The value product's B fragments of k-step ms: the weights times the tokens' value scales, rows
 * g (tokens 4g + 2ms) and g + 8 (4g + 2ms + 1) of the score m-tile, transposed. */
__device__ __forceinline__ void pack_weights(const float (&pv)[2][4], const float (&vsc)[4], int ms,
                                             uint32_t (&pb)[2])
{
    pb[0] = movmatrix_t(pack_half2(pv[0][2 * ms] * vsc[2 * ms], pv[1][2 * ms] * vsc[2 * ms]));
    pb[1] = movmatrix_t(
        pack_half2(pv[0][2 * ms + 1] * vsc[2 * ms + 1], pv[1][2 * ms + 1] * vsc[2 * ms + 1]));
}
/* A lane's value word of token u (0..7) of its eight, held in two 16-byte reads. */
__device__ __forceinline__ uint32_t word8(const uint4 &lo, const uint4 &hi, int u)
{
    return u < 4 ? pick(lo, u) : pick(hi, u - 4);
}
/* Byte k of the 6-bit table indices of two tokens' 3-bit codes at coordinate 4k + I of their [2]
 * words wa, wb, whose high bits are bit I of nibble k of ha, hb (spread_nibbles). */
template <int I>
__device__ __forceinline__ uint32_t idx3(uint32_t wa, uint32_t wb, uint32_t ha, uint32_t hb)
{
    const uint32_t la = (wa >> (2 * I)) & 0x03030303u;
    const uint32_t lb = (I == 0 ? wb << 2 : wb >> (2 * I - 2)) & 0x0C0C0C0Cu;
    const uint32_t xa = (ha << (4 - I)) & 0x10101010u;
    const uint32_t xb = (hb << (5 - I)) & 0x20202020u;
    return la | lb | xa | xb;
}

/* The eight value fragments a byte-pair of 4-bit words gives: r[2B] from the even codes of byte
 * B of tokens a and b (wa, wb), r[2B + 1] from the odd ones. */
__device__ __forceinline__ void lookup4(uint32_t wa, uint32_t wb, uint32_t lb, uint32_t (&r)[8])
{
    uint32_t e[4], o[4];
    lookup_bytes((wa & 0x0F0F0F0Fu) | ((wb << 4) & 0xF0F0F0F0u), lb, e);
    lookup_bytes(((wa >> 4) & 0x0F0F0F0Fu) | (wb & 0xF0F0F0F0u), lb, o);
#pragma unroll
    for (int k = 0; k < 4; k++) {
        r[2 * k] = e[k];
        r[2 * k + 1] = o[k];
    }
}
/* The four value fragments of 3-bit index x (idx3): bytes 0, 1 into rows g, g + 8 of m-tile a0,
 * bytes 2, 3 into those of a1, as the k half s of the k-step. */
__device__ __forceinline__ void lookup3(uint32_t x, uint32_t lb, int s, uint32_t (&a0)[4],
                                        uint32_t (&a1)[4])
{
    uint32_t r[4];
    lookup_bytes(x, lb, r);
    a0[2 * s + 0] = r[0];
    a0[2 * s + 1] = r[1];
    a1[2 * s + 0] = r[2];
    a1[2 * s + 1] = r[3];
}

/* Scores, online softmax and value sums of one tile into the warp's state.
 * Score product per 16-token m-tile ms: rows g and g + 8 are tokens 4g + 2ms and 4g + 2ms + 1,
 * columns are query heads (2 t4, 2 t4 + 1; + 8 for the second head tile). */
template <int KM, bool KQ, int VM, bool G16>
__device__ __forceinline__ void
compute_tile(uint32_t kslot, uint32_t vslot, const tile_pos &p_, const tile_pos &pn, bool vn,
             const mma_args &A, uint32_t lbk, uint32_t lbk1, uint32_t lbv, int64_t qrow0,
             const qfrag<KQ, G16> &Q, float (&o)[8][G16 ? 2 : 1][4], float (&m_run)[G16 ? 2 : 1][2],
             float (&l_run)[G16 ? 2 : 1][2], uint32_t g, uint32_t t4)
{
    constexpr int HN = G16 ? 2 : 1;
    using VS = vstage<KQ, VM, splitk(KM)>;
    /* ---- scores: the keys leave the slot for registers, and the slot takes the next tile's
     * (every lane's reads are done: the syncwarp) */
    constexpr bool KS = splitk(KM), TWO = KQ || KS; /* a second score accumulator */
    uint4 kw[4], ks;
    read_keys<KM, KQ>(kw, ks, kslot, g, t4);
    /* split keys: this chunk's query fragments (B, k-step j: 2j, 2j+1); heads 4..7 are zeros */
    uint32_t qs[KS ? 16 : 1];
    if (KS) {
        const uint32_t ln = lane_of(g, t4);
#pragma unroll
        for (uint32_t k = 0; k < 4; k++) {
            const uint4 v = g < qheads(KM) ? lds128(kslot + kstage<KM, KQ>::krows * 128 + ln * 64 +
                                                    (((k + (ln >> 1)) & 3) << 4))
                                           : make_uint4(0, 0, 0, 0);
            qs[(4 * k) % (KS ? 16 : 1)] = v.x;
            qs[(4 * k + 1) % (KS ? 16 : 1)] = v.y;
            qs[(4 * k + 2) % (KS ? 16 : 1)] = v.z;
            qs[(4 * k + 3) % (KS ? 16 : 1)] = v.w;
        }
    }
    __syncwarp();
    if (vn) stage_keys<KM, KQ>(pn, kslot, lane_of(g, t4), qfrag_row<KM>(A, qrow0, pn.c));
    cp_async_commit();
    float sacc[2][HN][4], qacc[TWO ? 2 : 1][HN][4];
#pragma unroll
    for (int ms = 0; ms < 2; ms++) {
#pragma unroll
        for (int hn = 0; hn < HN; hn++)
#pragma unroll
            for (int cc = 0; cc < 4; cc++) {
                sacc[ms][hn][cc] = 0.0f;
                if (TWO) qacc[ms][hn][cc] = 0.0f;
            }
        uint32_t bt[2][16];
#pragma unroll
        for (int rh = 0; rh < 2; rh++) {
            const int nt = 2 * ms + rh;
            const uint32_t w[4] = {pick(kw[0], nt), pick(kw[1], nt), pick(kw[2], nt),
                                   pick(kw[3], nt)};
            decode_key<KM>(w, lbk, lbk1, bt[rh]);
        }
        if (KS) { /* k-steps 0..3: part 0, 4..7: part 1, each into its own sum */
#pragma unroll
            for (int j = 0; j < 8; j++)
                mma16816(j < 4 ? sacc[ms][0] : qacc[ms % (TWO ? 2 : 1)][0], bt[0][2 * j],
                         bt[1][2 * j], bt[0][2 * j + 1], bt[1][2 * j + 1],
                         qs[(2 * j) % (KS ? 16 : 1)], qs[(2 * j + 1) % (KS ? 16 : 1)]);
        } else {
            /* even and odd k-steps into two sums: two chains of four dependent products
             * instead of one of eight */
            float s2[HN][4];
#pragma unroll
            for (int hn = 0; hn < HN; hn++)
#pragma unroll
                for (int cc = 0; cc < 4; cc++)
                    s2[hn][cc] = 0.0f;
#pragma unroll
            for (int j = 0; j < 8; j++)
#pragma unroll
                for (int hn = 0; hn < HN; hn++)
                    mma16816((j & 1) ? s2[hn] : sacc[ms][hn], bt[0][2 * j], bt[1][2 * j],
                             bt[0][2 * j + 1], bt[1][2 * j + 1], Q.q[hn][j][0], Q.q[hn][j][1]);
#pragma unroll
            for (int hn = 0; hn < HN; hn++)
#pragma unroll
                for (int cc = 0; cc < 4; cc++)
                    sacc[ms][hn][cc] += s2[hn][cc];
        }
        if (KQ) {
#pragma unroll
            for (int rh = 0; rh < 2; rh++) {
                const uint32_t sw = pick(ks, 2 * ms + rh);
#pragma unroll
                for (int r = 0; r < 16; r++) /* bit r -> half 0, bit r + 16 -> half 1 */
                    bt[rh][r] = (~(sw << (15 - r)) & 0x80008000u) | 0x3C003C00u;
            }
#pragma unroll
            for (int j = 0; j < 8; j++)
#pragma unroll
                for (int hn = 0; hn < HN; hn++)
                    mma16816(qacc[ms][hn], bt[0][2 * j], bt[1][2 * j], bt[0][2 * j + 1],
                             bt[1][2 * j + 1], Q.s[hn][j][0], Q.s[hn][j][1]);
        }
    }

    /* ---- this tile's value slot has landed (only the next tile's keys may be in flight) */
    cp_async_wait1();
    __syncwarp();
    float ksc[4], kgm[4], vsc[4];
    half4_to_f32(lds64(vslot + VS::ksc + 8 * g), ksc);
    if (TWO) half4_to_f32(lds64(vslot + VS::kgm + 8 * g), kgm);
    half4_to_f32(lds64(vslot + VS::vsc + 8 * g), vsc);

    /* ---- online softmax per head column: a lane holds tokens 4g + i (i = 2 ms + rh) */
    uint32_t pb[2][HN][2]; /* value-product B fragments per k-step (= score m-tile) */
#pragma unroll
    for (int hn = 0; hn < HN; hn++) {
        float pv[2][4]; /* [e][i] */
#pragma unroll
        for (int e = 0; e < 2; e++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int ms = i >> 1, rh = i & 1;
                float sc = sacc[ms][hn][2 * rh + e] * (ksc[i] * A.cK);
                if (TWO) sc += qacc[ms % (TWO ? 2 : 1)][hn][2 * rh + e] * (kgm[i] * A.cQ);
                pv[e][i] = sc;
            }
        softmax_tile<HN>(pv, p_, g, hn, o, m_run, l_run);
#pragma unroll
        for (int ms = 0; ms < 2; ms++)
            pack_weights(pv, vsc, ms, pb[ms][hn]);
    }

    /* ---- values: the words leave the slot (rows g and g + 8, or the [1] plane's g / 2; tokens
     * 8 t4 .. + 7), and the slot takes the next tile's values and scales */
    uint4 vw[4];
    {
        const uint32_t r1 = VM == 4 ? g + 8 : planes<VM>::w0 + (g >> 1);
        vw[0] = lds128(vslot + g * 128 + (((2 * t4) ^ (g & 1)) << 4));
        vw[1] = lds128(vslot + g * 128 + (((2 * t4 + 1) ^ (g & 1)) << 4));
        vw[2] = lds128(vslot + r1 * 128 + (((2 * t4) ^ (r1 & 1)) << 4));
        vw[3] = lds128(vslot + r1 * 128 + (((2 * t4 + 1) ^ (r1 & 1)) << 4));
    }
    __syncwarp();
    if (vn) stage_values<KM, KQ, VM>(pn, vslot, lane_of(g, t4));
    cp_async_commit();

    /* k-step ks = score m-tile ks; logical token k (0..15) is physical 4 (k mod 8) + 2 ks +
     * (k >= 8), so lane t4's columns are tokens 8 t4 + u */
#pragma unroll
    for (int ks = 0; ks < 2; ks++) {
        uint32_t a[8][4];
#pragma unroll
        for (int s = 0; s < 2; s++) {
            const int ua = 2 * ks + s, ub = 4 + 2 * ks + s;
            if (VM == 4) {
#pragma unroll
                for (int rw = 0; rw < 2; rw++) { /* word g (row g), word g + 8 (row g + 8) */
                    const uint4 &lo = vw[2 * rw], &hi4 = vw[2 * rw + 1];
                    uint32_t r[8];
                    lookup4(word8(lo, hi4, ua), word8(lo, hi4, ub), lbv, r);
#pragma unroll
                    for (int k = 0; k < 8; k++)
                        a[k][2 * s + rw] = r[k];
                }
            } else {
                const uint32_t wa = word8(vw[0], vw[1], ua), wb = word8(vw[0], vw[1], ub);
                const uint32_t ha0 = word8(vw[2], vw[3], ua), hb0 = word8(vw[2], vw[3], ub);
                const uint32_t ha =
                    (g & 1) ? spread_nibbles<true>(ha0) : spread_nibbles<false>(ha0);
                const uint32_t hb =
                    (g & 1) ? spread_nibbles<true>(hb0) : spread_nibbles<false>(hb0);
                /* byte k of index i: channel 16 g + 4 k + i of tokens a, b; m-tile 2i + (k >> 1),
                 * row half k & 1 */
                lookup3(idx3<0>(wa, wb, ha, hb), lbv, s, a[0], a[1]);
                lookup3(idx3<1>(wa, wb, ha, hb), lbv, s, a[2], a[3]);
                lookup3(idx3<2>(wa, wb, ha, hb), lbv, s, a[4], a[5]);
                lookup3(idx3<3>(wa, wb, ha, hb), lbv, s, a[6], a[7]);
            }
        }
#pragma unroll
        for (int mt = 0; mt < 8; mt++)
#pragma unroll
            for (int hn = 0; hn < HN; hn++)
                mma16816(o[mt][hn], a[mt][0], a[mt][1], a[mt][2], a[mt][3], pb[ks][hn][0],
                         pb[ks][hn][1]);
    }
}

/* ---- tq3.5-prod: split prod keys and split values (KP) ------------------------------------- */

/* Swizzle of KP key row r (16-byte column g ^ swz): part 0's plane rows t4 and t4 + 4, and the
 * sign-like rows 8 + 2k + t4 / 2, meet eight distinct columns per quarter warp; runs none. */
__device__ __forceinline__ uint32_t spk_swz(uint32_t r)
{
    return r < kSpRows ? 2 * (r & 3) : 0;
}

/* stage_keys for KP: the tile's 14 key rows and its four scale runs into the key slot. */
__device__ __forceinline__ void stage_keys_sp(const tile_pos &p, uint32_t slot, uint32_t lane)
{
    const uint32_t T = p.T, H2 = p.H2;
    const uint8_t *k0 = p.krec + sp_rec::k0(H2);
    const uint8_t *k1 = p.krec + (sp_rec::k1(T, H2) - 40 * T); /* row r at r * 4T */
    const uint32_t r0 = lane >> 3, c = lane & 7;
    if (p.fast) { /* copy j: row lane / 8 + 4 j, column lane % 8 (selects, no branch) */
        const uint32_t off = (r0 * T + p.t0) * 4 + c * 16;
        const uint8_t *run = p.krec + sp_rec::krun(2 * (r0 & 1) + (c >> 2), T, H2) + p.t0 * 2 +
                             (c & 3) * 16; /* rows 14, 15 (j = 3, r0 = 2, 3) */
#pragma unroll
        for (uint32_t j = 0; j < 4; j++) {
            const uint32_t r = r0 + 4 * j;
            const bool words = j < 3 || r0 < 2;
            cp_async16(slot + r * 128 + ((c ^ (words ? spk_swz(r) : 0)) << 4),
                       words ? (r < 10 ? k0 : k1) + off + j * 16 * T : run);
        }
        return;
    }
    const uint32_t tok = p.t0 + lane, n = tok < T ? 4u : 0u;
    const uint32_t col = ((lane >> 2) << 4) | ((lane & 3) << 2);
#pragma unroll
    for (uint32_t r = 0; r < kSpRows; r++)
        cp_async4(slot + r * 128 + (col ^ (spk_swz(r) << 4)),
                  (r < 10 ? k0 : k1) + ((size_t)r * T + (n ? tok : 0)) * 4, n);
    const uint32_t pr = lane & 15, t2 = p.t0 + 2 * pr;
    const uint32_t nb = t2 + 1 < T ? 4u : t2 < T ? 2u : 0u;
#pragma unroll
    for (uint32_t pass = 0; pass < 2; pass++) { /* runs by token pairs, as stage_values */
        const uint32_t k = 2 * pass + (lane >> 4);
        cp_async4(slot + (kSpRows + (k >> 1)) * 128 + (k & 1) * 64 + pr * 4,
                  p.krec + sp_rec::krun(k, T, H2) + (nb ? t2 : 0) * 2, nb);
    }
}

/* stage_values for KP: the tile's 14 value rows, its two scale runs and the record's mask. */
__device__ __forceinline__ void stage_values_sp(const tile_pos &p, uint32_t slot, uint32_t lane)
{
    const uint32_t T = p.T, H2 = p.H2;
    const uint8_t *v0 = p.vrec + sp_rec::v0(H2);
    const uint8_t *v1 = p.vrec + (sp_rec::v1(T, H2) - 32 * T); /* row r at r * 4T */
    const uint32_t r0 = lane >> 3, c = lane & 7;
    if (p.fast) { /* as stage_keys_sp; row 15 takes the mask (column 0; the others zeros) */
        const uint32_t off = (r0 * T + p.t0) * 4 + c * 16;
        const uint8_t *run =
            r0 == 2 ? p.vrec + sp_rec::vrun(c >> 2, T, H2) + p.t0 * 2 + (c & 3) * 16 : p.vrec;
#pragma unroll
        for (uint32_t j = 0; j < 3; j++) {
            const uint32_t r = r0 + 4 * j;
            cp_async16(slot + r * 128 + ((c ^ (r & 1)) << 4), (r < 8 ? v0 : v1) + off + j * 16 * T);
        }
        const uint32_t r = r0 + 12;
        cp_async16z(slot + r * 128 + ((c ^ (r0 < 2 ? r & 1 : 0)) << 4),
                    r0 < 2 ? v1 + off + 48 * T : run, r0 != 3 || c == 0 ? 16 : 0);
        return;
    }
    const uint32_t tok = p.t0 + lane, n = tok < T ? 4u : 0u;
    const uint32_t col = ((lane >> 2) << 4) | ((lane & 3) << 2);
#pragma unroll
    for (uint32_t r = 0; r < kSpRows; r++)
        cp_async4(slot + r * 128 + (col ^ ((r & 1) << 4)),
                  (r < 8 ? v0 : v1) + ((size_t)r * T + (n ? tok : 0)) * 4, n);
    const uint32_t pr = lane & 15, t2 = p.t0 + 2 * pr, k = lane >> 4;
    const uint32_t nb = t2 + 1 < T ? 4u : t2 < T ? 2u : 0u;
    cp_async4(slot + kSpRows * 128 + k * 64 + pr * 4,
              p.vrec + sp_rec::vrun(k, T, H2) + (nb ? t2 : 0) * 2, nb);
    if (lane < 4) cp_async4(slot + (kSpRows + 1) * 128 + lane * 4, p.vrec + lane * 4, 4);
}

/* KP query fragments of chunk c: 16-byte column k (0..7) of lane L (< NL = 4 sp_heads) at
 * (NL k + L) * 16 (att_mma_prep_sp), so that a warp's read of one column is contiguous. */
template <int KM>
__device__ __forceinline__ const uint4 *qsp_row(const mma_args &A, int64_t qrow0, int32_t c)
{
    return (const uint4 *)(A.qsplit + (qrow0 + (int64_t)c * A.n_kv) * sp_qbytes(KM));
}
/* Sum k's eight B registers (k-step j: 2j, 2j + 1) of lane `lane`; heads past sp_heads zeros. */
template <int KM>
__device__ __forceinline__ void load_qsum(uint32_t (&q)[8], const uint4 *row, int k, uint32_t lane)
{
    constexpr uint32_t NL = 4 * sp_heads(KM);
#pragma unroll
    for (int c = 0; c < 2; c++) {
        const uint4 w = lane < NL ? __ldg(row + NL * (2 * k + c) + lane) : make_uint4(0, 0, 0, 0);
        q[4 * c] = w.x;
        q[4 * c + 1] = w.y;
        q[4 * c + 2] = w.z;
        q[4 * c + 3] = w.w;
    }
}
/* Asks L1 for chunk c's query fragments (the warp's next chunk) ahead of their reads. */
template <int KM> __device__ __forceinline__ void prefetch_qsp(const uint4 *row, uint32_t lane)
{
    if (lane < 4 * sp_heads(KM)) asm volatile("prefetch.global.L1 [%0];" ::"l"(row + 8 * lane));
}

/* The +-1 fragments of a KP sign-like word (bit set: +1), lane quad position t4's half of it
 * (sign64_channel): register r takes bits 8 (t4 & 1) + r and + 16. */
__device__ __forceinline__ void sign_frags(uint32_t w, uint32_t t4, uint32_t (&b)[8])
{
    const uint32_t sw = (t4 & 1) ? w >> 8 : w;
#pragma unroll
    for (int r = 0; r < 8; r++)
        b[r] = (~(sw << (15 - r)) & 0x80008000u) | 0x3C003C00u;
}

/* compute_tile for KP. Scores: four products per m-tile, each four k-steps into its own sum,
 * weighed per token by part 0's scale (cK), its gamma (cQ), part 1's scale (cK1: cK times the
 * 1-bit centroid) and its gamma. Values: m-tiles 0..3 part 0 (B: weights times part 0's
 * scales), 4..7 part 1. With `last` (the warp leaves the chunk after this tile) the record's
 * mask comes back in vm. */
template <int KM>
__device__ __forceinline__ void
compute_tile_sp(uint32_t kslot, uint32_t vslot, const tile_pos &p_, const tile_pos &pn, bool vn,
                bool last, const mma_args &A, uint32_t lbk, uint32_t lbv, float cK1,
                const uint4 *qrow, float (&o)[8][1][4], float (&m_run)[1][2], float (&l_run)[1][2],
                uint4 &vm, uint32_t g, uint32_t t4)
{
    const uint32_t lane = lane_of(g, t4);
    /* the words of tokens 4g + 2ms, + 1 of key row r (the slot is refilled after the scores:
     * reading a half per m-tile keeps the registers within bounds) */
    const auto at = [&](uint32_t r, int ms) {
        return lds64(kslot + r * 128 + ((g ^ spk_swz(r)) << 4) + 8 * ms);
    };
    const float cm[4] = {A.cK, A.cQ, cK1, A.cQ};
    float pv[2][4]; /* scores [e][i] */
#pragma unroll
    for (int ms = 0; ms < 2; ms++) {
        const uint2 kw0 = at(t4, ms), kw1 = at(t4 + 4, ms);
        uint2 kws[3]; /* part 0's signs, part 1's codes, part 1's signs */
#pragma unroll
        for (uint32_t k = 0; k < 3; k++)
            kws[k] = at(8 + 2 * k + (t4 >> 1), ms);
        float acc[4][4];
#pragma unroll
        for (int k = 0; k < 4; k++)
#pragma unroll
            for (int cc = 0; cc < 4; cc++)
                acc[k][cc] = 0.0f;
        uint32_t bt[2][8];
#pragma unroll
        for (int rh = 0; rh < 2; rh++) {
            lookup_bytes(rh ? kw0.y : kw0.x, lbk, bt[rh]);
            lookup_bytes(rh ? kw1.y : kw1.x, lbk, bt[rh] + 4);
        }
#pragma unroll
        for (int k = 0; k < 4; k++) {
            uint32_t qk[8]; /* from L1: holding all four sums would cost 32 registers */
            load_qsum<KM>(qk, qrow, k, lane);
            if (k > 0)
#pragma unroll
                for (int rh = 0; rh < 2; rh++)
                    sign_frags(rh ? kws[k - 1].y : kws[k - 1].x, t4, bt[rh]);
#pragma unroll
            for (int j = 0; j < 4; j++)
                mma16816(acc[k], bt[0][2 * j], bt[1][2 * j], bt[0][2 * j + 1], bt[1][2 * j + 1],
                         qk[2 * j], qk[2 * j + 1]);
        }
        /* row half rh: token i = 2 ms + rh; the runs' fp16 pair of tokens 4g + 2ms, + 1 */
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const uint32_t pr =
                lds(kslot - kSmemBase + (kSpRows + (k >> 1)) * 128 + (k & 1) * 64 + 8 * g + 4 * ms);
            const float lo = tqc_f16_to_f32((uint16_t)(pr & 0xffff)) * cm[k];
            const float hi = tqc_f16_to_f32((uint16_t)(pr >> 16)) * cm[k];
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const float a0 = acc[k][e] * lo, a1 = acc[k][2 + e] * hi;
                pv[e][2 * ms] = k ? pv[e][2 * ms] + a0 : a0;
                pv[e][2 * ms + 1] = k ? pv[e][2 * ms + 1] + a1 : a1;
            }
        }
    }
    __syncwarp();
    if (vn) stage_keys_sp(pn, kslot, lane);
    cp_async_commit();

    /* ---- this tile's value slot has landed */
    cp_async_wait1();
    __syncwarp();
    float vs0[4], vs1[4];
    half4_to_f32(lds64(vslot + kSpRows * 128 + 8 * g), vs0);
    half4_to_f32(lds64(vslot + kSpRows * 128 + 64 + 8 * g), vs1);
    softmax_tile<1>(pv, p_, g, 0, o, m_run, l_run);
    uint32_t pb0[2][2], pb1[2][2];
#pragma unroll
    for (int ms = 0; ms < 2; ms++) {
        pack_weights(pv, vs0, ms, pb0[ms]);
        pack_weights(pv, vs1, ms, pb1[ms]);
    }
    /* value words: part 0's row g, part 1's [2] row 8 + g / 2 and [1] row 12 + g / 4, tokens
     * 8 t4 .. + 7 */
    uint4 vw[6];
    {
        const uint32_t rows[3] = {g, 8 + (g >> 1), 12 + (g >> 2)};
#pragma unroll
        for (int k = 0; k < 3; k++) {
            vw[2 * k] = lds128(vslot + rows[k] * 128 + (((2 * t4) ^ (rows[k] & 1)) << 4));
            vw[2 * k + 1] = lds128(vslot + rows[k] * 128 + (((2 * t4 + 1) ^ (rows[k] & 1)) << 4));
        }
    }
    if (last) vm = lds128(vslot + (kSpRows + 1) * 128);
    __syncwarp();
    if (vn) stage_values_sp(pn, vslot, lane);
    cp_async_commit();

    /* per k-step, part 0's m-tiles then part 1's (16 fragment registers at a time) */
    const uint32_t s4 = 4 * (g & 1), s2 = 2 * (g & 1); /* part 1: this lane's half of the word */
#pragma unroll
    for (int ks = 0; ks < 2; ks++) {
        uint32_t a[4][4];
#pragma unroll
        for (int s = 0; s < 2; s++) {
            uint32_t r[8];
            lookup4(word8(vw[0], vw[1], 2 * ks + s), word8(vw[0], vw[1], 4 + 2 * ks + s), lbk, r);
#pragma unroll
            for (int k = 0; k < 8; k++)
                a[k >> 1][2 * s + (k & 1)] = r[k];
        }
#pragma unroll
        for (int mt = 0; mt < 4; mt++)
            mma16816(o[mt][0], a[mt][0], a[mt][1], a[mt][2], a[mt][3], pb0[ks][0], pb0[ks][1]);
#pragma unroll
        for (int s = 0; s < 2; s++) {
            const int ua = 2 * ks + s, ub = 4 + 2 * ks + s;
            const uint32_t wa = word8(vw[2], vw[3], ua) >> s4, wb = word8(vw[2], vw[3], ub) >> s4;
            const uint32_t ha0 = word8(vw[4], vw[5], ua), hb0 = word8(vw[4], vw[5], ub);
            const uint32_t ha =
                ((g & 2) ? spread_nibbles<true>(ha0) : spread_nibbles<false>(ha0)) >> s2;
            const uint32_t hb =
                ((g & 2) ? spread_nibbles<true>(hb0) : spread_nibbles<false>(hb0)) >> s2;
            lookup3(idx3<0>(wa, wb, ha, hb), lbv, s, a[0], a[1]);
            lookup3(idx3<1>(wa, wb, ha, hb), lbv, s, a[2], a[3]);
        }
#pragma unroll
        for (int mt = 0; mt < 4; mt++)
            mma16816(o[4 + mt][0], a[mt][0], a[mt][1], a[mt][2], a[mt][3], pb1[ks][0], pb1[ks][1]);
    }
}

/* KP's value sums in the original domain, warp w, head hd, channel j, at window byte
 * sp_base(w, hd) | (sp_off(j) ^ sp_flip(hd)). kSplitProd: the second halves of table rows
 * 64..191, which the tables leave free (part 0's value table is the keys' table, part 1's has 64
 * entries); kSplitProd8: 512-byte rows from kSp8Acc. The flip moves the heads a lane scatters
 * with the same channel (2 t4, 2 t4 + 1 of lanes t4 = 0..3) to different banks. */
template <int KM> __host__ __device__ constexpr uint32_t sp_base(uint32_t w, uint32_t hd)
{
    return KM == kSplitProd8 ? kSmemBase + kSp8Acc + (8 * w + hd) * 512
                             : kSmemBase + (64 + 16 * w + 4 * hd) * 256; /* 1 KiB aligned */
}
template <int KM> __host__ __device__ constexpr uint32_t sp_off(uint32_t j)
{
    return KM == kSplitProd8 ? j << 2 : ((j >> 5) << 8) | 128 | ((j & 31) << 2);
}
template <int KM> __host__ __device__ constexpr uint32_t sp_flip(uint32_t hd)
{
    return KM == kSplitProd8 ? ((hd >> 1) & 3) << 5 : (hd & 2) << 5;
}
template <int KM> __device__ __forceinline__ uint32_t sp_acc(uint32_t w, uint32_t hd, uint32_t j)
{
    return sp_base<KM>(w, hd) | (sp_off<KM>(j) ^ sp_flip<KM>(hd));
}
/* Warp w's channel map of flush_sp, 128 u16 (sp_off of the channel at each part position): the
 * second halves of table rows kSpInv + 2w and + 1. */
__device__ __forceinline__ uint32_t sp_inv(uint32_t w, uint32_t pos)
{
    return kSmemBase + (kSpInv + 2 * w + (pos >> 6)) * 256 + 128 + (pos & 63) * 2;
}

__device__ __forceinline__ uint32_t lds_at(uint32_t addr)
{
    uint32_t v;
    asm volatile("ld.shared.b32 %0, [%1];" : "=r"(v) : "r"(addr));
    return v;
}
/* acc = acc * f + y at window address a, when `on` (predicated: no branch). */
__device__ __forceinline__ void acc_update(uint32_t a, float y, float f, bool on)
{
    asm volatile("{\n\t.reg .pred p;\n\t.reg .f32 t;\n\tsetp.ne.b32 p, %3, 0;\n\t"
                 "@p ld.shared.f32 t, [%0];\n\t@p fma.rn.f32 t, t, %2, %1;\n\t"
                 "@p st.shared.f32 [%0], t;\n\t}" ::"r"(a),
                 "f"(y), "f"(f), "r"((uint32_t)on)
                 : "memory");
}

/* KP: the warp leaves a chunk. Its value sums o (rotated, both parts, this chunk's split) go
 * back to the original domain, acc = acc * 2^(m_last - m) + D_p . H z_p / 64 at the channels the
 * chunk's value mask vm gives, and o starts again from zero. dmask: bit 2 mt + h set when D_p
 * is -1 at the lane's channel vsp_channel(g, mt, h). */
template <int KM>
__device__ __forceinline__ void flush_sp(float (&o)[8][1][4], const float (&m_run)[1][2],
                                         float (&m_last)[2], const uint4 &vm, uint32_t dmask,
                                         uint32_t warp, uint32_t lane, uint32_t G)
{
    const uint32_t g = lane >> 2, t4 = lane & 3;
    /* the Walsh-Hadamard transform of both parts at once: channel bits h (cc >> 1), mt & 1 and
     * mt & 2 are the registers', g's three bits the lanes' (distances 4, 8, 16) */
#pragma unroll
    for (int mt = 0; mt < 8; mt++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
            const float x = o[mt][0][e], y = o[mt][0][2 + e];
            o[mt][0][e] = x + y;
            o[mt][0][2 + e] = x - y;
        }
#pragma unroll
    for (int d = 1; d <= 2; d <<= 1)
#pragma unroll
        for (int mt = 0; mt < 8; mt++)
            if (!(mt & d))
#pragma unroll
                for (int cc = 0; cc < 4; cc++) {
                    const float x = o[mt][0][cc], y = o[mt + d][0][cc];
                    o[mt][0][cc] = x + y;
                    o[mt + d][0][cc] = x - y;
                }
#pragma unroll
    for (uint32_t m = 4; m <= 16; m <<= 1) {
        const float sg = (lane & m) ? -1.0f : 1.0f; /* upper lane: other - own */
#pragma unroll
        for (int mt = 0; mt < 8; mt++)
#pragma unroll
            for (int cc = 0; cc < 4; cc++)
                o[mt][0][cc] =
                    fmaf(o[mt][0][cc], sg, __shfl_xor_sync(0xffffffffu, o[mt][0][cc], m));
    }
    /* the chunk's channel map: at each part position, the address offset of its channel */
    const uint32_t m[4] = {vm.x, vm.y, vm.z, vm.w};
    const bool ok = __popc(vm.x) + __popc(vm.y) + __popc(vm.z) + __popc(vm.w) == 64;
#pragma unroll
    for (uint32_t i = 0; i < 4; i++) {
        const uint32_t j = 4 * lane + i;
        asm volatile("st.shared.u16 [%0], %1;" ::"r"(sp_inv(warp, split_pos(m, ok, j))),
                     "h"((uint16_t)sp_off<KM>(j))
                     : "memory");
    }
    __syncwarp();
    /* part 0: positions 8g .. 8g + 7 (register b = 2 mt + h: word b / 2, half b & 1); part 1:
     * 16 (g / 2) + 4 q + 2 (g & 1) + (mm >> 1) with q = 2 (mm & 1) + h: word q, half mm >> 1 */
    const uint4 i0 = lds128(sp_inv(warp, 8 * g));
    uint32_t i1[4];
#pragma unroll
    for (uint32_t q = 0; q < 4; q++)
        i1[q] = lds_at(sp_inv(warp, 64 + 16 * (g >> 1) + 4 * q + 2 * (g & 1)));
    __syncwarp();
    float f[2];
#pragma unroll
    for (int e = 0; e < 2; e++) {
        f[e] = m_last[e] == -INFINITY ? 0.0f : ex2(m_last[e] - m_run[0][e]);
        m_last[e] = m_run[0][e];
    }
    const uint32_t base[2] = {sp_base<KM>(warp, 2 * t4), sp_base<KM>(warp, 2 * t4 + 1)};
    const uint32_t flip = sp_flip<KM>(2 * t4);
    const bool on[2] = {2 * t4 < G, 2 * t4 + 1 < G};
#pragma unroll
    for (int mt = 0; mt < 8; mt++)
#pragma unroll
        for (int hh = 0; hh < 2; hh++) {
            const uint32_t b = 2 * mt + hh;
            const uint32_t w = mt < 4 ? pick(i0, b >> 1) : i1[2 * ((mt - 4) & 1) + hh];
            const uint32_t half = mt < 4 ? b & 1 : (mt - 4) >> 1;
            const uint32_t off = (half ? w >> 16 : w & 0xffff) ^ flip;
            const float sg = __uint_as_float(0x3C800000u | ((dmask << (31 - b)) & 0x80000000u));
#pragma unroll
            for (int e = 0; e < 2; e++) {
                acc_update(base[e] | off, o[mt][0][2 * hh + e] * sg, f[e], on[e]); /* +-1/64 */
                o[mt][0][2 * hh + e] = 0.0f;
            }
        }
}

/* A table's entry e (a byte of two 4-bit codes, or a 6-bit index of two 2-bit codes and their
 * high bits) holds half2(centroid of the first code, centroid of the second), 32 times. A thread
 * computes an entry once and stores its copies 16 bytes at a time, starting at a lane-dependent
 * quarter so that a warp's stores spread over the banks. */
template <int M> __device__ __forceinline__ uint32_t lut_entry(const float *cent, uint32_t e)
{
    uint32_t lo, hi;
    if (M == 4) {
        lo = e & 15;
        hi = e >> 4;
    } else {
        lo = (e & 3) | (M == 3 ? ((e >> 4) & 1) << 2 : 0);
        hi = ((e >> 2) & 3) | (M == 3 ? ((e >> 5) & 1) << 2 : 0);
    }
    return e < lut_size<M>::entries ? pack_half2(__ldg(cent + lo), __ldg(cent + hi)) : 0u;
}
/* Stores entry e's 32 copies (v from lut_entry; e = tid: a table has at most kThreads entries). */
template <int M>
__device__ __forceinline__ void lut_store(uint32_t *lut, uint32_t v, uint32_t e, uint32_t half)
{
    if (e >= lut_size<M>::entries) return;
    const uint4 v4 = make_uint4(v, v, v, v);
#pragma unroll
    for (uint32_t k = 0; k < 8; k++)
        *(uint4 *)(lut + e * 64 + half * 32 + ((k + e) & 7) * 4) = v4;
}

/* ---- The split kernel ---------------------------------------------------------------------- */

/* Shared memory: the tables (key and value tables interleaved by entry, lut_size); after the
 * loop the same bytes hold the merge of the warps. */
template <int KM, bool KQ, int VM, bool G16> struct att_kernel {
    static constexpr uint32_t GH = G16 ? 16 : 8; /* head columns */
    /* merge scratch: per warp O[GH][kOs] and (m, l)[GH] */
    static constexpr uint32_t merge_bytes = kWarps * (kOs * GH + 2 * GH) * 4;
    /* the query rotation (MSE keys: done by each block) after both */
    __host__ __device__ static uint32_t qoff(bool share)
    {
        /* split keys: part 1's table (16 entries) at 64 KiB, after the others */
        constexpr uint32_t big =
            lut_size<KM>::bytes > lut_size<VM>::bytes ? lut_size<KM>::bytes : lut_size<VM>::bytes;
        const uint32_t lut = splitk(KM) ? kK1Table + 16 * 256 : big;
        (void)share;
        return lut > merge_bytes ? lut : merge_bytes;
    }
    __host__ __device__ static uint32_t doff(bool share)
    {
        return qoff(share) + (KQ || splitk(KM) ? 0 : GH * 128 * 4);
    }
    /* then each warp's key staging slot (kstage) and value staging slot (vstage) */
    __host__ __device__ static uint32_t soff(bool share)
    {
        return (doff(share) + kDesc * (uint32_t)sizeof(tq_cuda_chunk) + 15) & ~15u;
    }
    __host__ __device__ static uint32_t voff(bool share)
    {
        return soff(share) + kWarps * kstage<KM, KQ>::bytes;
    }
    __host__ __device__ static uint32_t smem(bool share)
    {
        /* kSplitProd8: then its sums in the original domain (kSp8Acc) */
        const uint32_t end = voff(share) + kWarps * vslot_bytes<KM, KQ, VM>();
        return KM == kSplitProd8 ? kSp8Acc + kWarps * 8 * 512 : end;
    }
    __host__ __device__ static bool smem_ok(bool share)
    {
        return KM != kSplitProd8 || voff(share) + kWarps * vslot_bytes<KM, KQ, VM>() <= kSp8Acc;
    }
};

/* Blocks of a variant resident per multiprocessor: kSplit8 and kSplitProd8 take the shared memory
 * of two, so their registers need not fit two either. */
__host__ __device__ constexpr int att_min_blocks(int KM)
{
    return KM == kSplit8 || KM == kSplitProd8 ? 1 : 2;
}

template <int KM, bool KQ, int VM, bool G16>
__global__ void __launch_bounds__(kThreads, att_min_blocks(KM))
    att_mma_kernel(const __grid_constant__ mma_args A, const int32_t *chunk_indptr,
                   const tq_cuda_chunk *chunks, const __half *wq, float *ws_o, float *ws_ml)
{
    using K_ = att_kernel<KM, KQ, VM, G16>;
    constexpr int HN = G16 ? 2 : 1;
    extern __shared__ __align__(16) char sm[];
    const uint32_t tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const uint32_t g = lane >> 2, t4 = lane & 3;
    const uint32_t sp = blockIdx.x, h = blockIdx.y, seq = blockIdx.z;

    if ((uint32_t)__cvta_generic_to_shared(sm) != kSmemBase)
        __trap(); /* the tables' addresses assume it (tqkv__att_mma_eligible checks the device) */
    static_assert(lut_size<4>::entries <= kThreads, "one table entry per thread");
    constexpr bool KS = splitk(KM), KP = splitp(KM);
    constexpr int KT = KS || KP ? 4 : KM; /* split keys: part 0's table is a 4-bit one */
    constexpr int VT = KP ? 3 : VM;       /* KP: the second halves hold the values' part 1 table */
    /* MSE keys: the kernel is a programmatic dependent of whatever precedes it in the stream
     * (launch), which may write the queries, the chunks or their table: it fills its lookup
     * tables (constant codebooks no kernel of the stream writes) while that kernel ends and
     * waits for it before its first load. Prod and split keys depend on their preparation
     * kernel instead, which lets them start only after its own wait for everything before it
     * (tqc_grid_begin), and fill their tables below, over their first loads' latency. */
    constexpr bool PDL_SELF = !(KQ || KS || KP);
    if constexpr (PDL_SELF) {
        lut_store<KT>((uint32_t *)sm, lut_entry<KT>(A.kcent, tid), tid, 0);
        if (!A.share_lut) lut_store<VT>((uint32_t *)sm, lut_entry<VT>(A.vcent, tid), tid, 1);
        tqc_grid_wait();
    }
    /* Every global load of the prologue that depends on nothing is issued first, so that the
     * block waits on one memory latency (then one more for the chunk descriptors, which need
     * the sequence's chunk range) instead of a chain of them. */
    const int32_t ip0 = chunk_indptr[seq], ip1 = chunk_indptr[seq + 1];
    const uint32_t kent = PDL_SELF ? 0u : lut_entry<KT>(A.kcent, tid);
    const uint32_t vent =
        PDL_SELF || A.share_lut ? 0u : lut_entry<VT>(KP ? A.v1cent : A.vcent, tid);
    const uint32_t k1ent = KS ? lut_entry<2>(A.k1cent, tid) : 0u; /* split keys' part 1 */
    /* the fragments of chunk c: row qrow0 + c * n_kv of A.qsplit (1 KiB rows) */
    const int64_t qrow0 = ((int64_t)seq * A.max_chunks - ip0) * A.n_kv + h;
    /* MSE keys: the block rotates its heads' queries itself, q' = H (D . q) / sqrt(128), a warp
     * per head row (prod keys take q' and its sketch S q' from att_mma_prep) */
    constexpr int QR = KQ || KS ? 0 : (G16 ? 2 : 1); /* head rows of this warp */
    uint32_t qx[QR > 0 ? QR : 1][4]; /* the query's 16 bits, and D's sign as bit 16 */
#pragma unroll
    for (int rr = 0; rr < QR; rr++) {
        const uint32_t r = warp + kWarps * rr;
        const uint16_t *qp =
            (const uint16_t *)A.q + ((size_t)seq * A.n_q + h * A.group + r) * A.head_dim;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const uint32_t k = 4 * lane + i;
            uint32_t bits = 0, sg = 0;
            if (r < A.group && k < A.head_dim) {
                bits = qp[k];
                sg = __ldg(A.kdsign + k);
            }
            qx[rr][i] = bits | sg >> 15;
        }
    }
    const int32_t cs = ip0 + (int32_t)(sp * A.cps);
    const int32_t c1 = min(ip1, cs + (int32_t)A.cps);
    tq_cuda_chunk dsc; /* this thread's chunk descriptor for the shared copy */
    const bool has_dsc = tid < kDesc && cs + (int32_t)tid < c1;
    if (has_dsc) dsc = chunks[cs + tid];

    /* the first tile's words are requested before the tables and the query rotation, whose
     * work then hides their latency (descriptors straight from global memory here). A warp walks
     * whole chunks: tiles `first`, + tstep, ... of chunks c, c + cstep, ..., a chunk's tiles
     * shared by kWarps / nl warps when the block has fewer than eight (nl chunks walked side by
     * side). It then enters a new chunk every few tiles rather than every tile (the walk and the
     * record addresses cost about 70 instructions a time), and KP's rotated value sums stay
     * within one chunk's channel split. */
    const uint32_t nl = tqc_chunk_lanes(c1 - cs), wpc = kWarps / nl;
    const int32_t cstep = (int32_t)nl;
    int32_t c = cs + (int32_t)(warp / wpc) - cstep;
    const uint32_t first = (warp % wpc) * kTile, tstep = wpc * kTile;
    tile_pos pa;
    pa.T = 0;
    pa.t0 = 0;
    bool va = next_tile<KM, KQ, VM>(pa, c, c1, chunks, chunks + cs, cs, h, first, tstep, cstep);
    /* the warp's staging slots: a tile's keys, its values and scales (cp.async groups are
     * committed in the order K(0), V(0), then per tile i: K(i + 1), V(i + 1)) */
    const uint32_t kslot = kSmemBase + K_::soff(A.share_lut != 0) + warp * kstage<KM, KQ>::bytes;
    const uint32_t vslot =
        kSmemBase + K_::voff(A.share_lut != 0) + warp * vslot_bytes<KM, KQ, VM>();
    if constexpr (KP) {
        if (va) stage_keys_sp(pa, kslot, lane);
        cp_async_commit();
        if (va) stage_values_sp(pa, vslot, lane);
        cp_async_commit();
    } else {
        if (va) stage_keys<KM, KQ>(pa, kslot, lane, nullptr); /* split keys: fragments below */
        cp_async_commit();
        if (va) stage_values<KM, KQ, VM>(pa, vslot, lane);
        cp_async_commit();
    }
    /* KP: the 1-bit centroid of part 1's keys, the signs D of the lane's value channels, and
     * the warp's sums in the original domain, zero (flush_sp) */
    float cK1 = 0.0f;
    uint32_t dmask = 0;
    if constexpr (KP) {
        cK1 = A.cK * __ldg(A.k1cent + 1);
        /* part 0: channels 8g + b (bit b = 2 mt + h); part 1: 16 (g / 2) + 4 q + 2 (g & 1) + u
         * for m-tile 4 + 2u + (q >> 1), h = q & 1 (vsp_channel) */
        const uint4 d0 = __ldg((const uint4 *)(A.vdsign + 8 * g));
        const uint4 d1 = __ldg((const uint4 *)(A.vdsign + 8 * g + 4));
#pragma unroll
        for (uint32_t b = 0; b < 8; b++)
            dmask |= (pick(b < 4 ? d0 : d1, b & 3) >> 31) << b;
#pragma unroll
        for (uint32_t q = 0; q < 4; q++) {
            const uint2 d = __ldg((const uint2 *)(A.v1dsign + 16 * (g >> 1) + 4 * q + 2 * (g & 1)));
            dmask |= (d.x >> 31) << (2 * (4 + (q >> 1)) + (q & 1));
            dmask |= (d.y >> 31) << (2 * (6 + (q >> 1)) + (q & 1));
        }
#pragma unroll
        for (uint32_t k = 0; k < 4 * sp_heads(KM); k++)
            *(float *)(sm + sp_acc<KM>(warp, k >> 2, 32 * (k & 3) + lane) - kSmemBase) = 0.0f;
    }

    /* lookup tables: entry e at e * 256, one copy per lane (word e * 64 + half * 32 + lane) */
    if constexpr (!PDL_SELF) {
        lut_store<KT>((uint32_t *)sm, kent, tid, 0);
        if (!A.share_lut) lut_store<VT>((uint32_t *)sm, vent, tid, 1);
        if (KS && tid < 16) lut_store<2>((uint32_t *)(sm + kK1Table), k1ent, tid, 0);
    }
    const uint32_t lbk = lane * 4, lbv = (A.share_lut ? 0 : 128) + lane * 4;
    const uint32_t lbk1 = kK1Table + lane * 4;

    /* MSE keys: the rotated queries go straight into fragment order: lane L = 4 g + t4 of head
     * tile hn finds its 16 words (k-step j: 2j, 2j + 1) at qfr + (hn * 32 + L) * 16, quads at
     * columns (k + L / 2) mod 4 (a quarter warp's 16-byte reads then meet no bank twice) */
    uint32_t *qfr = (uint32_t *)(sm + K_::qoff(A.share_lut != 0)); /* [GH / 8][32][16] */
#pragma unroll
    for (int rr = 0; rr < QR; rr++) {
        const uint32_t r = warp + kWarps * rr;
        float x[4];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const uint32_t u = qx[rr][i];
            const uint16_t bits = (uint16_t)(u & 0xffffu);
            const float v =
                A.q_dtype == TQ_DTYPE_BF16 ? tqc_bf16_to_f32(bits) : tqc_f16_to_f32(bits);
            x[i] = __uint_as_float(__float_as_uint(v) ^ ((u & 0x10000u) << 15));
        }
        warp_fwht<32>(x, lane); /* rows past the group are zeros */
#pragma unroll
        for (int pr = 0; pr < 2; pr++) { /* channels 2m, 2m + 1 with m = 2 lane + pr */
            uint32_t t4q, n;
            key_word<KM>(2 * lane + pr, t4q, n);
            const uint32_t L = 4 * (r & 7) + t4q;
            qfr[((r >> 3) * 32 + L) * 16 + ((((n >> 2) + (L >> 1)) & 3) << 2) + (n & 3)] =
                pack_half2(x[2 * pr] * 0.08838834764831845f, x[2 * pr + 1] * 0.08838834764831845f);
        }
    }
    tq_cuda_chunk *sdesc = (tq_cuda_chunk *)(sm + K_::doff(A.share_lut != 0));
    if (has_dsc) sdesc[tid] = dsc;
    if (KQ || KS) {
        /* the preparation kernel's queries (this kernel may start before it ends) */
        tqc_grid_wait();
        if constexpr (KP) { /* the first chunk's fragments, into L1 over the barrier */
            if (va) prefetch_qsp<KM>(qsp_row<KM>(A, qrow0, pa.c), lane);
        }
        if (KS) { /* the first tile's query fragments, and everything in flight, before it */
            if (va) stage_qfrags<KM, KQ>(kslot, lane, qfrag_row<KM>(A, qrow0, pa.c));
            cp_async_commit();
            cp_async_wait0();
        }
    } else {
        __syncthreads(); /* the rotated queries */
    }
    qfrag<KQ, G16> Q;
#pragma unroll
    for (int hn = 0; hn < (KS || KP ? 0 : HN); hn++) {
        if (!KQ) { /* MSE keys: the block's own fragments */
            const uint32_t L = lane_of(g, t4);
#pragma unroll
            for (uint32_t k = 0; k < 4; k++) {
                const uint4 w =
                    *(const uint4 *)(qfr + (hn * 32 + L) * 16 + (((k + (L >> 1)) & 3) << 2));
                Q.q[hn][2 * k][0] = w.x;
                Q.q[hn][2 * k][1] = w.y;
                Q.q[hn][2 * k + 1][0] = w.z;
                Q.q[hn][2 * k + 1][1] = w.w;
            }
        } else { /* prod keys: q' and its sketch from att_mma_prep */
            const uint32_t r = 8 * hn + g;
            const bool v = r < A.group;
            const __half *qp = wq + ((size_t)seq * A.n_q + h * A.group + (v ? r : 0)) * 256;
#pragma unroll
            for (int j = 0; j < 8; j++)
#pragma unroll
                for (int hi = 0; hi < 2; hi++) {
                    const uint32_t rr = 2 * j + hi;
                    const uint32_t k0 = key_channel<KM>(t4, rr, 0);
                    const uint32_t k1 = key_channel<KM>(t4, rr, 1);
                    const __half2 x = v ? __halves2half2(qp[k0], qp[k1]) : __float2half2_rn(0.0f);
                    Q.q[hn][j][hi] = *(uint32_t *)&x;
                    const uint32_t d0 = 128 + sign_channel(t4, rr, 0);
                    const uint32_t d1 = 128 + sign_channel(t4, rr, 1);
                    const __half2 y = v ? __halves2half2(qp[d0], qp[d1]) : __float2half2_rn(0.0f);
                    Q.s[KQ ? hn : 0][KQ ? j : 0][hi] = *(uint32_t *)&y;
                }
        }
    }
    __syncthreads(); /* tables and descriptors ready */

    float o[8][HN][4];
    float m_run[HN][2], l_run[HN][2];
#pragma unroll
    for (int hn = 0; hn < HN; hn++) {
#pragma unroll
        for (int mt = 0; mt < 8; mt++)
#pragma unroll
            for (int cc = 0; cc < 4; cc++)
                o[mt][hn][cc] = 0.0f;
        m_run[hn][0] = m_run[hn][1] = -INFINITY;
        l_run[hn][0] = l_run[hn][1] = 0.0f;
    }

    float m_last[2] = {-INFINITY, -INFINITY}; /* KP: the maximum the flushed sums are at */
    while (va) {
        tile_pos pn = pa;
        const bool vn = next_tile<KM, KQ, VM>(pn, c, c1, chunks, sdesc, cs, h, first, tstep, cstep);
        if (vn) prefetch_values<KM, KQ, VM>(pn, lane); /* into L2 ahead of its copy */
        cp_async_wait1(); /* this tile's keys have landed (its values may be in flight) */
        __syncwarp();     /* for every lane's copies */
        if constexpr (KP) {
            const bool last = !vn || pn.c != pa.c; /* warp-uniform (next_tile's votes) */
            uint4 vm = make_uint4(0, 0, 0, 0);
            compute_tile_sp<KM>(kslot, vslot, pa, pn, vn, last, A, lbk, lbv, cK1,
                                qsp_row<KM>(A, qrow0, pa.c), o, m_run, l_run, vm, g, t4);
            if (last) { /* the next chunk's fragments are requested first: the flush hides them */
                if (vn) prefetch_qsp<KM>(qsp_row<KM>(A, qrow0, pn.c), lane);
                flush_sp<KM>(o, m_run, m_last, vm, dmask, warp, lane, A.group);
            }
        } else {
            compute_tile<KM, KQ, VM, G16>(kslot, vslot, pa, pn, vn, A, lbk, lbk1, lbv, qrow0, Q, o,
                                          m_run, l_run, g, t4);
        }
        pa = pn;
        va = vn;
    }
    cp_async_wait0(); /* nothing in flight into shared memory the merge reuses */

    tqc_grid_dependents(); /* the merge kernel may be scheduled now (it waits for this grid) */

    /* ---- merge the warps, rotate back, write the split's row */
#pragma unroll
    for (int hn = 0; hn < HN; hn++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
            float l = l_run[hn][e];
            l += __shfl_xor_sync(0xffffffffu, l, 4);
            l += __shfl_xor_sync(0xffffffffu, l, 8);
            l += __shfl_xor_sync(0xffffffffu, l, 16);
            l_run[hn][e] = l;
        }
    __syncthreads(); /* every warp is done with the tables */
    constexpr uint32_t GH = K_::GH;
    float *Os = (float *)sm; /* [warp][GH][kOs] */
    /* [warp][GH][2]; KP: where the descriptors were (its sums lie elsewhere: sp_base) */
    float *ml = KP ? (float *)(sm + K_::doff(false)) : Os + kWarps * kOs * GH;
#pragma unroll
    for (int mt = 0; mt < (KP ? 0 : 8); mt++)
#pragma unroll
        for (int hn = 0; hn < HN; hn++)
#pragma unroll
            for (int cc = 0; cc < 4; cc++) {
                const uint32_t ch = value_channel<VM>(g, mt, cc >> 1);
                const uint32_t hd = 8 * hn + 2 * t4 + (cc & 1);
                Os[(warp * GH + hd) * kOs + ch] = o[mt][hn][cc];
            }
    if (g == 0)
#pragma unroll
        for (int hn = 0; hn < HN; hn++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const uint32_t hd = 8 * hn + 2 * t4 + e;
                ml[(warp * GH + hd) * 2] = m_run[hn][e];
                ml[(warp * GH + hd) * 2 + 1] = l_run[hn][e];
            }
    __syncthreads();
    /* a warp per head row: the eight warps' sums weighed by 2^(m_w - M), rotated back
     * (D . H z / n) and written as the split's row with its (M, L) */
    const uint32_t G = A.group;
    for (uint32_t r = warp; r < G; r += kWarps) {
        float M = -INFINITY;
#pragma unroll
        for (int w = 0; w < kWarps; w++)
            M = fmaxf(M, ml[(w * GH + r) * 2]);
        /* lane holds channels lane + 32 i (conflict-free reads, coalesced writes) */
        float x[4] = {0.0f, 0.0f, 0.0f, 0.0f}, L = 0.0f;
        if (M != -INFINITY)
#pragma unroll
            for (int w = 0; w < kWarps; w++) {
                const float f = exp2f(ml[(w * GH + r) * 2] - M);
                const float *row = Os + (w * GH + r) * kOs + lane;
#pragma unroll
                for (int i = 0; i < 4; i++)
                    x[i] += (KP ? *(const float *)(sm + sp_acc<KM>(w, r, lane + 32 * i) - kSmemBase)
                                : row[32 * i]) *
                            f;
                L += ml[(w * GH + r) * 2 + 1] * f;
            }
        if (!KP) warp_fwht_strided(x, lane); /* KP: flush_sp did it per chunk */
        const size_t row = (((size_t)seq * A.n_q + h * G + r) * A.n_splits + sp);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const uint32_t j = lane + 32 * i;
            if (j < A.head_dim)
                ws_o[row * A.head_dim + j] =
                    KP ? x[i]
                       : __uint_as_float(__float_as_uint(x[i] * (1.0f / 128.0f)) ^
                                         __ldg(A.vdsign + j));
        }
        if (lane == 0) {
            ws_ml[row * 2] = M;
            ws_ml[row * 2 + 1] = L;
        }
    }
}

template <int KM, bool KQ, int VM, bool G16>
int launch(const mma_args &M, uint32_t n_seqs, const int32_t *indptr, const tq_cuda_chunk *chunks,
           const __half *wq, float *wo, float *wml, cudaStream_t s)
{
    using K_ = att_kernel<KM, KQ, VM, G16>;
    const uint32_t smem = K_::smem(M.share_lut != 0);
    if (!K_::smem_ok(M.share_lut != 0)) return TQKV_EINTERNAL; /* kSp8Acc overlaps the slots */
    if (smem > 48 * 1024) {
        cudaError_t e =
            cudaFuncSetAttribute(att_mma_kernel<KM, KQ, VM, G16>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (e != cudaSuccess) return tqkv__cuda_err(e, "attention smem attribute");
    }
    /* a programmatic dependent of the kernel before it: prod and split keys of
     * att_mma_prep(_split), so that the tables and the first tiles' copies overlap it (the kernel
     * waits for it before it reads the prepared queries); MSE keys of whatever precedes them,
     * so that their launch and tables overlap its end (PDL_SELF) */
    return tqc_launch_dependent(att_mma_kernel<KM, KQ, VM, G16>, dim3(M.n_splits, M.n_kv, n_seqs),
                                dim3(kThreads), smem, s, "attention (tensor cores) launch", M,
                                indptr, chunks, wq, wo, wml);
}

template <int KM, bool KQ, int VM>
int launch_g(const mma_args &M, bool g16, uint32_t n_seqs, const int32_t *indptr,
             const tq_cuda_chunk *chunks, const __half *wq, float *wo, float *wml, cudaStream_t s)
{
    return g16 ? launch<KM, KQ, VM, true>(M, n_seqs, indptr, chunks, wq, wo, wml, s)
               : launch<KM, KQ, VM, false>(M, n_seqs, indptr, chunks, wq, wo, wml, s);
}

} // namespace

/* Split keys of tq3.5's shape: part 0 of 64 channels at 4 MSE bits, part 1 of 64 at 2, values
 * one part of 128 at 4 bits, at most 8 query heads per KV head (kSplit up to 4; kSplit8's
 * per-chunk query fragments for 5 to 8 take shared memory for one block per multiprocessor). */
static bool att_mma_split(const tqc_att &A)
{
    const tqc_part &k0 = A.K.part[0], &k1 = A.K.part[1], &v = A.V.part[0];
    return A.K.n_parts == 2 && A.K.mask_words == 4 && A.V.n_parts == 1 && A.group <= 8 &&
           k0.n == 64 && k1.n == 64 && k0.m == 4 && k1.m == 2 && !k0.prod && !k1.prod &&
           v.n == 128 && v.m == 4 && !v.prod;
}

/* tq3.5-prod: split prod keys (part 0 of 64 at 4 MSE bits + QJL, part 1 of 64 at 1 + QJL),
 * split values (64 at 4 bits, 64 at 3; part 0's codebook the keys' part 0's), at most 8 query
 * heads per KV head (kSplitProd up to 4, kSplitProd8's sums and fragments taking the shared
 * memory of a second block per multiprocessor for 5 to 8). */
static bool att_mma_split_prod(const tqc_att &A)
{
    const tqc_part &k0 = A.K.part[0], &k1 = A.K.part[1], &v0 = A.V.part[0], &v1 = A.V.part[1];
    return A.K.n_parts == 2 && A.V.n_parts == 2 && A.K.mask_words == 4 && A.V.mask_words == 4 &&
           A.group <= 8 && k0.n == 64 && k1.n == 64 && k0.m == 4 && k1.m == 1 && k0.prod &&
           k1.prod && v0.n == 64 && v1.n == 64 && v0.m == 4 && v1.m == 3 && !v0.prod && !v1.prod &&
           v0.cent == k0.cent;
}

bool tqkv__att_mma_eligible(const tqc_att &A)
{
    if (A.P != 128 || A.group > 16) return false;
    const bool kp = att_mma_split_prod(A);
    if (A.V.n_parts != 1 && !kp) return false;
    if (A.K.n_parts != 1 && !att_mma_split(A) && !kp) return false;
    const tqc_part &k = A.K.part[0], &v = A.V.part[0];
    if (A.K.n_parts == 1) {
        if (k.n != 128 || v.n != 128 || v.prod) return false;
        /* tq4, tq3, tq4-prod, tq3-prod: (key MSE bits, QJL, value bits) */
        const uint32_t key = k.m * 100 + (k.prod ? 10 : 0) + v.m;
        if (key != 404 && key != 303 && key != 314 && key != 213) return false;
    }
    /* the tables sit at the start of the block's shared window (kSmemBase) */
    int dev = 0, reserved = -1;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&reserved, cudaDevAttrReservedSharedMemoryPerBlock, dev) !=
            cudaSuccess)
        return false;
    return reserved == (int)kSmemBase;
}

uint32_t tqkv__att_mma_blocks_per_sm(const tqc_att &A)
{
    return A.K.n_parts == 2 && A.group > qheads(kSplit) ? 1 : 2; /* kSplit8, kSplitProd8 */
}

size_t tqkv__att_mma_extra(const tqc_att &A, uint32_t n_seqs, uint32_t max_chunks)
{
    /* prod keys: att_mma_prep's rotated queries and sketches; split keys: the per-chunk query
     * fragments of att_mma_prep_split (1 KiB per chunk and KV head); other MSE keys none */
    if (att_mma_split_prod(A))
        return (size_t)n_seqs * max_chunks * A.n_kv *
               sp_qbytes(A.group > sp_heads(kSplitProd) ? kSplitProd8 : kSplitProd);
    if (A.K.n_parts == 2)
        return (size_t)n_seqs * max_chunks * A.n_kv *
               (A.group > qheads(kSplit) ? qheads(kSplit8) : qheads(kSplit)) * 256;
    return A.K.part[0].prod ? (size_t)n_seqs * A.n_q * 256 * sizeof(__half) : 0;
}

int tqkv__att_mma_launch(const tqc_att &A, uint32_t n_seqs, uint32_t max_chunks,
                         const int32_t *indptr, const tq_cuda_chunk *chunks, const void *q,
                         float *ws_o, float *ws_ml, void *ws_q, cudaStream_t s)
{
    __half *wq = (__half *)ws_q;
    const bool kp = att_mma_split_prod(A), split = A.K.n_parts == 2 && !kp;
    if (kp) {
        /* chunks per preparation block: about two blocks per multiprocessor, which leaves room
         * for a block of the split kernel beside them */
        const uint64_t cells = (uint64_t)max_chunks * A.n_kv * n_seqs;
        const uint64_t want = (cells + 2 * tqkv__att_sm_count() - 1) / (2 * tqkv__att_sm_count());
        const uint32_t per = (uint32_t)(want < 1 ? 1 : want > kPrepMax ? kPrepMax : want);
        const dim3 grid((max_chunks + per - 1) / per, A.n_kv, n_seqs);
        const int rc = tqc_launch_dependent(
            A.group > sp_heads(kSplitProd) ? att_mma_prep_sp<8> : att_mma_prep_sp<4>, grid,
            dim3(128), 0, s, "attention split-prod query preparation launch", A, indptr, chunks, q,
            max_chunks, per, (uint32_t *)ws_q);
        if (rc) return rc;
    } else if (A.K.part[0].prod) {
        const int rc = tqc_launch_dependent(att_mma_prep, dim3(A.n_q, n_seqs), dim3(128), 0, s,
                                            "attention query preparation launch", A, q, wq);
        if (rc) return rc;
    }
    if (split) {
        const int rc = tqc_launch_dependent(
            att_mma_prep_split, dim3(max_chunks, A.n_kv, n_seqs), dim3(128), 0, s,
            "attention split-query preparation launch", A, indptr, chunks, q, max_chunks,
            A.group > qheads(kSplit) ? qheads(kSplit8) : qheads(kSplit), (uint32_t *)ws_q);
        if (rc) return rc;
    }
    mma_args M;
    M.q = q;
    M.q_dtype = A.q_dtype;
    M.kdsign = A.K.part[0].dsign;
    M.n_kv = A.n_kv;
    M.n_q = A.n_q;
    M.group = A.group;
    M.head_dim = A.head_dim;
    M.n_splits = A.n_splits;
    M.cps = A.cps;
    const float c = A.softmax_scale * TQC_LOG2E;
    M.cK = c * 0.08838834764831845f;                   /* / sqrt(128) */
    M.cQ = c * (float)(1.2533141373155002512 / 128.0); /* sqrt(pi/2) / n */
    if (split) M.cK = M.cQ = c * 0.125f;               /* / sqrt(64), both parts */
    if (kp) {
        M.cK = c * 0.125f;                                /* / sqrt(64) */
        M.cQ = c * (float)(1.2533141373155002512 / 64.0); /* sqrt(pi/2) / n, both parts */
    }
    M.kcent = A.K.part[0].cent;
    M.vcent = A.V.part[0].cent;
    M.k1cent = split || kp ? A.K.part[1].cent : nullptr;
    M.qsplit = split || kp ? (const uint8_t *)ws_q : nullptr;
    M.v1cent = kp ? A.V.part[1].cent : nullptr;
    M.v1dsign = kp ? A.V.part[1].dsign : nullptr;
    M.max_chunks = max_chunks;
    M.vdsign = A.V.part[0].dsign;
    /* KP: part 0 of the values reads the keys' table; the second halves hold part 1's */
    M.share_lut = !kp && A.K.part[0].m == A.V.part[0].m && M.kcent == M.vcent;

    const uint32_t km = A.K.part[0].m, vm = A.V.part[0].m;
    const bool kq = A.K.part[0].prod != 0, g16 = A.group > 8;
    const int key = kp ? 9100 : split ? 9000 : km * 100 + (kq ? 10 : 0) + vm;
    switch (key) { /* the presets' combinations (tqkv__att_mma_eligible admits no other) */
    case 404:
        return launch_g<4, false, 4>(M, g16, n_seqs, indptr, chunks, wq, ws_o, ws_ml, s);
    case 303:
        return launch_g<3, false, 3>(M, g16, n_seqs, indptr, chunks, wq, ws_o, ws_ml, s);
    case 314:
        return launch_g<3, true, 4>(M, g16, n_seqs, indptr, chunks, wq, ws_o, ws_ml, s);
    case 213:
        return launch_g<2, true, 3>(M, g16, n_seqs, indptr, chunks, wq, ws_o, ws_ml, s);
    case 9100: /* tq3.5-prod: at most 8 heads per KV head (att_mma_split_prod) */
        if (A.group > sp_heads(kSplitProd))
            return launch<kSplitProd8, true, kSplitV, false>(M, n_seqs, indptr, chunks, wq, ws_o,
                                                             ws_ml, s);
        return launch<kSplitProd, true, kSplitV, false>(M, n_seqs, indptr, chunks, wq, ws_o, ws_ml,
                                                        s);
    case 9000: /* split keys: at most 8 heads per KV head (att_mma_split) */
        if (A.group > qheads(kSplit))
            return launch<kSplit8, false, 4, false>(M, n_seqs, indptr, chunks, wq, ws_o, ws_ml, s);
        return launch<kSplit, false, 4, false>(M, n_seqs, indptr, chunks, wq, ws_o, ws_ml, s);
    default:
        return TQKV_ENOTSUP;
    }
}
