/* a2q.h: accumulator-aware weight quantization (A2Q, Colbert, Pappalardo and
 * Petri-Koenig; Brevitas' AccumulatorAwareWeightQuant; REFERENCE.md section 6).
 *
 * One output channel (a weight row v of n entries) with weight scale s:
 *   T = (2^(P-1) - 1) * 2^(signed_in - N)          the L1 budget of the codes
 *   c = min(|g| / s, T)                            g: the learned norm (one per row)
 *   u_i = v_i * c / ||v||_1                        ||u||_1 = c <= T
 *   q_i = clamp(trunc(u_i), qmin, qmax)            round toward zero: |q_i| <= |u_i|
 *   y_i = s * q_i                                  the fake-quantized weight
 * So sum |q_i| <= T, and for any input codes x_i with |x_i| <= 2^(N - signed_in)
 * (every N-bit code: unsigned [0, 2^N - 1], signed [-2^(N-1), 2^(N-1) - 1])
 *   |sum q_i x_i| <= T 2^(N - signed_in) = 2^(P-1) - 1,
 * a P-bit signed accumulator never overflows.  The codes' integer L1 norm is
 * checked against floor(T) after rounding and any excess (float error in
 * v c / ||v||_1, and a 2^-20 relative nudge that keeps values meant to be
 * integers, such as s qmax / s, from truncating to the integer below) comes
 * off the largest codes, one unit at a time.
 *
 * Backward, straight through trunc and clamp (dq/du = 1, as Brevitas'
 * RoundToZeroSte and TensorClampSte), with G_i = s dL/dy_i and
 * D = sum_i G_i v_i / ||v||_1 = dL/dc:
 *   dL/dv_i = (c / ||v||_1) (G_i - sign(v_i) D)
 *   dL/dg   = D sign(g) / s                 while |g| / s < T, else 0
 *   dL/ds   = sum_i dL/dy_i q_i - D |g| / s^2 (the last term while |g| / s < T)
 * (torch autograd of the same formula; tests/test_a2q.py checks it). */
#ifndef QF_A2Q_H
#define QF_A2Q_H

#include <stdint.h>

#define QF_A2Q_BITS_MIN 2
#define QF_A2Q_BITS_MAX 32
#define QF_A2Q_FILL_STEPS 16    /* bisection steps of the filled multiplier (fill below) */

/* The integer budgets of one row's codes (HUGE_VAL: no limit); each is floored:
 *   l1:  sum_i |q_i|                      (Brevitas' A2Q bound, any input sign)
 *   pos: sum_{q_i > 0} q_i,  neg: sum_{q_i < 0} |q_i|   (the split bound below)
 * The split bound, for unsigned input codes x_i in [0, X], X = 2^N - 1: the
 * accumulator sum q_i x_i lies in [-X neg(q), X pos(q)], so
 *   pos <= (2^(P-1) - 1) / X  and  neg <= 2^(P-1) / X
 * keep it in [-2^(P-1), 2^(P-1) - 1] for every input: P signed bits, and up to
 * about twice the L1 mass of T (A2Q+, Colbert et al. 2024, bound the same
 * range with zero-centred weights, ||q||_1 <= (2^P - 2) / X; splitting the two
 * signs needs no centring).  For signed inputs it is the L1 bound T. */
typedef struct {
    double l1, pos, neg;
    int fill;      /* 1: a capped row's multiplier is the largest whose truncated codes fit */
    int round;     /* 1: codes round to nearest (rint) instead of toward zero, and every
                      capped row is filled: k is the largest multiplier whose rounded codes
                      fit the bound (rounding may raise |q_i| above k |v_i|, so the
                      unfilled cap is not a bound by itself); 0: trunc (Brevitas) */
} qf_a2q_bound;

/* The bound of P, N, sign (0/1) and form (split 0: L1 T; 1: split for unsigned
 * inputs, T for signed), every limit multiplied by relax >= 1; round = 0 (the caller
 * sets it for rounded codes). */
qf_a2q_bound qf_a2q_bound_of(int acc_bits, int in_bits, int in_signed, int split, double relax);

/* What the forward of one row leaves for its backward. */
typedef struct {
    double l1;        /* ||v||_1 of the row                                  */
    double c;         /* min(|g| / s, T), the codes' real-valued L1 norm       */
    double k;         /* c / ||v||_1 (0 for an all-zero row)                   */
    int norm_free;    /* |g| / s < T: the learned norm is not clamped          */
    int sel;          /* the norm that sets k: 0 ||v||_1, 1 ||v+||_1, -1 ||v-||_1 */
    double l1_sel;    /* that norm                                            */
    double m;         /* abs-max form: max |v_i|                               */
    int64_t argmax;   /* abs-max form: its index                               */
    double s;         /* abs-max form: the row's scale                         */
} qf_a2q_row;

/* T for accumulator_bits P, input bits N and input sign (0/1). */
double qf_a2q_budget(int acc_bits, int in_bits, int in_signed);

/* codes (n), fq (n, may be NULL) of row v (n) with scale s, norm |g| = g_abs,
 * bound b; fills *row for the backward.  With the split bound, c = min(|g| / s,
 * ...) becomes k = min(|g| / (s ||v||_1), pos / ||v+||_1, neg / ||v-||_1) and
 * u_i = k v_i (a capped row's gradient flows through the norm that caps it:
 * dL/dv_i = k (G_i - [v_i in that sign] sign(v_i) sum_j G_j v_j / that norm)). */
void qf_a2q_forward_row(float *fq, float *codes, qf_a2q_row *row, const float *v, int64_t n,
                        float s, float g_abs, const qf_a2q_bound *b, float qmin, float qmax);

/* dv (n) += dL/dv from dfq = dL/dy (n), for the row's last forward; *dg
 * receives dL/d|g| (to be multiplied by sign(g) by the caller); returns dL/ds. */
double qf_a2q_backward_row(float *dv, double *dg, const float *dfq, const float *v,
                           const float *codes, int64_t n, float s, float g_abs,
                           const qf_a2q_row *row);

/* The abs-max form (weight quantizers with abs-max statistics): the scale is
 * s = |g| m / (t ||v||_1), m = max |v_i|, t = the quantizer's int_threshold,
 * so that |g| / s = t ||v||_1 / m, the L1 norm of the row's abs-max codes
 * t v / m, and A2Q's formula reads
 *   q_i = clamp(trunc(v_i min(t / m, T / ||v||_1)), qmin, qmax),   y_i = s q_i:
 * the plain abs-max codes (truncated) while they fit the budget, else capped
 * at T, and |g| is the L1 norm of the effective weights s u.  Codes never
 * saturate and the learned g sets only the magnitude.  *scale receives s. */
void qf_a2q_forward_row_absmax(float *fq, float *codes, float *scale, qf_a2q_row *row,
                               const float *v, int64_t n, float g_abs, const qf_a2q_bound *b,
                               float int_threshold, float qmin, float qmax);

/* Its backward: dv (n) += dL/dv, *dg = dL/d|g|, for dfq = dL/dy (n). */
void qf_a2q_backward_row_absmax(float *dv, double *dg, const float *dfq, const float *v,
                                const float *codes, int64_t n, float g_abs,
                                float int_threshold, const qf_a2q_row *row);

#endif
