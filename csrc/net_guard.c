/* net_guard.c: what lets a training epoch stop at the first NaN or infinity
 * and leave the network at its last finite state.
 *
 * At an epoch's start qf_net_train_epoch copies every tensor's values and the
 * parameters' optimizer moments and step counts (one copy per epoch, not per
 * step).  It checks each batch's loss as it comes and the parameters and
 * statistics at the epoch's end; after a failure it finds the first bad step
 * by a checked replay from the copy and replays the steps before it (the
 * passes are deterministic), so a finite epoch pays one copy and one check. */
#include <stdlib.h>
#include <string.h>
#include "net_internal.h"

/* 1 if every x (n) is finite: a float is NaN or infinite exactly when its
 * exponent bits are all ones (an integer test, which vectorises). */
static int all_finite(const float *x, int64_t n)
{
    uint32_t bad = 0;
    for (int64_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, x + i, sizeof bits);
        bad |= (bits & 0x7f800000u) == 0x7f800000u;
    }
    return !bad;
}

int qf_net_first_nonfinite(const qf_net *net)
{
    for (int t = 0; t < net->n_tensors; t++) {
        const qf_tensor *T = &net->tensors[t];
        const qf_packed *pk = net->packed_live ? net->packed[t] : NULL;
        if (pk ? !all_finite(pk->value, pk->csr.nnz) : !all_finite(T->data, T->size))
            return t;
    }
    return -1;
}

/* Floats the checkpoint keeps: data of every tensor, opt_m and opt_v of parameters. */
static int64_t checkpoint_size(const qf_net *net)
{
    int64_t total = 0;
    for (int t = 0; t < net->n_tensors; t++)
        total += net->tensors[t].size * (net->tensors[t].kind == QF_TENSOR_PARAM ? 3 : 1);
    return total;
}

qf_status qf_net_checkpoint_take(qf_net *net, qf_net_checkpoint *ck)
{
    ck->values = malloc(sizeof(float) * (size_t)(checkpoint_size(net) + 1));
    ck->steps = malloc(sizeof(int64_t) * (size_t)(net->n_tensors + 1));
    if (!ck->values || !ck->steps) {
        qf_net_checkpoint_free(ck);
        return QF_ERR_NOMEM;
    }
    float *p = ck->values;
    for (int t = 0; t < net->n_tensors; t++) {
        const qf_tensor *T = &net->tensors[t];
        size_t bytes = sizeof(float) * (size_t)T->size;
        memcpy(p, T->data, bytes);
        p += T->size;
        if (T->kind == QF_TENSOR_PARAM) {
            memcpy(p, T->opt_m, bytes);
            memcpy(p + T->size, T->opt_v, bytes);
            p += 2 * T->size;
        }
        ck->steps[t] = T->opt_step;
    }
    ck->opt_step = net->opt.step;
    return QF_OK;
}

void qf_net_checkpoint_restore(qf_net *net, const qf_net_checkpoint *ck)
{
    const float *p = ck->values;
    for (int t = 0; t < net->n_tensors; t++) {
        qf_tensor *T = &net->tensors[t];
        size_t bytes = sizeof(float) * (size_t)T->size;
        memcpy(T->data, p, bytes);
        p += T->size;
        if (T->kind == QF_TENSOR_PARAM) {
            memcpy(T->opt_m, p, bytes);
            memcpy(T->opt_v, p + T->size, bytes);
            p += 2 * T->size;
        }
        T->opt_step = ck->steps[t];
    }
    net->opt.step = ck->opt_step;
}

void qf_net_checkpoint_free(qf_net_checkpoint *ck)
{
    free(ck->values);
    free(ck->steps);
    ck->values = NULL;
    ck->steps = NULL;
}
