/* circuit.c: the exact integer circuit: creation with overflow-checked
 * worst-case bounds of every node, the index of nonzero weights, and the
 * accessors (see circuit.h for the operations; circuit_run.c runs it). */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "circuit_internal.h"
#include "conv.h"
#include "quant.h"

/* Every node stays within +-2^62, so rounding, zero-point offsets and the
 * residual add can be applied without leaving int64. */
#define VALUE_LIMIT ((int64_t)1 << 62)
/* Largest node or weight tensor (elements); allocation would fail anyway. */
#define SIZE_LIMIT ((int64_t)1 << 36)

static void set_err(char *err, int err_len, const char *fmt, ...)
{
    if (!err || err_len <= 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, (size_t)err_len, fmt, ap);
    va_end(ap);
}

static int64_t size3(const int64_t *s) { return qf_circuit_size3(s); }
static int beyond_limit(int64_t v) { return v < -VALUE_LIMIT || v > VALUE_LIMIT; }

/* *count = the product of n sizes (each >= 0); 0 when it passes SIZE_LIMIT. */
static int checked_count(int64_t *count, const int64_t *sizes, int n)
{
    int64_t p = 1;
    for (int i = 0; i < n; i++)
        if (sizes[i] < 0 || __builtin_mul_overflow(p, sizes[i], &p) || p > SIZE_LIMIT)
            return 0;
    *count = p;
    return 1;
}
static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* ---- checks of the spec ---- */

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

static const char *kind_name(int kind)
{
    switch (kind) {
    case QF_OP_DENSE: return "DENSE";
    case QF_OP_CONV: return "CONV";
    case QF_OP_POOL_SUM: return "POOL_SUM";
    case QF_OP_ROUND: return "ROUND";
    case QF_OP_LOOKUP: return "LOOKUP";
    case QF_OP_RESHAPE: return "RESHAPE";
    case QF_OP_TRANSPOSE: return "TRANSPOSE";
    case QF_OP_ADD: return "ADD";
    case QF_OP_DECODE: return "DECODE";
    case QF_OP_MAXPOOL: return "MAXPOOL";
    }
    return "?";
}

/* Shared context of the checks of one op: its index, name and error buffer. */
typedef struct {
    int k;
    const char *name;
    char *err;
    int err_len;
} where;

#define FAIL(w, status, ...) do {                                               \
        char msg_[200];                                                         \
        snprintf(msg_, sizeof msg_, __VA_ARGS__);                              \
        set_err((w)->err, (w)->err_len, "op %d (%s): %s", (w)->k, (w)->name, msg_); \
        return (status);                                                        \
    } while (0)

static qf_status check_window(const where *w, const qf_op_spec *sp, int kh, int kw)
{
    if (kh < 1 || kw < 1 || sp->stride[0] < 1 || sp->stride[1] < 1)
        FAIL(w, QF_ERR_ARG, "kernel and stride must be >= 1, got kernel (%d, %d) and stride "
             "(%d, %d)", kh, kw, sp->stride[0], sp->stride[1]);
    if (sp->padding[0] < 0 || sp->padding[1] < 0)
        FAIL(w, QF_ERR_ARG, "padding must be >= 0, got (%d, %d)", sp->padding[0], sp->padding[1]);
    if (sp->pad_code < -QF_CIRCUIT_CODE_LIMIT || sp->pad_code > QF_CIRCUIT_CODE_LIMIT)
        FAIL(w, QF_ERR_ARG, "pad_code must lie in [-%d, %d], got %d", QF_CIRCUIT_CODE_LIMIT,
             QF_CIRCUIT_CODE_LIMIT, (int)sp->pad_code);
    return QF_OK;
}

/* Geometry of a CONV / POOL_SUM op p over its input shape; QF_ERR_SHAPE when
 * the kernel does not fit the padded input. */
static qf_status set_window(const where *w, qf_circuit_op *p, const qf_op_spec *sp, int kh,
                            int kw)
{
    qf_status st = check_window(w, sp, kh, kw);
    if (st != QF_OK)
        return st;
    p->kh = kh; p->kw = kw;
    p->sh = sp->stride[0]; p->sw = sp->stride[1];
    p->ph = sp->padding[0]; p->pw = sp->padding[1];
    p->pad = sp->pad_code;
    int64_t oh = qf_conv_out_dim(p->in_shape[1], p->kh, p->sh, p->ph);
    int64_t ow = qf_conv_out_dim(p->in_shape[2], p->kw, p->sw, p->pw);
    if (oh < 1 || ow < 1)
        FAIL(w, QF_ERR_SHAPE, "kernel (%d, %d) is larger than the padded input (%lld, %lld)",
             kh, kw, (long long)(p->in_shape[1] + 2 * p->ph),
             (long long)(p->in_shape[2] + 2 * p->pw));
    int64_t count, out[3] = {p->in_shape[0], oh, ow};
    if (oh > QF_CIRCUIT_MAX_DIM || ow > QF_CIRCUIT_MAX_DIM || !checked_count(&count, out, 3))
        FAIL(w, QF_ERR_ARG, "its output (%lld, %lld) is too large", (long long)oh, (long long)ow);
    p->out_shape[1] = oh;
    p->out_shape[2] = ow;
    return QF_OK;
}

/* Copy LOOKUP / DECODE parameters (n_channels entries each). */
static qf_status copy_affine(const where *w, qf_circuit_op *p, const qf_op_spec *sp)
{
    int64_t ch = p->in_shape[0];
    if (sp->n_channels != ch)
        FAIL(w, QF_ERR_SHAPE, "needs one offset, scale and bias per channel of its input "
             "(%lld), got %d", (long long)ch, sp->n_channels);
    if (!sp->scale)
        FAIL(w, QF_ERR_ARG, "scale is missing");
    if (sp->lsbs < 0 || sp->lsbs > QF_CIRCUIT_MAX_LSBS)
        FAIL(w, QF_ERR_ARG, "lsbs must lie in [0, %d], got %d", QF_CIRCUIT_MAX_LSBS, sp->lsbs);
    p->offset = calloc((size_t)ch, sizeof *p->offset);
    p->scale = calloc((size_t)ch, sizeof *p->scale);
    p->bias = calloc((size_t)ch, sizeof *p->bias);
    if (!p->offset || !p->scale || !p->bias)
        return QF_ERR_NOMEM;
    for (int64_t c = 0; c < ch; c++) {
        if (!(sp->scale[c] > 0.0f) || !isfinite(sp->scale[c]))
            FAIL(w, isfinite(sp->scale[c]) ? QF_ERR_ARG : QF_ERR_NONFINITE,
                 "scale[%lld] must be a positive finite number, got %g", (long long)c,
                 (double)sp->scale[c]);
        if (sp->bias && !isfinite(sp->bias[c]))
            FAIL(w, QF_ERR_NONFINITE, "bias[%lld] is NaN or infinite", (long long)c);
        if (sp->offset && beyond_limit(sp->offset[c]))
            FAIL(w, QF_ERR_OVERFLOW, "offset[%lld] exceeds 2^62 in magnitude", (long long)c);
        p->scale[c] = sp->scale[c];
        p->bias[c] = sp->bias ? sp->bias[c] : 0.0f;
        p->offset[c] = sp->offset ? sp->offset[c] : 0;
    }
    p->lsbs = sp->lsbs;
    return QF_OK;
}

/* nz = the nonzero entries of weight (rows, cols), row by row. */
static qf_status index_nonzero(const where *w, qf_circuit_sparse *nz, const int64_t *weight,
                               int64_t rows, int64_t cols)
{
    if (cols > INT32_MAX)
        FAIL(w, QF_ERR_ARG, "weight rows have %lld entries, more than %d", (long long)cols,
             INT32_MAX);
    int64_t nnz = 0;
    for (int64_t j = 0; j < rows * cols; j++)
        nnz += weight[j] != 0;
    nz->start = malloc((size_t)(rows + 1) * sizeof *nz->start);
    nz->col = malloc((size_t)(nnz > 0 ? nnz : 1) * sizeof *nz->col);
    nz->value = malloc((size_t)(nnz > 0 ? nnz : 1) * sizeof *nz->value);
    if (!nz->start || !nz->col || !nz->value)
        return QF_ERR_NOMEM;
    int64_t k = 0;
    for (int64_t r = 0; r < rows; r++) {
        nz->start[r] = k;
        for (int64_t i = 0; i < cols; i++)
            if (weight[r * cols + i] != 0) {
                nz->col[k] = (int32_t)i;
                nz->value[k++] = weight[r * cols + i];
            }
    }
    nz->start[rows] = k;
    return QF_OK;
}

/* Copy the weight codes (dims (4) sizes) minus the zero point. */
static qf_status copy_weight(const where *w, qf_circuit_op *p, const qf_op_spec *sp,
                             const int64_t *dims)
{
    int64_t count;
    if (!sp->weight)
        FAIL(w, QF_ERR_ARG, "weight codes are missing");
    if (!checked_count(&count, dims, 4))
        FAIL(w, QF_ERR_ARG, "weight has too many elements");
    p->weight = malloc((size_t)count * sizeof *p->weight);
    if (!p->weight)
        return QF_ERR_NOMEM;
    for (int64_t j = 0; j < count; j++)
        p->weight[j] = (int64_t)sp->weight[j] - sp->weight_zero_point;
    return index_nonzero(w, &p->nz, p->weight, dims[0], count / dims[0]);
}

/* ---- static bounds ---- */

/* [*lo, *hi] += w times any value in [a, b], overflow-checked; 0 on overflow. */
static int add_term(int64_t *lo, int64_t *hi, int64_t w, int64_t a, int64_t b)
{
    int64_t p, q;
    if (__builtin_mul_overflow(a, w, &p) || __builtin_mul_overflow(b, w, &q))
        return 0;
    return !__builtin_add_overflow(*lo, min64(p, q), lo) &&
           !__builtin_add_overflow(*hi, max64(p, q), hi);
}

/* Bounds of a DENSE node: per output, the sum of per-term extremes. */
static int dense_bounds(const qf_circuit_op *p, int64_t a, int64_t b, int64_t *lo, int64_t *hi)
{
    int64_t in = size3(p->in_shape);
    *lo = INT64_MAX;
    *hi = INT64_MIN;
    for (int64_t o = 0; o < p->oc; o++) {
        int64_t l = 0, h = 0;
        for (int64_t i = 0; i < in; i++)
            if (!add_term(&l, &h, p->weight[o * in + i], a, b))
                return 0;
        *lo = min64(*lo, l);
        *hi = max64(*hi, h);
    }
    return 1;
}

/* Bounds of a CONV (weight non-NULL) or POOL_SUM (weights 1, one channel
 * suffices: every channel sees the same box) node, position by position:
 * a tap in the padding holds pad_code, any other one a value in [a, b]. */
static int window_bounds(const qf_circuit_op *p, int64_t a, int64_t b, int64_t *lo, int64_t *hi)
{
    int64_t c_in = p->weight ? p->in_shape[0] : 1, oc = p->weight ? p->oc : 1;
    *lo = INT64_MAX;
    *hi = INT64_MIN;
    for (int64_t o = 0; o < oc; o++)
        for (int64_t oy = 0; oy < p->out_shape[1]; oy++)
            for (int64_t ox = 0; ox < p->out_shape[2]; ox++) {
                int64_t l = 0, h = 0;
                const int64_t *w = p->weight ? p->weight + o * c_in * p->kh * p->kw : NULL;
                for (int64_t c = 0; c < c_in; c++)
                    for (int64_t ky = 0; ky < p->kh; ky++) {
                        int64_t y = oy * p->sh - p->ph + ky;
                        for (int64_t kx = 0; kx < p->kw; kx++) {
                            int64_t x = ox * p->sw - p->pw + kx;
                            int inside = y >= 0 && y < p->in_shape[1] && x >= 0 &&
                                         x < p->in_shape[2];
                            int64_t wt = w ? *w++ : 1;
                            if (!add_term(&l, &h, wt, inside ? a : p->pad, inside ? b : p->pad))
                                return 0;
                        }
                    }
                *lo = min64(*lo, l);
                *hi = max64(*hi, h);
            }
    return 1;
}

/* Bounds of a LOOKUP: each channel's function is non-decreasing (positive
 * scale, monotone float rounding, ReLU and clamp), so its extremes are its
 * values at the input's extremes. */
static int lookup_bounds(const qf_circuit_op *p, int64_t a, int64_t b, int64_t *lo, int64_t *hi)
{
    int64_t m = (int64_t)1 << p->lsbs, t;
    *lo = INT64_MAX;
    *hi = INT64_MIN;
    for (int64_t c = 0; c < p->in_shape[0]; c++) {
        if (__builtin_mul_overflow(a, m, &t) || __builtin_add_overflow(t, p->offset[c], &t) ||
            __builtin_mul_overflow(b, m, &t) || __builtin_add_overflow(t, p->offset[c], &t))
            return 0;
        if (p->kind == QF_OP_LOOKUP) {
            *lo = min64(*lo, qf_circuit_lookup_code(p, c, a));
            *hi = max64(*hi, qf_circuit_lookup_code(p, c, b));
        }
    }
    return 1;
}

/* ---- creation ---- */

/* Fill op k from its spec, set the shape of its result and, except for
 * DECODE, the kind, shape and static bounds of node k + 1. */
static qf_status build_op(qf_circuit *c, int k, int n_ops, const qf_op_spec *sp,
                          char *err, int err_len)
{
    qf_circuit_op *p = &c->ops[k];
    const char *nm = sp->name ? sp->name : "";
    snprintf(p->name, sizeof p->name, "%s", nm);
    where w = {k, p->name, err, err_len};
    p->kind = sp->kind;
    if (sp->kind < QF_OP_DENSE || sp->kind > QF_OP_MAXPOOL)
        FAIL(&w, QF_ERR_ARG, "unknown op kind %d", sp->kind);
    if ((sp->kind == QF_OP_DECODE) != (k == n_ops - 1))
        FAIL(&w, QF_ERR_ARG, "%s", k == n_ops - 1 ? "the last op must be DECODE (the client's "
             "decoding of the returned integers)" : "DECODE may only be the last op");
    if (sp->src < 0 || sp->src > k)
        FAIL(&w, QF_ERR_ARG, "%s reads node %d, but only nodes 0..%d exist before it",
             kind_name(sp->kind), sp->src, k);
    p->src = sp->src;
    const qf_node_info *in = &c->nodes[p->src];
    memcpy(p->in_shape, in->shape, sizeof p->in_shape);
    memcpy(p->out_shape, in->shape, sizeof p->out_shape);
    int64_t a = in->static_min, b = in->static_max, lo = a, hi = b;
    int ok = 1, node_kind = 0;
    qf_status st = QF_OK;
    switch (sp->kind) {
    case QF_OP_DENSE: {
        const int *ws = sp->weight_shape;
        if (ws[0] < 1 || ws[1] != size3(p->in_shape) || ws[2] != 1 || ws[3] != 1)
            FAIL(&w, QF_ERR_SHAPE, "weight must have shape (out >= 1, %lld, 1, 1) for its "
                 "input of %lld values, got (%d, %d, %d, %d)", (long long)size3(p->in_shape),
                 (long long)size3(p->in_shape), ws[0], ws[1], ws[2], ws[3]);
        p->oc = ws[0];
        int64_t dims[4] = {p->oc, size3(p->in_shape), 1, 1};
        if ((st = copy_weight(&w, p, sp, dims)) != QF_OK)
            return st;
        p->out_shape[0] = p->oc; p->out_shape[1] = 1; p->out_shape[2] = 1;
        ok = dense_bounds(p, a, b, &lo, &hi);
        node_kind = QF_NODE_ACCUMULATOR;
        break;
    }
    case QF_OP_CONV: {
        const int *ws = sp->weight_shape;
        if (ws[0] < 1 || ws[1] != p->in_shape[0])
            FAIL(&w, QF_ERR_SHAPE, "weight (%d, %d, %d, %d) must have %lld input channels, "
                 "those of its input", ws[0], ws[1], ws[2], ws[3], (long long)p->in_shape[0]);
        if ((st = set_window(&w, p, sp, ws[2], ws[3])) != QF_OK)
            return st;
        p->oc = ws[0];
        int64_t dims[4] = {p->oc, p->in_shape[0], p->kh, p->kw}, count;
        if ((st = copy_weight(&w, p, sp, dims)) != QF_OK)
            return st;
        p->out_shape[0] = p->oc;
        if (!checked_count(&count, p->out_shape, 3))
            FAIL(&w, QF_ERR_ARG, "its result has too many elements");
        ok = window_bounds(p, a, b, &lo, &hi);
        node_kind = QF_NODE_ACCUMULATOR;
        break;
    }
    case QF_OP_POOL_SUM:
        if ((st = set_window(&w, p, sp, sp->kernel[0], sp->kernel[1])) != QF_OK)
            return st;
        ok = window_bounds(p, a, b, &lo, &hi);
        node_kind = QF_NODE_POOL_SUM;
        break;
    case QF_OP_MAXPOOL:   /* maxima of values in [a, b]: the same box */
        if (2 * sp->padding[0] > sp->kernel[0] || 2 * sp->padding[1] > sp->kernel[1])
            FAIL(&w, QF_ERR_ARG, "padding (%d, %d) must be at most half the kernel (%d, %d)",
                 sp->padding[0], sp->padding[1], sp->kernel[0], sp->kernel[1]);
        if ((st = set_window(&w, p, sp, sp->kernel[0], sp->kernel[1])) != QF_OK)
            return st;
        node_kind = QF_NODE_MAXPOOL;
        break;
    case QF_OP_ROUND:
        if (sp->lsbs < 1 || sp->lsbs > QF_CIRCUIT_MAX_LSBS)
            FAIL(&w, QF_ERR_ARG, "lsbs must lie in [1, %d], got %d", QF_CIRCUIT_MAX_LSBS,
                 sp->lsbs);
        p->lsbs = sp->lsbs;
        lo = qf_circuit_round_msbs(a, p->lsbs);
        hi = qf_circuit_round_msbs(b, p->lsbs);
        node_kind = QF_NODE_ROUNDED;
        break;
    case QF_OP_LOOKUP:
    case QF_OP_DECODE:
        if ((st = copy_affine(&w, p, sp)) != QF_OK)
            return st;
        if (sp->kind == QF_OP_DECODE && sp->relu)
            FAIL(&w, QF_ERR_ARG, "DECODE applies no ReLU; quantize the output with a LOOKUP "
                 "first");
        if (sp->kind == QF_OP_LOOKUP) {
            char what[QF_CIRCUIT_NAME_LEN + 48];
            snprintf(what, sizeof what, "op %d (%s) output quantizer", k, p->name);
            if (!quantizer_ok(&sp->quant, what, err, err_len))
                return QF_ERR_ARG;
            p->relu = sp->relu != 0;
            p->quant = sp->quant;
            p->quant_lo = (float)((int64_t)p->quant.qmin - p->quant.zero_point);
            p->quant_hi = (float)((int64_t)p->quant.qmax - p->quant.zero_point);
        }
        ok = lookup_bounds(p, a, b, &lo, &hi);
        if (sp->kind == QF_OP_DECODE) {
            lo = a;
            hi = b;
        }
        node_kind = QF_NODE_LOOKUP_OUTPUT;
        break;
    case QF_OP_RESHAPE: {
        int64_t count, dims[3] = {sp->shape[0], sp->shape[1], sp->shape[2]};
        if (sp->shape[0] < 1 || sp->shape[1] < 1 || sp->shape[2] < 1 ||
            !checked_count(&count, dims, 3) || count != size3(p->in_shape))
            FAIL(&w, QF_ERR_SHAPE, "cannot reshape %lld values to (%d, %d, %d)",
                 (long long)size3(p->in_shape), sp->shape[0], sp->shape[1], sp->shape[2]);
        for (int d = 0; d < 3; d++)
            p->out_shape[d] = sp->shape[d];
        node_kind = QF_NODE_RESHAPE;
        break;
    }
    case QF_OP_TRANSPOSE:
        if (sp->dims[0] < 0 || sp->dims[0] > 2 || sp->dims[1] < 0 || sp->dims[1] > 2)
            FAIL(&w, QF_ERR_ARG, "dims must be axes of (C, H, W), 0..2, got (%d, %d)",
                 sp->dims[0], sp->dims[1]);
        p->axes[0] = sp->dims[0];
        p->axes[1] = sp->dims[1];
        p->out_shape[p->axes[0]] = p->in_shape[p->axes[1]];
        p->out_shape[p->axes[1]] = p->in_shape[p->axes[0]];
        node_kind = QF_NODE_TRANSPOSE;
        break;
    case QF_OP_ADD: {
        if (sp->src2 < 0 || sp->src2 > k)
            FAIL(&w, QF_ERR_ARG, "ADD reads node %d, but only nodes 0..%d exist before it",
                 sp->src2, k);
        const qf_node_info *in2 = &c->nodes[sp->src2];
        if (memcmp(in2->shape, in->shape, sizeof in->shape) != 0)
            FAIL(&w, QF_ERR_SHAPE, "operands have shapes (%lld, %lld, %lld) and (%lld, %lld, "
                 "%lld); ADD needs one shape", (long long)in->shape[0], (long long)in->shape[1],
                 (long long)in->shape[2], (long long)in2->shape[0], (long long)in2->shape[1],
                 (long long)in2->shape[2]);
        p->src2 = sp->src2;
        ok = !__builtin_add_overflow(a, in2->static_min, &lo) &&
             !__builtin_add_overflow(b, in2->static_max, &hi);
        node_kind = QF_NODE_ADD;
        break;
    }
    }
    if (!ok || beyond_limit(lo) || beyond_limit(hi))
        FAIL(&w, QF_ERR_OVERFLOW, "its values could exceed 2^62 in magnitude for input values "
             "in [%lld, %lld]", (long long)a, (long long)b);
    if (sp->kind == QF_OP_DECODE)
        return QF_OK;
    qf_node_info *node = &c->nodes[k + 1];
    node->op = k;
    node->kind = node_kind;
    memcpy(node->shape, p->out_shape, sizeof node->shape);
    node->static_min = lo;
    node->static_max = hi;
    return QF_OK;
}

qf_status qf_circuit_create(qf_circuit **out, const qf_quantizer *input_quant,
                            const int64_t in_shape[3], const qf_op_spec *ops, int n_ops,
                            char *err, int err_len)
{
    set_err(err, err_len, "%s", "");
    *out = NULL;
    if (!input_quant || !in_shape || !ops || n_ops < 1) {
        set_err(err, err_len, "a circuit needs an input quantizer, an input shape and at "
                "least one op (DECODE)");
        return QF_ERR_ARG;
    }
    if (!quantizer_ok(input_quant, "input quantizer", err, err_len))
        return QF_ERR_ARG;
    for (int d = 0; d < 3; d++) {
        if (in_shape[d] < 1 || in_shape[d] > QF_CIRCUIT_MAX_DIM) {
            set_err(err, err_len, "input shape must be three sizes in [1, %d], got (%lld, "
                    "%lld, %lld)", QF_CIRCUIT_MAX_DIM, (long long)in_shape[0],
                    (long long)in_shape[1], (long long)in_shape[2]);
            return QF_ERR_ARG;
        }
    }
    if (size3(in_shape) > SIZE_LIMIT) {
        set_err(err, err_len, "input has too many elements (%lld)", (long long)size3(in_shape));
        return QF_ERR_ARG;
    }
    qf_circuit *c = calloc(1, sizeof *c);
    if (!c)
        return QF_ERR_NOMEM;
    c->n_ops = n_ops;
    c->n_nodes = n_ops;
    c->input = *input_quant;
    c->input_lo = (float)((int64_t)input_quant->qmin - input_quant->zero_point);
    c->input_hi = (float)((int64_t)input_quant->qmax - input_quant->zero_point);
    c->ops = calloc((size_t)n_ops, sizeof *c->ops);
    c->nodes = calloc((size_t)n_ops, sizeof *c->nodes);
    c->node_start = calloc((size_t)n_ops, sizeof *c->node_start);
    qf_status st = QF_OK;
    if (!c->ops || !c->nodes || !c->node_start) {
        st = QF_ERR_NOMEM;
        goto fail;
    }
    c->nodes[0] = (qf_node_info){-1, QF_NODE_INPUT, {in_shape[0], in_shape[1], in_shape[2]},
                                 input_quant->qmin, input_quant->qmax};
    for (int k = 0; k < n_ops && st == QF_OK; k++)
        st = build_op(c, k, n_ops, &ops[k], err, err_len);
    if (st != QF_OK)
        goto fail;
    int64_t total = 0;
    for (int j = 0; j < c->n_nodes; j++) {
        c->node_start[j] = total;
        total += size3(c->nodes[j].shape);
    }
    c->sample_len = total;
    c->block_lanes = QF_CIRCUIT_BLOCK_FLOATS / total / 8 * 8;
    c->block_lanes = c->block_lanes > QF_CIRCUIT_BLOCK ? QF_CIRCUIT_BLOCK : c->block_lanes;
    c->block_lanes = c->block_lanes < 8 ? 8 : c->block_lanes;
    int fits = qf_circuit_prepare_float(c);
    if (fits < 0) {
        st = QF_ERR_NOMEM;
        goto fail;
    }
    c->float_exact = fits;
    *out = c;
    return QF_OK;
fail:
    if (st == QF_ERR_NOMEM)
        set_err(err, err_len, "out of memory building the circuit");
    qf_circuit_free(c);
    return st;
}

void qf_circuit_free(qf_circuit *c)
{
    if (!c)
        return;
    for (int k = 0; c->ops && k < c->n_ops; k++) {
        free(c->ops[k].weight);
        free(c->ops[k].nz.start);
        free(c->ops[k].nz.col);
        free(c->ops[k].nz.value);
        free(c->ops[k].nz.value_f);
        free(c->ops[k].nz.tap_off);
        qf_circuit_int8_free(c->ops[k].i8);
        qf_circuit_steps_free(c->ops[k].steps);
        free(c->ops[k].offset);
        free(c->ops[k].offset_f);
        free(c->ops[k].scale);
        free(c->ops[k].bias);
    }
    free(c->ops);
    free(c->nodes);
    free(c->node_start);
    free(c);
}

int qf_circuit_n_ops(const qf_circuit *c) { return c->n_ops; }
int64_t qf_circuit_in_size(const qf_circuit *c) { return size3(c->nodes[0].shape); }
int64_t qf_circuit_out_size(const qf_circuit *c)
{
    return size3(c->ops[c->n_ops - 1].out_shape);
}
int qf_circuit_n_nodes(const qf_circuit *c) { return c->n_nodes; }

const char *qf_circuit_op_name(const qf_circuit *c, int k)
{
    return k >= 0 && k < c->n_ops ? c->ops[k].name : "input";
}

const qf_node_info *qf_circuit_node(const qf_circuit *c, int node)
{
    return node >= 0 && node < c->n_nodes ? &c->nodes[node] : NULL;
}

