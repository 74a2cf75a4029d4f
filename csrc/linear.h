/* linear.h: fully connected layer kernels, PyTorch layout (weight (out, in)). */
#ifndef QF_LINEAR_H
#define QF_LINEAR_H

#include <stdint.h>

/* out (n, n_out) = x (n, n_in) @ w^T + b;  w (n_out, n_in), b (n_out) or NULL. */
void qf_linear_forward(float *out, const float *x, const float *w, const float *b,
                       int64_t n, int64_t n_in, int64_t n_out);

/* Quantized-input variant: xcodes (n, n_in) and wcodes (n_out, n_in) hold
 * integer codes; the exact integer sum acc = sum xcodes * wcodes is turned
 * into out = qf_affine_epilogue(acc, scale[o], b[o]) (quant.h), scale (n_out).  Codes must be
 * below 2^24 in magnitude (bit widths <= 16 guarantee it).  exact_f32 says
 * that n_in * max|xcode| * max|wcode| < 2^24, so float32 sums are exact in any
 * order (the fast path); otherwise sums run in double, exact below 2^53. */
void qf_linear_forward_codes(float *out, const float *xcodes, const float *wcodes,
                             const float *scale, const float *b, int exact_f32,
                             int64_t n, int64_t n_in, int64_t n_out);

/* The same as qf_linear_forward_codes with exact_f32 true, for batches: wcodes_t
 * is the (n_in, n_out) transpose of the weight codes, each sample's outputs are
 * accumulated a row of weights at a time (skipping zero input codes, common
 * after a ReLU), which vectorises over outputs.  Integer sums below 2^24 are
 * exact in any order, so the results are identical to the dot-product form. */
void qf_linear_forward_codes_t(float *out, const float *xcodes, const float *wcodes_t,
                               const float *scale, const float *b,
                               int64_t n, int64_t n_in, int64_t n_out);

/* Whether codes of magnitude at most x_max and w_max over n_in terms keep
 * every float32 partial sum exact (below 2^24). */
static inline int qf_codes_fit_f32(int64_t n_in, float x_max, float w_max)
{
    return (double)n_in * (double)x_max * (double)w_max < 16777216.0;
}

/* Backward of y = x w^T + b given dout (n, n_out):
 *   dx (n, n_in)     = dout @ w           (overwritten; skipped when NULL)
 *   dw (n_out, n_in) += dout^T @ x        (accumulated)
 *   db (n_out)       += sum over n of dout (accumulated; skipped when NULL) */
void qf_linear_backward(float *dx, float *dw, float *db, const float *dout,
                        const float *x, const float *w,
                        int64_t n, int64_t n_in, int64_t n_out);

#endif
