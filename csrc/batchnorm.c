/* batchnorm.c: BatchNorm2d kernels (batchnorm.h). */
#include <math.h>
#include "batchnorm.h"

void qf_bn_batch_stats(float *mean, float *var, const float *x, int64_t n, int64_t c,
                       int64_t hw)
{
    double m = (double)(n * hw);
    for (int64_t ch = 0; ch < c; ch++) {
        double sum = 0.0, sq = 0.0;
        for (int64_t s = 0; s < n; s++) {
            const float *p = x + (s * c + ch) * hw;
            for (int64_t i = 0; i < hw; i++)
                sum += p[i];
        }
        double mu = sum / m;
        for (int64_t s = 0; s < n; s++) {
            const float *p = x + (s * c + ch) * hw;
            for (int64_t i = 0; i < hw; i++)
                sq += ((double)p[i] - mu) * ((double)p[i] - mu);
        }
        mean[ch] = (float)mu;
        var[ch] = (float)(sq / m);
    }
}

void qf_bn_train_forward(float *y, float *xhat, float *invstd, const float *x,
                         const float *mean, const float *var, const float *gamma,
                         const float *beta, float eps, int64_t n, int64_t c, int64_t hw)
{
    for (int64_t ch = 0; ch < c; ch++)
        invstd[ch] = (float)(1.0 / sqrt((double)var[ch] + (double)eps));
    for (int64_t s = 0; s < n; s++)
        for (int64_t ch = 0; ch < c; ch++) {
            int64_t base = (s * c + ch) * hw;
            float mu = mean[ch], is = invstd[ch];
            float g = gamma ? gamma[ch] : 1.0f, b = beta ? beta[ch] : 0.0f;
            for (int64_t i = 0; i < hw; i++) {
                float h = (x[base + i] - mu) * is;
                xhat[base + i] = h;
                y[base + i] = h * g + b;
            }
        }
}

void qf_bn_update_running(float *running_mean, float *running_var, const float *mean,
                          const float *var, float f, int64_t m, int64_t c)
{
    double unbias = (double)m / (double)(m - 1);
    for (int64_t ch = 0; ch < c; ch++) {
        running_mean[ch] = (1.0f - f) * running_mean[ch] + f * mean[ch];
        running_var[ch] = (1.0f - f) * running_var[ch] + f * (float)((double)var[ch] * unbias);
    }
}

void qf_bn_eval_factor(float *k, const float *gamma, const float *running_var, float eps,
                       int64_t c)
{
    for (int64_t ch = 0; ch < c; ch++) {
        float t = running_var[ch] + eps;
        float r = sqrtf(t);
        k[ch] = (gamma ? gamma[ch] : 1.0f) / r;
    }
}

void qf_bn_eval_forward(float *y, const float *x, const float *running_mean, const float *k,
                        const float *beta, int64_t n, int64_t c, int64_t hw)
{
    for (int64_t s = 0; s < n; s++)
        for (int64_t ch = 0; ch < c; ch++) {
            int64_t base = (s * c + ch) * hw;
            float mu = running_mean[ch], kk = k[ch], b = beta ? beta[ch] : 0.0f;
            for (int64_t i = 0; i < hw; i++) {
                float t = (x[base + i] - mu) * kk;
                y[base + i] = t + b;
            }
        }
}

void qf_bn_fold(float *scale, float *bias_out, const float *bias_in, const float *running_mean,
                const float *k, const float *beta, int64_t c)
{
    for (int64_t ch = 0; ch < c; ch++) {
        float t = ((bias_in ? bias_in[ch] : 0.0f) - running_mean[ch]) * k[ch];
        bias_out[ch] = t + (beta ? beta[ch] : 0.0f);
        scale[ch] = scale[ch] * k[ch];
    }
}

void qf_bn_backward(float *dx, float *dgamma, float *dbeta, const float *dy, const float *xhat,
                    const float *gamma, const float *invstd, int64_t n, int64_t c, int64_t hw)
{
    double m = (double)(n * hw);
    for (int64_t ch = 0; ch < c; ch++) {
        double sum_dy = 0.0, sum_dy_xhat = 0.0;
        for (int64_t s = 0; s < n; s++) {
            int64_t base = (s * c + ch) * hw;
            for (int64_t i = 0; i < hw; i++) {
                sum_dy += dy[base + i];
                sum_dy_xhat += (double)dy[base + i] * xhat[base + i];
            }
        }
        if (dgamma)
            dgamma[ch] += (float)sum_dy_xhat;
        if (dbeta)
            dbeta[ch] += (float)sum_dy;
        if (!dx)
            continue;
        float g = gamma ? gamma[ch] : 1.0f;
        float coef = (float)((double)g * invstd[ch] / m);
        float sum_dy_f = (float)sum_dy, sum_dyx_f = (float)sum_dy_xhat, mf = (float)m;
        for (int64_t s = 0; s < n; s++) {
            int64_t base = (s * c + ch) * hw;
            for (int64_t i = 0; i < hw; i++)
                dx[base + i] = coef * (mf * dy[base + i] - sum_dy_f - xhat[base + i] * sum_dyx_f);
        }
    }
}
