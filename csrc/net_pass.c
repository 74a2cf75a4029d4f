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
#include "finite.h"
#include "linear.h"
#include "net_internal.h"
#include "maxpool.h"
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

/* ---------------------------------------------------------------- element-wise loops */

/* (restrict: separate arrays, so that the loops vectorise) */
static void relu_forward(float *restrict out, const float *restrict in, int64_t count)
{
    for (int64_t j = 0; j < count; j++)
        out[j] = in[j] > 0.0f ? in[j] : 0.0f;
}

static void relu_backward(float *restrict din, const float *restrict dout,
                          const float *restrict in, int64_t count)
{
    for (int64_t j = 0; j < count; j++) {
        float d = dout[j];   /* read unconditionally: a select, not a branch */
        din[j] = in[j] > 0.0f ? d : 0.0f;
    }
}

static void add_into(float *restrict dst, const float *restrict src, int64_t count)
{
    for (int64_t j = 0; j < count; j++)
        dst[j] += src[j];
}

/* ---------------------------------------------------------------- forward */

/* The weight quantizer's scales for weights w: constant ones are set once. */
static void weight_scales(qf_layer *L, const float *w)
{
    if (L->w_scale_fixed)
        return;
    qf_net_weight_scales(L, w, L->w_scale, L->w_argmax);
    L->w_scale_fixed = L->spec.weight_quant.kind == QF_QUANT_CONST;
}

void qf_net_quantize_weights(qf_layer *L, const float *w)
{
    weight_scales(L, w);
    if (!L->spec.per_channel) {
        qf_fake_quant_forward(L->w_fq, L->w_codes, w, L->w_rows * L->w_cols, L->w_scale[0],
                              L->w_qmin, L->w_qmax, 0);
        return;
    }
    for (int64_t r = 0; r < L->w_rows; r++)
        qf_fake_quant_forward(L->w_fq + r * L->w_cols, L->w_codes + r * L->w_cols,
                              w + r * L->w_cols, L->w_cols, L->w_scale[r], L->w_qmin, L->w_qmax, 0);
}

/* The norm |g| of row r of an A2Q layer: its learned value once initialised,
 * else ||v||_1 of the row (Brevitas initialises g from the weights' norm; here
 * the first training forward does, so that re-initialised weights count). */
static float a2q_norm(const qf_net *net, const qf_layer *L, const float *v, int64_t r)
{
    if (net->tensors[L->t_norm_init].data[0] != 0.0f)
        return fabsf(net->tensors[L->t_norm].data[r]);
    double l1 = 0.0;
    for (int64_t i = 0; i < L->w_cols; i++)
        l1 += fabs((double)v[i]);
    return (float)l1;
}

void qf_net_a2q_quantize(qf_net *net, qf_layer *L, const float *w, float *fq, float *codes,
                         float *scale, qf_a2q_row *rows)
{
    float *g = net->tensors[L->t_norm].data;
    float *ready = net->tensors[L->t_norm_init].data;
    int init = net->training && ready[0] == 0.0f;
    int absmax = L->spec.weight_quant.kind == QF_QUANT_ABSMAX;
    for (int64_t r = 0; r < L->w_rows; r++) {
        const float *v = w + r * L->w_cols;
        float norm = a2q_norm(net, L, v, r);
        float *fq_r = fq ? fq + r * L->w_cols : NULL, *codes_r = codes + r * L->w_cols;
        qf_a2q_row unused, *row = rows ? &rows[r] : &unused;
        if (init)
            g[r] = norm;
        if (absmax)
            qf_a2q_forward_row_absmax(fq_r, codes_r, &scale[r], row, v, L->w_cols, norm,
                                      &L->a2q_bound, L->w_int_threshold, L->w_qmin, L->w_qmax);
        else
            qf_a2q_forward_row(fq_r, codes_r, row, v, L->w_cols, scale[r], norm, &L->a2q_bound,
                               L->w_qmin, L->w_qmax);
    }
    if (init)
        ready[0] = 1.0f;
}

/* weighted_product over the packed kept weights pk of a pruned Linear layer. */
static void sparse_product(qf_net *net, qf_layer *L, qf_packed *pk, float *out, const float *in,
                           const float *in_codes, const float *b, int64_t rows)
{
    const qf_csr *csr = &pk->csr;
    if (L->spec.weight_quant.kind == QF_QUANT_NONE) {
        qf_csr_forward(out, in, pk->value, b, csr, rows);
        return;
    }
    weight_scales(L, NULL);   /* constant scales: the data is not read */
    if (!L->spec.per_channel) {
        qf_fake_quant_forward(pk->fq, pk->codes, pk->value, csr->nnz, L->w_scale[0], L->w_qmin,
                              L->w_qmax, 0);
    } else {
        for (int64_t r = 0; r < csr->rows; r++) {
            int64_t k = csr->row_start[r], len = csr->row_start[r + 1] - k;
            qf_fake_quant_forward(pk->fq + k, pk->codes + k, pk->value + k, len, L->w_scale[r],
                                  L->w_qmin, L->w_qmax, 0);
        }
    }
    if (in_codes) {
        for (int64_t o = 0; o < L->w_rows; o++)
            L->epi_scale[o] = L->in_scale * L->w_scale[o];
        b = qf_net_bn_fold(net, L, b);   /* an eval BatchNorm2d after it (net_batchnorm.c) */
        if (L->codes_fit_f32 && L->w_rows >= 8) {
            /* the row-at-a-time form, which skips zero input codes, over the dense
             * transposed codes: few codes change in a step, only those are written */
            qf_csr_mirror_transposed(L->w_codes_t, pk->codes_mirror, pk->codes, csr,
                                     !pk->codes_t_valid);
            pk->codes_t_valid = 1;
            qf_linear_forward_codes_t(out, in_codes, L->w_codes_t, L->epi_scale, b, rows,
                                      L->w_cols, L->w_rows);
        } else {
            qf_csr_forward_codes(out, in_codes, pk->codes, L->epi_scale, b, L->codes_fit_f32,
                                 csr, rows);
        }
    } else {
        qf_csr_forward(out, in, pk->fq, b, csr, rows);
    }
}

/* out (rows, n_out) = in (rows, n_in) times the layer's weights, float or from codes. */
static void weighted_product(qf_net *net, qf_layer *L, float *out, const float *in,
                             const float *in_codes, int64_t rows)
{
    const float *b = L->t_bias >= 0 ? net->tensors[L->t_bias].data : NULL;
    int from_codes = in_codes && L->spec.weight_quant.kind != QF_QUANT_NONE;
    qf_packed *pk = qf_net_sparse_layer(net, L, rows, from_codes);
    L->sparse_pass = pk != NULL;
    if (pk) {
        sparse_product(net, L, pk, out, in, in_codes, b, rows);
        return;
    }
    qf_net_packed_sync_data(net, L->t_weight);
    const float *w = net->tensors[L->t_weight].data;
    int64_t n_out = L->w_rows, n_in = L->w_cols;
    if (L->spec.weight_quant.kind == QF_QUANT_NONE) {
        qf_linear_forward(out, in, w, b, rows, n_in, n_out);
        return;
    }
    qf_net_weights_forward(net, L, w);
    if (in_codes) {
        for (int64_t o = 0; o < n_out; o++)
            L->epi_scale[o] = L->in_scale * L->w_scale[o];
        b = qf_net_bn_fold(net, L, b);   /* an eval BatchNorm2d after it (net_batchnorm.c) */
        /* batches and narrow inputs into wide outputs: the row-at-a-time form (which
         * vectorises over outputs; its transpose is cheap against the product) */
        if (L->codes_fit_f32 && n_out >= 8 && (rows >= 4 || n_in <= 8)) {
            qf_transpose2d(L->w_codes_t, L->w_codes, n_out, n_in);
            if (net->packed[L->t_weight])   /* no longer what the packed path mirrors */
                net->packed[L->t_weight]->codes_t_valid = 0;
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

/* Strides (into the input sample) of the output's three dims for a transpose layer. */
static void transpose_strides(const qf_layer *L, int64_t st[3])
{
    const int64_t *is = L->in_shape;
    int64_t stride_in[3] = {is[1] * is[2], is[2], 1};
    int a = L->spec.dims[0] - 1, b = L->spec.dims[1] - 1;
    st[0] = stride_in[0]; st[1] = stride_in[1]; st[2] = stride_in[2];
    st[a] = stride_in[b];
    st[b] = stride_in[a];
}

/* out (n, out) = in (n, in) with two sample dims swapped. */
static void forward_transpose(const qf_layer *L, float *out, const float *in, int64_t n)
{
    int64_t st[3];
    transpose_strides(L, st);
    const int64_t *os = L->out_shape;
    for (int64_t s = 0; s < n; s++) {
        const float *x = in + s * L->in_size;
        float *y = out + s * L->out_size;
        for (int64_t i = 0; i < os[0]; i++)
            for (int64_t j = 0; j < os[1]; j++)
                for (int64_t k = 0; k < os[2]; k++)
                    *y++ = x[i * st[0] + j * st[1] + k * st[2]];
    }
}

/* Its inverse for gradients: din (n, in) from dout (n, out). */
static void backward_transpose(const qf_layer *L, float *din, const float *dout, int64_t n)
{
    int64_t st[3];
    transpose_strides(L, st);
    const int64_t *os = L->out_shape;
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
        if (L->spec.kind == QF_LAYER_LINEAR || L->spec.kind == QF_LAYER_CONV2D)
            L->fold_bn = qf_net_bn_fold_target(
                net, i, in_codes && L->spec.weight_quant.kind != QF_QUANT_NONE);
        switch (L->spec.kind) {
        case QF_LAYER_LINEAR:
            weighted_product(net, L, L->out, in, in_codes, n);
            break;
        case QF_LAYER_CONV2D:
            qf_net_forward_conv(net, L, in, in_codes, n);
            break;
        case QF_LAYER_RELU:
            relu_forward(L->out, in, count);
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
            add_into(L->codes, B->codes, count);
            for (int64_t j = 0; j < count; j++)
                L->out[j] = s * L->codes[j];
            L->out_codes = 1;
            L->out_scale = s;
            break;
        }
        case QF_LAYER_BATCHNORM2D:
            qf_net_bn_forward(net, i, in, in_codes, n);
            break;
        case QF_LAYER_MAXPOOL2D:   /* codes follow their values' maxima */
            for (int64_t s = 0; s < n; s++)
                qf_maxpool_forward(L->out + s * L->out_size, L->argmax + s * L->out_size,
                                   in + s * L->in_size, &L->geom,
                                   in_codes ? L->codes + s * L->out_size : NULL,
                                   in_codes ? in_codes + s * L->in_size : NULL);
            L->out_codes = in_codes != NULL;
            L->out_scale = in_scale;
            break;
        }
        in = L->out;
        in_codes = L->out_codes ? L->codes : NULL;
        in_scale = L->out_scale;
    }
}

qf_status qf_net_check_finite(qf_net *net, const float *x, int64_t count)
{
    int64_t j = qf_first_non_finite(x, count);
    if (j >= 0) {
        snprintf(net->err, sizeof net->err,
                 "input contains NaN or infinity (first at flat index %lld); expected "
                 "finite values", (long long)j);
        return QF_ERR_NONFINITE;
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
    if ((st = qf_net_check_finite(net, x, n * in_size)) != QF_OK ||
        (st = qf_net_bn_check_batch(net, n, net->training)) != QF_OK)
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
void qf_net_weight_quant_backward(qf_layer *L, qf_tensor *w)
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

/* Gradients of an A2Q layer's weights v and norms g from dW_fq (a2q.h); with
 * a constant scale nothing else, with abs-max the scale is part of the row. */
static void a2q_weight_backward(qf_net *net, qf_layer *L, qf_tensor *w)
{
    qf_tensor *g = &net->tensors[L->t_norm];
    int64_t cols = L->w_cols;
    int absmax = L->spec.weight_quant.kind == QF_QUANT_ABSMAX;
    for (int64_t r = 0; r < L->w_rows; r++) {
        double dg;
        float norm = fabsf(g->data[r]);
        const float *v = w->data + r * cols, *dfq = L->dw_fq + r * cols;
        float *dv = w->grad + r * cols;
        if (absmax)
            qf_a2q_backward_row_absmax(dv, &dg, dfq, v, L->w_codes + r * cols, cols, norm,
                                       L->w_int_threshold, &L->a2q_rows[r]);
        else
            qf_a2q_backward_row(dv, &dg, dfq, v, L->w_codes + r * cols, cols, L->w_scale[r],
                                norm, &L->a2q_rows[r]);   /* dL/ds of a constant: dropped */
        g->grad[r] += (float)(g->data[r] >= 0.0f ? dg : -dg);
    }
}

void qf_net_weights_forward(qf_net *net, qf_layer *L, const float *w)
{
    if (L->spec.accumulator_bits > 0) {
        weight_scales(L, w);
        qf_net_a2q_quantize(net, L, w, L->w_fq, L->w_codes, L->w_scale, L->a2q_rows);
    } else {
        qf_net_quantize_weights(L, w);
    }
}

void qf_net_weights_backward(qf_net *net, qf_layer *L, qf_tensor *w)
{
    if (L->spec.accumulator_bits > 0)
        a2q_weight_backward(net, L, w);
    else
        qf_net_weight_quant_backward(L, w);
}

/* Backward of weighted_product: din (rows, n_in) (may be NULL), parameter grads added. */
static void weighted_backward(qf_net *net, qf_layer *L, float *din, const float *dout,
                              const float *in, int64_t rows)
{
    qf_tensor *w = &net->tensors[L->t_weight];
    float *db = L->t_bias >= 0 ? net->tensors[L->t_bias].grad : NULL;
    int64_t n_out = L->w_rows, n_in = L->w_cols;
    int kind = L->spec.weight_quant.kind;
    if (L->sparse_pass) {   /* gradients of the kept weights, packed */
        const qf_packed *pk = net->packed[L->t_weight];
        qf_csr_backward(din, pk->grad, db, dout, in,
                        kind == QF_QUANT_NONE ? pk->value : pk->fq, &pk->csr, rows);
        return;
    }
    if (kind == QF_QUANT_NONE) {
        qf_linear_backward(din, w->grad, db, dout, in, w->data, rows, n_in, n_out);
    } else if (L->spec.accumulator_bits > 0) {
        memset(L->dw_fq, 0, sizeof(float) * (size_t)(n_out * n_in));
        qf_linear_backward(din, L->dw_fq, db, dout, in, L->w_fq, rows, n_in, n_out);
        a2q_weight_backward(net, L, w);
    } else if (kind == QF_QUANT_CONST) {
        /* straight-through with a constant scale: dW = dW_fq */
        qf_linear_backward(din, w->grad, db, dout, in, L->w_fq, rows, n_in, n_out);
    } else {
        memset(L->dw_fq, 0, sizeof(float) * (size_t)(n_out * n_in));
        qf_linear_backward(din, L->dw_fq, db, dout, in, L->w_fq, rows, n_in, n_out);
        qf_net_weight_quant_backward(L, w);
    }
    /* a pruned weight's gradient is 0, as PyTorch's weight_orig.grad (in an epoch
     * only the kept entries are read) */
    if (w->mask && !net->packed_live)
        for (int64_t j = 0; j < w->size; j++)
            w->grad[j] = w->mask[j] ? w->grad[j] : 0.0f;
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

/* Index of the first layer with a trained parameter (n_layers if none): the
 * layers up to it need no input gradient, nothing below them learns. */
static int first_trained_layer(const qf_net *net)
{
    for (int t = 0; t < net->n_tensors; t++)   /* tensors are registered in layer order */
        if (net->tensors[t].kind == QF_TENSOR_PARAM)
            return net->tensors[t].layer;
    return net->n_layers;
}

void qf_net_backward_layers(qf_net *net, int64_t n, float *dx)
{
    int first = dx ? 0 : first_trained_layer(net);
    for (int i = net->n_layers - 1; i >= 0; i--) {
        qf_layer *L = &net->layers[i];
        const float *in = i > 0 ? net->layers[i - 1].out : net->x;
        float *din = i == 0 ? dx : i > first ? net->layers[i - 1].dout : NULL;
        int64_t count = n * L->out_size;
        switch (L->spec.kind) {
        case QF_LAYER_LINEAR:
            weighted_backward(net, L, din, L->dout, in, n);
            break;
        case QF_LAYER_CONV2D:
            qf_net_backward_conv(net, L, din, n);
            break;
        case QF_LAYER_RELU:
            if (din)
                relu_backward(din, L->dout, in, count);
            break;
        case QF_LAYER_ACT_QUANT: {
            double extra = 0.0;
            if (L->res_end >= 0) {   /* the skip operand's gradient joins the block's */
                const qf_layer *E = &net->layers[L->res_end];
                add_into(L->dout, E->skip_grad, count);
                extra = E->res_dscale;
            }
            int learned = L->spec.act_quant.kind == QF_QUANT_LEARNED;
            if (!din && !learned)   /* nothing to compute: the scale is constant */
                break;
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
        case QF_LAYER_BATCHNORM2D:
            qf_net_bn_backward(net, L, din, n);
            break;
        case QF_LAYER_MAXPOOL2D:
            if (din)
                for (int64_t s = 0; s < n; s++)
                    qf_maxpool_backward(din + s * L->in_size, L->dout + s * L->out_size,
                                        L->argmax + s * L->out_size, &L->geom);
            break;
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

qf_status qf_net_backward_dx(qf_net *net, const float *dout, int64_t n, float *dx)
{
    qf_status st = check_backward(net, n);
    if (st != QF_OK)
        return st;
    qf_layer *last = &net->layers[net->n_layers - 1];
    if (dout != last->dout)
        memcpy(last->dout, dout, sizeof(float) * (size_t)(n * last->out_size));
    qf_net_backward_layers(net, n, dx);
    net->have_train_forward = 0;
    return QF_OK;
}

qf_status qf_net_backward(qf_net *net, const float *dout, int64_t n)
{
    return qf_net_backward_dx(net, dout, n, NULL);
}
