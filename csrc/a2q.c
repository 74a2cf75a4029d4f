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

qf_a2q_bound qf_a2q_bound_of(int acc_bits, int in_bits, int in_signed, int split, double relax)
{
    qf_a2q_bound b = {qf_a2q_budget(acc_bits, in_bits, in_signed) * relax, HUGE_VAL, HUGE_VAL,
                      split != 0, 0};
    if (split && !in_signed) {
        double x = ldexp(1.0, in_bits) - 1.0;              /* the largest input code */
        b.l1 = HUGE_VAL;
        b.pos = (ldexp(1.0, acc_bits - 1) - 1.0) / x * relax;
        b.neg = ldexp(1.0, acc_bits - 1) / x * relax;
    }
    return b;
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

/* Whether v_i counts in the norm sel (0: all, 1: positive, -1: negative). */
static int in_norm(int sel, float v)
{
    return sel == 0 || (sel > 0 ? v > 0.0f : v < 0.0f);
}

/* sum of v_i > 0 over n values (the negative part is ||v||_1 minus it) */
static double positive_sum(const float *restrict v, int64_t n)
{
    float lane[LANES] = {0};
    for (int64_t i = 0; i < n; i++)
        lane[i % LANES] += v[i] > 0.0f ? v[i] : 0.0f;
    return reduce(lane);
}

/* The multiplier k of a row whose bound caps it: min over the bound's norms
 * (b->l1 / ||v||_1, b->pos / ||v+||_1, b->neg / ||v-||_1); row->sel, row->l1_sel
 * name the norm that attains it. */
static double filled_multiplier(const float *v, int64_t n, double k, double limit,
                                double norm, const qf_a2q_bound *b, float qmin, float qmax);

static double capped_multiplier(qf_a2q_row *row, const qf_a2q_bound *b, const float *v,
                                int64_t n, double l1, float qmin, float qmax)
{
    double k = b->l1 / l1, pos = positive_sum(v, n), neg = l1 - pos;
    row->sel = 0;
    row->l1_sel = l1;
    if (pos > 1e-20 && b->pos / pos < k) {
        k = b->pos / pos;
        row->sel = 1;
        row->l1_sel = pos;
    }
    if (neg > 1e-20 && b->neg / neg < k) {
        k = b->neg / neg;
        row->sel = -1;
        row->l1_sel = neg;
    }
    if ((b->fill || b->round) && isfinite(k))
        k = filled_multiplier(v, n, k, k * row->l1_sel, row->l1_sel, b, qmin, qmax);
    return k;
}

/* One code before clamping: v k rounded toward zero (Brevitas) or to nearest (b->round). */
static float to_code(float vk, const qf_a2q_bound *b)
{
    return b->round ? __builtin_rintf(vk) : __builtin_truncf(vk);
}

/* Whether clamp(to_code(v k)) (the codes truncated_codes makes) is within the floored bound. */
static int codes_within(const float *v, int64_t n, double multiplier, const qf_a2q_bound *b,
                        float qmin, float qmax)
{
    float k = (float)(multiplier * (1.0 + 0x1p-20));
    double pos = 0.0, neg = 0.0;
    for (int64_t i = 0; i < n; i++) {
        float q = to_code(v[i] * k, b);
        q = q < qmin ? qmin : (q > qmax ? qmax : q);
        pos += q > 0.0f ? q : 0.0f;
        neg += q < 0.0f ? -q : 0.0f;
    }
    return pos <= floor(b->pos) && neg <= floor(b->neg) && pos + neg <= floor(b->l1);
}

/* The filled form: the largest multiplier in [k, (limit + n) / norm] whose truncated
 * codes stay within the bound, to QF_A2Q_FILL_STEPS halvings of that interval (k itself
 * is within: truncation only lowers |u_i|; the codes' sums only grow with k).  Rounded
 * codes (b->round) may not fit at k; then the search runs over [0, k].
 * Truncation drops the fractions of every u_i, so k ||v||_1 <= T wastes up to n units
 * of budget on a row of n small entries; this spends them on whole codes instead. */
static double filled_multiplier(const float *v, int64_t n, double k, double limit,
                                double norm, const qf_a2q_bound *b, float qmin, float qmax)
{
    double hi = (limit + (double)n) / norm;
    if (codes_within(v, n, hi, b, qmin, qmax))
        return hi;
    if (b->round && !codes_within(v, n, k, b, qmin, qmax)) {
        hi = k;              /* rounding up may overshoot at k: search [0, k] instead */
        k = 0.0;
    }
    for (int it = 0; it < QF_A2Q_FILL_STEPS; it++) {
        double mid = 0.5 * (k + hi);
        if (codes_within(v, n, mid, b, qmin, qmax))
            k = mid;
        else
            hi = mid;
    }
    return k;
}

static void truncated_codes(float *codes, const float *v, int64_t n, double multiplier,
                            const qf_a2q_bound *b, float qmin, float qmax);

QF_MULTIVERSION
void qf_a2q_forward_row(float *fq, float *codes, qf_a2q_row *row, const float *v, int64_t n,
                        float s, float g_abs, const qf_a2q_bound *b, float qmin, float qmax)
{
    double l1 = l1_norm(v, n);
    double ratio = (double)g_abs / (double)s;
    row->l1 = l1;
    row->sel = 0;
    row->l1_sel = l1;
    row->norm_free = 1;
    row->k = 0.0;                                   /* an all-zero row stays 0 */
    if (l1 > 1e-20) {
        double cap = capped_multiplier(row, b, v, n, l1, qmin, qmax);
        row->norm_free = ratio / l1 < cap;
        row->k = row->norm_free ? ratio / l1 : cap;
        if (row->norm_free) {
            row->sel = 0;
            row->l1_sel = l1;
        }
    }
    row->c = row->k * l1;
    truncated_codes(codes, v, n, row->k, b, qmin, qmax);
    if (fq)
        for (int64_t i = 0; i < n; i++)
            fq[i] = s * codes[i];
}

QF_MULTIVERSION
void qf_a2q_forward_row_absmax(float *fq, float *codes, float *scale, qf_a2q_row *row,
                               const float *v, int64_t n, float g_abs, const qf_a2q_bound *b,
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
    double t = int_threshold, cap = live ? capped_multiplier(row, b, v, n, l1, qmin, qmax) : 0.0;
    row->norm_free = live && t / m <= cap;              /* the abs-max codes fit */
    row->k = !live ? 0.0 : (row->norm_free ? t / m : cap);
    row->c = row->k * l1;
    double s = live ? (double)g_abs * m / (t * l1) : 1.0;
    row->s = s > 1e-10 ? s : 1e-10;                     /* QF_SCALE_MIN */
    *scale = (float)row->s;
    truncated_codes(codes, v, n, row->k, b, qmin, qmax);
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
    double dm = sum_q * g / (t * l1), dn = -sum_q * g * m / (t * l1 * l1), dk = 0.0;
    if (row->norm_free)
        dm -= t / (m * m) * a;
    else
        dk = -row->k / row->l1_sel * a;             /* k = bound / the capping norm */
    float ks = (float)(row->k * s), fdn = (float)dn, fdk = (float)dk;
    for (int64_t i = 0; i < n; i++) {
        float sign = v[i] > 0.0f ? 1.0f : (v[i] < 0.0f ? -1.0f : 0.0f);
        dv[i] += ks * dfq[i] + sign * (fdn + (in_norm(row->sel, v[i]) ? fdk : 0.0f));
    }
    int64_t k = row->argmax;
    dv[k] += (float)(v[k] >= 0.0f ? dm : -dm);
}

/* The largest |code| among those of sign sel (0: any), or -1 if none is non-zero. */
static int64_t largest_code(const float *codes, int64_t n, int sel)
{
    int64_t top = -1;
    for (int64_t j = 0; j < n; j++)
        if (codes[j] != 0.0f && in_norm(sel, codes[j]) &&
            (top < 0 || __builtin_fabsf(codes[j]) > __builtin_fabsf(codes[top])))
            top = j;
    return top;
}

/* Take units off the largest codes of sign sel while their sum of |q| exceeds limit. */
static void trim(float *codes, int64_t n, int sel, double sum, double limit)
{
    for (; sum > limit; sum -= 1.0) {
        int64_t top = largest_code(codes, n, sel);
        if (top < 0)
            return;
        codes[top] -= codes[top] > 0.0f ? 1.0f : -1.0f;
    }
}

/* codes (n) = clamp(trunc(v multiplier)) (rint with b->round), then the integer checks
 * against the floored bound */
static void truncated_codes(float *codes, const float *v, int64_t n, double multiplier,
                            const qf_a2q_bound *b, float qmin, float qmax)
{
    /* k is nudged up by 2^-20 so that a value meant to be an integer (the abs-max entry of
     * a row whose g = ||v||_1 is s * qmax) is not truncated to the integer below by float
     * rounding; the integer check below keeps the budget whatever the nudge adds */
    float k = (float)(multiplier * (1.0 + 0x1p-20));
    for (int64_t i = 0; i < n; i++) {
        float q = to_code(v[i] * k, b);                      /* toward zero, or rint */
        codes[i] = q < qmin ? qmin : (q > qmax ? qmax : q);
    }
    /* the guarantee is on integers: float error in k must not break it, so an
     * excess (at most a unit or two, from k rounded up) comes off the largest codes */
    double l1 = l1_norm(codes, n), pos = positive_sum(codes, n);
    trim(codes, n, 1, pos, floor(b->pos));
    trim(codes, n, -1, l1 - pos, floor(b->neg));
    trim(codes, n, 0, l1_norm(codes, n), floor(b->l1));
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
    double d = row->k > 0.0 ? (double)s * reduce(lane_d) / row->l1_sel : 0.0;  /* dL/dc */
    float ks = (float)(row->k * s), kd = (float)(row->k * d);
    for (i = 0; i < n; i++) {
        float sign = v[i] > 0.0f ? 1.0f : (v[i] < 0.0f ? -1.0f : 0.0f);
        dv[i] += ks * dfq[i] - (in_norm(row->sel, v[i]) ? sign * kd : 0.0f);
    }
    *dg = row->norm_free ? d / s : 0.0;
    if (row->norm_free)
        ds -= d * g_abs / ((double)s * s);
    return ds;
}
