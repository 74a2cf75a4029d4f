/* rng.h: the core's seedable random number generator.
 *
 * xoshiro256** (Blackman & Vigna), state seeded from a 64-bit seed and a
 * 64-bit stream number through splitmix64.  Everything random in qatfhe
 * (initialisation, shuffling) draws from one of these, so the same seed gives
 * bit-identical results on every run and platform:
 *   - uniform float in [0, 1): the top 24 bits of a draw times 2^-24;
 *   - uniform float in [a, b): a + (b - a) * u, in float32;
 *   - integer in [0, n): Lemire's multiply-shift with rejection (unbiased);
 *   - permutation: Fisher-Yates from the last element down. */
#ifndef QF_RNG_H
#define QF_RNG_H

#include <stdint.h>

typedef struct {
    uint64_t s[4];
} qf_rng;

/* Seed from (seed, stream): different streams of one seed are independent. */
void qf_rng_seed(qf_rng *rng, uint64_t seed, uint64_t stream);
uint64_t qf_rng_next(qf_rng *rng);
/* Uniform in [0, 1) with 24 random bits. */
float qf_rng_uniform01(qf_rng *rng);
/* Fill x (n) with U[a, b). */
void qf_rng_fill_uniform(qf_rng *rng, float *x, int64_t n, float a, float b);
/* Unbiased integer in [0, n); n >= 1. */
uint64_t qf_rng_below(qf_rng *rng, uint64_t n);
/* perm (n) = a uniformly random permutation of 0..n-1. */
void qf_rng_permutation(qf_rng *rng, int64_t *perm, int64_t n);

#endif
