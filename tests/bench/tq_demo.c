/* Demo: encodes one synthetic multi-layer KV chunk (4 layers, 8 KV heads, head_dim 128, 256
 * tokens, fp16, keys with a few large channels) with every preset and prints a table: the K and
 * V recipes (m = mse, p = prod, out/regular bits for an outlier split), block bytes, ratio
 * against the fp16 KV, the error of the decoded KV, and the error of attention
 * (32 query heads over the chunk, layer 1) against fp32 attention over the original KV. */
#include <stdio.h>
#include <stdlib.h>

#include "tq_internal.h"
#include "tq_test_util.h"

enum { L = 4, H = 8, D = 128, T = 256, NQ = 32 };

static void attend(const float *K, const float *V, const float *q, float *out)
{
    static double s[T];
    for (int hq = 0; hq < NQ; hq++) {
        int h = hq / (NQ / H);
        double mx = -INFINITY, sum = 0;
        for (int t = 0; t < T; t++) {
            double d = 0;
            for (int j = 0; j < D; j++)
                d += (double)q[hq * D + j] * K[((size_t)t * H + h) * D + j];
            s[t] = d / sqrt((double)D);
            mx = s[t] > mx ? s[t] : mx;
        }
        for (int t = 0; t < T; t++)
            sum += (s[t] = exp(s[t] - mx));
        for (int j = 0; j < D; j++) {
            double o = 0;
            for (int t = 0; t < T; t++)
                o += s[t] * V[((size_t)t * H + h) * D + j];
            out[hq * D + j] = (float)(o / sum);
        }
    }
}

/* A recipe as text: m<bits> / p<bits> (mse / prod), m<out>/<bits> with an outlier split, or the
 * raw dtype. */
static void recipe_str(const tq_recipe *r, char *buf, size_t cap)
{
    const char m = r->mode == TQ_MODE_PROD ? 'p' : 'm';
    if (r->mode == TQ_MODE_RAW)
        snprintf(buf, cap, "%s", r->raw_dtype == TQ_DTYPE_F16 ? "f16" : "bf16");
    else if (r->n_out)
        snprintf(buf, cap, "%c%u/%u", m, r->out_bits, r->bits);
    else
        snprintf(buf, cap, "%c%u", m, r->bits);
}

static void cmp(const float *a, const float *b, size_t n, double *cosine, double *rel)
{
    double d = 0, na = 0, nb = 0, e = 0;
    for (size_t i = 0; i < n; i++) {
        d += (double)a[i] * b[i];
        na += (double)a[i] * a[i];
        nb += (double)b[i] * b[i];
        e += (double)(a[i] - b[i]) * (a[i] - b[i]);
    }
    *cosine = d / sqrt(na * nb);
    *rel = sqrt(e / na);
}

int main(void)
{
    size_t per = (size_t)T * H * D, n = per * 2 * L;
    uint16_t *kv = malloc(n * 2);
    float *f = malloc(n * 4), *dec = malloc(n * 4), q[NQ * D], ref[NQ * D], out[NQ * D];
    tq_rng rng = {.s = 7};
    for (size_t i = 0; i < n; i++) {
        int is_k = (i / per) % 2 == 0, j = (int)(i % D);
        float x = (float)tq_rng_gauss(&rng) * (is_k && j % 23 == 4 ? 12.0f : 1.0f);
        kv[i] = tq__f32_to_f16(x);
        f[i] = tq__f16_to_f32(kv[i]);
    }
    for (int i = 0; i < NQ * D; i++)
        q[i] = (float)tq_rng_gauss(&rng) * ((i % D) % 23 == 4 ? 1.0f : 0.3f);
    attend(f + per * 2, f + per * 3, q, ref);
    uint8_t key[TQ_KEY_BYTES] = {1};
    printf("%-11s %-6s %-6s %9s %8s %10s %10s %10s %10s\n", "preset", "K", "V", "bytes", "ratio",
           "kv_cos", "kv_rel", "attn_cos", "attn_rel");
    for (const char *const *p = tq_preset_names(); *p; p++) {
        tq_codec_params cp;
        tq_block_view v;
        size_t len, cap;
        if (tq_codec_params_init(&cp, *p, L, H, D, TQ_DTYPE_F16))
            return 1;
        cap = tq_block_size(&cp, T, 0, L);
        uint8_t *blk = malloc(cap);
        if (tq_block_encode_packed(&cp, key, T, kv, n * 2, blk, cap, &len) ||
            tq_block_parse(blk, len, 0, &v) || tq_block_decode(&v, 0, L, TQ_DTYPE_F32, dec, n * 4))
            return 1;
        double kc, kr, ac, ar;
        cmp(f, dec, n, &kc, &kr);
        tq_chunk_table tab = {.n_seqs = 1, .chunk_indptr = (uint32_t[]){0, 1}, .blocks = &v};
        if (tq_attention_cpu(&tab, 1, q, NQ, 1.0f / sqrtf((float)D), out))
            return 1;
        cmp(ref, out, NQ * D, &ac, &ar);
        char ks[16], vs[16];
        recipe_str(&cp.k, ks, sizeof(ks));
        recipe_str(&cp.v, vs, sizeof(vs));
        printf("%-11s %-6s %-6s %9zu %8.2f %10.5f %10.5f %10.5f %10.5f\n", *p, ks, vs, len,
               (double)n * 2 / len, kc, kr, ac, ar);
        free(blk);
    }
    free(kv);
    free(f);
    free(dec);
    return 0;
}
