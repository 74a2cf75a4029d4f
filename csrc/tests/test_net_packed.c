/* test_net_packed.c: training pruned nets through qf_net_train_epoch, whose
 * packed state and sparse passes (net_packed.c) must give the same bits as
 * the dense path that the documented sequence of public calls takes
 * (shuffle, zero_grad, forward, backward_ce, step), for float, constant-scale
 * and abs-max weight quantizers, AdamW and SGD, and batch sizes on both sides
 * of the sparse/dense switch; pruned entries of data, gradient and optimizer
 * state must stay exactly 0, and the kept ones must train. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "helpers.h"
#include "net.h"
#include "rng.h"

enum { IN = 3, HID = 24, OUT = 3, N = 70 };

static qf_layer_spec linear(int in, int out, qf_quant_spec wq)
{
    qf_layer_spec s;
    memset(&s, 0, sizeof s);
    s.kind = QF_LAYER_LINEAR;
    s.in_features = in;
    s.out_features = out;
    s.has_bias = 1;
    s.weight_quant = wq;
    return s;
}

static qf_layer_spec plain_layer(int kind)
{
    qf_layer_spec s;
    memset(&s, 0, sizeof s);
    s.kind = kind;
    return s;
}

static qf_layer_spec act(qf_quant_spec aq, int relu)
{
    qf_layer_spec s = plain_layer(QF_LAYER_ACT_QUANT);
    s.act_quant = aq;
    s.relu = relu;
    return s;
}

typedef enum { FLOAT_NET, CONST_NET, ABSMAX_NET, FLOAT_INPUT_NET } net_kind;

/* A 3-layer net of the given kind, its two larger weights pruned to about a
 * third (a pattern drawn from seed), with optimizer opt. */
static qf_net *make_net(net_kind kind, const qf_optimizer *opt, uint64_t seed)
{
    qf_quant_spec none = quant(QF_QUANT_NONE, 0, 0, 0, 0.0f, 0);
    qf_quant_spec wq = quant(kind == ABSMAX_NET ? QF_QUANT_ABSMAX : QF_QUANT_CONST, 3, 1, 1,
                             1.0f, 0);
    qf_quant_spec in_q = quant(QF_QUANT_CONST, 3, 1, 1, 1.0f, 0);
    qf_quant_spec relu_q = quant(QF_QUANT_LEARNED, 3, 0, 0, 1.0f, 4);
    qf_layer_spec specs[6];
    int n = 0;
    if (kind == FLOAT_NET) {
        specs[n++] = linear(IN, HID, none);
        specs[n++] = plain_layer(QF_LAYER_RELU);
        specs[n++] = linear(HID, HID, none);
        specs[n++] = plain_layer(QF_LAYER_RELU);
        specs[n++] = linear(HID, OUT, none);
    } else if (kind == FLOAT_INPUT_NET) {   /* quantized weights, float inputs */
        specs[n++] = linear(IN, HID, wq);
        specs[n++] = plain_layer(QF_LAYER_RELU);
        specs[n++] = linear(HID, HID, wq);
        specs[n++] = plain_layer(QF_LAYER_RELU);
        specs[n++] = linear(HID, OUT, wq);
    } else {
        specs[n++] = act(in_q, 0);
        specs[n++] = linear(IN, HID, wq);
        specs[n++] = act(relu_q, 1);
        specs[n++] = linear(HID, HID, wq);
        specs[n++] = act(relu_q, 1);
        specs[n++] = linear(HID, OUT, wq);
    }
    qf_net *net = NULL;
    char err[256];
    CHECK(qf_net_create(&net, specs, n, IN, seed, err, sizeof err) == QF_OK, "create: %s", err);
    if (!net)
        return NULL;
    CHECK(qf_net_set_optimizer(net, opt) == QF_OK, "set_optimizer: %s", qf_net_error(net));
    qf_rng rng;
    qf_rng_seed(&rng, seed, 7);
    for (int t = 0; t < qf_net_n_tensors(net); t++) {
        qf_tensor *T = qf_net_tensor(net, t);
        if (T->kind != QF_TENSOR_PARAM || T->ndim != 2 || T->size < HID * HID / 2)
            continue;
        uint8_t mask[HID * HID];
        for (int64_t i = 0; i < T->size; i++)
            mask[i] = qf_rng_below(&rng, 3) == 0;
        CHECK(qf_net_set_mask(net, t, mask) == QF_OK, "set_mask: %s", qf_net_error(net));
    }
    return net;
}

static void training_data(float *x, int32_t *y)
{
    qf_rng rng;
    qf_rng_seed(&rng, 4242, 0);
    for (int s = 0; s < N; s++) {
        for (int i = 0; i < IN; i++)
            x[s * IN + i] = 2.0f * qf_rng_uniform01(&rng) - 1.0f;
        y[s] = (x[s * IN] > 0.0f) + (x[s * IN + 1] > 0.3f);
    }
}

/* One epoch by hand through the public calls (dense path). */
static void epoch_by_hand(qf_net *net, const float *x, const int32_t *y, int batch,
                          qf_rng *rng, double *loss_sum)
{
    int64_t perm[N];
    qf_rng_permutation(rng, perm, N);
    *loss_sum = 0.0;
    qf_net_set_training(net, 1);
    for (int start = 0; start < N; start += batch) {
        int m = N - start < batch ? N - start : batch;
        float bx[N * IN], out[N * OUT];
        int32_t by[N];
        for (int s = 0; s < m; s++) {
            memcpy(bx + s * IN, x + perm[start + s] * IN, sizeof(float) * IN);
            by[s] = y[perm[start + s]];
        }
        qf_net_zero_grad(net);
        qf_net_forward(net, bx, m, out);
        double loss;
        int64_t correct;
        qf_net_backward_ce(net, by, m, &loss, &correct);
        qf_net_step(net);
        *loss_sum += loss * m;
    }
    qf_net_zero_grad(net);
}

/* Data and optimizer state of two nets bit-identical; pruned entries all 0. */
static void compare_nets(qf_net *a, qf_net *b, const char *what)
{
    int same = 1, pruned_zero = 1;
    for (int t = 0; t < qf_net_n_tensors(a); t++) {
        qf_tensor *ta = qf_net_tensor(a, t), *tb = qf_net_tensor(b, t);
        same &= same_bits(ta->data, tb->data, ta->size);
        if (ta->kind == QF_TENSOR_PARAM)
            same &= same_bits(ta->opt_m, tb->opt_m, ta->size) &&
                    same_bits(ta->opt_v, tb->opt_v, ta->size) &&
                    same_bits(ta->grad, tb->grad, ta->size);
        if (ta->mask)
            for (int64_t i = 0; i < ta->size; i++)
                if (!ta->mask[i])
                    pruned_zero &= ta->data[i] == 0.0f && ta->grad[i] == 0.0f &&
                                   ta->opt_m[i] == 0.0f && ta->opt_v[i] == 0.0f;
    }
    CHECK(same, "%s: train_epoch and the public calls disagree", what);
    CHECK(pruned_zero, "%s: a pruned entry is not 0 after training", what);
}

static void test_epochs_match_public_calls(void)
{
    float x[N * IN];
    int32_t y[N];
    training_data(x, y);
    const qf_optimizer opts[2] = {
        {QF_OPT_ADAMW, 0.02f, 0.9f, 0.999f, 1e-8f, 0.05f, 0.0f, 0.0f, 0, 0},
        {QF_OPT_SGD, 0.05f, 0.0f, 0.0f, 0.0f, 0.01f, 0.9f, 0.0f, 1, 0},
    };
    const char *kinds[4] = {"float", "constant-scale", "abs-max", "float-input quantized"};
    const int batches[4] = {1, 5, 16, 33};   /* sparse passes up to 16 samples, dense above */
    for (int k = 0; k < 4; k++)
        for (int o = 0; o < 2; o++)
            for (int b = 0; b < 4; b++) {
                qf_net *a = make_net((net_kind)k, &opts[o], 11), *h = make_net((net_kind)k,
                                                                               &opts[o], 11);
                if (!a || !h) {
                    qf_net_free(a);
                    qf_net_free(h);
                    continue;
                }
                qf_tensor *w = qf_net_tensor(a, qf_net_find_tensor(a, k == FLOAT_NET ||
                                             k == FLOAT_INPUT_NET ? "2.weight" : "3.weight"));
                float before[HID * HID];
                memcpy(before, w->data, sizeof before);
                qf_rng ra, rh;
                qf_rng_seed(&ra, 3, 0);
                qf_rng_seed(&rh, 3, 0);
                double la = 0.0, lh = 0.0;
                for (int epoch = 0; epoch < 2; epoch++) {
                    int64_t correct;
                    CHECK(qf_net_train_epoch(a, x, y, N, batches[b], &ra, &la, &correct) ==
                              QF_OK, "train_epoch: %s", qf_net_error(a));
                    epoch_by_hand(h, x, y, batches[b], &rh, &lh);
                }
                char what[120];
                snprintf(what, sizeof what, "%s net, optimizer %d, batch %d", kinds[k], o,
                         batches[b]);
                CHECK(la == lh, "%s: loss %.17g vs %.17g by hand", what, la, lh);
                compare_nets(a, h, what);
                int moved = 0;
                for (int64_t i = 0; i < w->size; i++)
                    moved += w->mask[i] && w->data[i] != before[i];
                CHECK(moved > 0, "%s: the kept weights did not train", what);
                qf_net_free(a);
                qf_net_free(h);
            }
}

/* Writes through the views between epochs: pruned entries are reset, kept
 * ones are used; a new mask and dropping the mask take effect. */
static void test_masks_between_epochs(void)
{
    float x[N * IN];
    int32_t y[N];
    training_data(x, y);
    qf_optimizer opt = {QF_OPT_ADAMW, 0.02f, 0.9f, 0.999f, 1e-8f, 0.05f, 0.0f, 0.0f, 0, 0};
    qf_net *a = make_net(CONST_NET, &opt, 5), *h = make_net(CONST_NET, &opt, 5);
    if (!a || !h)
        goto done;
    int t = qf_net_find_tensor(a, "3.weight");
    qf_tensor *wa = qf_net_tensor(a, t), *wh = qf_net_tensor(h, t);
    qf_rng ra, rh;
    qf_rng_seed(&ra, 9, 0);
    qf_rng_seed(&rh, 9, 0);
    double la, lh;
    int64_t correct;
    qf_net_train_epoch(a, x, y, N, 1, &ra, &la, &correct);
    epoch_by_hand(h, x, y, 1, &rh, &lh);
    /* a kept weight edited, a pruned one written: both nets see the same edit */
    int kept = -1, pruned = -1;
    for (int i = 0; i < HID * HID && (kept < 0 || pruned < 0); i++) {
        if (wa->mask[i] && kept < 0) kept = i;
        if (!wa->mask[i] && pruned < 0) pruned = i;
    }
    wa->data[kept] = wh->data[kept] = 0.75f;
    wa->data[pruned] = 0.5f;
    qf_net_train_epoch(a, x, y, N, 1, &ra, &la, &correct);
    /* by hand, the pruned write is undone by the first step; the epoch undoes it
     * at its start, so h must not see it at all */
    epoch_by_hand(h, x, y, 1, &rh, &lh);
    CHECK(wa->data[pruned] == 0.0f, "a pruned entry written through a view stayed %g",
          (double)wa->data[pruned]);
    compare_nets(a, h, "after edits between epochs");
    /* a new mask, then none */
    uint8_t mask[HID * HID];
    for (int i = 0; i < HID * HID; i++) mask[i] = wa->mask[i] && i % 2 == 0;
    CHECK(qf_net_set_mask(a, t, mask) == QF_OK && qf_net_set_mask(h, t, mask) == QF_OK,
          "second mask");
    qf_net_train_epoch(a, x, y, N, 3, &ra, &la, &correct);
    epoch_by_hand(h, x, y, 3, &rh, &lh);
    compare_nets(a, h, "after a second mask");
    CHECK(qf_net_set_mask(a, t, NULL) == QF_OK && qf_net_set_mask(h, t, NULL) == QF_OK,
          "drop mask");
    qf_net_train_epoch(a, x, y, N, 3, &ra, &la, &correct);
    epoch_by_hand(h, x, y, 3, &rh, &lh);
    compare_nets(a, h, "after dropping the mask");
    int revived = 0;
    for (int i = 0; i < HID * HID; i++) revived += !mask[i] && wa->data[i] != 0.0f;
    CHECK(revived > 0, "entries stayed 0 after the mask was dropped");
done:
    qf_net_free(a);
    qf_net_free(h);
}

int main(void)
{
    test_epochs_match_public_calls();
    test_masks_between_epochs();
    return CHECK_REPORT();
}
