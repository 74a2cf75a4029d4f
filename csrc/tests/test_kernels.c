/* test_kernels.c: the core's numeric kernels (rng, quant, linear, loss, optim)
 * against references written here: naive loops in double precision, a
 * round-half-even written from its definition, sorting for percentiles,
 * central finite differences for smooth functions and the straight-through
 * rule of REFERENCE.md section 2 checked element by element. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "helpers.h"
#include "linear.h"
#include "loss.h"
#include "optim.h"
#include "quant.h"
#include "rng.h"

/* ------------------------------------------------------------------ helpers */

static uint64_t ref_rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

/* xoshiro256** from its published definition. */
static uint64_t ref_xoshiro_next(uint64_t s[4])
{
    uint64_t result = ref_rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = ref_rotl(s[3], 45);
    return result;
}

/* Round half to even, from the definition (no rint). */
static double ref_round_half_even(double v)
{
    double f = floor(v), d = v - f;
    if (d > 0.5) return f + 1.0;
    if (d < 0.5) return f;
    return fmod(f, 2.0) == 0.0 ? f : f + 1.0;
}

/* q = clamp(round_half_even(x / s), qmin, qmax), the division in float32. */
static double ref_quantize(float x, float s, double qmin, double qmax)
{
    float ratio = x / s;
    double r = ref_round_half_even((double)ratio);
    return r < qmin ? qmin : (r > qmax ? qmax : r);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* ------------------------------------------------------------------ rng */

static void test_rng_sequences(void)
{
    /* splitmix64 seeding: seed 0, stream 0 starts from splitmix64(0), whose
     * first output is the published 0xE220A8397B1DCDAF. */
    qf_rng r0;
    qf_rng_seed(&r0, 0, 0);
    CHECK(r0.s[0] == 0xE220A8397B1DCDAFull, "splitmix64(0) first word %llx",
          (unsigned long long)r0.s[0]);

    /* xoshiro256** from a known state: outputs 11520, 0, ... as published. */
    qf_rng known = {{1, 2, 3, 4}};
    uint64_t ref_state[4] = {1, 2, 3, 4};
    CHECK(qf_rng_next(&known) == 11520u, "xoshiro256** first output from {1,2,3,4}");
    CHECK(qf_rng_next(&known) == 0u, "xoshiro256** second output from {1,2,3,4}");
    ref_xoshiro_next(ref_state);
    ref_xoshiro_next(ref_state);
    int agree = 1;
    for (int i = 0; i < 1000; i++)
        agree &= qf_rng_next(&known) == ref_xoshiro_next(ref_state);
    CHECK(agree, "qf_rng_next differs from the reference xoshiro256**");

    /* same (seed, stream) -> same sequence; other streams and seeds differ */
    qf_rng a, b, c, d;
    qf_rng_seed(&a, 1234, 7);
    qf_rng_seed(&b, 1234, 7);
    qf_rng_seed(&c, 1234, 8);
    qf_rng_seed(&d, 1235, 7);
    int same = 1, equal_stream = 0, equal_seed = 0;
    for (int i = 0; i < 5000; i++) {
        uint64_t x = qf_rng_next(&a), y = qf_rng_next(&b);
        uint64_t z = qf_rng_next(&c), w = qf_rng_next(&d);
        same &= x == y;
        equal_stream += x == z;
        equal_seed += x == w;
    }
    CHECK(same, "same (seed, stream) gave different sequences");
    CHECK(equal_stream == 0, "streams 7 and 8 share %d draws", equal_stream);
    CHECK(equal_seed == 0, "seeds 1234 and 1235 share %d draws", equal_seed);

    /* streams 0 and 1 of seed 0 differ too */
    qf_rng_seed(&a, 0, 0);
    qf_rng_seed(&b, 0, 1);
    int eq01 = 0;
    for (int i = 0; i < 100; i++)
        eq01 += qf_rng_next(&a) == qf_rng_next(&b);
    CHECK(eq01 == 0, "seed 0 streams 0 and 1 share %d draws", eq01);
}

static void test_rng_uniform(void)
{
    qf_rng rng;
    qf_rng_seed(&rng, 99, 3);
    const int n = 200000;
    int formula_ok = 1, range_ok = 1, odd = 0;
    double sum = 0.0, min = 1.0, max = 0.0;
    for (int i = 0; i < n; i++) {
        qf_rng copy = rng;
        uint64_t raw = qf_rng_next(&copy);
        float u = qf_rng_uniform01(&rng);
        double want = (double)(raw >> 40) / 16777216.0;  /* top 24 bits * 2^-24 */
        formula_ok &= (double)u == want;
        range_ok &= u >= 0.0f && u < 1.0f;
        double code = (double)u * 16777216.0;
        range_ok &= code == floor(code);                  /* 24-bit granularity */
        odd += fmod(code, 2.0) == 1.0;
        sum += u;
        if (u < min) min = u;
        if (u > max) max = u;
    }
    CHECK(formula_ok, "uniform01 is not (next >> 40) * 2^-24");
    CHECK(range_ok, "uniform01 outside [0, 1) or not a multiple of 2^-24");
    CHECK(fabs(sum / n - 0.5) < 0.005, "uniform01 mean %g", sum / n);
    CHECK(min < 1e-4 && max > 1.0 - 1e-4, "uniform01 range [%g, %g]", min, max);
    CHECK(odd > n / 2 - 2000 && odd < n / 2 + 2000, "lowest of the 24 bits set %d of %d times",
          odd, n);

    /* fill_uniform = a + (b - a) * u in float32 */
    float x[1000];
    qf_rng copy = rng;
    qf_rng_fill_uniform(&rng, x, 1000, -0.75f, 2.5f);
    int fill_ok = 1;
    for (int i = 0; i < 1000; i++) {
        float u = qf_rng_uniform01(&copy);
        float want = -0.75f + (2.5f - -0.75f) * u;
        fill_ok &= x[i] == want && x[i] >= -0.75f && x[i] < 2.5f;
    }
    CHECK(fill_ok, "fill_uniform differs from a + (b - a) * uniform01");
}

/* Chi-square of counts (k) against equal expectation. */
static double chi_square(const int64_t *counts, int k, int64_t total)
{
    double e = (double)total / k, chi = 0.0;
    for (int i = 0; i < k; i++)
        chi += ((double)counts[i] - e) * ((double)counts[i] - e) / e;
    return chi;
}

static void test_rng_below(void)
{
    qf_rng rng;
    qf_rng_seed(&rng, 5, 0);
    /* always < n, across small, power-of-two and huge n */
    const uint64_t ns[] = {1, 2, 3, 5, 7, 10, 1000, 65537, (1ull << 32) + 1, 1ull << 63,
                           (1ull << 63) + 1, 3ull << 62, UINT64_MAX};
    for (size_t j = 0; j < sizeof ns / sizeof ns[0]; j++) {
        int ok = 1;
        for (int i = 0; i < 2000; i++)
            ok &= qf_rng_below(&rng, ns[j]) < ns[j];
        CHECK(ok, "qf_rng_below(%llu) returned a value >= n", (unsigned long long)ns[j]);
    }
    int zero = 1;
    for (int i = 0; i < 100; i++)
        zero &= qf_rng_below(&rng, 1) == 0;
    CHECK(zero, "qf_rng_below(1) != 0");

    /* small n: chi-square with 6 degrees of freedom, 0.1% critical value 22.46 */
    int64_t counts[7] = {0};
    const int64_t draws = 70000;
    for (int64_t i = 0; i < draws; i++)
        counts[qf_rng_below(&rng, 7)]++;
    double chi = chi_square(counts, 7, draws);
    CHECK(chi < 22.46, "qf_rng_below(7) chi-square %g (df 6)", chi);

    /* n = 3 * 2^62: plain multiply-shift without rejection gives residue 0 mod 3
     * probability 1/2 instead of 1/3; df 2, 0.1% critical value 13.82 */
    int64_t mod3[3] = {0};
    for (int64_t i = 0; i < 30000; i++)
        mod3[qf_rng_below(&rng, 3ull << 62) % 3]++;
    chi = chi_square(mod3, 3, 30000);
    CHECK(chi < 13.82, "qf_rng_below(3*2^62) mod 3 chi-square %g: counts %lld %lld %lld", chi,
          (long long)mod3[0], (long long)mod3[1], (long long)mod3[2]);
}

static void test_rng_permutation(void)
{
    qf_rng rng;
    qf_rng_seed(&rng, 11, 2);
    static int64_t perm[1000];
    static int seen[1000];
    const int64_t sizes[] = {0, 1, 2, 3, 17, 1000};
    for (size_t j = 0; j < sizeof sizes / sizeof sizes[0]; j++) {
        int64_t n = sizes[j];
        for (int64_t i = 0; i < 1000; i++) perm[i] = -7;
        qf_rng_permutation(&rng, perm, n);
        memset(seen, 0, sizeof seen);
        int ok = 1;
        for (int64_t i = 0; i < n; i++) {
            ok &= perm[i] >= 0 && perm[i] < n;
            if (perm[i] >= 0 && perm[i] < n) seen[perm[i]]++;
        }
        for (int64_t i = 0; i < n; i++) ok &= seen[i] == 1;
        for (int64_t i = n; i < 1000; i++) ok &= perm[i] == -7;   /* nothing written past n */
        CHECK(ok, "qf_rng_permutation(n=%lld) is not a permutation", (long long)n);
    }
    /* all 24 orders of 4 elements equally likely: df 23, 0.1% critical 49.73 */
    int64_t counts[24] = {0};
    const int64_t draws = 48000;
    for (int64_t t = 0; t < draws; t++) {
        int64_t p[4];
        qf_rng_permutation(&rng, p, 4);
        /* Lehmer code -> index in [0, 24) */
        int index = 0;
        for (int i = 0; i < 4; i++) {
            int smaller = 0;
            for (int k = i + 1; k < 4; k++) smaller += p[k] < p[i];
            index = index * (4 - i) + smaller;
        }
        counts[index]++;
    }
    double chi = chi_square(counts, 24, draws);
    CHECK(chi < 49.73, "permutations of 4: chi-square %g (df 23)", chi);

    /* same seed -> same permutation */
    qf_rng a, b;
    qf_rng_seed(&a, 3, 3);
    qf_rng_seed(&b, 3, 3);
    static int64_t pa[500], pb[500];
    qf_rng_permutation(&a, pa, 500);
    qf_rng_permutation(&b, pb, 500);
    CHECK(memcmp(pa, pb, sizeof pa) == 0, "same seed gave different permutations");
}

/* ------------------------------------------------------------------ quant */

static qf_quant_spec make_spec(int kind, int bits, int is_signed, int narrow)
{
    qf_quant_spec s;
    memset(&s, 0, sizeof s);
    s.kind = kind;
    s.bits = bits;
    s.is_signed = is_signed;
    s.narrow = narrow;
    s.threshold = 1.0f;
    s.stats_steps = 300;
    s.momentum = 0.1f;
    s.percentile = 99.999f;
    return s;
}

static void test_quant_ranges(void)
{
    for (int bits = 2; bits <= 16; bits++) {
        for (int sg = 0; sg <= 1; sg++) {
            for (int nr = 0; nr <= 1; nr++) {
                qf_quant_spec s = make_spec(QF_QUANT_CONST, bits, sg, nr);
                int64_t half = (int64_t)1 << (bits - 1), full = (int64_t)1 << bits;
                int64_t qmin, qmax, it;
                if (sg && nr) { qmin = -(half - 1); qmax = half - 1; it = half - 1; }
                else if (sg) { qmin = -half; qmax = half - 1; it = half; }
                else { qmin = 0; qmax = full - 1 - nr; it = qmax; }
                CHECK(qf_quant_qmin(&s) == (float)qmin, "bits %d signed %d narrow %d: qmin %g, "
                      "expected %lld", bits, sg, nr, (double)qf_quant_qmin(&s), (long long)qmin);
                CHECK(qf_quant_qmax(&s) == (float)qmax, "bits %d signed %d narrow %d: qmax %g, "
                      "expected %lld", bits, sg, nr, (double)qf_quant_qmax(&s), (long long)qmax);
                CHECK(qf_quant_int_threshold(&s) == (float)it, "bits %d signed %d narrow %d: "
                      "int_threshold %g, expected %lld", bits, sg, nr,
                      (double)qf_quant_int_threshold(&s), (long long)it);
                char err[128];
                CHECK(qf_quant_spec_check(&s, err, sizeof err) == QF_OK, "bits %d rejected", bits);
            }
        }
    }
    /* the tutorial's 3-bit quantizers and the Brevitas 8-bit defaults */
    qf_quant_spec w3 = make_spec(QF_QUANT_CONST, 3, 1, 1);
    CHECK(qf_quant_qmin(&w3) == -3.0f && qf_quant_qmax(&w3) == 3.0f &&
          qf_quant_int_threshold(&w3) == 3.0f, "3-bit signed narrow is not [-3, 3] / 3");
    qf_quant_spec i8 = make_spec(QF_QUANT_LEARNED, 8, 1, 0);
    CHECK(qf_quant_qmin(&i8) == -128.0f && qf_quant_qmax(&i8) == 127.0f &&
          qf_quant_int_threshold(&i8) == 128.0f, "Int8Act is not [-128, 127] / 128");
    qf_quant_spec u8 = make_spec(QF_QUANT_LEARNED, 8, 0, 0);
    CHECK(qf_quant_qmin(&u8) == 0.0f && qf_quant_qmax(&u8) == 255.0f &&
          qf_quant_int_threshold(&u8) == 255.0f, "Uint8Act is not [0, 255] / 255");
}

static void test_quant_spec_check(void)
{
    char err[160];
    struct { qf_quant_spec s; const char *what; } bad[12];
    int nb = 0;
    bad[nb].s = make_spec(QF_QUANT_CONST, 1, 1, 1); bad[nb++].what = "bits 1";
    bad[nb].s = make_spec(QF_QUANT_CONST, 17, 1, 1); bad[nb++].what = "bits 17";
    bad[nb].s = make_spec(QF_QUANT_ABSMAX, 0, 0, 0); bad[nb++].what = "bits 0";
    bad[nb].s = make_spec(7, 8, 1, 0); bad[nb++].what = "kind 7";
    bad[nb].s = make_spec(-1, 8, 1, 0); bad[nb++].what = "kind -1";
    bad[nb].s = make_spec(QF_QUANT_CONST, 8, 1, 0); bad[nb].s.threshold = 0.0f;
    bad[nb++].what = "threshold 0";
    bad[nb].s = make_spec(QF_QUANT_CONST, 8, 1, 0); bad[nb].s.threshold = NAN;
    bad[nb++].what = "threshold NaN";
    bad[nb].s = make_spec(QF_QUANT_CONST, 8, 1, 0); bad[nb].s.threshold = INFINITY;
    bad[nb++].what = "threshold inf";
    bad[nb].s = make_spec(QF_QUANT_LEARNED, 8, 1, 0); bad[nb].s.stats_steps = 0;
    bad[nb++].what = "stats_steps 0";
    bad[nb].s = make_spec(QF_QUANT_LEARNED, 8, 1, 0); bad[nb].s.momentum = 0.0f;
    bad[nb++].what = "momentum 0";
    bad[nb].s = make_spec(QF_QUANT_LEARNED, 8, 1, 0); bad[nb].s.percentile = 100.5f;
    bad[nb++].what = "percentile 100.5";
    bad[nb].s = make_spec(QF_QUANT_LEARNED, 8, 1, 0); bad[nb].s.percentile = 0.0f;
    bad[nb++].what = "percentile 0";
    for (int i = 0; i < nb; i++) {
        err[0] = 0;
        qf_status st = qf_quant_spec_check(&bad[i].s, err, sizeof err);
        CHECK(st == QF_ERR_ARG, "%s: status %d, expected QF_ERR_ARG", bad[i].what, st);
        CHECK(err[0] != 0, "%s: no message", bad[i].what);
    }
    qf_quant_spec b17 = make_spec(QF_QUANT_CONST, 17, 1, 1);
    qf_quant_spec_check(&b17, err, sizeof err);
    CHECK(strstr(err, "bit_width") && strstr(err, "17"), "bits message '%s'", err);
    qf_quant_spec none = make_spec(QF_QUANT_NONE, 99, 0, 0);
    none.threshold = -1.0f;
    CHECK(qf_quant_spec_check(&none, err, sizeof err) == QF_OK, "kind NONE must accept anything");
    qf_quant_spec learned_ok = make_spec(QF_QUANT_LEARNED, 8, 0, 0);
    learned_ok.momentum = 1.0f;
    learned_ok.percentile = 100.0f;
    CHECK(qf_quant_spec_check(&learned_ok, err, sizeof err) == QF_OK,
          "momentum 1 / percentile 100 must be accepted");
}

static void test_quantize_value(void)
{
    /* round half to even */
    const struct { float x, s, want; } cases[] = {
        {0.5f, 1.0f, 0.0f},    {1.5f, 1.0f, 2.0f},    {2.5f, 1.0f, 2.0f},
        {-0.5f, 1.0f, 0.0f},   {-1.5f, 1.0f, -2.0f},  {-2.5f, 1.0f, -2.0f},
        {0.49f, 1.0f, 0.0f},   {0.51f, 1.0f, 1.0f},   {0.375f, 0.25f, 2.0f},
        {0.625f, 0.25f, 2.0f}, {-0.625f, 0.25f, -2.0f}, {-0.875f, 0.25f, -3.0f}, {2.9f, 1.0f, 3.0f},
        {3.5f, 1.0f, 3.0f},    {100.0f, 1.0f, 3.0f},  {-100.0f, 1.0f, -3.0f},
        {-3.5f, 1.0f, -3.0f},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        float q = qf_quantize_value(cases[i].x, cases[i].s, -3.0f, 3.0f);
        CHECK(q == cases[i].want, "quantize(%g / %g) in [-3, 3] = %g, expected %g",
              (double)cases[i].x, (double)cases[i].s, (double)q, (double)cases[i].want);
    }
    /* exact ties k + 0.5 across a range, at power-of-two scales */
    int ties_ok = 1;
    for (int k = -20; k < 20; k++) {
        for (int e = -3; e <= 3; e++) {
            float s = ldexpf(1.0f, e);
            float x = ((float)k + 0.5f) * s;
            double want = ref_quantize(x, s, -16.0, 15.0);
            double want_even = (k % 2 == 0) ? k : k + 1;   /* k+0.5 -> the even neighbour */
            want_even = want_even < -16 ? -16 : (want_even > 15 ? 15 : want_even);
            ties_ok &= (double)qf_quantize_value(x, s, -16.0f, 15.0f) == want && want == want_even;
        }
    }
    CHECK(ties_ok, "ties k + 0.5 do not round to even");
    /* random values and scales */
    qf_rng rng;
    qf_rng_seed(&rng, 21, 0);
    int random_ok = 1;
    for (int i = 0; i < 100000; i++) {
        float x = uniform(&rng, -10.0f, 10.0f), s = uniform(&rng, 0.01f, 2.0f);
        random_ok &= (double)qf_quantize_value(x, s, -128.0f, 127.0f) ==
                     ref_quantize(x, s, -128.0, 127.0);
    }
    CHECK(random_ok, "qf_quantize_value differs from the reference on random inputs");
}

static void test_rint(void)
{
    qf_rng rng;
    qf_rng_seed(&rng, 23, 0);
    int ok = 1, sign_ok = 1;
    for (int i = 0; i < 200000; i++) {
        /* magnitudes from 2^-3 to 2^30, so both sides of 2^23 are covered */
        float x = ldexpf(uniform(&rng, 1.0f, 2.0f), (int)qf_rng_below(&rng, 34) - 3);
        if (i % 3 == 0) x = floorf(x) + 0.5f;              /* ties where representable */
        if (i % 2) x = -x;
        float r = qf_rint(x);
        ok &= (double)r == ref_round_half_even((double)x);
        sign_ok &= signbit(r) == signbit(x);
    }
    CHECK(ok, "qf_rint differs from round-half-even");
    CHECK(sign_ok, "qf_rint does not keep the sign (rint(-0.3) = -0)");
    const float edge[] = {0x1p23f, 0x1p23f + 1.0f, 0x1p23f - 0.5f, 0x1p23f - 1.5f, 0x1p24f,
                          -0x1p23f - 1.0f, 0.49999997f, -0.49999997f, 1e30f, 0.0f};
    for (size_t i = 0; i < sizeof edge / sizeof edge[0]; i++)
        CHECK((double)qf_rint(edge[i]) == ref_round_half_even((double)edge[i]),
              "qf_rint(%.9g) = %.9g", (double)edge[i], (double)qf_rint(edge[i]));
    CHECK(isnan(qf_rint(NAN)) && qf_rint(INFINITY) == INFINITY, "qf_rint of NaN / inf");
}

/* The quantizer configurations the fake-quant tests sweep. */
static const struct { int bits, is_signed, narrow; } quant_cases[] = {
    {3, 1, 1}, {3, 0, 0}, {3, 1, 0}, {4, 0, 1}, {8, 1, 1}, {2, 1, 0},
};

static void fill_quant_inputs(float *x, int64_t n, float s, float qmax, qf_rng *rng)
{
    for (int64_t i = 0; i < n; i++) {
        switch (i % 5) {
        case 0: x[i] = uniform(rng, -1.5f, 1.5f) * qmax * s; break;        /* partly clamped */
        case 1: x[i] = ((float)((int)qf_rng_below(rng, 21) - 10) + 0.5f) * s; break;  /* ties */
        case 2: x[i] = uniform(rng, -0.5f, 0.5f) * qmax * s; break;        /* in range */
        case 3: x[i] = (i % 10 == 3) ? 0.0f : -0.0f; break;                /* zeros */
        default: x[i] = uniform(rng, -4.0f, 4.0f) * qmax * s; break;       /* mostly clamped */
        }
    }
}

static void test_fake_quant_forward(void)
{
    enum { N = 1000 };
    static float x[N], y[N], codes[N], y2[N];
    qf_rng rng;
    qf_rng_seed(&rng, 31, 0);
    for (size_t c = 0; c < sizeof quant_cases / sizeof quant_cases[0]; c++) {
        qf_quant_spec q = make_spec(QF_QUANT_CONST, quant_cases[c].bits, quant_cases[c].is_signed,
                                    quant_cases[c].narrow);
        float qmin = qf_quant_qmin(&q), qmax = qf_quant_qmax(&q);
        for (int relu = 0; relu <= 1; relu++) {
            float s = uniform(&rng, 0.05f, 0.5f);
            fill_quant_inputs(x, N, s, qmax, &rng);
            qf_fake_quant_forward(y, codes, x, N, s, qmin, qmax, relu);
            qf_fake_quant_forward(y2, NULL, x, N, s, qmin, qmax, relu);
            int ok = 1;
            for (int i = 0; i < N; i++) {
                float v = relu && x[i] < 0.0f ? 0.0f : x[i];
                double want = ref_quantize(v, s, qmin, qmax);
                float want_y = s * (float)want;
                ok &= codes[i] == (float)want && y[i] == want_y && y2[i] == want_y;
                ok &= codes[i] >= qmin && codes[i] <= qmax;
            }
            CHECK(ok, "fake-quant forward (bits %d signed %d narrow %d relu %d) differs from "
                  "s * clamp(round_half_even(x / s))", quant_cases[c].bits,
                  quant_cases[c].is_signed, quant_cases[c].narrow, relu);
        }
    }
}

/* The straight-through rule of REFERENCE.md section 2 for one element:
 * returns dy/dx (0 or 1) and sets *dyds. */
static int ref_ste(double *dyds, int *clamped, float x, float s, double qmin, double qmax,
                   int relu, int clamp_ste)
{
    int active = !relu || x > 0.0f;
    float v = active ? x : 0.0f;
    float ratio = v / s;
    double r = ref_round_half_even((double)ratio);
    int in_range = clamp_ste || (r >= qmin && r <= qmax);
    *clamped = !in_range;
    /* y = s * q: dy/ds = round(x/s) - x/s in range, the clamped code outside */
    *dyds = in_range ? r - (double)ratio : (r < qmin ? qmin : qmax);
    return in_range && active;
}

static void test_fake_quant_backward(void)
{
    enum { N = 1000 };
    static float x[N], dy[N], dx[N], dx_init[N];
    qf_rng rng;
    qf_rng_seed(&rng, 41, 0);
    for (size_t c = 0; c < sizeof quant_cases / sizeof quant_cases[0]; c++) {
        qf_quant_spec q = make_spec(QF_QUANT_CONST, quant_cases[c].bits, quant_cases[c].is_signed,
                                    quant_cases[c].narrow);
        float qmin = qf_quant_qmin(&q), qmax = qf_quant_qmax(&q);
        for (int variant = 0; variant < 4; variant++) {
            int relu = variant & 1, clamp_ste = variant >> 1;
            float s = uniform(&rng, 0.05f, 0.5f);
            fill_quant_inputs(x, N, s, qmax, &rng);
            for (int i = 0; i < N; i++) {
                dy[i] = uniform(&rng, -1.0f, 1.0f);
                dx_init[i] = uniform(&rng, -1.0f, 1.0f);
            }
            memcpy(dx, dx_init, sizeof dx);
            double ds = qf_fake_quant_backward(dx, dy, x, N, s, qmin, qmax, relu, clamp_ste);
            double ds_want = 0.0, ds_abs = 0.0;
            int dx_ok = 1, single_ok = 1, n_masked = 0, n_clamped_ds = 0;
            for (int i = 0; i < N; i++) {
                double dyds;
                int clamped;
                int pass = ref_ste(&dyds, &clamped, x[i], s, qmin, qmax, relu, clamp_ste);
                float want = pass ? dx_init[i] + dy[i] : dx_init[i];   /* accumulated */
                dx_ok &= dx[i] == want;
                n_masked += !pass;
                ds_want += (double)dy[i] * dyds;
                ds_abs += fabs((double)dy[i] * dyds);
                /* element by element: the same call on this element alone */
                float one = 0.0f;
                double ds1 = qf_fake_quant_backward(&one, &dy[i], &x[i], 1, s, qmin, qmax, relu,
                                                    clamp_ste);
                single_ok &= one == (pass ? dy[i] : 0.0f);
                single_ok &= fabs(ds1 - (double)dy[i] * dyds) <= 1e-12 + 1e-9 * fabs(dyds);
                n_clamped_ds += clamped;
            }
            CHECK(dx_ok, "STE dx (bits %d signed %d relu %d clamp_ste %d) differs from "
                  "dx + dy * mask", quant_cases[c].bits, quant_cases[c].is_signed, relu, clamp_ste);
            CHECK(single_ok, "STE element-by-element (bits %d signed %d relu %d clamp_ste %d)",
                  quant_cases[c].bits, quant_cases[c].is_signed, relu, clamp_ste);
            CHECK_CLOSE(ds, ds_want, 1e-9, 1e-9 * ds_abs);
            /* the sweep must exercise both masked and clamped elements */
            if (!clamp_ste)
                CHECK(n_masked > 0 && n_clamped_ds > 0, "case exercised %d masked, %d clamped",
                      n_masked, n_clamped_ds);
        }
    }
    /* dx may be NULL */
    float xs[3] = {0.2f, 5.0f, -5.0f}, dys[3] = {1.0f, 1.0f, 1.0f};
    double ds = qf_fake_quant_backward(NULL, dys, xs, 3, 1.0f, -3.0f, 3.0f, 0, 0);
    /* 0.2: round 0 - 0.2 = -0.2; 5: clamped to 3; -5: clamped to -3 */
    CHECK_CLOSE(ds, -0.2 + 3.0 - 3.0, 1e-6, 1e-7);
    /* hand-worked relu example: x = (-1, 0, 0.3, 0.5, 9), s = 0.25, [0, 7] */
    float xr[5] = {-1.0f, 0.0f, 0.3f, 0.5f, 9.0f}, dyr[5] = {1, 1, 1, 1, 1}, dxr[5] = {0};
    ds = qf_fake_quant_backward(dxr, dyr, xr, 5, 0.25f, 0.0f, 7.0f, 1, 0);
    /* 0.3/0.25 = 1.2 -> 1: -0.2; 0.5/0.25 = 2 -> 2: 0; 9/0.25 = 36 -> clamped 7 */
    CHECK(dxr[0] == 0.0f && dxr[1] == 0.0f && dxr[2] == 1.0f && dxr[3] == 1.0f && dxr[4] == 0.0f,
          "relu STE mask (%g %g %g %g %g), expected (0 0 1 1 0)", (double)dxr[0], (double)dxr[1],
          (double)dxr[2], (double)dxr[3], (double)dxr[4]);
    CHECK_CLOSE(ds, (double)(1.0f - 0.3f / 0.25f) + 7.0, 1e-6, 1e-7);
}

static void test_abs_argmax(void)
{
    float value;
    const float a[] = {1.0f, -3.0f, 3.0f, 2.0f};
    CHECK(qf_abs_argmax(a, 4, 0, &value) == 1 && value == 3.0f, "abs_argmax ties: first of |x|");
    CHECK(qf_abs_argmax(a, 4, 1, &value) == 2 && value == 3.0f, "abs_argmax relu ignores -3");
    const float b[] = {-5.0f, 2.0f, 2.0f, 1.0f};
    CHECK(qf_abs_argmax(b, 4, 1, &value) == 1 && value == 2.0f, "abs_argmax relu ties");
    CHECK(qf_abs_argmax(b, 4, 0, &value) == 0 && value == 5.0f, "abs_argmax negative max");
    const float c[] = {-1.0f, -2.0f};
    int64_t i = qf_abs_argmax(c, 2, 1, &value);
    CHECK(i == 0 && value == 0.0f, "abs_argmax relu of negatives: index %lld value %g",
          (long long)i, (double)value);
    const float d[] = {0.0f};
    CHECK(qf_abs_argmax(d, 1, 0, &value) == 0 && value == 0.0f, "abs_argmax of one zero");
    /* random against a naive loop */
    qf_rng rng;
    qf_rng_seed(&rng, 51, 0);
    static float x[777];
    int ok = 1;
    for (int t = 0; t < 50; t++) {
        for (int k = 0; k < 777; k++)
            x[k] = (float)((int)qf_rng_below(&rng, 41) - 20) * 0.125f;   /* many ties */
        for (int relu = 0; relu <= 1; relu++) {
            int64_t best = 0;
            double best_v = -1.0;
            for (int k = 0; k < 777; k++) {
                double v = relu ? (x[k] > 0 ? x[k] : 0.0) : fabs((double)x[k]);
                if (v > best_v) { best_v = v; best = k; }
            }
            int64_t got = qf_abs_argmax(x, 777, relu, &value);
            ok &= got == best && (double)value == best_v;
        }
    }
    CHECK(ok, "abs_argmax differs from a naive first-max loop");
}

/* Percentile reference by sorting: k-th smallest of |x| (max(x,0) with relu),
 * k = floor(p / 100 * n + 0.5) clamped to [1, n]. */
static void check_percentile(const float *x, int64_t n, double *sorted, float *scratch,
                             int relu, const float *ps, int n_ps, const char *what)
{
    for (int64_t i = 0; i < n; i++)
        sorted[i] = relu ? (x[i] > 0.0f ? x[i] : 0.0) : fabs((double)x[i]);
    qsort(sorted, (size_t)n, sizeof(double), cmp_double);
    for (int j = 0; j < n_ps; j++) {
        int64_t k = (int64_t)floor((double)ps[j] / 100.0 * (double)n + 0.5);
        if (k < 1) k = 1;
        if (k > n) k = n;
        double want = sorted[k - 1];
        int64_t index = -5;
        float got = qf_abs_percentile(x, n, ps[j], relu, scratch, &index);
        int index_ok = index >= 0 && index < n;
        int64_t first = -1;
        for (int64_t i = 0; i < n && first < 0; i++) {
            double a = relu ? (x[i] > 0.0f ? x[i] : 0.0) : fabs((double)x[i]);
            if (a == want) first = i;
        }
        CHECK((double)got == want, "%s: n %lld p %g relu %d: got %.9g, expected the %lld-th "
              "smallest %.9g", what, (long long)n, (double)ps[j], relu, (double)got,
              (long long)k, want);
        CHECK(index_ok && index == first, "%s: n %lld p %g relu %d: index %lld, expected %lld",
              what, (long long)n, (double)ps[j], relu, (long long)index, (long long)first);
    }
}

static void test_abs_percentile(void)
{
    enum { N_MAX = 200000 };
    float *x = malloc(sizeof(float) * N_MAX);
    float *scratch = malloc(sizeof(float) * N_MAX);
    double *sorted = malloc(sizeof(double) * N_MAX);
    if (!x || !scratch || !sorted) {
        CHECK(0, "out of memory");
        free(x); free(scratch); free(sorted);
        return;
    }
    qf_rng rng;
    qf_rng_seed(&rng, 61, 0);
    const float ps[] = {0.001f, 10.0f, 37.5f, 50.0f, 90.0f, 99.0f, 99.9f, 99.999f, 100.0f};
    const int n_ps = (int)(sizeof ps / sizeof ps[0]);
    const int64_t sizes[] = {1, 2, 3, 10, 101, 1000, 49999, 50001, 60000, 200000};
    for (size_t j = 0; j < sizeof sizes / sizeof sizes[0]; j++) {
        int64_t n = sizes[j];
        for (int64_t i = 0; i < n; i++)
            x[i] = uniform(&rng, -3.0f, 3.0f);
        for (int relu = 0; relu <= 1; relu++)
            check_percentile(x, n, sorted, scratch, relu, ps, n_ps, "distinct");
        /* heavy ties: a few small integers */
        for (int64_t i = 0; i < n; i++)
            x[i] = (float)((int)qf_rng_below(&rng, 7) - 3);
        check_percentile(x, n, sorted, scratch, 0, ps, n_ps, "ties");
        /* increasing |x|: every value displaces one of the largest kept so far */
        for (int64_t i = 0; i < n; i++)
            x[i] = (i % 2 ? -1.0f : 1.0f) * (float)i;
        for (int relu = 0; relu <= 1; relu++)
            check_percentile(x, n, sorted, scratch, relu, ps, n_ps, "increasing");
    }
    /* above 50,000 values the 99.999th percentile is not the max */
    int64_t n = 200000;
    for (int64_t i = 0; i < n; i++)
        x[i] = uniform(&rng, -1.0f, 1.0f);
    x[12345] = 50.0f;     /* outliers the percentile must ignore */
    x[54321] = -40.0f;
    int64_t index;
    float p = qf_abs_percentile(x, n, 99.999f, 0, scratch, &index);
    CHECK(p <= 1.0f, "99.999th percentile of 200000 values with two outliers is %g; the "
          "outliers (k = n - 2) must not be selected", (double)p);
    float all_equal[64];
    for (int i = 0; i < 64; i++) all_equal[i] = -2.0f;
    CHECK(qf_abs_percentile(all_equal, 64, 50.0f, 0, scratch, &index) == 2.0f && index == 0,
          "percentile of equal values");
    free(x);
    free(scratch);
    free(sorted);
}

/* ------------------------------------------------------------------ linear */

/* y (n, n_out) = x w^T + b in double. */
static void ref_linear(double *y, const double *x, const double *w, const double *b,
                       int n, int n_in, int n_out)
{
    for (int s = 0; s < n; s++)
        for (int o = 0; o < n_out; o++) {
            double acc = b ? b[o] : 0.0;
            for (int i = 0; i < n_in; i++)
                acc += x[s * n_in + i] * w[o * n_in + i];
            y[s * n_out + o] = acc;
        }
}

/* Scalar loss L = sum c * y + 0.5 y^2 of y = x w^T + b, in double. */
static double ref_linear_loss(const double *x, const double *w, const double *b,
                              const double *c, int n, int n_in, int n_out)
{
    double y[64];
    ref_linear(y, x, w, b, n, n_in, n_out);
    double loss = 0.0;
    for (int j = 0; j < n * n_out; j++)
        loss += c[j] * y[j] + 0.5 * y[j] * y[j];
    return loss;
}

static void to_double(double *d, const float *f, int n)
{
    for (int i = 0; i < n; i++) d[i] = f[i];
}

static void test_linear_forward(void)
{
    enum { NS = 6, NI = 37, NO = 9 };
    float x[NS * NI], w[NO * NI], b[NO], out[NS * NO];
    double xd[NS * NI], wd[NO * NI], bd[NO], want[NS * NO];
    qf_rng rng;
    qf_rng_seed(&rng, 71, 0);
    qf_rng_fill_uniform(&rng, x, NS * NI, -2.0f, 2.0f);
    qf_rng_fill_uniform(&rng, w, NO * NI, -1.0f, 1.0f);
    qf_rng_fill_uniform(&rng, b, NO, -1.0f, 1.0f);
    to_double(xd, x, NS * NI);
    to_double(wd, w, NO * NI);
    to_double(bd, b, NO);
    for (int with_bias = 0; with_bias <= 1; with_bias++) {
        qf_linear_forward(out, x, w, with_bias ? b : NULL, NS, NI, NO);
        ref_linear(want, xd, wd, with_bias ? bd : NULL, NS, NI, NO);
        double worst = 0.0;
        for (int j = 0; j < NS * NO; j++) {
            double err = fabs(out[j] - want[j]);
            if (err > worst) worst = err;
        }
        CHECK(worst < 1e-5, "linear forward (bias %d): max error %g vs double", with_bias, worst);
    }
}

static void test_linear_backward(void)
{
    enum { NS = 4, NI = 5, NO = 3 };
    float x[NS * NI], w[NO * NI], b[NO], y[NS * NO], dout[NS * NO];
    float dx[NS * NI], dw[NO * NI], db[NO];
    double xd[NS * NI], wd[NO * NI], bd[NO], c[NS * NO], yd[NS * NO];
    qf_rng rng;
    qf_rng_seed(&rng, 81, 0);
    qf_rng_fill_uniform(&rng, x, NS * NI, -1.0f, 1.0f);
    qf_rng_fill_uniform(&rng, w, NO * NI, -1.0f, 1.0f);
    qf_rng_fill_uniform(&rng, b, NO, -1.0f, 1.0f);
    for (int j = 0; j < NS * NO; j++) c[j] = uniform(&rng, -1.0f, 1.0f);
    to_double(xd, x, NS * NI);
    to_double(wd, w, NO * NI);
    to_double(bd, b, NO);
    /* dL/dy = c + y */
    qf_linear_forward(y, x, w, b, NS, NI, NO);
    ref_linear(yd, xd, wd, bd, NS, NI, NO);
    for (int j = 0; j < NS * NO; j++) dout[j] = (float)(c[j] + yd[j]);
    /* dx is overwritten (start from NaN), dw and db accumulate onto 0.25 */
    for (int j = 0; j < NS * NI; j++) dx[j] = NAN;
    for (int j = 0; j < NO * NI; j++) dw[j] = 0.25f;
    for (int j = 0; j < NO; j++) db[j] = 0.25f;
    qf_linear_backward(dx, dw, db, dout, x, w, NS, NI, NO);

    /* naive double: dx = dout w, dw = dout^T x, db = sum dout */
    int naive_ok = 1;
    for (int s = 0; s < NS; s++)
        for (int i = 0; i < NI; i++) {
            double acc = 0.0;
            for (int o = 0; o < NO; o++) acc += (double)dout[s * NO + o] * wd[o * NI + i];
            naive_ok &= fabs(dx[s * NI + i] - acc) <= 1e-5;
        }
    for (int o = 0; o < NO; o++) {
        double acc_b = 0.25;
        for (int s = 0; s < NS; s++) acc_b += dout[s * NO + o];
        naive_ok &= fabs(db[o] - acc_b) <= 1e-5;
        for (int i = 0; i < NI; i++) {
            double acc = 0.25;
            for (int s = 0; s < NS; s++) acc += (double)dout[s * NO + o] * xd[s * NI + i];
            naive_ok &= fabs(dw[o * NI + i] - acc) <= 1e-5;
        }
    }
    CHECK(naive_ok, "linear backward differs from the naive double products");

    /* central finite differences of L in double (L is quadratic: exact up to rounding) */
    const double h = 1e-3;
    double worst = 0.0;
    for (int j = 0; j < NS * NI; j++) {
        double keep = xd[j];
        xd[j] = keep + h; double lp = ref_linear_loss(xd, wd, bd, c, NS, NI, NO);
        xd[j] = keep - h; double lm = ref_linear_loss(xd, wd, bd, c, NS, NI, NO);
        xd[j] = keep;
        double fd = (lp - lm) / (2 * h), err = fabs(dx[j] - fd) / (1e-3 + fabs(fd));
        if (err > worst) worst = err;
    }
    for (int j = 0; j < NO * NI; j++) {
        double keep = wd[j];
        wd[j] = keep + h; double lp = ref_linear_loss(xd, wd, bd, c, NS, NI, NO);
        wd[j] = keep - h; double lm = ref_linear_loss(xd, wd, bd, c, NS, NI, NO);
        wd[j] = keep;
        double fd = (lp - lm) / (2 * h), err = fabs(dw[j] - 0.25 - fd) / (1e-3 + fabs(fd));
        if (err > worst) worst = err;
    }
    for (int j = 0; j < NO; j++) {
        double keep = bd[j];
        bd[j] = keep + h; double lp = ref_linear_loss(xd, wd, bd, c, NS, NI, NO);
        bd[j] = keep - h; double lm = ref_linear_loss(xd, wd, bd, c, NS, NI, NO);
        bd[j] = keep;
        double fd = (lp - lm) / (2 * h), err = fabs(db[j] - 0.25 - fd) / (1e-3 + fabs(fd));
        if (err > worst) worst = err;
    }
    CHECK(worst < 1e-4, "linear backward vs central differences: worst relative error %g", worst);

    /* NULL dx and db are skipped; dw still accumulates */
    float dw2[NO * NI];
    memset(dw2, 0, sizeof dw2);
    qf_linear_backward(NULL, dw2, NULL, dout, x, w, NS, NI, NO);
    int same = 1;
    for (int j = 0; j < NO * NI; j++) same &= fabsf(dw2[j] - (dw[j] - 0.25f)) <= 1e-6f;
    CHECK(same, "linear backward with dx = db = NULL");
}

static void test_linear_codes(void)
{
    enum { NS = 5, NI = 300, NO = 7 };
    static float xc[NS * NI], wc[NO * NI], out[NS * NO], out_nob[NS * NO];
    float b[NO];
    qf_rng rng;
    qf_rng_seed(&rng, 91, 0);
    /* code ranges of the input and of the weights */
    const int ranges[][4] = {
        {-3, 3, -3, 3}, {0, 7, -7, 7}, {0, 255, -127, 127}, {-32768, 32767, -32767, 32767},
        {0, 65535, -32767, 32767}, {0, 1, -1, 1},
    };
    for (int r = 0; r < 6; r++) {
        int xlo = ranges[r][0], xhi = ranges[r][1], wlo = ranges[r][2], whi = ranges[r][3];
        for (int j = 0; j < NS * NI; j++)
            xc[j] = (float)(xlo + (int64_t)qf_rng_below(&rng, (uint64_t)(xhi - xlo + 1)));
        for (int j = 0; j < NO * NI; j++)
            wc[j] = (float)(wlo + (int64_t)qf_rng_below(&rng, (uint64_t)(whi - wlo + 1)));
        qf_rng_fill_uniform(&rng, b, NO, -1.0f, 1.0f);
        float scale[NO];   /* one scale per output channel */
        for (int o = 0; o < NO; o++) scale[o] = uniform(&rng, 1e-6f, 1e-2f);
        double x_max = xhi > -xlo ? xhi : -xlo, w_max = whi > -wlo ? whi : -wlo;
        int fits = (double)NI * x_max * w_max < 16777216.0;
        CHECK(qf_codes_fit_f32(NI, (float)x_max, (float)w_max) == fits,
              "qf_codes_fit_f32(%d, %g, %g) should be %d", NI, x_max, w_max, fits);
        for (int exact_f32 = 0; exact_f32 <= fits; exact_f32++) {
            qf_linear_forward_codes(out, xc, wc, scale, b, exact_f32, NS, NI, NO);
            qf_linear_forward_codes(out_nob, xc, wc, scale, NULL, exact_f32, NS, NI, NO);
            int ok = 1, big = 0;
            for (int s = 0; s < NS; s++)
                for (int o = 0; o < NO; o++) {
                    int64_t acc = 0;   /* the exact integer sum */
                    for (int i = 0; i < NI; i++)
                        acc += (int64_t)xc[s * NI + i] * (int64_t)wc[o * NI + i];
                    big += acc > (1 << 24) || acc < -(1 << 24);
                    float a = (float)acc;
                    float y = a * scale[o];   /* float32, no contraction (-ffp-contract=off) */
                    float want = y + b[o];
                    ok &= out[s * NO + o] == want && out_nob[s * NO + o] == y;
                }
            CHECK(ok, "codes x in [%d, %d], w in [%d, %d], exact_f32 %d: output is not "
                  "(float)acc * scale[o] + bias[o] in float32", xlo, xhi, wlo, whi, exact_f32);
            if (r == 3 || r == 4)
                CHECK(big > 0, "codes range %d: no accumulator beyond 2^24 exercised", r);
        }
    }
    /* the epilogue itself */
    CHECK(qf_affine_epilogue(16777217, 1.0f, 0.0f) == 16777216.0f,
          "epilogue converts the accumulator to float32 first");
    CHECK(qf_affine_epilogue(-7, 0.5f, 0.25f) == -3.25f, "epilogue -7 * 0.5 + 0.25");
}

/* ------------------------------------------------------------------ loss */

/* Mean cross-entropy of logits (n, k) in double by log-sum-exp. */
static double ref_ce(const double *logits, const int32_t *labels, int n, int k)
{
    double total = 0.0;
    for (int s = 0; s < n; s++) {
        const double *row = logits + s * k;
        double m = row[0];
        for (int j = 1; j < k; j++) if (row[j] > m) m = row[j];
        double sum = 0.0;
        for (int j = 0; j < k; j++) sum += exp(row[j] - m);
        total += m + log(sum) - row[labels[s]];
    }
    return total / n;
}

static void test_softmax_ce(void)
{
    enum { N = 7, K = 5 };
    float logits[N * K], dlogits[N * K];
    double ld[N * K];
    int32_t labels[N];
    qf_rng rng;
    qf_rng_seed(&rng, 101, 0);
    for (int trial = 0; trial < 3; trial++) {
        float spread = trial == 0 ? 1.0f : (trial == 1 ? 20.0f : 3.0f);
        float shift = trial == 2 ? 1000.0f : 0.0f;   /* stability: exp(1000) overflows */
        for (int j = 0; j < N * K; j++) logits[j] = shift + uniform(&rng, -spread, spread);
        for (int s = 0; s < N; s++) labels[s] = (int32_t)qf_rng_below(&rng, K);
        to_double(ld, logits, N * K);
        double loss;
        int64_t correct;
        qf_status st = qf_softmax_ce(&loss, &correct, dlogits, logits, labels, N, K);
        CHECK(st == QF_OK, "softmax_ce status %d", st);
        double want = ref_ce(ld, labels, N, K);
        CHECK_CLOSE(loss, want, 1e-12, 1e-12);
        int64_t want_correct = 0;
        for (int s = 0; s < N; s++) {
            int best = 0;
            for (int j = 1; j < K; j++) if (logits[s * K + j] > logits[s * K + best]) best = j;
            want_correct += best == labels[s];
        }
        CHECK(correct == want_correct, "n_correct %lld, expected %lld", (long long)correct,
              (long long)want_correct);
        /* dlogits vs central differences of the double loss */
        double worst = 0.0;
        for (int j = 0; j < N * K; j++) {
            const double h = 1e-5;
            double keep = ld[j];
            ld[j] = keep + h; double lp = ref_ce(ld, labels, N, K);
            ld[j] = keep - h; double lm = ref_ce(ld, labels, N, K);
            ld[j] = keep;
            double fd = (lp - lm) / (2 * h);
            double err = fabs(dlogits[j] - fd);
            if (err > worst) worst = err;
        }
        CHECK(worst < 1e-6, "dlogits vs central differences (trial %d): max error %g", trial,
              worst);
        /* without dlogits */
        double loss2;
        st = qf_softmax_ce(&loss2, &correct, NULL, logits, labels, N, K);
        CHECK(st == QF_OK && loss2 == loss, "softmax_ce with dlogits NULL");
    }
    /* bad labels */
    for (int bad = 0; bad < 2; bad++) {
        for (int s = 0; s < N; s++) labels[s] = s % K;
        labels[3] = bad ? K : -1;
        for (int j = 0; j < N * K; j++) dlogits[j] = 42.0f;
        double loss;
        int64_t correct;
        qf_status st = qf_softmax_ce(&loss, &correct, dlogits, logits, labels, N, K);
        CHECK(st == QF_ERR_LABEL, "label %d: status %d, expected QF_ERR_LABEL", labels[3], st);
        int untouched = 1;
        for (int j = 3 * K; j < N * K; j++) untouched &= dlogits[j] == 42.0f;
        CHECK(untouched, "dlogits written at or past the bad label");
    }
}

static void test_argmax(void)
{
    const float logits[] = {
        1.0f, 3.0f, 3.0f, 2.0f,
        5.0f, 5.0f, 5.0f, 5.0f,
        -4.0f, -1.0f, -2.0f, -1.0f,
        0.0f, 0.0f, 0.5f, 0.5f,
    };
    int64_t classes[4];
    qf_argmax_rows(classes, logits, 4, 4);
    CHECK(classes[0] == 1 && classes[1] == 0 && classes[2] == 1 && classes[3] == 2,
          "argmax first max: %lld %lld %lld %lld, expected 1 0 1 2", (long long)classes[0],
          (long long)classes[1], (long long)classes[2], (long long)classes[3]);
    /* the tie's later index is not counted as correct */
    const int32_t labels[] = {2, 0, 3, 3};
    double loss;
    int64_t correct;
    qf_softmax_ce(&loss, &correct, NULL, logits, labels, 4, 4);
    CHECK(correct == 1, "n_correct with ties %lld, expected 1", (long long)correct);
}

/* ------------------------------------------------------------------ optim */

/* AdamW for STEPS steps written out in double, the hyper-parameters taken
 * as the float32 values the kernel receives. */
static void test_adamw(void)
{
    enum { N = 60, STEPS = 6 };
    float p[N], m[N], v[N], g[N];
    double pd[N], md[N], vd[N];
    qf_rng rng;
    qf_rng_seed(&rng, 111, 0);
    const float cfg[][3] = {{1e-3f, 0.01f, 1e-8f}, {0.05f, 0.1f, 1e-8f}, {0.01f, 0.0f, 1e-3f}};
    for (int c = 0; c < 3; c++) {
        const float lr = cfg[c][0], wd = cfg[c][1], eps = cfg[c][2], b1 = 0.9f, b2 = 0.999f;
        qf_rng_fill_uniform(&rng, p, N, -1.0f, 1.0f);
        for (int i = 0; i < N; i++) {
            if (i % 5 == 4) p[i] = 0.0f;   /* pruned entries: value, grad, moments all 0 */
            m[i] = v[i] = 0.0f;
            pd[i] = p[i]; md[i] = 0.0; vd[i] = 0.0;
        }
        for (int t = 1; t <= STEPS; t++) {
            for (int i = 0; i < N; i++)
                g[i] = (i % 5 == 4 || (i % 7 == 0 && t == 1)) ? 0.0f : uniform(&rng, -0.1f, 0.1f);
            qf_adamw_update(p, m, v, g, N, lr, b1, b2, eps, wd, t);
            for (int i = 0; i < N; i++) {
                double gi = g[i];
                pd[i] *= 1.0 - (double)lr * (double)wd;
                md[i] = (double)b1 * md[i] + (1.0 - (double)b1) * gi;
                vd[i] = (double)b2 * vd[i] + (1.0 - (double)b2) * gi * gi;
                double bc1 = 1.0 - pow((double)b1, t), bc2 = 1.0 - pow((double)b2, t);
                double denom = sqrt(vd[i]) / sqrt(bc2) + (double)eps;
                pd[i] -= (double)lr / bc1 * md[i] / denom;
            }
        }
        double worst_p = 0.0, worst_m = 0.0, worst_v = 0.0;
        int zero_ok = 1;
        for (int i = 0; i < N; i++) {
            if (i % 5 == 4) {
                zero_ok &= p[i] == 0.0f && m[i] == 0.0f && v[i] == 0.0f;
                continue;
            }
            double ep = fabs(p[i] - pd[i]) / (fabs(pd[i]) + 1e-3);
            /* m sums terms of either sign: error relative to the gradient scale 0.1 */
            double em = fabs(m[i] - md[i]) / 0.1;
            double ev = fabs(v[i] - vd[i]) / fabs(vd[i]);
            if (ep > worst_p) worst_p = ep;
            if (em > worst_m) worst_m = em;
            if (ev > worst_v) worst_v = ev;
        }
        CHECK(worst_p < 1e-6, "AdamW lr %g wd %g: parameter relative error %g", (double)lr,
              (double)wd, worst_p);
        CHECK(worst_m < 1e-6 && worst_v < 1e-6, "AdamW lr %g wd %g: moment errors m %g, "
              "v %g (relative)", (double)lr, (double)wd, worst_m, worst_v);
        CHECK(zero_ok, "AdamW lr %g wd %g: an all-zero (pruned) entry left 0", (double)lr,
              (double)wd);
        if (c == 0)
            printf("AdamW vs double: parameter %.3g, m %.3g, v %.3g (relative)\n", worst_p,
                   worst_m, worst_v);
    }
}

/* SGD with momentum, dampening, nesterov and weight decay, in double. */
static void test_sgd(void)
{
    enum { N = 40, STEPS = 5 };
    float p[N], buf[N], g[N];
    double pd[N], bd[N];
    qf_rng rng;
    qf_rng_seed(&rng, 121, 0);
    const struct { float lr, mu, damp, wd; int nesterov; } cfg[] = {
        {0.1f, 0.0f, 0.0f, 0.0f, 0}, {0.1f, 0.0f, 0.0f, 0.01f, 0}, {0.05f, 0.9f, 0.0f, 0.0f, 0},
        {0.05f, 0.9f, 0.1f, 0.01f, 0}, {0.05f, 0.9f, 0.0f, 1e-3f, 1}, {0.2f, 0.5f, 0.5f, 0.1f, 0},
    };
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        qf_rng_fill_uniform(&rng, p, N, -1.0f, 1.0f);
        for (int i = 0; i < N; i++) {
            if (i % 4 == 1) p[i] = 0.0f;   /* pruned entries */
            buf[i] = i % 3 == 0 ? 123.0f : 0.0f;   /* step 1 must overwrite the buffer */
            pd[i] = p[i];
            bd[i] = 0.0;
        }
        for (int t = 1; t <= STEPS; t++) {
            for (int i = 0; i < N; i++) g[i] = i % 4 == 1 ? 0.0f : uniform(&rng, -1.0f, 1.0f);
            qf_sgd_update(p, buf, g, N, cfg[c].lr, cfg[c].mu, cfg[c].damp, cfg[c].wd,
                          cfg[c].nesterov, t);
            for (int i = 0; i < N; i++) {
                double d = (double)g[i] + (double)cfg[c].wd * pd[i];
                if (cfg[c].mu != 0.0f) {
                    bd[i] = t == 1 ? d : (double)cfg[c].mu * bd[i] +
                                             (1.0 - (double)cfg[c].damp) * d;
                    d = cfg[c].nesterov ? d + (double)cfg[c].mu * bd[i] : bd[i];
                }
                pd[i] -= (double)cfg[c].lr * d;
            }
        }
        double worst = 0.0;
        int zero_ok = 1;
        for (int i = 0; i < N; i++) {
            if (i % 4 == 1) {
                zero_ok &= p[i] == 0.0f && (cfg[c].mu == 0.0f || buf[i] == 0.0f);
                continue;
            }
            double e = fabs(p[i] - pd[i]) / (fabs(pd[i]) + 1e-2);
            if (e > worst) worst = e;
            if (cfg[c].mu != 0.0f) {
                e = fabs(buf[i] - bd[i]) / (fabs(bd[i]) + 1e-2);
                if (e > worst) worst = e;
            }
        }
        CHECK(worst < 1e-5, "SGD config %zu: relative error %g", c, worst);
        CHECK(zero_ok, "SGD config %zu: an all-zero (pruned) entry left 0", c);
    }
}

int main(void)
{
    test_rng_sequences();
    test_rng_uniform();
    test_rng_below();
    test_rng_permutation();
    test_quant_ranges();
    test_quant_spec_check();
    test_rint();
    test_quantize_value();
    test_fake_quant_forward();
    test_fake_quant_backward();
    test_abs_argmax();
    test_abs_percentile();
    test_linear_forward();
    test_linear_backward();
    test_linear_codes();
    test_softmax_ce();
    test_argmax();
    test_adamw();
    test_sgd();
    return CHECK_REPORT();
}
