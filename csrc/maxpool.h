/* maxpool.h: 2-D max pooling (torch.nn.MaxPool2d, dilation 1, floor mode).
 *
 * Padded positions act as -infinity: they never win (the padding is at most
 * half the kernel, so every window holds an input element).  The window is
 * scanned row by row and the first maximum wins ties, as torch's CPU kernel. */
#ifndef QF_MAXPOOL_H
#define QF_MAXPOOL_H

#include <stdint.h>
#include "conv.h"

/* out (C, OH, OW) = window maxima of x (C, H, W); argmax (C, OH, OW) receives
 * each maximum's flat index into x.  codes (C, H, W) or NULL: out_codes
 * (C, OH, OW) receives the codes at the same positions (the maximum of the
 * values s q is at the maximum of the codes q: the quantizer is monotone). */
void qf_maxpool_forward(float *out, int32_t *argmax, const float *x, const qf_conv_geom *g,
                        float *out_codes, const float *codes);

/* dx (C, H, W) = dout (C, OH, OW) routed to the argmax positions (overwritten). */
void qf_maxpool_backward(float *dx, const float *dout, const int32_t *argmax,
                         const qf_conv_geom *g);

#endif
