/* net_internal.h: the layout of qf_net, shared by net.c (construction,
 * shapes, buffers), net_pass.c (forward and backward) and net_train.c
 * (optimizer and epochs).  Not part of the public API. */
#ifndef QF_NET_INTERNAL_H
#define QF_NET_INTERNAL_H

#include "a2q.h"
#include "conv.h"
#include "net.h"
#include "optim.h"
#include "sparse.h"

typedef struct {
    qf_layer_spec spec;
    int64_t in_shape[3], out_shape[3];  /* per sample (C, H, W) under the current input shape */
    int64_t in_size, out_size;          /* their products                                  */
    qf_conv_geom geom;                  /* CONV2D, AVGPOOL2D                               */
    int t_weight, t_bias;               /* LINEAR, CONV2D tensors, -1 if absent            */
    int t_threshold, t_stats_buffer, t_stats_count;   /* LEARNED activation quantizer   */
    int res_end;                        /* ACT_QUANT opening a residual: its RESIDUAL_ADD, else -1 */
    int emits_codes;                    /* may output integer codes (has a codes buffer)   */
    /* weight quantizer, weight viewed as (w_rows, w_cols) = (out channels, fan-in) */
    int64_t w_rows, w_cols;
    float w_qmin, w_qmax, w_int_threshold;
    float *w_scale;                     /* (w_rows) scale per row of the last forward       */
    int w_scale_fixed;                  /* CONST: w_scale, w_argmax hold their lasting values */
    int64_t *w_argmax;                  /* (w_rows) ABSMAX: element that set it, -1 if none */
    float *w_fq;                        /* (w_rows, w_cols) fake-quantized weights          */
    float *w_codes;                     /* (w_rows, w_cols) their integer codes             */
    float *w_codes_t;                   /* (w_cols, w_rows) the codes transposed (batches)  */
    float *dw_fq;                       /* (w_rows, w_cols) gradient w.r.t. w_fq (ABSMAX)   */
    float *epi_scale;                   /* (w_rows) s_x * s_w[o] of the last forward        */
    /* A2Q (spec.accumulator_bits > 0): learned norms g, their lazy initialisation flag */
    int t_norm, t_norm_init;            /* "weight_norm" (w_rows), "weight_norm_init" (1)   */
    double a2q_budget;                  /* T of a2q.h for the input's codes                 */
    qf_a2q_bound a2q_bound;             /* the row quantizer's limits (a2q.h), relax included */
    int a2q_in_bits, a2q_in_signed;     /* N and sign of the input codes                    */
    qf_a2q_row *a2q_rows;               /* (w_rows) what the last forward left per row      */
    int codes_fit_f32;                  /* integer sums exact in float32                   */
    /* activation quantizer (ACT_QUANT; RESIDUAL_ADD uses its begin layer's) */
    float a_qmin, a_qmax, a_int_threshold;
    float a_scale;                      /* scale of the last forward                        */
    int a_stats_phase;                  /* last training forward used batch statistics      */
    int64_t a_argmax;                   /* statistics phase: selected element, -1 if none   */
    double res_dscale;                  /* RESIDUAL_ADD: dL/ds of its quantization          */
    /* what the last forward saw and produced */
    int in_codes;                       /* input carried integer codes                      */
    float in_scale;                     /* their scale                                      */
    int out_codes;                      /* output carries integer codes                     */
    float out_scale;
    /* batch buffers (batch_cap samples) */
    float *out, *dout;                  /* (cap, out_size)                                  */
    float *codes;                       /* (cap, out_size) when emits_codes                 */
    float *cols, *col_codes, *dcols;    /* CONV2D: (cap * P, K) patches, codes, gradients   */
    int cols_from_codes;                /* CONV2D: the weight gradient reads in_scale x     */
                                        /*   col_codes instead of cols (net_conv.c)        */
    float *gemm_out;                    /* CONV2D: (cap * P, OC) product before transposing */
    float *w_t, *dw_t;                  /* CONV2D: (w_cols, w_rows) weights used, transposed,
                                           and the batch's weight gradient (net_conv.c)    */
    float *skip_grad;                   /* RESIDUAL_ADD: (cap, out_size)                    */
    int sparse_pass;                    /* LINEAR: the last forward ran over the packed
                                           kept weights (net_packed.c), so does its backward */
    /* BATCHNORM2D (net_batchnorm.c); a LINEAR/CONV2D may fold the one after it */
    int t_gamma, t_beta;                /* "weight", "bias" parameters, -1 without affine  */
    int t_running_mean, t_running_var, t_batches;  /* buffers, -1 without running stats   */
    float *bn_mean, *bn_var, *bn_invstd; /* (C) the last batch-statistics forward's       */
    float *bn_k, *bn_fold_bias;         /* (C) eval factor; bias of the epilogue folded in  */
    float *xhat;                        /* (cap, out_size) normalised input                 */
    int bn_batch_stats;                 /* the last forward normalised with batch statistics */
    int fold_bn;                        /* LINEAR, CONV2D: index of the eval BatchNorm2d
                                           folded into this forward's epilogue, else -1      */
    int32_t *argmax;                    /* MAXPOOL2D: (cap, out_size) flat input index,
                                           carved from act_storage (float-sized slots)      */
} qf_layer;

/* A pruned parameter's kept entries, packed in CSR order (net_packed.c).
 * Outside qf_net_train_epoch the dense arrays of the tensor are the truth;
 * during an epoch the packed value and optimizer state are, and the dense
 * data is brought up to date when a dense kernel needs it and at the end. */
typedef struct {
    qf_csr csr;                         /* kept entries of the tensor as (rows, cols)     */
    float *value, *m, *v, *grad;        /* (nnz) packed data, opt_m, opt_v and gradient    */
    float *codes, *fq;                  /* (nnz) weight quantizer output (sparse passes)   */
    float *codes_mirror;                /* (nnz) the codes the layer's w_codes_t holds     */
    int codes_t_valid;                  /* w_codes_t mirrors codes_mirror                 */
    int data_stale;                     /* the dense data lags value                      */
    int dense_grad_zero;                /* the dense grad is known to be all 0            */
} qf_packed;

struct qf_net {
    int n_layers;
    qf_layer *layers;
    int n_tensors;
    qf_tensor *tensors;
    float *storage;                     /* every tensor's data, grad, opt_m, opt_v          */
    float *layer_storage;               /* weight quantizer caches                          */
    int64_t in_shape[3];                /* current sample shape (H = W = 0: not set yet)    */
    int shapes_known;
    int training;
    qf_rng init_rng, shuffle_rng;
    qf_optimizer opt;
    /* batch buffers, grown on demand outside the kernels */
    int64_t batch_cap;
    int buffers_stale;                  /* shapes changed since the buffers were sized      */
    float *act_storage;
    float *x;                           /* (batch_cap, in_size) input of the last forward    */
    float *scratch;                     /* (batch_cap * max layer size) for percentiles     */
    int32_t *labels;                    /* (batch_cap)                                      */
    int64_t last_n;                     /* samples in the last forward                      */
    int have_train_forward;             /* activations of a training forward are kept       */
    int64_t *perm;                      /* (perm_cap) epoch shuffle                          */
    int64_t perm_cap;
    qf_packed **packed;                 /* (n_tensors): masked parameters, else NULL      */
    int packed_live;                    /* inside qf_net_train_epoch: packed state is truth */
    char err[256];
};

/* net.c */
/* Batch buffers above this many bytes shrink when a batch under a quarter of
 * their capacity comes, and after a backward (qf_net_trim_buffers). */
#ifndef QF_NET_KEEP_BYTES
#define QF_NET_KEEP_BYTES (64 << 20)
#endif
const char *qf_net_kind_name(int kind);                 /* "Linear", "Conv2d" ...  */
qf_status qf_net_prepare(qf_net *net, int64_t n);      /* buffers for n samples */
void qf_net_free_buffers(qf_net *net);                 /* batch buffers only */
int64_t qf_net_sample_floats(const qf_net *net);       /* batch buffer floats per sample */
int64_t qf_net_cur_in_size(const qf_net *net);
/* net_pass.c */
void qf_net_forward_layers(qf_net *net, int64_t n);
/* dx (n, in_size): gradient w.r.t. the input, or NULL when not wanted */
void qf_net_backward_layers(qf_net *net, int64_t n, float *dx);
qf_status qf_net_check_finite(qf_net *net, const float *x, int64_t count);
float qf_net_weight_scales(const qf_layer *L, const float *w, float *scale, int64_t *argmax);
float qf_net_learned_eval_threshold(const qf_net *net, const qf_layer *L);
float qf_net_clamp_scale(float threshold, float int_threshold);
/* codes and fq (may be NULL) (w_rows, w_cols) of A2Q layer L for weights w and
 * scales (w_rows: read for a constant scale, written for abs-max); rows (w_rows,
 * may be NULL) receive the state for the backward; the first training call
 * initialises the norms g. */
void qf_net_a2q_quantize(qf_net *net, qf_layer *L, const float *w, float *fq, float *codes,
                         float *scale, qf_a2q_row *rows);
/* the weight quantizer's forward (w_scale, w_fq, w_codes from w) and backward
 * (w->grad += the straight-through gradient of dw_fq, plus the scale's) */
void qf_net_quantize_weights(qf_layer *L, const float *w);
void qf_net_weight_quant_backward(qf_layer *L, qf_tensor *w);
/* the same for any weight quantizer, A2Q included: w_fq, w_codes, w_scale of L from
 * w; and w->grad (A2Q: and its norms') from dw_fq */
void qf_net_weights_forward(qf_net *net, qf_layer *L, const float *w);
void qf_net_weights_backward(qf_net *net, qf_layer *L, qf_tensor *w);
/* net_conv.c: a Conv2d layer's passes; din (n, in_size) or NULL */
void qf_net_forward_conv(qf_net *net, qf_layer *L, const float *in, const float *in_codes,
                         int64_t n);
void qf_net_backward_conv(qf_net *net, qf_layer *L, float *din, int64_t n);
/* net_batchnorm.c: BatchNorm2d layers in the network */
#define QF_BN_CACHE_PER_CHANNEL 5       /* floats of a BatchNorm2d's per-channel cache     */
/* Point L's per-channel arrays into cache (QF_BN_CACHE_PER_CHANNEL * C floats);
 * returns the end. */
float *qf_net_bn_place_cache(qf_layer *L, float *cache);
void qf_net_bn_init(qf_net *net, qf_layer *L);
int qf_net_bn_uses_running(const qf_net *net, const qf_layer *L);
/* Whether layer i (LINEAR / CONV2D from codes, quantized weights) folds the eval
 * BatchNorm2d after it into its epilogue this forward: its index, else -1. */
int qf_net_bn_fold_target(const qf_net *net, int i, int from_codes);
/* epi_scale (w_rows) of L scaled by the folded BatchNorm2d's k; returns the bias
 * (w_rows) to use instead of b (b NULL: no bias). */
const float *qf_net_bn_fold(qf_net *net, qf_layer *L, const float *b);
void qf_net_bn_forward(qf_net *net, int i, const float *in, const float *in_codes, int64_t n);
void qf_net_bn_backward(qf_net *net, qf_layer *L, float *din, int64_t n);
/* QF_ERR_SHAPE when a batch of n samples would give a BatchNorm2d that
 * normalises with batch statistics (training, or no running statistics) a
 * single value per channel (torch refuses it too). */
qf_status qf_net_bn_check_batch(qf_net *net, int64_t n, int training);
/* AdamW coefficients of the last two step counts asked for (step -1: none yet):
 * a step usually meets two counts, the weights' and the learned thresholds'
 * (300 behind), and each costs two pow() calls to compute. */
typedef struct {
    qf_adamw_coeffs c[2];
    int64_t step[2];
    int next;                           /* the slot to replace next                        */
} qf_coeff_cache;
/* net_train.c: one optimizer update of p, m, v (n) from g (n), mask (n) or NULL,
 * at the tensor's own step count `step` (1-based) */
void qf_net_update_params(const qf_net *net, qf_coeff_cache *cache, int64_t step, float *p,
                          float *m, float *v, float *g, const uint8_t *mask, int64_t n);
/* net_guard.c: the state an epoch can roll back to after a divergence */
typedef struct {
    float *values;                      /* every tensor's data, then params' opt_m, opt_v */
    int64_t *steps;                     /* (n_tensors) opt_step                           */
    int64_t opt_step;
} qf_net_checkpoint;
qf_status qf_net_checkpoint_take(qf_net *net, qf_net_checkpoint *ck);  /* outside epochs */
void qf_net_checkpoint_restore(qf_net *net, const qf_net_checkpoint *ck);
void qf_net_checkpoint_free(qf_net_checkpoint *ck);
/* Index of the first tensor whose values (the packed ones during an epoch)
 * hold NaN or infinity, -1 if none. */
int qf_net_first_nonfinite(const qf_net *net);
/* net_packed.c */
qf_status qf_net_packed_set(qf_net *net, int t);       /* (re)build from the mask, or drop */
void qf_net_packed_free(qf_packed *pk);                /* accepts NULL */
void qf_net_packed_begin(qf_net *net);                 /* an epoch starts: pack           */
void qf_net_packed_end(qf_net *net);                   /* it ends: write the dense arrays */
/* The packed weights of L when its pass over rows samples (from integer codes
 * or not) should run over the kept entries, else NULL. */
qf_packed *qf_net_sparse_layer(qf_net *net, const qf_layer *L, int64_t rows, int from_codes);
void qf_net_packed_sync_data(qf_net *net, int t);      /* dense data of tensor t current */
void qf_net_packed_zero_grad(qf_net *net);
void qf_net_packed_step(qf_net *net);

#endif
