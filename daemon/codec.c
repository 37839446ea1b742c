/* The encoder behind raw PUTs, chosen by the encode_device setting: libtq's
 * tq_block_encode_packed on the worker's CPU, or the same bytes encoded on the GPU by a
 * tq_cuda_encoder (include/tq_cuda.h) that each worker thread creates on first use and keeps (its
 * stream and device buffers are reused by every PUT of that thread). `auto` takes the GPU when
 * one is present, `cuda` requires one. A GPU encode that fails for a reason of the device (no
 * memory, a CUDA error) falls back to the CPU for that request, logged once per thread; errors
 * of the request itself (bad length, no space) are answered as they are. */
#include "codec.h"

#include "server.h"
#include "tq_cuda.h"
#include "tqkv_log.h"

static int encode_cpu(const tq_codec_params *p, const uint8_t key[TQ_KEY_BYTES],
                      uint32_t n_tokens, const void *kv, size_t kv_len, void *dst, size_t dst_cap,
                      size_t *out_len)
{
    return tq_block_encode_packed(p, key, n_tokens, kv, kv_len, dst, dst_cap, out_len);
}

static _Thread_local tq_cuda_encoder *tl_encoder;
static _Thread_local int tl_gpu_failed; /* this thread could not get an encoder: CPU from now */

static int encode_gpu(const tq_codec_params *p, const uint8_t key[TQ_KEY_BYTES],
                      uint32_t n_tokens, const void *kv, size_t kv_len, void *dst, size_t dst_cap,
                      size_t *out_len)
{
    if (!tl_encoder && !tl_gpu_failed) {
        int rc = tq_cuda_encoder_create(&tl_encoder);
        if (rc) {
            tl_gpu_failed = 1;
            TQKV_LOGW("codec", "msg=\"no GPU encoder for this worker, encoding on the CPU\" "
                               "error=%s",
                      tqkv_strerror(rc));
        }
    }
    if (!tl_encoder)
        return encode_cpu(p, key, n_tokens, kv, kv_len, dst, dst_cap, out_len);
    int rc = tq_cuda_encoder_encode_packed(tl_encoder, p, key, n_tokens, kv, kv_len, dst, dst_cap,
                                           out_len);
    if (rc == TQKV_ENOMEM || rc == TQKV_ECUDA) {
        TQKV_LOGW("codec", "msg=\"GPU encode failed, encoding on the CPU\" error=%s",
                  tqkv_strerror(rc));
        rc = encode_cpu(p, key, n_tokens, kv, kv_len, dst, dst_cap, out_len);
    }
    return rc;
}

tqkvd_encode_fn tqkvd_encode = encode_cpu;
static const char *encoder_name = "cpu";

int tqkvd_codec_select(int device)
{
    const int gpus = tq_cuda_device_count();
    if (device == TQKVD_ENC_CUDA && gpus <= 0) {
        TQKV_LOGW("codec", "msg=\"encode_device=cuda but no CUDA device is usable\" gpus=%d",
                  gpus);
        return TQKV_ENODEVICE;
    }
    if (device == TQKVD_ENC_CPU || (device == TQKVD_ENC_AUTO && gpus <= 0)) {
        tqkvd_encode = encode_cpu;
        encoder_name = "cpu";
    } else {
        tqkvd_encode = encode_gpu;
        encoder_name = "cuda";
    }
    return 0;
}

const char *tqkvd_codec_name(void)
{
    return encoder_name;
}
