/* optim.c: AdamW and SGD updates.
 *
 * Each update is one branch-free loop that compilers vectorise.  The masked
 * variants fold the pruning selects into that same loop, so a pruned tensor
 * costs one pass; packed tensors (only the kept entries, see net_packed.c)
 * use the plain ones with the same per-element arithmetic. */
#include "dispatch.h"
#include <math.h>
#include "optim.h"

void qf_adamw_coeffs_init(qf_adamw_coeffs *c, float lr, float b1, float b2, float eps, float wd,
                          int64_t step)
{
    c->decay = 1.0f - lr * wd;
    c->b2 = b2;
    c->one_minus_b1 = 1.0f - b1;
    c->one_minus_b2 = 1.0f - b2;
    c->step_size = (float)((double)lr / (1.0 - pow((double)b1, (double)step)));
    /* sqrt(v) / sqrt(1 - b2^t) as one multiplication: one division per element */
    c->inv_bc2_sqrt = (float)(1.0 / sqrt(1.0 - pow((double)b2, (double)step)));
    c->eps = eps;
}

/* One element of the rule; *m and *v are updated, the new p is returned. */
static inline float adamw_one(float p, float *m, float *v, float g, const qf_adamw_coeffs *c)
{
    float pi = p * c->decay;
    float mi = *m + c->one_minus_b1 * (g - *m);
    float vi = c->b2 * *v + c->one_minus_b2 * g * g;
    float denom = sqrtf(vi) * c->inv_bc2_sqrt + c->eps;
    *m = mi;
    *v = vi;
    return pi - c->step_size * (mi / denom);
}

QF_MULTIVERSION
void qf_adamw_apply(float *restrict p, float *restrict m, float *restrict v,
                    const float *restrict g, int64_t n, const qf_adamw_coeffs *c)
{
    qf_adamw_coeffs k = *c;
    for (int64_t i = 0; i < n; i++)
        p[i] = adamw_one(p[i], m + i, v + i, g[i], &k);
}

QF_MULTIVERSION
void qf_adamw_apply_masked(float *restrict p, float *restrict m, float *restrict v,
                           float *restrict g, const uint8_t *restrict mask, int64_t n,
                           const qf_adamw_coeffs *c)
{
    qf_adamw_coeffs k = *c;
    for (int64_t i = 0; i < n; i++) {
        int keep = mask[i] != 0;
        float gi = keep ? g[i] : 0.0f;
        float mi = m[i], vi = v[i];
        float pi = adamw_one(p[i], &mi, &vi, gi, &k);
        g[i] = gi;
        p[i] = keep ? pi : 0.0f;
        m[i] = keep ? mi : 0.0f;
        v[i] = keep ? vi : 0.0f;
    }
}

void qf_adamw_update(float *p, float *m, float *v, const float *g, int64_t n, float lr,
                     float b1, float b2, float eps, float wd, int64_t step)
{
    qf_adamw_coeffs c;
    qf_adamw_coeffs_init(&c, lr, b1, b2, eps, wd, step);
    qf_adamw_apply(p, m, v, g, n, &c);
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

QF_MULTIVERSION
void qf_sgd_update_masked(float *restrict p, float *restrict buf, float *restrict g,
                          const uint8_t *restrict mask, int64_t n, float lr, float momentum,
                          float dampening, float wd, int nesterov, int64_t step)
{
    for (int64_t i = 0; i < n; i++) {
        int keep = mask[i] != 0;
        float gi = keep ? g[i] : 0.0f;
        float pi = p[i], bi = buf[i];
        float np = sgd_one(&pi, &bi, gi, lr, momentum, dampening, wd, nesterov, step);
        g[i] = gi;
        p[i] = keep ? np : 0.0f;
        buf[i] = keep ? bi : 0.0f;
    }
}
