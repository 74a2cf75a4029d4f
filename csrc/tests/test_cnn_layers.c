/* test_cnn_layers.c: BatchNorm2d and MaxPool2d kernels (batchnorm.h,
 * maxpool.h) and the circuit's MAXPOOL op, against references written here:
 * batch normalisation in double from its definition with central finite
 * differences for its backward, window maxima by a plain scan (first maximum
 * wins, padding skipped), and both circuit engines against that scan. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "batchnorm.h"
#include "check.h"
#include "circuit.h"
#include "helpers.h"
#include "maxpool.h"
#include "net.h"
#include "net_infer.h"

/* ------------------------------------------------------------------ BatchNorm2d */

enum { BN_N = 3, BN_C = 2, BN_HW = 5, BN_SIZE = BN_N * BN_C * BN_HW };

/* sum(g * y) of the batch-statistics forward, in double from the definition. */
static double ref_bn_loss(const double *x, const double *gamma, const double *beta,
                          const float *g, double eps)
{
    double loss = 0.0, m = BN_N * BN_HW;
    for (int c = 0; c < BN_C; c++) {
        double mean = 0.0, var = 0.0;
        for (int s = 0; s < BN_N; s++)
            for (int i = 0; i < BN_HW; i++)
                mean += x[(s * BN_C + c) * BN_HW + i] / m;
        for (int s = 0; s < BN_N; s++)
            for (int i = 0; i < BN_HW; i++) {
                double d = x[(s * BN_C + c) * BN_HW + i] - mean;
                var += d * d / m;
            }
        for (int s = 0; s < BN_N; s++)
            for (int i = 0; i < BN_HW; i++) {
                int j = (s * BN_C + c) * BN_HW + i;
                loss += g[j] * ((x[j] - mean) / sqrt(var + eps) * gamma[c] + beta[c]);
            }
    }
    return loss;
}

static void test_batchnorm(void)
{
    qf_rng rng;
    qf_rng_seed(&rng, 11, 0);
    float x[BN_SIZE], g[BN_SIZE], y[BN_SIZE], xhat[BN_SIZE], dx[BN_SIZE];
    float gamma[BN_C], beta[BN_C], mean[BN_C], var[BN_C], invstd[BN_C];
    float dgamma[BN_C] = {0}, dbeta[BN_C] = {0};
    double xd[BN_SIZE], gd[BN_C], bd[BN_C];
    const float eps = 1e-3f;
    for (int j = 0; j < BN_SIZE; j++) {
        x[j] = uniform(&rng, -2.0f, 3.0f);
        g[j] = uniform(&rng, -1.0f, 1.0f);
        xd[j] = x[j];
    }
    for (int c = 0; c < BN_C; c++) {
        gamma[c] = uniform(&rng, 0.5f, 2.0f);
        beta[c] = uniform(&rng, -1.0f, 1.0f);
        gd[c] = gamma[c];
        bd[c] = beta[c];
    }
    qf_bn_batch_stats(mean, var, x, BN_N, BN_C, BN_HW);
    qf_bn_train_forward(y, xhat, invstd, x, mean, var, gamma, beta, eps, BN_N, BN_C, BN_HW);
    double loss = 0.0;
    for (int j = 0; j < BN_SIZE; j++)
        loss += (double)g[j] * y[j];
    CHECK_CLOSE(loss, ref_bn_loss(xd, gd, bd, g, eps), 1e-5, 1e-5);
    qf_bn_backward(dx, dgamma, dbeta, g, xhat, gamma, invstd, BN_N, BN_C, BN_HW);
    const double h = 1e-5;
    for (int j = 0; j < BN_SIZE; j++) {   /* input gradient, element by element */
        double keep = xd[j];
        xd[j] = keep + h;
        double up = ref_bn_loss(xd, gd, bd, g, eps);
        xd[j] = keep - h;
        double down = ref_bn_loss(xd, gd, bd, g, eps);
        xd[j] = keep;
        CHECK_CLOSE(dx[j], (up - down) / (2 * h), 1e-3, 1e-4);
    }
    for (int c = 0; c < BN_C; c++) {      /* weight and bias gradients */
        double keep = gd[c];
        gd[c] = keep + h;
        double up = ref_bn_loss(xd, gd, bd, g, eps);
        gd[c] = keep - h;
        double down = ref_bn_loss(xd, gd, bd, g, eps);
        gd[c] = keep;
        CHECK_CLOSE(dgamma[c], (up - down) / (2 * h), 1e-4, 1e-5);
        keep = bd[c];
        bd[c] = keep + h;
        up = ref_bn_loss(xd, gd, bd, g, eps);
        bd[c] = keep - h;
        down = ref_bn_loss(xd, gd, bd, g, eps);
        bd[c] = keep;
        CHECK_CLOSE(dbeta[c], (up - down) / (2 * h), 1e-4, 1e-5);
    }
    /* running statistics: (1 - f) r + f stat, the variance unbiased */
    float rm[BN_C] = {0.5f, -1.0f}, rv[BN_C] = {2.0f, 1.0f};
    qf_bn_update_running(rm, rv, mean, var, 0.25f, BN_N * BN_HW, BN_C);
    for (int c = 0; c < BN_C; c++) {
        CHECK_CLOSE(rm[c], 0.75 * (c ? -1.0 : 0.5) + 0.25 * mean[c], 1e-6, 1e-7);
        CHECK_CLOSE(rv[c], 0.75 * (c ? 1.0 : 2.0) + 0.25 * var[c] * 15.0 / 14.0, 1e-6, 1e-7);
    }
    /* eval and its fold: the documented float32 expressions, bit for bit */
    float k[BN_C], scale[BN_C] = {0.125f, 0.3f}, fold_bias[BN_C], b_in[BN_C] = {0.2f, -0.7f};
    qf_bn_eval_factor(k, gamma, rv, eps, BN_C);
    float want_scale[BN_C];
    for (int c = 0; c < BN_C; c++) {
        float t = rv[c] + eps, r = sqrtf(t);
        CHECK(k[c] == gamma[c] / r, "k[%d]", c);
        want_scale[c] = scale[c] * k[c];
    }
    qf_bn_fold(scale, fold_bias, b_in, rm, k, beta, BN_C);
    for (int c = 0; c < BN_C; c++) {
        float t = (b_in[c] - rm[c]) * k[c];
        CHECK(scale[c] == want_scale[c] && fold_bias[c] == t + beta[c], "fold %d", c);
    }
    qf_bn_eval_forward(y, x, rm, k, beta, BN_N, BN_C, BN_HW);
    for (int j = 0; j < BN_SIZE; j++) {
        int c = j / BN_HW % BN_C;
        float t = (x[j] - rm[c]) * k[c];
        CHECK(y[j] == t + beta[c], "eval %d", j);
    }
}

/* ------------------------------------------------------------------ MaxPool2d */

/* Flat index of the first maximum of window (oy, ox) of plane (h, w), padding skipped. */
static int ref_argmax(const float *plane, int h, int w, int k, int s, int p, int oy, int ox)
{
    int best = -1;
    for (int ky = 0; ky < k; ky++)
        for (int kx = 0; kx < k; kx++) {
            int y = oy * s - p + ky, xx = ox * s - p + kx;
            int inside = y >= 0 && y < h && xx >= 0 && xx < w;
            if (inside && (best < 0 || plane[y * w + xx] > plane[best]))
                best = y * w + xx;
        }
    return best;
}

static void test_maxpool(void)
{
    enum { C = 2, H = 5, W = 6, K = 3, S = 2, P = 1, OH = 3, OW = 3 };
    qf_rng rng;
    qf_rng_seed(&rng, 12, 0);
    float x[C * H * W], codes[C * H * W], out[C * OH * OW], out_codes[C * OH * OW];
    float dout[C * OH * OW], dx[C * H * W], want_dx[C * H * W] = {0};
    int32_t argmax[C * OH * OW];
    for (int j = 0; j < C * H * W; j++) {
        codes[j] = (float)(int)uniform(&rng, -3.0f, 3.0f);   /* few values: ties */
        x[j] = 0.25f * codes[j];
    }
    qf_conv_geom g = {C, H, W, K, K, S, S, P, P, OH, OW};
    qf_maxpool_forward(out, argmax, x, &g, out_codes, codes);
    for (int c = 0; c < C; c++)
        for (int oy = 0; oy < OH; oy++)
            for (int ox = 0; ox < OW; ox++) {
                int j = (c * OH + oy) * OW + ox;
                int at = c * H * W + ref_argmax(x + c * H * W, H, W, K, S, P, oy, ox);
                CHECK(argmax[j] == at && out[j] == x[at] && out_codes[j] == codes[at],
                      "window %d: argmax %d, expected %d", j, (int)argmax[j], at);
                dout[j] = uniform(&rng, -1.0f, 1.0f);
                want_dx[at] += dout[j];
            }
    qf_maxpool_backward(dx, dout, argmax, &g);
    CHECK(same_bits(dx, want_dx, C * H * W), "maxpool backward routes to the first maxima");
}

/* ------------------------------------------------------------------ circuit MAXPOOL */

static void test_circuit_maxpool(void)
{
    enum { C = 2, H = 5, W = 6, OH = 3, OW = 3, N = 20 };
    qf_quantizer in_q = {0.5f, 0, -7, 7};
    int64_t in_shape[3] = {C, H, W};
    float scale[C] = {1.0f, 1.0f};
    qf_op_spec ops[2];
    memset(ops, 0, sizeof ops);
    ops[0].kind = QF_OP_MAXPOOL;
    ops[0].name = "pool";
    ops[0].kernel[0] = ops[0].kernel[1] = 3;
    ops[0].stride[0] = ops[0].stride[1] = 2;
    ops[0].padding[0] = ops[0].padding[1] = 1;
    ops[1].kind = QF_OP_DECODE;
    ops[1].src = 1;
    ops[1].n_channels = C;
    ops[1].scale = scale;
    qf_circuit *circ;
    char err[256];
    CHECK(qf_circuit_create(&circ, &in_q, in_shape, ops, 2, err, sizeof err) == QF_OK, "%s", err);
    if (!circ)
        return;
    const qf_node_info *node = qf_circuit_node(circ, 1);
    CHECK(node->kind == QF_NODE_MAXPOOL && node->shape[1] == OH && node->shape[2] == OW &&
          node->static_min == -7 && node->static_max == 7, "maxpool node");
    qf_rng rng;
    qf_rng_seed(&rng, 13, 0);
    int64_t codes[N * C * H * W], out_int[N * C * OH * OW];
    float out[N * C * OH * OW], plane[H * W];
    for (int j = 0; j < N * C * H * W; j++)
        codes[j] = (int64_t)floorf(uniform(&rng, -7.0f, 8.0f));   /* many ties */
    const int engines[2] = {QF_CIRCUIT_ENGINE_AUTO, QF_CIRCUIT_ENGINE_INT64};
    for (int e = 0; e < 2; e++) {
        qf_circuit_run_opts opts = {engines[e], 1};
        int64_t *ws = malloc(sizeof(int64_t) * (size_t)qf_circuit_workspace_len(circ, 1));
        CHECK(qf_circuit_run_codes(circ, out, out_int, NULL, codes, N, &opts, ws, err,
                                   sizeof err) == QF_OK, "%s", err);
        free(ws);
        int bad = 0;
        for (int s = 0; s < N; s++)
            for (int c = 0; c < C; c++) {
                for (int i = 0; i < H * W; i++)
                    plane[i] = (float)codes[(s * C + c) * H * W + i];
                for (int oy = 0; oy < OH; oy++)
                    for (int ox = 0; ox < OW; ox++) {
                        int j = ((s * C + c) * OH + oy) * OW + ox;
                        float want = plane[ref_argmax(plane, H, W, 3, 2, 1, oy, ox)];
                        bad += out_int[j] != (int64_t)want || out[j] != want;
                    }
            }
        CHECK(bad == 0, "engine %d: %d window maxima differ", e, bad);
    }
    qf_circuit_free(circ);
    ops[0].padding[0] = 2;   /* more than half the kernel: an error naming the op */
    CHECK(qf_circuit_create(&circ, &in_q, in_shape, ops, 2, err, sizeof err) == QF_ERR_ARG &&
          strstr(err, "pool") && strstr(err, "half the kernel"), "padding error: %s", err);
}

/* ------------------------------------------------------------------ in a network */

static qf_layer_spec layer(int kind)
{
    qf_layer_spec s;
    memset(&s, 0, sizeof s);
    s.kind = kind;
    s.stride[0] = s.stride[1] = 1;
    s.kernel[0] = s.kernel[1] = 1;
    return s;
}

static qf_layer_spec batchnorm(int c)
{
    qf_layer_spec s = layer(QF_LAYER_BATCHNORM2D);
    s.in_features = c;
    s.eps = 1e-5f;
    s.momentum = 0.1f;
    s.affine = s.track_running_stats = 1;
    return s;
}

/* A quantized CNN using every new path: a conv folding the BatchNorm2d after it in eval,
 * max pooling carrying codes, a BatchNorm2d on codes.  Trains (batches with a remainder),
 * then eval forward of a batch equals the forward of each sample (no state leaks), and a
 * one-value batch is refused in training. */
static void test_net(void)
{
    enum { N = 11, C = 2, H = 6, W = 6, K = 4 };
    qf_layer_spec specs[9];
    specs[0] = layer(QF_LAYER_ACT_QUANT);
    specs[0].act_quant = quant(QF_QUANT_LEARNED, 5, 1, 0, 1.0f, 3);
    specs[1] = layer(QF_LAYER_CONV2D);
    specs[1].in_features = C;
    specs[1].out_features = K;
    specs[1].has_bias = 1;
    specs[1].kernel[0] = specs[1].kernel[1] = 3;
    specs[1].padding[0] = specs[1].padding[1] = 1;
    specs[1].weight_quant = quant(QF_QUANT_ABSMAX, 4, 1, 1, 1.0f, 0);
    specs[2] = batchnorm(K);
    specs[3] = layer(QF_LAYER_ACT_QUANT);
    specs[3].act_quant = quant(QF_QUANT_LEARNED, 4, 0, 0, 1.0f, 3);
    specs[3].relu = 1;
    specs[4] = layer(QF_LAYER_MAXPOOL2D);
    specs[4].kernel[0] = specs[4].kernel[1] = 3;
    specs[4].stride[0] = specs[4].stride[1] = 2;
    specs[4].padding[0] = specs[4].padding[1] = 1;
    specs[5] = batchnorm(K);
    specs[6] = layer(QF_LAYER_ACT_QUANT);
    specs[6].act_quant = quant(QF_QUANT_LEARNED, 4, 1, 0, 1.0f, 3);
    specs[7] = layer(QF_LAYER_RESHAPE);
    specs[8] = layer(QF_LAYER_LINEAR);
    specs[8].in_features = K * 3 * 3;
    specs[8].out_features = 3;
    specs[8].has_bias = 1;
    specs[8].weight_quant = quant(QF_QUANT_ABSMAX, 4, 1, 1, 1.0f, 0);
    int64_t shape[3] = {C, H, W};
    qf_net *net;
    char err[256];
    CHECK(qf_net_create_shaped(&net, specs, 9, shape, 5, err, sizeof err) == QF_OK, "%s", err);
    if (!net)
        return;
    qf_rng rng;
    qf_rng_seed(&rng, 14, 0);
    float x[N * C * H * W], out[N * 3], one[3];
    int32_t y[N];
    for (int j = 0; j < N * C * H * W; j++)
        x[j] = uniform(&rng, -1.0f, 1.0f);
    for (int s = 0; s < N; s++)
        y[s] = s % 3;
    qf_optimizer opt = {QF_OPT_ADAMW, 0.01f, 0.9f, 0.999f, 1e-8f, 0.01f, 0.0f, 0.0f, 0, 0};
    CHECK(qf_net_set_optimizer(net, &opt) == QF_OK, "optimizer");
    double loss;
    int64_t correct;
    for (int e = 0; e < 3; e++)
        CHECK(qf_net_train_epoch(net, x, y, N, 4, qf_net_shuffle_rng(net), &loss, &correct) ==
                  QF_OK && isfinite(loss), "epoch %d: %s", e, qf_net_error(net));
    CHECK(qf_net_tensor(net, qf_net_find_tensor(net, "2.num_batches_tracked"))->data[0] == 9.0f,
          "three batches per epoch");
    CHECK(qf_net_train_epoch(net, x, y, 5, 4, qf_net_shuffle_rng(net), &loss, &correct) ==
              QF_OK, "a last batch of one sample of 6 x 6 values is fine");
    qf_net_set_training(net, 0);
    CHECK(qf_net_forward(net, x, N, out) == QF_OK, "%s", qf_net_error(net));
    int same = 1;
    for (int s = 0; s < N; s++) {
        CHECK(qf_net_forward(net, x + s * C * H * W, 1, one) == QF_OK, "sample %d", s);
        same &= same_bits(one, out + s * 3, 3);
    }
    CHECK(same, "eval of a batch equals eval of each sample");
    qf_net_infer *ws = qf_net_infer_create();   /* the private-workspace eval: same results */
    float other[N * 3];
    CHECK(ws && qf_net_infer_forward(ws, net, x, N, other) == QF_OK, "infer");
    CHECK(same_bits(other, out, N * 3), "private-workspace eval equals the net's eval");
    qf_net_infer_free(ws);
    qf_net_free(net);
    /* a BatchNorm2d of 1 x 1 values cannot train on one sample */
    qf_layer_spec flat[2] = {layer(QF_LAYER_LINEAR), batchnorm(3)};
    flat[0].in_features = 2;
    flat[0].out_features = 3;
    CHECK(qf_net_create(&net, flat, 2, 2, 0, err, sizeof err) == QF_OK, "%s", err);
    CHECK(qf_net_forward(net, x, 1, out) == QF_ERR_SHAPE &&
          strstr(qf_net_error(net), "more than one value"), "one value: %s", qf_net_error(net));
    qf_net_free(net);
}

int main(void)
{
    test_net();
    test_batchnorm();
    test_maxpool();
    test_circuit_maxpool();
    return CHECK_REPORT();
}
