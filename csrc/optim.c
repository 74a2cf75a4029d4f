/* optim.c: AdamW and SGD updates. */
#include <math.h>
#include "optim.h"

void qf_adamw_update(float *p, float *m, float *v, const float *g, const uint8_t *mask,
                     int64_t n, float lr, float b1, float b2, float eps, float wd,
                     int64_t step)
{
    float decay = 1.0f - lr * wd;
    float step_size = (float)((double)lr / (1.0 - pow((double)b1, (double)step)));
    float bc2_sqrt = (float)sqrt(1.0 - pow((double)b2, (double)step));
    for (int64_t i = 0; i < n; i++) {
        if (mask && !mask[i])
            continue;
        float gi = g[i];
        p[i] *= decay;
        m[i] += (1.0f - b1) * (gi - m[i]);
        v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
        float denom = sqrtf(v[i]) / bc2_sqrt + eps;
        p[i] -= step_size * (m[i] / denom);
    }
}

void qf_sgd_update(float *p, float *buf, const float *g, const uint8_t *mask, int64_t n,
                   float lr, float momentum, float dampening, float wd, int nesterov,
                   int64_t step)
{
    for (int64_t i = 0; i < n; i++) {
        if (mask && !mask[i])
            continue;
        float d = g[i];
        if (wd != 0.0f)
            d += wd * p[i];
        if (momentum != 0.0f) {
            buf[i] = step == 1 ? d : momentum * buf[i] + (1.0f - dampening) * d;
            d = nesterov ? d + momentum * buf[i] : buf[i];
        }
        p[i] -= lr * d;
    }
}
