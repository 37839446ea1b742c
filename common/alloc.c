/* The replaceable allocator behind tqkv_malloc and friends. */
#include "tqkv_alloc.h"
#include "tqkv_errors.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static struct {
    tqkv_malloc_fn m;
    tqkv_realloc_fn r;
    tqkv_calloc_fn c;
    tqkv_free_fn f;
} allocator = {malloc, realloc, calloc, free};

int tqkv_replace_allocator(tqkv_malloc_fn m, tqkv_realloc_fn r, tqkv_calloc_fn c, tqkv_free_fn f)
{
    if (!m && !r && !c && !f) {
        allocator.m = malloc;
        allocator.r = realloc;
        allocator.c = calloc;
        allocator.f = free;
        return 0;
    }
    if (!m || !r || !c || !f)
        return TQKV_EINVAL;
    allocator.m = m;
    allocator.r = r;
    allocator.c = c;
    allocator.f = f;
    return 0;
}

void *tqkv_malloc(size_t size)
{
    return allocator.m(size ? size : 1);
}

void *tqkv_calloc(size_t count, size_t size)
{
    if (size && count > SIZE_MAX / size)
        return NULL;
    return allocator.c(count ? count : 1, size ? size : 1);
}

void *tqkv_realloc(void *ptr, size_t size)
{
    return allocator.r(ptr, size ? size : 1);
}

void tqkv_free(void *ptr)
{
    if (ptr)
        allocator.f(ptr);
}

void *tqkv_mallocarray(size_t count, size_t size)
{
    if (size && count > SIZE_MAX / size)
        return NULL;
    return tqkv_malloc(count * size);
}

char *tqkv_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = tqkv_malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

void *tqkv_aligned_alloc(size_t alignment, size_t size)
{
    void *p = NULL;
    if (posix_memalign(&p, alignment, size ? size : 1) != 0)
        return NULL;
    return p;
}

void tqkv_aligned_free(void *ptr)
{
    free(ptr);
}
