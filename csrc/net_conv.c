/* net_conv.c: forward and backward of a Conv2d / QuantConv2d layer as
 * matrix products (gemm.h) over the patches of the whole batch.
 *
 * Shapes, for n samples, P = OH * OW positions, G groups, OC output
 * channels (OCg = OC / G per group), Kt = C * KH * KW taps of a patch and
 * Kg = Kt / G taps per group (the weight is (OC, C / G, KH, KW) = (OC, Kg)):
 *   cols    (n P, Kt)   patches (im2col); group g owns columns g Kg ..
 *   col_codes (n P, Kt) patches of input codes, when the input has them
 *   w_t     (Kg, OC)    the weights used, transposed (codes: w_codes_t)
 *   gemm_out (n P, OC)  forward: the products; backward: dout transposed
 *   dcols   (n P, Kt)   input gradient patches, scattered back (col2im); from 64
 *                       positions up (n, Kt, P), per sample transposed (col2im_t)
 *   dw_t    (Kg, OC)    weight gradient of the batch, transposed
 *
 * forward   gemm_out[:, g]  = cols[:, g] w_t[:, g]        (sum over Kg taps)
 * input     dcols[:, g]     = dout_t[:, g] w[g]           (sum over OCg channels)
 *           (or per sample s: w[g]^T dout[s, g], the same sums transposed)
 * weight    dw_t[:, g]      = cols[:, g]^T dout_t[:, g]   (sum over the n P rows)
 *
 * Every sum runs in gemm.h's fixed order, so results do not depend on the
 * instruction set or on how the batch is split.  From integer codes (a
 * quantizer upstream, sums exact in float32) the forward gives the exact
 * integer sums the integer circuit computes, then qf_affine_epilogue.  A
 * pruned weight is used as its dense array, whose pruned entries are 0:
 * their products add +-0, which changes no sum (a running sum that starts at
 * +0 never becomes -0), so skipping them would give the same bits. */
#include <string.h>
#include "gemm.h"
#include "net_internal.h"
#include "quant.h"

/* out (n, OC, P) from the products (n P, OC): + bias, or the epilogue of
 * the integer sums with scale epi (OC). */
static void conv_epilogue(float *out, const float *prod, const float *b, const float *epi,
                          int64_t n, int64_t p, int64_t oc)
{
    for (int64_t s = 0; s < n; s++)
        for (int64_t o = 0; o < oc; o++) {
            float bias = b ? b[o] : 0.0f;
            const float *src = prod + s * p * oc + o;
            float *dst = out + (s * oc + o) * p;
            if (epi) {
                for (int64_t j = 0; j < p; j++)
                    dst[j] = qf_affine_epilogue((int64_t)src[j * oc], epi[o], bias);
            } else if (b) {
                for (int64_t j = 0; j < p; j++)
                    dst[j] = src[j * oc] + bias;
            } else {
                for (int64_t j = 0; j < p; j++)
                    dst[j] = src[j * oc];
            }
        }
}

/* Integer sums too wide for float32: each in double (exact below 2^53),
 * then the epilogue; out (n, OC, P). */
static void conv_codes_wide(float *out, const float *col_codes, const float *w_codes,
                            const float *b, const qf_layer *L, int64_t n, int64_t p)
{
    int64_t oc = L->w_rows, kg = L->w_cols, groups = L->spec.groups > 1 ? L->spec.groups : 1;
    int64_t kt = kg * groups, ocg = oc / groups;
    for (int64_t s = 0; s < n; s++)
        for (int64_t o = 0; o < oc; o++)
            for (int64_t j = 0; j < p; j++) {
                const float *x = col_codes + (s * p + j) * kt + o / ocg * kg;
                const float *w = w_codes + o * kg;
                double acc = 0.0;
                for (int64_t t = 0; t < kg; t++)
                    acc += (double)x[t] * (double)w[t];
                out[(s * oc + o) * p + j] = qf_affine_epilogue((int64_t)acc, L->epi_scale[o],
                                                               b ? b[o] : 0.0f);
            }
}

void qf_net_forward_conv(qf_net *net, qf_layer *L, const float *in, const float *in_codes,
                         int64_t n)
{
    const qf_conv_geom *g = &L->geom;
    int64_t p = g->oh * g->ow, kg = L->w_cols, oc = L->w_rows, rows = n * p;
    int64_t groups = L->spec.groups > 1 ? L->spec.groups : 1, kt = kg * groups;
    int64_t ocg = oc / groups;
    int quantized = L->spec.weight_quant.kind != QF_QUANT_NONE;
    int use_codes = in_codes && quantized;
    for (int64_t s = 0; s < n; s++)
        qf_im2col((use_codes ? L->col_codes : L->cols) + s * p * kt,
                  (use_codes ? in_codes : in) + s * L->in_size, g);
    /* the float patches the weight gradient reads: every layer that emits codes
     * outputs s q (quant.c), so s times the patches of codes are those bits
     * (padding: s (+0) = +0); the backward makes them inside its product */
    L->cols_from_codes = use_codes;
    L->sparse_pass = 0;
    qf_net_packed_sync_data(net, L->t_weight);
    const float *w = net->tensors[L->t_weight].data;
    const float *b = L->t_bias >= 0 ? net->tensors[L->t_bias].data : NULL;
    if (quantized)
        qf_net_weights_forward(net, L, w);
    const float *x = L->cols, *wt = L->w_t;
    if (use_codes) {
        for (int64_t o = 0; o < oc; o++)
            L->epi_scale[o] = L->in_scale * L->w_scale[o];
        b = qf_net_bn_fold(net, L, b);   /* an eval BatchNorm2d after it (net_batchnorm.c) */
        if (!L->codes_fit_f32) {
            conv_codes_wide(L->out, L->col_codes, L->w_codes, b, L, n, p);
            return;
        }
        x = L->col_codes;
        wt = L->w_codes_t;
        qf_transpose2d(L->w_codes_t, L->w_codes, oc, kg);
        if (net->packed[L->t_weight])   /* no longer what the packed path mirrors */
            net->packed[L->t_weight]->codes_t_valid = 0;
    } else {
        qf_transpose2d(L->w_t, quantized ? L->w_fq : w, oc, kg);
    }
    for (int64_t gi = 0; gi < groups; gi++)
        (use_codes ? qf_gemm_exact : qf_gemm)(L->gemm_out + gi * ocg, oc, x + gi * kg, kt, 1,
                                               wt + gi * ocg, oc, rows, ocg, kg, 0);
    conv_epilogue(L->out, L->gemm_out, b, use_codes ? L->epi_scale : NULL, n, p, oc);
}

/* dst (OC, Kg) += src (Kg, OC) transposed. */
static void add_transposed(float *restrict dst, const float *restrict src, int64_t oc, int64_t kg)
{
    for (int64_t o = 0; o < oc; o++)
        for (int64_t t = 0; t < kg; t++)
            dst[o * kg + t] += src[t * oc + o];
}

/* The input gradient: from 64 positions up, per sample as the transposed
 * patches (Kt, P) = w^T dout, whose scatter reads each tap's row contiguously
 * (col2im_t); below, as one product over the batch's n P rows, whose rows are
 * then the wider operand.  The same sums in the same order either way (gemm.h,
 * conv.h): the same bits. */
#define TRANSPOSED_MIN_POSITIONS 64

void qf_net_backward_conv(qf_net *net, qf_layer *L, float *din, int64_t n)
{
    const qf_conv_geom *g = &L->geom;
    int64_t p = g->oh * g->ow, kg = L->w_cols, oc = L->w_rows, rows = n * p;
    int64_t groups = L->spec.groups > 1 ? L->spec.groups : 1, kt = kg * groups;
    int64_t ocg = oc / groups;
    qf_tensor *w = &net->tensors[L->t_weight];
    int kind = L->spec.weight_quant.kind;
    const float *wused = kind == QF_QUANT_NONE ? w->data : L->w_fq;
    float *dout_t = L->gemm_out;
    for (int64_t s = 0; s < n; s++)   /* dout (OC, P) -> (P, OC) */
        qf_transpose2d(dout_t + s * p * oc, L->dout + s * L->out_size, oc, p);
    if (din)
        memset(din, 0, sizeof(float) * (size_t)(n * L->in_size));
    if (din && p < TRANSPOSED_MIN_POSITIONS) {   /* dcols (n P, Kt), then its scatter */
        for (int64_t gi = 0; gi < groups; gi++)
            qf_gemm(L->dcols + gi * kg, kt, dout_t + gi * ocg, oc, 1, wused + gi * ocg * kg, kg,
                    rows, kg, ocg, 0);
        for (int64_t s = 0; s < n; s++)
            qf_col2im(din + s * L->in_size, L->dcols + s * p * kt, g);
    } else if (din) {   /* per sample: dcols_t (Kt, P) = w^T dout, then its scatter */
        for (int64_t s = 0; s < n; s++) {
            float *dcols_t = L->dcols + s * p * kt;
            const float *dout = L->dout + s * L->out_size;
            for (int64_t gi = 0; gi < groups; gi++)
                qf_gemm(dcols_t + gi * kg * p, p, wused + gi * ocg * kg, 1, kg,
                        dout + gi * ocg * p, p, kg, p, ocg, 0);
            qf_col2im_t(din + s * L->in_size, dcols_t, g);
        }
    }
    for (int64_t gi = 0; gi < groups; gi++) {
        if (L->cols_from_codes)
            qf_gemm_scaled_a(L->dw_t + gi * ocg, oc, L->col_codes + gi * kg, 1, kt,
                             L->in_scale, dout_t + gi * ocg, oc, kg, ocg, rows, 0);
        else
            qf_gemm(L->dw_t + gi * ocg, oc, L->cols + gi * kg, 1, kt, dout_t + gi * ocg, oc, kg,
                    ocg, rows, 0);
    }
    if (L->t_bias >= 0) {
        float *db = net->tensors[L->t_bias].grad;
        for (int64_t r = 0; r < rows; r++)
            for (int64_t o = 0; o < oc; o++)
                db[o] += dout_t[r * oc + o];
    }
    if (kind == QF_QUANT_NONE || (kind == QF_QUANT_CONST && L->spec.accumulator_bits <= 0)) {
        add_transposed(w->grad, L->dw_t, oc, kg);   /* float, or straight through: dW = dW_fq */
    } else {   /* abs-max scale or A2Q: through the weight quantizer's backward */
        memset(L->dw_fq, 0, sizeof(float) * (size_t)(oc * kg));
        add_transposed(L->dw_fq, L->dw_t, oc, kg);
        qf_net_weights_backward(net, L, w);
    }
    if (w->mask && !net->packed_live)   /* a pruned weight's gradient is 0 */
        for (int64_t j = 0; j < w->size; j++)
            w->grad[j] = w->mask[j] ? w->grad[j] : 0.0f;
}
