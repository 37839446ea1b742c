/* The encoder behind raw PUTs, chosen by the encode_device setting. The CPU path is libtq's
 * tq_block_encode_packed. The GPU path needs tq_cuda_block_encode (include/tq_cuda.h) plus the
 * host<->device copies and a CUDA stream per worker; that glue is not written yet, so `auto`
 * selects the CPU and `cuda` is refused with TQKV_ENODEVICE rather than pretending. The
 * function pointer is the hook the GPU path will fill. */
#include "codec.h"

#include "server.h"
#include "tqkv_log.h"

static int encode_cpu(const tq_codec_params *p, const uint8_t key[TQ_KEY_BYTES],
                      uint32_t n_tokens, const void *kv, size_t kv_len, void *dst, size_t dst_cap,
                      size_t *out_len)
{
    return tq_block_encode_packed(p, key, n_tokens, kv, kv_len, dst, dst_cap, out_len);
}

tqkvd_encode_fn tqkvd_encode = encode_cpu;
static const char *encoder_name = "cpu";

int tqkvd_codec_select(int device)
{
    switch (device) {
    case TQKVD_ENC_AUTO:
    case TQKVD_ENC_CPU:
        tqkvd_encode = encode_cpu;
        encoder_name = "cpu";
        return 0;
    case TQKVD_ENC_CUDA:
    default:
        TQKV_LOGW("codec", "msg=\"the CUDA encode path is not available in this build of "
                           "tqkvd\" gpus=%d",
                  tq_cuda_device_count());
        return TQKV_ENODEVICE;
    }
}

const char *tqkvd_codec_name(void)
{
    return encoder_name;
}
