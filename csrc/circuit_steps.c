/* circuit_steps.c: a LOOKUP of the float32 block engine as a count of
 * thresholds passed.
 *
 * A lookup maps the integer t of channel c to a code of the output
 * quantizer: an affine epilogue (scale > 0), ReLU, rounding and a clamp,
 * each non-decreasing, so the code rises in steps with t.  With few output
 * codes (a 2- to 4-bit quantizer) the code is base[c] plus the number of
 * thresholds at[c, k] that t has reached, a handful of compares per element
 * instead of the epilogue's multiply, add and division.
 *
 * The thresholds come from the int64 engine's own code function
 * (qf_circuit_lookup_code, which the float32 formula of circuit_block.c
 * equals) evaluated at every t of the input node's static range, and are
 * used only when that walk finds the codes non-decreasing with at most
 * QF_CIRCUIT_MAX_STEPS steps per channel: every value the node can hold
 * then gets exactly the code of the formula.  Ranges wider than
 * MAX_RANGE, or circuits where the walk would take over MAX_WALK steps, keep
 * the formula. */
#include "dispatch.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "circuit_internal.h"

#define MAX_RANGE ((int64_t)1 << 16)   /* input values per channel           */
#define MAX_WALK ((int64_t)1 << 22)    /* code evaluations per op            */

void qf_circuit_steps_free(qf_circuit_steps *steps)
{
    if (!steps)
        return;
    free(steps->base);
    free(steps->at);
    free(steps);
}

/* at (QF_CIRCUIT_MAX_STEPS) and *base for channel ch over t in [lo, hi];
 * returns the steps, or -1 when the codes fall somewhere or take too many. */
static int channel_steps(const qf_circuit_op *p, int64_t ch, int64_t lo, int64_t hi,
                         float *base, float *at)
{
    int64_t first = qf_circuit_lookup_code(p, ch, lo), prev = first;
    int n = 0;
    for (int64_t t = lo + 1; t <= hi; t++) {
        int64_t code = qf_circuit_lookup_code(p, ch, t);
        if (code < prev || code - first > QF_CIRCUIT_MAX_STEPS)
            return -1;
        for (; prev < code; prev++)
            at[n++] = (float)t;          /* |t| < 2^24: exact */
    }
    *base = (float)first;
    return n;
}

int qf_circuit_prepare_steps(const qf_circuit *c, qf_circuit_op *p)
{
    const qf_node_info *nd = &c->nodes[p->src];
    int64_t lo = nd->static_min, hi = nd->static_max, channels = p->in_shape[0];
    if (p->kind != QF_OP_LOOKUP || hi - lo >= MAX_RANGE || (hi - lo + 1) * channels > MAX_WALK)
        return 0;
    float *base = malloc((size_t)channels * sizeof *base);
    float *at = malloc((size_t)(channels * QF_CIRCUIT_MAX_STEPS) * sizeof *at);
    qf_circuit_steps *steps = calloc(1, sizeof *steps);
    if (!base || !at || !steps) {
        free(base);
        free(at);
        free(steps);
        return -1;
    }
    int most = 0;
    for (int64_t ch = 0; ch < channels; ch++) {
        float *mine = at + ch * QF_CIRCUIT_MAX_STEPS;
        int n = channel_steps(p, ch, lo, hi, &base[ch], mine);
        if (n < 0) {
            free(base);
            free(at);
            free(steps);
            return 0;
        }
        for (int k = n; k < QF_CIRCUIT_MAX_STEPS; k++)
            mine[k] = INFINITY;
        most = n > most ? n : most;
    }
    steps->n_steps = most;
    steps->base = base;
    steps->at = at;
    p->steps = steps;
    return 1;
}

typedef float lanes8 __attribute__((vector_size(32)));
typedef int32_t ints8 __attribute__((vector_size(32)));

/* dst = base + the thresholds each element reached (a compare gives -1 or 0
 * per lane).  +0 for a zero code, as the formula gives. */
#define STEPS_ROW(N)                                                                     \
    for (int64_t i = 0; i < count; i += 8) {                                             \
        lanes8 xv;                                                                       \
        ints8 n = {0};                                                                   \
        memcpy(&xv, x + i, sizeof xv);                                                   \
        for (int k = 0; k < (N); k++)                                                    \
            n -= (ints8)(xv >= th[k]);                                                   \
        lanes8 out = bv + __builtin_convertvector(n, lanes8);                            \
        memcpy(q + i, &out, sizeof out);                                                 \
    }

QF_MULTIVERSION
void qf_circuit_steps_run(const qf_circuit_steps *steps, int64_t ch, float *restrict q,
                          const float *restrict x, int64_t count)
{
    lanes8 th[QF_CIRCUIT_MAX_STEPS], bv = (lanes8){0} + steps->base[ch];
    for (int k = 0; k < steps->n_steps; k++)
        th[k] = (lanes8){0} + steps->at[ch * QF_CIRCUIT_MAX_STEPS + k];
    switch (steps->n_steps) {   /* compile-time counts for the usual 1- to 4-bit codes */
    case 1: STEPS_ROW(1) break;
    case 3: STEPS_ROW(3) break;
    case 7: STEPS_ROW(7) break;
    case 15: STEPS_ROW(15) break;
    default: STEPS_ROW(steps->n_steps) break;
    }
}

void qf_circuit_steps_block(const qf_circuit_op *p, float *dst, const float *src,
                            int64_t lanes)
{
    int64_t count = p->in_shape[1] * p->in_shape[2] * lanes;
    for (int64_t ch = 0; ch < p->in_shape[0]; ch++)
        qf_circuit_steps_run(p->steps, ch, dst + ch * count, src + ch * count, count);
}
