/* gemm.c: the strided matrix product of gemm.h, register-blocked.
 *
 * The AVX2 kernel keeps an MR x (NV * 8) block of C in vector registers
 * (GCC/Clang vector types, element by element arithmetic) and, for each p,
 * multiplies NV vectors of a row of B by MR broadcast elements of A.  The
 * sums over p run in blocks of KC (the block of C is stored and reloaded
 * between them: same values), so that the rows of B and the columns of A a
 * block reads stay in cache.  The last r < 8 columns run as one vector through
 * zero-padded copies of those columns of B and C, and rows past the last
 * whole block use smaller blocks: the same sums in the same order. */
#include "dispatch.h"
#include <string.h>
#include "gemm.h"

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#define LANES 8
#define INLINE static inline __attribute__((always_inline))

typedef float vec8 __attribute__((vector_size(LANES * sizeof(float))));

enum { MR = 6, NV = 2, KC = 256 };   /* rows x vectors of C per block; p per pass */

INLINE vec8 load8(const float *p)
{
    vec8 v;
    memcpy(&v, p, sizeof v);
    return v;
}

INLINE void store8(float *p, const vec8 *v) { memcpy(p, v, sizeof *v); }

/* ---------------------------------------------------------------- portable
 * One row of C at a time; the loop over j vectorises at any width. */
INLINE void portable_gemm(float *c, int64_t ldc, const float *a, int64_t a_rs, int64_t a_cs,
                          const float *b, int64_t ldb, int64_t m, int64_t n, int64_t k,
                          int accumulate, const float *a_scale)
{
    for (int64_t i = 0; i < m; i++) {
        float *restrict ci = c + i * ldc;
        if (!accumulate)
            for (int64_t j = 0; j < n; j++)
                ci[j] = 0.0f;
        for (int64_t p = 0; p < k; p++) {
            float av = a[i * a_rs + p * a_cs];
            if (a_scale)
                av = *a_scale * av;
            const float *restrict bp = b + p * ldb;
            for (int64_t j = 0; j < n; j++)
                ci[j] += av * bp[j];
        }
    }
}

/* ---------------------------------------------------------------- blocked */

/* C[0..mr, 0..nv*8) over p in [0, k): from +0 when zero, else from C. */
INLINE void tile(float *c, int64_t ldc, const float *a, int64_t a_rs, int64_t a_cs,
                 const float *b, int64_t ldb, int64_t k, int zero, int mr, int nv)
{
    vec8 acc[MR][NV];
    for (int i = 0; i < mr; i++)
        for (int v = 0; v < nv; v++)
            acc[i][v] = zero ? (vec8){0} : load8(c + i * ldc + v * LANES);
    for (int64_t p = 0; p < k; p++) {
        vec8 bv[NV];
        for (int v = 0; v < nv; v++)
            bv[v] = load8(b + p * ldb + v * LANES);
        const float *ap = a + p * a_cs;
        for (int i = 0; i < mr; i++) {
            float av = ap[i * a_rs];
            for (int v = 0; v < nv; v++)
                acc[i][v] += bv[v] * av;
        }
    }
    for (int i = 0; i < mr; i++)
        for (int v = 0; v < nv; v++)
            store8(c + i * ldc + v * LANES, &acc[i][v]);
}

/* tile() with mr and nv as compile-time constants. */
INLINE void tile_any(float *c, int64_t ldc, const float *a, int64_t a_rs, int64_t a_cs,
                     const float *b, int64_t ldb, int64_t k, int zero, int mr, int nv)
{
#define TILE_ROWS(NVV)                                                                    \
    switch (mr) {                                                                         \
    case 6: tile(c, ldc, a, a_rs, a_cs, b, ldb, k, zero, 6, NVV); break;                  \
    case 5: tile(c, ldc, a, a_rs, a_cs, b, ldb, k, zero, 5, NVV); break;                  \
    case 4: tile(c, ldc, a, a_rs, a_cs, b, ldb, k, zero, 4, NVV); break;                  \
    case 3: tile(c, ldc, a, a_rs, a_cs, b, ldb, k, zero, 3, NVV); break;                  \
    case 2: tile(c, ldc, a, a_rs, a_cs, b, ldb, k, zero, 2, NVV); break;                  \
    default: tile(c, ldc, a, a_rs, a_cs, b, ldb, k, zero, 1, NVV); break;                 \
    }
    if (nv == 2) {
        TILE_ROWS(2)
    } else {
        TILE_ROWS(1)
    }
#undef TILE_ROWS
}

/* The blocked product; with a_scale, A's elements are *a_scale a[i, p]
 * (rounded to float32), made once per block of MR rows and KC sums into a
 * packed copy (the pack's columns are then MR floats apart). */
INLINE void blocked_gemm(float *c, int64_t ldc, const float *a, int64_t a_rs, int64_t a_cs,
                         const float *b, int64_t ldb, int64_t m, int64_t n, int64_t k,
                         int accumulate, const float *a_scale)
{
    if (k == 0 && !accumulate) {
        for (int64_t i = 0; i < m; i++)
            memset(c + i * ldc, 0, sizeof(float) * (size_t)n);
        return;
    }
    float pack[KC * MR];
    float b_tail[KC * LANES], c_tail[MR * LANES];
    int64_t full = n / LANES * LANES, r = n - full;
    for (int64_t p0 = 0; p0 < k; p0 += KC) {
        int64_t kb = k - p0 < KC ? k - p0 : KC;
        int zero = p0 == 0 && !accumulate;
        const float *ap = a + p0 * a_cs, *bp = b + p0 * ldb;
        if (r)   /* the last r < 8 columns of B, zero-padded to a vector */
            for (int64_t p = 0; p < kb; p++)
                for (int64_t j = 0; j < LANES; j++)
                    b_tail[p * LANES + j] = j < r ? bp[p * ldb + full + j] : 0.0f;
        for (int64_t i = 0; i < m; i += MR) {   /* a block of rows of A stays in cache */
            int mr = m - i < MR ? (int)(m - i) : MR;
            const float *ai = ap + i * a_rs;
            int64_t rs = a_rs, cs = a_cs;
            if (a_scale) {
                float scale = *a_scale;
                if (mr == MR && a_rs == 1)   /* rows of A adjacent: MR floats per p */
                    for (int64_t p = 0; p < kb; p++)
                        for (int r = 0; r < MR; r++)
                            pack[p * MR + r] = scale * ai[r + p * a_cs];
                else
                    for (int64_t p = 0; p < kb; p++)
                        for (int r = 0; r < mr; r++)
                            pack[p * MR + r] = scale * ai[r * a_rs + p * a_cs];
                ai = pack;
                rs = 1;
                cs = MR;
            }
            for (int64_t j = 0; j < full; j += NV * LANES) {
                int nv = full - j >= NV * LANES ? NV : 1;
                tile_any(c + i * ldc + j, ldc, ai, rs, cs, bp + j, ldb, kb, zero, mr, nv);
            }
            if (r) {   /* one vector per row through c_tail: the same sums, in order */
                float *ci = c + i * ldc + full;
                for (int row = 0; row < mr; row++)
                    for (int64_t j = 0; j < LANES; j++)
                        c_tail[row * LANES + j] = j < r && !zero ? ci[row * ldc + j] : 0.0f;
                tile_any(c_tail, LANES, ai, rs, cs, b_tail, LANES, kb, zero, mr, 1);
                for (int row = 0; row < mr; row++)
                    for (int64_t j = 0; j < r; j++)
                        ci[row * ldc + j] = c_tail[row * LANES + j];
            }
        }
    }
}

QF_MULTIVERSION
void qf_gemm(float *c, int64_t ldc, const float *a, int64_t a_rs, int64_t a_cs,
             const float *b, int64_t ldb, int64_t m, int64_t n, int64_t k, int accumulate)
{
    if (!QF_WIDE_VECTORS())
        portable_gemm(c, ldc, a, a_rs, a_cs, b, ldb, m, n, k, accumulate, NULL);
    else
        blocked_gemm(c, ldc, a, a_rs, a_cs, b, ldb, m, n, k, accumulate, NULL);
}

QF_MULTIVERSION
void qf_gemm_scaled_a(float *c, int64_t ldc, const float *a, int64_t a_rs, int64_t a_cs,
                      float a_scale, const float *b, int64_t ldb, int64_t m, int64_t n,
                      int64_t k, int accumulate)
{
    if (!QF_WIDE_VECTORS())
        portable_gemm(c, ldc, a, a_rs, a_cs, b, ldb, m, n, k, accumulate, &a_scale);
    else
        blocked_gemm(c, ldc, a, a_rs, a_cs, b, ldb, m, n, k, accumulate, &a_scale);
}

/* ---------------------------------------------------------------- exact integer sums
 * With every partial sum an integer below 2^24, a fused multiply-add rounds
 * nothing, exactly as the separate product and sum: the AVX2 + FMA kernel
 * below gives the bits of qf_gemm, in fewer instructions. */
#if defined(QF_HAVE_MULTIVERSION)
#include <immintrin.h>

__attribute__((target("avx2,fma"), always_inline))
static inline void fma_tile(float *c, int64_t ldc, const float *a, int64_t a_rs, int64_t a_cs,
                     const float *b, int64_t ldb, int64_t k, int zero, int mr)
{
    __m256 acc[MR][NV];
    for (int i = 0; i < mr; i++)
        for (int v = 0; v < NV; v++)
            acc[i][v] = zero ? _mm256_setzero_ps() : _mm256_loadu_ps(c + i * ldc + v * LANES);
    for (int64_t p = 0; p < k; p++) {
        __m256 b0 = _mm256_loadu_ps(b + p * ldb), b1 = _mm256_loadu_ps(b + p * ldb + LANES);
        const float *ap = a + p * a_cs;
        for (int i = 0; i < mr; i++) {
            __m256 av = _mm256_broadcast_ss(ap + i * a_rs);
            acc[i][0] = _mm256_fmadd_ps(av, b0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(av, b1, acc[i][1]);
        }
    }
    for (int i = 0; i < mr; i++)
        for (int v = 0; v < NV; v++)
            _mm256_storeu_ps(c + i * ldc + v * LANES, acc[i][v]);
}

/* Whole blocks of MR rows and 16 columns with FMA; returns the columns done. */
__attribute__((target("avx2,fma")))
static int64_t fma_gemm(float *c, int64_t ldc, const float *a, int64_t a_rs, int64_t a_cs,
                        const float *b, int64_t ldb, int64_t m, int64_t n, int64_t k,
                        int accumulate)
{
    int64_t full = n / (NV * LANES) * (NV * LANES);
    for (int64_t p0 = 0; p0 < k; p0 += KC) {
        int64_t kb = k - p0 < KC ? k - p0 : KC;
        int zero = p0 == 0 && !accumulate;
        for (int64_t i = 0; i < m; i += MR)
            for (int64_t j = 0; j < full; j += NV * LANES) {
                int mr = m - i < MR ? (int)(m - i) : MR;
                const float *ai = a + i * a_rs + p0 * a_cs, *bj = b + p0 * ldb + j;
                float *cij = c + i * ldc + j;
                switch (mr) {   /* compile-time row counts */
                case 6: fma_tile(cij, ldc, ai, a_rs, a_cs, bj, ldb, kb, zero, 6); break;
                case 5: fma_tile(cij, ldc, ai, a_rs, a_cs, bj, ldb, kb, zero, 5); break;
                case 4: fma_tile(cij, ldc, ai, a_rs, a_cs, bj, ldb, kb, zero, 4); break;
                case 3: fma_tile(cij, ldc, ai, a_rs, a_cs, bj, ldb, kb, zero, 3); break;
                case 2: fma_tile(cij, ldc, ai, a_rs, a_cs, bj, ldb, kb, zero, 2); break;
                default: fma_tile(cij, ldc, ai, a_rs, a_cs, bj, ldb, kb, zero, 1); break;
                }
            }
    }
    return full;
}
#endif

void qf_gemm_exact(float *c, int64_t ldc, const float *a, int64_t a_rs, int64_t a_cs,
                   const float *b, int64_t ldb, int64_t m, int64_t n, int64_t k, int accumulate)
{
    int64_t done = 0;
#if defined(QF_HAVE_MULTIVERSION)
    if (k > 0 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        done = fma_gemm(c, ldc, a, a_rs, a_cs, b, ldb, m, n, k, accumulate);
#endif
    if (done < n)
        qf_gemm(c + done, ldc, a, a_rs, a_cs, b + done, ldb, m, n - done, k, accumulate);
}
