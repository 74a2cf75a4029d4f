/* optim.h: AdamW and SGD parameter updates. */
#ifndef QF_OPTIM_H
#define QF_OPTIM_H

#include <stdint.h>

/* AdamW step number `step` (1-based):
 *   p *= 1 - lr * wd;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
 *   p -= (lr / (1 - b1^step)) * m / (sqrt(v) * (1 / sqrt(1 - b2^step)) + eps)
 * (torch divides by sqrt(1 - b2^step); the reciprocal differs by at most an ulp) */
void qf_adamw_update(float *p, float *m, float *v, const float *g, int64_t n, float lr,
                     float b1, float b2, float eps, float wd, int64_t step);

/* The per-step constants of that rule, computed once for all tensors of a step. */
typedef struct {
    float decay, b2, one_minus_b1, one_minus_b2, step_size, inv_bc2_sqrt, eps;
} qf_adamw_coeffs;

void qf_adamw_coeffs_init(qf_adamw_coeffs *c, float lr, float b1, float b2, float eps, float wd,
                          int64_t step);
/* The update of p, m, v (n) from g (n) with coefficients c. */
void qf_adamw_apply(float *p, float *m, float *v, const float *g, int64_t n,
                    const qf_adamw_coeffs *c);
/* The same for a pruned tensor in one pass: where mask (n) is 0 the gradient
 * is first set to 0 (in g too) and p, m, v are set to 0 after the update;
 * elsewhere exactly qf_adamw_apply. */
void qf_adamw_apply_masked(float *p, float *m, float *v, float *g, const uint8_t *mask,
                           int64_t n, const qf_adamw_coeffs *c);

/* SGD step number `step` (1-based): d = g + wd p; with momentum mu:
 *   buf = d on step 1, else buf = mu buf + (1 - dampening) d;
 *   d = nesterov ? d + mu buf : buf;   p -= lr d */
void qf_sgd_update(float *p, float *buf, const float *g, int64_t n, float lr, float momentum,
                   float dampening, float wd, int nesterov, int64_t step);
/* The same for a pruned tensor in one pass, as qf_adamw_apply_masked. */
void qf_sgd_update_masked(float *p, float *buf, float *g, const uint8_t *mask, int64_t n,
                          float lr, float momentum, float dampening, float wd, int nesterov,
                          int64_t step);

#endif
