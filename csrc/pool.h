/* pool.h: 2-D average pooling (torch.nn.AvgPool2d, count_include_pad=True). */
#ifndef QF_POOL_H
#define QF_POOL_H

#include <stdint.h>
#include "conv.h"

/* out (C, OH, OW) = window sums of x (C, H, W) (zero padding), times `scale`
 * through the epilogue: out = qf_affine_epilogue(sum, scale, 0) when the
 * input holds integer codes (exact sums), else sum / (KH * KW) in float32.
 * The geometry's c, h, w, kh, kw, sh, sw, ph, pw, oh, ow are used. */
void qf_avgpool_forward(float *out, const float *x, const qf_conv_geom *g,
                        int codes, float scale);

/* dx (C, H, W) = spread of dout (C, OH, OW) / (KH * KW) (overwritten). */
void qf_avgpool_backward(float *dx, const float *dout, const qf_conv_geom *g);

#endif
