/* Unit tests of tqkv_chunk_keys: the SHA-256 chain that names chunks must give the same bytes in
 * every process and language, so its output is pinned against vectors computed independently.
 *
 * The vectors below were derived with Python's hashlib, not with this library:
 *
 *   import hashlib, struct
 *   def keys(ns, toks, cs, indep=False):
 *       out, prev = [], bytes(32)
 *       for i in range(0, len(toks), cs):
 *           ch = toks[i:i + cs]
 *           p = bytes(32) if indep else prev
 *           prev = hashlib.sha256(b"tqkv-chunk-v1" + ns.encode() + p + struct.pack("<I", len(ch))
 *                                 + b"".join(struct.pack("<I", t) for t in ch)).digest()
 *           out.append(prev)
 *       return out
 *   toks = [(i * 2654435761) & 0xffffffff for i in range(600)]
 *   keys("llama-3-8b", toks, 256); keys("llama-3-8b", toks, 256, indep=True); keys("", [0], 4)
 */
#include "tqkv.h"
#include "tqkv_test.h"

static const char *const chain_hex[3] = {
    "449a9662c0f42a5be2417138339feec830223713051faceae5a897d6b195ea81",
    "d08245bd9d7a7e824a49ae18c69fc2a216cf5f35b3482d8621811c8ea1c4ea03",
    "6f1bf61dfef5ff5cb10929e10d20c20e44c58f7c4dba1b9360d48556005d158f",
};
static const char *const indep_hex[3] = {
    "449a9662c0f42a5be2417138339feec830223713051faceae5a897d6b195ea81",
    "cddf146ccf0dbc370fd0682ad45ce1d0381f92009646cc780b07c73455b2c869",
    "ac04c31cd67f3fcaf217e0aad5d5d0c192ea53b0df715f8b8dfdb499228e8926",
};

static uint32_t toks[600];

static void fill_tokens(void)
{
    for (uint32_t i = 0; i < 600; i++)
        toks[i] = (uint32_t)(i * 2654435761u);
}

static void check_keys(const tqkv_key *k, const char *const *want, size_t n)
{
    char hex[2 * TQKV_KEY_BYTES + 1];
    for (size_t i = 0; i < n; i++) {
        tqkv_key_hex(&k[i], hex);
        if (strcmp(hex, want[i]) != 0)
            TQKV__FAIL("key %zu: got %s, want %s", i, hex, want[i]);
    }
}

static void test_chain_vector(void)
{
    tqkv_key k[4];
    size_t n = 0;
    fill_tokens();
    ASSERT_OK(tqkv_chunk_keys("llama-3-8b", toks, 600, 256, 0, NULL, k, 4, &n));
    ASSERT_EQ_INT(n, 3);
    check_keys(k, chain_hex, 3);
}

static void test_independent_vector(void)
{
    tqkv_key k[3];
    size_t n = 0;
    fill_tokens();
    ASSERT_OK(tqkv_chunk_keys("llama-3-8b", toks, 600, 256, TQKV_CHUNK_INDEPENDENT, NULL, k, 3,
                              &n));
    ASSERT_EQ_INT(n, 3);
    check_keys(k, indep_hex, 3);
}

static void test_empty_namespace_single_token(void)
{
    static const char *const want[1] = {
        "ce32fa220b87465a6c5ba7422ba92d9c604237463c6e8cf6c4e900e7cb7ae3b4"};
    uint32_t t = 0;
    tqkv_key k;
    size_t n = 0;
    ASSERT_OK(tqkv_chunk_keys("", &t, 1, 4, 0, NULL, &k, 1, &n));
    ASSERT_EQ_INT(n, 1);
    check_keys(&k, want, 1);
}

static void test_full_only_drops_tail(void)
{
    tqkv_key k[3];
    size_t n = 0;
    fill_tokens();
    ASSERT_OK(tqkv_chunk_keys("llama-3-8b", toks, 600, 256, TQKV_CHUNK_FULL_ONLY, NULL, k, 3, &n));
    ASSERT_EQ_INT(n, 2);
    check_keys(k, chain_hex, 2);
    /* exactly one full chunk and nothing else */
    ASSERT_OK(tqkv_chunk_keys("llama-3-8b", toks, 255, 256, TQKV_CHUNK_FULL_ONLY, NULL, k, 3, &n));
    ASSERT_EQ_INT(n, 0);
}

static void test_parent_continues_chain(void)
{
    tqkv_key first, rest[2];
    size_t n = 0;
    fill_tokens();
    ASSERT_OK(tqkv_chunk_keys("llama-3-8b", toks, 256, 256, 0, NULL, &first, 1, &n));
    ASSERT_EQ_INT(n, 1);
    ASSERT_OK(tqkv_chunk_keys("llama-3-8b", toks + 256, 344, 256, 0, &first, rest, 2, &n));
    ASSERT_EQ_INT(n, 2);
    check_keys(rest, chain_hex + 1, 2);
}

static void test_namespace_changes_keys(void)
{
    tqkv_key a, b;
    size_t n = 0;
    fill_tokens();
    ASSERT_OK(tqkv_chunk_keys("llama-3-8b", toks, 256, 256, 0, NULL, &a, 1, &n));
    ASSERT_OK(tqkv_chunk_keys("llama-3-8B", toks, 256, 256, 0, NULL, &b, 1, &n));
    ASSERT_TRUE(memcmp(a.bytes, b.bytes, TQKV_KEY_BYTES) != 0);
}

static void test_capacity_and_arguments(void)
{
    tqkv_key k[2];
    size_t n = 99;
    fill_tokens();
    ASSERT_ERR(tqkv_chunk_keys("ns", toks, 600, 256, 0, NULL, k, 2, &n), TQKV_ERANGE);
    ASSERT_EQ_INT(n, 3);
    ASSERT_OK(tqkv_chunk_keys("ns", toks, 0, 256, 0, NULL, NULL, 0, &n));
    ASSERT_EQ_INT(n, 0);
    ASSERT_ERR(tqkv_chunk_keys(NULL, toks, 10, 256, 0, NULL, k, 2, &n), TQKV_EINVAL);
    ASSERT_ERR(tqkv_chunk_keys("ns", toks, 10, 0, 0, NULL, k, 2, &n), TQKV_EINVAL);
    ASSERT_ERR(tqkv_chunk_keys("ns", NULL, 10, 256, 0, NULL, k, 2, &n), TQKV_EINVAL);
    ASSERT_ERR(tqkv_chunk_keys("ns", toks, 10, 256, 0x80, NULL, k, 2, &n), TQKV_EINVAL);
}

static void test_hex_roundtrip(void)
{
    tqkv_key k, back;
    char hex[2 * TQKV_KEY_BYTES + 1];
    for (int i = 0; i < TQKV_KEY_BYTES; i++)
        k.bytes[i] = (uint8_t)(i * 37 + 5);
    ASSERT_OK(tqkv_key_parse(tqkv_key_hex(&k, hex), &back));
    ASSERT_MEM_EQ(k.bytes, back.bytes, TQKV_KEY_BYTES);
    ASSERT_OK(tqkv_key_parse("449A9662C0F42A5BE2417138339FEEC830223713051FACEAE5A897D6B195EA81",
                             &back));
    ASSERT_EQ_INT(back.bytes[0], 0x44);
    ASSERT_ERR(tqkv_key_parse("449a", &back), TQKV_EBADKEYLEN);
    ASSERT_ERR(tqkv_key_parse("x49a9662c0f42a5be2417138339feec830223713051faceae5a897d6b195ea81",
                              &back),
               TQKV_EBADKEYLEN);
}

static const tqkv_test_case cases[] = {
    {"chain_vector", test_chain_vector},
    {"independent_vector", test_independent_vector},
    {"empty_namespace_single_token", test_empty_namespace_single_token},
    {"full_only_drops_tail", test_full_only_drops_tail},
    {"parent_continues_chain", test_parent_continues_chain},
    {"namespace_changes_keys", test_namespace_changes_keys},
    {"capacity_and_arguments", test_capacity_and_arguments},
    {"hex_roundtrip", test_hex_roundtrip},
    {NULL, NULL},
};

int main(int argc, char **argv)
{
    return tqkv_test_main(argc, argv, cases);
}
