/* Single-core encode and decode throughput of the CPU codec, per preset, in GB/s of fp16 KV
 * (fp16 input bytes / time), with a memcpy of the same bytes measured in the same run as the
 * baseline. Times are the best of `reps` runs in thread CPU time. One JSON object per line.
 * Usage: tq_cpu_speed [reps] [scalar|avx2|auto] [preset,preset,...] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tq_internal.h"
#include "tq_test_util.h"
#include "tqkv_time.h"

enum { T = 2048, H = 8, D = 128 };

/* Thread CPU time, not wall time: the machine is shared, and a descheduled thread should not
 * count as a slow codec. */
static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double best_of(int reps, int (*fn)(void *), void *arg)
{
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = cpu_now();
        if (fn(arg))
            return -1.0;
        double dt = cpu_now() - t0;
        if (dt < best)
            best = dt;
    }
    return best;
}

typedef struct {
    tq_recipe r;
    tq_kv_view src;
    uint8_t *sec;
    size_t len;
    uint16_t *out;
    size_t out_len;
    const void *in;
} job;

static int do_encode(void *a)
{
    job *j = a;
    return tq_encode_section(&j->r, D, H, T, 1, TQ_CODEBOOK_EXACT, &j->src, j->sec, j->len);
}
static int do_decode(void *a)
{
    job *j = a;
    return tq_decode_section(&j->r, D, H, T, 1, TQ_CODEBOOK_EXACT, j->sec, j->len, TQ_DTYPE_F16,
                             j->out, j->out_len);
}
static int do_memcpy(void *a)
{
    job *j = a;
    memcpy(j->out, j->in, j->out_len);
    return 0;
}

/* Whether name is one of the comma-separated list. */
static int in_list(const char *list, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = list; *p;) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == n && !strncmp(p, name, n))
            return 1;
        p += len + (e ? 1 : 0);
    }
    return 0;
}

int main(int argc, char **argv)
{
    int reps = argc > 1 ? atoi(argv[1]) : 5;
    if (argc > 2)
        tq_set_cpu_impl(!strcmp(argv[2], "scalar") ? TQ_IMPL_SCALAR
                        : !strcmp(argv[2], "avx2") ? TQ_IMPL_AVX2
                                                   : TQ_IMPL_AUTO);
    const char *impl = tq_get_cpu_impl() == TQ_IMPL_AVX2 ? "avx2" : "scalar";
    size_t n = (size_t)T * H * D, bytes = n * 2;
    uint16_t *kv = malloc(bytes);
    tq_rng rng = {.s = 1};
    for (size_t i = 0; i < n; i++)
        kv[i] = tq__f32_to_f16((float)tq_rng_gauss(&rng) * ((i % D) % 31 == 7 ? 10.0f : 1.0f));
    job j = {.src = tq_kv_view_contiguous(kv, TQ_DTYPE_F16, H, D), .in = kv};
    j.out = malloc(bytes);
    j.out_len = bytes;
    double mc = best_of(reps, do_memcpy, &j);
    printf("{\"bench\":\"tq_cpu_speed\",\"op\":\"memcpy\",\"bytes\":%zu,\"gbps\":%.3f}\n", bytes,
           bytes / mc / 1e9);
    for (const char *const *p = tq_preset_names(); *p; p++) {
        if (argc > 3 && !in_list(argv[3], *p))
            continue;
        tq_recipe k, v;
        tq_preset(*p, D, &k, &v);
        for (int t = 0; t < 2; t++) {
            j.r = t ? v : k;
            if (t && !memcmp(&k, &v, sizeof(k)))
                continue; /* same recipe as K */
            j.len = tq_section_size(&j.r, D, H, T);
            j.sec = malloc(j.len);
            do_encode(&j); /* warm the tables */
            double te = best_of(reps, do_encode, &j), td = best_of(reps, do_decode, &j);
            printf("{\"bench\":\"tq_cpu_speed\",\"preset\":\"%s\",\"tensor\":\"%s\","
                   "\"impl\":\"%s\",\"tokens\":%d,\"heads\":%d,\"head_dim\":%d,"
                   "\"encode_gbps\":%.3f,\"decode_gbps\":%.3f,\"encode_ns_per_vector\":%.1f,"
                   "\"decode_ns_per_vector\":%.1f,\"memcpy_gbps\":%.3f}\n",
                   *p, t ? "V" : (memcmp(&k, &v, sizeof(k)) ? "K" : "KV"), impl, T, H, D,
                   bytes / te / 1e9, bytes / td / 1e9, te / (T * H) * 1e9, td / (T * H) * 1e9,
                   bytes / mc / 1e9);
            fflush(stdout);
            free(j.sec);
        }
    }
    free(kv);
    free(j.out);
    return 0;
}
