/* circuit_maxpool.c: the MAXPOOL op of the integer circuit in both engines
 * (int64 samples, float32 blocks).  Taps in the padding are skipped; the
 * padding is at most half the kernel, so every window holds a tap.  A max
 * of exact integers is exact in either type. */
#include "circuit_internal.h"

/* Whether tap (ky, kx) of window (oy, ox) lies inside the input; *at: its flat index. */
static int tap(const qf_circuit_op *p, int64_t oy, int64_t ox, int64_t ky, int64_t kx,
               int64_t *at)
{
    int64_t y = oy * p->sh - p->ph + ky, x = ox * p->sw - p->pw + kx;
    *at = y * p->in_shape[2] + x;
    return y >= 0 && y < p->in_shape[1] && x >= 0 && x < p->in_shape[2];
}

void qf_circuit_maxpool_sample(const qf_circuit_op *p, int64_t *dst, const int64_t *src)
{
    int64_t plane = p->in_shape[1] * p->in_shape[2];
    for (int64_t c = 0; c < p->out_shape[0]; c++)
        for (int64_t oy = 0; oy < p->out_shape[1]; oy++)
            for (int64_t ox = 0; ox < p->out_shape[2]; ox++) {
                int64_t best = INT64_MIN, at;
                for (int64_t ky = 0; ky < p->kh; ky++)
                    for (int64_t kx = 0; kx < p->kw; kx++)
                        if (tap(p, oy, ox, ky, kx, &at) && src[c * plane + at] > best)
                            best = src[c * plane + at];
                *dst++ = best;
            }
}

void qf_circuit_maxpool_block(const qf_circuit_op *p, float *dst, const float *src,
                              int64_t lanes)
{
    int64_t plane = p->in_shape[1] * p->in_shape[2];
    for (int64_t c = 0; c < p->out_shape[0]; c++)
        for (int64_t oy = 0; oy < p->out_shape[1]; oy++)
            for (int64_t ox = 0; ox < p->out_shape[2]; ox++, dst += lanes) {
                int first = 1;
                int64_t at;
                for (int64_t ky = 0; ky < p->kh; ky++)
                    for (int64_t kx = 0; kx < p->kw; kx++) {
                        if (!tap(p, oy, ox, ky, kx, &at))
                            continue;
                        const float *row = src + (c * plane + at) * lanes;
                        for (int64_t s = 0; s < lanes; s++)
                            dst[s] = first || row[s] > dst[s] ? row[s] : dst[s];
                        first = 0;
                    }
            }
}
