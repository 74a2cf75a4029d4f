/* net_batchnorm.c: BatchNorm2d layers inside the network (kernels in
 * batchnorm.h).
 *
 * Training normalises with batch statistics and moves the running ones.
 * Eval mode with running statistics is the per-channel affine map of
 * batchnorm.h, computed in the one float32 rule the integer circuit uses:
 * after a quantized Linear/Conv2d that reads integer codes, the map is folded
 * into that layer's epilogue (scale' = s_x s_w k, bias' = (b - mean) k + beta);
 * on integer codes it is the epilogue of the codes (scale' = s k, bias' =
 * (0 - mean) k + beta); on any other input, (x - mean) k + beta. */
#include <stdio.h>
#include <string.h>
#include "batchnorm.h"
#include "net_internal.h"

static float *tensor_data(qf_net *net, int t) { return t >= 0 ? net->tensors[t].data : NULL; }

float *qf_net_bn_place_cache(qf_layer *L, float *cache)
{
    int64_t c = L->spec.in_features;
    L->bn_mean = cache; cache += c;
    L->bn_var = cache; cache += c;
    L->bn_invstd = cache; cache += c;
    L->bn_k = cache; cache += c;
    L->bn_fold_bias = cache; cache += c;
    return cache;
}

void qf_net_bn_init(qf_net *net, qf_layer *L)
{
    int64_t c = L->spec.in_features;
    if (L->t_gamma >= 0)
        for (int64_t j = 0; j < c; j++)
            net->tensors[L->t_gamma].data[j] = 1.0f;      /* beta stays 0 */
    if (L->t_running_var >= 0)
        for (int64_t j = 0; j < c; j++)
            net->tensors[L->t_running_var].data[j] = 1.0f; /* mean and count stay 0 */
}

int qf_net_bn_uses_running(const qf_net *net, const qf_layer *L)
{
    return !net->training && L->spec.track_running_stats;
}

int qf_net_bn_fold_target(const qf_net *net, int i, int from_codes)
{
    if (!from_codes || i + 1 >= net->n_layers)
        return -1;
    const qf_layer *B = &net->layers[i + 1];
    return B->spec.kind == QF_LAYER_BATCHNORM2D && qf_net_bn_uses_running(net, B) ? i + 1 : -1;
}

/* k (C) of an eval-mode layer from its current parameters. */
static void eval_factor(qf_net *net, qf_layer *B)
{
    qf_bn_eval_factor(B->bn_k, tensor_data(net, B->t_gamma), tensor_data(net, B->t_running_var),
                      B->spec.eps, B->spec.in_features);
}

const float *qf_net_bn_fold(qf_net *net, qf_layer *L, const float *b)
{
    if (L->fold_bn < 0)
        return b;
    qf_layer *B = &net->layers[L->fold_bn];
    eval_factor(net, B);
    qf_bn_fold(L->epi_scale, B->bn_fold_bias, b, tensor_data(net, B->t_running_mean), B->bn_k,
               tensor_data(net, B->t_beta), B->spec.in_features);
    return B->bn_fold_bias;
}

/* Eval map on integer codes of scale in_scale: the epilogue q scale' + bias'. */
static void eval_from_codes(qf_net *net, qf_layer *B, const float *codes, float in_scale,
                            int64_t n)
{
    int64_t c = B->spec.in_features, hw = B->in_size / c;
    for (int64_t ch = 0; ch < c; ch++)
        B->bn_var[ch] = in_scale;          /* scratch: the codes' scale, folded below */
    qf_bn_fold(B->bn_var, B->bn_fold_bias, NULL, tensor_data(net, B->t_running_mean), B->bn_k,
               tensor_data(net, B->t_beta), c);
    for (int64_t s = 0; s < n; s++)
        for (int64_t ch = 0; ch < c; ch++) {
            int64_t base = (s * c + ch) * hw;
            float scale = B->bn_var[ch], bias = B->bn_fold_bias[ch];
            for (int64_t j = 0; j < hw; j++) {
                float y = codes[base + j] * scale;   /* qf_affine_epilogue of the code */
                B->out[base + j] = y + bias;
            }
        }
}

void qf_net_bn_forward(qf_net *net, int i, const float *in, const float *in_codes, int64_t n)
{
    qf_layer *B = &net->layers[i];
    int64_t c = B->spec.in_features, hw = B->in_size / c;
    B->bn_batch_stats = 0;
    if (qf_net_bn_uses_running(net, B)) {
        if (i > 0 && net->layers[i - 1].fold_bn == i) {   /* folded into the layer before */
            memcpy(B->out, in, sizeof(float) * (size_t)(n * B->out_size));
            return;
        }
        eval_factor(net, B);
        if (in_codes)
            eval_from_codes(net, B, in_codes, B->in_scale, n);
        else
            qf_bn_eval_forward(B->out, in, tensor_data(net, B->t_running_mean), B->bn_k,
                               tensor_data(net, B->t_beta), n, c, hw);
        return;
    }
    qf_bn_batch_stats(B->bn_mean, B->bn_var, in, n, c, hw);
    qf_bn_train_forward(B->out, B->xhat, B->bn_invstd, in, B->bn_mean, B->bn_var,
                        tensor_data(net, B->t_gamma), tensor_data(net, B->t_beta), B->spec.eps,
                        n, c, hw);
    B->bn_batch_stats = 1;
    if (!net->training || B->t_running_mean < 0)
        return;
    float *batches = net->tensors[B->t_batches].data;
    *batches += 1.0f;
    float f = B->spec.momentum >= 0.0f ? B->spec.momentum : 1.0f / *batches;
    qf_bn_update_running(net->tensors[B->t_running_mean].data,
                         net->tensors[B->t_running_var].data, B->bn_mean, B->bn_var, f, n * hw, c);
}

void qf_net_bn_backward(qf_net *net, qf_layer *B, float *din, int64_t n)
{
    int64_t c = B->spec.in_features, hw = B->in_size / c;
    float *dgamma = B->t_gamma >= 0 ? net->tensors[B->t_gamma].grad : NULL;
    float *dbeta = B->t_beta >= 0 ? net->tensors[B->t_beta].grad : NULL;
    qf_bn_backward(din, dgamma, dbeta, B->dout, B->xhat, tensor_data(net, B->t_gamma),
                   B->bn_invstd, n, c, hw);
}

qf_status qf_net_bn_check_batch(qf_net *net, int64_t n, int training)
{
    for (int i = 0; i < net->n_layers; i++) {
        const qf_layer *B = &net->layers[i];
        if (B->spec.kind == QF_LAYER_BATCHNORM2D && (training || !B->spec.track_running_stats) &&
            n * (B->in_size / B->spec.in_features) < 2) {
            snprintf(net->err, sizeof net->err, "layer %d (BatchNorm2d): batch statistics need "
                     "more than one value per channel, got a batch of %lld sample(s) of %lld "
                     "value(s) per channel; use a larger batch", i, (long long)n,
                     (long long)(B->in_size / B->spec.in_features));
            return QF_ERR_SHAPE;
        }
    }
    return QF_OK;
}
