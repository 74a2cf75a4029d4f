/* loss.c: softmax cross-entropy and argmax. */
#include <math.h>
#include "loss.h"

static int64_t argmax_row(const float *row, int64_t k)
{
    int64_t best = 0;
    for (int64_t j = 1; j < k; j++)
        if (row[j] > row[best])
            best = j;
    return best;
}

qf_status qf_softmax_ce(double *loss, int64_t *n_correct, float *dlogits,
                        const float *logits, const int32_t *labels, int64_t n, int64_t k)
{
    double total = 0.0;
    int64_t correct = 0;
    for (int64_t s = 0; s < n; s++) {
        const float *row = logits + s * k;
        int32_t label = labels[s];
        if (label < 0 || label >= k)
            return QF_ERR_LABEL;
        int64_t best = argmax_row(row, k);
        correct += best == label;
        double max = row[best], sum = 0.0;
        for (int64_t j = 0; j < k; j++)
            sum += exp((double)row[j] - max);
        double log_sum = log(sum) + max;
        total += log_sum - (double)row[label];
        if (dlogits) {
            float *drow = dlogits + s * k;
            for (int64_t j = 0; j < k; j++) {
                double p = exp((double)row[j] - log_sum);
                drow[j] = (float)((p - (j == label ? 1.0 : 0.0)) / (double)n);
            }
        }
    }
    *loss = n ? total / (double)n : 0.0;
    *n_correct = correct;
    return QF_OK;
}

void qf_argmax_rows(int64_t *classes, const float *logits, int64_t n, int64_t k)
{
    for (int64_t s = 0; s < n; s++)
        classes[s] = argmax_row(logits + s * k, k);
}
