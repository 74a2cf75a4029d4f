/* circuit_run.c: running a circuit on a batch: the checks of the input,
 * the choice of engine (float32 blocks, circuit_block.c, or int64 samples,
 * circuit_sample.c), the split of the batch over threads and the merge of
 * the node ranges.
 *
 * Threads get contiguous runs of whole blocks and write disjoint rows of the
 * outputs; each widens its own ranges, merged afterwards by min/max.  Every
 * sample's integers are exact whichever engine and block computes them, so
 * the outputs, returned integers and ranges are the same for any thread
 * count and batch size. */
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include "circuit_internal.h"
#include "finite.h"

/* Fewest samples worth a thread of their own (starting one costs ~20 us). */
#define MIN_ROWS_PER_THREAD 1024

static void set_err(char *err, int err_len, const char *fmt, ...)
{
    if (!err || err_len <= 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, (size_t)err_len, fmt, ap);
    va_end(ap);
}

int qf_circuit_float_exact(const qf_circuit *c) { return c->float_exact; }

int qf_circuit_op_int8(const qf_circuit *c, int op)
{
    return op >= 0 && op < c->n_ops && c->ops[op].i8 != NULL;
}

/* Per-thread workspace (int64s), a multiple of 8 (threads never share a
 * cache line):
 *   int64 engine: ranges (n_nodes qf_range), then one sample's nodes;
 *   block engine: lane ranges (n_nodes, 2, QF_CIRCUIT_BLOCK) float32, then
 *                 one block's nodes (float32). */
static int64_t thread_len(const qf_circuit *c)
{
    int64_t len = 2 * (int64_t)c->n_nodes + c->sample_len;
    if (c->float_exact) {
        int64_t floats = (int64_t)c->n_nodes * 2 * QF_CIRCUIT_BLOCK +
                         qf_circuit_block_workspace_len(c);
        len = len > (floats + 1) / 2 ? len : (floats + 1) / 2;
    }
    return (len + 7) / 8 * 8;
}

int64_t qf_circuit_workspace_len(const qf_circuit *c, int n_threads)
{
    return (n_threads > 1 ? n_threads : 1) * thread_len(c);
}

qf_status qf_circuit_quantize_input(const qf_circuit *c, int64_t *codes, const float *x,
                                    int64_t n, char *err, int err_len)
{
    int64_t total = n * qf_circuit_in_size(c), bad = qf_first_non_finite(x, total);
    float s = c->input.scale, lo = c->input_lo, hi = c->input_hi;
    if (bad >= 0) {
        set_err(err, err_len, "input contains NaN or infinity (first at flat index %lld); "
                "expected finite values", (long long)bad);
        return QF_ERR_NONFINITE;
    }
    for (int64_t j = 0; j < total; j++)
        codes[j] = (int64_t)qf_quantize_value(x[j], s, lo, hi) + c->input.zero_point;
    return QF_OK;
}

/* ---- one thread's share ---- */

typedef struct {
    const qf_circuit *c;
    int block;                 /* the float32 block engine, else int64        */
    float *out;                /* (n, out_size), all rows                      */
    int64_t *out_int;          /* (n, out_size) or NULL                        */
    const int64_t *codes;      /* (n, in_size), or NULL: quantize x            */
    const float *x;            /* (n, in_size)                                 */
    int64_t r0, r1;            /* this worker's rows                           */
    int want_ranges;
    int64_t *ws;               /* thread_len(c) int64s                         */
} worker;

static void run_rows(worker *w)
{
    const qf_circuit *c = w->c;
    int64_t in = qf_circuit_in_size(c), n_out = qf_circuit_out_size(c);
    if (w->block) {
        float *lane_ranges = w->want_ranges ? (float *)w->ws : NULL;
        float *block_ws = (float *)w->ws + (int64_t)c->n_nodes * 2 * QF_CIRCUIT_BLOCK;
        for (int64_t j = 0; lane_ranges && j < (int64_t)c->n_nodes * 2 * QF_CIRCUIT_BLOCK; j++)
            lane_ranges[j] = j / QF_CIRCUIT_BLOCK % 2 ? -INFINITY : INFINITY;
        qf_circuit_run_block_rows(c, w->out, w->out_int, lane_ranges, w->codes, w->x, w->r0,
                                  w->r1, block_ws);
        return;
    }
    qf_range *ranges = w->want_ranges ? (qf_range *)w->ws : NULL;
    int64_t *sample = w->ws + 2 * (int64_t)c->n_nodes;
    if (ranges)
        qf_range_reset(ranges, c->n_nodes);
    for (int64_t r = w->r0; r < w->r1; r++) {
        if (w->codes)
            memcpy(sample, w->codes + r * in, (size_t)in * sizeof *sample);
        else
            qf_circuit_quantize_input(c, sample, w->x + r * in, 1, NULL, 0);
        qf_circuit_run_sample(c, w->out + r * n_out, w->out_int ? w->out_int + r * n_out : NULL,
                              ranges, sample);
    }
}

static void *thread_main(void *arg)
{
    run_rows(arg);
    return NULL;
}

/* ranges (n_nodes) widened by a worker's own ranges. */
static void merge_ranges(qf_range *ranges, const worker *w)
{
    const qf_circuit *c = w->c;
    for (int j = 0; j < c->n_nodes; j++) {
        if (!w->block) {
            const qf_range *mine = (const qf_range *)w->ws + j;
            if (!qf_range_is_empty(mine)) {
                qf_range_update(&ranges[j], mine->min);
                qf_range_update(&ranges[j], mine->max);
            }
            continue;
        }
        const float *lmin = (const float *)w->ws + (int64_t)j * 2 * QF_CIRCUIT_BLOCK;
        const float *lmax = lmin + QF_CIRCUIT_BLOCK;
        for (int s = 0; s < QF_CIRCUIT_BLOCK; s++)
            if (lmin[s] <= lmax[s]) {
                qf_range_update(&ranges[j], (int64_t)lmin[s]);
                qf_range_update(&ranges[j], (int64_t)lmax[s]);
            }
    }
}

/* The batch over opts->n_threads threads (fewer for small batches; the
 * calling thread takes the first share and any thread that fails to start).
 * AUTO takes the block engine for float-exact circuits from two samples on;
 * one sample alone runs faster on the int64 engine than in a block of 8 lanes. */
static void run_batch(const qf_circuit *c, float *out, int64_t *out_int, qf_range *ranges,
                      const int64_t *codes, const float *x, int64_t n,
                      const qf_circuit_run_opts *opts, int64_t *workspace)
{
    int block = c->float_exact && opts->engine == QF_CIRCUIT_ENGINE_AUTO && n >= 2;
    int64_t most = (n + MIN_ROWS_PER_THREAD - 1) / MIN_ROWS_PER_THREAD;
    int n_workers = opts->n_threads > 1 ? opts->n_threads : 1;
    n_workers = n_workers < most ? n_workers : (int)(most > 0 ? most : 1);
    int64_t unit = block ? c->block_lanes : 1;
    int64_t share = ((n + n_workers - 1) / n_workers + unit - 1) / unit * unit;
    worker workers[QF_CIRCUIT_MAX_THREADS];
    pthread_t threads[QF_CIRCUIT_MAX_THREADS];
    int started[QF_CIRCUIT_MAX_THREADS] = {0};
    for (int t = 0; t < n_workers; t++) {
        int64_t r0 = t * share < n ? t * share : n, r1 = r0 + share < n ? r0 + share : n;
        workers[t] = (worker){c, block, out, out_int, codes, x, r0, r1, ranges != NULL,
                              workspace + t * thread_len(c)};
    }
    for (int t = 1; t < n_workers; t++)
        started[t] = pthread_create(&threads[t], NULL, thread_main, &workers[t]) == 0;
    run_rows(&workers[0]);
    for (int t = 1; t < n_workers; t++) {
        if (started[t])
            pthread_join(threads[t], NULL);
        else
            run_rows(&workers[t]);
    }
    for (int t = 0; ranges && t < n_workers; t++)
        merge_ranges(ranges, &workers[t]);
}

static const qf_circuit_run_opts DEFAULT_OPTS = {QF_CIRCUIT_ENGINE_AUTO, 1};

static qf_status check_opts(const qf_circuit_run_opts *opts, char *err, int err_len)
{
    if (opts->engine != QF_CIRCUIT_ENGINE_AUTO && opts->engine != QF_CIRCUIT_ENGINE_INT64) {
        set_err(err, err_len, "engine must be AUTO (%d) or INT64 (%d), got %d",
                QF_CIRCUIT_ENGINE_AUTO, QF_CIRCUIT_ENGINE_INT64, opts->engine);
        return QF_ERR_ARG;
    }
    if (opts->n_threads < 0 || opts->n_threads > QF_CIRCUIT_MAX_THREADS) {
        set_err(err, err_len, "n_threads must lie in [1, %d], got %d", QF_CIRCUIT_MAX_THREADS,
                opts->n_threads);
        return QF_ERR_ARG;
    }
    return QF_OK;
}

qf_status qf_circuit_run_codes(const qf_circuit *c, float *out, int64_t *out_int,
                               qf_range *ranges, const int64_t *codes, int64_t n,
                               const qf_circuit_run_opts *opts, int64_t *workspace,
                               char *err, int err_len)
{
    opts = opts ? opts : &DEFAULT_OPTS;
    qf_status st = check_opts(opts, err, err_len);
    if (st != QF_OK)
        return st;
    int64_t in = qf_circuit_in_size(c);
    int64_t lo = c->input.qmin, hi = c->input.qmax;
    for (int64_t j = 0; j < n * in; j++)
        if (codes[j] < lo || codes[j] > hi) {
            set_err(err, err_len, "input code %lld at row %lld, column %lld lies outside the "
                    "input quantizer's range [%d, %d]", (long long)codes[j],
                    (long long)(j / in), (long long)(j % in), (int)lo, (int)hi);
            return QF_ERR_ARG;
        }
    run_batch(c, out, out_int, ranges, codes, NULL, n, opts, workspace);
    return QF_OK;
}

qf_status qf_circuit_run(const qf_circuit *c, float *out, int64_t *out_int, qf_range *ranges,
                         const float *x, int64_t n, const qf_circuit_run_opts *opts,
                         int64_t *workspace, char *err, int err_len)
{
    opts = opts ? opts : &DEFAULT_OPTS;
    qf_status st = check_opts(opts, err, err_len);
    if (st != QF_OK)
        return st;
    int64_t in = qf_circuit_in_size(c), j = qf_first_non_finite(x, n * in);
    if (j >= 0) {
        set_err(err, err_len, "input contains NaN or infinity (first at row %lld); "
                "expected finite values", (long long)(j / in));
        return QF_ERR_NONFINITE;
    }
    run_batch(c, out, out_int, ranges, NULL, x, n, opts, workspace);
    return QF_OK;
}
