/* test_sparse.c: the CSR kernels of pruned weight matrices (sparse.h) bit for
 * bit against plain dense loops written here over the matrix with zeros at
 * the pruned entries: the forward in the eight-lane dot-product order, exact
 * integer sums for codes, the backward's sums in ascending order onto what
 * the buffers held; the index itself (gather, scatter, nnz) and the
 * transposed mirror that follows changed values.  Masks from empty to full,
 * shapes across every remainder, kept weights that are exactly 0. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "helpers.h"
#include "quant.h"
#include "rng.h"
#include "sparse.h"

enum { MAX_N = 5, MAX_ROWS = 13, MAX_COLS = 37 };

typedef struct {
    int rows, cols;
    uint8_t mask[MAX_ROWS * MAX_COLS];
    float dense[MAX_ROWS * MAX_COLS];     /* zeros at pruned entries */
    float packed[MAX_ROWS * MAX_COLS];
    qf_csr csr;
} case_t;

/* A random mask of the given density (per mille) and dense values on it; a
 * tenth of the kept values exactly 0.  codes: integers in [-3, 3]. */
static int make_case(case_t *c, int rows, int cols, int density, int codes, qf_rng *rng)
{
    c->rows = rows;
    c->cols = cols;
    for (int i = 0; i < rows * cols; i++) {
        c->mask[i] = (int)qf_rng_below(rng, 1000) < density;
        float v = codes ? (float)((int)qf_rng_below(rng, 7) - 3) : uniform(rng, -1.0f, 1.0f);
        if (qf_rng_below(rng, 10) == 0)
            v = 0.0f;
        c->dense[i] = c->mask[i] ? v : 0.0f;
    }
    if (qf_csr_init(&c->csr, c->mask, rows, cols) != QF_OK)
        return 0;
    qf_csr_gather(c->packed, c->dense, &c->csr);
    return 1;
}

static void test_index(void)
{
    qf_rng rng;
    qf_rng_seed(&rng, 901, 0);
    int bad = 0, cases = 0;
    for (int density = 0; density <= 1000; density += 250) {
        case_t c;
        if (!make_case(&c, 7, 11, density, 0, &rng)) {
            CHECK(0, "qf_csr_init failed");
            continue;
        }
        int64_t kept = 0;
        for (int i = 0; i < 77; i++) kept += c.mask[i];
        bad += c.csr.nnz != kept;
        /* packed holds the kept values row by row, columns ascending */
        int64_t k = 0;
        for (int i = 0; i < 77; i++)
            if (c.mask[i]) bad += c.packed[k++] != c.dense[i];
        float back[77];
        for (int i = 0; i < 77; i++) back[i] = 9.0f;
        qf_csr_scatter(back, c.packed, &c.csr);
        for (int i = 0; i < 77; i++) bad += back[i] != (c.mask[i] ? c.dense[i] : 9.0f);
        qf_csr_free(&c.csr);
        cases++;
    }
    CHECK(bad == 0, "index, gather or scatter wrong (%d mismatches over %d masks)", bad, cases);
    qf_csr empty = {0};
    qf_csr_free(&empty);   /* a zeroed index frees */
}

static void test_kernels(void)
{
    qf_rng rng;
    qf_rng_seed(&rng, 902, 0);
    static float x[MAX_N * MAX_COLS], b[MAX_ROWS], out[MAX_N * MAX_ROWS], want[MAX_N * MAX_ROWS];
    static float dout[MAX_N * MAX_ROWS], dx[MAX_N * MAX_COLS], want_dx[MAX_N * MAX_COLS];
    static float dw[MAX_ROWS * MAX_COLS], want_dw[MAX_ROWS * MAX_COLS], db[MAX_ROWS];
    static float want_db[MAX_ROWS], scale[MAX_ROWS];
    int bad_f = 0, bad_c = 0, bad_dx = 0, bad_dw = 0, bad_db = 0, cases = 0;
    const int densities[4] = {0, 200, 600, 1000};
    for (int d = 0; d < 4; d++)
        for (int rows = 1; rows <= MAX_ROWS; rows += 3)
            for (int cols = 1; cols <= MAX_COLS; cols += 2)
                for (int n = 1; n <= MAX_N; n += 2) {
                    case_t c;
                    if (!make_case(&c, rows, cols, densities[d], 0, &rng)) continue;
                    for (int j = 0; j < n * cols; j++)
                        x[j] = qf_rng_below(&rng, 3) == 0 ? 0.0f : uniform(&rng, -1.0f, 1.0f);
                    for (int j = 0; j < n * rows; j++)
                        dout[j] = qf_rng_below(&rng, 3) == 0 ? 0.0f : uniform(&rng, -1.0f, 1.0f);
                    for (int o = 0; o < rows; o++) {
                        b[o] = uniform(&rng, -1.0f, 1.0f);
                        db[o] = want_db[o] = uniform(&rng, -1.0f, 1.0f);
                    }
                    /* forward, float */
                    for (int s = 0; s < n; s++)
                        for (int o = 0; o < rows; o++)
                            want[s * rows + o] = ref_dot(x + s * cols, c.dense + o * cols, cols) + b[o];
                    qf_csr_forward(out, x, c.packed, b, &c.csr, n);
                    bad_f += !same_bits(out, want, n * rows);
                    /* backward: dw accumulates onto packed values */
                    for (int64_t k = 0; k < c.csr.nnz; k++) dw[k] = uniform(&rng, -1.0f, 1.0f);
                    memset(want_dw, 0, sizeof want_dw);
                    qf_csr_scatter(want_dw, dw, &c.csr);
                    for (int s = 0; s < n; s++)
                        for (int i = 0; i < cols; i++) {
                            float acc = 0.0f;
                            for (int o = 0; o < rows; o++)
                                acc += dout[s * rows + o] * c.dense[o * cols + i];
                            want_dx[s * cols + i] = acc;
                        }
                    for (int s = 0; s < n; s++)
                        for (int o = 0; o < rows; o++) {
                            for (int i = 0; i < cols; i++)
                                want_dw[o * cols + i] += dout[s * rows + o] * x[s * cols + i];
                            want_db[o] += dout[s * rows + o];
                        }
                    qf_csr_backward(dx, dw, db, dout, x, c.packed, &c.csr, n);
                    float got_dw[MAX_ROWS * MAX_COLS], want_packed[MAX_ROWS * MAX_COLS];
                    qf_csr_gather(want_packed, want_dw, &c.csr);
                    memcpy(got_dw, dw, sizeof(float) * (size_t)c.csr.nnz);
                    bad_dx += !same_bits(dx, want_dx, n * cols);
                    bad_dw += !same_bits(got_dw, want_packed, c.csr.nnz);
                    bad_db += !same_bits(db, want_db, rows);
                    qf_csr_free(&c.csr);
                    /* integer codes: exact sums and the epilogue */
                    if (!make_case(&c, rows, cols, densities[d], 1, &rng)) continue;
                    for (int j = 0; j < n * cols; j++)
                        x[j] = (float)((int)qf_rng_below(&rng, 8) - 1);
                    for (int o = 0; o < rows; o++) scale[o] = uniform(&rng, 0.01f, 0.5f);
                    for (int s = 0; s < n; s++)
                        for (int o = 0; o < rows; o++) {
                            int64_t acc = 0;
                            for (int i = 0; i < cols; i++)
                                acc += (int64_t)x[s * cols + i] * (int64_t)c.dense[o * cols + i];
                            want[s * rows + o] = qf_affine_epilogue(acc, scale[o], b[o]);
                        }
                    for (int exact = 0; exact < 2; exact++) {
                        qf_csr_forward_codes(out, x, c.packed, scale, b, exact, &c.csr, n);
                        bad_c += !same_bits(out, want, n * rows);
                    }
                    qf_csr_free(&c.csr);
                    cases++;
                }
    CHECK(bad_f == 0, "qf_csr_forward differs from the dense lane order in %d of %d cases",
          bad_f, cases);
    CHECK(bad_c == 0, "qf_csr_forward_codes differs from the exact sums in %d cases", bad_c);
    CHECK(bad_dx == 0, "qf_csr_backward dx differs in %d of %d cases", bad_dx, cases);
    CHECK(bad_dw == 0, "qf_csr_backward dw differs in %d of %d cases", bad_dw, cases);
    CHECK(bad_db == 0, "qf_csr_backward db differs in %d of %d cases", bad_db, cases);
}

/* dense_t must equal the transpose of the packed values after each round of
 * random changes (a few, many, none), written incrementally. */
static void test_mirror(void)
{
    qf_rng rng;
    qf_rng_seed(&rng, 903, 0);
    int bad = 0, rounds = 0;
    for (int density = 100; density <= 1000; density += 450) {
        case_t c;
        if (!make_case(&c, MAX_ROWS, MAX_COLS, density, 1, &rng)) continue;
        float dense_t[MAX_COLS * MAX_ROWS], mirror[MAX_ROWS * MAX_COLS];
        for (int i = 0; i < MAX_COLS * MAX_ROWS; i++) dense_t[i] = 5.0f;   /* stale */
        for (int round = 0; round < 6; round++) {
            int changes = round == 0 ? 0 : round == 1 ? 1 : round == 5 ? 0 : (int)c.csr.nnz / round;
            for (int j = 0; j < changes && c.csr.nnz > 0; j++)
                c.packed[qf_rng_below(&rng, (uint64_t)c.csr.nnz)] =
                    (float)((int)qf_rng_below(&rng, 7) - 3);
            qf_csr_mirror_transposed(dense_t, mirror, c.packed, &c.csr, round == 0);
            float dense[MAX_ROWS * MAX_COLS] = {0};
            qf_csr_scatter(dense, c.packed, &c.csr);
            for (int r = 0; r < MAX_ROWS; r++)
                for (int col = 0; col < MAX_COLS; col++)
                    bad += dense_t[col * MAX_ROWS + r] != dense[r * MAX_COLS + col];
            rounds++;
        }
        qf_csr_free(&c.csr);
    }
    CHECK(bad == 0, "the transposed mirror differs from the packed values (%d entries over %d "
          "rounds)", bad, rounds);
}

int main(void)
{
    test_index();
    test_kernels();
    test_mirror();
    return CHECK_REPORT();
}
