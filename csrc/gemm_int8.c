/* gemm_int8.c: the 8-bit integer product of gemm_int8.h.
 *
 * AVX2 kernel: for one position, the block's 2 rows x the lanes (16 lanes per
 * register of int16 sums, up to 4 registers: 64 lanes) stay in registers;
 * each pair q loads the lanes' input byte pairs once and, per row, multiplies
 * them by the broadcast weight pair (VPMADDUBSW: u8 x s8, adjacent products
 * summed into int16) and adds the result to the row's sums (VPADDW).  The
 * sums are widened to int32, corrected and converted to float32 at the end,
 * or (qf_gemm_int8_steps) compared with the thresholds while still int16.
 * Exact by the caller's bound (gemm_int8.h), hence identical to the portable
 * kernel, which sums the same integers one lane at a time in int32. */
#include "gemm_int8.h"
#include <stddef.h>

#define INLINE static inline __attribute__((always_inline))

/* What becomes of the sums: corr added (sums), or counted against
 * thresholds (codes, corr NULL). */
typedef struct {
    const int32_t *corr;       /* (rows) or NULL                              */
    const int16_t *gt;         /* (rows, QF_GEMM_INT8_MAX_STEPS) thresholds   */
    int n_steps;
    const float *base;         /* (rows) the codes below every threshold      */
} epilogue;

/* ---------------------------------------------------------------- portable */

static float finish(const epilogue *e, int i, int32_t sum)
{
    if (e->corr)
        return (float)(sum + e->corr[i]);
    int32_t n = 0;
    for (int k = 0; k < e->n_steps; k++)
        n += sum > e->gt[i * QF_GEMM_INT8_MAX_STEPS + k];
    return e->base[i] + (float)n;
}

static void portable(float *d, int64_t ldd, int n_rows, const epilogue *e, const int16_t *w,
                     const int64_t *off, int64_t n_pairs, const uint8_t *x, int64_t ny,
                     int64_t nx, int64_t y_step, int64_t x_step, int64_t lanes)
{
    int64_t row_bytes = 2 * qf_gemm_int8_padded_lanes(lanes);
    int32_t acc[QF_GEMM_INT8_LANES];
    for (int64_t jy = 0; jy < ny; jy++)
        for (int64_t jx = 0; jx < nx; jx++) {
            int64_t base = jy * y_step + jx * x_step;
            for (int i = 0; i < n_rows; i++) {
                for (int64_t s = 0; s < lanes; s++)
                    acc[s] = 0;
                for (int64_t q = 0; q < n_pairs; q++) {
                    uint16_t pair = (uint16_t)w[q * QF_GEMM_INT8_ROWS + i];
                    int32_t w0 = (int8_t)(uint8_t)(pair & 0xff), w1 = (int8_t)(uint8_t)(pair >> 8);
                    const uint8_t *xr = x + (base + off[q]) * row_bytes;
                    for (int64_t s = 0; s < lanes; s++)
                        acc[s] += w0 * xr[2 * s] + w1 * xr[2 * s + 1];
                }
                float *di = d + i * ldd + (jy * nx + jx) * lanes;
                for (int64_t s = 0; s < lanes; s++)
                    di[s] = finish(e, i, acc[s]);
            }
        }
}

void qf_gemm_int8_lanes_portable(float *d, int64_t ldd, int n_rows, const int32_t *corr,
                                 const int16_t *w, const int64_t *off, int64_t n_pairs,
                                 const uint8_t *x, int64_t ny, int64_t nx, int64_t y_step,
                                 int64_t x_step, int64_t lanes)
{
    epilogue e = {corr, NULL, 0, NULL};
    portable(d, ldd, n_rows, &e, w, off, n_pairs, x, ny, nx, y_step, x_step, lanes);
}

void qf_gemm_int8_steps_portable(float *d, int64_t ldd, int n_rows, const int16_t *gt,
                                 int n_steps, const float *base, const int16_t *w,
                                 const int64_t *off, int64_t n_pairs, const uint8_t *x,
                                 int64_t ny, int64_t nx, int64_t y_step, int64_t x_step,
                                 int64_t lanes)
{
    epilogue e = {NULL, gt, n_steps, base};
    portable(d, ldd, n_rows, &e, w, off, n_pairs, x, ny, nx, y_step, x_step, lanes);
}

/* ---------------------------------------------------------------- AVX2 */

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(QF_NO_MULTIVERSION) && !defined(__clang_analyzer__)
#define QF_INT8_AVX2 1
#include <immintrin.h>

#define AVX2 __attribute__((target("avx2")))

/* Two rows x up to four registers of sums: 8 accumulators, the two weight
 * pairs, the inputs and a product fit the 16 registers without spilling. */
_Static_assert(QF_GEMM_INT8_ROWS == 2, "the row cases of avx2()");

/* Eight int32 from int16 values, plus add (int32), as float32 plus addf, to
 * d (only the first `count` of them when count < 8). */
AVX2 INLINE void store8(float *d, __m128i v16, __m256i add, __m256 addf, int64_t count)
{
    __m256 f = _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_cvtepi16_epi32(v16), add));
    f = _mm256_add_ps(f, addf);
    if (count >= 8) {
        _mm256_storeu_ps(d, f);
        return;
    }
    float tmp[8];
    _mm256_storeu_ps(tmp, f);
    for (int64_t s = 0; s < count; s++)
        d[s] = tmp[s];
}

/* One position: R rows x NV registers of 16 lanes. */
AVX2 INLINE void tile(float *d, int64_t ldd, const epilogue *e, const int16_t *w,
                      const int64_t *off, int64_t n_pairs, const uint8_t *x, int64_t lanes,
                      int R, int NV)
{
    __m256i acc[QF_GEMM_INT8_ROWS][4];
    for (int i = 0; i < R; i++)
        for (int v = 0; v < NV; v++)
            acc[i][v] = _mm256_setzero_si256();
    for (int64_t q = 0; q < n_pairs; q++) {
        const uint8_t *xr = x + off[q] * (32 * NV);
        __m256i wv[QF_GEMM_INT8_ROWS];
        for (int i = 0; i < R; i++)
            wv[i] = _mm256_set1_epi16(w[q * QF_GEMM_INT8_ROWS + i]);
        for (int v = 0; v < NV; v++) {
            __m256i xv = _mm256_loadu_si256((const __m256i *)(xr + 32 * v));
            for (int i = 0; i < R; i++)
                acc[i][v] = _mm256_add_epi16(acc[i][v], _mm256_maddubs_epi16(xv, wv[i]));
        }
    }
    for (int i = 0; i < R; i++) {
        __m256i add = _mm256_setzero_si256();
        __m256 addf = _mm256_setzero_ps();
        if (e->corr) {
            add = _mm256_set1_epi32(e->corr[i]);
        } else {   /* codes: base + the thresholds each sum passes (compares give -1) */
            __m256i n[4];
            addf = _mm256_set1_ps(e->base[i]);
            for (int v = 0; v < NV; v++)
                n[v] = _mm256_setzero_si256();
            for (int k = 0; k < e->n_steps; k++) {
                __m256i t = _mm256_set1_epi16(e->gt[i * QF_GEMM_INT8_MAX_STEPS + k]);
                for (int v = 0; v < NV; v++)
                    n[v] = _mm256_sub_epi16(n[v], _mm256_cmpgt_epi16(acc[i][v], t));
            }
            for (int v = 0; v < NV; v++)
                acc[i][v] = n[v];
        }
        for (int v = 0; v < NV; v++) {
            int64_t s = 16 * (int64_t)v;
            store8(d + i * ldd + s, _mm256_castsi256_si128(acc[i][v]), add, addf, lanes - s);
            if (lanes > s + 8)
                store8(d + i * ldd + s + 8, _mm256_extracti128_si256(acc[i][v], 1), add, addf,
                       lanes - s - 8);
        }
    }
}

/* Every position with compile-time R and NV. */
AVX2 INLINE void positions(float *d, int64_t ldd, const epilogue *e, const int16_t *w,
                           const int64_t *off, int64_t n_pairs, const uint8_t *x, int64_t ny,
                           int64_t nx, int64_t y_step, int64_t x_step, int64_t lanes, int R,
                           int NV)
{
    for (int64_t jy = 0; jy < ny; jy++)
        for (int64_t jx = 0; jx < nx; jx++)
            tile(d + (jy * nx + jx) * lanes, ldd, e, w, off, n_pairs,
                 x + (jy * y_step + jx * x_step) * (32 * NV), lanes, R, NV);
}

AVX2 static void avx2(float *d, int64_t ldd, int n_rows, const epilogue *e, const int16_t *w,
                      const int64_t *off, int64_t n_pairs, const uint8_t *x, int64_t ny,
                      int64_t nx, int64_t y_step, int64_t x_step, int64_t lanes)
{
    int nv = (int)(qf_gemm_int8_padded_lanes(lanes) / 16);
#define POSITIONS(R, NV) positions(d, ldd, e, w, off, n_pairs, x, ny, nx, y_step, x_step, \
                                   lanes, R, NV)
#define BY_ROWS(NV)                 \
    switch (n_rows) {               \
    case 2: POSITIONS(2, NV); break; \
    default: POSITIONS(1, NV); break; \
    }
    switch (nv) {   /* compile-time register counts */
    case 4: BY_ROWS(4) break;
    case 3: BY_ROWS(3) break;
    case 2: BY_ROWS(2) break;
    default: BY_ROWS(1) break;
    }
#undef BY_ROWS
#undef POSITIONS
}
#endif

static void run(float *d, int64_t ldd, int n_rows, const epilogue *e, const int16_t *w,
                const int64_t *off, int64_t n_pairs, const uint8_t *x, int64_t ny, int64_t nx,
                int64_t y_step, int64_t x_step, int64_t lanes)
{
#if defined(QF_INT8_AVX2)
    if (__builtin_cpu_supports("avx2")) {
        avx2(d, ldd, n_rows, e, w, off, n_pairs, x, ny, nx, y_step, x_step, lanes);
        return;
    }
#endif
    portable(d, ldd, n_rows, e, w, off, n_pairs, x, ny, nx, y_step, x_step, lanes);
}

void qf_gemm_int8_lanes(float *d, int64_t ldd, int n_rows, const int32_t *corr,
                        const int16_t *w, const int64_t *off, int64_t n_pairs,
                        const uint8_t *x, int64_t ny, int64_t nx, int64_t y_step,
                        int64_t x_step, int64_t lanes)
{
    epilogue e = {corr, NULL, 0, NULL};
    run(d, ldd, n_rows, &e, w, off, n_pairs, x, ny, nx, y_step, x_step, lanes);
}

void qf_gemm_int8_steps(float *d, int64_t ldd, int n_rows, const int16_t *gt, int n_steps,
                        const float *base, const int16_t *w, const int64_t *off,
                        int64_t n_pairs, const uint8_t *x, int64_t ny, int64_t nx,
                        int64_t y_step, int64_t x_step, int64_t lanes)
{
    epilogue e = {NULL, gt, n_steps, base};
    run(d, ldd, n_rows, &e, w, off, n_pairs, x, ny, nx, y_step, x_step, lanes);
}
