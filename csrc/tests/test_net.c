/* test_net.c: the sequential network (net.h) against references written here.
 *
 *   - a float Linear-ReLU-Linear net: outputs, loss and every parameter
 *     gradient against a double-precision forward and central differences;
 *   - a QuantIdentity + QuantLinear(CONST) + QuantReLU(LEARNED) +
 *     QuantLinear(ABSMAX) net: forward bit for bit against a naive
 *     reimplementation of REFERENCE.md section 2 (integer codes, float32
 *     epilogue), the statistics phase of the learned quantizer, eval mode,
 *     and the straight-through gradients;
 *   - masks, optimizer steps, train_epoch determinism and equivalence with
 *     the documented sequence of calls, and every error path. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "helpers.h"
#include "net.h"
#include "rng.h"

/* ------------------------------------------------------------------ helpers */

static qf_layer_spec linear(int in, int out, int bias, qf_quant_spec wq)
{
    qf_layer_spec s;
    memset(&s, 0, sizeof s);
    s.kind = QF_LAYER_LINEAR;
    s.in_features = in;
    s.out_features = out;
    s.has_bias = bias;
    s.weight_quant = wq;
    return s;
}

static qf_layer_spec relu_layer(void)
{
    qf_layer_spec s;
    memset(&s, 0, sizeof s);
    s.kind = QF_LAYER_RELU;
    return s;
}

static qf_layer_spec act(qf_quant_spec aq, int relu)
{
    qf_layer_spec s;
    memset(&s, 0, sizeof s);
    s.kind = QF_LAYER_ACT_QUANT;
    s.act_quant = aq;
    s.relu = relu;
    return s;
}

static qf_quant_spec no_quant(void) { return quant(QF_QUANT_NONE, 0, 0, 0, 0.0f, 0); }

static qf_tensor *tensor(qf_net *net, const char *name)
{
    int i = qf_net_find_tensor(net, name);
    return i >= 0 ? qf_net_tensor(net, i) : NULL;
}

/* Round half to even, from the definition. */
static double round_half_even(double v)
{
    double f = floor(v), d = v - f;
    if (d > 0.5) return f + 1.0;
    if (d < 0.5) return f;
    return fmod(f, 2.0) == 0.0 ? f : f + 1.0;
}

/* clamp(round_half_even(x / s), qmin, qmax), the division in float32. */
static float quantize(float x, float s, float qmin, float qmax)
{
    float ratio = x / s;
    double r = round_half_even((double)ratio);
    return (float)(r < qmin ? qmin : (r > qmax ? qmax : r));
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* ------------------------------------------------------------------ float net */

enum { FI = 3, FH = 6, FO = 4, FB = 5 };             /* in, hidden, classes, batch */
enum { F_W1 = 0, F_B1 = FH * FI, F_W2 = F_B1 + FH, F_B2 = F_W2 + FO * FH, F_NP = F_B2 + FO };

/* Logits (FB, FO) of Linear-ReLU-Linear in double from parameters theta
 * (w1, b1, w2, b2 concatenated); min |pre-activation| into *kink. */
static void float_net_ref(double *logits, double *kink, const double *theta, const float *x)
{
    *kink = INFINITY;
    for (int s = 0; s < FB; s++) {
        double h[FH];
        for (int j = 0; j < FH; j++) {
            double z = theta[F_B1 + j];
            for (int i = 0; i < FI; i++) z += theta[F_W1 + j * FI + i] * x[s * FI + i];
            if (fabs(z) < *kink) *kink = fabs(z);
            h[j] = z > 0.0 ? z : 0.0;
        }
        for (int o = 0; o < FO; o++) {
            double z = theta[F_B2 + o];
            for (int j = 0; j < FH; j++) z += theta[F_W2 + o * FH + j] * h[j];
            logits[s * FO + o] = z;
        }
    }
}

/* Mean cross-entropy (c NULL) or sum c * logits of the reference net. */
static double float_net_loss(const double *theta, const float *x, const int32_t *y,
                             const double *c)
{
    double logits[FB * FO], kink, total = 0.0;
    float_net_ref(logits, &kink, theta, x);
    for (int s = 0; s < FB; s++) {
        const double *row = logits + s * FO;
        if (c) {
            for (int o = 0; o < FO; o++) total += c[s * FO + o] * row[o];
            continue;
        }
        double m = row[0], sum = 0.0;
        for (int o = 1; o < FO; o++) if (row[o] > m) m = row[o];
        for (int o = 0; o < FO; o++) sum += exp(row[o] - m);
        total += m + log(sum) - row[y[s]];
    }
    return c ? total : total / FB;
}

static const char *float_names[4] = {"0.weight", "0.bias", "2.weight", "2.bias"};
static const int float_offsets[5] = {F_W1, F_B1, F_W2, F_B2, F_NP};

static qf_net *make_float_net(uint64_t seed)
{
    qf_layer_spec specs[3] = {linear(FI, FH, 1, no_quant()), relu_layer(),
                              linear(FH, FO, 1, no_quant())};
    qf_net *net = NULL;
    char err[256];
    qf_status st = qf_net_create(&net, specs, 3, FI, seed, err, sizeof err);
    CHECK(st == QF_OK && net, "float net: status %d (%s)", st, err);
    return net;
}

/* Copy the net's parameters (or their gradients) into theta order. */
static void gather(double *theta, qf_net *net, int grads)
{
    for (int t = 0; t < 4; t++) {
        qf_tensor *T = tensor(net, float_names[t]);
        for (int64_t i = 0; i < T->size; i++)
            theta[float_offsets[t] + i] = grads ? T->grad[i] : T->data[i];
    }
}

static void test_float_net_registry(void)
{
    qf_net *net = make_float_net(3);
    if (!net) return;
    CHECK(qf_net_n_layers(net) == 3 && qf_net_in_size(net) == FI && qf_net_out_size(net) == FO,
          "float net sizes");
    CHECK(qf_net_n_tensors(net) == 4, "float net has %d tensors, expected 4",
          qf_net_n_tensors(net));
    const int64_t shapes[4][2] = {{FH, FI}, {FH, 0}, {FO, FH}, {FO, 0}};
    const double bounds[4] = {1.0 / sqrt(FI), 1.0 / sqrt(FI), 1.0 / sqrt(FH), 1.0 / sqrt(FH)};
    for (int t = 0; t < 4; t++) {
        qf_tensor *T = tensor(net, float_names[t]);
        CHECK(T != NULL, "no tensor %s", float_names[t]);
        if (!T) continue;
        int ndim = shapes[t][1] ? 2 : 1;
        CHECK(T->kind == QF_TENSOR_PARAM && T->ndim == ndim && T->shape[0] == shapes[t][0] &&
              (ndim == 1 || T->shape[1] == shapes[t][1]) && T->grad && T->opt_m && T->opt_v,
              "tensor %s: kind %d ndim %d shape (%lld, %lld)", float_names[t], T->kind, T->ndim,
              (long long)T->shape[0], (long long)T->shape[1]);
        /* PyTorch's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) */
        int in_bounds = 1, grads_zero = 1;
        for (int64_t i = 0; i < T->size; i++) {
            in_bounds &= fabs(T->data[i]) <= bounds[t] + 1e-7;
            grads_zero &= T->grad[i] == 0.0f;
        }
        CHECK(in_bounds, "%s outside U(-1/sqrt(fan_in), 1/sqrt(fan_in))", float_names[t]);
        CHECK(grads_zero, "%s: gradient not zero after create", float_names[t]);
    }
    CHECK(qf_net_find_tensor(net, "1.weight") == -1, "a ReLU has no weight");
    CHECK(qf_net_tensor(net, 4) == NULL && qf_net_tensor(net, -1) == NULL, "tensor bounds");
    qf_net_free(net);
}

static void test_float_net_gradients(void)
{
    float x[FB * FI], out[FB * FO];
    int32_t y[FB];
    double theta[F_NP], grad[F_NP], logits[FB * FO], kink = 0.0, c[FB * FO];
    qf_rng rng;
    qf_rng_seed(&rng, 1001, 0);
    qf_net *net = NULL;
    /* a seed whose pre-activations stay away from the ReLU kink */
    for (uint64_t seed = 1; seed < 50 && kink < 1e-3; seed++) {
        qf_net_free(net);
        net = make_float_net(seed);
        if (!net) return;
        qf_rng_fill_uniform(&rng, x, FB * FI, -2.0f, 2.0f);
        for (int s = 0; s < FB; s++) y[s] = (int32_t)qf_rng_below(&rng, FO);
        gather(theta, net, 0);
        float_net_ref(logits, &kink, theta, x);
    }
    CHECK(kink >= 1e-3, "no input away from the ReLU kink");

    qf_status st = qf_net_forward(net, x, FB, out);
    CHECK(st == QF_OK, "forward status %d", st);
    double worst = 0.0;
    for (int j = 0; j < FB * FO; j++)
        if (fabs(out[j] - logits[j]) > worst) worst = fabs(out[j] - logits[j]);
    CHECK(worst < 1e-5, "float net output differs from double by %g", worst);

    double loss = 0.0;
    int64_t correct = -1;
    st = qf_net_backward_ce(net, y, FB, &loss, &correct);
    CHECK(st == QF_OK, "backward_ce status %d (%s)", st, qf_net_error(net));
    CHECK_CLOSE(loss, float_net_loss(theta, x, y, NULL), 1e-6, 1e-7);
    int64_t want_correct = 0;
    for (int s = 0; s < FB; s++) {
        int best = 0;
        for (int o = 1; o < FO; o++) if (out[s * FO + o] > out[s * FO + best]) best = o;
        want_correct += best == y[s];
    }
    CHECK(correct == want_correct, "n_correct %lld, expected %lld", (long long)correct,
          (long long)want_correct);

    /* every parameter against central differences of the double loss */
    gather(grad, net, 1);
    const double h = 1e-6;
    double worst_rel = 0.0;
    int worst_at = -1;
    for (int p = 0; p < F_NP; p++) {
        double keep = theta[p];
        theta[p] = keep + h; double lp = float_net_loss(theta, x, y, NULL);
        theta[p] = keep - h; double lm = float_net_loss(theta, x, y, NULL);
        theta[p] = keep;
        double fd = (lp - lm) / (2 * h);
        double err = fabs(grad[p] - fd) / (1e-4 + fabs(fd));
        if (err > worst_rel) { worst_rel = err; worst_at = p; }
    }
    CHECK(worst_rel < 1e-3, "float net gradient vs central differences: worst relative error "
          "%g at parameter %d", worst_rel, worst_at);
    printf("float net: gradient vs central differences, worst relative error %.3g\n", worst_rel);

    /* gradients accumulate over a second backward; zero_grad clears them */
    qf_net_forward(net, x, FB, out);
    qf_net_backward_ce(net, y, FB, &loss, &correct);
    double twice[F_NP];
    gather(twice, net, 1);
    int doubled = 1;
    for (int p = 0; p < F_NP; p++) doubled &= fabs(twice[p] - 2.0 * grad[p]) <= 1e-6;
    CHECK(doubled, "a second backward does not add to the gradients");
    qf_net_zero_grad(net);
    gather(twice, net, 1);
    int zero = 1;
    for (int p = 0; p < F_NP; p++) zero &= twice[p] == 0.0;
    CHECK(zero, "zero_grad left nonzero gradients");

    /* a caller-supplied output gradient: L = sum c * logits */
    for (int j = 0; j < FB * FO; j++) c[j] = uniform(&rng, -1.0f, 1.0f);
    float dout[FB * FO];
    for (int j = 0; j < FB * FO; j++) dout[j] = (float)c[j];
    qf_net_forward(net, x, FB, out);
    st = qf_net_backward(net, dout, FB);
    CHECK(st == QF_OK, "backward status %d", st);
    gather(grad, net, 1);
    worst_rel = 0.0;
    for (int p = 0; p < F_NP; p++) {
        double keep = theta[p];
        theta[p] = keep + h; double lp = float_net_loss(theta, x, y, c);
        theta[p] = keep - h; double lm = float_net_loss(theta, x, y, c);
        theta[p] = keep;
        double fd = (lp - lm) / (2 * h), err = fabs(grad[p] - fd) / (1e-4 + fabs(fd));
        if (err > worst_rel) worst_rel = err;
    }
    CHECK(worst_rel < 1e-3, "qf_net_backward vs central differences: worst relative error %g",
          worst_rel);

    /* one AdamW step from these gradients, against the formula at step 1 */
    qf_optimizer opt = {QF_OPT_ADAMW, 0.01f, 0.9f, 0.999f, 1e-8f, 0.01f, 0.0f, 0.0f, 0, 0};
    st = qf_net_set_optimizer(net, &opt);
    CHECK(st == QF_OK, "set_optimizer status %d", st);
    gather(grad, net, 1);   /* set_optimizer keeps gradients */
    st = qf_net_step(net);
    CHECK(st == QF_OK && qf_net_optimizer(net)->step == 1, "step status %d, step %lld", st,
          (long long)qf_net_optimizer(net)->step);
    double after[F_NP];
    gather(after, net, 0);
    double worst_step = 0.0;
    for (int p = 0; p < F_NP; p++) {
        double g = grad[p], m = (1.0 - 0.9f) * g, v = (1.0 - 0.999f) * g * g;
        double want = theta[p] * (1.0 - 0.01f * (double)0.01f);
        want -= (double)0.01f / (1.0 - 0.9f) * m / (sqrt(v) / sqrt(1.0 - 0.999f) + 1e-8f);
        double err = fabs(after[p] - want) / (fabs(want) + 1e-3);
        if (err > worst_step) worst_step = err;
    }
    CHECK(worst_step < 1e-6, "net AdamW step 1 relative error %g", worst_step);
    qf_net_free(net);
}

/* ------------------------------------------------------------------ quantized net */

enum { QI = 2, QH = 5, QK = 3, QB_MAX = 16 };
#define STATS_STEPS 3
#define INITIAL_THRESHOLD 0.75f

/* QuantIdentity(3 bits, [-1, 1]) -> QuantLinear(2, 5, CONST 3 bits) ->
 * QuantReLU(3 bits, learned) -> QuantLinear(5, 3, ABSMAX 4 bits, one scale
 * per tensor or per output channel). */
static qf_net *make_quant_net(uint64_t seed, int per_channel)
{
    qf_layer_spec specs[4] = {
        act(quant(QF_QUANT_CONST, 3, 1, 1, 1.0f, 0), 0),
        linear(QI, QH, 1, quant(QF_QUANT_CONST, 3, 1, 1, 1.0f, 0)),
        act(quant(QF_QUANT_LEARNED, 3, 0, 0, INITIAL_THRESHOLD, STATS_STEPS), 1),
        linear(QH, QK, 1, quant(QF_QUANT_ABSMAX, 4, 1, 1, 1.0f, 0)),
    };
    specs[3].per_channel = per_channel;
    qf_net *net = NULL;
    char err[256];
    qf_status st = qf_net_create(&net, specs, 4, QI, seed, err, sizeof err);
    CHECK(st == QF_OK && net, "quant net: status %d (%s)", st, err);
    if (net) {
        /* the tutorial initialises QuantLinear weights U(-1, 1) */
        st = qf_net_init_uniform(net, qf_net_find_tensor(net, "1.weight"), -1.0f, 1.0f);
        CHECK(st == QF_OK, "init_uniform status %d", st);
    }
    return net;
}

/* Everything the naive quantized forward computes, kept for the backward. */
typedef struct {
    int n, per_channel;
    float s0, s1, s2, s3[QK];       /* s3: per output row (all equal per tensor) */
    float y0[QB_MAX * QI];          /* fake-quant input                        */
    float q0[QB_MAX * QI];
    float qw1[QH * QI];
    float y1[QB_MAX * QH];          /* first QuantLinear                       */
    float stat;                     /* batch statistic of max(y1, 0)           */
    int stat_index;                 /* first element equal to it               */
    float q2[QB_MAX * QH], y2[QB_MAX * QH];
    float qw3[QK * QH], wfq3[QK * QH];
    int w3_argmax[QK];              /* element that set each scale (per tensor: row 0) */
    float out[QB_MAX * QK];
} quant_ref;

/* Forward of REFERENCE.md section 2 written out.  threshold2 < 0 means the
 * statistics phase (T = the batch statistic), else T = threshold2. */
static void quant_ref_forward(quant_ref *r, const float *x, int n, qf_net *net, float threshold2)
{
    r->per_channel = qf_net_layer_spec(net, 3)->per_channel;
    const float *w1 = tensor(net, "1.weight")->data, *b1 = tensor(net, "1.bias")->data;
    const float *w3 = tensor(net, "3.weight")->data, *b3 = tensor(net, "3.bias")->data;
    r->n = n;
    /* QuantIdentity: signed narrow 3 bits, T = 1: codes [-3, 3], s = 1/3 */
    r->s0 = 1.0f / 3.0f;
    for (int j = 0; j < n * QI; j++) {
        r->q0[j] = quantize(x[j], r->s0, -3.0f, 3.0f);
        r->y0[j] = r->s0 * r->q0[j];
    }
    /* QuantLinear, constant weight scale 1/3, integer codes fed by a quantizer */
    r->s1 = 1.0f / 3.0f;
    for (int j = 0; j < QH * QI; j++) r->qw1[j] = quantize(w1[j], r->s1, -3.0f, 3.0f);
    float scale1 = r->s0 * r->s1;
    for (int s = 0; s < n; s++)
        for (int o = 0; o < QH; o++) {
            int64_t acc = 0;
            for (int i = 0; i < QI; i++)
                acc += (int64_t)r->q0[s * QI + i] * (int64_t)r->qw1[o * QI + i];
            float a = (float)acc;
            float y = a * scale1;
            r->y1[s * QH + o] = y + b1[o];
        }
    /* QuantReLU: unsigned 3 bits [0, 7]; statistic = k-th smallest of max(y1, 0) */
    int count = n * QH;
    double sorted[QB_MAX * QH];
    for (int j = 0; j < count; j++) sorted[j] = r->y1[j] > 0.0f ? r->y1[j] : 0.0;
    qsort(sorted, (size_t)count, sizeof(double), cmp_double);
    int64_t k = (int64_t)floor((double)99.999f / 100.0 * count + 0.5);
    if (k < 1) k = 1;
    if (k > count) k = count;
    r->stat = (float)sorted[k - 1];
    r->stat_index = -1;
    for (int j = 0; j < count && r->stat_index < 0; j++)
        if ((r->y1[j] > 0.0f ? r->y1[j] : 0.0f) == r->stat) r->stat_index = j;
    float T = threshold2 < 0.0f ? r->stat : threshold2;
    r->s2 = T / 7.0f;
    for (int j = 0; j < count; j++) {
        r->q2[j] = quantize(r->y1[j] > 0.0f ? r->y1[j] : 0.0f, r->s2, 0.0f, 7.0f);
        r->y2[j] = r->s2 * r->q2[j];
    }
    /* QuantLinear, weight scale max|w| / 7 (signed narrow 4 bits) over the
     * tensor or over each output row */
    int groups = r->per_channel ? QK : 1, len = r->per_channel ? QH : QK * QH;
    for (int gi = 0; gi < groups; gi++) {
        float wmax = -1.0f;
        for (int j = gi * len; j < (gi + 1) * len; j++)
            if (fabsf(w3[j]) > wmax) { wmax = fabsf(w3[j]); r->w3_argmax[gi] = j; }
        for (int o = gi; o < (r->per_channel ? gi + 1 : QK); o++) r->s3[o] = wmax / 7.0f;
    }
    for (int j = 0; j < QK * QH; j++) {
        r->qw3[j] = quantize(w3[j], r->s3[j / QH], -7.0f, 7.0f);
        r->wfq3[j] = r->s3[j / QH] * r->qw3[j];
    }
    for (int s = 0; s < n; s++)
        for (int o = 0; o < QK; o++) {
            float scale3 = r->s2 * r->s3[o];
            int64_t acc = 0;
            for (int i = 0; i < QH; i++)
                acc += (int64_t)r->q2[s * QH + i] * (int64_t)r->qw3[o * QH + i];
            float a = (float)acc;
            float y = a * scale3;
            r->out[s * QK + o] = y + b3[o];
        }
}

typedef struct {
    double w1[QH * QI], b1[QH], w3[QK * QH], b3[QK], threshold;
} quant_grads;

/* Straight-through backward of REFERENCE.md section 2 for dout (n, QK).
 * stats_phase: the statistic's gradient goes to the element it came from;
 * otherwise to the threshold parameter (sign of its value: T = |value|). */
static void quant_ref_backward(quant_grads *g, const quant_ref *r, qf_net *net,
                               const float *dout, int stats_phase, float threshold_value)
{
    const float *w3 = tensor(net, "3.weight")->data;
    int n = r->n;
    memset(g, 0, sizeof *g);
    /* second QuantLinear: w.r.t. the fake-quant weights and input */
    double dwfq3[QK * QH] = {0}, dy2[QB_MAX * QH] = {0};
    for (int s = 0; s < n; s++)
        for (int o = 0; o < QK; o++) {
            double d = dout[s * QK + o];
            g->b3[o] += d;
            for (int i = 0; i < QH; i++) {
                dwfq3[o * QH + i] += d * r->y2[s * QH + i];
                dy2[s * QH + i] += d * r->wfq3[o * QH + i];
            }
        }
    /* weights: d round = identity, no clamp mask; the scale max|w| / 7 sends
     * sum dWfq * (round(w/s) - w/s) / 7 to the max-|w| element */
    double dscale3[QK] = {0};
    for (int j = 0; j < QK * QH; j++) {
        float ratio = w3[j] / r->s3[j / QH];
        dscale3[r->per_channel ? j / QH : 0] += dwfq3[j] * (round_half_even(ratio) - (double)ratio);
        g->w3[j] = dwfq3[j];
    }
    for (int gi = 0; gi < (r->per_channel ? QK : 1); gi++) {
        int k = r->w3_argmax[gi];
        g->w3[k] += dscale3[gi] / 7.0 * (w3[k] >= 0.0f ? 1.0 : -1.0);
    }
    /* QuantReLU: mask 1[y1 > 0] 1[0 <= round <= 7]; dy/ds = round - x/s or the clamped code */
    double dy1[QB_MAX * QH], dscale2 = 0.0;
    for (int j = 0; j < n * QH; j++) {
        int active = r->y1[j] > 0.0f;
        float ratio = (active ? r->y1[j] : 0.0f) / r->s2;
        double q = round_half_even(ratio);
        int in_range = q >= 0.0 && q <= 7.0;
        dscale2 += dy2[j] * (in_range ? q - (double)ratio : (q < 0.0 ? 0.0 : 7.0));
        dy1[j] = active && in_range ? dy2[j] : 0.0;
    }
    double dT = dscale2 / 7.0;
    if (stats_phase)
        dy1[r->stat_index] += r->y1[r->stat_index] >= 0.0f ? dT : -dT;
    else
        g->threshold = threshold_value >= 0.0f ? dT : -dT;
    /* first QuantLinear, constant scale: dW = dWfq */
    for (int s = 0; s < n; s++)
        for (int o = 0; o < QH; o++) {
            g->b1[o] += dy1[s * QH + o];
            for (int i = 0; i < QI; i++)
                g->w1[o * QI + i] += dy1[s * QH + o] * r->y0[s * QI + i];
        }
}

static int same_floats(const float *a, const float *b, int n)
{
    for (int i = 0; i < n; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

static void check_quant_grads(qf_net *net, const quant_grads *g, const char *phase)
{
    const char *names[5] = {"1.weight", "1.bias", "3.weight", "3.bias", "2.act_quant.threshold"};
    const double *want[5] = {g->w1, g->b1, g->w3, g->b3, &g->threshold};
    for (int t = 0; t < 5; t++) {
        qf_tensor *T = tensor(net, names[t]);
        double worst = 0.0;
        for (int64_t i = 0; i < T->size; i++) {
            double err = fabs(T->grad[i] - want[t][i]) / (1e-3 + fabs(want[t][i]));
            if (err > worst) worst = err;
        }
        CHECK(worst < 1e-4, "%s: gradient of %s differs from the straight-through reference "
              "(worst relative error %g)", phase, names[t], worst);
    }
}

static void random_batch(float *x, int n, qf_rng *rng)
{
    for (int j = 0; j < n * QI; j++) x[j] = uniform(rng, -0.2f, 1.2f);
}

static void test_quant_net(int per_channel)
{
    qf_net *net = make_quant_net(17, per_channel);
    if (!net) return;
    qf_tensor *threshold = tensor(net, "2.act_quant.threshold");
    qf_tensor *buffer = tensor(net, "2.act_quant.stats_buffer");
    qf_tensor *count = tensor(net, "2.act_quant.stats_count");
    CHECK(threshold && buffer && count, "learned quantizer tensors missing");
    if (!threshold || !buffer || !count) { qf_net_free(net); return; }
    CHECK(threshold->kind == QF_TENSOR_PARAM && buffer->kind == QF_TENSOR_BUFFER &&
          count->kind == QF_TENSOR_BUFFER, "learned quantizer tensor kinds");
    CHECK(qf_net_n_tensors(net) == 7, "quant net has %d tensors, expected 7",
          qf_net_n_tensors(net));
    CHECK(threshold->data[0] == INITIAL_THRESHOLD && buffer->data[0] == 1.0f &&
          count->data[0] == 0.0f, "learned quantizer initial state (%g, %g, %g)",
          (double)threshold->data[0], (double)buffer->data[0], (double)count->data[0]);

    qf_rng rng;
    qf_rng_seed(&rng, 2002, 0);
    float x[QB_MAX * QI], out[QB_MAX * QK], dout[QB_MAX * QK];
    quant_ref r;
    quant_grads g;
    float scale, scales[QK];

    /* eval before any training forward: the buffer's initial 1.0 */
    qf_net_set_training(net, 0);
    random_batch(x, 6, &rng);
    CHECK(qf_net_forward(net, x, 6, out) == QF_OK, "eval forward");
    quant_ref_forward(&r, x, 6, net, 1.0f);
    CHECK(same_floats(out, r.out, 6 * QK), "eval forward before statistics differs from the "
          "reference with T = 1");
    CHECK(count->data[0] == 0.0f && buffer->data[0] == 1.0f, "eval forward changed statistics");
    qf_net_set_training(net, 1);

    /* statistics phase: T = the batch statistic, B = stat, then 0.9 B + 0.1 stat */
    float want_buffer = 0.0f;
    const int sizes[STATS_STEPS] = {8, 5, 16};
    for (int step = 0; step < STATS_STEPS; step++) {
        int n = sizes[step];
        random_batch(x, n, &rng);
        qf_status st = qf_net_forward(net, x, n, out);
        CHECK(st == QF_OK, "training forward %d status %d", step, st);
        quant_ref_forward(&r, x, n, net, -1.0f);
        CHECK(same_floats(out, r.out, n * QK), "statistics step %d: output differs from the "
              "reference using the batch statistic", step);
        want_buffer = step == 0 ? r.stat : 0.9f * want_buffer + 0.1f * r.stat;
        CHECK_CLOSE(buffer->data[0], want_buffer, 1e-6, 0.0);
        CHECK(count->data[0] == (float)(step + 1), "stats_count %g after %d steps",
              (double)count->data[0], step + 1);
        CHECK(threshold->data[0] == INITIAL_THRESHOLD, "threshold parameter changed during the "
              "statistics phase");
        if (step == 0) {
            /* the statistic's gradient reaches the element it came from */
            for (int j = 0; j < n * QK; j++) dout[j] = uniform(&rng, -1.0f, 1.0f);
            qf_net_zero_grad(net);
            st = qf_net_backward(net, dout, n);
            CHECK(st == QF_OK, "backward status %d", st);
            quant_ref_backward(&g, &r, net, dout, 1, threshold->data[0]);
            check_quant_grads(net, &g, "statistics phase");
            CHECK(threshold->grad[0] == 0.0f, "threshold parameter got a gradient during the "
                  "statistics phase");
        }
        /* eval in between uses the buffer and changes nothing */
        qf_net_set_training(net, 0);
        float before_count = count->data[0], before_buffer = buffer->data[0];
        random_batch(x, 4, &rng);
        qf_net_forward(net, x, 4, out);
        quant_ref_forward(&r, x, 4, net, buffer->data[0]);
        CHECK(same_floats(out, r.out, 4 * QK), "eval during statistics step %d does not use the "
              "buffer", step);
        CHECK(count->data[0] == before_count && buffer->data[0] == before_buffer,
              "eval forward changed the statistics");
        CHECK(qf_net_act_scale(net, 2, &scale) == QF_OK && scale == buffer->data[0] / 7.0f,
              "act_scale %g during statistics, expected buffer / 7 = %g", (double)scale,
              (double)(buffer->data[0] / 7.0f));
        qf_net_set_training(net, 1);
    }

    /* the next training forward sets the parameter to the buffer and uses it */
    float final_buffer = buffer->data[0];
    random_batch(x, 7, &rng);
    CHECK(qf_net_forward(net, x, 7, out) == QF_OK, "forward after statistics");
    CHECK(threshold->data[0] == final_buffer, "threshold parameter %g, expected the buffer %g",
          (double)threshold->data[0], (double)final_buffer);
    CHECK(count->data[0] == (float)(STATS_STEPS + 1), "stats_count %g after the switch",
          (double)count->data[0]);
    quant_ref_forward(&r, x, 7, net, final_buffer);
    CHECK(same_floats(out, r.out, 7 * QK), "first learned-phase forward does not use T = buffer");

    /* learned phase: the threshold parameter gets the scale gradient */
    threshold->data[0] = 0.6f * final_buffer;
    random_batch(x, 9, &rng);
    qf_net_forward(net, x, 9, out);
    quant_ref_forward(&r, x, 9, net, 0.6f * final_buffer);
    CHECK(same_floats(out, r.out, 9 * QK), "learned-phase forward does not use T = parameter");
    for (int j = 0; j < 9 * QK; j++) dout[j] = uniform(&rng, -1.0f, 1.0f);
    qf_net_zero_grad(net);
    CHECK(qf_net_backward(net, dout, 9) == QF_OK, "learned-phase backward");
    quant_ref_backward(&g, &r, net, dout, 0, threshold->data[0]);
    check_quant_grads(net, &g, "learned phase");
    CHECK(g.threshold != 0.0, "the reference threshold gradient is zero: the test is too weak");

    /* a negative parameter acts through |value| with the sign on its gradient */
    threshold->data[0] = -0.5f;
    qf_net_forward(net, x, 9, out);
    quant_ref_forward(&r, x, 9, net, 0.5f);
    CHECK(same_floats(out, r.out, 9 * QK), "negative threshold parameter: T must be |value|");
    qf_net_zero_grad(net);
    qf_net_backward(net, dout, 9);
    quant_ref_backward(&g, &r, net, dout, 0, -0.5f);
    check_quant_grads(net, &g, "negative threshold");

    /* eval after the switch uses |parameter|; the statistics stay frozen */
    qf_net_set_training(net, 0);
    qf_net_forward(net, x, 9, out);
    CHECK(same_floats(out, r.out, 9 * QK), "eval after the switch does not use |parameter|");
    CHECK(qf_net_act_scale(net, 2, &scale) == QF_OK && scale == 0.5f / 7.0f,
          "act_scale %g, expected 0.5 / 7", (double)scale);
    CHECK(qf_net_act_scale(net, 0, &scale) == QF_OK && scale == 1.0f / 3.0f,
          "constant act_scale %g, expected 1/3", (double)scale);
    /* net.h: one value per output channel, all equal for a per-tensor quantizer, and
     * nothing past out_channels (5 here) */
    float one_scale[8];
    for (int j = 0; j < 8; j++) one_scale[j] = -99.0f;
    CHECK(qf_net_weight_scale(net, 1, one_scale) == QF_OK && one_scale[0] == 1.0f / 3.0f,
          "constant weight scale %g, expected 1/3", (double)one_scale[0]);
    int equal = 1, untouched = 1;
    for (int j = 1; j < 5; j++) equal &= one_scale[j] == one_scale[0];
    for (int j = 5; j < 8; j++) untouched &= one_scale[j] == -99.0f;
    CHECK(equal, "per-tensor weight scales differ across channels (scale[1] = %g)",
          (double)one_scale[1]);
    CHECK(untouched, "qf_net_weight_scale wrote past out_channels (scale[5] = %g)",
          (double)one_scale[5]);
    CHECK(qf_net_weight_scale(net, 3, scales) == QF_OK && scales[0] == r.s3[0] &&
          (!per_channel || (scales[1] == r.s3[1] && scales[2] == r.s3[2])),
          "absmax weight scale %g, expected max|w| / 7 = %g", (double)scales[0], (double)r.s3[0]);
    if (per_channel)
        CHECK(r.s3[0] != r.s3[1] || r.s3[1] != r.s3[2], "per-channel scales all equal: the "
              "test does not tell per-channel from per-tensor");
    CHECK(qf_net_act_scale(net, 1, &scale) == QF_ERR_ARG &&
          qf_net_weight_scale(net, 0, &scale) == QF_ERR_ARG &&
          qf_net_weight_scale(net, 9, &scale) == QF_ERR_ARG, "scale of the wrong layer kind");
    qf_net_free(net);
}

/* A QuantLinear fed by raw input uses the fake-quantized weights in float. */
static void test_quant_linear_float_input(void)
{
    qf_layer_spec specs[1] = {linear(4, 3, 1, quant(QF_QUANT_ABSMAX, 5, 1, 1, 1.0f, 0))};
    qf_net *net = NULL;
    char err[256];
    CHECK(qf_net_create(&net, specs, 1, 4, 5, err, sizeof err) == QF_OK, "create: %s", err);
    if (!net) return;
    float x[6 * 4], out[6 * 3];
    qf_rng rng;
    qf_rng_seed(&rng, 3003, 0);
    qf_rng_fill_uniform(&rng, x, 24, -3.0f, 3.0f);
    CHECK(qf_net_forward(net, x, 6, out) == QF_OK, "forward");
    const float *w = tensor(net, "0.weight")->data, *b = tensor(net, "0.bias")->data;
    float wmax = 0.0f;
    for (int j = 0; j < 12; j++) if (fabsf(w[j]) > wmax) wmax = fabsf(w[j]);
    float s = wmax / 15.0f;
    double worst = 0.0;
    for (int n = 0; n < 6; n++)
        for (int o = 0; o < 3; o++) {
            double acc = b[o];
            for (int i = 0; i < 4; i++)
                acc += (double)x[n * 4 + i] * (double)(s * quantize(w[o * 4 + i], s, -15, 15));
            if (fabs(out[n * 3 + o] - acc) > worst) worst = fabs(out[n * 3 + o] - acc);
        }
    CHECK(worst < 1e-5, "QuantLinear on float input differs from x @ fake_quant(W)^T + b by %g",
          worst);
    qf_net_free(net);
}

/* ------------------------------------------------------------------ masks */

static void test_masks(void)
{
    enum { N = 40 };
    qf_net *nets[2] = {make_float_net(9), make_quant_net(9, 0)};
    const char *weight_names[2] = {"0.weight", "3.weight"};
    const int in_sizes[2] = {FI, QI}, classes[2] = {FO, QK};
    qf_rng rng;
    qf_rng_seed(&rng, 4004, 0);
    for (int k = 0; k < 2; k++) {
        qf_net *net = nets[k];
        if (!net) continue;
        int index = qf_net_find_tensor(net, weight_names[k]);
        qf_tensor *w = qf_net_tensor(net, index);
        uint8_t mask[64];
        float before[64];
        /* prune every third entry and, for the ABSMAX layer, the max-|w| entry */
        int64_t argmax = 0;
        for (int64_t i = 0; i < w->size; i++)
            if (fabsf(w->data[i]) > fabsf(w->data[argmax])) argmax = i;
        for (int64_t i = 0; i < w->size; i++) mask[i] = i % 3 != 0 && i != argmax;
        memcpy(before, w->data, sizeof(float) * (size_t)w->size);
        for (int64_t i = 0; i < w->size; i++) {
            w->grad[i] = 1.0f;
            w->opt_m[i] = 2.0f;
            w->opt_v[i] = 3.0f;
        }
        CHECK(qf_net_set_mask(net, index, mask) == QF_OK, "set_mask status");
        int zeroed = 1, kept = 1;
        for (int64_t i = 0; i < w->size; i++) {
            if (!mask[i])
                zeroed &= w->data[i] == 0.0f && w->grad[i] == 0.0f && w->opt_m[i] == 0.0f &&
                          w->opt_v[i] == 0.0f;
            else
                kept &= w->data[i] == before[i] && w->grad[i] == 1.0f;
        }
        CHECK(zeroed, "%s: set_mask did not zero data, grad and optimizer state", weight_names[k]);
        CHECK(kept, "%s: set_mask changed kept entries", weight_names[k]);
        CHECK(w->mask != NULL, "%s: mask not installed", weight_names[k]);
        qf_net_zero_grad(net);

        float x[N * 3];
        int32_t y[N];
        for (int j = 0; j < N * in_sizes[k]; j++) x[j] = uniform(&rng, -0.2f, 1.2f);
        for (int s = 0; s < N; s++) y[s] = (int32_t)qf_rng_below(&rng, (uint64_t)classes[k]);
        /* a backward leaves masked gradients at 0 */
        float out[N * 4];
        qf_net_forward(net, x, N, out);
        double loss;
        int64_t correct;
        qf_net_backward_ce(net, y, N, &loss, &correct);
        int grad_zero = 1;
        for (int64_t i = 0; i < w->size; i++)
            if (!mask[i]) grad_zero &= w->grad[i] == 0.0f;
        CHECK(grad_zero, "%s: backward wrote gradients into masked entries", weight_names[k]);
        qf_net_zero_grad(net);
        /* training with weight decay and momentum keeps them exactly 0 */
        qf_optimizer opts[2] = {
            {QF_OPT_ADAMW, 0.05f, 0.9f, 0.999f, 1e-8f, 0.1f, 0.0f, 0.0f, 0, 0},
            {QF_OPT_SGD, 0.05f, 0.0f, 0.0f, 0.0f, 0.1f, 0.9f, 0.0f, 1, 0},
        };
        for (int o = 0; o < 2; o++) {
            memcpy(before, w->data, sizeof(float) * (size_t)w->size);
            CHECK(qf_net_set_optimizer(net, &opts[o]) == QF_OK, "set_optimizer %d: %s", o,
                  qf_net_error(net));
            for (int epoch = 0; epoch < 2; epoch++) {
                qf_status st = qf_net_train_epoch(net, x, y, N, 4, &rng, &loss, &correct);
                CHECK(st == QF_OK, "train_epoch status %d (%s)", st, qf_net_error(net));
            }
            int still_zero = 1, moved = 0;
            for (int64_t i = 0; i < w->size; i++) {
                if (!mask[i]) still_zero &= w->data[i] == 0.0f && w->opt_m[i] == 0.0f &&
                                            w->opt_v[i] == 0.0f;
                else moved += w->data[i] != before[i];
            }
            CHECK(still_zero, "%s (optimizer %d): masked entries moved during training",
                  weight_names[k], o);
            CHECK(moved > 0, "%s (optimizer %d): training did not move the kept entries",
                  weight_names[k], o);
        }
        /* AdamW with eps = 0 (accepted by set_optimizer): masked entries still stay 0 */
        qf_optimizer eps0 = {QF_OPT_ADAMW, 0.01f, 0.9f, 0.999f, 0.0f, 0.01f, 0.0f, 0.0f, 0, 0};
        if (qf_net_set_optimizer(net, &eps0) == QF_OK) {
            qf_net_train_epoch(net, x, y, N, 4, &rng, &loss, &correct);
            int zero_eps0 = 1;
            for (int64_t i = 0; i < w->size; i++)
                if (!mask[i]) zero_eps0 &= w->data[i] == 0.0f;
            CHECK(zero_eps0, "%s: AdamW with eps 0 turned masked entries into %g (0/0 in the "
                  "update of an all-zero entry)", weight_names[k], (double)w->data[!mask[0] ? 0 : 3]);
            qf_net_set_optimizer(net, &opts[0]);
        }
        /* dropping the mask lets the entries train again */
        CHECK(qf_net_set_mask(net, index, NULL) == QF_OK && w->mask == NULL, "drop mask");
        qf_net_train_epoch(net, x, y, N, 4, &rng, &loss, &correct);
        int revived = 0;
        for (int64_t i = 0; i < w->size; i++) revived += !mask[i] && w->data[i] != 0.0f;
        CHECK(revived > 0, "%s: entries stayed 0 after the mask was dropped", weight_names[k]);
        /* masks only on parameters */
        if (k == 1) {
            int b = qf_net_find_tensor(net, "2.act_quant.stats_buffer");
            CHECK(qf_net_set_mask(net, b, mask) == QF_ERR_ARG, "mask on a buffer must fail");
        }
        CHECK(qf_net_set_mask(net, 99, mask) == QF_ERR_ARG, "mask on a missing tensor");
        qf_net_free(net);
    }
}

/* ------------------------------------------------------------------ training */

/* All tensors of two nets bit-identical? */
static int same_state(qf_net *a, qf_net *b)
{
    if (qf_net_n_tensors(a) != qf_net_n_tensors(b)) return 0;
    for (int t = 0; t < qf_net_n_tensors(a); t++) {
        qf_tensor *ta = qf_net_tensor(a, t), *tb = qf_net_tensor(b, t);
        if (ta->size != tb->size ||
            memcmp(ta->data, tb->data, sizeof(float) * (size_t)ta->size) != 0)
            return 0;
    }
    return 1;
}

enum { TN = 43, TBATCH = 4 };

static void training_data(float *x, int32_t *y)
{
    qf_rng rng;
    qf_rng_seed(&rng, 5005, 0);
    for (int s = 0; s < TN; s++) {
        x[2 * s] = qf_rng_uniform01(&rng);
        x[2 * s + 1] = qf_rng_uniform01(&rng);
        y[s] = (x[2 * s] > 0.5f) ^ (x[2 * s + 1] > 0.5f);
    }
}

static qf_net *make_trainable(uint64_t seed)
{
    qf_layer_spec specs[6] = {
        act(quant(QF_QUANT_CONST, 3, 1, 1, 1.0f, 0), 0),
        linear(2, 8, 1, quant(QF_QUANT_CONST, 3, 1, 1, 1.0f, 0)),
        act(quant(QF_QUANT_LEARNED, 3, 0, 0, 1.0f, 5), 1),
        linear(8, 8, 1, quant(QF_QUANT_ABSMAX, 3, 1, 1, 1.0f, 0)),
        act(quant(QF_QUANT_LEARNED, 3, 0, 0, 1.0f, 5), 1),
        linear(8, 2, 1, quant(QF_QUANT_ABSMAX, 3, 1, 1, 1.0f, 0)),
    };
    qf_net *net = NULL;
    char err[256];
    CHECK(qf_net_create(&net, specs, 6, 2, seed, err, sizeof err) == QF_OK, "create: %s", err);
    if (!net) return NULL;
    qf_optimizer opt = {QF_OPT_ADAMW, 0.01f, 0.9f, 0.999f, 1e-8f, 0.01f, 0.0f, 0.0f, 0, 0};
    CHECK(qf_net_set_optimizer(net, &opt) == QF_OK, "set_optimizer: %s", qf_net_error(net));
    return net;
}

static void test_train_epoch(void)
{
    float x[TN * 2];
    int32_t y[TN];
    training_data(x, y);
    qf_net *a = make_trainable(77), *b = make_trainable(77), *c = make_trainable(77);
    qf_net *d = make_trainable(78), *e = make_trainable(77);
    if (!a || !b || !c || !d || !e) goto done;
    CHECK(same_state(a, b) && same_state(a, e), "same seed gave different initial states");
    CHECK(!same_state(a, d), "different seeds gave the same initial state");
    qf_rng ra, rb, rc, rd;
    qf_rng_seed(&ra, 1, 0);
    qf_rng_seed(&rb, 1, 0);
    qf_rng_seed(&rc, 2, 0);
    qf_rng_seed(&rd, 1, 0);
    double la = 0, lb = 0, lc = 0, ld = 0;
    int64_t ca = 0, cb = 0, cc = 0, cd = 0;
    for (int epoch = 0; epoch < 3; epoch++) {
        CHECK(qf_net_train_epoch(a, x, y, TN, TBATCH, &ra, &la, &ca) == QF_OK, "train a: %s",
              qf_net_error(a));
        CHECK(qf_net_train_epoch(b, x, y, TN, TBATCH, &rb, &lb, &cb) == QF_OK, "train b");
        CHECK(qf_net_train_epoch(c, x, y, TN, TBATCH, &rc, &lc, &cc) == QF_OK, "train c");
        CHECK(qf_net_train_epoch(d, x, y, TN, TBATCH, &rd, &ld, &cd) == QF_OK, "train d");
        CHECK(la == lb && ca == cb, "epoch %d: same seeds, losses %.17g vs %.17g", epoch, la, lb);
    }
    CHECK(same_state(a, b), "same seeds gave different weights after training");
    CHECK(!same_state(a, c), "different shuffle seeds gave identical weights");
    CHECK(!same_state(a, d), "different init seeds gave identical weights");
    CHECK(la > 0.0 && la < 10.0 * TN && ca >= 0 && ca <= TN, "loss sum %g, correct %lld", la,
          (long long)ca);
    CHECK(qf_net_optimizer(a)->step == 3 * ((TN + TBATCH - 1) / TBATCH),
          "optimizer steps %lld, expected %d", (long long)qf_net_optimizer(a)->step,
          3 * ((TN + TBATCH - 1) / TBATCH));
    CHECK(tensor(a, "2.act_quant.stats_count")->data[0] == 6.0f,
          "statistics count %g after 33 steps with stats_steps 5",
          (double)tensor(a, "2.act_quant.stats_count")->data[0]);

    /* one epoch of e by hand: the documented sequence of public calls */
    qf_rng re;
    qf_rng_seed(&re, 1, 0);
    for (int epoch = 0; epoch < 3; epoch++) {
        int64_t perm[TN];
        qf_rng_permutation(&re, perm, TN);
        double loss_sum = 0.0;
        int64_t correct_sum = 0;
        qf_net_set_training(e, 1);
        for (int start = 0; start < TN; start += TBATCH) {
            int m = TN - start < TBATCH ? TN - start : TBATCH;
            float bx[TBATCH * 2], out[TBATCH * 2];
            int32_t by[TBATCH];
            for (int s = 0; s < m; s++) {
                bx[2 * s] = x[2 * perm[start + s]];
                bx[2 * s + 1] = x[2 * perm[start + s] + 1];
                by[s] = y[perm[start + s]];
            }
            qf_net_zero_grad(e);
            qf_net_forward(e, bx, m, out);
            double loss;
            int64_t correct;
            qf_net_backward_ce(e, by, m, &loss, &correct);
            qf_net_step(e);
            loss_sum += loss * m;
            correct_sum += correct;
        }
        qf_net_zero_grad(e);
        if (epoch == 2)
            CHECK(loss_sum == la && correct_sum == ca, "train_epoch loss %.17g / %lld, by hand "
                  "%.17g / %lld", la, (long long)ca, loss_sum, (long long)correct_sum);
    }
    CHECK(same_state(a, e), "train_epoch differs from shuffle + forward + backward_ce + step");
    /* the epoch leaves gradients zeroed */
    int zero = 1;
    for (int t = 0; t < qf_net_n_tensors(a); t++) {
        qf_tensor *T = qf_net_tensor(a, t);
        if (T->grad)
            for (int64_t i = 0; i < T->size; i++) zero &= T->grad[i] == 0.0f;
    }
    CHECK(zero, "gradients not zero after train_epoch");
done:
    qf_net_free(a);
    qf_net_free(b);
    qf_net_free(c);
    qf_net_free(d);
    qf_net_free(e);
}

/* ------------------------------------------------------------------ errors */

static void expect_create_error(const qf_layer_spec *specs, int n_layers, int64_t in_size,
                                qf_status want, const char *needle, const char *what)
{
    qf_net *net = (qf_net *)&net;   /* must be reset to NULL */
    char err[256] = "";
    qf_status st = qf_net_create(&net, specs, n_layers, in_size, 1, err, sizeof err);
    CHECK(st == want, "%s: status %d, expected %d (%s)", what, st, want, err);
    CHECK(net == NULL, "%s: *out not NULL on failure", what);
    CHECK(err[0] != 0 && (!needle || strstr(err, needle)), "%s: message '%s' should mention '%s'",
          what, err, needle ? needle : "");
    if (st == QF_OK) qf_net_free(net);
}

static void test_errors(void)
{
    qf_net_free(NULL);
    CHECK(1, "qf_net_free(NULL)");

    qf_layer_spec s[3];
    s[0] = linear(2, 4, 1, quant(QF_QUANT_CONST, 1, 1, 1, 1.0f, 0));
    s[1] = relu_layer();
    s[2] = linear(4, 2, 1, no_quant());
    expect_create_error(s, 3, 2, QF_ERR_ARG, "bit_width", "weight bits 1");
    s[0].weight_quant.bits = 17;
    expect_create_error(s, 3, 2, QF_ERR_ARG, "bit_width", "weight bits 17");
    s[0] = linear(2, 4, 1, no_quant());
    s[1] = act(quant(QF_QUANT_LEARNED, 17, 0, 0, 1.0f, 10), 1);
    expect_create_error(s, 3, 2, QF_ERR_ARG, "layer 1", "activation bits 17");
    s[1] = act(quant(QF_QUANT_LEARNED, 1, 0, 0, 1.0f, 10), 1);
    expect_create_error(s, 3, 2, QF_ERR_ARG, "bit_width", "activation bits 1");
    s[1] = act(quant(QF_QUANT_ABSMAX, 8, 0, 0, 1.0f, 10), 1);
    expect_create_error(s, 3, 2, QF_ERR_ARG, "layer 1", "absmax activation quantizer");
    s[1] = act(no_quant(), 1);
    expect_create_error(s, 3, 2, QF_ERR_ARG, "layer 1", "activation quantizer of kind NONE");
    s[1] = act(quant(QF_QUANT_LEARNED, 8, 0, 0, 1.0f, 0), 1);
    expect_create_error(s, 3, 2, QF_ERR_ARG, "collect_stats_steps", "stats_steps 0");
    s[1] = relu_layer();
    s[2] = linear(5, 2, 1, no_quant());
    expect_create_error(s, 3, 2, QF_ERR_SHAPE, "layer 2", "in_features mismatch");
    s[2] = linear(4, 2, 1, no_quant());
    expect_create_error(s, 3, 3, QF_ERR_SHAPE, "layer 0", "input size mismatch");
    s[2] = linear(4, 2, 1, quant(QF_QUANT_LEARNED, 8, 1, 1, 1.0f, 10));
    expect_create_error(s, 3, 2, QF_ERR_ARG, "layer 2", "learned weight quantizer");
    s[2] = linear(4, 0, 1, no_quant());
    expect_create_error(s, 3, 2, QF_ERR_ARG, "layer 2", "out_features 0");
    s[2] = linear(4, 2, 1, no_quant());
    s[2].kind = 42;
    expect_create_error(s, 3, 2, QF_ERR_ARG, "layer 2", "unknown layer kind");
    s[2] = linear(4, 2, 1, no_quant());
    expect_create_error(s, 0, 2, QF_ERR_ARG, NULL, "no layers");
    expect_create_error(s, 3, 0, QF_ERR_ARG, NULL, "no input features");
    /* err may be NULL */
    qf_net *none = NULL;
    CHECK(qf_net_create(&none, s, 0, 2, 1, NULL, 0) == QF_ERR_ARG && none == NULL,
          "create failure without an err buffer");

    qf_net *net = make_float_net(1);
    if (!net) return;
    float x[FB * FI], out[FB * FO];
    int32_t y[FB] = {0, 1, 2, 3, 0};
    double loss;
    int64_t correct;
    for (int j = 0; j < FB * FI; j++) x[j] = 0.1f * (float)j;

    /* backward before any forward */
    CHECK(qf_net_backward_ce(net, y, FB, &loss, &correct) == QF_ERR_STATE,
          "backward before forward must be QF_ERR_STATE");
    CHECK(strlen(qf_net_error(net)) > 0, "no message for backward before forward");
    /* NaN and infinity */
    x[4] = NAN;
    CHECK(qf_net_forward(net, x, FB, out) == QF_ERR_NONFINITE, "NaN input");
    CHECK(strstr(qf_net_error(net), "NaN") != NULL, "NaN message '%s'", qf_net_error(net));
    x[4] = -INFINITY;
    CHECK(qf_net_forward(net, x, FB, out) == QF_ERR_NONFINITE, "infinite input");
    x[4] = 0.4f;
    CHECK(qf_net_backward_ce(net, y, FB, &loss, &correct) == QF_ERR_STATE,
          "backward after a rejected forward must be QF_ERR_STATE");
    CHECK(qf_net_forward(net, x, 0, out) == QF_ERR_SHAPE, "forward of 0 samples");
    CHECK(qf_net_forward(net, x, FB, out) == QF_OK && qf_net_error(net)[0] == 0,
          "a good forward clears the message");
    /* label count and range */
    CHECK(qf_net_backward_ce(net, y, FB - 1, &loss, &correct) == QF_ERR_SHAPE,
          "wrong label count must be QF_ERR_SHAPE");
    CHECK(strlen(qf_net_error(net)) > 0, "no message for the label count");
    y[2] = FO;
    CHECK(qf_net_backward_ce(net, y, FB, &loss, &correct) == QF_ERR_LABEL,
          "label == n_classes must be QF_ERR_LABEL");
    CHECK(strstr(qf_net_error(net), "label") != NULL, "label message '%s'", qf_net_error(net));
    y[2] = -1;
    CHECK(qf_net_backward_ce(net, y, FB, &loss, &correct) == QF_ERR_LABEL,
          "label -1 must be QF_ERR_LABEL");
    y[2] = 2;
    CHECK(qf_net_backward_ce(net, y, FB, &loss, &correct) == QF_OK, "good backward: %s",
          qf_net_error(net));
    CHECK(qf_net_backward_ce(net, y, FB, &loss, &correct) == QF_ERR_STATE,
          "a second backward of one forward must be QF_ERR_STATE");
    /* an eval forward keeps no activations for backward */
    qf_net_set_training(net, 0);
    CHECK(qf_net_training(net) == 0, "set_training(0)");
    qf_net_forward(net, x, FB, out);
    CHECK(qf_net_backward_ce(net, y, FB, &loss, &correct) == QF_ERR_STATE,
          "backward after an eval forward must be QF_ERR_STATE");
    float dout[FB * FO] = {0};
    CHECK(qf_net_backward(net, dout, FB) == QF_ERR_STATE, "qf_net_backward after eval forward");
    qf_net_set_training(net, 1);

    /* optimizer */
    CHECK(qf_net_step(net) == QF_ERR_STATE, "step without an optimizer");
    CHECK(qf_net_train_epoch(net, x, y, FB, 2, qf_net_shuffle_rng(net), &loss, &correct) ==
          QF_ERR_STATE, "train_epoch without an optimizer");
    qf_optimizer bad = {QF_OPT_ADAMW, -1.0f, 0.9f, 0.999f, 1e-8f, 0.0f, 0.0f, 0.0f, 0, 0};
    CHECK(qf_net_set_optimizer(net, &bad) == QF_ERR_ARG && strstr(qf_net_error(net), "lr"),
          "negative lr: '%s'", qf_net_error(net));
    bad.lr = 0.1f;
    bad.beta2 = 1.0f;
    CHECK(qf_net_set_optimizer(net, &bad) == QF_ERR_ARG, "beta2 = 1");
    qf_optimizer nest = {QF_OPT_SGD, 0.1f, 0, 0, 0, 0.0f, 0.9f, 0.5f, 1, 0};
    CHECK(qf_net_set_optimizer(net, &nest) == QF_ERR_ARG, "nesterov with dampening");
    nest.kind = 9;
    CHECK(qf_net_set_optimizer(net, &nest) == QF_ERR_ARG, "unknown optimizer kind");
    qf_optimizer sgd = {QF_OPT_SGD, 0.1f, 0, 0, 0, 0.0f, 0.9f, 0.0f, 1, 0};
    CHECK(qf_net_set_optimizer(net, &sgd) == QF_OK, "good SGD: %s", qf_net_error(net));
    /* train_epoch argument checks */
    CHECK(qf_net_train_epoch(net, x, y, FB, 0, qf_net_shuffle_rng(net), &loss, &correct) ==
          QF_ERR_ARG, "batch_size 0");
    CHECK(qf_net_train_epoch(net, x, y, 0, 2, qf_net_shuffle_rng(net), &loss, &correct) ==
          QF_ERR_ARG, "n 0");
    y[4] = 7;
    CHECK(qf_net_train_epoch(net, x, y, FB, 2, qf_net_shuffle_rng(net), &loss, &correct) ==
          QF_ERR_LABEL, "train_epoch with a bad label");
    y[4] = 0;
    x[0] = NAN;
    CHECK(qf_net_train_epoch(net, x, y, FB, 2, qf_net_shuffle_rng(net), &loss, &correct) ==
          QF_ERR_NONFINITE, "train_epoch with NaN");
    x[0] = 0.0f;
    CHECK(qf_net_train_epoch(net, x, y, FB, 2, qf_net_shuffle_rng(net), &loss, &correct) ==
          QF_OK, "train_epoch: %s", qf_net_error(net));
    /* tensor initialisation */
    CHECK(qf_net_init_uniform(net, 99, 0.0f, 1.0f) == QF_ERR_ARG, "init_uniform bad index");
    CHECK(qf_net_init_uniform(net, 0, 1.0f, 0.0f) == QF_ERR_ARG, "init_uniform a > b");
    CHECK(qf_net_init_uniform(net, 0, 0.0f, INFINITY) == QF_ERR_ARG, "init_uniform inf");
    CHECK(qf_net_init_uniform(net, 0, -0.25f, 0.25f) == QF_OK, "init_uniform good");
    qf_net_free(net);
}

int main(void)
{
    test_float_net_registry();
    test_float_net_gradients();
    test_quant_net(0);
    test_quant_net(1);
    test_quant_linear_float_input();
    test_masks();
    test_train_epoch();
    test_errors();
    return CHECK_REPORT();
}
