/* linear.c: fully connected layer kernels. */
#include <string.h>
#include "linear.h"
#include "quant.h"

void qf_linear_forward(float *out, const float *x, const float *w, const float *b,
                       int64_t n, int64_t n_in, int64_t n_out)
{
    for (int64_t s = 0; s < n; s++) {
        const float *xs = x + s * n_in;
        float *os = out + s * n_out;
        for (int64_t o = 0; o < n_out; o++) {
            const float *wo = w + o * n_in;
            float acc = 0.0f;
            for (int64_t i = 0; i < n_in; i++)
                acc += xs[i] * wo[i];
            os[o] = b ? acc + b[o] : acc;
        }
    }
}

void qf_linear_forward_codes(float *out, const float *xcodes, const float *wcodes,
                             float scale, const float *b,
                             int64_t n, int64_t n_in, int64_t n_out)
{
    for (int64_t s = 0; s < n; s++) {
        const float *xs = xcodes + s * n_in;
        float *os = out + s * n_out;
        for (int64_t o = 0; o < n_out; o++) {
            const float *wo = wcodes + o * n_in;
            double acc = 0.0;   /* products of codes < 2^24 are exact in double */
            for (int64_t i = 0; i < n_in; i++)
                acc += (double)xs[i] * (double)wo[i];
            os[o] = qf_affine_epilogue((int64_t)acc, scale, b ? b[o] : 0.0f);
        }
    }
}

void qf_linear_backward(float *dx, float *dw, float *db, const float *dout,
                        const float *x, const float *w,
                        int64_t n, int64_t n_in, int64_t n_out)
{
    for (int64_t s = 0; s < n; s++) {
        const float *ds = dout + s * n_out;
        const float *xs = x + s * n_in;
        float *dxs = dx ? dx + s * n_in : NULL;
        if (dxs)
            memset(dxs, 0, (size_t)n_in * sizeof(float));
        for (int64_t o = 0; o < n_out; o++) {
            float g = ds[o];
            if (g == 0.0f)
                continue;
            const float *wo = w + o * n_in;
            float *dwo = dw + o * n_in;
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
