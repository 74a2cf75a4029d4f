/* test_linear_blocks.c: the register-blocked fully connected kernels
 * (linear.c) bit for bit against plain loops written here from the rules
 * linear.h documents: each float dot product in the eight-lane order (lane j
 * sums the terms i = j mod 8 in ascending i, the lanes are added as
 * ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7))), input gradients summed
 * over outputs in ascending order, weight and bias gradients added sample
 * after sample onto what the buffers held, integer-code products exact.
 * Shapes sweep every block remainder; a sample's outputs must not depend on
 * the batch it comes in. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "helpers.h"
#include "linear.h"
#include "quant.h"
#include "rng.h"

enum { MAX_N = 9, MAX_IN = 41, MAX_OUT = 13 };

/* Values in [-1, 1], a quarter of them exactly 0 (as ReLU outputs and pruned
 * weights are). */
static void fill(float *v, int64_t n, qf_rng *rng)
{
    for (int64_t i = 0; i < n; i++)
        v[i] = qf_rng_below(rng, 4) == 0 ? 0.0f : uniform(rng, -1.0f, 1.0f);
}

static void test_forward(void)
{
    qf_rng rng;
    qf_rng_seed(&rng, 606, 0);
    static float x[MAX_N * MAX_IN], w[MAX_OUT * MAX_IN], b[MAX_OUT];
    static float out[MAX_N * MAX_OUT], want[MAX_N * MAX_OUT], one[MAX_OUT];
    int bad = 0, bad_alone = 0, cases = 0;
    for (int n = 1; n <= MAX_N; n++)
        for (int n_in = 1; n_in <= MAX_IN; n_in += (n_in < 18 ? 1 : 7))
            for (int n_out = 1; n_out <= MAX_OUT; n_out++)
                for (int with_bias = 0; with_bias < 2; with_bias++) {
                    fill(x, n * n_in, &rng);
                    fill(w, n_out * n_in, &rng);
                    fill(b, n_out, &rng);
                    const float *bias = with_bias ? b : NULL;
                    for (int s = 0; s < n; s++)
                        for (int o = 0; o < n_out; o++) {
                            float d = ref_dot(x + s * n_in, w + o * n_in, n_in);
                            want[s * n_out + o] = bias ? d + bias[o] : d;
                        }
                    qf_linear_forward(out, x, w, bias, n, n_in, n_out);
                    bad += !same_bits(out, want, n * n_out);
                    for (int s = 0; s < n; s++) {   /* each sample alone */
                        qf_linear_forward(one, x + s * n_in, w, bias, 1, n_in, n_out);
                        bad_alone += !same_bits(one, out + s * n_out, n_out);
                    }
                    cases++;
                }
    CHECK(bad == 0, "qf_linear_forward differs from the eight-lane order in %d of %d shapes",
          bad, cases);
    CHECK(bad_alone == 0, "a sample's outputs depend on its batch in %d cases", bad_alone);
}

/* Integer codes: exact sums (float path below 2^24, double beyond), then the epilogue. */
static void test_forward_codes(void)
{
    qf_rng rng;
    qf_rng_seed(&rng, 607, 0);
    static float x[MAX_N * MAX_IN], w[MAX_OUT * MAX_IN], wt[MAX_IN * MAX_OUT], b[MAX_OUT];
    static float scale[MAX_OUT], out[MAX_N * MAX_OUT], out_t[MAX_N * MAX_OUT];
    static float want[MAX_N * MAX_OUT];
    int bad = 0, bad_t = 0, bad_big = 0, cases = 0;
    for (int n = 1; n <= MAX_N; n += 2)
        for (int n_in = 1; n_in <= MAX_IN; n_in += 3)
            for (int n_out = 1; n_out <= MAX_OUT; n_out++) {
                for (int j = 0; j < n * n_in; j++)
                    x[j] = (float)((int)qf_rng_below(&rng, 8) - 1) * (j % 3 == 0 ? 0.0f : 1.0f);
                for (int j = 0; j < n_out * n_in; j++)
                    w[j] = (float)((int)qf_rng_below(&rng, 7) - 3);
                for (int o = 0; o < n_out; o++) {
                    b[o] = uniform(&rng, -1.0f, 1.0f);
                    scale[o] = uniform(&rng, 0.01f, 0.5f);
                }
                for (int i = 0; i < n_in; i++)
                    for (int o = 0; o < n_out; o++)
                        wt[i * n_out + o] = w[o * n_in + i];
                for (int s = 0; s < n; s++)
                    for (int o = 0; o < n_out; o++) {
                        int64_t acc = 0;
                        for (int i = 0; i < n_in; i++)
                            acc += (int64_t)x[s * n_in + i] * (int64_t)w[o * n_in + i];
                        want[s * n_out + o] = qf_affine_epilogue(acc, scale[o], b[o]);
                    }
                qf_linear_forward_codes(out, x, w, scale, b, 1, n, n_in, n_out);
                qf_linear_forward_codes_t(out_t, x, wt, scale, b, n, n_in, n_out);
                bad += !same_bits(out, want, n * n_out);
                bad_t += !same_bits(out_t, want, n * n_out);
                cases++;
            }
    /* codes whose sums pass 2^24: the double path, still exact */
    for (int j = 0; j < 2 * MAX_IN; j++) x[j] = j % 2 ? 32767.0f : -32768.0f;
    for (int j = 0; j < 3 * MAX_IN; j++) w[j] = j % 3 ? 32767.0f : -32767.0f;
    for (int o = 0; o < 3; o++) { b[o] = 0.0f; scale[o] = 1.0f; }
    qf_linear_forward_codes(out, x, w, scale, b, 0, 2, MAX_IN, 3);
    for (int s = 0; s < 2; s++)
        for (int o = 0; o < 3; o++) {
            int64_t acc = 0;
            for (int i = 0; i < MAX_IN; i++)
                acc += (int64_t)x[s * MAX_IN + i] * (int64_t)w[o * MAX_IN + i];
            bad_big += out[s * 3 + o] != qf_affine_epilogue(acc, 1.0f, 0.0f);
        }
    CHECK(bad == 0, "qf_linear_forward_codes differs from the exact sums in %d of %d shapes",
          bad, cases);
    CHECK(bad_t == 0, "qf_linear_forward_codes_t differs from the exact sums in %d of %d shapes",
          bad_t, cases);
    CHECK(bad_big == 0, "sums beyond 2^24: %d outputs inexact", bad_big);
}

static void test_backward(void)
{
    qf_rng rng;
    qf_rng_seed(&rng, 608, 0);
    static float x[MAX_N * MAX_IN], w[MAX_OUT * MAX_IN], dout[MAX_N * MAX_OUT];
    static float dx[MAX_N * MAX_IN], dw[MAX_OUT * MAX_IN], db[MAX_OUT];
    static float want_dx[MAX_N * MAX_IN], want_dw[MAX_OUT * MAX_IN], want_db[MAX_OUT];
    int bad_dx = 0, bad_dw = 0, bad_db = 0, cases = 0;
    for (int n = 1; n <= MAX_N; n++)
        for (int n_in = 1; n_in <= MAX_IN; n_in += (n_in < 18 ? 1 : 7))
            for (int n_out = 1; n_out <= MAX_OUT; n_out += 2) {
                fill(x, n * n_in, &rng);
                fill(w, n_out * n_in, &rng);
                fill(dout, n * n_out, &rng);
                fill(dw, n_out * n_in, &rng);   /* gradients accumulate onto these */
                fill(db, n_out, &rng);
                memcpy(want_dw, dw, sizeof(float) * (size_t)(n_out * n_in));
                memcpy(want_db, db, sizeof(float) * (size_t)n_out);
                for (int s = 0; s < n; s++)
                    for (int i = 0; i < n_in; i++) {
                        float acc = 0.0f;
                        for (int o = 0; o < n_out; o++)
                            acc += dout[s * n_out + o] * w[o * n_in + i];
                        want_dx[s * n_in + i] = acc;
                    }
                for (int s = 0; s < n; s++)
                    for (int o = 0; o < n_out; o++) {
                        for (int i = 0; i < n_in; i++)
                            want_dw[o * n_in + i] += dout[s * n_out + o] * x[s * n_in + i];
                        want_db[o] += dout[s * n_out + o];
                    }
                qf_linear_backward(dx, dw, db, dout, x, w, n, n_in, n_out);
                bad_dx += !same_bits(dx, want_dx, n * n_in);
                bad_dw += !same_bits(dw, want_dw, n_out * n_in);
                bad_db += !same_bits(db, want_db, n_out);
                cases++;
            }
    CHECK(bad_dx == 0, "dx differs from the ascending-output sums in %d of %d shapes", bad_dx,
          cases);
    CHECK(bad_dw == 0, "dw differs from the sample-by-sample sums in %d of %d shapes", bad_dw,
          cases);
    CHECK(bad_db == 0, "db differs from the sample-by-sample sums in %d of %d shapes", bad_db,
          cases);
}

/* Batches and layers wider than the kernels' internal lists (256 rows). */
static void test_backward_large(void)
{
    enum { LN = 261, LIN = 37, LOUT = 259 };
    qf_rng rng;
    qf_rng_seed(&rng, 609, 0);
    float *x = malloc(sizeof(float) * LN * LIN), *w = malloc(sizeof(float) * LOUT * LIN);
    float *dout = malloc(sizeof(float) * LN * LOUT), *dx = malloc(sizeof(float) * LN * LIN);
    float *dw = malloc(sizeof(float) * LOUT * LIN), *want_dx = malloc(sizeof(float) * LN * LIN);
    float *want_dw = malloc(sizeof(float) * LOUT * LIN);
    if (!x || !w || !dout || !dx || !dw || !want_dx || !want_dw) {
        CHECK(0, "out of memory");
        goto done;
    }
    fill(x, LN * LIN, &rng);
    fill(w, LOUT * LIN, &rng);
    fill(dout, LN * LOUT, &rng);
    fill(dw, LOUT * LIN, &rng);
    memcpy(want_dw, dw, sizeof(float) * LOUT * LIN);
    for (int s = 0; s < LN; s++)
        for (int i = 0; i < LIN; i++) {
            float acc = 0.0f;
            for (int o = 0; o < LOUT; o++)
                acc += dout[s * LOUT + o] * w[o * LIN + i];
            want_dx[s * LIN + i] = acc;
        }
    for (int s = 0; s < LN; s++)
        for (int o = 0; o < LOUT; o++)
            for (int i = 0; i < LIN; i++)
                want_dw[o * LIN + i] += dout[s * LOUT + o] * x[s * LIN + i];
    qf_linear_backward(dx, dw, NULL, dout, x, w, LN, LIN, LOUT);
    CHECK(same_bits(dx, want_dx, LN * LIN), "large dx differs from the ascending-output sums");
    CHECK(same_bits(dw, want_dw, LOUT * LIN), "large dw differs from the sample-by-sample sums");
done:
    free(x); free(w); free(dout); free(dx); free(dw); free(want_dx); free(want_dw);
}

int main(void)
{
    test_forward();
    test_forward_codes();
    test_backward();
    test_backward_large();
    return CHECK_REPORT();
}
