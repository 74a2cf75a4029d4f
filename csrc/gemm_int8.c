/* gemm_int8.c: the 8-bit integer product of gemm_int8.h.
 *
 * AVX2 kernel: for one position, the block's 2 rows x the lanes (16 lanes per
 * register of int16 sums, up to 4 registers: 64 lanes) stay in registers;
 * each pair q loads the lanes' input byte pairs once and, per row, multiplies
 * them by the broadcast weight pair (VPMADDUBSW: u8 x s8, adjacent products
 * summed into int16) and adds the result to the row's sums (VPADDW).  The
 * sums are widened to int32, corrected and converted to float32 at the end,
 * or (qf_gemm_int8_steps) compared with the thresholds while still int16;
 * qf_gemm_int8_pooled adds those counts over a pooling window in int16 and
 * converts once per window.
 * Exact by the caller's bound (gemm_int8.h), hence identical to the portable
 * kernel, which sums the same integers one lane at a time in int32. */
#include "gemm_int8.h"
#include <stddef.h>

#define INLINE static inline __attribute__((always_inline))

/* What becomes of the sums: corr added (sums), or counted against
 * thresholds (codes, corr NULL), then (pooled, kh > 0) summed over windows
 * of kh x kw positions and counted again against gt2 when it is not NULL. */
typedef struct {
    const int32_t *corr;       /* (rows) or NULL                              */
    const int16_t *gt;         /* (rows, QF_GEMM_INT8_MAX_STEPS) thresholds   */
    int n_steps;
    const float *base;         /* (rows) added to each code (or window sum)   */
    int kh, kw;                /* pooling window, or 0                        */
    const int16_t *gt2;        /* (rows, QF_GEMM_INT8_MAX_STEPS) or NULL      */
    int n_steps2;
} epilogue;

/* ---------------------------------------------------------------- portable */

static int32_t passed(const int16_t *gt, int n_steps, int i, int32_t v)
{
    int32_t n = 0;
    for (int k = 0; k < n_steps; k++)
        n += v > gt[i * QF_GEMM_INT8_MAX_STEPS + k];
    return n;
}

/* The int32 sum of row i, lane s, at packed row base. */
static int32_t lane_sum(const int16_t *w, const int64_t *off, int64_t n_pairs, const uint8_t *x,
                        int64_t base, int64_t row_bytes, int i, int64_t s)
{
    int32_t acc = 0;
    for (int64_t q = 0; q < n_pairs; q++) {
        uint16_t pair = (uint16_t)w[q * QF_GEMM_INT8_ROWS + i];
        int32_t w0 = (int8_t)(uint8_t)(pair & 0xff), w1 = (int8_t)(uint8_t)(pair >> 8);
        const uint8_t *xr = x + (base + off[q]) * row_bytes + 2 * s;
        acc += w0 * xr[0] + w1 * xr[1];
    }
    return acc;
}

/* One position, or (e->kh > 0) one window of positions, from packed row base. */
static float finish(const epilogue *e, const int16_t *w, const int64_t *off, int64_t n_pairs,
                    const uint8_t *x, int64_t base, int64_t y_step, int64_t x_step,
                    int64_t row_bytes, int i, int64_t s)
{
    if (e->corr)
        return (float)(lane_sum(w, off, n_pairs, x, base, row_bytes, i, s) + e->corr[i]);
    int kh = e->kh ? e->kh : 1, kw = e->kh ? e->kw : 1;   /* a position: a 1 x 1 window */
    int32_t total = 0;
    for (int ky = 0; ky < kh; ky++)
        for (int kx = 0; kx < kw; kx++)
            total += passed(e->gt, e->n_steps, i,
                            lane_sum(w, off, n_pairs, x, base + ky * y_step + kx * x_step,
                                     row_bytes, i, s));
    if (e->gt2)
        total = passed(e->gt2, e->n_steps2, i, total);
    return e->base[i] + (float)total;
}

/* ny x nx positions, or (pooled) 1 x nx windows, the window jx starting at
 * position jx kw. */
static void portable(float *d, int64_t ldd, int n_rows, const epilogue *e, const int16_t *w,
                     const int64_t *off, int64_t n_pairs, const uint8_t *x, int64_t ny,
                     int64_t nx, int64_t y_step, int64_t x_step, int64_t lanes)
{
    int64_t row_bytes = 2 * qf_gemm_int8_padded_lanes(lanes);
    int64_t jx_step = e->kh ? e->kw * x_step : x_step;
    for (int64_t jy = 0; jy < ny; jy++)
        for (int64_t jx = 0; jx < nx; jx++)
            for (int i = 0; i < n_rows; i++)
                for (int64_t s = 0; s < lanes; s++)
                    d[i * ldd + (jy * nx + jx) * lanes + s] =
                        finish(e, w, off, n_pairs, x, jy * y_step + jx * jx_step, y_step, x_step,
                               row_bytes, i, s);
}

void qf_gemm_int8_lanes_portable(float *d, int64_t ldd, int n_rows, const int32_t *corr,
                                 const int16_t *w, const int64_t *off, int64_t n_pairs,
                                 const uint8_t *x, int64_t ny, int64_t nx, int64_t y_step,
                                 int64_t x_step, int64_t lanes)
{
    epilogue e = {.corr = corr};
    portable(d, ldd, n_rows, &e, w, off, n_pairs, x, ny, nx, y_step, x_step, lanes);
}

void qf_gemm_int8_steps_portable(float *d, int64_t ldd, int n_rows, const int16_t *gt,
                                 int n_steps, const float *base, const int16_t *w,
                                 const int64_t *off, int64_t n_pairs, const uint8_t *x,
                                 int64_t ny, int64_t nx, int64_t y_step, int64_t x_step,
                                 int64_t lanes)
{
    epilogue e = {.gt = gt, .n_steps = n_steps, .base = base};
    portable(d, ldd, n_rows, &e, w, off, n_pairs, x, ny, nx, y_step, x_step, lanes);
}

void qf_gemm_int8_pooled_portable(float *d, int64_t ldd, int n_rows, const int16_t *gt,
                                  int n_steps, const int16_t *gt2, int n_steps2,
                                  const float *base, int kh, int kw, const int16_t *w,
                                  const int64_t *off, int64_t n_pairs, const uint8_t *x,
                                  int64_t npx, int64_t y_step, int64_t x_step, int64_t lanes)
{
    epilogue e = {.gt = gt, .n_steps = n_steps, .base = base, .kh = kh, .kw = kw, .gt2 = gt2,
                  .n_steps2 = n_steps2};
    portable(d, ldd, n_rows, &e, w, off, n_pairs, x, 1, npx, y_step, x_step, lanes);
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

/* One row's NV registers of 16 lanes to d, as store8 does, `lanes` lanes. */
AVX2 INLINE void store_row(float *d, const __m256i *v, __m256i add, __m256 addf, int64_t lanes,
                           int NV)
{
    for (int k = 0; k < NV; k++) {
        int64_t s = 16 * (int64_t)k;
        store8(d + s, _mm256_castsi256_si128(v[k]), add, addf, lanes - s);
        if (lanes > s + 8)
            store8(d + s + 8, _mm256_extracti128_si256(v[k], 1), add, addf, lanes - s - 8);
    }
}

/* out: the sums of one position, R rows x NV registers of 16 lanes.  They
 * are summed in a local array and copied out at the end: summed in `out`
 * itself, GCC 12 moved every sum between two registers on each pair (about
 * 20% slower in bench/bench_cnn.py's integer inference). */
AVX2 INLINE void sums(__m256i out[QF_GEMM_INT8_ROWS][4], const int16_t *w, const int64_t *off,
                      int64_t n_pairs, const uint8_t *x, int R, int NV)
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
    for (int i = 0; i < R; i++)
        for (int v = 0; v < NV; v++)
            out[i][v] = acc[i][v];
}

/* acc[i][v] := the thresholds gt[i][k] its lanes pass (compares give -1). */
AVX2 INLINE void count(__m256i acc[QF_GEMM_INT8_ROWS][4], const int16_t *gt, int n_steps, int R,
                       int NV)
{
    for (int i = 0; i < R; i++) {
        __m256i n[4];
        for (int v = 0; v < NV; v++)
            n[v] = _mm256_setzero_si256();
        for (int k = 0; k < n_steps; k++) {
            __m256i t = _mm256_set1_epi16(gt[i * QF_GEMM_INT8_MAX_STEPS + k]);
            for (int v = 0; v < NV; v++)
                n[v] = _mm256_sub_epi16(n[v], _mm256_cmpgt_epi16(acc[i][v], t));
        }
        for (int v = 0; v < NV; v++)
            acc[i][v] = n[v];
    }
}

/* One position: R rows x NV registers of 16 lanes. */
AVX2 INLINE void tile(float *d, int64_t ldd, const epilogue *e, const int16_t *w,
                      const int64_t *off, int64_t n_pairs, const uint8_t *x, int64_t lanes,
                      int R, int NV)
{
    __m256i acc[QF_GEMM_INT8_ROWS][4];
    sums(acc, w, off, n_pairs, x, R, NV);
    if (!e->corr)
        count(acc, e->gt, e->n_steps, R, NV);
    for (int i = 0; i < R; i++)
        store_row(d + i * ldd, acc[i],
                  e->corr ? _mm256_set1_epi32(e->corr[i]) : _mm256_setzero_si256(),
                  e->corr ? _mm256_setzero_ps() : _mm256_set1_ps(e->base[i]), lanes, NV);
}

/* One window of kh x kw positions: the codes summed (int16), maybe counted again. */
AVX2 INLINE void window(float *d, int64_t ldd, const epilogue *e, const int16_t *w,
                        const int64_t *off, int64_t n_pairs, const uint8_t *x, int64_t y_step,
                        int64_t x_step, int64_t lanes, int R, int NV)
{
    __m256i total[QF_GEMM_INT8_ROWS][4];
    for (int i = 0; i < R; i++)
        for (int v = 0; v < NV; v++)
            total[i][v] = _mm256_setzero_si256();
    for (int ky = 0; ky < e->kh; ky++)
        for (int kx = 0; kx < e->kw; kx++) {
            __m256i acc[QF_GEMM_INT8_ROWS][4];
            sums(acc, w, off, n_pairs, x + (ky * y_step + kx * x_step) * (32 * NV), R, NV);
            count(acc, e->gt, e->n_steps, R, NV);
            for (int i = 0; i < R; i++)
                for (int v = 0; v < NV; v++)
                    total[i][v] = _mm256_add_epi16(total[i][v], acc[i][v]);
        }
    if (e->gt2)
        count(total, e->gt2, e->n_steps2, R, NV);
    for (int i = 0; i < R; i++)
        store_row(d + i * ldd, total[i], _mm256_setzero_si256(), _mm256_set1_ps(e->base[i]),
                  lanes, NV);
}

/* Every position (or window) with compile-time R and NV. */
AVX2 INLINE void positions(float *d, int64_t ldd, const epilogue *e, const int16_t *w,
                           const int64_t *off, int64_t n_pairs, const uint8_t *x, int64_t ny,
                           int64_t nx, int64_t y_step, int64_t x_step, int64_t lanes, int R,
                           int NV)
{
    if (e->kh) {
        for (int64_t jx = 0; jx < nx; jx++)
            window(d + jx * lanes, ldd, e, w, off, n_pairs, x + jx * e->kw * x_step * (32 * NV),
                   y_step, x_step, lanes, R, NV);
        return;
    }
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
    epilogue e = {.corr = corr};
    run(d, ldd, n_rows, &e, w, off, n_pairs, x, ny, nx, y_step, x_step, lanes);
}

void qf_gemm_int8_steps(float *d, int64_t ldd, int n_rows, const int16_t *gt, int n_steps,
                        const float *base, const int16_t *w, const int64_t *off,
                        int64_t n_pairs, const uint8_t *x, int64_t ny, int64_t nx,
                        int64_t y_step, int64_t x_step, int64_t lanes)
{
    epilogue e = {.gt = gt, .n_steps = n_steps, .base = base};
    run(d, ldd, n_rows, &e, w, off, n_pairs, x, ny, nx, y_step, x_step, lanes);
}

void qf_gemm_int8_pooled(float *d, int64_t ldd, int n_rows, const int16_t *gt, int n_steps,
                         const int16_t *gt2, int n_steps2, const float *base, int kh, int kw,
                         const int16_t *w, const int64_t *off, int64_t n_pairs, const uint8_t *x,
                         int64_t npx, int64_t y_step, int64_t x_step, int64_t lanes)
{
    epilogue e = {.gt = gt, .n_steps = n_steps, .base = base, .kh = kh, .kw = kw, .gt2 = gt2,
                  .n_steps2 = n_steps2};
    run(d, ldd, n_rows, &e, w, off, n_pairs, x, 1, npx, y_step, x_step, lanes);
}
