/* circuit_internal.h: the private layout of a qf_circuit, shared by its
 * creation and int64 engine (circuit.c) and its float32 block engine
 * (circuit_block.c).  Not part of the public API (circuit.h). */
#ifndef QF_CIRCUIT_INTERNAL_H
#define QF_CIRCUIT_INTERNAL_H

#include <stdint.h>
#include "circuit.h"
#include "quant.h"

/* The nonzero weights of a DENSE op, row by row (CSR), or of a CONV op,
 * output channel by output channel with the tap each one sits on. */
typedef struct {
    int64_t *start;            /* (rows + 1): row r is entries start[r] .. start[r+1] - 1 */
    int32_t *col;              /* (nnz) DENSE: input index; CONV: tap c KH KW + ky KW + kx */
    int64_t *value;            /* (nnz) q_w - Z_w                                         */
    float *value_f;            /* (nnz) the same as float32 (float-exact circuits only)    */
    int64_t *tap_off;          /* (nnz) CONV, float-exact circuits: where the tap sits in the
                                  zero-padded input (C, Hp, Wp), (c Hp + ky) Wp + kx        */
} qf_circuit_sparse;

/* A DENSE or CONV op of a float-exact circuit run by the 8-bit integer
 * product (circuit_int8.c, gemm_int8.h): its input values less `shift` fit
 * u8, its weights s8, its sums int16.  The input is packed per block as
 * (c2, hp, wp) rows of 2 Lp bytes: channel pairs (2c, 2c + 1) side by side
 * per lane, zero padding included (DENSE: the flattened input as channels,
 * hp = wp = 1).  Output rows (channels) go in blocks of QF_GEMM_INT8_ROWS,
 * each visiting the pairs (c, ky, kx) where one of its rows has a nonzero
 * weight. */
typedef struct {
    int64_t shift;             /* subtracted from every input value and the pad code */
    int64_t c2, hp, wp;        /* channel pairs, padded height and width        */
    int across;                /* an odd channel count: the last pair plane holds
                                  that channel at (y, x) and (y, x + 1), so its
                                  pairs are the taps (kx, kx + 1) of a row      */
    int64_t n_blocks;          /* ceil(OC / QF_GEMM_INT8_ROWS)                  */
    int64_t *block_start;      /* (n_blocks + 1): block b is pairs start[b] .. start[b+1]-1 */
    int64_t *off;              /* (pairs) (c hp + ky) wp + kx: the pair's packed row */
    int16_t *w;                /* (pairs, QF_GEMM_INT8_ROWS) weight pairs (0 past OC) */
    int32_t *corr;             /* (n_blocks QF_GEMM_INT8_ROWS) shift sum_t w[o, t] */
    int fuse;                  /* ops after this one it can run with (circuit_int8.c):
                                  1 the LOOKUP, 2 the LOOKUP and a POOL_SUM,
                                  3 those and the LOOKUP after the pool          */
} qf_circuit_int8;

/* A LOOKUP of a float-exact circuit whose code, over the static range of
 * its input, is a non-decreasing step function of t in every channel with
 * few steps (circuit_steps.c): code(t) = base[c] + #{k : t >= at[c, k]}. */
typedef struct {
    int n_steps;               /* thresholds per channel, <= QF_CIRCUIT_MAX_STEPS */
    float *base;               /* (C) the code of the input's static minimum      */
    float *at;                 /* (C, n_steps) where the code passes base + k;
                                  +inf past the channel's own steps              */
} qf_circuit_steps;

#define QF_CIRCUIT_MAX_STEPS 16

typedef struct {
    int kind;                  /* qf_op_kind                                    */
    char name[QF_CIRCUIT_NAME_LEN];
    int src, src2;
    int64_t in_shape[3];       /* (C, H, W) of src                              */
    int64_t out_shape[3];      /* of the result (DECODE: of src)                */
    int64_t *weight;           /* DENSE (OC, in) / CONV (OC, C, KH, KW): q_w - Z_w */
    qf_circuit_sparse nz;      /* DENSE, CONV: the nonzero entries of weight    */
    qf_circuit_int8 *i8;       /* DENSE, CONV run in 8-bit integers, or NULL    */
    qf_circuit_steps *steps;   /* LOOKUP as thresholds, or NULL                 */
    int64_t oc, kh, kw, sh, sw, ph, pw;
    int64_t pad;               /* CONV, POOL_SUM: code of padded positions       */
    int lsbs;
    int64_t *offset;           /* LOOKUP, DECODE: (channels of src)             */
    float *offset_f;           /* the same as float32 (float-exact circuits)    */
    float *scale, *bias;       /* LOOKUP, DECODE: (channels of src)             */
    int relu;
    qf_quantizer quant;        /* LOOKUP                                        */
    float quant_lo, quant_hi;  /* qmin - Z, qmax - Z                            */
    int axes[2];               /* TRANSPOSE                                     */
} qf_circuit_op;

struct qf_circuit {
    qf_quantizer input;
    float input_lo, input_hi;  /* qmin - Z, qmax - Z of the input quantizer      */
    int n_ops;
    qf_circuit_op *ops;        /* (n_ops), the last one DECODE                  */
    int n_nodes;               /* n_ops: the input, then one per op but DECODE  */
    qf_node_info *nodes;       /* (n_nodes)                                     */
    int64_t *node_start;       /* (n_nodes) where each node sits in the int64
                                  engine's per-sample buffer                    */
    int64_t sample_len;        /* int64s of that buffer: sum of the node sizes  */
    int float_exact;           /* every value and partial sum below 2^24        */
    int64_t block_lanes;       /* samples per block of the float32 engine: a
                                  multiple of 8, at most QF_CIRCUIT_BLOCK       */
};

static inline int64_t qf_circuit_size3(const int64_t *s) { return s[0] * s[1] * s[2]; }

/* ---- element functions, shared by the static bounds and the int64 engine ---- */

/* floor((v + 2^(l-1)) / 2^l): round half up, divided by 2^l; 1 <= l <= 62,
 * |v| <= 2^62.  Shifts of non-negative values only (floor of a negative t
 * is -(ceil(-t / 2^l)) = -(((-t - 1) >> l) + 1)). */
static inline int64_t qf_circuit_round_msbs(int64_t v, int l)
{
    int64_t t = v + ((int64_t)1 << (l - 1));
    return t >= 0 ? t >> l : -(((-t - 1) >> l) + 1);
}

/* The float value of a LOOKUP / DECODE of integer t in channel ch, before
 * the output quantizer: epilogue, then ReLU for a LOOKUP with relu. */
static inline float qf_circuit_affine(const qf_circuit_op *p, int64_t ch, int64_t t)
{
    int64_t v = t * ((int64_t)1 << p->lsbs) + p->offset[ch];
    float y = qf_affine_epilogue(v, p->scale[ch], p->bias[ch]);
    return p->relu && y < 0.0f ? 0.0f : y;
}

/* The code a LOOKUP gives integer t of channel ch. */
static inline int64_t qf_circuit_lookup_code(const qf_circuit_op *p, int64_t ch, int64_t t)
{
    float y = qf_circuit_affine(p, ch, t);
    return (int64_t)qf_quantize_value(y, p->quant.scale, p->quant_lo, p->quant_hi) +
           p->quant.zero_point;
}

/* Most samples the float32 block engine evaluates together (lanes of a
 * block); fewer (but at least 8) when the nodes of one sample are large, so
 * that a block's buffers stay within QF_CIRCUIT_BLOCK_FLOATS. */
#define QF_CIRCUIT_BLOCK 64
#define QF_CIRCUIT_BLOCK_FLOATS ((int64_t)1 << 22)

/* Whether every integer the circuit can compute, every partial sum of its
 * DENSE, CONV and POOL_SUM ops in any order, and every lookup argument
 * v = t 2^l + offset stays below 2^24 in magnitude, so float32 holds them
 * exactly; the node bounds must be set.  Also fills the float32 copies
 * (value_f, offset_f) when it returns 1.  -1: out of memory. */
int qf_circuit_prepare_float(qf_circuit *c);

/* The 8-bit integer product for a DENSE or CONV op of a float-exact circuit
 * (circuit_int8.c): sets p->i8 and returns 1 when the op's operands and
 * sums fit (see there), 0 when they do not (the op stays in float32), -1
 * when out of memory. */
int qf_circuit_prepare_int8(const qf_circuit *c, qf_circuit_op *p);
void qf_circuit_int8_free(qf_circuit_int8 *i8);           /* accepts NULL */

/* Workspace bytes of the largest such op for block_lanes lanes. */
int64_t qf_circuit_int8_workspace_bytes(const qf_circuit *c);

/* The op p (with i8) and the `fuse` ops after it (0, or p->i8->fuse: the
 * LOOKUP, then the POOL_SUM): dst = the node of the last of them, (C, H, W,
 * L), from src (C, H, W, L) the node p reads; ws: qf_circuit_int8_workspace_bytes. */
void qf_circuit_int8_block(const qf_circuit_op *p, int fuse, float *dst, const float *src,
                           int64_t lanes, uint8_t *ws);

/* A LOOKUP of a float-exact circuit as thresholds (circuit_steps.c): sets
 * p->steps and returns 1 when its codes form few non-decreasing steps over
 * its input's static range, 0 otherwise (the LOOKUP keeps its float32
 * formula), -1 when out of memory. */
int qf_circuit_prepare_steps(const qf_circuit *c, qf_circuit_op *p);
void qf_circuit_steps_free(qf_circuit_steps *steps);      /* accepts NULL */

/* dst (C, H, W, L) = the codes of src (C, H, W, L) by the thresholds; L a
 * multiple of 8. */
void qf_circuit_steps_block(const qf_circuit_op *p, float *dst, const float *src,
                            int64_t lanes);

/* q (count) = the codes of x (count) in channel ch; count a multiple of 8. */
void qf_circuit_steps_run(const qf_circuit_steps *steps, int64_t ch, float *q, const float *x,
                          int64_t count);

/* float32 elements of the node buffers of one block (block_lanes samples). */
int64_t qf_circuit_block_workspace_len(const qf_circuit *c);

/* The block engine on rows [r0, r1) of a batch, block_lanes rows at a time:
 * codes (n, in_size) int64, or x (n, in_size) float32 when codes is NULL
 * (quantized here; the caller has checked x is finite and the codes lie in
 * range).  out, out_int (may be NULL) are the full (n, out_size) outputs;
 * lane_ranges (n_nodes, 2, QF_CIRCUIT_BLOCK) float32 or NULL: per-lane
 * minima and maxima widened by these rows (start them at +inf / -inf).
 * ws: qf_circuit_block_workspace_len floats. */
void qf_circuit_run_block_rows(const qf_circuit *c, float *out, int64_t *out_int,
                               float *lane_ranges, const int64_t *codes, const float *x,
                               int64_t r0, int64_t r1, float *ws);

/* The int64 engine on one sample: node 0 of ws (sample_len int64s) holds
 * its input codes; out, out_int (may be NULL) (out_size); ranges (n_nodes)
 * or NULL widened by this sample. */
void qf_circuit_run_sample(const qf_circuit *c, float *out, int64_t *out_int, qf_range *ranges,
                           int64_t *ws);

/* MAXPOOL (circuit_maxpool.c): dst (C, OH, OW) = window maxima of src
 * (C, H, W), in int64 (one sample) or float32 blocks (rows of L lanes). */
void qf_circuit_maxpool_sample(const qf_circuit_op *p, int64_t *dst, const int64_t *src);
void qf_circuit_maxpool_block(const qf_circuit_op *p, float *dst, const float *src,
                              int64_t lanes);

#endif
