/* gemm_int8.h: a matrix product of small integer codes in the lane layout
 * of the circuit's block engine (circuit_block.c): unsigned 8-bit inputs
 * times signed 8-bit weights, summed in 16-bit integers.
 *
 * Inputs x: rows of 2 Lp bytes, Lp = lanes rounded up to a multiple of 16.
 * Row r holds, for each lane (sample) s < Lp, two inputs of that sample side
 * by side: x[r][s][0], x[r][s][1] (e.g. channels 2c and 2c + 1 at one pixel).
 * Weights: pairs (w0, w1) of int8 in one int16, w0 in the low byte.
 *
 * One call computes a block of n_rows <= QF_GEMM_INT8_ROWS output rows i
 * (output channels) at ny x nx positions (jy, jx), the position reading
 * from row base = jy y_step + jx x_step:
 *
 *   d[i ldd + (jy nx + jx) lanes + s] = corr[i] +
 *       sum_{q < n_pairs} (w0 x[base + off[q]][s][0] + w1 x[base + off[q]][s][1])
 *   with (w0, w1) = the pair w[q QF_GEMM_INT8_ROWS + i]          (as float32)
 *
 * for s < lanes (lanes past them are read, never written).  The caller
 * guarantees that max(x) times sum_q (|w0| + |w1|) stays below 2^15 for
 * every row (so every partial sum, and every pair, fits an int16 without
 * saturating or wrapping) and that every |corr + sum| stays below 2^24.
 * The sums are then exact integers whatever the order, and the AVX2 kernel
 * (VPMADDUBSW pairs, VPADDW sums) and the portable one write the same floats:
 * the integer's own value, +0 for zero.  Neither allocates. */
#ifndef QF_GEMM_INT8_H
#define QF_GEMM_INT8_H

#include <stdint.h>

#define QF_GEMM_INT8_ROWS 2     /* output rows per call (register block)  */
#define QF_GEMM_INT8_LANES 64   /* most lanes per call                    */

/* Lp: lanes rounded up to the lane group of the packed inputs (16). */
static inline int64_t qf_gemm_int8_padded_lanes(int64_t lanes) { return (lanes + 15) / 16 * 16; }

/* The product above, on the fastest path this CPU has.  1 <= n_rows <=
 * QF_GEMM_INT8_ROWS, 1 <= lanes <= QF_GEMM_INT8_LANES. */
void qf_gemm_int8_lanes(float *d, int64_t ldd, int n_rows, const int32_t *corr,
                        const int16_t *w, const int64_t *off, int64_t n_pairs,
                        const uint8_t *x, int64_t ny, int64_t nx, int64_t y_step,
                        int64_t x_step, int64_t lanes);

/* The same on the portable path (scalar int32 sums), whatever the CPU. */
void qf_gemm_int8_lanes_portable(float *d, int64_t ldd, int n_rows, const int32_t *corr,
                                 const int16_t *w, const int64_t *off, int64_t n_pairs,
                                 const uint8_t *x, int64_t ny, int64_t nx, int64_t y_step,
                                 int64_t x_step, int64_t lanes);

/* The same product with each sum replaced by a code, for a LOOKUP that is
 * a step function of it (circuit_steps.c): with row i's thresholds
 * gt[i QF_GEMM_INT8_MAX_STEPS + k], k < n_steps (<= QF_GEMM_INT8_MAX_STEPS),
 *
 *   d[...] = base[i] + #{k : sum > gt[i QF_GEMM_INT8_MAX_STEPS + k]}   (as float32)
 *
 * where sum excludes corr (the caller folds corr into the thresholds).  The
 * sums never leave the int16 registers on the AVX2 path (VPCMPGTW counts). */
#define QF_GEMM_INT8_MAX_STEPS 16

void qf_gemm_int8_steps(float *d, int64_t ldd, int n_rows, const int16_t *gt, int n_steps,
                        const float *base, const int16_t *w, const int64_t *off,
                        int64_t n_pairs, const uint8_t *x, int64_t ny, int64_t nx,
                        int64_t y_step, int64_t x_step, int64_t lanes);
void qf_gemm_int8_steps_portable(float *d, int64_t ldd, int n_rows, const int16_t *gt,
                                 int n_steps, const float *base, const int16_t *w,
                                 const int64_t *off, int64_t n_pairs, const uint8_t *x,
                                 int64_t ny, int64_t nx, int64_t y_step, int64_t x_step,
                                 int64_t lanes);

/* The codes variant summed over pooling windows (a POOL_SUM whose stride
 * is its kh x kw kernel), then counted once more when gt2 is not NULL (the
 * LOOKUP after the pool, by thresholds on the window sum S of the counts):
 * for px < npx,
 *
 *   S = sum_{ky < kh, kx < kw} #{k < n_steps : sum(ky, px kw + kx) > gt[i][k]}
 *   d[i ldd + px lanes + s] = base[i] + (gt2 ? #{k < n_steps2 : S > gt2[i][k]} : S)
 *
 * sum(jy, jx) as in qf_gemm_int8_steps (the position reading from row
 * jy y_step + jx x_step).  S stays an int16: kh kw n_steps < 2^15. */
void qf_gemm_int8_pooled(float *d, int64_t ldd, int n_rows, const int16_t *gt, int n_steps,
                         const int16_t *gt2, int n_steps2, const float *base, int kh, int kw,
                         const int16_t *w, const int64_t *off, int64_t n_pairs, const uint8_t *x,
                         int64_t npx, int64_t y_step, int64_t x_step, int64_t lanes);
void qf_gemm_int8_pooled_portable(float *d, int64_t ldd, int n_rows, const int16_t *gt,
                                  int n_steps, const int16_t *gt2, int n_steps2,
                                  const float *base, int kh, int kw, const int16_t *w,
                                  const int64_t *off, int64_t n_pairs, const uint8_t *x,
                                  int64_t npx, int64_t y_step, int64_t x_step, int64_t lanes);

#endif
