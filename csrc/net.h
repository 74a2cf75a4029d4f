/* net.h: a sequential network that owns its parameters, gradients,
 * optimizer state and activation buffers, and trains in whole epochs.
 *
 * Tensors are float32, batch-major and C-contiguous.  Every layer sees one
 * sample as a (C, H, W) block (NCHW); fully connected layers use (F, 1, 1).
 * The net keeps a registry of named tensors (parameters and state buffers)
 * that the binding exposes as NumPy views and that save/load walks.
 *
 * Quantized layers follow REFERENCE.md section 2.  A QuantLinear whose input
 * comes from a quantizing activation layer computes its output from integer
 * codes: y = qf_affine_epilogue(sum q_x q_w, s_x * s_w, b), which is exact and
 * identical to the integer circuit's table lookups. */
#ifndef QF_NET_H
#define QF_NET_H

#include <stdint.h>
#include "status.h"
#include "quant.h"
#include "rng.h"

typedef enum {
    QF_LAYER_LINEAR = 1,       /* Linear / QuantLinear (weight_quant.kind != NONE)        */
    QF_LAYER_RELU = 2,         /* ReLU                                                     */
    QF_LAYER_ACT_QUANT = 3,    /* QuantIdentity (relu 0) / QuantReLU (relu 1)              */
    QF_LAYER_CONV2D = 4,       /* Conv2d / QuantConv2d                                     */
    QF_LAYER_AVGPOOL2D = 5,    /* AvgPool2d (count_include_pad)                            */
    QF_LAYER_RESHAPE = 6,      /* Flatten / Reshape: same memory, new (C, H, W)            */
    QF_LAYER_TRANSPOSE = 7,    /* swap two of the sample's dims                            */
    QF_LAYER_RESIDUAL_ADD = 8, /* y = Q(x_begin) + Q(x): closes a residual block           */
    QF_LAYER_BATCHNORM2D = 9,  /* BatchNorm2d over in_features channels (batchnorm.h)      */
    QF_LAYER_MAXPOOL2D = 10    /* MaxPool2d (maxpool.h): padding at most half the kernel   */
} qf_layer_kind;

typedef struct {
    int kind;                   /* qf_layer_kind                                          */
    int in_features;            /* LINEAR: features; CONV2D: in_channels; BATCHNORM2D:
                                   num_features (channels)                                */
    int out_features;           /* LINEAR: features; CONV2D: out_channels                 */
    int has_bias;               /* LINEAR, CONV2D                                         */
    qf_quant_spec weight_quant; /* LINEAR, CONV2D: kind NONE for float weights            */
    int per_channel;            /* LINEAR, CONV2D: one weight scale per output channel    */
    qf_quant_spec act_quant;    /* ACT_QUANT                                              */
    int relu;                   /* ACT_QUANT: ReLU before quantizing                      */
    int kernel[2];              /* CONV2D, AVGPOOL2D, MAXPOOL2D: (KH, KW)                 */
    int stride[2];              /* CONV2D, AVGPOOL2D, MAXPOOL2D                           */
    int padding[2];             /* CONV2D, AVGPOOL2D, MAXPOOL2D                           */
    int shape[3];               /* RESHAPE: target (C, H, W); all 0 = flatten             */
    int dims[2];                /* TRANSPOSE: sample dims to swap, 1..3 (0 is the batch)  */
    int begin;                  /* RESIDUAL_ADD: index of the ACT_QUANT layer whose output
                                   is the skip operand and whose quantizer both share   */
    int accumulator_bits;       /* LINEAR, CONV2D with a weight quantizer: A2Q (a2q.h), the
                                   accumulator budget P in 2..32 for the input's codes; 0: off */
    int accumulator_split;      /* A2Q: 1 bounds the positive and negative codes apart for
                                   unsigned inputs (a2q.h's split bound); 0: L1 (Brevitas) */
    int accumulator_round;      /* A2Q: 1 rounds the codes to nearest within the bound
                                   (a2q.h's round); 0: toward zero (Brevitas)             */
    float eps;                  /* BATCHNORM2D: added to the variance (> 0)              */
    float momentum;             /* BATCHNORM2D: running statistics factor in [0, 1], or
                                   < 0 for a cumulative average (torch momentum=None)    */
    int affine;                 /* BATCHNORM2D: trained weight (gamma) and bias (beta)   */
    int track_running_stats;    /* BATCHNORM2D: keep running statistics, used in eval    */
    int groups;                 /* CONV2D: channel groups (torch's groups; 0 or 1: none);
                                   weight (out, in / groups, KH, KW)                      */
} qf_layer_spec;

typedef enum {
    QF_TENSOR_PARAM = 1,        /* trained: has grad and optimizer state        */
    QF_TENSOR_BUFFER = 2        /* state that is not trained (statistics)       */
} qf_tensor_kind;

#define QF_NAME_LEN 48

typedef struct {
    char name[QF_NAME_LEN];     /* "1.weight", "1.bias", "2.act_quant.threshold" */
    int kind;                   /* qf_tensor_kind                               */
    int layer;                  /* owning layer index                           */
    int ndim;
    int64_t shape[4];
    int64_t size;
    float *data;                /* (size), owned by the net's storage           */
    float *grad;                /* (size) PARAM only, else NULL                 */
    float *opt_m;               /* (size) PARAM only: Adam m / SGD momentum     */
    float *opt_v;               /* (size) PARAM only: Adam v                    */
    uint8_t *mask;              /* (size) or NULL: 0 = pruned, held at exactly 0 */
    int64_t opt_step;           /* PARAM only: optimizer steps this tensor took (its
                                   own bias correction and first momentum, as torch) */
} qf_tensor;

typedef enum { QF_OPT_NONE = 0, QF_OPT_ADAMW = 1, QF_OPT_SGD = 2 } qf_opt_kind;

typedef struct {
    int kind;                   /* qf_opt_kind                                  */
    float lr;
    float beta1, beta2, eps;    /* AdamW                                        */
    float weight_decay;         /* AdamW: decoupled; SGD: L2 added to the grad  */
    float momentum, dampening;  /* SGD                                          */
    int nesterov;               /* SGD                                          */
    int64_t step;               /* steps taken so far (qf_net_step calls)       */
} qf_optimizer;

typedef struct qf_net qf_net;

/* Create a net of n_layers layers for samples of in_size features, drawing
 * the initial parameters from seed (PyTorch's default Linear init:
 * weight, bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))).  On failure *out is
 * NULL and err (err_len bytes) says which layer and why. */
qf_status qf_net_create(qf_net **out, const qf_layer_spec *specs, int n_layers,
                        int64_t in_size, uint64_t seed, char *err, int err_len);
/* The same for samples of shape (C, H, W); H = W = 0 leaves the spatial size
 * to be set by the first qf_net_set_input_shape (parameters never depend on it). */
qf_status qf_net_create_shaped(qf_net **out, const qf_layer_spec *specs, int n_layers,
                               const int64_t in_shape[3], uint64_t seed, char *err, int err_len);
void qf_net_free(qf_net *net);             /* accepts NULL */

/* Set the (C, H, W) of input samples, checking every layer against it
 * (QF_ERR_SHAPE with a message naming the layer).  Forward and training use
 * the current shape; in_size/out_size follow it. */
qf_status qf_net_set_input_shape(qf_net *net, int64_t c, int64_t h, int64_t w);
void qf_net_input_shape(const qf_net *net, int64_t shape[3]);
void qf_net_output_shape(const qf_net *net, int64_t shape[3]);
/* Per-sample (C, H, W) of each layer's output under the current input shape. */
void qf_net_layer_output_shape(const qf_net *net, int layer, int64_t shape[3]);

/* The last detailed error message of a call on net ("" if none). */
const char *qf_net_error(const qf_net *net);

int qf_net_n_layers(const qf_net *net);
const qf_layer_spec *qf_net_layer_spec(const qf_net *net, int layer);
int64_t qf_net_in_size(const qf_net *net);
int64_t qf_net_out_size(const qf_net *net);
int qf_net_n_tensors(const qf_net *net);
qf_tensor *qf_net_tensor(qf_net *net, int index);
int qf_net_find_tensor(const qf_net *net, const char *name);   /* -1 if absent */

void qf_net_set_training(qf_net *net, int training);
int qf_net_training(const qf_net *net);

/* Fill tensor `index` with U[a, b) from the net's initialisation stream. */
qf_status qf_net_init_uniform(qf_net *net, int index, float a, float b);

/* Forward pass of n samples x (n, in_size) -> out (n, out_size).  In training
 * mode the activations are kept for qf_net_backward and the learned
 * quantizers' statistics advance.  Checks x for NaN/infinity. */
qf_status qf_net_forward(qf_net *net, const float *x, int64_t n, float *out);

/* Softmax cross-entropy (mean over the batch) of the last training forward
 * against labels (n, the last forward's sample count), then backward: gradients are ADDED to the parameters'
 * grad buffers.  loss receives the mean loss, n_correct the argmax hits. */
qf_status qf_net_backward_ce(qf_net *net, const int32_t *labels, int64_t n, double *loss,
                             int64_t *n_correct);

/* Backward from a caller-supplied gradient of the last forward's output
 * dout (n, out_size); gradients are added as above. */
qf_status qf_net_backward(qf_net *net, const float *dout, int64_t n);
/* The same two, also writing the gradient with respect to the last forward's
 * input into dx (n, in_size) (straight through the quantizers). */
qf_status qf_net_backward_dx(qf_net *net, const float *dout, int64_t n, float *dx);
qf_status qf_net_backward_ce_dx(qf_net *net, const int32_t *labels, int64_t n, double *loss,
                                int64_t *n_correct, float *dx);

void qf_net_zero_grad(qf_net *net);
qf_status qf_net_set_optimizer(qf_net *net, const qf_optimizer *opt);
const qf_optimizer *qf_net_optimizer(const qf_net *net);
void qf_net_set_optimizer_step(qf_net *net, int64_t step);
/* Change the learning rate of the current optimizer, keeping its state (schedules). */
qf_status qf_net_set_learning_rate(qf_net *net, float lr);
/* One optimizer update of every parameter from its grad; masked entries stay 0.
 * Each tensor counts its own steps (opt_step): a learned activation threshold
 * has no gradient during its statistics phase and takes no step then (no
 * decay, no momentum), as torch skips a parameter whose grad is None. */
qf_status qf_net_step(qf_net *net);
/* Whether the next qf_net_step updates tensor `index` (see above). */
int qf_net_tensor_in_step(const qf_net *net, int index);

/* Install (mask non-NULL) or drop (NULL) the pruning mask of tensor `index`;
 * masked entries of data, grad and optimizer state are set to 0 at once. */
qf_status qf_net_set_mask(qf_net *net, int index, const uint8_t *mask);

/* One training epoch: shuffle x (n, in_size), y (n) with rng, then for every
 * mini-batch of batch_size (the last may be smaller): forward, softmax
 * cross-entropy, backward, optimizer step, zero_grad.  loss_sum receives the
 * sum of per-sample losses and n_correct the training-mode argmax hits.
 * QF_ERR_DIVERGED when a batch's loss or, after a step, a parameter or
 * statistic is NaN or infinite: the net is then left exactly as after the
 * last finite step (the message names the step and the tensor; see
 * net_guard.c for how this costs a finite epoch one copy and one pass). */
qf_status qf_net_train_epoch(qf_net *net, const float *x, const int32_t *y, int64_t n,
                             int64_t batch_size, qf_rng *rng, double *loss_sum,
                             int64_t *n_correct);

/* Scale of an activation quantizer layer as eval mode would use it now, and
 * of a QuantLinear's weight quantizer for the current weights. */
qf_status qf_net_act_scale(const qf_net *net, int layer, float *scale);
/* scale (out_channels): one value per output channel, all equal for a
 * per-tensor quantizer. */
qf_status qf_net_weight_scale(const qf_net *net, int layer, float *scale);

/* codes (out_channels * fan-in) and scale (out_channels) of a quantized
 * weight layer's current weights, as an eval-mode forward uses them (A2Q
 * included).  QF_ERR_ARG if the layer has no weight quantizer. */
qf_status qf_net_weight_codes(qf_net *net, int layer, float *codes, float *scale);
/* Whether the A2Q budget is active (P > 0) for layer: then *budget = T (a2q.h),
 * *in_bits, *in_signed describe the input codes it was derived from. */
int qf_net_a2q_budget(const qf_net *net, int layer, double *budget, int *in_bits, int *in_signed);

/* Change an A2Q layer's accumulator budget P (2..32) between steps; relax >= 1
 * multiplies its L1 budget T (training schedules that tighten it gradually end
 * with relax = 1, where the guarantee holds).  The layer must have been
 * created with accumulator_bits > 0.  QF_ERR_ARG otherwise. */
qf_status qf_net_set_accumulator_bits(qf_net *net, int layer, int bits, double relax);
/* Heap bytes of the batch buffers (activations kept for backward) now held. */
int64_t qf_net_buffer_bytes(const qf_net *net);
/* Free the batch buffers when they exceed QF_NET_KEEP_BYTES (64 MB) and hold
 * no training forward awaiting its backward; the next pass sizes them again. */
void qf_net_trim_buffers(qf_net *net);

/* Random streams, readable and writable so save/load resumes exactly. */
qf_rng *qf_net_init_rng(qf_net *net);
qf_rng *qf_net_shuffle_rng(qf_net *net);

#endif
