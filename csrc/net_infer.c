/* net_infer.c: eval-mode forwards through a private workspace (net_infer.h).
 *
 * The workspace holds a shadow qf_net: a copy of the net's header whose
 * tensors are the net's own (read, never written, in eval mode) and whose
 * layers, weight caches and batch buffers are private.  The shadow runs the
 * ordinary forward (net_pass.c) with training off and no packed state, so
 * every result is the one a serial eval forward of the net gives. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "net_infer.h"
#include "net_internal.h"

struct qf_net_infer {
    qf_net shadow;              /* layers, packed, buffers private; tensors shared  */
    const qf_net *source;       /* the net the shadow copies (NULL: not built)     */
    int64_t in_shape[3];        /* its input shape when the shadow was built        */
    float *caches;              /* weight quantizer caches of every quantized layer */
    int64_t *argmax;            /* (sum of w_rows) ABSMAX positions                  */
    int64_t cache_bytes;        /* layers + packed + caches + argmax                 */
    char err[256];
};

qf_net_infer *qf_net_infer_create(void)
{
    return calloc(1, sizeof(qf_net_infer));
}

/* Drop the shadow's private parts (not the net's tensors). */
static void release(qf_net_infer *ws)
{
    qf_net *s = &ws->shadow;
    free(s->act_storage);
    free(s->x);
    free(s->scratch);
    free(s->labels);
    free(s->layers);
    free(s->packed);
    free(ws->caches);
    free(ws->argmax);
    memset(s, 0, sizeof *s);
    ws->caches = NULL;
    ws->argmax = NULL;
    ws->source = NULL;
    ws->cache_bytes = 0;
}

void qf_net_infer_free(qf_net_infer *ws)
{
    if (!ws)
        return;
    release(ws);
    free(ws);
}

/* Copy net's description into the shadow, with private caches for its quantized weights. */
static qf_status build(qf_net_infer *ws, const qf_net *net)
{
    release(ws);
    qf_net *s = &ws->shadow;
    *s = *net;                             /* tensors, shapes, flags; pointers replaced below */
    s->layers = malloc(sizeof(qf_layer) * (size_t)net->n_layers);
    s->packed = calloc((size_t)net->n_tensors + 1, sizeof(qf_packed *));   /* all NULL */
    int64_t floats = 0, rows = 0;
    for (int i = 0; i < net->n_layers; i++) {
        const qf_layer *L = &net->layers[i];
        if (L->t_weight >= 0 && L->spec.weight_quant.kind != QF_QUANT_NONE) {
            floats += 3 * L->w_rows * L->w_cols + 2 * L->w_rows;
            rows += L->w_rows;
        }
        if (L->spec.kind == QF_LAYER_BATCHNORM2D)   /* eval writes its factor and fold */
            floats += QF_BN_CACHE_PER_CHANNEL * L->spec.in_features;
    }
    ws->caches = malloc(sizeof(float) * (size_t)(floats + 1));
    ws->argmax = malloc(sizeof(int64_t) * (size_t)(rows + 1));
    s->storage = s->layer_storage = NULL;   /* the net's: never freed nor written here */
    s->act_storage = s->x = s->scratch = NULL;
    s->labels = NULL;
    s->perm = NULL;
    s->perm_cap = s->batch_cap = 0;
    if (!s->layers || !s->packed || !ws->caches || !ws->argmax) {
        release(ws);
        return QF_ERR_NOMEM;
    }
    memcpy(s->layers, net->layers, sizeof(qf_layer) * (size_t)net->n_layers);
    float *c = ws->caches;
    int64_t *a = ws->argmax;
    for (int i = 0; i < s->n_layers; i++) {
        qf_layer *L = &s->layers[i];
        L->out = L->dout = L->codes = L->cols = L->col_codes = L->dcols = NULL;
        L->gemm_out = L->skip_grad = NULL;
        L->xhat = NULL;
        L->argmax = NULL;
        L->dw_fq = NULL;                  /* backward only */
        L->a2q_rows = NULL;               /* backward only: the net's are not written */
        if (L->spec.kind == QF_LAYER_BATCHNORM2D) {
            c = qf_net_bn_place_cache(L, c);
            continue;
        }
        L->w_scale_fixed = 0;             /* recomputed here, from the shared weights */
        L->sparse_pass = 0;
        if (L->t_weight < 0 || L->spec.weight_quant.kind == QF_QUANT_NONE)
            continue;
        int64_t size = L->w_rows * L->w_cols;
        L->w_fq = c; c += size;
        L->w_codes = c; c += size;
        L->w_codes_t = c; c += size;
        L->w_scale = c; c += L->w_rows;
        L->epi_scale = c; c += L->w_rows;
        L->w_argmax = a; a += L->w_rows;
    }
    s->training = 0;
    s->packed_live = 0;
    s->buffers_stale = 1;
    s->have_train_forward = 0;
    ws->source = net;
    memcpy(ws->in_shape, net->in_shape, sizeof ws->in_shape);
    ws->cache_bytes = (int64_t)(sizeof(qf_layer) * (size_t)net->n_layers +
                                sizeof(qf_packed *) * (size_t)(net->n_tensors + 1) +
                                sizeof(float) * (size_t)(floats + 1) +
                                sizeof(int64_t) * (size_t)(rows + 1));
    return QF_OK;
}

qf_status qf_net_infer_forward(qf_net_infer *ws, const qf_net *net, const float *x, int64_t n,
                               float *out)
{
    ws->err[0] = 0;
    if (!net->shapes_known) {
        snprintf(ws->err, sizeof ws->err, "the input shape is not set yet");
        return QF_ERR_STATE;
    }
    if (n < 1) {
        snprintf(ws->err, sizeof ws->err, "expected at least one sample, got %lld", (long long)n);
        return QF_ERR_SHAPE;
    }
    qf_status st = QF_OK;
    if (ws->source != net || memcmp(ws->in_shape, net->in_shape, sizeof ws->in_shape) != 0)
        st = build(ws, net);
    if (st != QF_OK) {
        snprintf(ws->err, sizeof ws->err, "cannot allocate an inference workspace");
        return st;
    }
    qf_net *s = &ws->shadow;
    int64_t in_size = qf_net_cur_in_size(s), out_size = s->layers[s->n_layers - 1].out_size;
    if ((st = qf_net_check_finite(s, x, n * in_size)) != QF_OK) {
        snprintf(ws->err, sizeof ws->err, "%s", s->err);
        return st;
    }
    int64_t chunk = QF_INFER_CHUNK_FLOATS / qf_net_sample_floats(s);
    chunk = chunk < 1 ? 1 : (chunk < n ? chunk : n);
    for (int64_t start = 0; start < n && st == QF_OK; start += chunk) {
        int64_t m = n - start < chunk ? n - start : chunk;
        st = qf_net_forward(s, x + start * in_size, m, out + start * out_size);
    }
    if (st != QF_OK)
        snprintf(ws->err, sizeof ws->err, "%s", s->err);
    return st;
}

const char *qf_net_infer_error(const qf_net_infer *ws) { return ws->err; }

int64_t qf_net_infer_bytes(const qf_net_infer *ws)
{
    return ws->cache_bytes + qf_net_buffer_bytes(&ws->shadow);
}
