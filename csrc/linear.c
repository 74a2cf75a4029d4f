/* linear.c: fully connected layer kernels.
 *
 * Dot products keep eight partial sums in a fixed order (lane j sums the
 * elements i = j mod 8, then the lanes are added pairwise), so compilers
 * vectorise them at any vector width and the result is the same float32
 * value on every instruction set.  The batched kernels hold a block of such
 * dot products in registers at once (several samples times several outputs)
 * through GCC/Clang vector types, whose arithmetic is element by element:
 * an 8-float vector is exactly the eight lanes, whatever registers the
 * compiler maps it to (one AVX2 register, two SSE2 ones).
 *
 * The backward kernels sum over outputs (input gradient) and over samples
 * (weight and bias gradients) strictly in ascending order, one running sum
 * per element.  Zero gradients add +-0, which never changes a sum that
 * starts at +0, so skipping them or not gives the same bits. */
#include "dispatch.h"
#include <string.h>
#include "linear.h"
#include "quant.h"

#if defined(__GNUC__) && !defined(__clang__)
/* the vector helpers below are always inlined: no vector crosses a call */
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#define LANES 8

typedef float vec8 __attribute__((vector_size(LANES * sizeof(float))));

#define INLINE static inline __attribute__((always_inline))

INLINE vec8 load8(const float *p)
{
    vec8 v;
    memcpy(&v, p, sizeof v);
    return v;
}

INLINE void store8(float *p, const vec8 *v) { memcpy(p, v, sizeof *v); }

INLINE vec8 zero8(void) { return (vec8){0}; }

/* Halves of the eight lanes, and the fixed pairwise sum of all eight from
 * them: lo + hi holds (l0 + l4, l1 + l5, l2 + l6, l3 + l7). */
typedef float vec4 __attribute__((vector_size(4 * sizeof(float))));

INLINE vec4 low4(const vec8 *v)
{
    vec4 h;
    memcpy(&h, v, sizeof h);
    return h;
}

INLINE vec4 high4(const vec8 *v)
{
    vec4 h;
    memcpy(&h, (const char *)v + sizeof h, sizeof h);
    return h;
}

INLINE float pair_sum(vec4 lo, vec4 hi)
{
    vec4 h = lo + hi;
    return (h[0] + h[2]) + (h[1] + h[3]);
}

INLINE vec4 load4(const float *p)
{
    vec4 v;
    memcpy(&v, p, sizeof v);
    return v;
}

INLINE void store4(float *p, vec4 v) { memcpy(p, &v, sizeof v); }

/* p[0..3], each one read only below r, 0 elsewhere. */
INLINE vec4 part4(const float *p, int64_t r)
{
    return (vec4){r > 0 ? p[0] : 0.0f, r > 1 ? p[1] : 0.0f, r > 2 ? p[2] : 0.0f,
                  r > 3 ? p[3] : 0.0f};
}

/* (vector * scalar multiplies every lane by the scalar) */

/* The same in double, for integer codes whose sums may pass 2^24. */
static inline double dot_f64(const float *restrict a, const float *restrict b, int64_t n)
{
    double lane[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++)
            lane[j] += (double)a[i + j] * (double)b[i + j];
    for (int j = 0; i < n; i++, j++)
        lane[j] += (double)a[i] * (double)b[i];
    return ((lane[0] + lane[4]) + (lane[2] + lane[6])) + ((lane[1] + lane[5]) + (lane[3] + lane[7]));
}

/* ---------------------------------------------------------------- portable kernels
 * For targets without 8-float vector registers (the baseline x86-64 clone):
 * one dot product or one sample at a time, loops the compiler vectorises at
 * any width.  Same sums in the same order as the blocked kernels below. */

/* sum_i a[i] * b[i] in float32 with the fixed lane order above. */
static inline float dot_f32(const float *restrict a, const float *restrict b, int64_t n)
{
    float lane[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++)
            lane[j] += a[i + j] * b[i + j];
    for (int j = 0; i < n; i++, j++)
        lane[j] += a[i] * b[i];
    float s0 = (lane[0] + lane[4]) + (lane[2] + lane[6]);
    float s1 = (lane[1] + lane[5]) + (lane[3] + lane[7]);
    return s0 + s1;
}

static inline void portable_forward(float *out, const float *x, const float *w, const float *b,
                                    int64_t n, int64_t n_in, int64_t n_out)
{
    for (int64_t s = 0; s < n; s++)
        for (int64_t o = 0; o < n_out; o++) {
            float acc = dot_f32(x + s * n_in, w + o * n_in, n_in);
            out[s * n_out + o] = b ? acc + b[o] : acc;
        }
}

static inline void portable_codes_t(float *out, const float *xcodes, const float *wcodes_t,
                                    int64_t n, int64_t n_in, int64_t n_out)
{
    for (int64_t s = 0; s < n; s++) {
        const float *xs = xcodes + s * n_in;
        float *restrict acc = out + s * n_out;
        for (int64_t o = 0; o < n_out; o++)
            acc[o] = 0.0f;
        for (int64_t i = 0; i < n_in; i++) {
            float xv = xs[i];
            if (xv == 0.0f)
                continue;
            const float *restrict wi = wcodes_t + i * n_out;
            for (int64_t o = 0; o < n_out; o++)
                acc[o] += xv * wi[o];
        }
    }
}

static inline void portable_backward(float *dx, float *dw, float *db, const float *dout,
                                     const float *x, const float *w, int64_t n, int64_t n_in,
                                     int64_t n_out)
{
    for (int64_t s = 0; s < n; s++) {
        const float *ds = dout + s * n_out;
        const float *restrict xs = x + s * n_in;
        float *restrict dxs = dx ? dx + s * n_in : NULL;
        if (dxs)
            memset(dxs, 0, (size_t)n_in * sizeof(float));
        for (int64_t o = 0; o < n_out; o++) {
            float g = ds[o];
            if (g == 0.0f)
                continue;
            const float *restrict wo = w + o * n_in;
            float *restrict dwo = dw + o * n_in;
            for (int64_t i = 0; i < n_in; i++)
                dwo[i] += g * xs[i];
            if (dxs)
                for (int64_t i = 0; i < n_in; i++)
                    dxs[i] += g * wo[i];
            if (db)
                db[o] += g;
        }
    }
}

/* ---------------------------------------------------------------- forward */

enum { FWD_S = 2, FWD_O = 4 };   /* samples x outputs per register block */

/* out[s * n_out + o] = sum_i x[s * n_in + i] * w[o * n_in + i] for s < sb,
 * o < ob, each in the eight-lane order; (+ b[o] when b). */
INLINE void dot_block(float *out, const float *x, const float *w, const float *b,
                      int64_t n_in, int64_t n_out, int sb, int ob)
{
    vec8 acc[FWD_S][FWD_O];
    for (int s = 0; s < sb; s++)
        for (int o = 0; o < ob; o++)
            acc[s][o] = zero8();
    int64_t i = 0;
    for (; i + LANES <= n_in; i += LANES) {
        vec8 wv[FWD_O];
        for (int o = 0; o < ob; o++)
            wv[o] = load8(w + o * n_in + i);
        for (int s = 0; s < sb; s++) {
            vec8 xv = load8(x + s * n_in + i);
            for (int o = 0; o < ob; o++)
                acc[s][o] += xv * wv[o];
        }
    }
    /* the tail (r < 8 terms) goes to lanes 0..r-1 as in the scalar order (0 * 0
     * adds +0 to the others: no change) */
    int64_t r = n_in - i;
    vec4 xlo[FWD_S], xhi[FWD_S], wlo[FWD_O], whi[FWD_O];
    for (int s = 0; s < sb; s++) {
        xlo[s] = part4(x + s * n_in + i, r);
        xhi[s] = part4(x + s * n_in + i + 4, r - 4);
    }
    for (int o = 0; o < ob; o++) {
        wlo[o] = part4(w + o * n_in + i, r);
        whi[o] = part4(w + o * n_in + i + 4, r - 4);
    }
    for (int s = 0; s < sb; s++)
        for (int o = 0; o < ob; o++) {
            float sum = pair_sum(low4(&acc[s][o]) + xlo[s] * wlo[o],
                                 high4(&acc[s][o]) + xhi[s] * whi[o]);
            out[s * n_out + o] = b ? sum + b[o] : sum;
        }
}

/* dot_block with compile-time block sizes (the switch keeps them constant). */
INLINE void dot_block_any(float *out, const float *x, const float *w, const float *b,
                          int64_t n_in, int64_t n_out, int sb, int ob)
{
    if (sb == FWD_S) {
        switch (ob) {
        case 4: dot_block(out, x, w, b, n_in, n_out, FWD_S, 4); break;
        case 3: dot_block(out, x, w, b, n_in, n_out, FWD_S, 3); break;
        case 2: dot_block(out, x, w, b, n_in, n_out, FWD_S, 2); break;
        default: dot_block(out, x, w, b, n_in, n_out, FWD_S, 1); break;
        }
    } else {
        switch (ob) {
        case 4: dot_block(out, x, w, b, n_in, n_out, 1, 4); break;
        case 3: dot_block(out, x, w, b, n_in, n_out, 1, 3); break;
        case 2: dot_block(out, x, w, b, n_in, n_out, 1, 2); break;
        default: dot_block(out, x, w, b, n_in, n_out, 1, 1); break;
        }
    }
}

/* Narrow inputs (n_in < 8: the tail alone): lane j of output o holds the one
 * product x[j] * w[o, j].  Eight outputs go in a vector per lane, from the
 * weights' columns gathered once per block of outputs and reused by every
 * sample: out[s, o..o+7] = the pairwise lane sum of those vectors. */
INLINE void narrow_forward(float *out, const float *x, const float *w, const float *b,
                           int64_t n, int64_t n_in, int64_t n_out)
{
    for (int64_t o = 0; o < n_out; o += LANES) {
        int64_t ob = n_out - o < LANES ? n_out - o : LANES;
        float cols[LANES][LANES] = {{0}}, bias[LANES] = {0};   /* [lane][output] */
        for (int64_t k = 0; k < ob; k++) {
            for (int64_t j = 0; j < n_in; j++)
                cols[j][k] = w[(o + k) * n_in + j];
            bias[k] = b ? b[o + k] : 0.0f;
        }
        vec8 wc[LANES], bv = load8(bias);
        for (int j = 0; j < LANES; j++)
            wc[j] = load8(cols[j]);
        for (int64_t s = 0; s < n; s++) {
            const float *xs = x + s * n_in;
            vec8 l[LANES];
            for (int j = 0; j < LANES; j++)   /* 0 + x w, as the dot product's lanes */
                l[j] = zero8() + (j < n_in ? wc[j] * xs[j] : zero8());
            vec8 sum = ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
            if (b)
                sum += bv;
            float res[LANES];
            memcpy(res, &sum, sizeof res);
            memcpy(out + s * n_out + o, res, sizeof(float) * (size_t)ob);
        }
    }
}

QF_MULTIVERSION
void qf_linear_forward(float *out, const float *x, const float *w, const float *b,
                       int64_t n, int64_t n_in, int64_t n_out)
{
    if (!QF_WIDE_VECTORS()) {
        portable_forward(out, x, w, b, n, n_in, n_out);
        return;
    }
    if (n_in < LANES) {
        narrow_forward(out, x, w, b, n, n_in, n_out);
        return;
    }
    for (int64_t s = 0; s < n; s += FWD_S) {
        int sb = n - s < FWD_S ? (int)(n - s) : FWD_S;
        for (int64_t o = 0; o < n_out; o += FWD_O) {
            int ob = n_out - o < FWD_O ? (int)(n_out - o) : FWD_O;
            dot_block_any(out + s * n_out + o, x + s * n_in, w + o * n_in, b ? b + o : NULL,
                          n_in, n_out, sb, ob);
        }
    }
}

QF_MULTIVERSION
void qf_linear_forward_codes(float *out, const float *xcodes, const float *wcodes,
                             const float *scale, const float *b, int exact_f32,
                             int64_t n, int64_t n_in, int64_t n_out)
{
    if (!exact_f32) {
        for (int64_t s = 0; s < n; s++)
            for (int64_t o = 0; o < n_out; o++) {
                int64_t acc = (int64_t)dot_f64(xcodes + s * n_in, wcodes + o * n_in, n_in);
                out[s * n_out + o] = qf_affine_epilogue(acc, scale[o], b ? b[o] : 0.0f);
            }
        return;
    }
    /* exact integer sums below 2^24: the float dot products give them */
    if (!QF_WIDE_VECTORS()) {
        portable_forward(out, xcodes, wcodes, NULL, n, n_in, n_out);
    } else {
        for (int64_t s = 0; s < n; s += FWD_S) {
            int sb = n - s < FWD_S ? (int)(n - s) : FWD_S;
            for (int64_t o = 0; o < n_out; o += FWD_O) {
                int ob = n_out - o < FWD_O ? (int)(n_out - o) : FWD_O;
                dot_block_any(out + s * n_out + o, xcodes + s * n_in, wcodes + o * n_in, NULL,
                              n_in, n_out, sb, ob);
            }
        }
    }
    for (int64_t s = 0; s < n; s++)
        for (int64_t o = 0; o < n_out; o++)
            out[s * n_out + o] = qf_affine_epilogue((int64_t)out[s * n_out + o], scale[o],
                                                    b ? b[o] : 0.0f);
}

enum { T_VECS = 4 };   /* output vectors per register block of the row-at-a-time form */

/* The non-zero input codes of a sample: at most NZ_MAX of them, found by a
 * branch-free pass (the zero pattern after a ReLU is random: branching on it
 * mispredicts half the time). */
enum { NZ_MAX = 1024 };

typedef struct {
    int64_t count;
    int32_t index[NZ_MAX];
    float value[NZ_MAX];
} nonzeros;

static inline void find_nonzeros(nonzeros *nz, const float *xs, int64_t n_in)
{
    int64_t k = 0;
    for (int64_t i = 0; i < n_in; i++) {
        nz->index[k] = (int32_t)i;
        nz->value[k] = xs[i];
        k += xs[i] != 0.0f;
    }
    nz->count = k;
}

/* os (nv vectors) = sum over the non-zero x[i] of x[i] * wt[i * n_out + 0..];
 * exact integer sums, so the order is free. */
INLINE void codes_t_block(float *os, const nonzeros *nz, const float *wt, int64_t n_out, int nv)
{
    vec8 acc[T_VECS];
    for (int c = 0; c < nv; c++)
        acc[c] = zero8();
    for (int64_t j = 0; j < nz->count; j++) {
        const float *wi = wt + nz->index[j] * n_out;
        float xv = nz->value[j];
        for (int c = 0; c < nv; c++)
            acc[c] += load8(wi + c * LANES) * xv;
    }
    for (int c = 0; c < nv; c++)
        store8(os + c * LANES, &acc[c]);
}

/* The same for the last outputs (fewer than T_VECS vectors' worth) in one
 * pass: nv whole vectors, then four outputs in a half vector when has4, then
 * r < 4 one by one. */
INLINE void codes_t_last(float *os, const nonzeros *nz, const float *wt, int64_t n_out, int nv,
                         int has4, int64_t r)
{
    vec8 acc[T_VECS];
    vec4 acc4 = {0};
    float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f;
    for (int c = 0; c < nv; c++)
        acc[c] = zero8();
    const float *tail = wt + nv * LANES + (has4 ? 4 : 0);
    for (int64_t j = 0; j < nz->count; j++) {
        int64_t i = nz->index[j];
        float xv = nz->value[j];
        const float *wi = wt + i * n_out;
        for (int c = 0; c < nv; c++)
            acc[c] += load8(wi + c * LANES) * xv;
        if (has4)
            acc4 += load4(wi + nv * LANES) * xv;
        const float *ti = tail + i * n_out;
        if (r > 0) a0 += ti[0] * xv;
        if (r > 1) a1 += ti[1] * xv;
        if (r > 2) a2 += ti[2] * xv;
    }
    for (int c = 0; c < nv; c++)
        store8(os + c * LANES, &acc[c]);
    if (has4)
        store4(os + nv * LANES, acc4);
    float *ot = os + nv * LANES + (has4 ? 4 : 0);
    if (r > 0) ot[0] = a0;
    if (r > 1) ot[1] = a1;
    if (r > 2) ot[2] = a2;
}

/* codes_t_last for the m < T_VECS * 8 outputs left (the switch keeps the
 * block shape a compile-time constant). */
INLINE void codes_t_rest(float *os, const nonzeros *nz, const float *wt, int64_t n_out,
                         int64_t m)
{
    int64_t r = m % 4;
    switch ((int)(m / 4)) {
    case 0: codes_t_last(os, nz, wt, n_out, 0, 0, r); break;
    case 1: codes_t_last(os, nz, wt, n_out, 0, 1, r); break;
    case 2: codes_t_last(os, nz, wt, n_out, 1, 0, r); break;
    case 3: codes_t_last(os, nz, wt, n_out, 1, 1, r); break;
    case 4: codes_t_last(os, nz, wt, n_out, 2, 0, r); break;
    case 5: codes_t_last(os, nz, wt, n_out, 2, 1, r); break;
    case 6: codes_t_last(os, nz, wt, n_out, 3, 0, r); break;
    default: codes_t_last(os, nz, wt, n_out, 3, 1, r); break;
    }
}

QF_MULTIVERSION
void qf_linear_forward_codes_t(float *out, const float *xcodes, const float *wcodes_t,
                               const float *scale, const float *b,
                               int64_t n, int64_t n_in, int64_t n_out)
{
    int blocked = QF_WIDE_VECTORS() && n_in <= NZ_MAX;
    if (!blocked)
        portable_codes_t(out, xcodes, wcodes_t, n, n_in, n_out);
    nonzeros nz;
    for (int64_t s = 0; s < n; s++) {
        float *os = out + s * n_out;
        int64_t o = 0;
        if (blocked) {
            find_nonzeros(&nz, xcodes + s * n_in, n_in);
            for (; o + T_VECS * LANES <= n_out; o += T_VECS * LANES)
                codes_t_block(os + o, &nz, wcodes_t + o, n_out, T_VECS);
            if (o < n_out)
                codes_t_rest(os + o, &nz, wcodes_t + o, n_out, n_out - o);
        }
        for (o = 0; o < n_out; o++)
            os[o] = qf_affine_epilogue((int64_t)os[o], scale[o], b ? b[o] : 0.0f);
    }
}

/* ---------------------------------------------------------------- backward */

enum { BWD_A = 2, BWD_V = 4 };   /* rows (samples or outputs) x column vectors per block */

/* dx[s * n_in + cols] = sum over o ascending of dout[s * n_out + o] * w[o * n_in + cols]
 * for s < sa and the nv vectors of columns at dx. */
INLINE void dx_block(float *dx, const float *dout, const float *w, int64_t n_in, int64_t n_out,
                     int sa, int nv)
{
    vec8 acc[BWD_A][BWD_V];
    for (int s = 0; s < sa; s++)
        for (int c = 0; c < nv; c++)
            acc[s][c] = zero8();
    for (int64_t o = 0; o < n_out; o++) {
        float g0 = dout[o], g1 = sa > 1 ? dout[n_out + o] : 0.0f;
        if (g0 == 0.0f && g1 == 0.0f)
            continue;
        const float *wo = w + o * n_in;
        for (int c = 0; c < nv; c++) {
            vec8 wv = load8(wo + c * LANES);
            acc[0][c] += wv * g0;
            if (sa > 1)
                acc[1][c] += wv * g1;
        }
    }
    for (int s = 0; s < sa; s++)
        for (int c = 0; c < nv; c++)
            store8(dx + s * n_in + c * LANES, &acc[s][c]);
}

enum { TAIL_ROWS = 4 };   /* independent running sums of the column kernels */

/* dx of four columns for ns <= TAIL_ROWS samples (the tail's first four). */
INLINE void dx_block4(float *dx, const float *dout, const float *w, int64_t n_in,
                      int64_t n_out, int ns)
{
    vec4 a[TAIL_ROWS];
    for (int k = 0; k < ns; k++)
        a[k] = (vec4){0};
    for (int64_t o = 0; o < n_out; o++) {
        vec4 wv = load4(w + o * n_in);
        for (int k = 0; k < ns; k++)
            a[k] += wv * dout[k * n_out + o];
    }
    for (int k = 0; k < ns; k++)
        store4(dx + k * n_in, a[k]);
}

/* dx of one column (stride n_in) for ns <= TAIL_ROWS samples. */
INLINE void dx_column(float *dx, const float *dout, const float *w, int64_t n_in,
                      int64_t n_out, int ns)
{
    float a[TAIL_ROWS] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t o = 0; o < n_out; o++)
        for (int k = 0; k < ns; k++)
            a[k] += dout[k * n_out + o] * w[o * n_in];
    for (int k = 0; k < ns; k++)
        dx[k * n_in] = a[k];
}

/* dw[o * n_in + cols] += sum over s ascending of dout[s * n_out + o] * x[s * n_in + cols]
 * for o < oa and the nv vectors of columns at dw. */
INLINE void dw_block(float *dw, const float *dout, const float *x, int64_t n, int64_t n_in,
                     int64_t n_out, int oa, int nv)
{
    vec8 acc[BWD_A][BWD_V];
    for (int o = 0; o < oa; o++)
        for (int c = 0; c < nv; c++)
            acc[o][c] = load8(dw + o * n_in + c * LANES);
    for (int64_t s = 0; s < n; s++) {
        float g0 = dout[s * n_out], g1 = oa > 1 ? dout[s * n_out + 1] : 0.0f;
        if (g0 == 0.0f && g1 == 0.0f)
            continue;
        const float *xs = x + s * n_in;
        for (int c = 0; c < nv; c++) {
            vec8 xv = load8(xs + c * LANES);
            acc[0][c] += xv * g0;
            if (oa > 1)
                acc[1][c] += xv * g1;
        }
    }
    for (int o = 0; o < oa; o++)
        for (int c = 0; c < nv; c++)
            store8(dw + o * n_in + c * LANES, &acc[o][c]);
}

/* dw of four columns for no <= TAIL_ROWS outputs (the tail's first four). */
INLINE void dw_block4(float *dw, const float *dout, const float *x, int64_t n, int64_t n_in,
                      int64_t n_out, int no)
{
    vec4 a[TAIL_ROWS];
    for (int k = 0; k < no; k++)
        a[k] = load4(dw + k * n_in);
    for (int64_t s = 0; s < n; s++) {
        vec4 xv = load4(x + s * n_in);
        for (int k = 0; k < no; k++)
            a[k] += xv * dout[s * n_out + k];
    }
    for (int k = 0; k < no; k++)
        store4(dw + k * n_in, a[k]);
}

/* dw of one column (stride n_in) for no <= TAIL_ROWS outputs. */
INLINE void dw_column(float *dw, const float *dout, const float *x, int64_t n, int64_t n_in,
                      int64_t n_out, int no)
{
    float a[TAIL_ROWS];
    for (int k = 0; k < no; k++)
        a[k] = dw[k * n_in];
    for (int64_t s = 0; s < n; s++)
        for (int k = 0; k < no; k++)
            a[k] += dout[s * n_out + k] * x[s * n_in];
    for (int k = 0; k < no; k++)
        dw[k * n_in] = a[k];
}

QF_MULTIVERSION
void qf_linear_backward(float *dx, float *dw, float *db, const float *dout,
                        const float *x, const float *w,
                        int64_t n, int64_t n_in, int64_t n_out)
{
    if (!QF_WIDE_VECTORS()) {
        portable_backward(dx, dw, db, dout, x, w, n, n_in, n_out);
        return;
    }
    int64_t full = n_in / LANES * LANES;   /* columns in whole vectors */
    if (dx) {
        for (int64_t s = 0; s < n; s += BWD_A) {
            const float *ds = dout + s * n_out;
            float *dxs = dx + s * n_in;
            int sa = n - s >= BWD_A ? BWD_A : 1;
            int64_t c = 0;
            for (; c + BWD_V * LANES <= full; c += BWD_V * LANES) {
                if (sa == BWD_A)
                    dx_block(dxs + c, ds, w + c, n_in, n_out, BWD_A, BWD_V);
                else
                    dx_block(dxs + c, ds, w + c, n_in, n_out, 1, BWD_V);
            }
            for (; c < full; c += LANES) {
                if (sa == BWD_A)
                    dx_block(dxs + c, ds, w + c, n_in, n_out, BWD_A, 1);
                else
                    dx_block(dxs + c, ds, w + c, n_in, n_out, 1, 1);
            }
        }
        /* the last n_in % 8 columns, a few samples at a time: four in a vector, the
         * rest one by one */
        for (int64_t s = 0; s < n; s += TAIL_ROWS) {
            int ns = n - s < TAIL_ROWS ? (int)(n - s) : TAIL_ROWS;
            float *dxs = dx + s * n_in;
            const float *ds = dout + s * n_out;
            int64_t c = full;
            if (c + 4 <= n_in) {
                if (ns == TAIL_ROWS)
                    dx_block4(dxs + c, ds, w + c, n_in, n_out, TAIL_ROWS);
                else
                    dx_block4(dxs + c, ds, w + c, n_in, n_out, ns);
                c += 4;
            }
            for (; c < n_in; c++) {
                if (ns == TAIL_ROWS)
                    dx_column(dxs + c, ds, w + c, n_in, n_out, TAIL_ROWS);
                else
                    dx_column(dxs + c, ds, w + c, n_in, n_out, ns);
            }
        }
    }
    if (n == 1) {   /* one sample: dw += the outer product, rows of zero gradient skipped */
        for (int64_t o = 0; o < n_out; o++) {
            float g = dout[o];
            if (g == 0.0f)
                continue;
            float *restrict dwo = dw + o * n_in;
            for (int64_t i = 0; i < n_in; i++)
                dwo[i] += g * x[i];
        }
    }
    for (int64_t o = 0; o < n_out && n > 1; o += BWD_A) {
        const float *go = dout + o;
        float *dwo = dw + o * n_in;
        int oa = n_out - o >= BWD_A ? BWD_A : 1;
        int64_t c = 0;
        for (; c + BWD_V * LANES <= full; c += BWD_V * LANES) {
            if (oa == BWD_A)
                dw_block(dwo + c, go, x + c, n, n_in, n_out, BWD_A, BWD_V);
            else
                dw_block(dwo + c, go, x + c, n, n_in, n_out, 1, BWD_V);
        }
        for (; c < full; c += LANES) {
            if (oa == BWD_A)
                dw_block(dwo + c, go, x + c, n, n_in, n_out, BWD_A, 1);
            else
                dw_block(dwo + c, go, x + c, n, n_in, n_out, 1, 1);
        }
    }
    for (int64_t o = 0; o < n_out && n > 1; o += TAIL_ROWS) {   /* the last columns, as dx */
        int no = n_out - o < TAIL_ROWS ? (int)(n_out - o) : TAIL_ROWS;
        float *dwo = dw + o * n_in;
        const float *go = dout + o;
        int64_t c = full;
        if (c + 4 <= n_in) {
            if (no == TAIL_ROWS)
                dw_block4(dwo + c, go, x + c, n, n_in, n_out, TAIL_ROWS);
            else
                dw_block4(dwo + c, go, x + c, n, n_in, n_out, no);
            c += 4;
        }
        for (; c < n_in; c++) {
            if (no == TAIL_ROWS)
                dw_column(dwo + c, go, x + c, n, n_in, n_out, TAIL_ROWS);
            else
                dw_column(dwo + c, go, x + c, n, n_in, n_out, no);
        }
    }
    if (db)
        for (int64_t s = 0; s < n; s++)
            for (int64_t o = 0; o < n_out; o++)
                db[o] += dout[s * n_out + o];
}
