/* optim.h: optimizer update kernels, PyTorch semantics (torch.optim.AdamW, SGD).
 * All arrays have n entries. */
#ifndef QF_OPTIM_H
#define QF_OPTIM_H

#include <stdint.h>

/* AdamW step number `step` (1-based):
 *   p *= 1 - lr * wd;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
 *   p -= (lr / (1 - b1^step)) * m / (sqrt(v) * (1 / sqrt(1 - b2^step)) + eps)
 * (torch divides by sqrt(1 - b2^step); the reciprocal differs by at most an ulp) */
void qf_adamw_update(float *p, float *m, float *v, const float *g, int64_t n, float lr,
                     float b1, float b2, float eps, float wd, int64_t step);

/* SGD step number `step` (1-based): d = g + wd p; with momentum mu:
 *   buf = d on step 1, else buf = mu buf + (1 - dampening) d;
 *   d = nesterov ? d + mu buf : buf;   p -= lr d */
void qf_sgd_update(float *p, float *buf, const float *g, int64_t n, float lr, float momentum,
                   float dampening, float wd, int nesterov, int64_t step);

#endif
