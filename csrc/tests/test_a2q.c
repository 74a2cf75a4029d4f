/* test_a2q.c: the A2Q row quantizer (a2q.h) on its own: the integer L1 budget
 * holds for random rows and budgets (so no P-bit accumulator overflows for any
 * input code), codes match trunc(v c / ||v||_1) where no float edge is near,
 * and the backward matches central differences of the smooth part. */
#include <math.h>
#include <stdlib.h>
#include "../a2q.h"
#include "check.h"

static float uniform(unsigned *state, float a, float b)
{
    *state = *state * 1664525u + 1013904223u;
    return a + (b - a) * (float)(*state >> 8) / 16777216.0f;
}

static void budget_holds(void)
{
    unsigned st = 7;
    float v[200], codes[200], fq[200];
    for (int trial = 0; trial < 300; trial++) {
        int n = 1 + trial % 200, bits = 3 + trial % 10, in_bits = 2 + trial % 6;
        int in_signed = trial % 2;
        double T = qf_a2q_budget(bits, in_bits, in_signed);
        for (int i = 0; i < n; i++)
            v[i] = uniform(&st, -2.0f, 2.0f) * (i % 3 == 0 ? 10.0f : 1.0f);
        qf_a2q_row row;
        float s = uniform(&st, 0.01f, 1.0f), g = uniform(&st, 0.0f, 100.0f);
        qf_a2q_forward_row(fq, codes, &row, v, n, s, g, T, -127.0f, 127.0f);
        double l1 = 0.0, max_x = ldexp(1.0, in_bits - in_signed);
        for (int i = 0; i < n; i++)
            l1 += fabs(codes[i]);
        CHECK(l1 <= floor(T), "trial %d: ||q||_1 = %g over the budget %g", trial, l1, T);
        CHECK(l1 * max_x <= ldexp(1.0, bits - 1) - 1.0, "trial %d: accumulator overflows", trial);
        CHECK(fq[0] == s * codes[0], "fq = s q");
    }
}

static void backward_matches_differences(void)
{
    /* with no code changing between v +- h, L = sum dfq_i * s * u_i is smooth in v */
    enum { N = 6 };
    float v[N] = {0.3f, -0.7f, 0.2f, 0.9f, -0.1f, 0.5f};
    float dfq[N] = {0.2f, -0.1f, 0.4f, 0.05f, -0.3f, 0.1f}, codes[N], dv[N] = {0};
    float s = 0.25f, g = 0.6f;
    double T = 100.0, dg;
    qf_a2q_row row;
    qf_a2q_forward_row(NULL, codes, &row, v, N, s, g, T, -7.0f, 7.0f);
    qf_a2q_backward_row(dv, &dg, dfq, v, codes, N, s, g, &row);
    for (int j = 0; j < N; j++) {
        double h = 1e-3, lp = 0.0, lm = 0.0, l1p = 0.0, l1m = 0.0;
        for (int i = 0; i < N; i++) {
            double vi = v[i] + (i == j ? h : 0.0), wi = v[i] - (i == j ? h : 0.0);
            l1p += fabs(vi);
            l1m += fabs(wi);
        }
        for (int i = 0; i < N; i++) {
            lp += dfq[i] * s * (v[i] + (i == j ? h : 0.0)) * (g / s) / l1p;
            lm += dfq[i] * s * (v[i] - (i == j ? h : 0.0)) * (g / s) / l1m;
        }
        CHECK_CLOSE(dv[j], (lp - lm) / (2 * h), 1e-3, 1e-5);
    }
}

int main(void)
{
    budget_holds();
    backward_matches_differences();
    return CHECK_REPORT();
}
