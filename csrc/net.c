/* net.c: the sequential network: construction, tensor registry, forward,
 * backward, optimizer steps and whole training epochs (see net.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "linear.h"
#include "loss.h"
#include "net.h"
#include "optim.h"

typedef struct {
    qf_layer_spec spec;
    int64_t in_size, out_size;      /* per sample                                   */
    int t_weight, t_bias;           /* LINEAR tensors, -1 if absent                 */
    int t_threshold, t_stats_buffer, t_stats_count;   /* LEARNED quantizer tensors */
    int in_quantized;               /* input carries integer codes (previous layer quantizes) */
    int codes_fit_f32;              /* integer sums of this layer are exact in float32 */
    /* weight quantizer (LINEAR with weight_quant) */
    float w_qmin, w_qmax, w_int_threshold;
    float w_scale;                  /* scale of the last forward                    */
    int64_t w_argmax;               /* ABSMAX: element that set the scale, -1 if clamped */
    float *w_fq;                    /* (out, in) fake-quantized weights             */
    float *w_codes;                 /* (out, in) their integer codes                */
    float *dw_fq;                   /* (out, in) gradient w.r.t. w_fq (scratch)     */
    /* activation quantizer (ACT_QUANT) */
    float a_qmin, a_qmax, a_int_threshold;
    float a_scale;                  /* scale of the last forward                    */
    int a_stats_phase;              /* last training forward used batch statistics  */
    int64_t a_argmax;               /* statistics phase: selected element, -1 if clamped */
    /* activations, (batch_cap, out_size) each */
    float *out, *dout, *codes;
} qf_layer;

struct qf_net {
    int n_layers;
    qf_layer *layers;
    int n_tensors;
    qf_tensor *tensors;
    float *storage;                 /* every tensor's data, grad, opt_m, opt_v      */
    float *layer_storage;           /* weight quantizer caches                      */
    int64_t in_size;
    int training;
    qf_rng init_rng, shuffle_rng;
    qf_optimizer opt;
    /* batch buffers, grown on demand outside the kernels */
    int64_t batch_cap;
    float *act_storage;
    float *x;                       /* (batch_cap, in_size) input of the last forward */
    float *scratch;                 /* (batch_cap * max layer size) for percentiles  */
    float *dlogits;                 /* (batch_cap, out_size)                        */
    int32_t *labels;                /* (batch_cap)                                  */
    int64_t last_n;                 /* samples in the last forward                  */
    int have_train_forward;         /* activations of a training forward are kept   */
    int64_t *perm;                  /* (perm_cap) epoch shuffle                      */
    int64_t perm_cap;
    char err[256];
};

/* ---------------------------------------------------------------- building */

static int add_tensor(qf_net *net, int layer, const char *suffix, int kind,
                      int ndim, int64_t d0, int64_t d1)
{
    qf_tensor *t = &net->tensors[net->n_tensors];
    memset(t, 0, sizeof *t);
    snprintf(t->name, QF_NAME_LEN, "%d.%s", layer, suffix);
    t->kind = kind;
    t->layer = layer;
    t->ndim = ndim;
    t->shape[0] = d0;
    t->shape[1] = d1;
    t->size = ndim == 1 ? d0 : d0 * d1;
    return net->n_tensors++;
}

static qf_status check_spec(qf_net *net, int i, const qf_layer_spec *s, int64_t in_size,
                            int64_t *out_size)
{
    char qerr[160];
    switch (s->kind) {
    case QF_LAYER_LINEAR:
        if (s->in_features < 1 || s->out_features < 1) {
            snprintf(net->err, sizeof net->err,
                     "layer %d: in_features and out_features must be >= 1, got %d and %d",
                     i, s->in_features, s->out_features);
            return QF_ERR_ARG;
        }
        if (s->in_features != in_size) {
            snprintf(net->err, sizeof net->err,
                     "layer %d: expects %d input features but the previous layer gives %lld",
                     i, s->in_features, (long long)in_size);
            return QF_ERR_SHAPE;
        }
        if (s->weight_quant.kind == QF_QUANT_LEARNED) {
            snprintf(net->err, sizeof net->err,
                     "layer %d: a weight quantizer cannot use runtime statistics", i);
            return QF_ERR_ARG;
        }
        if (qf_quant_spec_check(&s->weight_quant, qerr, sizeof qerr) != QF_OK) {
            snprintf(net->err, sizeof net->err, "layer %d weight quantizer: %s", i, qerr);
            return QF_ERR_ARG;
        }
        *out_size = s->out_features;
        return QF_OK;
    case QF_LAYER_RELU:
        *out_size = in_size;
        return QF_OK;
    case QF_LAYER_ACT_QUANT:
        if (s->act_quant.kind == QF_QUANT_NONE || s->act_quant.kind == QF_QUANT_ABSMAX) {
            snprintf(net->err, sizeof net->err,
                     "layer %d: an activation quantizer must be constant or learned", i);
            return QF_ERR_ARG;
        }
        if (qf_quant_spec_check(&s->act_quant, qerr, sizeof qerr) != QF_OK) {
            snprintf(net->err, sizeof net->err, "layer %d activation quantizer: %s", i, qerr);
            return QF_ERR_ARG;
        }
        *out_size = in_size;
        return QF_OK;
    }
    snprintf(net->err, sizeof net->err, "layer %d: unknown layer kind %d", i, s->kind);
    return QF_ERR_ARG;
}

/* Register the tensors of every layer and carve them out of one allocation. */
static qf_status build_tensors(qf_net *net)
{
    net->tensors = calloc((size_t)net->n_layers * 5 + 1, sizeof(qf_tensor));
    if (!net->tensors)
        return QF_ERR_NOMEM;
    int64_t cache = 0;
    for (int i = 0; i < net->n_layers; i++) {
        qf_layer *L = &net->layers[i];
        L->t_weight = L->t_bias = L->t_threshold = L->t_stats_buffer = L->t_stats_count = -1;
        L->w_argmax = L->a_argmax = -1;
        if (L->spec.kind == QF_LAYER_LINEAR) {
            L->t_weight = add_tensor(net, i, "weight", QF_TENSOR_PARAM, 2,
                                     L->spec.out_features, L->spec.in_features);
            if (L->spec.has_bias)
                L->t_bias = add_tensor(net, i, "bias", QF_TENSOR_PARAM, 1,
                                       L->spec.out_features, 0);
            if (L->spec.weight_quant.kind != QF_QUANT_NONE) {
                L->w_qmin = qf_quant_qmin(&L->spec.weight_quant);
                L->w_qmax = qf_quant_qmax(&L->spec.weight_quant);
                L->w_int_threshold = qf_quant_int_threshold(&L->spec.weight_quant);
                cache += 3 * L->in_size * L->out_size;
            }
        } else if (L->spec.kind == QF_LAYER_ACT_QUANT) {
            L->a_qmin = qf_quant_qmin(&L->spec.act_quant);
            L->a_qmax = qf_quant_qmax(&L->spec.act_quant);
            L->a_int_threshold = qf_quant_int_threshold(&L->spec.act_quant);
            if (L->spec.act_quant.kind == QF_QUANT_LEARNED) {
                L->t_threshold = add_tensor(net, i, "act_quant.threshold", QF_TENSOR_PARAM, 1, 1, 0);
                L->t_stats_buffer = add_tensor(net, i, "act_quant.stats_buffer",
                                               QF_TENSOR_BUFFER, 1, 1, 0);
                L->t_stats_count = add_tensor(net, i, "act_quant.stats_count",
                                              QF_TENSOR_BUFFER, 1, 1, 0);
            }
        }
        L->in_quantized = i > 0 && net->layers[i - 1].spec.kind == QF_LAYER_ACT_QUANT;
        if (L->in_quantized && L->spec.weight_quant.kind != QF_QUANT_NONE) {
            const qf_layer *P = &net->layers[i - 1];
            float x_max = -P->a_qmin > P->a_qmax ? -P->a_qmin : P->a_qmax;
            float w_max = -L->w_qmin > L->w_qmax ? -L->w_qmin : L->w_qmax;
            L->codes_fit_f32 = qf_codes_fit_f32(L->in_size, x_max, w_max);
        }
    }
    int64_t total = 0;
    for (int t = 0; t < net->n_tensors; t++)
        total += net->tensors[t].size * (net->tensors[t].kind == QF_TENSOR_PARAM ? 4 : 1);
    net->storage = calloc((size_t)total + 1, sizeof(float));
    net->layer_storage = calloc((size_t)cache + 1, sizeof(float));
    if (!net->storage || !net->layer_storage)
        return QF_ERR_NOMEM;
    float *p = net->storage;
    for (int t = 0; t < net->n_tensors; t++) {
        qf_tensor *T = &net->tensors[t];
        T->data = p; p += T->size;
        if (T->kind == QF_TENSOR_PARAM) {
            T->grad = p; p += T->size;
            T->opt_m = p; p += T->size;
            T->opt_v = p; p += T->size;
        }
    }
    float *c = net->layer_storage;
    for (int i = 0; i < net->n_layers; i++) {
        qf_layer *L = &net->layers[i];
        if (L->spec.kind == QF_LAYER_LINEAR && L->spec.weight_quant.kind != QF_QUANT_NONE) {
            int64_t size = L->in_size * L->out_size;
            L->w_fq = c; c += size;
            L->w_codes = c; c += size;
            L->dw_fq = c; c += size;
        }
    }
    return QF_OK;
}

static void init_parameters(qf_net *net)
{
    for (int i = 0; i < net->n_layers; i++) {
        qf_layer *L = &net->layers[i];
        if (L->spec.kind == QF_LAYER_LINEAR) {
            float bound = 1.0f / sqrtf((float)L->spec.in_features);
            qf_tensor *w = &net->tensors[L->t_weight];
            qf_rng_fill_uniform(&net->init_rng, w->data, w->size, -bound, bound);
            if (L->t_bias >= 0) {
                qf_tensor *b = &net->tensors[L->t_bias];
                qf_rng_fill_uniform(&net->init_rng, b->data, b->size, -bound, bound);
            }
        } else if (L->t_threshold >= 0) {
            net->tensors[L->t_threshold].data[0] = L->spec.act_quant.threshold;
            net->tensors[L->t_stats_buffer].data[0] = 1.0f;
            net->tensors[L->t_stats_count].data[0] = 0.0f;
        }
    }
}

qf_status qf_net_create(qf_net **out, const qf_layer_spec *specs, int n_layers,
                        int64_t in_size, uint64_t seed, char *err, int err_len)
{
    *out = NULL;
    qf_net *net = calloc(1, sizeof *net);
    if (!net)
        return QF_ERR_NOMEM;
    qf_status st = QF_OK;
    if (n_layers < 1 || in_size < 1) {
        snprintf(net->err, sizeof net->err, "a network needs at least one layer and one input "
                 "feature, got %d layers and %lld features", n_layers, (long long)in_size);
        st = QF_ERR_ARG;
        goto fail;
    }
    net->n_layers = n_layers;
    net->in_size = in_size;
    net->layers = calloc((size_t)n_layers, sizeof(qf_layer));
    if (!net->layers) {
        st = QF_ERR_NOMEM;
        goto fail;
    }
    int64_t size = in_size;
    for (int i = 0; i < n_layers; i++) {
        qf_layer *L = &net->layers[i];
        L->spec = specs[i];
        L->in_size = size;
        if ((st = check_spec(net, i, &specs[i], size, &L->out_size)) != QF_OK)
            goto fail;
        size = L->out_size;
    }
    if ((st = build_tensors(net)) != QF_OK)
        goto fail;
    qf_rng_seed(&net->init_rng, seed, 0);
    qf_rng_seed(&net->shuffle_rng, seed, 1);
    net->training = 1;
    net->opt.kind = QF_OPT_NONE;
    init_parameters(net);
    *out = net;
    return QF_OK;
fail:
    if (err && err_len > 0)
        snprintf(err, (size_t)err_len, "%s", net->err[0] ? net->err : qf_status_string(st));
    qf_net_free(net);
    return st;
}

void qf_net_free(qf_net *net)
{
    if (!net)
        return;
    if (net->tensors)
        for (int t = 0; t < net->n_tensors; t++)
            free(net->tensors[t].mask);
    free(net->tensors);
    free(net->storage);
    free(net->layer_storage);
    free(net->layers);
    free(net->act_storage);
    free(net->x);
    free(net->scratch);
    free(net->dlogits);
    free(net->labels);
    free(net->perm);
    free(net);
}

/* Grow the batch buffers to hold n samples (allocation happens only here). */
static qf_status ensure_batch(qf_net *net, int64_t n)
{
    if (n <= net->batch_cap)
        return QF_OK;
    int64_t cap = n;
    int64_t act = 0, max_size = net->in_size;
    for (int i = 0; i < net->n_layers; i++) {
        qf_layer *L = &net->layers[i];
        act += L->out_size * (L->spec.kind == QF_LAYER_ACT_QUANT ? 3 : 2);
        if (L->out_size > max_size)
            max_size = L->out_size;
    }
    int64_t out_size = qf_net_out_size(net);
    float *act_storage = malloc(sizeof(float) * (size_t)(act * cap));
    float *x = malloc(sizeof(float) * (size_t)(net->in_size * cap));
    float *scratch = malloc(sizeof(float) * (size_t)(max_size * cap));
    float *dlogits = malloc(sizeof(float) * (size_t)(out_size * cap));
    int32_t *labels = malloc(sizeof(int32_t) * (size_t)cap);
    if (!act_storage || !x || !scratch || !dlogits || !labels) {
        free(act_storage); free(x); free(scratch); free(dlogits); free(labels);
        snprintf(net->err, sizeof net->err, "cannot allocate buffers for a batch of %lld samples",
                 (long long)n);
        return QF_ERR_NOMEM;
    }
    free(net->act_storage); free(net->x); free(net->scratch); free(net->dlogits); free(net->labels);
    net->act_storage = act_storage;
    net->x = x;
    net->scratch = scratch;
    net->dlogits = dlogits;
    net->labels = labels;
    float *p = act_storage;
    for (int i = 0; i < net->n_layers; i++) {
        qf_layer *L = &net->layers[i];
        L->out = p; p += L->out_size * cap;
        L->dout = p; p += L->out_size * cap;
        L->codes = NULL;
        if (L->spec.kind == QF_LAYER_ACT_QUANT) {
            L->codes = p;
            p += L->out_size * cap;
        }
    }
    net->batch_cap = cap;
    net->have_train_forward = 0;
    return QF_OK;
}

/* ---------------------------------------------------------------- accessors */

const char *qf_net_error(const qf_net *net) { return net->err; }
int qf_net_n_layers(const qf_net *net) { return net->n_layers; }
const qf_layer_spec *qf_net_layer_spec(const qf_net *net, int layer)
{
    return layer >= 0 && layer < net->n_layers ? &net->layers[layer].spec : NULL;
}
int64_t qf_net_in_size(const qf_net *net) { return net->in_size; }
int64_t qf_net_out_size(const qf_net *net) { return net->layers[net->n_layers - 1].out_size; }
int qf_net_n_tensors(const qf_net *net) { return net->n_tensors; }
qf_tensor *qf_net_tensor(qf_net *net, int index)
{
    return index >= 0 && index < net->n_tensors ? &net->tensors[index] : NULL;
}
int qf_net_find_tensor(const qf_net *net, const char *name)
{
    for (int t = 0; t < net->n_tensors; t++)
        if (strcmp(net->tensors[t].name, name) == 0)
            return t;
    return -1;
}
void qf_net_set_training(qf_net *net, int training)
{
    net->training = training != 0;
    net->have_train_forward = 0;
}
int qf_net_training(const qf_net *net) { return net->training; }
qf_rng *qf_net_init_rng(qf_net *net) { return &net->init_rng; }
qf_rng *qf_net_shuffle_rng(qf_net *net) { return &net->shuffle_rng; }

qf_status qf_net_init_uniform(qf_net *net, int index, float a, float b)
{
    qf_tensor *t = qf_net_tensor(net, index);
    if (!t) {
        snprintf(net->err, sizeof net->err, "no tensor with index %d", index);
        return QF_ERR_ARG;
    }
    if (!(a <= b) || !isfinite(a) || !isfinite(b)) {
        snprintf(net->err, sizeof net->err, "uniform bounds must be finite with a <= b, got "
                 "[%g, %g]", (double)a, (double)b);
        return QF_ERR_ARG;
    }
    qf_rng_fill_uniform(&net->init_rng, t->data, t->size, a, b);
    if (t->mask)
        for (int64_t i = 0; i < t->size; i++)
            if (!t->mask[i])
                t->data[i] = 0.0f;
    return QF_OK;
}

qf_status qf_net_set_mask(qf_net *net, int index, const uint8_t *mask)
{
    qf_tensor *t = qf_net_tensor(net, index);
    if (!t || t->kind != QF_TENSOR_PARAM) {
        snprintf(net->err, sizeof net->err, "tensor %d is not a parameter", index);
        return QF_ERR_ARG;
    }
    if (!mask) {
        free(t->mask);
        t->mask = NULL;
        return QF_OK;
    }
    if (!t->mask && !(t->mask = malloc((size_t)t->size))) {
        snprintf(net->err, sizeof net->err, "cannot allocate a mask of %lld entries",
                 (long long)t->size);
        return QF_ERR_NOMEM;
    }
    for (int64_t i = 0; i < t->size; i++) {
        t->mask[i] = mask[i] != 0;
        if (!t->mask[i])
            t->data[i] = t->grad[i] = t->opt_m[i] = t->opt_v[i] = 0.0f;
    }
    return QF_OK;
}

/* ---------------------------------------------------------------- quantizer scales */

static float weight_scale(const qf_layer *L, const float *w, int64_t *argmax)
{
    const qf_quant_spec *q = &L->spec.weight_quant;
    float threshold = q->threshold;
    *argmax = -1;
    if (q->kind == QF_QUANT_ABSMAX)
        *argmax = qf_abs_argmax(w, L->in_size * L->out_size, 0, &threshold);
    float s = threshold / L->w_int_threshold;
    if (!(s >= QF_SCALE_MIN)) {
        s = QF_SCALE_MIN;
        *argmax = -1;
    }
    return s;
}

/* Eval-mode threshold of a learned activation quantizer. */
static float learned_eval_threshold(const qf_net *net, const qf_layer *L)
{
    float count = net->tensors[L->t_stats_count].data[0];
    if (count <= (float)L->spec.act_quant.stats_steps)
        return net->tensors[L->t_stats_buffer].data[0];
    return fabsf(net->tensors[L->t_threshold].data[0]);
}

static float clamp_scale(float threshold, float int_threshold)
{
    float s = threshold / int_threshold;
    return s >= QF_SCALE_MIN ? s : QF_SCALE_MIN;
}

/* Scale of an activation quantizer for this forward; in training mode the
 * statistics phase advances (REFERENCE.md section 2). */
static float act_scale_forward(qf_net *net, qf_layer *L, const float *in, int64_t count_values)
{
    const qf_quant_spec *q = &L->spec.act_quant;
    L->a_stats_phase = 0;
    L->a_argmax = -1;
    if (q->kind == QF_QUANT_CONST)
        return clamp_scale(q->threshold, L->a_int_threshold);
    if (!net->training)
        return clamp_scale(learned_eval_threshold(net, L), L->a_int_threshold);
    float *count = net->tensors[L->t_stats_count].data;
    float *buffer = net->tensors[L->t_stats_buffer].data;
    float *value = net->tensors[L->t_threshold].data;
    if (*count < (float)q->stats_steps) {
        int64_t index;
        float stat = qf_abs_percentile(in, count_values, q->percentile, L->spec.relu,
                                       net->scratch, &index);
        if (stat < QF_SCALE_MIN) {
            stat = QF_SCALE_MIN;
            index = -1;
        }
        *buffer = *count == 0.0f ? stat : (1.0f - q->momentum) * *buffer + q->momentum * stat;
        *count += 1.0f;
        L->a_stats_phase = 1;
        L->a_argmax = index;
        return clamp_scale(stat, L->a_int_threshold);
    }
    if (*count == (float)q->stats_steps) {
        *value = *buffer;
        *count += 1.0f;
    }
    return clamp_scale(fabsf(*value), L->a_int_threshold);
}

qf_status qf_net_act_scale(const qf_net *net, int layer, float *scale)
{
    if (layer < 0 || layer >= net->n_layers || net->layers[layer].spec.kind != QF_LAYER_ACT_QUANT)
        return QF_ERR_ARG;
    const qf_layer *L = &net->layers[layer];
    float threshold = L->spec.act_quant.kind == QF_QUANT_CONST ? L->spec.act_quant.threshold
                                                                : learned_eval_threshold(net, L);
    *scale = clamp_scale(threshold, L->a_int_threshold);
    return QF_OK;
}

qf_status qf_net_weight_scale(const qf_net *net, int layer, float *scale)
{
    if (layer < 0 || layer >= net->n_layers || net->layers[layer].spec.kind != QF_LAYER_LINEAR ||
        net->layers[layer].spec.weight_quant.kind == QF_QUANT_NONE)
        return QF_ERR_ARG;
    const qf_layer *L = &net->layers[layer];
    int64_t argmax;
    *scale = weight_scale(L, net->tensors[L->t_weight].data, &argmax);
    return QF_OK;
}

/* ---------------------------------------------------------------- forward */

static void forward_layers(qf_net *net, int64_t n)
{
    const float *in = net->x;
    const float *in_codes = NULL;
    float in_scale = 0.0f;
    for (int i = 0; i < net->n_layers; i++) {
        qf_layer *L = &net->layers[i];
        int64_t count = n * L->out_size;
        if (L->spec.kind == QF_LAYER_LINEAR) {
            const float *w = net->tensors[L->t_weight].data;
            const float *b = L->t_bias >= 0 ? net->tensors[L->t_bias].data : NULL;
            if (L->spec.weight_quant.kind == QF_QUANT_NONE) {
                qf_linear_forward(L->out, in, w, b, n, L->in_size, L->out_size);
            } else {
                L->w_scale = weight_scale(L, w, &L->w_argmax);
                qf_fake_quant_forward(L->w_fq, L->w_codes, w, L->in_size * L->out_size,
                                      L->w_scale, L->w_qmin, L->w_qmax, 0);
                if (L->in_quantized)
                    qf_linear_forward_codes(L->out, in_codes, L->w_codes, in_scale * L->w_scale,
                                            b, L->codes_fit_f32, n, L->in_size, L->out_size);
                else
                    qf_linear_forward(L->out, in, L->w_fq, b, n, L->in_size, L->out_size);
            }
        } else if (L->spec.kind == QF_LAYER_RELU) {
            for (int64_t j = 0; j < count; j++)
                L->out[j] = in[j] > 0.0f ? in[j] : 0.0f;
        } else {
            L->a_scale = act_scale_forward(net, L, in, count);
            qf_fake_quant_forward(L->out, L->codes, in, count, L->a_scale, L->a_qmin, L->a_qmax,
                                  L->spec.relu);
        }
        in = L->out;
        in_codes = L->codes;
        in_scale = L->a_scale;
    }
}

static qf_status check_finite(qf_net *net, const float *x, int64_t count)
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
    qf_status st = check_finite(net, x, n * net->in_size);
    if (st != QF_OK)
        return st;
    if ((st = ensure_batch(net, n)) != QF_OK)
        return st;
    memcpy(net->x, x, sizeof(float) * (size_t)(n * net->in_size));
    forward_layers(net, n);
    net->last_n = n;
    net->have_train_forward = net->training;
    const qf_layer *last = &net->layers[net->n_layers - 1];
    memcpy(out, last->out, sizeof(float) * (size_t)(n * last->out_size));
    return QF_OK;
}

/* ---------------------------------------------------------------- backward */

static void backward_linear(qf_net *net, qf_layer *L, const float *in, float *din, int64_t n)
{
    qf_tensor *w = &net->tensors[L->t_weight];
    float *db = L->t_bias >= 0 ? net->tensors[L->t_bias].grad : NULL;
    if (L->spec.weight_quant.kind == QF_QUANT_NONE) {
        qf_linear_backward(din, w->grad, db, L->dout, in, w->data, n, L->in_size, L->out_size);
    } else if (L->spec.weight_quant.kind == QF_QUANT_CONST) {
        /* straight-through, constant scale: dW = dW_fq */
        qf_linear_backward(din, w->grad, db, L->dout, in, L->w_fq, n, L->in_size, L->out_size);
    } else {
        int64_t size = L->in_size * L->out_size;
        memset(L->dw_fq, 0, sizeof(float) * (size_t)size);
        qf_linear_backward(din, L->dw_fq, db, L->dout, in, L->w_fq, n, L->in_size, L->out_size);
        /* straight-through: dW += dW_fq; the scale's gradient reaches the max-|w| element */
        double dscale = qf_fake_quant_backward(w->grad, L->dw_fq, w->data, size, L->w_scale,
                                               L->w_qmin, L->w_qmax, 0, 1);
        if (L->w_argmax >= 0) {
            float wmax = w->data[L->w_argmax];
            float sign = wmax >= 0.0f ? 1.0f : -1.0f;
            w->grad[L->w_argmax] += (float)(dscale / L->w_int_threshold) * sign;
        }
    }
    if (w->mask)
        for (int64_t j = 0; j < w->size; j++)
            w->grad[j] *= (float)w->mask[j];
}

static void backward_act_quant(qf_net *net, qf_layer *L, const float *in, float *din, int64_t n)
{
    int64_t count = n * L->out_size;
    if (din)
        memset(din, 0, sizeof(float) * (size_t)count);
    double dscale = qf_fake_quant_backward(din, L->dout, in, count, L->a_scale, L->a_qmin,
                                           L->a_qmax, L->spec.relu, 0);
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
    for (int i = net->n_layers - 1; i >= 0; i--) {
        qf_layer *L = &net->layers[i];
        const float *in = i > 0 ? net->layers[i - 1].out : net->x;
        float *din = i > 0 ? net->layers[i - 1].dout : NULL;
        if (L->spec.kind == QF_LAYER_LINEAR) {
            backward_linear(net, L, in, din, n);
        } else if (L->spec.kind == QF_LAYER_RELU) {
            if (din)
                for (int64_t j = 0; j < n * L->out_size; j++)
                    din[j] = in[j] > 0.0f ? L->dout[j] : 0.0f;
        } else {
            backward_act_quant(net, L, in, din, n);
        }
    }
    net->have_train_forward = 0;
    return QF_OK;
}

qf_status qf_net_backward_ce(qf_net *net, const int32_t *labels, int64_t n, double *loss,
                             int64_t *n_correct)
{
    qf_status st = check_backward(net, n);
    if (st != QF_OK)
        return st;
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
    else if (opt->kind == QF_OPT_ADAMW && !(opt->eps >= 0.0f)) what = "eps must be >= 0";
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

qf_status qf_net_step(qf_net *net)
{
    const qf_optimizer *o = &net->opt;
    if (o->kind == QF_OPT_NONE) {
        snprintf(net->err, sizeof net->err, "no optimizer is set");
        return QF_ERR_STATE;
    }
    net->opt.step++;
    for (int t = 0; t < net->n_tensors; t++) {
        qf_tensor *T = &net->tensors[t];
        if (T->kind != QF_TENSOR_PARAM)
            continue;
        if (o->kind == QF_OPT_ADAMW)
            qf_adamw_update(T->data, T->opt_m, T->opt_v, T->grad, T->size, o->lr, o->beta1,
                            o->beta2, o->eps, o->weight_decay, o->step);
        else
            qf_sgd_update(T->data, T->opt_m, T->grad, T->size, o->lr, o->momentum, o->dampening,
                          o->weight_decay, o->nesterov, o->step);
        if (T->mask)   /* the rules keep pruned entries at 0; this also undoes stray writes */
            for (int64_t i = 0; i < T->size; i++)
                T->data[i] *= (float)T->mask[i];
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
    qf_status st = check_finite(net, x, n * net->in_size);
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
    if ((st = ensure_batch(net, batch)) != QF_OK)
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
    for (int64_t start = 0; start < n; start += batch) {
        int64_t m = n - start < batch ? n - start : batch;
        for (int64_t s = 0; s < m; s++) {
            int64_t row = net->perm[start + s];
            memcpy(net->x + s * net->in_size, x + row * net->in_size,
                   sizeof(float) * (size_t)net->in_size);
            net->labels[s] = y[row];
        }
        qf_net_zero_grad(net);
        forward_layers(net, m);
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
    qf_net_zero_grad(net);
    return QF_OK;
}
