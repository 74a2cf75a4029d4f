/* conv.h: 2-D convolution as patch extraction plus the linear kernels.
 *
 * A convolution of one sample x (C, H, W) with w (OC, C, KH, KW) is a matrix
 * product: the patches matrix cols (P, K), P = OH * OW output positions and
 * K = C * KH * KW taps, times w viewed as (OC, K).  The network extracts the
 * patches of a whole batch (im2col), multiplies them by the weights with the
 * register-blocked product of gemm.h (net_conv.c) and transposes the (P, OC)
 * result to (OC, OH, OW); backward scatters patch gradients back (col2im).
 * Zero padding puts 0 (code 0) in the patches. */
#ifndef QF_CONV_H
#define QF_CONV_H

#include <stdint.h>

typedef struct {
    int64_t c, h, w;            /* input sample shape           */
    int64_t kh, kw;             /* kernel                        */
    int64_t sh, sw;             /* stride                        */
    int64_t ph, pw;             /* zero padding on each side     */
    int64_t oh, ow;             /* output size (qf_conv_geometry) */
} qf_conv_geom;

/* Output size; 0 when the kernel does not fit the padded input. */
int64_t qf_conv_out_dim(int64_t in, int64_t kernel, int64_t stride, int64_t pad);

/* cols (P, K) = patches of x (C, H, W). */
void qf_im2col(float *cols, const float *x, const qf_conv_geom *g);

/* dx (C, H, W) += scatter of dcols (P, K) (dx is accumulated): each element
 * adds the gradients of the positions whose patch holds it in increasing
 * position (oy, ox) order, one float32 addition each (the order of a walk
 * over the positions, then the taps of each patch). */
void qf_col2im(float *dx, const float *dcols, const qf_conv_geom *g);

/* The same scatter, in the same order (same bits), from dcols_t (K, P), the
 * patch gradients transposed. */
void qf_col2im_t(float *dx, const float *dcols_t, const qf_conv_geom *g);

/* dst (b, a) = transpose of src (a, b). */
void qf_transpose2d(float *dst, const float *src, int64_t a, int64_t b);

#endif
