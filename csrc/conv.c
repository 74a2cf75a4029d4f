/* conv.c: patch extraction (im2col), its adjoint (col2im, col2im_t), 2-D transpose. */
#include "dispatch.h"
#include "conv.h"

int64_t qf_conv_out_dim(int64_t in, int64_t kernel, int64_t stride, int64_t pad)
{
    int64_t span = in + 2 * pad - kernel;
    if (span < 0 || stride < 1)
        return 0;
    return span / stride + 1;
}

#define INLINE static inline __attribute__((always_inline))

/* Patch rows are written a (channel, kernel row) run of KW taps at a time:
 * runs wholly inside the input are plain copies, the others test each tap.
 * The walks below take kw as an argument that the dispatchers make a
 * compile-time constant for the usual kernels (1, 3, 5), so that a run is a
 * few moves rather than a loop. */
INLINE void im2col_walk(float *cols, const float *x, const qf_conv_geom *g, int64_t kw)
{
    int64_t k_len = g->c * g->kh * kw;
    for (int64_t oy = 0; oy < g->oh; oy++) {
        for (int64_t ox = 0; ox < g->ow; ox++) {
            float *restrict row = cols + (oy * g->ow + ox) * k_len;
            int64_t y0 = oy * g->sh - g->ph, x0 = ox * g->sw - g->pw;
            int x_inside = x0 >= 0 && x0 + kw <= g->w;
            for (int64_t c = 0; c < g->c; c++) {
                for (int64_t ky = 0; ky < g->kh; ky++, row += kw) {
                    int64_t y = y0 + ky;
                    if (y < 0 || y >= g->h) {
                        for (int64_t kx = 0; kx < kw; kx++)
                            row[kx] = 0.0f;
                        continue;
                    }
                    const float *restrict line = x + (c * g->h + y) * g->w;
                    if (x_inside) {
                        for (int64_t kx = 0; kx < kw; kx++)
                            row[kx] = line[x0 + kx];
                    } else {
                        for (int64_t kx = 0; kx < kw; kx++) {
                            int64_t xx = x0 + kx;
                            row[kx] = xx >= 0 && xx < g->w ? line[xx] : 0.0f;
                        }
                    }
                }
            }
        }
    }
}

void qf_im2col(float *cols, const float *x, const qf_conv_geom *g)
{
    switch (g->kw) {
    case 1: im2col_walk(cols, x, g, 1); break;
    case 3: im2col_walk(cols, x, g, 3); break;
    case 5: im2col_walk(cols, x, g, 5); break;
    default: im2col_walk(cols, x, g, g->kw); break;
    }
}

/* The adjoint, adding in the (position, channel, kernel row, tap) order of
 * conv.h for every kw. */
INLINE void col2im_walk(float *dx, const float *dcols, const qf_conv_geom *g, int64_t kw)
{
    int64_t k_len = g->c * g->kh * kw;
    for (int64_t oy = 0; oy < g->oh; oy++) {
        for (int64_t ox = 0; ox < g->ow; ox++) {
            const float *row = dcols + (oy * g->ow + ox) * k_len;
            int64_t y0 = oy * g->sh - g->ph, x0 = ox * g->sw - g->pw;
            int x_inside = x0 >= 0 && x0 + kw <= g->w;
            for (int64_t c = 0; c < g->c; c++) {
                for (int64_t ky = 0; ky < g->kh; ky++, row += kw) {
                    int64_t y = y0 + ky;
                    if (y < 0 || y >= g->h)
                        continue;
                    float *line = dx + (c * g->h + y) * g->w;
                    if (x_inside) {
                        for (int64_t kx = 0; kx < kw; kx++)
                            line[x0 + kx] += row[kx];
                    } else {
                        for (int64_t kx = 0; kx < kw; kx++) {
                            int64_t xx = x0 + kx;
                            if (xx >= 0 && xx < g->w)
                                line[xx] += row[kx];
                        }
                    }
                }
            }
        }
    }
}

void qf_col2im(float *dx, const float *dcols, const qf_conv_geom *g)
{
    switch (g->kw) {
    case 1: col2im_walk(dx, dcols, g, 1); break;
    case 3: col2im_walk(dx, dcols, g, 3); break;
    case 5: col2im_walk(dx, dcols, g, 5); break;
    default: col2im_walk(dx, dcols, g, g->kw); break;
    }
}

/* The adjoint of im2col from the transposed patches, one tap row at a time
 * (contiguous, vectorised at stride 1).  The taps run in reverse (channel,
 * kernel row, tap) order: tap (ky, kx) reaches element (y, x) from position
 * ((y + ph - ky) / sh, (x + pw - kx) / sw), so taps in decreasing (ky, kx)
 * bring each element its gradients in increasing position order (conv.h). */
INLINE void col2im_t_walk(float *dx, const float *dcols_t, const qf_conv_geom *g, int64_t sw)
{
    int64_t p = g->oh * g->ow;
    for (int64_t c = 0; c < g->c; c++)
        for (int64_t ky = g->kh - 1; ky >= 0; ky--)
            for (int64_t kx = g->kw - 1; kx >= 0; kx--) {
                const float *tap = dcols_t + ((c * g->kh + ky) * g->kw + kx) * p;
                /* positions ox whose x = ox sw - pw + kx lies in [0, W) */
                int64_t lo = g->pw - kx > 0 ? (g->pw - kx + sw - 1) / sw : 0;
                int64_t last = g->w - 1 + g->pw - kx;   /* ox sw <= last */
                int64_t hi = last < 0 ? 0 : last / sw + 1;
                hi = hi < g->ow ? hi : g->ow;
                for (int64_t oy = 0; oy < g->oh; oy++) {
                    int64_t y = oy * g->sh - g->ph + ky;
                    if (y < 0 || y >= g->h)
                        continue;
                    float *restrict line = dx + (c * g->h + y) * g->w;
                    const float *restrict row = tap + oy * g->ow;
                    for (int64_t ox = lo; ox < hi; ox++)
                        line[ox * sw + kx - g->pw] += row[ox];
                }
            }
}

QF_MULTIVERSION
void qf_col2im_t(float *dx, const float *dcols_t, const qf_conv_geom *g)
{
    if (g->sw == 1)   /* a compile-time stride: the rows add as vectors */
        col2im_t_walk(dx, dcols_t, g, 1);
    else
        col2im_t_walk(dx, dcols_t, g, g->sw);
}

void qf_transpose2d(float *dst, const float *src, int64_t a, int64_t b)
{
    for (int64_t i = 0; i < a; i++)
        for (int64_t j = 0; j < b; j++)
            dst[j * a + i] = src[i * b + j];
}
