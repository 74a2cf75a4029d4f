/* test_net_guard.c: the C core's training safeguards (issue 11) without Python:
 * a diverging epoch returns QF_ERR_DIVERGED and leaves the net exactly as the
 * same batches run one by one up to the last finite step; per-parameter step
 * counts (a learned threshold takes no step during its statistics phase); the
 * input gradient against central differences. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "check.h"
#include "helpers.h"
#include "net.h"

static qf_layer_spec layer(int kind, int in, int out)
{
    qf_layer_spec s;
    memset(&s, 0, sizeof s);
    s.kind = kind;
    s.in_features = in;
    s.out_features = out;
    s.has_bias = 1;
    return s;
}

/* Linear(2, 6) -> [QuantReLU learned, stats_steps 2] -> Linear(6, 2) */
static qf_net *make_net(int learned)
{
    qf_layer_spec specs[3] = {layer(QF_LAYER_LINEAR, 2, 6), layer(QF_LAYER_RELU, 0, 0),
                              layer(QF_LAYER_LINEAR, 6, 2)};
    if (learned) {
        specs[1].kind = QF_LAYER_ACT_QUANT;
        specs[1].relu = 1;
        specs[1].act_quant = quant(QF_QUANT_LEARNED, 4, 0, 0, 1.0f, 2);
    }
    char err[256];
    qf_net *net = NULL;
    qf_status st = qf_net_create(&net, specs, 3, 2, 7, err, sizeof err);
    CHECK(st == QF_OK, "create: %s", err);
    return net;
}

static void set_sgd(qf_net *net, float lr, float momentum, float wd)
{
    qf_optimizer o;
    memset(&o, 0, sizeof o);
    o.kind = QF_OPT_SGD;
    o.lr = lr;
    o.momentum = momentum;
    o.weight_decay = wd;
    CHECK(qf_net_set_optimizer(net, &o) == QF_OK, "set_optimizer");
}

static int all_finite(qf_net *net)
{
    for (int t = 0; t < qf_net_n_tensors(net); t++) {
        qf_tensor *T = qf_net_tensor(net, t);
        for (int64_t i = 0; i < T->size; i++)
            if (!isfinite(T->data[i]))
                return 0;
    }
    return 1;
}

static void test_divergence_rolls_back(void)
{
    enum { N = 12 };
    float x[2 * N];
    int32_t y[N];
    qf_rng rng;
    qf_rng_seed(&rng, 3, 0);
    for (int i = 0; i < N; i++) {
        x[2 * i] = uniform(&rng, 0, 1);
        x[2 * i + 1] = uniform(&rng, 0, 1);
        y[i] = x[2 * i] > x[2 * i + 1];
    }
    qf_net *a = make_net(0), *b = make_net(0);
    set_sgd(a, 0.5f, 1e10f, 0.0f);        /* momentum 1e10: overflows within a few steps */
    set_sgd(b, 0.5f, 1e10f, 0.0f);
    qf_rng ra, rb;
    qf_rng_seed(&ra, 11, 2);
    rb = ra;
    double loss;
    int64_t correct;
    qf_status st = qf_net_train_epoch(a, x, y, N, 1, &ra, &loss, &correct);
    CHECK(st == QF_ERR_DIVERGED, "status %d", st);
    CHECK(strstr(qf_net_error(a), "training diverged at step") != NULL, "%s", qf_net_error(a));
    CHECK(all_finite(a), "the net holds NaN or infinity after a divergence");
    int64_t steps = qf_net_optimizer(a)->step;
    CHECK(steps >= 1 && steps < N, "steps taken %lld", (long long)steps);
    /* the same shuffle, batches one by one: `steps` of them give the same state */
    int64_t perm[N];
    qf_rng_permutation(&rb, perm, N);
    qf_net_set_training(b, 1);
    float out[2];
    for (int64_t s = 0; s < steps; s++) {
        qf_net_zero_grad(b);
        qf_net_forward(b, x + 2 * perm[s], 1, out);
        CHECK(qf_net_backward_ce(b, y + perm[s], 1, &loss, &correct) == QF_OK, "backward");
        qf_net_step(b);
    }
    for (int t = 0; t < qf_net_n_tensors(a); t++) {
        qf_tensor *ta = qf_net_tensor(a, t), *tb = qf_net_tensor(b, t);
        CHECK(same_bits(ta->data, tb->data, ta->size), "%s differs", ta->name);
        CHECK(same_bits(ta->opt_m, tb->opt_m, ta->size), "momentum of %s differs", ta->name);
        CHECK(ta->opt_step == tb->opt_step, "step count of %s", ta->name);
    }
    qf_net_free(a);
    qf_net_free(b);
}

/* A NaN that the loss never sees (a weight row whose ReLU output is then 0)
 * is found at the epoch's end and located by the checked replay: step 1. */
static void test_hidden_nan_found_at_the_epoch_end(void)
{
    float x[8] = {0.1f, 0.9f, 0.5f, 0.3f, 0.8f, 0.2f, 0.4f, 0.6f};
    int32_t y[4] = {1, 0, 0, 1};
    qf_net *net = make_net(0);
    set_sgd(net, 0.1f, 0.0f, 0.0f);
    qf_tensor *w = qf_net_tensor(net, qf_net_find_tensor(net, "0.weight"));
    w->data[0] = w->data[1] = NAN;   /* hidden unit 0: NaN pre-activation, ReLU gives 0 */
    float before[12];
    memcpy(before, w->data, sizeof before);
    qf_rng rng;
    qf_rng_seed(&rng, 5, 2);
    double loss;
    int64_t correct;
    qf_status st = qf_net_train_epoch(net, x, y, 4, 1, &rng, &loss, &correct);
    CHECK(st == QF_ERR_DIVERGED, "status %d", st);
    CHECK(strstr(qf_net_error(net), "step 1 of the epoch: the weight of layer 0") != NULL, "%s",
          qf_net_error(net));
    CHECK(memcmp(before, w->data, sizeof before) == 0 && qf_net_optimizer(net)->step == 0,
          "the net is not back at its state before step 1");
    qf_net_free(net);
}

static void test_threshold_skips_the_statistics_phase(void)
{
    qf_net *net = make_net(1);
    set_sgd(net, 0.1f, 0.9f, 0.5f);       /* momentum and weight decay */
    int th = qf_net_find_tensor(net, "1.act_quant.threshold");
    float x[8] = {0.1f, 0.9f, 0.5f, 0.3f, 0.8f, 0.2f, 0.4f, 0.6f}, out[8];
    int32_t y[4] = {1, 0, 0, 1};
    qf_net_set_training(net, 1);
    for (int s = 0; s < 5; s++) {
        qf_net_zero_grad(net);
        qf_net_forward(net, x, 4, out);   /* the third is the switch: T := B, then trained */
        CHECK(qf_net_tensor_in_step(net, th) == (s >= 2), "threshold in step %d", s);
        double loss;
        int64_t correct;
        qf_net_backward_ce(net, y, 4, &loss, &correct);
        float before = qf_net_tensor(net, th)->data[0];
        qf_net_step(net);
        if (s < 2)   /* untouched: no decay, no momentum */
            CHECK(qf_net_tensor(net, th)->data[0] == before &&
                      qf_net_tensor(net, th)->opt_m[0] == 0,
                  "threshold moved in the statistics phase (step %d)", s);
    }
    CHECK(qf_net_tensor(net, th)->opt_step == 3, "threshold steps %lld",
          (long long)qf_net_tensor(net, th)->opt_step);
    CHECK(qf_net_tensor(net, 0)->opt_step == 5, "weight steps");
    qf_net_free(net);
}

static void test_input_gradient(void)
{
    qf_net *net = make_net(0);
    float x[6] = {0.3f, -0.7f, 1.1f, 0.2f, -0.4f, 0.9f}, dx[6], out[6];
    int32_t y[3] = {0, 1, 1};
    qf_net_set_training(net, 1);
    qf_net_forward(net, x, 3, out);
    double loss;
    int64_t correct;
    CHECK(qf_net_backward_ce_dx(net, y, 3, &loss, &correct, dx) == QF_OK, "backward_ce_dx");
    for (int i = 0; i < 6; i++) {
        double f[2];
        for (int k = 0; k < 2; k++) {
            float xs[6];
            memcpy(xs, x, sizeof xs);
            xs[i] += k ? -1e-3f : 1e-3f;
            qf_net_forward(net, xs, 3, out);
            qf_net_backward_ce(net, y, 3, &f[k], &correct);
        }
        double fd = (f[0] - f[1]) / (double)((x[i] + 1e-3f) - (x[i] - 1e-3f));
        CHECK_CLOSE(dx[i], fd, 2e-2, 2e-4);
    }
    qf_net_free(net);
}

int main(void)
{
    test_divergence_rolls_back();
    test_hidden_nan_found_at_the_epoch_end();
    test_threshold_skips_the_statistics_phase();
    test_input_gradient();
    return CHECK_REPORT();
}
