/* test_net_infer.c: eval-mode inference through private workspaces (net_infer.h).
 *
 *   - results equal the serial eval forward of the net, bit for bit, for
 *     batches of one sample and for batches spanning several chunks, on an
 *     MLP (constant, abs-max and learned quantizers, a pruned layer) and on
 *     a small CNN with pooling;
 *   - four threads, each with its own workspace, on one net at once;
 *   - the net's training flag, batch buffers and kept training forward are
 *     untouched (a backward after an inference still uses its forward);
 *   - the workspace stays bounded whatever the batch; big batch buffers of
 *     the net shrink back (qf_net_trim_buffers, qf_net_prepare). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "helpers.h"
#include "net.h"
#include "net_infer.h"
#include "net_internal.h"   /* qf_net_sample_floats, QF_NET_KEEP_BYTES */

static qf_layer_spec layer(int kind)
{
    qf_layer_spec s;
    memset(&s, 0, sizeof s);
    s.kind = kind;
    return s;
}

static qf_layer_spec linear(int in, int out, qf_quant_spec wq)
{
    qf_layer_spec s = layer(QF_LAYER_LINEAR);
    s.in_features = in;
    s.out_features = out;
    s.has_bias = 1;
    s.weight_quant = wq;
    return s;
}

static qf_layer_spec act(qf_quant_spec aq, int relu)
{
    qf_layer_spec s = layer(QF_LAYER_ACT_QUANT);
    s.act_quant = aq;
    s.relu = relu;
    return s;
}

/* QuantIdentity(4) -> QuantLinear(3, 24, const, pruned) -> QuantReLU(learned)
 * -> QuantLinear(24, 24, abs-max) -> ReLU -> Linear(24, 3), trained a little. */
static qf_net *make_mlp(void)
{
    qf_layer_spec specs[6] = {
        act(quant(QF_QUANT_CONST, 4, 1, 0, 2.0f, 0), 0),
        linear(3, 24, quant(QF_QUANT_CONST, 3, 1, 1, 1.0f, 0)),
        act(quant(QF_QUANT_LEARNED, 3, 0, 0, 1.0f, 3), 1),
        linear(24, 24, quant(QF_QUANT_ABSMAX, 4, 1, 1, 1.0f, 0)),
        layer(QF_LAYER_RELU),
        linear(24, 3, quant(QF_QUANT_NONE, 0, 0, 0, 0.0f, 0)),
    };
    qf_net *net = NULL;
    char err[256];
    qf_status st = qf_net_create(&net, specs, 6, 3, 7, err, sizeof err);
    CHECK(st == QF_OK, "mlp: %s", err);
    uint8_t mask[24 * 3];
    for (int i = 0; i < 24 * 3; i++)
        mask[i] = (uint8_t)(i % 3 != 1);
    CHECK(qf_net_set_mask(net, qf_net_find_tensor(net, "1.weight"), mask) == QF_OK, "mask");
    return net;
}

/* QuantIdentity -> QuantConv2d(2 -> 3, 3x3, pad 1) -> QuantReLU -> AvgPool2d(2, pad 1)
 * -> QuantIdentity -> Flatten -> QuantLinear(27, 2), on 2 x 5 x 5 samples. */
static qf_net *make_cnn(void)
{
    qf_layer_spec conv = linear(2, 3, quant(QF_QUANT_ABSMAX, 3, 1, 1, 1.0f, 0));
    conv.kind = QF_LAYER_CONV2D;
    conv.kernel[0] = conv.kernel[1] = 3;
    conv.stride[0] = conv.stride[1] = 1;
    conv.padding[0] = conv.padding[1] = 1;
    conv.per_channel = 1;
    qf_layer_spec pool = layer(QF_LAYER_AVGPOOL2D);
    pool.kernel[0] = pool.kernel[1] = pool.stride[0] = pool.stride[1] = 2;
    pool.padding[0] = pool.padding[1] = 1;
    qf_layer_spec specs[7] = {
        act(quant(QF_QUANT_LEARNED, 5, 1, 0, 1.0f, 2), 0), conv,
        act(quant(QF_QUANT_CONST, 3, 0, 0, 2.0f, 0), 1), pool,
        act(quant(QF_QUANT_CONST, 4, 0, 0, 2.0f, 0), 0), layer(QF_LAYER_RESHAPE),
        linear(27, 2, quant(QF_QUANT_CONST, 3, 1, 1, 1.0f, 0)),
    };
    int64_t shape[3] = {2, 5, 5};
    qf_net *net = NULL;
    char err[256];
    qf_status st = qf_net_create_shaped(&net, specs, 7, shape, 3, err, sizeof err);
    CHECK(st == QF_OK, "cnn: %s", err);
    return net;
}

static void train_a_little(qf_net *net, int64_t in_size, int64_t n)
{
    qf_rng rng;
    qf_rng_seed(&rng, 11, 0);
    float *x = malloc(sizeof(float) * (size_t)(n * in_size));
    int32_t *y = malloc(sizeof(int32_t) * (size_t)n);
    for (int64_t i = 0; i < n * in_size; i++)
        x[i] = uniform(&rng, -2.0f, 2.0f);
    for (int64_t i = 0; i < n; i++)
        y[i] = (int32_t)(i % 2);
    qf_optimizer opt = {QF_OPT_ADAMW, 1e-2f, 0.9f, 0.999f, 1e-8f, 0.01f, 0, 0, 0, 0};
    CHECK(qf_net_set_optimizer(net, &opt) == QF_OK, "optimizer");
    double loss;
    int64_t correct;
    CHECK(qf_net_train_epoch(net, x, y, n, 4, &rng, &loss, &correct) == QF_OK, "epoch: %s",
          qf_net_error(net));
    free(x);
    free(y);
}

typedef struct {
    const qf_net *net;
    const float *x;
    float *out;
    int64_t n, in_size, out_size;
    int repeats;
    qf_status st;
} job;

/* Each thread: its own workspace, single samples then the whole batch. */
static void *run_job(void *arg)
{
    job *j = arg;
    qf_net_infer *ws = qf_net_infer_create();
    j->st = ws ? QF_OK : QF_ERR_NOMEM;
    for (int r = 0; r < j->repeats && j->st == QF_OK; r++) {
        for (int64_t s = 0; s < j->n && j->st == QF_OK; s += 7)
            j->st = qf_net_infer_forward(ws, j->net, j->x + s * j->in_size, 1,
                                         j->out + s * j->out_size);
        if (j->st == QF_OK)
            j->st = qf_net_infer_forward(ws, j->net, j->x, j->n, j->out);
    }
    qf_net_infer_free(ws);
    return NULL;
}

static void check_net(const char *name, qf_net *net, int64_t n)
{
    int64_t in_size = qf_net_in_size(net), out_size = qf_net_out_size(net);
    float *x = malloc(sizeof(float) * (size_t)(n * in_size));
    float *want = malloc(sizeof(float) * (size_t)(n * out_size));
    float *got = malloc(sizeof(float) * (size_t)(n * out_size));
    qf_rng rng;
    qf_rng_seed(&rng, 5, 0);
    for (int64_t i = 0; i < n * in_size; i++)
        x[i] = uniform(&rng, -3.0f, 3.0f);

    /* the reference: the net's own eval forward, one sample at a time */
    qf_net_set_training(net, 0);
    for (int64_t s = 0; s < n; s++)
        CHECK(qf_net_forward(net, x + s * in_size, 1, want + s * out_size) == QF_OK, "%s fwd", name);
    qf_net_set_training(net, 1);

    /* a training forward kept for backward, then inferences in between */
    float *train_out = malloc(sizeof(float) * (size_t)(4 * out_size));
    CHECK(qf_net_forward(net, x, 4, train_out) == QF_OK, "%s train forward", name);
    int64_t held = qf_net_buffer_bytes(net);

    qf_net_infer *ws = qf_net_infer_create();
    CHECK(qf_net_infer_forward(ws, net, x, n, got) == QF_OK, "%s infer: %s", name,
          qf_net_infer_error(ws));
    CHECK(same_bits(got, want, n * out_size), "%s: chunked inference differs from serial", name);
    CHECK(n * qf_net_sample_floats(net) > 2 * QF_INFER_CHUNK_FLOATS,
          "%s: the batch should span several chunks", name);
    CHECK(qf_net_infer_bytes(ws) < (int64_t)sizeof(float) * 2 * QF_INFER_CHUNK_FLOATS,
          "%s: workspace of %lld bytes is not bounded by the chunk", name,
          (long long)qf_net_infer_bytes(ws));
    CHECK(qf_net_training(net) == 1, "%s: inference changed the training flag", name);
    CHECK(qf_net_buffer_bytes(net) == held, "%s: inference resized the net's buffers", name);
    float *dout = calloc((size_t)(4 * out_size), sizeof(float));
    CHECK(qf_net_backward(net, dout, 4) == QF_OK, "%s: backward after inference: %s", name,
          qf_net_error(net));
    free(dout);

    /* four threads at once, each with its own workspace */
    pthread_t threads[4];
    job jobs[4];
    float *outs[4];
    for (int t = 0; t < 4; t++) {
        outs[t] = malloc(sizeof(float) * (size_t)(n * out_size));
        jobs[t] = (job){net, x, outs[t], n, in_size, out_size, 2, QF_OK};
        pthread_create(&threads[t], NULL, run_job, &jobs[t]);
    }
    for (int t = 0; t < 4; t++) {
        pthread_join(threads[t], NULL);
        CHECK(jobs[t].st == QF_OK && same_bits(outs[t], want, n * out_size),
              "%s: thread %d differs from serial (status %d)", name, t, jobs[t].st);
        free(outs[t]);
    }

    /* errors: non-finite input */
    x[3] = NAN;
    CHECK(qf_net_infer_forward(ws, net, x, n, got) == QF_ERR_NONFINITE &&
          strstr(qf_net_infer_error(ws), "NaN"), "%s: NaN input accepted", name);
    qf_net_infer_free(ws);
    qf_net_infer_free(NULL);
    free(train_out);
    free(x);
    free(want);
    free(got);
}

/* A training forward of a big batch holds its buffers until the backward; then
 * they are trimmed, and a small batch shrinks buffers a big one grew. */
static void test_buffers_shrink(void)
{
    qf_net *net = make_mlp();
    int64_t n = (int64_t)QF_NET_KEEP_BYTES / (4 * qf_net_sample_floats(net)) + 64;
    float *x = calloc((size_t)(n * 3), sizeof(float));
    float *out = malloc(sizeof(float) * (size_t)(n * 3));
    float *dout = calloc((size_t)(n * 3), sizeof(float));
    CHECK(qf_net_forward(net, x, n, out) == QF_OK, "big forward");
    CHECK(qf_net_buffer_bytes(net) > QF_NET_KEEP_BYTES, "big buffers held for the backward");
    qf_net_trim_buffers(net);
    CHECK(qf_net_buffer_bytes(net) > QF_NET_KEEP_BYTES, "trim must keep a pending forward");
    CHECK(qf_net_backward(net, dout, n) == QF_OK, "big backward");
    qf_net_trim_buffers(net);
    CHECK(qf_net_buffer_bytes(net) == 0, "trim after backward");
    CHECK(qf_net_forward(net, x, n, out) == QF_OK, "big forward again");
    CHECK(qf_net_forward(net, x, 8, out) == QF_OK, "small forward");
    CHECK(qf_net_buffer_bytes(net) < (1 << 20), "buffers shrank to %lld bytes",
          (long long)qf_net_buffer_bytes(net));
    free(x);
    free(out);
    free(dout);
    qf_net_free(net);
}

int main(void)
{
    qf_net *mlp = make_mlp();
    train_a_little(mlp, 3, 64);
    check_net("mlp", mlp, 3 * QF_INFER_CHUNK_FLOATS / qf_net_sample_floats(mlp));
    qf_net_free(mlp);
    qf_net *cnn = make_cnn();
    train_a_little(cnn, 50, 32);
    check_net("cnn", cnn, 3 * QF_INFER_CHUNK_FLOATS / qf_net_sample_floats(cnn));
    qf_net_free(cnn);
    test_buffers_shrink();
    return CHECK_REPORT();
}
