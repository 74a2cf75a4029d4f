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
    return qf_net_backward_ce_dx(net, labels, n, loss, n_correct, NULL);
}

qf_status qf_net_backward_ce_dx(qf_net *net, const int32_t *labels, int64_t n, double *loss,
                                int64_t *n_correct, float *dx)
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
    return qf_net_backward_dx(net, last->dout, n, dx);
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
        T->opt_step = 0;
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

void qf_net_update_params(const qf_net *net, qf_coeff_cache *cache, int64_t step, float *p,
                          float *m, float *v, float *g, const uint8_t *mask, int64_t n)
{
    const qf_optimizer *o = &net->opt;
    if (o->kind == QF_OPT_ADAMW) {
        int slot = cache->step[0] == step ? 0 : cache->step[1] == step ? 1 : -1;
        if (slot < 0) {
            slot = cache->next;
            cache->next ^= 1;
            qf_adamw_coeffs_init(&cache->c[slot], o->lr, o->beta1, o->beta2, o->eps,
                                 o->weight_decay, step);
            cache->step[slot] = step;
        }
        if (mask)   /* pruned entries take no gradient and stay 0 (selects: no inf/NaN leak) */
            qf_adamw_apply_masked(p, m, v, g, mask, n, &cache->c[slot]);
        else
            qf_adamw_apply(p, m, v, g, n, &cache->c[slot]);
    } else if (mask) {
        qf_sgd_update_masked(p, m, g, mask, n, o->lr, o->momentum, o->dampening,
                             o->weight_decay, o->nesterov, step);
    } else {
        qf_sgd_update(p, m, g, n, o->lr, o->momentum, o->dampening, o->weight_decay,
                      o->nesterov, step);
    }
}

int qf_net_tensor_in_step(const qf_net *net, int index)
{
    if (index < 0 || index >= net->n_tensors)
        return 0;
    const qf_tensor *T = &net->tensors[index];
    if (T->kind != QF_TENSOR_PARAM)
        return 0;
    const qf_layer *L = &net->layers[T->layer];
    if (L->spec.kind != QF_LAYER_ACT_QUANT || L->t_threshold != index)
        return 1;
    /* the threshold is a parameter once the switch forward has set it from the buffer */
    return net->tensors[L->t_stats_count].data[0] > (float)L->spec.act_quant.stats_steps;
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
    qf_coeff_cache cache = {.step = {-1, -1}};
    for (int t = 0; t < net->n_tensors; t++) {
        qf_tensor *T = &net->tensors[t];
        if (!qf_net_tensor_in_step(net, t))
            continue;
        T->opt_step++;   /* masked: the update also undoes writes through the views */
        qf_net_update_params(net, &cache, T->opt_step, T->data, T->opt_m, T->opt_v, T->grad,
                             T->mask, T->size);
    }
    return QF_OK;
}

/* ---------------------------------------------------------------- epochs */

/* Zero the gradients, then the training forward and the loss of the batch
 * perm[start .. start + m) of x, y; *correct receives its argmax hits. */
static double batch_forward(qf_net *net, const float *x, const int32_t *y, int64_t start,
                            int64_t m, int64_t *correct)
{
    int64_t in_size = qf_net_cur_in_size(net);
    for (int64_t s = 0; s < m; s++) {
        int64_t row = net->perm[start + s];
        memcpy(net->x + s * in_size, x + row * in_size, sizeof(float) * (size_t)in_size);
        net->labels[s] = y[row];
    }
    qf_net_zero_grad(net);
    qf_net_forward_layers(net, m);
    net->last_n = m;
    net->have_train_forward = 1;
    double loss;
    qf_layer *last = &net->layers[net->n_layers - 1];
    qf_softmax_ce(&loss, correct, last->dout, last->out, net->labels, m, last->out_size);
    return loss;
}

/* Backward of the batch's loss, then the optimizer step. */
static void batch_update(qf_net *net, int64_t m)
{
    qf_net_backward(net, net->layers[net->n_layers - 1].dout, m);
    qf_net_step(net);
}

/* The batch size and sample count of batch j of an epoch. */
static int64_t batch_rows(int64_t n, int64_t batch, int64_t j)
{
    int64_t start = j * batch;
    return n - start < batch ? n - start : batch;
}

/* Replay the epoch's batches from the checkpoint ck, checking each loss and,
 * after each step, every parameter and statistic.  Returns the index of the
 * first batch whose loss (*bad = -1, *loss) or step (*bad = the tensor) is not
 * finite, or -1 if none up to batch `last`. */
static int64_t first_bad_batch(qf_net *net, const qf_net_checkpoint *ck, const float *x,
                               const int32_t *y, int64_t n, int64_t batch, int64_t last,
                               double *loss, int *bad)
{
    net->packed_live = 0;                /* the packed state is dropped */
    qf_net_checkpoint_restore(net, ck);
    qf_net_packed_begin(net);
    for (int64_t j = 0; j <= last; j++) {
        int64_t m = batch_rows(n, batch, j), correct;
        *loss = batch_forward(net, x, y, j * batch, m, &correct);
        *bad = -1;
        if (!isfinite(*loss))
            return j;
        batch_update(net, m);
        if ((*bad = qf_net_first_nonfinite(net)) >= 0)
            return j;
    }
    return -1;
}

/* The epoch met a non-finite loss at batch `last`, or non-finite values at its
 * end: find the first batch whose loss or step was not finite (a checked
 * replay from the checkpoint ck taken at the epoch's start), then replay the
 * batches before it, which leaves the net exactly as after the last finite
 * step (the passes are deterministic).  Without a checkpoint (no memory for
 * one) the net keeps the failed values. */
static qf_status diverged(qf_net *net, const qf_net_checkpoint *ck, const float *x,
                          const int32_t *y, int64_t n, int64_t batch, int64_t last, double loss,
                          int bad)
{
    int64_t b = last;
    if (ck) {
        int64_t found = first_bad_batch(net, ck, x, y, n, batch, last, &loss, &bad);
        b = found >= 0 ? found : last;
        net->packed_live = 0;
        qf_net_checkpoint_restore(net, ck);
        qf_net_packed_begin(net);
        for (int64_t j = 0; j < b; j++) {
            int64_t m = batch_rows(n, batch, j), correct;
            batch_forward(net, x, y, j * batch, m, &correct);
            batch_update(net, m);
        }
    }
    qf_net_packed_end(net);
    qf_net_zero_grad(net);
    net->have_train_forward = 0;
    char what[128];
    if (bad < 0)
        snprintf(what, sizeof what, "the loss is %s", isnan(loss) ? "NaN" : "infinite");
    else
        snprintf(what, sizeof what, "the %s of layer %d (%s) became NaN or infinite",
                 strchr(net->tensors[bad].name, '.') + 1, net->tensors[bad].layer,
                 qf_net_kind_name(net->layers[net->tensors[bad].layer].spec.kind));
    snprintf(net->err, sizeof net->err, "training diverged at step %lld of the epoch: %.128s; %s",
             (long long)(b + 1), what, ck ? "the network is left as after the last finite step"
                                           : "no memory for a checkpoint: the network keeps "
                                             "the failed values");
    return QF_ERR_DIVERGED;
}

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
    /* Every loss is checked as it comes; parameters and statistics once, at the
     * end: a NaN or infinity there cannot vanish again (a step keeps it or makes
     * the loss non-finite).  Either way the failing step is then located by a
     * checked replay from the copy taken here, so the cost falls on a diverged
     * epoch only. */
    qf_net_checkpoint ck;
    int guarded = qf_net_checkpoint_take(net, &ck) == QF_OK;
    qf_net_packed_begin(net);
    int64_t n_batches = (n + batch - 1) / batch;
    for (int64_t b = 0; b < n_batches; b++) {
        int64_t m = batch_rows(n, batch, b), correct;
        double loss = batch_forward(net, x, y, b * batch, m, &correct);
        if (!isfinite(loss)) {
            st = diverged(net, guarded ? &ck : NULL, x, y, n, batch, b, loss, -1);
            qf_net_checkpoint_free(&ck);
            return st;
        }
        batch_update(net, m);
        *loss_sum += loss * (double)m;
        *n_correct += correct;
    }
    int bad = qf_net_first_nonfinite(net);
    if (bad >= 0) {
        st = diverged(net, guarded ? &ck : NULL, x, y, n, batch, n_batches - 1, 0.0, bad);
        qf_net_checkpoint_free(&ck);
        return st;
    }
    qf_net_packed_end(net);
    qf_net_zero_grad(net);
    qf_net_checkpoint_free(&ck);
    return QF_OK;
}
