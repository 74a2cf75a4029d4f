/* gemm.h: a strided float32 matrix product with one fixed summation order.
 *
 *   C (m, n) = A (m, k) B (k, n)          (accumulate 0: C is overwritten)
 *   C (m, n) += A (m, k) B (k, n)         (accumulate 1)
 *
 * A is read through two strides, a[i, p] = A[i * a_rs + p * a_cs], so the
 * same kernel multiplies by a matrix or by its transpose without a copy; B
 * and C are row-major with leading dimensions ldb and ldc.
 *
 * Summation order: every element of C is one running sum, c = c + a[i, p]
 * b[p, j] for p = 0, 1, ..., k - 1 in turn, starting from +0 (or from the
 * element's value when accumulating), each product rounded to float32 before
 * it is added (no fused multiply-add: the build turns contraction off).  The
 * AVX2 kernel holds a block of C in registers and vectorises over j; the
 * baseline kernel does the same sums one row at a time; blocking over p only
 * stores and reloads the running sums.  Results are therefore identical on
 * every instruction set and for any way the rows of A are split (any batch
 * size).  When a and b hold integers whose every partial sum stays below
 * 2^24 in magnitude the result is the exact integer sum. */
#ifndef QF_GEMM_H
#define QF_GEMM_H

#include <stdint.h>

void qf_gemm(float *c, int64_t ldc, const float *a, int64_t a_rs, int64_t a_cs,
             const float *b, int64_t ldb, int64_t m, int64_t n, int64_t k, int accumulate);

/* The product of (a_scale A) and B: each element of A is first multiplied
 * by a_scale in float32, then the sums run as in qf_gemm, so the result has
 * the bits of qf_gemm on a stored copy of a_scale A (e.g. the float patches
 * s q of integer codes q), without the copy. */
void qf_gemm_scaled_a(float *c, int64_t ldc, const float *a, int64_t a_rs, int64_t a_cs,
                      float a_scale, const float *b, int64_t ldb, int64_t m, int64_t n,
                      int64_t k, int accumulate);

/* The same product for integers whose every partial sum stays below 2^24 in
 * magnitude (integer codes): exact in any order, so it may use fused
 * multiply-adds where the CPU has them (same results, faster). */
void qf_gemm_exact(float *c, int64_t ldc, const float *a, int64_t a_rs, int64_t a_cs,
                   const float *b, int64_t ldb, int64_t m, int64_t n, int64_t k, int accumulate);

#endif
