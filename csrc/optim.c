/* optim.c: AdamW and SGD updates.
 *
 * Each update is one branch-free loop that compilers vectorise.  A pruned
 * entry (value, gradient and moments all exactly 0) stays exactly 0 under
 * both rules, so pruned tensors take the same dense path. */
#include "dispatch.h"
#include <math.h>
#include "optim.h"

typedef struct {
    float decay, b1, b2, one_minus_b1, one_minus_b2, step_size, bc2_sqrt, eps;
} adamw_consts;

QF_MULTIVERSION
void qf_adamw_update(float *restrict p, float *restrict m, float *restrict v,
                     const float *restrict g, int64_t n, float lr, float b1, float b2,
                     float eps, float wd, int64_t step)
{
    float decay = 1.0f - lr * wd;
    float one_minus_b1 = 1.0f - b1, one_minus_b2 = 1.0f - b2;
    float step_size = (float)((double)lr / (1.0 - pow((double)b1, (double)step)));
    /* sqrt(v) / sqrt(1 - b2^t) as one multiplication: one division per element */
    float inv_bc2_sqrt = (float)(1.0 / sqrt(1.0 - pow((double)b2, (double)step)));
    for (int64_t i = 0; i < n; i++) {
        float gi = g[i];
        float pi = p[i] * decay;
        float mi = m[i] + one_minus_b1 * (gi - m[i]);
        float vi = b2 * v[i] + one_minus_b2 * gi * gi;
        float denom = sqrtf(vi) * inv_bc2_sqrt + eps;
        p[i] = pi - step_size * (mi / denom);
        m[i] = mi;
        v[i] = vi;
    }
}

static inline float sgd_one(float *p, float *buf, float g, float lr, float momentum,
                            float dampening, float wd, int nesterov, int64_t step)
{
    float d = g;
    if (wd != 0.0f)
        d += wd * *p;
    if (momentum != 0.0f) {
        *buf = step == 1 ? d : momentum * *buf + (1.0f - dampening) * d;
        d = nesterov ? d + momentum * *buf : *buf;
    }
    return *p - lr * d;
}

QF_MULTIVERSION
void qf_sgd_update(float *restrict p, float *restrict buf, const float *restrict g, int64_t n,
                   float lr, float momentum, float dampening, float wd, int nesterov, int64_t step)
{
    for (int64_t i = 0; i < n; i++)
        p[i] = sgd_one(p + i, buf + i, g[i], lr, momentum, dampening, wd, nesterov, step);
}
