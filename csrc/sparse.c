/* sparse.c: CSR index of a pruned weight matrix and the fully connected
 * kernels over its kept entries (see sparse.h for why their results equal
 * the dense kernels' bit for bit). */
#include "dispatch.h"
#include <stdlib.h>
#include <string.h>
#include "quant.h"
#include "sparse.h"

#define LANES 8

qf_status qf_csr_init(qf_csr *csr, const uint8_t *mask, int64_t rows, int64_t cols)
{
    csr->row_start = NULL;
    csr->col = NULL;
    csr->rows = rows;
    csr->cols = cols;
    csr->nnz = 0;
    if (cols > INT32_MAX || rows < 0 || cols < 0)
        return QF_ERR_ARG;
    int64_t nnz = 0;
    for (int64_t i = 0; i < rows * cols; i++)
        nnz += mask[i] != 0;
    csr->row_start = malloc(sizeof(int64_t) * (size_t)(rows + 1));
    csr->col = malloc(sizeof(int32_t) * (size_t)(nnz > 0 ? nnz : 1));
    if (!csr->row_start || !csr->col) {
        qf_csr_free(csr);
        return QF_ERR_NOMEM;
    }
    int64_t k = 0;
    for (int64_t r = 0; r < rows; r++) {
        csr->row_start[r] = k;
        for (int64_t c = 0; c < cols; c++)
            if (mask[r * cols + c])
                csr->col[k++] = (int32_t)c;
    }
    csr->row_start[rows] = k;
    csr->nnz = nnz;
    return QF_OK;
}

void qf_csr_free(qf_csr *csr)
{
    free(csr->row_start);
    free(csr->col);
    csr->row_start = NULL;
    csr->col = NULL;
    csr->nnz = 0;
}

QF_MULTIVERSION
void qf_csr_gather(float *restrict packed, const float *restrict dense, const qf_csr *csr)
{
    for (int64_t r = 0; r < csr->rows; r++) {
        const float *row = dense + r * csr->cols;
        for (int64_t k = csr->row_start[r]; k < csr->row_start[r + 1]; k++)
            packed[k] = row[csr->col[k]];
    }
}

QF_MULTIVERSION
void qf_csr_scatter(float *restrict dense, const float *restrict packed, const qf_csr *csr)
{
    for (int64_t r = 0; r < csr->rows; r++) {
        float *row = dense + r * csr->cols;
        for (int64_t k = csr->row_start[r]; k < csr->row_start[r + 1]; k++)
            row[csr->col[k]] = packed[k];
    }
}

/* Row of entry k: the last r with row_start[r] <= k (rows with entries only). */
static int64_t row_of(const qf_csr *csr, int64_t k)
{
    int64_t lo = 0, hi = csr->rows - 1;
    while (lo < hi) {
        int64_t mid = (lo + hi + 1) / 2;
        if (csr->row_start[mid] <= k)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

enum { MIRROR_BLOCK = 64 };

QF_MULTIVERSION
void qf_csr_mirror_transposed(float *dense_t, float *mirror, const float *packed,
                              const qf_csr *csr, int full)
{
    int64_t rows = csr->rows;
    if (full) {
        memset(dense_t, 0, sizeof(float) * (size_t)(rows * csr->cols));
        for (int64_t r = 0; r < rows; r++)
            for (int64_t k = csr->row_start[r]; k < csr->row_start[r + 1]; k++)
                dense_t[csr->col[k] * rows + r] = packed[k];
        memcpy(mirror, packed, sizeof(float) * (size_t)csr->nnz);
        return;
    }
    for (int64_t k0 = 0; k0 < csr->nnz; k0 += MIRROR_BLOCK) {
        int64_t end = csr->nnz - k0 < MIRROR_BLOCK ? csr->nnz : k0 + MIRROR_BLOCK;
        int changed = 0;
        for (int64_t k = k0; k < end; k++)   /* vectorised: any difference in the block */
            changed |= packed[k] != mirror[k];
        if (!changed)
            continue;
        for (int64_t k = k0; k < end; k++)
            if (packed[k] != mirror[k]) {
                dense_t[csr->col[k] * rows + row_of(csr, k)] = packed[k];
                mirror[k] = packed[k];
            }
    }
}

QF_MULTIVERSION
void qf_csr_forward(float *out, const float *x, const float *w, const float *b,
                    const qf_csr *csr, int64_t n)
{
    const int64_t *start = csr->row_start;
    const int32_t *col = csr->col;
    for (int64_t s = 0; s < n; s++) {
        const float *xs = x + s * csr->cols;
        float *os = out + s * csr->rows;
        for (int64_t o = 0; o < csr->rows; o++) {
            /* lane c mod 8 holds the terms of columns c = j (mod 8), as dot_f32 */
            float lane[LANES] = {0};
            for (int64_t k = start[o]; k < start[o + 1]; k++)
                lane[col[k] & (LANES - 1)] += xs[col[k]] * w[k];
            float s0 = (lane[0] + lane[4]) + (lane[2] + lane[6]);
            float s1 = (lane[1] + lane[5]) + (lane[3] + lane[7]);
            float acc = s0 + s1;
            os[o] = b ? acc + b[o] : acc;
        }
    }
}

QF_MULTIVERSION
void qf_csr_forward_codes(float *out, const float *xcodes, const float *wcodes,
                          const float *scale, const float *b, int exact_f32,
                          const qf_csr *csr, int64_t n)
{
    const int64_t *start = csr->row_start;
    const int32_t *col = csr->col;
    for (int64_t s = 0; s < n; s++) {
        const float *xs = xcodes + s * csr->cols;
        float *os = out + s * csr->rows;
        for (int64_t o = 0; o < csr->rows; o++) {
            int64_t k = start[o], end = start[o + 1], acc;
            if (exact_f32) {
                /* integer sums below 2^24: exact in any order, four chains */
                float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
                for (; k + 4 <= end; k += 4) {
                    a0 += xs[col[k]] * wcodes[k];
                    a1 += xs[col[k + 1]] * wcodes[k + 1];
                    a2 += xs[col[k + 2]] * wcodes[k + 2];
                    a3 += xs[col[k + 3]] * wcodes[k + 3];
                }
                for (; k < end; k++)
                    a0 += xs[col[k]] * wcodes[k];
                acc = (int64_t)((a0 + a1) + (a2 + a3));
            } else {
                double a = 0.0;
                for (; k < end; k++)
                    a += (double)xs[col[k]] * (double)wcodes[k];
                acc = (int64_t)a;
            }
            os[o] = qf_affine_epilogue(acc, scale[o], b ? b[o] : 0.0f);
        }
    }
}

QF_MULTIVERSION
void qf_csr_backward(float *dx, float *dw, float *db, const float *dout, const float *x,
                     const float *w, const qf_csr *csr, int64_t n)
{
    const int64_t *start = csr->row_start;
    const int32_t *col = csr->col;
    for (int64_t s = 0; s < n; s++) {
        const float *ds = dout + s * csr->rows;
        const float *xs = x + s * csr->cols;
        float *dxs = dx ? dx + s * csr->cols : NULL;
        if (dxs)
            for (int64_t i = 0; i < csr->cols; i++)
                dxs[i] = 0.0f;
        for (int64_t o = 0; o < csr->rows; o++) {
            float g = ds[o];
            if (g == 0.0f)
                continue;
            if (dxs)
                for (int64_t k = start[o]; k < start[o + 1]; k++)
                    dxs[col[k]] += g * w[k];
            for (int64_t k = start[o]; k < start[o + 1]; k++)
                dw[k] += g * xs[col[k]];
            if (db)
                db[o] += g;
        }
    }
}
