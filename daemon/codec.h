/* The raw-PUT encoder hook of tqkvd (codec.c): a function pointer selected by the
 * encode_device setting. Called on worker threads. */
#ifndef TQKVD_CODEC_H
#define TQKVD_CODEC_H

#include "tq.h"

/* Encodes one chunk given as packed raw KV into a sealed block (tq_block_encode_packed's
 * contract). */
typedef int (*tqkvd_encode_fn)(const tq_codec_params *p, const uint8_t key[TQ_KEY_BYTES],
                               uint32_t n_tokens, const void *kv, size_t kv_len, void *dst,
                               size_t dst_cap, size_t *out_len);

/* The encoder in use; changed only on the loop thread by tqkvd_codec_select, read by workers
 * (a pointer-sized store: a worker sees the old or the new encoder, both valid). */
extern tqkvd_encode_fn tqkvd_encode;

#endif
