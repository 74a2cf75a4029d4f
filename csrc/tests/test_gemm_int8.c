/* test_gemm_int8.c: the 8-bit integer product (gemm_int8.c), on its
 * dispatched path (AVX2 where the CPU has it) and its portable path, bit for
 * bit against an int64 sum written here from the formula of gemm_int8.h.
 * Shapes sweep every lane count 1..64 (tails of the 16-lane registers and
 * of their 8-lane halves), 1..3 rows, 0..40 pairs, several positions with
 * strides; operands reach the extremes the bound allows (u8 255, s8 -128 and
 * 127, int16 sums near 2^15); lanes and rows past the call are not written.
 * The codes variant (qf_gemm_int8_steps) counts the same sums against 0 to
 * 16 thresholds per row, drawn next to the sums and at the int16 extremes;
 * the pooled variant (qf_gemm_int8_pooled) sums those counts over windows of
 * the positions and counts the sums again, or not. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "gemm_int8.h"
#include "helpers.h"
#include "rng.h"

#define SENTINEL -12345.0f

typedef struct {
    int rows;
    int64_t pairs, ny, nx, y_step, x_step, lanes, x_rows;
    int16_t *w;        /* (pairs, QF_GEMM_INT8_ROWS) */
    int64_t *off;      /* (pairs) */
    int32_t corr[QF_GEMM_INT8_ROWS];
    uint8_t *x;        /* (x_rows, 2 Lp) */
} problem;

static int8_t low(int16_t pair) { return (int8_t)(uint8_t)((uint16_t)pair & 0xff); }
static int8_t high(int16_t pair) { return (int8_t)(uint8_t)((uint16_t)pair >> 8); }

/* The formula of gemm_int8.h in int64. */
static void reference(float *d, int64_t ldd, const problem *pb)
{
    int64_t lp = (pb->lanes + 15) / 16 * 16;
    for (int i = 0; i < pb->rows; i++)
        for (int64_t jy = 0; jy < pb->ny; jy++)
            for (int64_t jx = 0; jx < pb->nx; jx++)
                for (int64_t s = 0; s < pb->lanes; s++) {
                    int64_t base = jy * pb->y_step + jx * pb->x_step, sum = pb->corr[i];
                    for (int64_t q = 0; q < pb->pairs; q++) {
                        const uint8_t *xr = pb->x + (base + pb->off[q]) * 2 * lp + 2 * s;
                        int16_t pr = pb->w[q * QF_GEMM_INT8_ROWS + i];
                        sum += (int64_t)low(pr) * xr[0] + (int64_t)high(pr) * xr[1];
                    }
                    d[i * ldd + (jy * pb->nx + jx) * pb->lanes + s] = (float)sum;
                }
}

/* The codes variant: base[i] + #{k : sum - corr[i] > gt[i][k]} from the
 * sums `want` (corr included) of the same problem. */
static void reference_steps(float *d, const float *want, int64_t ldd, const problem *pb,
                            const int16_t *gt, int n_steps, const float *base)
{
    for (int i = 0; i < pb->rows; i++)
        for (int64_t j = 0; j < pb->ny * pb->nx * pb->lanes; j++) {
            int64_t sum = (int64_t)want[i * ldd + j] - pb->corr[i], n = 0;
            for (int k = 0; k < n_steps; k++)
                n += sum > gt[i * QF_GEMM_INT8_MAX_STEPS + k];
            d[i * ldd + j] = base[i] + (float)n;
        }
}

/* Weights whose |w0| + |w1| summed over the pairs stays within budget per
 * row, with the extremes -128 and 127 when the budget allows. */
static void fill_weights(problem *pb, qf_rng *rng, int64_t budget)
{
    for (int i = 0; i < QF_GEMM_INT8_ROWS; i++) {
        int64_t left = budget;
        for (int64_t q = 0; q < pb->pairs; q++) {
            int64_t v[2];
            for (int b = 0; b < 2; b++) {
                int64_t cap = left < 128 ? left : 128;
                int64_t mag = qf_rng_below(rng, 5) == 0 ? cap : (int64_t)qf_rng_below(rng, (uint32_t)cap + 1);
                int neg = qf_rng_below(rng, 2);
                if (!neg && mag == 128)
                    mag = 127;
                v[b] = neg ? -mag : mag;
                left -= mag;
            }
            uint16_t pr = (uint16_t)((uint8_t)(int8_t)v[0] | (uint16_t)(uint8_t)(int8_t)v[1] << 8);
            pb->w[q * QF_GEMM_INT8_ROWS + i] = (int16_t)pr;
        }
    }
}

/* The pooled variant on the positions of the same problem grouped in
 * windows of kh x kw (1 x 1 included): per window the codes' count sum,
 * counted again against thresholds gt2 near those sums (or not), from the
 * sums `want` of the whole problem. */
static void check_pooled(qf_rng *rng, const problem *pb, const float *want, int64_t ldd,
                         const int16_t *gt, int n_steps, const float *base)
{
    int kh = 1 + (int)qf_rng_below(rng, (uint32_t)pb->ny), kw = 1 + (int)qf_rng_below(rng, (uint32_t)pb->nx);
    int64_t npx = pb->nx / kw, lanes = pb->lanes, len = QF_GEMM_INT8_ROWS * ldd;
    int n_steps2 = (int)qf_rng_below(rng, QF_GEMM_INT8_MAX_STEPS + 1);
    int16_t gt2[QF_GEMM_INT8_ROWS * QF_GEMM_INT8_MAX_STEPS];
    for (int i = 0; i < QF_GEMM_INT8_ROWS; i++)
        for (int k = 0; k < QF_GEMM_INT8_MAX_STEPS; k++)
            gt2[i * QF_GEMM_INT8_MAX_STEPS + k] =
                (int16_t)((int)qf_rng_below(rng, (uint32_t)(kh * kw * n_steps + 3)) - 2);
    float *want_pooled = malloc(sizeof(float) * (size_t)len);
    float *got = malloc(sizeof(float) * (size_t)len);
    for (int again = 0; again < 2; again++) {
        for (int64_t j = 0; j < len; j++)
            want_pooled[j] = SENTINEL;
        for (int i = 0; i < pb->rows; i++)
            for (int64_t px = 0; px < npx; px++)
                for (int64_t s = 0; s < lanes; s++) {
                    int64_t total = 0;
                    for (int ky = 0; ky < kh; ky++)
                        for (int kx = 0; kx < kw; kx++) {
                            int64_t at = (ky * pb->nx + px * kw + kx) * lanes + s;
                            int64_t sum = (int64_t)want[i * ldd + at] - pb->corr[i];
                            for (int k = 0; k < n_steps; k++)
                                total += sum > gt[i * QF_GEMM_INT8_MAX_STEPS + k];
                        }
                    int64_t code = total;
                    if (again) {
                        code = 0;
                        for (int k = 0; k < n_steps2; k++)
                            code += total > gt2[i * QF_GEMM_INT8_MAX_STEPS + k];
                    }
                    want_pooled[i * ldd + px * lanes + s] = base[i] + (float)code;
                }
        for (int path = 0; path < 2; path++) {
            for (int64_t j = 0; j < len; j++)
                got[j] = SENTINEL;
            (path ? qf_gemm_int8_pooled_portable : qf_gemm_int8_pooled)(
                got, ldd, pb->rows, gt, n_steps, again ? gt2 : NULL, n_steps2, base, kh, kw,
                pb->w, pb->off, pb->pairs, pb->x, npx, pb->y_step, pb->x_step, lanes);
            CHECK(same_bits(got, want_pooled, len), "%s pooled: rows=%d pairs=%lld lanes=%lld "
                  "window %dx%d n_steps=%d again=%d", path ? "portable" : "dispatched", pb->rows,
                  (long long)pb->pairs, (long long)lanes, kh, kw, n_steps, again);
        }
    }
    free(want_pooled);
    free(got);
}

static void check_problem(qf_rng *rng, int rows, int64_t pairs, int64_t ny, int64_t nx,
                          int64_t lanes, int xmax)
{
    problem pb = {rows, pairs, ny, nx, 0, 0, lanes, 0, NULL, NULL, {0}, NULL};
    pb.x_step = 1 + (int64_t)qf_rng_below(rng, 2);
    pb.y_step = nx * pb.x_step + (int64_t)qf_rng_below(rng, 3);
    int64_t span = 3 * pairs + 1;
    pb.x_rows = (ny - 1) * pb.y_step + (nx - 1) * pb.x_step + span;
    int64_t lp = (lanes + 15) / 16 * 16;
    pb.w = malloc(sizeof(int16_t) * (size_t)(pairs * QF_GEMM_INT8_ROWS + 1));
    pb.off = malloc(sizeof(int64_t) * (size_t)(pairs + 1));
    pb.x = malloc((size_t)(pb.x_rows * 2 * lp));
    for (int64_t q = 0; q < pairs; q++)
        pb.off[q] = (int64_t)qf_rng_below(rng, (uint32_t)span);
    for (int64_t j = 0; j < pb.x_rows * 2 * lp; j++)
        pb.x[j] = qf_rng_below(rng, 4) == 0 ? (uint8_t)xmax : (uint8_t)qf_rng_below(rng, (uint32_t)xmax + 1);
    fill_weights(&pb, rng, xmax > 0 ? 32767 / xmax : 32767);
    for (int i = 0; i < QF_GEMM_INT8_ROWS; i++)
        pb.corr[i] = (int32_t)qf_rng_below(rng, 1 << 21) - (1 << 20);
    int64_t ldd = ny * nx * lanes + 3, len = QF_GEMM_INT8_ROWS * ldd;
    float *want = malloc(sizeof(float) * (size_t)len), *got = malloc(sizeof(float) * (size_t)len);
    for (int64_t j = 0; j < len; j++)
        want[j] = SENTINEL;
    reference(want, ldd, &pb);
    for (int path = 0; path < 2; path++) {
        for (int64_t j = 0; j < len; j++)
            got[j] = SENTINEL;
        (path ? qf_gemm_int8_lanes_portable : qf_gemm_int8_lanes)(
            got, ldd, rows, pb.corr, pb.w, pb.off, pairs, pb.x, ny, nx, pb.y_step, pb.x_step,
            lanes);
        CHECK(same_bits(got, want, len), "%s: rows=%d pairs=%lld ny=%lld nx=%lld lanes=%lld "
              "xmax=%d", path ? "portable" : "dispatched", rows, (long long)pairs,
              (long long)ny, (long long)nx, (long long)lanes, xmax);
    }
    /* the same sums counted against thresholds: near the sums, and the int16 extremes */
    int n_steps = (int)qf_rng_below(rng, QF_GEMM_INT8_MAX_STEPS + 1);
    int16_t gt[QF_GEMM_INT8_ROWS * QF_GEMM_INT8_MAX_STEPS];
    float base[QF_GEMM_INT8_ROWS], *want_codes = malloc(sizeof(float) * (size_t)len);
    for (int i = 0; i < QF_GEMM_INT8_ROWS; i++) {
        base[i] = (float)qf_rng_below(rng, 9) - 4.0f;
        for (int k = 0; k < QF_GEMM_INT8_MAX_STEPS; k++) {
            int64_t pick = (int64_t)qf_rng_below(rng, (uint64_t)(ny * nx * lanes));
            int64_t v = (int64_t)want[i < rows ? i * ldd + pick : pick] - pb.corr[i < rows ? i : 0];
            v += (int64_t)qf_rng_below(rng, 5) - 2;
            int r = (int)qf_rng_below(rng, 8);
            v = r == 0 ? -32768 : r == 1 ? 32767 : v;
            gt[i * QF_GEMM_INT8_MAX_STEPS + k] = (int16_t)(v < -32768 ? -32768 : v > 32767 ? 32767 : v);
        }
    }
    for (int64_t j = 0; j < len; j++)
        want_codes[j] = SENTINEL;
    reference_steps(want_codes, want, ldd, &pb, gt, n_steps, base);
    for (int path = 0; path < 2; path++) {
        for (int64_t j = 0; j < len; j++)
            got[j] = SENTINEL;
        (path ? qf_gemm_int8_steps_portable : qf_gemm_int8_steps)(
            got, ldd, rows, gt, n_steps, base, pb.w, pb.off, pairs, pb.x, ny, nx, pb.y_step,
            pb.x_step, lanes);
        CHECK(same_bits(got, want_codes, len), "%s steps: rows=%d pairs=%lld lanes=%lld "
              "n_steps=%d", path ? "portable" : "dispatched", rows, (long long)pairs,
              (long long)lanes, n_steps);
    }
    check_pooled(rng, &pb, want, ldd, gt, n_steps, base);
    free(want_codes);
    free(want);
    free(got);
    free(pb.w);
    free(pb.off);
    free(pb.x);
}

int main(void)
{
    qf_rng rng;
    qf_rng_seed(&rng, 14, 0);
    for (int64_t lanes = 1; lanes <= QF_GEMM_INT8_LANES; lanes++)
        check_problem(&rng, 1 + (int)(lanes % QF_GEMM_INT8_ROWS), 1 + lanes % 17, 1 + lanes % 3, 1 + lanes % 4,
                      lanes, (int)(lanes % 2 ? 7 : 255));
    for (int rows = 1; rows <= QF_GEMM_INT8_ROWS; rows++)
        for (int64_t pairs = 0; pairs <= 40; pairs += 8)
            for (int xmax = 1; xmax <= 255; xmax += 127) {
                int64_t lanes = 8 * (1 + (int64_t)qf_rng_below(&rng, 8));
                check_problem(&rng, rows, pairs, 2, 3, lanes, xmax);
            }
    return CHECK_REPORT();
}
