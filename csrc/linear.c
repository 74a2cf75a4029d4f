/* linear.c: fully connected layer kernels.
 *
 * Dot products keep eight partial sums in a fixed order (lane j sums the
 * elements i = j mod 8, then the lanes are added pairwise), so compilers
 * vectorise them at any vector width and the result is the same float32
 * value on every instruction set. */
#include "dispatch.h"
#include <string.h>
#include "linear.h"
#include "quant.h"

#define LANES 8

/* sum_i a[i] * b[i] in float32 with the fixed lane order above. */
static inline float dot_f32(const float *restrict a, const float *restrict b, int64_t n)
{
    float lane[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++)
            lane[j] += a[i + j] * b[i + j];
    for (int j = 0; i < n; i++, j++)
        lane[j] += a[i] * b[i];
    float s0 = (lane[0] + lane[4]) + (lane[2] + lane[6]);
    float s1 = (lane[1] + lane[5]) + (lane[3] + lane[7]);
    return s0 + s1;
}

/* The same in double, for integer codes whose sums may pass 2^24. */
static inline double dot_f64(const float *restrict a, const float *restrict b, int64_t n)
{
    double lane[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++)
            lane[j] += (double)a[i + j] * (double)b[i + j];
    for (int j = 0; i < n; i++, j++)
        lane[j] += (double)a[i] * (double)b[i];
    return ((lane[0] + lane[4]) + (lane[2] + lane[6])) + ((lane[1] + lane[5]) + (lane[3] + lane[7]));
}

QF_MULTIVERSION
void qf_linear_forward(float *out, const float *x, const float *w, const float *b,
                       int64_t n, int64_t n_in, int64_t n_out)
{
    for (int64_t s = 0; s < n; s++) {
        const float *xs = x + s * n_in;
        float *os = out + s * n_out;
        for (int64_t o = 0; o < n_out; o++) {
            float acc = dot_f32(xs, w + o * n_in, n_in);
            os[o] = b ? acc + b[o] : acc;
        }
    }
}

QF_MULTIVERSION
void qf_linear_forward_codes(float *out, const float *xcodes, const float *wcodes,
                             const float *scale, const float *b, int exact_f32,
                             int64_t n, int64_t n_in, int64_t n_out)
{
    for (int64_t s = 0; s < n; s++) {
        const float *xs = xcodes + s * n_in;
        float *os = out + s * n_out;
        for (int64_t o = 0; o < n_out; o++) {
            const float *wo = wcodes + o * n_in;
            int64_t acc = exact_f32 ? (int64_t)dot_f32(xs, wo, n_in) : (int64_t)dot_f64(xs, wo, n_in);
            os[o] = qf_affine_epilogue(acc, scale[o], b ? b[o] : 0.0f);
        }
    }
}

QF_MULTIVERSION
void qf_linear_forward_codes_t(float *out, const float *xcodes, const float *wcodes_t,
                               const float *scale, const float *b,
                               int64_t n, int64_t n_in, int64_t n_out)
{
    for (int64_t s = 0; s < n; s++) {
        const float *xs = xcodes + s * n_in;
        float *restrict acc = out + s * n_out;
        for (int64_t o = 0; o < n_out; o++)
            acc[o] = 0.0f;
        for (int64_t i = 0; i < n_in; i++) {
            float xv = xs[i];
            if (xv == 0.0f)
                continue;
            const float *restrict wi = wcodes_t + i * n_out;
            for (int64_t o = 0; o < n_out; o++)
                acc[o] += xv * wi[o];
        }
        for (int64_t o = 0; o < n_out; o++)
            acc[o] = qf_affine_epilogue((int64_t)acc[o], scale[o], b ? b[o] : 0.0f);
    }
}

QF_MULTIVERSION
void qf_linear_backward(float *dx, float *dw, float *db, const float *dout,
                        const float *x, const float *w,
                        int64_t n, int64_t n_in, int64_t n_out)
{
    for (int64_t s = 0; s < n; s++) {
        const float *ds = dout + s * n_out;
        const float *restrict xs = x + s * n_in;
        float *restrict dxs = dx ? dx + s * n_in : NULL;
        if (dxs)
            memset(dxs, 0, (size_t)n_in * sizeof(float));
        for (int64_t o = 0; o < n_out; o++) {
            float g = ds[o];
            if (g == 0.0f)
                continue;
            const float *restrict wo = w + o * n_in;
            float *restrict dwo = dw + o * n_in;
            for (int64_t i = 0; i < n_in; i++)
                dwo[i] += g * xs[i];
            if (dxs)
                for (int64_t i = 0; i < n_in; i++)
                    dxs[i] += g * wo[i];
            if (db)
                db[o] += g;
        }
    }
}
