/* sparse.h: a pruned weight matrix in compressed sparse row (CSR) form, and
 * fully connected kernels that run over its kept entries only.
 *
 * A weight tensor is viewed as (rows, cols) = (out features or channels,
 * fan-in); its kept entries (mask != 0) are listed row by row, columns
 * ascending, and their values live in a packed array (nnz) in that order.
 *
 * The kernels give the same float32 results, bit for bit, as the dense
 * kernels of linear.h on the matrix with zeros at the pruned entries: a
 * pruned term adds x * 0 = +-0 to a partial sum that starts at +0, which never
 * changes it (a sum of finite floats that starts at +0 is never -0), and the
 * kept terms are added in the dense kernels' order (the eight-lane order of
 * linear.c for float dot products, ascending output index for input
 * gradients, ascending sample for weight gradients).  The one difference:
 * with an infinite or NaN input, the dense kernels produce NaN from
 * inf * 0 at pruned entries and these do not. */
#ifndef QF_SPARSE_H
#define QF_SPARSE_H

#include <stdint.h>
#include "status.h"

typedef struct {
    int64_t rows, cols;         /* the dense (rows, cols) view                            */
    int64_t nnz;                /* kept entries                                          */
    int64_t *row_start;         /* (rows + 1): row r's entries are row_start[r] .. [r+1] - 1 */
    int32_t *col;               /* (nnz) column of each kept entry, ascending in a row    */
} qf_csr;

/* Index the kept entries of mask (rows, cols) into csr (allocates; free with
 * qf_csr_free).  QF_ERR_ARG if cols does not fit in an int32, QF_ERR_NOMEM. */
qf_status qf_csr_init(qf_csr *csr, const uint8_t *mask, int64_t rows, int64_t cols);
void qf_csr_free(qf_csr *csr);            /* accepts a zeroed csr */

/* packed (nnz) = the kept entries of dense (rows, cols), and back. */
void qf_csr_gather(float *packed, const float *dense, const qf_csr *csr);
void qf_csr_scatter(float *dense, const float *packed, const qf_csr *csr);

/* Keep dense_t (cols, rows), the transpose of the dense matrix (zeros at
 * pruned entries), equal to packed (nnz): mirror (nnz) holds the values
 * dense_t has now; only entries where packed differs from it are written
 * (values that rarely change, such as integer codes, cost one vectorised
 * comparison).  full: rewrite all of dense_t instead. */
void qf_csr_mirror_transposed(float *dense_t, float *mirror, const float *packed,
                              const qf_csr *csr, int full);

/* out (n, rows) = x (n, cols) @ w^T + b, w packed (nnz), b (rows) or NULL:
 * identical to qf_linear_forward on the dense matrix. */
void qf_csr_forward(float *out, const float *x, const float *w, const float *b,
                    const qf_csr *csr, int64_t n);

/* out (n, rows) = qf_affine_epilogue(sum xcodes * wcodes, scale[o], b[o]) from
 * integer codes xcodes (n, cols) and wcodes packed (nnz); exact_f32 as in
 * qf_linear_forward_codes: identical to it on the dense matrix. */
void qf_csr_forward_codes(float *out, const float *xcodes, const float *wcodes,
                          const float *scale, const float *b, int exact_f32,
                          const qf_csr *csr, int64_t n);

/* Backward of qf_csr_forward given dout (n, rows):
 *   dx (n, cols)  = dout @ w            (overwritten; skipped when NULL)
 *   dw (nnz)     += dout^T @ x at the kept entries (accumulated)
 *   db (rows)    += sum over n of dout  (accumulated; skipped when NULL)
 * identical to qf_linear_backward on the dense matrix at the kept entries. */
void qf_csr_backward(float *dx, float *dw, float *db, const float *dout, const float *x,
                     const float *w, const qf_csr *csr, int64_t n);

#endif
