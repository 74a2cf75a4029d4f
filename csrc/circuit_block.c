/* circuit_block.c: the float32 block engine of the integer circuit.
 *
 * When every integer a circuit can compute stays below 2^24 in magnitude,
 * and so does every partial sum of its DENSE, CONV and POOL_SUM ops in any
 * order and every lookup argument v = t 2^l + offset (qf_circuit_prepare_float
 * checks this from the static bounds), float32 holds all of them exactly:
 * integer additions and products of exact floats are exact while the results
 * stay below 2^24.  The engine then runs the circuit on float32 values and
 * gives the same integers as the int64 engine, whatever the summation order
 * and instruction set, and the same lookups: v is the same float32 value as
 * (float)v of the int64 v, followed by the same float32 operations
 * (qf_affine_epilogue, ReLU, qf_quantize_value, the last two in a form with
 * fewer instructions and the same results, see lookup_block).  Zeros stay
 * +0: sums start at +0, and lookups add the offset and the zero point
 * (x + (+0) = +0 for x = -0), so every float is the integer's own value,
 * sign of zero included.
 *
 * Samples are evaluated a block at a time, op by op: a node of size K is
 * held as (K, L), one row of L lanes (one lane per sample, L a multiple of 8
 * up to QF_CIRCUIT_BLOCK), so every kernel runs its innermost loop over the
 * samples of the block and vectorises with any instruction set.  DENSE and
 * CONV visit only nonzero (unpruned) weights.  Lanes past the batch hold a
 * valid input code and are never read back.
 *
 * Two faster forms of the same integers, chosen per op at preparation: a
 * DENSE or CONV whose input codes fit 8 bits and whose sums fit 16 bits runs
 * as an 8-bit integer product (circuit_int8.c), and a LOOKUP with few output
 * codes as a count of thresholds (circuit_steps.c); an 8-bit op also runs
 * the LOOKUP and POOL_SUM after it, row by row, when their nodes have one
 * reader and the node ranges are not wanted (run_block). */
#include "dispatch.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "circuit_internal.h"
#include "quant.h"

#define LANE_GROUP 8                 /* lanes of one vector step               */
#define WIDE 32                      /* lanes of the register-blocked DENSE    */
#define EXACT_LIMIT ((int64_t)1 << 24)

/* ---- preparation: is the circuit float-exact? ---- */

static int64_t abs64(int64_t v) { return v < 0 ? -v : v; }

/* Largest magnitude of a node's values (bounds are within +-2^62). */
static int64_t node_magnitude(const qf_node_info *nd)
{
    int64_t a = abs64(nd->static_min), b = abs64(nd->static_max);
    return a > b ? a : b;
}

/* Whether m times the largest row sum of |w| stays below 2^24 (every
 * partial sum of a row, in any order, is at most that), and each |w| too. */
static int sparse_fits(const qf_circuit_sparse *nz, int64_t rows, int64_t m)
{
    for (int64_t r = 0; r < rows; r++) {
        int64_t sum = 0, bound;
        for (int64_t k = nz->start[r]; k < nz->start[r + 1]; k++) {
            if (abs64(nz->value[k]) >= EXACT_LIMIT)
                return 0;
            sum += abs64(nz->value[k]);             /* <= 2^24 * 2^36: no overflow */
        }
        if (__builtin_mul_overflow(sum, m, &bound) || bound >= EXACT_LIMIT)
            return 0;
    }
    return 1;
}

/* Whether |t| 2^lsbs + |offset[c]| < 2^24 for every t of the input. */
static int affine_fits(const qf_circuit_op *p, int64_t m)
{
    int64_t scaled;
    if (__builtin_mul_overflow(m, (int64_t)1 << p->lsbs, &scaled))
        return 0;
    for (int64_t ch = 0; ch < p->in_shape[0]; ch++)
        if (abs64(p->offset[ch]) >= EXACT_LIMIT || scaled + abs64(p->offset[ch]) >= EXACT_LIMIT)
            return 0;
    return 1;
}

static int op_fits(const qf_circuit *c, const qf_circuit_op *p)
{
    int64_t m = node_magnitude(&c->nodes[p->src]);
    int64_t mp = m > abs64(p->pad) ? m : abs64(p->pad);
    switch (p->kind) {
    case QF_OP_DENSE:
        return sparse_fits(&p->nz, p->oc, m);
    case QF_OP_CONV:
        return sparse_fits(&p->nz, p->oc, mp);
    case QF_OP_POOL_SUM:
        return mp < EXACT_LIMIT && p->kh * p->kw < EXACT_LIMIT &&
               mp * p->kh * p->kw < EXACT_LIMIT;
    case QF_OP_ROUND:
        return p->lsbs <= 24 && m + ((int64_t)1 << (p->lsbs - 1)) < EXACT_LIMIT;
    case QF_OP_LOOKUP:
    case QF_OP_DECODE:
        return affine_fits(p, m);
    }
    return 1;    /* RESHAPE, TRANSPOSE, ADD: their results are nodes, checked below */
}

/* Ops reading node j. */
static int readers(const qf_circuit *c, int j)
{
    int n = 0;
    for (int k = 0; k < c->n_ops; k++)
        n += (c->ops[k].src == j) + (c->ops[k].kind == QF_OP_ADD && c->ops[k].src2 == j);
    return n;
}

/* i8->fuse (circuit_int8.c): 1 when an 8-bit op's node has one reader, the
 * next op, a LOOKUP by thresholds; 2 when that LOOKUP's node in turn has one
 * reader, the op after it, a POOL_SUM without padding whose stride is its
 * kernel, after a CONV; 3 when the pool's node has one reader too, the op
 * after it, a LOOKUP by thresholds. */
static void mark_fused(qf_circuit *c)
{
    for (int k = 0; k + 2 < c->n_ops; k++) {
        qf_circuit_op *p = &c->ops[k], *look = p + 1, *pool = p + 2, *after = p + 3;
        if (!p->i8 || look->kind != QF_OP_LOOKUP || !look->steps || look->src != k + 1 ||
            readers(c, k + 1) != 1)
            continue;
        p->i8->fuse = 1;
        if (p->kind != QF_OP_CONV || pool->kind != QF_OP_POOL_SUM || pool->src != k + 2 ||
            readers(c, k + 2) != 1 || pool->ph != 0 || pool->pw != 0 || pool->sh != pool->kh ||
            pool->sw != pool->kw || pool->kh * pool->kw * QF_CIRCUIT_MAX_STEPS >= (1 << 15))
            continue;   /* (the window's count sum must stay an int16) */
        p->i8->fuse = 2;
        if (k + 3 < c->n_ops && after->kind == QF_OP_LOOKUP && after->steps &&
            after->src == k + 3 && readers(c, k + 3) == 1)
            p->i8->fuse = 3;
    }
}

int qf_circuit_prepare_float(qf_circuit *c)
{
    for (int j = 0; j < c->n_nodes; j++)
        if (node_magnitude(&c->nodes[j]) >= EXACT_LIMIT)
            return 0;
    for (int k = 0; k < c->n_ops; k++)
        if (!op_fits(c, &c->ops[k]))
            return 0;
    for (int k = 0; k < c->n_ops; k++) {
        qf_circuit_op *p = &c->ops[k];
        if (p->nz.start) {
            int64_t nnz = p->nz.start[p->oc];
            p->nz.value_f = malloc((size_t)(nnz > 0 ? nnz : 1) * sizeof(float));
            if (!p->nz.value_f)
                return -1;
            for (int64_t j = 0; j < nnz; j++)
                p->nz.value_f[j] = (float)p->nz.value[j];
        }
        if (p->kind == QF_OP_CONV) {
            int64_t nnz = p->nz.start[p->oc], khw = p->kh * p->kw;
            int64_t hp = p->in_shape[1] + 2 * p->ph, wp = p->in_shape[2] + 2 * p->pw;
            p->nz.tap_off = malloc((size_t)(nnz > 0 ? nnz : 1) * sizeof(int64_t));
            if (!p->nz.tap_off)
                return -1;
            for (int64_t j = 0; j < nnz; j++) {
                int64_t tap = p->nz.col[j];
                p->nz.tap_off[j] = (tap / khw * hp + tap % khw / p->kw) * wp + tap % p->kw;
            }
        }
        if (qf_circuit_prepare_int8(c, p) < 0 || qf_circuit_prepare_steps(c, p) < 0)
            return -1;
        if (p->offset) {
            p->offset_f = malloc((size_t)p->in_shape[0] * sizeof(float));
            if (!p->offset_f)
                return -1;
            for (int64_t ch = 0; ch < p->in_shape[0]; ch++)
                p->offset_f[ch] = (float)p->offset[ch];
        }
    }
    mark_fused(c);
    return 1;
}

/* Elements of the largest zero-padded CONV input of one sample. */
static int64_t max_padded_len(const qf_circuit *c)
{
    int64_t len = 0;
    for (int k = 0; k < c->n_ops; k++) {
        const qf_circuit_op *p = &c->ops[k];
        int64_t padded = p->in_shape[0] * (p->in_shape[1] + 2 * p->ph) *
                         (p->in_shape[2] + 2 * p->pw);
        if (p->kind == QF_OP_CONV && padded > len)
            len = padded;
    }
    return len;
}

/* After the nodes: the zero-padded input of a float32 CONV, or the packed
 * bytes of an 8-bit DENSE or CONV (circuit_int8.c). */
int64_t qf_circuit_block_workspace_len(const qf_circuit *c)
{
    int64_t padded = max_padded_len(c) * c->block_lanes;
    int64_t packed = (qf_circuit_int8_workspace_bytes(c) + 31) / 32 * 8;   /* floats */
    return c->sample_len * c->block_lanes + (padded > packed ? padded : packed);
}

/* ---- kernels: a node of size K is (K, L); L a multiple of LANE_GROUP ---- */

/* Eight float32 lanes: one AVX register, or two SSE ones on the baseline
 * (GCC and Clang vector extensions; loads and stores go through memcpy, so
 * no alignment is assumed). */
typedef float lanes8 __attribute__((vector_size(32)));

static inline void load8(lanes8 *v, const float *p) { memcpy(v, p, sizeof *v); }
static inline void store8(float *p, const lanes8 *v) { memcpy(p, v, sizeof *v); }

/* d (L) = sum_k w[k] src[col[k]] (L), 8 lanes at a time with four partial
 * sums over k (k mod 4), added at the end. */
static inline void sparse_row_narrow(float *restrict d, const float *restrict src,
                                     const int32_t *col, const float *w, int64_t nnz,
                                     int64_t lanes)
{
    for (int64_t s0 = 0; s0 < lanes; s0 += LANE_GROUP) {
        lanes8 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, x0, x1, x2, x3;
        int64_t k = 0;
        for (; k + 4 <= nnz; k += 4) {
            load8(&x0, src + col[k] * lanes + s0);
            load8(&x1, src + col[k + 1] * lanes + s0);
            load8(&x2, src + col[k + 2] * lanes + s0);
            load8(&x3, src + col[k + 3] * lanes + s0);
            a0 += w[k] * x0;
            a1 += w[k + 1] * x1;
            a2 += w[k + 2] * x2;
            a3 += w[k + 3] * x3;
        }
        for (; k < nnz; k++) {
            load8(&x0, src + col[k] * lanes + s0);
            a0 += w[k] * x0;
        }
        a0 = (a0 + a1) + (a2 + a3);
        store8(d + s0, &a0);
    }
}

/* The same for lanes a multiple of WIDE: 32 lanes (four registers) at a
 * time, with two partial sums over k (k mod 2) so that eight independent
 * additions are in flight. */
static inline void sparse_row_wide(float *restrict d, const float *restrict src,
                                   const int32_t *col, const float *w, int64_t nnz,
                                   int64_t lanes)
{
    for (int64_t s0 = 0; s0 < lanes; s0 += WIDE) {
        lanes8 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, b0 = {0}, b1 = {0}, b2 = {0}, b3 = {0};
        lanes8 x0, x1, x2, x3;
        int64_t k = 0;
        for (; k + 2 <= nnz; k += 2) {
            const float *x = src + col[k] * lanes + s0, *y = src + col[k + 1] * lanes + s0;
            float wx = w[k], wy = w[k + 1];
            load8(&x0, x);
            load8(&x1, x + 8);
            load8(&x2, x + 16);
            load8(&x3, x + 24);
            a0 += wx * x0;
            a1 += wx * x1;
            a2 += wx * x2;
            a3 += wx * x3;
            load8(&x0, y);
            load8(&x1, y + 8);
            load8(&x2, y + 16);
            load8(&x3, y + 24);
            b0 += wy * x0;
            b1 += wy * x1;
            b2 += wy * x2;
            b3 += wy * x3;
        }
        if (k < nnz) {
            const float *x = src + col[k] * lanes + s0;
            load8(&x0, x);
            load8(&x1, x + 8);
            load8(&x2, x + 16);
            load8(&x3, x + 24);
            a0 += w[k] * x0;
            a1 += w[k] * x1;
            a2 += w[k] * x2;
            a3 += w[k] * x3;
        }
        a0 += b0;
        a1 += b1;
        a2 += b2;
        a3 += b3;
        store8(d + s0, &a0);
        store8(d + s0 + 8, &a1);
        store8(d + s0 + 16, &a2);
        store8(d + s0 + 24, &a3);
    }
}

/* dst (OC, L) = the nonzero weights of each row times src (in, L). */
QF_MULTIVERSION
static void dense_block(float *restrict dst, const float *restrict src, const qf_circuit_op *p,
                        int64_t lanes)
{
    const qf_circuit_sparse *nz = &p->nz;
    for (int64_t o = 0; o < p->oc; o++) {
        int64_t k0 = nz->start[o], nnz = nz->start[o + 1] - k0;
        if (lanes % WIDE == 0)
            sparse_row_wide(dst + o * lanes, src, nz->col + k0, nz->value_f + k0, nnz, lanes);
        else
            sparse_row_narrow(dst + o * lanes, src, nz->col + k0, nz->value_f + k0, nnz, lanes);
    }
}

/* CONV (dst (OC, OH, OW) rows, nonzero taps) or POOL_SUM (dst (C, OH, OW),
 * weight 1 over each channel's window); padded taps add w pad_code. */
QF_MULTIVERSION
static void window_block(float *restrict dst, const float *restrict src, const qf_circuit_op *p,
                         int64_t lanes)
{
    int conv = p->kind == QF_OP_CONV;
    int64_t h = p->in_shape[1], wd = p->in_shape[2], oh = p->out_shape[1], ow = p->out_shape[2];
    int64_t planes = p->out_shape[0], khw = p->kh * p->kw, taps = conv ? 0 : khw;
    float pad = (float)p->pad;
    for (int64_t o = 0; o < planes; o++) {
        int64_t k0 = conv ? p->nz.start[o] : 0;
        if (conv)
            taps = p->nz.start[o + 1] - k0;
        for (int64_t oy = 0; oy < oh; oy++)
            for (int64_t ox = 0; ox < ow; ox++) {
                float *restrict d = dst + ((o * oh + oy) * ow + ox) * lanes;
                float padded = 0.0f;
                for (int64_t s = 0; s < lanes; s++)
                    d[s] = 0.0f;
                for (int64_t t = 0; t < taps; t++) {
                    int64_t tap = conv ? p->nz.col[k0 + t] : t;
                    int64_t ci = conv ? tap / khw : o, ky = tap % khw / p->kw, kx = tap % p->kw;
                    int64_t y = oy * p->sh - p->ph + ky, x = ox * p->sw - p->pw + kx;
                    float wt = conv ? p->nz.value_f[k0 + t] : 1.0f;
                    if (y < 0 || y >= h || x < 0 || x >= wd) {
                        padded += wt * pad;
                        continue;
                    }
                    const float *restrict row = src + ((ci * h + y) * wd + x) * lanes;
                    for (int64_t s = 0; s < lanes; s++)
                        d[s] += wt * row[s];
                }
                for (int64_t s = 0; s < lanes; s++)
                    d[s] += padded;
            }
    }
}

/* pad (C, Hp, Wp, L) = src (C, H, W, L) surrounded by the pad code. */
static void pad_input(float *restrict pad, const float *restrict src, const qf_circuit_op *p,
                      int64_t lanes)
{
    int64_t h = p->in_shape[1], wd = p->in_shape[2], hp = h + 2 * p->ph, wp = wd + 2 * p->pw;
    float code = (float)p->pad;
    for (int64_t ci = 0; ci < p->in_shape[0]; ci++)
        for (int64_t y = 0; y < hp; y++) {
            float *row = pad + (ci * hp + y) * wp * lanes;
            int inside = y >= p->ph && y < p->ph + h;
            for (int64_t s = 0; s < wp * lanes; s++)
                row[s] = code;
            if (inside)
                memcpy(row + p->pw * lanes, src + (ci * h + y - p->ph) * wd * lanes,
                       (size_t)(wd * lanes) * sizeof *row);
        }
}

#define INLINE_LANES static inline __attribute__((always_inline))

/* d (nv vectors of lanes) = sum over the taps of w[t] x[(base + off[t]) L ..]:
 * the running sums stay in registers (exact: any order). */
INLINE_LANES void conv_lanes(float *restrict d, const float *restrict x, int64_t base,
                              const int64_t *off, const float *w, int64_t taps, int64_t lanes,
                              int nv)
{
    lanes8 acc[8], xv;
    for (int v = 0; v < nv; v++)
        acc[v] = (lanes8){0};
    for (int64_t t = 0; t < taps; t++) {
        const float *row = x + (base + off[t]) * lanes;
        float wt = w[t];
        for (int v = 0; v < nv; v++) {
            load8(&xv, row + v * LANE_GROUP);
            acc[v] += wt * xv;
        }
    }
    for (int v = 0; v < nv; v++)
        store8(d + v * LANE_GROUP, &acc[v]);
}

/* CONV of a float-exact circuit: dst (OC, OH, OW, L) over the nonzero taps of
 * each output channel, reading the padded copy of src (pad: workspace). */
QF_MULTIVERSION
static void conv_block(float *restrict dst, const float *restrict src, const qf_circuit_op *p,
                       int64_t lanes, float *restrict pad)
{
    int64_t oh = p->out_shape[1], ow = p->out_shape[2], wp = p->in_shape[2] + 2 * p->pw;
    pad_input(pad, src, p, lanes);
    for (int64_t o = 0; o < p->oc; o++) {
        int64_t k0 = p->nz.start[o], taps = p->nz.start[o + 1] - k0;
        const int64_t *off = p->nz.tap_off + k0;
        const float *w = p->nz.value_f + k0;
        for (int64_t oy = 0; oy < oh; oy++)
            for (int64_t ox = 0; ox < ow; ox++) {
                float *d = dst + ((o * oh + oy) * ow + ox) * lanes;
                int64_t base = oy * p->sh * wp + ox * p->sw;
                switch (lanes / LANE_GROUP) {   /* 1..8 vectors: compile-time counts */
                case 8: conv_lanes(d, pad, base, off, w, taps, lanes, 8); break;
                case 7: conv_lanes(d, pad, base, off, w, taps, lanes, 7); break;
                case 6: conv_lanes(d, pad, base, off, w, taps, lanes, 6); break;
                case 5: conv_lanes(d, pad, base, off, w, taps, lanes, 5); break;
                case 4: conv_lanes(d, pad, base, off, w, taps, lanes, 4); break;
                case 3: conv_lanes(d, pad, base, off, w, taps, lanes, 3); break;
                case 2: conv_lanes(d, pad, base, off, w, taps, lanes, 2); break;
                default: conv_lanes(d, pad, base, off, w, taps, lanes, 1); break;
                }
            }
    }
}

/* floor((v + 2^(l-1)) / 2^l) for |v| + 2^(l-1) < 2^24, l <= 24. */
QF_MULTIVERSION
static void round_block(float *restrict dst, const float *restrict src, int lsbs, int64_t count)
{
    float half = ldexpf(1.0f, lsbs - 1), inv = ldexpf(1.0f, -lsbs);
    for (int64_t i = 0; i < count; i++) {
        float t = (src[i] + half) * inv;          /* exact: a power-of-two scaling */
        float r = qf_rint(t);
        dst[i] = r > t ? r - 1.0f : r;
    }
}

/* LOOKUP: per channel c, y = qf_affine_epilogue(t 2^l + offset[c],
 * scale[c], bias[c]), ReLU, then the output quantizer's code
 * qf_quantize_value(y, s, qmin - Z, qmax - Z) + Z.  dst (C, plane, L).
 *
 * For |qmin - Z|, |qmax - Z| < 2^22 (every practical quantizer) the code is
 * computed in fewer instructions with the same result: for |t| < 2^22,
 * (t + 1.5 2^23) - 1.5 2^23 is rint(t) (the sum lies in [2^23, 2^24), where
 * float32 holds exactly the integers, and the even offset keeps ties going
 * to even); a larger |t| gives a result beyond +-2^22, which the clamp maps
 * to the same bound as rint(t) would.  Only the sign of a zero may differ,
 * and adding Z turns either zero into +0 or Z.  The clamp is written as two
 * one-sided steps (min then max, equal for lo <= hi and non-NaN values; no
 * value here is NaN), and ReLU as max(y, 0) with -0 kept, as y < 0 ? 0 : y. */
QF_MULTIVERSION
static void lookup_block(float *restrict dst, const float *restrict src, const qf_circuit_op *p,
                         int64_t lanes)
{
    int64_t per_channel = p->in_shape[1] * p->in_shape[2] * lanes;
    float m = ldexpf(1.0f, p->lsbs), s = p->quant.scale, lo = p->quant_lo, hi = p->quant_hi;
    float z = (float)p->quant.zero_point, floor = p->relu ? 0.0f : -INFINITY;
    const float magic = 0x1.8p23f, small = 0x1p22f;
    int short_rint = lo > -small && hi < small;
    for (int64_t ch = 0; ch < p->in_shape[0]; ch++) {
        const float *restrict x = src + ch * per_channel;
        float *restrict q = dst + ch * per_channel;
        float off = p->offset_f[ch], scale = p->scale[ch], bias = p->bias[ch];
        if (!short_rint) {
            for (int64_t i = 0; i < per_channel; i++) {
                float v = x[i] * m + off;
                float u = v * scale;
                u = u + bias;
                u = u < floor ? floor : u;
                q[i] = qf_quantize_value(u, s, lo, hi) + z;
            }
            continue;
        }
        for (int64_t i = 0; i < per_channel; i++) {
            float v = x[i] * m + off;
            float y = v * scale;
            y = y + bias;
            y = y < floor ? floor : y;
            float t = y / s;
            float r = (t + magic) - magic;
            r = r > hi ? hi : r;
            r = r < lo ? lo : r;
            q[i] = r + z;
        }
    }
}

/* out (n, out_size) rows r0 .. r0 + valid - 1, from the node DECODE reads. */
static void decode_block(float *out, int64_t *out_int, const float *src, const qf_circuit_op *p,
                         int64_t r0, int64_t valid, int64_t lanes)
{
    int64_t plane = p->in_shape[1] * p->in_shape[2], n_out = qf_circuit_size3(p->in_shape);
    float m = ldexpf(1.0f, p->lsbs);
    for (int64_t ch = 0; ch < p->in_shape[0]; ch++) {
        float off = p->offset_f[ch], scale = p->scale[ch], bias = p->bias[ch];
        for (int64_t e = ch * plane; e < (ch + 1) * plane; e++) {
            const float *x = src + e * lanes;
            for (int64_t s = 0; s < valid; s++) {
                float v = x[s] * m + off;
                out[(r0 + s) * n_out + e] = qf_affine_epilogue((int64_t)v, scale, bias);
                if (out_int)
                    out_int[(r0 + s) * n_out + e] = (int64_t)x[s];
            }
        }
    }
}

static void transpose_block(float *dst, const float *src, const qf_circuit_op *p, int64_t lanes)
{
    const int64_t *is = p->in_shape, *os = p->out_shape;
    int64_t stride_in[3] = {is[1] * is[2], is[2], 1};
    int64_t st[3] = {stride_in[0], stride_in[1], stride_in[2]};
    st[p->axes[0]] = stride_in[p->axes[1]];
    st[p->axes[1]] = stride_in[p->axes[0]];
    for (int64_t i = 0; i < os[0]; i++)
        for (int64_t j = 0; j < os[1]; j++)
            for (int64_t k = 0; k < os[2]; k++, dst += lanes)
                memcpy(dst, src + (i * st[0] + j * st[1] + k * st[2]) * lanes,
                       (size_t)lanes * sizeof *dst);
}

QF_MULTIVERSION
static void add_block(float *restrict dst, const float *restrict a, const float *restrict b,
                      int64_t count)
{
    for (int64_t i = 0; i < count; i++)
        dst[i] = a[i] + b[i];
}

/* Per-lane minima and maxima (valid lanes) over the rows of x (rows, L). */
QF_MULTIVERSION
static void widen_lanes(float *restrict lmin, float *restrict lmax, const float *restrict x,
                        int64_t rows, int64_t valid, int64_t lanes)
{
    for (int64_t r = 0; r < rows; r++, x += lanes)
        for (int64_t s = 0; s < valid; s++) {
            lmin[s] = x[s] < lmin[s] ? x[s] : lmin[s];
            lmax[s] = x[s] > lmax[s] ? x[s] : lmax[s];
        }
}

/* Node 0 (in, L) from rows r0 .. r0 + valid - 1; other lanes get qmin.  Eight
 * rows x LOAD_CHUNK inputs at a time: each row's inputs read contiguously
 * (quantized as a vector), then written lane-major, eight lanes per store. */
#define LOAD_CHUNK 16
#define LOAD_ROWS 8

QF_MULTIVERSION
static void load_input(float *dst, const qf_circuit *c, const int64_t *codes, const float *x,
                       int64_t r0, int64_t valid, int64_t lanes)
{
    int64_t in = qf_circuit_in_size(c);
    float s = c->input.scale, lo = c->input_lo, hi = c->input_hi;
    float z = (float)c->input.zero_point, qmin = (float)c->input.qmin;
    for (int64_t i0 = 0; i0 < in; i0 += LOAD_CHUNK) {
        int64_t m = in - i0 < LOAD_CHUNK ? in - i0 : LOAD_CHUNK;
        float *restrict d = dst + i0 * lanes;
        for (int64_t rb = 0; rb < lanes; rb += LOAD_ROWS) {   /* lanes: a multiple of 8 */
            float v[LOAD_ROWS][LOAD_CHUNK];
            for (int64_t r = 0; r < LOAD_ROWS; r++) {
                int64_t row = r0 + rb + r;
                if (rb + r >= valid)
                    for (int64_t j = 0; j < LOAD_CHUNK; j++)
                        v[r][j] = qmin;
                else if (codes)
                    for (int64_t j = 0; j < m; j++)
                        v[r][j] = (float)codes[row * in + i0 + j];
                else
                    for (int64_t j = 0; j < m; j++)
                        v[r][j] = qf_quantize_value(x[row * in + i0 + j], s, lo, hi) + z;
            }
            for (int64_t j = 0; j < m; j++)
                for (int64_t r = 0; r < LOAD_ROWS; r++)
                    d[j * lanes + rb + r] = v[r][j];
        }
    }
}

/* ---- one block ---- */

static void run_block(const qf_circuit *c, float *out, int64_t *out_int, float *lane_ranges,
                      const int64_t *codes, const float *x, int64_t r0, int64_t valid,
                      float *ws)
{
    int64_t lanes = (valid + LANE_GROUP - 1) / LANE_GROUP * LANE_GROUP;
    load_input(ws, c, codes, x, r0, valid, lanes);
    if (lane_ranges)
        widen_lanes(lane_ranges, lane_ranges + QF_CIRCUIT_BLOCK, ws, qf_circuit_in_size(c),
                    valid, lanes);
    for (int k = 0; k < c->n_ops; k++) {
        const qf_circuit_op *p = &c->ops[k];
        const float *src = ws + c->node_start[p->src] * c->block_lanes;
        if (p->kind == QF_OP_DECODE) {
            decode_block(out, out_int, src, p, r0, valid, lanes);
            break;
        }
        float *dst = ws + c->node_start[k + 1] * c->block_lanes;
        int64_t rows = qf_circuit_size3(p->out_shape), count = rows * lanes;
        switch (p->kind) {
        case QF_OP_DENSE:
        case QF_OP_CONV:
            if (p->i8) {   /* and the ops it fuses, when node ranges are not wanted */
                int fuse = lane_ranges ? 0 : p->i8->fuse;
                dst = ws + c->node_start[k + 1 + fuse] * c->block_lanes;
                qf_circuit_int8_block(p, fuse, dst, src, lanes,
                                      (uint8_t *)(ws + c->sample_len * c->block_lanes));
                k += fuse;
            } else if (p->kind == QF_OP_DENSE)
                dense_block(dst, src, p, lanes);
            else
                conv_block(dst, src, p, lanes, ws + c->sample_len * c->block_lanes);
            break;
        case QF_OP_POOL_SUM:
            window_block(dst, src, p, lanes);
            break;
        case QF_OP_ROUND:
            round_block(dst, src, p->lsbs, count);
            break;
        case QF_OP_MAXPOOL:
            qf_circuit_maxpool_block(p, dst, src, lanes);
            break;
        case QF_OP_LOOKUP:
            if (p->steps)
                qf_circuit_steps_block(p, dst, src, lanes);
            else
                lookup_block(dst, src, p, lanes);
            break;
        case QF_OP_RESHAPE:
            memcpy(dst, src, (size_t)count * sizeof *dst);
            break;
        case QF_OP_TRANSPOSE:
            transpose_block(dst, src, p, lanes);
            break;
        case QF_OP_ADD:
            add_block(dst, src, ws + c->node_start[p->src2] * c->block_lanes, count);
            break;
        }
        if (lane_ranges) {
            float *lmin = lane_ranges + (int64_t)(k + 1) * 2 * QF_CIRCUIT_BLOCK;
            widen_lanes(lmin, lmin + QF_CIRCUIT_BLOCK, dst, rows, valid, lanes);
        }
    }
}

void qf_circuit_run_block_rows(const qf_circuit *c, float *out, int64_t *out_int,
                               float *lane_ranges, const int64_t *codes, const float *x,
                               int64_t r0, int64_t r1, float *ws)
{
    for (int64_t r = r0; r < r1; r += c->block_lanes) {
        int64_t valid = r1 - r < c->block_lanes ? r1 - r : c->block_lanes;
        run_block(c, out, out_int, lane_ranges, codes, x, r, valid, ws);
    }
}
