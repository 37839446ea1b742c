/* Blocks (FORMAT.md): writing the header, recipe table and layer table, encoding every layer's
 * sections, sealing with XXH3-64 checksums, and the parser that validates every field of an
 * untrusted block before anything else reads it. Also layer-range slicing and block decode.
 * The layout is canonical: given the header and the recipes, every offset is determined, and the
 * parser accepts nothing else, so two encoders of the same chunk write the same bytes. */
#include <string.h>
#include <xxhash.h>

#include "tq_internal.h"
#include "tqkv_alloc.h"
#include "tqkv_endian.h"

#define HDR_SIZE 128
#define RECIPE_SIZE 16
#define LAYER_SIZE 32
#define TQ_DEFAULT_SEED 0x74716B7631ull /* "tqkv1" */

_Static_assert(HDR_SIZE == 120 + 8, "header_xxh3 ends the header");
_Static_assert(TQ_MAX_RECIPES * RECIPE_SIZE + HDR_SIZE + TQ_MAX_LAYERS * LAYER_SIZE < 65536,
               "table bytes fit comfortably in 32-bit offsets");

static const uint8_t g_magic[8] = {'T', 'Q', 'K', 'V', 'B', 'L', 'K', '1'};

static uint64_t align64(uint64_t x) { return (x + 63) & ~(uint64_t)63; }

static const tq_recipe *layer_recipe(const tq_codec_params *p, uint32_t l, tq_tensor t)
{
    if (t == TQ_K)
        return p->k_layers ? &p->k_layers[l] : &p->k;
    return p->v_layers ? &p->v_layers[l] : &p->v;
}

static int recipe_eq(const tq_recipe *a, const tq_recipe *b)
{
    return a->mode == b->mode && a->bits == b->bits && a->out_bits == b->out_bits &&
           a->norm == b->norm && a->n_out == b->n_out && a->raw_dtype == b->raw_dtype;
}

int tq_codec_params_init(tq_codec_params *p, const char *preset, uint16_t n_layers,
                         uint16_t n_kv_heads, uint16_t head_dim, tq_dtype src_dtype)
{
    if (!p)
        return TQKV_EINVAL;
    memset(p, 0, sizeof(*p));
    p->n_layers = n_layers;
    p->n_kv_heads = n_kv_heads;
    p->head_dim = head_dim;
    p->src_dtype = (uint8_t)src_dtype;
    p->codebook = TQ_CODEBOOK_EXACT;
    p->seed = TQ_DEFAULT_SEED;
    int rc = tq_preset(preset, head_dim, &p->k, &p->v);
    if (rc == TQKV_EINVAL)
        return TQKV_EBADGEOMETRY;
    if (rc)
        return rc;
    return tq_codec_params_validate(p);
}

/* Unique recipes of layers [lb, lb + nl) in order of first use (K before V); idx[l][t]. */
static int collect_recipes(const tq_codec_params *p, uint32_t lb, uint32_t nl,
                           tq_recipe *list, uint8_t *n_list, uint8_t (*idx)[2])
{
    uint8_t n = 0;
    for (uint32_t l = 0; l < nl; l++)
        for (int t = 0; t < 2; t++) {
            const tq_recipe *r = layer_recipe(p, lb + l, (tq_tensor)t);
            uint8_t i;
            for (i = 0; i < n; i++)
                if (recipe_eq(&list[i], r))
                    break;
            if (i == n) {
                if (n == TQ_MAX_RECIPES)
                    return TQKV_EBADCODEC;
                list[n++] = *r;
            }
            if (idx)
                idx[l][t] = i;
        }
    *n_list = n;
    return 0;
}

int tq_codec_params_validate(const tq_codec_params *p)
{
    if (!p)
        return TQKV_EINVAL;
    if (p->n_layers < 1 || p->n_layers > TQ_MAX_LAYERS || p->n_kv_heads < 1 ||
        p->n_kv_heads > TQ_MAX_KV_HEADS || p->head_dim < 1 || p->head_dim > TQ_MAX_HEAD_DIM)
        return TQKV_EBADGEOMETRY;
    if (!tq_dtype_size((tq_dtype)p->src_dtype))
        return TQKV_EBADGEOMETRY;
    if (p->codebook != TQ_CODEBOOK_EXACT && p->codebook != TQ_CODEBOOK_GAUSSIAN)
        return TQKV_EBADCODEC;
    for (uint32_t l = 0; l < p->n_layers; l++)
        for (int t = 0; t < 2; t++)
            if (tq_recipe_validate(layer_recipe(p, l, (tq_tensor)t), p->head_dim))
                return TQKV_EBADCODEC;
    tq_recipe list[TQ_MAX_RECIPES];
    uint8_t n;
    return collect_recipes(p, 0, p->n_layers, list, &n, NULL);
}

/* Offsets of a canonical block. */
typedef struct {
    uint8_t n_recipes;
    tq_recipe recipes[TQ_MAX_RECIPES];
    uint8_t idx[TQ_MAX_LAYERS][2];
    uint64_t payload_offset, total;
    uint64_t koff[TQ_MAX_LAYERS];
    uint32_t ksz[TQ_MAX_LAYERS], vsz[TQ_MAX_LAYERS];
} plan;

static int make_plan(const tq_codec_params *p, uint32_t T, uint32_t lb, uint32_t nl, plan *pl)
{
    int rc = tq_codec_params_validate(p);
    if (rc)
        return rc;
    if (T < 1 || T > TQ_MAX_TOKENS || nl < 1 || lb + nl > p->n_layers)
        return T < 1 || T > TQ_MAX_TOKENS ? TQKV_EBADGEOMETRY : TQKV_EBADLAYERS;
    rc = collect_recipes(p, lb, nl, pl->recipes, &pl->n_recipes, pl->idx);
    if (rc)
        return rc;
    pl->payload_offset = align64(HDR_SIZE + RECIPE_SIZE * pl->n_recipes + LAYER_SIZE * nl);
    uint64_t off = pl->payload_offset;
    for (uint32_t l = 0; l < nl; l++) {
        size_t k = tq_section_size(&pl->recipes[pl->idx[l][0]], p->head_dim, p->n_kv_heads, T);
        size_t v = tq_section_size(&pl->recipes[pl->idx[l][1]], p->head_dim, p->n_kv_heads, T);
        if (!k || !v)
            return TQKV_EBADGEOMETRY;
        pl->koff[l] = off;
        pl->ksz[l] = (uint32_t)k;
        pl->vsz[l] = (uint32_t)v;
        off = align64(align64(off + k) + v);
    }
    pl->total = off;
    return 0;
}

size_t tq_block_size(const tq_codec_params *p, uint32_t n_tokens, uint32_t layer_begin,
                     uint32_t n_layers)
{
    plan *pl = tqkv_malloc(sizeof(*pl));
    if (!pl)
        return 0;
    size_t s = make_plan(p, n_tokens, layer_begin, n_layers, pl) ? 0 : (size_t)pl->total;
    tqkv_free(pl);
    return s;
}

static void write_recipe(uint8_t *d, const tq_recipe *r)
{
    memset(d, 0, RECIPE_SIZE);
    d[0] = r->mode;
    d[1] = r->bits;
    d[2] = r->out_bits;
    d[3] = r->norm;
    tqkv_store_le16(d + 4, r->n_out);
    d[6] = r->raw_dtype;
}

static void read_recipe(const uint8_t *d, tq_recipe *r)
{
    r->mode = d[0];
    r->bits = d[1];
    r->out_bits = d[2];
    r->norm = d[3];
    r->n_out = tqkv_load_le16(d + 4);
    r->raw_dtype = d[6];
}

static void write_tables(const tq_codec_params *p, const uint8_t *key, uint32_t T,
                         const plan *pl, uint32_t nl, uint8_t *d)
{
    /* Zero what no section encoder writes: the header area and the alignment gaps between and
     * after the sections (tq_encode_section zeroes its own padding). Not the whole block: a
     * GPU producer copies only the header area to the device, and zeroing megabytes on the
     * host made block encodes host-bound. */
    memset(d, 0, pl->payload_offset);
    for (uint32_t l = 0; l < nl; l++) {
        const uint64_t kend = pl->koff[l] + pl->ksz[l], voff = align64(kend);
        const uint64_t vend = voff + pl->vsz[l];
        const uint64_t next = l + 1 < nl ? pl->koff[l + 1] : pl->total;
        memset(d + kend, 0, (size_t)(voff - kend));
        memset(d + vend, 0, (size_t)(next - vend));
    }
    memcpy(d, g_magic, 8);
    tqkv_store_le16(d + 8, TQ_FORMAT_VERSION);
    tqkv_store_le16(d + 10, HDR_SIZE);
    tqkv_store_le32(d + 12, 0);
    memcpy(d + 16, key, TQ_KEY_BYTES);
    tqkv_store_le64(d + 48, pl->total);
    tqkv_store_le64(d + 56, p->seed);
    tqkv_store_le32(d + 64, T);
    tqkv_store_le16(d + 68, p->n_layers);
    tqkv_store_le16(d + 70, 0);
    tqkv_store_le16(d + 72, (uint16_t)nl);
    tqkv_store_le16(d + 74, p->n_kv_heads);
    tqkv_store_le16(d + 76, p->head_dim);
    tqkv_store_le16(d + 78, (uint16_t)tq_head_dim_padded(p->head_dim));
    d[80] = p->src_dtype;
    d[81] = p->codebook;
    d[82] = pl->n_recipes;
    tqkv_store_le32(d + 84, (uint32_t)pl->payload_offset);
    for (uint32_t i = 0; i < pl->n_recipes; i++)
        write_recipe(d + HDR_SIZE + RECIPE_SIZE * i, &pl->recipes[i]);
    uint8_t *lt = d + HDR_SIZE + RECIPE_SIZE * pl->n_recipes;
    for (uint32_t l = 0; l < nl; l++) {
        uint8_t *e = lt + LAYER_SIZE * l;
        tqkv_store_le64(e, pl->koff[l]);
        tqkv_store_le32(e + 8, pl->ksz[l]);
        tqkv_store_le32(e + 12, pl->vsz[l]);
        e[16] = pl->idx[l][0];
        e[17] = pl->idx[l][1];
    }
}

int tq_block_write_header(const tq_codec_params *p, const uint8_t key[TQ_KEY_BYTES],
                          uint32_t n_tokens, void *dst, size_t dst_cap, size_t *out_len)
{
    if (!p || !key || !dst)
        return TQKV_EINVAL;
    plan *pl = tqkv_malloc(sizeof(*pl));
    if (!pl)
        return TQKV_ENOMEM;
    int rc = make_plan(p, n_tokens, 0, p->n_layers, pl);
    if (rc)
        goto out;
    if (dst_cap < pl->total) {
        rc = TQKV_ENOSPC;
        goto out;
    }
    write_tables(p, key, n_tokens, pl, p->n_layers, dst);
    if (out_len)
        *out_len = (size_t)pl->total;
out:
    tqkv_free(pl);
    return rc;
}

static uint64_t header_hash(const uint8_t *b, uint64_t payload_offset, int *rc)
{
    uint8_t *tmp = tqkv_malloc((size_t)payload_offset);
    if (!tmp) {
        *rc = TQKV_ENOMEM;
        return 0;
    }
    memcpy(tmp, b, (size_t)payload_offset);
    memset(tmp + 120, 0, 8);
    uint64_t h = XXH3_64bits(tmp, (size_t)payload_offset);
    tqkv_free(tmp);
    *rc = 0;
    return h;
}

/* Structural parse shared by tq_block_parse and tq_block_seal. */
static int parse(const uint8_t *b, size_t len, unsigned flags, int check_hdr_sum,
                 int check_layers, tq_block_view *out);

int tq_block_seal(void *block, size_t len)
{
    tq_block_view v;
    if (!block)
        return TQKV_EINVAL;
    int rc = parse(block, len, 0, 0, 0, &v);
    if (rc)
        return rc;
    uint8_t *b = block;
    uint8_t *lt = b + HDR_SIZE + RECIPE_SIZE * v.n_recipes;
    for (uint32_t l = 0; l < v.n_layers; l++) {
        uint8_t *e = lt + LAYER_SIZE * l;
        uint64_t koff = tqkv_load_le64(e);
        uint64_t end = align64(align64(koff + tqkv_load_le32(e + 8)) + tqkv_load_le32(e + 12));
        tqkv_store_le64(e + 24, XXH3_64bits(b + koff, (size_t)(end - koff)));
    }
    uint64_t h = header_hash(b, tqkv_load_le32(b + 84), &rc);
    if (rc)
        return rc;
    tqkv_store_le64(b + 120, h);
    return 0;
}

static int is_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

static int check_masks(const tq_block_view *v, const uint8_t *sec, const tq_recipe *r)
{
    if (r->mode == TQ_MODE_RAW || !r->n_out)
        return 0;
    tq__layout L;
    tqkv__layout(r, v->head_dim_padded, v->n_tokens, &L);
    for (uint32_t h = 0; h < v->n_kv_heads; h++) {
        const uint8_t *rec = sec + (size_t)h * L.record_size;
        uint32_t cnt = 0;
        for (uint32_t i = 0; i < L.mask_words; i++)
            cnt += (uint32_t)__builtin_popcount(tqkv_load_le32(rec + 4 * i));
        if (cnt != r->n_out)
            return TQKV_EBADMASK;
    }
    return 0;
}

static int parse(const uint8_t *b, size_t len, unsigned flags, int check_hdr_sum,
                 int check_layers, tq_block_view *out)
{
    int rc;
    (void)flags;
    if (len < HDR_SIZE)
        return TQKV_ETRUNCATED;
    if (memcmp(b, g_magic, 8))
        return TQKV_EBADMAGIC;
    if (tqkv_load_le16(b + 8) != TQ_FORMAT_VERSION)
        return TQKV_EBADVERSION;
    if (tqkv_load_le16(b + 10) != HDR_SIZE)
        return TQKV_EBADHEADER;
    uint64_t total = tqkv_load_le64(b + 48);
    if (total > len)
        return TQKV_ETRUNCATED;
    if (total != len)
        return TQKV_EBADHEADER;
    uint32_t n_layers = tqkv_load_le16(b + 72), n_recipes = b[82];
    if (n_recipes < 1 || n_recipes > TQ_MAX_RECIPES)
        return TQKV_EBADCODEC;
    if (n_layers < 1 || n_layers > TQ_MAX_LAYERS)
        return TQKV_EBADLAYERS;
    uint64_t payload_offset = align64(HDR_SIZE + RECIPE_SIZE * n_recipes + LAYER_SIZE * n_layers);
    if (tqkv_load_le32(b + 84) != payload_offset)
        return TQKV_EBADOFFSET;
    if (payload_offset > len)
        return TQKV_ETRUNCATED;
    if (check_hdr_sum) {
        uint64_t h = header_hash(b, payload_offset, &rc);
        if (rc)
            return rc;
        if (h != tqkv_load_le64(b + 120))
            return TQKV_EHDRCHECKSUM;
    }
    /* From here on the header is what its writer sealed; still, a malicious writer can seal
     * anything, so every field is checked. */
    tq_block_view v;
    memset(&v, 0, sizeof(v));
    v.base = b;
    v.len = len;
    v.flags = tqkv_load_le32(b + 12);
    if (v.flags & ~1u)
        return TQKV_EBADHEADER;
    if (b[83] || !is_zero(b + 88, 32))
        return TQKV_EBADPADDING;
    memcpy(v.key, b + 16, TQ_KEY_BYTES);
    v.seed = tqkv_load_le64(b + 56);
    v.n_tokens = tqkv_load_le32(b + 64);
    v.n_layers_total = tqkv_load_le16(b + 68);
    v.layer_begin = tqkv_load_le16(b + 70);
    v.n_layers = (uint16_t)n_layers;
    v.n_kv_heads = tqkv_load_le16(b + 74);
    v.head_dim = tqkv_load_le16(b + 76);
    v.head_dim_padded = tqkv_load_le16(b + 78);
    v.src_dtype = b[80];
    v.codebook = b[81];
    v.n_recipes = (uint8_t)n_recipes;
    if (v.n_tokens < 1 || v.n_tokens > TQ_MAX_TOKENS || v.n_kv_heads < 1 ||
        v.n_kv_heads > TQ_MAX_KV_HEADS || v.head_dim < 1 || v.head_dim > TQ_MAX_HEAD_DIM ||
        v.head_dim_padded != tq_head_dim_padded(v.head_dim))
        return TQKV_EBADGEOMETRY;
    if (v.n_layers_total < 1 || v.n_layers_total > TQ_MAX_LAYERS ||
        (uint32_t)v.layer_begin + v.n_layers > v.n_layers_total)
        return TQKV_EBADLAYERS;
    if (!tq_dtype_size((tq_dtype)v.src_dtype))
        return TQKV_EBADDTYPE;
    if (v.codebook > TQ_CODEBOOK_GAUSSIAN)
        return TQKV_EBADCODEC;
    if (!(v.flags & 1u) && (v.layer_begin != 0 || v.n_layers != v.n_layers_total))
        return TQKV_EBADLAYERS;
    for (uint32_t i = 0; i < n_recipes; i++) {
        const uint8_t *d = b + HDR_SIZE + RECIPE_SIZE * i;
        read_recipe(d, &v.recipes[i]);
        if (tq_recipe_validate(&v.recipes[i], v.head_dim))
            return TQKV_EBADCODEC;
        if (!is_zero(d + 7, 9))
            return TQKV_EBADPADDING;
    }
    const uint8_t *lt = b + HDR_SIZE + RECIPE_SIZE * n_recipes;
    uint64_t off = payload_offset;
    if (!is_zero(lt + LAYER_SIZE * n_layers, (size_t)(payload_offset - (HDR_SIZE +
                                                  RECIPE_SIZE * n_recipes + LAYER_SIZE * n_layers))))
        return TQKV_EBADPADDING;
    for (uint32_t l = 0; l < n_layers; l++) {
        const uint8_t *e = lt + LAYER_SIZE * l;
        uint64_t koff = tqkv_load_le64(e);
        uint32_t ksz = tqkv_load_le32(e + 8), vsz = tqkv_load_le32(e + 12);
        uint8_t ki = e[16], vi = e[17];
        if (ki >= n_recipes || vi >= n_recipes)
            return TQKV_EBADCODEC;
        if (!is_zero(e + 18, 6))
            return TQKV_EBADPADDING;
        if (koff != off ||
            ksz != tq_section_size(&v.recipes[ki], v.head_dim, v.n_kv_heads, v.n_tokens) ||
            vsz != tq_section_size(&v.recipes[vi], v.head_dim, v.n_kv_heads, v.n_tokens))
            return TQKV_EBADOFFSET;
        uint64_t voff = align64(koff + ksz);
        uint64_t end = align64(voff + vsz);
        if (end > len)
            return TQKV_EBADOFFSET;
        off = end;
    }
    if (off != total)
        return TQKV_EBADOFFSET;
    if (check_layers) {
        for (uint32_t l = 0; l < n_layers; l++) {
            const uint8_t *e = lt + LAYER_SIZE * l;
            uint64_t koff = tqkv_load_le64(e);
            uint64_t end = align64(align64(koff + tqkv_load_le32(e + 8)) + tqkv_load_le32(e + 12));
            if (XXH3_64bits(b + koff, (size_t)(end - koff)) != tqkv_load_le64(e + 24))
                return TQKV_ECHECKSUM;
        }
    }
    /* Semantic checks of the payload that decoding relies on: outlier masks select exactly n_out
     * channels, padding after each section is zero. */
    for (uint32_t l = 0; l < n_layers; l++) {
        const uint8_t *e = lt + LAYER_SIZE * l;
        uint64_t koff = tqkv_load_le64(e);
        uint32_t ksz = tqkv_load_le32(e + 8), vsz = tqkv_load_le32(e + 12);
        uint64_t voff = align64(koff + ksz), end = align64(voff + vsz);
        if (!is_zero(b + koff + ksz, (size_t)(voff - koff - ksz)) ||
            !is_zero(b + voff + vsz, (size_t)(end - voff - vsz)))
            return TQKV_EBADPADDING;
        if ((rc = check_masks(&v, b + koff, &v.recipes[e[16]])) ||
            (rc = check_masks(&v, b + voff, &v.recipes[e[17]])))
            return rc;
    }
    *out = v;
    return 0;
}

int tq_block_parse(const void *buf, size_t len, unsigned flags, tq_block_view *out)
{
    if (!buf || !out)
        return TQKV_EINVAL;
    return parse(buf, len, flags, 1, !(flags & TQ_PARSE_NO_CHECKSUM), out);
}

int tq_block_section(const tq_block_view *b, uint32_t layer, tq_tensor t, const uint8_t **sec,
                     size_t *sec_len, tq_recipe *r)
{
    if (!b || !sec || !sec_len || (t != TQ_K && t != TQ_V))
        return TQKV_EINVAL;
    if (layer < b->layer_begin || layer >= (uint32_t)b->layer_begin + b->n_layers)
        return TQKV_EBADLAYERS;
    const uint8_t *e =
        b->base + HDR_SIZE + RECIPE_SIZE * b->n_recipes + LAYER_SIZE * (layer - b->layer_begin);
    uint64_t koff = tqkv_load_le64(e);
    uint32_t ksz = tqkv_load_le32(e + 8), vsz = tqkv_load_le32(e + 12);
    if (t == TQ_K) {
        *sec = b->base + koff;
        *sec_len = ksz;
    } else {
        *sec = b->base + align64(koff + ksz);
        *sec_len = vsz;
    }
    if (r)
        *r = b->recipes[e[16 + t]];
    return 0;
}

int tq_block_encode(const tq_codec_params *p, const uint8_t key[TQ_KEY_BYTES], uint32_t n_tokens,
                    const tq_kv_view *k, const tq_kv_view *v, void *dst, size_t dst_cap,
                    size_t *out_len)
{
    if (!p || !key || !k || !v || !dst)
        return TQKV_EINVAL;
    plan *pl = tqkv_malloc(sizeof(*pl));
    if (!pl)
        return TQKV_ENOMEM;
    int rc = make_plan(p, n_tokens, 0, p->n_layers, pl);
    if (rc)
        goto out;
    if (dst_cap < pl->total) {
        rc = TQKV_ENOSPC;
        goto out;
    }
    write_tables(p, key, n_tokens, pl, p->n_layers, dst);
    uint8_t *d = dst;
    for (uint32_t l = 0; l < p->n_layers; l++) {
        rc = tq_encode_section(&pl->recipes[pl->idx[l][0]], p->head_dim, p->n_kv_heads, n_tokens,
                               p->seed, (tq_codebook_kind)p->codebook, &k[l], d + pl->koff[l],
                               pl->ksz[l]);
        if (rc)
            goto out;
        rc = tq_encode_section(&pl->recipes[pl->idx[l][1]], p->head_dim, p->n_kv_heads, n_tokens,
                               p->seed, (tq_codebook_kind)p->codebook, &v[l],
                               d + align64(pl->koff[l] + pl->ksz[l]), pl->vsz[l]);
        if (rc)
            goto out;
    }
    rc = tq_block_seal(dst, (size_t)pl->total);
    if (!rc && out_len)
        *out_len = (size_t)pl->total;
out:
    tqkv_free(pl);
    return rc;
}

int tqkv__packed_check(const tq_codec_params *p, uint32_t n_tokens, size_t kv_len, size_t *per)
{
    int rc = tq_codec_params_validate(p);
    if (rc)
        return rc;
    if (n_tokens < 1 || n_tokens > TQ_MAX_TOKENS)
        return TQKV_EBADGEOMETRY;
    *per = (size_t)n_tokens * p->n_kv_heads * p->head_dim * tq_dtype_size((tq_dtype)p->src_dtype);
    return kv_len == *per * 2 * p->n_layers ? 0 : TQKV_EBADGEOMETRY;
}

int tq_block_encode_packed(const tq_codec_params *p, const uint8_t key[TQ_KEY_BYTES],
                           uint32_t n_tokens, const void *kv, size_t kv_len, void *dst,
                           size_t dst_cap, size_t *out_len)
{
    if (!p || !kv)
        return TQKV_EINVAL;
    size_t per;
    int rc = tqkv__packed_check(p, n_tokens, kv_len, &per);
    if (rc)
        return rc;
    tq_kv_view *views = tqkv_mallocarray(2 * (size_t)p->n_layers, sizeof(tq_kv_view));
    if (!views)
        return TQKV_ENOMEM;
    for (uint32_t l = 0; l < p->n_layers; l++)
        for (int t = 0; t < 2; t++)
            views[t * p->n_layers + l] =
                tq_kv_view_contiguous((const uint8_t *)kv + per * (2 * l + t),
                                      (tq_dtype)p->src_dtype, p->n_kv_heads, p->head_dim);
    rc = tq_block_encode(p, key, n_tokens, views, views + p->n_layers, dst, dst_cap, out_len);
    tqkv_free(views);
    return rc;
}

int tqkv__block_decode_check(const tq_block_view *b, uint32_t layer_begin, uint32_t n_layers,
                             tq_dtype out_dtype, size_t dst_cap, size_t *per)
{
    size_t es = tq_dtype_size(out_dtype);
    if (!es)
        return TQKV_EBADDTYPE;
    if (n_layers < 1 || layer_begin < b->layer_begin ||
        (uint64_t)layer_begin + n_layers > (uint64_t)b->layer_begin + b->n_layers)
        return TQKV_EBADLAYERS;
    *per = (size_t)b->n_tokens * b->n_kv_heads * b->head_dim * es;
    return dst_cap / 2 / n_layers < *per ? TQKV_ENOSPC : 0;
}

int tq_block_decode(const tq_block_view *b, uint32_t layer_begin, uint32_t n_layers,
                    tq_dtype out_dtype, void *dst, size_t dst_cap)
{
    if (!b || !dst)
        return TQKV_EINVAL;
    size_t per;
    int err = tqkv__block_decode_check(b, layer_begin, n_layers, out_dtype, dst_cap, &per);
    if (err)
        return err;
    for (uint32_t l = 0; l < n_layers; l++)
        for (int t = 0; t < 2; t++) {
            const uint8_t *sec;
            size_t sl;
            tq_recipe r;
            int rc = tq_block_section(b, layer_begin + l, (tq_tensor)t, &sec, &sl, &r);
            if (!rc)
                rc = tq_decode_section(&r, b->head_dim, b->n_kv_heads, b->n_tokens, b->seed,
                                       (tq_codebook_kind)b->codebook, sec, sl, out_dtype,
                                       (uint8_t *)dst + per * (2 * l + t), per);
            if (rc)
                return rc;
        }
    return 0;
}

size_t tq_block_slice_size(const tq_block_view *b, uint32_t layer_begin, uint32_t n_layers)
{
    if (!b || n_layers < 1 || layer_begin < b->layer_begin ||
        (uint64_t)layer_begin + n_layers > (uint64_t)b->layer_begin + b->n_layers)
        return 0;
    uint64_t size = align64(HDR_SIZE + RECIPE_SIZE * b->n_recipes + LAYER_SIZE * n_layers);
    const uint8_t *lt = b->base + HDR_SIZE + RECIPE_SIZE * b->n_recipes;
    for (uint32_t l = 0; l < n_layers; l++) {
        const uint8_t *e = lt + LAYER_SIZE * (layer_begin - b->layer_begin + l);
        uint64_t koff = tqkv_load_le64(e);
        uint64_t end = align64(align64(koff + tqkv_load_le32(e + 8)) + tqkv_load_le32(e + 12));
        size += end - koff;
    }
    return (size_t)size;
}

int tq_block_slice(const tq_block_view *b, uint32_t layer_begin, uint32_t n_layers, void *dst,
                   size_t dst_cap, size_t *out_len)
{
    size_t size = tq_block_slice_size(b, layer_begin, n_layers);
    if (!size || !dst)
        return b && dst ? TQKV_EBADLAYERS : TQKV_EINVAL;
    if (dst_cap < size)
        return TQKV_ENOSPC;
    uint8_t *d = dst;
    uint64_t po = align64(HDR_SIZE + RECIPE_SIZE * b->n_recipes + LAYER_SIZE * n_layers);
    memset(d, 0, (size_t)po);
    memcpy(d, b->base, HDR_SIZE + RECIPE_SIZE * b->n_recipes);
    const uint8_t *lt = b->base + HDR_SIZE + RECIPE_SIZE * b->n_recipes;
    uint8_t *dlt = d + HDR_SIZE + RECIPE_SIZE * b->n_recipes;
    uint64_t off = po;
    for (uint32_t l = 0; l < n_layers; l++) {
        const uint8_t *e = lt + LAYER_SIZE * (layer_begin - b->layer_begin + l);
        uint64_t koff = tqkv_load_le64(e);
        uint64_t end = align64(align64(koff + tqkv_load_le32(e + 8)) + tqkv_load_le32(e + 12));
        memcpy(dlt + LAYER_SIZE * l, e, LAYER_SIZE);
        tqkv_store_le64(dlt + LAYER_SIZE * l, off);
        memcpy(d + off, b->base + koff, (size_t)(end - koff));
        off += end - koff;
    }
    tqkv_store_le32(d + 12, 1u);
    tqkv_store_le64(d + 48, size);
    tqkv_store_le16(d + 70, (uint16_t)layer_begin);
    tqkv_store_le16(d + 72, (uint16_t)n_layers);
    tqkv_store_le32(d + 84, (uint32_t)po);
    int rc;
    uint64_t h = header_hash(d, po, &rc);
    if (rc)
        return rc;
    tqkv_store_le64(d + 120, h);
    if (out_len)
        *out_len = size;
    return 0;
}
