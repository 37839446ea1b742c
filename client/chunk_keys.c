/* Chunk keys: the SHA-256 chain of DESIGN.md that names every chunk of KV. Every process, node
 * and language must compute the same 32 bytes for the same tokens, so the input is spelled out
 * byte by byte (little-endian token ids, a domain tag, the namespace, the parent key) and nothing
 * seeded or platform-dependent enters it. Uses OpenSSL's libcrypto (EVP) for SHA-256. */
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

#include "tqkv.h"
#include "tqkv_endian.h"

#define TQKV_CHUNK_TAG "tqkv-chunk-v1"

/* Hashes one chunk: SHA256(tag || ns || parent || n_le32 || tokens_le32...). */
static int chunk_key(EVP_MD_CTX *ctx, const char *ns, size_t ns_len, const uint8_t parent[32],
                     const uint32_t *tokens, uint32_t n, uint8_t out[32])
{
    uint8_t buf[4 * 256];
    unsigned int out_len = 0;

    if (EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1)
        return TQKV_EINTERNAL;
    if (EVP_DigestUpdate(ctx, TQKV_CHUNK_TAG, sizeof(TQKV_CHUNK_TAG) - 1) != 1 ||
        EVP_DigestUpdate(ctx, ns, ns_len) != 1 || EVP_DigestUpdate(ctx, parent, 32) != 1)
        return TQKV_EINTERNAL;
    tqkv_store_le32(buf, n);
    if (EVP_DigestUpdate(ctx, buf, 4) != 1)
        return TQKV_EINTERNAL;
    /* Token ids go through a little-endian staging buffer so that big-endian hosts agree. */
    for (uint32_t done = 0; done < n;) {
        uint32_t m = n - done < 256 ? n - done : 256;
        for (uint32_t i = 0; i < m; i++)
            tqkv_store_le32(buf + 4 * i, tokens[done + i]);
        if (EVP_DigestUpdate(ctx, buf, (size_t)m * 4) != 1)
            return TQKV_EINTERNAL;
        done += m;
    }
    if (EVP_DigestFinal_ex(ctx, out, &out_len) != 1 || out_len != 32)
        return TQKV_EINTERNAL;
    return 0;
}

int tqkv_chunk_keys(const char *ns, const uint32_t *tokens, size_t n_tokens, uint32_t chunk_size,
                    unsigned flags, const tqkv_key *parent, tqkv_key *keys, size_t keys_cap,
                    size_t *n_keys)
{
    static const uint8_t zero[32];
    size_t n_chunks;
    EVP_MD_CTX *ctx;
    int rc = 0;

    if (!ns || chunk_size == 0 || (!tokens && n_tokens > 0) || !n_keys ||
        (flags & ~(TQKV_CHUNK_INDEPENDENT | TQKV_CHUNK_FULL_ONLY)))
        return TQKV_EINVAL;
    n_chunks = n_tokens / chunk_size;
    if (n_tokens % chunk_size && !(flags & TQKV_CHUNK_FULL_ONLY))
        n_chunks++;
    *n_keys = n_chunks;
    if (n_chunks == 0)
        return 0;
    if (!keys || keys_cap < n_chunks)
        return TQKV_ERANGE;

    ctx = EVP_MD_CTX_new();
    if (!ctx)
        return TQKV_ENOMEM;
    const size_t ns_len = strlen(ns);
    const uint8_t *prev = parent ? parent->bytes : zero;
    for (size_t i = 0; i < n_chunks; i++) {
        size_t first = i * chunk_size;
        uint32_t n = (uint32_t)(n_tokens - first < chunk_size ? n_tokens - first : chunk_size);
        const uint8_t *p = (flags & TQKV_CHUNK_INDEPENDENT) ? zero : prev;
        rc = chunk_key(ctx, ns, ns_len, p, tokens + first, n, keys[i].bytes);
        if (rc)
            goto out;
        prev = keys[i].bytes;
    }
out:
    EVP_MD_CTX_free(ctx);
    return rc;
}

char *tqkv_key_hex(const tqkv_key *key, char out[2 * TQKV_KEY_BYTES + 1])
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < TQKV_KEY_BYTES; i++) {
        out[2 * i] = digits[key->bytes[i] >> 4];
        out[2 * i + 1] = digits[key->bytes[i] & 15];
    }
    out[2 * TQKV_KEY_BYTES] = '\0';
    return out;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int tqkv_key_parse(const char *hex, tqkv_key *out)
{
    if (!hex || !out || strlen(hex) != 2 * TQKV_KEY_BYTES)
        return TQKV_EBADKEYLEN;
    for (int i = 0; i < TQKV_KEY_BYTES; i++) {
        int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return TQKV_EBADKEYLEN;
        out->bytes[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}
