/* Encoding raw KV that lives in host memory on the GPU (tq_cuda_encoder, include/tq_cuda.h):
 * copy in, tq_cuda_block_encode, copy back, seal on the host. The encoder keeps a stream and two
 * device buffers per thread of its owner, grown to the largest chunk seen, so a steady stream of
 * PUTs allocates nothing. */
#include <stdlib.h>
#include <string.h>

#include "tqc.cuh"

struct tq_cuda_encoder {
    cudaStream_t stream;
    void *d_in, *d_out;
    size_t in_cap, out_cap;
    tq_kv_view *views; /* [2][TQ_MAX_LAYERS]: K views, then V views */
};

extern "C" int tq_cuda_encoder_create(tq_cuda_encoder **out)
{
    if (!out)
        return TQKV_EINVAL;
    *out = NULL;
    if (tq_cuda_device_count() <= 0)
        return TQKV_ENODEVICE;
    tq_cuda_encoder *e = (tq_cuda_encoder *)calloc(1, sizeof(*e));
    if (!e)
        return TQKV_ENOMEM;
    e->views = (tq_kv_view *)calloc(2 * (size_t)TQ_MAX_LAYERS, sizeof(tq_kv_view));
    int rc = e->views ? 0 : TQKV_ENOMEM;
    if (!rc)
        rc = tqkv__cuda_err(cudaStreamCreateWithFlags(&e->stream, cudaStreamNonBlocking),
                            "encoder stream");
    if (rc) {
        free(e->views);
        free(e);
        return rc;
    }
    *out = e;
    return 0;
}

extern "C" void tq_cuda_encoder_destroy(tq_cuda_encoder *e)
{
    if (!e)
        return;
    cudaStreamSynchronize(e->stream);
    cudaFree(e->d_in);
    cudaFree(e->d_out);
    cudaStreamDestroy(e->stream);
    free(e->views);
    free(e);
}

/* Makes *buf hold at least n bytes (contents not kept). */
static int grow(void **buf, size_t *cap, size_t n, const char *what)
{
    if (*cap >= n)
        return 0;
    cudaFree(*buf);
    *buf = NULL;
    *cap = 0;
    int rc = tqkv__cuda_err(cudaMalloc(buf, n), what);
    if (!rc)
        *cap = n;
    return rc;
}

extern "C" int tq_cuda_encoder_encode_packed(tq_cuda_encoder *e, const tq_codec_params *p,
                                             const uint8_t key[TQ_KEY_BYTES], uint32_t n_tokens,
                                             const void *kv, size_t kv_len, void *dst,
                                             size_t dst_cap, size_t *out_len)
{
    if (!e || !p || !key || !kv || !dst)
        return TQKV_EINVAL;
    size_t per;
    int rc = tqkv__packed_check(p, n_tokens, kv_len, &per);
    if (rc)
        return rc;
    const size_t bsz = tq_block_size(p, n_tokens, 0, p->n_layers);
    if (!bsz)
        return TQKV_EBADGEOMETRY;
    if (dst_cap < bsz)
        return TQKV_ENOSPC;
    rc = grow(&e->d_in, &e->in_cap, kv_len, "encoder input buffer");
    if (!rc)
        rc = grow(&e->d_out, &e->out_cap, bsz, "encoder block buffer");
    if (rc)
        return rc;
    rc = tqkv__cuda_err(
        cudaMemcpyAsync(e->d_in, kv, kv_len, cudaMemcpyHostToDevice, e->stream), "KV copy in");
    if (rc)
        return rc;
    tq_kv_view *kvw = e->views, *vvw = e->views + TQ_MAX_LAYERS;
    for (uint32_t l = 0; l < p->n_layers; l++) {
        const uint8_t *base = (const uint8_t *)e->d_in + per * 2 * l;
        kvw[l] = tq_kv_view_contiguous(base, (tq_dtype)p->src_dtype, p->n_kv_heads, p->head_dim);
        vvw[l] = tq_kv_view_contiguous(base + per, (tq_dtype)p->src_dtype, p->n_kv_heads,
                                       p->head_dim);
    }
    size_t len = 0;
    /* dst holds the header the device copy starts from; the copy back brings the same bytes */
    rc = tq_cuda_block_encode(p, key, n_tokens, kvw, vvw, dst, dst_cap, e->d_out, e->out_cap,
                              &len, e->stream);
    if (!rc)
        rc = tqkv__cuda_err(
            cudaMemcpyAsync(dst, e->d_out, len, cudaMemcpyDeviceToHost, e->stream),
            "block copy out");
    /* wait even after an error: the stream may still read kv or write dst */
    int sync = tqkv__cuda_err(cudaStreamSynchronize(e->stream), "encoder stream");
    if (!rc)
        rc = sync;
    if (!rc)
        rc = tq_block_seal(dst, len);
    if (!rc && out_len)
        *out_len = len;
    return rc;
}
