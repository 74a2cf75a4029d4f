/* net_train.c: gradients' reset, optimizer steps and whole training epochs. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "loss.h"
#include "net_internal.h"
#include "optim.h"

qf_status qf_net_backward_ce(qf_net *net, const int32_t *labels, int64_t n, double *loss,
                             int64_t *n_correct)
{
    net->err[0] = 0;
    if (!net->have_train_forward || n != net->last_n)
        return qf_net_backward(net, NULL, n);   /* reports the state or shape error */
    qf_layer *last = &net->layers[net->n_layers - 1];
    int64_t k = last->out_size;
    for (int64_t s = 0; s < n; s++) {
        if (labels[s] < 0 || labels[s] >= k) {
            snprintf(net->err, sizeof net->err, "label %d at position %lld is outside [0, %lld)",
                     labels[s], (long long)s, (long long)k);
            return QF_ERR_LABEL;
        }
    }
    qf_softmax_ce(loss, n_correct, last->dout, last->out, labels, n, k);
    return qf_net_backward(net, last->dout, n);
}

/* ---------------------------------------------------------------- optimizer */

void qf_net_zero_grad(qf_net *net)
{
    if (net->packed_live) {
        qf_net_packed_zero_grad(net);
        return;
    }
    for (int t = 0; t < net->n_tensors; t++)
        if (net->tensors[t].kind == QF_TENSOR_PARAM)
            memset(net->tensors[t].grad, 0, sizeof(float) * (size_t)net->tensors[t].size);
}

qf_status qf_net_set_optimizer(qf_net *net, const qf_optimizer *opt)
{
    const char *what = NULL;
    if (opt->kind != QF_OPT_ADAMW && opt->kind != QF_OPT_SGD) what = "kind must be AdamW or SGD";
    else if (!(opt->lr > 0.0f) || !isfinite(opt->lr)) what = "lr must be a positive finite number";
    else if (!(opt->weight_decay >= 0.0f) || !isfinite(opt->weight_decay))
        what = "weight_decay must be >= 0";
    else if (opt->kind == QF_OPT_ADAMW &&
             !(opt->beta1 >= 0.0f && opt->beta1 < 1.0f && opt->beta2 >= 0.0f && opt->beta2 < 1.0f))
        what = "betas must be in [0, 1)";
    else if (opt->kind == QF_OPT_ADAMW && !(opt->eps > 0.0f)) what = "eps must be > 0";
    else if (opt->kind == QF_OPT_SGD && !(opt->momentum >= 0.0f)) what = "momentum must be >= 0";
    else if (opt->kind == QF_OPT_SGD && opt->nesterov &&
             (opt->momentum <= 0.0f || opt->dampening != 0.0f))
        what = "nesterov needs momentum > 0 and dampening 0";
    if (what) {
        snprintf(net->err, sizeof net->err, "optimizer: %s", what);
        return QF_ERR_ARG;
    }
    net->opt = *opt;
    net->opt.step = 0;
    for (int t = 0; t < net->n_tensors; t++) {
        qf_tensor *T = &net->tensors[t];
        if (T->kind == QF_TENSOR_PARAM) {
            memset(T->opt_m, 0, sizeof(float) * (size_t)T->size);
            memset(T->opt_v, 0, sizeof(float) * (size_t)T->size);
        }
    }
    return QF_OK;
}

const qf_optimizer *qf_net_optimizer(const qf_net *net) { return &net->opt; }
void qf_net_set_optimizer_step(qf_net *net, int64_t step) { net->opt.step = step; }

qf_status qf_net_set_learning_rate(qf_net *net, float lr)
{
    if (!(lr > 0.0f) || !isfinite(lr)) {
        snprintf(net->err, sizeof net->err, "lr must be a positive finite number, got %g",
                 (double)lr);
        return QF_ERR_ARG;
    }
    if (net->opt.kind == QF_OPT_NONE) {
        snprintf(net->err, sizeof net->err, "no optimizer is set");
        return QF_ERR_STATE;
    }
    net->opt.lr = lr;
    return QF_OK;
}

void qf_net_update_params(const qf_net *net, const qf_adamw_coeffs *c, float *p, float *m,
                          float *v, float *g, const uint8_t *mask, int64_t n)
{
    const qf_optimizer *o = &net->opt;
    if (o->kind == QF_OPT_ADAMW) {
        if (mask)   /* pruned entries take no gradient and stay 0 (selects: no inf/NaN leak) */
            qf_adamw_apply_masked(p, m, v, g, mask, n, c);
        else
            qf_adamw_apply(p, m, v, g, n, c);
    } else if (mask) {
        qf_sgd_update_masked(p, m, g, mask, n, o->lr, o->momentum, o->dampening,
                             o->weight_decay, o->nesterov, o->step);
    } else {
        qf_sgd_update(p, m, g, n, o->lr, o->momentum, o->dampening, o->weight_decay,
                      o->nesterov, o->step);
    }
}

qf_status qf_net_step(qf_net *net)
{
    const qf_optimizer *o = &net->opt;
    if (o->kind == QF_OPT_NONE) {
        snprintf(net->err, sizeof net->err, "no optimizer is set");
        return QF_ERR_STATE;
    }
    net->opt.step++;
    if (net->packed_live) {
        qf_net_packed_step(net);
        return QF_OK;
    }
    qf_adamw_coeffs c;
    if (o->kind == QF_OPT_ADAMW)
        qf_adamw_coeffs_init(&c, o->lr, o->beta1, o->beta2, o->eps, o->weight_decay, o->step);
    for (int t = 0; t < net->n_tensors; t++) {
        qf_tensor *T = &net->tensors[t];
        if (T->kind == QF_TENSOR_PARAM)   /* masked: also undoes writes through the views */
            qf_net_update_params(net, &c, T->data, T->opt_m, T->opt_v, T->grad, T->mask,
                                 T->size);
    }
    return QF_OK;
}

/* ---------------------------------------------------------------- epochs */

qf_status qf_net_train_epoch(qf_net *net, const float *x, const int32_t *y, int64_t n,
                             int64_t batch_size, qf_rng *rng, double *loss_sum,
                             int64_t *n_correct)
{
    net->err[0] = 0;
    *loss_sum = 0.0;
    *n_correct = 0;
    if (n < 1 || batch_size < 1) {
        snprintf(net->err, sizeof net->err, "need n >= 1 and batch_size >= 1, got %lld and %lld",
                 (long long)n, (long long)batch_size);
        return QF_ERR_ARG;
    }
    if (net->opt.kind == QF_OPT_NONE) {
        snprintf(net->err, sizeof net->err, "no optimizer is set");
        return QF_ERR_STATE;
    }
    if (!net->shapes_known) {
        snprintf(net->err, sizeof net->err, "the input shape is not set yet");
        return QF_ERR_STATE;
    }
    int64_t in_size = qf_net_cur_in_size(net);
    qf_status st = qf_net_check_finite(net, x, n * in_size);
    if (st != QF_OK)
        return st;
    int64_t k = qf_net_out_size(net);
    for (int64_t s = 0; s < n; s++) {
        if (y[s] < 0 || y[s] >= k) {
            snprintf(net->err, sizeof net->err, "label %d at position %lld is outside [0, %lld)",
                     y[s], (long long)s, (long long)k);
            return QF_ERR_LABEL;
        }
    }
    int64_t batch = batch_size < n ? batch_size : n;
    if ((st = qf_net_prepare(net, batch)) != QF_OK ||
        (st = qf_net_bn_check_batch(net, batch, 1)) != QF_OK ||
        (n % batch && (st = qf_net_bn_check_batch(net, n % batch, 1)) != QF_OK))
        return st;
    if (n > net->perm_cap) {
        int64_t *perm = malloc(sizeof(int64_t) * (size_t)n);
        if (!perm)
            return QF_ERR_NOMEM;
        free(net->perm);
        net->perm = perm;
        net->perm_cap = n;
    }
    qf_rng_permutation(rng, net->perm, n);
    net->training = 1;
    qf_net_packed_begin(net);
    for (int64_t start = 0; start < n; start += batch) {
        int64_t m = n - start < batch ? n - start : batch;
        for (int64_t s = 0; s < m; s++) {
            int64_t row = net->perm[start + s];
            memcpy(net->x + s * in_size, x + row * in_size,
                   sizeof(float) * (size_t)in_size);
            net->labels[s] = y[row];
        }
        qf_net_zero_grad(net);
        qf_net_forward_layers(net, m);
        net->last_n = m;
        net->have_train_forward = 1;
        double loss;
        int64_t correct;
        qf_layer *last = &net->layers[net->n_layers - 1];
        qf_softmax_ce(&loss, &correct, last->dout, last->out, net->labels, m, k);
        qf_net_backward(net, last->dout, m);
        qf_net_step(net);
        *loss_sum += loss * (double)m;
        *n_correct += correct;
    }
    qf_net_packed_end(net);
    qf_net_zero_grad(net);
    return QF_OK;
}
