/* conv.c: patch extraction (im2col), its adjoint (col2im), 2-D transpose. */
#include "conv.h"

int64_t qf_conv_out_dim(int64_t in, int64_t kernel, int64_t stride, int64_t pad)
{
    int64_t span = in + 2 * pad - kernel;
    if (span < 0 || stride < 1)
        return 0;
    return span / stride + 1;
}

void qf_im2col(float *cols, const float *x, const qf_conv_geom *g)
{
    int64_t k_len = g->c * g->kh * g->kw;
    for (int64_t oy = 0; oy < g->oh; oy++) {
        for (int64_t ox = 0; ox < g->ow; ox++) {
            float *row = cols + (oy * g->ow + ox) * k_len;
            for (int64_t c = 0; c < g->c; c++) {
                for (int64_t ky = 0; ky < g->kh; ky++) {
                    int64_t y = oy * g->sh - g->ph + ky;
                    for (int64_t kx = 0; kx < g->kw; kx++) {
                        int64_t xx = ox * g->sw - g->pw + kx;
                        int inside = y >= 0 && y < g->h && xx >= 0 && xx < g->w;
                        *row++ = inside ? x[(c * g->h + y) * g->w + xx] : 0.0f;
                    }
                }
            }
        }
    }
}

void qf_col2im(float *dx, const float *dcols, const qf_conv_geom *g)
{
    int64_t k_len = g->c * g->kh * g->kw;
    for (int64_t oy = 0; oy < g->oh; oy++) {
        for (int64_t ox = 0; ox < g->ow; ox++) {
            const float *row = dcols + (oy * g->ow + ox) * k_len;
            for (int64_t c = 0; c < g->c; c++) {
                for (int64_t ky = 0; ky < g->kh; ky++) {
                    int64_t y = oy * g->sh - g->ph + ky;
                    for (int64_t kx = 0; kx < g->kw; kx++, row++) {
                        int64_t xx = ox * g->sw - g->pw + kx;
                        if (y >= 0 && y < g->h && xx >= 0 && xx < g->w)
                            dx[(c * g->h + y) * g->w + xx] += *row;
                    }
                }
            }
        }
    }
}

void qf_transpose2d(float *dst, const float *src, int64_t a, int64_t b)
{
    for (int64_t i = 0; i < a; i++)
        for (int64_t j = 0; j < b; j++)
            dst[j * a + i] = src[i * b + j];
}
