/* circuit_sample.c: the int64 engine of the integer circuit, one sample at
 * a time, the reference the float32 block engine (circuit_block.c) agrees
 * with.  It runs any valid circuit: the static bounds (circuit.c) keep
 * every value within +-2^62, so no int64 operation here overflows.
 * DENSE visits the nonzero weights only; CONV walks the whole kernel. */
#include <string.h>
#include "circuit_internal.h"

/* dst (OC) = the nonzero weights of each row times src (in). */
static void run_dense(const qf_circuit_op *p, int64_t *dst, const int64_t *src)
{
    const qf_circuit_sparse *nz = &p->nz;
    for (int64_t o = 0; o < p->oc; o++) {
        int64_t acc = 0;
        for (int64_t k = nz->start[o]; k < nz->start[o + 1]; k++)
            acc += src[nz->col[k]] * nz->value[k];
        dst[o] = acc;
    }
}

/* CONV (weight non-NULL: dst (OC, OH, OW)) or POOL_SUM (dst (C, OH, OW)):
 * the same window walk, in the order of the static bounds. */
static void run_window(const qf_circuit_op *p, int64_t *dst, const int64_t *src)
{
    int64_t h = p->in_shape[1], wd = p->in_shape[2];
    int conv = p->weight != NULL;
    int64_t planes = conv ? p->oc : p->in_shape[0];
    int64_t c_in = conv ? p->in_shape[0] : 1;
    for (int64_t o = 0; o < planes; o++)
        for (int64_t oy = 0; oy < p->out_shape[1]; oy++)
            for (int64_t ox = 0; ox < p->out_shape[2]; ox++) {
                const int64_t *w = conv ? p->weight + o * c_in * p->kh * p->kw : NULL;
                int64_t acc = 0;
                for (int64_t ci = 0; ci < c_in; ci++) {
                    const int64_t *plane = src + (conv ? ci : o) * h * wd;
                    for (int64_t ky = 0; ky < p->kh; ky++) {
                        int64_t y = oy * p->sh - p->ph + ky;
                        for (int64_t kx = 0; kx < p->kw; kx++) {
                            int64_t x = ox * p->sw - p->pw + kx;
                            int64_t v = y >= 0 && y < h && x >= 0 && x < wd ? plane[y * wd + x]
                                                                            : p->pad;
                            acc += conv ? v * *w++ : v;
                        }
                    }
                }
                *dst++ = acc;
            }
}

static void run_transpose(const qf_circuit_op *p, int64_t *dst, const int64_t *src)
{
    const int64_t *is = p->in_shape, *os = p->out_shape;
    int64_t stride_in[3] = {is[1] * is[2], is[2], 1};
    int64_t st[3] = {stride_in[0], stride_in[1], stride_in[2]};
    st[p->axes[0]] = stride_in[p->axes[1]];
    st[p->axes[1]] = stride_in[p->axes[0]];
    for (int64_t i = 0; i < os[0]; i++)
        for (int64_t j = 0; j < os[1]; j++)
            for (int64_t k = 0; k < os[2]; k++)
                *dst++ = src[i * st[0] + j * st[1] + k * st[2]];
}

/* dst (C, plane) = the lookup codes of src, channel by channel. */
static void run_lookup(const qf_circuit_op *p, int64_t *dst, const int64_t *src)
{
    int64_t plane = p->in_shape[1] * p->in_shape[2];
    for (int64_t ch = 0; ch < p->in_shape[0]; ch++)
        for (int64_t i = ch * plane; i < (ch + 1) * plane; i++)
            dst[i] = qf_circuit_lookup_code(p, ch, src[i]);
}

/* out, out_int (may be NULL) (C, plane) from the node DECODE reads. */
static void run_decode(const qf_circuit_op *p, float *out, int64_t *out_int, const int64_t *src)
{
    int64_t plane = p->in_shape[1] * p->in_shape[2];
    for (int64_t ch = 0; ch < p->in_shape[0]; ch++)
        for (int64_t i = ch * plane; i < (ch + 1) * plane; i++) {
            out[i] = qf_circuit_affine(p, ch, src[i]);
            if (out_int)
                out_int[i] = src[i];
        }
}

static void widen(qf_range *r, const int64_t *v, int64_t count)
{
    for (int64_t i = 0; i < count; i++)
        qf_range_update(r, v[i]);
}

void qf_circuit_run_sample(const qf_circuit *c, float *out, int64_t *out_int, qf_range *ranges,
                           int64_t *ws)
{
    if (ranges)
        widen(&ranges[0], ws, qf_circuit_in_size(c));
    for (int k = 0; k < c->n_ops; k++) {
        const qf_circuit_op *p = &c->ops[k];
        const int64_t *src = ws + c->node_start[p->src];
        if (p->kind == QF_OP_DECODE) {
            run_decode(p, out, out_int, src);
            break;
        }
        int64_t *dst = ws + c->node_start[k + 1];
        int64_t n_out = qf_circuit_size3(p->out_shape);
        switch (p->kind) {
        case QF_OP_DENSE:
            run_dense(p, dst, src);
            break;
        case QF_OP_CONV:
        case QF_OP_POOL_SUM:
            run_window(p, dst, src);
            break;
        case QF_OP_MAXPOOL:
            qf_circuit_maxpool_sample(p, dst, src);
            break;
        case QF_OP_ROUND:
            for (int64_t i = 0; i < n_out; i++)
                dst[i] = qf_circuit_round_msbs(src[i], p->lsbs);
            break;
        case QF_OP_LOOKUP:
            run_lookup(p, dst, src);
            break;
        case QF_OP_RESHAPE:
            memcpy(dst, src, (size_t)n_out * sizeof *dst);
            break;
        case QF_OP_TRANSPOSE:
            run_transpose(p, dst, src);
            break;
        case QF_OP_ADD: {
            const int64_t *src2 = ws + c->node_start[p->src2];
            for (int64_t i = 0; i < n_out; i++)
                dst[i] = src[i] + src2[i];
            break;
        }
        }
        if (ranges)
            widen(&ranges[k + 1], dst, n_out);
    }
}
