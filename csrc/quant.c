/* quant.c: quantizer ranges, fake-quant forward/backward, scale statistics. */
#include "dispatch.h"
#include <math.h>
#include <stdio.h>
#include "quant.h"

qf_status qf_quant_spec_check(const qf_quant_spec *spec, char *err, int err_len)
{
    if (spec->kind < QF_QUANT_NONE || spec->kind > QF_QUANT_LEARNED) {
        snprintf(err, err_len, "unknown quantizer kind %d", spec->kind);
        return QF_ERR_ARG;
    }
    if (spec->kind == QF_QUANT_NONE)
        return QF_OK;
    if (spec->bits < QF_BITS_MIN || spec->bits > QF_BITS_MAX) {
        snprintf(err, err_len, "bit_width must be an integer in [%d, %d], got %d",
                 QF_BITS_MIN, QF_BITS_MAX, spec->bits);
        return QF_ERR_ARG;
    }
    if ((spec->is_signed != 0 && spec->is_signed != 1) || (spec->narrow != 0 && spec->narrow != 1)) {
        snprintf(err, err_len, "signed and narrow_range must be 0 or 1, got %d and %d",
                 spec->is_signed, spec->narrow);
        return QF_ERR_ARG;
    }
    if (!(spec->threshold > 0.0f) || !isfinite(spec->threshold)) {
        snprintf(err, err_len, "quantizer threshold must be a positive finite number, got %g",
                 (double)spec->threshold);
        return QF_ERR_ARG;
    }
    if (spec->kind == QF_QUANT_LEARNED) {
        if (spec->stats_steps < 1) {
            snprintf(err, err_len, "collect_stats_steps must be >= 1, got %d", spec->stats_steps);
            return QF_ERR_ARG;
        }
        if (!(spec->momentum > 0.0f && spec->momentum <= 1.0f)) {
            snprintf(err, err_len, "scaling_stats_momentum must be in (0, 1], got %g",
                     (double)spec->momentum);
            return QF_ERR_ARG;
        }
        if (!(spec->percentile > 0.0f && spec->percentile <= 100.0f)) {
            snprintf(err, err_len, "high_percentile_q must be in (0, 100], got %g",
                     (double)spec->percentile);
            return QF_ERR_ARG;
        }
    }
    return QF_OK;
}

float qf_quant_qmin(const qf_quant_spec *spec)
{
    if (!spec->is_signed)
        return 0.0f;
    float half = (float)(1 << (spec->bits - 1));
    return spec->narrow ? -(half - 1.0f) : -half;
}

float qf_quant_qmax(const qf_quant_spec *spec)
{
    if (!spec->is_signed)
        return (float)((1 << spec->bits) - 1 - (spec->narrow ? 1 : 0));
    return (float)((1 << (spec->bits - 1)) - 1);
}

float qf_quant_int_threshold(const qf_quant_spec *spec)
{
    if (spec->is_signed)
        return -qf_quant_qmin(spec);
    return qf_quant_qmax(spec);
}

QF_MULTIVERSION
void qf_fake_quant_forward(float *restrict y, float *restrict codes, const float *restrict x,
                           int64_t n, float s, float qmin, float qmax, int relu)
{
    /* four loops without branches inside, so that each vectorises */
    if (relu && codes) {
        for (int64_t i = 0; i < n; i++) {
            float q = qf_quantize_value(x[i] > 0.0f ? x[i] : 0.0f, s, qmin, qmax);
            y[i] = s * q;
            codes[i] = q;
        }
    } else if (relu) {
        for (int64_t i = 0; i < n; i++)
            y[i] = s * qf_quantize_value(x[i] > 0.0f ? x[i] : 0.0f, s, qmin, qmax);
    } else if (codes) {
        for (int64_t i = 0; i < n; i++) {
            float q = qf_quantize_value(x[i], s, qmin, qmax);
            y[i] = s * q;
            codes[i] = q;
        }
    } else {
        for (int64_t i = 0; i < n; i++)
            y[i] = s * qf_quantize_value(x[i], s, qmin, qmax);
    }
}

enum { FQ_CHUNK = 256 };   /* elements per pass of the backward */

/* The element-wise part of the backward for m <= FQ_CHUNK elements: dx += the
 * straight-through gradient (selects, so that it vectorises) and f (m) = the
 * factor of dy in dL/ds: r - x'/s in range, the clamped code outside. */
static inline void fake_quant_backward_chunk(float *restrict dx, float *restrict f,
                                             const float *restrict dy, const float *restrict x,
                                             int64_t m, float s, float qmin, float qmax, int relu,
                                             int clamp_ste)
{
    for (int64_t i = 0; i < m; i++) {
        int active = !relu || x[i] > 0.0f;
        float v = active ? x[i] : 0.0f;
        float ratio = v / s;
        float r = qf_rint(ratio);
        int in_range = clamp_ste || (r >= qmin && r <= qmax);
        f[i] = in_range ? r - ratio : (r < qmin ? qmin : qmax);
        if (dx) {
            float d = dx[i];
            dx[i] = in_range && active ? d + dy[i] : d;
        }
    }
}

QF_MULTIVERSION
double qf_fake_quant_backward(float *dx, const float *dy, const float *x, int64_t n,
                              float s, float qmin, float qmax, int relu, int clamp_ste)
{
    /* dL/ds sums the exact double products dy * f one element after the other,
     * in index order, apart from the vectorised element-wise pass (a lane-split
     * sum would be faster but would change every trained network's bits) */
    float f[FQ_CHUNK];
    double dscale = 0.0;
    for (int64_t c = 0; c < n; c += FQ_CHUNK) {
        int64_t m = n - c < FQ_CHUNK ? n - c : FQ_CHUNK;
        if (dx)
            fake_quant_backward_chunk(dx + c, f, dy + c, x + c, m, s, qmin, qmax, relu,
                                      clamp_ste);
        else
            fake_quant_backward_chunk(NULL, f, dy + c, x + c, m, s, qmin, qmax, relu,
                                      clamp_ste);
        for (int64_t i = 0; i < m; i++)
            dscale += (double)dy[c + i] * (double)f[i];
    }
    return dscale;
}

/* |v|, or max(v, 0) for a quantizer after a ReLU. */
static float abs_value(float v, int relu) { return relu ? (v > 0.0f ? v : 0.0f) : fabsf(v); }

int64_t qf_abs_argmax(const float *x, int64_t n, int relu, float *value)
{
    int64_t best = 0;
    float best_value = -1.0f;
    for (int64_t i = 0; i < n; i++) {
        float a = abs_value(x[i], relu);
        if (a > best_value) {
            best_value = a;
            best = i;
        }
    }
    *value = best_value;
    return best;
}

/* k-th smallest (0-based) of a (n) by quickselect; reorders a. */
static float select_kth(float *a, int64_t n, int64_t k)
{
    int64_t lo = 0, hi = n - 1;
    while (lo < hi) {
        float pivot = a[lo + (hi - lo) / 2];
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (a[i] < pivot) i++;
            while (a[j] > pivot) j--;
            if (i <= j) {
                float t = a[i]; a[i] = a[j]; a[j] = t;
                i++; j--;
            }
        }
        if (k <= j) hi = j;
        else if (k >= i) lo = i;
        else return a[k];
    }
    return a[k];
}

/* The m-th largest (1-based) of |x| (relu: max(x, 0)) for a small m, in one
 * pass: top (m) keeps the m largest values seen, in decreasing order, with
 * their multiplicities; a block of 16 of which no value can enter is
 * skipped after one vectorisable comparison.  Same value as select_kth. */
enum { TOP_MAX = 64, TOP_BLOCK = 16 };

QF_MULTIVERSION
static float top_m_value(const float *x, int64_t n, int64_t m, int relu)
{
    float top[TOP_MAX];
    for (int64_t t = 0; t < m; t++)
        top[t] = -1.0f;   /* below every |x| */
    for (int64_t i0 = 0; i0 < n; i0 += TOP_BLOCK) {
        int64_t len = n - i0 < TOP_BLOCK ? n - i0 : TOP_BLOCK;
        float threshold = top[m - 1];
        int enters = 0;   /* whether a value of the block exceeds the threshold */
        for (int64_t i = 0; i < len; i++)
            enters |= abs_value(x[i0 + i], relu) > threshold;
        if (!enters)
            continue;
        for (int64_t i = 0; i < len; i++) {
            float a = abs_value(x[i0 + i], relu);
            if (!(a > top[m - 1]))
                continue;
            int64_t t = m - 1;   /* insert a, dropping the smallest */
            while (t > 0 && top[t - 1] < a) {
                top[t] = top[t - 1];
                t--;
            }
            top[t] = a;
        }
    }
    return top[m - 1];
}

/* The first i with |x[i]| (relu: max(x[i], 0)) == value, 0 if none: blocks
 * without it are passed after one vectorisable comparison. */
QF_MULTIVERSION
static int64_t first_equal(const float *x, int64_t n, float value, int relu)
{
    for (int64_t i0 = 0; i0 < n; i0 += TOP_BLOCK) {
        int64_t len = n - i0 < TOP_BLOCK ? n - i0 : TOP_BLOCK;
        int found = 0;
        for (int64_t i = 0; i < len; i++)
            found |= abs_value(x[i0 + i], relu) == value;
        if (!found)
            continue;
        for (int64_t i = 0; i < len; i++)
            if (abs_value(x[i0 + i], relu) == value)
                return i0 + i;
    }
    return 0;
}

float qf_abs_percentile(const float *x, int64_t n, float percentile, int relu,
                        float *scratch, int64_t *index)
{
    int64_t k = (int64_t)floor(0.01 * (double)percentile * (double)n + 0.5);
    if (k < 1) k = 1;
    if (k > n) k = n;
    float value;
    if (k == n) {
        *index = qf_abs_argmax(x, n, relu, &value);
        return value;
    }
    if (n - k + 1 <= TOP_MAX) {   /* a high percentile: the (n - k + 1)-th largest */
        value = top_m_value(x, n, n - k + 1, relu);
    } else {
        for (int64_t i = 0; i < n; i++)
            scratch[i] = abs_value(x[i], relu);
        value = select_kth(scratch, n, k - 1);
    }
    *index = first_equal(x, n, value, relu);
    return value;
}
