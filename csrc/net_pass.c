/* net_pass.c: forward and backward passes of the network, layer by layer.
 *
 * Integer codes travel with the activations: a quantizer emits codes with
 * their scale, reshape/transpose carry them, a residual add sums them.  A
 * quantized Linear/Conv2d or an AvgPool2d fed by codes computes from them
 * through the exact integer sum and qf_affine_epilogue, as the integer
 * circuit does, so the two agree bit for bit. */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include "linear.h"
#include "net_internal.h"
#include "pool.h"

/* ---------------------------------------------------------------- quantizer scales */

float qf_net_clamp_scale(float threshold, float int_threshold)
{
    float s = threshold / int_threshold;
    return s >= QF_SCALE_MIN ? s : QF_SCALE_MIN;
}

/* Scales (w_rows) of a weight quantizer for weights w (w_rows, w_cols): one
 * per row for per-channel quantizers, else the same in every row; argmax
 * (w_rows) receives the ABSMAX element of each scale (-1: none or clamped).
 * Returns scale[0]. */
float qf_net_weight_scales(const qf_layer *L, const float *w, float *scale, int64_t *argmax)
{
    const qf_quant_spec *q = &L->spec.weight_quant;
    int per_row = L->spec.per_channel;
    int64_t groups = per_row ? L->w_rows : 1;
    int64_t len = per_row ? L->w_cols : L->w_rows * L->w_cols;
    for (int64_t g = 0; g < groups; g++) {
        float threshold = q->threshold;
        int64_t index = -1;
        if (q->kind == QF_QUANT_ABSMAX)
            index = g * len + qf_abs_argmax(w + g * len, len, 0, &threshold);
        float s = threshold / L->w_int_threshold;
        if (!(s >= QF_SCALE_MIN)) {
            s = QF_SCALE_MIN;
            index = -1;
        }
        scale[g] = s;
        argmax[g] = index;
    }
    for (int64_t r = groups; r < L->w_rows; r++) {
        scale[r] = scale[0];
        argmax[r] = -1;
    }
    return scale[0];
}

float qf_net_learned_eval_threshold(const qf_net *net, const qf_layer *L)
{
    float count = net->tensors[L->t_stats_count].data[0];
    if (count <= (float)L->spec.act_quant.stats_steps)
        return net->tensors[L->t_stats_buffer].data[0];
    return fabsf(net->tensors[L->t_threshold].data[0]);
}

/* Scale of an activation quantizer for this forward; in training mode the
 * statistics phase advances (REFERENCE.md section 2). */
static float act_scale_forward(qf_net *net, qf_layer *L, const float *in, int64_t count)
{
    const qf_quant_spec *q = &L->spec.act_quant;
    L->a_stats_phase = 0;
    L->a_argmax = -1;
    if (q->kind == QF_QUANT_CONST)
        return qf_net_clamp_scale(q->threshold, L->a_int_threshold);
    if (!net->training)
        return qf_net_clamp_scale(qf_net_learned_eval_threshold(net, L), L->a_int_threshold);
    float *n_seen = net->tensors[L->t_stats_count].data;
    float *buffer = net->tensors[L->t_stats_buffer].data;
    float *value = net->tensors[L->t_threshold].data;
    if (*n_seen < (float)q->stats_steps) {
        int64_t index;
        float stat = qf_abs_percentile(in, count, q->percentile, L->spec.relu, net->scratch, &index);
        if (stat < QF_SCALE_MIN) {
            stat = QF_SCALE_MIN;
            index = -1;
        }
        *buffer = *n_seen == 0.0f ? stat : (1.0f - q->momentum) * *buffer + q->momentum * stat;
        *n_seen += 1.0f;
        L->a_stats_phase = 1;
        L->a_argmax = index;
        return qf_net_clamp_scale(stat, L->a_int_threshold);
    }
    if (*n_seen == (float)q->stats_steps) {
        *value = *buffer;
        *n_seen += 1.0f;
    }
    return qf_net_clamp_scale(fabsf(*value), L->a_int_threshold);
}

/* ---------------------------------------------------------------- forward */

static void quantize_weights(qf_layer *L, const float *w)
{
    qf_net_weight_scales(L, w, L->w_scale, L->w_argmax);
    if (!L->spec.per_channel) {
        qf_fake_quant_forward(L->w_fq, L->w_codes, w, L->w_rows * L->w_cols, L->w_scale[0],
                              L->w_qmin, L->w_qmax, 0);
        return;
    }
    for (int64_t r = 0; r < L->w_rows; r++)
        qf_fake_quant_forward(L->w_fq + r * L->w_cols, L->w_codes + r * L->w_cols,
                              w + r * L->w_cols, L->w_cols, L->w_scale[r], L->w_qmin, L->w_qmax, 0);
}

/* out (rows, n_out) = in (rows, n_in) times the layer's weights, float or from codes. */
static void weighted_product(qf_net *net, qf_layer *L, float *out, const float *in,
                             const float *in_codes, int64_t rows)
{
    const float *w = net->tensors[L->t_weight].data;
    const float *b = L->t_bias >= 0 ? net->tensors[L->t_bias].data : NULL;
    int64_t n_out = L->w_rows, n_in = L->w_cols;
    if (L->spec.weight_quant.kind == QF_QUANT_NONE) {
        qf_linear_forward(out, in, w, b, rows, n_in, n_out);
        return;
    }
    quantize_weights(L, w);
    if (in_codes) {
        for (int64_t o = 0; o < n_out; o++)
            L->epi_scale[o] = L->in_scale * L->w_scale[o];
        if (L->codes_fit_f32 && rows >= 4) {   /* batches: the row-at-a-time form */
            qf_transpose2d(L->w_codes_t, L->w_codes, n_out, n_in);
            qf_linear_forward_codes_t(out, in_codes, L->w_codes_t, L->epi_scale, b, rows, n_in,
                                      n_out);
        } else {
            qf_linear_forward_codes(out, in_codes, L->w_codes, L->epi_scale, b, L->codes_fit_f32,
                                    rows, n_in, n_out);
        }
    } else {
        qf_linear_forward(out, in, L->w_fq, b, rows, n_in, n_out);
    }
}

static void forward_conv(qf_net *net, qf_layer *L, const float *in, const float *in_codes,
                         int64_t n)
{
    const qf_conv_geom *g = &L->geom;
    int64_t p = g->oh * g->ow, k = L->w_cols, oc = L->w_rows;
    int use_codes = in_codes && L->spec.weight_quant.kind != QF_QUANT_NONE;
    for (int64_t s = 0; s < n; s++) {
        qf_im2col(L->cols + s * p * k, in + s * L->in_size, g);
        if (use_codes)
            qf_im2col(L->col_codes + s * p * k, in_codes + s * L->in_size, g);
    }
    weighted_product(net, L, L->gemm_out, L->cols, use_codes ? L->col_codes : NULL, n * p);
    for (int64_t s = 0; s < n; s++)
        qf_transpose2d(L->out + s * L->out_size, L->gemm_out + s * p * oc, p, oc);
}

static void forward_transpose(const qf_layer *L, float *out, const float *in, int64_t n)
{
    const int64_t *is = L->in_shape;
    int a = L->spec.dims[0] - 1, b = L->spec.dims[1] - 1;
    int64_t stride_in[3] = {is[1] * is[2], is[2], 1};
    int64_t os[3] = {L->out_shape[0], L->out_shape[1], L->out_shape[2]};
    int64_t st[3] = {stride_in[0], stride_in[1], stride_in[2]};
    st[a] = stride_in[b];
    st[b] = stride_in[a];
    for (int64_t s = 0; s < n; s++) {
        const float *x = in + s * L->in_size;
        float *y = out + s * L->out_size;
        for (int64_t i = 0; i < os[0]; i++)
            for (int64_t j = 0; j < os[1]; j++)
                for (int64_t k = 0; k < os[2]; k++)
                    *y++ = x[i * st[0] + j * st[1] + k * st[2]];
    }
}

/* The inverse of forward_transpose for gradients: din (n, in) from dout (n, out). */
static void backward_transpose(const qf_layer *L, float *din, const float *dout, int64_t n)
{
    const int64_t *is = L->in_shape;
    int a = L->spec.dims[0] - 1, b = L->spec.dims[1] - 1;
    int64_t stride_in[3] = {is[1] * is[2], is[2], 1};
    int64_t os[3] = {L->out_shape[0], L->out_shape[1], L->out_shape[2]};
    int64_t st[3] = {stride_in[0], stride_in[1], stride_in[2]};
    st[a] = stride_in[b];
    st[b] = stride_in[a];
    for (int64_t s = 0; s < n; s++) {
        float *x = din + s * L->in_size;
        const float *y = dout + s * L->out_size;
        for (int64_t i = 0; i < os[0]; i++)
            for (int64_t j = 0; j < os[1]; j++)
                for (int64_t k = 0; k < os[2]; k++)
                    x[i * st[0] + j * st[1] + k * st[2]] = *y++;
    }
}

void qf_net_forward_layers(qf_net *net, int64_t n)
{
    const float *in = net->x;
    const float *in_codes = NULL;
    float in_scale = 0.0f;
    for (int i = 0; i < net->n_layers; i++) {
        qf_layer *L = &net->layers[i];
        int64_t count = n * L->out_size;
        L->in_codes = in_codes != NULL;
        L->in_scale = in_scale;
        L->out_codes = 0;
        L->out_scale = 0.0f;
        switch (L->spec.kind) {
        case QF_LAYER_LINEAR:
            weighted_product(net, L, L->out, in, in_codes, n);
            break;
        case QF_LAYER_CONV2D:
            forward_conv(net, L, in, in_codes, n);
            break;
        case QF_LAYER_RELU:
            for (int64_t j = 0; j < count; j++)
                L->out[j] = in[j] > 0.0f ? in[j] : 0.0f;
            break;
        case QF_LAYER_ACT_QUANT:
            L->a_scale = act_scale_forward(net, L, in, n * L->in_size);
            qf_fake_quant_forward(L->out, L->codes, in, count, L->a_scale, L->a_qmin, L->a_qmax,
                                  L->spec.relu);
            L->out_codes = 1;
            L->out_scale = L->a_scale;
            break;
        case QF_LAYER_AVGPOOL2D: {
            float scale = in_codes ? in_scale / (float)(L->geom.kh * L->geom.kw) : 0.0f;
            for (int64_t s = 0; s < n; s++)
                qf_avgpool_forward(L->out + s * L->out_size,
                                   (in_codes ? in_codes : in) + s * L->in_size, &L->geom,
                                   in_codes != NULL, scale);
            break;
        }
        case QF_LAYER_RESHAPE:
            memcpy(L->out, in, sizeof(float) * (size_t)count);
            if (in_codes) {
                memcpy(L->codes, in_codes, sizeof(float) * (size_t)count);
                L->out_codes = 1;
                L->out_scale = in_scale;
            }
            break;
        case QF_LAYER_TRANSPOSE:
            forward_transpose(L, L->out, in, n);
            if (in_codes) {
                forward_transpose(L, L->codes, in_codes, n);
                L->out_codes = 1;
                L->out_scale = in_scale;
            }
            break;
        case QF_LAYER_RESIDUAL_ADD: {
            /* both operands through the begin layer's quantizer: codes add exactly */
            const qf_layer *B = &net->layers[L->spec.begin];
            float s = B->a_scale;
            qf_fake_quant_forward(L->out, L->codes, in, count, s, B->a_qmin, B->a_qmax,
                                  B->spec.relu);
            for (int64_t j = 0; j < count; j++) {
                L->codes[j] += B->codes[j];
                L->out[j] = s * L->codes[j];
            }
            L->out_codes = 1;
            L->out_scale = s;
            break;
        }
        }
        in = L->out;
        in_codes = L->out_codes ? L->codes : NULL;
        in_scale = L->out_scale;
    }
}

qf_status qf_net_check_finite(qf_net *net, const float *x, int64_t count)
{
    for (int64_t j = 0; j < count; j++) {
        if (!isfinite(x[j])) {
            snprintf(net->err, sizeof net->err,
                     "input contains NaN or infinity (first at flat index %lld); expected "
                     "finite values", (long long)j);
            return QF_ERR_NONFINITE;
        }
    }
    return QF_OK;
}

qf_status qf_net_forward(qf_net *net, const float *x, int64_t n, float *out)
{
    net->err[0] = 0;
    if (n < 1) {
        snprintf(net->err, sizeof net->err, "expected at least one sample, got %lld",
                 (long long)n);
        return QF_ERR_SHAPE;
    }
    qf_status st = qf_net_prepare(net, n);
    if (st != QF_OK)
        return st;
    int64_t in_size = qf_net_cur_in_size(net);
    if ((st = qf_net_check_finite(net, x, n * in_size)) != QF_OK)
        return st;
    memcpy(net->x, x, sizeof(float) * (size_t)(n * in_size));
    qf_net_forward_layers(net, n);
    net->last_n = n;
    net->have_train_forward = net->training;
    const qf_layer *last = &net->layers[net->n_layers - 1];
    memcpy(out, last->out, sizeof(float) * (size_t)(n * last->out_size));
    return QF_OK;
}

/* ---------------------------------------------------------------- backward */

/* Gradient of the weights from dW_fq: straight through the quantizer, plus the
 * abs-max scale's gradient at the element that set it. */
static void weight_quant_backward(qf_layer *L, qf_tensor *w)
{
    int64_t groups = L->spec.per_channel ? L->w_rows : 1;
    int64_t len = L->spec.per_channel ? L->w_cols : L->w_rows * L->w_cols;
    for (int64_t g = 0; g < groups; g++) {
        double dscale = qf_fake_quant_backward(w->grad + g * len, L->dw_fq + g * len,
                                               w->data + g * len, len, L->w_scale[g], L->w_qmin,
                                               L->w_qmax, 0, 1);
        int64_t k = L->w_argmax[g];
        if (k >= 0)
            w->grad[k] += (float)(dscale / L->w_int_threshold) * (w->data[k] >= 0.0f ? 1.0f : -1.0f);
    }
}

/* Backward of weighted_product: din (rows, n_in) (may be NULL), parameter grads added. */
static void weighted_backward(qf_net *net, qf_layer *L, float *din, const float *dout,
                              const float *in, int64_t rows)
{
    qf_tensor *w = &net->tensors[L->t_weight];
    float *db = L->t_bias >= 0 ? net->tensors[L->t_bias].grad : NULL;
    int64_t n_out = L->w_rows, n_in = L->w_cols;
    int kind = L->spec.weight_quant.kind;
    if (kind == QF_QUANT_NONE) {
        qf_linear_backward(din, w->grad, db, dout, in, w->data, rows, n_in, n_out);
    } else if (kind == QF_QUANT_CONST) {
        /* straight-through with a constant scale: dW = dW_fq */
        qf_linear_backward(din, w->grad, db, dout, in, L->w_fq, rows, n_in, n_out);
    } else {
        memset(L->dw_fq, 0, sizeof(float) * (size_t)(n_out * n_in));
        qf_linear_backward(din, L->dw_fq, db, dout, in, L->w_fq, rows, n_in, n_out);
        weight_quant_backward(L, w);
    }
    if (w->mask)   /* a pruned weight's gradient is 0, as PyTorch's weight_orig.grad */
        for (int64_t j = 0; j < w->size; j++)
            w->grad[j] = w->mask[j] ? w->grad[j] : 0.0f;
}

static void backward_conv(qf_net *net, qf_layer *L, float *din, int64_t n)
{
    const qf_conv_geom *g = &L->geom;
    int64_t p = g->oh * g->ow, k = L->w_cols, oc = L->w_rows;
    for (int64_t s = 0; s < n; s++)   /* dout (OC, P) -> (P, OC), reusing gemm_out */
        qf_transpose2d(L->gemm_out + s * p * oc, L->dout + s * L->out_size, oc, p);
    weighted_backward(net, L, din ? L->dcols : NULL, L->gemm_out, L->cols, n * p);
    if (!din)
        return;
    memset(din, 0, sizeof(float) * (size_t)(n * L->in_size));
    for (int64_t s = 0; s < n; s++)
        qf_col2im(din + s * L->in_size, L->dcols + s * p * k, g);
}

static void threshold_gradient(qf_net *net, qf_layer *L, double dscale, const float *in,
                               float *din)
{
    if (L->spec.act_quant.kind != QF_QUANT_LEARNED)
        return;
    float dthreshold = (float)(dscale / L->a_int_threshold);
    if (L->a_stats_phase) {
        /* the statistic is one element of |x|: its gradient goes there */
        if (din && L->a_argmax >= 0)
            din[L->a_argmax] += in[L->a_argmax] >= 0.0f ? dthreshold : -dthreshold;
    } else {
        qf_tensor *t = &net->tensors[L->t_threshold];
        t->grad[0] += t->data[0] >= 0.0f ? dthreshold : -dthreshold;
    }
}

void qf_net_backward_layers(qf_net *net, int64_t n)
{
    for (int i = net->n_layers - 1; i >= 0; i--) {
        qf_layer *L = &net->layers[i];
        const float *in = i > 0 ? net->layers[i - 1].out : net->x;
        float *din = i > 0 ? net->layers[i - 1].dout : NULL;
        int64_t count = n * L->out_size;
        switch (L->spec.kind) {
        case QF_LAYER_LINEAR:
            weighted_backward(net, L, din, L->dout, in, n);
            break;
        case QF_LAYER_CONV2D:
            backward_conv(net, L, din, n);
            break;
        case QF_LAYER_RELU:
            if (din)
                for (int64_t j = 0; j < count; j++)
                    din[j] = in[j] > 0.0f ? L->dout[j] : 0.0f;
            break;
        case QF_LAYER_ACT_QUANT: {
            double extra = 0.0;
            if (L->res_end >= 0) {   /* the skip operand's gradient joins the block's */
                const qf_layer *E = &net->layers[L->res_end];
                for (int64_t j = 0; j < count; j++)
                    L->dout[j] += E->skip_grad[j];
                extra = E->res_dscale;
            }
            if (din)
                memset(din, 0, sizeof(float) * (size_t)count);
            double dscale = qf_fake_quant_backward(din, L->dout, in, count, L->a_scale, L->a_qmin,
                                                   L->a_qmax, L->spec.relu, 0);
            threshold_gradient(net, L, dscale + extra, in, din);
            break;
        }
        case QF_LAYER_AVGPOOL2D:
            if (din)
                for (int64_t s = 0; s < n; s++)
                    qf_avgpool_backward(din + s * L->in_size, L->dout + s * L->out_size, &L->geom);
            break;
        case QF_LAYER_RESHAPE:
            if (din)
                memcpy(din, L->dout, sizeof(float) * (size_t)count);
            break;
        case QF_LAYER_TRANSPOSE:
            if (din)
                backward_transpose(L, din, L->dout, n);
            break;
        case QF_LAYER_RESIDUAL_ADD: {
            const qf_layer *B = &net->layers[L->spec.begin];
            memcpy(L->skip_grad, L->dout, sizeof(float) * (size_t)count);
            if (din)
                memset(din, 0, sizeof(float) * (size_t)count);
            L->res_dscale = qf_fake_quant_backward(din, L->dout, in, count, B->a_scale, B->a_qmin,
                                                   B->a_qmax, B->spec.relu, 0);
            break;
        }
        }
    }
}

static qf_status check_backward(qf_net *net, int64_t n)
{
    net->err[0] = 0;
    if (!net->have_train_forward) {
        snprintf(net->err, sizeof net->err,
                 "backward needs a forward pass in training mode first (call train())");
        return QF_ERR_STATE;
    }
    if (n != net->last_n) {
        snprintf(net->err, sizeof net->err, "backward got %lld samples but the last forward had "
                 "%lld", (long long)n, (long long)net->last_n);
        return QF_ERR_SHAPE;
    }
    return QF_OK;
}

qf_status qf_net_backward(qf_net *net, const float *dout, int64_t n)
{
    qf_status st = check_backward(net, n);
    if (st != QF_OK)
        return st;
    qf_layer *last = &net->layers[net->n_layers - 1];
    if (dout != last->dout)
        memcpy(last->dout, dout, sizeof(float) * (size_t)(n * last->out_size));
    qf_net_backward_layers(net, n);
    net->have_train_forward = 0;
    return QF_OK;
}
