/* batchnorm.h: 2-D batch normalisation (torch.nn.BatchNorm2d) on NCHW batches.
 *
 * A batch x is (N, C, HW); statistics are per channel over its M = N * HW
 * values.  Training (and eval without running statistics) normalises with
 * the batch mean and the biased variance:
 *     y = (x - mean) / sqrt(var + eps) * gamma + beta,
 * and updates running_mean / running_var (unbiased, var * M / (M - 1)) as
 * torch does: r = (1 - f) r + f stat, f = momentum, or 1 / batches seen for
 * a cumulative average (momentum < 0, torch's momentum=None).
 *
 * Eval mode with running statistics is one affine map per channel, in one
 * float32 rounding rule shared with the integer circuit (compile.py):
 *     k[c]     = gamma[c] / sqrt(running_var[c] + eps)          (float32, each op rounded)
 *     y        = (x - running_mean[c]) * k[c] + beta[c]         (float input)
 * and, folded into an epilogue y = float32(acc) * scale + bias before it
 * (a quantized conv/linear from integer codes, or codes s * q):
 *     scale'   = scale * k[c]
 *     bias'    = (bias - running_mean[c]) * k[c] + beta[c]      (bias 0 for codes)
 *     y        = float32(acc) * scale' + bias'                  (qf_affine_epilogue)
 * Sums of the statistics run in double in a fixed order. */
#ifndef QF_BATCHNORM_H
#define QF_BATCHNORM_H

#include <stdint.h>

/* mean (C), var (C, biased) of x (N, C, HW). */
void qf_bn_batch_stats(float *mean, float *var, const float *x, int64_t n, int64_t c,
                       int64_t hw);

/* y (N, C, HW) = xhat * gamma + beta and xhat (N, C, HW) = (x - mean) * invstd,
 * invstd (C) = 1 / sqrt(var + eps) (written).  gamma, beta NULL: 1 and 0. */
void qf_bn_train_forward(float *y, float *xhat, float *invstd, const float *x,
                         const float *mean, const float *var, const float *gamma,
                         const float *beta, float eps, int64_t n, int64_t c, int64_t hw);

/* running_mean, running_var (C) moved towards mean and the unbiased var
 * (M = n * hw > 1) by factor f. */
void qf_bn_update_running(float *running_mean, float *running_var, const float *mean,
                          const float *var, float f, int64_t m, int64_t c);

/* k (C) = gamma / sqrt(running_var + eps); gamma NULL: 1. */
void qf_bn_eval_factor(float *k, const float *gamma, const float *running_var, float eps,
                       int64_t c);

/* Eval map of float input: y (N, C, HW) = (x - running_mean) * k + beta (beta NULL: 0). */
void qf_bn_eval_forward(float *y, const float *x, const float *running_mean, const float *k,
                        const float *beta, int64_t n, int64_t c, int64_t hw);

/* Fold into an epilogue: scale (C) *= k; bias_out (C) = (bias_in - running_mean) * k + beta
 * (bias_in, beta NULL: 0). */
void qf_bn_fold(float *scale, float *bias_out, const float *bias_in, const float *running_mean,
                const float *k, const float *beta, int64_t c);

/* Backward of the batch-statistics forward from dy (N, C, HW):
 *   dx (N, C, HW) = gamma invstd / M (M dy - sum dy - xhat sum dy xhat)
 *                   (overwritten; NULL: skipped)
 *   dgamma, dbeta (C) += sum dy xhat, sum dy (NULL: skipped) */
void qf_bn_backward(float *dx, float *dgamma, float *dbeta, const float *dy, const float *xhat,
                    const float *gamma, const float *invstd, int64_t n, int64_t c, int64_t hw);

#endif
