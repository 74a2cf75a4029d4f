/* quant.h: Brevitas-semantics integer quantizers (REFERENCE.md section 2).
 *
 * A quantizer maps x to integer codes q = clamp(rint(x / s), qmin, qmax)
 * (rint: round half to even, float32 division) and its fake-quant output is
 * y = s * q.  The scale is s = T / int_threshold, where T is a threshold:
 *   QF_QUANT_CONST   T fixed (CommonWeightQuant, CommonActQuant: T = 1);
 *   QF_QUANT_ABSMAX  T = max|w| recomputed every forward (Int8WeightPerTensorFloat);
 *   QF_QUANT_LEARNED T = the 99.999th percentile of |x| for the first
 *                    stats_steps training forwards, then a learned parameter
 *                    initialised from their running average
 *                    (Int8ActPerTensorFloat, Uint8ActPerTensorFloat).
 * T and s are clamped below at QF_SCALE_MIN, as Brevitas's scaling_min_val.
 *
 * Integer ranges at b bits:
 *   signed, narrow:   [-(2^(b-1) - 1), 2^(b-1) - 1], int_threshold 2^(b-1) - 1
 *   signed:           [-2^(b-1),       2^(b-1) - 1], int_threshold 2^(b-1)
 *   unsigned:         [0, 2^b - 1 - narrow],         int_threshold 2^b - 1 - narrow */
#ifndef QF_QUANT_H
#define QF_QUANT_H

#include <stdint.h>
#include "status.h"

#define QF_BITS_MIN 2
#define QF_BITS_MAX 16
#define QF_SCALE_MIN 1e-10f

typedef enum {
    QF_QUANT_NONE = 0,
    QF_QUANT_CONST = 1,
    QF_QUANT_ABSMAX = 2,
    QF_QUANT_LEARNED = 3
} qf_quant_kind;

typedef struct {
    int kind;            /* qf_quant_kind                                        */
    int bits;            /* QF_BITS_MIN..QF_BITS_MAX                             */
    int is_signed;       /* 1: signed codes                                      */
    int narrow;          /* 1: drop the most negative (signed) or largest code   */
    float threshold;     /* CONST: T; LEARNED: initial value of the parameter    */
    int stats_steps;     /* LEARNED: training forwards in the statistics phase   */
    float momentum;      /* LEARNED: running-average momentum (0.1)              */
    float percentile;    /* LEARNED: statistic's percentile of |x| (99.999)      */
} qf_quant_spec;

/* QF_OK, or QF_ERR_ARG with a message in err (err_len bytes) naming the field. */
qf_status qf_quant_spec_check(const qf_quant_spec *spec, char *err, int err_len);

float qf_quant_qmin(const qf_quant_spec *spec);
float qf_quant_qmax(const qf_quant_spec *spec);
float qf_quant_int_threshold(const qf_quant_spec *spec);

/* Round half to even, exactly rintf() in the default rounding mode, written so
 * that compilers vectorise it with any instruction set: for |x| < 2^23 adding
 * and subtracting 2^23 rounds to an integer (ties to even, as 2^23 is even);
 * larger floats are integers already.  The sign is restored (rint(-0.3) = -0). */
static inline float qf_rint(float x)
{
    float a = __builtin_fabsf(x);
    float r = (a + 0x1p23f) - 0x1p23f;
    r = a < 0x1p23f ? r : a;
    return __builtin_copysignf(r, x);
}

/* The one rounding rule of the project: q = clamp(rint(x / s), qmin, qmax).
 * Training, fake-quant inference and the integer circuit all call this, so
 * they agree bit for bit. */
static inline float qf_quantize_value(float x, float s, float qmin, float qmax)
{
    float q = qf_rint(x / s);
    return q < qmin ? qmin : (q > qmax ? qmax : q);
}

/* The one epilogue of a quantized linear/conv output element: acc is the exact
 * integer accumulator sum(q_x * q_w) (any zero-point correction already
 * subtracted), scale = s_x * s_w computed once in float32, bias float.
 * Returns (float)acc * scale + bias, evaluated in float32 without contraction. */
static inline float qf_affine_epilogue(int64_t acc, float scale, float bias)
{
    float a = (float)acc;
    float y = a * scale;
    return y + bias;
}

/* y (n) = s * q and codes (n) = q for q = clamp(rint(x / s), qmin, qmax);
 * with relu, x is replaced by max(x, 0) first.  codes may be NULL. */
void qf_fake_quant_forward(float *y, float *codes, const float *x, int64_t n,
                           float s, float qmin, float qmax, int relu);

/* Straight-through backward of qf_fake_quant_forward for the same x and s.
 * dx (n) += dy * g(x), where g = 1 when clamp_ste (weights: clamp passes the
 * gradient), else 1[qmin <= rint(x'/s) <= qmax], times 1[x > 0] with relu.
 * dx may be NULL.  Returns dL/ds = sum dy * (r - x'/s) over in-range elements
 * plus sum dy * (clamped code) over clamped ones (with clamp_ste every
 * element counts as in range); x' = max(x, 0) with relu. */
double qf_fake_quant_backward(float *dx, const float *dy, const float *x, int64_t n,
                              float s, float qmin, float qmax, int relu, int clamp_ste);

/* Index of the first element of largest |x| (largest max(x, 0) with relu) and
 * that value; n >= 1. */
int64_t qf_abs_argmax(const float *x, int64_t n, int relu, float *value);

/* The statistic of the LEARNED quantizer over n values of |x| (max(x,0) with relu):
 * the k-th smallest, k = floor(percentile / 100 * n + 0.5) clamped to [1, n]
 * (torch.kthvalue as Brevitas uses it).  scratch (n) is overwritten.  index
 * receives the position of the selected element in x. */
float qf_abs_percentile(const float *x, int64_t n, float percentile, int relu,
                        float *scratch, int64_t *index);

#endif
