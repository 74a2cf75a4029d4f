/* linear.h: fully connected layer kernels, PyTorch layout (weight (out, in)). */
#ifndef QF_LINEAR_H
#define QF_LINEAR_H

#include <stdint.h>

/* out (n, n_out) = x (n, n_in) @ w^T + b;  w (n_out, n_in), b (n_out) or NULL. */
void qf_linear_forward(float *out, const float *x, const float *w, const float *b,
                       int64_t n, int64_t n_in, int64_t n_out);

/* Quantized-input variant: xcodes (n, n_in) and wcodes (n_out, n_in) hold
 * integer codes; the exact integer sum acc = sum xcodes * wcodes is turned
 * into out = qf_affine_epilogue(acc, scale, b) (quant.h).  Codes must be
 * below 2^24 in magnitude (bit widths <= 16 guarantee it). */
void qf_linear_forward_codes(float *out, const float *xcodes, const float *wcodes,
                             float scale, const float *b,
                             int64_t n, int64_t n_in, int64_t n_out);

/* Backward of y = x w^T + b given dout (n, n_out):
 *   dx (n, n_in)     = dout @ w           (overwritten; skipped when NULL)
 *   dw (n_out, n_in) += dout^T @ x        (accumulated)
 *   db (n_out)       += sum over n of dout (accumulated; skipped when NULL) */
void qf_linear_backward(float *dx, float *dw, float *db, const float *dout,
                        const float *x, const float *w,
                        int64_t n, int64_t n_in, int64_t n_out);

#endif
