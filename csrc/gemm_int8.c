/* gemm_int8.c: the 8-bit integer product of gemm_int8.h.
 *
 * AVX2 kernel: for one position, the block's rows x the lanes (16 lanes per
 * register of int16 sums, up to 4 registers: 64 lanes) stay in registers;
 * each pair q loads the lanes' input byte pairs once and, per row, multiplies
 * them by the broadcast weight pair (VPMADDUBSW: u8 x s8, adjacent products
 * summed into int16) and adds the result to the row's sums (VPADDW).  The
 * sums are widened to int32, corrected and converted to float32 at the end.
 * Exact by the caller's bound (gemm_int8.h), hence identical to the portable
 * kernel, which sums the same integers one lane at a time in int32. */
#include "gemm_int8.h"

#define INLINE static inline __attribute__((always_inline))

/* ---------------------------------------------------------------- portable */

void qf_gemm_int8_lanes_portable(float *d, int64_t ldd, int n_rows, const int32_t *corr,
                                 const int16_t *w, const int64_t *off, int64_t n_pairs,
                                 const uint8_t *x, int64_t ny, int64_t nx, int64_t y_step,
                                 int64_t x_step, int64_t lanes)
{
    int64_t row_bytes = 2 * qf_gemm_int8_padded_lanes(lanes);
    int32_t acc[QF_GEMM_INT8_LANES];
    for (int64_t jy = 0; jy < ny; jy++)
        for (int64_t jx = 0; jx < nx; jx++) {
            int64_t base = jy * y_step + jx * x_step;
            for (int i = 0; i < n_rows; i++) {
                for (int64_t s = 0; s < lanes; s++)
                    acc[s] = corr[i];
                for (int64_t q = 0; q < n_pairs; q++) {
                    uint16_t pair = (uint16_t)w[q * QF_GEMM_INT8_ROWS + i];
                    int32_t w0 = (int8_t)(uint8_t)(pair & 0xff), w1 = (int8_t)(uint8_t)(pair >> 8);
                    const uint8_t *xr = x + (base + off[q]) * row_bytes;
                    for (int64_t s = 0; s < lanes; s++)
                        acc[s] += w0 * xr[2 * s] + w1 * xr[2 * s + 1];
                }
                float *di = d + i * ldd + (jy * nx + jx) * lanes;
                for (int64_t s = 0; s < lanes; s++)
                    di[s] = (float)acc[s];
            }
        }
}

/* ---------------------------------------------------------------- AVX2 */

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(QF_NO_MULTIVERSION) && !defined(__clang_analyzer__)
#define QF_INT8_AVX2 1
#include <immintrin.h>

#define AVX2 __attribute__((target("avx2")))

/* Eight int32 from int16 sums, plus the row's correction, as float32, to
 * d (only the first `count` of them when count < 8). */
AVX2 INLINE void store_sums(float *d, __m128i sums16, __m256i corr, int64_t count)
{
    __m256 f = _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_cvtepi16_epi32(sums16), corr));
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
AVX2 INLINE void tile(float *d, int64_t ldd, const int32_t *corr, const int16_t *w,
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
        __m256i ci = _mm256_set1_epi32(corr[i]);
        for (int v = 0; v < NV; v++) {
            int64_t s = 16 * (int64_t)v;
            store_sums(d + i * ldd + s, _mm256_castsi256_si128(acc[i][v]), ci, lanes - s);
            if (lanes > s + 8)
                store_sums(d + i * ldd + s + 8, _mm256_extracti128_si256(acc[i][v], 1), ci,
                           lanes - s - 8);
        }
    }
}

/* Every position with compile-time R and NV. */
AVX2 INLINE void positions(float *d, int64_t ldd, const int32_t *corr, const int16_t *w,
                           const int64_t *off, int64_t n_pairs, const uint8_t *x, int64_t ny,
                           int64_t nx, int64_t y_step, int64_t x_step, int64_t lanes, int R,
                           int NV)
{
    for (int64_t jy = 0; jy < ny; jy++)
        for (int64_t jx = 0; jx < nx; jx++)
            tile(d + (jy * nx + jx) * lanes, ldd, corr, w, off, n_pairs,
                 x + (jy * y_step + jx * x_step) * (32 * NV), lanes, R, NV);
}

AVX2 static void avx2_lanes(float *d, int64_t ldd, int n_rows, const int32_t *corr,
                            const int16_t *w, const int64_t *off, int64_t n_pairs,
                            const uint8_t *x, int64_t ny, int64_t nx, int64_t y_step,
                            int64_t x_step, int64_t lanes)
{
    int nv = (int)(qf_gemm_int8_padded_lanes(lanes) / 16);
#define POSITIONS(R, NV) positions(d, ldd, corr, w, off, n_pairs, x, ny, nx, y_step, x_step, \
                                   lanes, R, NV)
#define BY_ROWS(NV)                 \
    switch (n_rows) {               \
    case 3: POSITIONS(3, NV); break; \
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

void qf_gemm_int8_lanes(float *d, int64_t ldd, int n_rows, const int32_t *corr,
                        const int16_t *w, const int64_t *off, int64_t n_pairs,
                        const uint8_t *x, int64_t ny, int64_t nx, int64_t y_step,
                        int64_t x_step, int64_t lanes)
{
#if defined(QF_INT8_AVX2)
    if (__builtin_cpu_supports("avx2")) {
        avx2_lanes(d, ldd, n_rows, corr, w, off, n_pairs, x, ny, nx, y_step, x_step, lanes);
        return;
    }
#endif
    qf_gemm_int8_lanes_portable(d, ldd, n_rows, corr, w, off, n_pairs, x, ny, nx, y_step,
                                x_step, lanes);
}
