/* test_circuit.c: the integer circuit against a naive computation written
 * from the formulas of REFERENCE.md sections 5 and 6 and circuit.h (every op
 * kind: dense, conv with zero-point padding and strides, pool sums, rounding,
 * lookups, transpose, reshape, add, decode), its worst-case bounds against
 * brute force over every input code, the rounding rule, the bits formula on
 * its edge cases, and its refusal of bad specs and overflowing circuits. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "check.h"
#include "../bitwidth.h"
#include "../circuit.h"
#include "../rng.h"

/* ---- bits formula ---- */

/* Smallest b >= 1 such that b-bit integers (signed when lo < 0) hold [lo, hi]. */
static int bits_by_search(int64_t lo, int64_t hi)
{
    for (int b = 1; b <= 64; b++) {
        if (lo >= 0) {
            if (b == 64 || (uint64_t)hi <= (((uint64_t)1 << b) - 1))
                return b;
        } else {
            int64_t smin = b == 64 ? INT64_MIN : -((int64_t)1 << (b - 1));
            int64_t smax = b == 64 ? INT64_MAX : ((int64_t)1 << (b - 1)) - 1;
            if (lo >= smin && hi <= smax)
                return b;
        }
    }
    return -1;
}

/* The REFERENCE.md formula evaluated in long double (exact for |v| < 2^62). */
static int bits_by_log(int64_t lo, int64_t hi)
{
    long double up = hi >= 0 ? ceill(log2l((long double)hi + 1.0L)) : 0.0L;
    if (lo >= 0)
        return up < 1.0L ? 1 : (int)up;
    long double down = ceill(log2l(-(long double)lo)) + 1.0L;
    return (int)(down > up + 1.0L ? down : up + 1.0L);
}

static void test_bits(void)
{
    CHECK(qf_bits_for_range(0, 0) == 1, "bits(0) = %d", qf_bits_for_range(0, 0));
    CHECK(qf_bits_for_range(1, 1) == 1, "bits(1) = %d", qf_bits_for_range(1, 1));
    CHECK(qf_bits_for_range(-1, -1) == 1, "bits(-1) = %d", qf_bits_for_range(-1, -1));
    CHECK(qf_bits_for_range(1, 0) == 0, "empty range gives %d", qf_bits_for_range(1, 0));
    for (int k = 1; k <= 62; k++) {
        int64_t p = (int64_t)1 << k;
        int64_t vals[] = {p - 1, p, -p, -p + 1, -p - 1, p + 1};
        for (int j = 0; j < 6; j++) {
            int64_t v = vals[j];
            int got = qf_bits_for_range(v, v);
            CHECK(got == bits_by_search(v, v), "bits(%lld) = %d, search says %d",
                  (long long)v, got, bits_by_search(v, v));
            if (k <= 50)   /* long double log2 resolves v + 1 */
                CHECK(got == bits_by_log(v, v), "bits(%lld) = %d, formula says %d",
                      (long long)v, got, bits_by_log(v, v));
        }
        CHECK(qf_bits_for_range(0, p - 1) == k, "bits(2^%d - 1) = %d", k,
              qf_bits_for_range(0, p - 1));
        CHECK(qf_bits_for_range(0, p) == k + 1, "bits(2^%d) = %d", k,
              qf_bits_for_range(0, p));
        CHECK(qf_bits_for_range(-p, 0) == k + 1, "bits(-2^%d) = %d", k,
              qf_bits_for_range(-p, 0));
    }
    CHECK(qf_bits_for_range(INT64_MIN, INT64_MAX) == 64, "full int64 range gives %d",
          qf_bits_for_range(INT64_MIN, INT64_MAX));
    CHECK(qf_bits_for_range(0, INT64_MAX) == 63, "[0, INT64_MAX] gives %d",
          qf_bits_for_range(0, INT64_MAX));
    /* Mixed ranges: the wider side decides. */
    qf_rng rng;
    qf_rng_seed(&rng, 7, 0);
    for (int t = 0; t < 20000; t++) {
        int64_t a = (int64_t)qf_rng_below(&rng, 1u << 20) - (1 << 19);
        int64_t b = (int64_t)qf_rng_below(&rng, 1u << 20) - (1 << 19);
        int64_t lo = a < b ? a : b, hi = a < b ? b : a;
        int got = qf_bits_for_range(lo, hi);
        CHECK(got == bits_by_search(lo, hi) && got == bits_by_log(lo, hi),
              "bits([%lld, %lld]) = %d, search %d, formula %d", (long long)lo,
              (long long)hi, got, bits_by_search(lo, hi), bits_by_log(lo, hi));
    }
}

/* ---- the naive twin: plain loops over explicitly padded arrays ---- */

/* q = clamp(rintf(x / s), qmin - Z, qmax - Z) + Z with the C library's rintf. */
static int64_t naive_quantize(float x, const qf_quantizer *q)
{
    float r = rintf(x / q->scale);
    float lo = (float)(q->qmin - q->zero_point), hi = (float)(q->qmax - q->zero_point);
    r = r < lo ? lo : (r > hi ? hi : r);
    return (int64_t)r + q->zero_point;
}

/* (v + 2^(l-1)) / 2^l rounded down, in long double (exact below 2^63). */
static int64_t naive_round(int64_t v, int l)
{
    long double d = ldexpl(1.0L, l);
    return (int64_t)floorl(((long double)v + d / 2.0L) / d);
}

/* float32(v) * s + b in two separate float32 operations. */
static float naive_affine(int64_t v, float s, float b)
{
    volatile float a = (float)v;
    volatile float p = a * s;
    return p + b;
}

/* out (OC, OH, OW) = window sums over x (C, H, W) padded with pad; weights
 * w (OC, C, KH, KW) minus zw, or all 1 and one plane per channel (w NULL). */
static void naive_window(int64_t *out, const int64_t *x, int c, int h, int wd, const int32_t *w,
                         int32_t zw, int oc, int kh, int kw, int sh, int sw, int ph, int pw,
                         int64_t pad, int *oh_out, int *ow_out)
{
    int hp = h + 2 * ph, wp = wd + 2 * pw;
    int64_t *padded = malloc(sizeof(int64_t) * (size_t)(c * hp * wp));
    for (int i = 0; i < c * hp * wp; i++)
        padded[i] = pad;
    for (int ci = 0; ci < c; ci++)
        for (int y = 0; y < h; y++)
            for (int xx = 0; xx < wd; xx++)
                padded[(ci * hp + y + ph) * wp + xx + pw] = x[(ci * h + y) * wd + xx];
    int oh = (hp - kh) / sh + 1, ow = (wp - kw) / sw + 1;
    int planes = w ? oc : c;
    for (int o = 0; o < planes; o++)
        for (int oy = 0; oy < oh; oy++)
            for (int ox = 0; ox < ow; ox++) {
                int64_t acc = 0;
                for (int ci = 0; ci < c; ci++) {
                    if (!w && ci != o)
                        continue;
                    for (int ky = 0; ky < kh; ky++)
                        for (int kx = 0; kx < kw; kx++) {
                            int64_t v = padded[(ci * hp + oy * sh + ky) * wp + ox * sw + kx];
                            acc += w ? v * ((int64_t)w[((o * c + ci) * kh + ky) * kw + kx] - zw)
                                     : v;
                        }
                }
                out[(o * oh + oy) * ow + ox] = acc;
            }
    free(padded);
    *oh_out = oh;
    *ow_out = ow;
}

/* A lookup of x (C, plane) (lsbs, offset, scale, bias, relu, quantizer). */
static void naive_lookup(int64_t *out, const int64_t *x, int c, int plane, int lsbs,
                         const int64_t *offset, const float *scale, const float *bias, int relu,
                         const qf_quantizer *q)
{
    for (int ci = 0; ci < c; ci++)
        for (int i = 0; i < plane; i++) {
            int64_t v = x[ci * plane + i] * ((int64_t)1 << lsbs) + offset[ci];
            float y = naive_affine(v, scale[ci], bias[ci]);
            if (relu && y < 0.0f)
                y = 0.0f;
            out[ci * plane + i] = naive_quantize(y, q);
        }
}

static void widen(qf_range *r, const int64_t *x, int n)
{
    for (int i = 0; i < n; i++) {
        if (x[i] < r->min) r->min = x[i];
        if (x[i] > r->max) r->max = x[i];
    }
}

/* Run c on codes (x when codes is NULL) with an engine and a thread count,
 * the workspace allocated here. */
static qf_status run_with(const qf_circuit *c, int engine, int threads, float *out,
                          int64_t *out_int, qf_range *ranges, const int64_t *codes,
                          const float *x, int64_t n, char *err)
{
    qf_circuit_run_opts opts = {engine, threads};
    int64_t *ws = malloc(sizeof(int64_t) * (size_t)qf_circuit_workspace_len(c, threads));
    qf_status st = codes ? qf_circuit_run_codes(c, out, out_int, ranges, codes, n, &opts, ws,
                                                err, 256)
                         : qf_circuit_run(c, out, out_int, ranges, x, n, &opts, ws, err, 256);
    free(ws);
    return st;
}

static const int ENGINES[2] = {QF_CIRCUIT_ENGINE_AUTO, QF_CIRCUIT_ENGINE_INT64};

/* ---- a random circuit using every op kind ---- */

/* input (2, 5, 6) -> conv (3, 5, 4) -> lookup -> pool (3, 3, 3) -> lookup ->
 * transpose (3, 3, 3) -> requantizing lookup -> add -> reshape (27) ->
 * dense (4) -> round -> lookup -> dense (2) -> decode */
#define N_OPS 13
#define N_NODES 13
typedef struct {
    qf_quantizer input, q1, q3, q5, q10;
    int32_t wc[3 * 2 * 3 * 2], wd1[4 * 27], wd2[2 * 4];
    int64_t off1[3], off3[3], off5[3], off10[4], off_out[2];
    float s1[3], b1[3], s3[3], s5[3], s10[4], b10[4], s_out[2], b_out[2];
} rnd_circuit;

static void make_random(rnd_circuit *r, qf_rng *rng)
{
    r->input = (qf_quantizer){0.0625f, 7, 0, 15};     /* asymmetric: padding holds 7 */
    r->q1 = (qf_quantizer){0.5f, 0, 0, 7};
    r->q3 = (qf_quantizer){0.25f, -1, -8, 7};
    r->q5 = (qf_quantizer){0.3f, 0, -4, 4};
    r->q10 = (qf_quantizer){0.1f, 3, 0, 31};
    for (int j = 0; j < 36; j++) r->wc[j] = (int32_t)qf_rng_below(rng, 15) - 7;
    for (int j = 0; j < 108; j++) r->wd1[j] = (int32_t)qf_rng_below(rng, 7) - 3;
    for (int j = 0; j < 8; j++) r->wd2[j] = (int32_t)qf_rng_below(rng, 7) - 3;
    for (int c = 0; c < 3; c++) {
        int64_t sum = 0;
        for (int j = 0; j < 12; j++)
            sum += r->wc[c * 12 + j] - 1;               /* Z_w = 1 */
        r->off1[c] = -7 * sum;                          /* -Z_x sum (q_w - Z_w) */
        r->s1[c] = 0.0625f * (0.05f + 0.05f * (float)c);
        r->off3[c] = 0;
        r->s3[c] = 0.5f / 4.0f;
        r->off5[c] = 1;                                 /* -Z of q3 */
        r->s5[c] = 0.25f;
    }
    qf_rng_fill_uniform(rng, r->b1, 3, -1.0f, 1.0f);
    for (int o = 0; o < 4; o++) {
        r->off10[o] = (int64_t)qf_rng_below(rng, 41) - 20;
        r->s10[o] = 0.01f * (float)(o + 1);
    }
    qf_rng_fill_uniform(rng, r->b10, 4, -0.5f, 0.5f);
    r->off_out[0] = -3; r->off_out[1] = 5;
    r->s_out[0] = 0.125f; r->s_out[1] = 0.0375f;
    qf_rng_fill_uniform(rng, r->b_out, 2, -1.0f, 1.0f);
}

static void random_specs(qf_op_spec *ops, const rnd_circuit *r)
{
    memset(ops, 0, sizeof(qf_op_spec) * N_OPS);
    ops[0] = (qf_op_spec){.kind = QF_OP_CONV, .name = "conv", .src = 0, .weight = r->wc,
                          .weight_shape = {3, 2, 3, 2}, .weight_zero_point = 1,
                          .stride = {1, 2}, .padding = {1, 1}, .pad_code = 7};
    ops[1] = (qf_op_spec){.kind = QF_OP_LOOKUP, .name = "relu1", .src = 1, .n_channels = 3,
                          .offset = r->off1, .scale = r->s1, .bias = r->b1, .relu = 1,
                          .quant = r->q1};
    ops[2] = (qf_op_spec){.kind = QF_OP_POOL_SUM, .name = "pool", .src = 2, .kernel = {2, 2},
                          .stride = {2, 1}, .padding = {1, 0}, .pad_code = 0};
    ops[3] = (qf_op_spec){.kind = QF_OP_LOOKUP, .name = "avg", .src = 3, .n_channels = 3,
                          .offset = r->off3, .scale = r->s3, .quant = r->q3};
    ops[4] = (qf_op_spec){.kind = QF_OP_TRANSPOSE, .name = "transpose", .src = 4,
                          .dims = {0, 2}};
    ops[5] = (qf_op_spec){.kind = QF_OP_LOOKUP, .name = "requant", .src = 5, .n_channels = 3,
                          .offset = r->off5, .scale = r->s5, .quant = r->q5};
    ops[6] = (qf_op_spec){.kind = QF_OP_ADD, .name = "add", .src = 6, .src2 = 5};
    ops[7] = (qf_op_spec){.kind = QF_OP_RESHAPE, .name = "flatten", .src = 7,
                          .shape = {27, 1, 1}};
    ops[8] = (qf_op_spec){.kind = QF_OP_DENSE, .name = "fc1", .src = 8, .weight = r->wd1,
                          .weight_shape = {4, 27, 1, 1}, .weight_zero_point = -2};
    ops[9] = (qf_op_spec){.kind = QF_OP_ROUND, .name = "round", .src = 9, .lsbs = 2};
    ops[10] = (qf_op_spec){.kind = QF_OP_LOOKUP, .name = "q10", .src = 10, .lsbs = 2,
                           .n_channels = 4, .offset = r->off10, .scale = r->s10, .bias = r->b10,
                           .quant = r->q10};
    ops[11] = (qf_op_spec){.kind = QF_OP_DENSE, .name = "fc2", .src = 11, .weight = r->wd2,
                           .weight_shape = {2, 4, 1, 1}};
    ops[12] = (qf_op_spec){.kind = QF_OP_DECODE, .name = "output", .src = 12, .n_channels = 2,
                           .offset = r->off_out, .scale = r->s_out, .bias = r->b_out};
}

/* The naive twin of the random circuit on input codes q0 (60). */
static void naive_random(float *out, int64_t *out_int, qf_range *nodes, const rnd_circuit *r,
                         const int64_t *q0)
{
    int64_t n1[60], n2[60], n3[27], n4[27], n5[27], n6[27], n7[27], n9[4], n10[4], n11[4],
            n12[2];
    int oh, ow;
    widen(&nodes[0], q0, 60);
    naive_window(n1, q0, 2, 5, 6, r->wc, 1, 3, 3, 2, 1, 2, 1, 1, 7, &oh, &ow);
    CHECK(oh == 5 && ow == 4, "naive conv output %d x %d", oh, ow);
    widen(&nodes[1], n1, 60);
    naive_lookup(n2, n1, 3, 20, 0, r->off1, r->s1, r->b1, 1, &r->q1);
    widen(&nodes[2], n2, 60);
    naive_window(n3, n2, 3, 5, 4, NULL, 0, 0, 2, 2, 2, 1, 1, 0, 0, &oh, &ow);
    CHECK(oh == 3 && ow == 3, "naive pool output %d x %d", oh, ow);
    widen(&nodes[3], n3, 27);
    float zeros[3] = {0};
    naive_lookup(n4, n3, 3, 9, 0, r->off3, r->s3, zeros, 0, &r->q3);
    widen(&nodes[4], n4, 27);
    for (int c = 0; c < 3; c++)          /* (C, H, W) -> (W, H, C) */
        for (int y = 0; y < 3; y++)
            for (int x = 0; x < 3; x++)
                n5[(x * 3 + y) * 3 + c] = n4[(c * 3 + y) * 3 + x];
    widen(&nodes[5], n5, 27);
    naive_lookup(n6, n5, 3, 9, 0, r->off5, r->s5, zeros, 0, &r->q5);
    widen(&nodes[6], n6, 27);
    for (int i = 0; i < 27; i++)
        n7[i] = n6[i] + n5[i];
    widen(&nodes[7], n7, 27);
    widen(&nodes[8], n7, 27);           /* reshape: the same integers */
    for (int o = 0; o < 4; o++) {
        n9[o] = 0;
        for (int i = 0; i < 27; i++)
            n9[o] += n7[i] * ((int64_t)r->wd1[o * 27 + i] + 2);
        n10[o] = naive_round(n9[o], 2);
    }
    widen(&nodes[9], n9, 4);
    widen(&nodes[10], n10, 4);
    naive_lookup(n11, n10, 4, 1, 2, r->off10, r->s10, r->b10, 0, &r->q10);
    widen(&nodes[11], n11, 4);
    for (int o = 0; o < 2; o++) {
        n12[o] = 0;
        for (int i = 0; i < 4; i++)
            n12[o] += n11[i] * r->wd2[o * 4 + i];
        out[o] = naive_affine(n12[o] + r->off_out[o], r->s_out[o], r->b_out[o]);
        out_int[o] = n12[o];
    }
    widen(&nodes[12], n12, 2);
}

/* Run c on the n samples (codes, or x when codes is NULL) in calls of at
 * most `piece` samples, ranges widened across the calls; compare outputs,
 * returned integers and node ranges bit for bit with want_*.  Returns the
 * number of differences. */
static int compare_run(const qf_circuit *c, int engine, int threads, int64_t piece,
                       const int64_t *codes, const float *x, int64_t n, const float *want_out,
                       const int64_t *want_int, const qf_range *want_ranges)
{
    int64_t in = qf_circuit_in_size(c), n_out = qf_circuit_out_size(c);
    int n_nodes = qf_circuit_n_nodes(c);
    float *out = malloc(sizeof(float) * (size_t)(n * n_out));
    int64_t *out_int = malloc(sizeof(int64_t) * (size_t)(n * n_out));
    qf_range *ranges = malloc(sizeof(qf_range) * (size_t)n_nodes);
    qf_range_reset(ranges, n_nodes);
    for (int64_t j = 0; j < n * n_out; j++) {    /* rows left unwritten would show */
        out[j] = NAN;
        out_int[j] = INT64_MIN;
    }
    char err[256] = "";
    int bad = 0;
    for (int64_t r = 0; r < n; r += piece) {
        int64_t m = n - r < piece ? n - r : piece;
        qf_status st = run_with(c, engine, threads, out + r * n_out, out_int + r * n_out, ranges,
                                codes ? codes + r * in : NULL, codes ? NULL : x + r * in, m, err);
        CHECK(st == QF_OK, "run: %s", err);
    }
    for (int64_t j = 0; j < n * n_out; j++)
        bad += memcmp(&out[j], &want_out[j], sizeof(float)) != 0 || out_int[j] != want_int[j];
    for (int j = 0; j < n_nodes; j++)
        bad += ranges[j].min != want_ranges[j].min || ranges[j].max != want_ranges[j].max;
    CHECK(bad == 0, "engine %d, %d threads, calls of %lld samples: %d differences from the "
          "naive computation", engine, threads, (long long)piece, bad);
    free(out);
    free(out_int);
    free(ranges);
    return bad;
}

static void test_against_naive(void)
{
    enum { N = 400, IN = 60 };
    qf_rng rng;
    qf_rng_seed(&rng, 11, 0);
    rnd_circuit r;
    make_random(&r, &rng);
    qf_op_spec ops[N_OPS];
    random_specs(ops, &r);
    char err[256];
    qf_circuit *c = NULL;
    int64_t in_shape[3] = {2, 5, 6};
    qf_status st = qf_circuit_create(&c, &r.input, in_shape, ops, N_OPS, err, 256);
    CHECK(st == QF_OK && c, "create: %s", err);
    if (!c)
        return;
    CHECK(qf_circuit_n_nodes(c) == N_NODES && qf_circuit_in_size(c) == IN &&
          qf_circuit_out_size(c) == 2, "nodes %d, in %lld, out %lld", qf_circuit_n_nodes(c),
          (long long)qf_circuit_in_size(c), (long long)qf_circuit_out_size(c));
    CHECK(qf_circuit_float_exact(c), "small circuit should run in float32 blocks");
    int64_t want_shapes[N_NODES][3] = {{2, 5, 6}, {3, 5, 4}, {3, 5, 4}, {3, 3, 3}, {3, 3, 3},
                                       {3, 3, 3}, {3, 3, 3}, {3, 3, 3}, {27, 1, 1}, {4, 1, 1},
                                       {4, 1, 1}, {4, 1, 1}, {2, 1, 1}};
    int want_kinds[N_NODES] = {QF_NODE_INPUT, QF_NODE_ACCUMULATOR, QF_NODE_LOOKUP_OUTPUT,
                               QF_NODE_POOL_SUM, QF_NODE_LOOKUP_OUTPUT, QF_NODE_TRANSPOSE,
                               QF_NODE_LOOKUP_OUTPUT, QF_NODE_ADD, QF_NODE_RESHAPE,
                               QF_NODE_ACCUMULATOR, QF_NODE_ROUNDED, QF_NODE_LOOKUP_OUTPUT,
                               QF_NODE_ACCUMULATOR};
    for (int j = 0; j < N_NODES; j++) {
        const qf_node_info *nd = qf_circuit_node(c, j);
        CHECK(nd->kind == want_kinds[j] && nd->op == j - 1 &&
              memcmp(nd->shape, want_shapes[j], sizeof nd->shape) == 0,
              "node %d: kind %d op %d shape (%lld, %lld, %lld)", j, nd->kind, nd->op,
              (long long)nd->shape[0], (long long)nd->shape[1], (long long)nd->shape[2]);
    }
    static float x[N * IN], want_out[N * 2];
    static int64_t codes[N * IN], want_int[N * 2];
    qf_rng_fill_uniform(&rng, x, N * IN, -0.7f, 0.8f);   /* beyond the input range too */
    qf_range want[N_NODES];
    qf_range_reset(want, N_NODES);
    st = qf_circuit_quantize_input(c, codes, x, N, err, 256);
    CHECK(st == QF_OK, "quantize_input: %s", err);
    int code_mismatches = 0;
    for (int s = 0; s < N; s++) {
        int64_t q0[IN];
        for (int i = 0; i < IN; i++) {
            q0[i] = naive_quantize(x[s * IN + i], &r.input);
            code_mismatches += q0[i] != codes[s * IN + i];
        }
        naive_random(want_out + s * 2, want_int + s * 2, want, &r, q0);
    }
    CHECK(code_mismatches == 0, "%d input codes differ", code_mismatches);
    /* every engine, from floats and from codes, in calls of various sizes
     * (blocks of 8 lanes with padding, full and partial blocks of 64) */
    int64_t pieces[] = {N, 1, 7, 64, 65, 130};
    for (int e = 0; e < 2; e++)
        for (int k = 0; k < 6; k++) {
            compare_run(c, ENGINES[e], 1, pieces[k], NULL, x, N, want_out, want_int, want);
            compare_run(c, ENGINES[e], 2, pieces[k], codes, NULL, N, want_out, want_int, want);
        }
    for (int j = 0; j < N_NODES; j++) {
        const qf_node_info *nd = qf_circuit_node(c, j);
        CHECK(nd->static_min <= want[j].min && want[j].max <= nd->static_max,
              "node %d: reached [%lld, %lld] outside the static bound [%lld, %lld]", j,
              (long long)want[j].min, (long long)want[j].max, (long long)nd->static_min,
              (long long)nd->static_max);
    }
    /* the data reach interesting values: ReLU clips, the add passes the code range,
     * the rounding sees negative values */
    CHECK(want[2].min == 0 && want[7].max > 4 && want[9].min < 0,
          "node ranges too narrow to test much");
    /* outputs without ranges or returned integers */
    static float out2[N * 2];
    st = run_with(c, QF_CIRCUIT_ENGINE_AUTO, 1, out2, NULL, NULL, codes, NULL, N, err);
    CHECK(st == QF_OK && memcmp(want_out, out2, sizeof out2) == 0, "run_codes without ranges");
    qf_circuit_free(c);
}

/* ---- a pruned tutorial-sized net: float32 blocks and threads ---- */

/* input (2) codes [-3, 3] -> dense (100) -> ReLU lookup [0, 7] -> dense
 * (100) -> ReLU lookup -> dense (2) -> decode; each row of the hidden and
 * output weights keeps 20 codes in [-3, 3] (many still zero). */
#define H 100
typedef struct {
    qf_quantizer input, act;
    int32_t w1[H * 2], w2[H * H], w3[2 * H];
    float s1[H], b1[H], s2[H], b2[H], s3[2], b3[2];
} tutorial_net;

static void make_tutorial(tutorial_net *t, qf_rng *rng)
{
    t->input = (qf_quantizer){1.0f / 3.0f, 0, -3, 3};
    t->act = (qf_quantizer){0.3f, 0, 0, 7};
    for (int j = 0; j < H * 2; j++) t->w1[j] = (int32_t)qf_rng_below(rng, 7) - 3;
    int32_t *rows[2] = {t->w2, t->w3};
    for (int m = 0; m < 2; m++)
        for (int o = 0; o < (m ? 2 : H); o++) {
            int32_t *w = rows[m] + o * H;
            memset(w, 0, sizeof(int32_t) * H);
            for (int k = 0; k < 20; k++)
                w[qf_rng_below(rng, H)] = (int32_t)qf_rng_below(rng, 7) - 3;
        }
    for (int o = 0; o < H; o++) {
        t->s1[o] = (1.0f / 3.0f) * 0.25f;
        t->s2[o] = 0.3f * 0.25f;
    }
    qf_rng_fill_uniform(rng, t->b1, H, -1.0f, 1.0f);
    qf_rng_fill_uniform(rng, t->b2, H, -1.0f, 1.0f);
    t->s3[0] = t->s3[1] = 0.3f * 0.25f;
    qf_rng_fill_uniform(rng, t->b3, 2, -1.0f, 1.0f);
}

static void naive_tutorial(float *out, int64_t *out_int, qf_range *nodes, const tutorial_net *t,
                           const int64_t *q0)
{
    int64_t a1[H], c1[H], a2[H], c2[H], a3[2];
    int64_t zero[H] = {0};
    widen(&nodes[0], q0, 2);
    for (int o = 0; o < H; o++)
        a1[o] = q0[0] * t->w1[o * 2] + q0[1] * t->w1[o * 2 + 1];
    widen(&nodes[1], a1, H);
    naive_lookup(c1, a1, H, 1, 0, zero, t->s1, t->b1, 1, &t->act);
    widen(&nodes[2], c1, H);
    for (int o = 0; o < H; o++) {
        a2[o] = 0;
        for (int i = 0; i < H; i++)
            a2[o] += c1[i] * t->w2[o * H + i];
    }
    widen(&nodes[3], a2, H);
    naive_lookup(c2, a2, H, 1, 0, zero, t->s2, t->b2, 1, &t->act);
    widen(&nodes[4], c2, H);
    for (int o = 0; o < 2; o++) {
        a3[o] = 0;
        for (int i = 0; i < H; i++)
            a3[o] += c2[i] * t->w3[o * H + i];
        out[o] = naive_affine(a3[o], t->s3[o], t->b3[o]);
        out_int[o] = a3[o];
    }
    widen(&nodes[5], a3, 2);
}

static void test_tutorial_net(void)
{
    enum { N = 5000 };
    qf_rng rng;
    qf_rng_seed(&rng, 5, 0);
    static tutorial_net t;
    make_tutorial(&t, &rng);
    qf_op_spec ops[6] = {
        {.kind = QF_OP_DENSE, .name = "fc1", .src = 0, .weight = t.w1,
         .weight_shape = {H, 2, 1, 1}},
        {.kind = QF_OP_LOOKUP, .name = "relu1", .src = 1, .n_channels = H, .scale = t.s1,
         .bias = t.b1, .relu = 1, .quant = t.act},
        {.kind = QF_OP_DENSE, .name = "fc2", .src = 2, .weight = t.w2,
         .weight_shape = {H, H, 1, 1}},
        {.kind = QF_OP_LOOKUP, .name = "relu2", .src = 3, .n_channels = H, .scale = t.s2,
         .bias = t.b2, .relu = 1, .quant = t.act},
        {.kind = QF_OP_DENSE, .name = "fc3", .src = 4, .weight = t.w3,
         .weight_shape = {2, H, 1, 1}},
        {.kind = QF_OP_DECODE, .name = "output", .src = 5, .n_channels = 2, .scale = t.s3,
         .bias = t.b3},
    };
    char err[256];
    qf_circuit *c = NULL;
    int64_t shape[3] = {2, 1, 1};
    CHECK(qf_circuit_create(&c, &t.input, shape, ops, 6, err, 256) == QF_OK, "create: %s", err);
    if (!c)
        return;
    CHECK(qf_circuit_float_exact(c), "the tutorial net should run in float32 blocks");
    static float x[N * 2], want_out[N * 2];
    static int64_t codes[N * 2], want_int[N * 2];
    /* the first 3000 samples are zeros, so ranges from the first thread's share alone
     * would be too narrow */
    memset(x, 0, sizeof(float) * 3000 * 2);
    qf_rng_fill_uniform(&rng, x + 3000 * 2, (N - 3000) * 2, -1.2f, 1.2f);
    qf_range want[6];
    qf_range_reset(want, 6);
    for (int s = 0; s < N; s++) {
        for (int i = 0; i < 2; i++)
            codes[s * 2 + i] = naive_quantize(x[s * 2 + i], &t.input);
        naive_tutorial(want_out + s * 2, want_int + s * 2, want, &t, codes + s * 2);
    }
    CHECK(want[2].min == 0 && want[2].max == 7 && want[4].max == 7 && want[3].min < 0,
          "node ranges too narrow to test much");
    int threads[] = {1, 2, 3, 7};
    for (int k = 0; k < 4; k++) {
        compare_run(c, QF_CIRCUIT_ENGINE_AUTO, threads[k], N, NULL, x, N, want_out, want_int,
                    want);
        compare_run(c, QF_CIRCUIT_ENGINE_AUTO, threads[k], N, codes, NULL, N, want_out,
                    want_int, want);
    }
    compare_run(c, QF_CIRCUIT_ENGINE_INT64, 2, N, codes, NULL, N, want_out, want_int, want);
    compare_run(c, QF_CIRCUIT_ENGINE_AUTO, 2, 2049, codes, NULL, N, want_out, want_int, want);
    compare_run(c, QF_CIRCUIT_ENGINE_AUTO, 1, 33, codes, NULL, N, want_out, want_int, want);
    qf_circuit_free(c);
}
#undef H

/* ---- lookups over every input value ---- */

/* A LOOKUP of the input codes [-4000, 4000] (one sample each), against the
 * naive formula with rintf: ties (t / 2), ReLU, zero points with qmin - Z
 * above 0, quotients beyond 2^22 and infinite ones, codes up to 2^23. */
static void test_lookup_sweep(void)
{
    enum { N = 8001 };
    typedef struct {
        float scale, bias;
        int relu, lsbs;
        int64_t offset;
        qf_quantizer q;
    } lut;
    const int32_t big = (1 << 22) - 1;
    lut cases[] = {
        {0.5f, 0.0f, 0, 0, 0, {1.0f, 0, -7, 7}},
        {0.37f, -3.3f, 1, 0, 0, {0.9f, 3, 0, 15}},
        {1500.0f, 0.25f, 0, 0, 0, {1.0f, 0, -big, big}},
        {2501.0f, 0.25f, 0, 0, 0, {1.0f, 0, -(1 << 23), 1 << 23}},
        {1e30f, 0.0f, 0, 0, 0, {1.0f, 0, -100, 100}},
        {0.25f, 0.1f, 0, 0, 0, {0.5f, -5, 0, 10}},
        {0.001f, 0.0f, 1, 3, 123, {0.01f, 0, -128, 127}},
        {3000.0f, -0.5f, 1, 0, -7, {1.0f, 1 << 22, 0, (1 << 23) - 1}},
    };
    qf_quantizer in = {1.0f, 0, -4000, 4000};
    static int64_t codes[N], want[N], got[N];
    static float out[N];
    for (int i = 0; i < N; i++)
        codes[i] = i - 4000;
    int64_t one[3] = {1, 1, 1};
    float unit[1] = {1.0f};
    for (int k = 0; k < (int)(sizeof cases / sizeof cases[0]); k++) {
        lut *l = &cases[k];
        qf_op_spec ops[2] = {
            {.kind = QF_OP_LOOKUP, .name = "lut", .src = 0, .lsbs = l->lsbs, .n_channels = 1,
             .offset = &l->offset, .scale = &l->scale, .bias = &l->bias, .relu = l->relu,
             .quant = l->q},
            {.kind = QF_OP_DECODE, .name = "output", .src = 1, .n_channels = 1, .scale = unit},
        };
        char err[256];
        qf_circuit *c = NULL;
        CHECK(qf_circuit_create(&c, &in, one, ops, 2, err, 256) == QF_OK, "create: %s", err);
        if (!c)
            continue;
        CHECK(qf_circuit_float_exact(c), "case %d should run in float32 blocks", k);
        naive_lookup(want, codes, 1, N, l->lsbs, &l->offset, &l->scale, &l->bias, l->relu, &l->q);
        int clamped = 0;
        for (int i = 0; i < N; i++)
            clamped += want[i] == l->q.qmin || want[i] == l->q.qmax;
        CHECK(clamped > 0 && clamped < N, "case %d: %d clamped codes, too few or all", k, clamped);
        for (int e = 0; e < 2; e++) {
            run_with(c, ENGINES[e], 1, out, got, NULL, codes, NULL, N, err);
            int bad = 0;
            for (int i = 0; i < N; i++)
                bad += got[i] != want[i];
            CHECK(bad == 0, "case %d, engine %d: %d codes differ from the naive lookup", k, e,
                  bad);
        }
        qf_circuit_free(c);
    }
}

/* ---- the float32 limit: 2^24 ---- */

/* One input code in [0, 4095] times one weight: 4095 * 4097 = 2^24 - 1 is
 * float-exact, 4095 * 4098 is not; both engines give the exact products,
 * here, in a lookup whose argument t 2^l + offset crosses 2^24, and in a
 * convolution whose padded taps cancel (3 pad - 2 pad = pad < 2^24) through a
 * partial sum 3 pad beyond 2^24 that float32 would round. */
static void test_float_limit(void)
{
    qf_quantizer in = {1.0f, 0, 0, 4095}, q = {1.0f, 0, 0, 7};
    int64_t one[3] = {1, 1, 1}, codes[3] = {4095, 0, 1234};
    float s1[1] = {1.0f}, b1[1] = {0.0f};
    char err[256];
    int32_t weights[2] = {4097, 4098};
    for (int k = 0; k < 2; k++) {
        int32_t w[1] = {weights[k]};
        qf_op_spec ops[2] = {
            {.kind = QF_OP_DENSE, .name = "fc", .src = 0, .weight = w,
             .weight_shape = {1, 1, 1, 1}},
            {.kind = QF_OP_DECODE, .name = "output", .src = 1, .n_channels = 1, .scale = s1},
        };
        qf_circuit *c = NULL;
        CHECK(qf_circuit_create(&c, &in, one, ops, 2, err, 256) == QF_OK, "create: %s", err);
        if (!c)
            return;
        CHECK(qf_circuit_float_exact(c) == (k == 0), "weight %d: float_exact %d", (int)w[0],
              qf_circuit_float_exact(c));
        for (int e = 0; e < 2; e++) {
            float out[3];
            int64_t got[3];
            qf_range r[2];
            qf_range_reset(r, 2);
            run_with(c, ENGINES[e], 1, out, got, r, codes, NULL, 3, err);
            for (int s = 0; s < 3; s++)
                CHECK(got[s] == codes[s] * w[0] && out[s] == (float)(codes[s] * w[0]),
                      "engine %d: %lld * %d gave %lld", e, (long long)codes[s], (int)w[0],
                      (long long)got[s]);
            CHECK(r[1].min == 0 && r[1].max == 4095 * (int64_t)w[0], "range");
        }
        qf_circuit_free(c);
    }
    /* a lookup of t in [0, 4095] with 2^12 t + offset: offset 4095 stays below 2^24,
     * offset 4096 reaches it */
    int64_t offsets[2] = {4095, 4096};
    for (int k = 0; k < 2; k++) {
        int64_t off[1] = {offsets[k]};
        float tiny[1] = {1.0f / 4194304.0f};     /* 2^-22: codes 0..4 */
        qf_op_spec ops[3] = {
            {.kind = QF_OP_LOOKUP, .name = "lut", .src = 0, .lsbs = 12, .n_channels = 1,
             .offset = off, .scale = tiny, .bias = b1, .quant = q},
            {.kind = QF_OP_RESHAPE, .name = "same", .src = 1, .shape = {1, 1, 1}},
            {.kind = QF_OP_DECODE, .name = "output", .src = 2, .n_channels = 1, .scale = s1},
        };
        qf_circuit *c = NULL;
        CHECK(qf_circuit_create(&c, &in, one, ops, 3, err, 256) == QF_OK, "create: %s", err);
        if (!c)
            return;
        CHECK(qf_circuit_float_exact(c) == (k == 0), "offset %lld: float_exact %d",
              (long long)off[0], qf_circuit_float_exact(c));
        for (int e = 0; e < 2; e++) {
            float out[3];
            int64_t got[3];
            run_with(c, ENGINES[e], 1, out, got, NULL, codes, NULL, 3, err);
            for (int s = 0; s < 3; s++) {
                float y = naive_affine(codes[s] * 4096 + off[0], tiny[0], 0.0f);
                CHECK(got[s] == naive_quantize(y, &q), "engine %d: lookup of %lld gave %lld",
                      e, (long long)codes[s], (long long)got[s]);
            }
        }
        qf_circuit_free(c);
    }
    int32_t wc[2] = {3, -2};
    int32_t pad = (1 << 23) - 1;
    qf_quantizer bit = {1.0f, 0, 0, 1};
    qf_op_spec conv_ops[2] = {
        {.kind = QF_OP_CONV, .name = "conv", .src = 0, .weight = wc,
         .weight_shape = {1, 1, 1, 2}, .stride = {1, 3}, .padding = {0, 2}, .pad_code = pad},
        {.kind = QF_OP_DECODE, .name = "output", .src = 1, .n_channels = 1, .scale = s1},
    };
    qf_circuit *c = NULL;
    CHECK(qf_circuit_create(&c, &bit, one, conv_ops, 2, err, 256) == QF_OK, "create: %s", err);
    if (!c)
        return;
    CHECK(!qf_circuit_float_exact(c) && qf_circuit_node(c, 1)->static_max == pad,
          "cancelling padded taps: float_exact %d", qf_circuit_float_exact(c));
    int64_t bits[3] = {0, 1, 1}, got[3 * 2];
    float out[3 * 2];
    run_with(c, QF_CIRCUIT_ENGINE_AUTO, 1, out, got, NULL, bits, NULL, 3, err);
    for (int j = 0; j < 6; j++)
        CHECK(got[j] == pad, "padded taps sum to %lld, expected %d", (long long)got[j], pad);
    qf_circuit_free(c);
}

/* ---- worst case: brute force over every input ---- */

/* Input (1, 2, 2) codes in [-1, 1] (81 inputs): conv with padding, a pool
 * whose padding code 5 lies outside the input range, a lookup and a
 * transpose of the input, and a dense op on the conv. */
static void test_worst_case(void)
{
    qf_quantizer in = {1.0f, 0, -1, 1}, q = {0.4f, 0, -6, 6};
    int32_t wc[2 * 1 * 2 * 2] = {3, -2, 1, -4, -1, 2, 2, 5};
    int32_t wd[3 * 18];
    for (int j = 0; j < 54; j++)
        wd[j] = (j * 7 % 11) - 5;
    int64_t off[1] = {2};
    float sc[1] = {0.7f}, bi[1] = {-0.3f};
    qf_op_spec ops[6] = {
        {.kind = QF_OP_CONV, .name = "conv", .src = 0, .weight = wc,
         .weight_shape = {2, 1, 2, 2}, .stride = {1, 1}, .padding = {1, 1}, .pad_code = 0},
        {.kind = QF_OP_POOL_SUM, .name = "pool", .src = 0, .kernel = {2, 2}, .stride = {1, 1},
         .padding = {1, 1}, .pad_code = 5},
        {.kind = QF_OP_LOOKUP, .name = "lut", .src = 0, .n_channels = 1, .offset = off,
         .scale = sc, .bias = bi, .relu = 0, .quant = q},
        {.kind = QF_OP_TRANSPOSE, .name = "t", .src = 0, .dims = {1, 2}},
        {.kind = QF_OP_DENSE, .name = "fc", .src = 1, .weight = wd,
         .weight_shape = {3, 18, 1, 1}},
        {.kind = QF_OP_DECODE, .name = "output", .src = 5, .n_channels = 3,
         .scale = (float[3]){1.0f, 1.0f, 1.0f}},
    };
    char err[256];
    qf_circuit *c = NULL;
    int64_t shape[3] = {1, 2, 2};
    CHECK(qf_circuit_create(&c, &in, shape, ops, 6, err, 256) == QF_OK, "create: %s", err);
    if (!c)
        return;
    int64_t codes[81 * 4];
    for (int s = 0; s < 81; s++)
        for (int i = 0, v = s; i < 4; i++, v /= 3)
            codes[s * 4 + i] = v % 3 - 1;
    float out[81 * 3];
    for (int e = 0; e < 2; e++) {
    qf_range r[6];
    qf_range_reset(r, 6);
    CHECK(run_with(c, ENGINES[e], 1, out, NULL, r, codes, NULL, 81, err) == QF_OK, "run: %s",
          err);
    for (int j = 0; j < 6; j++) {
        const qf_node_info *nd = qf_circuit_node(c, j);
        int exact = j <= 4;   /* everything reading the input directly */
        CHECK(exact ? (nd->static_min == r[j].min && nd->static_max == r[j].max)
                    : (nd->static_min <= r[j].min && r[j].max <= nd->static_max),
              "node %d: static [%lld, %lld], reached [%lld, %lld]", j,
              (long long)nd->static_min, (long long)nd->static_max, (long long)r[j].min,
              (long long)r[j].max);
    }
    /* pool windows: a corner holds three padded 5s and one input (15 + [-1, 1]), the
     * centre four inputs ([-4, 4]) */
    CHECK(r[2].min == -4 && r[2].max == 16, "pool range [%lld, %lld]", (long long)r[2].min,
          (long long)r[2].max);
    }
    qf_circuit_free(c);
}

/* ---- the rounding rule ---- */

static void test_rounding_rule(void)
{
    qf_quantizer in = {1.0f, 0, -40, 40};
    int64_t codes[81];
    for (int i = 0; i < 81; i++)
        codes[i] = i - 40;
    for (int l = 1; l <= 4; l++) {
        qf_op_spec ops[2] = {
            {.kind = QF_OP_ROUND, .name = "round", .src = 0, .lsbs = l},
            {.kind = QF_OP_DECODE, .name = "output", .src = 1, .lsbs = l, .n_channels = 1,
             .scale = (float[1]){1.0f}},
        };
        char err[256];
        qf_circuit *c = NULL;
        int64_t shape[3] = {1, 1, 1};
        CHECK(qf_circuit_create(&c, &in, shape, ops, 2, err, 256) == QF_OK, "create: %s", err);
        if (!c)
            return;
        for (int e = 0; e < 2; e++) {
            float out[81];
            int64_t got[81];
            qf_range r[2];
            qf_range_reset(r, 2);
            run_with(c, ENGINES[e], 1, out, got, r, codes, NULL, 81, err);
            int bad = 0;
            for (int i = 0; i < 81; i++) {
                int64_t want = naive_round(codes[i], l);
                bad += got[i] != want || out[i] != (float)(want * ((int64_t)1 << l));
            }
            CHECK(bad == 0, "engine %d, lsbs %d: %d values differ from floor((v + 2^(l-1)) / "
                  "2^l)", e, l, bad);
        }
        CHECK(qf_circuit_node(c, 1)->static_min == naive_round(-40, l) &&
              qf_circuit_node(c, 1)->static_max == naive_round(40, l), "lsbs %d bounds", l);
        qf_circuit_free(c);
    }
    /* ties go up: -3/2 -> -1, -1/2 -> 0, 1/2 -> 1, 3/2 -> 2 */
    CHECK(naive_round(-3, 1) == -1 && naive_round(-1, 1) == 0 && naive_round(1, 1) == 1 &&
          naive_round(3, 1) == 2, "naive rounding of ties");
}

/* ---- errors ---- */

typedef struct {
    const char *what;
    int op;                   /* index of the op to spoil */
    qf_status status;
    const char *message;      /* substring of the error */
} bad_case;

static void spoil(qf_op_spec *ops, int which)
{
    static const float nan_bias[3] = {0.0f, NAN, 0.0f}, negative_scale[3] = {0.5f, -1.0f, 0.5f};
    static const int64_t big_offset[3] = {0, ((int64_t)1 << 62) + 1, 0};
    switch (which) {
    case 0: ops[0].src = 1; break;                                  /* future node */
    case 1: ops[0].weight_shape[1] = 3; break;                      /* channels */
    case 2: ops[0].weight_shape[2] = 9; break;                      /* kernel > padded input */
    case 3: ops[0].stride[0] = 0; break;
    case 4: ops[0].padding[1] = -1; break;
    case 5: ops[1].n_channels = 2; break;
    case 6: ops[1].quant.qmin = 9; break;
    case 7: ops[1].quant.scale = 0.0f; break;
    case 8: ops[1].bias = nan_bias; break;
    case 9: ops[2].shape[0] = 7; break;                             /* reshape size */
    case 10: ops[3].weight_shape[1] = 5; break;                     /* dense fan-in */
    case 11: ops[3].kind = QF_OP_DECODE; break;                     /* decode not last */
    case 12: ops[4].kind = QF_OP_LOOKUP; break;                     /* last not decode */
    case 13: ops[1].lsbs = 63; break;
    case 14: ops[2].kind = QF_OP_ROUND; ops[2].lsbs = 0; break;
    case 15: ops[1].scale = negative_scale; break;
    case 16: ops[2].kind = QF_OP_TRANSPOSE; ops[2].dims[1] = 3; break;
    case 17: ops[2].kind = QF_OP_ADD; ops[2].src2 = 0; break;       /* shapes differ */
    case 18: ops[0].weight = NULL; break;
    case 19: ops[0].pad_code = QF_CIRCUIT_CODE_LIMIT + 1; break;
    case 20: ops[0].kind = 42; break;
    case 21: ops[1].lsbs = 62; break;                   /* lookup input acc 2^62 > int64 */
    case 22: ops[1].offset = big_offset; break;
    }
}

static void test_errors(void)
{
    qf_quantizer in = {0.5f, 0, -3, 3}, mid = {0.5f, 0, 0, 7};
    int32_t wc[3 * 1 * 2 * 2] = {1, -2, 3, 1, 0, 1, 1, 1, -1, -1, 2, 0};
    int32_t wd[2 * 27];
    for (int j = 0; j < 54; j++)
        wd[j] = j % 5 - 2;
    float s3[3] = {0.1f, 0.2f, 0.3f}, s2[2] = {1.0f, 1.0f};
    qf_op_spec good[5] = {
        {.kind = QF_OP_CONV, .name = "conv", .src = 0, .weight = wc,
         .weight_shape = {3, 1, 2, 2}, .stride = {1, 1}, .padding = {0, 0}},
        {.kind = QF_OP_LOOKUP, .name = "lut", .src = 1, .n_channels = 3, .scale = s3,
         .quant = mid},
        {.kind = QF_OP_RESHAPE, .name = "flatten", .src = 2, .shape = {27, 1, 1}},
        {.kind = QF_OP_DENSE, .name = "fc", .src = 3, .weight = wd,
         .weight_shape = {2, 27, 1, 1}},
        {.kind = QF_OP_DECODE, .name = "output", .src = 4, .n_channels = 2, .scale = s2},
    };
    int64_t shape[3] = {1, 4, 4};
    char err[256];
    qf_circuit *c = NULL;
    CHECK(qf_circuit_create(&c, &in, shape, good, 5, err, 256) == QF_OK && c, "valid: %s", err);
    qf_circuit_free(c);
    bad_case cases[] = {
        {"future node", 0, QF_ERR_ARG, "op 0 (conv): CONV reads node 1"},
        {"channels", 0, QF_ERR_SHAPE, "input channels"},
        {"kernel too large", 0, QF_ERR_SHAPE, "larger than the padded input (4, 4)"},
        {"stride 0", 0, QF_ERR_ARG, "stride must be >= 1"},
        {"negative padding", 0, QF_ERR_ARG, "padding must be >= 0"},
        {"channel count", 1, QF_ERR_SHAPE, "per channel"},
        {"qmin > qmax", 1, QF_ERR_ARG, "qmin 9 must not exceed qmax 7"},
        {"zero scale", 1, QF_ERR_ARG, "output quantizer: scale"},
        {"NaN bias", 1, QF_ERR_NONFINITE, "bias[1]"},
        {"reshape size", 2, QF_ERR_SHAPE, "cannot reshape 27 values"},
        {"dense fan-in", 3, QF_ERR_SHAPE, "op 3 (fc): weight must have shape"},
        {"decode early", 3, QF_ERR_ARG, "DECODE may only be the last op"},
        {"no decode", 4, QF_ERR_ARG, "the last op must be DECODE"},
        {"lsbs 63", 1, QF_ERR_ARG, "lsbs"},
        {"round 0", 2, QF_ERR_ARG, "lsbs must lie in [1, 62]"},
        {"negative scale", 1, QF_ERR_ARG, "scale[1]"},
        {"transpose axis", 2, QF_ERR_ARG, "dims must be axes"},
        {"add shapes", 2, QF_ERR_SHAPE, "ADD needs one shape"},
        {"no weights", 0, QF_ERR_ARG, "weight codes are missing"},
        {"pad code", 0, QF_ERR_ARG, "pad_code"},
        {"kind", 0, QF_ERR_ARG, "unknown op kind 42"},
        {"overflow", 1, QF_ERR_OVERFLOW, "op 1 (lut): its values could exceed 2^62"},
        {"offset", 1, QF_ERR_OVERFLOW, "offset[1]"},
    };
    int n_cases = (int)(sizeof cases / sizeof cases[0]);
    for (int k = 0; k < n_cases; k++) {
        qf_op_spec ops[5];
        memcpy(ops, good, sizeof ops);
        spoil(ops, k);
        qf_circuit *bad = (qf_circuit *)&err;   /* must be reset to NULL on failure */
        qf_status st = qf_circuit_create(&bad, &in, shape, ops, 5, err, 256);
        CHECK(st == cases[k].status && bad == NULL && strstr(err, cases[k].message),
              "%s: status %d, error \"%s\"", cases[k].what, (int)st, err);
    }
    qf_quantizer bad_in = {0.0f, 0, -3, 3};
    int64_t bad_shape[3] = {1, 0, 4};
    CHECK(qf_circuit_create(&c, &bad_in, shape, good, 5, err, 256) == QF_ERR_ARG && !c &&
          strstr(err, "input quantizer"), "zero input scale: %s", err);
    CHECK(qf_circuit_create(&c, &in, bad_shape, good, 5, err, 256) == QF_ERR_ARG && !c &&
          strstr(err, "input shape"), "empty input shape: %s", err);
    CHECK(qf_circuit_create(&c, &in, shape, good, 0, err, 256) == QF_ERR_ARG && !c, "no ops");

    /* runtime errors */
    CHECK(qf_circuit_create(&c, &in, shape, good, 5, err, 256) == QF_OK, "valid: %s", err);
    float x[3 * 16] = {0}, y[3 * 2];
    int64_t codes[3 * 16] = {0};
    x[16 + 5] = NAN;
    x[32 + 1] = INFINITY;
    codes[16 + 3] = 4;
    codes[32] = -5;
    for (int e = 0; e < 2; e++) {
        CHECK(run_with(c, ENGINES[e], 1, y, NULL, NULL, NULL, x, 3, err) == QF_ERR_NONFINITE &&
              strstr(err, "row 1"), "NaN input: %s", err);
        CHECK(run_with(c, ENGINES[e], 2, y, NULL, NULL, codes, NULL, 3, err) == QF_ERR_ARG &&
              strstr(err, "code 4 at row 1, column 3"), "code outside range: %s", err);
    }
    qf_circuit_run_opts bad_opts[3] = {{5, 1}, {QF_CIRCUIT_ENGINE_AUTO, -1},
                                       {QF_CIRCUIT_ENGINE_AUTO, QF_CIRCUIT_MAX_THREADS + 1}};
    int64_t *ws = malloc(sizeof(int64_t) * (size_t)qf_circuit_workspace_len(c, 1));
    for (int k = 0; k < 3; k++)
        CHECK(qf_circuit_run_codes(c, y, NULL, NULL, codes, 1, &bad_opts[k], ws, err, 256) ==
              QF_ERR_ARG && strstr(err, k ? "n_threads" : "engine"), "options %d: %s", k, err);
    free(ws);
    qf_circuit_free(c);
    qf_circuit_free(NULL);
}

/* ---- exact integers near the limits ---- */

static void test_overflow(void)
{
    char err[256];
    qf_quantizer in = {1.0f, 0, 0, QF_CIRCUIT_CODE_LIMIT};
    int64_t one[3] = {1, 1, 1};
    float s1[1] = {1.0f};
    qf_circuit *c;
    /* one weight INT32_MAX times the largest code: exact */
    int32_t w[1] = {INT32_MAX};
    qf_op_spec ops[2] = {
        {.kind = QF_OP_DENSE, .name = "huge", .src = 0, .weight = w, .weight_shape = {1, 1, 1, 1}},
        {.kind = QF_OP_DECODE, .name = "output", .src = 1, .n_channels = 1, .scale = s1},
    };
    CHECK(qf_circuit_create(&c, &in, one, ops, 2, err, 256) == QF_OK, "one huge weight: %s", err);
    if (c) {
        int64_t code = QF_CIRCUIT_CODE_LIMIT, got;
        qf_range r[2];
        qf_range_reset(r, 2);
        float y;
        CHECK(!qf_circuit_float_exact(c), "huge products are not float-exact");
        run_with(c, QF_CIRCUIT_ENGINE_AUTO, 1, &y, &got, r, &code, NULL, 1, err);
        CHECK(r[1].max == (int64_t)INT32_MAX * QF_CIRCUIT_CODE_LIMIT && got == r[1].max,
              "exact product %lld", (long long)r[1].max);
        CHECK(qf_circuit_node(c, 1)->static_max == r[1].max, "static max");
        qf_circuit_free(c);
    }
    /* weight zero point INT32_MIN: q_w - Z_w needs 33 bits, exact in int64 */
    ops[0].weight_zero_point = INT32_MIN;
    CHECK(qf_circuit_create(&c, &in, one, ops, 2, err, 256) == QF_OK, "33-bit weight: %s", err);
    if (c) {
        int64_t code = QF_CIRCUIT_CODE_LIMIT;
        qf_range r[2];
        qf_range_reset(r, 2);
        float y;
        run_with(c, QF_CIRCUIT_ENGINE_AUTO, 2, &y, NULL, r, &code, NULL, 1, err);
        CHECK(r[1].max == ((int64_t)INT32_MAX - INT32_MIN) * QF_CIRCUIT_CODE_LIMIT,
              "exact 33-bit product %lld", (long long)r[1].max);
        qf_circuit_free(c);
    }
    /* 255 such terms stay below 2^62; their sum added to itself does not */
    static int32_t w255[255];
    for (int i = 0; i < 255; i++)
        w255[i] = INT32_MAX;
    int64_t wide[3] = {255, 1, 1};
    qf_op_spec add_ops[3] = {
        {.kind = QF_OP_DENSE, .name = "wide", .src = 0, .weight = w255,
         .weight_shape = {1, 255, 1, 1}},
        {.kind = QF_OP_ADD, .name = "double", .src = 1, .src2 = 1},
        {.kind = QF_OP_DECODE, .name = "output", .src = 2, .n_channels = 1, .scale = s1},
    };
    CHECK(qf_circuit_create(&c, &in, wide, add_ops, 3, err, 256) == QF_ERR_OVERFLOW && !c &&
          strstr(err, "op 1 (double)"), "overflowing add: %s", err);
    add_ops[1] = add_ops[2];
    add_ops[1].src = 1;
    CHECK(qf_circuit_create(&c, &in, wide, add_ops, 2, err, 256) == QF_OK, "wide sum: %s", err);
    qf_circuit_free(c);
    /* a lookup scaling such a sum by 2^2 leaves int64 */
    add_ops[1].lsbs = 2;
    CHECK(qf_circuit_create(&c, &in, wide, add_ops, 2, err, 256) == QF_ERR_OVERFLOW && !c,
          "scaled lookup input: %s", err);
}

int main(void)
{
    test_bits();
    test_against_naive();
    test_tutorial_net();
    test_float_limit();
    test_lookup_sweep();
    test_worst_case();
    test_rounding_rule();
    test_errors();
    test_overflow();
    return CHECK_REPORT();
}
