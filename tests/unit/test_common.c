/* Unit tests of common/: the error table, the replaceable allocator, log levels, endian helpers. */
#include <unistd.h>

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

/* Regression: a prefix (timestamp, level, module) longer than the line buffer made the message's
 * vsnprintf get a wrapped-around size and write past the buffer. Lines are cut, never spilled. */
static void test_log_long_lines(void)
{
    static const struct {
        size_t mod_len, msg_len;
    } cases[] = {{4, 10}, {4, 5000}, {2100, 10}, {3000, 3000}};
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        char *mod = malloc(cases[c].mod_len + 1);
        char *msg = malloc(cases[c].msg_len + 1);
        ASSERT_TRUE(mod && msg);
        memset(mod, 'm', cases[c].mod_len);
        mod[cases[c].mod_len] = '\0';
        memset(msg, 'x', cases[c].msg_len);
        msg[cases[c].msg_len] = '\0';
        int fds[2];
        ASSERT_EQ_INT(pipe(fds), 0);
        tqkv_log_set_fd(fds[1]);
        tqkv_log_write(TQKV_LOG_ERROR, mod, "msg=%s", msg);
        tqkv_log_set_fd(2);
        close(fds[1]);
        char out[8192];
        ssize_t n = read(fds[0], out, sizeof(out));
        close(fds[0]);
        free(mod);
        free(msg);
        ASSERT_TRUE(n > 0);
        ASSERT_LE(n, 2048);
        ASSERT_EQ_INT(out[n - 1], '\n');
        ASSERT_TRUE(memchr(out, '\n', (size_t)n) == out + n - 1); /* one line */
        ASSERT_TRUE(memcmp(out + 24, " level=error mod=m", 18) == 0);
        if (cases[c].mod_len + cases[c].msg_len < 100)
            ASSERT_TRUE(memcmp(out + n - 15, "msg=xxxxxxxxxx\n", 15) == 0);
    }
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
    {"log_long_lines", test_log_long_lines},
    {"endian", test_endian},
    {NULL, NULL},
};

int main(int argc, char **argv)
{
    return tqkv_test_main(argc, argv, cases);
}
