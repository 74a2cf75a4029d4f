/* maxpool.c: max pooling forward and backward (maxpool.h). */
#include <string.h>
#include "maxpool.h"

/* Flat index into the (H, W) plane of the first maximum of window (oy, ox). */
static int64_t window_argmax(const float *plane, const qf_conv_geom *g, int64_t oy, int64_t ox)
{
    int64_t best = -1;
    float best_value = 0.0f;
    for (int64_t ky = 0; ky < g->kh; ky++) {
        int64_t y = oy * g->sh - g->ph + ky;
        if (y < 0 || y >= g->h)
            continue;
        for (int64_t kx = 0; kx < g->kw; kx++) {
            int64_t x = ox * g->sw - g->pw + kx;
            if (x < 0 || x >= g->w)
                continue;
            float v = plane[y * g->w + x];
            if (best < 0 || v > best_value) {
                best = y * g->w + x;
                best_value = v;
            }
        }
    }
    return best;
}

void qf_maxpool_forward(float *out, int32_t *argmax, const float *x, const qf_conv_geom *g,
                        float *out_codes, const float *codes)
{
    int64_t plane = g->h * g->w;
    for (int64_t c = 0; c < g->c; c++)
        for (int64_t oy = 0; oy < g->oh; oy++)
            for (int64_t ox = 0; ox < g->ow; ox++) {
                int64_t j = (c * g->oh + oy) * g->ow + ox;
                int64_t at = c * plane + window_argmax(x + c * plane, g, oy, ox);
                argmax[j] = (int32_t)at;
                out[j] = x[at];
                if (codes)
                    out_codes[j] = codes[at];
            }
}

void qf_maxpool_backward(float *dx, const float *dout, const int32_t *argmax,
                         const qf_conv_geom *g)
{
    memset(dx, 0, sizeof(float) * (size_t)(g->c * g->h * g->w));
    for (int64_t j = 0; j < g->c * g->oh * g->ow; j++)
        dx[argmax[j]] += dout[j];
}
