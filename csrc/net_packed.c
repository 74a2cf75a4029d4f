/* net_packed.c: the packed state of pruned parameters during training epochs.
 *
 * A masked parameter keeps a CSR index of its kept entries (built when the
 * mask is installed) and packed copies of their value, optimizer moments and
 * gradient.  qf_net_train_epoch packs at its start and writes the dense
 * arrays back at its end; in between, the optimizer updates only the kept
 * entries (one contiguous, vectorised pass over the packed arrays), and a
 * Linear layer with a pruned float or constant-scale weight runs its forward
 * and backward over the kept entries (sparse.h) at small batch sizes.  The
 * arithmetic per entry is that of the dense path, so results are identical
 * bit for bit; pruned entries are never written and stay exactly 0. */
#include <stdlib.h>
#include <string.h>
#include "net_internal.h"

/* Sparse passes pay off while they run a few samples over a thin matrix;
 * beyond these batches the dense kernels' vectorisation wins (measured on the
 * tutorial net, 20% of the weights kept).  From integer codes the forward is
 * the vectorised row-at-a-time form; from floats it is scalar. */
#ifndef QF_SPARSE_MAX_ROWS_CODES
#define QF_SPARSE_MAX_ROWS_CODES 32
#endif
#ifndef QF_SPARSE_MAX_ROWS_FLOAT
#define QF_SPARSE_MAX_ROWS_FLOAT 2
#endif

void qf_net_packed_free(qf_packed *pk)
{
    if (!pk)
        return;
    qf_csr_free(&pk->csr);
    free(pk->value);
    free(pk);
}

qf_status qf_net_packed_set(qf_net *net, int t)
{
    qf_tensor *T = &net->tensors[t];
    qf_net_packed_free(net->packed[t]);
    net->packed[t] = NULL;
    if (!T->mask)
        return QF_OK;
    qf_packed *pk = calloc(1, sizeof *pk);
    if (!pk)
        return QF_ERR_NOMEM;
    int64_t rows = T->ndim >= 2 ? T->shape[0] : 1;
    qf_status st = qf_csr_init(&pk->csr, T->mask, rows, T->size / rows);
    int64_t nnz = pk->csr.nnz;
    if (st == QF_OK && !(pk->value = malloc(sizeof(float) * (size_t)(7 * nnz + 1))))
        st = QF_ERR_NOMEM;
    if (st != QF_OK) {
        qf_net_packed_free(pk);
        return st;
    }
    pk->m = pk->value + nnz;
    pk->v = pk->m + nnz;
    pk->grad = pk->v + nnz;
    pk->codes = pk->grad + nnz;
    pk->fq = pk->codes + nnz;
    pk->codes_mirror = pk->fq + nnz;
    net->packed[t] = pk;
    return QF_OK;
}

void qf_net_packed_begin(qf_net *net)
{
    for (int t = 0; t < net->n_tensors; t++) {
        qf_packed *pk = net->packed[t];
        if (!pk)
            continue;
        qf_tensor *T = &net->tensors[t];
        for (int64_t i = 0; i < T->size; i++) {   /* undo writes through views */
            int keep = T->mask[i] != 0;
            T->data[i] = keep ? T->data[i] : 0.0f;
            T->opt_m[i] = keep ? T->opt_m[i] : 0.0f;
            T->opt_v[i] = keep ? T->opt_v[i] : 0.0f;
        }
        qf_csr_gather(pk->value, T->data, &pk->csr);
        qf_csr_gather(pk->m, T->opt_m, &pk->csr);
        qf_csr_gather(pk->v, T->opt_v, &pk->csr);
        pk->data_stale = 0;
        pk->dense_grad_zero = 0;
        pk->codes_t_valid = 0;
    }
    net->packed_live = 1;
}

void qf_net_packed_end(qf_net *net)
{
    for (int t = 0; t < net->n_tensors; t++) {
        qf_packed *pk = net->packed[t];
        if (!pk)
            continue;
        qf_net_packed_sync_data(net, t);
        qf_csr_scatter(net->tensors[t].opt_m, pk->m, &pk->csr);
        qf_csr_scatter(net->tensors[t].opt_v, pk->v, &pk->csr);
    }
    net->packed_live = 0;
}

/* Whether tensor t is the weight of a layer that can run sparse passes. */
static int sparse_capable(const qf_net *net, int t)
{
    const qf_tensor *T = &net->tensors[t];
    const qf_layer *L = &net->layers[T->layer];
    int kind = L->spec.weight_quant.kind;
    return L->spec.kind == QF_LAYER_LINEAR && L->t_weight == t && L->spec.accumulator_bits == 0 &&
           (kind == QF_QUANT_NONE || kind == QF_QUANT_CONST);
}

qf_packed *qf_net_sparse_layer(qf_net *net, const qf_layer *L, int64_t rows, int from_codes)
{
    int64_t max_rows = from_codes ? QF_SPARSE_MAX_ROWS_CODES : QF_SPARSE_MAX_ROWS_FLOAT;
    if (!net->packed_live || L->t_weight < 0 || rows > max_rows)
        return NULL;
    qf_packed *pk = net->packed[L->t_weight];
    if (!pk || !sparse_capable(net, L->t_weight) ||
        2 * pk->csr.nnz > net->tensors[L->t_weight].size)
        return NULL;
    return pk;
}

void qf_net_packed_sync_data(qf_net *net, int t)
{
    qf_packed *pk = net->packed_live && t >= 0 ? net->packed[t] : NULL;
    if (pk && pk->data_stale) {
        qf_csr_scatter(net->tensors[t].data, pk->value, &pk->csr);
        pk->data_stale = 0;
    }
}

void qf_net_packed_zero_grad(qf_net *net)
{
    for (int t = 0; t < net->n_tensors; t++) {
        qf_tensor *T = &net->tensors[t];
        qf_packed *pk = net->packed[t];
        if (T->kind != QF_TENSOR_PARAM)
            continue;
        if (pk)
            memset(pk->grad, 0, sizeof(float) * (size_t)pk->csr.nnz);
        if (!pk || !pk->dense_grad_zero)
            memset(T->grad, 0, sizeof(float) * (size_t)T->size);
        if (pk)
            pk->dense_grad_zero = 1;
    }
}

/* The packed gradient of tensor t for this step: written by a sparse
 * backward, else taken from the dense gradient. */
static void packed_gradient(qf_net *net, int t)
{
    qf_packed *pk = net->packed[t];
    const qf_layer *L = &net->layers[net->tensors[t].layer];
    if (L->sparse_pass && L->t_weight == t)
        return;
    qf_csr_gather(pk->grad, net->tensors[t].grad, &pk->csr);
    pk->dense_grad_zero = 0;
}

void qf_net_packed_step(qf_net *net)
{
    qf_coeff_cache cache = {.step = {-1, -1}};
    for (int t = 0; t < net->n_tensors; t++) {
        qf_tensor *T = &net->tensors[t];
        qf_packed *pk = net->packed[t];
        if (!qf_net_tensor_in_step(net, t))
            continue;
        T->opt_step++;
        if (!pk) {
            qf_net_update_params(net, &cache, T->opt_step, T->data, T->opt_m, T->opt_v,
                                 T->grad, T->mask, T->size);
            continue;
        }
        packed_gradient(net, t);
        qf_net_update_params(net, &cache, T->opt_step, pk->value, pk->m, pk->v, pk->grad,
                             NULL, pk->csr.nnz);
        pk->data_stale = 1;
        if (!sparse_capable(net, t))   /* dense kernels read it: bring it up to date now */
            qf_net_packed_sync_data(net, t);
    }
}
