/* test_circuit.c: the integer circuit against a naive computation written
 * from the formulas of REFERENCE.md sections 5 and 6, its worst-case bounds
 * against brute force over every input code, the bits formula on its edge
 * cases, and its refusal of bad specs and overflowing circuits. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "check.h"
#include "../bitwidth.h"
#include "../circuit.h"
#include "../rng.h"

#define NO_QUANT {0.0f, 0, 0, 0}

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

/* ---- a random three-stage circuit and its naive twin ---- */

#define N_IN 3
#define N_H1 5
#define N_H2 4
#define N_OUT 2

typedef struct {
    qf_quantizer input, q1, q2;
    int32_t w0[N_H1 * N_IN], w1[N_H2 * N_H1], w2[N_OUT * N_H2];
    int32_t zw[3];
    float sw[3];
    float b0[N_H1], b1[N_H2], b2[N_OUT];
    int lsbs[3];
} net3;

static void make_net3(net3 *n, qf_rng *rng, int with_rounding)
{
    /* asymmetric unsigned input, ReLU + unsigned codes, then signed codes */
    n->input = (qf_quantizer){0.0625f, 7, 0, 15};
    n->q1 = (qf_quantizer){0.5f, 0, 0, 7};
    n->q2 = (qf_quantizer){0.25f, -1, -8, 7};
    int32_t *ws[3] = {n->w0, n->w1, n->w2};
    int sizes[3] = {N_H1 * N_IN, N_H2 * N_H1, N_OUT * N_H2};
    for (int k = 0; k < 3; k++)
        for (int j = 0; j < sizes[k]; j++)
            ws[k][j] = (int32_t)qf_rng_below(rng, 15) - 7;
    n->zw[0] = 0; n->zw[1] = 1; n->zw[2] = -2;
    n->sw[0] = 0.125f; n->sw[1] = 0.2f; n->sw[2] = 0.3f;
    qf_rng_fill_uniform(rng, n->b0, N_H1, -1.0f, 1.0f);
    qf_rng_fill_uniform(rng, n->b1, N_H2, -1.0f, 1.0f);
    qf_rng_fill_uniform(rng, n->b2, N_OUT, -1.0f, 1.0f);
    n->lsbs[0] = 0;
    n->lsbs[1] = with_rounding ? 2 : 0;
    n->lsbs[2] = with_rounding ? 1 : 0;
}

static qf_status build_net3(qf_circuit **c, const net3 *n, char *err)
{
    qf_stage_spec st[3] = {
        {"fc1", N_IN, N_H1, n->w0, n->zw[0], n->sw[0], n->b0, n->lsbs[0], 1, 1, n->q1},
        {"fc2", N_H1, N_H2, n->w1, n->zw[1], n->sw[1], n->b1, n->lsbs[1], 0, 1, n->q2},
        {"fc3", N_H2, N_OUT, n->w2, n->zw[2], n->sw[2], n->b2, n->lsbs[2], 0, 0, NO_QUANT},
    };
    return qf_circuit_create(c, &n->input, st, 3, err, 256);
}

static int64_t naive_quantize(float x, const qf_quantizer *q)
{
    float r = rintf(x / q->scale);
    float lo = (float)(q->qmin - q->zero_point), hi = (float)(q->qmax - q->zero_point);
    r = r < lo ? lo : (r > hi ? hi : r);
    return (int64_t)r + q->zero_point;
}

/* One naive layer: textbook sum (q_x - Z_x)(q_w - Z_w), the encrypted part
 * sum q_x q_w - Z_w sum q_x for the ranges, rounding by floor in double. */
static void naive_layer(float *y, int64_t *acc, const int64_t *qx, const qf_quantizer *in_q,
                        const int32_t *w, int32_t zw, float sw, const float *b, int lsbs,
                        int n_in, int n_out)
{
    for (int o = 0; o < n_out; o++) {
        int64_t full = 0, mixed = 0, sum_x = 0, sum_w = 0;
        for (int i = 0; i < n_in; i++) {
            full += (qx[i] - in_q->zero_point) * (int64_t)(w[o * n_in + i] - zw);
            mixed += qx[i] * (int64_t)w[o * n_in + i];
            sum_x += qx[i];
            sum_w += w[o * n_in + i];
        }
        acc[o] = mixed - zw * sum_x;
        int64_t corr = 0;
        if (lsbs > 0) {
            double d = ldexp(1.0, lsbs);
            int64_t rounded = (int64_t)(floor(((double)acc[o] + d / 2) / d) * d);
            corr = rounded - acc[o];
        }
        (void)sum_w;
        float scale = in_q->scale * sw;
        float a = (float)(full + corr);
        y[o] = a * scale + b[o];
    }
}

static void naive_net3(float *out, int64_t *final_int, qf_range *nodes, const net3 *n,
                       const int64_t *q0)
{
    int64_t acc0[N_H1], acc1[N_H2], acc2[N_OUT], q1[N_H1], q2[N_H2];
    float y0[N_H1], y1[N_H2];
    for (int i = 0; i < N_IN; i++) qf_range_update(&nodes[0], q0[i]);
    naive_layer(y0, acc0, q0, &n->input, n->w0, n->zw[0], n->sw[0], n->b0, n->lsbs[0], N_IN, N_H1);
    for (int o = 0; o < N_H1; o++) {
        q1[o] = naive_quantize(y0[o] > 0.0f ? y0[o] : 0.0f, &n->q1);
        qf_range_update(&nodes[1], acc0[o]);
        qf_range_update(&nodes[2], q1[o]);
    }
    naive_layer(y1, acc1, q1, &n->q1, n->w1, n->zw[1], n->sw[1], n->b1, n->lsbs[1], N_H1, N_H2);
    for (int o = 0; o < N_H2; o++) {
        q2[o] = naive_quantize(y1[o], &n->q2);
        qf_range_update(&nodes[3], acc1[o]);
        qf_range_update(&nodes[4], q2[o]);
    }
    naive_layer(out, acc2, q2, &n->q2, n->w2, n->zw[2], n->sw[2], n->b2, n->lsbs[2], N_H2, N_OUT);
    for (int o = 0; o < N_OUT; o++) {
        qf_range_update(&nodes[5], acc2[o]);
        double d = ldexp(1.0, n->lsbs[2]);
        final_int[o] = n->lsbs[2] ? (int64_t)(floor(((double)acc2[o] + d / 2) / d) * d) : acc2[o];
    }
}

static void test_against_naive(void)
{
    qf_rng rng;
    qf_rng_seed(&rng, 11, 0);
    net3 n;
    make_net3(&n, &rng, 0);
    char err[256];
    qf_circuit *c;
    qf_status st = build_net3(&c, &n, err);
    CHECK(st == QF_OK, "create: %s", err);
    if (st != QF_OK)
        return;
    CHECK(qf_circuit_n_nodes(c) == 6, "nodes %d", qf_circuit_n_nodes(c));
    CHECK(qf_circuit_in_features(c) == N_IN && qf_circuit_out_features(c) == N_OUT, "sizes");
    enum { N = 2000 };
    static float x[N * N_IN], out[N * N_OUT];
    static int64_t codes[N * N_IN], out_int[N * N_OUT];
    qf_rng_fill_uniform(&rng, x, N * N_IN, -0.7f, 0.8f);   /* beyond the input range too */
    int64_t ws[64];
    CHECK(qf_circuit_workspace_len(c) <= 64, "workspace %lld",
          (long long)qf_circuit_workspace_len(c));
    qf_range ranges[6], want[6];
    qf_range_reset(ranges, 6);
    qf_range_reset(want, 6);
    st = qf_circuit_run(c, out, out_int, ranges, x, N, ws, err, 256);
    CHECK(st == QF_OK, "run: %s", err);
    st = qf_circuit_quantize_input(c, codes, x, N, err, 256);
    CHECK(st == QF_OK, "quantize_input: %s", err);
    int mismatches = 0, code_mismatches = 0, int_mismatches = 0;
    for (int r = 0; r < N; r++) {
        int64_t q0[N_IN];
        for (int i = 0; i < N_IN; i++) {
            q0[i] = naive_quantize(x[r * N_IN + i], &n.input);
            code_mismatches += q0[i] != codes[r * N_IN + i];
        }
        float y[N_OUT];
        int64_t yi[N_OUT];
        naive_net3(y, yi, want, &n, q0);
        for (int o = 0; o < N_OUT; o++) {
            mismatches += memcmp(&y[o], &out[r * N_OUT + o], sizeof(float)) != 0;
            int_mismatches += yi[o] != out_int[r * N_OUT + o];
        }
    }
    CHECK(mismatches == 0, "%d outputs differ from the naive computation", mismatches);
    CHECK(int_mismatches == 0, "%d returned integers differ", int_mismatches);
    CHECK(code_mismatches == 0, "%d input codes differ", code_mismatches);
    for (int j = 0; j < 6; j++)
        CHECK(ranges[j].min == want[j].min && ranges[j].max == want[j].max,
              "node %d range [%lld, %lld], naive [%lld, %lld]", j, (long long)ranges[j].min,
              (long long)ranges[j].max, (long long)want[j].min, (long long)want[j].max);
    /* run_codes on the same codes gives the same outputs */
    static float out2[N * N_OUT];
    st = qf_circuit_run_codes(c, out2, NULL, NULL, codes, N, ws, err, 256);
    CHECK(st == QF_OK && memcmp(out, out2, sizeof out) == 0, "run_codes differs from run");
    qf_circuit_free(c);
}

static void test_rounding_against_naive(void)
{
    qf_rng rng;
    qf_rng_seed(&rng, 12, 0);
    net3 n;
    make_net3(&n, &rng, 1);
    char err[256];
    qf_circuit *c;
    qf_status st = build_net3(&c, &n, err);
    CHECK(st == QF_OK, "create: %s", err);
    if (st != QF_OK)
        return;
    /* input, acc1, lut1, acc2, rnd2, lut2, acc3, rnd3 */
    CHECK(qf_circuit_n_nodes(c) == 8, "nodes %d", qf_circuit_n_nodes(c));
    CHECK(qf_circuit_node(c, 4)->kind == QF_NODE_ROUNDED && qf_circuit_node(c, 4)->stage == 1,
          "node 4 is the rounded accumulator of stage 1");
    enum { N = 2000 };
    static float x[N * N_IN], out[N * N_OUT];
    static int64_t out_int[N * N_OUT];
    qf_rng_fill_uniform(&rng, x, N * N_IN, -0.5f, 0.6f);
    int64_t ws[64];
    st = qf_circuit_run(c, out, out_int, NULL, x, N, ws, err, 256);
    CHECK(st == QF_OK, "run: %s", err);
    int mismatches = 0;
    qf_range dummy[6];
    qf_range_reset(dummy, 6);
    for (int r = 0; r < N; r++) {
        int64_t q0[N_IN];
        for (int i = 0; i < N_IN; i++)
            q0[i] = naive_quantize(x[r * N_IN + i], &n.input);
        float y[N_OUT];
        int64_t yi[N_OUT];
        naive_net3(y, yi, dummy, &n, q0);
        for (int o = 0; o < N_OUT; o++) {
            mismatches += memcmp(&y[o], &out[r * N_OUT + o], sizeof(float)) != 0;
            mismatches += yi[o] != out_int[r * N_OUT + o];
        }
    }
    CHECK(mismatches == 0, "%d rounded outputs differ from the naive computation", mismatches);
    qf_circuit_free(c);
}

/* A one-weight circuit shows the rounding rule on single values. */
static void test_rounding_rule(void)
{
    qf_quantizer in = {1.0f, 0, -64, 64};
    int32_t w = 1;
    char err[256];
    for (int l = 1; l <= 3; l++) {
        qf_stage_spec st = {"id", 1, 1, &w, 0, 1.0f, NULL, l, 0, 0, NO_QUANT};
        qf_circuit *c;
        if (qf_circuit_create(&c, &in, &st, 1, err, 256) != QF_OK) {
            CHECK(0, "create: %s", err);
            return;
        }
        int64_t ws[4];
        for (int64_t v = -64; v <= 64; v++) {
            qf_range r[3];
            qf_range_reset(r, 3);
            float y;
            qf_circuit_run_codes(c, &y, NULL, r, &v, 1, ws, err, 256);
            double d = ldexp(1.0, l);
            double want = floor((double)v / d + 0.5);   /* round half up */
            CHECK(r[2].min == (int64_t)want, "round(%lld, %d lsbs) = %lld, want %g",
                  (long long)v, l, (long long)r[2].min, want);
            CHECK(y == (float)(want * d), "lookup input %g, want %g", (double)y, want * d);
        }
        qf_circuit_free(c);
    }
}

/* Static bounds: exact for the first stage (brute force over all input codes)
 * and never below anything reachable for the others. */
static void test_worst_case(void)
{
    for (int rounding = 0; rounding <= 1; rounding++) {
        qf_rng rng;
        qf_rng_seed(&rng, 13 + rounding, 0);
        net3 n;
        make_net3(&n, &rng, rounding);
        char err[256];
        qf_circuit *c;
        if (build_net3(&c, &n, err) != QF_OK) {
            CHECK(0, "create: %s", err);
            return;
        }
        int n_nodes = qf_circuit_n_nodes(c);
        int levels = n.input.qmax - n.input.qmin + 1, total = levels * levels * levels;
        int64_t *codes = malloc(sizeof(int64_t) * total * N_IN);
        float *out = malloc(sizeof(float) * total * N_OUT);
        for (int t = 0; t < total; t++) {
            codes[t * N_IN + 0] = n.input.qmin + t % levels;
            codes[t * N_IN + 1] = n.input.qmin + (t / levels) % levels;
            codes[t * N_IN + 2] = n.input.qmin + t / (levels * levels);
        }
        qf_range r[8];
        qf_range_reset(r, 8);
        int64_t ws[64];
        qf_status st = qf_circuit_run_codes(c, out, NULL, r, codes, total, ws, err, 256);
        CHECK(st == QF_OK, "run_codes: %s", err);
        for (int j = 0; j < n_nodes; j++) {
            const qf_node_info *nd = qf_circuit_node(c, j);
            CHECK(nd->static_min <= r[j].min && nd->static_max >= r[j].max,
                  "node %d: static [%lld, %lld] misses reached [%lld, %lld]", j,
                  (long long)nd->static_min, (long long)nd->static_max,
                  (long long)r[j].min, (long long)r[j].max);
            if (nd->stage <= 0)
                CHECK(nd->static_min == r[j].min && nd->static_max == r[j].max,
                      "stage-0 node %d: static [%lld, %lld], exact [%lld, %lld]", j,
                      (long long)nd->static_min, (long long)nd->static_max,
                      (long long)r[j].min, (long long)r[j].max);
        }
        /* Independent bound of the first accumulator: sum of per-term extremes. */
        int64_t lo = 0, hi = 0;
        for (int o = 0; o < N_H1; o++) {
            int64_t a = 0, b = 0;
            for (int i = 0; i < N_IN; i++) {
                int64_t wv = n.w0[o * N_IN + i];
                a += wv < 0 ? wv * n.input.qmax : wv * n.input.qmin;
                b += wv < 0 ? wv * n.input.qmin : wv * n.input.qmax;
            }
            if (o == 0 || a < lo) lo = a;
            if (o == 0 || b > hi) hi = b;
        }
        CHECK(qf_circuit_node(c, 1)->static_min == lo && qf_circuit_node(c, 1)->static_max == hi,
              "first accumulator bound [%lld, %lld], per-term sum [%lld, %lld]",
              (long long)qf_circuit_node(c, 1)->static_min,
              (long long)qf_circuit_node(c, 1)->static_max, (long long)lo, (long long)hi);
        free(codes);
        free(out);
        qf_circuit_free(c);
    }
}

static void test_errors(void)
{
    char err[256];
    qf_circuit *c = (qf_circuit *)&err;   /* must be reset to NULL on failure */
    qf_quantizer in = {0.5f, 0, -3, 3}, mid = {0.5f, 0, 0, 7}, bad_in = {0.0f, 0, -3, 3};
    int32_t w[4] = {1, -2, 3, 1};
    float b[2] = {0.0f, NAN};
    qf_stage_spec ok = {"fc", 2, 2, w, 0, 0.25f, NULL, 0, 0, 0, NO_QUANT};
    qf_stage_spec s;

    CHECK(qf_circuit_create(&c, &in, &ok, 0, err, 256) == QF_ERR_ARG && !c, "no stages");
    CHECK(qf_circuit_create(&c, &bad_in, &ok, 1, err, 256) == QF_ERR_ARG && !c &&
          strstr(err, "input quantizer"), "zero input scale: %s", err);
    s = ok; s.weight = NULL;
    CHECK(qf_circuit_create(&c, &in, &s, 1, err, 256) == QF_ERR_ARG && !c, "missing weights");
    s = ok; s.weight_scale = -1.0f;
    CHECK(qf_circuit_create(&c, &in, &s, 1, err, 256) == QF_ERR_ARG && strstr(err, "fc"),
          "negative weight scale: %s", err);
    s = ok; s.bias = b;
    CHECK(qf_circuit_create(&c, &in, &s, 1, err, 256) == QF_ERR_NONFINITE && strstr(err, "bias[1]"),
          "NaN bias: %s", err);
    s = ok; s.relu = 1;
    CHECK(qf_circuit_create(&c, &in, &s, 1, err, 256) == QF_ERR_ARG, "last ReLU without quantizer");
    s = ok; s.lsbs_to_remove = 63;
    CHECK(qf_circuit_create(&c, &in, &s, 1, err, 256) == QF_ERR_ARG, "lsbs 63");
    s = ok; s.in_features = 0;
    CHECK(qf_circuit_create(&c, &in, &s, 1, err, 256) == QF_ERR_ARG, "zero features");
    qf_stage_spec two[2] = {ok, ok};
    CHECK(qf_circuit_create(&c, &in, two, 2, err, 256) == QF_ERR_ARG && strstr(err, "stage 0"),
          "hidden stage without quantizer: %s", err);
    two[0].has_output_quant = 1;
    two[0].output_quant = mid;
    two[1].in_features = 3;
    CHECK(qf_circuit_create(&c, &in, two, 2, err, 256) == QF_ERR_SHAPE, "feature mismatch");
    two[1].in_features = 2;
    two[0].output_quant.qmin = 9;
    CHECK(qf_circuit_create(&c, &in, two, 2, err, 256) == QF_ERR_ARG, "qmin > qmax");
    two[0].output_quant = mid;
    two[0].output_quant.zero_point = QF_CIRCUIT_CODE_LIMIT + 1;
    CHECK(qf_circuit_create(&c, &in, two, 2, err, 256) == QF_ERR_ARG, "zero point too large");
    two[0].output_quant = mid;
    two[0].output_quant.scale = NAN;
    CHECK(qf_circuit_create(&c, &in, two, 2, err, 256) == QF_ERR_ARG, "NaN scale");
    two[0].output_quant = mid;
    CHECK(qf_circuit_create(&c, &in, two, 2, err, 256) == QF_OK && c, "valid two-stage: %s", err);

    /* runtime errors */
    int64_t ws[8];
    float x[2] = {0.1f, NAN}, y[2];
    CHECK(qf_circuit_run(c, y, NULL, NULL, x, 1, ws, err, 256) == QF_ERR_NONFINITE, "NaN input");
    int64_t codes[2] = {0, 4};
    CHECK(qf_circuit_run_codes(c, y, NULL, NULL, codes, 1, ws, err, 256) == QF_ERR_ARG &&
          strstr(err, "column 1"), "code outside range: %s", err);
    qf_circuit_free(c);
    qf_circuit_free(NULL);
}

static void test_overflow(void)
{
    char err[256];
    enum { IN = 1024 };
    static int32_t w[IN];
    for (int i = 0; i < IN; i++)
        w[i] = INT32_MAX;
    qf_quantizer in = {1.0f, 0, 0, QF_CIRCUIT_CODE_LIMIT};
    qf_stage_spec s = {"huge", IN, 1, w, 0, 1.0f, NULL, 0, 0, 0, NO_QUANT};
    qf_circuit *c;
    /* 1024 * (2^31 - 1) * 2^23 > 2^62 */
    CHECK(qf_circuit_create(&c, &in, &s, 1, err, 256) == QF_ERR_OVERFLOW && !c &&
          strstr(err, "huge"), "overflowing accumulator: %s", err);
    s.in_features = 1;
    CHECK(qf_circuit_create(&c, &in, &s, 1, err, 256) == QF_OK, "one huge weight fits: %s", err);
    if (c) {
        int64_t code = QF_CIRCUIT_CODE_LIMIT, ws[4];
        qf_range r[2];
        qf_range_reset(r, 2);
        float y;
        qf_circuit_run_codes(c, &y, NULL, r, &code, 1, ws, err, 256);
        CHECK(r[1].max == (int64_t)INT32_MAX * QF_CIRCUIT_CODE_LIMIT, "exact product %lld",
              (long long)r[1].max);
        CHECK(qf_circuit_node(c, 1)->static_max == r[1].max, "static max");
        qf_circuit_free(c);
    }
    /* weight zero point INT32_MIN: q_w - Z_w needs 33 bits, exact in int64 */
    int32_t w2[1] = {INT32_MAX};
    qf_stage_spec s2 = {"zp", 1, 1, w2, INT32_MIN, 1.0f, NULL, 0, 0, 0, NO_QUANT};
    CHECK(qf_circuit_create(&c, &in, &s2, 1, err, 256) == QF_OK, "33-bit weight: %s", err);
    if (c) {
        int64_t code = QF_CIRCUIT_CODE_LIMIT, ws[4];
        qf_range r[2];
        qf_range_reset(r, 2);
        float y;
        qf_circuit_run_codes(c, &y, NULL, r, &code, 1, ws, err, 256);
        CHECK(r[1].max == ((int64_t)INT32_MAX - INT32_MIN) * QF_CIRCUIT_CODE_LIMIT,
              "exact 33-bit product %lld", (long long)r[1].max);
        qf_circuit_free(c);
    }
    /* a small accumulator whose zero-point correction Z_x sum q_w overflows */
    qf_quantizer in2 = {1.0f, QF_CIRCUIT_CODE_LIMIT, 0, 1};
    s.in_features = IN;
    CHECK(qf_circuit_create(&c, &in2, &s, 1, err, 256) == QF_ERR_OVERFLOW && !c &&
          strstr(err, "zero-point correction"), "offset: %s", err);
}

int main(void)
{
    test_bits();
    test_against_naive();
    test_rounding_against_naive();
    test_rounding_rule();
    test_worst_case();
    test_errors();
    test_overflow();
    return CHECK_REPORT();
}
