/* pool.c: average pooling forward and backward. */
#include <string.h>
#include "pool.h"
#include "quant.h"

/* Sum in double: exact for integer codes (any window of 16-bit codes), and the float
 * path's average is taken from the same sum. */
static double window_sum(const float *plane, const qf_conv_geom *g, int64_t oy, int64_t ox)
{
    double sum = 0.0;
    for (int64_t ky = 0; ky < g->kh; ky++) {
        int64_t y = oy * g->sh - g->ph + ky;
        if (y < 0 || y >= g->h)
            continue;
        for (int64_t kx = 0; kx < g->kw; kx++) {
            int64_t x = ox * g->sw - g->pw + kx;
            if (x >= 0 && x < g->w)
                sum += plane[y * g->w + x];
        }
    }
    return sum;
}

/* Whether the windows are 2x2, stride 2, no padding: every window inside the
 * input and no two overlapping (the usual pooling, walked directly below). */
static int is_2x2_tiling(const qf_conv_geom *g)
{
    return g->kh == 2 && g->kw == 2 && g->sh == 2 && g->sw == 2 && g->ph == 0 && g->pw == 0;
}

/* window_sum's sums, in its order, for 2x2 windows of stride 2. */
static void avgpool_2x2(float *out, const float *x, const qf_conv_geom *g, int codes,
                        float scale)
{
    for (int64_t c = 0; c < g->c; c++) {
        const float *plane = x + c * g->h * g->w;
        float *o = out + c * g->oh * g->ow;
        for (int64_t oy = 0; oy < g->oh; oy++) {
            const float *top = plane + 2 * oy * g->w, *bottom = top + g->w;
            for (int64_t ox = 0; ox < g->ow; ox++) {
                double sum = 0.0;
                sum += top[2 * ox];
                sum += top[2 * ox + 1];
                sum += bottom[2 * ox];
                sum += bottom[2 * ox + 1];
                o[oy * g->ow + ox] = codes ? qf_affine_epilogue((int64_t)sum, scale, 0.0f)
                                           : (float)sum / 4.0f;
            }
        }
    }
}

void qf_avgpool_forward(float *out, const float *x, const qf_conv_geom *g,
                        int codes, float scale)
{
    if (is_2x2_tiling(g)) {
        avgpool_2x2(out, x, g, codes, scale);
        return;
    }
    float count = (float)(g->kh * g->kw);
    for (int64_t c = 0; c < g->c; c++) {
        const float *plane = x + c * g->h * g->w;
        float *o = out + c * g->oh * g->ow;
        for (int64_t oy = 0; oy < g->oh; oy++)
            for (int64_t ox = 0; ox < g->ow; ox++) {
                double sum = window_sum(plane, g, oy, ox);
                o[oy * g->ow + ox] = codes ? qf_affine_epilogue((int64_t)sum, scale, 0.0f)
                                           : (float)sum / count;
            }
    }
}

void qf_avgpool_backward(float *dx, const float *dout, const qf_conv_geom *g)
{
    float count = (float)(g->kh * g->kw);
    memset(dx, 0, sizeof(float) * (size_t)(g->c * g->h * g->w));
    if (is_2x2_tiling(g)) {   /* each input element in one window: 0 + share */
        for (int64_t c = 0; c < g->c; c++) {
            float *plane = dx + c * g->h * g->w;
            const float *d = dout + c * g->oh * g->ow;
            for (int64_t oy = 0; oy < g->oh; oy++) {
                float *top = plane + 2 * oy * g->w, *bottom = top + g->w;
                for (int64_t ox = 0; ox < g->ow; ox++) {
                    float share = d[oy * g->ow + ox] / 4.0f;
                    top[2 * ox] += share;
                    top[2 * ox + 1] += share;
                    bottom[2 * ox] += share;
                    bottom[2 * ox + 1] += share;
                }
            }
        }
        return;
    }
    for (int64_t c = 0; c < g->c; c++) {
        float *plane = dx + c * g->h * g->w;
        const float *d = dout + c * g->oh * g->ow;
        for (int64_t oy = 0; oy < g->oh; oy++)
            for (int64_t ox = 0; ox < g->ow; ox++) {
                float share = d[oy * g->ow + ox] / count;
                for (int64_t ky = 0; ky < g->kh; ky++) {
                    int64_t y = oy * g->sh - g->ph + ky;
                    if (y < 0 || y >= g->h)
                        continue;
                    for (int64_t kx = 0; kx < g->kw; kx++) {
                        int64_t xx = ox * g->sw - g->pw + kx;
                        if (xx >= 0 && xx < g->w)
                            plane[y * g->w + xx] += share;
                    }
                }
            }
    }
}
