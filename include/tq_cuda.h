/* libtq on CUDA: encode, decode and decode-attention over TurboQuant blocks in GPU memory.
 *
 * Plain C: no CUDA type appears here. A stream is a cudaStream_t passed as `void *` (NULL is the
 * legacy default stream). Every pointer documented "device" is a CUDA device address; the rest
 * are host memory. Every function returns 0 or a negative TQKV_E* code (TQKV_ENODEVICE when the
 * library was built without CUDA or no device is present, TQKV_ECUDA for a CUDA runtime error,
 * which is also logged). Launchers are stream-ordered: they enqueue work on `stream` and return
 * without waiting for it; inputs must stay valid and outputs untouched until the stream reaches
 * that point. The codes they write equal the CPU reference's (kernels/cpu) for the same input.
 *
 * Derived tables (codebooks, rotation signs, QJL matrices) are computed on the host by the CPU
 * library and uploaded to each device once per (kind, n, bits) or (seed, n, part); the first
 * call that needs a table uploads it synchronously, later calls find it cached. */
#ifndef TQ_CUDA_H
#define TQ_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "tq.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Sections -------------------------------------------------------------------------- */

/* Encodes one tensor (K or V) of one layer, all heads, n_tokens tokens, on the GPU.
 *   src  view of device memory (src->data and src->pages are device pointers; tq_kv_view in
 *        tq.h gives the contiguous [tokens, heads, head_dim] and paged [pages, page_size, heads,
 *        head_dim] layouts), dtype fp16, bf16 or fp32;
 *   dst  device, dst_cap bytes >= tq_section_size(); written exactly as tq_encode_section would.
 * Outlier recipes first reduce channel energies per head (a second small kernel on `stream`). */
int tq_cuda_encode_section(const tq_recipe *r, uint32_t head_dim, uint32_t n_kv_heads,
                           uint32_t n_tokens, uint64_t seed, tq_codebook_kind cb,
                           const tq_kv_view *src, void *dst, size_t dst_cap, void *stream);

/* Decodes a section in device memory into dst (device) [n_tokens, n_kv_heads, head_dim] of
 * out_dtype (fp16, bf16 or fp32), contiguous; prod keys include their QJL correction, as
 * tq_decode_section does. */
int tq_cuda_decode_section(const tq_recipe *r, uint32_t head_dim, uint32_t n_kv_heads,
                           uint32_t n_tokens, uint64_t seed, tq_codebook_kind cb,
                           const void *section, size_t section_len, tq_dtype out_dtype, void *dst,
                           size_t dst_cap, void *stream);

/* ---- Blocks ---------------------------------------------------------------------------- */

/* Encodes a whole chunk into a block in device memory. The host writes the header and tables
 * (tq_block_write_header) at the start of `host_block` (host, host_cap bytes >= the block size:
 * typically the buffer the block is copied back into for sealing; its header bytes must stay
 * unchanged until the stream passes this call — use pinned memory for a truly asynchronous
 * copy), the device buffer is zeroed (padding), the header is copied in and every section is
 * encoded in place; sections of consecutive layers sharing a recipe are encoded by one launch.
 * k[l] and v[l] view layer l's K and V in device memory.
 *   dst  device, dst_cap >= tq_block_size(p, n_tokens, 0, p->n_layers).
 * The block is NOT sealed: copy it to the host and call tq_block_seal() there (the checksums
 * are computed on the CPU). @param out_len receives the block size. */
int tq_cuda_block_encode(const tq_codec_params *p, const uint8_t key[TQ_KEY_BYTES],
                         uint32_t n_tokens, const tq_kv_view *k, const tq_kv_view *v,
                         void *host_block, size_t host_cap, void *dst, size_t dst_cap,
                         size_t *out_len, void *stream);

/* Decodes layers [layer_begin, layer_begin + n_layers) (absolute indices) of a block whose bytes
 * lie at `dev_block` (device) and whose parsed host copy is `b` (tq_block_parse), into dst
 * (device) laid out like tq_block_decode's output: [n_layers][2 (K,V)][n_tokens][n_kv_heads]
 * [head_dim] of out_dtype. One tq_cuda_decode_section per section, on `stream`.
 * @return 0, TQKV_EBADLAYERS, TQKV_ENOSPC, TQKV_EBADDTYPE or a section error. */
int tq_cuda_block_decode(const tq_block_view *b, const void *dev_block, uint32_t layer_begin,
                         uint32_t n_layers, tq_dtype out_dtype, void *dst, size_t dst_cap,
                         void *stream);

/* ---- Encoding blocks that live in host memory ---------------------------------------------
 * For a producer that holds raw KV in host memory (a daemon receiving a raw PUT): a reusable
 * encoder with its own stream and device buffers on the current device (grown on demand). One
 * encoder per thread; not thread-safe itself. */
typedef struct tq_cuda_encoder tq_cuda_encoder;

/* @return 0, TQKV_ENODEVICE (no GPU or a CPU-only build), TQKV_ENOMEM, TQKV_ECUDA. */
int tq_cuda_encoder_create(tq_cuda_encoder **out);
void tq_cuda_encoder_destroy(tq_cuda_encoder *e);
/* tq_block_encode_packed on the GPU: kv (host, packed [n_layers][2][n_tokens][n_kv_heads]
 * [head_dim] of p->src_dtype) is copied in, encoded, copied back into dst (host) and sealed
 * there. Synchronous. The bytes equal tq_block_encode_packed's. @return as tq_block_encode_packed,
 * plus TQKV_ENOMEM / TQKV_ECUDA. */
int tq_cuda_encoder_encode_packed(tq_cuda_encoder *e, const tq_codec_params *p,
                                  const uint8_t key[TQ_KEY_BYTES], uint32_t n_tokens,
                                  const void *kv, size_t kv_len, void *dst, size_t dst_cap,
                                  size_t *out_len);

/* ---- Decode attention ------------------------------------------------------------------
 * One encoded chunk as the attention kernel sees it: device addresses of the layer's K and V
 * sections and the chunk's token count. All chunks of one call share the layer's recipes,
 * geometry, seed and codebook (tq_cuda_attn_params). */
typedef struct {
    uint64_t k_section; /* device address of the K section */
    uint64_t v_section; /* device address of the V section */
    uint32_t n_tokens;  /* tokens of this chunk, 1..65535 */
    uint32_t reserved;  /* 0 */
} tq_cuda_chunk;

/* Fills `out` for `layer` of a block whose bytes lie at `dev_block` (device) and whose parsed
 * host copy is `b` (tq_block_parse). Host-only arithmetic: reads nothing on the device.
 * @return 0 or TQKV_EBADLAYERS. */
int tq_cuda_chunk_from_block(const tq_block_view *b, const void *dev_block, uint32_t layer,
                             tq_cuda_chunk *out);

typedef struct {
    tq_recipe k, v;       /* recipes of the layer (mse or prod; raw is not supported here) */
    uint32_t head_dim;    /* 1..256 */
    uint32_t n_kv_heads;  /* KV heads of the sections */
    uint32_t n_q_heads;   /* multiple of n_kv_heads; query head h uses KV head h / (n_q/n_kv) */
    uint64_t seed;        /* codec seed of the blocks */
    uint8_t codebook;     /* tq_codebook_kind of the blocks */
    uint8_t q_dtype;      /* TQ_DTYPE_F16 or TQ_DTYPE_BF16 (queries and output) */
    uint8_t no_tensor_cores; /* 1: always the general CUDA-core kernel (tests, comparisons) */
    float softmax_scale;  /* e.g. 1/sqrt(head_dim) */
    uint32_t max_splits;  /* split-KV parts per sequence: 0 = automatic */
} tq_cuda_attn_params;

/* Bytes of device workspace tq_cuda_attention needs for n_seqs sequences whose longest holds
 * max_chunks chunks. */
size_t tq_cuda_attention_workspace_size(const tq_cuda_attn_params *p, uint32_t n_seqs,
                                        uint32_t max_chunks);

/* Decode attention of one query token per sequence over encoded chunks.
 *   chunk_indptr [n_seqs + 1] device int32: sequence s owns chunks[chunk_indptr[s] ..
 *                chunk_indptr[s+1]) in token order (a sequence with no chunk outputs zeros);
 *   chunks       [chunk_indptr[n_seqs]] device tq_cuda_chunk;
 *   q            [n_seqs, n_q_heads, head_dim] device, q_dtype, original (unrotated) domain;
 *   out          [n_seqs, n_q_heads, head_dim] device, q_dtype, original domain;
 *   workspace    device, 16-byte aligned (cudaMalloc's alignment will do),
 *                >= tq_cuda_attention_workspace_size(p, n_seqs, max_chunks) bytes, where
 *                max_chunks bounds every sequence's chunk count.
 * Scores use the rotated query (and its QJL sketch for prod keys) against codebook values;
 * values are accumulated rotated and rotated back once per split (per chunk for outlier
 * recipes). Long sequences are split over several thread blocks and merged by log-sum-exp.
 * head_dim_padded 128 with tq4, tq3, tq4-prod, tq3-prod (up to 16 query heads per KV head),
 * tq3.5 or tq3.5-prod (up to 8) runs on tensor cores (fp16 operands, fp32 sums); the rest on
 * CUDA cores.
 * @return 0, TQKV_EINVAL (null or misaligned pointers, bad parameters), TQKV_ENOSPC (workspace
 * too small), TQKV_ENOTSUP, TQKV_ECUDA. */
int tq_cuda_attention(const tq_cuda_attn_params *p, uint32_t n_seqs, const int32_t *chunk_indptr,
                      const tq_cuda_chunk *chunks, uint32_t max_chunks, const void *q, void *out,
                      void *workspace, size_t workspace_size, void *stream);

#ifdef __cplusplus
}
#endif
#endif
