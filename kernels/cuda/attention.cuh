/* Internals shared by the two decode-attention kernels: the general one (attention.cu: any head
 * dimension, outlier splits, one thread per token on CUDA cores) and the tensor-core one
 * (attention_mma.cu: head_dim_padded 128, the presets most engines run).
 * tq_cuda_attention (attention.cu) validates the parameters once, picks the kernel, and both
 * write the same split workspace that the log-sum-exp merge reads. */
#ifndef TQC_ATTENTION_CUH
#define TQC_ATTENTION_CUH

#include "tqc.cuh"

#define TQC_LOG2E 1.4426950408889634f

/* Programmatic dependent launch (sm_90): a kernel launched with the programmatic stream
 * serialization attribute may start before the kernel ahead of it in the stream has finished;
 * tqc_grid_wait blocks until that kernel has completed and its writes are visible (it returns at
 * once for a kernel launched the ordinary way), and tqc_grid_dependents lets the dependent
 * kernel's blocks be scheduled before this grid ends. */
__device__ __forceinline__ void tqc_grid_wait(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void tqc_grid_dependents(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/* Launches kernel k as a programmatic dependent of the kernel before it in stream s: its blocks
 * may start while that kernel ends, so k must call tqc_grid_wait before it reads anything that
 * kernel (or, through it, any before) may write, and before it writes what that one reads. */
template <typename... P, typename... Args>
inline int tqc_launch_dependent(void (*k)(P...), dim3 grid, dim3 block, size_t smem,
                                cudaStream_t s, const char *what, Args &&...args)
{
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute at[1];
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = s;
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = at;
    cfg.numAttrs = 1;
    cudaError_t e = cudaLaunchKernelEx(&cfg, k, static_cast<Args &&>(args)...);
    return e == cudaSuccess ? 0 : tqkv__cuda_err(e, what);
}

/* The start of a preparation kernel launched by tqc_launch_dependent: it waits for the kernel
 * before it, then lets its own dependent (the split kernel) start, whose loads made before its
 * own wait then come after everything earlier in the stream. */
__device__ __forceinline__ void tqc_grid_begin(void)
{
    tqc_grid_wait();
    tqc_grid_dependents();
}

/* Geometry of one tensor's parts as the attention kernels need it (offsets within a record). */
typedef struct {
    uint32_t n_parts, mask_words, record_size_unused;
    tqc_part part[2];
} tqc_att_tensor;

typedef struct {
    uint32_t P, head_dim, n_kv, n_q, group, n_groups, n_splits, cps;
    float c_qk[2]; /* per part: softmax_scale * log2e / n */
    float c_qs[2]; /* per part: softmax_scale * log2e * sqrt(pi/2) / (n sqrt(n)) */
    uint32_t q_dtype;
    tqc_att_tensor K, V;
    uint32_t kv_slots;       /* u32 words per token of V planes (both parts) */
    uint32_t slot_off[2][2]; /* first staging slot of V part p, plane q */
    uint32_t mma;            /* 1: the tensor-core kernel runs (tqkv__att_mma_eligible) */
    float softmax_scale;
} tqc_att;

/* Multiprocessors of the current device. */
uint32_t tqkv__att_sm_count(void);

/* Chunks a tensor-core block (whose warps walk whole chunks) takes side by side, out of the nc
 * it holds: each over 8 / lanes of its eight warps. Its split choice and its walk both follow it.
 */
__host__ __device__ inline uint32_t tqc_chunk_lanes(int64_t nc)
{
    return nc >= 8 ? 8 : nc >= 4 ? 4 : nc >= 2 ? 2 : 1;
}

/* Whether the tensor-core kernel handles A: head_dim_padded 128, the recipes of tq4, tq3,
 * tq4-prod and tq3-prod (one part per tensor, at most 16 query heads per KV head), tq3.5 (split
 * keys) and tq3.5-prod (split prod keys and split values), at most 8. */
bool tqkv__att_mma_eligible(const tqc_att &A);
/* Blocks per split the tensor-core kernel wants resident per multiprocessor. */
uint32_t tqkv__att_mma_blocks_per_sm(const tqc_att &A);
/* Bytes of workspace it needs beyond the split outputs (prod keys: the prepared queries). */
size_t tqkv__att_mma_extra(const tqc_att &A, uint32_t n_seqs, uint32_t max_chunks);
/* Launches the query preparation and the split kernel; the caller launches the merge.
 * ws_o/ws_ml: split outputs as the merge reads them; ws_q: tqkv__att_mma_extra bytes. */
int tqkv__att_mma_launch(const tqc_att &A, uint32_t n_seqs, uint32_t max_chunks,
                         const int32_t *indptr, const tq_cuda_chunk *chunks, const void *q,
                         float *ws_o, float *ws_ml, void *ws_q, cudaStream_t s);

#endif
