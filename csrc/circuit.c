/* circuit.c: the exact integer circuit: creation with overflow-checked
 * worst-case bounds, input quantization, and integer inference. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "circuit.h"
#include "quant.h"

/* Every accumulator and lookup input stays within +-2^62, so rounding and
 * the zero-point offset can be added without leaving int64. */
#define ACC_LIMIT ((int64_t)1 << 62)

typedef struct {
    char name[QF_CIRCUIT_NAME_LEN];
    int in, out;
    int64_t *weight;          /* (out, in) q_w - Z_w                          */
    float *bias;              /* (out), zeros when the layer has none         */
    int64_t *offset;          /* (out) -Z_x sum_i (q_w - Z_w): t = acc + offset */
    float scale;              /* s_x * s_w                                    */
    int lsbs;                 /* low bits rounded away before the lookup      */
    int relu;
    int has_quant;
    qf_quantizer quant;
    float quant_lo, quant_hi; /* qmin - Z, qmax - Z                           */
    int node_acc, node_rounded, node_lookup;   /* -1 when absent              */
} stage;

struct qf_circuit {
    qf_quantizer input;
    float input_lo, input_hi; /* qmin - Z, qmax - Z of the input quantizer    */
    int n_stages;
    stage *stages;            /* (n_stages)                                   */
    int n_nodes;
    qf_node_info *nodes;      /* (n_nodes)                                    */
    int max_width;            /* widest layer: in of stage 0 or any out       */
};

static void set_err(char *err, int err_len, const char *fmt, ...)
{
    if (!err || err_len <= 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, (size_t)err_len, fmt, ap);
    va_end(ap);
}

/* ---- the per-element lookup, shared by inference and the static bounds ---- */

/* floor((acc + 2^(l-1)) / 2^l): Concrete's round_bit_pattern, round half up,
 * divided by 2^l.  l >= 1; |acc| <= ACC_LIMIT. */
static int64_t rounded_msbs(int64_t acc, int l)
{
    int64_t d = (int64_t)1 << l;
    int64_t v = acc + d / 2;
    int64_t q = v / d;
    if (v % d != 0 && v < 0)
        q--;
    return q;
}

/* The lookup's float value before the output quantizer: epilogue and ReLU. */
static float stage_affine(const stage *s, int o, int64_t acc)
{
    float y = qf_affine_epilogue(acc + s->offset[o], s->scale, s->bias[o]);
    return s->relu && y < 0.0f ? 0.0f : y;
}

static int64_t quantize_code(const qf_quantizer *q, float lo, float hi, float x)
{
    return (int64_t)qf_quantize_value(x, q->scale, lo, hi) + q->zero_point;
}

/* Lookup input of an accumulator: itself, or its rounded value. */
static int64_t lookup_input(const stage *s, int64_t acc)
{
    return s->lsbs > 0 ? rounded_msbs(acc, s->lsbs) * ((int64_t)1 << s->lsbs) : acc;
}

/* ---- creation ---- */

static int quantizer_ok(const qf_quantizer *q, const char *what, char *err, int err_len)
{
    if (!(q->scale > 0.0f) || !isfinite(q->scale)) {
        set_err(err, err_len, "%s: scale must be a positive finite number, got %g",
                what, (double)q->scale);
        return 0;
    }
    if (q->qmin > q->qmax) {
        set_err(err, err_len, "%s: qmin %d must not exceed qmax %d", what,
                (int)q->qmin, (int)q->qmax);
        return 0;
    }
    int32_t lim = QF_CIRCUIT_CODE_LIMIT;
    if (q->qmin < -lim || q->qmax > lim || q->zero_point < -lim || q->zero_point > lim) {
        set_err(err, err_len, "%s: qmin, qmax and zero point must lie in [-%d, %d], "
                "got qmin %d, qmax %d, zero point %d", what, (int)lim, (int)lim,
                (int)q->qmin, (int)q->qmax, (int)q->zero_point);
        return 0;
    }
    return 1;
}

static qf_status check_spec(const qf_stage_spec *sp, int k, int n_stages, int prev_out,
                            char *err, int err_len)
{
    const char *nm = sp->name ? sp->name : "";
    if (sp->in_features < 1 || sp->out_features < 1) {
        set_err(err, err_len, "stage %d (%s): in_features and out_features must be >= 1, "
                "got %d and %d", k, nm, sp->in_features, sp->out_features);
        return QF_ERR_ARG;
    }
    if (k > 0 && sp->in_features != prev_out) {
        set_err(err, err_len, "stage %d (%s): in_features %d differs from the previous "
                "stage's out_features %d", k, nm, sp->in_features, prev_out);
        return QF_ERR_SHAPE;
    }
    if (!sp->weight) {
        set_err(err, err_len, "stage %d (%s): weight codes are missing", k, nm);
        return QF_ERR_ARG;
    }
    if (!(sp->weight_scale > 0.0f) || !isfinite(sp->weight_scale)) {
        set_err(err, err_len, "stage %d (%s): weight scale must be a positive finite "
                "number, got %g", k, nm, (double)sp->weight_scale);
        return QF_ERR_ARG;
    }
    if (sp->lsbs_to_remove < 0 || sp->lsbs_to_remove > QF_CIRCUIT_MAX_LSBS) {
        set_err(err, err_len, "stage %d (%s): lsbs_to_remove must be in [0, %d], got %d",
                k, nm, QF_CIRCUIT_MAX_LSBS, sp->lsbs_to_remove);
        return QF_ERR_ARG;
    }
    if (!sp->has_output_quant && k < n_stages - 1) {
        set_err(err, err_len, "stage %d (%s): every stage but the last needs an output "
                "quantizer (its codes are the next stage's input)", k, nm);
        return QF_ERR_ARG;
    }
    if (!sp->has_output_quant && sp->relu) {
        set_err(err, err_len, "stage %d (%s): ReLU in the last stage needs an output "
                "quantizer", k, nm);
        return QF_ERR_ARG;
    }
    if (sp->has_output_quant) {
        char what[QF_CIRCUIT_NAME_LEN + 48];
        snprintf(what, sizeof what, "stage %d (%s) output quantizer", k, nm);
        if (!quantizer_ok(&sp->output_quant, what, err, err_len))
            return QF_ERR_ARG;
    }
    if (sp->bias) {
        for (int o = 0; o < sp->out_features; o++) {
            if (!isfinite(sp->bias[o])) {
                set_err(err, err_len, "stage %d (%s): bias[%d] is NaN or infinite", k, nm, o);
                return QF_ERR_NONFINITE;
            }
        }
    }
    return QF_OK;
}

static int64_t abs64(int64_t v) { return v < 0 ? -v : v; }

/* Worst-case accumulator range of output o of s for input codes in [lo, hi],
 * with overflow checks; 0 on overflow. */
static int acc_bounds(const stage *s, int o, int64_t lo, int64_t hi,
                      int64_t *acc_min, int64_t *acc_max)
{
    int64_t amin = 0, amax = 0;
    const int64_t *w = s->weight + (int64_t)o * s->in;
    for (int i = 0; i < s->in; i++) {
        int64_t p, q;
        if (__builtin_mul_overflow(lo, w[i], &p) || __builtin_mul_overflow(hi, w[i], &q))
            return 0;
        if (__builtin_add_overflow(amin, p < q ? p : q, &amin) ||
            __builtin_add_overflow(amax, p < q ? q : p, &amax))
            return 0;
    }
    if (abs64(amin) > ACC_LIMIT || abs64(amax) > ACC_LIMIT)
        return 0;
    *acc_min = amin;
    *acc_max = amax;
    return 1;
}

/* Copy spec k into s; the input quantizer of the stage has zero point in_zp. */
static qf_status fill_stage(stage *s, const qf_stage_spec *sp, int k, float in_scale,
                            int64_t in_zp, char *err, int err_len)
{
    const char *nm = sp->name ? sp->name : "";
    snprintf(s->name, sizeof s->name, "%s", nm);
    s->in = sp->in_features;
    s->out = sp->out_features;
    int64_t n_weights = (int64_t)s->in * s->out;
    s->weight = malloc((size_t)n_weights * sizeof *s->weight);
    s->bias = calloc((size_t)s->out, sizeof *s->bias);
    s->offset = malloc((size_t)s->out * sizeof *s->offset);
    if (!s->weight || !s->bias || !s->offset)
        return QF_ERR_NOMEM;
    for (int64_t j = 0; j < n_weights; j++)
        s->weight[j] = (int64_t)sp->weight[j] - sp->weight_zero_point;
    if (sp->bias)
        memcpy(s->bias, sp->bias, (size_t)s->out * sizeof *s->bias);
    for (int o = 0; o < s->out; o++) {
        int64_t sum = 0, off;
        for (int i = 0; i < s->in; i++)
            if (__builtin_add_overflow(sum, s->weight[(int64_t)o * s->in + i], &sum))
                goto overflow;
        if (__builtin_mul_overflow(sum, -in_zp, &off) || abs64(off) > ACC_LIMIT)
            goto overflow;
        s->offset[o] = off;
    }
    s->scale = in_scale * sp->weight_scale;
    if (!(s->scale > 0.0f) || !isfinite(s->scale)) {
        set_err(err, err_len, "stage %d (%s): input scale %g times weight scale %g is not "
                "a positive finite float32", k, nm, (double)in_scale,
                (double)sp->weight_scale);
        return QF_ERR_ARG;
    }
    s->lsbs = sp->lsbs_to_remove;
    s->relu = sp->relu;
    s->has_quant = sp->has_output_quant;
    if (s->has_quant) {
        s->quant = sp->output_quant;
        s->quant_lo = (float)((int64_t)s->quant.qmin - s->quant.zero_point);
        s->quant_hi = (float)((int64_t)s->quant.qmax - s->quant.zero_point);
    }
    return QF_OK;
overflow:
    set_err(err, err_len, "stage %d (%s): the zero-point correction of the accumulator "
            "exceeds 2^62", k, nm);
    return QF_ERR_OVERFLOW;
}

/* Worst-case bounds of stage s's nodes for input codes in [*lo, *hi]; on
 * return [*lo, *hi] is the range of its lookup output codes. */
static qf_status stage_bounds(qf_circuit *c, int k, int64_t *lo, int64_t *hi,
                              char *err, int err_len)
{
    stage *s = &c->stages[k];
    qf_node_info *acc = &c->nodes[s->node_acc];
    qf_node_info *rnd = s->node_rounded >= 0 ? &c->nodes[s->node_rounded] : NULL;
    qf_node_info *lut = s->node_lookup >= 0 ? &c->nodes[s->node_lookup] : NULL;
    int64_t out_lo = INT64_MAX, out_hi = INT64_MIN;
    acc->static_min = INT64_MAX;
    acc->static_max = INT64_MIN;
    if (rnd) {
        rnd->static_min = INT64_MAX;
        rnd->static_max = INT64_MIN;
    }
    for (int o = 0; o < s->out; o++) {
        int64_t amin, amax;
        if (!acc_bounds(s, o, *lo, *hi, &amin, &amax)) {
            set_err(err, err_len, "stage %d (%s): output %d's accumulator could exceed "
                    "2^62 in magnitude for input codes in [%lld, %lld]", k, s->name, o,
                    (long long)*lo, (long long)*hi);
            return QF_ERR_OVERFLOW;
        }
        if (amin < acc->static_min) acc->static_min = amin;
        if (amax > acc->static_max) acc->static_max = amax;
        if (rnd) {
            int64_t rmin = rounded_msbs(amin, s->lsbs), rmax = rounded_msbs(amax, s->lsbs);
            if (rmin < rnd->static_min) rnd->static_min = rmin;
            if (rmax > rnd->static_max) rnd->static_max = rmax;
        }
        if (s->has_quant) {
            /* The lookup is non-decreasing in the accumulator (positive scale,
             * monotone float rounding, ReLU and clamp), so its extremes are
             * reached at the accumulator's extremes. */
            int64_t qlo = quantize_code(&s->quant, s->quant_lo, s->quant_hi,
                                        stage_affine(s, o, lookup_input(s, amin)));
            int64_t qhi = quantize_code(&s->quant, s->quant_lo, s->quant_hi,
                                        stage_affine(s, o, lookup_input(s, amax)));
            if (qlo < out_lo) out_lo = qlo;
            if (qhi > out_hi) out_hi = qhi;
        }
    }
    if (lut) {
        lut->static_min = out_lo;
        lut->static_max = out_hi;
        *lo = out_lo;
        *hi = out_hi;
    }
    return QF_OK;
}

/* Assign node indices and allocate the node table. */
static qf_status layout_nodes(qf_circuit *c)
{
    int n = 1;
    for (int k = 0; k < c->n_stages; k++) {
        stage *s = &c->stages[k];
        s->node_acc = n++;
        s->node_rounded = s->lsbs > 0 ? n++ : -1;
        s->node_lookup = s->has_quant ? n++ : -1;
    }
    c->nodes = calloc((size_t)n, sizeof *c->nodes);
    if (!c->nodes)
        return QF_ERR_NOMEM;
    c->n_nodes = n;
    c->nodes[0] = (qf_node_info){-1, QF_NODE_INPUT, c->input.qmin, c->input.qmax};
    for (int k = 0; k < c->n_stages; k++) {
        stage *s = &c->stages[k];
        c->nodes[s->node_acc] = (qf_node_info){k, QF_NODE_ACCUMULATOR, 0, 0};
        if (s->node_rounded >= 0)
            c->nodes[s->node_rounded] = (qf_node_info){k, QF_NODE_ROUNDED, 0, 0};
        if (s->node_lookup >= 0)
            c->nodes[s->node_lookup] = (qf_node_info){k, QF_NODE_LOOKUP_OUTPUT, 0, 0};
    }
    return QF_OK;
}

qf_status qf_circuit_create(qf_circuit **out, const qf_quantizer *input_quant,
                            const qf_stage_spec *stages, int n_stages,
                            char *err, int err_len)
{
    set_err(err, err_len, "%s", "");
    *out = NULL;
    if (!input_quant || !stages || n_stages < 1) {
        set_err(err, err_len, "a circuit needs an input quantizer and at least one stage");
        return QF_ERR_ARG;
    }
    if (!quantizer_ok(input_quant, "input quantizer", err, err_len))
        return QF_ERR_ARG;
    for (int k = 0; k < n_stages; k++) {
        qf_status st = check_spec(&stages[k], k, n_stages,
                                  k ? stages[k - 1].out_features : 0, err, err_len);
        if (st != QF_OK)
            return st;
    }
    qf_circuit *c = calloc(1, sizeof *c);
    if (!c)
        return QF_ERR_NOMEM;
    c->stages = calloc((size_t)n_stages, sizeof *c->stages);
    if (!c->stages) {
        free(c);
        return QF_ERR_NOMEM;
    }
    c->n_stages = n_stages;
    c->input = *input_quant;
    c->input_lo = (float)((int64_t)input_quant->qmin - input_quant->zero_point);
    c->input_hi = (float)((int64_t)input_quant->qmax - input_quant->zero_point);
    c->max_width = stages[0].in_features;
    qf_status st = QF_OK;
    const qf_quantizer *in_q = input_quant;
    for (int k = 0; k < n_stages && st == QF_OK; k++) {
        st = fill_stage(&c->stages[k], &stages[k], k, in_q->scale, in_q->zero_point,
                        err, err_len);
        in_q = &stages[k].output_quant;
        if (stages[k].out_features > c->max_width)
            c->max_width = stages[k].out_features;
    }
    if (st == QF_OK)
        st = layout_nodes(c);
    int64_t lo = input_quant->qmin, hi = input_quant->qmax;
    for (int k = 0; k < n_stages && st == QF_OK; k++)
        st = stage_bounds(c, k, &lo, &hi, err, err_len);
    if (st != QF_OK) {
        if (st == QF_ERR_NOMEM)
            set_err(err, err_len, "out of memory building the circuit");
        qf_circuit_free(c);
        return st;
    }
    *out = c;
    return QF_OK;
}

void qf_circuit_free(qf_circuit *c)
{
    if (!c)
        return;
    for (int k = 0; k < c->n_stages; k++) {
        free(c->stages[k].weight);
        free(c->stages[k].bias);
        free(c->stages[k].offset);
    }
    free(c->stages);
    free(c->nodes);
    free(c);
}

int qf_circuit_n_stages(const qf_circuit *c) { return c->n_stages; }
int qf_circuit_in_features(const qf_circuit *c) { return c->stages[0].in; }
int qf_circuit_out_features(const qf_circuit *c) { return c->stages[c->n_stages - 1].out; }
int qf_circuit_n_nodes(const qf_circuit *c) { return c->n_nodes; }
int64_t qf_circuit_workspace_len(const qf_circuit *c) { return 2 * (int64_t)c->max_width; }

const char *qf_circuit_stage_name(const qf_circuit *c, int stage)
{
    return stage >= 0 && stage < c->n_stages ? c->stages[stage].name : "input";
}

const qf_node_info *qf_circuit_node(const qf_circuit *c, int node)
{
    return node >= 0 && node < c->n_nodes ? &c->nodes[node] : NULL;
}

/* ---- inference ---- */

/* One sample: codes (in) is overwritten; out (out_features). */
static void run_sample(const qf_circuit *c, float *out, int64_t *out_int, qf_range *ranges,
                       int64_t *codes, int64_t *next)
{
    if (ranges)
        for (int i = 0; i < c->stages[0].in; i++)
            qf_range_update(&ranges[0], codes[i]);
    for (int k = 0; k < c->n_stages; k++) {
        const stage *s = &c->stages[k];
        int last = k == c->n_stages - 1;
        for (int o = 0; o < s->out; o++) {
            const int64_t *w = s->weight + (int64_t)o * s->in;
            int64_t acc = 0;
            for (int i = 0; i < s->in; i++)
                acc += codes[i] * w[i];
            int64_t a = acc;
            if (s->lsbs > 0) {
                int64_t r = rounded_msbs(acc, s->lsbs);
                a = r * ((int64_t)1 << s->lsbs);
                if (ranges)
                    qf_range_update(&ranges[s->node_rounded], r);
            }
            if (ranges)
                qf_range_update(&ranges[s->node_acc], acc);
            float y = stage_affine(s, o, a);
            if (!s->has_quant) {
                out[o] = y;
                if (out_int)
                    out_int[o] = a;
                continue;
            }
            int64_t q = quantize_code(&s->quant, s->quant_lo, s->quant_hi, y);
            if (ranges)
                qf_range_update(&ranges[s->node_lookup], q);
            next[o] = q;
            if (last) {
                out[o] = s->quant.scale * (float)(q - s->quant.zero_point);
                if (out_int)
                    out_int[o] = q;
            }
        }
        int64_t *t = codes;
        codes = next;
        next = t;
    }
}

qf_status qf_circuit_quantize_input(const qf_circuit *c, int64_t *codes, const float *x,
                                    int64_t n, char *err, int err_len)
{
    int64_t total = n * c->stages[0].in;
    for (int64_t j = 0; j < total; j++) {
        if (!isfinite(x[j])) {
            set_err(err, err_len, "input contains NaN or infinity (first at flat index %lld); "
                    "expected finite values", (long long)j);
            return QF_ERR_NONFINITE;
        }
        codes[j] = quantize_code(&c->input, c->input_lo, c->input_hi, x[j]);
    }
    return QF_OK;
}

qf_status qf_circuit_run_codes(const qf_circuit *c, float *out, int64_t *out_int,
                               qf_range *ranges, const int64_t *codes, int64_t n,
                               int64_t *workspace, char *err, int err_len)
{
    int in = c->stages[0].in, n_out = qf_circuit_out_features(c);
    int64_t *cur = workspace, *next = workspace + c->max_width;
    for (int64_t r = 0; r < n; r++) {
        for (int i = 0; i < in; i++) {
            int64_t q = codes[r * in + i];
            if (q < c->input.qmin || q > c->input.qmax) {
                set_err(err, err_len, "input code %lld at row %lld, column %d lies outside "
                        "the input quantizer's range [%d, %d]", (long long)q, (long long)r,
                        i, (int)c->input.qmin, (int)c->input.qmax);
                return QF_ERR_ARG;
            }
            cur[i] = q;
        }
        run_sample(c, out + r * n_out, out_int ? out_int + r * n_out : NULL, ranges, cur, next);
    }
    return QF_OK;
}

qf_status qf_circuit_run(const qf_circuit *c, float *out, int64_t *out_int, qf_range *ranges,
                         const float *x, int64_t n, int64_t *workspace, char *err, int err_len)
{
    int in = c->stages[0].in, n_out = qf_circuit_out_features(c);
    int64_t *cur = workspace, *next = workspace + c->max_width;
    for (int64_t r = 0; r < n; r++) {
        qf_status st = qf_circuit_quantize_input(c, cur, x + r * in, 1, err, err_len);
        if (st != QF_OK) {
            set_err(err, err_len, "input contains NaN or infinity (first at row %lld); "
                    "expected finite values", (long long)r);
            return st;
        }
        run_sample(c, out + r * n_out, out_int ? out_int + r * n_out : NULL, ranges, cur, next);
    }
    return QF_OK;
}
