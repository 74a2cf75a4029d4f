/* finite.h: where a float32 buffer first holds NaN or infinity. */
#ifndef QF_FINITE_H
#define QF_FINITE_H

#include <stdint.h>

/* Index of the first NaN or infinity of x (n), or -1. */
int64_t qf_first_non_finite(const float *x, int64_t n);

#endif
