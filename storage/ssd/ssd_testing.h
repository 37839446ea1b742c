/* Fault injection for the SSD engine's tests: while a counter is positive, that many segment
 * writes (pwrite of a batch) or syncs (fdatasync) fail with TQKV_EIO as if the disk had failed
 * them. Zero in normal operation; only tests set them. Internal to storage/ssd/ and its tests. */
#ifndef TQKV_SSD_TESTING_H
#define TQKV_SSD_TESTING_H

#include <stdatomic.h>

extern atomic_int tqkv__ssd_fail_writes;
extern atomic_int tqkv__ssd_fail_syncs;

#endif
