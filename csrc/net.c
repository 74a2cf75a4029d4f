/* net.c: the sequential network's construction, tensor registry, shape
 * propagation, batch buffers and accessors (see net.h; forward/backward in
 * net_pass.c, optimizer and epochs in net_train.c). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "linear.h"
#include "net_internal.h"

const char *qf_net_kind_name(int kind)
{
    switch (kind) {
    case QF_LAYER_LINEAR: return "Linear";
    case QF_LAYER_RELU: return "ReLU";
    case QF_LAYER_ACT_QUANT: return "activation quantizer";
    case QF_LAYER_CONV2D: return "Conv2d";
    case QF_LAYER_AVGPOOL2D: return "AvgPool2d";
    case QF_LAYER_RESHAPE: return "Reshape";
    case QF_LAYER_TRANSPOSE: return "Transpose";
    case QF_LAYER_RESIDUAL_ADD: return "residual add";
    case QF_LAYER_BATCHNORM2D: return "BatchNorm2d";
    case QF_LAYER_MAXPOOL2D: return "MaxPool2d";
    }
    return "layer";
}

/* ---------------------------------------------------------------- building */

static int add_tensor(qf_net *net, int layer, const char *suffix, int kind, int ndim,
                      const int64_t *shape)
{
    qf_tensor *t = &net->tensors[net->n_tensors];
    memset(t, 0, sizeof *t);
    snprintf(t->name, QF_NAME_LEN, "%d.%s", layer, suffix);
    t->kind = kind;
    t->layer = layer;
    t->ndim = ndim;
    t->size = 1;
    for (int d = 0; d < ndim; d++) {
        t->shape[d] = shape[d];
        t->size *= shape[d];
    }
    return net->n_tensors++;
}

static int bad(qf_net *net, qf_status *st, qf_status code, const char *fmt, int i, const char *what)
{
    snprintf(net->err, sizeof net->err, fmt, i, what);
    *st = code;
    return 1;
}

/* A2Q: the bits N and sign of layer i's input codes, from the quantizer that
 * produced them (through Flatten/Reshape/Transpose; a residual add of two
 * N-bit codes gives N + 1 bits).  QF_ERR_ARG if the input carries no codes. */
static qf_status a2q_input(qf_net *net, int i)
{
    qf_layer *L = &net->layers[i];
    const qf_layer_spec *s = &L->spec;
    if (s->accumulator_bits != 0 && (s->accumulator_bits < QF_A2Q_BITS_MIN ||
                                     s->accumulator_bits > QF_A2Q_BITS_MAX)) {
        snprintf(net->err, sizeof net->err, "layer %d (%s): accumulator_bit_width must be in "
                 "[%d, %d], got %d", i, qf_net_kind_name(s->kind), QF_A2Q_BITS_MIN, QF_A2Q_BITS_MAX,
                 s->accumulator_bits);
        return QF_ERR_ARG;
    }
    if (s->accumulator_bits == 0)
        return QF_OK;
    if (s->weight_quant.kind == QF_QUANT_NONE) {
        snprintf(net->err, sizeof net->err, "layer %d (%s): accumulator_bit_width needs a "
                 "weight quantizer (QuantLinear, QuantConv2d)", i, qf_net_kind_name(s->kind));
        return QF_ERR_ARG;
    }
    int j = i - 1;
    while (j >= 0 && (net->layers[j].spec.kind == QF_LAYER_RESHAPE ||
                      net->layers[j].spec.kind == QF_LAYER_TRANSPOSE))
        j--;
    const qf_layer_spec *p = j >= 0 ? &net->layers[j].spec : NULL;
    int add = p && p->kind == QF_LAYER_RESIDUAL_ADD;
    if (add)
        p = &net->layers[p->begin].spec;
    if (!p || p->kind != QF_LAYER_ACT_QUANT) {
        snprintf(net->err, sizeof net->err, "layer %d (%s): accumulator_bit_width needs integer "
                 "input codes; put a QuantIdentity or QuantReLU right before it", i,
                 qf_net_kind_name(s->kind));
        return QF_ERR_ARG;
    }
    L->a2q_in_bits = p->act_quant.bits + add;
    L->a2q_in_signed = p->act_quant.is_signed != 0;
    L->a2q_budget = qf_a2q_budget(s->accumulator_bits, L->a2q_in_bits, L->a2q_in_signed);
    L->a2q_bound = qf_a2q_bound_of(s->accumulator_bits, L->a2q_in_bits, L->a2q_in_signed,
                                   s->accumulator_split, 1.0);
    L->a2q_bound.round = s->accumulator_round != 0;
    return QF_OK;
}

/* Checks of one layer's spec that do not depend on the input shape. */
static qf_status check_spec(qf_net *net, int i, const qf_layer_spec *s)
{
    char qerr[160];
    qf_status st = QF_OK;
    int weighted = s->kind == QF_LAYER_LINEAR || s->kind == QF_LAYER_CONV2D;
    int windowed = s->kind == QF_LAYER_CONV2D || s->kind == QF_LAYER_AVGPOOL2D ||
                   s->kind == QF_LAYER_MAXPOOL2D;
    if (s->kind < QF_LAYER_LINEAR || s->kind > QF_LAYER_MAXPOOL2D) {
        snprintf(net->err, sizeof net->err, "layer %d: unknown layer kind %d", i, s->kind);
        return QF_ERR_ARG;
    }
    if (weighted && (s->in_features < 1 || s->out_features < 1)) {
        snprintf(net->err, sizeof net->err, "layer %d (%s): input and output sizes must be >= 1, "
                 "got %d and %d", i, qf_net_kind_name(s->kind), s->in_features, s->out_features);
        return QF_ERR_ARG;
    }
    if (weighted && s->weight_quant.kind == QF_QUANT_LEARNED &&
        bad(net, &st, QF_ERR_ARG, "layer %d: a weight quantizer cannot use runtime statistics%s", i, ""))
        return st;
    if (weighted && qf_quant_spec_check(&s->weight_quant, qerr, sizeof qerr) != QF_OK &&
        bad(net, &st, QF_ERR_ARG, "layer %d weight quantizer: %s", i, qerr))
        return st;
    if (weighted && a2q_input(net, i) != QF_OK)
        return QF_ERR_ARG;
    if (!weighted && s->accumulator_bits != 0) {
        snprintf(net->err, sizeof net->err, "layer %d (%s): only Linear and Conv2d layers take "
                 "accumulator_bit_width", i, qf_net_kind_name(s->kind));
        return QF_ERR_ARG;
    }
    if (windowed) {
        if (s->kernel[0] < 1 || s->kernel[1] < 1 || s->stride[0] < 1 || s->stride[1] < 1) {
            snprintf(net->err, sizeof net->err, "layer %d (%s): kernel and stride must be >= 1, "
                     "got kernel (%d, %d) and stride (%d, %d)", i, qf_net_kind_name(s->kind),
                     s->kernel[0], s->kernel[1], s->stride[0], s->stride[1]);
            return QF_ERR_ARG;
        }
        if (s->padding[0] < 0 || s->padding[1] < 0) {
            snprintf(net->err, sizeof net->err, "layer %d (%s): padding must be >= 0, got (%d, %d)",
                     i, qf_net_kind_name(s->kind), s->padding[0], s->padding[1]);
            return QF_ERR_ARG;
        }
        if (s->kind == QF_LAYER_MAXPOOL2D &&
            (2 * s->padding[0] > s->kernel[0] || 2 * s->padding[1] > s->kernel[1])) {
            snprintf(net->err, sizeof net->err, "layer %d (MaxPool2d): padding must be at most "
                     "half the kernel, got padding (%d, %d) for kernel (%d, %d)", i,
                     s->padding[0], s->padding[1], s->kernel[0], s->kernel[1]);
            return QF_ERR_ARG;
        }
    }
    if (s->kind == QF_LAYER_BATCHNORM2D) {
        if (s->in_features < 1 || !(s->eps > 0.0f) || !isfinite(s->eps) ||
            !isfinite(s->momentum) || s->momentum > 1.0f) {
            snprintf(net->err, sizeof net->err, "layer %d (BatchNorm2d): needs num_features >= 1, "
                     "eps > 0 and momentum in [0, 1] (or None), got %d, %g and %g", i,
                     s->in_features, (double)s->eps, (double)s->momentum);
            return QF_ERR_ARG;
        }
    }
    if (s->kind == QF_LAYER_CONV2D && s->groups > 1 &&
        (s->in_features % s->groups || s->out_features % s->groups)) {
        snprintf(net->err, sizeof net->err, "layer %d (Conv2d): in_channels (%d) and out_channels "
                 "(%d) must both be divisible by groups (%d)", i, s->in_features, s->out_features,
                 s->groups);
        return QF_ERR_ARG;
    }
    if (s->kind == QF_LAYER_CONV2D && s->groups < 0) {
        snprintf(net->err, sizeof net->err, "layer %d (Conv2d): groups must be >= 1, got %d", i,
                 s->groups);
        return QF_ERR_ARG;
    }
    if (s->kind == QF_LAYER_ACT_QUANT) {
        if ((s->act_quant.kind == QF_QUANT_NONE || s->act_quant.kind == QF_QUANT_ABSMAX) &&
            bad(net, &st, QF_ERR_ARG, "layer %d: an activation quantizer must be constant or "
                "learned%s", i, ""))
            return st;
        if (qf_quant_spec_check(&s->act_quant, qerr, sizeof qerr) != QF_OK &&
            bad(net, &st, QF_ERR_ARG, "layer %d activation quantizer: %s", i, qerr))
            return st;
    }
    if (s->kind == QF_LAYER_TRANSPOSE &&
        (s->dims[0] < 1 || s->dims[0] > 3 || s->dims[1] < 1 || s->dims[1] > 3)) {
        snprintf(net->err, sizeof net->err, "layer %d (Transpose): dims must be in 1..3 (dim 0 is "
                 "the batch), got (%d, %d)", i, s->dims[0], s->dims[1]);
        return QF_ERR_ARG;
    }
    if (s->kind == QF_LAYER_RESHAPE) {
        int zeros = (s->shape[0] == 0) + (s->shape[1] == 0) + (s->shape[2] == 0);
        if ((zeros != 0 && zeros != 3) || s->shape[0] < 0 || s->shape[1] < 0 || s->shape[2] < 0) {
            snprintf(net->err, sizeof net->err, "layer %d (Reshape): target shape must be three "
                     "positive sizes (or all 0 to flatten), got (%d, %d, %d)", i, s->shape[0],
                     s->shape[1], s->shape[2]);
            return QF_ERR_ARG;
        }
    }
    if (s->kind == QF_LAYER_RESIDUAL_ADD) {
        int b = s->begin;
        if (b < 0 || b >= i || net->layers[b].spec.kind != QF_LAYER_ACT_QUANT) {
            snprintf(net->err, sizeof net->err, "layer %d (residual add): its skip operand must come "
                     "from an activation quantizer before it (QuantIdentity at the block's input), "
                     "got layer %d", i, b);
            return QF_ERR_ARG;
        }
        if (net->layers[b].res_end >= 0) {
            snprintf(net->err, sizeof net->err, "layer %d (residual add): layer %d already opens "
                     "another residual block", i, b);
            return QF_ERR_ARG;
        }
        net->layers[b].res_end = i;
    }
    return QF_OK;
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
        const qf_layer_spec *s = &L->spec;
        L->t_weight = L->t_bias = L->t_threshold = L->t_stats_buffer = L->t_stats_count = -1;
        L->t_norm = L->t_norm_init = -1;
        L->t_gamma = L->t_beta = L->t_running_mean = L->t_running_var = L->t_batches = -1;
        L->a_argmax = -1;
        L->fold_bn = -1;
        if (s->kind == QF_LAYER_LINEAR || s->kind == QF_LAYER_CONV2D) {
            int conv = s->kind == QF_LAYER_CONV2D;
            int groups = conv && s->groups > 1 ? s->groups : 1;
            int64_t shape[4] = {s->out_features, s->in_features / groups, s->kernel[0],
                                s->kernel[1]};
            L->t_weight = add_tensor(net, i, "weight", QF_TENSOR_PARAM, conv ? 4 : 2, shape);
            if (s->has_bias)
                L->t_bias = add_tensor(net, i, "bias", QF_TENSOR_PARAM, 1, shape);
            L->w_rows = s->out_features;
            L->w_cols = net->tensors[L->t_weight].size / s->out_features;
            if (s->weight_quant.kind != QF_QUANT_NONE) {
                L->w_qmin = qf_quant_qmin(&s->weight_quant);
                L->w_qmax = qf_quant_qmax(&s->weight_quant);
                L->w_int_threshold = qf_quant_int_threshold(&s->weight_quant);
                cache += 4 * L->w_rows * L->w_cols + 2 * L->w_rows;
            }
            if (s->accumulator_bits > 0) {
                int64_t rows = s->out_features, one = 1;
                L->t_norm = add_tensor(net, i, "weight_norm", QF_TENSOR_PARAM, 1, &rows);
                L->t_norm_init = add_tensor(net, i, "weight_norm_init", QF_TENSOR_BUFFER, 1, &one);
            }
        } else if (s->kind == QF_LAYER_ACT_QUANT) {
            L->a_qmin = qf_quant_qmin(&s->act_quant);
            L->a_qmax = qf_quant_qmax(&s->act_quant);
            L->a_int_threshold = qf_quant_int_threshold(&s->act_quant);
            if (s->act_quant.kind == QF_QUANT_LEARNED) {
                int64_t one = 1;
                L->t_threshold = add_tensor(net, i, "act_quant.threshold", QF_TENSOR_PARAM, 1, &one);
                L->t_stats_buffer = add_tensor(net, i, "act_quant.stats_buffer", QF_TENSOR_BUFFER,
                                               1, &one);
                L->t_stats_count = add_tensor(net, i, "act_quant.stats_count", QF_TENSOR_BUFFER,
                                              1, &one);
            }
        } else if (s->kind == QF_LAYER_BATCHNORM2D) {
            int64_t c = s->in_features, one = 1;
            if (s->affine) {
                L->t_gamma = add_tensor(net, i, "weight", QF_TENSOR_PARAM, 1, &c);
                L->t_beta = add_tensor(net, i, "bias", QF_TENSOR_PARAM, 1, &c);
            }
            if (s->track_running_stats) {
                L->t_running_mean = add_tensor(net, i, "running_mean", QF_TENSOR_BUFFER, 1, &c);
                L->t_running_var = add_tensor(net, i, "running_var", QF_TENSOR_BUFFER, 1, &c);
                L->t_batches = add_tensor(net, i, "num_batches_tracked", QF_TENSOR_BUFFER, 1, &one);
            }
            cache += QF_BN_CACHE_PER_CHANNEL * c;
        }
        L->emits_codes = s->kind == QF_LAYER_ACT_QUANT || s->kind == QF_LAYER_RESHAPE ||
                         s->kind == QF_LAYER_TRANSPOSE || s->kind == QF_LAYER_RESIDUAL_ADD ||
                         s->kind == QF_LAYER_MAXPOOL2D;
    }
    net->packed = calloc((size_t)net->n_tensors + 1, sizeof(qf_packed *));
    if (!net->packed)
        return QF_ERR_NOMEM;
    int64_t total = 0;
    for (int t = 0; t < net->n_tensors; t++)
        total += net->tensors[t].size * (net->tensors[t].kind == QF_TENSOR_PARAM ? 4 : 1);
    net->storage = calloc((size_t)total + 1, sizeof(float));
    net->layer_storage = calloc((size_t)cache + 2, sizeof(float));
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
        if (L->spec.kind == QF_LAYER_BATCHNORM2D) {
            c = qf_net_bn_place_cache(L, c);
            continue;
        }
        if (L->t_weight < 0 || L->spec.weight_quant.kind == QF_QUANT_NONE)
            continue;
        int64_t size = L->w_rows * L->w_cols;
        L->w_fq = c; c += size;
        L->w_codes = c; c += size;
        L->w_codes_t = c; c += size;
        L->dw_fq = c; c += size;
        L->w_scale = c; c += L->w_rows;
        L->epi_scale = c; c += L->w_rows;
        L->w_argmax = malloc(sizeof(int64_t) * (size_t)L->w_rows);
        if (!L->w_argmax)
            return QF_ERR_NOMEM;
        if (L->t_norm >= 0 && !(L->a2q_rows = calloc((size_t)L->w_rows, sizeof(qf_a2q_row))))
            return QF_ERR_NOMEM;
    }
    return QF_OK;
}

static void init_parameters(qf_net *net)
{
    for (int i = 0; i < net->n_layers; i++) {
        qf_layer *L = &net->layers[i];
        if (L->t_weight >= 0) {
            /* PyTorch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias */
            float bound = 1.0f / sqrtf((float)L->w_cols);
            qf_tensor *w = &net->tensors[L->t_weight];
            qf_rng_fill_uniform(&net->init_rng, w->data, w->size, -bound, bound);
            if (L->t_bias >= 0) {
                qf_tensor *b = &net->tensors[L->t_bias];
                qf_rng_fill_uniform(&net->init_rng, b->data, b->size, -bound, bound);
            }
        } else if (L->spec.kind == QF_LAYER_BATCHNORM2D) {
            qf_net_bn_init(net, L);
        } else if (L->t_threshold >= 0) {
            net->tensors[L->t_threshold].data[0] = L->spec.act_quant.threshold;
            net->tensors[L->t_stats_buffer].data[0] = 1.0f;
            net->tensors[L->t_stats_count].data[0] = 0.0f;
        }
    }
}

qf_status qf_net_create_shaped(qf_net **out, const qf_layer_spec *specs, int n_layers,
                               const int64_t in_shape[3], uint64_t seed, char *err, int err_len)
{
    *out = NULL;
    qf_net *net = calloc(1, sizeof *net);
    if (!net)
        return QF_ERR_NOMEM;
    qf_status st = QF_OK;
    if (n_layers < 1 || in_shape[0] < 1 || in_shape[1] < 0 || in_shape[2] < 0) {
        snprintf(net->err, sizeof net->err, "a network needs at least one layer and one input "
                 "feature, got %d layers and input shape (%lld, %lld, %lld)", n_layers,
                 (long long)in_shape[0], (long long)in_shape[1], (long long)in_shape[2]);
        st = QF_ERR_ARG;
        goto fail;
    }
    net->n_layers = n_layers;
    net->layers = calloc((size_t)n_layers, sizeof(qf_layer));
    if (!net->layers) {
        st = QF_ERR_NOMEM;
        goto fail;
    }
    for (int i = 0; i < n_layers; i++) {
        net->layers[i].spec = specs[i];
        net->layers[i].res_end = -1;
    }
    for (int i = 0; i < n_layers; i++)
        if ((st = check_spec(net, i, &specs[i])) != QF_OK)
            goto fail;
    if ((st = build_tensors(net)) != QF_OK)
        goto fail;
    net->in_shape[0] = in_shape[0];
    if (in_shape[1] > 0 && in_shape[2] > 0 &&
        (st = qf_net_set_input_shape(net, in_shape[0], in_shape[1], in_shape[2])) != QF_OK)
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

qf_status qf_net_create(qf_net **out, const qf_layer_spec *specs, int n_layers,
                        int64_t in_size, uint64_t seed, char *err, int err_len)
{
    int64_t shape[3] = {in_size, 1, 1};
    return qf_net_create_shaped(out, specs, n_layers, shape, seed, err, err_len);
}

void qf_net_free_buffers(qf_net *net)
{
    free(net->act_storage);
    free(net->x);
    free(net->scratch);
    free(net->labels);
    net->act_storage = net->x = net->scratch = NULL;
    net->labels = NULL;
    net->batch_cap = 0;
}

void qf_net_free(qf_net *net)
{
    if (!net)
        return;
    if (net->tensors)
        for (int t = 0; t < net->n_tensors; t++)
            free(net->tensors[t].mask);
    if (net->packed)
        for (int t = 0; t < net->n_tensors; t++)
            qf_net_packed_free(net->packed[t]);
    free(net->packed);
    if (net->layers)
        for (int i = 0; i < net->n_layers; i++) {
            free(net->layers[i].w_argmax);
            free(net->layers[i].a2q_rows);
        }
    free(net->tensors);
    free(net->storage);
    free(net->layer_storage);
    free(net->layers);
    qf_net_free_buffers(net);
    free(net->perm);
    free(net);
}

/* ---------------------------------------------------------------- shapes */

static qf_status shape_error(qf_net *net, int i, const char *what)
{
    snprintf(net->err, sizeof net->err, "layer %d (%s): %s", i,
             qf_net_kind_name(net->layers[i].spec.kind), what);
    return QF_ERR_SHAPE;
}

static void set_geom(qf_layer *L, const int64_t *in)
{
    qf_conv_geom *g = &L->geom;
    g->c = in[0]; g->h = in[1]; g->w = in[2];
    g->kh = L->spec.kernel[0]; g->kw = L->spec.kernel[1];
    g->sh = L->spec.stride[0]; g->sw = L->spec.stride[1];
    g->ph = L->spec.padding[0]; g->pw = L->spec.padding[1];
    g->oh = qf_conv_out_dim(g->h, g->kh, g->sh, g->ph);
    g->ow = qf_conv_out_dim(g->w, g->kw, g->sw, g->pw);
}

/* Output shape of layer i for input shape in; QF_ERR_SHAPE with a message. */
static qf_status layer_shape(qf_net *net, int i, const int64_t *in, int64_t *out)
{
    qf_layer *L = &net->layers[i];
    const qf_layer_spec *s = &L->spec;
    char msg[200];
    int64_t size = in[0] * in[1] * in[2];
    out[0] = in[0]; out[1] = in[1]; out[2] = in[2];
    switch (s->kind) {
    case QF_LAYER_LINEAR:
        if (in[1] != 1 || in[2] != 1) {
            snprintf(msg, sizeof msg, "receives samples of shape (%lld, %lld, %lld); add "
                     "nn.Flatten() before it", (long long)in[0], (long long)in[1], (long long)in[2]);
            return shape_error(net, i, msg);
        }
        if (in[0] != s->in_features) {
            snprintf(msg, sizeof msg, "expects %d input features but receives %lld",
                     s->in_features, (long long)in[0]);
            return shape_error(net, i, msg);
        }
        out[0] = s->out_features; out[1] = 1; out[2] = 1;
        return QF_OK;
    case QF_LAYER_BATCHNORM2D:
        if (in[0] != s->in_features) {
            snprintf(msg, sizeof msg, "expects %d channels (num_features) but receives %lld",
                     s->in_features, (long long)in[0]);
            return shape_error(net, i, msg);
        }
        return QF_OK;
    case QF_LAYER_CONV2D:
    case QF_LAYER_AVGPOOL2D:
    case QF_LAYER_MAXPOOL2D:
        if (s->kind == QF_LAYER_CONV2D && in[0] != s->in_features) {
            snprintf(msg, sizeof msg, "expects %d input channels but receives %lld",
                     s->in_features, (long long)in[0]);
            return shape_error(net, i, msg);
        }
        set_geom(L, in);
        if (L->geom.oh < 1 || L->geom.ow < 1) {
            snprintf(msg, sizeof msg, "kernel (%d, %d) is larger than the padded input (%lld, %lld)",
                     s->kernel[0], s->kernel[1], (long long)(in[1] + 2 * s->padding[0]),
                     (long long)(in[2] + 2 * s->padding[1]));
            return shape_error(net, i, msg);
        }
        out[0] = s->kind == QF_LAYER_CONV2D ? s->out_features : in[0];
        out[1] = L->geom.oh; out[2] = L->geom.ow;
        return QF_OK;
    case QF_LAYER_RESHAPE:
        if (s->shape[0] == 0) {
            out[0] = size; out[1] = 1; out[2] = 1;
            return QF_OK;
        }
        if ((int64_t)s->shape[0] * s->shape[1] * s->shape[2] != size) {
            snprintf(msg, sizeof msg, "cannot reshape %lld values per sample to (%d, %d, %d)",
                     (long long)size, s->shape[0], s->shape[1], s->shape[2]);
            return shape_error(net, i, msg);
        }
        out[0] = s->shape[0]; out[1] = s->shape[1]; out[2] = s->shape[2];
        return QF_OK;
    case QF_LAYER_TRANSPOSE: {
        int a = s->dims[0] - 1, b = s->dims[1] - 1;
        int64_t t = out[a]; out[a] = out[b]; out[b] = t;
        return QF_OK;
    }
    case QF_LAYER_RESIDUAL_ADD: {
        const int64_t *skip = net->layers[s->begin].out_shape;
        if (skip[0] != in[0] || skip[1] != in[1] || skip[2] != in[2]) {
            snprintf(msg, sizeof msg, "the block outputs (%lld, %lld, %lld) but its input (layer "
                     "%d) is (%lld, %lld, %lld): both operands of the add need one shape",
                     (long long)in[0], (long long)in[1], (long long)in[2], s->begin,
                     (long long)skip[0], (long long)skip[1], (long long)skip[2]);
            return shape_error(net, i, msg);
        }
        return QF_OK;
    }
    }
    return QF_OK;
}

qf_status qf_net_set_input_shape(qf_net *net, int64_t c, int64_t h, int64_t w)
{
    net->err[0] = 0;
    if (net->shapes_known && c == net->in_shape[0] && h == net->in_shape[1] &&
        w == net->in_shape[2])
        return QF_OK;
    if (c < 1 || h < 1 || w < 1) {
        snprintf(net->err, sizeof net->err, "input samples must have a positive shape, got "
                 "(%lld, %lld, %lld)", (long long)c, (long long)h, (long long)w);
        return QF_ERR_SHAPE;
    }
    int64_t shape[3] = {c, h, w};
    for (int i = 0; i < net->n_layers; i++) {
        qf_layer *L = &net->layers[i];
        int64_t out[3];
        qf_status st = layer_shape(net, i, shape, out);
        if (st != QF_OK) {
            net->shapes_known = 0;
            return st;
        }
        memcpy(L->in_shape, shape, sizeof shape);
        memcpy(L->out_shape, out, sizeof out);
        L->in_size = shape[0] * shape[1] * shape[2];
        L->out_size = out[0] * out[1] * out[2];
        if (L->t_weight >= 0 && L->spec.weight_quant.kind != QF_QUANT_NONE && i > 0) {
            /* a quantizer upstream bounds the input codes by its range (doubled after an add) */
            const qf_layer *P = &net->layers[i - 1];
            int j = i - 1;
            while (j > 0 && (net->layers[j].spec.kind == QF_LAYER_RESHAPE ||
                             net->layers[j].spec.kind == QF_LAYER_TRANSPOSE ||
                             net->layers[j].spec.kind == QF_LAYER_MAXPOOL2D))
                j--;
            P = &net->layers[j];
            const qf_layer *Q = P->spec.kind == QF_LAYER_RESIDUAL_ADD ? &net->layers[P->spec.begin] : P;
            float x_max = -Q->a_qmin > Q->a_qmax ? -Q->a_qmin : Q->a_qmax;
            if (P->spec.kind == QF_LAYER_RESIDUAL_ADD)
                x_max *= 2.0f;
            float w_max = -L->w_qmin > L->w_qmax ? -L->w_qmin : L->w_qmax;
            L->codes_fit_f32 = Q->spec.kind == QF_LAYER_ACT_QUANT &&
                               qf_codes_fit_f32(L->w_cols, x_max, w_max);
        }
        memcpy(shape, out, sizeof out);
    }
    net->in_shape[0] = c; net->in_shape[1] = h; net->in_shape[2] = w;
    net->shapes_known = 1;
    net->buffers_stale = 1;
    net->have_train_forward = 0;
    return QF_OK;
}

void qf_net_input_shape(const qf_net *net, int64_t shape[3])
{
    memcpy(shape, net->in_shape, 3 * sizeof(int64_t));
}

void qf_net_output_shape(const qf_net *net, int64_t shape[3])
{
    qf_net_layer_output_shape(net, net->n_layers - 1, shape);
}

void qf_net_layer_output_shape(const qf_net *net, int layer, int64_t shape[3])
{
    if (!net->shapes_known || layer < 0 || layer >= net->n_layers) {
        shape[0] = shape[1] = shape[2] = 0;
        return;
    }
    memcpy(shape, net->layers[layer].out_shape, 3 * sizeof(int64_t));
}

int64_t qf_net_cur_in_size(const qf_net *net)
{
    return net->in_shape[0] * net->in_shape[1] * net->in_shape[2];
}

/* ---------------------------------------------------------------- buffers */

/* Floats of activation buffers per sample under the current shapes (act), and
 * the largest layer size (max_size); see qf_net_prepare. */
static int64_t activation_floats(const qf_net *net, int64_t *max_size)
{
    int64_t act = 0;
    *max_size = qf_net_cur_in_size(net);
    for (int i = 0; i < net->n_layers; i++) {
        const qf_layer *L = &net->layers[i];
        act += L->out_size * (2 + (L->emits_codes ? 1 : 0) +
                              (L->spec.kind == QF_LAYER_RESIDUAL_ADD ? 1 : 0) +
                              (L->spec.kind == QF_LAYER_BATCHNORM2D ? 1 : 0) +   /* xhat */
                              (L->spec.kind == QF_LAYER_MAXPOOL2D ? 1 : 0));     /* argmax */
        if (L->spec.kind == QF_LAYER_CONV2D) {
            int64_t p = L->geom.oh * L->geom.ow, k = L->geom.c * L->geom.kh * L->geom.kw;
            act += 3 * p * k + p * L->spec.out_features;
        }
        if (L->out_size > *max_size)
            *max_size = L->out_size;
    }
    return act;
}

/* Floats of the per-net (not per-sample) convolution workspaces: each Conv2d's
 * transposed weights and weight gradient (net_conv.c). */
static int64_t conv_workspace_floats(const qf_net *net)
{
    int64_t floats = 0;
    for (int i = 0; i < net->n_layers; i++)
        if (net->layers[i].spec.kind == QF_LAYER_CONV2D)
            floats += 2 * net->layers[i].w_rows * net->layers[i].w_cols;
    return floats;
}

int64_t qf_net_sample_floats(const qf_net *net)
{
    int64_t max_size;
    int64_t act = activation_floats(net, &max_size);
    return act + qf_net_cur_in_size(net) + max_size + 1;   /* + x, scratch, label */
}

int64_t qf_net_buffer_bytes(const qf_net *net)
{
    return net->batch_cap > 0 ? (int64_t)sizeof(float) * net->batch_cap * qf_net_sample_floats(net)
                              : 0;
}

/* Size the batch buffers for n samples under the current shapes (allocation
 * happens only here, and only when n or the shapes grow/change, or when
 * buffers above QF_NET_KEEP_BYTES serve a batch under a quarter of their
 * capacity: they shrink to it). */
qf_status qf_net_prepare(qf_net *net, int64_t n)
{
    if (!net->shapes_known) {
        snprintf(net->err, sizeof net->err, "the input shape is not set yet");
        return QF_ERR_STATE;
    }
    int shrink = n < net->batch_cap / 4 && qf_net_buffer_bytes(net) > QF_NET_KEEP_BYTES;
    if (n <= net->batch_cap && !net->buffers_stale && !shrink)
        return QF_OK;
    int64_t cap = n > net->batch_cap || shrink ? n : net->batch_cap;
    int64_t max_size;
    int64_t act = activation_floats(net, &max_size);
    qf_net_free_buffers(net);
    net->act_storage = malloc(sizeof(float) * (size_t)(act * cap + conv_workspace_floats(net) + 1));
    net->x = malloc(sizeof(float) * (size_t)(qf_net_cur_in_size(net) * cap));
    net->scratch = malloc(sizeof(float) * (size_t)(max_size * cap));
    net->labels = malloc(sizeof(int32_t) * (size_t)cap);
    if (!net->act_storage || !net->x || !net->scratch || !net->labels) {
        qf_net_free_buffers(net);
        snprintf(net->err, sizeof net->err, "cannot allocate buffers for a batch of %lld samples",
                 (long long)n);
        return QF_ERR_NOMEM;
    }
    float *p = net->act_storage;
    for (int i = 0; i < net->n_layers; i++) {
        qf_layer *L = &net->layers[i];
        L->out = p; p += L->out_size * cap;
        L->dout = p; p += L->out_size * cap;
        L->codes = L->cols = L->col_codes = L->dcols = L->gemm_out = L->skip_grad = NULL;
        L->w_t = L->dw_t = NULL;
        L->xhat = NULL;
        L->argmax = NULL;
        if (L->spec.kind == QF_LAYER_BATCHNORM2D) {
            L->xhat = p;
            p += L->out_size * cap;
        }
        if (L->spec.kind == QF_LAYER_MAXPOOL2D) {   /* int32 indices in float-sized slots */
            L->argmax = (int32_t *)(void *)p;
            p += L->out_size * cap;
        }
        if (L->emits_codes) {
            L->codes = p;
            p += L->out_size * cap;
        }
        if (L->spec.kind == QF_LAYER_RESIDUAL_ADD) {
            L->skip_grad = p;
            p += L->out_size * cap;
        }
        if (L->spec.kind == QF_LAYER_CONV2D) {
            int64_t rows = L->geom.oh * L->geom.ow * cap;
            int64_t k = L->geom.c * L->geom.kh * L->geom.kw;   /* taps of all groups */
            L->cols = p; p += rows * k;
            L->col_codes = p; p += rows * k;
            L->dcols = p; p += rows * k;
            L->gemm_out = p; p += rows * L->spec.out_features;
            L->w_t = p; p += L->w_rows * L->w_cols;
            L->dw_t = p; p += L->w_rows * L->w_cols;
        }
    }
    net->batch_cap = cap;
    net->buffers_stale = 0;
    net->have_train_forward = 0;
    return QF_OK;
}

void qf_net_trim_buffers(qf_net *net)
{
    if (!net->have_train_forward && qf_net_buffer_bytes(net) > QF_NET_KEEP_BYTES)
        qf_net_free_buffers(net);
}

/* ---------------------------------------------------------------- accessors */

const char *qf_net_error(const qf_net *net) { return net->err; }
int qf_net_n_layers(const qf_net *net) { return net->n_layers; }
const qf_layer_spec *qf_net_layer_spec(const qf_net *net, int layer)
{
    return layer >= 0 && layer < net->n_layers ? &net->layers[layer].spec : NULL;
}
int64_t qf_net_in_size(const qf_net *net) { return qf_net_cur_in_size(net); }
int64_t qf_net_out_size(const qf_net *net)
{
    return net->shapes_known ? net->layers[net->n_layers - 1].out_size : 0;
}
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
        return qf_net_packed_set(net, index);
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
    qf_status st = qf_net_packed_set(net, index);
    if (st != QF_OK) {   /* the mask without its packed index: drop both */
        free(t->mask);
        t->mask = NULL;
        snprintf(net->err, sizeof net->err, "cannot index the mask of %lld entries",
                 (long long)t->size);
    }
    return st;
}

qf_status qf_net_act_scale(const qf_net *net, int layer, float *scale)
{
    if (layer < 0 || layer >= net->n_layers || net->layers[layer].spec.kind != QF_LAYER_ACT_QUANT)
        return QF_ERR_ARG;
    const qf_layer *L = &net->layers[layer];
    float threshold = L->spec.act_quant.kind == QF_QUANT_CONST
                          ? L->spec.act_quant.threshold
                          : qf_net_learned_eval_threshold(net, L);
    *scale = qf_net_clamp_scale(threshold, L->a_int_threshold);
    return QF_OK;
}

qf_status qf_net_weight_scale(const qf_net *net, int layer, float *scale)
{
    if (layer < 0 || layer >= net->n_layers || net->layers[layer].t_weight < 0 ||
        net->layers[layer].spec.weight_quant.kind == QF_QUANT_NONE)
        return QF_ERR_ARG;
    const qf_layer *L = &net->layers[layer];
    int64_t *argmax = malloc(sizeof(int64_t) * (size_t)L->w_rows);
    if (!argmax)
        return QF_ERR_NOMEM;
    qf_net_weight_scales(L, net->tensors[L->t_weight].data, scale, argmax);
    free(argmax);
    return QF_OK;
}

qf_status qf_net_weight_codes(qf_net *net, int layer, float *codes, float *scale)
{
    if (layer < 0 || layer >= net->n_layers || net->layers[layer].t_weight < 0 ||
        net->layers[layer].spec.weight_quant.kind == QF_QUANT_NONE)
        return QF_ERR_ARG;
    qf_layer *L = &net->layers[layer];
    int64_t *argmax = malloc(sizeof(int64_t) * (size_t)L->w_rows);
    if (!argmax)
        return QF_ERR_NOMEM;
    qf_net_packed_sync_data(net, L->t_weight);
    const float *w = net->tensors[L->t_weight].data;
    qf_net_weight_scales(L, w, scale, argmax);
    free(argmax);
    if (L->spec.accumulator_bits > 0) {
        int training = net->training;   /* eval semantics: no initialisation of g */
        net->training = 0;
        qf_net_a2q_quantize(net, L, w, NULL, codes, scale, NULL);
        net->training = training;
        return QF_OK;
    }
    for (int64_t r = 0; r < L->w_rows; r++)
        for (int64_t i = 0; i < L->w_cols; i++)
            codes[r * L->w_cols + i] = qf_quantize_value(w[r * L->w_cols + i], scale[r],
                                                         L->w_qmin, L->w_qmax);
    return QF_OK;
}

int qf_net_a2q_budget(const qf_net *net, int layer, double *budget, int *in_bits, int *in_signed)
{
    if (layer < 0 || layer >= net->n_layers || net->layers[layer].spec.accumulator_bits <= 0)
        return 0;
    const qf_layer *L = &net->layers[layer];
    *budget = L->a2q_budget;
    *in_bits = L->a2q_in_bits;
    *in_signed = L->a2q_in_signed;
    return 1;
}

qf_status qf_net_set_accumulator_bits(qf_net *net, int layer, int bits, double relax)
{
    if (layer < 0 || layer >= net->n_layers || net->layers[layer].t_norm < 0) {
        snprintf(net->err, sizeof net->err,
                 "layer %d was not created with an accumulator_bit_width", layer);
        return QF_ERR_ARG;
    }
    if (bits < QF_A2Q_BITS_MIN || bits > QF_A2Q_BITS_MAX) {
        snprintf(net->err, sizeof net->err, "accumulator_bit_width must be in [%d, %d], got %d",
                 QF_A2Q_BITS_MIN, QF_A2Q_BITS_MAX, bits);
        return QF_ERR_ARG;
    }
    if (!(relax >= 1.0 && relax <= 1e9)) {
        snprintf(net->err, sizeof net->err, "the budget's relaxation factor must be in [1, 1e9], "
                 "got %g", relax);
        return QF_ERR_ARG;
    }
    qf_layer *L = &net->layers[layer];
    L->spec.accumulator_bits = bits;
    L->a2q_budget = qf_a2q_budget(bits, L->a2q_in_bits, L->a2q_in_signed) * relax;
    L->a2q_bound = qf_a2q_bound_of(bits, L->a2q_in_bits, L->a2q_in_signed,
                                   L->spec.accumulator_split, relax);
    L->a2q_bound.round = L->spec.accumulator_round != 0;
    net->have_train_forward = 0;   /* the kept forward used the old budget */
    return QF_OK;
}
