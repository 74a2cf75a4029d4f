/* circuit_int8.c: DENSE and CONV of the float32 block engine as 8-bit
 * integer products (gemm_int8.h), when their operands allow it.
 *
 * The circuit's values there are small integer codes: a few-bit input code
 * or lookup output times a few-bit weight code q_w - Z_w.  An op takes the
 * integer product when, by the static bounds of its input node:
 *   - every weight lies in [-128, 127] (an s8 operand);
 *   - its inputs and pad code lie in [lo, lo + 255], so x - lo is a u8
 *     operand (shift = lo; the sums gain lo sum_t w[o, t] back, per output
 *     channel, in corr);
 *   - (hi - lo) sum_t |w[o, t]| < 2^15 for every output channel o, so every
 *     partial sum of (x - lo) w is an int16 (no saturation, no wrap).
 * Otherwise (wide codes, large weights or long sums) the op keeps the float32
 * path of circuit_block.c, which is exact to 2^24.  A DENSE keeps that path
 * too when its weights are so sparse (pruned) that 1.5 times its weight
 * pairs (those of a block with a nonzero weight) outnumber its nonzero
 * weights, which the float path visits one by one: the tutorial's MLP pruned
 * to 20 inputs per neuron ran 15% slower on the 8-bit path (2.0 against 2.35
 * million samples/s, bench/bench_inference.py).  Both give the same
 * integers, hence the same floats: the circuit is float-exact, so
 * sum + corr (the op's true value) stays below 2^24.
 *
 * Per block of samples the input node (C, H, W, L) floats is packed into
 * (C2, Hp, Wp) rows of channel-pair bytes (circuit_internal.h), the padding
 * holding pad - lo, then each block of output channels runs over the
 * positions, one output row at a time.  When the op's node has one reader,
 * a LOOKUP by thresholds (circuit_steps.c), each row goes through it at
 * once, while in cache, and the accumulators are not stored (i8->fuse 1);
 * when that lookup's node in turn has one reader, a POOL_SUM without
 * padding whose stride is its kernel, the codes of each pooling window are
 * summed in the registers and only the pool's node is stored (i8->fuse 2),
 * or, when the pool's one reader is a LOOKUP by thresholds too, that
 * lookup's node (i8->fuse 3: its thresholds move onto the window's sum of
 * counts, pooled_thresholds).  The block engine fuses only when the node
 * ranges are not wanted.  Nothing allocates while running. */
#include "dispatch.h"
#include <stdlib.h>
#include "circuit_internal.h"
#include "gemm_int8.h"

_Static_assert(QF_CIRCUIT_BLOCK <= QF_GEMM_INT8_LANES, "lanes of a block");
_Static_assert(QF_CIRCUIT_MAX_STEPS <= QF_GEMM_INT8_MAX_STEPS, "thresholds per row");

#define SUM_LIMIT ((int64_t)1 << 15)
#define ROWS QF_GEMM_INT8_ROWS

static int64_t abs64(int64_t v) { return v < 0 ? -v : v; }

/* The op's geometry, DENSE as a 1x1 conv over its flattened input. */
typedef struct {
    int64_t cin, h, w, kh, kw, ph, pw;
} geometry;

static geometry geometry_of(const qf_circuit_op *p)
{
    if (p->kind == QF_OP_CONV)
        return (geometry){p->in_shape[0], p->in_shape[1], p->in_shape[2], p->kh, p->kw,
                          p->ph, p->pw};
    return (geometry){qf_circuit_size3(p->in_shape), 1, 1, 1, 1, 0, 0};
}

/* Weight of output o at tap (c, ky, kx); 0 past the channels. */
static int64_t weight_at(const qf_circuit_op *p, const geometry *g, int64_t o, int64_t c,
                         int64_t ky, int64_t kx)
{
    if (o >= p->oc || c >= g->cin)
        return 0;
    return p->weight[((o * g->cin + c) * g->kh + ky) * g->kw + kx];
}

/* Whether the op fits (see the top); *lo: the shift. */
static int fits(const qf_circuit *c, const qf_circuit_op *p, const geometry *g, int64_t *lo)
{
    const qf_node_info *nd = &c->nodes[p->src];
    int64_t mn = nd->static_min, mx = nd->static_max;
    if (g->ph > 0 || g->pw > 0) {
        mn = p->pad < mn ? p->pad : mn;
        mx = p->pad > mx ? p->pad : mx;
    }
    if (mx - mn > 255)
        return 0;
    int64_t taps = g->cin * g->kh * g->kw;
    for (int64_t o = 0; o < p->oc; o++) {
        int64_t sum = 0, total = 0;
        for (int64_t t = 0; t < taps; t++) {
            int64_t wt = p->weight[o * taps + t];
            if (wt < -128 || wt > 127)
                return 0;
            sum += abs64(wt);
            total += wt;
            if ((mx - mn) * sum >= SUM_LIMIT || abs64(total) >= SUM_LIMIT)
                return 0;
        }
        if (abs64(mn) * abs64(total) >= ((int64_t)1 << 30))  /* corr: |mn| < 2^24 */
            return 0;
    }
    *lo = mn;
    return 1;
}

void qf_circuit_int8_free(qf_circuit_int8 *i8)
{
    if (!i8)
        return;
    free(i8->block_start);
    free(i8->off);
    free(i8->w);
    free(i8->corr);
    free(i8);
}

/* Two weights as the int16 pair (w0 low byte). */
static int16_t pair_of(int64_t w0, int64_t w1)
{
    return (int16_t)(uint16_t)((uint8_t)(int8_t)w0 | (uint16_t)((uint8_t)(int8_t)w1) << 8);
}

/* Weight pair q = (c2, ky, kx) of output o: channels 2 c2 and 2 c2 + 1 at
 * (ky, kx), or, on the `across` plane, taps kx and kx + 1 of channel 2 c2. */
static int16_t pair_at(const qf_circuit_int8 *i8, const qf_circuit_op *p, const geometry *g,
                       int64_t o, int64_t c2, int64_t ky, int64_t kx)
{
    if (i8->across && c2 == g->cin / 2)
        return pair_of(weight_at(p, g, o, 2 * c2, ky, kx),
                       kx + 1 < g->kw ? weight_at(p, g, o, 2 * c2, ky, kx + 1) : 0);
    return pair_of(weight_at(p, g, o, 2 * c2, ky, kx), weight_at(p, g, o, 2 * c2 + 1, ky, kx));
}

/* The pairs of block b: those where one of its rows has a nonzero weight,
 * written to i8->off / i8->w from index n (when they are not NULL); returns
 * the new n. */
static int64_t block_pairs(qf_circuit_int8 *i8, const qf_circuit_op *p, const geometry *g,
                           int64_t b, int64_t n)
{
    for (int64_t c2 = 0; c2 < i8->c2; c2++) {
        int64_t kx_step = i8->across && c2 == g->cin / 2 ? 2 : 1;
        for (int64_t ky = 0; ky < g->kh; ky++)
            for (int64_t kx = 0; kx < g->kw; kx += kx_step) {
                int16_t pr[ROWS];
                int any = 0;
                for (int i = 0; i < ROWS; i++) {
                    pr[i] = pair_at(i8, p, g, b * ROWS + i, c2, ky, kx);
                    any |= pr[i] != 0;
                }
                if (!any)
                    continue;
                if (i8->off) {
                    i8->off[n] = (c2 * i8->hp + ky) * i8->wp + kx;
                    for (int i = 0; i < ROWS; i++)
                        i8->w[n * ROWS + i] = pr[i];
                }
                n++;
            }
    }
    return n;
}

static int64_t nonzero_weights(const qf_circuit_op *p, const geometry *g)
{
    int64_t n = 0;
    for (int64_t j = 0; j < p->oc * g->cin * g->kh * g->kw; j++)
        n += p->weight[j] != 0;
    return n;
}

int qf_circuit_prepare_int8(const qf_circuit *c, qf_circuit_op *p)
{
    if (p->kind != QF_OP_DENSE && p->kind != QF_OP_CONV)
        return 0;
    geometry g = geometry_of(p);
    int64_t lo;
    if (!fits(c, p, &g, &lo))
        return 0;
    qf_circuit_int8 *i8 = calloc(1, sizeof *i8);
    if (!i8)
        return -1;
    i8->shift = lo;
    i8->c2 = (g.cin + 1) / 2;
    i8->across = g.cin % 2 == 1 && g.kw > 1;
    i8->hp = g.h + 2 * g.ph;
    i8->wp = g.w + 2 * g.pw;
    i8->n_blocks = (p->oc + ROWS - 1) / ROWS;
    i8->block_start = malloc((size_t)(i8->n_blocks + 1) * sizeof *i8->block_start);
    i8->corr = calloc((size_t)(i8->n_blocks * ROWS), sizeof *i8->corr);
    if (!i8->block_start || !i8->corr)
        goto nomem;
    i8->block_start[0] = 0;
    for (int64_t b = 0; b < i8->n_blocks; b++)   /* count first, then fill */
        i8->block_start[b + 1] = block_pairs(i8, p, &g, b, i8->block_start[b]);
    int64_t pairs = i8->block_start[i8->n_blocks];
    if (p->kind == QF_OP_DENSE && 3 * pairs > 2 * nonzero_weights(p, &g)) {   /* see the top */
        qf_circuit_int8_free(i8);
        return 0;
    }
    i8->off = malloc((size_t)(pairs > 0 ? pairs : 1) * sizeof *i8->off);
    i8->w = malloc((size_t)(pairs > 0 ? pairs : 1) * ROWS * sizeof *i8->w);
    if (!i8->off || !i8->w)
        goto nomem;
    for (int64_t b = 0; b < i8->n_blocks; b++)
        block_pairs(i8, p, &g, b, i8->block_start[b]);
    int64_t taps = g.cin * g.kh * g.kw;
    for (int64_t o = 0; o < p->oc; o++) {
        int64_t total = 0;
        for (int64_t t = 0; t < taps; t++)
            total += p->weight[o * taps + t];
        i8->corr[o] = (int32_t)(lo * total);
    }
    p->i8 = i8;
    return 1;
nomem:
    qf_circuit_int8_free(i8);
    return -1;
}

/* Bytes of the packed input of op p for `lanes` lanes, rounded up to 32. */
static int64_t packed_bytes(const qf_circuit_int8 *i8, int64_t lanes)
{
    return (i8->c2 * i8->hp * i8->wp * 2 * qf_gemm_int8_padded_lanes(lanes) + 31) / 32 * 32;
}

/* Output positions per row of p: OW for CONV, 1 for DENSE. */
static int64_t row_positions(const qf_circuit_op *p)
{
    return p->kind == QF_OP_CONV ? p->out_shape[2] : 1;
}

int64_t qf_circuit_int8_workspace_bytes(const qf_circuit *c)
{
    int64_t most = 0;
    for (int k = 0; k < c->n_ops; k++) {
        const qf_circuit_op *p = &c->ops[k];
        int64_t bytes = p->i8 ? packed_bytes(p->i8, c->block_lanes) : 0;
        most = bytes > most ? bytes : most;
    }
    return most;
}

/* The lanes of input channel c at padded position (y, x): a row of src
 * (C, H, W, L), pad_row in the padding, zero_row past the channels. */
static const float *tap(const float *src, const geometry *g, int64_t c, int64_t y, int64_t x,
                        int64_t lanes, const float *pad_row, const float *zero_row)
{
    int64_t iy = y - g->ph, ix = x - g->pw;
    if (c >= g->cin)
        return zero_row;
    if (iy < 0 || iy >= g->h || ix < 0 || ix >= g->w)
        return pad_row;
    return src + ((c * g->h + iy) * g->w + ix) * lanes;
}

/* packed (C2, Hp, Wp, Lp, 2) bytes from src (C, H, W, L), less the shift:
 * per lane, channels 2 c2 and 2 c2 + 1 at (y, x), or on the `across` plane
 * channel 2 c2 at (y, x) and (y, x + 1); pad - shift in the padding, 0 past
 * the channels and lanes. */
QF_MULTIVERSION
static void pack_input(uint8_t *restrict packed, const float *restrict src,
                       const qf_circuit_op *p, const geometry *g, int64_t lanes)
{
    const qf_circuit_int8 *i8 = p->i8;
    int64_t lp = qf_gemm_int8_padded_lanes(lanes);
    int32_t shift = (int32_t)i8->shift;
    float pad_row[QF_GEMM_INT8_LANES], zero_row[QF_GEMM_INT8_LANES];
    for (int64_t s = 0; s < lanes; s++) {
        pad_row[s] = (float)(g->ph > 0 || g->pw > 0 ? p->pad : i8->shift);   /* see fits() */
        zero_row[s] = (float)i8->shift;
    }
    for (int64_t c2 = 0; c2 < i8->c2; c2++) {
        int across = i8->across && c2 == g->cin / 2;
        for (int64_t y = 0; y < i8->hp; y++)
            for (int64_t x = 0; x < i8->wp; x++) {
                uint8_t *restrict row = packed + ((c2 * i8->hp + y) * i8->wp + x) * 2 * lp;
                const float *restrict a = tap(src, g, 2 * c2, y, x, lanes, pad_row, zero_row);
                const float *restrict b = across
                    ? tap(src, g, 2 * c2, y, x + 1, lanes, pad_row, zero_row)
                    : tap(src, g, 2 * c2 + 1, y, x, lanes, pad_row, zero_row);
                for (int64_t s = 0; s < lanes; s++) {
                    row[2 * s] = (uint8_t)((int32_t)a[s] - shift);
                    row[2 * s + 1] = (uint8_t)((int32_t)b[s] - shift);
                }
                for (int64_t s = 2 * lanes; s < 2 * lp; s++)
                    row[s] = 0;
            }
    }
}

/* The LOOKUP's thresholds for the sums of output rows first .. first +
 * rows - 1 without their corr: t = sum + corr >= at  <=>  sum > at - corr - 1,
 * clamped to int16 (sums lie within +-(2^15 - 1), so a clamped threshold
 * keeps its answer; +inf, a step the channel never takes, becomes 32767). */
static void lookup_thresholds(int16_t *gt, float *base, const qf_circuit_steps *steps,
                              const int32_t *corr, int64_t first, int rows)
{
    for (int i = 0; i < rows; i++) {
        base[i] = steps->base[first + i];
        for (int k = 0; k < steps->n_steps; k++) {
            float at = steps->at[(first + i) * QF_CIRCUIT_MAX_STEPS + k];
            int64_t v = at > 1e9f ? SUM_LIMIT : (int64_t)at - corr[first + i] - 1;
            v = v < -SUM_LIMIT ? -SUM_LIMIT : v > SUM_LIMIT - 1 ? SUM_LIMIT - 1 : v;
            gt[i * QF_GEMM_INT8_MAX_STEPS + k] = (int16_t)v;
        }
    }
}

/* The thresholds of the LOOKUP `after` a POOL_SUM of n_window codes of the
 * first LOOKUP, on the window's count sum S (its codes less base each):
 * pooled = S + n_window base >= at  <=>  S > at - n_window base - 1; and its
 * codes below every threshold. */
static void pooled_thresholds(int16_t *gt2, float *base2, const qf_circuit_steps *after,
                              const float *base, int64_t n_window, int64_t first, int rows)
{
    for (int i = 0; i < rows; i++) {
        base2[i] = after->base[first + i];
        for (int k = 0; k < after->n_steps; k++) {
            float at = after->at[(first + i) * QF_CIRCUIT_MAX_STEPS + k];
            int64_t v = at > 1e9f ? SUM_LIMIT : (int64_t)at - n_window * (int64_t)base[i] - 1;
            v = v < -SUM_LIMIT ? -SUM_LIMIT : v > SUM_LIMIT - 1 ? SUM_LIMIT - 1 : v;
            gt2[i * QF_GEMM_INT8_MAX_STEPS + k] = (int16_t)v;
        }
    }
}

void qf_circuit_int8_block(const qf_circuit_op *p, int fuse, float *dst, const float *src,
                           int64_t lanes, uint8_t *ws)
{
    const qf_circuit_int8 *i8 = p->i8;
    geometry g = geometry_of(p);
    int64_t oh = p->kind == QF_OP_CONV ? p->out_shape[1] : 1, ow = row_positions(p);
    int64_t y_step = p->kind == QF_OP_CONV ? p->sh * i8->wp : 0;
    int64_t x_step = p->kind == QF_OP_CONV ? p->sw : 0;
    int64_t ldd = oh * ow * lanes, row_bytes = 2 * qf_gemm_int8_padded_lanes(lanes);
    int64_t ld_row = ow * lanes;
    uint8_t *packed = ws;
    pack_input(packed, src, p, &g, lanes);
    int16_t gt[ROWS * QF_GEMM_INT8_MAX_STEPS], gt2[ROWS * QF_GEMM_INT8_MAX_STEPS];
    float base[ROWS], base2[ROWS];
    const qf_circuit_op *pool = fuse >= 2 ? &p[2] : NULL;   /* ops past p exist only then */
    int64_t n_window = pool ? pool->kh * pool->kw : 0;
    for (int64_t b = 0; b < i8->n_blocks; b++) {
        int64_t first = b * ROWS, k0 = i8->block_start[b], pairs = i8->block_start[b + 1] - k0;
        int rows = p->oc - first < ROWS ? (int)(p->oc - first) : ROWS;
        const int16_t *w = i8->w + k0 * ROWS;
        const int64_t *off = i8->off + k0;
        if (fuse)
            lookup_thresholds(gt, base, p[1].steps, i8->corr, first, rows);
        if (fuse >= 2) {   /* one call per row of pooling windows */
            int64_t ph = pool->out_shape[1], pw = pool->out_shape[2];
            if (fuse == 3)
                pooled_thresholds(gt2, base2, p[3].steps, base, n_window, first, rows);
            else
                for (int i = 0; i < rows; i++)
                    base2[i] = (float)n_window * base[i];   /* integers: exact */
            for (int64_t py = 0; py < ph; py++)
                qf_gemm_int8_pooled(dst + (first * ph + py) * pw * lanes, ph * pw * lanes, rows,
                                    gt, p[1].steps->n_steps, fuse == 3 ? gt2 : NULL,
                                    fuse == 3 ? p[3].steps->n_steps : 0, base2, (int)pool->kh,
                                    (int)pool->kw, w, off, pairs,
                                    packed + py * pool->kh * y_step * row_bytes, pw, y_step,
                                    x_step, lanes);
            continue;
        }
        for (int64_t oy = 0; oy < oh; oy++) {   /* output rows: sums, or their codes */
            int64_t at = first * ldd + oy * ld_row;
            const uint8_t *x = packed + oy * y_step * row_bytes;
            if (fuse)
                qf_gemm_int8_steps(dst + at, ldd, rows, gt, p[1].steps->n_steps, base, w, off,
                                   pairs, x, 1, ow, y_step, x_step, lanes);
            else
                qf_gemm_int8_lanes(dst + at, ldd, rows, i8->corr + first, w, off, pairs, x, 1,
                                   ow, y_step, x_step, lanes);
        }
    }
}
