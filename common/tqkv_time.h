/* Monotonic and wall clocks in integer units. */
#ifndef TQKV_TIME_H
#define TQKV_TIME_H

#include <stdint.h>

uint64_t tqkv_now_ns(void);      /* CLOCK_MONOTONIC */
uint64_t tqkv_wall_ms(void);     /* CLOCK_REALTIME, ms since the epoch */
double tqkv_now_s(void);         /* CLOCK_MONOTONIC, seconds */

#endif
