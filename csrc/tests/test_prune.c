/* test_prune.c: the pruning mask kernels against naive references.
 *
 * The reference prunes one entry at a time: the kept entry of smallest |w|,
 * the lowest index among equals, O(n^2) and obviously right.  Data include
 * random weights, heavy ties (small integers, 0.0 and -0.0), subnormals,
 * repeated pruning of a pruned mask, in-place masks and every error code. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "prune.h"
#include "rng.h"

#define N_MAX 400

/* Mask `amount` entries of mask (n), in place, one smallest |w| at a time. */
static void reference_prune(uint8_t *mask, const float *w, int64_t n, int64_t amount)
{
    for (int64_t j = 0; j < amount; j++) {
        int64_t best = -1;
        for (int64_t i = 0; i < n; i++)
            if (mask[i] && (best < 0 || fabsf(w[i]) < fabsf(w[best]))) best = i;
        mask[best] = 0;
    }
}

static int64_t count_ones(const uint8_t *mask, int64_t n)
{
    int64_t c = 0;
    for (int64_t i = 0; i < n; i++) c += mask[i] == 1;
    return c;
}

/* Weights of one of three kinds: 0 random U(-1,1), 1 small integers with
 * many ties and signed zeros, 2 mixed subnormal / huge magnitudes. */
static void fill_weights(float *w, int64_t n, int kind, qf_rng *rng)
{
    for (int64_t i = 0; i < n; i++) {
        float u = qf_rng_uniform01(rng) * 2.0f - 1.0f;
        if (kind == 0) w[i] = u;
        else if (kind == 1) w[i] = (float)((int)qf_rng_below(rng, 5) - 2) * (u < 0 ? -1.0f : 1.0f);
        else w[i] = u * (qf_rng_below(rng, 2) ? 1e-40f : 1e30f);
    }
}

static void random_mask(uint8_t *mask, int64_t n, qf_rng *rng)
{
    for (int64_t i = 0; i < n; i++) mask[i] = qf_rng_below(rng, 3) != 0;
}

static void test_l1_against_reference(void)
{
    static float w[N_MAX];
    static uint8_t mask_in[N_MAX], got[N_MAX], want[N_MAX];
    static uint64_t scratch[N_MAX];
    qf_rng rng;
    qf_rng_seed(&rng, 1, 0);
    for (int trial = 0; trial < 300; trial++) {
        /* the modulo makes the bound visible to the compiler's overflow warnings */
        size_t len = (size_t)(qf_rng_below(&rng, N_MAX + 1) % (N_MAX + 1));
        int64_t n = (int64_t)len;
        int kind = trial % 3, with_mask = (trial / 3) % 2;
        fill_weights(w, n, kind, &rng);
        if (with_mask) random_mask(mask_in, n, &rng);
        else memset(mask_in, 1, len);
        int64_t kept = count_ones(mask_in, n);
        int64_t amount = (int64_t)qf_rng_below(&rng, (uint64_t)kept + 1);
        for (int64_t i = 0; i < n; i++) scratch[i] = qf_rng_next(&rng);  /* garbage */
        memcpy(want, mask_in, len);
        reference_prune(want, w, n, amount);
        qf_status st = qf_prune_l1_unstructured(got, scratch, w, with_mask ? mask_in : NULL,
                                                n, amount);
        CHECK(st == QF_OK, "trial %d: status %d", trial, st);
        CHECK(memcmp(got, want, len) == 0, "trial %d (n %lld, kind %d, mask %d, amount %lld): "
              "mask differs from the reference", trial, (long long)n, kind, with_mask,
              (long long)amount);
        CHECK(count_ones(got, n) == kept - amount, "trial %d: %lld kept, expected %lld",
              trial, (long long)count_ones(got, n), (long long)(kept - amount));
    }
}

/* Pruning twice equals pruning the sum at once, and earlier zeros stay. */
static void test_l1_repeated_and_in_place(void)
{
    static float w[N_MAX];
    static uint8_t mask[N_MAX], once[N_MAX], want[N_MAX];
    static uint64_t scratch[N_MAX];
    qf_rng rng;
    qf_rng_seed(&rng, 2, 0);
    for (int trial = 0; trial < 100; trial++) {
        int64_t n = 1 + (int64_t)qf_rng_below(&rng, N_MAX);
        fill_weights(w, n, trial % 3, &rng);
        int64_t a1 = (int64_t)qf_rng_below(&rng, (uint64_t)n + 1);
        int64_t a2 = (int64_t)qf_rng_below(&rng, (uint64_t)(n - a1) + 1);
        CHECK(qf_prune_l1_unstructured(mask, scratch, w, NULL, n, a1) == QF_OK, "first prune");
        memcpy(once, mask, (size_t)n);
        CHECK(qf_prune_l1_unstructured(mask, scratch, w, mask, n, a2) == QF_OK,
              "second prune in place");
        memset(want, 1, (size_t)n);
        reference_prune(want, w, n, a1 + a2);
        CHECK(memcmp(mask, want, (size_t)n) == 0, "trial %d: two prunes differ from one", trial);
        int kept_zeros = 1;
        for (int64_t i = 0; i < n; i++) kept_zeros &= once[i] || !mask[i];
        CHECK(kept_zeros, "trial %d: an entry masked by the first prune came back", trial);
    }
}

/* A masked entry's value never matters, even NaN. */
static void test_l1_ignores_masked_values(void)
{
    float w[6] = {NAN, 0.5f, INFINITY, -0.1f, 0.3f, 0.0f};
    uint8_t mask_in[6] = {0, 1, 0, 1, 1, 1}, got[6];
    uint8_t want[6] = {0, 1, 0, 0, 1, 0};
    uint64_t scratch[6];
    CHECK(qf_prune_l1_unstructured(got, scratch, w, mask_in, 6, 2) == QF_OK, "masked NaN/inf");
    CHECK(memcmp(got, want, 6) == 0, "pruned the wrong entries among finite kept ones");
}

/* Ties: equal |w| goes lowest index first, 0.0 and -0.0 are equal. */
static void test_l1_ties(void)
{
    float w[6] = {1.0f, -0.0f, -1.0f, 0.0f, 1.0f, -0.0f};
    uint8_t got[6], want[6] = {0, 0, 1, 0, 1, 0};
    uint64_t scratch[6];
    CHECK(qf_prune_l1_unstructured(got, scratch, w, NULL, 6, 4) == QF_OK, "ties");
    CHECK(memcmp(got, want, 6) == 0, "ties not broken by lowest index");
}

static void test_l1_errors(void)
{
    float w[4] = {0.1f, 0.2f, NAN, 0.4f};
    uint8_t mask_in[4] = {1, 1, 0, 1}, bad_mask[4] = {1, 2, 0, 1}, out[4];
    uint64_t scratch[4];
    const uint8_t sentinel[4] = {7, 7, 7, 7};
    memcpy(out, sentinel, 4);
    CHECK(qf_prune_l1_unstructured(out, scratch, w, mask_in, 4, -1) == QF_ERR_ARG, "amount -1");
    CHECK(qf_prune_l1_unstructured(out, scratch, w, mask_in, 4, 4) == QF_ERR_ARG,
          "amount above the 3 kept entries");
    CHECK(qf_prune_l1_unstructured(out, scratch, w, bad_mask, 4, 1) == QF_ERR_ARG, "mask value 2");
    CHECK(qf_prune_l1_unstructured(out, scratch, w, NULL, 4, 1) == QF_ERR_NONFINITE,
          "kept NaN");
    CHECK(qf_prune_l1_unstructured(out, scratch, w, mask_in, -1, 0) == QF_ERR_SHAPE, "n -1");
    CHECK(qf_prune_l1_unstructured(out, scratch, w, mask_in, QF_PRUNE_MAX_ENTRIES + 1, 0) ==
              QF_ERR_SHAPE, "n too large");
    CHECK(memcmp(out, sentinel, 4) == 0, "output changed on error");
    CHECK(qf_prune_l1_unstructured(out, scratch, w, mask_in, 4, 3) == QF_OK, "amount = kept");
    CHECK(count_ones(out, 4) == 0, "amount = kept leaves nothing");
    CHECK(qf_prune_l1_unstructured(NULL, NULL, NULL, NULL, 0, 0) == QF_OK, "empty tensor");
    CHECK(qf_prune_l1_unstructured(NULL, NULL, NULL, NULL, 0, 1) == QF_ERR_ARG,
          "amount 1 of an empty tensor");
}

static void test_fan_in_against_reference(void)
{
    enum { ROWS = 12, COLS = 40 };
    static float w[ROWS * COLS];
    static uint8_t mask_in[ROWS * COLS], got[ROWS * COLS], want[ROWS * COLS];
    static uint64_t scratch[COLS];
    qf_rng rng;
    qf_rng_seed(&rng, 3, 0);
    for (int trial = 0; trial < 200; trial++) {
        int64_t rows = (int64_t)qf_rng_below(&rng, ROWS + 1);
        int64_t cols = (int64_t)qf_rng_below(&rng, COLS + 1);
        int64_t max_non_zero = 1 + (int64_t)qf_rng_below(&rng, COLS + 2);
        int kind = trial % 3, with_mask = (trial / 3) % 2;
        fill_weights(w, rows * cols, kind, &rng);
        if (with_mask) random_mask(mask_in, rows * cols, &rng);
        else memset(mask_in, 1, (size_t)(rows * cols));
        memcpy(want, mask_in, (size_t)(rows * cols));
        for (int64_t r = 0; r < rows; r++) {
            int64_t kept = count_ones(want + r * cols, cols);
            if (kept > max_non_zero)
                reference_prune(want + r * cols, w + r * cols, cols, kept - max_non_zero);
        }
        qf_status st = qf_prune_fan_in(got, scratch, w, with_mask ? mask_in : NULL, rows, cols,
                                       max_non_zero);
        CHECK(st == QF_OK, "trial %d: status %d", trial, st);
        CHECK(memcmp(got, want, (size_t)(rows * cols)) == 0,
              "trial %d (%lld x %lld, max %lld, kind %d, mask %d): differs from the reference",
              trial, (long long)rows, (long long)cols, (long long)max_non_zero, kind, with_mask);
        int bound = 1;
        for (int64_t r = 0; r < rows; r++) {
            int64_t kept_in = count_ones(mask_in + r * cols, cols);
            int64_t kept_out = count_ones(got + r * cols, cols);
            bound &= kept_out == (kept_in < max_non_zero ? kept_in : max_non_zero);
        }
        CHECK(bound, "trial %d: a row keeps the wrong number of entries", trial);
    }
}

static void test_fan_in_in_place_and_errors(void)
{
    float w[2 * 3] = {0.3f, -0.1f, 0.2f, 0.0f, 5.0f, -5.0f};
    uint8_t mask[6] = {1, 1, 1, 1, 1, 1}, want[6] = {1, 0, 0, 0, 0, 1}, out[6];
    uint64_t scratch[3];
    CHECK(qf_prune_fan_in(mask, scratch, w, mask, 2, 3, 1) == QF_OK, "in place");
    CHECK(memcmp(mask, want, 6) == 0, "in-place fan-in (tie 5 / -5: lower index pruned first)");
    const uint8_t sentinel[6] = {7, 7, 7, 7, 7, 7};
    uint8_t bad_mask[6] = {1, 1, 3, 1, 1, 1};
    memcpy(out, sentinel, 6);
    CHECK(qf_prune_fan_in(out, scratch, w, NULL, 2, 3, 0) == QF_ERR_ARG, "max_non_zero 0");
    CHECK(qf_prune_fan_in(out, scratch, w, bad_mask, 2, 3, 1) == QF_ERR_ARG, "mask value 3");
    CHECK(qf_prune_fan_in(out, scratch, w, NULL, -1, 3, 1) == QF_ERR_SHAPE, "rows -1");
    CHECK(qf_prune_fan_in(out, scratch, w, NULL, 2, -3, 1) == QF_ERR_SHAPE, "cols -3");
    CHECK(qf_prune_fan_in(out, scratch, w, NULL, INT64_MAX, 2, 1) == QF_ERR_SHAPE,
          "rows * cols overflows");
    w[5] = NAN;
    CHECK(qf_prune_fan_in(out, scratch, w, NULL, 2, 3, 1) == QF_ERR_NONFINITE, "kept NaN");
    CHECK(memcmp(out, sentinel, 6) == 0, "output changed on error");
    CHECK(qf_prune_fan_in(NULL, NULL, NULL, NULL, 0, 5, 1) == QF_OK, "no rows");
}

static void test_count_kept(void)
{
    uint8_t mask[5] = {1, 0, 1, 1, 0};
    CHECK(qf_prune_count_kept(mask, 5) == 3, "count of a mask");
    CHECK(qf_prune_count_kept(NULL, 5) == 5, "NULL mask keeps all");
}

int main(void)
{
    test_l1_against_reference();
    test_l1_repeated_and_in_place();
    test_l1_ignores_masked_values();
    test_l1_ties();
    test_l1_errors();
    test_fan_in_against_reference();
    test_fan_in_in_place_and_errors();
    test_count_kept();
    return CHECK_REPORT();
}
