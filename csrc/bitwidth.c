/* bitwidth.c: bits needed for an integer range (REFERENCE.md section 6). */
#include "bitwidth.h"

void qf_range_reset(qf_range *r, int n)
{
    for (int i = 0; i < n; i++) {
        r[i].min = INT64_MAX;
        r[i].max = INT64_MIN;
    }
}

/* Number of binary digits of v (0 for v = 0) = ceil(log2(v + 1)). */
static int bit_length(uint64_t v)
{
    int n = 0;
    while (v) {
        n++;
        v >>= 1;
    }
    return n;
}

int qf_bits_for_range(int64_t lo, int64_t hi)
{
    if (lo > hi)
        return 0;
    int hi_bits = hi > 0 ? bit_length((uint64_t)hi) : 0;   /* ceil(log2(hi + 1)) */
    if (lo >= 0)
        return hi_bits > 0 ? hi_bits : 1;
    /* ceil(log2(|lo|)) = bit_length(|lo| - 1); |lo| - 1 = -(lo + 1) never overflows. */
    int lo_bits = bit_length((uint64_t)(-(lo + 1)));
    return 1 + (lo_bits > hi_bits ? lo_bits : hi_bits);
}
