/* Unit tests of common/: the error table, the replaceable allocator, log levels, endian helpers. */
#include "tqkv_alloc.h"
#include "tqkv_endian.h"
#include "tqkv_errors.h"
#include "tqkv_log.h"
#include "tqkv_test.h"

static void test_error_table(void)
{
    ASSERT_TRUE(strcmp(tqkv_strerror(TQKV_OK), "success") == 0);
    ASSERT_TRUE(strcmp(tqkv_err_name(TQKV_ECHECKSUM), "TQKV_ECHECKSUM") == 0);
    ASSERT_TRUE(strcmp(tqkv_strerror(TQKV_EAUTH), "authentication required or failed") == 0);
    ASSERT_TRUE(strcmp(tqkv_strerror(-9999), "unknown error") == 0);
    ASSERT_TRUE(strcmp(tqkv_err_name(12345), "TQKV_EUNKNOWN") == 0);
    ASSERT_EQ_INT(TQKV_EINVAL, -1);
}

static int fail_next;
static void *failing_malloc(size_t n)
{
    return fail_next ? NULL : malloc(n);
}
static void *failing_realloc(void *p, size_t n)
{
    return fail_next ? NULL : realloc(p, n);
}
static void *failing_calloc(size_t c, size_t n)
{
    return fail_next ? NULL : calloc(c, n);
}

static void test_failing_allocator(void)
{
    ASSERT_ERR(tqkv_replace_allocator(failing_malloc, NULL, NULL, NULL), TQKV_EINVAL);
    ASSERT_OK(tqkv_replace_allocator(failing_malloc, failing_realloc, failing_calloc, free));
    fail_next = 1;
    ASSERT_TRUE(tqkv_malloc(16) == NULL);
    ASSERT_TRUE(tqkv_strdup("x") == NULL);
    fail_next = 0;
    char *s = tqkv_strdup("abc");
    ASSERT_TRUE(s && strcmp(s, "abc") == 0);
    tqkv_free(s);
    ASSERT_OK(tqkv_replace_allocator(NULL, NULL, NULL, NULL));
    ASSERT_TRUE(tqkv_mallocarray(SIZE_MAX / 2, 4) == NULL);
    ASSERT_TRUE(tqkv_calloc(SIZE_MAX / 2, 4) == NULL);
}

static void test_log_levels(void)
{
    tqkv_log_level l;
    ASSERT_OK(tqkv_log_parse_level("DEBUG", &l));
    ASSERT_EQ_INT(l, TQKV_LOG_DEBUG);
    ASSERT_ERR(tqkv_log_parse_level("loud", &l), TQKV_EINVAL);
    int evaluated = 0;
    tqkv_log_set_level(TQKV_LOG_WARN);
    TQKV_LOGD("test", "msg=%d", ++evaluated);
    ASSERT_EQ_INT(evaluated, 0); /* disabled levels do not evaluate their arguments */
    tqkv_log_set_level(TQKV_LOG_INFO);
}

static void test_endian(void)
{
    unsigned char b[8];
    tqkv_store_le64(b, 0x0102030405060708ull);
    ASSERT_EQ_INT(b[0], 0x08);
    ASSERT_EQ_INT(b[7], 0x01);
    ASSERT_EQ_U64(tqkv_load_le64(b), 0x0102030405060708ull);
    tqkv_store_le16(b, 0xBEEF);
    ASSERT_EQ_INT(tqkv_load_le16(b), 0xBEEF);
}

static const tqkv_test_case cases[] = {
    {"error_table", test_error_table},
    {"failing_allocator", test_failing_allocator},
    {"log_levels", test_log_levels},
    {"endian", test_endian},
    {NULL, NULL},
};

int main(int argc, char **argv)
{
    return tqkv_test_main(argc, argv, cases);
}
