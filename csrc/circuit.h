/* circuit.h: an exact integer circuit compiled from a quantized network
 * (REFERENCE.md sections 5 and 6), the way Concrete-ML runs it under FHE.
 *
 * The client quantizes the float input to integer codes with the input
 * quantizer.  Each stage (a fully connected layer; conv stages can be added as
 * another stage kind) then computes, per output element o, the exact integer
 * accumulator
 *     acc[o] = sum_i q_x[i] (q_w[o, i] - Z_w)  = sum q_x q_w - Z_w sum q_x
 * (the only encrypted arithmetic), optionally rounds away its low bits
 * (Concrete-ML's rounding_threshold_bits; round half up, as Concrete's
 * round_bit_pattern), and applies one univariate function of it, a table
 * lookup (TLU), which holds every constant and float operation:
 *     t    = acc - Z_x sum_i (q_w[o, i] - Z_w)            (exact integer)
 *     y    = qf_affine_epilogue(t, s_x * s_w, b[o])          (float32)
 *     y    = max(y, 0)                                       (with relu)
 *     q    = qf_quantize_value(y, s, qmin - Z, qmax - Z) + Z (output quantizer)
 * The codes q feed the next stage.  The last stage either has no output
 * quantizer, and then its float y is the circuit's output (the accumulator is
 * returned and dequantized in the clear, as Concrete-ML does for a final
 * Gemm), or it has one and the output is s (q - Z) in float32.
 *
 * Using the project's one rounding rule and one epilogue (quant.h) makes the
 * circuit agree bit for bit with the engine's eval-mode fake-quant forward.
 *
 * Integer safety: at creation the circuit bounds every accumulator over all
 * possible input codes with overflow-checked int64 arithmetic and refuses
 * (QF_ERR_OVERFLOW) a circuit whose values could leave int64, so running it
 * never overflows.  Those bounds are the static worst case of the bit-width
 * analysis.
 *
 * Value nodes, in order (each kind is one integer value per element):
 *   node 0                  INPUT           the input codes
 *   per stage:              ACCUMULATOR     acc
 *     (lsbs_to_remove > 0)  ROUNDED         the rounded accumulator divided by
 *                                           2^lsbs_to_remove: the lookup's input
 *     (output quantizer)    LOOKUP_OUTPUT   the codes q */
#ifndef QF_CIRCUIT_H
#define QF_CIRCUIT_H

#include <stddef.h>
#include <stdint.h>
#include "bitwidth.h"
#include "status.h"

#define QF_CIRCUIT_NAME_LEN 64
#define QF_CIRCUIT_CODE_LIMIT (1 << 23)   /* |qmin|, |qmax|, |Z| of quantizers */
#define QF_CIRCUIT_MAX_LSBS 62

/* A uniform quantizer with zero point: q = clamp(rint(x / s), qmin - Z,
 * qmax - Z) + Z, so q in [qmin, qmax]; dequantized value s (q - Z). */
typedef struct {
    float scale;              /* s > 0, finite                               */
    int32_t zero_point;       /* Z                                           */
    int32_t qmin, qmax;       /* code range, zero point included             */
} qf_quantizer;

typedef struct {
    const char *name;         /* shown in reports and errors; copied         */
    int in_features;
    int out_features;
    const int32_t *weight;    /* (out, in) weight codes q_w; copied          */
    int32_t weight_zero_point; /* Z_w                                        */
    float weight_scale;       /* s_w > 0                                     */
    const float *bias;        /* (out) float bias or NULL; copied            */
    int lsbs_to_remove;       /* 0..QF_CIRCUIT_MAX_LSBS                      */
    int relu;                 /* the lookup applies ReLU before quantizing   */
    int has_output_quant;     /* 1 for every stage but possibly the last     */
    qf_quantizer output_quant;
} qf_stage_spec;

typedef enum {
    QF_NODE_INPUT = 0,
    QF_NODE_ACCUMULATOR = 1,
    QF_NODE_ROUNDED = 2,
    QF_NODE_LOOKUP_OUTPUT = 3
} qf_node_kind;

typedef struct {
    int stage;                /* -1 for the input node                       */
    int kind;                 /* qf_node_kind                                */
    int64_t static_min;       /* worst case over all possible input codes    */
    int64_t static_max;
} qf_node_info;

typedef struct qf_circuit qf_circuit;

/* Build a circuit of n_stages stages after input_quant.  Status:
 *   QF_ERR_ARG       a field out of range (err names the stage and field);
 *   QF_ERR_SHAPE     a stage's in_features differs from the previous out_features;
 *   QF_ERR_NONFINITE a NaN or infinite bias;
 *   QF_ERR_OVERFLOW  some accumulator could leave int64;
 *   QF_ERR_NOMEM.
 * On failure *out is NULL. */
qf_status qf_circuit_create(qf_circuit **out, const qf_quantizer *input_quant,
                            const qf_stage_spec *stages, int n_stages,
                            char *err, int err_len);
void qf_circuit_free(qf_circuit *c);      /* accepts NULL */

int qf_circuit_n_stages(const qf_circuit *c);
int qf_circuit_in_features(const qf_circuit *c);
int qf_circuit_out_features(const qf_circuit *c);
const char *qf_circuit_stage_name(const qf_circuit *c, int stage);
int qf_circuit_n_nodes(const qf_circuit *c);
const qf_node_info *qf_circuit_node(const qf_circuit *c, int node);

/* int64 elements of scratch memory one run call needs. */
int64_t qf_circuit_workspace_len(const qf_circuit *c);

/* codes (n, in) = the input quantizer applied to x (n, in).
 * QF_ERR_NONFINITE (err gives the flat index) for NaN or infinity. */
qf_status qf_circuit_quantize_input(const qf_circuit *c, int64_t *codes, const float *x,
                                    int64_t n, char *err, int err_len);

/* Run the circuit on input codes (n, in): out (n, out_features) float32.
 * out_int (n, out_features) or NULL receives the integers the encrypted
 * circuit returns: the last stage's lookup input (its accumulator, rounded
 * when lsbs_to_remove > 0) when it has no output quantizer, else its codes;
 * the client turns them into out.
 * ranges (n_nodes) or NULL: min/max of every node widened by this batch
 * (start from qf_range_reset).  workspace: qf_circuit_workspace_len int64s.
 * QF_ERR_ARG when a code lies outside the input quantizer's range. */
qf_status qf_circuit_run_codes(const qf_circuit *c, float *out, int64_t *out_int,
                               qf_range *ranges, const int64_t *codes, int64_t n,
                               int64_t *workspace, char *err, int err_len);

/* Quantize x (n, in) one sample at a time and run it, as above.
 * QF_ERR_NONFINITE (err gives the row) for NaN or infinity in x. */
qf_status qf_circuit_run(const qf_circuit *c, float *out, int64_t *out_int, qf_range *ranges,
                         const float *x, int64_t n, int64_t *workspace, char *err, int err_len);

#endif
