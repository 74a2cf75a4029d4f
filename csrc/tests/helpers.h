/* helpers.h: small pieces shared by the C test drivers (random values, the
 * reference 8-lane dot product, bit-exact comparison, quantizer specs). */
#ifndef QF_TEST_HELPERS_H
#define QF_TEST_HELPERS_H

#include <stdint.h>
#include <string.h>
#include "quant.h"
#include "rng.h"

/* U[a, b) from the core's generator. */
static inline float uniform(qf_rng *rng, float a, float b)
{
    return a + (b - a) * qf_rng_uniform01(rng);
}

/* The engine's float32 dot product order, written from its definition: lane j
 * sums the elements i = j mod 8 in order, then the lanes are added pairwise. */
static inline float ref_dot(const float *a, const float *b, int64_t n)
{
    float lane[8] = {0};
    for (int64_t i = 0; i < n; i++)
        lane[i % 8] += a[i] * b[i];
    return ((lane[0] + lane[4]) + (lane[2] + lane[6])) + ((lane[1] + lane[5]) + (lane[3] + lane[7]));
}

/* a and b (n floats) identical bit for bit. */
static inline int same_bits(const float *a, const float *b, int64_t n)
{
    return memcmp(a, b, sizeof(float) * (size_t)n) == 0;
}

/* A quantizer spec with Brevitas's statistics defaults (momentum 0.1, 99.999th percentile). */
static inline qf_quant_spec quant(int kind, int bits, int is_signed, int narrow, float threshold,
                                  int stats_steps)
{
    qf_quant_spec q;
    memset(&q, 0, sizeof q);
    q.kind = kind;
    q.bits = bits;
    q.is_signed = is_signed;
    q.narrow = narrow;
    q.threshold = threshold;
    q.stats_steps = stats_steps;
    q.momentum = 0.1f;
    q.percentile = 99.999f;
    return q;
}

#endif
