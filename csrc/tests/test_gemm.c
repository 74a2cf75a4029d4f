/* test_gemm.c: the register-blocked matrix product (gemm.c) bit for bit
 * against a plain triple loop written here from the rule gemm.h documents:
 * every element of C is one running sum c = c + a[i, p] b[p, j] over
 * p = 0 .. k - 1, from +0 (or from C when accumulating).  The optimised
 * build runs the AVX2 kernel and the sanitizer build the baseline one, so
 * the two builds are held to the same bits.  Shapes sweep every block
 * remainder (rows, column vectors and the tail, p past the cache block),
 * strides read A and its transpose, and rows of C must not depend on how the
 * rows of A are split (the batch size of a convolution).  qf_gemm_scaled_a is
 * held to the bits of the plain loop on a scaled copy of A. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "gemm.h"
#include "helpers.h"
#include "rng.h"

static void fill(float *v, int64_t n, qf_rng *rng)
{
    for (int64_t i = 0; i < n; i++)
        v[i] = qf_rng_below(rng, 4) == 0 ? 0.0f : uniform(rng, -1.0f, 1.0f);
}

static void ref_gemm(float *c, int64_t ldc, const float *a, int64_t a_rs, int64_t a_cs,
                     const float *b, int64_t ldb, int64_t m, int64_t n, int64_t k, int acc)
{
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            volatile float s = acc ? c[i * ldc + j] : 0.0f;   /* no reassociation */
            for (int64_t p = 0; p < k; p++) {
                float prod = a[i * a_rs + p * a_cs] * b[p * ldb + j];
                s = s + prod;
            }
            c[i * ldc + j] = s;
        }
}

static void check_shape(qf_rng *rng, int64_t m, int64_t n, int64_t k, int transposed, int acc)
{
    int64_t lda = k + 3, ldb = n + 2, ldc = n + 5;   /* leading dims wider than the data */
    int64_t a_len = transposed ? k * (m + 3) : m * lda;
    float *a = malloc(sizeof(float) * (size_t)(a_len + 1));
    float *b = malloc(sizeof(float) * (size_t)(k * ldb + 1));
    float *c = malloc(sizeof(float) * (size_t)(m * ldc + 1));
    float *want = malloc(sizeof(float) * (size_t)(m * ldc + 1));
    fill(a, a_len, rng);
    fill(b, k * ldb, rng);
    fill(c, m * ldc, rng);
    memcpy(want, c, sizeof(float) * (size_t)(m * ldc));
    int64_t a_rs = transposed ? 1 : lda, a_cs = transposed ? m + 3 : 1;
    qf_gemm(c, ldc, a, a_rs, a_cs, b, ldb, m, n, k, acc);
    ref_gemm(want, ldc, a, a_rs, a_cs, b, ldb, m, n, k, acc);
    CHECK(same_bits(c, want, m * ldc), "m=%lld n=%lld k=%lld transposed=%d acc=%d", (long long)m,
          (long long)n, (long long)k, transposed, acc);
    /* qf_gemm_scaled_a: the bits of the product of a scaled copy of A, here of
     * integer codes as the convolutions' patches are (and of floats) */
    float scale = 0.37f;
    float *scaled = malloc(sizeof(float) * (size_t)(a_len + 1));
    for (int64_t t = 0; t < a_len; t++) {
        if (acc)
            a[t] = (float)((int)qf_rng_below(rng, 8) - 2);
        scaled[t] = scale * a[t];
    }
    fill(c, m * ldc, rng);
    memcpy(want, c, sizeof(float) * (size_t)(m * ldc));
    qf_gemm_scaled_a(c, ldc, a, a_rs, a_cs, scale, b, ldb, m, n, k, acc);
    ref_gemm(want, ldc, scaled, a_rs, a_cs, b, ldb, m, n, k, acc);
    CHECK(same_bits(c, want, m * ldc), "scaled A m=%lld n=%lld k=%lld transposed=%d acc=%d",
          (long long)m, (long long)n, (long long)k, transposed, acc);
    free(scaled);
    if (m >= 3 && !transposed) {   /* rows computed in two calls: the same bits */
        int64_t split = m / 3;
        memcpy(c, want, sizeof(float) * (size_t)(m * ldc));
        qf_gemm(c, ldc, a, a_rs, a_cs, b, ldb, split, n, k, 0);
        qf_gemm(c + split * ldc, ldc, a + split * a_rs, a_rs, a_cs, b, ldb, m - split, n, k, 0);
        ref_gemm(want, ldc, a, a_rs, a_cs, b, ldb, m, n, k, 0);
        CHECK(same_bits(c, want, m * ldc), "split rows m=%lld n=%lld k=%lld", (long long)m,
              (long long)n, (long long)k);
    }
    free(a);
    free(b);
    free(c);
    free(want);
}

int main(void)
{
    qf_rng rng;
    qf_rng_seed(&rng, 11, 0);
    const int64_t ms[] = {1, 2, 5, 6, 7, 13, 50};
    const int64_t ns[] = {1, 3, 8, 9, 16, 17, 24, 33, 64};
    const int64_t ks[] = {0, 1, 9, 31, 300};
    for (size_t i = 0; i < sizeof ms / sizeof *ms; i++)
        for (size_t j = 0; j < sizeof ns / sizeof *ns; j++)
            for (size_t p = 0; p < sizeof ks / sizeof *ks; p++)
                for (int t = 0; t < 2; t++)
                    check_shape(&rng, ms[i], ns[j], ks[p], t, (int)((i + j + p) % 2));
    /* integer codes: exact sums, equal to the integers */
    float a[4 * 5], b[5 * 3], c[4 * 3];
    for (int i = 0; i < 20; i++)
        a[i] = (float)((i * 7) % 9 - 4);
    for (int i = 0; i < 15; i++)
        b[i] = (float)((i * 5) % 7 - 3);
    qf_gemm(c, 3, a, 5, 1, b, 3, 4, 3, 5, 0);
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 3; j++) {
            long s = 0;
            for (int p = 0; p < 5; p++)
                s += (long)a[i * 5 + p] * (long)b[p * 3 + j];
            CHECK(c[i * 3 + j] == (float)s, "codes (%d, %d): %g vs %ld", i, j, c[i * 3 + j], s);
        }
    /* qf_gemm_exact (fused multiply-adds where available) on integer codes: the bits of
     * qf_gemm and of the exact integer sums, every block remainder, accumulating or not */
    const int64_t em[] = {1, 6, 7, 29}, en[] = {3, 16, 17, 40}, ek[] = {1, 9, 300};
    for (size_t i = 0; i < 4; i++)
        for (size_t j = 0; j < 4; j++)
            for (size_t p = 0; p < 3; p++) {
                int64_t m = em[i], n = en[j], k = ek[p];
                float *x = malloc(sizeof(float) * (size_t)(m * k)), *y = malloc(sizeof(float) * (size_t)(k * n));
                float *c1 = malloc(sizeof(float) * (size_t)(m * n)), *c2 = malloc(sizeof(float) * (size_t)(m * n));
                for (int64_t t = 0; t < m * k; t++)
                    x[t] = (float)qf_rng_below(&rng, 8);                       /* 3-bit codes */
                for (int64_t t = 0; t < k * n; t++)
                    y[t] = (float)((int)qf_rng_below(&rng, 7) - 3);
                for (int64_t t = 0; t < m * n; t++)
                    c1[t] = c2[t] = (float)((int)qf_rng_below(&rng, 5) - 2);
                int acc = (int)(i + j) % 2;
                qf_gemm_exact(c1, n, x, k, 1, y, n, m, n, k, acc);
                qf_gemm(c2, n, x, k, 1, y, n, m, n, k, acc);
                CHECK(same_bits(c1, c2, m * n), "exact m=%lld n=%lld k=%lld", (long long)m,
                      (long long)n, (long long)k);
                free(x); free(y); free(c1); free(c2);
            }
    return CHECK_REPORT();
}
