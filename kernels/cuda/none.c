/* The CUDA entry points of libtq in a build without CUDA (TQKV_CUDA=OFF): they exist so that
 * programs link the same way everywhere, and answer that there is no device. */
#include "tq_cuda.h"

int tq_cuda_device_count(void)
{
    return 0;
}

int tq_cuda_encode_section(const tq_recipe *r, uint32_t head_dim, uint32_t n_kv_heads,
                           uint32_t n_tokens, uint64_t seed, tq_codebook_kind cb,
                           const tq_kv_view *src, void *dst, size_t dst_cap, void *stream)
{
    return TQKV_ENODEVICE;
}

int tq_cuda_decode_section(const tq_recipe *r, uint32_t head_dim, uint32_t n_kv_heads,
                           uint32_t n_tokens, uint64_t seed, tq_codebook_kind cb,
                           const void *section, size_t section_len, tq_dtype out_dtype, void *dst,
                           size_t dst_cap, void *stream)
{
    return TQKV_ENODEVICE;
}

int tq_cuda_block_encode(const tq_codec_params *p, const uint8_t key[TQ_KEY_BYTES],
                         uint32_t n_tokens, const tq_kv_view *k, const tq_kv_view *v,
                         void *host_block, size_t host_cap, void *dst, size_t dst_cap,
                         size_t *out_len, void *stream)
{
    return TQKV_ENODEVICE;
}

int tq_cuda_block_decode(const tq_block_view *b, const void *dev_block, uint32_t layer_begin,
                         uint32_t n_layers, tq_dtype out_dtype, void *dst, size_t dst_cap,
                         void *stream)
{
    return TQKV_ENODEVICE;
}

int tq_cuda_chunk_from_block(const tq_block_view *b, const void *dev_block, uint32_t layer,
                             tq_cuda_chunk *out)
{
    return TQKV_ENODEVICE;
}

size_t tq_cuda_attention_workspace_size(const tq_cuda_attn_params *p, uint32_t n_seqs,
                                        uint32_t max_chunks)
{
    return 0;
}

int tq_cuda_attention(const tq_cuda_attn_params *p, uint32_t n_seqs, const int32_t *chunk_indptr,
                      const tq_cuda_chunk *chunks, uint32_t max_chunks, const void *q, void *out,
                      void *workspace, size_t workspace_size, void *stream)
{
    return TQKV_ENODEVICE;
}

int tq_cuda_encoder_create(tq_cuda_encoder **out)
{
    if (out)
        *out = NULL;
    return TQKV_ENODEVICE;
}

void tq_cuda_encoder_destroy(tq_cuda_encoder *e)
{
    (void)e;
}

int tq_cuda_encoder_encode_packed(tq_cuda_encoder *e, const tq_codec_params *p,
                                  const uint8_t key[TQ_KEY_BYTES], uint32_t n_tokens,
                                  const void *kv, size_t kv_len, void *dst, size_t dst_cap,
                                  size_t *out_len)
{
    (void)e, (void)p, (void)key, (void)n_tokens, (void)kv, (void)kv_len, (void)dst, (void)dst_cap;
    (void)out_len;
    return TQKV_ENODEVICE;
}
