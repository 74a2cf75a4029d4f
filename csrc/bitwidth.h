/* bitwidth.h: integer ranges and the bits an FHE circuit needs to hold them
 * (REFERENCE.md section 6).
 *
 * A range [lo, hi] of integers needs
 *   unsigned (lo >= 0): ceil(log2(hi + 1)) bits, at least 1;
 *   signed   (lo < 0):  max(ceil(log2(|lo|)) + 1, ceil(log2(hi + 1)) + 1) bits,
 * so 0 and 1 need 1 bit, 2^k - 1 needs k, 2^k needs k + 1, -1 needs 1 and
 * -2^k needs k + 1.  A circuit's bit width is the largest of these over
 * every integer value in it. */
#ifndef QF_BITWIDTH_H
#define QF_BITWIDTH_H

#include <stdint.h>

/* Smallest and largest value seen; empty when min > max. */
typedef struct {
    int64_t min;
    int64_t max;
} qf_range;

/* Make r (n) empty: min = INT64_MAX, max = INT64_MIN. */
void qf_range_reset(qf_range *r, int n);

static inline void qf_range_update(qf_range *r, int64_t v)
{
    if (v < r->min) r->min = v;
    if (v > r->max) r->max = v;
}

static inline int qf_range_is_empty(const qf_range *r)
{
    return r->min > r->max;
}

/* Bits needed for every integer in [lo, hi] by the formula above (lo <= hi;
 * any int64 values, including INT64_MIN).  Returns 0 for an empty range. */
int qf_bits_for_range(int64_t lo, int64_t hi);

#endif
