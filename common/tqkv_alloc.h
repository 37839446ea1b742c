/* Allocation wrapper. Every heap allocation in tqkv goes through these so that tests can install
 * a failing allocator (out-of-memory paths must be exercised, not assumed) and so that the byte
 * accounting of a tier can be checked against what was really asked for. */
#ifndef TQKV_ALLOC_H
#define TQKV_ALLOC_H

#include <stddef.h>

typedef void *(*tqkv_malloc_fn)(size_t size);
typedef void *(*tqkv_realloc_fn)(void *ptr, size_t size);
typedef void *(*tqkv_calloc_fn)(size_t count, size_t size);
typedef void (*tqkv_free_fn)(void *ptr);

/* Replaces the allocator (all four or none; NULL restores the C library's). Not thread-safe:
 * call before any other tqkv function. @return 0, or TQKV_EINVAL if only some are given. */
int tqkv_replace_allocator(tqkv_malloc_fn m, tqkv_realloc_fn r, tqkv_calloc_fn c, tqkv_free_fn f);

void *tqkv_malloc(size_t size);
void *tqkv_calloc(size_t count, size_t size); /* overflow-checked */
void *tqkv_realloc(void *ptr, size_t size);
void tqkv_free(void *ptr);
/* size * count with overflow check; NULL on overflow or failure. */
void *tqkv_mallocarray(size_t count, size_t size);
char *tqkv_strdup(const char *s);

/* Aligned allocation (alignment a power of two >= sizeof(void *)); free with
 * tqkv_aligned_free. Not routed through the replaceable allocator. */
void *tqkv_aligned_alloc(size_t alignment, size_t size);
void tqkv_aligned_free(void *ptr);

#endif
