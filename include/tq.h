/* libtq: the TurboQuant codec and attention kernels of tqkv.
 *
 * Plain C ABI, usable from C, C++ and Python (ctypes): no CUDA types appear here (streams are
 * passed as `void *` holding a cudaStream_t). Every function returns 0 or a negative TQKV_E*
 * code from tqkv_errors.h unless its comment says otherwise. Functions that parse bytes are
 * protected against malicious input: they validate sizes and offsets before reading.
 *
 * Vocabulary (kernels/FORMAT.md has every byte):
 *   block    one chunk's KV (all layers or a layer range, K and V, all KV heads), encoded, with a
 *            header, recipes, a layer table and checksums;
 *   section  one layer's K or V inside a block: n_kv_heads head records;
 *   recipe   how one tensor is encoded (mode, bits, outlier split, norm);
 *   preset   a named pair of recipes (K, V): "tq4", "tq3.5", "tq3", "tq2.5", their "-prod"
 *            variants (QJL keys), and lossless "fp16" / "bf16". tqX spends X code bits per
 *            coordinate averaged over K and V (side information on top); tq4 and tq3 are
 *            uniform, tq3.5 and tq2.5 give keys an outlier split and values their own width
 *            (kernels/cpu/recipe.c lists each recipe and the measurement behind it).
 *
 * Thread-safety: all functions may be called concurrently. Derived tables (codebooks, rotation
 * signs, QJL matrices) are computed on first use and cached for the life of the process. */
#ifndef TQ_H
#define TQ_H

#include <stddef.h>
#include <stdint.h>

#include "tqkv_errors.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TQ_FORMAT_VERSION 1
#define TQ_KEY_BYTES 32
#define TQ_MAX_HEAD_DIM 256
#define TQ_MAX_RECIPES 8
#define TQ_MAX_LAYERS 1024
#define TQ_MAX_KV_HEADS 1024
#define TQ_MAX_TOKENS 65535

typedef enum { TQ_DTYPE_F16 = 1, TQ_DTYPE_BF16 = 2, TQ_DTYPE_F32 = 3 } tq_dtype;
typedef enum { TQ_MODE_MSE = 0, TQ_MODE_PROD = 1, TQ_MODE_RAW = 2 } tq_mode;
typedef enum { TQ_NORM_PLAIN = 0, TQ_NORM_CORRECTED = 1, TQ_NORM_UNBIASED = 2 } tq_norm;
typedef enum { TQ_CODEBOOK_EXACT = 0, TQ_CODEBOOK_GAUSSIAN = 1 } tq_codebook_kind;
typedef enum { TQ_K = 0, TQ_V = 1 } tq_tensor;

/* Bytes of one element of `dtype` (2 or 4), or 0 for an unknown dtype. */
size_t tq_dtype_size(tq_dtype dtype);

/* How one tensor (K or V) of one layer is encoded; mirrors the 16-byte recipe of FORMAT.md. */
typedef struct {
    uint8_t mode;      /* tq_mode */
    uint8_t bits;      /* regular channels; prod: includes the QJL bit; raw: 16 */
    uint8_t out_bits;  /* outlier channels; 0 when n_out == 0 */
    uint8_t norm;      /* tq_norm */
    uint16_t n_out;    /* 0, or head_dim_padded / 2 */
    uint8_t raw_dtype; /* raw mode: TQ_DTYPE_F16 or TQ_DTYPE_BF16 */
} tq_recipe;

/* Looks a preset up by name. An outlier preset's n_out is set for `head_dim` (its padded dim / 2).
 * @return 0, TQKV_ENOENT for an unknown name, TQKV_EINVAL for a bad head_dim. */
int tq_preset(const char *name, uint32_t head_dim, tq_recipe *k, tq_recipe *v);
/* NULL-terminated list of preset names, in a stable order. */
const char *const *tq_preset_names(void);
/* Checks a recipe against FORMAT.md's rules for this head_dim. @return 0 or TQKV_EBADCODEC. */
int tq_recipe_validate(const tq_recipe *r, uint32_t head_dim);

/* The padded head dimension: next power of two >= max(head_dim, 32); 0 if head_dim > 256 or 0. */
uint32_t tq_head_dim_padded(uint32_t head_dim);

/* Exact bytes of one section (one layer, one tensor, all heads) of n_tokens tokens. 0 if the
 * arguments are invalid. */
size_t tq_section_size(const tq_recipe *r, uint32_t head_dim, uint32_t n_kv_heads,
                       uint32_t n_tokens);

/* The 2^bits float centroids used for part dimension n (a power of two, 16..256) and `bits`
 * MSE bits (1..4 or 8), for the density of sqrt(n)*u_k (unit variance scale).
 * @return pointer valid for the life of the process, or NULL for bad arguments. */
const float *tq_codebook(tq_codebook_kind kind, uint32_t n, uint32_t bits);

/* The QJL matrix S of part dimension n (16..256, a power of two) and part index `part` (0 or 1)
 * for `seed`: n*n floats, row-major (S[k*n + j]), derived as FORMAT.md says. GPU code should
 * upload this rather than re-derive it: the double-precision log/cos/sin of another libm may
 * differ in the last place. @return pointer valid for the life of the process, or NULL (bad
 * arguments or out of memory). */
const float *tq_qjl_matrix(uint64_t seed, uint32_t n, uint32_t part);

/* ---- Codec parameters of a namespace ---------------------------------------------------- */

typedef struct {
    uint16_t n_layers;   /* 1..TQ_MAX_LAYERS */
    uint16_t n_kv_heads; /* 1..TQ_MAX_KV_HEADS */
    uint16_t head_dim;   /* 1..256 */
    uint8_t src_dtype;   /* tq_dtype the engine sends */
    uint8_t codebook;    /* tq_codebook_kind */
    uint64_t seed;       /* rotation and QJL seed; same seed -> same bytes */
    tq_recipe k, v;      /* default recipes */
    /* Optional per-layer overrides (e.g. keep the first and last layers lossless): NULL, or
     * arrays of n_layers recipes. Borrowed: must stay valid while the params are used. */
    const tq_recipe *k_layers;
    const tq_recipe *v_layers;
} tq_codec_params;

/* Fills params from a preset name with the default seed and exact codebooks.
 * @return 0, TQKV_ENOENT (unknown preset) or TQKV_EINVAL/EBADGEOMETRY. */
int tq_codec_params_init(tq_codec_params *p, const char *preset, uint16_t n_layers,
                         uint16_t n_kv_heads, uint16_t head_dim, tq_dtype src_dtype);
/* Validates geometry and every recipe. @return 0, TQKV_EBADGEOMETRY or TQKV_EBADCODEC. */
int tq_codec_params_validate(const tq_codec_params *p);

/* ---- KV source views ---------------------------------------------------------------------
 * Element j of head h of token t (t counted from the chunk's first token) is at element index
 *   t*token_stride + h*head_stride + j                                   when pages == NULL,
 *   pages[pt / page_size]*page_stride + (pt % page_size)*token_stride + h*head_stride + j
 *                                         with pt = t + page_offset      when pages != NULL
 * (vLLM-style paged cache [num_pages, page_size, heads, head_dim]). Strides are in elements.
 * For GPU functions `data` and `pages` are device pointers. */
typedef struct {
    const void *data;
    uint8_t dtype; /* tq_dtype */
    int64_t token_stride;
    int64_t head_stride;
    const int32_t *pages;
    uint32_t page_size;
    uint32_t page_offset;
    int64_t page_stride;
} tq_kv_view;

/* A contiguous [n_tokens, n_kv_heads, head_dim] view. */
tq_kv_view tq_kv_view_contiguous(const void *data, tq_dtype dtype, uint32_t n_kv_heads,
                                 uint32_t head_dim);

/* ---- Sections (CPU) --------------------------------------------------------------------- */

/* Encodes one tensor of one layer (all heads, n_tokens) into `dst` (dst_cap bytes, at least
 * tq_section_size()). `part_seed_layer` is the layer index (it does not change the derived
 * tables: FORMAT.md) and is kept for API symmetry with the CUDA path. */
int tq_encode_section(const tq_recipe *r, uint32_t head_dim, uint32_t n_kv_heads,
                      uint32_t n_tokens, uint64_t seed, tq_codebook_kind cb, const tq_kv_view *src,
                      void *dst, size_t dst_cap);

/* Decodes a section into dst [n_tokens, n_kv_heads, head_dim] of out_dtype (contiguous).
 * prod keys are decoded with their QJL correction (unbiased, noisier). */
int tq_decode_section(const tq_recipe *r, uint32_t head_dim, uint32_t n_kv_heads,
                      uint32_t n_tokens, uint64_t seed, tq_codebook_kind cb, const void *section,
                      size_t section_len, tq_dtype out_dtype, void *dst, size_t dst_cap);

/* ---- Blocks ----------------------------------------------------------------------------- */

/* Exact size of a block of n_tokens tokens for these params and the layer range
 * [layer_begin, layer_begin + n_layers). 0 if invalid. */
size_t tq_block_size(const tq_codec_params *p, uint32_t n_tokens, uint32_t layer_begin,
                     uint32_t n_layers);

/* Encodes a whole chunk: k[l] and v[l] view layer l's K and V (l = 0..n_layers-1). Writes a
 * complete, sealed block (header, tables, payload, checksums) into dst.
 * @param out_len receives the block size. */
int tq_block_encode(const tq_codec_params *p, const uint8_t key[TQ_KEY_BYTES], uint32_t n_tokens,
                    const tq_kv_view *k, const tq_kv_view *v, void *dst, size_t dst_cap,
                    size_t *out_len);

/* Encodes a chunk given as one contiguous buffer laid out [n_layers][2 (K,V)][n_tokens]
 * [n_kv_heads][head_dim] of p->src_dtype (the wire layout of a raw PUT). */
int tq_block_encode_packed(const tq_codec_params *p, const uint8_t key[TQ_KEY_BYTES],
                           uint32_t n_tokens, const void *kv, size_t kv_len, void *dst,
                           size_t dst_cap, size_t *out_len);

/* Writes header, recipe table and layer table (checksums zero) for a block whose sections will
 * be filled by another producer (the CUDA encoder), then tq_block_seal computes the per-layer
 * and header checksums. Used by the GPU path: encode sections on the device, copy, seal. */
int tq_block_write_header(const tq_codec_params *p, const uint8_t key[TQ_KEY_BYTES],
                          uint32_t n_tokens, void *dst, size_t dst_cap, size_t *out_len);
int tq_block_seal(void *block, size_t len);

/* A validated block. Pointers borrow the buffer given to tq_block_parse. */
typedef struct {
    const uint8_t *base;
    size_t len;
    uint32_t flags;
    uint8_t key[TQ_KEY_BYTES];
    uint64_t seed;
    uint32_t n_tokens;
    uint16_t n_layers_total, layer_begin, n_layers;
    uint16_t n_kv_heads, head_dim, head_dim_padded;
    uint8_t src_dtype, codebook, n_recipes;
    tq_recipe recipes[TQ_MAX_RECIPES];
} tq_block_view;

#define TQ_PARSE_NO_CHECKSUM 1u /* skip the per-layer payload checksums (header still checked) */

/* Validates everything (magic, version, sizes, offsets, overflow, recipes, header checksum and,
 * unless flags has TQ_PARSE_NO_CHECKSUM, every layer checksum) before filling `out`.
 * Protected against malicious input. @return 0 or a specific TQKV_E* code (EBADMAGIC,
 * EBADVERSION, ETRUNCATED, EBADHEADER, EBADGEOMETRY, EBADCODEC, EBADOFFSET, EHDRCHECKSUM,
 * ECHECKSUM, ...). */
int tq_block_parse(const void *buf, size_t len, unsigned flags, tq_block_view *out);

/* Layer `layer` (absolute index, within the view's range) tensor `t`: section pointer, length
 * and recipe. @return 0 or TQKV_EBADLAYERS. */
int tq_block_section(const tq_block_view *b, uint32_t layer, tq_tensor t, const uint8_t **sec,
                     size_t *sec_len, tq_recipe *r);

/* Decodes layers [layer_begin, layer_begin + n_layers) to dst laid out like
 * tq_block_encode_packed's input: [n_layers][2][n_tokens][n_kv_heads][head_dim] of out_dtype. */
int tq_block_decode(const tq_block_view *b, uint32_t layer_begin, uint32_t n_layers,
                    tq_dtype out_dtype, void *dst, size_t dst_cap);

/* Cuts a sub-block holding layers [layer_begin, layer_begin + n_layers) (FORMAT.md). */
size_t tq_block_slice_size(const tq_block_view *b, uint32_t layer_begin, uint32_t n_layers);
int tq_block_slice(const tq_block_view *b, uint32_t layer_begin, uint32_t n_layers, void *dst,
                   size_t dst_cap, size_t *out_len);

/* ---- Query preparation and scores (CPU) ------------------------------------------------- */

/* A query prepared against one head record: the rotated query of each part, and the QJL sketch
 * S·q' of each prod part. Depends on the head's outlier mask, so it is per (block, layer, head)
 * for outlier recipes and shared by all blocks otherwise. */
typedef struct {
    uint32_t n_parts;
    uint32_t part_dim[2];
    float q_rot[2][TQ_MAX_HEAD_DIM];
    float q_sketch[2][TQ_MAX_HEAD_DIM];
} tq_query_prep;

/* q: [head_dim] floats. section/head: the K section and KV head the query attends to. */
int tq_query_prepare(const tq_recipe *r, uint32_t head_dim, uint32_t n_kv_heads,
                     uint32_t n_tokens, uint64_t seed, const void *section, size_t section_len,
                     uint32_t head, const float *q, tq_query_prep *out);

/* Estimated <q, k_t> for tokens [0, n_tokens) of `head` into scores[n_tokens] (the TurboQuant
 * estimator: MSE part, plus the QJL term for prod recipes). */
int tq_scores(const tq_recipe *r, uint32_t head_dim, uint32_t n_kv_heads, uint32_t n_tokens,
              uint64_t seed, tq_codebook_kind cb, const void *section, size_t section_len,
              uint32_t head, const tq_query_prep *q, float *scores);

/* ---- Reference decode attention (CPU) ----------------------------------------------------
 * For each sequence s, its chunks are blocks[chunk_indptr[s] .. chunk_indptr[s+1]) in token
 * order; all blocks must share geometry, codec and seed and hold `layer`. The sequence length
 * is the sum of its chunks' n_tokens.
 *   q   [n_seqs, n_q_heads, head_dim] float32; n_q_heads a multiple of n_kv_heads (GQA: query
 *       head h uses KV head h / (n_q_heads / n_kv_heads))
 *   out [n_seqs, n_q_heads, head_dim] float32, in the original (unrotated) domain.
 * Scores use the rotated query against codebook values (and the QJL estimator for prod keys);
 * values are accumulated in the rotated domain and rotated back once per chunk and head. */
typedef struct {
    uint32_t n_seqs;
    const uint32_t *chunk_indptr;  /* [n_seqs + 1] */
    const tq_block_view *blocks;   /* [chunk_indptr[n_seqs]] */
} tq_chunk_table;

int tq_attention_cpu(const tq_chunk_table *t, uint32_t layer, const float *q, uint32_t n_q_heads,
                     float softmax_scale, float *out);

/* ---- Implementation selection ----------------------------------------------------------- */
typedef enum { TQ_IMPL_AUTO = 0, TQ_IMPL_SCALAR = 1, TQ_IMPL_AVX2 = 2 } tq_impl;
/* Forces the CPU implementation (tests compare them). @return 0, or TQKV_ENOTSUP if the CPU
 * lacks it. */
int tq_set_cpu_impl(tq_impl impl);
tq_impl tq_get_cpu_impl(void);

/* ---- CUDA (compiled when the build has TQKV_CUDA; otherwise these return TQKV_ENODEVICE) --- */

/* Number of usable CUDA devices (0 when none or no CUDA build). */
int tq_cuda_device_count(void);

/* The CUDA API is declared in tq_cuda.h's section below; streams are cudaStream_t passed as
 * void *. All launchers are stream-ordered, do not synchronise, and return errors. */

#ifdef __cplusplus
}
#endif
#endif
