/* circuit.h: an exact integer circuit compiled from a quantized network
 * (REFERENCE.md sections 5 and 6), the way Concrete-ML runs it under FHE.
 *
 * The client quantizes the float input to integer codes with the input
 * quantizer.  The circuit is then a list of integer operations, each reading
 * earlier values ("nodes") and producing one new node, a tensor of integers
 * of shape (C, H, W) per sample:
 *
 *   DENSE      acc[o] = sum_i src[i] (q_w[o, i] - Z_w)          (src flattened)
 *   CONV       acc[o, y, x] = sum_{c, ky, kx} src[c, y s_h - p_h + ky,
 *                  x s_w - p_w + kx] (q_w[o, c, ky, kx] - Z_w); positions in
 *                  the zero padding hold the code pad_code (the input's Z_x)
 *   POOL_SUM   sum[c, y, x] = the window sum of src (padding = pad_code):
 *                  average pooling before its division, which the lookup does
 *   ROUND      r = floor((src + 2^(l-1)) / 2^l): src with its l low bits
 *                  rounded away (Concrete's round_bit_pattern, round half up)
 *   LOOKUP     one table lookup (TLU) per element, the univariate function
 *                  of channel c (c = the element's index along C):
 *                  v = src 2^l + offset[c]                       (exact integer)
 *                  y = qf_affine_epilogue(v, scale[c], bias[c])  (float32)
 *                  y = max(y, 0)                                 (with relu)
 *                  q = qf_quantize_value(y, s, qmin - Z, qmax - Z) + Z
 *   RESHAPE    the same integers under a new shape (Flatten, Reshape)
 *   TRANSPOSE  the integers re-indexed with two of (C, H, W) swapped
 *   ADD        src + src2, same shapes (the residual add of two code tensors
 *                  sharing one scale; the compiler guarantees the sharing)
 *   MAXPOOL    out[c, y, x] = the window maximum of src (max pooling of codes,
 *                  exact since quantizers are monotone); padded positions do
 *                  not take part (padding at most half the kernel).  Under FHE
 *                  each of a window's (valid taps - 1) pairwise maxima is one
 *                  lookup, max(a, b) = b + relu(a - b), of a - b
 *   DECODE     the last operation, done by the client in the clear and not a
 *                  node: the float output y of the LOOKUP formula without
 *                  ReLU and quantizer.  A network ending in a linear layer
 *                  returns its accumulators, as Concrete-ML does for a final
 *                  Gemm; one ending in a quantizer returns codes, decoded
 *                  with offset -Z, scale s and bias 0.
 *
 * DENSE, CONV, POOL_SUM, ROUND, ADD and the re-indexing ops are integer
 * operations on encrypted values; everything in float happens inside a LOOKUP.  Using the
 * project's one rounding rule and one epilogue (quant.h) makes the circuit
 * agree bit for bit with the engine's eval-mode fake-quant forward.
 *
 * Nodes: node 0 is the input codes; op k (k < n_ops - 1) produces node k + 1.
 *
 * Integer safety: at creation every node is bounded over all possible input
 * codes with overflow-checked int64 arithmetic, each node's range taken as
 * a box (any element anywhere in it); a circuit whose values could pass
 * 2^62 in magnitude is refused (QF_ERR_OVERFLOW), so running never
 * overflows.  Those bounds are the static worst case of the bit-width
 * analysis (exact for a DENSE or CONV reading the input codes).
 *
 * Two engines run a circuit, with identical results (qf_circuit_run_opts):
 *   int64 (circuit_sample.c), one sample at a time, any circuit;
 *   float32 blocks (circuit_block.c), for circuits whose every value, partial
 *       sum and lookup argument stays below 2^24 by the static bounds
 *       (qf_circuit_float_exact), where float32 arithmetic on integers is
 *       exact: blocks of up to 64 samples, op by op, each kernel vectorised
 *       over the samples, DENSE and CONV skipping zero (pruned) weights;
 *       there DENSE and CONV whose codes fit 8 bits and sums 16 bits run as
 *       8-bit integer products (circuit_int8.c, gemm_int8.h), and a LOOKUP
 *       with few output codes as a count of thresholds (circuit_steps.c),
 *       fused with the product and a following POOL_SUM where possible.
 * A batch may be split over threads (circuit_run.c). */
#ifndef QF_CIRCUIT_H
#define QF_CIRCUIT_H

#include <stddef.h>
#include <stdint.h>
#include "bitwidth.h"
#include "status.h"

#define QF_CIRCUIT_NAME_LEN 64
#define QF_CIRCUIT_CODE_LIMIT (1 << 23)   /* |qmin|, |qmax|, |Z|, |pad_code|  */
#define QF_CIRCUIT_MAX_LSBS 62
#define QF_CIRCUIT_MAX_DIM (1 << 30)      /* every dimension of every node    */

/* A uniform quantizer with zero point: q = clamp(rint(x / s), qmin - Z,
 * qmax - Z) + Z, so q in [qmin, qmax]; dequantized value s (q - Z). */
typedef struct {
    float scale;              /* s > 0, finite                               */
    int32_t zero_point;       /* Z                                           */
    int32_t qmin, qmax;       /* code range, zero point included             */
} qf_quantizer;

typedef enum {
    QF_OP_DENSE = 1,
    QF_OP_CONV = 2,
    QF_OP_POOL_SUM = 3,
    QF_OP_ROUND = 4,
    QF_OP_LOOKUP = 5,
    QF_OP_RESHAPE = 6,
    QF_OP_TRANSPOSE = 7,
    QF_OP_ADD = 8,
    QF_OP_DECODE = 9,
    QF_OP_MAXPOOL = 10
} qf_op_kind;

/* One operation; the fields an op kind does not list are ignored. */
typedef struct {
    int kind;                 /* qf_op_kind                                   */
    const char *name;         /* shown in reports and errors; copied          */
    int src;                  /* node read by every op                        */
    int src2;                 /* ADD: the second operand                      */
    const int32_t *weight;    /* DENSE (out, size of src, 1, 1) or CONV (OC,
                                 C, KH, KW) weight codes q_w; copied          */
    int weight_shape[4];      /* DENSE, CONV: as above                        */
    int32_t weight_zero_point; /* DENSE, CONV: Z_w                            */
    int kernel[2];            /* POOL_SUM, MAXPOOL (CONV: weight_shape[2..3]) */
    int stride[2];            /* CONV, POOL_SUM, MAXPOOL: >= 1                 */
    int padding[2];           /* CONV, POOL_SUM: >= 0; MAXPOOL: <= kernel / 2  */
    int32_t pad_code;         /* CONV, POOL_SUM: code of padded positions     */
    int lsbs;                 /* ROUND: bits rounded away (1..62); LOOKUP,
                                 DECODE: src is multiplied by 2^lsbs (0..62)  */
    int n_channels;           /* LOOKUP, DECODE: entries of offset, scale and
                                 bias = channels (C) of src                   */
    const int64_t *offset;    /* LOOKUP, DECODE: (n_channels) or NULL (0)     */
    const float *scale;       /* LOOKUP, DECODE: (n_channels), > 0, finite    */
    const float *bias;        /* LOOKUP, DECODE: (n_channels) or NULL (0)     */
    int relu;                 /* LOOKUP: ReLU before quantizing               */
    qf_quantizer quant;       /* LOOKUP: the output quantizer                 */
    int shape[3];             /* RESHAPE: new (C, H, W), same size            */
    int dims[2];              /* TRANSPOSE: two axes of (C, H, W), 0..2       */
} qf_op_spec;

typedef enum {
    QF_NODE_INPUT = 0,        /* the input codes                              */
    QF_NODE_ACCUMULATOR = 1,  /* DENSE, CONV                                  */
    QF_NODE_POOL_SUM = 2,
    QF_NODE_ROUNDED = 3,
    QF_NODE_LOOKUP_OUTPUT = 4,
    QF_NODE_RESHAPE = 5,
    QF_NODE_TRANSPOSE = 6,
    QF_NODE_ADD = 7,
    QF_NODE_MAXPOOL = 8
} qf_node_kind;

typedef struct {
    int op;                   /* the op that produces it, -1 for the input    */
    int kind;                 /* qf_node_kind                                 */
    int64_t shape[3];         /* (C, H, W) per sample                         */
    int64_t static_min;       /* worst case over all possible input codes     */
    int64_t static_max;
} qf_node_info;

typedef struct qf_circuit qf_circuit;

/* Build a circuit reading input codes of shape in_shape (C, H, W) quantized
 * by input_quant, from n_ops ops whose last one (only) is DECODE.  Status:
 *   QF_ERR_ARG       a field out of range (err names the op and field);
 *   QF_ERR_SHAPE     sizes that do not agree (weights, channels, reshape, add);
 *   QF_ERR_NONFINITE a NaN or infinite bias or scale;
 *   QF_ERR_OVERFLOW  some value could pass 2^62 in magnitude;
 *   QF_ERR_NOMEM.
 * On failure *out is NULL. */
qf_status qf_circuit_create(qf_circuit **out, const qf_quantizer *input_quant,
                            const int64_t in_shape[3], const qf_op_spec *ops, int n_ops,
                            char *err, int err_len);
void qf_circuit_free(qf_circuit *c);      /* accepts NULL */

int qf_circuit_n_ops(const qf_circuit *c);
int64_t qf_circuit_in_size(const qf_circuit *c);     /* C * H * W of the input    */
int64_t qf_circuit_out_size(const qf_circuit *c);    /* size of the decoded output */
const char *qf_circuit_op_name(const qf_circuit *c, int op);   /* "input" for -1 */
int qf_circuit_n_nodes(const qf_circuit *c);
const qf_node_info *qf_circuit_node(const qf_circuit *c, int node);

/* How a run call computes.  Every choice gives the same outputs, returned
 * integers and ranges, bit for bit. */
typedef enum {
    QF_CIRCUIT_ENGINE_AUTO = 0,   /* float32 blocks when qf_circuit_float_exact,
                                     else int64                               */
    QF_CIRCUIT_ENGINE_INT64 = 1   /* int64, one sample at a time (the reference) */
} qf_circuit_engine;

#define QF_CIRCUIT_MAX_THREADS 64

typedef struct {
    int engine;               /* qf_circuit_engine                            */
    int n_threads;            /* 0 or 1: the calling thread alone; up to
                                 QF_CIRCUIT_MAX_THREADS: the batch is split
                                 into contiguous runs of samples, one per
                                 thread (fewer for small batches)             */
} qf_circuit_run_opts;

/* Whether every integer of the circuit (values, partial sums of DENSE,
 * CONV and POOL_SUM in any order, lookup arguments t 2^l + offset) stays
 * below 2^24 in magnitude over all input codes, by the static bounds: then
 * float32 holds them exactly and the AUTO engine evaluates blocks of samples
 * op by op in float32 (vectorised over the samples, skipping zero weights). */
int qf_circuit_float_exact(const qf_circuit *c);

/* Whether the AUTO engine runs op `op` (a DENSE or CONV of a float-exact
 * circuit) as an 8-bit integer product: u8 input codes (less a shift) times
 * s8 weights, summed in int16, when the static bounds prove those fit
 * (circuit_int8.c).  The same integers either way. */
int qf_circuit_op_int8(const qf_circuit *c, int op);

/* int64 elements of scratch memory one run call with n_threads threads
 * needs (independent of the batch size). */
int64_t qf_circuit_workspace_len(const qf_circuit *c, int n_threads);

/* codes (n, in_size) = the input quantizer applied to x (n, in_size).
 * QF_ERR_NONFINITE (err gives the flat index) for NaN or infinity. */
qf_status qf_circuit_quantize_input(const qf_circuit *c, int64_t *codes, const float *x,
                                    int64_t n, char *err, int err_len);

/* Run the circuit on input codes (n, in_size): out (n, out_size) float32 is
 * the decoded output; out_int (n, out_size) or NULL receives the integers
 * the encrypted circuit returns (the node DECODE reads), which the client
 * decodes into out.  ranges (n_nodes) or NULL: min/max of every node
 * widened by this batch (start from qf_range_reset).  opts: NULL for the
 * defaults (AUTO, one thread).  workspace: qf_circuit_workspace_len(c,
 * opts->n_threads) int64s.  Status: QF_ERR_ARG when a code lies outside the
 * input quantizer's range (err gives the first) or opts are out of range;
 * nothing is written then. */
qf_status qf_circuit_run_codes(const qf_circuit *c, float *out, int64_t *out_int,
                               qf_range *ranges, const int64_t *codes, int64_t n,
                               const qf_circuit_run_opts *opts, int64_t *workspace,
                               char *err, int err_len);

/* Quantize x (n, in_size) with the input quantizer and run it, as above.
 * QF_ERR_NONFINITE (err gives the first row) for NaN or infinity in x. */
qf_status qf_circuit_run(const qf_circuit *c, float *out, int64_t *out_int, qf_range *ranges,
                         const float *x, int64_t n, const qf_circuit_run_opts *opts,
                         int64_t *workspace, char *err, int err_len);

#endif
