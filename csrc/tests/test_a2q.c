/* test_a2q.c: the A2Q row quantizer (a2q.h) on its own: the integer L1 budget
 * holds for random rows and budgets (so no P-bit accumulator overflows for any
 * input code), codes match trunc(v c / ||v||_1) where no float edge is near, rounded
 * codes (b.round) keep every bound and equal rint(k v) on a free row,
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

/* The worst accumulator over every input code vector: the box's corners, code by
 * code (each term q_i x_i is extreme at an end of [lo, hi]); 1 if it fits P bits. */
static int fits(const float *codes, int n, int bits, double lo, double hi)
{
    double top = 0.0, bottom = 0.0;
    for (int i = 0; i < n; i++) {
        top += codes[i] > 0 ? codes[i] * hi : codes[i] * lo;
        bottom += codes[i] > 0 ? codes[i] * lo : codes[i] * hi;
    }
    return top <= ldexp(1.0, bits - 1) - 1.0 && bottom >= -ldexp(1.0, bits - 1);
}

static void split_budget_holds(void)
{
    /* split bound, unsigned inputs [0, 2^N - 1]: no overflow, and a balanced row
     * can carry more L1 mass than T */
    unsigned st = 11;
    float v[200], codes[200];
    int wider = 0;
    for (int trial = 0; trial < 300; trial++) {
        int n = 1 + trial % 200, bits = 3 + trial % 10, in_bits = 2 + trial % 6;
        qf_a2q_bound b = qf_a2q_bound_of(bits, in_bits, 0, 1, 1.0);
        for (int i = 0; i < n; i++)
            v[i] = uniform(&st, -2.0f, 2.0f) * (i % 3 == 0 ? 10.0f : 1.0f) +
                   (trial % 3 == 0 ? 1.0f : 0.0f);                     /* some unbalanced rows */
        qf_a2q_row row;
        float s = uniform(&st, 0.01f, 1.0f), g = uniform(&st, 0.0f, 100.0f);
        qf_a2q_forward_row(NULL, codes, &row, v, n, s, g, &b, -127.0f, 127.0f);
        double l1 = 0.0;
        for (int i = 0; i < n; i++)
            l1 += fabs(codes[i]);
        CHECK(fits(codes, n, bits, 0.0, ldexp(1.0, in_bits) - 1.0),
              "trial %d: the split bound lets the accumulator overflow", trial);
        wider += l1 > floor(qf_a2q_budget(bits, in_bits, 0));
        /* signed inputs: the split form is the L1 bound */
        qf_a2q_bound sb = qf_a2q_bound_of(bits, in_bits, 1, 1, 1.0);
        CHECK(sb.l1 == qf_a2q_budget(bits, in_bits, 1) && sb.pos == HUGE_VAL, "signed split");
    }
    CHECK(wider > 0, "the split bound never used more than the L1 budget");
}

static void rounded_codes_hold_the_bound(void)
{
    /* b.round: every bound and input sign still proven by the box's corners, a free row's
     * codes are rint(v |g| / (s ||v||_1)), and a capped row cannot take one more unit of
     * its capping sign (rint at a slightly larger multiplier breaks the bound) */
    unsigned st = 23;
    float v[200], codes[200];
    for (int trial = 0; trial < 300; trial++) {
        int n = 1 + trial % 200, bits = 3 + trial % 10, in_bits = 2 + trial % 6;
        int in_signed = trial % 2, split = (trial / 2) % 2;
        qf_a2q_bound b = qf_a2q_bound_of(bits, in_bits, in_signed, split, 1.0);
        b.round = 1;
        for (int i = 0; i < n; i++)
            v[i] = uniform(&st, -2.0f, 2.0f) * (i % 3 == 0 ? 10.0f : 1.0f);
        qf_a2q_row row;
        float s = uniform(&st, 0.01f, 1.0f), g = uniform(&st, 0.0f, 100.0f);
        qf_a2q_forward_row(NULL, codes, &row, v, n, s, g, &b, -127.0f, 127.0f);
        double lo = in_signed ? -ldexp(1.0, in_bits - 1) : 0.0;
        double hi = in_signed ? ldexp(1.0, in_bits - 1) - 1.0 : ldexp(1.0, in_bits) - 1.0;
        CHECK(fits(codes, n, bits, lo, hi), "trial %d: rounded codes overflow %d bits", trial,
              bits);
        if (row.norm_free) {
            int same = 1;
            for (int i = 0; i < n; i++) {
                float want = rintf(v[i] * (float)(row.k * (1.0 + 0x1p-20)));
                same &= codes[i] == (want < -127.0f ? -127.0f : (want > 127.0f ? 127.0f : want));
            }
            CHECK(same, "trial %d: a free row's codes are not rint(k v)", trial);
        }
    }
    /* a free row at a generous budget: the plain quantizer's codes rint(v / s) */
    qf_a2q_bound b = qf_a2q_bound_of(20, 3, 0, 1, 1.0);
    b.round = 1;
    float w[4] = {0.26f, -0.74f, 0.05f, 1.49f}, q[4];
    qf_a2q_row row;
    qf_a2q_forward_row(NULL, q, &row, w, 4, 0.5f, 2.54f, &b, -7.0f, 7.0f);
    CHECK(q[0] == 1.0f && q[1] == -1.0f && q[2] == 0.0f && q[3] == 3.0f,
          "rounded codes %g %g %g %g, want 1 -1 0 3", q[0], q[1], q[2], q[3]);
}

static void budget_holds(void)
{
    unsigned st = 7;
    float v[200], codes[200], fq[200];
    for (int trial = 0; trial < 300; trial++) {
        int n = 1 + trial % 200, bits = 3 + trial % 10, in_bits = 2 + trial % 6;
        int in_signed = trial % 2;
        double T = qf_a2q_budget(bits, in_bits, in_signed);
        qf_a2q_bound b = qf_a2q_bound_of(bits, in_bits, in_signed, 0, 1.0);
        for (int i = 0; i < n; i++)
            v[i] = uniform(&st, -2.0f, 2.0f) * (i % 3 == 0 ? 10.0f : 1.0f);
        qf_a2q_row row;
        float s = uniform(&st, 0.01f, 1.0f), g = uniform(&st, 0.0f, 100.0f);
        qf_a2q_forward_row(fq, codes, &row, v, n, s, g, &b, -127.0f, 127.0f);
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
    double dg;
    qf_a2q_bound b = {100.0, HUGE_VAL, HUGE_VAL, 0, 0};
    qf_a2q_row row;
    qf_a2q_forward_row(NULL, codes, &row, v, N, s, g, &b, -7.0f, 7.0f);
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

/* L(v) = sum dfq_i s v_i k(v), k = min(|g| / (s ||v||_1), pos / ||v+||_1, neg / ||v-||_1) */
static double split_loss(const double *v, const float *dfq, int n, double s, double g,
                         const qf_a2q_bound *b)
{
    double l1 = 0.0, pos = 0.0, loss = 0.0;
    for (int i = 0; i < n; i++) {
        l1 += fabs(v[i]);
        pos += v[i] > 0.0 ? v[i] : 0.0;
    }
    double k = fmin(g / (s * l1), fmin(b->pos / pos, b->neg / (l1 - pos)));
    for (int i = 0; i < n; i++)
        loss += dfq[i] * s * v[i] * k;
    return loss;
}

static void split_backward_matches_differences(void)
{
    /* rows capped by their positive part, by their negative part, and free */
    enum { N = 6 };
    float rows[3][N] = {{0.9f, -0.1f, 0.6f, 0.8f, -0.2f, 0.5f},
                        {-0.9f, 0.1f, -0.6f, -0.8f, 0.2f, -0.5f},
                        {0.3f, -0.2f, 0.1f, 0.2f, -0.4f, 0.1f}};
    float gs[3] = {60.0f, 60.0f, 0.2f};
    int sels[3] = {1, -1, 0};
    float dfq[N] = {0.2f, -0.1f, 0.4f, 0.05f, -0.3f, 0.1f}, codes[N];
    float s = 0.25f;
    qf_a2q_bound b = {HUGE_VAL, 3.0, 4.0, 0, 0};
    for (int r = 0; r < 3; r++) {
        float *v = rows[r], dv[N] = {0};
        double dg, x[N];
        qf_a2q_row row;
        qf_a2q_forward_row(NULL, codes, &row, v, N, s, gs[r], &b, -7.0f, 7.0f);
        CHECK(row.sel == sels[r] && row.norm_free == (r == 2), "row %d: capped by %d", r, row.sel);
        qf_a2q_backward_row(dv, &dg, dfq, v, codes, N, s, gs[r], &row);
        for (int j = 0; j < N; j++) {
            double h = 1e-4, lp, lm;
            for (int i = 0; i < N; i++)
                x[i] = v[i];
            x[j] = v[j] + h;
            lp = split_loss(x, dfq, N, s, gs[r], &b);
            x[j] = v[j] - h;
            lm = split_loss(x, dfq, N, s, gs[r], &b);
            CHECK_CLOSE(dv[j], (lp - lm) / (2 * h), 1e-3, 1e-5);
        }
        CHECK(r == 2 ? dg != 0.0 : dg == 0.0, "row %d: dL/dg", r);
        if (r == 2)
            continue;
        /* filled: k grows by a factor rho held constant in the backward, dv scales by it */
        qf_a2q_bound fb = b;
        fb.fill = 1;
        float dvf[N] = {0}, fcodes[N];
        qf_a2q_row frow;
        qf_a2q_forward_row(NULL, fcodes, &frow, v, N, s, gs[r], &fb, -7.0f, 7.0f);
        double rho = frow.k / row.k, pos = 0.0, neg = 0.0;
        for (int i = 0; i < N; i++) {
            pos += fcodes[i] > 0 ? fcodes[i] : 0.0;
            neg += fcodes[i] < 0 ? -fcodes[i] : 0.0;
            CHECK(fabsf(fcodes[i]) >= fabsf(codes[i]), "row %d: filling lowered a code", r);
        }
        CHECK(rho > 1.0 && pos <= 3.0 && neg <= 4.0, "row %d: filled k x%g, codes +%g -%g",
              r, rho, pos, neg);
        qf_a2q_backward_row(dvf, &dg, dfq, v, fcodes, N, s, gs[r], &frow);
        for (int j = 0; j < N; j++)
            CHECK_CLOSE(dvf[j], rho * dv[j], 1e-5, 1e-6);
    }
}

int main(void)
{
    budget_holds();
    split_budget_holds();
    rounded_codes_hold_the_bound();
    split_backward_matches_differences();
    backward_matches_differences();
    return CHECK_REPORT();
}
