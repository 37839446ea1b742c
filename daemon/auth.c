/* Token comparison for HELLO. The time taken depends only on the configured token's length,
 * never on how many leading bytes of a guess are right. */
#include <string.h>

#include "server.h"

int tqkvd_token_equal(const char *given, size_t given_len, const char *expected)
{
    size_t n = strlen(expected);
    unsigned char diff = (unsigned char)(given_len != n);
    for (size_t i = 0; i < n; i++) {
        /* Past the end of `given`, compare against its first byte (or 0): same work either way. */
        unsigned char g = i < given_len ? (unsigned char)given[i] : (unsigned char)~expected[i];
        diff |= (unsigned char)(g ^ (unsigned char)expected[i]);
    }
    return diff == 0;
}
