/* test_col2im.c: the scatters of patch gradients (qf_col2im from patches
 * (P, K) and qf_col2im_t from their transpose (K, P), conv.c) bit for bit
 * against a walk written here from conv.h: the positions (oy, ox) in
 * raster order, then each patch's taps (c, ky, kx), one float32 addition per
 * element reached.  Geometries sweep kernels 1..5 (non-square), strides 1..3,
 * paddings 0..kernel-1, small and one-pixel inputs; values span many binary
 * orders of magnitude, so another order of additions gives other bits (the
 * test checks that too: the taps in increasing order must differ
 * somewhere). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "conv.h"
#include "helpers.h"
#include "rng.h"

/* The walk of conv.h: positions, then taps; taps in increasing (reverse = 0)
 * or decreasing (reverse = 1) (ky, kx) within a position. */
static void reference(float *dx, const float *dcols_t, const qf_conv_geom *g, int reverse)
{
    int64_t p = g->oh * g->ow;
    for (int64_t oy = 0; oy < g->oh; oy++)
        for (int64_t ox = 0; ox < g->ow; ox++)
            for (int64_t c = 0; c < g->c; c++)
                for (int64_t a = 0; a < g->kh * g->kw; a++) {
                    int64_t t = reverse ? g->kh * g->kw - 1 - a : a, ky = t / g->kw, kx = t % g->kw;
                    int64_t y = oy * g->sh - g->ph + ky, x = ox * g->sw - g->pw + kx;
                    if (y < 0 || y >= g->h || x < 0 || x >= g->w)
                        continue;
                    dx[(c * g->h + y) * g->w + x] +=
                        dcols_t[((c * g->kh + ky) * g->kw + kx) * p + oy * g->ow + ox];
                }
}

/* The scatter with taps summed in tap order: the same additions per element
 * in another order (for the test's own sensitivity). */
static void tap_order(float *dx, const float *dcols_t, const qf_conv_geom *g)
{
    int64_t p = g->oh * g->ow;
    for (int64_t c = 0; c < g->c; c++)
        for (int64_t ky = 0; ky < g->kh; ky++)
            for (int64_t kx = 0; kx < g->kw; kx++)
                for (int64_t oy = 0; oy < g->oh; oy++)
                    for (int64_t ox = 0; ox < g->ow; ox++) {
                        int64_t y = oy * g->sh - g->ph + ky, x = ox * g->sw - g->pw + kx;
                        if (y >= 0 && y < g->h && x >= 0 && x < g->w)
                            dx[(c * g->h + y) * g->w + x] +=
                                dcols_t[((c * g->kh + ky) * g->kw + kx) * p + oy * g->ow + ox];
                    }
}

int main(void)
{
    qf_rng rng;
    qf_rng_seed(&rng, 7, 0);
    int differs = 0;
    for (int trial = 0; trial < 300; trial++) {
        qf_conv_geom g;
        g.c = 1 + (int64_t)qf_rng_below(&rng, 3);
        g.kh = 1 + (int64_t)qf_rng_below(&rng, 5);
        g.kw = 1 + (int64_t)qf_rng_below(&rng, 5);
        g.sh = 1 + (int64_t)qf_rng_below(&rng, 3);
        g.sw = 1 + (int64_t)qf_rng_below(&rng, 3);
        g.ph = (int64_t)qf_rng_below(&rng, (uint32_t)g.kh);
        g.pw = (int64_t)qf_rng_below(&rng, (uint32_t)g.kw);
        g.h = trial % 10 == 0 ? 1 : 1 + (int64_t)qf_rng_below(&rng, 12);
        g.w = trial % 10 == 1 ? 1 : 1 + (int64_t)qf_rng_below(&rng, 40);
        g.oh = qf_conv_out_dim(g.h, g.kh, g.sh, g.ph);
        g.ow = qf_conv_out_dim(g.w, g.kw, g.sw, g.pw);
        if (g.oh < 1 || g.ow < 1)
            continue;
        int64_t k = g.c * g.kh * g.kw, p = g.oh * g.ow, n = g.c * g.h * g.w;
        float *dcols_t = malloc(sizeof(float) * (size_t)(k * p));
        float *got = malloc(sizeof(float) * (size_t)n), *want = malloc(sizeof(float) * (size_t)n);
        float *other = malloc(sizeof(float) * (size_t)n), *rows = malloc(sizeof(float) * (size_t)n);
        float *dcols = malloc(sizeof(float) * (size_t)(k * p));
        for (int64_t j = 0; j < k * p; j++)   /* signs and 2^-12 .. 2^12 scales */
            dcols_t[j] = uniform(&rng, -1.0f, 1.0f) * (float)(1 << qf_rng_below(&rng, 13)) /
                         (float)(1 << qf_rng_below(&rng, 13));
        for (int64_t t = 0; t < k; t++)
            for (int64_t j = 0; j < p; j++)
                dcols[j * k + t] = dcols_t[t * p + j];
        for (int64_t j = 0; j < n; j++)
            got[j] = want[j] = other[j] = rows[j] = uniform(&rng, -1.0f, 1.0f);   /* accumulated */
        qf_col2im_t(got, dcols_t, &g);
        qf_col2im(rows, dcols, &g);
        reference(want, dcols_t, &g, trial % 2);
        tap_order(other, dcols_t, &g);
        CHECK(same_bits(got, want, n), "trial %d: c=%lld %lldx%lld k=%lldx%lld s=%lldx%lld "
              "p=%lldx%lld", trial, (long long)g.c, (long long)g.h, (long long)g.w,
              (long long)g.kh, (long long)g.kw, (long long)g.sh, (long long)g.sw,
              (long long)g.ph, (long long)g.pw);
        CHECK(same_bits(rows, want, n), "trial %d (patch rows): c=%lld %lldx%lld k=%lldx%lld", trial,
              (long long)g.c, (long long)g.h, (long long)g.w, (long long)g.kh, (long long)g.kw);
        differs |= !same_bits(other, want, n);
        free(dcols);
        free(rows);
        free(dcols_t);
        free(got);
        free(want);
        free(other);
    }
    CHECK(differs, "the order of additions never mattered: the test could not fail");
    return CHECK_REPORT();
}
