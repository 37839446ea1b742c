/* GPU encode throughput against a device-to-device copy of the same input bytes in the same run.
 * Bandwidth counts bytes read plus bytes written over the time (cudaEvent), for both.
 *   - "section": tq_cuda_encode_section over 8 sections (4 K, 4 V) of 32768 tokens x 8 KV heads
 *     x d 128 fp16 (512 MiB in), called from the host per section; the same line gives the host's
 *     time per call and the GPU time of the same calls replayed from a CUDA graph (no host work
 *     between kernels);
 *   - "block": tq_cuda_block_encode of 16 whole blocks (32 layers x K,V x 256 tokens x 8 heads x
 *     d 128): the per-PUT path, header written on the host per block.
 * One JSON object per line on stdout.
 *   cuda_encode_bench [iters=10] [presets...] */
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tq.h"
#include "tq_cuda.h"

#define CK(x)                                                                                      \
    do {                                                                                           \
        cudaError_t _e = (x);                                                                      \
        if (_e != cudaSuccess) {                                                                   \
            fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(_e));                               \
            return 1;                                                                              \
        }                                                                                          \
    } while (0)

static uint64_t mix(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

enum { ST = 32768, NS = 8, H = 8, D = 128 };

/* One repetition of section mode: NS sections (K, V alternating) of ST tokens, encoded into
 * d_out back to back. @return 0, or 1 after printing the error. */
static int enqueue_sections(const tq_recipe *rk, const tq_recipe *rv, size_t szk, size_t szv,
                            const void *d_in, size_t sec_elems, void *d_out, cudaStream_t st)
{
    uint8_t *o = d_out;
    for (int sct = 0; sct < NS; sct++) {
        const tq_recipe *r = sct & 1 ? rv : rk;
        size_t sz = sct & 1 ? szv : szk;
        tq_kv_view v =
            tq_kv_view_contiguous((const uint16_t *)d_in + sct * sec_elems, TQ_DTYPE_F16, H, D);
        int rc = tq_cuda_encode_section(r, D, H, ST, 7, TQ_CODEBOOK_EXACT, &v, o, sz, st);
        if (rc) {
            fprintf(stderr, "encode: %s\n", tqkv_strerror(rc));
            return 1;
        }
        o += sz;
    }
    return 0;
}

int main(int argc, char **argv)
{
    const uint16_t L = 32;
    const uint32_t T = 256;
    const int nb = 16, iters = argc > 1 ? atoi(argv[1]) : 10;
    static const char *const def[] = {"tq4", "tq3.5", "tq3", "tq2.5", "tq4-prod", "tq3-prod"};
    const char *const *presets = argc > 2 ? (const char *const *)argv + 2 : def;
    int np = argc > 2 ? argc - 2 : 6;
    if (tq_cuda_device_count() <= 0) {
        fprintf(stderr, "no CUDA device\n");
        return 77;
    }
    size_t per = (size_t)T * H * D, blk_in = (size_t)2 * L * per * 2, in_bytes = nb * blk_in;
    size_t sec_elems = (size_t)ST * H * D; /* one section's input = 4 blocks' worth */
    size_t big = (size_t)NS * sec_elems * 2; /* bytes of the section-mode input */
    /* random fp16 KV, N(0,1)-ish values built from 12 uniform bytes (fast, no libm) */
    uint16_t *host = malloc(blk_in);
    if (!host)
        return 1;
    uint64_t s = 42;
    for (size_t i = 0; i < blk_in / 2; i++) {
        uint64_t r = mix(&s);
        int acc = 0;
        for (int b = 0; b < 8; b++)
            acc += (int)((r >> (8 * b)) & 0xff);
        float v = ((float)acc - 1020.0f) / 209.0f; /* ~N(0,1): sum of 8 uniforms, centred */
        uint32_t x;
        memcpy(&x, &v, 4);
        uint32_t ax = x & 0x7fffffffu, sign = (x >> 16) & 0x8000;
        uint16_t h = ax < 0x38800000u ? (uint16_t)sign
                                      : (uint16_t)(sign | ((ax + 0xc8000fffu + ((ax >> 13) & 1)) >> 13));
        host[i] = h;
    }
    void *d_in = NULL, *d_copy = NULL;
    CK(cudaMalloc(&d_in, big));
    CK(cudaMalloc(&d_copy, big));
    for (size_t b = 0; b < big / blk_in; b++)
        CK(cudaMemcpy((uint8_t *)d_in + b * blk_in, host, blk_in, cudaMemcpyHostToDevice));
    cudaStream_t st;
    CK(cudaStreamCreate(&st));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    float ms = 0.0f;

    /* baseline: D2D copy of the input bytes */
    for (int i = 0; i < 2; i++)
        CK(cudaMemcpyAsync(d_copy, d_in, big, cudaMemcpyDeviceToDevice, st));
    CK(cudaEventRecord(e0, st));
    for (int i = 0; i < iters; i++)
        CK(cudaMemcpyAsync(d_copy, d_in, big, cudaMemcpyDeviceToDevice, st));
    CK(cudaEventRecord(e1, st));
    CK(cudaEventSynchronize(e1));
    CK(cudaEventElapsedTime(&ms, e0, e1));
    double copy_s = ms / 1e3 / iters, copy_gbps = 2.0 * big / copy_s / 1e9;
    printf("{\"bench\":\"cuda_d2d_copy\",\"bytes\":%zu,\"ms\":%.4f,\"gbps_rw\":%.1f}\n", big,
           copy_s * 1e3, copy_gbps);
    fflush(stdout);

    /* section mode */
    for (int pi = 0; pi < np; pi++) {
        tq_recipe rk, rv;
        if (tq_preset(presets[pi], D, &rk, &rv)) {
            fprintf(stderr, "bad preset %s\n", presets[pi]);
            return 1;
        }
        size_t szk = tq_section_size(&rk, D, H, ST), szv = tq_section_size(&rv, D, H, ST);
        size_t out_bytes = (size_t)(NS / 2) * (szk + szv);
        void *d_out = NULL;
        CK(cudaMalloc(&d_out, out_bytes));
        double host_s = 0.0;
        for (int rep = 0; rep < iters + 2; rep++) {
            if (rep == 2) {
                CK(cudaEventRecord(e0, st));
                host_s = now_s();
            }
            if (enqueue_sections(&rk, &rv, szk, szv, d_in, sec_elems, d_out, st))
                return 1;
        }
        host_s = now_s() - host_s;
        CK(cudaEventRecord(e1, st));
        CK(cudaEventSynchronize(e1));
        CK(cudaEventElapsedTime(&ms, e0, e1));
        double enc_s = ms / 1e3 / iters, gbps = ((double)big + out_bytes) / enc_s / 1e9;
        /* the same calls captured once in a CUDA graph and replayed: the GPU's time without the
         * host's per-call work (launch gaps when the host is slower than the kernels) */
        cudaGraph_t graph;
        cudaGraphExec_t gexec;
        CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
        if (enqueue_sections(&rk, &rv, szk, szv, d_in, sec_elems, d_out, st))
            return 1;
        CK(cudaStreamEndCapture(st, &graph));
        CK(cudaGraphInstantiate(&gexec, graph, 0));
        for (int i = 0; i < 2; i++)
            CK(cudaGraphLaunch(gexec, st));
        CK(cudaEventRecord(e0, st));
        for (int i = 0; i < iters; i++)
            CK(cudaGraphLaunch(gexec, st));
        CK(cudaEventRecord(e1, st));
        CK(cudaEventSynchronize(e1));
        CK(cudaEventElapsedTime(&ms, e0, e1));
        double g_s = ms / 1e3 / iters, g_gbps = ((double)big + out_bytes) / g_s / 1e9;
        cudaGraphExecDestroy(gexec);
        cudaGraphDestroy(graph);
        printf("{\"bench\":\"cuda_encode\",\"mode\":\"section\",\"preset\":\"%s\",\"sections\":%d,"
               "\"tokens\":%u,\"kv_heads\":%u,\"head_dim\":%u,\"in_bytes\":%zu,"
               "\"out_bytes\":%zu,\"ms\":%.4f,\"gbps_rw\":%.1f,\"input_gbps\":%.1f,"
               "\"vs_d2d\":%.3f,\"host_us_per_call\":%.1f,\"graph_ms\":%.4f,"
               "\"graph_vs_d2d\":%.3f}\n",
               presets[pi], NS, ST, H, D, big, out_bytes, enc_s * 1e3, gbps, big / enc_s / 1e9,
               gbps / copy_gbps, host_s / iters / NS * 1e6, g_s * 1e3, g_gbps / copy_gbps);
        fflush(stdout);
        cudaFree(d_out);
    }

    uint8_t key[TQ_KEY_BYTES] = {1};
    for (int pi = 0; pi < np; pi++) {
        tq_codec_params p;
        if (tq_codec_params_init(&p, presets[pi], L, H, D, TQ_DTYPE_F16)) {
            fprintf(stderr, "bad preset %s\n", presets[pi]);
            return 1;
        }
        size_t bsz = tq_block_size(&p, T, 0, L), out_len = 0;
        void *d_out = NULL, *h_blk = NULL;
        CK(cudaMalloc(&d_out, nb * bsz));
        CK(cudaMallocHost(&h_blk, nb * bsz));
        tq_kv_view kv[2][32];
        for (int rep = 0; rep < iters + 2; rep++) {
            if (rep == 2)
                CK(cudaEventRecord(e0, st));
            for (int b = 0; b < nb; b++) {
                const uint16_t *base = (const uint16_t *)((uint8_t *)d_in + b * blk_in);
                for (int l = 0; l < L; l++)
                    for (int t = 0; t < 2; t++)
                        kv[t][l] = tq_kv_view_contiguous(base + (2 * l + t) * per, TQ_DTYPE_F16,
                                                         H, D);
                int rc = tq_cuda_block_encode(&p, key, T, kv[0], kv[1], (uint8_t *)h_blk + b * bsz,
                                              bsz, (uint8_t *)d_out + b * bsz, bsz, &out_len, st);
                if (rc) {
                    fprintf(stderr, "encode: %s\n", tqkv_strerror(rc));
                    return 1;
                }
            }
        }
        CK(cudaEventRecord(e1, st));
        CK(cudaEventSynchronize(e1));
        CK(cudaEventElapsedTime(&ms, e0, e1));
        double enc_s = ms / 1e3 / iters, out_bytes = (double)nb * bsz;
        double gbps = (in_bytes + out_bytes) / enc_s / 1e9;
        /* the block is complete: seal one on the host and check it parses */
        CK(cudaMemcpy(h_blk, d_out, bsz, cudaMemcpyDeviceToHost));
        tq_block_view bv;
        int ok = !tq_block_seal(h_blk, bsz) && !tq_block_parse(h_blk, bsz, 0, &bv);
        printf("{\"bench\":\"cuda_encode\",\"mode\":\"block\",\"preset\":\"%s\",\"blocks\":%d,\"layers\":%u,"
               "\"tokens\":%u,\"kv_heads\":%u,\"head_dim\":%u,\"in_bytes\":%zu,\"out_bytes\":%.0f,"
               "\"ms\":%.4f,\"gbps_rw\":%.1f,\"input_gbps\":%.1f,\"vs_d2d\":%.3f,"
               "\"block_valid\":%s}\n",
               presets[pi], nb, L, T, H, D, in_bytes, out_bytes, enc_s * 1e3, gbps,
               in_bytes / enc_s / 1e9, gbps / copy_gbps, ok ? "true" : "false");
        fflush(stdout);
        cudaFree(d_out);
        cudaFreeHost(h_blk);
    }
    cudaFree(d_in);
    cudaFree(d_copy);
    free(host);
    return 0;
}
