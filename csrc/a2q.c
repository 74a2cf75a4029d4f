/* a2q.c: accumulator-aware weight quantization of one weight row (a2q.h).
 * Sums run over 8 float lanes in a fixed order (then in double), so that
 * they vectorise and give the same result on every instruction set. */
#include <math.h>
#include "a2q.h"
#include "dispatch.h"

enum { LANES = 8 };

double qf_a2q_budget(int acc_bits, int in_bits, int in_signed)
{
    return (ldexp(1.0, acc_bits - 1) - 1.0) * ldexp(1.0, (in_signed ? 1 : 0) - in_bits);
}

static double reduce(const float lane[LANES])
{
    double sum = 0.0;
    for (int j = 0; j < LANES; j++)
        sum += lane[j];
    return sum;
}

/* sum |v_i| over n values */
static double l1_norm(const float *restrict v, int64_t n)
{
    float lane[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++)
            lane[j] += __builtin_fabsf(v[i + j]);
    for (; i < n; i++)
        lane[i % LANES] += __builtin_fabsf(v[i]);
    return reduce(lane);
}

static void truncated_codes(float *codes, const float *v, int64_t n, double multiplier,
                            double budget, float qmin, float qmax);

QF_MULTIVERSION
void qf_a2q_forward_row(float *fq, float *codes, qf_a2q_row *row, const float *v, int64_t n,
                        float s, float g_abs, double budget, float qmin, float qmax)
{
    double l1 = l1_norm(v, n);
    double ratio = (double)g_abs / (double)s;
    row->l1 = l1;
    row->norm_free = ratio < budget;
    row->c = row->norm_free ? ratio : budget;
    row->k = l1 > 1e-20 ? row->c / l1 : 0.0;      /* an all-zero row stays 0 */
    truncated_codes(codes, v, n, row->k, budget, qmin, qmax);
    if (fq)
        for (int64_t i = 0; i < n; i++)
            fq[i] = s * codes[i];
}

QF_MULTIVERSION
void qf_a2q_forward_row_absmax(float *fq, float *codes, float *scale, qf_a2q_row *row,
                               const float *v, int64_t n, float g_abs, double budget,
                               float int_threshold, float qmin, float qmax)
{
    double l1 = l1_norm(v, n), m = 0.0;
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++)
        if (fabs((double)v[i]) > m) {
            m = fabs((double)v[i]);
            k = i;
        }
    row->l1 = l1;
    row->m = m;
    row->argmax = k;
    int live = l1 > 1e-20 && m > 0.0;
    double t = int_threshold;
    row->norm_free = live && t / m <= budget / l1;      /* the abs-max codes fit */
    row->k = !live ? 0.0 : (row->norm_free ? t / m : budget / l1);
    row->c = row->k * l1;
    double s = live ? (double)g_abs * m / (t * l1) : 1.0;
    row->s = s > 1e-10 ? s : 1e-10;                     /* QF_SCALE_MIN */
    *scale = (float)row->s;
    truncated_codes(codes, v, n, row->k, budget, qmin, qmax);
    if (fq)
        for (int64_t i = 0; i < n; i++)
            fq[i] = *scale * codes[i];
}

QF_MULTIVERSION
void qf_a2q_backward_row_absmax(float *dv, double *dg, const float *dfq, const float *v,
                                const float *codes, int64_t n, float g_abs,
                                float int_threshold, const qf_a2q_row *row)
{
    float lane_d[LANES] = {0}, lane_s[LANES] = {0};
    for (int64_t i = 0; i < n; i++) {
        lane_d[i % LANES] += dfq[i] * v[i];
        lane_s[i % LANES] += dfq[i] * codes[i];
    }
    double s = (float)row->s, sum_q = reduce(lane_s);  /* dL/ds */
    double a = s * reduce(lane_d);                       /* sum_i dL/du_i v_i */
    *dg = 0.0;
    if (row->k == 0.0 || row->s <= 1e-10)
        return;
    double t = int_threshold, m = row->m, l1 = row->l1, g = g_abs;
    *dg = sum_q * m / (t * l1);
    double dm = sum_q * g / (t * l1), dn = -sum_q * g * m / (t * l1 * l1);
    if (row->norm_free)
        dm -= t / (m * m) * a;
    else
        dn -= row->c / (l1 * l1) * a;                  /* c = T */
    float ks = (float)(row->k * s), fdn = (float)dn;
    for (int64_t i = 0; i < n; i++) {
        float sign = v[i] > 0.0f ? 1.0f : (v[i] < 0.0f ? -1.0f : 0.0f);
        dv[i] += ks * dfq[i] + sign * fdn;
    }
    int64_t k = row->argmax;
    dv[k] += (float)(v[k] >= 0.0f ? dm : -dm);
}

/* codes (n) = clamp(trunc(v multiplier)), then the integer L1 check against floor(budget) */
static void truncated_codes(float *codes, const float *v, int64_t n, double multiplier,
                            double budget, float qmin, float qmax)
{
    /* k is nudged up by 2^-20 so that a value meant to be an integer (the abs-max entry of
     * a row whose g = ||v||_1 is s * qmax) is not truncated to the integer below by float
     * rounding; the integer check below keeps the budget whatever the nudge adds */
    float k = (float)(multiplier * (1.0 + 0x1p-20));
    for (int64_t i = 0; i < n; i++) {
        float q = __builtin_truncf(v[i] * k);                /* round toward zero */
        codes[i] = q < qmin ? qmin : (q > qmax ? qmax : q);
    }
    float lane[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++)
            lane[j] += __builtin_fabsf(codes[i + j]);
    for (; i < n; i++)
        lane[i % LANES] += __builtin_fabsf(codes[i]);
    /* the guarantee is on integers: float error in k must not break it, so an
     * excess (at most a unit or two, from k rounded up) comes off the largest codes */
    double sum = reduce(lane), limit = floor(budget);
    while (sum > limit) {
        int64_t top = 0;
        for (int64_t j = 1; j < n; j++)
            top = __builtin_fabsf(codes[j]) > __builtin_fabsf(codes[top]) ? j : top;
        codes[top] -= codes[top] > 0.0f ? 1.0f : -1.0f;
        sum -= 1.0;
    }
}

QF_MULTIVERSION
double qf_a2q_backward_row(float *dv, double *dg, const float *dfq, const float *v,
                           const float *codes, int64_t n, float s, float g_abs,
                           const qf_a2q_row *row)
{
    float lane_d[LANES] = {0}, lane_s[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++) {
            lane_d[j] += dfq[i + j] * v[i + j];
            lane_s[j] += dfq[i + j] * codes[i + j];
        }
    for (; i < n; i++) {
        lane_d[i % LANES] += dfq[i] * v[i];
        lane_s[i % LANES] += dfq[i] * codes[i];
    }
    double ds = reduce(lane_s);
    double d = row->k > 0.0 ? (double)s * reduce(lane_d) / row->l1 : 0.0;   /* dL/dc */
    float ks = (float)(row->k * s), kd = (float)(row->k * d);
    for (i = 0; i < n; i++) {
        float sign = v[i] > 0.0f ? 1.0f : (v[i] < 0.0f ? -1.0f : 0.0f);
        dv[i] += ks * dfq[i] - sign * kd;
    }
    *dg = row->norm_free ? d / s : 0.0;
    if (row->norm_free)
        ds -= d * g_abs / ((double)s * s);
    return ds;
}
