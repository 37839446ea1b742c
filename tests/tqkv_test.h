/* A small test harness shared by every test program: cases are registered in a table, assertions
 * print both sides, and a test that cannot run here (no GPU, no redis-server) exits with
 * TQKV_TEST_SKIP so ctest reports it as skipped.
 *
 *   static void test_roundtrip(void) { ASSERT_EQ_INT(f(1), 2); }
 *   static const tqkv_test_case cases[] = {{"roundtrip", test_roundtrip}, {NULL, NULL}};
 *   int main(int argc, char **argv) { return tqkv_test_main(argc, argv, cases); }
 *
 * `prog NAME` runs one case; `prog` runs them all. */
#ifndef TQKV_TEST_H
#define TQKV_TEST_H

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TQKV_TEST_SKIP 77

typedef struct {
    const char *name;
    void (*fn)(void);
} tqkv_test_case;

extern int tqkv__test_failures;

#define TQKV__FAIL(...)                                                                            \
    do {                                                                                           \
        fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);                                            \
        fprintf(stderr, __VA_ARGS__);                                                              \
        fprintf(stderr, "\n");                                                                     \
        tqkv__test_failures++;                                                                     \
        return;                                                                                    \
    } while (0)

/* These return from the calling test function (which must return void) on failure. */
#define ASSERT_TRUE(c)                                                                             \
    do {                                                                                           \
        if (!(c))                                                                                  \
            TQKV__FAIL("assertion failed: %s", #c);                                                \
    } while (0)
#define ASSERT_EQ_INT(a, b)                                                                        \
    do {                                                                                           \
        long long _a = (long long)(a), _b = (long long)(b);                                        \
        if (_a != _b)                                                                              \
            TQKV__FAIL("%s == %s: %lld != %lld", #a, #b, _a, _b);                                  \
    } while (0)
#define ASSERT_NE_INT(a, b)                                                                        \
    do {                                                                                           \
        long long _a = (long long)(a), _b = (long long)(b);                                        \
        if (_a == _b)                                                                              \
            TQKV__FAIL("%s != %s: both %lld", #a, #b, _a);                                         \
    } while (0)
#define ASSERT_EQ_U64(a, b)                                                                        \
    do {                                                                                           \
        unsigned long long _a = (unsigned long long)(a), _b = (unsigned long long)(b);             \
        if (_a != _b)                                                                              \
            TQKV__FAIL("%s == %s: %llu != %llu", #a, #b, _a, _b);                                  \
    } while (0)
#define ASSERT_OK(expr)                                                                            \
    do {                                                                                           \
        int _r = (expr);                                                                           \
        if (_r != 0)                                                                               \
            TQKV__FAIL("%s failed: %d (%s)", #expr, _r, tqkv_strerror(_r));                        \
    } while (0)
#define ASSERT_ERR(expr, code)                                                                     \
    do {                                                                                           \
        int _r = (expr);                                                                           \
        if (_r != (code))                                                                          \
            TQKV__FAIL("%s: got %d (%s), want %d (%s)", #expr, _r, tqkv_err_name(_r), (int)(code), \
                       tqkv_err_name(code));                                                       \
    } while (0)
#define ASSERT_NEAR(a, b, tol)                                                                     \
    do {                                                                                           \
        double _a = (double)(a), _b = (double)(b), _t = (double)(tol);                             \
        if (!(fabs(_a - _b) <= _t))                                                                \
            TQKV__FAIL("%s ~= %s: %.9g vs %.9g (tol %.3g)", #a, #b, _a, _b, _t);                   \
    } while (0)
#define ASSERT_LE(a, b)                                                                            \
    do {                                                                                           \
        double _a = (double)(a), _b = (double)(b);                                                 \
        if (!(_a <= _b))                                                                           \
            TQKV__FAIL("%s <= %s: %.9g > %.9g", #a, #b, _a, _b);                                   \
    } while (0)
#define ASSERT_MEM_EQ(a, b, n)                                                                     \
    do {                                                                                           \
        size_t _n = (size_t)(n);                                                                   \
        const unsigned char *_pa = (const unsigned char *)(a), *_pb = (const unsigned char *)(b);  \
        for (size_t _i = 0; _i < _n; _i++)                                                         \
            if (_pa[_i] != _pb[_i])                                                                \
                TQKV__FAIL("%s and %s differ at byte %zu of %zu: 0x%02x != 0x%02x", #a, #b, _i,    \
                           _n, _pa[_i], _pb[_i]);                                                  \
    } while (0)
/* For helpers called from tests: stop the test if the helper reported a failure. */
#define TQKV_TEST_CHECK()                                                                          \
    do {                                                                                           \
        if (tqkv__test_failures)                                                                   \
            return;                                                                                \
    } while (0)

/* Set by a case that decides it cannot run here; the program then exits TQKV_TEST_SKIP if no
 * case failed and every case that ran skipped. */
extern int tqkv__test_skipped;
#define TEST_SKIP(...)                                                                             \
    do {                                                                                           \
        fprintf(stderr, "skip: ");                                                                 \
        fprintf(stderr, __VA_ARGS__);                                                              \
        fprintf(stderr, "\n");                                                                     \
        tqkv__test_skipped++;                                                                      \
        return;                                                                                    \
    } while (0)

int tqkv_test_main(int argc, char **argv, const tqkv_test_case *cases);

#ifdef TQKV_TEST_IMPLEMENTATION
int tqkv__test_failures;
int tqkv__test_skipped;

int tqkv_test_main(int argc, char **argv, const tqkv_test_case *cases)
{
    int ran = 0, failed = 0, skipped = 0;
    for (const tqkv_test_case *c = cases; c->name; c++) {
        if (argc > 1 && strcmp(argv[1], c->name) != 0)
            continue;
        tqkv__test_failures = 0;
        tqkv__test_skipped = 0;
        c->fn();
        ran++;
        if (tqkv__test_failures) {
            failed++;
            fprintf(stderr, "FAIL %s\n", c->name);
        } else if (tqkv__test_skipped) {
            skipped++;
            fprintf(stderr, "SKIP %s\n", c->name);
        } else {
            fprintf(stderr, "ok   %s\n", c->name);
        }
    }
    if (argc > 1 && ran == 0) {
        fprintf(stderr, "no test named %s\n", argv[1]);
        return 2;
    }
    fprintf(stderr, "%d passed, %d failed, %d skipped\n", ran - failed - skipped, failed, skipped);
    if (failed)
        return 1;
    if (ran > 0 && skipped == ran)
        return TQKV_TEST_SKIP;
    return 0;
}
#endif

#endif
